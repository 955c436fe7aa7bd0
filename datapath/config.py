"""The configuration: one validated shape, grouped the way a user thinks of it.

    Config
      tunnel   TunnelConfig   mode (the encapsulation), VNI / key, port, TTL, VLAN map, local address,
                              TCP MSS clamping
      remotes  Remote, ...    the peer hosts' underlay addresses
      tap      TapConfig      name, MTU, MAC
      fdb      FdbConfig      size cap, ageing, static entries
      offload  OffloadConfig  C fast path, TAP offloads, UDP GSO
      bridge   BridgeConfig   where the control plane plugs the TAP in
      batch                   frames per batch
      membership MembershipConfig  etcd endpoints, net, lease (issue 12; off by default)

The command line builds it, and so will a configuration file; every check is
made here, once, and a problem raises :class:`ConfigError` whose message names
the key in the words of whoever asks (``--vni`` on the command line,
``tunnel.vni`` in a file). Some values are left to be resolved on the host
(local addresses and the path MTU from the routing table, the TAP MTU and MAC):
:mod:`control.config` fills them in, and the datapath takes only a config that
:meth:`Config.is_resolved`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from datapath import mss
from datapath.ecn import DF_POLICIES, INHERIT
from datapath.encap import MODES, Encap, lookup
from datapath.encap.ipv4 import DEFAULT_TTL
from datapath.ether import ETH_ALEN, ETH_HLEN, VLAN_HLEN, format_mac, parse_mac
from datapath.fdb import DEFAULT_AGEING, DEFAULT_MAX_ENTRIES

MAX_REMOTES = 1024  # OVL_MAX_REMOTES in C
DEFAULT_BATCH = 64
MAX_BATCH = 1024  # OVL_MAX_BATCH in C
# VLANs that vlan_map can map to a tunnel id: 1..4094 (0 and 4095 are reserved by 802.1Q).
MAP_VLAN_MIN = 1
MAP_VLAN_MAX = 4094
MAX_VLAN_MAP = MAP_VLAN_MAX - MAP_VLAN_MIN + 1
MIN_MTU = 68  # the IPv4 minimum (RFC 791)
MAX_MTU = 65000
MAX_AGEING = 10**6
MAX_FDB = 1 << 20
MAX_CPU = 8191  # CONFIG_NR_CPUS at most
IFNAMSIZ = 16  # <linux/if.h>, including the terminating NUL
BRIDGE_TYPES = ("auto", "linux", "ovs", "none")
TAP_QDISCS = ("noqueue", "keep")
OFFLOAD_POLICIES = ("auto", "on", "off")
INJECT_POLICIES = ("auto", "off")
TX_RING_POLICIES = ("auto", "off")  # offload.tx_ring: AF_PACKET TX rings where the kernel allows, or never

# {key} is a placeholder for a configuration key; {{ and }} are literal braces (as in str.format).
_KEY = re.compile(r"\{\{|\}\}|\{([A-Za-z0-9_.-]+)\}")


class ConfigError(ValueError):
    """A configuration a user must fix.

    The message is a template in which ``{tunnel.vni}``-style placeholders stand
    for configuration keys; :meth:`render` names them as the front end does.
    """

    def __init__(self, template: str) -> None:
        super().__init__(template)
        self.template = template

    @property
    def keys(self) -> list[str]:
        """The configuration keys the message is about."""
        return [m[1] for m in _KEY.finditer(self.template) if m[1]]

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message with each key as names calls it (default: the key itself)."""

        def name(m: re.Match[str]) -> str:
            if not m[1]:
                return m[0][0]
            return (names or {}).get(m[1], m[1])

        return _KEY.sub(name, self.template)

    def __str__(self) -> str:
        return self.render()


def _lit(value: object) -> str:
    """value's repr, safe inside a ConfigError template (its braces are literal)."""
    return repr(value).replace("{", "{{").replace("}", "}}")


def _check_range(key: str, what: str, value: object, lo: int, hi: int) -> None:
    """value must be a whole number in lo..hi."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{{{key}}}: {what} must be a whole number, not {_lit(value)}")
    if not lo <= value <= hi:
        raise ConfigError(f"{{{key}}}: {what} {value} is out of range {lo}..{hi}")


def _check_type(key: str, value: object, kinds: tuple[type, ...], what: str) -> None:
    """value must be one of kinds (a bool counts only where bool is named, never as a number)."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ConfigError(f"{{{key}}} must be {what}, not {_lit(value)}")


def check_address(key: str, text: str) -> str:
    """text as a unicast IPv4 or IPv6 address in its canonical form; ConfigError naming key otherwise.

    Not an IPv4-mapped IPv6 address (::ffff:a.b.c.d: write the IPv4 address), nor an IPv6
    link-local one (it would need an interface scope the datapath does not carry).
    """
    try:
        addr = ipaddress.ip_address(text) if isinstance(text, str) else None
    except ValueError:
        addr = None
    if addr is None:
        raise ConfigError(f"{{{key}}} {_lit(text)} is not an IP address")
    if addr.is_multicast or addr.is_unspecified or addr == ipaddress.IPv4Address("255.255.255.255"):
        raise ConfigError(f"{{{key}}} {text} is not a unicast address")
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            raise ConfigError(f"{{{key}}} {text} is an IPv4-mapped address: write the IPv4 address {addr.ipv4_mapped}")
        if addr.is_link_local:
            raise ConfigError(
                f"{{{key}}} {text} is link-local: an IPv6 underlay needs global or unique local addresses"
            )
    return str(addr)


