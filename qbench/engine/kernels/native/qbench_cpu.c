/* qbench's own CPU kernels, built with the system C compiler on first use (see native.py).
 *
 * wo8_gemm    weight-only GEMM for int8 codes, fp32 activations and fp32 accumulation:
 *             y[m, n] = sum_g s[n, g] * (sum_{k in g} x[m, k] * c[n, k] + zc[n, g] * xg[m, g]) + b[n]
 *             where c are the codes, zc = -zero_point the per-group code offset and xg the group sums of x.
 *             M <= 2: one weight row at a time against every row of x; from M = 3, tiles of 4 weight rows
 *             x 4 rows of x over blocks of weight rows that stay in L2, so at M <= 16 every weight byte
 *             comes from memory once.
 * wo4_gemm    weight-only GEMM for unsigned nibbles c = q - qmin, two per byte in a blocked layout of their
 *             own (see its section): y[m, n] = sum_k x[m, k] * s[n, g(k)] * (c[n, k] + zc[n, g(k)]) + b[n],
 *             zc = qmin - zero_point, each weight looked up in a 16-entry table per group; fp32 FMA.
 *             Rows of x are taken 4 at a time over blocks of weight rows that stay in L2, so at M <= 16
 *             every weight byte comes from memory once.
 * wo8_dequant, wo4_dequant  (N, K) float32 weights (code + zc) * s, for the compute-bound (large M) case.
 * row_epilogue  y[m, n] = rs[m] * (y[m, n] - dz[m] * c[n]) + b[n] in one pass (per-token W8A8).
 * quant_u8    qbench's affine activation quantization (primitives.choose_qparams + quantize), per tensor or
 *             per row, dynamic or with given qparams, writing codes shifted into uint8 (signed codes + 128).
 *             Same float32 operations in the same order as the torch code: x / s (IEEE division), round half
 *             to even, + zero point, clamp.
 *
 * The AVX-512 paths need AVX512F and AVX512BW; without them the portable C loops run (same results up to
 * float summation order in wo8_gemm and wo4_gemm, identical weights from the dequantizers and identical
 * codes in quant_u8).
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
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

/* ------------------------------------------------------------------ weight-only GEMM: shared parts */

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

/* rows [n0, n1) of the weight against rows m0 .. m0 + mb - 1 of x */
typedef void (*wo_rows_fn)(const void *a, int64_t n0, int64_t n1, int64_t m0, int mb);

/* Rows [n_lo, n_hi) in blocks that stay in L2 (row_bytes each) while every block of at most mb_max rows
 * of x passes over them: each weight byte comes from memory once, and from L2 for the later passes. */
static void wo_row_blocks(const void *a, wo_rows_fn fn, int64_t row_bytes, int64_t M, int mb_max, int64_t n_lo,
                          int64_t n_hi) {
    int64_t rows = (256 * 1024) / (row_bytes > 0 ? row_bytes : 1);
    if (rows < 1) rows = 1;
    for (int64_t nb = n_lo; nb < n_hi; nb += rows) {
        const int64_t ne = nb + rows < n_hi ? nb + rows : n_hi;
        for (int64_t m0 = 0; m0 < M; m0 += mb_max) fn(a, nb, ne, m0, (int)(M - m0 < mb_max ? M - m0 : mb_max));
    }
}

#define WO_CASES(X) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16)

/* ------------------------------------------------------------------ weight-only GEMM, int8 codes */

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
/* the sum of all lanes of UU accumulators (UU a constant after inlining) */
static inline __attribute__((always_inline)) float lane_sum(const __m512 *acc, const int UU) {
    __m512 t = acc[0];
#pragma GCC unroll 8
    for (int u = 1; u < UU; u++) t = _mm512_add_ps(t, acc[u]);
    return _mm512_reduce_add_ps(t);
}

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
            const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
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
            const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
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

/* ------------------------------------------------------------------ weight-only GEMM, 4-bit codes
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
    const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
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
static void quant_span(const float *x, uint8_t *out, int64_t n, float s, float inv, int32_t zp_u, int qmin_u,
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
        const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
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

static void code_range(const qz_t *a, int *qmin_u, int *qmax_u) {
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
            const __mmask16 mk = K - k >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
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
static void quant_rows_dynamic(const qz_t *a, const float *x, int64_t rows, int64_t K, uint8_t *out,
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
static void tensor_qparams(const qz_t *spec, const float *x, int64_t n, int threads, float *scale, int32_t *zp) {
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

/* ------------------------------------------------------------------ W8A8 GEMM, fused
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
 */
#if defined(QB_AVX512) && defined(__AVX512VNNI__)
#define QB_VNNI 1
#endif

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
    _Atomic int *oom;          /* set by a task that could not allocate its row block */
    _Atomic int64_t *next_row; /* by rows: the first row of the next block not yet taken */
    int64_t threads;
} w8a8_t;

