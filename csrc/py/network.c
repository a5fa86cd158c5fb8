/*
 * network.c - the entry points of the frozen network: input conversion,
 * resizing, augmentation, the VGG16 forward pass and its planning queries,
 * and Grad-CAM.
 */
#include "glue.h"

#include <string.h>

/* ------------------------------------------------------------------------ */
/* input conversion                                                         */

static PyObject *py_input_convert(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "scale", "shift", "reverse_channels", NULL};
    PyObject *xo, *so, *sho;
    int rev = 0;
    float scale[3], shift[3];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|p", kwlist, &xo, &so, &sho, &rev))
        return NULL;
    if (threads_ready()) return NULL;
    if (parse_float3(so, "scale", scale) || parse_float3(sho, "shift", shift)) return NULL;
    PyArrayObject *x = check_array(xo, "x", IMAGE_TYPES, 4, 0);
    if (!x) return NULL;
    const size_t c = dim(x, 3);
    if (c != 1 && c != 3) {
        PyErr_Format(PyExc_ValueError, "x: expected 1 or 3 channels, got %zu", c);
        return NULL;
    }
    npy_intp shape[4] = {PyArray_DIM(x, 0), PyArray_DIM(x, 1), PyArray_DIM(x, 2), 3};
    PyArrayObject *out = new_f32(4, shape);
    if (!out) return NULL;
    int st;
    CALL_NOGIL(st, vgg_input_convert(PyArray_DATA(out), PyArray_DATA(x), core_dtype(x),
                                     dim(x, 0), dim(x, 1), dim(x, 2), c, scale, shift, rev));
    return out_or_raise(st, out, "input_convert");
}

/* ------------------------------------------------------------------------ */
/* resizing                                                                 */

static PyObject *py_resize(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "h", "w", NULL};
    static const int types[] = {NPY_UINT8, NPY_FLOAT32, -1};
    PyObject *xo;
    Py_ssize_t oh, ow;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Onn", kwlist, &xo, &oh, &ow)) return NULL;
    if (threads_ready()) return NULL;
    /* check_array's message lists float64, which the resize does not take */
    if (PyArray_Check(xo) && PyArray_TYPE((PyArrayObject *)xo) != NPY_UINT8 &&
        PyArray_TYPE((PyArrayObject *)xo) != NPY_FLOAT32) {
        PyErr_Format(PyExc_TypeError, "x: expected dtype uint8 or float32, got %s",
                     dtype_name((PyArrayObject *)xo));
        return NULL;
    }
    PyArrayObject *x = check_array(xo, "x", types, 4, 0);
    if (!x) return NULL;
    const size_t n = dim(x, 0), h = dim(x, 1), w = dim(x, 2), c = dim(x, 3);
    if (oh < 1 || ow < 1) {
        PyErr_Format(PyExc_ValueError, "h, w: expected output sizes >= 1, got (%zd, %zd)", oh,
                     ow);
        return NULL;
    }
    if (h < 1 || w < 1 || c < 1) {
        PyErr_Format(PyExc_ValueError, "x: expected H, W and C >= 1, got shape "
                     "(%zu, %zu, %zu, %zu)", n, h, w, c);
        return NULL;
    }
    const size_t wsn = vgg_resize_workspace_floats(h, w, c, (size_t)oh, (size_t)ow);
    if (wsn == 0 || wsn > (size_t)PY_SSIZE_T_MAX / sizeof(float)) {
        PyErr_Format(PyExc_ValueError, "x, h, w: sizes too large to resize (%zu, %zu, %zu) "
                     "to (%zd, %zd)", h, w, c, oh, ow);
        return NULL;
    }
    npy_intp shape[4] = {(npy_intp)n, (npy_intp)oh, (npy_intp)ow, (npy_intp)c};
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(4, shape, PyArray_TYPE(x), 0);
    if (!out) return NULL;
    float *ws = PyMem_RawMalloc(wsn * sizeof(float));
    if (!ws) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    const int dtype = PyArray_TYPE(x) == NPY_UINT8 ? VGG_U8 : VGG_F32;
    int st;
    CALL_NOGIL(st, vgg_resize_bilinear(PyArray_DATA(out), PyArray_DATA(x), dtype, n, h, w, c,
                                       (size_t)oh, (size_t)ow, ws, wsn));
    PyMem_RawFree(ws);
    return out_or_raise(st, out, "resize");
}

