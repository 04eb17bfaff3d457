/* gguf_lora.c - PEFT LoRA <-> llama.cpp LoRA GGUF (names, layout, the one-alpha fold); see gguf_lora.h. */
#include "libadapter/format/gguf_lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "libadapter/format/gguf.h"
#include "libadapter/format/safetensors.h"

/* HF projection (last two name components) -> llama.cpp tensor; q/k get the rotary row permutation */
static const struct {
	const char *hf, *gguf;
	int rope;                     /* 1: q (n_heads), 2: k (n_kv_heads) */
} proj_map[] = {
	{ "self_attn.q_proj", "attn_q", 1 },   { "self_attn.k_proj", "attn_k", 2 },
	{ "self_attn.v_proj", "attn_v", 0 },   { "self_attn.o_proj", "attn_output", 0 },
	{ "mlp.gate_proj", "ffn_gate", 0 },    { "mlp.up_proj", "ffn_up", 0 },
	{ "mlp.down_proj", "ffn_down", 0 },
};
#define N_PROJ (sizeof(proj_map) / sizeof(proj_map[0]))

/* llama.cpp architecture of a base, and whether its converter permutes q/k */
static const char *gguf_arch(const struct lora_model_config *cfg, int *permutes)
{
	*permutes = 0;
	if (!strcmp(cfg->model_type, "llama") || !strcmp(cfg->model_type, "mistral")) {
		*permutes = 1;
		return "llama";
	}
	if (!strcmp(cfg->model_type, "qwen2"))
		return "qwen2";
	if (!strcmp(cfg->model_type, "qwen3"))
		return "qwen3";
	return NULL;
}

int lora_gguf_module_name(const struct lora_model_config *cfg, const char *module, char out[64],
			  int *permute_heads, struct lora_err *err)
{
	int permutes, n = -1;
	const char *arch = gguf_arch(cfg, &permutes);
	char rest[64];

	*permute_heads = 0;
	if (!arch)
		return lora_errf(err, "base architecture '%s' has no llama.cpp LoRA mapping here (llama, mistral, "
				 "qwen2, qwen3)", cfg->model_type[0] ? cfg->model_type : "?");
	if (!strcmp(module, "lm_head")) {
		if (cfg->tie_word_embeddings)
			return lora_errf(err, "module 'lm_head': the base ties it to the embeddings and llama.cpp "
					 "has no output tensor to apply it to");
		snprintf(out, 64, "output.weight");
		return 0;
	}
	if (!strcmp(module, "model.embed_tokens"))
		return lora_errf(err, "module 'model.embed_tokens': LoRA on embeddings is not exported to GGUF");
	if (sscanf(module, "model.layers.%d.%63s", &n, rest) != 2 || n < 0 || n >= cfg->num_hidden_layers)
		return lora_errf(err, "module '%s': llama.cpp has no tensor for it", module);
	{
		char chk[96];
		snprintf(chk, sizeof(chk), "model.layers.%d.%s", n, rest);
		if (strcmp(chk, module))
			return lora_errf(err, "module '%s': llama.cpp has no tensor for it", module);
	}
	for (size_t i = 0; i < N_PROJ; i++) {
		if (strcmp(rest, proj_map[i].hf))
			continue;
		snprintf(out, 64, "blk.%d.%s.weight", n, proj_map[i].gguf);
		if (permutes && proj_map[i].rope)
			*permute_heads = proj_map[i].rope == 1 ? cfg->num_attention_heads : cfg->num_key_value_heads;
		return 0;
	}
	return lora_errf(err, "module '%s': llama.cpp has no tensor for it", module);
}

/* The inverse of lora_gguf_module_name for a tensor base name ("blk.3.attn_q.weight"). */
static int hf_module_name(const struct lora_model_config *cfg, const char *g, char out[96], int *permute_heads)
{
	int permutes, n = -1, len = 0;
	char mid[32];

	*permute_heads = 0;
	if (!gguf_arch(cfg, &permutes))
		return -1;
	if (!strcmp(g, "output.weight")) {
		snprintf(out, 96, "lm_head");
		return 0;
	}
	if (sscanf(g, "blk.%d.%31[a-z_].weight%n", &n, mid, &len) != 2 || g[len] || n < 0 ||
	    n >= cfg->num_hidden_layers)
		return -1;
	for (size_t i = 0; i < N_PROJ; i++) {
		if (strcmp(mid, proj_map[i].gguf))
			continue;
		snprintf(out, 96, "model.layers.%d.%s", n, proj_map[i].hf);
		if (permutes && proj_map[i].rope)
			*permute_heads = proj_map[i].rope == 1 ? cfg->num_attention_heads : cfg->num_key_value_heads;
		return 0;
	}
	return -1;
}

