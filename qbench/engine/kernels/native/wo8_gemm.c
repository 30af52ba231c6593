/* int8 weight-only GEMM: qb_wo8_gemm and qb_wo8_dequant. Part of qbench's native library; qbench_cpu.h maps
 * its files.
 *
 * qb_wo8_gemm  weight-only GEMM for int8 codes, fp32 activations and fp32 accumulation:
 *              y[m, n] = sum_g s[n, g] * (sum_{k in g} x[m, k] * c[n, k] + zc[n, g] * xg[m, g]) + b[n]
 *              where c are the codes, zc = -zero_point the per-group code offset and xg the group sums of x.
 *              M <= 2: one weight row at a time against every row of x; from M = 3, tiles of 4 weight rows
 *              x 4 rows of x over blocks of weight rows that stay in L2, so at M <= 16 every weight byte
 *              comes from memory once.
 * qb_wo8_dequant  (N, K) float32 weights (code + zc) * s, for the compute-bound (large M) case.
 */
#include <stddef.h>
#include <stdint.h>

#include "qbench_cpu.h"

#ifdef QB_AVX512
/* Weight bytes are streamed from memory once; a single sequential stream per core is bound by memory
 * latency (about 8 GB/s measured here), so each 64-byte step asks for a line 1 KiB ahead into L1 and one
 * 4 KiB ahead into L2 (13 GB/s on one core, measured under load). */
#ifndef QB_PREFETCH
#define QB_PREFETCH 1024
#endif

static inline __attribute__((always_inline)) void prefetch_weights(const void *p) {
    _mm_prefetch((const char *)p + QB_PREFETCH, _MM_HINT_T0);
    _mm_prefetch((const char *)p + 4 * QB_PREFETCH, _MM_HINT_T1);
}
#endif

/* the portable path below handles every count of rows of x per pass, 1 .. WO8_MB (16), as a constant */
#define WO_CASES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16)

typedef struct {
    const int8_t *w;      /* (N, K) codes */
    const float *x;       /* (M, K) */
    const float *xg;      /* (M, G) group sums of x */
    const float *s;       /* (N, G) scales */
    const float *zc;      /* (N, G) code offsets: w = s * (code + zc) */
    const float *bias;    /* (N,) or NULL */
    float *y;             /* (M, N) */
    int64_t M, N, K, G, gb;   /* G groups of gb columns (G * gb == K) */
} wo8_t;

#ifdef QB_AVX512
/* int8 codes k..k+15 -> float32 (all 16, or the lanes of a mask) */
static inline __attribute__((always_inline)) __m512 w8_vec(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static inline __attribute__((always_inline)) __m512 w8_vec_masked(const int8_t *p, __mmask16 mk) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, p)));
}

/* One weight row n against rows m0..m0+MB of x; MB is a constant after inlining. U independent
 * accumulators per row of x hide the FMA latency when MB is small. Codes are converted and, with more
 * than one group, scaled per vector; with one group the scale is applied once at the end, and the zero
 * point through the group sums of x: s * sum_k x (c + zc) = s * (sum_k x c + zc * xg). */
static inline __attribute__((always_inline)) void wo8_row(const wo8_t *a, int64_t n, int64_t m0, const int MB) {
    enum { U = 4 };
    const int UU = MB <= 2 ? U : MB <= 4 ? 2 : 1;
    __m512 acc[16][U];
#pragma GCC unroll 16
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
        for (int u = 0; u < UU; u++) acc[i][u] = _mm512_setzero_ps();
    float extra[16] = {0};
    const int64_t K = a->K;
    const int grouped = a->G > 1;
    const int8_t *wr = a->w + n * K;
    for (int64_t g = 0; g < a->G; g++) {
        const float sg = a->s[n * a->G + g], zg = a->zc[n * a->G + g];
        const __m512 sv = _mm512_set1_ps(sg);
        const int64_t k0 = g * a->gb, k1 = k0 + a->gb;
        int64_t k = k0;
        for (; k + 16 * UU <= k1; k += 16 * UU) {
            if ((k & 63) == 0) prefetch_weights(wr + k);
#pragma GCC unroll 4
            for (int u = 0; u < UU; u++) {
                __m512 wv = w8_vec(wr + k + 16 * u);
                if (grouped) wv = _mm512_mul_ps(wv, sv);
#pragma GCC unroll 16
                for (int i = 0; i < MB; i++)
                    acc[i][u] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(a->x + (m0 + i) * K + k + 16 * u), acc[i][u]);
            }
        }
        for (; k < k1; k += 16) {
            const int64_t left = k1 - k;
            const __mmask16 mk = tail16(left);
            __m512 wv = w8_vec_masked(wr + k, mk);
            if (grouped) wv = _mm512_mul_ps(wv, sv);
#pragma GCC unroll 16
            for (int i = 0; i < MB; i++)
                acc[i][0] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mk, a->x + (m0 + i) * K + k), acc[i][0]);
        }
        const float szc = grouped ? sg * zg : zg;             /* one group: the scale comes at the end */
        if (szc != 0.0f)
