/* ring.c: outer packets through AF_PACKET TX rings (issue 10, the TX ring part).
 *
 * Python opens one AF_PACKET socket per egress device (datapath/io/ring.py: TPACKET_V2,
 * PACKET_TX_RING, PACKET_QDISC_BYPASS, PACKET_LOSS, bound to the device with protocol 0, so it
 * never receives) and hands it over with ovl_dp_set_tx_ring, which maps the ring here. The
 * control plane resolves each remote's next hop (route + neighbour) and sets it with
 * ovl_dp_set_nexthop: the ring and the Ethernet header (next hop's MAC, ours, IPv4).
 *
 * io_send gives a packet to ring_put: to a remote with a next hop it is copied into the next
 * free ring slot as Ethernet header + outer header + inner frame, exactly the bytes the raw
 * socket would have sent behind an Ethernet header (the outer IPv4 checksum is complete, the
 * IP id 0 with DF as the kernel's raw path leaves it, without DF an id of its own as that path
 * gives one (ip4_ident), the VXLAN UDP checksum as outer_push
 * computed it); ring_flush then starts the kernel on every ring with one send() each. The
 * kernel adds nothing: no routing, no neighbour lookup, no netfilter OUTPUT / POSTROUTING,
 * no qdisc (bypass). A packet to a remote without a next hop, or one larger than the slot
 * allows, goes the raw way (counted as fallback); a ring with no free slot drops it as
 * tx_full (the kernel has not sent the slots yet: back-pressure, like a full send buffer).
 */
#include "internal.h"

#include <errno.h>
#include <linux/if_packet.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>

#define RING_DATA (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll)) /* frame data offset in a slot */

struct ovl_ring {
    int fd;          /* -1: no ring here */
    uint8_t *map;    /* the mapped ring */
    size_t map_len;
    uint32_t block_size, frame_size, per_block, frame_nr;
    uint32_t max_len; /* largest Ethernet frame the device takes (MTU + 14) */
    uint32_t next;    /* the slot the next packet goes to */
    uint32_t dirty;   /* slots marked for sending since the last successful send() */
};

struct ovl_nexthop {
    int16_t ring; /* -1: none (raw socket) */
    uint8_t eth[ETH_HLEN];
};

struct ovl_rings {
    struct ovl_ring ring[OVL_RING_MAX];
    struct ovl_nexthop nh[OVL_MAX_REMOTES];
    uint64_t stats[OVL_RING_STAT_COUNT];
    uint32_t n_ring; /* rings mapped */
};

static struct ovl_rings *rings_get(struct ovl_dp *dp) {
    if (dp->rings)
        return dp->rings;
    struct ovl_rings *rs = calloc(1, sizeof(*rs));
    if (!rs)
        return NULL;
    for (uint32_t i = 0; i < OVL_RING_MAX; i++)
        rs->ring[i].fd = -1;
    for (uint32_t r = 0; r < OVL_MAX_REMOTES; r++)
        rs->nh[r].ring = -1;
    return dp->rings = rs;
}

static void ring_unmap(struct ovl_ring *g) {
    if (g->map)
        munmap(g->map, g->map_len);
    memset(g, 0, sizeof(*g));
    g->fd = -1;
}

void rings_free(struct ovl_rings *rs) {
    if (!rs)
        return;
    for (uint32_t i = 0; i < OVL_RING_MAX; i++)
        ring_unmap(&rs->ring[i]);
    free(rs);
}

void ring_forget_remote(struct ovl_dp *dp, uint32_t r) {
    if (dp->rings && r < OVL_MAX_REMOTES)
        dp->rings->nh[r].ring = -1;
}

int ovl_dp_enable_tx_rings(struct ovl_dp *dp) { return rings_get(dp) ? 0 : -ENOMEM; }

