/* pmtu.c (issue 11, pmtu part): path MTU towards the inner sender, per-remote path MTU,
 * outer fragmentation of inner IPv4 without DF.
 *
 *   - tx_copy: the one too-big check (does a copy of TX ring entry i fit remote r's path MTU?),
 *     and what happens to a copy that does not: inner IPv4 without DF is queued to leave in
 *     outer IPv4 fragments unless --df set (cfg.df); anything else is the caller's drop.
 *   - pmtu_too_big: the drop (tx_too_big) and, as the kernel's skb_tunnel_check_pmtu does for
 *     a bridged tunnel (net/ipv4/ip_tunnel_core.c, Linux 5.9+), an ICMP "fragmentation needed"
 *     (inner IPv4 with DF) or ICMPv6 "packet too big" (inner IPv6) for the inner sender,
 *     built by the pure step ovl_pmtu_reply, rate-limited by a token bucket, queued and written
 *     to the TAP after the batch (pmtu_flush), with a zeroed virtio header when the TAP has one.
 *     A TCP super-frame cut into segments gets one reply, not one per segment (pmtu_origin).
 *   - the fragments (ovl_ip4_fragment, pure; pmtu_send_frags, the syscalls) go through the
 *     raw IPv4 socket (IP_HDRINCL): each fits the path, so the kernel takes it.
 *
 * The reference is datapath/pmtu.py; tests/diff/test_pmtu.py holds both against scapy. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* ICMP (RFC 792), ICMPv6 (RFC 4443), the kernel's limits (include/linux/icmp.h, net/ipv6). */
#define ICMP_HLEN 8
#define ICMP_DEST_UNREACH 3
#define ICMP_SOURCE_QUENCH 4
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12
#define ICMP_FRAG_NEEDED 4             /* code of DEST_UNREACH */
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_INFOMSG_MASK 0x80       /* types below 128 are errors */
#define NDISC_REDIRECT 137
#define IPPROTO_ICMPV6_ 58
#define IPV4_REPLY_MIN_MTU 576         /* RFC 1122: iptunnel_pmtud_check_icmp replies only from here on */
#define IPV6_MIN_MTU 1280              /* RFC 8200 */
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
/* IPv6 extension headers ipv6_skip_exthdr walks (include/net/ipv6.h). */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_NONE 59
#define NEXTHDR_DEST 60

#define REPLY_ROOM (VNET_HDR_MAX + ETH_HLEN + 3 * VLAN_HLEN + IPV6_MIN_MTU)
#define REPLY_QUEUE 16 /* replies per TAP batch; more are counted as limited */
#define FRAG_QUEUE 256 /* copies queued for fragmentation per ovl_tx_process; more are too big */
#define FRAG_MIN_MTU 576 /* paths below this are not fragmented for (RFC 791: every host takes 576) */
#define FRAG_MAX 128     /* fragments of one outer packet: 65,535 bytes over a 576-byte path */
#define FRAG_BUF (0x10000 + FRAG_MAX * IPV4_HLEN)

struct frag_job {
    uint32_t frame, remote;
    uint16_t hdr_len, id;
    uint8_t hdr[OVL_MAX_OUTER];
};

struct ovl_pmtu {
    uint32_t mtu[OVL_MAX_REMOTES]; /* 0: cfg.underlay_mtu */
    double rate, burst, tokens, last;
    uint32_t started;
    uint32_t n_reply;
    uint16_t reply_len[REPLY_QUEUE];
    uint8_t reply[REPLY_QUEUE][REPLY_ROOM];
    /* one reply per TAP read: TX ring entry -> TAP read it was cut from (ovl_from_tap only) */
    uint32_t origin[OVL_MAX_BATCH];
    uint64_t tx_calls, mark_call, gen, last_origin;
    uint32_t n_frag;
    struct frag_job frag[FRAG_QUEUE];
    uint8_t fbuf[FRAG_BUF]; /* the fragments of one job, one after the other */
};

/* ---- the pure steps ---- */

