"""control/probe.py without touching the host: formatting, parsing, the recommendation logic from given rows."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from control import probe
from control.probe import NO, UNKNOWN, YES, Row

STATUS = "Name:\tpython3\nCapInh:\t0000000000000000\nCapEff:\t0000000000003000\n"


def rows(**results: str) -> dict[str, Row]:
    """Rows by check name, e.g. rows(**{"kernel.vxlan": "yes"}), each with a placeholder detail."""
    return {check: Row(check, result, f"{check} detail") for check, result in results.items()}


HOST_LIKE_THIS = {  # what this development machine answers (see tests/netns/test_probe.py)
    "kernel.openvswitch": NO,
    "kernel.vxlan": YES,
    "kernel.gretap": NO,
    "kernel.geneve": NO,
    "tap.offloads": YES,
    "udp.gso": YES,
    "udp.gro": YES,
    "raw.ip": YES,
    "raw.gre": YES,
}


def by_check(out: list[Row]) -> dict[str, Row]:
    return {r.check: r for r in out}


def test_capabilities_from_capeff() -> None:
    caps = probe.effective_caps(STATUS)
    assert caps == 0x3000
    got = by_check(probe.cap_rows(caps))
    assert got["caps.net_admin"].result == YES and got["caps.net_raw"].result == YES
    assert got["caps.sys_admin"].result == NO
    assert probe.effective_caps("Name:\tx\n") is None
    assert {r.result for r in probe.cap_rows(None)} == {UNKNOWN}


def test_without_cap_sys_admin_the_namespace_rows_say_needs_root() -> None:
    first, *got = probe.namespace_rows(0x3000)  # NET_ADMIN and NET_RAW, no SYS_ADMIN: nothing is forked
    assert first == Row("netns.private", NO, probe.NEEDS_ROOT)
    assert [r.check for r in got] == list(probe.NAMESPACE_CHECKS)
    assert all(r.result == UNKNOWN and r.detail == probe.NEEDS_ROOT for r in got)


def test_recommendation_on_a_host_like_this_one() -> None:
    got = by_check(probe.recommend(rows(**HOST_LIKE_THIS)))
    vx, gre = got["recommend.vxlan"], got["recommend.gre"]
    assert vx.result == "both"
    assert "Linux bridge: the kernel's vxlan device" in vx.detail
    assert "ovl-dp run --mode vxlan" in vx.detail and "--udp-gso available" in vx.detail
    assert "--offload auto works" in vx.detail
    assert gre.result == "ovl-dp"
    assert "no kernel gretap" in gre.detail and "ovl-dp run --mode gre" in gre.detail
    assert "udp-gso" not in gre.detail  # a VXLAN-only option
    assert all("\n" not in r.detail for r in got.values())


def test_recommendation_with_the_kernels_ports_everywhere() -> None:
    results = {**HOST_LIKE_THIS, "kernel.openvswitch": YES, "kernel.gretap": YES, "ovs.datapath_types": YES}
    given = rows(**results)
    given["ovs.datapath_types"] = Row("ovs.datapath_types", YES, "netdev system (from the ovsdb at x)")
    got = by_check(probe.recommend(given))
    for mode, port in (("vxlan", "type=vxlan"), ("gre", "type=gre")):
        row = got[f"recommend.{mode}"]
        assert row.result == "kernel" and port in row.detail and "ovl-dp not needed" in row.detail


def test_a_vswitchd_without_the_system_datapath_keeps_ovs_on_ovl_dp() -> None:
    given = rows(**{**HOST_LIKE_THIS, "kernel.openvswitch": YES})
    given["ovs.datapath_types"] = Row("ovs.datapath_types", YES, "netdev (from the ovsdb at x)")
    assert by_check(probe.recommend(given))["recommend.vxlan"].result == "both"


def test_recommendation_without_offloads_gso_or_raw_sockets() -> None:
    given = rows(**{**HOST_LIKE_THIS, "kernel.vxlan": NO, "tap.offloads": NO, "udp.gso": NO, "raw.ip": NO})
    vx = by_check(probe.recommend(given))["recommend.vxlan"]
    assert vx.result == "ovl-dp"
    assert "--offload off" in vx.detail and "no --udp-gso" in vx.detail and "CAP_NET_RAW" in vx.detail


def test_recommendation_is_unknown_when_the_kernel_checks_could_not_run() -> None:
    unknown = {c: Row(c, UNKNOWN, probe.NEEDS_ROOT) for c in probe.NAMESPACE_CHECKS}
    got = probe.recommend({**rows(**{"udp.gso": YES}), **unknown})
    assert [r.result for r in got] == [UNKNOWN, UNKNOWN]
    assert all(probe.NEEDS_ROOT in r.detail for r in got)
    assert {r.check for r in probe.recommend({})} == {"recommend.vxlan", "recommend.gre"}


def test_table_and_json_formats() -> None:
    given = [Row("kernel.vxlan", YES, "created and deleted a vxlan device"), Row("udp.gso", NO, "ENOPROTOOPT")]
    table = probe.format_table(given).splitlines()
    assert table[0].split() == ["CHECK", "RESULT", "DETAIL"]
    assert table[1].split(maxsplit=2) == ["kernel.vxlan", "yes", "created and deleted a vxlan device"]
    assert table[1].index("yes") == table[2].index("no") == table[0].index("RESULT")  # aligned columns
    assert json.loads(probe.format_json(given)) == [
        {"check": "kernel.vxlan", "result": "yes", "detail": "created and deleted a vxlan device"},
        {"check": "udp.gso", "result": "no", "detail": "ENOPROTOOPT"},
    ]


def fake_vsctl(code: int, out: str = "", err: str = "") -> Callable[[list[str]], subprocess.CompletedProcess[str]]:
    def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        assert cmd[1:] == ["--no-wait", "--timeout=5", "get", "Open_vSwitch", ".", "datapath_types"]
        return subprocess.CompletedProcess(cmd, code, out, err)

    return run


@pytest.mark.parametrize(
    ("code", "out", "err", "result", "needle"),
    [
        (0, "[netdev, system]\n", "", YES, "netdev system"),
        (0, "[]\n", "", UNKNOWN, "no ovs-vswitchd filled it in"),
        (1, "", "ovs-vsctl: unix:/x/db.sock: database connection failed (No such file)\n", UNKNOWN, "does not start"),
    ],
)
def test_ovs_datapath_types(
    monkeypatch: pytest.MonkeyPatch, code: int, out: str, err: str, result: str, needle: str
) -> None:
    monkeypatch.setattr(probe.shutil, "which", lambda name: f"/usr/bin/{name}")
    got = by_check(probe.ovs_rows(fake_vsctl(code, out, err)))
    assert got["ovs.installed"].result == YES
    assert got["ovs.datapath_types"].result == result and needle in got["ovs.datapath_types"].detail


def test_ovs_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe.shutil, "which", lambda name: None)
    got = by_check(probe.ovs_rows(fake_vsctl(0)))
    assert got["ovs.installed"].result == NO and "ovs-vsctl ovs-vswitchd" in got["ovs.installed"].detail
    assert got["ovs.datapath_types"].result == UNKNOWN


def test_the_cli_prints_the_rows(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from control import cli

    canned = [Row("kernel.vxlan", YES, "d")]
    monkeypatch.setattr(probe, "probe", lambda: canned)
    assert cli.main(["probe", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"check": "kernel.vxlan", "result": "yes", "detail": "d"}]
    assert cli.main(["probe"]) == 0
    assert "kernel.vxlan" in capsys.readouterr().out
