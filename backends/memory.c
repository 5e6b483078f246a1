/* memory.c — the default broker (`[broker] type = memory`, DESIGN.md §4): per-session-key
 * FIFOs and topic fan-out in this process's RAM. At-most-once (msg id 0, no ack), one
 * node only. A push goes straight to one online socket of its key (round-robin, consumed
 * once), else waits in the key's FIFO, at most cfg->max_queue messages (then 429), each
 * for cfg->ttl_ms after its push (then dropped and counted in b->dropped); the next socket
 * of that key to attach drains the FIFO in order before its 101. Queued messages cost one
 * msg ref and one small node, never a payload copy.
 * All FIFOs together hold at most cfg->memory_max_bytes, counted per waiting message as
 * its frame (m->hdr_len + m->len) plus MEM_ITEM_OVERHEAD for the node and the msg struct
 * (allocator slack and unused msg capacity are not counted); a push that does not fit gets
 * UV_ENOSPC (503) and counts in b->refused_full. Messages handed straight to an online
 * socket are not stored and cost nothing here.
 * Does NOT survive a restart, share anything between nodes, or forward client frames:
 * `.upstream = NULL`, so broker_upstream() returns UV_ENOSYS and the core drops them —
 * no service can read ws.send.S from inside this process.
 * Built on the shared core: later.h runs the push/publish callbacks and attach completions
 * (one uv_idle_t, active only while some wait), topics.h holds the topic subscriptions and
 * fans broadcasts out, qdeliver.h keeps a key's sockets and picks one round-robin. This file
 * keeps the offline FIFOs, their byte bound and the TTL sweep.
 * Idle cost: the later handle is stopped when nothing waits; one unref'd uv_timer_t wakes
 * at the earliest expiry and only while offline messages exist. Loop thread only. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "broker.h"
#include "config.h"
#include "later.h"
#include "log.h"
#include "map.h"
#include "msg.h"
#include "qdeliver.h"
#include "session.h"
#include "topics.h"
#include "util.h"

#define MEM_CLOSE_CODE 1001 /* sessions still attached when the broker closes: going away */

struct mem_broker;
struct mem_queue;

/* One offline message. It sits in its key's FIFO and in the broker-wide expiry list.
 * Every message lives exactly ttl_ms, so push order is expiry order in both lists and the
 * expiry list's head is always the head of its own queue's FIFO. */
struct mem_item {
    struct mem_item *next;  /* borrowed: next (younger) item of the same queue */
    struct mem_item *gprev; /* borrowed: expiry list, older neighbour */
    struct mem_item *gnext; /* borrowed: expiry list, younger neighbour */
    struct mem_queue *q;    /* borrowed: the queue that owns this item */
    struct msg *m;          /* ref: released when delivered, expired or at close */
    uint64_t expires_at;    /* uv_now() time in ms at which it is dropped */
};

/* Bytes a waiting message is charged beyond its frame: its node and its struct msg, so
 * that a flood of empty messages is bounded too. */
#define MEM_ITEM_OVERHEAD (sizeof(struct mem_item) + sizeof(struct msg))

/* One session key that has sockets online here or messages waiting; freed as soon as it
 * has neither. */
struct mem_queue {
    struct map_node node;  /* in mem_broker.queues; node.key points at key[] */
    struct mem_item *head; /* owned: FIFO of offline messages, oldest first */
    struct mem_item *tail; /* borrowed: last item of head's list */
    uint32_t nitems;       /* items in the FIFO, bounded by max_queue */
    struct qd_key socks;   /* online sockets of this key (each a mem_sess's q) */
    char key[];            /* NUL-terminated copy of the session key */
};

/* The backend's state for one attached session (s->bpriv). */
struct mem_sess {
    struct session *s;        /* borrowed: the core's session; detach frees this first */
    struct mem_broker *p;     /* borrowed: outlives ms */
    struct mem_queue *q;      /* borrowed: holds sock in q->socks; NULL once the broker closes */
    struct qd_sock sock;      /* embedded: s's place among its key's sockets */
    struct later_call attach; /* embedded: the drain + 101, queued until it runs (or is
                               * cancelled by detach) */
    uint16_t nsubs;           /* entries in subs[] (= s->ntopics) */
    struct topics_sub subs[]; /* one per topic of s */
};

