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
from control.config import ConfigSource
from datapath import fdb
from datapath.config import BRIDGE_TYPES, INJECT_POLICIES, OFFLOAD_POLICIES, TX_RING_POLICIES, ConfigError
from datapath.encap import MODES
from datapath.errors import SetupError
from datapath.ether import format_mac, parse_mac

EXIT_USAGE = 2
CONTROL_COMMANDS = ("show", "fdb", "remote", "reload", "members")
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
LAB_MAX_HOSTS = 16  # `ovl-dp lab --etcd --hosts N`: each host is two namespaces and a daemon


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


def _inherit_or(name: str, lo: int, hi: int) -> Callable[[str], int | str]:
    """The word inherit, or a number in lo..hi."""

    def parse(text: str) -> int | str:
        return "inherit" if text == "inherit" else _ranged(name, lo, hi)(text)

    parse.__name__ = name
    return parse


def _mtu(text: str) -> int | str:
    return "auto" if text == "auto" else _number("MTU")(text)


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
    """`ovl-dp run`'s options; each one's dest is the configuration key it sets (datapath.config).

    Options that are not given stay out of the namespace (argument_default SUPPRESS), so that a
    configuration file's value holds unless the command line names the key.
    """
    run.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file: every option below as a key (tunnel.vni, fdb.static, ...); "
        "options given here override it; `ovl-dp reload` and SIGHUP re-read it",
    )
    run.add_argument(
        "--takeover",
        action="store_true",
        help="take over the TAP, sockets and FDB of the daemon running with this TAP (same options): "
        "it exits once this one forwards, and no frame is lost (an upgrade); SIGUSR2 to a daemon does the same",
    )
    run.add_argument("--mode", dest="tunnel.mode", choices=MODES, help="encapsulation")
    run.add_argument(
        "--remote",
        dest="remotes",
        action="append",
        metavar="IP",
        help="remote host's underlay IPv4 or IPv6 address; repeat for a full mesh (unknown/broadcast frames go "
        "to all; IPv4 and IPv6 remotes may be mixed)",
    )
    run.add_argument(
        "--local",
        dest="tunnel.local",
        action="append",
        metavar="IP",
        help="local underlay address, at most once per family (default: from the route to each remote)",
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
        metavar="BRIDGE",
        help="bridge to plug the TAP into (default br-int)",
    )
    run.add_argument(
        "--bridge-type",
        dest="bridge.type",
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
        type=_vlan_map,
        metavar="VLAN=ID",
        help="carry frames tagged VLAN untagged in VNI (VXLAN) or key (GRE) ID, and back; one learning and "
        "flooding scope per VLAN (repeatable)",
    )
    run.add_argument("--tap", dest="tap.name", metavar="NAME", help="TAP name (default ovl-vxlan / ovl-gre)")
    run.add_argument(
        "--tap-qdisc",
        dest="tap.qdisc",
        choices=("noqueue", "keep"),
        help="the TAP's root qdisc: noqueue (default; the TAP never queues, so a qdisc only costs) or keep the "
        "kernel's default",
    )
    run.add_argument(
        "--mtu",
        dest="tap.mtu",
        type=_mtu,
        metavar="MTU",
        help="TAP MTU; auto (default) = underlay MTU minus the overhead (VXLAN 50, GRE 38, +4 with key)",
    )
    run.add_argument(
        "--fdb-ageing",
        dest="fdb.ageing",
        type=_seconds,
        metavar="SECONDS",
        help="learned entries expire after this (default 300; 0 = never)",
    )
    run.add_argument(
        "--fdb-max",
        dest="fdb.max_entries",
        type=_number("--fdb-max"),
        metavar="N",
        help=f"FDB size cap, static entries included (default {fdb.DEFAULT_MAX_ENTRIES})",
    )
    run.add_argument(
        "--static",
        dest="fdb.static",
        action="append",
        type=_static,
        metavar="MAC[@VLAN]=REMOTE",
        help="static FDB entry (in VLAN, default untagged): never ages, never moved by learning (repeatable)",
    )
    run.add_argument(
        "--tos",
        dest="tunnel.tos",
        type=_inherit_or("--tos", 0, 255),
        metavar="inherit|N",
        help="outer DS field: N's DSCP bits (default 0), or inherit the inner packet's; the ECN field is always "
        "copied from the inner packet (RFC 6040), like the kernel's vxlan tos option",
    )
    run.add_argument(
        "--ttl",
        dest="tunnel.ttl",
        type=_inherit_or("--ttl", 1, 255),
        metavar="inherit|N",
        help="outer TTL: N (default 64), or inherit the inner TTL / hop limit (64 for non-IP frames)",
    )
    run.add_argument(
        "--df",
        dest="tunnel.df",
        choices=("set", "unset", "inherit"),
        help="outer IPv4 DF bit: set, unset, or inherit (DF for inner IPv4 with DF and for IPv6); default as the "
        "kernel's devices: unset for VXLAN (vxlan), set for GRE (gretap)",
    )
    run.add_argument(
        "--udp-csum",
        dest="tunnel.udp_csum",
        action="store_true",
        help="compute the outer UDP checksum over IPv4 (VXLAN; default 0 like the kernel and OVS; over IPv6 "
        "it is always computed)",
    )
    run.add_argument(
        "--udp6-zero-csum-tx",
        dest="tunnel.udp6_zero_csum_tx",
        action="store_true",
        help="VXLAN over IPv6: send UDP checksum 0 (RFC 6935; the kernel's udp6zerocsumtx; default: computed)",
    )
    run.add_argument(
        "--udp6-zero-csum-rx",
        dest="tunnel.udp6_zero_csum_rx",
        action="store_true",
        help="VXLAN over IPv6: accept UDP checksum 0 (the kernel's udp6zerocsumrx; default: dropped by the kernel)",
    )
    run.add_argument(
        "--pmtu-icmp-rate",
        dest="tunnel.pmtu_icmp_rate",
        type=_number("--pmtu-icmp-rate"),
        metavar="N",
        help="ICMP / ICMPv6 'too big' replies to inner senders per second, burst 10 (default 100; 0: none)",
    )
    run.add_argument(
        "--clamp-mss",
        dest="tunnel.clamp_mss",
        metavar="auto|N|off",
        help="lower the MSS option of TCP SYN / SYN-ACK crossing the tunnel (both ways) to what fits: auto = the "
        "tunnel MTU towards the remote minus IP and TCP headers, N = at most N (536..65495); off (default). For "
        "hosts whose MTU cannot be lowered and that get no ICMP 'too big'",
    )
    run.add_argument(
        "--offload",
        dest="offload.policy",
        choices=OFFLOAD_POLICIES,
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
        "--inject",
        dest="offload.inject",
        choices=INJECT_POLICIES,
        help="VXLAN, C path with TAP offloads: auto (default) sends TCP super-frames whole through an injection "
        "TAP <tap>-inj so that the kernel segments them (Linux 6.17+; sets that device up with a 169.254.255.x/32 "
        "address, accept_local, forwarding, rp_filter=2, and a FORWARD accept rule if the firewall drops by "
        "default; all undone on exit); off: segment them in C",
    )
    run.add_argument(
        "--inject6",
        dest="offload.inject6",
        choices=INJECT_POLICIES,
        help="with --inject auto and IPv6 remotes: auto (default) sends their TCP super-frames through the "
        "injection TAP too (IPv6 on that device without an address, net.ipv6.conf.<inj>.force_forwarding=1, "
        "Linux 6.17+); off: segment those in C and keep IPv6 off on the injection TAP",
    )
    run.add_argument(
        "--no-rx-super",
        dest="offload.rx_super",
        action="store_false",
        help="C path: do not receive tunnel super-packets (64 KiB datagrams of a peer whose kernel did not "
        "segment them, e.g. over veth) whole; they are then dropped as truncated",
    )
    run.add_argument(
        "--tx-ring",
        dest="offload.tx_ring",
        choices=TX_RING_POLICIES,
        help="C path: send outer packets through an AF_PACKET TX ring per egress device (next hop resolved "
        "via rtnetlink); auto (default) where the kernel allows, off: the raw socket. The ring bypasses "
        "netfilter OUTPUT/POSTROUTING and the qdisc (filter tunnel packets in a netdev egress chain)",
    )
    run.add_argument(
        "--no-fast-path",
        dest="offload.fast_path",
        action="store_false",
        help="use the pure-Python datapath instead of C",
    )
    run.add_argument(
        "--no-dp-thread",
        dest="offload.dp_thread",
        action="store_false",
        help="C path: run the batches from the asyncio loop instead of a data-path thread of their own",
    )
    run.add_argument(
        "--cpu",
        dest="offload.cpu",
        type=int,
        metavar="N",
        help="pin the data-path thread to CPU N (default: not pinned)",
    )
    # issue 12: membership on etcd (the group `membership` of the configuration file)
    run.add_argument(
        "--etcd",
        dest="membership.etcd",
        action="append",
        metavar="URL[,URL...]",
        help="join a net on etcd: http://HOST:PORT endpoints (tried in turn when one fails); the members of "
        "--net become remotes and leave when their lease goes; static --remotes stay. Needs --net. For an etcd "
        "that requires TLS see the README (etcd's grpc-proxy on 127.0.0.1)",
    )
    run.add_argument(
        "--net",
        dest="membership.net",
        metavar="NAME",
        help="the net to join on --etcd (a-z 0-9 . _ -, up to 63); its config key (mode, VNI/key, port) must agree "
        "with ours, or is created from ours",
    )
    run.add_argument(
        "--lease-ttl",
        dest="membership.lease_ttl",
        type=_seconds,
        metavar="S",
        help="seconds our member key outlives a crash of this daemon (default 15; 2..3600)",
    )
    run.add_argument(
        "--keepalive",
        dest="membership.keepalive",
        type=_seconds,
        metavar="S",
        help="refresh our lease every S seconds (default 5; 0.5 up to half of --lease-ttl)",
    )
    run.add_argument(
        "--advertise",
        dest="membership.address",
        metavar="IP",
        help="the underlay address published as our member key (default: --local of the first endpoint's family, "
        "else our source address on the route to the first --etcd endpoint)",
    )
    run.add_argument(
        "--metrics",
        dest="metrics",
        type=_metrics_address,
        metavar="[ADDR:]PORT",
        help="serve Prometheus /metrics and /healthz on ADDR:PORT (a bare PORT: 127.0.0.1; IPv6 as [::1]:PORT; "
        "default: off)",
    )