int ovl_dp_set_tx_ring(struct ovl_dp *dp, uint32_t i, int fd, uint32_t block_size, uint32_t block_nr,
                       uint32_t frame_size, uint32_t max_len) {
    if (i >= OVL_RING_MAX || fd < 0 || !block_nr || frame_size < RING_DATA + ETH_HLEN || frame_size % 16 ||
        block_size < frame_size || max_len < ETH_HLEN + IPV4_HLEN)
        return -EINVAL;
    struct ovl_rings *rs = rings_get(dp);
    if (!rs)
        return -ENOMEM;
    struct ovl_ring *g = &rs->ring[i];
    if (g->fd >= 0)
        return -EBUSY;
    size_t len = (size_t)block_size * block_nr;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED)
        return -errno;
    g->fd = fd;
    g->map = map;
    g->map_len = len;
    g->block_size = block_size;
    g->frame_size = frame_size;
    g->per_block = block_size / frame_size;
    g->frame_nr = g->per_block * block_nr;
    g->max_len = max_len < frame_size - RING_DATA ? max_len : frame_size - (uint32_t)RING_DATA;
    g->next = 0;
    rs->n_ring++;
    return 0;
}

int ovl_dp_clear_tx_ring(struct ovl_dp *dp, uint32_t i) {
    struct ovl_rings *rs = dp->rings;
    if (i >= OVL_RING_MAX || !rs || rs->ring[i].fd < 0)
        return -1;
    for (uint32_t r = 0; r < OVL_MAX_REMOTES; r++)
        if (rs->nh[r].ring == (int16_t)i)
            rs->nh[r].ring = -1;
    ring_unmap(&rs->ring[i]);
    rs->n_ring--;
    return 0;
}

int ovl_dp_set_nexthop(struct ovl_dp *dp, uint32_t r, int32_t ring, const uint8_t *dst, const uint8_t *src) {
    if (r >= dp->cfg.n_remotes || !dp->cfg.remote_used[r])
        return -1;
    if (ring < 0) {
        ring_forget_remote(dp, r);
        return 0;
    }
    struct ovl_rings *rs = dp->rings;
    if (ring >= OVL_RING_MAX || !rs || rs->ring[ring].fd < 0 || dp->cfg.remote_v6[r]) /* (v6: IPv4 rings only) */
        return -1;
    struct ovl_nexthop *nh = &rs->nh[r];
    memcpy(nh->eth, dst, ETH_ALEN);
    memcpy(nh->eth + ETH_ALEN, src, ETH_ALEN);
    put16(nh->eth + 2 * ETH_ALEN, ETH_P_IP);
    nh->ring = (int16_t)ring;
    return 0;
}

uint32_t ovl_dp_ring_counters(const struct ovl_dp *dp, uint64_t *out, uint32_t n) {
    uint32_t k = n < OVL_RING_STAT_COUNT ? n : OVL_RING_STAT_COUNT;
    for (uint32_t i = 0; i < k; i++)
        out[i] = dp->rings ? dp->rings->stats[i] : 0;
    return k;
}

/* The Ethernet frame of packet o behind header eth into out (cap bytes); its length, or 0 if it
 * does not fit. */
static uint32_t ring_build(const struct ovl_dp *dp, const struct tx_out *o, const uint8_t *eth, uint8_t *out,
                           uint32_t cap) {
    uint32_t flen = dp->tx_len[o->frame], len = ETH_HLEN + o->hdr_len + flen;
    if (len > cap)
        return 0;
    memcpy(out, eth, ETH_HLEN);
    memcpy(out + ETH_HLEN, o->hdr, o->hdr_len);
    memcpy(out + ETH_HLEN + o->hdr_len, dp->tx_data[o->frame], flen);
    return len;
}

int ovl_tx_ring_frame(const struct ovl_dp *dp, uint32_t m, uint32_t *remote, uint8_t *out, uint32_t cap) {
    if (m >= dp->n_out)
        return -1;
    const struct tx_out *o = &dp->tx_out[m];
    *remote = o->remote;
    const struct ovl_nexthop *nh = dp->rings ? &dp->rings->nh[o->remote] : NULL;
    if (!nh || nh->ring < 0)
        return 0;
    uint32_t max = dp->rings->ring[nh->ring].max_len;
    return (int)ring_build(dp, o, nh->eth, out, cap < max ? cap : max);
}

