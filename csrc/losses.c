/*
 * losses.c - the crossentropies as TensorFlow's Keras computes them (tf-keras
 * 2.x keras/backend.py, the same in Keras 3's TensorFlow backend), value and
 * gradient in one pass. Per-row sums are kept in double.
 *
 * A softmax or sigmoid activation keeps its input on its output
 * (`_keras_logits`) and every crossentropy then reads those logits z, whatever
 * the activation was (from_logits=True):
 *   BCE:    l_i = mean_k [max(z,0) - z y + ln(1 + exp(-|z|))]  (sigmoid_cross_entropy_with_logits)
 *           dl_i/dz_k = (sigmoid(z_k) - y_k) / c
 *   CCE:    l_i = sum_k y_k (lse(z) - z_k)                     (softmax_cross_entropy_with_logits)
 *           dl_i/dz_k = softmax(z)_k - y_k   (TensorFlow's kernel: as if the row of y sums to 1)
 *   SPARSE: l_i = lse(z) - z_label; dl_i/dz_k = softmax(z)_k - [k == label]
 * The gradient never vanishes on a saturated probability.
 *
 * Any other output (linear, relu) is read as probabilities p, clipped to
 * [e, 1-e] (e = 1e-7) with a zero gradient outside the clip:
 *   BCE:    l_i = mean_k -(y ln(p + e) + (1-y) ln((1 + e) - p))   (1 + e in float32,
 *           as TensorFlow's graph optimizer folds Keras's 1 - p + e)
 *   CCE:    q = p / sum p, clipped; l_i = -sum_k y ln q
 *   SPARSE: r = clip(p); l_i = -ln(r_label / sum r)   (clip, log, then the sparse
 *           softmax crossentropy of the logs: a normalisation after the clip)
 * The batch loss is sum_i w_i l_i / n ("sum_over_batch_size").
 */
#include "vgg_internal.h"

#include <math.h>

#define KERAS_EPSILON 1e-7f

static int is_logits(int activation) {
    return activation == VGG_ACT_SOFTMAX || activation == VGG_ACT_SIGMOID;
}

/* log-sum-exp of a row, max-subtracted so exp never overflows */
static double row_lse(const float *z, size_t c) {
    float m = z[0];
    for (size_t k = 1; k < c; k++) m = z[k] > m ? z[k] : m;
    double s = 0.0;
    for (size_t k = 0; k < c; k++) s += exp((double)z[k] - (double)m);
    return (double)m + log(s);
}

/* l_i and, when d is not NULL, scale * dl_i/dz of one row of logits */
static double row_logits(float *d, const float *z, const float *y, int32_t label, int kind,
                         size_t c, double scale) {
    double li = 0.0;
    if (kind == VGG_LOSS_BCE) {
        for (size_t k = 0; k < c; k++) {
            const double zk = z[k], yk = y[k];
            li += (zk > 0.0 ? zk : 0.0) - zk * yk + log1p(exp(-fabs(zk)));
            if (d) d[k] = (float)(scale * (1.0 / (1.0 + exp(-zk)) - yk) / (double)c);
        }
        return li / (double)c;
    }
    const double lse = row_lse(z, c);
    for (size_t k = 0; k < c; k++) {
        const double yk = kind == VGG_LOSS_CCE ? (double)y[k] : (label == (int32_t)k ? 1.0 : 0.0);
        if (yk != 0.0) li += yk * (lse - (double)z[k]);
        if (d) d[k] = (float)(scale * (exp((double)z[k] - lse) - yk));
    }
    return li;
}

