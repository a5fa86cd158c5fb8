"""Weight files (vggtl.weights): every real layout, written from random numbers by
the source framework's conventions (tests/support/weight_files.py) or by the framework
itself, read by vggtl, and checked against that framework's own model on the same
file: Keras 3 (torch backend) for Keras files, a torchvision-style torch model for
.pth files. Plus the search for weights="imagenet", the download, the cache and
every kind of bad file.

Full-size files (the notop file is 58.9 MB, the one with the top 553 MB) are
built once per module. No test touches the network or the user's caches: the
autouse fixture points HOME, KERAS_HOME, TORCH_HOME and XDG_CACHE_HOME at empty
folders.
"""
import collections
import hashlib
import io
import os
import pickle
import traceback
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest

import vggtl
from vggtl import weights as W

from support import weight_files as wf

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")
pytest.importorskip("safetensors")
torch.set_num_threads(2)

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Empty caches, no VGGTL_WEIGHTS, and a network that is never reached."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": home, "KERAS_HOME": tmp_path / "keras", "TORCH_HOME": tmp_path / "torch",
           "XDG_CACHE_HOME": tmp_path / "xdg"}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("VGGTL_WEIGHTS", raising=False)

    def no_network(*a, **k):
        raise AssertionError("a test reached the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return env


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def notop(files):
    """(Keras-layout weights, legacy notop .h5 with them): the full-size file."""
    w = wf.keras_weights(np.random.default_rng(1))
    return w, wf.write_keras_legacy_h5(str(files / W.KERAS_NOTOP), w)


@pytest.fixture(scope="module")
def top(files):
    """(weights with the top, legacy .h5 with them): 553 MB, removed afterwards
    (pytest keeps the temporary folders of the last runs)."""
    w = wf.keras_weights(np.random.default_rng(2), include_top=True)
    path = wf.write_keras_legacy_h5(str(files / W.KERAS_TOP), w)
    yield w, path
    os.unlink(path)


@pytest.fixture(scope="module")
def keras(tmp_path_factory):
    os.environ["KERAS_BACKEND"] = "torch"
    os.environ.setdefault("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    return keras


@pytest.fixture(scope="module")
def torch_notop(files):
    """(torch state dict, {"zip": path, "legacy": path}) for the conv base."""
    sd = wf.torch_random_state_dict(3)
    paths = {"zip": str(files / "notop_zip.pth"), "legacy": str(files / "notop_legacy.pth")}
    torch.save(sd, paths["zip"])
    torch.save(sd, paths["legacy"], _use_new_zipfile_serialization=False)
    return sd, paths


def same(a, b):
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0], err_msg=k)
        np.testing.assert_array_equal(a[k][1], b[k][1], err_msg=k)


def images(seed, n, size):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def keras_run(model, x):
    import keras
    out = model(x, training=False)
    if isinstance(out, (list, tuple)):
        return [keras.ops.convert_to_numpy(o) for o in out]
    return keras.ops.convert_to_numpy(out)


