/*
 * training.c - the entry points that train and run the classification head and
 * fine-tune the top of VGG16, one epoch per call.
 */
#include "glue.h"

#include <limits.h>
#include <string.h>

/* One head layer, the l-th, reading `width` values: a dense or a dropout layer. */
static int parse_head_layer(PyObject *e, Py_ssize_t l, size_t width, int nslots,
                            vgg_head_layer *L) {
    static const char *const TYPE[] = {"type", NULL};
    static const char *const TYPES[] = {[VGG_HEAD_DENSE] = "dense", [VGG_HEAD_DROPOUT] = "dropout"};
    static const char *const DENSE[] = {"type", "units", "activation", "kernel", "bias", "slots",
                                        NULL};
    static const char *const DROPOUT[] = {"type", "rate", NULL};
    char path[64];
    PyOS_snprintf(path, sizeof path, "head['layers'][%zd]", l);
    spec_view s;
    if (spec_peek(&s, e, path, TYPE) || spec_choice(&s, "type", TYPES, 2, &L->kind)) return -1;
    if (L->kind == VGG_HEAD_DROPOUT) {
        double rate;
        if (spec_open(&s, e, path, DROPOUT) || spec_real(&s, "rate", SPEC_UNIT, &rate)) return -1;
        L->rate = (float)rate;
        return 0;
    }
    long long units;
    if (spec_open(&s, e, path, DENSE) || spec_int(&s, "units", 1, PY_SSIZE_T_MAX, &units) ||
        spec_choice(&s, "activation", ACTIVATION_NAMES, VGG_NUM_ACTIVATIONS, &L->activation))
        return -1;
    L->units = (size_t)units;
    const size_t kshape[2] = {width, L->units};
    PyArrayObject *k = spec_array(&s, "kernel", F32_ONLY, 2, kshape, 1);
    PyArrayObject *b = k ? spec_array(&s, "bias", F32_ONLY, 1, &L->units, 1) : NULL;
    if (!b) return -1;
    L->kernel = PyArray_DATA(k);
    L->bias = PyArray_DATA(b);
    char slots[96];
    PyOS_snprintf(slots, sizeof slots, "%s['slots']", path);
    return parse_slots(spec_value(&s, "slots"), slots, nslots, 2, kshape, L->units, L->slots);
}

int parse_head(PyObject *spec, vgg_head *h, int nslots) {
    static const char *const KEYS[] = {"input_mode", "input_shape", "layers", NULL};
    memset(h, 0, sizeof *h);
    spec_view s;
    long long mode;
    if (spec_open(&s, spec, "head", KEYS) ||
        spec_int(&s, "input_mode", LLONG_MIN, LLONG_MAX, &mode))
        return -1;
    if (mode < VGG_HEAD_FLATTEN || mode > VGG_HEAD_GMP) {
        PyErr_Format(PyExc_ValueError, "head['input_mode']: expected HEAD_FLATTEN (%d), HEAD_GAP "
                     "(%d) or HEAD_GMP (%d), got %lld", VGG_HEAD_FLATTEN, VGG_HEAD_GAP,
                     VGG_HEAD_GMP, mode);
        return -1;
    }
    h->input = (int)mode;
    PyObject *shape, *layers;
    Py_ssize_t three, nl;
    if (spec_list(&s, "input_shape", 3, 3, &shape, &three)) return -1;
    size_t hwc[3], values = 1;
    for (int i = 0; i < 3; i++) {
        char name[48];
        long long v;
        PyOS_snprintf(name, sizeof name, "head['input_shape'][%d]", i);
        if (value_int(PySequence_Fast_GET_ITEM(shape, i), name, 1, PY_SSIZE_T_MAX, &v)) return -1;
        hwc[i] = (size_t)v;
        if (hwc[i] > PY_SSIZE_T_MAX / values) { /* no array holds that many values */
            PyErr_SetString(PyExc_ValueError, "head['input_shape']: expected h * w * c to fit "
                            "in memory, got more values than an array can hold");
            return -1;
        }
        values *= hwc[i];
    }
    h->h = hwc[0];
    h->w = hwc[1];
    h->c = hwc[2];
    if (spec_list(&s, "layers", 1, VGG_HEAD_MAX_LAYERS, &layers, &nl)) return -1;
    h->n_layers = (size_t)nl;
    size_t width = h->input == VGG_HEAD_FLATTEN ? values : h->c;
    for (Py_ssize_t l = 0; l < nl; l++) {
        vgg_head_layer *L = &h->layers[l];
        if (parse_head_layer(PySequence_Fast_GET_ITEM(layers, l), l, width, nslots, L)) return -1;
        if (L->kind == VGG_HEAD_DENSE) width = L->units;
    }
    if (h->layers[nl - 1].kind != VGG_HEAD_DENSE) {
        PyErr_Format(PyExc_ValueError, "head['layers'][%zd]: expected a dense layer last (it "
                     "gives the output), got a dropout layer", nl - 1);
        return -1;
    }
    return 0;
}

