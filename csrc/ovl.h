/* ovl.h: the public API of ovl-dp's C fast path, and the cffi cdef.
 *
 * "Python decides; C moves bytes." Python builds an opaque configuration with
 * ovl_config_new() and its setters, creates a datapath context from it with
 * ovl_dp_new(), and then makes one call per batch: ovl_from_tap() /
 * ovl_from_tunnel() do the I/O (read / sendmmsg, recvmmsg / write) around the
 * pure steps ovl_tx_process() / ovl_rx_process() (the packet logic) and, with
 * TAP offloads, ovl_offload_frame() (TSO segmentation) and ovl_rx_plan() (the
 * TAP writes, TCP segments coalesced). The Python wrapper runs exactly these
 * steps on buffers of its own (ovl_tx_load / ovl_rx_load), so tests drive the
 * code that the I/O path runs.
 *
 * Nothing of the context's layout is public: the types below are declared,
 * never defined here. Counters leave C as uint64_t arrays in the order of the
 * enums (the order of datapath/counters.py), FDB rows as parallel arrays.
 *
 * The behaviour is defined by the pure-Python reference (datapath/encap/vxlan.py,
 * gre.py, ipv4.py, datapath/ether.py, fdb.py, pypath.py); tests hold the two equal.
 *
 * The section between BEGIN CDEF and END CDEF is read verbatim by
 * csrc/build.py as the cffi cdef, so it holds only plain declarations: no
 * struct bodies, no includes, no macros but integer constants.
 */
#ifndef OVL_H
#define OVL_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */
#define OVL_MAX_REMOTES 1024 /* remote slots; a context's TX rings grow with the highest slot in use */
#define OVL_MAX_OUTER 56 /* outer IPv6 + UDP + VXLAN (IPv4: 36; GRE with a key: 28, over IPv6 48) */
#define OVL_ADDR_LEN 16  /* underlay addresses: IPv6, or IPv4 mapped (::ffff:a.b.c.d) */
#define OVL_MAX_BATCH 1024
#define OVL_MAX_SLOT 65600
#define OVL_VLAN_COUNT 4096 /* 12-bit VLAN IDs; 0 = untagged */
#define OVL_TAP_READ 65600 /* largest frame read from a TAP with offloads (64 KiB GSO + headers) */
#define OVL_GSO_SOCKETS 16 /* at most this many UDP sockets for UDP GSO sends */
#define OVL_VNET_HDR_LEN 10 /* struct virtio_net_hdr */
#define OVL_VNET_F_NEEDS_CSUM 1
#define OVL_VNET_F_DATA_VALID 2
#define OVL_VNET_GSO_NONE 0
#define OVL_VNET_GSO_TCPV4 1
#define OVL_VNET_GSO_TCPV6 4
#define OVL_VNET_GSO_ECN 0x80

/* Encapsulations: the index of the one table of encapsulation functions (encap.c). */
enum ovl_encap_id {
    OVL_ENCAP_VXLAN = 0,
    OVL_ENCAP_GRE = 1,
    OVL_ENCAP_COUNT = 2
};

/* Drop reasons: the values of datapath.counters.Drop. */
enum ovl_drop {
    OVL_DROP_TX_RUNT = 1,
    OVL_DROP_TX_TOO_BIG = 2,
    OVL_DROP_TX_ERROR = 3,
    OVL_DROP_RX_NOT_REMOTE = 4,
    OVL_DROP_RX_TRUNCATED = 5,
    OVL_DROP_RX_BAD_FLAGS = 6,
    OVL_DROP_RX_BAD_VNI = 7,
    OVL_DROP_RX_BAD_VERSION = 8,
    OVL_DROP_RX_BAD_PROTO = 9,
    OVL_DROP_RX_BAD_KEY = 10,
    OVL_DROP_RX_BAD_CSUM = 11,
    OVL_DROP_RX_BAD_SRC_MAC = 12,
    OVL_DROP_RX_TAP_ERROR = 13,
    OVL_DROP_TX_BAD_OFFLOAD = 14, /* virtio header or GSO super-frame we cannot handle */
    OVL_DROP_TX_FULL = 15,        /* the underlay send buffer or device queue was full (EAGAIN, ENOBUFS) */
    OVL_DROP_RX_BAD_SUPER = 16,   /* a received inner frame beyond the TAP MTU and a ring slot that is no TCP
                                   * super-packet we can pass on (not TCP, lengths or checksum wrong) */
    OVL_DROP_RX_ECN = 17,         /* issue 11, ecn: outer CE, inner Not-ECT (RFC 6040) */
    OVL_DROP_RX_BAD_DST = 18,     /* issue 11, v6: an IPv6 GRE packet not to the local address of its remote */
    OVL_DROP_COUNT = 19 /* size of the drops array; index 0 is unused */
};

