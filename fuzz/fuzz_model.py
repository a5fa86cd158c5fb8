"""Fuzz target: vggtl.load_model on TransferModel files (safetensors tensors and a
JSON configuration in the metadata), on the miniature base of fuzz/seeds.py.

An input is a flag byte, the metadata's length (little-endian uint32), the
metadata, then a model file (fuzz/seeds.py: model_input). With the flag set, the
target writes the file's tensors again under the mutated metadata, so that
mutations of the configuration reach load_model's schema whole instead of
breaking the safetensors header; without it the file is read as it is.

Contract (vggtl.load_model): a TransferModel, or a ValueError naming the file. A
model it returns predicts on features of its shape, and saves into a file that
loads again to the same configuration.

    python fuzz/fuzz_model.py -max_total_time=600 -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 CORPUS/model
"""
import os
import struct
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _harness  # noqa: E402
import seeds  # noqa: E402

import numpy as np  # noqa: E402

with _harness.instrumented_imports():
    from safetensors import numpy as stnp
    from vggtl import model_io, model as vm  # noqa: F401 (the schema, instrumented)

seeds.use_mini_vgg16_model()
warnings.simplefilter("ignore")  # warnings are not part of the contract
_DIR = _harness.scratch_dir()
PATH = os.path.join(_DIR, "model.vggtl")
AGAIN = os.path.join(_DIR, "again.vggtl")
_HEAD = struct.Struct("<BI")


def one_input(raw: bytes) -> None:
    if len(raw) < _HEAD.size:
        return
    flag, n = _HEAD.unpack_from(raw)
    meta, data = raw[_HEAD.size:_HEAD.size + n], raw[_HEAD.size + n:]
    if flag & 1:
        try:
            data = stnp.save(stnp.load(data), metadata={
                "vggtl": meta.decode("utf-8", errors="replace")})
        except Exception:
            pass  # tensors safetensors cannot read: the file as it is
    _harness.write(PATH, data)
    try:
        m = vm.load_model(PATH)
    except ValueError as e:
        assert PATH in str(e), f"the error does not name the file: {e}"
        return
    assert isinstance(m, vm.TransferModel)
    P = m.predict_features(np.zeros((2,) + m.feature_shape, np.float32))
    assert P.shape == (2, m.output_units) and P.dtype == np.float32
    m.save(AGAIN)
    assert vm.load_model(AGAIN).get_config() == m.get_config()


if __name__ == "__main__":
    _harness.main(one_input)
