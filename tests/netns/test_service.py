"""ovl-dp run as a service: remotes and the FDB changed at run time, a configuration file reloaded.

Three lab hosts with Linux bridges. Host 1 runs from a TOML file and starts with
host 2 as its only remote; host 3 joins and leaves while traffic flows to host 2.
The control commands are the real CLI (`ovl-dp remote ...`, `fdb ...`, `reload`)
run inside host 1's namespace, and an unprivileged client is refused.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from control.lab.hosts import Lab, container_mtu
from control.lab.shell import sh
from control.procs import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

STATIC_MAC = "02:00:00:00:99:01"


def cli(lab: Lab, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ovl-dp ARGS` in host i's namespace."""
    return sh("ip", "netns", "exec", lab.host(i), sys.executable, "-m", "control.cli", *args, check=check)


def remotes(lab: Lab, i: int) -> dict[str, dict[str, Any]]:
    rows = json.loads(cli(lab, i, "remote", "list", "--json").stdout)
    return {r["remote"]: r for r in rows}


def write_config(path: Path, remote_ips: list[str], static: tuple[str, ...] = (), mode: str = "vxlan") -> None:
    lines = [f"remotes = {json.dumps(remote_ips)}", "", "[tunnel]", f'mode = "{mode}"', "", "[bridge]",
             'type = "linux"', "", "[fdb]", "ageing = 300", f"static = {json.dumps(list(static))}"]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def test_remotes_added_and_removed_under_traffic_and_a_config_file_reloaded() -> None:
    with Lab(3) as lab:
        lab.build(container_mtu("vxlan"))
        conf = lab.workdir / "h1.toml"
        write_config(conf, [lab.underlay_ip(2)])
        lab.start(1, "--config", str(conf))
        for i in (2, 3):
            others = [a for j in (1, 2, 3) if j != i for a in ("--remote", lab.underlay_ip(j))]
            lab.start(i, "--mode", "vxlan", *others)
        lab.ping(1, 2, count=3)
        assert set(remotes(lab, 1)) == {lab.underlay_ip(2)}
        assert remotes(lab, 1)[lab.underlay_ip(2)]["last_rx_age"] is not None

        # Traffic to host 2 while host 3 joins (ovl-dp remote add) and leaves (the file reloaded without it).
        baseline = lab.iperf3(1, 2, 2, "-b", "200M")
        results: dict[str, Any] = {}

        def traffic() -> None:
            results["ping"] = lab.ping(1, 2, count=200, interval=0.01, check=False)
            results["iperf"] = lab.iperf3(1, 2, 3, "-b", "200M")

        def gap() -> int:
            """Packets host 1 sent to host 2 that host 2 has not received (yet)."""
            sent_now = remotes(lab, 1)[lab.underlay_ip(2)]["tx_packets"]
            return int(sent_now) - int(remotes(lab, 2)[lab.underlay_ip(1)]["rx_packets"])

        settled = wait_until("the baseline's packets to settle", lambda: (g := gap()) == gap() and (g,), timeout=10)
        lost_before = settled[0]  # what the underlay dropped under the baseline's load, if anything
        t = threading.Thread(target=traffic)
        before = remotes(lab, 1)[lab.underlay_ip(2)]
        t.start()
        try:
            cli(lab, 1, "remote", "add", lab.underlay_ip(3))
            lab.ping(1, 3, count=3)  # host 3 reachable through host 1 now
            assert set(remotes(lab, 1)) == {lab.underlay_ip(2), lab.underlay_ip(3)}
            fdb = json.loads(cli(lab, 1, "fdb", "--json").stdout)
            assert any(r["remote"] == lab.underlay_ip(3) for r in fdb)
            out = cli(lab, 1, "reload").stdout  # the file still names host 2 only
            assert f"remote {lab.underlay_ip(3)} removed" in out, out
        finally:
            t.join(60)
        retrans = [r.get("end", {}).get("sum_sent", {}).get("retransmits", -1) for r in (baseline, results["iperf"])]
        print(f"iperf3 retransmits: {retrans[0]} without changes, {retrans[1]} while a remote joined and left")
        assert 0 <= retrans[1] <= max(100, 5 * retrans[0]), retrans  # no retransmission storm
        assert results["ping"]["loss"] == 0, results
        assert results["iperf"].get("end", {}).get("sum_received", {}).get("bytes", 0) > 0, results["iperf"]
        fdb = json.loads(cli(lab, 1, "fdb", "--json").stdout)
        assert not any(r["remote"] == lab.underlay_ip(3) for r in fdb)  # purged with its remote
        assert set(remotes(lab, 1)) == {lab.underlay_ip(2)}
        # No frame to the untouched remote was lost: what host 1 sent, host 2 received.
        after = remotes(lab, 1)[lab.underlay_ip(2)]
        sent = after["tx_packets"] - before["tx_packets"]
        got = remotes(lab, 2)[lab.underlay_ip(1)]
        assert sent > 0
        snap1 = json.loads(cli(lab, 1, "show", "--json").stdout)
        snap2 = json.loads(cli(lab, 2, "show", "--json").stdout)
        assert snap1["drops"]["tx_error"] == 0 and snap2["drops"]["rx_truncated"] == 0
        # (background chatter may be in flight while the two are read: read both until nothing is missing
        # beyond what the baseline lost)
        wait_until(
            "host 2 to have received every packet host 1 sent it during the change",
            lambda: gap() == lost_before,
            timeout=10,
            interval=0.2,
            detail=lambda: f"gap {gap()}, {lost_before} lost before; {got}, {after}",
        )

        # Reload: host 3 back in the file with a static entry behind it -> applied.
        write_config(conf, [lab.underlay_ip(2), lab.underlay_ip(3)], (f"{STATIC_MAC}={lab.underlay_ip(3)}",))
        res = cli(lab, 1, "reload").stdout
        assert f"remote {lab.underlay_ip(3)} added" in res, res
        assert set(remotes(lab, 1)) == {lab.underlay_ip(2), lab.underlay_ip(3)}
        fdb = json.loads(cli(lab, 1, "fdb", "--json").stdout)
        assert any(r["mac"] == STATIC_MAC and r["static"] and r["remote"] == lab.underlay_ip(3) for r in fdb), fdb
        # The file's static entries are the running ones: one deleted by hand comes back on reload.
        cli(lab, 1, "fdb", "del", STATIC_MAC)
        assert f"static {STATIC_MAC}@0 -> {lab.underlay_ip(3)} added" in cli(lab, 1, "reload").stdout
        # Checked before anything changes: a new remote without a route, a bad key (named with the file).
        write_config(
            conf, [lab.underlay_ip(2), lab.underlay_ip(3), "10.99.0.1"], (f"{STATIC_MAC}={lab.underlay_ip(3)}",)
        )
        res = cli(lab, 1, "reload", check=False)
        assert res.returncode == 2 and "no route to remote 10.99.0.1" in res.stderr, res.stderr
        assert set(remotes(lab, 1)) == {lab.underlay_ip(2), lab.underlay_ip(3)}  # host 3 still there
        conf.write_text(conf.read_text().replace("ageing = 300", "ageing = -1"))
        res = cli(lab, 1, "reload", check=False)
        assert res.returncode == 2 and f"fdb.ageing (in {conf})" in res.stderr, res.stderr
        lab.daemons[1].proc.send_signal(signal.SIGHUP)  # the same bad file by SIGHUP: logged, the daemon lives
        wait_until("the failed SIGHUP reload logged", lambda: "reload (SIGHUP) failed" in lab.daemons[1].output())
        assert "Traceback" not in lab.daemons[1].output()
        # SIGHUP with host 3 gone again.
        write_config(conf, [lab.underlay_ip(2)])
        lab.daemons[1].proc.send_signal(signal.SIGHUP)
        wait_until("host 3 removed by SIGHUP", lambda: set(remotes(lab, 1)) == {lab.underlay_ip(2)}, timeout=10)
        assert not any(r["mac"] == STATIC_MAC for r in json.loads(cli(lab, 1, "fdb", "--json").stdout))
        # A change that needs a restart is refused; the daemon keeps forwarding with its old settings.
        write_config(conf, [lab.underlay_ip(2)], mode="gre")
        res = cli(lab, 1, "reload", check=False)
        assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
        assert "tunnel.mode" in res.stderr and "needs a restart" in res.stderr
        lab.ping(1, 2, count=3)
        assert lab.daemons[1].proc.poll() is None


