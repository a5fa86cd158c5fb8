/*
 * gemm.c - vggtl's own single-threaded sgemm for the frozen network's
 * convolutions:  C (m, n) = A (m, k) @ B (k, n), B packed beforehand.
 *
 * Why not BLAS: a BLAS chooses its kernels and its summation order by the CPU,
 * by $OPENBLAS_CORETYPE and by the shape of each call, so an image's features
 * used to change with the batch it came in. Here every element of C is one
 * chain of fused multiply-adds over k = 0, 1, ..., k-1 starting from zero:
 *   c[i][j] = fma(a[i][k-1], b[k-1][j], ... fma(a[i][0], b[0][j], 0))
 * whatever m, n, the row's place in A, the blocking, the thread that runs it
 * and the instruction set (AVX2 and AVX-512 fuse exactly as fmaf does). So a
 * row of C is a function of its row of A and of B alone, on every CPU.
 *
 * B is packed once per product (or once per layer, by the caller) into panels
 * of NR = 16 columns, zero-padded: panel p holds columns 16p .. 16p+15 as
 * k rows of 16 floats, bp[(p * k + kk) * 16 + j]. A is read in place (rows of
 * stride lda), C written in place (stride ldc).
 *
 * Loops: k in blocks of KC (a block of a panel, 16 KiB, stays in L1 while every
 * row of A passes over it; continuing a chain from the stored partial sum is
 * exact, so the blocking never shows in the bits), then panels, then MR rows.
 * The micro-kernel holds MR x 16 (AVX2: 6 x 16, 12 ymm) sums in registers;
 * under AVX-512, two whole panels run together, 12 x 32 sums in 24 zmm.
 */
#include "vgg_internal.h"

#include <math.h>
#include <string.h>

#define NR VGG_GEMM_NR
#define KC 256
#define MAX_MR 14 /* the widest kernel's rows (AVX-512) */
#define PAIR_MR 12 /* the two-panel kernel's rows (AVX-512) */

size_t vgg_gemm_packed_floats(size_t k, size_t n) { return (n + NR - 1) / NR * NR * k; }

void vgg_gemm_pack_b(float *bp, const float *b, size_t ldb, size_t k, size_t n) {
    const size_t np = (n + NR - 1) / NR;
    for (size_t p = 0; p < np; p++) {
        const size_t j0 = p * NR, len = n - j0 < NR ? n - j0 : NR;
        float *dst = bp + p * k * NR;
        for (size_t kk = 0; kk < k; kk++) {
            const float *src = b + kk * ldb + j0;
            float *d = dst + kk * NR;
            if (len == NR) {
                memcpy(d, src, NR * sizeof *d);
            } else {
                for (size_t j = 0; j < NR; j++) d[j] = j < len ? src[j] : 0.0f;
            }
        }
    }
}

#define ALWAYS_INLINE static inline __attribute__((always_inline))

/* C rows [0, mr) x the panel's `cols` columns (+)= A rows @ the panel's kc rows,
 * row p of the panel at b + p * bs (16 floats; bs is 16 in a packed panel).
 * `more` continues the chains from C's current values (a later k block). The
 * sums of columns past `cols` (zero padding) are computed and dropped. */
typedef void (*kernel_fn)(size_t mr, const float *a, size_t lda, const float *b, size_t bs,
                          float *c, size_t ldc, size_t kc, int more, size_t cols);

/* ---- portable: the same chains through fmaf ------------------------------ */

#define PORT_MR 4

static void kernel_portable(size_t mr, const float *a, size_t lda, const float *b, size_t bs,
                            float *c, size_t ldc, size_t kc, int more, size_t cols) {
    float acc[PORT_MR][NR];
    for (size_t i = 0; i < mr; i++)
        for (size_t j = 0; j < NR; j++) acc[i][j] = more && j < cols ? c[i * ldc + j] : 0.0f;
    for (size_t p = 0; p < kc; p++) {
        const float *bk = b + p * bs;
        for (size_t i = 0; i < mr; i++) {
            const float ai = a[i * lda + p];
            for (size_t j = 0; j < NR; j++) acc[i][j] = fmaf(ai, bk[j], acc[i][j]);
        }
    }
    for (size_t i = 0; i < mr; i++)
        for (size_t j = 0; j < cols; j++) c[i * ldc + j] = acc[i][j];
}

