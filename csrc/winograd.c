/*
 * winograd.c - 3x3 convolution (stride 1, 'same' zero padding, NHWC) by
 * Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for
 * Convolutional Neural Networks", 2015).
 *
 * Each 4x4 tile of output pixels comes from the 6x6 input patch around it:
 *   Y = A^T [ (G g G^T) (.) (B^T d B) ] A          (.) elementwise, 6x6
 * and summed over input channels, the 36 elementwise products become 36 matrix
 * products: for each of the 36 positions xi,
 *   M_xi (tiles, Cout) = V_xi (tiles, Cin) @ U_xi (Cin, Cout)
 * 36 * Cin * Cout multiplies per tile where direct convolution does 144: 4x
 * fewer. The transforms are additions, memory-bound.
 *
 * Steps, for a call (a pass of N images):
 *   1. U (36, Cin, Cout) <- the kernel transformed once (in the workspace).
 *   2. Tiles of all images are numbered (image, tile row, tile column) and cut
 *      into blocks of a fixed size set by Cin and Cout only (so the result does
 *      not depend on the thread count). Each thread takes whole blocks:
 *        V (tb, 36, Cin)  <- input transform of the block's tiles
 *        M (tb, 36, Cout) <- 36 single-threaded sgemms (strided rows)
 *        out              <- output transform, + bias, ReLU, written in place
 *      V and M are the thread's own; the block size follows OpenBLAS's small
 *      and packed sgemm paths (tiles_per_block), and the strides are padded by a
 *      cache line so the 36 streams never share a cache set.
 * The transforms are vectorised over 16 channels at a time; they are compiled
 * for AVX-512, AVX2+FMA and the baseline (cpu.c picks one at run time).
 *
 * Accuracy: F(4x4,3x3) with the points 0, +-1, +-2, inf loses a few bits against
 * direct summation (Barabasz et al., arXiv 1803.10986); measured on the VGG16
 * base at 224x224: see tests/test_winograd.py and the README.
 */
#include "vgg_internal.h"

#include <string.h>

#define TILE 4   /* output tile side */
#define ALPHA 6  /* input tile side: TILE + 3 - 1 */
#define NXI 36   /* ALPHA * ALPHA transformed positions */
#define VW 16    /* channels per vector step */

#include "winograd_tiles.h"

/* Tiles per block, by what OpenBLAS does with each (tb x Cin) @ (Cin x Cout)
 * product. Up to 1e6 multiply-adds it runs its small-matrix kernels, which read
 * the operands in place and are fastest on short blocks; larger products go
 * through its packing path, which copies the Cin x Cout slice of U on every
 * call, and longer blocks amortise that copy. Measured per layer (224 x 224,
 * 8 images, 1 thread, AVX-512 kernels), ms at tb 32 / 64 / 128:
 *   block2_conv2 (128->128)  115 / 156 / 168   (32 is a small product)
 *   block3_conv2 (256->256)  164 / 139 / 129
 *   block4_conv2 (512->512)  172 / 158 / 147
 * The block size depends on the layer only, never on the thread count, so the
 * products (and the bits) are the same on any number of threads. */
#define SHORT_TB 32
#define LONG_TB 128

static size_t tiles_per_block(size_t cin, size_t cout) {
    return (double)SHORT_TB * (double)cin * (double)cout <= 1e6 ? SHORT_TB : LONG_TB;
}

/* Strides of U's 36 slices and of a tile's rows in V and M, one cache line more
 * than packed. Packed, they are multiples of 4 KiB (Cin, Cout multiples of 32),
 * so the 36 streams the kernel transform writes, and the rows sgemm packs from
 * V, all fall in one cache set and evict each other: the kernel transform took
 * a third of a 50 x 50 forward before this. */
#define PAD 16
static size_t u_stride(size_t cin, size_t cout) { return cin * cout + PAD; }
static size_t v_stride(size_t cin) { return NXI * cin + PAD; }
static size_t m_stride(size_t cout) { return NXI * cout + PAD; }

