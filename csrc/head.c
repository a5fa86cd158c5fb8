/*
 * head.c - the classification head trained on cached features: an input
 * reduction (flatten / global average / global max pooling of each sample's
 * feature map), then dense and dropout layers, a Keras loss and an optimizer
 * step per batch. A whole epoch (shuffle, batches, forward, backward, update,
 * loss and accuracy) is one call, so Python releases the GIL once per epoch.
 *
 * Memory: parameters and optimizer slots are the caller's (vgg_head borrows
 * them and updates them in place); everything else lives in the caller's
 * workspace, laid out for a batch of B samples as
 *   [ input B*D0 | act_0 B*w_0 | ... | act_{L-1} | logits B*C | grad A B*wmax
 *     | grad B B*wmax | d_input B*D0 | targets B*C | labels B | weights B
 *     | dW_l, db_l, dz_l B*w_l per dense ]
 * where w_l is layer l's output width. Nothing is allocated here.
 *
 * The update: a dense layer's weight gradient dW = x^T dz is not written out
 * whole when it cannot overflow (a bound from the largest |x| and |dz|): each
 * thread computes it a block of rows at a time, in cache, and applies the
 * optimizer to that block at once, so a step streams the weights and the
 * optimizer's state once, as memory bandwidth allows. Otherwise dW is computed
 * whole and scanned before any update (the same bits either way).
 *
 * The loss is TensorFlow's Keras's (losses.c): on the logits of a softmax or
 * sigmoid output layer, which the forward keeps before the activation.
 */
#include "vgg_internal.h"

#include <float.h>
#include <math.h>
#include <string.h>

/* ---- shapes -------------------------------------------------------------- */

static size_t input_width(const vgg_head *h) {
    size_t hw;
    if (!vgg_mul_ok(h->h, h->w, &hw)) return 0;
    if (h->input == VGG_HEAD_FLATTEN) {
        size_t d;
        return vgg_mul_ok(hw, h->c, &d) ? d : 0;
    }
    return h->c;
}

/* Output width of each layer; returns 0 when the head is invalid. */
static int layer_widths(const vgg_head *h, size_t *widths) {
    if (!h || h->n_layers < 1 || h->n_layers > VGG_HEAD_MAX_LAYERS) return 0;
    if (h->input < VGG_HEAD_FLATTEN || h->input > VGG_HEAD_GMP) return 0;
    if (h->h < 1 || h->w < 1 || h->c < 1) return 0;
    size_t width = input_width(h);
    if (width == 0) return 0;
    for (size_t l = 0; l < h->n_layers; l++) {
        const vgg_head_layer *L = &h->layers[l];
        if (L->kind == VGG_HEAD_DENSE) {
            if (L->units < 1 || !L->kernel || !L->bias) return 0;
            if (L->activation < VGG_ACT_LINEAR || L->activation > VGG_ACT_SIGMOID) return 0;
            width = L->units;
        } else if (L->kind == VGG_HEAD_DROPOUT) {
            if (!(L->rate >= 0.0f && L->rate < 1.0f)) return 0;
        } else {
            return 0;
        }
        widths[l] = width;
    }
    /* the output is a dense layer's */
    return h->layers[h->n_layers - 1].kind == VGG_HEAD_DENSE;
}

size_t vgg_head_output_size(const vgg_head *head) {
    size_t widths[VGG_HEAD_MAX_LAYERS];
    return layer_widths(head, widths) ? widths[head->n_layers - 1] : 0;
}

typedef struct {
    float *input, *act[VGG_HEAD_MAX_LAYERS], *logits, *grad_a, *grad_b, *d_input, *targets,
        *weights;
    int32_t *labels;
    float *dw[VGG_HEAD_MAX_LAYERS], *db[VGG_HEAD_MAX_LAYERS], *dz[VGG_HEAD_MAX_LAYERS];
    const float *out_of[VGG_HEAD_MAX_LAYERS]; /* what layer l output in the last forward */
    size_t widths[VGG_HEAD_MAX_LAYERS], d0, out, batch;
} head_plan;

/* Lays the workspace out for batches of `batch`; returns floats needed, 0 if invalid.
 * With ws == NULL only counts. */
