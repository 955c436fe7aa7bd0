/* internal.h: what the units of the C fast path share, behind the public ovl.h.
 *
 *   csum.c         the Internet checksum (sum16, ovl_checksum)
 *   flow.c         the flow hash (ovl_flow_hash)
 *   fdb.c          the MAC table (struct ovl_fdb is private to it)
 *   vlan.c         the VLAN map: VID of a frame, tunnel id -> VID
 *   encap.c        the one table of encapsulations, the outer IPv4 / UDP headers they share,
 *                  per-remote header templates, ovl_encap / ovl_parse / ovl_decap
 *   ipv6.c         (issue 11, v6) the IPv6 underlay: 16-byte addresses (IPv4 stored mapped,
 *                  ::ffff:a.b.c.d), the outer IPv6 header template and patch, per-remote outer length
 *   encap_vxlan.c  VXLAN (RFC 7348)       encap_gre.c  GRE (RFC 2784, RFC 2890)
 *   offload.c      pure steps: TSO segmentation of TAP reads, the TAP write plan (coalescing)
 *   batch.c        the batch logic (tx / rx process) and the two driver loops
 *   io.c           the syscalls: read, sendmmsg / UDP GSO sendmsg, recvmmsg / UDP GRO, write / writev
 *   dp.c           the configuration setters, context create / free, accessors for Python
 *   remotes.c      the remote slots at run time: add / remove, the address -> slot hash, TX ring growth
 *   inject.c       VXLAN TX through an injection TAP: super-frames written whole, the kernel segments
 *   rx_super.c     super-packets received whole (64 KiB datagrams): one TSO write or our own segments;
 *                  partial (seed) checksums of received frames
 *   mss.c          TCP MSS clamping of SYN / SYN-ACK both ways (--clamp-mss), the MSS a remote's path fits
 *
 * Every function reproduces a pure-Python reference (named in its comment) byte
 * for byte, including the order of checks, so that the same bad packet gets the
 * same drop reason. Any read of a packet checks its length first.
 */
#ifndef OVL_INTERNAL_H
#define OVL_INTERNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sendmmsg, recvmmsg */
#endif

#include "ovl.h"

#include <netinet/in.h>
#include <string.h>
#include <sys/uio.h>

/* Ethernet and 802.1Q (<linux/if_ether.h>, <linux/if_vlan.h>). */
#define ETH_ALEN 6
#define ETH_HLEN 14
#define VLAN_HLEN 4
#define VLAN_VID_MASK 0x0FFF
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define ETH_P_TEB 0x6558 /* transparent Ethernet bridging */
/* IPv4 (RFC 791), IPv6 (RFC 8200), UDP (RFC 768), TCP (RFC 9293). */
#define IPV4_HLEN 20
#define IPV6_HLEN 40
#define IP_DF 0x4000
#define UDP_HLEN 8
#define TCP_HLEN 20
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
/* udp_flow_src_port(): the kernel's default range of tunnel source ports. */
#define SRC_PORT_MIN 32768
#define SRC_PORT_MAX 61000
#define VNET_HDR_MAX 12 /* struct virtio_net_hdr_mrg_rxbuf */

/* The units' shared functions are not exported from the module. */
#pragma GCC visibility push(hidden)

/* ---- bytes in network order ---- */

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static inline uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline void put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void put32(uint8_t *p, uint32_t v) {
    put16(p, v >> 16);
    put16(p + 2, v);
}

/* ---- the Internet checksum (csum.c) ---- */

/* One's complement sum of the big-endian 16-bit words of p (an odd last byte padded
 * with zero), not yet folded: callers add sums and fold once (RFC 1071). */
uint64_t sum16(const uint8_t *p, size_t n);

/* The end-around carry, complemented: the checksum field of sum s. */
static inline uint16_t fold(uint64_t s) {
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)~s;
}