def address_family(addr: str) -> int:
    """4 or 6: the IP version of a (checked) address."""
    return 6 if ":" in addr else 4


def _check_locals(value: object) -> str | tuple[str, ...]:
    """tunnel.local as given (one address, or a list of at most one per family) -> one address (canonical),
    or a tuple of two, IPv4 first."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items or not all(isinstance(a, str) for a in items):
        raise ConfigError(
            f"{{tunnel.local}} must be an address or a list of addresses (one per family), not {_lit(value)}"
        )
    addrs = [check_address("tunnel.local", a) for a in items]
    fams = [address_family(a) for a in addrs]
    if len(set(fams)) != len(fams):
        raise ConfigError("{tunnel.local}: at most one IPv4 and one IPv6 address")
    return addrs[0] if len(addrs) == 1 else tuple(sorted(addrs, key=address_family))


@dataclass(frozen=True)
class TunnelConfig:
    """The encapsulation and its identity; None means the protocol's default."""

    mode: str  # a name in datapath.encap.MODES
    vni: int | None = None  # VXLAN network identifier (default 0)
    key: int | None = None  # GRE key (default: no key field, like OVS without options:key)
    port: int | None = None  # VXLAN UDP destination port (default 4789)
    udp_csum: bool = False  # compute outer UDP checksums (UDP encapsulations; over IPv4)
    ttl: int | str = DEFAULT_TTL  # outer TTL 1..255, or "inherit": the inner TTL / hop limit
    # (VLAN 1..4094, tunnel id): frames of a mapped VLAN leave untagged in their own
    # VNI (VXLAN) or GRE key, and come back tagged; everything else uses the base id.
    vlan_map: tuple[tuple[int, int], ...] = ()
    # Underlay source addresses, at most one per family (given as one address or a list; kept as
    # the one address, or a tuple of both, IPv4 first: see locals); None: from the route to each remote.
    local: str | tuple[str, ...] | None = None
    underlay_mtu: int | None = None  # largest outer packet; None: the path MTU (resolved)
    # Over IPv6, UDP encapsulations: send UDP checksum 0 / accept it (RFC 6935, RFC 6936; the
    # kernel's vxlan udp6zerocsumtx / udp6zerocsumrx). Default: always computed and required.
    udp6_zero_csum_tx: bool = False
    udp6_zero_csum_rx: bool = False
    # issue 11, ecn (datapath/ecn.py): the outer DS field 0..255 (its DSCP bits; ECN is copied from the
    # inner packet) or "inherit"; the outer DF: "set", "unset", "inherit", None: the mode's default
    # (VXLAN unset, GRE set, as the kernel's vxlan / gretap devices). pmtu reads it: inner IPv4 without
    # DF that does not fit its path leaves in outer fragments unless "set".
    tos: int | str = 0
    df: str | None = None
    # issue 11, pmtu: the rate of ICMP "too big" replies per second (0: none)
    pmtu_icmp_rate: int = 100
    # TCP MSS clamping of SYN / SYN-ACK both ways (datapath.mss): "off", "auto" (what the tunnel
    # fits towards each remote) or a fixed MSS; a number's text is taken as the number.
    clamp_mss: str | int = "off"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"{{tunnel.mode}} {_lit(self.mode)} is not one of {', '.join(MODES)}")
        cls = lookup(self.mode)
        for other in {c.id_key for c in map(lookup, MODES)} - {cls.id_key}:
            if getattr(self, other) is not None:
                owner = next(lookup(m) for m in MODES if lookup(m).id_key == other)
                raise ConfigError(
                    f"{{tunnel.{other}}} is for {{tunnel.mode}} {owner.name}; {cls.title} uses {{tunnel.{cls.id_key}}}"
                )
        tid = getattr(self, cls.id_key)
        if tid is not None:
            _check_range(f"tunnel.{cls.id_key}", cls.id_name, tid, 0, cls.id_max)
        if self.port is not None:
            _check_range("tunnel.port", "port", self.port, 1, 65535)
        _check_type("tunnel.udp_csum", self.udp_csum, (bool,), "true or false")
        if self.ttl != INHERIT:
            _check_range("tunnel.ttl", "TTL", self.ttl, 1, 255)
        if self.tos != INHERIT:
            _check_range("tunnel.tos", "TOS", self.tos, 0, 255)
        if self.df is not None and self.df not in DF_POLICIES:
            raise ConfigError(f"{{tunnel.df}} {_lit(self.df)} is not one of {', '.join(DF_POLICIES)}")
        if self.local is not None:
            object.__setattr__(self, "local", _check_locals(self.local))
        _check_type("tunnel.udp6_zero_csum_tx", self.udp6_zero_csum_tx, (bool,), "true or false")
        _check_type("tunnel.udp6_zero_csum_rx", self.udp6_zero_csum_rx, (bool,), "true or false")
        if self.underlay_mtu is not None:
            _check_range("tunnel.underlay_mtu", "MTU", self.underlay_mtu, MIN_MTU, 65535)
        _check_range("tunnel.pmtu_icmp_rate", "rate", self.pmtu_icmp_rate, 0, 1000000)
        self._check_vlan_map(cls)
        try:
            setting = mss.parse_setting(self.clamp_mss)
        except ValueError as exc:
            text = str(exc).replace("{", "{{").replace("}", "}}")
            raise ConfigError(f"{{tunnel.clamp_mss}}: {text}") from None
        canonical = {mss.CLAMP_OFF: "off", mss.CLAMP_AUTO: "auto"}.get(setting, setting)
        object.__setattr__(self, "clamp_mss", canonical)

    def _check_vlan_map(self, cls: type[Encap]) -> None:
        kind = cls.id_name
        if len(self.vlan_map) > MAX_VLAN_MAP:
            raise ConfigError(f"{{tunnel.vlan_map}}: at most {MAX_VLAN_MAP} VLAN mappings")
        for pair in self.vlan_map:
            if not isinstance(pair, tuple) or len(pair) != 2 or not all(type(x) is int for x in pair):
                raise ConfigError(f"{{tunnel.vlan_map}}: {_lit(pair)} is not a (VLAN, {kind}) pair of numbers")
        for vlan, tid in self.vlan_map:
            if not MAP_VLAN_MIN <= vlan <= MAP_VLAN_MAX:
                raise ConfigError(
                    f"{{tunnel.vlan_map}}: mapped VLAN {vlan} out of range {MAP_VLAN_MIN}..{MAP_VLAN_MAX}"
                )
            if not 0 <= tid <= cls.id_max:
                raise ConfigError(f"{{tunnel.vlan_map}}: mapped {kind} {tid} out of range 0..{cls.id_max}")
        if len({v for v, _ in self.vlan_map}) != len(self.vlan_map):
            raise ConfigError("{tunnel.vlan_map}: a VLAN is mapped twice")
        if len({t for _, t in self.vlan_map}) != len(self.vlan_map):
            raise ConfigError(f"{{tunnel.vlan_map}}: two VLANs are mapped to the same {kind}")
        base = self.encap.base_id
        if any(t == base for _, t in self.vlan_map):
            raise ConfigError(
                f"{{tunnel.vlan_map}}: a VLAN is mapped to the base {kind} {base} (untagged traffic uses it)"
            )

    @property
    def locals(self) -> tuple[str, ...]:
        """tunnel.local as a tuple (empty: from the routes), IPv4 first."""
        if self.local is None:
            return ()
        return (self.local,) if isinstance(self.local, str) else self.local

    def local_for(self, family: int) -> str | None:
        """The tunnel.local address of family 4 or 6, or None."""
        return next((a for a in self.locals if address_family(a) == family), None)

    @property
    def clamp_mss_setting(self) -> int:
        """clamp_mss as the datapath takes it: mss.CLAMP_OFF, mss.CLAMP_AUTO or the fixed MSS."""
        return mss.parse_setting(self.clamp_mss)

    @property
    def encap(self) -> Encap:
        """The encapsulation with this tunnel's settings."""
        cls = lookup(self.mode)
        port = self.port if self.port is not None else cls.default_port
        return cls(
            getattr(self, cls.id_key),
            port=port,
            udp_csum=self.udp_csum,
            ttl=self.ttl,
            tos=self.tos,
            df=self.df,
            udp6_zero_csum_tx=self.udp6_zero_csum_tx,
            udp6_zero_csum_rx=self.udp6_zero_csum_rx,
        )


