/*
 * winograd_body.h - one Winograd F(TILE x TILE, 3 x 3) convolution in float32,
 * included by winograd.c once per tile size (F(3x3), F(4x4), F(6x6)). Before each
 * inclusion winograd.c defines TILE, ALPHA (TILE + 2), NXI (ALPHA^2), the 1-D
 * transforms WB_BT (B^T d), WB_AT (A^T m) and WB_G (G g) for VW lanes, their
 * adjoints WB_A (A y) and WB_GT (G^T u) for the weight gradient, and WF(name),
 * which gives every function here the tile size's suffix; the end of this file
 * undefines them all for the next inclusion.
 * Everything below is static; winograd.c's public functions choose a size.
 */

/* The block buffers: V (NXI, tb, Cin) and M (NXI, tb, Cout), position-major so
 * that each of the NXI products reads and writes whole matrices, sized to stay
 * in L2 where the channels are few, and longer where U is large (a longer block
 * reuses each slice of U on more rows). A tile's result does not depend on the block it is
 * in (gemm.c), so the block size is free to follow the layer. */

/* Whether U is small enough for each thread to run its own tiles through all
 * three phases (run_block). */
static int WF(u_is_small)(size_t cin, size_t cout) {
    return (size_t)NXI * cin * cout * sizeof(float) <= LOCAL_U_BYTES;
}

static size_t WF(tiles_per_block)(size_t cin, size_t cout) {
    const size_t tb = BLOCK_BYTES / (sizeof(float) * NXI * (cin + cout));
    const size_t min_tb = WF(u_is_small)(cin, cout) ? MIN_TB : MIN_TB_WIDE;
    return tb < min_tb ? min_tb : tb;
}

/* Strides of the NXI slices of U, V and M, one cache line more than packed:
 * packed, they are multiples of 4 KiB and the NXI streams a transform reads or
 * writes would all fall in one cache set. */
static size_t WF(u_stride)(size_t cin, size_t cout) { return vgg_gemm_packed_floats(cin, cout) + PAD; }
static size_t WF(v_stride)(size_t tb, size_t cin) { return tb * cin + PAD; }
static size_t WF(m_stride)(size_t tb, size_t cout) { return tb * cout + PAD; }

static size_t WF(block_floats)(size_t tb, size_t cin, size_t cout) {
    return NXI * (WF(v_stride)(tb, cin) + WF(m_stride)(tb, cout));
}

static size_t WF(prepared_floats)(size_t cin, size_t cout) { return NXI * WF(u_stride)(cin, cout); }

static size_t WF(workspace_floats)(size_t cin, size_t cout, int prepared) {
    const size_t tb = WF(tiles_per_block)(cin, cout);
    return (prepared ? 0 : WF(prepared_floats)(cin, cout)) + WF(block_floats)(tb, cin, cout);
}


/* U (NXI, cin, cout) for input channels [c0, c1): u_xi = (G g G^T)_xi. */
ALWAYS_INLINE void WF(kernel_transform_body)(float *u, const float *kernel, const wino_shape *s,
                                         size_t c0, size_t c1) {
    const size_t cin = s->cin, cout = s->cout;
    float g[9][VW], t[ALPHA][3][VW], r[ALPHA][ALPHA][VW];
    for (size_t c = c0; c < c1; c++) {
        for (size_t k0 = 0; k0 < cout; k0 += VW) {
            const size_t len = cout - k0 < VW ? cout - k0 : VW;
            vgg_kernel_taps(g, kernel, cin, cout, c, k0, len);
            /* t (ALPHA x 3) = G g, then r (ALPHA x ALPHA) = t G^T */
            for (int j = 0; j < 3; j++) WB_G(&t[0][j][0], 3 * VW, &g[j][0], 3 * VW);
            for (int i = 0; i < ALPHA; i++) WB_G(&r[i][0][0], VW, &t[i][0][0], VW);
            (void)len; /* the taps past len are zero, and so is their padding in U */
            /* into panel k0 / 16 of the packed U_xi (gemm.c), row c */
            for (int xi = 0; xi < NXI; xi++)
                memcpy(u + (size_t)xi * WF(u_stride)(cin, cout) + (k0 * cin + c * VW),
                       &r[xi / ALPHA][xi % ALPHA][0], sizeof(float) * VW);
        }
    }
}

