/*
 * vgg_internal.h - private helpers shared by the core's .c files.
 */
#ifndef VGG_INTERNAL_H
#define VGG_INTERNAL_H

#include "vgg.h"

#include <string.h>

/* OpenMP pragmas collapse to nothing without OpenMP; num_threads follows the
 * one knob, vgg_set_num_threads, through vgg_team (threads.c), which notes that
 * a team of more than one thread may start: a process forked after that runs
 * on one thread (libgomp's threads do not survive fork). */
#ifdef _OPENMP
#include <omp.h>
#define VGG_PRAGMA(x) _Pragma(#x)
#define VGG_OMP_FOR \
    VGG_PRAGMA(omp parallel for schedule(static) num_threads(vgg_team(vgg_get_num_threads())))
/* A team of exactly n threads: for loops that index per-thread buffers sized
 * from a thread count read once (the knob may change in another thread). */
#define VGG_OMP_FOR_N(n) VGG_PRAGMA(omp parallel for schedule(static) num_threads(vgg_team(n)))
/* The same, blocks handed out as threads come free (uneven blocks, busy cores). */
#define VGG_OMP_FOR_DYNAMIC_N(n) \
    VGG_PRAGMA(omp parallel for schedule(dynamic) num_threads(vgg_team(n)))
/* Parallel only when the loop has enough work to pay for waking the team: a
 * region costs microseconds on an idle machine but far more on a loaded one,
 * and the head's per-batch loops are often tiny. */
#define VGG_OMP_MIN_WORK 32768
#define VGG_OMP_IF_THREADS(work) \
    vgg_team((work) >= VGG_OMP_MIN_WORK ? vgg_get_num_threads() : 1)
#define VGG_OMP_FOR_IF(work)                                                        \
    VGG_PRAGMA(omp parallel for schedule(static) if ((work) >= VGG_OMP_MIN_WORK)    \
                   num_threads(VGG_OMP_IF_THREADS(work)))
#define VGG_OMP_FOR_REDUCE_SUM_IF(v, work)                                          \
    VGG_PRAGMA(omp parallel for schedule(static) reduction(+ : v)                   \
                   if ((work) >= VGG_OMP_MIN_WORK) num_threads(VGG_OMP_IF_THREADS(work)))
#define VGG_OMP_FOR_REDUCE_OR2_IF(a, b, work)                                       \
    VGG_PRAGMA(omp parallel for schedule(static) reduction(| : a, b)                \
                   if ((work) >= VGG_OMP_MIN_WORK) num_threads(VGG_OMP_IF_THREADS(work)))
#define VGG_OMP_FOR_REDUCE_MAX_IF(v, work)                                          \
    VGG_PRAGMA(omp parallel for schedule(static) reduction(max : v)                 \
                   if ((work) >= VGG_OMP_MIN_WORK) num_threads(VGG_OMP_IF_THREADS(work)))
#define VGG_OMP_FOR_N_REDUCE_OR2(n, a, b)                                           \
    VGG_PRAGMA(omp parallel for schedule(static) reduction(| : a, b) num_threads(vgg_team(n)))
#define VGG_OMP_FOR_COLLAPSE2_IF(work)                                              \
    VGG_PRAGMA(omp parallel for collapse(2) schedule(static)                        \
                   if ((work) >= VGG_OMP_MIN_WORK) num_threads(VGG_OMP_IF_THREADS(work)))
/* A team for a region of several work-shared loops (Winograd's phases): the
 * loops split their iterations without waiting, and barriers order the phases. */
