/*
 * vgg.h - the public C API of the vggtl core.
 *
 * The core computes the VGG16 network (Simonyan & Zisserman, configuration D,
 * with Keras's layer names) on the CPU: 3x3 'same' convolutions, 2x2 max-pooling,
 * dense layers, softmax, plus the input conversion that turns the tutorial's
 * uint8 / float images into the network's float32 input.
 *
 * Conventions (they hold for every function below):
 *   - Activations are NHWC float32, C-contiguous: x[((n*H + y)*W + x)*C + c].
 *   - Conv kernels are HWIO float32, (3, 3, Cin, Cout), exactly Keras's layout;
 *     read as a (9*Cin) x Cout row-major matrix whose row index is
 *     (dy*3 + dx)*Cin + cin. Dense kernels are (in, out) row-major, as Keras.
 *   - Sizes are size_t. Every function returns VGG_OK or a VGG_ERR_* code and
 *     never prints, exits or aborts; vgg_status_str() names a code.
 *   - The caller owns every buffer. Kernels never allocate; scratch space is a
 *     `workspace` argument whose size (in floats) a *_workspace_floats() query
 *     returns. Outputs are overwritten, never accumulated into.
 *   - Threads: OpenMP is the one owner. Kernels run OpenMP regions with
 *     vgg_get_num_threads() threads; the products (gemm.c) are serial code
 *     each thread runs on its own block.
 *   - Process-wide state, all of it: the thread count and whether a team has
 *     started or the process was forked after one (threads.c), the instruction
 *     set and the convolution algorithm (cpu.c), and the count of images
 *     vgg16_forward has run (vgg16.c). Everything else lives in the caller's
 *     buffers.
 *   - Long functions take an optional abort callback, polled from the calling
 *     thread between groups of chunks (outside parallel regions). When it
 *     returns non-zero the function stops and returns VGG_ERR_CANCELLED; the
 *     output is then incomplete.
 */
#ifndef VGG_H
#define VGG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* status codes                                                              */

enum vgg_status {
    VGG_OK = 0,
    VGG_ERR_ARG = 1,       /* an argument is out of its domain (NULL, 0, unknown enum) */
    VGG_ERR_SHAPE = 2,     /* sizes are inconsistent with each other or the network */
    VGG_ERR_NOMEM = 3,     /* workspace too small */
    VGG_ERR_INTERNAL = 4,  /* a broken invariant: a bug in vggtl */
    VGG_ERR_CANCELLED = 5, /* the abort callback asked to stop */
    VGG_ERR_NONFINITE = 6, /* a loss or value became NaN or infinite */
    VGG_ERR_THREADS = 7    /* the threads of a team could not be started */
};

const char *vgg_status_str(int status);

/* Returns non-zero to ask a long computation to stop. */
typedef int (*vgg_abort_fn)(void *ctx);

/* ------------------------------------------------------------------------ */
/* threads (threads.c) and the BLAS (blas.c)                                  */

/* Sets the threads of the core's OpenMP regions (BLAS stays single-threaded
 * inside them); n < 1 means 1.
 * Default: omp_get_max_threads() (so OMP_NUM_THREADS applies), 1 without OpenMP. */
void vgg_set_num_threads(int n);
int vgg_get_num_threads(void);
/* Makes sure the calling thread can start a team of vgg_get_num_threads()
 * threads: the first call, and the first after the count grew, starts the
 * threads the team lacks and ends them again, so that a process at its memory
 * or thread limit gets VGG_ERR_THREADS (and *err the errno of pthread_create)
 * here, before any work, rather than libgomp exiting the process inside a
 * parallel region. Other calls return at once. Thread-safe. */
int vgg_threads_start(int *err);
/* Non-zero in a process forked after a team of more than one thread had started
 * (in it or an ancestor): libgomp cannot start threads again there, so the count
 * is 1 and vgg_set_num_threads keeps it at 1. */
int vgg_threads_forked(void);
/* Non-zero if the core was compiled with OpenMP. */
int vgg_have_openmp(void);
/* blas.c: a static string describing the BLAS (e.g. OpenBLAS's config string). */
const char *vgg_blas_info(void);
const char *vgg_blas_corename(void); /* the kernels OpenBLAS chose (its core type) */

/* ------------------------------------------------------------------------ */
/* instruction set and algorithms (cpu.c)                                     */

/* The kernels vggtl vectorises itself are built for each of these; the best
 * the CPU supports is used unless vgg_set_isa says otherwise. AVX512_BF16 is
 * AVX-512 plus VDPBF16PS: float32 work runs as under AVX512, and the bf16
 * products (precision VGG_PRECISION_BF16) use the instruction; every other
 * level computes the same bf16 sums in plain C (winograd_bf16.c).
 * AMX_BF16 adds Intel's tile unit (TDPBF16PS): the bf16 layers it can take
 * (VGG_CONV_WINOGRAD_BF16_AMX) run there, with sums of their own bits (the
 * unit's internal rounding is not the pairwise one VDPBF16PS documents);
 * everything else runs as under AVX512_BF16. Each level includes the ones
 * before it (a higher value has every lower level's instructions). */
enum vgg_isa {
    VGG_ISA_BEST = -1,
    VGG_ISA_PORTABLE = 0,
    VGG_ISA_AVX2 = 1,
    VGG_ISA_AVX512 = 2,
    VGG_ISA_AVX512_BF16 = 3,
    VGG_ISA_AMX_BF16 = 4
};
int vgg_isa_supported(int isa);     /* non-zero if this CPU (and build) can run it */
int vgg_set_isa(int isa);           /* VGG_ERR_ARG if not supported */
int vgg_get_isa(void);
/* "portable", "avx2", "avx512", "avx512_bf16", "amx_bf16"; NULL otherwise */
const char *vgg_isa_name(int isa);
/* non-zero when bf16 products run on VDPBF16PS or AMX (else in plain C, the
 * VDPBF16PS bits) */