static size_t plan_workspace(head_plan *p, const vgg_head *h, size_t batch, float *ws) {
    memset(p, 0, sizeof *p);
    if (batch < 1 || !layer_widths(h, p->widths)) return 0;
    p->d0 = input_width(h);
    p->out = p->widths[h->n_layers - 1];
    p->batch = batch;
    size_t off = 0, wmax = 1, prev = p->d0;
#define TAKE(ptr, count)                                          \
    do {                                                          \
        size_t cnt_;                                              \
        if (!vgg_mul_ok((count), 1, &cnt_) || off + cnt_ < off) return 0; \
        if (ws) (ptr) = ws + off;                                 \
        off += cnt_;                                              \
    } while (0)
    size_t bd;
    if (!vgg_mul_ok(batch, p->d0, &bd)) return 0;
    TAKE(p->input, bd);
    for (size_t l = 0; l < h->n_layers; l++) {
        if (!vgg_mul_ok(batch, p->widths[l], &bd)) return 0;
        TAKE(p->act[l], bd);
        if (p->widths[l] > wmax) wmax = p->widths[l];
    }
    if (!vgg_mul_ok(batch, p->out, &bd)) return 0;
    TAKE(p->logits, bd);
    if (!vgg_mul_ok(batch, wmax, &bd)) return 0;
    TAKE(p->grad_a, bd);
    TAKE(p->grad_b, bd);
    if (!vgg_mul_ok(batch, p->d0, &bd)) return 0;
    TAKE(p->d_input, bd);
    if (!vgg_mul_ok(batch, p->out, &bd)) return 0;
    TAKE(p->targets, bd);
    float *labels_f = NULL;
    TAKE(labels_f, batch); /* int32 and float have the same size */
    p->labels = (int32_t *)labels_f;
    TAKE(p->weights, batch);
    for (size_t l = 0; l < h->n_layers; l++) {
        if (h->layers[l].kind == VGG_HEAD_DENSE) {
            /* dW, or W^T packed for dL/dx (dense.c), or the fused update's blocks */
            size_t kw;
            if (!vgg_mul_ok((prev + VGG_GEMM_NR - 1) / VGG_GEMM_NR * VGG_GEMM_NR,
                            h->layers[l].units, &kw))
                return 0;
            TAKE(p->dw[l], kw);
            TAKE(p->db[l], h->layers[l].units);
            if (!vgg_mul_ok(batch, h->layers[l].units, &bd)) return 0;
            TAKE(p->dz[l], bd);
        }
        prev = p->widths[l];
    }
#undef TAKE
    return off;
}

/* Lays the caller's workspace out for batches of `batch`, after checking the
 * head is valid (VGG_ERR_ARG) and the workspace large enough (VGG_ERR_NOMEM). */
static int use_workspace(head_plan *p, const vgg_head *h, size_t batch, float *ws, size_t ws_floats) {
    const size_t need = plan_workspace(p, h, batch, NULL);
    VGG_CHECK(need > 0, VGG_ERR_ARG);
    VGG_CHECK(ws_floats >= need, VGG_ERR_NOMEM);
    plan_workspace(p, h, batch, ws);
    return VGG_OK;
}

size_t vgg_head_workspace_floats(const vgg_head *head, size_t batch) {
    head_plan p;
    return plan_workspace(&p, head, batch, NULL);
}

/* ---- batches --------------------------------------------------------------- */

static inline float load(const void *x, int dtype, size_t i) {
    return dtype == VGG_F32 ? ((const float *)x)[i] : vgg_half_to_float(((const uint16_t *)x)[i]);
}

/* input (m, D0) <- reduction of samples order[0..m) (identity when order is NULL,
 * starting at `first`) of x (n, h, w, c). */
