/* redis_conn_sub.c — the subscriber side of a Redis connection (redis_conn.h, RCONN_SUB):
 * the channel registry (a keyed hash table of channels, each with its confirmed and its
 * waiting users), SUBSCRIBE / UNSUBSCRIBE with per-channel counts of sent and answered
 * commands (so each user learns when its own SUBSCRIBE was confirmed), message dispatch to
 * the ready users, and the resubscription of everything on a fresh context. Does NOT
 * connect, time out or reconnect (redis_conn.c). Loop thread only. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "map.h"
#include "redis_conn_priv.h"

#define RCONN_SUB_CHUNK 512 /* channels per SUBSCRIBE when resubscribing everything */

/* --- channel registry (RCONN_SUB) --- */

/* Channel names carry session keys and topics that clients choose: keyed like map.c's
 * tables, so that nobody can line up thousands of them in one bucket. */
static uint32_t rconn_hash(const struct rconn *rc, const char *s, size_t n)
{
    return (uint32_t)map_siphash(&rc->hseed, s, n);
}

static struct rconn_chan *rconn_chan_find(const struct rconn *rc, const char *name, size_t len)
{
    uint32_t h;
    if (rc->nbuckets == 0)
        return NULL;
    h = rconn_hash(rc, name, len);
    for (struct rconn_chan *ch = rc->buckets[h & (rc->nbuckets - 1)]; ch; ch = ch->hnext)
        if (ch->hash == h && ch->len == len && memcmp(ch->name, name, len) == 0)
            return ch;
    return NULL;
}

static int rconn_table_grow(struct rconn *rc)
{
    size_t n = rc->nbuckets ? rc->nbuckets * 2 : 64;
    struct rconn_chan **b = calloc(n, sizeof(*b));
    if (b == NULL)
        return UV_ENOMEM;
    for (size_t i = 0; i < rc->nbuckets; i++) {
        struct rconn_chan *ch = rc->buckets[i], *next;
        for (; ch; ch = next) {
            next = ch->hnext;
            ch->hnext = b[ch->hash & (n - 1)];
            b[ch->hash & (n - 1)] = ch;
        }
    }
    free(rc->buckets);
    rc->buckets = b;
    rc->nbuckets = n;
    return 0;
}

/* Find or create a channel. NULL on allocation failure. */
struct rconn_chan *rconn_chan_get(struct rconn *rc, const char *name, size_t len)
{
    struct rconn_chan *ch = rconn_chan_find(rc, name, len);
    if (ch != NULL)
        return ch;
    if ((rc->nchans + 1 > rc->nbuckets) && rconn_table_grow(rc) < 0)
        return NULL;
    ch = calloc(1, sizeof(*ch) + len + 1);
    if (ch == NULL)
        return NULL;
    memcpy(ch->name, name, len);
    ch->name[len] = '\0';
    ch->len = (uint32_t)len;
    ch->hash = rconn_hash(rc, name, len);
    ch->hnext = rc->buckets[ch->hash & (rc->nbuckets - 1)];
    rc->buckets[ch->hash & (rc->nbuckets - 1)] = ch;
    rc->nchans++;
    return ch;
}

/* Free ch when nobody uses it and no reply for it is owed (a late reply must still find it,
 * else its count would be credited to a later SUBSCRIBE of the same name). */
static void rconn_chan_free_maybe(struct rconn *rc, struct rconn_chan *ch)
{
    struct rconn_chan **pp;
    if (ch->internal || ch->ready != NULL || ch->pend_head != NULL || ch->sent != ch->done ||
        ch == rc->dispatching)
        return;
    for (pp = &rc->buckets[ch->hash & (rc->nbuckets - 1)]; *pp != ch; pp = &(*pp)->hnext)
        ;
    *pp = ch->hnext;
    rc->nchans--;
    free(ch);
}

static void rconn_pend_append(struct rconn_chan *ch, struct rsub *s)
{
    s->next = NULL;
    s->prev = ch->pend_tail;
    if (ch->pend_tail != NULL)
        ch->pend_tail->next = s;
    else
        ch->pend_head = s;
    ch->pend_tail = s;
}