int vgg_bf16_native(void);

/* 3x3 convolution algorithm: AUTO chooses per layer shape (vgg_conv3x3_algo);
 * IM2COL and WINOGRAD force one everywhere (tests, benchmarks). WINOGRAD_BF16
 * (and _AMX) are never set: they are what a layer runs at VGG_PRECISION_BF16. */
enum vgg_conv_algo {
    VGG_CONV_AUTO = 0,
    VGG_CONV_IM2COL = 1,
    VGG_CONV_WINOGRAD = 2,       /* F(4x4, 3x3) */
    VGG_CONV_WINOGRAD_BF16 = 3,  /* F(2x2, 3x3), bf16 operands */
    VGG_CONV_WINOGRAD6 = 4,      /* F(6x6, 3x3) */
    VGG_CONV_WINOGRAD_BF16_AMX = 5, /* WINOGRAD_BF16's products on the AMX tiles */
    VGG_CONV_WINOGRAD3 = 6       /* F(3x3, 3x3) */
};
/* VGG_ERR_ARG unless AUTO, IM2COL, WINOGRAD, WINOGRAD6 or WINOGRAD3 */
int vgg_set_conv_algo(int algo);
int vgg_get_conv_algo(void);
const char *vgg_conv_algo_name(int algo);

/* Precision of the frozen network's convolutions (vgg16_config.precision).
 * BF16: every layer with at least 16 input channels whose 2x2 tiles at most
 * double the pixels runs F(2x2,3x3) with bfloat16 operands and float32 sums
 * (winograd_bf16.c), including maps F(4x4) declines; 1x1 maps and a forced
 * IM2COL stay float32 (vgg_conv3x3_algo_at), and so do VGG16's block 1
 * (vgg16_conv_precision). At VGG_ISA_AMX_BF16
 * the layers with Cin and Cout multiples of 32 run their products on the AMX
 * tiles (VGG_CONV_WINOGRAD_BF16_AMX). Features then differ
 * from float32 ones by the rounding of bf16 operands. Training always runs
 * float32. */
enum vgg_precision { VGG_PRECISION_FP32 = 0, VGG_PRECISION_BF16 = 1 };

/* ------------------------------------------------------------------------ */
/* input conversion (input.c)                                                */

enum vgg_dtype { VGG_U8 = 0, VGG_F32 = 1, VGG_F64 = 2, VGG_F16 = 3 };

/* out (N,H,W,3) float32  <-  x (N,H,W,cin) of dtype `dtype`, cin 1 or 3.
 *   out[..., c] = x[..., src(c)] * scale[c] + shift[c]
 * where src(c) = 0 when cin == 1 (grey repeated to 3 channels), 2 - c when
 * reverse_channels (RGB -> BGR, as Keras's "caffe" preprocessing), else c.
 * scale/shift are indexed by the *output* channel. Threads: OpenMP over pixels. */
int vgg_input_convert(float *out, const void *x, int dtype, size_t n, size_t h, size_t w,
                      size_t cin, const float scale[3], const float shift[3],
                      int reverse_channels);

/* ------------------------------------------------------------------------ */
/* layers                                                                    */

/* conv3x3.c: out (N,H,W,Cout) = act(conv(x (N,H,W,Cin), kernel (3,3,Cin,Cout)) + bias)
 * with stride 1 and 'same' zero padding; act is ReLU when relu != 0, else identity.
 * The algorithms (vgg_conv3x3_algo_at chooses one per layer shape and precision):
 *   - Winograd F(4x4,3x3) / F(6x6,3x3) (winograd.c): 4x / 5.1x fewer
 *     multiplies, for layers with at least 16 input channels whose tiles do
 *     not waste too much;
 *   - Winograd F(2x2,3x3) with bf16 operands (winograd_bf16.c), at
 *     VGG_PRECISION_BF16 only (see enum vgg_precision);
 *   - im2col + sgemm: each thread takes chunks of output pixels, im2col into
 *     its own column buffer, one sgemm, then bias and ReLU while in cache (the
 *     first layer, 3 channels, and tiny maps).
 * Results do not depend on the thread count.
 * workspace: vgg_conv3x3_workspace_floats(cin, cout) floats (at the current
 * thread count; independent of N, H, W). Less than that for Winograd makes the
 * call use im2col; less still works, slower. */
size_t vgg_conv3x3_workspace_floats(size_t cin, size_t cout);

/* The layer by a given algorithm (VGG_CONV_IM2COL, VGG_CONV_WINOGRAD,
 * _WINOGRAD6, _WINOGRAD3 or _WINOGRAD_BF16; Winograd falls back to im2col
 * when the workspace is too small for it). Fine-tuning (finetune.c) trains each
 * layer by its float32 algorithm, forward and backward; Grad-CAM (gradcam.c)
 * runs im2col, its maps then as exact as float32 sums make them. */
int vgg_conv3x3_forward_by(int algo, float *out, const float *x, const float *kernel,
                           const float *bias, int relu, size_t n, size_t h, size_t w, size_t cin,
                           size_t cout, float *workspace, size_t workspace_floats,
                           vgg_abort_fn abort_cb, void *abort_ctx);

/* vgg_conv3x3_forward_by(algo, ...) with ReLU, then a 2x2 max-pool,
 * fused into the output write (out: (N, H/2, W/2, Cout), the same bits as the
 * two layers run in turn) when algo is a Winograd one whose workspace fits:
 * then returns 1 and stores the status in *status. Otherwise returns 0 and
 * does nothing (the caller runs the two layers). */
