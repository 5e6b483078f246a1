/* kafka.c — the "kafka" broker (DESIGN.md §3, §4): sessions, broadcasts and upstream over
 * three Kafka topics, pub/sub-like, at-least-once per node to connected sockets.
 *
 * Names (prefix p = [broker] prefix): records for session S are on topic p.recv with key S
 * (services produce there; so does POST /push/S), broadcasts on p.topic with key T, client
 * frames (upstream = on) go to p.send with key S. The gateway produces with acks=all, an
 * idempotent producer and the murmur2_random partitioner (Java's and kafkajs's default), and
 * answers 202 from the delivery report.
 *
 * Every node reads every partition of p.recv and p.topic (kafka_io.c assigns them; no
 * consumer group rebalancing) and hands each record to every local socket of its key (or,
 * for p.topic, every local socket subscribed to T). A record whose key has no socket here
 * is skipped without a copy or an allocation; one with sockets is copied once into a
 * refcounted msg shared by all of them.
 *
 * Offsets: a p.recv record given to sockets gets one msg id (a per-node sequence number)
 * and a pending count; each socket's ack (its frame was written) or detach (the socket is
 * gone: a pub/sub message is not kept for it) takes one off. Per partition, the records
 * in flight wait in a ring in offset order, and the partition's committable offset moves
 * past a record only when it and every record before it are done (skipped records ride on
 * the entry before them), so a committed offset never passes an unwritten frame. The
 * offsets are handed to librdkafka's offset store once per loop iteration and committed
 * by its auto-commit (every second, and at close). After a kill -9 the records after the
 * last commit are read again: a restarted node waits [kafka] replay_delay before reading
 * them, so clients that reconnect meanwhile get them (duplicates possible, at-least-once).
 * A record older than [broker] ttl (by its timestamp) is never delivered (counted in
 * wsgate_messages_dropped_total): that bounds what a node that was down for long replays.
 *
 * Built on the shared delivery core: later.h runs the attach completions and the offset
 * store (one uv_idle_t, active only while one waits), topics.h holds the broadcast
 * subscriptions and fans p.topic records out, qdeliver.h's qd_key keeps a key's sockets
 * (every one of them gets each record: no round-robin, no window). This file keeps what is
 * Kafka's: the partitions' offsets, the per-record pending counts and per-socket refs that
 * move them, the TTL check and the close with its final commit. Push, publish and upstream
 * complete from librdkafka's delivery report (kafka_io.c), which already runs on a later
 * loop iteration than the produce.
 *
 * Does NOT: buffer for offline sessions (a record whose session is not connected to any
 * node is gone for it), hold back for slow clients (a slow socket is closed 1008 by the
 * core, as on redis-pubsub: the shared consumer is never paused for one client), settle,
 * or talk to librdkafka itself (kafka_io.c does). Loop thread only. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker.h"
#include "config.h"
#include "kafka_io.h"
#include "later.h"
#include "log.h"
#include "map.h"
#include "msg.h"
#include "qdeliver.h"
#include "session.h"
#include "topics.h"
#include "util.h"

#define KAFKA_CLOSE_CODE 1001 /* sessions still attached when the broker closes: going away */

/* --- a growable ring of fixed-size items (cap a power of two) --- */

struct kafka_ring {
    void *items;   /* owned: cap items of the user's size */
    uint32_t head; /* index of the oldest item */
    uint32_t count;
    uint32_t cap;
};

static void *kafka_ring_at(const struct kafka_ring *r, size_t size, uint32_t i)
{
    return (char *)r->items + (size_t)((r->head + i) & (r->cap - 1)) * size;
}

/* Room for one more item: 0 or UV_ENOMEM (the ring is unchanged). */
static int kafka_ring_reserve(struct kafka_ring *r, size_t size)
{
    uint32_t ncap = r->cap != 0 ? r->cap * 2 : 8;
    char *n;
    if (r->count < r->cap)
        return 0;
    if (ncap == 0 || (n = malloc((size_t)ncap * size)) == NULL)
        return UV_ENOMEM;
    for (uint32_t i = 0; i < r->count; i++)
        memcpy(n + (size_t)i * size, kafka_ring_at(r, size, i), size);
    free(r->items);
    r->items = n;
    r->head = 0;
    r->cap = ncap;
    return 0;
}

