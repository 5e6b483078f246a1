/* nats_priv.h — what the files of the NATS JetStream backend (backends/nats/) share: the
 * constants, the private structs, and the functions one file calls in another. Not for
 * anything outside this folder: the backend's only export is broker_nats_ops (nats.c).
 * Which thread may touch what: struct nats_xq is the only state nats.c's threads touch
 * (under its lock); the stream check (nats_stream_ensure) runs on the libuv thread pool
 * and touches only what struct nats_check says; everything else is the loop thread's.
 * Design notes and measurements: docs/NATS.md.
 *
 * Names: cross-file functions are nats_<lower_case>. nats.c (the library) exports
 * nats_<CamelCase> and a few nats_<lowerCamel> names; a clash would interpose its calls. */
#ifndef WSGATE_NATS_PRIV_H
#define WSGATE_NATS_PRIV_H

#include <nats/nats.h>
#include <stdint.h>
#include <stdlib.h>
#include <uv.h>

#include "broker.h"
#include "config.h"
#include "later.h"
#include "map.h"
#include "qdeliver.h"
#include "topics.h"
#include "util.h"

#define NATS_CLOSE_CODE 1001       /* sockets still attached when the broker closes */
#define NATS_RETRY_MS 1000         /* retry after a failed read or stream check */
#define NATS_RECONNECT_WAIT_MS 250 /* between reconnect attempts to the same server */
#define NATS_PINGS_OUT                                                                             \
    2                      /* dead-server detection: nats.c pings every [nats] timeout / 2 and     \
                            * drops the connection when this many PINGs go unanswered */
#define NATS_NAME_SUBJ 208 /* "<prefix>.<kind>.<key>": 63 + 8 + 128 + NUL fits */
#define NATS_SUBJ_MAX 400  /* API subjects: "$JS.API....<stream>" */
#define NATS_STATUS_HDR "Status"     /* nats.c's header for a status line (msg.h STATUS_HDR) */
#define NATS_DESC_HDR "Description"  /* ... and for its text */
#define NATS_SEQ_HDR "Nats-Sequence" /* stream sequence on republished and direct-get msgs */
#define NATS_LAST_HDR "Nats-Last-Sequence" /* republished: the key's previous message then */
#define NATS_ACKER "wsgate"                /* our one consumer on the stream */
#define NATS_PULL_BATCH 1024               /* copies asked of NATS_ACKER per pull request */
#define NATS_PULL_EXPIRES_MS 30000         /* its expiry (a 408 then asks for a new one) */
#define NATS_PULL_MARGIN_MS 2000           /* no 408 by expiry + this: the request was lost */
#define NATS_ACKED_RING 32                 /* recently acked sequences remembered per key */
#define NATS_IO_BUF (256 * 1024) /* nats.c's read buffer (and its write buffer's size) */
#define NATS_EV_COST 256   /* bytes counted per queued message besides its payload */
#define NATS_DROP_SLOTS 64 /* subscriptions whose drops are remembered per pass */
#define NATS_QUEUE_FACTOR                                                                          \
    4 /* the hand-over bound: this many times the larger of                                        \
       * max_message_size and max_send_buffer (nats_open) */

/* --- state shared with nats threads (nats_events.c) --- */

enum nats_ev_kind {
    NATS_EV_MSG,          /* a message on one of our subscriptions */
    NATS_EV_CONNECTED,    /* (re)connected */
    NATS_EV_DISCONNECTED, /* connection lost; nats.c is reconnecting */
    NATS_EV_CLOSED,       /* the connection is closed for good (only after our close) */
    NATS_EV_ERROR,        /* an asynchronous error (slow consumer, ...) */
};

struct nats_ev {
    enum nats_ev_kind kind;
    natsStatus err; /* NATS_EV_ERROR: what nats.c reported */
    int64_t subid;  /* NATS_EV_MSG: nats.c's id of the subscription it came on */
    natsMsg *msg;   /* owned: NATS_EV_MSG only; the loop destroys it */
};

/* Live messages of one subscription dropped at the hand-over: how many, and the lowest
 * stream sequence among them (0 when one had none: a nudge, or a broadcast). */
