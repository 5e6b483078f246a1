/* nats.c — the NATS JetStream backend (`[broker] type = nats`, DESIGN.md §3-4).
 *
 * What it does: one NATS connection per gateway node. At open it creates or verifies the
 * stream ([nats] stream, default WSRECV) capturing `<prefix>.recv.>` with work-queue
 * retention, file storage, max age = [broker] ttl and at most [broker] max_queue messages
 * per subject (DiscardNew per subject: a full session queue answers 429). POST /push/S is a
 * JetStream publish to `<prefix>.recv.S` answered only after the server's publish ack;
 * services may publish there directly. Each session key S that is online somewhere has one
 * durable pull consumer (name derived from S, filter `<prefix>.recv.S`, explicit ack,
 * inactive threshold = [nats] inactive_threshold), shared by every socket of S on every
 * node: the work queue gives each message to exactly one of them, in stream order. Each
 * attached socket keeps at most one pull request outstanding, for at most max_inflight
 * minus its unacked messages (backpressure: nothing is taken that cannot be written), and
 * acks a message only when the core reports its frame written; detach NAKs the unacked
 * rest so the next socket of S, on any node, gets them at once. Broadcasts are core
 * subjects `<prefix>.topic.T` (one core subscription per topic with local subscribers);
 * client frames go to core subject `<prefix>.send.S`.
 *
 * Cost with thousands of sessions: an attach is one cheap CONSUMER.INFO (the consumer
 * survives inactive_threshold after its last socket left) and, when the consumer is
 * missing, one CREATE, at most NATS_API_MAX in flight (the server runs API requests inline
 * in our connection's read loop). Consumers keep their state in the server's memory
 * (mem_storage): messages and their removal on ack are in the file-backed stream, so a
 * server restart loses only the consumers, which are re-created on the next pull (503)
 * and redeliver every unacked message; file-backed consumer state would cost a directory
 * per consumer and a state write per ack batch. Pull replies, publish acks and API replies
 * come to this node's inbox (`_INBOX.<nuid>.p.<sid>`: one core subscription per socket,
 * so the server drops a socket's waiting pull when it unsubscribes; `_INBOX.<nuid>.r.*`
 * for requests); pulled messages keep their own subject, so the subscription id says
 * which socket they are for. An idle session costs one pull request per pull period
 * (inactive_threshold/2, at most 60 s), which also keeps its consumer alive; a departed
 * session's consumer is deleted by the server after inactive_threshold.
 *
 * Threads: nats.c runs its own (timers, async callbacks, GC, one message-delivery thread
 * shared by all subscriptions, the socket reader, the flusher: constant, not per session).
 * This file does NOT use the libuv adapter: with it the loop would also parse the NATS
 * socket, and every blocking nats.c call on the loop would deadlock until its timeout
 * (DEPS.md); without it blocking calls (stream setup in open, close) are plain round trips.
 * nats-thread callbacks only append to one mutex-protected event queue (struct nats_xq) and
 * uv_async_send; every session_*, broker callback and map access happens on the loop
 * thread. Blocking calls after open run on the libuv thread pool (uv_queue_work).
 * Publishes, acks and pulls from the loop only append to nats.c's write buffer (no
 * SendAsap): the flusher thread writes it about 1 ms after the first append, so a busy node
 * makes one write per millisecond instead of one per message (measured: ~20% less gateway
 * CPU per message, fewer and larger reads for the server, up to 1 ms more push latency). A
 * write has a deadline of [nats] timeout; a server that stops reading can hold the
 * connection lock (and so a publish on the loop) at most that long, then counts as lost.
 *
 * Does NOT: parse or rewrap payloads, store broadcasts or client frames, ack anything
 * before its frame is written, or use natsMsg_Ack (its messages come from plain core
 * subscriptions, which have no JetStream context for nats.c's ack calls): acks are
 * "+ACK"/"-NAK"/"+WPI" published to the message's reply subject, which is what
 * natsMsg_Ack sends. */
#include <inttypes.h>
#include <nats/nats.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "broker.h"
#include "config.h"
#include "log.h"
#include "map.h"
#include "msg.h"
#include "session.h"
#include "util.h"

#define NATS_CLOSE_CODE 1001        /* sockets still attached when the broker closes */
#define NATS_PULL_MAX_MS 60000      /* longest pull request: idle cost is one per this */
#define NATS_PULL_MIN_MS 500        /* shortest pull request (tiny inactive thresholds) */
#define NATS_PULL_MARGIN_MS 2000    /* a pull with no 408 by expiry + this is lost */
#define NATS_RETRY_MS 1000          /* retry after a failed pull, create or stream check */
#define NATS_API_MAX 16             /* consumer INFO/CREATE requests in flight at once */
#define NATS_RECONNECT_WAIT_MS 250  /* between reconnect attempts to the same server */
#define NATS_PING_MS 5000           /* dead-server detection: ping every, ... */
#define NATS_PINGS_OUT 3            /* ... give up after this many unanswered */
#define NATS_NAME_MAX 200           /* escaped consumer names longer than this are hashed */
#define NATS_NAME_SUBJ 208          /* "<prefix>.<kind>.<key>": 63 + 7 + 128 + NUL fits */
#define NATS_SUBJ_MAX 400           /* API subjects: "$JS.API....<stream>.<consumer>" */
#define NATS_STATUS_HDR "Status"    /* nats.c's header for a status line (msg.h STATUS_HDR) */
#define NATS_DESC_HDR "Description" /* ... and for its text */
#define NATS_ACK_PREFIX "$JS.ACK."  /* reply subjects of JetStream-delivered messages */

/* --- state shared with nats threads --- */

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
};

/* --- loop-side state --- */

enum nats_req_kind { NATS_REQ_PUSH, NATS_REQ_INFO, NATS_REQ_CREATE };

/* One request whose reply comes to <inbox>.r.<id>: a publish waiting for its ack, or a
 * consumer INFO/CREATE. Lives in nats_broker.reqs and in the timeout FIFO (same timeout for
 * all, so FIFO order is deadline order). */
struct nats_req {
    struct map_node node;         /* in reqs; key = the 8 bytes of id */
    uint64_t id;                  /* reply subject suffix */
    enum nats_req_kind kind;      /* what the reply completes */
    broker_push_cb cb;            /* PUSH: the caller's callback */
    void *arg;                    /* borrowed: PUSH: the caller's argument */
    uint64_t sid;                 /* INFO/CREATE: the nats_sess it is for (may be gone) */
    uint64_t deadline;            /* uv_now() ms after which it fails with UV_ETIMEDOUT */
    struct nats_req *prev, *next; /* borrowed: timeout FIFO neighbours */
};

/* A push callback to run later (pushes refused after acceptance, publishes, close). */
struct nats_done {
    struct nats_done *next; /* owned: next in the list */
    broker_push_cb cb;      /* the caller's callback */
    void *arg;              /* borrowed: the caller's argument */
    int status;             /* 0 or UV_E* */
};

struct nats_topic;
struct nats_sess;

/* What one of our subscriptions is for, found by nats.c's subscription id. */
struct nats_subref {
    struct map_node node; /* in nats_broker.subs; key = the 8 bytes of id */
    int64_t id;           /* natsSubscription_GetID */
    struct nats_sess *ns; /* borrowed: the socket whose pull replies come here, or NULL */
    struct nats_topic *t; /* borrowed: the topic whose broadcasts come here, or NULL */
};

/* One session's membership in one topic. */
struct nats_tsub {
    struct nats_tsub *prev, *next; /* borrowed: the topic's subscriber list */
    struct nats_topic *t;          /* borrowed: NULL when the name repeats an earlier one */
    struct nats_sess *ns;          /* borrowed: the subscriber */
};

/* One topic with subscribers on this node: one core subscription. */
struct nats_topic {
    struct map_node node;   /* in topics; key = name */
    natsSubscription *sub;  /* owned: core sub on <prefix>.topic.<name> */
    struct nats_subref ref; /* in subs while sub is open */
    struct nats_tsub *subs; /* borrowed: subscribers (owned by their nats_sess) */
    char name[];            /* NUL-terminated topic name */
};

/* An unacked message given to the core. */
struct nats_infl {
    uint64_t id;  /* msg_id given to session_deliver; 0 = slot already acked */
    natsMsg *msg; /* owned: holds the ack reply subject until the ack or NAK */
};

enum nats_sess_state {
    NATS_SESS_WAIT,   /* needs a consumer INFO or CREATE (queued in the API FIFO, or retrying) */
    NATS_SESS_API,    /* that request is in flight */
    NATS_SESS_ACTIVE, /* consumer exists: pulling */
};

/* The backend's state for one socket (s->bpriv). Freed in its timer's close callback. */
struct nats_sess {
    struct map_node node;             /* in sessions; key = the 8 bytes of sid */
    uint64_t sid;                     /* unique per broker: inbox subject suffix */
    struct nats_broker *p;            /* borrowed: the broker (outlives every session) */
    struct session *s;                /* borrowed: NULL once detached */
    natsSubscription *sub;            /* owned: core sub on <inbox>.p.<sid> (pull replies) */
    struct nats_subref ref;           /* in subs while sub is open */
    uv_timer_t timer;                 /* embedded: pull deadline, keepalive, retries */
    enum nats_sess_state state;       /* see above */
    int queued;                       /* in the API FIFO */
    int need_create;                  /* next API request: CREATE (else INFO first) */
    int attached;                     /* session_attached(s, 0) has run */
    int refused;                      /* session_deliver refused: s is closing, pull no more */
    struct nats_sess *wprev, *wnext;  /* borrowed: API FIFO neighbours */
    struct nats_infl *infl;           /* owned: ring of unacked messages, oldest first */
    uint32_t infl_cap;                /* slots in infl (power of two) */
    uint32_t infl_head;               /* index of the oldest slot */
    uint32_t infl_len;                /* slots in use, acked holes included */
    uint32_t infl_live;               /* slots not yet acked: the window in use */
    uint64_t next_id;                 /* last msg_id given out */
    uint32_t requested;               /* messages the outstanding pull may still bring */
    uint64_t pull_deadline;           /* uv_now() ms when the outstanding pull counts as lost */
    uint16_t ntsubs;                  /* entries in tsubs (= s->ntopics) */
    struct nats_tsub *tsubs;          /* owned: one per topic of s */
    char subject[NATS_NAME_SUBJ];     /* <prefix>.recv.<key> */
    char consumer[NATS_NAME_MAX + 3]; /* durable consumer name for the key */
};

