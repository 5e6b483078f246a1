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
 * Does NOT: buffer for offline sessions (a record whose session is not connected to any
 * node is gone for it), hold back for slow clients (a slow socket is closed 1008 by the
 * core, as on redis-pubsub: the shared consumer is never paused for one client), settle,
 * or talk to librdkafka itself (kafka_io.c does). Loop thread only. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "broker.h"
#include "config.h"
#include "kafka_io.h"
#include "log.h"
#include "map.h"
#include "msg.h"
#include "session.h"
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

/* One local session key with sockets (s->bnext/bprev links them). */
struct kafka_key {
    struct map_node node;     /* in kafka.keys; node.key points at key[] */
    struct session *sessions; /* borrowed: attached sockets of this key */
    char key[];               /* NUL-terminated copy */
};

/* One broadcast topic with local subscribers. */
struct kafka_topic {
    struct map_node node;   /* in kafka.topics; node.key points at name[] */
    struct kafka_sub *subs; /* borrowed: each owned by its kafka_sess */
    char name[];            /* NUL-terminated copy */
};

struct kafka_sub {
    struct kafka_sub *next; /* borrowed: next subscriber of t */
    struct kafka_sub *prev; /* borrowed */
    struct kafka_topic *t;  /* borrowed: NULL when unused (a repeated topic name) */
    struct session *s;      /* borrowed: the subscriber */
};

/* The backend's state for one attached socket (s->bpriv). */
struct kafka_sess {
    struct session *s;        /* borrowed: the core's; detach frees this */
    struct kafka_key *key;    /* borrowed: holds s; NULL once the broker closes */
    struct kafka_sess *anext; /* borrowed: pending-attach list */
    struct kafka_sess *aprev; /* borrowed */
    uint8_t attaching;        /* session_attached has not run yet */
    struct kafka_ring refs;   /* struct kafka_ref in delivery (seq) order */
    uint16_t nsubs;           /* entries in subs[] (= s->ntopics) */
    struct kafka_sub subs[];  /* one per topic of s */
};

struct kafka {
    struct broker *b;  /* borrowed: b->priv points here */
    struct kio *io;    /* owned: librdkafka on the loop; closed by kafka_close */
    uv_idle_t idle;    /* embedded: attach completions, offset stores; active only with work */
    struct map keys;   /* key -> struct kafka_key (owned) */
    struct map topics; /* name -> struct kafka_topic (owned) */
    struct kafka_part *parts;       /* owned: p.recv partitions, grown as records arrive */
    int32_t nparts;                 /* entries in parts */
    uint64_t seq;                   /* last msg id given */
    struct kafka_sess *attach_head; /* borrowed: waiting for session_attached */
    struct kafka_sess *attach_tail; /* borrowed */
    uint8_t dirty;                  /* some partition's done is not stored yet */
    uint8_t closing;                /* close() was called */
    int close_pending;              /* idle handle and kio still closing */
    broker_close_cb close_cb;       /* the owner's */
};

static void kafka_on_idle(uv_idle_t *h);
static void kafka_store(struct kafka *k);

static void kafka_kick(struct kafka *k)
{
    if (!k->closing && !uv_is_active((uv_handle_t *)&k->idle))
        uv_idle_start(&k->idle, kafka_on_idle);
}

/* A partition's done moved: store it this loop iteration (at once while closing). */
static void kafka_dirty(struct kafka *k)
{
    k->dirty = 1;
    if (k->closing)
        kafka_store(k);
    else
        kafka_kick(k);
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
        kafka_dirty(k);
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
    kafka_dirty(k);
}

/* Hand every partition's new done to the offset store (kafka_io.c: committed later). */
static void kafka_store(struct kafka *k)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    const char *topic = kio_topic_name(k->io, KIO_RECV);
    k->dirty = 0;
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
    for (struct session *s = map_entry(n, struct kafka_key, node)->sessions; s; s = s->bnext) {
        struct kafka_sess *ks = s->bpriv;
        struct kafka_ref *ref;
        if (kafka_ring_reserve(&ks->refs, sizeof(*ref)) < 0 || session_deliver(s, seq, m) != 0)
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
    struct map_node *n;
    struct kafka_topic *t;
    struct msg *m;
    if (rm->key_len == 0 || rm->key_len > KEY_MAX_LEN ||
        (n = map_get(&k->topics, rm->key, rm->key_len)) == NULL)
        return;
    t = map_entry(n, struct kafka_topic, node);
    if (kafka_too_old(rm, k->b->cfg->ttl_ms) || (m = kafka_msg(k, rm)) == NULL) {
        k->b->dropped++;
        return;
    }
    for (struct kafka_sub *sub = t->subs; sub != NULL; sub = sub->next)
        (void)session_deliver(sub->s, 0, m); /* a refusal closes that socket: at-most-once */
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
        kafka_dirty(k);
    }
}

