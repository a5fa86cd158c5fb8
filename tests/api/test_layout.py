"""The test suite's layout holds: every test file sits in its level's folder
(kernel/, seam/, api/, oracle/; ARCHITECTURE.md, "Tests"), no test file imports
another (what they share is in tests/support/), and every tests/ path the README,
ARCHITECTURE.md, CI, the fuzzers and the code's comments name exists."""
import ast
import os
import re

from support import REPO

TESTS = os.path.join(REPO, "tests")
LEVELS = ("kernel", "seam", "api", "oracle")


def _python_files(top):
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(folder, f)


def test_every_test_file_sits_in_a_level_folder_under_a_unique_name():
    found = [os.path.relpath(p, TESTS) for p in _python_files(TESTS)
             if os.path.basename(p).startswith("test_")]
    assert len(found) > 30, found
    misplaced = [p for p in found if os.path.dirname(p) not in LEVELS]
    assert not misplaced, f"test files outside {LEVELS}: {misplaced}"
    names = [os.path.basename(p) for p in found]
    assert len(set(names)) == len(names), sorted(n for n in names if names.count(n) > 1)


def test_no_test_file_imports_another():
    bad = []
    for path in _python_files(TESTS):
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            bad += [(os.path.relpath(path, TESTS), m) for m in mods
                    if m.split(".")[-1].startswith("test_") or m == "conftest"]
    assert not bad, bad


def test_every_tests_path_named_in_the_repository_exists():
    files = [os.path.join(REPO, f) for f in ("README.md", "ARCHITECTURE.md", "pyproject.toml")]
    for folder in (".ci", "fuzz", "csrc", "vggtl", "benchmarks"):
        for sub, _, names in os.walk(os.path.join(REPO, folder)):
            files += [os.path.join(sub, n) for n in names
                      if n.endswith((".md", ".py", ".c", ".h")) or folder == ".ci"]
    named = set()
    for path in files:
        text = open(path, encoding="utf-8", errors="replace").read()
        for m in re.finditer(r"\btests/[\w./<>-]*", text):
            p = m.group(0).split("<")[0].split("::")[0].rstrip(".")
            named.add((os.path.relpath(path, REPO), p))
        if path.endswith("README.md"):  # the fault table's last column, relative to tests/
            for row in text.splitlines():
                if row.startswith("|"):
                    named.update((os.path.relpath(path, REPO), "tests/" + t)
                                 for t in re.findall(r"`((?:[a-z]+/)?test_\w+\.py)`", row))
    assert len(named) > 20, named
    missing = sorted((src, p) for src, p in named if not os.path.exists(os.path.join(REPO, p)))
    assert not missing, missing
