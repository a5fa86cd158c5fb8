/*
 * threads.c - the single owner of the core's thread count.
 *
 * OpenMP owns the threads: every parallel region uses vgg_get_num_threads()
 * through a num_threads() clause (so the count holds whichever Python thread
 * calls in), and BLAS is kept single-threaded and called inside those regions on
 * disjoint blocks (vgg_sgemm_parallel, conv3x3.c). Measured on the 2-core
 * machine: letting a pthreads OpenBLAS and OpenMP take turns ran 2 threads slower
 * than 1 (the idle pool spins while the other works); one owner fixes that.
 */
#include "vgg_internal.h"

static int g_num_threads = 0; /* 0: not yet initialised */

static int default_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

void vgg_set_num_threads(int n) {
    if (n < 1) n = 1;
    g_num_threads = n;
    vgg_blas_set_num_threads(1);
}

int vgg_get_num_threads(void) {
    if (g_num_threads == 0) vgg_set_num_threads(default_threads());
    return g_num_threads;
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
    default: return "unknown status";
    }
}
