/*
 * conv3x3.c - 3x3 convolution, stride 1, 'same' zero padding, NHWC.
 *
 * vgg_conv3x3_algo_at picks the algorithm per layer shape and precision: in
 * float32, Winograd F(4x4,3x3) or F(6x6,3x3) (winograd.c) for layers with at
 * least 16 input channels whose tiles waste little, else the im2col path below;
 * at bf16 precision, Winograd F(2x2,3x3) with bf16 operands (winograd_bf16.c)
 * for every layer with at least 16 input channels whose 2x2 tiles at most
 * double the pixels (maps F(4x4) declines included), the others as in float32,
 * and none when im2col is forced (VGG16 runs its block 1 in float32 even so:
 * vgg16_conv_precision). Training runs float32: fine-tuning (finetune.c) by
 * the layer's float32 algorithm, forward and backward (vgg_conv3x3_backward),
 * Grad-CAM (gradcam.c) by im2col.
 *
 * Forward as im2col + a matrix product (darknet, ggml; gemm.c), done a chunk of
 * output pixels at a time so the column buffer stays small (a whole-layer
 * im2col would be 9x the input: 110 MiB per image for block1_conv2) and in cache:
 *   col (rows, 9*Cin)      <- the 3x3 neighbourhoods of `rows` output pixels
 *   out (rows, Cout)       <- col @ kernel (9*Cin, Cout)      [vgg_gemm_b]
 *   out                    <- relu(out + bias)                [while hot]
 * The HWIO kernel is that (9*Cin, Cout) matrix as it is stored, read in place
 * (a kernel prepared once for frozen weights is read packed instead).
 * Memory: the caller owns out, x, kernel, bias and the workspace (the column
 * buffers, one per thread: vgg_conv3x3_workspace_floats(cin, cout) floats).
 */
#include "vgg_internal.h"

#include <string.h>

/* Rows per chunk: each thread packs its own chunk of output pixels into its own
 * column buffer (kept near L2 size: 1 MiB per core on the target machines) and
 * runs a single-threaded product on it, so the phases of a chunk never wait on
 * the other thread and the buffer is still in cache when the product reads it. */
#define COL_TARGET_FLOATS ((size_t)1 << 18) /* 512 KiB per thread */
#define MIN_CHUNK_ROWS 256

static size_t chunk_rows(size_t cin) {
    size_t rows = COL_TARGET_FLOATS / (9 * cin);
    return rows < MIN_CHUNK_ROWS ? MIN_CHUNK_ROWS : rows;
}

/* im2col's workspace: the kernel packed for gemm.c, then a column buffer per thread */
static size_t packed_kernel_floats(size_t cin, size_t cout) {
    return vgg_gemm_packed_floats(9 * cin, cout);
}

/* kp <- the HWIO kernel, a (9 Cin, Cout) matrix, in gemm.c's panels, a panel per task */
static void pack_kernel(float *kp, const float *kernel, size_t cin, size_t cout, int nth) {
    const size_t k = 9 * cin, np = (cout + VGG_GEMM_NR - 1) / VGG_GEMM_NR;
    VGG_OMP_FOR_N(nth)
    for (size_t p = 0; p < np; p++) {
        const size_t c0 = p * VGG_GEMM_NR, len = cout - c0 < VGG_GEMM_NR ? cout - c0 : VGG_GEMM_NR;
        vgg_gemm_pack_b(kp + p * VGG_GEMM_NR * k, kernel + c0, cout, k, len);
    }
}

size_t vgg_conv3x3_prepared_floats(int algo, size_t cin, size_t cout) {
    switch (algo) {
    case VGG_CONV_IM2COL: return packed_kernel_floats(cin, cout);
    case VGG_CONV_WINOGRAD: return vgg_winograd_prepared_floats(4, cin, cout);
    case VGG_CONV_WINOGRAD6: return vgg_winograd_prepared_floats(6, cin, cout);
    case VGG_CONV_WINOGRAD3: return vgg_winograd_prepared_floats(3, cin, cout);
    case VGG_CONV_WINOGRAD_BF16:
    case VGG_CONV_WINOGRAD_BF16_AMX: return vgg_winograd_bf16_prepared_floats(cin, cout);
    default: return 0;
    }
}