struct nats_broker {
    struct broker *b;            /* borrowed: b->priv points here */
    const struct config *cfg;    /* borrowed: outlives the broker */
    struct nats_xq xq;           /* embedded: the nats-thread -> loop queue */
    uv_async_t async;            /* embedded: wakes the loop for xq and deferred work */
    uv_timer_t req_timer;        /* embedded: request timeouts; active only with requests */
    uv_timer_t retry_timer;      /* embedded: stream check retry */
    uv_work_t work;              /* embedded: the blocking call running on the thread pool */
    natsOptions *opts;           /* owned: destroyed at close */
    natsConnection *nc;          /* owned: destroyed once its closed callback ran */
    natsSubscription *rsub;      /* owned: core sub on <inbox>.r.* */
    int64_t rsub_id;             /* its subscription id */
    char inbox[64];              /* "_INBOX.<nuid>": this node's reply subjects */
    char stream_subject[96];     /* <prefix>.recv.> */
    struct map sessions;         /* sid -> struct nats_sess */
    struct map reqs;             /* id -> struct nats_req (owned) */
    struct map topics;           /* name -> struct nats_topic (owned) */
    struct map subs;             /* subscription id -> struct nats_subref (in ns / topic) */
    struct nats_req *rhead;      /* borrowed: oldest request (timeout FIFO) */
    struct nats_req *rtail;      /* borrowed: newest request */
    struct nats_sess *whead;     /* borrowed: sessions waiting to send their INFO/CREATE */
    struct nats_sess *wtail;     /* borrowed: last of whead's list */
    uint32_t api_inflight;       /* INFO/CREATE requests in flight */
    struct nats_done *done;      /* owned: callbacks to run from the async handler */
    struct nats_done *done_tail; /* borrowed: last of done */
    natsSubscription **grave;    /* owned: subscriptions to drop once connected (or closed) */
    size_t ngrave;               /* entries in grave */
    size_t grave_cap;            /* slots in grave */
    struct nats_ev *batch;       /* owned: the loop's half of the double buffer */
    size_t batch_cap;            /* slots in batch */
    uint64_t next_sid;           /* last sid given out */
    uint64_t next_req;           /* last request id given out */
    uint64_t pull_ms;            /* pull request expiry */
    uint64_t wpi_ms;             /* period of "+WPI" for messages unacked that long */
    uint32_t window;             /* max_inflight, at least 1 */
    int connected;               /* last connection event said connected */
    int stream_ok;               /* the stream was checked since the last (re)connect */
    int closing;                 /* close() was called */
    int work_busy;               /* work is queued or running */
    int work_close;              /* the work is natsConnection_Close (else stream check) */
    int work_rc;                 /* result of the stream check */
    int work_again;              /* reconnected while a check ran: check again */
    int open_handles;            /* async + 2 timers not yet closed */
    int handles_closing;         /* uv_close was called on them */
    int check_failed;            /* the last stream check failed (log the first only) */
    int lost_locally;            /* a write failed: disconnected before nats.c said so */
    int cleanup_pending;         /* ... and nats_on_disconnected has yet to run for it */
    broker_close_cb close_cb;    /* the owner's close callback */
    char work_why[256];          /* why the stream check failed */
};

/* --- small helpers --- */

static int nats_err(natsStatus s)
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
        return UV_ENOTCONN;
    default:
        return UV_EIO;
    }
}

static uint64_t nats_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* The durable consumer name for a session key: '_' -> "__", '.' -> "_-", other bytes as
 * they are (key_valid allows only [A-Za-z0-9_:.-], all legal in names and file names).
 * The escape is a prefix code, so different keys give different names; a name that would
 * pass NATS_NAME_MAX (the server keeps one directory per consumer) is "_h" + hex SHA-256
 * of the key, which no escaped name can start with. out: NATS_NAME_MAX + 3 bytes. */
static void nats_consumer_name(const char *key, size_t len, char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[SHA256_DIGEST_LENGTH];
    size_t o = 0;
    for (size_t i = 0; i < len && o <= NATS_NAME_MAX; i++) {
        if (key[i] == '_' || key[i] == '.') {
            out[o++] = '_';
            out[o++] = key[i] == '_' ? '_' : '-';
        } else {
            out[o++] = key[i];
        }
    }
    if (o <= NATS_NAME_MAX) {
        out[o] = '\0';
        return;
    }
    SHA256((const unsigned char *)key, len, md);
    out[0] = '_';
    out[1] = 'h';
    for (size_t i = 0; i < 32; i++) { /* 128 bits of the digest are plenty */
        out[2 + 2 * i] = hex[md[i] >> 4];
        out[3 + 2 * i] = hex[md[i] & 15];
    }
    out[66] = '\0';
}

/* "<prefix>.<kind>.<name>" into out[NATS_NAME_SUBJ]. Names are checked again here with the
 * core's rule (key_valid: no wildcard, space or empty token can reach a subject). */
static int nats_subject(const struct nats_broker *p, const char *kind, const char *name, char *out)
{
    size_t len = strnlen(name, KEY_MAX_LEN + 1);
    int n;
    if (!key_valid(name, len))
        return UV_EINVAL;
    n = snprintf(out, NATS_NAME_SUBJ, "%s.%s.%s", p->cfg->prefix, kind, name);
    return n > 0 && n < NATS_NAME_SUBJ ? 0 : UV_EINVAL;
}

/* The value of header name of m into out (NUL-terminated, cut to len), or "". */
static void nats_header(natsMsg *m, const char *name, char *out, size_t len)
{
    const char *v = NULL;
    out[0] = '\0';
    if (natsMsgHeader_Get(m, name, &v) == NATS_OK && v != NULL)
        snprintf(out, len, "%s", v);
}

/* The number after key (e.g. "\"ack_wait\":") in a JSON reply, or -1. */
static int64_t nats_json_num(const char *data, size_t len, const char *key)
{
    size_t klen = strlen(key);
    const char *k = memmem(data, len, key, klen);
    char buf[24];
    size_t i = 0;
    if (k == NULL)
        return -1;
    for (k += klen;
         k < data + len && i + 1 < sizeof(buf) && (*k == '-' || (*k >= '0' && *k <= '9'));)
        buf[i++] = *k++;
    buf[i] = '\0';
    return i > 0 ? strtoll(buf, NULL, 10) : -1;
}

/* A JetStream API reply: 0 when it carries no "error", else the error's err_code (or -1)
 * with its description copied to desc. The server's JSON is compact and flat enough for
 * this; we never need more than these two fields. */
static int nats_api_error(const char *data, size_t len, char *desc, size_t desclen)
{
    const char *e = memmem(data, len, "\"error\"", 7), *c, *d, *end = data + len;
    int code = -1;
    desc[0] = '\0';
    if (e == NULL)
        return 0;
    c = memmem(e, (size_t)(end - e), "\"err_code\":", 11);
    if (c != NULL)
        code = atoi(c + 11);
    d = memmem(e, (size_t)(end - e), "\"description\":\"", 15);
    if (d != NULL) {
        size_t i = 0;
        d += 15;
        while (d < end && *d != '"' && i + 1 < desclen)
            desc[i++] = *d++;
        desc[i] = '\0';
    }
    return code != 0 ? code : -1;
}

/* --- nats threads: callbacks only append to xq --- */

/* Append one event and wake the loop, both under the lock: the loop frees the broker only
 * after it has seen the last event under the same lock, so nothing here runs after that. */
static void nats_xq_push(struct nats_xq *xq, enum nats_ev_kind kind, int64_t subid, natsMsg *msg,
                         natsStatus err)
{
    uv_mutex_lock(&xq->lock);
    if (kind == NATS_EV_CLOSED) { /* a flag too: the close must not hang on a lost event */
        xq->closed = 1;
        uv_cond_broadcast(&xq->cond);
    }
    if (xq->n == xq->cap) {
        size_t cap = xq->cap ? xq->cap * 2 : 256;
        struct nats_ev *evs = realloc(xq->evs, cap * sizeof(*evs));
        if (evs == NULL) {
            /* A stored message comes back after ack_wait; a broadcast is lost (counted). */
            xq->lost++;
            uv_async_send(xq->async);
            uv_mutex_unlock(&xq->lock);
            if (msg != NULL)
                natsMsg_Destroy(msg);
            return;
        }
        xq->evs = evs;
        xq->cap = cap;
    }
    xq->evs[xq->n].kind = kind;
    xq->evs[xq->n].msg = msg;
    xq->evs[xq->n].subid = subid;
    xq->evs[xq->n].err = err;
    xq->n++;
    uv_async_send(xq->async);
    uv_mutex_unlock(&xq->lock);
}

static void nats_on_msg_thread_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                                  void *closure)
{
    (void)nc;
    /* JetStream delivers a pulled message with its own subject (ws.recv.S), not the
     * pull's reply subject: only the subscription says which socket it is for. nats.c
     * never reuses a subscription id on a connection. */
    nats_xq_push(closure, NATS_EV_MSG, natsSubscription_GetID(sub), msg, NATS_OK);
}

/* A subscription is closed and its handler will never run again. */
static void nats_on_sub_done_thread_cb(void *closure)
{
    struct nats_xq *xq = closure;
    uv_mutex_lock(&xq->lock);
    xq->live_subs--;
    uv_async_send(xq->async); /* lets a closing broker notice the last one */
    uv_mutex_unlock(&xq->lock);
}

static void nats_on_connected_thread_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_CONNECTED, 0, NULL, NATS_OK);
}

static void nats_on_disconnected_thread_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_DISCONNECTED, 0, NULL, NATS_OK);
}

static void nats_on_closed_thread_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_CLOSED, 0, NULL, NATS_OK);
}

static void nats_on_error_thread_cb(natsConnection *nc, natsSubscription *sub, natsStatus err,
                                    void *closure)
{
    (void)nc;
    (void)sub;
    nats_xq_push(closure, NATS_EV_ERROR, 0, NULL, err);
}

static void nats_unsubscribe(struct nats_broker *p, natsSubscription **sub,
                             struct nats_subref *ref);

/* Subscribe subject with our one handler and completion callback; counts live_subs.
 * ref (may be NULL) is filled and put in p->subs so messages find their owner. */
