/*
 * augment.c - random affine augmentation of NHWC images, as Keras 3's
 * ImageDataGenerator does it (keras/src/legacy/preprocessing/image.py):
 *
 *   - one transform per image from Keras's apply_transform parameters
 *     (theta, tx, ty, shear, zx, zy, flip_horizontal, flip_vertical), composed as
 *     Keras composes it: M = R(theta) . T(tx, ty) . Sh(shear) . Z(zx, zy), centred
 *     M' = C(o) . M . C(-o) with o = (h/2 - 0.5, w/2 - 0.5), then Keras 3's swap of
 *     the first two rows and columns (keras-preprocessing commit 669863e), so that
 *     M' maps an output (row, col) to the input (row, col) it samples (pull
 *     sampling). Consequences of that swap, kept on purpose to match Keras 3: the
 *     first coordinate of M is the column, so tx and zx act on columns, ty and zy on
 *     rows, and the centre is (row w/2 - 0.5, col h/2 - 0.5), which is the image's
 *     centre only for square images;
 *   - bilinear interpolation (scipy.ndimage.affine_transform with order=1: taps
 *     floor(x) and floor(x)+1, weights 1 - t and 1 - (1 - t), the coordinates
 *     computed in scipy's order and the sum in double, so that results equal
 *     scipy's to float32 rounding);
 *   - points outside the image by scipy.ndimage's modes: nearest (the edge value
 *     repeats), constant (cval for any point outside [0, len - 1] on either axis,
 *     with no blending at the edge), reflect (the half-sample symmetric extension
 *     dcba|abcd|dcba, interpolated), wrap (scipy's "wrap": the coordinate is
 *     brought into [0, len - 1] with period len - 1, so the first and last samples
 *     overlap - not "grid-wrap");
 *   - the flips after the warp: flip_horizontal reverses columns, flip_vertical
 *     rows.
 * Random parameters are a pure function of (seed, stream, image index) through
 * rng.c, drawn from Keras's distributions, so the same seed gives the same
 * images on any thread count and any batching.
 * Memory: the caller owns out, x and params; nothing is allocated. Threads:
 * OpenMP over (image, output row) pairs, each written by one thread.
 */
#include "vgg_internal.h"

#include <math.h>
#include <stdint.h>

/* Coordinates are clamped to +-2^40 before floor() and integer conversion: far
 * beyond any image, exactly representable, and no undefined conversion for huge,
 * infinite or NaN coordinates (NaN goes to -2^40). */
#define COORD_LIMIT 1099511627776.0

/* Draws per image in the random stream: slots 0..9 are used, 16 leave room. */
#define DRAWS_PER_IMAGE 16

/* numpy's NPY_PI: deg2rad is x * (pi / 180), as np.deg2rad computes it */
#define PI 3.141592653589793238462643383279502884

/* 3x3 row-major product c = a . b (c may not alias a or b). */
static void mat3_mul(double c[9], const double a[9], const double b[9]) {
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            c[i * 3 + j] = a[i * 3] * b[j] + a[i * 3 + 1] * b[3 + j] + a[i * 3 + 2] * b[6 + j];
}

/* m = m . f */
static void mat3_right(double m[9], const double f[9]) {
    double t[9];
    mat3_mul(t, m, f);
    memcpy(m, t, sizeof t);
}

