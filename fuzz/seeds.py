"""The fuzz targets' seed corpora, built by the writers the tests use.

Weight files are written in their real layouts by tests/support/weight_files.py (Keras's
legacy .h5, torch.save's zip and legacy formats, the 2017 stream format) and by
safetensors / h5py / zipfile for the rest, for a miniature VGG16: the real layer
names and kernel layouts, with 2 channels instead of 64 to 512, so that a seed is a
few kB and the whole reading path, conversion included, runs on it. The fuzz
targets shrink vggtl.weights' table of expected shapes to match (:func:`use_mini_vgg16`).
The cache seeds are real feature-cache entries of a small extraction.

    python fuzz/seeds.py OUT_DIR [TARGET ...]     # OUT_DIR/<target>/<seed files>
"""
from __future__ import annotations

import collections
import io
import json
import os
import pickle
import struct
import sys
import tempfile
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

# the miniature network: VGG16's 13 conv layers, input 3 channels, 2 channels after
MINI_C = 2
TORCH_CONV = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def mini_spec():
    from vggtl import weights as W
    return tuple((n, 3 if i == 0 else MINI_C, MINI_C) for i, (n, _, _) in enumerate(W.CONV_SPEC))


def use_mini_vgg16() -> None:
    """Make vggtl.weights expect the miniature network's shapes (fuzz targets only)."""
    from vggtl import weights as W
    W.CONV_SPEC = mini_spec()


def mini_weights(seed=0):
    """{layer: (HWIO kernel, bias)} of the miniature network, in Keras layouts."""
    r = np.random.default_rng(seed)
    return {n: (r.standard_normal((3, 3, cin, cout)).astype(np.float32),
                r.standard_normal(cout).astype(np.float32)) for n, cin, cout in mini_spec()}


def mini_state_dict(seed=0):
    """The same as torchvision's state dict (OIHW), as NumPy arrays."""
    sd = collections.OrderedDict()
    for (n, (k, b)), i in zip(mini_weights(seed).items(), TORCH_CONV):
        sd[f"features.{i}.weight"] = np.ascontiguousarray(k.transpose(3, 2, 0, 1))
        sd[f"features.{i}.bias"] = b
    return sd


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def seeds_h5(d):
    """Keras legacy .h5 (with and without the weightless layers), Keras 3
    .weights.h5 and .keras (a zip holding one); the same with a kernel whose data
    are not in the file (external storage, virtual datasets, soft and external
    links, a layer group linked from another file: all refused), and .keras files
    whose weights member is deflated (read), bzip2- or LZMA-compressed (refused)."""
    from support import weight_files as wf
    out = {}
    w = mini_weights(1)
    out["legacy.h5"] = _read(wf.write_keras_legacy_h5(os.path.join(d, "a.h5"), w))
    out["legacy_plain.h5"] = _read(wf.write_keras_legacy_h5(os.path.join(d, "b.h5"), w,
                                                            weightless=False))
    out["keras3.weights.h5"] = _read(wf.write_keras3_h5(os.path.join(d, "k3.weights.h5"), w,
                                                        names=True))
    out["model.keras"] = wf.write_keras_zip(io.BytesIO(), out["keras3.weights.h5"]).getvalue()
    for method, name in ((zipfile.ZIP_DEFLATED, "deflate"), (zipfile.ZIP_BZIP2, "bzip2"),
                         (zipfile.ZIP_LZMA, "lzma")):
        out[f"model_{name}.keras"] = wf.write_keras_zip(io.BytesIO(), out["keras3.weights.h5"],
                                                        method).getvalue()
    # names of files that are nowhere: the seeds must not depend on this machine's
    # files, and vggtl never opens them anyway
    cwd = os.getcwd()
    os.chdir(d)  # "group_link" writes the group it moves into other.h5, here
    try:
        for layout, ds, group in (("legacy", "block1_conv1/block1_conv1_W_1:0", "block1_conv1"),
                                  ("keras3", "layers/conv2d/vars/0", "layers")):
            for how in ("external", "virtual", "virtual_unlimited", "soft_link",
                        "external_link", "group_link"):
                p = f"{layout}_{how}.h5"
                if layout == "legacy":
                    wf.write_keras_legacy_h5(p, w, weightless=False)
                else:
                    wf.write_keras3_h5(p, w, names=True)
                wf.point_elsewhere(p, ds, group, how, "other.h5", "missing/weights.bin")
                out[p] = _read(p)
    finally:
        os.chdir(cwd)
    return out


