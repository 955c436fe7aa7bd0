/* io.c: the syscalls, and nothing else: TAP reads, sendmmsg and UDP GSO sendmsg of the
 * TX packets, recvmmsg with UDP GRO control messages, the TAP writes of the RX plan.
 * Each counts what the kernel accepted or refused. */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define UDP_GSO_MAX_SEGS 64     /* segments per UDP_SEGMENT send (the kernel's limit on older kernels) */
#define UDP_GSO_MAX_BYTES 65000 /* UDP payload per UDP_SEGMENT send (under 64 KiB with the headers) */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#define OVL_UDP_SEGMENT 103 /* <linux/udp.h> */
#define OVL_UDP_GRO 104
/* UDP_GRO's segment size; (issue 11, v6) IPV6_PKTINFO's destination of an IPv6 GRE packet; (ecn) IP_TOS /
 * IPV6_TCLASS. */
#define RX_CMSG (2 * CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct in6_pktinfo)))
#define ENCAP_HDR (IPV4_HLEN + UDP_HLEN) /* where a UDP encapsulation's own header starts */

struct ovl_io {
    struct mmsghdr *tx_msg;                     /* batch * tx_slots */
    struct iovec *tx_iov;                       /* 2 per tx message: outer header, inner frame */
    const struct tx_out **tx_out_of;            /* the packet of each tx message (batch * tx_slots) */
    struct iovec gso_iov[2 * UDP_GSO_MAX_SEGS]; /* one UDP_SEGMENT send */
    /* the UDP_SEGMENT size; ecn.c: IP_TOS, IP_TTL */
    _Alignas(struct cmsghdr) char gso_cmsg[CMSG_SPACE(sizeof(uint16_t)) + ECN_GSO_CMSG];
    struct mmsghdr *rx_msg; /* batch */
    struct iovec *rx_iov;
    struct sockaddr_in6 *rx_addr;                /* room for either family's source */
    char *rx_cmsg;                               /* batch * RX_CMSG bytes (udp_gro, IPv6 GRE) */
    union io_addr {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } dst[OVL_MAX_REMOTES];                      /* remote address, port 0 (raw socket) */
    struct sockaddr_in udp_dst[OVL_MAX_REMOTES]; /* remote address and port (UDP GSO sockets: IPv4 only) */
};

void io_free(struct ovl_io *io) {
    if (!io)
        return;
    free(io->tx_msg);
    free(io->tx_iov);
    free(io->tx_out_of);
    free(io->rx_msg);
    free(io->rx_iov);
    free(io->rx_addr);
    free(io->rx_cmsg);
    free(io);
}

int io_new(struct ovl_dp *dp) {
    const struct ovl_config *c = &dp->cfg;
    size_t nb = c->batch, nout = nb * dp->tx_slots;
    struct ovl_io *io = dp->io = calloc(1, sizeof(*dp->io));
    if (!io)
        return -1;
    io->tx_msg = calloc(nout, sizeof(*io->tx_msg));
    io->tx_iov = calloc(2 * nout, sizeof(*io->tx_iov));
    io->tx_out_of = calloc(nout, sizeof(*io->tx_out_of));
    io->rx_msg = calloc(nb, sizeof(*io->rx_msg));
    io->rx_iov = calloc(nb, sizeof(*io->rx_iov));
    io->rx_addr = calloc(nb, sizeof(*io->rx_addr));
    io->rx_cmsg = calloc(nb, RX_CMSG);
    if (!io->tx_msg || !io->tx_iov || !io->tx_out_of || !io->rx_msg || !io->rx_iov || !io->rx_addr || !io->rx_cmsg)
        return -1;
    for (uint32_t r = 0; r < c->n_remotes; r++)
        if (c->remote_used[r])
            io_set_remote(dp, r);
    return 0;
}

/* The destination addresses of remote slot r. */
void io_set_remote(struct ovl_dp *dp, uint32_t r) {
    struct ovl_io *io = dp->io;
    memset(&io->dst[r], 0, sizeof(io->dst[r]));
    memset(&io->udp_dst[r], 0, sizeof(io->udp_dst[r]));
    if (dp->cfg.remote_v6[r]) { /* port 0: a raw socket's sin6_port must be 0 or its protocol */
        io->dst[r].v6.sin6_family = AF_INET6;
        memcpy(&io->dst[r].v6.sin6_addr, dp->cfg.remote_addr[r], OVL_ADDR_LEN);
        return;
    }
    io->dst[r].v4.sin_family = AF_INET;
    memcpy(&io->dst[r].v4.sin_addr, dp->cfg.remote_addr[r] + 12, 4);
    io->udp_dst[r] = io->dst[r].v4;
    io->udp_dst[r].sin_port = htons((uint16_t)dp->cfg.port);
}