/* ------------------------------------------------------------------------ */
/* augmentation                                                             */

static PyObject *py_augment_draw(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"index", "seed", "stream", "rotation_range", "shift_range",
                             "shift_values", "shift_scale", "shear_range", "zoom_range",
                             "horizontal_flip", "vertical_flip", NULL};
    PyObject *io;
    unsigned long long seed, stream;
    vgg_augment_ranges r;
    memset(&r, 0, sizeof r);
    PyObject *vo[2];
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OKKd(dd)(OO)(dd)d(dd)pp", kwlist, &io, &seed,
                                     &stream, &r.rotation_range, &r.shift_range[0],
                                     &r.shift_range[1], &vo[0], &vo[1], &r.shift_scale[0],
                                     &r.shift_scale[1], &r.shear_range, &r.zoom_lo, &r.zoom_hi,
                                     &r.horizontal_flip, &r.vertical_flip))
        return NULL;
    PyArrayObject *index = check_array(io, "index", I64_ONLY, 1, 0);
    if (!index) return NULL;
    const Py_ssize_t n = PyArray_DIM(index, 0);
    for (int a = 0; a < 2; a++) {
        if (vo[a] == Py_None) continue;
        PyArrayObject *v = check_array(vo[a], "shift_values", F64_ONLY, 1, 0);
        if (!v) return NULL;
        r.shift_values[a] = PyArray_DATA(v);
        r.shift_count[a] = dim(v, 0);
    }
    npy_intp shape[2] = {n, VGG_AUG_NPARAMS};
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(2, shape, NPY_FLOAT64, 0);
    if (!out) return NULL;
    const int st = vgg_augment_draw(PyArray_DATA(out), &r, PyArray_DATA(index), (size_t)n,
                                   seed, stream);
    if (st != VGG_OK) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_ValueError, "augment_draw: ranges must be finite and >= 0, "
                        "zoom > 0, value lists non-empty");
        return NULL;
    }
    return (PyObject *)out;
}

static PyObject *py_augment_apply(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "params", "fill_mode", "cval", "index", "out", NULL};
    PyObject *xo, *po, *io = Py_None, *oo = Py_None;
    int mode;
    double cval;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOid|OO", kwlist, &xo, &po, &mode, &cval, &io,
                                     &oo))
        return NULL;
    if (threads_ready()) return NULL;
    PyArrayObject *x = check_array(xo, "x", IMAGE_TYPES, 4, 0);
    if (!x) return NULL;
    PyArrayObject *params = check_array(po, "params", F64_ONLY, 2, 0);
    if (!params) return NULL;
    PyArrayObject *index = NULL;
    if (io != Py_None && !(index = check_array(io, "index", I64_ONLY, 1, 0))) return NULL;
    const size_t nx = dim(x, 0), h = dim(x, 1), w = dim(x, 2), c = dim(x, 3);
    const size_t n = index ? dim(index, 0) : nx;
    if (check_dim(params, "params", 0, n) || check_dim(params, "params", 1, VGG_AUG_NPARAMS))
        return NULL;
    if (h < 2 || w < 2 || c < 1) {
        PyErr_Format(PyExc_ValueError, "x: expected images of at least 2 x 2 pixels and 1 "
                     "channel, got shape (%zu, %zu, %zu, %zu)", nx, h, w, c);
        return NULL;
    }
    if (mode < VGG_FILL_NEAREST || mode > VGG_FILL_WRAP) {
        PyErr_Format(PyExc_ValueError, "fill_mode: expected 0 (nearest), 1 (constant), "
                     "2 (reflect) or 3 (wrap), got %d", mode);
        return NULL;
    }
    npy_intp shape[4] = {(npy_intp)n, (npy_intp)h, (npy_intp)w, (npy_intp)c};
    PyArrayObject *out = make_output(oo, 4, shape);
    if (!out) return NULL;
    int st;
    CALL_NOGIL(st, vgg_augment_apply(PyArray_DATA(out), PyArray_DATA(x), core_dtype(x),
                                     index ? PyArray_DATA(index) : NULL, n, nx, h, w, c,
                                     PyArray_DATA(params), mode, (float)cval));
    if (st != VGG_OK) {
        Py_DECREF(out);
        if (st == VGG_ERR_ARG) {
            PyErr_SetString(PyExc_ValueError, "augment_apply: params must be finite and "
                            "index within [0, len(x))");
            return NULL;
        }
        return raise_status(st, "augment_apply");
    }
    return (PyObject *)out;
}