/* V (NXI, tb, cin) rows tt..tt+(t1-t0) <- B^T d B of tiles t0..t1-1, where tt is
 * the place of tile t0 in its block. */
ALWAYS_INLINE void WF(input_transform_body)(float *vbuf, size_t vs, const float *x,
                                        const wino_shape *s, size_t t0, size_t t1, size_t tt) {
    const size_t h = s->h, w = s->w, cin = s->cin;
    const size_t per_img = s->th * s->tw;
    float d[ALPHA][ALPHA][VW], t[ALPHA][ALPHA][VW], r[ALPHA][ALPHA][VW];
    const int wide = !WF(u_is_small)(cin, s->cout); /* long blocks (MIN_TB_WIDE) */
    for (size_t t_ = t0; t_ < t1; t_++) {
        const size_t img = t_ / per_img, rem = t_ % per_img;
        const long y0 = (long)(rem / s->tw) * TILE - 1, x0 = (long)(rem % s->tw) * TILE - 1;
        const float *x_img = x + img * h * w * cin;
        /* what the next tile of the image gathers that this one does not: the
         * columns to the right of this patch, or the first patch of the next row */
        long ya = y0, yb = y0 + ALPHA, xa = x0 + ALPHA, xb = x0 + ALPHA + TILE;
        if (rem % s->tw + 1 == s->tw) {
            ya = y0 + TILE;
            yb = rem + 1 < per_img ? ya + ALPHA : ya;
            xa = -1;
            xb = ALPHA - 1;
        }
        for (size_t c0 = 0; c0 < cin; c0 += VW) {
            const size_t len = cin - c0 < VW ? cin - c0 : VW;
            vgg_tile_prefetch_rect(x_img, ya, yb, xa, xb, h, w, cin, c0);
            if (wide && t_ + 1 < t1) /* the next tile's rows of V: beyond the caches here */
                vgg_prefetch_strided(vbuf + (tt + t_ + 1 - t0) * cin + c0, vs, NXI);
            vgg_tile_gather(&d[0][0][0], ALPHA, x_img, y0, x0, h, w, cin, c0, len);
            /* t = B^T d (over rows), r = t B (over columns) */
            for (int j = 0; j < ALPHA; j++) WB_BT(&t[0][j][0], ALPHA * VW, &d[0][j][0], ALPHA * VW);
            for (int i = 0; i < ALPHA; i++) WB_BT(&r[i][0][0], VW, &t[i][0][0], VW);
            float *dst = vbuf + (tt + t_ - t0) * cin + c0;
            for (int xi = 0; xi < NXI; xi++) {
                const float *val = &r[xi / ALPHA][xi % ALPHA][0];
                float *o = dst + (size_t)xi * vs;
                if (len == VW) {
                    memcpy(o, val, sizeof(float) * VW);
                } else {
                    for (size_t v = 0; v < len; v++) o[v] = val[v];
                }
            }
        }
    }
}

/* out tiles t0..t1-1 <- act(A^T M A + bias), cropped to the image, or its 2x2
 * max-pool (winograd_tiles.h). */
