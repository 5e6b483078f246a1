/* nats.c — the NATS JetStream backend (`[broker] type = nats`, DESIGN.md §3-4).
 *
 * What it does: one NATS connection per gateway node, no JetStream consumer per session.
 * At open (and after each reconnect) it creates or verifies the stream ([nats] stream,
 * default WSRECV; an existing stream's max age and per-subject limit are updated to the
 * configuration, nats_stream_limits) capturing
 * `<prefix>.recv.>`: work-queue retention, file storage, max age = [broker] ttl, at most
 * [broker] max_queue messages per subject (DiscardNew per subject: a full session queue
 * answers 429), direct get allowed, and RePublish `<prefix>.recv.>` -> `<prefix>.deliver.>`:
 * once a message is stored, the server publishes a copy on the core subject
 * `<prefix>.deliver.S` with its stream sequence in the Nats-Sequence header. It also
 * creates the stream's one consumer, NATS_ACKER, which exists for its acks. POST /push/S
 * is a JetStream publish to `<prefix>.recv.S` answered only after the server's publish
 * ack; services may publish there directly.
 *
 * Delivery. A node with sockets of key S holds one queue subscription on
 * `<prefix>.deliver.S` (queue group = the stream name), so each stored message reaches one
 * node holding S, which gives it to one of its sockets of S (struct nats_key, shared by
 * them). The message stays in the stream until the core reports its frame written; then
 * the node acks it on NATS_ACKER (a publish to `$JS.ACK.<stream>.<acker>.1.<seq>...`,
 * built from the sequence), which removes it from the work-queue stream: acked after the
 * write. Anything a live copy cannot carry (the session is catching up, its sockets'
 * windows are full, the copy came while the node was disconnected) stays in the stream
 * and is read back in order with DIRECT.GET `next_by_subj` from a per-key cursor: on
 * attach (offline buffering), when a window frees (backpressure: nothing is taken that
 * cannot be written), after a reconnect. A socket that leaves with unwritten messages
 * lowers the cursor to them for its key's other sockets here; if it was the node's last
 * socket of S, the node publishes an empty "nudge" on `<prefix>.deliver.S`, which makes
 * another node holding S read them back at once. A killed node leaves its unwritten
 * messages in the stream: the next attach of S reads them.
 *
 * Leaving cleanly (settle): a socket that leaves with a close handshake has its last ack
 * sent again with a reply subject; the server answers after processing it, and it
 * processes the consumer's acks in order, so the reply confirms every removal for that
 * socket. The core answers the client's close only then, so its reconnect, on any node,
 * cannot be handed a message it already has.
 *
 * Acks ahead. nats-server 2.9 and 2.10 remove a work-queue message on an ack for a
 * sequence the consumer has not handed out; 2.11+ ignore such acks. [nats] consumer_pull
 * = auto probes this once (nats_probe_acks_ahead) and, where needed (or with `always`),
 * keeps a pull request outstanding on NATS_ACKER so that it hands out (headers only,
 * dropped on arrival) every message before its ack comes.
 *
 * Why not a consumer per session: nats-server 2.9 visits every consumer of a stream on
 * each message removal, and per-session consumers made the server's CPU per message grow
 * with the number of online sessions (measured 37 us at 10, 132 us at 1000, 298 us at
 * 3000; README). Here the server's cost per message is one stored publish, one
 * republished copy and one ack, whatever the number of sessions, and an idle session
 * costs one subscription and nothing per second.
 *
 * Barrier: the 101 waits for the reply to a DIRECT.GET sent after the socket's
 * subscriptions on the same connection, so every message stored after the 101 is either
 * republished to us or found by that read.
 *
 * Threads: nats.c runs its own (timers, async callbacks, GC, one message-delivery thread
 * shared by all subscriptions, the socket reader, the flusher: constant, not per session).
 * This file does NOT use the libuv adapter: with it the loop would also parse the NATS
 * socket, and every blocking nats.c call on the loop would deadlock until its timeout
 * (DEPS.md); without it blocking calls (stream setup in open, close) are plain round trips.
 * nats-thread callbacks only append to one mutex-protected event queue (struct nats_xq) and
 * uv_async_send; every session_*, broker callback and map access happens on the loop
 * thread. That queue is bounded in bytes for messages anyone can publish (deliver and
 * topic subjects): over the bound they are dropped on the nats thread and remembered
 * per subscription, so a key reads the stream again (nothing stored is lost) and a
 * broadcast is counted as dropped (nats_xq_push, nats_drops_apply). Blocking calls after open run on the libuv thread pool (uv_queue_work).
 * Publishes, acks and reads from the loop only append to nats.c's write buffer (no
 * SendAsap): the flusher thread writes it about 1 ms after the first append, so a busy node
 * makes one write per millisecond instead of one per message (measured: ~20% less gateway
 * CPU per message, up to 1 ms more push latency). A write has a deadline of
 * [nats] timeout; a server that stops reading can hold the connection lock (and so a
 * publish on the loop) at most that long, then counts as lost. A server that goes silent
 * counts as lost when a request waited [nats] timeout with nothing read meanwhile
 * (nats_on_req_timer), or when nats.c's PINGs (every timeout / 2) go unanswered.
 *
 * Does NOT: parse or rewrap payloads, store broadcasts or client frames, remove anything
 * before its frame is written, or create a consumer per session. */
#include <inttypes.h>
#include <nats/nats.h>
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

#define NATS_CLOSE_CODE 1001         /* sockets still attached when the broker closes */
#define NATS_RETRY_MS 1000           /* retry after a failed read or stream check */
#define NATS_RECONNECT_WAIT_MS 250   /* between reconnect attempts to the same server */
#define NATS_PINGS_OUT 2 /* dead-server detection: nats.c pings every [nats] timeout / 2 and
                          * drops the connection when this many PINGs go unanswered */
#define NATS_NAME_SUBJ 208           /* "<prefix>.<kind>.<key>": 63 + 8 + 128 + NUL fits */
#define NATS_SUBJ_MAX 400            /* API subjects: "$JS.API....<stream>" */
#define NATS_STATUS_HDR "Status"     /* nats.c's header for a status line (msg.h STATUS_HDR) */
#define NATS_DESC_HDR "Description"  /* ... and for its text */
#define NATS_SEQ_HDR "Nats-Sequence" /* stream sequence on republished and direct-get msgs */
#define NATS_LAST_HDR "Nats-Last-Sequence" /* republished: the key's previous message then */
#define NATS_ACKER "wsgate"                /* our one consumer on the stream */
#define NATS_PULL_BATCH 1024               /* copies asked of NATS_ACKER per pull request */
#define NATS_PULL_EXPIRES_MS 30000         /* its expiry (a 408 then asks for a new one) */
#define NATS_PULL_MARGIN_MS 2000           /* no 408 by expiry + this: the request was lost */
#define NATS_ACKED_RING 32      /* recently acked sequences remembered per key */
#define NATS_EV_COST 256        /* bytes counted per queued message besides its payload */
#define NATS_DROP_SLOTS 64      /* subscriptions whose drops are remembered per pass */
#define NATS_QUEUE_FACTOR 4     /* the hand-over bound: this many times the larger of
                                 * max_message_size and max_send_buffer (nats_open) */

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
    size_t ndrops;       /* entries in drops */
    uint64_t drops_more; /* dropped on subscriptions that found no slot (then: rescan) */
};

/* --- loop-side state --- */

enum nats_req_kind {
    NATS_REQ_PUSH,  /* a JetStream publish waiting for its ack */
    NATS_REQ_FETCH, /* a DIRECT.GET next_by_subj for one key */
    NATS_REQ_SETTLE, /* an ack sent again with a reply subject: the settle barrier */
};

struct nats_settle;

/* One request whose reply comes to <inbox>.r.<id>. Lives in nats_broker.reqs and in the
 * timeout FIFO (same timeout for all, so FIFO order is deadline order). */
