/*
 * threads.c - the single owner of the core's thread count.
 *
 * OpenMP owns the threads: every parallel region uses vgg_get_num_threads()
 * through a num_threads() clause (so the count holds whichever Python thread
 * calls in), and the products (gemm.c) are serial code run inside those regions
 * on disjoint blocks. OpenBLAS, still linked, is kept at one thread: a pthreads
 * OpenBLAS pool spinning beside OpenMP's would take a core from it.
 *
 * Two ways libgomp can take the process down are headed off here:
 * - fork: a child inherits libgomp's record of the parent's threads but not the
 *   threads, and its first team of more than one waits for them for ever. A
 *   pthread_atfork handler puts a child forked after a team had started on one
 *   thread for good (a team of one starts no thread and runs).
 * - a failed thread start (a memory or thread limit) makes libgomp print an
 *   error and exit. vgg_threads_start starts the threads a team will need once,
 *   before the work, so that the caller gets an error code instead.
 */
#define _POSIX_C_SOURCE 200809L /* pthread_atfork, strtoull under -std=c11 */

#include "vgg_internal.h"

#include <errno.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <pthread.h>
#endif

static int g_num_threads = 0; /* 0: not yet initialised */
static int g_teams;           /* a team of more than one thread may have started */
static int g_forked;          /* this process was forked after that: one thread */

static int default_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

#ifdef _OPENMP
/* Team size this OS thread is known to be able to start (itself included).
 * libgomp keeps a thread's team for its next region, so the threads are
 * started again only when the team grows. */
static _Thread_local size_t team_ready = 1;

/* In the child, inside fork(): only async-signal-safe work (stores). */
static void after_fork_in_child(void) {
    team_ready = 1;
    if (__atomic_load_n(&g_teams, __ATOMIC_RELAXED)) {
        g_forked = 1;
        g_num_threads = 1;
    }
}

static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;

static void register_fork_handler(void) {
    /* ENOMEM here leaves a forked child unprotected, nothing else */
    (void)pthread_atfork(NULL, NULL, after_fork_in_child);
}
#endif

void vgg_set_num_threads(int n) {
#ifdef _OPENMP
    pthread_once(&fork_handler_once, register_fork_handler);
#endif
    if (n < 1) n = 1;
    if (g_forked) n = 1; /* libgomp cannot start threads again after fork */
    g_num_threads = n;
    vgg_blas_set_num_threads(1);
}

int vgg_get_num_threads(void) {
    if (g_num_threads == 0) vgg_set_num_threads(default_threads());
    return g_num_threads;
}

int vgg_team(int n) {
    if (n > 1 && !__atomic_load_n(&g_teams, __ATOMIC_RELAXED))
        __atomic_store_n(&g_teams, 1, __ATOMIC_RELAXED);
    return n;
}

int vgg_threads_forked(void) { return g_forked; }

#ifdef _OPENMP
/* The stack size libgomp gives its threads: $OMP_STACKSIZE or $GOMP_STACKSIZE
 * (a number, then B, K, M or G; K when none), else 0 for the default. */
static size_t omp_stack_size(void) {
    static const char *const names[] = {"OMP_STACKSIZE", "GOMP_STACKSIZE"};
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(names[i]);
        if (!v || !*v) continue;
        char *end;
        errno = 0;
        const unsigned long long x = strtoull(v, &end, 10);
        if (errno || end == v) return 0;
        while (*end == ' ' || *end == '\t') end++;
        unsigned shift = 10;
        switch (*end) {
        case 'b': case 'B': shift = 0; end++; break;
        case 'k': case 'K': shift = 10; end++; break;
        case 'm': case 'M': shift = 20; end++; break;
        case 'g': case 'G': shift = 30; end++; break;
        default: break;
        }
        while (*end == ' ' || *end == '\t') end++;
        if (*end || x > ((unsigned long long)SIZE_MAX >> shift)) return 0;
        return (size_t)(x << shift);
    }
    return 0;
}

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int go;
} start_gate;

