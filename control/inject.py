"""What the host needs so that the injection TAP's frames are forwarded to the underlay.

The C path writes VXLAN super-frames into the injection TAP (datapath/io/inject.py) as if
they came in from a wire; the kernel must route them out of the underlay. On the TAP
device only (no global setting), checked one by one on Linux 6.18 (notes/issue10-research.md):

- no IPv6 on it (``disable_ipv6``, ``addr_gen_mode`` none: no link-local address, no
  router solicitations), set before the link goes up; with IPv6 remotes (issue 11) instead IPv6
  on, without an address (``addr_gen_mode`` none), DAD, autoconfiguration, RAs or router
  solicitations, and ``net.ipv6.conf.<inj>.force_forwarding=1`` (Linux 6.17+: forwarding from
  that device only; the global ``all.forwarding`` is never touched). A kernel without it keeps
  IPv6 off there: the IPv6 remotes' super-frames are segmented in C (logged). IPv6 has no
  accept_local or rp_filter: a packet from one of our own addresses is forwarded as it is;
- ``net.ipv4.conf.<inj>.accept_local=1`` (the outer source is one of our own addresses),
  ``forwarding=1``, ``rp_filter=2`` plus a /32 address (strict or no-address reverse-path
  filtering drops the frames), the address from 169.254.255.0/24 (RFC 3927 keeps that /24
  out of autoconfiguration, so no neighbour on a link has it) and none the host has;
- the link up;
- and only where the host's firewall drops forwarded packets by default (an nftables
  ``forward`` hook chain with policy drop, as Docker makes; iptables-legacy's FORWARD with
  policy DROP, asked only where /proc/net/ip_tables_names lists the filter table; with IPv6 remotes
  also ip6 chains and ip6tables-legacy), an accept rule ``iifname <inj> udp dport <port>`` inserted at the top of
  that chain (nftables: with the comment ``ovl-dp <inj>``, by which it is found when nft does
  not echo its handle). Where nftables has ip/inet tables but the nft binary is missing (Docker
  through iptables-nft on a host without the nftables package), the chains cannot be read and
  the host is not set up at all: SetupError, C segmentation.

Every change is logged (``host changes: ...``). The device's settings vanish with the
device when the engine closes it; the firewall rules are deleted (by handle) by
:meth:`HostSetup.undo`, which the daemon calls on every way out.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pyroute2 import IPRoute
from pyroute2.nftables.main import NFTables

from datapath.errors import SetupError

log = logging.getLogger("ovl-dp")

ADDR_NET = ipaddress.IPv4Network("169.254.255.0/24")
METADATA = ipaddress.IPv4Address("169.254.169.254")  # cloud metadata: never ours
SYSCTLS = (("accept_local", "1"), ("forwarding", "1"), ("rp_filter", "2"))
PROC_SYS = "/proc/sys/net"
NFT_TIMEOUT = 10.0
NFPROTO_INET, NFPROTO_IPV4, NFPROTO_IPV6 = 1, 2, 10  # nftables families whose forward chains see the injected frames
IPT_LEGACY_TABLES = "/proc/net/ip_tables_names"  # this namespace's legacy iptables tables (ip_tables loaded)
IP6T_LEGACY_TABLES = "/proc/net/ip6_tables_names"  # the same for ip6tables (ip6_tables loaded)
# Issue 11 (inject6): IPv6 on the injection TAP for IPv6 remotes, before the link goes up: no address
# (addr_gen_mode 1: none), no DAD, no autoconfiguration, no RAs taken, no router solicitations sent.
SYSCTLS6 = (("addr_gen_mode", "1"), ("accept_dad", "0"), ("autoconf", "0"), ("accept_ra", "0"),
            ("router_solicitations", "0"), ("disable_ipv6", "0"))  # fmt: skip
FORCE_FORWARDING = "force_forwarding"  # net.ipv6.conf.<dev>.force_forwarding, Linux 6.17+


@dataclass
class HostSetup:
    """The changes made for one injection TAP, and how to undo those that outlive it."""

    device: str
    address: str = ""
    ipv6: bool = False  # issue 11: IPv6 from the device is forwarded (force_forwarding)
    ipv6_note: str = ""  # why not, when IPv6 remotes were asked for
    changes: list[str] = field(default_factory=list)
    _undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def undo(self) -> None:
        """Delete the firewall rules (the device's own settings go with the device); idempotent, never raises."""
        while self._undo:
            what, action = self._undo.pop()
            try:
                action()
                log.info("host change undone: %s", what)
            except (OSError, subprocess.SubprocessError, SetupError) as exc:
                log.warning("could not undo host change %s: %s", what, exc)


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise SetupError(f"cannot set {path} to {value}: {exc.strerror}") from None


def host_addresses() -> set[ipaddress.IPv4Address]:
    """Every IPv4 address on an interface of this network namespace."""
    with IPRoute() as ipr:
        return {ipaddress.IPv4Address(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(family=2)}


def pick_address(device: str, taken: set[ipaddress.IPv4Address]) -> ipaddress.IPv4Address:
    """A /32 for the injection TAP from 169.254.255.1..254 that is not in taken (and not the metadata address).

    Starts at a place derived from the device name, so that two daemons rarely try the same one.
    """
    hosts = [a for a in ADDR_NET.hosts() if a != METADATA]
    start = zlib.crc32(device.encode()) % len(hosts)
    for k in range(len(hosts)):
        a = hosts[(start + k) % len(hosts)]
        if a not in taken:
            return a
    raise SetupError(f"no free address in {ADDR_NET} for the injection TAP {device}")


def nftables_in_use(families: frozenset[int] = frozenset({4})) -> bool:
    """An nftables table of family ip or inet (ip6 too with 6 in families) exists in this namespace (asked
    over netlink: no nft needed; iptables-nft, as Docker uses it on Ubuntu, makes them too)."""
    wanted = {NFPROTO_INET} | {NFPROTO_IPV4 for f in families if f == 4} | {NFPROTO_IPV6 for f in families if f == 6}
    try:
        nft = NFTables(nfgen_family=0)  # NFPROTO_UNSPEC: every family
    except OSError:
        return False  # no nf_tables in this kernel
    try:
        return any(t.get("nfgen_family") in wanted for t in nft.get_tables())
    except OSError:
        return False
    finally:
        nft.close()


def forward_drop_chains(
    nft: str | None = None, families: frozenset[int] = frozenset({4})
) -> list[tuple[str, str, str]]:
    """(family, table, chain) of every nftables base chain on the forward hook with policy drop (inet; ip
    with 4 in families, ip6 with 6)."""
    nft = nft or shutil.which("nft")
    if not nft:
        return []
    wanted = {"inet"} | ({"ip"} if 4 in families else set()) | ({"ip6"} if 6 in families else set())
    out = _run([nft, "-j", "list", "chains"])
    chains = []
    for item in json.loads(out).get("nftables", []):
        c = item.get("chain")
        if c and c.get("hook") == "forward" and c.get("policy") == "drop" and c.get("family") in wanted:
            chains.append((c["family"], c["table"], c["name"]))
    return chains


def _run(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=NFT_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SetupError(f"{' '.join(argv)}: {exc}") from None
    if p.returncode != 0:
        raise SetupError(f"{' '.join(argv)}: {p.stderr.strip() or f'exit status {p.returncode}'}")
    return p.stdout


def _nft_accept(setup: HostSetup, nft: str, family: str, table: str, chain: str, port: int) -> None:
    # The comment names the rule: an nft that does not echo it (no JSON echo in older versions, or
    # output we cannot parse) has inserted it all the same, and it is found by the comment.
    tag = f"ovl-dp {setup.device}"
    out = _run([nft, "--echo", "--handle", "-j", "insert", "rule", family, table, chain,
                "iifname", setup.device, "udp", "dport", str(port), "accept", "comment", f'"{tag}"'])  # fmt: skip
    handles = [h for h in (_echoed_handle(out),) if h is not None]
    if not handles:
        handles = _tagged_handles(nft, family, table, chain, tag)
    for handle in handles:
        rule = f'"iifname {setup.device} udp dport {port} accept"'
        what = f"nft rule {rule} in {family} {table} {chain} (handle {handle})"
        setup.changes.append(what)
        setup._undo.append((what, functools.partial(_nft_delete, nft, family, table, chain, handle)))
    if not handles:
        raise SetupError(f"nft did not say the handle of the rule it inserted in {family} {table} {chain}")


def _echoed_handle(out: str) -> int | None:
    """The handle of the inserted rule in nft's JSON echo, or None."""
    try:
        items = json.loads(out).get("nftables", [])
    except (ValueError, AttributeError):
        return None
    handle = None
    for item in items:
        rule = item.get("insert", {}).get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict) and isinstance(rule.get("handle"), int):
            handle = rule["handle"]
    return handle


def _tagged_handles(nft: str, family: str, table: str, chain: str, tag: str) -> list[int]:
    """Handles of the rules of that chain whose comment is tag (ours: our device did not exist before)."""
    try:
        items = json.loads(_run([nft, "-a", "-j", "list", "chain", family, table, chain])).get("nftables", [])
    except (ValueError, AttributeError, SetupError):
        return []
    out = []
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if isinstance(rule, dict) and rule.get("comment") == tag and isinstance(rule.get("handle"), int):
            out.append(rule["handle"])
    return out


def _nft_delete(nft: str, family: str, table: str, chain: str, handle: int) -> None:
    _run([nft, "delete", "rule", family, table, chain, "handle", str(handle)])


def _iptables_legacy(setup: HostSetup, port: int, program: str = "iptables-legacy", tables: str = "") -> None:
    """iptables-legacy (not seen by nft): an accept rule if its FORWARD policy is DROP. program
    ip6tables-legacy (tables IP6T_LEGACY_TABLES) for IPv6 remotes."""
    ipt = shutil.which(program)
    if not ipt:
        return
    tables = tables or IPT_LEGACY_TABLES
    # Only where legacy iptables is in use: run where it is not, iptables-legacy would load ip_tables
    # and give this namespace a legacy filter table (a host change of its own, and not undone).
    try:
        with open(tables) as f:
            if "filter" not in f.read().split():
                return
    except OSError:
        return  # ip_tables not loaded: no legacy table anywhere
    if "-P FORWARD DROP" not in _run([ipt, "-w", "-S", "FORWARD"]).splitlines():
        return
    spec = ["FORWARD", "-i", setup.device, "-p", "udp", "--dport", str(port), "-j", "ACCEPT"]
    _run([ipt, "-w", "-I", *spec])
    what = f'{program} rule "-I {" ".join(spec)}"'
    setup.changes.append(what)

    def delete() -> None:
        _run([ipt, "-w", "-D", *spec])

    setup._undo.append((what, delete))


def _ipv6_on(setup: HostSetup, conf: str) -> None:
    """IPv6 on the device (no address, DAD, autoconfiguration, RAs) and forwarded from it, where the
    kernel has per-device force_forwarding; otherwise setup.ipv6_note says why not and nothing is changed."""
    device = setup.device
    ff = f"{conf}/{FORCE_FORWARDING}"
    if not os.path.exists(conf):
        setup.ipv6_note = f"no IPv6 on {device} in this kernel or namespace"
        return
    if not os.path.exists(ff):
        setup.ipv6_note = f"no net.ipv6.conf.{device}.{FORCE_FORWARDING} (Linux 6.17+)"
        return
    for name, value in SYSCTLS6:
        _write_sysctl(f"{conf}/{name}", value)
        setup.changes.append(f"net.ipv6.conf.{device}.{name}={value}")
    _write_sysctl(ff, "1")
    setup.changes.append(f"net.ipv6.conf.{device}.{FORCE_FORWARDING}=1")
    setup.ipv6 = True


def configure(device: str, port: int, families: frozenset[int] = frozenset({4})) -> HostSetup:
    """Set the host up for the injection TAP device (down, just created) carrying VXLAN to UDP port
    towards remotes of the underlay families (4, 6).

    Returns what was changed (logged by the caller; ``ipv6`` says whether IPv6 is forwarded from the
    device, ``ipv6_note`` why not); SetupError (after undoing what it did) if a step fails, or if
    nothing could use it (IPv6 remotes only, and no force_forwarding): the daemon then closes the TAP
    and keeps the old path.
    """
    setup = HostSetup(device)
    nft = shutil.which("nft")
    if not nft and nftables_in_use(families):
        # The forward chains cannot be read: one with policy drop (Docker's through iptables-nft)
        # would eat every injected super-frame unseen. Nothing is changed; C segmentation instead.
        raise SetupError(
            "nftables is in use but nft is not installed, so its forward chains cannot be checked "
            "(install nftables to use the injection TAP)"
        )
    try:
        v6 = f"{PROC_SYS}/ipv6/conf/{device}"
        if 6 in families:
            _ipv6_on(setup, v6)
            if not setup.ipv6 and 4 not in families:
                raise SetupError(f"IPv6 remotes only, and {setup.ipv6_note}")
        if not setup.ipv6:
            try:
                _write_sysctl(f"{v6}/addr_gen_mode", "1")
                _write_sysctl(f"{v6}/disable_ipv6", "1")
                setup.changes.append(f"no IPv6 on {device}")
            except SetupError:
                pass  # no IPv6 in this kernel or namespace: nothing to turn off
        with IPRoute() as ipr:
            links = ipr.link_lookup(ifname=device)
            if not links:
                raise SetupError(f"the injection TAP {device} is gone")
            if 4 in families:
                for name, value in SYSCTLS:
                    _write_sysctl(f"{PROC_SYS}/ipv4/conf/{device}/{name}", value)
                    setup.changes.append(f"net.ipv4.conf.{device}.{name}={value}")
                addr = pick_address(device, host_addresses())
                ipr.addr("add", index=links[0], address=str(addr), prefixlen=32)
                setup.address = str(addr)
                setup.changes.append(f"address {addr}/32 on {device}")
            ipr.link("set", index=links[0], state="up")
            setup.changes.append(f"{device} up")
        fams = frozenset(f for f in families if f == 4 or setup.ipv6)
        if nft:
            for family, table, chain in forward_drop_chains(nft, fams):
                _nft_accept(setup, nft, family, table, chain, port)
        if 4 in fams:
            _iptables_legacy(setup, port)
        if 6 in fams:
            _iptables_legacy(setup, port, "ip6tables-legacy", IP6T_LEGACY_TABLES)
    except BaseException as exc:
        setup.undo()
        if isinstance(exc, SetupError):
            raise
        if isinstance(exc, OSError | ValueError):  # pyroute2's NetlinkError is an OSError
            raise SetupError(f"cannot set up the injection TAP {device}: {exc}") from None
        raise
    return setup
