/*
 * nf4.c - NF4 quantization with double-quantized scales, bitsandbytes-exact
 * (see nf4.h for the layout and the rounding rules this file reproduces).
 */
#include "train/nf4.h"

#include "libadapter/base/par.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Exactness depends on every product and sum being rounded on its own. */
#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

/* bitsandbytes get_4bit_type("nf4"): quantiles of N(0,1) scaled to [-1, 1]. */
const float lora_nf4_levels[16] = {
	-0x1p+0f,          -0x1.647362p-1f, -0x1.0cd660p-1f, -0x1.946540p-2f,
	-0x1.23449ap-2f,   -0x1.7a6a7ep-3f, -0x1.74f0e2p-4f, 0x0p+0f,
	0x1.45f5fep-4f,    0x1.4995c6p-3f,  0x1.f809bap-3f,  0x1.5a0674p-2f,
	0x1.c34970p-2f,    0x1.200f56p-1f,  0x1.722766p-1f,  0x1p+0f,
};

/*
 * bitsandbytes create_dynamic_map(signed=True, max_exponent_bits=7,
 * total_bits=8): for exponents 10^-6 .. 10^0, the midpoints of linspace(0.1,
 * 1, 2^i + 1) times the power of ten, both signs, plus 0 and 1, sorted.
 */
const float lora_code8[256] = {
	-0x1.fc6666p-1f, -0x1.f53334p-1f, -0x1.ee0000p-1f, -0x1.e6ccccp-1f,
	-0x1.df999ap-1f, -0x1.d86666p-1f, -0x1.d13334p-1f, -0x1.ca0000p-1f,
	-0x1.c2ccccp-1f, -0x1.bb999ap-1f, -0x1.b46666p-1f, -0x1.ad3334p-1f,
	-0x1.a60000p-1f, -0x1.9eccccp-1f, -0x1.97999ap-1f, -0x1.906666p-1f,
	-0x1.893334p-1f, -0x1.820000p-1f, -0x1.7accccp-1f, -0x1.73999ap-1f,
	-0x1.6c6668p-1f, -0x1.653334p-1f, -0x1.5e0000p-1f, -0x1.56ccccp-1f,
	-0x1.4f999ap-1f, -0x1.486668p-1f, -0x1.413334p-1f, -0x1.3a0000p-1f,
	-0x1.32ccccp-1f, -0x1.2b999ap-1f, -0x1.246668p-1f, -0x1.1d3334p-1f,
	-0x1.160000p-1f, -0x1.0eccccp-1f, -0x1.079998p-1f, -0x1.006666p-1f,
	-0x1.f26664p-2f, -0x1.e40000p-2f, -0x1.d59998p-2f, -0x1.c73334p-2f,
	-0x1.b8ccccp-2f, -0x1.aa6666p-2f, -0x1.9c0000p-2f, -0x1.8d9998p-2f,
	-0x1.7f3334p-2f, -0x1.70ccccp-2f, -0x1.626666p-2f, -0x1.540000p-2f,
	-0x1.459998p-2f, -0x1.373334p-2f, -0x1.28ccccp-2f, -0x1.1a6668p-2f,
	-0x1.0c0000p-2f, -0x1.fb3332p-3f, -0x1.de6666p-3f, -0x1.c1999ap-3f,
	-0x1.a4ccccp-3f, -0x1.880000p-3f, -0x1.6b3334p-3f, -0x1.4e6666p-3f,
	-0x1.31999ap-3f, -0x1.14ccccp-3f, -0x1.f00000p-4f, -0x1.b66668p-4f,
	-0x1.93d70ap-4f, -0x1.8851eep-4f, -0x1.7ccccep-4f, -0x1.7147aep-4f,
	-0x1.65c290p-4f, -0x1.5a3d70p-4f, -0x1.4eb854p-4f, -0x1.433334p-4f,
	-0x1.37ae14p-4f, -0x1.2c28f6p-4f, -0x1.20a3d6p-4f, -0x1.151ebap-4f,
	-0x1.09999ap-4f, -0x1.fc28f6p-5f, -0x1.e51ebap-5f, -0x1.ce147ap-5f,
	-0x1.b70a3ep-5f, -0x1.a00000p-5f, -0x1.88f5c2p-5f, -0x1.71eb86p-5f,
	-0x1.5ae146p-5f, -0x1.43d70ap-5f, -0x1.2ccccep-5f, -0x1.15c290p-5f,
	-0x1.fd70a4p-6f, -0x1.cf5c2ap-6f, -0x1.a147aep-6f, -0x1.733334p-6f,
	-0x1.451ebap-6f, -0x1.170a3ep-6f, -0x1.d1eb86p-7f, -0x1.75c290p-7f,
	-0x1.3e76c8p-7f, -0x1.2c0830p-7f, -0x1.19999ap-7f, -0x1.072b02p-7f,
	-0x1.e978d4p-8f, -0x1.c49ba6p-8f, -0x1.9fbe76p-8f, -0x1.7ae148p-8f,
	-0x1.56041ap-8f, -0x1.3126e8p-8f, -0x1.0c49bap-8f, -0x1.ced914p-9f,
	-0x1.851eb8p-9f, -0x1.3b645ap-9f, -0x1.e353f8p-10f, -0x1.4fdf3ap-10f,
	-0x1.eecbfep-11f, -0x1.b3d07cp-11f, -0x1.78d500p-11f, -0x1.3dd982p-11f,
	-0x1.02de02p-11f, -0x1.8fc506p-12f, -0x1.19ce0ap-12f, -0x1.47ae16p-13f,
	-0x1.743e96p-14f, -0x1.15df66p-14f, -0x1.6f0068p-15f, -0x1.64840cp-16f,
	-0x1.040bfep-17f, -0x1.b43528p-19f, -0x1.27476ep-21f, 0x0p+0f,
	0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
	0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,
	0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f,
	0x1.78d500p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
	0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f,
	0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,
	0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
	0x1.19999ap-7f, 0x1.2c0830p-7f, 0x1.3e76c8p-7f, 0x1.75c290p-7f,
	0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451ebap-6f, 0x1.733334p-6f,
	0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c290p-5f,
	0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f,
	0x1.88f5c2p-5f, 0x1.a00000p-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,
	0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
	0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,
	0x1.4eb854p-4f, 0x1.5a3d70p-4f, 0x1.65c290p-4f, 0x1.7147aep-4f,
	0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
	0x1.f00000p-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f,
	0x1.6b3334p-3f, 0x1.880000p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,
	0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0c0000p-2f, 0x1.1a6668p-2f,
	0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.540000p-2f,
	0x1.626666p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f,
	0x1.9c0000p-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
	0x1.d59998p-2f, 0x1.e40000p-2f, 0x1.f26664p-2f, 0x1.006666p-1f,
	0x1.079998p-1f, 0x1.0eccccp-1f, 0x1.160000p-1f, 0x1.1d3334p-1f,
	0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3a0000p-1f,
	0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f,
	0x1.5e0000p-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f,
	0x1.7accccp-1f, 0x1.820000p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
	0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a60000p-1f, 0x1.ad3334p-1f,
	0x1.b46666p-1f, 0x1.bb999ap-1f, 0x1.c2ccccp-1f, 0x1.ca0000p-1f,
	0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f,
	0x1.ee0000p-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f, 0x1.000000p+0f,
};