struct nats_drop {
    int64_t subid;  /* nats.c's subscription id */
    uint64_t seq;   /* lowest Nats-Sequence dropped */
    uint64_t count; /* messages dropped */
};

/* The only state nats threads touch. Every field is guarded by lock. */
struct nats_xq {
    uv_mutex_t lock;
    uv_cond_t cond;      /* signalled when closed is set (open's failure path waits) */
    uv_async_t *async;   /* borrowed: &nats_broker.async, closed only after the last event */
    struct nats_ev *evs; /* owned: events the loop has not taken yet */
    size_t n;            /* events in evs */
    size_t cap;          /* slots in evs */
    int live_subs;       /* our subscriptions whose completion callback has not run */
    int closed;          /* the connection's closed callback ran */
    uint64_t lost;       /* events dropped for lack of memory (redelivered after ack_wait) */
    size_t bytes;        /* payloads + NATS_EV_COST each of the events in evs */
    size_t max_bytes;    /* bound on bytes for live messages (set at open, then read-only) */
    struct nats_drop drops[NATS_DROP_SLOTS]; /* live messages dropped since the last pass */
    size_t ndrops;                           /* entries in drops */
    uint64_t drops_more; /* dropped on subscriptions that found no slot (then: rescan) */
};

/* --- loop-side state --- */

struct nats_el_poll;

/* nats.c's socket I/O on our loop (nats_loop.c). */
struct nats_el {
    /* guarded by xq.lock: nats.c's threads set them */
    int fd_new;    /* owned: a dup of the socket nats.c attached, not polled yet; -1 none */
    unsigned want; /* what nats.c asked for last: NATS_EL_READ | NATS_EL_WRITE */
    int detached;  /* the connection is closed for good */
    /* the loop's */
    uv_thread_t loop_thread;  /* the loop's thread: a callback on it acts at once */
    struct nats_el_poll *cur; /* owned: the socket polled (freed by its close callback) */
    int write_blocked;        /* the last write would have blocked: wait for POLLOUT */
    uv_check_t check;         /* embedded: the write at the end of a loop pass */
};

/* Messages the loop is done with, destroyed together (nats_msg_done): nats.c hands every
 * natsMsg_Destroy to its collector thread and wakes it when it sleeps (and again when it
 * then waits for the collector's lock). At one request in flight, one by one: ~19k
 * context switches of that thread per 100k messages; woken 6.4k times per 40k in groups
 * of 32, 0.95k in groups of 256. Held: at most
 * NATS_BIN_MSGS small messages or NATS_BIN_BYTES of payload, plus the last one. */
#define NATS_BIN_MSGS 256          /* destroyed together once this many are held */
#define NATS_BIN_BYTES (64 * 1024) /* ... or once their payloads reach this */
struct nats_bin {
    natsMsg *msgs[NATS_BIN_MSGS]; /* owned: done with, not destroyed yet */
    size_t n;                     /* entries in msgs */
    size_t bytes;                 /* their payload bytes */
};

enum nats_req_kind {
    NATS_REQ_PUSH,   /* a JetStream publish waiting for its ack */
    NATS_REQ_FETCH,  /* a DIRECT.GET next_by_subj for one key, from its cursor */
    NATS_REQ_RESCUE, /* the same from the key's gap_from (nats_key_rescue) */
    NATS_REQ_SETTLE, /* an ack sent again with a reply subject: the settle barrier */
};

struct nats_settle;

/* One request whose reply comes to <inbox>.r.<id>. Lives in nats_reqs.map and in the
 * timeout FIFO (same timeout for all, so FIFO order is deadline order). */
struct nats_req {
    struct map_node node;         /* in nats_reqs.map; key = the 8 bytes of id */
    uint64_t id;                  /* reply subject suffix */
    enum nats_req_kind kind;      /* what the reply completes */
    broker_push_cb cb;            /* PUSH: the caller's callback */
    void *arg;                    /* borrowed: PUSH: the caller's argument */
    uint64_t kid;                 /* FETCH, RESCUE: the nats_key it is for (may be gone) */
    uint64_t seq;                 /* FETCH, RESCUE: the sequence it read from */
    uint64_t fetch_no;            /* FETCH: the key's fetch counter when it was sent */
    struct nats_settle *settle;   /* borrowed: SETTLE: what its reply completes; NULL once
                                   * the settle was cancelled (detach) */
    uint64_t deadline;            /* uv_now() ms after which it fails with UV_ETIMEDOUT */
    struct nats_req *prev, *next; /* borrowed: timeout FIFO neighbours */
};

