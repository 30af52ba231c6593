/* qbench's own CPU kernels, built with the system C compiler on first use (see native.py).
 *
 * wo_gemm     weight-only GEMM for int8 codes or two 4-bit codes per byte, fp32 activations and fp32
 *             accumulation: y[m, n] = sum_g s[n, g] * (sum_{k in g} x[m, k] * c[n, k] + zc[n, g] * xg[m, g]) + b[n]
 *             where c are the stored codes (int8, or unsigned nibbles 0..15), zc the per-group code offset
 *             (qmin - zero_point for nibbles, -zero_point for int8) and xg the group sums of x. For nibbles
 *             the even and odd columns of x come separately (x, xo), so bytes need no interleaving.
 *             Rows of x are taken 16 at a time, so at M <= 16 every weight byte is read once.
 * wo_dequant  (N, K) float32 weights (code + zc) * s, for the compute-bound (large M) case.
 * row_epilogue  y[m, n] = rs[m] * (y[m, n] - dz[m] * c[n]) + b[n] in one pass (per-token W8A8).
 * quant_u8    qbench's affine activation quantization (primitives.choose_qparams + quantize), per tensor or
 *             per row, dynamic or with given qparams, writing codes shifted into uint8 (signed codes + 128).
 *             Same float32 operations in the same order as the torch code: x / s (IEEE division), round half
 *             to even, + zero point, clamp.
 *
 * The AVX-512 paths need AVX512F and AVX512BW; without them the portable C loops run (same results up to
 * float summation order in wo_gemm, identical codes in quant_u8).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define QB_AVX512 1
#endif

const char *qb_isa(void) {
#if defined(QB_AVX512) && defined(_OPENMP)
    return "avx512, openmp";
#elif defined(QB_AVX512)
    return "avx512";
#elif defined(_OPENMP)
    return "portable-c, openmp";
#else
    return "portable-c";
#endif
}

/* ------------------------------------------------------------------ a small persistent fork-join pool
 *
 * Starting a thread per call cost 10-25 us here, a few percent of a decode GEMV, so workers persist: they
 * spin briefly on a generation counter, then sleep on a condition variable. One dispatch at a time (a
 * mutex serializes callers); the caller runs span 0 itself. A forked child starts a fresh pool. */

typedef void (*task_fn)(void *ctx, int64_t lo, int64_t hi);
typedef struct { task_fn fn; void *ctx; int64_t lo, hi; } span_t;

#define QB_MAX_THREADS 64
#define QB_SPIN 256

static struct {
    pthread_mutex_t mu;              /* guards sleeping and waking */
    pthread_cond_t work, done;
    _Atomic uint64_t gen;            /* bumped once per dispatch */
    _Atomic int pending;             /* workers yet to finish the current dispatch */
    int nworkers;
    uint64_t born[QB_MAX_THREADS];   /* the generation current when each worker was started */
    span_t spans[QB_MAX_THREADS];
    pid_t pid;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};
static pthread_mutex_t dispatch_mu = PTHREAD_MUTEX_INITIALIZER;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_span(const span_t *s) {
    if (s->fn && s->lo < s->hi) s->fn(s->ctx, s->lo, s->hi);
}

static void *worker(void *arg) {
    const int idx = (int)(intptr_t)arg;          /* runs spans[idx + 1] */
    uint64_t seen = pool.born[idx];              /* dispatches before its birth are not its own */
    for (;;) {
        uint64_t g = atomic_load_explicit(&pool.gen, memory_order_acquire);
        for (int i = 0; g == seen && i < QB_SPIN; i++) {
            cpu_relax();
            g = atomic_load_explicit(&pool.gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&pool.mu);
            while ((g = atomic_load_explicit(&pool.gen, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool.work, &pool.mu);
            pthread_mutex_unlock(&pool.mu);
        }
        seen = g;
        run_span(&pool.spans[idx + 1]);
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.mu);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.mu);
        }
    }
    return NULL;
}

