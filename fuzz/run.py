"""Run every fuzz target for a bounded time; fail if any breaks its contract.

    python fuzz/run.py                      # CI: 15 s per target, a fresh corpus
    python fuzz/run.py --seconds 600 --corpus fuzz/corpus   # by hand: longer, kept
    python fuzz/run.py --targets pickle,h5 --seconds 60

For each target: its seeds are built (fuzz/seeds.py) into <corpus>/seeds/<target>
when missing, then ``python fuzz/fuzz_<target>.py`` runs with libFuzzer's options
(through atheris; the pure-Python engine of fuzz/_harness.py when atheris is not
installed), new inputs going to <corpus>/<target> and a crashing input to
<corpus>/crashes/<target>/. The summary gives executions and seconds per target.
Exit status 1 when a target crashed, raised outside its contract, hung past the
per-input timeout or went past the memory limit: the input is printed with the
command that reproduces it; add it to tests/api/test_fuzz_regressions.py, then fix vggtl.
"""
from __future__ import annotations

import argparse
import base64
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# target -> the longest input libFuzzer makes (the seeds' sizes set it: HDF5 files
# of the miniature network are 26 to 45 kB)
TARGETS = {"pickle": 4096, "h5": 65536, "pth_zip": 32768, "pth_legacy": 16384,
           "safetensors": 16384, "cache": 16384, "model": 65536}
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")


def run_target(name: str, seconds: int, corpus: str, timeout: int, rss_mb: int):
    """(ok, executions, seconds, output, crash folder)."""
    seeds = os.path.join(corpus, "seeds", name)
    if not os.path.isdir(seeds) or not os.listdir(seeds):
        subprocess.run([sys.executable, os.path.join(HERE, "seeds.py"),
                        os.path.join(corpus, "seeds"), name],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    work = os.path.join(corpus, name)
    crashes = os.path.join(corpus, "crashes", name)
    os.makedirs(work, exist_ok=True)
    os.makedirs(crashes, exist_ok=True)
    cmd = [sys.executable, os.path.join(HERE, f"fuzz_{name}.py"),
           f"-max_total_time={seconds}", f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}",
           f"-max_len={TARGETS[name]}", f"-artifact_prefix={crashes}{os.sep}",
           "-print_final_stats=1", work, seeds]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 300)
    dt = time.monotonic() - t0
    out = p.stdout + p.stderr
    stats = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)  # libFuzzer's
    done = _DONE.findall(out)  # the pure-Python engine's
    runs = int(stats[-1]) if stats else int(done[-1][0]) if done else 0
    return p.returncode == 0, runs, dt, out, crashes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=15, help="per target (default 15)")
    ap.add_argument("--corpus", default=None,
                    help="folder kept between runs (default: a temporary one)")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated, of {', '.join(TARGETS)}")
    ap.add_argument("--timeout", type=int, default=10, help="seconds per input")
    ap.add_argument("--rss-limit-mb", type=int, default=2048)
    args = ap.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; expected some of {list(TARGETS)}")
    tmp = None
    corpus = args.corpus
    if corpus is None:
        tmp = tempfile.TemporaryDirectory(prefix="vggtl-fuzz-corpus-")
        corpus = tmp.name
    corpus = os.path.abspath(corpus)
    failed = []
    print(f"{'target':<12} {'executions':>10} {'seconds':>8}  result")
    for name in names:
        ok, runs, dt, out, crashes = run_target(name, args.seconds, corpus, args.timeout,
                                                args.rss_limit_mb)
        print(f"{name:<12} {runs:>10} {dt:>8.1f}  {'ok' if ok else 'FAILED'}", flush=True)
        if not ok:
            found = sorted(os.listdir(crashes))
            failed.append(name)
            print("\n".join(out.splitlines()[-60:]), file=sys.stderr)
            # a temporary corpus goes when this script ends: print the inputs too
            for f in found:
                path = os.path.join(crashes, f)
                with open(path, "rb") as fh:
                    data = fh.read()
                print(f"{name}: {f} ({len(data)} bytes), base64:\n"
                      f"{base64.encodebytes(data).decode()}", file=sys.stderr)
                print(f"reproduce: python fuzz/fuzz_{name}.py {path}", file=sys.stderr)
    if tmp is not None:
        tmp.cleanup()
    if failed:
        print(f"fuzz: contract broken in {', '.join(failed)}; add each input to "
              f"tests/api/test_fuzz_regressions.py and fix vggtl", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
