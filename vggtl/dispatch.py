"""Which kernels run: the instruction set and the 3x3 convolution algorithm.

One build of vggtl runs on every x86-64 CPU. Its own vectorised kernels (the
Winograd transforms and the matrix products of every convolution and of the
dense layers' forward pass, csrc/gemm.c) are compiled for AVX-512, AVX2+FMA and
the baseline, and the best the CPU has is used. They give the same bits on
every level: each output is one chain of fused multiply-adds in a fixed order.
Training's products (the convolutions' dx and dW included) are the same
kernels, so ``OPENBLAS_CORETYPE`` changes neither a bit nor the speed;
OpenBLAS is still linked but computes nothing. Two environment variables, read once when vggtl is
imported, force a path (for tests, and for comparing paths on one machine):

``VGGTL_ISA``
    ``best`` (the default), ``portable``, ``avx2``, ``avx512`` or
    ``avx512_bf16`` (AVX-512 plus VDPBF16PS, which only the bf16 path uses;
    every other level computes the same bf16 sums in plain C) or ``amx_bf16``
    (the bf16 path's products on Intel's AMX tiles where a layer's channels are
    multiples of 32: its own bf16 bits, since the tile unit rounds inside a
    dot product differently; float32 work as under ``avx512``). Asking for one
    this CPU cannot run is an error at import.
``VGGTL_CONV``
    ``auto`` (the default: by layer shape), ``im2col``, ``winograd`` (F(4x4, 3x3)),
    ``winograd6`` (F(6x6, 3x3)) or ``winograd3`` (F(3x3, 3x3)).

:func:`set_isa` and :func:`set_conv_algo` change both at run time.
:func:`conv_plan` says which algorithm each convolution of VGG16 takes for an
input size; :func:`vggtl.info` reports all of it.
"""
from __future__ import annotations

import os

ISAS = ("portable", "avx2", "avx512", "avx512_bf16", "amx_bf16")
CONV_ALGOS = ("auto", "im2col", "winograd", "winograd6", "winograd3")

def _env_choice(var: str, allowed) -> str | None:
    v = os.environ.get(var, "").strip().lower()
    if not v:
        return None
    if v not in allowed:
        raise ValueError(f"${var}: expected one of {', '.join(map(repr, allowed))}, got {v!r}")
    return v


def _apply_env() -> None:
    """After the extension loads: apply $VGGTL_ISA and $VGGTL_CONV."""
    isa = _env_choice("VGGTL_ISA", ("best",) + ISAS)
    if isa is not None:
        try:
            set_isa(isa)
        except ValueError as e:
            raise ValueError(f"$VGGTL_ISA: {e}") from None
    algo = _env_choice("VGGTL_CONV", CONV_ALGOS)
    if algo is not None:
        set_conv_algo(algo)


def isa_supported(name: str) -> bool:
    """Whether this CPU (and this build) can run ``name`` (see :data:`ISAS`)."""
    from . import _core
    return _core.isa_supported(name)


def supported_isas() -> list:
    """The instruction sets this CPU can run, baseline first."""
    return [n for n in ISAS if isa_supported(n)]


def set_isa(name: str) -> None:
    """Use ``name``'s kernels ('best', 'portable', 'avx2', 'avx512',
    'avx512_bf16', 'amx_bf16'); ValueError when this CPU cannot run it."""
    from . import _core
    if not isinstance(name, str):
        raise TypeError(f"isa: expected a str, got {type(name).__name__}")
    _core.set_isa(name)


def get_isa() -> str:
    """The instruction set vggtl's own kernels use."""
    from . import _core
    return _core.get_isa()


def set_conv_algo(name: str) -> None:
    """3x3 convolutions by 'auto' (per layer shape), 'im2col', 'winograd' (F(4x4)),
    'winograd6' (F(6x6)) or 'winograd3' (F(3x3)).

    Winograd F(4x4, 3x3) does 4x fewer multiplications; its features differ from
    the direct convolution's by a few 1e-6 of their largest value (float32
    rounding of the transforms; tests/kernel/test_winograd.py bounds it).
    """
    from . import _core
    if not isinstance(name, str):
        raise TypeError(f"conv_algo: expected a str, got {type(name).__name__}")
    _core.set_conv_algo(name)


def get_conv_algo() -> str:
    """The setting: 'auto', 'im2col', 'winograd', 'winograd6' or 'winograd3'."""
    from . import _core
    return _core.get_conv_algo()


def bf16_kernel() -> str:
    """How bf16 products run now: 'amx' (the tile unit, where a layer's
    channels allow, else VDPBF16PS), 'vdpbf16ps' (the instruction) or 'emulated'
    (VDPBF16PS's sums, bit for bit, in plain C: CPUs without AVX512_BF16, or
    another ISA forced)."""
    from . import _core
    if get_isa() == "amx_bf16":
        return "amx"
    return "vdpbf16ps" if _core.bf16_native() else "emulated"


def auto_precision() -> str:
    """What ``precision="auto"`` (see :class:`vggtl.VGG16`) runs now:
    'bf16' where the AMX tile unit runs the bf16 products (instruction set
    'amx_bf16'), 1.3 to 1.6 times as fast as float32 there; 'fp32' elsewhere, where
    bf16 (VDPBF16PS or emulated) is no faster than vggtl's float32 Winograd."""
    return "bf16" if bf16_kernel() == "amx" else "fp32"


def conv_plan(input_shape=(224, 224), precision: str = "fp32") -> dict:
    """The algorithm each of VGG16's convolutions takes for an input of
    ``input_shape`` (h, w[, c]) at ``precision`` ('fp32', 'bf16' or 'auto', see
    :class:`vggtl.VGG16`) under the current setting: {layer name: algo}, algo
    one of 'im2col', 'winograd', 'winograd6', 'winograd3', 'winograd_bf16',
    'winograd_bf16_amx'."""
    from . import _core
    if precision == "auto":
        precision = auto_precision()
    h, w = _hw(input_shape)
    plan = {}
    for i, (name, kind, cin, units, _) in enumerate(_core.VGG16_LAYERS):
        if kind == "conv":
            plan[name] = _core.conv3x3_algo(
                h, w, cin, units, precision=_core.vgg16_conv_precision(i, precision=precision))
        elif kind == "pool":
            h, w = h // 2, w // 2
            if h < 1 or w < 1:
                break
    return plan


def _hw(input_shape):
    try:
        h, w = (int(v) for v in tuple(input_shape)[:2])
    except (TypeError, ValueError):
        raise ValueError(f"input_shape: expected (height, width[, channels]), got "
                         f"{input_shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"input_shape: expected positive sizes, got {input_shape!r}")
    return h, w