static void rconn_sub_unlink(struct rsub *s)
{
    struct rconn_chan *ch = s->ch;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else if (s->ready)
        ch->ready = s->next;
    else
        ch->pend_head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else if (!s->ready)
        ch->pend_tail = s->prev;
    s->next = s->prev = NULL;
}

/* The context is gone: nothing is subscribed any more. Every user waits again. */
void rconn_chans_reset(struct rconn *rc)
{
    rc->sub_owed = 0;
    for (size_t i = 0; i < rc->nbuckets; i++) {
        struct rconn_chan *ch = rc->buckets[i], *next;
        for (; ch; ch = next) {
            next = ch->hnext;
            ch->sent = ch->done = 0;
            while (ch->ready != NULL) {
                struct rsub *s = ch->ready;
                rconn_sub_unlink(s);
                s->ready = 0;
                rconn_pend_append(ch, s);
            }
            for (struct rsub *s = ch->pend_head; s; s = s->next)
                s->target = UINT64_MAX;
            rconn_chan_free_maybe(rc, ch);
        }
    }
}

struct rconn_chan *rconn_chan_lookup(const struct rconn *rc, const char *name, size_t len)
{
    return rc->kind == RCONN_SUB ? rconn_chan_find(rc, name, len) : NULL;
}

size_t rconn_channels(const struct rconn *rc)
{
    return rc->nchans;
}

/* SUBSCRIBE every registered channel (the probe first) on a fresh context. */
void rconn_resubscribe_all(struct rconn *rc)
{
    const char *argv[RCONN_SUB_CHUNK + 1];
    size_t lens[RCONN_SUB_CHUNK + 1];
    int n = 0;
    struct rconn_chan *probe = rc->probe;
    argv[0] = "SUBSCRIBE";
    lens[0] = 9;
    for (size_t i = 0; i <= rc->nbuckets; i++) {
        struct rconn_chan *ch = i == 0 ? probe : rc->buckets[i - 1];
        for (; ch; ch = i == 0 ? NULL : ch->hnext) {
            if (i > 0 && ch == probe)
                continue;
            if (!ch->internal && ch->pend_head == NULL)
                continue;
            ch->sent = 1;
            ch->done = 0;
            rc->sub_owed++;
            for (struct rsub *s = ch->pend_head; s; s = s->next)
                s->target = 1;
            argv[1 + n] = ch->name;
            lens[1 + n] = ch->len;
            if (++n == RCONN_SUB_CHUNK) {
                rconn_send(rc, rconn_on_sub_reply, rc, n + 1, argv, lens);
                n = 0;
            }
        }
    }
    if (n > 0)
        rconn_send(rc, rconn_on_sub_reply, rc, n + 1, argv, lens);
}

/* --- subscriber --- */

void rconn_on_sub_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct rconn *rc = priv;
    redisReply *reply = r, *t, *c;
    struct rconn_chan *ch;
    if (reply == NULL || rc->ac != ac)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING) {
        if (reply->type == REDIS_REPLY_ERROR)
            log_warn("event=redis_error conn=%s err=\"%.*s\"", rc->name, (int)reply->len,
                     reply->str);
        return;
    }
    t = reply->element[0];
    c = reply->element[1];
    ch = rconn_chan_find(rc, c->str, c->len);
    if (ch == NULL)
        return;
    if (t->len == 7 && memcmp(t->str, "message", 7) == 0) {
        redisReply *d = reply->element[2];
        if (ch->ready != NULL && d->type == REDIS_REPLY_STRING) {
            rc->dispatching = ch;
            rc->on_message(rc, ch, d->str, d->len, rc->arg);
            rc->dispatching = NULL;
            rconn_chan_free_maybe(rc, ch);
        }
        return;
    }
    if (!((t->len == 9 && strncasecmp(t->str, "subscribe", 9) == 0) ||
          (t->len == 11 && strncasecmp(t->str, "unsubscribe", 11) == 0)))
        return;
    if (ch->done >= ch->sent)
        return; /* not ours to count (cannot happen with one callback per context) */
    ch->done++;
    rc->sub_owed--;
    if (ch == rc->probe && rc->state == RC_CONNECTING) {
        rconn_set_up(rc);
        if (rc->ac != ac)
            return;
    }
    rc->dispatching = ch;
    while (ch->pend_head != NULL && ch->pend_head->target <= ch->done) {
        struct rsub *s = ch->pend_head;
        rconn_sub_unlink(s);
        s->ready = 1;
        s->prev = NULL;
        s->next = ch->ready;
        if (ch->ready != NULL)
            ch->ready->prev = s;
        ch->ready = s;
        rc->on_sub_ready(rc, s, rc->arg); /* may unsubscribe s */
        if (rc->ac != ac)
            break;
    }
    rc->dispatching = NULL;
    rconn_chan_free_maybe(rc, ch);
}

