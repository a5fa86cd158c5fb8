/*
 * cpu.c - which instruction set and which convolution algorithm the core uses.
 *
 * One build runs on every x86-64 CPU: the kernels that vggtl vectorises itself
 * (winograd.c) are compiled three times, for AVX-512, AVX2+FMA and the
 * baseline, with GCC/Clang function attributes, and the best one the CPU has is
 * chosen once, when the module loads (vgg_cpu_init). vgg_set_isa forces another
 * (tests run every path the machine can; $VGGTL_ISA does it from Python). The
 * AVX512_BF16 level adds the VDPBF16PS kernel of the bf16 path, AMX_BF16 the
 * tile kernel (the process asks Linux for the tile state once). No path
 * calls OpenBLAS's kernels (vggtl/__init__.py still maps $VGGTL_ISA to
 * $OPENBLAS_CORETYPE before it loads, for the library it links).
 */
#define _DEFAULT_SOURCE /* syscall(), for arch_prctl, under -std=c11 */
#include "vgg_internal.h"

#if VGG_X86_DISPATCH
#include <cpuid.h>
#endif
#if VGG_HAVE_AMX
#include <sys/syscall.h>
#include <unistd.h>
#endif

static int g_isa = -1;       /* -1: not chosen yet */
static int g_conv_algo = VGG_CONV_AUTO;

#if VGG_HAVE_AMX
/* AMX-TILE and AMX-BF16 (CPUID.(7,0):EDX bits 24 and 22), the tile state
 * enabled by the OS (XCR0 bits 17 and 18), and Linux's permission for this
 * process to use it (arch_prctl ARCH_REQ_XCOMP_PERM for XTILEDATA, granted to
 * every thread, asked for once: a kernel without it refuses, and then the CPU
 * is treated as having no AMX). */
static int amx_usable(void) {
    static int state = -1; /* -1 unknown, 0 no, 1 yes */
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (s >= 0) return s;
    unsigned a = 0, b = 0, c = 0, d = 0;
    s = 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 24 & 1u) && (d >> 22 & 1u)) {
        unsigned lo, hi;
        __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
        (void)hi;
        if ((lo >> 17 & 3u) == 3u) s = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                              18 /* XFEATURE_XTILEDATA */) == 0;
    }
    __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    return s;
}
#endif

int vgg_isa_supported(int isa) {
    switch (isa) {
    case VGG_ISA_PORTABLE: return 1;
#if VGG_X86_DISPATCH
    case VGG_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case VGG_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma");
#if VGG_HAVE_AVX512BF16
    case VGG_ISA_AVX512_BF16: {
        /* CPUID.(EAX=7,ECX=1):EAX bit 5 (older compilers' __builtin_cpu_supports
         * lack the name); the OS's AVX-512 state is checked by avx512f above */
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (!vgg_isa_supported(VGG_ISA_AVX512) || !__get_cpuid_count(7, 1, &a, &b, &c, &d))
            return 0;
        return __builtin_cpu_supports("avx512bw") && (a >> 5 & 1u);
    }
#endif
#if VGG_HAVE_AMX
    case VGG_ISA_AMX_BF16:
        return vgg_isa_supported(VGG_ISA_AVX512_BF16) && amx_usable();
#endif
#endif
    default: return 0;
    }
}

static int best_isa(void) {
    if (vgg_isa_supported(VGG_ISA_AMX_BF16)) return VGG_ISA_AMX_BF16;
    if (vgg_isa_supported(VGG_ISA_AVX512_BF16)) return VGG_ISA_AVX512_BF16;
    if (vgg_isa_supported(VGG_ISA_AVX512)) return VGG_ISA_AVX512;
    if (vgg_isa_supported(VGG_ISA_AVX2)) return VGG_ISA_AVX2;
    return VGG_ISA_PORTABLE;
}

int vgg_set_isa(int isa) {
    if (isa == VGG_ISA_BEST) isa = best_isa();
    VGG_CHECK(vgg_isa_supported(isa), VGG_ERR_ARG);
    __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
    return VGG_OK;
}

int vgg_get_isa(void) {
    int isa = __atomic_load_n(&g_isa, __ATOMIC_RELAXED);
    if (isa < 0) {
        isa = best_isa();
        __atomic_store_n(&g_isa, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

const char *vgg_isa_name(int isa) {
    switch (isa) {
    case VGG_ISA_PORTABLE: return "portable";
    case VGG_ISA_AVX2: return "avx2";
    case VGG_ISA_AVX512: return "avx512";
    case VGG_ISA_AVX512_BF16: return "avx512_bf16";
    case VGG_ISA_AMX_BF16: return "amx_bf16";
    default: return NULL;
    }
}

int vgg_set_conv_algo(int algo) {
    VGG_CHECK(algo == VGG_CONV_AUTO || algo == VGG_CONV_IM2COL || algo == VGG_CONV_WINOGRAD ||
                  algo == VGG_CONV_WINOGRAD6 || algo == VGG_CONV_WINOGRAD3,
              VGG_ERR_ARG);
    __atomic_store_n(&g_conv_algo, algo, __ATOMIC_RELAXED);
    return VGG_OK;
}

int vgg_get_conv_algo(void) { return __atomic_load_n(&g_conv_algo, __ATOMIC_RELAXED); }

const char *vgg_conv_algo_name(int algo) {
    switch (algo) {
    case VGG_CONV_AUTO: return "auto";
    case VGG_CONV_IM2COL: return "im2col";
    case VGG_CONV_WINOGRAD: return "winograd";
    case VGG_CONV_WINOGRAD_BF16: return "winograd_bf16";
    case VGG_CONV_WINOGRAD6: return "winograd6";
    case VGG_CONV_WINOGRAD_BF16_AMX: return "winograd_bf16_amx";
    case VGG_CONV_WINOGRAD3: return "winograd3";
    default: return NULL;
    }
}