struct mem_broker {
    struct broker *b;         /* borrowed: b->priv points here */
    struct later later;       /* embedded: callbacks and attach completions, in order */
    uv_timer_t timer;         /* embedded: TTL sweep; unref'd, active only with items */
    struct map queues;        /* key -> struct mem_queue (owned) */
    struct topics topics;     /* topic -> local subscribers (topics owned by it) */
    struct mem_item *ghead;   /* borrowed: expiry list, oldest (items owned by queues) */
    struct mem_item *gtail;   /* borrowed: expiry list, youngest */
    uint64_t ttl_ms;          /* [broker] ttl */
    uint32_t max_queue;       /* [broker] max_queue */
    uint64_t max_bytes;       /* [broker] memory_max_bytes: bound on bytes below */
    uint64_t bytes;           /* mem_item_cost() of every item in every FIFO */
    int closing;              /* close() was called: refuse new work */
    int open_handles;         /* later + timer not yet closed */
    broker_close_cb close_cb; /* the owner's close callback */
};

/* --- queues and offline items --- */

static void mem_on_timer(uv_timer_t *h);

/* Wake at the earliest expiry, or never when nothing waits (no polling when idle). */
static void mem_timer_arm(struct mem_broker *p)
{
    uint64_t now, due;
    if (p->ghead == NULL) {
        uv_timer_stop(&p->timer);
        return;
    }
    now = uv_now(p->b->loop);
    due = p->ghead->expires_at;
    uv_timer_start(&p->timer, mem_on_timer, due > now ? due - now : 0, 0);
}

static struct mem_queue *mem_queue_find(struct mem_broker *p, const char *key, size_t len)
{
    struct map_node *n = map_get(&p->queues, key, len);
    return n != NULL ? map_entry(n, struct mem_queue, node) : NULL;
}

/* A new empty queue for key, in p->queues; NULL on allocation failure. */
static struct mem_queue *mem_queue_new(struct mem_broker *p, const char *key, size_t len)
{
    struct mem_queue *q = calloc(1, sizeof(*q) + len + 1);
    if (q == NULL)
        return NULL;
    memcpy(q->key, key, len);
    q->key[len] = '\0';
    q->node.key = q->key;
    q->node.key_len = (uint32_t)len;
    if (map_put(&p->queues, &q->node) < 0) { /* only ENOMEM: the key was looked up first */
        free(q);
        return NULL;
    }
    return q;
}

static void mem_queue_free_if_empty(struct mem_broker *p, struct mem_queue *q)
{
    if (q->socks.nsocks != 0 || q->head != NULL)
        return;
    map_remove(&p->queues, &q->node);
    free(q);
}

/* What a waiting message counts against max_bytes (see the file header). m is sealed and
 * immutable while queued, so the same value comes back when the item is dropped. */
static uint64_t mem_item_cost(const struct msg *m)
{
    return (uint64_t)m->hdr_len + m->len + MEM_ITEM_OVERHEAD;
}

/* Queue it (owned by the caller until now) at the tail of q, holding a ref on m; the
 * caller checked that mem_item_cost(m) fits. */
static void mem_item_append(struct mem_broker *p, struct mem_queue *q, struct mem_item *it,
                            struct msg *m)
{
    uint64_t now = uv_now(p->b->loop);
    it->m = msg_ref(m);
    it->q = q;
    it->expires_at = p->ttl_ms > UINT64_MAX - now ? UINT64_MAX : now + p->ttl_ms;
    it->next = NULL;
    if (q->tail != NULL)
        q->tail->next = it;
    else
        q->head = it;
    q->tail = it;
    q->nitems++;
    p->bytes += mem_item_cost(m);
    it->gnext = NULL;
    it->gprev = p->gtail;
    if (p->gtail != NULL)
        p->gtail->gnext = it;
    else
        p->ghead = it;
    p->gtail = it;
    if (p->ghead == it)
        mem_timer_arm(p); /* first waiting message: start the sweep timer */
}

