/* Fused W8A8 GEMM: qb_w8a8_gemm and qb_w8a8_isa. Part of qbench's native library; qbench_cpu.h maps its files.
 *
 * y[m, n] = sa[m] * ws[n] * sum_k (u[m, k] - za[m]) * (c[n, k] - zc[n]) + bias[n]
 *
 * in one call: the activation rows are quantized (the same codes as quant_u8: uint8 domain u, zero point za)
 * into a small row block, multiplied against the packed weight codes c (int8; zc their zero point, 0 for
 * symmetric weights) with uint8 x int8 -> int32 dot products (vpdpbusd), corrected, rescaled and biased in
 * registers before the one store of y. Nothing of size M x N or M x K besides x and y touches memory.
 *
 * The correction expands (u - za)(c - zc) = u c - za c - zc (u - za): with csum[n] = sum_k c[n, k] and
 * rt[m] = sum_k u[m, k] - K za[m], the exact int32 result is acc - za csum[n] - zc[n] rt[m]. All int32
 * arithmetic wraps (vpdpbusd does not saturate), so the result is exact whenever it fits int32:
 * |(u - za)(c - zc)| <= 255 * 255 per term, hence K <= 32768.
 *
 * Weight layout (packed by the caller): 64-column panels; panel p holds, for every group of 4 k, the 64
 * columns' 4 bytes side by side: wp[p][k / 4][j][k % 4] = c[64 p + j, k], K padded to a multiple of 4 and N
 * to a multiple of 64 with zero codes; csum, zc, ws and bias are padded to that N as well.
 * The micro-kernel keeps 6 rows x 64 columns of int32 sums in 24 registers; per 4 k it loads the 4 panel
 * vectors and broadcasts 4 activation bytes of each row. Threads split the rows (each quantizes its own),
 * or, for few rows, the panels (each quantizes all rows).
 *
 * qb_w4a8_gemm: the same GEMM on 4-bit weight codes held as nibbles, half the bytes. Codes are unsigned
 * c = q - qmin (0..15; zc = zero point - qmin, so s (q - z) = s (c - zc) and the corrections above hold as
 * they are). Layout: 64-column panels, K padded to a multiple of 8; for every 8 k, each column's 4 bytes side
 * by side, byte b holding c[k = 8 t + b] in its low nibble and c[8 t + 4 + b] in its high nibble:
 * wp[p][k / 8][j][b] = c[64 p + j, 8 t + b] | c[64 p + j, 8 t + 4 + b] << 4. One AND gives the 4 bytes of
 * k = 8 t .. 8 t + 3, a 16-bit shift and an AND those of 8 t + 4 .. 8 t + 7, each a valid int8 operand of
 * vpdpbusd against 4 activation bytes in their natural order: the weights are unpacked in registers, never
 * in memory.
 *
 * qb_w4a8_group_gemm: the nibble GEMM with one scale and zero point per group of gs consecutive k of a weight
 * row (gs a multiple of 8 dividing K). The int32 sums of each group are exact and corrected as above with the
 * group's column sums and zero points and the rows' group sums rt[m, g] = sum_{k in g} u[m, k] - gs za[m], then
 * converted and accumulated in float32 with the group's scale: y = sa[m] sum_g ws[g, n] (exact group sum) + b.
 * 3 rows x 64 columns per tile (int32 and float32 sums both stay in registers). With meta16 (groups of at most
 * 128), csum holds one 32-bit word per group and column, the column sum in its low 16 bits and the zero point
 * in its high 16 (zc NULL): |rt| <= 128 * 255 and za <= 255 fit 16 bits too, so one vpmaddwd of the word
 * against (za, rt) gives za csum + rt zc exactly in int32. Per 64 weights of a group at M = 1 that is 8 bytes
 * of metadata instead of 12 beside the 32 of nibbles, and one multiply instead of two 32-bit ones.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qbench_cpu.h"

const char *qb_w8a8_isa(void) {
#ifdef QB_VNNI
    return "avx512-vnni";
#else
    return "portable-c";
#endif
}

#define W8_NR 64
#define W8_MR 6
/* Rows of x quantized per block: every weight panel passes over a block's rows, so a weight that outgrows L2
 * is streamed from L3 once per block. 144 rows (not 48) took 4-6% off 1024 and 2048 x 4096 x 4096 and
 * changed the smaller layers by under 1.5% (measured side by side, two cores, L2 1 MiB per core). */