/* Sum of the TCP pseudo-header of the IPv4 / IPv6 header at ip (addresses, protocol, length). */
static inline uint64_t tcp_pseudo_sum(const uint8_t *ip, uint32_t v6, uint32_t l4len) {
    return (v6 ? sum16(ip + 8, 32) : sum16(ip + 12, 8)) + IPPROTO_TCP + l4len;
}

/* ---- the configuration (dp.c) ---- */

struct ovl_encap_ops;

struct ovl_config {
    const struct ovl_encap_ops *ops; /* encap_ops(encap) */
    uint32_t encap;                  /* enum ovl_encap_id */
    uint32_t id;                     /* tunnel id of untagged traffic (VNI, GRE key or 0) */
    uint32_t keyed;                  /* GRE: the base header carries a key */
    uint32_t ttl;                    /* outer IPv4 TTL / IPv6 hop limit */
    uint32_t port;                   /* UDP encapsulations: destination port */
    uint32_t udp_csum;               /* UDP encapsulations over IPv4: compute the UDP checksum */
    uint32_t udp6_zero_csum_tx;      /* UDP encapsulations over IPv6: send checksum 0 (else computed) */
    uint32_t underlay_mtu;           /* largest outer packet */
    uint32_t batch;                  /* frames / packets per call */
    uint32_t slot_size;              /* bytes per ring slot */
    uint32_t vnet_hdr_len;           /* 0: plain TAP; 10 or 12: a virtio_net_hdr leads every TAP read and write */
    uint32_t rx_coalesce;            /* with vnet_hdr_len: TCP segments of a batch go to the TAP as super-frames */
    uint32_t udp_gro;                /* UDP encapsulations: the receiving socket has UDP_GRO on */
    uint32_t clamp_mss;              /* mss.c: OVL_CLAMP_MSS_OFF / _AUTO, or a fixed MSS */
    uint32_t fdb_max;
    double fdb_ageing; /* seconds, 0 = never */
    uint64_t fdb_seed; /* hash seed of the MAC table */
    /* Remote slots [0, n_remotes): the highest slot in use + 1. A context adds and removes
     * remotes at run time (remotes.c), leaving free slots (remote_used 0) that it reuses. */
    uint32_t n_remotes;
    uint8_t remote_addr[OVL_MAX_REMOTES][OVL_ADDR_LEN];  /* IPv6, or IPv4 mapped (ipv6.c) */
    uint8_t remote_local[OVL_MAX_REMOTES][OVL_ADDR_LEN]; /* the same family as remote_addr */
    uint8_t remote_v6[OVL_MAX_REMOTES];                  /* the remote is IPv6 (its address is not mapped) */
    uint32_t n_v6;                                       /* remotes in use with remote_v6 */
    uint8_t remote_used[OVL_MAX_REMOTES];
    uint32_t n_vlans;                       /* entries set in vlan_mapped */
    uint32_t vlan_tid[OVL_VLAN_COUNT];      /* VID -> tunnel id where vlan_mapped */
    uint8_t vlan_mapped[OVL_VLAN_COUNT];    /* 1..4094 only (ovl_dp_new checks) */
    /* issue 11, part ecn (ecn.c): ttl above may be OVL_TTL_INHERIT */
    uint32_t tos; /* outer DS field (its DSCP bits), or OVL_TOS_INHERIT */
    uint32_t df;  /* enum ovl_df */
};

/* ---- encapsulations (encap.c, encap_*.c) ---- */

/* What an outer header carries: the tunnel id, and (GRE) whether it has a key field. */
struct tunnel_id {
    uint32_t id;
    uint32_t keyed;
};

/* What the TX step works out once per frame and every copy of a flood shares. */
struct tx_frame {
    struct tunnel_id t;
    uint32_t hash; /* flow hash (UDP encapsulations: the source port) */
    uint64_t fsum; /* sum16 of the frame (UDP encapsulations with udp_csum) */
};

/* The outer header towards one remote, built once by outer_template: the IPv4 header
 * (addresses, TTL, DF, protocol; length and checksum 0), the UDP header (destination
 * port) and the encapsulation's constant fields. Per packet, outer_push copies it and
 * patches length, checksums, source port and tunnel id. */