struct nats_req {
    struct map_node node;         /* in reqs; key = the 8 bytes of id */
    uint64_t id;                  /* reply subject suffix */
    enum nats_req_kind kind;      /* what the reply completes */
    broker_push_cb cb;            /* PUSH: the caller's callback */
    void *arg;                    /* borrowed: PUSH: the caller's argument */
    uint64_t kid;                 /* FETCH: the nats_key it is for (may be gone) */
    uint64_t seq;                 /* FETCH: the cursor it read from */
    uint64_t fetch_no;            /* FETCH: the key's fetch counter when it was sent */
    int rescue;                   /* FETCH: a gap rescue read (nats_key_rescue) */
    struct nats_settle *settle;   /* borrowed: SETTLE: what its reply completes; NULL once
                                   * the settle was cancelled (detach) */
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
struct nats_key;

/* What one of our subscriptions is for, found by nats.c's subscription id. */
struct nats_subref {
    struct map_node node; /* in nats_broker.subs; key = the 8 bytes of id */
    int64_t id;           /* natsSubscription_GetID */
    struct nats_key *k;   /* borrowed: the key whose republished messages come here, or NULL */
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

/* A stored message handed to a socket of its key and not yet acked (removed). */
struct nats_pend {
    uint64_t seq;         /* stream sequence */
    uint64_t id;          /* msg_id given to session_deliver; 0 once written */
    struct nats_sess *ns; /* borrowed: the socket it went to; NULL once written (its ack
                           * could not be sent: nats_resume sends it) */
    uint32_t epoch;       /* nats_broker.epoch when it was read (nats_seq_reset) */
};

/* The backend's state for one socket (s->bpriv). Freed by detach (or a failed attach). */
struct nats_sess {
    struct session *s;               /* borrowed: the core's session */
    struct nats_key *k;              /* borrowed: its key's shared state */
    struct nats_sess *kprev, *knext; /* borrowed: the key's socket list */
    uint64_t next_id;                /* last msg_id given out */
    uint64_t need_fetch;             /* the 101 waits for the reply of this key fetch */
    uint32_t live;                   /* messages delivered and not yet written: the window */
    int attached;                    /* session_attached(s, 0) has run */
    int refused;                     /* session_deliver refused: s is closing */
    uint16_t ntsubs;                 /* entries in tsubs (= s->ntopics) */
    struct nats_tsub *tsubs;         /* owned: one per topic of s */
    uint64_t last_ack;               /* stream sequence of the last ack given for s, or 0 */
    struct nats_settle *settle;      /* borrowed: its settle in progress (in the broker's
                                      * lists), or NULL */
};

/* A settle in progress (broker_ops.settle): cb(s) runs when the barrier's reply comes
 * (or it fails), or from the async handler when there is nothing to confirm. */
struct nats_settle {
    struct nats_settle *prev, *next; /* borrowed: neighbours in settle_due or settle_wait */
    struct session *s;               /* borrowed: the leaving session */
    struct nats_sess *ns;            /* borrowed: s's state here, or NULL (not ours) */
    broker_settle_cb cb;             /* the core's callback */
    uint64_t req;                    /* id of the barrier request, 0 when due now */
};

/* One session key with sockets on this node: what they share. */
struct nats_key {
    struct map_node node;         /* in keys; key = name */
    struct map_node idnode;       /* in keys_by_id; key = the 8 bytes of kid */
    uint64_t kid;                 /* unique per broker: requests find the key by it */
    natsSubscription *sub;        /* owned: queue sub on <prefix>.deliver.<name> */
    struct nats_subref ref;       /* in subs while sub is open */
    struct nats_sess *socks;      /* borrowed: this node's sockets of the key */
    struct nats_sess *rr;         /* borrowed: the socket to try first (round robin) */
    uint64_t next_seq;            /* cursor: read from here; below it nothing waits for us */
    uint64_t fetch_sent;          /* reads sent so far */
    int fetching;                 /* a read is in flight */
    int dirty;                    /* messages may wait in the stream at or after next_seq */
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

struct nats_broker {
    struct broker *b;                 /* borrowed: b->priv points here */
    const struct config *cfg;         /* borrowed: outlives the broker */
    struct nats_xq xq;                /* embedded: the nats-thread -> loop queue */
    uv_async_t async;                 /* embedded: wakes the loop for xq and deferred work */
    uv_timer_t req_timer;             /* embedded: request timeouts; active only with requests */
    uv_timer_t retry_timer;           /* embedded: stream check retry */
    uv_timer_t key_timer;             /* embedded: retries of failed reads (retry list) */
    uv_work_t work;                   /* embedded: the blocking call running on the thread pool */
    natsOptions *opts;                /* owned: destroyed at close */
    natsConnection *nc;               /* owned: destroyed once its closed callback ran */
    natsSubscription *rsub;           /* owned: core sub on <inbox>.r.* */
    int64_t rsub_id;                  /* its subscription id */
    char inbox[64];                   /* "_INBOX.<nuid>": this node's reply subjects */
    char stream_subject[96];          /* <prefix>.recv.> */
    char deliver_subject[96];         /* <prefix>.deliver.> (the republish destination) */
    char get_subject[NATS_SUBJ_MAX];  /* $JS.API.DIRECT.GET.<stream> */
    char pull_subject[NATS_SUBJ_MAX]; /* $JS.API.CONSUMER.MSG.NEXT.<stream>.<NATS_ACKER> */
    char ack_prefix[NATS_SUBJ_MAX];   /* $JS.ACK.<stream>.<NATS_ACKER>.1. */
    natsSubscription *asub;           /* owned: core sub on <inbox>.a (NATS_ACKER's copies) */
    int64_t asub_id;                  /* its subscription id */
    uv_timer_t pull_timer;            /* embedded: NATS_ACKER's pull request deadline */
    uint32_t pull_out;                /* copies the outstanding pull requests may still bring */
    int acks_ahead;                   /* the server removes on an ack ahead of NATS_ACKER's
                                       * delivery (no pulling needed); -1 not probed yet.
                                       * Written by the stream check (thread pool) only while
                                       * work_busy, read by the loop only when it is not. */
    int reprobe;                      /* reconnected: probe again with the next stream check */
    uint32_t epoch;                   /* connections so far (pend entries carry theirs) */
    uint64_t max_seq;                 /* highest stream sequence seen */
    uint64_t seq_before;              /* max_seq when the connection was last lost */
    uint64_t work_last_seq;           /* the stream's last sequence, from the stream check */
    struct map keys;                  /* name -> struct nats_key (owned) */
    struct map keys_by_id;            /* kid -> the same keys */
    struct map reqs;                  /* id -> struct nats_req (owned) */
    struct map topics;                /* name -> struct nats_topic (owned) */
    struct map subs;                  /* subscription id -> struct nats_subref (in key / topic) */
    struct nats_req *rhead;           /* borrowed: oldest request (timeout FIFO) */
    struct nats_req *rtail;           /* borrowed: newest request */
    uint64_t *retry;                  /* owned: kids of keys whose read failed, to retry */
    size_t nretry;                    /* entries in retry */
    size_t retry_cap;                 /* slots in retry */
    struct nats_done *done;           /* owned: callbacks to run from the async handler */
    struct nats_done *done_tail;      /* borrowed: last of done */
    natsSubscription **grave;         /* owned: subscriptions to drop once connected (or closed) */
    size_t ngrave;                    /* entries in grave */
    size_t grave_cap;                 /* slots in grave */
    struct nats_ev *batch;            /* owned: the loop's half of the double buffer */
    struct nats_settle *settle_due;   /* owned: settles to complete from the async handler */
    struct nats_settle *settle_wait;  /* owned: settles waiting for their barrier's reply */
    size_t batch_cap;                 /* slots in batch */
    uint64_t next_kid;                /* last kid given out */
    uint64_t next_req;                /* last request id given out */
    uint32_t window;                  /* max_inflight, at least 1 */
    int connected;                    /* last connection event said connected */
    int stream_ok;                    /* the stream was checked since the last (re)connect */
    int closing;                      /* close() was called */
    int work_busy;                    /* work is queued or running */
    int work_close;                   /* the work is natsConnection_Close (else stream check) */
    int work_rc;                      /* result of the stream check */
    int work_again;                   /* reconnected while a check ran: check again */
    int open_handles;                 /* async + 4 timers not yet closed */
    int handles_closing;              /* uv_close was called on them */
    int check_failed;                 /* the last stream check failed (log the first only) */
    int lost_locally;                 /* a write failed: disconnected before nats.c said so */
    int cleanup_pending;              /* ... and nats_on_disconnected has yet to run for it */
    const char *lost_why;             /* static: why it was lost locally, for the log */
    uint64_t ovl_dropped;             /* broadcasts dropped at the hand-over, not yet logged */
    uint64_t ovl_held;                /* live copies dropped there (read back), not yet logged */
    uint64_t ovl_logged;              /* uv_now() ms of the last event=nats_overload */
    uint64_t last_rx;                 /* uv_now() ms when the loop last took a message */
    broker_close_cb close_cb;         /* the owner's close callback */
    char work_why[256];               /* why the stream check failed */
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
    case NATS_INSUFFICIENT_BUFFER: /* reconnecting: no reconnect buffer (nats_opts_set) */
        return UV_ENOTCONN;
    default:
        return UV_EIO;
    }
}

static uint64_t nats_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
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

/* Remember that a live message of subid was dropped (lock held). */
static void nats_xq_drop(struct nats_xq *xq, int64_t subid, natsMsg *msg)
{
    const char *v = NULL;
    uint64_t seq = 0;
    size_t i;
    if (natsMsgHeader_Get(msg, NATS_SEQ_HDR, &v) == NATS_OK && v != NULL)
        seq = strtoull(v, NULL, 10);
    for (i = 0; i < xq->ndrops && xq->drops[i].subid != subid; i++)
        ;
    if (i == xq->ndrops && i == NATS_DROP_SLOTS) {
        xq->drops_more++;
        return;
    }
    if (i == xq->ndrops) {
        xq->drops[i] = (struct nats_drop){.subid = subid, .seq = seq, .count = 0};
        xq->ndrops++;
    }
    if (seq < xq->drops[i].seq)
        xq->drops[i].seq = seq;
    xq->drops[i].count++;
}

/* Append one event and wake the loop, both under the lock: the loop frees the broker only
 * after it has seen the last event under the same lock, so nothing here runs after that.
 * live: a message on a key's deliver subject or a topic, which anyone may publish: over
 * xq->max_bytes queued it is dropped (and remembered: nats_xq_drop) rather than queued,
 * so a publisher faster than the loop cannot grow our memory. A dropped stored message
 * stays in the stream and is read back through the key's cursor; a dropped broadcast is
 * lost (at-most-once). Replies to our own requests and the acker's copies are bounded by
 * what we asked for and always queued. */
static void nats_xq_push(struct nats_xq *xq, enum nats_ev_kind kind, int64_t subid, natsMsg *msg,
                         natsStatus err, int live)
{
    size_t cost = NATS_EV_COST + (msg != NULL ? (size_t)natsMsg_GetDataLength(msg) : 0);
    uv_mutex_lock(&xq->lock);
    if (live && xq->bytes + cost > xq->max_bytes) {
        nats_xq_drop(xq, subid, msg);
        uv_async_send(xq->async);
        uv_mutex_unlock(&xq->lock);
        natsMsg_Destroy(msg);
        return;
    }
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
    xq->bytes += cost;
    uv_async_send(xq->async);
    uv_mutex_unlock(&xq->lock);
}

static void nats_on_msg_thread_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                                  void *closure)
{
    (void)nc;
    /* A message keeps its own subject on some subscriptions (a pulled copy comes as
     * ws.recv.S, not on our inbox): the subscription says what it is for. nats.c
     * never reuses a subscription id on a connection. */
    nats_xq_push(closure, NATS_EV_MSG, natsSubscription_GetID(sub), msg, NATS_OK, 0);
}

/* Same for a key's deliver subject or a topic: bounded (nats_xq_push). */
static void nats_on_live_msg_thread_cb(natsConnection *nc, natsSubscription *sub, natsMsg *msg,
                                       void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_MSG, natsSubscription_GetID(sub), msg, NATS_OK, 1);
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
    nats_xq_push(closure, NATS_EV_CONNECTED, 0, NULL, NATS_OK, 0);
}

static void nats_on_disconnected_thread_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_DISCONNECTED, 0, NULL, NATS_OK, 0);
}

static void nats_on_closed_thread_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_CLOSED, 0, NULL, NATS_OK, 0);
}

static void nats_on_error_thread_cb(natsConnection *nc, natsSubscription *sub, natsStatus err,
                                    void *closure)
{
    (void)nc;
    (void)sub;
    nats_xq_push(closure, NATS_EV_ERROR, 0, NULL, err, 0);
}

static void nats_unsubscribe(struct nats_broker *p, natsSubscription **sub,
                             struct nats_subref *ref);

/* Subscribe subject (in queue group queue unless NULL) with our handler and completion
 * callback; counts live_subs. ref (may be NULL) is filled and put in p->subs so messages
 * find their owner; a subscription with a ref (a key's or a topic's) is live: bounded at
 * the hand-over, and in nats.c's own buffer (a backstop: nats.c drops over it and
 * reports a slow consumer, and every key is read again). */