@dataclass(frozen=True)
class Remote:
    """A peer host: its underlay address, and the local address we send to it from (resolved)."""

    addr: str
    local: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "addr", check_address("remotes", self.addr))
        if self.local is not None:
            object.__setattr__(self, "local", check_address("tunnel.local", self.local))
            if address_family(self.local) != self.family:
                raise ConfigError(
                    f"{{tunnel.local}} {self.local} is IPv{address_family(self.local)}: remote {self.addr} "
                    f"needs an IPv{self.family} local address"
                )

    @property
    def family(self) -> int:
        """The underlay family towards it: 4 or 6."""
        return address_family(self.addr)

    @property
    def addr_bytes(self) -> bytes:
        """The remote's address, 4 bytes (IPv4) or 16 (IPv6)."""
        return _pack(self.addr)

    @property
    def local_bytes(self) -> bytes:
        """Our address towards it, 4 or 16 bytes (the config must be resolved)."""
        if self.local is None:
            raise ConfigError(f"{{tunnel.local}} towards remote {self.addr} is not resolved yet")
        return _pack(self.local)


def _pack(addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)


@dataclass(frozen=True)
class TapConfig:
    """The bridge-facing TAP device."""

    name: str | None = None  # default ovl-<mode>
    mtu: int | None = None  # None: underlay MTU minus the encapsulation overhead (resolved)
    mac: bytes | None = None  # None: derived from host and tunnel (resolved)
    qdisc: str = "noqueue"  # the TAP's root qdisc: noqueue (datapath.io.qdisc), or keep the kernel's default

    def __post_init__(self) -> None:
        if self.qdisc not in TAP_QDISCS:
            raise ConfigError(f"{{tap.qdisc}} {_lit(self.qdisc)} is not one of {', '.join(TAP_QDISCS)}")
        n = self.name
        # The kernel's dev_valid_name(): 1..IFNAMSIZ-1 bytes, not "." or "..", no '/', ':' or white space.
        if n is not None and (
            not isinstance(n, str)
            or not 0 < len(n.encode()) < IFNAMSIZ
            or n in (".", "..")
            or any(c in "/:" or c.isspace() for c in n)
        ):
            raise ConfigError(
                f"{{tap.name}} {_lit(n)}: interface names are 1-15 characters (bytes) without '/', ':' or white space"
            )
        if self.mtu is not None:
            _check_range("tap.mtu", "MTU", self.mtu, MIN_MTU, MAX_MTU)
        if self.mac is not None and (len(self.mac) != ETH_ALEN or self.mac[0] & 1 or not any(self.mac)):
            raise ConfigError("{tap.mac} must be a unicast, nonzero MAC address")


