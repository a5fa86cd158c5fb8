/*
 * glue.c - the helpers csrc/py/glue.h declares: array checks, exceptions from
 * status codes, the abort callback, and the parsers shared by several entry
 * points. Built into both extension modules.
 */
#include "glue.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
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

/* x as Python's repr writes it, for messages (PyErr_Format has no %g) */
static void real_text(char *buf, size_t size, double x) {
    char *r = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    PyOS_snprintf(buf, size, "%s", r ? r : "?");
    if (r) PyMem_Free(r);
    else PyErr_Clear();
}

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
                                                    "winograd_bf16", "winograd6",
                                                    "winograd_bf16_amx", "winograd3"};
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

const char *const ACTIVATION_NAMES[VGG_NUM_ACTIVATIONS] = {"linear", "relu", "softmax",
                                                            "sigmoid"};

int parse_activation(const char *s, int *act) {
    const int i = name_index("activation", s, ACTIVATION_NAMES, VGG_NUM_ACTIVATIONS);
    if (i < 0) return -1;
    *act = i;
    return 0;
}

int parse_rate(double rate) {
    if (!(rate >= 0.0 && rate < 1.0)) {
        char got[64];
        real_text(got, sizeof got, rate);
        PyErr_Format(PyExc_ValueError, "rate: expected 0 <= rate < 1, got %s", got);
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

/* ------------------------------------------------------------------------ */
/* specs                                                                    */

/* "'a', 'b', 'c'" for messages */
static void key_list(char *buf, size_t size, const char *const *keys) {
    buf[0] = '\0';
    for (int i = 0; keys[i]; i++) {
        const size_t len = strlen(buf);
        PyOS_snprintf(buf + len, size - len, "%s'%s'", i ? ", " : "", keys[i]);
    }
}

/* v is a NumPy integer (or floating) scalar of one of NumPy's own types; a
 * subclass defined in Python (a heap type) is not, as its methods could run
 * the caller's code while a spec is read. */
static int numpy_scalar(PyObject *v, int integer) {
    if (PyType_HasFeature(Py_TYPE(v), Py_TPFLAGS_HEAPTYPE)) return 0;
    return integer ? PyArray_IsScalar(v, Integer) : PyArray_IsScalar(v, Floating);
}

/* Raises exc with "path: <what> (expected the keys 'a', 'b')" or, for a
 * non-dict, "path: expected a dict with the keys 'a', 'b', got <what>". */
static int keys_error(PyObject *exc, const char *path, const char *const *keys, int not_dict,
                      const char *what) {
    char expected[512];
    key_list(expected, sizeof expected, keys);
    if (not_dict)
        PyErr_Format(exc, "%s: expected a dict with the keys %s, got %s", path, expected, what);
    else
        PyErr_Format(exc, "%s: %s (expected the keys %s)", path, what, expected);
    return -1;
}

static int open_keys(spec_view *s, PyObject *d, const char *path, const char *const *keys,
                     int strict) {
    s->keys = keys;
    int nk = 0;
    while (keys[nk]) {
        if (nk == SPEC_MAX_KEYS) {
            PyErr_Format(PyExc_SystemError, "%s: more than %d keys", path, SPEC_MAX_KEYS);
            return -1;
        }
        s->value[nk++] = NULL;
    }
    s->path = path;
    if (!PyDict_Check(d)) return keys_error(PyExc_TypeError, path, keys, 1, Py_TYPE(d)->tp_name);
    char what[160];
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(d, &pos, &k, &v)) {
        if (!PyUnicode_Check(k)) {
            PyOS_snprintf(what, sizeof what, "expected str keys, got a key of type %.80s",
                          Py_TYPE(k)->tp_name);
            return keys_error(PyExc_TypeError, path, keys, 0, what);
        }
        Py_ssize_t len;
        const char *ks = PyUnicode_AsUTF8AndSize(k, &len);
        if (!ks) {
            PyErr_Clear();
            return keys_error(PyExc_ValueError, path, keys, 0, "got a key that is not UTF-8");
        }
        int i = 0;
        while (keys[i] && !(strlen(keys[i]) == (size_t)len && memcmp(keys[i], ks, len) == 0)) i++;
        if (keys[i]) {
            s->value[i] = v;
        } else if (strict) {
            PyOS_snprintf(what, sizeof what, "unknown key '%.80s'", ks);
            return keys_error(PyExc_ValueError, path, keys, 0, what);
        }
    }
    for (int i = 0; i < nk; i++)
        if (!s->value[i]) {
            PyOS_snprintf(what, sizeof what, "missing key '%s'", keys[i]);
            return keys_error(PyExc_ValueError, path, keys, 0, what);
        }
    return 0;
}

int spec_open(spec_view *s, PyObject *d, const char *path, const char *const *keys) {
    return open_keys(s, d, path, keys, 1);
}

int spec_peek(spec_view *s, PyObject *d, const char *path, const char *const *keys) {
    return open_keys(s, d, path, keys, 0);
}

PyObject *spec_value(const spec_view *s, const char *key) {
    for (int i = 0; s->keys[i]; i++)
        if (strcmp(s->keys[i], key) == 0) return s->value[i];
    PyErr_Format(PyExc_SystemError, "%s: '%s' is not one of the spec's keys", s->path, key);
    return NULL;
}

/* "path['key']" in buf */
static const char *key_name(char *buf, size_t size, const spec_view *s, const char *key) {
    PyOS_snprintf(buf, size, "%s['%s']", s->path, key);
    return buf;
}

int value_int(PyObject *v, const char *name, long long lo, long long hi, long long *out) {
    if (PyBool_Check(v) || !(PyLong_Check(v) || numpy_scalar(v, 1))) {
        PyErr_Format(PyExc_TypeError, "%s: expected an int, got %s", name, Py_TYPE(v)->tp_name);
        return -1;
    }
    /* an int (a subclass's too) is read from its C value; a NumPy integer
     * through NumPy's own C method */
    PyObject *i = v;
    if (PyLong_Check(v)) Py_INCREF(i);
    else if (!(i = PyNumber_Index(v))) return -1;
    int overflow;
    const long long x = PyLong_AsLongLongAndOverflow(i, &overflow);
    Py_DECREF(i);
    if (x == -1 && PyErr_Occurred()) return -1;
    if (overflow || x < lo || x > hi) {
        if (overflow)
            PyErr_Format(PyExc_ValueError, "%s: expected an int in [%lld, %lld], got one "
                         "beyond 64 bits", name, lo, hi);
        else
            PyErr_Format(PyExc_ValueError, "%s: expected an int in [%lld, %lld], got %lld",
                         name, lo, hi, x);
        return -1;
    }
    *out = x;
    return 0;
}

/* Each spec_* reader first takes the common, valid case without formatting
 * anything (fast: a head is read on every call); anything else goes to the full
 * check, which names the key in its message, and is the only one that raises. */

int spec_int(const spec_view *s, const char *key, long long lo, long long hi, long long *v) {
    PyObject *o = spec_value(s, key);
    if (!o) return -1;
    if (PyLong_Check(o) && !PyBool_Check(o)) {
        int overflow;
        const long long x = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (!overflow && x >= lo && x <= hi) {
            *v = x;
            return 0;
        }
    }
    char name[160];
    return value_int(o, key_name(name, sizeof name, s, key), lo, hi, v);
}

static int in_range(double x, int range) {
    return isfinite(x) && (range == SPEC_POSITIVE      ? x > 0.0
                           : range == SPEC_NONNEGATIVE ? x >= 0.0
                                                       : x >= 0.0 && x < 1.0);
}

int spec_real(const spec_view *s, const char *key, int range, double *v) {
    static const char *const RANGES[] = {"> 0", ">= 0", "in [0, 1)"};
    PyObject *o = spec_value(s, key);
    if (!o) return -1;
    /* a float, a subclass's too (numpy.float64): its C value */
    if (PyFloat_Check(o) && in_range(PyFloat_AS_DOUBLE(o), range)) {
        *v = PyFloat_AS_DOUBLE(o);
        return 0;
    }
    char name[160];
    key_name(name, sizeof name, s, key);
    if (PyBool_Check(o) || !(PyFloat_Check(o) || PyLong_Check(o) || numpy_scalar(o, 0) ||
                             numpy_scalar(o, 1))) {
        PyErr_Format(PyExc_TypeError, "%s: expected a number, got %s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    double x;
    if (PyFloat_Check(o)) {
        x = PyFloat_AS_DOUBLE(o);
    } else if (PyLong_Check(o)) {
        x = PyLong_AsDouble(o);
        if (x == -1.0 && PyErr_Occurred()) { /* beyond a double */
            PyErr_Clear();
            x = HUGE_VAL;
        }
    } else {
        PyObject *f = PyNumber_Float(o); /* a NumPy scalar's own C method */
        if (!f) return -1;
        x = PyFloat_AS_DOUBLE(f);
        Py_DECREF(f);
    }
    if (!in_range(x, range)) {
        char got[64] = "an int beyond a double";
        if (x != HUGE_VAL || !PyLong_Check(o)) real_text(got, sizeof got, x);
        PyErr_Format(PyExc_ValueError, "%s: expected a finite number %s, got %s", name,
                     RANGES[range], got);
        return -1;
    }
    *v = x;
    return 0;
}

int spec_bool(const spec_view *s, const char *key, int *v) {
    PyObject *o = spec_value(s, key);
    if (!o) return -1;
    if (!PyBool_Check(o) && !(PyArray_IsScalar(o, Bool) &&
                              !PyType_HasFeature(Py_TYPE(o), Py_TPFLAGS_HEAPTYPE))) {
        char name[160];
        PyErr_Format(PyExc_TypeError, "%s: expected True or False, got %s",
                     key_name(name, sizeof name, s, key), Py_TYPE(o)->tp_name);
        return -1;
    }
    const int t = PyObject_IsTrue(o); /* a NumPy bool's own C method */
    if (t < 0) return -1;
    *v = t;
    return 0;
}

int spec_choice(const spec_view *s, const char *key, const char *const *names, int count, int *v) {
    PyObject *o = spec_value(s, key);
    if (!o) return -1;
    char name[160];
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a str, got %s",
                     key_name(name, sizeof name, s, key), Py_TYPE(o)->tp_name);
        return -1;
    }
    Py_ssize_t len;
    const char *str = PyUnicode_AsUTF8AndSize(o, &len);
    if (!str) return -1;
    /* a NUL inside the str would end it early: no name has one */
    if ((size_t)len != strlen(str)) str = "";
    for (int i = 0; i < count; i++)
        if (strcmp(str, names[i]) == 0) {
            *v = i;
            return 0;
        }
    return name_index(key_name(name, sizeof name, s, key), str, names, count);
}

/* "(3, 3, 512)" in buf */
static void shape_text(char *buf, size_t size, int ndim, const size_t *shape) {
    PyOS_snprintf(buf, size, "(");
    for (int i = 0; i < ndim; i++) {
        const size_t len = strlen(buf);
        PyOS_snprintf(buf + len, size - len, "%s%zu", i ? ", " : "", shape[i]);
    }
    const size_t len = strlen(buf);
    PyOS_snprintf(buf + len, size - len, ndim == 1 ? ",)" : ")");
}

/* v is an array value_array would take, unnamed (no message) */
static PyArrayObject *array_ok(PyObject *v, const int *types, int ndim, const size_t *shape,
                               int writeable) {
    if (!PyArray_Check(v)) return NULL;
    PyArrayObject *a = (PyArrayObject *)v;
    int ok = 0;
    for (const int *t = types; *t >= 0; t++) ok |= PyArray_TYPE(a) == *t;
    if (!ok || !PyArray_ISNOTSWAPPED(a) || PyArray_NDIM(a) != ndim ||
        !PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a) ||
        (writeable && !PyArray_ISWRITEABLE(a)))
        return NULL;
    for (int i = 0; shape && i < ndim; i++)
        if (dim(a, i) != shape[i]) return NULL;
    return a;
}

