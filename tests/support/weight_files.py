"""Writers of VGG16 weight files in the real layouts, from random numbers, for
tests/api/test_weights.py. Each writes what the source framework itself writes:

- Keras's legacy .h5 (the vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5
  files): root attribute layer_names, a group per layer with attribute
  weight_names, datasets <layer>/<layer>_W_1:0 and <layer>/<layer>_b_1:0 (HWIO);
- torchvision state dicts (OIHW, classifier.0 flattened C, H, W), saved by
  torch.save in the zip format and in the legacy stream format;
- Keras 3 .weights.h5 files are made by keras itself, in the tests.

Nothing here imports vggtl: these writers are the other side of the contract.
"""
import collections

import numpy as np

CONV = (("block1_conv1", 3, 64), ("block1_conv2", 64, 64),
        ("block2_conv1", 64, 128), ("block2_conv2", 128, 128),
        ("block3_conv1", 128, 256), ("block3_conv2", 256, 256), ("block3_conv3", 256, 256),
        ("block4_conv1", 256, 512), ("block4_conv2", 512, 512), ("block4_conv3", 512, 512),
        ("block5_conv1", 512, 512), ("block5_conv2", 512, 512), ("block5_conv3", 512, 512))
CONV_NAMES = tuple(n for n, _, _ in CONV)
POOL_AFTER = {"block1_conv2": "block1_pool", "block2_conv2": "block2_pool",
              "block3_conv3": "block3_pool", "block4_conv3": "block4_pool",
              "block5_conv3": "block5_pool"}
TORCH_CONV = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCH_DENSE = (0, 3, 6)


def keras_weights(rng, include_top=False, classes=1000):
    """{layer: (kernel, bias)} in Keras layouts, He-scaled so that activations keep
    their size through 13 layers, with non-zero biases."""
    w = {}
    for name, cin, cout in CONV:
        k = rng.standard_normal((3, 3, cin, cout), dtype=np.float32)
        k *= np.float32(np.sqrt(2.0 / (9 * cin)))
        w[name] = (k, rng.normal(0, 0.05, cout).astype(np.float32))
    if include_top:
        for name, (fin, fout) in (("fc1", (25088, 4096)), ("fc2", (4096, 4096)),
                                  ("predictions", (4096, classes))):
            k = rng.standard_normal((fin, fout), dtype=np.float32)
            k *= np.float32(np.sqrt(2.0 / fin))
            w[name] = (k, rng.normal(0, 0.05, fout).astype(np.float32))
    return w


def write_keras_legacy_h5(path, weights, weightless=True, extra_layers=(), attrs=None,
                          tf_keras=False):
    """Keras's legacy weights layout. ``weightless`` also lists the input, pools and
    flatten with empty weight_names (as Keras 2 saves a functional model);
    ``extra_layers`` are (name, [arrays]) appended after the given weights.
    ``tf_keras``: as tf-keras 2.16 to 2.21's ``save_weights("x.h5")`` writes it:
    the name lists as variable-length strings, empty weight_names as float64
    arrays, datasets at ``name/name/kernel:0`` and ``bias:0``."""
    if tf_keras:
        return _write_tf_keras_h5(path, weights, weightless, extra_layers)
    import h5py
    layers = []
    if weightless:
        layers.append(("input_1", []))
    for name, pair in weights.items():
        layers.append((name, list(pair)))
        if weightless and name in POOL_AFTER:
            layers.append((POOL_AFTER[name], []))
        if weightless and name == "block5_conv3" and "fc1" in weights:
            layers.append(("flatten", []))
    layers.extend(extra_layers)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n, _ in layers])
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
        for name, arrays in layers:
            g = f.create_group(name)
            wnames = [f"{name}_{'W' if i == 0 else 'b'}_1:0" for i in range(len(arrays))]
            g.attrs["weight_names"] = np.array([w.encode() for w in wnames], dtype="S")
            for wn, a in zip(wnames, arrays):
                g.create_dataset(wn, data=a)
    return path


def _write_tf_keras_h5(path, weights, weightless, extra_layers):
    import h5py
    vlen = h5py.string_dtype()
    layers = [("input_1", [])] if weightless else []
    for name, pair in weights.items():
        layers.append((name, list(pair)))
        if weightless and name in POOL_AFTER:
            layers.append((POOL_AFTER[name], []))
    layers.extend(extra_layers)
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"  # variable-length too, as tf-keras writes
        f.attrs["keras_version"] = "2.21.0"
        f.attrs.create("layer_names", [n for n, _ in layers], dtype=vlen)
        for name, arrays in layers:
            g = f.create_group(name)
            wnames = [f"{name}/{'kernel' if i == 0 else 'bias'}:0" for i in range(len(arrays))]
            if wnames:
                g.attrs.create("weight_names", wnames, dtype=vlen)
            else:
                g.attrs["weight_names"] = np.array([], dtype=np.float64)
            # h5py lists bias:0 before kernel:0: the order on disk is not Keras's
            for wn, a in sorted(zip(wnames, arrays), key=lambda t: t[0]):
                g.create_dataset(wn, data=a)
    return path