static int64_t sum_u8(const uint8_t *p, int64_t n) {
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
        rt[i] = g->zc ? (int32_t)(uint32_t)((uint64_t)sum_u8(br, g->K) - (uint64_t)(g->K * (int64_t)za[i])) : 0;
    }
}

#ifdef QB_VNNI
/* rows a[0:MR] (stride kp) x panel p -> y rows m0.. (or acc_out), columns 64 p .. 64 p + 63 (masked at N) */
static inline __attribute__((always_inline)) void w8a8_tile(const w8a8_t *g, const uint8_t *a, int64_t m0,
                                                            int64_t p, const float *sa, const int32_t *za,
                                                            const int32_t *rt, const int MR) {
    const int8_t *bp = g->wp + p * g->kp * W8_NR;
    const int64_t kp = g->kp, K4 = kp / 4;
    __m512i acc[W8_MR][4];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[r][j] = _mm512_setzero_si512();
    for (int64_t t = 0; t < K4; t++) {
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
        const __mmask16 mk = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
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
#else
static void w8a8_tile(const w8a8_t *g, const uint8_t *a, int64_t m0, int64_t p, const float *sa, const int32_t *za,
                      const int32_t *rt, const int MR) {
    const int8_t *bp = g->wp + p * g->kp * W8_NR;
    for (int r = 0; r < MR; r++)
        for (int64_t j = 0; j < W8_NR && p * W8_NR + j < g->N; j++) {
            const int64_t n = p * W8_NR + j;
            uint32_t acc = 0;
            for (int64_t k = 0; k < g->K; k++)
                acc += (uint32_t)((int32_t)a[r * g->kp + k] * (int32_t)bp[(k / 4) * 256 + 4 * j + k % 4]);
            acc -= (uint32_t)za[r] * (uint32_t)g->csum[n];
            if (g->zc) acc -= (uint32_t)rt[r] * (uint32_t)g->zc[n];
            const int32_t v = (int32_t)acc;
            if (g->acc_out) g->acc_out[(m0 + r) * g->N + n] = v;
            else g->y[(m0 + r) * g->N + n] = fmaf((float)v, sa[r] * g->ws[n], g->bias ? g->bias[n] : 0.0f);
        }
}
#endif

/* rows a[0:rows] starting at y row m0, panels [p0, p1) */
static void w8a8_block(const w8a8_t *g, const uint8_t *a, int64_t m0, int64_t rows, int64_t p0, int64_t p1,
                       const float *sa, const int32_t *za, const int32_t *rt) {
    const int64_t pbytes = g->kp * W8_NR, tiles = (rows + W8_MR - 1) / W8_MR;
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
            const int32_t *z = za + i, *t = rt + i;
            switch (rows - i >= W8_MR ? W8_MR : (int)(rows - i)) {
                case 6: w8a8_tile(g, ai, m0 + i, p, s, z, t, 6); break;
                case 5: w8a8_tile(g, ai, m0 + i, p, s, z, t, 5); break;
                case 4: w8a8_tile(g, ai, m0 + i, p, s, z, t, 4); break;
                case 3: w8a8_tile(g, ai, m0 + i, p, s, z, t, 3); break;
                case 2: w8a8_tile(g, ai, m0 + i, p, s, z, t, 2); break;
                default: w8a8_tile(g, ai, m0 + i, p, s, z, t, 1); break;
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
    int32_t *za = malloc(sizeof(int32_t) * (size_t)rows_max), *rt = malloc(sizeof(int32_t) * (size_t)rows_max);
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
int qb_w8a8_gemm(const float *x, const int8_t *wp, const int32_t *csum, const int32_t *zc, const float *ws,
                 const float *bias, float *y, int32_t *acc_out, int64_t M, int64_t N, int64_t K, int per_row,
                 int symmetric, int is_signed, int bits, int have_qparams, float scale0, int32_t zp0,
                 int threads) {
    if (bits < 2 || bits > 8 || M < 0 || N < 1 || K < 1 || K > W8_MAX_K || !(y || acc_out)) return 1;
    if (threads < 1) threads = 1;
    if (threads > 32) threads = 32;
    w8a8_t g = {x, wp, csum, zc, ws, bias, y, acc_out, M, N, K, (K + 3) / 4 * 4, (N + W8_NR - 1) / W8_NR,
                {0}, scale0, zp0, per_row && !have_qparams, 0, NULL};
    _Atomic int oom = 0;
    _Atomic int64_t next_row = 0;
    g.oom = &oom;
    g.next_row = &next_row;
    g.threads = threads;
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