static int nats_subscribe(struct nats_broker *p, const char *subject, const char *queue,
                          natsSubscription **out, struct nats_subref *ref)
{
    natsSubscription *sub = NULL;
    natsMsgHandler cb = ref != NULL ? nats_on_live_msg_thread_cb : nats_on_msg_thread_cb;
    natsStatus s = queue != NULL
                       ? natsConnection_QueueSubscribe(&sub, p->nc, subject, queue, cb, &p->xq)
                       : natsConnection_Subscribe(&sub, p->nc, subject, cb, &p->xq);
    if (s != NATS_OK)
        return nats_err(s);
    if (ref != NULL)
        (void)natsSubscription_SetPendingLimits(
            sub, 65536, p->xq.max_bytes < INT32_MAX ? (int)p->xq.max_bytes : INT32_MAX);
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

/* Unsubscribe (the server forgets the interest) and drop our reference; the completion
 * callback follows on a nats thread. Messages of it still queued for the loop find no ref
 * and are dropped (a stored message stays in the stream). While disconnected (or
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

/* Create the gateway's one consumer on the stream (NATS_ACKER) or check it: explicit acks,
 * headers-only copies, no limit on pending messages. Its acks are how a written message
 * leaves the work-queue stream (see the file header). Same return convention as below. */
static int nats_acker_ensure(jsCtx *js, const struct config *cfg, const char *subject, char *why,
                             size_t whylen)
{
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, cfg->nats_stream, NATS_ACKER, NULL, &jerr);
    int rc = 0;
    if (s == NATS_OK) {
        jsConsumerConfig *c = ci->Config;
        if (c->FilterSubject == NULL || strcmp(c->FilterSubject, subject) != 0 ||
            c->AckPolicy != js_AckExplicit || !c->HeadersOnly || c->MaxAckPending != -1 ||
            c->AckWait != (int64_t)cfg->nats_ack_wait_ms * 1000000) {
            jsConsumerInfo_Destroy(ci);
            ci = NULL;
            s = NATS_NOT_FOUND; /* settings changed: update it (a durable add updates) */
        }
    }
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        jsConsumerConfig_Init(&cc);
        cc.Durable = NATS_ACKER;
        cc.FilterSubject = subject;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = (int64_t)cfg->nats_ack_wait_ms * 1000000;
        cc.MaxAckPending = -1;
        cc.MaxDeliver = -1;
        cc.HeadersOnly = true;
        cc.MemoryStorage = true;
        jerr = 0;
        s = js_AddConsumer(&ci, js, cfg->nats_stream, &cc, NULL, &jerr);
        if (s != NATS_OK && jerr == 0) {
            snprintf(why, whylen, "consumer %s: %s", NATS_ACKER, natsStatus_GetText(s));
            rc = nats_err(s);
        } else if (s != NATS_OK) {
            snprintf(why, whylen, "consumer %s refused: %s (err_code %d)", NATS_ACKER,
                     nats_GetLastError(NULL), (int)jerr);
            rc = UV_EINVAL;
        }
    } else if (s != NATS_OK) {
        snprintf(why, whylen, "consumer %s info failed: %s", NATS_ACKER, natsStatus_GetText(s));
        rc = nats_err(s);
    }
    jsConsumerInfo_Destroy(ci);
    return rc;
}

/* Does this server remove a work-queue message on an ack for a sequence its consumer has
 * not handed out yet? nats-server 2.9 and 2.10 do (the ack goes straight to the stream);
 * 2.11 and later ignore such an ack. Tried once on a throwaway memory stream with its own
 * consumer that nobody pulls, replicated like ours (a clustered consumer takes acks
 * through its raft group): publish, ack ahead, see whether the message is gone.
 * Returns 1 (yes), 0 (no), or < 0 when the server could not be asked. */
static int nats_probe_acks_ahead(natsConnection *nc, jsCtx *js, int64_t replicas)
{
    char stream[64], subject[96], ack[160];
    const char *subjects[1] = {subject};
    natsInbox *nuid = NULL;
    jsStreamConfig sc;
    jsConsumerConfig cc;
    jsStreamInfo *si = NULL;
    jsConsumerInfo *ci = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s;
    int rc = -1;
    if (natsInbox_Create(&nuid) != NATS_OK)
        return UV_ENOMEM;
    /* "_INBOX.<nuid>": the nuid makes names no other node uses at the same time */
    snprintf(stream, sizeof(stream), "WSGATE_PROBE_%s", (const char *)nuid + 7);
    snprintf(subject, sizeof(subject), "_wsgate.probe.%s", (const char *)nuid + 7);
    natsInbox_Destroy(nuid);
    jsStreamConfig_Init(&sc);
    sc.Name = stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Retention = js_WorkQueuePolicy;
    sc.Storage = js_MemoryStorage;
    sc.Replicas = replicas > 0 ? replicas : 1;
    if ((s = js_AddStream(&si, js, &sc, NULL, &jerr)) != NATS_OK)
        return nats_err(s) == 0 ? UV_EIO : nats_err(s);
    jsConsumerConfig_Init(&cc);
    cc.Durable = "p";
    cc.AckPolicy = js_AckExplicit;
    cc.MemoryStorage = true;
    s = js_AddConsumer(&ci, js, stream, &cc, NULL, &jerr);
    if (s == NATS_OK)
        s = js_Publish(&pa, js, subject, "x", 1, NULL, &jerr);
    if (s == NATS_OK) {
        snprintf(ack, sizeof(ack), "$JS.ACK.%s.p.1.%" PRIu64 ".%" PRIu64 ".0.0", stream,
                 pa->Sequence, pa->Sequence);
        s = natsConnection_Publish(nc, ack, NULL, 0);
    }
    /* the consumer takes acks from its own queue: give it up to ~300 ms */
    for (int i = 0; s == NATS_OK && i < 30 && rc < 0; i++) {
        jsStreamInfo_Destroy(si);
        si = NULL;
        if ((s = js_GetStreamInfo(&si, js, stream, NULL, &jerr)) == NATS_OK && si->State.Msgs == 0)
            rc = 1;
        else if (s == NATS_OK)
            nats_Sleep(10);
    }
    if (s == NATS_OK && rc < 0)
        rc = 0;
    if (s != NATS_OK)
        rc = nats_err(s) == 0 ? UV_EIO : nats_err(s);
    (void)js_DeleteStream(js, stream, NULL, NULL);
    jsPubAck_Destroy(pa);
    jsConsumerInfo_Destroy(ci);
    jsStreamInfo_Destroy(si);
    return rc;
}

/* Bring an existing stream's limits to the configuration: max age = [broker] ttl, at most
 * [broker] max_queue messages per subject with DiscardNew per subject (the 429). JetStream
 * updates both in place; the node that checks last sets them, and each change is logged
 * at warn with the old and new values (two nodes with different values show up in both
 * logs). Lowering them makes the server apply the new limits to what is stored: expired
 * messages go, and a subject holding more than the new limit keeps only its newest ones.
 * *si is replaced by the updated info. Same return convention as nats_stream_ensure. */
static int nats_stream_limits(jsCtx *js, const struct config *cfg, jsStreamInfo **si,
                              int64_t max_age, char *why, size_t whylen)
{
    jsStreamConfig *c = (*si)->Config;
    jsStreamInfo *nsi = NULL;
    jsErrCode jerr = 0;
    natsStatus s;
    int64_t old_age = c->MaxAge, old_per = c->MaxMsgsPerSubject;
    int old_dnps = c->DiscardNewPerSubject, old_discard = c->Discard == js_DiscardNew;
    if (old_age == max_age && old_per == (int64_t)cfg->max_queue && old_discard && old_dnps)
        return 0;
    c->MaxAge = max_age;
    c->MaxMsgsPerSubject = cfg->max_queue;
    c->Discard = js_DiscardNew;
    c->DiscardNewPerSubject = true;
    if (c->Duplicates > max_age) /* the server refuses a dedup window over the max age */
        c->Duplicates = (int64_t)nats_min(cfg->ttl_ms, 120000) * 1000000;
    s = js_UpdateStream(&nsi, js, c, NULL, &jerr);
    if (s != NATS_OK && jerr == 0) {
        snprintf(why, whylen, "stream update failed: %s", natsStatus_GetText(s));
        return nats_err(s) == 0 ? UV_EIO : nats_err(s);
    }
    if (s != NATS_OK) {
        snprintf(why, whylen,
                 "cannot apply [broker] ttl=%llums and max_queue=%u to the stream "
                 "(it has max_age %lldms, max_msgs_per_subject %lld): %s (err_code %d)",
                 (unsigned long long)cfg->ttl_ms, cfg->max_queue, (long long)(old_age / 1000000),
                 (long long)old_per, nats_GetLastError(NULL), (int)jerr);
        return UV_EINVAL;
    }
    log_warn("event=nats_stream_updated stream=%s max_age_ms=%lld->%llu "
             "max_msgs_per_subject=%lld->%u discard_new_per_subject=%d->1 "
             "keys=\"broker.ttl broker.max_queue\"",
             cfg->nats_stream, (long long)(old_age / 1000000), (unsigned long long)cfg->ttl_ms,
             (long long)old_per, cfg->max_queue, old_dnps && old_discard);
    jsStreamInfo_Destroy(*si);
    *si = nsi;
    return 0;
}

/* Create the stream or check the existing one. Returns 0; UV_EINVAL when the server has
 * something we cannot work with (why says what: incompatible stream, JetStream off);
 * another UV_E* when the server could not be asked (retry later). Any thread but the
 * loop once it serves (nats.c request/reply blocks for one round trip). */
