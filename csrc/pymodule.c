/*
 * pymodule.c - the CPython / NumPy glue of vggtl._core: the only file that
 * includes Python.h.
 *
 * Each py_<name> parses its arguments, checks every array (dtype, ndim, shape,
 * C-contiguous, aligned, native byte order, writeable for outputs) and raises
 * TypeError / ValueError naming the argument, what was expected and what came;
 * allocates outputs with the GIL held; calls the core with the GIL released;
 * maps the status to an exception. No loops over data, no maths. Conversions
 * (dtype, contiguity) are the Python package's job: nothing is cast here.
 *
 * Ctrl-C: long calls pass the core an abort callback that, at most every
 * 100 ms, takes the GIL back and runs PyErr_CheckSignals(); a pending
 * KeyboardInterrupt makes the core stop between chunks and the call raise it.
 */
#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
#include <Python.h>
#include <numpy/arrayobject.h>

#include <time.h>

#include "vgg.h"

/* ------------------------------------------------------------------------ */
/* errors and checks                                                        */

static PyObject *raise_status(int st, const char *what) {
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

static const char *dtype_name(PyArrayObject *a) {
    static char buf[32];
    PyArray_Descr *d = PyArray_DESCR(a);
    PyOS_snprintf(buf, sizeof buf, "%c%d", d->kind, (int)PyDataType_ELSIZE(d));
    return buf;
}

/* Checks obj is an ndarray of one of the type numbers (terminated by -1), of
 * ndim dims (ndim < 0: any), C-contiguous, aligned, native order, and
 * writeable if asked. Returns a borrowed pointer or NULL with an exception. */
static PyArrayObject *check_array(PyObject *obj, const char *name, const int *types, int ndim,
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

static const int F32_ONLY[] = {NPY_FLOAT32, -1};
static const int IMAGE_TYPES[] = {NPY_UINT8, NPY_FLOAT32, NPY_FLOAT64, -1};

static int core_dtype(PyArrayObject *a) {
    switch (PyArray_TYPE(a)) {
    case NPY_UINT8: return VGG_U8;
    case NPY_FLOAT32: return VGG_F32;
    default: return VGG_F64;
    }
}

static size_t dim(PyArrayObject *a, int i) { return (size_t)PyArray_DIM(a, i); }

static int check_dim(PyArrayObject *a, const char *name, int i, size_t expected) {
    if (dim(a, i) != expected) {
        PyErr_Format(PyExc_ValueError, "%s: expected size %zu on axis %d, got %zu", name,
                     expected, i, dim(a, i));
        return -1;
    }
    return 0;
}

/* Allocates a float32 C-contiguous array, or checks the given `out` has exactly
 * that shape (then returns a new reference to it). */
static PyArrayObject *make_output(PyObject *out, int ndim, npy_intp *shape) {
    if (out == NULL || out == Py_None) {
        return (PyArrayObject *)PyArray_EMPTY(ndim, shape, NPY_FLOAT32, 0);
    }
    PyArrayObject *a = check_array(out, "out", F32_ONLY, ndim, 1);
    if (!a) return NULL;
    for (int i = 0; i < ndim; i++)
        if (check_dim(a, "out", i, (size_t)shape[i])) return NULL;
    Py_INCREF(a);
    return a;
}

/* ------------------------------------------------------------------------ */
/* releasing the GIL, with Ctrl-C                                           */

typedef struct {
    PyThreadState *ts;
    double last;
} abort_state;

static double monotonic_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Called by the core from the thread that released the GIL (between chunks). */
static int py_abort_cb(void *ctx) {
    abort_state *s = (abort_state *)ctx;
    const double now = monotonic_s();
    if (now - s->last < 0.1) return 0;
    s->last = now;
    PyEval_RestoreThread(s->ts);
    const int r = PyErr_CheckSignals();
    s->ts = PyEval_SaveThread();
    return r != 0;
}

#define RELEASE_GIL(s)              \
    abort_state s = {NULL, 0.0};    \
    s.last = monotonic_s();         \
    s.ts = PyEval_SaveThread()
#define ACQUIRE_GIL(s) PyEval_RestoreThread(s.ts)

/* ------------------------------------------------------------------------ */
/* threads and build info                                                   */

static const char FORKED_MSG[] =
    "vggtl runs on one thread in this process: it was forked (multiprocessing's 'fork' "
    "start method, os.fork) after vggtl had started OpenMP threads, and OpenMP (libgomp) "
    "cannot start threads again after fork; use multiprocessing.get_context('spawn') or "
    "'forkserver' to keep every thread";

/* Before a long call: one RuntimeWarning in a process forked after vggtl's
 * threads had started (it runs on one thread from then on), and a RuntimeError,
 * not libgomp's exit, when this thread's team cannot be started. 0, or -1 with
 * an exception set. */
static int threads_ready(void) {
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

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 4096) {
        PyErr_Format(PyExc_ValueError, "n: expected an integer in [1, 4096], got %ld", n);
        return NULL;
    }
    vgg_set_num_threads((int)n);
    if (n > 1 && vgg_threads_forked() && PyErr_WarnEx(PyExc_RuntimeWarning, FORKED_MSG, 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromLong(vgg_get_num_threads());
}

static PyObject *py_build_info(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return Py_BuildValue("{s:O,s:s,s:s}", "openmp", vgg_have_openmp() ? Py_True : Py_False,
                         "blas", vgg_blas_info(), "blas_coretype", vgg_blas_corename());
}

/* Index of `name` among names[0..count), or -1 with a ValueError naming arg. */
static int name_index(const char *arg, const char *name, const char *const *names, int count) {
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

static const char *const ISA_NAMES[] = {"portable", "avx2", "avx512", "avx512_bf16"};
static const char *const PRECISION_NAMES[] = {"fp32", "bf16"};
static const char *const ALGO_NAMES[] = {"auto", "im2col", "winograd", "winograd_bf16",
                                         "winograd6"};

static PyObject *py_isa_supported(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const int isa = name_index("isa", name, ISA_NAMES, 4);
    if (isa < 0) return NULL;
    return PyBool_FromLong(vgg_isa_supported(isa));
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const int isa = strcmp(name, "best") == 0 ? VGG_ISA_BEST : name_index("isa", name, ISA_NAMES, 4);
    if (isa == -1 && strcmp(name, "best") != 0) return NULL;
    if (vgg_set_isa(isa) != VGG_OK) {
        PyErr_Format(PyExc_ValueError, "isa: '%s' is not supported by this CPU", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_get_isa(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(vgg_isa_name(vgg_get_isa()));
}

static PyObject *py_set_conv_algo(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    /* the settings; winograd_bf16 is what a layer runs at precision='bf16', not one */
    static const char *const SETTABLE[] = {"auto", "im2col", "winograd", "winograd6"};
    const int i = name_index("conv_algo", name, SETTABLE, 4);
    if (i < 0) return NULL;
    const int algo = i == 3 ? VGG_CONV_WINOGRAD6 : i;
    if (vgg_set_conv_algo(algo) != VGG_OK) return raise_status(VGG_ERR_INTERNAL, "set_conv_algo");
    Py_RETURN_NONE;
}

static PyObject *py_get_conv_algo(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(vgg_conv_algo_name(vgg_get_conv_algo()));
}

/* A precision name ("fp32", "bf16"; NULL: fp32) -> enum vgg_precision, or -1. */
static int parse_precision(const char *name) {
    return name ? name_index("precision", name, PRECISION_NAMES, 2) : VGG_PRECISION_FP32;
}

static PyObject *py_conv3x3_algo(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"h", "w", "cin", "cout", "precision", NULL};
    Py_ssize_t h, w, cin, cout;
    const char *pname = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "nnnn|$z", kwlist, &h, &w, &cin, &cout, &pname))
        return NULL;
    const int precision = parse_precision(pname);
    if (precision < 0) return NULL;
    if (h < 1 || w < 1 || cin < 1 || cout < 1) {
        PyErr_SetString(PyExc_ValueError, "h, w, cin, cout: expected positive sizes");
        return NULL;
    }
    return PyUnicode_FromString(vgg_conv_algo_name(
        vgg_conv3x3_algo_at((size_t)h, (size_t)w, (size_t)cin, (size_t)cout, precision)));
}

/* conv3x3_prepare(kernel, algo) -> the kernel (3, 3, Cin, Cout) float32 in the
 * form `algo` computes with, a flat float32 array for vgg16_forward's prepared= */
static PyObject *py_conv3x3_prepare(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"kernel", "algo", NULL};
    PyObject *ko;
    const char *aname;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os", kwlist, &ko, &aname)) return NULL;
    const int algo = name_index("algo", aname, ALGO_NAMES, 5);
    if (algo < 0) return NULL;
    if (algo == VGG_CONV_AUTO) {
        PyErr_SetString(PyExc_ValueError, "algo: expected 'im2col', 'winograd', "
                        "'winograd6' or 'winograd_bf16', got 'auto'");
        return NULL;
    }
    PyArrayObject *k = check_array(ko, "kernel", F32_ONLY, 4, 0);
    if (!k) return NULL;
    if (check_dim(k, "kernel", 0, 3) || check_dim(k, "kernel", 1, 3)) return NULL;
    const size_t cin = dim(k, 2), cout = dim(k, 3);
    if (cin == 0 || cout == 0) {
        PyErr_SetString(PyExc_ValueError, "kernel: expected non-empty Cin and Cout");
        return NULL;
    }
    const size_t floats = vgg_conv3x3_prepared_floats(algo, cin, cout);
    npy_intp shape[1] = {(npy_intp)floats};
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(1, shape, NPY_FLOAT32, 0);
    if (!out) return NULL;
    RELEASE_GIL(s);
    const int st = vgg_conv3x3_prepare(PyArray_DATA(out), floats, algo, PyArray_DATA(k), cin, cout);
    ACQUIRE_GIL(s);
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "conv3x3_prepare");
    }
    return (PyObject *)out;
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
    static const size_t cin_of[VGG16_NUM_CONV] = {3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512};
    static const size_t cout_of[VGG16_NUM_CONV] = {64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512};
    for (int i = 0; i < VGG16_NUM_CONV; i++) {
        PyObject *e = PySequence_Fast_GET_ITEM(seq, i), *ao;
        const char *aname;
        if (e == Py_None) continue;
        if (!PyArg_ParseTuple(e, "sO;prepared: expected (algo, array) or None per conv", &aname, &ao))
            goto done;
        const int algo = name_index("prepared algo", aname, ALGO_NAMES, 5);
        if (algo < 0) goto done;
        PyArrayObject *a = check_array(ao, "prepared array", F32_ONLY, 1, 0);
        if (!a) goto done;
        const size_t need = vgg_conv3x3_prepared_floats(algo, cin_of[i], cout_of[i]);
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

static PyObject *py_bf16_native(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyBool_FromLong(vgg_bf16_native());
}

/* ------------------------------------------------------------------------ */
/* layers                                                                   */

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
    if (pool && (!relu || h < 2 || w < 2 || algo == VGG_CONV_IM2COL)) {
        PyErr_Format(PyExc_ValueError, "pool: the fused 2x2 max-pool needs relu=True, H and W "
                     ">= 2 and a Winograd layer; this one runs %s on %zu x %zu (relu=%s)",
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
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "conv3x3_forward");
    }
    return (PyObject *)out;
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
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(4, shape, NPY_FLOAT32, 0);
    if (!out) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_maxpool2x2_forward(PyArray_DATA(out), PyArray_DATA(x), n, h, w, c);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "maxpool2x2_forward");
    }
    return (PyObject *)out;
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
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(2, shape, NPY_FLOAT32, 0);
    if (!out) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_global_pool_forward(PyArray_DATA(out), PyArray_DATA(x), mode, n, h, w, c);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "global_pool_forward");
    }
    return (PyObject *)out;
}

