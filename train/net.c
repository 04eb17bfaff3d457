/*
 * net.c - building a lora_net from a Hugging Face folder: architecture and
 * shape checks, frozen weights (mapped or NF4), RoPE frequencies, the LoRA
 * parameter arena, and PEFT adapters in and out.  The arithmetic lives in the
 * backends (model_cpu.c).
 */
#include "train/net.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/safetensors.h"

int lora_quant_parse(const char *s, enum lora_quant *q)
{
	if (!strcmp(s, "none"))
		*q = LORA_QUANT_NONE;
	else if (!strcmp(s, "nf4"))
		*q = LORA_QUANT_NF4;
	else
		return -1;
	return 0;
}

void lora_net_opts_defaults(struct lora_net_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->quant = LORA_QUANT_NF4;
}

/* ------------------------------------------------------------ frozen weights */

/* bf16 is the top half of an fp32: exact, NaN included.  Vectorized, with an AVX2 clone. */
#if defined(__x86_64__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
__attribute__((target_clones("avx2", "default"), optimize("tree-vectorize", "vect-cost-model=dynamic")))
#endif
static void bf16_to_f32(const unsigned char *src, float *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint16_t h;
		uint32_t u;

		memcpy(&h, src + 2 * i, 2);
		u = (uint32_t)h << 16;
		memcpy(out + i, &u, 4);
	}
}

void lora_frozen_rows(const struct lora_frozen *w, int r0, int nr, float *out)
{
	const size_t start = (size_t)r0 * w->cols, count = (size_t)nr * w->cols;

	switch (w->fmt) {
	case LORA_WF_NF4:
		lora_nf4_dequant(&w->q, start, count, out);
		break;
	case LORA_WF_F32:
		memcpy(out, (const float *)w->data + start, count * sizeof(float));
		break;
	case LORA_WF_BF16:
		bf16_to_f32((const unsigned char *)w->data + 2 * start, out, count);
		break;
	case LORA_WF_F16:
		lora_to_f32(out, (const uint16_t *)w->data + start, LORA_DT_F16, count);
		break;
	}
}

static int wfmt_of(enum lora_dtype dt, enum lora_wfmt *f)
{
	switch (dt) {
	case LORA_DT_F32: *f = LORA_WF_F32; return 0;
	case LORA_DT_BF16: *f = LORA_WF_BF16; return 0;
	case LORA_DT_F16: *f = LORA_WF_F16; return 0;
	default: return -1;
	}
}

/* Find a 2-D float tensor of the given shape. */
static const struct lora_st_tensor *find2(const struct lora_model *m, const char *name, int rows,
					  int cols, struct lora_err *err)
{
	const struct lora_model_tensor *mt = lora_model_find(m, name);
	const struct lora_st_tensor *t;
	enum lora_wfmt f;

	if (!mt) {
		lora_errf(err, "model '%s' has no tensor '%s'", m->dir, name);
		return NULL;
	}
	t = mt->t;
	if (wfmt_of(t->dtype, &f) < 0) {
		lora_errf(err, "'%s' in '%s' is %s; expected F32, BF16 or F16", name, m->dir,
			  lora_dtype_name(t->dtype));
		return NULL;
	}
	if (t->ndim != (cols ? 2 : 1) || t->shape[0] != (uint64_t)rows ||
	    (cols && t->shape[1] != (uint64_t)cols)) {
		if (cols)
			lora_errf(err, "'%s' in '%s' does not have shape [%d, %d]", name, m->dir, rows, cols);
		else
			lora_errf(err, "'%s' in '%s' does not have shape [%d]", name, m->dir, rows);
		return NULL;
	}
	return t;
}

static int load_frozen(const struct lora_model *m, const char *name, int rows, int cols, int nf4,
		       struct lora_frozen *w, struct lora_err *err)
{
	const struct lora_st_tensor *t = find2(m, name, rows, cols, err);

	if (!t)
		return -1;
	w->rows = rows;
	w->cols = cols;
	wfmt_of(t->dtype, &w->fmt);
	w->data = t->data;
	if (nf4) {
		if (lora_nf4_quantize(&w->q, t->data, t->dtype, t->nelem, err) < 0)
			return lora_err_prefix(err, "quantizing '%s'", name);
		w->fmt = LORA_WF_NF4;
		w->data = NULL;
	}
	return 0;
}

/* A 1-D tensor as a malloc'd fp32 copy; absent and optional: *out = NULL. */
static int load_vec(const struct lora_model *m, const char *name, int n, int optional, float **out,
		    struct lora_err *err)
{
	const struct lora_st_tensor *t;

	*out = NULL;
	if (optional && !lora_model_find(m, name))
		return 0;
	if (!(t = find2(m, name, n, 0, err)))
		return -1;
	if (!(*out = lora_st_to_f32(t, err)))
		return -1;
	return 0;
}