int rconn_subscribe(struct rconn *rc, struct rsub *subs, const char *const *names,
                    const size_t *lens, size_t n)
{
    const char **argv;
    size_t *alens;
    int send = rc->kind == RCONN_SUB && rc->ac != NULL && !rc->dying && rc->state != RC_CLOSING;
    size_t i;
    for (i = 0; i < n; i++) {
        subs[i].ch = rconn_chan_get(rc, names[i], lens[i]);
        if (subs[i].ch == NULL)
            goto fail;
    }
    argv = send ? malloc((n + 1) * sizeof(*argv)) : NULL;
    alens = send ? malloc((n + 1) * sizeof(*alens)) : NULL;
    if (send && (argv == NULL || alens == NULL)) {
        free(argv);
        free(alens);
        goto fail;
    }
    for (i = 0; i < n; i++) {
        struct rsub *s = &subs[i];
        struct rconn_chan *ch = s->ch;
        s->ready = 0;
        s->target = UINT64_MAX;
        if (send) {
            ch->sent++;
            rc->sub_owed++;
            s->target = ch->sent;
            argv[1 + i] = ch->name;
            alens[1 + i] = ch->len;
        }
        rconn_pend_append(ch, s);
    }
    if (send) {
        argv[0] = "SUBSCRIBE";
        alens[0] = 9;
        if (rconn_send(rc, rconn_on_sub_reply, rc, (int)n + 1, argv, alens) < 0) {
            /* the context is going away: the cleanup hook resets every count */
        }
        free(argv);
        free(alens);
    }
    return 0;
fail:
    for (size_t j = 0; j < i; j++) {
        struct rconn_chan *ch = subs[j].ch;
        subs[j].ch = NULL;
        rconn_chan_free_maybe(rc, ch);
    }
    return UV_ENOMEM;
}

void rconn_unsubscribe(struct rconn *rc, struct rsub *subs, size_t n)
{
    const char *stack_argv[17];
    size_t stack_lens[17];
    const char **argv = stack_argv;
    size_t *lens = stack_lens;
    int send = rc->ac != NULL && !rc->dying && rc->state != RC_CLOSING;
    int argc = 1;
    if (n + 1 > 17) {
        argv = malloc((n + 1) * sizeof(*argv));
        lens = malloc((n + 1) * sizeof(*lens));
        if (argv == NULL || lens == NULL) {
            free(argv);
            free(lens);
            argv = stack_argv;
            lens = stack_lens;
            send = 0; /* channels stay subscribed until the next reconnect: harmless */
        }
    }
    for (size_t i = 0; i < n; i++) {
        struct rsub *s = &subs[i];
        struct rconn_chan *ch = s->ch;
        if (ch == NULL)
            continue;
        rconn_sub_unlink(s);
        s->ch = NULL;
        s->ready = 0;
        if (ch->internal || ch->ready != NULL || ch->pend_head != NULL)
            continue;
        if (send && ch->sent > 0 && (argv != stack_argv || argc < 17)) {
            ch->sent++;
            rc->sub_owed++;
            argv[argc] = ch->name;
            lens[argc] = ch->len;
            argc++;
        }
        rconn_chan_free_maybe(rc, ch);
    }
    if (argc > 1) {
        argv[0] = "UNSUBSCRIBE";
        lens[0] = 11;
        rconn_send(rc, rconn_on_sub_reply, rc, argc, argv, lens);
    }
    if (argv != stack_argv) {
        free(argv);
        free(lens);
    }
}
