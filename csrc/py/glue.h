/*
 * glue.h - what every file of the CPython / NumPy glue shares: the array checks,
 * the status-to-exception mapping, the GIL release with Ctrl-C, and the parsers
 * of arguments more than one entry point takes. Only csrc/py/ includes Python.h.
 *
 * An entry point parses its arguments, checks every array (dtype, ndim, shape,
 * C-contiguous, aligned, native byte order, writeable for outputs) and raises
 * TypeError / ValueError naming the argument, what was expected and what came;
 * allocates outputs with the GIL held; calls the core with the GIL released;
 * maps the status to an exception. No loops over data, no maths. Conversions
 * (dtype, contiguity) are the Python package's job: nothing is cast here.
 *
 * Two extension modules are built from csrc/py/: vggtl._core (every file but
 * kernels.c, linked with the core) and vggtl._kernels (glue.c and kernels.c:
 * single kernels for the tests, calling the core of vggtl._core through the
 * table in core_api.h, so both modules share one thread count, instruction set
 * and convolution setting).
 */
#ifndef VGGTL_GLUE_H
#define VGGTL_GLUE_H

#define PY_SSIZE_T_CLEAN
#define NPY_NO_DEPRECATED_API NPY_2_0_API_VERSION
/* one NumPy API table per extension, imported by the file that defines
 * VGGTL_IMPORT_ARRAY (the module's init) */
#define PY_ARRAY_UNIQUE_SYMBOL vggtl_ARRAY_API
#ifndef VGGTL_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#include <Python.h>
#include <numpy/arrayobject.h>

#include "vgg.h"
#include "core_api.h"

/* ------------------------------------------------------------------------ */
/* errors and array checks                                                  */

/* Sets the exception a status calls for (ARG/SHAPE: ValueError, NOMEM:
 * MemoryError, CANCELLED: the pending KeyboardInterrupt) and returns NULL. */
PyObject *raise_status(int st, const char *what);
/* out when st is VGG_OK; else drops out and raises as raise_status. */
PyObject *out_or_raise(int st, PyArrayObject *out, const char *what);

/* NULL-terminated type lists for check_array (terminated by -1) */
extern const int F32_ONLY[], F64_ONLY[], I32_ONLY[], I64_ONLY[], IMAGE_TYPES[],
    FEATURE_TYPES[];

/* "f4", "u1", ...: the dtype of a for messages (a static buffer) */
const char *dtype_name(PyArrayObject *a);
/* Checks obj is an ndarray of one of the type numbers, of ndim dims (ndim < 0:
 * any), C-contiguous, aligned, native order, and writeable if asked. Returns a
 * borrowed pointer or NULL with an exception. */
PyArrayObject *check_array(PyObject *obj, const char *name, const int *types, int ndim,
                           int writeable);
/* VGG_U8, VGG_F32 or VGG_F64 for an IMAGE_TYPES array */
int core_dtype(PyArrayObject *a);
/* VGG_F16 or VGG_F32 for a FEATURE_TYPES array */
int feature_dtype(PyArrayObject *a);
static inline size_t dim(PyArrayObject *a, int i) { return (size_t)PyArray_DIM(a, i); }
/* 0, or -1 with a ValueError when axis i of a is not `expected` long */
int check_dim(PyArrayObject *a, const char *name, int i, size_t expected);
/* A new float32 C-contiguous array of this shape. */
PyArrayObject *new_f32(int ndim, const npy_intp *shape);
/* new_f32, or when `out` is given, checks it is a writeable float32 array of
 * exactly that shape and returns a new reference to it. */
PyArrayObject *make_output(PyObject *out, int ndim, npy_intp *shape);

/* ------------------------------------------------------------------------ */
/* releasing the GIL, with Ctrl-C                                           */

/* Long calls pass the core py_abort_cb: at most every 100 ms it takes the GIL
 * back and runs PyErr_CheckSignals(); a pending KeyboardInterrupt makes the core
 * stop between chunks and the call raise it. */
typedef struct {
    PyThreadState *ts;
    double last;
} abort_state;

