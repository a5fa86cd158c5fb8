/*
 * gradcam.c - Grad-CAM (Selvaraju et al., 2017) of a VGG16 base plus head at
 * one layer of the base.
 *
 * A (n, h, w, c) is the layer's output (after the ReLU for a conv). The layers
 * after it, up to block5_pool, run forward keeping their outputs, the head
 * gives d(score)/d(block5_pool output) (vgg_head_score_backward), and those
 * layers run backward - max-pool routing, ReLU, conv dx - with the kernels that
 * fine-tuning uses (finetune.c), down to dA. Then alpha_k = mean over the
 * positions of dA[..., k] and cam = ReLU(sum_k alpha_k A[..., k]), at A's size.
 *
 * Workspace for batches of B, laid out in order:
 *   [ output of each layer after A | grad A | grad B | dW, db of one conv
 *     | conv scratch (forward and backward share it) | the head's workspace ]
 * Nothing is allocated here; the weights are borrowed for the call.
 */
#include "vgg_internal.h"

#include <string.h>

typedef struct {
    vgg16_run_shapes s;                    /* the layers after A: s.first..s.last */
    float *act[VGG16_NUM_LAYERS], *g_a, *g_b, *dw, *db, *scratch, *head_ws;
    size_t scratch_n, head_n;
} cam_plan;

/* Shapes and workspace offsets; returns the floats needed (0: invalid). ws may be NULL. */
static size_t plan(cam_plan *p, int layer, const vgg_head *head, size_t batch, size_t h,
                   size_t w, float *ws) {
    memset(p, 0, sizeof *p);
    if (!head || batch < 1 || h < 1 || w < 1 || layer < 0 || layer > VGG16_BLOCK5_POOL) return 0;
    const int kind = vgg16_layer_kind(layer);
    if (kind != VGG16_KIND_CONV && kind != VGG16_KIND_POOL) return 0;
    vgg16_run_shapes *s = &p->s;
    if (!vgg16_shapes_to_block5(s, layer + 1, h, w, vgg16_layer_units(layer), 0)) return 0;
    const int end = s->last - s->first + 1;
    /* the head reads block5_pool */
    if (head->h != s->h[end] || head->w != s->w[end] || head->c != s->c[end]) return 0;
    /* at least one float each, also when no conv follows A */
    const size_t max_act = s->max_act, dw_n = s->dw_max ? s->dw_max : 1,
                 db_n = s->db_max ? s->db_max : 1, scratch = s->scratch ? s->scratch : 1;
    const size_t head_n = vgg_head_workspace_floats(head, batch);
    if (head_n == 0) return 0;
    size_t off = 0;
#define TAKE(ptr, count)          \
    do {                          \
        if (ws) (ptr) = ws + off; \
        off += (count);           \
    } while (0)
    for (int l = s->first; l <= s->last; l++) {
        const int i = l - s->first + 1; /* output of l is the input of l + 1 */
        TAKE(p->act[l], batch * s->h[i] * s->w[i] * s->c[i]);
    }
    TAKE(p->g_a, batch * max_act);
    TAKE(p->g_b, batch * max_act);
    TAKE(p->dw, dw_n);
    TAKE(p->db, db_n);
    TAKE(p->scratch, scratch);
    TAKE(p->head_ws, head_n);
#undef TAKE
    p->scratch_n = scratch;
    p->head_n = head_n;
    return off;
}

size_t vgg16_grad_cam_workspace_floats(int layer, const vgg_head *head, size_t batch, size_t h,
                                       size_t w) {
    cam_plan p;
    return plan(&p, layer, head, batch, h, w, NULL);
}