/* The new newest item, after kafka_ring_reserve succeeded. */
static void *kafka_ring_push(struct kafka_ring *r, size_t size)
{
    return kafka_ring_at(r, size, r->count++);
}

static void kafka_ring_pop(struct kafka_ring *r)
{
    r->head = (r->head + 1) & (r->cap - 1);
    r->count--;
}

/* --- state --- */

/* A p.recv record given to sockets, until every one of them wrote or dropped it. */
struct kafka_rec {
    uint64_t seq;     /* its msg id */
    int64_t end;      /* offset after it and after the skipped records that followed it */
    uint32_t pending; /* sockets that have neither acked nor detached */
};

/* One frame a socket got with msg id seq and has not written yet. */
struct kafka_ref {
    uint64_t seq; /* msg id */
    int32_t part; /* p.recv partition of the record */
};

/* One p.recv partition as this node reads it. */
struct kafka_part {
    struct kafka_ring recs; /* struct kafka_rec in offset (and seq) order */
    int64_t next;           /* offset after the last record read; -1 before the first */
    int64_t done;           /* everything below is written or needed nothing; -1 unknown */
    int64_t stored;         /* last done handed to the offset store; -1 none */
};

/* One local session key with sockets. */
struct kafka_key {
    struct map_node node; /* in kafka.keys; node.key points at key[] */
    struct qd_key socks;  /* attached sockets of this key (each a kafka_sess's sock) */
    char key[];           /* NUL-terminated copy */
};

/* The backend's state for one attached socket (s->bpriv). */
struct kafka_sess {
    struct session *s;        /* borrowed: the core's; detach frees this */
    struct kafka_key *key;    /* borrowed: holds sock in key->socks; NULL once the broker closes */
    struct qd_sock sock;      /* embedded: s's place among its key's sockets */
    struct later_call attach; /* embedded: the 101, queued until it runs (or detach cancels it) */
    struct kafka_ring refs;   /* struct kafka_ref in delivery (seq) order */
    uint16_t nsubs;           /* entries in subs[] (= s->ntopics) */
    struct topics_sub subs[]; /* one per topic of s */
};

struct kafka {
    struct broker *b;         /* borrowed: b->priv points here */
    struct kio *io;           /* owned: librdkafka on the loop; closed by kafka_close */
    struct later later;       /* embedded: attach completions and offset stores, in order */
    struct later_call store;  /* embedded: kafka_store queued on later (some done moved) */
    struct map keys;          /* key -> struct kafka_key (owned) */
    struct topics topics;     /* topic -> local subscribers (topics owned by it) */
    struct kafka_part *parts; /* owned: p.recv partitions, grown as records arrive */
    int32_t nparts;           /* entries in parts */
    uint64_t seq;             /* last msg id given */
    uint8_t closing;          /* close() was called */
    int close_pending;        /* later and kio still closing */
    broker_close_cb close_cb; /* the owner's */
};

static void kafka_store(struct kafka *k);

static struct kafka_sess *kafka_sess_of(struct qd_sock *q)
{
    return (struct kafka_sess *)(void *)((char *)q - offsetof(struct kafka_sess, sock));
}

static void kafka_on_store_due(void *arg, int status)
{
    (void)status;
    kafka_store(arg);
}

/* A partition's done moved: store it on this loop iteration's later pass (at once while
 * closing: nothing more is queued on later then). */
static void kafka_store_soon(struct kafka *k)
{
    if (k->closing)
        kafka_store(k);
    else if (!later_call_queued(&k->store))
        later_call_add(&k->later, &k->store, kafka_on_store_due, k, 0);
}

/* --- offsets --- */

static struct kafka_part *kafka_part_get(struct kafka *k, int32_t part)
{
    struct kafka_part *n;
    if (part < 0)
        return NULL;
    if (part >= k->nparts) {
        if ((n = realloc(k->parts, ((size_t)part + 1) * sizeof(*n))) == NULL)
            return NULL;
        for (int32_t i = k->nparts; i <= part; i++)
            n[i] = (struct kafka_part){.next = -1, .done = -1, .stored = -1};
        k->parts = n;
        k->nparts = part + 1;
    }
    return &k->parts[part];
}

