/*
 * losses.c - Keras's crossentropies on probabilities, value and gradient in one
 * pass. Formulas (keras/src/backend/numpy/nn.py, epsilon = 1e-7):
 *   BCE:  p = clip(yhat, e, 1-e); l_i = mean_k -(y ln p + (1-y) ln(1-p))
 *         dl_i/dyhat_k = (-(y/p) + (1-y)/(1-p)) / c     inside the clip, else 0
 *   CCE:  S = sum yhat; q = yhat/S; p = clip(q, e, 1-e); l_i = -sum_k y ln p
 *         g_k = -y_k/p_k inside the clip, else 0;  dl_i/dyhat_j = (g_j - <g, q>) / S
 * and the batch loss is sum_i w_i l_i / n. Per-row sums are kept in double.
 */
#include "vgg_internal.h"

#include <math.h>

#define KERAS_EPSILON 1e-7f

int vgg_loss_forward_backward(double *loss, float *dyhat, float *per_sample, const float *yhat,
                              const float *targets, const int32_t *labels,
                              const float *sample_weight, int kind, size_t n, size_t c) {
    VGG_CHECK(loss && yhat && n >= 1 && c >= 1, VGG_ERR_ARG);
    VGG_CHECK(kind == VGG_LOSS_SPARSE_CCE ? labels != NULL : targets != NULL, VGG_ERR_ARG);
    if (kind == VGG_LOSS_SPARSE_CCE)
        for (size_t i = 0; i < n; i++) VGG_CHECK(labels[i] >= 0 && (size_t)labels[i] < c, VGG_ERR_ARG);
    if (kind != VGG_LOSS_BCE && kind != VGG_LOSS_CCE && kind != VGG_LOSS_SPARSE_CCE)
        return VGG_ERR_ARG;
    const float lo = KERAS_EPSILON, hi = 1.0f - KERAS_EPSILON;
    double total = 0.0;
    VGG_OMP_FOR_REDUCE_SUM_IF(total, n * c)
    for (size_t i = 0; i < n; i++) {
        const float *yh = yhat + i * c;
        float *d = dyhat ? dyhat + i * c : NULL;
        const double w = sample_weight ? (double)sample_weight[i] : 1.0;
        const double scale = w / (double)n; /* d(batch loss)/d(l_i) */
        double li = 0.0;
        if (kind == VGG_LOSS_BCE) {
            const float *y = targets + i * c;
            for (size_t k = 0; k < c; k++) {
                const float p = yh[k] < lo ? lo : (yh[k] > hi ? hi : yh[k]);
                li -= (double)y[k] * log((double)p) + (1.0 - (double)y[k]) * log(1.0 - (double)p);
                if (d) {
                    const int inside = yh[k] >= lo && yh[k] <= hi;
                    const double g = -(double)y[k] / p + (1.0 - (double)y[k]) / (1.0 - (double)p);
                    d[k] = inside ? (float)(scale * g / (double)c) : 0.0f;
                }
            }
            li /= (double)c;
        } else {
            double s = 0.0;
            for (size_t k = 0; k < c; k++) s += yh[k];
            double gq = 0.0; /* <g, q> */
            for (size_t k = 0; k < c; k++) {
                const double y = kind == VGG_LOSS_CCE ? (double)targets[i * c + k]
                                                      : (labels[i] == (int32_t)k ? 1.0 : 0.0);
                const float q = (float)(yh[k] / s);
                const float p = q < lo ? lo : (q > hi ? hi : q);
                li -= y * log((double)p);
                const double g = (q >= lo && q <= hi) ? -y / (double)p : 0.0;
                gq += g * (double)q;
                if (d) d[k] = (float)g; /* g for now; finished below */
            }
            if (d)
                for (size_t k = 0; k < c; k++) d[k] = (float)(scale * ((double)d[k] - gq) / s);
        }
        if (per_sample) per_sample[i] = (float)li;
        total += w * li;
    }
    *loss = total / (double)n;
    return VGG_OK;
}