/* The TX messages for batch * slots packets (remotes.c grows the rings); -1 if memory is short. */
int io_grow_tx(struct ovl_dp *dp, uint32_t slots) {
    struct ovl_io *io = dp->io;
    size_t nout = (size_t)dp->cfg.batch * slots;
    struct mmsghdr *msg = realloc(io->tx_msg, nout * sizeof(*msg));
    if (!msg)
        return -1;
    io->tx_msg = msg;
    struct iovec *iov = realloc(io->tx_iov, 2 * nout * sizeof(*iov));
    if (!iov)
        return -1;
    io->tx_iov = iov;
    const struct tx_out **of = realloc(io->tx_out_of, nout * sizeof(*of));
    if (!of)
        return -1;
    io->tx_out_of = of;
    return 0;
}

static int again(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

/* Sends never wait (MSG_DONTWAIT): a full socket buffer (EAGAIN) or device queue (ENOBUFS)
 * is back-pressure, counted as tx_full; anything else the kernel refuses is tx_error. */
static int send_drop_reason(int err) { return again(err) || err == ENOBUFS ? OVL_DROP_TX_FULL : OVL_DROP_TX_ERROR; }

/* ---- TAP -> underlay ---- */

/* Read up to a batch from the (non-blocking) TAP into tx_buf: the TX ring (plain TAP), or
 * tap_data / tap_len (virtio header). Returns frames read; an error other than "nothing
 * more to read" ends the batch and is left in dp->io_errno. */
uint32_t io_tap_read(struct ovl_dp *dp, int tap_fd) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t n = 0;
    while (n < c->batch) {
        uint8_t *slot = dp->tx_buf + (size_t)n * dp->tap_slot;
        /* slot_size exceeds underlay_mtu, so a frame that fills the slot,
         * even cut short, is too big anyway and gets dropped as such. */
        ssize_t got = read(tap_fd, slot, dp->tap_slot);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (!again(errno))
                dp->io_errno = errno;
            break;
        }
        (c->vnet_hdr_len ? dp->tap_data : dp->tx_data)[n] = slot;
        (c->vnet_hdr_len ? dp->tap_len : dp->tx_len)[n] = (uint32_t)got;
        n++;
    }
    return n;
}

static void sent(struct ovl_dp *dp, const struct tx_out *o) {
    dp->remotes[o->remote][OVL_REMOTE_TX_PACKETS]++;
    dp->remotes[o->remote][OVL_REMOTE_TX_BYTES] += dp->tx_len[o->frame];
}

/* UDP encapsulations through the UDP sockets of dp->gso_fd (UDP_SEGMENT): runs of packets to
 * the same remote, with the same encapsulation header, from the same socket (picked by the
 * flow's source port) and of one size (the last may be shorter) leave in one sendmsg, which
 * the kernel cuts into datagrams. The kernel builds the outer IPv4 and UDP headers (with a
 * UDP checksum: it refuses GSO without); the encapsulation header is the one outer_push
 * built. Returns the number of packets from m handled; 0 if the kernel cannot do it (then
 * dp->gso_off). */
