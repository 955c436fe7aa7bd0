"""Path MTU towards the inner sender (issue 11, pmtu part): the reference of csrc/pmtu.c.

Pure steps, no I/O:

- :func:`reply`: the ICMP "fragmentation needed" (inner IPv4 with DF) or ICMPv6 "packet too
  big" (inner IPv6) that answers a frame too big for the tunnel's path, as the kernel builds it
  for a bridged tunnel since Linux 5.9 (``skb_tunnel_check_pmtu`` / ``iptunnel_pmtud_build_icmp``
  / ``iptunnel_pmtud_check_icmp[v6]`` in net/ipv4/ip_tunnel_core.c), with the same exclusions;
- :func:`may_fragment`: inner IPv4 without DF, which the ``--df`` policy lets leave in outer
  IPv4 fragments (not with ``set``);
- :func:`fragment`: those fragments (RFC 791), with our own IP id;
- :class:`TokenBucket`: the replies' rate limit.
"""

from __future__ import annotations

import struct

from datapath.encap.ipv4 import checksum
from datapath.ether import ETH_ALEN, ETH_HLEN, VLAN_HLEN

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
IPV4_HLEN = 20
IPV6_HLEN = 40
ICMP_HLEN = 8
IP_DF = 0x4000
IP_MF = 0x2000
IP_OFFSET = 0x1FFF
IPPROTO_ICMP = 1
IPPROTO_ICMPV6 = 58
# RFC 792 / RFC 4443 and the kernel's icmp_is_err / icmpv6_is_err.
ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMP_ERRORS = frozenset({3, 4, 11, 12})  # destination unreachable, source quench, time exceeded, parameter problem
ICMPV6_PKT_TOOBIG = 2
ICMPV6_INFOMSG_MASK = 0x80
NDISC_REDIRECT = 137
IPV4_REPLY_MIN_MTU = 576  # RFC 1122; the kernel replies only from here on, and quotes up to this size
IPV6_MIN_MTU = 1280  # RFC 8200
MIN_MTU = 68  # the lowest per-remote path MTU (RFC 791), OVL_PMTU_MIN_MTU
FRAG_MIN_MTU = 576  # paths below this are not fragmented for
DEFAULT_RATE = 100.0  # replies per second, OVL_PMTU_RATE
DEFAULT_BURST = 10.0  # OVL_PMTU_BURST
# IPv6 extension headers ipv6_skip_exthdr walks.
NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH, NEXTHDR_NONE, NEXTHDR_DEST = 0, 43, 44, 51, 59, 60
_EXT = frozenset({NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH, NEXTHDR_DEST})
DF_POLICIES = ("unset", "set", "inherit")  # enum ovl_df order: OVL_DF_UNSET, OVL_DF_SET, OVL_DF_INHERIT


def l3_offset(frame: bytes) -> tuple[int, int]:
    """(offset of the network header behind up to two VLAN tags, its EtherType); offset 0 if cut short."""
    if len(frame) < ETH_HLEN:
        return 0, 0
    off = 12
    etype = int.from_bytes(frame[off : off + 2], "big")
    for _ in range(2):
        if etype not in (ETH_P_8021Q, ETH_P_8021AD):
            break
        off += VLAN_HLEN
        if len(frame) < off + 2:
            return 0, 0
        etype = int.from_bytes(frame[off : off + 2], "big")
    return off + 2, etype


def _v4_due(ip: bytes, ihl: int) -> bool:
    src, dst = int.from_bytes(ip[12:16], "big"), int.from_bytes(ip[16:20], "big")
    if int.from_bytes(ip[6:8], "big") != IP_DF:
        return False
    if dst == 0xFFFFFFFF or dst >> 28 == 0xE:
        return False
    if src >> 24 in (0, 127) or src == 0xFFFFFFFF or src >> 28 == 0xE:
        return False
    return not (ip[9] == IPPROTO_ICMP and (len(ip) < ihl + 1 or ip[ihl] in ICMP_ERRORS))


def _v6_due(ip: bytes) -> bool:
    src = ip[8:24]
    if src == bytes(16) or src == bytes(15) + b"\x01" or src[0] == 0xFF:
        return False
    nh, off = ip[6], IPV6_HLEN
    while True:
        if nh == NEXTHDR_NONE:
            return False
        if nh not in _EXT:
            break
        if len(ip) < off + 8:
            return False
        if nh == NEXTHDR_FRAGMENT:
            if int.from_bytes(ip[off + 2 : off + 4], "big") & ~7:
                return False
            hl = 8
        elif nh == NEXTHDR_AUTH:
            hl = (ip[off + 1] + 2) * 4
        else:
            hl = (ip[off + 1] + 1) * 8
        nh = ip[off]
        off += hl
    if nh == IPPROTO_ICMPV6:
        if len(ip) < off + 1:
            return False
        if not ip[off] & ICMPV6_INFOMSG_MASK or ip[off] == NDISC_REDIRECT:
            return False
    return True


