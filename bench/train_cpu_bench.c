/*
 * train_cpu_bench.c - tokens/s of forward+backward (LoRA gradients) of the CPU
 * trainer; built and run by bench/train_cpu.sh beside torch + peft.
 *
 *   train_cpu_bench MODEL_DIR QUANT THREADS BATCH SEQ ITERS RANK [CHECKPOINT]
 *
 * Tokens are drawn from a fixed splitmix stream; one warm-up pass, then ITERS
 * timed passes.  Prints "tokens_per_s <x> tokens_per_cpu_s <y> loss <l>" (y: per
 * second of CPU time of the process, which shared machines disturb less).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "train/net.h"

static double now(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	struct lora_net_opts o;
	struct lora_net *net;
	struct lora_cfg lc;
	struct lora_err err;
	struct lora_fb_result r;
	int B, T, iters;
	uint64_t s = 1;
	int32_t *ids;
	double t0, c0, dt, dc;

	if (argc < 8) {
		fprintf(stderr, "usage: %s MODEL QUANT THREADS BATCH SEQ ITERS RANK [CHECKPOINT]\n", argv[0]);
		return 2;
	}
	lora_net_opts_defaults(&o);
	if (lora_quant_parse(argv[2], &o.quant) < 0)
		return 2;
	o.threads = atoi(argv[3]);
	B = atoi(argv[4]);
	T = atoi(argv[5]);
	iters = atoi(argv[6]);
	o.checkpoint = argc > 8 && atoi(argv[8]);
	if (lora_net_open(&net, argv[1], &o, &err) < 0) {
		fprintf(stderr, "bench: %s\n", err.msg);
		return 1;
	}
	lora_cfg_defaults(&lc);
	lc.rank = atoi(argv[7]);
	lc.alpha = 2.0 * lc.rank;
	if (lora_net_init_lora(net, &lc, &err) < 0) {
		fprintf(stderr, "bench: %s\n", err.msg);
		return 1;
	}
	ids = malloc(sizeof(int32_t) * (size_t)B * T);
	for (int i = 0; i < B * T; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		ids[i] = (int32_t)((s >> 33) % (uint64_t)net->V);
	}
	struct lora_batch b = {B, T, ids, NULL, NULL};
	if (lora_net_forward_backward(net, &b, 0, &r, &err) < 0) {
		fprintf(stderr, "bench: %s\n", err.msg);
		return 1;
	}
	t0 = now(CLOCK_MONOTONIC);
	c0 = now(CLOCK_PROCESS_CPUTIME_ID);
	for (int i = 0; i < iters; i++)
		lora_net_forward_backward(net, &b, 0, &r, &err);
	dt = now(CLOCK_MONOTONIC) - t0;
	dc = now(CLOCK_PROCESS_CPUTIME_ID) - c0;
	printf("tokens_per_s %.1f tokens_per_cpu_s %.1f loss %.4f\n", (double)B * T * iters / dt,
	       (double)B * T * iters / dc, r.loss);
	free(ids);
	lora_net_close(net);
	return 0;
}
