/*
 * blas.c - the one place that names BLAS symbols.
 *
 * The default build links scipy-openblas32 from PyPI, whose symbols carry a
 * `scipy_` prefix (setup.py passes -DBLAS_SYMBOL_PREFIX=scipy_ and that wheel's
 * cblas.h already declares the prefixed names). A system OpenBLAS (no prefix)
 * is selected at build time with VGGTL_BLAS=system.
 *
 * Every product vggtl computes is gemm.c's; OpenBLAS is still linked, kept on
 * one thread (so its pool never spins beside OpenMP's) and reported by
 * vggtl.info(), but no path calls its sgemm.
 */
#include "vgg_internal.h"

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

void vgg_blas_set_num_threads(int n) { VGG_BLAS(openblas_set_num_threads)(n); }

const char *vgg_blas_info(void) {
    const char *s = VGG_BLAS(openblas_get_config)();
    return s ? s : "OpenBLAS";
}

const char *vgg_blas_corename(void) {
    const char *s = VGG_BLAS(openblas_get_corename)();
    return s ? s : "unknown";
}
