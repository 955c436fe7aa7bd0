/* rx_super.c: super-packets received whole, and partial checksums of received frames
 * (issue 10). Pure steps of the RX plan (ovl_rx_plan calls them), no I/O.
 *
 * A peer's kernel vxlan (or gretap) device sends its GSO packets whole where the underlay is
 * a virtual hop (veth): a plain UDP socket receives datagrams of up to 64 KiB (no UDP_GRO
 * control message: udp_unexpected_gso lets SKB_GSO_UDP_TUNNEL through), whose inner frame is
 * one TCP packet beyond the TAP's MTU, its checksum only the pseudo-header seed
 * (notes/udp-tunnel-gso.md, issue10-research.md section 2). Where the TAP takes offloads
 * (rx_coalesce with a virtio header: a Linux bridge) it is written as it came, as one TSO
 * frame: NEEDS_CSUM from the TCP header, gso_type TCPV4 / TCPV6 (+ ECN with CWR, as
 * tcp_gro_complete does), gso_size what the TAP's MTU leaves for payload. Elsewhere (no
 * virtio header, an OVS bridge, which reads the TAP without offload state) it is cut here
 * into segments of at most the TAP's MTU with full checksums, by the TX path's segmentation
 * (offload.c: tso_prepare, tso_seg_hdr): per segment a header of our own and the payload
 * where it lies in the received datagram, two iovecs of one write, nothing copied.
 *
 * Every length the packet claims is checked against the datagram first: IPv4 total length
 * (and header checksum) / IPv6 payload length equal to what arrived, TCP data offset inside
 * it, no IP options we cannot cut (IPv6 extension headers), no fragment, no SYN, RST or URG,
 * and a checksum that is the seed or a valid full one. A frame beyond the TAP's MTU that is
 * no such super-packet goes on as before (delivered as it is) if it fits a ring slot, and is
 * dropped as rx_bad_super otherwise.
 *
 * Normal-size frames (rx_csum_fix): a TCP or UDP checksum equal to the pseudo-header seed
 * means its sender left it to offload; it goes to the TAP with NEEDS_CSUM where the TAP takes
 * it (and the frame ends with the IP packet), and is completed here otherwise. Any other checksum is left for the receiver to judge. */
#include "internal.h"

#include <stdlib.h>

#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_URG 0x20
#define SUPER_SLOT 65536   /* a receive slot: the largest UDP payload (65,507) or raw IPv4 packet (65,535) */
#define SUPER_HDR_SLOT 144 /* a segment's headers: Ethernet, two tags, IPv4 with options, TCP with options */
#define SUPER_MAX_L34 120  /* IPv4 header with options + TCP header with options */
#define SUPER_MIN_MTU 256

struct rx_super {
    uint32_t tap_mtu;
    uint32_t seg_cap;  /* segments of split super-packets one plan holds (batch super-packets) */
    uint32_t seg_used; /* in this plan */
    uint8_t *hdr;      /* seg_cap headers of SUPER_HDR_SLOT bytes */
};

static const uint8_t zero_vnet[VNET_HDR_MAX]; /* a complete frame, nothing to offload */

void rx_super_free(struct rx_super *s) {
    if (s)
        free(s->hdr);
    free(s);
}

int ovl_dp_set_rx_super(struct ovl_dp *dp, uint32_t tap_mtu) {
    if (tap_mtu == 0) {
        rx_super_free(dp->sup);
        dp->sup = NULL;
        return 0;
    }
    if (tap_mtu < SUPER_MIN_MTU || tap_mtu > 0xFFFF)
        return -1;
    /* The most segments a super-packet of a batch makes: 64 KiB at the smallest MSS. The plan's
     * writes and iovecs grow by that (each normal entry needs 1 write and at most 2 iovecs). */
    uint32_t per = (0xFFFF + (tap_mtu - SUPER_MAX_L34) - 1) / (tap_mtu - SUPER_MAX_L34);
    size_t seg_cap = (size_t)dp->cfg.batch * per;
    size_t n_wr = dp->rx_cap + seg_cap, n_iov = 2 * (size_t)dp->rx_cap + 3 * seg_cap;
    struct rx_super *s = calloc(1, sizeof(*s));
    struct tap_write *wr = calloc(n_wr, sizeof(*wr));
    struct iovec *iov = calloc(n_iov, sizeof(*iov));
    uint8_t *hdr = malloc(seg_cap * SUPER_HDR_SLOT);
    uint8_t *rx_buf = dp->rx_slot < SUPER_SLOT ? malloc((size_t)dp->cfg.batch * SUPER_SLOT) : NULL;
    if (!s || !wr || !iov || !hdr || (dp->rx_slot < SUPER_SLOT && !rx_buf)) {
        free(s);
        free(wr);
        free(iov);
        free(hdr);
        free(rx_buf);
        return -1;
    }
    s->tap_mtu = tap_mtu;
    s->seg_cap = (uint32_t)seg_cap;
    s->hdr = hdr;
    rx_super_free(dp->sup);
    dp->sup = s;
    free(dp->wr);
    free(dp->wr_iov);
    dp->wr = wr;
    dp->wr_iov = iov;
    dp->n_wr = dp->n_wr_iov = 0;
    if (rx_buf) { /* between batches: no rx entry points into the old slots any more */
        free(dp->rx_buf);
        dp->rx_buf = rx_buf;
        dp->rx_slot = SUPER_SLOT;
    }
    return 0;
}

