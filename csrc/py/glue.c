/*
 * glue.c - the helpers csrc/py/glue.h declares: array checks, exceptions from
 * status codes, the abort callback, and the parsers shared by several entry
 * points. Built into both extension modules.
 */
#include "glue.h"

#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* errors and checks                                                        */

PyObject *raise_status(int st, const char *what) {
    switch (st) {
    case VGG_ERR_ARG:
    case VGG_ERR_SHAPE:
        PyErr_Format(PyExc_ValueError, "%s: %s", what, vgg_status_str(st));
        break;
    case VGG_ERR_NOMEM:
        PyErr_Format(PyExc_MemoryError, "%s: %s", what, vgg_status_str(st));
        break;
    case VGG_ERR_CANCELLED:
        if (!PyErr_Occurred()) PyErr_SetNone(PyExc_KeyboardInterrupt);
        break;
    default:
        PyErr_Format(PyExc_RuntimeError, "%s: %s", what, vgg_status_str(st));
    }
    return NULL;
}

PyObject *out_or_raise(int st, PyArrayObject *out, const char *what) {
    if (st == VGG_OK) return (PyObject *)out;
    Py_DECREF(out);
    return raise_status(st, what);
}

const int F32_ONLY[] = {NPY_FLOAT32, -1};
const int F64_ONLY[] = {NPY_FLOAT64, -1};
const int I32_ONLY[] = {NPY_INT32, -1};
const int I64_ONLY[] = {NPY_INT64, -1};
const int IMAGE_TYPES[] = {NPY_UINT8, NPY_FLOAT32, NPY_FLOAT64, -1};
const int FEATURE_TYPES[] = {NPY_FLOAT32, NPY_FLOAT16, -1};

const char *dtype_name(PyArrayObject *a) {
    static char buf[32];
    PyArray_Descr *d = PyArray_DESCR(a);
    PyOS_snprintf(buf, sizeof buf, "%c%d", d->kind, (int)PyDataType_ELSIZE(d));
    return buf;
}

PyArrayObject *check_array(PyObject *obj, const char *name, const int *types, int ndim,
                           int writeable) {
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a numpy.ndarray, got %s", name,
                     Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    int ok = 0;
    for (const int *t = types; *t >= 0; t++) ok |= PyArray_TYPE(a) == *t;
    if (!ok || !PyArray_ISNOTSWAPPED(a)) {
        char expected[64] = "";
        for (const int *t = types; *t >= 0; t++) {
            const char *tn = *t == NPY_UINT8 ? "uint8" : *t == NPY_FLOAT16 ? "float16"
                           : *t == NPY_FLOAT32 ? "float32" : *t == NPY_FLOAT64 ? "float64"
                           : *t == NPY_INT32 ? "int32" : *t == NPY_INT64 ? "int64" : "?";
            const size_t len = strlen(expected);
            PyOS_snprintf(expected + len, sizeof expected - len, "%s%s", len ? " or " : "", tn);
        }
        PyErr_Format(PyExc_TypeError, "%s: expected dtype %s (native byte order), got %s",
                     name, expected, dtype_name(a));
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: expected %d dimensions, got %d", name, ndim,
                     PyArray_NDIM(a));
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a C-contiguous, aligned array", name);
        return NULL;
    }
    if (writeable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s: expected a writeable array", name);
        return NULL;
    }
    return a;
}

int core_dtype(PyArrayObject *a) {
    switch (PyArray_TYPE(a)) {
    case NPY_UINT8: return VGG_U8;
    case NPY_FLOAT32: return VGG_F32;
    default: return VGG_F64;
    }
}

int feature_dtype(PyArrayObject *a) { return PyArray_TYPE(a) == NPY_FLOAT16 ? VGG_F16 : VGG_F32; }

int check_dim(PyArrayObject *a, const char *name, int i, size_t expected) {
    if (dim(a, i) != expected) {
        PyErr_Format(PyExc_ValueError, "%s: expected size %zu on axis %d, got %zu", name,
                     expected, i, dim(a, i));
        return -1;
    }
    return 0;
}

