/* fdb.c: the MAC table (fdb.Fdb).
 * Open addressing with linear probing in a power-of-two table at most half
 * full (so a probe always ends at an empty slot), and backward-shift deletion,
 * so there are no tombstones and lookups never degrade after churn. The hash
 * is seeded so that inner MACs chosen by a remote cannot build long probe
 * chains on purpose. The key is the MAC and the VLAN. */
#include "internal.h"

#include <stdlib.h>

struct fdb_slot {
    uint8_t mac[ETH_ALEN];
    uint16_t vlan;
    uint8_t used;
    uint8_t is_static;
    int32_t remote;
    double last_seen;
};

struct ovl_fdb {
    uint32_t max, count, mask;
    double ageing;
    uint64_t seed;
    uint64_t ctr[OVL_FDB_COUNT];
    struct fdb_slot *slots;
};
static uint32_t mac_home(const struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan) {
    uint64_t k = vlan;
    for (int i = 0; i < ETH_ALEN; i++)
        k = k << 8 | mac[i];
    k ^= f->seed;
    /* splitmix64 finaliser */
    k = (k ^ (k >> 30)) * 0xBF58476D1CE4E5B9ull;
    k = (k ^ (k >> 27)) * 0x94D049BB133111EBull;
    k ^= k >> 31;
    return (uint32_t)k & f->mask;
}

/* Slots for a cap of max_entries: at most half full. */
static uint32_t table_size(uint32_t max_entries) {
    uint32_t cap = 16;
    while (cap < 2 * max_entries)
        cap <<= 1;
    return cap;
}

struct ovl_fdb *ovl_fdb_new(uint32_t max_entries, double ageing, uint64_t seed) {
    if (max_entries < 1 || max_entries > (1u << 28) || !(ageing >= 0))
        return NULL;
    struct ovl_fdb *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    uint32_t cap = table_size(max_entries);
    f->slots = calloc(cap, sizeof(*f->slots));
    if (!f->slots) {
        free(f);
        return NULL;
    }
    f->max = max_entries;
    f->mask = cap - 1;
    f->ageing = ageing;
    f->seed = seed;
    return f;
}

void ovl_fdb_free(struct ovl_fdb *f) {
    if (f) {
        free(f->slots);
        free(f);
    }
}

/* Index of the slot of (vlan, mac), or -1. */
static int64_t fdb_find(const struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan) {
    for (uint32_t i = mac_home(f, mac, vlan);; i = (i + 1) & f->mask) {
        if (!f->slots[i].used)
            return -1;
        if (f->slots[i].vlan == vlan && !memcmp(f->slots[i].mac, mac, ETH_ALEN))
            return i;
    }
}

/* A new slot for (vlan, mac) (known to be absent; the table is never full). */
static struct fdb_slot *fdb_insert(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan) {
    uint32_t i = mac_home(f, mac, vlan);
    while (f->slots[i].used)
        i = (i + 1) & f->mask;
    struct fdb_slot *s = &f->slots[i];
    memcpy(s->mac, mac, ETH_ALEN);
    s->vlan = vlan;
    s->used = 1;
    f->count++;
    return s;
}

/* Empty slot i, then move later members of its probe run back into the hole
 * whenever the hole lies between their home slot and where they sit. */
static void fdb_delete(struct ovl_fdb *f, uint32_t i) {
    f->slots[i].used = 0;
    f->count--;
    for (uint32_t j = (i + 1) & f->mask; f->slots[j].used; j = (j + 1) & f->mask) {
        uint32_t home = mac_home(f, f->slots[j].mac, f->slots[j].vlan);
        if (((j - home) & f->mask) >= ((j - i) & f->mask)) {
            f->slots[i] = f->slots[j];
            f->slots[j].used = 0;
            i = j;
        }
    }
}

static int fdb_expired(const struct ovl_fdb *f, const struct fdb_slot *s, double now) {
    return !s->is_static && f->ageing > 0 && now - s->last_seen >= f->ageing;
}

/* Fdb._get_live: the live slot index of (vlan, mac), or -1; an expired one is removed and counted. */
static int64_t fdb_get_live(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, double now) {
    int64_t i = fdb_find(f, mac, vlan);
    if (i >= 0 && fdb_expired(f, &f->slots[i], now)) {
        fdb_delete(f, (uint32_t)i);
        f->ctr[OVL_FDB_AGED]++;
        return -1;
    }
    return i;
}

int32_t ovl_fdb_lookup(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, double now) {
    int64_t i = fdb_get_live(f, mac, vlan, now);
    return i < 0 ? -1 : f->slots[i].remote;
}

int ovl_fdb_learn(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, int32_t remote, double now) {
    int64_t i = fdb_get_live(f, mac, vlan, now);
    if (i >= 0) {
        struct fdb_slot *s = &f->slots[i];
        if (s->is_static)
            return OVL_LEARN_STATIC;
        s->last_seen = now;
        if (s->remote == remote)
            return OVL_LEARN_REFRESHED;
        s->remote = remote;
        f->ctr[OVL_FDB_MOVES]++;
        return OVL_LEARN_MOVED;
    }
    if (f->count >= f->max) {
        f->ctr[OVL_FDB_REFUSED_FULL]++;
        return OVL_LEARN_FULL;
    }
    struct fdb_slot *s = fdb_insert(f, mac, vlan);
    s->is_static = 0;
    s->remote = remote;
    s->last_seen = now;
    f->ctr[OVL_FDB_LEARNS]++;
    return OVL_LEARN_LEARNED;
}

