/*
 * lowrank.h - LoRA updates kept in their factored form.
 *
 * A LoRA module changes a weight by ΔW = s·B·A with B [out, r], A [r, in]
 * and r much smaller than out and in.  Everything here works on the factors
 * and small r×r (or 2r×2r) matrices and never forms the out×in ΔW:
 *
 *   ⟨B₁A₁, B₂A₂⟩_F = Σ_ij (B₁ᵀB₂)_ij (A₁A₂ᵀ)_ij = tr((B₁ᵀB₂)(A₂A₁ᵀ))
 *   ‖BA‖_F²        = ⟨BA, BA⟩_F
 *   σ(BA)          = σ(R_B R_Aᵀ)   with B = Q_B R_B and Aᵀ = Q_A R_A (QR)
 *
 * so the cost of a module is O((out + in)·r²) instead of O(out·in·r).
 * Arithmetic is fp64 throughout (inputs are F32, BF16, F16 or F64).
 *
 * Matrices are row-major unless a comment says otherwise.  Dimensions: out
 * and in are the ΔW shape [out, in]; r (or K for a stack of factors) the rank.
 */
#ifndef LORA_LOWRANK_H
#define LORA_LOWRANK_H

#include <stddef.h>
#include <stdint.h>

#include "libadapter/base/err.h"
#include "libadapter/format/peft.h"
#include "libadapter/format/safetensors.h"

/* ΔW = scale · B·A in fp64. */
struct lora_lowrank {
	int r, out, in;
	double scale;
	double *B;                    /* [out, r] */
	double *A;                    /* [r, in] */
};

/* Convert n values of a float dtype (F64, F32, BF16, F16) to fp64; -1 for other dtypes. */
int lora_to_f64(double *dst, const void *src, enum lora_dtype dt, size_t n);

/* A float tensor converted to a malloc'd fp64 array (nelem values). */
double *lora_tensor_f64(const struct lora_st_tensor *t, struct lora_err *err);

/* Load a PEFT module's factors and scale.  Free with lora_lowrank_free. */
int lora_lowrank_load(const struct lora_peft_module *m, struct lora_lowrank *f, struct lora_err *err);
void lora_lowrank_free(struct lora_lowrank *f);

/*
 * Stacked Gram matrices of m ≤ 8 factor pairs of the same [out, in] shape,
 * K = Σ r_i:  GB [K, K] = [B_1 … B_m]ᵀ[B_1 … B_m],  GA [K, K] = [A_1; …; A_m][A_1; …; A_m]ᵀ.
 * Scales are not applied.  The blocks GB[i][j] = B_iᵀB_j and GA[i][j] =
 * A_iA_jᵀ give every norm and inner product of the set.  From stored tensors
 * (any float dtype, read in cache-sized blocks, no fp64 copy of a factor) or
 * from loaded factors.
 */
int lora_grams_tensors(const struct lora_peft_module *const *mods, int m, double *GB, double *GA,
		       struct lora_err *err);
int lora_grams_factors(const struct lora_lowrank *const *f, int m, double *GB, double *GA,
		       struct lora_err *err);

/* ‖ΔW‖_F of a stored module (scale included), streaming. */
int lora_module_norm(const struct lora_peft_module *m, double *out, struct lora_err *err);

/* ‖ΔW‖_F from the Gram matrices BᵀB and AAᵀ. */
int lora_lowrank_norm(const struct lora_lowrank *f, double *out, struct lora_err *err);

/* ⟨ΔW_x, ΔW_y⟩_F; x and y must have the same out and in. */
int lora_lowrank_inner(const struct lora_lowrank *x, const struct lora_lowrank *y, double *out,
		       struct lora_err *err);

/*
 * Singular values of ΔW, largest first, by QR of B and of Aᵀ and an SVD of
 * the small core R_B·R_Aᵀ.  sv must hold min(r, out, in) values; that count
 * is returned (or -1 + err).
 */
int lora_lowrank_svals(const struct lora_lowrank *f, double *sv, struct lora_err *err);

/*
 * Singular values of one PEFT module's ΔW (scale included), largest first.
 * sv must hold m->r values; those past min(r, out, in) are set to 0.
 *     double *sv = calloc(m->r, sizeof *sv);
 *     if (lora_module_spectrum(m, sv, &err) < 0) ...
 */
int lora_module_spectrum(const struct lora_peft_module *m, double *sv, struct lora_err *err);

/*
 * The figures `lora inspect` shows for every module i of p: norms[i] =
 * ‖ΔW_i‖_F (norms holds p->n_modules values); with sv not NULL (p->n_modules
 * pointers, set to NULL first), sv[i] = a malloc'd spectrum of m->r values
 * (lora_module_spectrum).  On failure the message names the module; the
 * spectra made so far are left in sv for the caller to free.
 */
int lora_peft_figures(const struct lora_peft *p, double *norms, double **sv, struct lora_err *err);

