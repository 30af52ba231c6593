/* The float work around a decoder layer's linears, for qbench's decoder forward (engine/graph.py): qb_rmsnorm,
 * qb_silu_mul, qb_decode_attention and qb_prefill_rotary. Part of qbench's native library; qbench_cpu.h maps its files.
 *
 * A decode step of a small LLM is mostly per-op overhead once its linears are fast: transformers' RMSNorm is six
 * PyTorch ops, the rotary embedding nine a tensor, and the attention of one new token over the cache a handful
 * more around an SDPA call, each a few microseconds for a few hundred floats. These do each in one call, in
 * float32, with the same formulas:
 *
 *   qb_rmsnorm           xo = x + res (when res is given: the residual add before the norm), then per row
 *                        h = (xo * (1 / sqrt(mean(xo^2) + eps))) * w
 *   qb_silu_mul          out = silu(gate) * up per row (silu(x) = x / (1 + exp(-x))): the MLP's activation and
 *                        gating, gate and up read with their own row strides (column views of one joined output)
 *   qb_decode_attention  for B sequences at position p, with q (B, H * D), k and v (B, KV * D) the new token's
 *                        projections (rows qs, and for k and v kvs, floats apart: column views of one output): the rotary embedding of q and k (rotate_half: for i < D / 2,
 *                        x[i] cos[i] - x[i + D/2] sin[i] and x[i + D/2] cos[i + D/2] + x[i] sin[i + D/2]);
 *                        k and v written to the caches kc, vc (B, KV, Tmax, D) at position p; then per query head
 *                        h (key/value head h / (H / KV)): softmax(scale * q . kc[0 .. p]) @ vc[0 .. p] -> out
 *                        (B, H * D), the layout the output projection takes.
 *   qb_prefill_rotary    the same rotary embedding for T new positions t0 .. t0 + T - 1 of B sequences: q rows
 *                        (B * T, H * D) rotated into qo (B, H, T, D), the layout SDPA takes; k rows rotated into
 *                        the cache kc and v rows copied into vc at those positions. One call instead of the
 *                        dozen tensor ops (products, a concatenation, transposes, cache copies) it replaces.
 *
 * Results equal PyTorch's up to float summation order and fused multiply-adds (tests: against the torch ops and a
 * float64 reference). Threads split the rows (qb_rmsnorm) or the (sequence, key/value head) pairs. */
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "qbench_cpu.h"

/* ------------------------------------------------------------------ qb_rmsnorm */

typedef struct { const float *x, *res, *w; float *xo, *h; int64_t D; float eps; } rms_t;

static void rms_task(void *ctx, int64_t lo, int64_t hi) {
    const rms_t *a = (const rms_t *)ctx;
    const int64_t D = a->D;
    for (int64_t m = lo; m < hi; m++) {
        const float *x = a->x + m * D, *r = a->res ? a->res + m * D : NULL;
        float *xo = a->xo ? a->xo + m * D : NULL, *h = a->h + m * D;
        float ss = 0.0f;
        int64_t i = 0;
#ifdef QB_AVX512
        __m512 acc = _mm512_setzero_ps();
        for (; i < D; i += 16) {
            const __mmask16 mk = tail16(D - i);
            __m512 v = _mm512_maskz_loadu_ps(mk, x + i);
            if (r) {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, r + i));
                _mm512_mask_storeu_ps(xo + i, mk, v);
            }
            acc = _mm512_fmadd_ps(v, v, acc);
        }
        ss = _mm512_reduce_add_ps(acc);
#endif
        for (; i < D; i++) {
            const float v = r ? x[i] + r[i] : x[i];
            if (r) xo[i] = v;
            ss += v * v;
        }
        const float inv = 1.0f / sqrtf(ss / (float)D + a->eps);
        const float *src = r ? xo : x;
        i = 0;
#ifdef QB_AVX512
        const __m512 vi = _mm512_set1_ps(inv);
        for (; i < D; i += 16) {
            const __mmask16 mk = tail16(D - i);
            const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, src + i), vi);
            _mm512_mask_storeu_ps(h + i, mk, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mk, a->w + i)));
        }
#endif
        for (; i < D; i++) h[i] = (src[i] * inv) * a->w[i];
    }
}

