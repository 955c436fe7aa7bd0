/* offload.c: the TAP offloads as pure steps, over buffers only (like wireguard-go's
 * gsoSplit / handleGRO in tun/offload_linux.go): no I/O here. The TX step cuts what a
 * TAP read returned into ring entries (ovl_offload_frame per frame, tx_fill_offloaded
 * per batch); the RX step turns processed ring entries into a plan of TAP writes
 * (ovl_rx_plan), TCP segments coalesced. batch.c drives them, io.c does the syscalls.
 *
 * TX: a TAP opened with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6) hands over frames
 * the kernel left unfinished: a partial checksum (NEEDS_CSUM: the checksum field holds
 * the pseudo-header sum, the rest is summed from csum_start, which on a TAP counts from
 * the Ethernet header) and TCP super-frames of up to 64 KiB (gso_type TCPV4/TCPV6)
 * that must be cut into gso_size segments, as the kernel's tcp_gso_segment does: each a
 * complete frame with its own IP length (IPv4: id + i and header checksum), TCP
 * sequence number, flags (CWR only on the first, FIN and PSH only on the last) and full
 * TCP checksum. Header lengths come from the headers, never from hdr_len. */
#include "internal.h"

#include <limits.h>
#include <stdlib.h>

static void vnet_read(const uint8_t *p, struct vnet_hdr *v) {
    v->flags = p[0];
    v->gso_type = p[1];
    memcpy(&v->hdr_len, p + 2, 2); /* native endian, as the TAP writes it */
    memcpy(&v->gso_size, p + 4, 2);
    memcpy(&v->csum_start, p + 6, 2);
    memcpy(&v->csum_offset, p + 8, 2);
}

void vnet_write(uint8_t *p, const struct vnet_hdr *v) {
    memset(p, 0, VNET_HDR_MAX);
    p[0] = v->flags;
    p[1] = v->gso_type;
    memcpy(p + 2, &v->hdr_len, 2);
    memcpy(p + 4, &v->gso_size, 2);
    memcpy(p + 6, &v->csum_start, 2);
    memcpy(p + 8, &v->csum_offset, 2);
}

/* Offset of the network header behind up to two VLAN tags, and its EtherType; 0 if cut short. */
uint32_t l3_offset(const uint8_t *f, size_t len, uint16_t *type) {
    uint32_t off = 12;
    if (len < ETH_HLEN)
        return 0;
    *type = get16(f + off);
    for (int tags = 0; tags < 2 && (*type == ETH_P_8021Q || *type == ETH_P_8021AD); tags++) {
        off += VLAN_HLEN;
        if (len < off + 2)
            return 0;
        *type = get16(f + off);
    }
    return off + 2;
}

int tso_prepare(struct tso *t, const struct vnet_hdr *v, const uint8_t *f, size_t len) {
    uint16_t type = 0;
    uint8_t gso = v->gso_type & (uint8_t)~OVL_VNET_GSO_ECN;
    uint32_t l3 = l3_offset(f, len, &type);
    if (!l3 || len > 0xFFFFFF || v->gso_size == 0)
        return -OVL_DROP_TX_BAD_OFFLOAD;
    memset(t, 0, sizeof(*t));
    t->f = f;
    t->len = (uint32_t)len;
    t->l3 = l3;
    if (gso == OVL_VNET_GSO_TCPV4 && type == ETH_P_IP) {
        if (len < l3 + IPV4_HLEN || f[l3] >> 4 != 4)
            return -OVL_DROP_TX_BAD_OFFLOAD;
        uint32_t ihl = (uint32_t)(f[l3] & 0x0F) * 4;
        if (ihl < IPV4_HLEN || len < l3 + ihl || f[l3 + 9] != IPPROTO_TCP || (get16(f + l3 + 6) & 0x3FFF))
            return -OVL_DROP_TX_BAD_OFFLOAD;
        t->l4 = l3 + ihl;
        t->ipid = get16(f + l3 + 4);
    } else if (gso == OVL_VNET_GSO_TCPV6 && type == ETH_P_IPV6) {
        if (len < l3 + IPV6_HLEN || f[l3] >> 4 != 6 || f[l3 + 6] != IPPROTO_TCP)
            return -OVL_DROP_TX_BAD_OFFLOAD; /* extension headers are not supported */
        t->l4 = l3 + IPV6_HLEN;
        t->v6 = 1;
    } else {
        return -OVL_DROP_TX_BAD_OFFLOAD;
    }
    if (len < t->l4 + TCP_HLEN)
        return -OVL_DROP_TX_BAD_OFFLOAD;
    uint32_t doff = (uint32_t)(f[t->l4 + 12] >> 4) * 4;
    if (doff < TCP_HLEN || len <= t->l4 + doff) /* no payload: nothing to segment */
        return -OVL_DROP_TX_BAD_OFFLOAD;
    t->hdrs = t->l4 + doff;
    t->mss = v->gso_size;
    t->nseg = (t->len - t->hdrs + t->mss - 1) / t->mss;
    t->seq = get32(f + t->l4 + 4);
    return 0;
}