/* ------------------------------------------------------------------------ */
/* the VGG16 network                                                        */

static int parse_config(vgg16_config *cfg, int start, int stop, int pooling, PyObject *so,
                        PyObject *sho, int rev) {
    if (start < 0 || start > VGG16_FLATTEN || start > stop) {
        PyErr_Format(PyExc_ValueError, "start_layer: expected an index in [0, %d] and <= "
                     "stop_layer, got %d", VGG16_FLATTEN, start);
        return -1;
    }
    cfg->start_layer = start;
    if (stop < 0 || stop >= VGG16_NUM_LAYERS) {
        PyErr_Format(PyExc_ValueError, "stop_layer: expected an index in [0, %d), got %d",
                     VGG16_NUM_LAYERS, stop);
        return -1;
    }
    if (pooling < VGG_POOL_NONE || pooling > VGG_POOL_MAX ||
        (pooling != VGG_POOL_NONE && stop >= VGG16_FLATTEN)) {
        PyErr_Format(PyExc_ValueError, "pooling: expected 0 (none), 1 (avg) or 2 (max) on a "
                     "conv or pool layer, got %d", pooling);
        return -1;
    }
    cfg->stop_layer = stop;
    cfg->pooling = pooling;
    cfg->reverse_channels = rev;
    cfg->precision = VGG_PRECISION_FP32;
    cfg->prepared = 0;
    if (so == NULL) {
        for (int i = 0; i < 3; i++) {
            cfg->scale[i] = 1.0f;
            cfg->shift[i] = 0.0f;
        }
        return 0;
    }
    return (parse_float3(so, "scale", cfg->scale) || parse_float3(sho, "shift", cfg->shift)) ? -1 : 0;
}

static PyObject *py_vgg16_output_shape(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"stop_layer", "pooling", "classes", "h", "w", "start_layer", NULL};
    int stop, pooling, start = 0;
    Py_ssize_t classes, h, w;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iinnn|i", kwlist, &stop, &pooling, &classes, &h,
                                     &w, &start))
        return NULL;
    vgg16_config cfg;
    if (parse_config(&cfg, start, stop, pooling, NULL, NULL, 0)) return NULL;
    if (classes < 0 || h < 0 || w < 0) {
        PyErr_SetString(PyExc_ValueError, "classes, h, w: expected non-negative sizes");
        return NULL;
    }
    size_t oh, ow, oc;
    int st = vgg16_output_shape(&oh, &ow, &oc, &cfg, (size_t)classes, (size_t)h, (size_t)w);
    if (st != VGG_OK) {
        PyErr_Format(PyExc_ValueError, "input of %zd x %zd: too small for layer '%s' (every "
                     "pool needs at least 2 rows and columns; the top needs %d x %d)", h, w,
                     vgg16_layer_name(stop), VGG16_TOP_SIZE, VGG16_TOP_SIZE);
        return NULL;
    }
    return Py_BuildValue("(nnn)", (Py_ssize_t)oh, (Py_ssize_t)ow, (Py_ssize_t)oc);
}