@dataclass(frozen=True)
class StaticEntry:
    """A static FDB entry: MAC (in VLAN, 0 = untagged) lives behind remote; never ages, never moves."""

    mac: bytes
    remote: str
    vlan: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.mac, bytes) or len(self.mac) != ETH_ALEN:
            raise ConfigError("{fdb.static}: a static entry's MAC is 6 bytes")
        if self.mac[0] & 1 or not any(self.mac):
            raise ConfigError(f"{{fdb.static}} {format_mac(self.mac)}: must be a unicast, nonzero MAC")
        object.__setattr__(self, "remote", check_address("fdb.static", self.remote))
        # 4095 is reserved by 802.1Q: no frame on a bridge carries it.
        if type(self.vlan) is not int or not 0 <= self.vlan <= MAP_VLAN_MAX:
            raise ConfigError(f"{{fdb.static}}: a static entry's VLAN must be 0..{MAP_VLAN_MAX} (0 = untagged)")

    @classmethod
    def from_value(cls, value: object) -> StaticEntry:
        """A static entry from a (MAC, remote address[, VLAN]) sequence, or the text "MAC[@VLAN]=REMOTE".

        The MAC may be 6 bytes or text.
        """
        if isinstance(value, str):
            left, sep, remote_text = value.partition("=")
            mac_text, at, vlan_text = left.partition("@")
            if not sep or (at and not vlan_text.isdigit()):
                raise ConfigError(f"{{fdb.static}} {_lit(value)}: expected MAC=REMOTE or MAC@VLAN=REMOTE")
            value = (mac_text, remote_text, *((int(vlan_text),) if at else ()))
        if not isinstance(value, list | tuple) or len(value) not in (2, 3):
            raise ConfigError("{fdb.static}: a static entry is (MAC, remote[, VLAN])")
        mac, remote, *vlan = value
        if isinstance(mac, str):
            try:
                mac = parse_mac(mac)
            except ValueError as exc:
                raise ConfigError(f"{{fdb.static}}: {exc}") from None
        if not isinstance(remote, str) or not all(isinstance(v, int) for v in vlan):
            raise ConfigError("{fdb.static}: a static entry is (MAC, remote address[, VLAN number])")
        return cls(mac, remote, *vlan)


@dataclass(frozen=True)
class FdbConfig:
    """The MAC table: size cap (static entries included), ageing of learned entries, static entries."""

    max_entries: int = DEFAULT_MAX_ENTRIES
    ageing: float = DEFAULT_AGEING  # seconds, 0 = never
    static: tuple[StaticEntry, ...] = ()

    def __post_init__(self) -> None:
        _check_range("fdb.max_entries", "FDB size", self.max_entries, 1, MAX_FDB)
        _check_type("fdb.ageing", self.ageing, (int, float), "a number of seconds")
        if not 0 <= self.ageing <= MAX_AGEING:
            raise ConfigError(f"{{fdb.ageing}}: ageing {self.ageing} must be between 0 and {MAX_AGEING} seconds")


