/* fuzz_vlan.c: VLAN tags (vlan.c: frame_vlan, the VLAN map and its lookup) end to end: one
 * frame through ovl_tx_process of one context (a mapped VLAN's tag stripped in place, the
 * frame in that VLAN's tunnel id) and every packet it becomes through ovl_rx_process of a
 * peer with the same configuration (the tag inserted back in place).
 *
 * Input: a meta byte (bit 0: VXLAN with UDP checksums, or GRE with a key), then the frame.
 *
 * Checked: frame_vlan against the harness's reading of the tag; a frame in the base id is
 * encapsulated by ovl_encap (the codec entry point) byte for byte as by the batch; the outer
 * header's tunnel id is the mapped VLAN's, or the base id; the outer IPv4 (and UDP) checksums
 * verify; the peer delivers exactly the frame sent, the tag of a mapped VLAN back with its VID
 * (its priority bits are not carried, as in the Python reference), unless the source MAC
 * is one no frame may have. */
#include "fuzz_common.h"

#define SLOT 9216
#define MTU 9000

static struct ovl_dp *tx[2], *rx[2];
static uint8_t out[SLOT + 64], enc[SLOT + 64];

static void init(void) {
    for (int i = 0; i < 2; i++) {
        struct fuzz_cfg f = {i ? OVL_ENCAP_GRE : OVL_ENCAP_VXLAN, 42, 1, 1, 1, MTU, SLOT, 0, 0, 1};
        tx[i] = fuzz_dp(&f);
        rx[i] = fuzz_dp(&f);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    static double now;
    if (!tx[0])
        init();
    if (size < 1 || size - 1 > SLOT)
        return 0;
    int gre = in[0] & 1;
    struct ovl_dp *a = tx[gre], *b = rx[gre];
    const uint8_t *orig = in + 1;
    uint32_t len = (uint32_t)(size - 1);
    uint16_t want_vlan = len >= ETH_HLEN + VLAN_HLEN && get16(orig + 12) == ETH_P_8021Q ? get16(orig + 14) & 0xFFF : 0;
    CHECK(frame_vlan(orig, len) == want_vlan);
    uint32_t k = want_vlan && want_vlan % 10 == 0 && want_vlan <= 10 * FUZZ_VLANS ? want_vlan / 10 : 0;
    uint32_t want_tid = k ? FUZZ_VLAN_TID(42u, k - 1) : 42u;
    uint8_t *frame = dup_exact(orig, len);
    CHECK(ovl_tx_load(a, 0, frame, len) == 0);
    now += 1.0;
    uint32_t n = ovl_tx_process(a, 1, now);
    if (len < ETH_HLEN)
        CHECK(n == 0);
    CHECK(n == 0 || n == 1 || n == FUZZ_REMOTES);
    for (uint32_t m = 0; m < n; m++) {
        uint32_t remote;
        int plen = ovl_tx_packet(a, m, &remote, out, sizeof(out));
        CHECK(plen > 0 && plen <= MTU && remote < FUZZ_REMOTES);
        CHECK(ref_sum(out, IPV4_HLEN, 0) == 0xFFFF && get16(out + 2) == (uint32_t)plen);
        if (!k) /* the base id: what the one-packet codec makes */
            CHECK(ovl_encap(&a->cfg, remote, orig, len, enc, sizeof(enc)) == plen && !memcmp(enc, out, (size_t)plen));
        const uint8_t *p = out;
        uint32_t l = (uint32_t)plen;
        if (!gre) { /* the socket delivers the UDP payload; the UDP checksum verifies first */
            uint32_t ul = l - IPV4_HLEN;
            uint32_t s = ref_sum(out + 12, 8, IPPROTO_UDP + ul);
            CHECK(get16(out + IPV4_HLEN + 4) == ul && ref_sum(out + IPV4_HLEN, ul, s) == 0xFFFF);
            p += IPV4_HLEN + UDP_HLEN;
            l -= IPV4_HLEN + UDP_HLEN;
        }
        uint8_t *pkt = dup_exact(p, l), src[OVL_ADDR_LEN];
        uint32_t tid = 0;
        CHECK(ovl_parse(&b->cfg, pkt, l, &tid) >= 0 && tid == want_tid);
        fuzz_remote_addr(remote, src);
        CHECK(ovl_rx_load(b, 0, pkt, l, src, 0) == 0);
        uint32_t got = ovl_rx_process(b, 1, now);
        int32_t from;
        int res = ovl_rx_result(b, 0, &from);
        if ((orig[6] & 1) || !memcmp(orig + 6, "\0\0\0\0\0\0", 6)) {
            CHECK(got == 0 && res == -OVL_DROP_RX_BAD_SRC_MAC);
        } else {
            CHECK(got == 1 && res >= 0 && from == (int32_t)remote);
            CHECK(l - (uint32_t)res == len);
            uint8_t *f = pkt + res;
            if (k) { /* the TCI as it comes back: the VID alone */
                CHECK(get16(f + 14) == want_vlan);
                CHECK(memcmp(f, orig, 14) == 0 && memcmp(f + 16, orig + 16, len - 16) == 0);
            } else {
                CHECK(memcmp(f, orig, len) == 0);
            }
        }
        free(pkt);
    }
    ovl_fdb_flush(ovl_dp_fdb(a), -1);
    ovl_fdb_flush(ovl_dp_fdb(b), -1);
    free(frame);
    return 0;
}
