/* remotes.c: the remote slots of a running context (pypath.PyForwarder.add_remote /
 * remove_remote). A remote is a slot index: the FDB stores it, the per-remote counters,
 * header templates and destination addresses are arrays indexed by it. Adding takes the
 * lowest free slot; removing frees one and leaves the others where they are, so every
 * index the FDB holds stays valid. The received packet's source finds its slot through a
 * small open-addressing hash, rebuilt on every change (changes are rare, lookups are per
 * packet). The TX rings hold batch * tx_slots packets and grow, by doubling, when a remote
 * lands in a slot beyond them; they never shrink. */
#include "internal.h"

#include <stdlib.h>

static uint32_t addr_home(const uint8_t *addr) {
    /* The four 32-bit words folded (an IPv4 address stored mapped: its word and a constant), then
     * Fibonacci hashing. */
    uint32_t w[4];
    memcpy(w, addr, sizeof(w));
    uint32_t x = w[0] ^ (w[1] * 0x85EBCA6Bu) ^ (w[2] * 0xC2B2AE35u) ^ w[3];
    return (uint32_t)(x * 0x9E3779B1u) >> 16 & (REMOTE_HASH - 1);
}

int32_t remote_find(const struct ovl_dp *dp, const uint8_t *addr) {
    for (uint32_t i = addr_home(addr);; i = (i + 1) & (REMOTE_HASH - 1)) {
        int32_t r = dp->remote_hash[i];
        if (r < 0 || !memcmp(dp->cfg.remote_addr[r], addr, OVL_ADDR_LEN))
            return r;
    }
}

/* The hash of the slots in use; -1 if an address is there twice (then the hash is incomplete). */
static int hash_rebuild(struct ovl_dp *dp) {
    const struct ovl_config *c = &dp->cfg;
    memset(dp->remote_hash, 0xFF, sizeof(dp->remote_hash)); /* -1 everywhere */
    for (uint32_t r = 0; r < c->n_remotes; r++) {
        if (!c->remote_used[r])
            continue;
        if (remote_find(dp, c->remote_addr[r]) >= 0)
            return -1;
        uint32_t i = addr_home(c->remote_addr[r]);
        while (dp->remote_hash[i] >= 0)
            i = (i + 1) & (REMOTE_HASH - 1);
        dp->remote_hash[i] = (int16_t)r;
    }
    return 0;
}

static uint32_t slots_for(uint32_t n) {
    uint32_t s = 1;
    while (s < n)
        s <<= 1;
    return s;
}

int remotes_init(struct ovl_dp *dp) {
    const struct ovl_config *c = &dp->cfg;
    for (uint32_t r = 0; r < c->n_remotes; r++)
        if (c->remote_used[r])
            outer_template(c, r, &dp->outer[r]);
    dp->tx_slots = slots_for(c->n_remotes);
    return hash_rebuild(dp);
}

/* TX rings (tx_out here, the messages in io.c) for at least need slots. */
static int tx_grow(struct ovl_dp *dp, uint32_t need) {
    uint32_t slots = slots_for(need);
    if (slots <= dp->tx_slots)
        return 0;
    struct tx_out *out = realloc(dp->tx_out, (size_t)dp->cfg.batch * slots * sizeof(*out));
    if (!out)
        return -1;
    dp->tx_out = out; /* bigger is harmless even if the rest fails */
    if (io_grow_tx(dp, slots) < 0)
        return -1;
    dp->tx_slots = slots;
    return 0;
}

int ovl_dp_add_remote(struct ovl_dp *dp, const uint8_t *addr, const uint8_t *local) {
    struct ovl_config *c = &dp->cfg;
    if (addr_is_v4(addr) != addr_is_v4(local))
        return OVL_ADD_FULL;
    if (remote_find(dp, addr) >= 0)
        return OVL_ADD_DUPLICATE;
    uint32_t r = 0;
    while (r < OVL_MAX_REMOTES && c->remote_used[r])
        r++;
    if (r == OVL_MAX_REMOTES)
        return OVL_ADD_FULL;
    if (tx_grow(dp, r + 1) < 0)
        return OVL_ADD_NOMEM;
    memcpy(c->remote_addr[r], addr, OVL_ADDR_LEN); /* kept in network order */
    memcpy(c->remote_local[r], local, OVL_ADDR_LEN);
    c->remote_v6[r] = !addr_is_v4(addr);
    c->n_v6 += c->remote_v6[r];
    c->remote_used[r] = 1;
    if (r >= c->n_remotes)
        c->n_remotes = r + 1;
    memset(dp->remotes[r], 0, sizeof(dp->remotes[r]));
    dp->last_rx[r] = 0.0;
    dp->rx_seen[r] = 0;
    outer_template(c, r, &dp->outer[r]);
    io_set_remote(dp, r);
    hash_rebuild(dp); /* cannot fail: the address is new */
    return (int)r;
}

int ovl_dp_remove_remote(struct ovl_dp *dp, uint32_t r) {
    struct ovl_config *c = &dp->cfg;
    if (r >= c->n_remotes || !c->remote_used[r])
        return -1;
    c->remote_used[r] = 0;
    c->n_v6 -= c->remote_v6[r];
    ring_forget_remote(dp, r);
    while (c->n_remotes > 0 && !c->remote_used[c->n_remotes - 1])
        c->n_remotes--;
    hash_rebuild(dp);
    return (int)ovl_fdb_flush(dp->fdb, (int32_t)r);
}

int ovl_dp_set_remote_local(struct ovl_dp *dp, uint32_t r, const uint8_t *local) {
    struct ovl_config *c = &dp->cfg;
    if (r >= c->n_remotes || !c->remote_used[r] || addr_is_v4(local) != !c->remote_v6[r])
        return -1;
    memcpy(c->remote_local[r], local, OVL_ADDR_LEN);
    outer_template(c, r, &dp->outer[r]);
    return 0;
}

uint32_t ovl_dp_remotes(const struct ovl_dp *dp, uint32_t *slots, uint8_t *addrs, uint8_t *locals, double *last_rx,
                        uint8_t *seen, uint32_t cap) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t n = 0;
    for (uint32_t r = 0; r < c->n_remotes && n < cap; r++) {
        if (!c->remote_used[r])
            continue;
        slots[n] = r;
        memcpy(addrs + OVL_ADDR_LEN * (size_t)n, c->remote_addr[r], OVL_ADDR_LEN);
        memcpy(locals + OVL_ADDR_LEN * (size_t)n, c->remote_local[r], OVL_ADDR_LEN);
        last_rx[n] = dp->last_rx[r];
        seen[n] = dp->rx_seen[r];
        n++;
    }
    return n;
}