/*
 * Rotary row interleave of a [rows, rowbytes] matrix in place (llama's
 * converter): per head of hd = rows / heads rows, new row 2j + k is old row
 * k·hd/2 + j.  inverse: the other way.
 */
static int permute_rows(unsigned char *m, uint64_t rows, size_t rowbytes, int heads, int inverse,
			struct lora_err *err)
{
	uint64_t hd;
	unsigned char *tmp;

	if (heads <= 0 || rows % (uint64_t)heads || (rows / (uint64_t)heads) % 2)
		return lora_errf(err, "%llu rows do not split into %d heads of even size", (unsigned long long)rows,
				 heads);
	hd = rows / (uint64_t)heads;
	if (!(tmp = malloc((size_t)hd * rowbytes)))
		return lora_errf(err, "out of memory");
	for (int h = 0; h < heads; h++) {
		unsigned char *blk = m + (size_t)h * hd * rowbytes;
		for (uint64_t j = 0; j < hd / 2; j++)
			for (int k = 0; k < 2; k++) {
				uint64_t nw = 2 * j + (uint64_t)k, old = (uint64_t)k * (hd / 2) + j;
				if (inverse)
					memcpy(tmp + old * rowbytes, blk + nw * rowbytes, rowbytes);
				else
					memcpy(tmp + nw * rowbytes, blk + old * rowbytes, rowbytes);
			}
		memcpy(blk, tmp, (size_t)hd * rowbytes);
	}
	free(tmp);
	return 0;
}

/* ------------------------------------------------------------ export */

int lora_gguf_export_peft(const struct lora_peft *p, const struct lora_model_config *cfg, const char *name,
			  const char *out_path, struct lora_err *err)
{
	struct lora_gguf_tensor_spec *ts = NULL;
	struct lora_gguf_writer w;
	char (*names)[2][LORA_GGUF_MAX_NAME] = NULL;
	int *heads = NULL, permutes, rc = -1, open = 0;
	const char *arch = gguf_arch(cfg, &permutes);
	float alpha_g = (float)p->cfg.lora_alpha;

	if (!arch)
		return lora_errf(err, "cannot export to GGUF: base architecture '%s' has no llama.cpp LoRA mapping "
				 "here (llama, mistral, qwen2, qwen3)", cfg->model_type[0] ? cfg->model_type : "?");
	if (p->cfg.fan_in_fan_out)
		return lora_errf(err, "cannot export to GGUF: fan_in_fan_out adapters (Conv1D bases) are not "
				 "supported by llama.cpp");
	if (p->n_extra)
		return lora_errf(err, "cannot export to GGUF: tensor '%s' is not a lora_A/lora_B pair "
				 "(modules_to_save or bias); llama.cpp cannot apply it", p->extra[0]->name);
	if (!p->n_modules)
		return lora_errf(err, "cannot export to GGUF: the adapter has no LoRA modules");
	ts = calloc(2 * p->n_modules, sizeof(*ts));
	names = calloc(p->n_modules, sizeof(*names));
	heads = calloc(p->n_modules, sizeof(*heads));
	if (!ts || !names || !heads) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct lora_peft_module *m = &p->modules[i];
		char base[64];

		if (lora_gguf_module_name(cfg, m->name, base, &heads[i], err) < 0) {
			lora_err_prefix(err, "cannot export to GGUF");
			goto out;
		}
		if (snprintf(names[i][0], LORA_GGUF_MAX_NAME, "%s.lora_a", base) >= LORA_GGUF_MAX_NAME ||
		    snprintf(names[i][1], LORA_GGUF_MAX_NAME, "%s.lora_b", base) >= LORA_GGUF_MAX_NAME) {
			lora_errf(err, "cannot export to GGUF: tensor name of '%s' is too long", m->name);
			goto out;
		}
		ts[2 * i] = (struct lora_gguf_tensor_spec){ names[i][0], 2, { m->in, (uint64_t)m->r, 1, 1 }, LORA_GGML_F32 };
		ts[2 * i + 1] = (struct lora_gguf_tensor_spec){ names[i][1], 2, { (uint64_t)m->r, m->out, 1, 1 },
								LORA_GGML_F32 };
	}
	{
		const struct lora_gguf_kv_spec kv[] = {
			{ .key = "general.architecture", .type = LORA_GGUF_STRING, .str = arch },
			{ .key = "general.type", .type = LORA_GGUF_STRING, .str = "adapter" },
			{ .key = "adapter.type", .type = LORA_GGUF_STRING, .str = "lora" },
			{ .key = "general.name", .type = LORA_GGUF_STRING, .str = name ? name : "adapter" },
			{ .key = "adapter.lora.alpha", .type = LORA_GGUF_FLOAT32, .f = alpha_g },
			{ .key = "general.quantization_version", .type = LORA_GGUF_UINT32, .u = 2 },
		};
		if (lora_gguf_writer_open(&w, out_path, kv, sizeof(kv) / sizeof(kv[0]), ts, 2 * p->n_modules, err) < 0)
			goto out;
		open = 1;
	}
	for (size_t i = 0; i < p->n_modules; i++) {
		const struct lora_peft_module *m = &p->modules[i];
		/* f_m = s_m·r_m/alpha_g, so that llama.cpp's alpha_g/r_m gives s_m (gguf_lora.h) */
		double f = alpha_g != 0.0f ? m->scale * m->r / (double)alpha_g : m->scale;
		float *A = lora_peft_load_f32(m->A, err), *B = NULL;
		int ok = A != NULL;

		ok = ok && lora_gguf_writer_write(&w, A, (size_t)m->in * (size_t)m->r * 4, err) == 0;
		ok = ok && (B = lora_peft_load_f32(m->B, err)) != NULL;
		if (ok && f != 1.0)
			for (size_t k = 0; k < (size_t)m->out * (size_t)m->r; k++)
				B[k] = (float)(B[k] * f);
		if (ok && heads[i] && permute_rows((unsigned char *)B, m->out, (size_t)m->r * 4, heads[i], 0, err) < 0) {
			lora_err_prefix(err, "module '%s'", m->name);
			ok = 0;
		}
		ok = ok && lora_gguf_writer_write(&w, B, (size_t)m->out * (size_t)m->r * 4, err) == 0;
		free(A);
		free(B);
		if (!ok)
			goto out;
	}
	open = 0;
	rc = lora_gguf_writer_commit(&w, err);