int vgg_conv3x3_prepare(float *prepared, size_t prepared_floats, int algo, const float *kernel,
                        size_t cin, size_t cout) {
    VGG_CHECK(prepared && kernel, VGG_ERR_ARG);
    switch (algo) {
    case VGG_CONV_IM2COL:
        VGG_CHECK(cin >= 1 && cout >= 1 && 9 * cin <= VGG_BLAS_MAX_DIM && cout <= VGG_BLAS_MAX_DIM,
                  VGG_ERR_SHAPE);
        VGG_CHECK(prepared_floats >= packed_kernel_floats(cin, cout), VGG_ERR_SHAPE);
        pack_kernel(prepared, kernel, cin, cout, vgg_get_num_threads());
        return VGG_OK;
    case VGG_CONV_WINOGRAD:
        return vgg_winograd_prepare(4, prepared, prepared_floats, kernel, cin, cout);
    case VGG_CONV_WINOGRAD6:
        return vgg_winograd_prepare(6, prepared, prepared_floats, kernel, cin, cout);
    case VGG_CONV_WINOGRAD3:
        return vgg_winograd_prepare(3, prepared, prepared_floats, kernel, cin, cout);
    case VGG_CONV_WINOGRAD_BF16:
    case VGG_CONV_WINOGRAD_BF16_AMX:
        return vgg_winograd_bf16_prepare(prepared, prepared_floats, kernel, cin, cout);
    default:
        return VGG_ERR_ARG;
    }
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

size_t vgg_conv3x3_workspace_floats_for(size_t cin, size_t cout, size_t threads, int prepared) {
    static const int TILES[] = {3, 4, 6}; /* the float32 Winograd paths */
    size_t n = chunk_rows(cin) * 9 * cin * threads; /* im2col reads B in place */
    for (size_t i = 0; i < sizeof TILES / sizeof TILES[0]; i++)
        n = max_size(n, vgg_winograd_workspace_floats(TILES[i], cin, cout, prepared));
    return max_size(n, vgg_winograd_bf16_workspace_floats(cin, cout, threads, prepared));
}

size_t vgg_conv3x3_workspace_floats(size_t cin, size_t cout) {
    return vgg_conv3x3_workspace_floats_for(cin, cout, (size_t)vgg_get_num_threads(), 0);
}

/* Winograd computes whole tiles: a map whose 4x4 tiles would more than double
 * the pixels computed (1x1, 2x2, 5x5, ...) gains too little over im2col; so does
 * a layer with few input channels (the first, 3), where the product is thin.
 * Where Winograd runs, a map of 3 x 3 (block 5 of 48x48 images) is one F(3x3)
 * tile: 25 multiplies where F(4x4) does 36 for the same 9 outputs (on larger
 * maps 3x3 tiles need more multiplies than 4x4 or 6x6 ones, or split the pool's
 * windows). Elsewhere F(6x6) when its tiles need at least WINO6_GAIN fewer
 * multiplies than F(4x4)'s (maps of 6, 12, 24, 48 or 224 pixels; not 14, 16
 * or 32, which 4x4 tiles cover as well or better). */
#define WINO_MIN_CIN 16
#define WINO6_GAIN 0.05

int vgg_conv3x3_algo(size_t h, size_t w, size_t cin, size_t cout) {
    (void)cout;
    const int forced = vgg_get_conv_algo();
    if (forced != VGG_CONV_AUTO) return forced;
    const double t4 = (double)((h + 3) / 4) * (double)((w + 3) / 4),
                 t6 = (double)((h + 5) / 6) * (double)((w + 5) / 6);
    if (cin < WINO_MIN_CIN || 16.0 * t4 > 2.0 * (double)h * (double)w) return VGG_CONV_IM2COL;
    if (h <= 3 && w <= 3) return VGG_CONV_WINOGRAD3;
    return 64.0 * t6 <= (1.0 - WINO6_GAIN) * 36.0 * t4 ? VGG_CONV_WINOGRAD6 : VGG_CONV_WINOGRAD;
}

/* At bf16 precision, layers with at least 16 input channels whose 2x2 tiles at
 * most double the pixels run F(2x2) in bf16 (F(4x4)'s transforms lose too much
 * in bf16: winograd_bf16.c). That includes maps F(4x4) declines for its tile
 * waste (5x5, 2x2); the first layer, 1x1 maps and forced im2col keep the
 * float32 choice. */
int vgg_conv3x3_algo_at(size_t h, size_t w, size_t cin, size_t cout, int precision) {
    const int algo = vgg_conv3x3_algo(h, w, cin, cout);
    if (precision != VGG_PRECISION_BF16 || vgg_get_conv_algo() == VGG_CONV_IM2COL) return algo;
    const double padded = 4.0 * (double)((h + 1) / 2) * (double)((w + 1) / 2);
    if (cin >= WINO_MIN_CIN && padded <= 2.0 * (double)h * (double)w)
        return vgg_winograd_bf16_amx_fits(cin, cout) ? VGG_CONV_WINOGRAD_BF16_AMX
                                                     : VGG_CONV_WINOGRAD_BF16;
    return algo;
}

/* col (r1-r0, 9*cin) <- neighbourhoods of flat output pixels r0..r1-1. */
static void im2col_rows(float *col, const float *x, size_t r0, size_t r1, size_t h, size_t w,
                        size_t cin) {
    const size_t k = 9 * cin;
    for (size_t r = r0; r < r1; r++) {
        const size_t img = r / (h * w);
        const size_t rem = r % (h * w);
        const size_t y = rem / w, xx = rem % w;
        const float *x_img = x + img * h * w * cin;
        float *col_r = col + (r - r0) * k;
        for (size_t dy = 0; dy < 3; dy++) {
            const int in_y = (int)y + (int)dy - 1;
            for (size_t dx = 0; dx < 3; dx++) {
                const int in_x = (int)xx + (int)dx - 1;
                float *dst = col_r + (dy * 3 + dx) * cin;
                if (in_y < 0 || in_y >= (int)h || in_x < 0 || in_x >= (int)w) {
                    memset(dst, 0, cin * sizeof(float)); /* zero padding */
                } else {
                    memcpy(dst, x_img + ((size_t)in_y * w + (size_t)in_x) * cin,
                           cin * sizeof(float));
                }
            }
        }
    }
}

static void bias_act_rows(float *out, const float *bias, int relu, size_t rows, size_t cout) {
    for (size_t r = 0; r < rows; r++) {
        float *o = out + r * cout;
        if (relu) {
            for (size_t c = 0; c < cout; c++) {
                const float v = o[c] + bias[c];
                o[c] = v < 0.0f ? 0.0f : v; /* NaN propagates, as in torch */
            }
        } else {
            for (size_t c = 0; c < cout; c++) o[c] += bias[c];
        }
    }
}

/* Chunks per thread between two polls of the abort callback: enough work that
 * the barrier is negligible, little enough that Ctrl-C answers fast. */
#define CHUNKS_PER_POLL 8

/* kp_prepared: the kernel already packed (vgg_conv3x3_prepare), or NULL to read
 * `kernel` in place (a kernel that changes every step: as fast as packing it for
 * each call, without the packed copy). The workspace holds the column buffers only. */
static int im2col_forward(float *out, const float *x, const float *kernel,
                          const float *kp_prepared, const float *bias, int relu, size_t n,
                          size_t h, size_t w, size_t cin, size_t cout, float *workspace,
                          size_t workspace_floats, vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(out && x && (kernel || kp_prepared) && bias && workspace, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1 && cin >= 1 && cout >= 1, VGG_ERR_SHAPE);
    VGG_CHECK(9 * cin <= VGG_BLAS_MAX_DIM && cout <= VGG_BLAS_MAX_DIM, VGG_ERR_SHAPE);
    if (n == 0) return VGG_OK;
    size_t hw, total;
    VGG_CHECK(vgg_mul_ok(h, w, &hw) && vgg_mul_ok(hw, n, &total), VGG_ERR_SHAPE);

    const size_t k = 9 * cin;
    float *cols = workspace;
    const size_t col_floats = workspace_floats;
    /* as many threads as the workspace has full column buffers for (the knob can
     * have grown since it was sized); less than one full buffer gets shorter
     * chunks on one thread. A pixel's result never depends on its chunk (gemm.c). */
    size_t nth = (size_t)vgg_get_num_threads();
    const size_t full = chunk_rows(cin) * k;
    if (nth > col_floats / full) nth = col_floats / full ? col_floats / full : 1;
    size_t rows = col_floats / (k * nth);
    VGG_CHECK(rows >= 1, VGG_ERR_NOMEM);
    if (rows > chunk_rows(cin)) rows = chunk_rows(cin);
    const size_t nchunks = (total + rows - 1) / rows;
    const size_t per_poll = nth * CHUNKS_PER_POLL;

    const float *kp = kp_prepared;
    for (size_t c0 = 0; c0 < nchunks; c0 += per_poll) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t c1 = c0 + per_poll < nchunks ? c0 + per_poll : nchunks;
        /* nth, not the knob: the column buffers were sized for nth threads */
        VGG_OMP_FOR_N((int)nth)
        for (size_t ci = c0; ci < c1; ci++) {
            float *col = cols + vgg_thread_index() * rows * k;
            /* chunks of balanced sizes: none has a single row unless total does */
            const size_t r0 = ci * total / nchunks, r1 = (ci + 1) * total / nchunks;
            /* the chunk's output lines, read while its columns are built, so
             * that the product's stores do not wait on memory */
            for (size_t i = r0 * cout; i < r1 * cout; i += 64 / sizeof(float))
                __builtin_prefetch(out + i, 0, 1);
            im2col_rows(col, x, r0, r1, h, w, cin);
            if (kp) vgg_gemm(out + r0 * cout, cout, col, k, kp, r1 - r0, cout, k);
            else vgg_gemm_b(out + r0 * cout, cout, col, k, kernel, cout, r1 - r0, cout, k);
            bias_act_rows(out + r0 * cout, bias, relu, r1 - r0, cout);
        }
    }
    return VGG_OK;
}

