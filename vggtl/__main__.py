"""Command line: ``python -m vggtl demo | train | predict | export | info | cache``.

    python -m vggtl demo                                   # the embedded default, no files
    python -m vggtl train --x X.pickle --y y.pickle --epochs 20 --augment --fine-tune --out run1
    python -m vggtl train --images photos/ --out run2      # a folder of class subfolders
    python -m vggtl predict --model run1 --x new.pickle    # CSV: index,label,p_<class>...
    python -m vggtl predict --model run2 --images a.jpg new/  # CSV: file,label,p_<class>...
    python -m vggtl export --model run1                    # run1/model.onnx
    python -m vggtl info                                   # version, threads, BLAS, CPU, weights
    python -m vggtl cache info | clear [--older-than 30d]  # the feature cache

``demo`` is the README's embedded default: it writes the tutorial's X.pickle and
y.pickle from scikit-learn's bundled handwritten digits (8 x 8 grey, upscaled to
32 x 32 with :func:`vggtl.resize`; built-in discs and squares without
scikit-learn), then runs what ``train`` runs: load them safely, split, VGG16 base,
the tutorial's head, Adam with decay, fit, classification report, save and reload.

``train`` writes into ``--out``: ``model.vggtl``, ``history.json``, ``report.txt``
and, with matplotlib, ``history.png`` (and ``fine_tune.png``) and
``confusion_matrix.png``. Every error is one line saying what to do; ``--debug``
shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pickle
import platform
import sys
import tempfile
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import recipe
from .recipe import (EPOCHS, FINE_TUNE_LR, FINE_TUNE_MOMENTUM, LR_PRETRAINED,  # noqa: F401
                     LR_RANDOM, TUTORIAL_AUGMENT)

PROG = "python -m vggtl"
TRAIN_EPOCHS = EPOCHS  # the tutorial's
DEMO_EPOCHS = 30  # the digits need more epochs than the tutorial's 20 on random weights


def _precision_words(base) -> str:
    if base.precision == "fp32":
        return "float32"
    from .dispatch import bf16_kernel
    auto = " chosen by --precision auto" if base.precision_asked == "auto" else ""
    return f"bfloat16 convolutions{auto}, on {bf16_kernel()}"


class UserError(Exception):
    """A problem the user can fix; its message says how (printed as one line)."""


# -- data ------------------------------------------------------------------------------------
def builtin_images(n: int = 32, size: int = 64, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """n uint8 RGB images of two kinds (discs and squares) on noisy backgrounds,
    with their labels: the demo's data when scikit-learn is not installed.

    >>> X, y = builtin_images(4, 32)
    >>> X.shape, X.dtype, y.tolist()
    ((4, 32, 32, 3), dtype('uint8'), [0, 1, 0, 1])
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    X = rng.integers(0, 60, size=(n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        cy, cx = rng.integers(size // 4, 3 * size // 4, size=2)
        r = rng.integers(size // 8, size // 4)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) if y[i] == 0 else \
            ((abs(yy - cy) <= r) & (abs(xx - cx) <= r))
        X[i][mask] = rng.integers(150, 255, size=3, dtype=np.uint8)
    return X, y


def digits_images(n: Optional[int] = None, size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (1,797 images, 8 x 8, values 0..16)
    as the tutorial's X: uint8 grey images (n, size, size, 1), upscaled with
    :func:`vggtl.resize`; and their labels 0..9. The first n when n is given.

    >>> X, y = digits_images(20, 32)              # doctest: +SKIP
    >>> X.shape, X.dtype, y[:10].tolist()         # doctest: +SKIP
    ((20, 32, 32, 1), dtype('uint8'), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    """
    from sklearn.datasets import load_digits  # only here: scikit-learn is optional

    import vggtl
    d = load_digits()
    images, target = d.images[:n], d.target[:n]
    X8 = np.round(images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return vggtl.resize(X8, (size, size)), target.astype(np.int64)


def write_pickles(folder: str, X: np.ndarray, y: Sequence) -> Tuple[str, str]:
    """X.pickle and y.pickle as the tutorial writes them (``pickle.dump`` of the
    array and of the list of labels), atomically. Returns their paths.

    >>> import tempfile, vggtl
    >>> X, y = builtin_images(4, 32)
    >>> xp, yp = write_pickles(tempfile.mkdtemp(), X, y)
    >>> X2, y2 = vggtl.load_pickles(xp, yp)
    >>> X2.shape, y2.tolist()
    ((4, 32, 32, 3), [0, 1, 0, 1])
    """
    from ._atomic import atomic_open
    paths = os.path.join(folder, "X.pickle"), os.path.join(folder, "y.pickle")
    for path, obj in zip(paths, (X, list(np.asarray(y).tolist()))):
        with atomic_open(path) as f:
            pickle.dump(obj, f)
    return paths


# -- helpers ---------------------------------------------------------------------------------
def _say(args, *parts) -> None:
    if not args.quiet:
        print(*parts, flush=True)


def _resolve_weights(spec: str, allow_download: bool) -> Tuple[object, str]:
    """--weights -> (what VGG16 takes, a sentence for the user)."""
    from .weights import (WeightsNotFoundError, _not_found_message, find_imagenet_weights,
                          load_weights)
    if spec == "random":
        return None, "weights: random (Glorot-uniform), as asked"
    if spec not in ("auto", "imagenet"):
        if not os.path.exists(os.path.expanduser(spec)):
            raise UserError(f"--weights {spec}: no such file; pass imagenet, random, auto or the "
                            f"path of a VGG16 weights file (.h5, .keras, .pth, .safetensors)")
        return os.path.expanduser(spec), f"weights: {spec}"
    found = find_imagenet_weights()
    if found is not None:
        try:
            return load_weights(found), f"weights: ImageNet, found at {found}"
        except (ImportError, ValueError) as e:  # no h5py; a damaged or foreign file
            if spec == "imagenet":
                raise UserError(f"--weights imagenet: found {found}, but it cannot be read: "
                                f"{_one_line_text(e)}") from None
            return None, (f"weights: found {found}, but it cannot be read ({_one_line_text(e)}); "
                          f"so the base has random weights (Glorot-uniform) this time. WARNING: "
                          f"expect a lower accuracy")
    if not allow_download:
        why = _one_line_text(_not_found_message(False, "this command does not download"))
        if spec == "imagenet":
            raise UserError(f"--weights imagenet: {why}")
        return None, ("weights: random (Glorot-uniform): the pipeline runs the same, the "
                      f"accuracy is modest. {why}")
    try:
        return load_weights("imagenet"), "weights: ImageNet (downloaded)"
    except WeightsNotFoundError as e:
        if spec == "imagenet":
            raise UserError(f"--weights imagenet: {_one_line_text(e)} Or pass --weights "
                            f"random.") from None
        return None, ("weights: random (Glorot-uniform): the pipeline runs the same, the "
                      f"accuracy is modest. {_one_line_text(e)}")


def _one_line_text(e) -> str:
    """A message of several lines (the weights' "not found") as one line."""
    return " ".join(str(e).split())


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _load_xy(x_path: str, y_path: Optional[str]):
    import vggtl
    for flag, p in (("--x", x_path), ("--y", y_path)):
        if p is not None and not os.path.isfile(p):
            raise UserError(f"{flag} {p}: no such file; pass the path of the tutorial's "
                            f"{'X' if flag == '--x' else 'y'}.pickle (or a .npy file)")
    if y_path is None:
        return vggtl.load_pickle(x_path), None
    return vggtl.load_pickles(x_path, y_path)


def _as_images(X, what: str) -> np.ndarray:
    X = np.asarray(X) if not isinstance(X, np.ndarray) else X
    if X.ndim == 3:
        X = X[..., None]
    if X.ndim != 4 or X.shape[3] not in (1, 3):
        raise UserError(f"{what}: expected images (N, H, W) or (N, H, W, 1|3), got an array of "
                        f"shape {X.shape}; reshape X as the tutorial does: "
                        f"np.array(X).reshape(-1, SIZE, SIZE, 1)")
    return X


def _fit_size(X: np.ndarray, size: Optional[int], args) -> np.ndarray:
    import vggtl
    from .vgg16 import MIN_SIZE
    h, w = X.shape[1:3]
    try:
        target = recipe.network_size(h, w, size)
    except ValueError:
        raise UserError(f"--input-size {size}: VGG16 needs at least {MIN_SIZE}; pass "
                        f"--input-size {MIN_SIZE} or more") from None
    if (h, w) == target:
        return X
    if size is None:
        _say(args, f"resizing {h}x{w} images to {target[0]}x{target[1]} (VGG16 needs at least "
                   f"{MIN_SIZE}x{MIN_SIZE}; --input-size chooses)")
    else:
        _say(args, f"resizing {h}x{w} images to {size}x{size}")
    return vggtl.resize(X, target)


def _write_json(path: str, obj) -> None:
    from ._atomic import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=_json_default) + "\n").encode())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _plots(args, out: str, histories: List[Tuple[str, dict]], testY, pred, names) -> List[str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        _say(args, "plots: skipped, matplotlib is not installed (pip install matplotlib)")
        return []
    import vggtl
    written = []
    for filename, hist, first in histories:
        path = os.path.join(out, filename)
        title = "Training Loss and Accuracy" + (" (fine-tuning)" if "fine" in filename else "")
        vggtl.plot_history(hist, path=path, title=title, initial_epoch=first)
        written.append(path)
    path = os.path.join(out, "confusion_matrix.png")
    vggtl.plot_confusion_matrix(testY, pred, labels=list(range(len(names))), target_names=names,
                                path=path, close=True)
    written.append(path)
    return written


# -- train (and demo) ------------------------------------------------------------------------
def run_training(args, X, y, out: str, allow_download: bool, names=None,
                 keep: bool = True) -> int:
    """The tutorial's steps on X and y; writes the model and reports into ``out``
    (``keep=False``: a temporary folder, so no plots are drawn)."""
    import vggtl
    from .data import LabelEncoder

    enc = LabelEncoder()
    try:
        codes = enc.fit_transform(y)
    except ValueError as e:
        raise UserError(f"--y: {e}; y needs one label per image and at least two classes") from None
    if len(codes) != len(X):
        raise UserError(f"--x has {len(X)} images but --y has {len(codes)} labels; pass the "
                        f"matching pair of pickles")
    classes = enc.classes_
    n_classes = len(classes)
    if names is None:
        names = [str(c) for c in classes.tolist()]
    elif len(names) != n_classes:
        raise UserError(f"--names: {len(names)} names for {n_classes} classes "
                        f"{classes.tolist()}; pass one name per class, in this order")
    X = _fit_size(_as_images(X, "--x"), args.input_size, args)
    trainX, testX, trainY, testY = vggtl.train_test_split(X, codes, test_size=args.test_size,
                                                          random_state=args.seed)
    _say(args, f"split: {len(trainX)} training and {len(testX)} test images (stratified, "
               f"seed {args.seed})")
    weights, note = _resolve_weights(args.weights, allow_download)
    _say(args, note)
    lr = args.lr if args.lr is not None else recipe.learning_rate(weights is not None)
    model = recipe.build(weights, X.shape[1:], n_classes, seed=args.seed,
                         precision=args.precision, cache=False if args.no_cache else True)
    loss = recipe.loss_for(n_classes)
    model.compile(optimizer=recipe.adam(lr, args.epochs), loss=loss, metrics=["accuracy"])
    _say(args, f"model: VGG16 base (frozen, {_precision_words(model.base)}) + Flatten, "
               f"Dense(512, relu), Dropout(0.5), Dense({n_classes}, softmax); "
               f"Adam(lr={lr:g}, decay=lr/{args.epochs}), {loss}")
    verbose = 0 if args.quiet else 1
    augment = views = None
    if args.augment_views is not None and args.augment_views < 0:
        raise UserError(f"--augment-views {args.augment_views}: expected K >= 1 cached views, or 0 "
                        f"for new transforms every epoch")
    if args.augment:
        augment = vggtl.Augment(seed=args.seed, **TUTORIAL_AUGMENT)
        if args.augment_views is None:
            views = vggtl.model.auto_views(args.epochs)
        else:
            views = args.augment_views if args.augment_views > 0 else "epoch"
        _say(args, "augmentation: " + ", ".join(f"{k}={v}" for k, v in TUTORIAL_AUGMENT.items())
             + (f"; {views} augmented views per image, computed once" if views != "epoch" else
                "; new transforms every epoch"))
    t = time.perf_counter()
    H = model.fit(trainX, trainY, batch_size=args.batch_size, epochs=args.epochs,
                  validation_data=(testX, testY), verbose=verbose, augment=augment,
                  augment_views=views)
    _say(args, f"fit: {time.perf_counter() - t:.1f} s for {args.epochs} epochs (the base's "
               f"features are computed once, not once per epoch)")
    histories = [("history.png", H.history, 0)]
    ft_history = ft_epochs = ft_lr = None
    if args.fine_tune:
        ft_epochs = args.epochs if args.fine_tune < 0 else args.fine_tune
        ft_lr = FINE_TUNE_LR
        _say(args, f"fine-tuning block 5 with the head for {ft_epochs} epochs (SGD, lr "
                   f"{ft_lr:g}, momentum 0.9{', augmented' if augment else ''}); block4_pool's "
                   f"output is computed once (and cached)")
        t = time.perf_counter()
        H2 = model.fine_tune(trainX, trainY, unfreeze_from="block5_conv1",
                             optimizer=vggtl.SGD(learning_rate=ft_lr,
                                                 momentum=FINE_TUNE_MOMENTUM),
                             batch_size=args.batch_size, epochs=ft_epochs,
                             validation_data=(testX, testY), verbose=verbose,
                             augment=augment, augment_views=views)
        _say(args, f"fine-tune: {time.perf_counter() - t:.1f} s")
        ft_history = H2.history
        histories.append(("fine_tune.png", ft_history, len(H.history["loss"])))
    # the test images' features are in the cache since fit's validation (unless
    # fine-tuning changed block 5): no second pass through the base
    bs = max(args.batch_size, 32)
    probs = model.predict_features(model.features(testX, batch_size=bs, cache=model.cache,
                                                  progress=verbose > 0), batch_size=bs)
    pred = probs.argmax(1)
    report = vggtl.classification_report(testY, pred, labels=list(range(n_classes)),
                                         target_names=names, zero_division=0)
    print(report)
    os.makedirs(out, exist_ok=True)
    model.classes_ = classes  # saved with the model, with the names predict prints
    model.class_names = [str(n) for n in names]
    model_path = os.path.join(out, "model.vggtl")
    model.save(model_path)
    _write_json(os.path.join(out, "history.json"), {
        "history": H.history, "fine_tune_history": ft_history,
        "classes": classes.tolist(), "target_names": names,
        "input_shape": list(X.shape[1:]), "test_accuracy": float(np.mean(pred == testY)),
        "weights": "random" if weights is None else "imagenet" if args.weights in
        ("auto", "imagenet") else args.weights,
        "weights_source": getattr(weights, "source", None) if weights is not None else None,
        "vggtl_version": vggtl.__version__,
        "threads": vggtl.get_num_threads(),
        "n_train": len(trainX), "n_test": len(testX),
        "params": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": lr,
                   "lr_decay": lr / max(args.epochs, 1), "optimizer": "Adam", "loss": loss,
                   "augment": bool(args.augment),
                   "augment_config": dict(TUTORIAL_AUGMENT) if args.augment else None,
                   "augment_views": views,
                   "fine_tune": args.fine_tune, "fine_tune_epochs": ft_epochs,
                   "fine_tune_lr": ft_lr,
                   "fine_tune_optimizer": (f"SGD(momentum={FINE_TUNE_MOMENTUM})"
                                           if ft_epochs else None),
                   "fine_tune_unfreeze_from": "block5_conv1" if ft_epochs else None,
                   "precision": args.precision, "precision_computed": model.base.precision,
                   "input_size": args.input_size,
                   "test_size": args.test_size, "split_seed": args.seed,
                   "split_stratified": True, "model_seed": args.seed, "seed": args.seed,
                   "cache": not args.no_cache}})
    from ._atomic import atomic_write_bytes
    atomic_write_bytes(os.path.join(out, "report.txt"), report.encode())
    written = [model_path, os.path.join(out, "history.json"), os.path.join(out, "report.txt")]
    if keep:
        written += _plots(args, out, histories, testY, pred, names)
    check = testX[:bs]  # the model as written must give the same probabilities
    same = np.array_equal(vggtl.load_model(model_path).predict(check, batch_size=bs),
                          model.predict(check, batch_size=bs))
    if keep:
        _say(args, "wrote " + ", ".join(written))
    else:
        _say(args, "the pickles and the model went to a temporary folder, removed now; "
                   "--out DIR keeps them, with the plots")
    print(f"saved and reloaded: predictions identical: {same}")
    return 0 if same and len(H.history["loss"]) == args.epochs else 1


def _load_folder(args, directory: str):
    """train --images DIR: the images of its class subfolders, their labels (the
    folder names) and the names, at --input-size (default 224)."""
    from .images import load_images
    if not os.path.isdir(directory):
        raise UserError(f"--images {directory}: no such folder; pass a folder with one "
                        f"subfolder of images per class")
    size = args.input_size or 224
    X, codes, names = load_images(directory, image_size=(size, size), progress=not args.quiet)
    labels = np.asarray(names, dtype=object)[codes]
    # a class whose every file was unreadable (warned) is not a class of the model
    return X, labels, [n for i, n in enumerate(names) if i in set(codes.tolist())]


def cmd_train(args) -> int:
    import vggtl
    if args.threads:
        vggtl.set_num_threads(args.threads)
    if args.images is not None:
        if args.names:
            raise UserError("--names: the class names of --images are its subfolders' names")
        X, y, names = _load_folder(args, args.images)
        source = args.images
    else:
        X, y = _load_xy(args.x, args.y)
        names = [s.strip() for s in args.names.split(",")] if args.names else None
        source = args.x
    X = _as_images(X, "--x")
    _say(args, f"vggtl {vggtl.__version__}, {vggtl.get_num_threads()} threads: {len(X)} images "
               f"{'x'.join(map(str, X.shape[1:]))} {X.dtype} from {source}")
    return run_training(args, X, y, args.out, allow_download=True, names=names)


def cmd_demo(args) -> int:
    import vggtl
    if args.threads:
        vggtl.set_num_threads(args.threads)
    data = args.data
    if data == "auto":
        try:
            import sklearn  # noqa: F401
            data = "digits"
        except ImportError:
            data = "shapes"
            _say(args, "scikit-learn is not installed, so the demo uses built-in discs and "
                       "squares (pip install scikit-learn for the handwritten digits)")
    if data == "digits":
        try:
            X, y = digits_images(args.n, args.size)
        except ImportError:
            raise UserError("--data digits needs scikit-learn: pip install scikit-learn (or "
                            "pass --data shapes)") from None
        what, names = "handwritten digits (scikit-learn's, 8x8 upscaled)", None
    else:
        X, y = builtin_images(args.n, args.size)
        what, names = "discs and squares", ["disc", "square"]
    print(f"vggtl {vggtl.__version__}: {len(X)} built-in {args.size}x{args.size} images ({what}), "
          f"{vggtl.get_num_threads()} threads")
    with tempfile.TemporaryDirectory(prefix="vggtl-demo-") as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        # the tutorial's files, written as the tutorial writes them ...
        x_path, y_path = write_pickles(out, X, y)
        # ... and read back without running any code a pickle could carry
        X, y = vggtl.load_pickles(x_path, y_path)
        _say(args, f"wrote and safely read back {x_path} {tuple(X.shape)} and {y_path} "
                   f"({len(y)} labels)")
        args.input_size = None
        return run_training(args, X, y, out, allow_download=False, names=names,
                            keep=args.out is not None)


# -- predict ---------------------------------------------------------------------------------
def cmd_predict(args) -> int:
    import vggtl
    from ._atomic import atomic_open
    if args.threads:
        vggtl.set_num_threads(args.threads)
    path = args.model
    if os.path.isdir(path):
        path = os.path.join(path, "model.vggtl")
    if not os.path.isfile(path):
        raise UserError(f"--model {args.model}: no model there; pass the --out folder of "
                        f"`{PROG} train` (or its model.vggtl)")
    model = vggtl.load_model(path)
    h, w, c = model.base.input_shape
    if args.images is not None:
        if args.y is not None:
            raise UserError("--y: goes with --x; the files of --images carry no labels")
        X, files = _load_files(args, args.images, (h, w), c)
        y = None
    else:
        X, y = _load_xy(args.x, args.y)
        X = _as_images(X, "--x")
        files = None
    if X.shape[1:3] != (h, w):
        if not args.quiet:
            print(f"resizing {X.shape[1]}x{X.shape[2]} images to {h}x{w} (the model's input)",
                  file=sys.stderr)
        X = vggtl.resize(X, (h, w))
    bs = args.batch_size
    F = model.base.extract(X, cache=not args.no_cache, batch_size=bs, progress=not args.quiet)
    probs = model.predict_features(F, batch_size=bs)
    classes = model.classes_ if model.classes_ is not None else np.arange(probs.shape[1])
    names = _class_names(model, probs.shape[1])
    codes = probs.argmax(1) if probs.shape[1] > 1 else (probs[:, 0] > 0.5).astype(np.int64)
    if probs.shape[1] == 1:  # one sigmoid unit: p of the second class
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    labels = np.asarray(names, dtype=object)[codes]
    first = "index" if files is None else "file"
    lines = [",".join([first, "label"] + [_csv_field(f"p_{n}") for n in names])] + [
        ",".join([str(i) if files is None else _csv_field(files[i]), _csv_field(lab)]
                 + [f"{p:.6f}" for p in row])
        for i, (lab, row) in enumerate(zip(labels.tolist(), probs.tolist()))]
    if args.out:
        with atomic_open(args.out) as f:
            f.write(("\n".join(lines) + "\n").encode())
        counts = {str(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
        print(f"wrote {len(labels)} predictions to {args.out}: {counts}")
    elif y is None:
        print("\n".join(lines))
    if y is not None:
        from .data import LabelEncoder
        enc = LabelEncoder()
        enc.classes_ = np.asarray(classes)
        try:
            true = enc.transform(y)
        except ValueError as e:
            raise UserError(f"--y: {e}; pass the labels of these images, as in training") \
                from None
        print(vggtl.classification_report(true, codes, labels=list(range(len(classes))),
                                          target_names=[str(c) for c in classes.tolist()],
                                          zero_division=0))
    return 0


def _class_names(model, units: int) -> List[str]:
    """The names predict prints: the model's class_names, else its labels, else 0..units-1."""
    if model.class_names is not None:
        return [str(n) for n in model.class_names]
    if model.classes_ is not None:
        return [str(c) for c in np.asarray(model.classes_).tolist()]
    return [str(i) for i in range(max(units, 2))]


def _csv_field(text: str) -> str:
    """A CSV field: quoted when it holds a comma, a quote or a line break."""
    text = str(text)
    if any(ch in text for ch in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _load_files(args, paths: Sequence[str], size, channels: int):
    """predict --images: the files named and the images in the folders named
    (recursively, sorted), decoded at the model's input size. Returns X and the
    paths of the images it holds."""
    from .images import IMAGE_EXTENSIONS, _walk, load_images_and_files
    files: List[str] = []
    refused: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = _walk(p, os.path.realpath(p), False, refused)
            if not found:
                raise UserError(f"--images {p}: no images in this folder (expected files ending "
                                f"in {', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif os.path.exists(p):
            files.append(p)
        else:
            raise UserError(f"--images {p}: no such file or folder")
    for r in refused:
        print(f"skipped {r}", file=sys.stderr)
    X, _, _, kept = load_images_and_files(files, image_size=size,
                                          color_mode="grayscale" if channels == 1 else "rgb",
                                          progress=not args.quiet)
    return X, kept


# -- export ----------------------------------------------------------------------------------
def _model_path(spec: str) -> str:
    path = os.path.join(spec, "model.vggtl") if os.path.isdir(spec) else spec
    if not os.path.isfile(path):
        raise UserError(f"--model {spec}: no model there; pass the --out folder of "
                        f"`{PROG} train` (or its model.vggtl)")
    return path


def cmd_export(args) -> int:
    import vggtl
    path = _model_path(args.model)
    out = args.out or os.path.splitext(path)[0] + ".onnx"
    model = vggtl.load_model(path, compile=False)
    model.export(out, input_dtype=args.input_dtype)
    h, w, c = model.base.input_shape
    print(f"wrote {out}: input 'images' ({args.input_dtype}, N x {h} x {w} x {c}, NHWC), output "
          f"'probabilities' (N x {model.output_units})")
    return 0


# -- info ------------------------------------------------------------------------------------
def cpu_info() -> dict:
    """CPU model, cores and the SIMD features vggtl's BLAS cares about (Linux:
    /proc/cpuinfo; elsewhere what ``platform`` says).

    >>> info = cpu_info()
    >>> sorted(info), set(info["features"]) <= {"avx2", "avx512f", "fma"}
    (['cores', 'features', 'model'], True)
    """
    out = {"model": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "features": {}}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return out
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not out.get("_named"):
            out["model"], out["_named"] = value.strip(), True
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    out.pop("_named", None)
    if flags:
        out["features"] = {f: f in flags for f in ("avx2", "avx512f", "fma")}
    return out


def imagenet_files_found() -> List[str]:
    """Every file ``weights="imagenet"`` would consider, in its search order
    (the first readable one is used)."""
    from .weights import IMAGENET_FILES, imagenet_search_dirs
    names = list(dict.fromkeys(IMAGENET_FILES[False] + IMAGENET_FILES[True]))
    found = []
    env = os.environ.get("VGGTL_WEIGHTS")
    dirs = []
    if env:
        env = os.path.expanduser(env)
        if os.path.isfile(env):
            found.append(env)
        elif os.path.isdir(env):
            dirs.append(env)
    dirs += [d for _, d in imagenet_search_dirs()]
    for d in dirs:
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and p not in found:
                found.append(p)
    return found


def weights_unreadable(path: str) -> Optional[str]:
    """None when vggtl can read the conv base's weights from ``path``, else why not
    (one line, saying what to do)."""
    from .weights import load_weights
    try:
        load_weights(path, include_top=False)
    except (ImportError, ValueError, OSError) as e:
        text = _one_line_text(e)
        return text[len(path) + 2:] if text.startswith(path + ": ") else text
    return None


def cmd_info(args) -> int:
    import vggtl
    from . import cache as _cache
    from .weights import (DOWNLOADS, IMAGENET_FILES, KERAS_NOTOP, find_imagenet_weights,
                          imagenet_search_dirs, vggtl_cache_dir)
    for k, v in vggtl.info().items():
        print(f"{k}: {v}")
    print(f"python: {platform.python_version()} ({sys.executable}); numpy {np.__version__}")
    cpu = cpu_info()
    print(f"cpu: {cpu['model']} ({cpu['cores']} logical cores)")
    if cpu["features"]:
        print("cpu features: " + ", ".join(f"{k} {'yes' if v else 'no'}"
                                           for k, v in cpu["features"].items()))
    problem = None
    try:
        find_imagenet_weights()
    except FileNotFoundError as e:  # VGGTL_WEIGHTS names nothing
        problem = str(e)
    found = imagenet_files_found()
    whys = [weights_unreadable(path) for path in found]
    for path, why in zip(found, whys):
        print(f"imagenet weights: {path} ({'readable' if why is None else 'NOT readable: ' + why})")
    if None not in whys:
        env = os.environ.get("VGGTL_WEIGHTS")
        url, md5 = DOWNLOADS[KERAS_NOTOP]
        places = [f"$VGGTL_WEIGHTS ({env or 'not set'})"] + [d for _, d in imagenet_search_dirs()]
        print(f"imagenet weights: {'none readable' if found else 'not found'}"
              f"{' (' + problem + ')' if problem else ''}; looked for "
              f"{', '.join(IMAGENET_FILES[False])} in {', '.join(places)}; "
              f"weights='imagenet' downloads {KERAS_NOTOP} (58.9 MB) from {url} (md5 {md5}), "
              f"or put it in {vggtl_cache_dir()}")
    try:
        c = _cache.info()
        print(f"feature cache: {c['path']} ({len(c['entries'])} entries, "
              f"{c['bytes'] / 1e6:.1f} MB); limit {_limit_text(c)}; `{PROG} cache info | "
              f"clear [--older-than AGE]`")
    except Exception as e:  # never let a damaged cache break info
        print(f"feature cache: unreadable ({_first_line(e)})")
    extras = []
    for mod, pkg in (("tqdm", "tqdm"), ("matplotlib", "matplotlib"), ("sklearn", "scikit-learn"),
                     ("ipywidgets", "ipywidgets"), ("h5py", "h5py")):
        found = importlib.util.find_spec(mod) is not None  # without importing it (fast)
        extras.append(f"{mod} yes" if found else f"{mod} no (pip install {pkg})")
    print("optional: " + ", ".join(extras[:-1]) + "; required: " + extras[-1])
    return 0


# -- cache -------------------------------------------------------------------------------------
def _limit_text(c: dict) -> str:
    limit = "none" if c["limit"] is None else f"{c['limit'] / 1e9:.1f} GB"
    return f"{limit} ({c['limit_rule']})"


def _age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def cmd_cache_info(args) -> int:
    from . import cache as _cache
    c = _cache.info(args.dir)
    print(f"folder: {c['path']}")
    print(f"size: {c['bytes'] / 1e6:.1f} MB in {len(c['entries'])} entries")
    print(f"limit: {_limit_text(c)}; least recently used entries go first")
    now = time.time()
    for e in c["entries"]:
        shape = "x".join(str(v) for v in (e.get("shape") or [])) or "?"
        print(f"  {e['id']}  {e.get('layer') or '?'}  {e.get('n', '?')} images -> {shape}  "
              f"{e['bytes'] / 1e6:.1f} MB  {'complete' if e['complete'] else 'incomplete'}  "
              f"last used {_age_text(now - e['last_used'])} ago")
    return 0


def cmd_cache_clear(args) -> int:
    from . import cache as _cache
    r = _cache.clear(args.dir, older_than=args.older_than)
    when = "" if args.older_than is None else \
        f" not used for {_age_text(args.older_than)}"
    print(f"removed {r['removed']} entries{when} ({r['bytes_freed'] / 1e6:.1f} MB)"
          + (f"; {r['busy']} in use by another process, left" if r["busy"] else ""))
    return 0


# -- the parser ------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line that says where help is."""

    def error(self, message):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive(kind):
    def parse(s):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {s}")
        return v
    return parse


def _nonnegative_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {s!r}") from None
    if v < 0 or v >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {2 ** 32 - 1}, "
                                         f"got {s}")
    return v


def _fraction(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {s!r}") \
            from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction strictly between 0 and 1 (e.g. "
                                         f"0.25: a quarter of the images held out), got {s}")
    return v


def _age(s):
    """--older-than: seconds, or a number with s, m, h, d or w."""
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    t = s.strip().lower()
    num = t.rstrip("smhdw")
    try:
        v = float(num) * units[t[len(num):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected an age such as 30d, 12h, 90m or 3600 "
                                         f"(seconds), got {s!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected an age >= 0, got {s!r}")
    return v


def _training_options(epochs: int, epochs_help: str) -> argparse.ArgumentParser:
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--epochs", type=_positive(int), default=epochs,
                          help=f"epochs of the head (default {epochs}{epochs_help})")
    training.add_argument("--batch-size", type=_positive(int), default=32, help="default 32")
    training.add_argument("--lr", type=_positive(float), default=None,
                          help="Adam's learning rate, decayed by lr/epochs (default 1e-4, the "
                               "tutorial's, with ImageNet weights; 3e-3 with random weights)")
    training.add_argument("--augment", action="store_true",
                          help="train on augmented images (the tutorial's ImageDataGenerator: "
                               "rotation 30, zoom 0.15, shifts 0.2, shear 0.15, horizontal flip)")
    training.add_argument("--augment-views", type=int, default=None, metavar="K",
                          help="with --augment: K augmented copies per image computed once and "
                               "cached (default: as fit's, min(epochs, 3)); 0 draws new "
                               "transforms every epoch (one backbone pass per epoch: slow)")
    training.add_argument("--fine-tune", type=int, nargs="?", const=-1, default=None,
                          metavar="EPOCHS", help="then fine-tune block 5 with the head for "
                                                 "EPOCHS (default: as many as --epochs)")
    training.add_argument("--weights", default="auto",
                          help="auto (ImageNet if found or downloadable, else random), imagenet, "
                               "random, or a weights file")
    training.add_argument("--test-size", type=_fraction, default=0.25,
                          help="fraction held out for the report, between 0 and 1 (default 0.25)")
    training.add_argument("--seed", type=_nonnegative_int, default=42,
                          help="split and model seed, a whole number >= 0 (default 42)")
    training.add_argument("--no-cache", action="store_true",
                          help="do not keep the base's features in the feature cache")
    training.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                          help="the frozen base's convolutions: fp32 (default), bf16 "
                               "(features within about 1e-2 of float32) or auto (bf16 where "
                               "Intel's AMX tiles make it about 2x faster, fp32 elsewhere)")
    return training


def build_parser() -> argparse.ArgumentParser:
    import vggtl
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False, parents=[debug])
    common.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
    common.add_argument("--threads", type=_positive(int), default=None,
                        help="threads to use (default: OMP_NUM_THREADS, else all cores)")

    ap = _Parser(prog=PROG, description="VGG16 transfer learning on the CPU, computed in C.",
                 epilog=f"`{PROG} COMMAND --help` lists the options of each command.")
    ap.add_argument("--version", action="version", version=f"vggtl {vggtl.__version__}")
    sub = ap.add_subparsers(dest="cmd", metavar="{demo,train,predict,export,info,cache}",
                            parser_class=_Parser)
    d = sub.add_parser("demo", parents=[common, _training_options(DEMO_EPOCHS, "")],
                       help="the tutorial on built-in data (no files, no network)",
                       description="Writes tutorial-format X.pickle / y.pickle from scikit-learn's "
                                   "handwritten digits and runs `train` on them.")
    d.add_argument("--n", type=_positive(int), default=600,
                   help="number of built-in images (default 600; the digits have 1,797)")
    d.add_argument("--size", type=int, default=32, help="image size, >= 32 (default 32)")
    d.add_argument("--data", choices=("auto", "digits", "shapes"), default="auto",
                   help="digits (needs scikit-learn), shapes (discs and squares), or auto")
    d.add_argument("--out", default=None,
                   help="keep the pickles, model, history and plots in this folder")
    d.set_defaults(fn=cmd_demo)
    t = sub.add_parser("train", parents=[common, _training_options(TRAIN_EPOCHS, ", the tutorial's")],
                       help="train on X.pickle / y.pickle, write the model and reports",
                       description="The tutorial's steps on your pickles: split, VGG16 base, "
                                   "head, fit (--augment), --fine-tune, report, plots.")
    t.add_argument("--images", default=None, metavar="DIR",
                   help="a folder with one subfolder of images per class (JPEG, PNG, BMP, GIF, "
                        "WebP, TIFF; needs Pillow), instead of --x and --y")
    t.add_argument("--x", default=None, help="X.pickle (or .npy): images (N, H, W[, C])")
    t.add_argument("--y", default=None, help="y.pickle (or .npy): one label per image")
    t.add_argument("--input-size", type=int, default=None, metavar="S",
                   help="resize images to S x S (default: their size, at least 32; 224 for "
                        "--images)")
    t.add_argument("--names", default=None,
                   help="display names of the classes in sorted label order, comma-separated")
    t.add_argument("--out", default="vggtl-run",
                   help="folder for model.vggtl, history.json, report.txt and the plots "
                        "(default ./vggtl-run)")
    t.set_defaults(fn=cmd_train)
    p = sub.add_parser("predict", parents=[common], help="predict with a trained model",
                       description="Prints file (or index),label,p_<class>... per image (CSV), "
                                   "with the class names the model was trained with, or the "
                                   "classification report with --y.")
    p.add_argument("--model", required=True, help="a `train --out` folder or a model.vggtl file")
    p.add_argument("--images", nargs="+", default=None, metavar="DIR_OR_FILE",
                   help="image files, or folders of them (read recursively), to classify "
                        "(needs Pillow)")
    p.add_argument("--x", default=None, help="X.pickle (or .npy) of the images to classify")
    p.add_argument("--y", default=None, help="their labels: print the classification report")
    p.add_argument("--out", default=None, help="write the CSV to this file instead of stdout")
    p.add_argument("--batch-size", type=_positive(int), default=32,
                   help="images per call of the base (default 32); larger uses more memory, "
                        "not always less time")
    p.add_argument("--no-cache", action="store_true",
                   help="do not keep the images' features in the feature cache")
    p.set_defaults(fn=cmd_predict)
    e = sub.add_parser("export", parents=[common], help="write a trained model as ONNX",
                       description="The whole model (preprocessing, base, head, softmax) as an "
                                   "ONNX file, for ONNX Runtime and the like (needs the onnx "
                                   "package).")
    e.add_argument("--model", required=True, help="a `train --out` folder or a model.vggtl file")
    e.add_argument("--out", default=None,
                   help="the .onnx file to write (default: model.onnx next to the model)")
    e.add_argument("--input-dtype", choices=("uint8", "float32"), default="uint8",
                   help="what the graph takes: uint8 images (default) or float32 pixels 0..255")
    e.set_defaults(fn=cmd_export)
    i = sub.add_parser("info", parents=[debug],
                       help="version, threads, BLAS, CPU features, weights, feature cache",
                       description="Prints vggtl's version, threads, build (OpenMP, BLAS), the "
                                   "CPU's features and the kernels in use, every ImageNet weights "
                                   "file found and whether it can be read, the feature cache's "
                                   "folder, size and limit, and which optional packages are "
                                   "installed.")
    i.set_defaults(fn=cmd_info)
    c = sub.add_parser("cache", parents=[debug], help="list or clear the feature cache",
                       description="The feature cache keeps the base's features on disk, so a "
                                   "second run does not compute them again. `info` lists its "
                                   "entries; `clear` removes them (all, or those not used for "
                                   "--older-than). Its size limit: $VGGTL_CACHE_LIMIT (e.g. "
                                   "20GB, or none), by default a fraction of the free disk.")
    csub = c.add_subparsers(dest="action", metavar="{info,clear}", parser_class=_Parser,
                            required=True)
    ci = csub.add_parser("info", parents=[debug], help="folder, size, limit and entries",
                         description="Lists the feature cache's folder, size, limit and entries "
                                     "(least recently used first).")
    ci.add_argument("--dir", default=None, help="the cache folder (default: vggtl's)")
    ci.set_defaults(fn=cmd_cache_info)
    cc = csub.add_parser("clear", parents=[debug], help="remove entries",
                         description="Removes feature cache entries: all of them, or with "
                                     "--older-than only those not used for that long. Entries "
                                     "another process is using are left.")
    cc.add_argument("--dir", default=None, help="the cache folder (default: vggtl's)")
    cc.add_argument("--older-than", type=_age, default=None, metavar="AGE",
                    help="only entries last used longer ago than AGE (30d, 12h, 90m, 3600)")
    cc.set_defaults(fn=cmd_cache_clear)
    return ap


def _one_line(e: BaseException) -> str:
    """An exception as one line that says what to do."""
    from .data import UnsafePickleError
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, UserError):
        return msg
    if isinstance(e, UnsafePickleError):
        return (f"{msg} (vggtl refuses pickles that could run code: save X as a NumPy array "
                f"with pickle.dump, or as .npy with np.save)")
    if isinstance(e, MemoryError):
        return ("out of memory; pass fewer or smaller images (--input-size), or save X as .npy "
                "(vggtl reads it memory-mapped)")
    if isinstance(e, ImportError):
        return f"{msg}"
    if isinstance(e, OSError) and e.filename:
        return f"{e.filename}: {e.strerror or msg}; check the path and its permissions"
    return f"{msg} (run with --debug for the traceback)"


def _check_sources(parser, args) -> None:
    """train and predict read --images, or --x (and, for train, --y): a usage error otherwise."""
    if args.cmd not in ("train", "predict"):
        return
    sub = f"{PROG} {args.cmd}"
    if args.images is not None and args.x is not None:
        parser.exit(2, f"{sub}: error: pass --images or --x, not both (see {sub} --help)\n")
    if args.images is None and args.x is None:
        parser.exit(2, f"{sub}: error: the following arguments are required: --images or --x "
                       f"(see {sub} --help)\n")
    if args.cmd == "train" and args.x is not None and args.y is None:
        parser.exit(2, f"{sub}: error: the following arguments are required: --y "
                       f"(see {sub} --help)\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0: success; 1: an error,
    printed as one line on stderr; 2: a usage error).

    >>> import contextlib, io
    >>> with contextlib.redirect_stdout(io.StringIO()) as out:
    ...     status = main(["info"])
    >>> status, out.getvalue().startswith("version: ")
    (0, True)
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is None:  # a bare `python -m vggtl`: what there is to do
        parser.print_help()
        return 0
    _check_sources(parser, args)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{PROG} {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"{PROG} {args.cmd}: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
