/* inject.c: VXLAN TX through an injection TAP, so that the kernel segments the tunnel traffic.
 *
 * A TCP super-frame read from the bridge TAP (gso_type TCPV4/TCPV6, NEEDS_CSUM) that goes to
 * remotes is not cut into segments here (ovl_offload_frame): per remote it is written to a
 * second TAP, opened with a 24-byte virtio header (struct virtio_net_hdr_v1_hash_tunnel) and
 * TUN_F_UDP_TUNNEL_GSO, as ONE frame: virtio header (gso_type |= UDP_TUNNEL_IPV4, csum_start
 * and hdr_len shifted by the outer headers, outer_th_offset / inner_nh_offset), outer Ethernet
 * to the injection TAP's own MAC, the remote's outer IPv4 / UDP / VXLAN header from its
 * template (the flow's source port, TTL + 1 as forwarding takes one, a full IPv4 header
 * checksum, UDP checksum 0 or with TUN_F_UDP_TUNNEL_GSO_CSUM the pseudo-header seed), and the
 * inner frame untouched (its TCP checksum field holds the seed already). The kernel routes it
 * out of the underlay and segments it there (virtio_net_hdr_tnl_to_skb, udp_tunnel GSO), on a
 * NIC with tunnel TSO in hardware.
 *
 * Issue 11 (inject6): an IPv6 remote the same way, with gso_type UDP_TUNNEL_IPV6, outer
 * Ethernet type 0x86DD and the remote's outer IPv6 header (hop limit + 1, traffic class as
 * ecn_outer sets it, the UDP checksum seed over the IPv6 pseudo-header unless
 * --udp6-zero-csum-tx), once the host forwards IPv6 from the TAP (ovl_dp_set_inject6).
 *
 * What cannot go that way goes the old way and is counted: a frame whose outer IPv4 length
 * (IPv6 payload length) would pass 65,535, a gso_size that would not fit the remote's path MTU
 * once encapsulated (per remote: pmtu.c, ipv6.c), a frame we cannot parse, a fragment, one
 * segment only, an outer UDP checksum the TAP cannot have completed (no
 * TUN_F_UDP_TUNNEL_GSO_CSUM), an IPv6 remote without ovl_dp_set_inject6. A write the kernel refuses (EINVAL, EIO...)
 * turns the path off for good (ovl_dp_inject_errno says why); that frame itself is dropped
 * (tx_error: it may have lost its VLAN tag already; TCP sends it again), the next ones go the
 * old way. Python opens the TAP and sets up the host (datapath/io/inject.py,
 * control/inject.py); this file only builds and writes. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define INJ_VNET_LEN 24  /* struct virtio_net_hdr_v1_hash_tunnel */
#define INJ_OUTER_ETH 14 /* outer Ethernet in front of the outer IPv4 header */
#define INJ_HDR (INJ_VNET_LEN + INJ_OUTER_ETH + OVL_MAX_OUTER)
#define VNET_GSO_UDP_TUNNEL_IPV4 0x20 /* VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 */
#define VNET_GSO_UDP_TUNNEL_IPV6 0x40 /* VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6 (issue 11, inject6) */
#define VNET_F_UDP_TUNNEL_CSUM 0x08   /* VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM */
#define INJ_DRAIN_BUF 65600

struct ovl_inject {
    int fd;            /* the injection TAP (-1: headers only, nothing written) */
    uint32_t udp_csum; /* the TAP has TUN_F_UDP_TUNNEL_GSO_CSUM: outer UDP checksums by the kernel */
    uint32_t off;      /* a write was refused: the old path from then on */
    uint32_t v6;       /* issue 11, inject6: the host forwards IPv6 from the TAP (force_forwarding) */
    int err;           /* the errno of that refusal */
    uint8_t mac[ETH_ALEN];
    uint8_t src_mac[ETH_ALEN];
    uint64_t ctr[OVL_INJ_COUNT];
    uint8_t hdr[INJ_HDR]; /* the header of the write under way */
    uint8_t *drain;       /* INJ_DRAIN_BUF bytes, for what the kernel sends to the TAP */
};

/* A super-frame as the injection needs it, checked once for all its remotes. */
struct inj_frame {
    uint8_t flags, gso_type;
    uint16_t gso_size, csum_start, csum_offset;
    uint32_t l3;    /* inner network header (after a mapped VLAN's tag is stripped) */
    uint32_t hdrs;  /* inner headers, Ethernet to the TCP payload (idem) */
    uint32_t nseg;  /* segments the kernel will make */
    uint32_t strip; /* VLAN_HLEN for a mapped VLAN (its tag leaves), else 0 */
    uint16_t vlan;
    struct tunnel_id t;
};