static PyObject *py_vgg16_workspace_floats(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"stop_layer", "pooling", "batch", "h", "w", "start_layer",
                             "prepared", "threads", NULL};
    int stop, pooling, start = 0, prepared = 0;
    Py_ssize_t batch, h, w, threads = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iinnn|i$pn", kwlist, &stop, &pooling, &batch, &h,
                                     &w, &start, &prepared, &threads))
        return NULL;
    vgg16_config cfg;
    if (parse_config(&cfg, start, stop, pooling, NULL, NULL, 0)) return NULL;
    cfg.prepared = prepared;
    if (batch < 1 || h < 1 || w < 1) {
        PyErr_SetString(PyExc_ValueError, "batch, h, w: expected sizes >= 1");
        return NULL;
    }
    if (threads < 0 || threads > 4096) {
        PyErr_Format(PyExc_ValueError, "threads: expected 0 (the knob's count) to 4096, got %zd",
                     threads);
        return NULL;
    }
    size_t n = threads ? vgg16_workspace_floats_for(&cfg, (size_t)batch, (size_t)h, (size_t)w,
                                                    (size_t)threads)
                       : vgg16_workspace_floats(&cfg, (size_t)batch, (size_t)h, (size_t)w);
    if (n == 0) {
        PyErr_Format(PyExc_ValueError, "input of %zd x %zd: too small for layer '%s'", h, w,
                     vgg16_layer_name(stop));
        return NULL;
    }
    return PyLong_FromSize_t(n);
}

/* Expected shape of parameter i of the flat list [k1, b1, ..., k13, b13, fc1 k,
 * fc1 b, fc2 k, fc2 b, predictions k, predictions b], from the core's layer
 * table; dims[] gets 4 or fewer sizes, the count returned. */
static int param_shape(int i, size_t classes, size_t dims[4], const char **layer) {
    const int p = i / 2, is_bias = i % 2;
    const int l = p < VGG16_NUM_CONV ? vgg16_conv_layer(p) : VGG16_FC1 + (p - VGG16_NUM_CONV);
    const size_t in = vgg16_layer_inputs(l);
    const size_t units = l == VGG16_PREDICTIONS ? classes : vgg16_layer_units(l);
    *layer = vgg16_layer_name(l);
    if (is_bias) {
        dims[0] = units;
        return 1;
    }
    if (p < VGG16_NUM_CONV) {
        dims[0] = 3; dims[1] = 3; dims[2] = in; dims[3] = units;
        return 4;
    }
    dims[0] = in;
    dims[1] = units;
    return 2;
}

/* The first `count` arrays of the parameter list seq (a PySequence_Fast), each
 * checked against param_shape, borrowed into wt. 0, or -1 with an exception. */
static int parse_params(vgg16_weights *wt, PyObject *seq, Py_ssize_t count, size_t classes) {
    for (Py_ssize_t i = 0; i < count; i++) {
        size_t dims[4];
        const char *lname;
        const int nd = param_shape((int)i, classes, dims, &lname);
        char name[64];
        PyOS_snprintf(name, sizeof name, "params[%zd] (%s %s)", i, lname, i % 2 ? "bias" : "kernel");
        PyArrayObject *a = check_array(PySequence_Fast_GET_ITEM(seq, i), name, F32_ONLY, nd, 0);
        if (!a) return -1;
        for (int d = 0; d < nd; d++)
            if (check_dim(a, name, d, dims[d])) return -1;
        const int p = (int)i / 2;
        const float *ptr = PyArray_DATA(a);
        if (p < VGG16_NUM_CONV) {
            if (i % 2) wt->conv_bias[p] = ptr; else wt->conv_kernel[p] = ptr;
        } else {
            if (i % 2) wt->dense_bias[p - VGG16_NUM_CONV] = ptr;
            else wt->dense_kernel[p - VGG16_NUM_CONV] = ptr;
        }
    }
    return 0;
}

/* vgg16_forward's prepared=: a sequence of 13 entries, None or (algo, array) with
 * the array from conv3x3_prepare of that conv's kernel. */
