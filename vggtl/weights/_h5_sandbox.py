"""libhdf5 in a child process of its own, stopped when it overruns its time.

h5py is libhdf5, which a damaged file can send into an endless loop or a crash
(see :mod:`vggtl.weights._h5_worker`); neither may take the user's process with
it. Every HDF5 file is therefore read by a worker process (started on first use,
kept for the next file, restarted after a failure) that answers one request at a
time. Each answer has a deadline that grows with the bytes involved; a worker
that misses it is killed and the caller gets a :class:`WeightsError`, as it does
when the worker dies. The worker's answers are checked like any other input:
bounded lengths, the shapes asked for, nothing decoded but JSON and float32.

``ISOLATE = False`` runs the same session in this process (the tests use it to
watch what h5py is asked to read); so does a platform without POSIX pipes.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

import numpy as np

from . import _h5_worker
from ._common import WeightsError

ISOLATE = True
WORKER_SCRIPT = _h5_worker.__file__
START_SECONDS = 60.0  # the worker's start: an interpreter, numpy and h5py, from a cold disk
BASE_SECONDS = 5.0  # any request; libhdf5 answers a sound Keras file in milliseconds
BYTES_PER_SECOND = 20e6  # what a slow disk still reads

# the child runs the worker's file as a script with the script folder off sys.path,
# so that neither vggtl's package nor a file next to the worker shadows a module
_CHILD = ("import sys, runpy; del sys.path[0]; "
          "runpy.run_path(sys.argv[1], run_name='__main__')")


def _budget(nbytes: int) -> float:
    return BASE_SECONDS + nbytes / BYTES_PER_SECOND


def _widen_pipe(fd: int) -> None:
    """Let the answers' pipe hold 1 MiB (Linux; the default 64 KiB made a 58 MB
    weights file a thousand wake-ups of both processes). Best effort: a
    system that refuses keeps its size."""
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


class _Worker:
    """One child process and the pipes to it."""

    def __init__(self):
        env = dict(os.environ)
        # one thread each for numpy's BLAS and OpenMP: the worker only copies data
        env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   HDF5_PLUGIN_PATH=os.devnull)  # HDF5 plugins are refused anyway
        self.pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, WORKER_SCRIPT], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, close_fds=True)
        self.rfd = self.proc.stdout.fileno()
        self.wfd = self.proc.stdin.fileno()
        _widen_pipe(self.rfd)
        os.set_blocking(self.wfd, False)
        try:
            hello = self._receive(time.monotonic() + START_SECONDS, "starting")
            if hello.get("ready") is not True:
                raise _Garbled("a first answer other than ready")
        except BaseException:
            self.kill()
            raise

    def kill(self):
        try:
            self.proc.kill()
        except OSError:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def close(self):
        """End the worker by closing its input: it returns from its loop."""
        try:
            self.proc.stdin.close()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()
        else:
            self.proc.stdout.close()

    # -- the messages, each way under a deadline ----------------------------------------
    def _wait(self, fd: int, write: bool, deadline: float, what: str) -> None:
        """Until ``fd`` can be read (or written), a hang-up included; _Overrun at
        the deadline. poll(), where there is one: select() fails on descriptors
        past 1023, which a notebook holding many files reaches."""
        left = deadline - time.monotonic()
        if left > 0:
            if hasattr(select, "poll"):
                p = select.poll()
                p.register(fd, select.POLLOUT if write else select.POLLIN)
                if p.poll(left * 1000):
                    return
            else:
                r, w, _ = select.select([] if write else [fd], [fd] if write else [], [], left)
                if r or w:
                    return
        raise _Overrun(what)

    def _send(self, header: dict, deadline: float = 0.0, what: str = ""):
        view = memoryview(_h5_worker.encode(header)).cast("B")
        while view:
            self._wait(self.wfd, True, deadline, what)
            try:
                view = view[os.write(self.wfd, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise _Died(what) from None

    def _read_into(self, view: memoryview, deadline: float, what: str) -> None:
        got = 0
        while got < len(view):
            self._wait(self.rfd, False, deadline, what)
            n = os.readv(self.rfd, [view[got:]])
            if n == 0:
                raise _Died(what)
            got += n

    def _receive(self, deadline: float, what: str) -> dict:
        head = bytearray(_h5_worker._LEN.size)
        self._read_into(memoryview(head), deadline, what)
        n = _h5_worker._LEN.unpack(head)[0]
        if n > _h5_worker.HEADER_MAX:
            raise _Garbled(f"a {n}-byte answer")
        body = bytearray(n)
        self._read_into(memoryview(body), deadline, what)
        try:
            msg = json.loads(body)
        except ValueError:
            raise _Garbled("an answer that is not JSON") from None
        if not isinstance(msg, dict):
            raise _Garbled("an answer that is not a JSON object")
        return msg

    def exchange(self, header: dict, what: str = "", shape=None, work: int = 0):
        """(reply, array): send a request, wait for its reply; with ``shape``, the
        float32 array of that shape (listed and checked before it was asked for)
        that follows the reply, else None. ``work``: bytes the worker decompresses."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * 4 if shape is not None else 0
        deadline = time.monotonic() + _budget(nbytes + work)
        self._send(header, deadline, what)
        reply = self._receive(deadline, what)
        if shape is None or "refused" in reply:
            return reply, None
        if reply.get("shape") != list(shape) or reply.get("payload") != nbytes:
            raise _Garbled(f"an array of shape {reply.get('shape')} for one of {list(shape)}")
        out = np.empty(shape, np.float32)
        if nbytes:
            self._read_into(memoryview(out.reshape(-1)).cast("B"), deadline, what)
        return reply, out


