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
#define VGG_NUM_ISAS 4
#define VGG_NUM_CONV_ALGOS 5
#define VGG_NUM_PRECISIONS 2
extern const char *const ISA_NAMES[VGG_NUM_ISAS];
extern const char *const ALGO_NAMES[VGG_NUM_CONV_ALGOS];
extern const char *const PRECISION_NAMES[VGG_NUM_PRECISIONS];
/* A precision name ("fp32", "bf16"; NULL: fp32) -> enum vgg_precision, or -1
 * with a ValueError. */
int parse_precision(const char *name);
/* three floats from a Python sequence */
int parse_float3(PyObject *o, const char *name, float v[3]);
/* "linear", "relu", "softmax", "sigmoid" -> enum vgg_activation */
int parse_activation(const char *s, int *act);
/* 0 <= rate < 1, else -1 with a ValueError */
int parse_rate(double rate);
/* Targets of a loss: (n, c) float32 for BCE / CCE, (n,) int32 labels in [0, c)
 * for sparse; sample weights (n,) float32 or None. Borrowed pointers into *t. */
int parse_targets(vgg_targets *t, int loss, PyObject *to, PyObject *swo, size_t n, size_t c);
/* An optimizer tuple (kind, learning_rate, decay, beta_1, beta_2, epsilon,
 * momentum, nesterov, rho[, lr_steps, lr_first]): lr_steps a float64 array of
 * per-step learning rates (borrowed: the tuple holds it during the call) or None. */
int parse_optimizer(PyObject *o, vgg_optimizer *opt);

/* A head spec: (input_mode, h, w, c, layers) with layers a sequence of
 * ("dense", units, activation, kernel, bias, slots) or ("dropout", rate); slots
 * is a sequence of 4 float32 arrays or None (kernel slot0, slot1, bias slot0,
 * slot1), read for the first nslots of each pair. Arrays are borrowed: the spec
 * object must outlive the call. (training.c) */
int parse_head(PyObject *spec, vgg_head *h, int nslots);

/* ------------------------------------------------------------------------ */
/* the method tables of vggtl._core, one per file                           */

/* a METH_VARARGS | METH_KEYWORDS function in a PyMethodDef */
#define KW (PyCFunction)(void (*)(void))

extern PyMethodDef vggtl_settings_methods[], vggtl_network_methods[],
    vggtl_training_methods[];

#endif /* VGGTL_GLUE_H */
