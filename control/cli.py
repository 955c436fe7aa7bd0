"""The `ovl-dp` command line: argument parsing and validation, one-line errors, exit codes.

Exit codes: 0 success, 1 runtime failure (e.g. the lab's ping failed),
2 usage or setup error (printed as one line, never a traceback).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from control import logs
from datapath import fdb
from datapath.config import BRIDGE_TYPES, OFFLOAD_POLICIES, Config, ConfigError, from_keys
from datapath.encap import MODES
from datapath.errors import SetupError
from datapath.ether import parse_mac

EXIT_USAGE = 2
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


class UsageError(Exception):
    """A bad argument, reported as one line with exit code 2."""


class _VersionShown(Exception):
    """--version was printed; main() returns 0."""


def version() -> str:
    """The installed package's version, or pyproject.toml's when running from a checkout that is not installed."""
    try:
        return importlib.metadata.version("ovl-dp")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        with (Path(__file__).resolve().parents[1] / "pyproject.toml").open("rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        print(f"ovl-dp {version()}")
        raise _VersionShown


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _number(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            return int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} {text!r} is not a number") from None

    parse.__name__ = name
    return parse


def _ranged(name: str, lo: int, hi: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _number(name)(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} {value} is out of range {lo}..{hi}")
        return value

    parse.__name__ = name
    return parse


def _mtu(text: str) -> int | None:
    return None if text == "auto" else _number("MTU")(text)


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None


def _static(text: str) -> tuple[bytes, str, int]:
    """MAC=REMOTE, or MAC@VLAN=REMOTE for a MAC in VLAN (an 802.1Q VID as seen on the bridge)."""
    left, sep, remote = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--static {text!r}: expected MAC=REMOTE or MAC@VLAN=REMOTE")
    mac, at, vlan_text = left.partition("@")
    try:
        raw = parse_mac(mac)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return raw, remote, _number("VLAN")(vlan_text) if at else 0


def _vlan_map(text: str) -> tuple[int, int]:
    vlan, sep, ident = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--vlan-map {text!r}: expected VLAN=VNI (or VLAN=KEY for GRE)")
    return _number("VLAN")(vlan), _number("tunnel id")(ident)


def _run_arguments(run: argparse.ArgumentParser) -> None:
    """`ovl-dp run`'s options; each one's dest is the configuration key it sets (datapath.config)."""
    run.add_argument("--mode", dest="tunnel.mode", required=True, choices=MODES, help="encapsulation")
    run.add_argument(
        "--remote",
        dest="remotes",
        action="append",
        required=True,
        metavar="IP",
        help="remote host's underlay IPv4 address; repeat for a full mesh (unknown/broadcast frames go to all)",
    )
    run.add_argument(
        "--local", dest="tunnel.local", metavar="IP", help="local underlay address (default: from the route)"
    )
    run.add_argument(
        "--vni", dest="tunnel.vni", type=_number("VNI"), metavar="VNI", help="VXLAN network identifier (default 0)"
    )
    run.add_argument(
        "--key",
        dest="tunnel.key",
        type=_number("key"),
        metavar="KEY",
        help="GRE key (default: no key field, like OVS without options:key)",
    )
    run.add_argument(
        "--port",
        dest="tunnel.port",
        type=_number("port"),
        metavar="PORT",
        help="VXLAN UDP destination port (default 4789)",
    )
    run.add_argument(
        "--bridge",
        dest="bridge.name",
        default="br-int",
        metavar="BRIDGE",
        help="bridge to plug the TAP into (default br-int)",
    )
    run.add_argument(
        "--bridge-type",
        dest="bridge.type",
        default="auto",
        choices=BRIDGE_TYPES,
        help="auto (default): whatever BRIDGE is; linux; ovs; none: leave the TAP unattached",
    )
    run.add_argument(
        "--ovsdb",
        dest="bridge.ovsdb",
        metavar="DB",
        help="Open vSwitch database, e.g. unix:/run/openvswitch/db.sock (default: ovs-vsctl's, honouring OVS_RUNDIR)",
    )
    run.add_argument(
        "--tag",
        dest="bridge.tag",
        type=_number("--tag"),
        metavar="VLAN",
        help="OVS: make the TAP an access port of VLAN (default: a trunk, tagged frames cross tagged)",
    )
    run.add_argument(
        "--vlan-map",
        dest="tunnel.vlan_map",
        action="append",
        default=[],
        type=_vlan_map,
        metavar="VLAN=ID",
        help="carry frames tagged VLAN untagged in VNI (VXLAN) or key (GRE) ID, and back; one learning and "
        "flooding scope per VLAN (repeatable)",
    )
    run.add_argument("--tap", dest="tap.name", metavar="NAME", help="TAP name (default ovl-vxlan / ovl-gre)")
    run.add_argument(
        "--mtu",
        dest="tap.mtu",
        type=_mtu,
        metavar="MTU",
        default="auto",
        help="TAP MTU; auto (default) = underlay MTU minus the overhead (VXLAN 50, GRE 38, +4 with key)",
    )
    run.add_argument(
        "--fdb-ageing",
        dest="fdb.ageing",
        type=_seconds,
        default=fdb.DEFAULT_AGEING,
        metavar="SECONDS",
        help="learned entries expire after this (default 300; 0 = never)",
    )
    run.add_argument(
        "--fdb-max",
        dest="fdb.max_entries",
        type=_number("--fdb-max"),
        default=fdb.DEFAULT_MAX_ENTRIES,
        metavar="N",
        help=f"FDB size cap, static entries included (default {fdb.DEFAULT_MAX_ENTRIES})",
    )
    run.add_argument(
        "--static",
        dest="fdb.static",
        action="append",
        default=[],
        type=_static,
        metavar="MAC[@VLAN]=REMOTE",
        help="static FDB entry (in VLAN, default untagged): never ages, never moved by learning (repeatable)",
    )
    run.add_argument(
        "--udp-csum",
        dest="tunnel.udp_csum",
        action="store_true",
        help="compute the outer UDP checksum (VXLAN; default 0 like the kernel and OVS)",
    )
    run.add_argument(
        "--offload",
        dest="offload.policy",
        choices=OFFLOAD_POLICIES,
        default="auto",
        help="TAP offloads (C fast path): TSO super-frames from the bridge are segmented in C, received TCP "
        "segments coalesced into super-frames; auto (default): coalescing only towards a Linux bridge",
    )
    run.add_argument(
        "--udp-gso",
        dest="offload.udp_gso",
        action="store_true",
        help="VXLAN, C path: send many datagrams per call (UDP_SEGMENT) through a pool of 8 UDP sockets; "
        "several times faster, but sends outer UDP checksums and takes the source port from the pool's 8",
    )
    run.add_argument(
        "--no-fast-path",
        dest="offload.fast_path",
        action="store_false",
        help="use the pure-Python datapath instead of C",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole `ovl-dp` argument parser."""
    p = _Parser(
        prog="ovl-dp",
        description="Userspace L2 tunnel datapath: a TAP port on a bridge, carried to remote hosts in VXLAN or GRE.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--log-format", choices=logs.FORMATS, default="text", help="text (default) or json: one object per line"
    )
    p.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run the datapath (until SIGINT/SIGTERM)",
        description="Create a TAP, plug it into a bridge and carry its frames to the remotes in VXLAN or GRE, "
        "learning which remote each MAC lives behind. SIGUSR1 logs counters and the FDB.",
    )
    _run_arguments(run)
    for name, what in (("show", "counters"), ("fdb", "the MAC table")):
        cmd = sub.add_parser(
            name,
            help=f"print a running daemon's {what}",
            description=f"Print {what} of a daemon "
            "running in this network namespace (use ip netns exec HOST for another).",
        )
        cmd.add_argument("--tap", help="the daemon's TAP (needed when several run here)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")

    probe = sub.add_parser(
        "probe",
        help="what this kernel and host can do for L2 tunnels",
        description="Try what this kernel can do for L2 tunnels (kernel vxlan/gretap/geneve, openvswitch, TAP "
        "virtio offloads, UDP GSO/GRO, raw sockets, Open vSwitch), in a private network namespace that is "
        "gone afterwards, and recommend per mode the kernel's own port or ovl-dp with which options.",
    )
    probe.add_argument("--json", action="store_true", help="a JSON list of {check, result, detail}")

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


def option_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Configuration key -> the `ovl-dp run` option that sets it (for messages about a key)."""
    run = _subparser(parser, "run")
    return {
        a.dest: a.option_strings[0] for a in run._actions if (a.option_strings and "." in a.dest) or a.dest == "remotes"
    }


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[name]
            return sub
    raise KeyError(name)


def run_config(args: argparse.Namespace) -> Config:
    """The validated configuration of `ovl-dp run ARGS` (ConfigError names the keys)."""
    keys = {k: v for k, v in vars(args).items() if "." in k or k == "remotes"}
    return from_keys(keys)


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
        logs.setup(args.verbose, args.log_format)
        if args.command in ("show", "fdb"):
            return _query(args)
        if args.command == "probe":
            from control import probe

            return probe.main(args.json)
        cfg = run_config(args) if args.command == "run" else None
        problem = _privilege_problem()
        if problem:
            raise SetupError(problem)
        if cfg is None:
            from control.lab import demo as lab

            return lab.main(args)
        from control import daemon

        return daemon.run(cfg)
    except ConfigError as exc:
        print(f"ovl-dp: error: {exc.render(option_names(parser))} (see ovl-dp run --help)", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, SetupError) as exc:
        print(f"ovl-dp: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except _VersionShown:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