def torch_input(X):
    """torchvision's preprocessing: RGB / 255, minus mean, over std; NCHW."""
    x = (X.astype(np.float32) / np.float32(255) - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def softmax_top(fc2, w):
    """The predictions layer on fc2's output, in NumPy (saves a second pass at 224)."""
    k, b = w["predictions"]
    z = fc2.astype(np.float64) @ k + b
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def torch_nhwc(y):
    return y.detach().permute(0, 2, 3, 1).contiguous().numpy()


# -- the layer table ----------------------------------------------------------------------
def test_layer_table_matches_the_model():
    assert W.CONV_LAYERS == vggtl.vgg16.CONV_LAYERS
    assert W.DENSE_LAYERS == vggtl.vgg16.DENSE_LAYERS
    shapes = vggtl.vgg16._expected_shapes(1000, True)
    assert {n: W._expected(n, 1000) for n in shapes} == shapes


# -- Keras legacy .h5 ---------------------------------------------------------------------
def test_keras_legacy_notop_matches_keras(notop, keras, close):
    w, path = notop
    assert os.path.getsize(path) == pytest.approx(58_889_256, rel=1e-3)  # the real file's size
    X = images(10, 2, 64)
    ref = keras_run(keras.applications.VGG16(weights=path, include_top=False,
                                             input_shape=(64, 64, 3)),
                    keras.applications.vgg16.preprocess_input(X.astype(np.float32)))
    base = vggtl.VGG16(weights=path, input_shape=(64, 64, 3))
    assert base.preprocess == "caffe"  # "auto": Keras's files were trained on Caffe input
    got = base.predict(X)
    assert got.shape == ref.shape == (2, 2, 2, 512)
    assert (ref > 0).mean() > 0.2
    close(got, ref)


@pytest.mark.parametrize("weightless", [True, False])
def test_keras_legacy_layouts(notop, tmp_path, weightless):
    # with and without the weightless layers (input, pools) listed in layer_names,
    # with Keras 2's root attributes or none
    w, _ = notop
    attrs = {"keras_version": b"2.0.8", "backend": b"tensorflow"} if weightless else None
    p = wf.write_keras_legacy_h5(str(tmp_path / "w.h5"), w, weightless=weightless, attrs=attrs)
    got = vggtl.load_weights(p)
    assert (got.preprocess, got.format, got.source) == ("caffe", "keras-h5", p)
    same(got, w)


@pytest.mark.parametrize("top", [False, True])
def test_tf_keras_save_weights_files_load(notop, tmp_path, rng, top):
    # tf-keras 2.21's save_weights(".h5") writes the layer and weight names as
    # variable-length strings, which are never read: the layers are found by
    # their links, kernel before bias whatever the order on disk
    w = wf.keras_weights(rng, include_top=True) if top else notop[0]
    p = wf.write_keras_legacy_h5(str(tmp_path / "w.h5"), w, tf_keras=True)
    got = vggtl.load_weights(p, include_top=top)
    assert got.format == "keras-h5"
    same(got, w)
    base = vggtl.VGG16(weights=p, include_top=top, input_shape=(224, 224, 3) if top else None)
    for name, (k, b) in w.items():
        np.testing.assert_array_equal(base.get_weights()[name][0], k)
        np.testing.assert_array_equal(base.get_weights()[name][1], b)


def test_tf_keras_layout_refuses_soft_links_and_strange_weights(notop, tmp_path):
    import h5py
    w, _ = notop
    p = wf.write_keras_legacy_h5(str(tmp_path / "w.h5"), w, tf_keras=True)
    with h5py.File(p, "r+") as f:
        del f["block2_conv1/block2_conv1/bias:0"]
        f["block2_conv1/block2_conv1/bias:0"] = h5py.SoftLink("/block1_conv1/block1_conv1/bias:0")
    with pytest.raises(vggtl.weights.WeightsError, match="soft link"):
        vggtl.load_weights(p)
    p2 = wf.write_keras_legacy_h5(str(tmp_path / "w2.h5"), w, tf_keras=True)
    with h5py.File(p2, "r+") as f:
        f["block3_conv1/block3_conv1/gamma:0"] = np.ones(3, np.float32)
    with pytest.raises(vggtl.weights.WeightsError, match="block3_conv1.*expected a kernel"):
        vggtl.load_weights(p2)


def test_keras_legacy_top_matches_keras(top, keras, close):
    w, path = top
    X = images(11, 1, 224)
    m = keras.applications.VGG16(weights=path, include_top=True)
    sub = keras.Model(m.inputs, [m.get_layer("fc2").output, m.outputs[0]])
    ref_fc2, ref = keras_run(sub, keras.applications.vgg16.preprocess_input(X.astype(np.float32)))
    del m, sub
    base = vggtl.VGG16(weights=path, include_top=True)
    assert base.preprocess == "caffe" and base.classes == 1000
    fc2 = base.predict(X, layer="fc2")
    close(fc2, ref_fc2)
    close(softmax_top(fc2, w), ref)


def test_top_file_serves_the_base(top):
    w, path = top
    got = vggtl.load_weights(path, include_top=False)
    same(got, {k: w[k] for k in W.CONV_LAYERS})


# -- Keras 3 files made by keras ---------------------------------------------------------
@pytest.fixture(scope="module")
def keras3_model(keras):
    m = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    r = np.random.default_rng(4)
    for name in W.CONV_LAYERS:  # non-zero biases, so a swapped bias would show
        layer = m.get_layer(name)
        k, b = layer.get_weights()
        layer.set_weights([k, r.normal(0, 0.05, b.shape).astype(np.float32)])
    return m


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_keras3_file_matches_keras(keras3_model, keras, tmp_path, close, suffix):
    p = str(tmp_path / ("vgg" + suffix))
    if suffix == ".keras":
        keras3_model.save(p)
    else:
        keras3_model.save_weights(p)
    X = images(12, 2, 32)
    ref = keras_run(keras3_model, keras.applications.vgg16.preprocess_input(X.astype(np.float32)))
    base = vggtl.VGG16(weights=p)
    assert base.preprocess == "caffe"
    assert vggtl.load_weights(p).format == ("keras3-h5" if suffix == ".weights.h5" else "keras-zip")
    close(base.predict(X), ref)


# -- torchvision .pth ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_notop_matches_torch(torch_notop, close, fmt):
    sd, paths = torch_notop
    X = images(13, 2, 64)
    with torch.no_grad():
        ref = torch_nhwc(wf.torch_vgg16(sd).features(torch_input(X)))
    base = vggtl.VGG16(weights=paths[fmt], input_shape=(64, 64, 3))
    assert base.preprocess == "torch"  # "auto": torchvision's normalisation
    assert vggtl.load_weights(paths[fmt]).format == f"torch-{fmt}"
    got = base.predict(X)
    assert (ref > 0).mean() > 0.2
    close(got, ref)


def test_torch_legacy_stream_layout(torch_notop):
    # the legacy file is five pickles then raw storages, not a zip (vgg16-397923af.pth)
    _, paths = torch_notop
    with open(paths["legacy"], "rb") as f:
        assert pickle.load(f) == 0x1950A86A20F9469CFC6C
        assert pickle.load(f) == 1001
    assert not zipfile.is_zipfile(paths["legacy"])
    same(vggtl.load_weights(paths["legacy"]), vggtl.load_weights(paths["zip"]))


def test_torch_top_matches_torch(top, files, close):
    # the fc1 kernel: torch flattens C, H, W; vggtl (like Keras) H, W, C
    sd = wf.torch_state_dict(top[0])
    p = str(files / "top_zip.pth")
    torch.save(sd, p)
    net = wf.torch_vgg16(sd, include_top=True)
    X = images(14, 1, 224)
    with torch.no_grad():
        x = torch.flatten(net.avgpool(net.features(torch_input(X))), 1)
        ref_fc2 = net.classifier[:5](x).numpy()
        ref = torch.softmax(net.classifier(x), dim=1).numpy()
    del net, sd
    loaded = vggtl.load_weights(p, include_top=True, cache=False)  # (a 553 MB cache entry)
    base = vggtl.VGG16(weights=loaded, include_top=True)
    assert base.preprocess == "torch"
    fc2 = base.predict(X, layer="fc2")
    close(fc2, ref_fc2)
    close(softmax_top(fc2, loaded), ref)
    same(loaded, top[0])  # and the conversion is exact
    os.unlink(p)


def test_torch_2017_legacy_file(torch_notop, tmp_path):
    # PyTorch 0.1.x/0.2's writer: 4-argument _rebuild_tensor, storage views
    sd, paths = torch_notop
    arrays = {k: v.numpy() for k, v in sd.items()}
    p = wf.write_torch_2017(str(tmp_path / "vgg16-2017.pth"), arrays,
                            views=[k for k in arrays if k.endswith(".bias")])
    back = torch.load(p, weights_only=False)  # torch reads the file as written
    assert all(np.array_equal(back[k].numpy(), a) for k, a in arrays.items())
    got = vggtl.load_weights(p, cache=False)
    assert got.format == "torch-legacy"
    same(got, vggtl.load_weights(paths["zip"], cache=False))


def test_torch_legacy_storage_described_two_ways(torch_notop, tmp_path):
    """A storage view is checked against its root as first made: a later reference
    to the same root claiming 2**40 elements, with a view at its end, asked for a
    4 TiB read (MemoryError) or read past the root's bytes."""
    sd, _ = torch_notop
    arrays = {k: v.numpy() for k, v in sd.items()}
    views = [k for k in arrays if k.endswith(".bias")]
    n = arrays[views[1]].size
    for claim, match in (((2 ** 40, ("viewX", 2 ** 40 - n, n)), "described two ways"),
                         ((None, ("viewX", 0, -5)), "view outside its storage"),
                         ((None, "viewX"), r"not \(key, offset, size\)")):
        total = sum(arrays[k].size for k in views)
        numel = total if claim[0] is None else claim[0]
        p = wf.write_torch_2017(str(tmp_path / "bad.pth"), arrays, views=views,
                                claims={views[1]: (numel, claim[1])})
        with pytest.raises(vggtl.WeightsError, match=match):
            vggtl.load_weights(p, cache=False)


def test_torch_wrapped_state_dicts(torch_notop, tmp_path):
    # {"state_dict": ...} checkpoints, DataParallel's "module." prefix, Parameters,
    # half precision: all plain tensor data
    sd, _ = torch_notop
    ref = vggtl.load_weights(torch_notop[1]["zip"])
    p = str(tmp_path / "ckpt.pth")
    torch.save({"epoch": 3, "state_dict": collections.OrderedDict(
        ("module." + k, torch.nn.Parameter(v)) for k, v in sd.items())}, p)
    same(vggtl.load_weights(p), ref)
    torch.save(wf.torch_vgg16(sd).state_dict(), p)  # a real state_dict(): with _metadata
    same(vggtl.load_weights(p), ref)
    torch.save({k: v.half() for k, v in sd.items()}, p, _use_new_zipfile_serialization=False)
    half = vggtl.load_weights(p)
    for k in ref:
        np.testing.assert_allclose(half[k][0], ref[k][0], rtol=1e-3, atol=1e-3)


def test_torch_conversion_is_cached(torch_notop, isolated, monkeypatch):
    _, paths = torch_notop
    first = vggtl.load_weights(paths["zip"])
    cached = os.listdir(isolated["XDG_CACHE_HOME"] / "vggtl" / "converted")
    assert len(cached) == 1 and cached[0].endswith(".safetensors")

    def unreadable(path):
        raise AssertionError("the .pth was read again")

    monkeypatch.setattr(W.torch_pth, "_read_torch_zip", unreadable)
    second = vggtl.load_weights(paths["zip"])  # from the cache
    same(second, first)
    assert (second.preprocess, second.source) == ("torch", paths["zip"])
    with pytest.raises(AssertionError, match="read again"):
        vggtl.load_weights(paths["zip"], cache=False)
    st = os.stat(paths["zip"])  # a changed file is a miss
    os.utime(paths["zip"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="read again"):
        vggtl.load_weights(paths["zip"])


# -- unsafe pickles --------------------------------------------------------------------------
class _Payload:
    def __init__(self, how, marker):
        self.how, self.marker = how, marker

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {self.marker}",)
        return eval, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("how, named", [("os.system", "posix.system"), ("eval", "__builtin__.eval")])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_malicious_pth_is_refused(tmp_path, how, named, fmt):
    marker = tmp_path / "pwned"
    p = str(tmp_path / "evil.pth")
    sd = {"features.0.weight": _Payload(how, str(marker)), "features.0.bias": torch.zeros(64)}
    torch.save(sd, p, _use_new_zipfile_serialization=(fmt == "zip"))
    for call in (lambda: vggtl.load_weights(p), lambda: vggtl.VGG16(weights=p)):
        with pytest.raises(W.UnsafePickleError, match=named) as e:
            call()
        assert "refused, nothing was run" in str(e.value)
        assert not marker.exists()
    # the payload is live: torch's full unpickler does run it
    torch.load(p, weights_only=False)
    assert marker.exists()


def test_pth_pickle_that_multiplies_one_list_is_refused(tmp_path):
    """A data.pkl that calls OrderedDict on one memoised list of 100,000 pairs, 60
    times: about 1 MB of pickle building hundreds of MB. What the allowed calls
    build is charged; the load is refused as an UnsafePickleError (a WeightsError)
    naming the file, before the state dict is looked at."""
    import struct
    import zlib
    body = bytearray(b"\x80\x02ccollections\nOrderedDict\nq\x00(")
    for i in range(100_000):
        body += b"J" + struct.pack("<i", i) + b"J" + struct.pack("<i", i) + b"\x86"
    body += b"lq\x010(" + b"h\x00h\x01\x85R" * 60 + b"l."
    pkl = bytes(body)
    p = wf.raw_zip(str(tmp_path / "many.pth"),
                   [("archive/data.pkl", zipfile.ZIP_STORED, pkl, zlib.crc32(pkl), len(pkl))])
    err, peak = _peak(lambda: W.load_weights(p, cache=False))
    assert isinstance(err, W.UnsafePickleError) and isinstance(err, vggtl.WeightsError), err
    assert str(err).startswith(p + ": ") and "builds more than 67108864 bytes" in str(err), err
    assert peak < 200 << 20, f"{peak / 2 ** 20:.0f} MiB"


class _Restride:
    """Pickles as torch pickles a tensor, then BUILDs it a negative stride."""

    def __init__(self, t):
        self.t = t

    def __reduce_ex__(self, protocol):
        fn, args = self.t.__reduce_ex__(protocol)[:2]
        return fn, args, (None, {"stride": (-1000,) * self.t.dim()})


def test_crafted_tensor_state_is_refused(torch_notop, tmp_path):
    sd = collections.OrderedDict(torch_notop[0])
    sd["features.0.weight"] = _Restride(sd["features.0.weight"])
    p = str(tmp_path / "restride.pth")
    torch.save(sd, p)
    with pytest.raises(vggtl.WeightsError, match="set the state of a Tensor"):
        vggtl.load_weights(p)


def test_no_torch_import(torch_notop, every_format):
    # .pth files are read without torch; h5py is imported only for .h5 files
    import subprocess
    import sys
    code = ("import sys, vggtl; assert 'h5py' not in sys.modules; "
            f"vggtl.load_weights({torch_notop[1]['legacy']!r}, cache=False); "
            f"vggtl.load_weights({torch_notop[1]['zip']!r}, cache=False); "
            f"vggtl.load_weights({every_format['safetensors']!r}); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pickled_module_is_refused(tmp_path):
    p = str(tmp_path / "model.pth")
    torch.save(torch.nn.Conv2d(3, 4, 3), p)
    with pytest.raises(W.UnsafePickleError, match="torch.nn.modules.conv.Conv2d"):
        vggtl.load_weights(p)


# -- safetensors (vggtl's own format) ----------------------------------------------------------
def test_save_and_load_safetensors(notop, tmp_path):
    w, _ = notop
    base = vggtl.VGG16(weights=w, preprocess="caffe")
    (tmp_path / "out").mkdir()
    p = str(tmp_path / "out" / "mine.safetensors")
    base.save_weights(p)
    assert os.listdir(tmp_path / "out") == ["mine.safetensors"]  # no temporary file left
    again = vggtl.VGG16(weights=p)
    assert again.preprocess == "caffe"  # recorded in the file's metadata
    same(again.get_weights(), w)
    assert vggtl.VGG16(weights=p, preprocess="scale").preprocess == "scale"


def test_safetensors_without_metadata_and_torch_keys(notop, torch_notop, tmp_path):
    from safetensors.numpy import save_file
    w, _ = notop
    p = str(tmp_path / "plain.safetensors")
    save_file({f"{k}/{n}": a for k, pair in w.items() for n, a in zip(("kernel", "bias"), pair)}, p)
    got = vggtl.load_weights(p)
    assert got.preprocess is None and vggtl.VGG16(weights=p).preprocess is None
    same(got, w)
    sd, paths = torch_notop
    save_file({k: v.numpy() for k, v in sd.items()}, p)  # torchvision's keys
    same(vggtl.load_weights(p), vggtl.load_weights(paths["zip"]))


def test_preprocess_follows_the_weights(notop):
    w, path = notop
    assert vggtl.VGG16(weights=None).preprocess is None
    assert vggtl.VGG16(weights=w).preprocess is None  # a plain dict says nothing
    loaded = vggtl.load_weights(path)
    assert vggtl.VGG16(weights=loaded).preprocess == "caffe"  # a WeightsDict does
    assert vggtl.VGG16(weights=path, preprocess=None).preprocess is None
    with pytest.raises(ValueError, match="preprocess"):
        vggtl.VGG16(weights=path, preprocess="bgr")
    with pytest.raises(TypeError, match="weights"):
        vggtl.VGG16(weights=3)


# -- weights="imagenet": search, download, offline -----------------------------------------------
def test_imagenet_search_order(isolated, tmp_path, monkeypatch):
    keras_dir = isolated["KERAS_HOME"] / "models"
    torch_dir = isolated["TORCH_HOME"] / "hub" / "checkpoints"
    own = isolated["XDG_CACHE_HOME"] / "vggtl"
    for d, n in ((keras_dir, W.KERAS_NOTOP), (torch_dir, W.TORCH_FILE), (own, W.KERAS_NOTOP)):
        d.mkdir(parents=True)
        (d / n).write_bytes(b"")
    find = W.find_imagenet_weights
    assert find() == str(keras_dir / W.KERAS_NOTOP)
    assert find(include_top=True) == str(torch_dir / W.TORCH_FILE)  # a notop file can't serve
    (keras_dir / W.KERAS_NOTOP).unlink()
    assert find() == str(torch_dir / W.TORCH_FILE)
    (torch_dir / W.TORCH_FILE).unlink()
    assert find() == str(own / W.KERAS_NOTOP)
    assert find(include_top=True) is None
    mine = tmp_path / "x.h5"
    mine.write_bytes(b"")
    monkeypatch.setenv("VGGTL_WEIGHTS", str(mine))
    assert find() == str(mine)
    monkeypatch.setenv("VGGTL_WEIGHTS", str(own))  # a folder
    assert find() == str(own / W.KERAS_NOTOP)
    monkeypatch.setenv("VGGTL_WEIGHTS", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="VGGTL_WEIGHTS"):
        find()


def test_imagenet_default_folders(isolated, monkeypatch):
    for k in ("KERAS_HOME", "TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(k)
    home = isolated["HOME"]
    assert [d for _, d in W.imagenet_search_dirs()] == [
        str(home / ".keras" / "models"), str(home / ".cache" / "torch" / "hub" / "checkpoints"),
        str(home / ".cache" / "vggtl")]
    monkeypatch.setenv("XDG_CACHE_HOME", "/x")
    assert [d for _, d in W.imagenet_search_dirs()][1:] == [
        "/x/torch/hub/checkpoints", "/x/vggtl"]


def test_imagenet_found_in_keras_cache(notop, isolated):
    w, path = notop
    d = isolated["KERAS_HOME"] / "models"
    d.mkdir(parents=True)
    os.symlink(path, d / W.KERAS_NOTOP)
    base = vggtl.VGG16()  # weights="imagenet" is the default, as in Keras
    assert base.preprocess == "caffe"
    same(base.get_weights(), w)


class _Response(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def _serve(monkeypatch, data, seen):
    def urlopen(url, timeout=None):
        seen.append(url)
        return _Response(data)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_imagenet_download(notop, isolated, monkeypatch, capsys):
    w, path = notop
    data = open(path, "rb").read()
    url, _ = W.DOWNLOADS[W.KERAS_NOTOP]
    monkeypatch.setitem(W.DOWNLOADS, W.KERAS_NOTOP, (url, hashlib.md5(data).hexdigest()))
    seen = []
    _serve(monkeypatch, data, seen)
    base = vggtl.VGG16(weights="imagenet")
    assert seen == [url] and base.preprocess == "caffe"
    same(base.get_weights(), w)
    own = isolated["XDG_CACHE_HOME"] / "vggtl"
    assert os.listdir(own) == [W.KERAS_NOTOP]  # written whole, under its own name
    assert W.KERAS_NOTOP in capsys.readouterr().err  # the progress bar
    seen.clear()
    vggtl.VGG16(weights="imagenet")  # now found in vggtl's cache
    assert seen == []


def test_imagenet_download_hash_mismatch(notop, isolated, monkeypatch):
    _, path = notop
    seen = []
    _serve(monkeypatch, open(path, "rb").read()[:1 << 20], seen)  # a cut download
    with pytest.raises(vggtl.WeightsError, match="md5") as e:
        vggtl.VGG16(weights="imagenet")
    assert W.DOWNLOADS[W.KERAS_NOTOP][1] in str(e.value)
    assert seen and os.listdir(isolated["XDG_CACHE_HOME"] / "vggtl") == []  # nothing kept


def test_imagenet_offline(isolated, monkeypatch):
    def unreachable(url, timeout=None):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(W.WeightsNotFoundError) as e:
        vggtl.VGG16(weights="imagenet")
    msg = str(e.value)
    url, md5 = W.DOWNLOADS[W.KERAS_NOTOP]
    for part in (W.KERAS_NOTOP, W.TORCH_FILE, url, md5, "VGGTL_WEIGHTS", "name resolution",
                 str(isolated["KERAS_HOME"] / "models"),
                 str(isolated["TORCH_HOME"] / "hub" / "checkpoints"),
                 str(isolated["XDG_CACHE_HOME"] / "vggtl")):
        assert part in msg, part
    assert e.value.__cause__ is None and e.value.__suppress_context__
    tb = "".join(traceback.format_exception(e.value))
    assert "urllib" not in tb.replace(url, "")
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(W.WeightsNotFoundError, match=W.KERAS_TOP):
        vggtl.VGG16(weights="imagenet", include_top=True)
    assert os.listdir(isolated["XDG_CACHE_HOME"] / "vggtl") == []


# -- bad files -------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    p = tmp_path / "nope.h5"
    for weights in (str(p), p):
        with pytest.raises(FileNotFoundError, match="nope.h5"):
            vggtl.VGG16(weights=weights)
    with pytest.raises(IsADirectoryError):
        vggtl.load_weights(tmp_path)


@pytest.fixture(scope="module")
def every_format(notop, torch_notop, files):
    """{format: path} of the conv base in each format."""
    w, h5 = notop
    st = str(files / "notop.safetensors")
    vggtl.save_weights(w, st)
    return {"h5": h5, "zip": torch_notop[1]["zip"], "legacy": torch_notop[1]["legacy"],
            "safetensors": st}


@pytest.fixture(scope="module")
def raw(every_format):
    """{format: the file's bytes}, read once."""
    out = {}
    for fmt, p in every_format.items():
        with open(p, "rb") as f:
            out[fmt] = f.read()
    yield out
    out.clear()


@pytest.mark.parametrize("fmt", ["h5", "zip", "legacy", "safetensors"])
@pytest.mark.parametrize("keep", [0.6, 0.999, 200])
def test_truncated_file(every_format, raw, tmp_path, fmt, keep):
    src = every_format[fmt]
    data = raw[fmt]
    p = str(tmp_path / ("cut" + os.path.splitext(src)[1]))
    open(p, "wb").write(data[:int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(vggtl.WeightsError) as e:
        vggtl.load_weights(p, cache=False)
    assert p in str(e.value)


def test_corrupt_and_foreign_files(every_format, raw, tmp_path):
    cases = {
        "empty.h5": b"",
        "noise.pth": np.random.default_rng(0).bytes(4096),
        "text.h5": b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 58889256\n",
    }
    h5 = raw["h5"]
    cases["superblock.h5"] = h5[:8] + bytes(56) + h5[64:]  # the HDF5 superblock zeroed
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(vggtl.WeightsError, match=name):
            vggtl.load_weights(str(p))
    # a zip whose data.pkl is garbage, and one that is no checkpoint at all
    bad = tmp_path / "badpkl.pth"
    with zipfile.ZipFile(every_format["zip"]) as zin, zipfile.ZipFile(bad, "w") as zout:
        for i in zin.infolist():
            data = zin.read(i)
            zout.writestr(i, b"\x80\x02}q\x00(X\x01" if i.filename.endswith("data.pkl") else data)
    with pytest.raises(vggtl.WeightsError, match="cannot be read"):
        vggtl.load_weights(str(bad))
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(vggtl.WeightsError, match="neither"):
        vggtl.load_weights(str(other))
    # a legacy checkpoint whose storage sizes disagree with its pickle
    leg = bytearray(raw["legacy"])
    tail = leg.index(b"\x40\x00\x00\x00\x00\x00\x00\x00")  # a storage of 64 elements
    leg[tail] = 0x41
    p = tmp_path / "sizes.pth"
    p.write_bytes(bytes(leg))
    with pytest.raises(vggtl.WeightsError, match="corrupt|truncated"):
        vggtl.load_weights(str(p))


def test_other_models(tmp_path):
    tiny = (np.zeros((1, 1), np.float32), np.zeros(1, np.float32))
    # a VGG19 file: VGG16's names plus block3_conv4, block4_conv4, block5_conv4
    vgg19 = {n: tiny for n in W.CONV_LAYERS}
    vgg19.update({f"block{i}_conv4": tiny for i in (3, 4, 5)})
    p = wf.write_keras_legacy_h5(str(tmp_path / "vgg19.h5"), vgg19)
    with pytest.raises(vggtl.WeightsError, match="block3_conv4.*VGG19"):
        vggtl.load_weights(p)
    # a ResNet-like file: other names, other count
    p = wf.write_keras_legacy_h5(str(tmp_path / "resnet.h5"),
                                 {f"conv{i}": tiny for i in range(1, 54)})
    with pytest.raises(vggtl.WeightsError, match="not VGG16 weights: it has 53 layers"):
        vggtl.load_weights(p)
    t = torch.zeros(1)
    cases = {
        "vgg19.pth": ({f"features.{i}.weight": t for i in (0, 2, 30, 32, 34)}, "features.30"),
        "vgg16_bn.pth": ({"features.0.weight": t, "features.1.running_mean": t}, "vgg16_bn"),
        "resnet.pth": ({"conv1.weight": t, "fc.weight": t}, "no features.N.weight"),
        "tensor.pth": (t, "not a state dict"),
    }
    for name, (obj, match) in cases.items():
        p = str(tmp_path / name)
        torch.save(obj, p)
        with pytest.raises(vggtl.WeightsError, match=match):
            vggtl.load_weights(p)


def test_missing_layer(notop, torch_notop, tmp_path):
    w, _ = notop
    p = wf.write_keras_legacy_h5(str(tmp_path / "w.h5"),
                                 {k: v for k, v in w.items() if k != "block3_conv2"})
    with pytest.raises(vggtl.WeightsError, match=r"layer 'block3_conv2' is missing"):
        vggtl.VGG16(weights=p)
    sd = collections.OrderedDict((k, v) for k, v in torch_notop[0].items() if "features.12." not in k)
    p = str(tmp_path / "w.pth")
    torch.save(sd, p)
    with pytest.raises(vggtl.WeightsError, match=r"'block3_conv2' \(features.12"):
        vggtl.load_weights(p)


def test_wrong_shape(notop, torch_notop, tmp_path):
    w, _ = notop
    bad = dict(w)
    bad["block2_conv1"] = (w["block2_conv1"][0][..., :64], w["block2_conv1"][1][:64])
    p = wf.write_keras_legacy_h5(str(tmp_path / "w.h5"), bad)
    with pytest.raises(vggtl.WeightsError,
                       match=r"'block2_conv1' kernel has shape \(3, 3, 64, 64\), expected "
                             r"\(3, 3, 64, 128\)"):
        vggtl.load_weights(p)
    sd = collections.OrderedDict(torch_notop[0])
    sd["features.5.bias"] = torch.zeros(127)
    p = str(tmp_path / "w.pth")
    torch.save(sd, p, _use_new_zipfile_serialization=False)
    with pytest.raises(vggtl.WeightsError,
                       match=r"'block2_conv1' \(features.5.bias\) has shape \(127,\), expected "
                             r"\(128,\)"):
        vggtl.load_weights(p)


def test_non_finite_weights(notop, tmp_path):
    w, _ = notop
    bad = dict(w)
    b = w["block4_conv1"][1].copy()
    b[3] = np.nan
    bad["block4_conv1"] = (w["block4_conv1"][0], b)
    p = wf.write_keras_legacy_h5(str(tmp_path / "w.h5"), bad)
    with pytest.raises(vggtl.WeightsError, match="block4_conv1.*NaN"):
        vggtl.load_weights(p)


def test_include_top_with_a_notop_file(every_format):
    for fmt, p in every_format.items():
        with pytest.raises(vggtl.WeightsError, match="include_top=True") as e:
            vggtl.VGG16(weights=p, include_top=True)
        assert p in str(e.value), fmt


def test_optional_packages_missing(every_format, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(ImportError, match=r"needs h5py \(a dependency of vggtl, missing from "
                                          r"this environment\): pip install h5py$"):
        vggtl.load_weights(every_format["h5"])
    vggtl.load_weights(every_format["legacy"], cache=False)  # .pth needs neither
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        vggtl.load_weights(every_format["safetensors"])


# -- data that do not lie inside the file; zip members that decompress past what they hold --
# These use the miniature VGG16 of fuzz/seeds.py (VGG16's names and layouts, 2 channels):
# the files are a few kB, in the real layouts (Keras's legacy .h5 by weight_files.py,
# Keras 3's layers/<class>/vars/<i>, a .keras zip, torch.save's zip).
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import tracemalloc  # noqa: E402

from support import REPO  # noqa: E402
sys.path.insert(0, os.path.join(REPO, "fuzz"))
import seeds  # noqa: E402  (fuzz/seeds.py: the miniature VGG16)


@pytest.fixture
def mini(monkeypatch):
    monkeypatch.setattr(W, "CONV_SPEC", seeds.mini_spec())
    return seeds.mini_weights(1)


# the first kernel's dataset, and its layer group, in each layout
_FIRST = {"legacy": ("block1_conv1/block1_conv1_W_1:0", "block1_conv1"),
          "keras3": ("layers/conv2d/vars/0", "layers")}


@pytest.mark.parametrize("how", ["external", "virtual", "soft_link", "external_link",
                                 "group_link"])
@pytest.mark.parametrize("layout", ["legacy", "keras3", "keras"])
def test_hdf5_data_outside_the_file_is_refused(mini, tmp_path, layout, how):
    """A Keras file whose kernel keeps its data in another file (external storage, a
    virtual dataset, an external link, a layer group linked from another file) or
    behind a soft link: vggtl followed it, so a local file's bytes became weights
    (here: a file of exactly the kernel's size; /proc/self/environ works the same).
    Now a WeightsError names the file and the dataset, and nothing is read."""
    secret = str(tmp_path / "secret.bin")
    open(secret, "wb").write(np.arange(54, dtype="<f4").tobytes())  # 3x3x3x2 floats
    other = str(tmp_path / "other.h5")
    with h5py.File(other, "w") as o:
        o.create_dataset("data", data=np.full((3, 3, 3, 2), 7, np.float32))
    h5 = str(tmp_path / "w.h5")
    if layout == "legacy":
        wf.write_keras_legacy_h5(h5, mini)
    else:
        wf.write_keras3_h5(h5, mini)
    ds, group = _FIRST["legacy" if layout == "legacy" else "keras3"]
    wf.point_elsewhere(h5, ds, group, how, other, secret)
    p = h5
    if layout == "keras":
        p = wf.write_keras_zip(str(tmp_path / "model.keras"), open(h5, "rb").read())
    with pytest.raises(vggtl.WeightsError) as e:
        W.load_weights(p, cache=False)
    msg = str(e.value)
    assert msg.startswith(p + ": ") and "inside the file itself" in msg, msg
    named = {"external": (ds, "secret.bin"), "virtual": (ds, "other.h5"),
             "soft_link": (ds, "/stash"), "external_link": (ds, "other.h5"),
             "group_link": (group, "other.h5")}[how]
    for part in named:
        assert part in msg, msg


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {fuzz!r})
    import seeds
    seeds.use_mini_vgg16()
    from vggtl import weights as W
    try:
        W.load_weights({path!r}, cache=False)
        print("loaded")
    except W.WeightsError as e:
        print("WeightsError:", e)
""")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("how", ["external", "virtual", "virtual_unlimited",
                                 "external_link"])
def test_hdf5_fifo_named_in_the_file_is_never_opened(mini, tmp_path, how):
    """A FIFO as the external file, the virtual dataset's source or the external
    link's target: opening it blocks until someone writes, so vggtl hung for ever
    (a virtual dataset with an unlimited mapping already when its shape was asked).
    Now the load ends at once with a WeightsError; run in a child process, so that
    a regression fails here instead of hanging the test run."""
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    p = wf.write_keras_legacy_h5(str(tmp_path / "w.h5"), mini)
    ds, group = _FIRST["legacy"]
    wf.point_elsewhere(p, ds, group, how, fifo, fifo)
    try:
        r = subprocess.run([sys.executable, "-c", CHILD.format(fuzz=os.path.join(REPO, "fuzz"),
                                                               path=p)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading a file that names a FIFO ({how}) hung")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("WeightsError: " + p) and ds in r.stdout, r.stdout


def test_hdf5_plugin_filters_and_non_numeric_data_are_never_read(mini, tmp_path, monkeypatch):
    """A dataset with a filter that is not one of HDF5's own makes libhdf5 search its
    plugin folders for a library to load; one of variable-length strings is read
    from HDF5's global heap (which libhdf5 does not check: see _h5_attr). Both are
    refused from the dataset's header, before any of its data is read. h5py runs in
    this process here, where it can be watched (_h5_sandbox.ISOLATE)."""
    from vggtl.weights import _h5_sandbox
    monkeypatch.setattr(_h5_sandbox, "ISOLATE", False)
    read = []
    real = h5py.Dataset.__getitem__
    monkeypatch.setattr(h5py.Dataset, "__getitem__",
                        lambda self, key: read.append(self.name) or real(self, key))
    p = wf.write_keras_legacy_h5(str(tmp_path / "filter.h5"), mini)
    ds = _FIRST["legacy"][0]
    with h5py.File(p, "a") as f:
        k = f[ds][()]
        del f[ds]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk(k.shape)
        dcpl.set_filter(32004, h5py.h5z.FLAG_OPTIONAL)  # LZ4's id, a plugin
        sid = h5py.h5s.create_simple(k.shape)
        h5py.h5d.create(f.id, ds.encode(), h5py.h5t.IEEE_F32LE, sid, dcpl=dcpl).write(
            h5py.h5s.ALL, h5py.h5s.ALL, k)
    read.clear()
    with pytest.raises(vggtl.WeightsError, match=r"'block1_conv1/block1_conv1_W_1:0' is "
                                                 r"stored with filter 32004"):
        W.load_weights(p, cache=False)
    assert read == []
    p = wf.write_keras_legacy_h5(str(tmp_path / "vlen.h5"), mini)
    with h5py.File(p, "a") as f:
        del f[ds]
        f.create_dataset(ds, data=np.array(["x"] * 54, dtype=object).reshape(3, 3, 3, 2),
                         dtype=h5py.string_dtype())
    read.clear()
    with pytest.raises(vggtl.WeightsError, match="expected float32"):
        W.load_weights(p, cache=False)
    assert read == []


# -- zip members ---------------------------------------------------------------------------
def _mini_pth(path, sd=None):
    sd = sd if sd is not None else collections.OrderedDict(
        (k, torch.from_numpy(v)) for k, v in seeds.mini_state_dict(2).items())
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def bz2_bomb():
    """bzip2 of 64 MiB of spaces after 'little': about 100 bytes."""
    import bz2
    return bz2.compress(b"little" + b" " * (64 << 20), 9)


def _peak(fn):
    """fn()'s exception (or None) and the peak of memory traced while it ran."""
    tracemalloc.start()
    try:
        try:
            fn()
            err = None
        except Exception as e:  # noqa: BLE001  the caller checks it
            err = e
        return err, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA],
                         ids=["bzip2", "lzma"])
@pytest.mark.parametrize("member", ["data.pkl", "byteorder", "data/0"])
def test_pth_member_compressed_with_bzip2_or_lzma_is_refused(mini, tmp_path, member, method):
    """torch.save stores its members and torch.load reads stored and deflated ones
    only; zipfile decompresses a bzip2 or LZMA member's whole input in one call,
    however far it expands. Such a member is now refused before any of it is read."""
    src = _mini_pth(str(tmp_path / "src.pth"))
    p = wf.rezip(src, str(tmp_path / "m.pth"),
               lambda n: method if n.endswith("/" + member) else zipfile.ZIP_STORED)
    err, _ = _peak(lambda: W.load_weights(p, cache=False))
    assert isinstance(err, vggtl.WeightsError), err
    assert str(err).startswith(p + ": ") and ("bzip2" if method == zipfile.ZIP_BZIP2
                                              else "LZMA") in str(err), err


def _stored_members(src):
    """(name, ZIP_STORED, bytes, crc, size) of every member of a zip."""
    import zlib
    with zipfile.ZipFile(src) as z:
        return [(i.filename, zipfile.ZIP_STORED, z.read(i), zlib.crc32(z.read(i)), i.file_size)
                for i in z.infolist()]


def test_byteorder_bomb_allocates_nothing(mini, tmp_path, bz2_bomb):
    """A byteorder record of 64 MiB of spaces after 'little' (bzip2: 100 bytes; 2 GB
    works the same) was read whole: a 3 kB checkpoint held the record's size in
    memory. Now the record is refused by its method before reading, and a stored
    one longer than 'little' or 'big' by its size."""
    import zlib
    src = _mini_pth(str(tmp_path / "src.pth"))
    members = _stored_members(src)
    text = b"little" + b" " * (64 << 20)
    crc = zlib.crc32(text)
    del text
    bomb = [(n, zipfile.ZIP_BZIP2, bz2_bomb, crc, 6 + (64 << 20)) if n.endswith("/byteorder")
            else m for m, (n, *_) in zip(members, members)]
    p = wf.raw_zip(str(tmp_path / "bomb.pth"), bomb)
    assert os.path.getsize(p) < 8192
    err, peak = _peak(lambda: W.load_weights(p, cache=False))
    assert isinstance(err, vggtl.WeightsError) and "byteorder record" in str(err), err
    assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB for a {os.path.getsize(p)}-byte file"
    long = b"little" + b" " * (1 << 20)
    p = wf.raw_zip(str(tmp_path / "long.pth"),
                 [(n, zipfile.ZIP_STORED, long, zlib.crc32(long), len(long))
                  if n.endswith("/byteorder") else m for m, (n, *_) in zip(members, members)])
    err, _ = _peak(lambda: W.load_weights(p, cache=False))
    assert isinstance(err, vggtl.WeightsError) and "at most 16" in str(err), err


def test_storage_read_only_as_far_as_its_tensor_needs(mini, tmp_path):
    """A tensor that is a view into a 64 MiB storage (legal for torch.save), deflated
    to 64 kB: the storage was allocated and decompressed whole. Now only the
    tensor's part is read: the weights load, and memory stays small."""
    sd = collections.OrderedDict((k, torch.from_numpy(v))
                                 for k, v in seeds.mini_state_dict(2).items())
    w0 = sd["features.0.weight"]
    big = torch.zeros(16 << 20)
    big[:w0.numel()] = w0.reshape(-1)
    sd["features.0.weight"] = big[:w0.numel()].view(w0.shape)
    src = _mini_pth(str(tmp_path / "src.pth"), sd)
    p = wf.rezip(src, str(tmp_path / "view.pth"), lambda n: zipfile.ZIP_DEFLATED)
    assert os.path.getsize(p) < 1 << 20
    got = {}
    err, peak = _peak(lambda: got.update(W.load_weights(p, cache=False)))
    assert err is None, err
    same(got, seeds.mini_weights(2))
    assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB"


def test_deflated_member_claiming_more_than_deflate_can_give_is_refused(mini, tmp_path):
    """A storage whose zip record claims 1 GiB from 1 kB of deflate (and whose pickle
    agrees): the reader allocated the claimed size before finding the stream short.
    Deflate expands at most 1032:1, so the claim is refused before anything is
    allocated; likewise for a .keras file's model.weights.h5."""
    import zlib
    big = 1 << 28  # float32 elements: 1 GiB

    class Storage:
        pass

    class Tensor:
        def __init__(self, a):
            self.a, self.storage = a, Storage()

        def __reduce__(self):
            stride = tuple(int(np.prod(self.a.shape[i + 1:])) for i in range(self.a.ndim))
            return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.a.shape, stride,
                                                     False, collections.OrderedDict())

    sd = collections.OrderedDict((k, Tensor(v)) for k, v in seeds.mini_state_dict(2).items())
    keys = {}

    def persistent_id(obj):
        if isinstance(obj, Storage):
            keys.setdefault(id(obj), str(len(keys)))
            return ("storage", torch.FloatStorage, keys[id(obj)], "cpu", big)
        return None

    buf = io.BytesIO()
    pk = pickle.Pickler(buf, protocol=2)
    pk.persistent_id = persistent_id
    pk.dump(sd)
    pkl = buf.getvalue()
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = c.compress(bytes(1024)) + c.flush()  # raw deflate, as zip members hold it
    members = [("archive/data.pkl", zipfile.ZIP_STORED, pkl, zlib.crc32(pkl), len(pkl)),
               ("archive/byteorder", zipfile.ZIP_STORED, b"little", zlib.crc32(b"little"), 6)]
    members += [(f"archive/data/{k}", zipfile.ZIP_DEFLATED, stream, 0, big * 4)
                for k in keys.values()]
    p = wf.raw_zip(str(tmp_path / "claim.pth"), members)
    err, peak = _peak(lambda: W.load_weights(p, cache=False))
    assert isinstance(err, vggtl.WeightsError), err
    assert "more than deflate can produce" in str(err) and str(err).startswith(p), err
    assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB"
    p = wf.raw_zip(str(tmp_path / "claim.keras"),
                 [("metadata.json", 0, b"{}", zlib.crc32(b"{}"), 2),
                  ("model.weights.h5", zipfile.ZIP_DEFLATED, stream, 0, 1 << 30)])
    err, peak = _peak(lambda: W.load_weights(p, cache=False))
    assert isinstance(err, vggtl.WeightsError), err
    assert "more than deflate can produce" in str(err) and str(err).startswith(p), err
    assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB"


def _deflated_zeros(n: int, level: int):
    """(raw deflate stream, CRC-32) of n zero bytes, made a MiB at a time."""
    import zlib
    c, crc, mib = zlib.compressobj(level, zlib.DEFLATED, -15), 0, bytes(1 << 20)
    parts = []
    for _ in range(n >> 20):
        parts.append(c.compress(mib))
        crc = zlib.crc32(mib, crc)
    parts.append(c.flush())
    return b"".join(parts), crc


def test_keras_member_is_decompressed_by_the_worker(mini, tmp_path, monkeypatch):
    """A .keras file's model.weights.h5 is decompressed by the HDF5 worker, never in
    this process (which read the whole member first: a 4 MB file declaring 4 GiB,
    within deflate's ratio, took 8 GiB here and in the worker). The worker's memory
    limit, set from the zip's size (1 GiB plus three times it), refuses a member far
    larger than its archive."""
    import zlib
    from vggtl.weights import _h5_sandbox
    stream, crc = _deflated_zeros(64 << 20, 1)  # not HDF5: the worker says so
    p = wf.raw_zip(str(tmp_path / "zeros.keras"),
                   [("metadata.json", 0, b"{}", zlib.crc32(b"{}"), 2),
                    ("model.weights.h5", zipfile.ZIP_DEFLATED, stream, crc, 64 << 20)])
    err, peak = _peak(lambda: W.load_weights(p, cache=False))
    assert isinstance(err, vggtl.WeightsError), err
    assert str(err).startswith(p) and "cannot read model.weights.h5" in str(err), err
    assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB"
    if sys.platform.startswith("linux"):  # RLIMIT_AS
        stream, crc = _deflated_zeros(1536 << 20, 1)  # 7 MB: 230 to 1
        p = wf.raw_zip(str(tmp_path / "bomb.keras"),
                       [("metadata.json", 0, b"{}", zlib.crc32(b"{}"), 2),
                        ("model.weights.h5", zipfile.ZIP_DEFLATED, stream, crc, 1536 << 20)])
        assert os.path.getsize(p) < 8 << 20
        err, peak = _peak(lambda: W.load_weights(p, cache=False))
        assert isinstance(err, vggtl.WeightsError), err
        assert "needs more memory than the file's size can justify" in str(err), err
        assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB"
    # without a worker (Windows; ISOLATE off) the same bound, checked before reading
    with monkeypatch.context() as m:
        m.setattr(_h5_sandbox, "ISOLATE", False)
        p = wf.raw_zip(str(tmp_path / "claim.keras"),
                       [("metadata.json", 0, b"{}", zlib.crc32(b"{}"), 2),
                        ("model.weights.h5", zipfile.ZIP_DEFLATED, bytes(1 << 20), 0,
                         1032 << 20)])  # never inflated: refused from its sizes
        err, peak = _peak(lambda: W.load_weights(p, cache=False))
        assert isinstance(err, vggtl.WeightsError), err
        assert "needs more memory than the file's size can justify" in str(err), err
        assert peak < 16 << 20, f"{peak / 2 ** 20:.0f} MiB"
    h5 = wf.write_keras3_h5(str(tmp_path / "w.weights.h5"), mini)  # and a real one loads
    same(W.load_weights(wf.write_keras_zip(str(tmp_path / "ok.keras"), open(h5, "rb").read(),
                                           zipfile.ZIP_DEFLATED), cache=False), mini)


def test_keras_members_compressed_as_keras_and_zip_tools_do_load(mini, tmp_path):
    """What stays readable: Keras stores its members; a .keras or .pth repacked by a
    zip tool (deflate) loads the same. bzip2 and LZMA, which neither framework
    writes, are refused."""
    h5 = wf.write_keras3_h5(str(tmp_path / "w.weights.h5"), mini)
    data = open(h5, "rb").read()
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        p = wf.write_keras_zip(str(tmp_path / f"m{method}.keras"), data, method)
        same(W.load_weights(p, cache=False), mini)
    src = _mini_pth(str(tmp_path / "src.pth"))
    ref = W.load_weights(src, cache=False)
    same(W.load_weights(wf.rezip(src, str(tmp_path / "d.pth"), lambda n: zipfile.ZIP_DEFLATED),
                        cache=False), ref)
    for method, name in ((zipfile.ZIP_BZIP2, "bzip2"), (zipfile.ZIP_LZMA, "LZMA")):
        p = wf.write_keras_zip(str(tmp_path / f"m{method}.keras"), data, method)
        with pytest.raises(vggtl.WeightsError, match=f"model.weights.h5 is compressed with "
                                                     f"{name}") as e:
            W.load_weights(p, cache=False)
        assert str(e.value).startswith(p)
