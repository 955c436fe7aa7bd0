"""The outer header's DS field, TTL and DF, and ECN on decapsulation (RFC 6040); the reference of csrc/ecn.c.

Encapsulation (:func:`outer_fields`):

- DS field: ``--tos N`` gives its DSCP bits (N's own ECN bits are ignored), ``--tos inherit``
  the inner packet's; the ECN field is a copy of the inner one (RFC 6040 section 4.1, normal
  mode). The kernel's ``INET_ECN_encapsulate`` sends ECT(0) for an inner CE instead (the
  compatibility choice of RFC 3168's full-functionality mode); ovl-dp copies CE as the RFC says.
  A non-IP inner frame: N's DSCP (0 with inherit), ECN Not-ECT.
- TTL: ``--ttl N``, or ``--ttl inherit``: the inner TTL / hop limit (the kernel's
  ``ip_tunnel_get_ttl``); a non-IP inner frame (or TTL 0) gets 64, as the kernel's vxlan falls
  back to the route's hop limit.
- DF (outer IPv4 only): ``set``, ``unset``, or ``inherit``: DF when the inner frame is IPv4 with
  DF, or IPv6, judged by the Ethernet type of an untagged frame, as the kernel's vxlan does
  (``eth_hdr(skb)->h_proto``): a VLAN-tagged frame gets no DF.

The DS field and TTL look behind up to two VLAN tags (802.1Q / 802.1ad), as the kernel's
``skb_protocol(skb, true)``.

Decapsulation (:func:`decap`), the table of RFC 6040 section 4.2 as the kernel applies it
(``__INET_ECN_decapsulate``, ``INET_ECN_decapsulate``): outer CE on an ECT inner packet sets CE,
outer CE on a Not-ECT inner packet is dropped (:attr:`Drop.RX_ECN`), outer ECT(1) on an inner
ECT(0) makes it ECT(1); every other combination, and every non-IP inner frame, is delivered as it is.
"""

from __future__ import annotations

import struct

from datapath.counters import Drop

ECN_MASK = 0x03  # RFC 3168: the low two bits of the DS field
NOT_ECT, ECT_1, ECT_0, CE = 0, 1, 2, 3
INHERIT = "inherit"
DF_POLICIES = ("unset", "set", "inherit")  # the values of enum ovl_df, in order
DEFAULT_TTL = 64  # ttl inherit, non-IP inner frame: the route's default hop limit (ip_default_ttl)
IP_DF = 0x4000
_ETH_P_IP, _ETH_P_IPV6 = 0x0800, 0x86DD
_VLAN_TYPES = (0x8100, 0x88A8)
_ETH_HLEN, _VLAN_HLEN, _IPV4_HLEN, _IPV6_HLEN = 14, 4, 20, 40

# decap() results besides -Drop.RX_ECN
UNCHANGED = 0
CE_SET = 1  # counted as rx_ecn_ce
ECT1_SET = 2


def _l3(frame: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(offset of the network header behind up to two VLAN tags, EtherType); (0, 0) if cut short (l3_offset)."""
    if len(frame) < _ETH_HLEN:
        return 0, 0
    off = 12
    etype = frame[12] << 8 | frame[13]
    for _ in range(2):
        if etype not in _VLAN_TYPES:
            break
        off += _VLAN_HLEN
        if len(frame) < off + 2:
            return 0, 0
        etype = frame[off] << 8 | frame[off + 1]
    return off + 2, etype


def inner_ip(frame: bytes | bytearray | memoryview) -> tuple[int, int, int, int, bool]:
    """(IP version 4 / 6 or 0 for not IP, offset of the IP header, DS field, TTL / hop limit, DF for inherit)."""
    l3, etype = _l3(frame)
    if not l3:
        return 0, 0, 0, 0, False
    untagged = l3 == _ETH_HLEN
    if etype == _ETH_P_IP and len(frame) >= l3 + _IPV4_HLEN and frame[l3] >> 4 == 4:
        df = bool((frame[l3 + 6] << 8 | frame[l3 + 7]) & IP_DF)
        return 4, l3, frame[l3 + 1], frame[l3 + 8], untagged and df
    if etype == _ETH_P_IPV6 and len(frame) >= l3 + _IPV6_HLEN and frame[l3] >> 4 == 6:
        ds = ((frame[l3] << 8 | frame[l3 + 1]) >> 4) & 0xFF
        return 6, l3, ds, frame[l3 + 7], untagged
    return 0, 0, 0, 0, False


def check_tos(tos: int | str) -> None:
    """ValueError unless tos is 0..255 or "inherit"."""
    if tos != INHERIT and not (type(tos) is int and 0 <= tos <= 255):
        raise ValueError(f"TOS {tos!r} is not 0..255 or inherit")


Frame = bytes | bytearray | memoryview


def outer_fields(frame: Frame, tos: int | str, ttl: int | str, df: str) -> tuple[int, int, bool]:
    """(outer DS field, TTL, DF) for inner frame under --tos, --ttl, --df; see the module docstring."""
    version, _, ds, inner_ttl, inner_df = inner_ip(frame)
    base = ds if tos == INHERIT else int(tos)
    # not IP: the DSCP of --tos N (0 with inherit), Not-ECT
    out_tos = (base & ~ECN_MASK) | (ds & ECN_MASK) if version else (0 if tos == INHERIT else int(tos) & ~ECN_MASK)
    out_ttl = int(ttl) if ttl != INHERIT else (inner_ttl or DEFAULT_TTL)
    out_df = df == "set" or (df == INHERIT and inner_df)
    return out_tos & 0xFF, out_ttl, out_df


def decap(frame: bytes | bytearray, outer_tos: int) -> tuple[int, bytes]:
    """RFC 6040 on inner frame under outer DS field outer_tos: (UNCHANGED, CE_SET, ECT1_SET or -Drop.RX_ECN; frame)."""
    outer = outer_tos & ECN_MASK
    if outer == NOT_ECT:
        return UNCHANGED, bytes(frame)
    version, l3, ds, _, _ = inner_ip(frame)
    if not version:
        return UNCHANGED, bytes(frame)
    inner = ds & ECN_MASK
    if inner == NOT_ECT:
        return (-Drop.RX_ECN if outer == CE else UNCHANGED), bytes(frame)
    if outer == CE:
        want, result = CE, CE_SET
    elif outer == ECT_1 and inner == ECT_0:
        want, result = ECT_1, ECT1_SET
    else:
        return UNCHANGED, bytes(frame)
    if want == inner:
        return UNCHANGED, bytes(frame)
    out = bytearray(frame)
    if version == 4:  # the header checksum by RFC 1624 (eqn. 3) on the one word that changed
        old = frame[l3] << 8 | frame[l3 + 1]
        out[l3 + 1] = (out[l3 + 1] & ~ECN_MASK) | want
        new = out[l3] << 8 | out[l3 + 1]
        cs = frame[l3 + 10] << 8 | frame[l3 + 11]
        out[l3 + 10 : l3 + 12] = struct.pack("!H", _fold((~cs & 0xFFFF) + (~old & 0xFFFF) + new))
    else:
        out[l3 + 1] = (out[l3 + 1] & ~(ECN_MASK << 4)) | want << 4
    return result, bytes(out)


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
