/*
 * dense.c - fully connected layer: out (N,Out) = act(x (N,In) @ W (In,Out) + b).
 * The forward product is vggtl's own (gemm.c), the bias added after it and the
 * activation run in place. The backward products are vggtl's own too, so a
 * head trains to the same bits at any thread count and on any CPU.
 */
#include "vgg_internal.h"

int vgg_dense_forward(float *out, const float *x, const float *kernel, const float *bias,
                      int activation, size_t n, size_t in, size_t outdim) {
    VGG_CHECK(out && x && kernel && bias, VGG_ERR_ARG);
    VGG_CHECK(in >= 1 && outdim >= 1, VGG_ERR_SHAPE);
    VGG_CHECK(n <= VGG_BLAS_MAX_DIM && in <= VGG_BLAS_MAX_DIM && outdim <= VGG_BLAS_MAX_DIM,
              VGG_ERR_SHAPE);
    VGG_CHECK(activation >= VGG_ACT_LINEAR && activation <= VGG_ACT_SIGMOID, VGG_ERR_ARG);
    if (n == 0) return VGG_OK;
    /* vggtl's own product (gemm.c), not BLAS: a row's output is then a function
     * of that row alone, whatever batch it came in (predictions do not change
     * with their neighbours); the bias is added after the product, as Keras does */
    vgg_gemm_b_parallel(out, outdim, x, in, kernel, outdim, n, outdim, in);
    VGG_OMP_FOR_IF(n * outdim)
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < outdim; j++) out[i * outdim + j] += bias[j];
    return vgg_activation_forward(out, activation, n, outdim);
}

int vgg_dense_backward(float *dx, float *dw, float *db, const float *dz, const float *x,
                       const float *kernel, size_t n, size_t in, size_t outdim, float *scratch) {
    VGG_CHECK(db && dz && x && kernel && (scratch || !dx), VGG_ERR_ARG);
    VGG_CHECK(n >= 1 && in >= 1 && outdim >= 1, VGG_ERR_SHAPE);
    VGG_CHECK(n <= VGG_BLAS_MAX_DIM && in <= VGG_BLAS_MAX_DIM && outdim <= VGG_BLAS_MAX_DIM,
              VGG_ERR_SHAPE);
    /* dW (in, out) = x^T (in, n) @ dz (n, out); none when dw is NULL (a caller
     * that fuses it with the update, or needs dL/dx only) */
    if (dw) vgg_gemm_at_parallel(dw, outdim, x, in, dz, outdim, in, outdim, n, 0);
    /* db = column sums of dz; each thread owns a slice of columns */
    VGG_OMP_FOR_IF(n * outdim)
    for (size_t j = 0; j < outdim; j++) {
        float s = 0.0f;
        for (size_t i = 0; i < n; i++) s += dz[i * outdim + j];
        db[j] = s;
    }
    /* dx (n, in) = dz (n, out) @ W^T (out, in), W^T packed into the scratch */
    if (dx) {
        vgg_gemm_pack_bt(scratch, outdim * VGG_GEMM_NR, kernel, outdim, outdim, in);
        vgg_gemm_parallel(dx, in, dz, outdim, scratch, n, in, outdim);
    }
    return VGG_OK;
}