static const struct kio_handlers kafka_handlers = {
    .on_record = kafka_on_record,
    .on_assigned = kafka_on_assigned,
};

/* --- keys, topics, sessions --- */

/* The map entry for name[0..len), created when create is set; NULL if absent or ENOMEM. */
static struct map_node *kafka_map_get(struct map *map, const char *name, size_t len, size_t head,
                                      int create)
{
    struct map_node *n = map_get(map, name, len);
    char *e;
    if (n != NULL || !create)
        return n;
    /* head bytes of struct (map_node first), then the name; the node is at offset 0 */
    if ((e = calloc(1, head + len + 1)) == NULL)
        return NULL;
    memcpy(e + head, name, len);
    n = (struct map_node *)(void *)e;
    n->key = e + head;
    n->key_len = (uint32_t)len;
    if (map_put(map, n) < 0) {
        free(e);
        return NULL;
    }
    return n;
}

/* Leave every topic of ks; free topics nobody here subscribes to any more. */
static void kafka_unsubscribe(struct kafka *k, struct kafka_sess *ks)
{
    for (uint16_t i = 0; i < ks->nsubs; i++) {
        struct kafka_sub *sub = &ks->subs[i];
        struct kafka_topic *t = sub->t;
        if (t == NULL)
            continue;
        if (sub->prev != NULL)
            sub->prev->next = sub->next;
        else
            t->subs = sub->next;
        if (sub->next != NULL)
            sub->next->prev = sub->prev;
        sub->t = NULL;
        if (t->subs == NULL) {
            map_remove(&k->topics, &t->node);
            free(t);
        }
    }
}

