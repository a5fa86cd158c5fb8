/*
 * kernels.c - vggtl._kernels: the core's single layers, backward passes, losses
 * and optimizer steps, called one at a time by the tests (the package itself
 * runs them only inside the network, head and fine-tuning calls). A module of
 * its own, so that vggtl._core holds only what the package uses; it calls the
 * core loaded by vggtl._core through the table of core_api.h.
 */
#define VGGTL_IMPORT_ARRAY
#include "glue.h"

#include <string.h>

const vgg_core_api *vgg_core;

static PyObject *py_conv3x3_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "kernel", "bias", "relu", "out", "precision", "pool", NULL};
    PyObject *xo, *ko, *bo, *outo = NULL;
    int relu = 1, pool = 0;
    const char *pname = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|pO$zp", kwlist, &xo, &ko, &bo, &relu, &outo,
                                     &pname, &pool))
        return NULL;
    if (threads_ready()) return NULL;
    const int precision = parse_precision(pname);
    if (precision < 0) return NULL;
    PyArrayObject *x = check_array(xo, "x", F32_ONLY, 4, 0);
    PyArrayObject *k = x ? check_array(ko, "kernel", F32_ONLY, 4, 0) : NULL;
    PyArrayObject *b = k ? check_array(bo, "bias", F32_ONLY, 1, 0) : NULL;
    if (!b) return NULL;
    const size_t n = dim(x, 0), h = dim(x, 1), w = dim(x, 2), cin = dim(x, 3), cout = dim(k, 3);
    if (check_dim(k, "kernel", 0, 3) || check_dim(k, "kernel", 1, 3) ||
        check_dim(k, "kernel", 2, cin) || check_dim(b, "bias", 0, cout))
        return NULL;
    if (h == 0 || w == 0 || cin == 0 || cout == 0) {
        PyErr_SetString(PyExc_ValueError, "x, kernel: expected non-empty H, W, Cin and Cout");
        return NULL;
    }
    const int algo = vgg_conv3x3_algo_at(h, w, cin, cout, precision);
    if (pool && (!relu || !vgg_conv3x3_fuses_pool(algo, h, w))) {
        PyErr_Format(PyExc_ValueError, "pool: the fused 2x2 max-pool needs relu=True and a "
                     "Winograd layer whose tiles hold the pool's windows (H and W >= 2, and at "
                     "most 3 for F(3x3)); this one runs %s on %zu x %zu (relu=%s)",
                     vgg_conv_algo_name(algo), h, w, relu ? "True" : "False");
        return NULL;
    }
    npy_intp shape[4] = {(npy_intp)n, (npy_intp)(pool ? h / 2 : h), (npy_intp)(pool ? w / 2 : w),
                         (npy_intp)cout};
    PyArrayObject *out = make_output(outo, 4, shape);
    if (!out) return NULL;
    const size_t wsn = vgg_conv3x3_workspace_floats(cin, cout);
    float *ws = PyMem_RawMalloc(wsn * sizeof(float));
    if (!ws) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    RELEASE_GIL(s);
    int st = VGG_OK;
    if (!pool)
        st = vgg_conv3x3_forward_by(algo, PyArray_DATA(out), PyArray_DATA(x), PyArray_DATA(k),
                                    PyArray_DATA(b), relu, n, h, w, cin, cout, ws, wsn,
                                    py_abort_cb, &s);
    /* checked above, and the workspace is the full size: a Winograd layer fuses */
    else if (!vgg_conv3x3_pool_forward_by(&st, algo, PyArray_DATA(out), PyArray_DATA(x),
                                          PyArray_DATA(k), PyArray_DATA(b), n, h, w, cin, cout,
                                          ws, wsn, py_abort_cb, &s))
        st = VGG_ERR_INTERNAL;
    ACQUIRE_GIL(s);
    PyMem_RawFree(ws);
    return out_or_raise(st, out, "conv3x3_forward");
}

