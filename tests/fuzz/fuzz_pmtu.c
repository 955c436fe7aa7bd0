/* fuzz_pmtu.c (issue 11, pmtu part): the ICMP / ICMPv6 reply to a frame too big for its path, the
 * outer fragments, and the too-big path of ovl_tx_process with per-remote path MTUs.
 *
 * Input: a meta byte (bit 0: GRE, else VXLAN; bit 1: a lost tag is given back; bit 2: --df set),
 * two bytes of usable MTU, two bytes of path MTU for remote 1, then the frame.
 *
 * Checked: ovl_pmtu_reply reads only the frame (an exact-size copy) and writes only within cap; a
 * reply is Ethernet back to the sender, an IPv4 header whose checksum verifies and an ICMP message
 * whose checksum verifies (IPv6: with the pseudo-header), and quotes the frame's own bytes; a cap
 * one byte short fails. ovl_ip4_fragment's fragments fit the MTU, carry the id and reassemble to the
 * packet. ovl_tx_process: every packet fits its remote's path; every queued fragment fits its path,
 * replies are within the queue and well-formed. */
#include "fuzz_common.h"

#define SLOT 9216
#define MTU 9000

static struct ovl_dp *dps[2][2];
static uint8_t out[SLOT + 64], re[SLOT + 64];

static void init(void) {
    for (int i = 0; i < 2; i++)
        for (int df = 0; df < 2; df++) {
            struct fuzz_cfg f = {i ? OVL_ENCAP_GRE : OVL_ENCAP_VXLAN, 42, 1, 1, 8, MTU, SLOT, 0, 0, 1};
            dps[i][df] = fuzz_dp(&f);
            dps[i][df]->cfg.df = df ? OVL_DF_SET : OVL_DF_UNSET;
        }
}

static void check_reply(const uint8_t *f, uint32_t len, const uint8_t *r, int n, int32_t tci) {
    uint16_t type = 0;
    uint32_t l3 = l3_offset(f, len, &type);
    CHECK(l3 && (type == ETH_P_IP || type == ETH_P_IPV6));
    CHECK(!memcmp(r, f + 6, 6) && !memcmp(r + 6, f, 6));
    uint32_t at = l3 + (tci >= 0 ? VLAN_HLEN : 0);
    const uint8_t *ip = r + at;
    if (type == ETH_P_IP) {
        CHECK(ref_sum(ip, IPV4_HLEN, 0) == 0xFFFF);
        uint32_t total = get16(ip + 2);
        CHECK(total <= 576 && at + total == (uint32_t)n);
        CHECK(ref_sum(ip + IPV4_HLEN, total - IPV4_HLEN, 0) == 0xFFFF);
        CHECK(!memcmp(ip + IPV4_HLEN + 8, f + l3, total - IPV4_HLEN - 8));
    } else {
        uint32_t plen = get16(ip + 4);
        CHECK(plen + IPV6_HLEN <= 1280 && at + IPV6_HLEN + plen == (uint32_t)n);
        uint32_t pseudo = ref_sum(ip + 8, 32, 0) + plen + 58;
        CHECK(ref_sum(ip + IPV6_HLEN, plen, pseudo) == 0xFFFF);
        CHECK(!memcmp(ip + IPV6_HLEN + 8, f + l3, plen - 8));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    static double now;
    if (!dps[0][0])
        init();
    if (size < 5 || size - 5 > SLOT)
        return 0;
    int gre = in[0] & 1, give_tag = (in[0] >> 1) & 1, df = (in[0] >> 2) & 1;
    uint32_t mtu = get16(in + 1), path = get16(in + 3);
    uint32_t len = (uint32_t)(size - 5);
    uint8_t *frame = dup_exact(in + 5, len);
    int32_t tci = give_tag ? (int32_t)get16(in + 1) : -1;

    /* the pure reply */
    int n = ovl_pmtu_reply(frame, len, tci, mtu, out, sizeof(out));
    CHECK(n >= 0 && (size_t)n <= sizeof(out));
    if (n > 0) {
        check_reply(frame, len, out, n, tci);
        uint8_t *tight = malloc((size_t)n);
        CHECK(tight != NULL);
        CHECK(ovl_pmtu_reply(frame, len, tci, mtu, tight, (size_t)n) == n && !memcmp(tight, out, (size_t)n));
        CHECK(ovl_pmtu_reply(frame, len, tci, mtu, tight, (size_t)n - 1) == -1);
        free(tight);
    }

    /* the fragments of an IPv4 packet made of the frame */
    if (len >= IPV4_HLEN && mtu >= 28) {
        memcpy(re, frame, len);
        re[0] = 0x45;
        uint32_t got = 0, k = 0;
        int m;
        while ((m = ovl_ip4_fragment(re, len, mtu, 7, k, out, sizeof(out))) > 0) {
            CHECK((uint32_t)m <= mtu && get16(out + 4) == 7 && ref_sum(out, IPV4_HLEN, 0) == 0xFFFF);
            CHECK((get16(out + 6) & 0x1FFF) * 8 == got);
            CHECK(!memcmp(out + IPV4_HLEN, re + IPV4_HLEN + got, (uint32_t)m - IPV4_HLEN));
            got += (uint32_t)m - IPV4_HLEN;
            k++;
        }
        CHECK(m == 0 || (m == -1 && k == 0));
        CHECK(m == -1 || got == len - IPV4_HLEN);
    }

    /* the batch, remote 1 on a path of its own */
    struct ovl_dp *dp = dps[gre][df];
    ovl_dp_pmtu_clear(dp);
    CHECK(ovl_dp_set_remote_mtu(dp, 1, path >= OVL_PMTU_MIN_MTU ? path : 0) == 0);
    CHECK(ovl_tx_load(dp, 0, frame, len) == 0);
    now += 0.001;
    uint32_t pk = ovl_tx_process(dp, 1, now);
    for (uint32_t i = 0; i < pk; i++) {
        uint32_t remote;
        int plen = ovl_tx_packet(dp, i, &remote, out, sizeof(out));
        CHECK(plen > 0 && (uint32_t)plen <= ovl_dp_remote_mtu(dp, remote));
    }
    for (uint32_t q = 0;; q++) {
        uint32_t remote, k = 0;
        int fl;
        while ((fl = ovl_tx_fragment(dp, q, k, &remote, out, sizeof(out))) > 0) {
            CHECK((uint32_t)fl <= ovl_dp_remote_mtu(dp, remote) && ref_sum(out, IPV4_HLEN, 0) == 0xFFFF);
            k++;
        }
        if (fl < 0) {
            CHECK(k == 0);
            break;
        }
    }
    for (uint32_t q = 0;; q++) {
        int rl = ovl_dp_pmtu_reply(dp, q, out, sizeof(out));
        if (rl < 0)
            break;
        CHECK(rl >= ETH_HLEN + IPV4_HLEN + 8);
    }
    free(frame);
    return 0;
}