/* Workers for `want` extra threads; returns how many exist (fewer if thread creation fails). */
static int ensure_workers(int want) {
    if (pool.pid != getpid()) {                  /* first use, or a forked child: no workers here */
        pthread_mutex_init(&pool.mu, NULL);
        pthread_cond_init(&pool.work, NULL);
        pthread_cond_init(&pool.done, NULL);
        atomic_store(&pool.gen, 0);
        pool.nworkers = 0;
        pool.pid = getpid();
    }
    while (pool.nworkers < want) {
        pthread_t tid;
        pool.spans[pool.nworkers + 1] = (span_t){0};
        pool.born[pool.nworkers] = atomic_load(&pool.gen);
        if (pthread_create(&tid, NULL, worker, (void *)(intptr_t)pool.nworkers) != 0) break;
        pthread_detach(tid);
        pool.nworkers++;
    }
    return pool.nworkers;
}

/* Split [0, n) into `threads` contiguous spans aligned to `align`; the caller runs the first one.
 * Built with OpenMP, the spans run on the OpenMP runtime already loaded in the process: torch's own
 * libgomp.so.1 (same soname), so torch's worker threads, still spinning after the previous torch op, take
 * the work instead of competing with threads of ours for the cores (measured: 1.73 ms -> 0.99 ms for a
 * 4096 x 4096 int8 GEMV right after a torch op). Without OpenMP, the pool above runs them. */
static void parallel_for(task_fn fn, void *ctx, int64_t n, int threads, int64_t align) {
    if (threads > QB_MAX_THREADS) threads = QB_MAX_THREADS;
    if (threads < 1) threads = 1;
    int64_t units = (n + align - 1) / align;
    if (units < threads) threads = (int)(units > 0 ? units : 1);
    span_t spans[QB_MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        int64_t lo = units * t / threads * align, hi = units * (t + 1) / threads * align;
        spans[t] = (span_t){fn, ctx, lo < n ? lo : n, hi < n ? hi : n};
    }
    if (threads == 1) {
        run_span(&spans[0]);
        return;
    }
#ifdef _OPENMP
    {
        int done[QB_MAX_THREADS] = {0};
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num();
            if (t < threads) { run_span(&spans[t]); done[t] = 1; }
        }
        for (int t = 0; t < threads; t++)          /* a smaller team than asked: run the rest here */
            if (!done[t]) run_span(&spans[t]);
        return;
    }
#endif
    pthread_mutex_lock(&dispatch_mu);
    const int workers = ensure_workers(threads - 1);
    for (int t = 1; t <= workers; t++)
        pool.spans[t] = t < threads ? spans[t] : (span_t){0};
    for (int t = workers + 1; t < threads; t++) run_span(&spans[t]);   /* no thread for it: run it here */
    atomic_store_explicit(&pool.pending, workers, memory_order_relaxed);
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool.work);
    pthread_mutex_unlock(&pool.mu);
    run_span(&spans[0]);
    for (int i = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0 && i < QB_SPIN; i++) cpu_relax();
    if (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0) {
        pthread_mutex_lock(&pool.mu);
        while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0)
            pthread_cond_wait(&pool.done, &pool.mu);
        pthread_mutex_unlock(&pool.mu);
    }
    pthread_mutex_unlock(&dispatch_mu);
}

/* ------------------------------------------------------------------ weight-only GEMM */

typedef struct {
    int bits;             /* 8: int8 codes (N, L); 4: uint8 bytes (N, L) holding two nibbles */
    const void *w;
    const float *x;       /* bits 8: (M, L);  bits 4: even columns (M, L) */
    const float *xo;      /* bits 4: odd columns (M, L), zero where K is odd */
    const float *xg;      /* (M, G) group sums of x */
    const float *s;       /* (N, G) scales */
    const float *zc;      /* (N, G) code offsets */
    const float *bias;    /* (N,) or NULL */
    float *y;             /* (M, N) */
    int64_t M, N, L, G, gb;   /* L bytes per row, G groups of gb bytes (G * gb == L) */
} wo_t;