/* ------------------------------------------------------------ config */

static const char *const archs[][2] = {
	{"LlamaForCausalLM", "llama"},
	{"MistralForCausalLM", "mistral"},
	{"Qwen2ForCausalLM", "qwen2"},
	{"Qwen3ForCausalLM", "qwen3"},
	{"Phi3ForCausalLM", "phi3"},
	{"Gemma2ForCausalLM", "gemma2"},
	{"Gemma3ForCausalLM", "gemma3_text"},
};

static int is_arch(const struct lora_model_config *c, const char *arch, const char *type)
{
	return c->architecture[0] ? !strcmp(c->architecture, arch) : !strcmp(c->model_type, type);
}

static int check_arch(const struct lora_model_config *c, const char *dir, struct lora_err *err)
{
	for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); i++)
		if (c->architecture[0] ? !strcmp(c->architecture, archs[i][0])
				       : !strcmp(c->model_type, archs[i][1]))
			return 0;
	return lora_errf(err, "model '%s': architecture '%s' is not supported (Llama, Mistral, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3)",
			 dir, c->architecture[0] ? c->architecture : c->model_type);
}

/* A positive number field, or null/absent (0); anything else is refused naming it. */
static int get_pos(const cJSON *root, const char *key, const char *path, double *out, struct lora_err *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);

	*out = 0;
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsNumber(v) || !(v->valuedouble > 0) || !(v->valuedouble < 1e9))
		return lora_errf(err, "'%s': %s is not a positive number", path, key);
	*out = v->valuedouble;
	return 0;
}

