/* encap.c: encapsulation as a type. The one table of encapsulations (the only place
 * that chooses by protocol), what they share (the outer IPv4 header, the UDP header of
 * the encapsulations in UDP, the templates built once per remote), and the per-packet
 * codec entry points (vxlan/gre .encap, .parse, .decap). Adding one means one
 * encap_*.c and one entry here. */
#include "internal.h"

static const struct ovl_encap_ops *const encaps[OVL_ENCAP_COUNT] = {
    [OVL_ENCAP_VXLAN] = &encap_vxlan,
    [OVL_ENCAP_GRE] = &encap_gre,
};

const struct ovl_encap_ops *encap_ops(uint32_t id) { return id < OVL_ENCAP_COUNT ? encaps[id] : NULL; }

const char *ovl_encap_name(uint32_t id) { return id < OVL_ENCAP_COUNT ? encaps[id]->name : NULL; }

struct tunnel_id base_tunnel(const struct ovl_config *c) {
    struct tunnel_id t = {c->id, c->keyed};
    return t;
}

/* Config.outer_len: with the base id. */
uint32_t ovl_outer_len(const struct ovl_config *c) { return c->ops->outer_len(c->keyed); }

int tx_frame_sums(const struct ovl_config *c, const uint8_t *f, size_t len, struct tx_frame *tf) {
    tf->hash = 0;
    tf->fsum = 0;
    if (!c->ops->udp)
        return 0;
    if (len < ETH_HLEN) /* the flow hash needs an Ethernet header */
        return -OVL_DROP_TX_RUNT;
    tf->hash = ovl_flow_hash(f, len);
    if (c->udp_csum || (c->n_v6 && !c->udp6_zero_csum_tx)) /* the IPv6 remotes' copies need it */
        tf->fsum = sum16(f, len);
    return 0;
}

/* ---- the outer IPv4 header (ipv4.build_header) and UDP header ---- */

void outer_template(const struct ovl_config *c, uint32_t r, struct ovl_outer *o) {
    uint8_t *h = o->hdr, *l4;
    memset(o, 0, sizeof(*o));
    if (c->remote_v6[r]) {
        outer_template6(c, r, o); /* ipv6.c */
    } else {
        h[0] = 0x45; /* version 4, no options; length, id and checksum stay 0 (the kernel fills in the id) */
        put16(h + 6, IP_DF);
        h[8] = (uint8_t)c->ttl;
        h[9] = c->ops->ip_proto;
        memcpy(h + 12, c->remote_local[r] + 12, 4); /* stored mapped, in network order */
        memcpy(h + 16, c->remote_addr[r] + 12, 4);
        o->ip_sum = sum16(h, IPV4_HLEN);
        o->ip_hlen = IPV4_HLEN;
        o->udp_csum = c->udp_csum;
        /* Pseudo-header (RFC 768): addresses and protocol. */
        o->l4_sum = sum16(h + 12, 8) + IPPROTO_UDP;
    }
    l4 = h + o->ip_hlen;
    if (c->ops->udp) {
        put16(l4 + 2, c->port);
        o->l4_sum += c->port; /* and the destination port */
        l4 += UDP_HLEN;
    } else {
        o->l4_sum = 0;
    }
    c->ops->tpl(c, l4, &o->l4_sum);
}

void ip4_patch(uint8_t *h, const struct ovl_outer *o, uint32_t total) {
    put16(h + 2, total);
    put16(h + 10, fold(o->ip_sum + total));
}

void udp_patch(const struct ovl_config *c, const struct ovl_outer *o, uint8_t *h, uint32_t hash, uint32_t udp_len,
               uint64_t var_sum, uint64_t fsum) {
    uint8_t *u = h + o->ip_hlen;
    /* udp_flow_src_port(): scale the hash into [MIN, MAX). */
    uint32_t sport = SRC_PORT_MIN + (uint32_t)(((uint64_t)hash * (SRC_PORT_MAX - SRC_PORT_MIN)) >> 32);
    (void)c;
    put16(u, sport);
    put16(u + 4, udp_len);
    if (o->udp_csum) {
        /* The template's words, the length (pseudo-header and header), the source port, the
         * patched encapsulation words, and the frame: it starts at an even offset of the UDP
         * segment, so its own word sum can simply be added. 0 is sent as 0xFFFF. The same over
         * IPv6: the 32-bit pseudo-header length of a datagram under 64 KiB is one word. */
        uint16_t cs = fold(o->l4_sum + 2 * (uint64_t)udp_len + sport + var_sum + fsum);
        put16(u + 6, cs ? cs : 0xFFFF);
    }
}

uint32_t outer_push(const struct ovl_config *c, const struct ovl_outer *o, const struct tx_frame *tf, uint32_t flen,
                    uint8_t *h) {
    memcpy(h, o->hdr, c->ops->outer_len(tf->t.keyed) - IPV4_HLEN + o->ip_hlen);
    return c->ops->push(c, o, h, tf, flen);
}

int ip4_header_len(const uint8_t *p, size_t n) {
    if (n < IPV4_HLEN || p[0] >> 4 != 4)
        return -1;
    size_t ihl = (size_t)(p[0] & 0x0F) * 4;
    if (ihl < IPV4_HLEN || n < ihl)
        return -1;
    return (int)ihl;
}

/* ---- one packet ---- */

int ovl_encap(const struct ovl_config *c, uint32_t r, const uint8_t *frame, size_t len, uint8_t *out, size_t cap) {
    struct tx_frame tf = {base_tunnel(c), 0, 0};
    if (r >= c->n_remotes || r >= OVL_MAX_REMOTES || !c->remote_used[r])
        return -OVL_DROP_TX_ERROR;
    uint32_t hlen = ovl_outer_len(c) + (c->remote_v6[r] ? IPV6_HLEN - IPV4_HLEN : 0);
    int res = tx_frame_sums(c, frame, len, &tf);
    if (res < 0)
        return res;
    if (len > 0xFFFF - hlen || cap < hlen + len) /* IPv4 total length is 16 bits (IPv6: payload length) */
        return -OVL_DROP_TX_TOO_BIG;
    struct ovl_outer o;
    outer_template(c, r, &o);
    outer_push(c, &o, &tf, (uint32_t)len, out);
    memcpy(out + hlen, frame, len);
    return (int)(hlen + len);
}

int ovl_parse(const struct ovl_config *c, const uint8_t *pkt, size_t len, uint32_t *tid) {
    *tid = 0;
    return c->ops->parse(pkt, len, 0, tid);
}

int ovl_parse6(const struct ovl_config *c, const uint8_t *pkt, size_t len, uint32_t v6, uint32_t *tid) {
    *tid = 0;
    return c->ops->parse(pkt, len, v6 != 0, tid);
}

int ovl_decap(const struct ovl_config *c, const uint8_t *pkt, size_t len) {
    uint32_t tid;
    int off = ovl_parse(c, pkt, len, &tid);
    return off >= 0 && tid != c->id ? -c->ops->bad_id : off;
}