static int parse_prepared(PyObject *po, vgg16_weights *wt) {
    if (po == NULL || po == Py_None) return 0;
    PyObject *seq = PySequence_Fast(po, "prepared: expected a sequence of 13 entries");
    if (!seq) return -1;
    int rc = -1;
    if (PySequence_Fast_GET_SIZE(seq) != VGG16_NUM_CONV) {
        PyErr_Format(PyExc_ValueError, "prepared: expected %d entries, got %zd", VGG16_NUM_CONV,
                     PySequence_Fast_GET_SIZE(seq));
        goto done;
    }
    for (int i = 0; i < VGG16_NUM_CONV; i++) {
        PyObject *e = PySequence_Fast_GET_ITEM(seq, i), *ao;
        const char *aname;
        if (e == Py_None) continue;
        if (!PyArg_ParseTuple(e, "sO;prepared: expected (algo, array) or None per conv", &aname, &ao))
            goto done;
        const int algo = name_index("prepared algo", aname, ALGO_NAMES, VGG_NUM_CONV_ALGOS);
        if (algo < 0) goto done;
        PyArrayObject *a = check_array(ao, "prepared array", F32_ONLY, 1, 0);
        if (!a) goto done;
        const int l = vgg16_conv_layer(i);
        const size_t need = vgg_conv3x3_prepared_floats(algo, vgg16_layer_inputs(l),
                                                        vgg16_layer_units(l));
        if (need == 0 || dim(a, 0) != need) {
            PyErr_Format(PyExc_ValueError, "prepared[%d]: expected %zu floats for '%s', got %zu",
                         i, need, aname, dim(a, 0));
            goto done;
        }
        wt->conv_prepared[i] = PyArray_DATA(a);
        wt->conv_prepared_algo[i] = algo;
    }
    rc = 0;
done:
    Py_DECREF(seq);
    return rc;
}

static PyObject *py_vgg16_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "params", "stop_layer", "pooling", "scale", "shift",
                             "reverse_channels", "workspace", "out", "start_layer", "precision",
                             "prepared", NULL};
    PyObject *xo, *po, *so, *sho, *wso, *outo = NULL, *seq = NULL, *result = NULL, *prepo = NULL;
    PyArrayObject *out = NULL;
    int stop, pooling, rev, start = 0;
    const char *pname = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOiiOOpO|Oi$zO", kwlist, &xo, &po, &stop,
                                     &pooling, &so, &sho, &rev, &wso, &outo, &start, &pname,
                                     &prepo))
        return NULL;
    if (threads_ready()) return NULL;
    vgg16_config cfg;
    if (parse_config(&cfg, start, stop, pooling, so, sho, rev)) return NULL;
    if ((cfg.precision = parse_precision(pname)) < 0) return NULL;
    PyArrayObject *x = check_array(xo, "x", start ? F32_ONLY : IMAGE_TYPES, 4, 0);
    PyArrayObject *ws = x ? check_array(wso, "workspace", F32_ONLY, 1, 1) : NULL;
    if (!ws) return NULL;
    const size_t n = dim(x, 0), h = dim(x, 1), w = dim(x, 2), cin = dim(x, 3);
    if (start == 0 && cin != 1 && cin != 3) {
        PyErr_Format(PyExc_ValueError, "x: expected 1 or 3 channels, got %zu", cin);
        return NULL;
    }
    if (start > 0 && cin != vgg16_layer_units(start - 1)) {
        PyErr_Format(PyExc_ValueError, "x: expected the output of '%s' with %zu channels, got %zu",
                     vgg16_layer_name(start - 1), vgg16_layer_units(start - 1), cin);
        return NULL;
    }

    seq = PySequence_Fast(po, "params: expected a sequence of arrays");
    if (!seq) return NULL;
    const Py_ssize_t np_ = PySequence_Fast_GET_SIZE(seq);
    const int need_top = stop >= VGG16_FC1;
    const Py_ssize_t expected = 2 * (VGG16_NUM_CONV + (need_top ? VGG16_NUM_DENSE : 0));
    if (np_ < expected || (np_ != 2 * VGG16_NUM_CONV && np_ != 2 * (VGG16_NUM_CONV + VGG16_NUM_DENSE))) {
        PyErr_Format(PyExc_ValueError, "params: expected %zd arrays for layer '%s', got %zd",
                     expected, vgg16_layer_name(stop), np_);
        goto done;
    }
    vgg16_weights wt;
    memset(&wt, 0, sizeof wt);
    size_t classes = 0;
    if (np_ > 2 * VGG16_NUM_CONV) {
        PyObject *pk = PySequence_Fast_GET_ITEM(seq, np_ - 2);
        if (PyArray_Check(pk) && PyArray_NDIM((PyArrayObject *)pk) == 2)
            classes = (size_t)PyArray_DIM((PyArrayObject *)pk, 1);
    }
    if (parse_params(&wt, seq, np_, classes)) goto done;
    wt.classes = classes;
    if (parse_prepared(prepo, &wt)) goto done;
    /* with prepared kernels, the workspace is one sized for them */
    cfg.prepared = prepo != NULL && prepo != Py_None;

    size_t oh, ow, oc;
    if (vgg16_output_shape(&oh, &ow, &oc, &cfg, classes, h, w) != VGG_OK) {
        PyErr_Format(PyExc_ValueError, "x: an image of %zu x %zu is too small for layer '%s' "
                     "(every pool needs at least 2 rows and columns; the top needs %d x %d)",
                     h, w, vgg16_layer_name(stop), VGG16_TOP_SIZE, VGG16_TOP_SIZE);
        goto done;
    }
    npy_intp shape4[4] = {(npy_intp)n, (npy_intp)oh, (npy_intp)ow, (npy_intp)oc};
    npy_intp shape2[2] = {(npy_intp)n, (npy_intp)oc};
    const int flat_out = stop >= VGG16_FLATTEN || pooling != VGG_POOL_NONE;
    out = flat_out ? make_output(outo, 2, shape2) : make_output(outo, 4, shape4);
    if (!out) goto done;

    if (n > 0) {
        const size_t need = vgg16_workspace_floats_min(&cfg, h, w);
        if (dim(ws, 0) < need) {
            PyErr_Format(PyExc_ValueError, "workspace: expected at least %zu floats for one "
                         "image of %zu x %zu, got %zu", need, h, w, dim(ws, 0));
            goto done;
        }
        RELEASE_GIL(s);
        int st = vgg16_forward(PyArray_DATA(out), PyArray_DATA(x), core_dtype(x), n, h, w, cin,
                               &wt, &cfg, PyArray_DATA(ws), dim(ws, 0), py_abort_cb, &s);
        ACQUIRE_GIL(s);
        if (st != VGG_OK) {
            raise_status(st, "vgg16_forward");
            goto done;
        }
    }
    result = (PyObject *)out;
    out = NULL;
