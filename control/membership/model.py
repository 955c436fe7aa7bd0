"""The etcd data model of a net: key layout, the JSON values, parsing with clear errors. Pure: no I/O.

Everything of a net lives under one prefix, versioned so that the schema can change without
upgrading every host at once (a v2 daemon writes under ``/ovl-dp/v2/``)::

    /ovl-dp/v1/nets/<net>/config                JSON written by the operator (or the first daemon)
    /ovl-dp/v1/nets/<net>/members/<addr>        JSON, on the member's own lease
    /ovl-dp/v1/nets/<net>/static/<vlan>/<mac>   JSON {"remote": addr}, written by the operator

``<addr>`` is the canonical text of the member's underlay address (IPv4 dotted quad, IPv6
compressed lower case); ``<vlan>`` is decimal, 0 = untagged; ``<mac>`` is lower case with colons.
Values are UTF-8 JSON objects; keys a version does not know are ignored, so that a newer writer
may add some.

Every parser raises :class:`ModelError` (a ValueError) whose message says what is wrong in one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from datapath.config import ConfigError, check_address
from datapath.ether import format_mac, is_multicast, parse_mac

PREFIX = "/ovl-dp/v1/"
NET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MODES = ("vxlan", "gre")
VXLAN_PORT = 4789


class ModelError(ValueError):
    """A key or a value that does not follow the data model; the message says why."""


def check_net(name: object) -> str:
    """name if it is a valid net name ([a-z0-9][a-z0-9._-]{0,62}); ModelError otherwise."""
    if not isinstance(name, str) or NET_NAME.fullmatch(name) is None:
        raise ModelError(f"bad net name {name!r}: expected [a-z0-9][a-z0-9._-]{{0,62}}")
    return name


def canonical_addr(text: object) -> str:
    """text as the canonical form of a unicast IPv4 or IPv6 address (IPv6 compressed, lower case).

    Refused like the datapath refuses a remote: not an address, multicast, unspecified, broadcast,
    IPv4-mapped IPv6, IPv6 link-local, or with a scope (``%eth0``).
    """
    if not isinstance(text, str) or "%" in text:
        raise ModelError(f"{text!r} is not an IP address")
    try:
        return check_address("address", text)  # the datapath's own rule for a remote, one place
    except ConfigError as exc:
        raise ModelError(exc.render({"address": ""}).strip()) from None


def family(addr: str) -> int:
    """4 or 6: the IP version of a canonical address."""
    return 6 if ":" in addr else 4


def canonical_mac(text: object) -> bytes:
    """A unicast, non-zero MAC address in text (``aa:bb:cc:dd:ee:ff``) as 6 bytes; ModelError otherwise."""
    if not isinstance(text, str):
        raise ModelError(f"bad MAC address {text!r}: not a string")
    try:
        mac = parse_mac(text)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if is_multicast(mac) or not any(mac):
        raise ModelError(f"MAC address {text} is not a unicast address")
    return mac


# -- keys ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyKind:
    """What a key under a net's prefix is: kind "config", "member" (addr), "static" (vlan, mac) or
    "other" (a key this version does not know: ignored)."""

    kind: str
    addr: str = ""
    vlan: int = 0
    mac: bytes = b""


@dataclass(frozen=True)
class NetKeys:
    """The key layout of one net."""

    net: str

    def __post_init__(self) -> None:
        check_net(self.net)

    @property
    def prefix(self) -> str:
        """Every key of the net starts with it (one list, one watch)."""
        return f"{PREFIX}nets/{self.net}/"

    @property
    def config(self) -> str:
        """The net's config key."""
        return self.prefix + "config"

    @property
    def members(self) -> str:
        """The prefix of the member keys."""
        return self.prefix + "members/"

    @property
    def statics(self) -> str:
        """The prefix of the static FDB entry keys."""
        return self.prefix + "static/"

    def member(self, addr: str) -> str:
        """The member key of an address (made canonical)."""
        return self.members + canonical_addr(addr)

    def static(self, vlan: int, mac: bytes) -> str:
        """The key of a static FDB entry."""
        return f"{self.statics}{check_vlan(vlan)}/{format_mac(mac)}"

    def classify(self, key: str) -> KeyKind:
        """What key is; ModelError for a member or static key whose name breaks the layout.

        A member key must name the canonical form of an address; a static key a VLAN 0..4094 in
        decimal and a unicast MAC in lower case with colons. Keys outside the prefix: ModelError.
        """
        if not key.startswith(self.prefix):
            raise ModelError(f"key {key!r} is not under {self.prefix}")
        rest = key[len(self.prefix) :]
        if rest == "config":
            return KeyKind("config")
        if rest.startswith("members/"):
            name = rest[len("members/") :]
            addr = canonical_addr(name)
            if addr != name:
                raise ModelError(f"member key {key!r}: the address must be written {addr}")
            return KeyKind("member", addr=addr)
        if rest.startswith("static/"):
            parts = rest[len("static/") :].split("/")
            if len(parts) != 2:
                raise ModelError(f"static key {key!r}: expected static/<vlan>/<mac>")
            vlan_text, mac_text = parts
            if not vlan_text.isdigit() or str(int(vlan_text)) != vlan_text:
                raise ModelError(f"static key {key!r}: VLAN {vlan_text!r} is not a decimal number")
            vlan = check_vlan(int(vlan_text))
            mac = canonical_mac(mac_text)
            if format_mac(mac) != mac_text:
                raise ModelError(f"static key {key!r}: the MAC must be written {format_mac(mac)}")
            return KeyKind("static", vlan=vlan, mac=mac)
        return KeyKind("other")