static int parse_activation(const char *s, int *act) {
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
    Py_BEGIN_ALLOW_THREADS
    st = vgg_activation_forward(PyArray_DATA(out), act, dim(x, 0), dim(x, 1));
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "activation_forward");
    }
    return (PyObject *)out;
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
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(2, shape, NPY_FLOAT32, 0);
    if (!out) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_dense_forward(PyArray_DATA(out), PyArray_DATA(x), PyArray_DATA(k), PyArray_DATA(b),
                           act, n, in, outdim);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "dense_forward");
    }
    return (PyObject *)out;
}

/* three floats from a Python sequence */
static int parse_float3(PyObject *o, const char *name, float v[3]) {
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
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(4, shape, NPY_FLOAT32, 0);
    if (!out) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_input_convert(PyArray_DATA(out), PyArray_DATA(x), core_dtype(x), dim(x, 0),
                           dim(x, 1), dim(x, 2), c, scale, shift, rev);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "input_convert");
    }
    return (PyObject *)out;
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
    Py_BEGIN_ALLOW_THREADS
    st = vgg_resize_bilinear(PyArray_DATA(out), PyArray_DATA(x), dtype, n, h, w, c,
                             (size_t)oh, (size_t)ow, ws, wsn);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(ws);
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "resize");
    }
    return (PyObject *)out;
}

