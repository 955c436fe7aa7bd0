"""The unit and differential tests once more, against the C module built with ASan and UBSan.

The tree is copied into a temporary directory (the checkout's own datapath/_ovl_fast*.so is
never touched), the module is built there with ``OVL_SANITIZE=1 python3 csrc/build.py``, and
``python3 -m pytest -q tests/unit tests/diff`` runs there in a subprocess with libasan preloaded
(the interpreter itself is not instrumented) and Python's allocator off (PYTHONMALLOC=malloc),
so that a read past a bytes object handed to C is seen too. Every sanitizer report is written
to a log directory as well as to stderr, so that one from a subprocess a test starts is not lost.
The test fails on a non-zero exit or any report, and shows it.

The style checks (tests/unit/test_style.py: ruff, mypy) are left out: they run no C and the
normal run has them; the longest property tests run a quarter of their examples (HYPOTHESIS_SCALE).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COPY = ("csrc", "datapath", "control", "bench", "tests", "pyproject.toml", "setup.py")
IGNORE = shutil.ignore_patterns(
    "__pycache__", "*.so", "*.o", "_ovl_fast.c", "build", ".hypothesis", ".pytest_cache", "results", "corpus"
)
REPORTS = ("runtime error:", "AddressSanitizer", "UndefinedBehaviorSanitizer", "LeakSanitizer")
TIMEOUT = 1800
# The longest property tests (tests.configs.examples) run with a quarter of their examples: the
# paths they take are the same, ASan makes each example about four times as slow, and the fuzzers
# (tests/fuzz) do the long random search.
HYPOTHESIS_SCALE = "0.25"


def gcc_lib(name: str) -> str | None:
    """The path of one of gcc's runtime libraries, or None."""
    gcc = shutil.which("gcc")
    if gcc is None:
        return None
    path = subprocess.run([gcc, f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return os.path.realpath(path) if os.path.isabs(path) and os.path.exists(path) else None


def preload() -> str | None:
    """LD_PRELOAD for the run: libasan first; libstdc++ too when there is one, or ASan cannot intercept
    the C++ exceptions of an extension loaded later (matplotlib's ft2font: "real___cxa_throw != 0")."""
    asan = gcc_lib("libasan.so")
    if asan is None:
        return None
    cxx = gcc_lib("libstdc++.so.6")
    return f"{asan}:{cxx}" if cxx else asan


def copy_tree(dest: Path) -> Path:
    """What the tests need of the checkout, without built modules or caches."""
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=IGNORE)
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def sanitizer_env(asan: str, logs: Path) -> dict[str, str]:
    """The environment of the run: asan is LD_PRELOAD, reports also go to files in logs."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "OVL_SANITIZE"):
        env.pop(var, None)
    env.update(
        LD_PRELOAD=asan,
        ASAN_OPTIONS=f"detect_leaks=0:abort_on_error=1:log_path={logs}/asan",
        UBSAN_OPTIONS=f"print_stacktrace=1:halt_on_error=1:log_path={logs}/ubsan",
        PYTHONMALLOC="malloc",
        PYTHONDONTWRITEBYTECODE="1",
        OVL_HYPOTHESIS_SCALE=HYPOTHESIS_SCALE,
    )
    return env


def reports(text: str, logs: Path) -> list[str]:
    """Sanitizer reports: lines of the output, and the log files' contents."""
    found = [line for line in text.splitlines() if any(r in line for r in REPORTS)]
    found += [f"{p.name}:\n{p.read_text(errors='replace')}" for p in sorted(logs.iterdir())]
    return found


def test_unit_and_diff_under_asan_ubsan(tmp_path: Path) -> None:
    asan = preload()
    if asan is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gcc's libasan.so not found: CI needs it for the sanitizer run (.ci/install installs gcc)")
        pytest.skip("gcc's libasan.so not found")
    tree = copy_tree(tmp_path / "tree")
    logs = tmp_path / "logs"
    logs.mkdir()
    t0 = time.monotonic()
    build = subprocess.run(
        [sys.executable, "csrc/build.py"],
        cwd=tree,
        env={**os.environ, "OVL_SANITIZE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    t_build = time.monotonic() - t0
    env = sanitizer_env(asan, logs)
    # The module the tests will import is the sanitized one of the copy, not the checkout's.
    probe = subprocess.run(
        [sys.executable, "-c", "import datapath._ovl_fast as m; print(m.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    module = Path(probe.stdout.strip())
    assert module.parent == tree / "datapath", module
    needed = subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True).stdout
    assert "libasan" in needed and "libubsan" in needed, needed
    t1 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit", "tests/diff"]
    cmd += ["--deselect", "tests/unit/test_style.py::test_ruff_lint_and_format"]
    cmd += ["--deselect", "tests/unit/test_style.py::test_mypy"]
    res = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    t_run = time.monotonic() - t1
    out = res.stdout + res.stderr
    tail = "\n".join(out.splitlines()[-3:])
    print(f"\nsanitized build {t_build:.0f} s, tests/unit + tests/diff under ASan/UBSan {t_run:.0f} s: {tail}")
    found = reports(out, logs)
    assert not found, "sanitizer reports:\n" + "\n".join(found)[-20000:] + "\n" + out[-5000:]
    assert res.returncode == 0, out[-20000:]
