/*
 * resize.c - bilinear resizing of NHWC images, uint8 or float32, computed as
 * Pillow's Image.resize(size, Image.BILINEAR) (libImaging/Resample.c):
 *   - pixel centres are aligned: output pixel o of an axis sits at input
 *     coordinate center = (o + 0.5) * in / out;
 *   - the triangle filter has support 1 when enlarging and is stretched by
 *     fs = in / out when shrinking (antialiasing: every input pixel under the
 *     output pixel counts), weight(i) = tri((i + 0.5 - center) / fs);
 *   - taps i in [(int)(center - fs + 0.5), (int)(center + fs + 0.5)), clipped to
 *     the image, and the weights renormalised to sum 1 (borders are not padded).
 * The filter is separable and, as Pillow, runs the horizontal pass first: each
 * thread takes one image at a time, filters the input rows that some output row
 * reads into its buffer (H x OW x C), then filters that vertically into out.
 * The windows and weights of both axes are computed once per call.
 * uint8 reproduces Pillow's integer arithmetic: weights in fixed point with 22
 * fractional bits (rounded half up), sums started at 0.5 and floored, clamped to
 * [0, 255], and the intermediate rounded to uint8 between the passes. The result
 * is Pillow's to the bit with Pillow <= 12; Pillow 13 runs the vertical pass
 * first when the height shrinks much more than the width, and then differs by
 * at most 1 (the tests allow +-1).
 * float32 runs both passes in double, as Pillow's mode "F", with float weights;
 * it is not clamped and NaN propagates.
 * Memory: the caller owns out, x and the workspace (8-byte aligned): the windows
 * and weights of both axes, then one buffer per thread
 * (vgg_resize_workspace_floats()).
 */
#include "vgg_internal.h"

#include <math.h>
#include <stdint.h>

/* One axis of the resampling: in -> out pixels, at most `taps` weights each. */
typedef struct {
    size_t in, out, taps;
    double scale;   /* in / out: the step between output centres, in input pixels */
    double support; /* half-width of the (stretched) filter, in input pixels */
} axis;

static void axis_init(axis *a, size_t in, size_t out) {
    a->in = in;
    a->out = out;
    a->scale = (double)in / (double)out;
    a->support = a->scale < 1.0 ? 1.0 : a->scale; /* triangle support 1, x fs */
    /* Pillow's bound on taps: the window [c - s + 0.5, c + s + 0.5) holds at most
     * 2*ceil(s) + 1 integers */
    a->taps = (size_t)ceil(a->support) * 2 + 1;
}

static inline double triangle(double t) {
    t = fabs(t);
    return t < 1.0 ? 1.0 - t : 0.0;
}

/* Pillow's fixed point for uint8: 32 - 8 - 2 fractional bits, weights as int32.
 * Pillow sums in int32; the sums here are doubles holding the same integers:
 * each product is below 2^30, so sums stay exact below 2^53 (8M taps) and equal
 * Pillow's wherever its int32 cannot overflow, while the loops vectorise (SSE2
 * has no 64-bit integer multiply). */
#define FIX_BITS 22
#define FIX_HALF ((double)(1 << (FIX_BITS - 1)))

/* The precomputed resampling of one axis, carved out of the workspace (4-byte
 * cells: int32 or float, each cell only ever accessed as one type). */
typedef struct {
    int32_t *first, *count; /* (out): window of each output pixel */
    int32_t *kq;            /* (out, taps): uint8 weights, fixed point */
    float *kf;              /* (out, taps): float32 weights */
} plan;

static size_t plan_cells(const axis *a) { return a->out * (2 + a->taps); }

/* Windows and normalised weights of each output pixel, computed in double as
 * Pillow's precompute_coeffs; unused taps are 0. */
static void plan_fill(plan *p, void *cells, const axis *a, int fixed) {
    p->first = (int32_t *)cells;
    p->count = p->first + a->out;
    p->kq = p->count + a->out;
    p->kf = (float *)(void *)(p->count + a->out);
    const double inv_fs = 1.0 / a->support;
    for (size_t o = 0; o < a->out; o++) {
        const double center = ((double)o + 0.5) * a->scale;
        const double lo = center - a->support + 0.5, hi = center + a->support + 0.5;
        size_t first = lo > 0.0 ? (size_t)lo : 0;
        size_t last = (size_t)hi; /* hi >= 1.5: center > 0 and support >= 1 */
        if (last > a->in) last = a->in;
        if (last - first > a->taps) last = first + a->taps; /* cannot happen */
        const size_t count = last - first;
        double wsum = 0.0;
        for (size_t j = 0; j < count; j++)
            wsum += triangle(((double)(first + j) - center + 0.5) * inv_fs);
        /* wsum >= 0.5: the nearest pixel centre is within 0.5 of center */
        for (size_t j = 0; j < a->taps; j++) {
            double v = 0.0;
            if (j < count) v = triangle(((double)(first + j) - center + 0.5) * inv_fs) / wsum;
            if (fixed)
                p->kq[o * a->taps + j] = (int32_t)(0.5 + v * (double)(1 << FIX_BITS));
            else
                p->kf[o * a->taps + j] = (float)v;
        }
        p->first[o] = (int32_t)first;
        p->count[o] = (int32_t)count;
    }
}