struct ovl_outer {
    uint8_t hdr[OVL_MAX_OUTER];
    uint64_t ip_sum; /* sum16 of the IPv4 header as it stands (IPv6: unused) */
    uint64_t l4_sum; /* UDP: pseudo-header addresses + protocol + the constant UDP / encapsulation words */
    uint32_t ip_hlen; /* IPV4_HLEN or IPV6_HLEN: where the encapsulation's header starts */
    uint32_t udp_csum; /* UDP: compute the checksum (udp_csum over IPv4, !udp6_zero_csum_tx over IPv6) */
};

/* One encapsulation: one of these per encap_*.c, chosen only through encap_ops(). */
struct ovl_encap_ops {
    const char *name;  /* Encap.name (datapath/encap) */
    uint8_t ip_proto;  /* outer IPv4 protocol */
    uint8_t udp;       /* in UDP to cfg.port: source port from the flow hash (the frame needs an
                        * Ethernet header), UDP checksum, UDP GSO / GRO sockets */
    uint8_t udp_tunnel; /* the kernel's UDP tunnel GSO segments it (an injection TAP may carry it: inject.c) */
    uint32_t id_max;   /* largest tunnel id */
    int bad_id;        /* drop reason of a packet whose tunnel id is not ours */
    /* Bytes of outer header (IPv4 included) in front of the inner frame; over IPv6 20 more
     * (remote_outer_len). */
    uint32_t (*outer_len)(uint32_t keyed);
    /* Its constant header fields at h (behind IPv4 and UDP), once per remote; UDP
     * encapsulations add the sum16 of what they wrote to *l4_sum. */
    void (*tpl)(const struct ovl_config *c, uint8_t *h, uint64_t *l4_sum);
    /* Per packet, h a copy of the template: patch in tunnel id, lengths and checksums (with
     * ip4_patch / udp_patch) for an inner frame of flen bytes; returns the header length. */
    uint32_t (*push)(const struct ovl_config *c, const struct ovl_outer *o, uint8_t *h, const struct tx_frame *tf,
                     uint32_t flen);
    /* A received packet as its socket delivers it (UDP: the payload; raw IPv4: the whole
     * packet; raw IPv6, v6 set: from the header behind the IPv6 header on): offset of the
     * inner frame and *tid, or -drop. The offset is at least VLAN_HLEN (ovl_rx_process may
     * insert a tag in front of the frame, in place), and the packet holds an Ethernet header
     * there. */
    int (*parse)(const uint8_t *pkt, size_t len, uint32_t v6, uint32_t *tid);
};

extern const struct ovl_encap_ops encap_vxlan;
extern const struct ovl_encap_ops encap_gre;

/* The table entry of encapsulation id, or NULL. */
const struct ovl_encap_ops *encap_ops(uint32_t id);
/* The tunnel id of untagged traffic, as the outer header carries it. */
struct tunnel_id base_tunnel(const struct ovl_config *c);
/* Flow hash and frame sum as c's encapsulation needs them; -drop for a frame it cannot take. */
int tx_frame_sums(const struct ovl_config *c, const uint8_t *f, size_t len, struct tx_frame *tf);
/* The template of remote r (c->remote_* [r]). */
void outer_template(const struct ovl_config *c, uint32_t r, struct ovl_outer *o);
/* The outer header for a frame of flen bytes into h (OVL_MAX_OUTER bytes); returns its length. */
uint32_t outer_push(const struct ovl_config *c, const struct ovl_outer *o, const struct tx_frame *tf, uint32_t flen,
                    uint8_t *h);
/* Outer IPv4, per packet: total length and header checksum. */
void ip4_patch(uint8_t *h, const struct ovl_outer *o, uint32_t total);
/* The outer IP header of o's family, per packet: ip4_patch, or the IPv6 payload length (ipv6.c). */
void ip_patch(uint8_t *h, const struct ovl_outer *o, uint32_t total);
/* Outer UDP, per packet: source port, length, checksum (var_sum: sum16 of the encapsulation
 * header words patched since the template). */