/* The record at offset needs nothing (no socket here, too old): done moves past it now,
 * or with the record in flight before it. */
static void kafka_part_skip(struct kafka *k, struct kafka_part *p, int64_t offset)
{
    if (p->recs.count == 0) {
        p->done = offset + 1;
        kafka_store_soon(k);
        return;
    }
    ((struct kafka_rec *)kafka_ring_at(&p->recs, sizeof(struct kafka_rec), p->recs.count - 1))
        ->end = offset + 1;
}

/* One socket is done with record seq of partition part (written, or the socket left). */
static void kafka_release(struct kafka *k, int32_t part, uint64_t seq)
{
    const size_t sz = sizeof(struct kafka_rec);
    struct kafka_part *p;
    struct kafka_rec *rec;
    uint32_t lo = 0, hi;
    if (part < 0 || part >= k->nparts)
        return;
    p = &k->parts[part];
    hi = p->recs.count;
    while (lo < hi) { /* seq order = ring order */
        uint32_t mid = lo + (hi - lo) / 2;
        if (((struct kafka_rec *)kafka_ring_at(&p->recs, sz, mid))->seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == p->recs.count || (rec = kafka_ring_at(&p->recs, sz, lo))->seq != seq)
        return; /* forgotten when the partition's offsets went back */
    if (--rec->pending > 0 || lo != 0)
        return;
    while (p->recs.count > 0 && (rec = kafka_ring_at(&p->recs, sz, 0))->pending == 0) {
        p->done = rec->end;
        kafka_ring_pop(&p->recs);
    }
    kafka_store_soon(k);
}

/* Hand every partition's new done to the offset store (kafka_io.c: committed later). */
static void kafka_store(struct kafka *k)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    const char *topic = kio_topic_name(k->io, KIO_RECV);
    for (int32_t i = 0; i < k->nparts; i++) {
        struct kafka_part *p = &k->parts[i];
        if (p->done < 0 || p->done == p->stored)
            continue;
        if (l == NULL && (l = rd_kafka_topic_partition_list_new(k->nparts)) == NULL)
            return; /* stored with the next change */
        rd_kafka_topic_partition_list_add(l, topic, i)->offset = p->done;
        p->stored = p->done;
    }
    if (l != NULL) {
        kio_store(k->io, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
}

/* --- records --- */

static int kafka_too_old(const rd_kafka_message_t *rm, uint64_t ttl_ms)
{
    int64_t ts = rd_kafka_message_timestamp(rm, NULL);
    struct timespec now;
    if (ts < 0)
        return 0;
    clock_gettime(CLOCK_REALTIME, &now);
    return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000 - ts > (int64_t)ttl_ms;
}

static struct msg *kafka_msg(const struct kafka *k, const rd_kafka_message_t *rm)
{
    /* a null value (tombstone) is an empty message */
    return msg_new_copy(rm->payload != NULL ? rm->payload : "", rm->len, k->b->cfg->frame_type);
}

static void kafka_on_recv(struct kafka *k, const rd_kafka_message_t *rm)
{
    struct kafka_part *p = kafka_part_get(k, rm->partition);
    struct map_node *n = NULL;
    struct qd_sock *q;
    struct kafka_rec *rec;
    struct msg *m;
    uint32_t taken = 0;
    uint64_t seq;
    if (p == NULL)
        return; /* out of memory: never stored, so read again after a restart */
    if (p->next >= 0 && rm->offset < p->next) {
        /* the log went back (a broker that lost it, or our position fell off its start and
         * restarted at the earliest record): what was in flight is forgotten */
        log_warn("event=kafka_offsets_back partition=%d expected=%lld got=%lld", (int)rm->partition,
                 (long long)p->next, (long long)rm->offset);
        p->recs.count = 0;
    }
    p->next = rm->offset + 1;
    if (rm->key_len > 0 && rm->key_len <= KEY_MAX_LEN)
        n = map_get(&k->keys, rm->key, rm->key_len);
    if (n == NULL) {
        kafka_part_skip(k, p, rm->offset); /* no socket of this session here */
        return;
    }
    if (kafka_too_old(rm, k->b->cfg->ttl_ms) ||
        kafka_ring_reserve(&p->recs, sizeof(struct kafka_rec)) < 0 ||
        (m = kafka_msg(k, rm)) == NULL) {
        k->b->dropped++;
        kafka_part_skip(k, p, rm->offset);
        return;
    }
    seq = ++k->seq;
    /* every socket of the key, not one of them: qd_key_give's round-robin is for queues */
    for (q = map_entry(n, struct kafka_key, node)->socks.socks; q != NULL; q = q->next) {
        struct kafka_sess *ks = kafka_sess_of(q);
        struct kafka_ref *ref;
        /* session_deliver, not qd_sock_give: a refusal is not remembered (one from a
         * failed allocation leaves the socket open), so the next record is offered again */
        if (kafka_ring_reserve(&ks->refs, sizeof(*ref)) < 0 || session_deliver(q->s, seq, m) != 0)
            continue; /* not taken: nothing to wait for on this socket */
        ref = kafka_ring_push(&ks->refs, sizeof(*ref));
        ref->seq = seq;
        ref->part = rm->partition;
        taken++;
    }
    msg_unref(m);
    if (taken == 0) {
        kafka_part_skip(k, p, rm->offset);
        return;
    }
    rec = kafka_ring_push(&p->recs, sizeof(*rec));
    rec->seq = seq;
    rec->end = rm->offset + 1;
    rec->pending = taken;
}

static void kafka_on_broadcast(struct kafka *k, const rd_kafka_message_t *rm)
{
    struct topics_topic *t;
    struct msg *m;
    if (rm->key_len == 0 || rm->key_len > KEY_MAX_LEN ||
        (t = topics_find(&k->topics, rm->key, rm->key_len)) == NULL)
        return;
    if (kafka_too_old(rm, k->b->cfg->ttl_ms) || (m = kafka_msg(k, rm)) == NULL) {
        k->b->dropped++;
        return;
    }
    (void)topics_deliver(t, m); /* a refusal closes that socket: at-most-once */
    msg_unref(m);
}

static void kafka_on_record(void *arg, enum kio_topic t, const rd_kafka_message_t *rm)
{
    if (t == KIO_TOPIC)
        kafka_on_broadcast(arg, rm);
    else
        kafka_on_recv(arg, rm);
}

/* A partition nothing was read from yet is done up to its start offset, stored (and so
 * committed) at once: after a restart, records produced meanwhile in a partition that was
 * idle are read from there, not skipped as if no offset had ever been committed. */
static void kafka_on_assigned(void *arg, const rd_kafka_topic_partition_list_t *l)
{
    struct kafka *k = arg;
    const char *recv = kio_topic_name(k->io, KIO_RECV);
    for (int i = 0; i < l->cnt; i++) {
        const rd_kafka_topic_partition_t *e = &l->elems[i];
        struct kafka_part *p;
        if (e->offset < 0 || strcmp(e->topic, recv) != 0 ||
            (p = kafka_part_get(k, e->partition)) == NULL || p->next >= 0)
            continue;
        p->done = e->offset;
        kafka_store_soon(k);
    }
}

static const struct kio_handlers kafka_handlers = {
    .on_record = kafka_on_record,
    .on_assigned = kafka_on_assigned,
};

/* --- keys, topics, sessions --- */

/* The entry of key name[0..len), created when absent; NULL on allocation failure. */
static struct kafka_key *kafka_key_get(struct kafka *k, const char *name, size_t len)
{
    struct map_node *n = map_get(&k->keys, name, len);
    struct kafka_key *key;
    if (n != NULL)
        return map_entry(n, struct kafka_key, node);
    if ((key = calloc(1, sizeof(*key) + len + 1)) == NULL)
        return NULL;
    memcpy(key->key, name, len);
    key->node.key = key->key;
    key->node.key_len = (uint32_t)len;
    if (map_put(&k->keys, &key->node) < 0) { /* only ENOMEM: looked up first */
        free(key);
        return NULL;
    }
    return key;
}

/* Take ks out of its key; the key goes with its last socket. */
static void kafka_key_unlink(struct kafka *k, struct kafka_sess *ks)
{
    struct kafka_key *key = ks->key;
    if (key == NULL)
        return;
    qd_key_unlink(&key->socks, &ks->sock);
    ks->key = NULL;
    if (key->socks.nsocks == 0) {
        map_remove(&k->keys, &key->node);
        free(key);
    }
}

/* Every unwritten frame of ks is done for the offsets (the socket is gone). */
static void kafka_refs_release(struct kafka *k, struct kafka_sess *ks)
{
    while (ks->refs.count > 0) {
        struct kafka_ref r = *(struct kafka_ref *)kafka_ring_at(&ks->refs, sizeof(r), 0);
        kafka_ring_pop(&ks->refs);
        kafka_release(k, r.part, r.seq);
    }
    free(ks->refs.items);
    ks->refs = (struct kafka_ring){0};
}

/* --- broker_ops --- */

static void kafka_on_open_failed(struct later *l)
{
    free(l->data);
}

static int kafka_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    struct kafka *k = calloc(1, sizeof(*k));
    int rc;
    if (k == NULL)
        return UV_ENOMEM;
    k->b = b;
    map_init(&k->keys);
    topics_init(&k->topics, NULL, NULL, NULL); /* every node reads all of p.topic: no hooks */
    if ((rc = later_init(&k->later, loop)) < 0) {
        free(k);
        return rc;
    }
    k->later.data = k;
    if ((rc = kio_open(&k->io, b, loop, cfg, &kafka_handlers, k)) < 0) {
        later_close(&k->later, kafka_on_open_failed); /* frees k */
        return rc;
    }
    b->priv = k;
    log_info("event=broker_open type=kafka brokers=%s prefix=%s", cfg->kafka_brokers, cfg->prefix);
    return 0;
}

static int kafka_ready(struct broker *b)
{
    struct kafka *k = b->priv;
    return k != NULL && !k->closing && kio_ready(k->io);
}

/* The attach's completion, queued on k->later: the socket is registered since attach, so
 * the 101 goes out now, never inside attach. With an error (the broker closed first) ks is
 * let go and the client gets the error: exactly one session_attached either way. */
static void kafka_on_attach_due(void *arg, int status)
{
    struct kafka_sess *ks = arg;
    struct session *s = ks->s;
    if (status < 0) {
        s->bpriv = NULL;
        free(ks);
    }
    session_attached(s, status);
}

static int kafka_attach(struct broker *b, struct session *s)
{
    struct kafka *k = b->priv;
    struct kafka_sess *ks;
    struct kafka_key *key;
    int rc;
    s->bpriv = NULL; /* so that a detach after a failed attach is a no-op */
    if (k == NULL || k->closing)
        return UV_ECANCELED;
    if (!kio_ready(k->io))
        return UV_ENOTCONN;
    if (s->key_len == 0 || s->key_len > KEY_MAX_LEN)
        return UV_EINVAL;
    if ((ks = calloc(1, sizeof(*ks) + (size_t)s->ntopics * sizeof(ks->subs[0]))) == NULL)
        return UV_ENOMEM;
    ks->s = s;
    ks->nsubs = s->ntopics;
    if ((rc = topics_subscribe(&k->topics, s, ks->subs)) < 0) {
        free(ks);
        return rc;
    }
    if ((key = kafka_key_get(k, s->key, s->key_len)) == NULL) {
        topics_unsubscribe(&k->topics, ks->subs, ks->nsubs);
        free(ks);
        return UV_ENOMEM;
    }
    qd_key_link(&key->socks, &ks->sock, s);
    ks->key = key;
    s->bpriv = ks;
    later_call_add(&k->later, &ks->attach, kafka_on_attach_due, ks, 0);
    return 0;
}

static void kafka_detach(struct broker *b, struct session *s)
{
    struct kafka *k = b->priv;
    struct kafka_sess *ks = s->bpriv;
    if (k == NULL || ks == NULL)
        return; /* never attached, attach failed, or the broker already let it go */
    later_cancel(&k->later, &ks->attach); /* session_attached will not run */
    topics_unsubscribe(&k->topics, ks->subs, ks->nsubs);
    kafka_key_unlink(k, ks);
    s->bpriv = NULL;
    kafka_refs_release(k, ks);
    free(ks);
}

/* Acks come in delivery order (the core acks as its output queue empties), so every ref
 * up to msg_id is done: an earlier one without an ack was dropped unwritten. */
static void kafka_ack(struct broker *b, struct session *s, uint64_t msg_id)
{
    struct kafka *k = b->priv;
    struct kafka_sess *ks = s->bpriv;
    if (k == NULL || ks == NULL)
        return;
    while (ks->refs.count > 0) {
        struct kafka_ref r = *(struct kafka_ref *)kafka_ring_at(&ks->refs, sizeof(r), 0);
        if (r.seq > msg_id)
            break;
        kafka_ring_pop(&ks->refs);
        kafka_release(k, r.part, r.seq);
    }
}

static int kafka_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb,
                      void *arg)
{
    struct kafka *k = b->priv;
    if (k == NULL || k->closing)
        return UV_ECANCELED;
    return kio_produce(k->io, KIO_RECV, key, strlen(key), m, cb, arg);
}

