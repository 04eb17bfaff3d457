#!/bin/bash
# train_loop_cli.sh - `lora train` end to end on the tiny llama_tied fixture (vocab 128, no
# tokenizer, so pre-tokenized rows): a learnable task, the signed package (checked with
# ssh-keygen and sha256sum, no lora), loss.svg, SIGINT and --resume, NaN, bad rows, usage.
. tests/lib.sh

BASE=$FIX/train/llama_tied
json_field() { printf '%s' "$OUT" | sed -n "s/.*\"$1\": *\([^,}]*\).*/\1/p"; }
# awk comparison: exit 0 when the expression holds
holds() { awk "BEGIN { exit !($1) }"; }

# 80 rows counting up by one (ids 3..127, mod 125), 12 to 29 tokens: the next id is
# always the current one plus one, which a random model cannot know (loss near ln 128 = 4.85).
count_rows() {
	awk -v n="$1" 'BEGIN { s = 7; for (r = 0; r < n; r++) {
		s = (s * 1103515245 + 12345) % 2147483648; a = 3 + s % 125;
		s = (s * 1103515245 + 12345) % 2147483648; len = 12 + s % 18;
		line = "{\"input_ids\": ["; for (k = 0; k < len; k++) line = line (k ? ", " : "") (3 + (a - 3 + k) % 125);
		print line "]}" } }'
}
count_rows 80 >"$T/count.jsonl"
"$LORA" keygen --name trainer@example.com >/dev/null 2>&1

t_case train_learns_a_task_eval_loss_drops
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name count:v1 --steps 150 --lr 1e-2 \
	--batch 4 --grad-accum 1 --seq-len 32 --eval-split 0.2 --threads 1 --json
expect_rc 0
e0=$(json_field eval_loss_initial); e1=$(json_field eval_loss)
echo "  eval loss $e0 -> $e1 (QLoRA defaults: nf4, r 16, alpha 32, dropout 0.05)"
# before: no better than chance over 128 ids; after: less than half of it
holds "$e0 > 4.5 && $e1 < 0.5 * $e0" || t_fail "eval loss $e0 -> $e1"
expect_eq "$(json_field steps)" 150 steps
expect_eq "$(json_field ref)" '"count:v1"' ref
[ -z "$ERR" ] || t_fail "stderr is not quiet off a terminal: $ERR"

t_case train_package_verifies_without_lora
run "$LORA" export count:v1 -o "$T/count.lora"
expect_rc 0
mkdir -p "$T/pkg" && tar -xf "$T/count.lora" -C "$T/pkg"
run sh -c "ssh-keygen -Y verify -f '$LORA_HOME/allowed_signers' -I trainer@example.com -n lora-adapter \
	-s '$T/pkg/manifest.json.sig' < '$T/pkg/manifest.json'"
expect_rc 0
for f in adapter_config.json adapter_model.safetensors training_log.jsonl loss.svg; do
	[ -f "$T/pkg/$f" ] || { t_fail "the package lacks $f"; continue; }
	sum=$(sha256sum "$T/pkg/$f" | cut -d' ' -f1)
	grep -q "\"sha256\": \"$sum\"" "$T/pkg/manifest.json" || t_fail "$f: sha256 $sum is not in the manifest"
done

t_case train_manifest_provenance
m=$T/pkg/manifest.json
dsum=$(sha256sum "$T/count.jsonl" | cut -d' ' -f1)
for want in "\"sha256\": \"$dsum\"" '"rows": 80' '"train_rows": 64' '"steps": 150' '"lr": 0.01' \
	'"rank": 16' '"alpha": 32' '"dropout": 0.05' '"quant": "nf4"' '"schedule": "cosine"' \
	'"max_grad_norm": 0.3' '"warmup_steps": 5' '"device": "cpu"' '"lora_version": "' \
	'"final_train_loss": ' '"final_eval_loss": ' '"wall_time_s": ' '"tokens": 19200' \
	'"name": "llama_tied"' '"fingerprint": "sha256:'; do
	grep -qF "$want" "$m" || t_fail "manifest.json lacks $want"
