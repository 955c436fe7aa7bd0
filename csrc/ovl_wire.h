/* ovl_wire.h: the public API of the C fast path for "the whole wire" (issue 11): the IPv6
 * underlay (ipv6.c), the outer DS field / TTL / DF and ECN (ecn.c), the path MTU towards the inner
 * sender (pmtu.c), TCP MSS clamping (mss.c). Included at the end of ovl.h, whose types it uses;
 * its CDEF section is read by csrc/build.py after ovl.h's, under the same rules. */
#ifndef OVL_WIRE_H
#define OVL_WIRE_H

#include "ovl.h"

/* BEGIN CDEF */
/* ---- issue 11, v6: the IPv6 underlay (csrc/ipv6.c; addresses are OVL_ADDR_LEN bytes everywhere) ---- */

/* UDP encapsulations over IPv6: send UDP checksum 0 (RFC 6935, the kernel's udp6zerocsumtx) instead
 * of the computed one. 0. */
int ovl_config_set_udp6(struct ovl_config *c, uint32_t zero_csum_tx);
/* vxlan.parse / gre.parse of a packet as an IPv6 socket delivers it (v6 = 1: GRE from its header on). */
int ovl_parse6(const struct ovl_config *c, const uint8_t *pkt, size_t len, uint32_t v6, uint32_t *tid);
/* The raw IPv6 socket (IPPROTO_RAW) packets to IPv6 remotes leave through (ovl_from_tap's send_fd is
 * the IPv4 one); -1: none (such packets are dropped as tx_error). 0. */
int ovl_dp_set_send6_fd(struct ovl_dp *dp, int32_t fd);
/* Outer bytes in front of a frame to remote slot r (keyed: the GRE header carries a key), or 0 for a
 * free slot: the encapsulation's over IPv4, 20 more over IPv6. */
uint32_t ovl_dp_remote_outer_len(const struct ovl_dp *dp, uint32_t r, uint32_t keyed);
/* RX ring entry i's outer destination address (OVL_ADDR_LEN bytes; IPV6_PKTINFO of an IPv6 GRE
 * packet), checked against its remote's local address. 0, or -1 for i out of range. */
int ovl_rx_load_dst(struct ovl_dp *dp, uint32_t i, const uint8_t *dst);
/* A second receiving socket the runner polls beside recv_fd (the IPv6 one of a mesh of both
 * families); -1: none. Before ovl_runner_run. */
void ovl_runner_set_recv2(struct ovl_runner *r, int fd);
/* ---- issue 11, part ecn: outer DS field / TTL / DF, ECN per RFC 6040 (csrc/ecn.c) ---- */
#define OVL_TOS_INHERIT 256 /* ovl_config_set_tos: the inner packet's DSCP */
#define OVL_TTL_INHERIT 0   /* ovl_config_set_tunnel's ttl: the inner TTL / hop limit */
#define OVL_DEFAULT_TTL 64  /* TTL inherit with a non-IP inner frame (the route's default hop limit) */
#define OVL_ECN_MASK 3      /* RFC 3168: the ECN field, the low two bits of the DS field */
#define OVL_ECN_NOT_ECT 0
#define OVL_ECN_ECT_1 1
#define OVL_ECN_ECT_0 2
#define OVL_ECN_CE 3
/* --df: the outer IPv4 DF bit. */
enum ovl_df {
    OVL_DF_UNSET = 0,  /* never (the kernel's vxlan default) */
    OVL_DF_SET = 1,    /* always */
    OVL_DF_INHERIT = 2 /* when the inner frame is IPv4 with DF, or IPv6 (untagged) */
};
/* The outer DF policy (enum ovl_df). 0, or -1 out of range. */
int ovl_config_set_df(struct ovl_config *c, uint32_t df);
/* The outer DS field: 0..255 (its DSCP bits; the ECN field is the inner one's), or OVL_TOS_INHERIT.
 * 0, or -1 out of range. */
int ovl_config_set_tos(struct ovl_config *c, uint32_t tos);
/* The outer DS field of RX ring entry i (after ovl_rx_load, which sets 0). 0, or -1 out of range. */
int ovl_rx_set_tos(struct ovl_dp *dp, uint32_t i, uint8_t tos);
/* Patch the outer header at hdr (hdr_len bytes, IPv4 with a valid checksum, or IPv6) for inner
 * frame (len bytes): DS field, TTL, DF as c says (ecn.py outer_fields). 0, or -1 (hdr too short). */
int ovl_ecn_outer(const struct ovl_config *c, uint8_t *hdr, uint32_t hdr_len, const uint8_t *frame, uint32_t len);
/* ---- issue 11, path MTU towards the inner sender (pmtu part; csrc/pmtu.c) ---- */
#define OVL_PMTU_RATE 100   /* default: ICMP replies per second (token bucket) */
#define OVL_PMTU_BURST 10   /* default: bucket size */
#define OVL_PMTU_MIN_MTU 68 /* lowest per-remote path MTU (RFC 791) */
/* (--df, ovl_config_set_df above: inner IPv4 without DF that does not fit leaves in outer fragments unless set.) */
/* The ICMP "fragmentation needed" (inner IPv4 with DF) or ICMPv6 "packet too big" (inner IPv6) answering
 * frame f (len bytes, as it was to be sent), as the kernel's iptunnel_pmtud_build_icmp[v6] builds it:
 * Ethernet back to the sender with the frame's own tags (tci >= 0: an 802.1Q tag with that TCI the frame
 * came with and lost, inserted first), IP from the inner destination to the inner source (TTL / hop limit
 * of the frame), the usable mtu, the frame's IP packet quoted up to 576 / 1280 bytes in all. Returns its
 * length into out, 0 if none is due (the kernel's exclusions: mtu below 576 / 1280, IPv4 without DF or a
 * fragment, multicast / broadcast / zero / loopback addresses, ICMP errors, later fragments; not IP), -1 if
 * cap is too small. */