static void gather(float *input, const void *x, int dtype, const vgg_head *h,
                   const int64_t *order, size_t first, size_t m) {
    const size_t hw = h->h * h->w, c = h->c, per = hw * c;
    VGG_OMP_FOR_IF(m * per)
    for (size_t i = 0; i < m; i++) {
        const size_t s = order ? (size_t)order[first + i] : first + i;
        const size_t base = s * per;
        float *dst = input + i * (h->input == VGG_HEAD_FLATTEN ? per : c);
        if (h->input == VGG_HEAD_FLATTEN) {
            if (dtype == VGG_F32) memcpy(dst, (const float *)x + base, per * sizeof(float));
            else for (size_t j = 0; j < per; j++) dst[j] = load(x, dtype, base + j);
        } else if (h->input == VGG_HEAD_GAP) {
            for (size_t ch = 0; ch < c; ch++) {
                double sum = 0.0;
                for (size_t p = 0; p < hw; p++) sum += load(x, dtype, base + p * c + ch);
                dst[ch] = (float)(sum / (double)hw);
            }
        } else {
            for (size_t ch = 0; ch < c; ch++) {
                float mx = load(x, dtype, base + ch);
                for (size_t p = 1; p < hw; p++) {
                    const float v = load(x, dtype, base + p * c + ch);
                    if (v > mx || v != v) mx = v;
                }
                dst[ch] = mx;
            }
        }
    }
}

static void gather_targets(head_plan *p, const vgg_targets *t, const int64_t *order, size_t first,
                           size_t m) {
    for (size_t i = 0; i < m; i++) {
        const size_t s = order ? (size_t)order[first + i] : first + i;
        if (t->loss == VGG_LOSS_SPARSE_CCE) p->labels[i] = t->labels[s];
        else memcpy(p->targets + i * p->out, t->targets + s * p->out, p->out * sizeof(float));
        p->weights[i] = t->sample_weight ? t->sample_weight[s] : 1.0f;
    }
}

/* The output layer's activation, which decides what the loss reads (losses.c). */
static int output_activation(const vgg_head *h) {
    return h->layers[h->n_layers - 1].activation;
}

/* What the loss reads: the output layer's logits for softmax / sigmoid, else its output. */
static const float *loss_input(const vgg_head *h, const head_plan *p, const float *y) {
    const int a = output_activation(h);
    return a == VGG_ACT_SOFTMAX || a == VGG_ACT_SIGMOID ? p->logits : y;
}

/* Forward through the layers; dropout only when training. The output layer's
 * pre-activation is kept in p->logits. Returns the output activation (m, out)
 * or NULL on error (status in *st). */
static const float *forward(const vgg_head *h, head_plan *p, size_t m, int training,
                            uint64_t seed, int64_t iteration, int *st) {
    const float *cur = p->input;
    size_t width = p->d0;
    for (size_t l = 0; l < h->n_layers; l++) {
        const vgg_head_layer *L = &h->layers[l];
        if (L->kind == VGG_HEAD_DENSE && l + 1 == h->n_layers) {
            *st = vgg_dense_forward(p->logits, cur, L->kernel, L->bias, VGG_ACT_LINEAR, m, width,
                                    L->units);
            if (*st == VGG_OK) {
                memcpy(p->act[l], p->logits, m * L->units * sizeof(float));
                *st = vgg_activation_forward(p->act[l], L->activation, m, L->units);
            }
            cur = p->act[l];
            width = L->units;
        } else if (L->kind == VGG_HEAD_DENSE) {
            *st = vgg_dense_forward(p->act[l], cur, L->kernel, L->bias, L->activation, m, width,
                                    L->units);
            cur = p->act[l];
            width = L->units;
        } else if (training && L->rate > 0.0f) {
            /* a distinct stream per (update, layer) */
            *st = vgg_dropout_forward(p->act[l], cur, L->rate, seed,
                                      (uint64_t)iteration * VGG_HEAD_MAX_LAYERS + l, m * width);
            cur = p->act[l];
        } else {
            *st = VGG_OK; /* inference: dropout is the identity */
        }
        if (*st != VGG_OK) return NULL;
        p->out_of[l] = cur; /* act[l], or the input itself for a skipped dropout */
    }
    return cur;
}