ALWAYS_INLINE void WF(output_transform_body)(float *out, const float *mbuf, size_t ms,
                                         const float *bias, int relu, int pool,
                                         const wino_shape *s, size_t t0, size_t t1, size_t tt) {
    const size_t cout = s->cout;
    const size_t per_img = s->th * s->tw;
    float m[ALPHA][ALPHA][VW], t[TILE][ALPHA][VW], y[TILE][TILE][VW], b[VW];
    const int wide = !WF(u_is_small)(s->cin, cout); /* long blocks (MIN_TB_WIDE) */
    for (size_t t_ = t0; t_ < t1; t_++) {
        const size_t img = t_ / per_img, rem = t_ % per_img;
        const size_t y0 = (rem / s->tw) * TILE, x0 = (rem % s->tw) * TILE;
        /* the next tile of the image: to the right, or the first of the next row */
        const int next_in_row = rem % s->tw + 1 < s->tw;
        const size_t ny0 = next_in_row ? y0 : y0 + TILE, nx0 = next_in_row ? x0 + TILE : 0;
        for (size_t k0 = 0; k0 < cout; k0 += VW) {
            const size_t len = cout - k0 < VW ? cout - k0 : VW;
            const float *src = mbuf + (tt + t_ - t0) * cout + k0;
            if (wide && t_ + 1 < t1) /* the next tile's rows of M */
                vgg_prefetch_strided(src + cout, ms, NXI);
            vgg_tile_prefetch_store(out, TILE, pool, s->h, s->w, cout, img, ny0, nx0, k0);
            for (int xi = 0; xi < NXI; xi++) {
                const float *p = src + (size_t)xi * ms;
                float *dst = &m[xi / ALPHA][xi % ALPHA][0];
                if (len == VW) {
                    memcpy(dst, p, sizeof(float) * VW);
                } else {
                    for (size_t v = 0; v < VW; v++) dst[v] = v < len ? p[v] : 0.0f;
                }
            }
            vgg_tile_bias(b, bias, k0, len);
            /* t = A^T m (over rows), y = t A (over columns) */
            for (int j = 0; j < ALPHA; j++) WB_AT(&t[0][j][0], ALPHA * VW, &m[0][j][0], ALPHA * VW);
            for (int i = 0; i < TILE; i++) WB_AT(&y[i][0][0], VW, &t[i][0][0], VW);
            vgg_tile_store(out, &y[0][0][0], TILE, b, relu, pool, s->h, s->w, cout, img, y0, x0,
                           k0, len);
        }
    }
}

/* The weight gradient. The forward pass is linear in each tile's U = G g G^T, so
 * for Y = A^T [U (.) V] A summed over tiles and input channels:
 *   dU_xi (Cin, Cout) = V_xi^T (Cin, tiles) @ D_xi (tiles, Cout),  D = A dY A^T
 *   dg = G^T dU G
 * where dY is dL/d(output) on the tile, zero past the image. */

/* D (NXI, tb, cout) rows tt..tt+(t1-t0) <- A dY A^T of tiles t0..t1-1 of dout. */
ALWAYS_INLINE void WF(grad_transform_body)(float *dbuf, size_t ds, const float *dout,
                                           const wino_shape *s, size_t t0, size_t t1,
                                           size_t tt) {
    const size_t h = s->h, w = s->w, cout = s->cout;
    const size_t per_img = s->th * s->tw;
    float y[TILE][TILE][VW], t[ALPHA][TILE][VW], r[ALPHA][ALPHA][VW];
    for (size_t t_ = t0; t_ < t1; t_++) {
        const size_t img = t_ / per_img, rem = t_ % per_img;
        const long y0 = (long)(rem / s->tw) * TILE, x0 = (long)(rem % s->tw) * TILE;
        const float *g_img = dout + img * h * w * cout;
        for (size_t k0 = 0; k0 < cout; k0 += VW) {
            const size_t len = cout - k0 < VW ? cout - k0 : VW;
            vgg_tile_gather(&y[0][0][0], TILE, g_img, y0, x0, h, w, cout, k0, len);
            /* t = A y (over rows), r = t A^T (over columns) */
            for (int j = 0; j < TILE; j++) WB_A(&t[0][j][0], TILE * VW, &y[0][j][0], TILE * VW);
            for (int i = 0; i < ALPHA; i++) WB_A(&r[i][0][0], VW, &t[i][0][0], VW);
            float *dst = dbuf + (tt + t_ - t0) * cout + k0;
            for (int xi = 0; xi < NXI; xi++)
                vgg_tile_copy(dst + (size_t)xi * ds, &r[xi / ALPHA][xi % ALPHA][0], len);
        }
    }
}

/* dw (3, 3, cin, cout) rows of input channels [c0, c1) <- G^T dU G, dU_xi a
 * (cin, cout) matrix at du + xi * dus. */