def _metrics_address(text: str) -> tuple[str, int]:
    from control.metrics import parse_listen

    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mac_vlan(text: str) -> tuple[bytes, int]:
    """MAC or MAC@VLAN."""
    mac, at, vlan_text = text.partition("@")
    try:
        raw = parse_mac(mac)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return raw, _number("VLAN")(vlan_text) if at else 0


def _control_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    """The commands that ask a running daemon over its control socket (control/ctl.py)."""
    daemon = _Parser(add_help=False)
    # SUPPRESS: a subcommand's own --tap must not reset one given before the subcommand.
    daemon.add_argument("--tap", default=argparse.SUPPRESS, help="the daemon's TAP (needed when several run here)")
    listing = _Parser(add_help=False)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    where = " of the daemon running in this network namespace (ip netns exec HOST ... for another)"
    sub.add_parser("show", parents=[daemon, listing], help="print a running daemon's counters",
                   description="Print the counters" + where + ".")  # fmt: skip
    fdb_cmd = sub.add_parser(
        "fdb",
        parents=[daemon, listing],
        help="print or change a running daemon's MAC table",
        description="Without a subcommand, print the MAC table" + where + ". add/del change static entries, "
        "flush forgets entries (learned and static), all or those behind one remote.",
    )
    fdb_sub = fdb_cmd.add_subparsers(dest="fdb_op", parser_class=_Parser)
    add = fdb_sub.add_parser("add", parents=[daemon], help="add a static entry: MAC[@VLAN] REMOTE")
    add.add_argument("mac", type=_mac_vlan, metavar="MAC[@VLAN]")
    add.add_argument("remote", metavar="REMOTE", help="one of the daemon's remotes")
    delete = fdb_sub.add_parser("del", parents=[daemon], help="remove an entry: MAC[@VLAN]")
    delete.add_argument("mac", type=_mac_vlan, metavar="MAC[@VLAN]")
    flush = fdb_sub.add_parser("flush", parents=[daemon], help="forget entries (all, or --remote IP's)")
    flush.add_argument("--remote", metavar="IP", help="only the entries behind this remote")
    remote = sub.add_parser(
        "remote",
        parents=[daemon],
        help="list, add or remove a running daemon's remotes",
        description="Change the remotes" + where + " while traffic flows: a new remote joins flooding at "
        "once, a removed one leaves it and the MACs learned behind it are forgotten.",
    )
    remote_sub = remote.add_subparsers(dest="remote_op", required=True, parser_class=_Parser)
    for op, what in (("add", "add a remote"), ("del", "remove a remote")):
        cmd = remote_sub.add_parser(op, parents=[daemon], help=what)
        cmd.add_argument("addr", metavar="IP", help="the remote host's underlay address")
    remote_sub.add_parser("list", parents=[daemon, listing], help="the remotes with their counters and liveness")
    sub.add_parser(
        "members",
        parents=[daemon, listing],
        help="the members of the daemon's net on etcd",
        description="Print the members of the etcd net" + where + ": address, host, since when this daemon "
        "has it, lease or refusal, and the traffic seen from it (packets, last received); the header line says "
        "which etcd endpoint is in use, the connection state and our lease.",
    )
    sub.add_parser(
        "reload",
        parents=[daemon],
        help="re-read the daemon's configuration file and apply the differences",
        description="Re-read the --config file" + where + " and apply what changed: remotes, static entries, "
        "FDB ageing and size. A change that needs a restart (mode, VNI/key, port, TAP) is refused and the "
        "daemon keeps its old settings. SIGHUP does the same.",
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
        argument_default=argparse.SUPPRESS,
        help="run the datapath (until SIGINT/SIGTERM)",
        description="Create a TAP, plug it into a bridge and carry its frames to the remotes in VXLAN or GRE, "
        "learning which remote each MAC lives behind. SIGUSR1 logs counters and the FDB.",
    )
    _run_arguments(run)
    _control_commands(sub)

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
        help="the two-host demo in network namespaces (--etcd: N hosts joining through etcd)",
        description="Build two hosts and two containers in network namespaces, each host with a bridge br-int "
        "(Open vSwitch, userspace datapath, containers on VLAN 20 — the seed scenario — or a Linux bridge), run "
        "ovl-dp on each host, ping and iperf3 through the tunnel, print a report and tear everything down. "
        "With --etcd: N hosts that join through a real etcd (no --remote), one killed and dropped by the others.",
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
        "--seconds", type=_ranged("--seconds", 1, 60), help="iperf3 duration in seconds (default 3; not with --etcd)"
    )
    lab.add_argument("--no-fast-path", action="store_true", help="run the daemons with the pure-Python datapath")
    lab.add_argument(
        "--underlay",
        choices=("ipv4", "ipv6"),
        default="ipv4",
        help="underlay address family between the hosts (default ipv4: 192.0.2.0/24; ipv6: fd00:192:2::/64)",
    )
    lab.add_argument(
        "--etcd",
        action="store_true",
        help="membership on etcd: a real etcd in its own namespace on the underlay, the hosts join by themselves "
        "(no --remote), one host's daemon is killed and dropped by the others; ping only, no iperf3",
    )
    lab.add_argument(
        "--hosts",
        type=_ranged("--hosts", 2, LAB_MAX_HOSTS),
        help="how many hosts (default 2; with --etcd 3, at least 3: one is killed, two must remain)",
    )
    return p