static size_t count_correct(const float *yhat, const head_plan *p, int loss, size_t m) {
    const size_t c = p->out;
    size_t correct = 0;
    for (size_t i = 0; i < m; i++) {
        const float *yh = yhat + i * c;
        if (c == 1) {
            const float y = loss == VGG_LOSS_SPARSE_CCE ? (float)p->labels[i] : p->targets[i];
            correct += (yh[0] > 0.5f) == (y > 0.5f);
            continue;
        }
        size_t best = 0;
        for (size_t k = 1; k < c; k++) if (yh[k] > yh[best]) best = k;
        size_t truth = 0;
        if (loss == VGG_LOSS_SPARSE_CCE) {
            truth = (size_t)p->labels[i];
        } else {
            const float *y = p->targets + i * c;
            for (size_t k = 1; k < c; k++) if (y[k] > y[truth]) truth = k;
        }
        correct += best == truth;
    }
    return correct;
}

static int check_common(const vgg_head *h, const void *x, int dtype, size_t batch) {
    VGG_CHECK(h && x, VGG_ERR_ARG);
    VGG_CHECK(dtype == VGG_F32 || dtype == VGG_F16, VGG_ERR_ARG);
    VGG_CHECK(batch >= 1 && batch <= VGG_BLAS_MAX_DIM, VGG_ERR_ARG);
    return VGG_OK;
}

int vgg_head_check_targets(const vgg_targets *t, size_t n, size_t out) {
    VGG_CHECK(t, VGG_ERR_ARG);
    if (t->loss == VGG_LOSS_SPARSE_CCE) {
        VGG_CHECK(t->labels, VGG_ERR_ARG);
        for (size_t i = 0; i < n; i++)
            VGG_CHECK(t->labels[i] >= 0 && (size_t)t->labels[i] < out, VGG_ERR_ARG);
    } else {
        VGG_CHECK(t->loss == VGG_LOSS_BCE || t->loss == VGG_LOSS_CCE, VGG_ERR_ARG);
        VGG_CHECK(t->targets, VGG_ERR_ARG);
    }
    return VGG_OK;
}

/* ---- the update ------------------------------------------------------------ */

/* The largest |a[i]| of n floats, +inf when one is NaN or infinite: on the bits,
 * which order as the magnitudes do for non-negative floats. */
static double abs_max(const float *a, size_t n) {
    uint32_t top = 0;
    VGG_OMP_FOR_REDUCE_MAX_IF(top, n)
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, a + i, sizeof bits);
        bits &= 0x7fffffffu;
        top = bits > top ? bits : top;
    }
    if (top >= 0x7f800000u) return INFINITY;
    float f;
    memcpy(&f, &top, sizeof f);
    return f;
}

/* Rows of dW a thread computes and applies at a time: a block of at most 64 KiB. */
static size_t rows_per_block(size_t units) {
    const size_t r = 16384 / units;
    return r < 1 ? 1 : r > 64 ? 64 : r;
}

/* Threads for a layer's fused update (its blocks live in the layer's dW buffer,
 * one block per thread, so that nothing is allocated). */
static size_t update_threads(size_t in_w, size_t units, size_t m) {
    size_t nth = (size_t)vgg_get_num_threads();
    if ((double)in_w * (double)units * (double)m < (double)(1 << 20)) nth = 1;
    const size_t fit = in_w / rows_per_block(units);
    return nth < fit ? nth : fit;
}

/* Whether dW = x^T dz (x (m, in_w), dz (m, units)) can be applied block by
 * block: no element of it, nor any partial sum of its chain, can exceed
 * m * max|x| * max|dz| (with a margin for rounding), so when that is finite
 * every element is; and the layer's dW buffer has room for the threads' blocks. */
static int fusable(const float *x, size_t in_w, const float *dz, size_t units, size_t m) {
    if (update_threads(in_w, units, m) < 1) return 0;
    const double bound = (double)m * abs_max(x, m * in_w) * abs_max(dz, m * units);
    return bound <= 0.25 * (double)FLT_MAX;
}

/* The layer's kernel updated block by block with its gradient dW = x^T dz,
 * each block computed (vgg_gemm_at: dW's bits) into `scratch` (the layer's dW
 * buffer, one block per thread) and applied while in cache. Sets *moved when
 * an element of dW is not zero; returns 0 when an updated weight is not finite. */