void udp_patch(const struct ovl_config *c, const struct ovl_outer *o, uint8_t *h, uint32_t hash, uint32_t udp_len,
               uint64_t var_sum, uint64_t fsum);
/* ipv4.header_len: length of a sane IPv4 header at p, or -1. */
int ip4_header_len(const uint8_t *p, size_t n);

/* ---- the datapath context ---- */

/* One packet to send: outer header here, inner frame in TX ring entry frame. */
struct tx_out {
    uint32_t frame;
    uint16_t remote;
    uint16_t hdr_len;
    uint8_t hdr[OVL_MAX_OUTER];
};

/* One received packet; ovl_rx_process fills remote and result (and may rewrite the
 * bytes before data + result to insert a VLAN tag). */
struct rx_entry {
    uint8_t *data;
    uint32_t len;
    uint8_t src[OVL_ADDR_LEN]; /* outer source address: IPv6, or IPv4 mapped */
    uint8_t dst[OVL_ADDR_LEN]; /* outer destination (IPV6_PKTINFO) where has_dst */
    uint8_t has_dst;
    uint32_t truncated; /* the socket cut it short (MSG_TRUNC) */
    int32_t remote;     /* remote index, or -1 */
    int32_t result;     /* offset of the inner frame in data, or -drop */
    uint8_t tos;        /* ecn: the outer DS field (cmsg IP_TOS / IPV6_TCLASS, or the raw IPv4 header) */
};

/* One write to the TAP of the RX plan: iovecs wr_iov[iov..iov + iovcnt) (the virtio
 * header first when there is one), carrying segs frames of bytes bytes from remote. */
struct tap_write {
    uint32_t iov, iovcnt, segs;
    int32_t remote;
    uint64_t bytes;
    uint8_t vnet[VNET_HDR_MAX]; /* a super-frame's virtio header */
};

/* Where the TX offload step goes on: TAP read frame, its segment seg. */
struct tx_cursor {
    uint32_t frame, seg;
};

struct vlan_id; /* vlan.c */
struct ovl_co;  /* offload.c: RX coalescing state */
struct ovl_io;  /* io.c: mmsghdr / iovec / sockaddr arrays */
struct ovl_rings; /* ring.c: AF_PACKET TX rings and next hops */

/* Slots of the address -> remote slot hash (a power of two, at least twice OVL_MAX_REMOTES). */
#define REMOTE_HASH 2048

