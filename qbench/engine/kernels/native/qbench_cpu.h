/* qbench's own CPU kernels: one shared library, built from the .c files beside this header with the system C
 * compiler on first use and loaded with ctypes by qbench/engine/kernels/native/__init__.py, which declares the
 * entry points' C signatures (declare()), wraps them in checked Python functions and keys its build cache on
 * every .c and .h file here.
 *
 * Table of contents: one concern per file, and the entry points each file exports.
 *
 *   qbench_cpu.h    this map, the ISA switch (QB_AVX512), what the files share (the thread pool's interface,
 *                   the weight-only GEMMs' row blocking, the quantizer's internals that the fused GEMM runs)
 *                   and the prototypes of the entry points
 *   pool.c          thread pool: parallel_for, a persistent fork-join pool (or torch's OpenMP runtime)
 *                   qb_isa           the build's code path and threading runtime: "avx512, openmp", "avx512",
 *                                    "portable-c, openmp" or "portable-c"
 *   wo8_gemm.c      int8 weight-only GEMM
 *                   qb_wo8_gemm      (M, K) float32 x (N, K) int8 codes with per-group scales and offsets
 *                                    -> (M, N) float32, fp32 accumulation
 *                   qb_wo8_dequant   (N, K) float32 weights (code + zc) * s, for the compute-bound (large M) case
 *   wo4_gemm.c      int4 weight-only GEMM
 *                   qb_wo4_gemm      (M, K) float32 x (N, K) 4-bit codes, two per byte in a blocked layout,
 *                                    with per-group scales and offsets -> (M, N) float32, fp32 accumulation
 *                   qb_wo4_dequant   (N, K) float32 weights from the blocked layout
 *   quant_u8.c      activation quantizer
 *                   qb_quant_u8      qbench's affine quantization of (M, K) float32 (per tensor or per row,
 *                                    dynamic or given qparams) -> uint8 codes (signed codes + 128)
 *                   qb_center_zp     one shared zero point for per-row ones: z0 = round(mean), dz = zp - z0
 *   row_epilogue.c  per-row epilogue
 *                   qb_row_epilogue  y[m, n] = rs[m] * (y[m, n] - dz[m] * c[n]) + b[n], in place, one pass
 *   w8a8_gemm.c     fused W8A8 GEMM
 *                   qb_w8a8_gemm     (M, K) float32 -> (M, N) float32 in one call: rows quantized as
 *                                    qb_quant_u8 does, uint8 x int8 -> int32 dot products against packed
 *                                    weight codes, zero-point corrections, rescale and bias in registers
 *                   qb_w4a8_gemm     the same on 4-bit weight codes held as nibbles (half the bytes),
 *                                    unpacked in registers
 *                   qb_w4a8_group_gemm  the nibble GEMM with a scale and zero point per group of k: exact
 *                                    int32 sums per group, rescaled and summed in float32 (groups of at
 *                                    most 128: column sums and zero points as 16-bit halves of one word)
 *                   qb_w8a8_isa      the code path of the integer dot products (the fused GEMMs' and
 *                                    qb_attention's): "avx512-vnni" or "portable-c"
 *   attention.c     quantized attention
 *                   qb_attention     Q K^T and P V of every (batch, head) slice on integer codes in one call:
 *                                    Q, K per row and V per channel quantized as qb_quant_u8 does, uint8 x
 *                                    int8 -> int32 dot products, mask and softmax in float32, P quantized
 *                                    per row, the output rescaled
 *   decoder.c       the float work around a decoder layer's linears (engine/graph.py's decoder forward)
 *                   qb_rmsnorm       per row: optional residual add, then RMSNorm times its weight
 *                   qb_silu_mul      per row: silu(gate) * up, gate and up with their own row strides
 *                   qb_prefill_rotary  a prefill's rotary embedding: q into SDPA's layout, k and v into the cache
 *                   qb_decode_attention  one decode step's attention: rotary embedding of q and k, k and v
 *                                    written to the KV cache, softmax(q K^T) V per head, grouped queries
 *
 * Each file's opening comment gives its formulas, layouts and the reasons for its loop structure.
 *
 * The AVX-512 paths need AVX512F and AVX512BW (the fused GEMM's, AVX512VNNI too); without them the portable C
 * loops run (same results up to float summation order in wo8_gemm and wo4_gemm; identical weights from the
 * dequantizers, codes from quant_u8, and outputs from the epilogue and the fused GEMM).
 */
#ifndef QBENCH_CPU_H
#define QBENCH_CPU_H

#include <math.h>
#include <stdint.h>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define QB_AVX512 1
#endif
#if defined(QB_AVX512) && defined(__AVX512VNNI__)
#define QB_VNNI 1              /* the integer dot products (vpdpbusd) of the fused GEMMs and of qb_attention */
#endif

/* For functions one file defines for another: hidden, so the library exports only the qb_ entry points and
 * calls between its files bind directly, never to a same-named symbol of another library in the process. */
#define QB_INTERNAL __attribute__((visibility("hidden")))

/* ------------------------------------------------------------------ thread pool (pool.c) */