static PyObject *py_maxpool2x2_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", NULL};
    PyObject *xo;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O", kwlist, &xo)) return NULL;
    PyArrayObject *x = check_array(xo, "x", F32_ONLY, 4, 0);
    if (!x) return NULL;
    const size_t n = dim(x, 0), h = dim(x, 1), w = dim(x, 2), c = dim(x, 3);
    if (h < 2 || w < 2 || c < 1) {
        PyErr_Format(PyExc_ValueError, "x: expected H >= 2, W >= 2 and C >= 1, got shape "
                     "(%zu, %zu, %zu, %zu)", n, h, w, c);
        return NULL;
    }
    npy_intp shape[4] = {(npy_intp)n, (npy_intp)(h / 2), (npy_intp)(w / 2), (npy_intp)c};
    PyArrayObject *out = new_f32(4, shape);
    if (!out) return NULL;
    int st;
    CALL_NOGIL(st, vgg_maxpool2x2_forward(PyArray_DATA(out), PyArray_DATA(x), n, h, w, c));
    return out_or_raise(st, out, "maxpool2x2_forward");
}

static int parse_pooling(const char *s, int *mode) {
    if (strcmp(s, "avg") == 0) *mode = VGG_POOL_AVG;
    else if (strcmp(s, "max") == 0) *mode = VGG_POOL_MAX;
    else {
        PyErr_Format(PyExc_ValueError, "mode: expected 'avg' or 'max', got '%s'", s);
        return -1;
    }
    return 0;
}

static PyObject *py_global_pool_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "mode", NULL};
    PyObject *xo;
    const char *modes;
    int mode;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os", kwlist, &xo, &modes)) return NULL;
    if (parse_pooling(modes, &mode)) return NULL;
    PyArrayObject *x = check_array(xo, "x", F32_ONLY, 4, 0);
    if (!x) return NULL;
    const size_t n = dim(x, 0), h = dim(x, 1), w = dim(x, 2), c = dim(x, 3);
    if (h < 1 || w < 1 || c < 1) {
        PyErr_SetString(PyExc_ValueError, "x: expected H, W and C >= 1");
        return NULL;
    }
    npy_intp shape[2] = {(npy_intp)n, (npy_intp)c};
    PyArrayObject *out = new_f32(2, shape);
    if (!out) return NULL;
    int st;
    CALL_NOGIL(st, vgg_global_pool_forward(PyArray_DATA(out), PyArray_DATA(x), mode, n, h, w, c));
    return out_or_raise(st, out, "global_pool_forward");
}

static PyObject *py_activation_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "activation", NULL};
    PyObject *xo;
    const char *acts;
    int act;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os", kwlist, &xo, &acts)) return NULL;
    if (parse_activation(acts, &act)) return NULL;
    PyArrayObject *x = check_array(xo, "x", F32_ONLY, 2, 0);
    if (!x) return NULL;
    if (act == VGG_ACT_SOFTMAX && dim(x, 1) == 0) {
        PyErr_SetString(PyExc_ValueError, "x: softmax needs at least one column");
        return NULL;
    }
    PyArrayObject *out = (PyArrayObject *)PyArray_NewCopy(x, NPY_CORDER);
    if (!out) return NULL;
    int st;
    CALL_NOGIL(st, vgg_activation_forward(PyArray_DATA(out), act, dim(x, 0), dim(x, 1)));
    return out_or_raise(st, out, "activation_forward");
}

static PyObject *py_dense_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "kernel", "bias", "activation", NULL};
    PyObject *xo, *ko, *bo;
    const char *acts = "linear";
    int act;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|s", kwlist, &xo, &ko, &bo, &acts))
        return NULL;
    if (parse_activation(acts, &act)) return NULL;
    PyArrayObject *x = check_array(xo, "x", F32_ONLY, 2, 0);
    PyArrayObject *k = x ? check_array(ko, "kernel", F32_ONLY, 2, 0) : NULL;
    PyArrayObject *b = k ? check_array(bo, "bias", F32_ONLY, 1, 0) : NULL;
    if (!b) return NULL;
    const size_t n = dim(x, 0), in = dim(x, 1), outdim = dim(k, 1);
    if (check_dim(k, "kernel", 0, in) || check_dim(b, "bias", 0, outdim)) return NULL;
    if (in == 0 || outdim == 0) {
        PyErr_SetString(PyExc_ValueError, "kernel: expected non-empty input and output sizes");
        return NULL;
    }
    npy_intp shape[2] = {(npy_intp)n, (npy_intp)outdim};
    PyArrayObject *out = new_f32(2, shape);
    if (!out) return NULL;
    int st;
    CALL_NOGIL(st, vgg_dense_forward(PyArray_DATA(out), PyArray_DATA(x), PyArray_DATA(k),
                                     PyArray_DATA(b), act, n, in, outdim));
    return out_or_raise(st, out, "dense_forward");
}

