/*
 * vgg16.c - the VGG16 network (configuration D) with Keras's layer names.
 *
 * The forward pass runs layer after layer over a pass of several images, ping-
 * ponging between two activation buffers in the caller's workspace; the last
 * layer computed writes straight into the caller's output. Any N is split into
 * passes of as many images as fit the workspace, so memory is set by the
 * workspace, never by N. Weights are borrowed (vgg16_weights) for one call.
 *
 * Workspace layout (floats): [ act A | act B | conv workspace ], each act
 * buffer holding the largest activation of a pass up to the stop layer.
 */
#include "vgg_internal.h"

#include <string.h>

typedef struct {
    const char *name;
    int kind;
    size_t units; /* conv/pool: channels out; dense: units (0: set by weights) */
    int param;    /* conv: index into conv_kernel; dense: index into dense_kernel */
} layer_def;

static const layer_def LAYERS[VGG16_NUM_LAYERS] = {
    {"block1_conv1", VGG16_KIND_CONV, 64, 0},   {"block1_conv2", VGG16_KIND_CONV, 64, 1},
    {"block1_pool", VGG16_KIND_POOL, 64, -1},   {"block2_conv1", VGG16_KIND_CONV, 128, 2},
    {"block2_conv2", VGG16_KIND_CONV, 128, 3},  {"block2_pool", VGG16_KIND_POOL, 128, -1},
    {"block3_conv1", VGG16_KIND_CONV, 256, 4},  {"block3_conv2", VGG16_KIND_CONV, 256, 5},
    {"block3_conv3", VGG16_KIND_CONV, 256, 6},  {"block3_pool", VGG16_KIND_POOL, 256, -1},
    {"block4_conv1", VGG16_KIND_CONV, 512, 7},  {"block4_conv2", VGG16_KIND_CONV, 512, 8},
    {"block4_conv3", VGG16_KIND_CONV, 512, 9},  {"block4_pool", VGG16_KIND_POOL, 512, -1},
    {"block5_conv1", VGG16_KIND_CONV, 512, 10}, {"block5_conv2", VGG16_KIND_CONV, 512, 11},
    {"block5_conv3", VGG16_KIND_CONV, 512, 12}, {"block5_pool", VGG16_KIND_POOL, 512, -1},
    {"flatten", VGG16_KIND_FLATTEN, 0, -1},     {"fc1", VGG16_KIND_DENSE, 4096, 0},
    {"fc2", VGG16_KIND_DENSE, 4096, 1},         {"predictions", VGG16_KIND_DENSE, 0, 2},
};

const char *vgg16_layer_name(int layer) {
    return (layer >= 0 && layer < VGG16_NUM_LAYERS) ? LAYERS[layer].name : NULL;
}

int vgg16_layer_kind(int layer) {
    return (layer >= 0 && layer < VGG16_NUM_LAYERS) ? LAYERS[layer].kind : -1;
}

size_t vgg16_layer_units(int layer) {
    return (layer >= 0 && layer < VGG16_NUM_LAYERS) ? LAYERS[layer].units : 0;
}

size_t vgg16_layer_inputs(int layer) {
    if (layer < 0 || layer >= VGG16_NUM_LAYERS) return 0;
    if (layer == 0) return 3;
    if (layer == VGG16_FC1) return (VGG16_TOP_SIZE / 32) * (VGG16_TOP_SIZE / 32) *
                                   LAYERS[VGG16_BLOCK5_POOL].units;
    return LAYERS[layer - 1].units;
}

int vgg16_layer_param(int layer) {
    return (layer >= 0 && layer < VGG16_NUM_LAYERS) ? LAYERS[layer].param : -1;
}

int vgg16_conv_precision(int layer, int precision) {
    return layer < VGG16_BLOCK1_POOL ? VGG_PRECISION_FP32 : precision;
}

int vgg16_conv_layer(int conv) {
    for (int l = 0; l < VGG16_NUM_LAYERS; l++)
        if (LAYERS[l].kind == VGG16_KIND_CONV && LAYERS[l].param == conv) return l;
    return -1;
}