static int nats_stream_ensure(natsConnection *nc, const struct config *cfg, const char *subject,
                              const char *deliver, int *acks_ahead, uint64_t *last_seq, char *why,
                              size_t whylen)
{
    jsCtx *js = NULL;
    jsOptions jo;
    jsStreamConfig sc;
    jsRePublish rp;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    const char *subjects[1] = {subject};
    natsStatus s;
    int rc = 0;
    int64_t max_age = (int64_t)cfg->ttl_ms * 1000000, replicas;
    why[0] = '\0';
    jsOptions_Init(&jo);
    jo.Wait = (int64_t)cfg->nats_timeout_ms;
    if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK)
        return nats_err(s);
    s = js_GetStreamInfo(&si, js, cfg->nats_stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jsStreamConfig_Init(&sc);
        jsRePublish_Init(&rp);
        rp.Source = subject;
        rp.Destination = deliver;
        sc.Name = cfg->nats_stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Retention = js_WorkQueuePolicy; /* an ack of NATS_ACKER removes a message */
        sc.Storage = js_FileStorage;
        sc.MaxAge = max_age;
        sc.MaxMsgsPerSubject = cfg->max_queue;
        sc.Discard = js_DiscardNew;
        sc.DiscardNewPerSubject = true;
        sc.AllowDirect = true;
        sc.RePublish = &rp;
        /* the dedup window may not exceed max age (the server refuses the stream) */
        sc.Duplicates = (int64_t)nats_min(cfg->ttl_ms, 120000) * 1000000;
        jerr = 0;
        s = js_AddStream(&si, js, &sc, NULL, &jerr);
        if (s == NATS_OK) {
            log_info("event=nats_stream_created stream=%s subjects=%s republish=%s "
                     "max_age_ms=%llu max_msgs_per_subject=%u storage=file retention=workqueue",
                     cfg->nats_stream, subject, deliver, (unsigned long long)cfg->ttl_ms,
                     cfg->max_queue);
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
            snprintf(why, whylen, "retention is not workqueue (written messages must leave it)");
            rc = UV_EINVAL;
        } else if (c->Storage != js_FileStorage) {
            snprintf(why, whylen, "storage is not file (messages must survive a restart)");
            rc = UV_EINVAL;
        } else if (!covered) {
            snprintf(why, whylen, "its subjects do not include %s", subject);
            rc = UV_EINVAL;
        } else if (c->RePublish == NULL || c->RePublish->Source == NULL ||
                   c->RePublish->Destination == NULL ||
                   strcmp(c->RePublish->Source, subject) != 0 ||
                   strcmp(c->RePublish->Destination, deliver) != 0 || c->RePublish->HeadersOnly) {
            snprintf(why, whylen,
                     "it does not republish %s to %s with payloads (republish "
                     "cannot be changed on an existing stream)",
                     subject, deliver);
            rc = UV_EINVAL;
        } else if (!c->AllowDirect) {
            snprintf(why, whylen, "allow_direct is off (we read stored messages with DIRECT.GET)");
            rc = UV_EINVAL;
        } else {
            rc = nats_stream_limits(js, cfg, &si, max_age, why, whylen);
            if (rc == 0)
                log_info("event=nats_stream_ok stream=%s subjects=%s republish=%s",
                         cfg->nats_stream, subject, deliver);
        }
    }
    replicas = si != NULL && si->Config != NULL ? si->Config->Replicas : 1;
    *last_seq = si != NULL ? si->State.LastSeq : 0;
    jsStreamInfo_Destroy(si);
    if (rc == 0)
        rc = nats_acker_ensure(js, cfg, subject, why, whylen);
    if (rc == 0 && *acks_ahead < 0) {
        int r = nats_probe_acks_ahead(nc, js, replicas);
        if (r >= 0) {
            *acks_ahead = r;
            log_info("event=nats_acks_ahead remove=%s pull=%s", r ? "yes" : "no", r ? "no" : "yes");
        } else { /* cannot tell (no permission for the probe stream?): pull, always safe */
            *acks_ahead = 0;
            log_warn("event=nats_acks_ahead_probe_failed err=%s pull=yes", uv_err_name(r));
        }
    }
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
 * connection is gone (nats.c shuts the socket down and reconnects), and
 * NATS_INSUFFICIENT_BUFFER means nats.c is already reconnecting (it has no reconnect
 * buffer: nats_opts_set). Either way stop calling into nats.c from the loop at once,
 * before its disconnected callback arrives: its reconnect thread holds the connection
 * lock through each connect attempt. The clean-up runs from the async handler (callers
 * may be iterating); the retry timer re-checks the connection in case nats.c never
 * reports a disconnect. */
static void nats_conn_lost(struct nats_broker *p, const char *why);

static void nats_conn_check(struct nats_broker *p, natsStatus s)
{
    if ((s != NATS_TIMEOUT && s != NATS_IO_ERROR && s != NATS_INSUFFICIENT_BUFFER) ||
        !p->connected || p->closing)
        return;
    log_warn("event=nats_write_failed err=\"%s\"", natsStatus_GetText(s));
    nats_conn_lost(p, s == NATS_INSUFFICIENT_BUFFER ? "reconnecting" : "write");
}

/* The connection counts as lost from now on, before nats.c says so (see above; why:
 * "write", "reconnecting", "read_timeout"): no more calls into nats.c from the loop,
 * /readyz and pushes 503 at once, requests in flight fail from the async handler. */
static void nats_conn_lost(struct nats_broker *p, const char *why)
{
    if (!p->connected || p->closing)
        return;
    p->lost_why = why;
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

/* --- settle: confirm a leaving session's acks --- */

static void nats_settle_push(struct nats_settle **list, struct nats_settle *st)
{
    st->prev = NULL;
    st->next = *list;
    if (*list != NULL)
        (*list)->prev = st;
    *list = st;
}

static void nats_settle_unlink(struct nats_broker *p, struct nats_settle *st)
{
    struct nats_settle **list = st->req != 0 ? &p->settle_wait : &p->settle_due;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        *list = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    if (st->ns != NULL)
        st->ns->settle = NULL;
}

/* Forget st without calling back: its session was detached first. */
static void nats_settle_cancel(struct nats_broker *p, struct nats_settle *st)
{
    if (st->req != 0) { /* its reply, if it still comes, completes nothing */
        struct map_node *n = map_get(&p->reqs, (const char *)&st->req, sizeof(st->req));
        if (n != NULL)
            map_entry(n, struct nats_req, node)->settle = NULL;
    }
    nats_settle_unlink(p, st);
    free(st);
}

/* st is complete: call back (the core detaches s inside). */
static void nats_settle_done(struct nats_broker *p, struct nats_settle *st)
{
    struct session *s = st->s;
    broker_settle_cb cb = st->cb;
    nats_settle_unlink(p, st);
    free(st);
    cb(s);
}

/* --- keys and sockets --- */

static void nats_key_fetch(struct nats_broker *p, struct nats_key *k);
static void nats_key_rescue(struct nats_broker *p, struct nats_key *k);
static void nats_on_key_timer(uv_timer_t *h);
static void nats_key_attach_waiting(struct nats_broker *p, uint64_t kid, uint64_t fetch_no,
                                    int status);

static struct nats_key *nats_key_find(struct nats_broker *p, uint64_t kid)
{
    struct map_node *n = map_get(&p->keys_by_id, (const char *)&kid, sizeof(kid));
    return n != NULL ? map_entry(n, struct nats_key, idnode) : NULL;
}

/* The stream sequence in header name of nm, or 0. */
static uint64_t nats_header_seq(natsMsg *nm, const char *name)
{
    const char *v = NULL;
    if (natsMsgHeader_Get(nm, name, &v) != NATS_OK || v == NULL || *v < '0' || *v > '9')
        return 0;
    return strtoull(v, NULL, 10);
}

static struct nats_pend *nats_pend_add(struct nats_key *k, uint64_t seq, uint64_t id,
                                       struct nats_sess *ns, uint32_t epoch)
{
    if (k->npend == k->pend_cap) {
        uint32_t cap = k->pend_cap ? k->pend_cap * 2 : 8;
        struct nats_pend *a = realloc(k->pend, cap * sizeof(*a));
        if (a == NULL)
            return NULL;
        k->pend = a;
        k->pend_cap = cap;
    }
    k->pend[k->npend] = (struct nats_pend){.seq = seq, .id = id, .ns = ns, .epoch = epoch};
    return &k->pend[k->npend++];
}

static void nats_pend_remove(struct nats_key *k, struct nats_pend *e)
{
    *e = k->pend[--k->npend]; /* unordered: the last entry fills the hole */
}

static struct nats_pend *nats_pend_find_seq(struct nats_key *k, uint64_t seq)
{
    for (uint32_t i = 0; i < k->npend; i++)
        if (k->pend[i].seq == seq)
            return &k->pend[i];
    return NULL;
}

/* Is the stored message seq one this node holds (delivered, unwritten) or acked lately?
 * An ack is a plain publish: a read sent after it can still find the message, when the
 * reader's cursor went back (a nudge, a socket leaving). Delivering it again would be a
 * duplicate on a live socket. The ring forgets the oldest: by then its ack, sent
 * NATS_ACKED_RING acks earlier on the same connection, has been processed. */
static int nats_key_ours(struct nats_key *k, uint64_t seq)
{
    if (nats_pend_find_seq(k, seq) != NULL)
        return 1;
    for (uint32_t i = 0; i < k->nacked; i++)
        if (k->acked[i] == seq)
            return 1;
    return 0;
}

static void nats_key_acked(struct nats_key *k, uint64_t seq)
{
    if (k->acked == NULL && (k->acked = malloc(NATS_ACKED_RING * sizeof(*k->acked))) == NULL)
        return; /* only a duplicate is at stake */
    k->acked[k->acked_next] = seq;
    k->acked_next = (k->acked_next + 1) % NATS_ACKED_RING;
    if (k->nacked < NATS_ACKED_RING)
        k->nacked++;
}

/* Visit k again from the key timer (NATS_RETRY_MS): a failed read, a gap to rescue. */
static void nats_key_later(struct nats_broker *p, struct nats_key *k)
{
    if (k->retry)
        return;
    if (p->nretry == p->retry_cap) {
        size_t cap = p->retry_cap ? p->retry_cap * 2 : 64;
        uint64_t *a = realloc(p->retry, cap * sizeof(*a));
        if (a == NULL)
            return; /* the next ack, attach or reconnect reads it */
        p->retry = a;
        p->retry_cap = cap;
    }
    p->retry[p->nretry++] = k->kid;
    k->retry = 1;
    if (!uv_is_active((uv_handle_t *)&p->key_timer))
        uv_timer_start(&p->key_timer, nats_on_key_timer, NATS_RETRY_MS, 0);
}

/* Read k again after NATS_RETRY_MS (its read failed or could not be sent). */
static void nats_key_retry_later(struct nats_broker *p, struct nats_key *k)
{
    k->dirty = 1;
    nats_key_later(p, k);
}

static void nats_on_key_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    size_t n = p->nretry;
    uint64_t *kids = p->retry;
    p->retry = NULL;
    p->nretry = p->retry_cap = 0;
    for (size_t i = 0; i < n; i++) {
        struct nats_key *k = nats_key_find(p, kids[i]);
        if (k == NULL)
            continue;
        k->retry = 0;
        if (!p->connected || !p->stream_ok) {
            /* sockets waiting for their 101 get a 503 rather than wait for the server */
            nats_key_attach_waiting(p, kids[i], UINT64_MAX, UV_ENOTCONN);
            if ((k = nats_key_find(p, kids[i])) != NULL && k->gap_from != 0)
                nats_key_later(p, k);
            continue;
        }
        if (k->gap_from != 0 && uv_now(p->b->loop) >= k->gap_at)
            nats_key_rescue(p, k);
        else if (k->gap_from != 0)
            nats_key_later(p, k); /* not due yet */
        nats_key_fetch(p, k);
    }
    free(kids);
}

/* The frame of e reached its socket: ack the message on NATS_ACKER, which removes it
 * from the work-queue stream (a plain publish to its ack subject, which we build from the
 * stream sequence: the server takes the sequence from the subject). While disconnected
 * the entry stays (ns NULL) and nats_resume sends it. */
static void nats_pend_ack(struct nats_broker *p, struct nats_key *k, struct nats_pend *e)
{
    char subject[NATS_SUBJ_MAX + 64];
    natsStatus s;
    e->ns = NULL;
    e->id = 0;
    if (!p->connected || p->closing)
        return;
    snprintf(subject, sizeof(subject), "%s%" PRIu64 ".%" PRIu64 ".0.0", p->ack_prefix, e->seq,
             e->seq);
    if ((s = natsConnection_Publish(p->nc, subject, NULL, 0)) != NATS_OK) {
        p->b->errors++;
        nats_conn_check(p, s);
        return;
    }
    nats_key_acked(k, e->seq);
    nats_pend_remove(k, e);
}