#define W8_MB 144
#define W8_MAX_K 32768
#define W8_PANEL_ROWS_BYTES (1 << 20)

typedef struct {
    const float *x;
    const int8_t *wp;
    const int32_t *csum, *zc;  /* zc NULL: symmetric weights */
    const float *ws, *bias;    /* bias may be NULL */
    float *y;
    int32_t *acc_out;          /* not NULL: write the exact corrected int32 sums instead of y */
    int64_t M, N, K, kp, npan;
    qz_t q;                    /* bits, signedness, symmetry */
    float scale0;              /* per tensor (static or dynamic): the scale and zero point (uint8 domain) */
    int32_t zp0;
    int per_row, by_panels;
    int w4;                    /* nibble codes (qb_w4a8_gemm): kp a multiple of 8, a panel kp * 32 bytes */
    int64_t G, gs;             /* weight groups per row and their width (G = 1, gs = K: per tensor / channel);
                                  G > 1: csum, zc and ws are (G, npan * 64), rt is (rows, G) */
    int meta16;                /* G > 1, gs <= 128: csum words are csum | zc << 16, zc NULL (see the top) */
    _Atomic int *oom;          /* set by a task that could not allocate its row block */
    _Atomic int64_t *next_row; /* by rows: the first row of the next block not yet taken */
    int64_t threads;
} w8a8_t;

/* rows [r0, r0 + rows) of x -> buf (row stride kp, zeros past K), with each row's scale, zero point and rt */
static void w8a8_quant_rows(const w8a8_t *g, int64_t r0, int64_t rows, uint8_t *buf, float *sa, int32_t *za,
                            int32_t *rt) {
    const float *x = g->x + r0 * g->K;
    if (g->per_row) {
        quant_rows_dynamic(&g->q, x, rows, g->K, buf, g->kp, sa, za);
    } else {
        int qmin_u, qmax_u;
        code_range(&g->q, &qmin_u, &qmax_u);
        const float inv = 1.0f / g->scale0;
        for (int64_t i = 0; i < rows; i++) {
            quant_span(x + i * g->K, buf + i * g->kp, g->K, g->scale0, inv, g->zp0, qmin_u, qmax_u);
            sa[i] = g->scale0;
            za[i] = g->zp0;
        }
    }
    for (int64_t i = 0; i < rows; i++) {
        uint8_t *br = buf + i * g->kp;
        memset(br + g->K, 0, (size_t)(g->kp - g->K));
        for (int64_t q = 0; q < g->G; q++)
            rt[i * g->G + q] = g->zc || g->meta16 ? (int32_t)(uint32_t)((uint64_t)sum_u8(br + q * g->gs, g->gs)
                                                             - (uint64_t)(g->gs * (int64_t)za[i])) : 0;
    }
}

#ifdef QB_VNNI
/* acc[r][j] += the nibble panel's k = 8 t0 .. 8 t1 - 1 (columns 16 j .. 16 j + 15) times row r of a (stride kp),
 * for r < MR: per 8 k, one AND gives the bytes of k = 8 t .. 8 t + 3 (low nibbles), a 16-bit shift and an AND
 * those of 8 t + 4 .. 8 t + 7, each against 4 activation bytes in their natural order. Shared by the per-channel
 * tile (all of K) and the grouped one (one group at a time). */
static inline __attribute__((always_inline)) void nibble_dots(__m512i (*acc)[4], const int8_t *bp, const uint8_t *a,
                                                             int64_t kp, int64_t t0, int64_t t1, const int MR) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int64_t t = t0; t < t1; t++) {
        __m512i b[4];
#pragma GCC unroll 2
        for (int half = 0; half < 2; half++) {
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const __m512i v = _mm512_load_si512(bp + 256 * t + 64 * j);
                b[j] = _mm512_and_si512(half ? _mm512_srli_epi16(v, 4) : v, low);
            }
#pragma GCC unroll 8
            for (int r = 0; r < MR; r++) {
                const __m512i av = _mm512_set1_epi32(*(const int32_t *)(a + r * kp + 8 * t + 4 * half));
#pragma GCC unroll 4
                for (int j = 0; j < 4; j++) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], av, b[j]);
            }
        }
    }
}