/* Outcome of ovl_fdb_learn: the values of datapath.fdb.Learn. */
enum ovl_learn {
    OVL_LEARN_REFRESHED = 0,
    OVL_LEARN_LEARNED = 1,
    OVL_LEARN_MOVED = 2,
    OVL_LEARN_STATIC = 3,
    OVL_LEARN_FULL = 4
};

/* Datapath-wide counters: indices in the order of datapath.counters.STAT_FIELDS. */
enum ovl_stat {
    OVL_STAT_TAP_RX = 0,
    OVL_STAT_TAP_TX = 1,
    OVL_STAT_TX_UNICAST = 2,
    OVL_STAT_TX_FLOODED = 3,
    OVL_STAT_TAP_RX_GSO = 4, /* TCP super-frames read from the TAP (each counted in tap_rx per segment) */
    OVL_STAT_TAP_TX_GSO = 5, /* super-frames written to the TAP (each counted in tap_tx per segment) */
    OVL_STAT_TX_GSO = 6,     /* UDP_SEGMENT sends of several datagrams (each counted in tx_packets) */
    OVL_STAT_RX_GRO = 7,     /* UDP_GRO buffers of several datagrams received */
    OVL_STAT_RX_SUPER = 8,       /* super-packets received whole and written to the TAP as one TSO frame */
    OVL_STAT_RX_SUPER_SPLIT = 9, /* super-packets received whole and cut into segments here */
    /* issue 11 (slots fixed for all its parts) */
    OVL_STAT_TX_PMTU_ICMP = 10,    /* pmtu: ICMP / ICMPv6 "too big" written to the TAP */
    OVL_STAT_TX_PMTU_LIMITED = 11, /* pmtu: suppressed by the rate limit */
    OVL_STAT_TX_FRAGMENTED = 12,   /* pmtu: outer packets sent to be fragmented per --df */
    OVL_STAT_MSS_CLAMPED = 13,     /* mss: SYN / SYN-ACK whose MSS option was lowered */
    OVL_STAT_RX_ECN_CE = 14,       /* ecn: inner CE set from an outer CE */
    OVL_STAT_COUNT = 15
};

/* Per-remote counters: indices in the order of datapath.counters.REMOTE_FIELDS. */
enum ovl_remote_stat {
    OVL_REMOTE_TX_PACKETS = 0,
    OVL_REMOTE_TX_BYTES = 1,
    OVL_REMOTE_TX_FLOOD = 2,
    OVL_REMOTE_RX_PACKETS = 3,
    OVL_REMOTE_RX_BYTES = 4,
    OVL_REMOTE_COUNT = 5
};

/* FDB counters: indices in the order of datapath.counters.FDB_FIELDS. */
enum ovl_fdb_stat {
    OVL_FDB_LEARNS = 0,
    OVL_FDB_MOVES = 1,
    OVL_FDB_REFUSED_FULL = 2,
    OVL_FDB_AGED = 3,
    OVL_FDB_COUNT = 4
};

/* Why ovl_dp_add_remote refused a remote (its negative results). */
enum ovl_add_error {
    OVL_ADD_FULL = -1,      /* OVL_MAX_REMOTES slots in use */
    OVL_ADD_DUPLICATE = -2, /* a remote with that address is there */
    OVL_ADD_NOMEM = -3      /* the TX rings could not grow */
};