ALWAYS_INLINE void WF(kernel_grad_body)(float *dw, const float *du, size_t dus,
                                        const wino_shape *s, size_t c0, size_t c1) {
    const size_t cin = s->cin, cout = s->cout;
    float u[ALPHA][ALPHA][VW], t[3][ALPHA][VW], r[3][3][VW];
    for (size_t c = c0; c < c1; c++) {
        for (size_t k0 = 0; k0 < cout; k0 += VW) {
            const size_t len = cout - k0 < VW ? cout - k0 : VW;
            for (int xi = 0; xi < NXI; xi++) {
                const float *p = du + (size_t)xi * dus + c * cout + k0;
                float *dst = &u[xi / ALPHA][xi % ALPHA][0];
                if (len == VW) {
                    memcpy(dst, p, sizeof(float) * VW);
                } else {
                    for (size_t v = 0; v < VW; v++) dst[v] = v < len ? p[v] : 0.0f;
                }
            }
            /* t (3 x ALPHA) = G^T u, then r (3 x 3) = t G */
            for (int j = 0; j < ALPHA; j++) WB_GT(&t[0][j][0], ALPHA * VW, &u[0][j][0], ALPHA * VW);
            for (int i = 0; i < 3; i++) WB_GT(&r[i][0][0], VW, &t[i][0][0], VW);
            for (int q = 0; q < 9; q++)
                vgg_tile_copy(dw + ((size_t)q * cin + c) * cout + k0, &r[q / 3][q % 3][0], len);
        }
    }
}

/* ---- one function per instruction set ------------------------------------ */

#define WF_TRANSFORMS(suffix, attr)                                                  \
    attr static void WF(kernel_transform_##suffix)(float *u, const float *k, const wino_shape *s, \
                                               size_t c0, size_t c1) {                   \
        WF(kernel_transform_body)(u, k, s, c0, c1);                                          \
    }                                                                                    \
    attr static void WF(input_transform_##suffix)(float *v, size_t vs, const float *x,       \
                                              const wino_shape *s, size_t t0, size_t t1, \
                                              size_t tt) {                               \
        WF(input_transform_body)(v, vs, x, s, t0, t1, tt);                                   \
    }                                                                                    \
    attr static void WF(output_transform_##suffix)(float *o, const float *m, size_t ms,      \
                                               const float *b, int relu, int pool,       \
                                               const wino_shape *s, size_t t0, size_t t1, \
                                               size_t tt) {                              \
        WF(output_transform_body)(o, m, ms, b, relu, pool, s, t0, t1, tt);                   \
    } \
    attr static void WF(grad_transform_##suffix)(float *d, size_t ds, const float *g,         \
                                             const wino_shape *s, size_t t0, size_t t1,  \
                                             size_t tt) {                                \
        WF(grad_transform_body)(d, ds, g, s, t0, t1, tt);                                    \
    }                                                                                    \
    attr static void WF(kernel_grad_##suffix)(float *dw, const float *du, size_t dus,         \
                                          const wino_shape *s, size_t c0, size_t c1) {   \
        WF(kernel_grad_body)(dw, du, dus, s, c0, c1);                                        \
    }

WF_TRANSFORMS(portable, )
#if VGG_X86_DISPATCH
WF_TRANSFORMS(avx2, __attribute__((target("avx2,fma"))))
WF_TRANSFORMS(avx512, __attribute__((target("avx512f,avx2,fma"))))
#endif

typedef struct {
    void (*kernel)(float *, const float *, const wino_shape *, size_t, size_t);
    void (*input)(float *, size_t, const float *, const wino_shape *, size_t, size_t, size_t);
    void (*output)(float *, const float *, size_t, const float *, int, int, const wino_shape *,
                   size_t, size_t, size_t);
    void (*grad)(float *, size_t, const float *, const wino_shape *, size_t, size_t, size_t);
    void (*kernel_grad)(float *, const float *, size_t, const wino_shape *, size_t, size_t);
} WF(transforms);