static int kafka_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb,
                         void *arg)
{
    struct kafka *k = b->priv;
    if (k == NULL || k->closing)
        return UV_ECANCELED;
    return kio_produce(k->io, KIO_TOPIC, topic, strlen(topic), m, cb, arg);
}

static int kafka_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb,
                          void *arg)
{
    struct kafka *k = b->priv;
    if (k == NULL || k->closing)
        return UV_ECANCELED;
    return kio_produce(k->io, KIO_SEND, s->key, s->key_len, m, cb, arg);
}

/* later and kio are closed (later ran the attaches still pending, with UV_ECANCELED):
 * free k, then cb. */
static void kafka_close_step(struct kafka *k)
{
    struct broker *b = k->b;
    broker_close_cb cb = k->close_cb;
    if (--k->close_pending > 0)
        return;
    for (int32_t i = 0; i < k->nparts; i++)
        free(k->parts[i].recs.items);
    free(k->parts);
    map_free(&k->keys);
    topics_free(&k->topics);
    b->priv = NULL;
    free(k);
    if (cb != NULL)
        cb(b);
}

static void kafka_on_later_closed(struct later *l)
{
    kafka_close_step(l->data);
}

static void kafka_on_io_closed(void *arg)
{
    kafka_close_step(arg);
}

/* Sockets still attached are closed with 1001 and let go (their unwritten frames count as
 * done, so the final commit covers them); pending attaches are answered UV_ECANCELED when
 * later closes; then librdkafka is closed without blocking (kafka_io.c), and cb runs once
 * everything is freed. */