def reply(frame: bytes, tci: int | None, mtu: int) -> bytes | None:
    """The ICMP / ICMPv6 reply to frame (as it was to be sent) for a usable MTU of mtu, or None if none is due.

    tci: the 802.1Q TCI of a tag the frame came with and lost (a mapped VLAN), put back first; tags
    still in the frame are copied. Ethernet goes back to the sender, IP from the inner destination to
    the inner source with the frame's TTL / hop limit; the frame's IP packet is quoted so that the
    reply's IP packet is at most 576 (IPv4) / 1280 (IPv6) bytes (ovl_pmtu_reply).
    """
    l3, etype = l3_offset(frame)
    if not l3:
        return None
    ip = bytes(frame[l3:])
    if etype == ETH_P_IP:
        if len(ip) < IPV4_HLEN or ip[0] >> 4 != 4:
            return None
        ihl = (ip[0] & 0x0F) * 4
        if ihl < IPV4_HLEN or len(ip) < ihl or mtu < IPV4_REPLY_MIN_MTU or not _v4_due(ip, ihl):
            return None
        quote = ip[: IPV4_REPLY_MIN_MTU - IPV4_HLEN - ICMP_HLEN]
        icmp = bytearray(struct.pack("!BBHHH", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, min(mtu, 0xFFFF)) + quote)
        icmp[2:4] = checksum(icmp).to_bytes(2, "big")
        hdr = bytearray(
            struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, IPV4_HLEN + len(icmp), 0, IP_DF, ip[8], IPPROTO_ICMP, 0, ip[16:20], ip[12:16]
            )
        )
        hdr[10:12] = checksum(hdr).to_bytes(2, "big")
        l3_out = bytes(hdr) + bytes(icmp)
    elif etype == ETH_P_IPV6:
        if len(ip) < IPV6_HLEN or ip[0] >> 4 != 6 or mtu < IPV6_MIN_MTU or not _v6_due(ip):
            return None
        quote = ip[: IPV6_MIN_MTU - IPV6_HLEN - ICMP_HLEN]
        icmp6 = bytearray(struct.pack("!BBHI", ICMPV6_PKT_TOOBIG, 0, 0, mtu) + quote)
        src, dst = ip[24:40], ip[8:24]
        pseudo = src + dst + struct.pack("!IxxxB", len(icmp6), IPPROTO_ICMPV6)
        icmp6[2:4] = checksum(pseudo + bytes(icmp6)).to_bytes(2, "big")
        l3_out = struct.pack("!IHBB16s16s", 6 << 28, len(icmp6), IPPROTO_ICMPV6, ip[7], src, dst) + bytes(icmp6)
    else:
        return None
    eth = bytes(frame[ETH_ALEN : 2 * ETH_ALEN]) + bytes(frame[:ETH_ALEN])
    if tci is not None:
        eth += struct.pack("!HH", ETH_P_8021Q, tci)
    return eth + bytes(frame[2 * ETH_ALEN : l3]) + l3_out


def may_fragment(frame: bytes, df: str) -> bool:
    """Inner IPv4 without DF, and a --df policy (unset / inherit) that lets its outer packet be fragmented."""
    l3, etype = l3_offset(frame)
    return (
        df != "set"
        and bool(l3)
        and etype == ETH_P_IP
        and len(frame) >= l3 + IPV4_HLEN
        and frame[l3] >> 4 == 4
        and not int.from_bytes(frame[l3 + 6 : l3 + 8], "big") & IP_DF
    )


def fragment(pkt: bytes, mtu: int, ident: int) -> list[bytes]:
    """The IPv4 packet pkt (no options) cut into fragments of at most mtu bytes with IP id ident (RFC 791)."""
    if len(pkt) < IPV4_HLEN or pkt[0] & 0x0F != 5 or mtu < IPV4_HLEN + 8:
        raise ValueError("fragment: an IPv4 packet without options and an MTU of at least 28")
    chunk = (mtu - IPV4_HLEN) // 8 * 8
    payload = pkt[IPV4_HLEN:]
    out = []
    for off in range(0, len(payload), chunk):
        part = payload[off : off + chunk]
        more = IP_MF if off + len(part) < len(payload) else 0
        hdr = bytearray(pkt[:IPV4_HLEN])
        hdr[2:4] = (IPV4_HLEN + len(part)).to_bytes(2, "big")
        hdr[4:6] = ident.to_bytes(2, "big")
        hdr[6:8] = (off // 8 | more).to_bytes(2, "big")
        hdr[10:12] = b"\0\0"
        hdr[10:12] = checksum(hdr).to_bytes(2, "big")
        out.append(bytes(hdr) + part)
    return out


class TokenBucket:
    """rate tokens a second up to burst; starts full at its first use (rate 0: never allows)."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: float = DEFAULT_BURST) -> None:
        if not 0 <= rate <= 1e6 or not 1 <= burst <= 1e6:
            raise ValueError("pmtu rate 0..1e6 per second, burst 1..1e6")
        self.rate, self.burst = float(rate), float(burst)
        self._tokens = 0.0
        self._last = 0.0
        self._started = False

    def allow(self, now: float) -> bool:
        """Take a token at now if there is one."""
        if self.rate <= 0:
            return False
        if not self._started:
            self._started = True
            self._tokens = self.burst
        elif now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True
