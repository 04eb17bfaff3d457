/*
 * eval.c - the evaluation loop (eval.h): batches from the data batcher, one
 * pass, forward through the network, losses summed; optionally each row's
 * logits into a safetensors file, written aside and renamed at the end.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "libadapter/format/safetensors.h"
#include "train/eval.h"

void lora_eval_shape(const struct lora_dataset *d, int tokens_per_pass, int *batch, int *seq_len)
{
	size_t T = 2, per;

	for (size_t r = 0; r < d->n_rows; r++)
		if (d->off[r + 1] - d->off[r] > T)
			T = d->off[r + 1] - d->off[r];
	per = (size_t)tokens_per_pass / T;
	per = per < 1 ? 1 : per > d->n_rows ? d->n_rows : per;
	*seq_len = T > INT32_MAX ? INT32_MAX : (int)T;
	*batch = per > INT32_MAX ? INT32_MAX : (int)per;
}

/* A writer for logits.0 .. logits.N-1, each [len, V] fp32. */
static int open_dump(struct lora_st_writer *w, const char *path, const struct lora_dataset *d, int V,
		     struct lora_err *err)
{
	struct lora_st_spec *specs = calloc(d->n_rows, sizeof(*specs));
	char (*names)[32] = calloc(d->n_rows, sizeof(*names));
	int rc = -1;

	if (!specs || !names) {
		lora_errf(err, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < d->n_rows; i++) {
		snprintf(names[i], sizeof(names[i]), "logits.%zu", i);
		specs[i].name = names[i];
		specs[i].dtype = LORA_DT_F32;
		specs[i].ndim = 2;
		specs[i].shape[0] = (uint64_t)(d->off[i + 1] - d->off[i]);
		specs[i].shape[1] = (uint64_t)V;
	}
	rc = lora_st_writer_open(w, path, specs, d->n_rows, NULL, NULL, 0, err);
out:
	free(specs);
	free(names);
	return rc;
}

int lora_eval_run(struct lora_net *net, const struct lora_dataset *d, const struct lora_eval_opts *o,
		  struct lora_eval_result *res, struct lora_err *err)
{
	struct lora_batcher_opts bo = { .batch = o->batch, .seq_len = o->seq_len, .no_pack = o->no_pack,
					.one_pass = 1, .pad_id = o->pad_id };
	struct lora_batcher *bt = NULL;
	struct lora_data_batch b = { 0 };
	struct lora_st_writer w;
	float *logits = NULL;
	uint64_t total;
	int more, dumping = 0, rc = -1;

	res->loss_sum = 0;
	res->tokens = 0;
	res->loss = NAN;
	res->passes = 0;
	if (o->dump_path && (!o->no_pack || o->batch != 1))
		return lora_errc(err, LORA_EUSAGE, "logits are written one whole row a pass");
	if (lora_batcher_new(d, &bo, &bt, err) < 0 || lora_data_batch_init(&b, bo.batch, bo.seq_len, err) < 0)
		goto out;
	total = lora_batcher_epoch_batches(bt);
	if (o->dump_path) {
		if (!(logits = malloc(sizeof(float) * (size_t)o->seq_len * (size_t)net->V))) {
			lora_errf(err, "out of memory for the logits of %d positions", o->seq_len);
			goto out;
		}
		if (open_dump(&w, o->dump_path, d, net->V, err) < 0)
			goto out;
		dumping = 1;
	}
	while ((more = lora_batcher_next(bt, &b, err)) == 1) {
		struct lora_batch nb = { b.B, b.T, b.ids, b.labels, b.len };
		struct lora_fb_result fr;

		if (dumping)   /* one row: its own positions only, a [1, len] prefix of the batch */
			nb.T = b.len[0];

		if (lora_net_forward(net, &nb, logits, &fr, err) < 0)
			goto out;
		res->loss_sum += fr.loss_sum;
		res->tokens += fr.tokens;
		res->passes++;
		if (dumping && lora_st_writer_write(&w, logits, sizeof(float) * (size_t)b.len[0] * (size_t)net->V,
						    err) < 0)
			goto out;
		if (o->progress)
			o->progress(o->progress_ud, res->passes, total);
	}
	if (more < 0)
		goto out;
	if (dumping) {
		dumping = 0;
		if (lora_st_writer_commit(&w, err) < 0)
			goto out;
	}
	if (res->tokens)
		res->loss = res->loss_sum / (double)res->tokens;
	rc = 0;
out:
	if (dumping)
		lora_st_writer_abort(&w);
	free(logits);
	lora_data_batch_free(&b);
	lora_batcher_free(bt);
	return rc;
}
