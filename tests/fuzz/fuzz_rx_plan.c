/* fuzz_rx_plan.c: RX coalescing (ovl_rx_plan with rx_coalesce and a virtio header) and
 * the plan's writes (ovl_rx_plan_write), behind ovl_rx_process with VXLAN.
 *
 * Input: one byte (bit 0: virtio header of 10 or 12 bytes), then records (fuzz_common.h)
 * whose data is an inner Ethernet frame; the harness puts a VXLAN header in front (meta
 * bits 3-4: the base VNI, or that of mapped VLAN 1..3, so that a tag is inserted). Meta
 * bits 0-1 pick the source; with bit 2 the harness sets the frame's IP length and TCP
 * checksum right (a fuzzer does not find checksums), so segments can be coalesced; bit 5
 * makes that checksum the pseudo-header seed instead (a kernel peer over veth).
 *
 * Checked: the plan carries every delivered frame exactly once: a write without offload is
 * one frame byte for byte; one with NEEDS_CSUM alone (a TCP / UDP checksum that was only the
 * pseudo-header seed, rx_super.c) is one frame byte for byte whose checksum then completes to
 * a valid one; a super-frame (NEEDS_CSUM, TCPV4/TCPV6) has a partial checksum
 * that completes to a valid one, and cut again by ovl_offload_frame (the TX step) gives back
 * its segments, equal to the delivered ones but for the fields a coalesced stream does not
 * keep (IPv4 id and header checksum, TCP checksum's encoding, urgent pointer). */
#include "fuzz_common.h"

#define BATCH 64
#define SLOT 9216
#define VXLAN_HLEN 8
#define SEG_SLOT 16384

static struct ovl_dp *ctx[2];
static uint8_t out[65536 + 1024];
static uint8_t segbuf[BATCH * SEG_SLOT];

static void init(void) {
    struct fuzz_cfg a = {OVL_ENCAP_VXLAN, 42, 1, 1, BATCH, 9000, SLOT, OVL_VNET_HDR_LEN, 1, 0};
    struct fuzz_cfg b = {OVL_ENCAP_VXLAN, 42, 1, 1, BATCH, 9000, SLOT, VNET_HDR_MAX, 1, 0};
    ctx[0] = fuzz_dp(&a);
    ctx[1] = fuzz_dp(&b);
    CHECK(ovl_dp_coalescing(ctx[0]) && ovl_dp_coalescing(ctx[1]));
}

/* Set the IP length (and IPv4 header checksum) and the TCP checksum of a TCP frame (seed: only the
 * pseudo-header sum, as a kernel sender leaves it to offload). */
static void fix_tcp(uint8_t *f, uint32_t len, int seed) {
    uint16_t type = 0;
    uint32_t l3 = ref_l3(f, len, &type), l4;
    int v6;
    if (!l3)
        return;
    if (type == ETH_P_IP && len >= l3 + IPV4_HLEN && f[l3] >> 4 == 4 && f[l3 + 9] == IPPROTO_TCP) {
        uint32_t ihl = (uint32_t)(f[l3] & 0x0F) * 4;
        if (ihl < IPV4_HLEN || len < l3 + ihl || len - l3 > 0xFFFF)
            return;
        put16(f + l3 + 2, len - l3);
        put16(f + l3 + 10, 0);
        put16(f + l3 + 10, (uint16_t)~ref_sum(f + l3, ihl, 0));
        l4 = l3 + ihl;
        v6 = 0;
    } else if (type == ETH_P_IPV6 && len >= l3 + IPV6_HLEN && f[l3] >> 4 == 6 && f[l3 + 6] == IPPROTO_TCP) {
        if (len - l3 - IPV6_HLEN > 0xFFFF)
            return;
        put16(f + l3 + 4, len - l3 - IPV6_HLEN);
        l4 = l3 + IPV6_HLEN;
        v6 = 1;
    } else {
        return;
    }
    if (len < l4 + TCP_HLEN)
        return;
    uint32_t l4len = len - l4;
    put16(f + l4 + 16, 0);
    uint32_t s = v6 ? ref_sum(f + l3 + 8, 32, 0) : ref_sum(f + l3 + 12, 8, 0);
    if (seed) {
        put16(f + l4 + 16, ref_sum(NULL, 0, s + IPPROTO_TCP + (l4len >> 16) + (l4len & 0xFFFF)));
        return;
    }
    s = ref_sum(f + l4, l4len, s + IPPROTO_TCP + (l4len >> 16) + (l4len & 0xFFFF));
    put16(f + l4 + 16, (uint16_t)~s);
}