PyArrayObject *new_f32(int ndim, const npy_intp *shape) {
    return (PyArrayObject *)PyArray_EMPTY(ndim, (npy_intp *)shape, NPY_FLOAT32, 0);
}

PyArrayObject *make_output(PyObject *out, int ndim, npy_intp *shape) {
    if (out == NULL || out == Py_None) return new_f32(ndim, shape);
    PyArrayObject *a = check_array(out, "out", F32_ONLY, ndim, 1);
    if (!a) return NULL;
    for (int i = 0; i < ndim; i++)
        if (check_dim(a, "out", i, (size_t)shape[i])) return NULL;
    Py_INCREF(a);
    return a;
}

/* ------------------------------------------------------------------------ */
/* releasing the GIL, with Ctrl-C                                           */

double monotonic_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Called by the core from the thread that released the GIL (between chunks). */
int py_abort_cb(void *ctx) {
    abort_state *s = (abort_state *)ctx;
    const double now = monotonic_s();
    if (now - s->last < 0.1) return 0;
    s->last = now;
    PyEval_RestoreThread(s->ts);
    const int r = PyErr_CheckSignals();
    s->ts = PyEval_SaveThread();
    return r != 0;
}

/* ------------------------------------------------------------------------ */
/* threads                                                                  */

const char FORKED_MSG[] =
    "vggtl runs on one thread in this process: it was forked (multiprocessing's 'fork' "
    "start method, os.fork) after vggtl had started OpenMP threads, and OpenMP (libgomp) "
    "cannot start threads again after fork; use multiprocessing.get_context('spawn') or "
    "'forkserver' to keep every thread";