static int nats_subscribe(struct nats_broker *p, const char *subject, natsSubscription **out,
                          struct nats_subref *ref)
{
    natsSubscription *sub = NULL;
    natsStatus s = natsConnection_Subscribe(&sub, p->nc, subject, nats_on_msg_thread_cb, &p->xq);
    if (s != NATS_OK)
        return nats_err(s);
    if (natsSubscription_SetOnCompleteCB(sub, nats_on_sub_done_thread_cb, &p->xq) != NATS_OK) {
        /* only if already closed: then it delivers nothing and needs no tracking */
        natsSubscription_Destroy(sub);
        return UV_ENOTCONN;
    }
    uv_mutex_lock(&p->xq.lock);
    p->xq.live_subs++;
    uv_mutex_unlock(&p->xq.lock);
    if (ref != NULL) {
        int rc;
        ref->id = natsSubscription_GetID(sub);
        ref->node.key = (const char *)&ref->id;
        ref->node.key_len = sizeof(ref->id);
        if ((rc = map_put(&p->subs, &ref->node)) < 0) {
            nats_unsubscribe(p, &sub, NULL);
            return rc;
        }
    }
    *out = sub;
    return 0;
}

/* Unsubscribe (the server forgets the interest, so pull requests waiting on it die with
 * it) and drop our reference; the completion callback follows on a nats thread. Messages
 * of it still queued for the loop find no ref and are NAKed. While disconnected (or
 * closing) the subscription waits in p->grave instead: nats.c's reconnect thread holds the
 * connection lock for a whole connect attempt, and the loop must never wait for it. */
static void nats_unsubscribe(struct nats_broker *p, natsSubscription **sub, struct nats_subref *ref)
{
    if (*sub == NULL)
        return;
    if (ref != NULL)
        map_remove(&p->subs, &ref->node);
    if (!p->connected || p->closing) {
        if (p->ngrave == p->grave_cap) {
            size_t cap = p->grave_cap ? p->grave_cap * 2 : 64;
            natsSubscription **g = realloc(p->grave, cap * sizeof(*g));
            if (g != NULL) {
                p->grave = g;
                p->grave_cap = cap;
            }
        }
        if (p->ngrave < p->grave_cap) {
            p->grave[p->ngrave++] = *sub;
            *sub = NULL;
            return;
        }
    }
    (void)natsSubscription_Unsubscribe(*sub); /* fails only when already closed */
    natsSubscription_Destroy(*sub);
    *sub = NULL;
}

/* Drop the subscriptions that waited for a connection (unsubscribe) or for the close
 * (already closed by natsConnection_Close: only our reference goes). */
static void nats_grave_flush(struct nats_broker *p, int unsubscribe)
{
    for (size_t i = 0; i < p->ngrave; i++) {
        if (unsubscribe)
            (void)natsSubscription_Unsubscribe(p->grave[i]);
        natsSubscription_Destroy(p->grave[i]);
    }
    p->ngrave = 0;
}

/* --- stream setup (blocking: open() or the thread pool) --- */

/* Create the stream or check the existing one. Returns 0; UV_EINVAL when the server has
 * something we cannot work with (why says what: incompatible stream, JetStream off);
 * another UV_E* when the server could not be asked (retry later). Any thread but the
 * loop once it serves (nats.c request/reply blocks for one round trip). */
static int nats_stream_ensure(natsConnection *nc, const struct config *cfg, const char *subject,
                              char *why, size_t whylen)
{
    jsCtx *js = NULL;
    jsOptions jo;
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    const char *subjects[1] = {subject};
    natsStatus s;
    int rc = 0;
    int64_t max_age = (int64_t)cfg->ttl_ms * 1000000;
    why[0] = '\0';
    jsOptions_Init(&jo);
    jo.Wait = (int64_t)cfg->nats_timeout_ms;
    if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK)
        return nats_err(s);
    s = js_GetStreamInfo(&si, js, cfg->nats_stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jsStreamConfig_Init(&sc);
        sc.Name = cfg->nats_stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Retention = js_WorkQueuePolicy;
        sc.Storage = js_FileStorage;
        sc.MaxAge = max_age;
        sc.MaxMsgsPerSubject = cfg->max_queue;
        sc.Discard = js_DiscardNew;
        sc.DiscardNewPerSubject = true;
        /* the dedup window may not exceed max age (the server refuses the stream) */
        sc.Duplicates = (int64_t)nats_min(cfg->ttl_ms, 120000) * 1000000;
        jerr = 0;
        s = js_AddStream(&si, js, &sc, NULL, &jerr);
        if (s == NATS_OK) {
            log_info("event=nats_stream_created stream=%s subjects=%s max_age_ms=%llu "
                     "max_msgs_per_subject=%u storage=file retention=workqueue",
                     cfg->nats_stream, subject, (unsigned long long)cfg->ttl_ms, cfg->max_queue);
        } else if (jerr == JSStreamSubjectOverlapErr) {
            snprintf(why, whylen, "subjects %s overlap another stream on the server", subject);
            rc = UV_EINVAL;
        } else if (jerr == JSNotEnabledErr || s == NATS_NO_RESPONDERS) {
            snprintf(why, whylen, "JetStream is not enabled on the server (nats-server -js)");
            rc = UV_EINVAL;
        } else if (jerr != 0) {
            snprintf(why, whylen, "stream create refused: %s (err_code %d)",
                     nats_GetLastError(NULL), (int)jerr);
            rc = UV_EINVAL;
        } else {
            snprintf(why, whylen, "stream create failed: %s", natsStatus_GetText(s));
            rc = nats_err(s);
        }
    } else if (s == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr) {
        snprintf(why, whylen, "JetStream is not enabled on the server (nats-server -js)");
        rc = UV_EINVAL;
    } else if (s != NATS_OK) {
        snprintf(why, whylen, "stream info failed: %s", natsStatus_GetText(s));
        rc = nats_err(s);
    } else {
        jsStreamConfig *c = si->Config;
        int covered = 0;
        for (int i = 0; i < c->SubjectsLen; i++)
            covered |= strcmp(c->Subjects[i], subject) == 0;
        if (c->Retention != js_WorkQueuePolicy) {
            snprintf(why, whylen, "retention is not workqueue (acked messages must leave it)");
            rc = UV_EINVAL;
        } else if (c->Storage != js_FileStorage) {
            snprintf(why, whylen, "storage is not file (messages must survive a restart)");
            rc = UV_EINVAL;
        } else if (!covered) {
            snprintf(why, whylen, "its subjects do not include %s", subject);
            rc = UV_EINVAL;
        } else {
            /* Operational limits may differ between deployments: the stream's own values
             * win, but say so once per check. */
            if (c->MaxAge != max_age)
                log_warn("event=nats_stream_differs stream=%s field=max_age have_ms=%lld "
                         "want_ms=%llu",
                         cfg->nats_stream, (long long)(c->MaxAge / 1000000),
                         (unsigned long long)cfg->ttl_ms);
            if (c->MaxMsgsPerSubject != (int64_t)cfg->max_queue || c->Discard != js_DiscardNew ||
                !c->DiscardNewPerSubject)
                log_warn("event=nats_stream_differs stream=%s field=max_msgs_per_subject "
                         "have=%lld want=%u discard_new_per_subject=%d",
                         cfg->nats_stream, (long long)c->MaxMsgsPerSubject, cfg->max_queue,
                         (int)c->DiscardNewPerSubject);
            log_info("event=nats_stream_ok stream=%s subjects=%s", cfg->nats_stream, subject);
        }
    }
    jsStreamInfo_Destroy(si);
    jsCtx_Destroy(js);
    return rc;
}

/* --- requests and deferred callbacks --- */

static void nats_kick(struct nats_broker *p)
{
    uv_async_send(&p->async); /* safe from the loop thread too; runs the handler later */
}

static void nats_on_retry_timer(uv_timer_t *h);

/* After a publish from the loop failed with s: a write deadline or socket error means the
 * connection is gone (nats.c shuts the socket down and reconnects), so stop calling into
 * nats.c from the loop at once, before its disconnected callback arrives: its reconnect
 * thread holds the connection lock through each connect attempt. The clean-up runs from
 * the async handler (callers may be iterating); the retry timer re-checks the connection
 * in case nats.c never reports a disconnect. */
static void nats_conn_check(struct nats_broker *p, natsStatus s)
{
    if ((s != NATS_TIMEOUT && s != NATS_IO_ERROR) || !p->connected || p->closing)
        return;
    log_warn("event=nats_write_failed err=\"%s\"", natsStatus_GetText(s));
    p->connected = 0;
    p->stream_ok = 0;
    p->lost_locally = 1;
    p->cleanup_pending = 1;
    nats_kick(p);
    uv_timer_start(&p->retry_timer, nats_on_retry_timer, 2 * p->cfg->nats_timeout_ms, 0);
}

/* Run cb(arg, status) from the async handler (never inside the caller's call). */
static int nats_done_add(struct nats_broker *p, broker_push_cb cb, void *arg, int status)
{
    struct nats_done *d = malloc(sizeof(*d));
    if (d == NULL)
        return UV_ENOMEM;
    d->next = NULL;
    d->cb = cb;
    d->arg = arg;
    d->status = status;
    if (p->done_tail != NULL)
        p->done_tail->next = d;
    else
        p->done = d;
    p->done_tail = d;
    nats_kick(p);
    return 0;
}

static void nats_on_req_timer(uv_timer_t *h);

static void nats_req_timer_arm(struct nats_broker *p)
{
    uint64_t now = uv_now(p->b->loop);
    if (p->rhead == NULL) {
        uv_timer_stop(&p->req_timer);
        return;
    }
    uv_timer_start(&p->req_timer, nats_on_req_timer,
                   p->rhead->deadline > now ? p->rhead->deadline - now : 0, 0);
}

static struct nats_req *nats_req_new(struct nats_broker *p, enum nats_req_kind kind)
{
    struct nats_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->id = ++p->next_req;
    r->kind = kind;
    r->node.key = (const char *)&r->id;
    r->node.key_len = sizeof(r->id);
    return r;
}

/* Publish data to subject with reply <inbox>.r.<id> and track r (moved here on success). */
static int nats_req_send(struct nats_broker *p, struct nats_req *r, const char *subject,
                         const void *data, size_t len)
{
    char reply[96];
    natsStatus s;
    int rc;
    if (len > INT32_MAX)
        return UV_E2BIG;
    snprintf(reply, sizeof(reply), "%s.r.%" PRIu64, p->inbox, r->id);
    if ((rc = map_put(&p->reqs, &r->node)) < 0)
        return rc;
    s = natsConnection_PublishRequest(p->nc, subject, reply, data, (int)len);
    if (s != NATS_OK) {
        map_remove(&p->reqs, &r->node);
        nats_conn_check(p, s);
        return nats_err(s);
    }
    r->deadline = uv_now(p->b->loop) + p->cfg->nats_timeout_ms;
    r->next = NULL;
    r->prev = p->rtail;
    if (p->rtail != NULL)
        p->rtail->next = r;
    else
        p->rhead = r;
    p->rtail = r;
    if (p->rhead == r)
        nats_req_timer_arm(p);
    return 0;
}

