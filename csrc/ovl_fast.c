/* ovl_fast.c: see ovl_fast.h. Every function reproduces a pure-Python
 * reference (named in its comment) byte for byte, including the order of
 * checks, so that the same bad packet gets the same drop reason. */
#define _GNU_SOURCE
#include "ovl_fast.h"

#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define ETH_HLEN 14
#define ETH_ALEN 6
#define IPV4_HLEN 20
#define UDP_HLEN 8
#define VXLAN_HLEN 8
#define GRE_HLEN 4
#define GRE_OPT_LEN 4
#define VXLAN_FLAG_I 0x08
#define GRE_CSUM 0x8000
#define GRE_ROUTING 0x4000
#define GRE_KEY 0x2000
#define GRE_SEQ 0x1000
#define GRE_VERSION 0x0007
#define ETH_P_TEB 0x6558
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define VLAN_HLEN 4
#define VLAN_VID_MASK 0x0FFF
#define IP_DF 0x4000
#define SRC_PORT_MIN 32768
#define SRC_PORT_MAX 61000
#define FNV_OFFSET 0x811C9DC5u
#define FNV_PRIME 0x01000193u

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v) {
    put16(p, v >> 16);
    put16(p + 2, v);
}

/* ---- flow hash (ether.flow_key / fnv1a32) ---------------------------------- */

static uint32_t fnv(uint32_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * FNV_PRIME;
    return h;
}

static int ports_proto(uint8_t proto) { return proto == 6 || proto == 17 || proto == 132; }

/* FNV-1a of the flow key, hashed piece by piece instead of building the key.
 * The caller guarantees len >= ETH_HLEN (the reference indexes frame[13]). */
uint32_t ovl_flow_hash(const uint8_t *f, size_t n) {
    uint32_t h = FNV_OFFSET;
    size_t off = ETH_HLEN;
    if (n < ETH_HLEN)
        return h;
    uint16_t type = get16(f + 12);
    if ((type == ETH_P_8021Q || type == ETH_P_8021AD) && n >= off + 4) {
        type = get16(f + 16);
        off += 4;
    }
    if (type == ETH_P_IP && n >= off + 20 && f[off] >> 4 == 4) {
        size_t ihl = (size_t)(f[off] & 0x0F) * 4;
        uint8_t proto = f[off + 9];
        h = fnv(h, f + off + 12, 8);
        h = fnv(h, &proto, 1);
        uint16_t frag = get16(f + off + 6) & 0x3FFF; /* MF + offset */
        if (ports_proto(proto) && ihl >= 20 && frag == 0 && n >= off + ihl + 4)
            h = fnv(h, f + off + ihl, 4);
        return h;
    }
    if (type == ETH_P_IPV6 && n >= off + 40 && f[off] >> 4 == 6) {
        uint8_t next = f[off + 6];
        h = fnv(h, f + off + 8, 32);
        h = fnv(h, &next, 1);
        if (ports_proto(next) && n >= off + 44)
            h = fnv(h, f + off + 40, 4);
        return h;
    }
    uint8_t t[2] = {(uint8_t)(type >> 8), (uint8_t)type};
    h = fnv(h, f, 12);
    return fnv(h, t, 2);
}

/* ---- Internet checksum (ipv4.checksum) --------------------------------------- */

/* Sum of big-endian 16-bit words, an odd last byte padded with zero, up to the
 * end-around carry (callers add to it and fold). Summed 8 bytes at a time in native
 * order: a 32-bit word is congruent to the sum of its halves modulo 0xFFFF, and the
 * one's complement sum of byte-swapped words is the byte-swapped sum (RFC 1071 2(B)). */
static uint64_t sum16(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        s += (w & 0xFFFFFFFFu) + (w >> 32);
    }
    for (; i + 2 <= n; i += 2) {
        uint16_t h;
        memcpy(&h, p + i, 2);
        s += h;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (i < n)
        s += p[i];
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    s = (s & 0xFF) << 8 | s >> 8;
#else
    if (i < n)
        s += (uint64_t)p[i] << 8;
#endif
    return s;
}

static uint16_t fold(uint64_t s) {
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return (uint16_t)~s;
}

uint16_t ovl_checksum(const uint8_t *data, size_t len, uint64_t initial) { return fold(initial + sum16(data, len)); }

/* ---- VLANs (ether.vlan_id, DatapathConfig.base_id) ----------------------------------- */

/* ether.vlan_id: the VID of a single complete 0x8100 tag, else 0. */
static uint16_t frame_vlan(const uint8_t *f, size_t n) {
    if (n >= ETH_HLEN + VLAN_HLEN && get16(f + 12) == ETH_P_8021Q)
        return get16(f + 14) & VLAN_VID_MASK;
    return 0;
}

/* The tunnel id of unmapped traffic: the VNI, or the GRE key (0 without one). */
static uint32_t base_id(const struct ovl_config *c) {
    if (c->mode == OVL_MODE_VXLAN)
        return c->vni;
    return c->has_key ? c->key : 0;
}

/* What the outer header carries: the tunnel id, and for GRE whether there is a key field. */
struct tunnel_id {
    uint32_t id;
    uint32_t keyed;
};

static struct tunnel_id base_tunnel(const struct ovl_config *c) {
    struct tunnel_id t = {base_id(c), c->mode == OVL_MODE_VXLAN || c->has_key};
    return t;
}

/* ---- encapsulation (vxlan.encap, gre.encap) ------------------------------------- */

static uint32_t outer_len(const struct ovl_config *c, uint32_t keyed) {
    if (c->mode == OVL_MODE_VXLAN)
        return IPV4_HLEN + UDP_HLEN + VXLAN_HLEN;
    return IPV4_HLEN + GRE_HLEN + (keyed ? GRE_OPT_LEN : 0);
}

/* DatapathConfig.outer_len: with the base id. */
uint32_t ovl_outer_len(const struct ovl_config *c) { return outer_len(c, base_tunnel(c).keyed); }

static void ip_header(uint8_t *h, const struct ovl_config *c, uint32_t r, uint8_t proto, uint32_t total) {
    h[0] = 0x45;
    h[1] = 0;
    put16(h + 2, total);
    put16(h + 4, 0); /* id 0: the kernel fills it in for IP_HDRINCL */
    put16(h + 6, IP_DF);
    h[8] = (uint8_t)c->ttl;
    h[9] = proto;
    put16(h + 10, 0);
    memcpy(h + 12, &c->remote_local[r], 4); /* stored in network order */
    memcpy(h + 16, &c->remote_addr[r], 4);
    put16(h + 10, fold(sum16(h, IPV4_HLEN)));
}

/* The outer header for a frame of flen bytes to remote r in tunnel t, into h
 * (OVL_MAX_OUTER bytes). hash is the frame's flow hash and fsum the unfolded
 * sum16 of the frame; both are only used by VXLAN (fsum only with udp_csum),
 * and computed once per frame by the caller because flooding sends one frame
 * to many remotes. Returns the header length. */