static uint32_t send_gso_run(struct ovl_dp *dp, uint32_t m, uint32_t k) {
    struct ovl_io *io = dp->io;
    const struct tx_out *o = &dp->tx_out[m];
    uint32_t ehl = o->hdr_len - ENCAP_HDR, seg = ehl + dp->tx_len[o->frame];
    uint32_t fd_i = get16(o->hdr + IPV4_HLEN) % dp->n_gso_fd;
    uint32_t j = m, total = 0;
    while (j < k && j - m < UDP_GSO_MAX_SEGS) {
        const struct tx_out *x = &dp->tx_out[j];
        uint32_t len = ehl + dp->tx_len[x->frame];
        if (j > m && (x->remote != o->remote || x->hdr_len != o->hdr_len || dp->cfg.remote_v6[x->remote] ||
                      get16(x->hdr + IPV4_HLEN) % dp->n_gso_fd != fd_i ||
                      memcmp(x->hdr + ENCAP_HDR, o->hdr + ENCAP_HDR, ehl) || len > seg ||
                      !ecn_same_outer(x->hdr, o->hdr) || /* ecn.c: one TOS / TTL / DF per send */
                      total + len > UDP_GSO_MAX_BYTES))
            break;
        struct iovec *iov = &io->gso_iov[2 * (j - m)];
        iov[0].iov_base = (void *)(x->hdr + ENCAP_HDR);
        iov[0].iov_len = ehl;
        iov[1].iov_base = dp->tx_data[x->frame];
        iov[1].iov_len = dp->tx_len[x->frame];
        total += len;
        j++;
        if (len < seg) /* a shorter one ends the run */
            break;
    }
    if (j - m == 1 && ring_put(dp, o)) /* a lone packet: the TX ring, if its remote has a next hop */
        return 1;
    ring_flush(dp); /* what the ring holds leaves first: the order stays */
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_name = &io->udp_dst[o->remote];
    msg.msg_namelen = sizeof(io->udp_dst[0]);
    msg.msg_iov = io->gso_iov;
    msg.msg_iovlen = 2 * (j - m);
    msg.msg_control = io->gso_cmsg;
    msg.msg_controllen = sizeof(io->gso_cmsg);
    size_t clen = 0;
    if (j - m > 1) {
        uint16_t size = (uint16_t)seg;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = OVL_UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(size));
        memcpy(CMSG_DATA(cm), &size, sizeof(size));
        clen = CMSG_SPACE(sizeof(size));
    }
    msg.msg_controllen = clen + ecn_gso_cmsg((uint8_t *)io->gso_cmsg + clen, o->hdr); /* ecn.c */
    ssize_t w;
    do
        w = sendmsg(dp->gso_fd[fd_i], &msg, MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno == EIO && j - m > 1) { /* the egress device cannot: plain sends from now on */
        dp->gso_off = 1;
        return 0;
    }
    int reason = w < 0 ? send_drop_reason(errno) : 0;
    for (uint32_t x = m; x < j; x++) {
        if (w < 0)
            count_drop(dp, reason);
        else
            sent(dp, &dp->tx_out[x]);
    }
    if (w >= 0 && j - m > 1)
        dp->stats[OVL_STAT_TX_GSO]++;
    return j - m;
}

static void send_raw(struct ovl_dp *dp, const struct tx_out *outs, uint32_t k, int send_fd);
static void send_msgs(struct ovl_dp *dp, uint32_t from, uint32_t to, int fd);

/* Send tx_out[0..k) with sendmmsg, outer header + inner frame of each as two iovecs (the
 * frame is never copied, also when flooded), or with UDP GSO. */
void io_send(struct ovl_dp *dp, uint32_t k, int send_fd) {
    pmtu_send_frags(dp, send_fd); /* copies too big for their path, in outer fragments (pmtu.c) */
    if (dp->n_gso_fd && !dp->gso_off && dp->cfg.ops->udp) {
        uint32_t m = 0, raw = 0;
        while (m < k) {
            /* the UDP GSO sockets are IPv4 (v6), a DF the socket cannot send (ecn.c): the raw sockets */
            if (dp->cfg.remote_v6[dp->tx_out[m].remote] || !ecn_gso_ok(&dp->cfg, dp->tx_out[m].hdr)) {
                dp->tx_out[raw++] = dp->tx_out[m++];
                continue;
            }
            uint32_t done = send_gso_run(dp, m, k);
            if (!done)
                break; /* GSO refused: the rest goes the plain way */
            m += done;
        }
        ring_flush(dp);
        if (m == k && !raw)
            return;
        memmove(dp->tx_out + raw, dp->tx_out + m, (k - m) * sizeof(*dp->tx_out));
        k = raw + k - m;
    }
    k = ring_send(dp, k); /* to remotes with a next hop: the TX rings (ring.c); the rest below */
    send_raw(dp, dp->tx_out, k, send_fd);
}

/* sendmmsg of outs[0..k) on the raw sockets: IPv4 remotes' packets on send_fd, then (issue 11, v6)
 * IPv6 remotes' on dp->send6_fd (none: dropped as tx_error). */