/* Which counters ovl_dp_counters copies out. */
enum ovl_counters {
    OVL_COUNTERS_STATS = 0,   /* OVL_STAT_COUNT values */
    OVL_COUNTERS_DROPS = 1,   /* OVL_DROP_COUNT values, by drop reason */
    OVL_COUNTERS_REMOTES = 2, /* OVL_REMOTE_COUNT values per remote slot, slot after slot up to the highest in use
                               * (a free slot's values are 0) */
    OVL_COUNTERS_FDB = 3      /* OVL_FDB_COUNT values */
};

struct ovl_config; /* what ovl_dp_new needs; built with the ovl_config_* setters */
struct ovl_fdb;    /* the MAC table */
struct ovl_dp;     /* the datapath context: configuration, rings, counters, FDB */

/* ---- pure functions ---- */

/* ether.flow_hash: FNV-1a of the inner flow key (len >= 14; a shorter frame hashes to the offset basis). */
uint32_t ovl_flow_hash(const uint8_t *frame, size_t len);
/* ipv4.checksum: the Internet checksum of data, the one's complement sum starting at initial. */
uint16_t ovl_checksum(const uint8_t *data, size_t len, uint64_t initial);
/* The name of encapsulation id (an Encap name, datapath/encap), or NULL for an id without one. */
const char *ovl_encap_name(uint32_t encap);

/* ---- the configuration ---- */

/* A configuration for encapsulation encap (enum ovl_encap_id) with nothing else set, or NULL for
 * an unknown id or no memory. The setters only store (and refuse what does not fit the storage,
 * returning -1); ovl_dp_new checks the whole. */
struct ovl_config *ovl_config_new(uint32_t encap);
/* Release c (a context made from it keeps its own copy). */
void ovl_config_free(struct ovl_config *c);
/* The tunnel id of untagged traffic (VNI, GRE key; 0 for GRE without a key) and whether the header
 * carries it where the protocol makes it optional (GRE's K bit); outer IPv4 TTL. 0. */
int ovl_config_set_tunnel(struct ovl_config *c, uint32_t id, uint32_t keyed, uint32_t ttl);
/* Encapsulations in UDP: the destination port, and whether to compute the UDP checksum. 0. */
int ovl_config_set_udp(struct ovl_config *c, uint32_t port, uint32_t udp_csum);
/* Largest outer packet; frames / packets per batch; bytes per ring slot. 0. */
int ovl_config_set_ring(struct ovl_config *c, uint32_t underlay_mtu, uint32_t batch, uint32_t slot_size);
/* The MAC table: size cap, ageing in seconds (0 = never), hash seed. 0. */
int ovl_config_set_fdb(struct ovl_config *c, uint32_t max_entries, double ageing, uint64_t seed);
/* vnet_hdr_len: 0 for a plain TAP, 10 or 12 when a virtio_net_hdr leads every TAP read and write;
 * rx_coalesce (with vnet_hdr_len): TCP segments of a batch go to the TAP as super-frames;
 * udp_gro (encapsulations in UDP): the receiving socket has UDP_GRO on. 0. */
int ovl_config_set_offloads(struct ovl_config *c, uint32_t vnet_hdr_len, uint32_t rx_coalesce, uint32_t udp_gro);
/* Add a remote: its address and the local address we send to it from (OVL_ADDR_LEN bytes each:
 * IPv6, or IPv4 mapped ::ffff:a.b.c.d, network order; both of one family). Returns its index (its
 * slot in a context), or -1 when OVL_MAX_REMOTES are there or the families differ. */
int ovl_config_add_remote(struct ovl_config *c, const uint8_t *addr, const uint8_t *local);
/* Frames of VLAN vlan leave untagged in tunnel id tid and come back tagged. -1 for a VLAN
 * beyond OVL_VLAN_COUNT or one already mapped. */
int ovl_config_map_vlan(struct ovl_config *c, uint32_t vlan, uint32_t tid);
/* Config.outer_len: bytes of outer header in front of an untagged frame. */
uint32_t ovl_outer_len(const struct ovl_config *c);

/* ---- codecs (the functions the batch steps use, for one packet) ---- */

/* vxlan.encap / gre.encap: the outer packet for frame to remote r, into out (cap bytes). Its
 * length, or -drop (TX_ERROR: no such remote; TX_RUNT; TX_TOO_BIG: beyond 64 KiB or cap). */
