/*
 * mktiny.c - deterministic synthetic Llama-shaped models and PEFT adapters,
 * for the demo, the tests and the benchmarks (no Python, no download).
 *
 *   mktiny model DIR [--hidden 64] [--inter 128] [--layers 2] [--heads 4] [--kv-heads 2]
 *                    [--vocab 256] [--dtype bf16|fp16|fp32] [--tied] [--shards N] [--seed S]
 *                    [--name NAME]
 *   mktiny adapter DIR --base DIR [--targets q_proj,v_proj|all-linear] [--r 8] [--alpha 16]
 *                    [--seed S] [--dtype fp32|bf16] [--name BASE_NAME]
 *
 * Weights are N(0, 0.02²) from a splitmix64 stream seeded by --seed, norms
 * are 1; adapters have A ~ N(0, 1/in) and B ~ N(0, 0.01²), so B ≠ 0.
 * This is test tooling: it prints and exits on error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "libadapter/format/modeldir.h"
#include "libadapter/format/safetensors.h"

static uint64_t rng_state;

static uint64_t splitmix(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double uniform(void)
{
	return ((splitmix() >> 11) + 0.5) * 0x1p-53;
}

static double normal(void)
{
	return sqrt(-2 * log(uniform())) * cos(2 * M_PI * uniform());
}

static void die(const char *m, const struct lora_err *e)
{
	fprintf(stderr, "mktiny: %s%s%s\n", m, e ? ": " : "", e ? e->msg : "");
	exit(1);
}

static const char *arg(int argc, char **argv, const char *name, const char *def)
{
	for (int i = 0; i < argc - 1; i++)
		if (!strcmp(argv[i], name))
			return argv[i + 1];
	return def;
}

static int flag(int argc, char **argv, const char *name)
{
	for (int i = 0; i < argc; i++)
		if (!strcmp(argv[i], name))
			return 1;
	return 0;
}

static enum lora_dtype parse_dt(const char *s)
{
	if (!strcmp(s, "bf16")) return LORA_DT_BF16;
	if (!strcmp(s, "fp16")) return LORA_DT_F16;
	if (!strcmp(s, "fp32")) return LORA_DT_F32;
	die("unknown dtype", NULL);
	return LORA_DT_INVALID;
}

struct spec_list {
	struct lora_st_spec *s;
	float *fill;   /* per tensor: 0 = random normal * std, else constant */
	double *std;
	size_t n;
};

static void add(struct spec_list *l, const char *name, enum lora_dtype dt, uint64_t d0, uint64_t d1,
		double stdv, float constant)
{
	l->s = realloc(l->s, (l->n + 1) * sizeof(*l->s));
	l->std = realloc(l->std, (l->n + 1) * sizeof(double));
	l->fill = realloc(l->fill, (l->n + 1) * sizeof(float));
	if (!l->s || !l->std || !l->fill)
		die("out of memory", NULL);
	memset(&l->s[l->n], 0, sizeof(l->s[l->n]));
	l->s[l->n].name = strdup(name);
	l->s[l->n].dtype = dt;
	l->s[l->n].ndim = d1 ? 2 : 1;
	l->s[l->n].shape[0] = d0;
	l->s[l->n].shape[1] = d1;
	l->std[l->n] = stdv;
	l->fill[l->n] = constant;
	l->n++;
}

static void free_list(struct spec_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		free((char *)l->s[i].name);
	free(l->s);
	free(l->std);
	free(l->fill);
}

static void write_tensors(const char *path, struct spec_list *l, size_t from, size_t to,
			  const char *const *mk, const char *const *mv, size_t nm)
{
	struct lora_st_writer w;
	struct lora_err err = { 0 };
	size_t chunk = 1 << 16;
	float *f = malloc(chunk * sizeof(float));
	unsigned char *b = malloc(chunk * 4);

	if (!f || !b)
		die("out of memory", NULL);
	if (lora_st_writer_open(&w, path, l->s + from, to - from, mk, mv, nm, &err) < 0)
		die(path, &err);
	for (size_t i = from; i < to; i++) {
		uint64_t n = l->s[i].shape[0] * (l->s[i].ndim == 2 ? l->s[i].shape[1] : 1);
		size_t es = lora_dtype_bits(l->s[i].dtype) / 8;
		while (n) {
			size_t k = n < chunk ? (size_t)n : chunk;
			for (size_t j = 0; j < k; j++)
				f[j] = l->fill[i] != 0 ? l->fill[i] : (float)(normal() * l->std[i]);
			lora_from_f32(b, f, l->s[i].dtype, k);
			if (lora_st_writer_write(&w, b, k * es, &err) < 0)
				die(path, &err);
			n -= k;
		}
	}
	if (lora_st_writer_commit(&w, &err) < 0)
		die(path, &err);
	free(f);
	free(b);
}

