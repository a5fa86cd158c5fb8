"""VGG16 weight files: find them, read them safely, convert them, cache them, write them.

    w = vggtl.load_weights("vgg16-397923af.pth")       # {keras_layer: (kernel, bias)}
    w.preprocess                                      # "torch": what these weights expect
    base = vggtl.VGG16(weights="imagenet")            # searches, downloads if needed
    base.save_weights("mine.safetensors")             # vggtl's own format

Formats, recognised by their first bytes, never by their file name, and the
preprocessing each implies (``WeightsDict.preprocess``, used by
``VGG16(preprocess="auto")``):

- Keras legacy ``.h5``, as in ``vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5``:
  root attribute ``layer_names``, a group per layer with attribute
  ``weight_names`` (``block1_conv1_W_1:0``, ``block1_conv1_b_1:0``), kernels HWIO
  (3, 3, in, out), dense (in, out). Also Keras 2 ``save_weights``/``save`` files
  (``model_weights`` group, ``<layer>/kernel:0`` names). -> "caffe"
- Keras 3 ``.weights.h5`` (``layers/<class>[_N]/vars/{0,1}``, matched by order as
  Keras does: the variable-length ``name`` attributes are never read, see
  ``_h5_attr``) and ``.keras`` (a zip holding one). -> "caffe"
- torchvision ``.pth`` in the zip format (``<dir>/data.pkl``, ``<dir>/data/<key>``)
  and in the legacy stream format of the 2017 ``vgg16-397923af.pth`` (five
  pickles, then raw storages). -> "torch"
- safetensors: vggtl's own (``<layer>/kernel``, ``<layer>/bias`` in Keras
  layouts, metadata ``preprocess``), or torchvision's keys. -> the recorded mode,
  else None.

Layers are matched by Keras's names when a file uses them (a VGG19 file is told
apart by its extra layers), else by order, as Keras's own loader does. Only the
layers asked for are read: ``include_top=False`` skips the 490 MB of the top.

torchvision tensors are converted to Keras's layouts: conv OIHW -> HWIO
(``transpose(2, 3, 1, 0)``), ``classifier.0.weight`` (4096, 25088) flattened in
C, H, W order -> (25088, 4096) in H, W, C order (what vggtl's Flatten produces),
other dense weights (out, in) -> (in, out).

``.pth`` files are pickles. They are read without importing torch, by an
unpickler that knows only the globals a tensor state dict needs
(:data:`ALLOWED_GLOBALS`) and refuses any other, naming it, before anything runs.

Only data kept inside the file are read. HDF5 soft, external and user-defined
links, external storage, virtual datasets and filters that libhdf5 would load as
plugins are refused from the file's metadata, before anything behind them is
opened (:func:`vggtl.weights._h5_worker._h5_get`). libhdf5 itself runs in a worker
process (:mod:`vggtl.weights._h5_sandbox`): a damaged file that sends it into an
endless loop or a crash costs a :class:`WeightsError`, never the caller's process. Zip members (``.pth``, ``.keras``) must be stored or
deflated, with sizes deflate can produce and no larger than the reader expects
(:func:`vggtl.weights._zip._zip_check`), and are never read past their declared size; a storage is
read a bounded chunk at a time, and only as far as its tensor needs.

``weights="imagenet"`` looks, in this order, for the files in :data:`IMAGENET_FILES`:

1. ``$VGGTL_WEIGHTS``: a weights file, or a folder holding one of those files;
2. Keras's cache: ``$KERAS_HOME/models``, else ``~/.keras/models``;
3. PyTorch's cache: ``$TORCH_HOME/hub/checkpoints``, else
   ``$XDG_CACHE_HOME/torch/hub/checkpoints``, else ``~/.cache/torch/hub/checkpoints``;
4. vggtl's cache: ``$XDG_CACHE_HOME/vggtl``, else ``~/.cache/vggtl``;

and when none is there downloads the Keras file into vggtl's cache (md5 checked,
written to a temporary name, fsynced and renamed). A torchvision file needs
conversion; the converted arrays are kept in ``<vggtl cache>/converted/`` as
safetensors, keyed by the source's path, size, mtime and a hash of its first and
last MiB, so the second load reads them as they are.

The package: ``load`` (format detection, :func:`load_weights`, the converted-array
cache), one module per format (``keras_h5``, ``torch_pth``, ``safetensors``; HDF5
through ``_h5_sandbox`` and its worker process ``_h5_worker``),
``imagenet`` (the search and the download), ``_common`` (VGG16's layer table, the
errors, :class:`WeightsDict`) and ``_zip`` (checked zip members).
"""
from __future__ import annotations

from ._common import (CONV_LAYERS, CONV_SPEC, DENSE_LAYERS, TORCH_CONV_INDEX, TORCH_DENSE_INDEX,
                      UnsafePickleError, WeightsDict, WeightsError, WeightsNotFoundError,
                      _expected)
from .imagenet import (DOWNLOADS, IMAGENET_FILES, KERAS_NOTOP, KERAS_TOP, TORCH_FILE,
                       _download, _not_found_message,
                       find_imagenet_weights, imagenet_search_dirs, vggtl_cache_dir)
from .load import PREPROCESS_BY_FORMAT, detect_format, load_weights, resolve_weights
from .safetensors import save_weights
from .torch_pth import ALLOWED_GLOBALS

__all__ = [
    "load_weights", "save_weights", "resolve_weights", "find_imagenet_weights",
    "imagenet_search_dirs", "detect_format", "WeightsDict", "WeightsError",
    "UnsafePickleError", "WeightsNotFoundError", "ALLOWED_GLOBALS", "IMAGENET_FILES",
]
