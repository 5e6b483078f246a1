/* broker.h — what the frame path needs from any broker. One const
 * struct broker_ops per backend in backends/<name>.c; src/broker.c lists them.
 * The core never knows which backend runs. Every function here is called on the loop
 * thread; backends with threads of their own (nats.c, librdkafka) cross back to the
 * loop (uv_async_t or an event fd) before calling any session_* or callback. */
#ifndef WSGATE_BROKER_H
#define WSGATE_BROKER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct broker;
struct session;
struct config;
struct msg;

/* status: 0 accepted; UV_ENOBUFS the session's queue is full (429); UV_E2BIG too large
 * (413); UV_ENOSPC the broker's storage is full (503 'memory broker full' + Retry-After);
 * any other negative UV_E* the broker is unavailable (503). */
typedef void (*broker_push_cb)(void *arg, int status);
typedef void (*broker_close_cb)(struct broker *b);
typedef void (*broker_settle_cb)(struct session *s);

struct broker_ops {
    const char *name; /* config value: "memory", "redis-list", ... */
    /* Connect / set up. 0 or UV_E*. May finish connecting later (see ready). */
    int (*open)(struct broker *b, uv_loop_t *loop, const struct config *cfg);
    /* s came online here (s->key, s->topics set). 0 => session_attached(s, status) runs
     * exactly once, later (never inside this call), after every subscription s needs is
     * in place - unless detach(s) comes first, then never. < 0 => nothing will run. */
    int (*attach)(struct broker *b, struct session *s);
    /* s went away: stop delivering to it; delivered but unacked messages go back to the
     * queue (queue backends). Never calls back into s. Safe while attach is pending. */
    void (*detach)(struct broker *b, struct session *s);
    /* Queue m for session key (consumed once; kept up to the TTL while offline).
     * m: borrowed for the call (take a ref to keep it). 0 => cb runs exactly once, later;
     * < 0 (UV_E*) => cb never runs. */
    int (*push)(struct broker *b, const char *key, struct msg *m, broker_push_cb cb, void *arg);
    /* Broadcast m to every socket subscribed to topic on every node; not stored.
     * Same ownership and callback rules as push. */
    int (*publish)(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb,
                   void *arg);
    /* A frame from session s's client, to ws.send.S. Same rules as push. NULL: dropped. */
    int (*upstream)(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb,
                    void *arg);
    /* The frame for msg_id (as given to session_deliver) was written to s's socket.
     * NULL: the backend is at-most-once and never gives msg ids. May call back into
     * session_deliver / session_can_take (for s or others: redis-list refills the
     * window from what it holds); the core calls it only after the written frames are
     * off its output queue. Never closes a session synchronously. */
    void (*ack)(struct broker *b, struct session *s, uint64_t msg_id);
    /* s is leaving (its client sent a close frame, or the server closes it): cb(s) runs
     * once, later (never inside this call), when every ack given for s so far is
     * confirmed by the broker, so a reconnect of the same client elsewhere cannot read
     * those messages again; the core then detaches s and answers the client's close.
     * detach(s) before that cancels it (cb never runs). NULL: acks are confirmed when
     * ack returns, or duplicates on reconnect are acceptable for this backend. */
    void (*settle)(struct broker *b, struct session *s, broker_settle_cb cb);
    /* 1 when connected and accepting (/readyz 200, upgrades allowed), else 0. */
    int (*ready)(struct broker *b);
    /* Disconnect and free everything; cb runs once, later, when it is done. */
    void (*close)(struct broker *b, broker_close_cb cb);
};

struct broker {
    const struct broker_ops *ops; /* borrowed: static table in backends/<name>.c */
    uv_loop_t *loop;              /* borrowed: outlives the broker */
    const struct config *cfg;     /* borrowed: outlives the broker */
    void *priv;                   /* owned by the backend: set in open, freed before close cb */
    uint64_t errors;              /* broker errors so far, for /metrics (backend increments) */
    uint64_t dropped;             /* messages dropped by the backend (TTL expiry, ...) */
    uint64_t refused_full;        /* pushes refused because the broker's storage is full */
    void *data;                   /* borrowed: for the broker's owner (tests, server) */
};

/* The table for a config name, or NULL. */
const struct broker_ops *broker_find(const char *name);
/* Space-separated list of the compiled-in backend names (for error messages). */
const char *broker_names(void);

/* Set b->ops/loop/cfg and open it. */
int broker_open(struct broker *b, const struct broker_ops *ops, uv_loop_t *loop,
                const struct config *cfg);

static inline int broker_attach(struct broker *b, struct session *s)
{
    return b->ops->attach(b, s);
}
static inline void broker_detach(struct broker *b, struct session *s)
{
    b->ops->detach(b, s);
}
static inline int broker_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb,
                              void *arg)
{
    return b->ops->push(b, key, m, cb, arg);
}
static inline int broker_publish(struct broker *b, const char *topic, struct msg *m,
                                 broker_push_cb cb, void *arg)
{
    return b->ops->publish(b, topic, m, cb, arg);
}
static inline int broker_upstream(struct broker *b, struct session *s, struct msg *m,
                                  broker_push_cb cb, void *arg)
{
    if (b->ops->upstream == NULL)
        return UV_ENOSYS;
    return b->ops->upstream(b, s, m, cb, arg);
}
static inline void broker_ack(struct broker *b, struct session *s, uint64_t msg_id)
{
    if (b->ops->ack != NULL)
        b->ops->ack(b, s, msg_id);
}
/* 0: cb runs later; UV_ENOSYS: the backend has nothing to settle (detach at once). */
static inline int broker_settle(struct broker *b, struct session *s, broker_settle_cb cb)
{
    if (b->ops->settle == NULL)
        return UV_ENOSYS;
    b->ops->settle(b, s, cb);
    return 0;
}
static inline int broker_ready(struct broker *b)
{
    return b->ops->ready == NULL || b->ops->ready(b);
}
static inline void broker_close(struct broker *b, broker_close_cb cb)
{
    b->ops->close(b, cb);
}

extern const struct broker_ops broker_memory_ops;
extern const struct broker_ops broker_redis_list_ops;
extern const struct broker_ops broker_redis_pubsub_ops;
extern const struct broker_ops broker_nats_ops;
extern const struct broker_ops broker_kafka_ops;

#endif