out:
	if (open)
		lora_gguf_writer_abort(&w);
	free(ts);
	free(names);
	free(heads);
	return rc;
}

/* ------------------------------------------------------------ import */

struct pair {
	char module[96];
	const struct lora_gguf_tensor *a, *b;
	int heads;
	int r;
};

static int cmp_pair(const void *x, const void *y)
{
	return strcmp(((const struct pair *)x)->module, ((const struct pair *)y)->module);
}

static enum lora_dtype st_dtype(uint32_t t)
{
	switch (t) {
	case LORA_GGML_F32: return LORA_DT_F32;
	case LORA_GGML_F16: return LORA_DT_F16;
	case LORA_GGML_BF16: return LORA_DT_BF16;
	default: return LORA_DT_INVALID;
	}
}

/* Pair lora_a/lora_b tensors and check them against the base. */
static int collect_pairs(const struct lora_gguf *g, const struct lora_model *base, struct pair **out, size_t *n_out,
			 struct lora_err *err)
{
	struct pair *ps = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*ps));
	size_t n = 0;

	if (!ps)
		return lora_errf(err, "out of memory");
	for (size_t i = 0; i < g->n_tensors; i++) {
		const struct lora_gguf_tensor *t = &g->tensors[i];
		size_t l = strlen(t->name);
		char bn[LORA_GGUF_MAX_NAME], mod[96];
		int is_a, heads;
		struct pair *p = NULL;

		if (l < 8 || (strcmp(t->name + l - 7, ".lora_a") && strcmp(t->name + l - 7, ".lora_b"))) {
			lora_errf(err, "'%s': tensor '%s' is not a lora_a/lora_b tensor", g->path, t->name);
			goto fail;
		}
		is_a = t->name[l - 1] == 'a';
		snprintf(bn, sizeof(bn), "%.*s", (int)(l - 7), t->name);
		if (hf_module_name(&base->cfg, bn, mod, &heads) < 0) {
			lora_errf(err, "'%s': tensor '%s' names no module of this %s base", g->path, t->name,
				  base->cfg.model_type);
			goto fail;
		}
		if (st_dtype(t->type) == LORA_DT_INVALID || t->n_dims != 2) {
			lora_errf(err, "'%s': tensor '%s' must be a 2-d F32, F16 or BF16 tensor (type %s)", g->path,
				  t->name, lora_ggml_type_name(t->type));
			goto fail;
		}
		for (size_t j = 0; j < n; j++)
			if (!strcmp(ps[j].module, mod))
				p = &ps[j];
		if (!p) {
			p = &ps[n++];
			snprintf(p->module, sizeof(p->module), "%s", mod);
			p->heads = heads;
		}
		if (is_a)
			p->a = t;
		else
			p->b = t;
	}
	for (size_t i = 0; i < n; i++) {
		struct pair *p = &ps[i];
		char wn[128];
		const struct lora_model_tensor *bt;

		if (!p->a || !p->b) {
			lora_errf(err, "'%s': module '%s' lacks its lora_%s tensor", g->path, p->module, p->a ? "b" : "a");
			goto fail;
		}
		snprintf(wn, sizeof(wn), "%s.weight", p->module);
		if (!(bt = lora_model_find(base, wn)) || bt->t->ndim != 2) {
			lora_errf(err, "'%s': the base has no 2-d tensor '%s'", g->path, wn);
			goto fail;
		}
		/* lora_a ne {in, r}, lora_b ne {r, out}, base [out, in] */
		if (p->a->ne[0] != bt->t->shape[1] || p->b->ne[1] != bt->t->shape[0] || p->a->ne[1] != p->b->ne[0] ||
		    p->b->ne[0] == 0 || p->b->ne[0] > 65536 || p->a->type != p->b->type) {
			lora_errf(err, "'%s': module '%s': lora_a {%llu, %llu} and lora_b {%llu, %llu} do not fit the base "
				  "weight [%llu, %llu]", g->path, p->module, (unsigned long long)p->a->ne[0],
				  (unsigned long long)p->a->ne[1], (unsigned long long)p->b->ne[0],
				  (unsigned long long)p->b->ne[1], (unsigned long long)bt->t->shape[0],
				  (unsigned long long)bt->t->shape[1]);
			goto fail;
		}
		p->r = (int)p->b->ne[0];
	}
	qsort(ps, n, sizeof(*ps), cmp_pair);
	*out = ps;
	*n_out = n;
	return 0;