int vgg_conv3x3_pool_forward_by(int *status, int algo, float *out, const float *x,
                                const float *kernel, const float *bias, size_t n, size_t h,
                                size_t w, size_t cin, size_t cout, float *workspace,
                                size_t workspace_floats, vgg_abort_fn abort_cb, void *abort_ctx);

/* A kernel in the form an algorithm computes with (IM2COL: packed for the
 * products; WINOGRAD: its transform U; WINOGRAD_BF16: its bf16 transform): the
 * weights of a frozen network are prepared once and passed to every later call
 * (vgg16_weights.conv_prepared) instead of being transformed again each time.
 * The form does not depend on the instruction set. prepared: at least
 * vgg_conv3x3_prepared_floats(algo, cin, cout) floats (0 for another algo).
 * Threads: OpenMP. VGG_ERR_ARG for an unknown algo or NULL, _SHAPE for sizes. */
size_t vgg_conv3x3_prepared_floats(int algo, size_t cin, size_t cout);
int vgg_conv3x3_prepare(float *prepared, size_t prepared_floats, int algo, const float *kernel,
                        size_t cin, size_t cout);

/* The layer by `algo` (IM2COL, WINOGRAD or WINOGRAD_BF16), its kernel prepared
 * for that algo beforehand (prepared) or, when prepared is NULL, from `kernel`
 * in the workspace; ReLU when relu; with pool, out is the layer's 2x2 max-pool
 * (N, H/2, W/2, Cout) fused into the output transform: Winograd algos only
 * (VGG_ERR_ARG otherwise), VGG_ERR_NOMEM when the workspace is too small for
 * Winograd (without pool the layer then runs im2col). */
int vgg_conv3x3_run(int algo, const float *prepared, int relu, int pool, float *out,
                    const float *x, const float *kernel, const float *bias, size_t n, size_t h,
                    size_t w, size_t cin, size_t cout, float *workspace, size_t workspace_floats,
                    vgg_abort_fn abort_cb, void *abort_ctx);

/* Whether vgg_conv3x3_run(algo, ..., pool = 1, ...) can fuse the pool for an
 * h x w layer: Winograd algos whose tiles hold whole pool windows (even tiles,
 * or an odd one covering the map), h and w at least 2. */
int vgg_conv3x3_fuses_pool(int algo, size_t h, size_t w);

/* The algorithm a layer of this shape runs at `precision` under the current
 * setting (vgg16_forward runs the layer by it). */
int vgg_conv3x3_algo_at(size_t h, size_t w, size_t cin, size_t cout, int precision);
/* The same at VGG_PRECISION_FP32: VGG_CONV_IM2COL, _WINOGRAD, _WINOGRAD6 or
 * _WINOGRAD3. */
int vgg_conv3x3_algo(size_t h, size_t w, size_t cin, size_t cout);

/* conv3x3.c, backward: given dout = dL/d(conv output before the activation)
 * (N,H,W,Cout) and the forward input x, overwrites dw (3,3,Cin,Cout), db (Cout)
 * and, when not NULL, dx (N,H,W,Cin), by `algo`: VGG_CONV_WINOGRAD, _WINOGRAD6 or
 * _WINOGRAD3 compute dW by the tiles' adjoint and dx through the Winograd forward; any
 * other algo runs im2col (as does a workspace too small for Winograd).
 * Workspace: vgg_conv3x3_backward_workspace_floats(algo, cin, cout) at the
 * current thread count. The results do not depend on the thread count. */
size_t vgg_conv3x3_backward_workspace_floats(int algo, size_t cin, size_t cout);
int vgg_conv3x3_backward(int algo, float *dx, float *dw, float *db, const float *dout,
                         const float *x, const float *kernel, size_t n, size_t h, size_t w,
                         size_t cin, size_t cout, float *workspace, size_t workspace_floats,
                         vgg_abort_fn abort_cb, void *abort_ctx);

/* maxpool2x2.c: out (N,H/2,W/2,C) = max over 2x2 windows of x (N,H,W,C), stride 2,
 * 'valid' padding: odd H or W drop the last row / column (floor, as Keras).
 * NaN propagates. H and W must be >= 2. */
int vgg_maxpool2x2_forward(float *out, const float *x, size_t n, size_t h, size_t w, size_t c);
/* Backward: dx (N,H,W,C) <- dout (N,H/2,W/2,C) routed to each window's first
 * maximum in row-major order (TensorFlow's and PyTorch's tie rule); zero
 * elsewhere, including rows / columns an odd size dropped. */
int vgg_maxpool2x2_backward(float *dx, const float *dout, const float *x, size_t n, size_t h,
                            size_t w, size_t c);

/* global_pool.c: out (N,C) = mean (mode VGG_POOL_AVG) or max (VGG_POOL_MAX)
 * of x (N,H,W,C) over H and W. */
enum vgg_pooling { VGG_POOL_NONE = 0, VGG_POOL_AVG = 1, VGG_POOL_MAX = 2 };
int vgg_global_pool_forward(float *out, const float *x, int mode, size_t n, size_t h,
                            size_t w, size_t c);

/* activations.c */
enum vgg_activation { VGG_ACT_LINEAR = 0, VGG_ACT_RELU = 1, VGG_ACT_SOFTMAX = 2,
                      VGG_ACT_SIGMOID = 3 };
/* In place on x (rows, cols): linear, relu, sigmoid elementwise; softmax per row
 * (max-subtracted, so exp never overflows). */