static inline uint8_t clip8(double s) {
    /* s = 0.5 + sum in fixed point, an integer: floor by the shift, then clamp
     * (Pillow's clip8); s >= 0 here (non-negative weights) */
    const int64_t v = (int64_t)s >> FIX_BITS;
    return v < 0 ? 0 : (v > 255 ? 255 : (uint8_t)v);
}

/* Workspace parts, in floats: the two plans, and one thread's buffer: a row of
 * accumulators (ow*c doubles: 2 floats each) and the horizontally
 * filtered image (h, ow, c). Both rounded up to an even count, so that every
 * buffer is 8-byte aligned. 0 on overflow. */
static int workspace_parts(size_t *plans, size_t *buffer, size_t h, size_t w, size_t c,
                           size_t oh, size_t ow) {
    axis ax, ay;
    axis_init(&ax, w, ow);
    axis_init(&ay, h, oh);
    size_t px, py, owc, img;
    if (!vgg_mul_ok(ax.out, 2 + ax.taps, &px) || !vgg_mul_ok(ay.out, 2 + ay.taps, &py))
        return 0;
    if (px > (size_t)-1 - py) return 0;
    *plans = px + py + ((px + py) & 1);
    if (!vgg_mul_ok(ow, c, &owc) || !vgg_mul_ok(h, owc, &img) || owc > (size_t)-1 / 4 ||
        img > (size_t)-1 - 2 * owc - 1)
        return 0;
    *buffer = 2 * owc + img + (img & 1);
    return 1;
}

size_t vgg_resize_workspace_floats(size_t h, size_t w, size_t c, size_t oh, size_t ow) {
    if (h == 0 || w == 0 || c == 0 || oh == 0 || ow == 0) return 0;
    size_t plans, buffer, buffers;
    if (!workspace_parts(&plans, &buffer, h, w, c, oh, ow)) return 0;
    if (!vgg_mul_ok(buffer, (size_t)vgg_get_num_threads(), &buffers)) return 0;
    if (plans > (size_t)-1 - buffers) return 0;
    return plans + buffers;
}

/* One image, uint8: t (rows y0..y1 of (OW, C)) <- horizontal pass of x (H, W, C),
 * then out (OH, OW, C) <- vertical pass of t; acc is a row of OW*C doubles. */
static void resize_u8(uint8_t *out, const uint8_t *x, const plan *px, const plan *py,
                      const axis *ax, const axis *ay, size_t w, size_t c, uint8_t *t,
                      double *acc) {
    const size_t owc = ax->out * c, wc = w * c;
    /* only the rows some output row reads (Pillow's ybox) */
    const size_t y0 = (size_t)py->first[0];
    const size_t y1 = (size_t)py->first[ay->out - 1] + (size_t)py->count[ay->out - 1];
    for (size_t y = y0; y < y1; y++) {
        const uint8_t *xr = x + y * wc;
        uint8_t *tr = t + (y - y0) * owc;
        for (size_t ox = 0; ox < ax->out; ox++) {
            const uint8_t *xs = xr + (size_t)px->first[ox] * c;
            const int32_t *k = px->kq + ox * ax->taps;
            const size_t n = (size_t)px->count[ox];
            for (size_t ch = 0; ch < c; ch++) {
                double s = FIX_HALF;
                for (size_t j = 0; j < n; j++) s += (double)k[j] * xs[j * c + ch];
                tr[ox * c + ch] = clip8(s); /* Pillow rounds its intermediate image */
            }
        }
    }
    for (size_t oy = 0; oy < ay->out; oy++) {
        const uint8_t *ts = t + ((size_t)py->first[oy] - y0) * owc;
        const int32_t *k = py->kq + oy * ay->taps;
        const size_t n = (size_t)py->count[oy];
        for (size_t p = 0; p < owc; p++) acc[p] = FIX_HALF;
        for (size_t j = 0; j < n; j++) {
            const uint8_t *tj = ts + j * owc;
            const double kj = k[j];
            for (size_t p = 0; p < owc; p++) acc[p] += kj * tj[p];
        }
        uint8_t *o = out + oy * owc;
        for (size_t p = 0; p < owc; p++) o[p] = clip8(acc[p]);
    }
}