def check_vlan(vlan: object) -> int:
    """A VLAN id 0..4094 (0 = untagged); ModelError otherwise."""
    if not isinstance(vlan, int) or isinstance(vlan, bool) or not 0 <= vlan <= 4094:
        raise ModelError(f"VLAN {vlan!r} is not in 0..4094 (0 = untagged)")
    return vlan


# -- values ----------------------------------------------------------------------------------------


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelError(f"{what}: not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{what}: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _int(obj: dict[str, Any], name: str, what: str, lo: int, hi: int) -> int:
    v = obj.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ModelError(f"{what}: {name!r} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ModelError(f"{what}: {name!r} {v} is not in {lo}..{hi}")
    return v


def _str(obj: dict[str, Any], name: str, what: str, default: str | None = None) -> str:
    v = obj.get(name, default)
    if not isinstance(v, str):
        raise ModelError(f"{what}: {name!r} must be a string, got {v!r}")
    return v


@dataclass(frozen=True)
class NetConfig:
    """What every member of a net must agree on: mode, the VNI (VXLAN) or GRE key, the VXLAN port.

    vni and port are None for GRE; key is None for VXLAN (and for GRE without a key).
    """

    mode: str
    vni: int | None = None
    key: int | None = None
    port: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ModelError(f"net config: 'mode' must be one of {', '.join(MODES)}, got {self.mode!r}")

    @classmethod
    def parse(cls, raw: bytes) -> NetConfig:
        """The JSON value of a config key; ModelError naming the field otherwise. Extra keys are ignored."""
        obj = _object(raw, "net config")
        mode = obj.get("mode")
        if mode not in MODES:
            raise ModelError(f"net config: 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "vxlan":
            vni = _int(obj, "vni", "net config", 0, (1 << 24) - 1)
            port = _int(obj, "port", "net config", 1, 65535) if "port" in obj else VXLAN_PORT
            return cls("vxlan", vni=vni, port=port)
        key = None if obj.get("key") is None else _int(obj, "key", "net config", 0, (1 << 32) - 1)
        return cls("gre", key=key)

    def to_json(self) -> bytes:
        """The value written when a daemon creates the net."""
        if self.mode == "vxlan":
            return _dump({"mode": "vxlan", "vni": self.vni, "port": self.port})
        return _dump({"mode": "gre", "key": self.key})

    def describe(self) -> str:
        """One line: 'vxlan vni 42 port 4789', 'gre key 7', 'gre without key'."""
        if self.mode == "vxlan":
            return f"vxlan vni {self.vni} port {self.port}"
        return f"gre key {self.key}" if self.key is not None else "gre without key"

    def differences(self, theirs: NetConfig) -> list[str]:
        """What theirs (etcd's) disagrees on with ours (self), one 'name: etcd has X, we have Y' per field.

        Compared: mode; for VXLAN vni and port; for GRE key. Empty: they agree.
        """
        if self.mode != theirs.mode:
            return [f"mode: etcd has {theirs.mode}, we have {self.mode}"]
        names = ("vni", "port") if self.mode == "vxlan" else ("key",)
        out = []
        for name in names:
            a, b = getattr(self, name), getattr(theirs, name)
            if a != b:
                out.append(f"{name}: etcd has {_show(b)}, we have {_show(a)}")
        return out


def _show(v: int | None) -> str:
    return "none" if v is None else str(v)


@dataclass(frozen=True)
class Member:
    """A member value: who holds an address of the net.

    Required: addr, mac, hostname, machine_id, netns; version, pid and joined may be missing
    ("", 0, 0.0). "Ours" (our own earlier run, or the daemon we take over from) is the same
    machine_id and the same netns: lab hosts on one machine share /etc/machine-id.
    """

    addr: str
    mac: str
    hostname: str
    machine_id: str
    netns: int
    version: str = ""
    pid: int = 0
    joined: float = 0.0

    @classmethod
    def parse(cls, raw: bytes) -> Member:
        """A member key's JSON value; ModelError naming the field otherwise. Extra keys are ignored."""
        obj = _object(raw, "member")
        return cls.from_dict(obj)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Member:
        """A member from its JSON object (the daemon's `me`); ModelError naming the field otherwise."""
        what = "member"
        try:
            addr = canonical_addr(obj.get("addr"))
        except ModelError as exc:
            raise ModelError(f"member: 'addr': {exc}") from None
        try:
            mac = format_mac(canonical_mac(obj.get("mac")))
        except ModelError as exc:
            raise ModelError(f"member: 'mac': {exc}") from None
        hostname = _str(obj, "hostname", what)
        machine_id = _str(obj, "machine_id", what)
        if not machine_id:
            raise ModelError("member: 'machine_id' is empty")
        netns = _int(obj, "netns", what, 0, (1 << 64) - 1)
        version = _str(obj, "version", what, "")
        pid = _int(obj, "pid", what, 0, (1 << 31) - 1) if "pid" in obj else 0
        joined = obj.get("joined", 0.0)
        if isinstance(joined, bool) or not isinstance(joined, int | float) or not math.isfinite(joined):
            raise ModelError(f"member: 'joined' must be a number (unix time), got {joined!r}")
        return cls(addr, mac, hostname, machine_id, netns, version, pid, float(joined))

    def to_json(self) -> bytes:
        """The value we write under our member key."""
        return _dump(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The JSON object."""
        return {
            "addr": self.addr,
            "mac": self.mac,
            "hostname": self.hostname,
            "machine_id": self.machine_id,
            "netns": self.netns,
            "version": self.version,
            "pid": self.pid,
            "joined": self.joined,
        }

    def same_owner(self, other: Member) -> bool:
        """other is held by the same host as self (same machine_id AND same netns)."""
        return self.machine_id == other.machine_id and self.netns == other.netns

    def describe_owner(self) -> str:
        """'host NAME (machine id ID, netns N, pid P)' for error messages."""
        return f"host {self.hostname or '?'} (machine id {self.machine_id}, netns {self.netns}, pid {self.pid})"


def parse_static(raw: bytes) -> str:
    """A static entry's JSON value {"remote": addr} -> the canonical remote address; ModelError otherwise."""
    obj = _object(raw, "static entry")
    try:
        return canonical_addr(obj.get("remote"))
    except ModelError as exc:
        raise ModelError(f"static entry: 'remote': {exc}") from None


def static_json(remote: str) -> bytes:
    """The value of a static entry (for tools and tests)."""
    return _dump({"remote": canonical_addr(remote)})