/* check_array and the shape, named `name` in messages */
static PyArrayObject *value_array(PyObject *v, const char *name, const int *types, int ndim,
                                  const size_t *shape, int writeable) {
    PyArrayObject *a = check_array(v, name, types, ndim, writeable);
    if (!a || !shape) return a;
    for (int i = 0; i < ndim; i++)
        if (dim(a, i) != shape[i]) {
            size_t got[NPY_MAXDIMS];
            for (int j = 0; j < ndim; j++) got[j] = dim(a, j);
            char e[128], g[128];
            shape_text(e, sizeof e, ndim, shape);
            shape_text(g, sizeof g, ndim, got);
            PyErr_Format(PyExc_ValueError, "%s: expected shape %s, got %s", name, e, g);
            return NULL;
        }
    return a;
}

PyArrayObject *spec_array(const spec_view *s, const char *key, const int *types, int ndim,
                          const size_t *shape, int writeable) {
    PyObject *o = spec_value(s, key);
    if (!o) return NULL;
    PyArrayObject *a = array_ok(o, types, ndim, shape, writeable);
    char name[160];
    return a ? a : value_array(o, key_name(name, sizeof name, s, key), types, ndim, shape,
                               writeable);
}

int spec_list(const spec_view *s, const char *key, Py_ssize_t min, Py_ssize_t max, PyObject **seq,
              Py_ssize_t *n) {
    PyObject *o = spec_value(s, key);
    if (!o) return -1;
    char name[160];
    if (!PyList_Check(o) && !PyTuple_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a list or tuple, got %s",
                     key_name(name, sizeof name, s, key), Py_TYPE(o)->tp_name);
        return -1;
    }
    *n = PySequence_Fast_GET_SIZE(o);
    if (*n < min || *n > max) {
        key_name(name, sizeof name, s, key);
        if (min == max)
            PyErr_Format(PyExc_ValueError, "%s: expected %zd items, got %zd", name, min, *n);
        else
            PyErr_Format(PyExc_ValueError, "%s: expected %zd to %zd items, got %zd", name, min,
                         max, *n);
        return -1;
    }
    *seq = o;
    return 0;
}