def seeds_pth_zip(d):
    """torch.save's zip format (needs torch), plain and wrapped in {"state_dict": };
    the plain one with every member deflated (as a zip tool repacks it: read), and
    with a storage, the byteorder record or data.pkl compressed with bzip2 or LZMA
    (which torch.load cannot read either: refused)."""
    import torch
    from support import weight_files as wf
    sd = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in mini_state_dict(2).items())
    out = {}
    for name, obj in (("plain.pth", sd), ("wrapped.pth", {"epoch": 1, "state_dict": sd})):
        p = os.path.join(d, name)
        torch.save(obj, p)
        out[name] = _read(p)
    plain = os.path.join(d, "plain.pth")
    variants = {"deflate.pth": lambda n: zipfile.ZIP_DEFLATED}
    for method, mname in ((zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "lzma")):
        for member, tag in (("/data/0", "storage"), ("/byteorder", "byteorder"),
                            ("/data.pkl", "pickle")):
            variants[f"{mname}_{tag}.pth"] = (
                lambda n, m=method, e=member: m if n.endswith(e) else zipfile.ZIP_STORED)
    for name, methods in variants.items():
        out[name] = _read(wf.rezip(plain, os.path.join(d, name), methods))
    return out


def seeds_pth_legacy(d):
    """torch.save's legacy stream format and the 2017 writer's (storage views)."""
    import torch
    from support import weight_files as wf
    arrays = mini_state_dict(3)
    out = {}
    p = os.path.join(d, "legacy.pth")
    torch.save(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in arrays.items()), p,
               _use_new_zipfile_serialization=False)
    out["legacy.pth"] = _read(p)
    p = os.path.join(d, "2017.pth")
    wf.write_torch_2017(p, arrays, views=[k for k in arrays if k.endswith(".bias")])
    out["2017.pth"] = _read(p)
    return out


def seeds_safetensors(d):
    """vggtl's own layout (save_weights) and torchvision's keys."""
    import safetensors.numpy as stnp
    import vggtl
    out = {}
    p = os.path.join(d, "vggtl.safetensors")
    vggtl.save_weights(mini_weights(4), p, preprocess="caffe")
    out["vggtl.safetensors"] = _read(p)
    out["torch_keys.safetensors"] = stnp.save(dict(mini_state_dict(5)))
    return out