void rx_super_begin(struct ovl_dp *dp) {
    if (dp->sup)
        dp->sup->seg_used = 0;
}

/* A checked TCP super-packet. */
struct super_pkt {
    uint32_t v6, l4, hdrs, mss, nseg;
};

/* f (len bytes, network header at l3 of EtherType type, beyond the TAP's MTU) as a super-packet
 * we can pass on: 0 and p, or -1. A valid full TCP checksum is turned into the seed (the
 * checksum a TSO frame carries; our own segments compute theirs). */
static int super_parse(uint8_t *f, uint32_t len, uint32_t l3, uint16_t type, uint32_t mtu, struct super_pkt *p) {
    uint8_t *ip = f + l3;
    uint32_t iplen = len - l3, l4;
    if (type == ETH_P_IP) {
        if (iplen < IPV4_HLEN || ip[0] >> 4 != 4)
            return -1;
        uint32_t ihl = (uint32_t)(ip[0] & 0x0F) * 4;
        if (ihl < IPV4_HLEN || iplen < ihl || ip[9] != IPPROTO_TCP || (get16(ip + 6) & 0x3FFF) ||
            get16(ip + 2) != iplen || fold(sum16(ip, ihl)) != 0)
            return -1;
        l4 = l3 + ihl;
        p->v6 = 0;
    } else if (type == ETH_P_IPV6) {
        if (iplen < IPV6_HLEN || ip[0] >> 4 != 6 || ip[6] != IPPROTO_TCP || get16(ip + 4) != iplen - IPV6_HLEN)
            return -1;
        l4 = l3 + IPV6_HLEN;
        p->v6 = 1;
    } else {
        return -1;
    }
    if (len < l4 + TCP_HLEN)
        return -1;
    uint8_t *tcp = f + l4;
    uint32_t doff = (uint32_t)(tcp[12] >> 4) * 4;
    if (doff < TCP_HLEN || len <= l4 + doff || (tcp[13] & (TCP_SYN | TCP_RST | TCP_URG)) || mtu <= l4 - l3 + doff)
        return -1;
    uint32_t l4len = len - l4;
    uint64_t ps = tcp_pseudo_sum(ip, p->v6, l4len);
    uint16_t seed = (uint16_t)~fold(ps);
    if (get16(tcp + 16) != seed) {
        if (fold(ps + sum16(tcp, l4len)) != 0)
            return -1; /* damaged: cut or passed on, the damage would be hidden */
        put16(tcp + 16, seed);
    }
    p->l4 = l4;
    p->hdrs = l4 + doff;
    p->mss = mtu - (l4 - l3) - doff;
    p->nseg = (len - p->hdrs + p->mss - 1) / p->mss;
    return 0;
}

/* Cut p into segments of the plan (no room: dropped, which io_recv's batches never hit). */
static void super_split(struct ovl_dp *dp, uint8_t *f, uint32_t len, const struct super_pkt *p, int32_t remote) {
    struct rx_super *s = dp->sup;
    struct vnet_hdr v = {0, p->v6 ? OVL_VNET_GSO_TCPV6 : OVL_VNET_GSO_TCPV4, 0, (uint16_t)p->mss, 0, 0};
    struct tso t;
    if (s->seg_used + p->nseg > s->seg_cap || p->hdrs > SUPER_HDR_SLOT || tso_prepare(&t, &v, f, len) < 0 ||
        t.nseg != p->nseg) {
        count_drop(dp, OVL_DROP_RX_BAD_SUPER);
        return;
    }
    for (uint32_t k = 0; k < t.nseg; k++) {
        uint8_t *h = s->hdr + (size_t)s->seg_used++ * SUPER_HDR_SLOT;
        uint32_t plen = tso_seg_hdr(&t, k, h);
        struct tap_write *w = plan_add(dp, zero_vnet, remote);
        plan_iov(dp, w, h, t.hdrs);
        plan_iov(dp, w, f + t.hdrs + (size_t)k * t.mss, plen);
        w->segs = 1;
        w->bytes = plen + (k ? 0 : t.hdrs); /* the bytes received */
    }
    dp->stats[OVL_STAT_RX_SUPER_SPLIT]++;
}

