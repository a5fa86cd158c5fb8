"""The README's test command is what CI runs, and the README's demo command works."""
import os
import re
import subprocess
import sys

from support import REPO as ROOT


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


def test_no_install_command_names_vggtl_on_pypi():
    """vggtl is not on PyPI: `pip install vggtl[...]` would fetch someone else's package.
    Messages, the README and the notebook say `pip install <package>` or
    `pip install -e ".[extra]"` from the checkout."""
    bad = re.compile(r"""pip install\s+['"]?vggtl\b""")
    files = [os.path.join(ROOT, "README.md"),
             os.path.join(ROOT, "notebooks", "transfer_learning.ipynb")]
    files += [os.path.join(ROOT, "vggtl", f) for f in os.listdir(os.path.join(ROOT, "vggtl"))
              if f.endswith(".py")]
    found = [(f, m.group(0)) for f in files for m in bad.finditer(open(f).read())]
    assert not found, found


def test_h5py_is_a_dependency():
    """The ImageNet weights are a Keras .h5: without h5py weights='imagenet' cannot work."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        tomllib = __import__("pytest").importorskip("tomli")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    assert any(re.match(r"h5py\b", d) for d in deps), deps