/* ------------------------------------------------------------ torch.sum */

/*
 * torch's CPU sum of a contiguous fp32 vector (SumKernel.cpp, cascade_sum):
 * vectors of 8 lanes summed as rows of 4 vectors with a 4-level cascade of
 * 16-step chunks, the leftover vectors into row 0, rows folded 1..3 into 0,
 * then the scalar tail, then the 8 lanes in order.  Below 8 elements the same
 * with scalars.  Reproduced for nf4's mean, whose rounding decides bytes.
 */
#define SUM_W 8

static int64_t ceil_log2(int64_t x)
{
	int64_t b = 0;

	if (x <= 2)
		return 1;
	for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1)
		b++;
	return b;
}

/* Rows of 4 elements each `w` floats wide; element k of row i is at x + (4i+k)*w. */
static void multi_row_sum(const float *x, int w, int64_t size, float out[4][SUM_W])
{
	const int64_t lp = ceil_log2(size) / 4 > 4 ? ceil_log2(size) / 4 : 4;
	const int64_t step = (int64_t)1 << lp, mask = step - 1;
	float acc[4][4][SUM_W];
	int64_t i = 0;

	memset(acc, 0, sizeof(acc));
	while (i + step <= size) {
		for (int64_t j = 0; j < step; j++, i++)
			for (int k = 0; k < 4; k++)
				for (int l = 0; l < w; l++)
					acc[0][k][l] += x[(4 * i + k) * w + l];
		for (int j = 1; j < 4; j++) {
			for (int k = 0; k < 4; k++)
				for (int l = 0; l < w; l++) {
					acc[j][k][l] += acc[j - 1][k][l];
					acc[j - 1][k][l] = 0.0f;
				}
			if ((i & (mask << (j * lp))) != 0)
				break;
		}
	}
	for (; i < size; i++)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < w; l++)
				acc[0][k][l] += x[(4 * i + k) * w + l];
	for (int j = 1; j < 4; j++)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < w; l++)
				acc[0][k][l] += acc[j][k][l];
	memcpy(out, acc[0], sizeof(acc[0]));
}

