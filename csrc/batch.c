/* batch.c: the batch logic (pypath.PyForwarder) and the two driver loops.
 * ovl_tx_process / ovl_rx_process are pure over the rings: classify by the FDB, flood
 * by head-end replication, map VLANs, learn, build outer headers from the per-remote
 * templates. ovl_from_tap / ovl_from_tunnel alternate them with the pure offload
 * steps (offload.c) and the syscalls (io.c). */
#include "internal.h"

static void emit(struct ovl_dp *dp, uint32_t *k, uint32_t in, uint32_t r, const struct tx_frame *tf) {
    /* An IPv6 remote's outer header is 20 bytes longer than the IPv4 one the frame was checked with. */
    if (dp->cfg.remote_v6[r] && remote_outer_len(dp, r, tf->t.keyed) + (uint64_t)dp->tx_len[in] > dp->cfg.underlay_mtu) {
        count_drop(dp, OVL_DROP_TX_TOO_BIG);
        return;
    }
    struct tx_out *o = &dp->tx_out[(*k)++];
    o->frame = in;
    o->remote = (uint16_t)r;
    o->hdr_len = (uint16_t)outer_push(&dp->cfg, &dp->outer[r], tf, dp->tx_len[in], o->hdr);
}

/* PyForwarder.tx: TX ring entries [0..n) -> tx_out; returns the number of packets. */
uint32_t ovl_tx_process(struct ovl_dp *dp, uint32_t n, double now) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t k = 0;
    if (n > c->batch)
        n = c->batch; /* tx_out holds batch * tx_slots packets, tx_slots >= n_remotes */
    for (uint32_t i = 0; i < n; i++) {
        dp->stats[OVL_STAT_TAP_RX]++;
        if (dp->tx_len[i] < ETH_HLEN) {
            count_drop(dp, OVL_DROP_TX_RUNT);
            continue;
        }
        uint16_t vlan = frame_vlan(dp->tx_data[i], dp->tx_len[i]);
        struct tx_frame tf = {base_tunnel(c), 0, 0};
        if (c->vlan_mapped[vlan]) {
            /* A mapped VLAN: untagged, in its own id. Strip the tag in place
             * by moving the MAC addresses over it. */
            tf.t.id = c->vlan_tid[vlan];
            tf.t.keyed = 1;
            memmove(dp->tx_data[i] + VLAN_HLEN, dp->tx_data[i], 2 * ETH_ALEN);
            dp->tx_data[i] += VLAN_HLEN;
            dp->tx_len[i] -= VLAN_HLEN;
        }
        const uint8_t *f = dp->tx_data[i];
        uint32_t len = dp->tx_len[i];
        if (c->ops->outer_len(tf.t.keyed) + (uint64_t)len > c->underlay_mtu) {
            count_drop(dp, OVL_DROP_TX_TOO_BIG);
            continue;
        }
        tx_frame_sums(c, f, len, &tf); /* len >= ETH_HLEN: cannot fail */
        /* Multicast destinations are not looked up (a lookup may age an entry out). */
        int32_t r = (f[0] & 1) ? -1 : ovl_fdb_lookup(dp->fdb, f, vlan, now);
        if (r >= 0 && (uint32_t)r < c->n_remotes && c->remote_used[r]) {
            dp->stats[OVL_STAT_TX_UNICAST]++;
            emit(dp, &k, i, (uint32_t)r, &tf);
            continue;
        }
        /* Broadcast, multicast, unknown unicast: head-end replication to the remotes in use
         * (none at all: counted as flooded, nothing sent). */
        dp->stats[OVL_STAT_TX_FLOODED]++;
        for (uint32_t j = 0; j < c->n_remotes; j++) {
            if (!c->remote_used[j])
                continue;
            dp->remotes[j][OVL_REMOTE_TX_FLOOD]++;
            emit(dp, &k, i, j, &tf);
        }
    }
    dp->n_out = k;
    return k;
}