fail:
	free(ps);
	return -1;
}

static char *peft_config_json(const struct pair *ps, size_t n, double alpha_g, const char *base_name)
{
	cJSON *o = cJSON_CreateObject(), *tm = cJSON_CreateArray(), *rp = cJSON_CreateObject(),
	      *ap = cJSON_CreateObject();
	int counts_r = 0, r0 = ps[0].r;
	char *s = NULL;

	/* the most common rank is r, the others go to rank_pattern (by full module name) */
	for (size_t i = 0; i < n; i++) {
		int c = 0;
		for (size_t j = 0; j < n; j++)
			c += ps[j].r == ps[i].r;
		if (c > counts_r) {
			counts_r = c;
			r0 = ps[i].r;
		}
	}
	for (size_t i = 0; i < n; i++) {
		const char *dot = strrchr(ps[i].module, '.');
		const char *shortn = dot ? dot + 1 : ps[i].module;
		int dup = 0;
		for (int k = 0; k < cJSON_GetArraySize(tm); k++)
			dup |= !strcmp(cJSON_GetArrayItem(tm, k)->valuestring, shortn);
		if (!dup)
			cJSON_AddItemToArray(tm, cJSON_CreateString(shortn));
		if (ps[i].r != r0)
			cJSON_AddNumberToObject(rp, ps[i].module, ps[i].r);
		/* alpha_g = 0: llama.cpp applies scale 1, i.e. alpha_m = r_m */
		if (alpha_g == 0 && ps[i].r != r0)
			cJSON_AddNumberToObject(ap, ps[i].module, ps[i].r);
	}
	cJSON_AddStringToObject(o, "peft_type", "LORA");
	cJSON_AddStringToObject(o, "task_type", "CAUSAL_LM");
	cJSON_AddStringToObject(o, "base_model_name_or_path", base_name);
	cJSON_AddNumberToObject(o, "r", r0);
	cJSON_AddNumberToObject(o, "lora_alpha", alpha_g == 0 ? r0 : alpha_g);
	cJSON_AddNumberToObject(o, "lora_dropout", 0);
	cJSON_AddStringToObject(o, "bias", "none");
	cJSON_AddBoolToObject(o, "use_rslora", 0);
	cJSON_AddBoolToObject(o, "fan_in_fan_out", 0);
	cJSON_AddItemToObject(o, "target_modules", tm);
	cJSON_AddItemToObject(o, "rank_pattern", rp);
	cJSON_AddItemToObject(o, "alpha_pattern", ap);
	s = cJSON_Print(o);
	cJSON_Delete(o);
	return s;
}

int lora_gguf_to_peft(const char *gguf_path, const struct lora_model *base, const char *out_dir,
		      struct lora_err *err)
{
	struct lora_gguf *g = NULL;
	struct pair *ps = NULL;
	struct lora_st_spec *specs = NULL;
	char (*keys)[2][160] = NULL;
	struct lora_st_writer w;
	char *cfg_txt = NULL, *path = NULL;
	const char *s, *arch;
	double alpha_g = 0;
	size_t n = 0;
	int permutes, rc = -1, open = 0;
	unsigned char *row = NULL;

