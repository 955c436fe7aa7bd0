/* fuzz_common.h: what the libFuzzer harnesses of tests/fuzz/ share.
 *
 * Inputs of the multi-packet targets are records: a meta byte, a 16-bit big-endian
 * length and that many bytes (cut at the end of the input). Every record is copied into
 * a buffer of its own of exactly its size, so that AddressSanitizer reports a read one
 * byte past a packet. An invariant the harness checks that does not hold aborts with a
 * message (libFuzzer saves the input as a crash).
 */
#ifndef OVL_FUZZ_COMMON_H
#define OVL_FUZZ_COMMON_H

#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                                  \
    do {                                                                                             \
        if (!(cond)) {                                                                               \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);             \
            abort();                                                                                 \
        }                                                                                            \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The next record of in (*at advanced); 0 when none is left. */
struct record {
    uint8_t meta;
    const uint8_t *p;
    uint32_t len;
};

static inline int next_record(const uint8_t *in, size_t size, size_t *at, uint32_t max_len, struct record *r) {
    if (*at + 3 > size)
        return 0;
    r->meta = in[*at];
    uint32_t len = (uint32_t)in[*at + 1] << 8 | in[*at + 2];
    *at += 3;
    if (len > size - *at)
        len = (uint32_t)(size - *at);
    if (len > max_len)
        len = max_len;
    r->p = in + *at;
    r->len = len;
    *at += len;
    return 1;
}

/* A copy of p of exactly len bytes (malloc(0) avoided: ASan still flags any read of it). */
static inline uint8_t *dup_exact(const uint8_t *p, uint32_t len) {
    uint8_t *b = malloc(len ? len : 1);
    CHECK(b != NULL);
    if (len)
        memcpy(b, p, len);
    return b;
}

/* Addresses of the fuzzers' remotes: 10.0.0.(1 + i); the local address 10.0.0.100 (stored as the C side
 * keeps them: OVL_ADDR_LEN bytes, IPv4 mapped ::ffff:a.b.c.d). */
#define FUZZ_REMOTES 3
static const uint8_t fuzz_local[OVL_ADDR_LEN] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 0, 0, 100};

static inline void fuzz_remote_addr(uint32_t i, uint8_t out[OVL_ADDR_LEN]) {
    memcpy(out, fuzz_local, OVL_ADDR_LEN);
    out[15] = (uint8_t)(1 + i);
}

/* Mapped VLANs: VLAN 10 * (k + 1) in tunnel id base + 1000 + k, k < FUZZ_VLANS. */
#define FUZZ_VLANS 3
#define FUZZ_VLAN_TID(base, k) ((base) + 1000 + (k))

/* What a harness's context is made of. */
struct fuzz_cfg {
    uint32_t encap, id, keyed; /* encapsulation, base tunnel id, GRE: the key is sent */
    uint32_t vlans;            /* map FUZZ_VLANS VLANs */
    uint32_t batch, mtu, slot; /* ring */
    uint32_t vnet, coalesce;   /* TAP offloads */
    uint32_t udp_csum;
};

/* A context for f (CHECKed to be created) with FUZZ_REMOTES remotes. */
static inline struct ovl_dp *fuzz_dp(const struct fuzz_cfg *f) {
    struct ovl_config *c = ovl_config_new(f->encap);
    CHECK(c != NULL);
    CHECK(ovl_config_set_tunnel(c, f->id, f->keyed, 64) == 0);
    CHECK(ovl_config_set_udp(c, 4789, f->udp_csum) == 0);
    CHECK(ovl_config_set_ring(c, f->mtu, f->batch, f->slot) == 0);
    CHECK(ovl_config_set_fdb(c, 1024, 300.0, 12345) == 0);
    CHECK(ovl_config_set_offloads(c, f->vnet, f->coalesce, 0) == 0);
    for (uint32_t i = 0; i < FUZZ_REMOTES; i++) {
        uint8_t a[OVL_ADDR_LEN];
        fuzz_remote_addr(i, a);
        CHECK(ovl_config_add_remote(c, a, fuzz_local) == (int)i);
    }
    for (uint32_t k = 0; f->vlans && k < FUZZ_VLANS; k++)
        CHECK(ovl_config_map_vlan(c, 10 * (k + 1), FUZZ_VLAN_TID(f->id, k)) == 0);
    struct ovl_dp *dp = ovl_dp_new(c);
    CHECK(dp != NULL);
    ovl_config_free(c);
    return dp;
}

/* Source address of a record: meta bits 0-1 pick remote 0..2, or 3 an address that is none. */
static inline void record_src(uint8_t meta, uint8_t out[OVL_ADDR_LEN]) { fuzz_remote_addr(meta & 3, out); }

/* A drop reason as ovl.h defines them. */
static inline int valid_drop(int res) { return res < 0 && -res >= 1 && -res < OVL_DROP_COUNT; }

/* The Internet checksum the slow way, byte by byte: the harnesses' own reference, not csum.c's. */
static inline uint32_t ref_sum(const uint8_t *p, size_t n, uint32_t s) {
    for (size_t i = 0; i < n; i++)
        s += (i & 1) ? p[i] : (uint32_t)p[i] << 8;
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    return s;
}

/* The TCP checksum of the segment at l4 (IPv4 or IPv6 header at l3) verifies. */
static inline int ref_tcp_ok(const uint8_t *f, uint32_t len, uint32_t l3, uint32_t l4, int v6) {
    uint32_t l4len = len - l4;
    uint32_t s = v6 ? ref_sum(f + l3 + 8, 32, 0) : ref_sum(f + l3 + 12, 8, 0);
    s = ref_sum(f + l4, l4len, s + IPPROTO_TCP + (l4len >> 16) + (l4len & 0xFFFF));
    return s == 0xFFFF;
}

/* Offset of the network header behind up to two 802.1Q / 802.1ad tags and its EtherType, or 0. */
static inline uint32_t ref_l3(const uint8_t *f, uint32_t len, uint16_t *type) {
    uint32_t off = 12;
    if (len < ETH_HLEN)
        return 0;
    *type = get16(f + off);
    for (int k = 0; k < 2 && (*type == ETH_P_8021Q || *type == ETH_P_8021AD); k++) {
        off += VLAN_HLEN;
        if (len < off + 2)
            return 0;
        *type = get16(f + off);
    }
    return off + 2;
}

#endif
