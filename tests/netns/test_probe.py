"""`ovl-dp probe` for real, as root: what it finds on this machine, and that it leaves nothing behind.

The probe runs inside run_isolated's namespace, so "the namespace it was started in" is one the test
can inspect completely: it must hold exactly the links it held before (probe creates its throwaway
devices in a private namespace of its own child, never in the caller's).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.isolated import run_isolated

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]

# This development machine (kernel 6.18, no modules): vxlan built in; no gretap, geneve or openvswitch;
# TAP with virtio header and TSO; UDP GSO and GRO; root, so raw sockets.
EXPECTED = {
    "netns.private": "yes",
    "kernel.vxlan": "yes",
    "kernel.gretap": "no",
    "kernel.geneve": "no",
    "kernel.openvswitch": "no",
    "tap.device": "yes",
    "tap.vnet_hdr": "yes",
    "tap.offloads": "yes",
    "udp.gso": "yes",
    "udp.gro": "yes",
    "raw.ip": "yes",
    "raw.gre": "yes",
    "caps.net_admin": "yes",
    "caps.net_raw": "yes",
    "recommend.vxlan": "both",
    "recommend.gre": "ovl-dp",
}


def probe(*prefix: str, json_out: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [*prefix, sys.executable, "-m", "control.cli", "probe", *(["--json"] if json_out else [])]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)


def links() -> list[str]:
    rows = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)
    return sorted(f"{r['ifname']}:{r['ifindex']}" for r in rows)


def named_namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_probe_finds_what_this_machine_has_and_leaves_nothing_behind() -> None:
    def body() -> None:
        before, names_before = links(), named_namespaces()
        res = probe()
        assert res.returncode == 0 and not res.stderr, res.stderr
        rows = {r["check"]: r for r in json.loads(res.stdout)}
        assert all(set(r) == {"check", "result", "detail"} and r["detail"] for r in rows.values())
        got = {check: rows[check]["result"] for check in EXPECTED}
        assert got == EXPECTED, json.dumps(rows, indent=1)
        assert "ovs.installed" in rows and "ovs.datapath_types" in rows
        assert "--udp-gso available" in rows["recommend.vxlan"]["detail"]
        assert "--offload auto works" in rows["recommend.gre"]["detail"]

        # Nothing left: the same links here, no named namespace, the child that held the private one gone.
        assert links() == before
        assert named_namespaces() == names_before
        m = re.match(r"child PID (\d+) ", rows["netns.private"]["detail"])
        assert m, rows["netns.private"]
        assert not os.path.exists(f"/proc/{m.group(1)}/ns/net") or os.readlink(
            f"/proc/{m.group(1)}/ns/net"
        ) == os.readlink("/proc/self/ns/net")

        table = probe(json_out=False)
        assert table.returncode == 0 and not table.stderr
        assert table.stdout.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL"]
        assert re.search(r"^kernel\.vxlan\s+yes\s+created and deleted a vxlan device", table.stdout, re.M)
        assert links() == before

    run_isolated(body)


def test_without_privileges_probe_still_answers_and_says_what_needs_root() -> None:
    def body() -> None:
        before = links()
        res = probe("setpriv", "--bounding-set=-all", "--inh-caps=-all")  # uid 0, no capabilities at all
        assert res.returncode == 0 and not res.stderr, res.stderr
        rows = {r["check"]: r for r in json.loads(res.stdout)}
        for check in ("netns.private", "kernel.vxlan", "kernel.gretap", "tap.offloads", "kernel.openvswitch"):
            assert "needs root (CAP_SYS_ADMIN for a private namespace)" in rows[check]["detail"], rows[check]
        assert rows["caps.net_admin"]["result"] == "no" and rows["raw.ip"]["result"] == "no"
        assert "CAP_NET_RAW" in rows["raw.ip"]["detail"]
        assert rows["udp.gso"]["result"] == "yes"  # an unprivileged socket option
        assert rows["recommend.vxlan"]["result"] == "unknown"
        assert links() == before

    run_isolated(body)
