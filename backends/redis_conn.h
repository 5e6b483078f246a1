/* redis_conn.h — one Redis connection on the gateway's libuv loop, shared by the
 * redis-list and redis-pubsub backends: our own hiredis 0.14 <-> libuv adapter (a uv_poll_t
 * per hiredis context, one uv_timer_t per connection for the connect deadline, the
 * per-command deadline, the liveness check and the reconnect backoff), automatic reconnect
 * with capped exponential backoff, and, for a subscriber connection, a registry of channels
 * that is resubscribed after every reconnect and tells each user when its own SUBSCRIBE was
 * confirmed by the server.
 *
 * Does NOT know sessions, messages or key naming: the backends and redis_common.c (which
 * opens a node's two links and names the probe channel) build names and argv. Does NOT
 * retry commands: a command whose connection dies gets a NULL reply and the caller decides.
 * Loop thread only; no locks, no threads (host names are resolved with uv_getaddrinfo).
 *
 * Deadlines: while a connection owes replies, it must make progress (read bytes) at least
 * every timeout_ms, else it is declared dead: every pending command gets a NULL reply and
 * the connection is re-made. An idle connection sends a liveness probe after ping_ms
 * without traffic (PING on a command connection; a re-SUBSCRIBE of its own probe channel on
 * a subscriber connection, because hiredis 0.14 mis-routes PING replies in subscribed mode),
 * so a silently gone Redis (kill -STOP, a partition) is noticed within ping_ms + timeout_ms
 * when idle and within timeout_ms of any command. */
#ifndef WSGATE_REDIS_CONN_H
#define WSGATE_REDIS_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

struct rconn;
struct rconn_chan;

/* A parsed redis://[user][:password@]host[:port][/db] URL. */
struct rconn_url {
    char host[256]; /* name, IPv4 or IPv6 literal (brackets removed) */
    int port;       /* default 6379 */
    int db;         /* default 0 */
    char user[128]; /* ACL user name, or "" (AUTH password only) */
    char pass[256]; /* password, or "" (no AUTH) */
};

/* Parse url into out. 0, or UV_EINVAL for anything that is not a redis:// URL. */
int rconn_url_parse(const char *url, struct rconn_url *out);

enum rconn_kind {
    RCONN_CMD = 0, /* request/reply commands, pipelined */
    RCONN_SUB,     /* pub/sub only: SUBSCRIBE/UNSUBSCRIBE through the channel registry */
};

/* One user of one channel on a subscriber connection. Embedded in a backend struct (the
 * backend owns the memory); registered by rconn_subscribe, unregistered by
 * rconn_unsubscribe, which must happen before the memory is freed. */
struct rsub {
    struct rsub *next;     /* in the channel's ready or pending list */
    struct rsub *prev;     /* idem */
    struct rconn_chan *ch; /* borrowed: the registry's channel while registered, else NULL */
    uint64_t target;       /* ch->done value that proves our SUBSCRIBE ran; UINT64_MAX unsent */
    void *owner;           /* borrowed: the backend's per-session struct */
    uint8_t ready;         /* 1 once confirmed (messages are given to ready users only) */
    uint8_t tag;           /* the backend's kind of channel (free for the backend) */
};

/* A channel of the registry; the backend reads name and walks the ready list. */
struct rconn_chan {
    struct rconn_chan *hnext; /* owned by the registry: hash chain */
    struct rsub *ready;       /* confirmed users, doubly linked (owned by their backends) */
    struct rsub *pend_head;   /* users waiting for confirmation, by nondecreasing target */
    struct rsub *pend_tail;   /* idem */
    uint64_t sent;            /* SUBSCRIBE/UNSUBSCRIBE sent on this context for this channel */
    uint64_t done;            /* replies received for them (in order, per channel) */
    uint32_t hash;            /* low 32 bits of map_siphash(name) under the rconn's seed */
    uint32_t len;             /* strlen(name) */
    uint8_t internal;         /* 1 for the liveness probe channel: never freed, no users */
    char name[];              /* channel name, NUL-terminated */
};

/* up: 1 the connection is usable (after AUTH/SELECT and a first reply), 0 it was lost. */
typedef void (*rconn_state_cb)(struct rconn *rc, int up, void *arg);
/* RCONN_SUB: a message on ch; data is borrowed for the call. Walk ch->ready for users.
 * Must not unsubscribe users of ch other than ones the callback is handling. */
