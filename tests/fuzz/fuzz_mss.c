/* fuzz_mss.c: TCP MSS clamping (mss.c) as a pure step and through both batch steps.
 *
 * Input: a meta byte (bit 0: GRE with a key, else VXLAN with UDP checksums; bit 1: the
 * checksum may be a partial seed), a 16-bit big-endian limit, then the frame.
 *
 * Checked, for ovl_mss_clamp: nothing changes when it says so; otherwise only the TCP
 * checksum and the TCP options of a frame with SYN (the harness's own parse of Ethernet, up
 * to two tags, IPv4 / IPv6, TCP) change, the limit fits 16 bits, a full checksum that
 * verified still does (and one that did not still does not), a seed stays the seed, and a
 * second clamp lowers nothing. Through ovl_tx_process (clamp auto) and a peer's
 * ovl_rx_process (clamp auto, as a received frame): the outer checksums verify, the peer
 * delivers the frame as sent, and neither step leaves an MSS option that a clamp to the
 * context's own figure would lower again. */
#include "fuzz_common.h"

#define SLOT 9216
#define MTU 9000

static struct ovl_dp *tx[2], *rx[2];
static uint8_t out[SLOT + 64];

static void init(void) {
    for (int i = 0; i < 2; i++) {
        struct fuzz_cfg f = {i ? OVL_ENCAP_GRE : OVL_ENCAP_VXLAN, 42, 1, 1, 1, MTU, SLOT, 0, 0, 1};
        tx[i] = fuzz_dp(&f);
        rx[i] = fuzz_dp(&f);
        tx[i]->cfg.clamp_mss = OVL_CLAMP_MSS_AUTO;
        rx[i]->cfg.clamp_mss = OVL_CLAMP_MSS_AUTO;
    }
}

/* The harness's reading of f: offsets of the IP and TCP headers, the TCP length and header length,
 * whether f is a SYN; 0 if it is none. */
static int ref_syn(const uint8_t *f, uint32_t len, uint32_t *l3, uint32_t *l4, uint32_t *l4len, uint32_t *doff,
                   int *v6) {
    uint16_t type = 0;
    *l3 = ref_l3(f, len, &type);
    if (!*l3)
        return 0;
    const uint8_t *ip = f + *l3;
    if (type == ETH_P_IP && len >= *l3 + 20 && ip[0] >> 4 == 4 && (ip[0] & 15) >= 5) {
        uint32_t ihl = (ip[0] & 15) * 4u, tot = get16(ip + 2);
        if (len < *l3 + ihl || ip[9] != IPPROTO_TCP || (get16(ip + 6) & 0x3FFF) || tot < ihl || tot > len - *l3)
            return 0;
        *l4 = *l3 + ihl;
        *l4len = tot - ihl;
        *v6 = 0;
    } else if (type == ETH_P_IPV6 && len >= *l3 + 40 && ip[0] >> 4 == 6 && ip[6] == IPPROTO_TCP) {
        if (get16(ip + 4) > len - *l3 - 40)
            return 0;
        *l4 = *l3 + 40;
        *l4len = get16(ip + 4);
        *v6 = 1;
    } else {
        return 0;
    }
    if (*l4len < 20)
        return 0;
    *doff = (f[*l4 + 12] >> 4) * 4u;
    return *doff >= 20 && *doff <= *l4len && (f[*l4 + 13] & 0x02);
}

static void check_clamp(const uint8_t *orig, uint32_t len, uint32_t limit, uint32_t partial) {
    uint8_t *f = dup_exact(orig, len);
    int lowered = ovl_mss_clamp(f, len, limit, partial);
    CHECK(lowered == 0 || lowered == 1);
    if (!lowered) {
        CHECK(len == 0 || memcmp(f, orig, len) == 0);
        free(f);
        return;
    }
    uint32_t l3, l4, l4len, doff;
    int v6;
    CHECK(limit <= 0xFFFF && ref_syn(orig, len, &l3, &l4, &l4len, &doff, &v6));
    for (uint32_t i = 0; i < len; i++)
        if (f[i] != orig[i])
            CHECK(i == l4 + 16 || i == l4 + 17 || (i >= l4 + 20 && i < l4 + doff));
    uint32_t seg = l4 + l4len;
    uint32_t ps = v6 ? ref_sum(orig + l3 + 8, 32, 0) : ref_sum(orig + l3 + 12, 8, 0);
    ps = ref_sum((const uint8_t *)"", 0, ps + IPPROTO_TCP + (l4len >> 16) + (l4len & 0xFFFF));
    uint16_t seed = (uint16_t)ps; /* the pseudo-header sum, folded, not complemented */
    if (partial && get16(orig + l4 + 16) == seed)
        CHECK(get16(f + l4 + 16) == seed);
    else
        CHECK(ref_tcp_ok(f, seg, l3, l4, v6) == ref_tcp_ok(orig, seg, l3, l4, v6));
    CHECK(ovl_mss_clamp(f, len, limit, partial) == 0); /* nothing above the limit is left */
    free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    static double now;
    if (!tx[0])
        init();
    if (size < 3 || size - 3 > SLOT)
        return 0;
    int gre = in[0] & 1;
    uint32_t partial = (in[0] >> 1) & 1, limit = get16(in + 1);
    const uint8_t *orig = in + 3;
    uint32_t len = (uint32_t)(size - 3);
    check_clamp(orig, len, limit, partial);
    check_clamp(orig, len, limit | 0x10000, partial); /* beyond 16 bits: nothing */

    struct ovl_dp *a = tx[gre], *b = rx[gre];
    uint8_t *frame = dup_exact(orig, len);
    CHECK(ovl_tx_load(a, 0, frame, len) == 0);
    now += 1.0;
    uint64_t clamped = a->stats[OVL_STAT_MSS_CLAMPED];
    uint32_t n = ovl_tx_process(a, 1, now);
    CHECK(a->stats[OVL_STAT_MSS_CLAMPED] - clamped <= 1); /* once per frame, a flood included */
    for (uint32_t m = 0; m < n; m++) {
        uint32_t remote;
        int plen = ovl_tx_packet(a, m, &remote, out, sizeof(out));
        CHECK(plen > 0 && plen <= MTU && remote < FUZZ_REMOTES);
        CHECK(ref_sum(out, IPV4_HLEN, 0) == 0xFFFF);
        const uint8_t *p = out;
        uint32_t l = (uint32_t)plen;
        if (!gre) { /* the UDP checksum covers the clamped frame */
            uint32_t ul = l - IPV4_HLEN;
            CHECK(ref_sum(out + IPV4_HLEN, ul, ref_sum(out + 12, 8, IPPROTO_UDP + ul)) == 0xFFFF);
            p += IPV4_HLEN + UDP_HLEN;
            l -= IPV4_HLEN + UDP_HLEN;
        }
        uint8_t *pkt = dup_exact(p, l), src[OVL_ADDR_LEN];
        fuzz_remote_addr(remote, src);
        CHECK(ovl_rx_load(b, 0, pkt, l, src, 0) == 0);
        uint64_t before = b->stats[OVL_STAT_MSS_CLAMPED];
        ovl_rx_process(b, 1, now);
        /* The peer's figure towards us is the one we clamped to (same MTU, same outer header, the
         * L2 header as it travelled): nothing is left for it to lower. */
        CHECK(b->stats[OVL_STAT_MSS_CLAMPED] == before);
        free(pkt);
    }
    ovl_fdb_flush(ovl_dp_fdb(a), -1);
    ovl_fdb_flush(ovl_dp_fdb(b), -1);
    free(frame);
    return 0;
}
