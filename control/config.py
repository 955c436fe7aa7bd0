"""Where the configuration comes from (a TOML file under the command line), and resolving it on this host.

:class:`datapath.config.Config` holds what the user asked for; what depends on
the host (our address towards each remote, the path MTU, the automatic TAP MTU,
a stable TAP MAC, whether to coalesce towards this kind of bridge) is filled in
here, and :func:`resolve` returns the config the datapath runs with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from datapath.config import GROUPS, MIN_MTU, Config, ConfigError, MembershipConfig, Remote, etcd_host_port, from_keys
from datapath.errors import SetupError
from datapath.io import underlay

MACHINE_ID = Path("/etc/machine-id")


def tap_mac(local: str, mode: str, tunnel_id: int, tap: str) -> bytes:
    """A locally administered unicast MAC that stays the same across restarts.

    Derived from the host (machine id and underlay address) and the tunnel
    (mode, VNI or key, TAP name), so that bridges and peers keep their tables.
    """
    try:
        host = MACHINE_ID.read_text().strip()
    except OSError:
        host = socket.gethostname()
    digest = hashlib.sha256(f"{host}|{local}|{mode}|{tunnel_id}|{tap}".encode()).digest()
    return bytes([(digest[0] & 0xFE) | 0x02]) + digest[1:6]


def local_addresses() -> set[str]:
    """IPv4 and IPv6 addresses of this network namespace's interfaces (canonical text form)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        v4 = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}
        v6 = {str(ipaddress.IPv6Address(a.get_attr("IFA_ADDRESS"))) for a in ipr.get_addr(family=socket.AF_INET6)}
    return v4 | v6


def is_local_address(addr: str) -> bool:
    """Whether addr is an address of this network namespace: the kernel routes to it from itself.

    (A route lookup, as `ip route get` shows `local`: a UDP socket connected to addr has it as its own
    source. Usable inside a running event loop, where pyroute2's IPRoute is not; unlike a bind test it
    is not fooled by net.ipv4.ip_nonlocal_bind.)
    """
    ip = ipaddress.ip_address(addr)
    if ip.is_loopback:
        return True
    v6 = ip.version == 6
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((addr, 9))  # discard port; nothing is sent
        except OSError:
            return False
        if probe.getsockname()[0] == addr:
            return True
    # A secondary address's local route has the primary as its source: ask the local table itself.
    return addr in (local6_addresses() if v6 else local_table_addresses())


def local6_addresses(if_inet6: str = "/proc/net/if_inet6") -> set[str]:
    """The IPv6 addresses of this network namespace's interfaces, from /proc (no netlink)."""
    try:
        with open(if_inet6) as f:
            rows = f.read().split("\n")
    except OSError:
        return set()
    return {str(ipaddress.IPv6Address(bytes.fromhex(row.split()[0]))) for row in rows if row.strip()}


def local_table_addresses(fib_trie: str = "/proc/net/fib_trie") -> set[str]:
    """The IPv4 addresses with a host LOCAL route in this network namespace (primaries and secondaries).

    Read from /proc/net/fib_trie (the namespace of the reading thread): a ``|-- A.B.C.D`` line followed by
    ``/32 host LOCAL``. An empty set if the file cannot be read.
    """
    try:
        with open(fib_trie) as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    found: set[str] = set()
    leaf = ""
    for line in lines:
        text = line.strip()
        if text.startswith("|-- "):
            leaf = text[4:]
        elif leaf and text.startswith("/32 host LOCAL"):
            found.add(leaf)
    return found


