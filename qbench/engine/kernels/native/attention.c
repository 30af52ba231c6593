/* Quantized attention in one call: qb_attention. Part of qbench's native library; qbench_cpu.h maps its files.
 *
 * For each of G = batch x heads slices (threads split the slices), with Q (S, D), K and V (T, D) float32:
 *
 *   Q, K  quantized per row over D (per token), V per channel: each of its D columns over the T keys, all with
 *         the activation spec (bits, signedness, symmetry) and qb_quant_u8's codes (quant_rows_dynamic);
 *   S     = scaling * sq[i] * sk[j] * sum_d (uq - zq)(uk - zk) + mask[i, j]   (exact int32 sums, vpdpbusd)
 *   P     = softmax over j in float32, then quantized per row with the spec's bits, unsigned and asymmetric
 *           (its zero point is 0: a probability is never negative);
 *   O     = sp[i] * sv[d] * sum_j (up - zp)(uv - zv)                          (exact int32 sums, vpdpbusd)
 *
 * the same numbers as kernels/attention.py's int8_attention (torch._int_mm per slice): integer sums, then the
 * same float operations in the same order (float(acc) * (s_row * scaling) * s_col), up to the softmax's exp and
 * sum, whose rounding may differ from torch's by an ulp (and so, rarely, move a P code by one).
 *
 * Every scale and zero point factors out of its sum: with u the broadcast operand (uint8 codes, zero point za)
 * and c the packed one (int8 codes u - 128, zero point zb - 128), sum (u - za)(c - zc) = sum u c - za sum c -
 * zc (sum u - n za), n the real length (padding is zero on both sides, so it adds nothing).
 *
 * Per slice: K's codes packed for vpdpbusd as [d / 4][key][4] (16 keys per 64-byte vector), V's as
 * [key / 4][channel][4]; then, per block of 16 query rows, each row's scores (one broadcast of 4 Q codes feeding
 * up to 4 chains of 16 keys, then the corrections, the rescale and the mask: product_row) and its softmax, the
 * block's P codes at once, and each output row the same way against V. Nothing of size S x T leaves the 16-row
 * buffer. Without AVX-512 VNNI the same sums run as plain C loops. */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qbench_cpu.h"

#define QA_RB 16              /* query rows whose P is quantized together (quant_rows_dynamic's block) */

typedef struct {
    const float *q, *k, *v, *mask;
    float *out;
    int64_t G, H, S, T, D;
    int64_t mb, mh, ms;        /* the mask's strides (elements) over batch, head and query row; keys are contiguous */
    float scaling;
    qz_t a, p;                 /* the specs of Q, K, V and of P */
    _Atomic int *oom;
} attn_t;