void inject_free(struct ovl_inject *j) {
    if (j)
        free(j->drain);
    free(j);
}

int ovl_dp_set_inject(struct ovl_dp *dp, int32_t fd, const uint8_t *mac, uint32_t udp_tunnel_csum) {
    if (!dp->cfg.ops->udp_tunnel || !dp->cfg.vnet_hdr_len)
        return -1;
    if (!dp->inj) {
        dp->inj = calloc(1, sizeof(*dp->inj));
        if (!dp->inj)
            return -1;
    }
    struct ovl_inject *j = dp->inj;
    if (fd >= 0 && !j->drain && !(j->drain = malloc(INJ_DRAIN_BUF)))
        return -1;
    j->fd = fd;
    j->udp_csum = udp_tunnel_csum != 0;
    j->off = 0;
    j->err = 0;
    j->v6 = 0; /* IPv6 remotes: ovl_dp_set_inject6, once the host forwards IPv6 from the TAP */
    memcpy(j->mac, mac, ETH_ALEN);
    /* Any unicast source but the TAP's own address (locally administered). */
    memcpy(j->src_mac, mac, ETH_ALEN);
    j->src_mac[0] = (uint8_t)((j->src_mac[0] | 0x02) & ~0x01);
    j->src_mac[5] ^= 0x01;
    return 0;
}

int ovl_dp_set_inject6(struct ovl_dp *dp, uint32_t on) {
    if (!dp->inj)
        return -1;
    dp->inj->v6 = on != 0;
    return 0;
}

int ovl_dp_inject_errno(const struct ovl_dp *dp) { return dp->inj ? dp->inj->err : 0; }

int ovl_dp_injecting(const struct ovl_dp *dp) { return dp->inj && dp->inj->fd >= 0 && !dp->inj->off; }

uint32_t ovl_dp_inject_counters(const struct ovl_dp *dp, uint64_t *out, uint32_t n) {
    if (n > OVL_INJ_COUNT)
        n = OVL_INJ_COUNT;
    for (uint32_t i = 0; i < n; i++)
        out[i] = dp->inj ? dp->inj->ctr[i] : 0;
    return n;
}

int ovl_inject_drain(struct ovl_dp *dp) {
    struct ovl_inject *j = dp->inj;
    int n = 0;
    if (!j || j->fd < 0 || !j->drain)
        return 0;
    for (;;) {
        ssize_t got = read(j->fd, j->drain, INJ_DRAIN_BUF);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (got < 0)
            return -1; /* the device is gone (EBADFD): its fd stays readable for ever; errno says why */
        j->ctr[OVL_INJ_DRAINED]++;
        n++;
    }
    return n;
}