int vgg16_shapes_to_block5(vgg16_run_shapes *s, int first, size_t h, size_t w, size_t c,
                           int by_shape) {
    memset(s, 0, sizeof *s);
    s->first = first;
    s->last = VGG16_BLOCK5_POOL;
    s->max_act = h * w * c;
    for (int l = first; l <= s->last; l++) {
        const int i = l - first;
        s->h[i] = h;
        s->w[i] = w;
        s->c[i] = c;
        if (LAYERS[l].kind == VGG16_KIND_CONV) {
            const size_t cout = LAYERS[l].units;
            const int algo = by_shape ? vgg_conv3x3_algo(h, w, c, cout) : VGG_CONV_IM2COL;
            size_t f = vgg_conv3x3_backward_workspace_floats(algo, c, cout);
            const size_t fw = vgg_conv3x3_workspace_floats(c, cout);
            if (fw > f) f = fw;
            if (f > s->scratch) s->scratch = f;
            if (9 * c * cout > s->dw_max) s->dw_max = 9 * c * cout;
            if (cout > s->db_max) s->db_max = cout;
            c = cout;
        } else {
            if (h < 2 || w < 2) return 0;
            h /= 2;
            w /= 2;
        }
        if (h * w * c > s->max_act) s->max_act = h * w * c;
    }
    const int end = s->last - first + 1;
    s->h[end] = h;
    s->w[end] = w;
    s->c[end] = c;
    return 1;
}

/* The convolutions' workspace for a given number of threads: the largest of
 * the conv layers from cfg->start_layer to cfg->stop_layer (it does not depend
 * on the image size). cfg must have passed plan(). */
static size_t conv_ws_for(const vgg16_config *cfg, size_t threads) {
    size_t ch = cfg->start_layer ? LAYERS[cfg->start_layer - 1].units : 3, most = 0;
    for (int l = cfg->start_layer; l <= cfg->stop_layer && l < VGG16_FLATTEN; l++) {
        if (LAYERS[l].kind != VGG16_KIND_CONV) continue;
        const size_t f = vgg_conv3x3_workspace_floats_for(ch, LAYERS[l].units, threads,
                                                          cfg->prepared);
        if (f > most) most = f;
        ch = LAYERS[l].units;
    }
    return most;
}

/* Shape after each layer up to cfg->stop_layer, for one image. Fills per-layer
 * h/w/c when the arrays are given; reports the largest activation and the
 * largest conv input depth. */
typedef struct {
    size_t oh, ow, oc;   /* output of the network (after pooling) */
    size_t max_act;      /* floats, one image, input included */
    size_t conv_ws;      /* largest conv workspace of the layers run; 0: no conv */
    size_t conv_ws_min;  /* the same for one thread: what the convolutions need at least */
} net_plan;