/* A backward call's (dx or None, dw, db), or the exception its status calls for
 * (the arrays stay the caller's to release). */
static PyObject *grads_or_raise(int st, const char *what, PyArrayObject *dx, PyArrayObject *dw,
                                PyArrayObject *db) {
    if (st != VGG_OK) return raise_status(st, what);
    return Py_BuildValue("(OOO)", dx ? (PyObject *)dx : Py_None, dw, db);
}

static PyObject *py_dense_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"dz", "x", "kernel", "need_dx", NULL};
    PyObject *dzo, *xo, *ko;
    int need_dx = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|p", kwlist, &dzo, &xo, &ko, &need_dx))
        return NULL;
    PyArrayObject *dz = check_array(dzo, "dz", F32_ONLY, 2, 0);
    PyArrayObject *x = dz ? check_array(xo, "x", F32_ONLY, 2, 0) : NULL;
    PyArrayObject *k = x ? check_array(ko, "kernel", F32_ONLY, 2, 0) : NULL;
    if (!k) return NULL;
    const size_t n = dim(x, 0), in = dim(x, 1), outdim = dim(k, 1);
    if (check_dim(k, "kernel", 0, in) || check_dim(dz, "dz", 0, n) || check_dim(dz, "dz", 1, outdim))
        return NULL;
    if (n == 0 || in == 0 || outdim == 0) {
        PyErr_SetString(PyExc_ValueError, "dz, x, kernel: expected non-empty arrays");
        return NULL;
    }
    npy_intp sdx[2] = {(npy_intp)n, (npy_intp)in}, sdw[2] = {(npy_intp)in, (npy_intp)outdim},
             sdb[1] = {(npy_intp)outdim};
    PyArrayObject *dx = need_dx ? new_f32(2, sdx) : NULL;
    PyArrayObject *dw = new_f32(2, sdw);
    PyArrayObject *db = new_f32(1, sdb);
    npy_intp spack[1] = {(npy_intp)((in + 15) / 16 * 16 * outdim)};
    PyArrayObject *pack = need_dx ? new_f32(1, spack) : NULL; /* W^T, packed for dx */
    PyObject *result = NULL;
    if ((need_dx && (!dx || !pack)) || !dw || !db) goto done;
    int st;
    CALL_NOGIL(st, vgg_dense_backward(dx ? PyArray_DATA(dx) : NULL, PyArray_DATA(dw),
                                      PyArray_DATA(db), PyArray_DATA(dz), PyArray_DATA(x),
                                      PyArray_DATA(k), n, in, outdim,
                                      pack ? PyArray_DATA(pack) : NULL));
    result = grads_or_raise(st, "dense_backward", dx, dw, db);
done:
    Py_XDECREF(pack);
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return result;
}

static PyObject *py_activation_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"dy", "y", "activation", NULL};
    PyObject *dyo, *yo;
    const char *acts;
    int act;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOs", kwlist, &dyo, &yo, &acts)) return NULL;
    if (parse_activation(acts, &act)) return NULL;
    PyArrayObject *dy = check_array(dyo, "dy", F32_ONLY, 2, 0);
    PyArrayObject *y = dy ? check_array(yo, "y", F32_ONLY, 2, 0) : NULL;
    if (!y) return NULL;
    if (check_dim(y, "y", 0, dim(dy, 0)) || check_dim(y, "y", 1, dim(dy, 1))) return NULL;
    PyArrayObject *dz = new_f32(2, PyArray_DIMS(dy));
    if (!dz) return NULL;
    int st;
    CALL_NOGIL(st, vgg_activation_backward(PyArray_DATA(dz), PyArray_DATA(dy), PyArray_DATA(y), act,
                                           dim(dy, 0), dim(dy, 1)));
    return out_or_raise(st, dz, "activation_backward");
}