struct nats_sess;
struct nats_key;

/* What one of our subscriptions is for, found by nats.c's subscription id. */
struct nats_subref {
    struct map_node node;   /* in nats_broker.subs; key = the 8 bytes of id */
    int64_t id;             /* natsSubscription_GetID */
    struct nats_key *k;     /* borrowed: the key whose republished messages come here, or NULL */
    struct topics_topic *t; /* borrowed: the topic whose broadcasts come here, or NULL */
};

/* The NATS side of a topic with subscribers on this node (its topics_topic.bdata, made by
 * nats_topic_on_first, freed by nats_topic_on_last): one core subscription. */
struct nats_topic {
    natsSubscription *sub;  /* owned: core sub on <prefix>.topic.<name> */
    struct nats_subref ref; /* in subs while sub is open */
};

/* A stored message handed to a socket of its key and not yet acked (removed). */
struct nats_pend {
    uint64_t seq;         /* stream sequence */
    uint64_t id;          /* msg_id given to session_deliver; 0 once written */
    struct nats_sess *ns; /* borrowed: the socket it went to; NULL once written (its ack
                           * could not be sent: nats_resume sends it) */
    uint32_t epoch;       /* nats_broker.epoch when it was read (nats_seq_reset) */
};

/* The backend's state for one socket (s->bpriv). Freed by detach (or a failed attach).
 * Its sock waits in its key's `waiting` until the barrier read answers its 101
 * (nats_key_attach_waiting), then moves to k->socks and takes messages (qdeliver.h: round
 * robin, its window of unacked messages, refused once session_deliver said no). */
struct nats_sess {
    struct session *s;          /* borrowed: the core's session */
    struct nats_key *k;         /* borrowed: its key's shared state */
    struct qd_sock sock;        /* embedded: in k->waiting, then (101) in k->socks */
    uint64_t next_id;           /* last msg_id given out */
    uint64_t need_fetch;        /* the 101 waits for the reply of this key fetch */
    uint64_t last_ack;          /* stream sequence of the last ack given for s, or 0 */
    struct nats_settle *settle; /* borrowed: its settle in progress (in the broker's
                                 * lists), or NULL */
    uint8_t waiting;            /* 1 until its 101 (sock in k->waiting) */
    uint16_t ntsubs;            /* entries in tsubs (= s->ntopics) */
    struct topics_sub tsubs[];  /* its places in p->topics, one per topic of s */
};

/* A settle in progress (broker_ops.settle): cb(s) runs when the barrier's reply comes
 * (or it fails), or from p->later (due) when there is nothing to confirm. */
struct nats_settle {
    struct nats_settle *prev, *next; /* borrowed: neighbours in settle_due or settle_wait */
    struct nats_broker *p;           /* borrowed: the broker (for the later call) */
    struct session *s;               /* borrowed: the leaving session */
    struct nats_sess *ns;            /* borrowed: s's state here, or NULL (not ours) */
    broker_settle_cb cb;             /* the core's callback */
    uint64_t req;                    /* id of the barrier request, 0 when due now */
    struct later_call due;           /* embedded: queued on p->later while in settle_due */
};