/* rows a[0:MR] (stride kp) x panel p -> y rows m0.. (or acc_out), columns 64 p .. 64 p + 63 (masked at N) */
static inline __attribute__((always_inline)) void w8a8_tile(const w8a8_t *g, const uint8_t *a, int64_t m0,
                                                            int64_t p, const float *sa, const int32_t *za,
                                                            const int32_t *rt, const int MR, const int W4) {
    const int8_t *bp = g->wp + p * (W4 ? g->kp / 2 : g->kp) * W8_NR;
    const int64_t kp = g->kp, K4 = kp / 4;
    __m512i acc[W8_MR][4];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();
    if (W4) nibble_dots(acc, bp, a, kp, 0, kp / 8, MR);
    else for (int64_t t = 0; t < K4; t++) {
        const __m512i b0 = _mm512_load_si512(bp + 256 * t), b1 = _mm512_load_si512(bp + 256 * t + 64);
        const __m512i b2 = _mm512_load_si512(bp + 256 * t + 128), b3 = _mm512_load_si512(bp + 256 * t + 192);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            const __m512i av = _mm512_set1_epi32(*(const int32_t *)(a + r * kp + 4 * t));
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], av, b1);
            acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], av, b2);
            acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], av, b3);
        }
    }
    /* the sums leave the registers once; the epilogue reads them back (keeps the loop above spill-free) */
    int32_t sums[W8_MR][W8_NR] __attribute__((aligned(64)));
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) _mm512_store_si512(sums[r] + 16 * j, acc[r][j]);
    const int64_t n0 = p * W8_NR;
    for (int j = 0; j < 4; j++) {
        const int64_t n = n0 + 16 * j, left = g->N - n;
        if (left <= 0) break;
        const __mmask16 mk = tail16(left);
        const __m512i cs = _mm512_loadu_si512(g->csum + n);
        const __m512i zc = g->zc ? _mm512_loadu_si512(g->zc + n) : _mm512_setzero_si512();
        const __m512 ws = _mm512_loadu_ps(g->ws + n);
        const __m512 b = g->bias ? _mm512_loadu_ps(g->bias + n) : _mm512_setzero_ps();
        for (int r = 0; r < MR; r++) {
            __m512i v = _mm512_sub_epi32(_mm512_load_si512(sums[r] + 16 * j), _mm512_mullo_epi32(_mm512_set1_epi32(za[r]), cs));
            if (g->zc) v = _mm512_sub_epi32(v, _mm512_mullo_epi32(_mm512_set1_epi32(rt[r]), zc));
            if (g->acc_out) {
                _mm512_mask_storeu_epi32(g->acc_out + (m0 + r) * g->N + n, mk, v);
            } else {
                const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), _mm512_mul_ps(_mm512_set1_ps(sa[r]), ws), b);
                _mm512_mask_storeu_ps(g->y + (m0 + r) * g->N + n, mk, f);
            }
        }
    }
}

#define W4G_MR 3
/* grouped nibble weights: rows a[0:MR] x panel p, per group g: exact int32 sums, corrected, then accumulated in
 * float32 with the group's scales; the one store of y at the end */
