/*
 * test_loop_run.c - the training loop as a library (train/loop.h): a run
 * stopped between two micro-batches and resumed ends bit for bit where an
 * uninterrupted run ends; a NaN loss stops the run and keeps the last good
 * checkpoint; a checkpoint is never silently replaced or resumed with other
 * options or data.  A wrapping backend counts forward/backward calls to stop
 * or poison exactly the micro-batch it wants.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "libadapter/base/buf.h"
#include "libadapter/base/fsutil.h"
#include "tests/t.h"
#include "train/ckpt.h"
#include "train/data.h"
#include "train/loop.h"

static char tmp[256], data[300], base[300];

/* ------------------------------------------------------------ a backend that misbehaves on cue */

static const struct lora_backend *real;
static int calls, stop_at_call, nan_at_call;
static volatile sig_atomic_t stop;

static int wrap_run(struct lora_net *net, const struct lora_batch *b, int backward, double gs, float *logits,
		    struct lora_fb_result *res, struct lora_err *err)
{
	int rc = real->run(net, b, backward, gs, logits, res, err);

	if (backward) {
		calls++;
		if (calls == stop_at_call)
			stop = 1;
		if (calls == nan_at_call)
			res->loss_sum = NAN;
	}
	return rc;
}

static struct lora_backend wrap = { .name = "test", .run = wrap_run };

static void rig(struct lora_trainer *tr, int stop_call, int nan_call)
{
	struct lora_net *net = lora_trainer_net(tr);

	real = net->be;
	wrap.release = real->release;
	net->be = &wrap;
	calls = 0;
	stop = 0;
	stop_at_call = stop_call;
	nan_at_call = nan_call;
}

/* ------------------------------------------------------------ set-up */

static void opts(struct lora_train_opts *o, const char *work)
{
	lora_train_opts_defaults(o);
	o->base_dir = base;
	o->data_path = data;
	o->eval_split = 0.2;
	o->lora.rank = 4;
	o->lora.alpha = 8;
	o->lora.dropout = 0.1;   /* so the dropout counter must be restored too */
	o->optim.lr = 5e-3;
	o->steps = 12;
	o->batch = 2;
	o->grad_accum = 2;
	o->seq_len = 16;
	o->save_every = 4;
	o->eval_every = 3;
	o->threads = 1;
	o->device = "cpu";
	o->work_dir = work;
}

static char *wpath(const char *name)
{
	char *p = malloc(strlen(tmp) + strlen(name) + 2);
	sprintf(p, "%s/%s", tmp, name);
	return p;
}

/* The "train" lines of a work area's log (they carry no times, so two runs compare as text). */
static char *train_lines(const char *work)
{
	char *p = malloc(strlen(work) + 32), *text = NULL, *save = NULL, *line;
	struct lora_buf b = LORA_BUF_INIT;
	size_t len;

	sprintf(p, "%s/%s", work, LORA_CKPT_LOG);
	if (lora_read_file(p, 1 << 24, &text, &len, NULL) == 0)
		for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
			if (strstr(line, "\"event\": \"train\"") || strstr(line, "\"event\": \"eval\""))
				lora_buf_printf(&b, "%s\n", line);
	lora_buf_add(&b, "", 0);
	free(text);
	free(p);
	return lora_buf_take(&b);
}

static long ckpt_step(const char *work)
{
	char *p = malloc(strlen(work) + 32);
	struct lora_ckpt c;
	long step = -1;

	sprintf(p, "%s/%s", work, LORA_CKPT_FILE);
	if (lora_ckpt_read(p, &c, NULL) == 0) {
		cJSON *s = cJSON_Parse(c.state);
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(s, "step");
		step = cJSON_IsNumber(v) ? (long)v->valuedouble : -2;
		cJSON_Delete(s);
		lora_ckpt_free(&c);
	}
	free(p);
	return step;
}