/* One session key with sockets on this node: what they share. */
struct nats_key {
    struct map_node node;         /* in keys; key = name */
    struct map_node idnode;       /* in keys_by_id; key = the 8 bytes of kid */
    uint64_t kid;                 /* unique per broker: requests find the key by it */
    natsSubscription *sub;        /* owned: queue sub on <prefix>.deliver.<name> */
    struct nats_subref ref;       /* in subs while sub is open */
    struct qd_key socks;          /* this node's sockets of the key past their 101 (each a
                                   * nats_sess's sock), round robin */
    struct qd_key waiting;        /* sockets whose 101 waits for a read (never given to) */
    uint64_t next_seq;            /* cursor: read from here; below it nothing waits for us */
    uint64_t fetch_sent;          /* reads sent so far */
    struct qd_pull pull;          /* the reads from the cursor (FETCH): may_have_more =
                                   * messages may wait in the stream at or after next_seq
                                   * (read them before delivering a live copy); asked = one
                                   * is in flight; woken_in_flight = a live copy was skipped
                                   * (or the cursor moved) meanwhile: read again */
    int rescuing;                 /* a RESCUE read (from gap_from) is in flight */
    int retry;                    /* in the broker's retry list */
    uint64_t gap_from;            /* a live copy said an older message of the key went to
                                   * another node: from here, what is still stored at
                                   * gap_at is stuck there and we deliver it; 0 = none */
    uint64_t gap_at;              /* uv_now() ms of that rescue */
    uint32_t rescued;             /* messages the current rescue delivered (for the log) */
    struct nats_pend *pend;       /* owned: delivered and not yet removed, unordered */
    uint64_t *acked;              /* owned: ring of the last NATS_ACKED_RING sequences acked
                                   * (their removal may still be on its way: a read that
                                   * returns one skips it), allocated at the first ack */
    uint32_t nacked;              /* entries in acked */
    uint32_t acked_next;          /* slot the next ack goes to */
    uint32_t npend;               /* entries in pend */
    uint32_t pend_cap;            /* slots in pend */
    char subject[NATS_NAME_SUBJ]; /* <prefix>.recv.<name> */
    char name[KEY_MAX_LEN + 1];   /* the session key */
};

/* The connection as the loop sees it. nats.c connects and reconnects on its own threads;
 * its events (nats_on_async) and our own checks move this. */
enum nats_conn_state {
    NATS_CONN_DOWN,     /* not connected: nats.c is connecting or reconnecting (or closed) */
    NATS_CONN_LOST,     /* we took it as lost (a write failed, a request went unanswered)
                         * before nats.c said so (nats_conn_lost): no calls into nats.c */
    NATS_CONN_CHECKING, /* connected; the stream is being checked (or will be again) */
    NATS_CONN_READY,    /* connected and the stream checked: pushes and attaches go ahead */
};

/* Where the close is. Only moves forward (nats_close, nats_close_step). */
enum nats_close_phase {
    NATS_RUNNING,         /* close() was not called */
    NATS_CLOSING,         /* close() was called: natsConnection_Close (check.close), then
                           * waiting for the closed and completion callbacks */
    NATS_CLOSING_HANDLES, /* the connection is destroyed, our uv handles are closing */
};

/* Does the server remove a work-queue message on an ack ahead of NATS_ACKER's delivery?
 * The values are the probe's answer (nats_stream_ensure). */
enum nats_acks_ahead {
    NATS_ACKS_AHEAD_UNKNOWN = -1, /* not probed yet (probed with the next stream check) */
    NATS_ACKS_AHEAD_NO = 0,       /* no (or [nats] consumer_pull = always): keep pulling */
    NATS_ACKS_AHEAD_YES = 1,      /* yes: no pulling needed */
};

/* This node's subjects, built at open. */
struct nats_subjects {
    char inbox[64];                 /* "_INBOX.<nuid>": this node's reply subjects */
    char stream[96];                /* <prefix>.recv.> */
    char deliver[96];               /* <prefix>.deliver.> (the republish destination) */
    char get[NATS_SUBJ_MAX];        /* $JS.API.DIRECT.GET.<stream> */
    char pull[NATS_SUBJ_MAX];       /* $JS.API.CONSUMER.MSG.NEXT.<stream>.<NATS_ACKER> */
    char ack_prefix[NATS_SUBJ_MAX]; /* $JS.ACK.<stream>.<NATS_ACKER>.1. */
};

/* Requests in flight (nats_request.c). */
struct nats_reqs {
    struct map map;         /* id -> struct nats_req (owned) */
    struct nats_req *head;  /* borrowed: oldest request (timeout FIFO) */
    struct nats_req *tail;  /* borrowed: newest request */
    uint64_t next_id;       /* last request id given out */
    uv_timer_t timer;       /* embedded: request timeouts; active only with requests */
    natsSubscription *sub;  /* owned: core sub on <inbox>.r.* (the replies) */
    int64_t sub_id;         /* its subscription id */
    natsSubscription *psub; /* owned: synchronous sub on <inbox>.p.* (publish acks of
                             * pushes), drained on the loop after each read (nats_loop.c) */
};