/* Take r out of the map and the FIFO; the caller completes and frees it. */
static void nats_req_unlink(struct nats_broker *p, struct nats_req *r)
{
    map_remove(&p->reqs, &r->node);
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        p->rhead = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        p->rtail = r->prev;
    r->prev = r->next = NULL;
}

/* --- sessions --- */

static void nats_sess_on_timer(uv_timer_t *h);
static void nats_create_pump(struct nats_broker *p);

static struct nats_sess *nats_sess_find(struct nats_broker *p, uint64_t sid)
{
    struct map_node *n = map_get(&p->sessions, (const char *)&sid, sizeof(sid));
    return n != NULL ? map_entry(n, struct nats_sess, node) : NULL;
}

/* Publish an ack verb ("+ACK", "-NAK", "+WPI") to m's reply subject. Skipped while
 * disconnected; a lost ack or NAK means redelivery after ack_wait (at-least-once). */
static void nats_msg_reply(struct nats_broker *p, natsMsg *m, const char *verb)
{
    const char *reply = natsMsg_GetReply(m);
    if (reply == NULL || strncmp(reply, NATS_ACK_PREFIX, sizeof(NATS_ACK_PREFIX) - 1) != 0)
        return;
    if (!p->connected)
        return; /* no waiting on nats.c's reconnect (see nats_unsubscribe): ack_wait decides */
    natsStatus s = natsConnection_PublishString(p->nc, reply, verb);
    if (s != NATS_OK) {
        p->b->errors++;
        nats_conn_check(p, s);
    }
}

static int nats_infl_add(struct nats_sess *ns, uint64_t id, natsMsg *m)
{
    struct nats_infl *slot;
    if (ns->infl_len == ns->infl_cap) {
        uint32_t cap = ns->infl_cap ? ns->infl_cap * 2 : 8;
        struct nats_infl *a = malloc(cap * sizeof(*a));
        if (a == NULL)
            return UV_ENOMEM;
        for (uint32_t i = 0; i < ns->infl_len; i++)
            a[i] = ns->infl[(ns->infl_head + i) & (ns->infl_cap - 1)];
        free(ns->infl);
        ns->infl = a;
        ns->infl_cap = cap;
        ns->infl_head = 0;
    }
    slot = &ns->infl[(ns->infl_head + ns->infl_len) & (ns->infl_cap - 1)];
    slot->id = id;
    slot->msg = m;
    ns->infl_len++;
    ns->infl_live++;
    return 0;
}

/* The message for id, removed from the ring (acks come in write order, so the oldest slot
 * almost always matches), or NULL. */
static natsMsg *nats_infl_take(struct nats_sess *ns, uint64_t id)
{
    natsMsg *m = NULL;
    for (uint32_t i = 0; i < ns->infl_len; i++) {
        struct nats_infl *slot = &ns->infl[(ns->infl_head + i) & (ns->infl_cap - 1)];
        if (slot->id == id) {
            m = slot->msg;
            slot->id = 0;
            slot->msg = NULL;
            ns->infl_live--;
            break;
        }
    }
    while (ns->infl_len > 0 && ns->infl[ns->infl_head].id == 0) {
        ns->infl_head = (ns->infl_head + 1) & (ns->infl_cap - 1);
        ns->infl_len--;
    }
    return m;
}

/* Apply verb to every unacked message of ns; with "-NAK" they also leave the ring. */
static void nats_infl_all(struct nats_broker *p, struct nats_sess *ns, const char *verb, int drop)
{
    for (uint32_t i = 0; i < ns->infl_len; i++) {
        struct nats_infl *slot = &ns->infl[(ns->infl_head + i) & (ns->infl_cap - 1)];
        if (slot->id == 0)
            continue;
        nats_msg_reply(p, slot->msg, verb);
        if (drop) {
            natsMsg_Destroy(slot->msg);
            slot->msg = NULL;
            slot->id = 0;
        }
    }
    if (drop) {
        ns->infl_len = ns->infl_live = 0;
        ns->infl_head = 0;
    }
}

/* Schedule ns's timer: the outstanding pull's deadline, else a keepalive pull period (the
 * window is full); sooner when messages wait for an ack (+WPI before ack_wait passes). */
static void nats_sess_arm(struct nats_broker *p, struct nats_sess *ns, uint64_t delay)
{
    uint64_t now = uv_now(p->b->loop);
    if (delay == 0) {
        delay = p->pull_ms;
        if (ns->requested > 0)
            delay = ns->pull_deadline > now ? ns->pull_deadline - now : 0;
        if (ns->infl_live > 0)
            delay = nats_min(delay, p->wpi_ms);
    }
    uv_timer_start(&ns->timer, nats_sess_on_timer, delay, 0);
}

/* Ask ns's consumer for as many messages as the window allows, unless a pull is already
 * outstanding. Without force it waits until half the window is free again, so a busy
 * session costs one pull per half window rather than one per ack. */
static void nats_sess_pull(struct nats_broker *p, struct nats_sess *ns, int force)
{
    char subject[NATS_SUBJ_MAX], reply[96], body[96];
    uint32_t free_slots;
    natsStatus s;
    int n;
    if (!p->connected || !p->stream_ok || p->closing || ns->s == NULL ||
        ns->state != NATS_SESS_ACTIVE || ns->refused || ns->requested > 0)
        return;
    free_slots = ns->infl_live < p->window ? p->window - ns->infl_live : 0;
    if (free_slots == 0 || (!force && ns->infl_live > 0 && free_slots < (p->window + 1) / 2))
        return;
    snprintf(subject, sizeof(subject), "$JS.API.CONSUMER.MSG.NEXT.%s.%s", p->cfg->nats_stream,
             ns->consumer);
    snprintf(reply, sizeof(reply), "%s.p.%" PRIu64, p->inbox, ns->sid);
    n = snprintf(body, sizeof(body), "{\"batch\":%u,\"expires\":%" PRIu64 "}", free_slots,
                 p->pull_ms * 1000000);
    s = natsConnection_PublishRequest(p->nc, subject, reply, body, n);
    if (s != NATS_OK) {
        p->b->errors++;
        nats_conn_check(p, s);
        log_warn("event=nats_pull_failed session=%s err=%s", ns->s->key, natsStatus_GetText(s));
        nats_sess_arm(p, ns, NATS_RETRY_MS);
        return;
    }
    ns->requested = free_slots;
    ns->pull_deadline = uv_now(p->b->loop) + p->pull_ms + NATS_PULL_MARGIN_MS;
    nats_sess_arm(p, ns, 0);
}

/* Queue ns for a consumer request: INFO first (cheap and read-only: a key that was online
 * within inactive_threshold still has its consumer), CREATE when it is missing or its
 * settings differ (a durable create of an existing name is an update on the server).
 * front: ahead of the others (the second step of an attach already under way). */
static void nats_sess_queue(struct nats_broker *p, struct nats_sess *ns, int create, int front)
{
    ns->state = NATS_SESS_WAIT;
    ns->requested = 0;
    ns->need_create |= create;
    if (ns->queued)
        return;
    ns->queued = 1;
    if (front) {
        ns->wprev = NULL;
        ns->wnext = p->whead;
        if (p->whead != NULL)
            p->whead->wprev = ns;
        else
            p->wtail = ns;
        p->whead = ns;
    } else {
        ns->wnext = NULL;
        ns->wprev = p->wtail;
        if (p->wtail != NULL)
            p->wtail->wnext = ns;
        else
            p->whead = ns;
        p->wtail = ns;
    }
    nats_create_pump(p);
}

static void nats_sess_unqueue(struct nats_broker *p, struct nats_sess *ns)
{
    if (!ns->queued)
        return;
    if (ns->wprev != NULL)
        ns->wprev->wnext = ns->wnext;
    else
        p->whead = ns->wnext;
    if (ns->wnext != NULL)
        ns->wnext->wprev = ns->wprev;
    else
        p->wtail = ns->wprev;
    ns->wnext = ns->wprev = NULL;
    ns->queued = 0;
}

static void nats_topic_unlink(struct nats_broker *p, struct nats_tsub *ts)
{
    struct nats_topic *t = ts->t;
    if (t == NULL)
        return;
    if (ts->prev != NULL)
        ts->prev->next = ts->next;
    else
        t->subs = ts->next;
    if (ts->next != NULL)
        ts->next->prev = ts->prev;
    ts->t = NULL;
    if (t->subs == NULL) {
        nats_unsubscribe(p, &t->sub, &t->ref);
        map_remove(&p->topics, &t->node);
        free(t);
    }
}

static void nats_sess_on_closed(uv_handle_t *h)
{
    struct nats_sess *ns = h->data;
    free(ns->infl);
    free(ns->tsubs);
    free(ns);
}

/* Forget ns: unacked messages go back (NAK: redelivered at once to the next puller of the
 * key, here or on another node), its pull request dies with its inbox subscription, its
 * topics are left. The memory goes in the timer's close callback. Never calls into s. */
static void nats_sess_free(struct nats_broker *p, struct nats_sess *ns)
{
    nats_sess_unqueue(p, ns);
    nats_infl_all(p, ns, "-NAK", 1);
    for (uint16_t i = 0; i < ns->ntsubs; i++)
        nats_topic_unlink(p, &ns->tsubs[i]);
    nats_unsubscribe(p, &ns->sub, &ns->ref);
    map_remove(&p->sessions, &ns->node);
    if (ns->s != NULL)
        ns->s->bpriv = NULL;
    ns->s = NULL;
    uv_timer_stop(&ns->timer);
    uv_close((uv_handle_t *)&ns->timer, nats_sess_on_closed);
}

/* An attach that cannot complete: forget ns, then answer the client 503 (the core will not
 * call detach after a failed session_attached). */
static void nats_sess_fail(struct nats_broker *p, struct nats_sess *ns, int status)
{
    struct session *s = ns->s;
    nats_sess_free(p, ns);
    session_attached(s, status);
}

