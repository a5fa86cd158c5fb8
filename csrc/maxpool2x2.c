/*
 * maxpool2x2.c - 2x2 max-pooling, stride 2, 'valid' padding, NHWC.
 * Odd sizes floor (the last row / column is dropped), as Keras's MaxPooling2D.
 * NaN propagates (a comparison with NaN keeps the NaN).
 */
#include "vgg_internal.h"

static inline float max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

int vgg_maxpool2x2_forward(float *out, const float *x, size_t n, size_t h, size_t w, size_t c) {
    VGG_CHECK(out && x, VGG_ERR_ARG);
    VGG_CHECK(h >= 2 && w >= 2 && c >= 1, VGG_ERR_SHAPE);
    const size_t oh = h / 2, ow = w / 2;
    VGG_OMP_FOR_COLLAPSE2_IF(n * h * w * c)
    for (size_t i = 0; i < n; i++) {
        for (size_t oy = 0; oy < oh; oy++) {
            const float *r0 = x + ((i * h + 2 * oy) * w) * c;
            const float *r1 = r0 + w * c;
            float *o = out + ((i * oh + oy) * ow) * c;
            for (size_t ox = 0; ox < ow; ox++) {
                const float *a = r0 + 2 * ox * c, *b = r1 + 2 * ox * c;
                for (size_t ch = 0; ch < c; ch++) {
                    float m = max_nan(a[ch], a[c + ch]);
                    m = max_nan(m, b[ch]);
                    o[ox * c + ch] = max_nan(m, b[c + ch]);
                }
            }
        }
    }
    return VGG_OK;
}