done:
    Py_XDECREF(out);
    Py_XDECREF(seq);
    return result;
}

/* ------------------------------------------------------------------------ */
/* Grad-CAM                                                                 */

static PyObject *py_vgg16_grad_cam(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"maps", "layer", "params", "head", "class_index", "batch", NULL};
    PyObject *mo, *po, *hspec, *co, *seq = NULL, *result = NULL;
    PyArrayObject *cam = NULL, *ws = NULL;
    int layer;
    Py_ssize_t batch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiOOOn", kwlist, &mo, &layer, &po, &hspec, &co,
                                     &batch))
        return NULL;
    if (threads_ready()) return NULL;
    vgg_head hd;
    if (parse_head(hspec, &hd, 0)) return NULL;
    const int kind = vgg16_layer_kind(layer);
    if (layer < 0 || layer > VGG16_BLOCK5_POOL ||
        (kind != VGG16_KIND_CONV && kind != VGG16_KIND_POOL)) {
        PyErr_Format(PyExc_ValueError, "layer: expected a conv or pool layer of the base "
                     "(0..%d), got %d", VGG16_BLOCK5_POOL, layer);
        return NULL;
    }
    PyArrayObject *maps = check_array(mo, "maps", F32_ONLY, 4, 0);
    if (!maps || check_dim(maps, "maps", 3, vgg16_layer_units(layer))) return NULL;
    const size_t n = dim(maps, 0), h = dim(maps, 1), w = dim(maps, 2);
    PyArrayObject *ci = check_array(co, "class_index", I32_ONLY, 1, 1);
    if (!ci || check_dim(ci, "class_index", 0, n)) return NULL;
    if (batch < 1) {
        PyErr_Format(PyExc_ValueError, "batch: expected >= 1, got %zd", batch);
        return NULL;
    }
    seq = PySequence_Fast(po, "params: expected a sequence of arrays");
    if (!seq) return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != 2 * VGG16_NUM_CONV) {
        PyErr_Format(PyExc_ValueError, "params: expected the %d conv kernels and biases, got %zd "
                     "arrays", 2 * VGG16_NUM_CONV, PySequence_Fast_GET_SIZE(seq));
        goto done;
    }
    vgg16_weights wt;
    memset(&wt, 0, sizeof wt);
    if (parse_params(&wt, seq, 2 * VGG16_NUM_CONV, 0)) goto done;
    const size_t b = (size_t)batch < n ? (size_t)batch : (n ? n : 1);
    const size_t need = vgg16_grad_cam_workspace_floats(layer, &hd, b, h, w);
    if (need == 0) {
        PyErr_Format(PyExc_ValueError, "maps, head: the output of '%s' at %zu x %zu does not lead "
                     "to the head's input (%zu x %zu x %zu)", vgg16_layer_name(layer), h, w,
                     hd.h, hd.w, hd.c);
        goto done;
    }
    npy_intp cshape[3] = {(npy_intp)n, (npy_intp)h, (npy_intp)w};
    npy_intp wshape[1] = {(npy_intp)need};
    cam = new_f32(3, cshape);
    ws = cam ? new_f32(1, wshape) : NULL;
    if (!ws) goto done;
    RELEASE_GIL(s);
    int st = vgg16_grad_cam(PyArray_DATA(cam), PyArray_DATA(ci), PyArray_DATA(maps), n, h, w,
                            layer, &wt, &hd, b, PyArray_DATA(ws), need, py_abort_cb, &s);
    ACQUIRE_GIL(s);
    if (st != VGG_OK) {
        raise_status(st, "vgg16_grad_cam");
        goto done;
    }
    result = (PyObject *)cam;
    cam = NULL;
