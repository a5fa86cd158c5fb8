"""The feature cache is a storage layer below the network: it never imports
vggtl.vgg16 (the network gives its part of the key through a feature source),
vggtl.distributed uses its public names only, and the keys are those entries
already on disk were written under."""
import ast
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vggtl
from vggtl import cache as vc
from vggtl import dispatch

from support import REPO
CACHE_DIR = os.path.join(REPO, "vggtl", "cache")


def test_the_cache_works_without_the_network_ever_imported(tmp_path):
    # vggtl/__init__ imports everything, so the package is stood in for by an
    # empty one with the same path: only what the cache itself imports loads
    code = textwrap.dedent(f"""
        import sys, types
        import numpy as np
        pkg = types.ModuleType("vggtl")
        pkg.__path__ = [{os.path.join(REPO, "vggtl")!r}]
        sys.modules["vggtl"] = pkg
        import vggtl.cache as vc

        class Means:
            # a feature source that is not a VGG16: per-image channel means
            name = "means"
            def check_input(self, h, w, c):
                if c != 3:
                    raise ValueError("X: expected 3 channels")
            def item_shape(self, input_size):
                return (3,)
            def key_parts(self, input_size):
                return {{"weights": "none", "layer": "means"}}
            def images_per_pass(self, input_size):
                return 2
            def predict(self, X, batch_size):
                return np.asarray(X, dtype=np.float32).mean(axis=(1, 2))

        class Base:
            def feature_source(self, layer):
                return Means()

        X = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
        F = vc.extract(Base(), X, cache={str(tmp_path)!r}, progress=False)
        assert isinstance(F, np.memmap), type(F)
        assert np.array_equal(F, X.astype(np.float32).mean(axis=(1, 2)))
        again = vc.extract(Base(), X, cache={str(tmp_path)!r}, progress=False)
        assert again.filename == F.filename
        (e,) = vc.info({str(tmp_path)!r})["entries"]
        assert e["complete"] and e["layer"] == "means" and e["n"] == 5
        assert vc.clear({str(tmp_path)!r})["removed"] == 1
        loaded = sorted(m for m in sys.modules if m.startswith("vggtl"))
        print(loaded)
        for m in ("vggtl.vgg16", "vggtl.model", "vggtl._core", "vggtl.distributed"):
            assert m not in sys.modules, (m, loaded)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path),
                         env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    assert out.returncode == 0, out.stdout + out.stderr


def _imports(path):
    """Every module name an import statement in ``path`` names (relative ones as
    written, e.g. '..vgg16' or '.store'), anywhere in the file."""
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield base
            for a in node.names:
                yield f"{base}.{a.name}" if node.module else base + a.name


def test_no_module_of_the_cache_imports_the_network():
    files = [os.path.join(CACHE_DIR, f) for f in sorted(os.listdir(CACHE_DIR))
             if f.endswith(".py")] if os.path.isdir(CACHE_DIR) else []
    assert len(files) >= 3, "the cache is a package of modules split by concern"
    above = ("vgg16", "model", "distributed", "_core", "dispatch", "sklearn", "__main__")
    for path in files:
        for name in _imports(path):
            parts = name.lstrip(".").split(".")
            assert not set(parts) & set(above), f"{os.path.basename(path)} imports {name}"


def test_distributed_uses_only_the_caches_public_names():
    path = os.path.join(REPO, "vggtl", "distributed.py")
    tree = ast.parse(open(path).read(), path)
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cache":
            used += [a.name for a in node.names]
    assert used, "distributed.py imports the cache"
    assert [n for n in used if n.startswith("_")] == []
    for n in used:
        assert n in vc.__all__, n
    # nor the network's private parts: the feature source gives what it needs
    private = [f"{node.value.id}.{node.attr}" for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
               and node.value.id == "base" and node.attr.startswith("_")]
    assert private == []


# Keys computed by vggtl before the cache became a package (main at 08d5cff): an
# entry written then must be found now, so every field must come out the same.
PINNED = {
    "a": ("21dcf6ba37fd960a90777aad2aee64a6", {"conv": "i666666666iii", "dtype": "float32", "format": 2, "input_size": [40, 36], "layer": "block5_pool", "pooling": "avg", "preprocess": {"mode": "caffe", "reverse_channels": True, "scale": [1.0, 1.0, 1.0], "shift": [-103.939, -116.779, -123.68]}, "view": None, "weights": "99823b8b45f5c0a0a524418327be1db457bfb97b8d3b29fc42f3b80120b35bb7", "x": "sha256tree:fbefe0d546e8ad090568e6db66dc51a0c7fb5f9e1dc20f469321f7547a0f8915"}),  # noqa: E501
    "b": ("9289c949bd09b4d609c1fb70c6724a3e", {"conv": "i666", "dtype": "float16", "format": 2, "input_size": [48, 44], "layer": "block2_pool", "pooling": None, "preprocess": {"mode": "caffe", "reverse_channels": True, "scale": [1.0, 1.0, 1.0], "shift": [-103.939, -116.779, -123.68]}, "view": ["cfg1234", 2], "weights": "32c2cde6d07beb5671dda2d4aeec079e56c239ab004a6591f5b83d51829ca51d", "x": "sha256tree:fbefe0d546e8ad090568e6db66dc51a0c7fb5f9e1dc20f469321f7547a0f8915"}),  # noqa: E501
    # bf16 runs block 1 in float32 since 2026-12-03: its features, and so its key, changed
    "c": ("3e8863237f568ee82ebbc6920ed7bd59", {"conv": "i6bbbb", "dtype": "float32", "format": 2, "input_size": [40, 36], "layer": "block3_conv2", "pooling": None, "preprocess": {"mode": "torch", "reverse_channels": False, "scale": [0.017124753831663668, 0.01750700280112045, 0.017429193899782137], "shift": [-2.1179039301310043, -2.0357142857142856, -1.8044444444444445]}, "view": None, "weights": "0cc81591ef83665bdbf0c690619e3df82b1e267862e8fa7acd2b1f8775d4574d", "x": "sha256tree:fbefe0d546e8ad090568e6db66dc51a0c7fb5f9e1dc20f469321f7547a0f8915"}),  # noqa: E501
}


@pytest.fixture
def auto_conv():
    algo, isa = dispatch.get_conv_algo(), dispatch.get_isa()
    dispatch.set_conv_algo("auto")  # the pinned "conv" letters are auto's
    if isa == "amx_bf16":  # and VDPBF16PS's bf16 ('b'), whose bits every other level shares
        dispatch.set_isa("avx512_bf16")
    yield
    dispatch.set_conv_algo(algo)
    dispatch.set_isa(isa)


def test_keys_are_the_ones_entries_on_disk_were_written_under(auto_conv):
    X = np.random.default_rng(7).integers(0, 256, size=(3, 40, 36, 3), dtype=np.uint8)
    b = vggtl.VGG16(weights=None, seed=3, preprocess="caffe", pooling="avg")
    with pytest.warns(RuntimeWarning) if not vggtl._core.bf16_native() else _nothing():
        b16 = vggtl.VGG16(weights=None, seed=3, preprocess="torch", precision="bf16",
                          input_shape=(40, 36, 3))
    got = {"a": vc.make_key(b, X=X),
           "b": vc.make_key(b, "block2_pool", "float16", ("cfg1234", 2), (48, 44),
                            x_digest=vc.array_digest(X)),
           "c": vc.make_key(b16, "block3_conv2", X=X)}
    for name, (kid, key) in PINNED.items():
        assert json.loads(json.dumps(got[name])) == key, name
        assert vc.key_id(got[name]) == kid, name


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_feature_source_cannot_overwrite_the_caches_own_key_fields(tmp_path):
    class Sneaky:
        name = "x"

        def key_parts(self, input_size):
            return {"x": "sha256tree:" + "0" * 64}

    class Base:
        def feature_source(self, layer):
            return Sneaky()

    X = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"cache's own fields \['x'\]"):
        vc.make_key(Base(), X=X)


def test_cache_settings_set_through_the_package_reach_the_module_that_reads_them(monkeypatch):
    monkeypatch.setattr(vc, "LOCK_WAIT_S", 12.5)
    assert vc.store.LOCK_WAIT_S == 12.5 and vc.LOCK_WAIT_S == 12.5
    monkeypatch.setattr(vc, "CHUNK_PIXELS", 4 * 32 * 32)
    assert vc.default_chunk_rows(100, (1, 1, 512), np.float32, (32, 32), 1) == 4
    monkeypatch.undo()
    assert vc.store.LOCK_WAIT_S == 600.0 and vc.plan.CHUNK_PIXELS == 32 * 224 * 224
