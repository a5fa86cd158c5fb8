/*
 * winograd_bf16.c - 3x3 convolution (stride 1, 'same' zero padding, NHWC) by
 * Winograd F(2x2, 3x3) with bfloat16 operands and float32 sums: the
 * precision="bf16" path of feature extraction.
 *
 * Why F(2x2) and not vggtl's fp32 F(4x4): rounding the transformed operands to
 * bf16 (8 significant bits) costs F(4x4, 3x3) 4e-2 to 6e-2 of the largest output
 * per layer, because its transforms add and subtract terms up to 8x the result;
 * F(2x2, 3x3)'s transforms only add and subtract (points 0, +-1, inf) and cost
 * 3e-3 to 4.5e-3, near a bf16 direct convolution's 2.3e-3 to 2.8e-3
 * (benchmarks/bf16_accuracy.py). F(2x2) does 16 products per 2x2 tile where
 * direct convolution does 36: 2.25x fewer, and VDPBF16PS does twice the
 * multiply-adds of a float32 FMA per cycle.
 *
 *   Y = A^T [ (G g G^T) (.) (B^T d B) ] A          (.) elementwise, 4x4
 * Per block of tiles and for each of the 16 positions xi:
 *   M_xi (tiles, Cout) fp32 = V_xi (tiles, Cin) bf16 @ U_xi (Cin, Cout) bf16
 * The transforms run in float32 and round once, to nearest even, when they
 * store V and U; the output transform (float32) fuses bias, ReLU and, when the
 * caller asks, the 2x2 max-pool (winograd_tiles.h: a 2x2 tile is one pool window).
 *
 * The products are vggtl's own kernel (no BLAS has a bf16 GEMM here):
 *   - avx512_bf16: VDPBF16PS, 6 tiles x 64 output channels of float32 sums in
 *     24 zmm registers; U is packed as (Cin/2, Cout, 2) so one load gives 16
 *     channels' pairs, and a tile's pair of inputs is one broadcast dword.
 *   - amx_bf16, where Cin and Cout are multiples of 32: the same operands on
 *     the AMX tiles (gemm_amx), whose own rounding gives bits of its own.
 *   - any other instruction set: the same sums in plain C, in the order the
 *     instruction does them. VDPBF16PS adds a pair's odd product and then its
 *     even one, each rounded to float32; a product of two bf16 values is exact
 *     in float32, so the emulation gives the same bits (tests/kernel/test_bf16.py
 *     compares whole layers on every level the CPU runs). The instruction also
 *     flushes a sum below FLT_MIN (1.2e-38) to zero, and so does the emulation
 *     (sums are flushed, products are not; a product below about 2^-133 is the
 *     one case where it could still differ, rounded once in the emulation
 *     before its sum).
 * bf16 inputs below FLT_MIN are stored as zero (the instruction reads them so).
 * Each tile's row is summed on its own, in a fixed order, so a result depends
 * neither on the thread count nor on the batch the image came in.
 */
#include "vgg_internal.h"

#include <string.h>
#if VGG_X86_DISPATCH && VGG_HAVE_AVX512BF16
#include <immintrin.h>
#endif

#define TILE 2   /* output tile side */
#define ALPHA 4  /* input tile side: TILE + 3 - 1 */
#define NXI 16   /* ALPHA * ALPHA transformed positions */
#define VW 16    /* channels per vector step */
#define MR 6     /* tiles per register block */
#define NR 64    /* output channels per register block: 4 vectors */

#include "winograd_tiles.h"

/* Tiles per block: a multiple of MR, sized so that a block's V (bf16) and M
 * (float32) take about BLOCK_BYTES, near L2 (1 MiB per core on the target):
 * the output transform then reads M from L2, and each 64-channel panel of U is
 * read once per block. Measured per layer (224 x 224, 4 images, 2 threads, ms
 * per image) at 24 / 96 / 192 tiles per block:
 *   block1_conv2 ( 64 ->  64)  8.2 / 7.8 / 7.4
 *   block4_conv2 (512 -> 512)  5.8 / 6.4 / 7.2
 * The size depends on the layer only, never on the thread count (and, each
 * row being summed on its own, it never changes a bit). Build with
 * -DVGG_BF16_BLOCK_BYTES=n to measure another. */