@dataclass(frozen=True)
class OffloadConfig:
    """How the datapath moves bytes: C or Python, and which kernel offloads it asks for.

    policy (``--offload``) auto: the TAP takes TSO super-frames and partial
    checksums (C path), received TCP segments are coalesced into super-frames only
    towards a Linux bridge (the control plane resolves ``rx_coalesce``), UDP_GRO is
    on; on: coalescing towards any bridge; off: none of it. udp_gso: VXLAN sends
    through a pool of UDP_SEGMENT sockets (opt-in: it implies outer UDP checksums
    and takes the source port from the pool). inject (``--inject``) auto: VXLAN TCP
    super-frames leave whole through an injection TAP and the kernel segments them
    (C path with TAP offloads, Linux 6.17+, not with udp_gso; falls back when refused);
    off: they are segmented in C as before. inject6 (``--inject6``, issue 11) auto: super-frames to
    IPv6 remotes too (the host forwards IPv6 from the injection TAP: force_forwarding, Linux
    6.17+); off: those are segmented in C and the TAP keeps IPv6 off.
    and takes the source port from the pool). dp_thread (C path): the data path runs in a
    thread of its own (csrc/loop.c), Python only for control; false: batches run from the
    asyncio loop. cpu: pin that thread to this CPU (default: not pinned).
    tx_ring (``--tx-ring``) auto: outer
    packets to a remote whose next hop is resolved leave through an AF_PACKET TX ring
    of the egress device (C path; bypasses netfilter OUTPUT/POSTROUTING and the qdisc),
    the rest through the raw socket; off: always the raw socket.
    """

    policy: str = "auto"
    udp_gso: bool = False
    fast_path: bool = True
    rx_coalesce: bool | None = None  # None: as the policy says (auto: resolved from the bridge kind)
    inject: str = "auto"
    inject6: str = "auto"  # issue 11: IPv6 remotes through the injection TAP too
    dp_thread: bool = True
    cpu: int | None = None
    rx_super: bool = True  # C path: receive tunnel super-packets (64 KiB datagrams) whole (csrc/rx_super.c)
    tx_ring: str = "auto"

    def __post_init__(self) -> None:
        if self.inject not in INJECT_POLICIES:
            raise ConfigError(f"{{offload.inject}} {_lit(self.inject)} is not one of {', '.join(INJECT_POLICIES)}")
        if self.inject6 not in INJECT_POLICIES:
            raise ConfigError(f"{{offload.inject6}} {_lit(self.inject6)} is not one of {', '.join(INJECT_POLICIES)}")
        if self.policy not in OFFLOAD_POLICIES:
            raise ConfigError(f"{{offload.policy}} {_lit(self.policy)} is not one of {', '.join(OFFLOAD_POLICIES)}")
        _check_type("offload.udp_gso", self.udp_gso, (bool,), "true or false")
        _check_type("offload.fast_path", self.fast_path, (bool,), "true or false")
        _check_type("offload.rx_super", self.rx_super, (bool,), "true or false")
        if self.tx_ring not in TX_RING_POLICIES:
            raise ConfigError(f"{{offload.tx_ring}} {_lit(self.tx_ring)} is not one of {', '.join(TX_RING_POLICIES)}")
        if self.rx_coalesce is not None:
            _check_type("offload.rx_coalesce", self.rx_coalesce, (bool,), "true or false")
        _check_type("offload.dp_thread", self.dp_thread, (bool,), "true or false")
        if self.cpu is not None:
            _check_range("offload.cpu", "a CPU number", self.cpu, 0, MAX_CPU)
            if not (self.fast_path and self.dp_thread):
                raise ConfigError("{offload.cpu} pins the data-path thread: it needs the C fast path and its thread")
        if self.udp_gso and (not self.fast_path or self.policy == "off"):
            raise ConfigError("{offload.udp_gso} needs the C fast path with offloads on")

    @property
    def tap(self) -> bool:
        """Open the TAP with a virtio header and TSO/checksum offloads (C path; probed, falls back)."""
        return self.policy != "off"

    @property
    def udp_gro(self) -> bool:
        """UDP_GRO on the receiving socket (UDP encapsulations, C path)."""
        return self.policy != "off"

    @property
    def coalesce(self) -> bool:
        """Write received TCP segments of a flow to the TAP as one super-frame."""
        if self.policy == "off":
            return False
        return self.rx_coalesce if self.rx_coalesce is not None else self.policy == "on"


@dataclass(frozen=True)
class BridgeConfig:
    """Where the control plane plugs the TAP in (the datapath does not look at it)."""

    name: str = "br-int"
    type: str = "auto"  # auto | linux | ovs | none
    ovsdb: str | None = None  # Open vSwitch database; None: ovs-vsctl's default
    tag: int | None = None  # OVS access port VLAN; None: a trunk

    def __post_init__(self) -> None:
        if self.type not in BRIDGE_TYPES:
            raise ConfigError(f"{{bridge.type}} {_lit(self.type)} is not one of {', '.join(BRIDGE_TYPES)}")
        _check_type("bridge.name", self.name, (str,), "a bridge name")
        if self.ovsdb is not None:
            _check_type("bridge.ovsdb", self.ovsdb, (str,), "a database address")
        if self.tag is not None:
            _check_range("bridge.tag", "VLAN", self.tag, 1, 4094)
            if self.type not in ("ovs", "auto"):
                raise ConfigError("{bridge.tag} is for Open vSwitch bridges ({bridge.type} ovs)")


# issue 12, membership on etcd: net names as the data model allows them (a key path segment).
NET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
DEFAULT_ETCD_PORT = 2379
DEFAULT_LEASE_TTL = 15.0
DEFAULT_KEEPALIVE = 5.0
MIN_LEASE_TTL, MAX_LEASE_TTL = 2.0, 3600.0
MIN_KEEPALIVE = 0.5
TLS_NOTE = "see the README's section 'Membership on etcd', TLS: run etcd's grpc-proxy on 127.0.0.1"


