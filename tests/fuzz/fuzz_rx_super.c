/* fuzz_rx_super.c: super-packets received whole (csrc/rx_super.c: ovl_dp_set_rx_super, the RX plan's
 * TSO writes and segments) behind ovl_rx_process with VXLAN.
 *
 * Input: byte 0: bit 0 picks the context (0: a virtio header with coalescing, where a super-packet is
 * one TSO write; 1: a plain TAP, where it is cut here); bit 1: the harness sets the frame's IP length,
 * IPv4 header checksum and TCP checksum right (the pseudo-header seed, or with bit 2 the full
 * checksum), as a fuzzer does not find them. Bytes 1-2: the TAP MTU, 256 + value % 8800. The rest:
 * one inner Ethernet frame (a VXLAN header is put in front).
 *
 * Checked: the frame is planned exactly once or dropped as rx_bad_super, never both; the payload a
 * plan carries is the frame's. A frame within the MTU is written as it came, its seed (if any)
 * passed on or completed. A super-packet's TSO write is the delivered frame with NEEDS_CSUM at its
 * TCP header and gso_size = MTU - headers; cut by ovl_offload_frame (the kernel's part), and every
 * segment of a plain TAP cut here, has an IP length within the MTU, a valid IPv4 header checksum and
 * a valid TCP checksum, and the segments' payloads put together are the frame's payload. */
#include "fuzz_common.h"

#define VXLAN_HLEN 8
#define MAX_FRAME (65507 - VXLAN_HLEN)
#define SEGS 512        /* segments of 64 KiB at the smallest MSS (256 - 120) */
#define SEG_SLOT 10240 /* a segment: headers + MSS of the largest MTU */

static struct ovl_dp *ctx[2];
static uint32_t ctx_mtu[2];
static uint8_t out[65536 + 1024];
static uint8_t segbuf[SEGS * SEG_SLOT];
static uint8_t payload[65536];

static void init(void) {
    struct fuzz_cfg a = {OVL_ENCAP_VXLAN, 42, 1, 0, 64, 1500, 2048, OVL_VNET_HDR_LEN, 1, 0};
    struct fuzz_cfg b = {OVL_ENCAP_VXLAN, 42, 1, 0, 64, 1500, 2048, 0, 0, 0};
    ctx[0] = fuzz_dp(&a);
    ctx[1] = fuzz_dp(&b);
    CHECK(ovl_dp_coalescing(ctx[0]) && !ovl_dp_coalescing(ctx[1]));
    CHECK(ovl_dp_set_rx_super(ctx[0], 100) == -1 && ovl_dp_set_rx_super(ctx[0], 70000) == -1);
}

/* IP header at l3 of frame f: its L4 offset, IP version 6 or not, TCP; 0 if not TCP over IPv4/IPv6. */
static uint32_t tcp_at(const uint8_t *f, uint32_t len, uint32_t l3, uint16_t type, int *v6) {
    if (type == ETH_P_IP && len >= l3 + IPV4_HLEN && f[l3] >> 4 == 4 && f[l3 + 9] == IPPROTO_TCP) {
        uint32_t ihl = (uint32_t)(f[l3] & 0x0F) * 4;
        *v6 = 0;
        return ihl >= IPV4_HLEN && len >= l3 + ihl + TCP_HLEN ? l3 + ihl : 0;
    }
    if (type == ETH_P_IPV6 && len >= l3 + IPV6_HLEN + TCP_HLEN && f[l3] >> 4 == 6 && f[l3 + 6] == IPPROTO_TCP) {
        *v6 = 1;
        return l3 + IPV6_HLEN;
    }
    return 0;
}