static void write_text(const char *dir, const char *name, const char *text)
{
	struct lora_err err = { 0 };
	char *p = lora_path_join(dir, name);

	if (!p || lora_write_file_atomic(p, text, strlen(text), 0644, &err) < 0)
		die(name, &err);
	free(p);
}

static int make_model(const char *dir, int argc, char **argv)
{
	int H = atoi(arg(argc, argv, "--hidden", "64")), I = atoi(arg(argc, argv, "--inter", "128"));
	int L = atoi(arg(argc, argv, "--layers", "2")), nh = atoi(arg(argc, argv, "--heads", "4"));
	int nkv = atoi(arg(argc, argv, "--kv-heads", "2")), V = atoi(arg(argc, argv, "--vocab", "256"));
	int shards = atoi(arg(argc, argv, "--shards", "1")), tied = flag(argc, argv, "--tied");
	const char *dts = arg(argc, argv, "--dtype", "bf16");
	enum lora_dtype dt = parse_dt(dts);
	int hd = H / nh;
	struct spec_list l = { 0 };
	struct lora_err err = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	char name[256];
	const char *mk[] = { "format" }, *mv[] = { "pt" };

	rng_state = strtoull(arg(argc, argv, "--seed", "1"), NULL, 10);
	if (H <= 0 || I <= 0 || L <= 0 || nh <= 0 || nkv <= 0 || V <= 0 || H % nh || nh % nkv || shards < 1)
		die("bad model shape", NULL);
	if (lora_mkdir_p(dir, 0755, &err) < 0)
		die(dir, &err);
	add(&l, "model.embed_tokens.weight", dt, V, H, 0.02, 0);
	for (int i = 0; i < L; i++) {
		const char *p[] = { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
				    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" };
		uint64_t out[] = { (uint64_t)nh * hd, (uint64_t)nkv * hd, (uint64_t)nkv * hd, H, I, I, H };
		uint64_t in[] = { H, H, H, (uint64_t)nh * hd, H, H, I };
		snprintf(name, sizeof(name), "model.layers.%d.input_layernorm.weight", i);
		add(&l, name, dt, H, 0, 0, 1.0f);
		for (int k = 0; k < 7; k++) {
			snprintf(name, sizeof(name), "model.layers.%d.%s.weight", i, p[k]);
			add(&l, name, dt, out[k], in[k], 0.02, 0);
		}
		snprintf(name, sizeof(name), "model.layers.%d.post_attention_layernorm.weight", i);
		add(&l, name, dt, H, 0, 0, 1.0f);
	}
	add(&l, "model.norm.weight", dt, H, 0, 0, 1.0f);
	if (!tied)
		add(&l, "lm_head.weight", dt, V, H, 0.02, 0);
	if (shards == 1) {
		char *p = lora_path_join(dir, "model.safetensors");
		write_tensors(p, &l, 0, l.n, mk, mv, 1);
		free(p);
	} else {
		lora_buf_puts(&b, "{\"metadata\": {}, \"weight_map\": {");
		for (int s = 0; s < shards; s++) {
			size_t from = l.n * s / shards, to = l.n * (s + 1) / shards;
			char fn[128], *p;
			snprintf(fn, sizeof(fn), "model-%05d-of-%05d.safetensors", s + 1, shards);
			p = lora_path_join(dir, fn);
			write_tensors(p, &l, from, to, mk, mv, 1);
			free(p);
			for (size_t i = from; i < to; i++)
				lora_buf_printf(&b, "%s\"%s\": \"%s\"", i ? ", " : "", l.s[i].name, fn);
		}
		lora_buf_puts(&b, "}}\n");
		write_text(dir, "model.safetensors.index.json", b.data);
		lora_buf_free(&b);
	}
	lora_buf_printf(&b,
			"{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n"
			"  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n  \"num_hidden_layers\": %d,\n"
			"  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n  \"head_dim\": %d,\n"
			"  \"vocab_size\": %d,\n  \"max_position_embeddings\": 2048,\n  \"rms_norm_eps\": 1e-05,\n"
			"  \"rope_theta\": 10000.0,\n  \"tie_word_embeddings\": %s,\n  \"hidden_act\": \"silu\",\n"
			"  \"attention_bias\": false,\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n"
			"  \"torch_dtype\": \"%s\"\n}\n",
			H, I, L, nh, nkv, hd, V, tied ? "true" : "false",
			dt == LORA_DT_BF16 ? "bfloat16" : dt == LORA_DT_F16 ? "float16" : "float32");
	write_text(dir, "config.json", b.data);
	lora_buf_free(&b);
	free_list(&l);
	return 0;
}

static int make_adapter(const char *dir, int argc, char **argv)
{
	const char *base = arg(argc, argv, "--base", NULL);
	const char *targets = arg(argc, argv, "--targets", "q_proj,v_proj");
	const char *bname = arg(argc, argv, "--name", "tiny-llama");
	int r = atoi(arg(argc, argv, "--r", "8"));
	double alpha = atof(arg(argc, argv, "--alpha", "16"));
	enum lora_dtype dt = parse_dt(arg(argc, argv, "--dtype", "fp32"));
	struct lora_model *m;
	struct lora_err err = { 0 };
	struct spec_list l = { 0 };
	struct lora_buf b = LORA_BUF_INIT;
	const char *mk[] = { "format" }, *mv[] = { "pt" };
	char *p;
	int all = !strcmp(targets, "all-linear");

	rng_state = strtoull(arg(argc, argv, "--seed", "7"), NULL, 10);
	if (!base || r <= 0)
		die("adapter needs --base DIR and --r > 0", NULL);
	if (lora_model_open(base, 1, &m, &err) < 0)
		die(base, &err);
	if (lora_mkdir_p(dir, 0755, &err) < 0)
		die(dir, &err);
	for (size_t i = 0; i < m->n_tensors; i++) {
		const struct lora_st_tensor *t = m->tensors[i].t;
		const char *nm = t->name, *dot;
		size_t nl = strlen(nm);
		char mod[256], key[300], leaf[256];
		if (t->ndim != 2 || nl < 8 || strcmp(nm + nl - 7, ".weight") || strncmp(nm, "model.layers.", 13))
			continue;
		snprintf(mod, sizeof(mod), "%.*s", (int)(nl - 7), nm);
		dot = strrchr(mod, '.');
		snprintf(leaf, sizeof(leaf), "%s", dot ? dot + 1 : mod);
		if (!all) {
			char pat[300];
			snprintf(pat, sizeof(pat), ",%s,", leaf);
			char tl[512];
			snprintf(tl, sizeof(tl), ",%s,", targets);
			if (!strstr(tl, pat))
				continue;
		}
		snprintf(key, sizeof(key), "base_model.model.%s.lora_A.weight", mod);
		add(&l, key, dt, r, t->shape[1], 1.0 / sqrt((double)t->shape[1]), 0);
		snprintf(key, sizeof(key), "base_model.model.%s.lora_B.weight", mod);
		add(&l, key, dt, t->shape[0], r, 0.01, 0);
	}
	if (!l.n)
		die("no module matches --targets", NULL);
	p = lora_path_join(dir, "adapter_model.safetensors");
	write_tensors(p, &l, 0, l.n, mk, mv, 1);
	free(p);
	lora_buf_printf(&b, "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n"
			    "  \"base_model_name_or_path\": \"%s\",\n  \"r\": %d,\n  \"lora_alpha\": %g,\n"
			    "  \"lora_dropout\": 0.0,\n  \"bias\": \"none\",\n  \"use_rslora\": false,\n"
			    "  \"fan_in_fan_out\": false,\n  \"target_modules\": ",
			bname, r, alpha);
	if (all) {
		lora_buf_puts(&b, "[\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", \"down_proj\"]");
	} else {
		char *t = strdup(targets), *save = NULL;
		int first = 1;
		for (char *s = strtok_r(t, ",", &save); s; s = strtok_r(NULL, ",", &save), first = 0)
			lora_buf_printf(&b, "%s\"%s\"", first ? "[" : ", ", s);
		lora_buf_puts(&b, "]");
		free(t);
	}
	lora_buf_puts(&b, ",\n  \"rank_pattern\": {},\n  \"alpha_pattern\": {}\n}\n");
	write_text(dir, "adapter_config.json", b.data);
	lora_buf_free(&b);
	lora_model_close(m);
	free_list(&l);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: mktiny model DIR [options] | mktiny adapter DIR --base DIR [options]\n");
		return 2;
	}
	if (!strcmp(argv[1], "model"))
		return make_model(argv[2], argc - 3, argv + 3);
	if (!strcmp(argv[1], "adapter"))
		return make_adapter(argv[2], argc - 3, argv + 3);
	fprintf(stderr, "mktiny: unknown kind '%s'\n", argv[1]);
	return 2;
}