/* A forked process runs on one thread from then on: warned once. */
int threads_ready(void) {
    static int warned;
    if (vgg_threads_forked() && !warned) {
        warned = 1;
        if (PyErr_WarnEx(PyExc_RuntimeWarning, FORKED_MSG, 1) < 0) return -1;
    }
    int err = 0, st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_threads_start(&err);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        PyErr_Format(PyExc_RuntimeError, "could not start %d threads (%s): the process is at a "
                     "memory or thread limit; call vggtl.set_num_threads(n) with fewer",
                     vgg_get_num_threads(), strerror(err));
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* arguments                                                                */

int name_index(const char *arg, const char *name, const char *const *names, int count) {
    for (int i = 0; i < count; i++)
        if (strcmp(name, names[i]) == 0) return i;
    PyObject *choices = PyUnicode_FromString("");
    for (int i = 0; choices && i < count; i++) {
        PyObject *next = PyUnicode_FromFormat("%U%s'%s'", choices, i ? ", " : "", names[i]);
        Py_SETREF(choices, next);
    }
    if (choices) {
        PyErr_Format(PyExc_ValueError, "%s: expected one of %U, got '%s'", arg, choices, name);
        Py_DECREF(choices);
    }
    return -1;
}

const char *const ALGO_NAMES[VGG_NUM_CONV_ALGOS] = {"auto", "im2col", "winograd",
                                                    "winograd_bf16", "winograd6"};
const char *const PRECISION_NAMES[VGG_NUM_PRECISIONS] = {"fp32", "bf16"};

int parse_precision(const char *name) {
    return name ? name_index("precision", name, PRECISION_NAMES, VGG_NUM_PRECISIONS)
                : VGG_PRECISION_FP32;
}

int parse_float3(PyObject *o, const char *name, float v[3]) {
    PyObject *seq = PySequence_Fast(o, "");
    if (!seq || PySequence_Fast_GET_SIZE(seq) != 3) {
        Py_XDECREF(seq);
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "%s: expected a sequence of 3 floats", name);
        return -1;
    }
    for (int i = 0; i < 3; i++) {
        double d = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (d == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        v[i] = (float)d;
    }
    Py_DECREF(seq);
    return 0;
}

int parse_activation(const char *s, int *act) {
    if (strcmp(s, "linear") == 0) *act = VGG_ACT_LINEAR;
    else if (strcmp(s, "relu") == 0) *act = VGG_ACT_RELU;
    else if (strcmp(s, "softmax") == 0) *act = VGG_ACT_SOFTMAX;
    else if (strcmp(s, "sigmoid") == 0) *act = VGG_ACT_SIGMOID;
    else {
        PyErr_Format(PyExc_ValueError,
                     "activation: expected 'linear', 'relu', 'softmax' or 'sigmoid', got '%s'", s);
        return -1;
    }
    return 0;
}

int parse_rate(double rate) {
    if (!(rate >= 0.0 && rate < 1.0)) {
        PyErr_Format(PyExc_ValueError, "rate: expected 0 <= rate < 1, got %g", rate);
        return -1;
    }
    return 0;
}

int parse_targets(vgg_targets *t, int loss, PyObject *to, PyObject *swo, size_t n, size_t c) {
    memset(t, 0, sizeof *t);
    if (loss < VGG_LOSS_BCE || loss > VGG_LOSS_SPARSE_CCE) {
        PyErr_Format(PyExc_ValueError, "loss: expected 0 (binary), 1 (categorical) or 2 "
                     "(sparse categorical crossentropy), got %d", loss);
        return -1;
    }
    t->loss = loss;
    if (loss == VGG_LOSS_SPARSE_CCE) {
        PyArrayObject *a = check_array(to, "y", I32_ONLY, 1, 0);
        if (!a || check_dim(a, "y", 0, n)) return -1;
        const int32_t *lab = PyArray_DATA(a);
        for (size_t i = 0; i < n; i++)
            if (lab[i] < 0 || (size_t)lab[i] >= c) {
                PyErr_Format(PyExc_ValueError, "y: label %d at index %zu is outside [0, %zu)",
                             (int)lab[i], i, c);
                return -1;
            }
        t->labels = lab;
    } else {
        PyArrayObject *a = check_array(to, "y", F32_ONLY, 2, 0);
        if (!a || check_dim(a, "y", 0, n) || check_dim(a, "y", 1, c)) return -1;
        t->targets = PyArray_DATA(a);
    }
    if (swo && swo != Py_None) {
        PyArrayObject *a = check_array(swo, "sample_weight", F32_ONLY, 1, 0);
        if (!a || check_dim(a, "sample_weight", 0, n)) return -1;
        t->sample_weight = PyArray_DATA(a);
    }
    return 0;
}

int parse_optimizer(PyObject *o, vgg_optimizer *opt) {
    memset(opt, 0, sizeof *opt);
    PyObject *steps = Py_None;
    long long first = 0;
    if (!PyArg_ParseTuple(o, "iddddddpd|OL;optimizer: expected (kind, learning_rate, decay, "
                             "beta_1, beta_2, epsilon, momentum, nesterov, rho[, lr_steps, "
                             "lr_first])",
                          &opt->kind, &opt->learning_rate, &opt->decay, &opt->beta_1, &opt->beta_2,
                          &opt->epsilon, &opt->momentum, &opt->nesterov, &opt->rho, &steps, &first))
        return -1;
    if (steps != Py_None) {
        PyArrayObject *a = check_array(steps, "lr_steps", F64_ONLY, 1, 0);
        if (!a) return -1;
        opt->lr_steps = PyArray_DATA(a);
        opt->lr_count = dim(a, 0);
        opt->lr_first = (int64_t)first;
    }
    if (opt->kind < VGG_OPT_SGD || opt->kind > VGG_OPT_RMSPROP) {
        PyErr_Format(PyExc_ValueError, "optimizer: unknown kind %d", opt->kind);
        return -1;
    }
    if (!(opt->learning_rate > 0.0) || !(opt->decay >= 0.0) || !(opt->momentum >= 0.0)) {
        PyErr_Format(PyExc_ValueError, "optimizer: expected learning_rate > 0, decay >= 0 and "
                     "momentum >= 0, got %g, %g, %g", opt->learning_rate, opt->decay, opt->momentum);
        return -1;
    }
    return 0;
}