done
expect_eq "$(grep -c '"event": "train"' "$T/pkg/training_log.jsonl")" 150 "train lines in the log"
expect_eq "$(grep -c '"event": "eval"' "$T/pkg/training_log.jsonl")" 11 "eval lines (step 0 and every 15)"
[ ! -e "$LORA_HOME/work/count/v1" ] || t_fail "the work area outlived the run"

t_case train_loss_svg_is_a_plot
svg=$T/pkg/loss.svg
grep -q '<svg' "$svg" || t_fail "loss.svg is not SVG"
for w in '>step<' '>loss<' '>train<' '>eval<' '<polyline'; do
	grep -q "$w" "$svg" || t_fail "loss.svg lacks $w"
done
if command -v rsvg-convert >/dev/null; then
	run rsvg-convert "$svg" -o "$T/loss.png"
	expect_rc 0
	[ "$(head -c 4 "$T/loss.png" | od -An -c | tr -d ' ')" = '211PNG' ] || t_fail "rsvg-convert made no PNG"
else
	echo "  (rsvg-convert not installed: PNG conversion not checked)"
fi

# ---------------------------------------------------------------- interruption and resume

small=(--base "$BASE" --data "$T/count.jsonl" --batch 2 --grad-accum 2 --seq-len 16 --rank 4
	--targets q,v --lr 5e-3 --dropout 0.1 --threads 1 --save-every 1000)

t_case train_sigint_checkpoints_and_resume_is_bit_identical
steps=1500
for attempt in 1 2 3; do
	rm -f "$T/sig.err"
	"$LORA" train "${small[@]}" --steps $steps --name sig 2>"$T/sig.err" >/dev/null &
	pid=$!
	log=$LORA_HOME/work/sig/latest/training_log.jsonl
	for i in $(seq 300); do
		n=$(grep -c '"event": "train"' "$log" 2>/dev/null)
		[ "${n:-0}" -ge 20 ] && break
		sleep 0.05
	done
	kill -INT $pid 2>/dev/null
	wait $pid
	RC=$?
	[ "$RC" = 0 ] || break
	# it finished before the signal came: a longer run
	"$LORA" rm sig >/dev/null 2>&1
	steps=$((steps * 4))
done
ERR=$(cat "$T/sig.err")
expect_rc 130
expect_err "interrupted at step"
expect_err "--resume"
[ -f "$LORA_HOME/work/sig/latest/checkpoint.safetensors" ] || t_fail "no checkpoint after SIGINT"
at=$(printf '%s' "$ERR" | sed -n 's/.*interrupted at step \([0-9]*\) of.*/\1/p')
echo "  interrupted at step $at of $steps"
holds "$at >= 20 && $at < $steps" || t_fail "stopped at step '$at'"
# resume from anywhere with nothing but the name
(cd / && "$LORA" train --name sig --resume >/dev/null 2>"$T/resume.err")
RC=$?; ERR=$(cat "$T/resume.err")
expect_rc 0
"$LORA" train "${small[@]}" --steps $steps --name whole >/dev/null 2>&1 || t_fail "uninterrupted run failed"
"$LORA" export sig -o "$T/sig" --format peft && "$LORA" export whole -o "$T/whole" --format peft ||
	t_fail "export failed"
cmp "$T/sig/adapter_model.safetensors" "$T/whole/adapter_model.safetensors" ||
	t_fail "resumed weights differ from an uninterrupted run"
# one run in the log: every step once
expect_eq "$(grep -c '"event": "train"' "$T/sig/training_log.jsonl")" $steps "train lines after resume"
grep -q '"event": "resume"' "$T/sig/training_log.jsonl" || t_fail "the log does not show the resume"

t_case train_resume_needs_a_checkpoint_and_the_same_settings
run "$LORA" train --name nothing --resume
expect_rc 1
expect_err "no checkpoint to resume"
"$LORA" train "${small[@]}" --steps 40 --name guard >/dev/null 2>&1 &
pid=$!
for i in $(seq 300); do
	n=$(grep -c '"event": "train"' "$LORA_HOME/work/guard/latest/training_log.jsonl" 2>/dev/null)
	[ "${n:-0}" -ge 3 ] && break
	sleep 0.02
