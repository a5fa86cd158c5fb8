/*
 * optim.c - SGD (momentum, Nesterov), Adam and RMSprop with Keras 3's update
 * rules, the legacy `decay` of Keras 2 and a table of per-step learning rates
 * for schedules (formulas in vgg.h). Scalars of a step (decayed learning rate,
 * Adam's bias correction) are computed once in double (vgg_optimizer_prepare);
 * the elementwise update runs in float (vgg_optimizer_apply), on any split of
 * the elements with the same bits.
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

int vgg_optimizer_prepare(vgg_opt_step *s, const vgg_optimizer *opt, int64_t iterations) {
    VGG_CHECK(s && opt && iterations >= 0, VGG_ERR_ARG);
    VGG_CHECK(opt->learning_rate > 0.0 && opt->decay >= 0.0, VGG_ERR_ARG);
    VGG_CHECK(opt->kind == VGG_OPT_SGD || opt->kind == VGG_OPT_ADAM ||
                  opt->kind == VGG_OPT_RMSPROP,
              VGG_ERR_ARG);
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
    memset(s, 0, sizeof *s);
    s->kind = opt->kind;
    s->slots = vgg_optimizer_slots(opt);
    s->nesterov = opt->nesterov != 0;
    s->lr = (float)lr;
    s->mu = (float)opt->momentum;
    s->eps = (float)opt->epsilon;
    if (opt->kind == VGG_OPT_ADAM) {
        const double t = (double)iterations + 1.0;
        const double b1 = opt->beta_1, b2 = opt->beta_2;
        s->alpha = (float)(lr * sqrt(1.0 - pow(b2, t)) / (1.0 - pow(b1, t)));
        s->one_b1 = (float)(1.0 - b1);
        s->one_b2 = (float)(1.0 - b2);
    } else if (opt->kind == VGG_OPT_RMSPROP) {
        s->rho = (float)opt->rho;
        s->one_rho = (float)(1.0 - opt->rho);
    }
    return VGG_OK;
}

void vgg_optimizer_apply(const vgg_opt_step *s, float *param, const float *grad, float *slot0,
                         float *slot1, size_t count) {
    switch (s->kind) {
    case VGG_OPT_SGD: {
        const float lrf = s->lr, mu = s->mu;
        if (s->slots == 0) {
            for (size_t i = 0; i < count; i++) param[i] -= lrf * grad[i];
        } else if (s->nesterov) {
            for (size_t i = 0; i < count; i++) {
                const float m = mu * slot0[i] - lrf * grad[i];
                slot0[i] = m;
                param[i] += mu * m - lrf * grad[i];
            }
        } else {
            for (size_t i = 0; i < count; i++) {
                const float m = mu * slot0[i] - lrf * grad[i];
                slot0[i] = m;
                param[i] += m;
            }
        }
        return;
    }
    case VGG_OPT_ADAM: {
        const float alpha = s->alpha, one_b1 = s->one_b1, one_b2 = s->one_b2, eps = s->eps;
        for (size_t i = 0; i < count; i++) {
            const float g = grad[i];
            const float m = slot0[i] + (g - slot0[i]) * one_b1;
            const float v = slot1[i] + (g * g - slot1[i]) * one_b2;
            slot0[i] = m;
            slot1[i] = v;
            param[i] -= alpha * m / (sqrtf(v) + eps);
        }
        return;
    }
    default: { /* RMSprop */
        const float lrf = s->lr, rho = s->rho, one_rho = s->one_rho, eps = s->eps, mu = s->mu;
        for (size_t i = 0; i < count; i++) {
            const float g = grad[i];
            const float v = rho * slot0[i] + one_rho * g * g;
            slot0[i] = v;
            const float inc = lrf * g / sqrtf(v + eps);
            if (s->slots == 2) {
                const float m = mu * slot1[i] + inc;
                slot1[i] = m;
                param[i] -= m;
            } else {
                param[i] -= inc;
            }
        }
        return;
    }
    }
}

/* Elements per block of the parallel update. */
#define APPLY_BLOCK 4096

int vgg_optimizer_step(float *param, const float *grad, float *slot0, float *slot1, size_t count,
                       const vgg_optimizer *opt, int64_t iterations) {
    VGG_CHECK(param && grad && opt, VGG_ERR_ARG);
    vgg_opt_step s;
    const int st = vgg_optimizer_prepare(&s, opt, iterations);
    if (st != VGG_OK) return st;
    VGG_CHECK(s.slots < 1 || slot0, VGG_ERR_ARG);
    VGG_CHECK(s.slots < 2 || slot1, VGG_ERR_ARG);
    const size_t nb = (count + APPLY_BLOCK - 1) / APPLY_BLOCK;
    VGG_OMP_FOR_IF(count)
    for (size_t b = 0; b < nb; b++) {
        const size_t i0 = b * APPLY_BLOCK, len = count - i0 < APPLY_BLOCK ? count - i0 : APPLY_BLOCK;
        vgg_optimizer_apply(&s, param + i0, grad + i0, slot0 ? slot0 + i0 : NULL,
                            slot1 ? slot1 + i0 : NULL, len);
    }
    return VGG_OK;
}