/* 0, or -1 when the table is at its cap. An entry present but expired is replaced (as the reference). */
int ovl_fdb_add_static(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, int32_t remote) {
    int64_t i = fdb_find(f, mac, vlan);
    struct fdb_slot *s;
    if (i >= 0) {
        s = &f->slots[i];
    } else {
        if (f->count >= f->max)
            return -1;
        s = fdb_insert(f, mac, vlan);
    }
    s->is_static = 1;
    s->remote = remote;
    s->last_seen = 0.0;
    return 0;
}

/* Fdb.restore: a learned entry carried over from another table (a takeover), last seen age seconds
 * before now. 1 entered; 0 left out (a static entry holds the key, a live entry seen more recently
 * holds it, or the entry is already past its age); -1 at the size cap. Not counted as a learn. */
int ovl_fdb_restore(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan, int32_t remote, double age, double now) {
    if (!(age >= 0))
        return 0;
    if (f->ageing > 0 && age >= f->ageing)
        return 0;
    double last_seen = now - age;
    int64_t i = fdb_get_live(f, mac, vlan, now);
    struct fdb_slot *s;
    if (i >= 0) {
        s = &f->slots[i];
        if (s->is_static || s->last_seen >= last_seen)
            return 0;
    } else {
        if (f->count >= f->max)
            return -1;
        s = fdb_insert(f, mac, vlan);
        s->is_static = 0;
    }
    s->remote = remote;
    s->last_seen = last_seen;
    return 1;
}

int ovl_fdb_remove(struct ovl_fdb *f, const uint8_t *mac, uint16_t vlan) {
    int64_t i = fdb_find(f, mac, vlan);
    if (i < 0)
        return 0;
    fdb_delete(f, (uint32_t)i);
    return 1;
}

uint32_t ovl_fdb_expire(struct ovl_fdb *f, double now) {
    uint32_t n = 0;
    /* After a delete, slot i holds whatever the backward shift moved in: look
     * at it again. A shift only moves entries from later in the scan, or from
     * the wrapped start of a run (already kept, so kept again). */
    for (uint32_t i = 0; i <= f->mask;) {
        if (f->slots[i].used && fdb_expired(f, &f->slots[i], now)) {
            fdb_delete(f, i);
            n++;
        } else {
            i++;
        }
    }
    f->ctr[OVL_FDB_AGED] += n;
    return n;
}

uint32_t ovl_fdb_flush(struct ovl_fdb *f, int32_t remote) {
    uint32_t n = 0;
    if (remote < 0) {
        n = f->count;
        memset(f->slots, 0, ((size_t)f->mask + 1) * sizeof(*f->slots));
        f->count = 0;
        return n;
    }
    /* As ovl_fdb_expire: a slot that a delete refilled is looked at again. */
    for (uint32_t i = 0; i <= f->mask;) {
        if (f->slots[i].used && f->slots[i].remote == remote) {
            fdb_delete(f, i);
            n++;
        } else {
            i++;
        }
    }
    return n;
}

int ovl_fdb_set_limits(struct ovl_fdb *f, uint32_t max_entries, double ageing) {
    if (max_entries < 1 || max_entries > (1u << 28) || !(ageing >= 0))
        return -1;
    uint32_t cap = table_size(max_entries);
    if (cap > f->mask + 1) { /* a bigger cap needs a bigger table: rehash (never shrunk) */
        struct fdb_slot *old = f->slots, *slots = calloc(cap, sizeof(*slots));
        if (!slots)
            return -1;
        uint32_t old_size = f->mask + 1;
        f->slots = slots;
        f->mask = cap - 1;
        for (uint32_t i = 0; i < old_size; i++) {
            if (!old[i].used)
                continue;
            uint32_t j = mac_home(f, old[i].mac, old[i].vlan);
            while (f->slots[j].used)
                j = (j + 1) & f->mask;
            f->slots[j] = old[i];
        }
        free(old);
    }
    f->max = max_entries;
    f->ageing = ageing;
    return 0;
}

uint32_t ovl_fdb_count(const struct ovl_fdb *f) { return f->count; }

uint32_t ovl_fdb_entries(const struct ovl_fdb *f, double now, uint8_t *macs, uint16_t *vlans, int32_t *remotes,
                         uint8_t *statics, double *ages, uint32_t cap) {
    uint32_t n = 0;
    for (uint32_t i = 0; i <= f->mask && n < cap; i++) {
        const struct fdb_slot *s = &f->slots[i];
        if (!s->used)
            continue;
        memcpy(macs + (size_t)n * ETH_ALEN, s->mac, ETH_ALEN);
        vlans[n] = s->vlan;
        statics[n] = s->is_static;
        remotes[n] = s->remote;
        ages[n] = s->is_static ? 0.0 : now - s->last_seen;
        n++;
    }
    return n;
}

uint32_t ovl_fdb_counters(const struct ovl_fdb *f, uint64_t *out, uint32_t n) {
    if (n > OVL_FDB_COUNT)
        n = OVL_FDB_COUNT;
    memcpy(out, f->ctr, n * sizeof(*out));
    return n;
}