static uint32_t outer_header(const struct ovl_config *c, uint32_t r, struct tunnel_id t, uint32_t flen, uint32_t hash,
                             uint64_t fsum, uint8_t *h) {
    uint32_t hlen = outer_len(c, t.keyed);
    if (c->mode == OVL_MODE_VXLAN) {
        uint32_t udp_len = UDP_HLEN + VXLAN_HLEN + flen;
        uint8_t *u = h + IPV4_HLEN, *v = u + UDP_HLEN;
        ip_header(h, c, r, IPPROTO_UDP, IPV4_HLEN + udp_len);
        /* udp_flow_src_port(): scale the hash into [MIN, MAX). */
        put16(u, SRC_PORT_MIN + (uint32_t)(((uint64_t)hash * (SRC_PORT_MAX - SRC_PORT_MIN)) >> 32));
        put16(u + 2, c->dport);
        put16(u + 4, udp_len);
        put16(u + 6, 0);
        put32(v, (uint32_t)VXLAN_FLAG_I << 24);
        put32(v + 4, t.id << 8);
        if (c->udp_csum) {
            /* Pseudo-header + UDP/VXLAN headers + frame. The frame starts 16
             * bytes into the UDP segment, an even offset, so its own word sum
             * can simply be added. */
            uint64_t s = sum16(h + 12, 8) + IPPROTO_UDP + udp_len + sum16(u, UDP_HLEN + VXLAN_HLEN) + fsum;
            uint16_t cs = fold(s);
            put16(u + 6, cs ? cs : 0xFFFF);
        }
    } else {
        uint8_t *g = h + IPV4_HLEN;
        ip_header(h, c, r, 47, hlen + flen);
        put16(g, t.keyed ? GRE_KEY : 0);
        put16(g + 2, ETH_P_TEB);
        if (t.keyed)
            put32(g + 4, t.id);
    }
    return hlen;
}

int ovl_encap(const struct ovl_config *c, uint32_t r, const uint8_t *frame, size_t len, uint8_t *out, size_t cap) {
    uint32_t hash = 0;
    uint64_t fsum = 0;
    uint32_t hlen = ovl_outer_len(c);
    if (r >= c->n_remotes || r >= OVL_MAX_REMOTES)
        return -OVL_DROP_TX_ERROR;
    if (c->mode == OVL_MODE_VXLAN) {
        if (len < ETH_HLEN) /* the flow hash needs an Ethernet header */
            return -OVL_DROP_TX_RUNT;
        hash = ovl_flow_hash(frame, len);
        if (c->udp_csum)
            fsum = sum16(frame, len);
    }
    if (len > 0xFFFF - hlen || cap < hlen + len) /* IPv4 total length is 16 bits */
        return -OVL_DROP_TX_TOO_BIG;
    outer_header(c, r, base_tunnel(c), (uint32_t)len, hash, fsum, out);
    memcpy(out + hlen, frame, len);
    return (int)(hlen + len);
}

/* ---- decapsulation (vxlan.parse/decap, gre.parse/decap) ------------------------------- */

/* ipv4.header_len: length of a sane IPv4 header at p, or -1. */
static int ip_header_len(const uint8_t *p, size_t n) {
    if (n < IPV4_HLEN || p[0] >> 4 != 4)
        return -1;
    size_t ihl = (size_t)(p[0] & 0x0F) * 4;
    if (ihl < IPV4_HLEN || n < ihl)
        return -1;
    return (int)ihl;
}

/* p is the UDP payload. */
static int vxlan_parse(const uint8_t *p, size_t n, uint32_t *vni) {
    if (n < VXLAN_HLEN + ETH_HLEN)
        return -OVL_DROP_RX_TRUNCATED;
    if (!(p[0] & VXLAN_FLAG_I))
        return -OVL_DROP_RX_BAD_FLAGS;
    *vni = (uint32_t)p[4] << 16 | (uint32_t)p[5] << 8 | p[6];
    return VXLAN_HLEN;
}

/* p is the whole IPv4 packet, as a raw socket delivers it. */
static int gre_parse(const uint8_t *p, size_t n, uint32_t *tid) {
    int ihl = ip_header_len(p, n);
    if (ihl < 0 || n < (size_t)ihl + GRE_HLEN)
        return -OVL_DROP_RX_TRUNCATED;
    uint16_t flags = get16(p + ihl);
    if (flags & GRE_VERSION)
        return -OVL_DROP_RX_BAD_VERSION;
    if (flags & GRE_ROUTING)
        return -OVL_DROP_RX_BAD_FLAGS;
    if (get16(p + ihl + 2) != ETH_P_TEB)
        return -OVL_DROP_RX_BAD_PROTO;
    size_t off = (size_t)ihl + GRE_HLEN;
    if (flags & GRE_CSUM)
        off += GRE_OPT_LEN;
    uint32_t key = 0; /* no K bit means key 0 */
    if (flags & GRE_KEY) {
        if (n < off + GRE_OPT_LEN)
            return -OVL_DROP_RX_TRUNCATED;
        key = get32(p + off);
        off += GRE_OPT_LEN;
    }
    if (flags & GRE_SEQ)
        off += GRE_OPT_LEN; /* parsed, not enforced */
    if (n < off + ETH_HLEN)
        return -OVL_DROP_RX_TRUNCATED;
    if ((flags & GRE_CSUM) && ovl_checksum(p + ihl, n - (size_t)ihl, 0) != 0)
        return -OVL_DROP_RX_BAD_CSUM;
    *tid = key;
    return (int)off;
}

/* vxlan.parse / gre.parse: offset of the inner frame and *tid, or -drop and *tid = 0. */
int ovl_parse(const struct ovl_config *c, const uint8_t *pkt, size_t len, uint32_t *tid) {
    *tid = 0;
    return c->mode == OVL_MODE_VXLAN ? vxlan_parse(pkt, len, tid) : gre_parse(pkt, len, tid);
}

static int bad_id(const struct ovl_config *c) {
    return c->mode == OVL_MODE_VXLAN ? -OVL_DROP_RX_BAD_VNI : -OVL_DROP_RX_BAD_KEY;
}

/* vxlan.decap(pkt, cfg.vni) / gre.decap(pkt, cfg.key): only the base id is accepted. */
int ovl_decap(const struct ovl_config *c, const uint8_t *pkt, size_t len) {
    uint32_t tid;
    int off = ovl_parse(c, pkt, len, &tid);
    return off >= 0 && tid != base_id(c) ? bad_id(c) : off;
}

/* ---- TAP offloads: TSO segmentation and checksum completion ------------------------
 * A TAP opened with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6) hands over frames
 * the kernel left unfinished: a partial checksum (NEEDS_CSUM: the checksum field holds
 * the pseudo-header sum, the rest is summed from csum_start, which on a TAP counts from
 * the Ethernet header) and TCP super-frames of up to 64 KiB (gso_type TCPV4/TCPV6)
 * that must be cut into gso_size segments, as the kernel's tcp_gso_segment does: each a
 * complete frame with its own IP length (IPv4: id + i and header checksum), TCP
 * sequence number, flags (CWR only on the first, FIN and PSH only on the last) and full
 * TCP checksum. Header lengths come from the headers, never from hdr_len. */

#define TCP_HLEN 20
#define IPV6_HLEN 40
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_CWR 0x80

struct vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
};

static void vnet_read(const uint8_t *p, struct vnet_hdr *v) {
    v->flags = p[0];
    v->gso_type = p[1];
    memcpy(&v->hdr_len, p + 2, 2); /* native endian, as the TAP writes it */
    memcpy(&v->gso_size, p + 4, 2);
    memcpy(&v->csum_start, p + 6, 2);
    memcpy(&v->csum_offset, p + 8, 2);
}