#ifndef VGG_BF16_BLOCK_BYTES
#define BLOCK_BYTES ((size_t)1200 * 1024)
#else
#define BLOCK_BYTES ((size_t)VGG_BF16_BLOCK_BYTES)
#endif
#define MIN_TB (2 * MR)
#define MAX_TB (64 * MR)
/* The AMX kernel takes tiles 32 at a time (two 16-row tiles of the unit).
 * Its block size, measured like BLOCK_BYTES' (224 x 224, batch 16, 2 threads,
 * whole base): 0.5 / 1 / 1.5 / 2 / 4 / 8 MiB gave 27.9 / 28.6 / 27.3 / 25.6 /
 * 23.4 / 23.4 images/s: V and M staying in L2 matters more than reading U
 * once per block. */
#define AMX_ROWS 32
#ifndef VGG_AMX_BLOCK_BYTES
#define AMX_BLOCK_BYTES ((size_t)1 << 20)
#else
#define AMX_BLOCK_BYTES ((size_t)VGG_AMX_BLOCK_BYTES)
#endif

typedef uint16_t bf16;

static size_t tiles_per_block(size_t cin, size_t cout, int amx) {
    const size_t per_tile = NXI * (2 * (cin + 1) + 4 * (cout + VW)); /* bytes of V and M */
    if (amx) {
        const size_t tb = AMX_BLOCK_BYTES / per_tile / AMX_ROWS * AMX_ROWS;
        return tb < AMX_ROWS ? AMX_ROWS : tb > MAX_TB ? MAX_TB / AMX_ROWS * AMX_ROWS : tb;
    }
    size_t tb = BLOCK_BYTES / per_tile / MR * MR;
    return tb < MIN_TB ? MIN_TB : tb > MAX_TB ? MAX_TB : tb;
}

static size_t pairs(size_t cin) { return (cin + 1) / 2; }                 /* Cin padded to even, /2 */
static size_t cout_pad(size_t cout) { return (cout + VW - 1) / VW * VW; }   /* whole vectors */

/* Strides (in elements), one cache line more than packed so that the 16
 * streams never share a cache set (see winograd.c). */
#define PAD_BF16 32
#define PAD_F32 16
static size_t u_stride(size_t cin, size_t cout) { return 2 * pairs(cin) * cout_pad(cout) + PAD_BF16; }
static size_t v_stride(size_t cin) { return NXI * 2 * pairs(cin) + PAD_BF16; }
static size_t m_stride(size_t cout) { return NXI * cout_pad(cout) + PAD_F32; }

/* bf16 counts in float32 units, rounded up to a cache line */
static size_t bf16_as_floats(size_t n) { return (n + 31) / 32 * 16; }

static size_t u_floats(size_t cin, size_t cout) { return bf16_as_floats(NXI * u_stride(cin, cout)); }
static size_t thread_floats_for(size_t cin, size_t cout, int amx) {
    const size_t tb = tiles_per_block(cin, cout, amx);
    return bf16_as_floats(tb * v_stride(cin)) + tb * m_stride(cout);
}

/* a thread's block buffer, for either kernel (the workspace is sized before
 * the kernel is known) */
static size_t thread_floats(size_t cin, size_t cout) {
    const size_t a = thread_floats_for(cin, cout, 0), b = thread_floats_for(cin, cout, 1);
    return a > b ? a : b;
}

size_t vgg_winograd_bf16_prepared_floats(size_t cin, size_t cout) { return u_floats(cin, cout); }

