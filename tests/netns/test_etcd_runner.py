"""The lab's etcd runner (control/lab/etcd.py): a real etcd on loopback and in a namespace, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from control.lab import etcd
from control.lab.shell import LabError, sh
from control.procs import wait_until

pytestmark = [
    pytest.mark.netns,
    pytest.mark.usefixtures("no_leftovers"),
    pytest.mark.skipif(not etcd.available(), reason="etcd is not installed"),
]


def test_server_keeps_its_data_across_restart_and_kill() -> None:
    with etcd.EtcdServer() as srv:
        assert srv.url.startswith("http://127.0.0.1:") and srv.client_port not in (2379, 2380)
        srv.etcdctl("put", "/t/a", "1")
        srv.restart()
        assert srv.etcdctl("get", "--print-value-only", "/t/a").strip() == "1"
        pid = srv.pid
        assert pid is not None
        srv.kill()
        assert not srv.running and not srv.healthy()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        srv.start()
        assert srv.etcdctl("get", "--print-value-only", "/t/a").strip() == "1"
        workdir = srv.workdir
    assert not workdir.exists(), "the data directory it made is removed"
    assert etcd.leftovers() == []


def test_cluster_survives_one_member_killed() -> None:
    with etcd.EtcdCluster(3) as cluster:
        assert len(cluster.urls.split(",")) == 3
        cluster.members[0].etcdctl("put", "/t/k", "v")
        cluster.members[0].kill()
        assert cluster.members[1].etcdctl("get", "--print-value-only", "/t/k").strip() == "v"
        cluster.members[2].etcdctl("put", "/t/k", "w")  # two of three: still a quorum
        cluster.members[0].start()
        assert cluster.members[0].etcdctl("get", "--print-value-only", "/t/k").strip() == "w"


def test_server_in_a_namespace() -> None:
    ns = f"ovl{os.getpid() % 100000}-etcdt"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        with etcd.EtcdServer(netns=ns) as srv:
            assert srv.client_port == etcd.NETNS_CLIENT_PORT
            srv.etcdctl("put", "k", "v")
            assert srv.etcdctl("get", "--print-value-only", "k").strip() == "v"
            # Not reachable from the test's own namespace: it listens inside ns only.
            with pytest.raises(LabError):
                etcd.etcdctl(srv.url, "get", "k")
    finally:
        sh("ip", "netns", "del", ns)


def test_a_crashed_owner_takes_its_etcd_along(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: an etcd whose owner dies without cleanup is killed by the kernel."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the owner: start etcd, report its PID, die without any cleanup
        os.close(r)
        try:
            srv = etcd.EtcdServer(data_dir=tmp_path / "data").start()
            os.write(w, str(srv.pid).encode())
        finally:
            os._exit(0)
    os.close(w)
    pid = int(os.read(r, 64) or b"0")
    os.close(r)
    os.waitpid(child, 0)
    assert pid > 0

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_until("the orphaned etcd to be killed", gone, timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
