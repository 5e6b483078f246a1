/* map.h — a small intrusive hash map keyed by byte strings: the user's struct embeds a
 * struct map_node whose key points into that same struct, so the map allocates only its
 * bucket array (chained, power-of-two buckets, doubled when the load passes 1; FNV-1a).
 * Used by the backends for key -> local sessions/queues and topic -> subscribers.
 * Does NOT own or free the nodes, copy keys, or shrink. Not thread-safe: loop thread only. */
#ifndef WSGATE_MAP_H
#define WSGATE_MAP_H

#include <stddef.h>
#include <stdint.h>

struct map_node {
    struct map_node *next; /* borrowed: next node in the same bucket (set by map_put) */
    const char *key;       /* borrowed: points into the struct embedding this node */
    uint32_t key_len;      /* bytes in key (no NUL needed) */
    uint32_t hash;         /* map_hash(key, key_len), set by map_put */
};

struct map {
    struct map_node **buckets; /* owned: nbuckets chain heads, freed by map_free */
    size_t nbuckets;           /* 0 before the first put, then a power of two */
    size_t count;              /* nodes in the map */
};

/* Cursor for map_iter_next; plain value, no cleanup. */
struct map_iter {
    const struct map *map; /* borrowed: the map being walked */
    size_t bucket;         /* next bucket to look at */
    struct map_node *next; /* borrowed: the node map_iter_next returns next, or NULL */
};

/* The struct that embeds node as member (like the kernel's container_of). */
#define map_entry(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

/* An empty map; allocates nothing until the first put. */
void map_init(struct map *m);
/* Free the bucket array only; the nodes belong to the caller. The map is empty after. */
void map_free(struct map *m);
/* 32-bit FNV-1a of key[0..len). */
uint32_t map_hash(const char *key, size_t len);
/* The node whose key equals key[0..len), or NULL. */
struct map_node *map_get(const struct map *m, const char *key, size_t len);
/* Insert n (borrowed: must stay valid and unmoved until map_remove). The caller sets
 * n->key and n->key_len first. Returns 0, UV_EEXIST when the key is already there (n is
 * not inserted), or UV_ENOMEM when the first bucket array cannot be allocated (a failed
 * grow is not an error: chains just get longer). */
int map_put(struct map *m, struct map_node *n);
/* Remove n, which must be in m. O(chain length). */
void map_remove(struct map *m, struct map_node *n);
/* Number of nodes. */
static inline size_t map_count(const struct map *m)
{
    return m->count;
}

/* Walk every node once, in no particular order. The node just returned may be removed
 * (or freed) before the next call; any other put or remove during a walk is undefined. */
void map_iter_init(struct map_iter *it, const struct map *m);
/* The next node, or NULL at the end. */
struct map_node *map_iter_next(struct map_iter *it);

#endif