int ovl_encap(const struct ovl_config *c, uint32_t remote, const uint8_t *frame, size_t len, uint8_t *out,
              size_t cap);
/* vxlan.parse / gre.parse: offset of the inner frame and *tid, or -drop and *tid = 0. */
int ovl_parse(const struct ovl_config *c, const uint8_t *pkt, size_t len, uint32_t *tid);
/* vxlan.decap(pkt, vni) / gre.decap(pkt, key): ovl_parse accepting only the base tunnel id. */
int ovl_decap(const struct ovl_config *c, const uint8_t *pkt, size_t len);
/* One frame read from a TAP with its virtio_net_hdr (vnet, OVL_VNET_HDR_LEN bytes, native endian),
 * as the TX batch cuts it: a TCP super-frame (gso_type TCPV4/TCPV6) into gso_size segments, each
 * written into a slot of slot bytes at out; any other frame is its own one segment, at frame, a
 * partial checksum (NEEDS_CSUM) completed in place. Segments from *seg on, at most room of them;
 * their addresses go to segs, their lengths to lens; *seg is left where the next call goes on,
 * 0 once the frame is done. Returns the number of segments (>= 1), or -drop: -OVL_DROP_TX_BAD_OFFLOAD,
 * or -OVL_DROP_TX_TOO_BIG when a segment (headers + gso_size) does not fit a slot. */
int ovl_offload_frame(const uint8_t *vnet, uint8_t *frame, uint32_t len, uint32_t *seg, uint8_t *out,
                      uint32_t slot, uint8_t **segs, uint32_t *lens, uint32_t room);

/* ---- the MAC table (fdb.Fdb) ---- */

/* NULL if max_entries is not 1..2**28, ageing is negative or memory is short. */
struct ovl_fdb *ovl_fdb_new(uint32_t max_entries, double ageing, uint64_t seed);
/* Release a table of ovl_fdb_new (never the one of a context). */
void ovl_fdb_free(struct ovl_fdb *fdb);
/* Remote index of mac in vlan, or -1 (an expired entry is removed and counted as aged). */
int32_t ovl_fdb_lookup(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan, double now);
/* Record that mac was seen in vlan behind remote: enum ovl_learn. */
int ovl_fdb_learn(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan, int32_t remote, double now);
/* Pin mac in vlan to remote; 0, or -1 at the size cap. */
int ovl_fdb_add_static(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan, int32_t remote);
/* A learned entry carried over from another table (a takeover), last seen age seconds before now:
 * 1 entered, 0 left out (a static entry or a more recently seen one holds the key, or age is past
 * the ageing time or negative/NaN), -1 at the size cap. Not counted as a learn. */
int ovl_fdb_restore(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan, int32_t remote, double age, double now);
/* Forget mac in vlan; 1 if it was there. */
int ovl_fdb_remove(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan);
/* Remove every learned entry past its age; returns how many. */
uint32_t ovl_fdb_expire(struct ovl_fdb *fdb, double now);
/* Entries in the table (expired ones not yet swept included). */
uint32_t ovl_fdb_count(const struct ovl_fdb *fdb);
/* Remove every entry (learned and static) behind remote, or every entry at all for remote < 0;
 * returns how many (not counted as aged). */
uint32_t ovl_fdb_flush(struct ovl_fdb *fdb, int32_t remote);
/* New size cap and ageing, at once (the same ranges as ovl_fdb_new; a table with more entries than
 * the new cap keeps them all and refuses new ones until it is below the cap). 0, or -1 (out of
 * range, or no memory to grow the table: nothing changed). */
int ovl_fdb_set_limits(struct ovl_fdb *fdb, uint32_t max_entries, double ageing);
/* Up to cap entries as parallel arrays (macs: 6 bytes each; ages: seconds since last seen, 0 for
 * static); returns how many. */
uint32_t ovl_fdb_entries(const struct ovl_fdb *fdb, double now, uint8_t *macs, uint16_t *vlans, int32_t *remotes,
                         uint8_t *statics, double *ages, uint32_t cap);
/* The counters (enum ovl_fdb_stat), up to n of them; returns how many were copied. */
uint32_t ovl_fdb_counters(const struct ovl_fdb *fdb, uint64_t *out, uint32_t n);