/* A TCP super-frame, parsed once and cut segment by segment. */
struct tso {
    const uint8_t *f;
    uint32_t len;
    uint32_t l3, l4, hdrs; /* offsets of the IP header, the TCP header, the payload */
    uint32_t mss, nseg;
    uint32_t v6;
    uint32_t seq;
    uint16_t ipid;
};

/* Offset of the network header behind up to two VLAN tags, and its EtherType; 0 if cut short. */
static uint32_t l3_offset(const uint8_t *f, size_t len, uint16_t *type) {
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

static int tso_prepare(struct tso *t, const struct vnet_hdr *v, const uint8_t *f, size_t len) {
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

/* Sum of the pseudo-header's addresses, protocol and length (TCP, IPv4 or IPv6). */
static uint64_t pseudo_sum(const uint8_t *ip, uint32_t v6, uint32_t l4len) {
    return (v6 ? sum16(ip + 8, 32) : sum16(ip + 12, 8)) + IPPROTO_TCP + l4len;
}

/* Segment i of t into out (room for hdrs + mss bytes); returns its length. */
static uint32_t tso_write(const struct tso *t, uint32_t i, uint8_t *out) {
    uint32_t off = t->hdrs + i * t->mss;
    uint32_t plen = t->len - off < t->mss ? t->len - off : t->mss;
    uint32_t seglen = t->hdrs + plen;
    memcpy(out, t->f, t->hdrs);
    memcpy(out + t->hdrs, t->f + off, plen);
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
    uint32_t l4len = seglen - t->l4;
    put16(tcp + 16, fold(pseudo_sum(ip, t->v6, l4len) + sum16(tcp, l4len)));
    return seglen;
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

int ovl_offload_frame(const uint8_t *vnet, const uint8_t *frame, size_t len, uint8_t *out, size_t cap,
                      uint32_t *lens, uint32_t max_segs) {
    struct vnet_hdr v;
    vnet_read(vnet, &v);
    if (v.gso_type == OVL_VNET_GSO_NONE) {
        if (max_segs < 1 || cap < len)
            return -OVL_DROP_TX_TOO_BIG;
        memcpy(out, frame, len);
        if ((v.flags & OVL_VNET_F_NEEDS_CSUM) && csum_complete(&v, out, len) < 0)
            return -OVL_DROP_TX_BAD_OFFLOAD;
        lens[0] = (uint32_t)len;
        return 1;
    }
    struct tso t;
    int res = tso_prepare(&t, &v, frame, len);
    if (res < 0)
        return res;
    if (t.nseg > max_segs || (uint64_t)t.nseg * (t.hdrs + t.mss) > cap)
        return -OVL_DROP_TX_TOO_BIG;
    size_t at = 0;
    for (uint32_t i = 0; i < t.nseg; i++) {
        lens[i] = tso_write(&t, i, out + at);
        at += lens[i];
    }
    return (int)t.nseg;
}

/* ---- the MAC table (fdb.Fdb) --------------------------------------------------------
 * Open addressing with linear probing in a power-of-two table at most half
 * full (so a probe always ends at an empty slot), and backward-shift deletion,
 * so there are no tombstones and lookups never degrade after churn. The hash
 * is seeded so that inner MACs chosen by a remote cannot build long probe
 * chains on purpose. The key is the MAC and the VLAN. */

struct fdb_slot {
    uint8_t mac[ETH_ALEN];
    uint16_t vlan;
    uint8_t used;
    uint8_t is_static;
    int32_t remote;
    double last_seen;
};

struct ovl_fdb {
    uint32_t max, count, mask;
    double ageing;
    uint64_t seed;
    struct ovl_fdb_stats st;
    struct fdb_slot *slots;
};

static uint32_t mac_home(const struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan) {
    uint64_t k = vlan;
    for (int i = 0; i < ETH_ALEN; i++)
        k = k << 8 | mac[i];
    k ^= f->seed;
    /* splitmix64 finaliser */
    k = (k ^ (k >> 30)) * 0xBF58476D1CE4E5B9ull;
    k = (k ^ (k >> 27)) * 0x94D049BB133111EBull;
    k ^= k >> 31;
    return (uint32_t)k & f->mask;
}

struct ovl_fdb *ovl_fdb_new(uint32_t max_entries, double ageing, uint64_t seed) {
    if (max_entries < 1 || max_entries > (1u << 28) || !(ageing >= 0))
        return NULL;
    struct ovl_fdb *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    uint32_t cap = 16;
    while (cap < 2 * max_entries)
        cap <<= 1;
    f->slots = calloc(cap, sizeof(*f->slots));
    if (!f->slots) {
        free(f);
        return NULL;
    }
    f->max = max_entries;
    f->mask = cap - 1;
    f->ageing = ageing;
    f->seed = seed;
    return f;
}

void ovl_fdb_free(struct ovl_fdb *f) {
    if (f) {
        free(f->slots);
        free(f);
    }
}

/* Index of the slot of (vlan, mac), or -1. */
static int64_t fdb_find(const struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan) {
    for (uint32_t i = mac_home(f, mac, vlan);; i = (i + 1) & f->mask) {
        if (!f->slots[i].used)
            return -1;
        if (f->slots[i].vlan == vlan && !memcmp(f->slots[i].mac, mac, ETH_ALEN))
            return i;
    }
}

/* A new slot for (vlan, mac) (known to be absent; the table is never full). */
static struct fdb_slot *fdb_insert(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan) {
    uint32_t i = mac_home(f, mac, vlan);
    while (f->slots[i].used)
        i = (i + 1) & f->mask;
    struct fdb_slot *s = &f->slots[i];
    memcpy(s->mac, mac, ETH_ALEN);
    s->vlan = vlan;
    s->used = 1;
    f->count++;
    return s;
}

/* Empty slot i, then move later members of its probe run back into the hole
 * whenever the hole lies between their home slot and where they sit. */
static void fdb_delete(struct ovl_fdb *f, uint32_t i) {
    f->slots[i].used = 0;
    f->count--;
    for (uint32_t j = (i + 1) & f->mask; f->slots[j].used; j = (j + 1) & f->mask) {
        uint32_t home = mac_home(f, f->slots[j].mac, f->slots[j].vlan);
        if (((j - home) & f->mask) >= ((j - i) & f->mask)) {
            f->slots[i] = f->slots[j];
            f->slots[j].used = 0;
            i = j;
        }
    }
}

static int fdb_expired(const struct ovl_fdb *f, const struct fdb_slot *s, double now) {
    return !s->is_static && f->ageing > 0 && now - s->last_seen >= f->ageing;
}

/* Fdb._get_live: the live slot index of (vlan, mac), or -1; an expired one is removed and counted. */
static int64_t fdb_get_live(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, double now) {
    int64_t i = fdb_find(f, mac, vlan);
    if (i >= 0 && fdb_expired(f, &f->slots[i], now)) {
        fdb_delete(f, (uint32_t)i);
        f->st.aged++;
        return -1;
    }
    return i;
}

int32_t ovl_fdb_lookup(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, double now) {
    int64_t i = fdb_get_live(f, mac, vlan, now);
    return i < 0 ? -1 : f->slots[i].remote;
}

int ovl_fdb_learn(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, int32_t remote, double now) {
    int64_t i = fdb_get_live(f, mac, vlan, now);
    if (i >= 0) {
        struct fdb_slot *s = &f->slots[i];
        if (s->is_static)
            return OVL_LEARN_STATIC;
        s->last_seen = now;
        if (s->remote == remote)
            return OVL_LEARN_REFRESHED;
        s->remote = remote;
        f->st.moves++;
        return OVL_LEARN_MOVED;
    }
    if (f->count >= f->max) {
        f->st.refused_full++;
        return OVL_LEARN_FULL;
    }
    struct fdb_slot *s = fdb_insert(f, mac, vlan);
    s->is_static = 0;
    s->remote = remote;
    s->last_seen = now;
    f->st.learns++;
    return OVL_LEARN_LEARNED;
}

/* 0, or -1 when the table is at its cap. An entry present but expired is replaced (as the reference). */
int ovl_fdb_add_static(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, int32_t remote) {
    int64_t i = fdb_find(f, mac, vlan);
    struct fdb_slot *s;
    if (i >= 0) {
        s = &f->slots[i];
    } else {
        if (f->count >= f->max)
            return -1;
        s = fdb_insert(f, mac, vlan);
    }
    s->is_static = 1;
    s->remote = remote;
    s->last_seen = 0.0;
    return 0;
}

int ovl_fdb_remove(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan) {
    int64_t i = fdb_find(f, mac, vlan);
    if (i < 0)
        return 0;
    fdb_delete(f, (uint32_t)i);
    return 1;
}

uint32_t ovl_fdb_expire(struct ovl_fdb *f, double now) {
    uint32_t n = 0;
    /* After a delete, slot i holds whatever the backward shift moved in: look
     * at it again. A shift only moves entries from later in the scan, or from
     * the wrapped start of a run (already kept, so kept again). */
    for (uint32_t i = 0; i <= f->mask;) {
        if (f->slots[i].used && fdb_expired(f, &f->slots[i], now)) {
            fdb_delete(f, i);
            n++;
        } else {
            i++;
        }
    }
    f->st.aged += n;
    return n;
}

uint32_t ovl_fdb_count(const struct ovl_fdb *f) { return f->count; }

uint32_t ovl_fdb_entries(const struct ovl_fdb *f, double now, struct ovl_fdb_entry *out, uint32_t cap) {
    uint32_t n = 0;
    for (uint32_t i = 0; i <= f->mask && n < cap; i++) {
        const struct fdb_slot *s = &f->slots[i];
        if (!s->used)
            continue;
        memcpy(out[n].mac, s->mac, ETH_ALEN);
        out[n].vlan = s->vlan;
        out[n].is_static = s->is_static;
        out[n].remote = s->remote;
        out[n].age = s->is_static ? 0.0 : now - s->last_seen;
        n++;
    }
    return n;
}

void ovl_fdb_get_stats(const struct ovl_fdb *f, struct ovl_fdb_stats *out) { *out = f->st; }

/* ---- the datapath context --------------------------------------------------------------- */

#define UDP_GSO_MAX_SEGS 64 /* segments per UDP_SEGMENT send (the kernel's limit on older kernels) */
#define UDP_GSO_MAX_BYTES 65000 /* UDP payload per UDP_SEGMENT send (under 64 KiB with the headers) */
#define UDP_GRO_SLOT 65536      /* a coalesced UDP_GRO buffer */
#define RX_GRO_SPLIT 64         /* datagrams per GRO buffer we keep (rx entries per batch slot) */
#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#define OVL_UDP_SEGMENT 103
#define OVL_UDP_GRO 104
#define RX_CMSG CMSG_SPACE(sizeof(int))

struct ovl_io {
    struct mmsghdr *tx_msg; /* batch * n_remotes */
    struct iovec gso_iov[2 * UDP_GSO_MAX_SEGS];                 /* one UDP_SEGMENT send */
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } gso_cmsg;
    char *rx_cmsg;          /* batch * RX_CMSG bytes (udp_gro) */
    struct iovec *tx_iov;   /* 2 per tx message: outer header, inner frame */
    struct mmsghdr *rx_msg; /* batch */
    struct iovec *rx_iov;
    struct sockaddr_in *rx_addr;
    struct sockaddr_in dst[OVL_MAX_REMOTES]; /* remote address, port 0 (raw socket) */
    struct sockaddr_in udp_dst[OVL_MAX_REMOTES]; /* remote address, VXLAN port (UDP GSO sockets) */
};

/* RX coalescing (see rx_coalesced). */
#define CO_FLOWS 8 /* flows coalesced at once per batch */
#define TCP_ACK 0x10

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
    uint8_t vnet[12];
    struct iovec *iov; /* [0] virtio header, [1] first frame, [2..] further payloads */
};

struct ovl_co {
    struct co_flow flow[CO_FLOWS];
};

/* Receive side of the VLAN map: tunnel id -> VID, sorted by id for a binary search. */
struct ovl_vlan_id {
    uint32_t id;
    uint16_t vlan;
};

static int cmp_vlan_id(const void *a, const void *b) {
    uint32_t x = ((const struct ovl_vlan_id *)a)->id, y = ((const struct ovl_vlan_id *)b)->id;
    return (x > y) - (x < y);
}

/* The VLAN that tunnel id tid is mapped to, or 0 (mapped VLANs are 1..4094). */
static uint16_t vlan_of_id(const struct ovl_dp *dp, uint32_t tid) {
    const struct ovl_vlan_id *v = dp->vlan_of_id;
    uint32_t lo = 0, hi = dp->cfg.n_vlans;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (v[mid].id == tid)
            return v[mid].vlan;
        if (v[mid].id < tid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* DatapathConfig._check_vlan_map, as far as the C side relies on it; builds dp->vlan_of_id. 0 or -1. */
static int vlan_map_init(struct ovl_dp *dp) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t n = 0, base = base_id(c);
    if (c->vlan_mapped[0] || c->vlan_mapped[OVL_VLAN_COUNT - 1] || c->n_vlans > OVL_VLAN_COUNT - 2)
        return -1;
    dp->vlan_of_id = calloc(c->n_vlans ? c->n_vlans : 1, sizeof(*dp->vlan_of_id));
    if (!dp->vlan_of_id)
        return -1;
    for (uint32_t v = 1; v < OVL_VLAN_COUNT - 1; v++) {
        if (!c->vlan_mapped[v])
            continue;
        uint32_t tid = c->vlan_tid[v];
        if (n == c->n_vlans || tid == base || (c->mode == OVL_MODE_VXLAN && tid > 0xFFFFFF))
            return -1;
        dp->vlan_of_id[n].id = tid;
        dp->vlan_of_id[n].vlan = (uint16_t)v;
        n++;
    }
    if (n != c->n_vlans)
        return -1;
    qsort(dp->vlan_of_id, n, sizeof(*dp->vlan_of_id), cmp_vlan_id);
    for (uint32_t i = 1; i < n; i++)
        if (dp->vlan_of_id[i].id == dp->vlan_of_id[i - 1].id)
            return -1;
    return 0;
}

void ovl_dp_free(struct ovl_dp *dp) {
    if (!dp)
        return;
    ovl_fdb_free(dp->fdb);
    free(dp->vlan_of_id);
    free(dp->tx_in);
    free(dp->tx_out);
    free(dp->rx);
    free(dp->tx_buf);
    free(dp->rx_buf);
    free(dp->seg_buf);
    free(dp->tap_rd);
    if (dp->co) {
        for (int k = 0; k < CO_FLOWS; k++)
            free(dp->co->flow[k].iov);
        free(dp->co);
    }
    if (dp->io) {
        free(dp->io->tx_msg);
        free(dp->io->tx_iov);
        free(dp->io->rx_msg);
        free(dp->io->rx_iov);
        free(dp->io->rx_addr);
        free(dp->io->rx_cmsg);
        free(dp->io);
    }
    free(dp);
}

/* NULL if the configuration is out of range or memory is short. */
struct ovl_dp *ovl_dp_new(const struct ovl_config *cfg) {
    const struct ovl_config *c = cfg;
    if (c->mode > OVL_MODE_GRE || c->n_remotes < 1 || c->n_remotes > OVL_MAX_REMOTES || c->batch < 1 ||
        c->batch > OVL_MAX_BATCH || c->slot_size < ovl_outer_len(c) + ETH_HLEN || c->slot_size > OVL_MAX_SLOT ||
        /* a TAP read cut short at slot_size must fail the too-big check, never pass as a frame */
        c->slot_size + ovl_outer_len(c) <= c->underlay_mtu ||
        c->underlay_mtu > 0xFFFF || c->dport > 0xFFFF || c->ttl > 255 ||
        (c->vnet_hdr_len != 0 && c->vnet_hdr_len != OVL_VNET_HDR_LEN && c->vnet_hdr_len != 12))
        return NULL;
    struct ovl_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    dp->cfg = *c;
    dp->outer_len = ovl_outer_len(c);
    if (vlan_map_init(dp) < 0) {
        ovl_dp_free(dp);
        return NULL;
    }
    size_t nb = c->batch, nout = nb * c->n_remotes;
    dp->fdb = ovl_fdb_new(c->fdb_max, c->fdb_ageing, c->fdb_seed);
    dp->tx_in = calloc(nb, sizeof(*dp->tx_in));
    dp->tx_out = calloc(nout, sizeof(*dp->tx_out));
    dp->rx_slot = c->udp_gro ? UDP_GRO_SLOT : c->slot_size;
    dp->rx_cap = c->udp_gro ? (uint32_t)nb * RX_GRO_SPLIT : (uint32_t)nb;
    dp->rx = calloc(dp->rx_cap, sizeof(*dp->rx));
    dp->tap_slot = c->vnet_hdr_len ? c->vnet_hdr_len + OVL_TAP_READ : c->slot_size;
    dp->tx_buf = malloc(nb * dp->tap_slot);
    if (c->vnet_hdr_len) {
        dp->seg_buf = malloc(nb * c->slot_size);
        dp->tap_rd = calloc(nb, sizeof(*dp->tap_rd));
        if (!dp->seg_buf || !dp->tap_rd) {
            ovl_dp_free(dp);
            return NULL;
        }
        if (c->rx_coalesce) {
            dp->co = calloc(1, sizeof(*dp->co));
            if (!dp->co) {
                ovl_dp_free(dp);
                return NULL;
            }
            for (int k = 0; k < CO_FLOWS; k++) {
                dp->co->flow[k].iov = calloc(dp->rx_cap + 2, sizeof(struct iovec));
                if (!dp->co->flow[k].iov) {
                    ovl_dp_free(dp);
                    return NULL;
                }
            }
        }
    }
    dp->rx_buf = malloc(nb * dp->rx_slot);
    dp->io = calloc(1, sizeof(*dp->io));
    if (!dp->fdb || !dp->tx_in || !dp->tx_out || !dp->rx || !dp->tx_buf || !dp->rx_buf || !dp->io) {
        ovl_dp_free(dp);
        return NULL;
    }
    struct ovl_io *io = dp->io;
    io->tx_msg = calloc(nout, sizeof(*io->tx_msg));
    io->tx_iov = calloc(2 * nout, sizeof(*io->tx_iov));
    io->rx_msg = calloc(nb, sizeof(*io->rx_msg));
    io->rx_iov = calloc(nb, sizeof(*io->rx_iov));
    io->rx_addr = calloc(nb, sizeof(*io->rx_addr));
    io->rx_cmsg = calloc(nb, RX_CMSG);
    if (!io->tx_msg || !io->tx_iov || !io->rx_msg || !io->rx_iov || !io->rx_addr || !io->rx_cmsg) {
        ovl_dp_free(dp);
        return NULL;
    }
    for (uint32_t r = 0; r < c->n_remotes; r++) {
        io->dst[r].sin_family = AF_INET;
        io->dst[r].sin_addr.s_addr = c->remote_addr[r];
        io->udp_dst[r] = io->dst[r];
        io->udp_dst[r].sin_port = htons((uint16_t)c->dport);
    }
    for (uint32_t k = 0; k < OVL_GSO_SOCKETS; k++)
        dp->gso_fd[k] = -1;
    return dp;
}

static void drop(struct ovl_dp *dp, int reason) { dp->drops[reason]++; }

/* What ovl_tx_process works out once per frame and every copy of a flood shares. */
struct tx_frame {
    struct tunnel_id t;
    uint32_t hash;
    uint64_t fsum;
};

static void emit(struct ovl_dp *dp, uint32_t *k, uint32_t in, uint32_t r, const struct tx_frame *tf) {
    struct ovl_tx_out *o = &dp->tx_out[(*k)++];
    o->frame = in;
    o->remote = (uint16_t)r;
    o->hdr_len = (uint16_t)outer_header(&dp->cfg, r, tf->t, dp->tx_in[in].len, tf->hash, tf->fsum, o->hdr);
}

/* PyForwarder.tx: tx_in[0..n) -> tx_out; returns the number of packets. */
uint32_t ovl_tx_process(struct ovl_dp *dp, uint32_t n, double now) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t k = 0;
    if (n > c->batch)
        n = c->batch; /* tx_out holds batch * n_remotes packets */
    for (uint32_t i = 0; i < n; i++) {
        struct ovl_tx_in *in = &dp->tx_in[i];
        dp->stats.tap_rx++;
        if (in->len < ETH_HLEN) {
            drop(dp, OVL_DROP_TX_RUNT);
            continue;
        }
        uint16_t vlan = frame_vlan(in->data, in->len);
        struct tx_frame tf = {base_tunnel(c), 0, 0};
        if (c->vlan_mapped[vlan]) {
            /* A mapped VLAN: untagged, in its own id. Strip the tag in place
             * by moving the MAC addresses over it. */
            tf.t.id = c->vlan_tid[vlan];
            tf.t.keyed = 1;
            memmove(in->data + VLAN_HLEN, in->data, 2 * ETH_ALEN);
            in->data += VLAN_HLEN;
            in->len -= VLAN_HLEN;
        }
        const uint8_t *f = in->data;
        uint32_t len = in->len;
        if (outer_len(c, tf.t.keyed) + (uint64_t)len > c->underlay_mtu) {
            drop(dp, OVL_DROP_TX_TOO_BIG);
            continue;
        }
        if (c->mode == OVL_MODE_VXLAN) {
            tf.hash = ovl_flow_hash(f, len);
            if (c->udp_csum)
                tf.fsum = sum16(f, len);
        }
        /* Multicast destinations are not looked up (a lookup may age an entry out). */
        int32_t r = (f[0] & 1) ? -1 : ovl_fdb_lookup(dp->fdb, f, vlan, now);
        if (r >= 0 && (uint32_t)r < c->n_remotes) {
            dp->stats.tx_unicast++;
            emit(dp, &k, i, (uint32_t)r, &tf);
            continue;
        }
        /* Broadcast, multicast, unknown unicast: head-end replication. */
        dp->stats.tx_flooded++;
        for (uint32_t j = 0; j < c->n_remotes; j++) {
            dp->remotes[j].tx_flood++;
            emit(dp, &k, i, j, &tf);
        }
    }
    return k;
}

/* PyForwarder.rx: fills rx[i].remote and rx[i].result; returns frames to deliver. */
uint32_t ovl_rx_process(struct ovl_dp *dp, uint32_t n, double now) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t delivered = 0;
    if (n > dp->rx_cap)
        n = dp->rx_cap;
    for (uint32_t i = 0; i < n; i++) {
        struct ovl_rx *e = &dp->rx[i];
        int32_t r = -1;
        e->remote = -1;
        /* From the last: with a repeated address the reference's dict keeps the last index. */
        for (uint32_t j = c->n_remotes; j-- > 0;) {
            if (c->remote_addr[j] == e->src) {
                r = (int32_t)j;
                break;
            }
        }
        int res;
        uint32_t tid = 0;
        uint16_t vlan = 0, tag = 0;
        if (r < 0)
            res = -OVL_DROP_RX_NOT_REMOTE;
        else if (e->truncated)
            res = -OVL_DROP_RX_TRUNCATED;
        else
            res = ovl_parse(c, e->data, e->len, &tid);
        if (res >= 0) {
            if (tid == base_id(c))
                vlan = frame_vlan(e->data + res, e->len - (uint32_t)res); /* as it came (trunk) */
            else if ((tag = vlan_of_id(dp, tid)) != 0)
                vlan = tag;
            else
                res = bad_id(c);
        }
        if (res >= 0) {
            const uint8_t *src = e->data + res + ETH_ALEN; /* parse checked len >= res + ETH_HLEN */
            static const uint8_t zero[ETH_ALEN];
            if ((src[0] & 1) || !memcmp(src, zero, ETH_ALEN))
                res = -OVL_DROP_RX_BAD_SRC_MAC;
        }
        if (res >= 0 && tag) {
            /* Insert the tag in place: the MAC addresses move down into the
             * outer header's room (res >= VXLAN_HLEN > VLAN_HLEN). */
            uint8_t *f = e->data + res - VLAN_HLEN;
            memmove(f, f + VLAN_HLEN, 2 * ETH_ALEN);
            put16(f + 12, ETH_P_8021Q);
            put16(f + 14, tag);
            res -= VLAN_HLEN;
        }
        e->result = res;
        if (res < 0) {
            drop(dp, -res);
            continue;
        }
        ovl_fdb_learn(dp->fdb, e->data + res + ETH_ALEN, vlan, r, now);
        e->remote = r;
        delivered++;
    }
    return delivered;
}