static inline __attribute__((always_inline)) void w4g_tile(const w8a8_t *g, const uint8_t *a, int64_t m0, int64_t p,
                                                           const float *sa, const int32_t *za, const int32_t *rt,
                                                           const int MR) {
    const int8_t *bp = g->wp + p * (g->kp / 2) * W8_NR;
    const int64_t kp = g->kp, np = g->npan * W8_NR, n0 = p * W8_NR;
    __m512 facc[W4G_MR][4];
#pragma GCC unroll 3
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) facc[r][j] = _mm512_setzero_ps();
    for (int64_t q = 0; q < g->G; q++) {
        __m512i acc[W4G_MR][4];
#pragma GCC unroll 3
        for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();
        nibble_dots(acc, bp, a, kp, q * g->gs / 8, (q + 1) * g->gs / 8, MR);
        if (g->meta16) {
            __m512i zr[W4G_MR];                            /* (za, rt) as the two 16-bit halves of each word */
#pragma GCC unroll 3
            for (int r = 0; r < MR; r++)
                zr[r] = _mm512_set1_epi32((int32_t)(((uint32_t)rt[r * g->G + q] << 16) | ((uint32_t)za[r] & 0xFFFFu)));
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                const int64_t at = q * np + n0 + 16 * j;
                const __m512i meta = _mm512_loadu_si512(g->csum + at);
                const __m512 ws = _mm512_loadu_ps(g->ws + at);
#pragma GCC unroll 3
                for (int r = 0; r < MR; r++) {
                    const __m512i v = _mm512_sub_epi32(acc[r][j], _mm512_madd_epi16(meta, zr[r]));
                    facc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), ws, facc[r][j]);
                }
            }
            continue;
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const int64_t at = q * np + n0 + 16 * j;
            const __m512i cs = _mm512_loadu_si512(g->csum + at);
            const __m512i zc = g->zc ? _mm512_loadu_si512(g->zc + at) : _mm512_setzero_si512();
            const __m512 ws = _mm512_loadu_ps(g->ws + at);
#pragma GCC unroll 3
            for (int r = 0; r < MR; r++) {
                __m512i v = _mm512_sub_epi32(acc[r][j], _mm512_mullo_epi32(_mm512_set1_epi32(za[r]), cs));
                if (g->zc) v = _mm512_sub_epi32(v, _mm512_mullo_epi32(_mm512_set1_epi32(rt[r * g->G + q]), zc));
                facc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), ws, facc[r][j]);
            }
        }
    }
    for (int j = 0; j < 4; j++) {
        const int64_t n = n0 + 16 * j, left = g->N - n;
        if (left <= 0) break;
        const __mmask16 mk = tail16(left);
        const __m512 b = g->bias ? _mm512_loadu_ps(g->bias + n) : _mm512_setzero_ps();
        for (int r = 0; r < MR; r++)
            _mm512_mask_storeu_ps(g->y + (m0 + r) * g->N + n, mk, _mm512_fmadd_ps(facc[r][j], _mm512_set1_ps(sa[r]), b));
    }
}
#else
/* the code of column j of a panel at k: int8 codes, or (W4) the nibble of the layout at the top */
static inline int32_t panel_code(const int8_t *bp, int64_t j, int64_t k, const int W4) {
    if (!W4) return bp[(k / 4) * 256 + 4 * j + k % 4];
    const uint8_t byte = (uint8_t)bp[(k / 8) * 256 + 4 * j + k % 4];
    return k % 8 < 4 ? byte & 15 : byte >> 4;
}

static void w8a8_tile(const w8a8_t *g, const uint8_t *a, int64_t m0, int64_t p, const float *sa, const int32_t *za,
                      const int32_t *rt, const int MR, const int W4) {
    const int8_t *bp = g->wp + p * (W4 ? g->kp / 2 : g->kp) * W8_NR;
    for (int r = 0; r < MR; r++)
        for (int64_t j = 0; j < W8_NR && p * W8_NR + j < g->N; j++) {
            const int64_t n = p * W8_NR + j;
            uint32_t acc = 0;
            for (int64_t k = 0; k < g->K; k++)
                acc += (uint32_t)((int32_t)a[r * g->kp + k] * panel_code(bp, j, k, W4));
            acc -= (uint32_t)za[r] * (uint32_t)g->csum[n];
            if (g->zc) acc -= (uint32_t)rt[r] * (uint32_t)g->zc[n];
            const int32_t v = (int32_t)acc;
            if (g->acc_out) g->acc_out[(m0 + r) * g->N + n] = v;
            else g->y[(m0 + r) * g->N + n] = fmaf((float)v, sa[r] * g->ws[n], g->bias ? g->bias[n] : 0.0f);
        }
}