struct ovl_dp {
    struct ovl_config cfg; /* udp_gro, rx_coalesce as in effect; the remote slots as they are now */
    uint32_t outer_len;
    int io_errno; /* set when a read / recv failed other than by "no more data" */
    uint64_t stats[OVL_STAT_COUNT];
    uint64_t drops[OVL_DROP_COUNT];
    uint64_t remotes[OVL_MAX_REMOTES][OVL_REMOTE_COUNT];
    struct ovl_outer outer[OVL_MAX_REMOTES]; /* header templates */
    double last_rx[OVL_MAX_REMOTES];         /* now of the last batch that delivered a packet from it */
    uint8_t rx_seen[OVL_MAX_REMOTES];        /* last_rx is set */
    int16_t remote_hash[REMOTE_HASH];        /* address -> slot, linear probing, -1 = empty */
    uint32_t tx_slots;                       /* remote slots the TX rings hold: >= n_remotes, >= 1 */
    struct ovl_fdb *fdb;
    /* TX: batch entries (frame address and length), batch * tx_slots packets. */
    uint8_t **tx_data;
    uint32_t *tx_len;
    struct tx_out *tx_out;
    uint32_t n_out;    /* packets of the last ovl_tx_process */
    uint8_t *tx_buf;   /* batch slots of tap_slot bytes: TAP reads */
    uint32_t tap_slot; /* slot_size, or vnet_hdr_len + OVL_TAP_READ */
    uint8_t *seg_buf;  /* batch slots of slot_size: TSO segments (vnet_hdr_len only) */
    uint8_t **tap_data; /* batch entries: what each TAP read returned (vnet_hdr_len only) */
    uint32_t *tap_len;
    /* RX: rx_cap entries (batch, or batch * 64 with udp_gro) in batch slots of rx_slot bytes. */
    struct rx_entry *rx;
    uint32_t rx_cap;
    uint32_t n_rx; /* entries of the last ovl_rx_process, not yet planned */
    uint8_t *rx_buf;
    uint32_t rx_slot;
    /* The RX plan: rx_cap writes, 2 * rx_cap iovecs. */
    struct tap_write *wr;
    struct iovec *wr_iov;
    uint32_t n_wr, n_wr_iov;
    struct ovl_co *co; /* rx_coalesce only */
    struct vlan_id *vlan_of_id;
    struct ovl_io *io;
    uint32_t n_gso_fd; /* UDP encapsulations: sockets for UDP_SEGMENT sends (0 = raw socket only) */
    uint32_t gso_off;  /* set when a GSO send failed with EIO: raw socket from then on */
    int32_t gso_fd[OVL_GSO_SOCKETS];
    struct ovl_inject *inj; /* inject.c: VXLAN super-frames through the injection TAP (NULL: off) */
    struct rx_super *sup; /* super-packets received whole (ovl_dp_set_rx_super), or NULL */
    struct ovl_rings *rings; /* ring.c: NULL until a TX ring is set */
    int32_t send6_fd;        /* issue 11, v6: the raw IPv6 send socket (ovl_dp_set_send6_fd), or -1 */
    struct ovl_pmtu *pm;     /* pmtu.c: per-remote path MTU, ICMP replies, fragments */
    uint16_t ip_id;          /* next outer IPv4 id: fragments (pmtu.c), no-DF packets off the raw path (ring.c) */
};

static inline void count_drop(struct ovl_dp *dp, int reason) { dp->drops[reason]++; }

/* A frame that never reaches ovl_tx_process: counted as read, and dropped. */
static inline void tap_drop(struct ovl_dp *dp, int reason) {
    dp->stats[OVL_STAT_TAP_RX]++;
    count_drop(dp, reason);
}

/* vlan.c */
uint16_t frame_vlan(const uint8_t *f, size_t n);
int vlan_map_init(struct ovl_dp *dp);
uint16_t vlan_of_id(const struct ovl_dp *dp, uint32_t tid);

/* offload.c */
uint32_t tx_fill_offloaded(struct ovl_dp *dp, uint32_t n, struct tx_cursor *cur);
int co_new(struct ovl_dp *dp);
void co_free(struct ovl_co *co);

/* ---- shared by offload.c and rx_super.c (issue 10: super-packets received whole) ---- */

/* struct virtio_net_hdr, native endian as the TAP reads and writes it. */
struct vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
};

/* A TCP super-frame, parsed once (tso_prepare) and cut segment by segment. */
struct tso {
    const uint8_t *f;
    uint32_t len;
    uint32_t l3, l4, hdrs; /* offsets of the IP header, the TCP header, the payload */
    uint32_t mss, nseg;
    uint32_t v6;
    uint32_t seq;
    uint16_t ipid;
};

/* v into p (VNET_HDR_MAX bytes, the rest zeroed). */
void vnet_write(uint8_t *p, const struct vnet_hdr *v);
/* Offset of the network header behind up to two VLAN tags, and its EtherType; 0 if cut short. */
uint32_t l3_offset(const uint8_t *f, size_t len, uint16_t *type);
/* t := the super-frame f of len bytes as v (gso_type, gso_size) describes it; 0 or -drop. */
int tso_prepare(struct tso *t, const struct vnet_hdr *v, const uint8_t *f, size_t len);
uint32_t tso_seg_hdr(const struct tso *t, uint32_t i, uint8_t *out);
/* The RX plan: a new write (virtio header vnet, or the write's own w->vnet for NULL), an iovec of it. */
struct tap_write *plan_add(struct ovl_dp *dp, const uint8_t *vnet, int32_t remote);
void plan_iov(struct ovl_dp *dp, struct tap_write *w, const void *base, size_t len);
void co_end(struct ovl_dp *dp, uint8_t *f, uint32_t len);

