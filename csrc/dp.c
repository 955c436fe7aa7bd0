/* dp.c: the configuration (built by setters, checked as a whole by ovl_dp_new), the
 * datapath context's creation and release, and the accessors through which Python
 * loads the rings and reads results and counters without knowing any layout. */
#include "internal.h"

#include <stdlib.h>

#define UDP_GRO_SLOT 65536 /* a coalesced UDP_GRO buffer */
#define RX_GRO_SPLIT 64    /* datagrams per GRO buffer we keep (rx entries per batch slot) */

/* ---- the configuration ---- */

struct ovl_config *ovl_config_new(uint32_t encap) {
    const struct ovl_encap_ops *ops = encap_ops(encap);
    if (!ops)
        return NULL;
    struct ovl_config *c = calloc(1, sizeof(*c));
    if (c) {
        c->ops = ops;
        c->encap = encap;
    }
    return c;
}

void ovl_config_free(struct ovl_config *c) { free(c); }

int ovl_config_set_tunnel(struct ovl_config *c, uint32_t id, uint32_t keyed, uint32_t ttl) {
    c->id = id;
    c->keyed = keyed != 0;
    c->ttl = ttl;
    return 0;
}

int ovl_config_set_udp(struct ovl_config *c, uint32_t port, uint32_t udp_csum) {
    c->port = port;
    c->udp_csum = udp_csum != 0;
    return 0;
}

int ovl_config_set_ring(struct ovl_config *c, uint32_t underlay_mtu, uint32_t batch, uint32_t slot_size) {
    c->underlay_mtu = underlay_mtu;
    c->batch = batch;
    c->slot_size = slot_size;
    return 0;
}

int ovl_config_set_fdb(struct ovl_config *c, uint32_t max_entries, double ageing, uint64_t seed) {
    c->fdb_max = max_entries;
    c->fdb_ageing = ageing;
    c->fdb_seed = seed;
    return 0;
}

int ovl_config_set_offloads(struct ovl_config *c, uint32_t vnet_hdr_len, uint32_t rx_coalesce, uint32_t udp_gro) {
    c->vnet_hdr_len = vnet_hdr_len;
    c->rx_coalesce = rx_coalesce != 0;
    c->udp_gro = udp_gro != 0;
    return 0;
}

int ovl_config_add_remote(struct ovl_config *c, const uint8_t *addr, const uint8_t *local) {
    if (c->n_remotes >= OVL_MAX_REMOTES || addr_is_v4(addr) != addr_is_v4(local))
        return -1;
    memcpy(c->remote_addr[c->n_remotes], addr, OVL_ADDR_LEN); /* kept in network order */
    memcpy(c->remote_local[c->n_remotes], local, OVL_ADDR_LEN);
    c->remote_v6[c->n_remotes] = !addr_is_v4(addr);
    c->n_v6 += c->remote_v6[c->n_remotes];
    c->remote_used[c->n_remotes] = 1;
    return (int)c->n_remotes++;
}

int ovl_config_set_udp6(struct ovl_config *c, uint32_t zero_csum_tx) {
    c->udp6_zero_csum_tx = zero_csum_tx != 0;
    return 0;
}

int ovl_config_map_vlan(struct ovl_config *c, uint32_t vlan, uint32_t tid) {
    if (vlan >= OVL_VLAN_COUNT || c->vlan_mapped[vlan])
        return -1;
    c->vlan_mapped[vlan] = 1;
    c->vlan_tid[vlan] = tid;
    c->n_vlans++;
    return 0;
}

/* ---- the context ---- */

void ovl_dp_free(struct ovl_dp *dp) {
    if (!dp)
        return;
    ovl_fdb_free(dp->fdb);
    free(dp->vlan_of_id);
    free(dp->tx_data);
    free(dp->tx_len);
    free(dp->tx_out);
    free(dp->tx_buf);
    free(dp->seg_buf);
    free(dp->tap_data);
    free(dp->tap_len);
    free(dp->rx);
    free(dp->rx_buf);
    free(dp->wr);
    free(dp->wr_iov);
    co_free(dp->co);
    rx_super_free(dp->sup);
    io_free(dp->io);
    inject_free(dp->inj);
    rings_free(dp->rings);
    free(dp);
}

