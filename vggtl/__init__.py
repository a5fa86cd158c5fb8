"""vggtl: VGG16 transfer learning on the CPU, computed in C.

    >>> import numpy as np, vggtl
    >>> base = vggtl.VGG16(weights=None, include_top=False)
    >>> X = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    >>> base.predict(X).shape
    (2, 1, 1, 512)
"""
from . import dispatch as _dispatch

# The C core is linked against scipy-openblas32; importing that package loads the
# library into the process (RTLD_GLOBAL) so the extension finds it by soname.
import scipy_openblas32 as _scipy_openblas32  # noqa: F401,E402

try:
    from . import _core
except ImportError as e:  # a source checkout whose extension was never built
    raise ImportError(f"vggtl's C extension is not built ({e}); install with "
                      "`pip install -e .` (or `pip install .` and run outside the source tree)") from None
_dispatch._apply_env()  # $VGGTL_ISA, $VGGTL_CONV
from .dispatch import set_isa, get_isa, set_conv_algo, get_conv_algo  # noqa: E402
from .vgg16 import VGG16, LAYER_NAMES, PrecisionNotice, preprocess_input
from .weights import load_weights, save_weights, WeightsError
from . import data
from . import cache
from . import distributed  # Dask itself is imported on first use
from .layers import Dense, Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D
from .optim import SGD, Adam, RMSprop, CosineDecay, ExponentialDecay, InverseTimeDecay
from .callbacks import (Callback, CSVLogger, EarlyStopping, History, ModelCheckpoint,
                        ReduceLROnPlateau)
from .model import TransferModel, load_model
from .augment import Augment
from .images import ImageFolderError, load_images  # Pillow: imported when loading
from .gradcam import grad_cam, plot_grad_cam, plot_top_losses
from . import metrics
from .metrics import accuracy_score, classification_report, confusion_matrix
from .data import (LabelBinarizer, LabelEncoder, load_pickle, load_pickles, resize,
                   to_categorical, train_test_split)
from .plots import plot_confusion_matrix, plot_history  # matplotlib: imported when drawing

__version__ = "0.1.0"

__all__ = [
    "VGG16",
    "LAYER_NAMES",
    "PrecisionNotice",
    "preprocess_input",
    "load_weights",
    "save_weights",
    "WeightsError",
    "data",
    "cache",
    "distributed",
    "load_pickle",
    "load_pickles",
    "LabelEncoder",
    "LabelBinarizer",
    "to_categorical",
    "train_test_split",
    "resize",
    "load_images",
    "ImageFolderError",
    "metrics",
    "accuracy_score",
    "classification_report",
    "confusion_matrix",
    "TransferModel",
    "load_model",
    "Augment",
    "Flatten",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "Dense",
    "Dropout",
    "SGD",
    "Adam",
    "RMSprop",
    "InverseTimeDecay",
    "ExponentialDecay",
    "CosineDecay",
    "Callback",
    "EarlyStopping",
    "History",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "CSVLogger",
    "set_num_threads",
    "get_num_threads",
    "set_isa",
    "get_isa",
    "set_conv_algo",
    "get_conv_algo",
    "info",
    "plot_history",
    "plot_confusion_matrix",
    "grad_cam",
    "plot_grad_cam",
    "plot_top_losses",
    "__version__",
]


def __getattr__(name):
    # VGG16Classifier subclasses scikit-learn's BaseEstimator: imported on first use,
    # so that vggtl imports without scikit-learn
    if name == "VGG16Classifier":
        from .sklearn import VGG16Classifier
        return VGG16Classifier
    raise AttributeError(f"module 'vggtl' has no attribute {name!r}")


def set_num_threads(n: int) -> None:
    """Set the threads vggtl uses (OpenMP owns them; BLAS runs single-threaded inside).

    The default is OpenMP's (``OMP_NUM_THREADS`` when set, else the number of cores).
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n: expected an int >= 1, got {type(n).__name__}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The threads vggtl uses (see :func:`set_num_threads`)."""
    return _core.get_num_threads()


def info(input_shape=(224, 224), precision: str = "fp32") -> dict:
    """Version, threads, the build (OpenMP, the BLAS and its configuration) and
    the kernels in use: the instruction set of vggtl's own kernels (``isa``; the
    ones this CPU can run in ``isas``), OpenBLAS's core type, how bf16 products
    run (``bf16_kernel``: 'amx', 'vdpbf16ps' or 'emulated'), what
    ``precision="auto"`` runs (``auto_precision``), the convolution setting
    and the algorithm each convolution takes at ``input_shape`` and
    ``precision`` (``conv_plan``). See :mod:`vggtl.dispatch`."""
    b = _core.build_info()
    return {"version": __version__, "threads": get_num_threads(), "openmp": b["openmp"],
            "blas": b["blas"], "blas_coretype": b.get("blas_coretype"),
            "isa": get_isa(), "isas": _dispatch.supported_isas(),
            "bf16_kernel": _dispatch.bf16_kernel(),
            "auto_precision": _dispatch.auto_precision(), "conv_algo": get_conv_algo(),
            "conv_plan": _dispatch.conv_plan(input_shape, precision)}