/* The headers of segment i of t into out (hdrs bytes), its TCP checksum summed over them and
 * over its payload where it lies in the super-frame (t->f + hdrs + i * mss); returns the
 * payload's length. The RX path writes them with that payload as a second iovec (rx_super.c). */
uint32_t tso_seg_hdr(const struct tso *t, uint32_t i, uint8_t *out) {
    uint32_t off = t->hdrs + i * t->mss;
    uint32_t plen = t->len - off < t->mss ? t->len - off : t->mss;
    uint32_t seglen = t->hdrs + plen;
    memcpy(out, t->f, t->hdrs);
    uint8_t *ip = out + t->l3, *tcp = out + t->l4;
    if (t->v6) {
        put16(ip + 4, seglen - t->l3 - IPV6_HLEN);
    } else {
        uint32_t ihl = t->l4 - t->l3;
        put16(ip + 2, seglen - t->l3);
        put16(ip + 4, (uint32_t)(t->ipid + i) & 0xFFFF);
        put16(ip + 10, 0);
        put16(ip + 10, fold(sum16(ip, ihl)));
    }
    put32(tcp + 4, t->seq + i * t->mss);
    if (i + 1 < t->nseg)
        tcp[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
    if (i > 0)
        tcp[13] &= (uint8_t)~TCP_CWR;
    put16(tcp + 16, 0);
    /* The TCP header is a multiple of 4 bytes long: its sum and the payload's add up. */
    uint32_t doff = t->hdrs - t->l4;
    put16(tcp + 16, fold(tcp_pseudo_sum(ip, t->v6, doff + plen) + sum16(tcp, doff) + sum16(t->f + off, plen)));
    return plen;
}

/* Segment i of t into out (room for hdrs + mss bytes); returns its length. */
static uint32_t tso_write(const struct tso *t, uint32_t i, uint8_t *out) {
    uint32_t plen = tso_seg_hdr(t, i, out);
    memcpy(out + t->hdrs, t->f + t->hdrs + i * t->mss, plen);
    return t->hdrs + plen;
}

/* Finish a partial checksum in place (skb_checksum_help): the field already holds the
 * pseudo-header sum. 0 or -drop. */
static int csum_complete(const struct vnet_hdr *v, uint8_t *f, size_t len) {
    size_t start = v->csum_start, field = (size_t)v->csum_start + v->csum_offset;
    if (start >= len || field + 2 > len)
        return -OVL_DROP_TX_BAD_OFFLOAD;
    uint16_t cs = fold(sum16(f + start, len - start));
    put16(f + field, cs ? cs : 0xFFFF);
    return 0;
}

int ovl_offload_frame(const uint8_t *vnet, uint8_t *frame, uint32_t len, uint32_t *seg, uint8_t *out,
                      uint32_t slot, uint8_t **segs, uint32_t *lens, uint32_t room) {
    struct vnet_hdr v;
    vnet_read(vnet, &v);
    if (room < 1)
        return -OVL_DROP_TX_TOO_BIG;
    if (v.gso_type == OVL_VNET_GSO_NONE) {
        if (*seg != 0)
            return -OVL_DROP_TX_BAD_OFFLOAD;
        if ((v.flags & OVL_VNET_F_NEEDS_CSUM) && csum_complete(&v, frame, len) < 0)
            return -OVL_DROP_TX_BAD_OFFLOAD;
        segs[0] = frame;
        lens[0] = len;
        return 1;
    }
    struct tso t;
    int res = tso_prepare(&t, &v, frame, len);
    if (res < 0)
        return res;
    if (t.hdrs + t.mss > slot) /* segments larger than any the underlay takes */
        return -OVL_DROP_TX_TOO_BIG;
    if (*seg >= t.nseg)
        return -OVL_DROP_TX_BAD_OFFLOAD;
    uint32_t k = 0;
    for (; k < room && *seg < t.nseg; k++, (*seg)++) {
        segs[k] = out + (size_t)k * slot;
        lens[k] = tso_write(&t, *seg, segs[k]);
    }
    if (*seg == t.nseg)
        *seg = 0;
    return (int)k;
}

/* Frames read with a virtio header (tap_data / tap_len [cur->frame..n), from segment
 * cur->seg) -> TX ring entries, up to the ring's capacity: super-frames cut into segments
 * in seg_buf, partial checksums completed in place. Returns the entries filled; the driver
 * processes and sends them and calls again until cur->frame == n, so a 64 KiB super-frame
 * to many remotes goes out in several sendmmsg calls. */
uint32_t tx_fill_offloaded(struct ovl_dp *dp, uint32_t n, struct tx_cursor *cur) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t vlen = c->vnet_hdr_len, m = 0;
    while (cur->frame < n && m < c->batch) {
        uint8_t *buf = dp->tap_data[cur->frame];
        uint32_t len = dp->tap_len[cur->frame];
        int fresh = cur->seg == 0, k;
        if (fresh && m && dp->inj && inject_wanted(dp, buf, len))
            break; /* the ring goes out first, then the injection takes this one (ovl_from_tap) */
        if (fresh && len < vlen)
            k = -OVL_DROP_TX_BAD_OFFLOAD;
        else if (fresh && len >= dp->tap_slot) /* may have been cut by the read: too big anyway */
            k = -OVL_DROP_TX_TOO_BIG;
        else
            k = ovl_offload_frame(buf, buf + vlen, len - vlen, &cur->seg, dp->seg_buf + (size_t)m * c->slot_size,
                                  c->slot_size, &dp->tx_data[m], &dp->tx_len[m], c->batch - m);
        if (k < 0) {
            tap_drop(dp, -k);
            cur->frame++;
            cur->seg = 0;
            continue;
        }
        if (fresh && buf[1] != OVL_VNET_GSO_NONE)
            dp->stats[OVL_STAT_TAP_RX_GSO]++;
        pmtu_origin(dp, m, (uint32_t)k, cur->frame); /* one ICMP per super-frame (pmtu.c) */
        m += (uint32_t)k;
        if (cur->seg == 0)
            cur->frame++;
    }
    return m;
}

