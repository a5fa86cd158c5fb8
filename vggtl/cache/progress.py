"""Progress of an extraction: a tqdm bar with images/s, or plain lines in a
notebook without ipywidgets."""
from __future__ import annotations

import sys
import time


def notebook_without_widgets() -> bool:
    """True in a Jupyter kernel without ipywidgets: there tqdm falls back to a text
    bar whose every redraw is an output of its own, kept in the saved notebook."""
    ip = sys.modules.get("IPython")
    if ip is None:
        return False
    try:
        shell = ip.get_ipython()
        if shell is None or "IPKernelApp" not in shell.config:
            return False
    except Exception:  # an IPython without get_ipython, a stub: not a kernel we know
        return False
    import importlib.util
    try:
        return importlib.util.find_spec("ipywidgets") is None
    except (ImportError, ValueError):  # a module set to None, a broken install
        return True


class TextProgress:
    """Progress as a few plain lines on stdout: one when the stage ends, and one
    every ``every`` seconds while it runs (a notebook keeps every line)."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "img",
                 every: float = 30.0):
        self.total, self.done, self.desc, self.unit = total, initial, desc, unit
        self.start = self.last = time.monotonic()
        self.initial, self.every = initial, every

    def _line(self, now: float) -> str:
        t = now - self.start
        rate = (self.done - self.initial) / t if t > 0 else 0.0
        return (f"{self.desc + ': ' if self.desc else ''}{self.done}/{self.total} {self.unit} "
                f"in {t:.1f} s ({rate:.1f} {self.unit}/s)")

    def update(self, k: int) -> None:
        self.done += k
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            print(self._line(now), flush=True)

    def close(self) -> None:
        print(self._line(time.monotonic()), flush=True)


class Progress:
    """tqdm with images/s when asked and installed (plain lines in a notebook
    without ipywidgets); else silent."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.bar = None
        if enabled:
            if notebook_without_widgets():
                self.bar = TextProgress(total, initial, desc)
                return
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, initial=initial, unit="img", desc=desc,
                                dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, k: int) -> None:
        if self.bar is not None:
            self.bar.update(k)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