/* The configuration's ranges, as far as the context relies on them. */
static int config_ok(const struct ovl_config *c) {
    uint32_t outer = ovl_outer_len(c); /* over IPv4: the shortest, which the too-big check of a frame uses */
    return c->n_remotes <= OVL_MAX_REMOTES && c->batch >= 1 && c->batch <= OVL_MAX_BATCH &&
           c->slot_size >= outer + ETH_HLEN && c->slot_size <= OVL_MAX_SLOT &&
           /* a TAP read cut short at slot_size must fail the too-big check, never pass as a frame */
           c->slot_size + outer > c->underlay_mtu && c->underlay_mtu <= 0xFFFF && c->port <= 0xFFFF &&
           c->ttl <= 255 && c->id <= c->ops->id_max &&
           (c->vnet_hdr_len == 0 || c->vnet_hdr_len == OVL_VNET_HDR_LEN || c->vnet_hdr_len == VNET_HDR_MAX);
}

struct ovl_dp *ovl_dp_new(const struct ovl_config *cfg) {
    if (!config_ok(cfg))
        return NULL;
    struct ovl_dp *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    struct ovl_config *c = &dp->cfg;
    *c = *cfg;
    c->udp_gro = c->udp_gro && c->ops->udp;
    c->rx_coalesce = c->rx_coalesce && c->vnet_hdr_len;
    dp->outer_len = ovl_outer_len(c);
    if (remotes_init(dp) < 0) { /* a remote given twice */
        free(dp);
        return NULL;
    }
    for (uint32_t k = 0; k < OVL_GSO_SOCKETS; k++)
        dp->gso_fd[k] = -1;
    dp->send6_fd = -1;
    size_t nb = c->batch;
    dp->fdb = ovl_fdb_new(c->fdb_max, c->fdb_ageing, c->fdb_seed);
    dp->tx_data = calloc(nb, sizeof(*dp->tx_data));
    dp->tx_len = calloc(nb, sizeof(*dp->tx_len));
    dp->tx_out = calloc(nb * dp->tx_slots, sizeof(*dp->tx_out));
    dp->tap_slot = c->vnet_hdr_len ? c->vnet_hdr_len + OVL_TAP_READ : c->slot_size;
    dp->tx_buf = malloc(nb * dp->tap_slot);
    dp->rx_slot = c->udp_gro ? UDP_GRO_SLOT : c->slot_size;
    dp->rx_cap = c->udp_gro ? (uint32_t)nb * RX_GRO_SPLIT : (uint32_t)nb;
    dp->rx = calloc(dp->rx_cap, sizeof(*dp->rx));
    dp->rx_buf = malloc(nb * dp->rx_slot);
    dp->wr = calloc(dp->rx_cap, sizeof(*dp->wr));
    dp->wr_iov = calloc(2 * (size_t)dp->rx_cap, sizeof(*dp->wr_iov));
    if (vlan_map_init(dp) < 0 || !dp->fdb || !dp->tx_data || !dp->tx_len || !dp->tx_out || !dp->tx_buf || !dp->rx ||
        !dp->rx_buf || !dp->wr || !dp->wr_iov || io_new(dp) < 0)
        goto fail;
    if (c->vnet_hdr_len) {
        dp->seg_buf = malloc(nb * c->slot_size);
        dp->tap_data = calloc(nb, sizeof(*dp->tap_data));
        dp->tap_len = calloc(nb, sizeof(*dp->tap_len));
        if (!dp->seg_buf || !dp->tap_data || !dp->tap_len || (c->rx_coalesce && co_new(dp) < 0))
            goto fail;
    }
    return dp;
fail:
    ovl_dp_free(dp);
    return NULL;
}

struct ovl_fdb *ovl_dp_fdb(struct ovl_dp *dp) { return dp->fdb; }

int ovl_dp_set_gso_fds(struct ovl_dp *dp, const int32_t *fds, uint32_t n) {
    if (n > OVL_GSO_SOCKETS)
        return -1;
    if (!dp->cfg.ops->udp)
        n = 0;
    for (uint32_t k = 0; k < OVL_GSO_SOCKETS; k++)
        dp->gso_fd[k] = k < n ? fds[k] : -1;
    dp->n_gso_fd = n;
    return (int)n;
}

static uint32_t copy_out(uint64_t *out, const uint64_t *from, uint32_t have, uint32_t n) {
    if (n > have)
        n = have;
    memcpy(out, from, n * sizeof(*out));
    return n;
}

