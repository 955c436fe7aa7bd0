/* flow.c: the flow hash (ether.flow_key / fnv1a32) that picks the UDP source port,
 * so that the underlay can spread flows (RFC 7348 section 5). */
#include "internal.h"

#define FNV_OFFSET 0x811C9DC5u
#define FNV_PRIME 0x01000193u

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