static void send_raw(struct ovl_dp *dp, const struct tx_out *outs, uint32_t k, int send_fd) {
    struct ovl_io *io = dp->io;
    uint32_t n4 = 0, n6 = 0;
    for (uint32_t m = 0; m < k; m++) {
        const struct tx_out *o = &outs[m];
        uint32_t v6 = dp->cfg.remote_v6[o->remote];
        if (v6 && dp->send6_fd < 0) {
            count_drop(dp, OVL_DROP_TX_ERROR);
            continue;
        }
        n6 += v6;
        n4 += !v6;
        /* IPv4 messages from the front of the arrays, IPv6 ones from the back (k of them at most). */
        uint32_t at = v6 ? k - n6 : n4 - 1;
        struct iovec *iov = &io->tx_iov[2 * at];
        iov[0].iov_base = (void *)o->hdr;
        iov[0].iov_len = o->hdr_len;
        iov[1].iov_base = dp->tx_data[o->frame];
        iov[1].iov_len = dp->tx_len[o->frame];
        memset(&io->tx_msg[at], 0, sizeof(io->tx_msg[at]));
        io->tx_msg[at].msg_hdr.msg_name = &io->dst[o->remote];
        io->tx_msg[at].msg_hdr.msg_namelen = v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        io->tx_msg[at].msg_hdr.msg_iov = iov;
        io->tx_msg[at].msg_hdr.msg_iovlen = 2;
        io->tx_out_of[at] = o;
    }
    send_msgs(dp, 0, n4, send_fd);
    /* The IPv6 ones stand in reverse order at the back: put them in order first. */
    for (uint32_t a = k - n6, b = k - 1; n6 > 1 && a < b; a++, b--) { /* (n6 > 1: b never wraps) */
        struct mmsghdr t = io->tx_msg[a];
        io->tx_msg[a] = io->tx_msg[b];
        io->tx_msg[b] = t;
        const struct tx_out *to = io->tx_out_of[a];
        io->tx_out_of[a] = io->tx_out_of[b];
        io->tx_out_of[b] = to;
    }
    send_msgs(dp, k - n6, k, dp->send6_fd);
}

/* sendmmsg of io->tx_msg[from..to) on fd, counted per packet (io->tx_out_of). */
static void send_msgs(struct ovl_dp *dp, uint32_t from, uint32_t to, int fd) {
    struct ovl_io *io = dp->io;
    /* sendmmsg stops at the first failing message and reports the messages
     * before it; the next call then returns that message's error. Count it
     * and go on with the one after; a full send buffer (EAGAIN) is the whole
     * socket's, so the rest of the batch is dropped with it rather than tried
     * one by one. */
    for (uint32_t m = from; m < to;) {
        int n = sendmmsg(fd, &io->tx_msg[m], to - m, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (again(errno)) {
                dp->drops[OVL_DROP_TX_FULL] += to - m;
                break;
            }
            count_drop(dp, send_drop_reason(errno));
            m++;
            continue;
        }
        for (int s = 0; s < n; s++, m++)
            sent(dp, io->tx_out_of[m]);
    }
}

/* ---- underlay -> TAP ---- */

/* UDP_GRO: the size of the datagrams coalesced in the buffer of h, or 0. */
static uint32_t gro_size(struct msghdr *h) {
    uint32_t gso = 0;
    if (h->msg_flags & MSG_CTRUNC)
        return 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == OVL_UDP_GRO && cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int v;
            memcpy(&v, CMSG_DATA(cm), sizeof(v));
            gso = v > 0 ? (uint32_t)v : 0;
        }
    }
    return gso;
}

/* The source of received message h as 16 bytes into src (IPv4 mapped; an unknown family: all
 * zero, which is no remote), its destination from IPV6_PKTINFO into dst; 1 if there was one. */
static int rx_addrs(struct msghdr *h, uint8_t *src, uint8_t *dst) {
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
    const struct sockaddr_in6 *a6 = h->msg_name;
    memset(src, 0, OVL_ADDR_LEN);
    memset(dst, 0, OVL_ADDR_LEN);
    if (h->msg_namelen >= sizeof(struct sockaddr_in6) && a6->sin6_family == AF_INET6) {
        memcpy(src, &a6->sin6_addr, OVL_ADDR_LEN);
    } else if (h->msg_namelen >= sizeof(struct sockaddr_in) && a6->sin6_family == AF_INET) {
        memcpy(src, mapped, sizeof(mapped));
        memcpy(src + 12, &((const struct sockaddr_in *)h->msg_name)->sin_addr, 4);
    }
    if (h->msg_flags & MSG_CTRUNC)
        return 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm)) {
        if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_PKTINFO &&
            cm->cmsg_len >= CMSG_LEN(sizeof(struct in6_pktinfo))) {
            struct in6_pktinfo pi;
            memcpy(&pi, CMSG_DATA(cm), sizeof(pi));
            memcpy(dst, &pi.ipi6_addr, OVL_ADDR_LEN);
            return 1;
        }
    }
    return 0;
}

/* recvmmsg up to a batch into rx_buf -> RX ring entries (a UDP_GRO buffer split into the
 * datagrams it holds); returns the entries. An error other than "no more data" is left in
 * dp->io_errno. */
