"""Each instruction set as a pytest parameter, skipped where this CPU cannot run it."""
import pytest

from vggtl import dispatch

ISAS = [pytest.param(i, marks=pytest.mark.skipif(
    not dispatch.isa_supported(i), reason=f"this CPU cannot run {i} kernels"))
    for i in dispatch.ISAS]