typedef void (*task_fn)(void *ctx, int64_t lo, int64_t hi);

/* fn over [0, n) in up to `threads` contiguous spans aligned to `align`, the caller running the first;
 * returns when every span has run */
QB_INTERNAL void parallel_for(task_fn fn, void *ctx, int64_t n, int threads, int64_t align);

/* ------------------------------------------------------------------ weight-only GEMMs (wo8_gemm.c, wo4_gemm.c) */

/* rows [n0, n1) of the weight against rows m0 .. m0 + mb - 1 of x */
typedef void (*wo_rows_fn)(const void *a, int64_t n0, int64_t n1, int64_t m0, int mb);

/* Rows [n_lo, n_hi) in blocks that stay in L2 (row_bytes each) while every block of at most mb_max rows
 * of x passes over them: each weight byte comes from memory once, and from L2 for the later passes. */
static inline void wo_row_blocks(const void *a, wo_rows_fn fn, int64_t row_bytes, int64_t M, int mb_max,
                                 int64_t n_lo, int64_t n_hi) {
    int64_t rows = (256 * 1024) / (row_bytes > 0 ? row_bytes : 1);
    if (rows < 1) rows = 1;
    for (int64_t nb = n_lo; nb < n_hi; nb += rows) {
        const int64_t ne = nb + rows < n_hi ? nb + rows : n_hi;
        for (int64_t m0 = 0; m0 < M; m0 += mb_max) fn(a, nb, ne, m0, (int)(M - m0 < mb_max ? M - m0 : mb_max));
    }
}

#ifdef QB_AVX512
/* the sum of all lanes of UU accumulators (UU a constant after inlining) */
static inline __attribute__((always_inline)) float lane_sum(const __m512 *acc, const int UU) {
    __m512 t = acc[0];
#pragma GCC unroll 8
    for (int u = 1; u < UU; u++) t = _mm512_add_ps(t, acc[u]);
    return _mm512_reduce_add_ps(t);
}

/* the lanes of a 16-float vector that hold the last `left` values of a row (all 16 when left >= 16) */
static inline __mmask16 tail16(int64_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}
#endif

/* the sum of n uint8 codes (what the integer products' zero-point corrections need) */
static inline int64_t sum_u8(const uint8_t *p, int64_t n) {
    int64_t s = 0, i = 0;
#ifdef QB_AVX512
    __m512i acc = _mm512_setzero_si512();
    for (; i + 64 <= n; i += 64) acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_loadu_si512(p + i),
                                                                              _mm512_setzero_si512()));
    s = _mm512_reduce_add_epi64(acc);
#endif
    for (; i < n; i++) s += p[i];
    return s;
}
/* ------------------------------------------------------------------ softmax (attention.c, decoder.c) */

#ifdef QB_AVX512
/* e^x for float32 lanes: x = n ln2 + r with |r| <= ln2 / 2, e^r by a degree-6 polynomial, times 2^n (scalef);
 * about 1 ulp; below -87.3 (e^x under float's normal range) 0, as the softmax wants for masked keys */
static inline __m512 exp_ps(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.33654f);
    const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.72283f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);          /* ln2 in two parts */
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);                               /* Cephes expf coefficients */
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_scalef_ps((__mmask16)~under, y, n);
}
#endif

/* row in place: softmax over n values (max, e^(x - max), times 1 / sum, as torch's CPU softmax) */
static inline void softmax_row(float *x, int64_t n) {
    int64_t j = 0;
    float mx = -INFINITY, sum = 0.0f;
#ifdef QB_AVX512
    __m512 vm = _mm512_set1_ps(-INFINITY), vs = _mm512_setzero_ps();
    for (; j + 16 <= n; j += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + j));
    mx = _mm512_reduce_max_ps(vm);
#endif
    for (; j < n; j++) mx = x[j] > mx ? x[j] : mx;
    j = 0;
#ifdef QB_AVX512
    const __m512 m = _mm512_set1_ps(mx);
    for (; j + 16 <= n; j += 16) {
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), m));
        _mm512_storeu_ps(x + j, e);
        vs = _mm512_add_ps(vs, e);
    }
    if (j < n) {
        const __mmask16 mk = (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, x + j), m));
        _mm512_mask_storeu_ps(x + j, mk, e);
        vs = _mm512_add_ps(vs, _mm512_maskz_mov_ps(mk, e));
        j = n;
    }
    sum = _mm512_reduce_add_ps(vs);
#endif
    for (; j < n; j++) {
        x[j] = expf(x[j] - mx);
        sum += x[j];
    }
    const float inv = 1.0f / sum;
    for (j = 0; j < n; j++) x[j] *= inv;
}

/* ------------------------------------------------------------------ activation quantizer (quant_u8.c)
 * The fused W8A8 GEMM quantizes its row blocks with these, so its codes are qb_quant_u8's. */