#ifdef QB_AVX512
/* Weight bytes are streamed from memory once; a single sequential stream per core is bound by memory
 * latency (about 8 GB/s measured here), so each 64-byte step asks for a line 1 KiB ahead into L1 and one
 * 4 KiB ahead into L2 (13 GB/s on one core, measured under load). */
#ifndef QB_PREFETCH
#define QB_PREFETCH 1024
#endif

/* int8 codes k..k+15 -> float32 (all 16, or the lanes of a mask) */
static inline __attribute__((always_inline)) __m512 w8_vec(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

static inline __attribute__((always_inline)) __m512 w8_vec_masked(const int8_t *p, __mmask16 mk) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, p)));
}

/* One weight row n against rows m0..m0+MB of x; MB is a constant after inlining. U independent
 * accumulators per row of x hide the FMA latency when MB is small.
 * int4: the 16 possible nibble values of a group, already scaled and offset (s * (c + zc)), sit in one
 * register and vpermps turns nibbles into dequantized weights. int8: codes are converted and, with more
 * than one group, scaled per vector; with one group the scale is applied once at the end. */
static inline __attribute__((always_inline)) void wo_row(const wo_t *a, int64_t n, int64_t m0, const int MB) {
    enum { U = 4 };
    const int UU = MB <= 2 ? U : MB <= 4 ? 2 : 1;
    __m512 acc[16][U];
#pragma GCC unroll 16
    for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
        for (int u = 0; u < UU; u++) acc[i][u] = _mm512_setzero_ps();
    float extra[16] = {0};
    const int64_t L = a->L;
    const int grouped8 = a->bits == 8 && a->G > 1;
    const __m512 iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i m15 = _mm512_set1_epi32(15);
    for (int64_t g = 0; g < a->G; g++) {
        const float sg = a->s[n * a->G + g], zg = a->zc[n * a->G + g];
        const __m512 sv = _mm512_set1_ps(sg);
        const __m512 table = _mm512_mul_ps(_mm512_add_ps(iota, _mm512_set1_ps(zg)), sv);
        const int64_t k0 = g * a->gb, k1 = k0 + a->gb;
        int64_t k = k0;
        if (a->bits == 8) {
            const int8_t *wr = (const int8_t *)a->w + n * L;
            for (; k + 16 * UU <= k1; k += 16 * UU) {
                if ((k & 63) == 0) {
                    _mm_prefetch((const char *)(wr + k + QB_PREFETCH), _MM_HINT_T0);
                    _mm_prefetch((const char *)(wr + k + 4 * QB_PREFETCH), _MM_HINT_T1);
                }
#pragma GCC unroll 4
                for (int u = 0; u < UU; u++) {
                    __m512 wv = w8_vec(wr + k + 16 * u);
                    if (grouped8) wv = _mm512_mul_ps(wv, sv);
#pragma GCC unroll 16
                    for (int i = 0; i < MB; i++)
                        acc[i][u] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(a->x + (m0 + i) * L + k + 16 * u), acc[i][u]);
                }
            }
            for (; k < k1; k += 16) {
                const int64_t left = k1 - k;
                const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
                __m512 wv = w8_vec_masked(wr + k, mk);
                if (grouped8) wv = _mm512_mul_ps(wv, sv);
#pragma GCC unroll 16
                for (int i = 0; i < MB; i++)
                    acc[i][0] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mk, a->x + (m0 + i) * L + k), acc[i][0]);
            }
            if (grouped8 || a->G == 1) {
                const float szc = a->G == 1 ? zg : sg * zg;   /* G == 1: the scale comes at the end */
                if (szc != 0.0f)
#pragma GCC unroll 16
                    for (int i = 0; i < MB; i++) extra[i] += szc * a->xg[(m0 + i) * a->G + g];
            }
        } else {
            const uint8_t *wr = (const uint8_t *)a->w + n * L;
            for (; k + 16 * UU <= k1; k += 16 * UU) {
                if ((k & 63) == 0) {
                    _mm_prefetch((const char *)(wr + k + QB_PREFETCH), _MM_HINT_T0);
                    _mm_prefetch((const char *)(wr + k + 4 * QB_PREFETCH), _MM_HINT_T1);
                }
#pragma GCC unroll 4
                for (int u = 0; u < UU; u++) {
                    const __m512i bz = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(wr + k + 16 * u)));
                    const __m512 lo = _mm512_permutexvar_ps(_mm512_and_si512(bz, m15), table);
                    const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(bz, 4), table);
