/* iplimit.c — per-IP connection counts and handshake token buckets (see
 * src/iplimit.h). Buckets count milli-tokens in integers: capacity rate * 1000,
 * refilled by rate per elapsed millisecond, one handshake costs 1000.
 * Does NOT know about HTTP or sockets. Loop thread only. */
#include "iplimit.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define IPLIMIT_KEY_LEN 46    /* INET6_ADDRSTRLEN: the IP text, zero-padded */
#define IPLIMIT_SWEEP_MS 1000 /* at most one sweep per second from handshake_take */
#define IPLIMIT_TOKEN 1000    /* milli-tokens per handshake */

struct iplimit_entry {
    struct map_node node;         /* in l->map; key points at key below */
    uint8_t key[IPLIMIT_KEY_LEN]; /* the IP text, zero-padded (map.h hashes with a secret) */
    uint32_t conns;               /* open connections counted by acquire */
    uint64_t tokens;              /* milli-tokens at updated_ms */
    uint64_t updated_ms;          /* when tokens was last brought up to date */
};

int iplimit_init(struct iplimit *l, uint32_t max_conns, uint32_t rate_per_s)
{
    memset(l, 0, sizeof *l);
    map_init(&l->map);
    l->max_conns = max_conns;
    l->rate = rate_per_s;
    return 0;
}

void iplimit_free(struct iplimit *l)
{
    struct map_iter it;
    struct map_node *n;

    map_iter_init(&it, &l->map);
    while ((n = map_iter_next(&it)) != NULL)
        free(map_entry(n, struct iplimit_entry, node));
    map_free(&l->map);
}

/* The map key of ip: its text, zero-padded to a fixed length. UV_EINVAL if too long. */
static int iplimit_key(const struct iplimit *l, const char *ip, uint8_t out[IPLIMIT_KEY_LEN])
{
    size_t n = strlen(ip);
    (void)l;
    if (n >= IPLIMIT_KEY_LEN)
        return UV_EINVAL;
    memset(out, 0, IPLIMIT_KEY_LEN);
    memcpy(out, ip, n);
    return 0;
}

static uint64_t iplimit_capacity(const struct iplimit *l)
{
    return (uint64_t)l->rate * IPLIMIT_TOKEN;
}

/* Milli-tokens of e at now_ms (a clock that went back counts as no time). */
static uint64_t iplimit_tokens(const struct iplimit *l, const struct iplimit_entry *e,
                               uint64_t now_ms)
{
    uint64_t cap = iplimit_capacity(l);
    uint64_t dt = now_ms > e->updated_ms ? now_ms - e->updated_ms : 0;

    if (l->rate == 0 || e->tokens >= cap || dt >= IPLIMIT_TOKEN)
        return cap; /* a whole second refills an empty bucket */
    return e->tokens + dt * l->rate >= cap ? cap : e->tokens + dt * l->rate;
}

static struct iplimit_entry *iplimit_find(const struct iplimit *l, const uint8_t key[IPLIMIT_KEY_LEN])
{
    struct map_node *n = map_get(&l->map, (const char *)key, IPLIMIT_KEY_LEN);
    return n != NULL ? map_entry(n, struct iplimit_entry, node) : NULL;
}

/* The entry of key, made with a full bucket when absent. */
static struct iplimit_entry *iplimit_get(struct iplimit *l, const uint8_t key[IPLIMIT_KEY_LEN], uint64_t now_ms)
{
    struct iplimit_entry *e = iplimit_find(l, key);

    if (e != NULL)
        return e;
    if ((e = calloc(1, sizeof *e)) == NULL)
        return NULL;
    memcpy(e->key, key, IPLIMIT_KEY_LEN);
    e->node.key = (const char *)e->key;
    e->node.key_len = IPLIMIT_KEY_LEN;
    e->tokens = iplimit_capacity(l);
    e->updated_ms = now_ms;
    if (map_put(&l->map, &e->node) != 0) {
        free(e);
        return NULL;
    }
    return e;
}

static int iplimit_idle(const struct iplimit *l, const struct iplimit_entry *e, uint64_t now_ms)
{
    return e->conns == 0 && iplimit_tokens(l, e, now_ms) >= iplimit_capacity(l);
}

int iplimit_conn_acquire(struct iplimit *l, const char *ip)
{
    uint8_t key[IPLIMIT_KEY_LEN];
    struct iplimit_entry *e;

    if (l->max_conns == 0)
        return 0;
    if (iplimit_key(l, ip, key) < 0)
        return UV_ENOMEM;
    /* A new entry's bucket is full whatever the time: updated_ms 0 is harmless. */
    if ((e = iplimit_get(l, key, 0)) == NULL)
        return UV_ENOMEM;
    if (e->conns >= l->max_conns)
        return UV_EBUSY;
    e->conns++;
    return 0;
}

void iplimit_conn_release(struct iplimit *l, const char *ip, uint64_t now_ms)
{
    uint8_t key[IPLIMIT_KEY_LEN];
    struct iplimit_entry *e;

    if (l->max_conns == 0 || iplimit_key(l, ip, key) < 0 || (e = iplimit_find(l, key)) == NULL)
        return;
    if (e->conns > 0)
        e->conns--;
    if (iplimit_idle(l, e, now_ms)) {
        map_remove(&l->map, &e->node);
        free(e);
    }
}

void iplimit_sweep(struct iplimit *l, uint64_t now_ms)
{
    struct map_iter it;
    struct map_node *n;

    l->last_sweep_ms = now_ms;
    map_iter_init(&it, &l->map);
    while ((n = map_iter_next(&it)) != NULL) {
        struct iplimit_entry *e = map_entry(n, struct iplimit_entry, node);
        if (iplimit_idle(l, e, now_ms)) {
            map_remove(&l->map, n);
            free(e);
        }
    }
}

int iplimit_handshake_take(struct iplimit *l, const char *ip, uint64_t now_ms)
{
    uint8_t key[IPLIMIT_KEY_LEN];
    struct iplimit_entry *e;
    uint64_t tokens;

    if (l->rate == 0)
        return 0;
    if (now_ms - l->last_sweep_ms >= IPLIMIT_SWEEP_MS || now_ms < l->last_sweep_ms)
        iplimit_sweep(l, now_ms);
    if (iplimit_key(l, ip, key) < 0 || (e = iplimit_get(l, key, now_ms)) == NULL)
        return UV_ENOMEM;
    tokens = iplimit_tokens(l, e, now_ms);
    e->updated_ms = now_ms;
    if (tokens < IPLIMIT_TOKEN) {
        e->tokens = tokens;
        return UV_EAGAIN;
    }
    e->tokens = tokens - IPLIMIT_TOKEN;
    return 0;
}

uint64_t iplimit_retry_after_s(const struct iplimit *l, const char *ip, uint64_t now_ms)
{
    uint8_t key[IPLIMIT_KEY_LEN];
    const struct iplimit_entry *e;
    uint64_t tokens, ms;

    if (l->rate == 0 || iplimit_key(l, ip, key) < 0 || (e = iplimit_find(l, key)) == NULL)
        return 0;
    if ((tokens = iplimit_tokens(l, e, now_ms)) >= IPLIMIT_TOKEN)
        return 0;
    ms = (IPLIMIT_TOKEN - tokens + l->rate - 1) / l->rate;
    return (ms + 999) / 1000;
}