int rx_super_take(struct ovl_dp *dp, uint32_t i, uint8_t *f, uint32_t len) {
    struct rx_super *s = dp->sup;
    if (!s || len <= s->tap_mtu + ETH_HLEN)
        return 0;
    uint16_t type = 0;
    uint32_t l3 = l3_offset(f, len, &type);
    if (!l3 || len - l3 <= s->tap_mtu) /* tagged, but within the MTU */
        return 0;
    struct super_pkt p;
    if (super_parse(f, len, l3, type, s->tap_mtu, &p) < 0) {
        if (len <= dp->cfg.slot_size)
            return 0; /* as without rx_super: delivered as it is, the bridge decides */
        count_drop(dp, OVL_DROP_RX_BAD_SUPER);
        return 1;
    }
    int32_t remote = dp->rx[i].remote;
    co_end(dp, f, len);
    if (!dp->co) {
        super_split(dp, f, len, &p, remote);
        return 1;
    }
    uint8_t gso = p.v6 ? OVL_VNET_GSO_TCPV6 : OVL_VNET_GSO_TCPV4;
    if (f[p.l4 + 13] & TCP_CWR)
        gso |= OVL_VNET_GSO_ECN;
    struct vnet_hdr v = {OVL_VNET_F_NEEDS_CSUM, gso, (uint16_t)p.hdrs, (uint16_t)p.mss, (uint16_t)p.l4, 16};
    struct tap_write *w = plan_add(dp, NULL, remote);
    vnet_write(w->vnet, &v);
    plan_iov(dp, w, f, len);
    w->segs = p.nseg;
    w->bytes = len;
    dp->stats[OVL_STAT_RX_SUPER]++;
    return 1;
}

void rx_csum_fix(const struct ovl_dp *dp, uint8_t *f, uint32_t len, uint8_t *vnet) {
    memset(vnet, 0, VNET_HDR_MAX);
    uint16_t type = 0;
    uint32_t l3 = l3_offset(f, len, &type), l4, l4len, v6, iplen;
    if (!l3)
        return;
    const uint8_t *ip = f + l3;
    uint8_t proto;
    if (type == ETH_P_IP) {
        if (len < l3 + IPV4_HLEN || ip[0] >> 4 != 4 || (get16(ip + 6) & 0x3FFF)) /* fragments: not judged */
            return;
        uint32_t ihl = (uint32_t)(ip[0] & 0x0F) * 4, tot = get16(ip + 2);
        if (ihl < IPV4_HLEN || tot < ihl || tot > len - l3)
            return;
        l4 = l3 + ihl;
        l4len = tot - ihl;
        iplen = tot;
        proto = ip[9];
        v6 = 0;
    } else if (type == ETH_P_IPV6) {
        if (len < l3 + IPV6_HLEN || ip[0] >> 4 != 6 || get16(ip + 4) > len - l3 - IPV6_HLEN)
            return;
        l4 = l3 + IPV6_HLEN;
        l4len = get16(ip + 4);
        iplen = IPV6_HLEN + l4len;
        proto = ip[6];
        v6 = 1;
    } else {
        return;
    }
    uint32_t field;
    if (proto == IPPROTO_TCP && l4len >= TCP_HLEN)
        field = 16;
    else if (proto == IPPROTO_UDP && l4len >= UDP_HLEN)
        field = 6;
    else
        return;
    uint64_t ps = (v6 ? sum16(ip + 8, 32) : sum16(ip + 12, 8)) + proto + l4len;
    uint8_t *cs = f + l4 + field;
    uint16_t seed = (uint16_t)~fold(ps);
    if (get16(cs) != seed) /* a full checksum, none (UDP 0), or a bad one: as it is */
        return;
    if (dp->co && iplen == len - l3) { /* the kernel sums to the frame's end: no trailing bytes */
        struct vnet_hdr v = {OVL_VNET_F_NEEDS_CSUM, OVL_VNET_GSO_NONE, 0, 0, (uint16_t)l4, (uint16_t)field};
        vnet_write(vnet, &v);
        return;
    }
    /* The field holds the seed: the sum over the L4 bytes, field included, completes it. */
    uint16_t c = fold(sum16(f + l4, l4len));
    put16(cs, c == 0 && proto == IPPROTO_UDP ? 0xFFFF : c);
}