class _InProcess:
    """The same requests answered by a session in this process (ISOLATE = False)."""

    def __init__(self):
        self.session = _h5_worker.Session()

    def exchange(self, header: dict, what: str = "", shape=None, work: int = 0):
        reply, a = _h5_worker.answer(self.session, header)
        if shape is not None and a is not None and a.shape != tuple(shape):
            raise _Garbled(f"an array of shape {list(a.shape)} for one of {list(shape)}")
        return reply, a


class _Overrun(Exception):
    pass


class _Died(Exception):
    pass


class _Garbled(Exception):
    pass


_lock = threading.Lock()
_worker: Optional[_Worker] = None


def _after_fork_in_child() -> None:
    """A forked child neither shares the parent's worker nor inherits its lock (held,
    perhaps, by a thread that does not exist in the child): its own of each. Its
    copies of the pipes are closed, so that the parent's worker still sees its
    input end when the parent closes it."""
    global _lock, _worker
    _lock = threading.Lock()
    if _worker is not None:
        for f in (_worker.proc.stdin, _worker.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        _worker = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _get_worker() -> _Worker:
    global _worker
    if _worker is not None and _worker.pid != os.getpid():
        _worker = None  # a forked child's copy: the worker belongs to the parent
    if _worker is None or _worker.proc.poll() is not None:
        _worker = _Worker()
    return _worker


def _drop_worker() -> None:
    global _worker
    if _worker is not None:
        _worker.kill()
        _worker = None


def shutdown() -> None:
    """Stop the worker (at exit; a later read starts another)."""
    global _worker
    # at exit, a thread may be stuck mid-request holding the lock: do not wait for it
    if not _lock.acquire(timeout=5):
        return
    try:
        if _worker is not None and _worker.pid == os.getpid():
            _worker.close()
        _worker = None
    finally:
        _lock.release()


atexit.register(shutdown)


class Remote:
    """A dataset of the open file: its shape and dtype kind; ``read()`` asks for it."""

    def __init__(self, session: "H5File", i: int, j: int, shape, kind: str):
        self._session, self._ij = session, (i, j)
        self.shape, self.kind = tuple(shape), kind

    def read(self, what: str = "a dataset") -> np.ndarray:
        """float32 in C order; ``what`` names the dataset in messages."""
        return self._session._read(self._ij, self.shape, what)


class H5File:
    """``with H5File(path[, member, member_size]) as f: f.kind() / f.layers(kind)``: the worker's
    session for one file, its failures as :class:`WeightsError` naming ``path``.

    ``member``: the HDF5 file is this member of the zip ``path`` (a ``.keras``
    file's model.weights.h5) of at most ``member_size`` bytes, decompressed by the
    worker within its memory limit; without a worker (``ISOLATE = False``, no
    POSIX pipes) here, after the same bound is checked."""

    def __init__(self, path: str, member: Optional[str] = None, member_size: int = 0):
        self.path = path
        self.member, self.member_size = member, member_size
        isolate = ISOLATE and sys.executable and os.name == "posix"  # select() on pipes
        self._local = None if isolate else _InProcess()

    def __enter__(self):
        if self._local is None:
            _lock.acquire()
        return self

    def __exit__(self, *exc):
        try:
            if self._local is not None or _worker is not None:
                self._exchange({"op": "close"}, what="closing it")
        except WeightsError:
            pass  # the worker was stopped already; the file was read or refused
        finally:
            if self._local is None:
                _lock.release()

    def _exchange(self, header: dict, what: str = "", shape=None, refused=("", ""),
                  work: int = 0):
        """The reply to one request (and the array of ``shape`` it brings); a
        refusal's message goes between the two strings of ``refused``, any failure
        of the worker stops it. Both as a WeightsError naming the file. ``work``:
        the bytes the request makes the worker decompress (its deadline grows)."""
        w = None
        try:
            w = self._local or _get_worker()
            reply, a = w.exchange(header, what, shape, work)
        except _Overrun as e:
            _drop_worker()
            raise WeightsError(
                f"{self.path}: libhdf5 did not finish {e} in time; a damaged HDF5 file can "
                f"make it loop for ever, so vggtl stopped it (corrupt file?)") from None
        except _Died as e:
            code = None
            if getattr(w, "proc", None) is not None:
                # its pipes close before the kernel reports how it ended: wait a moment
                try:
                    code = w.proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    pass
            _drop_worker()
            how = (f"was killed by {signal.Signals(-code).name}" if code and code < 0 and
                   -code in signal.valid_signals() else "stopped")
            raise WeightsError(f"{self.path}: libhdf5 {how} while {e} (corrupt file?)") from None
        except _Garbled as e:
            if self._local is None:
                _drop_worker()
            raise WeightsError(f"{self.path}: the HDF5 reader process sent {e}") from None
        except BaseException:  # Ctrl-C mid-request: the answer would be read as the next's
            if self._local is None:
                _drop_worker()
            raise
        if "refused" in reply:
            raise WeightsError(f"{self.path}: {refused[0]}{reply['refused']}{refused[1]}")
        return reply, a

    def kind(self) -> str:
        reply, _ = self._exchange({"op": "kind", "path": self.path}, what="reading its layout")
        return str(reply.get("kind"))

    def layers(self, kind: str) -> list:
        """[(layer name, [Remote datasets])], in the file's order."""
        req = {"op": "open", "path": self.path, "kind": kind}
        if self.member is not None:
            req["member"] = self.member
            if self._local is not None and self.member_size > \
                    _h5_worker.memory_allowance(os.path.getsize(self.path)):
                raise WeightsError(f"{self.path}: reading {self.member} needs more memory "
                                   f"than the file's size can justify (corrupt?)")
        reply, _ = self._exchange(req, what="listing its layers", work=self.member_size)
        return self._check_listing(reply.get("layers"))

    def _check_listing(self, listing) -> list:
        bad = WeightsError(f"{self.path}: the HDF5 reader process sent a malformed listing")
        if not isinstance(listing, list):
            raise bad
        out = []
        for i, item in enumerate(listing):
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], list)):
                raise bad
            ds = []
            for j, d in enumerate(item[1]):
                if not (isinstance(d, list) and len(d) == 2 and isinstance(d[0], list)
                        and all(type(x) is int and x >= 0 for x in d[0])
                        and isinstance(d[1], str)):
                    raise bad
                ds.append(Remote(self, i, j, d[0], d[1]))
            out.append((item[0], ds))
        return out

    def _read(self, ij, shape, what: str) -> np.ndarray:
        i, j = ij
        _, a = self._exchange({"op": "read", "i": i, "j": j}, what=f"reading {what}",
                              shape=shape, refused=(what + " cannot be read (", ")"))
        return a
