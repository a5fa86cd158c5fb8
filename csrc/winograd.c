/*
 * winograd.c - 3x3 convolution (stride 1, 'same' zero padding, NHWC) by
 * Winograd's minimal filtering F(m x m, 3x3) in float32, m = 3, 4 or 6 (Lavin &
 * Gray, "Fast Algorithms for Convolutional Neural Networks", 2015).
 *
 * Each m x m tile of output pixels comes from the a x a input patch around it
 * (a = m + 2):
 *   Y = A^T [ (G g G^T) (.) (B^T d B) ] A          (.) elementwise, a x a
 * and summed over input channels, the a^2 elementwise products become a^2
 * matrix products: for each of the a^2 positions xi,
 *   M_xi (tiles, Cout) = V_xi (tiles, Cin) @ U_xi (Cin, Cout)
 * F(4x4): 36 multiplies per 16 outputs where direct convolution does 144 (4x
 * fewer); F(6x6): 64 per 36 (5.1x fewer), and on maps of 6, 12 or 24 pixels it
 * wastes less than F(4x4)'s tiles; F(3x3): 25 per 9, one tile a 3x3 map
 * (conv3x3.c chooses per layer). The larger tile's transforms have larger
 * coefficients and lose about twice the bits (tests/kernel/test_winograd.py
 * bounds each against float64). The transforms are
 * additions and multiplications by constants, memory-bound.
 *
 * Steps, for a call (a pass of N images):
 *   1. U (a^2, Cin, Cout) <- the kernel transformed, packed for gemm.c; or U
 *      prepared once by vgg_winograd_prepare and passed in (frozen weights).
 *   2. Tiles of all images are numbered (image, tile row, tile column) and cut
 *      into blocks; all threads work on one block at a time, phase by phase:
 *        V (a^2, tb, Cin)  <- input transform of the block's tiles
 *        M (a^2, tb, Cout) <- the a^2 products (gemm.c), split by position and
 *                            panels of output channels
 *        out              <- output transform, + bias, ReLU (and the 2x2 pool)
 *      Working together on a block keeps both cores busy on the small maps of
 *      small images, where one layer has fewer blocks than there are threads.
 *      Where U is small (few channels), each thread instead takes a share of
 *      the block's tiles through the three phases, its V and M rows staying in
 *      its own cache.
 *      Every tile's sums run in a fixed order (gemm.c), so neither the block
 *      size, nor the batch, nor the thread count changes a bit.
 * The transforms are vectorised over 16 channels at a time; they are compiled
 * for AVX-512, AVX2+FMA and the baseline (cpu.c picks one at run time).
 *
 * Accuracy: the points are 0, 1, -1, 2, inf (F(3x3)), 0, +-1, +-2, inf (F(4x4))
 * and 0, +-1, +-2, +-1/2, inf (F(6x6)); the error grows with the tile (Barabasz et al., arXiv 1803.10986).
 */
#include "vgg_internal.h"

#include <string.h>

#define VW 16    /* channels per vector step */

#include "winograd_tiles.h"

_Static_assert(VW == VGG_GEMM_NR, "the kernel transform writes whole panels of U");

/* Block buffers of about this many bytes, so that the few-channel layers' V and M
 * stay in L2; and at least MIN_TB tiles, so that each slice of U is reused on
 * enough rows (winograd_body.h). */
#define BLOCK_BYTES ((size_t)1 << 20)
#define MIN_TB 48
/* Layers whose U is at most this size (F(6x6) up to 128 x 128 channels) run each
 * block's tiles split between the threads rather than phase by phase: measured
 * 5-13% faster on the first layers, slower from 256 channels on. */
#define LOCAL_U_BYTES ((size_t)4 << 20)
/* Larger U (16 to 64 MiB from 256 channels on) is streamed from memory whole by
 * every block: blocks of at least this many tiles read it less often. Measured
 * as fast as MIN_TB when the memory bus is quiet and 10-20% faster on the wide
 * layers when another tenant loads it; V and M then outgrow the caches, which
 * costs less than the repeated U. */