static PyObject *py_dropout(PyObject *args, PyObject *kw, int backward) {
    static char *kwlist[] = {"x", "rate", "seed", "stream", NULL};
    PyObject *xo;
    double rate;
    unsigned long long seed, stream;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OdKK", kwlist, &xo, &rate, &seed, &stream))
        return NULL;
    if (parse_rate(rate)) return NULL;
    PyArrayObject *x = check_array(xo, "x", F32_ONLY, -1, 0);
    if (!x) return NULL;
    PyArrayObject *y = new_f32(PyArray_NDIM(x), PyArray_DIMS(x));
    if (!y) return NULL;
    const size_t count = (size_t)PyArray_SIZE(x);
    int st;
    float *yp = PyArray_DATA(y);
    const float *xp = PyArray_DATA(x);
    CALL_NOGIL(st, backward ? vgg_dropout_backward(yp, xp, (float)rate, seed, stream, count)
                            : vgg_dropout_forward(yp, xp, (float)rate, seed, stream, count));
    return out_or_raise(st, y, "dropout");
}

static PyObject *py_dropout_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return py_dropout(args, kw, 0);
}

static PyObject *py_dropout_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return py_dropout(args, kw, 1);
}

static PyObject *py_loss_forward_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"yhat", "y", "loss", "sample_weight", "activation", NULL};
    PyObject *yho, *to, *swo = NULL;
    int loss, act;
    const char *acts = "linear";
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOi|Os", kwlist, &yho, &to, &loss, &swo, &acts))
        return NULL;
    if (parse_activation(acts, &act)) return NULL;
    PyArrayObject *yh = check_array(yho, "yhat", F32_ONLY, 2, 0);
    if (!yh) return NULL;
    const size_t n = dim(yh, 0), c = dim(yh, 1);
    if (n == 0 || c == 0) {
        PyErr_SetString(PyExc_ValueError, "yhat: expected a non-empty (n, c) array");
        return NULL;
    }
    vgg_targets t;
    if (parse_targets(&t, loss, to, swo, n, c)) return NULL;
    PyArrayObject *d = new_f32(2, PyArray_DIMS(yh));
    npy_intp sn[1] = {(npy_intp)n};
    PyArrayObject *per = new_f32(1, sn);
    if (!d || !per) {
        Py_XDECREF(d);
        Py_XDECREF(per);
        return NULL;
    }
    double value;
    int st;
    CALL_NOGIL(st, vgg_loss_forward_backward(&value, PyArray_DATA(d), PyArray_DATA(per),
                                             PyArray_DATA(yh), t.targets, t.labels,
                                             t.sample_weight, loss, act, n, c));
    if (st != VGG_OK) {
        Py_DECREF(d);
        Py_DECREF(per);
        return raise_status(st, "loss_forward_backward");
    }
    PyObject *r = Py_BuildValue("(dOO)", value, d, per);
    Py_DECREF(d);
    Py_DECREF(per);
    return r;
}

static PyObject *py_optimizer_step(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"param", "grad", "slot0", "slot1", "optimizer", "iterations", NULL};
    PyObject *po, *go, *s0o, *s1o, *oo;
    long long it;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOL", kwlist, &po, &go, &s0o, &s1o, &oo, &it))
        return NULL;
    vgg_optimizer opt;
    if (parse_optimizer(oo, &opt)) return NULL;
    if (it < 0) {
        PyErr_SetString(PyExc_ValueError, "iterations: expected >= 0");
        return NULL;
    }
    PyArrayObject *p = check_array(po, "param", F32_ONLY, -1, 1);
    PyArrayObject *g = p ? check_array(go, "grad", F32_ONLY, -1, 0) : NULL;
    if (!g) return NULL;
    const size_t count = (size_t)PyArray_SIZE(p);
    if ((size_t)PyArray_SIZE(g) != count) {
        PyErr_SetString(PyExc_ValueError, "grad: expected as many elements as param");
        return NULL;
    }
    float *slot[2] = {NULL, NULL};
    PyObject *so[2] = {s0o, s1o};
    const int nslots = vgg_optimizer_slots(&opt);
    for (int i = 0; i < nslots; i++) {
        PyArrayObject *s = check_array(so[i], i ? "slot1" : "slot0", F32_ONLY, -1, 1);
        if (!s) return NULL;
        if ((size_t)PyArray_SIZE(s) != count) {
            PyErr_Format(PyExc_ValueError, "slot%d: expected as many elements as param", i);
            return NULL;
        }
        slot[i] = PyArray_DATA(s);
    }
    int st;
    CALL_NOGIL(st, vgg_optimizer_step(PyArray_DATA(p), PyArray_DATA(g), slot[0], slot[1], count,
                                      &opt, (int64_t)it));
    if (st != VGG_OK) return raise_status(st, "optimizer_step");
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ */
/* convolution and pooling backward                                         */