typedef struct {
    const float *x;
    uint8_t *out;
    float *scale;         /* (rows,) per row or (1,) */
    int32_t *zp;          /* same shape, shifted into the uint8 domain */
    float *mins, *maxs;   /* per-tensor: partial min/max of each span */
    int64_t span;         /* per-tensor: elements per span */
    int64_t M, K;
    int per_row, symmetric, is_signed, bits, have_qparams;
} qz_t;

/* the spec's code range shifted into the uint8 domain (signed codes + 128) */
QB_INTERNAL void code_range(const qz_t *a, int *qmin_u, int *qmax_u);

/* codes of x[0:n] with one scale s (inv = 1 / s) and zero point zp_u (uint8 domain), clamped to [qmin_u, qmax_u] */
QB_INTERNAL void quant_span(const float *x, uint8_t *out, int64_t n, float s, float inv, int32_t zp_u, int qmin_u,
                            int qmax_u);

/* rows x[0 : rows] (row stride K) -> codes out (row stride ostride), each row with its own dynamic scale and
 * zero point (uint8 domain), written to scale[i] and zp[i] */
QB_INTERNAL void quant_rows_dynamic(const qz_t *a, const float *x, int64_t rows, int64_t K, uint8_t *out,
                                    int64_t ostride, float *scale, int32_t *zp);

/* dynamic per-tensor scale and zero point (uint8 domain) of x[0:n] (n > 0), the min / max over `threads` spans */
QB_INTERNAL void tensor_qparams(const qz_t *spec, const float *x, int64_t n, int threads, float *scale, int32_t *zp);

/* ------------------------------------------------------------------ entry points
 * Called through ctypes; native/__init__.py declare() repeats these signatures. The int ones return 0, or 1 for
 * bad arguments, 2 when out of memory. */

const char *qb_isa(void);
int qb_wo8_gemm(const int8_t *w, const float *x, const float *xg, const float *s, const float *zc, const float *bias,
                float *y, int64_t M, int64_t N, int64_t K, int64_t G, int threads);
int qb_wo8_dequant(const int8_t *w, const float *s, const float *zc, float *out, int64_t N, int64_t K, int64_t G,
                   int threads);
int qb_wo4_gemm(const uint8_t *w, const float *x, const float *s, const float *zc, const float *bias, float *y,
                int64_t M, int64_t N, int64_t K, int64_t G, int threads);
int qb_wo4_dequant(const uint8_t *w, const float *s, const float *zc, float *out, int64_t N, int64_t K, int64_t G,
                   int threads);
int qb_quant_u8(const float *x, uint8_t *out, float *scale, int32_t *zp, int64_t M, int64_t K, int per_row,
                int symmetric, int is_signed, int bits, int have_qparams, int threads);
int32_t qb_center_zp(const int32_t *zp, int64_t M, float *dz);
int qb_row_epilogue(float *y, const float *rs, const float *dz, const float *c, const float *bias, int64_t M,
                    int64_t N, int threads);
const char *qb_w8a8_isa(void);
int qb_w8a8_gemm(const float *x, const int8_t *wp, const int32_t *csum, const int32_t *zc, const float *ws,
                 const float *bias, float *y, int32_t *acc_out, int64_t M, int64_t N, int64_t K, int per_row,
                 int symmetric, int is_signed, int bits, int have_qparams, float scale0, int32_t zp0,
                 int threads);
int qb_w4a8_gemm(const float *x, const uint8_t *wp, const int32_t *csum, const int32_t *zc, const float *ws,
                 const float *bias, float *y, int32_t *acc_out, int64_t M, int64_t N, int64_t K, int per_row,
                 int symmetric, int is_signed, int bits, int have_qparams, float scale0, int32_t zp0,
                 int threads);
int qb_w4a8_group_gemm(const float *x, const uint8_t *wp, const int32_t *csum, const int32_t *zc, const float *ws,
                       const float *bias, float *y, int64_t M, int64_t N, int64_t K, int64_t G, int per_row,
                       int symmetric, int is_signed, int bits, int have_qparams, float scale0, int32_t zp0,
                       int threads, int meta16);

int qb_attention(const float *q, const float *k, const float *v, const float *mask, float *out, int64_t G, int64_t H,
                 int64_t S, int64_t T, int64_t D, int64_t mb, int64_t mh, int64_t ms, float scaling, int symmetric,
                 int is_signed, int bits, int threads);
int qb_rmsnorm(const float *x, const float *res, const float *w, float *xo, float *h, int64_t M, int64_t D, float eps,
               int threads);
int qb_decode_attention(const float *q, const float *k, const float *v, float *kc, float *vc, const float *cos,
                        const float *sin, float *out, int64_t B, int64_t H, int64_t KV, int64_t D, int64_t Tmax,
                        int64_t p, float scale, int64_t qs, int64_t kvs, int threads);
int qb_silu_mul(const float *gate, const float *up, float *out, int64_t M, int64_t N, int64_t gate_stride,
                int64_t up_stride, int threads);
int qb_prefill_rotary(const float *q, const float *k, const float *v, const float *cos, const float *sin, float *qo,
                      float *kc, float *vc, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t D, int64_t Tmax,
                      int64_t t0, int64_t qs, int64_t kvs, int threads);
#endif