static WF(transforms) WF(transforms_for)(int isa) {
#if VGG_X86_DISPATCH
    if (isa >= VGG_ISA_AVX512)
        return (WF(transforms)){WF(kernel_transform_avx512), WF(input_transform_avx512),
                                WF(output_transform_avx512), WF(grad_transform_avx512),
                                WF(kernel_grad_avx512)};
    if (isa == VGG_ISA_AVX2)
        return (WF(transforms)){WF(kernel_transform_avx2), WF(input_transform_avx2),
                                WF(output_transform_avx2), WF(grad_transform_avx2),
                                WF(kernel_grad_avx2)};
#endif
    (void)isa;
    return (WF(transforms)){WF(kernel_transform_portable), WF(input_transform_portable),
                            WF(output_transform_portable), WF(grad_transform_portable),
                            WF(kernel_grad_portable)};
}

/* One block of nt tiles from tile t0, all threads together. Where U is small,
 * each thread runs its own share of the tiles through the three phases. Else
 * phase by phase: the input transform (tasks of tiles), the NXI products (tasks
 * of one position and a group of panels, so each thread reads part of U), the
 * output transform (tasks of tiles); each phase waits for the one before. Who
 * computes what never changes a value. */
static void WF(run_block)(const WF(transforms) *fn, const wino_shape *s, float *out, const float *x,
                      const float *u, const float *bias, int relu, int pool, float *vbuf,
                      float *mbuf, size_t tb, size_t t0, size_t nt, int nth) {
    const size_t cin = s->cin, cout = s->cout;
    const size_t vs = WF(v_stride)(tb, cin), ms = WF(m_stride)(tb, cout), us = WF(u_stride)(cin, cout);
    if (WF(u_is_small)(cin, cout)) {
        /* few channels: each thread takes a share of the block's tiles through all
         * three phases, so the rows of V and M it writes are the ones it reads
         * (nothing moves between the cores' caches, no barrier inside the block);
         * every thread then reads all of U, which is small here */
        const size_t parts = (size_t)nth < nt ? (size_t)nth : nt;
        VGG_OMP_FOR_N(nth)
        for (size_t p = 0; p < parts; p++) {
            const size_t a = nt * p / parts, b = nt * (p + 1) / parts;
            fn->input(vbuf, vs, x, s, t0 + a, t0 + b, a);
            for (size_t xi = 0; xi < NXI; xi++)
                vgg_gemm(mbuf + xi * ms + a * cout, cout, vbuf + xi * vs + a * cin, cin,
                         u + xi * us, b - a, cout, cin);
            fn->output(out, mbuf, ms, bias, relu, pool, s, t0 + a, t0 + b, a);
        }
        return;
    }
    const size_t ntasks = (nt + TILES_PER_TASK - 1) / TILES_PER_TASK;
    /* panel groups per position: enough tasks for every thread to get several */
    const size_t np = (cout + VGG_GEMM_NR - 1) / VGG_GEMM_NR;
    size_t groups = (4 * (size_t)nth + NXI - 1) / NXI;
    if (groups > np) groups = np;
    const size_t per_group = (np + groups - 1) / groups;
    groups = (np + per_group - 1) / per_group;
    VGG_OMP_PARALLEL_N(nth)
    {
        VGG_OMP_FOR_NOWAIT_STATIC
        for (size_t i = 0; i < ntasks; i++) {
            const size_t a = i * TILES_PER_TASK, b = a + TILES_PER_TASK < nt ? a + TILES_PER_TASK : nt;
            fn->input(vbuf, vs, x, s, t0 + a, t0 + b, a);
        }
        VGG_OMP_BARRIER
        VGG_OMP_FOR_NOWAIT_DYNAMIC
        for (size_t i = 0; i < NXI * groups; i++) {
            const size_t xi = i / groups, p0 = (i % groups) * per_group;
            const size_t p1 = p0 + per_group < np ? p0 + per_group : np;
            const size_t c0 = p0 * VGG_GEMM_NR, c1 = p1 * VGG_GEMM_NR < cout ? p1 * VGG_GEMM_NR : cout;
            vgg_gemm(mbuf + xi * ms + c0, cout, vbuf + xi * vs, cin,
                     u + xi * us + p0 * VGG_GEMM_NR * cin, nt, c1 - c0, cin);
        }
        VGG_OMP_BARRIER
        VGG_OMP_FOR_NOWAIT_STATIC
        for (size_t i = 0; i < ntasks; i++) {
            const size_t a = i * TILES_PER_TASK, b = a + TILES_PER_TASK < nt ? a + TILES_PER_TASK : nt;
            fn->output(out, mbuf, ms, bias, relu, pool, s, t0 + a, t0 + b, a);
        }
    }
}

