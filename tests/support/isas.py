"""Each instruction set as a pytest parameter, skipped where this CPU cannot run it."""
import pytest

import vggtl
from vggtl import dispatch

ISAS = [pytest.param(i, marks=pytest.mark.skipif(
    not dispatch.isa_supported(i), reason=f"this CPU cannot run {i} kernels"))
    for i in dispatch.ISAS]

# the levels whose bf16 products are VDPBF16PS's sums, bit for bit (amx_bf16's
# tile unit rounds inside its dot products in its own way)
VDPBF16PS_BITS = [p for p in ISAS if p.values[0] != "amx_bf16"]


def bf16_algo(cin: int, cout: int) -> str:
    """What a bf16 layer of these channels runs at the current instruction set."""
    fits = vggtl.get_isa() == "amx_bf16" and cin % 32 == 0 and cout % 32 == 0
    return "winograd_bf16_amx" if fits else "winograd_bf16"


def bf16_letter() -> str:
    """The cache key's letter of VGG16's bf16 layers (all of them have channels
    that are multiples of 32) at the current instruction set."""
    return "a" if vggtl.get_isa() == "amx_bf16" else "b"


def bf16_conv_key(h: int, w: int) -> str:
    """The cache key's "conv" letters of a bf16 VGG16 on h x w images: block 1
    in float32 (im2col for 3 channels, then the float32 plan's algorithm), the
    other eleven convolutions bf16."""
    from vggtl.vgg16 import _ALGO_LETTERS
    return "i" + _ALGO_LETTERS[dispatch.conv_plan((h, w))["block1_conv2"]] + bf16_letter() * 11
