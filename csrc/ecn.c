/* ecn.c: the outer header's DS field, TTL and DF, and ECN on decapsulation (issue 11, part ecn).
 *
 * Encapsulation (datapath/ecn.py outer_fields): the outer DS field is --tos N (its DSCP bits) or,
 * with --tos inherit, the inner packet's DSCP; its ECN field is a copy of the inner one (RFC 6040
 * section 4.1, normal mode: CE is copied as CE; the kernel's INET_ECN_encapsulate writes ECT(0) for
 * an inner CE instead, the compatibility of RFC 3168's full-functionality mode). TTL: --ttl N, or
 * with --ttl inherit the inner TTL / hop limit (ip_tunnel_get_ttl; a non-IP inner frame gets the
 * default TTL, as the kernel's vxlan falls back to the route's hop limit). DF (IPv4 outer only):
 * --df set / unset, or inherit: DF when the inner frame is IPv4 with DF or IPv6, looking at the
 * Ethernet type only, untagged, as the kernel's vxlan (eth_hdr(skb)->h_proto).
 * The template (outer_template) holds what the configuration fixes; ecn_outer patches per packet
 * what depends on the inner frame, with the IPv4 header checksum updated incrementally (RFC 1624).
 *
 * Decapsulation (ecn.py decap, the table of RFC 6040 section 4.2 as the kernel's
 * __INET_ECN_decapsulate / INET_ECN_decapsulate apply it): outer CE on an ECT inner sets CE
 * (stat rx_ecn_ce), outer CE on a Not-ECT inner is dropped (RX_ECN), outer ECT(1) on an inner
 * ECT(0) makes it ECT(1); everything else leaves the inner packet as it is. A non-IP inner frame
 * passes unchanged. Inner headers are found behind up to two VLAN tags (l3_offset).
 */
#include "internal.h"

#include <sys/socket.h>

#define IPV6_ECN_SHIFT 4 /* the ECN bits of the traffic class in the second byte of an IPv6 header */

/* The inner packet of frame f as the outer fields need it. */
struct inner_ip {
    uint32_t version; /* 4, 6, or 0: not IP (or cut short) */
    uint32_t l3;      /* offset of the IP header */
    uint8_t ds;       /* DS field (TOS / traffic class) */
    uint8_t ttl;      /* TTL / hop limit */
    uint8_t df;       /* DF inherit: untagged IPv4 with DF, or untagged IPv6 */
};

static void inner_ip(const uint8_t *f, uint32_t len, struct inner_ip *in) {
    uint16_t type = 0;
    uint32_t l3 = l3_offset(f, len, &type);
    memset(in, 0, sizeof(*in));
    if (!l3)
        return;
    if (type == ETH_P_IP && len >= l3 + IPV4_HLEN && f[l3] >> 4 == 4) {
        in->version = 4;
        in->ds = f[l3 + 1];
        in->ttl = f[l3 + 8];
        in->df = l3 == ETH_HLEN && (get16(f + l3 + 6) & IP_DF);
    } else if (type == ETH_P_IPV6 && len >= l3 + IPV6_HLEN && f[l3] >> 4 == 6) {
        in->version = 6;
        in->ds = (uint8_t)(get16(f + l3) >> IPV6_ECN_SHIFT);
        in->ttl = f[l3 + 7];
        in->df = l3 == ETH_HLEN;
    } else {
        return;
    }
    in->l3 = l3;
}

/* RFC 1624 eqn. 3: the checksum at cs after the 16-bit word old became new. */
static void csum_replace16(uint8_t *cs, uint16_t old, uint16_t new) {
    put16(cs, fold((uint64_t)(uint16_t)~get16(cs) + (uint16_t)~old + new));
}

/* What the template holds (ecn.py template_fields): DS field, TTL, DF that need no inner frame. */
void ecn_template(const struct ovl_config *c, uint8_t *h) {
    uint8_t tos = c->tos == OVL_TOS_INHERIT ? 0 : (uint8_t)(c->tos & ~OVL_ECN_MASK);
    uint8_t ttl = c->ttl == OVL_TTL_INHERIT ? OVL_DEFAULT_TTL : (uint8_t)c->ttl;
    if ((h[0] >> 4) == 6) { /* the v6 part's outer IPv6 header: traffic class, hop limit */
        put16(h, (uint32_t)(get16(h) & 0xF00F) | (uint32_t)tos << IPV6_ECN_SHIFT);
        h[7] = ttl;
        return;
    }
    h[1] = tos;
    put16(h + 6, c->df == OVL_DF_SET ? IP_DF : 0);
    h[8] = ttl;
}