done
kill -INT $pid 2>/dev/null; wait $pid
if [ -f "$LORA_HOME/work/guard/latest/checkpoint.safetensors" ]; then
	run "$LORA" train "${small[@]}" --steps 40 --name guard
	expect_rc 1
	expect_err "continue it with --resume"
	run "$LORA" train --name guard --resume --lr 1e-3
	expect_rc 2
	expect_err "made with --lr 0.005"
	run "$LORA" train --name guard --resume --rank 8
	expect_rc 2
	expect_err "--rank 4"
	run "$LORA" train --name guard --resume --no-pack
	expect_rc 2
	expect_err "made without --no-pack"
	run "$LORA" rm guard
	expect_rc 0
	expect_out "removed the unfinished training run of guard"
	[ ! -e "$LORA_HOME/work/guard/latest" ] || t_fail "lora rm left the work area of an unfinished run"
else
	echo "  (the run ended before the signal; guard cases skipped)"
fi

t_case train_nan_stops_with_the_last_good_checkpoint
# a learning rate this large overflows fp32 in the second forward pass
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name nan --steps 5 --lr 1e30 --warmup 0 \
	--save-every 1 --seq-len 32 --threads 1
expect_rc 1
expect_err "at step 2; training stopped"
case "$ERR" in *"loss is nan"*|*"loss is inf"*|*"norm is nan"*|*"norm is inf"*) ;; *) t_fail "no nan/inf in: $ERR";; esac
expect_err "last good checkpoint (step 1)"
[ -f "$LORA_HOME/work/nan/latest/checkpoint.safetensors" ] || t_fail "the checkpoint is gone"
# resumable: it loads step 1 and meets the same overflow
run "$LORA" train --name nan --resume
expect_rc 1
expect_err "at step 2"
run "$LORA" list
case "$OUT" in *"nan:"*) t_fail "a failed run reached the store";; esac

t_case train_store_failure_keeps_the_adapter_for_resume
# index.json replaced by a directory: the store cannot take the package
mv "$LORA_HOME/index.json" "$T/index.json.saved" && mkdir "$LORA_HOME/index.json"
run "$LORA" train "${small[@]}" --steps 6 --name late
expect_rc 1
expect_err "the trained adapter is kept in"
rmdir "$LORA_HOME/index.json" && mv "$T/index.json.saved" "$LORA_HOME/index.json"
run "$LORA" train --name late --resume --json
expect_rc 0
expect_eq "$(json_field steps)" 6 steps
run "$LORA" list
expect_out "late:latest"

# ---------------------------------------------------------------- data

t_case train_bad_row_reported_by_line
{ count_rows 3; echo '{"input_ids": [5, 900, 7]}'; count_rows 3; } >"$T/bad.jsonl"
run "$LORA" train --base "$BASE" --data "$T/bad.jsonl" --name bad --steps 2 --seq-len 16
expect_rc 1
expect_err "$T/bad.jsonl:4:"
expect_err "input_ids[1]"
run "$LORA" list
case "$OUT" in *"bad:"*) t_fail "a failed run reached the store";; esac
[ ! -e "$LORA_HOME/work/bad" ] || t_fail "a run that never started left its work area"

t_case train_bad_eval_row_reported_by_line
{ count_rows 2; echo '{"input_ids": "nope"}'; } >"$T/bad_eval.jsonl"
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --eval-data "$T/bad_eval.jsonl" --name bad \
	--steps 2 --seq-len 16
expect_rc 1
expect_err "$T/bad_eval.jsonl:3:"

t_case train_skip_bad_rows_counts_them
{ count_rows 4; echo 'not json'; count_rows 4; echo '{"text": 5}'; } >"$T/skip.jsonl"
run "$LORA" train --base "$BASE" --data "$T/skip.jsonl" --name skip --steps 2 --seq-len 16 --skip-bad-rows \
	--threads 1 --json
expect_rc 0
expect_err "skipped 2 bad rows (the first: $T/skip.jsonl:5:"
"$LORA" export skip -o "$T/skip" --format peft >/dev/null 2>&1
grep -q '"skipped_rows": 2' "$T/skip/manifest.json" || t_fail "the manifest does not count the skipped rows"
grep -q '"train_rows": 8' "$T/skip/manifest.json" || t_fail "the manifest does not count 8 good rows"