/* Remove q's oldest item from q and from the expiry list and free it, releasing its ref
 * (the receiver, if any, took its own) and its bytes. Every way out of a FIFO (delivery,
 * expiry, close) comes through here. */
static void mem_item_drop_head(struct mem_broker *p, struct mem_queue *q)
{
    struct mem_item *it = q->head;
    q->head = it->next;
    if (q->head == NULL)
        q->tail = NULL;
    q->nitems--;
    assert(p->bytes >= mem_item_cost(it->m));
    p->bytes -= mem_item_cost(it->m);
    if (it->gprev != NULL)
        it->gprev->gnext = it->gnext;
    else
        p->ghead = it->gnext;
    if (it->gnext != NULL)
        it->gnext->gprev = it->gprev;
    else
        p->gtail = it->gprev;
    msg_unref(it->m);
    free(it);
}

/* --- delivery --- */

/* Give m to one socket of q, round-robin, skipping sockets that refused before (they are
 * being closed). 0 when one took it, else UV_ENOENT (nobody online could). */
static int mem_queue_deliver(struct mem_queue *q, struct msg *m)
{
    return qd_key_give(&q->socks, 0, 0, m) != NULL ? 0 : UV_ENOENT;
}

/* Hand q's waiting messages to ms, oldest first, dropping expired ones; stop at the first
 * refusal (s is closing: the rest stay for the next socket or the TTL). */
static void mem_queue_drain(struct mem_broker *p, struct mem_queue *q, struct mem_sess *ms)
{
    uint64_t now = uv_now(p->b->loop);
    struct mem_item *it;
    while ((it = q->head) != NULL) {
        if (it->expires_at <= now)
            p->b->dropped++;
        else if (qd_sock_give(&ms->sock, 0, it->m) != 0)
            break;
        mem_item_drop_head(p, q);
    }
    mem_timer_arm(p);
}

/* Length of a key or topic name if it is 1..KEY_MAX_LEN bytes, else 0. Full validation
 * (key_valid) is the core's job; this only keeps the map and copies bounded. */
static size_t mem_name_len(const char *name)
{
    size_t len = strnlen(name, KEY_MAX_LEN + 1);
    return len <= KEY_MAX_LEN ? len : 0;
}

/* --- broker_ops --- */

static void mem_on_open_failed(uv_handle_t *h)
{
    free(h->data);
}

static int mem_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    struct mem_broker *p = calloc(1, sizeof(*p));
    int rc;
    if (p == NULL)
        return UV_ENOMEM;
    p->b = b;
    p->ttl_ms = cfg->ttl_ms;
    p->max_queue = cfg->max_queue;
    p->max_bytes = cfg->memory_max_bytes;
    map_init(&p->queues);
    topics_init(&p->topics, NULL, NULL, NULL); /* local only: no remote subscriptions */
    /* Neither init fails on Unix (libuv 1.44 always returns 0); checked for the contract. */
    if ((rc = later_init(&p->later, loop)) < 0) {
        free(p);
        return rc;
    }
    p->later.data = p;
    if ((rc = uv_timer_init(loop, &p->timer)) < 0) {
        p->later.idle.data = p;
        uv_close((uv_handle_t *)&p->later.idle, mem_on_open_failed); /* frees p */
        return rc;
    }
    p->timer.data = p;
    uv_unref((uv_handle_t *)&p->timer); /* pending expiries alone do not keep the loop alive */
    p->open_handles = 2;
    b->priv = p;
    log_debug("event=broker_open type=memory ttl_ms=%llu max_queue=%u max_bytes=%llu",
              (unsigned long long)p->ttl_ms, p->max_queue, (unsigned long long)p->max_bytes);
    return 0;
}

/* The attach's completion, queued on p->later: drain the key's backlog into the socket,
 * then the 101 (status 0). With an error (the broker closed first) ms is let go and the
 * client gets the error: exactly one session_attached either way. */
static void mem_on_attach_due(void *arg, int status)
{
    struct mem_sess *ms = arg;
    struct session *s = ms->s;
    if (status < 0) {
        s->bpriv = NULL;
        free(ms);
        session_attached(s, status);
        return;
    }
    mem_queue_drain(ms->p, ms->q, ms);
    session_attached(s, 0);
}

