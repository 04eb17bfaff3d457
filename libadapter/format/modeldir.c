/* modeldir.c - Hugging Face model folders: config.json, shards, tensors by name. */
#include "libadapter/format/modeldir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"

#define MAX_JSON_FILE (64u << 20)

/* ----------------------------------------------------------- config.json */

static int get_int(const cJSON *o, const char *k, int def, int *out, const char *label,
		   struct lora_err *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	if (!v || cJSON_IsNull(v)) {
		*out = def;
		return 0;
	}
	if (!cJSON_IsNumber(v) || v->valuedouble < -1 || v->valuedouble > 1e9 ||
	    v->valuedouble != (double)(int)v->valuedouble)  /* range first: (int)1e300 is undefined */
		return lora_errf(err, "'%s': '%s' is not a valid integer", label, k);
	*out = (int)v->valuedouble;
	return 0;
}

static int get_num(const cJSON *o, const char *k, double def, double *out, const char *label,
		   struct lora_err *err)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	if (!v || cJSON_IsNull(v)) {
		*out = def;
		return 0;
	}
	if (!cJSON_IsNumber(v))
		return lora_errf(err, "'%s': '%s' is not a number", label, k);
	*out = v->valuedouble;
	return 0;
}

static int get_bool(const cJSON *o, const char *k, int def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static void get_str(const cJSON *o, const char *k, char *dst, size_t n)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	dst[0] = '\0';
	if (cJSON_IsString(v))
		snprintf(dst, n, "%s", v->valuestring);
}

/* bos/eos may be an int or a list of ints (Llama 3.1 eos); take the first. */
static int get_token_id(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	if (cJSON_IsArray(v))
		v = cJSON_GetArrayItem(v, 0);
	return cJSON_IsNumber(v) ? (int)v->valuedouble : -1;
}

static int parse_rope_scaling(const cJSON *root, struct lora_model_config *c, const char *label,
			      struct lora_err *err)
{
	const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
	const cJSON *t;

	c->rope_type = LORA_ROPE_DEFAULT;
	if (!rs || cJSON_IsNull(rs))  /* transformers >= 5 writes rope_parameters, theta inside */
		rs = cJSON_GetObjectItemCaseSensitive(root, "rope_parameters");
	if (!rs || cJSON_IsNull(rs))
		return 0;
	if (!cJSON_IsObject(rs))
		return lora_errf(err, "'%s': rope_scaling is not an object", label);
	if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(rs, "full_attention"))) {
		/* one set per layer type (Gemma 3): the sliding layers' plain theta, then the full ones' */
		const cJSON *sl = cJSON_GetObjectItemCaseSensitive(rs, "sliding_attention");

		if (cJSON_IsObject(sl)) {
			t = cJSON_GetObjectItemCaseSensitive(sl, "rope_type");
			if (cJSON_IsString(t) && strcmp(t->valuestring, "default"))
				return lora_errf(err, "'%s': rope_parameters sliding_attention type '%s' is not "
						 "supported (default)", label, t->valuestring);
			if (get_num(sl, "rope_theta", 0.0, &c->rope_local_theta, label, err) < 0)
				return -1;
		}
		rs = cJSON_GetObjectItemCaseSensitive(rs, "full_attention");
	}
	if (get_num(rs, "rope_theta", c->rope_theta, &c->rope_theta, label, err) < 0)
		return -1;
	t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
	if (!cJSON_IsString(t))
		t = cJSON_GetObjectItemCaseSensitive(rs, "type");
	if (!cJSON_IsString(t))
		return lora_errf(err, "'%s': rope_scaling has no rope_type", label);
	if (!strcmp(t->valuestring, "default"))
		return 0;
	if (!strcmp(t->valuestring, "linear"))
		c->rope_type = LORA_ROPE_LINEAR;
	else if (!strcmp(t->valuestring, "llama3"))
		c->rope_type = LORA_ROPE_LLAMA3;
	else
		return lora_errf(err, "'%s': rope_scaling type '%s' is not supported (none, linear, llama3)",
				 label, t->valuestring);
	if (get_num(rs, "factor", 1.0, &c->rope_factor, label, err) < 0 ||
	    get_num(rs, "low_freq_factor", 1.0, &c->rope_low_freq_factor, label, err) < 0 ||
	    get_num(rs, "high_freq_factor", 4.0, &c->rope_high_freq_factor, label, err) < 0 ||
	    get_int(rs, "original_max_position_embeddings", 8192, &c->rope_original_max_pos, label,
		    err) < 0)
		return -1;
	if (!(c->rope_factor > 0))
		return lora_errf(err, "'%s': rope_scaling factor must be positive", label);
	return 0;
}

int lora_model_config_parse(const char *json, size_t len, const char *label,
			    struct lora_model_config *c, struct lora_err *err)
{
	cJSON *root = cJSON_ParseWithLength(json, len);
	const cJSON *arch;
	int rc = -1;

