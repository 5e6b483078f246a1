/* map.c — intrusive chained hash map (see include/map.h). Buckets double when the node
 * count passes the bucket count, so chains stay ~1 long; the hash is stored in each node
 * so growing never rehashes keys and lookups compare hashes before bytes.
 * Does NOT allocate nodes or copy keys. Loop thread only. */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "map.h"

#define MAP_MIN_BUCKETS 16

void map_init(struct map *m)
{
    m->buckets = NULL;
    m->nbuckets = 0;
    m->count = 0;
}

void map_free(struct map *m)
{
    free(m->buckets);
    map_init(m);
}

uint32_t map_hash(const char *key, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a offset basis */
    for (size_t i = 0; i < len; i++) {
        h ^= (uint8_t)key[i];
        h *= 16777619u; /* FNV prime */
    }
    return h;
}

static size_t map_slot(const struct map *m, uint32_t hash)
{
    return hash & (m->nbuckets - 1);
}

struct map_node *map_get(const struct map *m, const char *key, size_t len)
{
    struct map_node *n;
    uint32_t hash;
    if (m->nbuckets == 0)
        return NULL;
    hash = map_hash(key, len);
    for (n = m->buckets[map_slot(m, hash)]; n != NULL; n = n->next)
        if (n->hash == hash && n->key_len == len && memcmp(n->key, key, len) == 0)
            return n;
    return NULL;
}

/* Move every node into a bucket array of nb slots. On allocation failure the map keeps
 * its current buckets: lookups still work, chains are just longer. */
static int map_resize(struct map *m, size_t nb)
{
    struct map_node **nbk = calloc(nb, sizeof(*nbk));
    if (nbk == NULL)
        return UV_ENOMEM;
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct map_node *n = m->buckets[i], *next;
        for (; n != NULL; n = next) {
            size_t slot = n->hash & (nb - 1);
            next = n->next;
            n->next = nbk[slot];
            nbk[slot] = n;
        }
    }
    free(m->buckets);
    m->buckets = nbk;
    m->nbuckets = nb;
    return 0;
}

int map_put(struct map *m, struct map_node *n)
{
    size_t slot;
    int rc;
    if (map_get(m, n->key, n->key_len) != NULL)
        return UV_EEXIST;
    if (m->nbuckets == 0) {
        if ((rc = map_resize(m, MAP_MIN_BUCKETS)) < 0)
            return rc;
    } else if (m->count >= m->nbuckets && m->nbuckets <= SIZE_MAX / 2 / sizeof(*m->buckets)) {
        (void)map_resize(m, m->nbuckets * 2); /* failure is fine: keep the old buckets */
    }
    n->hash = map_hash(n->key, n->key_len);
    slot = map_slot(m, n->hash);
    n->next = m->buckets[slot];
    m->buckets[slot] = n;
    m->count++;
    return 0;
}

void map_remove(struct map *m, struct map_node *n)
{
    struct map_node **pp = &m->buckets[map_slot(m, n->hash)];
    while (*pp != n)
        pp = &(*pp)->next; /* n must be in the map: a NULL here is a caller bug */
    *pp = n->next;
    n->next = NULL;
    m->count--;
}

/* Point it->next at the first node at or after bucket it->bucket. */
static void map_iter_advance(struct map_iter *it)
{
    const struct map *m = it->map;
    while (it->bucket < m->nbuckets) {
        struct map_node *n = m->buckets[it->bucket++];
        if (n != NULL) {
            it->next = n;
            return;
        }
    }
    it->next = NULL;
}

void map_iter_init(struct map_iter *it, const struct map *m)
{
    it->map = m;
    it->bucket = 0;
    map_iter_advance(it);
}

struct map_node *map_iter_next(struct map_iter *it)
{
    struct map_node *n = it->next;
    if (n == NULL)
        return NULL;
    /* Read the successor now, so the caller may remove or free n before the next call. */
    if (n->next != NULL)
        it->next = n->next;
    else
        map_iter_advance(it);
    return n;
}
