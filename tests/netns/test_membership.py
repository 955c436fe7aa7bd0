"""Membership on etcd end to end (issue 12): real daemons in a lab, a real etcd on the lab's underlay.

The lab's hosts h1..hN (192.0.2.I) run `ovl-dp run --etcd ... --net t12` without a single
--remote (unless a test says so); etcd runs in a namespace of its own on the lab's switch
(192.0.2.200, ports 23790.. of that namespace). Leases are short (--lease-ttl 3 --keepalive 1)
so that a crash is seen within seconds. Every wait is "until X, at most a generous bound";
the ordering checks are causal (a SIGTERMed daemon's key is gone once it has exited).
Teardown (also on failure): the daemons first (their leave needs etcd), then etcd by PID,
then the namespaces.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.lab import etcd as lab_etcd
from control.lab.etcd import EtcdServer, etcdctl
from control.lab.hosts import Daemon, Lab, container_mtu
from control.lab.shell import LabError, sh
from control.procs import wait_until

pytestmark = [pytest.mark.netns, pytest.mark.usefixtures("no_leftovers")]

NET = "t12"
PREFIX = f"/ovl-dp/v1/nets/{NET}"
ETCD_IP = "192.0.2.200"
CLIENT_PORT, PEER_PORT = 23790, 23800  # never 2379/2380, even in a namespace of its own
TTL, KEEPALIVE = 3, 1
WAIT = 30.0  # an upper bound for something to happen, never a speed requirement
MEMBER = ("--mode", "vxlan", "--bridge-type", "linux", "--net", NET, "--lease-ttl", str(TTL),
          "--keepalive", str(KEEPALIVE))  # fmt: skip


@pytest.fixture(autouse=True)
def _need_etcd() -> None:
    if not lab_etcd.available():
        pytest.skip("etcd is not installed (apt-get install etcd-server etcd-client)")
    pytest.importorskip("aetcd")


# -- the lab and its etcd --------------------------------------------------------------------------


def etcd_host(lab: Lab, k: int = 0) -> str:
    """The address of etcd server k on the lab's underlay: 192.0.2.200+k (fd00:192:2::200+k over IPv6)."""
    return f"192.0.2.{200 + k}" if lab.families[0] == 4 else f"fd00:192:2::{200 + k}"


def etcd_namespace(lab: Lab, addrs: int = 1) -> str:
    """A namespace on the lab's switch for etcd, ul0 = etcd_host(0..addrs-1); deleted by lab.close()."""
    ns = f"{lab.tag}-et"
    sh("ip", "netns", "add", ns)
    lab.namespaces.append(ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "link", "add", "ul0", "type", "veth", "peer", "name", "pet", "netns", lab.switch)
    sh("ip", "-n", lab.switch, "link", "set", "pet", "master", "br0", "up")
    for k in range(addrs):
        if lab.families[0] == 6:
            sh("ip", "-n", ns, "addr", "add", f"{etcd_host(lab, k)}/64", "dev", "ul0", "nodad")
        else:
            sh("ip", "-n", ns, "addr", "add", f"{etcd_host(lab, k)}/24", "dev", "ul0")
    sh("ip", "-n", ns, "link", "set", "ul0", "up")
    return ns


def no_tracebacks(lab: Lab) -> None:
    """Every daemon's log so far is free of tracebacks (one-line errors only)."""
    for d in lab.daemons.values():
        assert "Traceback" not in d.output(), d.output()


def stop_daemons(lab: Lab) -> None:
    """SIGTERM every daemon still running (before etcd goes: their leave revokes on it)."""
    for d in list(lab.daemons.values()):
        if d.proc.poll() is None:
            with contextlib.suppress(LabError):
                lab.stop(d)


@contextlib.contextmanager
def mesh_lab(hosts: int, cluster: int = 0, underlay: str = "ipv4") -> Iterator[tuple[Lab, list[EtcdServer]]]:
    """A built lab of hosts, with one etcd server (cluster=0) or a cluster of that many, all answering."""
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(Lab(hosts, underlay=underlay))
        lab.build(container_mtu("vxlan", family=lab.families[0]))
        n = max(1, cluster)
        ns = etcd_namespace(lab, n)
        if cluster:
            hosts_ = [etcd_host(lab, k) for k in range(n)]
            spec = ",".join(f"e{k}=http://{hosts_[k]}:{PEER_PORT}" for k in range(n))
            servers = [
                EtcdServer(f"e{k}", hosts_[k], CLIENT_PORT, PEER_PORT, netns=ns, cluster=spec, token=f"{lab.tag}-c")
                for k in range(n)
            ]
        else:
            servers = [EtcdServer("e0", etcd_host(lab), CLIENT_PORT, PEER_PORT, netns=ns)]
        for s in servers:
            stack.callback(s.close)
        for s in servers:
            s.launch()
        for s in servers:
            s.wait_healthy()
        stack.callback(stop_daemons, lab)  # runs first: before etcd stops
        yield lab, servers


def urls(servers: list[EtcdServer]) -> str:
    return ",".join(s.url for s in servers)


def ctl(servers: list[EtcdServer], *args: str) -> str:
    """etcdctl against the servers that run (inside the etcd namespace)."""
    live = [s for s in servers if s.running]
    return etcdctl(urls(live), *args, netns=live[0].netns)


