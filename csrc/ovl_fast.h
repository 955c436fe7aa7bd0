/* ovl_fast: the C fast path of ovl-dp.
 *
 * "Python decides; C moves bytes." Python builds a struct ovl_config and
 * creates a context with ovl_dp_new(); one call then handles one batch:
 * ovl_from_tap() / ovl_from_tunnel() do the I/O (read/sendmmsg,
 * recvmmsg/write) around ovl_tx_process() / ovl_rx_process(), which hold the
 * packet logic and are also called directly by the Python wrapper, so tests
 * drive exactly the code that the I/O path runs.
 *
 * The behaviour is defined by the pure-Python reference (datapath/vxlan.py,
 * gre.py, ipv4.py, ether.py, fdb.py, pypath.py); tests hold the two equal.
 *
 * VLANs: cfg.vlan_tid/vlan_mapped map 802.1Q VIDs to tunnel ids (VNI or
 * GRE key). ovl_tx_process strips the tag of a mapped VLAN's frame in place
 * (the MAC addresses move up 4 bytes, tx_in[i].data/len follow), and
 * ovl_rx_process inserts the tag of a mapped id in place (the MAC addresses
 * move down 4 bytes into the outer header's room, rx[i].result follows), so
 * the frame stays one contiguous buffer for sendmmsg and write.
 *
 * The section between BEGIN CDEF and END CDEF is read verbatim by
 * csrc/build.py as the cffi cdef, so it holds only plain declarations.
 */
#ifndef OVL_FAST_H
#define OVL_FAST_H

#include <stddef.h>
#include <stdint.h>

/* BEGIN CDEF */
#define OVL_MAX_REMOTES 64
#define OVL_MAX_OUTER 36 /* outer IPv4 + UDP + VXLAN; GRE with a key needs 28 */
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

enum ovl_mode {
    OVL_MODE_VXLAN = 0,
    OVL_MODE_GRE = 1
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
    OVL_DROP_COUNT = 15 /* size of the drops array; index 0 is unused */
};

/* Outcome of ovl_fdb_learn: the values of datapath.fdb.Learn. */
enum ovl_learn {
    OVL_LEARN_REFRESHED = 0,
    OVL_LEARN_LEARNED = 1,
    OVL_LEARN_MOVED = 2,
    OVL_LEARN_STATIC = 3,
    OVL_LEARN_FULL = 4
};

struct ovl_config {
    uint32_t mode;         /* enum ovl_mode */
    uint32_t vni;          /* VXLAN */
    uint32_t key;          /* GRE, when has_key */
    uint32_t has_key;
    uint32_t dport;        /* VXLAN UDP destination port */
    uint32_t udp_csum;     /* VXLAN: compute the UDP checksum */
    uint32_t ttl;          /* outer IPv4 TTL */
    uint32_t underlay_mtu; /* largest outer packet */
    uint32_t batch;        /* frames / packets per call */
    uint32_t slot_size;    /* bytes per ring slot */
    uint32_t vnet_hdr_len; /* 0: plain TAP; 10 or 12: a virtio_net_hdr leads every TAP read and write */
    uint32_t rx_coalesce;  /* with vnet_hdr_len: TCP segments of a batch go to the TAP as super-frames */
    uint32_t udp_gro;      /* VXLAN: the receiving socket has UDP_GRO on (64 KiB slots, split by gso_size) */
    uint32_t n_remotes;
    uint32_t fdb_max;
    double fdb_ageing;     /* seconds, 0 = never */
    uint64_t fdb_seed;     /* hash seed of the MAC table */
    uint32_t remote_addr[OVL_MAX_REMOTES];  /* network byte order */
    uint32_t remote_local[OVL_MAX_REMOTES]; /* network byte order */
    uint32_t n_vlans;                       /* mapped VLANs (entries set in vlan_mapped) */
    uint32_t vlan_tid[OVL_VLAN_COUNT];      /* VID -> tunnel id (VNI or GRE key) where vlan_mapped */
    uint8_t vlan_mapped[OVL_VLAN_COUNT];    /* 1..4094 only */
};

/* Counters, in the order of REMOTE_FIELDS, STAT_FIELDS and FDB_FIELDS. */
struct ovl_remote_ctr {
    uint64_t tx_packets;
    uint64_t tx_bytes;
    uint64_t tx_flood;
    uint64_t rx_packets;
    uint64_t rx_bytes;
};

struct ovl_stats {
    uint64_t tap_rx;
    uint64_t tap_tx;
    uint64_t tx_unicast;
    uint64_t tx_flooded;
    uint64_t tap_rx_gso; /* TCP super-frames read from the TAP (each counted in tap_rx per segment) */
    uint64_t tap_tx_gso; /* super-frames written to the TAP (each counted in tap_tx per segment) */
    uint64_t tx_gso;     /* UDP_SEGMENT sends of several datagrams (each counted in tx_packets) */
    uint64_t rx_gro;     /* UDP_GRO buffers of several datagrams received */
};

struct ovl_fdb_stats {
    uint64_t learns;
    uint64_t moves;
    uint64_t refused_full;
    uint64_t aged;
};

struct ovl_fdb_entry {
    uint8_t mac[6];
    uint16_t vlan;
    uint8_t is_static;
    int32_t remote;
    double age; /* seconds since last seen, 0 for static */
};

/* One frame to send: read from the TAP into tx_buf, or a copy Python made.
 * ovl_tx_process moves data and len past a stripped VLAN tag. */
struct ovl_tx_in {
    uint8_t *data;
    uint32_t len;
};