/* Send queued consumer requests while fewer than NATS_API_MAX are in flight. The server
 * runs JetStream API requests inline in our connection's read loop (a file-backed create
 * takes ~2 ms there), so a small window keeps an attach storm from stalling this node's
 * pushes and acks behind a wall of creates. */
static void nats_create_pump(struct nats_broker *p)
{
    char subject[NATS_SUBJ_MAX + 64], body[1024];
    struct nats_sess *ns;
    while (p->api_inflight < NATS_API_MAX && (ns = p->whead) != NULL && p->connected &&
           p->stream_ok && !p->closing) {
        struct nats_req *r;
        int n = 0, rc;
        nats_sess_unqueue(p, ns);
        if (ns->need_create) {
            snprintf(subject, sizeof(subject), "$JS.API.CONSUMER.DURABLE.CREATE.%s.%s",
                     p->cfg->nats_stream, ns->consumer);
            n = snprintf(body, sizeof(body),
                         "{\"stream_name\":\"%s\",\"config\":{\"durable_name\":\"%s\","
                         "\"deliver_policy\":\"all\",\"ack_policy\":\"explicit\","
                         "\"ack_wait\":%" PRIu64 ",\"max_deliver\":-1,\"filter_subject\":\"%s\","
                         "\"replay_policy\":\"instant\",\"max_ack_pending\":%u,"
                         "\"inactive_threshold\":%" PRIu64 ",\"mem_storage\":true}}",
                         p->cfg->nats_stream, ns->consumer, p->cfg->nats_ack_wait_ms * 1000000,
                         ns->subject, p->window * 4, p->cfg->nats_inactive_ms * 1000000);
        } else {
            snprintf(subject, sizeof(subject), "$JS.API.CONSUMER.INFO.%s.%s", p->cfg->nats_stream,
                     ns->consumer);
        }
        r = nats_req_new(p, ns->need_create ? NATS_REQ_CREATE : NATS_REQ_INFO);
        rc = r == NULL ? UV_ENOMEM : n >= 0 && (size_t)n < sizeof(body) ? 0 : UV_EINVAL;
        if (rc == 0) {
            r->sid = ns->sid;
            rc = nats_req_send(p, r, subject, body, (size_t)n);
        }
        if (rc < 0) {
            free(r);
            p->b->errors++;
            if (!ns->attached) {
                nats_sess_fail(p, ns, rc);
            } else {
                nats_sess_arm(p, ns, NATS_RETRY_MS); /* state stays WAIT */
            }
            continue;
        }
        ns->state = NATS_SESS_API;
        p->api_inflight++;
    }
}

/* Does an INFO reply describe a consumer with our settings? (The filter is implied by the
 * name, which is derived from the key.) */
static int nats_consumer_current(struct nats_broker *p, const char *data, size_t len)
{
    return nats_json_num(data, len, "\"ack_wait\":") ==
               (int64_t)(p->cfg->nats_ack_wait_ms * 1000000) &&
           nats_json_num(data, len, "\"inactive_threshold\":") ==
               (int64_t)(p->cfg->nats_inactive_ms * 1000000) &&
           nats_json_num(data, len, "\"max_ack_pending\":") == (int64_t)p->window * 4 &&
           memmem(data, len, "\"mem_storage\":true", 18) != NULL;
}

/* The reply (or failure: data NULL, status < 0) of ns's consumer INFO or CREATE. */
static void nats_sess_api_done(struct nats_broker *p, struct nats_sess *ns, int create, int status,
                               const char *data, size_t len)
{
    char desc[160];
    int code = 0;
    if (status == 0 && (code = nats_api_error(data, len, desc, sizeof(desc))) != 0) {
        if (!create && code == 10014) { /* consumer not found: create it, next in line */
            nats_sess_queue(p, ns, 1, 1);
            return;
        }
        log_warn("event=nats_consumer_failed session=%s consumer=%s op=%s err_code=%d "
                 "reason=\"%s\"",
                 ns->s->key, ns->consumer, create ? "create" : "info", code, desc);
        status = UV_EIO;
    }
    if (status < 0) {
        p->b->errors++;
        if (!ns->attached) {
            nats_sess_fail(p, ns, status);
        } else {
            ns->state = NATS_SESS_WAIT;
            nats_sess_arm(p, ns, NATS_RETRY_MS);
        }
        return;
    }
    if (!create && !nats_consumer_current(p, data, len)) {
        nats_sess_queue(p, ns, 1, 1); /* settings changed since it was created: update */
        return;
    }
    ns->need_create = 0;
    ns->state = NATS_SESS_ACTIVE;
    ns->requested = 0;
    nats_sess_pull(p, ns, 1);
    if (!ns->attached) {
        ns->attached = 1;
        session_attached(ns->s, 0); /* last: the core may detach ns from inside it */
    }
}

static void nats_sess_on_timer(uv_timer_t *h)
{
    struct nats_sess *ns = h->data;
    struct nats_broker *p = ns->p;
    uint64_t now = uv_now(p->b->loop);
    if (ns->s == NULL || p->closing)
        return;
    if (ns->state == NATS_SESS_WAIT) {
        nats_sess_queue(p, ns, 0, 0);
        return;
    }
    if (ns->state != NATS_SESS_ACTIVE)
        return;
    if (ns->infl_live > 0) /* still unwritten: keep the server from redelivering them */
        nats_infl_all(p, ns, "+WPI", 0);
    if (ns->requested > 0 && now >= ns->pull_deadline) {
        /* No 408 came: the request or the consumer is gone (a pull to a missing consumer
         * gets no answer at all: the server's $JS.API.> subscription swallows it). */
        log_info("event=nats_pull_lost session=%s consumer=%s", ns->s->key, ns->consumer);
        nats_sess_queue(p, ns, 0, 0);
        return;
    }
    if (ns->requested == 0) {
        if (ns->infl_live >= p->window && p->connected && p->stream_ok) {
            /* Window full for a whole period: a 1-message pull keeps the consumer's
             * inactivity clock from running out while the socket is slow. */
            ns->infl_live--;
            nats_sess_pull(p, ns, 1);
            ns->infl_live++;
        } else {
            nats_sess_pull(p, ns, 1);
        }
    }
    if (ns->s != NULL && ns->state == NATS_SESS_ACTIVE && !uv_is_active((uv_handle_t *)h))
        nats_sess_arm(p, ns, 0); /* a lost pull must always be noticed */
}

/* A message on <inbox>.p.<sid>: a stored message to deliver, or a status line about the
 * pull itself (408 expired, 409 consumer gone / limits, 503 no consumer, 100 heartbeat). */
static void nats_on_pull_msg(struct nats_broker *p, struct nats_sess *ns, natsMsg *nm)
{
    const char *reply = natsMsg_GetReply(nm);
    struct msg *m;
    uint64_t id;
    int rc;
    if (reply == NULL || strncmp(reply, NATS_ACK_PREFIX, sizeof(NATS_ACK_PREFIX) - 1) != 0) {
        char status[8], desc[96];
        nats_header(nm, NATS_STATUS_HDR, status, sizeof(status));
        nats_header(nm, NATS_DESC_HDR, desc, sizeof(desc));
        natsMsg_Destroy(nm);
        if (strcmp(status, "100") == 0)
            return;
        ns->requested = 0;
        if (strcmp(status, "408") == 0 || strcmp(status, "404") == 0) {
            nats_sess_pull(p, ns, 1);
            nats_sess_arm(p, ns, 0);
        } else if (strcmp(status, "503") == 0 || strstr(desc, "Deleted") != NULL) {
            log_info("event=nats_consumer_missing session=%s consumer=%s status=%s", ns->s->key,
                     ns->consumer, status);
            nats_sess_queue(p, ns, 1, 0);
        } else {
            log_warn("event=nats_pull_refused session=%s status=%s reason=\"%s\"", ns->s->key,
                     status, desc);
            p->b->errors++;
            nats_sess_arm(p, ns, NATS_RETRY_MS);
        }
        return;
    }
    if (ns->requested > 0)
        ns->requested--;
    if (ns->refused || !ns->attached) { /* (while re-checking its consumer it still takes
                                         * what an older pull brings: order is kept) */
        nats_msg_reply(p, nm, "-NAK");
        natsMsg_Destroy(nm);
        return;
    }
    m = msg_new_copy(natsMsg_GetData(nm), (size_t)natsMsg_GetDataLength(nm), p->cfg->frame_type);
    id = ++ns->next_id;
    if (m == NULL || nats_infl_add(ns, id, nm) < 0) {
        msg_unref(m);
        nats_msg_reply(p, nm, "-NAK");
        natsMsg_Destroy(nm);
        p->b->errors++;
        return;
    }
    rc = session_deliver(ns->s, id, m);
    msg_unref(m);
    if (rc < 0) {
        /* The socket is closing (over max_send_buffer, or going away): the message was
         * not taken; it goes back at once and nothing more is pulled for this socket. */
        nats_infl_take(ns, id);
        nats_msg_reply(p, nm, "-NAK");
        natsMsg_Destroy(nm);
        ns->refused = 1;
        return;
    }
    if (ns->infl_live == 1)
        nats_sess_arm(p, ns, 0); /* first unacked message: the +WPI clock starts */
    if (ns->requested == 0)
        nats_sess_pull(p, ns, 0);
}

/* A message on <prefix>.topic.<name>: fan it out to this node's subscribers. */
static void nats_on_topic_msg(struct nats_broker *p, struct nats_topic *t, natsMsg *nm)
{
    struct msg *m =
        msg_new_copy(natsMsg_GetData(nm), (size_t)natsMsg_GetDataLength(nm), p->cfg->frame_type);
    if (m == NULL) {
        p->b->errors++;
        return;
    }
    /* session_deliver never calls back into the broker, so the list cannot change under
     * us; a refusal closes that socket and is none of the publisher's business. */
    for (struct nats_tsub *ts = t->subs; ts != NULL; ts = ts->next)
        (void)session_deliver(ts->ns->s, 0, m);
    msg_unref(m);
}