/* The one blocking job on the libuv thread pool: the stream check (nats_stream_ensure),
 * or at close natsConnection_Close. The pool thread reads close and writes rc, last_seq,
 * why and nats_acker.ahead, only while busy; the loop touches them only when not busy. */
struct nats_check {
    uv_work_t work;    /* embedded: the blocking call running on the thread pool */
    int busy;          /* work is queued or running */
    int close;         /* the job is natsConnection_Close (set once, at close), else the
                        * stream check */
    int again;         /* reconnected while a check ran: check again */
    int rc;            /* result of the stream check */
    int failed;        /* the last stream check failed (log the first only) */
    int reprobe;       /* reconnected: probe acks ahead again with the next stream check */
    uint64_t last_seq; /* the stream's last sequence, from the stream check */
    uv_timer_t timer;  /* embedded: stream check retry (also: a lost connection's re-check) */
    char why[256];     /* why the stream check failed */
};

/* NATS_ACKER's copies (nats_acker.c). */
struct nats_acker {
    natsSubscription *sub;      /* owned: core sub on <inbox>.a (NATS_ACKER's copies) */
    int64_t sub_id;             /* its subscription id */
    uv_timer_t timer;           /* embedded: the pull request's deadline */
    uint32_t pull_out;          /* copies the outstanding pull requests may still bring */
    enum nats_acks_ahead ahead; /* written by the stream check (see struct nats_check) */
};

/* Keys whose read failed or whose gap waits, visited again by timer (nats_keys.c). */
struct nats_retry {
    uint64_t *kids;   /* owned: kids of those keys */
    size_t n;         /* entries in kids */
    size_t cap;       /* slots in kids */
    uv_timer_t timer; /* embedded: fires NATS_RETRY_MS after the first entry */
};

/* Subscriptions to drop once connected (or closed): nats_unsubscribe. */
struct nats_grave {
    natsSubscription **subs; /* owned: each one owned too */
    size_t n;                /* entries in subs */
    size_t cap;              /* slots in subs */
};

/* Live messages dropped at the hand-over, for event=nats_overload (nats_drops_apply). */
struct nats_overload {
    uint64_t dropped; /* broadcasts dropped at the hand-over, not yet logged */
    uint64_t held;    /* live copies dropped there (read back), not yet logged */
    uint64_t logged;  /* uv_now() ms of the last event=nats_overload */
};

struct nats_broker {
    struct broker *b;                /* borrowed: b->priv points here */
    const struct config *cfg;        /* borrowed: outlives the broker */
    enum nats_conn_state conn;       /* see the enum */
    enum nats_close_phase phase;     /* see the enum */
    int cleanup_pending;             /* lost locally: nats_on_disconnected has yet to run */
    const char *lost_why;            /* static: why it was lost locally, for the log */
    natsOptions *opts;               /* owned: destroyed at close */
    natsConnection *nc;              /* owned: destroyed once its closed callback ran */
    struct nats_subjects subj;       /* this node's subjects */
    struct nats_xq xq;               /* embedded: the nats-thread -> loop queue */
    struct nats_el el;               /* embedded: nats.c's socket on our loop */
    struct nats_bin bin;             /* embedded: messages to destroy together */
    uv_async_t async;                /* embedded: wakes the loop for xq (and a local loss) */
    struct nats_ev *batch;           /* owned: the loop's half of the double buffer */
    size_t batch_cap;                /* slots in batch */
    uint64_t last_rx;                /* uv_now() ms when the loop last read anything */
    struct nats_overload ovl;        /* drops at the hand-over, for the log */
    struct nats_reqs req;            /* requests in flight */
    struct nats_check check;         /* the thread-pool job */
    struct nats_acker acker;         /* NATS_ACKER's copies */
    uint32_t epoch;                  /* connections so far (pend entries carry theirs) */
    uint64_t max_seq;                /* highest stream sequence seen */
    uint64_t seq_before;             /* max_seq when the connection was last lost */
    uint32_t window;                 /* max_inflight, at least 1 */
    struct map keys;                 /* name -> struct nats_key (owned) */
    struct map keys_by_id;           /* kid -> the same keys */
    uint64_t next_kid;               /* last kid given out */
    struct nats_retry retry;         /* keys to visit again */
    struct topics topics;            /* topic -> local subscribers; bdata: struct nats_topic */
    struct map subs;                 /* subscription id -> struct nats_subref (in key / topic) */
    struct nats_grave grave;         /* subscriptions waiting to be dropped */
    struct later later;              /* embedded: push/publish callbacks and due settles, run
                                      * on the next loop pass (never inside the call) */
    struct nats_settle *settle_due;  /* owned: settles queued on later (nothing to confirm) */
    struct nats_settle *settle_wait; /* owned: settles waiting for their barrier's reply */
    int open_handles;                /* async + 4 timers + el.check + later not yet closed */
    broker_close_cb close_cb;        /* the owner's close callback */
};

