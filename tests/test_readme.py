"""The README's test command is what CI runs, and the README's demo command works."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ci_runs_the_readme_test_command():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    readme = open(os.path.join(ROOT, "README.md")).read()
    cmd = [line for line in ci.splitlines() if "pytest" in line and not line.startswith("#")]
    assert len(cmd) == 1, cmd
    assert cmd[0].strip() in readme


def test_demo_runs():
    r = subprocess.run([sys.executable, "-m", "vggtl", "demo", "--n", "8", "--size", "32"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    m = re.search(r"block5_pool features: \((\d+), 1, 1, 512\)", r.stdout)
    assert m and m.group(1) == "8", r.stdout
