/* map.h — a small intrusive hash map keyed by byte strings: the user's struct embeds a
 * struct map_node whose key points into that same struct, so the map allocates only its
 * bucket array (chained, power-of-two buckets, doubled when the load passes 1).
 * Keys are hashed with SipHash-2-4 under a 128-bit random seed per map (map_init draws it
 * from getrandom(2)), so a client that chooses session keys or topic names cannot predict
 * which of them share a bucket (no hash flooding). map_siphash is exported for other
 * tables that need the same keyed hash (the Redis channel registry).
 * Used by the backends for key -> local sessions/queues and topic -> subscribers.
 * Does NOT own or free the nodes, copy keys, or shrink. Not thread-safe: loop thread only. */
#ifndef WSGATE_MAP_H
#define WSGATE_MAP_H

#include <stddef.h>
#include <stdint.h>

/* A 128-bit SipHash key. k0 is key bytes 0..7 read little-endian, k1 bytes 8..15 (so the
 * reference key 00 01 .. 0f is k0 = 0x0706050403020100, k1 = 0x0f0e0d0c0b0a0908). */
struct map_seed {
    uint64_t k0;
    uint64_t k1;
};

struct map_node {
    struct map_node *next; /* borrowed: next node in the same bucket (set by map_put) */
    const char *key;       /* borrowed: points into the struct embedding this node */
    uint32_t key_len;      /* bytes in key (no NUL needed) */
    uint32_t hash;         /* map_hash(map, key, key_len), set by map_put */
};

struct map {
    struct map_node **buckets; /* owned: nbuckets chain heads, freed by map_free */
    size_t nbuckets;           /* 0 before the first put, then a power of two */
    size_t count;              /* nodes in the map */
    struct map_seed seed;      /* SipHash key: set by map_init, kept by map_free */
};

/* Cursor for map_iter_next; plain value, no cleanup. */
struct map_iter {
    const struct map *map; /* borrowed: the map being walked */
    size_t bucket;         /* next bucket to look at */
    struct map_node *next; /* borrowed: the node map_iter_next returns next, or NULL */
};

/* The struct that embeds node as member (like the kernel's container_of). */
#define map_entry(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

/* Fill seed with 128 random bits: getrandom(2) (non-blocking), else /dev/urandom. Always
 * fills seed; returns 0, or the error of the last source that failed (UV_E*) when neither
 * could be read, in which case seed is a mix of the clock, the pid and addresses (ASLR):
 * different per process and per call, but guessable. Loop thread or any thread. */
int map_seed_random(struct map_seed *seed);
/* SipHash-2-4 (Aumasson & Bernstein) of data[0..len) under seed; the full 64-bit value. */
uint64_t map_siphash(const struct map_seed *seed, const void *data, size_t len);

/* An empty map with a fresh random seed (map_seed_random; a failure there is not reported:
 * the map works, only less protected). Allocates nothing until the first put. Every map
 * must pass through map_init or map_init_seed before use. */
void map_init(struct map *m);
/* An empty map with the given seed (copied): tests, or maps that share one seed. */
void map_init_seed(struct map *m, const struct map_seed *seed);
/* Free the bucket array only; the nodes belong to the caller. The map is empty after and
 * keeps its seed (it may be used again without map_init). */
void map_free(struct map *m);
/* The hash the map stores in a node for key[0..len): the low 32 bits of
 * map_siphash(&m->seed, key, len). */
uint32_t map_hash(const struct map *m, const char *key, size_t len);
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