static int plan(net_plan *p, const vgg16_config *cfg, size_t classes, size_t h, size_t w) {
    VGG_CHECK(cfg && p, VGG_ERR_ARG);
    VGG_CHECK(cfg->stop_layer >= 0 && cfg->stop_layer < VGG16_NUM_LAYERS, VGG_ERR_ARG);
    VGG_CHECK(cfg->pooling >= VGG_POOL_NONE && cfg->pooling <= VGG_POOL_MAX, VGG_ERR_ARG);
    VGG_CHECK(cfg->precision == VGG_PRECISION_FP32 || cfg->precision == VGG_PRECISION_BF16,
              VGG_ERR_ARG);
    const int start = cfg->start_layer, stop = cfg->stop_layer;
    /* a cut is the output of a conv or pool layer */
    VGG_CHECK(start >= 0 && start <= stop && start <= VGG16_FLATTEN, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1, VGG_ERR_SHAPE);
    if (stop >= VGG16_FLATTEN) VGG_CHECK(cfg->pooling == VGG_POOL_NONE, VGG_ERR_ARG);
    if (stop == VGG16_PREDICTIONS) VGG_CHECK(classes >= 1, VGG_ERR_ARG);
    size_t ch = start ? LAYERS[start - 1].units : 3, flat = 0;
    VGG_CHECK(vgg_mul_ok(h, w, &p->max_act) && vgg_mul_ok(p->max_act, ch, &p->max_act),
              VGG_ERR_SHAPE);
    p->conv_ws = p->conv_ws_min = 0;
    for (int l = start; l <= stop; l++) {
        size_t a = 0;
        switch (LAYERS[l].kind) {
        case VGG16_KIND_CONV:
            ch = LAYERS[l].units;
            break;
        case VGG16_KIND_POOL:
            VGG_CHECK(h >= 2 && w >= 2, VGG_ERR_SHAPE);
            h /= 2;
            w /= 2;
            break;
        case VGG16_KIND_FLATTEN:
            /* fc1 takes 7 x 7 x 512: the top needs 224 x 224 images */
            VGG_CHECK(h == VGG16_TOP_SIZE / 32 && w == VGG16_TOP_SIZE / 32, VGG_ERR_SHAPE);
            flat = h * w * ch;
            break;
        case VGG16_KIND_DENSE:
            flat = LAYERS[l].units ? LAYERS[l].units : classes;
            break;
        default:
            return VGG_ERR_INTERNAL;
        }
        if (l < VGG16_FLATTEN) {
            VGG_CHECK(vgg_mul_ok(h * w, ch, &a), VGG_ERR_SHAPE);
        } else {
            a = flat;
        }
        if (a > p->max_act) p->max_act = a;
    }
    p->conv_ws = conv_ws_for(cfg, (size_t)vgg_get_num_threads());
    p->conv_ws_min = conv_ws_for(cfg, 1);
    if (stop >= VGG16_FLATTEN) {
        p->oh = p->ow = 1;
        p->oc = flat;
    } else if (cfg->pooling != VGG_POOL_NONE) {
        p->oh = p->ow = 1;
        p->oc = ch;
    } else {
        p->oh = h;
        p->ow = w;
        p->oc = ch;
    }
    return VGG_OK;
}

int vgg16_output_shape(size_t *oh, size_t *ow, size_t *oc, const vgg16_config *cfg,
                       size_t classes, size_t h, size_t w) {
    VGG_CHECK(oh && ow && oc, VGG_ERR_ARG);
    net_plan p;
    int st = plan(&p, cfg, classes, h, w);
    if (st != VGG_OK) return st;
    *oh = p.oh;
    *ow = p.ow;
    *oc = p.oc;
    return VGG_OK;
}

static size_t col_floats(const net_plan *p) { return p->conv_ws; }

size_t vgg16_workspace_floats_for(const vgg16_config *cfg, size_t batch, size_t h, size_t w,
                                  size_t threads) {
    net_plan p;
    /* classes only changes the tiny predictions buffer; 4096 bounds it for
     * ImageNet and any head a user gives below that */
    if (threads < 1 || plan(&p, cfg, 4096, h, w) != VGG_OK) return 0;
    size_t acts;
    if (!vgg_mul_ok(p.max_act, batch, &acts) || !vgg_mul_ok(acts, 2, &acts)) return 0;
    return acts + conv_ws_for(cfg, threads);
}

size_t vgg16_workspace_floats(const vgg16_config *cfg, size_t batch, size_t h, size_t w) {
    return vgg16_workspace_floats_for(cfg, batch, h, w, (size_t)vgg_get_num_threads());
}

size_t vgg16_workspace_floats_min(const vgg16_config *cfg, size_t h, size_t w) {
    net_plan p;
    if (plan(&p, cfg, 4096, h, w) != VGG_OK) return 0;
    return 2 * p.max_act + p.conv_ws_min;
}

