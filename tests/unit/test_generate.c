/*
 * test_generate.c - the key/value-cached forward pass and the sampler.
 *
 * 1. Against our own full forward pass (lora_net_forward over the whole
 *    prefix): at every step of a greedy generation the cached logits of the
 *    new token equal the full pass's logits at that position, and so does
 *    the argmax.  Tolerance: both are fp32 from the same weights; what
 *    differs is the order of the attention sums (one query at a time here,
 *    a T x T gemm there) and gemm blocking for different row counts, errors
 *    of ~K·2^-24 relative per dot product (K <= 160), ~1e-6 on logits of
 *    size ~1-5 after 2-3 layers; 1e-4 absolute leaves a margin of ~100.
 * 2. Against transformers' greedy generate (+ peft), tests/oracle/gen_greedy.py
 *    -> tests/fixtures/gen/greedy.json: the same tokens, exactly, for four
 *    architectures (tied, llama3 rope, qwen2 biases, mistral sliding
 *    window), weights as stored and NF4, with and without the adapter.  The
 *    oracle kept only prompts whose every step has a top-2 logit gap above
 *    1e-3, 1000x the summation-order error, so equality is the right test.
 * 3. The sampler: greedy at temperature 0, reproducible by seed, frequencies
 *    of many draws near the softmax, top-p restricting the support.
 */
#include <stdint.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "libadapter/base/fsutil.h"
#include "train/generate.h"
#include "train/net.h"
#include "tests/t.h"

static const char *const models[] = {"llama_tied", "llama3_untied", "qwen2", "mistral_window",
				     "families/qwen3", "families/llama32_tied", "families/phi3", "families/gemma2",
				     "families/gemma3"};
static double worst;

static struct lora_net *open_net(const char *model, enum lora_quant q, int adapter)
{
	char rel[128], *dir;
	struct lora_net_opts o;
	struct lora_net *net = NULL;
	struct lora_err err;
	int rc;

	lora_net_opts_defaults(&o);
	o.quant = q;
	/* "M": tests/fixtures/train/M; "families/M" names its folder */
	const char *room = strchr(model, '/') ? "" : "train/";

	snprintf(rel, sizeof(rel), "%s%s%s", room, model, adapter ? ".adapter" : "");
	dir = t_fixture(rel);
	if (adapter) {
		char *base;

		snprintf(rel, sizeof(rel), "%s%s", room, model);
		base = t_fixture(rel);
		rc = lora_net_open(&net, base, &o, &err);
		free(base);
		if (rc == 0)
			rc = lora_net_load_adapter(net, dir, &err);
	} else {
		rc = lora_net_open(&net, dir, &o, &err);
	}
	free(dir);
	CHECKF(rc == 0, "%s: %s", model, err.msg);
	if (rc) {
		lora_net_close(net);
		return NULL;
	}
	return net;
}

/* Greedy generation of k tokens after prompt, each step checked against a full forward pass. */
static void check_against_full(struct lora_net *net, const int32_t *prompt, int n, int k)
{
	struct lora_gen *g;
	struct lora_err err;
	const int V = net->V;
	int32_t *seq = malloc(sizeof(int32_t) * (size_t)(n + k));
	float *lg = malloc(sizeof(float) * (size_t)V);
	float *full = malloc(sizeof(float) * (size_t)(n + k) * V);
	int len = n;

	CHECK(seq && lg && full);
	CHECKF(lora_gen_new(&g, net, n + k, &err) == 0, "%s", err.msg);
	memcpy(seq, prompt, sizeof(int32_t) * (size_t)n);
	CHECKF(lora_gen_feed(g, seq, n, lg, NULL, &err) == 0, "%s", err.msg);
	for (int s = 0; s <= k; s++) {
		struct lora_batch b = {1, len, seq, NULL, NULL};
		struct lora_fb_result res;
		const float *ref;
		double d = 0;

		CHECKF(lora_net_forward(net, &b, full, &res, &err) == 0, "%s", err.msg);
		ref = full + (size_t)(len - 1) * V;
		for (int j = 0; j < V; j++)
			d = fabs(lg[j] - ref[j]) > d ? fabs(lg[j] - ref[j]) : d;
		worst = d > worst ? d : worst;
		CHECKF(d <= 1e-4, "step %d: logits differ by %g", s, d);
		CHECK(lora_argmax(lg, V) == lora_argmax(ref, V));
		if (s == k)
			break;
		seq[len] = lora_argmax(lg, V);
		CHECKF(lora_gen_feed(g, seq + len, 1, lg, NULL, &err) == 0, "%s", err.msg);
		len++;
	}
	CHECK(lora_gen_pos(g) == n + k);
	/* the cache is full: one more token is an error, not an overflow */
	CHECK(lora_gen_feed(g, seq, 1, lg, NULL, &err) < 0);
	lora_gen_free(g);
	free(seq);
	free(lg);
	free(full);
}