int ovl_pmtu_reply(const uint8_t *f, size_t len, int32_t tci, uint32_t mtu, uint8_t *out, size_t cap);
/* Fragment k (0, 1, ...) of the IPv4 packet pkt (no options) for a path of mtu bytes, with IP id id, into
 * out: its length, 0 past the last fragment, -1 (cap, options, mtu below 28). */
int ovl_ip4_fragment(const uint8_t *pkt, size_t len, uint32_t mtu, uint32_t id, uint32_t k, uint8_t *out,
                     size_t cap);
/* The path MTU towards the remote in slot r (OVL_PMTU_MIN_MTU..65535; 0: the underlay MTU again). 0, -1. */
int ovl_dp_set_remote_mtu(struct ovl_dp *dp, uint32_t r, uint32_t mtu);
/* The path MTU in effect towards slot r, 0 for a free slot. */
uint32_t ovl_dp_remote_mtu(const struct ovl_dp *dp, uint32_t r);
/* The replies' token bucket: rate per second (0: no replies, all counted as limited), burst >= 1. 0, -1. */
int ovl_dp_set_pmtu_rate(struct ovl_dp *dp, double rate, double burst);
/* Reply q queued since the last TAP batch (or ovl_dp_pmtu_clear), the TAP's virtio header first when it
 * has one: its length (copied to out if it fits cap), or -1 past the last. */
int ovl_dp_pmtu_reply(const struct ovl_dp *dp, uint32_t q, uint8_t *out, uint32_t cap);
void ovl_dp_pmtu_clear(struct ovl_dp *dp);
/* Fragment k of the copy q that the last ovl_tx_process queued for fragmentation; its remote to *remote.
 * Its length, 0 past its last fragment, -1 for q out of range or cap too small. */
int ovl_tx_fragment(const struct ovl_dp *dp, uint32_t q, uint32_t k, uint32_t *remote, uint8_t *out, uint32_t cap);
/* ---- TCP MSS clamping (issue 11, mss part: csrc/mss.c) ----
 * The MSS option of a TCP SYN / SYN-ACK crossing the tunnel (either way) is lowered to what
 * fits (never raised), its TCP checksum updated incrementally (RFC 1624). */
#define OVL_CLAMP_MSS_OFF 0
#define OVL_CLAMP_MSS_AUTO 1
#define OVL_MSS_MIN 536   /* smallest fixed clamp: the IPv4 default MSS (RFC 9293 3.7.1) */
#define OVL_MSS_MAX 65495 /* largest fixed clamp: 65,535 - IPv4 - TCP headers */
/* --clamp-mss: OVL_CLAMP_MSS_OFF, OVL_CLAMP_MSS_AUTO (what the tunnel fits, per remote), or a fixed
 * MSS OVL_MSS_MIN..OVL_MSS_MAX. 0, or -1 for any other value (nothing changed). */
int ovl_config_set_clamp_mss(struct ovl_config *c, uint32_t clamp);
/* mss.clamp: lower every MSS option of the TCP SYN (or SYN-ACK) in frame (Ethernet, up to two VLAN
 * tags, IPv4 without fragmentation or IPv6 without extension headers) above limit to limit, in
 * place. partial: a TCP checksum equal to the pseudo-header seed is a partial one (a received frame
 * whose sender left it to offload) and stays as it is; otherwise the checksum is updated (RFC 1624).
 * Returns 1 if an option was lowered, 0 if nothing changed (no SYN, no MSS above limit, a limit above
 * 65535, cut short, malformed options: those after a malformed one are not read). */
int ovl_mss_clamp(uint8_t *frame, uint32_t len, uint32_t limit, uint32_t partial);
/* The MSS a SYN of IP version v6 (0: IPv4, 1: IPv6) gets with the context's clamp: the fixed one, or
 * auto: towards remote slot r (-1 or a free slot: the smallest over the remotes in use) the underlay
 * path MTU (pmtu.c) minus its outer header (ipv6.c) (keyed: a GRE key field), the inner L2 header of l2_len bytes, the IP
 * header and 20 bytes of TCP header; never below 88 (TCP_MIN_MSS). 0 with the clamp off. */
uint32_t ovl_dp_mss_limit(const struct ovl_dp *dp, int32_t r, uint32_t v6, uint32_t keyed, uint32_t l2_len);
/* ---- the injection TAP for IPv6 remotes (issue 11, inject6 part: csrc/inject.c) ----
 * on 1: the host forwards IPv6 arriving on the injection TAP (net.ipv6.conf.<inj>.force_forwarding),
 * so super-frames to IPv6 remotes go through it too (gso_type UDP_TUNNEL_IPV6); 0 (the default, and
 * after every ovl_dp_set_inject): they are segmented here. 0, or -1 before ovl_dp_set_inject. */
int ovl_dp_set_inject6(struct ovl_dp *dp, uint32_t on);
/* END CDEF */

#endif