static struct tpacket2_hdr *slot(const struct ovl_ring *g, uint32_t i) {
    return (struct tpacket2_hdr *)(g->map + (size_t)(i / g->per_block) * g->block_size +
                                   (size_t)(i % g->per_block) * g->frame_size);
}

void ip4_ident(struct ovl_dp *dp, uint8_t *h, uint32_t n) {
    if (h[0] >> 4 != 4 || (get16(h + 6) & IP_DF))
        return;
    put16(h + 4, dp->ip_id); /* the fragments' counter (pmtu.c tx_copy): one id space */
    put16(h + 10, 0);
    put16(h + 10, fold(sum16(h, IPV4_HLEN)));
    dp->ip_id = (uint16_t)(dp->ip_id + (n ? n : 1));
    if (!dp->ip_id)
        dp->ip_id = 1;
}

/* 1: packet o is the ring's (queued, or dropped as tx_full); 0: it goes the raw way. */
int ring_put(struct ovl_dp *dp, const struct tx_out *o) {
    struct ovl_rings *rs = dp->rings;
    if (!rs)
        return 0;
    const struct ovl_nexthop *nh = &rs->nh[o->remote];
    if (nh->ring < 0) {
        if (!dp->cfg.remote_v6[o->remote]) /* issue 11, v6: IPv4 rings only; IPv6 remotes are no fallback */
            rs->stats[OVL_RING_FALLBACK]++;
        return 0;
    }
    struct ovl_ring *g = &rs->ring[nh->ring];
    struct tpacket2_hdr *h = slot(g, g->next);
    if (__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) != TP_STATUS_AVAILABLE) {
        rs->stats[OVL_RING_FULL]++;
        count_drop(dp, OVL_DROP_TX_FULL);
        return 1;
    }
    uint32_t len = ring_build(dp, o, nh->eth, (uint8_t *)h + RING_DATA, g->max_len);
    if (!len) { /* larger than the device takes: the raw socket says why (EMSGSIZE) */
        rs->stats[OVL_RING_FALLBACK]++;
        return 0;
    }
    ip4_ident(dp, (uint8_t *)h + RING_DATA + ETH_HLEN, 1); /* without DF: an IP id, as the raw socket's */
    h->tp_len = len;
    __atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
    g->next = g->next + 1 == g->frame_nr ? 0 : g->next + 1;
    g->dirty++;
    rs->stats[OVL_RING_TX]++;
    dp->remotes[o->remote][OVL_REMOTE_TX_PACKETS]++;
    dp->remotes[o->remote][OVL_REMOTE_TX_BYTES] += dp->tx_len[o->frame];
    return 1;
}

void ring_flush(struct ovl_dp *dp) {
    struct ovl_rings *rs = dp->rings;
    if (!rs)
        return;
    for (uint32_t i = 0; i < OVL_RING_MAX; i++) {
        struct ovl_ring *g = &rs->ring[i];
        if (g->fd < 0 || !g->dirty)
            continue;
        ssize_t w;
        do
            w = send(g->fd, NULL, 0, MSG_DONTWAIT);
        while (w < 0 && errno == EINTR);
        rs->stats[OVL_RING_SENDS]++;
        if (w >= 0) {
            g->dirty = 0;
            continue;
        }
        /* The slot the kernel stopped at stays marked (SEND_REQUEST) and goes with the
         * next send(); the device queue or the send buffer was full. Anything else: counted. */
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != ENOBUFS)
            rs->stats[OVL_RING_SEND_ERRORS]++;
    }
}

uint32_t ring_send(struct ovl_dp *dp, uint32_t k) {
    if (!dp->rings)
        return k;
    uint32_t left = 0;
    for (uint32_t m = 0; m < k; m++)
        if (!ring_put(dp, &dp->tx_out[m]))
            dp->tx_out[left++] = dp->tx_out[m];
    ring_flush(dp);
    return left;
}
