/* nats_keys.c — one session key's delivery on this node (struct nats_key, shared by its
 * sockets here): the live copies, the cursor and its reads (DIRECT.GET next_by_subj), the
 * table of messages delivered and not yet removed, the ack after the write
 * (broker_ops.ack), the rescue of a message stuck on another node, the sockets waiting
 * for their 101, and what a leaving socket leaves behind (the cursor goes back; the last
 * one nudges another node). The key's sockets past their 101, the round robin among them
 * and each one's window are qdeliver.h's (k->socks, ns->sock); so is the bookkeeping of
 * the reads from the cursor (k->pull): may_have_more says messages may wait in the stream
 * at or after the cursor, and a live copy is delivered at once only when it is 0 and no
 * read is in flight, so order holds.
 * Does NOT: subscribe or parse replies itself (nats_events.c, nats_request.c), or handle
 * topics. Thread: the loop. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "msg.h"
#include "session.h"

#include "nats_priv.h"

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

/* A read (FETCH from the cursor, or RESCUE from gap_from) is in flight: one at a time. */
static int nats_key_reading(const struct nats_key *k)
{
    return k->pull.asked > 0 || k->rescuing;
}

/* --- the pending table and recent acks --- */

/* Room for one more entry in k's pending table (filled once a socket took the message). */
static int nats_pend_reserve(struct nats_key *k)
{
    if (k->npend == k->pend_cap) {
        uint32_t cap = k->pend_cap ? k->pend_cap * 2 : 8;
        struct nats_pend *a = realloc(k->pend, cap * sizeof(*a));
        if (a == NULL)
            return UV_ENOMEM;
        k->pend = a;
        k->pend_cap = cap;
    }
    return 0;
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

/* --- visiting a key again later --- */

/* Visit k again from the key timer (NATS_RETRY_MS): a failed read, a gap to rescue. */
static void nats_key_later(struct nats_broker *p, struct nats_key *k)
{
    if (k->retry)
        return;
    if (p->retry.n == p->retry.cap) {
        size_t cap = p->retry.cap ? p->retry.cap * 2 : 64;
        uint64_t *a = realloc(p->retry.kids, cap * sizeof(*a));
        if (a == NULL)
            return; /* the next ack, attach or reconnect reads it */
        p->retry.kids = a;
        p->retry.cap = cap;
    }
    p->retry.kids[p->retry.n++] = k->kid;
    k->retry = 1;
    if (!uv_is_active((uv_handle_t *)&p->retry.timer))
        uv_timer_start(&p->retry.timer, nats_on_key_timer, NATS_RETRY_MS, 0);
}

/* Read k again after NATS_RETRY_MS (its read failed or could not be sent). */
static void nats_key_retry_later(struct nats_broker *p, struct nats_key *k)
{
    qd_pull_abort(&k->pull, 1);
    nats_key_later(p, k);
}

static void nats_on_key_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    size_t n = p->retry.n;
    uint64_t *kids = p->retry.kids;
    p->retry.kids = NULL;
    p->retry.n = p->retry.cap = 0;
    for (size_t i = 0; i < n; i++) {
        struct nats_key *k = nats_key_find(p, kids[i]);
        if (k == NULL)
            continue;
        k->retry = 0;
        if (!nats_conn_ready(p)) {
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
void nats_pend_ack(struct nats_broker *p, struct nats_key *k, struct nats_pend *e)
{
    char subject[NATS_SUBJ_MAX + 64];
    natsStatus s;
    e->ns = NULL;
    e->id = 0;
    if (!nats_conn_up(p) || nats_closing(p))
        return;
    snprintf(subject, sizeof(subject), "%s%" PRIu64 ".%" PRIu64 ".0.0", p->subj.ack_prefix, e->seq,
             e->seq);
    if ((s = natsConnection_Publish(p->nc, subject, NULL, 0)) != NATS_OK) {
        p->b->errors++;
        nats_conn_check(p, s);
        return;
    }
    nats_key_acked(k, e->seq);
    nats_pend_remove(k, e);
}

/* --- delivery and reads --- */

/* Can a socket of k past its 101 take one more (small) message: its window not full, and
 * its unsent bytes within max_send_buffer (else the message waits in the stream:
 * backpressure, not a 1008 for a client that reads slowly)? */
static int nats_key_room(const struct nats_broker *p, const struct nats_key *k)
{
    for (const struct qd_sock *q = k->socks.socks; q != NULL; q = q->next)
        if (qd_sock_can_take(q, p->window, 0))
            return 1;
    return 0;
}

/* Give the stored message seq to one socket of k with room (round robin, qd_key_next),
 * with that socket's next msg_id and an entry in the pending table. Returns 1 when a
 * socket took it, 0 when none could (it stays in the stream). The message is copied only
 * once a socket could take it. */
static int nats_key_deliver(struct nats_broker *p, struct nats_key *k, uint64_t seq,
                            const void *data, size_t len)
{
    struct qd_sock *q;
    struct msg *m = NULL;
    while ((q = qd_key_next(&k->socks, p->window, len)) != NULL) {
        struct nats_sess *ns = q->s->bpriv;
        uint64_t id = ns->next_id + 1;
        if (m == NULL && (m = msg_new_copy(data, len, p->cfg->frame_type)) == NULL)
            break;
        if (nats_pend_reserve(k) < 0)
            break;
        if (qd_sock_give(q, id, m) < 0)
            continue; /* closing (over max_send_buffer, or going away): not taken */
        ns->next_id = id;
        k->pend[k->npend++] = (struct nats_pend){.seq = seq, .id = id, .ns = ns, .epoch = p->epoch};
        msg_unref(m);
        return 1;
    }
    msg_unref(m);
    /* Not taken. An ack (a write) will make room, unless none of them has anything of
     * ours in flight (the bytes ahead are broadcasts): then look again from the timer. */
    for (q = k->socks.socks; q != NULL; q = q->next)
        if (q->unacked > 0)
            return 0;
    nats_key_later(p, k);
    return 0;
}

/* Read k's next stored message at or after its cursor (DIRECT.GET next_by_subj), unless a
 * read is in flight, nothing may wait, or no socket could take it. A socket waiting for
 * its 101 always gets a read: its reply is the subscription barrier. */
void nats_key_fetch(struct nats_broker *p, struct nats_key *k)
{
    char body[NATS_NAME_SUBJ + 64];
    struct nats_req *r;
    int n, rc;
    if (nats_key_reading(k) || !nats_conn_ready(p) || nats_closing(p))
        return;
    if (k->waiting.nsocks == 0 && (!k->pull.may_have_more || !nats_key_room(p, k)))
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
    if ((rc = nats_req_send(p, r, p->subj.get, body, (size_t)n)) < 0) {
        free(r);
        p->b->errors++;
        nats_key_retry_later(p, k);
        return;
    }
    k->fetch_sent++;
    qd_pull_start(&k->pull, 1); /* a live copy skipped meanwhile asks for another */
}

void nats_key_wake(struct nats_broker *p, struct nats_key *k)
{
    if (qd_pull_wake(&k->pull)) /* else the read in flight is followed by another */
        nats_key_fetch(p, k);
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
    if (nats_key_reading(k) || k->gap_from == 0 || !nats_conn_ready(p) || nats_closing(p))
        return;
    if (!nats_key_room(p, k)) {
        nats_key_later(p, k);
        return;
    }
    n = snprintf(body, sizeof(body), "{\"seq\":%" PRIu64 ",\"next_by_subj\":\"%s\"}", k->gap_from,
                 k->subject);
    if ((r = nats_req_new(p, NATS_REQ_RESCUE)) == NULL) {
        nats_key_later(p, k);
        return;
    }
    r->kid = k->kid;
    r->seq = k->gap_from;
    if (nats_req_send(p, r, p->subj.get, body, (size_t)n) < 0) {
        free(r);
        p->b->errors++;
        nats_key_later(p, k);
        return;
    }
    k->rescuing = 1;
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

/* --- sockets and keys leaving --- */

/* Forget k (its last socket left): no more live copies; written messages whose ack
 * could not be sent stay in the stream (delivered again later: at-least-once). nudge: unwritten
 * messages were left in the stream, so tell another node holding the key to read them now (an empty
 * core message on the deliver subject goes to one member of the queue group; our UNSUB is ahead of
 * it). */
static void nats_key_free(struct nats_broker *p, struct nats_key *k, int nudge)
{
    nats_unsubscribe(p, &k->sub, &k->ref);
    if (nudge && nats_conn_up(p)) {
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
void nats_sess_free(struct nats_broker *p, struct nats_sess *ns)
{
    struct nats_key *k = ns->k;
    if (ns->settle != NULL)
        nats_settle_cancel(p, ns->settle); /* detach before the settle's end cancels it */
    topics_unsubscribe(&p->topics, ns->tsubs, ns->ntsubs);
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
        qd_key_unlink(ns->waiting ? &k->waiting : &k->socks, &ns->sock);
        if (left)
            qd_pull_wake(&k->pull);
        if (k->socks.nsocks == 0 && k->waiting.nsocks == 0)
            nats_key_free(p, k, left);
        else
            nats_key_fetch(p, k);
    }
    if (ns->s != NULL)
        ns->s->bpriv = NULL;
    free(ns);
}

/* --- replies and live copies --- */

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
        for (struct qd_sock *q = k->waiting.socks; q != NULL; q = q->next) {
            struct nats_sess *w = q->s->bpriv;
            if (w->need_fetch <= fetch_no) {
                ns = w;
                break;
            }
        }
        if (ns == NULL)
            return;
        s = ns->s;
        if (status < 0) {
            nats_sess_free(p, ns); /* the core will not call detach after a failed attach */
            session_attached(s, status);
        } else {
            qd_key_unlink(&k->waiting, &ns->sock);
            ns->waiting = 0;
            qd_key_link(&k->socks, &ns->sock, s); /* it takes messages from now on */
            session_attached(s, 0);
        }
    }
}

/* The reply to a read of k: a stored message, 404 (nothing at or after the cursor), or a
 * failure (status < 0: timeout, connection lost). */
void nats_key_fetch_done(struct nats_broker *p, struct nats_req *r, int status, natsMsg *nm)
{
    struct nats_key *k = nats_key_find(p, r->kid);
    char code[8] = "";
    uint64_t seq = 0;
    if (k == NULL)
        return;
    if (r->kind == NATS_REQ_RESCUE)
        k->rescuing = 0;
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
    if (status < 0 && r->kind == NATS_REQ_RESCUE) {
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
    if (r->kind == NATS_REQ_RESCUE) {
        nats_key_rescue_done(p, k, r, seq, nm);
        if ((k = nats_key_find(p, r->kid)) != NULL)
            nats_key_fetch(p, k);
        return;
    }
    /* A message found: more may follow (with no room it waits for an ack). None (404): read
     * again only when a live copy was skipped or the cursor moved meanwhile. */
    qd_pull_done(&k->pull, seq != 0);
    nats_key_attach_waiting(p, r->kid, r->fetch_no, 0);
    if ((k = nats_key_find(p, r->kid)) == NULL)
        return;
    if (seq == 0 || k->next_seq != r->seq) {
        /* nothing, or the cursor moved back while this read was out: read again */
    } else if (nats_key_ours(k, seq)) {
        k->next_seq = seq + 1; /* ours already (unwritten, or acked: removal on its way) */
    } else if (nats_key_deliver(p, k, seq, natsMsg_GetData(nm),
                                (size_t)natsMsg_GetDataLength(nm))) {
        k->next_seq = seq + 1;
    }
    nats_key_fetch(p, k);
}

/* A republished copy on <prefix>.deliver.<key>: the live path. Deliver it at once when
 * nothing older may be waiting here; else leave it in the stream for the read. A copy
 * without a sequence is a nudge: a node left unwritten messages of the key behind. */
void nats_on_live_msg(struct nats_broker *p, struct nats_key *k, natsMsg *nm)
{
    uint64_t seq = nats_header_seq(nm, NATS_SEQ_HDR);
    if (seq > p->max_seq)
        p->max_seq = seq;
    if (seq == 0) {
        k->next_seq = 0;
        nats_key_wake(p, k);
        return;
    }
    if (seq < k->next_seq)
        return; /* read already (or ours) */
    if (!nats_key_reading(k) && !k->pull.may_have_more &&
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
    nats_key_wake(p, k);
}

/* --- attach and ack --- */

/* This node's state for key name, created with its queue subscription when new. */
int nats_key_get(struct nats_broker *p, const char *name, size_t len, struct nats_key **out)
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
    (void)qd_pull_wake(&k->pull); /* the stream may hold messages for the key: read them */
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

/* ns (its subscriptions sent) joins k: its 101 waits for the reply of the next read, which
 * goes out after those SUBs (nats_key_attach_waiting moves it to k->socks then). */
void nats_key_join(struct nats_broker *p, struct nats_key *k, struct nats_sess *ns)
{
    ns->k = k;
    ns->waiting = 1;
    qd_key_link(&k->waiting, &ns->sock, ns->s);
    ns->need_fetch = k->fetch_sent + 1; /* the next read, sent after our SUBs */
    nats_key_fetch(p, k);               /* (if one is in flight, its reply sends the next) */
}

/* The frame of msg_id reached the socket: remove the message from the stream, and read
 * more for the key if some waited for this room. */
void nats_ack(struct broker *b, struct session *s, uint64_t msg_id)
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
        (void)qd_sock_ack(&ns->sock, p->window);
        ns->last_ack = e->seq;
        nats_pend_ack(p, k, e);
        if (k->pull.may_have_more)
            nats_key_fetch(p, k);
        return;
    }
}