#define VGG_OMP_PARALLEL_N(n) VGG_PRAGMA(omp parallel num_threads(vgg_team(n)))
#define VGG_OMP_FOR_NOWAIT_STATIC VGG_PRAGMA(omp for schedule(static) nowait)
#define VGG_OMP_FOR_NOWAIT_DYNAMIC VGG_PRAGMA(omp for schedule(dynamic) nowait)
#define VGG_OMP_BARRIER VGG_PRAGMA(omp barrier)
#else
#define VGG_OMP_PARALLEL_N(n)
#define VGG_OMP_FOR_NOWAIT_STATIC
#define VGG_OMP_FOR_NOWAIT_DYNAMIC
#define VGG_OMP_BARRIER
#define VGG_OMP_FOR_N(n)
#define VGG_OMP_FOR_DYNAMIC_N(n)
#define VGG_OMP_FOR_IF(work)
#define VGG_OMP_FOR_COLLAPSE2_IF(work)
#define VGG_OMP_FOR_REDUCE_SUM_IF(v, work)
#define VGG_OMP_FOR_REDUCE_OR2_IF(a, b, work)
#define VGG_OMP_FOR_REDUCE_MAX_IF(v, work)
#define VGG_OMP_FOR_N_REDUCE_OR2(n, a, b)
#define VGG_OMP_FOR
#endif

/* Run-time instruction-set dispatch needs x86 and GCC/Clang's target attributes
 * and __builtin_cpu_supports (cpu.c, winograd.c). */
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define VGG_X86_DISPATCH 1
#else
#define VGG_X86_DISPATCH 0
#endif
/* The VDPBF16PS kernel (winograd_bf16.c) needs the avx512bf16 target and its
 * intrinsics: GCC 10, Clang 9. Without them the bf16 path runs in plain C. */