/* Features (n, ...) float32 / float16 whose per-sample size matches the head. */
static PyArrayObject *check_features(PyObject *xo, const vgg_head *h) {
    PyArrayObject *x = check_array(xo, "x", FEATURE_TYPES, -1, 0);
    if (!x) return NULL;
    size_t per = 1;
    for (int i = 1; i < PyArray_NDIM(x); i++) per *= dim(x, i);
    if (PyArray_NDIM(x) < 2 || per != h->h * h->w * h->c) {
        PyErr_Format(PyExc_ValueError, "x: expected (n, ...) features of %zu values per sample "
                     "(%zu x %zu x %zu), got %d dimensions of %zu", h->h * h->w * h->c, h->h,
                     h->w, h->c, PyArray_NDIM(x), per);
        return NULL;
    }
    return x;
}

static PyObject *py_head_workspace_floats(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"head", "batch", NULL};
    PyObject *spec;
    Py_ssize_t batch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "On", kwlist, &spec, &batch)) return NULL;
    vgg_head h;
    if (parse_head(spec, &h, 0)) return NULL;
    const size_t n = batch >= 1 ? vgg_head_workspace_floats(&h, (size_t)batch) : 0;
    if (n == 0) {
        PyErr_Format(PyExc_ValueError, "batch: expected >= 1 for a valid head, got %zd", batch);
        return NULL;
    }
    return PyLong_FromSize_t(n);
}

static PyArrayObject *check_head_workspace(PyObject *wso, const vgg_head *h, size_t batch) {
    PyArrayObject *ws = check_array(wso, "workspace", F32_ONLY, 1, 1);
    if (!ws) return NULL;
    const size_t need = vgg_head_workspace_floats(h, batch);
    if (need == 0 || dim(ws, 0) < need) {
        PyErr_Format(PyExc_ValueError, "workspace: expected at least %zu floats, got %zu", need,
                     dim(ws, 0));
        return NULL;
    }
    return ws;
}

/* The opening of an inference call on a head: the threads, the spec, batch >= 1,
 * the features and the workspace. 0, or -1 with an exception set. */
static int open_head_call(vgg_head *h, PyArrayObject **x, PyArrayObject **ws, PyObject *spec,
                          PyObject *xo, PyObject *wso, Py_ssize_t batch) {
    if (threads_ready() || parse_head(spec, h, 0)) return -1;
    if (batch < 1) {
        PyErr_Format(PyExc_ValueError, "batch: expected >= 1, got %zd", batch);
        return -1;
    }
    *x = check_features(xo, h);
    *ws = *x ? check_head_workspace(wso, h, (size_t)batch) : NULL;
    return *ws ? 0 : -1;
}

static PyObject *py_head_predict(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "head", "batch", "workspace", NULL};
    PyObject *xo, *spec, *wso;
    Py_ssize_t batch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOnO", kwlist, &xo, &spec, &batch, &wso)) return NULL;
    vgg_head h;
    PyArrayObject *x, *ws;
    if (open_head_call(&h, &x, &ws, spec, xo, wso, batch)) return NULL;
    const size_t n = dim(x, 0), units = vgg_head_output_size(&h);
    npy_intp shape[2] = {(npy_intp)n, (npy_intp)units};
    PyArrayObject *out = new_f32(2, shape);
    if (!out) return NULL;
    RELEASE_GIL(s);
    int st = vgg_head_predict(PyArray_DATA(out), PyArray_DATA(x), feature_dtype(x), n, &h,
                              (size_t)batch, PyArray_DATA(ws), dim(ws, 0), py_abort_cb, &s);
    ACQUIRE_GIL(s);
    return out_or_raise(st, out, "head_predict");
}