def seeds_pickle(d):
    """The tutorial's X and y pickles: NumPy arrays at protocols 2 to 5, lists; shared
    references and crafted dtype states (tests/support/pickle_files.py)."""
    from support import pickle_files as pf
    r = np.random.default_rng(6)
    X = r.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    out = {}
    for proto in (2, 3, 4, 5):
        out[f"X{proto}.pickle"] = pickle.dumps(X, protocol=proto)
        out[f"y{proto}.pickle"] = pickle.dumps(np.array([0, 1, 1]), protocol=proto)
    out["list.pickle"] = pickle.dumps([X[0], X[1]], protocol=2)
    out["strings.pickle"] = pickle.dumps(np.array(["cat", "dog", "cat"]), protocol=4)
    out["onehot.pickle"] = pickle.dumps(np.eye(2, dtype=np.float32)[[0, 1, 1]], protocol=3)
    # shared references (pickle's memo): labels that are the same strings, one-hot rows
    # from one list, an image list holding one array three times, a list holding
    # itself, and nested lists that stand for 24 million values in 2 kB (refused)
    names = ["cat", "dog", "golden_retriever"]
    out["shared_labels.pickle"] = pickle.dumps([names[i % 3] for i in range(300)], protocol=4)
    rows = [[1, 0], [0, 1]]
    out["shared_rows.pickle"] = pickle.dumps([rows[i % 2] for i in range(200)], protocol=2)
    out["shared_array.pickle"] = pickle.dumps([X[0]] * 3, protocol=2)
    cyclic = [1]
    cyclic.append(cyclic)
    out["cyclic.pickle"] = pickle.dumps(cyclic, protocol=2)
    out["shared_lists.pickle"] = pf.shared_lists((600, 200, 200))
    # dtype states: what NumPy writes, and what it never writes (refused)
    u3 = ("U3", 2, "abcde\0".encode("utf-32-le"))
    out["dtype_state.pickle"] = pf.array_then_dtype_state(*u3, np.dtype("U3").__reduce__()[2])
    out["dtype_state_size.pickle"] = pf.array_then_dtype_state(
        *u3, (3, "<", None, None, None, -1, 4, 8))
    out["dtype_state_S.pickle"] = pf.array_then_dtype_state(
        "S3", 2, b"abcde\0", (3, "|", None, None, None, -1, -1, 0))
    out["dtype_state_twice.pickle"] = pf.dtype_state_twice()
    return out


# cache_input's ``special``: what the cache target plants in the entry (flag bits)
FIFO_MANIFEST, FIFO_DATA, FIFO_VERIFIED, FIFO_LOCK = 2, 4, 8, 16
CHUNKS_SYMLINK, MANIFEST_SYMLINK = 32, 64


def cache_input(manifest_body: dict, data: bytes, verified: bytes = b"", rewrap=True,
                special: int = 0) -> bytes:
    """A fuzz input of the cache target: a flag byte (bit 0: the target wraps the
    manifest with its correct SHA-256, else it is taken as it is; ``special``: the
    FIFOs and symlinks it plants), three lengths, then the manifest, data.npy and
    the verified stamp."""
    m = json.dumps(manifest_body).encode()
    return struct.pack("<BIII", (1 if rewrap else 0) | special, len(m), len(data),
                       len(verified)) + m + data + verified


def seeds_cache(d):
    """A complete entry of a real extraction (3 images, block5_pool with global
    pooling: 512 floats each), whole and with its manifest as written."""
    import vggtl
    from vggtl import cache as vc
    base = vggtl.VGG16(weights=None, seed=0, pooling="avg")
    X = np.random.default_rng(7).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    root = os.path.join(d, "features")
    base.extract(X, cache=root, progress=False)
    base.extract(X, cache=root, progress=False)  # a hit: writes the verified stamp
    (entry,) = [os.path.join(root, e) for e in os.listdir(root) if vc.store.ENTRY_RE.match(e)]
    with open(os.path.join(entry, "manifest.json"), "rb") as f:
        wrapped = f.read()
    body = json.loads(wrapped)["manifest"]
    data = _read(os.path.join(entry, "data.npy"))
    with open(os.path.join(entry, "verified"), "rb") as f:
        verified = f.read()
    incomplete = dict(body, complete=False, chunks=[None] * len(body["chunks"]))
    seeds = {"complete.bin": cache_input(body, data),
             "as_written.bin": struct.pack("<BIII", 0, len(wrapped), len(data), 0) + wrapped + data,
             "incomplete.bin": cache_input(incomplete, b"")}
    # what someone sharing the folder could plant (a FIFO hung extract, info and clear)
    for name, special in (("fifo_manifest", FIFO_MANIFEST), ("fifo_data", FIFO_DATA),
                          ("fifo_verified", FIFO_VERIFIED), ("fifo_lock", FIFO_LOCK),
                          ("manifest_symlink", MANIFEST_SYMLINK)):
        seeds[name + ".bin"] = cache_input(body, data, verified, special=special)
    seeds["chunks_symlink.bin"] = cache_input(incomplete, b"", special=CHUNKS_SYMLINK)
    return seeds


