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


def test_demo_runs_the_tutorial_flow():
    r = subprocess.run([sys.executable, "-m", "vggtl", "demo", "--n", "40", "--size", "32",
                        "--epochs", "2"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    try:  # the embedded default: scikit-learn's handwritten digits, as tutorial pickles
        import sklearn  # noqa: F401
        assert "handwritten digits" in r.stdout.splitlines()[0], r.stdout
    except ImportError:
        assert "discs and squares" in r.stdout.splitlines()[0], r.stdout
    assert re.search(r"Epoch 2/2 - .* - loss: \d\.\d+ - accuracy: ", r.stdout), r.stdout
    assert re.search(r"weighted avg +\d\.\d\d", r.stdout), r.stdout  # the classification report
    assert "saved and reloaded: predictions identical: True" in r.stdout
