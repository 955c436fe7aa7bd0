"""Counter names shared by the pure-Python path and the C fast path.

The numeric values of :class:`Drop` are the ``OVL_DROP_*`` enum in
``csrc/ovl.h``; a unit test holds the two together. The C counter arrays are
indexed by the ``OVL_STAT_*`` / ``OVL_REMOTE_*`` / ``OVL_FDB_*`` enums in the order
of the field tuples below (also held by a test).
"""

from __future__ import annotations

from enum import IntEnum


class Drop(IntEnum):
    """Why a frame or packet was dropped. Decap/encap helpers return ``-Drop``."""

    TX_RUNT = 1  # frame from the TAP shorter than an Ethernet header
    TX_TOO_BIG = 2  # encapsulated packet larger than the underlay MTU
    TX_ERROR = 3  # the underlay socket refused the packet
    RX_NOT_REMOTE = 4  # outer source is not a configured remote
    RX_TRUNCATED = 5  # shorter than the headers it announces, or no inner Ethernet header
    RX_BAD_FLAGS = 6  # VXLAN without the I flag; GRE with the routing bit
    RX_BAD_VNI = 7  # VXLAN VNI is not ours
    RX_BAD_VERSION = 8  # GRE version is not 0
    RX_BAD_PROTO = 9  # GRE protocol type is not transparent Ethernet bridging
    RX_BAD_KEY = 10  # GRE key is not ours
    RX_BAD_CSUM = 11  # GRE checksum present and wrong
    RX_BAD_SRC_MAC = 12  # inner source MAC is multicast or zero
    RX_TAP_ERROR = 13  # writing the inner frame to the TAP failed
    TX_BAD_OFFLOAD = 14  # frame from the TAP with a virtio header or GSO super-frame we cannot handle
    TX_FULL = 15  # the underlay socket's send buffer or device queue was full: dropped, never waited for
    RX_BAD_SUPER = 16  # inner frame beyond the TAP MTU and a ring slot, not a TCP super-packet we can pass on
    RX_ECN = 17  # (issue 11, ecn) outer CE on an inner Not-ECT packet (RFC 6040)
    RX_BAD_DST = 18  # (issue 11, v6) an IPv6 GRE packet not to the local address of the remote it came from


# Per-remote counters, in the order of enum ovl_remote_stat.
REMOTE_FIELDS: tuple[str, ...] = ("tx_packets", "tx_bytes", "tx_flood", "rx_packets", "rx_bytes")

# Datapath-wide counters besides drops, in the order of enum ovl_stat.
# tap_rx / tap_tx count frames as segments; tap_rx_gso / tap_tx_gso count the TCP
# super-frames among them (read and segmented / coalesced and written; C path with offloads).
# tx_gso: UDP_SEGMENT sends carrying several VXLAN datagrams; rx_gro: UDP_GRO buffers holding several.
# rx_super / rx_super_split: super-packets received whole (inner TCP beyond the TAP MTU, C path) and
# written as one TSO frame / cut into segments here (csrc/rx_super.c).
STAT_FIELDS: tuple[str, ...] = (
    "tap_rx",
    "tap_tx",
    "tx_unicast",
    "tx_flooded",
    "tap_rx_gso",
    "tap_tx_gso",
    "tx_gso",
    "rx_gro",
    "rx_super",
    "rx_super_split",
    # issue 11 (slots fixed for all its parts): pmtu, mss, ecn
    "tx_pmtu_icmp",
    "tx_pmtu_limited",
    "tx_fragmented",
    "mss_clamped",
    "rx_ecn_ce",
)

# VXLAN TX through the injection TAP (C path), in the order of enum ovl_inject_stat:
# writes / frames / segments sent that way; super-frames segmented by us instead (fallback_*:
# outer IPv4 length past 65,535, gso_size too big for the underlay MTU, not describable, the
# kernel refused a write earlier); failed writes; frames the kernel sent to that TAP (dropped).
INJECT_FIELDS: tuple[str, ...] = (
    "writes",
    "frames",
    "segments",
    "fallback_too_big",
    "fallback_mtu",
    "fallback_other",
    "fallback_off",
    "errors",
    "drained",
)

# FDB counters, in the order of enum ovl_fdb_stat.
FDB_FIELDS: tuple[str, ...] = ("learns", "moves", "refused_full", "aged")


def drop_name(reason: int) -> str:
    """Lower-case name of a drop reason, as shown in logs and ``ovl-dp show``."""
    return Drop(reason).name.lower()


class Snapshot:
    """A copy of every counter, as the control plane reads it."""

    def __init__(
        self,
        stats: dict[str, int],
        drops: dict[str, int],
        remotes: list[dict[str, int | str]],
        fdb: dict[str, int],
        inject: dict[str, int] | None = None,
    ) -> None:
        self.stats = stats
        self.drops = drops
        self.remotes = remotes
        self.fdb = fdb
        self.inject = inject  # INJECT_FIELDS while the injection TAP is set up, else None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (``inject`` only when the injection TAP is set up)."""
        d: dict[str, object] = {"stats": self.stats, "drops": self.drops, "remotes": self.remotes, "fdb": self.fdb}
        if self.inject is not None:
            d["inject"] = self.inject
        return d

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self.as_dict() == other.as_dict()

    def __repr__(self) -> str:
        return f"Snapshot({self.as_dict()!r})"
