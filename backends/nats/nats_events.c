/* nats_events.c — the hand-over from nats.c's threads to the loop, and our subscriptions.
 * nats.c's callbacks (*_thread_cb) only append an event to struct nats_xq under its lock
 * and wake the loop (uv_async_send); nats_on_async takes the whole queue at once and
 * dispatches each event to the file that owns it. Live messages (a key's deliver subject,
 * topics: anyone may publish there) are bounded in bytes at the hand-over; what is
 * dropped over the bound is remembered per subscription and made good here
 * (nats_drops_apply). The async handler also runs the clean-up of a connection we took
 * as lost, and advances a close. Messages the loop is done with are destroyed in groups
 * (nats_msg_done).
 * Does NOT: interpret messages (keys, topics, requests and the acker do), touch a
 * session, or run deferred callbacks (p->later does: later.h). Threads: *_thread_cb on
 * nats.c's threads (they touch only xq); the rest on the loop. */
#include <stdio.h>
#include <string.h>

#include "log.h"

#include "nats_priv.h"

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

void nats_on_connected_thread_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_CONNECTED, 0, NULL, NATS_OK, 0);
}

void nats_on_disconnected_thread_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_DISCONNECTED, 0, NULL, NATS_OK, 0);
}

void nats_on_closed_thread_cb(natsConnection *nc, void *closure)
{
    (void)nc;
    nats_xq_push(closure, NATS_EV_CLOSED, 0, NULL, NATS_OK, 0);
}

void nats_on_error_thread_cb(natsConnection *nc, natsSubscription *sub, natsStatus err,
                             void *closure)
{
    (void)nc;
    (void)sub;
    nats_xq_push(closure, NATS_EV_ERROR, 0, NULL, err, 0);
}

/* --- subscriptions (loop thread) --- */

/* Subscribe subject (in queue group queue unless NULL) with our handler and completion
 * callback; counts live_subs. ref (may be NULL) is filled and put in p->subs so messages
 * find their owner; a subscription with a ref (a key's or a topic's) is live: bounded at
 * the hand-over, and in nats.c's own buffer (a backstop: nats.c drops over it and
 * reports a slow consumer, and every key is read again). */
