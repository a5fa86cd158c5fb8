/*
 * activations.c - elementwise activations and the row-wise softmax, in place.
 */
#include "vgg_internal.h"

#include <math.h>

int vgg_activation_forward(float *x, int activation, size_t rows, size_t cols) {
    VGG_CHECK(x || rows == 0 || cols == 0, VGG_ERR_ARG);
    switch (activation) {
    case VGG_ACT_LINEAR:
        return VGG_OK;
    case VGG_ACT_RELU:
        VGG_OMP_FOR
        for (size_t r = 0; r < rows; r++) {
            float *xr = x + r * cols;
            for (size_t j = 0; j < cols; j++) xr[j] = xr[j] > 0.0f ? xr[j] : 0.0f;
        }
        return VGG_OK;
    case VGG_ACT_SIGMOID:
        VGG_OMP_FOR
        for (size_t r = 0; r < rows; r++) {
            float *xr = x + r * cols;
            for (size_t j = 0; j < cols; j++) xr[j] = 1.0f / (1.0f + expf(-xr[j]));
        }
        return VGG_OK;
    case VGG_ACT_SOFTMAX:
        VGG_OMP_FOR
        for (size_t r = 0; r < rows; r++) {
            float *xr = x + r * cols;
            /* subtract the row max so exp() never overflows; sum in double */
            float m = xr[0];
            for (size_t j = 1; j < cols; j++) m = xr[j] > m ? xr[j] : m;
            double s = 0.0;
            for (size_t j = 0; j < cols; j++) {
                xr[j] = expf(xr[j] - m);
                s += xr[j];
            }
            const float inv = (float)(1.0 / s);
            for (size_t j = 0; j < cols; j++) xr[j] *= inv;
        }
        return VGG_OK;
    default:
        return VGG_ERR_ARG;
    }
}