/* One packet to send: outer header here, inner frame in tx_in[frame]. */
struct ovl_tx_out {
    uint32_t frame;
    uint16_t remote;
    uint16_t hdr_len;
    uint8_t hdr[OVL_MAX_OUTER];
};

/* One received packet; ovl_rx_process fills remote and result (and may
 * rewrite the bytes before data + result to insert a VLAN tag). */
struct ovl_rx {
    uint8_t *data;
    uint32_t len;
    uint32_t src;       /* outer source address, network byte order */
    uint32_t truncated; /* the socket cut it short (MSG_TRUNC) */
    int32_t remote;     /* remote index, or -1 */
    int32_t result;     /* offset of the inner frame in data, or -drop */
};

struct ovl_fdb;
struct ovl_io;
struct ovl_vlan_id; /* tunnel id -> VID, sorted by id */
struct ovl_co;      /* RX coalescing state */

struct ovl_dp {
    struct ovl_config cfg;
    uint32_t outer_len;
    int io_errno; /* set when a read/recv failed other than by "no more data" */
    struct ovl_stats stats;
    uint64_t drops[OVL_DROP_COUNT];
    struct ovl_remote_ctr remotes[OVL_MAX_REMOTES];
    struct ovl_fdb *fdb;
    struct ovl_tx_in *tx_in;   /* batch entries */
    struct ovl_tx_out *tx_out; /* batch * n_remotes entries */
    struct ovl_rx *rx;         /* batch entries */
    uint8_t *tx_buf;           /* batch slots of slot_size */
    uint8_t *rx_buf;           /* batch slots of slot_size */
    uint8_t *seg_buf;          /* batch slots of slot_size: TSO segments (vnet_hdr_len only) */
    struct ovl_tx_in *tap_rd;  /* batch entries: what each TAP read returned (vnet_hdr_len only) */
    uint32_t tap_slot;         /* bytes per tx_buf slot: slot_size, or vnet_hdr_len + OVL_TAP_READ */
    struct ovl_io *io;         /* mmsghdr / iovec / sockaddr arrays */
    struct ovl_co *co;         /* rx_coalesce only */
    uint32_t rx_slot;          /* bytes per rx_buf slot: slot_size, or 64 KiB with udp_gro */
    uint32_t rx_cap;           /* rx entries: batch, or batch * 64 with udp_gro */
    uint32_t n_gso_fd;         /* VXLAN: UDP sockets for UDP_SEGMENT sends (0 = raw socket only) */
    uint32_t gso_off;          /* set when a GSO send failed with EIO: raw socket from then on */
    int32_t gso_fd[OVL_GSO_SOCKETS];
    struct ovl_vlan_id *vlan_of_id; /* cfg.n_vlans entries */
};

/* Pure functions. */
uint32_t ovl_flow_hash(const uint8_t *frame, size_t len);
uint16_t ovl_checksum(const uint8_t *data, size_t len, uint64_t initial);
uint32_t ovl_outer_len(const struct ovl_config *cfg);
int ovl_encap(const struct ovl_config *cfg, uint32_t remote, const uint8_t *frame, size_t len, uint8_t *out,
              size_t cap);
int ovl_parse(const struct ovl_config *cfg, const uint8_t *pkt, size_t len, uint32_t *tid);
int ovl_decap(const struct ovl_config *cfg, const uint8_t *pkt, size_t len);
/* A frame read from a TAP with its virtio_net_hdr (vnet, OVL_VNET_HDR_LEN bytes, native
 * endian): TCP super-frames (gso_type TCPV4/TCPV6) cut into gso_size segments, a partial
 * checksum (NEEDS_CSUM) completed. Segments go to out back to back, their lengths to
 * lens; returns their number, or -drop (-OVL_DROP_TX_BAD_OFFLOAD, or -OVL_DROP_TX_TOO_BIG
 * when out / lens are too small). */
int ovl_offload_frame(const uint8_t *vnet, const uint8_t *frame, size_t len, uint8_t *out, size_t cap,
                      uint32_t *lens, uint32_t max_segs);

/* The MAC table. */
struct ovl_fdb *ovl_fdb_new(uint32_t max_entries, double ageing, uint64_t seed);
void ovl_fdb_free(struct ovl_fdb *fdb);
int32_t ovl_fdb_lookup(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan, double now);
int ovl_fdb_learn(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan, int32_t remote, double now);
int ovl_fdb_add_static(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan, int32_t remote);
int ovl_fdb_remove(struct ovl_fdb *fdb, const uint8_t *mac, uint16_t vlan);
uint32_t ovl_fdb_expire(struct ovl_fdb *fdb, double now);
uint32_t ovl_fdb_count(const struct ovl_fdb *fdb);
uint32_t ovl_fdb_entries(const struct ovl_fdb *fdb, double now, struct ovl_fdb_entry *out, uint32_t cap);
void ovl_fdb_get_stats(const struct ovl_fdb *fdb, struct ovl_fdb_stats *out);

/* The datapath context, its batch logic and its I/O. */
struct ovl_dp *ovl_dp_new(const struct ovl_config *cfg);
void ovl_dp_free(struct ovl_dp *dp);
uint32_t ovl_tx_process(struct ovl_dp *dp, uint32_t n, double now);
uint32_t ovl_rx_process(struct ovl_dp *dp, uint32_t n, double now);
int ovl_from_tap(struct ovl_dp *dp, int tap_fd, int send_fd, double now);
int ovl_from_tunnel(struct ovl_dp *dp, int recv_fd, int tap_fd, double now);
/* END CDEF */

#endif