#define W4G_MR 3
static void w4g_tile(const w8a8_t *g, const uint8_t *a, int64_t m0, int64_t p, const float *sa, const int32_t *za,
                     const int32_t *rt, const int MR) {
    const int8_t *bp = g->wp + p * (g->kp / 2) * W8_NR;
    const int64_t np = g->npan * W8_NR;
    for (int r = 0; r < MR; r++)
        for (int64_t j = 0; j < W8_NR && p * W8_NR + j < g->N; j++) {
            const int64_t n = p * W8_NR + j;
            float y = 0.0f;
            for (int64_t q = 0; q < g->G; q++) {
                uint32_t acc = 0;
                for (int64_t k = q * g->gs; k < (q + 1) * g->gs; k++)
                    acc += (uint32_t)((int32_t)a[r * g->kp + k] * panel_code(bp, j, k, 1));
                const int32_t word = g->csum[q * np + n];
                const int32_t cs = g->meta16 ? (int32_t)(int16_t)(word & 0xFFFF) : word;
                const int32_t zc = g->meta16 ? (int32_t)(int16_t)((uint32_t)word >> 16) : g->zc ? g->zc[q * np + n] : 0;
                acc -= (uint32_t)za[r] * (uint32_t)cs;
                acc -= (uint32_t)rt[r * g->G + q] * (uint32_t)zc;
                y = fmaf((float)(int32_t)acc, g->ws[q * np + n], y);
            }
            g->y[(m0 + r) * g->N + n] = fmaf(y, sa[r], g->bias ? g->bias[n] : 0.0f);
        }
}
#endif

/* rows a[0:rows] starting at y row m0, panels [p0, p1) */
static void w8a8_block(const w8a8_t *g, const uint8_t *a, int64_t m0, int64_t rows, int64_t p0, int64_t p1,
                       const float *sa, const int32_t *za, const int32_t *rt) {
    const int64_t pbytes = (g->w4 ? g->kp / 2 : g->kp) * W8_NR, tiles = (rows + W8_MR - 1) / W8_MR;
    const int64_t share = (pbytes / 64 + tiles - 1) / tiles * 64;     /* of the next panel, per tile */
    for (int64_t p = p0; p < p1; p++)
        for (int64_t i = 0; i < rows; i += W8_MR) {
#ifdef QB_AVX512
            /* a panel that comes from memory stalls its first tile: each tile asks for its share of the
             * next panel into L2 (measured: 128 x 4096 x 4096 with weights rotated past the cache) */
            if (p + 1 < p1) {
                const char *next = (const char *)(g->wp + (p + 1) * pbytes);
                const int64_t lo = i / W8_MR * share, hi = lo + share < pbytes ? lo + share : pbytes;
                for (int64_t off = lo; off < hi; off += 64) _mm_prefetch(next + off, _MM_HINT_T1);
            }
#endif
            const uint8_t *ai = a + i * g->kp;
            const float *s = sa + i;
            const int32_t *z = za + i, *t = rt + i * g->G;
            const int mr = rows - i >= W8_MR ? W8_MR : (int)(rows - i);
            if (g->G > 1) {                                /* grouped: tiles of 3 rows */
                for (int h = 0; h < mr; h += W4G_MR) {
                    const int hr = mr - h >= W4G_MR ? W4G_MR : mr - h;
                    const uint8_t *ah = ai + h * g->kp;
                    if (hr == 3) w4g_tile(g, ah, m0 + i + h, p, s + h, z + h, t + h * g->G, 3);
                    else if (hr == 2) w4g_tile(g, ah, m0 + i + h, p, s + h, z + h, t + h * g->G, 2);
                    else w4g_tile(g, ah, m0 + i + h, p, s + h, z + h, t + h * g->G, 1);
                }
            } else if (g->w4) switch (mr) {
                case 6: w8a8_tile(g, ai, m0 + i, p, s, z, t, 6, 1); break;
                case 5: w8a8_tile(g, ai, m0 + i, p, s, z, t, 5, 1); break;
                case 4: w8a8_tile(g, ai, m0 + i, p, s, z, t, 4, 1); break;
                case 3: w8a8_tile(g, ai, m0 + i, p, s, z, t, 3, 1); break;
                case 2: w8a8_tile(g, ai, m0 + i, p, s, z, t, 2, 1); break;
                default: w8a8_tile(g, ai, m0 + i, p, s, z, t, 1, 1); break;
            } else switch (mr) {
                case 6: w8a8_tile(g, ai, m0 + i, p, s, z, t, 6, 0); break;
                case 5: w8a8_tile(g, ai, m0 + i, p, s, z, t, 5, 0); break;
                case 4: w8a8_tile(g, ai, m0 + i, p, s, z, t, 4, 0); break;
                case 3: w8a8_tile(g, ai, m0 + i, p, s, z, t, 3, 0); break;
                case 2: w8a8_tile(g, ai, m0 + i, p, s, z, t, 2, 0); break;
                default: w8a8_tile(g, ai, m0 + i, p, s, z, t, 1, 0); break;
            }
        }
}

