/*
 * maxpool2x2.c - 2x2 max-pooling, stride 2, 'valid' padding, NHWC.
 * Odd sizes floor (the last row / column is dropped), as Keras's MaxPooling2D.
 * NaN propagates (a comparison with NaN keeps the NaN).
 */
#include "vgg_internal.h"

#include <string.h>


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
                    float m = vgg_max_nan(a[ch], a[c + ch]);
                    m = vgg_max_nan(m, b[ch]);
                    o[ox * c + ch] = vgg_max_nan(m, b[c + ch]);
                }
            }
        }
    }
    return VGG_OK;
}

/* Backward: the gradient of each window goes to its first maximum in row-major
 * scan order (top-left, top-right, bottom-left, bottom-right), as TensorFlow's
 * MaxPoolGrad and PyTorch's max_pool2d do on ties; rows / columns dropped by an
 * odd size get zero. Windows do not overlap, so threads write disjoint cells. */
int vgg_maxpool2x2_backward(float *dx, const float *dout, const float *x, size_t n, size_t h,
                            size_t w, size_t c) {
    VGG_CHECK(dx && dout && x, VGG_ERR_ARG);
    VGG_CHECK(h >= 2 && w >= 2 && c >= 1, VGG_ERR_SHAPE);
    const size_t oh = h / 2, ow = w / 2;
    VGG_OMP_FOR_COLLAPSE2_IF(n * h * w * c)
    for (size_t i = 0; i < n; i++) {
        for (size_t y = 0; y < h; y++) {
            const size_t oy = y / 2;
            float *dxr = dx + ((i * h + y) * w) * c;
            if (y % 2 == 1 || oy >= oh) {
                /* odd rows are written by their window's even row below;
                 * a dropped last row is zero */
                if (oy >= oh) memset(dxr, 0, w * c * sizeof(float));
                continue;
            }
            float *dxr1 = dxr + w * c;
            const float *r0 = x + ((i * h + y) * w) * c, *r1 = r0 + w * c;
            const float *g = dout + ((i * oh + oy) * ow) * c;
            for (size_t ox = 0; ox < ow; ox++) {
                for (size_t ch = 0; ch < c; ch++) {
                    const size_t a = 2 * ox * c + ch, b = a + c;
                    const float v[4] = {r0[a], r0[b], r1[a], r1[b]};
                    int best = 0;
                    for (int k = 1; k < 4; k++)
                        if (v[k] > v[best] || (v[k] != v[k] && v[best] == v[best])) best = k;
                    dxr[a] = best == 0 ? g[ox * c + ch] : 0.0f;
                    dxr[b] = best == 1 ? g[ox * c + ch] : 0.0f;
                    dxr1[a] = best == 2 ? g[ox * c + ch] : 0.0f;
                    dxr1[b] = best == 3 ? g[ox * c + ch] : 0.0f;
                }
            }
            if (w % 2) { /* dropped last column */
                memset(dxr + (w - 1) * c, 0, c * sizeof(float));
                memset(dxr1 + (w - 1) * c, 0, c * sizeof(float));
            }
        }
    }
    return VGG_OK;
}