static uint16_t rd16(const uint8_t *p) { /* the virtio header's fields: native endian, as the TAP has them */
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static void wr_le16(uint8_t *p, uint32_t v) { /* the tunnel fields are __le16 */
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

/* Is frame (vnet + frame as read, len bytes) one the injection would take: a TCP super-frame? */
static int inj_candidate(const struct ovl_dp *dp, const uint8_t *buf, uint32_t len) {
    uint8_t gso;
    if (len < dp->cfg.vnet_hdr_len + ETH_HLEN)
        return 0;
    gso = buf[1] & (uint8_t)~OVL_VNET_GSO_ECN;
    return gso == OVL_VNET_GSO_TCPV4 || gso == OVL_VNET_GSO_TCPV6;
}

int inject_wanted(const struct ovl_dp *dp, const uint8_t *buf, uint32_t len) {
    return ovl_dp_injecting(dp) && inj_candidate(dp, buf, len);
}

/* Parse and check the super-frame f (flen bytes) with its virtio header vnet: 0, or -reason
 * (enum ovl_inject_stat: why it goes the old way). Nothing is changed. */
static int inj_check(const struct ovl_dp *dp, const uint8_t *vnet, const uint8_t *f, uint32_t flen,
                     struct inj_frame *x) {
    const struct ovl_config *c = &dp->cfg;
    memset(x, 0, sizeof(*x));
    x->flags = vnet[0];
    x->gso_type = vnet[1];
    x->gso_size = rd16(vnet + 4);
    x->csum_start = rd16(vnet + 6);
    x->csum_offset = rd16(vnet + 8);
    uint8_t gso = x->gso_type & (uint8_t)~OVL_VNET_GSO_ECN;
    if (flen < ETH_HLEN || (gso != OVL_VNET_GSO_TCPV4 && gso != OVL_VNET_GSO_TCPV6) ||
        !(x->flags & OVL_VNET_F_NEEDS_CSUM) || x->gso_size == 0)
        return -OVL_INJ_FALLBACK_OTHER;
    /* The inner network header behind up to one 802.1Q tag (frame_vlan's view). */
    uint32_t l3 = ETH_HLEN;
    uint16_t type = get16(f + 12);
    if (type == ETH_P_8021Q || type == ETH_P_8021AD) {
        if (flen < ETH_HLEN + VLAN_HLEN)
            return -OVL_INJ_FALLBACK_OTHER;
        type = get16(f + 16);
        l3 += VLAN_HLEN;
    }
    uint32_t l4;
    if (gso == OVL_VNET_GSO_TCPV4 && type == ETH_P_IP) {
        int ihl = ip4_header_len(f + l3, flen - l3);
        /* A fragment (MF or an offset) goes the old way, which drops it (tso_prepare): the
         * kernel's inet_gso_segment would copy its flags onto every segment. */
        if (ihl < 0 || f[l3 + 9] != IPPROTO_TCP || (get16(f + l3 + 6) & 0x3FFF))
            return -OVL_INJ_FALLBACK_OTHER;
        l4 = l3 + (uint32_t)ihl;
    } else if (gso == OVL_VNET_GSO_TCPV6 && type == ETH_P_IPV6) {
        if (flen < l3 + IPV6_HLEN || f[l3] >> 4 != 6 || f[l3 + 6] != IPPROTO_TCP)
            return -OVL_INJ_FALLBACK_OTHER; /* extension headers: the old path */
        l4 = l3 + IPV6_HLEN;
    } else {
        return -OVL_INJ_FALLBACK_OTHER;
    }
    if (flen < l4 + TCP_HLEN)
        return -OVL_INJ_FALLBACK_OTHER;
    uint32_t doff = (uint32_t)(f[l4 + 12] >> 4) * 4;
    if (doff < TCP_HLEN || flen <= l4 + doff || x->csum_start != l4 || x->csum_offset != 16)
        return -OVL_INJ_FALLBACK_OTHER;
    if (c->clamp_mss && (f[l4 + 13] & TCP_SYN)) /* the old path clamps its segments' MSS (mss.c) */
        return -OVL_INJ_FALLBACK_OTHER;
    x->vlan = frame_vlan(f, flen);
    x->t = base_tunnel(c);
    if (c->vlan_mapped[x->vlan]) { /* a mapped VLAN leaves untagged in its own id, as ovl_tx_process does */
        x->strip = VLAN_HLEN;
        x->t.id = c->vlan_tid[x->vlan];
        x->t.keyed = 1;
    }
    x->l3 = l3 - x->strip;
    x->hdrs = l4 + doff - x->strip;
    x->nseg = (flen - x->strip - x->hdrs + x->gso_size - 1) / x->gso_size;
    /* One segment: the kernel would not make it GSO ("too small packets are not really GSO
     * ones"), and nothing would complete an outer UDP checksum seed. The old path sends it. */
    if (x->nseg < 2)
        return -OVL_INJ_FALLBACK_OTHER;
    return 0;
}

/* Can super-frame x (flen bytes once a mapped VLAN's tag is stripped) go to remote r through the
 * injection TAP: 0, or -reason (enum ovl_inject_stat). */
static int inj_remote_ok(const struct ovl_dp *dp, const struct inj_frame *x, uint32_t r, uint32_t flen) {
    const struct ovl_config *c = &dp->cfg;
    const struct ovl_inject *j = dp->inj;
    /* An outer UDP checksum that is due (--udp-csum over IPv4; over IPv6 always, unless
     * --udp6-zero-csum-tx) is the kernel's to complete per segment: TUN_F_UDP_TUNNEL_GSO_CSUM. */
    if (dp->outer[r].udp_csum && !j->udp_csum)
        return -OVL_INJ_FALLBACK_OTHER;
    if (c->remote_v6[r] && !j->v6) /* the host does not forward IPv6 from the TAP (control/inject.py) */
        return -OVL_INJ_FALLBACK_OTHER;
    uint32_t outer = remote_outer_len(dp, r, x->t.keyed); /* ipv6.c: 20 bytes more over IPv6 */
    /* Each segment the kernel makes must fit the path (else: ICMP too big to ourselves; pmtu.c). */
    if ((uint64_t)outer + x->hdrs + x->gso_size > ovl_dp_remote_mtu(dp, r))
        return -OVL_INJ_FALLBACK_MTU;
    /* The outer IPv4 total length, the IPv6 payload length, the UDP length: 16 bits. */
    if ((uint64_t)outer - (c->remote_v6[r] ? IPV6_HLEN : 0) + flen > 0xFFFF)
        return -OVL_INJ_FALLBACK_TOO_BIG;
    return 0;
}

/* The header of the write of frame f (flen bytes, a mapped VLAN's tag already stripped) to
 * remote r into h (INJ_HDR bytes); returns its length. */
static uint32_t inj_build(const struct ovl_dp *dp, const struct ovl_inject *j, const struct inj_frame *x,
                          uint32_t r, const uint8_t *f, uint32_t flen, uint8_t *h) {
    const struct ovl_config *c = &dp->cfg;
    struct tx_frame tf = {x->t, ovl_flow_hash(f, flen), 0};
    uint8_t *eth = h + INJ_VNET_LEN, *ip = eth + INJ_OUTER_ETH;
    uint32_t olen = outer_push(c, &dp->outer[r], &tf, flen, ip);
    ecn_outer(c, ip, f, flen); /* ecn.c: DS field, TTL, DF (IPv6: traffic class, hop limit) */
    uint32_t v6 = c->remote_v6[r], ip_hlen = v6 ? IPV6_HLEN : IPV4_HLEN;
    uint32_t shift = INJ_OUTER_ETH + olen, udp_len = olen - ip_hlen + flen, csum = dp->outer[r].udp_csum;
    memcpy(eth, j->mac, ETH_ALEN);
    memcpy(eth + ETH_ALEN, j->src_mac, ETH_ALEN);
    put16(eth + 12, v6 ? ETH_P_IPV6 : ETH_P_IP);
    uint64_t pseudo;
    if (v6) { /* forwarding takes one off the hop limit: one more (ipv6.c: no header checksum) */
        if (ip[7] < 255)
            ip[7]++;
        pseudo = sum16(ip + 8, 2 * OVL_ADDR_LEN); /* RFC 8200 8.1: both addresses */
    } else { /* the same for the TTL, and a full header checksum */
        if (ip[8] < 255)
            ip[8]++;
        put16(ip + 10, 0);
        put16(ip + 10, fold(sum16(ip, IPV4_HLEN)));
        pseudo = sum16(ip + 12, 8);
    }
    /* Outer UDP checksum: 0 when none is due, else (TUN_F_UDP_TUNNEL_GSO_CSUM, inj_remote_ok) the
     * pseudo-header seed, folded, not complemented, which the kernel completes per segment. */
    uint8_t *udp = ip + ip_hlen;
    put16(udp + 6, csum ? (uint16_t)~fold(pseudo + IPPROTO_UDP + udp_len) : 0);
    uint8_t *v = h;
    memset(v, 0, INJ_VNET_LEN);
    v[0] = (uint8_t)(OVL_VNET_F_NEEDS_CSUM | (csum ? VNET_F_UDP_TUNNEL_CSUM : 0));
    v[1] = (uint8_t)(x->gso_type | (v6 ? VNET_GSO_UDP_TUNNEL_IPV6 : VNET_GSO_UDP_TUNNEL_IPV4));
    wr16(v + 2, (uint16_t)(x->hdrs + shift));                      /* hdr_len */
    wr16(v + 4, x->gso_size);                                      /* gso_size */
    wr16(v + 6, (uint16_t)(x->csum_start - x->strip + shift));     /* csum_start, from the outer Ethernet */
    wr16(v + 8, x->csum_offset);                                   /* csum_offset */
    wr_le16(v + 20, INJ_OUTER_ETH + ip_hlen);                      /* outer_th_offset: the outer UDP header */
    wr_le16(v + 22, shift + x->l3);                                /* inner_nh_offset: the inner IP header */
    return INJ_VNET_LEN + shift;
}

int ovl_inject_header(struct ovl_dp *dp, uint32_t r, const uint8_t *vnet, const uint8_t *frame, uint32_t len,
                      uint8_t *out, uint32_t cap) {
    struct ovl_inject *j = dp->inj;
    struct inj_frame x;
    if (!j || r >= dp->cfg.n_remotes || !dp->cfg.remote_used[r])
        return -OVL_INJ_FALLBACK_OTHER;
    int res = inj_check(dp, vnet, frame, len, &x);
    if (res < 0)
        return res;
    uint32_t flen = len - x.strip;
    res = inj_remote_ok(dp, &x, r, flen);
    if (res < 0)
        return res;
    if (cap < INJ_HDR + (size_t)flen)
        return -OVL_INJ_FALLBACK_TOO_BIG;
    uint8_t *f = out + INJ_HDR; /* the frame goes behind the room for any header: strip, then build */
    memcpy(f, frame, 2 * ETH_ALEN);
    memcpy(f + 2 * ETH_ALEN, frame + 2 * ETH_ALEN + x.strip, len - 2 * ETH_ALEN - x.strip);
    uint32_t hl = inj_build(dp, j, &x, r, f, flen, j->hdr);
    memmove(out + hl, f, flen);
    memcpy(out, j->hdr, hl);
    return (int)(hl + flen);
}

/* One write of the super-frame to remote r: 1 done, 0 refused for good (dp->inj->off set),
 * -1 dropped (a full queue). */
static int inj_write(struct ovl_dp *dp, const struct inj_frame *x, uint32_t r, uint8_t *f, uint32_t flen) {
    struct ovl_inject *j = dp->inj;
    struct iovec iov[2];
    iov[0].iov_base = j->hdr;
    iov[0].iov_len = inj_build(dp, j, x, r, f, flen, j->hdr);
    ip4_ident(dp, j->hdr + INJ_VNET_LEN + INJ_OUTER_ETH, x->nseg); /* without DF: ids for the segments */
    iov[1].iov_base = f;
    iov[1].iov_len = flen;
    ssize_t w;
    do
        w = writev(j->fd, iov, 2);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
        j->ctr[OVL_INJ_ERRORS]++;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) {
            dp->drops[OVL_DROP_TX_FULL] += x->nseg;
            return -1;
        }
        j->err = errno;
        j->off = 1;
        return 0;
    }
    j->ctr[OVL_INJ_WRITES]++;
    j->ctr[OVL_INJ_SEGMENTS] += x->nseg;
    dp->remotes[r][OVL_REMOTE_TX_PACKETS] += x->nseg;
    /* What the old path would count: every segment's inner frame. */
    dp->remotes[r][OVL_REMOTE_TX_BYTES] += flen + (uint64_t)(x->nseg - 1) * x->hdrs;
    return 1;
}