int qb_rmsnorm(const float *x, const float *res, const float *w, float *xo, float *h, int64_t M, int64_t D, float eps,
               int threads) {
    if (M < 0 || D < 1 || (res && !xo)) return 1;
    rms_t a = {x, res, w, xo, h, D, eps};
    parallel_for(rms_task, &a, M, threads, 1);
    return 0;
}

/* ------------------------------------------------------------------ qb_silu_mul */

typedef struct { const float *g, *u; float *out; int64_t N, gs, us; } silu_t;

static void silu_task(void *ctx, int64_t lo, int64_t hi) {
    const silu_t *a = (const silu_t *)ctx;
    for (int64_t m = lo; m < hi; m++) {
        const float *g = a->g + m * a->gs, *u = a->u + m * a->us;
        float *o = a->out + m * a->N;
        int64_t i = 0;
#ifdef QB_AVX512
        const __m512 one = _mm512_set1_ps(1.0f);
        for (; i < a->N; i += 16) {
            const __mmask16 mk = tail16(a->N - i);
            const __m512 x = _mm512_maskz_loadu_ps(mk, g + i);
            const __m512 sx = _mm512_div_ps(x, _mm512_add_ps(one, exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x))));
            _mm512_mask_storeu_ps(o + i, mk, _mm512_mul_ps(sx, _mm512_maskz_loadu_ps(mk, u + i)));
        }
#endif
        for (; i < a->N; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

int qb_silu_mul(const float *gate, const float *up, float *out, int64_t M, int64_t N, int64_t gate_stride,
                int64_t up_stride, int threads) {
    if (M < 0 || N < 1 || gate_stride < N || up_stride < N) return 1;
    silu_t a = {gate, up, out, N, gate_stride, up_stride};
    parallel_for(silu_task, &a, M, threads, 1);
    return 0;
}

/* ------------------------------------------------------------------ qb_decode_attention */

typedef struct {
    const float *q, *k, *v, *cos, *sin;
    float *kc, *vc, *out;
    int64_t H, KV, D, Tmax, p, qs, kvs;
    float scale;
    _Atomic int *oom;
} dec_t;

/* dst = src rotated (rotate_half convention) with this position's cos, sin (D each) */
static void rotate(const float *src, const float *cos, const float *sin, float *dst, int64_t D) {
    const int64_t half = D / 2;
    for (int64_t i = 0; i < half; i++) {
        dst[i] = src[i] * cos[i] - src[i + half] * sin[i];
        dst[i + half] = src[i + half] * cos[i + half] + src[i] * sin[i + half];
    }
}

static float dot(const float *a, const float *b, int64_t D) {
    float s = 0.0f;
    int64_t i = 0;
#ifdef QB_AVX512
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= D; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    s = _mm512_reduce_add_ps(acc);
#endif
    for (; i < D; i++) s += a[i] * b[i];
    return s;
}

/* o (D) = sum_t pr[t] * v[t * D ...] over n rows */
static void weighted_rows(const float *pr, const float *v, int64_t n, int64_t D, float *o) {
    int64_t d = 0;
#ifdef QB_AVX512
    for (; d + 64 <= D; d += 64) {
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t t = 0; t < n; t++) {
            const __m512 w = _mm512_set1_ps(pr[t]);
            const float *row = v + t * D + d;
            a0 = _mm512_fmadd_ps(w, _mm512_loadu_ps(row), a0);
            a1 = _mm512_fmadd_ps(w, _mm512_loadu_ps(row + 16), a1);
            a2 = _mm512_fmadd_ps(w, _mm512_loadu_ps(row + 32), a2);
            a3 = _mm512_fmadd_ps(w, _mm512_loadu_ps(row + 48), a3);
        }
        _mm512_storeu_ps(o + d, a0);
        _mm512_storeu_ps(o + d + 16, a1);
        _mm512_storeu_ps(o + d + 32, a2);
        _mm512_storeu_ps(o + d + 48, a3);
    }
    for (; d + 16 <= D; d += 16) {
        __m512 a0 = _mm512_setzero_ps();
        for (int64_t t = 0; t < n; t++) a0 = _mm512_fmadd_ps(_mm512_set1_ps(pr[t]), _mm512_loadu_ps(v + t * D + d), a0);
        _mm512_storeu_ps(o + d, a0);
    }
#endif
    for (; d < D; d++) {
        float s = 0.0f;
        for (int64_t t = 0; t < n; t++) s += pr[t] * v[t * D + d];
        o[d] = s;
    }
}