/* PyForwarder.rx: fills rx[i].remote and rx[i].result; returns frames to deliver. */
uint32_t ovl_rx_process(struct ovl_dp *dp, uint32_t n, double now) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t delivered = 0;
    if (n > dp->rx_cap)
        n = dp->rx_cap;
    for (uint32_t i = 0; i < n; i++) {
        struct rx_entry *e = &dp->rx[i];
        int32_t r = remote_find(dp, e->src);
        e->remote = -1;
        int res;
        uint32_t tid = 0;
        uint16_t vlan = 0, tag = 0;
        if (r < 0)
            res = -OVL_DROP_RX_NOT_REMOTE;
        else if (e->truncated)
            res = -OVL_DROP_RX_TRUNCATED;
        else if ((res = c->ops->parse(e->data, e->len, !addr_is_v4(e->src), &tid)) >= 0 && !c->ops->udp &&
                 !addr_is_v4(e->src) && rx6_check_dst(dp, e, r) < 0)
            res = -OVL_DROP_RX_BAD_DST; /* GRE over IPv6: no outer header to see the destination in */
        if (res >= 0) {
            if (tid == c->id)
                vlan = frame_vlan(e->data + res, e->len - (uint32_t)res); /* as it came (trunk) */
            else if ((tag = vlan_of_id(dp, tid)) != 0)
                vlan = tag;
            else
                res = -c->ops->bad_id;
        }
        if (res >= 0) {
            const uint8_t *src = e->data + res + ETH_ALEN; /* parse checked len >= res + ETH_HLEN */
            static const uint8_t zero[ETH_ALEN];
            if ((src[0] & 1) || !memcmp(src, zero, ETH_ALEN))
                res = -OVL_DROP_RX_BAD_SRC_MAC;
        }
        if (res >= 0 && tag) {
            /* Insert the tag in place: the MAC addresses move down into the
             * outer header's room (every parse leaves res >= VLAN_HLEN). */
            uint8_t *f = e->data + res - VLAN_HLEN;
            memmove(f, f + VLAN_HLEN, 2 * ETH_ALEN);
            put16(f + 12, ETH_P_8021Q);
            put16(f + 14, tag);
            res -= VLAN_HLEN;
        }
        e->result = res;
        if (res < 0) {
            count_drop(dp, -res);
            continue;
        }
        ovl_fdb_learn(dp->fdb, e->data + res + ETH_ALEN, vlan, r, now);
        dp->last_rx[r] = now;
        dp->rx_seen[r] = 1;
        e->remote = r;
        delivered++;
    }
    dp->n_rx = n;
    return delivered;
}

int ovl_from_tap(struct ovl_dp *dp, int tap_fd, int send_fd, double now) {
    dp->io_errno = 0;
    uint32_t n = io_tap_read(dp, tap_fd);
    if (!dp->cfg.vnet_hdr_len) {
        io_send(dp, ovl_tx_process(dp, n, now), send_fd);
        return (int)n;
    }
    /* Pure step, process, send; until every frame read is used up. */
    struct tx_cursor cur = {0, 0};
    while (cur.frame < n) {
        /* A super-frame the injection TAP takes whole (inject.c; tx_fill_offloaded stops in front of one) */
        if (dp->inj && cur.seg == 0 && inject_take(dp, cur.frame, now)) {
            cur.frame++;
            continue;
        }
        uint32_t m = tx_fill_offloaded(dp, n, &cur);
        if (m)
            io_send(dp, ovl_tx_process(dp, m, now), send_fd);
    }
    return (int)n;
}

int ovl_from_tunnel(struct ovl_dp *dp, int recv_fd, int tap_fd, double now) {
    dp->io_errno = 0;
    uint32_t n = io_recv(dp, recv_fd);
    ovl_rx_process(dp, n, now);
    ovl_rx_plan(dp, n);
    io_tap_write(dp, tap_fd);
    return (int)n;
}
