/*
 * winograd_tiles.h - what both Winograd paths (winograd.c F(3x3), F(4x4) and F(6x6) in float32,
 * winograd_bf16.c F(2x2) in bf16) do alike around their transforms, VW
 * channels at a time: read a kernel's 9 taps, gather an input patch with the
 * 'same' zero padding, and write an output tile; and prefetch the next tile's
 * patch and output lines (winograd.c).
 *
 * The tile write adds the bias, then ReLU, and writes the layer's output or,
 * with `pool`, its 2x2 max-pool (the next layer of VGG16 is a pool after every
 * block's last conv), so the full-size activation is never written and read
 * back. Same bits as the unfused layers: ReLU as in conv3x3.c and the pool's
 * maximum as in maxpool2x2.c, over the same four values in the same order, NaN
 * kept.
 *
 * Included by the files that define VW; the bodies take their caller's target.
 */
#ifndef VGG_WINOGRAD_TILES_H
#define VGG_WINOGRAD_TILES_H

#include "vgg_internal.h"

#include <string.h>

#define VGG_TILE_INLINE static inline __attribute__((always_inline))

/* Sizes of a call: N images of h x w, Cin -> Cout, th x tw tiles per image. */
typedef struct {
    size_t n, h, w, cin, cout, th, tw;
} wino_shape;

/* g[q][0..VW) <- the 9 taps q = dy*3 + dx of input channel c, output channels
 * k0..k0+len of an HWIO kernel; zeros past len (len 0: all zeros). Whole
 * vectors by fixed-length copies: a per-lane bound made this scalar. */
VGG_TILE_INLINE void vgg_kernel_taps(float g[9][VW], const float *kernel, size_t cin, size_t cout,
                                     size_t c, size_t k0, size_t len) {
    for (int q = 0; q < 9; q++) {
        if (len == 0) {
            memset(g[q], 0, sizeof g[q]);
            continue;
        }
        const float *src = kernel + ((size_t)q * cin + c) * cout + k0;
        if (len == VW) {
            memcpy(g[q], src, sizeof g[q]);
        } else {
            for (size_t v = 0; v < VW; v++) g[q][v] = v < len ? src[v] : 0.0f;
        }
    }
}

/* d (side x side x VW) <- the input patch whose top-left pixel is (y0, x0)
 * (either may be -1), channels c0..c0+len of image x_img (h, w, cin); zeros
 * outside the image ('same' padding) and past len. */
VGG_TILE_INLINE void vgg_tile_gather(float *d, int side, const float *x_img, long y0, long x0,
                                     size_t h, size_t w, size_t cin, size_t c0, size_t len) {
    for (int i = 0; i < side; i++) {
        const long yy = y0 + i;
        for (int j = 0; j < side; j++) {
            const long xx = x0 + j;
            float *o = d + ((size_t)i * (size_t)side + (size_t)j) * VW;
            if (yy < 0 || yy >= (long)h || xx < 0 || xx >= (long)w) {
                memset(o, 0, VW * sizeof(float)); /* zero padding */
            } else {
                const float *src = x_img + ((size_t)yy * w + (size_t)xx) * cin + c0;
                if (len == VW) {
                    memcpy(o, src, VW * sizeof(float));
                } else {
                    for (size_t v = 0; v < VW; v++) o[v] = v < len ? src[v] : 0.0f;
                }
            }
        }
    }
}

/* Prefetches into L2 channels c0..c0+VW of the pixels in rows [ya, yb) and
 * columns [xa, xb) of image x_img (h, w, cin), clipped to the image: what the
 * next tile will gather that this one did not. The activations are far larger
 * than the caches and a patch spans several rows of the map, a pattern the
 * hardware prefetchers do not follow: without this the gather waits on memory
 * for most of the input transform's time. */
VGG_TILE_INLINE void vgg_tile_prefetch_rect(const float *x_img, long ya, long yb, long xa, long xb,
                                            size_t h, size_t w, size_t cin, size_t c0) {
    for (long yy = ya < 0 ? 0 : ya; yy < yb && yy < (long)h; yy++)
        for (long xx = xa < 0 ? 0 : xa; xx < xb && xx < (long)w; xx++)
            __builtin_prefetch(x_img + ((size_t)yy * w + (size_t)xx) * cin + c0, 0, 1);
}

/* Prefetches into L2 the output lines (channels k0..k0+VW) that vgg_tile_store
 * will write for the side x side tile at (y0, x0) of image `img`: lines read
 * before they are written, so the store need not wait for them. */
VGG_TILE_INLINE void vgg_tile_prefetch_store(const float *out, size_t side, int pool, size_t h,
                                             size_t w, size_t cout, size_t img, size_t y0,
                                             size_t x0, size_t k0) {
    if (pool) { /* the pooled map: half the rows, columns and tile */
        h /= 2;
        w /= 2;
        y0 /= 2;
        x0 /= 2;
        side /= 2;
    }
    const float *out_img = out + img * h * w * cout;
    for (size_t yy = y0; yy < y0 + side && yy < h; yy++)
        for (size_t xx = x0; xx < x0 + side && xx < w; xx++)
            __builtin_prefetch(out_img + (yy * w + xx) * cout + k0, 0, 1);
}