/* ---- I/O ------------------------------------------------------------------------------ */

static int again(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

static uint32_t tx_send_gso_run(struct ovl_dp *dp, uint32_t m, uint32_t k);

/* Send tx_out[0..k) with sendmmsg: outer header + inner frame of each (or with UDP GSO). */
static void tx_send(struct ovl_dp *dp, uint32_t k, int send_fd) {
    struct ovl_io *io = dp->io;
    if (dp->n_gso_fd && !dp->gso_off && dp->cfg.mode == OVL_MODE_VXLAN) {
        uint32_t m = 0;
        while (m < k) {
            uint32_t done = tx_send_gso_run(dp, m, k);
            if (!done)
                break; /* GSO refused: the rest goes the plain way */
            m += done;
        }
        if (m == k)
            return;
        memmove(dp->tx_out, dp->tx_out + m, (k - m) * sizeof(*dp->tx_out));
        k -= m;
    }
    for (uint32_t m = 0; m < k; m++) {
        const struct ovl_tx_out *o = &dp->tx_out[m];
        struct iovec *iov = &io->tx_iov[2 * m];
        iov[0].iov_base = (void *)o->hdr;
        iov[0].iov_len = o->hdr_len;
        iov[1].iov_base = (void *)dp->tx_in[o->frame].data;
        iov[1].iov_len = dp->tx_in[o->frame].len;
        memset(&io->tx_msg[m], 0, sizeof(io->tx_msg[m]));
        io->tx_msg[m].msg_hdr.msg_name = &io->dst[o->remote];
        io->tx_msg[m].msg_hdr.msg_namelen = sizeof(io->dst[0]);
        io->tx_msg[m].msg_hdr.msg_iov = iov;
        io->tx_msg[m].msg_hdr.msg_iovlen = 2;
    }
    /* sendmmsg stops at the first failing message and reports the messages
     * before it; the next call then returns that message's error. Count it
     * and go on with the one after. */
    for (uint32_t m = 0; m < k;) {
        int sent = sendmmsg(send_fd, &io->tx_msg[m], k - m, 0);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            drop(dp, OVL_DROP_TX_ERROR);
            m++;
            continue;
        }
        for (int s = 0; s < sent; s++, m++) {
            const struct ovl_tx_out *o = &dp->tx_out[m];
            dp->remotes[o->remote].tx_packets++;
            dp->remotes[o->remote].tx_bytes += dp->tx_in[o->frame].len;
        }
    }
}