def offload_flags(policy: str, bridge_kind: str, ovs_tso: bool = False) -> tuple[bool, bool]:
    """(TAP offloads, RX coalescing) for an offload policy and the kind of bridge the TAP is on.

    auto: the TAP takes TSO super-frames and partial checksums everywhere (that only
    changes what ovl-dp reads), and received TCP segments are coalesced into
    super-frames towards a Linux bridge, and towards Open vSwitch only when its
    userspace datapath carries TSO (ovs_tso: ``other_config:userspace-tso-enable``,
    control.ovs.userspace_tso); without it OVS drops 64 KiB frames, and whatever a
    user plugs an unattached TAP into may not cope with them either.
    """
    if policy == "off":
        return False, False
    if policy == "on":
        return True, True
    return True, bridge_kind == "linux" or (bridge_kind == "ovs" and ovs_tso)


def resolve(cfg: Config, bridge_kind: str = "none", ovs_tso: bool = False) -> Config:
    """cfg with routes, MTUs and the TAP identity filled in; SetupError on anything wrong with the host.

    ovs_tso: the TAP goes on an Open vSwitch bridge whose datapath carries TSO (see offload_flags).
    """
    own = local_addresses()
    for local in cfg.tunnel.locals:
        if local not in own:
            raise ConfigError(f"{{tunnel.local}} {local} is not an address of this host")
    remotes = []
    path_mtus = []
    for r in cfg.remotes:
        if r.addr in own or ipaddress.ip_address(r.addr).is_loopback:
            raise ConfigError(f"{{remotes}} {r.addr} is an address of this host: a tunnel needs another host")
        src, mtu = underlay.route_to(r.addr)
        remotes.append(Remote(r.addr, cfg.tunnel.local_for(r.family) or src))
        path_mtus.append(mtu)
    if cfg.membership.enabled:  # issue 12: the address we publish (it also picks the family of a daemon
        # without static remotes), and with no remote yet, the underlay MTU of the link that carries it
        cfg = dataclasses.replace(cfg, membership=resolve_membership(cfg, own))
        if not path_mtus:
            assert cfg.membership.address is not None
            path_mtus.append(address_mtu(cfg.membership.address))
    underlay_mtu = cfg.tunnel.underlay_mtu or min(path_mtus)
    tap_mtu = cfg.tap.mtu if cfg.tap.mtu is not None else underlay_mtu - cfg.overhead
    if tap_mtu < MIN_MTU:
        raise ConfigError(f"{{tap.mtu}}: TAP MTU {tap_mtu} is below {MIN_MTU} (underlay MTU {underlay_mtu})")
    assert cfg.tap.name is not None  # Config names the TAP
    ours = remotes[0].local if remotes else cfg.membership.address
    mac = cfg.tap.mac or tap_mac(ours or "", cfg.tunnel.mode, cfg.base_id, cfg.tap.name)
    _, coalesce = offload_flags(cfg.offload.policy, bridge_kind, ovs_tso)
    return dataclasses.replace(
        cfg,
        tunnel=dataclasses.replace(cfg.tunnel, underlay_mtu=underlay_mtu),
        remotes=tuple(remotes),
        tap=dataclasses.replace(cfg.tap, mtu=tap_mtu, mac=mac),
        offload=dataclasses.replace(
            cfg.offload, rx_coalesce=cfg.offload.rx_coalesce if cfg.offload.rx_coalesce is not None else coalesce
        ),
    )


def resolve_membership(cfg: Config, own: set[str]) -> MembershipConfig:
    """cfg.membership with the address we publish filled in: membership.address (which must be ours), else
    tunnel.local of the first etcd endpoint's family, else the source address of the route to that endpoint.

    ConfigError when the address is not this host's, or is a loopback one (etcd reached through a local
    proxy: give --advertise).
    """
    m = cfg.membership
    if m.address is not None:
        if m.address not in own:
            raise ConfigError(f"{{membership.address}} {m.address} is not an address of this host")
        return m
    host, port = etcd_host_port(m.etcd[0])
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(
            f"{{membership.etcd}} {m.etcd[0]}: cannot resolve {host} ({exc}); give {{membership.address}}"
        ) from None
    target = str(infos[0][4][0])
    fam = 6 if infos[0][0] == socket.AF_INET6 else 4
    addr = cfg.tunnel.local_for(fam)
    if addr is None:
        try:
            addr, _ = underlay.route_to(target, what="etcd endpoint")
        except SetupError as exc:
            raise ConfigError(f"{{membership.etcd}} {m.etcd[0]}: {exc}; give {{membership.address}}") from None
        addr = str(ipaddress.ip_address(addr))
    if ipaddress.ip_address(addr).is_loopback:
        raise ConfigError(
            f"{{membership.etcd}} {m.etcd[0]} is reached over loopback: give the underlay address to publish "
            "({membership.address})"
        )
    return dataclasses.replace(m, address=addr)


