/* iplimit.h — per-client-IP limits against floods from one address: connections at once
 * ([server] max_connections_per_ip) and a token bucket of upgrades
 * ([server] max_handshakes_per_second_per_ip: capacity = rate, refilled at rate per
 * second). Keys are the client IP text from auth_client_ip(); map.h hashes keys with
 * a per-map random SipHash key, so addresses an attacker picks cannot share a chain.
 * Memory: an entry exists only while its IP holds a connection or its bucket is not
 * full. A bucket refills within one second of its last take, so entries number at most
 * the open connections + the IPs that took a handshake in the last ~2 s: release frees an
 * idle full entry at once, and iplimit_handshake_take sweeps the others once a second.
 * Does NOT read the clock (callers pass uv_now()) or decide HTTP answers. Loop thread. */
#ifndef WSGATE_IPLIMIT_H
#define WSGATE_IPLIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "map.h"

struct iplimit {
    struct map map;         /* owned entries (struct iplimit_entry, iplimit.c) by digest */
    uint32_t max_conns;     /* per IP; 0 = no limit (connections not counted) */
    uint32_t rate;          /* handshakes per second per IP; 0 = no limit */
    uint64_t last_sweep_ms; /* when the idle entries were last swept */
};

/* An empty limiter. Returns 0. */
int iplimit_init(struct iplimit *l, uint32_t max_conns, uint32_t rate_per_s);
/* Free every entry and the map. */
void iplimit_free(struct iplimit *l);
/* Count one more connection of ip (NUL-terminated). Returns 0 (the caller must call
 * iplimit_conn_release once with the same ip when it ends), UV_EBUSY at max_conns
 * (not counted: answer 503, no release), or UV_ENOMEM (not counted). Always 0 when
 * max_conns is 0. */
int iplimit_conn_acquire(struct iplimit *l, const char *ip);
/* Undo one successful acquire; frees the entry when it is idle and its bucket is full. */
void iplimit_conn_release(struct iplimit *l, const char *ip, uint64_t now_ms);
/* Take one handshake token for ip at now_ms (uv_now). Returns 0, UV_EAGAIN when the
 * bucket is empty (answer 429 with iplimit_retry_after_s), or UV_ENOMEM. Always 0 when
 * rate is 0. May sweep idle entries (at most once a second). */
int iplimit_handshake_take(struct iplimit *l, const char *ip, uint64_t now_ms);
/* Whole seconds (>= 1) until ip's bucket holds a token again; 0 when it holds one now. */
uint64_t iplimit_retry_after_s(const struct iplimit *l, const char *ip, uint64_t now_ms);
/* Free every entry with no connection and a full bucket at now_ms. */
void iplimit_sweep(struct iplimit *l, uint64_t now_ms);
/* Entries held (for tests and a metric). */
static inline size_t iplimit_count(const struct iplimit *l)
{
    return map_count(&l->map);
}

#endif