/* VXLAN through the UDP sockets of dp->gso_fd (UDP_SEGMENT): runs of packets to the same
 * remote, in the same VNI, from the same socket (picked by the flow's source port) and of
 * one size (the last may be shorter) leave in one sendmsg, which the kernel cuts into
 * datagrams. The kernel builds the outer IPv4 and UDP headers (with a UDP checksum: it
 * refuses GSO without); the VXLAN header is the one outer_header built. Returns the
 * number of packets from m handled; 0 if the kernel cannot do it (then dp->gso_off). */
static uint32_t tx_send_gso_run(struct ovl_dp *dp, uint32_t m, uint32_t k) {
    struct ovl_io *io = dp->io;
    const struct ovl_tx_out *o = &dp->tx_out[m];
    uint32_t seg = VXLAN_HLEN + dp->tx_in[o->frame].len;
    uint32_t port = get16(o->hdr + IPV4_HLEN), fd_i = port % dp->n_gso_fd;
    uint32_t j = m, total = 0;
    while (j < k && j - m < UDP_GSO_MAX_SEGS) {
        const struct ovl_tx_out *x = &dp->tx_out[j];
        uint32_t len = VXLAN_HLEN + dp->tx_in[x->frame].len;
        if (j > m && (x->remote != o->remote || get16(x->hdr + IPV4_HLEN) % dp->n_gso_fd != fd_i ||
                      memcmp(x->hdr + IPV4_HLEN + UDP_HLEN, o->hdr + IPV4_HLEN + UDP_HLEN, VXLAN_HLEN) ||
                      len > seg || total + len > UDP_GSO_MAX_BYTES))
            break;
        struct iovec *iov = &io->gso_iov[2 * (j - m)];
        iov[0].iov_base = (void *)(x->hdr + IPV4_HLEN + UDP_HLEN);
        iov[0].iov_len = VXLAN_HLEN;
        iov[1].iov_base = dp->tx_in[x->frame].data;
        iov[1].iov_len = dp->tx_in[x->frame].len;
        total += len;
        j++;
        if (len < seg) /* a shorter one ends the run */
            break;
    }
    struct msghdr msg;
    memset(&msg, 0, sizeof(msg));
    msg.msg_name = &io->udp_dst[o->remote];
    msg.msg_namelen = sizeof(io->udp_dst[0]);
    msg.msg_iov = io->gso_iov;
    msg.msg_iovlen = 2 * (j - m);
    if (j - m > 1) {
        uint16_t size = (uint16_t)seg;
        msg.msg_control = io->gso_cmsg.buf;
        msg.msg_controllen = sizeof(io->gso_cmsg.buf);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = OVL_UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(size));
        memcpy(CMSG_DATA(cm), &size, sizeof(size));
    }
    ssize_t w;
    do
        w = sendmsg(dp->gso_fd[fd_i], &msg, 0);
    while (w < 0 && errno == EINTR);
    if (w < 0 && errno == EIO && j - m > 1) { /* the egress device cannot: plain sends from now on */
        dp->gso_off = 1;
        return 0;
    }
    for (uint32_t x = m; x < j; x++) {
        const struct ovl_tx_out *p = &dp->tx_out[x];
        if (w < 0) {
            drop(dp, OVL_DROP_TX_ERROR);
            continue;
        }
        dp->remotes[p->remote].tx_packets++;
        dp->remotes[p->remote].tx_bytes += dp->tx_in[p->frame].len;
    }
    if (w >= 0 && j - m > 1)
        dp->stats.tx_gso++;
    return j - m;
}