def address_mtu(addr: str) -> int:
    """The MTU of the interface that holds addr (the underlay MTU of a daemon that has no remote yet)."""
    from pyroute2 import IPRoute

    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=fam):
            value = a.get_attr("IFA_ADDRESS")
            if value is not None and str(ipaddress.ip_address(value)) == addr:
                (link,) = ipr.get_links(a["index"])
                return int(link.get_attr("IFLA_MTU"))
    raise SetupError(f"no interface holds {addr}")


# -- where the configuration comes from ---------------------------------------------------------

# A file's tables: every group of datapath.config's Config; top-level keys: remotes, batch.
FILE_GROUPS = frozenset(GROUPS)
FILE_TOP_KEYS = frozenset({"remotes", "batch", "metrics"})
# Keys of the daemon itself rather than of its datapath (not part of datapath.config's Config).
DAEMON_KEYS = frozenset({"metrics"})
GROUP_KEYS = frozenset({f"{g}.{f.name}" for g, cls in GROUPS.items() for f in dataclasses.fields(cls)} | FILE_TOP_KEYS)


def load_file(path: Path) -> dict[str, object]:
    """The configuration keys of a TOML file ({"tunnel.vni": 5001, "remotes": [...], ...}).

    ConfigError names an unknown table or a key outside one; SetupError says why the file cannot be read.
    """
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise SetupError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SetupError(f"configuration file {path} is not valid TOML: {exc}") from None
    keys: dict[str, object] = {}
    for name, value in data.items():
        if name in FILE_GROUPS and isinstance(value, dict):
            keys.update((f"{name}.{k}", v) for k, v in value.items())
        elif name in FILE_TOP_KEYS:
            keys[name] = value
        else:
            raise ConfigError(f"{{{name}}} is not a configuration key (tables: {', '.join(sorted(FILE_GROUPS))})")
    return keys


@dataclass(frozen=True)
class ConfigSource:
    """A daemon's configuration: an optional TOML file, with the keys given on the command line over it.

    load() is called at start and again on every reload, so the file is re-read each time.
    """

    cli: Mapping[str, object] = field(default_factory=dict)
    file: Path | None = None

    def keys(self) -> dict[str, object]:
        """The file's keys, then the command line's over them."""
        return {**(load_file(self.file) if self.file else {}), **self.cli}

    def load(self) -> Config:
        """The validated (not yet resolved) configuration; ConfigError names the key."""
        return from_keys({k: v for k, v in self.keys().items() if k not in DAEMON_KEYS})

    def metrics_at(self, given: tuple[str, int] | None) -> tuple[str, int] | None:
        """Where to serve /metrics: the command line's --metrics, else the file's metrics key, else nowhere."""
        if given is not None or self.file is None:
            return given
        value = load_file(self.file).get("metrics")
        if value is None:
            return None
        from control.metrics import parse_listen

        try:
            return parse_listen(str(value))
        except ValueError as exc:
            raise ConfigError(f"{{metrics}}: {exc}") from None

    def names(self, options: Mapping[str, str]) -> dict[str, str]:
        """How messages name each key: its option if given on the command line (or no file), else "KEY (in FILE)"."""
        if self.file is None:
            return dict(options)
        given = set(self.cli)
        named = {k: f"{k} (in {self.file})" for k in GROUP_KEYS}
        named.update({k: v for k, v in options.items() if k in given})
        return named
