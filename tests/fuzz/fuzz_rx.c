/* fuzz_rx.c: the receive path of one encapsulation (built with -DFUZZ_ENCAP=OVL_ENCAP_VXLAN or
 * OVL_ENCAP_GRE): ovl_parse / ovl_decap per packet, then a batch through ovl_rx_load,
 * ovl_rx_process (remote check, parse, tunnel id, VLAN map, source MAC check, tag
 * insertion, learning), ovl_rx_result, ovl_rx_plan and ovl_rx_plan_write.
 *
 * Input: one byte (bit 0: which context: 0 with a keyed base id 42 and mapped VLANs,
 * 1 with base id 0, unkeyed for GRE, and no VLANs), then records (fuzz_common.h): meta
 * bits 0-1 the source (remote 0..2 or none), bit 2 "truncated by the socket"; the data
 * is the packet as the socket delivers it (VXLAN: the UDP payload; GRE: the IPv4 packet).
 *
 * Checked: results are a drop reason or an offset that leaves an Ethernet header, a
 * delivered frame's remote is the source's, drops are counted once each, the plan has
 * one write per delivered frame with exactly its bytes. */
#include "fuzz_common.h"

#ifndef FUZZ_ENCAP
#error "build with -DFUZZ_ENCAP=<enum ovl_encap_id>"
#endif

#define BATCH 64
#define SLOT 9216

static struct ovl_dp *ctx[2];
static uint8_t out[SLOT + VNET_HDR_MAX];

static void init(void) {
    struct fuzz_cfg a = {FUZZ_ENCAP, 42, 1, 1, BATCH, 9000, SLOT, 0, 0, 0};
    struct fuzz_cfg b = {FUZZ_ENCAP, 0, 0, 0, BATCH, 9000, SLOT, 0, 0, 0};
    ctx[0] = fuzz_dp(&a);
    ctx[1] = fuzz_dp(&b);
}

static uint64_t drops_total(const struct ovl_dp *dp) {
    uint64_t d[OVL_DROP_COUNT], t = 0;
    CHECK(ovl_dp_counters(dp, OVL_COUNTERS_DROPS, d, OVL_DROP_COUNT) == OVL_DROP_COUNT);
    for (int i = 1; i < OVL_DROP_COUNT; i++)
        t += d[i];
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    static double now;
    if (!ctx[0])
        init();
    if (size < 1)
        return 0;
    struct ovl_dp *dp = ctx[in[0] & 1];
    const struct ovl_config *c = &dp->cfg;
    uint8_t *bufs[BATCH];
    uint32_t lens[BATCH], n = 0;
    int32_t want_remote[BATCH];
    size_t at = 1;
    struct record r;
    while (n < BATCH && next_record(in, size, &at, SLOT, &r)) {
        uint8_t src[OVL_ADDR_LEN];
        record_src(r.meta, src);
        want_remote[n] = (r.meta & 3) < FUZZ_REMOTES ? (int32_t)(r.meta & 3) : -1;
        /* The codec entry points, on a copy of their own. */
        uint8_t *b = dup_exact(r.p, r.len);
        uint32_t tid = 7;
        int off = ovl_parse(c, b, r.len, &tid);
        if (off < 0)
            CHECK(valid_drop(off) && tid == 0);
        else
            CHECK(off >= VLAN_HLEN && (uint32_t)off + ETH_HLEN <= r.len);
        int d = ovl_decap(c, b, r.len);
        CHECK(d == (off < 0 || tid == c->id ? off : -c->ops->bad_id));
        CHECK(memcmp(b, r.p, r.len) == 0); /* parsing never writes */
        free(b);
        bufs[n] = dup_exact(r.p, r.len);
        lens[n] = r.len;
        CHECK(ovl_rx_load(dp, n, bufs[n], r.len, src, (r.meta >> 2) & 1) == 0);
        n++;
    }
    uint64_t drops0 = drops_total(dp);
    uint32_t delivered = ovl_rx_process(dp, n, now += 1.0), count = 0;
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; i++) {
        int32_t remote;
        int res = ovl_rx_result(dp, i, &remote);
        if (res < 0) {
            CHECK(valid_drop(res) && remote == -1);
            continue;
        }
        CHECK((uint32_t)res + ETH_HLEN <= lens[i]);
        CHECK(remote == want_remote[i]);
        const uint8_t *f = bufs[i] + res;
        CHECK(!(f[6] & 1)); /* a valid source MAC */
        count++;
        bytes += lens[i] - (uint32_t)res;
    }
    CHECK(count == delivered);
    CHECK(drops_total(dp) - drops0 == n - delivered);
    uint32_t w = ovl_rx_plan(dp, n);
    CHECK(w == delivered); /* no coalescing: one write per frame */
    uint64_t planned = 0;
    for (uint32_t k = 0; k < w; k++) {
        int32_t remote;
        uint8_t vnet[VNET_HDR_MAX];
        int len = ovl_rx_plan_write(dp, k, vnet, out, sizeof(out), &remote);
        CHECK(len >= ETH_HLEN && remote >= 0 && remote < FUZZ_REMOTES);
        planned += (uint32_t)len;
    }
    CHECK(planned == bytes);
    CHECK(ovl_rx_plan_write(dp, w, out, out, sizeof(out), &(int32_t){0}) == -1);
    ovl_fdb_flush(ovl_dp_fdb(dp), -1);
    for (uint32_t i = 0; i < n; i++)
        free(bufs[i]);
    return 0;
}
