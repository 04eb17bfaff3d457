/*
 * tokenizer.h - Hugging Face tokenizer.json (BPE) in C.
 *
 * What a model folder gives us, and what we do with it:
 *
 *   tokenizer.json          the tokenizer: {"added_tokens", "normalizer",
 *                           "pre_tokenizer", "model", "post_processor", "decoder"}
 *   tokenizer_config.json   optional: bos/eos/pad/unk tokens, add_bos_token,
 *                           add_eos_token, chat_template
 *   chat_template.jinja     optional: the chat template (newer transformers)
 *   chat_template.json      optional: {"chat_template": "..."} (transformers 4.4x)
 *
 * Supported, the way Hugging Face `tokenizers` runs them (tests/oracle/
 * tok_fixtures.py and tok_families.py check our ids against it):
 *   - model "BPE": vocab + merges (legacy "a b" strings or [["a","b"]] pairs),
 *     unk_token, fuse_unk, byte_fallback, ignore_merges,
 *     continuing_subword_prefix / end_of_word_suffix ("" or null = none).
 *     Merging uses a rank hash table and a heap per word: O(n log n) in the
 *     word length.
 *   - added tokens (special or not), matched leftmost-longest before
 *     normalization (normalized=false) or after it (normalized=true), with
 *     lstrip / rstrip / single_word.
 *   - normalizers (train/tokenizer_pre.c): Sequence, Prepend, Replace (string
 *     or regex), Strip, Lowercase, NFC, NFD, NFKC, NFKD.
 *   - pre-tokenizers (train/tokenizer_pre.c): Sequence, ByteLevel (GPT-2
 *     regex when use_regex), Split (regex or string, every split behaviour,
 *     invert), Metaspace (prepend_scheme, split), Digits, Whitespace,
 *     WhitespaceSplit, Punctuation, CharDelimiterSplit, BertPreTokenizer.
 *     Regexes run with PCRE2 in UTF + UCP mode.
 *   - post-processors TemplateProcessing, ByteLevel, Sequence (and Bert /
 *     Roberta), overridden by add_bos_token / add_eos_token in
 *     tokenizer_config.json when those keys are present.
 *   - decoders ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace,
 *     WordPiece, BPEDecoder, Sequence.
 *   - BOS/EOS from tokenizer_config.json, else generation_config.json; the
 *     latter's eos_token_id list gives the stop ids.
 * Refused with the field and value named ("normalizer type 'Precompiled' is
 * not supported"): WordPiece, Unigram, WordLevel models, BPE dropout, and any
 * component not listed above.  truncation / padding are ignored (transformers
 * overrides them per call).
 *
 *     struct lora_tok *tok;
 *     struct lora_tokens t = LORA_TOKENS_INIT;
 *     if (lora_tok_load("models/smollm2", &tok, err) < 0) return -1;
 *     if (lora_tok_encode(tok, "Hello", 5, LORA_TOK_ADD_SPECIAL, &t, err) < 0) ...
 *     ... t.ids[0 .. t.n) ...
 *     lora_tokens_free(&t); lora_tok_free(tok);
 *
 * A loaded tokenizer is read-only: encode and decode may run on one from
 * several threads at once.
 */
#ifndef LORA_TOKENIZER_H
#define LORA_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/err.h"

struct lora_tok;

/* Token ids with, for each, the byte offset in the encoded text where it
 * begins (-1 for tokens the post-processor added, e.g. BOS). */
struct lora_tokens {
	int32_t *ids;     /* (n) */
	int64_t *start;   /* (n) */
	size_t n, cap;
};
#define LORA_TOKENS_INIT { NULL, NULL, 0, 0 }
void lora_tokens_free(struct lora_tokens *t);
/* Append one token; -1 on allocation failure. */
int lora_tokens_push(struct lora_tokens *t, int32_t id, int64_t start, struct lora_err *err);

/*
 * Load DIR/tokenizer.json (+ tokenizer_config.json, generation_config.json,
 * chat_template.jinja/.json when present).
 */
int lora_tok_load(const char *dir, struct lora_tok **out, struct lora_err *err);
/*
 * Load from memory: `cfg` (tokenizer_config.json text) may be NULL.
 * `label` names the source in errors.
 */
int lora_tok_load_mem(const char *json, size_t len, const char *cfg, size_t cfg_len,
		      const char *label, struct lora_tok **out, struct lora_err *err);
void lora_tok_free(struct lora_tok *tok);
/*
 * generation_config.json text: its bos_token_id / eos_token_id (a number or a
 * list; the first counts) fill in the BOS/EOS that tokenizer_config.json
 * leaves out, and every eos_token_id becomes a stop id.  lora_tok_load calls it.
 */
int lora_tok_apply_generation_config(struct lora_tok *tok, const char *json, size_t len, const char *label,
				     struct lora_err *err);

#define LORA_TOK_ADD_SPECIAL  0x1  /* encode: add BOS/EOS as the post-processor/config say */
#define LORA_TOK_SKIP_SPECIAL 0x2  /* decode: leave out special tokens */

/*
 * Encode UTF-8 text (len bytes; invalid UTF-8 is an error) and append the
 * tokens to `out`.  Offsets in out->start are relative to `text`.
 */
int lora_tok_encode(const struct lora_tok *tok, const char *text, size_t len, unsigned flags,
		    struct lora_tokens *out, struct lora_err *err);

/* Decode ids to text, appended to `out` (invalid UTF-8 becomes U+FFFD, as HF does). */
int lora_tok_decode(const struct lora_tok *tok, const int32_t *ids, size_t n, unsigned flags,
		    struct lora_buf *out, struct lora_err *err);

/* One past the largest id (model vocab and added tokens). */
int32_t lora_tok_vocab_size(const struct lora_tok *tok);
/* The token string of an id as stored in tokenizer.json (NULL if none). */
const char *lora_tok_id_to_token(const struct lora_tok *tok, int32_t id);
/* The id of a token string (added tokens first, then the vocab); -1 if none. */
int32_t lora_tok_token_to_id(const struct lora_tok *tok, const char *token);
int lora_tok_is_special(const struct lora_tok *tok, int32_t id);

/* Special ids from tokenizer_config.json (or the post-processor); -1 when absent. */
int32_t lora_tok_bos(const struct lora_tok *tok);
int32_t lora_tok_eos(const struct lora_tok *tok);
int32_t lora_tok_pad(const struct lora_tok *tok);
/* Their strings ("" when absent). */
const char *lora_tok_bos_str(const struct lora_tok *tok);
const char *lora_tok_eos_str(const struct lora_tok *tok);
/* Whether generation stops at id: the EOS or any eos_token_id of generation_config.json. */
int lora_tok_is_stop(const struct lora_tok *tok, int32_t id);
/* Whether encode with LORA_TOK_ADD_SPECIAL adds BOS at the front / EOS at the end. */
int lora_tok_adds_bos(const struct lora_tok *tok);
int lora_tok_adds_eos(const struct lora_tok *tok);

/* The model's chat template (Jinja source) or NULL. */
const char *lora_tok_chat_template(const struct lora_tok *tok);

#endif