/* One pass of m images: x (m,h,w,cin) -> out (m, oh, ow, oc). */
static int forward_pass(float *out, const void *x, int dtype, size_t m, size_t h, size_t w,
                        size_t cin, const vgg16_weights *wt, const vgg16_config *cfg,
                        float *act_a, float *act_b, float *col,
                        size_t col_n, vgg_abort_fn abort_cb, void *abort_ctx) {
    const int stop = cfg->stop_layer, start = cfg->start_layer;
    int st = VGG_OK;
    size_t ch = 3, flat = 0;
    if (start == 0) {
        st = vgg_input_convert(act_a, x, dtype, m, h, w, cin, cfg->scale, cfg->shift,
                               cfg->reverse_channels);
        if (st != VGG_OK) return st;
    } else {
        /* a cached cut: copied, since the ping-pong buffers are written in turn */
        ch = cin;
        memcpy(act_a, x, m * h * w * cin * sizeof(float));
    }
    float *cur = act_a, *other = act_b;
    for (int l = start; l <= stop; l++) {
        const int last = (l == stop);
        /* the last layer writes into out, unless a global pool follows it */
        float *dst = (last && cfg->pooling == VGG_POOL_NONE) ? out : other;
        const layer_def *L = &LAYERS[l];
        switch (L->kind) {
        case VGG16_KIND_CONV: {
            const int algo = vgg_conv3x3_algo_at(h, w, ch, L->units,
                                                 vgg16_conv_precision(l, cfg->precision));
            const float *prep = wt->conv_prepared_algo[L->param] == algo
                                    ? wt->conv_prepared[L->param] : NULL;
            /* a workspace sized for prepared kernels has no room to prepare one */
            if (cfg->prepared && !prep) return VGG_ERR_ARG;
            /* a block's last conv and its pool in one pass, where the algorithm can
             * (Winograd: the pool happens in the output transform); the pool's
             * output then goes where the pool layer would have written it */
            if (!last && LAYERS[l + 1].kind == VGG16_KIND_POOL &&
                vgg_conv3x3_fuses_pool(algo, h, w)) {
                float *pdst = (l + 1 == stop && cfg->pooling == VGG_POOL_NONE) ? out : other;
                st = vgg_conv3x3_run(algo, prep, 1, 1, pdst, cur, wt->conv_kernel[L->param],
                                     wt->conv_bias[L->param], m, h, w, ch, L->units, col, col_n,
                                     abort_cb, abort_ctx);
                if (st != VGG_ERR_NOMEM) {
                    ch = L->units;
                    h /= 2;
                    w /= 2;
                    dst = pdst;
                    l++; /* the pool is done */
                    break;
                }
            }
            st = vgg_conv3x3_run(algo, prep, 1, 0, dst, cur, wt->conv_kernel[L->param],
                                 wt->conv_bias[L->param], m, h, w, ch, L->units, col, col_n,
                                 abort_cb, abort_ctx);
            ch = L->units;
            break;
        }
        case VGG16_KIND_POOL:
            st = vgg_maxpool2x2_forward(dst, cur, m, h, w, ch);
            h /= 2;
            w /= 2;
            break;
        case VGG16_KIND_FLATTEN:
            /* NHWC is already (m, h*w*c) in Keras's flatten order */
            flat = h * w * ch;
            if (last) memcpy(dst, cur, m * flat * sizeof(float));
            else dst = cur;
            break;
        case VGG16_KIND_DENSE: {
            const size_t units = L->units ? L->units : wt->classes;
            const int act = (l == VGG16_PREDICTIONS) ? VGG_ACT_SOFTMAX : VGG_ACT_RELU;
            VGG_CHECK(wt->dense_kernel[L->param] && wt->dense_bias[L->param], VGG_ERR_ARG);
            if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
            st = vgg_dense_forward(dst, cur, wt->dense_kernel[L->param],
                                   wt->dense_bias[L->param], act, m, flat, units);
            flat = units;
            break;
        }
        default:
            return VGG_ERR_INTERNAL;
        }
        if (st != VGG_OK) return st;
        if (dst != cur) {
            other = cur;
            cur = dst;
        }
    }
    if (cfg->pooling != VGG_POOL_NONE) {
        st = vgg_global_pool_forward(out, cur, cfg->pooling, m, h, w, ch);
        if (st != VGG_OK) return st;
    }
    return VGG_OK;
}

/* Images completed by vgg16_forward from the input layer since load (see
 * vgg16_forward_images); a run from a cut continues images counted already. */
static uint64_t forward_images;