/* A frame from the TAP that never reaches ovl_tx_process: counted as read, and dropped. */
static void tap_drop(struct ovl_dp *dp, int reason) {
    dp->stats.tap_rx++;
    drop(dp, reason);
}

/* Frames read with a virtio header (tap_rd[0..n)) -> tx_in: super-frames cut into
 * segments in seg_buf, partial checksums completed in place. tx_in holds a batch;
 * whenever it is full it is processed and sent, so a 64 KiB super-frame to many
 * remotes goes out in several sendmmsg calls. */
static void tx_offloaded(struct ovl_dp *dp, uint32_t n, int send_fd, double now) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t vlen = c->vnet_hdr_len, m = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *buf = dp->tap_rd[i].data;
        uint32_t len = dp->tap_rd[i].len;
        if (len < vlen) {
            tap_drop(dp, OVL_DROP_TX_BAD_OFFLOAD);
            continue;
        }
        if (len >= dp->tap_slot) { /* may have been cut by the read: too big anyway */
            tap_drop(dp, OVL_DROP_TX_TOO_BIG);
            continue;
        }
        struct vnet_hdr v;
        vnet_read(buf, &v);
        uint8_t *f = buf + vlen;
        len -= vlen;
        if (v.gso_type == OVL_VNET_GSO_NONE) {
            if ((v.flags & OVL_VNET_F_NEEDS_CSUM) && csum_complete(&v, f, len) < 0) {
                tap_drop(dp, OVL_DROP_TX_BAD_OFFLOAD);
                continue;
            }
            if (m == c->batch) {
                tx_send(dp, ovl_tx_process(dp, m, now), send_fd);
                m = 0;
            }
            dp->tx_in[m].data = f;
            dp->tx_in[m++].len = len;
            continue;
        }
        struct tso t;
        int res = tso_prepare(&t, &v, f, len);
        if (res < 0) {
            tap_drop(dp, -res);
            continue;
        }
        if (t.hdrs + t.mss > c->slot_size) { /* segments larger than any the underlay takes */
            tap_drop(dp, OVL_DROP_TX_TOO_BIG);
            continue;
        }
        dp->stats.tap_rx_gso++;
        for (uint32_t s = 0; s < t.nseg; s++) {
            if (m == c->batch) {
                tx_send(dp, ovl_tx_process(dp, m, now), send_fd);
                m = 0;
            }
            uint8_t *seg = dp->seg_buf + (size_t)m * c->slot_size;
            dp->tx_in[m].data = seg;
            dp->tx_in[m++].len = tso_write(&t, s, seg);
        }
    }
    if (m)
        tx_send(dp, ovl_tx_process(dp, m, now), send_fd);
}

