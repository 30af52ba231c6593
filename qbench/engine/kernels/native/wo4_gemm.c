/* int4 weight-only GEMM: qb_wo4_gemm and qb_wo4_dequant. Part of qbench's native library; qbench_cpu.h maps
 * its files.
 *
 * qb_wo4_gemm  weight-only GEMM for unsigned nibbles c = q - qmin, two per byte in the blocked layout below:
 *              y[m, n] = sum_k x[m, k] * s[n, g(k)] * (c[n, k] + zc[n, g(k)]) + b[n],
 *              zc = qmin - zero_point, each weight looked up in a 16-entry table per group; fp32 FMA.
 *              Rows of x are taken 4 at a time over blocks of weight rows that stay in L2, so at M <= 16
 *              every weight byte comes from memory once.
 * qb_wo4_dequant  (N, K) float32 weights (code + zc) * s from the same layout, for the compute-bound case.
 *
 * Layout (decode.pack_nibble_blocks): a row holds K unsigned nibbles c = q - qmin as K / 128 blocks of 64
 * bytes, each 16 little-endian 32-bit words, where bits 4j .. 4j+3 of word d of block b hold the code of
 * column k = 128 b + 16 j + d; then, when 128 does not divide K, one short block for the last K % 128
 * columns: its J = ceil((K % 128) / 16) sub-blocks of 16 columns in 16 words of u bytes, the fewest that
 * hold J nibbles (u = 1, 2 or 4), the same nibble order, and code 0 past column K. Byte view: column k is
 * in byte 64 (k / 128) + u (k % 16) + (k % 128) / 32 (u = 4 in the full blocks), high nibble where k / 16
 * is odd.
 *
 * Why: one 64-byte load gives 16 words v, and vpermps reads only the low 4 bits of each 32-bit index, so
 * permutexvar(v >> 4j, table) turns the codes of columns 128 b + 16 j .. +15 into their weights with no
 * mask and no widening, and their activations x[128 b + 16 j : +16] are contiguous. Per 128 weights: one
 * load, 7 shifts, 8 permutes, 8 FMAs per row of x. The table holds the 16 values s * (c + zc) of one group
 * (zc = qmin - zero point), the same float operations as primitives.dequantize. It serves a 16-column
 * sub-block whenever a group holds whole sub-blocks (group size a multiple of 16, or one group per row);
 * other group sizes give each lane its own group's s and zc (slower; exact all the same). The short block
 * is widened to 32-bit words and goes the same way; x comes padded with zeros to a multiple of 16 columns. */
#include <stdint.h>
#include <stdlib.h>

#include "qbench_cpu.h"

typedef struct {
    const uint8_t *w;     /* (N, row_bytes) blocked nibbles */
    const float *x;       /* (M, Kx): Kx = K rounded up to a multiple of 16, zero past column K */
    const float *s, *zc;  /* (N, G): w = s * (code + zc) */
    const float *bias;    /* (N,) or NULL */
    float *y;             /* (M, N) */
    const int32_t *sub_group;   /* group of each 16-column sub-block's first column */
    const int32_t *col_group;   /* (Kx,) group of every column, or NULL where sub-blocks suffice */
    int64_t M, N, K, Kx, G, gb;
    int64_t blocks;       /* full 128-column blocks per row */
    int64_t row_bytes;    /* 64 blocks + 16 tail_unit */
    int tail_j;           /* sub-blocks in the short block (0: none) */
    int tail_unit;        /* bytes per word of the short block: 1, 2 or 4 */
    int spt;              /* sub-blocks per table: 8, 4, 2, 1 (16 * spt divides the group size), 0 (per lane) */
} wo4_t;

/* Rows of x per pass over a block of weight rows. More rows would share each dequantized weight vector
 * further, but their accumulators leave room for fewer weight rows per tile (WO4_R), and then activation
 * loads from L2 bound the kernel (measured at M = 8, one core, weights in L2: 2.4 ns per 128 weights and
 * row of x in passes of 4, 3.0 ns in one pass of 8 with 2 weight rows per tile). */
#define WO4_MB 4

#ifdef QB_AVX512
/* the 16 weights s * (c + zc), c = 0..15, of group g */
static inline __attribute__((always_inline)) __m512 nibble_table(const float *sr, const float *zr, int64_t g) {
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    return _mm512_mul_ps(_mm512_add_ps(iota, _mm512_set1_ps(zr[g])), _mm512_set1_ps(sr[g]));
}

/* Weights of columns k0 .. k0+15 when groups change inside them: each lane's s and zc are permuted out of
 * a window of 16 groups starting at the first column's (a 16-column span meets at most 16 groups). */