static int fused_update(vgg_head_layer *L, const float *x, size_t in_w, const float *dz,
                        size_t m, const vgg_opt_step *os, float *scratch, int *moved) {
    const size_t units = L->units, rows = rows_per_block(units);
    const size_t nth = update_threads(in_w, units, m);
    uint32_t special = 0, magnitude = 0;
    VGG_OMP_FOR_N_REDUCE_OR2(nth, special, magnitude)
    for (size_t t = 0; t < nth; t++) {
        float *g = scratch + t * rows * units;
        const size_t r_end = (t + 1) * in_w / nth;
        for (size_t r0 = t * in_w / nth; r0 < r_end; r0 += rows) {
            const size_t nr = r_end - r0 < rows ? r_end - r0 : rows, count = nr * units;
            vgg_gemm_at(g, units, x + r0, in_w, dz, units, nr, units, m, 0);
            float *w = L->kernel + r0 * units;
            for (size_t i = 0; i < count; i++) {
                uint32_t bits;
                memcpy(&bits, g + i, sizeof bits);
                magnitude |= bits & 0x7fffffffu;
            }
            vgg_optimizer_apply(os, w, g, L->slots[0] ? L->slots[0] + r0 * units : NULL,
                                L->slots[1] ? L->slots[1] + r0 * units : NULL, count);
            for (size_t i = 0; i < count; i++) {
                uint32_t bits;
                memcpy(&bits, w + i, sizeof bits);
                special |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
            }
        }
    }
    if (magnitude) *moved = 1;
    return special == 0;
}

/* One update on the batch in p->input (targets gathered): forward with dropout,
 * loss, backward, optimizer step. When d_input is not NULL it gets dL/d(input)
 * (m, D0) for a caller that trains what feeds the head; when outputs is not
 * NULL, row order[first + i] of it gets sample i's output. A non-finite loss
 * returns VGG_ERR_NONFINITE before anything is updated. */