/* Prefetches into L2 one line at each of p, p + stride, ... (count of them). */
VGG_TILE_INLINE void vgg_prefetch_strided(const float *p, size_t stride, int count) {
    for (int i = 0; i < count; i++) __builtin_prefetch(p + (size_t)i * stride, 0, 1);
}

/* b[0..VW) <- bias[k0..k0+len), zeros past len. A whole vector by a fixed-length
 * copy: per-lane conditions left b in 16 scalar registers, and the tile store
 * built every output vector lane by lane. */
VGG_TILE_INLINE void vgg_tile_bias(float *b, const float *bias, size_t k0, size_t len) {
    if (len == VW) {
        memcpy(b, bias + k0, VW * sizeof(float));
    } else {
        for (size_t v = 0; v < VW; v++) b[v] = v < len ? bias[k0 + v] : 0.0f;
    }
}

/* Whole vectors by GCC's vector extension, 8 floats (32 bytes) at a time: a
 * lane-by-lane select was compiled into scalar compares and blends, and so is a
 * comparison of a vector wider than the target's (16 floats under AVX2). */
typedef float vgg_tile_vf __attribute__((vector_size(8 * sizeof(float))));
typedef int vgg_tile_vi __attribute__((vector_size(8 * sizeof(int))));
_Static_assert(sizeof(float) == sizeof(int), "the ReLU masks float lanes with int lanes");
_Static_assert(VW % 8 == 0, "the tile's vectors are whole chunks of 8 floats");

/* o <- t + b, then ReLU when asked, written so that NaN propagates (as in
 * torch: NaN < 0 is false, so NaN is kept). */
VGG_TILE_INLINE void vgg_bias_relu(float *o, const float *t, const float *b, int relu) {
    for (int k = 0; k < VW; k += 8) {
        vgg_tile_vf a, c;
        memcpy(&a, t + k, sizeof a);
        memcpy(&c, b + k, sizeof c);
        a = a + c;
        if (relu) {
            const vgg_tile_vf zero = {0.0f};
            vgg_tile_vi bits;
            memcpy(&bits, &a, sizeof bits);
            bits &= ~(a < zero); /* all ones where negative */
            memcpy(&a, &bits, sizeof a);
        }
        memcpy(o + k, &a, sizeof a);
    }
}

/* o <- vgg_max_nan(a, b) in each lane: a where a > b or a is NaN, else b. */
VGG_TILE_INLINE void vgg_max_nan_vec(float *o, const float *a, const float *b) {
    for (int k = 0; k < VW; k += 8) {
        vgg_tile_vf x, y;
        vgg_tile_vi xi, yi;
        memcpy(&x, a + k, sizeof x);
        memcpy(&y, b + k, sizeof y);
        const vgg_tile_vi keep = (x > y) | (x != x);
        memcpy(&xi, &x, sizeof xi);
        memcpy(&yi, &y, sizeof yi);
        xi = (xi & keep) | (yi & ~keep);
        memcpy(o + k, &xi, sizeof xi);
    }
}

/* dst[0..len) <- val: a fixed-length copy for whole vectors (a variable-length
 * one is a library call per pixel) */
VGG_TILE_INLINE void vgg_tile_copy(float *dst, const float *val, size_t len) {
    if (len == VW) memcpy(dst, val, VW * sizeof(float));
    else memcpy(dst, val, len * sizeof(float));
}

/* out <- act(y + bias) for a side x side tile at (y0, x0) of image `img`, or its
 * 2x2 max-pool (out then is (N, h/2, w/2, cout); y0, x0 and side are even, or
 * the one tile covers the map, so pool windows never straddle tiles; windows past the image, whose second row or
 * column is missing, are dropped, as maxpool2x2 floors). y is [side][side][VW];
 * len of the VW channels from k0 are written. */
VGG_TILE_INLINE void
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
                float *dst = out_img + ((y0 + i) * w + x0 + j) * cout + k0;
                if (len == VW) { /* straight to the output: no copy through val */
                    vgg_bias_relu(dst, t, b, relu);
                } else {
                    vgg_bias_relu(val, t, b, relu);
                    memcpy(dst, val, len * sizeof(float));
                }
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
                vgg_bias_relu(q[k], t, b, relu);
            }
            vgg_max_nan_vec(val, q[0], q[1]);
            vgg_max_nan_vec(val, val, q[2]);
            vgg_max_nan_vec(val, val, q[3]);
            vgg_tile_copy(out_img + ((y0 / 2 + a) * pw + x0 / 2 + c) * cout + k0, val, len);
        }
    }
}

#endif
