/*
 * blas.c - the one place that names BLAS symbols.
 *
 * The default build links scipy-openblas32 from PyPI, whose symbols carry a
 * `scipy_` prefix (setup.py passes -DBLAS_SYMBOL_PREFIX=scipy_ and that wheel's
 * cblas.h already declares the prefixed names). A system OpenBLAS (no prefix)
 * is selected at build time with VGGTL_BLAS=system.
 */
#include "vgg_internal.h"

#include <cblas.h>

#define VGG_CAT_(a, b) a##b
#define VGG_CAT(a, b) VGG_CAT_(a, b)
#ifdef BLAS_SYMBOL_PREFIX
#define VGG_BLAS(name) VGG_CAT(BLAS_SYMBOL_PREFIX, name)
#else
#define VGG_BLAS(name) name
#endif

/* OpenBLAS extensions, declared here so that a cblas.h without them still builds. */
void VGG_BLAS(openblas_set_num_threads)(int num_threads);
char *VGG_BLAS(openblas_get_config)(void);
char *VGG_BLAS(openblas_get_corename)(void);

void vgg_sgemm(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
               const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
               size_t ldc) {
    VGG_BLAS(cblas_sgemm)(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                          trans_b ? CblasTrans : CblasNoTrans, (blasint)m, (blasint)n,
                          (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb, beta, c,
                          (blasint)ldc);
}

void vgg_blas_set_num_threads(int n) { VGG_BLAS(openblas_set_num_threads)(n); }

const char *vgg_blas_info(void) {
    const char *s = VGG_BLAS(openblas_get_config)();
    return s ? s : "OpenBLAS";
}

const char *vgg_blas_corename(void) {
    const char *s = VGG_BLAS(openblas_get_corename)();
    return s ? s : "unknown";
}

/* Blocks of at least this many rows / columns, so tiny products stay whole. */
#define MIN_BLOCK 16

void vgg_sgemm_parallel(int trans_a, int trans_b, size_t m, size_t n, size_t k, float alpha,
                        const float *a, size_t lda, const float *b, size_t ldb, float beta,
                        float *c, size_t ldc) {
    size_t nth = (size_t)vgg_get_num_threads();
    const int by_rows = m >= n;
    const size_t len = by_rows ? m : n;
    if (nth > len / MIN_BLOCK) nth = len / MIN_BLOCK;
    if ((double)m * (double)n * (double)k < (double)(1 << 20)) nth = 1; /* not worth a team */
    if (nth <= 1) {
        vgg_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    /* blocks of a multiple of 16 so each thread's edge matches the microkernel */
    size_t block = (len + nth - 1) / nth;
    block = (block + 15) / 16 * 16;
    const size_t nblocks = (len + block - 1) / block;
    VGG_OMP_FOR
    for (size_t i = 0; i < nblocks; i++) {
        const size_t s0 = i * block, s1 = s0 + block < len ? s0 + block : len;
        if (by_rows) {
            /* rows s0..s1 of A (of A^T: columns) and of C */
            const float *ai = trans_a ? a + s0 : a + s0 * lda;
            vgg_sgemm(trans_a, trans_b, s1 - s0, n, k, alpha, ai, lda, b, ldb, beta,
                      c + s0 * ldc, ldc);
        } else {
            /* columns s0..s1 of B (of B^T: rows) and of C */
            const float *bi = trans_b ? b + s0 * ldb : b + s0;
            vgg_sgemm(trans_a, trans_b, m, s1 - s0, k, alpha, a, lda, bi, ldb, beta, c + s0,
                      ldc);
        }
    }
}