int vgg_activation_forward(float *x, int activation, size_t rows, size_t cols);

/* dense.c: out (N,Out) = act(x (N,In) @ kernel (In,Out) + bias (Out)). The
 * product is split by output columns (or rows, for tall x) across threads. */
int vgg_dense_forward(float *out, const float *x, const float *kernel, const float *bias,
                      int activation, size_t n, size_t in, size_t outdim);

/* ------------------------------------------------------------------------ */
/* resizing (resize.c)                                                        */

/* Floats of workspace for vgg_resize_bilinear of (h, w, c) images to (oh, ow):
 * the windows and weights of both axes plus one buffer per thread at the current
 * thread count (one image filtered horizontally, h*ow*c floats, and 2*ow*c more).
 * 0 when a size is 0 or the count overflows. */
size_t vgg_resize_workspace_floats(size_t h, size_t w, size_t c, size_t oh, size_t ow);

/* out (N,OH,OW,C) <- x (N,H,W,C), both of `dtype` (VGG_U8 or VGG_F32), resized
 * bilinearly as Pillow's Image.resize(size, BILINEAR): pixel centres aligned
 * (output o sits at input (o + 0.5) * in/out), a triangle filter of support 1
 * that is stretched by in/out when shrinking (antialiasing), weights
 * renormalised at the borders. Any C >= 1.
 * uint8: Pillow's fixed-point arithmetic, horizontal pass first, intermediate
 * rounded: Pillow's result to the bit, or within +-1 where Pillow 13 runs the
 * vertical pass first; float32: computed in double, not clamped, NaN propagates.
 * Reads x, overwrites out.
 * workspace: vgg_resize_workspace_floats() floats, 8-byte aligned (as malloc's);
 * less still works on fewer threads as long as the weights and one buffer fit,
 * else VGG_ERR_NOMEM. VGG_ERR_ARG for NULL, a misaligned workspace or another
 * dtype; VGG_ERR_SHAPE for a zero size or an overflowing one; N = 0 does nothing.
 * Threads: OpenMP over images. */
int vgg_resize_bilinear(void *out, const void *x, int dtype, size_t n, size_t h, size_t w,
                        size_t c, size_t oh, size_t ow, float *workspace,
                        size_t workspace_floats);

/* ------------------------------------------------------------------------ */
/* augmentation (augment.c)                                                   */

/* Keras 3's ImageDataGenerator affine augmentation. One image's transform is a
 * row of VGG_AUG_NPARAMS doubles in this order (Keras's apply_transform keys):
 * theta (degrees), tx, ty (pixels), shear (degrees), zx, zy (zoom: > 1 samples a
 * larger area, the content shrinks), flip_horizontal, flip_vertical (non-zero:
 * flip, after the warp). As in Keras 3, tx and zx act on columns, ty and zy on
 * rows (Keras 3 swaps the axes of keras-preprocessing 1.1.2). */
enum vgg_augment_param {
    VGG_AUG_THETA = 0, VGG_AUG_TX, VGG_AUG_TY, VGG_AUG_SHEAR, VGG_AUG_ZX, VGG_AUG_ZY,
    VGG_AUG_FLIP_H, VGG_AUG_FLIP_V,
    VGG_AUG_NPARAMS
};
/* Points outside the image, as scipy.ndimage's modes of the same names:
 * nearest aaaa|abcd|dddd, constant cval (no blending at the edge), reflect
 * dcba|abcd|dcba, wrap (scipy's "wrap": period len - 1, not "grid-wrap"). */
enum vgg_fill_mode { VGG_FILL_NEAREST = 0, VGG_FILL_CONSTANT = 1, VGG_FILL_REFLECT = 2,
                     VGG_FILL_WRAP = 3 };

/* m (2x3 row-major) <- the map from an output (row, col) of an h x w image to the
 * input (row, col) it samples: in_row = m[0]*row + m[1]*col + m[2], in_col =
 * m[3]*row + m[4]*col + m[5]. Keras 3's composition: R.T.Sh.Z centred on
 * o = (h/2 - 0.5, w/2 - 0.5), then the swap of the first two rows and columns
 * (so the centre is at row w/2 - 0.5, col h/2 - 0.5). Flips are not part of it.
 * VGG_ERR_ARG for NULL or a non-finite parameter. */
int vgg_augment_matrix(double m[6], const double params[VGG_AUG_NPARAMS], size_t h, size_t w);

/* The distributions of the random parameters (Keras's get_random_transform):
 * theta ~ U(-rotation_range, rotation_range); tx from shift [0] (Keras's
 * height_shift_range), ty from shift [1] (width_shift_range): U(-range, range),
 * or, when shift_values[a] is not NULL, one of its shift_count[a] values times a
 * random sign (Keras's int or list ranges); either times shift_scale[a] (the
 * image's height / width when the range is a fraction, else 1); shear ~
 * U(-shear_range, shear_range); zx, zy ~ U(zoom_lo, zoom_hi) independently (both
 * 1 when lo == hi == 1); each flip with probability 1/2 when enabled. */
typedef struct {
    double rotation_range;       /* degrees, >= 0 */
    double shift_range[2];       /* >= 0; [0] -> tx, [1] -> ty */
    const double *shift_values[2];
    size_t shift_count[2];
    double shift_scale[2];
    double shear_range;          /* degrees, >= 0 */
    double zoom_lo, zoom_hi;     /* > 0 */
    int horizontal_flip, vertical_flip;
} vgg_augment_ranges;

