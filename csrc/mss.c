/* mss.c: TCP MSS clamping (issue 11, mss part; the reference is datapath/mss.py).
 *
 * --clamp-mss auto|N|off: the MSS option (RFC 9293 3.7.1, kind 2, length 4) of a TCP SYN or
 * SYN-ACK crossing the tunnel, either way, is lowered to what fits (never raised), so that
 * hosts whose MTU is larger than the tunnel's and that never see an ICMP "too big" still
 * agree on segments that fit. The TCP checksum is updated incrementally (RFC 1624, eqn. 3).
 *
 * Checksums. TX: every frame ovl_tx_process sees has a full checksum (a plain TAP's frames
 * are completed by the kernel; with a virtio header, NEEDS_CSUM frames are completed by
 * ovl_offload_frame before, and TSO super-frames are cut into segments with full checksums
 * first; SYNs are never TSO, and a super-frame with SYN is kept from the injection TAP).
 * RX: a received frame may carry the pseudo-header seed instead (its sender left the
 * checksum to offload and it crossed a virtual hop: rx_super.c rx_csum_fix, lab-wire.md);
 * the seed does not cover the option, so it stays, and rx_csum_fix completes it over the
 * clamped bytes later. A wrong checksum stays exactly as wrong. Coalesced frames and
 * received super-packets never carry SYN (co_parse, super_parse refuse it).
 *
 * Parsing: Ethernet with up to two VLAN tags (l3_offset), IPv4 (no fragment: MF or an offset)
 * or IPv6 with TCP as the next header; the TCP header and its options inside the IP length;
 * options walked with every length checked: EOL ends them, a malformed option (length < 2
 * or past the header) ends the walk and what follows is not read; an MSS option with a
 * length other than 4 is skipped, as receivers skip it. Every MSS option before that is
 * clamped (a receiver honours the last one). A SYN without an MSS option is left alone (its
 * peer assumes 536 / 1220, RFC 9293 3.7.1 / RFC 8200 8.3, which fit any tunnel here). */
#include "internal.h"

#define TCPOPT_EOL 0
#define TCPOPT_NOP 1
#define TCPOPT_MSS 2
#define TCPOLEN_MSS 4
#define TCP_MIN_MSS 88 /* Linux's floor (include/net/tcp.h) for an MSS computed from a tiny MTU */
#define IP_MF_OFFSET 0x3FFF

int ovl_config_set_clamp_mss(struct ovl_config *c, uint32_t clamp) {
    if (clamp != OVL_CLAMP_MSS_OFF && clamp != OVL_CLAMP_MSS_AUTO && (clamp < OVL_MSS_MIN || clamp > OVL_MSS_MAX))
        return -1;
    c->clamp_mss = clamp;
    return 0;
}

/* The TCP header of a SYN in f: offset of the IP header (*ip) and TCP header, its IP version
 * (*v6), the TCP length the IP header gives (*l4len) and the data offset (*doff); 0 if f is
 * no SYN we read (mss.find). */
static uint32_t find_syn(const uint8_t *f, uint32_t len, uint32_t *ip, uint32_t *v6, uint32_t *l4len,
                         uint32_t *doff) {
    uint16_t type = 0;
    uint32_t l3 = l3_offset(f, len, &type), l4;
    if (!l3)
        return 0;
    const uint8_t *p = f + l3;
    if (type == ETH_P_IP) {
        int ihl = ip4_header_len(p, len - l3);
        if (ihl < 0 || p[9] != IPPROTO_TCP || (get16(p + 6) & IP_MF_OFFSET))
            return 0;
        uint32_t tot = get16(p + 2);
        if (tot < (uint32_t)ihl || tot > len - l3)
            return 0;
        l4 = l3 + (uint32_t)ihl;
        *l4len = tot - (uint32_t)ihl;
        *v6 = 0;
    } else if (type == ETH_P_IPV6) {
        if (len - l3 < IPV6_HLEN || p[0] >> 4 != 6 || p[6] != IPPROTO_TCP)
            return 0;
        uint32_t plen = get16(p + 4);
        if (plen > len - l3 - IPV6_HLEN)
            return 0;
        l4 = l3 + IPV6_HLEN;
        *l4len = plen;
        *v6 = 1;
    } else {
        return 0;
    }
    if (*l4len < TCP_HLEN)
        return 0;
    const uint8_t *tcp = f + l4;
    *doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (*doff < TCP_HLEN || *doff > *l4len || !(tcp[13] & TCP_SYN))
        return 0;
    *ip = l3;
    return l4;
}

/* RFC 1624 eqn. 3 for a 16-bit field changed from old to new at an offset of parity odd from the
 * start of the summed data (an odd offset straddles two words: the bytes swap places). */
static uint16_t csum_replace(uint16_t check, uint32_t odd, uint16_t old, uint16_t new) {
    if (odd) {
        old = (uint16_t)(old << 8 | old >> 8);
        new = (uint16_t)(new << 8 | new >> 8);
    }
    return fold((uint64_t)(uint16_t)~check + (uint16_t)~old + new);
}