/* ---- RX: the TAP write plan, inner TCP segments of a batch coalesced into super-frames ----
 * The reverse of TSO, as the kernel's GRO does it: consecutive segments of one TCP flow
 * (same remote, same Ethernet header and tags, same addresses, ports, TOS/TTL, no IP
 * options or fragments, only ACK and PSH, identical ack, window and TCP options,
 * sequence numbers running on, all of one size but a shorter last one, valid TCP
 * checksums) become one frame with a GSO virtio header: gso_type TCPV4/TCPV6, gso_size
 * = the first segment's payload, NEEDS_CSUM with csum_start at the TCP header (from the
 * Ethernet header, on a TAP) and the pseudo-header sum in the checksum field, as
 * virtio_net_hdr_to_skb expects. The first segment's headers (IP length, IPv4 header
 * checksum, PSH of the last segment) are rewritten in place, the other segments'
 * payloads follow in the same writev, without copying. A segment that cannot join
 * its flow's super-frame first ends that super-frame (its write goes first), so a flow's
 * order is kept. Without rx_coalesce the plan is one write per delivered frame. */

#define CO_FLOWS 8 /* flows coalesced at once per batch */

struct co_seg { /* a frame parsed as a TCP segment that may be coalesced */
    uint8_t *f;
    uint32_t len, l3, l4, hdrs, payload, v6;
};

struct co_flow {
    uint32_t used, n, closed;
    int32_t remote;
    struct co_seg first;
    uint32_t mss, total, next_seq, bytes;
    uint8_t last_flags;
    uint32_t head, tail; /* rx entries of its first and last segment, chained by ovl_co.next */
};