/* rx_super.c */
struct rx_super;
void rx_super_free(struct rx_super *s);
void rx_super_begin(struct ovl_dp *dp);
int rx_super_take(struct ovl_dp *dp, uint32_t i, uint8_t *f, uint32_t len);
void rx_csum_fix(const struct ovl_dp *dp, uint8_t *f, uint32_t len, uint8_t *vnet);

/* remotes.c */
int remotes_init(struct ovl_dp *dp);
int32_t remote_find(const struct ovl_dp *dp, const uint8_t *addr);

/* ---- issue 11, v6: the IPv6 underlay (ipv6.c) ---- */
/* a (OVL_ADDR_LEN bytes) is an IPv4 address stored mapped (::ffff:a.b.c.d). */
int addr_is_v4(const uint8_t *a);
/* The IPv6 header of remote r's template into o (after outer_template zeroed it); the UDP pseudo-header
 * part of o->l4_sum. */
void outer_template6(const struct ovl_config *c, uint32_t r, struct ovl_outer *o);
/* Outer bytes in front of a frame to remote r (tunnel id keyed as tf.t.keyed). */
uint32_t remote_outer_len(const struct ovl_dp *dp, uint32_t r, uint32_t keyed);
/* ovl_rx_process for an IPv6 GRE packet: 0, or -OVL_DROP_RX_BAD_DST when its destination (IPV6_PKTINFO)
 * is not the local address remote r sends from. */
int rx6_check_dst(const struct ovl_dp *dp, const struct rx_entry *e, int32_t r);

/* io.c */
int io_new(struct ovl_dp *dp);
int io_grow_tx(struct ovl_dp *dp, uint32_t slots);
void io_set_remote(struct ovl_dp *dp, uint32_t r);
void io_free(struct ovl_io *io);
uint32_t io_tap_read(struct ovl_dp *dp, int tap_fd);
void io_send(struct ovl_dp *dp, uint32_t k, int send_fd);
uint32_t io_recv(struct ovl_dp *dp, int recv_fd);
void io_tap_write(struct ovl_dp *dp, int tap_fd);

/* inject.c */
struct ovl_inject;
void inject_free(struct ovl_inject *j);
/* Would TAP read buf (len bytes, virtio header first) go through the injection TAP? */
int inject_wanted(const struct ovl_dp *dp, const uint8_t *buf, uint32_t len);
/* Send TAP read i (tap_data / tap_len) through the injection TAP: 1 done (sent, or dropped and
 * counted), 0 the old path takes it (unchanged). */
int inject_take(struct ovl_dp *dp, uint32_t i, double now);
/* ring.c (AF_PACKET TX rings) */
int ring_put(struct ovl_dp *dp, const struct tx_out *o);
void ring_flush(struct ovl_dp *dp);
uint32_t ring_send(struct ovl_dp *dp, uint32_t k);
/* An outer IPv4 header h that leaves without the raw socket (TX ring, injection TAP) and without DF gets
 * an IP id of its own, and n - 1 more for the segments the kernel cuts from it (RFC 6864 4.1: the raw
 * socket's kernel picks one for an id of 0; DF packets keep 0, as it leaves them); checksum updated. */
void ip4_ident(struct ovl_dp *dp, uint8_t *h, uint32_t n);
void ring_forget_remote(struct ovl_dp *dp, uint32_t r);
void rings_free(struct ovl_rings *rs);