/* row_sum: `count` elements `w` wide; returns the w partial sums in out[0]. */
static void row_sum(const float *x, int w, int64_t count, float out[4][SUM_W])
{
	const int64_t rows = count / 4;

	multi_row_sum(x, w, rows, out);
	for (int64_t i = rows * 4; i < count; i++)
		for (int l = 0; l < w; l++)
			out[0][l] += x[i * w + l];
	for (int k = 1; k < 4; k++)
		for (int l = 0; l < w; l++)
			out[0][l] += out[k][l];
}

float lora_torch_sum_f32(const float *x, uint64_t n)
{
	float part[4][SUM_W], acc = 0.0f;

	if (n >= SUM_W) {
		const int64_t nv = (int64_t)(n / SUM_W);

		row_sum(x, SUM_W, nv, part);
		for (uint64_t k = (uint64_t)nv * SUM_W; k < n; k++)
			acc += x[k];
		for (int l = 0; l < SUM_W; l++)
			acc += part[0][l];
		return acc;
	}
	row_sum(x, 1, (int64_t)n, part);
	return part[0][0];
}

/* ------------------------------------------------------------ 4-bit step */

static float nf4_bound[15];   /* (level[k] + level[k+1]) / 2 */
static uint8_t code8_lut[65536];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void build_tables(void)
{
	float mid[255];
	int idx = 0;

	for (int k = 0; k < 15; k++)
		nf4_bound[k] = (lora_nf4_levels[k] + lora_nf4_levels[k + 1]) / 2.0f;
	for (int k = 0; k < 255; k++)
		mid[k] = (lora_code8[k] + lora_code8[k + 1]) * 0.5f;
	for (int i = 0; i < 65536; i++) {
		float fi = (float)i;
		float x = (fi + fi) / 65535.0f - 1.0f;

		while (idx < 255 && x > mid[idx])
			idx++;
		code8_lut[i] = (uint8_t)idx;
	}
}

static void tables(void)
{
	pthread_once(&tables_once, build_tables);
}

/*
 * torch.bucketize(v, bounds, right=False): the number of bounds < v, counted
 * without branches (the bounds are sorted, so this is the binary search's
 * answer; NaN gives 0) so that the compiler vectorizes it.
 */
static inline uint8_t nf4_code(const float *bound, float v)
{
	unsigned c = 0;

	for (int k = 0; k < 15; k++)
		c += bound[k] < v;
	return (uint8_t)c;
}

static inline float clamp1(float v)
{
	return v < -1.0f ? -1.0f : v > 1.0f ? 1.0f : v;
}

/*
 * One block of len ≤ LORA_NF4_BLOCK values scaled (times inv for a full
 * block, divided by am for the last, partial one, as bitsandbytes does),
 * clamped and coded: the hot loop, written out so that it vectorizes
 * (helpers would not be inlined across the target clones).
 */
__attribute__((optimize("O3"), target_clones("avx512f", "avx2", "default")))
static void code_block(const float *restrict p, uint64_t len, int full, float am, float inv,
		       const float *restrict bound, uint8_t *restrict codes)
{
	float v[LORA_NF4_BLOCK], bd[15];
	uint32_t c[LORA_NF4_BLOCK];

	memcpy(bd, bound, sizeof(bd));
	if (full)
		for (uint64_t i = 0; i < LORA_NF4_BLOCK; i++)
			v[i] = p[i] * inv;
	else
		for (uint64_t i = 0; i < len; i++)
			v[i] = p[i] / am;
	for (uint64_t i = 0; i < LORA_NF4_BLOCK; i++) {
		float x = i < len ? v[i] : 0.0f;
		x = x < -1.0f ? -1.0f : x > 1.0f ? 1.0f : x;
		c[i] = 0;
		for (int k = 0; k < 15; k++)
			c[i] += bd[k] < x;
	}
	for (uint64_t i = 0; i < len; i++)
		codes[i] = (uint8_t)c[i];
}