/* U <- the kernel transformed, split by input channel. */
static void WF(prepare)(float *u, const float *kernel, const wino_shape *s, const WF(transforms) *fn) {
    VGG_OMP_FOR_N(vgg_get_num_threads())
    for (size_t c = 0; c < s->cin; c++) fn->kernel(u, kernel, s, c, c + 1);
}

static int WF(prepare_kernel)(float *u, size_t u_floats, const float *kernel, size_t cin,
                         size_t cout) {
    VGG_CHECK(u && kernel, VGG_ERR_ARG);
    VGG_CHECK(cin >= 1 && cout >= 1 && cin <= VGG_BLAS_MAX_DIM && cout <= VGG_BLAS_MAX_DIM,
              VGG_ERR_SHAPE);
    VGG_CHECK(u_floats >= WF(prepared_floats)(cin, cout), VGG_ERR_SHAPE);
    const wino_shape s = {0, 0, 0, cin, cout, 0, 0};
    const WF(transforms) fn = WF(transforms_for)(vgg_get_isa());
    WF(prepare)(u, kernel, &s, &fn);
    return VGG_OK;
}

static int WF(forward)(float *out, const float *x, const float *kernel,
                                 const float *u_prepared, const float *bias, int relu, int pool,
                                 size_t n, size_t h, size_t w, size_t cin, size_t cout,
                                 float *workspace, size_t workspace_floats,
                                 vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(out && x && (kernel || u_prepared) && bias && workspace, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1 && cin >= 1 && cout >= 1, VGG_ERR_SHAPE);
    VGG_CHECK(cin <= VGG_BLAS_MAX_DIM && cout <= VGG_BLAS_MAX_DIM, VGG_ERR_SHAPE);
    if (n == 0) return VGG_OK;
    size_t tiles, check;
    /* the strides are products of cin and cout: reject sizes they would overflow */
    VGG_CHECK(vgg_mul_ok(cin + PAD, cout + PAD, &check) && vgg_mul_ok(NXI, check, &check),
              VGG_ERR_SHAPE);
    const size_t u_n = u_prepared ? 0 : WF(prepared_floats)(cin, cout);
    VGG_CHECK(workspace_floats >= u_n, VGG_ERR_NOMEM);
    /* the longest block the workspace holds, up to the layer's own size */
    size_t tb = WF(tiles_per_block)(cin, cout);
    while (tb > 1 && WF(block_floats)(tb, cin, cout) > workspace_floats - u_n) tb /= 2;
    VGG_CHECK(WF(block_floats)(tb, cin, cout) <= workspace_floats - u_n, VGG_ERR_NOMEM);
    const wino_shape s = {n, h, w, cin, cout, (h + TILE - 1) / TILE, (w + TILE - 1) / TILE};
    VGG_CHECK(vgg_mul_ok(s.th * s.tw, n, &tiles), VGG_ERR_SHAPE);
    if (tb > tiles) tb = tiles;
    const WF(transforms) fn = WF(transforms_for)(vgg_get_isa());
    const int nth = vgg_get_num_threads();
    float *vbuf = workspace + u_n, *mbuf = vbuf + NXI * WF(v_stride)(tb, cin);
    const float *u = u_prepared;
    if (!u) {
        WF(prepare)(workspace, kernel, &s, &fn);
        u = workspace;
    }
    /* blocks of even lengths (differing by one at most): a short last block
     * would read all of U for a few tiles */
    const size_t blocks = (tiles + tb - 1) / tb;
    for (size_t b = 0; b < blocks; b++) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t t0 = vgg_even_start(tiles, blocks, b);
        const size_t nt = vgg_even_start(tiles, blocks, b + 1) - t0;
        WF(run_block)(&fn, &s, out, x, u, bias, relu, pool, vbuf, mbuf, tb, t0, nt, nth);
    }
    return VGG_OK;
}

/* ---- the weight gradient ------------------------------------------------- */

