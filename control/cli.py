"""The `ovl-dp` command line: argument parsing and validation, one-line errors, exit codes.

Exit codes: 0 success, 1 runtime failure (e.g. the lab's ping failed),
2 usage or setup error (printed as one line, never a traceback).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from datapath import fdb, gre, vxlan
from datapath.config import MAX_REMOTES, MODES
from datapath.errors import SetupError
from datapath.ether import parse_mac

EXIT_USAGE = 2
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


class UsageError(Exception):
    """A bad argument, reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _ipv4(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None
    if addr.version != 4:
        raise argparse.ArgumentTypeError(f"{text}: IPv6 underlays are not supported yet, use an IPv4 address")
    if addr.is_multicast or addr.is_unspecified or text == "255.255.255.255":
        raise argparse.ArgumentTypeError(f"{text} is not a unicast address")
    return str(addr)


def _ranged(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not a number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} {value} is out of range {lo}..{hi}")
        return value

    parse.__name__ = name
    return parse


def _mtu(text: str) -> int | None:
    if text == "auto":
        return None
    return _ranged("MTU", 68, 65000)(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= 10**6:
        raise argparse.ArgumentTypeError(f"ageing {value} must be between 0 and 1000000 seconds")
    return value


def _static(text: str) -> tuple[bytes, str, int]:
    """MAC=REMOTE, or MAC@VLAN=REMOTE for a MAC in VLAN (an 802.1Q VID as seen on the bridge)."""
    left, sep, remote = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--static {text!r}: expected MAC=REMOTE or MAC@VLAN=REMOTE")
    mac, at, vlan_text = left.partition("@")
    vlan = _ranged("VLAN", 0, 4094)(vlan_text) if at else 0
    try:
        raw = parse_mac(mac)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if raw[0] & 1 or not any(raw):
        raise argparse.ArgumentTypeError(f"--static {mac}: must be a unicast, nonzero MAC")
    return raw, _ipv4(remote), vlan


def _vlan_map(text: str) -> tuple[int, int]:
    vlan, sep, ident = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--vlan-map {text!r}: expected VLAN=VNI (or VLAN=KEY for GRE)")
    return _ranged("VLAN", 1, 4094)(vlan), _ranged("tunnel id", 0, gre.KEY_MAX)(ident)


def _tap_name(text: str) -> str:
    if not 0 < len(text) < 16 or "/" in text or text.strip() != text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"--tap {text!r}: interface names are 1-15 characters without '/' or spaces")
    return text


def build_parser() -> argparse.ArgumentParser:
    """The whole `ovl-dp` argument parser."""
    p = _Parser(
        prog="ovl-dp",
        description="Userspace L2 tunnel datapath: a TAP port on a bridge, carried to remote hosts in VXLAN or GRE.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run the datapath (until SIGINT/SIGTERM)",
        description="Create a TAP, plug it into a bridge and carry its frames to the remotes in VXLAN or GRE, "
        "learning which remote each MAC lives behind. SIGUSR1 logs counters and the FDB.",
    )
    run.add_argument("--mode", required=True, choices=MODES, help="encapsulation")
    run.add_argument(
        "--remote",
        action="append",
        required=True,
        type=_ipv4,
        metavar="IP",
        help="remote host's underlay IPv4 address; repeat for a full mesh (unknown/broadcast frames go to all)",
    )
    run.add_argument("--local", type=_ipv4, metavar="IP", help="local underlay address (default: from the route)")
    run.add_argument("--vni", type=_ranged("VNI", 0, vxlan.VNI_MAX), help="VXLAN network identifier (default 0)")
    run.add_argument(
        "--key",
        type=_ranged("key", 0, gre.KEY_MAX),
        help="GRE key (default: no key field, like OVS without options:key)",
    )
    run.add_argument("--port", type=_ranged("port", 1, 65535), help="VXLAN UDP destination port (default 4789)")
    run.add_argument("--bridge", default="br-int", help="bridge to plug the TAP into (default br-int)")
    run.add_argument(
        "--bridge-type",
        default="auto",
        choices=("auto", "linux", "ovs", "none"),
        help="auto (default): whatever BRIDGE is; linux; ovs; none: leave the TAP unattached",
    )
    run.add_argument(
        "--ovsdb",
        metavar="DB",
        help="Open vSwitch database, e.g. unix:/run/openvswitch/db.sock (default: ovs-vsctl's, honouring OVS_RUNDIR)",
    )
    run.add_argument(
        "--tag",
        type=_ranged("--tag", 1, 4094),
        metavar="VLAN",
        help="OVS: make the TAP an access port of VLAN (default: a trunk, tagged frames cross tagged)",
    )
    run.add_argument(
        "--vlan-map",
        action="append",
        default=[],
        type=_vlan_map,
        metavar="VLAN=ID",
        help="carry frames tagged VLAN untagged in VNI (VXLAN) or key (GRE) ID, and back; one learning and "
        "flooding scope per VLAN (repeatable)",
    )
    run.add_argument("--tap", type=_tap_name, help="TAP name (default ovl-vxlan / ovl-gre)")
    run.add_argument(
        "--mtu",
        type=_mtu,
        default="auto",
        help="TAP MTU; auto (default) = underlay MTU minus the overhead (VXLAN 50, GRE 38, +4 with key)",
    )
    run.add_argument(
        "--fdb-ageing",
        type=_seconds,
        default=fdb.DEFAULT_AGEING,
        metavar="SECONDS",
        help="learned entries expire after this (default 300; 0 = never)",
    )
    run.add_argument(
        "--fdb-max",
        type=_ranged("--fdb-max", 1, 1 << 20),
        default=fdb.DEFAULT_MAX_ENTRIES,
        metavar="N",
        help=f"FDB size cap, static entries included (default {fdb.DEFAULT_MAX_ENTRIES})",
    )
    run.add_argument(
        "--static",
        action="append",
        default=[],
        type=_static,
        metavar="MAC[@VLAN]=REMOTE",
        help="static FDB entry (in VLAN, default untagged): never ages, never moved by learning (repeatable)",
    )
    run.add_argument(
        "--udp-csum",
        action="store_true",
        help="compute the outer UDP checksum (VXLAN; default 0 like the kernel and OVS)",
    )
    run.add_argument(
        "--offload",
        choices=("auto", "on", "off"),
        default="auto",
        help="TAP offloads (C fast path): TSO super-frames from the bridge are segmented in C, received TCP "
        "segments coalesced into super-frames; auto (default): coalescing only towards a Linux bridge",
    )
    run.add_argument(
        "--udp-gso",
        action="store_true",
        help="VXLAN, C path: send many datagrams per call (UDP_SEGMENT) through a pool of 8 UDP sockets; "
        "several times faster, but sends outer UDP checksums and takes the source port from the pool's 8",
    )
    run.add_argument("--no-fast-path", action="store_true", help="use the pure-Python datapath instead of C")

    for name, what in (("show", "counters"), ("fdb", "the MAC table")):
        cmd = sub.add_parser(
            name,
            help=f"print a running daemon's {what}",
            description=f"Print {what} of a daemon "
            "running in this network namespace (use ip netns exec HOST for another).",
        )
        cmd.add_argument("--tap", help="the daemon's TAP (needed when several run here)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")

    lab = sub.add_parser(
        "lab",
        help="the two-host demo in network namespaces",
        description="Build two hosts and two containers in network namespaces, each host with a bridge br-int "
        "(Open vSwitch, userspace datapath, containers on VLAN 20 — the seed scenario — or a Linux bridge), run "
        "ovl-dp on each host, ping and iperf3 through the tunnel, print a report and tear everything down.",
    )
    lab.add_argument(
        "--mode", choices=(*MODES, "both"), default="both", help="which tunnel(s) to demonstrate (default both)"
    )
    lab.add_argument(
        "--bridge-type",
        choices=("auto", "linux", "ovs"),
        default="auto",
        help="bridge on the lab hosts (default auto: ovs when Open vSwitch is installed, else linux)",
    )
    lab.add_argument(
        "--seconds", type=_ranged("--seconds", 1, 60), default=3, help="iperf3 duration in seconds (default 3)"
    )
    lab.add_argument("--no-fast-path", action="store_true", help="run the daemons with the pure-Python datapath")
    return p


def _privilege_problem() -> str | None:
    """Why this process cannot create TAPs and raw sockets, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                caps = int(line.split()[1], 16)
                break
        else:
            return None
    except OSError:
        return None
    missing = [n for n, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW)) if not caps >> bit & 1]
    if missing:
        return f"needs {' and '.join(missing)}: run as root (sudo ovl-dp ...)"
    return None


def _run_options(args: argparse.Namespace) -> object:
    from control.config import RunOptions

    if args.mode == "vxlan" and args.key is not None:
        raise UsageError("--key is for --mode gre; VXLAN uses --vni")
    if args.mode == "gre" and (args.vni is not None or args.port is not None):
        raise UsageError("--vni and --port are for --mode vxlan; GRE uses --key")
    if args.mode == "gre" and (args.udp_csum or args.udp_gso):
        raise UsageError("--udp-csum and --udp-gso are for --mode vxlan")
    if args.udp_gso and (args.no_fast_path or args.offload == "off"):
        raise UsageError("--udp-gso needs the C fast path with offloads (not --no-fast-path / --offload off)")
    if args.tag is not None and args.bridge_type not in ("ovs", "auto"):
        raise UsageError("--tag is for Open vSwitch bridges (--bridge-type ovs)")
    vlans = [v for v, _ in args.vlan_map]
    ids = [i for _, i in args.vlan_map]
    if len(set(vlans)) != len(vlans) or len(set(ids)) != len(ids):
        raise UsageError("--vlan-map: each VLAN and each VNI/key may be mapped once")
    if args.mode == "vxlan" and any(i > vxlan.VNI_MAX for i in ids):
        raise UsageError(f"--vlan-map: a VNI is at most {vxlan.VNI_MAX}")
    base = (args.vni or 0) if args.mode == "vxlan" else (args.key or 0)
    if base in ids:
        raise UsageError(f"--vlan-map: {base} is the base {'VNI' if args.mode == 'vxlan' else 'key'} already")
    if args.tag is not None and args.vlan_map:
        raise UsageError("--tag and --vlan-map exclude each other: an access port carries no VLAN tags")
    if len(set(args.remote)) != len(args.remote):
        raise UsageError("a --remote is given twice")
    if len(args.remote) > MAX_REMOTES:
        raise UsageError(f"at most {MAX_REMOTES} remotes are supported")
    if args.local is not None and args.local in args.remote:
        raise UsageError(f"--remote {args.local} equals --local: a tunnel needs another host")
    return RunOptions(
        mode=args.mode,
        remotes=tuple(args.remote),
        local=args.local,
        vni=args.vni or 0,
        key=args.key,
        port=args.port or vxlan.VXLAN_PORT,
        bridge=args.bridge,
        bridge_type=args.bridge_type,
        tap=args.tap,
        mtu=args.mtu,
        fdb_ageing=args.fdb_ageing,
        fdb_max=args.fdb_max,
        statics=tuple(args.static),
        udp_csum=args.udp_csum,
        fast_path=not args.no_fast_path,
        ovsdb=args.ovsdb,
        tag=args.tag,
        vlan_map=tuple(args.vlan_map),
        offload=args.offload,
        udp_gso=args.udp_gso,
    )


def _query(args: argparse.Namespace) -> int:
    from control import ctl
    from control.report import format_counters, format_fdb

    tap = args.tap
    if tap is None:
        found = ctl.running()
        if not found:
            raise SetupError("no ovl-dp daemon runs in this network namespace")
        if len(found) > 1:
            raise SetupError(f"several daemons run here ({', '.join(found)}): pick one with --tap")
        tap = found[0]
    try:
        result = ctl.request(tap, args.command)
    except OSError:
        raise SetupError(f"no ovl-dp daemon with TAP {tap} answers in this network namespace") from None
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.command == "show":
        assert isinstance(result, dict)
        print(f"{result['tap']} ({result['mode']})\n{format_counters(result)}")
    else:
        assert isinstance(result, list)
        print(format_fdb(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ovl-dp` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s ovl-dp[%(process)d] %(levelname)s %(message)s",
            stream=sys.stderr,
        )
        if args.command in ("show", "fdb"):
            return _query(args)
        problem = _privilege_problem()
        if problem:
            raise SetupError(problem)
        if args.command == "lab":
            from control.lab import demo as lab

            return lab.main(args)
        from control import daemon

        return daemon.run(_run_options(args))  # type: ignore[arg-type]
    except (UsageError, SetupError) as exc:
        print(f"ovl-dp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