def join(lab: Lab, i: int, servers: list[EtcdServer], *extra: str, wait: bool = True) -> Daemon:
    return lab.start(i, *MEMBER, "--etcd", urls(servers), *extra, wait=wait)


# -- asking the daemons ----------------------------------------------------------------------------


def cli(lab: Lab, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`ovl-dp ARGS` in host i's namespace."""
    return sh("ip", "netns", "exec", lab.host(i), sys.executable, "-m", "control.cli", *args, check=check)


def members(lab: Lab, i: int) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(cli(lab, i, "members", "--json").stdout)
    return report


def remotes(lab: Lab, i: int) -> dict[str, dict[str, Any]]:
    return {r["remote"]: r for r in json.loads(cli(lab, i, "remote", "list", "--json").stdout)}


def others(lab: Lab, i: int, hosts: list[int]) -> set[str]:
    return {lab.underlay_ip(j) for j in hosts if j != i}


def wait_mesh(lab: Lab, hosts: list[int], what: str = "the mesh") -> None:
    """Until every host in hosts has exactly the others as remotes (and as members)."""

    def whole() -> bool:
        for i in hosts:
            if set(remotes(lab, i)) != others(lab, i, hosts):
                return False
            rep = members(lab, i)
            if {m["addr"] for m in rep["members"] if not m["self"]} != others(lab, i, hosts):
                return False
        return True

    def detail() -> str:
        return "\n".join(f"h{i}: {sorted(remotes(lab, i))}\n{lab.daemons[i].output()[-2000:]}" for i in hosts)

    wait_until(f"{what}: hosts {hosts} to have each other as remotes", whole, WAIT, 0.2, detail=detail)


def key(lab: Lab, i: int) -> str:
    return f"{PREFIX}/members/{lab.underlay_ip(i)}"


def get_json(servers: list[EtcdServer], k: str) -> dict[str, Any] | None:
    """The key's kv as etcdctl's JSON gives it (lease in decimal, value base64), None if absent."""
    out = json.loads(ctl(servers, "get", k, "-w", "json"))
    kvs = out.get("kvs") or []
    return kvs[0] if kvs else None


def counters(lab: Lab, i: int) -> dict[str, int]:
    return dict(members(lab, i)["counters"])


class Pinger:
    """A ping from container src to dst in the background, its loss read at the end."""

    def __init__(self, lab: Lab, src: int, dst: int, count: int, interval: float = 0.05) -> None:
        self.result: dict[str, float] = {}
        self._t = threading.Thread(target=lambda: self.result.update(lab.ping(src, dst, count, interval, False)))
        self._t.start()

    def loss(self) -> float:
        self._t.join(120)
        return self.result.get("loss", 100.0)


# -- the tests -------------------------------------------------------------------------------------


def test_join_leave_and_a_killed_member() -> None:
    with mesh_lab(3) as (lab, servers):
        for i in (1, 2, 3):
            join(lab, i, servers)
        wait_mesh(lab, [1, 2, 3])
        for a, b in ((1, 2), (2, 3), (3, 1)):
            assert lab.ping(a, b, count=3)["loss"] == 0
        out = cli(lab, 1, "members").stdout
        print(f"\n$ ovl-dp members (host 1)\n{out}")
        head = out.splitlines()[0]
        assert head.startswith(f"net {NET} on http://{ETCD_IP}:{CLIENT_PORT}") and "connected" in head, out
        assert f"our lease {TTL} s" in head, out
        assert "self" in out and out.count("remote") >= 2, out
        assert (
            f"members:  net {NET} on http://{ETCD_IP}:{CLIENT_PORT}: connected, 2 other member(s)"
            in cli(lab, 1, "show").stdout
        )
        kv = get_json(servers, key(lab, 1))
        assert kv is not None
        value = json.loads(base64.b64decode(kv["value"]))
        assert value["addr"] == lab.underlay_ip(1) and value["netns"] > 0 and value["pid"] > 0
        assert set(value) >= {"addr", "mac", "hostname", "machine_id", "netns", "version", "pid", "joined"}
        assert "membership: net t12 on etcd" in lab.daemons[1].output()

        # Leave: SIGTERM revokes the lease before the daemon exits: the key is gone, peers drop it.
        assert lab.stop(lab.daemons[3]) == 0
        assert get_json(servers, key(lab, 3)) is None
        wait_mesh(lab, [1, 2], "after host 3 left")
        assert lab.ping(1, 2, count=3)["loss"] == 0
        assert counters(lab, 1)["leaves"] >= 1

        # Back, then killed: its key outlives it until the lease's TTL runs out; the others keep pinging.
        join(lab, 3, servers)
        wait_mesh(lab, [1, 2, 3], "host 3 back")
        ping = Pinger(lab, 1, 2, count=200)
        lab.daemons[3].proc.send_signal(signal.SIGKILL)
        lab.daemons[3].proc.wait(10)
        wait_until("host 3's key to expire", lambda: get_json(servers, key(lab, 3)) is None, TTL + WAIT, 0.2)
        wait_mesh(lab, [1, 2], "after host 3 was killed")
        assert ping.loss() == 0, ping.result
        rep = members(lab, 2)
        assert {m["addr"] for m in rep["members"]} == {lab.underlay_ip(1), lab.underlay_ip(2)}
        peer = next(m for m in rep["members"] if m["addr"] == lab.underlay_ip(1))
        assert peer["remote"] and peer["rx_packets"] > 0 and peer["last_rx_age"] is not None, peer
        no_tracebacks(lab)


def test_two_hosts_claiming_one_address() -> None:
    with mesh_lab(3) as (lab, servers):
        join(lab, 1, servers)
        join(lab, 2, servers)
        wait_mesh(lab, [1, 2])
        # Host 3 gets host 1's address on a device of its own (a veth pair inside it: answering no ARP for
        # it on the underlay) and claims it: refused at join, one line naming the holder, exit code 2;
        # host 1 keeps its key.
        h3 = lab.host(3)
        sh("ip", "netns", "exec", h3, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
        sh("ip", "-n", h3, "link", "add", "dup0", "type", "veth", "peer", "name", "dup1")
        sh("ip", "-n", h3, "addr", "add", f"{lab.underlay_ip(1)}/32", "dev", "dup0")
        sh("ip", "-n", h3, "link", "set", "dup0", "up")
        before = get_json(servers, key(lab, 1))
        d = join(lab, 3, servers, "--advertise", lab.underlay_ip(1), wait=False)
        assert d.proc.wait(WAIT) == 2, d.output()
        err = [line for line in d.output().splitlines() if "error" in line.lower()]
        assert any(lab.underlay_ip(1) in line and "machine id" in line.lower() for line in err), d.output()
        assert "Traceback" not in d.output()
        assert get_json(servers, key(lab, 1)) == before  # untouched: same lease, same revision
        wait_mesh(lab, [1, 2], "after the refused claim")
        assert lab.ping(1, 2, count=3)["loss"] == 0
        # Later, under a running daemon: another host's value written over host 2's key. Two hosts must not
        # share an address: host 2's daemon exits (non-zero, one line), as on any fatal problem.
        intruder = {"addr": lab.underlay_ip(2), "mac": "02:00:00:00:66:66", "hostname": "intruder",
                    "machine_id": "0" * 32, "netns": 1, "version": "x", "pid": 1, "joined": 0.0}  # fmt: skip
        ctl(servers, "put", key(lab, 2), json.dumps(intruder))
        d2 = lab.daemons[2]
        assert d2.proc.wait(WAIT) == 2, d2.output()
        fatal = [line for line in d2.output().splitlines() if "was taken by" in line]
        assert fatal and "intruder" in fatal[0] and "0" * 32 in fatal[0], d2.output()
        assert "Traceback" not in d2.output(), d2.output()


def test_net_config_disagreeing_is_refused() -> None:
    with mesh_lab(2) as (lab, servers):
        join(lab, 1, servers)  # creates the net's config from its settings (vxlan vni 0 port 4789)
        cfg = json.loads(ctl(servers, "get", f"{PREFIX}/config", "--print-value-only"))
        assert cfg["mode"] == "vxlan" and cfg["vni"] == 0 and cfg["port"] == 4789, cfg
        d = join(lab, 2, servers, "--vni", "77", wait=False)
        assert d.proc.wait(WAIT) == 2, d.output()
        assert "vni" in d.output() and "77" in d.output() and "Traceback" not in d.output(), d.output()
        assert get_json(servers, key(lab, 2)) is None


def test_etcd_restarted_and_away_under_a_running_mesh() -> None:
    with mesh_lab(3) as (lab, servers):
        (server,) = servers
        for i in (1, 2, 3):
            join(lab, i, servers, "--metrics", "9100")
        wait_mesh(lab, [1, 2, 3])
        leaves = {i: counters(lab, i)["leaves"] for i in (1, 2, 3)}
        ping = Pinger(lab, 1, 2, count=300)
        ping3 = Pinger(lab, 1, 3, count=300)
        server.restart(down=1.0)
        assert ping.loss() == 0 and ping3.loss() == 0, (ping.result, ping3.result)
        wait_mesh(lab, [1, 2, 3], "after etcd restarted")
        assert {i: counters(lab, i)["leaves"] for i in (1, 2, 3)} == leaves  # no member lost, not even briefly
        wait_until("host 1 to be connected again", lambda: members(lab, 1)["state"] == "connected", WAIT, 0.2)
        assert counters(lab, 1)["reconnects"] >= 1

        # Away for longer: every daemon degraded (200, never 503), forwarding with what it knew.
        server.stop()
        wait_until("host 1's /healthz to say degraded", lambda: healthz(lab, 1)[1].startswith("degraded: "),
                   WAIT, 0.2)  # fmt: skip
        code, body = healthz(lab, 1)
        assert code == 200, body
        metrics = scrape(lab, 1)
        assert metric(metrics, "ovl_dp_etcd_connected") == 0
        assert metric(metrics, "ovl_dp_membership_members") == 2
        assert members(lab, 1)["state"] in ("degraded", "connecting")
        assert lab.ping(1, 3, count=5, interval=0.05)["loss"] == 0
        server.start()
        wait_until("host 1's /healthz to be ok again", lambda: healthz(lab, 1) == (200, "ok"), WAIT, 0.2)
        wait_mesh(lab, [1, 2, 3], "after etcd came back")
        assert {i: counters(lab, i)["leaves"] for i in (1, 2, 3)} == leaves
        metrics = scrape(lab, 1)
        assert metric(metrics, "ovl_dp_etcd_connected") == 1
        assert metric(metrics, "ovl_dp_etcd_reconnects_total") >= 2
        assert metric(metrics, "ovl_dp_etcd_last_keepalive_timestamp_seconds") > 0
        no_tracebacks(lab)


def test_three_member_etcd_cluster_with_one_killed() -> None:
    with mesh_lab(3, cluster=3) as (lab, servers):
        join(lab, 1, servers)
        join(lab, 2, servers)
        wait_mesh(lab, [1, 2])
        used = members(lab, 1)["endpoint"]
        victim = next(s for s in servers if s.url == used)
        leaves = {i: counters(lab, i)["leaves"] for i in (1, 2)}
        ping = Pinger(lab, 1, 2, count=200)
        victim.kill()
        # Host 3 joins through the two left (its list names all three; the dead one is skipped).
        join(lab, 3, servers)
        wait_mesh(lab, [1, 2, 3], "with one etcd member killed")
        assert ping.loss() == 0, ping.result
        wait_until("host 1 on another endpoint", lambda: members(lab, 1)["endpoint"] not in (None, used), WAIT, 0.2)
        assert members(lab, 1)["state"] == "connected"
        assert lab.ping(3, 1, count=3)["loss"] == 0
        assert {i: counters(lab, i)["leaves"] for i in (1, 2)} == leaves
        no_tracebacks(lab)


def test_compaction_and_a_lease_revoked_from_outside() -> None:
    with mesh_lab(3) as (lab, servers):
        (server,) = servers
        join(lab, 1, servers)
        join(lab, 2, servers)
        wait_mesh(lab, [1, 2])
        # Revisions move on outside our prefix, then etcd compacts past what the watchers saw.
        for n in range(20):
            ctl(servers, "put", f"/elsewhere/{n}", "x")
        rev = json.loads(ctl(servers, "get", "/elsewhere/0", "-w", "json"))["header"]["revision"]
        ctl(servers, "compact", str(rev))
        join(lab, 3, servers)  # a change after the compaction: seen by both watchers
        wait_mesh(lab, [1, 2, 3], "after compaction")
        # And a restart after another compaction: the watchers resume from a compacted revision.
        for n in range(20):
            ctl(servers, "put", f"/elsewhere/{n}", "y")
        rev = json.loads(ctl(servers, "get", "/elsewhere/0", "-w", "json"))["header"]["revision"]
        ctl(servers, "compact", str(rev))
        relists = counters(lab, 1)["relists"]
        server.restart()
        assert lab.stop(lab.daemons[3]) == 0  # a change the watchers must see after resuming
        wait_mesh(lab, [1, 2], "after compaction and restart")
        wait_until("host 1 to list again", lambda: counters(lab, 1)["relists"] > relists, WAIT, 0.2)

        # Host 2's lease revoked from outside: its key goes (peers drop it), it registers again.
        kv = get_json(servers, key(lab, 2))
        assert kv is not None and kv["lease"]
        regrants = counters(lab, 2)["lease_regrants"]
        ctl(servers, "lease", "revoke", format(int(kv["lease"]), "x"))

        def back() -> bool:
            again = get_json(servers, key(lab, 2))
            return again is not None and again["lease"] != kv["lease"]

        wait_until("host 2 to register again on a new lease", back, WAIT, 0.2)
        wait_mesh(lab, [1, 2], "after the revoke")
        assert counters(lab, 2)["lease_regrants"] > regrants
        assert lab.ping(1, 2, count=3)["loss"] == 0
        no_tracebacks(lab)


def test_static_remotes_coexist_with_members() -> None:
    with mesh_lab(3) as (lab, servers):
        ip2, ip3 = lab.underlay_ip(2), lab.underlay_ip(3)
        conf = lab.workdir / "h1.toml"
        conf.write_text(
            f'remotes = ["{ip2}"]\n\n[tunnel]\nmode = "vxlan"\n\n[bridge]\ntype = "linux"\n\n'
            f'[membership]\netcd = "{urls(servers)}"\nnet = "{NET}"\nlease_ttl = {TTL}\nkeepalive = {KEEPALIVE}\n'
        )
        lab.start(1, "--config", str(conf))
        join(lab, 2, servers)
        join(lab, 3, servers)
        wait_mesh(lab, [1, 2, 3])
        rows = remotes(lab, 1)
        assert rows[ip2]["origin"] == ["etcd", "static"] and rows[ip3]["origin"] == ["etcd"], rows
        rep = {m["addr"]: m for m in members(lab, 1)["members"]}
        assert rep[ip2]["static"] and not rep[ip3]["static"] and rep[ip3]["origins"] == ["etcd"]

        # remote del of an etcd-only member is refused; the member stays.
        res = cli(lab, 1, "remote", "del", ip3, check=False)
        assert res.returncode == 2 and f"is an etcd member of net {NET}; it leaves when its key goes" in res.stderr
        assert ip3 in remotes(lab, 1)
        # remote add of a member makes it static too; remote del then only takes that away.
        assert "now also static" in cli(lab, 1, "remote", "add", ip3).stdout
        assert remotes(lab, 1)[ip3]["origin"] == ["etcd", "static"]
        assert "no longer static; it stays as an etcd member" in cli(lab, 1, "remote", "del", ip3).stdout
        assert remotes(lab, 1)[ip3]["origin"] == ["etcd"]
        # A static entry on etcd behind host 3 applies; one behind a non-member stays pending.
        ctl(servers, "put", f"{PREFIX}/static/0/02:00:00:00:12:03", json.dumps({"remote": ip3}))
        ctl(servers, "put", f"{PREFIX}/static/0/02:00:00:00:12:09", json.dumps({"remote": "192.0.2.9"}))

        def fdb_static() -> dict[str, str]:
            rows = json.loads(cli(lab, 1, "fdb", "--json").stdout)
            return {r["mac"]: r["remote"] for r in rows if r["static"]}

        wait_until("the etcd static entry on host 1", lambda: fdb_static().get("02:00:00:00:12:03") == ip3, WAIT)
        assert "02:00:00:00:12:09" not in fdb_static()
        cli(lab, 1, "remote", "add", "192.0.2.9")  # the pending entry's remote, static: now it applies
        assert fdb_static().get("02:00:00:00:12:09") == "192.0.2.9"
        assert "192.0.2.9 removed" in cli(lab, 1, "remote", "del", "192.0.2.9").stdout
        assert "02:00:00:00:12:09" not in fdb_static()
        # A reload of the file (host 2 no longer in it, host 3 not) never removes a member's remote, and
        # leaves etcd's static entries alone.
        conf.write_text(conf.read_text().replace(f'remotes = ["{ip2}"]', "remotes = []"))
        out = cli(lab, 1, "reload").stdout
        assert "removed" not in out, out
        assert set(remotes(lab, 1)) == {ip2, ip3} and remotes(lab, 1)[ip2]["origin"] == ["etcd"]
        assert fdb_static().get("02:00:00:00:12:03") == ip3
        # membership.* needs a restart: a reload that changes it is refused, nothing changes.
        conf.write_text(conf.read_text().replace(f"lease_ttl = {TTL}", "lease_ttl = 30"))
        res = cli(lab, 1, "reload", check=False)
        assert res.returncode == 2 and "membership.lease_ttl changed, which needs a restart" in res.stderr, res
        conf.write_text(conf.read_text().replace("lease_ttl = 30", f"lease_ttl = {TTL}"))
        conf.write_text(conf.read_text().replace("remotes = []", f'remotes = ["{ip2}"]'))
        cli(lab, 1, "reload")
        assert remotes(lab, 1)[ip2]["origin"] == ["etcd", "static"]
        # Host 2 (static too) leaves etcd: it stays host 1's remote; host 3 leaves: it goes, and its static
        # entry with it, back when it re-joins.
        assert lab.stop(lab.daemons[2]) == 0
        assert lab.stop(lab.daemons[3]) == 0
        wait_until("host 3 gone from host 1", lambda: set(remotes(lab, 1)) == {ip2}, WAIT, 0.2)
        assert remotes(lab, 1)[ip2]["origin"] == ["static"]
        assert "02:00:00:00:12:03" not in fdb_static()
        join(lab, 3, servers)
        wait_until("host 3's static entry again", lambda: fdb_static().get("02:00:00:00:12:03") == ip3, WAIT, 0.2)
        assert lab.ping(1, 3, count=3)["loss"] == 0
        no_tracebacks(lab)


# -- HTTP ------------------------------------------------------------------------------------------


def http_get(lab: Lab, i: int, path: str, port: int = 9100) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:PORT/PATH inside host i, by curl."""
    res = sh("ip", "netns", "exec", lab.host(i), "curl", "-s", "-m", "10", "-w", "\n%{http_code}",
             f"http://127.0.0.1:{port}{path}", check=False)  # fmt: skip
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def healthz(lab: Lab, i: int) -> tuple[int, str]:
    return http_get(lab, i, "/healthz")


def scrape(lab: Lab, i: int) -> str:
    code, body = http_get(lab, i, "/metrics")
    assert code == 200, body
    return body


def metric(text: str, name: str) -> float:
    """The value of the one sample of name (any labels)."""
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
    assert len(values) == 1, (name, values)
    return values[0]


def test_members_json_and_metrics_scraped() -> None:
    with mesh_lab(2) as (lab, servers):
        join(lab, 1, servers, "--metrics", "9100")
        join(lab, 2, servers)
        wait_mesh(lab, [1, 2])
        assert lab.ping(1, 2, count=3)["loss"] == 0
        rep = members(lab, 1)
        assert rep["net"] == NET and rep["state"] == "connected" and rep["problem"] == ""
        assert rep["self"] == lab.underlay_ip(1) and rep["endpoints"] == [servers[0].url]
        assert rep["lease"]["ttl"] == TTL and rep["lease"]["id"] and rep["lease"]["last_keepalive"]
        assert set(rep["counters"]) >= {"joins", "leaves", "refused", "reconnects", "lease_regrants", "relists",
                                        "keepalives", "keepalive_failures", "watch_events"}  # fmt: skip
        peer = next(m for m in rep["members"] if not m["self"])
        assert peer["addr"] == lab.underlay_ip(2) and peer["remote"] and not peer["static"]
        assert peer["rx_packets"] > 0 and peer["since"] > 0 and peer["refused"] == ""
        text = scrape(lab, 1)
        assert metric(text, "ovl_dp_membership_members") == 1
        assert metric(text, "ovl_dp_etcd_connected") == 1
        assert metric(text, "ovl_dp_membership_joins_total") >= 1
        for name in (
            "ovl_dp_membership_leaves_total",
            "ovl_dp_membership_refused_total",
            "ovl_dp_etcd_reconnects_total",
            "ovl_dp_etcd_lease_regrants_total",
            "ovl_dp_etcd_relists_total",
        ):
            assert metric(text, name) >= 0  # fmt: skip
        assert metric(text, "ovl_dp_etcd_last_keepalive_timestamp_seconds") > 0
        assert healthz(lab, 1) == (200, "ok")
        # A key under members/ that is refused (no JSON) is counted as refused, not as a member.
        ctl(servers, "put", f"{PREFIX}/members/198.51.100.8", "not json")
        wait_until("the bad key refused", lambda: counters(lab, 1)["refused"] >= 1, WAIT, 0.2)
        text = scrape(lab, 1)
        assert metric(text, "ovl_dp_membership_members") == 1 and metric(text, "ovl_dp_membership_refused_total") >= 1
        assert "connected, 1 other member(s)" in cli(lab, 1, "show").stdout


def test_a_takeover_keeps_the_member_key_and_its_peers() -> None:
    with mesh_lab(3) as (lab, servers):
        for i in (1, 2, 3):
            join(lab, i, servers)
        wait_mesh(lab, [1, 2, 3])
        old = lab.daemons[1]
        before = get_json(servers, key(lab, 1))
        assert before is not None
        leaves = {i: counters(lab, i)["leaves"] for i in (2, 3)}
        ping = Pinger(lab, 2, 1, count=200)
        new = join(lab, 1, servers, "--takeover")  # the same options: the old daemon hands over, no revoke
        assert old.proc.wait(WAIT) == 0, old.output()
        assert "lease revoked" not in old.output(), old.output()
        after = get_json(servers, key(lab, 1))
        assert after is not None and after["lease"] != before["lease"], (before, after)  # ours, re-claimed
        value = json.loads(base64.b64decode(after["value"]))
        assert value["pid"] == new.proc.pid
        assert ping.loss() == 0, ping.result
        # The old lease runs out after its TTL: the key is on the new one, so nobody drops host 1.
        old_lease = format(int(before["lease"]), "x")
        wait_until(
            "the old lease to expire",
            lambda: "expired" in ctl(servers, "lease", "timetolive", old_lease) or "not found" in ctl(
                servers, "lease", "timetolive", old_lease),
            TTL + WAIT,
            0.5,
        )  # fmt: skip
        assert get_json(servers, key(lab, 1)) is not None
        wait_mesh(lab, [1, 2, 3], "after the takeover")
        assert {i: counters(lab, i)["leaves"] for i in (2, 3)} == leaves
        rows = remotes(lab, 1)  # the handed-over remotes are members again, not static
        assert all(r["origin"] == ["etcd"] for r in rows.values()), rows
        no_tracebacks(lab)


def test_a_takeover_keeps_a_member_made_static_by_remote_add() -> None:
    """The origins go with the remotes: a member also `remote add`ed stays static in the new daemon, so it
    stays a remote when it leaves etcd (without them the new daemon knew it as a member only and dropped it)."""
    with mesh_lab(3) as (lab, servers):
        ip2, ip3 = lab.underlay_ip(2), lab.underlay_ip(3)
        for i in (1, 2, 3):
            join(lab, i, servers)
        wait_mesh(lab, [1, 2, 3])
        assert "now also static" in cli(lab, 1, "remote", "add", ip3).stdout
        old = lab.daemons[1]
        join(lab, 1, servers, "--takeover")
        assert old.proc.wait(WAIT) == 0, old.output()
        rows = remotes(lab, 1)
        assert rows[ip3]["origin"] == ["etcd", "static"] and rows[ip2]["origin"] == ["etcd"], rows
        assert lab.stop(lab.daemons[3]) == 0
        wait_until("host 3 gone from host 1's members",
                   lambda: ip3 not in {m["addr"] for m in members(lab, 1)["members"]}, WAIT, 0.2)  # fmt: skip
        assert remotes(lab, 1)[ip3]["origin"] == ["static"]
        no_tracebacks(lab)


def test_a_takeover_while_etcd_is_away_drops_a_member_that_left_meanwhile() -> None:
    """The new daemon joins while it cannot reach etcd (a blackhole route in its namespace) and inherits
    host 3 as a remote; host 3 dies and its lease runs out. Once etcd is reachable and listed, host 1
    drops it (the old daemon said it was a member only), as the old daemon would have, instead of keeping
    it for ever (before: left as a remote of unknown origin that no key's deletion would remove)."""
    with mesh_lab(3) as (lab, servers):
        ip1, ip2, ip3 = (lab.underlay_ip(i) for i in (1, 2, 3))
        for i in (1, 2, 3):
            join(lab, i, servers)
        wait_mesh(lab, [1, 2, 3])
        blackhole = ("route", "blackhole", f"{etcd_host(lab)}/32")
        sh("ip", "-n", lab.host(1), blackhole[0], "add", *blackhole[1:])
        old = lab.daemons[1]
        join(lab, 1, servers, "--takeover", "--advertise", ip1)  # (no route to etcd to find it by)
        assert old.proc.wait(WAIT) == 0, old.output()
        assert members(lab, 1)["state"] != "connected"
        assert set(remotes(lab, 1)) == {ip2, ip3}
        lab.daemons[3].proc.kill()
        lab.daemons[3].proc.wait(WAIT)
        # (host 2 drops host 1 too for a while: its key was on the old daemon's lease, which runs out)
        wait_until("host 2 to drop host 3 (its lease ran out)", lambda: ip3 not in remotes(lab, 2), TTL + WAIT, 0.2)
        sh("ip", "-n", lab.host(1), blackhole[0], "del", *blackhole[1:])
        wait_until("host 1 to list the net", lambda: members(lab, 1)["state"] == "connected", WAIT, 0.2)
        wait_until("host 1 to drop host 3", lambda: set(remotes(lab, 1)) == {ip2}, WAIT, 0.2,
                   detail=lambda: lab.daemons[1].output()[-3000:])  # fmt: skip
        assert remotes(lab, 1)[ip2]["origin"] == ["etcd"]
        wait_mesh(lab, [1, 2], "host 1 back in the net")
        assert lab.ping(1, 2, count=3)["loss"] == 0
        no_tracebacks(lab)


def test_an_ipv6_mesh_without_static_remotes() -> None:
    """No --remote, etcd over IPv6: the address published (the route's source towards etcd) picks the family."""
    with mesh_lab(3, underlay="ipv6") as (lab, servers):
        assert servers[0].url == f"http://[{etcd_host(lab)}]:{CLIENT_PORT}"
        # Without IPv6 on lo gRPC would never connect (grpc_ipv6_loopback_available): a clear error instead.
        sh("ip", "netns", "exec", lab.host(1), "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=1")
        d = join(lab, 1, servers, wait=False)
        assert d.proc.wait(WAIT) == 2, d.output()
        assert "net.ipv6.conf.lo.disable_ipv6=0" in d.output() and "Traceback" not in d.output(), d.output()
        for i in (1, 2, 3):  # (the lab sets ::1 up in an IPv6 lab; host 1's was taken away above)
            sh("ip", "netns", "exec", lab.host(i), "sysctl", "-qw", "net.ipv6.conf.lo.disable_ipv6=0")
        for i in (1, 2, 3):
            join(lab, i, servers)
        wait_mesh(lab, [1, 2, 3])
        assert members(lab, 1)["self"] == lab.underlay_ip(1) == "fd00:192:2::1"
        assert get_json(servers, key(lab, 2)) is not None  # /members/fd00:192:2::2: the canonical form
        for a, b in ((1, 2), (2, 3), (3, 1)):
            assert lab.ping(a, b, count=3)["loss"] == 0
        assert "mtu 1430 (underlay 1500)" in lab.daemons[1].output()  # VXLAN over IPv6: 70 bytes


def test_etcd_away_at_start_is_no_error() -> None:
    """Daemons started while etcd is down: ready anyway (degraded, static remotes forward), the mesh forms
    once etcd answers."""
    with mesh_lab(3) as (lab, servers):
        (server,) = servers
        server.stop()
        join(lab, 1, servers, "--metrics", "9100", "--remote", lab.underlay_ip(2))
        join(lab, 2, servers, "--remote", lab.underlay_ip(1))
        join(lab, 3, servers)
        assert members(lab, 1)["state"] in ("connecting", "degraded")
        wait_until("host 1's /healthz to say degraded", lambda: healthz(lab, 1)[1].startswith("degraded: "),
                   WAIT, 0.2)  # fmt: skip
        assert healthz(lab, 1)[0] == 200
        assert lab.ping(1, 2, count=3)["loss"] == 0  # the static remotes forward meanwhile
        server.start()
        wait_mesh(lab, [1, 2, 3], "once etcd answers")
        wait_until("host 1's /healthz to be ok", lambda: healthz(lab, 1) == (200, "ok"), WAIT, 0.2)
        for a, b in ((1, 3), (3, 2)):
            assert lab.ping(a, b, count=3)["loss"] == 0
        assert remotes(lab, 1)[lab.underlay_ip(2)]["origin"] == ["etcd", "static"]
        no_tracebacks(lab)


def test_sigterm_while_the_join_waits_for_an_etcd_that_does_not_answer() -> None:
    """etcd frozen (SIGSTOP: connections open, no answers) at start: SIGTERM ends the daemon at once, not
    after the join timeout (the join is given up; nothing to revoke)."""
    import os
    import time

    from control import joining

    with mesh_lab(3) as (lab, servers):
        (server,) = servers
        pid = server.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            d = join(lab, 1, servers, wait=False)
            wait_until("the daemon to start joining", lambda: "membership: net " in d.output(), WAIT, 0.1)
            time.sleep(0.5)  # (its first requests in flight)
            t = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            code = d.proc.wait(WAIT)
            took = time.monotonic() - t
        finally:
            os.kill(pid, signal.SIGCONT)
        out = d.output()
        assert code == 0, out
        assert "stopped before etcd answered the join" in out, out
        assert not any(line.endswith(" INFO ready") for line in out.splitlines()), out  # it never was ready
        assert took < joining.JOIN_TIMEOUT, f"{took:.1f} s to stop"  # (a bound far above the ~0.1 s it takes)
        no_tracebacks(lab)


# -- an etcd that requires TLS, through etcd's own grpc-proxy (the README's TLS note) -----------------

PROXY_PORT = 23791


def make_certs(d: Path) -> None:
    """A CA, a server certificate for etcd_host (IPv4 lab) and a client certificate, by openssl."""

    def ssl(*args: str) -> None:
        sh("openssl", *args)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/ca-key.pem", "-out", f"{d}/ca.pem",
        "-days", "1", "-subj", "/CN=ovl-dp test CA")  # fmt: skip
    for name, ext in (("server", f"subjectAltName=IP:{ETCD_IP}\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):  # fmt: skip
        (d / f"{name}.cnf").write_text(ext)
        ssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{d}/{name}-key.pem",
            "-out",
            f"{d}/{name}.csr",
            "-subj",
            "/CN=etcd" if name == "server" else "/O=ovl-dp",
        )  # fmt: skip  (the proxy's: no CN)
        ssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca-key.pem",
            "-CAcreateserial", "-out", f"{d}/{name}.pem", "-days", "1", "-extfile", f"{d}/{name}.cnf")  # fmt: skip


class TlsEtcd(EtcdServer):
    """An etcd that serves clients over TLS only and wants their certificates (--client-cert-auth)."""

    def __init__(self, certs: Path, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.certs = certs
        self.tls = [f"--cacert={certs}/ca.pem", f"--cert={certs}/client.pem", f"--key={certs}/client-key.pem"]

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.client_port}"

    def _command(self) -> list[str]:
        c = self.certs
        return [*super()._command(), f"--cert-file={c}/server.pem", f"--key-file={c}/server-key.pem",
                f"--trusted-ca-file={c}/ca.pem", "--client-cert-auth"]  # fmt: skip

    def etcdctl(self, *args: str) -> str:
        return etcdctl(self.url, *self.tls, *args, netns=self.netns)

    def healthy(self) -> bool:
        if not self.running:
            return False
        try:
            self.etcdctl("endpoint", "health")
        except (LabError, subprocess.TimeoutExpired):
            return False
        return True


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_an_etcd_that_requires_tls_through_grpc_proxy() -> None:
    with contextlib.ExitStack() as stack:
        lab = stack.enter_context(Lab(2))
        lab.build(container_mtu("vxlan"))
        certs = lab.workdir / "certs"
        certs.mkdir()
        make_certs(certs)
        server = TlsEtcd(certs, "e0", ETCD_IP, CLIENT_PORT, PEER_PORT, netns=etcd_namespace(lab))
        stack.callback(server.close)
        server.start()
        with pytest.raises(LabError):  # no client certificate: refused
            etcdctl(server.url, f"--cacert={certs}/ca.pem", "endpoint", "health", netns=server.netns)
        # Per host: etcd's grpc-proxy speaks TLS to etcd and plain gRPC on 127.0.0.1 of that host.
        for i in (1, 2):
            log = lab.workdir / f"proxy-h{i}.log"
            with log.open("wb") as out:
                proxy = subprocess.Popen(
                    ["ip", "netns", "exec", lab.host(i), "etcd", "grpc-proxy", "start",
                     f"--endpoints={server.url}", *server.tls, f"--listen-addr=127.0.0.1:{PROXY_PORT}"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            lab.procs.append(proxy)  # stopped by PID in lab.close()
            wait_until(
                f"the grpc-proxy on host {i}",
                lambda i=i: subprocess.run(  # type: ignore[misc]
                    ["ip", "netns", "exec", lab.host(i), "etcdctl", f"--endpoints=127.0.0.1:{PROXY_PORT}",
                     "--dial-timeout=2s", "put", "/probe", "x"], capture_output=True, check=False,
                ).returncode == 0,
                WAIT,
                0.2,
                detail=lambda log=log: log.read_text(errors="replace")[-3000:],  # type: ignore[misc]
            )  # fmt: skip
        stack.callback(stop_daemons, lab)
        for i in (1, 2):
            lab.start(i, *MEMBER, "--etcd", f"http://127.0.0.1:{PROXY_PORT}", "--advertise", lab.underlay_ip(i))
        wait_mesh(lab, [1, 2], "through the proxies")
        assert lab.ping(1, 2, count=3)["loss"] == 0
        assert json.loads(server.etcdctl("get", key(lab, 2), "--print-value-only"))["addr"] == lab.underlay_ip(2)
        # Leave through the proxy revokes too: the key is gone once the daemon has exited.
        assert lab.stop(lab.daemons[2]) == 0
        assert server.etcdctl("get", key(lab, 2)).strip() == ""
        wait_until("host 1 to drop host 2", lambda: not remotes(lab, 1), WAIT, 0.2,
                   detail=lambda: json.dumps(members(lab, 1)) + "\n" + lab.daemons[1].output()[-3000:])  # fmt: skip
        no_tracebacks(lab)