/* The outer fields for inner frame f (ecn.py outer_fields). */
static void outer_fields(const struct ovl_config *c, const struct inner_ip *in, uint8_t *tos, uint8_t *ttl,
                         uint8_t *df) {
    uint8_t dscp = c->tos == OVL_TOS_INHERIT ? in->ds : (uint8_t)c->tos;
    *tos = (uint8_t)((dscp & ~OVL_ECN_MASK) | (in->ds & OVL_ECN_MASK));
    if (!in->version) /* not IP: no ECN, the DS field of --tos N (0 with inherit) */
        *tos = c->tos == OVL_TOS_INHERIT ? 0 : (uint8_t)(c->tos & ~OVL_ECN_MASK);
    *ttl = c->ttl != OVL_TTL_INHERIT ? (uint8_t)c->ttl : in->ttl ? in->ttl : OVL_DEFAULT_TTL;
    *df = c->df == OVL_DF_SET || (c->df == OVL_DF_INHERIT && in->df);
}

void ecn_outer(const struct ovl_config *c, uint8_t *h, const uint8_t *f, uint32_t len) {
    struct inner_ip in;
    uint8_t tos, ttl, df;
    inner_ip(f, len, &in);
    outer_fields(c, &in, &tos, &ttl, &df);
    if ((h[0] >> 4) == 6) {
        put16(h, (uint32_t)(get16(h) & 0xF00F) | (uint32_t)tos << IPV6_ECN_SHIFT);
        h[7] = ttl;
        return;
    }
    uint16_t w0 = get16(h), w3 = get16(h + 6), w4 = get16(h + 8);
    uint16_t n0 = (uint16_t)((w0 & 0xFF00) | tos), n3 = (uint16_t)((w3 & ~IP_DF) | (df ? IP_DF : 0));
    uint16_t n4 = (uint16_t)(ttl << 8 | (w4 & 0xFF));
    if (n0 != w0) {
        put16(h, n0);
        csum_replace16(h + 10, w0, n0);
    }
    if (n3 != w3) {
        put16(h + 6, n3);
        csum_replace16(h + 10, w3, n3);
    }
    if (n4 != w4) {
        put16(h + 8, n4);
        csum_replace16(h + 10, w4, n4);
    }
}

int ecn_decap(struct ovl_dp *dp, uint8_t *f, uint32_t len, uint8_t outer_tos) {
    uint8_t outer = outer_tos & OVL_ECN_MASK;
    if (outer == OVL_ECN_NOT_ECT)
        return 0;
    struct inner_ip in;
    inner_ip(f, len, &in);
    if (!in.version)
        return 0; /* not IP: as it is (the kernel's IP_ECN_decapsulate) */
    uint8_t inner = in.ds & OVL_ECN_MASK, want = inner;
    if (inner == OVL_ECN_NOT_ECT)
        return outer == OVL_ECN_CE ? -OVL_DROP_RX_ECN : 0; /* ECT outer, Not-ECT inner: delivered as it is */
    if (outer == OVL_ECN_CE)
        want = OVL_ECN_CE;
    else if (outer == OVL_ECN_ECT_1 && inner == OVL_ECN_ECT_0)
        want = OVL_ECN_ECT_1;
    if (want == inner)
        return 0;
    uint8_t *ip = f + in.l3;
    if (in.version == 4) {
        uint16_t w0 = get16(ip), n0 = (uint16_t)((w0 & ~OVL_ECN_MASK) | want);
        put16(ip, n0);
        csum_replace16(ip + 10, w0, n0);
    } else {
        ip[1] = (uint8_t)((ip[1] & ~(OVL_ECN_MASK << IPV6_ECN_SHIFT)) | want << IPV6_ECN_SHIFT);
    }
    if (want == OVL_ECN_CE)
        dp->stats[OVL_STAT_RX_ECN_CE]++;
    return 0;
}

