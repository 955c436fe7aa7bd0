"""TCP MSS clamping (``--clamp-mss auto|N|off``): the pure-Python reference of ``csrc/mss.c``.

The MSS option (RFC 9293 3.7.1: kind 2, length 4) of a TCP SYN or SYN-ACK crossing the
tunnel, either way, is lowered to what fits (never raised), and the TCP checksum updated
incrementally (RFC 1624, eqn. 3), so that hosts whose MTU is larger than the tunnel's and
that never see an ICMP "too big" still agree on segments that fit.

A received frame's TCP checksum may be the pseudo-header seed (its sender left it to
offload and it crossed a virtual hop): the seed does not cover the option and is left as
it is (``partial``); the C path completes it on the way to the TAP. A wrong checksum
stays exactly as wrong.

What is read: Ethernet with up to two VLAN tags, IPv4 (not a fragment) or IPv6 with TCP
as the next header (no extension headers), the TCP header and its options inside the IP
length. Options are walked with every length checked: EOL ends them, a malformed option
(length below 2 or past the header) ends the walk and what follows is not read, an MSS
option of another length than 4 is skipped. Every MSS option before that is clamped. A SYN
without an MSS option is left alone (its peer assumes 536 / 1220, which fit).
"""

from __future__ import annotations

import struct

from datapath.encap.ipv4 import header_len
from datapath.ether import ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP

CLAMP_OFF = 0  # OVL_CLAMP_MSS_OFF
CLAMP_AUTO = 1  # OVL_CLAMP_MSS_AUTO
MSS_MIN = 536  # smallest fixed clamp: the IPv4 default MSS (RFC 9293 3.7.1)
MSS_MAX = 65495  # largest fixed clamp: 65,535 - IPv4 - TCP headers
TCP_MIN_MSS = 88  # Linux's floor for an MSS computed from a tiny MTU (include/net/tcp.h)
IPV4_HLEN = 20
IPV6_HLEN = 40
TCP_HLEN = 20
TCP_SYN = 0x02
TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOLEN_MSS = 4
_IP_MF_OFFSET = 0x3FFF
_VLAN_HLEN = 4