/* l_i and, when d is not NULL, scale * dl_i/dp of one row of probabilities */
static double row_probabilities(float *d, const float *p_in, const float *y, int32_t label,
                                int kind, size_t c, double scale) {
    const float lo = KERAS_EPSILON, hi = 1.0f - KERAS_EPSILON;
    const double e = (double)KERAS_EPSILON;
    double li = 0.0;
    if (kind == VGG_LOSS_BCE) {
        /* Keras writes ln(1 - p + e); model.fit runs it as a TensorFlow graph whose
         * optimizer folds the constants into (1 + e) - p, with 1 + e rounded to
         * float32 (1 + 2^-23): at the clip, 2^-22 rather than 1 - (1 - 2^-23) + 1e-7 */
        const double one_e = (double)(1.0f + KERAS_EPSILON);
        for (size_t k = 0; k < c; k++) {
            const float p = p_in[k] < lo ? lo : (p_in[k] > hi ? hi : p_in[k]);
            const double yk = y[k];
            li -= yk * log((double)p + e) + (1.0 - yk) * log(one_e - (double)p);
            if (d) {
                const int inside = p_in[k] >= lo && p_in[k] <= hi;
                const double g = -yk / ((double)p + e) + (1.0 - yk) / (one_e - (double)p);
                d[k] = inside ? (float)(scale * g / (double)c) : 0.0f;
            }
        }
        return li / (double)c;
    }
    if (kind == VGG_LOSS_CCE) {
        double s = 0.0;
        for (size_t k = 0; k < c; k++) s += p_in[k];
        double gq = 0.0; /* <g, q> */
        for (size_t k = 0; k < c; k++) {
            const double yk = y[k];
            const float q = (float)(p_in[k] / s);
            const float p = q < lo ? lo : (q > hi ? hi : q);
            li -= yk * log((double)p);
            const double g = (q >= lo && q <= hi) ? -yk / (double)p : 0.0;
            gq += g * (double)q;
            if (d) d[k] = (float)g; /* g for now; finished below */
        }
        if (d)
            for (size_t k = 0; k < c; k++) d[k] = (float)(scale * ((double)d[k] - gq) / s);
        return li;
    }
    /* sparse: -ln r_t + ln S with r = clip(p), S = sum r */
    double s = 0.0;
    for (size_t k = 0; k < c; k++) s += p_in[k] < lo ? lo : (p_in[k] > hi ? hi : p_in[k]);
    const float pt = p_in[label];
    const float rt = pt < lo ? lo : (pt > hi ? hi : pt);
    li = -log((double)rt) + log(s);
    if (d)
        for (size_t k = 0; k < c; k++) {
            const int inside = p_in[k] >= lo && p_in[k] <= hi;
            const double g = 1.0 / s - (label == (int32_t)k ? 1.0 / (double)rt : 0.0);
            d[k] = inside ? (float)(scale * g) : 0.0f;
        }
    return li;
}

int vgg_loss_forward_backward(double *loss, float *dout, float *per_sample, const float *out,
                              const float *targets, const int32_t *labels,
                              const float *sample_weight, int kind, int activation, size_t n,
                              size_t c) {
    VGG_CHECK(loss && out && n >= 1 && c >= 1, VGG_ERR_ARG);
    VGG_CHECK(kind == VGG_LOSS_BCE || kind == VGG_LOSS_CCE || kind == VGG_LOSS_SPARSE_CCE,
              VGG_ERR_ARG);
    VGG_CHECK(activation >= VGG_ACT_LINEAR && activation <= VGG_ACT_SIGMOID, VGG_ERR_ARG);
    VGG_CHECK(kind == VGG_LOSS_SPARSE_CCE ? labels != NULL : targets != NULL, VGG_ERR_ARG);
    if (kind == VGG_LOSS_SPARSE_CCE)
        for (size_t i = 0; i < n; i++) VGG_CHECK(labels[i] >= 0 && (size_t)labels[i] < c, VGG_ERR_ARG);
    const int logits = is_logits(activation);
    double total = 0.0;
    VGG_OMP_FOR_REDUCE_SUM_IF(total, n * c)
    for (size_t i = 0; i < n; i++) {
        const double w = sample_weight ? (double)sample_weight[i] : 1.0;
        const double scale = w / (double)n; /* d(batch loss)/d(l_i) */
        const float *y = kind == VGG_LOSS_SPARSE_CCE ? NULL : targets + i * c;
        const int32_t label = kind == VGG_LOSS_SPARSE_CCE ? labels[i] : 0;
        float *d = dout ? dout + i * c : NULL;
        const double li = logits ? row_logits(d, out + i * c, y, label, kind, c, scale)
                                 : row_probabilities(d, out + i * c, y, label, kind, c, scale);
        if (per_sample) per_sample[i] = (float)li;
        total += w * li;
    }
    *loss = total / (double)n;
    return VGG_OK;
}