static inline int64_t up_to(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

/* pack: rows r < n of u (stride ls; lenp a multiple of 4) -> dst as int32 words [l / 4][r] (cols words per l / 4)
 * of the codes u - 128 (int8: each byte xor 0x80); sums[r] = sum of the row's int8 codes over its first len.
 * Past len the words hold whatever u holds there: the other operand's codes are 0 there, so they add nothing. */
static void pack_int8(const uint8_t *u, int64_t n, int64_t len, int64_t ls, int64_t cols, int64_t lenp, int8_t *dst,
                      int32_t *sums) {
    uint32_t *d32 = (uint32_t *)dst;
    for (int64_t r = 0; r < n; r++) {
        const uint32_t *row = (const uint32_t *)(u + r * ls);
        for (int64_t w = 0; w < lenp / 4; w++) d32[w * cols + r] = row[w] ^ 0x80808080u;
        sums[r] = (int32_t)sum_u8(u + r * ls, len) - 128 * (int32_t)len;
    }
}

/* acc[16 v + c] = sum over l < lenp of a[l] (uint8) * b[l / 4][c0 + 16 v + c][l % 4] (int8), for the nv <= 4
 * blocks of 16 columns from c0 (cols columns in all): one broadcast of a serves nv independent chains */
static inline void dots64(const uint8_t *a, const int8_t *b, int64_t lenp, int64_t cols, int64_t c0, int nv,
                          int32_t *acc) {
#ifdef QB_VNNI
    __m512i s[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    const int8_t *bp = b + c0 * 4;
    if (nv == 4)
        for (int64_t t = 0; t < lenp; t += 4, bp += cols * 4) {
            const __m512i av = _mm512_set1_epi32(*(const int32_t *)(a + t));
            s[0] = _mm512_dpbusd_epi32(s[0], av, _mm512_loadu_si512(bp));
            s[1] = _mm512_dpbusd_epi32(s[1], av, _mm512_loadu_si512(bp + 64));
            s[2] = _mm512_dpbusd_epi32(s[2], av, _mm512_loadu_si512(bp + 128));
            s[3] = _mm512_dpbusd_epi32(s[3], av, _mm512_loadu_si512(bp + 192));
        }
    else
        for (int64_t t = 0; t < lenp; t += 4, bp += cols * 4) {
            const __m512i av = _mm512_set1_epi32(*(const int32_t *)(a + t));
            for (int v = 0; v < nv; v++) s[v] = _mm512_dpbusd_epi32(s[v], av, _mm512_loadu_si512(bp + 64 * v));
        }
    for (int v = 0; v < nv; v++) _mm512_storeu_si512(acc + 16 * v, s[v]);
#else
    for (int c = 0; c < 16 * nv; c++) {
        int32_t s = 0;
        for (int64_t l = 0; l < lenp; l++) s += (int32_t)a[l] * (int32_t)b[(l / 4) * cols * 4 + (c0 + c) * 4 + l % 4];
        acc[c] = s;
    }
#endif
}

/* the 16 sums of the columns c0 .. c0 + 15 of a against b (as dots64), walked 16 columns at a time: at every 64th
 * column the next 64 are computed into buf (up to 4 chains over one broadcast), in between they are read back */
static inline const int32_t *sums_at(const uint8_t *a, const int8_t *b, int64_t lenp, int64_t cols, int64_t c0,
                                     int32_t *buf) {
    if (c0 % 64 == 0) dots64(a, b, lenp, cols, c0, (int)((cols - c0) / 16 < 4 ? (cols - c0) / 16 : 4), buf);
    return buf + c0 % 64;
}

/* the exact sum of (u - za)(c - zc) from acc = sum u c, the packed rows' code sums `sums`, their zero points zb
 * (uint8 domain; zc = zb - 128) and rt = sum u - n za. int32 wraps like vpdpbusd: the result is exact while it
 * fits (|terms| <= 255 * 255, n <= 32768). */
static inline int32_t corrected1(int32_t acc, int32_t za, int32_t sums, int32_t zb, int32_t rt) {
    return (int32_t)((uint32_t)acc - (uint32_t)za * (uint32_t)sums - (uint32_t)(zb - 128) * (uint32_t)rt);
}

#ifdef QB_AVX512
/* corrected1 for 16 columns (lanes past mk read as 0) */
static inline __m512i corrected16(const int32_t *acc, int32_t za, const int32_t *sums, const int32_t *zb, int32_t rt,
                                  __mmask16 mk) {
    const __m512i c = _mm512_sub_epi32(_mm512_loadu_si512(acc), _mm512_mullo_epi32(
        _mm512_set1_epi32(za), _mm512_maskz_loadu_epi32(mk, sums)));
    return _mm512_sub_epi32(c, _mm512_mullo_epi32(_mm512_sub_epi32(_mm512_maskz_loadu_epi32(mk, zb),
                                                                   _mm512_set1_epi32(128)), _mm512_set1_epi32(rt)));
}
#endif

/* one row of a product: dst[c] = corrected sum(c) * rs * cs[c] (+ add[c]) for the len columns of the packed operand
 * b against the broadcast row a (zero point za, rt = sum a - n za); sums and zb are b's rows' code sums and zero
 * points. The float steps are int8_attention's: float(sum) * (row scale) * (column scale), then the mask. */
static void product_row(const uint8_t *a, const int8_t *b, int64_t lenp, int64_t cols, int64_t len, int32_t za,
                        const int32_t *sums, const int32_t *zb, int32_t rt, float rs, const float *cs, const float *add,
                        float *dst) {
    int32_t buf[64] __attribute__((aligned(64)));
    for (int64_t c0 = 0; c0 < len; c0 += 16) {
        const int32_t *acc = sums_at(a, b, lenp, cols, c0, buf);
        const int64_t n = len - c0 < 16 ? len - c0 : 16;
#ifdef QB_AVX512
        const __mmask16 mk = (__mmask16)((1u << n) - 1);
        __m512 f = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(corrected16(acc, za, sums + c0, zb + c0, rt, mk)),
                                               _mm512_set1_ps(rs)), _mm512_maskz_loadu_ps(mk, cs + c0));
        if (add) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(mk, add + c0));
        _mm512_mask_storeu_ps(dst + c0, mk, f);
#else
        for (int64_t c = 0; c < n; c++)
            dst[c0 + c] = (float)corrected1(acc[c], za, sums[c0 + c], zb[c0 + c], rt) * rs * cs[c0 + c]
                          + (add ? add[c0 + c] : 0.0f);
#endif
    }
}