/*
 * Effective rank of a spectrum (Roy & Vetterli, 2007): exp of the Shannon
 * entropy of p_i = σ_i / Σσ_j.  Between 1 (one direction) and n (all σ
 * equal); 0 for an all-zero spectrum.
 */
double lora_effective_rank(const double *sv, int n);

/* Relative cut below which a singular value does not count (see overlap). */
#define LORA_RANK_TOL 1e-6

/*
 * Comparison of two updates of the same shape.
 *
 * overlap: with U_x the left singular vectors of ΔW_x whose σ exceed
 * LORA_RANK_TOL·σ_max (at most r_x of them), k = min(#U_a, #U_b), and U_x^k its first k
 * columns (largest σ first), overlap = ‖(U_a^k)ᵀ U_b^k‖_F² / k: the mean
 * squared cosine of the k principal angles between the top-k column spaces.
 * 1 for the same subspace, about k/out for random ones, NAN when k = 0.
 */
struct lora_lowrank_cmp {
	double norm_a, norm_b;        /* ‖ΔW_a‖_F, ‖ΔW_b‖_F */
	double inner;                 /* ⟨ΔW_a, ΔW_b⟩_F */
	double distance;              /* ‖ΔW_a − ΔW_b‖_F */
	double cosine;                /* inner / (norm_a·norm_b); NAN if either is 0 */
	double overlap;               /* see above; NAN when undefined */
	int overlap_k;
};

int lora_lowrank_compare(const struct lora_lowrank *a, const struct lora_lowrank *b,
			 struct lora_lowrank_cmp *c, struct lora_err *err);

/*
 * The same from the stacked Grams of (a, b) (lora_grams_*, K = ra + rb) and
 * the scales.  When the two are so close that d² = ‖a‖² + ‖b‖² − 2⟨a,b⟩
 * would lose digits, *need_qr is set and distance left 0: compute it with
 * lora_lowrank_distance_qr.
 */
int lora_lowrank_compare_grams(const double *GB, const double *GA, int ra, int rb, double sa,
			       double sb, struct lora_lowrank_cmp *c, int *need_qr,
			       struct lora_err *err);

/* ‖ΔW_a − ΔW_b‖_F by QR of the stacked factors: accurate however close they are. */
int lora_lowrank_distance_qr(const struct lora_lowrank *a, const struct lora_lowrank *b, double *d,
			     struct lora_err *err);

/*
 * ‖ΔW‖_F of a stack B [out, K] · A [K, in] by QR of both factors: accurate
 * even when the product nearly cancels (the distance of two close updates).
 */
int lora_lowrank_stack_norm(const double *B, const double *A, int out, int K, int in, double *norm,
			    struct lora_err *err);

/*
 * Best rank-R approximation of ΔW = B·A with B [out, K], A [K, in] (the
 * weights and scales already folded into the factors), computed from QR of
 * B and Aᵀ and the SVD of the K×K core.  Writes B_out [out, R] = U·diag(σ),
 * A_out [R, in] = Vᵀ and sv [R], the same split as PEFT's svd combination.
 * When R exceeds the rank of ΔW the extra σ, columns and rows are 0.
 * total_sq (may be NULL) gets ‖ΔW‖_F² = Σ of all σ².
 */
int lora_lowrank_truncate(const double *B, const double *A, int out, int K, int in, int R,
			  double *B_out, double *A_out, double *sv, double *total_sq,
			  struct lora_err *err);

/* ------------------------------------------------------ randomized SVD */

/*
 * Rows [row0, row0 + n) of the matrix being factored, as fp64 into dst
 * [n, in].  Returns 0 or -1 + err.
 */
typedef int (*lora_rows_fn)(void *ctx, uint64_t row0, uint64_t n, double *dst, struct lora_err *err);

struct lora_rsvd_params {
	int rank;                     /* R */
	int oversample;               /* extra sample columns (10 is typical) */
	int iters;                    /* power iterations (2 is typical) */
	uint64_t seed;
	size_t block_bytes;           /* rows fetched per call ≈ block_bytes / (8·in) */
};

/*
 * Randomized SVD (Halko, Martinsson & Tropp, 2011) of an out×in matrix D
 * read a block of rows at a time, so memory stays O((out + in)·(R + p)) plus
 * one block.  D is read 2 + 2·iters times.  Writes B_out [out, R] = U·diag(σ),
 * A_out [R, in] = Vᵀ, sv [R], and ‖D‖_F² into *total_sq.  R is clamped to
 * min(out, in) by the caller.  When D = 0 (found on the first pass) the
 * outputs are zeros and D is not read again.
 */
int lora_rsvd(uint64_t out, uint64_t in, const struct lora_rsvd_params *p, lora_rows_fn rows,
	      void *ctx, double *B_out, double *A_out, double *sv, double *total_sq,
	      struct lora_err *err);

#endif
