"""Ethernet frame helpers (IEEE 802.3 / 802.1Q) and the inner-flow hash.

The flow hash picks the VXLAN UDP source port (RFC 7348 §5): frames of one
inner flow always get the same port, different flows spread over the range.
The C fast path implements the same function (``ovl_flow_hash``); tests hold
them equal.
"""

from __future__ import annotations

import struct

ETH_HLEN = 14
ETH_ALEN = 6
VLAN_HLEN = 4
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_VID_MASK = 0x0FFF
VLAN_ID_MAX = 4095  # the FDB keys on 12-bit VLAN IDs, 0 = untagged
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_SCTP = 132

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_PORTS_PROTOS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP)


def parse_mac(text: str) -> bytes:
    """'aa:bb:cc:dd:ee:ff' (or with '-') to 6 bytes; ValueError with a clear message otherwise."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != ETH_ALEN or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"bad MAC address {text!r}: expected six hex bytes like 02:00:00:00:00:01")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"bad MAC address {text!r}: not hexadecimal") from None


def format_mac(mac: bytes) -> str:
    """6 bytes to 'aa:bb:cc:dd:ee:ff'."""
    return ":".join(f"{b:02x}" for b in mac)


def is_multicast(mac: bytes | memoryview) -> bool:
    """True for group addresses (broadcast included): the I/G bit of the first octet."""
    return bool(mac[0] & 1)


def is_valid_source(mac: bytes | memoryview) -> bool:
    """A source MAC a switch may learn: unicast and not all-zero (as the Linux bridge checks)."""
    return not (mac[0] & 1) and any(mac[:ETH_ALEN])


def vlan_id(frame: bytes | bytearray | memoryview) -> int:
    """The VLAN of frame for switching: the VID of its 802.1Q tag, 0 if it has none.

    Only a single tag with TPID 0x8100 right after the MAC addresses counts
    (0x88a8 is an S-tag, not a VLAN here), and only if the whole tag is there.
    A priority tag (VID 0) is VLAN 0, like an untagged frame.
    """
    if len(frame) >= ETH_HLEN + VLAN_HLEN and frame[12] == ETH_P_8021Q >> 8 and frame[13] == ETH_P_8021Q & 0xFF:
        return ((frame[14] << 8) | frame[15]) & VLAN_VID_MASK
    return 0


def strip_vlan(frame: bytes | bytearray | memoryview) -> bytes:
    """frame without the 4-byte tag after its MAC addresses (the caller checked vlan_id(frame) != 0)."""
    return bytes(frame[:12]) + bytes(frame[12 + VLAN_HLEN :])


def insert_vlan(frame: bytes | bytearray | memoryview, vid: int) -> bytes:
    """frame with an 802.1Q tag (TPID 0x8100, PCP 0, DEI 0, VID vid) inserted after its MAC addresses."""
    return bytes(frame[:12]) + struct.pack("!HH", ETH_P_8021Q, vid & VLAN_VID_MASK) + bytes(frame[12:])


def flow_key(frame: bytes | memoryview) -> bytes:
    """The bytes that identify the inner flow of frame (frame is at least ETH_HLEN long).

    IPv4/IPv6: addresses and protocol, plus the L4 ports for TCP/UDP/SCTP when
    present and not an IPv4 fragment. Anything else: MAC addresses and EtherType.
    One 802.1Q/802.1ad tag is skipped.
    """
    n = len(frame)
    off = ETH_HLEN
    ethertype = (frame[12] << 8) | frame[13]
    if ethertype in (ETH_P_8021Q, ETH_P_8021AD) and n >= off + VLAN_HLEN:
        ethertype = (frame[16] << 8) | frame[17]
        off += VLAN_HLEN
    if ethertype == ETH_P_IP and n >= off + 20 and frame[off] >> 4 == 4:
        ihl = (frame[off] & 0x0F) * 4
        proto = frame[off + 9]
        key = bytes(frame[off + 12 : off + 20]) + bytes([proto])
        frag = ((frame[off + 6] << 8) | frame[off + 7]) & 0x3FFF  # MF + offset
        if proto in _PORTS_PROTOS and ihl >= 20 and frag == 0 and n >= off + ihl + 4:
            key += bytes(frame[off + ihl : off + ihl + 4])
        return key
    if ethertype == ETH_P_IPV6 and n >= off + 40 and frame[off] >> 4 == 6:
        nexthdr = frame[off + 6]
        key = bytes(frame[off + 8 : off + 40]) + bytes([nexthdr])
        if nexthdr in _PORTS_PROTOS and n >= off + 44:
            key += bytes(frame[off + 40 : off + 44])
        return key
    return bytes(frame[0:12]) + bytes([ethertype >> 8, ethertype & 0xFF])


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a: small, fast in C, and good enough to spread flows."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def flow_hash(frame: bytes | memoryview) -> int:
    """32-bit hash of the inner flow of frame."""
    return fnv1a32(flow_key(frame))
