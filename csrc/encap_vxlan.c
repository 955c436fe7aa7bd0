/* encap_vxlan.c: VXLAN (RFC 7348; vxlan.py): outer IPv4 + UDP to the configured port
 * + an 8-byte header, flags 0x08 (I bit) and a 24-bit VNI. */
#include "internal.h"

#define VXLAN_HLEN 8
#define VXLAN_FLAG_I 0x08
#define VXLAN_OUTER (IPV4_HLEN + UDP_HLEN + VXLAN_HLEN)

static uint32_t vxlan_outer_len(uint32_t keyed) {
    (void)keyed; /* the VNI is always there */
    return VXLAN_OUTER;
}

static void vxlan_tpl(const struct ovl_config *c, uint8_t *v, uint64_t *l4_sum) {
    (void)c;
    put32(v, (uint32_t)VXLAN_FLAG_I << 24);
    *l4_sum += sum16(v, VXLAN_HLEN);
}

static uint32_t vxlan_push(const struct ovl_config *c, const struct ovl_outer *o, uint8_t *h,
                           const struct tx_frame *tf, uint32_t flen) {
    uint32_t udp_len = UDP_HLEN + VXLAN_HLEN + flen, vni = tf->t.id << 8;
    put32(h + o->ip_hlen + UDP_HLEN + 4, vni);
    udp_patch(c, o, h, tf->hash, udp_len, (vni >> 16) + (vni & 0xFFFF), tf->fsum);
    ip_patch(h, o, o->ip_hlen + udp_len);
    return o->ip_hlen + UDP_HLEN + VXLAN_HLEN;
}

/* vxlan.parse: p is the UDP payload (over IPv4 and IPv6 alike). */
static int vxlan_parse(const uint8_t *p, size_t n, uint32_t v6, uint32_t *vni) {
    (void)v6;
    if (n < VXLAN_HLEN + ETH_HLEN)
        return -OVL_DROP_RX_TRUNCATED;
    if (!(p[0] & VXLAN_FLAG_I))
        return -OVL_DROP_RX_BAD_FLAGS;
    *vni = (uint32_t)p[4] << 16 | (uint32_t)p[5] << 8 | p[6];
    return VXLAN_HLEN;
}

const struct ovl_encap_ops encap_vxlan = {
    .name = "vxlan",
    .ip_proto = IPPROTO_UDP,
    .udp = 1,
    .udp_tunnel = 1,
    .id_max = 0xFFFFFF,
    .bad_id = OVL_DROP_RX_BAD_VNI,
    .outer_len = vxlan_outer_len,
    .tpl = vxlan_tpl,
    .push = vxlan_push,
    .parse = vxlan_parse,
};