/* The reply to request r: a publish ack (or error), or a consumer create result. */
static void nats_req_complete(struct nats_broker *p, struct nats_req *r, int status, natsMsg *nm)
{
    const char *data = nm != NULL ? natsMsg_GetData(nm) : NULL;
    size_t len = nm != NULL ? (size_t)natsMsg_GetDataLength(nm) : 0;
    if (status == 0 && nm != NULL && natsMsg_IsNoResponders(nm))
        status = UV_EHOSTUNREACH; /* no stream (or consumer API) answers on that subject */
    if (r->kind == NATS_REQ_INFO || r->kind == NATS_REQ_CREATE) {
        struct nats_sess *ns = nats_sess_find(p, r->sid);
        p->api_inflight--;
        if (ns != NULL && ns->state == NATS_SESS_API)
            nats_sess_api_done(p, ns, r->kind == NATS_REQ_CREATE, status, data, len);
        nats_create_pump(p);
        return;
    }
    if (status == 0 && data != NULL) {
        char desc[160];
        int code = nats_api_error(data, len, desc, sizeof(desc));
        if (code != 0) {
            /* 10077 covers every store failure; only the per-subject limit is the session's
             * queue being full (429), the rest is the stream's capacity (503). */
            if (strstr(desc, "per subject") != NULL)
                status = UV_ENOBUFS;
            else if (strstr(desc, "message size") != NULL || strstr(desc, "too large") != NULL)
                status = UV_E2BIG;
            else
                status = UV_EIO;
            if (status == UV_EIO) {
                p->b->errors++;
                log_warn("event=nats_publish_refused err_code=%d reason=\"%s\"", code, desc);
            }
        }
    }
    r->cb(r->arg, status);
}

static void nats_on_reply_msg(struct nats_broker *p, natsMsg *nm, const char *tail)
{
    uint64_t id = strtoull(tail, NULL, 10);
    struct map_node *n = map_get(&p->reqs, (const char *)&id, sizeof(id));
    struct nats_req *r;
    if (n == NULL)
        return; /* timed out or failed already */
    r = map_entry(n, struct nats_req, node);
    nats_req_unlink(p, r);
    nats_req_timer_arm(p);
    nats_req_complete(p, r, 0, nm);
    free(r);
}

static void nats_on_req_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    uint64_t now = uv_now(p->b->loop);
    struct nats_req *r;
    while ((r = p->rhead) != NULL && r->deadline <= now) {
        nats_req_unlink(p, r);
        p->b->errors++;
        nats_req_complete(p, r, UV_ETIMEDOUT, NULL);
        free(r);
        if (p->closing)
            return;
    }
    nats_req_timer_arm(p);
}

/* Fail every request in flight with status (connection lost: their replies will not come,
 * or may come for a publish the client then retries — at-least-once). */
static void nats_reqs_fail(struct nats_broker *p, int status)
{
    struct nats_req *r;
    while ((r = p->rhead) != NULL) {
        nats_req_unlink(p, r);
        nats_req_complete(p, r, status, NULL);
        free(r);
    }
    uv_timer_stop(&p->req_timer);
}

/* --- connection state --- */

static void nats_stream_check_start(struct nats_broker *p);

/* The stream is there: check every session's consumer again and pull (pull requests do
 * not survive a server restart or a lost connection, and consumers, whose state lives in
 * the server's memory, do not survive a restart), then send what waited. */
static void nats_resume(struct nats_broker *p)
{
    struct map_iter it;
    struct map_node *n;
    map_iter_init(&it, &p->sessions);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_sess *ns = map_entry(n, struct nats_sess, node);
        if (ns->state == NATS_SESS_ACTIVE)
            nats_sess_queue(p, ns, 0, 0);
    }
    nats_create_pump(p);
}

/* Connection lost (from_event: nats.c said so; else a write failed, nats_conn_check). */
static void nats_on_disconnected(struct nats_broker *p, int from_event)
{
    struct nats_sess *ns;
    if (from_event)
        p->lost_locally = 0; /* confirmed: the connected event will follow */
    if (p->connected || !from_event) {
        p->b->errors++;
        log_warn("event=nats_disconnected source=%s", from_event ? "client" : "write");
    }
    p->connected = 0;
    p->stream_ok = 0;
    nats_reqs_fail(p, UV_ECONNRESET);
    /* Attaches that were waiting to create: answer 503 now rather than hold the client. */
    while ((ns = p->whead) != NULL && !p->closing) {
        if (ns->attached) {
            nats_sess_unqueue(p, ns); /* re-queued by nats_on_connected */
            ns->state = NATS_SESS_WAIT;
            nats_sess_arm(p, ns, NATS_RETRY_MS);
        } else {
            nats_sess_fail(p, ns, UV_ECONNRESET);
        }
    }
}

static void nats_on_connected(struct nats_broker *p)
{
    if (!p->connected)
        log_info("event=nats_connected");
    p->connected = 1;
    p->lost_locally = 0;
    nats_grave_flush(p, 1);
    nats_stream_check_start(p);
}

static void nats_on_stream_work(uv_work_t *w)
{
    struct nats_broker *p = w->data;
    if (p->work_close) {
        natsConnection_Close(p->nc); /* flushes (acks, NAKs) for up to 500 ms, joins threads */
        return;
    }
    p->work_rc =
        nats_stream_ensure(p->nc, p->cfg, p->stream_subject, p->work_why, sizeof(p->work_why));
}

static void nats_close_step(struct nats_broker *p);

static void nats_on_stream_done(uv_work_t *w, int status)
{
    struct nats_broker *p = w->data;
    p->work_busy = 0;
    if (p->work_close || p->closing) {
        nats_close_step(p);
        return;
    }
    if (status < 0 || p->work_rc < 0) {
        if (!p->check_failed) /* once per outage, not once per retry */
            log_error("event=nats_stream_check_failed stream=%s err=%s reason=\"%s\"",
                      p->cfg->nats_stream, uv_err_name(status < 0 ? status : p->work_rc),
                      p->work_why);
        p->check_failed = 1;
        p->b->errors++;
        uv_timer_start(&p->retry_timer, nats_on_retry_timer, NATS_RETRY_MS, 0);
        return;
    }
    if (p->work_again) {
        nats_stream_check_start(p);
        return;
    }
    p->check_failed = 0;
    if (!p->connected && p->lost_locally) { /* the write failure did not break it after all */
        p->lost_locally = 0;
        p->connected = 1;
        nats_grave_flush(p, 1);
        log_info("event=nats_connected source=check");
    }
    if (p->connected) {
        p->stream_ok = 1;
        log_info("event=nats_ready");
        nats_resume(p);
    }
}

static void nats_stream_check_start(struct nats_broker *p)
{
    int rc;
    if (p->closing)
        return;
    if (p->work_busy) {
        p->work_again = 1;
        return;
    }
    p->work_again = 0;
    p->work_close = 0;
    p->work.data = p;
    if ((rc = uv_queue_work(p->b->loop, &p->work, nats_on_stream_work, nats_on_stream_done)) < 0) {
        log_error("event=nats_stream_check_failed err=%s", uv_err_name(rc));
        uv_timer_start(&p->retry_timer, nats_on_retry_timer, NATS_RETRY_MS, 0);
        return;
    }
    p->work_busy = 1;
}

static void nats_on_retry_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    if ((p->connected && !p->stream_ok) || (!p->connected && p->lost_locally))
        nats_stream_check_start(p);
}

/* --- the loop side of xq --- */

static void nats_on_event_msg(struct nats_broker *p, int64_t subid, natsMsg *nm)
{
    struct map_node *n = map_get(&p->subs, (const char *)&subid, sizeof(subid));
    struct nats_subref *ref = n != NULL ? map_entry(n, struct nats_subref, node) : NULL;
    const char *subject = natsMsg_GetSubject(nm);
    size_t ilen = strlen(p->inbox);
    if (p->closing || (ref == NULL && subid != p->rsub_id)) {
        /* its socket or topic left after the server sent this: a stored message goes
         * back at once (a broadcast is simply not delivered) */
        nats_msg_reply(p, nm, "-NAK");
    } else if (ref != NULL && ref->ns != NULL) {
        nats_on_pull_msg(p, ref->ns, nm); /* takes nm */
        return;
    } else if (ref != NULL) {
        nats_on_topic_msg(p, ref->t, nm);
    } else if (strncmp(subject, p->inbox, ilen) == 0 && strncmp(subject + ilen, ".r.", 3) == 0) {
        nats_on_reply_msg(p, nm, subject + ilen + 3);
    }
    natsMsg_Destroy(nm);
}

static void nats_on_async(uv_async_t *h)
{
    struct nats_broker *p = h->data;
    struct nats_ev *evs;
    size_t n, cap;
    struct nats_done *d;
    int subs_left, closed;
    uint64_t lost;
    uv_mutex_lock(&p->xq.lock);
    evs = p->xq.evs; /* swap buffers: nats threads fill the other one meanwhile */
    n = p->xq.n;
    cap = p->xq.cap;
    p->xq.evs = p->batch;
    p->xq.cap = p->batch_cap;
    p->xq.n = 0;
    lost = p->xq.lost;
    p->xq.lost = 0;
    uv_mutex_unlock(&p->xq.lock);
    p->batch = evs;
    p->batch_cap = cap;
    if (lost > 0) {
        p->b->errors += lost;
        log_warn("event=nats_events_lost count=%llu", (unsigned long long)lost);
    }
    for (size_t i = 0; i < n; i++) {
        switch (evs[i].kind) {
        case NATS_EV_MSG:
            nats_on_event_msg(p, evs[i].subid, evs[i].msg);
            break;
        case NATS_EV_CONNECTED:
            if (!p->closing)
                nats_on_connected(p);
            break;
        case NATS_EV_DISCONNECTED:
            if (!p->closing && (p->connected || p->lost_locally || p->cleanup_pending))
                nats_on_disconnected(p, 1);
            break;
        case NATS_EV_CLOSED:
            p->connected = 0;
            break;
        case NATS_EV_ERROR:
            p->b->errors++;
            log_warn("event=nats_async_error err=\"%s\"", natsStatus_GetText(evs[i].err));
            break;
        }
    }
    if (p->cleanup_pending && !p->closing) {
        p->cleanup_pending = 0;
        nats_on_disconnected(p, 0);
    }
    /* Deferred push/publish callbacks queued before this pass (one queued by a callback
     * waits for the next pass, so this never spins). */
    if (!p->closing && (d = p->done) != NULL) {
        p->done = p->done_tail = NULL;
        while (d != NULL) {
            struct nats_done *next = d->next;
            if (p->closing) { /* a callback closed the broker: the rest run at its end */
                d->next = p->done;
                p->done = d;
                if (p->done_tail == NULL)
                    for (p->done_tail = d; p->done_tail->next != NULL;)
                        p->done_tail = p->done_tail->next;
                break;
            }
            d->cb(d->arg, d->status);
            free(d);
            d = next;
        }
    }
    if (!p->closing)
        return;
    uv_mutex_lock(&p->xq.lock);
    subs_left = p->xq.live_subs;
    closed = p->xq.closed;
    uv_mutex_unlock(&p->xq.lock);
    if (closed && subs_left == 0)
        nats_close_step(p);
}