/* A probe thread holds its stack until every probe has started. */
static void *wait_at_gate(void *arg) {
    start_gate *g = arg;
    pthread_mutex_lock(&g->mu);
    while (!g->go) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    return NULL;
}
#endif

int vgg_threads_start(int *err) {
    if (err) *err = 0;
#ifdef _OPENMP
    const size_t want = (size_t)vgg_get_num_threads();
    if (want <= team_ready) return VGG_OK;
    /* the threads this thread's team lacks, all alive at once, with libgomp's
     * stack size: what the next region will start */
    const size_t extra = want - team_ready;
    pthread_t *ids = malloc(extra * sizeof *ids);
    if (!ids) {
        if (err) *err = ENOMEM;
        return VGG_ERR_THREADS;
    }
    pthread_attr_t attr, *pattr = NULL;
    const size_t stack = omp_stack_size();
    if (stack && pthread_attr_init(&attr) == 0) {
        pattr = &attr;
        (void)pthread_attr_setstacksize(&attr, stack); /* EINVAL: the default, as libgomp */
    }
    start_gate g;
    g.go = 0;
    int e = pthread_mutex_init(&g.mu, NULL);
    if (e == 0 && (e = pthread_cond_init(&g.cv, NULL)) != 0) pthread_mutex_destroy(&g.mu);
    size_t started = 0;
    if (e == 0) {
        while (started < extra && (e = pthread_create(&ids[started], pattr, wait_at_gate, &g)) == 0)
            started++;
        pthread_mutex_lock(&g.mu);
        g.go = 1;
        pthread_cond_broadcast(&g.cv);
        pthread_mutex_unlock(&g.mu);
        for (size_t i = 0; i < started; i++) pthread_join(ids[i], NULL);
        pthread_cond_destroy(&g.cv);
        pthread_mutex_destroy(&g.mu);
    }
    if (pattr) pthread_attr_destroy(pattr);
    free(ids);
    if (e != 0) {
        if (err) *err = e;
        return VGG_ERR_THREADS;
    }
    team_ready = want;
#endif
    return VGG_OK;
}

size_t vgg_threads_for_buffers(size_t floats, size_t per_thread) {
    const size_t fit = floats / per_thread, want = (size_t)vgg_get_num_threads();
    return fit < want ? fit : want;
}

/* Blocks per thread between two polls of the abort callback: enough work that
 * the barrier is negligible, little enough that Ctrl-C answers fast. */
#define BLOCKS_PER_POLL 4

int vgg_run_blocks(size_t nblocks, size_t nth, float *buffers, size_t per_thread,
                   void (*block)(void *ctx, size_t bi, float *buffer), void *ctx,
                   vgg_abort_fn abort_cb, void *abort_ctx) {
    const size_t per_poll = nth * BLOCKS_PER_POLL;
    for (size_t b0 = 0; b0 < nblocks; b0 += per_poll) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t b1 = b0 + per_poll < nblocks ? b0 + per_poll : nblocks;
        VGG_OMP_FOR_DYNAMIC_N((int)nth)
        for (size_t bi = b0; bi < b1; bi++)
            block(ctx, bi, buffers + vgg_thread_index() * per_thread);
    }
    return VGG_OK;
}

int vgg_have_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

const char *vgg_status_str(int status) {
    switch (status) {
    case VGG_OK: return "ok";
    case VGG_ERR_ARG: return "invalid argument";
    case VGG_ERR_SHAPE: return "inconsistent shapes";
    case VGG_ERR_NOMEM: return "workspace too small";
    case VGG_ERR_INTERNAL: return "internal error (a bug in vggtl)";
    case VGG_ERR_CANCELLED: return "cancelled";
    case VGG_ERR_NONFINITE: return "a value became NaN or infinite";
    case VGG_ERR_THREADS: return "the threads could not be started";
    default: return "unknown status";
    }
}
