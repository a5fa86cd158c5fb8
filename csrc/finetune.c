/*
 * finetune.c - training the top of VGG16 with the head, from a cached cut.
 *
 * The frozen layers below the cut ran once (their output, e.g. block4_pool, is
 * the cached x); each batch runs only the trainable tail (the convs and pools
 * from start_layer to block5_pool) forward, the head's training step (which
 * returns dL/d(block5_pool output)), then the tail backward - max-pool routing,
 * ReLU, conv backward - and one optimizer step per conv kernel and bias. A
 * whole epoch is one call.
 *
 * Workspace for batches of B, laid out in order:
 *   [ x batch | output of each tail layer | grad A | grad B | dW, db per conv
 *     | conv scratch (forward and backward share it) | the head's workspace ]
 */
#include "vgg_internal.h"

#include <math.h>
#include <string.h>

typedef struct {
    vgg16_run_shapes s;                    /* tail layers s.first..s.last (block5_pool) */
    float *in, *act[VGG16_NUM_LAYERS], *g_a, *g_b, *dw[VGG16_NUM_LAYERS], *db[VGG16_NUM_LAYERS];
    float *scratch, *head_ws;
    size_t scratch_n, head_n;
} tail_plan;

static size_t conv_cin(int l, const tail_plan *p) { return p->s.c[l - p->s.first]; }

/* A conv layer trains by the algorithm its shape runs forward (Winograd on the
 * maps of block 5, for the forward pass, dx and dW alike; im2col when set). */
static int train_algo(const tail_plan *p, int l) {
    const int i = l - p->s.first;
    return vgg_conv3x3_algo(p->s.h[i], p->s.w[i], p->s.c[i], vgg16_layer_units(l));
}

/* Shapes and workspace offsets; returns floats needed (0: invalid). ws may be NULL. */
static size_t plan_tail(tail_plan *p, const vgg16_tail *t, const vgg_head *head, size_t batch,
                        size_t h, size_t w, float *ws) {
    memset(p, 0, sizeof *p);
    if (!t || !head || batch < 1) return 0;
    if (t->start_layer < 1 || t->start_layer > VGG16_BLOCK5_POOL) return 0;
    if (vgg16_layer_kind(t->start_layer) != VGG16_KIND_CONV) return 0;
    vgg16_run_shapes *s = &p->s;
    if (!vgg16_shapes_to_block5(s, t->start_layer, h, w, vgg16_layer_inputs(t->start_layer), 1))
        return 0;
    const int end = s->last - s->first + 1;
    /* the head reads the tail's output */
    if (head->h != s->h[end] || head->w != s->w[end] || head->c != s->c[end]) return 0;
    const size_t max_act = s->max_act, scratch = s->scratch;
    const size_t head_n = vgg_head_workspace_floats(head, batch);
    if (head_n == 0) return 0;
    size_t off = 0;
#define TAKE(ptr, count)                   \
    do {                                   \
        if (ws) (ptr) = ws + off;          \
        off += (count);                    \
    } while (0)
    TAKE(p->in, batch * s->h[0] * s->w[0] * s->c[0]);
    for (int l = s->first; l <= s->last; l++) {
        const int i = l - s->first + 1; /* output of l is the input of l + 1 */
        TAKE(p->act[l], batch * s->h[i] * s->w[i] * s->c[i]);
    }
    TAKE(p->g_a, batch * max_act);
    TAKE(p->g_b, batch * max_act);
    for (int l = s->first; l <= s->last; l++) {
        if (vgg16_layer_kind(l) != VGG16_KIND_CONV) continue;
        const size_t cin = s->c[l - s->first], cout = vgg16_layer_units(l);
        TAKE(p->dw[l], 9 * cin * cout);
        TAKE(p->db[l], cout);
    }
    TAKE(p->scratch, scratch);
    TAKE(p->head_ws, head_n);
#undef TAKE
    p->scratch_n = scratch;
    p->head_n = head_n;
    return off;
}

size_t vgg16_finetune_workspace_floats(const vgg16_tail *tail, const vgg_head *head,
                                       size_t batch, size_t h, size_t w) {
    tail_plan p;
    return plan_tail(&p, tail, head, batch, h, w, NULL);
}