static size_t thread_floats(size_t cin, size_t cout) {
    return tiles_per_block(cin, cout) * (v_stride(cin) + m_stride(cout));
}

size_t vgg_winograd_workspace_floats(size_t cin, size_t cout, size_t threads) {
    return NXI * u_stride(cin, cout) + thread_floats(cin, cout) * threads;
}

/* ---- the transforms, for 16 channels at a time ---------------------------
 * Written once as always-inline bodies with fixed trip counts, then compiled
 * into one function per instruction set (the bodies take the caller's target). */

#define ALWAYS_INLINE static inline __attribute__((always_inline))

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

/* U (36, cin, cout) for input channels [c0, c1): u_xi = (G g G^T)_xi. */
ALWAYS_INLINE void kernel_transform_body(float *u, const float *kernel, const wino_shape *s,
                                         size_t c0, size_t c1) {
    const size_t cin = s->cin, cout = s->cout;
    float g[9][VW], t[ALPHA][3][VW], r[ALPHA][ALPHA][VW];
    for (size_t c = c0; c < c1; c++) {
        for (size_t k0 = 0; k0 < cout; k0 += VW) {
            const size_t len = cout - k0 < VW ? cout - k0 : VW;
            vgg_kernel_taps(g, kernel, cin, cout, c, k0, len);
            /* t (6 x 3) = G g, then r (6 x 6) = t G^T */
            for (int j = 0; j < 3; j++) g3(&t[0][j][0], 3 * VW, &g[j][0], 3 * VW);
            for (int i = 0; i < ALPHA; i++) g3(&r[i][0][0], VW, &t[i][0][0], VW);
            for (int xi = 0; xi < NXI; xi++) {
                float *dst = u + (size_t)xi * u_stride(cin, cout) + c * cout + k0;
                const float *val = &r[xi / ALPHA][xi % ALPHA][0];
                if (len == VW) {
                    memcpy(dst, val, sizeof(float) * VW);
                } else {
                    for (size_t v = 0; v < len; v++) dst[v] = val[v];
                }
            }
        }
    }
}

/* V (t1-t0, 36, cin) <- B^T d B of tiles t0..t1-1. */
ALWAYS_INLINE void input_transform_body(float *vbuf, const float *x, const wino_shape *s,
                                        size_t t0, size_t t1) {
    const size_t h = s->h, w = s->w, cin = s->cin;
    const size_t per_img = s->th * s->tw;
    float d[ALPHA][ALPHA][VW], t[ALPHA][ALPHA][VW], r[ALPHA][ALPHA][VW];
    for (size_t t_ = t0; t_ < t1; t_++) {
        const size_t img = t_ / per_img, rem = t_ % per_img;
        const long y0 = (long)(rem / s->tw) * TILE - 1, x0 = (long)(rem % s->tw) * TILE - 1;
        const float *x_img = x + img * h * w * cin;
        for (size_t c0 = 0; c0 < cin; c0 += VW) {
            const size_t len = cin - c0 < VW ? cin - c0 : VW;
            vgg_tile_gather(&d[0][0][0], ALPHA, x_img, y0, x0, h, w, cin, c0, len);
            /* t = B^T d (over rows), r = t B (over columns) */
            for (int j = 0; j < ALPHA; j++) bt6(&t[0][j][0], ALPHA * VW, &d[0][j][0], ALPHA * VW);
            for (int i = 0; i < ALPHA; i++) bt6(&r[i][0][0], VW, &t[i][0][0], VW);
            float *dst = vbuf + (t_ - t0) * v_stride(cin) + c0;
            for (int xi = 0; xi < NXI; xi++) {
                const float *val = &r[xi / ALPHA][xi % ALPHA][0];
                float *o = dst + (size_t)xi * cin;
                if (len == VW) {
                    memcpy(o, val, sizeof(float) * VW);
                } else {
                    for (size_t v = 0; v < len; v++) o[v] = val[v];
                }
            }
        }
    }
}

/* out tiles t0..t1-1 <- act(A^T M A + bias), cropped to the image, or its 2x2
 * max-pool (winograd_tiles.h). */
