/* nats_request.c — request/reply on our own inbox: a request publishes with reply
 * subject <inbox>.r.<id> and waits in a map and a FIFO (one timeout for all, so FIFO
 * order is deadline order) for its reply, a timeout, or the connection's loss; and
 * broker_ops.push, a JetStream publish answered after the stream's ack. Reads of keys
 * and settle barriers are requests too: their replies go to nats_keys.c and
 * nats_acker.c. A request unanswered while nothing at all was read takes the connection
 * as lost.
 * Does NOT: retry (callers decide), or buffer while disconnected (fail fast: 503).
 * Thread: the loop. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

#include "nats_priv.h"

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

static void nats_req_timer_arm(struct nats_broker *p)
{
    uint64_t now = uv_now(p->b->loop);
    if (p->req.head == NULL) {
        uv_timer_stop(&p->req.timer);
        return;
    }
    uv_timer_start(&p->req.timer, nats_on_req_timer,
                   p->req.head->deadline > now ? p->req.head->deadline - now : 0, 0);
}

/* Publish data to subject with reply <inbox>.r.<id> (a push: <inbox>.p.<id>) and track r
 * (moved here on success). */
int nats_req_send(struct nats_broker *p, struct nats_req *r, const char *subject, const void *data,
                  size_t len)
{
    char reply[96];
    natsStatus s;
    int rc;
    if (len > INT32_MAX)
        return UV_E2BIG;
    snprintf(reply, sizeof(reply), "%s.%c.%" PRIu64, p->subj.inbox,
             r->kind == NATS_REQ_PUSH ? 'p' : 'r', r->id);
    if ((rc = map_put(&p->req.map, &r->node)) < 0)
        return rc;
    s = natsConnection_PublishRequest(p->nc, subject, reply, data, (int)len);
    if (s != NATS_OK) {
        map_remove(&p->req.map, &r->node);
        nats_conn_check(p, s);
        return nats_err(s);
    }
    r->deadline = uv_now(p->b->loop) + p->cfg->nats_timeout_ms;
    r->next = NULL;
    r->prev = p->req.tail;
    if (p->req.tail != NULL)
        p->req.tail->next = r;
    else
        p->req.head = r;
    p->req.tail = r;
    if (p->req.head == r)
        nats_req_timer_arm(p);
    return 0;
}

/* Take r out of the map and the FIFO; the caller completes and frees it. */
void nats_req_unlink(struct nats_broker *p, struct nats_req *r)
{
    map_remove(&p->req.map, &r->node);
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        p->req.head = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
    else
        p->req.tail = r->prev;
    r->prev = r->next = NULL;
}

/* The reply to request r: a publish ack (or error), or a read. */
static void nats_req_complete(struct nats_broker *p, struct nats_req *r, int status, natsMsg *nm)
{
    const char *data = nm != NULL ? natsMsg_GetData(nm) : NULL;
    size_t len = nm != NULL ? (size_t)natsMsg_GetDataLength(nm) : 0;
    if (status == 0 && nm != NULL && natsMsg_IsNoResponders(nm))
        status = UV_EHOSTUNREACH; /* no stream answers on that subject */
    if (r->kind == NATS_REQ_FETCH || r->kind == NATS_REQ_RESCUE) {
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

void nats_on_reply_msg(struct nats_broker *p, natsMsg *nm, const char *tail)
{
    uint64_t id = strtoull(tail, NULL, 10);
    struct map_node *n = map_get(&p->req.map, (const char *)&id, sizeof(id));
    struct nats_req *r;
    if (n == NULL)
        return; /* timed out or failed already */
    r = map_entry(n, struct nats_req, node);
    nats_req_unlink(p, r);
    nats_req_timer_arm(p);
    nats_req_complete(p, r, 0, nm);
    free(r);
}

/* Publish acks of pushes: they come on a synchronous subscription, taken here on the
 * loop right after the read that brought them (nats_loop.c), not through nats.c's
 * delivery thread and the hand-over: a push is answered in the pass its ack is read. They
 * need no ordering with the rest (a push's answer depends on nothing else we receive). */
void nats_push_acks_take(struct nats_broker *p)
{
    size_t ilen = strlen(p->subj.inbox);
    natsMsg *nm;
    /* (no last_rx here: the readable event that brought them set it, nats_loop.c) */
    while (p->req.psub != NULL && !nats_closing(p) &&
           natsSubscription_NextMsg(&nm, p->req.psub, 0) == NATS_OK) {
        const char *subject = natsMsg_GetSubject(nm);
        if (strncmp(subject, p->subj.inbox, ilen) == 0 && strncmp(subject + ilen, ".p.", 3) == 0)
            nats_on_reply_msg(p, nm, subject + ilen + 3);
        nats_msg_done(p, nm);
    }
}

/* A request went unanswered for [nats] timeout. If nothing at all came from the server
 * meanwhile either, the connection is taken as lost (a frozen server, or a partition
 * that drops packets without a reset: TCP would wait for minutes): /readyz and new pushes
 * answer 503 at once, and nothing more is written to it. nats.c's own PINGs (every
 * timeout / 2, NATS_PINGS_OUT unanswered) then drop the socket and reconnect; an idle node
 * notices that way. A reply that was only slow (the server answers other things, or
 * only PONGs: every readable event counts, nats_loop.c) fails only its own request. */
void nats_on_req_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    uint64_t now = uv_now(p->b->loop);
    struct nats_req *r;
    if (p->req.head != NULL && p->req.head->deadline <= now && nats_conn_up(p) &&
        now - p->last_rx >= p->cfg->nats_timeout_ms) {
        static const char *const kinds[] = {"push", "fetch", "rescue", "settle"};
        _Static_assert(NATS_REQ_SETTLE == 3, "kinds[] follows enum nats_req_kind");
        log_warn("event=nats_timeout waited_ms=%llu oldest=%s reason=\"no reply and nothing "
                 "read\"",
                 (unsigned long long)(now - p->last_rx), kinds[p->req.head->kind]);
        nats_conn_lost(p, "read_timeout");
    }
    while ((r = p->req.head) != NULL && r->deadline <= now) {
        nats_req_unlink(p, r);
        p->b->errors++;
        nats_req_complete(p, r, UV_ETIMEDOUT, NULL);
        free(r);
        if (nats_closing(p))
            return;
    }
    nats_req_timer_arm(p);
}

/* Fail every request in flight with status (connection lost: their replies will not come,
 * or may come for a publish the client then retries — at-least-once). */
void nats_reqs_fail(struct nats_broker *p, int status)
{
    struct nats_req *r;
    while ((r = p->req.head) != NULL) {
        nats_req_unlink(p, r);
        nats_req_complete(p, r, status, NULL);
        free(r);
    }
    uv_timer_stop(&p->req.timer);
}

/* --- broker_ops.push --- */

int nats_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb, void *arg)
{
    struct nats_broker *p = b->priv;
    char subject[NATS_NAME_SUBJ];
    struct nats_req *r;
    int rc;
    if (p == NULL || nats_closing(p))
        return UV_ECANCELED;
    if (!nats_conn_ready(p))
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