#pragma GCC unroll 16
                    for (int i = 0; i < MB; i++) {
                        const float *xe = a->x + (m0 + i) * L + k + 16 * u, *xo = a->xo + (m0 + i) * L + k + 16 * u;
                        acc[i][u] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xe), acc[i][u]);
                        acc[i][u] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xo), acc[i][u]);
                    }
                }
            }
            for (; k < k1; k += 16) {
                const int64_t left = k1 - k;
                const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
                const __m512i bz = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, wr + k));
                /* masked-off lanes load zeros from x, so whatever the table gives them adds nothing */
                const __m512 lo = _mm512_permutexvar_ps(_mm512_and_si512(bz, m15), table);
                const __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(bz, 4), table);
#pragma GCC unroll 16
                for (int i = 0; i < MB; i++) {
                    const float *xe = a->x + (m0 + i) * L + k, *xo = a->xo + (m0 + i) * L + k;
                    acc[i][0] = _mm512_fmadd_ps(lo, _mm512_maskz_loadu_ps(mk, xe), acc[i][0]);
                    acc[i][0] = _mm512_fmadd_ps(hi, _mm512_maskz_loadu_ps(mk, xo), acc[i][0]);
                }
            }
        }
    }
    const float b = a->bias ? a->bias[n] : 0.0f;
    const float s_end = a->bits == 8 && a->G == 1 ? a->s[n] : 1.0f;
#pragma GCC unroll 16
    for (int i = 0; i < MB; i++) {
        __m512 t = acc[i][0];
#pragma GCC unroll 4
        for (int u = 1; u < UU; u++) t = _mm512_add_ps(t, acc[i][u]);
        a->y[(m0 + i) * a->N + n] = s_end * (_mm512_reduce_add_ps(t) + extra[i]) + b;
    }
}
#else
static void wo_row(const wo_t *a, int64_t n, int64_t m0, const int MB) {
    const int64_t L = a->L;
    for (int i = 0; i < MB; i++) {
        const int64_t m = m0 + i;
        float tot = 0.0f;
        for (int64_t g = 0; g < a->G; g++) {
            const float s = a->s[n * a->G + g];
            float acc = 0.0f;
            for (int64_t k = g * a->gb; k < (g + 1) * a->gb; k++) {
                if (a->bits == 8) {
                    acc += a->x[m * L + k] * (float)((const int8_t *)a->w)[n * L + k];
                } else {
                    const uint8_t byte = ((const uint8_t *)a->w)[n * L + k];
                    acc += a->x[m * L + k] * (float)(byte & 15) + a->xo[m * L + k] * (float)(byte >> 4);
                }
            }
            tot += s * acc + s * a->zc[n * a->G + g] * a->xg[m * a->G + g];
        }
        a->y[m * a->N + n] = tot + (a->bias ? a->bias[n] : 0.0f);
    }
}
#endif

#define WO_CASE(MB) case MB: for (int64_t n = nb; n < ne; n++) wo_row(a, n, m0, MB); break;

static void wo_task(void *ctx, int64_t n_lo, int64_t n_hi) {
    const wo_t *a = (const wo_t *)ctx;
    /* a block of weight rows stays in L2 while every 16-row block of x passes over it */
    int64_t rows = (256 * 1024) / (a->L > 0 ? a->L : 1);
    if (rows < 1) rows = 1;
    for (int64_t nb = n_lo; nb < n_hi; nb += rows) {
        const int64_t ne = nb + rows < n_hi ? nb + rows : n_hi;
        for (int64_t m0 = 0; m0 < a->M; m0 += 16) {
            const int mb = (int)(a->M - m0 < 16 ? a->M - m0 : 16);
            switch (mb) {
                WO_CASE(1) WO_CASE(2) WO_CASE(3) WO_CASE(4) WO_CASE(5) WO_CASE(6) WO_CASE(7) WO_CASE(8)
                WO_CASE(9) WO_CASE(10) WO_CASE(11) WO_CASE(12) WO_CASE(13) WO_CASE(14) WO_CASE(15) WO_CASE(16)
            }
        }
    }
}