static PyObject *py_head_evaluate(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "head", "loss", "y", "sample_weight", "batch", "workspace", NULL};
    PyObject *xo, *spec, *yo, *swo, *wso;
    int loss;
    Py_ssize_t batch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiOOnO", kwlist, &xo, &spec, &loss, &yo, &swo,
                                     &batch, &wso))
        return NULL;
    vgg_head h;
    PyArrayObject *x, *ws;
    if (open_head_call(&h, &x, &ws, spec, xo, wso, batch)) return NULL;
    vgg_targets t;
    if (parse_targets(&t, loss, yo, swo, dim(x, 0), vgg_head_output_size(&h))) return NULL;
    vgg_fit_stats stats;
    RELEASE_GIL(s);
    int st = vgg_head_evaluate(&stats, PyArray_DATA(x), feature_dtype(x), dim(x, 0), &h, &t,
                               (size_t)batch, PyArray_DATA(ws), dim(ws, 0), py_abort_cb, &s);
    ACQUIRE_GIL(s);
    if (st != VGG_OK) return raise_status(st, "head_evaluate");
    return Py_BuildValue("(ddn)", stats.loss_sum, stats.correct, (Py_ssize_t)stats.seen);
}

/* What an epoch call returns: (loss_sum, correct, seen, batches, iterations,
 * batches with a non-zero gradient), or the exception its status calls for. */
static PyObject *epoch_result(int st, const vgg_fit_stats *stats, int64_t it, const char *what) {
    if (st == VGG_ERR_NONFINITE) {
        PyErr_Format(PyExc_FloatingPointError, "the loss or a gradient became NaN or infinite at update %lld "
                     "(batch %zu of the epoch): lower the learning rate or check the inputs",
                     (long long)it, stats->batches + 1);
        return NULL;
    }
    if (st != VGG_OK) return raise_status(st, what);
    return Py_BuildValue("(ddnnLn)", stats->loss_sum, stats->correct, (Py_ssize_t)stats->seen,
                         (Py_ssize_t)stats->batches, (long long)it,
                         (Py_ssize_t)stats->grad_batches);
}

/* What both epoch calls take beside their network, for n samples and a head of
 * `units` outputs: order (n,) int64, the targets, and the optional outputs
 * (None, or a writeable float32 (n, units) array). 0, or -1 with an exception. */
static int parse_epoch_args(PyObject *ordo, int loss, PyObject *yo, PyObject *swo, PyObject *outo,
                            size_t n, size_t units, int64_t **order, vgg_targets *t,
                            float **outputs) {
    PyArrayObject *o = check_array(ordo, "order", I64_ONLY, 1, 1);
    if (!o || check_dim(o, "order", 0, n)) return -1;
    *order = PyArray_DATA(o);
    if (parse_targets(t, loss, yo, swo, n, units)) return -1;
    *outputs = NULL;
    if (outo == Py_None) return 0;
    PyArrayObject *a = check_array(outo, "outputs", F32_ONLY, 2, 1);
    if (!a || check_dim(a, "outputs", 0, n) || check_dim(a, "outputs", 1, units)) return -1;
    *outputs = PyArray_DATA(a);
    return 0;
}

static PyObject *py_head_fit_epoch(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "head", "optimizer", "iterations", "loss", "y", "sample_weight",
                             "batch", "shuffle", "seed", "epoch", "order", "workspace", "outputs",
                             NULL};
    PyObject *xo, *spec, *oo, *yo, *swo, *ordo, *wso, *outo = Py_None;
    long long iterations;
    int loss, shuffle;
    Py_ssize_t batch;
    unsigned long long seed, epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOLiOOnpKKOO|O", kwlist, &xo, &spec, &oo,
                                     &iterations, &loss, &yo, &swo, &batch, &shuffle, &seed,
                                     &epoch, &ordo, &wso, &outo))
        return NULL;
    if (threads_ready()) return NULL;
    vgg_optimizer opt;
    if (parse_optimizer(oo, &opt)) return NULL;
    vgg_head h;
    if (parse_head(spec, &h, vgg_optimizer_slots(&opt))) return NULL;
    if (batch < 1 || iterations < 0) {
        PyErr_Format(PyExc_ValueError, "batch, iterations: expected >= 1 and >= 0, got %zd, %lld",
                     batch, iterations);
        return NULL;
    }
    PyArrayObject *x = check_features(xo, &h);
    PyArrayObject *ws = x ? check_head_workspace(wso, &h, (size_t)batch) : NULL;
    if (!ws) return NULL;
    int64_t *order;
    vgg_targets t;
    float *outputs;
    if (parse_epoch_args(ordo, loss, yo, swo, outo, dim(x, 0), vgg_head_output_size(&h), &order,
                         &t, &outputs))
        return NULL;
    vgg_fit_stats stats;
    int64_t it = (int64_t)iterations;
    RELEASE_GIL(s);
    int st = vgg_head_fit_epoch(&stats, &h, &opt, &it, PyArray_DATA(x), feature_dtype(x),
                                dim(x, 0), &t, (size_t)batch, shuffle, seed, epoch, order,
                                outputs, PyArray_DATA(ws), dim(ws, 0),
                                py_abort_cb, &s);
    ACQUIRE_GIL(s);
    return epoch_result(st, &stats, it, "head_fit_epoch");
}

