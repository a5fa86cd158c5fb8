/*
 * input.c - the network's input: uint8 / float32 / float64 NHWC images with 1 or
 * 3 channels -> float32 NHWC with 3 channels, with an affine preprocessing per
 * output channel and optional RGB -> BGR reversal. It runs per batch, so the
 * caller never holds a float copy of a whole data set.
 */
#include "vgg_internal.h"

#include <stdint.h>

#define CONVERT_LOOP(T)                                                           \
    do {                                                                          \
        const T *src = (const T *)x;                                              \
        VGG_OMP_FOR_IF(npix * 3)                                                  \
        for (size_t p = 0; p < npix; p++) {                                       \
            const T *s = src + p * cin;                                           \
            float *o = out + p * 3;                                               \
            for (size_t c = 0; c < 3; c++)                                        \
                o[c] = (float)s[map[c]] * scale[c] + shift[c];                    \
        }                                                                         \
    } while (0)

int vgg_input_convert(float *out, const void *x, int dtype, size_t n, size_t h, size_t w,
                      size_t cin, const float scale[3], const float shift[3],
                      int reverse_channels) {
    VGG_CHECK(out && x && scale && shift, VGG_ERR_ARG);
    VGG_CHECK(cin == 1 || cin == 3, VGG_ERR_SHAPE);
    size_t npix;
    VGG_CHECK(vgg_mul_ok(n, h, &npix) && vgg_mul_ok(npix, w, &npix), VGG_ERR_SHAPE);
    size_t map[3];
    for (size_t c = 0; c < 3; c++) map[c] = cin == 1 ? 0 : (reverse_channels ? 2 - c : c);
    switch (dtype) {
    case VGG_U8: CONVERT_LOOP(uint8_t); break;
    case VGG_F32: CONVERT_LOOP(float); break;
    case VGG_F64: CONVERT_LOOP(double); break;
    default: return VGG_ERR_ARG;
    }
    return VGG_OK;
}