static float *whole_run(const char *work, size_t *n)
{
	struct lora_train_opts o;
	struct lora_trainer *tr = NULL;
	struct lora_err err = { 0 };
	float *p = NULL;

	opts(&o, work);
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	if (!tr)
		return NULL;
	CHECKF(lora_trainer_run(tr, NULL, NULL, &stop, &err) == 0, "%s", err.msg);
	*n = lora_trainer_net(tr)->n_params;
	p = malloc(*n * sizeof(float));
	memcpy(p, lora_trainer_net(tr)->params, *n * sizeof(float));
	lora_trainer_close(tr);
	return p;
}

/* ------------------------------------------------------------ tests */

TEST(stop_between_micro_batches_then_resume_is_bit_identical)
{
	char *wa = wpath("whole"), *wb = wpath("stopped"), *la, *lb;
	struct lora_train_opts o;
	struct lora_trainer *tr = NULL;
	struct lora_train_result res;
	struct lora_err err = { 0 };
	size_t n = 0;
	float *want = whole_run(wa, &n);

	opts(&o, wb);
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	if (tr) {
		/* two micro-batches a step: call 11 is the first half of step 6 */
		rig(tr, 11, 0);
		CHECK(lora_trainer_run(tr, NULL, NULL, &stop, &err) == 1);
		lora_trainer_result(tr, &res);
		CHECK(res.steps == 5);
		lora_trainer_close(tr);
	}
	CHECK(ckpt_step(wb) == 5);
	stop = 0;
	o.resume = 1;
	tr = NULL;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	if (tr) {
		CHECK(lora_trainer_info(tr)->start_step == 5);
		CHECKF(lora_trainer_run(tr, NULL, NULL, &stop, &err) == 0, "%s", err.msg);
		CHECK(want && lora_trainer_net(tr)->n_params == n);
		CHECK(want && !memcmp(lora_trainer_net(tr)->params, want, n * sizeof(float)));
		lora_trainer_close(tr);
	}
	/* the metrics log reads as one run */
	la = train_lines(wa);
	lb = train_lines(wb);
	CHECK(strlen(la) > 100);
	CHECKF(!strcmp(la, lb), "\n%s---\n%s", la, lb);
	free(la);
	free(lb);
	free(want);
	free(wa);
	free(wb);
}

TEST(a_stop_before_the_first_step_is_resumable)
{
	char *w = wpath("early");
	struct lora_train_opts o;
	struct lora_trainer *tr = NULL;
	struct lora_err err = { 0 };

	opts(&o, w);
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	stop = 1;
	CHECK(tr && lora_trainer_run(tr, NULL, NULL, &stop, &err) == 1);
	lora_trainer_close(tr);
	CHECK(ckpt_step(w) == 0);
	stop = 0;
	o.resume = 1;
	tr = NULL;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	CHECK(tr && lora_trainer_run(tr, NULL, NULL, &stop, &err) == 0);
	lora_trainer_close(tr);
	free(w);
}

TEST(nan_stops_and_keeps_the_last_good_checkpoint)
{
	char *w = wpath("nan");
	struct lora_train_opts o;
	struct lora_trainer *tr = NULL;
	struct lora_err err = { 0 };

	opts(&o, w);
	o.save_every = 2;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	if (tr) {
		rig(tr, 0, 7);   /* the first half of step 4 */
		CHECK(lora_trainer_run(tr, NULL, NULL, &stop, &err) < 0);
		CHECKF(strstr(err.msg, "the loss is nan at step 4") != NULL, "%s", err.msg);
		CHECKF(strstr(err.msg, "last good checkpoint (step 2)") != NULL, "%s", err.msg);
		lora_trainer_close(tr);
	}
	CHECK(ckpt_step(w) == 2);
	/* and the run goes on from there */
	o.resume = 1;
	tr = NULL;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	CHECK(tr && lora_trainer_info(tr)->start_step == 2);
	CHECK(tr && lora_trainer_run(tr, NULL, NULL, &stop, &err) == 0);
	lora_trainer_close(tr);
	free(w);
}

