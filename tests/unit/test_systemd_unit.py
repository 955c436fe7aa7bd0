"""control/systemd/ovl-dp@.service: what it promises, shipped as package data, and `systemd-analyze verify` clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "control" / "systemd" / "ovl-dp@.service"


def settings() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            assert key not in out, f"{key} set twice"
            out[key] = value
    return out


def test_the_unit_says_what_the_issue_asks() -> None:
    s = settings()
    assert s["Type"] == "notify"
    assert s["ExecStart"] == "ovl-dp run --config /etc/ovl-dp/%i.toml"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["Restart"] == "on-failure"
    assert s["WatchdogSec"].endswith("s") and int(s["WatchdogSec"][:-1]) > 0
    assert s["CapabilityBoundingSet"].split() == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert s["AmbientCapabilities"].split() == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    assert s["NoNewPrivileges"] == "yes"
    assert s["DevicePolicy"] == "closed" and s["DeviceAllow"] == "/dev/net/tun rw"
    assert "PrivateDevices" not in s  # it would hide /dev/net/tun
    assert s["WantedBy"] == "multi-user.target"


def test_shipped_as_package_data() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "systemd/*.service" in data["control"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists in systemd's own search path; where ovl-dp is installed
    # elsewhere (a virtualenv, pyenv) the copy names this interpreter instead, and checks everything else.
    text = UNIT.read_text()
    if not any(Path(d, "ovl-dp").exists() for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin")):
        text = text.replace("ExecStart=ovl-dp ", f"ExecStart={sys.executable} -m control.cli ")
    unit = tmp_path / "ovl-dp@br-int.service"
    unit.write_text(text)
    res = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert res.returncode == 0 and not res.stderr.strip(), res.stdout + res.stderr
