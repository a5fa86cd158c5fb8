"""Faults: processes killed while writing, Ctrl-C in long work, a full
disk, read-only cache folders. What exists elsewhere is not repeated here:
tests/api/test_cache.py kills an extraction by timer and resumes it, interrupts it with
a patched predict, and runs it in a read-only folder; tests/seam/test_interrupt.py stops
a predict with SIGINT.

Kill points. A child process installs an audit hook (sys.addaudithook) that counts
the file-system operations vggtl makes under one folder (opening a file for writing,
rename, remove, mkdir, rmtree, utime; by path, or by a name relative to a folder the
feature cache holds open) and SIGKILLs itself at the K-th, before that operation
happens. A dry run counts the operations of a whole write; the K are drawn
from that range with a fixed seed, so every run kills at the same points and a
failure is reproducible (the K is in the assertion message).

Ctrl-C. SIGINT, the signal the terminal sends for Ctrl-C, is sent to the child by a
watcher thread of its own once the work has reached a given point, so the test knows
how far the work was when the signal came. "Within a second" is checked as work, not
time: after the signal the core finishes at most the batch it is in (it polls for
signals every 100 ms between chunks of work).
"""
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import vggtl
from vggtl import _core
from vggtl import cache as vc
from vggtl import _kernels  # the single kernels, for tests

from support import REPO
_REAL_FSYNC = os.fsync
N, CHUNK = 12, 4  # images (32 x 32) and images per cache chunk in the cache tests

# -- the child's kill switch ----------------------------------------------------------
KILL_HOOK = textwrap.dedent("""
    import os, signal, sys
    # Python's Ctrl-C handler, even when the tests were started in the background
    # (`&`, nohup), which leaves SIGINT ignored in every child
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    _EVENTS = ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree",
               "os.truncate", "os.utime")
    OPS = [0]

    def arm(folder, kill_at):
        folder = os.path.abspath(folder)

        def hook(event, args):
            if event == "open":
                path, mode, flags = args
                writes = bool(flags & _WRITE_FLAGS) if mode is None or isinstance(mode, int) \\
                    else any(c in mode for c in "wax+")
                if not writes:
                    return
            elif event not in _EVENTS:
                return
            if not isinstance(args[0], (str, bytes, os.PathLike)):
                return
            path = os.fsdecode(args[0])
            # a relative name is one inside a folder vggtl holds open (dir_fd: the
            # feature cache's entries); nothing else here writes by relative name
            if os.path.isabs(path) and not os.path.abspath(path).startswith(folder):
                return
            OPS[0] += 1
            if OPS[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        sys.addaudithook(hook)


    def model(seed):
        import vggtl
        base = vggtl.VGG16(weights=None, seed=seed, input_shape=(32, 32, 3))
        m = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(8, activation="relu"),
                                            vggtl.Dense(2, activation="softmax")], seed=seed)
        m.compile(optimizer=vggtl.Adam(1e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"])
        return m
""")


def run_child(code, env=None, timeout=300, cmd_prefix=()):
    """Run ``code`` (after KILL_HOOK: arm(), OPS, model()) in a fresh interpreter; returns the
    CompletedProcess. The child gets the parent's thread count, so its features
    are bit-identical to this process's."""
    e = dict(os.environ, OMP_NUM_THREADS=str(vggtl.get_num_threads()))
    e.update(env or {})
    e.pop("VGGTL_CACHE_LIMIT", None)
    return subprocess.run([*cmd_prefix, sys.executable, "-c", KILL_HOOK + textwrap.dedent(code)],
                          cwd=REPO, env=e, capture_output=True, text=True, timeout=timeout)