uint32_t io_recv(struct ovl_dp *dp, int recv_fd) {
    const struct ovl_config *c = &dp->cfg;
    struct ovl_io *io = dp->io;
    for (uint32_t i = 0; i < c->batch; i++) {
        io->rx_iov[i].iov_base = dp->rx_buf + (size_t)i * dp->rx_slot;
        io->rx_iov[i].iov_len = dp->rx_slot;
        memset(&io->rx_msg[i], 0, sizeof(io->rx_msg[i]));
        io->rx_msg[i].msg_hdr.msg_name = &io->rx_addr[i];
        io->rx_msg[i].msg_hdr.msg_namelen = sizeof(io->rx_addr[i]);
        io->rx_msg[i].msg_hdr.msg_iov = &io->rx_iov[i];
        io->rx_msg[i].msg_hdr.msg_iovlen = 1;
        /* UDP_GRO sizes; IPV6_PKTINFO of an IPv6 GRE socket (issue 11, v6: it asks for it); ecn: the TOS */
        io->rx_msg[i].msg_hdr.msg_control = io->rx_cmsg + (size_t)i * RX_CMSG;
        io->rx_msg[i].msg_hdr.msg_controllen = RX_CMSG;
    }
    int got;
    do
        got = recvmmsg(recv_fd, io->rx_msg, c->batch, MSG_DONTWAIT, NULL);
    while (got < 0 && errno == EINTR);
    if (got < 0) {
        if (!again(errno))
            dp->io_errno = errno;
        return 0;
    }
    uint32_t n = 0;
    for (int i = 0; i < got; i++) {
        struct msghdr *h = &io->rx_msg[i].msg_hdr;
        uint8_t *data = io->rx_iov[i].iov_base;
        uint32_t len = io->rx_msg[i].msg_len;
        uint32_t truncated = (h->msg_flags & MSG_TRUNC) != 0;
        uint8_t src[OVL_ADDR_LEN], dst[OVL_ADDR_LEN];
        int has_dst = rx_addrs(h, src, dst);
        uint32_t gso = c->udp_gro ? gro_size(h) : 0;
        if (len > dp->rx_slot) /* never trust a length beyond the slot */
            len = dp->rx_slot;
        uint8_t tos = ecn_rx_tos(c, h, data, len); /* ecn.c; one for a GRO buffer (GRO merges equal TOS only) */
        if (gso && len > gso)
            dp->stats[OVL_STAT_RX_GRO]++;
        uint32_t off = 0;
        do { /* several datagrams of gso bytes (the last may be shorter) in one buffer */
            uint32_t piece = gso && len - off > gso ? gso : len - off;
            if (n == dp->rx_cap) { /* more datagrams than rx entries: the rest is lost */
                count_drop(dp, OVL_DROP_RX_TRUNCATED);
                break;
            }
            struct rx_entry *e = &dp->rx[n++];
            e->data = data + off;
            e->len = piece;
            /* A datagram bigger than a ring slot is too big for anything the underlay MTU
             * allows: dropped as truncated, unless super-packets are received whole (rx_super.c). */
            e->truncated = truncated || (piece > c->slot_size && !dp->sup);
            memcpy(e->src, src, OVL_ADDR_LEN);
            memcpy(e->dst, dst, OVL_ADDR_LEN);
            e->has_dst = (uint8_t)has_dst;
            e->tos = tos;
            off += piece;
        } while (off < len);
    }
    return n;
}

/* The writes of the RX plan (ovl_rx_plan) to the TAP, each counted when it is done. */
void io_tap_write(struct ovl_dp *dp, int tap_fd) {
    for (uint32_t i = 0; i < dp->n_wr; i++) {
        const struct tap_write *w = &dp->wr[i];
        const struct iovec *iov = &dp->wr_iov[w->iov];
        ssize_t n;
        if (w->segs > 1)
            dp->stats[OVL_STAT_TAP_TX_GSO]++;
        do
            n = w->iovcnt == 1 ? write(tap_fd, iov->iov_base, iov->iov_len) : writev(tap_fd, iov, (int)w->iovcnt);
        while (n < 0 && errno == EINTR);
        if (n < 0) {
            dp->drops[OVL_DROP_RX_TAP_ERROR] += w->segs;
            continue;
        }
        dp->stats[OVL_STAT_TAP_TX] += w->segs;
        dp->remotes[w->remote][OVL_REMOTE_RX_PACKETS] += w->segs;
        dp->remotes[w->remote][OVL_REMOTE_RX_BYTES] += w->bytes;
    }
    dp->n_wr = 0;
}
