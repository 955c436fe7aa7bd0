"""Open vSwitch, driven through ovs-vsctl: what the daemon needs to attach its TAP to an OVS bridge.

On these kernels OVS runs only in userspace (``datapath_type=netdev``). The
lab's private OVS instances (one per host namespace) are control.lab.ovs.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
VSCTL_TIMEOUT = 10


class OvsError(Exception):
    """An OVS command failed; the message has its output."""


def installed() -> str | None:
    """None if Open vSwitch's tools are installed, else what is missing."""
    missing = [t for t in ("ovs-vsctl", "ovsdb-server", "ovs-vswitchd", "ovsdb-tool") if not _which(t)]
    if missing or not SCHEMA.exists():
        what = ", ".join(missing) or str(SCHEMA)
        return f"Open vSwitch is not installed (missing {what}): apt-get install openvswitch-switch"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


def vsctl_path() -> str:
    """Where ovs-vsctl is (also when PATH lacks /usr/sbin); OvsError if it is not installed."""
    exe = _which("ovs-vsctl")
    if exe is None:
        raise OvsError("ovs-vsctl is not installed (apt-get install openvswitch-switch)")
    return exe


def run_vsctl(db: str | None, *args: str, timeout: int = VSCTL_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ovs-vsctl against db (None: ovs-vsctl's default, which honours OVS_RUNDIR)."""
    cmd = [vsctl_path(), f"--timeout={timeout}", *([f"--db={db}"] if db else []), *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 5, check=False)
    except subprocess.TimeoutExpired:
        raise OvsError(f"ovs-vsctl {' '.join(args)} did not answer within {timeout + 5}s") from None


def vsctl(db: str | None, *args: str, timeout: int = VSCTL_TIMEOUT) -> str:
    """run_vsctl, returning stdout; OvsError with ovs-vsctl's message if it fails."""
    res = run_vsctl(db, *args, timeout=timeout)
    if res.returncode != 0:
        raise OvsError(res.stderr.strip() or f"ovs-vsctl {' '.join(args)} failed ({res.returncode})")
    return res.stdout


def userspace_tso(db: str | None) -> bool:
    """Whether the database asks ovs-vswitchd for userspace TSO (``other_config:userspace-tso-enable=true``).

    With it (OVS 2.13 and later; ovs-vswitchd reads it at start) the userspace
    datapath reads and writes its Linux ports with virtio headers: a TCP super-frame
    ovl-dp writes to its TAP crosses br-int whole and reaches a container's veth as
    one GSO packet. Without it OVS would drop such a frame as too big. False when
    the key is missing or the database cannot be read.
    """
    try:
        out = vsctl(db, "--if-exists", "get", "Open_vSwitch", ".", "other_config:userspace-tso-enable", timeout=3)
    except OvsError:
        return False
    return out.strip().strip('"').lower() == "true"