typedef struct {              /* one task's buffers, for slices of one shape */
    uint8_t *uq, *uk, *uv, *up;
    int8_t *kp, *vp;
    float *sq, *sk, *sv, *sp, *vt, *row;
    int32_t *zq, *zk, *zv, *ksum, *vsum, *zp;
} scratch_t;

static void attn_slice(const attn_t *t, int64_t gi, scratch_t *w) {
    const int64_t S = t->S, T = t->T, D = t->D;
    const int64_t Dp = up_to(D, 4), Tp = up_to(T, 4), T16 = up_to(T, 16), D16 = up_to(D, 16);
    const float *q = t->q + gi * S * D, *k = t->k + gi * T * D, *v = t->v + gi * T * D;
    float *out = t->out + gi * S * D;
    const float *mask = t->mask ? t->mask + (gi / t->H) * t->mb + (gi % t->H) * t->mh : NULL;
    /* K: codes per key row, packed [d / 4][key][4] */
    memset(w->uk, 0, (size_t)(T * Dp));
    quant_rows_dynamic(&t->a, k, T, D, w->uk, Dp, w->sk, w->zk);
    pack_int8(w->uk, T, D, Dp, T16, Dp, w->kp, w->ksum);
    /* V: its transpose's codes per channel row (over the keys), packed [key / 4][channel][4] */
    for (int64_t j = 0; j < T; j++)
        for (int64_t d = 0; d < D; d++) w->vt[d * T + j] = v[j * D + d];
    memset(w->uv, 0, (size_t)(D * Tp));
    quant_rows_dynamic(&t->a, w->vt, D, T, w->uv, Tp, w->sv, w->zv);
    pack_int8(w->uv, D, T, Tp, D16, Tp, w->vp, w->vsum);
    /* Q: codes per query row */
    memset(w->uq, 0, (size_t)(S * Dp));
    quant_rows_dynamic(&t->a, q, S, D, w->uq, Dp, w->sq, w->zq);
    for (int64_t i0 = 0; i0 < S; i0 += QA_RB) {          /* blocks of query rows: P quantized QA_RB rows at once */
        const int64_t rb = S - i0 < QA_RB ? S - i0 : QA_RB;
        for (int64_t i = i0; i < i0 + rb; i++) {
            const uint8_t *ui = w->uq + i * Dp;
            const int32_t za = w->zq[i], rt = (int32_t)sum_u8(ui, D) - (int32_t)D * za;
            const float sa = w->sq[i] * t->scaling;
            float *row = w->row + (i - i0) * T;
            product_row(ui, w->kp, Dp, T16, T, za, w->ksum, w->zk, rt, sa, w->sk, mask ? mask + i * t->ms : NULL,
                        row);
            softmax_row(row, T);
        }
        /* P: the block's codes (unsigned spec; zero points in the uint8 domain are the spec's own) */
        memset(w->up, 0, (size_t)(rb * Tp));
        quant_rows_dynamic(&t->p, w->row, rb, T, w->up, Tp, w->sp, w->zp);
        for (int64_t i = i0; i < i0 + rb; i++) {
            const uint8_t *pi = w->up + (i - i0) * Tp;
            const int32_t zp = w->zp[i - i0], rp = (int32_t)sum_u8(pi, T) - (int32_t)T * zp;
            const float sp = w->sp[i - i0];
            product_row(pi, w->vp, Tp, D16, D, zp, w->vsum, w->zv, rp, sp, w->sv, NULL, out + i * D);
        }
    }
}