/* ---- the datapath context ---- */

/* A context for configuration c (copied), or NULL if c is out of range (a remote given twice
 * included; no remote at all is allowed) or memory is short. */
struct ovl_dp *ovl_dp_new(const struct ovl_config *c);
/* Release dp, its rings and its MAC table. */
void ovl_dp_free(struct ovl_dp *dp);
/* The context's MAC table (lives as long as dp). */
struct ovl_fdb *ovl_dp_fdb(struct ovl_dp *dp);
/* Add a remote while the context runs: its address and the local address we send to it from
 * (OVL_ADDR_LEN bytes each, as ovl_config_add_remote). It takes the lowest free slot, with zeroed counters and no packet
 * received yet, and is flooded to from the next batch on. Returns the slot, or enum ovl_add_error
 * (OVL_ADD_FULL also for families that differ). */
int ovl_dp_add_remote(struct ovl_dp *dp, const uint8_t *addr, const uint8_t *local);
/* Remove the remote in slot r: no longer flooded to, its packets dropped as rx_not_remote, and every
 * FDB entry behind it (learned and static) purged. Returns the number of entries purged, or -1 for a
 * free slot. Other remotes keep their slots. */
int ovl_dp_remove_remote(struct ovl_dp *dp, uint32_t r);
/* Change the local address we send to the remote in slot r from (OVL_ADDR_LEN bytes, its family; the
 * underlay's address changed): its outer header is rebuilt, its counters, last receive and FDB
 * entries stay. Returns 0, or -1 for a free slot or another family. */
int ovl_dp_set_remote_local(struct ovl_dp *dp, uint32_t r, const uint8_t *local);
/* The remotes in use, in slot order, up to cap of them, as parallel arrays: slot, address and local
 * address (OVL_ADDR_LEN bytes each, IPv4 mapped), and the now of the last batch that received a packet from
 * it (delivered, not dropped) with seen = 1, or seen = 0 if none yet. Returns how many. */
uint32_t ovl_dp_remotes(const struct ovl_dp *dp, uint32_t *slots, uint8_t *addrs, uint8_t *locals, double *last_rx,
                        uint8_t *seen, uint32_t cap);
/* Encapsulations in UDP: the UDP sockets packets leave through with UDP_SEGMENT (picked by source
 * port). Returns how many are used (0 for other encapsulations), -1 for more than OVL_GSO_SOCKETS. */
int ovl_dp_set_gso_fds(struct ovl_dp *dp, const int32_t *fds, uint32_t n);
/* Copies counters of one kind (enum ovl_counters) to out, at most n; returns how many. */
uint32_t ovl_dp_counters(const struct ovl_dp *dp, uint32_t kind, uint64_t *out, uint32_t n);
/* The errno of the last batch's failed read / receive (other than "no more data"), or 0. */
int ovl_dp_io_errno(const struct ovl_dp *dp);
/* 1 if TCP segments are coalesced on the way to the TAP (rx_coalesce with a virtio header). */
int ovl_dp_coalescing(const struct ovl_dp *dp);

/* ---- the batch steps, on buffers the caller loads ---- */

/* TX ring entry i (< batch) := frame data (len bytes; ovl_tx_process strips a mapped VLAN's tag in
 * place). 0, or -1 for i out of range. */
int ovl_tx_load(struct ovl_dp *dp, uint32_t i, uint8_t *data, uint32_t len);
/* PyForwarder.tx: TX ring entries 0..n -> packets to send; returns their number. */
uint32_t ovl_tx_process(struct ovl_dp *dp, uint32_t n, double now);
/* Packet m of the last ovl_tx_process: its remote to *remote, outer header + frame to out if its
 * length fits cap. Returns that length, or -1 for m out of range. */
int ovl_tx_packet(const struct ovl_dp *dp, uint32_t m, uint32_t *remote, uint8_t *out, uint32_t cap);
/* RX ring entry i (< batch; 64 times that with udp_gro) := packet data (len bytes, as the socket delivered it; a VLAN tag may be
 * inserted in place before the inner frame) from outer source src (OVL_ADDR_LEN bytes: IPv6, or IPv4
 * mapped; an IPv6 source means an IPv6 socket's packet); truncated: the socket cut it short; no
 * destination known (ovl_rx_load_dst). 0, or -1 for i out of range. */