TEST(a_checkpoint_is_not_replaced_or_resumed_with_other_settings)
{
	char *w = wpath("guard"), *other = wpath("other.jsonl"), *text = NULL, *keep = NULL;
	struct lora_train_opts o, o2;
	struct lora_trainer *tr = NULL;
	struct lora_err err = { 0 };
	size_t len;

	opts(&o, w);
	o.steps = 4;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	CHECK(tr && lora_trainer_run(tr, NULL, NULL, &stop, &err) == 0);
	lora_trainer_close(tr);
	tr = NULL;
	/* a fresh start over it */
	CHECK(lora_trainer_open(&tr, &o, &err) < 0);
	CHECKF(strstr(err.msg, "--resume") && strstr(err.msg, "step 4 of 4"), "%s", err.msg);
	/* other hyperparameters */
	o.resume = 1;
	o.optim.lr = 1e-3;
	CHECK(lora_trainer_open(&tr, &o, &err) < 0);
	CHECKF(err.code == LORA_EUSAGE && strstr(err.msg, "--lr 0.005"), "%s", err.msg);
	o.optim.lr = 5e-3;
	o.lora.targets = 1;
	CHECK(lora_trainer_open(&tr, &o, &err) < 0);
	CHECKF(strstr(err.msg, "--targets"), "%s", err.msg);
	opts(&o, w);
	o.steps = 4;
	o.resume = 1;
	/* other data */
	CHECK(lora_read_file(data, 1 << 20, &text, &len, &err) == 0);
	{
		char *d = strchr(text, '[') + 1;   /* the first id of the first row */
		*d = *d == '1' ? '2' : '1';
	}
	CHECK(lora_write_file_atomic(other, text, len, 0644, &err) == 0);
	o.data_path = other;
	CHECK(lora_trainer_open(&tr, &o, &err) < 0);
	CHECKF(strstr(err.msg, "changed since the checkpoint"), "%s", err.msg);
	/* the settings come back from the checkpoint alone */
	memset(&o2, 0, sizeof(o2));
	lora_train_opts_defaults(&o2);
	CHECKF(lora_train_opts_from_checkpoint(w, &o2, &keep, &err) == 0, "%s", err.msg);
	CHECK(o2.steps == 4 && o2.lora.rank == 4 && o2.lora.alpha == 8 && o2.lora.dropout == 0.1 &&
	      o2.optim.lr == 5e-3 && o2.batch == 2 && o2.grad_accum == 2 && o2.seq_len == 16 &&
	      o2.eval_split == 0.2 && o2.quant == LORA_QUANT_NF4 && o2.seed == 42 && !o2.no_pack);
	CHECK(o2.data_path && !strcmp(o2.data_path, data));
	o2.work_dir = w;
	o2.resume = 1;
	o2.device = "cpu";
	CHECKF(lora_trainer_open(&tr, &o2, &err) == 0, "%s", err.msg);
	CHECK(tr && lora_trainer_info(tr)->start_step == 4);
	lora_trainer_close(tr);
	free(keep);
	free(text);
	free(other);
	free(w);
}

TEST(device_choice)
{
	struct lora_train_opts o;
	struct lora_trainer *tr = NULL;
	struct lora_err err = { 0 };
	char *w = wpath("dev");

	opts(&o, w);
	o.device = "cuda";
	/* no usable plugin: one error naming why (the CUDA trainer itself: test_model_cuda.c) */
	o.cuda_plugin = "/nonexistent/liblora_cuda.so";
	CHECK(lora_trainer_open(&tr, &o, &err) < 0);
	CHECKF(strstr(err.msg, "--device cuda: cannot load the CUDA plugin /nonexistent/liblora_cuda.so"), "%s",
	       err.msg);
	o.device = "tpu";
	CHECK(lora_trainer_open(&tr, &o, &err) < 0 && err.code == LORA_EUSAGE);
	o.device = "auto";
	o.steps = 1;
	CHECKF(lora_trainer_open(&tr, &o, &err) == 0, "%s", err.msg);
	CHECK(tr && !strcmp(lora_trainer_info(tr)->device, "cpu"));
	lora_trainer_close(tr);
	free(w);
}

