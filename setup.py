"""Build of vggtl._core (the C core in csrc/ plus the NumPy glue in csrc/py/) and
vggtl._kernels (the single kernels the tests call, csrc/py/kernels.c).

Environment variables (all optional):
  VGGTL_BLAS=scipy-openblas32 (default) | system
      scipy-openblas32 comes from PyPI (a build and a pinned runtime requirement), so
      `pip install .` needs no system package. Its symbols are prefixed `scipy_`.
      `system` links the OpenBLAS that `pkg-config openblas` finds.
  VGGTL_NO_OPENMP=1   build without OpenMP (kernels run on one thread; BLAS still threads).
  VGGTL_NATIVE=1      add -march=native (local builds only; never in a wheel).
  VGGTL_DEBUG=1       -O0 -g, asserts on.
  VGGTL_WERROR=1      compiler warnings are errors (CI sets it).
  VGGTL_SANITIZE=address,undefined   build with sanitizers, any report fatal (see .ci/asan).
"""
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from glob import glob

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
WARNINGS = ["-Wall", "-Wextra", "-Wshadow", "-Wpointer-arith", "-Wstrict-prototypes",
            "-Wno-unused-parameter", "-Wno-cast-function-type"]


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def compiles_with_openmp(compiler_cmd):
    """Test-compile a tiny OpenMP program (as scikit-learn's openmp_helpers does)."""
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=omp_get_num_threads()>0;\nreturn n>0?0:1;}\n"
    with tempfile.TemporaryDirectory() as d:
        c = os.path.join(d, "t.c")
        with open(c, "w") as f:
            f.write(src)
        try:
            r = subprocess.run(compiler_cmd + ["-fopenmp", c, "-o", os.path.join(d, "t")],
                               capture_output=True)
        except OSError:
            return False
        return r.returncode == 0


def blas_config():
    """(include_dirs, library_dirs, libraries, macros, extra_link_args)."""
    choice = os.environ.get("VGGTL_BLAS", "scipy-openblas32").strip().lower()
    if choice == "system":
        def pc(*args):
            return shlex.split(subprocess.check_output(["pkg-config", *args, "openblas"], text=True))
        try:
            cflags, libs = pc("--cflags"), pc("--libs")
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"VGGTL_BLAS=system: pkg-config could not find openblas ({e}); "
                     "install libopenblas-dev or unset VGGTL_BLAS")
        inc = [f[2:] for f in cflags if f.startswith("-I")]
        libdirs = [f[2:] for f in libs if f.startswith("-L")]
        libnames = [f[2:] for f in libs if f.startswith("-l")]
        return inc, libdirs, libnames, [], []
    if choice != "scipy-openblas32":
        sys.exit(f"VGGTL_BLAS: expected 'scipy-openblas32' or 'system', got {choice!r}")
    import scipy_openblas32 as sob
    # At run time vggtl/__init__.py imports scipy_openblas32 first, which loads the
    # library into the process, so the soname is found whatever the install layout;
    # the relative rpath covers a direct `import vggtl._core` from site-packages.
    return ([sob.get_include_dir()], [sob.get_lib_dir()], [sob.get_library()],
            [("BLAS_SYMBOL_PREFIX", "scipy_")],
            ["-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"])


class BuildExt(build_ext):
    def build_extensions(self):
        cc = self.compiler.compiler_so[:1]
        use_omp = not env_flag("VGGTL_NO_OPENMP") and compiles_with_openmp(cc)
        if not use_omp:
            print("vggtl: building without OpenMP", file=sys.stderr)
        for ext in self.extensions:
            if use_omp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


inc, libdirs, libs, macros, link_args = blas_config()
opt = ["-O0", "-g"] if env_flag("VGGTL_DEBUG") else ["-O3", "-DNDEBUG"]
if env_flag("VGGTL_WERROR"):
    opt.append("-Werror")
if env_flag("VGGTL_NATIVE"):
    opt.append("-march=native")
sanitize = os.environ.get("VGGTL_SANITIZE", "").strip()
if sanitize:  # e.g. address,undefined
    # -fno-sanitize-recover=all: a UBSan report aborts (a non-zero exit fails CI)
    # instead of printing and going on
    opt += [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
            "-g"]
    link_args = link_args + [f"-fsanitize={sanitize}", "-fno-sanitize-recover=all"]

# vggtl._core: the C core and the glue the package uses. vggtl._kernels: the
# core's single kernels for the tests (csrc/py/kernels.c); it has no core of its
# own but calls vggtl._core's through a capsule (csrc/py/core_api.h), so it is
# small and shares the core's settings. Both are always built: the tests need it.
glue_shared = ["csrc/py/glue.c"]
core = Extension(
    "vggtl._core",
    sources=sorted(glob("csrc/*.c")) + glue_shared + ["csrc/py/settings.c", "csrc/py/network.c",
                                                      "csrc/py/training.c", "csrc/py/module.c"],
    depends=sorted(glob("csrc/*.h") + glob("csrc/py/*.h")),
    include_dirs=["csrc", numpy.get_include(), *inc],
    library_dirs=libdirs,
    libraries=libs,
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"), *macros],
    # -ffp-contract=off: no fused multiply-adds the source did not write, so the
    # AVX2/AVX-512 copies of the Winograd transforms give the portable copy's bits
    # (GCC's default in C11 mode; Clang's is on). -fno-math-errno: sqrtf never
    # sets errno, so loops that take square roots vectorise (the same bits:
    # the vector square root is as correctly rounded as the scalar one)
    extra_compile_args=["-std=c11", "-ffp-contract=off", "-fno-math-errno", *opt, *WARNINGS],
    extra_link_args=link_args,
)
kernels = Extension(
    "vggtl._kernels",
    sources=glue_shared + ["csrc/py/kernels.c"],
    depends=sorted(glob("csrc/*.h") + glob("csrc/py/*.h")),
    include_dirs=["csrc", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"), ("VGGTL_KERNELS_MODULE", "1")],
    extra_compile_args=["-std=c11", *opt, *WARNINGS],
    extra_link_args=[a for a in link_args if a.startswith("-fsanitize")],
)

setup(ext_modules=[core, kernels], cmdclass={"build_ext": BuildExt})