int ovl_rx_load(struct ovl_dp *dp, uint32_t i, uint8_t *data, uint32_t len, const uint8_t *src, uint32_t truncated);
/* PyForwarder.rx: decapsulates, checks and learns RX ring entries 0..n; returns frames to deliver. */
uint32_t ovl_rx_process(struct ovl_dp *dp, uint32_t n, double now);
/* Entry i after ovl_rx_process: offset of the inner frame in its data, or -drop; *remote. */
int ovl_rx_result(const struct ovl_dp *dp, uint32_t i, int32_t *remote);
/* The TAP writes for entries 0..n after ovl_rx_process, in order: one per delivered frame, or with
 * coalescing one per super-frame (the first segment's headers are rewritten in place). Returns their
 * number; nothing is written and nothing counted until ovl_from_tunnel does it. */
uint32_t ovl_rx_plan(struct ovl_dp *dp, uint32_t n);
/* Write w of the last ovl_rx_plan: its virtio header to vnet (vnet_hdr_len bytes), its frame to out
 * if it fits cap, its remote to *remote. Returns the frame's length, or -1 for w out of range. */
int ovl_rx_plan_write(const struct ovl_dp *dp, uint32_t w, uint8_t *vnet, uint8_t *out, uint32_t cap,
                      int32_t *remote);

/* ---- one batch of I/O ---- */

/* PyForwarder.from_tap: read up to a batch from the (non-blocking) TAP, segment (virtio header),
 * process and send. Returns frames read; a read error other than EAGAIN ends the batch and is left
 * for ovl_dp_io_errno. */
int ovl_from_tap(struct ovl_dp *dp, int tap_fd, int send_fd, double now);
/* PyForwarder.from_tunnel: recvmmsg up to a batch (UDP_GRO buffers split), process, write the plan
 * to the TAP. Returns packets received. */
int ovl_from_tunnel(struct ovl_dp *dp, int recv_fd, int tap_fd, double now);
/* ---- VXLAN TX through an injection TAP (csrc/inject.c; issue 10, the injection part) ----
 * TCP super-frames read from the bridge TAP go to remotes as ONE write each to a second TAP
 * (24-byte virtio header, TUN_F_UDP_TUNNEL_GSO), outer headers in front: the kernel routes
 * and segments them. Everything else, and what does not fit, goes the old way. */

/* Counters of the injection: indices in the order of datapath.counters.INJECT_FIELDS. */
enum ovl_inject_stat {
    OVL_INJ_WRITES = 0,            /* writes to the injection TAP the kernel took */
    OVL_INJ_FRAMES = 1,            /* super-frames read from the bridge TAP and sent that way */
    OVL_INJ_SEGMENTS = 2,          /* segments those writes carry (the kernel cuts them) */
    OVL_INJ_FALLBACK_TOO_BIG = 3,  /* outer IPv4 length would pass 65,535: segmented by us */
    OVL_INJ_FALLBACK_MTU = 4,      /* gso_size + headers would not fit the underlay MTU: segmented by us */
    OVL_INJ_FALLBACK_OTHER = 5,    /* a super-frame we cannot describe to the kernel (no NEEDS_CSUM...) */
    OVL_INJ_FALLBACK_OFF = 6,      /* super-frames segmented by us after the kernel refused a write */
    OVL_INJ_ERRORS = 7,            /* failed writes (a full queue, or the refusal that turned it off) */
    OVL_INJ_DRAINED = 8,           /* frames the kernel sent to the injection TAP, read and dropped */
    OVL_INJ_COUNT = 9
};

/* Turn the injection on (VXLAN with a virtio header on the bridge TAP only; -1 otherwise or no memory):
 * fd the injection TAP (-1: headers are built, nothing written), mac its MAC (6 bytes), udp_tunnel_csum
 * 1 if it has TUN_F_UDP_TUNNEL_GSO_CSUM (outer UDP checksums completed by the kernel). Clears a refusal. */