/* ---- x86: one body, instantiated per vector width ------------------------
 * VL floats a vector, NR / VL vectors a panel row; MR rows, a compile-time
 * constant in each instantiation so the sums stay in registers. */
#if VGG_X86_DISPATCH
#include <immintrin.h>

#define DEFINE_KERNEL(name, attr, MR, VT, VL, VZERO, VLOAD, VSTORE, VSET1, VFMA)              \
    attr static void name(size_t mr, const float *a, size_t lda, const float *b, size_t bs,  \
                          float *c, size_t ldc, size_t kc, int more, size_t cols) {         \
        enum { NV = NR / VL };                                                               \
        VT acc[MR][NV];                                                                      \
        float tmp[MR][NR]; /* a short panel's sums: C has fewer than NR columns there */    \
        if (cols < NR)                                                                       \
            for (size_t i = 0; i < MR; i++)                                                  \
                for (size_t j = 0; j < NR; j++)                                              \
                    tmp[i][j] = more && i < mr && j < cols ? c[i * ldc + j] : 0.0f;          \
        for (int i = 0; i < MR; i++)                                                         \
            for (int v = 0; v < NV; v++)                                                     \
                acc[i][v] = !more || (size_t)i >= mr ? VZERO()                               \
                            : cols < NR            ? VLOAD(&tmp[i][v * VL])                  \
                                                   : VLOAD(c + (size_t)i * ldc + v * VL);    \
        const float *ar[MR];                                                                 \
        for (int i = 0; i < MR; i++) ar[i] = a + (size_t)((size_t)i < mr ? i : 0) * lda;    \
        for (size_t p = 0; p < kc; p++) {                                                    \
            VT bv[NV];                                                                       \
            for (int v = 0; v < NV; v++) bv[v] = VLOAD(b + p * bs + v * VL);                 \
            for (int i = 0; i < MR; i++) {                                                   \
                const VT ai = VSET1(ar[i][p]);                                               \
                for (int v = 0; v < NV; v++) acc[i][v] = VFMA(ai, bv[v], acc[i][v]);         \
            }                                                                                \
        }                                                                                    \
        if (cols == NR) {                                                                    \
            for (int i = 0; i < MR; i++)                                                     \
                if ((size_t)i < mr)                                                          \
                    for (int v = 0; v < NV; v++) VSTORE(c + (size_t)i * ldc + v * VL, acc[i][v]); \
        } else {                                                                             \
            for (int i = 0; i < MR; i++)                                                     \
                for (int v = 0; v < NV; v++) VSTORE(&tmp[i][v * VL], acc[i][v]);             \
            for (size_t i = 0; i < mr; i++)                                                  \
                memcpy(c + i * ldc, tmp[i], cols * sizeof(float));                           \
        }                                                                                    \
    }

#define AVX2_ATTR __attribute__((target("avx2,fma")))
#define AVX512_ATTR __attribute__((target("avx512f,avx2,fma")))

/* Each row count gets its own copy so that short edge blocks do not run (and
 * wait on) the sums of absent rows. */
#define AVX2_KERNEL(R)                                                                       \
    DEFINE_KERNEL(kernel_avx2_##R, AVX2_ATTR, R, __m256, 8, _mm256_setzero_ps, _mm256_loadu_ps, \
                  _mm256_storeu_ps, _mm256_set1_ps, _mm256_fmadd_ps)
AVX2_KERNEL(6)
AVX2_KERNEL(4)
AVX2_KERNEL(2)
AVX2_KERNEL(1)

#define AVX512_KERNEL(R)                                                                     \
    DEFINE_KERNEL(kernel_avx512_##R, AVX512_ATTR, R, __m512, 16, _mm512_setzero_ps,         \
                  _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps)
AVX512_KERNEL(14)
AVX512_KERNEL(8)
AVX512_KERNEL(4)
AVX512_KERNEL(1)