/* Make f's lengths and checksums right (full TCP checksum, or the seed). */
static void fix(uint8_t *f, uint32_t len, int full) {
    uint16_t type = 0;
    uint32_t l3 = ref_l3(f, len, &type);
    int v6;
    uint32_t l4 = l3 ? tcp_at(f, len, l3, type, &v6) : 0;
    if (!l4 || len - l3 > 0xFFFF + (v6 ? IPV6_HLEN : 0))
        return;
    if (v6) {
        put16(f + l3 + 4, len - l3 - IPV6_HLEN);
    } else {
        put16(f + l3 + 2, len - l3);
        put16(f + l3 + 10, 0);
        put16(f + l3 + 10, (uint16_t)~ref_sum(f + l3, l4 - l3, 0));
    }
    uint32_t l4len = len - l4;
    uint32_t s = v6 ? ref_sum(f + l3 + 8, 32, 0) : ref_sum(f + l3 + 12, 8, 0);
    s = ref_sum(NULL, 0, s + IPPROTO_TCP + (l4len >> 16) + (l4len & 0xFFFF));
    put16(f + l4 + 16, s);
    if (full) {
        put16(f + l4 + 16, 0);
        put16(f + l4 + 16, (uint16_t)~ref_sum(f + l4, l4len, s));
    }
}

/* A complete segment: IP length within mtu and right, IPv4 header checksum, TCP checksum; appends
 * its payload to payload at *at. */