/* ------------------------------------------------------------------------ */
/* augmentation                                                             */

static const int AUG_F64[] = {NPY_FLOAT64, -1};
static const int AUG_I64[] = {NPY_INT64, -1};

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
    PyArrayObject *index = check_array(io, "index", AUG_I64, 1, 0);
    if (!index) return NULL;
    const Py_ssize_t n = PyArray_DIM(index, 0);
    for (int a = 0; a < 2; a++) {
        if (vo[a] == Py_None) continue;
        PyArrayObject *v = check_array(vo[a], "shift_values", AUG_F64, 1, 0);
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
    PyArrayObject *params = check_array(po, "params", AUG_F64, 2, 0);
    if (!params) return NULL;
    PyArrayObject *index = NULL;
    if (io != Py_None && !(index = check_array(io, "index", AUG_I64, 1, 0))) return NULL;
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
    Py_BEGIN_ALLOW_THREADS
    st = vgg_augment_apply(PyArray_DATA(out), PyArray_DATA(x), core_dtype(x),
                           index ? PyArray_DATA(index) : NULL, n, nx, h, w, c,
                           PyArray_DATA(params), mode, (float)cval);
    Py_END_ALLOW_THREADS
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

static PyObject *py_vgg16_layers(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    PyObject *t = PyTuple_New(VGG16_NUM_LAYERS);
    if (!t) return NULL;
    static const char *kinds[] = {"conv", "pool", "flatten", "dense"};
    for (int l = 0; l < VGG16_NUM_LAYERS; l++) {
        PyObject *e = Py_BuildValue("(ssn)", vgg16_layer_name(l), kinds[vgg16_layer_kind(l)],
                                    (Py_ssize_t)vgg16_layer_units(l));
        if (!e) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, l, e);
    }
    return t;
}

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

/* Expected shape of parameter i of the flat list [k1, b1, ..., k13, b13, fc1 k, fc1 b,
 * fc2 k, fc2 b, predictions k, predictions b]; dims[] gets 4 or fewer sizes. */
