/*
 * tile_store.h - the last step of both Winograd output transforms (winograd.c,
 * winograd_bf16.c): a tile of output pixels, VW channels each, plus bias, then
 * ReLU, written to the layer's output or, with `pool`, 2x2 max-pooled on the
 * way out (the next layer of VGG16 is a pool after every block's last conv), so
 * the full-size activation is never written and read back.
 *
 * Same bits as the unfused layers: ReLU as in conv3x3.c and the pool's maximum
 * as in maxpool2x2.c, over the same four values in the same order, NaN kept.
 * Included by the files that define VW; the bodies take their caller's target.
 */
#ifndef VGG_TILE_STORE_H
#define VGG_TILE_STORE_H

#include "vgg_internal.h"

#include <string.h>

/* dst[0..len) <- val: a fixed-length copy for whole vectors (a variable-length
 * one is a library call per pixel) */
static inline __attribute__((always_inline)) void vgg_tile_copy(float *dst, const float *val,
                                                                size_t len) {
    if (len == VW) memcpy(dst, val, VW * sizeof(float));
    else memcpy(dst, val, len * sizeof(float));
}

/* out <- act(y + bias) for a side x side tile at (y0, x0) of image `img`, or its
 * 2x2 max-pool (out then is (N, h/2, w/2, cout); y0, x0 and side are even, so
 * pool windows never straddle tiles; windows past the image, whose second row or
 * column is missing, are dropped, as maxpool2x2 floors). y is [side][side][VW];
 * len of the VW channels from k0 are written. */
static inline __attribute__((always_inline)) void
vgg_tile_store(float *out, const float *y, size_t side, const float *b, int relu, int pool,
               size_t h, size_t w, size_t cout, size_t img, size_t y0, size_t x0, size_t k0,
               size_t len) {
    float val[VW];
    if (!pool) {
        const size_t ny = h - y0 < side ? h - y0 : side, nx = w - x0 < side ? w - x0 : side;
        float *out_img = out + img * h * w * cout;
        for (size_t i = 0; i < ny; i++) {
            for (size_t j = 0; j < nx; j++) {
                const float *t = y + (i * side + j) * VW;
                for (int v = 0; v < VW; v++) val[v] = t[v] + b[v];
                if (relu) /* written so that NaN propagates, as in torch */
                    for (int v = 0; v < VW; v++) val[v] = val[v] < 0.0f ? 0.0f : val[v];
                vgg_tile_copy(out_img + ((y0 + i) * w + x0 + j) * cout + k0, val, len);
            }
        }
        return;
    }
    const size_t ph = h / 2, pw = w / 2;
    float *out_img = out + img * ph * pw * cout;
    for (size_t a = 0; a < side / 2 && y0 / 2 + a < ph; a++) {
        for (size_t c = 0; c < side / 2 && x0 / 2 + c < pw; c++) {
            float q[4][VW];
            for (int k = 0; k < 4; k++) { /* (0,0), (0,1), (1,0), (1,1): maxpool2x2's order */
                const float *t = y + ((2 * a + (size_t)(k >> 1)) * side + 2 * c + (size_t)(k & 1)) * VW;
                for (int v = 0; v < VW; v++) q[k][v] = t[v] + b[v];
                if (relu)
                    for (int v = 0; v < VW; v++) q[k][v] = q[k][v] < 0.0f ? 0.0f : q[k][v];
            }
            for (int v = 0; v < VW; v++) {
                float m = vgg_max_nan(q[0][v], q[1][v]);
                m = vgg_max_nan(m, q[2][v]);
                val[v] = vgg_max_nan(m, q[3][v]);
            }
            vgg_tile_copy(out_img + ((y0 / 2 + a) * pw + x0 / 2 + c) * cout + k0, val, len);
        }
    }
}

#endif