static int mem_attach(struct broker *b, struct session *s)
{
    struct mem_broker *p = b->priv;
    struct mem_sess *ms;
    struct mem_queue *q;
    size_t len = s->key_len;
    int rc;
    s->bpriv = NULL; /* so that a detach after a failed attach is a no-op */
    if (p == NULL || p->closing)
        return UV_ECANCELED;
    if (len == 0 || len > KEY_MAX_LEN)
        return UV_EINVAL;
    ms = calloc(1, sizeof(*ms) + (size_t)s->ntopics * sizeof(ms->subs[0]));
    if (ms == NULL)
        return UV_ENOMEM;
    ms->s = s;
    ms->p = p;
    ms->nsubs = s->ntopics;
    q = mem_queue_find(p, s->key, len);
    if (q == NULL && (q = mem_queue_new(p, s->key, len)) == NULL) {
        free(ms);
        return UV_ENOMEM;
    }
    if ((rc = topics_subscribe(&p->topics, s, ms->subs)) < 0) {
        mem_queue_free_if_empty(p, q);
        free(ms);
        return rc;
    }
    /* Subscriptions are in place now; the key's backlog is drained right before the 101
     * (mem_on_attach_due), so pushes accepted meanwhile queue behind it in order. */
    qd_key_link(&q->socks, &ms->sock, s);
    ms->q = q;
    s->bpriv = ms;
    later_call_add(&p->later, &ms->attach, mem_on_attach_due, ms, 0);
    return 0;
}

static void mem_detach(struct broker *b, struct session *s)
{
    struct mem_broker *p = b->priv;
    struct mem_sess *ms = s->bpriv;
    if (p == NULL || ms == NULL)
        return; /* never attached, attach failed, or the broker already let it go */
    later_cancel(&p->later, &ms->attach); /* session_attached will not run */
    topics_unsubscribe(&p->topics, ms->subs, ms->nsubs);
    if (ms->q != NULL) {
        qd_key_unlink(&ms->q->socks, &ms->sock);
        mem_queue_free_if_empty(p, ms->q);
    }
    s->bpriv = NULL;
    free(ms);
}

static int mem_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb, void *arg)
{
    struct mem_broker *p = b->priv;
    struct later_call *c;
    struct mem_queue *q;
    struct mem_item *it;
    uint64_t cost;
    size_t len;
    int status = 0;
    if (p == NULL || p->closing)
        return UV_ECANCELED;
    if ((len = mem_name_len(key)) == 0)
        return UV_EINVAL;
    if ((c = later_reserve()) == NULL) /* before anything that cannot be undone */
        return UV_ENOMEM;
    q = mem_queue_find(p, key, len);
    /* Straight to a socket only when nothing older waits, so a key's messages stay in order. */
    if (q != NULL && q->head == NULL && mem_queue_deliver(q, m) == 0)
        goto done;
    if ((q != NULL ? q->nitems : 0) >= p->max_queue) {
        status = UV_ENOBUFS; /* the core answers 429 */
        goto done;
    }
    /* Then the bound over all sessions: one client pushing big bodies to many offline
     * keys must not hold more than max_bytes of this process's RAM for the TTL. */
    cost = mem_item_cost(m);
    if (cost > p->max_bytes || p->bytes > p->max_bytes - cost) {
        status = UV_ENOSPC; /* the core answers 503 "memory broker full" */
        b->refused_full++;
        goto done;
    }
    if ((it = malloc(sizeof(*it))) == NULL)
        goto nomem;
    if (q == NULL && (q = mem_queue_new(p, key, len)) == NULL) {
        free(it);
        goto nomem;
    }
    mem_item_append(p, q, it, m);
done:
    later_push_reserved(&p->later, c, cb, arg, status);
    return 0;
nomem:
    later_unreserve(c);
    return UV_ENOMEM;
}