int ovl_dp_set_inject(struct ovl_dp *dp, int32_t fd, const uint8_t *mac, uint32_t udp_tunnel_csum);
/* 1 while super-frames go through the injection TAP (set, with an fd, and not refused). */
int ovl_dp_injecting(const struct ovl_dp *dp);
/* The errno of the write the kernel refused (the path is off since), or 0. */
int ovl_dp_inject_errno(const struct ovl_dp *dp);
/* The counters (enum ovl_inject_stat), up to n; returns how many (all 0 without injection). */
uint32_t ovl_dp_inject_counters(const struct ovl_dp *dp, uint64_t *out, uint32_t n);
/* Read and drop (count) whatever the kernel queued on the injection TAP; returns how many frames, or -1
 * with errno when a read fails otherwise than EAGAIN (the device deleted: EBADFD; stop polling the fd). */
int ovl_inject_drain(struct ovl_dp *dp);
/* What the injection writes for the super-frame (vnet: the bridge TAP's OVL_VNET_HDR_LEN-byte virtio
 * header, native endian; frame: len bytes) to remote r: the 24-byte virtio header, outer Ethernet,
 * outer IPv4 or IPv6/UDP/VXLAN and the inner frame (a mapped VLAN's tag stripped), into out (cap bytes).
 * Its length, or -reason (enum ovl_inject_stat: OVL_INJ_FALLBACK_*) when it would go the old way. */
int ovl_inject_header(struct ovl_dp *dp, uint32_t r, const uint8_t *vnet, const uint8_t *frame, uint32_t len,
                      uint8_t *out, uint32_t cap);
/* ---- the data path in a thread of its own (issue 10, C data-path thread: csrc/loop.c) ---- */

/* What ovl_runner_run returns. */
enum ovl_run_result {
    OVL_RUN_STOPPED = 0,    /* ovl_runner_stop was called */
    OVL_RUN_TAP_ERROR = 1,  /* a TAP read failed (not EAGAIN): *err; the frames read before it were forwarded */
    OVL_RUN_RECV_ERROR = 2, /* a receive from the underlay failed: *err */
    OVL_RUN_FAILED = 3      /* poll() failed, or another thread is inside ovl_runner_run (EBUSY): *err */
};

/* Bits of ovl_runner_state. */
enum ovl_runner_bits {
    OVL_RUNNER_ACTIVE = 1, /* a thread is inside ovl_runner_run */
    OVL_RUNNER_PARKED = 2, /* ... and is parked between two batches */
    OVL_RUNNER_STOP = 4,   /* a stop is requested (until ovl_runner_rearm) */
    OVL_RUNNER_PAUSED = 8  /* at least one pause is not yet resumed */
};

struct ovl_runner; /* the loop's control state: a mutex, a condition, an eventfd */

/* A runner, or NULL (no memory, no eventfd). */
struct ovl_runner *ovl_runner_new(void);
/* Release r (no thread may be inside ovl_runner_run). */
void ovl_runner_free(struct ovl_runner *r);
/* The blocking data-path loop on context dp: poll() on tap_fd (< 0: not read), recv_fd and r's
 * eventfd; one batch of ovl_from_tap / ovl_from_tunnel per readiness (clock: CLOCK_MONOTONIC).
 * Parks between batches while a pause is requested. Returns enum ovl_run_result, the errno in *err
 * (0 for OVL_RUN_STOPPED). One thread at a time per runner. */
int ovl_runner_run(struct ovl_runner *r, struct ovl_dp *dp, int tap_fd, int recv_fd, int send_fd, int32_t *err);
/* Stop the world: returns once the loop is parked between two batches, or at once when no thread
 * is inside ovl_runner_run (one entering parks before its first batch). Nests; any thread but the
 * loop's. Until the matching ovl_runner_resume the caller may use the context. */
void ovl_runner_pause(struct ovl_runner *r);
/* End one pause; the loop goes on when the last one ends. 0, or -1 if no pause was pending. */
int ovl_runner_resume(struct ovl_runner *r);
/* Ask the loop to return OVL_RUN_STOPPED after its current batch (also from a pause); every later
 * ovl_runner_run returns at once until ovl_runner_rearm. */