/* Every position a checkpoint can hold sets back on a fresh batcher (rows of very unequal length,
 * shuffled, so the row at `row` in an epoch's order is not row number `row` of the file). */
TEST(every_batcher_position_restores)
{
	struct lora_buf b = LORA_BUF_INIT;
	struct lora_dataset *d = NULL;
	struct lora_data_opts dopt = { 0 };
	struct lora_batcher_opts bo = { .batch = 2, .seq_len = 5, .shuffle = 1, .seed = 99 };
	struct lora_batcher *a = NULL, *c = NULL;
	struct lora_data_batch ba, bc;
	struct lora_data_pos p;
	struct lora_err err = { 0 };
	int bad = 0;

	for (int r = 0; r < 9; r++) {
		int n = r % 2 ? 2 : 23;
		lora_buf_puts(&b, "{\"input_ids\": [");
		for (int k = 0; k < n; k++)
			lora_buf_printf(&b, "%s%d", k ? "," : "", 3 + r * 10 + k % 10);
		lora_buf_puts(&b, "]}\n");
	}
	dopt.vocab_size = 128;
	CHECKF(lora_data_parse(b.data, b.len, "mem", &dopt, &d, &err) == 0, "%s", err.msg);
	CHECK(d && lora_batcher_new(d, &bo, &a, &err) == 0);
	CHECK(lora_data_batch_init(&ba, 2, 5, &err) == 0 && lora_data_batch_init(&bc, 2, 5, &err) == 0);
	for (int s = 0; a && s < 60; s++) {
		lora_batcher_get_pos(a, &p);
		CHECK(lora_batcher_new(d, &bo, &c, &err) == 0);
		if (lora_batcher_set_pos(c, &p, &err) < 0) {
			bad++;
			fprintf(stderr, "  step %d: %s\n", s, err.msg);
		}
		lora_batcher_next(a, &ba, &err);
		lora_batcher_next(c, &bc, &err);
		bad += memcmp(ba.ids, bc.ids, sizeof(int32_t) * 10) != 0;
		lora_batcher_free(c);
		c = NULL;
	}
	CHECK(bad == 0);
	lora_data_batch_free(&ba);
	lora_data_batch_free(&bc);
	lora_batcher_free(a);
	lora_data_free(d);
	lora_buf_free(&b);
}

int main(void)
{
	const char *t = getenv("TMPDIR");
	char *b = t_fixture("train/llama_tied");
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s/lora-loop-run.XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(tmp)) {
		printf("FAIL loop_run_tmpdir\n");
		return 1;
	}
	if (!realpath(b, base)) {
		printf("FAIL loop_run_fixture\n");
		return 1;
	}
	free(b);
	/* 40 rows counting up by one (mod 125, ids 3..127), 8 to 20 tokens */
	snprintf(data, sizeof(data), "%s/count.jsonl", tmp);
	f = fopen(data, "w");
	for (int r = 0; f && r < 40; r++) {
		int a = 3 + (r * 37) % 125, n = 8 + (r * 7) % 13;
		fprintf(f, "{\"input_ids\": [");
		for (int k = 0; k < n; k++)
			fprintf(f, "%s%d", k ? ", " : "", 3 + (a - 3 + k) % 125);
		fprintf(f, "]}\n");
	}
	if (!f || fclose(f)) {
		printf("FAIL loop_run_data\n");
		return 1;
	}
	RUN(stop_between_micro_batches_then_resume_is_bit_identical);
	RUN(a_stop_before_the_first_step_is_resumable);
	RUN(nan_stops_and_keeps_the_last_good_checkpoint);
	RUN(a_checkpoint_is_not_replaced_or_resumed_with_other_settings);
	RUN(device_choice);
	RUN(every_batcher_position_restores);
	lora_rm_rf(tmp, NULL);
	return t_done();
}