/* ------------------------------------------------------------------------ */
/* fine-tuning                                                              */

/* The tail spec: {"start_layer": the index of a conv layer after the first,
 * "convs": {name: {"kernel", "bias", "slots"}}} with one entry for each conv
 * from start_layer on, named as in VGG16_LAYERS: kernel (3, 3, cin, cout) and
 * bias (cout,) writeable float32 arrays, slots as parse_slots reads them. */
static int parse_tail(PyObject *spec, vgg16_tail *t, int nslots) {
    static const char *const KEYS[] = {"start_layer", "convs", NULL};
    static const char *const CONV[] = {"kernel", "bias", "slots", NULL};
    memset(t, 0, sizeof *t);
    spec_view s;
    long long start;
    if (spec_open(&s, spec, "tail", KEYS) ||
        spec_int(&s, "start_layer", LLONG_MIN, LLONG_MAX, &start))
        return -1;
    if (start < 1 || start > VGG16_BLOCK5_POOL ||
        vgg16_layer_kind((int)start) != VGG16_KIND_CONV) {
        PyErr_Format(PyExc_ValueError, "tail['start_layer']: expected the index of a conv layer "
                     "after the first (1..%d in VGG16_LAYERS), got %lld", VGG16_BLOCK5_POOL - 1,
                     start);
        return -1;
    }
    t->start_layer = (int)start;
    /* the keys of "convs": the names of the convs from start_layer on */
    const char *names[VGG16_NUM_CONV + 1];
    int convs[VGG16_NUM_CONV], n = 0;
    for (int k = 0; k < VGG16_NUM_CONV; k++)
        if (vgg16_conv_layer(k) >= t->start_layer) {
            convs[n] = k;
            names[n++] = vgg16_layer_name(vgg16_conv_layer(k));
        }
    names[n] = NULL;
    spec_view cs;
    if (spec_open(&cs, spec_value(&s, "convs"), "tail['convs']", names)) return -1;
    for (int i = 0; i < n; i++) {
        const int k = convs[i];
        const size_t cin = vgg16_layer_inputs(vgg16_conv_layer(k));
        const size_t cout = vgg16_layer_units(vgg16_conv_layer(k));
        const size_t kshape[4] = {3, 3, cin, cout};
        char path[64], slots[96];
        PyOS_snprintf(path, sizeof path, "tail['convs']['%s']", names[i]);
        PyOS_snprintf(slots, sizeof slots, "%s['slots']", path);
        spec_view e;
        if (spec_open(&e, spec_value(&cs, names[i]), path, CONV)) return -1;
        PyArrayObject *kk = spec_array(&e, "kernel", F32_ONLY, 4, kshape, 1);
        PyArrayObject *bb = kk ? spec_array(&e, "bias", F32_ONLY, 1, &cout, 1) : NULL;
        if (!bb) return -1;
        t->kernel[k] = PyArray_DATA(kk);
        t->bias[k] = PyArray_DATA(bb);
        if (parse_slots(spec_value(&e, "slots"), slots, nslots, 4, kshape, cout, t->slots[k]))
            return -1;
    }
    return 0;
}

static PyObject *py_finetune_workspace_floats(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"tail", "head", "batch", "h", "w", NULL};
    PyObject *tspec, *hspec;
    Py_ssize_t batch, h, w;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOnnn", kwlist, &tspec, &hspec, &batch, &h, &w))
        return NULL;
    vgg16_tail t;
    vgg_head hd;
    if (parse_tail(tspec, &t, 0) || parse_head(hspec, &hd, 0)) return NULL;
    const size_t n = (batch >= 1 && h >= 1 && w >= 1)
                         ? vgg16_finetune_workspace_floats(&t, &hd, (size_t)batch, (size_t)h, (size_t)w)
                         : 0;
    if (n == 0) {
        PyErr_Format(PyExc_ValueError, "tail, head: a cut of %zd x %zd from layer '%s' does not "
                     "give the head's input shape", h, w, vgg16_layer_name(t.start_layer - 1));
        return NULL;
    }
    return PyLong_FromSize_t(n);
}