/* --- small helpers (every file) --- */

/* nats.c's status as a negative UV_E* (0 for NATS_OK). */
static inline int nats_err(natsStatus s)
{
    switch (s) {
    case NATS_OK:
        return 0;
    case NATS_TIMEOUT:
        return UV_ETIMEDOUT;
    case NATS_NO_MEMORY:
        return UV_ENOMEM;
    case NATS_MAX_PAYLOAD:
        return UV_E2BIG;
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
        return UV_EINVAL;
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NOT_YET_CONNECTED:
    case NATS_INSUFFICIENT_BUFFER: /* reconnecting: no reconnect buffer (nats_opts_set) */
        return UV_ENOTCONN;
    default:
        return UV_EIO;
    }
}

/* Run the async handler soon (safe from the loop thread too: it runs later, not here). */
static inline void nats_kick(struct nats_broker *p)
{
    uv_async_send(&p->async);
}

/* close() was called: no new work, no calls into nats.c except the close path's. */
static inline int nats_closing(const struct nats_broker *p)
{
    return p->phase != NATS_RUNNING;
}

/* Connected (the stream may still be unchecked). */
static inline int nats_conn_up(const struct nats_broker *p)
{
    return p->conn >= NATS_CONN_CHECKING;
}

/* Connected and the stream checked. */
static inline int nats_conn_ready(const struct nats_broker *p)
{
    return p->conn == NATS_CONN_READY;
}

/* --- nats.c: open, close, attach, detach, the vtable --- */

/* "<prefix>.<kind>.<name>" into out[NATS_NAME_SUBJ]. 0, or UV_EINVAL for a name the core's
 * key_valid refuses or a subject that does not fit. */
int nats_subject(const struct nats_broker *p, const char *kind, const char *name, char *out);

/* The value of header name of m into out (NUL-terminated, cut to len), or "". */
void nats_header(natsMsg *m, const char *name, char *out, size_t len);

/* Advance the close (after close(), or when its work or the last nats callback ended);
 * frees p at the end through the handles' close callbacks. Loop thread. */
void nats_close_step(struct nats_broker *p);

/* --- nats_events.c: the nats-thread -> loop queue, subscriptions, the async handler --- */

/* nats.c's connection callbacks (nats_opts_set registers them): nats threads; they only
 * append to xq. closure: &p->xq. */
void nats_on_connected_thread_cb(natsConnection *nc, void *closure);
void nats_on_disconnected_thread_cb(natsConnection *nc, void *closure);
void nats_on_closed_thread_cb(natsConnection *nc, void *closure);
void nats_on_error_thread_cb(natsConnection *nc, natsSubscription *sub, natsStatus err,
                             void *closure);

/* Subscribe subject (in queue group queue unless NULL); *out owned by the caller, dropped
 * with nats_unsubscribe. ref (may be NULL): filled and put in p->subs, which makes the
 * subscription live (bounded at the hand-over). 0 or UV_E*. Loop thread (or open). */
int nats_subscribe(struct nats_broker *p, const char *subject, const char *queue,
                   natsSubscription **out, struct nats_subref *ref);

/* Drop *sub (and ref from p->subs); *sub is NULL after. Never waits for nats.c's
 * connection lock: while disconnected or closing it parks the subscription in p->grave. */