/* Can ns take a message of len bytes now: attached, window not full, and its unsent
 * bytes within max_send_buffer (else the message waits in the stream: backpressure, not
 * a 1008 for a client that reads slowly)? */
static int nats_sess_room(const struct nats_broker *p, const struct nats_sess *ns, size_t len)
{
    return ns->attached && !ns->refused && ns->live < p->window && session_can_take(ns->s, len);
}

/* Can a socket of k take one more (small) message? */
static int nats_key_room(const struct nats_broker *p, const struct nats_key *k)
{
    for (const struct nats_sess *ns = k->socks; ns != NULL; ns = ns->knext)
        if (nats_sess_room(p, ns, 0))
            return 1;
    return 0;
}

/* Give the stored message seq to one attached socket of k with room in its window (round
 * robin). Returns 1 when a socket took it, 0 when none could (it stays in the stream). */
static int nats_key_deliver(struct nats_broker *p, struct nats_key *k, uint64_t seq,
                            const void *data, size_t len)
{
    struct nats_sess *start = k->rr != NULL ? k->rr : k->socks, *ns = start;
    struct msg *m = NULL;
    if (ns == NULL)
        return 0;
    do {
        if (nats_sess_room(p, ns, len)) {
            struct nats_pend *e;
            uint64_t id = ns->next_id + 1;
            if (m == NULL && (m = msg_new_copy(data, len, p->cfg->frame_type)) == NULL)
                break;
            if ((e = nats_pend_add(k, seq, id, ns, p->epoch)) == NULL)
                break;
            if (session_deliver(ns->s, id, m) < 0) {
                /* closing (over max_send_buffer, or going away): not taken */
                nats_pend_remove(k, e);
                ns->refused = 1;
            } else {
                ns->next_id = id;
                ns->live++;
                k->rr = ns->knext;
                msg_unref(m);
                return 1;
            }
        }
        ns = ns->knext != NULL ? ns->knext : k->socks;
    } while (ns != start);
    msg_unref(m);
    /* Not taken. An ack (a write) will make room, unless none of them has anything of
     * ours in flight (the bytes ahead are broadcasts): then look again from the timer. */
    for (ns = k->socks; ns != NULL; ns = ns->knext)
        if (ns->live > 0)
            return 0;
    nats_key_later(p, k);
    return 0;
}

/* Read k's next stored message at or after its cursor (DIRECT.GET next_by_subj), unless a
 * read is in flight, nothing may wait, or no socket could take it. A socket waiting for
 * its 101 always gets a read: its reply is the subscription barrier. */
static void nats_key_fetch(struct nats_broker *p, struct nats_key *k)
{
    char body[NATS_NAME_SUBJ + 64];
    struct nats_req *r;
    int waiting = 0, n, rc;
    if (k->fetching || !p->connected || !p->stream_ok || p->closing)
        return;
    for (struct nats_sess *ns = k->socks; ns != NULL && !waiting; ns = ns->knext)
        waiting = !ns->attached;
    if (!waiting && (!k->dirty || !nats_key_room(p, k)))
        return;
    n = snprintf(body, sizeof(body), "{\"seq\":%" PRIu64 ",\"next_by_subj\":\"%s\"}", k->next_seq,
                 k->subject);
    if ((r = nats_req_new(p, NATS_REQ_FETCH)) == NULL) {
        nats_key_retry_later(p, k);
        return;
    }
    r->kid = k->kid;
    r->seq = k->next_seq;
    r->fetch_no = k->fetch_sent + 1;
    if ((rc = nats_req_send(p, r, p->get_subject, body, (size_t)n)) < 0) {
        free(r);
        p->b->errors++;
        nats_key_retry_later(p, k);
        return;
    }
    k->fetch_sent++;
    k->fetching = 1;
    k->dirty = 0; /* a live copy skipped meanwhile sets it again */
}

/* Read the oldest message of k still stored at or after gap_from: one that another node
 * was given (queue group) and has not written within 2 x [nats] timeout, because its
 * socket is stuck or the node died. We deliver it here (at-least-once: if that node's
 * socket writes it after all, the session sees it twice). */
static void nats_key_rescue(struct nats_broker *p, struct nats_key *k)
{
    char body[NATS_NAME_SUBJ + 64];
    struct nats_req *r;
    int n;
    if (k->fetching || k->gap_from == 0 || !p->connected || !p->stream_ok || p->closing)
        return;
    if (!nats_key_room(p, k)) {
        nats_key_later(p, k);
        return;
    }
    n = snprintf(body, sizeof(body), "{\"seq\":%" PRIu64 ",\"next_by_subj\":\"%s\"}", k->gap_from,
                 k->subject);
    if ((r = nats_req_new(p, NATS_REQ_FETCH)) == NULL) {
        nats_key_later(p, k);
        return;
    }
    r->kid = k->kid;
    r->seq = k->gap_from;
    r->rescue = 1;
    if (nats_req_send(p, r, p->get_subject, body, (size_t)n) < 0) {
        free(r);
        p->b->errors++;
        nats_key_later(p, k);
        return;
    }
    k->fetching = 1;
}

