"""A bounded coverage-guided fuzzing run of every target (tests/fuzz/fuzzers.py) in the test suite.

Each target is built with clang (libFuzzer, ASan, UBSan) into a temporary directory, replays the
committed corpus (seeds and the crash inputs kept as regressions) and fuzzes for OVL_FUZZ_SECONDS
(default 20) seconds, new inputs going to the temporary directory only. A crash, a sanitizer
report or a failed harness invariant fails the test with libFuzzer's report; the final stats are
printed either way (pytest -s shows them). Without clang the tests are skipped, but in CI (CI=true)
a missing or broken clang is a failure.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fuzz import fuzzers

SECONDS = int(os.environ.get("OVL_FUZZ_SECONDS", "20"))
IN_CI = os.environ.get("CI") == "true"
PROBE = """#include <stddef.h>
#include <stdint.h>
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }
"""


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why}: CI needs it for the fuzzers (.ci/install installs it)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the binaries, once clang is known to link a libFuzzer binary with ASan and UBSan."""
    cc = fuzzers.clang()
    if cc is None:
        _unavailable("clang not found")
    assert cc is not None
    d = tmp_path_factory.mktemp("fuzz")
    probe = d / "probe.c"
    probe.write_text(PROBE)
    res = subprocess.run([cc, *fuzzers.SANITIZE, str(probe), "-o", str(d / "probe")], capture_output=True, text=True)
    if res.returncode != 0:
        _unavailable(f"clang cannot link -fsanitize=fuzzer,address,undefined: {res.stderr.strip()[-500:]}")
    return d


def test_every_target_has_seeds() -> None:
    for target in fuzzers.TARGETS:
        seeds = list((fuzzers.CORPUS / target).iterdir())
        assert seeds, f"no seeds for {target}"


@pytest.mark.parametrize("target", list(fuzzers.TARGETS))
def test_fuzz_target(target: str, build_dir: Path, tmp_path: Path) -> None:
    binary = fuzzers.build(target, build_dir)
    res = fuzzers.run(binary, target, tmp_path, SECONDS)
    print(f"\nfuzz {target} ({SECONDS} s): {res.summary()}")
    assert res.stats, f"{target}: no final stats; libFuzzer said:\n{res.output[-4000:]}"
    assert res.ok, (
        f"{target} found something (exit {res.returncode}):\n" + "\n".join(res.reports) + "\n" + (res.output[-6000:])
    )
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "leak-", "timeout-", "oom-"))]
    assert not crashes, crashes