/* params (n, VGG_AUG_NPARAMS) <- the parameters of the images whose indices (in
 * the data set) are index[0..n-1] (0..n-1 when index is NULL): a pure function of
 * (seed, stream, image index) through rng.c, so any batching, order and thread
 * count give the same draws. VGG_ERR_ARG for NULL or ranges outside their domain
 * (negative, non-finite, zoom <= 0, an empty value list). Serial. */
int vgg_augment_draw(double *params, const vgg_augment_ranges *ranges, const int64_t *index,
                     size_t n, uint64_t seed, uint64_t stream);

/* out (N,H,W,C) float32 <- image index[i] (i when index is NULL) of x (NX,H,W,C)
 * of `dtype` (VGG_U8, VGG_F32 or VGG_F64, read as it is, no rescaling), warped by
 * params row i (vgg_augment_matrix), sampled bilinearly (scipy's order-1
 * weights, in double) with `fill_mode` outside the image, then flipped. Any
 * C >= 1; H and W >= 2. Reads x and params, overwrites out.
 * VGG_ERR_ARG: NULL, unknown dtype or mode, an index outside [0, NX), a
 * non-finite parameter; VGG_ERR_SHAPE: sizes too small or overflowing, or
 * N > NX without an index. Threads: OpenMP over (image, output row). */
int vgg_augment_apply(float *out, const void *x, int dtype, const int64_t *index, size_t n,
                      size_t nx, size_t h, size_t w, size_t c, const double *params,
                      int fill_mode, float cval);

/* ------------------------------------------------------------------------ */
/* the VGG16 network (vgg16.c)                                                */

/* Layer indices, in Keras's order; names from vgg16_layer_name(). */
enum vgg16_layer {
    VGG16_BLOCK1_CONV1 = 0, VGG16_BLOCK1_CONV2, VGG16_BLOCK1_POOL,
    VGG16_BLOCK2_CONV1, VGG16_BLOCK2_CONV2, VGG16_BLOCK2_POOL,
    VGG16_BLOCK3_CONV1, VGG16_BLOCK3_CONV2, VGG16_BLOCK3_CONV3, VGG16_BLOCK3_POOL,
    VGG16_BLOCK4_CONV1, VGG16_BLOCK4_CONV2, VGG16_BLOCK4_CONV3, VGG16_BLOCK4_POOL,
    VGG16_BLOCK5_CONV1, VGG16_BLOCK5_CONV2, VGG16_BLOCK5_CONV3, VGG16_BLOCK5_POOL,
    VGG16_FLATTEN, VGG16_FC1, VGG16_FC2, VGG16_PREDICTIONS,
    VGG16_NUM_LAYERS
};
enum vgg16_kind { VGG16_KIND_CONV = 0, VGG16_KIND_POOL = 1, VGG16_KIND_FLATTEN = 2,
                  VGG16_KIND_DENSE = 3 };
#define VGG16_NUM_CONV 13
#define VGG16_NUM_DENSE 3
#define VGG16_MIN_SIZE 32   /* Keras's min_size for VGG16 */
#define VGG16_TOP_SIZE 224  /* the top (fc1) expects 7x7x512 = 25088 inputs */

const char *vgg16_layer_name(int layer);   /* NULL when out of range */
int vgg16_layer_kind(int layer);           /* -1 when out of range */
/* Output channels of a conv/pool layer, units of a dense layer (predictions:
 * 0, it is set by the weights), 0 for flatten / out of range. */
size_t vgg16_layer_units(int layer);
/* What a layer reads: input channels of a conv or pool, input units of a dense
 * layer (fc1: the 7 x 7 x 512 of block5_pool at 224 x 224), block5_pool's
 * channels for flatten; 0 out of range. */
size_t vgg16_layer_inputs(int layer);
/* The precision conv layer `layer` runs at in a network run at `precision`:
 * block 1's two convolutions, at the input's full resolution, stay float32 at
 * VGG_PRECISION_BF16. Measured on trained weights (benchmarks/tutorial.py), a
 * bf16 block 1 cost a head trained on augmented features accuracy that a
 * float32 block 1 kept, while bf16 from block 2 on did not measurably; its
 * per-layer error is no larger than the other layers', so why is not known. */
int vgg16_conv_precision(int layer, int precision);
/* The layer's parameters: a conv's position among the 13 (vgg16_weights.conv_*),
 * a dense layer's among the 3 (dense_*); -1 for a pool, flatten, out of range. */
int vgg16_layer_param(int layer);
/* The layer index of conv `conv` (0..12); -1 out of range. */
int vgg16_conv_layer(int conv);

/* Borrowed weight pointers (the caller keeps them alive during a call).
 * conv_kernel[i]: (3,3,Cin_i,Cout_i) HWIO; conv_bias[i]: (Cout_i).
 * dense_kernel[0] fc1 (25088,4096), [1] fc2 (4096,4096), [2] predictions
 * (4096, classes); dense_bias likewise. Dense pointers are read only when the
 * network runs past VGG16_FLATTEN.
 * conv_prepared[i] (optional, NULL: none): conv i's kernel prepared by
 * vgg_conv3x3_prepare for algorithm conv_prepared_algo[i], used when the layer
 * runs that algorithm (and must then match conv_kernel[i]); any other layer
 * prepares its kernel in the workspace on every call. */
typedef struct {
    const float *conv_kernel[VGG16_NUM_CONV];
    const float *conv_bias[VGG16_NUM_CONV];
    const float *conv_prepared[VGG16_NUM_CONV];
    int conv_prepared_algo[VGG16_NUM_CONV];
    const float *dense_kernel[VGG16_NUM_DENSE];
    const float *dense_bias[VGG16_NUM_DENSE];
    size_t classes;
} vgg16_weights;