/* The float32 Winograd algorithms' tile sizes, 0 for the others. */
static int wino_tile(int algo) {
    switch (algo) {
    case VGG_CONV_WINOGRAD: return 4;
    case VGG_CONV_WINOGRAD6: return 6;
    case VGG_CONV_WINOGRAD3: return 3;
    default: return 0;
    }
}

static int is_bf16_winograd(int algo) {
    return algo == VGG_CONV_WINOGRAD_BF16 || algo == VGG_CONV_WINOGRAD_BF16_AMX;
}

int vgg_conv3x3_fuses_pool(int algo, size_t h, size_t w) {
    if (is_bf16_winograd(algo)) return h >= 2 && w >= 2;
    return wino_tile(algo) && vgg_winograd_fuses_pool(wino_tile(algo), h, w);
}

int vgg_conv3x3_run(int algo, const float *prepared, int relu, int pool, float *out,
                    const float *x, const float *kernel, const float *bias, size_t n, size_t h,
                    size_t w, size_t cin, size_t cout, float *workspace, size_t workspace_floats,
                    vgg_abort_fn abort_cb, void *abort_ctx) {
    int st = VGG_ERR_NOMEM;
    /* im2col writes rows of output pixels: a pool there would need the full-size
     * rows anyway, so only the Winograd paths fuse it (their output transform
     * holds whole tiles, of even side or covering the map) */
    VGG_CHECK(!pool || vgg_conv3x3_fuses_pool(algo, h, w), VGG_ERR_ARG);
    if (is_bf16_winograd(algo))
        st = vgg_winograd_bf16_conv3x3_forward(algo == VGG_CONV_WINOGRAD_BF16_AMX, out, x, kernel,
                                               prepared, bias, relu, pool, n, h,
                                               w, cin, cout, workspace, workspace_floats,
                                               abort_cb, abort_ctx);
    else if (wino_tile(algo))
        st = vgg_winograd_conv3x3_forward(wino_tile(algo), out, x, kernel,
                                          prepared, bias, relu, pool, n, h, w,
                                          cin, cout, workspace, workspace_floats, abort_cb,
                                          abort_ctx);
    if (st != VGG_ERR_NOMEM || pool) return st;
    /* im2col: the algorithm asked for, or the fallback when the workspace is too
     * small for Winograd (its prepared kernel is then of no use) */
    return im2col_forward(out, x, kernel, algo == VGG_CONV_IM2COL ? prepared : NULL, bias, relu, n,
                          h, w, cin, cout, workspace, workspace_floats, abort_cb, abort_ctx);
}