/* Fields model.h does not carry: hidden_act, the sliding-window layout, Gemma's scalars. */
static int read_extra_config(struct lora_net *net, const char *dir, struct lora_err *err)
{
	char *path = lora_path_join(dir, "config.json"), *text = NULL;
	cJSON *root = NULL;
	const cJSON *v, *types;
	int window = 0, use_sw = 1, max_window_layers = 0, rc = -1;
	double x;
	size_t len;

	if (!path)
		return lora_errf(err, "out of memory");
	if (lora_read_file(path, 16u << 20, &text, &len, err) < 0)
		goto out;
	if (!(root = cJSON_ParseWithLength(text, len))) {
		lora_errf(err, "'%s' is not valid JSON", path);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
	if (!v)
		v = cJSON_GetObjectItemCaseSensitive(root, "hidden_activation");
	if (net->gemma) {
		const cJSON *h = cJSON_GetObjectItemCaseSensitive(root, "hidden_activation");
		const char *act = cJSON_IsString(h) ? h->valuestring : cJSON_IsString(v) ? v->valuestring
											 : "gelu_pytorch_tanh";

		if (strcmp(act, "gelu_pytorch_tanh")) {
			lora_errf(err, "'%s': hidden_activation '%s' is not supported (gelu_pytorch_tanh)", path,
				  act);
			goto out;
		}
		net->gelu = 1;
		if (get_pos(root, "query_pre_attn_scalar", path, &x, err) < 0)
			goto out;
		if (x > 0)
			net->attn_scale = (float)pow(x, -0.5);
		if (get_pos(root, "attn_logit_softcapping", path, &x, err) < 0)
			goto out;
		net->attn_softcap = (float)x;
		if (get_pos(root, "final_logit_softcapping", path, &x, err) < 0)
			goto out;
		net->final_softcap = (float)x;
		net->embed_scale = (float)sqrt((double)net->C);
	} else if (cJSON_IsString(v) && strcmp(v->valuestring, "silu") && strcmp(v->valuestring, "swish")) {
		lora_errf(err, "'%s': hidden_act '%s' is not supported (silu)", path, v->valuestring);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "partial_rotary_factor");
	if (cJSON_IsNumber(v) && v->valuedouble != 1.0) {
		lora_errf(err, "'%s': partial_rotary_factor %g is not supported (1)", path, v->valuedouble);
		goto out;
	}
	v = cJSON_GetObjectItemCaseSensitive(root, "sliding_window");
	if (cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble < 1e9)
		window = (int)v->valuedouble;
	if (is_arch(&net->cfg, "Qwen2ForCausalLM", "qwen2") || is_arch(&net->cfg, "Qwen3ForCausalLM", "qwen3")) {
		v = cJSON_GetObjectItemCaseSensitive(root, "use_sliding_window");
		use_sw = cJSON_IsTrue(v);
		v = cJSON_GetObjectItemCaseSensitive(root, "max_window_layers");
		max_window_layers = cJSON_IsNumber(v) ? (int)v->valuedouble : net->L;
	}
	types = cJSON_GetObjectItemCaseSensitive(root, "layer_types");
	for (int l = 0; l < net->L; l++) {
		int sliding = window > 0 && use_sw && l >= max_window_layers;
		const cJSON *ty = cJSON_IsArray(types) ? cJSON_GetArrayItem(types, l) : NULL;

		if (cJSON_IsString(ty))
			sliding = window > 0 && !strcmp(ty->valuestring, "sliding_attention");
		net->blocks[l].window = sliding ? window : 0;
		net->blocks[l].local_rope = net->inv_freq_local && cJSON_IsString(ty) &&
					    !strcmp(ty->valuestring, "sliding_attention");
	}
	rc = 0;
out:
	cJSON_Delete(root);
	free(text);
	free(path);
	return rc;
}

/* RoPE inverse frequencies as transformers computes them (fp32); local: the sliding layers' plain
 * base (Gemma 3's rope_local_base_freq) into inv_freq_local. */
static void rope_freqs(struct lora_net *net)
{
	const struct lora_model_config *c = &net->cfg;
	const int half = net->D / 2;

	for (int i = 0; net->inv_freq_local && i < half; i++)
		net->inv_freq_local[i] = 1.0f / powf((float)c->rope_local_theta, (float)(2 * i) / (float)net->D);
	for (int i = 0; i < half; i++) {
		float e = (float)(2 * i) / (float)net->D;
		float f = 1.0f / powf((float)c->rope_theta, e);

		if (c->rope_type == LORA_ROPE_LINEAR) {
			f = f / (float)c->rope_factor;
		} else if (c->rope_type == LORA_ROPE_LLAMA3) {
			const float old = (float)c->rope_original_max_pos;
			const float lo = (float)c->rope_low_freq_factor, hi = (float)c->rope_high_freq_factor;
			const float factor = (float)c->rope_factor;
			const float low_wl = (float)(c->rope_original_max_pos / c->rope_low_freq_factor);
			const float high_wl = (float)(c->rope_original_max_pos / c->rope_high_freq_factor);
			const float wl = (float)(2.0 * M_PI) / f;
			float g = wl > low_wl ? f / factor : f;

			if (!(wl < high_wl) && !(wl > low_wl)) {
				float s = (old / wl - lo) / (hi - lo);
				g = (1.0f - s) * g / factor + s * g;
			}
			f = g;
		}
		net->inv_freq[i] = f;
	}
}

static int check_dims(const struct lora_net *n, const char *dir, struct lora_err *err)
{
	if (n->C <= 0 || n->F <= 0 || n->L <= 0 || n->H <= 0 || n->KV <= 0 || n->V <= 0 || n->D <= 0 ||
	    n->C > (1 << 20) || n->F > (1 << 22) || n->L > 4096 || n->H > 4096 || n->D > 4096 ||
	    n->V > (1 << 24))
		return lora_errf(err, "model '%s': config.json lacks sizes or has impossible ones", dir);
	if (n->H % n->KV)
		return lora_errf(err, "model '%s': %d attention heads do not divide into %d key/value heads",
				 dir, n->H, n->KV);
	if (n->D % 2)
		return lora_errf(err, "model '%s': head_dim %d is odd", dir, n->D);
	return 0;
}

/* ------------------------------------------------------------ open/close */

/* Gemma's RMSNorms scale by (1 + w): stored so, the product is the one transformers computes. */
static void unit_offset(const struct lora_net *net, float *w, int n)
{
	for (int i = 0; net->gemma && w && i < n; i++)
		w[i] = 1.0f + w[i];
}

static int load_block(struct lora_net *net, int l, struct lora_err *err)
{
	struct lora_block *bk = &net->blocks[l];
	const int HD = net->H * net->D, KVD = net->KV * net->D;
	int rows[LORA_NTARGET] = {HD, KVD, KVD, net->C, net->F, net->F, net->C};
	const int cols[LORA_NTARGET] = {net->C, net->C, net->C, HD, net->C, net->C, net->F};
	char name[160];

	snprintf(name, sizeof(name), "model.layers.%d.input_layernorm.weight", l);
	if (load_vec(net->base, name, net->C, 0, &bk->ln1, err) < 0)
		return -1;
	snprintf(name, sizeof(name), net->gemma ? "model.layers.%d.pre_feedforward_layernorm.weight"
						 : "model.layers.%d.post_attention_layernorm.weight", l);
	if (load_vec(net->base, name, net->C, 0, &bk->ln2, err) < 0)
		return -1;
	if (net->gemma) {
		snprintf(name, sizeof(name), "model.layers.%d.post_attention_layernorm.weight", l);
		if (load_vec(net->base, name, net->C, 0, &bk->post_attn, err) < 0)
			return -1;
		snprintf(name, sizeof(name), "model.layers.%d.post_feedforward_layernorm.weight", l);
		if (load_vec(net->base, name, net->C, 0, &bk->post_ff, err) < 0)
			return -1;
		unit_offset(net, bk->ln1, net->C);
		unit_offset(net, bk->ln2, net->C);
		unit_offset(net, bk->post_attn, net->C);
		unit_offset(net, bk->post_ff, net->C);
	}
	if (net->qk_norm) {
		snprintf(name, sizeof(name), "model.layers.%d.self_attn.q_norm.weight", l);
		if (load_vec(net->base, name, net->D, 0, &bk->q_norm, err) < 0)
			return -1;
		snprintf(name, sizeof(name), "model.layers.%d.self_attn.k_norm.weight", l);
		if (load_vec(net->base, name, net->D, 0, &bk->k_norm, err) < 0)
			return -1;
		unit_offset(net, bk->q_norm, net->D);
		unit_offset(net, bk->k_norm, net->D);
	}
	if (net->fused) {   /* q|k|v and gate|up stacked as model_cpu.c stacks them anyway */
		rows[LORA_T_Q] = HD + 2 * KVD;
		rows[LORA_T_K] = rows[LORA_T_V] = 0;
		rows[LORA_T_GATE] = 2 * net->F;
		rows[LORA_T_UP] = 0;
	}
	for (int t = 0; t < LORA_NTARGET; t++) {
		int n = lora_net_module_name(net, name, sizeof(name), l, (enum lora_target)t);

		if (n < 0) {   /* a part of a fused linear */
			bk->lin[t].w = (struct lora_frozen){0, cols[t], LORA_WF_F32, NULL, {0}};
			continue;
		}
		snprintf(name + n, sizeof(name) - (size_t)n, ".weight");
		if (load_frozen(net->base, name, rows[t], cols[t], net->opts.quant == LORA_QUANT_NF4,
				&bk->lin[t].w, err) < 0)
			return -1;
		snprintf(name + n, sizeof(name) - (size_t)n, ".bias");
		if (load_vec(net->base, name, rows[t], 1, &bk->lin[t].bias, err) < 0)
			return -1;
	}
	return 0;
}

int lora_net_open(struct lora_net **out, const char *base_dir, const struct lora_net_opts *o,
		  struct lora_err *err)
{
	struct lora_net *net = calloc(1, sizeof(*net));
	const struct lora_model_config *c;

	*out = NULL;
	if (!net)
		return lora_errf(err, "out of memory");
	net->opts = *o;
	net->be = &lora_backend_cpu;
	if (lora_model_open(base_dir, 1, &net->base, err) < 0)
		goto fail;
	net->cfg = net->base->cfg;
	c = &net->cfg;
	if (check_arch(c, base_dir, err) < 0)
		goto fail;
	net->C = c->hidden_size;
	net->F = c->intermediate_size;
	net->L = c->num_hidden_layers;
	net->H = c->num_attention_heads;
	net->KV = c->num_key_value_heads;
	net->D = c->head_dim;
	net->V = c->vocab_size;
	net->eps = (float)c->rms_norm_eps;
	if (check_dims(net, base_dir, err) < 0)
		goto fail;
	net->qk_norm = is_arch(c, "Qwen3ForCausalLM", "qwen3");
	net->fused = is_arch(c, "Phi3ForCausalLM", "phi3");
	net->gemma = is_arch(c, "Gemma2ForCausalLM", "gemma2") || is_arch(c, "Gemma3ForCausalLM", "gemma3_text");
	net->qk_norm = net->qk_norm || is_arch(c, "Gemma3ForCausalLM", "gemma3_text");
	net->embed_scale = 1.0f;
	net->attn_scale = (float)pow((double)net->D, -0.5);
	if (!(net->blocks = calloc((size_t)net->L, sizeof(*net->blocks))) ||
	    !(net->inv_freq = malloc(sizeof(float) * (size_t)(net->D / 2)))) {
		lora_errf(err, "out of memory");
		goto fail;
	}
	if (c->rope_local_theta > 0 && (c->rope_local_theta != c->rope_theta || c->rope_type != LORA_ROPE_DEFAULT) &&
	    !(net->inv_freq_local = malloc(sizeof(float) * (size_t)(net->D / 2)))) {
		lora_errf(err, "out of memory");
		goto fail;
	}
	rope_freqs(net);
	if (read_extra_config(net, base_dir, err) < 0)
		goto fail;
	if (load_frozen(net->base, "model.embed_tokens.weight", net->V, net->C, 0, &net->embed, err) < 0 ||
	    load_vec(net->base, "model.norm.weight", net->C, 0, &net->norm_f, err) < 0)
		goto fail;
	unit_offset(net, net->norm_f, net->C);
	/* tied: the embedding is the output layer, whatever else the file holds */
	if (c->tie_word_embeddings)
		net->lm_head = net->embed;
	else if (load_frozen(net->base, "lm_head.weight", net->V, net->C, 0, &net->lm_head, err) < 0)
		goto fail;
	for (int l = 0; l < net->L; l++)
		if (load_block(net, l, err) < 0)
			goto fail;
	*out = net;
	return 0;
fail:
	lora_net_close(net);
	return -1;
}

void lora_net_close(struct lora_net *net)
{
	if (!net)
		return;
	if (net->be && net->be->release)
		net->be->release(net);
	for (int l = 0; net->blocks && l < net->L; l++) {
		free(net->blocks[l].ln1);
		free(net->blocks[l].ln2);
		free(net->blocks[l].q_norm);
		free(net->blocks[l].post_attn);
		free(net->blocks[l].post_ff);
		free(net->blocks[l].k_norm);
		for (int t = 0; t < LORA_NTARGET; t++) {
			lora_nf4_free(&net->blocks[l].lin[t].w.q);
			free(net->blocks[l].lin[t].bias);
		}
	}
	free(net->blocks);
	free(net->inv_freq);
	free(net->inv_freq_local);
	free(net->norm_f);
	free(net->params);
	free(net->grads);
	lora_model_close(net->base);
	free(net);
}

uint64_t lora_net_frozen_bytes(const struct lora_net *net)
{
	uint64_t total = 0;

	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_frozen *w = &net->blocks[l].lin[t].w;
			uint64_t n = (uint64_t)w->rows * (uint64_t)w->cols;

			total += w->fmt == LORA_WF_NF4 ? lora_nf4_bytes(n)
						       : n * (w->fmt == LORA_WF_F32 ? 4 : 2);
		}
	return total;
}

