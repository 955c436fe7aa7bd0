"""Command-line parsing and validation: one-line errors with exit code 2, no traceback."""

from __future__ import annotations

import pytest

from control import cli
from control.config import offload_flags, tap_mac


def error_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert cli.main(list(argv)) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ovl-dp: error:"), err
    return err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--mode", "vxlan"], "--remote"),
        (["run", "--mode", "ipip", "--remote", "192.0.2.2"], "invalid choice"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.300"], "not an IP address"),
        (["run", "--mode", "vxlan", "--remote", "fe80::1"], "is link-local"),
        (["run", "--mode", "vxlan", "--remote", "::ffff:192.0.2.2"], "write the IPv4 address 192.0.2.2"),
        (["run", "--mode", "vxlan", "--remote", "2001:db8::2", "--local", "192.0.2.1"], "has no IPv6 address"),
        (
            ["run", "--mode", "vxlan", "--local", "192.0.2.1", "--local", "192.0.2.3", "--remote", "192.0.2.2"],
            "at most one IPv4",
        ),
        (["run", "--mode", "gre", "--remote", "2001:db8::2", "--udp6-zero-csum-tx"], "are for"),
        (["run", "--mode", "vxlan", "--remote", "224.0.0.1"], "not a unicast address"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--vni", "16777216"], "out of range"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--vni", "-1"], "out of range"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--key", "4294967296"], "out of range"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--port", "0"], "out of range"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--mtu", "big"], "not a number"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--fdb-ageing", "-5"], "between 0"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--fdb-max", "0"], "out of range"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--static", "02:00:00:00:00:01"], "MAC=REMOTE"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--static", "02:00:00:00:01=192.0.2.2"], "bad MAC"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--static", "ff:ff:ff:ff:ff:ff=192.0.2.2"], "unicast"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--tap", "a-name-much-too-long"], "1-15 characters"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--tos", "256"], "--tos 256 is out of range 0..255"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--tos", "inherited"], "not a number"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--ttl", "0"], "--ttl 0 is out of range 1..255"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--df", "maybe"], "invalid choice"),
        (
            ["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--clamp-mss", "535"],
            "--clamp-mss: MSS 535 is out of range",
        ),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--clamp-mss", "65496"], "out of range 536..65495"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--clamp-mss", "on"], "must be auto, off or an MSS"),
    ],
)
def test_bad_arguments(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert needle in error_of(capsys, *argv)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--key", "5"], "--key is for --mode gre"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--vni", "5"], "for --mode vxlan"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--udp-csum"], "are for --mode vxlan"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--udp-gso"], "are for --mode vxlan"),
        (["run", "--mode", "vxlan", "--remote", "192.0.2.2", "--udp-gso", "--no-fast-path"], "needs the C fast path"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--remote", "192.0.2.2"], "given twice"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--cpu", "0", "--no-dp-thread"], "its thread"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--cpu", "0", "--no-fast-path"], "its thread"),
        (["run", "--mode", "gre", "--remote", "192.0.2.2", "--local", "192.0.2.2"], "equals --local"),
    ],
)
def test_inconsistent_options(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert needle in error_of(capsys, *argv)


def test_tap_mac_is_stable_local_unicast_and_depends_on_tunnel() -> None:
    a = tap_mac("192.0.2.1", "vxlan", 42, "ovl-vxlan")
    assert a == tap_mac("192.0.2.1", "vxlan", 42, "ovl-vxlan")
    assert a[0] & 0x02 and not a[0] & 0x01
    assert len({a, tap_mac("192.0.2.2", "vxlan", 42, "ovl-vxlan"), tap_mac("192.0.2.1", "vxlan", 43, "ovl-vxlan"),
                tap_mac("192.0.2.1", "gre", 42, "ovl-vxlan")}) == 4  # fmt: skip


def test_offload_policy() -> None:
    # auto: coalescing only towards a Linux bridge (OVS userspace reads the TAP with AF_PACKET).
    assert offload_flags("auto", "linux") == (True, True)
    assert offload_flags("auto", "ovs") == (True, False)
    assert offload_flags("auto", "none") == (True, False)
    assert offload_flags("on", "ovs") == (True, True)
    assert offload_flags("off", "linux") == (False, False)


def test_lab_without_open_vswitch(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`ovl-dp lab` says what is missing; with auto it shows the Linux-bridge variant instead."""
    from control import ovs
    from control.lab import demo as lab

    monkeypatch.setattr(ovs, "_which", lambda tool: None)
    monkeypatch.setattr(cli, "_privilege_problem", lambda: None)
    ran: list[str] = []

    def fake_demo(mode: str, seconds: int, fast: bool, bridge: str, underlay: str) -> dict[str, object]:
        ran.append(bridge)
        assert underlay == "ipv4"  # the default
        raise lab.LabError("not run in this test")

    monkeypatch.setattr(lab, "_demo", fake_demo)
    assert cli.main(["lab", "--bridge-type", "ovs"]) == 2
    err = capsys.readouterr().err
    assert "Open vSwitch is not installed" in err and "apt-get install openvswitch-switch" in err
    assert ran == []
    assert cli.main(["lab", "--mode", "gre"]) == 1  # the fake demo "failed"
    out = capsys.readouterr().out
    assert ran == ["linux"] and "showing the scenario with Linux bridges instead" in out


def test_a_real_unprivileged_user_gets_the_one_line_error() -> None:
    """uid 65534 (no capabilities at all) running `ovl-dp run`: one line naming CAP_NET_ADMIN, exit 2.

    Run in a forked child after the CLI is imported, so it does not depend on whether uid 65534 could read
    the checkout (a clone in root's home is mode 700); as root, the fork drops to nobody itself.
    """
    import os
    import sys

    if os.geteuid() != 0:
        pytest.skip("needs root to become uid 65534")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(r)
            sys.stderr = open(w, "w", closefd=False)  # noqa: SIM115 (flushed below; the child ends with _exit)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            code = cli.main(["run", "--mode", "gre", "--remote", "192.0.2.2", "--bridge-type", "none"])
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == cli.EXIT_USAGE, err
    assert err.count("\n") == 1 and err.startswith("ovl-dp: error: needs CAP_NET_ADMIN and CAP_NET_RAW"), err


@pytest.mark.parametrize(
    ("argv", "want"),
    [
        ([], (0, 64, "unset")),
        (["--tos", "inherit", "--ttl", "inherit", "--df", "inherit"], ("inherit", "inherit", "inherit")),
        (["--tos", "0xb8", "--ttl", "17", "--df", "set"], (0xB8, 17, "set")),
    ],
)
def test_tos_ttl_df_options(argv: list[str], want: tuple[object, object, str]) -> None:
    """--tos / --ttl / --df reach the encapsulation (ECN, issue 11); VXLAN's DF default is the kernel's."""
    args = cli.build_parser().parse_args(["run", "--mode", "vxlan", "--remote", "192.0.2.2", *argv])
    enc = cli.run_source(args).load().encap
    assert (enc.tos, enc.ttl, enc.df) == want


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["lab", "--etcd", "--hosts", "2"], "--etcd needs --hosts 3 or more, not 2: one host is killed"),
        (["lab", "--hosts", "3"], "--hosts 3 needs --etcd: the seed scenario has 2 hosts"),
        (["lab", "--hosts", "1"], "--hosts 1 is out of range 2..16"),
        (["lab", "--etcd", "--hosts", "17"], "--hosts 17 is out of range 2..16"),
        (["lab", "--etcd", "--hosts", "three"], "not a number"),
        (["lab", "--etcd", "--seconds", "2"], "--seconds is the two-host demo's iperf3 time"),
    ],
)
def test_lab_etcd_options(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert needle in error_of(capsys, *argv)


def test_lab_etcd_defaults_and_modes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--etcd alone: 3 hosts, gre then vxlan (--mode both runs each in turn); without it the seed demo, 2 hosts."""
    from control.lab import demo, etcd, etcd_demo

    monkeypatch.setattr(cli, "_privilege_problem", lambda: None)
    monkeypatch.setattr(etcd, "available", lambda: True)
    ran: list[tuple[object, ...]] = []

    def fake_etcd_demo(mode: str, n: int, fast: bool, bridge: str, underlay: str) -> etcd_demo.EtcdLabResult:
        ran.append((mode, n, fast, bridge, underlay))
        return etcd_demo.EtcdLabResult(mode, bridge, underlay, [], [], error="not run in this test")

    def fake_demo(mode: str, seconds: int, fast: bool, bridge: str, underlay: str) -> dict[str, object]:
        ran.append((mode, seconds))
        raise demo.LabError("not run in this test")

    monkeypatch.setattr(etcd_demo, "etcd_demo", fake_etcd_demo)
    monkeypatch.setattr(demo, "_demo", fake_demo)
    assert cli.main(["lab", "--etcd", "--bridge-type", "linux"]) == 1  # the fake results "failed"
    assert ran == [("gre", 3, True, "linux", "ipv4"), ("vxlan", 3, True, "linux", "ipv4")]
    assert "FAILED" in capsys.readouterr().out
    ran.clear()
    assert cli.main(["lab", "--etcd", "--hosts", "5", "--mode", "vxlan", "--bridge-type", "linux"]) == 1
    assert ran == [("vxlan", 5, True, "linux", "ipv4")]
    ran.clear()
    assert cli.main(["lab", "--mode", "gre", "--bridge-type", "linux"]) == 1
    assert ran == [("gre", 3)]  # the seed demo, its default iperf3 time
    monkeypatch.setattr(etcd, "available", lambda: False)
    assert cli.main(["lab", "--etcd", "--bridge-type", "linux"]) == 2
    assert "apt-get install etcd-server etcd-client" in capsys.readouterr().err