#if VGG_X86_DISPATCH && ((defined(__clang__) && __clang_major__ >= 9) || \
                         (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#define VGG_HAVE_AVX512BF16 1
#else
#define VGG_HAVE_AVX512BF16 0
#endif
/* The AMX kernel (winograd_bf16.c) needs the amx-tile/amx-bf16 targets (GCC 11,
 * Clang 12) and Linux's arch_prctl to be granted the tile state. */
#if VGG_HAVE_AVX512BF16 && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || \
     (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define VGG_HAVE_AMX 1
#else
#define VGG_HAVE_AMX 0
#endif

/* This thread's index in the enclosing OpenMP team (0 without OpenMP): which of
 * the per-thread buffers of a workspace is its own. */
static inline size_t vgg_thread_index(void) {
#ifdef _OPENMP
    return (size_t)omp_get_thread_num();
#else
    return 0;
#endif
}

/* threads.c: n, the size of a team about to start; notes that one of more than
 * one thread may have run (see vgg_threads_start and the fork handler there).
 * Every parallel region takes its thread count through it. */
int vgg_team(int n);
/* threads.c: how many threads a workspace holding `floats` floats of per-thread
 * buffers serves: the knob's count, or fewer when the buffers run short (the
 * knob can have grown since the caller sized the workspace). */
size_t vgg_threads_for_buffers(size_t floats, size_t per_thread);
/* threads.c: block(ctx, bi, buffer) for bi in [0, nblocks), handed out to nth
 * threads as they come free, each with its own buffer of per_thread floats
 * from `buffers`; the abort callback is polled every few blocks per thread
 * (VGG_ERR_CANCELLED). Blocks must not depend on which thread runs them. */
int vgg_run_blocks(size_t nblocks, size_t nth, float *buffers, size_t per_thread,
                   void (*block)(void *ctx, size_t bi, float *buffer), void *ctx,
                   vgg_abort_fn abort_cb, void *abort_ctx);

/* Returns status from the enclosing function when cond is false. */
#define VGG_CHECK(cond, status) \
    do {                        \
        if (!(cond)) return (status); \
    } while (0)

/* a*b with overflow detection: returns 0 when it would overflow size_t. */
static inline int vgg_mul_ok(size_t a, size_t b, size_t *r) {
    if (a != 0 && b > (size_t)-1 / a) return 0;
    *r = a * b;
    return 1;
}

/* n items in `parts` parts whose sizes differ by one at most (the larger ones
 * last, as vggtl._arrays.even_batches): the first item of part k, which holds
 * vgg_even_start(n, parts, k + 1) minus that. k * n / parts without the product
 * of two counts (k * (n % parts) < parts^2). */
static inline size_t vgg_even_start(size_t n, size_t parts, size_t k) {
    return k * (n / parts) + k * (n % parts) / parts;
}

/* The larger of a and b, NaN if a is NaN (2x2 max-pool: maxpool2x2.c and the
 * fused pool of the Winograd output transforms, winograd_tiles.h). */
static inline float vgg_max_nan(float a, float b) { return (a > b || a != a) ? a : b; }

/* Polls the abort callback (NULL: never abort). */
static inline int vgg_should_abort(vgg_abort_fn cb, void *ctx) { return cb != NULL && cb(ctx) != 0; }

/* The largest side of a product the kernels accept (an int's range, as a BLAS's). */
#define VGG_BLAS_MAX_DIM 2147483647u
/* blas.c: OpenBLAS's own thread pool, kept at one thread. */
void vgg_blas_set_num_threads(int n);

/* gemm.c: vggtl's own single-threaded sgemm, C (m, n) = A (m, k) @ B (k, n)
 * (row-major, leading dimensions ldc and lda) with B packed by vgg_gemm_pack_b
 * into panels of VGG_GEMM_NR columns (vgg_gemm_packed_floats(k, n) floats).
 * Each element of C is one chain of fused multiply-adds over k in order, so
 * its bits depend on its row of A and on B only: not on m, on the row's place,
 * on the thread or on the instruction set. A slice of panels p0.. is the
 * product with columns 16*p0.. (bp + p0 * VGG_GEMM_NR * k). Safe inside
 * OpenMP regions (no threads of its own). */
#define VGG_GEMM_NR 16
size_t vgg_gemm_packed_floats(size_t k, size_t n);
void vgg_gemm_pack_b(float *bp, const float *b, size_t ldb, size_t k, size_t n);
/* The same panels from B's transpose, bt (n, k) with leading dimension ldbt:
 * for products with a kernel's transpose (dL/dx = dz W^T). Panel p starts at
 * bp + p * ps: ps = k * VGG_GEMM_NR packs B whole; a larger ps packs k rows
 * of a taller B (a convolution's flipped kernel, a tap at a time). */
void vgg_gemm_pack_bt(float *bp, size_t ps, const float *bt, size_t ldbt, size_t k, size_t n);
void vgg_gemm(float *c, size_t ldc, const float *a, size_t lda, const float *bp, size_t m,
              size_t n, size_t k);
/* vgg_gemm split by panels of columns across the core's threads (from serial code). */
void vgg_gemm_parallel(float *c, size_t ldc, const float *a, size_t lda, const float *bp, size_t m,
                       size_t n, size_t k);
/* The same sums with B as it is stored (row-major, leading dimension ldb): for
 * the dense layers, whose kernels are read once per call. The _parallel form
 * splits C by rows or by panels of columns across the core's threads (call it
 * from serial code); the bits are the same either way. */
void vgg_gemm_b(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb,
                size_t m, size_t n, size_t k);
void vgg_gemm_b_parallel(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                         size_t ldb, size_t m, size_t n, size_t k);
/* C (m, n) = A^T @ B, A stored (k, m) with leading dimension lda: the same
 * chains over k (a weight gradient x^T dz). acc: C += A^T @ B, the chains
 * continued from C's values, so a product split along k into calls gives the
 * bits of one call (a convolution's dW over chunks of pixels). */
void vgg_gemm_at(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb,
                 size_t m, size_t n, size_t k, int acc);
void vgg_gemm_at_parallel(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                          size_t ldb, size_t m, size_t n, size_t k, int acc);

/* optim.c: one optimizer step split in two, for an update fused with the
 * computation of its gradient (head.c): the step's scalars, computed once
 * (VGG_ERR_ARG for an invalid optimizer), then the elementwise update of any
 * range of the parameters, serial (call it from each thread on its share). */
typedef struct {
    int kind, slots, nesterov;
    float lr, mu, eps, alpha, one_b1, one_b2, rho, one_rho;
} vgg_opt_step;
int vgg_optimizer_prepare(vgg_opt_step *s, const vgg_optimizer *opt, int64_t iterations);
void vgg_optimizer_apply(const vgg_opt_step *s, float *param, const float *grad, float *slot0,
                         float *slot1, size_t count);

/* conv3x3.c: vgg_conv3x3_workspace_floats for a given number of threads (with
 * fewer buffers than threads, the algorithms run on fewer threads); `prepared`:
 * without room for the kernel's transform or packing (the layer's kernel comes
 * prepared, vgg_conv3x3_prepare). */
size_t vgg_conv3x3_workspace_floats_for(size_t cin, size_t cout, size_t threads, int prepared);

/* winograd.c: the Winograd F(tile x tile, 3x3) paths of vgg_conv3x3_forward_by
 * (tile 3, 4 or 6; same contract), with the kernel's transform U either prepared
 * beforehand by vgg_winograd_prepare (u_prepared, vgg_winograd_prepared_floats
 * floats; kernel may then be NULL) or, when u_prepared is NULL, made from
 * `kernel` into the start of the workspace. The workspace:
 * vgg_winograd_workspace_floats(tile, cin, cout, prepared) floats (less runs
 * shorter blocks, as long as a block of one tile fits). With `pool`, out is the
 * 2x2 max-pool of the layer's output, (N, H/2, W/2, Cout), where
 * vgg_winograd_fuses_pool(tile, h, w) (VGG_ERR_ARG elsewhere). */
int vgg_winograd_fuses_pool(int tile, size_t h, size_t w);
size_t vgg_winograd_prepared_floats(int tile, size_t cin, size_t cout);
int vgg_winograd_prepare(int tile, float *u, size_t u_floats, const float *kernel, size_t cin,
                         size_t cout);
size_t vgg_winograd_workspace_floats(int tile, size_t cin, size_t cout, int prepared);
int vgg_winograd_conv3x3_forward(int tile, float *out, const float *x, const float *kernel,
                                 const float *u_prepared, const float *bias, int relu, int pool,
                                 size_t n, size_t h, size_t w, size_t cin, size_t cout,
                                 float *workspace, size_t workspace_floats,
                                 vgg_abort_fn abort_cb, void *abort_ctx);
/* The weight gradient of that convolution by the same tiles: dw (3, 3, cin, cout)
 * <- dL/d(kernel) for dout = dL/d(output) (N, H, W, Cout) and the input x
 * (N, H, W, Cin), overwritten. Every element is one chain of sums in a fixed
 * order (gemm.c), whatever the threads. Workspace:
 * vgg_winograd_weight_grad_floats(tile, cin, cout) floats (VGG_ERR_NOMEM below). */
size_t vgg_winograd_weight_grad_floats(int tile, size_t cin, size_t cout);
int vgg_winograd_conv3x3_weight_grad(int tile, float *dw, const float *dout, const float *x,
                                     size_t n, size_t h, size_t w, size_t cin, size_t cout,
                                     float *workspace, size_t workspace_floats,
                                     vgg_abort_fn abort_cb, void *abort_ctx);

/* winograd_bf16.c: the bf16 F(2x2,3x3) path, the same contract (its workspace
 * holds a block buffer per thread: `threads` of them, fewer run on fewer).
 * `amx`: the products on the AMX tiles (vgg_winograd_bf16_amx_fits: Cin and
 * Cout multiples of 32, and the ISA AMX_BF16); the same U either way. */
int vgg_winograd_bf16_amx_fits(size_t cin, size_t cout);
size_t vgg_winograd_bf16_prepared_floats(size_t cin, size_t cout);
int vgg_winograd_bf16_prepare(float *u, size_t u_floats, const float *kernel, size_t cin,
                              size_t cout);
size_t vgg_winograd_bf16_workspace_floats(size_t cin, size_t cout, size_t threads, int prepared);
int vgg_winograd_bf16_conv3x3_forward(int amx, float *out, const float *x, const float *kernel,
                                      const float *u_prepared, const float *bias, int relu,
                                      int pool, size_t n, size_t h, size_t w, size_t cin,
                                      size_t cout, float *workspace, size_t workspace_floats,
                                      vgg_abort_fn abort_cb, void *abort_ctx);

/* rng.c: counter-based random numbers (pure functions of their arguments).
 * Draw i of (seed, stream) is vgg_rng_uniform_keyed(vgg_rng_key(seed, stream), i).
 * Inline: a call per unit of a dropout mask cost as much as the layer's matrix
 * product. */
static inline uint64_t vgg_rng_mix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* The key of (seed, stream): draws of one stream share it. */
static inline uint64_t vgg_rng_key(uint64_t seed, uint64_t stream) {
    return vgg_rng_mix(seed ^ vgg_rng_mix(stream));
}
/* Draw `index` of the stream keyed `key`, in [0, 1): 24 bits, exact in float. */
static inline float vgg_rng_uniform_keyed(uint64_t key, uint64_t index) {
    return (float)(vgg_rng_mix(key + index) >> 40) * (1.0f / 16777216.0f);
}
void vgg_rng_permutation(int64_t *order, size_t n, uint64_t seed, uint64_t stream);

/* IEEE half -> float (the cache may store features as float16). */
static inline float vgg_half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while ((mant & 0x400u) == 0) {
                mant <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (mant << 13); /* inf / NaN */
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Training's scan of a gradient (or of updated weights) a (n floats): returns 0
 * when an element is NaN or infinite, and sets *nonzero when an element is not
 * exactly 0 (else a gradient vanished). */
static inline int vgg_grad_ok(const float *a, size_t n, int *nonzero) {
    /* on the bits, so that the compiler vectorises the scan (a float sum may not
     * be reordered): an exponent of all ones is NaN or infinity; magnitude bits
     * other than zero are a value other than +-0 */
    uint32_t special = 0, magnitude = 0;
    VGG_OMP_FOR_REDUCE_OR2_IF(special, magnitude, n)
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, a + i, sizeof bits);
        special |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
        magnitude |= bits & 0x7fffffffu;
    }
    if (magnitude) *nonzero = 1;
    return special == 0;
}

/* head.c, for finetune.c: one training step of the head on per-sample maps
 * (m, h, w, c) float32 already in batch order, targets taken at order[first..];
 * d_maps (m, h, w, c) gets dL/d(maps); outputs (n, units) or NULL gets the head's
 * output of sample order[first + i] at that row. The workspace is the head's for
 * batch m (vgg_head_workspace_floats(head, m)). */
int vgg_head_train_maps(vgg_fit_stats *stats, vgg_head *head, const vgg_optimizer *opt,
                        int64_t iteration, const float *maps, size_t m, const vgg_targets *t,
                        const int64_t *order, size_t first, uint64_t seed, float *d_maps,
                        float *outputs, float *workspace, size_t workspace_floats);
int vgg_head_check_targets(const vgg_targets *t, size_t n, size_t out);

/* vgg16.c, for the training kernels (finetune.c, gradcam.c): the shapes through
 * the layers first..VGG16_BLOCK5_POOL (convs and pools) from an input map of
 * h x w x c. h/w/c[i] is the input of layer first + i, [last - first + 1] the
 * output of block5_pool. max_act: the largest map; scratch: the largest conv
 * workspace forward or backward (vgg_conv3x3_(backward_)workspace_floats at the
 * current thread count; backward by each layer's vgg_conv3x3_algo when by_shape,
 * else by im2col); dw_max / db_max: the largest conv kernel and bias
 * (0 when no conv runs). Returns 0 when a pool meets a map under 2 x 2. */
typedef struct {
    int first, last;
    size_t h[VGG16_NUM_LAYERS + 1], w[VGG16_NUM_LAYERS + 1], c[VGG16_NUM_LAYERS + 1];
    size_t max_act, scratch, dw_max, db_max;
} vgg16_run_shapes;
int vgg16_shapes_to_block5(vgg16_run_shapes *s, int first, size_t h, size_t w, size_t c,
                           int by_shape);

#endif /* VGG_INTERNAL_H */