	memset(c, 0, sizeof(*c));
	if (!root)
		return lora_errf(err, "'%s' is not valid JSON", label);
	if (!cJSON_IsObject(root)) {
		lora_errf(err, "'%s' is not a JSON object", label);
		goto out;
	}
	arch = cJSON_GetObjectItemCaseSensitive(root, "architectures");
	if (cJSON_IsArray(arch) && cJSON_IsString(cJSON_GetArrayItem(arch, 0)))
		snprintf(c->architecture, sizeof(c->architecture), "%s",
			 cJSON_GetArrayItem(arch, 0)->valuestring);
	get_str(root, "model_type", c->model_type, sizeof(c->model_type));
	get_str(root, "torch_dtype", c->torch_dtype, sizeof(c->torch_dtype));
	if (!c->torch_dtype[0])
		get_str(root, "dtype", c->torch_dtype, sizeof(c->torch_dtype));
	if (get_int(root, "hidden_size", 0, &c->hidden_size, label, err) < 0 ||
	    get_int(root, "intermediate_size", 0, &c->intermediate_size, label, err) < 0 ||
	    get_int(root, "num_hidden_layers", 0, &c->num_hidden_layers, label, err) < 0 ||
	    get_int(root, "num_attention_heads", 0, &c->num_attention_heads, label, err) < 0 ||
	    get_int(root, "num_key_value_heads", c->num_attention_heads, &c->num_key_value_heads,
		    label, err) < 0 ||
	    get_int(root, "vocab_size", 0, &c->vocab_size, label, err) < 0 ||
	    get_int(root, "max_position_embeddings", 2048, &c->max_position_embeddings, label,
		    err) < 0 ||
	    get_num(root, "rms_norm_eps", 1e-6, &c->rms_norm_eps, label, err) < 0 ||
	    get_num(root, "rope_theta", 10000.0, &c->rope_theta, label, err) < 0 ||
	    get_num(root, "rope_local_base_freq", 0.0, &c->rope_local_theta, label, err) < 0 ||
	    parse_rope_scaling(root, c, label, err) < 0)
		goto out;
	if (get_int(root, "head_dim", c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0,
		    &c->head_dim, label, err) < 0)
		goto out;
	if (c->head_dim == 0 && c->num_attention_heads > 0)
		c->head_dim = c->hidden_size / c->num_attention_heads;
	c->tie_word_embeddings = get_bool(root, "tie_word_embeddings", 0);
	c->attention_bias = get_bool(root, "attention_bias", 0);
	c->mlp_bias = get_bool(root, "mlp_bias", 0);
	c->bos_token_id = get_token_id(root, "bos_token_id");
	c->eos_token_id = get_token_id(root, "eos_token_id");
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

/* --------------------------------------------------------------- folder */

static int cmp_tensor(const void *a, const void *b)
{
	return strcmp(((const struct lora_model_tensor *)a)->t->name,
		      ((const struct lora_model_tensor *)b)->t->name);
}

void lora_model_close(struct lora_model *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n_shards; i++) {
		lora_st_close(m->shards ? m->shards[i] : NULL);
		free(m->shard_names ? m->shard_names[i] : NULL);
	}
	free(m->shards);
	free(m->shard_names);
	free(m->tensors);
	free(m->dir);
	free(m);
}

/* Pickle weights present and no safetensors: refuse, saying why. */
static int refuse_pickle(const char *dir, struct lora_err *err)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char found[256] = "";

	if (!d)
		return lora_errf(err, "cannot open model folder '%s': %s", dir, strerror(errno));
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name);
		if ((n > 4 && !strcmp(e->d_name + n - 4, ".bin")) ||
		    (n > 3 && !strcmp(e->d_name + n - 3, ".pt")) ||
		    (n > 4 && !strcmp(e->d_name + n - 4, ".pth"))) {
			snprintf(found, sizeof(found), "%s", e->d_name);
			break;
		}
	}
	closedir(d);
	if (found[0])
		return lora_errf(err,
				 "'%s/%s' is a pickle file, which lora refuses (loading pickle runs "
				 "arbitrary code); convert the model to safetensors",
				 dir, found);
	return lora_errf(err, "no model.safetensors or model.safetensors.index.json in '%s'", dir);
}

static int add_shard(struct lora_model *m, const char *name, struct lora_err *err)
{
	for (size_t i = 0; i < m->n_shards; i++)
		if (!strcmp(m->shard_names[i], name))
			return 0;
	if (strchr(name, '/') || !strcmp(name, "..") || !strcmp(name, "."))
		return lora_errf(err, "'%s/model.safetensors.index.json': shard name '%s' is not a plain file name",
				 m->dir, name);
	m->shard_names[m->n_shards] = strdup(name);
	if (!m->shard_names[m->n_shards])
		return lora_errf(err, "out of memory");
	m->n_shards++;
	return 0;
}