/* What the network computes: the input conversion, the layer to stop after
 * (inclusive), and a global pooling applied to that layer's output (only for a
 * conv or pool layer; VGG_POOL_NONE otherwise). */
typedef struct {
    float scale[3], shift[3];  /* as vgg_input_convert */
    int reverse_channels;
    int stop_layer;            /* enum vgg16_layer */
    int pooling;               /* enum vgg_pooling */
    int start_layer;           /* 0: x holds images; L > 0: x holds the float32 output
                                  of layer L-1 (a cached cut), h, w and cin its shape */
    int precision;             /* enum vgg_precision of the convolutions */
    int prepared;              /* non-zero: every conv run comes with its kernel prepared
                                  (vgg16_weights.conv_prepared) for the algorithm it
                                  runs, and the workspace is sized without room to
                                  prepare one; a missing one is VGG_ERR_ARG */
} vgg16_config;

/* Output shape of the network for an input of h x w: writes oh, ow, oc (a dense
 * output or a global pool has oh = ow = 1). VGG_ERR_SHAPE if the input is too
 * small for the stop layer (every pool needs >= 2 rows and columns) or, past
 * flatten, block5_pool is not 7 x 7 (a 224 x 224 image). h and w are the
 * image's, or with start_layer > 0 those of layer start_layer - 1's output. */
int vgg16_output_shape(size_t *oh, size_t *ow, size_t *oc, const vgg16_config *cfg,
                       size_t classes, size_t h, size_t w);

/* Floats of workspace to run up to `batch` images of h x w at once. The
 * forward pass splits any N into passes of at most the number of images that
 * fit the workspace it is given, so memory does not grow with N. */
size_t vgg16_workspace_floats(const vgg16_config *cfg, size_t batch, size_t h, size_t w);
/* The same with the convolutions' buffers for `threads` threads rather than the
 * knob's count: vgg16_forward given a workspace that holds fewer threads'
 * buffers than the knob asks for runs the convolutions on as many threads as it
 * holds (a memory budget: the caller picks the threads). 0 if threads < 1. */
size_t vgg16_workspace_floats_for(const vgg16_config *cfg, size_t batch, size_t h, size_t w,
                                  size_t threads);
/* The least vgg16_forward accepts: one image, and the convolutions' buffers for
 * one thread (they then run single-threaded). 0 if the input is too small. */
size_t vgg16_workspace_floats_min(const vgg16_config *cfg, size_t h, size_t w);

/* out (N, oh, ow, oc) (see vgg16_output_shape) <- x (N,H,W,cin) of `dtype`.
 * Runs passes of as many images as fit `workspace` (at least one must fit:
 * otherwise VGG_ERR_NOMEM). */
int vgg16_forward(float *out, const void *x, int dtype, size_t n, size_t h, size_t w,
                  size_t cin, const vgg16_weights *weights, const vgg16_config *cfg,
                  float *workspace, size_t workspace_floats,
                  vgg_abort_fn abort_cb, void *abort_ctx);

/* Images vgg16_forward has run through the network from its input since the
 * library was loaded, over all threads and calls (a pass counts once it
 * completes; a run from a cut, start_layer > 0, continues images already
 * counted): how a test proves that a cached extraction computed nothing.
 * Thread-safe. */
uint64_t vgg16_forward_images(void);

/* ------------------------------------------------------------------------ */
/* backward passes and losses (dense.c, activations.c, dropout.c, losses.c)  */

/* dense.c: gradients of out = x @ kernel + bias, given dz = dL/d(out) before
 * the activation (n, out). Overwrites db (out), and dw (in, out) and dx (n, in)
 * when not NULL; dx needs `scratch` of ceil(in / 16) * 16 * out floats (W^T
 * packed), else it may be NULL. */
int vgg_dense_backward(float *dx, float *dw, float *db, const float *dz, const float *x,
                       const float *kernel, size_t n, size_t in, size_t outdim, float *scratch);

/* activations.c: dz = dy * f'(.) where y = f(z) is the saved output (rows, cols);
 * softmax uses its Jacobian row by row: dz = y * (dy - <dy, y>). dz may be dy. */
int vgg_activation_backward(float *dz, const float *dy, const float *y, int activation,
                            size_t rows, size_t cols);

/* dropout.c: inverted dropout (Keras): y = x * keep / (1 - rate), keep drawn
 * with probability 1 - rate from (seed, stream, index) - a pure function, so
 * backward recomputes the mask and the result is the same on any thread count.
 * y may be x; dx may be dy. 0 <= rate < 1. */
int vgg_dropout_forward(float *y, const float *x, float rate, uint64_t seed, uint64_t stream,
                        size_t count);
int vgg_dropout_backward(float *dx, const float *dy, float rate, uint64_t seed,
                         uint64_t stream, size_t count);

/* losses.c: the crossentropies as TensorFlow's Keras computes them (tf-keras
 * 2.x and Keras 3's TensorFlow backend), for the output `out` (n, c) of a layer
 * whose activation is `activation`:
 *   - softmax or sigmoid: TF's Keras reads the logits the activation kept
 *     (_keras_logits), so `out` holds those logits z (the pre-activation) and
 *     BCE = mean_k sigmoid_cross_entropy_with_logits(z, y),
 *     CCE = softmax_cross_entropy_with_logits(z, y), SPARSE_CCE = its sparse form;
 *     dout gets d loss / dz (CCE's is softmax(z) - y, TensorFlow's kernel).
 *   - linear or relu: `out` holds probabilities p, clipped to [e, 1-e] (e = 1e-7,
 *     gradient only inside, as tf.clip_by_value):
 *     BCE: l_i = mean_k -(y ln(p + e) + (1-y) ln((1 + e) - p)), 1 + e rounded to
 *     float32 (Keras's 1 - p + e as TensorFlow's graph optimizer folds it);
 *     CCE: q = p / sum(p), clipped, l_i = -sum_k y ln q;
 *     SPARSE_CCE: r = clip(p), l_i = -ln(r_label / sum(r)).
 * loss = sum_i w_i l_i / n (Keras's "sum_over_batch_size"; w_i = 1 without
 * sample weights). targets (n, c) float for BCE / CCE; labels (n) int32 in
 * [0, c) for SPARSE_CCE. dout (n, c) and per_sample (n, gets l_i) may be NULL. */
