"""The house style is checked like any other behaviour: ruff and mypy clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_lint_and_format() -> None:
    lint = run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy() -> None:
    pytest.importorskip("mypy")
    res = run(sys.executable, "-m", "mypy")
    assert res.returncode == 0, res.stdout + res.stderr


def test_datapath_never_imports_control() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "datapath").rglob("*.py")
        if any(line.lstrip().startswith(("import control", "from control")) for line in p.read_text().splitlines())
    ]
    assert not offenders


def test_daemon_side_never_imports_the_lab() -> None:
    """The lab (control/lab/) is test and bench infrastructure; only the `ovl-dp lab` command in cli.py loads it."""
    imports_lab = ("import control.lab", "from control.lab", "from control import lab")
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in (ROOT / "control").glob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if line.lstrip().startswith(imports_lab) and line.strip() != "from control.lab import demo as lab"
    ]
    assert not offenders