/* The first row of the next block of rows nobody has taken, and its size in *rows (M when none is left).
 * Guided: W8_MB rows while many are left, then a share of what is left (a multiple of W8_MR), so that the
 * threads finish together. */
static int64_t w8a8_claim_rows(const w8a8_t *g, int64_t *rows) {
    int64_t m = atomic_load(g->next_row);
    do {
        if (m >= g->M) return g->M;
        const int64_t share = (g->M - m + 2 * g->threads - 1) / (2 * g->threads);
        int64_t r = (share + W8_MR - 1) / W8_MR * W8_MR;
        r = r < W8_MB ? r : W8_MB;
        *rows = r < g->M - m ? r : g->M - m;
    } while (!atomic_compare_exchange_weak(g->next_row, &m, m + *rows));
    return m;
}

/* one task: all rows over its panels [lo, hi) (by panels), or (by rows) blocks of rows taken in turn from a
 * shared counter until none is left, so a thread that the machine slows down takes fewer blocks instead of
 * holding up the call, as a fixed share of the rows per thread did on a shared machine (measured side by
 * side with another process busy on the cores: 3-7% faster at 1024 x 256 x 256 and 1024 x 384 x 384; on a
 * quiet machine within 3% either way) */
static void w8a8_task(void *ctx, int64_t lo, int64_t hi) {
    const w8a8_t *g = (const w8a8_t *)ctx;
    const int64_t rows_max = g->by_panels ? g->M : W8_MB;
    uint8_t *buf = aligned_alloc(64, (size_t)(rows_max * g->kp + 64));
    float *sa = malloc(sizeof(float) * (size_t)rows_max);
    int32_t *za = malloc(sizeof(int32_t) * (size_t)rows_max);
    int32_t *rt = malloc(sizeof(int32_t) * (size_t)(rows_max * g->G));
    if (buf && sa && za && rt) {
        if (g->by_panels) {
            w8a8_quant_rows(g, 0, g->M, buf, sa, za, rt);
            w8a8_block(g, buf, 0, g->M, lo, hi, sa, za, rt);
        } else {
            int64_t m, rows;
            while ((m = w8a8_claim_rows(g, &rows)) < g->M) {
                w8a8_quant_rows(g, m, rows, buf, sa, za, rt);
                w8a8_block(g, buf, m, rows, 0, g->npan, sa, za, rt);
            }
        }
    } else {
        atomic_store(g->oom, 1);
    }
    free(buf);
    free(sa);
    free(za);
    free(rt);
}

/* x (M, K) float32 -> y (M, N) float32 (or acc_out (M, N) int32 exact corrected sums).
 * per_row: dynamic per-row qparams; else have_qparams: scale0 / zp0 (uint8 domain) given (static), or
 * dynamic per tensor (one min/max pass first). Returns 0, or 1 for bad arguments, 2 when out of memory. */