/* --- broker_ops --- */

static void nats_on_handle_closed(uv_handle_t *h);

static void nats_opts_set(struct nats_broker *p, const struct config *cfg, natsStatus *sp)
{
    natsOptions *o = p->opts;
    natsStatus s = natsOptions_SetURL(o, cfg->nats_url); /* "nats://a:1,nats://b:2" works */
    if (s == NATS_OK)
        s = natsOptions_SetName(o, "wsgate");
    if (s == NATS_OK && cfg->nats_token[0] != '\0')
        s = natsOptions_SetToken(o, cfg->nats_token);
    if (s == NATS_OK && cfg->nats_creds[0] != '\0')
        s = natsOptions_SetUserCredentialsFromFiles(o, cfg->nats_creds, NULL);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, (int64_t)cfg->nats_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1); /* forever: clients stay, we come back */
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, NATS_RECONNECT_WAIT_MS);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(o, NATS_PING_MS);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, NATS_PINGS_OUT);
    if (s == NATS_OK)
        s = natsOptions_UseGlobalMessageDelivery(o, true); /* no thread per subscription */
    if (s == NATS_OK) /* batch writes through the flusher thread (see the file header) */
        s = natsOptions_SetSendAsap(o, false);
    if (s == NATS_OK) /* a stalled server never blocks the loop in write() for longer */
        s = natsOptions_SetWriteDeadline(o, (int64_t)cfg->nats_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetRetryOnFailedConnect(o, true, nats_on_connected_thread_cb, &p->xq);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(o, nats_on_connected_thread_cb, &p->xq);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, nats_on_disconnected_thread_cb, &p->xq);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(o, nats_on_closed_thread_cb, &p->xq);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, nats_on_error_thread_cb, &p->xq);
    *sp = s;
}

/* The URL without "user:pass@" / "token@", for logs. */
static void nats_url_redact(const char *url, char *out, size_t len)
{
    size_t o = 0;
    const char *at;
    while (*url != '\0' && o + 1 < len) {
        const char *sep = strstr(url, "://");
        const char *end = strchr(url, ',');
        if (end == NULL)
            end = url + strlen(url);
        at = memchr(url, '@', (size_t)(end - url));
        if (sep != NULL && sep < end && at != NULL) {
            size_t k = (size_t)(sep + 3 - url);
            o +=
                (size_t)snprintf(out + o, len - o, "%.*s***%.*s", (int)k, url, (int)(end - at), at);
        } else {
            o += (size_t)snprintf(out + o, len - o, "%.*s", (int)(end - url), url);
        }
        if (o >= len)
            o = len - 1;
        url = *end == ',' ? end + 1 : end;
        if (*url != '\0' && o + 1 < len)
            out[o++] = ',';
    }
    out[o < len ? o : len - 1] = '\0';
}

static void nats_free(struct nats_broker *p)
{
    for (size_t i = 0; i < p->xq.n; i++)
        if (p->xq.evs[i].msg != NULL)
            natsMsg_Destroy(p->xq.evs[i].msg);
    free(p->xq.evs);
    free(p->batch);
    free(p->grave);
    uv_mutex_destroy(&p->xq.lock);
    uv_cond_destroy(&p->xq.cond);
    map_free(&p->sessions);
    map_free(&p->reqs);
    map_free(&p->topics);
    map_free(&p->subs);
    natsOptions_Destroy(p->opts);
    free(p);
}

static void nats_on_open_failed_closed(uv_handle_t *h)
{
    struct nats_broker *p = h->data;
    if (--p->open_handles == 0)
        nats_free(p);
}

static int nats_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    struct nats_broker *p = calloc(1, sizeof(*p));
    natsInbox *inbox = NULL;
    natsStatus s;
    char url[CFG_STR_MAX + 16];
    int rc;
    if (p == NULL)
        return UV_ENOMEM;
    p->b = b;
    p->cfg = cfg;
    map_init(&p->sessions);
    map_init(&p->reqs);
    map_init(&p->topics);
    map_init(&p->subs);
    p->window = cfg->max_inflight > 0 ? cfg->max_inflight : 1;
    p->pull_ms = nats_min(cfg->nats_inactive_ms / 2, NATS_PULL_MAX_MS);
    if (p->pull_ms < NATS_PULL_MIN_MS)
        p->pull_ms = NATS_PULL_MIN_MS;
    p->wpi_ms = cfg->nats_ack_wait_ms / 2 > 100 ? cfg->nats_ack_wait_ms / 2 : 100;
    snprintf(p->stream_subject, sizeof(p->stream_subject), "%s.recv.>", cfg->prefix);
    /* The stream name goes into API subjects and JSON: the server's own rule, stricter. */
    rc = cfg->nats_stream[0] == '\0' ? UV_EINVAL : 0;
    for (const char *c = cfg->nats_stream; *c != '\0' && rc == 0; c++)
        if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == '-'))
            rc = UV_EINVAL;
    if (rc < 0) {
        log_error("event=nats_config_failed key=nats.stream reason=\"use [A-Za-z0-9_-]+\"");
        free(p);
        return rc;
    }
    if ((rc = uv_mutex_init(&p->xq.lock)) < 0) {
        free(p);
        return rc;
    }
    if ((rc = uv_cond_init(&p->xq.cond)) < 0) {
        uv_mutex_destroy(&p->xq.lock);
        free(p);
        return rc;
    }
    p->xq.async = &p->async;
    /* None of these fails on Unix (libuv 1.44); from here on p is freed via the handles. */
    uv_async_init(loop, &p->async, nats_on_async);
    uv_timer_init(loop, &p->req_timer);
    uv_timer_init(loop, &p->retry_timer);
    p->async.data = p->req_timer.data = p->retry_timer.data = p;
    p->open_handles = 3;
    nats_url_redact(cfg->nats_url, url, sizeof(url));

    s = natsInbox_Create(&inbox);
    if (s == NATS_OK) {
        snprintf(p->inbox, sizeof(p->inbox), "%s", (const char *)inbox);
        natsInbox_Destroy(inbox);
        s = natsOptions_Create(&p->opts);
    }
    if (s == NATS_OK)
        nats_opts_set(p, cfg, &s);
    if (s != NATS_OK) {
        log_error("event=nats_config_failed url=%s err=\"%s\" detail=\"%s\"", url,
                  natsStatus_GetText(s), nats_GetLastError(NULL));
        rc = UV_EINVAL;
        goto fail;
    }
    /* Synchronous: ~1 ms on a LAN; with the server down it returns at once
     * (NATS_NOT_YET_CONNECTED) and nats.c keeps trying in the background. */
    s = natsConnection_Connect(&p->nc, p->opts);
    if (s == NATS_OK) {
        p->connected = 1;
        /* The loop does not serve yet, so this one blocking check is fine here: an
         * incompatible stream stops the gateway at start with a clear message. */
        rc = nats_stream_ensure(p->nc, cfg, p->stream_subject, p->work_why, sizeof(p->work_why));
        if (rc == UV_EINVAL && strstr(p->work_why, "JetStream") != NULL) {
            log_error("event=nats_jetstream_disabled url=%s reason=\"%s\"", url, p->work_why);
            goto fail;
        }
        if (rc == UV_EINVAL) {
            log_error("event=nats_stream_incompatible stream=%s url=%s reason=\"%s\" "
                      "hint=\"delete or fix that stream, or set [nats] stream to another name\"",
                      cfg->nats_stream, url, p->work_why);
            goto fail;
        }
        if (rc < 0) {
            log_warn("event=nats_stream_check_failed stream=%s err=%s reason=\"%s\"",
                     cfg->nats_stream, uv_err_name(rc), p->work_why);
            uv_timer_start(&p->retry_timer, nats_on_retry_timer, NATS_RETRY_MS, 0);
        } else {
            p->stream_ok = 1;
        }
    } else if (s == NATS_NOT_YET_CONNECTED) {
        log_warn("event=nats_unreachable url=%s retrying=yes", url);
    } else {
        log_error("event=nats_connect_failed url=%s err=\"%s\" detail=\"%s\"", url,
                  natsStatus_GetText(s), nats_GetLastError(NULL));
        rc = nats_err(s) == UV_EIO ? UV_ECONNREFUSED : nats_err(s);
        p->nc = NULL;
        goto fail;
    }
    {
        char subject[96];
        snprintf(subject, sizeof(subject), "%s.r.*", p->inbox);
        if ((rc = nats_subscribe(p, subject, &p->rsub, NULL)) == 0)
            p->rsub_id = natsSubscription_GetID(p->rsub);
        if (rc < 0) {
            log_error("event=nats_subscribe_failed subject=%s err=%s", subject, uv_err_name(rc));
            goto fail;
        }
    }
    b->priv = p;
    log_info("event=broker_open type=nats url=%s stream=%s prefix=%s connected=%d "
             "pull_ms=%llu ack_wait_ms=%llu inactive_ms=%llu window=%u",
             url, cfg->nats_stream, cfg->prefix, p->connected, (unsigned long long)p->pull_ms,
             (unsigned long long)cfg->nats_ack_wait_ms, (unsigned long long)cfg->nats_inactive_ms,
             p->window);
    return 0;
fail:
    if (p->nc != NULL) {
        /* Wait for the closed callback so no nats thread can touch p after it is freed. */
        nats_unsubscribe(p, &p->rsub, NULL);
        natsConnection_Close(p->nc);
        uv_mutex_lock(&p->xq.lock);
        while (!p->xq.closed || p->xq.live_subs > 0)
            if (uv_cond_timedwait(&p->xq.cond, &p->xq.lock, 5000000000ULL) != 0)
                break;
        uv_mutex_unlock(&p->xq.lock);
        nats_grave_flush(p, 0);
        natsConnection_Destroy(p->nc);
        p->nc = NULL;
    }
    uv_close((uv_handle_t *)&p->async, nats_on_open_failed_closed);
    uv_close((uv_handle_t *)&p->req_timer, nats_on_open_failed_closed);
    uv_close((uv_handle_t *)&p->retry_timer, nats_on_open_failed_closed);
    return rc < 0 ? rc : UV_EINVAL;
}

static int nats_ready(struct broker *b)
{
    struct nats_broker *p = b->priv;
    return p != NULL && !p->closing && p->connected && p->stream_ok;
}