static PyObject *py_conv3x3_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"dout", "x", "kernel", "need_dx", NULL};
    PyObject *go, *xo, *ko;
    int need_dx = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|p", kwlist, &go, &xo, &ko, &need_dx))
        return NULL;
    if (threads_ready()) return NULL;
    PyArrayObject *g = check_array(go, "dout", F32_ONLY, 4, 0);
    PyArrayObject *x = g ? check_array(xo, "x", F32_ONLY, 4, 0) : NULL;
    PyArrayObject *k = x ? check_array(ko, "kernel", F32_ONLY, 4, 0) : NULL;
    if (!k) return NULL;
    const size_t n = dim(x, 0), h = dim(x, 1), w = dim(x, 2), cin = dim(x, 3), cout = dim(k, 3);
    if (check_dim(k, "kernel", 0, 3) || check_dim(k, "kernel", 1, 3) ||
        check_dim(k, "kernel", 2, cin) || check_dim(g, "dout", 0, n) ||
        check_dim(g, "dout", 1, h) || check_dim(g, "dout", 2, w) || check_dim(g, "dout", 3, cout))
        return NULL;
    if (h == 0 || w == 0 || cin == 0 || cout == 0) {
        PyErr_SetString(PyExc_ValueError, "x, kernel: expected non-empty H, W, Cin and Cout");
        return NULL;
    }
    npy_intp sdb[1] = {(npy_intp)cout};
    PyArrayObject *dx = need_dx ? new_f32(4, PyArray_DIMS(x)) : NULL;
    PyArrayObject *dw = new_f32(4, PyArray_DIMS(k));
    PyArrayObject *db = new_f32(1, sdb);
    /* the algorithm fine-tuning trains this shape by */
    const int algo = vgg_conv3x3_algo_at(h, w, cin, cout, VGG_PRECISION_FP32);
    const size_t wsn = vgg_conv3x3_backward_workspace_floats(algo, cin, cout);
    float *ws = PyMem_RawMalloc(wsn * sizeof(float));
    PyObject *result = NULL;
    if ((need_dx && !dx) || !dw || !db || !ws) {
        if (!ws) PyErr_NoMemory();
        goto done;
    }
    RELEASE_GIL(s);
    int st = vgg_conv3x3_backward(algo, dx ? PyArray_DATA(dx) : NULL, PyArray_DATA(dw), PyArray_DATA(db),
                                  PyArray_DATA(g), PyArray_DATA(x), PyArray_DATA(k), n, h, w, cin,
                                  cout, ws, wsn, py_abort_cb, &s);
    ACQUIRE_GIL(s);
    result = grads_or_raise(st, "conv3x3_backward", dx, dw, db);
done:
    PyMem_RawFree(ws);
    Py_XDECREF(dx);
    Py_XDECREF(dw);
    Py_XDECREF(db);
    return result;
}

static PyObject *py_maxpool2x2_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"dout", "x", NULL};
    PyObject *go, *xo;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO", kwlist, &go, &xo)) return NULL;
    PyArrayObject *g = check_array(go, "dout", F32_ONLY, 4, 0);
    PyArrayObject *x = g ? check_array(xo, "x", F32_ONLY, 4, 0) : NULL;
    if (!x) return NULL;
    const size_t n = dim(x, 0), h = dim(x, 1), w = dim(x, 2), c = dim(x, 3);
    if (h < 2 || w < 2 || c < 1) {
        PyErr_SetString(PyExc_ValueError, "x: expected H >= 2, W >= 2 and C >= 1");
        return NULL;
    }
    if (check_dim(g, "dout", 0, n) || check_dim(g, "dout", 1, h / 2) ||
        check_dim(g, "dout", 2, w / 2) || check_dim(g, "dout", 3, c))
        return NULL;
    PyArrayObject *dx = new_f32(4, PyArray_DIMS(x));
    if (!dx) return NULL;
    int st;
    CALL_NOGIL(st, vgg_maxpool2x2_backward(PyArray_DATA(dx), PyArray_DATA(g), PyArray_DATA(x), n,
                                           h, w, c));
    return out_or_raise(st, dx, "maxpool2x2_backward");
}