typedef void (*rconn_message_cb)(struct rconn *rc, struct rconn_chan *ch, const char *data,
                                 size_t len, void *arg);
/* RCONN_SUB: sub's SUBSCRIBE was confirmed (again after every reconnect). The callback may
 * unsubscribe sub's owner (all of its rsubs). */
typedef void (*rconn_sub_ready_cb)(struct rconn *rc, struct rsub *sub, void *arg);
/* rconn_close finished: every handle is closed and rc is freed. */
typedef void (*rconn_closed_cb)(void *arg);
/* rconn_command_status completion: 0, UV_ENOBUFS (integer reply -1), UV_EIO (error reply),
 * UV_ETIMEDOUT (deadline) or UV_ECONNRESET (connection lost). */
typedef void (*rconn_status_cb)(void *arg, int status);

struct rconn_opts {
    const char *name;                /* borrowed for the call (copied): "cmd", "sub" in logs */
    enum rconn_kind kind;            /* command or subscriber connection */
    const struct rconn_url *url;     /* borrowed for the call (copied) */
    uint64_t timeout_ms;             /* connect deadline and reply-progress deadline */
    uint64_t ping_ms;                /* liveness probe after this long without traffic */
    uint64_t backoff_max_ms;         /* reconnect delay cap (starts at 100 ms, doubles) */
    const char *probe_channel;       /* RCONN_SUB: borrowed for the call (copied); channel
                                      * (re)subscribed as the liveness probe, e.g. "ws.probe.X" */
    rconn_state_cb on_state;         /* may be NULL */
    rconn_message_cb on_message;     /* RCONN_SUB */
    rconn_sub_ready_cb on_sub_ready; /* RCONN_SUB */
    void *arg;                       /* borrowed: passed to every callback */
};

/* Allocate a connection and start connecting (asynchronously; on_state(1) later).
 * *out: owned by the caller until rconn_close. 0, UV_EINVAL or UV_ENOMEM. */
int rconn_open(struct rconn **out, uv_loop_t *loop, const struct rconn_opts *o);
/* Disconnect gracefully (a command connection first gets the replies it is owed, within
 * timeout_ms), then free rc; cb runs once, later. Pending commands and subscriptions get
 * NULL replies / are dropped. on_state is not called any more. */
void rconn_close(struct rconn *rc, rconn_closed_cb cb, void *arg);
/* Drop the connection now (pending commands get NULL replies) and reconnect. */
void rconn_reset(struct rconn *rc, const char *reason);
/* 1 when usable. */
int rconn_is_up(const struct rconn *rc);
/* The error that killed the last connection (UV_ETIMEDOUT, UV_ECONNRESET, ...), for a NULL
 * reply's status. */
int rconn_last_error(const struct rconn *rc);

/* RCONN_CMD: send a command (pipelined: everything sent during one loop iteration goes out in
 * one write). argv/lens: borrowed for the call (copied). fn(ac, reply, priv) runs exactly once
 * when 0 is returned: reply NULL when the connection died (rconn_last_error says why); the
 * reply is freed after fn returns. fn may be NULL (reply ignored).
 * UV_ENOTCONN when the connection is not up (fn never runs). */
int rconn_command(struct rconn *rc, redisCallbackFn *fn, void *priv, int argc, const char **argv,
                  const size_t *lens);
/* Same, with a status callback (see rconn_status_cb). 0 => cb runs exactly once, later. */
int rconn_command_status(struct rconn *rc, rconn_status_cb cb, void *arg, int argc,
                         const char **argv, const size_t *lens);

/* RCONN_SUB: register n users (subs[i] for names[i], lens[i]; borrowed for the call) and
 * send one SUBSCRIBE for them if connected (else they are subscribed on connect). Each user
 * gets on_sub_ready once its channel's SUBSCRIBE is confirmed. 0 or UV_ENOMEM (nothing
 * registered). A channel name must not repeat within one call. */
int rconn_subscribe(struct rconn *rc, struct rsub *subs, const char *const *names,
                    const size_t *lens, size_t n);
/* RCONN_SUB: unregister users; channels left without users are unsubscribed (one command). */
void rconn_unsubscribe(struct rconn *rc, struct rsub *subs, size_t n);
/* RCONN_SUB: the registry's channel name[0..len), or NULL. Walk its ready list for users. */
struct rconn_chan *rconn_chan_lookup(const struct rconn *rc, const char *name, size_t len);
/* Number of channels currently in the registry (for tests and logs). */
size_t rconn_channels(const struct rconn *rc);

#endif