int parse_slots(PyObject *o, const char *path, int nslots, int kndim, const size_t *kshape,
                size_t units, float *slots[4]) {
    static const char *const KEYS[] = {"kernel", "bias", NULL};
    for (int i = 0; i < 4; i++) slots[i] = NULL;
    if (o == Py_None) {
        if (nslots == 0) return 0;
        PyErr_Format(PyExc_ValueError, "%s: expected the optimizer's state, a dict with the keys "
                     "'kernel', 'bias' (%d slot%s each), got None", path, nslots,
                     nslots > 1 ? "s" : "");
        return -1;
    }
    spec_view s;
    if (spec_open(&s, o, path, KEYS)) return -1;
    for (int p = 0; p < 2; p++) {
        PyObject *pair;
        Py_ssize_t n;
        if (spec_list(&s, KEYS[p], 2, 2, &pair, &n)) return -1;
        for (int j = 0; j < 2; j++) {
            PyObject *v = PySequence_Fast_GET_ITEM(pair, j);
            PyArrayObject *a = p == 0 ? array_ok(v, F32_ONLY, kndim, kshape, 1)
                                      : array_ok(v, F32_ONLY, 1, &units, 1);
            if (a) {
                slots[2 * p + j] = PyArray_DATA(a);
                continue;
            }
            char name[160];
            PyOS_snprintf(name, sizeof name, "%s['%s'][%d]", path, KEYS[p], j);
            if (v == Py_None) {
                if (j < nslots) {
                    PyErr_Format(PyExc_ValueError, "%s: expected an array (the optimizer keeps "
                                 "%d slot%s per parameter), got None", name, nslots,
                                 nslots > 1 ? "s" : "");
                    return -1;
                }
                continue;
            }
            a = p == 0 ? value_array(v, name, F32_ONLY, kndim, kshape, 1)
                       : value_array(v, name, F32_ONLY, 1, &units, 1);
            if (!a) return -1;
            slots[2 * p + j] = PyArray_DATA(a);
        }
    }
    return 0;
}