def check_etcd_url(key: str, text: object) -> str:
    """An etcd endpoint as http://HOST:PORT (canonical: the port always written, an IPv6 host in brackets);
    ConfigError naming key otherwise (https: our client speaks plain gRPC only)."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{{{key}}} must be an etcd URL (http://HOST:PORT), not {_lit(text)}")
    scheme, sep, rest = text.strip().partition("://")
    if scheme.lower() == "https":
        raise ConfigError(f"{{{key}}} {_lit(text)}: https is not supported by ovl-dp's etcd client ({TLS_NOTE})")
    if not sep or scheme.lower() != "http":
        raise ConfigError(f"{{{key}}} {_lit(text)}: expected http://HOST:PORT")
    hostport = rest.rstrip("/")
    if not hostport or "/" in hostport or "@" in hostport or "?" in hostport or "#" in hostport:
        raise ConfigError(f"{{{key}}} {_lit(text)}: expected http://HOST:PORT (no user, path or query)")
    if hostport.startswith("["):
        inside, close, after = hostport[1:].partition("]")
        if not close or (after and not after.startswith(":")):
            raise ConfigError(f"{{{key}}} {_lit(text)}: expected http://[IPV6]:PORT")
        host, port_text = inside, after[1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise ConfigError(f"{{{key}}} {_lit(text)}: {_lit(inside)} is not an IPv6 address") from None
        shown = f"[{host}]"
    else:
        if hostport.count(":") > 1:
            raise ConfigError(f"{{{key}}} {_lit(text)}: write an IPv6 address in brackets, http://[ADDR]:PORT")
        host, _, port_text = hostport.partition(":")
        if ":" in hostport and not port_text:
            raise ConfigError(f"{{{key}}} {_lit(text)}: the port is missing after ':'")
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
            raise ConfigError(f"{{{key}}} {_lit(text)}: {_lit(host)} is not a host name or address")
        host = host.lower()
        shown = host
    if not port_text:
        port = DEFAULT_ETCD_PORT
    elif not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"{{{key}}} {_lit(text)}: port {_lit(port_text)} is not 1..65535")
    else:
        port = int(port_text)
    return f"http://{shown}:{port}"


def etcd_host_port(url: str) -> tuple[str, int]:
    """(host, port) of a canonical etcd URL (check_etcd_url's form); an IPv6 host without brackets."""
    hostport = url.partition("://")[2]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class MembershipConfig:
    """Membership on etcd (issue 12): which etcd, which net, our lease, the address we publish.

    etcd: endpoint URLs (http://HOST:PORT; tried in turn when one fails); net: the net's name
    (a key path segment, NET_NAME); lease_ttl: seconds our member key outlives us after a crash
    (2..3600); keepalive: how often the lease is refreshed (0.5 .. lease_ttl / 2); address: the
    underlay address we publish as our member key (None: tunnel.local of the first endpoint's family,
    else the source address of the route to that endpoint; resolved by control.config). Off when
    etcd is empty. Not live-reloadable.
    """

    etcd: tuple[str, ...] = ()
    net: str | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL
    keepalive: float = DEFAULT_KEEPALIVE
    address: str | None = None

    def __post_init__(self) -> None:
        given = [self.etcd] if isinstance(self.etcd, str) else self.etcd
        if not isinstance(given, list | tuple) or not all(isinstance(u, str) for u in given):
            raise ConfigError(f"{{membership.etcd}} must be a list of URLs or one 'URL,URL', not {_lit(self.etcd)}")
        urls = [p.strip() for u in given for p in u.split(",")]  # "URL,URL" (a file, or --etcd given once)
        canonical = tuple(check_etcd_url("membership.etcd", u) for u in urls if u or len(urls) == 1)
        if len(set(canonical)) != len(canonical):
            raise ConfigError("{membership.etcd}: an endpoint is given twice")
        object.__setattr__(self, "etcd", canonical)
        if self.net is not None and (not isinstance(self.net, str) or not NET_NAME.fullmatch(self.net)):
            raise ConfigError(
                f"{{membership.net}} {_lit(self.net)}: a net name is 1-63 characters of a-z 0-9 . _ -, "
                "starting with a letter or digit"
            )
        if canonical and self.net is None:
            raise ConfigError("{membership.etcd} needs {membership.net}: the net to join")
        if self.net is not None and not canonical:
            raise ConfigError("{membership.net} needs {membership.etcd}: the etcd to find the net in")
        _check_type("membership.lease_ttl", self.lease_ttl, (int, float), "a number of seconds")
        _check_type("membership.keepalive", self.keepalive, (int, float), "a number of seconds")
        if not MIN_LEASE_TTL <= self.lease_ttl <= MAX_LEASE_TTL:
            raise ConfigError(
                f"{{membership.lease_ttl}} {self.lease_ttl:g} is out of range {MIN_LEASE_TTL:g}..{MAX_LEASE_TTL:g} s"
            )
        if not MIN_KEEPALIVE <= self.keepalive <= self.lease_ttl / 2:
            raise ConfigError(
                f"{{membership.keepalive}} {self.keepalive:g} is out of range "
                f"{MIN_KEEPALIVE:g}..{self.lease_ttl / 2:g} s "
                "(at most half of {membership.lease_ttl}, so that one lost keepalive does not cost the lease)"
            )
        object.__setattr__(self, "lease_ttl", float(self.lease_ttl))
        object.__setattr__(self, "keepalive", float(self.keepalive))
        if self.address is not None:
            object.__setattr__(self, "address", check_address("membership.address", self.address))

    @property
    def enabled(self) -> bool:
        """Membership on etcd is on (endpoints given)."""
        return bool(self.etcd)


@dataclass(frozen=True)
class Config:
    """Everything `ovl-dp run` needs; see the module docstring.

    Remote indices start as positions in remotes; at run time the datapath adds and removes
    remotes in slots of its own (datapath.pypath), and this stays the set it started with.
    """

    tunnel: TunnelConfig
    remotes: tuple[Remote, ...]
    tap: TapConfig = field(default_factory=TapConfig)
    fdb: FdbConfig = field(default_factory=FdbConfig)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    bridge: BridgeConfig = field(default_factory=BridgeConfig)
    batch: int = DEFAULT_BATCH
    membership: MembershipConfig = field(default_factory=MembershipConfig)  # issue 12: off by default

    def __post_init__(self) -> None:
        if self.tap.name is None:
            object.__setattr__(self, "tap", dataclasses.replace(self.tap, name=f"ovl-{self.tunnel.mode}"))
        if not self.remotes and not self.membership.enabled:
            raise ConfigError("{remotes}: at least one remote is needed (or {membership.etcd})")
        if len(self.remotes) > MAX_REMOTES:
            raise ConfigError(f"{{remotes}}: at most {MAX_REMOTES} remotes are supported")
        seen: set[str] = set()
        for r in self.remotes:
            if r.addr in seen:
                raise ConfigError(f"{{remotes}} {r.addr} is given twice")
            seen.add(r.addr)
            if r.addr in self.tunnel.locals:
                raise ConfigError(f"{{remotes}} {r.addr} equals {{tunnel.local}}: a tunnel needs another host")
            if self.tunnel.locals and self.tunnel.local_for(r.family) is None:
                raise ConfigError(
                    f"{{remotes}} {r.addr} is IPv{r.family} but {{tunnel.local}} has no IPv{r.family} address "
                    f"(give --local once per family, or none to take each from the route)"
                )
        for s in self.fdb.static:
            if s.remote not in seen:
                raise ConfigError(
                    f"{{fdb.static}} {format_mac(s.mac)}: {s.remote} is not one of the remotes ({{remotes}})"
                )
        t = self.tunnel
        if not self.encap.udp and (
            t.port is not None or t.udp_csum or self.offload.udp_gso or t.udp6_zero_csum_tx or t.udp6_zero_csum_rx
        ):
            udp_modes = " or ".join(m for m in MODES if lookup(m).udp)
            raise ConfigError(
                f"{{tunnel.port}}, {{tunnel.udp_csum}}, {{tunnel.udp6_zero_csum_tx}}, {{tunnel.udp6_zero_csum_rx}} "
                f"and {{offload.udp_gso}} are for {{tunnel.mode}} {udp_modes}"
            )
        if self.bridge.tag is not None and self.tunnel.vlan_map:
            raise ConfigError(
                "{bridge.tag} and {tunnel.vlan_map} exclude each other: an access port carries no VLAN tags"
            )
        _check_range("batch", "batch", self.batch, 1, MAX_BATCH)

    # -- derived ---------------------------------------------------------------------

    @property
    def encap(self) -> Encap:
        """The tunnel's encapsulation."""
        return self.tunnel.encap

    @property
    def base_id(self) -> int:
        """The tunnel id of unmapped traffic: the VNI, or the GRE key (0 without a key, which also accepts key 0)."""
        return self.encap.base_id

    @property
    def outer_len(self) -> int:
        """Bytes in front of an inner frame in the base id (outer IPv4 + encapsulation header)."""
        return self.encap.outer_len()

    @property
    def mapped_outer_len(self) -> int:
        """outer_len for a frame of a mapped VLAN (a GRE header then always carries a key)."""
        return self.encap.outer_len(mapped=True)

    @property
    def families(self) -> frozenset[int]:
        """The underlay families in use: those of the remotes, of tunnel.local and of the address membership
        publishes (4 when there is none of them)."""
        fams = {r.family for r in self.remotes} | {address_family(a) for a in self.tunnel.locals}
        if self.membership.address is not None:
            fams.add(address_family(self.membership.address))
        return frozenset(fams or {4})

    @property
    def overhead(self) -> int:
        """Underlay MTU minus the largest inner L3 packet: the most any frame of this tunnel adds
        (over IPv6 when a remote is IPv6: 20 bytes more)."""
        return max(self.encap.overhead(mapped=bool(self.tunnel.vlan_map), family=f) for f in self.families)

    @property
    def bind(self) -> str:
        """The address the IPv4 receiving socket binds to."""
        return self.tunnel.local_for(4) or "0.0.0.0"

    def bind_for(self, family: int) -> str:
        """The address the receiving socket of family 4 or 6 binds to (tunnel.local, or any)."""
        return self.tunnel.local_for(family) or ("::" if family == 6 else "0.0.0.0")

    @property
    def static_entries(self) -> tuple[tuple[bytes, int, int], ...]:
        """The static FDB entries as (MAC, remote index, VLAN)."""
        index = {r.addr: i for i, r in enumerate(self.remotes)}
        return tuple((s.mac, index[s.remote], s.vlan) for s in self.fdb.static)

    def is_resolved(self) -> bool:
        """True once what the forwarders need from the host is known: underlay and TAP MTU, local addresses.

        (The engine also needs tap.mac to create the TAP.)
        """
        return (
            self.tunnel.underlay_mtu is not None
            and self.tap.mtu is not None
            and all(r.local is not None for r in self.remotes)
        )

    @property
    def underlay_mtu(self) -> int:
        """tunnel.underlay_mtu of a resolved config."""
        if self.tunnel.underlay_mtu is None:
            raise ConfigError("{tunnel.underlay_mtu} is not resolved yet")
        return self.tunnel.underlay_mtu

    @property
    def tap_mtu(self) -> int:
        """tap.mtu of a resolved config."""
        if self.tap.mtu is None:
            raise ConfigError("{tap.mtu} is not resolved yet")
        return self.tap.mtu

    @property
    def slot_size(self) -> int:
        """Buffer size for one packet: the largest inner frame (tagged) plus outer headers.

        The VLAN room is for tagged frames read from the TAP (trunk); a tag the
        datapath inserts on receive goes into the outer header's place, not here.
        """
        outer = max(self.encap.outer_len(m, f) for m in (False, True) for f in self.families)
        need = max(self.underlay_mtu, self.tap_mtu + ETH_HLEN + VLAN_HLEN + outer)
        return max(2048, (need + 64 + 63) // 64 * 64)


GROUPS: dict[str, type] = {
    "tunnel": TunnelConfig,
    "tap": TapConfig,
    "fdb": FdbConfig,
    "offload": OffloadConfig,
    "bridge": BridgeConfig,
    "membership": MembershipConfig,
}


def _sequence(key: str, value: object) -> list[object] | tuple[object, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{{{key}}} must be a list")
    return value


def from_keys(values: Mapping[str, object]) -> Config:
    """A Config from configuration keys, as a front end holds them.

    Keys are ``group.name`` paths (``tunnel.vni``, ``fdb.static``, ...) plus
    ``remotes`` (addresses) and ``batch``; a value of None leaves the default.
    ``remotes`` are address strings, ``fdb.static`` (MAC, remote address[, VLAN])
    sequences, ``tunnel.vlan_map`` (VLAN, id) pairs. ConfigError names an unknown
    or missing key.
    """
    groups: dict[str, dict[str, object]] = {g: {} for g in GROUPS}
    remotes: tuple[Remote, ...] = ()
    batch = DEFAULT_BATCH
    for path, value in values.items():
        if value is None:
            continue
        group, _, name = path.partition(".")
        cls = GROUPS.get(group)
        if cls is not None and name in {f.name for f in dataclasses.fields(cls)}:
            groups[group][name] = value
        elif path == "remotes":
            remotes = tuple(Remote(str(a)) for a in _sequence(path, value))
        elif path == "batch":
            _check_range("batch", "batch", value, 1, MAX_BATCH)
            batch = value  # type: ignore[assignment]
        elif _KEY.fullmatch(f"{{{path}}}"):
            raise ConfigError(f"{{{path}}} is not a configuration key")
        else:
            raise ConfigError(f"{_lit(path)} is not a configuration key")
    if "mode" not in groups["tunnel"]:
        raise ConfigError("{tunnel.mode} is required")
    if groups["tap"].get("mtu") == "auto":
        groups["tap"]["mtu"] = None
    if isinstance(groups["tap"].get("mac"), str):
        try:
            groups["tap"]["mac"] = parse_mac(str(groups["tap"]["mac"]))
        except ValueError as exc:
            raise ConfigError(f"{{tap.mac}}: {exc}") from None
    if isinstance(groups["tunnel"].get("vlan_map"), dict):  # a TOML table {"20" = 5020}
        table: dict[str, object] = groups["tunnel"]["vlan_map"]  # type: ignore[assignment]
        if not all(k.isdigit() for k in table):
            raise ConfigError("{tunnel.vlan_map}: the table's keys are VLAN numbers")
        groups["tunnel"]["vlan_map"] = [(int(k), v) for k, v in table.items()]
    if "vlan_map" in groups["tunnel"]:
        pairs = _sequence("tunnel.vlan_map", groups["tunnel"]["vlan_map"])
        groups["tunnel"]["vlan_map"] = tuple(tuple(_sequence("tunnel.vlan_map", p)) for p in pairs)
    if "static" in groups["fdb"]:
        groups["fdb"]["static"] = tuple(map(StaticEntry.from_value, _sequence("fdb.static", groups["fdb"]["static"])))
    return Config(
        tunnel=TunnelConfig(**groups["tunnel"]),  # type: ignore[arg-type]
        remotes=remotes,
        tap=TapConfig(**groups["tap"]),  # type: ignore[arg-type]
        fdb=FdbConfig(**groups["fdb"]),  # type: ignore[arg-type]
        offload=OffloadConfig(**groups["offload"]),  # type: ignore[arg-type]
        bridge=BridgeConfig(**groups["bridge"]),  # type: ignore[arg-type]
        batch=batch,
        membership=MembershipConfig(**groups["membership"]),  # type: ignore[arg-type]
    )
