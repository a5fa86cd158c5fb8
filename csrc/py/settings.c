/*
 * settings.c - the process-wide settings of the core: threads, instruction set,
 * convolution algorithm, and the queries about them (build info, the algorithm
 * a layer shape runs, kernels prepared for an algorithm).
 */
#include "glue.h"

#include <string.h>

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

const char *const ISA_NAMES[VGG_NUM_ISAS] = {"portable", "avx2", "avx512", "avx512_bf16",
                                            "amx_bf16"};

static PyObject *py_isa_supported(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const int isa = name_index("isa", name, ISA_NAMES, VGG_NUM_ISAS);
    if (isa < 0) return NULL;
    return PyBool_FromLong(vgg_isa_supported(isa));
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = PyUnicode_AsUTF8(arg);
    if (!name) return NULL;
    const int isa = strcmp(name, "best") == 0 ? VGG_ISA_BEST : name_index("isa", name, ISA_NAMES, VGG_NUM_ISAS);
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
    static const char *const SETTABLE[] = {"auto", "im2col", "winograd", "winograd6",
                                           "winograd3"};
    static const int ALGOS[] = {VGG_CONV_AUTO, VGG_CONV_IM2COL, VGG_CONV_WINOGRAD,
                                VGG_CONV_WINOGRAD6, VGG_CONV_WINOGRAD3};
    const int i = name_index("conv_algo", name, SETTABLE, 5);
    if (i < 0) return NULL;
    const int algo = ALGOS[i];
    if (vgg_set_conv_algo(algo) != VGG_OK) return raise_status(VGG_ERR_INTERNAL, "set_conv_algo");
    Py_RETURN_NONE;
}

static PyObject *py_get_conv_algo(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(vgg_conv_algo_name(vgg_get_conv_algo()));
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

static PyObject *py_vgg16_conv_precision(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"layer", "precision", NULL};
    int layer;
    const char *pname = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|$z", kwlist, &layer, &pname)) return NULL;
    const int precision = parse_precision(pname);
    if (precision < 0) return NULL;
    if (vgg16_layer_kind(layer) != VGG16_KIND_CONV) {
        PyErr_Format(PyExc_ValueError, "layer: expected the index of a conv layer in "
                     "VGG16_LAYERS, got %d", layer);
        return NULL;
    }
    return PyUnicode_FromString(PRECISION_NAMES[vgg16_conv_precision(layer, precision)]);
}

/* conv3x3_prepare(kernel, algo) -> the kernel (3, 3, Cin, Cout) float32 in the
 * form `algo` computes with, a flat float32 array for vgg16_forward's prepared= */
static PyObject *py_conv3x3_prepare(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"kernel", "algo", NULL};
    PyObject *ko;
    const char *aname;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Os", kwlist, &ko, &aname)) return NULL;
    const int algo = name_index("algo", aname, ALGO_NAMES, VGG_NUM_CONV_ALGOS);
    if (algo < 0) return NULL;
    if (algo == VGG_CONV_AUTO) {
        PyErr_SetString(PyExc_ValueError, "algo: expected 'im2col', 'winograd', 'winograd6', "
                        "'winograd3', 'winograd_bf16' or 'winograd_bf16_amx', got 'auto'");
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
    PyArrayObject *out = new_f32(1, shape);
    if (!out) return NULL;
    int st;
    CALL_NOGIL(st, vgg_conv3x3_prepare(PyArray_DATA(out), floats, algo, PyArray_DATA(k), cin, cout));
    return out_or_raise(st, out, "conv3x3_prepare");
}

static PyObject *py_bf16_native(PyObject *self, PyObject *noargs) {
    (void)self;
    (void)noargs;
    return PyBool_FromLong(vgg_bf16_native());
}

PyMethodDef vggtl_settings_methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O,
     "set_num_threads(n)\n\nThreads for OpenMP regions and BLAS (one knob for both)."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "get_num_threads() -> int"},
    {"build_info", py_build_info, METH_NOARGS, "build_info() -> dict(openmp, blas, blas_coretype)"},
    {"isa_supported", py_isa_supported, METH_O,
     "isa_supported(name) -> bool\n\nname: 'portable', 'avx2', 'avx512', 'avx512_bf16' or 'amx_bf16'."},
    {"set_isa", py_set_isa, METH_O,
     "set_isa(name)\n\nThe instruction set of vggtl's own kernels: 'best', 'portable', 'avx2', "
     "'avx512', 'avx512_bf16', 'amx_bf16'; ValueError if this CPU lacks it."},
    {"get_isa", py_get_isa, METH_NOARGS, "get_isa() -> the instruction set in use"},
    {"set_conv_algo", py_set_conv_algo, METH_O,
     "set_conv_algo(name)\n\n3x3 convolutions: 'auto' (by shape), 'im2col', 'winograd' "
     "(F(4x4)), 'winograd6' (F(6x6)) or 'winograd3' (F(3x3))."},
    {"get_conv_algo", py_get_conv_algo, METH_NOARGS, "get_conv_algo() -> the setting"},
    {"conv3x3_prepare", KW py_conv3x3_prepare, METH_VARARGS | METH_KEYWORDS,
     "conv3x3_prepare(kernel, algo) -> float32 array: the kernel (3, 3, Cin, Cout) in the form "
     "algo ('im2col', 'winograd', 'winograd6', 'winograd3', 'winograd_bf16', "
     "'winograd_bf16_amx') computes with, for vgg16_forward's prepared="},
    {"conv3x3_algo", KW py_conv3x3_algo, METH_VARARGS | METH_KEYWORDS,
     "conv3x3_algo(h, w, cin, cout, *, precision='fp32') -> 'im2col', 'winograd', "
     "'winograd6', 'winograd3', 'winograd_bf16' or 'winograd_bf16_amx': what a layer of this "
     "shape runs"},
    {"vgg16_conv_precision", KW py_vgg16_conv_precision, METH_VARARGS | METH_KEYWORDS,
     "vgg16_conv_precision(layer, *, precision='fp32') -> 'fp32' or 'bf16': what conv layer "
     "`layer` (its index in VGG16_LAYERS) of a network at `precision` runs (block 1 stays "
     "float32)"},
    {"bf16_native", py_bf16_native, METH_NOARGS,
     "bf16_native() -> bool: bf16 products run on VDPBF16PS or AMX (else in plain C, "
     "VDPBF16PS's bits)"},
    {NULL, NULL, 0, NULL},
};