int parse_optimizer(PyObject *o, vgg_optimizer *opt) {
    static const char *const KIND[] = {"kind", NULL};
    static const char *const KEYS[3][7] = {
        [VGG_OPT_SGD] = {"kind", "learning_rate", "decay", "momentum", "nesterov", NULL},
        [VGG_OPT_ADAM] = {"kind", "learning_rate", "decay", "beta_1", "beta_2", "epsilon", NULL},
        [VGG_OPT_RMSPROP] = {"kind", "learning_rate", "decay", "rho", "momentum", "epsilon", NULL},
    };
    static const char *const SCHEDULE[] = {"per_step", "first_iteration", NULL};
    memset(opt, 0, sizeof *opt);
    spec_view s;
    long long kind;
    if (spec_peek(&s, o, "optimizer", KIND)) return -1;
    if (spec_int(&s, "kind", LLONG_MIN, LLONG_MAX, &kind)) return -1;
    if (kind < VGG_OPT_SGD || kind > VGG_OPT_RMSPROP) {
        PyErr_Format(PyExc_ValueError, "optimizer['kind']: expected OPT_SGD (%d), OPT_ADAM (%d) "
                     "or OPT_RMSPROP (%d), got %lld", VGG_OPT_SGD, VGG_OPT_ADAM, VGG_OPT_RMSPROP,
                     kind);
        return -1;
    }
    opt->kind = (int)kind;
    if (spec_open(&s, o, "optimizer", KEYS[kind]) ||
        spec_real(&s, "decay", SPEC_NONNEGATIVE, &opt->decay))
        return -1;
    PyObject *lr = spec_value(&s, "learning_rate");
    if (lr && PyDict_Check(lr)) {
        spec_view t;
        long long first;
        PyArrayObject *a = NULL;
        if (spec_open(&t, lr, "optimizer['learning_rate']", SCHEDULE) ||
            !(a = spec_array(&t, "per_step", F64_ONLY, 1, NULL, 0)) ||
            spec_int(&t, "first_iteration", 0, INT64_MAX, &first))
            return -1;
        if (dim(a, 0) < 1) {
            PyErr_SetString(PyExc_ValueError, "optimizer['learning_rate']['per_step']: expected "
                            "at least one learning rate, got 0");
            return -1;
        }
        opt->lr_steps = PyArray_DATA(a);
        opt->lr_count = dim(a, 0);
        opt->lr_first = (int64_t)first;
        /* the table replaces the learning rate, which the core still checks is positive */
        opt->learning_rate = 1.0;
    } else if (spec_real(&s, "learning_rate", SPEC_POSITIVE, &opt->learning_rate)) {
        return -1;
    }
    switch (opt->kind) {
    case VGG_OPT_SGD:
        return spec_real(&s, "momentum", SPEC_NONNEGATIVE, &opt->momentum) ||
               spec_bool(&s, "nesterov", &opt->nesterov) ? -1 : 0;
    case VGG_OPT_ADAM:
        return spec_real(&s, "beta_1", SPEC_UNIT, &opt->beta_1) ||
               spec_real(&s, "beta_2", SPEC_UNIT, &opt->beta_2) ||
               spec_real(&s, "epsilon", SPEC_POSITIVE, &opt->epsilon) ? -1 : 0;
    default:
        return spec_real(&s, "rho", SPEC_UNIT, &opt->rho) ||
               spec_real(&s, "momentum", SPEC_NONNEGATIVE, &opt->momentum) ||
               spec_real(&s, "epsilon", SPEC_POSITIVE, &opt->epsilon) ? -1 : 0;
    }
}
