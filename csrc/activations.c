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
        VGG_OMP_FOR_IF(rows * cols)
        for (size_t r = 0; r < rows; r++) {
            float *xr = x + r * cols;
            for (size_t j = 0; j < cols; j++) xr[j] = xr[j] < 0.0f ? 0.0f : xr[j]; /* NaN stays */
        }
        return VGG_OK;
    case VGG_ACT_SIGMOID:
        VGG_OMP_FOR_IF(rows * cols)
        for (size_t r = 0; r < rows; r++) {
            float *xr = x + r * cols;
            for (size_t j = 0; j < cols; j++) xr[j] = 1.0f / (1.0f + expf(-xr[j]));
        }
        return VGG_OK;
    case VGG_ACT_SOFTMAX:
        VGG_OMP_FOR_IF(rows * cols)
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

int vgg_activation_backward(float *dz, const float *dy, const float *y, int activation,
                            size_t rows, size_t cols) {
    VGG_CHECK((dz && dy && y) || rows == 0 || cols == 0, VGG_ERR_ARG);
    switch (activation) {
    case VGG_ACT_LINEAR:
        if (dz != dy)
            for (size_t i = 0; i < rows * cols; i++) dz[i] = dy[i];
        return VGG_OK;
    case VGG_ACT_RELU:
        /* y > 0 exactly where z > 0; at the kink z = 0 the gradient is 0 (as torch) */
        VGG_OMP_FOR_IF(rows * cols)
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < cols; j++) {
                const size_t i = r * cols + j;
                dz[i] = y[i] > 0.0f ? dy[i] : 0.0f;
            }
        return VGG_OK;
    case VGG_ACT_SIGMOID:
        VGG_OMP_FOR_IF(rows * cols)
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < cols; j++) {
                const size_t i = r * cols + j;
                dz[i] = dy[i] * y[i] * (1.0f - y[i]);
            }
        return VGG_OK;
    case VGG_ACT_SOFTMAX:
        /* Jacobian of softmax: dz_j = y_j (dy_j - sum_k dy_k y_k) */
        VGG_OMP_FOR_IF(rows * cols)
        for (size_t r = 0; r < rows; r++) {
            const float *yr = y + r * cols, *dyr = dy + r * cols;
            float *dzr = dz + r * cols;
            double dot = 0.0;
            for (size_t j = 0; j < cols; j++) dot += (double)dyr[j] * yr[j];
            for (size_t j = 0; j < cols; j++) dzr[j] = yr[j] * (float)((double)dyr[j] - dot);
        }
        return VGG_OK;
    default:
        return VGG_ERR_ARG;
    }
}