/* What a segment of a super-frame may differ in from the frame delivered: 1 for bytes to skip. */
static int masked(uint32_t at, uint32_t l3, uint32_t l4, int v6) {
    if (!v6 && at >= l3 && at < l4)
        return (at - l3 >= 4 && at - l3 < 6) || (at - l3 >= 10 && at - l3 < 12); /* id, header checksum */
    if (at >= l4 + 16 && at < l4 + 20)
        return 1; /* checksum (0 and 0xFFFF verify alike), urgent pointer (no URG) */
    return 0;
}

struct delivered {
    uint8_t *f;
    uint32_t len;
    int32_t remote;
    int used;
};

/* The delivered frame seg (from remote) is, unused yet; exact, or masked for a segment of a super-frame. */
static int take(struct delivered *d, uint32_t nd, const uint8_t *seg, uint32_t len, int32_t remote, int super,
                uint32_t l3, uint32_t l4, int v6) {
    for (uint32_t i = 0; i < nd; i++) {
        if (d[i].used || d[i].remote != remote || d[i].len != len)
            continue;
        uint32_t at = 0;
        for (; at < len; at++)
            if (seg[at] != d[i].f[at] && !(super && masked(at, l3, l4, v6)))
                break;
        if (at == len) {
            d[i].used = 1;
            return 1;
        }
    }
    return 0;
}

/* A frame with NEEDS_CSUM and no GSO: csum_start is its TCP / UDP header, the frame ends with its IP
 * packet, and completing the checksum as the kernel does (sum from csum_start to the end) gives a valid one. */