static void attn_task(void *ctx, int64_t lo, int64_t hi) {
    const attn_t *t = (const attn_t *)ctx;
    const int64_t S = t->S, T = t->T, D = t->D;
    const int64_t Dp = up_to(D, 4), Tp = up_to(T, 4), T16 = up_to(T, 16), D16 = up_to(D, 16);
    scratch_t w = {
        malloc((size_t)(S * Dp)), malloc((size_t)(T * Dp)), malloc((size_t)(D * Tp)), malloc((size_t)(QA_RB * Tp)),
        aligned_alloc(64, (size_t)up_to(Dp * T16, 64)), aligned_alloc(64, (size_t)up_to(Tp * D16, 64)),
        malloc(sizeof(float) * (size_t)S), malloc(sizeof(float) * (size_t)T), malloc(sizeof(float) * (size_t)D),
        malloc(sizeof(float) * QA_RB), malloc(sizeof(float) * (size_t)(T * D)),
        malloc(sizeof(float) * (size_t)(QA_RB * T)),
        malloc(sizeof(int32_t) * (size_t)S), malloc(sizeof(int32_t) * (size_t)T), malloc(sizeof(int32_t) * (size_t)D),
        malloc(sizeof(int32_t) * (size_t)T), malloc(sizeof(int32_t) * (size_t)D), malloc(sizeof(int32_t) * QA_RB)};
    void *all[] = {w.uq, w.uk, w.uv, w.up, w.kp, w.vp, w.sq, w.sk, w.sv, w.sp, w.vt, w.row, w.zq, w.zk, w.zv,
                   w.ksum, w.vsum, w.zp};
    int ok = 1;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ok &= all[i] != NULL;
    if (ok)
        for (int64_t gi = lo; gi < hi; gi++) attn_slice(t, gi, &w);
    else
        atomic_store(t->oom, 1);
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free(all[i]);
}

/* q (G, S, D), k and v (G, T, D) float32, G = B * H slices (heads already repeated for grouped queries); mask
 * additive float32 or NULL, element (b, h, i, j) at b * mb + h * mh + i * ms + j; out (G, S, D) float32.
 * Activation spec: bits, signedness, symmetry (per token for Q and K, per channel for V); P: the same bits,
 * unsigned, asymmetric. Returns 0, 1 for bad arguments, 2 when out of memory. */
int qb_attention(const float *q, const float *k, const float *v, const float *mask, float *out, int64_t G, int64_t H,
                 int64_t S, int64_t T, int64_t D, int64_t mb, int64_t mh, int64_t ms, float scaling, int symmetric,
                 int is_signed, int bits, int threads) {
    if (bits < 2 || bits > 8 || G < 0 || H < 1 || G % H || S < 0 || T < 1 || D < 1 || D > 32768 || T > 32768)
        return 1;
    if (G == 0 || S == 0) return 0;
    _Atomic int oom = 0;
    attn_t t = {q, k, v, mask, out, G, H, S, T, D, mb, mh, ms, scaling,
                {NULL, NULL, NULL, NULL, NULL, NULL, 1, 0, 0, 1, symmetric, is_signed, bits, 0},
                {NULL, NULL, NULL, NULL, NULL, NULL, 1, 0, 0, 1, 0, 0, bits, 0}, &oom};
    if (threads < 1) threads = 1;
    if (threads > 32) threads = 32;
    parallel_for(attn_task, &t, G, threads, 1);
    return atomic_load(&oom) ? 2 : 0;
}