/* The reply to a rescue read (seq 0: nothing stored at or after gap_from). */
static void nats_key_rescue_done(struct nats_broker *p, struct nats_key *k, struct nats_req *r,
                                 uint64_t seq, natsMsg *nm)
{
    if (r->seq != k->gap_from) {
        /* the gap was closed or moved meanwhile: read from where it is now */
    } else if (seq == 0 || seq >= k->next_seq) {
        k->gap_from = 0; /* nothing older than the cursor is left: the gap is closed */
    } else if (nats_key_ours(k, seq)) {
        k->gap_from = seq + 1;
    } else if (nats_key_deliver(p, k, seq, natsMsg_GetData(nm),
                                (size_t)natsMsg_GetDataLength(nm))) {
        k->gap_from = seq + 1;
        k->rescued++;
    } else {
        nats_key_later(p, k); /* no room: when the timer comes again */
        return;
    }
    if (k->gap_from == 0 && k->rescued > 0) {
        log_info("event=nats_gap_rescued session=%s messages=%u", k->name, k->rescued);
        k->rescued = 0;
    }
    nats_key_rescue(p, k);
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

/* Forget k (its last socket left): no more live copies; written messages whose ack
 * could not be sent stay in the stream (delivered again later: at-least-once). nudge: unwritten
 * messages were left in the stream, so tell another node holding the key to read them now (an empty
 * core message on the deliver subject goes to one member of the queue group; our UNSUB is ahead of
 * it). */
static void nats_key_free(struct nats_broker *p, struct nats_key *k, int nudge)
{
    nats_unsubscribe(p, &k->sub, &k->ref);
    if (nudge && p->connected) {
        char subject[NATS_NAME_SUBJ];
        if (nats_subject(p, "deliver", k->name, subject) == 0 &&
            natsConnection_Publish(p->nc, subject, NULL, 0) != NATS_OK)
            p->b->errors++;
    }
    map_remove(&p->keys, &k->node);
    map_remove(&p->keys_by_id, &k->idnode);
    free(k->pend);
    free(k->acked);
    free(k);
}

/* Forget ns: its unwritten messages stay in the stream and the key's cursor goes back to
 * them, so its other sockets here (or, through the nudge, on another node) get them next.
 * Never calls into ns->s. */
static void nats_sess_free(struct nats_broker *p, struct nats_sess *ns)
{
    struct nats_key *k = ns->k;
    if (ns->settle != NULL)
        nats_settle_cancel(p, ns->settle); /* detach before the settle's end cancels it */
    for (uint16_t i = 0; i < ns->ntsubs; i++)
        nats_topic_unlink(p, &ns->tsubs[i]);
    if (k != NULL) {
        int left = 0;
        for (uint32_t i = 0; i < k->npend;) {
            struct nats_pend *e = &k->pend[i];
            if (e->ns != ns) {
                i++;
                continue;
            }
            if (e->seq < k->next_seq)
                k->next_seq = e->seq;
            left = 1;
            nats_pend_remove(k, e);
        }
        if (ns->kprev != NULL)
            ns->kprev->knext = ns->knext;
        else
            k->socks = ns->knext;
        if (ns->knext != NULL)
            ns->knext->kprev = ns->kprev;
        if (k->rr == ns)
            k->rr = ns->knext;
        if (left)
            k->dirty = 1;
        if (k->socks == NULL)
            nats_key_free(p, k, left);
        else
            nats_key_fetch(p, k);
    }
    if (ns->s != NULL)
        ns->s->bpriv = NULL;
    free(ns->tsubs);
    free(ns);
}

/* The read's sockets waiting for their 101: answer them (status 0: 101; else 503). The
 * key may go away inside (a failed attach frees its socket), so it is looked up again. */
static void nats_key_attach_waiting(struct nats_broker *p, uint64_t kid, uint64_t fetch_no,
                                    int status)
{
    struct nats_key *k;
    for (;;) {
        struct nats_sess *ns = NULL;
        struct session *s;
        if ((k = nats_key_find(p, kid)) == NULL)
            return;
        for (ns = k->socks; ns != NULL; ns = ns->knext)
            if (!ns->attached && ns->need_fetch <= fetch_no)
                break;
        if (ns == NULL)
            return;
        s = ns->s;
        if (status < 0) {
            nats_sess_free(p, ns); /* the core will not call detach after a failed attach */
            session_attached(s, status);
        } else {
            ns->attached = 1;
            session_attached(s, 0);
        }
    }
}

/* The reply to a read of k: a stored message, 404 (nothing at or after the cursor), or a
 * failure (status < 0: timeout, connection lost). */
static void nats_key_fetch_done(struct nats_broker *p, struct nats_req *r, int status, natsMsg *nm)
{
    struct nats_key *k = nats_key_find(p, r->kid);
    char code[8] = "";
    uint64_t seq = 0;
    if (k == NULL)
        return;
    k->fetching = 0;
    if (status == 0 && nm != NULL) {
        seq = nats_header_seq(nm, NATS_SEQ_HDR);
        if (seq > p->max_seq)
            p->max_seq = seq;
        if (seq == 0) {
            char desc[96];
            nats_header(nm, NATS_STATUS_HDR, code, sizeof(code));
            nats_header(nm, NATS_DESC_HDR, desc, sizeof(desc));
            if (strcmp(code, "404") != 0) {
                log_warn("event=nats_read_failed session=%s status=%s reason=\"%s\"", k->name,
                         code[0] ? code : "-", desc);
                status = UV_EIO;
            }
        }
    }
    if (status < 0 && r->rescue) {
        p->b->errors++;
        nats_key_later(p, k); /* the gap stays */
        return;
    }
    if (status < 0) {
        p->b->errors++;
        nats_key_retry_later(p, k);
        nats_key_attach_waiting(p, r->kid, r->fetch_no, status);
        return;
    }
    if (r->rescue) {
        nats_key_rescue_done(p, k, r, seq, nm);
        if ((k = nats_key_find(p, r->kid)) != NULL)
            nats_key_fetch(p, k);
        return;
    }
    nats_key_attach_waiting(p, r->kid, r->fetch_no, 0);
    if ((k = nats_key_find(p, r->kid)) == NULL)
        return;
    if (seq != 0) {
        if (k->next_seq != r->seq) {
            k->dirty = 1; /* the cursor moved back while this read was out: read again */
        } else if (nats_key_ours(k, seq)) {
            k->next_seq = seq + 1; /* ours already (unwritten, or acked: removal on its way) */
            k->dirty = 1;
        } else {
            k->dirty = 1; /* more may follow; with no room it waits for an ack */
            if (nats_key_deliver(p, k, seq, natsMsg_GetData(nm), (size_t)natsMsg_GetDataLength(nm)))
                k->next_seq = seq + 1;
        }
    }
    nats_key_fetch(p, k);
}

/* A republished copy on <prefix>.deliver.<key>: the live path. Deliver it at once when
 * nothing older may be waiting here; else leave it in the stream for the read. A copy
 * without a sequence is a nudge: a node left unwritten messages of the key behind. */
static void nats_on_live_msg(struct nats_broker *p, struct nats_key *k, natsMsg *nm)
{
    uint64_t seq = nats_header_seq(nm, NATS_SEQ_HDR);
    if (seq > p->max_seq)
        p->max_seq = seq;
    if (seq == 0) {
        k->next_seq = 0;
        k->dirty = 1;
        nats_key_fetch(p, k);
        return;
    }
    if (seq < k->next_seq)
        return; /* read already (or ours) */
    if (!k->fetching && !k->dirty &&
        nats_key_deliver(p, k, seq, natsMsg_GetData(nm), (size_t)natsMsg_GetDataLength(nm))) {
        uint64_t last = nats_header_seq(nm, NATS_LAST_HDR);
        if (last != 0 && last >= k->next_seq && k->gap_from == 0) {
            /* the key's previous message went to another node holding it: if that node
             * has not written it in 2 x timeout, it is stuck there; we take it then */
            k->gap_from = k->next_seq;
            k->gap_at = uv_now(p->b->loop) + 2 * p->cfg->nats_timeout_ms;
            nats_key_later(p, k);
        }
        k->next_seq = seq + 1;
        return;
    }
    k->dirty = 1;
    nats_key_fetch(p, k);
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

/* The reply to request r: a publish ack (or error), or a read. */
static void nats_req_complete(struct nats_broker *p, struct nats_req *r, int status, natsMsg *nm)
{
    const char *data = nm != NULL ? natsMsg_GetData(nm) : NULL;
    size_t len = nm != NULL ? (size_t)natsMsg_GetDataLength(nm) : 0;
    if (status == 0 && nm != NULL && natsMsg_IsNoResponders(nm))
        status = UV_EHOSTUNREACH; /* no stream answers on that subject */
    if (r->kind == NATS_REQ_FETCH) {
        nats_key_fetch_done(p, r, status, nm);
        return;
    }
    if (r->kind == NATS_REQ_SETTLE) {
        /* The server answers an ack with a reply subject after it processed it, and it
         * processes a consumer's acks in order: every earlier ack of ours is applied too.
         * A failure (timeout, connection lost) cannot confirm anything, but holding the
         * client's close longer would not either: complete it (at-least-once). */
        if (r->settle != NULL)
            nats_settle_done(p, r->settle);
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

/* A request went unanswered for [nats] timeout. If nothing at all came from the server
 * meanwhile either, the connection is taken as lost (a frozen server, or a partition
 * that drops packets without a reset: TCP would wait for minutes): /readyz and new pushes
 * answer 503 at once, and nothing more is written to it. nats.c's own PINGs (every
 * timeout / 2, NATS_PINGS_OUT unanswered) then drop the socket and reconnect; an idle node
 * notices that way. A reply that was only slow (the server answers other things) fails
 * only its own request. */
static void nats_on_req_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    uint64_t now = uv_now(p->b->loop);
    struct nats_req *r;
    if (p->rhead != NULL && p->rhead->deadline <= now && p->connected &&
        now - p->last_rx >= p->cfg->nats_timeout_ms) {
        log_warn("event=nats_timeout waited_ms=%llu reason=\"no reply and nothing read\"",
                 (unsigned long long)(now - p->last_rx));
        nats_conn_lost(p, "read_timeout");
    }
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
static void nats_acker_pull(struct nats_broker *p);

/* The stream is there (again): send the acks that waited and read every key from its
 * cursor (live copies stored while we were away were published to nobody; nats.c has
 * already renewed our subscriptions on the new connection, ahead of these reads). */
static void nats_resume(struct nats_broker *p)
{
    struct map_iter it;
    struct map_node *n;
    map_iter_init(&it, &p->keys);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_key *k = map_entry(n, struct nats_key, node);
        for (uint32_t i = 0; i < k->npend;) {
            uint32_t n = k->npend;
            if (k->pend[i].ns == NULL)
                nats_pend_ack(p, k, &k->pend[i]); /* removes it (the last one moves here) */
            if (k->npend == n)
                i++;
        }
        k->dirty = 1;
        nats_key_fetch(p, k);
    }
    p->pull_out = 0; /* requests do not survive a reconnect */
    nats_acker_pull(p);
}

/* The stream's last sequence is below one we saw before the connection was lost: the
 * server lost the end of the stream (nats-server 2.9 restarts an empty stream's sequence
 * at 1 after a kill -9 when its state was not yet written) or the stream was re-created,
 * so sequences will be given out again. What we hold from before that is above last no
 * longer exists: forget it (an ack for it would remove the new message that reuses the
 * number; a socket still writing it gets its window slot back now), and read every key
 * from the start of the stream. Entries read on this connection are kept. */
static void nats_seq_reset(struct nats_broker *p, uint64_t last)
{
    struct map_iter it;
    struct map_node *n;
    log_warn("event=nats_stream_seq_reset stream=%s last_seq=%llu seen_seq=%llu",
             p->cfg->nats_stream, (unsigned long long)last,
             (unsigned long long)p->seq_before);
    map_iter_init(&it, &p->keys);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_key *k = map_entry(n, struct nats_key, node);
        for (uint32_t i = 0; i < k->npend;) {
            struct nats_pend *e = &k->pend[i];
            if (e->epoch == p->epoch || e->seq <= last) {
                i++;
                continue;
            }
            if (e->ns != NULL && e->ns->live > 0)
                e->ns->live--;
            nats_pend_remove(k, e);
        }
        k->next_seq = 0;
        k->gap_from = 0;
        k->dirty = 1;
    }
    p->max_seq = last;
}

/* nats.c dropped messages for us (slow consumer): a live copy may be lost, so every key
 * reads from its oldest stored message again (the ones we hold are skipped). */
static void nats_rescan(struct nats_broker *p)
{
    struct map_iter it;
    struct map_node *n;
    map_iter_init(&it, &p->keys);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_key *k = map_entry(n, struct nats_key, node);
        k->next_seq = 0;
        k->dirty = 1;
        nats_key_fetch(p, k);
    }
}

/* Connection lost (from_event: nats.c said so; else nats_conn_lost decided it).
 * Requests in flight fail: pushes answer 503, attaches waiting for their read 503. */
static void nats_on_disconnected(struct nats_broker *p, int from_event)
{
    if (from_event)
        p->lost_locally = 0; /* confirmed: the connected event will follow */
    if (p->connected || !from_event) {
        p->b->errors++;
        log_warn("event=nats_disconnected source=%s",
                 from_event ? "client" : p->lost_why != NULL ? p->lost_why : "write");
    }
    p->connected = 0;
    p->stream_ok = 0;
    p->pull_out = 0;
    if (p->max_seq > p->seq_before)
        p->seq_before = p->max_seq;
    {   /* acks written just before may not have reached the server: read them again */
        struct map_iter it;
        struct map_node *n;
        map_iter_init(&it, &p->keys);
        while ((n = map_iter_next(&it)) != NULL)
            map_entry(n, struct nats_key, node)->nacked = 0;
    }
    uv_timer_stop(&p->pull_timer);
    nats_reqs_fail(p, UV_ECONNRESET);
}

static void nats_on_connected(struct nats_broker *p)
{
    if (!p->connected)
        log_info("event=nats_connected");
    p->epoch++;
    p->connected = 1;
    p->lost_locally = 0;
    p->reprobe = 1; /* maybe another server (version) now: probe acks ahead again */
    nats_grave_flush(p, 1);
    nats_stream_check_start(p);
}

static void nats_on_stream_work(uv_work_t *w)
{
    struct nats_broker *p = w->data;
    if (p->work_close) {
        natsConnection_Close(p->nc); /* flushes (acks, nudges) for up to 500 ms, joins threads */
        return;
    }
    p->work_rc = nats_stream_ensure(p->nc, p->cfg, p->stream_subject, p->deliver_subject,
                                    &p->acks_ahead, &p->work_last_seq, p->work_why,
                                    sizeof(p->work_why));
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
        if (p->work_last_seq < p->seq_before)
            nats_seq_reset(p, p->work_last_seq);
        p->seq_before = 0;
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
    if (p->reprobe && !p->cfg->nats_pull) /* (no work runs now: safe to write) */
        p->acks_ahead = -1;
    p->reprobe = 0;
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

/* --- NATS_ACKER's copies --- */

static void nats_on_pull_timer(uv_timer_t *h);

/* Keep a pull request outstanding on NATS_ACKER, so that the consumer has handed out
 * (pending) every stored message by the time we ack it: nats-server 2.11 and later ignore
 * an ack above the consumer's delivery pointer (2.9 and 2.10 remove the message anyway).
 * The copies are headers only and dropped on arrival: a small, constant cost per message
 * whatever the number of sessions. The next request goes out while a quarter of the
 * last one is left, so the consumer never waits for us. */
static void nats_acker_pull(struct nats_broker *p)
{
    char body[96], reply[96];
    natsStatus s;
    int n;
    if (!p->connected || !p->stream_ok || p->closing || p->asub == NULL || p->acks_ahead != 0 ||
        p->work_busy || p->pull_out > NATS_PULL_BATCH / 4)
        return;
    n = snprintf(body, sizeof(body), "{\"batch\":%u,\"expires\":%" PRIu64 "}", NATS_PULL_BATCH,
                 (uint64_t)NATS_PULL_EXPIRES_MS * 1000000);
    snprintf(reply, sizeof(reply), "%s.a", p->inbox);
    if ((s = natsConnection_PublishRequest(p->nc, p->pull_subject, reply, body, n)) != NATS_OK) {
        p->b->errors++;
        nats_conn_check(p, s);
        uv_timer_start(&p->pull_timer, nats_on_pull_timer, NATS_RETRY_MS, 0);
        return;
    }
    p->pull_out += NATS_PULL_BATCH;
    uv_timer_start(&p->pull_timer, nats_on_pull_timer, NATS_PULL_EXPIRES_MS + NATS_PULL_MARGIN_MS,
                   0);
}

static void nats_on_pull_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    p->pull_out = 0; /* expired without a 408, or the last send failed */
    nats_acker_pull(p);
}

/* A message on <inbox>.a: a copy handed out by NATS_ACKER (dropped), or a status about a
 * pull request (408 expired, 409 consumer deleted or limits, 100 heartbeat). */
static void nats_on_acker_msg(struct nats_broker *p, natsMsg *nm)
{
    const char *reply = natsMsg_GetReply(nm);
    char code[8], desc[96];
    if (reply != NULL && strncmp(reply, "$JS.ACK.", 8) == 0) {
        if (p->pull_out > 0)
            p->pull_out--;
        nats_acker_pull(p);
        return;
    }
    nats_header(nm, NATS_STATUS_HDR, code, sizeof(code));
    if (strcmp(code, "100") == 0)
        return;
    p->pull_out = 0; /* one request ended; asking again early costs nothing */
    if (strcmp(code, "408") != 0) {
        nats_header(nm, NATS_DESC_HDR, desc, sizeof(desc));
        p->b->errors++;
        log_warn("event=nats_acker_pull_refused consumer=%s status=%s reason=\"%s\"", NATS_ACKER,
                 code, desc);
        if (strstr(desc, "Deleted") != NULL || strcmp(code, "503") == 0) {
            /* someone deleted our consumer: acks would remove nothing; create it again */
            p->stream_ok = 0;
            nats_stream_check_start(p);
            return;
        }
    }
    nats_acker_pull(p);
}

/* --- the loop side of xq --- */

/* Live messages were dropped at the hand-over (nats_xq_push) since the last pass: a key
 * with a dropped copy reads the stream from its cursor, which delivers it (messages we
 * hold or acked lately are skipped, removed ones are not returned); dropped broadcasts
 * are lost. With
 * more subscriptions than slots, every key reads again from the start. Counted in
 * b->errors (copies held back in the stream) and b->dropped (broadcasts), logged at most
 * once a second. */
static void nats_drops_apply(struct nats_broker *p, const struct nats_drop *d, size_t nd,
                             uint64_t more)
{
    uint64_t now = uv_now(p->b->loop);
    for (size_t i = 0; i < nd; i++) {
        struct map_node *n = map_get(&p->subs, (const char *)&d[i].subid, sizeof(d[i].subid));
        struct nats_subref *ref = n != NULL ? map_entry(n, struct nats_subref, node) : NULL;
        if (ref != NULL && ref->k != NULL) {
            /* Copies come in stream order, and this runs before any later copy of the
             * batch: a dropped one at or above the cursor is read from there; one below
             * it was read already. A dropped nudge (no sequence) is a nudge. */
            struct nats_key *k = ref->k;
            p->ovl_held += d[i].count;
            p->b->errors += d[i].count;
            if (d[i].seq == 0)
                k->next_seq = 0;
            k->dirty = 1;
            nats_key_fetch(p, k);
        } else { /* a broadcast, or a subscription gone since (then stored ones stay) */
            p->ovl_dropped += d[i].count;
            p->b->dropped += d[i].count;
        }
    }
    if (more > 0) {
        p->ovl_dropped += more;
        p->b->dropped += more;
        nats_rescan(p);
    }
    if (now - p->ovl_logged >= 1000 || p->ovl_logged == 0) {
        log_warn("event=nats_overload broadcasts_dropped=%llu copies_held_back=%llu "
                 "limit_bytes=%zu reason=\"messages came faster than the loop took them\"",
                 (unsigned long long)p->ovl_dropped, (unsigned long long)p->ovl_held,
                 p->xq.max_bytes);
        p->ovl_dropped = p->ovl_held = 0;
        p->ovl_logged = now;
    }
}

static void nats_on_event_msg(struct nats_broker *p, int64_t subid, natsMsg *nm)
{
    struct map_node *n = map_get(&p->subs, (const char *)&subid, sizeof(subid));
    struct nats_subref *ref = n != NULL ? map_entry(n, struct nats_subref, node) : NULL;
    const char *subject = natsMsg_GetSubject(nm);
    size_t ilen = strlen(p->inbox);
    if (p->closing) {
        /* nothing: a stored message stays in the stream, a broadcast is not delivered */
    } else if (ref != NULL && ref->k != NULL) {
        nats_on_live_msg(p, ref->k, nm);
    } else if (ref != NULL) {
        nats_on_topic_msg(p, ref->t, nm);
    } else if (subid == p->asub_id) {
        nats_on_acker_msg(p, nm);
    } else if (subid == p->rsub_id && strncmp(subject, p->inbox, ilen) == 0 &&
               strncmp(subject + ilen, ".r.", 3) == 0) {
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
    struct nats_drop drops[NATS_DROP_SLOTS];
    int subs_left, closed;
    uint64_t lost, drops_more;
    size_t ndrops, bytes;
    uv_mutex_lock(&p->xq.lock);
    evs = p->xq.evs; /* swap buffers: nats threads fill the other one meanwhile */
    n = p->xq.n;
    cap = p->xq.cap;
    p->xq.evs = p->batch;
    p->xq.cap = p->batch_cap;
    p->xq.n = 0;
    lost = p->xq.lost;
    p->xq.lost = 0;
    bytes = p->xq.bytes; /* still counted against the bound until processed (below) */
    ndrops = p->xq.ndrops;
    memcpy(drops, p->xq.drops, ndrops * sizeof(drops[0]));
    p->xq.ndrops = 0;
    drops_more = p->xq.drops_more;
    p->xq.drops_more = 0;
    uv_mutex_unlock(&p->xq.lock);
    p->batch = evs;
    p->batch_cap = cap;
    if (lost > 0) {
        p->b->errors += lost;
        log_warn("event=nats_events_lost count=%llu", (unsigned long long)lost);
    }
    /* Drops first: a copy of this batch that came after a dropped one of its key must
     * not be delivered ahead of it (the key is dirty now: the read delivers both). */
    if ((ndrops > 0 || drops_more > 0) && !p->closing)
        nats_drops_apply(p, drops, ndrops, drops_more);
    if (n > 0)
        p->last_rx = uv_now(p->b->loop); /* read something (a message or a state change) */
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
            if (evs[i].err == NATS_SLOW_CONSUMER && !p->closing)
                nats_rescan(p);
            break;
        }
    }
    if (n > 0) {
        uv_mutex_lock(&p->xq.lock);
        p->xq.bytes -= bytes;
        uv_mutex_unlock(&p->xq.lock);
        uv_update_time(p->b->loop); /* a long batch is reading too (nats_on_req_timer) */
        p->last_rx = uv_now(p->b->loop);
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
    while (!p->closing && p->settle_due != NULL)
        nats_settle_done(p, p->settle_due); /* nothing to confirm, or no way to */
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
        s = natsOptions_SetPingInterval(o, (int64_t)(cfg->nats_timeout_ms / 2 > 0
                                                         ? cfg->nats_timeout_ms / 2 : 1));
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, NATS_PINGS_OUT);
    if (s == NATS_OK)
        s = natsOptions_UseGlobalMessageDelivery(o, true); /* no thread per subscription */
    if (s == NATS_OK) /* batch writes through the flusher thread (see the file header) */
        s = natsOptions_SetSendAsap(o, false);
    if (s == NATS_OK) /* a stalled server never blocks the loop in write() for longer */
        s = natsOptions_SetWriteDeadline(o, (int64_t)cfg->nats_timeout_ms);
    /* No reconnect buffer: by default nats.c keeps what is published while it reconnects
     * (8 MB) and sends it once connected again. A push published in the moment between
     * the connection's loss and our loop hearing of it would then be answered 503 (the
     * request fails with the connection) and still be stored and delivered later. With
     * size 0 such a publish fails at once (NATS_INSUFFICIENT_BUFFER): a 503 that was
     * never sent. Acks, reads and nudges refused this way are redone after the reconnect
     * (nats_resume). */
    if (s == NATS_OK)
        s = natsOptions_SetReconnectBufSize(o, 0);
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
    struct nats_settle *st;
    while ((st = p->settle_due) != NULL || (st = p->settle_wait) != NULL) {
        nats_settle_unlink(p, st);
        free(st);
    }
    for (size_t i = 0; i < p->xq.n; i++)
        if (p->xq.evs[i].msg != NULL)
            natsMsg_Destroy(p->xq.evs[i].msg);
    free(p->xq.evs);
    free(p->batch);
    free(p->grave);
    uv_mutex_destroy(&p->xq.lock);
    uv_cond_destroy(&p->xq.cond);
    map_free(&p->keys);
    map_free(&p->keys_by_id);
    free(p->retry);
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
    map_init(&p->keys);
    map_init(&p->keys_by_id);
    map_init(&p->reqs);
    map_init(&p->topics);
    map_init(&p->subs);
    p->window = cfg->max_inflight > 0 ? cfg->max_inflight : 1;
    p->acks_ahead = cfg->nats_pull ? 0 : -1; /* always: as if the server needed it */
    snprintf(p->stream_subject, sizeof(p->stream_subject), "%s.recv.>", cfg->prefix);
    snprintf(p->deliver_subject, sizeof(p->deliver_subject), "%s.deliver.>", cfg->prefix);
    snprintf(p->get_subject, sizeof(p->get_subject), "$JS.API.DIRECT.GET.%s", cfg->nats_stream);
    snprintf(p->pull_subject, sizeof(p->pull_subject), "$JS.API.CONSUMER.MSG.NEXT.%s.%s",
             cfg->nats_stream, NATS_ACKER);
    snprintf(p->ack_prefix, sizeof(p->ack_prefix), "$JS.ACK.%s.%s.1.", cfg->nats_stream,
             NATS_ACKER);
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
    /* The hand-over bound: no config key of its own (it would be [nats] max_pending), so
     * a multiple of the limits that already size one message and one client's backlog. */
    p->xq.max_bytes = NATS_QUEUE_FACTOR * (cfg->max_message_size > cfg->max_send_buffer
                                               ? cfg->max_message_size
                                               : cfg->max_send_buffer);
    /* None of these fails on Unix (libuv 1.44); from here on p is freed via the handles. */
    uv_async_init(loop, &p->async, nats_on_async);
    uv_timer_init(loop, &p->req_timer);
    uv_timer_init(loop, &p->retry_timer);
    uv_timer_init(loop, &p->key_timer);
    uv_timer_init(loop, &p->pull_timer);
    p->async.data = p->req_timer.data = p->retry_timer.data = p->key_timer.data = p;
    p->pull_timer.data = p;
    p->open_handles = 5;
    p->last_rx = uv_now(loop);
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
        rc = nats_stream_ensure(p->nc, cfg, p->stream_subject, p->deliver_subject, &p->acks_ahead,
                                &p->max_seq, p->work_why, sizeof(p->work_why));
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
        if ((rc = nats_subscribe(p, subject, NULL, &p->rsub, NULL)) == 0)
            p->rsub_id = natsSubscription_GetID(p->rsub);
        snprintf(subject, sizeof(subject), "%s.a", p->inbox);
        if (rc == 0 && (rc = nats_subscribe(p, subject, NULL, &p->asub, NULL)) == 0)
            p->asub_id = natsSubscription_GetID(p->asub);
        if (rc < 0) {
            log_error("event=nats_subscribe_failed subject=%s err=%s", subject, uv_err_name(rc));
            goto fail;
        }
    }
    b->priv = p;
    nats_acker_pull(p);
    log_info("event=broker_open type=nats url=%s stream=%s prefix=%s connected=%d "
             "window=%u",
             url, cfg->nats_stream, cfg->prefix, p->connected, p->window);
    return 0;