static int param_shape(int i, size_t classes, size_t dims[4], const char **layer) {
    static const size_t conv_in[VGG16_NUM_CONV] = {3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512};
    static const size_t conv_out[VGG16_NUM_CONV] = {64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512};
    static const int conv_layer[VGG16_NUM_CONV] = {0, 1, 3, 4, 6, 7, 8, 10, 11, 12, 14, 15, 16};
    static const size_t dense_in[VGG16_NUM_DENSE] = {25088, 4096, 4096};
    const int p = i / 2, is_bias = i % 2;
    if (p < VGG16_NUM_CONV) {
        *layer = vgg16_layer_name(conv_layer[p]);
        if (is_bias) {
            dims[0] = conv_out[p];
            return 1;
        }
        dims[0] = 3; dims[1] = 3; dims[2] = conv_in[p]; dims[3] = conv_out[p];
        return 4;
    }
    const int d = p - VGG16_NUM_CONV;
    const size_t units = d == 2 ? classes : 4096;
    *layer = vgg16_layer_name(VGG16_FC1 + d);
    if (is_bias) {
        dims[0] = units;
        return 1;
    }
    dims[0] = dense_in[d];
    dims[1] = units;
    return 2;
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
    for (Py_ssize_t i = 0; i < np_; i++) {
        size_t dims[4];
        const char *lname;
        const int nd = param_shape((int)i, classes, dims, &lname);
        char name[64];
        PyOS_snprintf(name, sizeof name, "params[%zd] (%s %s)", i, lname, i % 2 ? "bias" : "kernel");
        PyArrayObject *a = check_array(PySequence_Fast_GET_ITEM(seq, i), name, F32_ONLY, nd, 0);
        if (!a) goto done;
        for (int d = 0; d < nd; d++)
            if (check_dim(a, name, d, dims[d])) goto done;
        const int p = (int)i / 2;
        const float *ptr = PyArray_DATA(a);
        if (p < VGG16_NUM_CONV) {
            if (i % 2) wt.conv_bias[p] = ptr; else wt.conv_kernel[p] = ptr;
        } else {
            if (i % 2) wt.dense_bias[p - VGG16_NUM_CONV] = ptr; else wt.dense_kernel[p - VGG16_NUM_CONV] = ptr;
        }
    }
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
/* training: backward kernels, losses, optimizers, the head                 */

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
    PyArrayObject *dx = need_dx ? (PyArrayObject *)PyArray_EMPTY(2, sdx, NPY_FLOAT32, 0) : NULL;
    PyArrayObject *dw = (PyArrayObject *)PyArray_EMPTY(2, sdw, NPY_FLOAT32, 0);
    PyArrayObject *db = (PyArrayObject *)PyArray_EMPTY(1, sdb, NPY_FLOAT32, 0);
    PyObject *result = NULL;
    if ((need_dx && !dx) || !dw || !db) goto done;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_dense_backward(dx ? PyArray_DATA(dx) : NULL, PyArray_DATA(dw), PyArray_DATA(db),
                            PyArray_DATA(dz), PyArray_DATA(x), PyArray_DATA(k), n, in, outdim);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        raise_status(st, "dense_backward");
        goto done;
    }
    result = Py_BuildValue("(OOO)", dx ? (PyObject *)dx : Py_None, dw, db);
done:
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
    PyArrayObject *dz = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(dy), NPY_FLOAT32, 0);
    if (!dz) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_activation_backward(PyArray_DATA(dz), PyArray_DATA(dy), PyArray_DATA(y), act,
                                 dim(dy, 0), dim(dy, 1));
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        Py_DECREF(dz);
        return raise_status(st, "activation_backward");
    }
    return (PyObject *)dz;
}

static int parse_rate(double rate) {
    if (!(rate >= 0.0 && rate < 1.0)) {
        PyErr_Format(PyExc_ValueError, "rate: expected 0 <= rate < 1, got %g", rate);
        return -1;
    }
    return 0;
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
    PyArrayObject *y = (PyArrayObject *)PyArray_EMPTY(PyArray_NDIM(x), PyArray_DIMS(x), NPY_FLOAT32, 0);
    if (!y) return NULL;
    const size_t count = (size_t)PyArray_SIZE(x);
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = backward ? vgg_dropout_backward(PyArray_DATA(y), PyArray_DATA(x), (float)rate, seed, stream, count)
                  : vgg_dropout_forward(PyArray_DATA(y), PyArray_DATA(x), (float)rate, seed, stream, count);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        Py_DECREF(y);
        return raise_status(st, "dropout");
    }
    return (PyObject *)y;
}

static PyObject *py_dropout_forward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return py_dropout(args, kw, 0);
}

static PyObject *py_dropout_backward(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    return py_dropout(args, kw, 1);
}

static const int I32_ONLY[] = {NPY_INT32, -1};

/* Targets of a loss: (n, c) float32 for BCE / CCE, (n,) int32 for sparse; sample
 * weights (n,) float32 or None. Borrowed pointers into *t. */
static int parse_targets(vgg_targets *t, int loss, PyObject *to, PyObject *swo, size_t n,
                         size_t c) {
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
    PyArrayObject *d = (PyArrayObject *)PyArray_EMPTY(2, PyArray_DIMS(yh), NPY_FLOAT32, 0);
    npy_intp sn[1] = {(npy_intp)n};
    PyArrayObject *per = (PyArrayObject *)PyArray_EMPTY(1, sn, NPY_FLOAT32, 0);
    if (!d || !per) {
        Py_XDECREF(d);
        Py_XDECREF(per);
        return NULL;
    }
    double value;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_loss_forward_backward(&value, PyArray_DATA(d), PyArray_DATA(per), PyArray_DATA(yh),
                                   t.targets, t.labels, t.sample_weight, loss, act, n, c);
    Py_END_ALLOW_THREADS
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

/* (kind, learning_rate, decay, beta_1, beta_2, epsilon, momentum, nesterov, rho
 *  [, lr_steps, lr_first]): lr_steps a float64 array of per-step learning rates
 * (borrowed: the tuple holds it during the call) or None. */
static int parse_optimizer(PyObject *o, vgg_optimizer *opt) {
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
        static const int F64_ONLY[] = {NPY_FLOAT64, -1};
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
    Py_BEGIN_ALLOW_THREADS
    st = vgg_optimizer_step(PyArray_DATA(p), PyArray_DATA(g), slot[0], slot[1], count, &opt,
                            (int64_t)it);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) return raise_status(st, "optimizer_step");
    Py_RETURN_NONE;
}

/* A head spec: (input_mode, h, w, c, layers) with layers a sequence of
 * ("dense", units, activation, kernel, bias, slots) or ("dropout", rate); slots
 * is a sequence of 4 float32 arrays or None (kernel slot0, slot1, bias slot0,
 * slot1). Arrays are borrowed: the spec object must outlive the call. */