/* ------------------------------------------------------------ LoRA arena */

/* Lay out the arena for per-module ranks r[l*7+t] (0: none). */
static int build_arena(struct lora_net *net, const int *r, const float *scale, struct lora_err *err)
{
	size_t off = 0;

	/* the backend sized its buffers for the old adapters */
	if (net->be && net->be->release)
		net->be->release(net);
	free(net->params);
	free(net->grads);
	net->params = net->grads = NULL;
	net->has_lora = 0;
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			struct lora_linear *lin = &net->blocks[l].lin[t];
			const int k = r[l * LORA_NTARGET + t];

			lin->has_lora = k > 0;
			memset(&lin->lora, 0, sizeof(lin->lora));
			if (k <= 0)
				continue;
			lin->lora.r = k;
			lin->lora.scale = scale[l * LORA_NTARGET + t];
			lin->lora.a_off = off;
			off += (size_t)k * (size_t)lin->w.cols;
			lin->lora.b_off = off;
			off += (size_t)lin->w.rows * (size_t)k;
			net->has_lora = 1;
		}
	net->n_params = off;
	net->params = calloc(off ? off : 1, sizeof(float));
	net->grads = calloc(off ? off : 1, sizeof(float));
	if (!net->params || !net->grads)
		return lora_errf(err, "out of memory for %zu LoRA parameters", off);
	return 0;
}