int inject_take(struct ovl_dp *dp, uint32_t i, double now) {
    struct ovl_inject *j = dp->inj;
    const struct ovl_config *c = &dp->cfg;
    uint8_t *buf = dp->tap_data[i];
    uint32_t len = dp->tap_len[i], vlen = c->vnet_hdr_len;
    if (!j || j->fd < 0 || len >= dp->tap_slot || !inj_candidate(dp, buf, len))
        return 0;
    if (j->off) {
        j->ctr[OVL_INJ_FALLBACK_OFF]++;
        return 0;
    }
    uint8_t *f = buf + vlen;
    uint32_t flen = len - vlen;
    struct inj_frame x;
    int res = inj_check(dp, buf, f, flen, &x);
    if (res < 0) {
        j->ctr[-res]++;
        return 0;
    }
    /* The remotes, as ovl_tx_process finds them (multicast is not looked up). */
    int32_t r = (f[0] & 1) ? -1 : ovl_fdb_lookup(dp->fdb, f, x.vlan, now);
    int unicast = r >= 0 && (uint32_t)r < c->n_remotes && c->remote_used[r];
    /* Every remote it goes to must take it (a flood: all of them), else it goes the old way. */
    for (uint32_t k = unicast ? (uint32_t)r : 0; k < (unicast ? (uint32_t)r + 1 : c->n_remotes); k++) {
        if (c->remote_used[k] && (res = inj_remote_ok(dp, &x, k, flen - x.strip)) < 0) {
            j->ctr[-res]++;
            return 0;
        }
    }
    if (x.strip) { /* from here on the frame is changed: no way back to the old path */
        memmove(f + VLAN_HLEN, f, 2 * ETH_ALEN);
        f += VLAN_HLEN;
        flen -= VLAN_HLEN;
    }
    dp->stats[OVL_STAT_TAP_RX] += x.nseg;
    dp->stats[OVL_STAT_TAP_RX_GSO]++;
    j->ctr[OVL_INJ_FRAMES]++;
    if (unicast) {
        dp->stats[OVL_STAT_TX_UNICAST] += x.nseg;
        if (inj_write(dp, &x, (uint32_t)r, f, flen) == 0)
            dp->drops[OVL_DROP_TX_ERROR] += x.nseg;
        return 1;
    }
    dp->stats[OVL_STAT_TX_FLOODED] += x.nseg;
    for (uint32_t k = 0; k < c->n_remotes; k++) {
        if (!c->remote_used[k])
            continue;
        dp->remotes[k][OVL_REMOTE_TX_FLOOD] += x.nseg;
        if (j->off || inj_write(dp, &x, k, f, flen) == 0)
            dp->drops[OVL_DROP_TX_ERROR] += x.nseg;
    }
    return 1;
}