static inline __attribute__((always_inline)) __m512 lane_weights(const wo4_t *a, const float *sr, const float *zr,
                                                               int64_t k0, __m512i codes) {
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const int32_t g0 = a->col_group[k0];
    const __m512i off = _mm512_sub_epi32(_mm512_loadu_si512(a->col_group + k0), _mm512_set1_epi32(g0));
    const int64_t left = a->G - g0;
    const __mmask16 mk = tail16(left);
    const __m512 c = _mm512_permutexvar_ps(codes, iota);
    const __m512 zc = _mm512_permutexvar_ps(off, _mm512_maskz_loadu_ps(mk, zr + g0));
    return _mm512_mul_ps(_mm512_add_ps(c, zc), _mm512_permutexvar_ps(off, _mm512_maskz_loadu_ps(mk, sr + g0)));
}

/* The dequantized weights of sub-block j (columns 128 b + 16 j .. +15) of a row whose block b is v. SPT (a
 * constant after inlining) sub-blocks share one table, kept in *table and renewed when j % SPT == 0;
 * SPT == 0: per-lane groups. */
static inline __attribute__((always_inline)) __m512 wo4_sub(const wo4_t *a, __m512i v, const float *sr,
                                                           const float *zr, int64_t b, int j, const int SPT,
                                                           __m512 *table) {
    const __m512i codes = j ? _mm512_srli_epi32(v, 4 * j) : v;         /* vpermps reads bits 0..3 only */
    if (SPT == 0) return lane_weights(a, sr, zr, 128 * b + 16 * j, codes);
    if (j % SPT == 0) *table = nibble_table(sr, zr, a->sub_group[8 * b + j]);
    return _mm512_permutexvar_ps(codes, *table);
}

/* the 16 words of block b of a row, widened to 32 bits where b is the short block */
static inline __attribute__((always_inline)) __m512i wo4_words(const wo4_t *a, const uint8_t *wr, int64_t b) {
    const uint8_t *p = wr + 64 * b;
    if (b < a->blocks || a->tail_unit == 4) return _mm512_loadu_si512(p);
    if (a->tail_unit == 2) return _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
}

/* The 4-bit kernel reads half the bytes per FMA of the int8 one, so it runs further ahead: 8 KiB into L2,
 * and 2 KiB into L1 as non-temporal, as these lines are not read again (measured, 4096 x 4096 GEMV on two
 * cores: 0.41 -> 0.39 ms, and 0.50 -> 0.47 ms right after a 64 MiB write, against T0 1 KiB / T1 4 KiB). */
static inline __attribute__((always_inline)) void prefetch_nibbles(const void *p) {
    _mm_prefetch((const char *)p + 2048, _MM_HINT_NTA);
    _mm_prefetch((const char *)p + 8192, _MM_HINT_T1);
}

/* acc[i][r] += the weights of sub-blocks 0 .. J-1 of block b of R rows (words v[r], scales sr + r G) times
 * row i of x (MB, R, UU, SPT constants after inlining; J too for full blocks) */
static inline __attribute__((always_inline)) void wo4_block_fma(const wo4_t *a, __m512 acc[WO4_MB][4][8],
                                                               const __m512i v[4], const float *sr, const float *zr,
                                                               const float *x, int64_t b, int J, const int MB,
                                                               const int R, const int UU, const int SPT) {
    __m512 table[4];
#pragma GCC unroll 8
    for (int j = 0; j < 8; j++) {
        if (j >= J) break;
        __m512 w[4];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) w[r] = wo4_sub(a, v[r], sr + r * a->G, zr + r * a->G, b, j, SPT, &table[r]);
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) {
            const __m512 xv = _mm512_loadu_ps(x + i * a->Kx + 128 * b + 16 * j);
#pragma GCC unroll 4
            for (int r = 0; r < R; r++) acc[i][r][j % UU] = _mm512_fmadd_ps(w[r], xv, acc[i][r][j % UU]);
        }
    }
}

/* R weight rows n.. against MB rows of x from m0 (MB, R, SPT constants after inlining). Each activation
 * vector loaded serves R rows: at M > 2 x no longer fits L1, and one load per FMA from L2 would bound the
 * kernel. UU independent accumulators per (row of x, weight row) hide the FMA latency at small MB * R. */
