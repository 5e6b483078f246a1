/* redis_conn_priv.h — what redis_conn.c (connection, hooks, deadlines) and
 * redis_conn_sub.c (the subscriber's channel registry) share: the connection struct and
 * the calls between them. Private to those two files; backends use redis_conn.h.
 * Loop thread only. */
#ifndef WSGATE_REDIS_CONN_PRIV_H
#define WSGATE_REDIS_CONN_PRIV_H

#include "map.h"
#include "redis_conn.h"

enum rconn_state {
    RC_BACKOFF = 0, /* waiting for the timer to try again */
    RC_RESOLVING,   /* uv_getaddrinfo in flight */
    RC_CONNECTING,  /* context exists; AUTH/SELECT/probe sent, no answer yet */
    RC_UP,          /* usable */
    RC_CLOSING,     /* rconn_close called */
};

struct rconn_ev {
    uv_poll_t poll;        /* embedded: the struct is freed in rconn_ev_on_closed */
    struct rconn *rc;      /* borrowed: rc waits for this handle's close before freeing */
    redisAsyncContext *ac; /* borrowed from hiredis: NULL once the cleanup hook ran */
    int events;            /* UV_READABLE | UV_WRITABLE wanted by hiredis */
};

struct rconn {
    uv_loop_t *loop;         /* borrowed: outlives rc */
    enum rconn_kind kind;    /* command or subscriber */
    enum rconn_state state;  /* see enum */
    struct rconn_url url;    /* copy of the parsed URL */
    char name[16];           /* for logs */
    char ip[256];            /* resolved address of url.host */
    uint64_t timeout_ms;     /* connect and reply-progress deadline */
    uint64_t ping_ms;        /* probe after this long idle */
    uint64_t backoff_max_ms; /* reconnect delay cap */
    rconn_state_cb on_state; /* NULL once closing */
    rconn_message_cb on_message;
    rconn_sub_ready_cb on_sub_ready;
    void *arg;                   /* borrowed: for the callbacks */
    redisAsyncContext *ac;       /* borrowed from hiredis: connect .. cleanup hook, else NULL */
    struct rconn_ev *ev;         /* borrowed: the live context's poll (frees itself) */
    uv_timer_t timer;            /* embedded: closed last, then rc is freed */
    uv_prepare_t prep;           /* embedded: flushes commands queued before the poll */
    uv_check_t check;            /* embedded: flushes commands queued by I/O callbacks */
    uv_idle_t idle;              /* embedded: makes the next poll non-blocking when a command
                                  * was queued after our prepare ran (else it would wait) */
    uint8_t want_flush;          /* commands are buffered in ac->c.obuf, not yet written */
    uint8_t in_flush;            /* inside our own redisAsyncHandleWrite call */
    uint8_t after_prepare;       /* our prepare ran this iteration, our check not yet */
    unsigned open_handles;       /* timer/prepare/check/idle not yet closed */
    uv_getaddrinfo_t gai;        /* embedded request; gai_busy while in flight */
    uint8_t gai_busy;            /* request in flight: rc must not be freed */
    uint8_t gai_abandoned;       /* resolve timed out: ignore its result */
    uint8_t dying;               /* redisAsyncFree requested for ac (maybe deferred) */
    uint8_t timer_closing;       /* uv_close(timer) called */
    int kill_err;                /* why we killed the context (UV_E*), 0 = hiredis saw an error */
    const char *kill_why;        /* static string for logs */
    uint64_t progress_ms;        /* last read, or when the connection started owing replies */
    uint64_t sub_owed;           /* RCONN_SUB: (un)subscribe replies owed, all channels */
    unsigned attempts;           /* failed connects in a row (backoff exponent) */
    uint64_t rng;                /* xorshift state for backoff jitter */
    unsigned open_evs;           /* poll handles not yet closed */
    rconn_closed_cb closed_cb;   /* set by rconn_close */
    void *closed_arg;            /* borrowed: for closed_cb */
    struct rconn_chan **buckets; /* owned: channel hash table (RCONN_SUB) */
    struct map_seed hseed;       /* random SipHash key of that table, set by rconn_open */
    size_t nbuckets;             /* power of two */
    size_t nchans;               /* channels in the table */
    struct rconn_chan *probe;    /* owned via the table: liveness channel (RCONN_SUB) */
    struct rconn_chan *dispatching; /* channel whose replies are being handled: not freed */
};

/* --- redis_conn.c --- */

/* Append a command to the context's output buffer (sent with everything else queued this
 * loop iteration). 0, UV_ENOTCONN (no usable context) or UV_ENOMEM. */
int rconn_send(struct rconn *rc, redisCallbackFn *fn, void *priv, int argc, const char **argv,
               const size_t *lens);
/* The connection is usable: state RC_UP, deadlines armed, on_state(1). */
void rconn_set_up(struct rconn *rc);

/* --- redis_conn_sub.c --- */

/* Find or create a channel. NULL on allocation failure. */
struct rconn_chan *rconn_chan_get(struct rconn *rc, const char *name, size_t len);
/* The context is gone: nothing is subscribed any more; every user waits again. */
void rconn_chans_reset(struct rconn *rc);
/* SUBSCRIBE every registered channel (the probe first) on a fresh context. */
void rconn_resubscribe_all(struct rconn *rc);
/* The reply callback of every (UN)SUBSCRIBE: confirmations and messages. */
void rconn_on_sub_reply(redisAsyncContext *ac, void *r, void *priv);
/* The RESP text of argv (an array of bulk strings), NUL-terminated (not counted in *len),
 * in buf when it fits in cap bytes, else in a malloc'd buffer returned in *heap (owned by
 * the caller; NULL when buf was used). NULL when out of memory. */
const char *rconn_resp(char *buf, size_t cap, int argc, const char **argv, const size_t *lens,
                       size_t *len, char **heap);

#endif
