/*
 * module.c - vggtl._core: the module, its method tables (one per file of
 * csrc/py/) and the constants that carry the core's tables and enums to Python:
 * the VGG16 layer table (vgg16.c) and every enum value an entry point takes as
 * an integer, so that no Python file writes a layer list or an enum value of
 * its own. Also exports the capsule of core_api.h for vggtl._kernels.
 */
#define VGGTL_IMPORT_ARRAY
#include "glue.h"

/* ((name, kind, inputs, units, param), ...) in Keras's order: kind 'conv',
 * 'pool', 'flatten' or 'dense'; inputs and units as vgg16_layer_inputs and
 * vgg16_layer_units (predictions: 0 units, set by the weights); param the
 * index into the 13 convs or the 3 dense layers, -1 for the others. */
static PyObject *layer_table(void) {
    static const char *const kinds[] = {"conv", "pool", "flatten", "dense"};
    PyObject *t = PyTuple_New(VGG16_NUM_LAYERS);
    for (int l = 0; t && l < VGG16_NUM_LAYERS; l++) {
        PyObject *e = Py_BuildValue("(ssnni)", vgg16_layer_name(l), kinds[vgg16_layer_kind(l)],
                                    (Py_ssize_t)vgg16_layer_inputs(l),
                                    (Py_ssize_t)vgg16_layer_units(l), vgg16_layer_param(l));
        if (!e) Py_CLEAR(t);
        else PyTuple_SET_ITEM(t, l, e);
    }
    return t;
}

/* A tuple of count names, index = the enum value. */
static PyObject *name_tuple(const char *const *names, int count) {
    PyObject *t = PyTuple_New(count);
    for (int i = 0; t && i < count; i++) {
        PyObject *s = PyUnicode_FromString(names[i]);
        if (!s) Py_CLEAR(t);
        else PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static const struct {
    const char *name;
    int value;
} INT_CONSTANTS[] = {
    /* vgg16_forward's pooling */
    {"POOL_NONE", VGG_POOL_NONE}, {"POOL_AVG", VGG_POOL_AVG}, {"POOL_MAX", VGG_POOL_MAX},
    /* a head spec's input_mode */
    {"HEAD_FLATTEN", VGG_HEAD_FLATTEN}, {"HEAD_GAP", VGG_HEAD_GAP}, {"HEAD_GMP", VGG_HEAD_GMP},
    {"HEAD_MAX_LAYERS", VGG_HEAD_MAX_LAYERS},
    /* the loss argument */
    {"LOSS_BCE", VGG_LOSS_BCE}, {"LOSS_CCE", VGG_LOSS_CCE},
    {"LOSS_SPARSE_CCE", VGG_LOSS_SPARSE_CCE},
    /* an optimizer spec's kind */
    {"OPT_SGD", VGG_OPT_SGD}, {"OPT_ADAM", VGG_OPT_ADAM}, {"OPT_RMSPROP", VGG_OPT_RMSPROP},
    /* augment_apply's fill_mode, and the columns of its params */
    {"FILL_NEAREST", VGG_FILL_NEAREST}, {"FILL_CONSTANT", VGG_FILL_CONSTANT},
    {"FILL_REFLECT", VGG_FILL_REFLECT}, {"FILL_WRAP", VGG_FILL_WRAP},
    {"AUG_NPARAMS", VGG_AUG_NPARAMS},
    /* the network */
    {"VGG16_MIN_SIZE", VGG16_MIN_SIZE}, {"VGG16_TOP_SIZE", VGG16_TOP_SIZE},
};

/* Adds obj to m, taking its reference (NULL: the error is set). */
static int add_owned(PyObject *m, const char *name, PyObject *obj) {
    if (!obj) return -1;
    if (PyModule_AddObject(m, name, obj) < 0) {
        Py_DECREF(obj);
        return -1;
    }
    return 0;
}

static int add_constants(PyObject *m) {
    for (size_t i = 0; i < sizeof INT_CONSTANTS / sizeof INT_CONSTANTS[0]; i++)
        if (PyModule_AddIntConstant(m, INT_CONSTANTS[i].name, INT_CONSTANTS[i].value)) return -1;
    /* names indexed by the enum value (isa from VGG_ISA_PORTABLE) */
    if (add_owned(m, "ISA_NAMES", name_tuple(ISA_NAMES, VGG_NUM_ISAS)) ||
        add_owned(m, "CONV_ALGO_NAMES", name_tuple(ALGO_NAMES, VGG_NUM_CONV_ALGOS)) ||
        add_owned(m, "PRECISION_NAMES", name_tuple(PRECISION_NAMES, VGG_NUM_PRECISIONS)) ||
        add_owned(m, "VGG16_LAYERS", layer_table()))
        return -1;
    return 0;
}

#define VGG_CORE_API_ENTRY(f) .f = f,
static const vgg_core_api CORE_API = {
    .size = sizeof(vgg_core_api),
    VGG_CORE_API(VGG_CORE_API_ENTRY)
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_core",
    "vggtl's C core (private): VGG16 layers and network, NHWC float32.", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__core(void) {
    import_array();
    (void)vgg_get_num_threads(); /* initialise the thread count once, at import */
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    if (PyModule_AddFunctions(m, vggtl_settings_methods) ||
        PyModule_AddFunctions(m, vggtl_network_methods) ||
        PyModule_AddFunctions(m, vggtl_training_methods) || add_constants(m) ||
        add_owned(m, "_C_API",
                     PyCapsule_New((void *)&CORE_API, VGG_CORE_API_CAPSULE, NULL))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