static void check_partial(const uint8_t *vnet, const uint8_t *f, uint32_t len) {
    uint16_t hdr_len, gso_size, start, off, type = 0;
    memcpy(&hdr_len, vnet + 2, 2);
    memcpy(&gso_size, vnet + 4, 2);
    memcpy(&start, vnet + 6, 2);
    memcpy(&off, vnet + 8, 2);
    CHECK(hdr_len == 0 && gso_size == 0 && (off == 16 || off == 6));
    uint32_t l3 = ref_l3(f, len, &type);
    CHECK(l3 && (type == ETH_P_IP || type == ETH_P_IPV6));
    int v6 = type == ETH_P_IPV6;
    CHECK(len >= l3 + (v6 ? IPV6_HLEN : IPV4_HLEN));
    uint32_t l4 = v6 ? l3 + IPV6_HLEN : l3 + (uint32_t)(f[l3] & 0x0F) * 4;
    uint8_t proto = v6 ? f[l3 + 6] : f[l3 + 9];
    CHECK(start == l4 && off == (proto == IPPROTO_TCP ? 16 : 6) && (proto == IPPROTO_TCP || proto == IPPROTO_UDP));
    CHECK(len == l3 + (v6 ? IPV6_HLEN + get16(f + l3 + 4) : get16(f + l3 + 2)) && start + off + 2u <= len);
    uint8_t *full = dup_exact(f, len);
    put16(full + start + off, (uint16_t)~ref_sum(full + start, len - start, 0));
    uint32_t l4len = len - l4;
    uint32_t s = v6 ? ref_sum(full + l3 + 8, 32, 0) : ref_sum(full + l3 + 12, 8, 0);
    CHECK(ref_sum(full + l4, l4len, s + proto + (l4len >> 16) + (l4len & 0xFFFF)) == 0xFFFF);
    free(full);
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    static double now;
    if (!ctx[0])
        init();
    if (size < 1)
        return 0;
    struct ovl_dp *dp = ctx[in[0] & 1];
    uint32_t vlen = dp->cfg.vnet_hdr_len;
    uint8_t *bufs[BATCH];
    uint32_t lens[BATCH], n = 0;
    size_t at = 1;
    struct record r;
    while (n < BATCH && next_record(in, size, &at, SLOT - VXLAN_HLEN, &r)) {
        uint8_t src[OVL_ADDR_LEN];
        record_src(r.meta, src);
        uint32_t k = (r.meta >> 3) & 3, vni = k ? FUZZ_VLAN_TID(42u, k - 1) : 42u;
        uint32_t len = VXLAN_HLEN + r.len;
        uint8_t *b = malloc(len);
        CHECK(b != NULL);
        memset(b, 0, VXLAN_HLEN);
        b[0] = 0x08;
        put32(b + 4, vni << 8);
        memcpy(b + VXLAN_HLEN, r.p, r.len);
        if (r.meta & 4)
            fix_tcp(b + VXLAN_HLEN, r.len, (r.meta >> 5) & 1);
        bufs[n] = b;
        lens[n] = len;
        CHECK(ovl_rx_load(dp, n, b, len, src, 0) == 0);
        n++;
    }
    uint32_t delivered = ovl_rx_process(dp, n, now += 1.0), nd = 0;
    struct delivered d[BATCH];
    for (uint32_t i = 0; i < n; i++) {
        int32_t remote;
        int res = ovl_rx_result(dp, i, &remote);
        if (res < 0)
            continue;
        d[nd].len = lens[i] - (uint32_t)res;
        d[nd].f = dup_exact(bufs[i] + res, d[nd].len); /* the plan rewrites headers in place */
        d[nd].remote = remote;
        d[nd].used = 0;
        nd++;
    }
    CHECK(nd == delivered);
    uint32_t w = ovl_rx_plan(dp, n), segs_total = 0;
    CHECK(w <= delivered);
    for (uint32_t k = 0; k < w; k++) {
        int32_t remote;
        uint8_t vnet[VNET_HDR_MAX];
        int len = ovl_rx_plan_write(dp, k, vnet, out, sizeof(out), &remote);
        CHECK(len >= ETH_HLEN && (size_t)len <= sizeof(out));
        for (uint32_t j = OVL_VNET_HDR_LEN; j < vlen; j++)
            CHECK(vnet[j] == 0); /* num_buffers of the mergeable header */
        if (vnet[1] == OVL_VNET_GSO_NONE) {
            if (vnet[0] == OVL_VNET_F_NEEDS_CSUM)
                check_partial(vnet, out, (uint32_t)len);
            else
                for (uint32_t j = 0; j < OVL_VNET_HDR_LEN; j++)
                    CHECK(vnet[j] == 0);
            CHECK(take(d, nd, out, (uint32_t)len, remote, 0, 0, 0, 0));
            segs_total++;
            continue;
        }
        uint16_t hdr_len, gso_size, start, off;
        memcpy(&hdr_len, vnet + 2, 2);
        memcpy(&gso_size, vnet + 4, 2);
        memcpy(&start, vnet + 6, 2);
        memcpy(&off, vnet + 8, 2);
        int v6 = vnet[1] == OVL_VNET_GSO_TCPV6;
        CHECK(vnet[0] == OVL_VNET_F_NEEDS_CSUM && (v6 || vnet[1] == OVL_VNET_GSO_TCPV4));
        CHECK(off == 16 && start + TCP_HLEN <= hdr_len && hdr_len < (uint32_t)len && gso_size > 0);
        uint16_t type;
        uint32_t l3 = ref_l3(out, (uint32_t)len, &type);
        CHECK(l3 && l3 < start && type == (v6 ? ETH_P_IPV6 : ETH_P_IP));
        /* Completing the partial checksum (skb_checksum_help) gives a valid TCP checksum. */
        uint8_t *full = dup_exact(out, (uint32_t)len);
        uint16_t cs = (uint16_t)~ref_sum(full + start, (uint32_t)len - start, 0);
        put16(full + start + off, cs);
        CHECK(ref_tcp_ok(full, (uint32_t)len, l3, start, v6));
        free(full);
        /* Cut again: the segments that were coalesced. */
        uint32_t seg = 0, nseg = 0;
        uint8_t *ptrs[BATCH];
        uint32_t slens[BATCH];
        int got = ovl_offload_frame(vnet, out, (uint32_t)len, &seg, segbuf, SEG_SLOT, ptrs, slens, BATCH);
        CHECK(got >= 2 && seg == 0);
        for (int j = 0; j < got; j++, nseg++)
            CHECK(take(d, nd, ptrs[j], slens[j], remote, 1, l3, start, v6));
        segs_total += nseg;
    }
    CHECK(segs_total == delivered);
    for (uint32_t i = 0; i < nd; i++) {
        CHECK(d[i].used);
        free(d[i].f);
    }
    ovl_fdb_flush(ovl_dp_fdb(dp), -1);
    for (uint32_t i = 0; i < n; i++)
        free(bufs[i]);
    return 0;
}