/* (sequence b, key/value head j) pairs [lo, hi): cache the new key and value, then every query head of the group */
static void dec_task(void *ctx, int64_t lo, int64_t hi) {
    const dec_t *a = (const dec_t *)ctx;
    const int64_t D = a->D, n = a->p + 1, groups = a->H / a->KV;
    float *buf = malloc(sizeof(float) * (size_t)(n + D));
    if (!buf) {
        atomic_store(a->oom, 1);
        return;
    }
    float *scores = buf, *qr = buf + n;
    for (int64_t bj = lo; bj < hi; bj++) {
        const int64_t b = bj / a->KV, j = bj % a->KV;
        float *kc = a->kc + (bj * a->Tmax) * D, *vc = a->vc + (bj * a->Tmax) * D;
        rotate(a->k + b * a->kvs + j * D, a->cos, a->sin, kc + a->p * D, D);
        const float *v = a->v + b * a->kvs + j * D;
        for (int64_t i = 0; i < D; i++) vc[a->p * D + i] = v[i];
        for (int64_t g = 0; g < groups; g++) {
            const int64_t h = j * groups + g;
            rotate(a->q + b * a->qs + h * D, a->cos, a->sin, qr, D);
            for (int64_t t = 0; t < n; t++) scores[t] = dot(qr, kc + t * D, D) * a->scale;
            softmax_row(scores, n);
            weighted_rows(scores, vc, n, D, a->out + (b * a->H + h) * D);
        }
    }
    free(buf);
}

int qb_decode_attention(const float *q, const float *k, const float *v, float *kc, float *vc, const float *cos,
                        const float *sin, float *out, int64_t B, int64_t H, int64_t KV, int64_t D, int64_t Tmax,
                        int64_t p, float scale, int64_t qs, int64_t kvs, int threads) {
    if (B < 1 || KV < 1 || H % KV || D < 2 || D % 2 || p < 0 || p >= Tmax || qs < H * D || kvs < KV * D) return 1;
    _Atomic int oom = 0;
    dec_t a = {q, k, v, cos, sin, kc, vc, out, H, KV, D, Tmax, p, qs, kvs, scale, &oom};
    parallel_for(dec_task, &a, B * KV, threads, 1);
    return atomic_load(&oom) ? 2 : 0;
}

/* ------------------------------------------------------------------ qb_prefill_rotary */

typedef struct {
    const float *q, *k, *v, *cos, *sin;
    float *qo, *kc, *vc;
    int64_t T, H, KV, D, Tmax, t0, qs, kvs;
} pre_t;

/* rows [lo, hi) of the B * T new positions (sequence-major) */
static void pre_task(void *ctx, int64_t lo, int64_t hi) {
    const pre_t *a = (const pre_t *)ctx;
    const int64_t D = a->D;
    for (int64_t r = lo; r < hi; r++) {
        const int64_t b = r / a->T, t = r % a->T, pos = a->t0 + t;
        const float *cos = a->cos + pos * D, *sin = a->sin + pos * D;
        for (int64_t h = 0; h < a->H; h++)
            rotate(a->q + r * a->qs + h * D, cos, sin, a->qo + ((b * a->H + h) * a->T + t) * D, D);
        for (int64_t j = 0; j < a->KV; j++) {
            const int64_t at = ((b * a->KV + j) * a->Tmax + pos) * D;
            rotate(a->k + r * a->kvs + j * D, cos, sin, a->kc + at, D);
            const float *v = a->v + r * a->kvs + j * D;
            for (int64_t i = 0; i < D; i++) a->vc[at + i] = v[i];
        }
    }
}

int qb_prefill_rotary(const float *q, const float *k, const float *v, const float *cos, const float *sin, float *qo,
                      float *kc, float *vc, int64_t B, int64_t T, int64_t H, int64_t KV, int64_t D, int64_t Tmax,
                      int64_t t0, int64_t qs, int64_t kvs, int threads) {
    if (B < 1 || T < 1 || H < 1 || KV < 1 || D < 2 || D % 2 || t0 < 0 || t0 + T > Tmax || qs < H * D ||
        kvs < KV * D)
        return 1;
    pre_t a = {q, k, v, cos, sin, qo, kc, vc, T, H, KV, D, Tmax, t0, qs, kvs};
    parallel_for(pre_task, &a, B * T, threads, 1);
    return 0;
}