/* Two whole panels at once (AVX-512 only: AVX2 has too few registers): PAIR_MR
 * rows x 32 columns of sums in 24 zmm, each broadcast of A feeding two FMAs.
 * The one-panel kernel issues a load per FMA (a broadcast of A, B's vector,
 * the row pointers it spills), so loads, not FMAs, bound it. The second panel
 * is ps floats after the first; every sum is the same chain as in the one-panel
 * kernel, so the pairing never shows in the bits. Rows: exactly PAIR_MR.
 * It prefetches the next block's first next_rows rows of A (an, at the same
 * depth) and of C (cn) as it goes: rows lda apart are a dozen short streams,
 * which the hardware prefetchers do not follow when A and C come from memory.
 * Prefetches never change a value. */
AVX512_ATTR static void kernel_avx512_pair(const float *a, size_t lda, const float *b, size_t bs,
                                           size_t ps, float *c, size_t ldc, size_t kc, int more,
                                           const float *an, float *cn, size_t next_rows) {
    __m512 acc[PAIR_MR][2];
    for (int i = 0; i < PAIR_MR; i++) {
        acc[i][0] = more ? _mm512_loadu_ps(c + (size_t)i * ldc) : _mm512_setzero_ps();
        acc[i][1] = more ? _mm512_loadu_ps(c + (size_t)i * ldc + NR) : _mm512_setzero_ps();
    }
    for (size_t i = 0; i < next_rows; i++) {
        __builtin_prefetch(cn + i * ldc, 1, 3);
        __builtin_prefetch(cn + i * ldc + NR, 1, 3);
    }
    const float *b1 = b + ps;
    for (size_t p0 = 0; p0 < kc; p0 += 16) {
        for (size_t i = 0; i < next_rows; i++) __builtin_prefetch(an + i * lda + p0, 0, 3);
        const size_t p1 = p0 + 16 < kc ? p0 + 16 : kc;
        for (size_t p = p0; p < p1; p++) {
            const __m512 x0 = _mm512_loadu_ps(b + p * bs), x1 = _mm512_loadu_ps(b1 + p * bs);
            const float *ap = a + p;
            for (int i = 0; i < PAIR_MR; i++) {
                const __m512 ai = _mm512_set1_ps(ap[(size_t)i * lda]);
                acc[i][0] = _mm512_fmadd_ps(ai, x0, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(ai, x1, acc[i][1]);
            }
        }
    }
    for (int i = 0; i < PAIR_MR; i++) {
        _mm512_storeu_ps(c + (size_t)i * ldc, acc[i][0]);
        _mm512_storeu_ps(c + (size_t)i * ldc + NR, acc[i][1]);
    }
}

/* kernel for `mr` rows (at most the widest's MR) */
AVX2_ATTR static void kernel_avx2(size_t mr, const float *a, size_t lda, const float *b,
                                  size_t bs, float *c, size_t ldc, size_t kc, int more,
                                  size_t cols) {
    if (mr > 4) kernel_avx2_6(mr, a, lda, b, bs, c, ldc, kc, more, cols);
    else if (mr > 2) kernel_avx2_4(mr, a, lda, b, bs, c, ldc, kc, more, cols);
    else if (mr == 2) kernel_avx2_2(mr, a, lda, b, bs, c, ldc, kc, more, cols);
    else kernel_avx2_1(mr, a, lda, b, bs, c, ldc, kc, more, cols);
}

AVX512_ATTR static void kernel_avx512(size_t mr, const float *a, size_t lda, const float *b,
                                      size_t bs, float *c, size_t ldc, size_t kc, int more,
                                      size_t cols) {
    if (mr > 8) kernel_avx512_14(mr, a, lda, b, bs, c, ldc, kc, more, cols);
    else if (mr > 4) kernel_avx512_8(mr, a, lda, b, bs, c, ldc, kc, more, cols);
    else if (mr > 1) kernel_avx512_4(mr, a, lda, b, bs, c, ldc, kc, more, cols);
    else kernel_avx512_1(mr, a, lda, b, bs, c, ldc, kc, more, cols);
}
#endif

/* The two-panel kernel of an instruction set, NULL where it has none. */
typedef void (*pair_fn)(const float *a, size_t lda, const float *b, size_t bs, size_t ps,
                        float *c, size_t ldc, size_t kc, int more, const float *an,
                        float *cn, size_t next_rows);
static pair_fn pair_for(int isa) {
#if VGG_X86_DISPATCH
    if (isa >= VGG_ISA_AVX512) return kernel_avx512_pair;
#endif
    (void)isa;
    return NULL;
}

/* (kernel, rows per call) for an instruction set */
static kernel_fn kernel_for(int isa, size_t *mr) {
#if VGG_X86_DISPATCH
    if (isa >= VGG_ISA_AVX512) {
        *mr = MAX_MR;
        return kernel_avx512;
    }
    if (isa == VGG_ISA_AVX2) {
        *mr = 6;
        return kernel_avx2;
    }
#endif
    (void)isa;
    *mr = PORT_MR;
    return kernel_portable;
}

/* C (m, n): zero when the product is empty (k == 0). */
static void zero_rows(float *c, size_t ldc, size_t m, size_t n) {
    for (size_t i = 0; i < m; i++) memset(c + i * ldc, 0, n * sizeof *c);
}

/* One panel of C, columns [0, cols) at c, for depth k0..k0+kc: the kernel down
 * the m rows in blocks of mr; b is the panel of B (bs floats a row). */
static inline void sweep_rows(kernel_fn kern, size_t mr, float *c, size_t ldc, const float *a,
                              size_t lda, const float *b, size_t bs, size_t m, size_t k0,
                              size_t kc, size_t cols) {
    for (size_t i0 = 0; i0 < m; i0 += mr) {
        const size_t rows = m - i0 < mr ? m - i0 : mr;
        kern(rows, a + i0 * lda + k0, lda, b, bs, c + i0 * ldc, ldc, kc, k0 > 0, cols);
    }
}

/* Two whole panels of C, columns [0, 32) at c (the second panel of B ps floats
 * after the first): the pair kernel down the rows in blocks of PAIR_MR, the
 * one-panel kernel on each panel for the rows left over. */
static inline void sweep_pair(pair_fn pair, kernel_fn kern, size_t mr, float *c, size_t ldc,
                              const float *a, size_t lda, const float *b, size_t bs, size_t ps,
                              size_t m, size_t k0, size_t kc) {
    size_t i0 = 0;
    for (; i0 + PAIR_MR <= m; i0 += PAIR_MR) {
        /* the kernel prefetches the next block's rows of A and C as it goes */
        const size_t next = i0 + PAIR_MR, left = m - next;
        pair(a + i0 * lda + k0, lda, b, bs, ps, c + i0 * ldc, ldc, kc, k0 > 0,
             a + (left ? next : i0) * lda + k0, c + (left ? next : i0) * ldc,
             left < PAIR_MR ? left : PAIR_MR);
    }
    if (i0 < m) {
        sweep_rows(kern, mr, c + i0 * ldc, ldc, a + i0 * lda, lda, b, bs, m - i0, k0, kc, NR);
        sweep_rows(kern, mr, c + i0 * ldc + NR, ldc, a + i0 * lda, lda, b + ps, bs, m - i0, k0,
                   kc, NR);
    }
}

void vgg_gemm(float *c, size_t ldc, const float *a, size_t lda, const float *bp, size_t m,
              size_t n, size_t k) {
    size_t mr;
    const int isa = vgg_get_isa();
    const kernel_fn kern = kernel_for(isa, &mr);
    const pair_fn pair = pair_for(isa);
    const size_t np = (n + NR - 1) / NR;
    if (k == 0) {
        zero_rows(c, ldc, m, n);
        return;
    }
    for (size_t k0 = 0; k0 < k; k0 += KC) {
        const size_t kc = k - k0 < KC ? k - k0 : KC;
        for (size_t p = 0; p < np;) {
            if (pair && n - p * NR >= 2 * NR) { /* two whole panels */
                sweep_pair(pair, kern, mr, c + p * NR, ldc, a, lda, bp + (p * k + k0) * NR, NR,
                           k * NR, m, k0, kc);
                p += 2;
                continue;
            }
            const size_t cols = n - p * NR < NR ? n - p * NR : NR;
            sweep_rows(kern, mr, c + p * NR, ldc, a, lda, bp + (p * k + k0) * NR, NR, m, k0, kc,
                       cols);
            p++;
        }
    }
}

/* Panel q of B's rows k0 .. k0 + kc, as the kernels read it: in place (a row
 * every ldb floats), or when B's rows end before its 16 columns, copied
 * zero-padded into edge (a row every 16). Sets *bs to the row stride. */
static const float *panel_of(const float *b, size_t ldb, size_t n, size_t k0, size_t kc,
                             size_t q, float *edge, size_t *bs) {
    const float *bb = b + k0 * ldb + q * NR;
    if (n - q * NR >= NR) {
        *bs = ldb;
        return bb;
    }
    vgg_gemm_pack_b(edge, bb, ldb, kc, n - q * NR);
    *bs = NR;
    return edge;
}

void vgg_gemm_b(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb,
                size_t m, size_t n, size_t k) {
    size_t mr;
    const int isa = vgg_get_isa();
    const kernel_fn kern = kernel_for(isa, &mr);
    const pair_fn pair = pair_for(isa);
    const size_t np = (n + NR - 1) / NR;
    float edge[KC * NR]; /* a short last panel, zero-padded: B's rows end before 16 columns */
    if (k == 0) {
        zero_rows(c, ldc, m, n);
        return;
    }
    for (size_t k0 = 0; k0 < k; k0 += KC) {
        const size_t kc = k - k0 < KC ? k - k0 : KC;
        for (size_t p = 0; p < np;) {
            if (pair && n - p * NR >= 2 * NR) { /* two whole panels, read in place */
                sweep_pair(pair, kern, mr, c + p * NR, ldc, a, lda, b + k0 * ldb + p * NR, ldb,
                           NR, m, k0, kc);
                p += 2;
                continue;
            }
            const size_t cols = n - p * NR < NR ? n - p * NR : NR;
            size_t bs;
            const float *bb = panel_of(b, ldb, n, k0, kc, p, edge, &bs);
            sweep_rows(kern, mr, c + p * NR, ldc, a, lda, bb, bs, m, k0, kc, cols);
            p++;
        }
    }
}

/* Threads for a product of m x n x k multiply-adds: one when it is too small
 * to pay for waking a team. */
static size_t team_for(size_t m, size_t n, size_t k) {
    if ((double)m * (double)n * (double)k < (double)(1 << 20)) return 1;
    return (size_t)vgg_get_num_threads();
}

/* Blocks of at least this many rows, or panels of columns, per thread. */
#define MIN_ROWS_PER_THREAD 16

void vgg_gemm_b_parallel(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                         size_t ldb, size_t m, size_t n, size_t k) {
    size_t nth = team_for(m, n, k);
    const size_t np = (n + NR - 1) / NR;
    /* split the larger operand, so that each thread streams its share of it and
     * the whole of the smaller one: by rows when A (m, k) is larger than B (k, n)
     * and there are enough rows, else by panels of columns (a dense layer's
     * kernel against a batch) when there are enough panels */
    const int by_rows = np < nth || (m > n && m >= MIN_ROWS_PER_THREAD * nth);
    const size_t units = by_rows ? m : np;
    if (nth > units) nth = units;
    if (nth <= 1) {
        vgg_gemm_b(c, ldc, a, lda, b, ldb, m, n, k);
        return;
    }
    VGG_OMP_FOR_N((int)nth)
    for (size_t t = 0; t < nth; t++) {
        const size_t u0 = t * units / nth, u1 = (t + 1) * units / nth;
        if (by_rows) {
            vgg_gemm_b(c + u0 * ldc, ldc, a + u0 * lda, lda, b, ldb, u1 - u0, n, k);
        } else {
            const size_t j0 = u0 * NR, j1 = u1 * NR < n ? u1 * NR : n;
            vgg_gemm_b(c + j0, ldc, a, lda, b + j0, ldb, m, j1 - j0, k);
        }
    }
}

/* C (m, n) (+)= A^T @ B with A stored (k, m), row-major, leading dimension lda:
 * a weight gradient x^T dz. Blocks of A^T (PAIR_MR or MR rows, KC deep) are
 * copied on the stack, so the kernels and their chains are vgg_gemm_b's; `acc`
 * continues the chains from C's values (a later block of k, exactly). */
void vgg_gemm_at(float *c, size_t ldc, const float *a, size_t lda, const float *b, size_t ldb,
                 size_t m, size_t n, size_t k, int acc) {
    size_t mr;
    const int isa = vgg_get_isa();
    const kernel_fn kern = kernel_for(isa, &mr);
    const pair_fn pair = pair_for(isa);
    const size_t rb = pair ? PAIR_MR : mr; /* rows of A^T copied at a time */
    const size_t np = (n + NR - 1) / NR;
    float at[MAX_MR * KC];
    float edge[KC * NR];
    if (k == 0) {
        if (!acc) zero_rows(c, ldc, m, n);
        return;
    }
    for (size_t k0 = 0; k0 < k; k0 += KC) {
        const size_t kc = k - k0 < KC ? k - k0 : KC;
        const int more = acc || k0 > 0;
        size_t last_bs; /* the last panel, copied once per block when it is short */
        const float *last = panel_of(b, ldb, n, k0, kc, np - 1, edge, &last_bs);
        for (size_t i0 = 0; i0 < m; i0 += rb) {
            const size_t rows = m - i0 < rb ? m - i0 : rb;
            for (size_t p = 0; p < kc; p++)
                for (size_t i = 0; i < rows; i++) at[i * KC + p] = a[(k0 + p) * lda + i0 + i];
            for (size_t q = 0; q < np;) {
                if (pair && rows == PAIR_MR && n - q * NR >= 2 * NR) { /* two whole panels */
                    pair(at, KC, b + k0 * ldb + q * NR, ldb, NR, c + i0 * ldc + q * NR, ldc, kc,
                         more, at, c, 0);
                    q += 2;
                    continue;
                }
                const size_t cols = n - q * NR < NR ? n - q * NR : NR;
                const float *bb = q + 1 < np ? b + k0 * ldb + q * NR : last;
                kern(rows, at, KC, bb, q + 1 < np ? ldb : last_bs, c + i0 * ldc + q * NR, ldc,
                     kc, more, cols);
                q++;
            }
        }
    }
}

void vgg_gemm_at_parallel(float *c, size_t ldc, const float *a, size_t lda, const float *b,
                          size_t ldb, size_t m, size_t n, size_t k, int acc) {
    size_t nth = team_for(m, n, k);
    if (nth > m / MIN_ROWS_PER_THREAD) nth = m / MIN_ROWS_PER_THREAD;
    if (nth <= 1) {
        vgg_gemm_at(c, ldc, a, lda, b, ldb, m, n, k, acc);
        return;
    }
    VGG_OMP_FOR_N((int)nth)
    for (size_t t = 0; t < nth; t++) {
        /* blocks of whole PAIR_MR rows, so that only the last has a short block */
        const size_t blocks = (m + PAIR_MR - 1) / PAIR_MR;
        const size_t r0 = t * blocks / nth * PAIR_MR;
        const size_t r1 = (t + 1) * blocks / nth * PAIR_MR < m ? (t + 1) * blocks / nth * PAIR_MR : m;
        vgg_gemm_at(c + r0 * ldc, ldc, a + r0, lda, b, ldb, r1 - r0, n, k, acc);
    }
}

void vgg_gemm_pack_bt(float *bp, size_t ps, const float *bt, size_t ldbt, size_t k, size_t n) {
    const size_t np = (n + NR - 1) / NR;
    VGG_OMP_FOR_IF(n * k)
    for (size_t p = 0; p < np; p++) {
        const size_t j0 = p * NR, len = n - j0 < NR ? n - j0 : NR;
        float *dst = bp + p * ps;
        for (size_t kk = 0; kk < k; kk++)
            for (size_t j = 0; j < NR; j++) dst[kk * NR + j] = j < len ? bt[(j0 + j) * ldbt + kk] : 0.0f;
    }
}

void vgg_gemm_parallel(float *c, size_t ldc, const float *a, size_t lda, const float *bp, size_t m,
                       size_t n, size_t k) {
    size_t nth = team_for(m, n, k);
    const size_t np = (n + NR - 1) / NR;
    if (nth > np) nth = np;
    if (nth <= 1) {
        vgg_gemm(c, ldc, a, lda, bp, m, n, k);
        return;
    }
    /* by panels of columns: each thread reads its share of B once */
    VGG_OMP_FOR_N((int)nth)
    for (size_t t = 0; t < nth; t++) {
        const size_t p0 = t * np / nth, p1 = (t + 1) * np / nth;
        const size_t j0 = p0 * NR, j1 = p1 * NR < n ? p1 * NR : n;
        vgg_gemm(c + j0, ldc, a, lda, bp + p0 * NR * k, m, j1 - j0, k);
    }
}