const char *lora_net_target_name(const struct lora_net *net, enum lora_target t)
{
	if (!net->fused)
		return lora_target_names[t];
	switch (t) {
	case LORA_T_Q: return "qkv_proj";
	case LORA_T_GATE: return "gate_up_proj";
	case LORA_T_K: case LORA_T_V: case LORA_T_UP: return NULL;
	default: return lora_target_names[t];
	}
}

int lora_net_module_name(const struct lora_net *net, char *buf, size_t len, int layer, enum lora_target t)
{
	const char *n = lora_net_target_name(net, t);

	if (!n) {
		if (len)
			buf[0] = 0;
		return -1;
	}
	return snprintf(buf, len, "model.layers.%d.%s.%s", layer, t <= LORA_T_O ? "self_attn" : "mlp", n);
}

int lora_net_module_parse(const struct lora_net *net, const char *name, int *layer, enum lora_target *t)
{
	char want[160];
	int l;

	if (!net->fused)
		return lora_module_parse(name, layer, t);
	if (sscanf(name, "model.layers.%d.", &l) != 1 || l < 0 || l >= net->L)
		return -1;
	for (int i = 0; i < LORA_NTARGET; i++)
		if (lora_net_module_name(net, want, sizeof(want), l, (enum lora_target)i) > 0 &&
		    !strcmp(want, name)) {
			*layer = l;
			*t = (enum lora_target)i;
			return 0;
		}
	return -1;
}

unsigned lora_net_targets(const struct lora_net *net, unsigned mask)
{
	const unsigned qkv = (1u << LORA_T_Q) | (1u << LORA_T_K) | (1u << LORA_T_V);
	const unsigned gu = (1u << LORA_T_GATE) | (1u << LORA_T_UP);

	if (!net->fused)
		return mask;
	return (mask & ~(qkv | gu)) | (mask & qkv ? 1u << LORA_T_Q : 0) | (mask & gu ? 1u << LORA_T_GATE : 0);
}