static int v4_reply_due(const uint8_t *ip, size_t n, uint32_t ihl) {
    uint32_t src = get32(ip + 12), dst = get32(ip + 16);
    if (get16(ip + 6) != IP_DF) /* DF, and no fragment */
        return 0;
    if (dst == 0xFFFFFFFF || (dst >> 28) == 0xE)
        return 0;
    if ((src >> 24) == 0 || (src >> 24) == 127 || src == 0xFFFFFFFF || (src >> 28) == 0xE)
        return 0;
    if (ip[9] == IPPROTO_ICMP) {
        if (n < ihl + 1)
            return 0;
        uint8_t t = ip[ihl];
        if (t == ICMP_DEST_UNREACH || t == ICMP_SOURCE_QUENCH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETERPROB)
            return 0;
    }
    return 1;
}

static int v6_reply_due(const uint8_t *ip, size_t n) {
    static const uint8_t any[16], loop[16] = {[15] = 1};
    const uint8_t *src = ip + 8;
    if (!memcmp(src, any, 16) || !memcmp(src, loop, 16) || src[0] == 0xFF)
        return 0;
    uint8_t nh = ip[6];
    size_t off = IPV6_HLEN;
    for (;;) { /* ipv6_skip_exthdr */
        if (nh == NEXTHDR_NONE)
            return 0;
        if (nh != NEXTHDR_HOP && nh != NEXTHDR_ROUTING && nh != NEXTHDR_FRAGMENT && nh != NEXTHDR_AUTH &&
            nh != NEXTHDR_DEST)
            break;
        if (n < off + 8)
            return 0;
        size_t hl;
        if (nh == NEXTHDR_FRAGMENT) {
            if (get16(ip + off + 2) & ~7u) /* not the first fragment */
                return 0;
            hl = 8;
        } else if (nh == NEXTHDR_AUTH) {
            hl = ((size_t)ip[off + 1] + 2) * 4;
        } else {
            hl = ((size_t)ip[off + 1] + 1) * 8;
        }
        nh = ip[off];
        off += hl;
    }
    if (nh == IPPROTO_ICMPV6_) {
        if (n < off + 1)
            return 0;
        if (!(ip[off] & ICMPV6_INFOMSG_MASK) || ip[off] == NDISC_REDIRECT)
            return 0;
    }
    return 1;
}