t_case train_text_rows_need_a_tokenizer
echo '{"text": "hello"}' >"$T/text.jsonl"
run "$LORA" train --base "$BASE" --data "$T/text.jsonl" --name txt --steps 1 --seq-len 16
expect_rc 1
expect_err "$T/text.jsonl:1:"

t_case train_no_pack_and_epochs
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name nopack --epochs 1 --batch 8 --grad-accum 2 \
	--seq-len 16 --no-pack --quant none --threads 1 --json
expect_rc 0
# 80 rows, one a sequence, 16 a step: 5 steps
expect_eq "$(json_field steps)" 5 steps

t_case train_text_prompt_and_chat_rows_with_a_tokenizer
# a synthetic model whose vocabulary holds the qwen2-style test tokenizer (ChatML template with a
# default system turn); its weights are tiny, so it learns little: this checks the path, not the rate
MK=${LORA_TOOLS:-}/mktiny
if [ -x "$MK" ]; then
	"$MK" model "$T/qm" --vocab 800 --hidden 32 --inter 64 --layers 2 --heads 2 --kv-heads 1 --tied --seed 3 >/dev/null
	cp "$FIX/tok/qwen2/tokenizer.json" "$FIX/tok/qwen2/tokenizer_config.json" "$T/qm/"
	awk 'BEGIN { split("France Paris|Italy Rome|Spain Madrid|Japan Tokyo|Egypt Cairo|Peru Lima|Kenya Nairobi|Chile Santiago", p, "|");
	 for (r = 0; r < 48; r++) { split(p[r % 8 + 1], kv, " "); k = r % 3;
	  if (k == 0) printf "{\"messages\": [{\"role\": \"user\", \"content\": \"Capital of %s?\"}, {\"role\": \"assistant\", \"content\": \"%s\"}]}\n", kv[1], kv[2];
	  else if (k == 1) printf "{\"prompt\": \"Capital of %s? \", \"completion\": \"%s\"}\n", kv[1], kv[2];
	  else printf "{\"text\": \"The capital of %s is %s.\"}\n", kv[1], kv[2] } }' >"$T/chat.jsonl"
	for pack in "" --no-pack; do
		run "$LORA" train --base "$T/qm" --data "$T/chat.jsonl" --name chat --steps 40 --lr 1e-2 --batch 4 \
			--grad-accum 1 --seq-len 32 --eval-split 0.25 --threads 1 --json $pack
		expect_rc 0
		e0=$(json_field eval_loss_initial); e1=$(json_field eval_loss)
		holds "$e1 < $e0 - 0.05" || t_fail "eval loss $e0 -> $e1 ${pack:-packed}"
	done
	{ head -2 "$T/chat.jsonl"; echo '{"messages": [{"role": "wizard", "content": "hi"}]}'; } >"$T/badchat.jsonl"
	run "$LORA" train --base "$T/qm" --data "$T/badchat.jsonl" --name chat --steps 1 --seq-len 32
	expect_rc 1
	expect_err "$T/badchat.jsonl:3:"
	expect_err "wizard"
	# a tokenizer without a chat template: the chat row is the bad one
	cp "$FIX/tok/gpt2/tokenizer.json" "$FIX/tok/gpt2/tokenizer_config.json" "$T/qm/"
	run "$LORA" train --base "$T/qm" --data "$T/chat.jsonl" --name chat --steps 1 --seq-len 32
	expect_rc 1
	expect_err "$T/chat.jsonl:1:"
	expect_err "chat_template"
	# ... unless one is named
	run "$LORA" train --base "$T/qm" --data "$T/chat.jsonl" --name chat --steps 1 --seq-len 32 --chat-template chatml \
		--threads 1
	expect_rc 0
	run "$LORA" train --base "$T/qm" --data "$T/chat.jsonl" --name chat --steps 1 --chat-template jinja
	expect_rc 2
	expect_err "--chat-template"
	# ... or given as a Jinja file (Phi-3.5's template), whose errors name the template line
	printf '%s' "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'user' %}{{'<|user|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>