void nats_unsubscribe(struct nats_broker *p, natsSubscription **sub, struct nats_subref *ref);

/* Drop the parked subscriptions: unsubscribe (connected again) or only destroy (closed). */
void nats_grave_flush(struct nats_broker *p, int unsubscribe);

/* The uv_async_t handler: takes xq's events and advances a close. Loop thread. */
void nats_on_async(uv_async_t *h);
void nats_msg_done(struct nats_broker *p, natsMsg *nm);
void nats_bin_flush(struct nats_broker *p);

/* nats_loop.c: nats.c's socket I/O on the loop. */
void nats_el_init(struct nats_broker *p, uv_loop_t *loop);
natsStatus nats_el_opts_set(struct nats_broker *p, natsOptions *o);
void nats_el_apply(struct nats_broker *p);
int nats_el_run_sync(struct nats_broker *p, void (*fn)(void *), void *arg);
void nats_el_close(struct nats_broker *p, uv_close_cb done);
void nats_push_acks_take(struct nats_broker *p);

/* --- nats_setup.c: stream and consumer setup, the acks-ahead probe (blocking) --- */

/* Create the stream or check (and bring its limits to the config) the existing one,
 * then NATS_ACKER; probes acks ahead when *acks_ahead is UNKNOWN. *last_seq: the
 * stream's last sequence. 0; UV_EINVAL when the server has something we cannot work with
 * (why says what); another UV_E* when it could not be asked (retry later). Blocks for
 * round trips: open() or the thread pool, never the serving loop. */
int nats_stream_ensure(natsConnection *nc, const struct config *cfg, const char *subject,
                       const char *deliver, enum nats_acks_ahead *acks_ahead, uint64_t *last_seq,
                       char *why, size_t whylen);

/* --- nats_conn.c: connection state, the stream check, reconnects --- */

/* Configure p->opts (its callbacks get &p->xq); *sp = the first failure or NATS_OK. */
void nats_opts_set(struct nats_broker *p, const struct config *cfg, natsStatus *sp);

/* After a publish from the loop failed with s: take the connection as lost when s says
 * the socket is gone or nats.c is reconnecting (nats_conn_lost). */
void nats_conn_check(struct nats_broker *p, natsStatus s);

/* Take the connection as lost now, before nats.c says so (why: static, for the log). */
void nats_conn_lost(struct nats_broker *p, const char *why);

/* Every key reads from the start of its queue again (a live copy may be lost). */
void nats_rescan(struct nats_broker *p);

/* xq's DISCONNECTED (from_event 1) or the clean-up of a local loss (0); CONNECTED. */
void nats_on_disconnected(struct nats_broker *p, int from_event);
void nats_on_connected(struct nats_broker *p);

/* Queue the stream check on the thread pool (or mark it to run again after the one
 * running). */
void nats_stream_check_start(struct nats_broker *p);

/* The thread-pool job (p->check.work): the stream check, or natsConnection_Close when
 * p->check.close; and its completion on the loop. */
void nats_on_stream_work(uv_work_t *w);
void nats_on_stream_done(uv_work_t *w, int status);

/* p->check.timer's callback: check the stream again when it is due. */
void nats_on_retry_timer(uv_timer_t *h);

/* --- nats_request.c: request/reply, timeouts, pushes --- */

/* A new request of kind with the next id (not tracked yet), or NULL. */
static inline struct nats_req *nats_req_new(struct nats_broker *p, enum nats_req_kind kind)
{
    struct nats_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->id = ++p->req.next_id;
    r->kind = kind;
    r->node.key = (const char *)&r->id;
    r->node.key_len = sizeof(r->id);
    return r;
}

/* Publish data to subject with reply <inbox>.r.<id> and track r until its reply or
 * [nats] timeout. 0: r moved here; < 0: r still the caller's (nothing sent). */
int nats_req_send(struct nats_broker *p, struct nats_req *r, const char *subject, const void *data,
                  size_t len);

/* Take r out of the map and the FIFO; the caller completes and frees it. */
void nats_req_unlink(struct nats_broker *p, struct nats_req *r);