int vgg_conv3x3_forward_by(int algo, float *out, const float *x, const float *kernel,
                           const float *bias, int relu, size_t n, size_t h, size_t w, size_t cin,
                           size_t cout, float *workspace, size_t workspace_floats,
                           vgg_abort_fn abort_cb, void *abort_ctx) {
    return vgg_conv3x3_run(algo, NULL, relu, 0, out, x, kernel, bias, n, h, w, cin, cout,
                           workspace, workspace_floats, abort_cb, abort_ctx);
}

int vgg_conv3x3_pool_forward_by(int *status, int algo, float *out, const float *x,
                                const float *kernel, const float *bias, size_t n, size_t h,
                                size_t w, size_t cin, size_t cout, float *workspace,
                                size_t workspace_floats, vgg_abort_fn abort_cb, void *abort_ctx) {
    if (!vgg_conv3x3_fuses_pool(algo, h, w)) return 0;
    const int st = vgg_conv3x3_run(algo, NULL, 1, 1, out, x, kernel, bias, n, h, w, cin, cout,
                                   workspace, workspace_floats, abort_cb, abort_ctx);
    if (st == VGG_ERR_NOMEM) return 0;
    *status = st;
    return 1;
}

/* ---- backward -------------------------------------------------------------
 * dW (9*Cin, Cout) = col^T @ dout (col: im2col of x), over chunks of pixels, each
 *                    continuing the same chains (vgg_gemm_at), so its bits do not
 *                    depend on the chunks, the threads or the instruction set
 * db (Cout)        = column sums of dout
 * dx               = a 'same' 3x3 convolution of dout with the kernel flipped
 *                    in space and transposed in channels:
 *                    Wt[dy][dx][co][ci] = W[2-dy][2-dx][ci][co]
 * (stride 1 and padding 1 make the transposed convolution a plain one), so the
 * forward kernel computes it, Wt packed straight from W (pack_flipped).
 * Workspace: [ col | packed Wt | forward's workspace ].
 * With a Winograd algo the same three, by its tiles (below). */