/*
 * max |p[i]| over len ≤ LORA_NF4_BLOCK values, NaN skipped (a comparison
 * with NaN is false), as the sequential loop finds it; kept in 16 lanes so
 * that it vectorizes: the maximum of a set does not depend on the order.
 */
__attribute__((optimize("O3"), target_clones("avx512f", "avx2", "default")))
static float block_absmax(const float *restrict p, uint64_t len)
{
	float lane[16] = { 0 }, am = 0.0f;
	uint64_t i = 0;

	for (; i + 16 <= len; i += 16)
		for (int j = 0; j < 16; j++) {
			float a = fabsf(p[i + j]);
			lane[j] = a > lane[j] ? a : lane[j];
		}
	for (; i < len; i++) {
		float a = fabsf(p[i]);
		lane[0] = a > lane[0] ? a : lane[0];
	}
	for (int j = 0; j < 16; j++)
		am = lane[j] > am ? lane[j] : am;
	return am;
}

void lora_nf4_blocks(const float *x, uint64_t n, uint8_t *packed, float *absmax)
{
	const uint64_t full = n / LORA_NF4_BLOCK;
	uint8_t codes[LORA_NF4_BLOCK];

	tables();
	for (uint64_t b = 0; b * LORA_NF4_BLOCK < n; b++) {
		const float *p = x + b * LORA_NF4_BLOCK;
		const uint64_t len = b < full ? LORA_NF4_BLOCK : n - b * LORA_NF4_BLOCK;
		float am = block_absmax(p, len), inv = 0.0f;

		if (b < full) {
			/* absmax stays as found; only the divisor is kept from 0 */
			absmax[b] = am;
			inv = 1.0f / (am > 1e-38f ? am : 1e-38f);
		} else {
			am = am > 1e-38f ? am : 1e-38f;
			absmax[b] = am;
		}
		code_block(p, len, b < full, am, inv, nf4_bound, codes);
		/* Blocks start at even elements: codes pair up within a block. */
		for (uint64_t i = 0; i + 1 < len; i += 2)
			packed[(b * LORA_NF4_BLOCK + i) / 2] = (uint8_t)(codes[i] << 4 | codes[i + 1]);
		if (len % 2)   /* only the last block of an odd count: pad with the code of 0 */
			packed[(b * LORA_NF4_BLOCK + len) / 2] =
				(uint8_t)(codes[len - 1] << 4 | nf4_code(nf4_bound, 0.0f));
	}
}

/* ------------------------------------------------------------ 8-bit step */

void lora_nf4_dq8(const float *absmax, uint64_t nb, uint8_t *qabsmax, float *absmax2,
		  float *offset)
{
	float off;

	tables();
	/* torch: absmax.mean() = sum / numel, in fp32 */
	off = nb ? lora_torch_sum_f32(absmax, nb) / (float)nb : 0.0f;
	*offset = off;
	for (uint64_t g = 0; g * LORA_NF4_BLOCK2 < nb; g++) {
		const uint64_t b0 = g * LORA_NF4_BLOCK2;
		const uint64_t len = nb - b0 < LORA_NF4_BLOCK2 ? nb - b0 : LORA_NF4_BLOCK2;
		float am = -INFINITY, inv;

		for (uint64_t i = 0; i < len; i++) {
			float a = fabsf(absmax[b0 + i] - off);
			am = a > am ? a : am;
		}
		am = am > 0.0f ? am : 0.0f;
		absmax2[g] = am;
		if (am == 0.0f) {
			memset(qabsmax + b0, 0, len);
			continue;
		}
		inv = 1.0f / am;
		for (uint64_t i = 0; i < len; i++) {
			float v = clamp1((absmax[b0 + i] - off) * inv);
			float t = (v + 1.0f) * 0.5f;
			uint32_t k = (uint32_t)(int32_t)fmaf(t, 65535.0f, 0.5f);

			qabsmax[b0 + i] = code8_lut[k & 0xffff];
		}
	}
}

/* ------------------------------------------------------------ tensors */

uint64_t lora_nf4_bytes(uint64_t n)
{
	uint64_t nb = (n + LORA_NF4_BLOCK - 1) / LORA_NF4_BLOCK;
	uint64_t ng = (nb + LORA_NF4_BLOCK2 - 1) / LORA_NF4_BLOCK2;

	return (n + 1) / 2 + nb + 4 * ng + 4;
}

void lora_nf4_free(struct lora_nf4 *q)
{
	if (!q)
		return;
	free(q->packed);
	free(q->qabsmax);
	free(q->absmax2);
	memset(q, 0, sizeof(*q));
}

