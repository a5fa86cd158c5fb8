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
    int first, last;                       /* the layers after A: first..last */
    size_t h[VGG16_NUM_LAYERS + 1], w[VGG16_NUM_LAYERS + 1], c[VGG16_NUM_LAYERS + 1];
    /* shape of the input of layer l at index l - first, of block5_pool's output at the end */
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
    p->first = layer + 1;
    p->last = VGG16_BLOCK5_POOL;
    size_t c = vgg16_layer_units(layer);
    size_t max_act = h * w * c, dw_n = 1, db_n = 1, scratch = 1;
    for (int l = p->first; l <= p->last; l++) {
        const int i = l - p->first;
        p->h[i] = h;
        p->w[i] = w;
        p->c[i] = c;
        if (vgg16_layer_kind(l) == VGG16_KIND_CONV) {
            const size_t cout = vgg16_layer_units(l);
            size_t s = vgg_conv3x3_backward_workspace_floats(c, cout);
            const size_t f = vgg_conv3x3_workspace_floats(c, cout);
            if (f > s) s = f;
            if (s > scratch) scratch = s;
            if (9 * c * cout > dw_n) dw_n = 9 * c * cout;
            if (cout > db_n) db_n = cout;
            c = cout;
        } else {
            if (h < 2 || w < 2) return 0;
            h /= 2;
            w /= 2;
        }
        if (h * w * c > max_act) max_act = h * w * c;
    }
    const int end = p->last - p->first + 1;
    p->h[end] = h;
    p->w[end] = w;
    p->c[end] = c;
    if (head->h != h || head->w != w || head->c != c) return 0; /* the head reads block5_pool */
    const size_t head_n = vgg_head_workspace_floats(head, batch);
    if (head_n == 0) return 0;
    size_t off = 0;
#define TAKE(ptr, count)          \
    do {                          \
        if (ws) (ptr) = ws + off; \
        off += (count);           \
    } while (0)
    for (int l = p->first; l <= p->last; l++) {
        const int i = l - p->first + 1; /* output of l is the input of l + 1 */
        TAKE(p->act[l], batch * p->h[i] * p->w[i] * p->c[i]);
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
    for (int l = p.first; l <= p.last; l++)
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
        for (int l = p.first; l <= p.last; l++) {
            const int i = l - p.first;
            if (vgg16_layer_kind(l) == VGG16_KIND_CONV) {
                const int k = vgg16_layer_param(l);
                /* the direct convolution, as training runs it: its backward is the exact one */
                st = vgg_conv3x3_forward_by(VGG_CONV_IM2COL, p.act[l], cur,
                                            weights->conv_kernel[k], weights->conv_bias[k], 1, m,
                                            p.h[i], p.w[i], p.c[i], vgg16_layer_units(l),
                                            p.scratch, p.scratch_n, abort_cb, abort_ctx);
            } else {
                st = vgg_maxpool2x2_forward(p.act[l], cur, m, p.h[i], p.w[i], p.c[i]);
            }
            if (st != VGG_OK) return st;
            cur = p.act[l];
        }
        /* d(score)/d(block5_pool output) into g_a */
        st = vgg_head_score_backward(p.g_a, class_index + i0, cur, m, head, p.head_ws, p.head_n);
        if (st != VGG_OK) return st;
        /* backward down to A */
        float *g = p.g_a, *g_next = p.g_b;
        for (int l = p.last; l >= p.first; l--) {
            const int i = l - p.first;
            const float *in = l == p.first ? A : p.act[l - 1];
            if (vgg16_layer_kind(l) == VGG16_KIND_POOL) {
                st = vgg_maxpool2x2_backward(g_next, g, in, m, p.h[i], p.w[i], p.c[i]);
            } else {
                const int k = vgg16_layer_param(l);
                const size_t cout = vgg16_layer_units(l);
                /* through the ReLU: its output is what the conv wrote */
                st = vgg_activation_backward(g, g, p.act[l], VGG_ACT_RELU, m * p.h[i] * p.w[i],
                                             cout);
                if (st == VGG_OK)
                    st = vgg_conv3x3_backward(g_next, p.dw, p.db, g, in, weights->conv_kernel[k],
                                              m, p.h[i], p.w[i], p.c[i], cout, p.scratch,
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