uint32_t ovl_dp_counters(const struct ovl_dp *dp, uint32_t kind, uint64_t *out, uint32_t n) {
    switch (kind) {
    case OVL_COUNTERS_STATS:
        return copy_out(out, dp->stats, OVL_STAT_COUNT, n);
    case OVL_COUNTERS_DROPS:
        return copy_out(out, dp->drops, OVL_DROP_COUNT, n);
    case OVL_COUNTERS_REMOTES:
        return copy_out(out, &dp->remotes[0][0], dp->cfg.n_remotes * OVL_REMOTE_COUNT, n);
    case OVL_COUNTERS_FDB:
        return ovl_fdb_counters(dp->fdb, out, n);
    default:
        return 0;
    }
}

int ovl_dp_io_errno(const struct ovl_dp *dp) { return dp->io_errno; }

int ovl_dp_coalescing(const struct ovl_dp *dp) { return dp->co != NULL; }

/* ---- the rings, for callers that bring their own buffers ---- */

int ovl_tx_load(struct ovl_dp *dp, uint32_t i, uint8_t *data, uint32_t len) {
    if (i >= dp->cfg.batch)
        return -1;
    dp->tx_data[i] = data;
    dp->tx_len[i] = len;
    return 0;
}

int ovl_tx_packet(const struct ovl_dp *dp, uint32_t m, uint32_t *remote, uint8_t *out, uint32_t cap) {
    if (m >= dp->n_out)
        return -1;
    const struct tx_out *o = &dp->tx_out[m];
    uint32_t flen = dp->tx_len[o->frame], len = o->hdr_len + flen;
    *remote = o->remote;
    if (len <= cap) {
        memcpy(out, o->hdr, o->hdr_len);
        memcpy(out + o->hdr_len, dp->tx_data[o->frame], flen);
    }
    return (int)len;
}

int ovl_rx_load(struct ovl_dp *dp, uint32_t i, uint8_t *data, uint32_t len, const uint8_t *src, uint32_t truncated) {
    if (i >= dp->rx_cap)
        return -1;
    struct rx_entry *e = &dp->rx[i];
    e->data = data;
    e->len = len;
    memcpy(e->src, src, OVL_ADDR_LEN);
    e->has_dst = 0;
    e->truncated = truncated != 0;
    e->remote = -1;
    e->result = -OVL_DROP_RX_TRUNCATED;
    return 0;
}

int ovl_rx_load_dst(struct ovl_dp *dp, uint32_t i, const uint8_t *dst) {
    if (i >= dp->rx_cap)
        return -1;
    memcpy(dp->rx[i].dst, dst, OVL_ADDR_LEN);
    dp->rx[i].has_dst = 1;
    return 0;
}

int ovl_dp_set_send6_fd(struct ovl_dp *dp, int32_t fd) {
    dp->send6_fd = fd;
    return 0;
}

uint32_t ovl_dp_remote_outer_len(const struct ovl_dp *dp, uint32_t r, uint32_t keyed) {
    if (r >= dp->cfg.n_remotes || !dp->cfg.remote_used[r])
        return 0;
    return remote_outer_len(dp, r, keyed != 0);
}

int ovl_rx_result(const struct ovl_dp *dp, uint32_t i, int32_t *remote) {
    if (i >= dp->rx_cap) {
        *remote = -1;
        return -OVL_DROP_RX_TRUNCATED;
    }
    *remote = dp->rx[i].remote;
    return dp->rx[i].result;
}

int ovl_rx_plan_write(const struct ovl_dp *dp, uint32_t w, uint8_t *vnet, uint8_t *out, uint32_t cap,
                      int32_t *remote) {
    if (w >= dp->n_wr)
        return -1;
    const struct tap_write *t = &dp->wr[w];
    const struct iovec *iov = &dp->wr_iov[t->iov], *end = iov + t->iovcnt;
    size_t len = 0;
    *remote = t->remote;
    if (dp->cfg.vnet_hdr_len)
        memcpy(vnet, (iov++)->iov_base, dp->cfg.vnet_hdr_len);
    for (const struct iovec *v = iov; v < end; v++)
        len += v->iov_len;
    if (len <= cap)
        for (size_t at = 0; iov < end; at += iov->iov_len, iov++)
            memcpy(out + at, iov->iov_base, iov->iov_len);
    return (int)len;
}
