/* encap_gre.c: GRE (RFC 2784, key and sequence number RFC 2890; gre.py): outer IPv4,
 * protocol 47, protocol type 0x6558 (transparent Ethernet bridging), an optional key
 * (K bit, the tunnel id, like OVS options:key). Received: version 0, no routing, the
 * checksum (C bit) verified, the sequence number (S bit) skipped. */
#include "internal.h"

#define GRE_HLEN 4
#define GRE_OPT_LEN 4
#define GRE_CSUM 0x8000
#define GRE_ROUTING 0x4000
#define GRE_KEY 0x2000
#define GRE_SEQ 0x1000
#define GRE_VERSION 0x0007

static uint32_t gre_outer_len(uint32_t keyed) { return IPV4_HLEN + GRE_HLEN + (keyed ? GRE_OPT_LEN : 0); }

static void gre_tpl(const struct ovl_config *c, uint8_t *g, uint64_t *l4_sum) {
    (void)c;
    (void)l4_sum; /* not in UDP */
    put16(g + 2, ETH_P_TEB);
}

static uint32_t gre_push(const struct ovl_config *c, const struct ovl_outer *o, uint8_t *h, const struct tx_frame *tf,
                         uint32_t flen) {
    uint8_t *g = h + o->ip_hlen;
    uint32_t hlen = gre_outer_len(tf->t.keyed) - IPV4_HLEN + o->ip_hlen;
    (void)c;
    put16(g, tf->t.keyed ? GRE_KEY : 0);
    if (tf->t.keyed)
        put32(g + 4, tf->t.id);
    ip_patch(h, o, hlen + flen);
    return hlen;
}

/* gre.parse: p is the whole IPv4 packet, as a raw socket delivers it; v6: the GRE header on
 * (an IPv6 raw socket gives no IPv6 header). */
static int gre_parse(const uint8_t *p, size_t n, uint32_t v6, uint32_t *tid) {
    int ihl = v6 ? 0 : ip4_header_len(p, n);
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

const struct ovl_encap_ops encap_gre = {
    .name = "gre",
    .ip_proto = IPPROTO_GRE,
    .udp = 0,
    .id_max = 0xFFFFFFFF,
    .bad_id = OVL_DROP_RX_BAD_KEY,
    .outer_len = gre_outer_len,
    .tpl = gre_tpl,
    .push = gre_push,
    .parse = gre_parse,
};