const struct lora_mod *lora_net_mod(const struct lora_net *net, int layer, enum lora_target t)
{
	if (layer < 0 || layer >= net->L || (unsigned)t >= LORA_NTARGET || !net->blocks[layer].lin[t].has_lora)
		return NULL;
	return &net->blocks[layer].lin[t].lora;
}

int lora_net_init_lora(struct lora_net *net, const struct lora_cfg *cfg, struct lora_err *err)
{
	const size_t nm = (size_t)net->L * LORA_NTARGET;
	int *r = calloc(nm, sizeof(int));
	float *s = calloc(nm, sizeof(float));
	int rc = -1;

	if (!r || !s) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (cfg->rank <= 0 || cfg->rank > 65536 || !(cfg->alpha > 0) || !(cfg->dropout >= 0) ||
	    !(cfg->dropout < 1) || !(cfg->targets & LORA_TARGETS_ALL)) {
		lora_errc(err, LORA_EUSAGE, "bad LoRA settings (rank %d, alpha %g, dropout %g)", cfg->rank,
			  cfg->alpha, cfg->dropout);
		goto out;
	}
	for (size_t i = 0; i < nm; i++)
		if (lora_net_targets(net, cfg->targets) & (1u << (i % LORA_NTARGET))) {
			r[i] = cfg->rank;
			s[i] = (float)lora_scale(cfg->rank, cfg->alpha, cfg->rslora);
		}
	if (build_arena(net, r, s, err) < 0)
		goto out;
	net->lcfg = *cfg;
	net->lcfg.targets = lora_net_targets(net, cfg->targets);
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_linear *lin = &net->blocks[l].lin[t];
			if (lin->has_lora)
				lora_init_A(net->params + lin->lora.a_off, lin->lora.r, lin->w.cols, cfg->seed,
					    l, (enum lora_target)t);
		}
	rc = 0;
out:
	free(r);
	free(s);
	return rc;
}

void lora_net_zero_grad(struct lora_net *net)
{
	if (net->grads)
		memset(net->grads, 0, net->n_params * sizeof(float));
}

/* ------------------------------------------------------------ PEFT in */

int lora_net_load_peft(struct lora_net *net, const struct lora_peft *p, const char *label,
		       struct lora_err *err)
{
	const size_t nm = (size_t)net->L * LORA_NTARGET;
	int *r = calloc(nm, sizeof(int));
	float *s = calloc(nm, sizeof(float));
	int rc = -1;

	if (!r || !s) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (p->cfg.fan_in_fan_out) {
		lora_errf(err, "adapter '%s' uses fan_in_fan_out, which Llama-family models never do", label);
		goto out;
	}
	if (p->n_extra) {
		lora_errf(err, "adapter '%s' has %zu tensors besides LoRA A/B (modules_to_save); "
			  "they are not supported", label, p->n_extra);
		goto out;
	}
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct lora_peft_module *m = &p->modules[i];
		enum lora_target t;
		int l;
		const struct lora_frozen *w;

		if (lora_net_module_parse(net, m->name, &l, &t) < 0 || l >= net->L) {
			lora_errf(err, "adapter '%s' targets '%s', which is not a linear layer of this model",
				  label, m->name);
			goto out;
		}
		w = &net->blocks[l].lin[t].w;
		if (m->in != (uint64_t)w->cols || m->out != (uint64_t)w->rows || m->r <= 0 ||
		    m->A->ndim != 2 || m->B->ndim != 2) {
			lora_errf(err, "adapter '%s': '%s' is [%llu x %llu] with rank %d; the model's layer is "
				  "[%d x %d]", label, m->name, (unsigned long long)m->out,
				  (unsigned long long)m->in, m->r, w->rows, w->cols);
			goto out;
		}
		r[l * LORA_NTARGET + t] = m->r;
		s[l * LORA_NTARGET + t] = (float)m->scale;
	}
	if (build_arena(net, r, s, err) < 0)
		goto out;
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct lora_peft_module *m = &p->modules[i];
		enum lora_target t;
		int l;
		float *a, *b;

		lora_net_module_parse(net, m->name, &l, &t);
		if (!(a = lora_peft_load_f32(m->A, err)) || !(b = lora_peft_load_f32(m->B, err))) {
			free(a);
			goto out;
		}
		memcpy(net->params + net->blocks[l].lin[t].lora.a_off, a, m->A->nelem * sizeof(float));
		memcpy(net->params + net->blocks[l].lin[t].lora.b_off, b, m->B->nelem * sizeof(float));
		free(a);
		free(b);
	}
	lora_cfg_defaults(&net->lcfg);
	net->lcfg.rank = p->cfg.r;
	net->lcfg.alpha = p->cfg.lora_alpha;
	net->lcfg.rslora = p->cfg.use_rslora;
	net->lcfg.dropout = p->cfg.lora_dropout;
	net->lcfg.targets = 0;
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++)
			if (net->blocks[l].lin[t].has_lora)
				net->lcfg.targets |= 1u << t;
	rc = 0;