static void check_segment(const uint8_t *s, uint32_t len, uint32_t mtu, uint32_t *at) {
    uint16_t type = 0;
    uint32_t l3 = ref_l3(s, len, &type);
    int v6;
    uint32_t l4 = l3 ? tcp_at(s, len, l3, type, &v6) : 0;
    CHECK(l4 && len - l3 <= mtu);
    if (v6)
        CHECK(get16(s + l3 + 4) == len - l3 - IPV6_HLEN);
    else
        CHECK(get16(s + l3 + 2) == len - l3 && ref_sum(s + l3, l4 - l3, 0) == 0xFFFF);
    CHECK(ref_tcp_ok(s, len, l3, l4, v6));
    uint32_t hdrs = l4 + (uint32_t)(s[l4 + 12] >> 4) * 4;
    CHECK(hdrs < len && *at + (len - hdrs) <= sizeof(payload));
    memcpy(payload + *at, s + hdrs, len - hdrs);
    *at += len - hdrs;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    static double now;
    if (!ctx[0])
        init();
    if (size < 3 + ETH_HLEN || size - 3 > MAX_FRAME)
        return 0;
    int k = in[0] & 1;
    struct ovl_dp *dp = ctx[k];
    uint32_t mtu = 256 + (uint32_t)get16(in + 1) % 8800;
    if (mtu != ctx_mtu[k]) {
        CHECK(ovl_dp_set_rx_super(dp, mtu) == 0);
        ctx_mtu[k] = mtu;
    }
    uint32_t flen = (uint32_t)(size - 3), len = VXLAN_HLEN + flen;
    uint8_t *b = malloc(len);
    CHECK(b != NULL);
    memset(b, 0, VXLAN_HLEN);
    b[0] = 0x08;
    put32(b + 4, 42u << 8);
    memcpy(b + VXLAN_HLEN, in + 3, flen);
    if (in[0] & 2)
        fix(b + VXLAN_HLEN, flen, in[0] & 4);
    uint8_t src[OVL_ADDR_LEN];
    fuzz_remote_addr(0, src);
    CHECK(ovl_rx_load(dp, 0, b, len, src, 0) == 0);
    uint64_t drops0[OVL_DROP_COUNT], drops1[OVL_DROP_COUNT];
    ovl_dp_counters(dp, OVL_COUNTERS_DROPS, drops0, OVL_DROP_COUNT);
    if (ovl_rx_process(dp, 1, now += 1.0) != 1) { /* not delivered (bad source MAC etc.): nothing planned */
        CHECK(ovl_rx_plan(dp, 1) == 0);
        free(b);
        return 0;
    }
    int32_t remote;
    int res = ovl_rx_result(dp, 0, &remote);
    CHECK(res >= 0);
    uint32_t dlen = len - (uint32_t)res;
    uint8_t *d = dup_exact(b + res, dlen); /* as delivered, before the plan */
    uint32_t w = ovl_rx_plan(dp, 1);
    ovl_dp_counters(dp, OVL_COUNTERS_DROPS, drops1, OVL_DROP_COUNT);
    uint64_t bad = drops1[OVL_DROP_RX_BAD_SUPER] - drops0[OVL_DROP_RX_BAD_SUPER];
    uint16_t type = 0;
    uint32_t l3 = ref_l3(d, dlen, &type);
    int v6 = 0;
    uint32_t l4 = l3 ? tcp_at(d, dlen, l3, type, &v6) : 0;
    CHECK((w == 0) == (bad == 1) && bad <= 1);
    if (bad) {
        CHECK(dlen > 2048 && dlen - l3 > mtu); /* beyond a slot and the MTU */
        goto done;
    }
    uint8_t vnet[VNET_HDR_MAX] = {0}; /* a plain TAP's writes have none */
    int n = ovl_rx_plan_write(dp, 0, vnet, out, sizeof(out), &remote);
    CHECK(n > 0);
    if (w == 1 && (vnet[1] == OVL_VNET_GSO_NONE || !l4)) { /* an ordinary frame: as it came, or completed */
        CHECK((uint32_t)n == dlen && (!l3 || dlen - l3 <= mtu || dlen <= 2048)); /* refused: within a slot */
        if (memcmp(out, d, dlen)) { /* only the checksum field (a seed completed here) may differ */
            CHECK(l3 && vnet[0] == 0);
            uint32_t diff = 0;
            for (uint32_t i = 0; i < dlen; i++)
                diff += out[i] != d[i];
            CHECK(diff <= 2);
        }
        goto done;
    }
    /* A super-packet: TCP beyond the MTU; its payload is what the plan carries, cut at the MSS. */
    CHECK(l4 && dlen - l3 > mtu);
    uint32_t hdrs = l4 + (uint32_t)(d[l4 + 12] >> 4) * 4, mss = mtu - (hdrs - l3), at = 0;
    if (w == 1) {
        uint16_t hdr_len, gso_size, start, off;
        memcpy(&hdr_len, vnet + 2, 2);
        memcpy(&gso_size, vnet + 4, 2);
        memcpy(&start, vnet + 6, 2);
        memcpy(&off, vnet + 8, 2);
        CHECK(ovl_dp_coalescing(dp) && vnet[0] == OVL_VNET_F_NEEDS_CSUM);
        CHECK((vnet[1] & ~OVL_VNET_GSO_ECN) == (v6 ? OVL_VNET_GSO_TCPV6 : OVL_VNET_GSO_TCPV4));
        CHECK(start == l4 && off == 16 && hdr_len == hdrs && gso_size == mss && (uint32_t)n == dlen);
        CHECK(!memcmp(out, d, l4 + 16) && !memcmp(out + l4 + 18, d + l4 + 18, dlen - l4 - 18));
        uint32_t seg = 0;
        uint8_t *ptrs[SEGS];
        uint32_t lens[SEGS];
        int got = ovl_offload_frame(vnet, out, (uint32_t)n, &seg, segbuf, SEG_SLOT, ptrs, lens, SEGS);
        CHECK(got >= 2 && seg == 0);
        for (int j = 0; j < got; j++)
            check_segment(ptrs[j], lens[j], mtu, &at);
    } else {
        CHECK(!ovl_dp_coalescing(dp) && w == (dlen - hdrs + mss - 1) / mss);
        for (uint32_t j = 0; j < w; j++) {
            n = ovl_rx_plan_write(dp, j, vnet, out, sizeof(out), &remote);
            CHECK(n > 0 && (size_t)n <= sizeof(out));
            check_segment(out, (uint32_t)n, mtu, &at);
        }
    }
    CHECK(at == dlen - hdrs && !memcmp(payload, d + hdrs, at));
done:
    free(d);
    ovl_fdb_flush(ovl_dp_fdb(dp), -1);
    free(b);
    return 0;
}