def check_lab_args(args: argparse.Namespace) -> None:
    """`ovl-dp lab`: --hosts and --etcd agree (UsageError if not); fills in the default host count."""
    if not args.etcd:
        if args.hosts not in (None, 2):
            raise UsageError(
                f"--hosts {args.hosts} needs --etcd: the seed scenario has 2 hosts (see ovl-dp lab --help)"
            )
        args.hosts = 2
        if args.seconds is None:
            args.seconds = 3
        return
    if args.hosts is None:
        args.hosts = 3
    if args.hosts < 3:
        raise UsageError(
            f"--etcd needs --hosts 3 or more, not {args.hosts}: one host is killed and two must remain "
            "(see ovl-dp lab --help)"
        )
    if args.seconds is not None:
        raise UsageError(
            "--seconds is the two-host demo's iperf3 time; the --etcd lab only pings (see ovl-dp lab --help)"
        )


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


def run_source(args: argparse.Namespace) -> ConfigSource:
    """Where `ovl-dp run ARGS` takes its configuration from: --config FILE, and the options given over it."""
    keys = {k: v for k, v in vars(args).items() if "." in k or k == "remotes"}
    config_file = getattr(args, "config", None)
    return ConfigSource(keys, Path(config_file) if config_file else None)


def _control_request(args: argparse.Namespace) -> tuple[str, dict[str, object]]:
    """The control-socket request (command, arguments) of a control command line."""
    if args.command == "fdb" and getattr(args, "fdb_op", None):
        req: dict[str, object] = {"op": args.fdb_op}
        if args.fdb_op in ("add", "del"):
            req["mac"], req["vlan"] = format_mac(args.mac[0]), args.mac[1]
        if args.fdb_op == "add":
            req["remote"] = args.remote
        if args.fdb_op == "flush":
            req["remote"] = args.remote
        return "fdb", req
    if args.command == "remote":
        return "remote", {"op": args.remote_op, **({"addr": args.addr} if args.remote_op != "list" else {})}
    return args.command, {}