TEST(cached_steps_equal_full_forward)
{
	for (size_t m = 0; m < sizeof(models) / sizeof(models[0]); m++)
		for (int q = 0; q < 2; q++) {
			struct lora_net *net = open_net(models[m], q ? LORA_QUANT_NF4 : LORA_QUANT_NONE, 1);
			int32_t prompt[9];

			if (!net)
				continue;
			for (int i = 0; i < 9; i++)
				prompt[i] = (int32_t)((i * 37 + 11 + (int)m) % net->V);
			check_against_full(net, prompt, 9, 12);
			lora_net_close(net);
		}
	printf("  largest logit difference, cached vs full: %.3g\n", worst);
}

/* A prompt longer than one prefill chunk (64), fed whole with every position's logits. */
TEST(long_prefill_all_logits)
{
	struct lora_net *net = open_net("mistral_window", LORA_QUANT_NF4, 1);
	struct lora_gen *g;
	struct lora_err err;
	enum { N = 100 };
	int32_t ids[N];
	float *all, *full, last[256];
	double d = 0;

	if (!net)
		return;
	for (int i = 0; i < N; i++)
		ids[i] = (int32_t)((i * 53 + 7) % net->V);
	all = malloc(sizeof(float) * N * (size_t)net->V);
	full = malloc(sizeof(float) * N * (size_t)net->V);
	CHECK(lora_gen_new(&g, net, N, &err) == 0);
	CHECKF(lora_gen_feed(g, ids, 70, NULL, all, &err) == 0, "%s", err.msg);
	CHECKF(lora_gen_feed(g, ids + 70, N - 70, last, all + 70 * (size_t)net->V, &err) == 0, "%s",
	       err.msg);
	{
		struct lora_batch b = {1, N, ids, NULL, NULL};
		struct lora_fb_result res;
		CHECK(lora_net_forward(net, &b, full, &res, &err) == 0);
	}
	for (size_t j = 0; j < N * (size_t)net->V; j++)
		d = fabs(all[j] - full[j]) > d ? fabs(all[j] - full[j]) : d;
	CHECKF(d <= 1e-4, "logits differ by %g", d);
	CHECK(!memcmp(last, all + (size_t)(N - 1) * net->V, sizeof(float) * (size_t)net->V));
	/* a bad id is refused */
	lora_gen_reset(g);
	ids[3] = net->V;
	CHECK(lora_gen_feed(g, ids, 5, last, NULL, &err) < 0);
	CHECK(strstr(err.msg, "vocabulary") != NULL);
	lora_gen_free(g);
	free(all);
	free(full);
	lora_net_close(net);
}

static int32_t *int_array(const cJSON *a, int *n)
{
	int32_t *v = malloc(sizeof(int32_t) * (size_t)(cJSON_GetArraySize(a) + 1));
	const cJSON *e;

	*n = 0;
	cJSON_ArrayForEach(e, a) v[(*n)++] = (int32_t)e->valuedouble;
	return v;
}

static void greedy_file(const char *fixture, int min_cases)
{
	char *path = t_fixture(fixture), *text = NULL;
	size_t len;
	struct lora_err err;
	cJSON *root, *c;
	int cases = 0, equal = 0;

	CHECKF(lora_read_file(path, 1 << 22, &text, &len, &err) == 0, "%s", err.msg);
	free(path);
	if (!text)
		return;
	root = cJSON_ParseWithLength(text, len);
	CHECK(root != NULL);
	cJSON_ArrayForEach(c, cJSON_GetObjectItem(root, "cases")) {
		const char *model = cJSON_GetObjectItem(c, "model")->valuestring;
		const int nf4 = !strcmp(cJSON_GetObjectItem(c, "quant")->valuestring, "nf4");
		const int adapter = cJSON_IsTrue(cJSON_GetObjectItem(c, "adapter"));
		struct lora_net *net = open_net(model, nf4 ? LORA_QUANT_NF4 : LORA_QUANT_NONE, adapter);
		int np, ng, same = 1;
		int32_t *prompt = int_array(cJSON_GetObjectItem(c, "prompt"), &np);
		int32_t *want = int_array(cJSON_GetObjectItem(c, "generated"), &ng);
		struct lora_gen *g;
		float *lg;

		cases++;
		if (!net) {
			free(prompt);
			free(want);
			continue;
		}
		lg = malloc(sizeof(float) * (size_t)net->V);
		CHECK(lora_gen_new(&g, net, np + ng, &err) == 0);
		CHECK(lora_gen_feed(g, prompt, np, lg, NULL, &err) == 0);
		for (int i = 0; i < ng; i++) {
			int32_t id = lora_argmax(lg, net->V);
			if (id != want[i]) {
				CHECKF(0, "%s %s%s: token %d is %d, transformers %d", model, nf4 ? "nf4" : "none",
				       adapter ? " +adapter" : "", i, id, want[i]);
				same = 0;
				break;
			}
			if (i + 1 < ng)
				CHECK(lora_gen_feed(g, &id, 1, lg, NULL, &err) == 0);
		}
		equal += same;
		lora_gen_free(g);
		free(lg);
		free(prompt);
		free(want);
		lora_net_close(net);
	}
	printf("  %s: %d of %d generations equal transformers'\n", fixture, equal, cases);
	CHECK(cases >= min_cases);
	cJSON_Delete(root);
	free(text);
}

