/* csum.c: the Internet checksum (ipv4.checksum; RFC 1071). */
#include "internal.h"

/* Sum of big-endian 16-bit words, an odd last byte padded with zero, up to the
 * end-around carry (callers add to it and fold). Summed 8 bytes at a time in native
 * order: a 32-bit word is congruent to the sum of its halves modulo 0xFFFF, and the
 * one's complement sum of byte-swapped words is the byte-swapped sum (RFC 1071 2(B)). */
uint64_t sum16(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        s += (w & 0xFFFFFFFFu) + (w >> 32);
    }
    for (; i + 2 <= n; i += 2) {
        uint16_t h;
        memcpy(&h, p + i, 2);
        s += h;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (i < n)
        s += p[i];
    while (s >> 16)
        s = (s & 0xFFFF) + (s >> 16);
    s = (s & 0xFF) << 8 | s >> 8;
#else
    if (i < n)
        s += (uint64_t)p[i] << 8;
#endif
    return s;
}

uint16_t ovl_checksum(const uint8_t *data, size_t len, uint64_t initial) { return fold(initial + sum16(data, len)); }