static int parse_head(PyObject *spec, vgg_head *h, int nslots) {
    memset(h, 0, sizeof *h);
    PyObject *layers;
    Py_ssize_t hh, ww, cc;
    if (!PyArg_ParseTuple(spec, "innnO;head: expected (input_mode, h, w, c, layers)", &h->input,
                          &hh, &ww, &cc, &layers))
        return -1;
    if (h->input < VGG_HEAD_FLATTEN || h->input > VGG_HEAD_GMP || hh < 1 || ww < 1 || cc < 1) {
        PyErr_SetString(PyExc_ValueError, "head: expected input_mode 0..2 and sizes >= 1");
        return -1;
    }
    h->h = (size_t)hh;
    h->w = (size_t)ww;
    h->c = (size_t)cc;
    if (!PyTuple_Check(layers) && !PyList_Check(layers)) {
        PyErr_SetString(PyExc_TypeError, "head: layers must be a list or tuple");
        return -1;
    }
    const Py_ssize_t nl = PySequence_Size(layers);
    if (nl < 1 || nl > VGG_HEAD_MAX_LAYERS) {
        PyErr_Format(PyExc_ValueError, "head: expected 1 to %d layers, got %zd", VGG_HEAD_MAX_LAYERS, nl);
        return -1;
    }
    h->n_layers = (size_t)nl;
    size_t width = h->input == VGG_HEAD_FLATTEN ? h->h * h->w * h->c : h->c;
    for (Py_ssize_t l = 0; l < nl; l++) {
        PyObject *e = PySequence_Fast_GET_ITEM(layers, l); /* list/tuple: borrowed */
        vgg_head_layer *L = &h->layers[l];
        char name[48];
        PyOS_snprintf(name, sizeof name, "head layer %zd", l);
        if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) < 2 || !PyUnicode_Check(PyTuple_GET_ITEM(e, 0))) {
            PyErr_Format(PyExc_TypeError, "%s: expected a ('dense', ...) or ('dropout', rate) tuple", name);
            return -1;
        }
        const char *kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(e, 0));
        if (!kind) return -1;
        if (strcmp(kind, "dropout") == 0) {
            double rate = PyFloat_AsDouble(PyTuple_GET_ITEM(e, 1));
            if (rate == -1.0 && PyErr_Occurred()) return -1;
            if (parse_rate(rate)) return -1;
            L->kind = VGG_HEAD_DROPOUT;
            L->rate = (float)rate;
            continue;
        }
        PyObject *ko, *bo, *so;
        Py_ssize_t units;
        const char *acts;
        if (strcmp(kind, "dense") != 0 ||
            !PyArg_ParseTuple(e, "snsOOO", &kind, &units, &acts, &ko, &bo, &so)) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s: expected ('dense', units, activation, kernel, bias, "
                         "slots) or ('dropout', rate)", name);
            return -1;
        }
        L->kind = VGG_HEAD_DENSE;
        if (units < 1 || parse_activation(acts, &L->activation)) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_ValueError, "%s: units must be >= 1", name);
            return -1;
        }
        L->units = (size_t)units;
        PyArrayObject *k = check_array(ko, "kernel", F32_ONLY, 2, 1);
        PyArrayObject *b = k ? check_array(bo, "bias", F32_ONLY, 1, 1) : NULL;
        if (!b) return -1;
        if (dim(k, 0) != width || dim(k, 1) != L->units || dim(b, 0) != L->units) {
            PyErr_Format(PyExc_ValueError, "%s: expected kernel (%zu, %zu) and bias (%zu,), got "
                         "(%zu, %zu) and (%zu,)", name, width, L->units, L->units, dim(k, 0),
                         dim(k, 1), dim(b, 0));
            return -1;
        }
        L->kernel = PyArray_DATA(k);
        L->bias = PyArray_DATA(b);
        if (nslots > 0) {
            if (!PyTuple_Check(so) || PyTuple_GET_SIZE(so) != 4) {
                PyErr_Format(PyExc_ValueError, "%s: expected 4 optimizer slots", name);
                return -1;
            }
            for (int s = 0; s < 4; s++) {
                if ((s % 2) >= nslots) continue;
                PyArrayObject *a = check_array(PyTuple_GET_ITEM(so, s), "slot", F32_ONLY, -1, 1);
                if (!a) return -1;
                if ((size_t)PyArray_SIZE(a) != (s < 2 ? width * L->units : L->units)) {
                    PyErr_Format(PyExc_ValueError, "%s: optimizer slot %d has the wrong size", name, s);
                    return -1;
                }
                L->slots[s] = PyArray_DATA(a);
            }
        }
        width = L->units;
    }
    if (h->layers[nl - 1].kind != VGG_HEAD_DENSE) {
        PyErr_SetString(PyExc_ValueError, "head: the last layer must be dense (it gives the output)");
        return -1;
    }
    return 0;
}

static const int FEATURE_TYPES[] = {NPY_FLOAT32, NPY_FLOAT16, -1};

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

static int feature_dtype(PyArrayObject *x) { return PyArray_TYPE(x) == NPY_FLOAT16 ? VGG_F16 : VGG_F32; }

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

