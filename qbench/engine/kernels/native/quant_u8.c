/* Activation quantizer: qb_quant_u8 and qb_center_zp, and the internals the fused W8A8 GEMM shares
 * (qbench_cpu.h). Part of qbench's native library; qbench_cpu.h maps its files.
 *
 * qb_quant_u8  qbench's affine activation quantization (primitives.choose_qparams + quantize), per tensor or
 *              per row, dynamic or with given qparams, writing codes shifted into uint8 (signed codes + 128).
 *              Same float32 operations in the same order as the torch code: x / s (IEEE division), round half
 *              to even, + zero point, clamp.
 * qb_center_zp  one shared zero point z0 for per-row zero points, and each row's difference from it.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "qbench_cpu.h"

/* the code range of the spec in its own domain: [-2^(b-1), 2^(b-1) - 1] signed, [0, 2^b - 1] unsigned */
static void code_bounds(const qz_t *a, int *qmin, int *qmax) {
    *qmin = a->is_signed ? -(1 << (a->bits - 1)) : 0;
    *qmax = a->is_signed ? (1 << (a->bits - 1)) - 1 : (1 << a->bits) - 1;
}

static void qparams(const qz_t *a, float mn, float mx, float *scale, int32_t *zp) {
    int qmin, qmax;
    code_bounds(a, &qmin, &qmax);
    const float lo = mn < 0.0f ? mn : 0.0f, hi = mx > 0.0f ? mx : 0.0f;
    float s;
    int32_t z;
    if (a->symmetric) {
        const float amax = -lo > hi ? -lo : hi;
        const int zv = a->is_signed ? 0 : 1 << (a->bits - 1);
        s = amax / (float)(qmax - zv);
        z = zv;
    } else {
        s = (hi - lo) / (float)(qmax - qmin);
        const float safe = s > 0.0f ? s : 1.0f;
        float zf = nearbyintf((float)qmin - lo / safe);
        zf = zf < (float)qmin ? (float)qmin : zf > (float)qmax ? (float)qmax : zf;
        z = (int32_t)zf;
    }
    *scale = s > 0.0f ? s : 1.0f;
    *zp = z + (a->is_signed ? 128 : 0);
}

static void minmax(const float *x, int64_t n, float *mn, float *mx) {
    float lo = INFINITY, hi = -INFINITY;
    int64_t i = 0;
#ifdef QB_AVX512
    __m512 vlo = _mm512_set1_ps(INFINITY), vhi = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) {
        const __m512 v = _mm512_loadu_ps(x + i);
        vlo = _mm512_min_ps(vlo, v);
        vhi = _mm512_max_ps(vhi, v);
    }
    lo = _mm512_reduce_min_ps(vlo);
    hi = _mm512_reduce_max_ps(vhi);
#endif
    for (; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *mn = lo;
    *mx = hi;
}

/* codes of x[0:n] with one (scale, zp-in-uint8-domain), inv = 1 / s (float32, correctly rounded); the clamp
 * is applied to the shifted codes.
 * round(x / s) is what the codes need, and division is slow (vdivps: 10 cycles per 16 lanes here), so
 * t = x * inv is used: t and the float32 quotient x / s differ by at most 3 * 2^-24 |x / s|, under 2^-14
 * while |x / s| <= 256. Where t lies at least 2^-12 from every half-integer (vreduceps gives t - round(t)),
 * both round to the same integer; the few lanes nearer a tie are divided exactly. Larger |t| only occurs
 * below the code range (t is clamped above), where any rounding clamps to the lowest code. The codes are
 * therefore identical to the torch quantizer's.
 * Full uint8 range, 64 codes a step: the zero point is folded into the product, t = fma(x, inv, z), which
 * adds one rounding (under 2^-16 while |t| < 256) to the error of x * inv (under 2^-15 while |x / s| < 512,
 * which holds wherever t is in the code range): t stays within 2^-13 of the float32 quotient plus z, so the same 2^-12 test on
 * t decides, and z being an integer, round(t) = round(x / s) + z wherever it passes.
 * Otherwise (and at the end of a row) t is first clamped to [qmin_u - zp_u, qmax_u - zp_u]: integer bounds, so
 * rounding the clamped t gives the clamped code (rounding is monotone and keeps integers), no float -> int32
 * conversion can overflow, and no integer clamp is needed after adding the zero point. */