#pragma GCC unroll 16
            for (int i = 0; i < MB; i++) extra[i] += szc * a->xg[(m0 + i) * a->G + g];
    }
    const float b = a->bias ? a->bias[n] : 0.0f;
    const float s_end = grouped ? 1.0f : a->s[n];
#pragma GCC unroll 16
    for (int i = 0; i < MB; i++) a->y[(m0 + i) * a->N + n] = s_end * (lane_sum(acc[i], UU) + extra[i]) + b;
}

/* Rows of x per pass of the tile below, and weight rows per tile: each activation vector loaded serves
 * WO8_R weight rows and each converted weight vector WO8_MB rows of x. One weight row against all 16 rows of
 * x (wo8_row) loads an activation vector from L2 for every FMA once x outgrows L1, which bound it at M = 16
 * to 0.6x fp32 (measured, 16 x 4096 x 4096, two cores). */
#define WO8_MB 4
#define WO8_R 4

/* acc[i][r][u] += weights k..k+15 of row r (times its group scale sv[r] when grouped) x row i of x; masked:
 * only the lanes of mk (MASKED, MB and R constants after inlining) */
static inline __attribute__((always_inline)) void wo8_tile_step(const wo8_t *a, const int8_t *wr, const float *x,
                                                               int64_t k, const __m512 sv[WO8_R], int grouped,
                                                               __m512 acc[WO8_MB][WO8_R][4], int u, __mmask16 mk,
                                                               const int MASKED, const int MB, const int R) {
    __m512 wv[WO8_R];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        wv[r] = MASKED ? w8_vec_masked(wr + r * a->K + k, mk) : w8_vec(wr + r * a->K + k);
        if (grouped) wv[r] = _mm512_mul_ps(wv[r], sv[r]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++) {
        const __m512 xv = MASKED ? _mm512_maskz_loadu_ps(mk, x + i * a->K + k) : _mm512_loadu_ps(x + i * a->K + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) acc[i][r][u] = _mm512_fmadd_ps(wv[r], xv, acc[i][r][u]);
    }
}

/* R weight rows n.. against MB rows of x from m0 (MB, R constants after inlining); wo8_row's formula (in
 * another float summation order), with UU independent accumulators per (row of x, weight row) while MB * R < 8. */
static inline __attribute__((always_inline)) void wo8_tile(const wo8_t *a, int64_t n, int64_t m0, const int MB,
                                                          const int R) {
    const int UU = MB * R >= 8 ? 1 : 8 / (MB * R) > 4 ? 4 : 8 / (MB * R);
    __m512 acc[WO8_MB][WO8_R][4];
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 4
            for (int u = 0; u < UU; u++) acc[i][r][u] = _mm512_setzero_ps();
    float extra[WO8_MB][WO8_R] = {{0}};
    const int64_t K = a->K;
    const int grouped = a->G > 1;
    const int8_t *wr = a->w + n * K;
    const float *x = a->x + m0 * K;
    for (int64_t g = 0; g < a->G; g++) {
        __m512 sv[WO8_R];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) sv[r] = _mm512_set1_ps(a->s[(n + r) * a->G + g]);
        const int64_t k0 = g * a->gb, k1 = k0 + a->gb;
        int64_t k = k0;
        for (; k + 16 * UU <= k1; k += 16 * UU) {
            if ((k & 63) == 0)
#pragma GCC unroll 4
                for (int r = 0; r < R; r++) prefetch_weights(wr + r * K + k);
#pragma GCC unroll 4
            for (int u = 0; u < UU; u++)
                wo8_tile_step(a, wr, x, k + 16 * u, sv, grouped, acc, u, 0xFFFF, 0, MB, R);
        }
        for (; k < k1; k += 16) {
            const int64_t left = k1 - k;
            const __mmask16 mk = tail16(left);
            wo8_tile_step(a, wr, x, k, sv, grouped, acc, 0, mk, 1, MB, R);
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const float sg = a->s[(n + r) * a->G + g], zg = a->zc[(n + r) * a->G + g];
            const float szc = grouped ? sg * zg : zg;         /* one group: the scale comes at the end */
            if (szc != 0.0f)
#pragma GCC unroll 4
                for (int i = 0; i < MB; i++) extra[i][r] += szc * a->xg[(m0 + i) * a->G + g];
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const float s_end = grouped ? 1.0f : a->s[n + r];
            a->y[(m0 + i) * a->N + n + r] = s_end * (lane_sum(acc[i][r], UU) + extra[i][r]) +
                                            (a->bias ? a->bias[n + r] : 0.0f);
        }
}