int vgg16_finetune_fit_epoch(vgg_fit_stats *stats, vgg16_tail *tail, vgg_head *head,
                             const vgg_optimizer *opt, int64_t *iterations, const void *x,
                             int dtype, size_t n, size_t h, size_t w, const vgg_targets *t,
                             size_t batch, int shuffle, uint64_t seed, uint64_t epoch,
                             int64_t *order, float *outputs, float *workspace,
                             size_t workspace_floats, vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(stats && tail && head && opt && iterations && x && t && order && workspace,
              VGG_ERR_ARG);
    VGG_CHECK(dtype == VGG_F32 || dtype == VGG_F16, VGG_ERR_ARG);
    VGG_CHECK(batch >= 1 && batch <= VGG_BLAS_MAX_DIM, VGG_ERR_ARG);
    memset(stats, 0, sizeof *stats);
    tail_plan p;
    const size_t need = plan_tail(&p, tail, head, batch, h, w, NULL);
    VGG_CHECK(need > 0, VGG_ERR_SHAPE);
    VGG_CHECK(workspace_floats >= need, VGG_ERR_NOMEM);
    plan_tail(&p, tail, head, batch, h, w, workspace);
    int st = vgg_head_check_targets(t, n, vgg_head_output_size(head));
    if (st != VGG_OK) return st;
    const int slots = vgg_optimizer_slots(opt);
    for (int l = p.s.first; l <= p.s.last; l++) {
        if (vgg16_layer_kind(l) != VGG16_KIND_CONV) continue;
        const int k = vgg16_layer_param(l);
        VGG_CHECK(tail->kernel[k] && tail->bias[k], VGG_ERR_ARG);
        for (int s = 0; s < slots; s++) VGG_CHECK(tail->slots[k][s] && tail->slots[k][2 + s], VGG_ERR_ARG);
    }

    if (shuffle) vgg_rng_permutation(order, n, seed, epoch);
    else for (size_t i = 0; i < n; i++) order[i] = (int64_t)i;
    const size_t per = p.s.h[0] * p.s.w[0] * p.s.c[0];

    for (size_t i0 = 0; i0 < n; i0 += batch) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t m = n - i0 < batch ? n - i0 : batch;
        const int64_t it = *iterations;
        /* the batch, in epoch order, as float32 */
        VGG_OMP_FOR_IF(m * per)
        for (size_t i = 0; i < m; i++) {
            const size_t s = (size_t)order[i0 + i];
            float *dst = p.in + i * per;
            if (dtype == VGG_F32) memcpy(dst, (const float *)x + s * per, per * sizeof(float));
            else for (size_t j = 0; j < per; j++) dst[j] = vgg_half_to_float(((const uint16_t *)x)[s * per + j]);
        }
        /* tail forward, keeping every layer's output */
        const float *cur = p.in;
        for (int l = p.s.first; l <= p.s.last; l++) {
            const int i = l - p.s.first;
            if (vgg16_layer_kind(l) == VGG16_KIND_CONV) {
                const int k = vgg16_layer_param(l);
                st = vgg_conv3x3_forward_by(train_algo(&p, l), p.act[l], cur, tail->kernel[k],
                                            tail->bias[k], 1, m, p.s.h[i], p.s.w[i], p.s.c[i],
                                            vgg16_layer_units(l), p.scratch, p.scratch_n,
                                            abort_cb, abort_ctx);
            } else {
                st = vgg_maxpool2x2_forward(p.act[l], cur, m, p.s.h[i], p.s.w[i], p.s.c[i]);
            }
            if (st != VGG_OK) return st;
            cur = p.act[l];
        }
        /* the head's step: loss, head update, and dL/d(tail output) into g_a */
        const size_t moved_before = stats->grad_batches;
        st = vgg_head_train_maps(stats, head, opt, it, cur, m, t, order, i0, seed, p.g_a,
                                 outputs, p.head_ws, p.head_n);
        if (st != VGG_OK) return st;
        /* tail backward */
        float *g = p.g_a, *g_next = p.g_b;
        for (int l = p.s.last; l >= p.s.first; l--) {
            const int i = l - p.s.first;
            const float *in = l == p.s.first ? p.in : p.act[l - 1];
            if (vgg16_layer_kind(l) == VGG16_KIND_POOL) {
                st = vgg_maxpool2x2_backward(g_next, g, in, m, p.s.h[i], p.s.w[i], p.s.c[i]);
            } else {
                const int k = vgg16_layer_param(l);
                const size_t cout = vgg16_layer_units(l);
                /* through the ReLU: its output is what the conv wrote */
                st = vgg_activation_backward(g, g, p.act[l], VGG_ACT_RELU,
                                             m * p.s.h[i] * p.s.w[i], cout);
                if (st == VGG_OK)
                    st = vgg_conv3x3_backward(train_algo(&p, l), l == p.s.first ? NULL : g_next,
                                              p.dw[l], p.db[l], g,
                                              in, tail->kernel[k], m, p.s.h[i], p.s.w[i], p.s.c[i],
                                              cout, p.scratch, p.scratch_n, abort_cb, abort_ctx);
            }
            if (st != VGG_OK) return st;
            float *tmp = g;
            g = g_next;
            g_next = tmp;
        }
        /* as the head's: non-finite gradients refused, a moving conv counted
         * when the head's gradients were all 0 */
        int moved = 0;
        for (int l = p.s.first; l <= p.s.last; l++) {
            if (vgg16_layer_kind(l) != VGG16_KIND_CONV) continue;
            const size_t cin = conv_cin(l, &p), cout = vgg16_layer_units(l);
            if (!vgg_grad_ok(p.db[l], cout, &moved) || !vgg_grad_ok(p.dw[l], 9 * cin * cout, &moved))
                return VGG_ERR_NONFINITE;
        }
        if (stats->grad_batches == moved_before) stats->grad_batches += (size_t)moved;
        for (int l = p.s.first; l <= p.s.last; l++) {
            if (vgg16_layer_kind(l) != VGG16_KIND_CONV) continue;
            const int k = vgg16_layer_param(l);
            const size_t cin = conv_cin(l, &p), cout = vgg16_layer_units(l);
            st = vgg_optimizer_step(tail->kernel[k], p.dw[l], tail->slots[k][0], tail->slots[k][1],
                                    9 * cin * cout, opt, it);
            if (st == VGG_OK)
                st = vgg_optimizer_step(tail->bias[k], p.db[l], tail->slots[k][2], tail->slots[k][3],
                                        cout, opt, it);
            if (st != VGG_OK) return st;
            int unused = 0; /* an overflowed update: as the head's (head.c) */
            if (!vgg_grad_ok(tail->kernel[k], 9 * cin * cout, &unused) ||
                !vgg_grad_ok(tail->bias[k], cout, &unused))
                return VGG_ERR_NONFINITE;
        }
        *iterations = it + 1;
        stats->batches++;
    }
    return VGG_OK;
}