void quant_span(const float *x, uint8_t *out, int64_t n, float s, float inv, int32_t zp_u, int qmin_u,
                       int qmax_u) {
    int64_t i = 0;
    const float z = (float)zp_u;
    const int fast = isnormal(s) && isnormal(inv);
#ifdef QB_AVX512
#define QB_RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
    const __m512 vs = _mm512_set1_ps(s), vinv = _mm512_set1_ps(inv);
    const __m512 tlo = _mm512_set1_ps((float)(qmin_u - zp_u)), thi = _mm512_set1_ps((float)(qmax_u - zp_u));
    const __m512 near_half = _mm512_set1_ps(0.5f - 1.0f / 4096);   /* |t - round(t)| from here: divide */
    const __m512i vz = _mm512_set1_epi32(zp_u);
    if (fast && qmin_u == 0 && qmax_u == 255) {
        /* t = x * inv + z: the saturating packs (int32 -> int16 -> uint8) clamp at 0, so t needs no lower clamp
         * (far below, or NaN, cvt gives INT_MIN, which saturates to 0 as the clamp would; vminps returns its
         * second operand for a NaN, so t comes second); the packs interleave 128-bit lanes, one permutation
         * restores the order. One test of the four lanes' near-tie masks per step. */
        const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        const __m512 vzf = _mm512_set1_ps(z), top = _mm512_set1_ps(255.0f);
        for (; i + 64 <= n; i += 64) {
            __m512i r[4];
            __mmask16 odd[4];
            for (int v = 0; v < 4; v++) {
                const __m512 t = _mm512_min_ps(top, _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16 * v), vinv, vzf));
                r[v] = _mm512_cvt_roundps_epi32(t, QB_RNE);
                odd[v] = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_reduce_ps(t, QB_RNE)), near_half, _CMP_GE_OQ);
            }
            if (_kortestz_mask16_u8(_kor_mask16(odd[0], odd[1]), _kor_mask16(odd[2], odd[3])) == 0) {
                for (int v = 0; v < 4; v++) {
                    if (!odd[v]) continue;
                    const __m512 e = _mm512_min_ps(thi, _mm512_div_ps(_mm512_loadu_ps(x + i + 16 * v), vs));
                    r[v] = _mm512_mask_mov_epi32(r[v], odd[v], _mm512_add_epi32(_mm512_cvt_roundps_epi32(e, QB_RNE), vz));
                }
            }
            const __m512i b = _mm512_packus_epi16(_mm512_packs_epi32(r[0], r[1]), _mm512_packs_epi32(r[2], r[3]));
            _mm512_storeu_si512(out + i, _mm512_permutexvar_epi32(order, b));
        }
    }
    for (; i < n; i += 16) {
        const int64_t left = n - i;
        const __mmask16 mk = tail16(left);
        const __m512 xv = _mm512_maskz_loadu_ps(mk, x + i);
        __m512i r;
        if (fast) {
            const __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(xv, vinv), tlo), thi);
            r = _mm512_cvt_roundps_epi32(t, QB_RNE);
            const __mmask16 odd = _mm512_mask_cmp_ps_mask(mk, _mm512_abs_ps(_mm512_reduce_ps(t, QB_RNE)),
                                                          near_half, _CMP_GE_OQ);
            if (odd) {
                const __m512 e = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(xv, vs), tlo), thi);
                r = _mm512_mask_mov_epi32(r, odd, _mm512_cvt_roundps_epi32(e, QB_RNE));
            }
        } else {
            r = _mm512_cvt_roundps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_div_ps(xv, vs), tlo), thi), QB_RNE);
        }
        _mm_mask_storeu_epi8(out + i, mk, _mm512_cvtepi32_epi8(_mm512_add_epi32(r, vz)));
    }
#endif
    (void)fast;
    for (; i < n; i++) {
        float v = nearbyintf(x[i] / s) + z;
        v = v < (float)qmin_u ? (float)qmin_u : v > (float)qmax_u ? (float)qmax_u : v;
        out[i] = (uint8_t)(int)v;
    }
}

void code_range(const qz_t *a, int *qmin_u, int *qmax_u) {
    const int shift = a->is_signed ? 128 : 0;
    code_bounds(a, qmin_u, qmax_u);
    *qmin_u += shift;
    *qmax_u += shift;
}

#ifdef QB_AVX512
/* lane r = the min (mx 0) or max (mx 1) of the 16 lanes of v[r]: four levels of pairwise shuffles and one
 * permutation for the 16 vectors together, instead of 16 chains of 4 dependent steps (v is overwritten) */