int ovl_mss_clamp(uint8_t *f, uint32_t len, uint32_t limit, uint32_t partial) {
    uint32_t l3 = 0, v6 = 0, l4len = 0, doff = 0;
    uint32_t l4 = find_syn(f, len, &l3, &v6, &l4len, &doff);
    if (!l4 || limit > 0xFFFF)
        return 0;
    uint8_t *tcp = f + l4;
    uint16_t seed = (uint16_t)~fold(tcp_pseudo_sum(f + l3, v6, l4len));
    int seeded = partial && get16(tcp + 16) == seed;
    int lowered = 0;
    for (uint32_t i = TCP_HLEN; i < doff;) {
        uint8_t kind = tcp[i];
        if (kind == TCPOPT_EOL)
            break;
        if (kind == TCPOPT_NOP) {
            i++;
            continue;
        }
        if (i + 1 >= doff)
            break; /* no room for the length: malformed */
        uint32_t olen = tcp[i + 1];
        if (olen < 2 || i + olen > doff)
            break; /* malformed: not read further */
        if (kind == TCPOPT_MSS && olen == TCPOLEN_MSS) {
            uint16_t mss = get16(tcp + i + 2);
            if (mss > limit) {
                put16(tcp + i + 2, limit);
                if (!seeded)
                    put16(tcp + 16, csum_replace(get16(tcp + 16), (i + 2) & 1, mss, (uint16_t)limit));
                lowered = 1;
            }
        }
        i += olen;
    }
    return lowered;
}

/* What an inner frame towards remote slot r may be, from its L3 header on (mss.tunnel_l3_mtu):
 * the underlay MTU minus the outer header and the inner L2 header. The one place that knows
 * where the path MTU and the outer length of a remote come from. */
static int64_t tunnel_l3_mtu(const struct ovl_dp *dp, int32_t r, uint32_t keyed, uint32_t l2_len) {
    const struct ovl_config *c = &dp->cfg;
    if (r < 0) /* no remote: the underlay MTU over IPv4 */
        return (int64_t)c->underlay_mtu - c->ops->outer_len(keyed) - l2_len;
    /* the remote's path MTU (pmtu.c) and outer length (ipv6.c: an IPv6 header is 20 bytes longer) */
    return (int64_t)ovl_dp_remote_mtu(dp, (uint32_t)r) - remote_outer_len(dp, (uint32_t)r, keyed) - l2_len;
}

uint32_t ovl_dp_mss_limit(const struct ovl_dp *dp, int32_t r, uint32_t v6, uint32_t keyed, uint32_t l2_len) {
    const struct ovl_config *c = &dp->cfg;
    if (c->clamp_mss != OVL_CLAMP_MSS_AUTO)
        return c->clamp_mss;
    int64_t mtu;
    if (r >= 0 && (uint32_t)r < c->n_remotes && c->remote_used[r]) {
        mtu = tunnel_l3_mtu(dp, r, keyed, l2_len);
    } else { /* a flood: the smallest; no remote at all: the underlay's */
        mtu = tunnel_l3_mtu(dp, -1, keyed, l2_len);
        for (uint32_t j = 0; j < c->n_remotes; j++) {
            int64_t m = c->remote_used[j] ? tunnel_l3_mtu(dp, (int32_t)j, keyed, l2_len) : mtu;
            if (m < mtu)
                mtu = m;
        }
    }
    int64_t mss = mtu - (v6 ? IPV6_HLEN : IPV4_HLEN) - TCP_HLEN;
    return mss < TCP_MIN_MSS ? TCP_MIN_MSS : (uint32_t)mss;
}

/* The inner L2 header of f as it travels (l3_offset; tagged: less the tag ovl_rx_process
 * inserted), and its IP version; 0 if f is no TCP SYN at all (the cheap test first). */
static uint32_t syn_l2(const uint8_t *f, uint32_t len, uint32_t *v6) {
    uint32_t l3 = 0, l4len = 0, doff = 0;
    return find_syn(f, len, &l3, v6, &l4len, &doff) ? l3 : 0;
}

int mss_tx(struct ovl_dp *dp, uint8_t *f, uint32_t len, int32_t r, uint32_t keyed) {
    uint32_t v6 = 0, l2 = syn_l2(f, len, &v6);
    if (!l2 || !ovl_mss_clamp(f, len, ovl_dp_mss_limit(dp, r, v6, keyed, l2), 0))
        return 0;
    dp->stats[OVL_STAT_MSS_CLAMPED]++;
    return 1;
}

void mss_rx(struct ovl_dp *dp, uint8_t *f, uint32_t len, int32_t r, uint32_t tagged) {
    uint32_t v6 = 0, l2 = syn_l2(f, len, &v6);
    if (!l2)
        return;
    /* The answering segments leave in the id this frame came in: a mapped VLAN's keyed, untagged. */
    uint32_t keyed = tagged ? 1 : dp->cfg.keyed, wire_l2 = tagged ? l2 - VLAN_HLEN : l2;
    if (ovl_mss_clamp(f, len, ovl_dp_mss_limit(dp, r, v6, keyed, wire_l2), 1))
        dp->stats[OVL_STAT_MSS_CLAMPED]++;
}