int ovl_pmtu_reply(const uint8_t *f, size_t len, int32_t tci, uint32_t mtu, uint8_t *out, size_t cap) {
    uint16_t type = 0;
    uint32_t l3 = l3_offset(f, len, &type);
    if (!l3)
        return 0;
    const uint8_t *ip = f + l3;
    size_t n = len - l3;
    uint32_t eth = l3 + (tci >= 0 ? VLAN_HLEN : 0), ihl = 0;
    size_t quote;
    if (type == ETH_P_IP) {
        if (n < IPV4_HLEN || ip[0] >> 4 != 4 || (ihl = (uint32_t)(ip[0] & 0x0F) * 4) < IPV4_HLEN || n < ihl)
            return 0;
        if (mtu < IPV4_REPLY_MIN_MTU || !v4_reply_due(ip, n, ihl))
            return 0;
        quote = IPV4_REPLY_MIN_MTU - IPV4_HLEN - ICMP_HLEN;
    } else if (type == ETH_P_IPV6) {
        if (n < IPV6_HLEN || ip[0] >> 4 != 6)
            return 0;
        if (mtu < IPV6_MIN_MTU || !v6_reply_due(ip, n))
            return 0;
        quote = IPV6_MIN_MTU - IPV6_HLEN - ICMP_HLEN;
    } else {
        return 0;
    }
    if (quote > n)
        quote = n;
    uint32_t iph = type == ETH_P_IP ? IPV4_HLEN : IPV6_HLEN;
    size_t total = eth + iph + ICMP_HLEN + quote;
    if (total > cap)
        return -1;
    /* Ethernet: back from where the frame went, the tags it came with */
    memcpy(out, f + ETH_ALEN, ETH_ALEN);
    memcpy(out + ETH_ALEN, f, ETH_ALEN);
    uint8_t *p = out + 2 * ETH_ALEN;
    if (tci >= 0) {
        put16(p, ETH_P_8021Q);
        put16(p + 2, (uint32_t)tci);
        p += VLAN_HLEN;
    }
    memcpy(p, f + 2 * ETH_ALEN, l3 - 2 * ETH_ALEN);
    uint8_t *nip = out + eth, *icmp = nip + iph;
    memcpy(icmp + ICMP_HLEN, ip, quote);
    uint32_t icmp_len = (uint32_t)(ICMP_HLEN + quote);
    if (type == ETH_P_IP) {
        memset(nip, 0, IPV4_HLEN);
        nip[0] = 0x45;
        put16(nip + 2, IPV4_HLEN + icmp_len);
        put16(nip + 6, IP_DF);
        nip[8] = ip[8]; /* the TTL of the packet answered */
        nip[9] = IPPROTO_ICMP;
        memcpy(nip + 12, ip + 16, 4);
        memcpy(nip + 16, ip + 12, 4);
        put16(nip + 10, fold(sum16(nip, IPV4_HLEN)));
        icmp[0] = ICMP_DEST_UNREACH;
        icmp[1] = ICMP_FRAG_NEEDED;
        put16(icmp + 2, 0);
        put16(icmp + 4, 0);
        put16(icmp + 6, mtu > 0xFFFF ? 0xFFFF : mtu);
        put16(icmp + 2, fold(sum16(icmp, icmp_len)));
    } else {
        memset(nip, 0, IPV6_HLEN);
        nip[0] = 0x60;
        put16(nip + 4, icmp_len);
        nip[6] = IPPROTO_ICMPV6_;
        nip[7] = ip[7]; /* the hop limit of the packet answered */
        memcpy(nip + 8, ip + 24, 16);
        memcpy(nip + 24, ip + 8, 16);
        icmp[0] = ICMPV6_PKT_TOOBIG;
        icmp[1] = 0;
        put16(icmp + 2, 0);
        put32(icmp + 4, mtu);
        uint64_t pseudo = sum16(nip + 8, 32) + icmp_len + IPPROTO_ICMPV6_;
        put16(icmp + 2, fold(pseudo + sum16(icmp, icmp_len)));
    }
    return (int)total;
}

int ovl_ip4_fragment(const uint8_t *pkt, size_t len, uint32_t mtu, uint32_t id, uint32_t k, uint8_t *out,
                     size_t cap) {
    if (len < IPV4_HLEN || (pkt[0] & 0x0F) != 5 || mtu < IPV4_HLEN + 8)
        return -1; /* our own outer headers only: no options */
    size_t chunk = ((mtu - IPV4_HLEN) / 8) * 8, payload = len - IPV4_HLEN, off = (size_t)k * chunk;
    if (off >= payload)
        return 0;
    size_t plen = payload - off < chunk ? payload - off : chunk;
    if (IPV4_HLEN + plen > cap || off / 8 > IP_OFFSET)
        return -1;
    memcpy(out, pkt, IPV4_HLEN);
    memcpy(out + IPV4_HLEN, pkt + IPV4_HLEN + off, plen);
    put16(out + 2, (uint32_t)(IPV4_HLEN + plen));
    put16(out + 4, id);
    put16(out + 6, (uint32_t)(off / 8) | (off + plen < payload ? IP_MF : 0));
    put16(out + 10, 0);
    put16(out + 10, fold(sum16(out, IPV4_HLEN)));
    return (int)(IPV4_HLEN + plen);
}

/* ---- the context's state ---- */

int pmtu_new(struct ovl_dp *dp) {
    dp->pm = calloc(1, sizeof(*dp->pm));
    if (!dp->pm)
        return -1;
    dp->pm->rate = OVL_PMTU_RATE;
    dp->pm->burst = OVL_PMTU_BURST;
    dp->ip_id = 1;
    return 0;
}

void pmtu_free(struct ovl_pmtu *pm) { free(pm); }

void pmtu_forget(struct ovl_dp *dp, uint32_t r) { dp->pm->mtu[r] = 0; }