/* Read model.safetensors.index.json: the shard list, and every weight_map entry checked later. */
static int read_index(struct lora_model *m, const char *path, cJSON **map_out, struct lora_err *err)
{
	char *txt;
	size_t len, n = 0;
	cJSON *root, *map, *it;

	if (lora_read_file(path, MAX_JSON_FILE, &txt, &len, err) < 0)
		return -1;
	root = cJSON_ParseWithLength(txt, len);
	free(txt);
	if (!root)
		return lora_errf(err, "'%s' is not valid JSON", path);
	map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (!cJSON_IsObject(map)) {
		cJSON_Delete(root);
		return lora_errf(err, "'%s' has no weight_map object", path);
	}
	cJSON_ArrayForEach(it, map) {
		if (!cJSON_IsString(it)) {
			lora_errf(err, "'%s': weight_map value for '%s' is not a file name", path,
				  it->string);
			cJSON_Delete(root);  /* after the message: it->string lives in root */
			return -1;
		}
		n++;
	}
	m->shard_names = calloc(n ? n : 1, sizeof(char *));
	m->shards = calloc(n ? n : 1, sizeof(struct lora_st *));
	if (!m->shard_names || !m->shards) {
		cJSON_Delete(root);
		return lora_errf(err, "out of memory");
	}
	cJSON_ArrayForEach(it, map)
		if (add_shard(m, it->valuestring, err) < 0) {
			cJSON_Delete(root);
			return -1;
		}
	*map_out = root;
	return 0;
}

static int build_tensor_index(struct lora_model *m, struct lora_err *err)
{
	size_t n = 0, k = 0;

	for (size_t s = 0; s < m->n_shards; s++) {
		n += m->shards[s]->n_tensors;
		m->total_bytes += m->shards[s]->size;
	}
	m->tensors = calloc(n ? n : 1, sizeof(*m->tensors));
	if (!m->tensors)
		return lora_errf(err, "out of memory");
	for (size_t s = 0; s < m->n_shards; s++)
		for (size_t i = 0; i < m->shards[s]->n_tensors; i++) {
			m->tensors[k].t = &m->shards[s]->tensors[i];
			m->tensors[k].shard = s;
			m->n_params += m->shards[s]->tensors[i].nelem;
			k++;
		}
	m->n_tensors = n;
	qsort(m->tensors, n, sizeof(*m->tensors), cmp_tensor);
	for (size_t i = 1; i < n; i++)
		if (!strcmp(m->tensors[i].t->name, m->tensors[i - 1].t->name))
			return lora_errf(err, "'%s': tensor '%s' appears in two shards (%s, %s)", m->dir,
					 m->tensors[i].t->name, m->shard_names[m->tensors[i - 1].shard],
					 m->shard_names[m->tensors[i].shard]);
	return 0;
}

/* Every name in weight_map must be in the shard it names. */
static int check_weight_map(struct lora_model *m, const cJSON *root, const char *path,
			    struct lora_err *err)
{
	const cJSON *it, *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");

	cJSON_ArrayForEach(it, map) {
		const struct lora_model_tensor *t = lora_model_find(m, it->string);
		if (!t || strcmp(m->shard_names[t->shard], it->valuestring))
			return lora_errf(err, "'%s': tensor '%s' is not in shard '%s'", path, it->string,
					 it->valuestring);
	}
	return 0;
}

/* A committed swap journal: the shards may be half old, half new; refuse (see modeldir.h). */
static int check_no_journal(const char *dir, struct lora_err *err)
{
	char *j = lora_path_join(dir, LORA_SWAP_JOURNAL);
	struct stat st;
	int there;

	if (!j)
		return lora_errf(err, "out of memory");
	there = lstat(j, &st) == 0;
	free(j);
	if (there)
		return lora_errf(err, "'%s' has an unfinished swap (journal '%s/%s'); run 'lora swap %s "
				 "--recover' to finish it", dir, dir, LORA_SWAP_JOURNAL, dir);
	return 0;
}