/* dW's pixels per chunk: each chunk adds to every element of dW (9 Cin x Cout, 9 MiB in
 * block 5), so chunks are long (a 16 MiB column buffer) to pass over it few times. */
#define DW_COL_TARGET_FLOATS ((size_t)1 << 22)
static size_t bwd_rows(size_t cin) {
    const size_t rows = DW_COL_TARGET_FLOATS / (9 * cin);
    return rows < MIN_CHUNK_ROWS ? MIN_CHUNK_ROWS : rows;
}

/* dx's kernel: the flipped, transposed kernel packed for gemm.c (a (9 Cout, Cin) B) */
static size_t flipped_floats(size_t cin, size_t cout) {
    return vgg_gemm_packed_floats(9 * cout, cin);
}

/* bp <- Wt packed for gemm.c, a tap at a time: rows t * cout .. of every panel
 * hold W[8 - t] transposed, (cout, cin). */
static void pack_flipped(float *bp, const float *kernel, size_t cin, size_t cout) {
    for (size_t t = 0; t < 9; t++)
        vgg_gemm_pack_bt(bp + t * cout * VGG_GEMM_NR, 9 * cout * VGG_GEMM_NR,
                         kernel + (8 - t) * cin * cout, cout, cout, cin);
}

static size_t im2col_backward_floats(size_t cin, size_t cout) {
    return bwd_rows(cin) * 9 * cin + flipped_floats(cin, cout) +
           vgg_conv3x3_workspace_floats(cout, cin);
}

/* Winograd's backward: dW by the tiles' adjoint (winograd.c), then dx as im2col's,
 * through the forward with the flipped kernel (in HWIO, Cout -> Cin) and a zero
 * bias: [ Wt | zero bias | the forward's workspace ], or dW's workspace. */
static size_t winograd_backward_floats(int tile, size_t cin, size_t cout) {
    const size_t dwn = vgg_winograd_weight_grad_floats(tile, cin, cout);
    const size_t dxn = 9 * cin * cout + cin + vgg_winograd_workspace_floats(tile, cout, cin, 0);
    return dwn > dxn ? dwn : dxn;
}

size_t vgg_conv3x3_backward_workspace_floats(int algo, size_t cin, size_t cout) {
    const int tile = wino_tile(algo);
    return tile ? winograd_backward_floats(tile, cin, cout) : im2col_backward_floats(cin, cout);
}

/* wt (3, 3, cout, cin) <- W flipped in space and transposed in channels, in
 * squares of 16 x 16 so that both sides are read and written by cache lines */
