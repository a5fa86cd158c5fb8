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
    int first, last;                       /* tail layers first..last (block5_pool) */
    size_t h[VGG16_NUM_LAYERS + 1], w[VGG16_NUM_LAYERS + 1], c[VGG16_NUM_LAYERS + 1];
    /* shape of the input of layer l at index l - first, of the tail's output at the end */
    float *in, *act[VGG16_NUM_LAYERS], *g_a, *g_b, *dw[VGG16_NUM_LAYERS], *db[VGG16_NUM_LAYERS];
    float *scratch, *head_ws;
    size_t scratch_n, head_n;
} tail_plan;

static size_t conv_cin(int l, const tail_plan *p) { return p->c[l - p->first]; }

/* Shapes and workspace offsets; returns floats needed (0: invalid). ws may be NULL. */
static size_t plan_tail(tail_plan *p, const vgg16_tail *t, const vgg_head *head, size_t batch,
                        size_t h, size_t w, float *ws) {
    memset(p, 0, sizeof *p);
    if (!t || !head || batch < 1) return 0;
    if (t->start_layer < 1 || t->start_layer > VGG16_BLOCK5_POOL) return 0;
    if (vgg16_layer_kind(t->start_layer) != VGG16_KIND_CONV) return 0;
    p->first = t->start_layer;
    p->last = VGG16_BLOCK5_POOL;
    size_t c = vgg16_layer_units(p->first - 1), max_act = 0, scratch = 0;
    for (int l = p->first; l <= p->last; l++) {
        const int i = l - p->first;
        p->h[i] = h;
        p->w[i] = w;
        p->c[i] = c;
        if (h * w * c > max_act) max_act = h * w * c;
        if (vgg16_layer_kind(l) == VGG16_KIND_CONV) {
            const size_t cout = vgg16_layer_units(l);
            size_t s = vgg_conv3x3_backward_workspace_floats(c, cout);
            const size_t f = vgg_conv3x3_workspace_floats(c, cout);
            if (f > s) s = f;
            if (s > scratch) scratch = s;
            c = cout;
        } else {
            if (h < 2 || w < 2) return 0;
            h /= 2;
            w /= 2;
        }
    }
    const int end = p->last - p->first + 1;
    p->h[end] = h;
    p->w[end] = w;
    p->c[end] = c;
    /* the head reads the tail's output */
    if (head->h != h || head->w != w || head->c != c) return 0;
    const size_t head_n = vgg_head_workspace_floats(head, batch);
    if (head_n == 0) return 0;
    size_t off = 0;
#define TAKE(ptr, count)                   \
    do {                                   \
        if (ws) (ptr) = ws + off;          \
        off += (count);                    \
    } while (0)
    TAKE(p->in, batch * p->h[0] * p->w[0] * p->c[0]);
    for (int l = p->first; l <= p->last; l++) {
        const int i = l - p->first + 1; /* output of l is the input of l + 1 */
        TAKE(p->act[l], batch * p->h[i] * p->w[i] * p->c[i]);
    }
    TAKE(p->g_a, batch * max_act);
    TAKE(p->g_b, batch * max_act);
    for (int l = p->first; l <= p->last; l++) {
        if (vgg16_layer_kind(l) != VGG16_KIND_CONV) continue;
        const size_t cin = p->c[l - p->first], cout = vgg16_layer_units(l);
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
    for (int l = p.first; l <= p.last; l++) {
        if (vgg16_layer_kind(l) != VGG16_KIND_CONV) continue;
        const int k = vgg16_layer_param(l);
        VGG_CHECK(tail->kernel[k] && tail->bias[k], VGG_ERR_ARG);
        for (int s = 0; s < slots; s++) VGG_CHECK(tail->slots[k][s] && tail->slots[k][2 + s], VGG_ERR_ARG);
    }

    if (shuffle) vgg_rng_permutation(order, n, seed, epoch);
    else for (size_t i = 0; i < n; i++) order[i] = (int64_t)i;
    const size_t per = p.h[0] * p.w[0] * p.c[0];

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
        for (int l = p.first; l <= p.last; l++) {
            const int i = l - p.first;
            if (vgg16_layer_kind(l) == VGG16_KIND_CONV) {
                const int k = vgg16_layer_param(l);
                /* training runs the direct convolution (see vgg_conv3x3_forward_by) */
                st = vgg_conv3x3_forward_by(VGG_CONV_IM2COL, p.act[l], cur, tail->kernel[k],
                                            tail->bias[k], 1, m, p.h[i], p.w[i], p.c[i],
                                            vgg16_layer_units(l), p.scratch, p.scratch_n,
                                            abort_cb, abort_ctx);
            } else {
                st = vgg_maxpool2x2_forward(p.act[l], cur, m, p.h[i], p.w[i], p.c[i]);
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
        for (int l = p.last; l >= p.first; l--) {
            const int i = l - p.first;
            const float *in = l == p.first ? p.in : p.act[l - 1];
            if (vgg16_layer_kind(l) == VGG16_KIND_POOL) {
                st = vgg_maxpool2x2_backward(g_next, g, in, m, p.h[i], p.w[i], p.c[i]);
            } else {
                const int k = vgg16_layer_param(l);
                const size_t cout = vgg16_layer_units(l);
                /* through the ReLU: its output is what the conv wrote */
                st = vgg_activation_backward(g, g, p.act[l], VGG_ACT_RELU,
                                             m * p.h[i] * p.w[i], cout);
                if (st == VGG_OK)
                    st = vgg_conv3x3_backward(l == p.first ? NULL : g_next, p.dw[l], p.db[l], g,
                                              in, tail->kernel[k], m, p.h[i], p.w[i], p.c[i],
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
        for (int l = p.first; l <= p.last; l++) {
            if (vgg16_layer_kind(l) != VGG16_KIND_CONV) continue;
            const size_t cin = conv_cin(l, &p), cout = vgg16_layer_units(l);
            if (!vgg_grad_ok(p.db[l], cout, &moved) || !vgg_grad_ok(p.dw[l], 9 * cin * cout, &moved))
                return VGG_ERR_NONFINITE;
        }
        if (stats->grad_batches == moved_before) stats->grad_batches += (size_t)moved;
        for (int l = p.first; l <= p.last; l++) {
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