struct ovl_co {
    struct co_flow flow[CO_FLOWS];
    uint32_t *next; /* rx_cap entries: the next segment of the same super-frame */
};

int co_new(struct ovl_dp *dp) {
    dp->co = calloc(1, sizeof(*dp->co));
    if (!dp->co)
        return -1;
    dp->co->next = calloc(dp->rx_cap, sizeof(*dp->co->next));
    return dp->co->next ? 0 : -1;
}

void co_free(struct ovl_co *co) {
    if (co)
        free(co->next);
    free(co);
}

/* What f is: 0 not a TCP segment (that we can tell), 1 a TCP segment that cannot be
 * coalesced (s has its addresses and ports), 2 one that can (s is complete). */
static int co_parse(uint8_t *f, uint32_t len, struct co_seg *s) {
    uint16_t type = 0;
    memset(s, 0, sizeof(*s));
    uint32_t l3 = l3_offset(f, len, &type);
    if (!l3)
        return 0;
    s->f = f;
    s->len = len;
    s->l3 = l3;
    int can;
    if (type == ETH_P_IP) {
        if (len < l3 + IPV4_HLEN || f[l3] >> 4 != 4 || f[l3 + 9] != IPPROTO_TCP)
            return 0;
        uint32_t ihl = (uint32_t)(f[l3] & 0x0F) * 4;
        if (ihl < IPV4_HLEN || len < l3 + ihl)
            return 0;
        s->l4 = l3 + ihl;
        can = ihl == IPV4_HLEN && !(get16(f + l3 + 6) & 0x3FFF) && get16(f + l3 + 2) == len - l3;
    } else if (type == ETH_P_IPV6) {
        if (len < l3 + IPV6_HLEN || f[l3] >> 4 != 6 || f[l3 + 6] != IPPROTO_TCP)
            return 0;
        s->l4 = l3 + IPV6_HLEN;
        s->v6 = 1;
        can = get16(f + l3 + 4) == len - l3 - IPV6_HLEN;
    } else {
        return 0;
    }
    if (len < s->l4 + 4) /* no ports */
        return 0;
    if (!can || len < s->l4 + TCP_HLEN)
        return 1;
    uint32_t doff = (uint32_t)(f[s->l4 + 12] >> 4) * 4;
    uint8_t flags = f[s->l4 + 13];
    if (doff < TCP_HLEN || len <= s->l4 + doff || (flags & ~(TCP_ACK | TCP_PSH)) || !(flags & TCP_ACK))
        return 1;
    s->hdrs = s->l4 + doff;
    s->payload = len - s->hdrs;
    /* A segment with a bad checksum is delivered as it is, for the receiver to drop:
     * merged, its checksum would be recomputed and the damage hidden. One whose checksum
     * holds only the pseudo-header seed is partial (its sender's kernel left the checksum
     * to offload and it crossed a virtual hop: notes/udp-tunnel-gso.md): a super-frame's
     * partial checksum covers it. */
    uint32_t l4len = len - s->l4;
    uint64_t ps = tcp_pseudo_sum(f + l3, s->v6, l4len);
    uint16_t seed = (uint16_t)~fold(ps);
    if (get16(f + s->l4 + 16) == seed)
        return 2;
    return fold(ps + sum16(f + s->l4, l4len)) == 0 ? 2 : 1;
}

/* Same flow: addresses and ports (and IP version). */
static int co_same_flow(const struct co_seg *a, const struct co_seg *b) {
    if (a->v6 != b->v6 || a->l3 != b->l3)
        return 0;
    const uint8_t *x = a->f, *y = b->f;
    if (a->v6 ? memcmp(x + a->l3 + 8, y + b->l3 + 8, 32) : memcmp(x + a->l3 + 12, y + b->l3 + 12, 8))
        return 0;
    return !memcmp(x + a->l4, y + b->l4, 4);
}