int vgg_augment_matrix(double m[6], const double params[VGG_AUG_NPARAMS], size_t h, size_t w) {
    VGG_CHECK(m && params, VGG_ERR_ARG);
    for (int k = 0; k < VGG_AUG_NPARAMS; k++) VGG_CHECK(isfinite(params[k]), VGG_ERR_ARG);
    const double theta = params[VGG_AUG_THETA], tx = params[VGG_AUG_TX],
                 ty = params[VGG_AUG_TY], shear = params[VGG_AUG_SHEAR],
                 zx = params[VGG_AUG_ZX], zy = params[VGG_AUG_ZY];
    /* Keras multiplies only the factors that are not the identity; multiplying by
     * an identity is exact, so the product is the same either way */
    double M[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    if (theta != 0.0) {
        const double a = theta * (PI / 180.0);
        const double R[9] = {cos(a), -sin(a), 0, sin(a), cos(a), 0, 0, 0, 1};
        mat3_right(M, R);
    }
    if (tx != 0.0 || ty != 0.0) {
        const double T[9] = {1, 0, tx, 0, 1, ty, 0, 0, 1};
        mat3_right(M, T);
    }
    if (shear != 0.0) {
        const double s = shear * (PI / 180.0);
        const double S[9] = {1, -sin(s), 0, 0, cos(s), 0, 0, 0, 1};
        mat3_right(M, S);
    }
    if (zx != 1.0 || zy != 1.0) {
        const double Z[9] = {zx, 0, 0, 0, zy, 0, 0, 0, 1};
        mat3_right(M, Z);
    }
    /* transform_matrix_offset_center(M, h, w): o_x from h, o_y from w */
    const double ox = (double)h / 2.0 - 0.5, oy = (double)w / 2.0 - 0.5;
    const double C[9] = {1, 0, ox, 0, 1, oy, 0, 0, 1};
    const double Cinv[9] = {1, 0, -ox, 0, 1, -oy, 0, 0, 1};
    double t[9], Mc[9];
    mat3_mul(t, C, M);
    mat3_mul(Mc, t, Cinv);
    /* Keras 3 swaps rows 0, 1 and columns 0, 1 (M' = P Mc P) before handing
     * M'[:2, :2] and M'[:2, 2] to scipy, which reads them in (row, col) */
    m[0] = Mc[4]; m[1] = Mc[3]; m[2] = Mc[5];
    m[3] = Mc[1]; m[4] = Mc[0]; m[5] = Mc[2];
    return VGG_OK;
}

/* ------------------------------------------------------------------------ */
/* random parameters                                                          */

/* U(-r, r) from u in [0, 1); 0 when r == 0 (Keras draws nothing then) */
static double symmetric(double r, float u) { return r > 0.0 ? r * (2.0 * (double)u - 1.0) : 0.0; }

static int ranges_ok(const vgg_augment_ranges *r) {
    if (!(isfinite(r->rotation_range) && r->rotation_range >= 0.0)) return 0;
    if (!(isfinite(r->shear_range) && r->shear_range >= 0.0)) return 0;
    if (!(isfinite(r->zoom_lo) && isfinite(r->zoom_hi) && r->zoom_lo > 0.0 && r->zoom_hi > 0.0))
        return 0;
    for (int a = 0; a < 2; a++) {
        if (!isfinite(r->shift_scale[a])) return 0;
        if (r->shift_values[a] != NULL) {
            if (r->shift_count[a] == 0) return 0;
            for (size_t k = 0; k < r->shift_count[a]; k++)
                if (!isfinite(r->shift_values[a][k])) return 0;
        } else if (!(isfinite(r->shift_range[a]) && r->shift_range[a] >= 0.0)) {
            return 0;
        }
    }
    return 1;
}

/* One shift: a choice among the values times a random sign (Keras's int or list
 * range), or U(-range, range); then times the scale (the image side when the
 * range is a fraction). */
static double draw_shift(const vgg_augment_ranges *r, int a, float u, float u_sign) {
    double v;
    if (r->shift_values[a] != NULL) {
        size_t k = (size_t)((double)u * (double)r->shift_count[a]);
        if (k >= r->shift_count[a]) k = r->shift_count[a] - 1;
        v = r->shift_values[a][k] * (u_sign < 0.5f ? -1.0 : 1.0);
    } else {
        v = symmetric(r->shift_range[a], u);
    }
    return v * r->shift_scale[a];
}

int vgg_augment_draw(double *params, const vgg_augment_ranges *r, const int64_t *index,
                     size_t n, uint64_t seed, uint64_t stream) {
    VGG_CHECK(params && r, VGG_ERR_ARG);
    VGG_CHECK(ranges_ok(r), VGG_ERR_ARG);
    const int zoom = !(r->zoom_lo == 1.0 && r->zoom_hi == 1.0);
    const uint64_t key = vgg_rng_key(seed, stream);
    for (size_t i = 0; i < n; i++) {
        const uint64_t id = index ? (uint64_t)index[i] : (uint64_t)i;
        const uint64_t base = id * DRAWS_PER_IMAGE;
        float u[10];
        for (int k = 0; k < 10; k++) u[k] = vgg_rng_uniform_keyed(key, base + (uint64_t)k);
        double *p = params + i * VGG_AUG_NPARAMS;
        p[VGG_AUG_THETA] = symmetric(r->rotation_range, u[0]);
        p[VGG_AUG_TX] = draw_shift(r, 0, u[1], u[2]);
        p[VGG_AUG_TY] = draw_shift(r, 1, u[3], u[4]);
        p[VGG_AUG_SHEAR] = symmetric(r->shear_range, u[5]);
        /* zx, zy ~ U(lo, hi) independently, as np.random.uniform(lo, hi, 2) */
        p[VGG_AUG_ZX] = zoom ? r->zoom_lo + (r->zoom_hi - r->zoom_lo) * (double)u[6] : 1.0;
        p[VGG_AUG_ZY] = zoom ? r->zoom_lo + (r->zoom_hi - r->zoom_lo) * (double)u[7] : 1.0;
        p[VGG_AUG_FLIP_H] = r->horizontal_flip && u[8] < 0.5f ? 1.0 : 0.0;
        p[VGG_AUG_FLIP_V] = r->vertical_flip && u[9] < 0.5f ? 1.0 : 0.0;
    }
    return VGG_OK;
}

/* ------------------------------------------------------------------------ */
/* warping                                                                    */

/* The two taps of one axis at coordinate x of an axis of len >= 2 samples:
 * indices i0, i1 and weights w0, w1 (scipy's order-1 spline weights). Returns 0
 * when the point takes the constant fill. */
static inline int axis_taps(double x, size_t len, int mode, size_t *i0, size_t *i1,
                            double *w0, double *w1) {
    const double last = (double)(len - 1);
    const int64_t top = (int64_t)len - 1;
    switch (mode) {
    case VGG_FILL_CONSTANT:
        if (!(x >= 0.0 && x <= last)) return 0; /* NaN included */
        break;
    case VGG_FILL_NEAREST:
        if (!(x > 0.0)) x = 0.0; /* NaN included */
        if (x > last) x = last;
        break;
    case VGG_FILL_WRAP:
        if (!(x >= -COORD_LIMIT)) x = -COORD_LIMIT;
        if (!(x <= COORD_LIMIT)) x = COORD_LIMIT;
        /* scipy's map_coordinate for "wrap": period len - 1, the integer part
         * taken by truncation (as npy_intp) */
        if (x < 0.0)
            x += last * (double)((int64_t)(-x / last) + 1);
        else if (x > last)
            x -= last * (double)(int64_t)(x / last);
        break;
    default: /* VGG_FILL_REFLECT */
        if (!(x >= -COORD_LIMIT)) x = -COORD_LIMIT;
        if (!(x <= COORD_LIMIT)) x = COORD_LIMIT;
    }
    /* floor(x) by truncation (|x| <= 2^40 fits int64), corrected for reflect, the
     * only mode with negative x here: libm's floor is a call on baseline x86-64,
     * and this runs twice per pixel */
    int64_t k = (int64_t)x;
    if (mode == VGG_FILL_REFLECT && (double)k > x) k--;
    const double t = x - (double)k;
    *w0 = 1.0 - t;
    *w1 = 1.0 - *w0; /* scipy: the last weight is 1 minus the others */
    if (mode == VGG_FILL_REFLECT) {
        /* the half-sample symmetric extension, period 2 len: k -> k mod 2len,
         * mirrored into [0, len) */
        const int64_t p = 2 * (int64_t)len;
        int64_t a = k % p, b = (k + 1) % p;
        if (a < 0) a += p;
        if (b < 0) b += p;
        *i0 = (size_t)(a <= top ? a : p - 1 - a);
        *i1 = (size_t)(b <= top ? b : p - 1 - b);
    } else {
        /* x is in [0, len - 1] (wrap: up to rounding, hence the clamp); at
         * len - 1 the second tap has weight 0 */
        if (k > top) k = top;
        if (k < 0) k = 0;
        *i0 = (size_t)k;
        *i1 = (size_t)(k < top ? k + 1 : k);
    }
    return 1;
}

/* One output row r of one image: out (W, C) <- x (H, W, C) of type T, through
 * m (output (row, col) -> input (row, col)), flipped after the warp. One
 * function per (type, mode), so that axis_taps's mode branches fold away. */
#define DEFINE_WARP_ROW(NAME, T, MODE)                                                    \
    static void NAME(float *out, const void *xv, const double m[6], int flip_h,           \
                     int flip_v, size_t r, size_t h, size_t w, size_t c, float cval) {    \
        const T *x = (const T *)xv;                                                       \
        /* the flips come after the warp: output (r, col) shows the warped pixel at   \
         * (h - 1 - r, w - 1 - col) of the unflipped result */                        \
        const double fr = (double)(flip_v ? h - 1 - r : r);                               \
        for (size_t col = 0; col < w; col++) {                                            \
            const double fc = (double)(flip_h ? w - 1 - col : col);                       \
            /* scipy's order of operations: (r*m0 + c*m1) + shift */                     \
            const double yr = fr * m[0] + fc * m[1] + m[2];                               \
            const double xc = fr * m[3] + fc * m[4] + m[5];                               \
            float *o = out + col * c;                                                     \
            size_t r0, r1, c0, c1;                                                        \
            double wr0, wr1, wc0, wc1;                                                    \
            if (!axis_taps(yr, h, MODE, &r0, &r1, &wr0, &wr1) ||                          \
                !axis_taps(xc, w, MODE, &c0, &c1, &wc0, &wc1)) {                          \
                for (size_t ch = 0; ch < c; ch++) o[ch] = cval;                           \
                continue;                                                                 \
            }                                                                             \
            const T *p00 = x + (r0 * w + c0) * c, *p01 = x + (r0 * w + c1) * c;           \
            const T *p10 = x + (r1 * w + c0) * c, *p11 = x + (r1 * w + c1) * c;           \
            /* the weight products once per pixel, summed as a tree: short        \
             * dependency chains (scipy multiplies (value * wr) * wc and sums     \
             * in a row; the difference is ~1e-16 relative, below float32's) */ \
            const double w00 = wr0 * wc0, w01 = wr0 * wc1, w10 = wr1 * wc0,               \
                         w11 = wr1 * wc1;                                                 \
            if (c == 3) { /* RGB: a fixed trip count the compiler unrolls */             \
                for (size_t ch = 0; ch < 3; ch++)                                         \
                    o[ch] = (float)(((double)p00[ch] * w00 + (double)p01[ch] * w01) +     \
                                    ((double)p10[ch] * w10 + (double)p11[ch] * w11));     \
            } else {                                                                      \
                for (size_t ch = 0; ch < c; ch++)                                         \
                    o[ch] = (float)(((double)p00[ch] * w00 + (double)p01[ch] * w01) +     \
                                    ((double)p10[ch] * w10 + (double)p11[ch] * w11));     \
            }                                                                             \
        }                                                                                 \
    }

#define DEFINE_WARP_ROWS(SUFFIX, T)                                          \
    DEFINE_WARP_ROW(warp_nearest_##SUFFIX, T, VGG_FILL_NEAREST)              \
    DEFINE_WARP_ROW(warp_constant_##SUFFIX, T, VGG_FILL_CONSTANT)            \
    DEFINE_WARP_ROW(warp_reflect_##SUFFIX, T, VGG_FILL_REFLECT)              \
    DEFINE_WARP_ROW(warp_wrap_##SUFFIX, T, VGG_FILL_WRAP)
DEFINE_WARP_ROWS(u8, uint8_t)
DEFINE_WARP_ROWS(f32, float)
DEFINE_WARP_ROWS(f64, double)

typedef void (*warp_row_fn)(float *out, const void *x, const double m[6], int flip_h,
                            int flip_v, size_t r, size_t h, size_t w, size_t c, float cval);

/* [dtype][fill mode], in the enums' order */
static const warp_row_fn WARP_ROWS[3][4] = {
    {warp_nearest_u8, warp_constant_u8, warp_reflect_u8, warp_wrap_u8},
    {warp_nearest_f32, warp_constant_f32, warp_reflect_f32, warp_wrap_f32},
    {warp_nearest_f64, warp_constant_f64, warp_reflect_f64, warp_wrap_f64},
};

int vgg_augment_apply(float *out, const void *x, int dtype, const int64_t *index, size_t n,
                      size_t nx, size_t h, size_t w, size_t c, const double *params,
                      int fill_mode, float cval) {
    VGG_CHECK(out && x && params, VGG_ERR_ARG);
    VGG_CHECK(dtype == VGG_U8 || dtype == VGG_F32 || dtype == VGG_F64, VGG_ERR_ARG);
    VGG_CHECK(fill_mode >= VGG_FILL_NEAREST && fill_mode <= VGG_FILL_WRAP, VGG_ERR_ARG);
    VGG_CHECK(h >= 2 && w >= 2 && c >= 1, VGG_ERR_SHAPE);
    size_t img, work, tmp;
    VGG_CHECK(vgg_mul_ok(h, w, &img) && vgg_mul_ok(img, c, &img) && vgg_mul_ok(nx, img, &tmp),
              VGG_ERR_SHAPE);
    VGG_CHECK(vgg_mul_ok(n, img, &work) && vgg_mul_ok(n, VGG_AUG_NPARAMS, &tmp), VGG_ERR_SHAPE);
    /* every image read exists, every parameter is finite: checked before any
     * thread starts, so the loop below cannot fail */
    if (index) {
        for (size_t i = 0; i < n; i++)
            VGG_CHECK(index[i] >= 0 && (uint64_t)index[i] < (uint64_t)nx, VGG_ERR_ARG);
    } else {
        VGG_CHECK(n <= nx, VGG_ERR_SHAPE);
    }
    for (size_t k = 0; k < n * VGG_AUG_NPARAMS; k++) VGG_CHECK(isfinite(params[k]), VGG_ERR_ARG);
    if (n == 0) return VGG_OK;
    const warp_row_fn row = WARP_ROWS[dtype == VGG_U8 ? 0 : (dtype == VGG_F32 ? 1 : 2)][fill_mode];
    const size_t elem = dtype == VGG_U8 ? 1 : (dtype == VGG_F32 ? 4 : 8);

    VGG_OMP_FOR_COLLAPSE2_IF(work)
    for (size_t i = 0; i < n; i++) {
        for (size_t r = 0; r < h; r++) {
            /* the matrix costs ~100 flops, a row hundreds of taps: recomputing it
             * per row keeps rows independent (collapse(2) works when n is 1) */
            const double *p = params + i * VGG_AUG_NPARAMS;
            double m[6];
            vgg_augment_matrix(m, p, h, w); /* cannot fail: p is finite */
            const int fh = p[VGG_AUG_FLIP_H] != 0.0, fv = p[VGG_AUG_FLIP_V] != 0.0;
            const size_t src = (index ? (size_t)index[i] : i) * img;
            float *o = out + i * img + r * w * c;
            row(o, (const char *)x + src * elem, m, fh, fv, r, h, w, c, cval);
        }
    }
    return VGG_OK;
}