static void kafka_key_unlink(struct kafka *k, struct kafka_sess *ks)
{
    struct kafka_key *key = ks->key;
    struct session *s = ks->s;
    if (key == NULL)
        return;
    if (s->bprev != NULL)
        s->bprev->bnext = s->bnext;
    else
        key->sessions = s->bnext;
    if (s->bnext != NULL)
        s->bnext->bprev = s->bprev;
    s->bnext = s->bprev = NULL;
    ks->key = NULL;
    if (key->sessions == NULL) {
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

static void kafka_attach_unlink(struct kafka *k, struct kafka_sess *ks)
{
    if (ks->aprev != NULL)
        ks->aprev->anext = ks->anext;
    else
        k->attach_head = ks->anext;
    if (ks->anext != NULL)
        ks->anext->aprev = ks->aprev;
    else
        k->attach_tail = ks->aprev;
    ks->anext = ks->aprev = NULL;
    ks->attaching = 0;
}

/* --- broker_ops --- */

static void kafka_on_idle(uv_idle_t *h)
{
    struct kafka *k = h->data;
    struct kafka_sess *ks;
    /* the socket is registered since attach: the 101 goes out now, never inside attach */
    while ((ks = k->attach_head) != NULL) {
        kafka_attach_unlink(k, ks);
        session_attached(ks->s, 0);
    }
    if (k->dirty)
        kafka_store(k);
    if (k->attach_head == NULL && !k->dirty)
        uv_idle_stop(h);
}

static void kafka_on_open_failed(uv_handle_t *h)
{
    free(h->data);
}

static int kafka_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    struct kafka *k = calloc(1, sizeof(*k));
    int rc;
    if (k == NULL)
        return UV_ENOMEM;
    k->b = b;
    map_init(&k->keys);
    map_init(&k->topics);
    if ((rc = uv_idle_init(loop, &k->idle)) < 0) {
        free(k);
        return rc;
    }
    k->idle.data = k;
    if ((rc = kio_open(&k->io, b, loop, cfg, &kafka_handlers, k)) < 0) {
        uv_close((uv_handle_t *)&k->idle, kafka_on_open_failed); /* frees k */
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

static int kafka_attach(struct broker *b, struct session *s)
{
    struct kafka *k = b->priv;
    struct kafka_sess *ks;
    struct map_node *n;
    int rc = UV_ENOMEM;
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
    for (uint16_t i = 0; i < s->ntopics; i++) {
        size_t len = strnlen(s->topics[i], KEY_MAX_LEN + 1);
        int dup = 0;
        for (uint16_t j = 0; j < i && !dup; j++) /* ?topics=a,a: subscribe once */
            dup = strcmp(s->topics[j], s->topics[i]) == 0;
        if (dup)
            continue;
        if (len == 0 || len > KEY_MAX_LEN) {
            rc = UV_EINVAL;
            goto fail;
        }
        n = kafka_map_get(&k->topics, s->topics[i], len, sizeof(struct kafka_topic), 1);
        if (n == NULL)
            goto fail;
        struct kafka_topic *t = map_entry(n, struct kafka_topic, node);
        struct kafka_sub *sub = &ks->subs[i];
        sub->t = t;
        sub->s = s;
        sub->next = t->subs;
        if (t->subs != NULL)
            t->subs->prev = sub;
        t->subs = sub;
    }
    if ((n = kafka_map_get(&k->keys, s->key, s->key_len, sizeof(struct kafka_key), 1)) == NULL)
        goto fail;
    ks->key = map_entry(n, struct kafka_key, node);
    s->bprev = NULL;
    s->bnext = ks->key->sessions;
    if (s->bnext != NULL)
        s->bnext->bprev = s;
    ks->key->sessions = s;
    s->bpriv = ks;
    ks->attaching = 1;
    ks->aprev = k->attach_tail;
    if (k->attach_tail != NULL)
        k->attach_tail->anext = ks;
    else
        k->attach_head = ks;
    k->attach_tail = ks;
    kafka_kick(k);
    return 0;
fail:
    kafka_unsubscribe(k, ks);
    free(ks);
    return rc;
}

static void kafka_detach(struct broker *b, struct session *s)
{
    struct kafka *k = b->priv;
    struct kafka_sess *ks = s->bpriv;
    if (k == NULL || ks == NULL)
        return; /* never attached, attach failed, or the broker already let it go */
    if (ks->attaching)
        kafka_attach_unlink(k, ks); /* session_attached will not run */
    kafka_unsubscribe(k, ks);
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

static void kafka_close_step(struct kafka *k)
{
    struct broker *b = k->b;
    broker_close_cb cb = k->close_cb;
    struct kafka_sess *ks;
    if (--k->close_pending > 0)
        return;
    /* attaches that never completed: exactly-once session_attached, with an error */
    while ((ks = k->attach_head) != NULL) {
        struct session *s = ks->s;
        kafka_attach_unlink(k, ks);
        s->bpriv = NULL;
        free(ks);
        session_attached(s, UV_ECANCELED);
    }
    for (int32_t i = 0; i < k->nparts; i++)
        free(k->parts[i].recs.items);
    free(k->parts);
    map_free(&k->keys);
    map_free(&k->topics);
    b->priv = NULL;
    free(k);
    if (cb != NULL)
        cb(b);
}

static void kafka_on_idle_closed(uv_handle_t *h)
{
    kafka_close_step(h->data);
}

static void kafka_on_io_closed(void *arg)
{
    kafka_close_step(arg);
}

/* Sockets still attached are closed with 1001 and let go (their unwritten frames count as
 * done, so the final commit covers them); then librdkafka is closed without blocking
 * (kafka_io.c), and cb runs once everything is freed. */
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
        struct session *s = map_entry(n, struct kafka_key, node)->sessions, *next;
        for (; s != NULL; s = next) {
            struct kafka_sess *ks = s->bpriv;
            next = s->bnext;
            kafka_unsubscribe(k, ks);
            kafka_refs_release(k, ks);
            kafka_key_unlink(k, ks); /* frees the key with its last session */
            if (ks->attaching)
                continue; /* answered in kafka_close_step */
            s->bpriv = NULL;
            free(ks);
            session_close(s, KAFKA_CLOSE_CODE);
        }
    }
    kafka_store(k);
    k->close_pending = 2;
    uv_close((uv_handle_t *)&k->idle, kafka_on_idle_closed);
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
