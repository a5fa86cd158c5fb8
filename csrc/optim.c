/*
 * optim.c - SGD (momentum, Nesterov), Adam and RMSprop with Keras 3's update
 * rules, the legacy `decay` of Keras 2 and a table of per-step learning rates
 * for schedules (formulas in vgg.h). Scalars of a
 * step (decayed learning rate, Adam's bias correction) are computed once in
 * double; the elementwise update runs in float, OpenMP over elements.
 */
#include "vgg_internal.h"

#include <math.h>

int vgg_optimizer_slots(const vgg_optimizer *opt) {
    if (!opt) return 0;
    switch (opt->kind) {
    case VGG_OPT_SGD: return opt->momentum != 0.0 ? 1 : 0;
    case VGG_OPT_ADAM: return 2;
    case VGG_OPT_RMSPROP: return opt->momentum != 0.0 ? 2 : 1;
    default: return 0;
    }
}

int vgg_optimizer_step(float *param, const float *grad, float *slot0, float *slot1, size_t count,
                       const vgg_optimizer *opt, int64_t iterations) {
    VGG_CHECK(param && grad && opt && iterations >= 0, VGG_ERR_ARG);
    VGG_CHECK(opt->learning_rate > 0.0 && opt->decay >= 0.0, VGG_ERR_ARG);
    const int slots = vgg_optimizer_slots(opt);
    VGG_CHECK(slots < 1 || slot0, VGG_ERR_ARG);
    VGG_CHECK(slots < 2 || slot1, VGG_ERR_ARG);
    double base = opt->learning_rate;
    if (opt->lr_steps) {
        VGG_CHECK(iterations >= opt->lr_first &&
                      (uint64_t)(iterations - opt->lr_first) < (uint64_t)opt->lr_count,
                  VGG_ERR_ARG);
        base = opt->lr_steps[iterations - opt->lr_first];
        VGG_CHECK(base >= 0.0 && isfinite(base), VGG_ERR_ARG);
    }
    /* legacy Keras decay: lr / (1 + decay * iterations) */
    const double lr = base / (1.0 + opt->decay * (double)iterations);
    switch (opt->kind) {
    case VGG_OPT_SGD: {
        const float lrf = (float)lr, mu = (float)opt->momentum;
        if (slots == 0) {
            VGG_OMP_FOR_IF(count)
            for (size_t i = 0; i < count; i++) param[i] -= lrf * grad[i];
        } else if (opt->nesterov) {
            VGG_OMP_FOR_IF(count)
            for (size_t i = 0; i < count; i++) {
                const float m = mu * slot0[i] - lrf * grad[i];
                slot0[i] = m;
                param[i] += mu * m - lrf * grad[i];
            }
        } else {
            VGG_OMP_FOR_IF(count)
            for (size_t i = 0; i < count; i++) {
                const float m = mu * slot0[i] - lrf * grad[i];
                slot0[i] = m;
                param[i] += m;
            }
        }
        return VGG_OK;
    }
    case VGG_OPT_ADAM: {
        const double t = (double)iterations + 1.0;
        const double b1 = opt->beta_1, b2 = opt->beta_2;
        const float alpha = (float)(lr * sqrt(1.0 - pow(b2, t)) / (1.0 - pow(b1, t)));
        const float one_b1 = (float)(1.0 - b1), one_b2 = (float)(1.0 - b2);
        const float eps = (float)opt->epsilon;
        VGG_OMP_FOR_IF(count)
        for (size_t i = 0; i < count; i++) {
            const float g = grad[i];
            const float m = slot0[i] + (g - slot0[i]) * one_b1;
            const float v = slot1[i] + (g * g - slot1[i]) * one_b2;
            slot0[i] = m;
            slot1[i] = v;
            param[i] -= alpha * m / (sqrtf(v) + eps);
        }
        return VGG_OK;
    }
    case VGG_OPT_RMSPROP: {
        const float lrf = (float)lr, rho = (float)opt->rho, one_rho = (float)(1.0 - opt->rho);
        const float eps = (float)opt->epsilon, mu = (float)opt->momentum;
        VGG_OMP_FOR_IF(count)
        for (size_t i = 0; i < count; i++) {
            const float g = grad[i];
            const float v = rho * slot0[i] + one_rho * g * g;
            slot0[i] = v;
            const float inc = lrf * g / sqrtf(v + eps);
            if (slots == 2) {
                const float m = mu * slot1[i] + inc;
                slot1[i] = m;
                param[i] -= m;
            } else {
                param[i] -= inc;
            }
        }
        return VGG_OK;
    }
    default:
        return VGG_ERR_ARG;
    }
}
