/* map.c — intrusive chained hash map (see include/map.h). Buckets double when the node
 * count passes the bucket count, so chains stay ~1 long; the hash is stored in each node
 * so growing never rehashes keys and lookups compare hashes before bytes.
 * The hash is SipHash-2-4 keyed per map with random bits: an unkeyed hash (FNV-1a before)
 * lets a client pick thousands of keys for one bucket and make every put and get walk
 * them all. SipHash-2-4 rather than 1-3: keys are at most a few hundred bytes, the cost
 * is noise next to the syscalls around each lookup, and 2-4 has the published test vectors.
 * Does NOT allocate nodes or copy keys. Loop thread only. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "map.h"

#define MAP_MIN_BUCKETS 16

/* --- SipHash-2-4, from the algorithm description in Aumasson & Bernstein, "SipHash: a fast
 * short-input PRF" (2012) --- */

static uint64_t map_rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static inline __attribute__((always_inline)) void map_sipround(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = map_rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = map_rotl(v[0], 32);
    v[2] += v[3];
    v[3] = map_rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = map_rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = map_rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = map_rotl(v[2], 32);
}

/* Eight bytes as a little-endian word, whatever the host's byte order and alignment. */
static inline uint64_t map_load_le64(const uint8_t *p)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t w;
    memcpy(&w, p, sizeof(w)); /* one unaligned load on little-endian hosts */
    return w;
#else
    uint64_t w = 0;
    for (int i = 7; i >= 0; i--)
        w = (w << 8) | p[i];
    return w;
#endif
}

uint64_t map_siphash(const struct map_seed *seed, const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t v[4] = {
        seed->k0 ^ 0x736f6d6570736575u, /* "somepseudorandomlygeneratedbytes" */
        seed->k1 ^ 0x646f72616e646f6du,
        seed->k0 ^ 0x6c7967656e657261u,
        seed->k1 ^ 0x7465646279746573u,
    };
    uint64_t last = (uint64_t)len << 56; /* length mod 256 in the top byte */
    size_t i, full = len & ~(size_t)7;
    for (i = 0; i < full; i += 8) {
        uint64_t w = map_load_le64(p + i);
        v[3] ^= w;
        map_sipround(v); /* c = 2 compression rounds */
        map_sipround(v);
        v[0] ^= w;
    }
    for (size_t j = 0; i + j < len; j++)
        last |= (uint64_t)p[i + j] << (8 * j);
    v[3] ^= last;
    map_sipround(v);
    map_sipround(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for (int r = 0; r < 4; r++) /* d = 4 finalization rounds */
        map_sipround(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* --- seeds --- */

/* Fill buf from the kernel without blocking: getrandom(2), then /dev/urandom (which also
 * answers before the pool is initialized, early at boot, and where getrandom is missing
 * or filtered by seccomp). 0 or the last error. */
static int map_read_random(void *buf, size_t len)
{
    uint8_t *p = buf;
    size_t got = 0;
    int fd, err;
    while (got < len) {
        ssize_t n = getrandom(p + got, len - got, GRND_NONBLOCK);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0 || errno != EINTR)
            break; /* EAGAIN: pool not initialized yet; ENOSYS, EPERM: no getrandom */
    }
    if (got == len)
        return 0;
    if ((fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC)) < 0)
        return uv_translate_sys_error(errno);
    for (got = 0, err = 0; got < len && err == 0;) {
        ssize_t n = read(fd, p + got, len - got);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0)
            err = UV_EIO;
        else if (errno != EINTR)
            err = uv_translate_sys_error(errno);
    }
    close(fd);
    return err;
}

int map_seed_random(struct map_seed *seed)
{
    uint8_t raw[16];
    int rc = map_read_random(raw, sizeof(raw));
    if (rc == 0) {
        seed->k0 = map_load_le64(raw);
        seed->k1 = map_load_le64(raw + 8);
        return 0;
    }
    /* Last resort, documented in map.h: no kernel randomness at all. Mix what differs
     * between processes and calls (clocks, pid, two addresses under ASLR) through
     * SipHash itself so that every input bit reaches every output bit. */
    {
        struct timespec ts = {0, 0};
        uint64_t mix[6];
        const struct map_seed fixed = {0x0123456789abcdefu, 0xfedcba9876543210u};
        (void)clock_gettime(CLOCK_REALTIME, &ts);
        mix[0] = uv_hrtime();
        mix[1] = (uint64_t)ts.tv_sec;
        mix[2] = (uint64_t)ts.tv_nsec;
        mix[3] = (uint64_t)getpid();
        mix[4] = (uint64_t)(uintptr_t)seed;
        mix[5] = (uint64_t)(uintptr_t)&ts;
        seed->k0 = map_siphash(&fixed, mix, sizeof(mix));
        mix[0] ^= seed->k0;
        seed->k1 = map_siphash(&fixed, mix, sizeof(mix));
    }
    return rc;
}

/* --- the map --- */

void map_init_seed(struct map *m, const struct map_seed *seed)
{
    m->buckets = NULL;
    m->nbuckets = 0;
    m->count = 0;
    m->seed = *seed;
}

void map_init(struct map *m)
{
    struct map_seed seed;
    (void)map_seed_random(&seed); /* always filled; see map.h for the degraded case */
    map_init_seed(m, &seed);
}

void map_free(struct map *m)
{
    free(m->buckets);
    m->buckets = NULL;
    m->nbuckets = 0;
    m->count = 0;
}

uint32_t map_hash(const struct map *m, const char *key, size_t len)
{
    return (uint32_t)map_siphash(&m->seed, key, len);
}

static size_t map_slot(const struct map *m, uint32_t hash)
{
    return hash & (m->nbuckets - 1);
}

/* The node with key[0..len) whose hash is hash, or NULL. */
static struct map_node *map_find(const struct map *m, const char *key, size_t len, uint32_t hash)
{
    if (m->nbuckets == 0)
        return NULL;
    for (struct map_node *n = m->buckets[map_slot(m, hash)]; n != NULL; n = n->next)
        if (n->hash == hash && n->key_len == len && memcmp(n->key, key, len) == 0)
            return n;
    return NULL;
}

struct map_node *map_get(const struct map *m, const char *key, size_t len)
{
    if (m->nbuckets == 0)
        return NULL; /* an empty map is not worth a hash */
    return map_find(m, key, len, map_hash(m, key, len));
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
    uint32_t hash = map_hash(m, n->key, n->key_len); /* once: SipHash is not free */
    size_t slot;
    int rc;
    if (map_find(m, n->key, n->key_len, hash) != NULL)
        return UV_EEXIST;
    if (m->nbuckets == 0) {
        if ((rc = map_resize(m, MAP_MIN_BUCKETS)) < 0)
            return rc;
    } else if (m->count >= m->nbuckets && m->nbuckets <= SIZE_MAX / 2 / sizeof(*m->buckets)) {
        (void)map_resize(m, m->nbuckets * 2); /* failure is fine: keep the old buckets */
    }
    n->hash = hash;
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