static int train_step(vgg_fit_stats *stats, vgg_head *head, head_plan *pp, size_t m,
                  const vgg_optimizer *opt, int64_t it, uint64_t seed, int loss_kind,
                  float *d_input, float *outputs, const int64_t *order, size_t first) {
    head_plan p = *pp;
    int st;
    const float *y = forward(head, &p, m, 1, seed, it, &st);
    if (!y) return st;
    double loss;
    float *g = p.grad_a, *g_next = p.grad_b;
    const int out_act = output_activation(head);
    st = vgg_loss_forward_backward(&loss, g, NULL, loss_input(head, &p, y), p.targets, p.labels,
                                   p.weights, loss_kind, out_act, m, p.out);
    if (st != VGG_OK) return st;
    if (!isfinite(loss)) return VGG_ERR_NONFINITE;
    if (outputs)
        for (size_t i = 0; i < m; i++) {
            const size_t s = order ? (size_t)order[first + i] : first + i;
            memcpy(outputs + s * p.out, y + i * p.out, p.out * sizeof(float));
        }
    stats->loss_sum += loss * (double)m;
    stats->correct += (double)count_correct(y, &p, loss_kind, m);
    stats->seen += m;

    /* backward: g holds dL/d(output of layer l); for the output layer on
     * logits, dL/d(its pre-activation) already */
    const int on_logits = loss_input(head, &p, y) == p.logits;
    for (size_t l = head->n_layers; l-- > 0;) {
        const vgg_head_layer *L = &head->layers[l];
        const float *in = l == 0 ? p.input : p.out_of[l - 1];
        const size_t in_w = l == 0 ? p.d0 : p.widths[l - 1];
        if (L->kind == VGG_HEAD_DENSE) {
            const int skip = on_logits && l + 1 == head->n_layers;
            st = skip ? VGG_OK : vgg_activation_backward(g, g, p.act[l], L->activation, m, L->units);
            if (st == VGG_OK) {
                memcpy(p.dz[l], g, m * L->units * sizeof(float)); /* dW comes with the update */
                st = vgg_dense_backward(l > 0 ? g_next : d_input, NULL, p.db[l], g, in,
                                        L->kernel, m, in_w, L->units, p.dw[l]);
            }
            float *tmp = g;
            g = g_next;
            g_next = tmp;
        } else if (L->rate > 0.0f) {
            st = vgg_dropout_backward(g, g, L->rate, seed,
                                      (uint64_t)it * VGG_HEAD_MAX_LAYERS + l, m * in_w);
        }
        if (st != VGG_OK) return st;
    }
    /* a head that starts with a dropout leaves dL/d(input) in g */
    if (d_input && head->layers[0].kind != VGG_HEAD_DENSE)
        memcpy(d_input, g, m * p.d0 * sizeof(float));
    /* a gradient that overflowed would spoil the weights: refused like a
     * non-finite loss, before anything is updated. Dead units give exactly zero
     * gradients: counted, so that the caller can say so instead of reporting a
     * constant loss. */
    vgg_opt_step os;
    if ((st = vgg_optimizer_prepare(&os, opt, it)) != VGG_OK) return st;
    int moved = 0, fused[VGG_HEAD_MAX_LAYERS] = {0};
    for (size_t l = 0; l < head->n_layers; l++) {
        const vgg_head_layer *L = &head->layers[l];
        if (L->kind != VGG_HEAD_DENSE) continue;
        const float *in = l == 0 ? p.input : p.out_of[l - 1];
        const size_t in_w = l == 0 ? p.d0 : p.widths[l - 1];
        VGG_CHECK((os.slots < 1 || L->slots[0]) && (os.slots < 2 || L->slots[1]), VGG_ERR_ARG);
        if (!vgg_grad_ok(p.db[l], L->units, &moved)) return VGG_ERR_NONFINITE;
        fused[l] = fusable(in, in_w, p.dz[l], L->units, m);
        if (fused[l]) continue;
        vgg_gemm_at_parallel(p.dw[l], L->units, in, in_w, p.dz[l], L->units, in_w, L->units, m, 0);
        if (!vgg_grad_ok(p.dw[l], in_w * L->units, &moved)) return VGG_ERR_NONFINITE;
    }
    /* one update of every parameter, after all gradients are known to be finite */
    for (size_t l = 0; l < head->n_layers; l++) {
        vgg_head_layer *L = &head->layers[l];
        if (L->kind != VGG_HEAD_DENSE) continue;
        const float *in = l == 0 ? p.input : p.out_of[l - 1];
        const size_t in_w = l == 0 ? p.d0 : p.widths[l - 1];
        /* finite gradients can still overflow the optimizer's state (Adam's g^2 on
         * logits of 1e20): the caller goes back to its last good weights */
        int ok = 1, unused = 0;
        if (fused[l]) {
            ok = fused_update(L, in, in_w, p.dz[l], m, &os, p.dw[l], &moved);
        } else {
            st = vgg_optimizer_step(L->kernel, p.dw[l], L->slots[0], L->slots[1],
                                    in_w * L->units, opt, it);
            if (st != VGG_OK) return st;
            ok = vgg_grad_ok(L->kernel, in_w * L->units, &unused);
        }
        st = vgg_optimizer_step(L->bias, p.db[l], L->slots[2], L->slots[3], L->units, opt, it);
        if (st != VGG_OK) return st;
        if (!ok || !vgg_grad_ok(L->bias, L->units, &unused)) return VGG_ERR_NONFINITE;
    }
    stats->grad_batches += (size_t)moved;
    return VGG_OK;
}

/* d_maps (m, h, w, c) <- dL/d(maps) from d_input (m, D0), undoing the input
 * reduction: flatten is the identity, average pooling spreads evenly, max
 * pooling routes to the first maximum (as the forward's choice). */
static void reduce_backward(float *d_maps, const float *d_input, const float *maps,
                            const vgg_head *h, size_t m) {
    const size_t hw = h->h * h->w, c = h->c, per = hw * c;
    if (h->input == VGG_HEAD_FLATTEN) {
        memcpy(d_maps, d_input, m * per * sizeof(float));
        return;
    }
    VGG_OMP_FOR_IF(m * per)
    for (size_t i = 0; i < m; i++) {
        float *dm = d_maps + i * per;
        const float *mp = maps + i * per, *di = d_input + i * c;
        if (h->input == VGG_HEAD_GAP) {
            for (size_t q = 0; q < hw; q++)
                for (size_t ch = 0; ch < c; ch++) dm[q * c + ch] = di[ch] / (float)hw;
        } else {
            memset(dm, 0, per * sizeof(float));
            for (size_t ch = 0; ch < c; ch++) {
                size_t best = 0;
                for (size_t q = 1; q < hw; q++) {
                    const float v = mp[q * c + ch], b = mp[best * c + ch];
                    if (v > b || (v != v && b == b)) best = q;
                }
                dm[best * c + ch] = di[ch];
            }
        }
    }
}