int qb_wo_gemm(int bits, const void *w, const float *x, const float *xo, const float *xg, const float *s,
               const float *zc, const float *bias, float *y, int64_t M, int64_t N, int64_t L, int64_t G,
               int64_t gb, int threads) {
    if ((bits != 8 && bits != 4) || G * gb != L || M < 0 || N < 0) return 1;
    wo_t a = {bits, w, x, xo, xg, s, zc, bias, y, M, N, L, G, gb};
    parallel_for(wo_task, &a, N, threads, 8);
    return 0;
}

typedef struct { const wo_t *a; float *out; int64_t K; } dq_t;

/* out (N, K) float32 = s * (code + zc), the same float operations as primitives.dequantize */
static void dq_task(void *ctx, int64_t n_lo, int64_t n_hi) {
    const dq_t *d = (const dq_t *)ctx;
    const wo_t *a = d->a;
    for (int64_t n = n_lo; n < n_hi; n++) {
        float *o = d->out + n * d->K;
        for (int64_t g = 0; g < a->G; g++) {
            const float s = a->s[n * a->G + g], zc = a->zc[n * a->G + g];
            const int64_t k0 = g * a->gb, k1 = k0 + a->gb;
            if (a->bits == 8) {
                const int8_t *w = (const int8_t *)a->w + n * a->L;
                for (int64_t k = k0; k < k1; k++) o[k] = ((float)w[k] + zc) * s;
            } else {
                const uint8_t *w = (const uint8_t *)a->w + n * a->L;
                for (int64_t k = k0; k < k1; k++) {
                    o[2 * k] = ((float)(w[k] & 15) + zc) * s;
                    if (2 * k + 1 < d->K) o[2 * k + 1] = ((float)(w[k] >> 4) + zc) * s;
                }
            }
        }
    }
}

int qb_wo_dequant(int bits, const void *w, const float *s, const float *zc, float *out, int64_t N, int64_t L,
                  int64_t G, int64_t gb, int64_t K, int threads) {
    if ((bits != 8 && bits != 4) || G * gb != L) return 1;
    wo_t a = {bits, w, NULL, NULL, NULL, s, zc, NULL, NULL, 0, N, L, G, gb};
    dq_t d = {&a, out, K};
    parallel_for(dq_task, &d, N, threads, 8);
    return 0;
}

/* ------------------------------------------------------------------ activation quantization */

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