static PyObject *py_vgg16_forward_images(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromUnsignedLongLong((unsigned long long)vgg16_forward_images());
}

static PyMethodDef methods[] = {
    {"conv3x3_forward", KW py_conv3x3_forward, METH_VARARGS | METH_KEYWORDS,
     "conv3x3_forward(x (N,H,W,Cin) f32, kernel (3,3,Cin,Cout) f32, bias (Cout,) f32, "
     "relu=True, out=None, *, precision='fp32', pool=False) -> (N,H,W,Cout)\n\nStride 1, "
     "'same' zero padding; the algorithm is conv3x3_algo's for the shape. pool=True: the 2x2 "
     "max-pool fused into the output, (N,H/2,W/2,Cout) (Winograd layers, with ReLU)."},
    {"maxpool2x2_forward", KW py_maxpool2x2_forward, METH_VARARGS | METH_KEYWORDS,
     "maxpool2x2_forward(x (N,H,W,C) f32) -> (N,H//2,W//2,C)"},
    {"global_pool_forward", KW py_global_pool_forward, METH_VARARGS | METH_KEYWORDS,
     "global_pool_forward(x (N,H,W,C) f32, mode 'avg'|'max') -> (N,C)"},
    {"activation_forward", KW py_activation_forward, METH_VARARGS | METH_KEYWORDS,
     "activation_forward(x (N,D) f32, activation) -> (N,D), a new array"},
    {"dense_forward", KW py_dense_forward, METH_VARARGS | METH_KEYWORDS,
     "dense_forward(x (N,In) f32, kernel (In,Out) f32, bias (Out,) f32, activation='linear') "
     "-> (N,Out)"},
    {"dense_backward", KW py_dense_backward, METH_VARARGS | METH_KEYWORDS,
     "dense_backward(dz (N,Out), x (N,In), kernel (In,Out), need_dx=True) -> (dx|None, dw, db)"},
    {"activation_backward", KW py_activation_backward, METH_VARARGS | METH_KEYWORDS,
     "activation_backward(dy (N,D), y (N,D) saved output, activation) -> dz"},
    {"dropout_forward", KW py_dropout_forward, METH_VARARGS | METH_KEYWORDS,
     "dropout_forward(x f32, rate, seed, stream) -> y (inverted dropout, counter-based mask)"},
    {"dropout_backward", KW py_dropout_backward, METH_VARARGS | METH_KEYWORDS,
     "dropout_backward(dy f32, rate, seed, stream) -> dx"},
    {"loss_forward_backward", KW py_loss_forward_backward, METH_VARARGS | METH_KEYWORDS,
     "loss_forward_backward(yhat (N,C), y, loss 0|1|2, sample_weight=None, activation='linear') "
     "-> (loss, dyhat, per_sample); with activation 'softmax' or 'sigmoid' yhat holds the logits"},
    {"optimizer_step", KW py_optimizer_step, METH_VARARGS | METH_KEYWORDS,
     "optimizer_step(param, grad, slot0, slot1, optimizer spec, iterations) -> None (in place)"},
    {"conv3x3_backward", KW py_conv3x3_backward, METH_VARARGS | METH_KEYWORDS,
     "conv3x3_backward(dout (N,H,W,Cout), x (N,H,W,Cin), kernel (3,3,Cin,Cout), need_dx=True) "
     "-> (dx|None, dw, db); dout is the gradient before the activation"},
    {"maxpool2x2_backward", KW py_maxpool2x2_backward, METH_VARARGS | METH_KEYWORDS,
     "maxpool2x2_backward(dout (N,H//2,W//2,C), x (N,H,W,C)) -> dx"},
    {"vgg16_forward_images", py_vgg16_forward_images, METH_NOARGS,
     "vgg16_forward_images() -> int: images run through vgg16_forward from the input since load"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "vggtl's C kernels one at a time, for the tests (private; the core of vggtl._core).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    import_array();
    vgg_core = PyCapsule_Import(VGG_CORE_API_CAPSULE, 0);
    if (!vgg_core) return NULL;
    if (vgg_core->size != sizeof(vgg_core_api)) {
        PyErr_SetString(PyExc_ImportError, "vggtl._kernels: built with another vggtl._core; "
                        "rebuild the package");
        return NULL;
    }
    return PyModule_Create(&moduledef);
}