fail:
    if (p->nc != NULL) {
        /* Wait for the closed callback so no nats thread can touch p after it is freed. */
        nats_unsubscribe(p, &p->rsub, NULL);
        nats_unsubscribe(p, &p->asub, NULL);
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
    uv_close((uv_handle_t *)&p->key_timer, nats_on_open_failed_closed);
    uv_close((uv_handle_t *)&p->pull_timer, nats_on_open_failed_closed);
    return rc < 0 ? rc : UV_EINVAL;
}

static int nats_ready(struct broker *b)
{
    struct nats_broker *p = b->priv;
    return p != NULL && !p->closing && p->connected && p->stream_ok;
}

/* This node's state for key name, created with its queue subscription when new. */
static int nats_key_get(struct nats_broker *p, const char *name, size_t len, struct nats_key **out)
{
    char subject[NATS_NAME_SUBJ];
    struct map_node *n = map_get(&p->keys, name, len);
    struct nats_key *k;
    int rc;
    if (n != NULL) {
        *out = map_entry(n, struct nats_key, node);
        return 0;
    }
    if ((k = calloc(1, sizeof(*k))) == NULL)
        return UV_ENOMEM;
    memcpy(k->name, name, len);
    k->name[len] = '\0';
    k->kid = ++p->next_kid;
    k->node.key = k->name;
    k->node.key_len = (uint32_t)len;
    k->idnode.key = (const char *)&k->kid;
    k->idnode.key_len = sizeof(k->kid);
    k->ref.k = k;
    k->dirty = 1;
    if ((rc = nats_subject(p, "recv", k->name, k->subject)) < 0 ||
        (rc = nats_subject(p, "deliver", k->name, subject)) < 0 ||
        (rc = nats_subscribe(p, subject, p->cfg->nats_stream, &k->sub, &k->ref)) < 0) {
        free(k);
        return rc;
    }
    if ((rc = map_put(&p->keys, &k->node)) < 0) {
        nats_unsubscribe(p, &k->sub, &k->ref);
        free(k);
        return rc;
    }
    if ((rc = map_put(&p->keys_by_id, &k->idnode)) < 0) {
        map_remove(&p->keys, &k->node);
        nats_unsubscribe(p, &k->sub, &k->ref);
        free(k);
        return rc;
    }
    *out = k;
    return 0;
}