static void qparams(const qz_t *a, float mn, float mx, float *scale, int32_t *zp) {
    const int qmin = a->is_signed ? -(1 << (a->bits - 1)) : 0;
    const int qmax = a->is_signed ? (1 << (a->bits - 1)) - 1 : (1 << a->bits) - 1;
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

/* codes of x[0:n] with one (scale, zp-in-uint8-domain); the clamp is applied to the shifted codes.
 * round(x / s) is what the codes need, and division is slow (vdivps: 10 cycles per 16 lanes here), so
 * t = x * (1 / s) is used: it is within 2^-23 relative of x / s. If t * (1 - 2^-21) and t * (1 + 2^-21)
 * round to the same integer, no half-integer lies near x / s and that integer is round(x / s); the few
 * lanes where they differ are divided exactly. The codes are therefore identical to the torch quantizer's.
 * t is first clamped to one step beyond the code range so that float -> int32 conversion cannot overflow. */
static void quant_span(const float *x, uint8_t *out, int64_t n, float s, int32_t zp_u, int qmin_u, int qmax_u) {
    int64_t i = 0;
    const float z = (float)zp_u;
    const float inv = 1.0f / s;
    const int fast = isnormal(s) && isnormal(inv);
#ifdef QB_AVX512
#define QB_RNE (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
    const __m512 vs = _mm512_set1_ps(s), vinv = _mm512_set1_ps(inv);
    const __m512 tlo = _mm512_set1_ps((float)(qmin_u - zp_u - 1)), thi = _mm512_set1_ps((float)(qmax_u - zp_u + 1));
    const __m512 up = _mm512_set1_ps(1.0f + 1.0f / (1 << 21)), dn = _mm512_set1_ps(1.0f - 1.0f / (1 << 21));
    const __m512i vz = _mm512_set1_epi32(zp_u), vmin = _mm512_set1_epi32(qmin_u), vmax = _mm512_set1_epi32(qmax_u);
    for (; i < n; i += 16) {
        const int64_t left = n - i;
        const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        const __m512 xv = _mm512_maskz_loadu_ps(mk, x + i);
        __m512i r;
        if (fast) {
            const __m512 t = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(xv, vinv), tlo), thi);
            r = _mm512_cvt_roundps_epi32(_mm512_mul_ps(t, up), QB_RNE);
            const __m512i r2 = _mm512_cvt_roundps_epi32(_mm512_mul_ps(t, dn), QB_RNE);
            const __mmask16 odd = _mm512_mask_cmpneq_epi32_mask(mk, r, r2);
            if (odd) {
                const __m512 e = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(xv, vs), tlo), thi);
                r = _mm512_mask_mov_epi32(r, odd, _mm512_cvt_roundps_epi32(e, QB_RNE));
            }
        } else {
            r = _mm512_cvt_roundps_epi32(_mm512_min_ps(_mm512_max_ps(_mm512_div_ps(xv, vs), tlo), thi), QB_RNE);
        }
        r = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(r, vz), vmin), vmax);
        _mm_mask_storeu_epi8(out + i, mk, _mm512_cvtepi32_epi8(r));
    }
#endif
    (void)fast;
    for (; i < n; i++) {
        float v = nearbyintf(x[i] / s) + z;
        v = v < (float)qmin_u ? (float)qmin_u : v > (float)qmax_u ? (float)qmax_u : v;
        out[i] = (uint8_t)(int)v;
    }
}

static void code_range(const qz_t *a, int *qmin_u, int *qmax_u) {
    const int shift = a->is_signed ? 128 : 0;
    *qmin_u = (a->is_signed ? -(1 << (a->bits - 1)) : 0) + shift;
    *qmax_u = (a->is_signed ? (1 << (a->bits - 1)) - 1 : (1 << a->bits) - 1) + shift;
}

static void qz_rows_task(void *ctx, int64_t lo, int64_t hi) {
    const qz_t *a = (const qz_t *)ctx;
    int qmin_u, qmax_u;
    code_range(a, &qmin_u, &qmax_u);
    for (int64_t m = lo; m < hi; m++) {
        const float *xr = a->x + m * a->K;
        if (!a->have_qparams) {
            float mn, mx;
            minmax(xr, a->K, &mn, &mx);
            qparams(a, mn, mx, &a->scale[m], &a->zp[m]);
        }
        quant_span(xr, a->out + m * a->K, a->K, a->scale[m], a->zp[m], qmin_u, qmax_u);
    }
}

static void qz_minmax_task(void *ctx, int64_t lo, int64_t hi) {
    const qz_t *a = (const qz_t *)ctx;
    minmax(a->x + lo, hi - lo, &a->mins[lo / a->span], &a->maxs[lo / a->span]);
}

static void qz_flat_task(void *ctx, int64_t lo, int64_t hi) {
    const qz_t *a = (const qz_t *)ctx;
    int qmin_u, qmax_u;
    code_range(a, &qmin_u, &qmax_u);
    quant_span(a->x + lo, a->out + lo, hi - lo, a->scale[0], a->zp[0], qmin_u, qmax_u);
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
    if (!have_qparams) {
        float mins[64], maxs[64];
        for (int i = 0; i < 64; i++) { mins[i] = INFINITY; maxs[i] = -INFINITY; }
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
    parallel_for(qz_flat_task, &a, n, threads, 64);
    return 0;
}

/* ------------------------------------------------------------------ per-row epilogue */

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
            const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
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