static inline __attribute__((always_inline)) void wo4_tile(const wo4_t *a, int64_t n, int64_t m0, const int MB,
                                                          const int R, const int SPT) {
    const int UU = MB * R >= 8 ? 1 : 8 / (MB * R);
    __m512 acc[WO4_MB][4][8];
#pragma GCC unroll 8
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
#pragma GCC unroll 8
            for (int u = 0; u < UU; u++) acc[i][r][u] = _mm512_setzero_ps();
    const uint8_t *wr = a->w + n * a->row_bytes;
    const float *sr = a->s + n * a->G, *zr = a->zc + n * a->G, *x = a->x + m0 * a->Kx;
    __m512i v[4];
    int64_t b = 0;
    for (; b < a->blocks; b++) {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            prefetch_nibbles(wr + r * a->row_bytes + 64 * b);
            v[r] = _mm512_loadu_si512(wr + r * a->row_bytes + 64 * b);
        }
        wo4_block_fma(a, acc, v, sr, zr, x, b, 8, MB, R, UU, SPT);
    }
    if (a->tail_j) {
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) v[r] = wo4_words(a, wr + r * a->row_bytes, b);
        wo4_block_fma(a, acc, v, sr, zr, x, b, a->tail_j, MB, R, UU, SPT);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
        for (int r = 0; r < R; r++)
            a->y[(m0 + i) * a->N + n + r] = lane_sum(acc[i][r], UU) + (a->bias ? a->bias[n + r] : 0.0f);
}

/* out[0 : K] = the dequantized row n */
static inline __attribute__((always_inline)) void dq4_row(const wo4_t *a, int64_t n, float *out, const int SPT) {
    const uint8_t *wr = a->w + n * a->row_bytes;
    const float *sr = a->s + n * a->G, *zr = a->zc + n * a->G;
    for (int64_t b = 0; b < a->blocks + (a->tail_j > 0); b++) {
        const __m512i v = wo4_words(a, wr, b);
        __m512 table;
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            const int64_t k0 = 128 * b + 16 * j, left = a->K - k0;
            if (left <= 0) break;
            const __m512 w = wo4_sub(a, v, sr, zr, b, j, SPT, &table);
            if (left >= 16) _mm512_storeu_ps(out + k0, w);
            else _mm512_mask_storeu_ps(out + k0, (__mmask16)((1u << left) - 1), w);
        }
    }
}
#else
/* the code of column k of a row in the blocked layout (see the top of this section) */
static inline int nibble_at(const wo4_t *a, const uint8_t *wr, int64_t k) {
    const int64_t b = k >> 7;
    const uint8_t byte = wr[64 * b + (b < a->blocks ? 4 : a->tail_unit) * (k & 15) + ((k >> 5) & 3)];
    return (k >> 4) & 1 ? byte >> 4 : byte & 15;
}

static void wo4_tile(const wo4_t *a, int64_t n0, int64_t m0, const int MB, const int R, const int SPT) {
    (void)SPT;
    for (int64_t n = n0; n < n0 + R; n++) {
        const uint8_t *wr = a->w + n * a->row_bytes;
        for (int i = 0; i < MB; i++) {
            const float *x = a->x + (m0 + i) * a->Kx;
            float tot = 0.0f;
            for (int64_t g = 0; g < a->G; g++) {
                const float s = a->s[n * a->G + g], zc = a->zc[n * a->G + g];
                float acc = 0.0f;
                for (int64_t k = g * a->gb; k < (g + 1) * a->gb; k++) acc += x[k] * ((float)nibble_at(a, wr, k) + zc);
                tot += s * acc;
            }
            a->y[(m0 + i) * a->N + n] = tot + (a->bias ? a->bias[n] : 0.0f);
        }
    }
}

static void dq4_row(const wo4_t *a, int64_t n, float *out, const int SPT) {
    (void)SPT;
    const uint8_t *wr = a->w + n * a->row_bytes;
    for (int64_t g = 0; g < a->G; g++) {
        const float s = a->s[n * a->G + g], zc = a->zc[n * a->G + g];
        for (int64_t k = g * a->gb; k < (g + 1) * a->gb; k++) out[k] = ((float)nibble_at(a, wr, k) + zc) * s;
    }
}
#endif

/* weight rows per tile at MB rows of x: enough activation reuse, and MB * R accumulators fit the registers */
#define WO4_R(MB) ((MB) == 1 ? 1 : (MB) == 2 ? 2 : 4)

/* rows n0..n1 in tiles of WO4_R(MB) rows (single rows for the rest) */
#define WO4_TILES(MB, SPT) do { \
        int64_t n = n0; \
        for (; n + WO4_R(MB) <= n1; n += WO4_R(MB)) wo4_tile(a, n, m0, MB, WO4_R(MB), SPT); \
        for (; n < n1; n++) wo4_tile(a, n, m0, MB, 1, SPT); \
    } while (0)