int ovl_dp_set_remote_mtu(struct ovl_dp *dp, uint32_t r, uint32_t mtu) {
    if (r >= dp->cfg.n_remotes || !dp->cfg.remote_used[r] || (mtu && (mtu < OVL_PMTU_MIN_MTU || mtu > 0xFFFF)))
        return -1;
    dp->pm->mtu[r] = mtu;
    return 0;
}

uint32_t ovl_dp_remote_mtu(const struct ovl_dp *dp, uint32_t r) {
    if (r >= dp->cfg.n_remotes || !dp->cfg.remote_used[r])
        return 0;
    return dp->pm->mtu[r] ? dp->pm->mtu[r] : dp->cfg.underlay_mtu;
}

int ovl_dp_set_pmtu_rate(struct ovl_dp *dp, double rate, double burst) {
    if (!(rate >= 0 && rate <= 1e6) || !(burst >= 1 && burst <= 1e6))
        return -1;
    dp->pm->rate = rate;
    dp->pm->burst = burst;
    dp->pm->started = 0;
    return 0;
}

/* The path MTU towards remote r (r < 0: the configured underlay MTU). */
static uint32_t path_mtu(const struct ovl_dp *dp, int32_t r) {
    return r >= 0 && dp->pm->mtu[r] ? dp->pm->mtu[r] : dp->cfg.underlay_mtu;
}

int tx_fits(const struct ovl_dp *dp, int32_t r, uint32_t keyed, uint32_t len) {
    uint32_t outer = r >= 0 ? remote_outer_len(dp, (uint32_t)r, keyed) : dp->cfg.ops->outer_len(keyed);
    return outer + (uint64_t)len <= path_mtu(dp, r);
}

/* Inner IPv4 without DF (a fragment or not), that --df lets leave in outer fragments. */
static int may_fragment(const struct ovl_config *c, const uint8_t *f, uint32_t len) {
    uint16_t type = 0;
    uint32_t l3 = l3_offset(f, len, &type);
    return c->df != OVL_DF_SET && l3 && type == ETH_P_IP && len >= l3 + IPV4_HLEN && f[l3] >> 4 == 4 &&
           !(get16(f + l3 + 6) & IP_DF);
}

int tx_copy(struct ovl_dp *dp, uint32_t i, uint32_t r, const struct tx_frame *tf, uint32_t *room) {
    const struct ovl_config *c = &dp->cfg;
    /* remote_outer_len (ipv6.c): an outer IPv6 header is 20 bytes longer */
    uint32_t len = dp->tx_len[i], outer = remote_outer_len(dp, r, tf->t.keyed), mtu = path_mtu(dp, (int32_t)r);
    if (outer + (uint64_t)len <= mtu) /* tx_fits, with what the rest needs at hand */
        return 1;
    struct ovl_pmtu *pm = dp->pm;
    /* outer fragments are IPv4 ones (IPv6 has no DF to clear: an IPv6 remote's copy is answered instead) */
    if (!c->remote_v6[r] && may_fragment(c, dp->tx_data[i], len) && outer + (uint64_t)len <= 0xFFFF && pm->n_frag < FRAG_QUEUE &&
        mtu >= FRAG_MIN_MTU) {
        struct frag_job *j = &pm->frag[pm->n_frag++];
        j->frame = i;
        j->remote = r;
        j->hdr_len = (uint16_t)outer_push(c, &dp->outer[r], tf, len, j->hdr);
        ecn_outer(c, j->hdr, dp->tx_data[i], len); /* ecn.c: DS field, TTL (DF clear: may_fragment) */
        j->id = dp->ip_id;
        dp->ip_id = (uint16_t)(dp->ip_id + 1) ? (uint16_t)(dp->ip_id + 1) : 1; /* never 0: the kernel would pick one */
        dp->stats[OVL_STAT_TX_FRAGMENTED]++;
        return 2;
    }
    uint32_t usable = mtu > outer ? mtu - outer : 0;
    if (usable < *room)
        *room = usable;
    return 0;
}

void pmtu_origin(struct ovl_dp *dp, uint32_t m, uint32_t k, uint32_t frame) {
    struct ovl_pmtu *pm = dp->pm;
    pm->mark_call = pm->tx_calls + 1; /* the marks hold for the ovl_tx_process that follows */
    for (uint32_t j = m; j < m + k && j < OVL_MAX_BATCH; j++)
        pm->origin[j] = frame;
}