static inline __attribute__((always_inline)) __m512 reduce16(__m512 *v, const int mx) {
#define QB_OP(p, q) (mx ? _mm512_max_ps(p, q) : _mm512_min_ps(p, q))
    for (int i = 0; i < 8; i++)       /* lanes 0-7: v[i], 8-15: v[i + 8] */
        v[i] = QB_OP(_mm512_shuffle_f32x4(v[i], v[i + 8], 0x44), _mm512_shuffle_f32x4(v[i], v[i + 8], 0xEE));
    for (int i = 0; i < 4; i++)       /* 128-bit blocks: rows i, i + 8, i + 4, i + 12 */
        v[i] = QB_OP(_mm512_shuffle_f32x4(v[i], v[i + 4], 0x88), _mm512_shuffle_f32x4(v[i], v[i + 4], 0xDD));
    for (int i = 0; i < 2; i++)       /* lane pairs of each block: the row of v[i]'s block, then v[i + 2]'s */
        v[i] = QB_OP(_mm512_shuffle_ps(v[i], v[i + 2], 0x44), _mm512_shuffle_ps(v[i], v[i + 2], 0xEE));
    v[0] = QB_OP(_mm512_shuffle_ps(v[0], v[1], 0x88), _mm512_shuffle_ps(v[0], v[1], 0xDD));
#undef QB_OP
    /* lane L now holds row 0 2 1 3 8 10 9 11 4 6 5 7 12 14 13 15 (L = 0..15): back into row order */
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15), v[0]);
}
#endif

/* Dynamic qparams of rows x[0 : rows] (row stride K, 1 <= rows <= 16): each row's min / max, then qparams'
 * float32 operations, 16 rows to a vector with the AVX-512 path (each compare and select written as the
 * vminps / vmaxps / blend that computes it exactly, so the values are qparams' own); inv[i] = 1 / scale[i].
 * Row by row, the horizontal reductions and three dependent divisions cost as much as quantizing a row of
 * 256 values (measured: 64 -> 29 us for 1024 x 256 when qparams are given). */
static void rows_qparams(const qz_t *a, const float *x, int64_t K, int rows, float *scale, int32_t *zp, float *inv) {
#ifdef QB_AVX512
    __m512 vlo[16], vhi[16];
    for (int r = 0; r < 16; r++) {
        vlo[r] = vhi[r] = _mm512_setzero_ps();
        if (r >= rows) continue;
        const float *xr = x + r * K;
        __m512 lo0 = _mm512_set1_ps(INFINITY), hi0 = _mm512_set1_ps(-INFINITY), lo1 = lo0, hi1 = hi0;
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {           /* two chains each */
            const __m512 v0 = _mm512_loadu_ps(xr + k), v1 = _mm512_loadu_ps(xr + k + 16);
            lo0 = _mm512_min_ps(lo0, v0);
            hi0 = _mm512_max_ps(hi0, v0);
            lo1 = _mm512_min_ps(lo1, v1);
            hi1 = _mm512_max_ps(hi1, v1);
        }
        for (; k < K; k += 16) {
            const __mmask16 mk = tail16(K - k);
            const __m512 v = _mm512_maskz_loadu_ps(mk, xr + k);
            lo0 = _mm512_mask_min_ps(lo0, mk, lo0, v);
            hi0 = _mm512_mask_max_ps(hi0, mk, hi0, v);
        }
        vlo[r] = _mm512_min_ps(lo0, lo1);
        vhi[r] = _mm512_max_ps(hi0, hi1);
    }
    const __mmask16 live = (__mmask16)((1u << rows) - 1);
    const __m512 zero = _mm512_setzero_ps(), one = _mm512_set1_ps(1.0f);
    int qmin, qmax;
    code_bounds(a, &qmin, &qmax);
    const __m512 lo = _mm512_min_ps(reduce16(vlo, 0), zero);      /* mn < 0 ? mn : 0 */
    const __m512 hi = _mm512_max_ps(reduce16(vhi, 1), zero);      /* mx > 0 ? mx : 0 */
    __m512 s;
    __m512i z;
    if (a->symmetric) {
        const int zv = a->is_signed ? 0 : 1 << (a->bits - 1);
        const __m512 neg_lo = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(lo), _mm512_set1_epi32(INT32_MIN)));
        s = _mm512_div_ps(_mm512_max_ps(neg_lo, hi), _mm512_set1_ps((float)(qmax - zv)));
        z = _mm512_set1_epi32(zv);
    } else {
        s = _mm512_div_ps(_mm512_sub_ps(hi, lo), _mm512_set1_ps((float)(qmax - qmin)));
        const __m512 safe = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, zero, _CMP_GT_OQ), one, s);
        __m512 zf = _mm512_roundscale_ps(_mm512_sub_ps(_mm512_set1_ps((float)qmin), _mm512_div_ps(lo, safe)),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        zf = _mm512_max_ps(_mm512_set1_ps((float)qmin), _mm512_min_ps(_mm512_set1_ps((float)qmax), zf));
        z = _mm512_cvttps_epi32(zf);
    }
    s = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(s, zero, _CMP_GT_OQ), one, s);
    _mm512_mask_storeu_ps(scale, live, s);
    _mm512_mask_storeu_epi32(zp, live, _mm512_add_epi32(z, _mm512_set1_epi32(a->is_signed ? 128 : 0)));
    _mm512_mask_storeu_ps(inv, live, _mm512_div_ps(one, s));