static PyObject *py_finetune_fit_epoch(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "tail", "head", "optimizer", "iterations", "loss", "y",
                             "sample_weight", "batch", "shuffle", "seed", "epoch", "order",
                             "workspace", "outputs", NULL};
    PyObject *xo, *tspec, *hspec, *oo, *yo, *swo, *ordo, *wso, *outo = Py_None;
    long long iterations;
    int loss, shuffle;
    Py_ssize_t batch;
    unsigned long long seed, epoch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOLiOOnpKKOO|O", kwlist, &xo, &tspec, &hspec,
                                     &oo, &iterations, &loss, &yo, &swo, &batch, &shuffle, &seed,
                                     &epoch, &ordo, &wso, &outo))
        return NULL;
    if (threads_ready()) return NULL;
    vgg_optimizer opt;
    if (parse_optimizer(oo, &opt)) return NULL;
    const int nslots = vgg_optimizer_slots(&opt);
    vgg16_tail t;
    vgg_head hd;
    if (parse_tail(tspec, &t, nslots) || parse_head(hspec, &hd, nslots)) return NULL;
    if (batch < 1 || iterations < 0) {
        PyErr_Format(PyExc_ValueError, "batch, iterations: expected >= 1 and >= 0, got %zd, %lld",
                     batch, iterations);
        return NULL;
    }
    PyArrayObject *x = check_array(xo, "x", FEATURE_TYPES, 4, 0);
    if (!x) return NULL;
    const size_t cut_c = vgg16_layer_units(t.start_layer - 1);
    if (dim(x, 3) != cut_c) {
        PyErr_Format(PyExc_ValueError, "x: expected the output of '%s' (%zu channels), got %zu",
                     vgg16_layer_name(t.start_layer - 1), cut_c, dim(x, 3));
        return NULL;
    }
    const size_t need = vgg16_finetune_workspace_floats(&t, &hd, (size_t)batch, dim(x, 1), dim(x, 2));
    PyArrayObject *ws = check_array(wso, "workspace", F32_ONLY, 1, 1);
    if (!ws) return NULL;
    if (need == 0 || dim(ws, 0) < need) {
        PyErr_Format(PyExc_ValueError, "workspace: expected at least %zu floats, got %zu", need,
                     dim(ws, 0));
        return NULL;
    }
    int64_t *order;
    vgg_targets tg;
    float *outputs;
    if (parse_epoch_args(ordo, loss, yo, swo, outo, dim(x, 0), vgg_head_output_size(&hd), &order,
                         &tg, &outputs))
        return NULL;
    vgg_fit_stats stats;
    int64_t it = (int64_t)iterations;
    RELEASE_GIL(s);
    int st = vgg16_finetune_fit_epoch(&stats, &t, &hd, &opt, &it, PyArray_DATA(x), feature_dtype(x),
                                      dim(x, 0), dim(x, 1), dim(x, 2), &tg, (size_t)batch, shuffle,
                                      seed, epoch, order, outputs, PyArray_DATA(ws),
                                      dim(ws, 0), py_abort_cb, &s);
    ACQUIRE_GIL(s);
    return epoch_result(st, &stats, it, "finetune_fit_epoch");
}

PyMethodDef vggtl_training_methods[] = {
    {"head_workspace_floats", KW py_head_workspace_floats, METH_VARARGS | METH_KEYWORDS,
     "head_workspace_floats(head, batch) -> int"},
    {"head_predict", KW py_head_predict, METH_VARARGS | METH_KEYWORDS,
     "head_predict(x, head, batch, workspace) -> (N, units)"},
    {"head_evaluate", KW py_head_evaluate, METH_VARARGS | METH_KEYWORDS,
     "head_evaluate(x, head, loss, y, sample_weight, batch, workspace) -> (loss_sum, correct, seen)"},
    {"head_fit_epoch", KW py_head_fit_epoch, METH_VARARGS | METH_KEYWORDS,
     "head_fit_epoch(x, head, optimizer, iterations, loss, y, sample_weight, batch, shuffle, seed, "
     "epoch, order, workspace, outputs=None) -> (loss_sum, correct, seen, batches, iterations, "
     "grad_batches)"},
    {"finetune_workspace_floats", KW py_finetune_workspace_floats, METH_VARARGS | METH_KEYWORDS,
     "finetune_workspace_floats(tail, head, batch, h, w) -> int"},
    {"finetune_fit_epoch", KW py_finetune_fit_epoch, METH_VARARGS | METH_KEYWORDS,
     "finetune_fit_epoch(x, tail, head, optimizer, iterations, loss, y, sample_weight, batch, "
     "shuffle, seed, epoch, order, workspace, outputs=None) -> (loss_sum, correct, seen, batches, "
     "iterations, grad_batches)"},
    {NULL, NULL, 0, NULL},
};