int vgg_head_train_maps(vgg_fit_stats *stats, vgg_head *head, const vgg_optimizer *opt,
                        int64_t iteration, const float *maps, size_t m, const vgg_targets *t,
                        const int64_t *order, size_t first, uint64_t seed, float *d_maps,
                        float *outputs, float *workspace, size_t workspace_floats) {
    VGG_CHECK(stats && head && opt && maps && t && d_maps && workspace && m >= 1, VGG_ERR_ARG);
    head_plan p;
    int st = use_workspace(&p, head, m, workspace, workspace_floats);
    if (st != VGG_OK) return st;
    gather(p.input, maps, VGG_F32, head, NULL, 0, m);
    gather_targets(&p, t, order, first, m);
    st = train_step(stats, head, &p, m, opt, iteration, seed, t->loss, p.d_input, outputs, order,
                    first);
    if (st != VGG_OK) return st;
    reduce_backward(d_maps, p.d_input, maps, head, m);
    return VGG_OK;
}

int vgg_head_score_backward(float *d_maps, int32_t *class_index, const float *maps, size_t m,
                            const vgg_head *head, float *workspace, size_t workspace_floats) {
    VGG_CHECK(d_maps && class_index && maps && head && workspace && m >= 1, VGG_ERR_ARG);
    head_plan p;
    int st = use_workspace(&p, head, m, workspace, workspace_floats);
    if (st != VGG_OK) return st;
    gather(p.input, maps, VGG_F32, head, NULL, 0, m);
    const float *y = forward(head, &p, m, 0, 0, 0, &st);
    if (!y) return st;
    /* the score is one unit's pre-activation: its gradient there is one-hot */
    float *g = p.grad_a, *g_next = p.grad_b;
    memset(g, 0, m * p.out * sizeof(float));
    for (size_t i = 0; i < m; i++) {
        if (class_index[i] < 0) {
            size_t best = 0;
            for (size_t k = 1; k < p.out; k++) if (y[i * p.out + k] > y[i * p.out + best]) best = k;
            class_index[i] = (int32_t)best;
        }
        VGG_CHECK((size_t)class_index[i] < p.out, VGG_ERR_ARG);
        g[i * p.out + (size_t)class_index[i]] = 1.0f;
    }
    for (size_t l = head->n_layers; l-- > 0;) {
        const vgg_head_layer *L = &head->layers[l];
        if (L->kind != VGG_HEAD_DENSE) continue; /* dropout: the identity at inference */
        const float *in = l == 0 ? p.input : p.out_of[l - 1];
        const size_t in_w = l == 0 ? p.d0 : p.widths[l - 1];
        st = l + 1 == head->n_layers ? VGG_OK
                                     : vgg_activation_backward(g, g, p.act[l], L->activation, m,
                                                               L->units);
        if (st == VGG_OK)
            st = vgg_dense_backward(l > 0 ? g_next : p.d_input, NULL, p.db[l], g, in,
                                    L->kernel, m, in_w, L->units, p.dw[l]);
        if (st != VGG_OK) return st;
        float *tmp = g;
        g = g_next;
        g_next = tmp;
    }
    if (head->layers[0].kind != VGG_HEAD_DENSE) memcpy(p.d_input, g, m * p.d0 * sizeof(float));
    reduce_backward(d_maps, p.d_input, maps, head, m);
    return VGG_OK;
}

/* ---- entry points ------------------------------------------------------------ */