void pmtu_tx_begin(struct ovl_dp *dp) {
    dp->pm->tx_calls++;
    dp->pm->n_frag = 0;
}

void pmtu_begin(struct ovl_dp *dp) {
    dp->pm->gen++;
    dp->pm->n_reply = 0;
}

/* Token bucket: 1 if a reply may go now. */
static int pmtu_allow(struct ovl_pmtu *pm, double now) {
    if (pm->rate <= 0)
        return 0;
    if (!pm->started) {
        pm->started = 1;
        pm->tokens = pm->burst;
    } else if (now > pm->last) {
        pm->tokens += (now - pm->last) * pm->rate;
        if (pm->tokens > pm->burst)
            pm->tokens = pm->burst;
    }
    pm->last = now;
    if (pm->tokens < 1)
        return 0;
    pm->tokens -= 1;
    return 1;
}

void pmtu_too_big(struct ovl_dp *dp, uint32_t i, int32_t tci, uint32_t room, double now) {
    struct ovl_pmtu *pm = dp->pm;
    count_drop(dp, OVL_DROP_TX_TOO_BIG);
    if (pm->mark_call == pm->tx_calls && i < OVL_MAX_BATCH) { /* a segment of a super-frame */
        uint64_t origin = pm->gen << 32 | pm->origin[i];
        if (origin == pm->last_origin)
            return; /* its super-frame was answered (or limited) already */
        pm->last_origin = origin;
    }
    const uint8_t *f = dp->tx_data[i];
    uint32_t len = dp->tx_len[i];
    uint16_t type = 0;
    uint32_t l3 = l3_offset(f, len, &type);
    if (!l3 || room <= l3)
        return;
    uint32_t vlen = dp->cfg.vnet_hdr_len;
    uint8_t scratch[REPLY_ROOM];
    uint8_t *slot = pm->n_reply < REPLY_QUEUE ? pm->reply[pm->n_reply] : scratch;
    int n = ovl_pmtu_reply(f, len, tci, room - l3, slot + vlen, REPLY_ROOM - vlen);
    if (n <= 0)
        return; /* no reply is due (or none fits: cannot happen with REPLY_ROOM) */
    if (pm->n_reply >= REPLY_QUEUE || !pmtu_allow(pm, now)) {
        dp->stats[OVL_STAT_TX_PMTU_LIMITED]++;
        return;
    }
    memset(slot, 0, vlen); /* a plain frame: no offload asked of the TAP */
    pm->reply_len[pm->n_reply++] = (uint16_t)(vlen + (uint32_t)n);
    dp->stats[OVL_STAT_TX_PMTU_ICMP]++;
}

void pmtu_flush(struct ovl_dp *dp, int tap_fd) {
    struct ovl_pmtu *pm = dp->pm;
    for (uint32_t q = 0; q < pm->n_reply; q++) {
        ssize_t w;
        do
            w = write(tap_fd, pm->reply[q], pm->reply_len[q]);
        while (w < 0 && errno == EINTR);
        if (w < 0)
            count_drop(dp, OVL_DROP_RX_TAP_ERROR);
    }
    pm->n_reply = 0;
}

int ovl_dp_pmtu_reply(const struct ovl_dp *dp, uint32_t q, uint8_t *out, uint32_t cap) {
    const struct ovl_pmtu *pm = dp->pm;
    if (q >= pm->n_reply)
        return -1;
    uint32_t len = pm->reply_len[q];
    if (len <= cap)
        memcpy(out, pm->reply[q], len);
    return (int)len;
}

void ovl_dp_pmtu_clear(struct ovl_dp *dp) { dp->pm->n_reply = 0; }

/* Fragment k of queued job q into out (cap bytes, at least the path MTU): the whole outer packet is
 * job header + frame. Its length, 0 past the last, -1 on a bad job. */