static int w8a8_run(const float *x, const int8_t *wp, const int32_t *csum, const int32_t *zc, const float *ws,
                    const float *bias, float *y, int32_t *acc_out, int64_t M, int64_t N, int64_t K, int per_row,
                    int symmetric, int is_signed, int bits, int have_qparams, float scale0, int32_t zp0,
                    int threads, int w4, int64_t G, int meta16) {
    if (bits < 2 || bits > 8 || M < 0 || N < 1 || K < 1 || K > W8_MAX_K || !(y || acc_out)) return 1;
    if (G < 1 || K % G || (G > 1 && (!w4 || (K / G) % 8 || acc_out))) return 1;
    if (meta16 && (G < 2 || K / G > 128 || zc)) return 1;
    if (threads < 1) threads = 1;
    if (threads > 32) threads = 32;
    w8a8_t g = {x, wp, csum, zc, ws, bias, y, acc_out, M, N, K, w4 ? (K + 7) / 8 * 8 : (K + 3) / 4 * 4,
                (N + W8_NR - 1) / W8_NR, {0}, scale0, zp0, per_row && !have_qparams, 0, w4, G, K / G, 0, NULL};
    _Atomic int oom = 0;
    _Atomic int64_t next_row = 0;
    g.oom = &oom;
    g.next_row = &next_row;
    g.threads = threads;
    g.meta16 = meta16;
    g.q.symmetric = symmetric;
    g.q.is_signed = is_signed;
    g.q.bits = bits;
    if (M == 0) return 0;
    if (!per_row && !have_qparams) tensor_qparams(&g.q, x, M * K, threads, &g.scale0, &g.zp0);
    /* by panels when the rows are few, or when the weight outweighs the rows (N >= threads * M): each thread
     * then quantizes all rows (cheap next to its panels) and every weight byte is read once, instead of once
     * per row block and thread; capped so the rows' codes stay in L2 */
    g.by_panels = g.npan >= threads && (M < (int64_t)threads * 4 * W8_MR ||
                                        (N >= (int64_t)threads * M && M * g.kp <= W8_PANEL_ROWS_BYTES));
    if (g.by_panels) parallel_for(w8a8_task, &g, g.npan, threads, 1);
    else parallel_for(w8a8_task, &g, threads, threads, 1);    /* one task per thread, blocks shared */
    return atomic_load(&oom) ? 2 : 0;
}

int qb_w8a8_gemm(const float *x, const int8_t *wp, const int32_t *csum, const int32_t *zc, const float *ws,
                 const float *bias, float *y, int32_t *acc_out, int64_t M, int64_t N, int64_t K, int per_row,
                 int symmetric, int is_signed, int bits, int have_qparams, float scale0, int32_t zp0,
                 int threads) {
    return w8a8_run(x, wp, csum, zc, ws, bias, y, acc_out, M, N, K, per_row, symmetric, is_signed, bits,
                    have_qparams, scale0, zp0, threads, 0, 1, 0);
}

/* the same with wp holding nibble codes in the layout of the top (4-bit weights, unsigned codes c = q - qmin) */
int qb_w4a8_gemm(const float *x, const uint8_t *wp, const int32_t *csum, const int32_t *zc, const float *ws,
                 const float *bias, float *y, int32_t *acc_out, int64_t M, int64_t N, int64_t K, int per_row,
                 int symmetric, int is_signed, int bits, int have_qparams, float scale0, int32_t zp0,
                 int threads) {
    return w8a8_run(x, (const int8_t *)wp, csum, zc, ws, bias, y, acc_out, M, N, K, per_row, symmetric, is_signed,
                    bits, have_qparams, scale0, zp0, threads, 1, 1, 0);
}

/* grouped 4-bit weights (see the top): csum, zc (NULL when all are 0) and ws are (G, N padded to 64), group
 * width K / G a multiple of 8; meta16: csum holds csum | zc << 16 (groups of at most 128, zc NULL); no exact
 * int32 output (the groups' sums meet in float32) */
int qb_w4a8_group_gemm(const float *x, const uint8_t *wp, const int32_t *csum, const int32_t *zc, const float *ws,
                       const float *bias, float *y, int64_t M, int64_t N, int64_t K, int64_t G, int per_row,
                       int symmetric, int is_signed, int bits, int have_qparams, float scale0, int32_t zp0,
                       int threads, int meta16) {
    return w8a8_run(x, (const int8_t *)wp, csum, zc, ws, bias, y, NULL, M, N, K, per_row, symmetric, is_signed,
                    bits, have_qparams, scale0, zp0, threads, 1, G, meta16);
}