/* One image, float32: as resize_u8 with double sums (Pillow's mode "F"). */
static void resize_f32(float *out, const float *x, const plan *px, const plan *py,
                       const axis *ax, const axis *ay, size_t w, size_t c, float *t,
                       double *acc) {
    const size_t owc = ax->out * c, wc = w * c;
    const size_t y0 = (size_t)py->first[0];
    const size_t y1 = (size_t)py->first[ay->out - 1] + (size_t)py->count[ay->out - 1];
    for (size_t y = y0; y < y1; y++) {
        const float *xr = x + y * wc;
        float *tr = t + (y - y0) * owc;
        for (size_t ox = 0; ox < ax->out; ox++) {
            const float *xs = xr + (size_t)px->first[ox] * c;
            const float *k = px->kf + ox * ax->taps;
            const size_t n = (size_t)px->count[ox];
            for (size_t ch = 0; ch < c; ch++) {
                double s = 0.0;
                for (size_t j = 0; j < n; j++) s += (double)k[j] * xs[j * c + ch];
                tr[ox * c + ch] = (float)s;
            }
        }
    }
    for (size_t oy = 0; oy < ay->out; oy++) {
        const float *ts = t + ((size_t)py->first[oy] - y0) * owc;
        const float *k = py->kf + oy * ay->taps;
        const size_t n = (size_t)py->count[oy];
        for (size_t p = 0; p < owc; p++) acc[p] = 0.0;
        for (size_t j = 0; j < n; j++) {
            const float *tj = ts + j * owc;
            const double kj = k[j];
            for (size_t p = 0; p < owc; p++) acc[p] += kj * tj[p];
        }
        float *o = out + oy * owc;
        for (size_t p = 0; p < owc; p++) o[p] = (float)acc[p];
    }
}

int vgg_resize_bilinear(void *out, const void *x, int dtype, size_t n, size_t h, size_t w,
                        size_t c, size_t oh, size_t ow, float *workspace,
                        size_t workspace_floats) {
    VGG_CHECK(out && x && workspace, VGG_ERR_ARG);
    VGG_CHECK(((uintptr_t)workspace & 7) == 0, VGG_ERR_ARG); /* doubles live in it */
    VGG_CHECK(dtype == VGG_U8 || dtype == VGG_F32, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1 && c >= 1 && oh >= 1 && ow >= 1, VGG_ERR_SHAPE);
    /* windows are stored as int32 */
    VGG_CHECK(h <= INT32_MAX && w <= INT32_MAX, VGG_ERR_SHAPE);
    size_t plans, buffer, in_img, out_img, tmp;
    VGG_CHECK(workspace_parts(&plans, &buffer, h, w, c, oh, ow), VGG_ERR_SHAPE);
    VGG_CHECK(vgg_mul_ok(h, w, &in_img) && vgg_mul_ok(in_img, c, &in_img) &&
                  vgg_mul_ok(n, in_img, &tmp),
              VGG_ERR_SHAPE);
    VGG_CHECK(vgg_mul_ok(oh, ow, &out_img) && vgg_mul_ok(out_img, c, &out_img) &&
                  vgg_mul_ok(n, out_img, &tmp),
              VGG_ERR_SHAPE);
    VGG_CHECK(workspace_floats >= plans && workspace_floats - plans >= buffer, VGG_ERR_NOMEM);
    if (n == 0) return VGG_OK;

    axis ax, ay;
    axis_init(&ax, w, ow);
    axis_init(&ay, h, oh);
    plan px, py;
    plan_fill(&px, workspace, &ax, dtype == VGG_U8);
    plan_fill(&py, workspace + plan_cells(&ax), &ay, dtype == VGG_U8);
    float *buffers = workspace + plans;
    const size_t owc = ow * c;

    /* one image per thread at a time, as many threads as the workspace has
     * buffers for (at most the knob) */
    const size_t nbuf = (workspace_floats - plans) / buffer;
    const size_t knob = (size_t)vgg_get_num_threads();
    const int nth = (int)(nbuf < knob ? nbuf : knob);
    (void)nth;

    VGG_OMP_FOR_N(nth)
    for (size_t i = 0; i < n; i++) {
        float *buf = buffers + vgg_thread_index() * buffer;
        /* accumulators first (8-byte aligned when the workspace is), then the image */
        void *acc = buf;
        void *t = buf + 2 * owc;
        if (dtype == VGG_U8)
            resize_u8((uint8_t *)out + i * out_img, (const uint8_t *)x + i * in_img, &px, &py,
                      &ax, &ay, w, c, (uint8_t *)t, (double *)acc);
        else
            resize_f32((float *)out + i * out_img, (const float *)x + i * in_img, &px, &py,
                       &ax, &ay, w, c, (float *)t, (double *)acc);
    }
    return VGG_OK;
}