ALWAYS_INLINE void output_transform_body(float *out, const float *mbuf, const float *bias,
                                         int relu, int pool, const wino_shape *s, size_t t0,
                                         size_t t1) {
    const size_t cout = s->cout;
    const size_t per_img = s->th * s->tw;
    float m[ALPHA][ALPHA][VW], t[TILE][ALPHA][VW], y[TILE][TILE][VW], b[VW];
    for (size_t t_ = t0; t_ < t1; t_++) {
        const size_t img = t_ / per_img, rem = t_ % per_img;
        const size_t y0 = (rem / s->tw) * TILE, x0 = (rem % s->tw) * TILE;
        for (size_t k0 = 0; k0 < cout; k0 += VW) {
            const size_t len = cout - k0 < VW ? cout - k0 : VW;
            const float *src = mbuf + (t_ - t0) * m_stride(cout) + k0;
            for (int xi = 0; xi < NXI; xi++) {
                const float *p = src + (size_t)xi * cout;
                float *dst = &m[xi / ALPHA][xi % ALPHA][0];
                if (len == VW) {
                    memcpy(dst, p, sizeof(float) * VW);
                } else {
                    for (size_t v = 0; v < VW; v++) dst[v] = v < len ? p[v] : 0.0f;
                }
            }
            for (size_t v = 0; v < VW; v++) b[v] = v < len ? bias[k0 + v] : 0.0f;
            /* t = A^T m (over rows), y = t A (over columns) */
            for (int j = 0; j < ALPHA; j++) at6(&t[0][j][0], ALPHA * VW, &m[0][j][0], ALPHA * VW);
            for (int i = 0; i < TILE; i++) at6(&y[i][0][0], VW, &t[i][0][0], VW);
            vgg_tile_store(out, &y[0][0][0], TILE, b, relu, pool, s->h, s->w, cout, img, y0, x0,
                           k0, len);
        }
    }
}

/* ---- one function per instruction set ------------------------------------ */

#define DEFINE_TRANSFORMS(suffix, attr)                                                  \
    attr static void kernel_transform_##suffix(float *u, const float *k, const wino_shape *s, \
                                               size_t c0, size_t c1) {                   \
        kernel_transform_body(u, k, s, c0, c1);                                          \
    }                                                                                    \
    attr static void input_transform_##suffix(float *v, const float *x, const wino_shape *s, \
                                              size_t t0, size_t t1) {                    \
        input_transform_body(v, x, s, t0, t1);                                           \
    }                                                                                    \
    attr static void output_transform_##suffix(float *o, const float *m, const float *b, \
                                               int relu, int pool, const wino_shape *s,  \
                                               size_t t0, size_t t1) {                   \
        output_transform_body(o, m, b, relu, pool, s, t0, t1);                           \
    }

DEFINE_TRANSFORMS(portable, )
#if VGG_X86_DISPATCH
DEFINE_TRANSFORMS(avx2, __attribute__((target("avx2,fma"))))
DEFINE_TRANSFORMS(avx512, __attribute__((target("avx512f,avx2,fma"))))
#endif

typedef struct {
    void (*kernel)(float *, const float *, const wino_shape *, size_t, size_t);
    void (*input)(float *, const float *, const wino_shape *, size_t, size_t);
    void (*output)(float *, const float *, const float *, int, int, const wino_shape *, size_t,
                   size_t);
} transforms;

static transforms transforms_for(int isa) {
#if VGG_X86_DISPATCH
    if (isa == VGG_ISA_AVX512 || isa == VGG_ISA_AVX512_BF16)
        return (transforms){kernel_transform_avx512, input_transform_avx512,
                            output_transform_avx512};
    if (isa == VGG_ISA_AVX2)
        return (transforms){kernel_transform_avx2, input_transform_avx2, output_transform_avx2};
#endif
    (void)isa;
    return (transforms){kernel_transform_portable, input_transform_portable,
                        output_transform_portable};
}