int vgg16_forward(float *out, const void *x, int dtype, size_t n, size_t h, size_t w,
                  size_t cin, const vgg16_weights *weights, const vgg16_config *cfg,
                  float *workspace, size_t workspace_floats, vgg_abort_fn abort_cb,
                  void *abort_ctx) {
    VGG_CHECK(out && x && weights && cfg && workspace, VGG_ERR_ARG);
    net_plan p;
    int st = plan(&p, cfg, weights->classes, h, w);
    if (st != VGG_OK) return st;
    if (cfg->start_layer == 0) {
        VGG_CHECK(cin == 1 || cin == 3, VGG_ERR_SHAPE);
        VGG_CHECK(dtype == VGG_U8 || dtype == VGG_F32 || dtype == VGG_F64, VGG_ERR_ARG);
    } else {
        VGG_CHECK(cin == LAYERS[cfg->start_layer - 1].units, VGG_ERR_SHAPE);
        VGG_CHECK(dtype == VGG_F32, VGG_ERR_ARG);
    }
    for (int l = cfg->start_layer; l <= cfg->stop_layer && l < VGG16_FLATTEN; l++) {
        if (LAYERS[l].kind == VGG16_KIND_CONV)
            VGG_CHECK(weights->conv_kernel[LAYERS[l].param] && weights->conv_bias[LAYERS[l].param],
                      VGG_ERR_ARG);
    }
    if (n == 0) return VGG_OK;

    size_t col_n = col_floats(&p);
    /* a workspace sized for fewer threads than the knob asks for (a memory
     * budget, or a knob that grew since): the convolutions get the buffers of
     * the most threads that leave room for one image, and run on that many
     * (they use as many threads as they find buffers for), rather than the call
     * failing or the workspace growing */
    if (workspace_floats < col_n + 2 * p.max_act) {
        const size_t room = workspace_floats > 2 * p.max_act ? workspace_floats - 2 * p.max_act : 0;
        size_t lo = 1, hi = (size_t)vgg_get_num_threads(); /* conv_ws_for grows with threads */
        while (lo < hi) {
            const size_t mid = lo + (hi - lo + 1) / 2;
            if (conv_ws_for(cfg, mid) <= room) lo = mid;
            else hi = mid - 1;
        }
        col_n = conv_ws_for(cfg, lo);
    }
    VGG_CHECK(workspace_floats > col_n, VGG_ERR_NOMEM);
    size_t per_pass = (workspace_floats - col_n) / (2 * p.max_act);
    VGG_CHECK(per_pass >= 1, VGG_ERR_NOMEM);
    if (per_pass > n) per_pass = n;
    float *act_a = workspace;
    float *act_b = workspace + per_pass * p.max_act;
    float *col = workspace + 2 * per_pass * p.max_act;

    const size_t esize = dtype == VGG_U8 ? 1 : (dtype == VGG_F32 ? 4 : 8);
    const size_t in_per_image = h * w * cin * esize;
    const size_t out_per_image = p.oh * p.ow * p.oc;
    /* passes of even sizes (n = 18 by 17: 9 and 9, not 17 and 1): a pass of a
     * few images reads the wide layers' weights for as few tiles */
    const size_t passes = (n + per_pass - 1) / per_pass;
    for (size_t k = 0; k < passes; k++) {
        const size_t i0 = vgg_even_start(n, passes, k), m = vgg_even_start(n, passes, k + 1) - i0;
        st = forward_pass(out + i0 * out_per_image, (const char *)x + i0 * in_per_image, dtype,
                          m, h, w, cin, weights, cfg, act_a, act_b, col, col_n, abort_cb,
                          abort_ctx);
        if (st != VGG_OK) return st;
        /* relaxed atomic: calls from several Python threads (GIL released) may
         * finish passes at once; the count only has to be exact, not ordered */
        if (cfg->start_layer == 0)
            __atomic_fetch_add(&forward_images, (uint64_t)m, __ATOMIC_RELAXED);
    }
    return VGG_OK;
}

uint64_t vgg16_forward_images(void) {
    return __atomic_load_n(&forward_images, __ATOMIC_RELAXED);
}