/* dU's slices, padded as U's (a multiple of 4 KiB apart otherwise), and blocks of
 * up to GRAD_TB tiles: each block's products read and write all of dU (a KC-deep
 * pass of gemm.c at a time), so blocks as long as that depth. */
static size_t WF(du_stride)(size_t cin, size_t cout) { return cin * cout + PAD; }

static size_t WF(grad_workspace_floats)(size_t cin, size_t cout) {
    return NXI * WF(du_stride)(cin, cout) + WF(block_floats)(GRAD_TB, cin, cout);
}

static int WF(weight_grad)(float *dw, const float *dout, const float *x, size_t n, size_t h,
                           size_t w, size_t cin, size_t cout, float *workspace,
                           size_t workspace_floats, vgg_abort_fn abort_cb, void *abort_ctx) {
    VGG_CHECK(dw && dout && x && workspace, VGG_ERR_ARG);
    VGG_CHECK(h >= 1 && w >= 1 && cin >= 1 && cout >= 1, VGG_ERR_SHAPE);
    VGG_CHECK(cin <= VGG_BLAS_MAX_DIM && cout <= VGG_BLAS_MAX_DIM, VGG_ERR_SHAPE);
    size_t tiles, check;
    VGG_CHECK(vgg_mul_ok(cin + PAD, cout + PAD, &check) && vgg_mul_ok(NXI, check, &check),
              VGG_ERR_SHAPE);
    VGG_CHECK(workspace_floats >= WF(grad_workspace_floats)(cin, cout), VGG_ERR_NOMEM);
    const wino_shape s = {n, h, w, cin, cout, (h + TILE - 1) / TILE, (w + TILE - 1) / TILE};
    VGG_CHECK(vgg_mul_ok(s.th * s.tw, n, &tiles), VGG_ERR_SHAPE);
    const size_t tb = GRAD_TB, dus = WF(du_stride)(cin, cout);
    const size_t vs = WF(v_stride)(tb, cin), gs = WF(m_stride)(tb, cout);
    float *du = workspace, *vbuf = du + NXI * dus, *gbuf = vbuf + NXI * vs;
    const WF(transforms) fn = WF(transforms_for)(vgg_get_isa());
    const int nth = vgg_get_num_threads();
    for (size_t t0 = 0; t0 < tiles; t0 += tb) {
        if (vgg_should_abort(abort_cb, abort_ctx)) return VGG_ERR_CANCELLED;
        const size_t nt = tiles - t0 < tb ? tiles - t0 : tb;
        const size_t ntasks = (nt + TILES_PER_TASK - 1) / TILES_PER_TASK;
        const int more = t0 > 0; /* later blocks continue each sum's chain */
        VGG_OMP_PARALLEL_N(nth)
        {
            VGG_OMP_FOR_NOWAIT_STATIC
            for (size_t i = 0; i < ntasks; i++) {
                const size_t a = i * TILES_PER_TASK, b = a + TILES_PER_TASK < nt ? a + TILES_PER_TASK : nt;
                fn.input(vbuf, vs, x, &s, t0 + a, t0 + b, a);
                fn.grad(gbuf, gs, dout, &s, t0 + a, t0 + b, a);
            }
            VGG_OMP_BARRIER
            /* a position per task: each sum is one chain, whoever computes it */
            VGG_OMP_FOR_NOWAIT_DYNAMIC
            for (size_t xi = 0; xi < NXI; xi++)
                vgg_gemm_at(du + xi * dus, cout, vbuf + xi * vs, cin, gbuf + xi * gs, cout, cin,
                            cout, nt, more);
        }
    }
    if (tiles == 0) {
        memset(dw, 0, 9 * cin * cout * sizeof(float));
        return VGG_OK;
    }
    VGG_OMP_FOR_N(nth)
    for (size_t c = 0; c < cin; c++) fn.kernel_grad(dw, du, dus, &s, c, c + 1);
    return VGG_OK;
}

#undef WF_TRANSFORMS
#undef TILE
#undef ALPHA
#undef NXI
#undef WB_BT
#undef WB_AT
#undef WB_G
#undef WB_A
#undef WB_GT
#undef WF