def l3_offset(frame: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(offset of the network header behind up to two VLAN tags, its EtherType); (0, 0) if cut short."""
    if len(frame) < ETH_HLEN:
        return 0, 0
    off = 12
    etype = (frame[off] << 8) | frame[off + 1]
    for _ in range(2):
        if etype not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        off += _VLAN_HLEN
        if len(frame) < off + 2:
            return 0, 0
        etype = (frame[off] << 8) | frame[off + 1]
    return off + 2, etype


def _sum16(data: bytes | bytearray | memoryview) -> int:
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def _fold(s: int) -> int:
    """The end-around carry, complemented (csum.c fold)."""
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def find_syn(frame: bytes | bytearray | memoryview) -> tuple[int, int, bool, int, int] | None:
    """The TCP SYN in frame as (IP header offset, TCP header offset, IPv6?, TCP length, data offset), or None."""
    l3, etype = l3_offset(frame)
    if not l3:
        return None
    n = len(frame)
    ip = memoryview(frame)[l3:]
    if etype == ETH_P_IP:
        ihl = header_len(ip)
        if ihl < 0 or ip[9] != IPPROTO_TCP or ((ip[6] << 8) | ip[7]) & _IP_MF_OFFSET:
            return None
        tot = (ip[2] << 8) | ip[3]
        if tot < ihl or tot > n - l3:
            return None
        l4, l4len, v6 = l3 + ihl, tot - ihl, False
    elif etype == ETH_P_IPV6:
        if n - l3 < IPV6_HLEN or ip[0] >> 4 != 6 or ip[6] != IPPROTO_TCP:
            return None
        plen = (ip[4] << 8) | ip[5]
        if plen > n - l3 - IPV6_HLEN:
            return None
        l4, l4len, v6 = l3 + IPV6_HLEN, plen, True
    else:
        return None
    if l4len < TCP_HLEN:
        return None
    doff = (frame[l4 + 12] >> 4) * 4
    if doff < TCP_HLEN or doff > l4len or not frame[l4 + 13] & TCP_SYN:
        return None
    return l3, l4, v6, l4len, doff


def _pseudo_sum(frame: bytearray, l3: int, v6: bool, l4len: int) -> int:
    addrs = frame[l3 + 8 : l3 + 40] if v6 else frame[l3 + 12 : l3 + 20]
    return _sum16(addrs) + IPPROTO_TCP + l4len


def _csum_replace(check: int, odd: bool, old: int, new: int) -> int:
    """RFC 1624 eqn. 3 for a 16-bit field at an offset of parity odd from the start of the summed data."""
    if odd:
        old = ((old << 8) | (old >> 8)) & 0xFFFF
        new = ((new << 8) | (new >> 8)) & 0xFFFF
    return _fold((~check & 0xFFFF) + (~old & 0xFFFF) + new)


def clamp(frame: bytearray, limit: int, *, partial: bool) -> bool:
    """Lower every MSS option of the TCP SYN / SYN-ACK in frame above limit to limit, in place.

    partial: a checksum equal to the pseudo-header seed is a partial one and stays as it is
    (received frames); otherwise it is updated. True if an option was lowered.
    """
    found = find_syn(frame)
    if found is None or limit > 0xFFFF:
        return False
    l3, l4, v6, l4len, doff = found
    seed = ~_fold(_pseudo_sum(frame, l3, v6, l4len)) & 0xFFFF
    seeded = partial and ((frame[l4 + 16] << 8) | frame[l4 + 17]) == seed
    lowered = False
    i = TCP_HLEN
    while i < doff:
        kind = frame[l4 + i]
        if kind == TCPOPT_EOL:
            break
        if kind == TCPOPT_NOP:
            i += 1
            continue
        if i + 1 >= doff:
            break  # no room for the length: malformed
        olen = frame[l4 + i + 1]
        if olen < 2 or i + olen > doff:
            break  # malformed: not read further
        if kind == TCPOPT_MSS and olen == TCPOLEN_MSS:
            at = l4 + i + 2
            (mss,) = struct.unpack_from("!H", frame, at)
            if mss > limit:
                struct.pack_into("!H", frame, at, limit)
                if not seeded:
                    (check,) = struct.unpack_from("!H", frame, l4 + 16)
                    struct.pack_into("!H", frame, l4 + 16, _csum_replace(check, bool((i + 2) & 1), mss, limit))
                lowered = True
        i += olen
    return lowered


def syn_l2(frame: bytes | bytearray | memoryview) -> tuple[int, bool] | None:
    """(length of frame's L2 header, IPv6?) if frame is a TCP SYN clamp would read, else None."""
    found = find_syn(frame)
    return None if found is None else (found[0], found[2])


def auto_limit(l3_mtus: list[int], v6: bool) -> int:
    """The auto clamp: the smallest of l3_mtus (what an inner frame may be from its L3 header on,
    per remote it goes to) less the IP and TCP headers, never below TCP_MIN_MSS."""
    mss = min(l3_mtus) - (IPV6_HLEN if v6 else IPV4_HLEN) - TCP_HLEN
    return max(mss, TCP_MIN_MSS)


def parse_setting(value: object) -> int:
    """A --clamp-mss / tunnel.clamp_mss value ("off", "auto", a number or its text) as the C side's
    number (CLAMP_OFF, CLAMP_AUTO, or the fixed MSS); ValueError with the reason otherwise."""
    if value == "off":
        return CLAMP_OFF
    if value == "auto":
        return CLAMP_AUTO
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"must be auto, off or an MSS {MSS_MIN}..{MSS_MAX}, not {value!r}")
    if not MSS_MIN <= value <= MSS_MAX:
        raise ValueError(f"MSS {value} is out of range {MSS_MIN}..{MSS_MAX}")
    return value


def describe(setting: int, l3_mtu: int) -> str:
    """The start log's words for a clamp setting, l3_mtu what an untagged inner frame may be from its IP header on."""
    if setting == CLAMP_OFF:
        return "off"
    if setting != CLAMP_AUTO:
        return f"to {setting}"
    return f"auto (IPv4 {auto_limit([l3_mtu], False)}, IPv6 {auto_limit([l3_mtu], True)} in untagged frames)"
