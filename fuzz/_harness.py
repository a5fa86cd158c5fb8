"""What every fuzz target shares: the contract check, the engine, the scratch file.

A target is a function ``one_input(data: bytes)`` that feeds ``data`` to a vggtl
reader and returns normally when the reader either succeeded or raised one of the
exception types its docstring documents. Anything else escapes: another exception
type, a crash of the process (a segfault in C), a hang past the time limit, or
memory past the RSS limit. The engine reports it and saves the input.

Engines:
- atheris (libFuzzer for Python, coverage-guided; ``pip install atheris``), used
  when importable. Arguments are libFuzzer's: ``-max_total_time=15``,
  ``-runs=N``, ``-timeout=S``, ``-rss_limit_mb=M``, corpus folders;
- otherwise a small mutation fuzzer in pure Python with the same command line
  (byte flips, interesting integers, inserted, deleted and repeated slices, splices
  of two corpus files; not coverage-guided). ``VGGTL_FUZZ_ENGINE=python`` forces it.

Run a target by hand: ``python fuzz/fuzz_pickle.py -max_total_time=600 CORPUS_DIR``
(see fuzz/README.md); ``python fuzz/run.py`` runs them all for a bounded time.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def scratch_dir() -> str:
    """A private folder for the input files (in RAM when /dev/shm exists)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="vggtl-fuzz-", dir=base)


def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def _use_atheris() -> bool:
    if os.environ.get("VGGTL_FUZZ_ENGINE", "").lower() == "python":
        return False
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def instrumented_imports():
    """A context manager: modules imported inside it report coverage to atheris
    (a no-op context for the pure-Python engine)."""
    import contextlib
    if _use_atheris():
        import atheris
        return atheris.instrument_imports()
    return contextlib.nullcontext()


def main(one_input, argv=None) -> None:
    """Fuzz ``one_input`` with atheris, else with the pure-Python engine."""
    argv = list(sys.argv if argv is None else argv)
    if _use_atheris():
        import atheris
        atheris.Setup(argv, one_input)
        atheris.Fuzz()
        return
    sys.exit(_python_engine(one_input, argv))


# -- the pure-Python engine -----------------------------------------------------------
_INTERESTING = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 1 << 40, 2 ** 31, 2 ** 32]


def _mutate(data: bytes, corpus, r: random.Random) -> bytes:
    b = bytearray(data or b"\0")
    for _ in range(r.randint(1, 4)):
        op = r.randrange(7)
        i = r.randrange(len(b)) if b else 0
        if op == 0:                                    # flip a bit
            if b:
                b[i] ^= 1 << r.randrange(8)
        elif op == 1:                                  # a random byte
            if b:
                b[i] = r.randrange(256)
        elif op == 2:                                  # an interesting integer
            width = r.choice((1, 2, 4, 8))
            v = r.choice(_INTERESTING) & ((1 << (8 * width)) - 1)
            b[i:i + width] = v.to_bytes(width, r.choice(("little", "big")))
        elif op == 3:                                  # delete a slice
            del b[i:i + r.randint(1, 64)]
        elif op == 4:                                  # repeat a slice
            j = r.randint(i, min(len(b), i + 64))
            b[i:i] = b[i:j] * r.randint(1, 4)
        elif op == 5 and corpus:                       # splice with another input
            other = r.choice(corpus)
            j = r.randrange(len(other) + 1)
            b = b[:i] + bytearray(other[j:j + r.randint(1, 256)]) + b[i:]
        elif op == 6:                                  # truncate
            del b[i:]
    return bytes(b)


def _python_engine(one_input, argv) -> int:
    opts, dirs = {}, []
    for a in argv[1:]:
        if a.startswith("-") and "=" in a:
            k, v = a[1:].split("=", 1)
            opts[k] = v
        elif not a.startswith("-"):
            dirs.append(a)
    seconds = float(opts.get("max_total_time", 0)) or None
    runs = int(opts.get("runs", -1))
    seed = int(opts.get("seed", 0)) or None
    r = random.Random(seed)
    corpus = []
    for d in dirs:
        if os.path.isdir(d):
            for name in sorted(os.listdir(d)):
                p = os.path.join(d, name)
                if os.path.isfile(p):
                    with open(p, "rb") as f:
                        corpus.append(f.read())
        elif os.path.isfile(d):  # a single input: run it once (reproducing a crash)
            with open(d, "rb") as f:
                corpus.append(f.read())
            runs = 1
    if not corpus:
        corpus = [b""]
    t0, n = time.monotonic(), 0
    pending = list(corpus)  # the seeds themselves first
    timeout = int(float(opts.get("timeout", 0)))

    def hang(signum, frame):  # -timeout=S: an input that takes longer is a finding
        raise TimeoutError(f"one input ran longer than -timeout={timeout} s")
    if timeout > 0 and hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, hang)
    while (runs < 0 or n < runs) and (seconds is None or time.monotonic() - t0 < seconds):
        data = pending.pop() if pending else _mutate(r.choice(corpus), corpus, r)
        try:
            if timeout > 0 and hasattr(signal, "SIGALRM"):
                signal.alarm(timeout)
            try:
                one_input(data)
            finally:
                if timeout > 0 and hasattr(signal, "SIGALRM"):
                    signal.alarm(0)
        except BaseException:  # the contract was broken (or a hang): save the input
            name = "crash-" + hashlib.sha1(data).hexdigest()
            with open(os.path.join(opts.get("artifact_prefix", ""), name) if
                      opts.get("artifact_prefix") else name, "wb") as f:
                f.write(data)
            traceback.print_exc()
            print(f"==python-engine== contract broken after {n} runs; input saved as {name}",
                  file=sys.stderr)
            return 1
        n += 1
    dt = time.monotonic() - t0
    print(f"Done {n} runs in {int(dt)} second(s) (pure-Python engine, {n / max(dt, 1e-9):.0f} "
          f"exec/s)", file=sys.stderr)
    return 0