static int nats_attach(struct broker *b, struct session *s)
{
    struct nats_broker *p = b->priv;
    struct nats_sess *ns;
    char subject[96];
    int rc;
    s->bpriv = NULL; /* a detach after a failed attach is a no-op */
    if (p == NULL || p->closing)
        return UV_ECANCELED;
    if (!nats_ready(b))
        return UV_EAGAIN; /* 503: clients retry; nothing is held for them */
    if ((ns = calloc(1, sizeof(*ns))) == NULL)
        return UV_ENOMEM;
    if ((rc = nats_subject(p, "recv", s->key, ns->subject)) < 0) {
        free(ns);
        return rc;
    }
    nats_consumer_name(s->key, s->key_len, ns->consumer);
    if (s->ntopics > 0 && (ns->tsubs = calloc(s->ntopics, sizeof(*ns->tsubs))) == NULL) {
        free(ns);
        return UV_ENOMEM;
    }
    ns->ntsubs = s->ntopics;
    ns->p = p;
    ns->s = s;
    ns->sid = ++p->next_sid;
    ns->node.key = (const char *)&ns->sid;
    ns->node.key_len = sizeof(ns->sid);
    uv_timer_init(p->b->loop, &ns->timer); /* cannot fail on Unix */
    ns->timer.data = ns;
    if ((rc = map_put(&p->sessions, &ns->node)) < 0) {
        ns->s = NULL;
        uv_close((uv_handle_t *)&ns->timer, nats_sess_on_closed);
        return rc;
    }
    s->bpriv = ns;
    /* Order on the one connection is the server's order: these SUBs are processed before
     * the consumer create below, and the 101 waits for that create's reply, so every
     * broadcast after the 101 finds its subscription. */
    snprintf(subject, sizeof(subject), "%s.p.%" PRIu64, p->inbox, ns->sid);
    ns->ref.ns = ns;
    if ((rc = nats_subscribe(p, subject, &ns->sub, &ns->ref)) < 0)
        goto fail;
    for (uint16_t i = 0; i < s->ntopics; i++) {
        const char *name = s->topics[i];
        char tsubject[NATS_NAME_SUBJ];
        struct map_node *n;
        struct nats_topic *t;
        int dup = 0;
        if ((rc = nats_subject(p, "topic", name, tsubject)) < 0)
            goto fail;
        for (uint16_t j = 0; j < i && !dup; j++) /* ?topics=a,a: subscribe once */
            dup = strcmp(s->topics[j], name) == 0;
        if (dup)
            continue;
        if ((n = map_get(&p->topics, name, strlen(name))) != NULL) {
            t = map_entry(n, struct nats_topic, node);
        } else {
            size_t len = strlen(name);
            if ((t = calloc(1, sizeof(*t) + len + 1)) == NULL) {
                rc = UV_ENOMEM;
                goto fail;
            }
            memcpy(t->name, name, len + 1);
            t->node.key = t->name;
            t->node.key_len = (uint32_t)len;
            t->ref.t = t;
            if ((rc = nats_subscribe(p, tsubject, &t->sub, &t->ref)) < 0 ||
                (rc = map_put(&p->topics, &t->node)) < 0) {
                nats_unsubscribe(p, &t->sub, &t->ref);
                free(t);
                goto fail;
            }
        }
        ns->tsubs[i].t = t;
        ns->tsubs[i].ns = ns;
        ns->tsubs[i].prev = NULL;
        ns->tsubs[i].next = t->subs;
        if (t->subs != NULL)
            t->subs->prev = &ns->tsubs[i];
        t->subs = &ns->tsubs[i];
    }
    nats_sess_queue(p, ns, 0, 0);
    return 0;
fail:
    nats_sess_free(p, ns);
    return rc;
}

static void nats_detach(struct broker *b, struct session *s)
{
    struct nats_broker *p = b->priv;
    struct nats_sess *ns = s->bpriv;
    if (p == NULL || ns == NULL)
        return;            /* never attached, attach failed, or the broker already let it go */
    nats_sess_free(p, ns); /* a create in flight finds no session and is ignored */
}

static int nats_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb, void *arg)
{
    struct nats_broker *p = b->priv;
    char subject[NATS_NAME_SUBJ];
    struct nats_req *r;
    int rc;
    if (p == NULL || p->closing)
        return UV_ECANCELED;
    if (!p->connected || !p->stream_ok)
        return UV_ENOTCONN; /* fail fast: 503, nothing buffered behind a dead connection */
    if ((rc = nats_subject(p, "recv", key, subject)) < 0)
        return rc;
    if ((r = nats_req_new(p, NATS_REQ_PUSH)) == NULL)
        return UV_ENOMEM;
    r->cb = cb;
    r->arg = arg;
    /* JetStream publish = a core publish with a reply subject: the stream's PubAck (or
     * error) comes back on it, and only then does cb run (202 after the ack). */
    if ((rc = nats_req_send(p, r, subject, m->data, m->len)) < 0) {
        free(r);
        if (rc != UV_E2BIG)
            p->b->errors++;
        return rc;
    }
    return 0;
}

/* A core publish (no stream, at-most-once): cb(0) once it is handed to nats.c. */
static int nats_core_publish(struct nats_broker *p, const char *kind, const char *name,
                             struct msg *m, broker_push_cb cb, void *arg)
{
    char subject[NATS_NAME_SUBJ];
    natsStatus s;
    int rc;
    if (p == NULL || p->closing)
        return UV_ECANCELED;
    if (!p->connected)
        return UV_ENOTCONN;
    if ((rc = nats_subject(p, kind, name, subject)) < 0)
        return rc;
    if (m->len > INT32_MAX)
        return UV_E2BIG;
    s = natsConnection_Publish(p->nc, subject, m->data, (int)m->len);
    if (s != NATS_OK) {
        if (s != NATS_MAX_PAYLOAD)
            p->b->errors++;
        nats_conn_check(p, s);
        return nats_err(s);
    }
    return nats_done_add(p, cb, arg, 0);
}

static int nats_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb,
                        void *arg)
{
    return nats_core_publish(b->priv, "topic", topic, m, cb, arg);
}

static int nats_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb,
                         void *arg)
{
    return nats_core_publish(b->priv, "send", s->key, m, cb, arg);
}

static void nats_ack(struct broker *b, struct session *s, uint64_t msg_id)
{
    struct nats_broker *p = b->priv;
    struct nats_sess *ns = s->bpriv;
    natsMsg *nm;
    if (p == NULL || ns == NULL || (nm = nats_infl_take(ns, msg_id)) == NULL)
        return;
    nats_msg_reply(p, nm, "+ACK");
    natsMsg_Destroy(nm);
    nats_sess_pull(p, ns, 0);
}

/* --- close --- */

static void nats_on_handle_closed(uv_handle_t *h)
{
    struct nats_broker *p = h->data;
    struct broker *b = p->b;
    broker_close_cb cb = p->close_cb;
    struct nats_done *d;
    if (--p->open_handles > 0)
        return;
    /* Accepted pushes and publishes still get their one callback. */
    while ((d = p->done) != NULL) {
        p->done = d->next;
        d->cb(d->arg, d->status);
        free(d);
    }
    b->priv = NULL;
    nats_free(p);
    if (cb != NULL)
        cb(b);
}

/* Advance the close: first natsConnection_Close on the thread pool (it flushes our NAKs
 * and joins nats.c's connection threads), then, once the closed callback and every
 * subscription's completion callback have run (nothing on a nats thread can reach p any
 * more), destroy the connection and close our handles. */
static void nats_close_step(struct nats_broker *p)
{
    int subs_left, closed, rc;
    if (p->work_busy || p->handles_closing)
        return;
    if (p->nc != NULL && !p->work_close) {
        p->work_close = 1;
        p->work.data = p;
        if ((rc = uv_queue_work(p->b->loop, &p->work, nats_on_stream_work, nats_on_stream_done)) ==
            0) {
            p->work_busy = 1;
            return;
        }
        natsConnection_Close(p->nc); /* no thread pool: block here, it is shutdown */
    }
    uv_mutex_lock(&p->xq.lock);
    subs_left = p->xq.live_subs;
    closed = p->xq.closed || p->nc == NULL;
    uv_mutex_unlock(&p->xq.lock);
    if (!closed || subs_left > 0)
        return; /* nats_on_async calls again when the last callback has run */
    nats_grave_flush(p, 0);
    natsConnection_Destroy(p->nc);
    p->nc = NULL;
    p->handles_closing = 1;
    uv_close((uv_handle_t *)&p->async, nats_on_handle_closed);
    uv_close((uv_handle_t *)&p->req_timer, nats_on_handle_closed);
    uv_close((uv_handle_t *)&p->retry_timer, nats_on_handle_closed);
}

/* Sessions still attached are closed with 1001 and let go (their unacked messages are
 * NAKed first); attaches in progress answer 503; pushes waiting for an ack fail with
 * UV_ECANCELED (they may still be stored: at-least-once). */
static void nats_close(struct broker *b, broker_close_cb cb)
{
    struct nats_broker *p = b->priv;
    struct map_iter it;
    struct map_node *n;
    struct nats_req *r;
    if (p == NULL || p->closing)
        return; /* already closing: the first close's cb will run */
    p->closing = 1;
    p->close_cb = cb;
    uv_timer_stop(&p->retry_timer);
    while ((r = p->rhead) != NULL) {
        nats_req_unlink(p, r);
        if (r->kind == NATS_REQ_PUSH)
            (void)nats_done_add(p, r->cb, r->arg, UV_ECANCELED);
        else
            p->api_inflight--;
        free(r);
    }
    uv_timer_stop(&p->req_timer);
    map_iter_init(&it, &p->sessions);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_sess *ns = map_entry(n, struct nats_sess, node);
        struct session *s = ns->s;
        int attached = ns->attached;
        nats_sess_free(p, ns);
        if (attached)
            session_close(s, NATS_CLOSE_CODE);
        else
            session_attached(s, UV_ECANCELED);
    }
    nats_unsubscribe(p, &p->rsub, NULL);
    log_info("event=broker_close type=nats");
    nats_close_step(p);
}

const struct broker_ops broker_nats_ops = {
    .name = "nats",
    .open = nats_open,
    .attach = nats_attach,
    .detach = nats_detach,
    .push = nats_push,
    .publish = nats_publish,
    .upstream = nats_upstream,
    .ack = nats_ack,
    .ready = nats_ready,
    .close = nats_close,
};