/* What a block of tiles needs (vgg_run_blocks hands out the blocks). */
typedef struct {
    transforms fn;
    const wino_shape *s;
    float *out;
    const float *x, *u, *bias;
    int relu, pool;
    size_t tiles, tb, min_rows;
} block_job;

/* V (tb, 36, Cin) <- input transform of block bi's tiles; M (tb, 36, Cout) <- the
 * 36 single-threaded sgemms; out <- output transform (bias, ReLU, pool). */
static void run_block(void *ctx, size_t bi, float *vbuf) {
    const block_job *j = ctx;
    const size_t cin = j->s->cin, cout = j->s->cout;
    const size_t t0 = bi * j->tb, t1 = t0 + j->tb < j->tiles ? t0 + j->tb : j->tiles,
                 nt = t1 - t0;
    /* a short block (the last) is padded with zero tiles up to the rows that
     * sgemm rounds the same way as in a full block, so a tile's result never
     * depends on the batch it came in (vgg_internal.h) */
    const size_t mt = nt < j->min_rows ? j->min_rows : nt;
    float *mbuf = vbuf + mt * v_stride(cin);
    j->fn.input(vbuf, j->x, j->s, t0, t1);
    if (mt > nt) memset(vbuf + nt * v_stride(cin), 0, (mt - nt) * v_stride(cin) * sizeof *vbuf);
    /* tile-major V and M: a tile's 36 rows are adjacent for the transforms */
    for (size_t xi = 0; xi < NXI; xi++)
        vgg_sgemm(0, 0, mt, cout, cin, 1.0f, vbuf + xi * cin, v_stride(cin),
                  j->u + xi * u_stride(cin, cout), cout, 0.0f, mbuf + xi * cout, m_stride(cout));
    j->fn.output(j->out, mbuf, j->bias, j->relu, j->pool, j->s, t0, t1);
}

int vgg_winograd_conv3x3_forward(float *out, const float *x, const float *kernel,
                                 const float *bias, int relu, int pool, size_t n, size_t h,
                                 size_t w, size_t cin, size_t cout, float *workspace,
                                 size_t workspace_floats, vgg_abort_fn abort_cb,
                                 void *abort_ctx) {
    VGG_CHECK(out && x && kernel && bias && workspace, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1 && cin >= 1 && cout >= 1, VGG_ERR_SHAPE);
    VGG_CHECK(cin <= VGG_BLAS_MAX_DIM && cout <= VGG_BLAS_MAX_DIM, VGG_ERR_SHAPE);
    if (n == 0) return VGG_OK;
    const size_t per_thread = thread_floats(cin, cout);
    size_t u_n, tiles;
    VGG_CHECK(vgg_mul_ok(cin, cout, &u_n) && vgg_mul_ok(NXI, u_n + PAD, &u_n), VGG_ERR_SHAPE);
    VGG_CHECK(workspace_floats >= u_n && workspace_floats - u_n >= per_thread, VGG_ERR_NOMEM);
    const size_t nth = vgg_threads_for_buffers(workspace_floats - u_n, per_thread);
    const wino_shape s = {n, h, w, cin, cout, (h + TILE - 1) / TILE, (w + TILE - 1) / TILE};
    VGG_CHECK(vgg_mul_ok(s.th * s.tw, n, &tiles), VGG_ERR_SHAPE);
    const transforms fn = transforms_for(vgg_get_isa());
    float *u = workspace;

    /* 1. the kernel, split by input channel */
    VGG_OMP_FOR_N((int)nth)
    for (size_t c = 0; c < cin; c++) fn.kernel(u, kernel, &s, c, c + 1);

    /* 2. blocks of tiles */
    const size_t tb = tiles_per_block(cin, cout);
    size_t min_rows = vgg_sgemm_stable_rows(cout, cin);
    if (min_rows > tb) min_rows = tb; /* short blocks: small products either way */
    block_job job = {fn, &s, out, x, u, bias, relu, pool, tiles, tb, min_rows};
    return vgg_run_blocks((tiles + tb - 1) / tb, nth, workspace + u_n, per_thread, run_block,
                          &job, abort_cb, abort_ctx);
}
