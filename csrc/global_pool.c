/*
 * global_pool.c - global average / max pooling over H and W, NHWC -> (N, C),
 * as Keras's GlobalAveragePooling2D / GlobalMaxPooling2D (VGG16's pooling=).
 * Sums are accumulated in double so that large maps do not lose precision.
 */
#include "vgg_internal.h"

int vgg_global_pool_forward(float *out, const float *x, int mode, size_t n, size_t h,
                            size_t w, size_t c) {
    VGG_CHECK(out && x, VGG_ERR_ARG);
    VGG_CHECK(mode == VGG_POOL_AVG || mode == VGG_POOL_MAX, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1 && c >= 1, VGG_ERR_SHAPE);
    const size_t hw = h * w;
    VGG_OMP_FOR_COLLAPSE2_IF(n * hw * c)
    for (size_t i = 0; i < n; i++) {
        for (size_t ch = 0; ch < c; ch++) {
            const float *xi = x + i * hw * c + ch;
            if (mode == VGG_POOL_AVG) {
                double s = 0.0;
                for (size_t p = 0; p < hw; p++) s += xi[p * c];
                out[i * c + ch] = (float)(s / (double)hw);
            } else {
                float m = xi[0];
                for (size_t p = 1; p < hw; p++) {
                    const float v = xi[p * c];
                    if (v > m || v != v) m = v;
                }
                out[i * c + ch] = m;
            }
        }
    }
    return VGG_OK;
}