done:
    Py_XDECREF(cam);
    Py_XDECREF(ws);
    Py_XDECREF(seq);
    return result;
}

PyMethodDef vggtl_network_methods[] = {
    {"input_convert", KW py_input_convert, METH_VARARGS | METH_KEYWORDS,
     "input_convert(x (N,H,W,1|3) u8/f32/f64, scale[3], shift[3], reverse_channels=False) "
     "-> (N,H,W,3) f32"},
    {"resize", KW py_resize, METH_VARARGS | METH_KEYWORDS,
     "resize(x (N,H,W,C) u8/f32, h, w) -> (N,h,w,C) of x's dtype, bilinear as Pillow's"},
    {"augment_draw", KW py_augment_draw, METH_VARARGS | METH_KEYWORDS,
     "augment_draw(index (n,) i64, seed, stream, rotation_range, shift_range (2), shift_values "
     "(2, None or f64 arrays), shift_scale (2), shear_range, zoom_range (lo, hi), "
     "horizontal_flip, vertical_flip) -> params (n, 8) f64 (theta, tx, ty, shear, zx, zy, "
     "flip_h, flip_v) of those image indices"},
    {"augment_apply", KW py_augment_apply, METH_VARARGS | METH_KEYWORDS,
     "augment_apply(x (NX,H,W,C) u8/f32/f64, params (N,8) f64, fill_mode 0-3, cval, "
     "index=None (N,) i64, out=None) -> (N,H,W,C) f32, Keras 3's affine warp then flips"},
    {"vgg16_output_shape", KW py_vgg16_output_shape, METH_VARARGS | METH_KEYWORDS,
     "vgg16_output_shape(stop_layer, pooling, classes, h, w) -> (oh, ow, oc)"},
    {"vgg16_workspace_floats", KW py_vgg16_workspace_floats, METH_VARARGS | METH_KEYWORDS,
     "vgg16_workspace_floats(stop_layer, pooling, batch, h, w, start_layer=0, *, prepared=False, "
     "threads=0) -> int (prepared: for a call with every kernel prepared; threads: the "
     "convolutions' buffers for that many threads, 0: the knob's count)"},
    {"vgg16_forward", KW py_vgg16_forward, METH_VARARGS | METH_KEYWORDS,
     "vgg16_forward(x, params, stop_layer, pooling, scale, shift, reverse_channels, "
     "workspace, out=None, start_layer=0, *, precision='fp32') -> features"},
    {"vgg16_grad_cam", KW py_vgg16_grad_cam, METH_VARARGS | METH_KEYWORDS,
     "vgg16_grad_cam(maps, layer, params, head, class_index, batch) -> cam (n, h, w)\n\n"
     "Grad-CAM at the output maps (n, h, w, c) of base layer `layer`: params are the 13\n"
     "conv kernels and biases, head a head spec whose input is block5_pool's output;\n"
     "class_index (n,) int32: the class per image, -1 for the highest (written back)."},
    {NULL, NULL, 0, NULL},
};
