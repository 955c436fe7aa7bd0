"""`ovl-dp probe`: what this kernel and host can do for L2 tunnels, found by trying.

Nothing here reads a version number. Every check tries the thing itself:

- device types (vxlan, gretap, geneve), a TAP with a virtio header and its offloads,
  and the ``ovs_datapath`` generic netlink family are tried in a private network
  namespace: a forked child unshares its network namespace (CLONE_NEWNET, needs
  CAP_SYS_ADMIN), creates and deletes one throwaway device of each kind there, and
  reports through a pipe. The namespace has no name and no other reference, so it
  disappears when the child exits, whatever happens to it; the parent waits for the
  child by PID and kills it (by PID) if it hangs. Nothing is created in the namespace
  probe was started in.
- sockets (UDP_SEGMENT, UDP_GRO, raw IPPROTO_RAW / IPPROTO_GRE) are opened and closed
  again in this process; an unbound socket changes nothing on the host.
- capabilities come from CapEff in /proc/self/status; Open vSwitch from PATH and, for
  datapath types, from a running ovsdb (``ovs-vsctl get Open_vSwitch . datapath_types``,
  which ovs-vswitchd fills in). Probe never starts one.

Creating a device of a type whose module is not loaded makes a modular kernel load it
(as ``ip link add`` does); where /proc/modules exists, a row says when that happened.

Rows are (check, result, detail) with result ``yes``, ``no`` or ``unknown`` (the detail
says why); the two ``recommend.*`` rows say ``kernel``, ``ovl-dp``, ``both`` (it depends
on the bridge) or ``unknown``.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from control.procs import collect_child
from datapath.io import tap as taplib
from datapath.io import underlay

YES, NO, UNKNOWN = "yes", "no", "unknown"
NEEDS_ROOT = "needs root (CAP_SYS_ADMIN for a private namespace)"
CLONE_NEWNET = 0x40000000
CHILD_TIMEOUT = 20.0  # seconds for the namespace checks; a bound, never a speed requirement

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
TUN_F_UDP_TUNNEL_GSO = 0x80
TUN_F_UDP_TUNNEL_GSO_CSUM = 0x100
_CSUM, _TSO = taplib.TUN_F_CSUM, taplib.TUN_F_CSUM | taplib.TUN_F_TSO4 | taplib.TUN_F_TSO6
# Each offload with what the kernel wants beside it (tun_set_offload: TSO needs CSUM, TSO_ECN needs TSO,
# USO4 and USO6 only together). UFO is left out: the kernel accepts the bit and ignores it.
TAP_OFFLOADS = (
    ("csum", _CSUM),
    ("tso4", _CSUM | taplib.TUN_F_TSO4),
    ("tso6", _CSUM | taplib.TUN_F_TSO6),
    ("tso_ecn", _TSO | taplib.TUN_F_TSO_ECN),
    ("uso", _CSUM | TUN_F_USO4 | TUN_F_USO6),
)
TUNNEL_OFFLOADS = (  # the csum variant is tried on top of the plain one
    ("udp_tunnel_gso (0x80)", _TSO | TUN_F_UDP_TUNNEL_GSO),
    ("udp_tunnel_gso_csum (0x100)", _TSO | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM),
)

# The throwaway devices, created only inside the private namespace.
DEVICES: dict[str, dict[str, Any]] = {
    "vxlan": {"vxlan_id": 42, "vxlan_port": 4789},
    "gretap": {"gre_remote": "192.0.2.2"},
    "geneve": {"geneve_id": 42, "geneve_remote": "192.0.2.2"},
}
PROBE_TAP = "ovl-probe0"

# Every check in the order printed; the namespace ones are filled by the child.
NAMESPACE_CHECKS = (
    "kernel.openvswitch",
    "kernel.vxlan",
    "kernel.gretap",
    "kernel.geneve",
    "tap.device",
    "tap.vnet_hdr",
    "tap.offloads",
    "tap.udp_tunnel_gso",
)


@dataclass(frozen=True)
class Row:
    """One line of the probe: what was checked, the answer, and how it was found (or why not)."""

    check: str
    result: str
    detail: str


# ---------------------------------------------------------------------------- capabilities


def effective_caps(status: str | None = None) -> int | None:
    """CapEff of this process (from /proc/self/status, or the given text); None if it cannot be read."""
    try:
        text = status if status is not None else Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return None


def cap_rows(caps: int | None) -> list[Row]:
    """Rows for CAP_NET_ADMIN, CAP_NET_RAW and CAP_SYS_ADMIN."""
    rows = []
    for check, bit, why in (
        ("caps.net_admin", CAP_NET_ADMIN, "TAP creation, bridge ports"),
        ("caps.net_raw", CAP_NET_RAW, "raw IPv4/GRE sockets"),
        ("caps.sys_admin", CAP_SYS_ADMIN, "probe's private namespace only; ovl-dp run does not need it"),
    ):
        if caps is None:
            rows.append(Row(check, UNKNOWN, "no CapEff line in /proc/self/status"))
        else:
            rows.append(Row(check, YES if caps >> bit & 1 else NO, f"CapEff of this process ({why})"))
    return rows


# ---------------------------------------------------------------------------- sockets (this process)


def _strerror(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    return f"{name}: {exc.strerror}" if name else str(exc)


def socket_rows() -> list[Row]:
    """UDP GSO/GRO and raw sockets, tried on unbound sockets in this process."""
    rows = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.getsockopt(underlay.SOL_UDP, underlay.UDP_SEGMENT)
            rows.append(Row("udp.gso", YES, "getsockopt(UDP_SEGMENT) answered"))
        except OSError as exc:
            rows.append(Row("udp.gso", NO, f"getsockopt(UDP_SEGMENT): {_strerror(exc)}"))
        try:
            sock.setsockopt(underlay.SOL_UDP, underlay.UDP_GRO, 1)
            rows.append(Row("udp.gro", YES, "setsockopt(UDP_GRO, 1) accepted"))
        except OSError as exc:
            rows.append(Row("udp.gro", NO, f"setsockopt(UDP_GRO): {_strerror(exc)}"))
    for check, proto, name in (
        ("raw.ip", socket.IPPROTO_RAW, "IPPROTO_RAW"),
        ("raw.gre", socket.IPPROTO_GRE, "IPPROTO_GRE"),
    ):
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, proto).close()
            rows.append(Row(check, YES, f"socket(AF_INET, SOCK_RAW, {name}) opened"))
        except OSError as exc:
            hint = " (needs CAP_NET_RAW)" if exc.errno == errno.EPERM else ""
            rows.append(Row(check, NO, f"socket(AF_INET, SOCK_RAW, {name}): {_strerror(exc)}{hint}"))
    return rows


# ---------------------------------------------------------------------------- Open vSwitch


def ovs_rows(run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None) -> list[Row]:
    """Open vSwitch installed, and the datapath types of a running ovs-vswitchd if its ovsdb answers."""
    vsctl, vswitchd = shutil.which("ovs-vsctl"), shutil.which("ovs-vswitchd")
    found = [p for p in (vsctl, vswitchd) if p]
    if vsctl and vswitchd:
        rows = [Row("ovs.installed", YES, " ".join(found))]
    else:
        missing = [n for n, p in (("ovs-vsctl", vsctl), ("ovs-vswitchd", vswitchd)) if not p]
        rows = [Row("ovs.installed", NO, f"not on PATH: {' '.join(missing)}")]
    if not vsctl:
        rows.append(Row("ovs.datapath_types", UNKNOWN, "no ovs-vsctl to ask a running Open vSwitch"))
        return rows
    db = os.path.join(os.environ.get("OVS_RUNDIR", "/var/run/openvswitch"), "db.sock")
    cmd = [vsctl, "--no-wait", "--timeout=5", "get", "Open_vSwitch", ".", "datapath_types"]
    try:
        res = (run or _run)(cmd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        rows.append(Row("ovs.datapath_types", UNKNOWN, f"ovs-vsctl did not answer: {exc}"))
        return rows
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["no output"])[-1].removeprefix("ovs-vsctl: ")
        rows.append(
            Row(
                "ovs.datapath_types",
                UNKNOWN,
                f"no running Open vSwitch answers at {db} (ovs-vsctl: {why}); probe does not start one",
            )
        )
        return rows
    types = [t for t in res.stdout.strip().strip("[]").replace(",", " ").split() if t]
    if not types:
        rows.append(Row("ovs.datapath_types", UNKNOWN, f"ovsdb at {db} answers, but no ovs-vswitchd filled it in"))
    else:
        rows.append(Row("ovs.datapath_types", YES, f"{' '.join(types)} (from the ovsdb at {db})"))
    return rows


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------- the private namespace


def _modules() -> set[str] | None:
    try:
        return {line.split()[0] for line in Path("/proc/modules").read_text().splitlines() if line.strip()}
    except OSError:
        return None  # a kernel without modules (everything built in) or no /proc


def _loaded_note(before: set[str] | None) -> str:
    after = _modules()
    if before is None or after is None:
        return ""
    new = sorted(after - before)
    return f"; the kernel loaded module {', '.join(new)} for it" if new else ""


def _device_row(ipr: Any, kind: str) -> Row:
    from pyroute2.netlink.exceptions import NetlinkError

    before = _modules()
    name = f"ovl-probe-{kind[:5]}"
    try:
        ipr.link("add", ifname=name, kind=kind, **DEVICES[kind])
    except NetlinkError as exc:
        if exc.code == errno.EOPNOTSUPP:
            return Row(f"kernel.{kind}", NO, f"creating a {kind} device: EOPNOTSUPP (no such link type in this kernel)")
        return Row(f"kernel.{kind}", NO, f"creating a {kind} device: {exc}")
    ipr.link("del", ifname=name)
    return Row(f"kernel.{kind}", YES, f"created and deleted a {kind} device{_loaded_note(before)}")


def _openvswitch_row() -> Row:
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    before = _modules()
    sysfs = "/sys/module/openvswitch " + ("exists" if os.path.isdir("/sys/module/openvswitch") else "absent")
    sock = GenericNetlinkSocket()
    try:
        sock.bind("ovs_datapath", None)
    except NetlinkError as exc:
        if exc.code == errno.ENOENT:
            return Row("kernel.openvswitch", NO, f"no generic netlink family ovs_datapath (ENOENT); {sysfs}")
        return Row("kernel.openvswitch", UNKNOWN, f"resolving generic netlink family ovs_datapath: {exc}; {sysfs}")
    finally:
        sock.close()
    return Row(
        "kernel.openvswitch", YES, f"generic netlink family ovs_datapath resolved; {sysfs}{_loaded_note(before)}"
    )


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def _tap_rows() -> list[Row]:
    """A throwaway TAP: TUNGETFEATURES, IFF_VNET_HDR, then TUNSETOFFLOAD bit by bit."""
    if not os.path.exists(taplib.TUN_DEVICE):
        why = f"no {taplib.TUN_DEVICE}"
        return [Row(c, NO if c == "tap.device" else UNKNOWN, why) for c in NAMESPACE_CHECKS if c.startswith("tap.")]
    features = taplib.tun_features()
    fd = os.open(taplib.TUN_DEVICE, os.O_RDWR)
    try:
        vnet = bool(features & taplib.IFF_VNET_HDR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(PROBE_TAP, IFF_TAP | IFF_NO_PI | (taplib.IFF_VNET_HDR if vnet else 0)))
        except OSError as exc:
            why = f"TUNSETIFF IFF_TAP: {_strerror(exc)}"
            return [Row("tap.device", NO, why)] + [
                Row(c, UNKNOWN, "no TAP") for c in NAMESPACE_CHECKS if c.startswith("tap.") and c != "tap.device"
            ]
        rows = [Row("tap.device", YES, f"created a TAP on {taplib.TUN_DEVICE} (TUNGETFEATURES 0x{features:04x})")]
        if vnet:
            try:
                fcntl.ioctl(fd, taplib.TUNSETVNETHDRSZ, struct.pack("i", taplib.VNET_HDR_LEN))
            except OSError as exc:
                vnet = False
                rows.append(Row("tap.vnet_hdr", NO, f"TUNSETVNETHDRSZ {taplib.VNET_HDR_LEN}: {_strerror(exc)}"))
            else:
                rows.append(Row("tap.vnet_hdr", YES, f"IFF_VNET_HDR, {taplib.VNET_HDR_LEN}-byte header set"))
        else:
            rows.append(Row("tap.vnet_hdr", NO, "TUNGETFEATURES does not list IFF_VNET_HDR"))
        if not vnet:
            rows += [Row("tap.offloads", NO, "no virtio header"), Row("tap.udp_tunnel_gso", NO, "no virtio header")]
            return rows

        def accepted(sets: Iterable[tuple[str, int]]) -> list[str]:
            names = []
            for name, flags in sets:
                try:
                    fcntl.ioctl(fd, taplib.TUNSETOFFLOAD, flags)
                    names.append(name)
                except OSError:
                    pass
            return names

        plain = accepted(TAP_OFFLOADS)
        refused = [n for n, _ in TAP_OFFLOADS if n not in plain]
        usable = "csum" in plain and "tso4" in plain
        rows.append(
            Row(
                "tap.offloads",
                YES if usable else NO,
                "TUNSETOFFLOAD accepted: "
                + (" ".join(plain) or "none")
                + (f"; refused: {' '.join(refused)}" if refused else ""),
            )
        )
        tunnel = accepted(TUNNEL_OFFLOADS)
        refused = [n for n, _ in TUNNEL_OFFLOADS if n not in tunnel]
        rows.append(
            Row(
                "tap.udp_tunnel_gso",
                YES if tunnel else NO,
                "TUNSETOFFLOAD with csum tso4 tso6 accepted: "
                + (" ".join(tunnel) or "none")
                + (f"; refused: {' '.join(refused)}" if refused else "")
                + " (the tunnel fields need a 24-byte virtio header)",
            )
        )
        return rows
    finally:
        os.close(fd)  # a non-persistent TAP goes with its fd


def _inside_namespace() -> list[Row]:
    """The checks that create something; runs in the forked child, after unshare."""
    rows = [_openvswitch_row()]
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        rows += [_device_row(ipr, kind) for kind in DEVICES]
    rows += _tap_rows()
    return rows


def _child(w: int) -> None:
    """In the forked child: unshare, run the checks, write JSON to w, never return."""
    code = 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            out: object = {"error": f"unshare(CLONE_NEWNET): {errno.errorcode.get(err, err)}: {os.strerror(err)}"}
        else:
            try:
                out = {"rows": [asdict(r) for r in _inside_namespace()]}
            except Exception as exc:  # reported as unknown rows, never a traceback
                out = {"error": f"{type(exc).__name__}: {exc}"}
        data = json.dumps(out).encode()
        view = memoryview(data)
        while view:
            view = view[os.write(w, view) :]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def namespace_rows(caps: int | None) -> list[Row]:
    """The netns.private row (how the checks ran), then the namespace checks or rows saying why they could not run."""
    if caps is not None and not caps >> CAP_SYS_ADMIN & 1:
        return [Row("netns.private", NO, NEEDS_ROOT)] + [Row(c, UNKNOWN, NEEDS_ROOT) for c in NAMESPACE_CHECKS]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(w)
    os.close(w)
    output, timed_out, _ = collect_child(pid, r, CHILD_TIMEOUT)
    if timed_out:
        why = f"the namespace checks took over {CHILD_TIMEOUT:.0f} s"
        return [Row("netns.private", NO, f"child PID {pid} killed: {why}")] + [
            Row(c, UNKNOWN, why) for c in NAMESPACE_CHECKS
        ]
    try:
        out = json.loads(output)
    except ValueError:
        out = {"error": "the namespace child died without a report"}
    if "error" in out:
        reason = str(out["error"])
        if "EPERM" in reason:
            reason = f"{NEEDS_ROOT}: {reason}"
        return [Row("netns.private", NO, reason)] + [Row(c, UNKNOWN, reason) for c in NAMESPACE_CHECKS]
    done = Row(
        "netns.private",
        YES,
        f"child PID {pid} unshared a network namespace for the kernel.* and tap.* checks; "
        "it has exited, and the namespace with it",
    )
    return [done] + [Row(**row) for row in out["rows"]]


# ---------------------------------------------------------------------------- recommendations


def _offload_advice(rows: Mapping[str, Row], mode: str) -> str:
    parts = []
    off = rows.get("tap.offloads")
    if off is None or off.result == UNKNOWN:
        parts.append("TAP offloads unknown")
    elif off.result == YES:
        parts.append("--offload auto works (TAP virtio header with csum and TSO)")
    else:
        parts.append("--offload off (no usable TAP offloads here; auto falls back to a plain TAP by itself)")
    if mode == "vxlan":
        gso = rows.get("udp.gso")
        if gso is not None and gso.result == YES:
            parts.append("--udp-gso available")
        else:
            parts.append("no --udp-gso (UDP_SEGMENT refused)")
        gro = rows.get("udp.gro")
        if gro is not None and gro.result == YES:
            parts.append("UDP GRO used")
    raw = [c for c in (("raw.ip", "raw.gre") if mode == "gre" else ("raw.ip",)) if c in rows and rows[c].result == NO]
    if raw:
        parts.append("raw sockets refused: run as root or with CAP_NET_RAW")
    return ", ".join(parts)


def recommend(rows: Mapping[str, Row]) -> list[Row]:
    """One row per mode: the kernel's own port where it exists, ovl-dp where it does not, and ovl-dp's options."""
    ovs_kernel = rows.get("kernel.openvswitch")
    types = rows.get("ovs.datapath_types")
    out = []
    for mode, kind, ovs_type in (("vxlan", "vxlan", "vxlan"), ("gre", "gretap", "gre")):
        dev = rows.get(f"kernel.{kind}")
        check = f"recommend.{mode}"
        ovldp = f"ovl-dp run --mode {mode}"
        undetermined = [r.detail if r else "not checked" for r in (dev, ovs_kernel) if r is None or r.result == UNKNOWN]
        if dev is None or ovs_kernel is None or undetermined:
            why = undetermined[0]
            out.append(Row(check, UNKNOWN, f"cannot tell whether the kernel has {kind} and openvswitch: {why}"))
            continue
        linux = dev.result == YES
        ovs = ovs_kernel.result == YES and linux
        if ovs and types is not None and types.result == YES and "system" not in types.detail.split():
            ovs = False  # the module is there, but this vswitchd offers no kernel datapath
        if linux and ovs:
            out.append(
                Row(
                    check,
                    "kernel",
                    f"kernel: a {kind} device on a Linux bridge, an OVS type={ovs_type} port on the system datapath; "
                    "ovl-dp not needed",
                )
            )
        elif linux:
            out.append(
                Row(
                    check,
                    "both",
                    f"Linux bridge: the kernel's {kind} device; OVS bridge (no kernel datapath for it here): "
                    f"{ovldp} on a datapath_type=netdev bridge, {_offload_advice(rows, mode)}",
                )
            )
        else:
            out.append(
                Row(
                    check,
                    "ovl-dp",
                    f"no kernel {kind}: {ovldp} (Linux bridge, or OVS with datapath_type=netdev), "
                    f"{_offload_advice(rows, mode)}",
                )
            )
    return out


# ---------------------------------------------------------------------------- the command


def probe() -> list[Row]:
    """Every check, then the recommendations."""
    caps = effective_caps()
    rows = cap_rows(caps) + namespace_rows(caps) + socket_rows() + ovs_rows()
    return rows + recommend({r.check: r for r in rows})


def format_table(rows: Iterable[Row]) -> str:
    """Rows as an aligned table for humans: CHECK RESULT DETAIL."""
    rows = list(rows)
    wc = max([len("CHECK"), *(len(r.check) for r in rows)])
    wr = max([len("RESULT"), *(len(r.result) for r in rows)])
    lines = [f"{'CHECK':<{wc}}  {'RESULT':<{wr}}  DETAIL"]
    lines += [f"{r.check:<{wc}}  {r.result:<{wr}}  {r.detail}".rstrip() for r in rows]
    return "\n".join(lines)


def format_json(rows: Iterable[Row]) -> str:
    """Rows as a JSON list of {check, result, detail}."""
    return json.dumps([asdict(r) for r in rows], indent=2)


def main(as_json: bool = False) -> int:
    """`ovl-dp probe [--json]`: print the rows; always exit 0."""
    rows = probe()
    try:
        print(format_json(rows) if as_json else format_table(rows), flush=True)
    except BrokenPipeError:  # `ovl-dp probe | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