int nats_subscribe(struct nats_broker *p, const char *subject, const char *queue,
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
void nats_unsubscribe(struct nats_broker *p, natsSubscription **sub, struct nats_subref *ref)
{
    if (*sub == NULL)
        return;
    if (ref != NULL)
        map_remove(&p->subs, &ref->node);
    if (!nats_conn_up(p) || nats_closing(p)) {
        if (p->grave.n == p->grave.cap) {
            size_t cap = p->grave.cap ? p->grave.cap * 2 : 64;
            natsSubscription **g = realloc(p->grave.subs, cap * sizeof(*g));
            if (g != NULL) {
                p->grave.subs = g;
                p->grave.cap = cap;
            }
        }
        if (p->grave.n < p->grave.cap) {
            p->grave.subs[p->grave.n++] = *sub;
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
void nats_grave_flush(struct nats_broker *p, int unsubscribe)
{
    for (size_t i = 0; i < p->grave.n; i++) {
        if (unsubscribe)
            (void)natsSubscription_Unsubscribe(p->grave.subs[i]);
        natsSubscription_Destroy(p->grave.subs[i]);
    }
    p->grave.n = 0;
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
            p->ovl.held += d[i].count;
            p->b->errors += d[i].count;
            if (d[i].seq == 0)
                k->next_seq = 0;
            nats_key_wake(p, k);
        } else { /* a broadcast, or a subscription gone since (then stored ones stay) */
            p->ovl.dropped += d[i].count;
            p->b->dropped += d[i].count;
        }
    }
    if (more > 0) {
        p->ovl.dropped += more;
        p->b->dropped += more;
        nats_rescan(p);
    }
    if (now - p->ovl.logged >= 1000 || p->ovl.logged == 0) {
        log_warn("event=nats_overload broadcasts_dropped=%llu copies_held_back=%llu "
                 "limit_bytes=%zu reason=\"messages came faster than the loop took them\"",
                 (unsigned long long)p->ovl.dropped, (unsigned long long)p->ovl.held,
                 p->xq.max_bytes);
        p->ovl.dropped = p->ovl.held = 0;
        p->ovl.logged = now;
    }
}

static void nats_on_event_msg(struct nats_broker *p, int64_t subid, natsMsg *nm)
{
    struct map_node *n = map_get(&p->subs, (const char *)&subid, sizeof(subid));
    struct nats_subref *ref = n != NULL ? map_entry(n, struct nats_subref, node) : NULL;
    const char *subject = natsMsg_GetSubject(nm);
    size_t ilen = strlen(p->subj.inbox);
    if (nats_closing(p)) {
        /* nothing: a stored message stays in the stream, a broadcast is not delivered */
    } else if (ref != NULL && ref->k != NULL) {
        nats_on_live_msg(p, ref->k, nm);
    } else if (ref != NULL) {
        nats_on_topic_msg(p, ref->t, nm);
    } else if (subid == p->acker.sub_id) {
        nats_on_acker_msg(p, nm);
    } else if (subid == p->req.sub_id && strncmp(subject, p->subj.inbox, ilen) == 0 &&
               strncmp(subject + ilen, ".r.", 3) == 0) {
        nats_on_reply_msg(p, nm, subject + ilen + 3);
    }
    nats_msg_done(p, nm);
}

/* Destroy what the bin holds (also at close). */
void nats_bin_flush(struct nats_broker *p)
{
    for (size_t i = 0; i < p->bin.n; i++)
        natsMsg_Destroy(p->bin.msgs[i]);
    p->bin.n = 0;
    p->bin.bytes = 0;
}

/* The loop is done with nm: destroy it with the next NATS_BIN_MSGS - 1 (nats.c's
 * collector thread is woken once for them), or at once past NATS_BIN_BYTES held. An idle
 * loop holds at most that much. */
void nats_msg_done(struct nats_broker *p, natsMsg *nm)
{
    p->bin.msgs[p->bin.n++] = nm;
    p->bin.bytes += (size_t)natsMsg_GetDataLength(nm);
    if (p->bin.n == NATS_BIN_MSGS || p->bin.bytes >= NATS_BIN_BYTES)
        nats_bin_flush(p);
}

void nats_on_async(uv_async_t *h)
{
    struct nats_broker *p = h->data;
    struct nats_ev *evs;
    size_t n, cap;
    struct nats_drop drops[NATS_DROP_SLOTS];
    int subs_left, closed;
    uint64_t lost, drops_more;
    size_t ndrops, bytes;
    if (p->phase != NATS_CLOSING_HANDLES)
        nats_el_apply(p); /* a socket attached, or reads or writes asked for, off the loop */
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
     * not be delivered ahead of it (the key may have unread messages now: the read delivers both).
     */
    if ((ndrops > 0 || drops_more > 0) && !nats_closing(p))
        nats_drops_apply(p, drops, ndrops, drops_more);
    if (n > 0)
        p->last_rx = uv_now(p->b->loop); /* read something (a message or a state change) */
    for (size_t i = 0; i < n; i++) {
        switch (evs[i].kind) {
        case NATS_EV_MSG:
            nats_on_event_msg(p, evs[i].subid, evs[i].msg);
            break;
        case NATS_EV_CONNECTED:
            if (!nats_closing(p))
                nats_on_connected(p);
            break;
        case NATS_EV_DISCONNECTED:
            if (!nats_closing(p) && (p->conn != NATS_CONN_DOWN || p->cleanup_pending))
                nats_on_disconnected(p, 1);
            break;
        case NATS_EV_CLOSED:
            if (p->conn != NATS_CONN_LOST) /* as for any loss: LOST stays LOST */
                p->conn = NATS_CONN_DOWN;
            break;
        case NATS_EV_ERROR:
            p->b->errors++;
            log_warn("event=nats_async_error err=\"%s\"", natsStatus_GetText(evs[i].err));
            if (evs[i].err == NATS_SLOW_CONSUMER && !nats_closing(p))
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

    if (p->cleanup_pending && !nats_closing(p)) {
        p->cleanup_pending = 0;
        nats_on_disconnected(p, 0);
    }
    if (!nats_closing(p))
        return;
    uv_mutex_lock(&p->xq.lock);
    subs_left = p->xq.live_subs;
    closed = p->xq.closed;
    uv_mutex_unlock(&p->xq.lock);
    if (closed && subs_left == 0)
        nats_close_step(p);
}