TEST(greedy_equals_transformers) { greedy_file("gen/greedy.json", 16); }
/* tests/oracle/families.py: Qwen3, Llama 3.2 tied, Phi-3, Gemma 2, Gemma 3 */
TEST(families_greedy_equals_transformers) { greedy_file("families/greedy.json", 40); }

TEST(sampler)
{
	enum { V = 6 };
	const float logits[V] = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 0.5f};
	float scratch[2 * V];
	struct lora_sampler s = {0.0, 1.0, 42, 0};
	double z = 0, p[V], cnt[V] = {0};
	const int draws = 200000;
	int32_t a[50], b[50];

	/* greedy: the first of the two largest */
	CHECK(lora_sample(logits, V, &s, scratch) == 1);
	CHECK(lora_argmax(logits, V) == 1);
	/* top_p small: only the most likely token (ties broken by the lower id) */
	s = (struct lora_sampler){1.0, 1e-6, 42, 0};
	for (int i = 0; i < 100; i++)
		CHECK(lora_sample(logits, V, &s, scratch) == 1);
	/* reproducible by seed, different across seeds */
	s = (struct lora_sampler){1.0, 1.0, 7, 0};
	for (int i = 0; i < 50; i++)
		a[i] = lora_sample(logits, V, &s, scratch);
	s = (struct lora_sampler){1.0, 1.0, 7, 0};
	for (int i = 0; i < 50; i++)
		b[i] = lora_sample(logits, V, &s, scratch);
	CHECK(!memcmp(a, b, sizeof(a)));
	s = (struct lora_sampler){1.0, 1.0, 8, 0};
	for (int i = 0; i < 50; i++)
		b[i] = lora_sample(logits, V, &s, scratch);
	CHECK(memcmp(a, b, sizeof(a)) != 0);
	/* frequencies at temperature 0.7: within 4 standard deviations of softmax(l / 0.7) */
	for (int i = 0; i < V; i++)
		z += exp(logits[i] / 0.7);
	for (int i = 0; i < V; i++)
		p[i] = exp(logits[i] / 0.7) / z;
	s = (struct lora_sampler){0.7, 1.0, 1, 0};
	for (int i = 0; i < draws; i++)
		cnt[lora_sample(logits, V, &s, scratch)]++;
	for (int i = 0; i < V; i++) {
		double sd = sqrt(draws * p[i] * (1 - p[i]));
		CHECKF(fabs(cnt[i] - draws * p[i]) <= 4 * sd + 1, "token %d: %g draws, expected %g", i,
		       cnt[i], draws * p[i]);
	}
	/* top_p 0.9 at temperature 1: p = .384 .384 .141 .052 .032 .007 for tokens 1 3 2 0 5 4;
	 * the first three reach .909, so 0, 5 and 4 are never drawn */
	memset(cnt, 0, sizeof(cnt));
	s = (struct lora_sampler){1.0, 0.9, 3, 0};
	for (int i = 0; i < 20000; i++)
		cnt[lora_sample(logits, V, &s, scratch)]++;
	CHECK(cnt[0] == 0 && cnt[4] == 0 && cnt[5] == 0);
	CHECK(cnt[1] > 0 && cnt[2] > 0 && cnt[3] > 0);
}

int main(void)
{
	RUN(cached_steps_equal_full_forward);
	RUN(long_prefill_all_logits);
	RUN(greedy_equals_transformers);
	RUN(families_greedy_equals_transformers);
	RUN(sampler);
	return t_done();
}