#define WO4_CASE(MB) case MB: \
    switch (a->spt) { \
        case 8: WO4_TILES(MB, 8); break; \
        case 4: WO4_TILES(MB, 4); break; \
        case 2: WO4_TILES(MB, 2); break; \
        case 1: WO4_TILES(MB, 1); break; \
        default: WO4_TILES(MB, 0); \
    } \
    break;

static void wo4_rows(const void *ctx, int64_t n0, int64_t n1, int64_t m0, int mb) {
    const wo4_t *a = (const wo4_t *)ctx;
    switch (mb) { WO4_CASE(1) WO4_CASE(2) WO4_CASE(3) WO4_CASE(4) }
}

static void wo4_task(void *ctx, int64_t n_lo, int64_t n_hi) {
    const wo4_t *a = (const wo4_t *)ctx;
    wo_row_blocks(a, wo4_rows, a->row_bytes, a->M, WO4_MB, n_lo, n_hi);
}

typedef struct { const wo4_t *a; float *out; } dq4_t;

static void dq4_task(void *ctx, int64_t n_lo, int64_t n_hi) {
    const dq4_t *d = (const dq4_t *)ctx;
    const wo4_t *a = d->a;
    for (int64_t n = n_lo; n < n_hi; n++) {
        float *out = d->out + n * a->K;
        switch (a->spt) {
            case 8: dq4_row(a, n, out, 8); break;
            case 4: dq4_row(a, n, out, 4); break;
            case 2: dq4_row(a, n, out, 2); break;
            case 1: dq4_row(a, n, out, 1); break;
            default: dq4_row(a, n, out, 0);
        }
    }
}

/* groups[i] = group of column i * step (i < count), min(column / gb, G - 1): the padded columns past K
 * take the last group (their codes are 0 and their x is 0, so any finite weight adds nothing). */
static int32_t *column_groups(int64_t count, int64_t step, int64_t gb, int64_t G) {
    int32_t *groups = malloc((size_t)(count > 0 ? count : 1) * sizeof(int32_t));
    if (!groups) return NULL;
    int64_t g = 0, next = gb;
    for (int64_t i = 0; i < count; i++) {
        while (i * step >= next && g < G - 1) { g++; next += gb; }
        groups[i] = (int32_t)g;
    }
    return groups;
}

/* Fill a's shape fields for N rows of K columns in G groups; 0, or an error code. The caller frees
 * sub_group and col_group (wo4_free). */
static int wo4_setup(wo4_t *a, int64_t N, int64_t K, int64_t G) {
    if (N < 0 || K < 1 || G < 1 || K % G || G > INT32_MAX) return 1;
    a->N = N;
    a->K = K;
    a->Kx = (K + 15) / 16 * 16;
    a->G = G;
    a->gb = K / G;
    a->blocks = K / 128;
    a->tail_j = (int)((K % 128 + 15) / 16);
    a->tail_unit = a->tail_j == 0 ? 0 : a->tail_j <= 2 ? 1 : a->tail_j <= 4 ? 2 : 4;
    a->row_bytes = 64 * a->blocks + 16 * a->tail_unit;
    a->spt = G == 1 || a->gb % 128 == 0 ? 8 : a->gb % 64 == 0 ? 4 : a->gb % 32 == 0 ? 2 : a->gb % 16 == 0 ? 1 : 0;
    a->sub_group = column_groups(a->Kx / 16, 16, a->gb, G);
    a->col_group = a->spt ? NULL : column_groups(a->Kx, 1, a->gb, G);
    return a->sub_group && (a->spt || a->col_group) ? 0 : 2;
}

static void wo4_free(wo4_t *a) {
    free((void *)a->sub_group);
    free((void *)a->col_group);
}

int qb_wo4_gemm(const uint8_t *w, const float *x, const float *s, const float *zc, const float *bias, float *y,
                int64_t M, int64_t N, int64_t K, int64_t G, int threads) {
    wo4_t a = {.w = w, .x = x, .s = s, .zc = zc, .bias = bias, .y = y, .M = M};
    const int rc = M < 0 ? 1 : wo4_setup(&a, N, K, G);
    if (rc == 0) parallel_for(wo4_task, &a, N, threads, 8);
    wo4_free(&a);
    return rc;
}

int qb_wo4_dequant(const uint8_t *w, const float *s, const float *zc, float *out, int64_t N, int64_t K, int64_t G,
                   int threads) {
    wo4_t a = {.w = w, .s = s, .zc = zc};
    const int rc = wo4_setup(&a, N, K, G);
    dq4_t d = {&a, out};
    if (rc == 0) parallel_for(dq4_task, &d, N, threads, 8);
    wo4_free(&a);
    return rc;
}