' + message['content'] + '<|end|>
'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>
' }}{% else %}{{ eos_token }}{% endif %}" >"$T/phi3.jinja"
	run "$LORA" train --base "$T/qm" --data "$T/chat.jsonl" --name chatf --steps 1 --seq-len 32 \
		--chat-template "$T/phi3.jinja" --threads 1 --json
	expect_rc 0
	printf '{%% for m in messages %%}\n{{ m.content }\n{%% endfor %%}' >"$T/bad.jinja"
	run "$LORA" train --base "$T/qm" --data "$T/chat.jsonl" --name chatf --steps 1 --chat-template "$T/bad.jinja"
	expect_rc 1
	expect_err "template line 2"
	# rows with tools, as TRL's datasets carry them, for a template that prints them
	printf '%s' "{% if tools %}<|im_start|>system
{% for t in tools %}{{ t | tojson }}
{% endfor %}<|im_end|>
{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}
{% if m.tool_calls %}{{ m.tool_calls[0].function | tojson }}{% else %}{{ m.content }}{% endif %}<|im_end|>
{% endfor %}" >"$T/tools.jinja"
	{ printf '%s\n' '{"messages": [{"role": "user", "content": "Weather in Lima?"}, {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": {"city": "Lima"}}}]}, {"role": "tool", "content": "19 C"}, {"role": "assistant", "content": "19 C in Lima."}], "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}'
	  head -4 "$T/chat.jsonl"; } >"$T/tools.jsonl"
	run "$LORA" train --base "$T/qm" --data "$T/tools.jsonl" --name chatt --steps 1 --seq-len 64 \
		--chat-template "$T/tools.jinja" --threads 1 --json
	expect_rc 0
	run "$LORA" train --base "$T/qm" --data "$T/tools.jsonl" --name chatt --steps 1 --seq-len 64 --chat-template chatml
	expect_rc 1
	expect_err "$T/tools.jsonl:1:"
	expect_err "takes no tools"
	printf "{{ raise_exception('no ' ~ messages[0].role ~ ' here') }}" >"$T/raise.jinja"
	run "$LORA" train --base "$T/qm" --data "$T/chat.jsonl" --name chatf --steps 1 --chat-template "$T/raise.jinja"
	expect_rc 1
	expect_err "$T/chat.jsonl:1:"
	expect_err "no user here"
else
	echo "  (no mktiny in \$LORA_TOOLS: skipped)"
fi

# ---------------------------------------------------------------- command line

t_case train_usage_errors
run "$LORA" train --base "$BASE" --data "$T/count.jsonl"
expect_rc 2; expect_err "--name"
run "$LORA" train --name x --data "$T/count.jsonl"
expect_rc 2; expect_err "--base DIR and --data FILE"
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name x --steps 3 --epochs 1
expect_rc 2; expect_err "not both"
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name x --rank 0
expect_rc 2; expect_err "--rank"
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name x --quant fp8
expect_rc 2; expect_err "--quant"
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name x --targets q,zz
expect_rc 2; expect_err "zz"
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name sha256:0123456789abcdef
expect_rc 2; expect_err "not a digest"
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name x --seq-len 4096
expect_rc 2; expect_err "128 positions"
run "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name x --device tpu
expect_rc 2; expect_err "--device"

t_case train_device_cuda_without_a_plugin_is_one_line
# (training on the device itself: tests/sh/cuda_train_simt.sh)
run env LORA_CUDA_PLUGIN="$T/nope.so" "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name x \
	--device cuda --steps 1
expect_rc 1
expect_err "--device cuda: cannot load the CUDA plugin $T/nope.so"
[ ! -e "$LORA_HOME/work/x" ] || t_fail "it started without a device"

t_case train_needs_a_signing_key_before_it_starts
run env LORA_HOME="$T/nokey" "$LORA" train --base "$BASE" --data "$T/count.jsonl" --name x --steps 1
expect_rc 1
expect_err "keygen"
[ ! -e "$T/nokey/work/x" ] || t_fail "it started without a key"

t_end