def last_json(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def kill_points(total, k, seed):
    """k distinct operation indices in [1, total], always the first and the last."""
    r = np.random.default_rng(seed)
    inner = r.choice(np.arange(2, total), size=min(k - 2, total - 2), replace=False)
    return sorted({1, total, *map(int, inner)})


# -- cache writes ----------------------------------------------------------------------
CACHE_CHILD = """
    import json, numpy as np, vggtl
    from vggtl import _core, _kernels, cache
    cache.CHUNK_PIXELS = {chunk} * 32 * 32
    X = np.random.default_rng(1).integers(0, 256, ({n}, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=2)
    arm({root!r}, {kill_at})
    c0 = _kernels.vgg16_forward_images()
    F = base.extract(X, cache={root!r}, batch_size=2, progress=False)
    print(json.dumps({{"ops": OPS[0], "computed": _kernels.vgg16_forward_images() - c0}}))
"""


@pytest.fixture(scope="module")
def cache_setup():
    base = vggtl.VGG16(weights=None, seed=2)
    X = np.random.default_rng(1).integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    ref = base.extract(X, cache=False, batch_size=2, progress=False)
    return base, X, ref, vc.make_key(base, X=X)


def check_entry_after_kill(root, key, ref, what):
    """Every file of the entry with its final name is whole; what a reader gets is
    the right features or nothing."""
    entry = vc.Entry(root, key)
    if not os.path.isdir(entry.dir):
        return
    m = None
    if os.path.exists(entry.manifest_path):
        m = vc.load_manifest(entry.manifest_path, key)
        assert m is not None, f"{what}: manifest.json is damaged"
    if os.path.exists(entry.data_path):
        assert m is not None, f"{what}: data.npy without a manifest"
        hdr = vc.files.npy_header((m["n"], *m["item_shape"]), vc.DTYPES[m["dtype"]])
        assert os.path.getsize(entry.data_path) == len(hdr) + m["n"] * vc.store.item_bytes(m), \
            f"{what}: data.npy has a final name but is not whole"
    if os.path.isdir(entry.chunk_dir):
        for name in os.listdir(entry.chunk_dir):
            if name.endswith(".part"):
                continue  # a temporary, never read
            assert m is not None, f"{what}: chunk {name} without a manifest"
            k = int(name[:-4])
            assert os.path.getsize(entry.chunk_path(k)) == entry.chunk_bytes(m, k), \
                f"{what}: chunk file {name} has a final name but is not whole"
    if m is not None:  # every chunk the manifest records is durable somewhere
        good_in_data = set(range(len(m["chunks"]))) - set(entry.bad_regions(m)) \
            if os.path.exists(entry.data_path) else set()
        for k, crc in enumerate(m["chunks"]):
            if crc is not None:
                assert k in good_in_data or entry.chunk_file_ok(m, k), \
                    f"{what}: chunk {k} is recorded but neither its file nor data.npy has it"
    got = entry.try_read()
    assert got is None or np.array_equal(got, ref), f"{what}: a reader got wrong features"


def test_sigkill_at_random_points_of_a_cache_write_never_exposes_half_a_file(
        tmp_path, cache_setup, monkeypatch):
    """Killed: a child extracting 12 images into the feature cache (3 chunks of 4), by
    SIGKILL at the K-th file operation under the cache folder, for 8 K drawn from a dry
    run's count (first and last included: creating the entry, writing each chunk and
    manifest, assembling data.npy, the final manifest, removing the chunk files).
    Checked after each kill: the manifest, if any, passes its own SHA-256; every file
    with a final name (chunk, data.npy) is whole; every chunk the manifest records is
    in a chunk file or data.npy with its CRC; a reader (try_read) gets None or exactly
    the right features. Then an extraction in this process resumes the killed entry,
    computes only the chunks not recorded, and returns the uninterrupted features bit
    for bit."""
    base, X, ref, key = cache_setup
    dry = last_json(run_child(CACHE_CHILD.format(chunk=CHUNK, n=N, root=str(tmp_path / "dry"),
                                                 kill_at=0)))
    assert dry["computed"] == N and dry["ops"] >= 10
    for k in kill_points(dry["ops"], 8, seed=11):
        root = str(tmp_path / f"k{k}")
        p = run_child(CACHE_CHILD.format(chunk=CHUNK, n=N, root=root, kill_at=k))
        assert p.returncode == -signal.SIGKILL, (k, p.returncode, p.stderr)
        check_entry_after_kill(root, key, ref, f"killed at operation {k} of {dry['ops']}")
        m = vc.load_manifest(os.path.join(root, vc.key_id(key), "manifest.json"), key)
        done = 0 if m is None else sum(c is not None for c in m["chunks"])
        monkeypatch.setattr(vc, "CHUNK_PIXELS", CHUNK * 32 * 32)
        c0 = _kernels.vgg16_forward_images()
        F = base.extract(X, cache=root, batch_size=2, progress=False)
        computed = _kernels.vgg16_forward_images() - c0
        assert isinstance(F, np.memmap) and np.array_equal(F, ref), f"kill at {k}"
        assert computed == N - done * CHUNK, f"kill at {k}: recomputed {computed} images"
        assert not [f for f in os.listdir(os.path.join(root, vc.key_id(key)))
                    if f.endswith(".part")], f"kill at {k}: temporaries were left"


# -- model saves -------------------------------------------------------------------------
SAVE_CHILD = """
    import json, numpy as np, vggtl
    m = model({seed})
    arm({folder!r}, {kill_at})
    {save}
    print(json.dumps({{"ops": OPS[0]}}))
"""
SAVES = {"model.save": ("model.vggtl", "m.save({path!r})"),
         "VGG16.save_weights": ("base.safetensors", "m.base.save_weights({path!r})")}


def _model(seed):  # the children's model(seed), in this process
    ns = {}
    exec(textwrap.dedent(KILL_HOOK), ns)
    return ns["model"](seed)


def _which(path, what, candidates):
    """The seed whose weights the file at ``path`` holds (it must load)."""
    if what == "model.save":
        got = vggtl.load_model(path)
        k = got.get_weights()
        for seed, m in candidates.items():
            if all(np.array_equal(k[n][0], w[0]) for n, w in m.get_weights().items()) and \
                    np.array_equal(got.base.get_weights()["block5_conv3"][0],
                                   m.base.get_weights()["block5_conv3"][0]):
                return seed
    else:
        got = vggtl.load_weights(path)
        for seed, m in candidates.items():
            if all(np.array_equal(got[n][0], w[0]) for n, w in m.base.get_weights().items()):
                return seed
    return None


@pytest.mark.parametrize("what", sorted(SAVES))
def test_sigkill_at_every_step_of_a_save_keeps_the_previous_file(tmp_path, what):
    """Killed: a child overwriting a saved file (model.save of a TransferModel, 59 MB;
    VGG16.save_weights) with a model of another seed, by SIGKILL at each file operation
    of the save in turn (creating the temporary file, opening it to write, reopening it
    to fsync, the rename). Checked after each kill: the file loads and holds exactly
    the previous model's weights or, killed after the rename, the new one's; the next
    save to the same path removes the temporary file the killed one left (nobody holds
    its lock any more, and it is over an hour old), and nothing else is left."""
    name, save = SAVES[what]
    models = {1: _model(1), 2: _model(2)}
    dry_dir = tmp_path / "dry"
    dry_dir.mkdir()
    dry = last_json(run_child(SAVE_CHILD.format(
        seed=2, folder=str(dry_dir), kill_at=0, save=save.format(path=str(dry_dir / name)))))
    assert dry["ops"] >= 3
    for k in range(1, dry["ops"] + 1):
        folder = tmp_path / f"k{k}"
        folder.mkdir()
        path = str(folder / name)
        if what == "model.save":
            models[1].save(path)
        else:
            models[1].base.save_weights(path)
        p = run_child(SAVE_CHILD.format(seed=2, folder=str(folder), kill_at=k,
                                        save=save.format(path=path)))
        assert p.returncode == -signal.SIGKILL, (k, p.returncode, p.stderr)
        seed = _which(path, what, models)
        assert seed in (1, 2), f"killed at operation {k}: the file holds neither model"
        # every kill point is before its operation, the last one the rename itself
        assert seed == 1, f"killed at operation {k}, before the rename, the file changed"
        left = [f for f in os.listdir(folder) if f != name]
        # a killed save leaves its temporary (or nothing, killed before creating it);
        # the next save of the same path takes it away
        assert all(f.startswith("." + name + ".") and f.endswith(".part") for f in left), left
        # leftovers younger than an hour are kept (a free lock may be another
        # machine's, where flock is local): this one is made two hours old
        for f in left:
            t = time.time() - 7200
            os.utime(folder / f, (t, t))
        if what == "model.save":
            models[2].save(path)
        else:
            models[2].base.save_weights(path)
        assert os.listdir(folder) == [name], f"killed at operation {k}: {os.listdir(folder)}"
        assert _which(path, what, models) == 2


def test_a_save_leaves_another_writers_temporary_file_alone(tmp_path):
    """Not killed: a second writer is in the middle of writing the same path (its
    temporary file is locked). Checked: a save meanwhile does not remove that file
    (only temporaries nobody holds are leftovers)."""
    from vggtl._atomic import atomic_path
    path = str(tmp_path / "model.vggtl")
    with atomic_path(path) as tmp:  # the other writer, still writing
        with open(tmp, "wb") as f:
            f.write(b"half")
        _model(1).save(path)
        assert os.path.exists(tmp)
        with open(tmp, "ab") as f:
            f.write(b" and the rest")
    with open(path, "rb") as f:
        assert f.read() == b"half and the rest"
    assert os.listdir(tmp_path) == ["model.vggtl"]


# -- Ctrl-C ----------------------------------------------------------------------------
EXTRACT_CTRL_C = """
    import json, os, signal, threading, time, numpy as np, vggtl
    from vggtl import _core, _kernels, cache
    cache.CHUNK_PIXELS = 16 * 32 * 32
    n, bs = 96, 8
    X = np.random.default_rng(3).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=4)
    ref = base.extract(X, cache=False, batch_size=bs, progress=False)
    c0 = _kernels.vgg16_forward_images()
    at_signal = []

    def watcher():  # Ctrl-C once a random amount of work is done
        while _kernels.vgg16_forward_images() - c0 < {after}:
            time.sleep(0.001)
        at_signal.append(_kernels.vgg16_forward_images() - c0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watcher, daemon=True).start()
    try:
        base.extract(X, cache={root!r}, batch_size=bs, progress=False)
        out = {{"interrupted": False}}
    except KeyboardInterrupt:
        out = {{"interrupted": True, "at_signal": at_signal[0],
               "at_interrupt": _kernels.vgg16_forward_images() - c0}}
    folder = os.path.join({root!r}, sorted(os.listdir({root!r}))[0])
    m = cache.load_manifest(os.path.join(folder, "manifest.json"))
    out["done_chunks"] = sum(c is not None for c in m["chunks"])
    out["complete"] = m["complete"]
    out["temporaries"] = [f for d, _, fs in os.walk(folder) for f in fs if f.endswith(".part")]
    c1 = _kernels.vgg16_forward_images()
    F = base.extract(X, cache={root!r}, batch_size=32, progress=False)   # resume
    out["resumed_computed"] = _kernels.vgg16_forward_images() - c1
    out["equal"] = bool(np.array_equal(F, ref)) and isinstance(F, np.memmap)
    out["n"], out["bs"] = n, bs
    print(json.dumps(out))
"""


@pytest.mark.parametrize("after", [20, 61])
def test_ctrl_c_during_extraction_stops_within_a_batch_and_the_cache_resumes(tmp_path, after):
    """Interrupted: a child extracting 96 images into the cache (batches of 8, chunks
    of 16), by SIGINT once the core had run `after` images (mid-chunk). Checked:
    KeyboardInterrupt is raised and the core ran at most the batch it was in and the
    next (the watcher reads the count, then signals, while the core runs on) after
    the signal; the manifest records the finished chunks and is not complete; no temporary
    file is left; in the same process the next extract (another batch size) computes
    exactly the unrecorded images and returns the uninterrupted features bit for bit."""
    r = last_json(run_child(EXTRACT_CTRL_C.format(root=str(tmp_path / "c"), after=after)))
    assert r["interrupted"], r
    assert r["at_interrupt"] - r["at_signal"] <= 2 * r["bs"], r
    assert not r["complete"] and r["temporaries"] == [], r
    assert r["done_chunks"] * 16 <= r["at_interrupt"] < r["n"], r
    assert r["resumed_computed"] == r["n"] - 16 * r["done_chunks"], r
    assert r["equal"], r


TRAIN_CTRL_C = """
    import json, os, signal, threading, time, traceback, numpy as np, vggtl
    from vggtl import model as vm
    n = 1000
    rng = np.random.default_rng(5)
    F = rng.standard_normal((n, 7, 7, 512), dtype=np.float32)
    y = (F[:, 0, 0, 0] > 0).astype(np.int64)
    base = vggtl.VGG16(weights=None, input_shape=(224, 224, 3))
    m = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(256, activation="relu"),
                                        vggtl.Dropout(0.5), vggtl.Dense(2, activation="softmax")],
                            seed=1)
    m.compile(optimizer=vggtl.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    where = {where!r}
    real_epoch, real_eval, took = vm._core.head_fit_epoch, vm._core.head_evaluate, []

    def fit_epoch(*args):  # epoch 3: Ctrl-C 30 % into the C epoch (epochs 1, 2 timed)
        if where == "epoch" and len(took) == 2:
            threading.Timer(0.3 * min(took), os.kill, (os.getpid(), signal.SIGINT)).start()
        t = time.perf_counter()
        out = real_epoch(*args)
        took.append(time.perf_counter() - t)
        return out

    def evaluate(*args):  # epoch 3: Ctrl-C as its validation starts
        if where == "validation" and len(took) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_eval(*args)

    vm._core.head_fit_epoch, vm._core.head_evaluate = fit_epoch, evaluate

    class Record(vggtl.callbacks.Callback):  # the state at the end of every epoch
        ends = []
        def on_epoch_end(self, epoch, logs=None):
            w = self.model.get_weights()
            self.ends.append(({{k: (a.copy(), b.copy()) for k, (a, b) in w.items()}},
                              self.model.optimizer.iterations, self.model._epochs_done))

    rec = Record()
    out = {{"interrupted": False}}
    try:
        m.fit_features(F, y, batch_size=32, epochs=50, verbose=0, callbacks=[rec],
                       validation_data=(F[:200], y[:200]))
    except KeyboardInterrupt as e:
        names = [f.name for f in traceback.extract_tb(e.__traceback__)]
        out["interrupted"] = True
        out["where"] = "validation" if "validate" in names else \
            "epoch" if "run_epoch" in names else "elsewhere"
        out["in_c"] = names[-1] in ("fit_epoch", "evaluate")
    vm._core.head_fit_epoch, vm._core.head_evaluate = real_epoch, real_eval
    w, it, done = rec.ends[-1]
    now = m.get_weights()
    out["epochs_recorded"] = len(rec.ends)
    out["epochs_done"] = m._epochs_done
    out["history"] = len(m.history.history["loss"])
    out["same_weights"] = all(np.array_equal(now[k][0], w[k][0]) and
                              np.array_equal(now[k][1], w[k][1]) for k in w)
    out["same_iterations"] = m.optimizer.iterations == it
    out["finite"] = all(np.isfinite(a).all() and np.isfinite(b).all() for a, b in now.values())
    # training goes on from there, and the model saves and loads
    m.fit_features(F, y, batch_size=32, epochs=1, verbose=0)
    out["after"] = m._epochs_done
    m.save({path!r})
    out["loaded_epochs"] = vggtl.load_model({path!r})._epochs_done
    print(json.dumps(out))
"""


@pytest.mark.parametrize("where", ["epoch", "validation"])
def test_ctrl_c_during_training_keeps_the_last_completed_epoch(tmp_path, where):
    """Interrupted: a child training a head (1,000 cached 7 x 7 x 512 features,
    Flatten + Dense(256) + Dropout + Dense(2), Adam, with validation) for 50 epochs,
    by SIGINT in the third epoch: 30 % into its C call, the weights half updated
    ("epoch"), or as its validation starts, the epoch's training done ("validation").
    Checked: KeyboardInterrupt is raised from there; the weights, the optimizer's step
    count, epochs_done and the history are exactly those of the end of the second
    epoch (as a callback recorded them), all finite; a further fit trains on from
    there, and the model saves and loads."""
    for attempt in range(3):  # "epoch": a loaded machine may let the C call end first
        r = last_json(run_child(TRAIN_CTRL_C.format(where=where,
                                                    path=str(tmp_path / "m.vggtl"))))
        assert r["interrupted"], r
        assert r["epochs_done"] == r["history"] == r["epochs_recorded"], r
        assert r["same_weights"] and r["same_iterations"] and r["finite"], r
        assert r["after"] == r["epochs_done"] + 1 == r["loaded_epochs"], r
        if r["where"] == where and r["epochs_recorded"] == 2:
            break
    assert r["where"] == where and r["epochs_recorded"] == 2, r


SAVE_CTRL_C = """
    import json, os, signal, threading, time, numpy as np, vggtl
    models = [model(1), model(2)]
    path = {path!r}
    models[0].save(path)
    t = time.perf_counter(); models[1].save(path); once = time.perf_counter() - t
    rng = np.random.default_rng({seed})
    out = []
    for trial in range(6):  # Ctrl-C at a random point of a stream of saves
        timer = threading.Timer(rng.uniform(0.05, 1.5) * once, os.kill,
                                (os.getpid(), signal.SIGINT))
        i = 0
        timer.start()
        try:
            while True:
                i += 1
                models[i % 2].save(path)
        except KeyboardInterrupt:
            pass
        got = vggtl.load_model(path).get_weights()["dense"][0]
        seeds = [s for s, mm in zip((1, 2), models)
                 if np.array_equal(got, mm.get_weights()["dense"][0])]
        files = sorted(os.listdir(os.path.dirname(path)))
        out.append({{"saves": i, "seed": seeds, "files": files}})
    print(json.dumps(out))
"""


def test_ctrl_c_during_saving_leaves_a_whole_file_and_no_temporary(tmp_path):
    """Interrupted: a child saving two models in turn to one path (model.save, 59 MB),
    by SIGINT at a random moment (6 times, from a seeded generator). Checked each
    time: KeyboardInterrupt is raised; the file loads and is one of the two models
    whole; the interrupted save removed its temporary file (the folder holds only the
    model)."""
    r = last_json(run_child(SAVE_CTRL_C.format(path=str(tmp_path / "m.vggtl"), seed=7)))
    for trial in r:
        assert len(trial["seed"]) == 1, r
        assert trial["files"] == ["m.vggtl"], r


# -- a full disk ---------------------------------------------------------------------------
def _enospc_from(monkeypatch, name_part=""):
    """os.fsync of a file fails with ENOSPC (as fsync does when delayed allocation
    finds the disk full) from the first file whose name holds ``name_part`` on, and
    for every file after it: the disk stays full. Folders' fsyncs pass."""
    real, full = os.fsync, [False]

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            full[0] = full[0] or name_part in os.readlink(f"/proc/self/fd/{fd}")
            if full[0]:
                raise OSError(28, os.strerror(28))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_full_disk_on_save_is_a_clear_error_and_the_previous_file_survives(tmp_path,
                                                                            monkeypatch):
    """Fault: the disk fills up while model.save writes (a mocked ENOSPC from fsync)
    over an existing model. Checked: OSError with errno ENOSPC whose message names the
    file and says nothing was replaced; the previous model loads unchanged; no
    temporary file is left."""
    path = str(tmp_path / "model.vggtl")
    a, b = _model(1), _model(2)
    a.save(path)
    _enospc_from(monkeypatch)
    with pytest.raises(OSError) as e:
        b.save(path)
    monkeypatch.undo()
    assert e.value.errno == 28 and path in str(e.value) and "was not replaced" in str(e.value)
    assert "disk full" in str(e.value)
    assert _which(path, "model.save", {1: a, 2: b}) == 1
    assert os.listdir(tmp_path) == ["model.vggtl"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")
def test_full_disk_during_cache_write_warns_once_and_resumes(tmp_path, monkeypatch,
                                                             cache_setup):
    """Fault: the disk fills up while the feature cache writes an entry (a mocked
    ENOSPC from fsync from the second chunk file on). Checked: the
    extraction still returns the right features (computed in memory), with one
    RuntimeWarning naming the folder, also over a second call; the entry on disk is
    consistent (check as after a kill); once there is space again, the next extraction
    computes only the chunks not recorded and is cached."""
    base, X, ref, key = cache_setup
    monkeypatch.setattr(vc, "CHUNK_PIXELS", CHUNK * 32 * 32)
    monkeypatch.setattr(vc.run, "_warned", set())
    root = str(tmp_path / "features")
    _enospc_from(monkeypatch, "000001.bin")  # full from the second chunk on
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        F1 = base.extract(X, cache=root, batch_size=2, progress=False)
        F2 = base.extract(X, cache=root, batch_size=2, progress=False)
    monkeypatch.setattr(os, "fsync", _REAL_FSYNC)  # space again
    assert np.array_equal(F1, ref) and np.array_equal(F2, ref)
    assert not isinstance(F1, np.memmap)
    msgs = [str(x.message) for x in w if issubclass(x.category, RuntimeWarning)]
    assert len(msgs) == 1 and root in msgs[0] and "No space left" in msgs[0], msgs
    check_entry_after_kill(root, key, ref, "after ENOSPC")
    m = vc.load_manifest(os.path.join(root, vc.key_id(key), "manifest.json"), key)
    done = sum(c is not None for c in m["chunks"])
    assert done >= 1
    c0 = _kernels.vgg16_forward_images()
    F3 = base.extract(X, cache=root, batch_size=2, progress=False)
    assert _kernels.vgg16_forward_images() - c0 == N - done * CHUNK
    assert isinstance(F3, np.memmap) and np.array_equal(F3, ref)


FSIZE_CHILD = """
    import json, os, resource, signal, warnings, numpy as np, vggtl
    from vggtl import cache
    cache.CHUNK_PIXELS = {chunk} * 32 * 32
    X = np.random.default_rng(1).integers(0, 256, ({n}, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=2)
    # writes past {limit} bytes fail with EFBIG, as on a disk that is full
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, hard))
    out = {{}}
    try:
        base.save_weights({weights!r})
        out["save"] = "ok"
    except OSError as e:
        out["save"] = [e.errno, str(e)]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        F = base.extract(X, cache={root!r}, batch_size=2, progress=False)
    out["warnings"] = [str(x.message) for x in w]
    out["memmap"] = isinstance(F, np.memmap)
    out["sum"] = float(np.asarray(F, np.float64).sum())
    print(json.dumps(out))
"""


def test_file_size_limit_write_failure_is_a_clear_error_and_nothing_is_corrupted(
        tmp_path, cache_setup, monkeypatch):
    """Fault: real write(2) failures: a child whose writes past 20 kB fail with EFBIG
    (RLIMIT_FSIZE), overwriting a 59 MB weights file and extracting into the cache
    (chunk files fit, data.npy does not). Checked: the save raises OSError naming the
    file, and the previous weights file loads unchanged, no temporary left; the
    extraction returns the right features uncached, with one warning; afterwards, in
    this process, the entry is consistent and completes from its chunk files without
    computing anything."""
    base, X, ref, key = cache_setup
    wpath = str(tmp_path / "w" / "base.safetensors")
    os.makedirs(os.path.dirname(wpath))
    prev = vggtl.VGG16(weights=None, seed=9)
    prev.save_weights(wpath)
    root = str(tmp_path / "features")
    r = last_json(run_child(FSIZE_CHILD.format(chunk=CHUNK, n=N, limit=20000, weights=wpath,
                                               root=root)))
    assert r["save"][0] == 27 and wpath in r["save"][1], r  # EFBIG
    got = vggtl.load_weights(wpath)
    assert all(np.array_equal(got[k][0], v[0]) for k, v in prev.get_weights().items())
    assert os.listdir(os.path.dirname(wpath)) == ["base.safetensors"]
    assert not r["memmap"] and np.isclose(r["sum"], float(np.asarray(ref, np.float64).sum()),
                                          rtol=1e-6)
    assert len(r["warnings"]) == 1 and root in r["warnings"][0], r
    check_entry_after_kill(root, key, ref, "after EFBIG")
    monkeypatch.setattr(vc, "CHUNK_PIXELS", CHUNK * 32 * 32)
    c0 = _kernels.vgg16_forward_images()
    F = base.extract(X, cache=root, batch_size=2, progress=False)
    assert _kernels.vgg16_forward_images() - c0 == 0  # every chunk file was whole
    assert isinstance(F, np.memmap) and np.array_equal(F, ref)


TMPFS_CHILD = """
    import json, os, warnings, numpy as np, vggtl
    from vggtl import cache
    cache.CHUNK_PIXELS = {chunk} * 32 * 32
    d = {mnt!r}
    out = {{}}
    a, b = model(1), model(2)
    a.save(os.path.join(d, "model.vggtl"))            # 59 MB of the 100 MB
    try:
        b.save(os.path.join(d, "model.vggtl"))        # needs 59 MB more for the temporary
        out["save"] = "ok"
    except OSError as e:
        out["save"] = [e.errno, str(e)]
    out["files"] = sorted(os.listdir(d))
    got = vggtl.load_model(os.path.join(d, "model.vggtl")).get_weights()["dense"][0]
    out["previous"] = bool(np.array_equal(got, a.get_weights()["dense"][0]))
    # fill the disk but for a few kB, then extract into the cache there
    with open(os.path.join(d, "filler"), "wb") as f:
        try:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
        except OSError:
            pass
    with open(os.path.join(d, "filler"), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(d, "filler")) - 12288)
    X = np.random.default_rng(1).integers(0, 256, ({n}, 32, 32, 3), dtype=np.uint8)
    base = vggtl.VGG16(weights=None, seed=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        F = base.extract(X, cache=os.path.join(d, "features"), batch_size=2, progress=False)
        G = base.extract(X, cache=os.path.join(d, "features"), batch_size=2, progress=False)
    out["warnings"] = [str(x.message) for x in w]
    out["equal"] = bool(np.array_equal(F, G)) and not isinstance(F, np.memmap)
    np.save(os.path.join({keep!r}, "F.npy"), np.asarray(F))
    # the entry as the full disk left it, for the parent to check (the mount goes
    # with this process)
    import shutil
    shutil.copytree(os.path.join(d, "features"), os.path.join({keep!r}, "features"))
    out["copied"] = True
    print(json.dumps(out))
"""


def test_full_tmpfs_is_a_clear_error_and_nothing_is_corrupted(tmp_path, cache_setup,
                                                              monkeypatch):
    """Fault: a really full disk: a 100 MB tmpfs mounted in a private mount namespace
    (needs root and unshare; skipped otherwise). Killed nothing; wrote: a 59 MB model,
    then a second save of another model over it (no room for the temporary), then a
    feature-cache extraction after filling the disk to its last 12 kB. Checked: the
    second save raises OSError ENOSPC naming the file and the first model loads
    unchanged, no temporary file left; the extraction returns the right features in
    memory, one warning over two calls; the entry it left is consistent (as after a
    kill) and, given space, resumes to the uninterrupted features."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("mounting a tmpfs needs root and unshare")
    base, X, ref, key = cache_setup
    mnt = tmp_path / "mnt"
    keep = tmp_path / "keep"
    mnt.mkdir()
    keep.mkdir()
    code = TMPFS_CHILD.format(chunk=CHUNK, n=N, mnt=str(mnt), keep=str(keep))
    p = run_child(code, cmd_prefix=["unshare", "-m", "sh", "-c",
                                    'mount -t tmpfs -o size=100m tmpfs "$0" && exec "$@"',
                                    str(mnt)])
    if p.returncode != 0 and "mount" in p.stderr and "Traceback" not in p.stderr:
        pytest.skip(f"no tmpfs mount here: {p.stderr.strip()}")
    r = last_json(p)
    assert r["save"][0] == 28 and "model.vggtl" in r["save"][1] and "disk full" in r["save"][1], r
    assert r["files"] == ["model.vggtl"] and r["previous"], r
    assert r["equal"] and r["copied"], r
    assert len(r["warnings"]) == 1 and "No space left" in r["warnings"][0], r
    assert np.array_equal(np.load(keep / "F.npy"), ref)
    root = str(keep / "features")
    check_entry_after_kill(root, key, ref, "after a full tmpfs")
    monkeypatch.setattr(vc, "CHUNK_PIXELS", CHUNK * 32 * 32)
    F = base.extract(X, cache=root, batch_size=2, progress=False)
    assert isinstance(F, np.memmap) and np.array_equal(F, ref)


# -- read-only cache folders ---------------------------------------------------------------
RO_CHILD = """
    import json, os, warnings, numpy as np, vggtl
    from vggtl import _core, _kernels
    X = np.random.default_rng(1).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    y = np.arange(12) % 2
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        base = vggtl.VGG16(weights={pth!r}, input_shape=(32, 32, 3))      # converts, twice
        base = vggtl.VGG16(weights={pth!r}, input_shape=(32, 32, 3))
        m = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(8, activation="relu"),
                                            vggtl.Dense(2, activation="softmax")])
        m.compile(optimizer=vggtl.Adam(1e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"])
        c0 = _kernels.vgg16_forward_images()
        H = m.fit(X, y, epochs=2, verbose=0, validation_data=(X[:4], y[:4]))
        m.fit(X, y, epochs=1, verbose=0)
        computed = _kernels.vgg16_forward_images() - c0
        P = m.predict(X)
    print(json.dumps({{"warnings": [str(x.message) for x in w], "computed": computed,
                       "epochs": len(H.history["loss"]), "finite": bool(np.isfinite(P).all())}}))
"""


def test_read_only_cache_home_works_without_caching_and_says_so_once_per_folder(tmp_path):
    """Fault: the whole cache home ($XDG_CACHE_HOME, also $HOME) is read-only and has
    no vggtl folder yet (mode bits; root drops CAP_DAC_OVERRIDE with setpriv).
    Ran: VGG16 from a torchvision .pth twice (its conversion would be cached), then
    two fits with validation (features would be cached) and a predict. Checked: all of
    it works; the features are computed every time (12 + 4, then 12); exactly two
    warnings, one for the feature cache's folder and one for the converted-weights
    folder; nothing was created in the cache home."""
    torch = pytest.importorskip("torch")  # noqa: F841 (weight_files' writer needs it)
    from support import weight_files
    pth = str(tmp_path / "vgg16-397923af.pth")
    w = weight_files.keras_weights(np.random.default_rng(0))
    sd = weight_files.torch_state_dict(w)
    weight_files.write_torch_2017(pth, {k: v.numpy() for k, v in sd.items()})
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o555)
    cmd = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: mode bits cannot be tested")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    try:
        r = last_json(run_child(RO_CHILD.format(pth=pth), cmd_prefix=cmd,
                                env={"XDG_CACHE_HOME": str(home), "HOME": str(home)}))
    finally:
        os.chmod(home, 0o755)
    assert r["epochs"] == 2 and r["finite"], r
    assert r["computed"] == 12 + 4 + 12, r
    feats = [m for m in r["warnings"] if "feature cache" in m]
    conv = [m for m in r["warnings"] if "converted" in m]
    assert len(r["warnings"]) == 2 and len(feats) == 1 and len(conv) == 1, r["warnings"]
    assert str(home) in feats[0] and str(home) in conv[0]
    assert os.listdir(home) == []


def test_save_into_a_read_only_folder_is_a_clear_error(tmp_path):
    """Fault: model.save into a folder the process may not write (mode bits; a root
    test run drops CAP_DAC_OVERRIDE in a child). Checked: PermissionError whose
    message names the file and says nothing was replaced; the folder is unchanged."""
    folder = tmp_path / "ro"
    folder.mkdir()
    path = str(folder / "model.vggtl")
    code = f"""
        import json, vggtl
        base = vggtl.VGG16(weights=None, input_shape=(32, 32, 3))
        m = vggtl.TransferModel(base, head=[vggtl.Flatten(), vggtl.Dense(2, activation="softmax")])
        try:
            m.save({path!r})
            print(json.dumps(["saved"]))
        except OSError as e:
            print(json.dumps([type(e).__name__, e.errno, str(e)]))
    """
    cmd = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: mode bits cannot be tested")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    os.chmod(folder, 0o555)
    try:
        r = last_json(run_child(code, cmd_prefix=cmd))
    finally:
        os.chmod(folder, 0o755)
    assert r[0] == "PermissionError" and path in r[2] and "was not replaced" in r[2], r
    assert os.listdir(folder) == []


# -- damaged files ---------------------------------------------------------------------------
def test_a_truncated_or_foreign_model_file_is_a_clear_error(tmp_path):
    """Not killed here: a model file cut short (what a copy or download stopped half-way
    leaves, which vggtl's own writes never do), random bytes, a safetensors file
    without vggtl's metadata, an empty file. Checked: each raises ValueError naming
    the file and saying what it is not; the whole file still loads."""
    path = str(tmp_path / "model.vggtl")
    m = _model(1)
    m.save(path)
    raw = open(path, "rb").read()
    from safetensors.numpy import save
    cases = {"cut_header.vggtl": (raw[:100], "not a vggtl model file"),
             "cut_data.vggtl": (raw[:len(raw) // 2], "not a readable vggtl model file"),
             "noise.vggtl": (np.random.default_rng(0).bytes(4096), "not a vggtl model file"),
             "empty.vggtl": (b"", "too short"),
             "plain.safetensors": (save({"a": np.zeros(3, np.float32)}), "not a vggtl model")}
    for name, (data, msg) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ValueError, match=msg) as e:
            vggtl.load_model(str(p))
        assert str(p) in str(e.value), name
    assert _which(path, "model.save", {1: m}) == 1


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
@pytest.mark.parametrize("reader", ["load_pickle", "load_pickles", "load_weights",
                                    "load_model", "dask_shard"])
def test_a_fifo_given_as_a_file_is_refused_without_blocking(tmp_path, reader):
    """open() of a FIFO with no writer blocks for ever: each reader refuses one by
    what it is, naming it, without opening it."""
    import threading
    from vggtl import distributed as vdist
    fifo = str(tmp_path / "data.pickle")
    os.mkfifo(fifo)
    call = {"load_pickle": lambda: vggtl.load_pickle(fifo),
            "load_pickles": lambda: vggtl.load_pickles(fifo, fifo),
            "load_weights": lambda: vggtl.load_weights(fifo, cache=False),
            "load_model": lambda: vggtl.load_model(fifo),
            # what each Dask worker runs first on a shard named in X
            "dask_shard": lambda: vdist._shard_meta(fifo)}[reader]
    got = {}

    def run():
        try:
            call()
        except Exception as e:  # noqa: BLE001  checked below
            got["e"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    if t.is_alive():  # unblock the thread: open the FIFO for writing, then close it
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"{reader} blocked on a FIFO")
    assert isinstance(got.get("e"), ValueError), got
    assert fifo in str(got["e"]) and "a FIFO" in str(got["e"]), got["e"]


def test_a_young_unlocked_leftover_is_kept_and_saves_work_without_flock(tmp_path, monkeypatch):
    """Not killed: a temporary file nobody holds but written a minute ago (where flock
    is local to each machine, its writer may be on another one), then a file system
    whose flock fails (ENOLCK, as some network mounts). Checked: the save keeps the
    young leftover, and without flock it still replaces the file atomically."""
    import errno
    import fcntl
    from vggtl import _atomic
    path = tmp_path / "w.safetensors"
    young = tmp_path / ".w.safetensors.0123456789ab.part"
    young.write_bytes(b"another machine's half")
    base = _model(1).base
    base.save_weights(str(path))
    assert young.exists()

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(_atomic.fcntl, "flock", no_flock)
    _model(2).base.save_weights(str(path))
    monkeypatch.setattr(_atomic.fcntl, "flock", fcntl.flock)
    assert young.exists()  # without a lock of its own, a save removes nothing
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, young.name])
    got = vggtl.VGG16(weights=str(path)).get_weights()
    want = _model(2).base.get_weights()
    assert all(np.array_equal(got[n][0], want[n][0]) for n in want)


# -- crafted model files -----------------------------------------------------------------------
def _crafted_models(tmp_path):
    """(name, config change, tensors change, what the error must say) for crafted
    model files. Each was (the name says which) a KeyError, TypeError,
    RecursionError or OverflowError, a ValueError naming neither the file nor the
    field, a silent acceptance, or 819 MB allocated before the check."""
    def cfg(**kv):
        return lambda c: c.update(kv)

    def head(i, **kv):
        return lambda c: c["head"][i].update(kv)

    def drop(key):
        return lambda c: c.pop(key)

    def comp(**kv):
        return lambda c: c["compile"].update(kv)

    def opt(**kv):
        return lambda c: c["compile"]["optimizer"].update(kv)

    def nested(depth):  # written as text: json itself cannot build it
        return lambda c: c.update(classes=f"@nested {depth}@")

    def tensor(key, fn):
        return lambda t: t.__setitem__(key, fn(t[key]))

    nan_kernel = tensor("head/dense/kernel", lambda a: np.where(a > 0, np.nan, a).astype(a.dtype))
    return [
        ("no base (KeyError)", drop("base"), None, "'base' is missing"),
        ("base is a list (TypeError)", cfg(base=[]), None, "base: expected an object"),
        ("compile is a number (TypeError)", cfg(compile=5), None, "compile: expected an object"),
        ("head layer is a string (a ValueError naming neither)", lambda c: c["head"].__setitem__(1, "x"),
         None, "head[1]: expected a layer object"),
        ("an unknown layer argument (TypeError)", head(1, kernel_initializer="zeros"), None,
         "head[1]: unknown field 'kernel_initializer'"),
        ("an unknown optimizer argument (TypeError)", opt(amsgrad=True), None,
         "compile.optimizer: unknown field 'amsgrad'"),
        ("units as a string", head(1, units="8"), None, "head[1].units"),
        ("format_version as a string (TypeError)", cfg(format_version="2"), None,
         "format_version"),
        ("classes nested 100000 deep (RecursionError)", nested(100000), None, "nests too deeply"),
        ("classes nested 50 deep", nested(50), None, "classes"),
        ("epochs_done 1e400 (OverflowError)", cfg(epochs_done=float("inf")), None,
         "epochs_done"),
        ("iterations 2**70 (OverflowError in fit)", comp(iterations=2 ** 70), None,
         "compile.iterations"),
        ("input_shape 2**70 (OverflowError)", lambda c: c["base"].update(
            input_shape=[2 ** 70, 32, 3]), None, "base.input_shape[0]"),
        ("seed -1", cfg(seed=-1), None, "seed"),
        ("a negative learning rate", opt(learning_rate=-1.0), None,
         "compile.optimizer.learning_rate"),
        ("a schedule of 400 digits (OverflowError)", opt(learning_rate={
            "class_name": "ExponentialDecay", "config": {
                "initial_learning_rate": 1e-3, "decay_steps": 10 ** 400, "decay_rate": 0.9}}),
         None, "compile.optimizer.learning_rate.config.decay_steps"),
        ("a schedule vggtl does not have", opt(learning_rate={
            "class_name": "PiecewiseConstantDecay", "config": {}}), None,
         "compile.optimizer.learning_rate.class_name"),
        ("100 metrics", comp(metrics=[f"m{i}" for i in range(100)]), None, "compile.metrics"),
        ("dropout rate 1.5", lambda c: c["head"].insert(2, {"class_name": "Dropout",
                                                           "name": "dropout", "rate": 1.5}),
         None, "head[2].rate"),
        ("an input layer in the middle", lambda c: c["head"].insert(
            2, {"class_name": "Flatten", "name": "flatten_1"}), None, "head[2].class_name"),
        ("two layers of one name", head(2, name="dense"), None, "head[2].name"),
        ("5 classes for a 2-unit output", cfg(classes=["a", "b", "c", "d", "e"]), None,
         "classes: expected a list of 1 to 2 labels"),
        ("classes of mixed kinds", cfg(classes=["a", 1]), None, "classes"),
        ("units 400000 (819 MB allocated before the check)", head(1, units=400_000), None,
         "tensor 'head/dense/kernel': expected float32 (512, 400000)"),
        ("units that disagree with the kernel", head(1, units=9), None,
         "tensor 'head/dense/kernel'"),
        ("NaN in a head kernel (accepted)", None, nan_kernel, "head/dense/kernel': holds NaN"),
        ("a float64 head kernel (accepted)", None,
         tensor("head/dense/kernel", lambda a: a.astype(np.float64)), "head/dense/kernel"),
        ("a tensor no layer has (accepted)", None,
         lambda t: t.__setitem__("base/fc1/kernel", np.zeros((2, 2), np.float32)),
         "base/fc1/kernel"),
        ("optimizer state without compile (ignored)", cfg(compile=None), None,
         "optimizer state, but compile is null"),
        ("Adam's state with plain SGD", lambda c: c["compile"].update(optimizer={
            "class_name": "SGD", "learning_rate": 0.01, "decay": 0.0, "momentum": 0.0,
            "nesterov": False}), None, "SGD has no such optimizer state"),
    ]


def test_crafted_model_metadata_is_a_value_error_naming_the_field(tmp_path):
    import tracemalloc
    from safetensors.numpy import load, save
    path = tmp_path / "model.vggtl"
    m = _model(3)
    m.save(str(path))
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    config = json.loads(json.loads(raw[8:8 + n])["__metadata__"]["vggtl"])
    tensors = load(raw)
    for name, change, change_tensors, field in _crafted_models(tmp_path):
        c = json.loads(json.dumps(config))
        t = dict(tensors)
        if change:
            change(c)
        if change_tensors:
            change_tensors(t)
        p = tmp_path / "crafted.vggtl"
        text = json.dumps(c)
        if isinstance(c.get("classes"), str) and c["classes"].startswith("@nested"):
            depth = int(c["classes"].split()[1][:-1])
            text = text.replace(json.dumps(c["classes"]), "[" * depth + "]" * depth)
        p.write_bytes(save(t, metadata={"vggtl": text}))
        tracemalloc.start()
        try:
            with pytest.raises(ValueError) as e:
                vggtl.load_model(str(p))
            peak = tracemalloc.get_traced_memory()[1]
        except BaseException as error:  # another exception type: say which case
            raise AssertionError(f"{name}: {type(error).__name__}: {error}") from None
        finally:
            tracemalloc.stop()
        assert str(p) in str(e.value), (name, str(e.value))
        assert field in str(e.value), (name, str(e.value))
        # nothing large allocated: the file's tensors (59 MB) are read, little more
        assert peak < 3 * len(raw) + (64 << 20), (name, peak)
    assert vggtl.load_model(str(path)).get_weights()["dense"][0].shape == (512, 8)