int vgg_head_predict(float *out, const void *x, int dtype, size_t n, const vgg_head *head,
                     size_t batch, float *workspace, size_t workspace_floats,
                     vgg_abort_fn abort_cb, void *abort_ctx) {
    int st = check_common(head, x, dtype, batch);
    if (st != VGG_OK) return st;
    VGG_CHECK(out && workspace, VGG_ERR_ARG);
    head_plan p;
    if ((st = use_workspace(&p, head, batch, workspace, workspace_floats)) != VGG_OK) return st;
    for (size_t i0 = 0; i0 < n; i0 += batch) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t m = n - i0 < batch ? n - i0 : batch;
        gather(p.input, x, dtype, head, NULL, i0, m);
        const float *y = forward(head, &p, m, 0, 0, 0, &st);
        if (!y) return st;
        memcpy(out + i0 * p.out, y, m * p.out * sizeof(float));
    }
    return VGG_OK;
}

int vgg_head_evaluate(vgg_fit_stats *stats, const void *x, int dtype, size_t n,
                      const vgg_head *head, const vgg_targets *t, size_t batch,
                      float *workspace, size_t workspace_floats, vgg_abort_fn abort_cb,
                      void *abort_ctx) {
    int st = check_common(head, x, dtype, batch);
    if (st != VGG_OK) return st;
    VGG_CHECK(stats && workspace, VGG_ERR_ARG);
    memset(stats, 0, sizeof *stats);
    head_plan p;
    if ((st = use_workspace(&p, head, batch, workspace, workspace_floats)) != VGG_OK) return st;
    if ((st = vgg_head_check_targets(t, n, p.out)) != VGG_OK) return st;
    for (size_t i0 = 0; i0 < n; i0 += batch) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t m = n - i0 < batch ? n - i0 : batch;
        gather(p.input, x, dtype, head, NULL, i0, m);
        gather_targets(&p, t, NULL, i0, m);
        const float *y = forward(head, &p, m, 0, 0, 0, &st);
        if (!y) return st;
        double loss;
        st = vgg_loss_forward_backward(&loss, NULL, NULL, loss_input(head, &p, y), p.targets,
                                       p.labels, p.weights, t->loss, output_activation(head), m,
                                       p.out);
        if (st != VGG_OK) return st;
        stats->loss_sum += loss * (double)m;
        stats->correct += (double)count_correct(y, &p, t->loss, m);
        stats->seen += m;
        stats->batches++;
    }
    return VGG_OK;
}

int vgg_head_fit_epoch(vgg_fit_stats *stats, vgg_head *head, const vgg_optimizer *opt,
                       int64_t *iterations, const void *x, int dtype, size_t n,
                       const vgg_targets *t, size_t batch, int shuffle, uint64_t seed,
                       uint64_t epoch, int64_t *order, float *outputs, float *workspace,
                       size_t workspace_floats, vgg_abort_fn abort_cb, void *abort_ctx) {
    int st = check_common(head, x, dtype, batch);
    if (st != VGG_OK) return st;
    VGG_CHECK(stats && opt && iterations && order && workspace, VGG_ERR_ARG);
    VGG_CHECK(opt->learning_rate > 0.0, VGG_ERR_ARG);
    memset(stats, 0, sizeof *stats);
    head_plan p;
    if ((st = use_workspace(&p, head, batch, workspace, workspace_floats)) != VGG_OK) return st;
    if ((st = vgg_head_check_targets(t, n, p.out)) != VGG_OK) return st;
    const int slots = vgg_optimizer_slots(opt);
    for (size_t l = 0; l < head->n_layers; l++) {
        const vgg_head_layer *L = &head->layers[l];
        if (L->kind != VGG_HEAD_DENSE) continue;
        for (int s = 0; s < slots; s++) VGG_CHECK(L->slots[s] && L->slots[2 + s], VGG_ERR_ARG);
    }

    if (shuffle) vgg_rng_permutation(order, n, seed, epoch);
    else for (size_t i = 0; i < n; i++) order[i] = (int64_t)i;

    for (size_t i0 = 0; i0 < n; i0 += batch) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t m = n - i0 < batch ? n - i0 : batch;
        const int64_t it = *iterations;
        gather(p.input, x, dtype, head, order, i0, m);
        gather_targets(&p, t, order, i0, m);
        st = train_step(stats, head, &p, m, opt, it, seed, t->loss, NULL, outputs, order, i0);
        if (st != VGG_OK) return st;
        *iterations = it + 1;
        stats->batches++;
    }
    return VGG_OK;
}