/* ---- UDP GSO sends: the kernel builds the outer IPv4 header from the socket and cmsgs ---- */

/* Traffic class and hop limit of an outer IPv6 header (the v6 part's). */
static uint8_t ip6_tclass(const uint8_t *h) { return (uint8_t)(get16(h) >> IPV6_ECN_SHIFT); }

int ecn_gso_ok(const struct ovl_config *c, const uint8_t *h) {
    if (h[0] >> 4 == 6)
        return 1; /* no DF in IPv6 */
    /* DF comes from the socket's IP_MTU_DISCOVER (DO for set / inherit, DONT for unset) */
    return ((get16(h + 6) & IP_DF) != 0) == (c->df != OVL_DF_UNSET);
}

int ecn_same_outer(const uint8_t *a, const uint8_t *b) {
    if (a[0] >> 4 == 6 || b[0] >> 4 == 6)
        return a[0] >> 4 == b[0] >> 4 && ip6_tclass(a) == ip6_tclass(b) && a[7] == b[7];
    return a[1] == b[1] && a[8] == b[8] && ((get16(a + 6) ^ get16(b + 6)) & IP_DF) == 0;
}

uint32_t ecn_gso_cmsg(uint8_t *buf, const uint8_t *h) {
    /* IP_TOS and IP_TTL (ip_cmsg_send takes an int for both), or IPV6_TCLASS and IPV6_HOPLIMIT */
    int v6 = h[0] >> 4 == 6;
    int v[2] = {v6 ? ip6_tclass(h) : h[1], v6 ? h[7] : h[8]};
    int type[2] = {v6 ? IPV6_TCLASS : IP_TOS, v6 ? IPV6_HOPLIMIT : IP_TTL};
    uint32_t off = 0;
    for (int i = 0; i < 2; i++) {
        struct cmsghdr cm;
        memset(&cm, 0, sizeof(cm));
        cm.cmsg_level = v6 ? IPPROTO_IPV6 : IPPROTO_IP;
        cm.cmsg_type = type[i];
        cm.cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(buf + off, &cm, sizeof(cm));
        memcpy(buf + off + CMSG_LEN(0), &v[i], sizeof(int));
        off += (uint32_t)CMSG_SPACE(sizeof(int));
    }
    return off;
}

/* ---- the outer TOS of received packets ---- */

uint8_t ecn_rx_tos(const struct ovl_config *c, struct msghdr *h, const uint8_t *data, uint32_t len) {
    if (!(h->msg_flags & MSG_CTRUNC)) {
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm)) {
            if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TOS && cm->cmsg_len >= CMSG_LEN(1))
                return *(const uint8_t *)CMSG_DATA(cm);
            if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_TCLASS &&
                cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int v;
                memcpy(&v, CMSG_DATA(cm), sizeof(v));
                return (uint8_t)v;
            }
        }
    }
    /* a raw IPv4 socket delivers the outer header itself (an IPv6 one does not: its GRE header comes first) */
    const struct sockaddr *from = h->msg_name;
    if (!c->ops->udp && h->msg_namelen >= sizeof(from->sa_family) && from->sa_family == AF_INET && len >= IPV4_HLEN &&
        data[0] >> 4 == 4)
        return data[1];
    return 0;
}

/* ---- the public setters and accessors ---- */

int ovl_config_set_df(struct ovl_config *c, uint32_t df) {
    if (df > OVL_DF_INHERIT)
        return -1;
    c->df = df;
    return 0;
}

int ovl_config_set_tos(struct ovl_config *c, uint32_t tos) {
    if (tos > OVL_TOS_INHERIT)
        return -1;
    c->tos = tos;
    return 0;
}

int ovl_rx_set_tos(struct ovl_dp *dp, uint32_t i, uint8_t tos) {
    if (i >= dp->rx_cap)
        return -1;
    dp->rx[i].tos = tos;
    return 0;
}

int ovl_ecn_outer(const struct ovl_config *c, uint8_t *hdr, uint32_t hdr_len, const uint8_t *frame, uint32_t len) {
    if (hdr_len < IPV4_HLEN || (hdr[0] >> 4 == 6 && hdr_len < IPV6_HLEN))
        return -1;
    ecn_outer(c, hdr, frame, len);
    return 0;
}