int vgg16_grad_cam(float *cam, int32_t *class_index, const float *maps, size_t n, size_t h,
                   size_t w, int layer, const vgg16_weights *weights, const vgg_head *head,
                   size_t batch, float *workspace, size_t workspace_floats,
                   vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(cam && class_index && maps && weights && head && workspace, VGG_ERR_ARG);
    VGG_CHECK(batch >= 1 && batch <= VGG_BLAS_MAX_DIM, VGG_ERR_ARG);
    cam_plan p;
    const size_t need = plan(&p, layer, head, batch, h, w, NULL);
    VGG_CHECK(need > 0, VGG_ERR_SHAPE);
    VGG_CHECK(workspace_floats >= need, VGG_ERR_NOMEM);
    plan(&p, layer, head, batch, h, w, workspace);
    for (int l = p.s.first; l <= p.s.last; l++)
        if (vgg16_layer_kind(l) == VGG16_KIND_CONV) {
            const int k = vgg16_layer_param(l);
            VGG_CHECK(weights->conv_kernel[k] && weights->conv_bias[k], VGG_ERR_ARG);
        }
    const size_t c = vgg16_layer_units(layer), hw = h * w, per = hw * c;
    int st = VGG_OK;
    for (size_t i0 = 0; i0 < n; i0 += batch) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t m = n - i0 < batch ? n - i0 : batch;
        const float *A = maps + i0 * per;
        /* forward after A, keeping every layer's output */
        const float *cur = A;
        for (int l = p.s.first; l <= p.s.last; l++) {
            const int i = l - p.s.first;
            if (vgg16_layer_kind(l) == VGG16_KIND_CONV) {
                const int k = vgg16_layer_param(l);
                /* the direct convolution, as training runs it: its backward is the exact one */
                st = vgg_conv3x3_forward_by(VGG_CONV_IM2COL, p.act[l], cur,
                                            weights->conv_kernel[k], weights->conv_bias[k], 1, m,
                                            p.s.h[i], p.s.w[i], p.s.c[i], vgg16_layer_units(l),
                                            p.scratch, p.scratch_n, abort_cb, abort_ctx);
            } else {
                st = vgg_maxpool2x2_forward(p.act[l], cur, m, p.s.h[i], p.s.w[i], p.s.c[i]);
            }
            if (st != VGG_OK) return st;
            cur = p.act[l];
        }
        /* d(score)/d(block5_pool output) into g_a */
        st = vgg_head_score_backward(p.g_a, class_index + i0, cur, m, head, p.head_ws, p.head_n);
        if (st != VGG_OK) return st;
        /* backward down to A */
        float *g = p.g_a, *g_next = p.g_b;
        for (int l = p.s.last; l >= p.s.first; l--) {
            const int i = l - p.s.first;
            const float *in = l == p.s.first ? A : p.act[l - 1];
            if (vgg16_layer_kind(l) == VGG16_KIND_POOL) {
                st = vgg_maxpool2x2_backward(g_next, g, in, m, p.s.h[i], p.s.w[i], p.s.c[i]);
            } else {
                const int k = vgg16_layer_param(l);
                const size_t cout = vgg16_layer_units(l);
                /* through the ReLU: its output is what the conv wrote */
                st = vgg_activation_backward(g, g, p.act[l], VGG_ACT_RELU, m * p.s.h[i] * p.s.w[i],
                                             cout);
                if (st == VGG_OK)
                    st = vgg_conv3x3_backward(VGG_CONV_IM2COL, g_next, p.dw, p.db, g, in, weights->conv_kernel[k],
                                              m, p.s.h[i], p.s.w[i], p.s.c[i], cout, p.scratch,
                                              p.scratch_n, abort_cb, abort_ctx);
            }
            if (st != VGG_OK) return st;
            float *tmp = g;
            g = g_next;
            g_next = tmp;
        }
        /* g = dA (m, h, w, c); the channel weights alpha go to the other buffer */
        float *alpha = g_next;
        VGG_OMP_FOR_IF(m * per)
        for (size_t i = 0; i < m; i++) {
            const float *gi = g + i * per, *ai = A + i * per;
            float *al = alpha + i * c, *out = cam + (i0 + i) * hw;
            for (size_t k = 0; k < c; k++) {
                double s = 0.0;
                for (size_t q = 0; q < hw; q++) s += gi[q * c + k];
                al[k] = (float)(s / (double)hw);
            }
            for (size_t q = 0; q < hw; q++) {
                double s = 0.0;
                for (size_t k = 0; k < c; k++) s += (double)al[k] * ai[q * c + k];
                out[q] = s > 0.0 ? (float)s : 0.0f;
            }
        }
    }
    return VGG_OK;
}