def use_mini_vgg16_model() -> None:
    """Make vggtl.VGG16 (and so load_model) take the miniature network's conv
    weights (the model fuzz target only; the head's shapes stay the real ones)."""
    from vggtl import vgg16 as V
    mini = {n: ((3, 3, cin, cout), (cout,)) for n, cin, cout in mini_spec()}
    V._expected_shapes = lambda classes, include_top: dict(mini)


def model_input(file_bytes: bytes, rewrap=True) -> bytes:
    """A fuzz input of the model target: a flag byte (1: the target writes the
    file's tensors again with the metadata that follows, so that mutations of the
    configuration's JSON reach load_model's checks whole; 0: the file as it is),
    the metadata's length (uint32), the metadata (JSON), then a model file."""
    n = int.from_bytes(file_bytes[:8], "little")
    meta = json.loads(file_bytes[8:8 + n])["__metadata__"]["vggtl"].encode()
    return struct.pack("<BI", 1 if rewrap else 0, len(meta)) + meta + file_bytes


def seeds_model(d):
    """TransferModel files (on the miniature base): compiled with Adam after two
    epochs (optimizer state, string classes), SGD with momentum and a 1-unit
    sigmoid on a pooled base, uncompiled with a global-pooling head in bf16."""
    import warnings
    import vggtl
    use_mini_vgg16_model()
    r = np.random.default_rng(8)
    out = {}

    def build(name, head, pooling=None, precision="fp32", compile_=None, fit=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bf16 emulated here
            base = vggtl.VGG16(weights=mini_weights(9), input_shape=(32, 32, 3),
                               preprocess="caffe", pooling=pooling, precision=precision)
        m = vggtl.TransferModel(base, head=head, seed=3)
        if compile_:
            m.compile(**compile_)
        if fit:
            F = r.standard_normal((8,) + m.feature_shape, dtype=np.float32)
            m.fit_features(F, np.array(fit * 4), batch_size=4, epochs=2, verbose=0)
        path = os.path.join(d, name)
        m.save(path)
        data = _read(path)
        out[name.replace(".vggtl", ".bin")] = model_input(data)
        return data

    data = build("adam.vggtl", [vggtl.Flatten(), vggtl.Dense(4, activation="relu"),
                                vggtl.Dropout(0.5), vggtl.Dense(2, activation="softmax")],
                 compile_=dict(optimizer=vggtl.Adam(1e-3), loss="categorical_crossentropy",
                               metrics=["accuracy"]), fit=["cat", "dog"])
    out["adam_as_written.bin"] = model_input(data, rewrap=False)
    build("sgd.vggtl", [vggtl.Dense(1, activation="sigmoid")], pooling="avg",
          compile_=dict(optimizer=vggtl.SGD(0.01, momentum=0.9), loss="binary_crossentropy"),
          fit=[0, 1])
    build("bf16.vggtl", [vggtl.GlobalAveragePooling2D(), vggtl.Dense(3, activation="softmax")],
          precision="bf16")
    return out


BUILDERS = {"pickle": seeds_pickle, "h5": seeds_h5, "pth_zip": seeds_pth_zip,
            "pth_legacy": seeds_pth_legacy, "safetensors": seeds_safetensors,
            "cache": seeds_cache, "model": seeds_model}


def build(target: str, out_dir: str) -> int:
    """Write target's seeds into out_dir; returns how many."""
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        old = os.environ.get("XDG_CACHE_HOME")
        os.environ["XDG_CACHE_HOME"] = d  # never the user's caches
        try:
            seeds = BUILDERS[target](d)
        finally:
            if old is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = old
    for name, data in seeds.items():
        with open(os.path.join(out_dir, "seed-" + name), "wb") as f:
            f.write(data)
    return len(seeds)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for t in sys.argv[2:] or list(BUILDERS):
        print(t, build(t, os.path.join(sys.argv[1], t)))
