/* vlan.c: the VLAN map (ether.vlan_id, TunnelConfig.vlan_map / _check_vlan_map).
 * Frames of a mapped VLAN leave untagged in their own tunnel id (VNI or GRE key); the
 * receive side looks the id up in a table sorted by id. */
#include "internal.h"

#include <stdlib.h>

/* Receive side of the VLAN map: tunnel id -> VID. */
struct vlan_id {
    uint32_t id;
    uint16_t vlan;
};

/* ether.vlan_id: the VID of a single complete 0x8100 tag, else 0. */
uint16_t frame_vlan(const uint8_t *f, size_t n) {
    if (n >= ETH_HLEN + VLAN_HLEN && get16(f + 12) == ETH_P_8021Q)
        return get16(f + 14) & VLAN_VID_MASK;
    return 0;
}

static int cmp_vlan_id(const void *a, const void *b) {
    uint32_t x = ((const struct vlan_id *)a)->id, y = ((const struct vlan_id *)b)->id;
    return (x > y) - (x < y);
}

/* The VLAN that tunnel id tid is mapped to, or 0 (mapped VLANs are 1..4094); a binary search. */
uint16_t vlan_of_id(const struct ovl_dp *dp, uint32_t tid) {
    const struct vlan_id *v = dp->vlan_of_id;
    uint32_t lo = 0, hi = dp->cfg.n_vlans;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (v[mid].id == tid)
            return v[mid].vlan;
        if (v[mid].id < tid)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* TunnelConfig._check_vlan_map, as far as the C side relies on it (VLANs 1..4094, ids
 * distinct, in the encapsulation's range and not the base id); builds dp->vlan_of_id. 0 or -1. */
int vlan_map_init(struct ovl_dp *dp) {
    const struct ovl_config *c = &dp->cfg;
    uint32_t n = 0;
    if (c->vlan_mapped[0] || c->vlan_mapped[OVL_VLAN_COUNT - 1] || c->n_vlans > OVL_VLAN_COUNT - 2)
        return -1;
    dp->vlan_of_id = calloc(c->n_vlans ? c->n_vlans : 1, sizeof(*dp->vlan_of_id));
    if (!dp->vlan_of_id)
        return -1;
    for (uint32_t v = 1; v < OVL_VLAN_COUNT - 1; v++) {
        if (!c->vlan_mapped[v])
            continue;
        uint32_t tid = c->vlan_tid[v];
        if (n == c->n_vlans || tid == c->id || tid > c->ops->id_max)
            return -1;
        dp->vlan_of_id[n].id = tid;
        dp->vlan_of_id[n].vlan = (uint16_t)v;
        n++;
    }
    if (n != c->n_vlans)
        return -1;
    qsort(dp->vlan_of_id, n, sizeof(*dp->vlan_of_id), cmp_vlan_id);
    for (uint32_t i = 1; i < n; i++)
        if (dp->vlan_of_id[i].id == dp->vlan_of_id[i - 1].id)
            return -1;
    return 0;
}
