/* fuzz_tap_tx.c: the TAP -> tunnel path with a virtio header, as ovl_from_tap runs it
 * without its syscalls: TAP reads in the context's buffers, tx_fill_offloaded (the pure
 * step internal.h declares: virtio header, TSO segmentation, checksum completion, the
 * ring filled up and continued), ovl_tx_process (VLAN tag strip, flow hash, FDB, flood,
 * outer headers) and ovl_tx_packet.
 *
 * Input: one byte (bit 0: virtio header of 10 or 12 bytes; bit 1: VXLAN or GRE with a
 * key), then records (fuzz_common.h), each what one TAP read returned (virtio header and
 * frame); at most one batch of 8 of them (ovl_from_tap's read).
 *
 * Checked: the filling ends; every frame read is counted in tap_rx (per segment) or
 * dropped; every packet fits the underlay MTU, goes to a remote and has a valid outer
 * IPv4 header of its own length (and for VXLAN a UDP length to match). */
#include "fuzz_common.h"

#define BATCH 8
#define MTU 1500
#define SLOT 1500

static struct ovl_dp *ctx[4];
static uint8_t out[MTU + 64];

static void init(void) {
    for (int i = 0; i < 4; i++) {
        struct fuzz_cfg f = {(i & 2) ? OVL_ENCAP_GRE : OVL_ENCAP_VXLAN, 42, 1, 1, BATCH, MTU, SLOT,
                             (i & 1) ? VNET_HDR_MAX : OVL_VNET_HDR_LEN, 0, 1};
        ctx[i] = fuzz_dp(&f);
    }
}

static uint64_t sum_counters(const struct ovl_dp *dp, uint32_t kind, uint32_t n, uint32_t from) {
    uint64_t v[OVL_DROP_COUNT + OVL_STAT_COUNT], t = 0;
    CHECK(ovl_dp_counters(dp, kind, v, n) == n);
    for (uint32_t i = from; i < n; i++)
        t += v[i];
    return t;
}

static uint64_t tap_rx(const struct ovl_dp *dp) {
    uint64_t v[OVL_STAT_COUNT];
    CHECK(ovl_dp_counters(dp, OVL_COUNTERS_STATS, v, OVL_STAT_COUNT) == OVL_STAT_COUNT);
    return v[OVL_STAT_TAP_RX];
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    static double now;
    if (!ctx[0])
        init();
    if (size < 1)
        return 0;
    struct ovl_dp *dp = ctx[in[0] & 3];
    int vxlan = dp->cfg.encap == OVL_ENCAP_VXLAN;
    uint32_t n = 0;
    size_t at = 1;
    struct record r;
    while (n < BATCH && next_record(in, size, &at, dp->tap_slot, &r)) {
        dp->tap_data[n] = dup_exact(r.p, r.len);
        dp->tap_len[n] = r.len;
        n++;
    }
    uint8_t *reads[BATCH];
    memcpy(reads, dp->tap_data, n * sizeof(*reads));
    uint64_t rx0 = tap_rx(dp), drops0 = sum_counters(dp, OVL_COUNTERS_DROPS, OVL_DROP_COUNT, 1);
    struct tx_cursor cur = {0, 0};
    uint32_t rounds = 0, entries = 0;
    now += 1.0;
    while (cur.frame < n) {
        CHECK(++rounds <= 70000);
        uint32_t m = tx_fill_offloaded(dp, n, &cur);
        CHECK(m <= BATCH);
        entries += m;
        if (!m)
            continue;
        uint32_t k = ovl_tx_process(dp, m, now);
        CHECK(k <= m * FUZZ_REMOTES);
        for (uint32_t j = 0; j < k; j++) {
            uint32_t remote;
            int len = ovl_tx_packet(dp, j, &remote, out, sizeof(out));
            CHECK(len > 0 && len <= MTU && remote < FUZZ_REMOTES);
            CHECK(out[0] == 0x45 && get16(out + 2) == (uint32_t)len && ref_sum(out, IPV4_HLEN, 0) == 0xFFFF);
            CHECK(out[9] == (vxlan ? IPPROTO_UDP : IPPROTO_GRE));
            if (vxlan)
                CHECK(get16(out + IPV4_HLEN + 4) == (uint32_t)len - IPV4_HLEN);
        }
        CHECK(ovl_tx_packet(dp, k, &(uint32_t){0}, out, sizeof(out)) == -1);
    }
    /* Each segment is counted once in tap_rx, by ovl_tx_process; a refused read once, by the fill. */
    uint64_t drops = sum_counters(dp, OVL_COUNTERS_DROPS, OVL_DROP_COUNT, 1) - drops0;
    CHECK(tap_rx(dp) - rx0 >= entries && tap_rx(dp) - rx0 - entries <= n && drops <= tap_rx(dp) - rx0);
    ovl_fdb_flush(ovl_dp_fdb(dp), -1);
    for (uint32_t i = 0; i < n; i++)
        free(reads[i]);
    return 0;
}