/* Subscribe ns to its topics (one core subscription per topic on this node). */
static int nats_sess_topics(struct nats_broker *p, struct nats_sess *ns)
{
    struct session *s = ns->s;
    for (uint16_t i = 0; i < s->ntopics; i++) {
        const char *name = s->topics[i];
        char tsubject[NATS_NAME_SUBJ];
        struct map_node *n;
        struct nats_topic *t;
        int dup = 0, rc;
        if ((rc = nats_subject(p, "topic", name, tsubject)) < 0)
            return rc;
        for (uint16_t j = 0; j < i && !dup; j++) /* ?topics=a,a: subscribe once */
            dup = strcmp(s->topics[j], name) == 0;
        if (dup)
            continue;
        if ((n = map_get(&p->topics, name, strlen(name))) != NULL) {
            t = map_entry(n, struct nats_topic, node);
        } else {
            size_t len = strlen(name);
            if ((t = calloc(1, sizeof(*t) + len + 1)) == NULL)
                return UV_ENOMEM;
            memcpy(t->name, name, len + 1);
            t->node.key = t->name;
            t->node.key_len = (uint32_t)len;
            t->ref.t = t;
            if ((rc = nats_subscribe(p, tsubject, NULL, &t->sub, &t->ref)) < 0 ||
                (rc = map_put(&p->topics, &t->node)) < 0) {
                nats_unsubscribe(p, &t->sub, &t->ref);
                free(t);
                return rc;
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
    return 0;
}

/* Subscriptions first (the key's deliver subject, the topics), then a read of the key:
 * its reply, which the server sends after it has processed those SUBs on this one
 * connection, answers the 101 (nats_key_attach_waiting). */
static int nats_attach(struct broker *b, struct session *s)
{
    struct nats_broker *p = b->priv;
    struct nats_sess *ns;
    struct nats_key *k;
    int rc;
    s->bpriv = NULL; /* a detach after a failed attach is a no-op */
    if (p == NULL || p->closing)
        return UV_ECANCELED;
    if (!nats_ready(b))
        return UV_EAGAIN; /* 503: clients retry; nothing is held for them */
    if ((ns = calloc(1, sizeof(*ns))) == NULL)
        return UV_ENOMEM;
    if (s->ntopics > 0 && (ns->tsubs = calloc(s->ntopics, sizeof(*ns->tsubs))) == NULL) {
        free(ns);
        return UV_ENOMEM;
    }
    ns->ntsubs = s->ntopics;
    ns->s = s;
    s->bpriv = ns;
    if ((rc = nats_sess_topics(p, ns)) < 0 || (rc = nats_key_get(p, s->key, s->key_len, &k)) < 0) {
        nats_sess_free(p, ns);
        return rc;
    }
    ns->k = k;
    ns->knext = k->socks;
    if (k->socks != NULL)
        k->socks->kprev = ns;
    k->socks = ns;
    ns->need_fetch = k->fetch_sent + 1; /* the next read, sent after our SUBs */
    nats_key_fetch(p, k);               /* (if one is in flight, its reply sends the next) */
    return 0;
}

static void nats_detach(struct broker *b, struct session *s)
{
    struct nats_broker *p = b->priv;
    struct nats_sess *ns = s->bpriv;
    if (p != NULL && ns == NULL) { /* a settle of a session we had let go: cancel it */
        for (struct nats_settle *st = p->settle_due; st != NULL; st = st->next)
            if (st->s == s) {
                nats_settle_cancel(p, st);
                break;
            }
    }
    if (p == NULL || ns == NULL)
        return;            /* never attached, attach failed, or the broker already let it go */
    nats_sess_free(p, ns); /* a read in flight finds its socket gone */
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

/* The frame of msg_id reached the socket: remove the message from the stream, and read
 * more for the key if some waited for this room. */
static void nats_ack(struct broker *b, struct session *s, uint64_t msg_id)
{
    struct nats_broker *p = b->priv;
    struct nats_sess *ns = s->bpriv;
    struct nats_key *k;
    if (p == NULL || ns == NULL || (k = ns->k) == NULL)
        return;
    for (uint32_t i = 0; i < k->npend; i++) {
        struct nats_pend *e = &k->pend[i];
        if (e->ns != ns || e->id != msg_id)
            continue;
        ns->live--;
        ns->last_ack = e->seq;
        nats_pend_ack(p, k, e);
        if (k->dirty)
            nats_key_fetch(p, k);
        return;
    }
}

/* s is leaving (client close frame or server close): cb(s) once the server confirmed
 * every ack given for s, so that the client, once it has its close reply, cannot be
 * handed those messages again by any node. Acks are plain publishes (one per written
 * frame, no round trip); here the last one goes out again with a reply subject, and its
 * reply is the barrier (nats_req_complete). Nothing acked yet, or no connection to
 * confirm on: cb from the async handler. Never blocks. cb never runs when detach(s) comes
 * first, or when the broker is closing or out of memory (the core then closes the
 * socket after its close timeout). */
static void nats_settle(struct broker *b, struct session *s, broker_settle_cb cb)
{
    struct nats_broker *p = b->priv;
    struct nats_sess *ns = s->bpriv;
    struct nats_settle *st;
    struct nats_req *r;
    char subject[NATS_SUBJ_MAX + 64];
    if (p == NULL || p->closing || (ns != NULL && ns->settle != NULL))
        return;
    if ((st = calloc(1, sizeof(*st))) == NULL) {
        p->b->errors++;
        return;
    }
    st->s = s;
    st->ns = ns;
    st->cb = cb;
    if (ns != NULL && ns->last_ack != 0 && p->connected && p->stream_ok &&
        (r = nats_req_new(p, NATS_REQ_SETTLE)) != NULL) {
        snprintf(subject, sizeof(subject), "%s%" PRIu64 ".%" PRIu64 ".0.0", p->ack_prefix,
                 ns->last_ack, ns->last_ack);
        r->settle = st;
        if (nats_req_send(p, r, subject, NULL, 0) == 0) {
            st->req = r->id;
            nats_settle_push(&p->settle_wait, st);
            ns->settle = st;
            return;
        }
        free(r);
    }
    nats_settle_push(&p->settle_due, st);
    if (ns != NULL)
        ns->settle = st;
    nats_kick(p);
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

/* Advance the close: first natsConnection_Close on the thread pool (it flushes our acks
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
    uv_close((uv_handle_t *)&p->key_timer, nats_on_handle_closed);
    uv_close((uv_handle_t *)&p->pull_timer, nats_on_handle_closed);
}

/* Sessions still attached are closed with 1001 and let go (their unwritten messages stay
 * in the stream); attaches in progress answer 503; pushes waiting for an ack fail with
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
    uv_timer_stop(&p->key_timer);
    uv_timer_stop(&p->pull_timer);
    while ((r = p->rhead) != NULL) {
        nats_req_unlink(p, r);
        if (r->kind == NATS_REQ_PUSH)
            (void)nats_done_add(p, r->cb, r->arg, UV_ECANCELED);
        free(r);
    }
    uv_timer_stop(&p->req_timer);
    map_iter_init(&it, &p->keys);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_key *k = map_entry(n, struct nats_key, node);
        struct nats_sess *ns;
        /* the last socket frees the key (after the loop's cursor has moved past it) */
        while ((ns = k->socks) != NULL) {
            struct session *s = ns->s;
            int attached = ns->attached, last = ns->knext == NULL;
            nats_sess_free(p, ns);
            if (attached)
                session_close(s, NATS_CLOSE_CODE);
            else
                session_attached(s, UV_ECANCELED);
            if (last)
                break;
        }
    }
    nats_unsubscribe(p, &p->rsub, NULL);
    nats_unsubscribe(p, &p->asub, NULL);
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
    .settle = nats_settle,
    .ready = nats_ready,
    .close = nats_close,
};