	if (!(arch = gguf_arch(&base->cfg, &permutes)))
		return lora_errf(err, "base architecture '%s' has no llama.cpp LoRA mapping here (llama, mistral, "
				 "qwen2, qwen3)", base->cfg.model_type);
	if (lora_gguf_open(gguf_path, &g, err) < 0)
		return -1;
	if (!(s = lora_gguf_get_str(g, "general.type")) || strcmp(s, "adapter")) {
		lora_errf(err, "'%s' is not a GGUF adapter (general.type is '%s')", gguf_path, s ? s : "");
		goto out;
	}
	if (!(s = lora_gguf_get_str(g, "adapter.type")) || strcmp(s, "lora")) {
		lora_errf(err, "'%s' is not a LoRA adapter (adapter.type is '%s')", gguf_path, s ? s : "");
		goto out;
	}
	if (!(s = lora_gguf_get_str(g, "general.architecture")) || strcmp(s, arch)) {
		lora_errf(err, "'%s' is an adapter for '%s', the base is '%s'", gguf_path, s ? s : "?", arch);
		goto out;
	}
	if (lora_gguf_find_kv(g, "adapter.lora.alpha") && lora_gguf_get_num(g, "adapter.lora.alpha", &alpha_g) < 0) {
		lora_errf(err, "'%s': adapter.lora.alpha is not a number", gguf_path);
		goto out;
	}
	if (!isfinite(alpha_g)) {
		lora_errf(err, "'%s': adapter.lora.alpha is not finite", gguf_path);
		goto out;
	}
	if (collect_pairs(g, base, &ps, &n, err) < 0)
		goto out;
	if (!n) {
		lora_errf(err, "'%s' holds no LoRA tensors", gguf_path);
		goto out;
	}
	specs = calloc(2 * n, sizeof(*specs));
	keys = calloc(n, sizeof(*keys));
	if (!specs || !keys) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		enum lora_dtype dt = st_dtype(ps[i].a->type);
		snprintf(keys[i][0], 160, "base_model.model.%s.lora_A.weight", ps[i].module);
		snprintf(keys[i][1], 160, "base_model.model.%s.lora_B.weight", ps[i].module);
		specs[2 * i] = (struct lora_st_spec){ keys[i][0], dt, 2, { ps[i].a->ne[1], ps[i].a->ne[0] } };
		specs[2 * i + 1] = (struct lora_st_spec){ keys[i][1], dt, 2, { ps[i].b->ne[1], ps[i].b->ne[0] } };
	}
	if (!(cfg_txt = peft_config_json(ps, n, alpha_g, base->dir)) || !(path = lora_path_join(out_dir, "adapter_config.json"))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_write_file_atomic(path, cfg_txt, strlen(cfg_txt), 0644, err) < 0)
		goto out;
	free(path);
	if (!(path = lora_path_join(out_dir, "adapter_model.safetensors"))) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_st_writer_open(&w, path, specs, 2 * n, NULL, NULL, 0, err) < 0)
		goto out;
	open = 1;
	for (size_t i = 0; i < n; i++) {
		const struct lora_gguf_tensor *b = ps[i].b;
		if (lora_st_writer_write(&w, ps[i].a->data, (size_t)ps[i].a->nbytes, err) < 0)
			goto out;
		if (!ps[i].heads) {
			if (lora_st_writer_write(&w, b->data, (size_t)b->nbytes, err) < 0)
				goto out;
			continue;
		}
		free(row);
		if (!(row = malloc((size_t)b->nbytes ? (size_t)b->nbytes : 1))) {
			lora_errf(err, "out of memory");
			goto out;
		}
		memcpy(row, b->data, (size_t)b->nbytes);
		if (permute_rows(row, b->ne[1], (size_t)(b->nbytes / b->ne[1]), ps[i].heads, 1, err) < 0) {
			lora_err_prefix(err, "'%s': module '%s'", gguf_path, ps[i].module);
			goto out;
		}
		if (lora_st_writer_write(&w, row, (size_t)b->nbytes, err) < 0)
			goto out;
	}
	open = 0;
	rc = lora_st_writer_commit(&w, err);
out:
	if (open)
		lora_st_writer_abort(&w);
	free(row);
	free(path);
	free(cfg_txt);
	free(specs);
	free(keys);
	free(ps);
	lora_gguf_close(g);
	return rc;
}