double monotonic_s(void);
int py_abort_cb(void *ctx);

#define RELEASE_GIL(s)              \
    abort_state s = {NULL, 0.0};    \
    s.last = monotonic_s();         \
    s.ts = PyEval_SaveThread()
#define ACQUIRE_GIL(s) PyEval_RestoreThread(s.ts)

/* st = call, with the GIL released (short calls: no abort callback) */
#define CALL_NOGIL(st, call)   \
    Py_BEGIN_ALLOW_THREADS     \
    (st) = (call);             \
    Py_END_ALLOW_THREADS

extern const char FORKED_MSG[];
/* Before a long call: one RuntimeWarning in a process forked after vggtl's
 * threads had started, and a RuntimeError, not libgomp's exit, when this
 * thread's team cannot be started. 0, or -1 with an exception set. */
int threads_ready(void);

/* ------------------------------------------------------------------------ */
/* arguments several entry points take                                      */

/* Index of `name` among names[0..count), or -1 with a ValueError naming arg. */
int name_index(const char *arg, const char *name, const char *const *names, int count);
/* The names the core's enums take in Python, indexed by the enum value:
 * ISA_NAMES by enum vgg_isa (from VGG_ISA_PORTABLE), ALGO_NAMES by enum
 * vgg_conv_algo, PRECISION_NAMES by enum vgg_precision. */
#define VGG_NUM_ISAS 5
#define VGG_NUM_CONV_ALGOS 7
#define VGG_NUM_PRECISIONS 2
extern const char *const ISA_NAMES[VGG_NUM_ISAS];
extern const char *const ALGO_NAMES[VGG_NUM_CONV_ALGOS];
extern const char *const PRECISION_NAMES[VGG_NUM_PRECISIONS];
/* A precision name ("fp32", "bf16"; NULL: fp32) -> enum vgg_precision, or -1
 * with a ValueError. */
int parse_precision(const char *name);
/* three floats from a Python sequence */
int parse_float3(PyObject *o, const char *name, float v[3]);
/* "linear", "relu", "softmax", "sigmoid" -> enum vgg_activation (ACTIVATION_NAMES
 * is indexed by it) */
#define VGG_NUM_ACTIVATIONS 4
extern const char *const ACTIVATION_NAMES[VGG_NUM_ACTIVATIONS];
int parse_activation(const char *s, int *act);
/* 0 <= rate < 1, else -1 with a ValueError */
int parse_rate(double rate);
/* Targets of a loss: (n, c) float32 for BCE / CCE, (n,) int32 labels in [0, c)
 * for sparse; sample weights (n,) float32 or None. Borrowed pointers into *t. */
int parse_targets(vgg_targets *t, int loss, PyObject *to, PyObject *swo, size_t n, size_t c);

/* ------------------------------------------------------------------------ */
/* specs: the dicts that describe an optimizer, a head and a tail            */

/* A spec is a dict with a fixed set of str keys. spec_open refuses anything
 * else: not a dict, a key that is not a str, a missing key and an unknown one
 * (a misspelt key is never ignored). `path` (kept by pointer) names the dict
 * in messages ("optimizer", "head['layers'][2]"); every error names
 * path['key'], what was expected and what came; nothing is formatted while
 * the spec is valid (a head is read on every call). Values are borrowed from
 * the dict, and so are the arrays whose data a call reads: the caller's
 * reference to the spec keeps them alive, and nothing may change the spec
 * during the call. No Python code of the caller's runs while a spec is read
 * (dicts are walked with PyDict_Next, numbers read from their C value,
 * classes defined in Python refused but for subclasses of dict, str, int and
 * float), so nothing can change it under the parser either. */
#define SPEC_MAX_KEYS 16
typedef struct {
    const char *path;               /* the caller's, for messages */
    const char *const *keys;        /* NULL-terminated, at most SPEC_MAX_KEYS */
    PyObject *value[SPEC_MAX_KEYS]; /* borrowed, by key index */
} spec_view;