#else
    for (int r = 0; r < rows; r++) {
        float mn, mx;
        minmax(x + r * K, K, &mn, &mx);
        qparams(a, mn, mx, &scale[r], &zp[r]);
        inv[r] = 1.0f / scale[r];
    }
#endif
}

/* rows x[0 : rows] (row stride K) -> codes out (row stride ostride), each row with its own dynamic scale and
 * zero point, written to scale[i] and zp[i] */
void quant_rows_dynamic(const qz_t *a, const float *x, int64_t rows, int64_t K, uint8_t *out,
                               int64_t ostride, float *scale, int32_t *zp) {
    int qmin_u, qmax_u;
    code_range(a, &qmin_u, &qmax_u);
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
        const int n = rows - r0 < 16 ? (int)(rows - r0) : 16;
        float inv[16];
        rows_qparams(a, x + r0 * K, K, n, scale + r0, zp + r0, inv);
        for (int i = 0; i < n; i++)
            quant_span(x + (r0 + i) * K, out + (r0 + i) * ostride, K, scale[r0 + i], inv[i], zp[r0 + i], qmin_u,
                       qmax_u);
    }
}

static void qz_rows_task(void *ctx, int64_t lo, int64_t hi) {
    const qz_t *a = (const qz_t *)ctx;
    quant_rows_dynamic(a, a->x + lo * a->K, hi - lo, a->K, a->out + lo * a->K, a->K, a->scale + lo, a->zp + lo);
}

static void qz_minmax_task(void *ctx, int64_t lo, int64_t hi) {
    const qz_t *a = (const qz_t *)ctx;
    minmax(a->x + lo, hi - lo, &a->mins[lo / a->span], &a->maxs[lo / a->span]);
}

/* dynamic per-tensor qparams of x[0:n] (n > 0): min / max over `threads` spans, then one scale and zero point */
void tensor_qparams(const qz_t *spec, const float *x, int64_t n, int threads, float *scale, int32_t *zp) {
    float mins[32], maxs[32];
    for (int i = 0; i < 32; i++) { mins[i] = INFINITY; maxs[i] = -INFINITY; }
    qz_t a = *spec;
    a.x = x;
    a.span = (n + threads - 1) / threads > 0 ? (n + threads - 1) / threads : 1;
    a.mins = mins;
    a.maxs = maxs;
    parallel_for(qz_minmax_task, &a, n, threads, a.span);
    float mn = INFINITY, mx = -INFINITY;
    for (int t = 0; t < threads; t++) {
        mn = mins[t] < mn ? mins[t] : mn;
        mx = maxs[t] > mx ? maxs[t] : mx;
    }
    qparams(&a, mn, mx, scale, zp);
}

static void qz_flat_task(void *ctx, int64_t lo, int64_t hi) {
    const qz_t *a = (const qz_t *)ctx;
    int qmin_u, qmax_u;
    code_range(a, &qmin_u, &qmax_u);
    quant_span(a->x + lo, a->out + lo, hi - lo, a->scale[0], 1.0f / a->scale[0], a->zp[0], qmin_u, qmax_u);
}

/* have_qparams: scale[0] / zp[0] (uint8 domain) are given and used for every row (static). */
int qb_quant_u8(const float *x, uint8_t *out, float *scale, int32_t *zp, int64_t M, int64_t K, int per_row,
                int symmetric, int is_signed, int bits, int have_qparams, int threads) {
    if (bits < 2 || bits > 8 || M < 0 || K < 0) return 1;
    qz_t a = {x, out, scale, zp, NULL, NULL, 1, M, K, per_row, symmetric, is_signed, bits, have_qparams};
    if (threads < 1) threads = 1;
    if (threads > 32) threads = 32;
    if (per_row && !have_qparams) {
        parallel_for(qz_rows_task, &a, M, threads, 1);
        return 0;
    }
    const int64_t n = M * K;
    if (!have_qparams) tensor_qparams(&a, x, n, threads, scale, zp);
    parallel_for(qz_flat_task, &a, n, threads, 64);
    return 0;
}

/* One shared zero point for per-row zero points zp[0:M]: z0 = round(mean) (float32 mean, ties to even, as
 * torch.round(zp.float().mean()) gives), and dz[m] = zp[m] - z0 for the rank-1 correction. Returns z0. */
int32_t qb_center_zp(const int32_t *zp, int64_t M, float *dz) {
    if (M <= 0) return 0;
    int64_t sum = 0;
    for (int64_t m = 0; m < M; m++) sum += zp[m];
    const int32_t z0 = (int32_t)nearbyintf((float)sum / (float)M);
    for (int64_t m = 0; m < M; m++) dz[m] = (float)(zp[m] - z0);
    return z0;
}