size_t vgg_winograd_bf16_workspace_floats(size_t cin, size_t cout, size_t threads, int prepared) {
    return (prepared ? 0 : u_floats(cin, cout)) + thread_floats(cin, cout) * threads;
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* dst[v] = bf16(src[v]) for VW lanes: round to nearest even; NaN stays a
 * (quiet) NaN, values below FLT_MIN become a signed zero (the instruction reads
 * subnormals so). Branch-free on whole vectors, so that it vectorises: a
 * per-value function with early returns made the input transform scalar and a
 * third of a bf16 forward. */
ALWAYS_INLINE void to_bf16(bf16 *dst, const float *src) {
    uint32_t u[VW], r[VW];
    memcpy(u, src, sizeof u);
    for (int v = 0; v < VW; v++) { /* masks, not ?: (GCC 12 left that scalar) */
        const uint32_t mag = u[v] & 0x7FFFFFFFu;
        const uint32_t nan = -(uint32_t)(mag > 0x7F800000u), tiny = -(uint32_t)(mag < 0x00800000u);
        uint32_t x = (u[v] + 0x7FFFu + ((u[v] >> 16) & 1u)) >> 16;
        x = (x & ~nan) | (((u[v] >> 16) | 0x40u) & nan);
        r[v] = (x & ~tiny) | (((u[v] >> 16) & 0x8000u) & tiny);
    }
    for (int v = 0; v < VW; v++) dst[v] = (bf16)r[v];
}

ALWAYS_INLINE float from_bf16(bf16 b) {
    const uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

/* ---- the transforms, for 16 channels at a time (float32) ---------------- */

/* o[i*os] = (B^T d)[i], i = 0..3, for d[r*ds]. */
ALWAYS_INLINE void bt4(float *o, size_t os, const float *d, size_t ds) {
    for (int v = 0; v < VW; v++) {
        const float d0 = d[v], d1 = d[ds + v], d2 = d[2 * ds + v], d3 = d[3 * ds + v];
        o[v] = d0 - d2;
        o[os + v] = d1 + d2;
        o[2 * os + v] = d2 - d1;
        o[3 * os + v] = d1 - d3;
    }
}

/* o[i*os] = (A^T m)[i], i = 0..1, for m[r*ms]. */
ALWAYS_INLINE void at4(float *o, size_t os, const float *m, size_t ms) {
    for (int v = 0; v < VW; v++) {
        const float m0 = m[v], m1 = m[ms + v], m2 = m[2 * ms + v], m3 = m[3 * ms + v];
        o[v] = m0 + m1 + m2;
        o[os + v] = m1 - m2 - m3;
    }
}

/* o[i*os] = (G g)[i], i = 0..3, for g[r*gs]. */
ALWAYS_INLINE void g4(float *o, size_t os, const float *g, size_t gs) {
    for (int v = 0; v < VW; v++) {
        const float g0 = g[v], g1 = g[gs + v], g2 = g[2 * gs + v];
        o[v] = g0;
        o[os + v] = (g0 + g1 + g2) * 0.5f;
        o[2 * os + v] = (g0 - g1 + g2) * 0.5f;
        o[3 * os + v] = g2;
    }
}

/* U for input channels 2p and 2p+1: u[xi][p][n][c & 1] = bf16((G g G^T)_xi). */
ALWAYS_INLINE void kernel_transform_body(bf16 *u, const float *kernel, const wino_shape *s,
                                         size_t p) {
    const size_t cin = s->cin, cout = s->cout, np = cout_pad(cout);
    float g[9][VW], t[ALPHA][3][VW], r[ALPHA][ALPHA][VW];
    for (size_t c = 2 * p; c < 2 * p + 2; c++) {
        for (size_t k0 = 0; k0 < np; k0 += VW) {
            const size_t len = c >= cin ? 0 : cout - k0 < VW ? cout - k0 : VW;
            /* len 0: the padding channel of an odd Cin, zeros */
            vgg_kernel_taps(g, kernel, cin, cout, c, k0, len);
            for (int j = 0; j < 3; j++) g4(&t[0][j][0], 3 * VW, &g[j][0], 3 * VW);
            for (int i = 0; i < ALPHA; i++) g4(&r[i][0][0], VW, &t[i][0][0], VW);
            for (int xi = 0; xi < NXI; xi++) {
                bf16 *dst = u + (size_t)xi * u_stride(cin, cout) + (p * np + k0) * 2 + (c & 1);
                bf16 val[VW];
                to_bf16(val, &r[xi / ALPHA][xi % ALPHA][0]);
                for (int v = 0; v < VW; v++) dst[2 * v] = val[v];
            }
        }
    }
}

/* V (t1-t0, 16, Cin padded to even) <- bf16(B^T d B) of tiles t0..t1-1. */
ALWAYS_INLINE void input_transform_body(bf16 *vbuf, const float *x, const wino_shape *s,
                                        size_t t0, size_t t1) {
    const size_t h = s->h, w = s->w, cin = s->cin, cinp = 2 * pairs(cin);
    const size_t per_img = s->th * s->tw;
    float d[ALPHA][ALPHA][VW], t[ALPHA][ALPHA][VW], r[ALPHA][ALPHA][VW];
    for (size_t t_ = t0; t_ < t1; t_++) {
        const size_t img = t_ / per_img, rem = t_ % per_img;
        const long y0 = (long)(rem / s->tw) * TILE - 1, x0 = (long)(rem % s->tw) * TILE - 1;
        const float *x_img = x + img * h * w * cin;
        bf16 *dst = vbuf + (t_ - t0) * v_stride(cin);
        for (size_t c0 = 0; c0 < cin; c0 += VW) {
            const size_t len = cin - c0 < VW ? cin - c0 : VW;
            vgg_tile_gather(&d[0][0][0], ALPHA, x_img, y0, x0, h, w, cin, c0, len);
            for (int j = 0; j < ALPHA; j++) bt4(&t[0][j][0], ALPHA * VW, &d[0][j][0], ALPHA * VW);
            for (int i = 0; i < ALPHA; i++) bt4(&r[i][0][0], VW, &t[i][0][0], VW);
            for (int xi = 0; xi < NXI; xi++) {
                bf16 *o = dst + (size_t)xi * cinp + c0;
                if (len == VW) {
                    to_bf16(o, &r[xi / ALPHA][xi % ALPHA][0]);
                } else {
                    bf16 val[VW];
                    to_bf16(val, &r[xi / ALPHA][xi % ALPHA][0]);
                    memcpy(o, val, len * sizeof *o);
                }
            }
        }
        if (cinp > cin) /* the padding channel of an odd Cin */
            for (int xi = 0; xi < NXI; xi++) dst[(size_t)xi * cinp + cin] = 0;
    }
}

/* out tiles t0..t1-1 <- act(A^T M A + bias), cropped to the image, or its 2x2
 * max-pool (winograd_tiles.h: a 2 x 2 tile is one pool window). */
ALWAYS_INLINE void output_transform_body(float *out, const float *mbuf, const float *bias,
                                         int relu, int pool, const wino_shape *s, size_t t0,
                                         size_t t1) {
    const size_t cout = s->cout, np = cout_pad(cout);
    const size_t per_img = s->th * s->tw;
    float m[ALPHA][ALPHA][VW], t[TILE][ALPHA][VW], y[TILE][TILE][VW], b[VW];
    for (size_t t_ = t0; t_ < t1; t_++) {
        const size_t img = t_ / per_img, rem = t_ % per_img;
        const size_t y0 = (rem / s->tw) * TILE, x0 = (rem % s->tw) * TILE;
        for (size_t k0 = 0; k0 < cout; k0 += VW) {
            const size_t len = cout - k0 < VW ? cout - k0 : VW;
            const float *src = mbuf + (t_ - t0) * m_stride(cout) + k0;
            for (int xi = 0; xi < NXI; xi++) /* M rows are whole vectors (Cout padded) */
                memcpy(&m[xi / ALPHA][xi % ALPHA][0], src + (size_t)xi * np, sizeof(float) * VW);
            vgg_tile_bias(b, bias, k0, len);
            for (int j = 0; j < ALPHA; j++) at4(&t[0][j][0], ALPHA * VW, &m[0][j][0], ALPHA * VW);
            for (int i = 0; i < TILE; i++) at4(&y[i][0][0], VW, &t[i][0][0], VW);
            vgg_tile_store(out, &y[0][0][0], TILE, b, relu, pool, s->h, s->w, cout, img, y0, x0,
                           k0, len);
        }
    }
}

/* ---- the products --------------------------------------------------------
 * M (rows, np) fp32, row stride ms  =  V (rows, 2*kp) bf16, row stride vs
 *                                      @ U packed (kp, np, 2) bf16
 * rows is a multiple of MR, np of VW. */

/* dst = expr, a sum below FLT_MIN made a zero of its sign (the instruction's
 * flush to zero), on vectors of U32 bits / F32 values */
#define FTZ_ASSIGN(U32, F32, dst, expr)                                                     \
    do {                                                                                    \
        const U32 b_ = (U32)(expr); /* a zero exponent: subnormal (or zero) */              \
        (dst) = (F32)(b_ & ((U32)((b_ & 0x7F800000u) != 0) | 0x80000000u));                 \
    } while (0)

/* Plain C, in VDPBF16PS's order: per pair, the odd product then the even one,
 * each sum rounded to float32 (-ffp-contract=off; and a fused multiply-add
 * would round the same, the products being exact) and flushed to zero below
 * FLT_MIN as the instruction does (FTZ_ASSIGN). MR tiles x nv vectors of
 * `lanes` output channels, in GCC/Clang vector types so that the sums stay in
 * registers (plain arrays were kept on the stack, far slower than float32):
 * 16 lanes x up to 4 vectors under AVX-512 (24 of 32 zmm), 8 x 1 otherwise
 * (AVX2 has 16 ymm). A channel pair is one 32-bit word, the even channel in
 * its low half, and a bf16 is the high half of its float32: a shift and a mask
 * give the two operands as whole vectors. */
#define DEFINE_EMULATED_BLOCK(name, lanes)                                                  \
    typedef float name##_f32 __attribute__((vector_size((lanes) * 4)));                    \
    typedef uint32_t name##_u32 __attribute__((vector_size((lanes) * 4)));                 \
    ALWAYS_INLINE void name(float *m, size_t ms, const bf16 *v, size_t vs, const bf16 *u,   \
                            size_t np, size_t kp, const int nv) {                           \
        name##_f32 acc[MR][4];                                                              \
        for (int i = 0; i < MR; i++)                                                        \
            for (int j = 0; j < nv; j++) acc[i][j] = (name##_f32){0};                       \
        for (size_t p = 0; p < kp; p++) {                                                   \
            name##_f32 b0[4], b1[4];                                                        \
            for (int j = 0; j < nv; j++) {                                                  \
                name##_u32 pair;                                                            \
                memcpy(&pair, u + p * np * 2 + (size_t)j * 2 * (lanes), sizeof pair);       \
                b0[j] = (name##_f32)(pair << 16);                                           \
                b1[j] = (name##_f32)(pair & 0xFFFF0000u);                                   \
            }                                                                               \
            for (int i = 0; i < MR; i++) {                                                  \
                const bf16 *vp = v + (size_t)i * vs + 2 * p;                                \
                const float a0 = from_bf16(vp[0]), a1 = from_bf16(vp[1]);                   \
                for (int j = 0; j < nv; j++) {                                              \
                    FTZ_ASSIGN(name##_u32, name##_f32, acc[i][j], acc[i][j] + a1 * b1[j]);  \
                    FTZ_ASSIGN(name##_u32, name##_f32, acc[i][j], acc[i][j] + a0 * b0[j]);  \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
        for (int i = 0; i < MR; i++)                                                        \
            for (int j = 0; j < nv; j++)                                                    \
                memcpy(m + (size_t)i * ms + (size_t)j * (lanes), &acc[i][j], sizeof acc[i][j]); \
    }

DEFINE_EMULATED_BLOCK(block16, 16)
DEFINE_EMULATED_BLOCK(block8, 8)

/* `wide`: 64 channels per register block (AVX-512), else 8. */
ALWAYS_INLINE void gemm_emulated_body(float *m, size_t ms, const bf16 *v, size_t vs,
                                      const bf16 *u, size_t np, size_t kp, size_t rows,
                                      const int wide) {
    for (size_t n0 = 0; n0 < np; n0 += wide ? NR : 8) {
        const size_t left = (np - n0) / VW;
        const bf16 *un = u + n0 * 2;
        for (size_t r0 = 0; r0 < rows; r0 += MR) {
            float *mr = m + r0 * ms + n0;
            const bf16 *vr = v + r0 * vs;
            if (!wide) block8(mr, ms, vr, vs, un, np, kp, 1);
            else if (left >= 4) block16(mr, ms, vr, vs, un, np, kp, 4);
            else if (left == 3) block16(mr, ms, vr, vs, un, np, kp, 3);
            else if (left == 2) block16(mr, ms, vr, vs, un, np, kp, 2);
            else block16(mr, ms, vr, vs, un, np, kp, 1);
        }
    }
}

#define DEFINE_KERNELS(suffix, attr, wide)                                                     \
    attr static void kernel_transform_##suffix(bf16 *u, const float *k, const wino_shape *s, \
                                               size_t p) {                                 \
        kernel_transform_body(u, k, s, p);                                                 \
    }                                                                                      \
    attr static void input_transform_##suffix(bf16 *v, const float *x, const wino_shape *s, \
                                              size_t t0, size_t t1) {                      \
        input_transform_body(v, x, s, t0, t1);                                             \
    }                                                                                      \
    attr static void output_transform_##suffix(float *o, const float *m, const float *b,   \
                                               int relu, int pool, const wino_shape *s,    \
                                               size_t t0, size_t t1) {                     \
        output_transform_body(o, m, b, relu, pool, s, t0, t1);                             \
    }                                                                                      \
    attr static void gemm_emulated_##suffix(float *m, size_t ms, const bf16 *v, size_t vs, \
                                            const bf16 *u, size_t np, size_t kp,           \
                                            size_t rows) {                                 \
        gemm_emulated_body(m, ms, v, vs, u, np, kp, rows, wide);                           \
    }

DEFINE_KERNELS(portable, , 0)
#if VGG_X86_DISPATCH
DEFINE_KERNELS(avx2, __attribute__((target("avx2,fma"))), 0)
DEFINE_KERNELS(avx512, __attribute__((target("avx512f,avx2,fma"))), 1) /* no BW: the
                                                            avx512 level does not require it */
#endif

#if VGG_X86_DISPATCH && VGG_HAVE_AVX512BF16
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16,avx2,fma")))

/* MR tiles x nv vectors of 16 output channels, summed over kp pairs. */
BF16_TARGET ALWAYS_INLINE void block_native(float *m, size_t ms, const bf16 *v, size_t vs,
                                            const bf16 *u, size_t np, size_t kp, const int nv) {
    __m512 acc[MR][NR / VW];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < nv; j++) acc[i][j] = _mm512_setzero_ps();
    for (size_t p = 0; p < kp; p++) {
        __m512bh b[NR / VW];
        for (int j = 0; j < nv; j++)
            b[j] = (__m512bh)_mm512_loadu_si512(
                (const void *)(u + p * np * 2 + (size_t)j * 2 * VW));
        for (int i = 0; i < MR; i++) {
            int32_t pair;
            memcpy(&pair, v + (size_t)i * vs + 2 * p, sizeof pair);
            const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
            for (int j = 0; j < nv; j++) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], a, b[j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < nv; j++)
            _mm512_storeu_ps(m + (size_t)i * ms + (size_t)j * VW, acc[i][j]);
}

BF16_TARGET static void gemm_native(float *m, size_t ms, const bf16 *v, size_t vs, const bf16 *u,
                                    size_t np, size_t kp, size_t rows) {
    for (size_t n0 = 0; n0 < np; n0 += NR) {
        const size_t left = (np - n0) / VW;
        const bf16 *un = u + n0 * 2;
        for (size_t r0 = 0; r0 < rows; r0 += MR) {
            float *mr = m + r0 * ms + n0;
            const bf16 *vr = v + r0 * vs;
            /* a constant nv each, so the sums stay in registers */
            if (left >= 4) block_native(mr, ms, vr, vs, un, np, kp, 4);
            else if (left == 3) block_native(mr, ms, vr, vs, un, np, kp, 3);
            else if (left == 2) block_native(mr, ms, vr, vs, un, np, kp, 2);
            else block_native(mr, ms, vr, vs, un, np, kp, 1);
        }
    }
}
#endif

#if VGG_HAVE_AMX
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16")))

/* The tile configuration (palette 1): tiles 0-3 the float32 sums of 2 x 2
 * blocks of 16 tiles x 16 channels, 4-5 two blocks of V (16 rows of 16 channel
 * pairs), 6-7 two of U (16 pairs of rows x 16 channels, pairs interleaved, as
 * U is packed); every tile 16 rows of 64 bytes. */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* The same product as gemm_native on the AMX tiles: rows a multiple of 32, kp
 * of 16 and np of 32 (vgg_winograd_bf16_amx_fits). Each row of M is summed on
 * its own in a fixed order (pairs in blocks of 16, in turn), so a tile's result
 * does not depend on its block; the unit's own rounding inside TDPBF16PS makes
 * the bits differ from VDPBF16PS's. */
AMX_TARGET static void gemm_amx(float *m, size_t ms, const bf16 *v, size_t vs, const bf16 *u,
                                size_t np, size_t kp, size_t rows) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    _tile_loadconfig(&cfg);
    const size_t v_bytes = vs * sizeof *v, u_bytes = np * 2 * sizeof *u, m_bytes = ms * sizeof *m;
    for (size_t n0 = 0; n0 < np; n0 += 32) {
        for (size_t r0 = 0; r0 < rows; r0 += 32) {
            const bf16 *v0 = v + r0 * vs, *v1 = v0 + 16 * vs;
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (size_t p = 0; p < kp; p += 16) {
                const bf16 *up = u + (p * np + n0) * 2;
                _tile_loadd(4, v0 + 2 * p, v_bytes);
                _tile_loadd(6, up, u_bytes);
                _tile_loadd(7, up + 32, u_bytes);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                _tile_loadd(5, v1 + 2 * p, v_bytes);
                _tile_dpbf16ps(2, 5, 6);
                _tile_dpbf16ps(3, 5, 7);
            }
            float *mr = m + r0 * ms + n0;
            _tile_stored(0, mr, m_bytes);
            _tile_stored(1, mr + 16, m_bytes);
            _tile_stored(2, mr + 16 * ms, m_bytes);
            _tile_stored(3, mr + 16 * ms + 16, m_bytes);
        }
    }
    _tile_release();
}
#endif

int vgg_winograd_bf16_amx_fits(size_t cin, size_t cout) {
#if VGG_HAVE_AMX
    return vgg_get_isa() == VGG_ISA_AMX_BF16 && cin % 32 == 0 && cout % 32 == 0;
#else
    (void)cin;
    (void)cout;
    return 0;
#endif
}

typedef struct {
    void (*kernel)(bf16 *, const float *, const wino_shape *, size_t);
    void (*input)(bf16 *, const float *, const wino_shape *, size_t, size_t);
    void (*output)(float *, const float *, const float *, int, int, const wino_shape *, size_t,
                   size_t);
    void (*gemm)(float *, size_t, const bf16 *, size_t, const bf16 *, size_t, size_t, size_t);
} kernels;

/* The kernels of `isa`; `amx` (vgg_winograd_bf16_amx_fits) the AMX product. */
static kernels kernels_for(int isa, int amx) {
#if VGG_X86_DISPATCH
#if VGG_HAVE_AMX
    if (amx)
        return (kernels){kernel_transform_avx512, input_transform_avx512, output_transform_avx512,
                         gemm_amx};
#endif
    (void)amx;
#if VGG_HAVE_AVX512BF16
    if (isa >= VGG_ISA_AVX512_BF16)
        return (kernels){kernel_transform_avx512, input_transform_avx512, output_transform_avx512,
                         gemm_native};
#endif
    if (isa >= VGG_ISA_AVX512)
        return (kernels){kernel_transform_avx512, input_transform_avx512, output_transform_avx512,
                         gemm_emulated_avx512};
    if (isa == VGG_ISA_AVX2)
        return (kernels){kernel_transform_avx2, input_transform_avx2, output_transform_avx2,
                         gemm_emulated_avx2};
#endif
    (void)isa;
    (void)amx;
    return (kernels){kernel_transform_portable, input_transform_portable,
                     output_transform_portable, gemm_emulated_portable};
}

int vgg_bf16_native(void) {
#if VGG_X86_DISPATCH && VGG_HAVE_AVX512BF16
    return vgg_get_isa() >= VGG_ISA_AVX512_BF16;
#else
    return 0;
#endif
}

/* What a block of tiles needs (vgg_run_blocks hands out the blocks). */
typedef struct {
    kernels fn;
    const wino_shape *s;
    float *out;
    const float *x, *bias;
    const bf16 *u;
    int relu, pool;
    size_t tiles, tb, row_step; /* rows padded to a multiple of row_step */
} block_job;

/* V (tb, 16, Cin) bf16 <- input transform of block bi's tiles, padded with zero
 * tiles up to whole register blocks (each row is summed on its own, so padding
 * changes nothing); M (tb, 16, Cout) <- the 16 products; out <- output
 * transform (bias, ReLU, pool). */
static void run_block(void *ctx, size_t bi, float *mine) {
    const block_job *j = ctx;
    const size_t cin = j->s->cin, cout = j->s->cout;
    const size_t kp = pairs(cin), np = cout_pad(cout), cinp = 2 * kp;
    bf16 *vbuf = (bf16 *)mine;
    float *mbuf = mine + bf16_as_floats(j->tb * v_stride(cin));
    const size_t t0 = bi * j->tb, t1 = t0 + j->tb < j->tiles ? t0 + j->tb : j->tiles,
                 nt = t1 - t0;
    const size_t rows = (nt + j->row_step - 1) / j->row_step * j->row_step;
    j->fn.input(vbuf, j->x, j->s, t0, t1);
    if (rows > nt) memset(vbuf + nt * v_stride(cin), 0, (rows - nt) * v_stride(cin) * sizeof *vbuf);
    for (size_t xi = 0; xi < NXI; xi++)
        j->fn.gemm(mbuf + xi * np, m_stride(cout), vbuf + xi * cinp, v_stride(cin),
                   j->u + xi * u_stride(cin, cout), np, kp, rows);
    j->fn.output(j->out, mbuf, j->bias, j->relu, j->pool, j->s, t0, t1);
}

/* the strides are products of cin and cout: reject sizes they would overflow */
static int sizes_ok(size_t cin, size_t cout) {
    size_t check;
    return cin >= 1 && cout >= 1 && cin <= VGG_BLAS_MAX_DIM && cout <= VGG_BLAS_MAX_DIM &&
           vgg_mul_ok(NXI * 2 * pairs(cin), cout_pad(cout) + PAD_BF16, &check);
}

/* U <- the kernel transformed, by pairs of input channels, on nth threads. */
static void prepare(bf16 *u, const float *kernel, const wino_shape *s, const kernels *fn,
                    int nth) {
    const size_t kp = pairs(s->cin);
    VGG_OMP_FOR_N(nth)
    for (size_t p = 0; p < kp; p++) fn->kernel(u, kernel, s, p);
}

int vgg_winograd_bf16_prepare(float *u, size_t u_floats_given, const float *kernel, size_t cin,
                              size_t cout) {
    VGG_CHECK(u && kernel, VGG_ERR_ARG);
    VGG_CHECK(sizes_ok(cin, cout), VGG_ERR_SHAPE);
    VGG_CHECK(u_floats_given >= u_floats(cin, cout), VGG_ERR_SHAPE);
    const wino_shape s = {0, 0, 0, cin, cout, 0, 0};
    const kernels fn = kernels_for(vgg_get_isa(), 0);
    prepare((bf16 *)u, kernel, &s, &fn, vgg_get_num_threads());
    return VGG_OK;
}

int vgg_winograd_bf16_conv3x3_forward(int amx, float *out, const float *x, const float *kernel,
                                      const float *u_prepared, const float *bias, int relu,
                                      int pool, size_t n, size_t h, size_t w, size_t cin,
                                      size_t cout, float *workspace, size_t workspace_floats,
                                      vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(out && x && (kernel || u_prepared) && bias && workspace, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1, VGG_ERR_SHAPE);
    VGG_CHECK(sizes_ok(cin, cout), VGG_ERR_SHAPE);
    if (n == 0) return VGG_OK;
    size_t tiles;
    const size_t u_n = u_prepared ? 0 : u_floats(cin, cout), per_thread = thread_floats(cin, cout);
    VGG_CHECK(workspace_floats >= u_n && workspace_floats - u_n >= per_thread, VGG_ERR_NOMEM);
    const size_t nth = vgg_threads_for_buffers(workspace_floats - u_n, per_thread);
    const wino_shape s = {n, h, w, cin, cout, (h + TILE - 1) / TILE, (w + TILE - 1) / TILE};
    VGG_CHECK(vgg_mul_ok(s.th * s.tw, n, &tiles), VGG_ERR_SHAPE);
    VGG_CHECK(!amx || vgg_winograd_bf16_amx_fits(cin, cout), VGG_ERR_ARG);
    const kernels fn = kernels_for(vgg_get_isa(), amx);
    const bf16 *u = (const bf16 *)u_prepared;
    if (!u) {
        prepare((bf16 *)workspace, kernel, &s, &fn, (int)nth);
        u = (const bf16 *)workspace;
    }

    /* blocks of tiles */
    const size_t tb = tiles_per_block(cin, cout, amx);
    block_job job = {fn, &s, out, x, bias, u, relu, pool, tiles, tb, amx ? AMX_ROWS : MR};
    return vgg_run_blocks((tiles + tb - 1) / tb, nth, workspace + u_n, per_thread, run_block,
                          &job, abort_cb, abort_ctx);
}
