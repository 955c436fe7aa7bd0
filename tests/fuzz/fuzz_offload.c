/* fuzz_offload.c: ovl_offload_frame, the virtio header and TSO segmentation of one TAP read.
 *
 * Input: a meta byte (bits 0-2: room, 1..8 segments per call; bits 3-4: slot size
 * 128, 1514, 9216 or 65600 bytes), the 10-byte virtio header (native endian, as the
 * TAP writes it), and the frame. The frame is cut as the TX batch cuts it: call after
 * call from the cursor on until the cursor is back at 0.
 *
 * Checked: a result is a segment count within room or TX_BAD_OFFLOAD / TX_TOO_BIG; a
 * frame without GSO is passed through in place (a partial checksum completed inside the
 * frame); TSO segments fit the slot, carry the frame's headers, valid IPv4 header and TCP
 * checksums (the harness's own checksum), sequence numbers running on, and between them
 * exactly the frame's payload. */
#include "fuzz_common.h"

static const uint32_t slots[4] = {128, 1514, 9216, 65600};
static uint8_t outbuf[8 * 65600];

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
    if (size < 1 + OVL_VNET_HDR_LEN || size - 1 - OVL_VNET_HDR_LEN > OVL_TAP_READ)
        return 0;
    uint32_t room = 1 + (in[0] & 7), slot = slots[(in[0] >> 3) & 3];
    const uint8_t *vnet = in + 1;
    uint32_t len = (uint32_t)(size - 1 - OVL_VNET_HDR_LEN);
    uint8_t *frame = dup_exact(in + 1 + OVL_VNET_HDR_LEN, len);
    uint8_t *segs[8];
    uint32_t lens[8], seg = 0, calls = 0, nseg = 0, hdrs = 0, seq0 = 0, l3 = 0, l4 = 0;
    uint64_t payload = 0;
    int v6 = 0;
    do {
        int k = ovl_offload_frame(vnet, frame, len, &seg, outbuf, slot, segs, lens, room);
        if (k < 0) {
            CHECK(k == -OVL_DROP_TX_BAD_OFFLOAD || k == -OVL_DROP_TX_TOO_BIG);
            CHECK(calls == 0); /* a frame is refused at once or not at all */
            break;
        }
        CHECK(k >= 1 && (uint32_t)k <= room);
        calls++;
        if (vnet[1] == OVL_VNET_GSO_NONE) {
            CHECK(k == 1 && segs[0] == frame && lens[0] == len && seg == 0);
            CHECK(memcmp(frame, in + 1 + OVL_VNET_HDR_LEN, len) == 0 || (vnet[0] & OVL_VNET_F_NEEDS_CSUM));
            nseg = 1;
            break;
        }
        if (nseg == 0) { /* the first segment: the headers as the frame has them */
            uint16_t type;
            l3 = ref_l3(frame, len, &type);
            CHECK(l3 && (type == ETH_P_IP || type == ETH_P_IPV6));
            v6 = type == ETH_P_IPV6;
            l4 = v6 ? l3 + IPV6_HLEN : l3 + (uint32_t)(frame[l3] & 0x0F) * 4;
            hdrs = l4 + (uint32_t)(frame[l4 + 12] >> 4) * 4;
            seq0 = get32(frame + l4 + 4);
            CHECK(hdrs < len);
        }
        for (int j = 0; j < k; j++, nseg++) {
            const uint8_t *s = segs[j];
            uint32_t sl = lens[j];
            CHECK(s == outbuf + (size_t)j * slot && sl <= slot && sl > hdrs);
            CHECK(memcmp(s, frame, l3) == 0); /* Ethernet header and tags */
            CHECK(memcmp(s + hdrs, frame + hdrs + payload, sl - hdrs) == 0);
            CHECK(get32(s + l4 + 4) == seq0 + (uint32_t)payload);
            if (v6) {
                CHECK(get16(s + l3 + 4) == sl - l3 - IPV6_HLEN);
            } else {
                CHECK(get16(s + l3 + 2) == sl - l3);
                CHECK(ref_sum(s + l3, l4 - l3, 0) == 0xFFFF);
            }
            CHECK(ref_tcp_ok(s, sl, l3, l4, v6));
            payload += sl - hdrs;
        }
        CHECK(calls <= 70000);
    } while (seg != 0);
    if (nseg && vnet[1] != OVL_VNET_GSO_NONE) {
        uint16_t gso_size;
        memcpy(&gso_size, vnet + 4, 2);
        CHECK(payload == len - hdrs);
        CHECK(nseg == (len - hdrs + gso_size - 1) / gso_size);
    }
    free(frame);
    return 0;
}