def test_control_commands_refuse_bad_requests_with_one_line() -> None:
    with Lab(2) as lab:
        lab.build(container_mtu("gre"))
        lab.start_mesh("gre")
        peer = lab.underlay_ip(2)
        for args, needle in [
            (("remote", "add", lab.underlay_ip(1)), "is an address of this host"),
            (("remote", "add", peer), "is there already"),
            (("remote", "add", "300.1.1.1"), "is not an IP address"),
            (("remote", "del", "192.0.2.77"), "192.0.2.77"),
            (("fdb", "add", "zz", peer), "bad MAC"),
            (("fdb", "add", STATIC_MAC, "192.0.2.77"), "192.0.2.77"),
            (("fdb", "del", STATIC_MAC), "no FDB entry"),
            (("reload",), "not started with --config"),
        ]:
            res = cli(lab, 1, *args, check=False)
            assert res.returncode == 2, (args, res.stdout, res.stderr)
            assert res.stderr.count("\n") == 1 and res.stderr.startswith("ovl-dp: error:") and needle in res.stderr, (
                args,
                res.stderr,
            )
        # Good ones.
        assert "added" in cli(lab, 1, "fdb", "add", f"{STATIC_MAC}@20", peer).stdout
        row = [r for r in json.loads(cli(lab, 1, "fdb", "--json").stdout) if r["mac"] == STATIC_MAC]
        assert row and row[0]["vlan"] == 20 and row[0]["static"]
        assert "removed" in cli(lab, 1, "fdb", "del", f"{STATIC_MAC}@20").stdout
        lab.ping(1, 2, count=2)
        before = json.loads(cli(lab, 1, "fdb", "--json").stdout)
        assert before and all(r["remote"] == peer for r in before)
        out = cli(lab, 1, "fdb", "flush", "--remote", peer).stdout
        assert f"{len(before)} FDB entries flushed" in out or "FDB entries flushed" in out, out
        # Whatever is there now was learned again after the flush (the containers keep talking).
        assert all(r["age"] < 2.0 for r in json.loads(cli(lab, 1, "fdb", "--json").stdout))
        # An unprivileged client (uid 65534, the system's Python: nothing of the checkout is read) gets nothing.
        client = (
            "import json, socket; s = socket.socket(socket.AF_UNIX); s.connect('\\0ovl-dp/ovl-gre'); "
            's.sendall(b\'{"cmd": "show"}\\n\'); print(s.makefile().readline())'
        )
        res = sh("ip", "netns", "exec", lab.host(1), "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                 "--inh-caps=-all", "/usr/bin/python3", "-c", client)  # fmt: skip
        answer = json.loads(res.stdout)
        assert answer == {"ok": False, "error": "permission denied: the control socket is for root or CAP_NET_ADMIN"}
        assert lab.daemons[1].proc.poll() is None