static int job_fragment(const struct ovl_dp *dp, const struct frag_job *j, uint32_t k, uint8_t *out, size_t cap) {
    uint32_t mtu = path_mtu(dp, (int32_t)j->remote), flen = dp->tx_len[j->frame];
    const uint8_t *f = dp->tx_data[j->frame];
    size_t chunk = ((mtu - IPV4_HLEN) / 8) * 8, payload = (size_t)j->hdr_len - IPV4_HLEN + flen,
           off = (size_t)k * chunk;
    if (off >= payload)
        return 0;
    size_t plen = payload - off < chunk ? payload - off : chunk;
    if (IPV4_HLEN + plen > cap)
        return -1;
    memcpy(out, j->hdr, IPV4_HLEN);
    /* payload bytes [off, off + plen) of (rest of the outer header, frame) */
    size_t hrest = (size_t)j->hdr_len - IPV4_HLEN, at = IPV4_HLEN, from = off, left = plen;
    if (from < hrest) {
        size_t h = hrest - from < left ? hrest - from : left;
        memcpy(out + at, j->hdr + IPV4_HLEN + from, h);
        at += h;
        from += h;
        left -= h;
    }
    memcpy(out + at, f + (from - hrest), left);
    put16(out + 2, (uint32_t)(IPV4_HLEN + plen));
    put16(out + 4, j->id);
    put16(out + 6, (uint32_t)(off / 8) | (off + plen < payload ? IP_MF : 0));
    put16(out + 10, 0);
    put16(out + 10, fold(sum16(out, IPV4_HLEN)));
    return (int)(IPV4_HLEN + plen);
}

int ovl_tx_fragment(const struct ovl_dp *dp, uint32_t q, uint32_t k, uint32_t *remote, uint8_t *out, uint32_t cap) {
    if (q >= dp->pm->n_frag)
        return -1;
    *remote = dp->pm->frag[q].remote;
    return job_fragment(dp, &dp->pm->frag[q], k, out, cap);
}

void pmtu_send_frags(struct ovl_dp *dp, int send_fd) {
    struct ovl_pmtu *pm = dp->pm;
    for (uint32_t q = 0; q < pm->n_frag; q++) {
        const struct frag_job *j = &pm->frag[q];
        struct mmsghdr msg[FRAG_MAX];
        struct iovec iov[FRAG_MAX];
        struct sockaddr_in dst;
        memset(&dst, 0, sizeof(dst));
        dst.sin_family = AF_INET;
        memcpy(&dst.sin_addr, dp->cfg.remote_addr[j->remote] + 12, 4); /* IPv4, stored mapped (ipv6.c) */
        uint32_t nf = 0;
        size_t at = 0;
        int n = 0;
        while (nf < FRAG_MAX && (n = job_fragment(dp, j, nf, pm->fbuf + at, FRAG_BUF - at)) > 0) {
            iov[nf].iov_base = pm->fbuf + at;
            iov[nf].iov_len = (size_t)n;
            at += (size_t)n;
            memset(&msg[nf], 0, sizeof(msg[nf]));
            msg[nf].msg_hdr.msg_name = &dst;
            msg[nf].msg_hdr.msg_namelen = sizeof(dst);
            msg[nf].msg_hdr.msg_iov = &iov[nf];
            msg[nf].msg_hdr.msg_iovlen = 1;
            nf++;
        }
        if (n != 0) { /* cannot happen: paths from FRAG_MIN_MTU, packets to 65,535 bytes */
            count_drop(dp, OVL_DROP_TX_TOO_BIG);
            continue;
        }
        uint32_t done = 0;
        int err = 0;
        while (done < nf) {
            int s = sendmmsg(send_fd, msg + done, nf - done, MSG_DONTWAIT);
            if (s < 0) {
                if (errno == EINTR)
                    continue;
                err = errno;
                break;
            }
            done += (uint32_t)s;
        }
        if (err) {
            count_drop(dp, err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS ? OVL_DROP_TX_FULL : OVL_DROP_TX_ERROR);
            continue;
        }
        dp->remotes[j->remote][OVL_REMOTE_TX_PACKETS]++;
        dp->remotes[j->remote][OVL_REMOTE_TX_BYTES] += dp->tx_len[j->frame];
    }
    pm->n_frag = 0;
}