static void kafka_close(struct broker *b, broker_close_cb cb)
{
    struct kafka *k = b->priv;
    struct map_iter iter;
    struct map_node *n;
    if (k == NULL || k->closing)
        return;
    k->closing = 1;
    k->close_cb = cb;
    map_iter_init(&iter, &k->keys);
    while ((n = map_iter_next(&iter)) != NULL) {
        struct qd_sock *q = map_entry(n, struct kafka_key, node)->socks.socks, *next;
        for (; q != NULL; q = next) {
            struct kafka_sess *ks = kafka_sess_of(q);
            struct session *s = q->s;
            next = q->next;
            topics_unsubscribe(&k->topics, ks->subs, ks->nsubs);
            kafka_refs_release(k, ks);
            kafka_key_unlink(k, ks); /* frees the key with its last socket */
            if (later_call_queued(&ks->attach)) {
                later_call_status(&ks->attach, UV_ECANCELED); /* kafka_on_attach_due */
                continue;
            }
            s->bpriv = NULL;
            free(ks);
            session_close(s, KAFKA_CLOSE_CODE);
        }
    }
    kafka_store(k);
    later_cancel(&k->later, &k->store); /* stored just now */
    k->close_pending = 2;
    later_close(&k->later, kafka_on_later_closed);
    kio_close(k->io, kafka_on_io_closed, k);
}

const struct broker_ops broker_kafka_ops = {
    .name = "kafka",
    .open = kafka_open,
    .attach = kafka_attach,
    .detach = kafka_detach,
    .push = kafka_push,
    .publish = kafka_publish,
    .upstream = kafka_upstream,
    .ack = kafka_ack,
    .settle = NULL, /* pub/sub: a reconnect elsewhere never re-reads what this node wrote */
    .ready = kafka_ready,
    .close = kafka_close,
};