out:
	free(r);
	free(s);
	return rc;
}

int lora_net_load_adapter(struct lora_net *net, const char *peft_dir, struct lora_err *err)
{
	struct lora_peft *p;
	int rc;

	if (lora_peft_open(peft_dir, &p, err) < 0)
		return -1;
	rc = lora_net_load_peft(net, p, peft_dir, err);
	lora_peft_close(p);
	return rc;
}

/* ------------------------------------------------------------ PEFT out */

/* alpha a module's scale stands for, given its rank */
static double module_alpha(const struct lora_net *net, const struct lora_mod *m)
{
	return net->lcfg.rslora ? m->scale * sqrt((double)m->r) : m->scale * (double)m->r;
}

static char *adapter_config_json(const struct lora_net *net, const char *base_name)
{
	struct lora_buf b = LORA_BUF_INIT;
	const double base_alpha = net->lcfg.alpha;
	int first;

	lora_buf_puts(&b, "{\n  \"alpha_pattern\": {");
	first = 1;
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_mod *m = lora_net_mod(net, l, (enum lora_target)t);
			char name[128];
			double a;

			if (!m)
				continue;
			a = module_alpha(net, m);
			if (m->r == net->lcfg.rank && fabs(a - base_alpha) <= 1e-6 * base_alpha)
				continue;
			lora_net_module_name(net, name, sizeof(name), l, (enum lora_target)t);
			lora_buf_printf(&b, "%s\n    ", first ? "" : ",");
			lora_buf_json_str(&b, name);
			lora_buf_printf(&b, ": %.17g", a);
			first = 0;
		}
	lora_buf_puts(&b, first ? "},\n" : "\n  },\n");
	lora_buf_puts(&b, "  \"base_model_name_or_path\": ");
	if (base_name)
		lora_buf_json_str(&b, base_name);
	else
		lora_buf_puts(&b, "null");
	lora_buf_printf(&b, ",\n  \"bias\": \"none\",\n  \"fan_in_fan_out\": false,\n"
			"  \"inference_mode\": true,\n  \"init_lora_weights\": true,\n"
			"  \"layers_pattern\": null,\n  \"layers_to_transform\": null,\n"
			"  \"lora_alpha\": %.17g,\n  \"lora_dropout\": %.17g,\n"
			"  \"modules_to_save\": null,\n  \"peft_type\": \"LORA\",\n  \"r\": %d,\n"
			"  \"rank_pattern\": {", base_alpha, net->lcfg.dropout, net->lcfg.rank);
	first = 1;
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_mod *m = lora_net_mod(net, l, (enum lora_target)t);
			char name[128];

			if (!m || m->r == net->lcfg.rank)
				continue;
			lora_net_module_name(net, name, sizeof(name), l, (enum lora_target)t);
			lora_buf_printf(&b, "%s\n    ", first ? "" : ",");
			lora_buf_json_str(&b, name);
			lora_buf_printf(&b, ": %d", m->r);
			first = 0;
		}
	lora_buf_puts(&b, first ? "},\n" : "\n  },\n");
	lora_buf_puts(&b, "  \"revision\": null,\n  \"target_modules\": [");
	first = 1;
	for (int t = 0; t < LORA_NTARGET; t++)
		if (net->lcfg.targets & (1u << t)) {
			lora_buf_printf(&b, "%s\"%s\"", first ? "" : ", ", lora_net_target_name(net, (enum lora_target)t));
			first = 0;
		}
	lora_buf_printf(&b, "],\n  \"task_type\": \"CAUSAL_LM\",\n  \"use_dora\": false,\n"
			"  \"use_rslora\": %s\n}\n", net->lcfg.rslora ? "true" : "false");
	if (b.oom) {
		lora_buf_free(&b);
		return NULL;
	}
	return lora_buf_take(&b);
}

int lora_net_save_adapter(const struct lora_net *net, const char *dir, const char *base_name,
			  struct lora_err *err)
{
	struct lora_st_spec *specs = NULL;
	char (*names)[160] = NULL;
	const float **data = NULL;
	size_t *len = NULL, n = 0, cap = (size_t)net->L * LORA_NTARGET * 2;
	struct lora_st_writer w;
	char *json = NULL, *path = NULL;
	const char *mk[1] = {"format"}, *mv[1] = {"pt"};
	int rc = -1;