#define QCHUNK (LORA_NF4_BLOCK * 1024)

struct qjob {
	struct lora_nf4 *q;
	const unsigned char *src;
	enum lora_dtype dt;
	unsigned esz;
	float *absmax;
};

/* Chunk i (whole blocks; only the last can end in a partial one): independent of the others. */
static int quantize_chunk(void *ctx, size_t i, struct lora_err *err)
{
	struct qjob *j = ctx;
	uint64_t s = (uint64_t)i * QCHUNK, len = j->q->n - s < QCHUNK ? j->q->n - s : QCHUNK;
	float *buf = malloc(len * sizeof(float));

	if (!buf)
		return lora_errf(err, "nf4: out of memory");
	lora_to_f32(buf, j->src + s * j->esz, j->dt, len);
	lora_nf4_blocks(buf, len, j->q->packed + s / 2, j->absmax + s / LORA_NF4_BLOCK);
	free(buf);
	return 0;
}

int lora_nf4_quantize(struct lora_nf4 *q, const void *src, enum lora_dtype dt, uint64_t n,
		      struct lora_err *err)
{
	struct qjob j = { .q = q, .src = src, .dt = dt, .esz = lora_dtype_bits(dt) / 8 };

	memset(q, 0, sizeof(*q));
	if (dt != LORA_DT_F32 && dt != LORA_DT_BF16 && dt != LORA_DT_F16)
		return lora_errf(err, "nf4: cannot quantize %s weights", lora_dtype_name(dt));
	if (n == 0 || n > ((uint64_t)1 << 40))
		return lora_errf(err, "nf4: bad element count %llu", (unsigned long long)n);
	q->n = n;
	q->nb = (n + LORA_NF4_BLOCK - 1) / LORA_NF4_BLOCK;
	q->ng = (q->nb + LORA_NF4_BLOCK2 - 1) / LORA_NF4_BLOCK2;
	q->packed = malloc((n + 1) / 2);
	q->qabsmax = malloc(q->nb);
	q->absmax2 = malloc(q->ng * sizeof(float));
	j.absmax = malloc(q->nb * sizeof(float));
	if (!q->packed || !q->qabsmax || !q->absmax2 || !j.absmax) {
		free(j.absmax);
		lora_nf4_free(q);
		return lora_errf(err, "nf4: out of memory for %llu elements", (unsigned long long)n);
	}
	/* Chunks by worker threads (the result does not depend on their number). */
	if (lora_par_for((size_t)((n + QCHUNK - 1) / QCHUNK), 0, quantize_chunk, &j, err) < 0) {
		free(j.absmax);
		lora_nf4_free(q);
		return -1;
	}
	lora_nf4_dq8(j.absmax, q->nb, q->qabsmax, q->absmax2, &q->offset);
	free(j.absmax);
	return 0;
}

void lora_nf4_absmax(const struct lora_nf4 *q, uint64_t b0, uint64_t count, float *out)
{
	for (uint64_t i = 0; i < count; i++) {
		const uint64_t b = b0 + i;
		float a = lora_code8[q->qabsmax[b]] * q->absmax2[b / LORA_NF4_BLOCK2];

		out[i] = a + q->offset;
	}
}

void lora_nf4_dequant(const struct lora_nf4 *q, uint64_t start, uint64_t count, float *out)
{
	uint64_t e = start, end = start + count;

	while (e < end) {
		const uint64_t b = e / LORA_NF4_BLOCK;
		const uint64_t bend = (b + 1) * LORA_NF4_BLOCK < end ? (b + 1) * LORA_NF4_BLOCK : end;
		float a;

		lora_nf4_absmax(q, b, 1, &a);
		if (e % 2 == 0 && bend % 2 == 0) {
			/* whole bytes, high nibble first, from the block's 16 scaled levels */
			const uint8_t *pk = q->packed + e / 2;
			const size_t nbytes = (size_t)(bend - e) / 2;
			float tab[16];

			for (int c = 0; c < 16; c++)
				tab[c] = lora_nf4_levels[c] * a;
			for (size_t i = 0; i < nbytes; i++) {
				out[2 * i] = tab[pk[i] >> 4];
				out[2 * i + 1] = tab[pk[i] & 15];
			}
			out += bend - e;
			e = bend;
			continue;
		}
		for (; e < bend; e++) {
			const uint8_t byte = q->packed[e / 2];
			const uint8_t c = (e & 1) ? (byte & 15) : (byte >> 4);

			*out++ = lora_nf4_levels[c] * a;
		}
	}
}