/* s may follow flow c's segments. */
static int co_fits(const struct co_flow *c, const struct co_seg *s, int32_t remote) {
    const struct co_seg *a = &c->first;
    const uint8_t *x = a->f, *y = s->f;
    /* writev takes at most IOV_MAX iovecs: the virtio header, the first segment, one per payload. */
    if (c->closed || c->remote != remote || a->hdrs != s->hdrs || s->payload > c->mss ||
        get32(y + s->l4 + 4) != c->next_seq || a->hdrs - a->l3 + c->total + s->payload > 0xFFFF ||
        c->n + 2 > IOV_MAX)
        return 0;
    if (memcmp(x, y, a->l3)) /* Ethernet header and tags */
        return 0;
    if (a->v6 ? memcmp(x + a->l3, y + s->l3, 4) || x[a->l3 + 7] != y[s->l3 + 7] /* class, label; hop limit */
              : x[a->l3 + 1] != y[s->l3 + 1] || x[a->l3 + 6] != y[s->l3 + 6] || x[a->l3 + 8] != y[s->l3 + 8])
        return 0; /* TOS, DF, TTL */
    /* ack; data offset with the reserved bits and AccECN's AE (the super-frame keeps the first
     * segment's: tcp_gro_receive compares the whole word but CWR, FIN and PSH); window; options */
    return !memcmp(x + a->l4 + 8, y + s->l4 + 8, 5) && !memcmp(x + a->l4 + 14, y + s->l4 + 14, 2) &&
           !memcmp(x + a->l4 + TCP_HLEN, y + s->l4 + TCP_HLEN, a->hdrs - a->l4 - TCP_HLEN);
}

void plan_iov(struct ovl_dp *dp, struct tap_write *w, const void *base, size_t len) {
    struct iovec *v = &dp->wr_iov[w->iov + w->iovcnt++];
    v->iov_base = (void *)base;
    v->iov_len = len;
    dp->n_wr_iov++;
}

/* A new write of the plan; with a virtio header (vnet, or w's own when NULL) as its first iovec. */
struct tap_write *plan_add(struct ovl_dp *dp, const uint8_t *vnet, int32_t remote) {
    struct tap_write *w = &dp->wr[dp->n_wr++];
    w->iov = dp->n_wr_iov;
    w->iovcnt = 0;
    w->segs = 0;
    w->bytes = 0;
    w->remote = remote;
    if (dp->cfg.vnet_hdr_len)
        plan_iov(dp, w, vnet ? vnet : w->vnet, dp->cfg.vnet_hdr_len);
    return w;
}

/* One frame as one write (a partial checksum passed on or completed: rx_csum_fix). */
static void plan_frame(struct ovl_dp *dp, uint8_t *f, uint32_t len, int32_t remote) {
    struct tap_write *w = plan_add(dp, NULL, remote);
    rx_csum_fix(dp, f, len, w->vnet);
    plan_iov(dp, w, f, len);
    w->segs = 1;
    w->bytes = len;
}

/* Flow c as one write (a super-frame if it has several segments), and free it. */
static void co_flush(struct ovl_dp *dp, struct co_flow *c) {
    const struct co_seg *a = &c->first;
    struct tap_write *w;
    if (c->n > 1) {
        uint8_t *f = a->f, *ip = f + a->l3, *tcp = f + a->l4;
        uint32_t l4len = a->hdrs - a->l4 + c->total;
        if (a->v6) {
            put16(ip + 4, l4len);
        } else {
            put16(ip + 2, IPV4_HLEN + l4len);
            put16(ip + 10, 0);
            put16(ip + 10, fold(sum16(ip, IPV4_HLEN)));
        }
        tcp[13] = (uint8_t)((tcp[13] & ~TCP_PSH) | (c->last_flags & TCP_PSH));
        /* The partial checksum: the pseudo-header sum, not complemented. */
        put16(tcp + 16, (uint16_t)~fold(tcp_pseudo_sum(ip, a->v6, l4len)));
        struct vnet_hdr v = {OVL_VNET_F_NEEDS_CSUM, a->v6 ? OVL_VNET_GSO_TCPV6 : OVL_VNET_GSO_TCPV4,
                             (uint16_t)a->hdrs, (uint16_t)c->mss, (uint16_t)a->l4, 16};
        w = plan_add(dp, NULL, c->remote);
        vnet_write(w->vnet, &v);
    } else {
        w = plan_add(dp, NULL, c->remote);
        rx_csum_fix(dp, a->f, a->len, w->vnet);
    }
    plan_iov(dp, w, a->f, a->len);
    for (uint32_t k = 1, i = dp->co->next[c->head]; k < c->n; k++, i = dp->co->next[i]) {
        const struct rx_entry *e = &dp->rx[i]; /* a segment with the first one's header length */
        plan_iov(dp, w, e->data + e->result + a->hdrs, e->len - (uint32_t)e->result - a->hdrs);
    }
    w->segs = c->n;
    w->bytes = c->bytes;
    c->used = 0;
}