/* ---- issue 11, part ecn (ecn.c) ---- */
struct msghdr;
/* The template's DS field, TTL and DF (what needs no inner frame), in the outer IPv4 / IPv6 header h. */
void ecn_template(const struct ovl_config *c, uint8_t *h);
/* Per packet, after outer_push: DS field, TTL, DF of outer header h for inner frame f (len bytes). */
void ecn_outer(const struct ovl_config *c, uint8_t *h, const uint8_t *f, uint32_t len);
/* RFC 6040 on inner frame f under outer DS field tos: 0, or -OVL_DROP_RX_ECN. */
int ecn_decap(struct ovl_dp *dp, uint8_t *f, uint32_t len, uint8_t tos);
/* UDP GSO: 1 if the socket's DF setting expresses outer header h; 1 if a and b have the same
 * TOS, TTL and DF; the IP_TOS + IP_TTL cmsgs of h into buf (ECN_GSO_CMSG bytes), their length.
 * An outer IPv6 header (version 6): traffic class and hop limit, IPV6_TCLASS + IPV6_HOPLIMIT. */
int ecn_gso_ok(const struct ovl_config *c, const uint8_t *h);
int ecn_same_outer(const uint8_t *a, const uint8_t *b);
uint32_t ecn_gso_cmsg(uint8_t *buf, const uint8_t *h);
#define ECN_GSO_CMSG (2 * CMSG_SPACE(sizeof(int)))
/* The outer DS field of received message h (cmsg IP_TOS / IPV6_TCLASS, or a raw IPv4 header in data). */
uint8_t ecn_rx_tos(const struct ovl_config *c, struct msghdr *h, const uint8_t *data, uint32_t len);
/* ---- issue 11, pmtu part (pmtu.c) ---- */
struct ovl_pmtu;
int pmtu_new(struct ovl_dp *dp);
void pmtu_free(struct ovl_pmtu *pm);
/* A remote slot taken again: the underlay MTU towards it. */
void pmtu_forget(struct ovl_dp *dp, uint32_t r);
/* The one too-big check: does a frame of len bytes (keyed: GRE key field) fit remote r's path (r < 0: the
 * underlay MTU)? */
int tx_fits(const struct ovl_dp *dp, int32_t r, uint32_t keyed, uint32_t len);
/* A copy of TX ring entry i to remote r: 1 it fits (emit it), 2 queued to leave in outer fragments (counted),
 * 0 it does not fit (*room := min(*room, the largest inner frame remote r takes)). */
int tx_copy(struct ovl_dp *dp, uint32_t i, uint32_t r, const struct tx_frame *tf, uint32_t *room);
/* TX ring entry i did not fit (room: the largest inner frame that would have): counted as tx_too_big, and
 * answered (rate-limited) when the kernel would; tci >= 0: the 802.1Q tag it came with and lost. */
void pmtu_too_big(struct ovl_dp *dp, uint32_t i, int32_t tci, uint32_t room, double now);
/* TX ring entries [m, m + k) were cut from TAP read frame (one reply per super-frame). */
void pmtu_origin(struct ovl_dp *dp, uint32_t m, uint32_t k, uint32_t frame);
/* ovl_tx_process starts: the fragment queue is empty. */
void pmtu_tx_begin(struct ovl_dp *dp);
/* ovl_from_tap starts / ends: the replies are queued, then written to the TAP. */
void pmtu_begin(struct ovl_dp *dp);
void pmtu_flush(struct ovl_dp *dp, int tap_fd);
/* io_send: the queued copies leave in fragments through the raw socket. */
void pmtu_send_frags(struct ovl_dp *dp, int send_fd);
/* ---- TCP MSS clamping (issue 11, mss part: mss.c) ---- */
#define TCP_SYN 0x02
/* ovl_tx_process, with the clamp on: frame f of len bytes (a mapped VLAN's tag stripped) to remote
 * slot r (not in use: a flood), in tunnel id keyed. 1 if its MSS was lowered (its sums change). */
int mss_tx(struct ovl_dp *dp, uint8_t *f, uint32_t len, int32_t r, uint32_t keyed);
/* ovl_rx_process, with the clamp on: a delivered frame from remote slot r; tagged: ovl_rx_process
 * inserted a mapped VLAN's tag (the frame travels without it, in a keyed id). */
void mss_rx(struct ovl_dp *dp, uint8_t *f, uint32_t len, int32_t r, uint32_t tagged);

#pragma GCC visibility pop

#endif