static PyObject *py_head_predict(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "head", "batch", "workspace", NULL};
    PyObject *xo, *spec, *wso;
    Py_ssize_t batch;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOnO", kwlist, &xo, &spec, &batch, &wso)) return NULL;
    if (threads_ready()) return NULL;
    vgg_head h;
    if (parse_head(spec, &h, 0)) return NULL;
    if (batch < 1) {
        PyErr_Format(PyExc_ValueError, "batch: expected >= 1, got %zd", batch);
        return NULL;
    }
    PyArrayObject *x = check_features(xo, &h);
    PyArrayObject *ws = x ? check_head_workspace(wso, &h, (size_t)batch) : NULL;
    if (!ws) return NULL;
    const size_t n = dim(x, 0), units = vgg_head_output_size(&h);
    npy_intp shape[2] = {(npy_intp)n, (npy_intp)units};
    PyArrayObject *out = (PyArrayObject *)PyArray_EMPTY(2, shape, NPY_FLOAT32, 0);
    if (!out) return NULL;
    RELEASE_GIL(s);
    int st = vgg_head_predict(PyArray_DATA(out), PyArray_DATA(x), feature_dtype(x), n, &h,
                              (size_t)batch, PyArray_DATA(ws), dim(ws, 0), py_abort_cb, &s);
    ACQUIRE_GIL(s);
    if (st != VGG_OK) {
        Py_DECREF(out);
        return raise_status(st, "head_predict");
    }
    return (PyObject *)out;
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
    if (threads_ready()) return NULL;
    vgg_head h;
    if (parse_head(spec, &h, 0)) return NULL;
    if (batch < 1) {
        PyErr_Format(PyExc_ValueError, "batch: expected >= 1, got %zd", batch);
        return NULL;
    }
    PyArrayObject *x = check_features(xo, &h);
    PyArrayObject *ws = x ? check_head_workspace(wso, &h, (size_t)batch) : NULL;
    if (!ws) return NULL;
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

/* An epoch's optional outputs: None, or a writeable float32 (n, units) array. */
static int parse_outputs(PyObject *o, size_t n, size_t units, float **out) {
    *out = NULL;
    if (o == Py_None) return 0;
    PyArrayObject *a = check_array(o, "outputs", F32_ONLY, 2, 1);
    if (!a || check_dim(a, "outputs", 0, n) || check_dim(a, "outputs", 1, units)) return -1;
    *out = PyArray_DATA(a);
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
    static const int I64_ONLY[] = {NPY_INT64, -1};
    PyArrayObject *order = ws ? check_array(ordo, "order", I64_ONLY, 1, 1) : NULL;
    if (!order || check_dim(order, "order", 0, dim(x, 0))) return NULL;
    vgg_targets t;
    if (parse_targets(&t, loss, yo, swo, dim(x, 0), vgg_head_output_size(&h))) return NULL;
    float *outputs;
    if (parse_outputs(outo, dim(x, 0), vgg_head_output_size(&h), &outputs)) return NULL;
    vgg_fit_stats stats;
    int64_t it = (int64_t)iterations;
    RELEASE_GIL(s);
    int st = vgg_head_fit_epoch(&stats, &h, &opt, &it, PyArray_DATA(x), feature_dtype(x),
                                dim(x, 0), &t, (size_t)batch, shuffle, seed, epoch,
                                PyArray_DATA(order), outputs, PyArray_DATA(ws), dim(ws, 0),
                                py_abort_cb, &s);
    ACQUIRE_GIL(s);
    return epoch_result(st, &stats, it, "head_fit_epoch");
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
    PyArrayObject *dx = need_dx ? (PyArrayObject *)PyArray_EMPTY(4, PyArray_DIMS(x), NPY_FLOAT32, 0) : NULL;
    PyArrayObject *dw = (PyArrayObject *)PyArray_EMPTY(4, PyArray_DIMS(k), NPY_FLOAT32, 0);
    PyArrayObject *db = (PyArrayObject *)PyArray_EMPTY(1, sdb, NPY_FLOAT32, 0);
    const size_t wsn = vgg_conv3x3_backward_workspace_floats(cin, cout);
    float *ws = PyMem_RawMalloc(wsn * sizeof(float));
    PyObject *result = NULL;
    if ((need_dx && !dx) || !dw || !db || !ws) {
        if (!ws) PyErr_NoMemory();
        goto done;
    }
    RELEASE_GIL(s);
    int st = vgg_conv3x3_backward(dx ? PyArray_DATA(dx) : NULL, PyArray_DATA(dw), PyArray_DATA(db),
                                  PyArray_DATA(g), PyArray_DATA(x), PyArray_DATA(k), n, h, w, cin,
                                  cout, ws, wsn, py_abort_cb, &s);
    ACQUIRE_GIL(s);
    if (st != VGG_OK) {
        raise_status(st, "conv3x3_backward");
        goto done;
    }
    result = Py_BuildValue("(OOO)", dx ? (PyObject *)dx : Py_None, dw, db);
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
    PyArrayObject *dx = (PyArrayObject *)PyArray_EMPTY(4, PyArray_DIMS(x), NPY_FLOAT32, 0);
    if (!dx) return NULL;
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = vgg_maxpool2x2_backward(PyArray_DATA(dx), PyArray_DATA(g), PyArray_DATA(x), n, h, w, c);
    Py_END_ALLOW_THREADS
    if (st != VGG_OK) {
        Py_DECREF(dx);
        return raise_status(st, "maxpool2x2_backward");
    }
    return (PyObject *)dx;
}

static PyObject *py_vgg16_forward_images(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyLong_FromUnsignedLongLong((unsigned long long)vgg16_forward_images());
}

/* ------------------------------------------------------------------------ */
/* fine-tuning                                                              */