/* PyForwarder.from_tap: read up to a batch from the (non-blocking) TAP,
 * process it, and send with sendmmsg. Returns frames read; an error other
 * than "nothing more to read" ends the batch and is left in dp->io_errno.
 * With a virtio header (cfg.vnet_hdr_len) the frames go through tx_offloaded. */
int ovl_from_tap(struct ovl_dp *dp, int tap_fd, int send_fd, double now) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t n = 0;
    dp->io_errno = 0;
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
        struct ovl_tx_in *in = c->vnet_hdr_len ? &dp->tap_rd[n] : &dp->tx_in[n];
        in->data = slot;
        in->len = (uint32_t)got;
        n++;
    }
    if (c->vnet_hdr_len)
        tx_offloaded(dp, n, send_fd, now);
    else
        tx_send(dp, ovl_tx_process(dp, n, now), send_fd);
    return (int)n;
}

/* ---- RX coalescing: inner TCP segments of a batch written to the TAP as one super-frame ----
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
 * its flow's super-frame first writes that super-frame out, so a flow's order is kept. */

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
     * merged, its checksum would be recomputed and the damage hidden. */
    uint32_t l4len = len - s->l4;
    return fold(pseudo_sum(f + l3, s->v6, l4len) + sum16(f + s->l4, l4len)) == 0 ? 2 : 1;
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
    /* ack, data offset (equal hdrs), window; options */
    return !memcmp(x + a->l4 + 8, y + s->l4 + 8, 4) && !memcmp(x + a->l4 + 14, y + s->l4 + 14, 2) &&
           !memcmp(x + a->l4 + TCP_HLEN, y + s->l4 + TCP_HLEN, a->hdrs - a->l4 - TCP_HLEN);
}

/* Write one frame (or super-frame) as iov[1..cnt), with virtio header vnet in iov[0]. */
static ssize_t tap_writev(struct ovl_dp *dp, int tap_fd, const uint8_t *vnet, struct iovec *iov, int cnt) {
    ssize_t w;
    iov[0].iov_base = (void *)vnet;
    iov[0].iov_len = dp->cfg.vnet_hdr_len;
    do
        w = writev(tap_fd, iov, cnt);
    while (w < 0 && errno == EINTR);
    return w;
}

static void co_delivered(struct ovl_dp *dp, int32_t remote, uint32_t n, uint64_t bytes, ssize_t w) {
    if (w < 0) {
        dp->drops[OVL_DROP_RX_TAP_ERROR] += n;
        return;
    }
    dp->stats.tap_tx += n;
    dp->remotes[remote].rx_packets += n;
    dp->remotes[remote].rx_bytes += bytes;
}

