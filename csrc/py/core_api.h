/*
 * core_api.h - the core functions vggtl._kernels (the tests' single kernels)
 * calls, as a table of pointers that vggtl._core exports in the capsule
 * vggtl._core._C_API. The test module thus runs the one core loaded with
 * vggtl._core (its thread count, instruction set, convolution setting and
 * image counter) instead of a second copy.
 *
 * Built into vggtl._kernels (VGGTL_KERNELS_MODULE defined), each name below is a
 * macro that calls through the table, so the glue reads the same in both
 * modules. A function the test module needs goes in VGG_CORE_API and gets its
 * #define below.
 */
#ifndef VGGTL_CORE_API_H
#define VGGTL_CORE_API_H

#include "vgg.h"

#define VGG_CORE_API(X)                                                                   \
    X(vgg_status_str) X(vgg_threads_forked) X(vgg_threads_start) X(vgg_get_num_threads)     \
    X(vgg_conv3x3_algo_at) X(vgg_conv_algo_name) X(vgg_conv3x3_workspace_floats)            \
    X(vgg_conv3x3_forward_by) X(vgg_conv3x3_pool_forward_by) X(vgg_conv3x3_fuses_pool)     \
    X(vgg_conv3x3_backward_workspace_floats) X(vgg_conv3x3_backward)                       \
    X(vgg_maxpool2x2_forward) X(vgg_maxpool2x2_backward) X(vgg_global_pool_forward)         \
    X(vgg_activation_forward) X(vgg_activation_backward) X(vgg_dense_forward)              \
    X(vgg_dense_backward) X(vgg_dropout_forward) X(vgg_dropout_backward)                   \
    X(vgg_loss_forward_backward) X(vgg_optimizer_step) X(vgg_optimizer_slots)              \
    X(vgg16_forward_images)

#define VGG_CORE_API_FIELD(f) __typeof__(&f) f;
typedef struct {
    size_t size; /* sizeof(vgg_core_api): both modules come from one build */
    VGG_CORE_API(VGG_CORE_API_FIELD)
} vgg_core_api;
#undef VGG_CORE_API_FIELD

#define VGG_CORE_API_CAPSULE "vggtl._core._C_API"

#ifdef VGGTL_KERNELS_MODULE
extern const vgg_core_api *vgg_core; /* set by PyInit__kernels */
#define vgg_status_str (vgg_core->vgg_status_str)
#define vgg_threads_forked (vgg_core->vgg_threads_forked)
#define vgg_threads_start (vgg_core->vgg_threads_start)
#define vgg_get_num_threads (vgg_core->vgg_get_num_threads)
#define vgg_conv3x3_algo_at (vgg_core->vgg_conv3x3_algo_at)
#define vgg_conv_algo_name (vgg_core->vgg_conv_algo_name)
#define vgg_conv3x3_workspace_floats (vgg_core->vgg_conv3x3_workspace_floats)
#define vgg_conv3x3_forward_by (vgg_core->vgg_conv3x3_forward_by)
#define vgg_conv3x3_pool_forward_by (vgg_core->vgg_conv3x3_pool_forward_by)
#define vgg_conv3x3_fuses_pool (vgg_core->vgg_conv3x3_fuses_pool)
#define vgg_conv3x3_backward_workspace_floats (vgg_core->vgg_conv3x3_backward_workspace_floats)
#define vgg_conv3x3_backward (vgg_core->vgg_conv3x3_backward)
#define vgg_maxpool2x2_forward (vgg_core->vgg_maxpool2x2_forward)
#define vgg_maxpool2x2_backward (vgg_core->vgg_maxpool2x2_backward)
#define vgg_global_pool_forward (vgg_core->vgg_global_pool_forward)
#define vgg_activation_forward (vgg_core->vgg_activation_forward)
#define vgg_activation_backward (vgg_core->vgg_activation_backward)
#define vgg_dense_forward (vgg_core->vgg_dense_forward)
#define vgg_dense_backward (vgg_core->vgg_dense_backward)
#define vgg_dropout_forward (vgg_core->vgg_dropout_forward)
#define vgg_dropout_backward (vgg_core->vgg_dropout_backward)
#define vgg_loss_forward_backward (vgg_core->vgg_loss_forward_backward)
#define vgg_optimizer_step (vgg_core->vgg_optimizer_step)
#define vgg_optimizer_slots (vgg_core->vgg_optimizer_slots)
#define vgg16_forward_images (vgg_core->vgg16_forward_images)
#endif

#endif /* VGGTL_CORE_API_H */