#define MIN_TB_WIDE 288
/* strides padded by a cache line (winograd_body.h) */
#define PAD 16
/* Tiles per transform task: a few, so a block splits evenly over the threads. */
#define TILES_PER_TASK 4
/* Tiles per block of the weight gradient (winograd_body.h). */
#define GRAD_TB 256

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* ---- F(4x4, 3x3) ----------------------------------------------------------
 * The 1-D transforms for VW lanes, written with fixed trip counts and compiled
 * into one function per instruction set (the bodies take the caller's target);
 * no fused multiply-adds (-ffp-contract=off), so every level gives the same bits. */

/* o[i*os] = (B^T d)[i] for d[r*ds], r = 0..5, VW lanes each. */
ALWAYS_INLINE void bt6(float *o, size_t os, const float *d, size_t ds) {
    for (int v = 0; v < VW; v++) {
        const float d0 = d[v], d1 = d[ds + v], d2 = d[2 * ds + v], d3 = d[3 * ds + v],
                    d4 = d[4 * ds + v], d5 = d[5 * ds + v];
        o[v] = 4.0f * d0 - 5.0f * d2 + d4;
        o[os + v] = -4.0f * (d1 + d2) + d3 + d4;
        o[2 * os + v] = 4.0f * (d1 - d2) - d3 + d4;
        o[3 * os + v] = 2.0f * (d3 - d1) - d2 + d4;
        o[4 * os + v] = 2.0f * (d1 - d3) - d2 + d4;
        o[5 * os + v] = 4.0f * d1 - 5.0f * d3 + d5;
    }
}

/* o[i*os] = (A^T m)[i], i = 0..3, for m[r*ms], r = 0..5. */
ALWAYS_INLINE void at6(float *o, size_t os, const float *m, size_t ms) {
    for (int v = 0; v < VW; v++) {
        const float m0 = m[v], m1 = m[ms + v], m2 = m[2 * ms + v], m3 = m[3 * ms + v],
                    m4 = m[4 * ms + v], m5 = m[5 * ms + v];
        const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
        o[v] = m0 + s12 + s34;
        o[os + v] = d12 + 2.0f * d34;
        o[2 * os + v] = s12 + 4.0f * s34;
        o[3 * os + v] = d12 + 8.0f * d34 + m5;
    }
}

/* o[i*os] = (G g)[i], i = 0..5, for g[r*gs], r = 0..2. */
ALWAYS_INLINE void g3(float *o, size_t os, const float *g, size_t gs) {
    for (int v = 0; v < VW; v++) {
        const float g0 = g[v], g1 = g[gs + v], g2 = g[2 * gs + v];
        o[v] = 0.25f * g0;
        o[os + v] = (g0 + g1 + g2) * (-1.0f / 6.0f);
        o[2 * os + v] = (g0 - g1 + g2) * (-1.0f / 6.0f);
        o[3 * os + v] = g0 * (1.0f / 24.0f) + g1 * (1.0f / 12.0f) + g2 * (1.0f / 6.0f);
        o[4 * os + v] = g0 * (1.0f / 24.0f) - g1 * (1.0f / 12.0f) + g2 * (1.0f / 6.0f);
        o[5 * os + v] = g2;
    }
}


/* The adjoints, for the weight gradient (winograd_body.h): o[r*os] = (A y)[r],
 * r = 0..5, for y[i*ys], i = 0..3 (at6 transposed). */
ALWAYS_INLINE void a6(float *o, size_t os, const float *y, size_t ys) {
    for (int v = 0; v < VW; v++) {
        const float y0 = y[v], y1 = y[ys + v], y2 = y[2 * ys + v], y3 = y[3 * ys + v];
        const float e1 = y0 + y2, o1 = y1 + y3, e2 = y0 + 4.0f * y2, o2 = 2.0f * y1 + 8.0f * y3;
        o[v] = y0;
        o[os + v] = e1 + o1;
        o[2 * os + v] = e1 - o1;
        o[3 * os + v] = e2 + o2;
        o[4 * os + v] = e2 - o2;
        o[5 * os + v] = y3;
    }
}

/* o[j*os] = (G^T u)[j], j = 0..2, for u[i*us], i = 0..5 (g3 transposed). */
ALWAYS_INLINE void gt3(float *o, size_t os, const float *u, size_t us) {
    for (int v = 0; v < VW; v++) {
        const float u0 = u[v], u1 = u[us + v], u2 = u[2 * us + v], u3 = u[3 * us + v],
                    u4 = u[4 * us + v], u5 = u[5 * us + v];
        const float s12 = u1 + u2, d12 = u1 - u2, s34 = u3 + u4, d34 = u3 - u4;
        o[v] = 0.25f * u0 - s12 * (1.0f / 6.0f) + s34 * (1.0f / 24.0f);
        o[os + v] = d34 * (1.0f / 12.0f) - d12 * (1.0f / 6.0f);
        o[2 * os + v] = (s34 - s12) * (1.0f / 6.0f) + u5;
    }
}

#define TILE 4
#define ALPHA 6
#define NXI 36
#define WB_BT bt6
#define WB_AT at6
#define WB_G g3
#define WB_A a6
#define WB_GT gt3
#define WF(name) name##_f4
#include "winograd_body.h" /* undefines the parameters above */

/* ---- F(6x6, 3x3) ----------------------------------------------------------
 * Points 0, +-1, +-2, +-1/2, inf. The rows of B^T for +-1/2 are scaled by 1/16
 * and G's by 16 (powers of two: no rounding changes, smaller intermediates). */

/* o[i*os] = (B^T d)[i], i = 0..7, for d[r*ds], r = 0..7. */
ALWAYS_INLINE void bt8(float *o, size_t os, const float *d, size_t ds) {
    for (int v = 0; v < VW; v++) {
        const float d0 = d[v], d1 = d[ds + v], d2 = d[2 * ds + v], d3 = d[3 * ds + v],
                    d4 = d[4 * ds + v], d5 = d[5 * ds + v], d6 = d[6 * ds + v],
                    d7 = d[7 * ds + v];
        const float p = 17.0f * d3 - 4.0f * (d1 + d5), q = 17.0f * d4 - 4.0f * (d2 + d6);
        const float r = 2.0f * d1 - 10.0f * d3 + 8.0f * d5, s = d2 - 5.0f * d4 + 4.0f * d6;
        const float u = 4.0f * d1 - 5.0f * d3 + d5, w = 4.0f * d2 - 5.0f * d4 + d6;
        o[v] = 4.0f * (d0 - d6) + 21.0f * (d4 - d2);
        o[os + v] = p + q;
        o[2 * os + v] = q - p;
        o[3 * os + v] = s + r;
        o[4 * os + v] = s - r;
        o[5 * os + v] = u + 2.0f * w;
        o[6 * os + v] = 2.0f * w - u;
        o[7 * os + v] = 4.0f * (d7 - d1) + 21.0f * (d3 - d5);
    }
}

/* o[i*os] = (A^T m)[i], i = 0..5, for m[r*ms], r = 0..7. */
ALWAYS_INLINE void at8(float *o, size_t os, const float *m, size_t ms) {
    for (int v = 0; v < VW; v++) {
        const float m0 = m[v], m1 = m[ms + v], m2 = m[2 * ms + v], m3 = m[3 * ms + v],
                    m4 = m[4 * ms + v], m5 = m[5 * ms + v], m6 = m[6 * ms + v],
                    m7 = m[7 * ms + v];
        const float a = m1 + m2, b = m1 - m2, c = m3 + m4, e = m3 - m4, f = m5 + m6,
                    g = m5 - m6;
        o[v] = m0 + a + c + f;
        o[os + v] = b + 2.0f * e + 0.5f * g;
        o[2 * os + v] = a + 4.0f * c + 0.25f * f;
        o[3 * os + v] = b + 8.0f * e + 0.125f * g;
        o[4 * os + v] = a + 16.0f * c + 0.0625f * f;
        o[5 * os + v] = b + 32.0f * e + 0.03125f * g + m7;
    }
}

/* o[i*os] = (G g)[i], i = 0..7, for g[r*gs], r = 0..2. */
ALWAYS_INLINE void g8(float *o, size_t os, const float *g, size_t gs) {
    for (int v = 0; v < VW; v++) {
        const float g0 = g[v], g1 = g[gs + v], g2 = g[2 * gs + v];
        o[v] = 0.25f * g0;
        o[os + v] = (g0 + g1 + g2) * (1.0f / 18.0f);
        o[2 * os + v] = (g0 - g1 + g2) * (1.0f / 18.0f);
        o[3 * os + v] = g0 * (1.0f / 360.0f) + g1 * (1.0f / 180.0f) + g2 * (1.0f / 90.0f);
        o[4 * os + v] = g0 * (1.0f / 360.0f) - g1 * (1.0f / 180.0f) + g2 * (1.0f / 90.0f);
        o[5 * os + v] = g0 * (16.0f / 45.0f) + g1 * (8.0f / 45.0f) + g2 * (4.0f / 45.0f);
        o[6 * os + v] = g0 * (16.0f / 45.0f) - g1 * (8.0f / 45.0f) + g2 * (4.0f / 45.0f);
        o[7 * os + v] = 0.25f * g2;
    }
}

/* o[r*os] = (A y)[r], r = 0..7, for y[i*ys], i = 0..5 (at8 transposed). */
ALWAYS_INLINE void a8(float *o, size_t os, const float *y, size_t ys) {
    for (int v = 0; v < VW; v++) {
        const float y0 = y[v], y1 = y[ys + v], y2 = y[2 * ys + v], y3 = y[3 * ys + v],
                    y4 = y[4 * ys + v], y5 = y[5 * ys + v];
        const float e1 = y0 + y2 + y4, o1 = y1 + y3 + y5;
        const float e2 = y0 + 4.0f * y2 + 16.0f * y4, o2 = 2.0f * y1 + 8.0f * y3 + 32.0f * y5;
        const float e3 = y0 + 0.25f * y2 + 0.0625f * y4,
                    o3 = 0.5f * y1 + 0.125f * y3 + 0.03125f * y5;
        o[v] = y0;
        o[os + v] = e1 + o1;
        o[2 * os + v] = e1 - o1;
        o[3 * os + v] = e2 + o2;
        o[4 * os + v] = e2 - o2;
        o[5 * os + v] = e3 + o3;
        o[6 * os + v] = e3 - o3;
        o[7 * os + v] = y5;
    }
}

/* o[j*os] = (G^T u)[j], j = 0..2, for u[i*us], i = 0..7 (g8 transposed). */
ALWAYS_INLINE void gt8(float *o, size_t os, const float *u, size_t us) {
    for (int v = 0; v < VW; v++) {
        const float u0 = u[v], u1 = u[us + v], u2 = u[2 * us + v], u3 = u[3 * us + v],
                    u4 = u[4 * us + v], u5 = u[5 * us + v], u6 = u[6 * us + v],
                    u7 = u[7 * us + v];
        const float s12 = u1 + u2, d12 = u1 - u2, s34 = u3 + u4, d34 = u3 - u4, s56 = u5 + u6,
                    d56 = u5 - u6;
        o[v] = 0.25f * u0 + s12 * (1.0f / 18.0f) + s34 * (1.0f / 360.0f) + s56 * (16.0f / 45.0f);
        o[os + v] = d12 * (1.0f / 18.0f) + d34 * (1.0f / 180.0f) + d56 * (8.0f / 45.0f);
        o[2 * os + v] = s12 * (1.0f / 18.0f) + s34 * (1.0f / 90.0f) + s56 * (4.0f / 45.0f) +
                        0.25f * u7;
    }
}

#define TILE 6
#define ALPHA 8
#define NXI 64
#define WB_BT bt8
#define WB_AT at8
#define WB_G g8
#define WB_A a8
#define WB_GT gt8
#define WF(name) name##_f6
#include "winograd_body.h" /* undefines the parameters above */

/* ---- F(3x3, 3x3) ----------------------------------------------------------
 * Points 0, 1, -1, 2, inf: 25 multiplies per 9 outputs. Its one tile covers a
 * 3x3 map whole (block 5 of 48x48 and 50x50 images), where F(4x4) computes 16
 * outputs for the 9 there are. */

/* o[i*os] = (B^T d)[i], i = 0..4, for d[r*ds], r = 0..4. */
ALWAYS_INLINE void bt5(float *o, size_t os, const float *d, size_t ds) {
    for (int v = 0; v < VW; v++) {
        const float d0 = d[v], d1 = d[ds + v], d2 = d[2 * ds + v], d3 = d[3 * ds + v],
                    d4 = d[4 * ds + v];
        o[v] = 2.0f * (d0 - d2) - d1 + d3;
        o[os + v] = d3 - 2.0f * d1 - d2;
        o[2 * os + v] = 2.0f * d1 - 3.0f * d2 + d3;
        o[3 * os + v] = d3 - d1;
        o[4 * os + v] = 2.0f * (d1 - d3) - d2 + d4;
    }
}

/* o[i*os] = (A^T m)[i], i = 0..2, for m[r*ms], r = 0..4. */
ALWAYS_INLINE void at5(float *o, size_t os, const float *m, size_t ms) {
    for (int v = 0; v < VW; v++) {
        const float m0 = m[v], m1 = m[ms + v], m2 = m[2 * ms + v], m3 = m[3 * ms + v],
                    m4 = m[4 * ms + v];
        o[v] = m0 + m1 + m2 + m3;
        o[os + v] = m1 - m2 + 2.0f * m3;
        o[2 * os + v] = m1 + m2 + 4.0f * m3 + m4;
    }
}

/* o[i*os] = (G g)[i], i = 0..4, for g[r*gs], r = 0..2. */
ALWAYS_INLINE void g5(float *o, size_t os, const float *g, size_t gs) {
    for (int v = 0; v < VW; v++) {
        const float g0 = g[v], g1 = g[gs + v], g2 = g[2 * gs + v];
        o[v] = 0.5f * g0;
        o[os + v] = (g0 + g1 + g2) * -0.5f;
        o[2 * os + v] = (g1 - g0 - g2) * (1.0f / 6.0f);
        o[3 * os + v] = (g0 + 2.0f * g1 + 4.0f * g2) * (1.0f / 6.0f);
        o[4 * os + v] = g2;
    }
}

/* o[r*os] = (A y)[r], r = 0..4, for y[i*ys], i = 0..2 (at5 transposed). */
ALWAYS_INLINE void a5(float *o, size_t os, const float *y, size_t ys) {
    for (int v = 0; v < VW; v++) {
        const float y0 = y[v], y1 = y[ys + v], y2 = y[2 * ys + v];
        const float e = y0 + y2;
        o[v] = y0;
        o[os + v] = e + y1;
        o[2 * os + v] = e - y1;
        o[3 * os + v] = y0 + 2.0f * y1 + 4.0f * y2;
        o[4 * os + v] = y2;
    }
}

/* o[j*os] = (G^T u)[j], j = 0..2, for u[i*us], i = 0..4 (g5 transposed). */
ALWAYS_INLINE void gt5(float *o, size_t os, const float *u, size_t us) {
    for (int v = 0; v < VW; v++) {
        const float u0 = u[v], u1 = u[us + v], u2 = u[2 * us + v], u3 = u[3 * us + v],
                    u4 = u[4 * us + v];
        o[v] = 0.5f * (u0 - u1) + (u3 - u2) * (1.0f / 6.0f);
        o[os + v] = -0.5f * u1 + (u2 + 2.0f * u3) * (1.0f / 6.0f);
        o[2 * os + v] = (4.0f * u3 - u2) * (1.0f / 6.0f) - 0.5f * u1 + u4;
    }
}

#define TILE 3
#define ALPHA 5
#define NXI 25
#define WB_BT bt5
#define WB_AT at5
#define WB_G g5
#define WB_A a5
#define WB_GT gt5
#define WF(name) name##_f3
#include "winograd_body.h" /* undefines the parameters above */

/* ---- the public functions: tile 3, 4 or 6 -------------------------------- */

#define TILE_FN(tile, name) ((tile) == 6 ? name##_f6 : (tile) == 3 ? name##_f3 : name##_f4)


size_t vgg_winograd_prepared_floats(int tile, size_t cin, size_t cout) {
    return TILE_FN(tile, prepared_floats)(cin, cout);
}

size_t vgg_winograd_workspace_floats(int tile, size_t cin, size_t cout, int prepared) {
    return TILE_FN(tile, workspace_floats)(cin, cout, prepared);
}

int vgg_winograd_prepare(int tile, float *u, size_t u_floats, const float *kernel, size_t cin,
                         size_t cout) {
    VGG_CHECK(tile == 3 || tile == 4 || tile == 6, VGG_ERR_ARG);
    return TILE_FN(tile, prepare_kernel)(u, u_floats, kernel, cin, cout);
}

int vgg_winograd_fuses_pool(int tile, size_t h, size_t w) {
    /* a pool window must not straddle tiles: even tiles, or one odd tile the map */
    return h >= 2 && w >= 2 && (tile % 2 == 0 || (h <= (size_t)tile && w <= (size_t)tile));
}

int vgg_winograd_conv3x3_forward(int tile, float *out, const float *x, const float *kernel,
                                 const float *u_prepared, const float *bias, int relu, int pool,
                                 size_t n, size_t h, size_t w, size_t cin, size_t cout,
                                 float *workspace, size_t workspace_floats,
                                 vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(tile == 3 || tile == 4 || tile == 6, VGG_ERR_ARG);
    VGG_CHECK(!pool || vgg_winograd_fuses_pool(tile, h, w), VGG_ERR_ARG);
    return TILE_FN(tile, forward)(out, x, kernel, u_prepared, bias, relu, pool, n, h, w, cin,
                                  cout, workspace, workspace_floats, abort_cb, abort_ctx);
}

size_t vgg_winograd_weight_grad_floats(int tile, size_t cin, size_t cout) {
    return TILE_FN(tile, grad_workspace_floats)(cin, cout);
}

int vgg_winograd_conv3x3_weight_grad(int tile, float *dw, const float *dout, const float *x,
                                     size_t n, size_t h, size_t w, size_t cin, size_t cout,
                                     float *workspace, size_t workspace_floats,
                                     vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(tile == 3 || tile == 4 || tile == 6, VGG_ERR_ARG);
    return TILE_FN(tile, weight_grad)(dw, dout, x, n, h, w, cin, cout, workspace,
                                      workspace_floats, abort_cb, abort_ctx);
}