def _query(args: argparse.Namespace) -> int:
    from control import ctl
    from control.report import format_counters, format_fdb, format_members, format_remotes

    tap = getattr(args, "tap", None)
    if tap is None:
        found = ctl.running()
        if not found:
            raise SetupError("no ovl-dp daemon runs in this network namespace")
        if len(found) > 1:
            raise SetupError(f"several daemons run here ({', '.join(found)}): pick one with --tap")
        tap = found[0]
    cmd, req = _control_request(args)
    try:
        result = ctl.request(tap, cmd, req)
    except OSError:
        raise SetupError(f"no ovl-dp daemon with TAP {tap} answers in this network namespace") from None
    except RuntimeError as exc:
        raise SetupError(str(exc)) from None
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2))
    elif cmd == "show":
        assert isinstance(result, dict)
        print(f"{result['tap']} ({result['mode']})\n{format_counters(result)}")
        took = result.get("takeover")
        if isinstance(took, dict):  # counters since the takeover; the predecessor's final ones in --json
            print(f"takeover: PID {result.get('pid')} took over from PID {took.get('from_pid')} "
                  "(counters since then; its final ones: show --json, takeover.previous)")  # fmt: skip
    elif cmd == "fdb" and not req:
        assert isinstance(result, list)
        print(format_fdb(result))
    elif cmd == "remote" and req["op"] == "list":
        assert isinstance(result, list)
        print(format_remotes(result))
    elif cmd == "members":
        assert isinstance(result, dict)
        print(format_members(result))
    elif cmd == "reload":
        assert isinstance(result, dict)
        print(f"reloaded {result['file']}: {'; '.join(result['applied']) or 'nothing changed'}")
    else:
        print(result)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ovl-dp` console script."""
    parser = build_parser()
    source: ConfigSource | None = None
    try:
        args = parser.parse_args(argv)
        logs.setup(args.verbose, args.log_format)
        if args.command in CONTROL_COMMANDS:
            return _query(args)
        if args.command == "probe":
            from control import probe

            return probe.main(args.json)
        if args.command == "run":
            source = run_source(args)
            cfg = source.load()
        if args.command == "lab":
            check_lab_args(args)
        problem = _privilege_problem()
        if problem:
            raise SetupError(problem)
        if args.command == "lab":
            from control.lab import demo as lab

            return lab.main(args)
        from control import daemon

        assert source is not None  # the run command made it
        metrics_at = source.metrics_at(getattr(args, "metrics", None))
        return daemon.run(cfg, source, metrics_at, take_over=getattr(args, "takeover", False))
    except ConfigError as exc:
        names = source.names(option_names(parser)) if source is not None else option_names(parser)
        print(f"ovl-dp: error: {exc.render(names)} (see ovl-dp run --help)", file=sys.stderr)
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