/* Write flow c out (a super-frame if it has several segments) and free it. */
static void co_flush(struct ovl_dp *dp, struct co_flow *c, int tap_fd) {
    static const uint8_t no_offload[12];
    const struct co_seg *a = &c->first;
    const uint8_t *vnet = no_offload;
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
        put16(tcp + 16, (uint16_t)~fold(pseudo_sum(ip, a->v6, l4len)));
        struct vnet_hdr v = {OVL_VNET_F_NEEDS_CSUM, a->v6 ? OVL_VNET_GSO_TCPV6 : OVL_VNET_GSO_TCPV4,
                             (uint16_t)a->hdrs, (uint16_t)c->mss, (uint16_t)a->l4, 16};
        memset(c->vnet, 0, sizeof(c->vnet));
        c->vnet[0] = v.flags;
        c->vnet[1] = v.gso_type;
        memcpy(c->vnet + 2, &v.hdr_len, 2);
        memcpy(c->vnet + 4, &v.gso_size, 2);
        memcpy(c->vnet + 6, &v.csum_start, 2);
        memcpy(c->vnet + 8, &v.csum_offset, 2);
        vnet = c->vnet;
        dp->stats.tap_tx_gso++;
    }
    co_delivered(dp, c->remote, c->n, c->bytes, tap_writev(dp, tap_fd, vnet, c->iov, (int)c->n + 1));
    c->used = 0;
}

static void co_start(struct co_flow *c, const struct co_seg *s, int32_t remote) {
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
    c->iov[1].iov_base = s->f;
    c->iov[1].iov_len = s->len;
}

static void co_append(struct co_flow *c, const struct co_seg *s) {
    c->iov[c->n + 1].iov_base = s->f + s->hdrs;
    c->iov[c->n + 1].iov_len = s->payload;
    c->n++;
    c->total += s->payload;
    c->next_seq += s->payload;
    c->bytes += s->len;
    c->last_flags = s->f[s->l4 + 13];
    c->closed = (c->last_flags & TCP_PSH) || s->payload < c->mss;
}

/* The delivered frames of rx[0..n) to the TAP, TCP segments coalesced. */
static void rx_coalesced(struct ovl_dp *dp, uint32_t n, int tap_fd) {
    struct ovl_co *co = dp->co;
    for (uint32_t i = 0; i < n; i++) {
        const struct ovl_rx *e = &dp->rx[i];
        if (e->result < 0)
            continue;
        struct co_seg s;
        uint8_t *f = e->data + e->result;
        uint32_t len = e->len - (uint32_t)e->result;
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
        if (c && kind == 2 && co_fits(c, &s, e->remote)) {
            co_append(c, &s);
            continue;
        }
        if (c) { /* the segment ends its flow's super-frame */
            co_flush(dp, c, tap_fd);
            free_slot = c;
        }
        if (kind == 2 && free_slot) {
            co_start(free_slot, &s, e->remote);
            continue;
        }
        static const uint8_t no_offload[12];
        struct iovec iov[2] = {{NULL, 0}, {f, len}};
        co_delivered(dp, e->remote, 1, len, tap_writev(dp, tap_fd, no_offload, iov, 2));
    }
    for (int k = 0; k < CO_FLOWS; k++)
        if (co->flow[k].used)
            co_flush(dp, &co->flow[k], tap_fd);
}

/* PyForwarder.from_tunnel: recvmmsg up to a batch, process, write each inner
 * frame to the TAP. Returns packets received. */
int ovl_from_tunnel(struct ovl_dp *dp, int recv_fd, int tap_fd, double now) {
    const struct ovl_config *c = &dp->cfg;
    struct ovl_io *io = dp->io;
    dp->io_errno = 0;
    for (uint32_t i = 0; i < c->batch; i++) {
        io->rx_iov[i].iov_base = dp->rx_buf + (size_t)i * dp->rx_slot;
        io->rx_iov[i].iov_len = dp->rx_slot;
        memset(&io->rx_msg[i], 0, sizeof(io->rx_msg[i]));
        io->rx_msg[i].msg_hdr.msg_name = &io->rx_addr[i];
        io->rx_msg[i].msg_hdr.msg_namelen = sizeof(io->rx_addr[i]);
        io->rx_msg[i].msg_hdr.msg_iov = &io->rx_iov[i];
        io->rx_msg[i].msg_hdr.msg_iovlen = 1;
        if (c->udp_gro) {
            io->rx_msg[i].msg_hdr.msg_control = io->rx_cmsg + (size_t)i * RX_CMSG;
            io->rx_msg[i].msg_hdr.msg_controllen = RX_CMSG;
        }
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
        uint32_t src = h->msg_namelen >= sizeof(struct sockaddr_in) ? io->rx_addr[i].sin_addr.s_addr : 0;
        uint32_t gso = 0;
        if (len > dp->rx_slot) /* never trust a length beyond the slot */
            len = dp->rx_slot;
        if (c->udp_gro && !(h->msg_flags & MSG_CTRUNC)) {
            /* UDP_GRO: several datagrams of gso bytes (the last may be shorter) in one buffer. */
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR(h, cm)) {
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == OVL_UDP_GRO && cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
                    int v;
                    memcpy(&v, CMSG_DATA(cm), sizeof(v));
                    gso = v > 0 ? (uint32_t)v : 0;
                }
            }
        }
        if (gso && len > gso)
            dp->stats.rx_gro++;
        uint32_t off = 0;
        do {
            uint32_t piece = gso && len - off > gso ? gso : len - off;
            if (n == dp->rx_cap) { /* more datagrams than rx entries: the rest is lost */
                drop(dp, OVL_DROP_RX_TRUNCATED);
                break;
            }
            struct ovl_rx *e = &dp->rx[n++];
            e->data = data + off;
            e->len = piece;
            /* A datagram bigger than a ring slot (only a GRO slot can hold one) is
             * too big for anything the underlay MTU allows: dropped as truncated, as without GRO. */
            e->truncated = truncated || piece > c->slot_size;
            e->src = src;
            off += piece;
        } while (off < len);
    }
    got = (int)n;
    ovl_rx_process(dp, (uint32_t)got, now);
    if (dp->co) {
        rx_coalesced(dp, (uint32_t)got, tap_fd);
        return got;
    }
    for (int i = 0; i < got; i++) {
        const struct ovl_rx *e = &dp->rx[i];
        if (e->result < 0)
            continue;
        size_t flen = e->len - (uint32_t)e->result;
        ssize_t w;
        if (c->vnet_hdr_len) { /* a zeroed virtio header: a complete frame, nothing to offload */
            static const uint8_t no_offload[12];
            struct iovec iov[2] = {{(void *)no_offload, c->vnet_hdr_len}, {e->data + e->result, flen}};
            do
                w = writev(tap_fd, iov, 2);
            while (w < 0 && errno == EINTR);
        } else {
            do
                w = write(tap_fd, e->data + e->result, flen);
            while (w < 0 && errno == EINTR);
        }
        if (w < 0) {
            drop(dp, OVL_DROP_RX_TAP_ERROR);
            continue;
        }
        dp->stats.tap_tx++;
        dp->remotes[e->remote].rx_packets++;
        dp->remotes[e->remote].rx_bytes += flen;
    }
    return got;
}