def torch_state_dict(weights):
    """torchvision's vgg16 state dict (numpy arrays) from Keras-layout weights."""
    import torch
    sd = collections.OrderedDict()
    for (name, _, _), i in zip(CONV, TORCH_CONV):
        k, b = weights[name]
        sd[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
        sd[f"features.{i}.bias"] = torch.from_numpy(b.copy())
    if "fc1" in weights:
        for name, i in zip(("fc1", "fc2", "predictions"), TORCH_DENSE):
            k, b = weights[name]
            if name == "fc1":  # rows in H, W, C order -> torch's C, H, W
                k = k.reshape(7, 7, 512, -1).transpose(2, 0, 1, 3).reshape(25088, -1)
            # (in, out) -> (out, in); torch's blocked, threaded transpose is fast
            sd[f"classifier.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(k)).t().contiguous()
            sd[f"classifier.{i}.bias"] = torch.from_numpy(b.copy())
    return sd


def torch_random_state_dict(seed, include_top=False, classes=1000):
    """A torchvision-layout state dict drawn by torch itself (He-scaled)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    sd = collections.OrderedDict()
    for (name, cin, cout), i in zip(CONV, TORCH_CONV):
        sd[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2.0 / (9 * cin)) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(cout, generator=g) * 0.05
    if include_top:
        for (fin, fout), i in zip(((25088, 4096), (4096, 4096), (4096, classes)), TORCH_DENSE):
            sd[f"classifier.{i}.weight"] = torch.randn(fout, fin, generator=g) * (2.0 / fin) ** 0.5
            sd[f"classifier.{i}.bias"] = torch.randn(fout, generator=g) * 0.05
    return sd


def torch_vgg16(sd, include_top=False):
    """torchvision's VGG16 built by hand (torchvision itself is not installed):
    features, then (with the top) avgpool to 7 x 7, flatten, classifier; eval mode.
    Built on the meta device and given sd's tensors, so no time goes to an
    initialisation that would be overwritten."""
    import torch
    from torch import nn
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    layers, cin = [], 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1, device="meta"), nn.ReLU(inplace=True)]
            cin = v
    features = nn.Sequential(*layers)

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = features
            if include_top:
                self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
                self.classifier = nn.Sequential(
                    nn.Linear(25088, 4096, device="meta"), nn.ReLU(True), nn.Dropout(),
                    nn.Linear(4096, 4096, device="meta"), nn.ReLU(True), nn.Dropout(),
                    nn.Linear(4096, sd["classifier.6.bias"].shape[0], device="meta"))

        def forward(self, x):
            x = self.features(x)
            if include_top:
                x = torch.flatten(self.avgpool(x), 1)
                x = self.classifier(x)
            return x

    m = VGG()
    m.load_state_dict(sd, strict=True, assign=True)
    return m.eval()


def write_torch_2017(path, arrays, views=(), claims=None):
    """The legacy stream format as PyTorch 0.1.x/0.2 wrote it (vgg16-397923af.pth,
    2017): tensors reduce to ``torch._utils._rebuild_tensor(storage, offset, size,
    stride)`` (4 arguments) and persistent ids carry view_metadata. ``arrays`` is
    {key: float32 array}; keys in ``views`` are stored as views into one shared
    root storage (the old storage-view mechanism), the others each in their own.
    ``claims`` {key in views: (root numel, (view key, offset, size))}: what that
    tensor's persistent id says instead of the truth (a damaged file)."""
    import pickle
    import struct
    import sys
    import torch


    class Storage:
        def __init__(self, key, numel, view=None):
            self.key, self.numel, self.view = key, numel, view

    class Tensor:
        def __init__(self, storage, offset, shape):
            self.storage, self.offset, self.shape = storage, offset, shape

        def __reduce__(self):
            stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
            return torch._utils._rebuild_tensor, (self.storage, self.offset, self.shape, stride)

    roots = collections.OrderedDict()
    objs = collections.OrderedDict()
    shared = [k for k in arrays if k in views]
    if shared:
        data = np.concatenate([arrays[k].ravel() for k in shared])
        roots["root"] = data
        off = 0
        for k in shared:
            n = arrays[k].size
            st = Storage("root", data.size, (f"view{k}", off, n))
            if claims and k in claims:
                st.numel, st.view = claims[k]
            objs[k] = Tensor(st, 0, arrays[k].shape)
            off += n
    for i, (k, a) in enumerate(arrays.items()):
        if k not in views:
            roots[str(140000000 + i)] = a.ravel()
            objs[k] = Tensor(Storage(str(140000000 + i), a.size), 0, a.shape)
    state = collections.OrderedDict((k, objs[k]) for k in arrays)

    def persistent_id(obj):
        if isinstance(obj, Storage):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel, obj.view)
        return None

    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": sys.byteorder == "little",
                     "type_sizes": {"short": 2, "int": 4, "long": 8}}, f, protocol=2)
        p = pickle.Pickler(f, protocol=2)
        p.persistent_id = persistent_id
        p.dump(state)
        keys = sorted(roots)
        pickle.dump(keys, f, protocol=2)
        for k in keys:
            a = np.ascontiguousarray(roots[k], dtype="<f4")
            f.write(struct.pack("<q", a.size))
            f.write(a.tobytes())
    return path