static int mem_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb,
                       void *arg)
{
    struct mem_broker *p = b->priv;
    struct later_call *c;
    size_t len;
    if (p == NULL || p->closing)
        return UV_ECANCELED;
    if ((len = mem_name_len(topic)) == 0)
        return UV_EINVAL;
    if ((c = later_reserve()) == NULL)
        return UV_ENOMEM;
    /* A refusal closes that socket and is none of the publisher's business. */
    (void)topics_publish(&p->topics, topic, len, m);
    later_push_reserved(&p->later, c, cb, arg, 0);
    return 0;
}

static int mem_ready(struct broker *b)
{
    struct mem_broker *p = b->priv;
    return p != NULL && !p->closing;
}

/* Drop every expired message (the oldest first, all in one pass) and re-arm. */
static void mem_on_timer(uv_timer_t *h)
{
    struct mem_broker *p = h->data;
    uint64_t now = uv_now(p->b->loop);
    unsigned long n = 0;
    struct mem_item *it;
    while ((it = p->ghead) != NULL && it->expires_at <= now) {
        struct mem_queue *q = it->q;
        assert(q->head == it); /* same TTL for all: the oldest item heads its own queue */
        mem_item_drop_head(p, q);
        mem_queue_free_if_empty(p, q);
        n++;
    }
    p->b->dropped += n;
    if (n > 0)
        log_debug("event=broker_expired type=memory count=%lu", n);
    mem_timer_arm(p);
}

/* Both handles are closed, and later ran every call that still waited (pending attaches
 * with UV_ECANCELED, accepted pushes and publishes with their status): free p, then cb. */
static void mem_close_step(struct mem_broker *p)
{
    struct broker *b = p->b;
    broker_close_cb cb = p->close_cb;
    if (--p->open_handles > 0)
        return;
    b->priv = NULL;
    free(p);
    if (cb != NULL)
        cb(b);
}

static void mem_on_timer_closed(uv_handle_t *h)
{
    mem_close_step(h->data);
}

static void mem_on_later_closed(struct later *l)
{
    mem_close_step(l->data);
}

/* Free every queue, message and subscription now; sessions still online are closed with
 * 1001 and let go (a later detach of them is a no-op while b's memory lives); the
 * callbacks (pending attaches, pushes, then cb) run once both handles are closed. */
static void mem_close(struct broker *b, broker_close_cb cb)
{
    struct mem_broker *p = b->priv;
    struct map_iter iter;
    struct map_node *n;
    if (p == NULL || p->closing)
        return; /* already closing: the first close's cb will run */
    p->closing = 1;
    p->close_cb = cb;
    map_iter_init(&iter, &p->queues);
    while ((n = map_iter_next(&iter)) != NULL) {
        struct mem_queue *q = map_entry(n, struct mem_queue, node);
        struct qd_sock *sock;
        while ((sock = q->socks.socks) != NULL) {
            struct session *s = sock->s;
            struct mem_sess *ms = s->bpriv;
            qd_key_unlink(&q->socks, sock);
            topics_unsubscribe(&p->topics, ms->subs, ms->nsubs);
            ms->q = NULL;
            if (later_call_queued(&ms->attach)) {
                /* answered with an error when later closes (mem_on_attach_due) */
                later_call_status(&ms->attach, UV_ECANCELED);
                continue;
            }
            s->bpriv = NULL;
            free(ms);
            session_close(s, MEM_CLOSE_CODE);
        }
        while (q->head != NULL) {
            mem_item_drop_head(p, q);
            b->dropped++;
        }
        map_remove(&p->queues, n);
        free(q);
    }
    assert(topics_count(&p->topics) == 0); /* every subscriber was in some queue */
    assert(p->bytes == 0);                 /* every item went through mem_item_drop_head */
    map_free(&p->queues);
    topics_free(&p->topics);
    later_close(&p->later, mem_on_later_closed);
    uv_close((uv_handle_t *)&p->timer, mem_on_timer_closed);
}

const struct broker_ops broker_memory_ops = {
    .name = "memory",
    .open = mem_open,
    .attach = mem_attach,
    .detach = mem_detach,
    .push = mem_push,
    .publish = mem_publish,
    .upstream = NULL, /* no in-process reader of ws.send.S: the core drops client frames */
    .ack = NULL,      /* at-most-once: msg ids are always 0 */
    .ready = mem_ready,
    .close = mem_close,
};
