"""csrc/loop.c under ThreadSanitizer: tests/sanitize/tsan_loop.c, the C units linked into a program.

Python cannot run with libtsan preloaded here (it faults at start), so the race check
is a C program: a loop thread on loopback sockets under a flood, the main thread
pausing it and changing the context (FDB, remotes, counters), then stopping it.
The test fails on a non-zero exit or any ThreadSanitizer report.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_loop_and_its_pauses_have_no_data_race(tmp_path: Path) -> None:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc")
    exe = tmp_path / "tsan_loop"
    units = sorted(str(p) for p in (ROOT / "csrc").glob("*.c"))
    flags = ["-O1", "-g", "-fsanitize=thread", "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'csrc'}"]
    build = subprocess.run(
        [gcc, *flags, "-o", str(exe), str(ROOT / "tests/sanitize/tsan_loop.c"), *units, "-lpthread"],
        capture_output=True,
        text=True,
    )
    if build.returncode != 0 and "tsan" in build.stderr.lower():
        pytest.skip(f"no ThreadSanitizer: {build.stderr.strip()[:200]}")
    assert build.returncode == 0, build.stderr
    res = subprocess.run(
        [str(exe)], capture_output=True, text=True, timeout=600, env={"TSAN_OPTIONS": "halt_on_error=1"}
    )
    print(res.stdout.strip())
    assert "ThreadSanitizer" not in res.stderr, res.stderr
    assert res.returncode == 0 and res.stdout.startswith("ok"), (res.returncode, res.stdout, res.stderr)