#define WO8_R_CASE(MB) \
    case MB: \
        for (; n + WO8_R <= n1; n += WO8_R) wo8_tile(a, n, m0, MB, WO8_R); \
        switch (n1 - n) { case 3: wo8_tile(a, n, m0, MB, 3); break; case 2: wo8_tile(a, n, m0, MB, 2); break; \
                          case 1: wo8_tile(a, n, m0, MB, 1); break; default: break; } \
        break;

/* M <= 2 keeps wo8_row: one weight row at a time, a single stream, is at the memory floor there and tiles
 * of 2 or 4 rows were 1.2x slower at M = 2 (measured, 2 x 4096 x 4096, weights rotated past the cache);
 * from M = 3 the tiles below win (0.92x the time at M = 3, 0.64x at M = 8, 0.31x at M = 16). */
static void wo8_rows(const void *ctx, int64_t n0, int64_t n1, int64_t m0, int mb) {
    const wo8_t *a = (const wo8_t *)ctx;
    int64_t n = n0;
    if (a->M <= 2) {
        for (; n < n1; n++) {
            if (mb == 2) wo8_row(a, n, m0, 2);
            else wo8_row(a, n, m0, 1);
        }
        return;
    }
    switch (mb) { WO8_R_CASE(1) WO8_R_CASE(2) WO8_R_CASE(3) WO8_R_CASE(4) default: break; }
}
#else
static void wo8_row(const wo8_t *a, int64_t n, int64_t m0, const int MB) {
    const int64_t K = a->K;
    for (int i = 0; i < MB; i++) {
        const int64_t m = m0 + i;
        float tot = 0.0f;
        for (int64_t g = 0; g < a->G; g++) {
            const float s = a->s[n * a->G + g];
            float acc = 0.0f;
            for (int64_t k = g * a->gb; k < (g + 1) * a->gb; k++) acc += a->x[m * K + k] * (float)a->w[n * K + k];
            tot += s * acc + s * a->zc[n * a->G + g] * a->xg[m * a->G + g];
        }
        a->y[m * a->N + n] = tot + (a->bias ? a->bias[n] : 0.0f);
    }
}

#define WO8_MB 16
#define WO8_CASE(MB) case MB: for (int64_t n = n0; n < n1; n++) wo8_row(a, n, m0, MB); break;

static void wo8_rows(const void *ctx, int64_t n0, int64_t n1, int64_t m0, int mb) {
    const wo8_t *a = (const wo8_t *)ctx;
    switch (mb) { WO_CASES(WO8_CASE) }
}
#endif

static void wo8_task(void *ctx, int64_t n_lo, int64_t n_hi) {
    const wo8_t *a = (const wo8_t *)ctx;
    wo_row_blocks(a, wo8_rows, a->K, a->M, WO8_MB, n_lo, n_hi);
}

int qb_wo8_gemm(const int8_t *w, const float *x, const float *xg, const float *s, const float *zc, const float *bias,
                float *y, int64_t M, int64_t N, int64_t K, int64_t G, int threads) {
    if (M < 0 || N < 0 || K < 1 || G < 1 || K % G) return 1;
    wo8_t a = {w, x, xg, s, zc, bias, y, M, N, K, G, K / G};
    parallel_for(wo8_task, &a, N, threads, 8);
    return 0;
}

typedef struct { const wo8_t *a; float *out; } dq8_t;

/* out (N, K) float32 = s * (code + zc), the same float operations as primitives.dequantize */
static void dq8_task(void *ctx, int64_t n_lo, int64_t n_hi) {
    const dq8_t *d = (const dq8_t *)ctx;
    const wo8_t *a = d->a;
    for (int64_t n = n_lo; n < n_hi; n++) {
        const int8_t *w = a->w + n * a->K;
        float *o = d->out + n * a->K;
        for (int64_t g = 0; g < a->G; g++) {
            const float s = a->s[n * a->G + g], zc = a->zc[n * a->G + g];
            for (int64_t k = g * a->gb; k < (g + 1) * a->gb; k++) o[k] = ((float)w[k] + zc) * s;
        }
    }
}

int qb_wo8_dequant(const int8_t *w, const float *s, const float *zc, float *out, int64_t N, int64_t K, int64_t G,
                   int threads) {
    if (N < 0 || K < 1 || G < 1 || K % G) return 1;
    wo8_t a = {w, NULL, NULL, s, zc, NULL, NULL, 0, N, K, G, K / G};
    dq8_t d = {&a, out};
    parallel_for(dq8_task, &d, N, threads, 8);
    return 0;
}