static void co_start(struct co_flow *c, const struct co_seg *s, int32_t remote, uint32_t i) {
    c->used = 1;
    c->n = 1;
    c->remote = remote;
    c->first = *s;
    c->mss = s->payload;
    c->total = s->payload;
    c->next_seq = get32(s->f + s->l4 + 4) + s->payload;
    c->bytes = s->len;
    c->last_flags = s->f[s->l4 + 13];
    c->closed = (c->last_flags & TCP_PSH) != 0;
    c->head = c->tail = i;
}

static void co_append(struct ovl_co *co, struct co_flow *c, const struct co_seg *s, uint32_t i) {
    co->next[c->tail] = i;
    c->tail = i;
    c->n++;
    c->total += s->payload;
    c->next_seq += s->payload;
    c->bytes += s->len;
    c->last_flags = s->f[s->l4 + 13];
    c->closed = (c->last_flags & TCP_PSH) || s->payload < c->mss;
}

/* Rx entry i (delivered: frame f of len bytes) into the plan through the coalescing flows. */
static void co_step(struct ovl_dp *dp, uint32_t i, uint8_t *f, uint32_t len) {
    struct ovl_co *co = dp->co;
    int32_t remote = dp->rx[i].remote;
    struct co_seg s;
    int kind = co_parse(f, len, &s);
    struct co_flow *c = NULL, *free_slot = NULL;
    for (int k = 0; kind && k < CO_FLOWS; k++) {
        struct co_flow *x = &co->flow[k];
        if (!x->used) {
            if (!free_slot)
                free_slot = x;
        } else if (!c && co_same_flow(&x->first, &s)) {
            c = x;
        }
    }
    if (c && kind == 2 && co_fits(c, &s, remote)) {
        co_append(co, c, &s, i);
        return;
    }
    if (c) { /* the segment ends its flow's super-frame */
        co_flush(dp, c);
        free_slot = c;
    }
    if (kind == 2 && free_slot) {
        co_start(free_slot, &s, remote, i);
        return;
    }
    plan_frame(dp, f, len, remote);
}

/* Frame f of len bytes is taken out of the coalescing flows (rx_super.c plans it whole): the
 * super-frame of its flow, if one is open, is planned first, so that the flow keeps its order. */
void co_end(struct ovl_dp *dp, uint8_t *f, uint32_t len) {
    struct co_seg s;
    if (!dp->co || !co_parse(f, len, &s))
        return;
    for (int k = 0; k < CO_FLOWS; k++) {
        struct co_flow *x = &dp->co->flow[k];
        if (x->used && co_same_flow(&x->first, &s)) {
            co_flush(dp, x);
            return;
        }
    }
}

uint32_t ovl_rx_plan(struct ovl_dp *dp, uint32_t n) {
    if (n > dp->n_rx)
        n = dp->n_rx; /* only entries that ovl_rx_process has just checked */
    dp->n_rx = 0;
    dp->n_wr = dp->n_wr_iov = 0;
    rx_super_begin(dp);
    for (uint32_t i = 0; i < n; i++) {
        const struct rx_entry *e = &dp->rx[i];
        if (e->result < 0)
            continue;
        uint8_t *f = e->data + e->result;
        uint32_t len = e->len - (uint32_t)e->result;
        if (rx_super_take(dp, i, f, len)) /* beyond the TAP's MTU: planned (or dropped) whole */
            continue;
        if (dp->co)
            co_step(dp, i, f, len);
        else
            plan_frame(dp, f, len, e->remote);
    }
    for (int k = 0; dp->co && k < CO_FLOWS; k++)
        if (dp->co->flow[k].used)
            co_flush(dp, &dp->co->flow[k]);
    return dp->n_wr;
}