void ovl_runner_stop(struct ovl_runner *r);
/* Clear a stop before a new run: 0, or -1 while a thread is inside ovl_runner_run. */
int ovl_runner_rearm(struct ovl_runner *r);
/* enum ovl_runner_bits of r now (for tests and diagnostics). */
uint32_t ovl_runner_state(struct ovl_runner *r);
/* ---- issue 10, super-packets received whole (rx_super.c) ---- */

/* Receive super-packets whole: a peer whose kernel lets its vxlan (or gretap) device's GSO packets
 * cross a virtual hop unsegmented (veth) sends datagrams of up to 64 KiB, whose inner frame is a TCP
 * packet beyond the TAP's MTU with only the pseudo-header seed as checksum. With tap_mtu (the TAP's
 * MTU, 256..65535) the receive slots grow to 64 KiB and such a packet goes to the TAP as one TSO
 * write where the TAP takes them (rx_coalesce with a virtio header), else cut into segments of at
 * most tap_mtu with full checksums; 0 turns it off (a datagram beyond a ring slot is dropped as
 * truncated). Between batches only. 0, or -1 (MTU out of range, no memory: nothing changed). */
int ovl_dp_set_rx_super(struct ovl_dp *dp, uint32_t tap_mtu);

/* ---- AF_PACKET TX rings (issue 10, TX ring part; csrc/ring.c) ---- */
#define OVL_RING_MAX 16 /* TX rings (egress devices) per context */
/* Ring counters: the order of datapath.fast.RING_FIELDS. */
enum ovl_ring_stat {
    OVL_RING_TX = 0,          /* packets put into ring slots (also counted in tx_packets) */
    OVL_RING_SENDS = 1,       /* send() calls that started the kernel on a ring */
    OVL_RING_FULL = 2,        /* packets dropped for want of a free slot (also counted as tx_full) */
    OVL_RING_FALLBACK = 3,    /* packets sent the raw way while rings are set: no next hop, or too big */
    OVL_RING_SEND_ERRORS = 4, /* send() failures other than a full queue / buffer */
    OVL_RING_STAT_COUNT = 5
};
/* Ring mode on (before any ring is set): from now on a packet to a remote without a next hop is counted
 * as OVL_RING_FALLBACK. 0, or -ENOMEM. */
int ovl_dp_enable_tx_rings(struct ovl_dp *dp);
/* Map the TX ring of AF_PACKET socket fd (TPACKET_V2, PACKET_TX_RING of block_nr blocks of block_size
 * bytes, frames of frame_size bytes) as ring i; max_len: the largest Ethernet frame its device takes.
 * The fd stays the caller's (open while the ring is set). 0, or -errno (EINVAL, EBUSY: ring i is set, mmap's). */
int ovl_dp_set_tx_ring(struct ovl_dp *dp, uint32_t i, int fd, uint32_t block_size, uint32_t block_nr,
                       uint32_t frame_size, uint32_t max_len);
/* Unmap ring i; every remote whose next hop went through it is sent the raw way. 0, or -1 (not set). */
int ovl_dp_clear_tx_ring(struct ovl_dp *dp, uint32_t i);
/* The remote in slot r leaves through ring ring in Ethernet frames from src to dst (6 bytes each);
 * ring < 0: through the raw socket again. 0, or -1 for a free slot or a ring not set. */
int ovl_dp_set_nexthop(struct ovl_dp *dp, uint32_t r, int32_t ring, const uint8_t *dst, const uint8_t *src);
/* The ring counters (enum ovl_ring_stat), up to n; returns how many. */
uint32_t ovl_dp_ring_counters(const struct ovl_dp *dp, uint64_t *out, uint32_t n);
/* Packet m of the last ovl_tx_process as its ring slot would hold it (Ethernet header + outer header
 * + frame) into out if it fits cap and the device; its remote to *remote. Returns the length, 0 if the
 * remote has no next hop or it does not fit (the raw way), -1 for m out of range. */
int ovl_tx_ring_frame(const struct ovl_dp *dp, uint32_t m, uint32_t *remote, uint8_t *out, uint32_t cap);
/* END CDEF */

/* Issue 11 (the whole wire: IPv6 underlay, ECN / TOS / TTL / DF, path MTU, MSS clamping). */
#include "ovl_wire.h"

#endif