/* A message on <inbox>.r.<tail>: the reply to request <tail>. */
void nats_on_reply_msg(struct nats_broker *p, natsMsg *nm, const char *tail);

/* Fail every request in flight with status (their callbacks run inside). */
void nats_reqs_fail(struct nats_broker *p, int status);

/* p->req.timer's callback. */
void nats_on_req_timer(uv_timer_t *h);

/* broker_ops.push. */
int nats_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb, void *arg);

/* --- nats_keys.c: per-key cursor, pending table, reads, gap rescue --- */

/* Remove e from k's pending table (unordered: the last entry fills the hole). */
static inline void nats_pend_remove(struct nats_key *k, struct nats_pend *e)
{
    *e = k->pend[--k->npend];
}

/* e's frame was written (or was written before a reconnect): ack it on NATS_ACKER; the
 * entry goes when the ack is sent, else it stays (e->ns NULL) for nats_resume. */
void nats_pend_ack(struct nats_broker *p, struct nats_key *k, struct nats_pend *e);

/* Read k's next stored message at or after its cursor if anything may wait and a socket
 * can take it (or a socket waits for its 101). */
void nats_key_fetch(struct nats_broker *p, struct nats_key *k);

/* Messages may wait in the stream at or after k's cursor (a live copy dropped or skipped,
 * a nudge, the cursor moved back, a reconnect): read them (qd_pull_wake, then
 * nats_key_fetch; a read in flight is followed by another). */
void nats_key_wake(struct nats_broker *p, struct nats_key *k);

/* The reply (or failure, status < 0) of a FETCH or RESCUE request r. */
void nats_key_fetch_done(struct nats_broker *p, struct nats_req *r, int status, natsMsg *nm);

/* A republished copy (or a nudge) on k's deliver subject. */
void nats_on_live_msg(struct nats_broker *p, struct nats_key *k, natsMsg *nm);

/* This node's state for key name (len bytes), created with its queue subscription. */
int nats_key_get(struct nats_broker *p, const char *name, size_t len, struct nats_key **out);

/* ns (subscribed to its topics and k's subject) joins k, waiting for its 101: the reply of
 * the next read of k, sent from here (or after the read in flight). */
void nats_key_join(struct nats_broker *p, struct nats_key *k, struct nats_sess *ns);

/* Forget ns (s->bpriv goes NULL); its unwritten messages stay in the stream and the
 * key's cursor goes back to them. Never calls into ns->s. */
void nats_sess_free(struct nats_broker *p, struct nats_sess *ns);

/* broker_ops.ack. */
void nats_ack(struct broker *b, struct session *s, uint64_t msg_id);

/* --- nats_acker.c: NATS_ACKER's pull, settle --- */

/* Keep a pull request outstanding on NATS_ACKER when the server needs it. */
void nats_acker_pull(struct nats_broker *p);

/* A message on <inbox>.a: a copy from NATS_ACKER or a pull status. */
void nats_on_acker_msg(struct nats_broker *p, natsMsg *nm);

/* Take st out of its list (and from its session); the caller frees it. */
void nats_settle_unlink(struct nats_broker *p, struct nats_settle *st);

/* Forget st without calling back (its session was detached). Frees st. */
void nats_settle_cancel(struct nats_broker *p, struct nats_settle *st);

/* st is complete: free it and call back (the core detaches its session inside). */
void nats_settle_done(struct nats_broker *p, struct nats_settle *st);

/* broker_ops.settle. */
void nats_settle(struct broker *b, struct session *s, broker_settle_cb cb);

/* --- nats_topics.c: topics and core publishes --- */

/* p->topics' hooks (arg: p): t got its first subscriber here, subscribe its subject (t->bdata
 * = struct nats_topic); t lost its last one, unsubscribe and free t->bdata. */
int nats_topic_on_first(void *arg, struct topics_topic *t);
void nats_topic_on_last(void *arg, struct topics_topic *t);

/* A broadcast on <prefix>.topic.<name>: to this node's subscribers of t. */
void nats_on_topic_msg(struct nats_broker *p, struct topics_topic *t, natsMsg *nm);

/* broker_ops.publish and broker_ops.upstream. */
int nats_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb, void *arg);
int nats_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb, void *arg);

#endif