enum vgg_loss { VGG_LOSS_BCE = 0, VGG_LOSS_CCE = 1, VGG_LOSS_SPARSE_CCE = 2 };
int vgg_loss_forward_backward(double *loss, float *dout, float *per_sample, const float *out,
                              const float *targets, const int32_t *labels,
                              const float *sample_weight, int kind, int activation, size_t n,
                              size_t c);

/* ------------------------------------------------------------------------ */
/* optimizers (optim.c)                                                       */

/* Keras 3 update rules (keras/src/optimizers/{sgd,adam,rmsprop}.py) with the
 * legacy `decay`: lr_t = learning_rate / (1 + decay * iterations), where
 * iterations counts the updates already done (0 for the first).
 *   SGD:     m = momentum*m - lr*g; p += m (nesterov: p += momentum*m - lr*g);
 *            momentum 0: p -= lr*g
 *   Adam:    t = it+1; a = lr*sqrt(1-b2^t)/(1-b1^t); m += (g-m)(1-b1);
 *            v += (g^2-v)(1-b2); p -= a*m/(sqrt(v)+eps)
 *   RMSprop: v = rho*v + (1-rho)*g^2; inc = lr*g/sqrt(v+eps);
 *            momentum > 0: m = momentum*m + inc; p -= m;  else p -= inc
 * slot0 / slot1: the state the rule needs (SGD: slot0 momentum buffer when
 * momentum > 0; Adam: m, v; RMSprop: v, and slot1 the momentum buffer when
 * momentum > 0), each `count` floats, zero at the start. */
enum vgg_optimizer_kind { VGG_OPT_SGD = 0, VGG_OPT_ADAM = 1, VGG_OPT_RMSPROP = 2 };
typedef struct {
    int kind;
    double learning_rate, decay;
    /* a schedule: when lr_steps is not NULL, update `iterations` uses
     * lr_steps[iterations - lr_first] (>= 0, lr_count values) in place of
     * learning_rate, still divided by (1 + decay * iterations) as Keras's legacy
     * optimizers do; an iteration outside the table is VGG_ERR_ARG */
    const double *lr_steps;
    int64_t lr_first;
    size_t lr_count;
    double beta_1, beta_2, epsilon; /* Adam (epsilon also RMSprop) */
    double momentum;                /* SGD, RMSprop */
    int nesterov;                   /* SGD */
    double rho;                     /* RMSprop */
} vgg_optimizer;

int vgg_optimizer_step(float *param, const float *grad, float *slot0, float *slot1, size_t count,
                       const vgg_optimizer *opt, int64_t iterations);
/* Slots a parameter needs under this optimizer: 0, 1 or 2. */
int vgg_optimizer_slots(const vgg_optimizer *opt);

/* ------------------------------------------------------------------------ */
/* the classification head (head.c)                                           */

/* A head is an input reduction of the per-sample feature map (h, w, c) -
 * flatten, global average or global max pooling - then a stack of dense and
 * dropout layers. Parameters and optimizer slots are borrowed; training
 * updates kernel, bias and slots in place. */
enum vgg_head_input { VGG_HEAD_FLATTEN = 0, VGG_HEAD_GAP = 1, VGG_HEAD_GMP = 2 };
enum vgg_head_kind { VGG_HEAD_DENSE = 0, VGG_HEAD_DROPOUT = 1 };
#define VGG_HEAD_MAX_LAYERS 32

typedef struct {
    int kind;           /* enum vgg_head_kind */
    size_t units;       /* dense: output units; dropout: ignored (same as input) */
    int activation;     /* dense: enum vgg_activation */
    float rate;         /* dropout */
    float *kernel;      /* dense (in, units) */
    float *bias;        /* dense (units) */
    float *slots[4];    /* optimizer state: kernel slot0, slot1, bias slot0, slot1 */
} vgg_head_layer;

typedef struct {
    int input;          /* enum vgg_head_input */
    size_t h, w, c;     /* per-sample feature map */
    size_t n_layers;
    vgg_head_layer layers[VGG_HEAD_MAX_LAYERS];
} vgg_head;

/* Output size (the last layer's units); 0 when the head is invalid. */
size_t vgg_head_output_size(const vgg_head *head);
/* Floats of workspace to train on batches of `batch` samples (inference needs
 * less; the same size serves both). 0 when the head is invalid. */
size_t vgg_head_workspace_floats(const vgg_head *head, size_t batch);

/* Inference (dropout off): out (n, units) <- x (n, h, w, c) of dtype VGG_F32 or
 * VGG_F16, in batches of `batch`. */
int vgg_head_predict(float *out, const void *x, int dtype, size_t n, const vgg_head *head,
                     size_t batch, float *workspace, size_t workspace_floats,
                     vgg_abort_fn abort_cb, void *abort_ctx);

/* Targets of a fit or evaluation: targets (n, units) float for BCE / CCE,
 * labels (n) int32 for SPARSE_CCE; sample_weight (n) or NULL. */
