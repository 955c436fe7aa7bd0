/* ipv6.c (issue 11, v6): the IPv6 underlay (datapath/encap/ipv6.py). Every underlay address is
 * 16 bytes: an IPv6 one as it is, an IPv4 one mapped (::ffff:a.b.c.d, RFC 4291 2.5.5.2), so
 * that one hash and one set of arrays hold both; a remote's family is remote_v6[r]. The outer
 * IPv6 header (RFC 8200): version 6, traffic class 0, flow label 0 (as the kernel's vxlan
 * without "flowlabel", and OVS), payload length per packet, next header = the encapsulation's
 * IP protocol, hop limit = the TTL. UDP over IPv6 always carries a checksum (RFC 8200 8.1)
 * unless udp6_zero_csum_tx (RFC 6935): the pseudo-header sum is in the template, the rest per
 * packet as over IPv4 (udp_patch). */
#include "internal.h"

static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};

int addr_is_v4(const uint8_t *a) { return !memcmp(a, v4_mapped, sizeof(v4_mapped)); }

void outer_template6(const struct ovl_config *c, uint32_t r, struct ovl_outer *o) {
    uint8_t *h = o->hdr;
    h[0] = 0x60; /* version 6, traffic class 0, flow label 0 */
    h[6] = c->ops->ip_proto;
    h[7] = (uint8_t)c->ttl;
    memcpy(h + 8, c->remote_local[r], OVL_ADDR_LEN);
    memcpy(h + 24, c->remote_addr[r], OVL_ADDR_LEN);
    o->ip_hlen = IPV6_HLEN;
    o->udp_csum = !c->udp6_zero_csum_tx;
    /* Pseudo-header (RFC 8200 8.1): both addresses and the next header (the length per packet). */
    o->l4_sum = sum16(h + 8, 2 * OVL_ADDR_LEN) + IPPROTO_UDP;
}

void ip_patch(uint8_t *h, const struct ovl_outer *o, uint32_t total) {
    if (o->ip_hlen == IPV6_HLEN)
        put16(h + 4, total - IPV6_HLEN); /* payload length: no extension headers */
    else
        ip4_patch(h, o, total);
}

uint32_t remote_outer_len(const struct ovl_dp *dp, uint32_t r, uint32_t keyed) {
    const struct ovl_config *c = &dp->cfg;
    return c->ops->outer_len(keyed) + (c->remote_v6[r] ? IPV6_HLEN - IPV4_HLEN : 0);
}

int rx6_check_dst(const struct ovl_dp *dp, const struct rx_entry *e, int32_t r) {
    if (!e->has_dst || !memcmp(e->dst, dp->cfg.remote_local[r], OVL_ADDR_LEN))
        return 0;
    return -OVL_DROP_RX_BAD_DST;
}