/* Opens d as a spec of exactly these keys. 0, or -1 with an exception. */
int spec_open(spec_view *s, PyObject *d, const char *path, const char *const *keys);
/* Opens d reading only these keys (the others are left for a spec_open that
 * follows, once one of these, a kind or a type, has told which keys belong). */
int spec_peek(spec_view *s, PyObject *d, const char *path, const char *const *keys);
/* The value of a key of the spec (borrowed). */
PyObject *spec_value(const spec_view *s, const char *key);
/* An int (a Python int or a NumPy integer, not a bool) in [lo, hi]. */
int spec_int(const spec_view *s, const char *key, long long lo, long long hi, long long *v);
/* A finite real number (an int, a float or a NumPy scalar, not a bool) in a range. */
enum spec_range { SPEC_POSITIVE, SPEC_NONNEGATIVE, SPEC_UNIT }; /* > 0, >= 0, [0, 1) */
int spec_real(const spec_view *s, const char *key, int range, double *v);
/* True or False (a Python or NumPy bool) as 1 or 0. */
int spec_bool(const spec_view *s, const char *key, int *v);
/* A str among names[0..count) -> its index. */
int spec_choice(const spec_view *s, const char *key, const char *const *names, int count, int *v);
/* An array as check_array takes it (types, ndim dims, writeable if asked), of
 * exactly this shape unless shape is NULL. Borrowed, or NULL with an exception. */
PyArrayObject *spec_array(const spec_view *s, const char *key, const int *types, int ndim,
                          const size_t *shape, int writeable);
/* A list or tuple of min..max items: *seq borrowed, its length in *n. */
int spec_list(const spec_view *s, const char *key, Py_ssize_t min, Py_ssize_t max, PyObject **seq,
              Py_ssize_t *n);
/* spec_int's checks on a value that is not in a spec (an item of a list),
 * named `name` in messages. */
int value_int(PyObject *v, const char *name, long long lo, long long hi, long long *out);

/* A parameter's optimizer state, the value of a dense layer's or a conv's
 * "slots": None, or {"kernel": (slot0, slot1), "bias": (slot0, slot1)} with
 * each slot None or a writeable float32 array of its parameter's shape
 * (kernel: kndim dims of kshape; bias: (units,)); the optimizer's first nslots
 * of each pair must be arrays. Writes kernel slot0, slot1, bias slot0, slot1
 * to slots[0..3]. */
int parse_slots(PyObject *o, const char *path, int nslots, int kndim, const size_t *kshape,
                size_t units, float *slots[4]);

/* The optimizer spec: {"kind": OPT_*, "learning_rate": ..., "decay": ...} and
 * the kind's own keys: OPT_SGD "momentum", "nesterov"; OPT_ADAM "beta_1",
 * "beta_2", "epsilon"; OPT_RMSPROP "rho", "momentum", "epsilon".
 * learning_rate is a number > 0, or a schedule's rates for the updates of the
 * call: {"per_step": float64 (k,) array, "first_iteration": the update of
 * per_step[0]} (the array is borrowed). */
int parse_optimizer(PyObject *o, vgg_optimizer *opt);

/* The head spec: {"input_mode": HEAD_*, "input_shape": (h, w, c), "layers":
 * [...]}, 1 to HEAD_MAX_LAYERS layers, the last dense, each
 *   {"type": "dense", "units", "activation", "kernel", "bias", "slots"} or
 *   {"type": "dropout", "rate"}
 * with kernel (in, units) and bias (units,) writeable float32 arrays and slots
 * as parse_slots reads them for an optimizer of nslots (0: not training).
 * (training.c) */
int parse_head(PyObject *spec, vgg_head *h, int nslots);

/* ------------------------------------------------------------------------ */
/* the method tables of vggtl._core, one per file                           */

/* a METH_VARARGS | METH_KEYWORDS function in a PyMethodDef */
#define KW (PyCFunction)(void (*)(void))

extern PyMethodDef vggtl_settings_methods[], vggtl_network_methods[],
    vggtl_training_methods[];

#endif /* VGGTL_GLUE_H */
