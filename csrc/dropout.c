/*
 * dropout.c - inverted dropout, as Keras's Dropout layer in training: each unit
 * is kept with probability 1 - rate and scaled by 1 / (1 - rate). The keep
 * mask is a pure function of (seed, stream, index) (rng.c), so backward
 * recomputes it instead of storing it, and any thread count gives one result.
 */
#include "vgg_internal.h"

#include <string.h>

static int apply(float *y, const float *x, float rate, uint64_t seed, uint64_t stream,
                 size_t count) {
    VGG_CHECK(y && x, VGG_ERR_ARG);
    VGG_CHECK(rate >= 0.0f && rate < 1.0f, VGG_ERR_ARG);
    const float scale = 1.0f / (1.0f - rate);
    const uint64_t key = vgg_rng_key(seed, stream);
    /* kept ? x * scale : +0.0, by a mask on the bits: a branch on a coin toss
     * is mispredicted half the time */
    VGG_OMP_FOR_IF(count)
    for (size_t i = 0; i < count; i++) {
        const float v = x[i] * scale;
        uint32_t bits;
        memcpy(&bits, &v, sizeof bits);
        bits &= 0u - (uint32_t)(vgg_rng_uniform_keyed(key, i) >= rate);
        memcpy(y + i, &bits, sizeof bits);
    }
    return VGG_OK;
}

int vgg_dropout_forward(float *y, const float *x, float rate, uint64_t seed, uint64_t stream,
                        size_t count) {
    return apply(y, x, rate, seed, stream, count);
}

/* d/dx of x * keep * scale is keep * scale: the same map applied to dy */
int vgg_dropout_backward(float *dx, const float *dy, float rate, uint64_t seed,
                         uint64_t stream, size_t count) {
    return apply(dx, dy, rate, seed, stream, count);
}
