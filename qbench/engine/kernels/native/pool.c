/* The thread pool that every entry point splits its work with (parallel_for), and qb_isa. Part of qbench's
 * native library; qbench_cpu.h maps its files. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "qbench_cpu.h"

/* how this build runs: the ISA switch of qbench_cpu.h, and OpenMP or the pool below */
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
void parallel_for(task_fn fn, void *ctx, int64_t n, int threads, int64_t align) {
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