typedef struct {
    int loss;                 /* enum vgg_loss */
    const float *targets;
    const int32_t *labels;
    const float *sample_weight;
} vgg_targets;

/* Sums over the samples seen: the loss (sample weights applied) and the number
 * correct (accuracy: units == 1 -> yhat > 0.5 vs target > 0.5; SPARSE -> argmax
 * vs label; else argmax vs argmax of the target row, as Keras 3 picks). */
typedef struct {
    double loss_sum;
    double correct;
    size_t seen;
    size_t batches;
    size_t grad_batches; /* training: batches in which some gradient was not exactly 0 */
} vgg_fit_stats;

/* Loss and accuracy without updating anything (dropout off). */
int vgg_head_evaluate(vgg_fit_stats *stats, const void *x, int dtype, size_t n,
                      const vgg_head *head, const vgg_targets *t, size_t batch,
                      float *workspace, size_t workspace_floats, vgg_abort_fn abort_cb,
                      void *abort_ctx);

/* One epoch: order <- a permutation of 0..n-1 from (seed, epoch) when shuffle,
 * else identity; then per batch of `batch` samples in that order: forward with
 * dropout (masks from (seed, iteration)), loss, backward, one optimizer step,
 * *iterations += 1. order (n) is the caller's scratch. outputs (n, units), when
 * not NULL, gets each sample's output as the loss saw it (dropout on, before the
 * batch's update: what Keras's training metrics read), at the sample's index.
 * Stops with VGG_ERR_NONFINITE before updating when a batch loss or a gradient
 * is NaN or infinite. stats->grad_batches counts the batches whose gradients
 * were not all exactly 0. */
int vgg_head_fit_epoch(vgg_fit_stats *stats, vgg_head *head, const vgg_optimizer *opt,
                       int64_t *iterations, const void *x, int dtype, size_t n,
                       const vgg_targets *t, size_t batch, int shuffle, uint64_t seed,
                       uint64_t epoch, int64_t *order, float *outputs, float *workspace,
                       size_t workspace_floats, vgg_abort_fn abort_cb, void *abort_ctx);

/* ------------------------------------------------------------------------ */
/* fine-tuning the top of VGG16 (finetune.c)                                  */

/* The trainable tail: layers start_layer (a conv) .. block5_pool, fed by the
 * cached output of layer start_layer - 1. kernel/bias/slots are indexed by the
 * conv's position among the 13 (block1_conv1 = 0 ... block5_conv3 = 12); only
 * the tail's are read. Training updates them in place. */
typedef struct {
    int start_layer;
    float *kernel[VGG16_NUM_CONV];
    float *bias[VGG16_NUM_CONV];
    float *slots[VGG16_NUM_CONV][4]; /* kernel slot0, slot1, bias slot0, slot1 */
} vgg16_tail;

/* Floats of workspace for batches of `batch` cut maps of h x w; 0 when the
 * tail and the head do not fit each other (the head's (h, w, c) must be the
 * tail's output). */
size_t vgg16_finetune_workspace_floats(const vgg16_tail *tail, const vgg_head *head,
                                       size_t batch, size_t h, size_t w);

/* One epoch: x (n, h, w, c) float32 / float16 is the cut; order, shuffling,
 * dropout, targets, outputs and stats as vgg_head_fit_epoch; per batch one step of the
 * head and of every tail conv with the same optimizer and iteration. */
int vgg16_finetune_fit_epoch(vgg_fit_stats *stats, vgg16_tail *tail, vgg_head *head,
                             const vgg_optimizer *opt, int64_t *iterations, const void *x,
                             int dtype, size_t n, size_t h, size_t w, const vgg_targets *t,
                             size_t batch, int shuffle, uint64_t seed, uint64_t epoch,
                             int64_t *order, float *outputs, float *workspace,
                             size_t workspace_floats, vgg_abort_fn abort_cb, void *abort_ctx);

/* head.c: d_maps (m, h, w, c) <- the gradient of each sample's class score - the
 * output layer's pre-activation (logit) of unit class_index[i] - with respect
 * to its feature map, dropout off, the head unchanged. class_index[i] < 0
 * chooses the unit with the highest output and writes it back; one >= units is
 * VGG_ERR_ARG. Workspace: vgg_head_workspace_floats(head, m). */
int vgg_head_score_backward(float *d_maps, int32_t *class_index, const float *maps, size_t m,
                            const vgg_head *head, float *workspace, size_t workspace_floats);

/* gradcam.c: Grad-CAM at the output A (n, h, w, c) of base layer `layer` (a conv,
 * after its ReLU, or a pool): cam (n, h, w) <- ReLU(sum_k alpha_k A[..., k]) with
 * alpha_k the mean over positions of d(score)/dA[..., k], the score as in
 * vgg_head_score_backward (class_index likewise). The layers after A up to
 * block5_pool run forward and backward with the training kernels, weights
 * from weights->conv_kernel / conv_bias; the head reads block5_pool's output
 * (its h, w, c must be that output's). Batches of `batch` images; workspace:
 * vgg16_grad_cam_workspace_floats (0: the layer, the sizes and the head do not
 * fit each other). Overwrites cam and the negative class_index entries. */
size_t vgg16_grad_cam_workspace_floats(int layer, const vgg_head *head, size_t batch, size_t h,
                                       size_t w);
int vgg16_grad_cam(float *cam, int32_t *class_index, const float *maps, size_t n, size_t h,
                   size_t w, int layer, const vgg16_weights *weights, const vgg_head *head,
                   size_t batch, float *workspace, size_t workspace_floats,
                   vgg_abort_fn abort_cb, void *abort_ctx);

#ifdef __cplusplus
}
#endif
#endif /* VGG_H */