	if (!net->has_lora)
		return lora_errf(err, "no adapter to save");
	specs = calloc(cap, sizeof(*specs));
	names = calloc(cap, sizeof(*names));
	data = calloc(cap, sizeof(*data));
	len = calloc(cap, sizeof(*len));
	if (!specs || !names || !data || !len) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++) {
			const struct lora_linear *lin = &net->blocks[l].lin[t];
			char mod[128];

			if (!lin->has_lora)
				continue;
			lora_net_module_name(net, mod, sizeof(mod), l, (enum lora_target)t);
			for (int ab = 0; ab < 2; ab++, n++) {
				snprintf(names[n], sizeof(names[n]), "base_model.model.%s.lora_%c.weight", mod,
					 ab ? 'B' : 'A');
				specs[n].name = names[n];
				specs[n].dtype = LORA_DT_F32;
				specs[n].ndim = 2;
				specs[n].shape[0] = ab ? (uint64_t)lin->w.rows : (uint64_t)lin->lora.r;
				specs[n].shape[1] = ab ? (uint64_t)lin->lora.r : (uint64_t)lin->w.cols;
				data[n] = net->params + (ab ? lin->lora.b_off : lin->lora.a_off);
				len[n] = (size_t)(specs[n].shape[0] * specs[n].shape[1]) * sizeof(float);
			}
		}
	if (lora_mkdir_p(dir, 0755, err) < 0)
		goto out;
	if (!(path = lora_path_join(dir, "adapter_model.safetensors"))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_st_writer_open(&w, path, specs, n, mk, mv, 1, err) < 0)
		goto out;
	for (size_t i = 0; i < n; i++)
		if (lora_st_writer_write(&w, data[i], len[i], err) < 0) {
			lora_st_writer_abort(&w);
			goto out;
		}
	if (lora_st_writer_commit(&w, err) < 0)
		goto out;
	free(path);
	if (!(json = adapter_config_json(net, base_name)) ||
	    !(path = lora_path_join(dir, "adapter_config.json"))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	rc = lora_write_file_atomic(path, json, strlen(json), 0644, err);
out:
	free(json);
	free(path);
	free(specs);
	free(names);
	free(data);
	free(len);
	return rc;
}

/* ------------------------------------------------------------ running */

int lora_batch_check(const struct lora_net *net, const struct lora_batch *b, struct lora_err *err)
{
	if (b->B <= 0 || b->T <= 0 || (int64_t)b->B * b->T > (1 << 26))
		return lora_errf(err, "bad batch shape %d x %d", b->B, b->T);
	if (b->T > net->cfg.max_position_embeddings && net->cfg.max_position_embeddings > 0)
		return lora_errf(err, "sequence length %d exceeds the model's %d positions", b->T,
				 net->cfg.max_position_embeddings);
	for (int r = 0; r < b->B; r++) {
		const int n = b->len ? b->len[r] : b->T;

		if (n < 0 || n > b->T)
			return lora_errf(err, "row %d: length %d outside [0, %d]", r, n, b->T);
		for (int t = 0; t < n; t++) {
			const int32_t id = b->ids[(size_t)r * b->T + t];
			const int32_t lab = b->labels ? b->labels[(size_t)r * b->T + t] : id;

			if (id < 0 || id >= net->V)
				return lora_errf(err, "row %d: token id %d outside the vocabulary (%d)", r, id,
						 net->V);
			if (lab != -100 && (lab < 0 || lab >= net->V))
				return lora_errf(err, "row %d: label %d outside the vocabulary (%d)", r, lab,
						 net->V);
		}
	}
	return 0;
}

int lora_net_forward_backward(struct lora_net *net, const struct lora_batch *b, double grad_scale,
			      struct lora_fb_result *res, struct lora_err *err)
{
	int rc;

	if (!net->has_lora)
		return lora_errf(err, "no adapter to train");
	if (lora_batch_check(net, b, err) < 0)
		return -1;
	rc = net->be->run(net, b, 1, grad_scale, NULL, res, err);
	net->step++;
	return rc;
}

int lora_net_forward(struct lora_net *net, const struct lora_batch *b, float *logits,
		     struct lora_fb_result *res, struct lora_err *err)
{
	if (lora_batch_check(net, b, err) < 0)
		return -1;
	return net->be->run(net, b, 0, 0.0, logits, res, err);
}

size_t lora_net_max_rank(const struct lora_net *net)
{
	int r = 1;
	for (int l = 0; l < net->L; l++)
		for (int t = 0; t < LORA_NTARGET; t++)
			if (net->blocks[l].lin[t].has_lora && net->blocks[l].lin[t].lora.r > r)
				r = net->blocks[l].lin[t].lora.r;
	return (size_t)r;
}