/* A tail spec: (start_layer, convs) with convs a sequence of 13 entries, None for
 * frozen convs, else (kernel, bias, slots) with slots a 4-tuple of arrays / None. */
static int parse_tail(PyObject *spec, vgg16_tail *t, int nslots) {
    memset(t, 0, sizeof *t);
    PyObject *convs;
    if (!PyArg_ParseTuple(spec, "iO;tail: expected (start_layer, convs)", &t->start_layer, &convs))
        return -1;
    if (t->start_layer < 1 || t->start_layer > VGG16_BLOCK5_POOL ||
        vgg16_layer_kind(t->start_layer) != VGG16_KIND_CONV) {
        PyErr_Format(PyExc_ValueError, "tail: start_layer %d is not a conv layer after the "
                     "first", t->start_layer);
        return -1;
    }
    if (!PyTuple_Check(convs) || PyTuple_GET_SIZE(convs) != VGG16_NUM_CONV) {
        PyErr_Format(PyExc_ValueError, "tail: expected a tuple of %d conv entries", VGG16_NUM_CONV);
        return -1;
    }
    static const size_t cin_of[VGG16_NUM_CONV] = {3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512};
    static const size_t cout_of[VGG16_NUM_CONV] = {64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512};
    for (int k = 0; k < VGG16_NUM_CONV; k++) {
        PyObject *e = PyTuple_GET_ITEM(convs, k);
        if (e == Py_None) continue;
        PyObject *ko, *bo, *so;
        if (!PyArg_ParseTuple(e, "OOO;tail: expected (kernel, bias, slots) per trainable conv",
                              &ko, &bo, &so))
            return -1;
        PyArrayObject *kk = check_array(ko, "tail kernel", F32_ONLY, 4, 1);
        PyArrayObject *bb = kk ? check_array(bo, "tail bias", F32_ONLY, 1, 1) : NULL;
        if (!bb) return -1;
        if (dim(kk, 0) != 3 || dim(kk, 1) != 3 || dim(kk, 2) != cin_of[k] ||
            dim(kk, 3) != cout_of[k] || dim(bb, 0) != cout_of[k]) {
            PyErr_Format(PyExc_ValueError, "tail: conv %d has the wrong shape", k);
            return -1;
        }
        t->kernel[k] = PyArray_DATA(kk);
        t->bias[k] = PyArray_DATA(bb);
        if (!PyTuple_Check(so) || PyTuple_GET_SIZE(so) != 4) {
            PyErr_SetString(PyExc_ValueError, "tail: expected 4 optimizer slots per conv");
            return -1;
        }
        for (int s = 0; s < 4; s++) {
            if ((s % 2) >= nslots) continue;
            PyArrayObject *a = check_array(PyTuple_GET_ITEM(so, s), "tail slot", F32_ONLY, -1, 1);
            if (!a) return -1;
            if ((size_t)PyArray_SIZE(a) != (s < 2 ? 9 * cin_of[k] * cout_of[k] : cout_of[k])) {
                PyErr_Format(PyExc_ValueError, "tail: optimizer slot %d of conv %d has the wrong size", s, k);
                return -1;
            }
            t->slots[k][s] = PyArray_DATA(a);
        }
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
    static const int I64[] = {NPY_INT64, -1};
    PyArrayObject *order = check_array(ordo, "order", I64, 1, 1);
    if (!order || check_dim(order, "order", 0, dim(x, 0))) return NULL;
    vgg_targets tg;
    if (parse_targets(&tg, loss, yo, swo, dim(x, 0), vgg_head_output_size(&hd))) return NULL;
    float *outputs;
    if (parse_outputs(outo, dim(x, 0), vgg_head_output_size(&hd), &outputs)) return NULL;
    vgg_fit_stats stats;
    int64_t it = (int64_t)iterations;
    RELEASE_GIL(s);
    int st = vgg16_finetune_fit_epoch(&stats, &t, &hd, &opt, &it, PyArray_DATA(x), feature_dtype(x),
                                      dim(x, 0), dim(x, 1), dim(x, 2), &tg, (size_t)batch, shuffle,
                                      seed, epoch, PyArray_DATA(order), outputs, PyArray_DATA(ws),
                                      dim(ws, 0), py_abort_cb, &s);
    ACQUIRE_GIL(s);
    return epoch_result(st, &stats, it, "finetune_fit_epoch");
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
    for (Py_ssize_t i = 0; i < 2 * VGG16_NUM_CONV; i++) {
        size_t dims[4];
        const char *lname;
        const int nd = param_shape((int)i, 0, dims, &lname);
        char name[64];
        PyOS_snprintf(name, sizeof name, "params[%zd] (%s %s)", i, lname, i % 2 ? "bias" : "kernel");
        PyArrayObject *a = check_array(PySequence_Fast_GET_ITEM(seq, i), name, F32_ONLY, nd, 0);
        if (!a) goto done;
        for (int d = 0; d < nd; d++)
            if (check_dim(a, name, d, dims[d])) goto done;
        if (i % 2) wt.conv_bias[i / 2] = PyArray_DATA(a);
        else wt.conv_kernel[i / 2] = PyArray_DATA(a);
    }
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
    cam = (PyArrayObject *)PyArray_EMPTY(3, cshape, NPY_FLOAT32, 0);
    ws = cam ? (PyArrayObject *)PyArray_EMPTY(1, wshape, NPY_FLOAT32, 0) : NULL;
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

/* ------------------------------------------------------------------------ */
/* module                                                                   */

#define KW (PyCFunction)(void (*)(void))

static PyMethodDef methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n)\n\nThreads for OpenMP regions and BLAS (one knob for both)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"build_info", py_build_info, METH_NOARGS, "build_info() -> dict(openmp, blas, blas_coretype)"},
    {"isa_supported", py_isa_supported, METH_O,
     "isa_supported(name) -> bool\n\nname: 'portable', 'avx2', 'avx512' or 'avx512_bf16'."},
    {"set_isa", py_set_isa, METH_O,
     "set_isa(name)\n\nThe instruction set of vggtl's own kernels: 'best', 'portable', 'avx2', "
     "'avx512', 'avx512_bf16'; ValueError if this CPU lacks it."},
    {"get_isa", py_get_isa, METH_NOARGS, "get_isa() -> the instruction set in use"},
    {"set_conv_algo", py_set_conv_algo, METH_O,
     "set_conv_algo(name)\n\n3x3 convolutions: 'auto' (by shape), 'im2col', 'winograd' "
     "(F(4x4)) or 'winograd6' (F(6x6))."},
    {"get_conv_algo", py_get_conv_algo, METH_NOARGS, "get_conv_algo() -> the setting"},
    {"conv3x3_prepare", KW py_conv3x3_prepare, METH_VARARGS | METH_KEYWORDS,
     "conv3x3_prepare(kernel, algo) -> float32 array: the kernel (3, 3, Cin, Cout) in the form "
     "algo ('im2col', 'winograd', 'winograd6', 'winograd_bf16') computes with, for "
     "vgg16_forward's prepared="},
    {"conv3x3_algo", KW py_conv3x3_algo, METH_VARARGS | METH_KEYWORDS,
     "conv3x3_algo(h, w, cin, cout, *, precision='fp32') -> 'im2col', 'winograd', "
     "'winograd6' or 'winograd_bf16': what a layer of this shape runs"},
    {"bf16_native", py_bf16_native, METH_NOARGS,
     "bf16_native() -> bool: bf16 products run on VDPBF16PS (else in plain C, same bits)"},
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
    {"vgg16_layers", py_vgg16_layers, METH_NOARGS,
     "vgg16_layers() -> tuple of (name, kind, units) in Keras's order"},
    {"vgg16_output_shape", KW py_vgg16_output_shape, METH_VARARGS | METH_KEYWORDS,
     "vgg16_output_shape(stop_layer, pooling, classes, h, w) -> (oh, ow, oc)"},
    {"vgg16_workspace_floats", KW py_vgg16_workspace_floats, METH_VARARGS | METH_KEYWORDS,
     "vgg16_workspace_floats(stop_layer, pooling, batch, h, w, start_layer=0, *, prepared=False, "
     "threads=0) -> int (prepared: for a call with every kernel prepared; threads: the "
     "convolutions' buffers for that many threads, 0: the knob's count)"},
    {"vgg16_forward", KW py_vgg16_forward, METH_VARARGS | METH_KEYWORDS,
     "vgg16_forward(x, params, stop_layer, pooling, scale, shift, reverse_channels, "
     "workspace, out=None, start_layer=0, *, precision='fp32') -> features"},
    {"vgg16_forward_images", py_vgg16_forward_images, METH_NOARGS,
     "vgg16_forward_images() -> int: images run through vgg16_forward since load"},
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
     "optimizer_step(param, grad, slot0, slot1, optimizer tuple, iterations) -> None (in place)"},
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
    {"conv3x3_backward", KW py_conv3x3_backward, METH_VARARGS | METH_KEYWORDS,
     "conv3x3_backward(dout (N,H,W,Cout), x (N,H,W,Cin), kernel (3,3,Cin,Cout), need_dx=True) "
     "-> (dx|None, dw, db); dout is the gradient before the activation"},
    {"maxpool2x2_backward", KW py_maxpool2x2_backward, METH_VARARGS | METH_KEYWORDS,
     "maxpool2x2_backward(dout (N,H//2,W//2,C), x (N,H,W,C)) -> dx"},
    {"finetune_workspace_floats", KW py_finetune_workspace_floats, METH_VARARGS | METH_KEYWORDS,
     "finetune_workspace_floats(tail, head, batch, h, w) -> int"},
    {"vgg16_grad_cam", KW py_vgg16_grad_cam, METH_VARARGS | METH_KEYWORDS,
     "vgg16_grad_cam(maps, layer, params, head, class_index, batch) -> cam (n, h, w)\n\n"
     "Grad-CAM at the output maps (n, h, w, c) of base layer `layer`: params are the 13\n"
     "conv kernels and biases, head a head spec whose input is block5_pool's output;\n"
     "class_index (n,) int32: the class per image, -1 for the highest (written back)."},
    {"finetune_fit_epoch", KW py_finetune_fit_epoch, METH_VARARGS | METH_KEYWORDS,
     "finetune_fit_epoch(x, tail, head, optimizer, iterations, loss, y, sample_weight, batch, "
     "shuffle, seed, epoch, order, workspace, outputs=None) -> (loss_sum, correct, seen, batches, "
     "iterations, grad_batches)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_core",
    "vggtl's C core (private): VGG16 layers and network, NHWC float32.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    (void)vgg_get_num_threads(); /* initialise the thread count once, at import */
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddIntConstant(m, "POOL_NONE", VGG_POOL_NONE) ||
        PyModule_AddIntConstant(m, "POOL_AVG", VGG_POOL_AVG) ||
        PyModule_AddIntConstant(m, "POOL_MAX", VGG_POOL_MAX)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
