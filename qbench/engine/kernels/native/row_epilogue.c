/* Per-row epilogue: qb_row_epilogue, y[m, n] = rs[m] * (y[m, n] - dz[m] * c[n]) + b[n] in one pass over y
 * (the per-token rescale and rank-1 zero-point correction of a W8A8 GEMM run by another library). Part of
 * qbench's native library; qbench_cpu.h maps its files. */
#include <stddef.h>
#include <stdint.h>

#include "qbench_cpu.h"

typedef struct { float *y; const float *rs, *dz, *c, *bias; int64_t M, N; } ep_t;

/* y[m, n] = rs[m] * (y[m, n] - dz[m] * c[n]) + bias[n], in place; dz and bias may be NULL */
static void ep_task(void *ctx, int64_t lo, int64_t hi) {
    const ep_t *e = (const ep_t *)ctx;
    for (int64_t m = lo; m < hi; m++) {
        float *y = e->y + m * e->N;
        const float rs = e->rs[m], dz = e->dz ? e->dz[m] : 0.0f;
        int64_t n = 0;
#ifdef QB_AVX512
        const __m512 vrs = _mm512_set1_ps(rs), vdz = _mm512_set1_ps(-dz);
        for (; n < e->N; n += 16) {
            const int64_t left = e->N - n;
            const __mmask16 mk = tail16(left);
            __m512 v = _mm512_maskz_loadu_ps(mk, y + n);
            if (e->dz) v = _mm512_fmadd_ps(vdz, _mm512_maskz_loadu_ps(mk, e->c + n), v);
            v = e->bias ? _mm512_fmadd_ps(v, vrs, _mm512_maskz_loadu_ps(mk, e->bias + n)) : _mm512_mul_ps(v, vrs);
            _mm512_mask_storeu_ps(y + n, mk, v);
        }
#endif
        for (; n < e->N; n++) {
            float v = e->dz ? y[n] - dz * e->c[n] : y[n];
            y[n] = e->bias ? v * rs + e->bias[n] : v * rs;
        }
    }
}

int qb_row_epilogue(float *y, const float *rs, const float *dz, const float *c, const float *bias, int64_t M,
                    int64_t N, int threads) {
    if (dz && !c) return 1;
    ep_t e = {y, rs, dz, c, bias, M, N};
    parallel_for(ep_task, &e, M, threads, 1);
    return 0;
}