static void flip_kernel(float *wt, const float *kernel, size_t cin, size_t cout) {
    const size_t bs = 16, nb = (cout + bs - 1) / bs;
    VGG_OMP_FOR_IF(9 * cin * cout)
    for (size_t tb = 0; tb < 9 * nb; tb++) {
        const size_t t = tb / nb, o0 = (tb % nb) * bs, o1 = o0 + bs < cout ? o0 + bs : cout;
        const float *src = kernel + (8 - t) * cin * cout;
        float *dst = wt + t * cout * cin;
        for (size_t i0 = 0; i0 < cin; i0 += bs) {
            const size_t i1 = i0 + bs < cin ? i0 + bs : cin;
            for (size_t o = o0; o < o1; o++)
                for (size_t i = i0; i < i1; i++) dst[o * cin + i] = src[i * cout + o];
        }
    }
}

int vgg_conv3x3_backward(int algo, float *dx, float *dw, float *db, const float *dout,
                         const float *x, const float *kernel, size_t n, size_t h, size_t w,
                         size_t cin, size_t cout, float *workspace, size_t workspace_floats,
                         vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(dw && db && dout && x && kernel && workspace, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1 && cin >= 1 && cout >= 1, VGG_ERR_SHAPE);
    VGG_CHECK(9 * cin <= VGG_BLAS_MAX_DIM && cout <= VGG_BLAS_MAX_DIM, VGG_ERR_SHAPE);
    const int tile = wino_tile(algo);
    /* too small a workspace for Winograd runs im2col, as the forward does */
    const int wino = tile && workspace_floats >= winograd_backward_floats(tile, cin, cout);
    VGG_CHECK(wino || workspace_floats >= im2col_backward_floats(cin, cout), VGG_ERR_NOMEM);
    size_t hw, total;
    VGG_CHECK(vgg_mul_ok(h, w, &hw) && vgg_mul_ok(hw, n, &total), VGG_ERR_SHAPE);
    const size_t k = 9 * cin;
    if (n == 0) {
        memset(dw, 0, k * cout * sizeof(float));
        memset(db, 0, cout * sizeof(float));
        return VGG_OK;
    }
    /* db: each thread owns a stripe of channels */
    VGG_OMP_FOR_IF(total * cout)
    for (size_t c = 0; c < cout; c++) {
        double s = 0.0;
        for (size_t r = 0; r < total; r++) s += dout[r * cout + c];
        db[c] = (float)s;
    }
    if (wino) {
        int st = vgg_winograd_conv3x3_weight_grad(tile, dw, dout, x, n, h, w, cin, cout,
                                                  workspace, workspace_floats, abort_cb,
                                                  abort_ctx);
        if (st != VGG_OK || !dx) return st;
        float *wt = workspace, *zero = wt + k * cout, *fwd = zero + cin;
        flip_kernel(wt, kernel, cin, cout);
        memset(zero, 0, cin * sizeof(float));
        return vgg_winograd_conv3x3_forward(tile, dx, dout, wt, NULL, zero, 0, 0, n, h, w, cout,
                                            cin, fwd, workspace_floats - (k * cout + cin),
                                            abort_cb, abort_ctx);
    }
    const size_t fwd_ws = vgg_conv3x3_workspace_floats(cout, cin);
    float *col = workspace;
    float *wt = col + bwd_rows(cin) * k;
    float *fwd = wt + flipped_floats(cin, cout);
    /* dW: chunks of rows, each product split across threads by rows of dW */
    const size_t rows = bwd_rows(cin);
    for (size_t r0 = 0; r0 < total; r0 += rows) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t r1 = r0 + rows < total ? r0 + rows : total;
        const size_t m = r1 - r0;
        VGG_OMP_FOR_IF(m * k)
        for (size_t r = r0; r < r1; r++) im2col_rows(col + (r - r0) * k, x, r, r + 1, h, w, cin);
        vgg_gemm_at_parallel(dw, cout, col, k, dout + r0 * cout, cout, k, cout, m, r0 > 0);
    }
    if (!dx) return VGG_OK;
    /* dx: the flipped, transposed kernel through the forward convolution */
    pack_flipped(wt, kernel, cin, cout);
    /* a zero bias of cin floats: the column buffer is free again and large enough */
    memset(col, 0, cin * sizeof(float));
    return im2col_forward(dx, dout, NULL, wt, col, 0, n, h, w, cout, cin, fwd, fwd_ws, abort_cb,
                          abort_ctx);
}