# -- crafted files: real layouts with one part changed, for the bad-input tests and the
# fuzz seeds (fuzz/seeds.py) -----------------------------------------------------------
def write_keras3_h5(path, weights, names=False):
    """Keras 3's .weights.h5 layout: layers/conv2d[_i]/vars/{0,1} (``names``: each
    vars group with a fixed-length 'name' attribute; Keras 3 writes none there)."""
    import h5py
    with h5py.File(path, "w") as f:
        for i, (name, (k, b)) in enumerate(weights.items()):
            v = f.create_group(f"layers/conv2d{'' if i == 0 else f'_{i}'}/vars")
            if names:
                v.attrs["name"] = name
            v.create_dataset("0", data=k)
            v.create_dataset("1", data=b)
        f.create_group("vars")
    return path


def write_keras_zip(path_or_file, h5_bytes, method=None):
    """A .keras file: metadata.json, config.json and model.weights.h5, stored as
    Keras stores them (or compressed with zipfile's ``method``)."""
    import zipfile
    with zipfile.ZipFile(path_or_file, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.0.0"}')
        z.writestr("config.json", '{"class_name": "Functional"}')
        z.writestr("model.weights.h5", h5_bytes,
                   compress_type=zipfile.ZIP_STORED if method is None else method)
    return path_or_file


def point_elsewhere(h5path, dataset, group, how, other, secret):
    """Make ``dataset`` of an HDF5 weights file one whose data do not lie in the
    file: ``how`` is "external" (HDF5 external storage in the file ``secret``),
    "virtual" (a virtual dataset mapping other:/data), "virtual_unlimited" (the
    same with an unlimited mapping), "soft_link" (a soft link to a copy at /stash),
    "external_link" (to other:/data), or "group_link" (``group`` moved into
    ``other`` and replaced by an external link to it). Keras writes none of these."""
    import h5py
    with h5py.File(h5path, "a") as f:
        k = f[dataset][()]
        if how == "group_link":
            with h5py.File(other, "a") as o:
                f.copy(f[group], o, name=group)
            del f[group]
            f[group] = h5py.ExternalLink(other, "/" + group)
            return
        del f[dataset]
        if how == "external":
            f.create_dataset(dataset, shape=k.shape, dtype="<f4",
                             external=[(secret, 0, h5py.h5f.UNLIMITED)])
        elif how == "virtual":
            lay = h5py.VirtualLayout(shape=k.shape, dtype="<f4")
            lay[...] = h5py.VirtualSource(other, "data", shape=k.shape)
            f.create_virtual_dataset(dataset, lay)
        elif how == "virtual_unlimited":
            big = (None,) + k.shape[1:]
            lay = h5py.VirtualLayout(shape=k.shape, maxshape=big, dtype="<f4")
            src = h5py.VirtualSource(other, "data", shape=k.shape, maxshape=big)
            lay[:h5py.h5s.UNLIMITED] = src[:h5py.h5s.UNLIMITED]
            f.create_virtual_dataset(dataset, lay)
        elif how == "soft_link":
            f.create_dataset("stash", data=k)
            f[dataset] = h5py.SoftLink("/stash")
        elif how == "external_link":
            f[dataset] = h5py.ExternalLink(other, "/data")
        else:
            raise ValueError(how)


def rezip(src, dst, methods):
    """Copy a zip with each member compressed as ``methods(name)`` says (zipfile
    writes every method; PyTorch and Keras write stored members only)."""
    import zipfile
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for i in zin.infolist():
            zout.writestr(i.filename, zin.read(i), compress_type=methods(i.filename))
    return dst


def raw_zip(path_or_file, members):
    """Write a zip by hand: ``members`` are (name, method, compressed bytes, CRC-32,
    uncompressed size), so that a record can claim any size and method (zipfile's
    writer computes them from the data it compresses itself)."""
    import struct
    out, central = bytearray(), bytearray()
    for name, method, payload, crc, size in members:
        enc = name.encode()
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, method, 0,
                               0x21, crc, len(payload), size, len(enc), 0, 0, 0, 0, 0,
                               len(out)) + enc
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc,
                           len(payload), size, len(enc), 0) + enc + payload
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members),
                       len(central), len(out), 0)
    data = bytes(out + central + eocd)
    if isinstance(path_or_file, str):
        with open(path_or_file, "wb") as f:
            f.write(data)
        return path_or_file
    return data