int lora_model_open(const char *dir, int need_config, struct lora_model **out, struct lora_err *err)
{
	struct lora_model *m;
	char *cfg_path = NULL, *idx_path = NULL, *single = NULL, *txt = NULL;
	cJSON *index = NULL;
	size_t len;
	int rc = -1;

	*out = NULL;
	if (!lora_is_dir(dir))
		return lora_errf(err, "'%s' is not a model folder", dir);
	if (check_no_journal(dir, err) < 0)
		return -1;
	m = calloc(1, sizeof(*m));
	if (!m || !(m->dir = strdup(dir))) {
		free(m);
		return lora_errf(err, "out of memory");
	}
	cfg_path = lora_path_join(dir, "config.json");
	idx_path = lora_path_join(dir, "model.safetensors.index.json");
	single = lora_path_join(dir, "model.safetensors");
	if (!cfg_path || !idx_path || !single) {
		lora_errf(err, "out of memory");
		goto out;
	}
	if (lora_is_file(cfg_path)) {
		if (lora_read_file(cfg_path, MAX_JSON_FILE, &txt, &len, err) < 0 ||
		    lora_model_config_parse(txt, len, cfg_path, &m->cfg, err) < 0)
			goto out;
		m->has_config = 1;
	} else if (need_config) {
		lora_errf(err, "no config.json in '%s'", dir);
		goto out;
	}
	if (lora_is_file(idx_path)) {
		if (read_index(m, idx_path, &index, err) < 0)
			goto out;
	} else if (lora_is_file(single)) {
		m->shard_names = calloc(1, sizeof(char *));
		m->shards = calloc(1, sizeof(struct lora_st *));
		if (!m->shard_names || !m->shards || !(m->shard_names[0] = strdup("model.safetensors"))) {
			lora_errf(err, "out of memory");
			goto out;
		}
		m->n_shards = 1;
	} else {
		refuse_pickle(dir, err);
		goto out;
	}
	for (size_t s = 0; s < m->n_shards; s++) {
		char *p = lora_path_join(dir, m->shard_names[s]);
		int r;
		if (!p) {
			lora_errf(err, "out of memory");
			goto out;
		}
		if (!lora_is_file(p)) {
			lora_errf(err, "'%s': shard '%s' named by model.safetensors.index.json is missing",
				  dir, m->shard_names[s]);
			free(p);
			goto out;
		}
		r = lora_st_open(p, &m->shards[s], err);
		free(p);
		if (r < 0)
			goto out;
	}
	if (build_tensor_index(m, err) < 0 || (index && check_weight_map(m, index, idx_path, err) < 0))
		goto out;
	rc = 0;
out:
	cJSON_Delete(index);
	free(txt);
	free(cfg_path);
	free(idx_path);
	free(single);
	if (rc < 0)
		lora_model_close(m);
	else
		*out = m;
	return rc;
}

const struct lora_model_tensor *lora_model_find(const struct lora_model *m, const char *name)
{
	size_t lo = 0, hi = m->n_tensors;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, m->tensors[mid].t->name);
		if (c == 0)
			return &m->tensors[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

enum lora_dtype lora_model_dtype(const struct lora_model *m)
{
	uint64_t bytes[LORA_DT_COUNT] = { 0 };
	int best = LORA_DT_INVALID;

	for (size_t i = 0; i < m->n_tensors; i++)
		bytes[m->tensors[i].t->dtype] += m->tensors[i].t->end - m->tensors[i].t->begin;
	for (int d = 1; d < LORA_DT_COUNT; d++)
		if (bytes[d] > bytes[best])
			best = d;
	return (enum lora_dtype)best;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int lora_model_fingerprint(const struct lora_model *m, const char *const *modules, size_t n,
			   char out[72], struct lora_err *err)
{
	const char **sorted = malloc((n ? n : 1) * sizeof(char *));
	struct lora_buf b = LORA_BUF_INIT;
	char hex[65];
	int rc = -1;

	if (!sorted)
		return lora_errf(err, "out of memory");
	memcpy(sorted, modules, n * sizeof(char *));
	qsort(sorted, n, sizeof(char *), cmp_str);
	for (size_t i = 0; i < n; i++) {
		const struct lora_model_tensor *mt;
		char *name;

		if (i && !strcmp(sorted[i], sorted[i - 1]))
			continue;
		lora_buf_printf(&b, "%s.weight", sorted[i]);
		name = b.data ? b.data + b.len - strlen(sorted[i]) - 7 : NULL;
		mt = name ? lora_model_find(m, name) : NULL;
		if (!mt) {
			lora_errf(err, "'%s' has no tensor '%s.weight'", m->dir, sorted[i]);
			goto out;
		}
		lora_sha256_hex(mt->t->data, mt->t->end - mt->t->begin, hex);
		lora_buf_printf(&b, " %s ", lora_dtype_name(mt->t->dtype));
		for (int d = 0; d < mt->t->ndim; d++)
			lora_buf_printf(&b, "%s%llu", d ? "x" : "", (unsigned long long)mt->t->shape[d]);
		lora_buf_printf(&b, " %s\n", hex);
	}
	if (b.oom) {
		lora_errf(err, "out of memory");
		goto out;
	}
	lora_sha256_hex(b.data ? b.data : "", b.len, hex);
	snprintf(out, 72, "sha256:%s", hex);
	rc = 0;
out:
	lora_buf_free(&b);
	free(sorted);
	return rc;
}
