/* nats.c — the NATS JetStream backend (`[broker] type = nats`): open, close, attach and
 * detach, and the backend's one export, broker_nats_ops. The other jobs are its
 * neighbours in backends/nats/ (nats_priv.h says which file does what). Why it is built
 * this way, and what it was measured to cost: docs/NATS.md.
 *
 * What the backend does: one NATS connection per gateway node, no JetStream consumer per
 * session. The stream ([nats] stream, default WSRECV) captures `<prefix>.recv.>`:
 * work-queue retention, file storage, max age = [broker] ttl, at most [broker] max_queue
 * messages per subject (DiscardNew per subject: a full session queue answers 429), direct
 * get allowed, and RePublish `<prefix>.recv.>` -> `<prefix>.deliver.>` (a stored message
 * is published again on `<prefix>.deliver.S` with its sequence in Nats-Sequence). POST
 * /push/S is a JetStream publish to `<prefix>.recv.S`, answered after the server's publish
 * ack. A node with sockets of key S holds one queue subscription on `<prefix>.deliver.S`
 * (queue group = the stream name): a stored message reaches one node holding S, which
 * gives it to one of its sockets of S. What a live copy cannot carry is read back in order
 * with DIRECT.GET next_by_subj from a per-key cursor (nats_keys.c). A written message is
 * acked on the stream's one consumer, NATS_ACKER, which removes it.
 *
 * Invariants:
 * - Nothing leaves the stream before its frame is written (the ack follows the write);
 *   what a node does not write stays there and is read again: at-least-once.
 * - The 101 waits for the reply to a DIRECT.GET sent after the socket's subscriptions on
 *   the same connection, so every message stored after the 101 is either republished to
 *   us or found by that read.
 * - nats.c's threads touch only struct nats_xq, under its lock (nats_events.c); every
 *   session_*, broker callback and map access runs on the loop thread.
 * - The loop never waits on nats.c's connection lock while it reconnects: no calls into
 *   nats.c from the loop unless connected (nats_conn.c), and blocking calls (stream setup,
 *   natsConnection_Close) run in open() or on the thread pool.
 * - A push callback runs exactly once, never inside the call that accepted it.
 *
 * Does NOT: parse or rewrap payloads, store broadcasts or client frames, remove anything
 * before its frame is written, or create a consumer per session.
 * Thread: the loop (open also makes the first stream check, before the loop serves). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "session.h"
#include "util.h"

#include "nats_priv.h"

/* "<prefix>.<kind>.<name>" into out[NATS_NAME_SUBJ]. Names are checked again here with the
 * core's rule (key_valid: no wildcard, space or empty token can reach a subject). */
int nats_subject(const struct nats_broker *p, const char *kind, const char *name, char *out)
{
    size_t len = strnlen(name, KEY_MAX_LEN + 1);
    int n;
    if (!key_valid(name, len))
        return UV_EINVAL;
    n = snprintf(out, NATS_NAME_SUBJ, "%s.%s.%s", p->cfg->prefix, kind, name);
    return n > 0 && n < NATS_NAME_SUBJ ? 0 : UV_EINVAL;
}

/* The value of header name of m into out (NUL-terminated, cut to len), or "". */
void nats_header(natsMsg *m, const char *name, char *out, size_t len)
{
    const char *v = NULL;
    out[0] = '\0';
    if (natsMsgHeader_Get(m, name, &v) == NATS_OK && v != NULL)
        snprintf(out, len, "%s", v);
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
    nats_bin_flush(p);
    for (size_t i = 0; i < p->xq.n; i++)
        if (p->xq.evs[i].msg != NULL)
            natsMsg_Destroy(p->xq.evs[i].msg);
    free(p->xq.evs);
    free(p->batch);
    free(p->grave.subs);
    uv_mutex_destroy(&p->xq.lock);
    uv_cond_destroy(&p->xq.cond);
    map_free(&p->keys);
    map_free(&p->keys_by_id);
    free(p->retry.kids);
    map_free(&p->req.map);
    topics_free(&p->topics);
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

static void nats_on_open_failed_later_closed(struct later *l)
{
    struct nats_broker *p = l->data;
    if (--p->open_handles == 0)
        nats_free(p);
}

static void nats_open_check_thread(void *arg)
{
    struct nats_broker *p = arg;
    p->check.rc =
        nats_stream_ensure(p->nc, p->cfg, p->subj.stream, p->subj.deliver, &p->acker.ahead,
                           &p->max_seq, p->check.why, sizeof(p->check.why));
}

/* The stream check at open, before the loop runs: its requests are answered through the
 * socket the loop thread reads, so it runs on a thread while this one does the I/O. */
static int nats_open_check(struct nats_broker *p)
{
    int rc = nats_el_run_sync(p, nats_open_check_thread, p);
    if (rc < 0) {
        snprintf(p->check.why, sizeof(p->check.why), "no thread: %s", uv_err_name(rc));
        return rc;
    }
    return p->check.rc;
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
    map_init(&p->req.map);
    topics_init(&p->topics, nats_topic_on_first, nats_topic_on_last, p);
    map_init(&p->subs);
    p->window = cfg->max_inflight > 0 ? cfg->max_inflight : 1;
    /* consumer_pull = always: as if the server needed it */
    p->acker.ahead = cfg->nats_pull ? NATS_ACKS_AHEAD_NO : NATS_ACKS_AHEAD_UNKNOWN;
    snprintf(p->subj.stream, sizeof(p->subj.stream), "%s.recv.>", cfg->prefix);
    snprintf(p->subj.deliver, sizeof(p->subj.deliver), "%s.deliver.>", cfg->prefix);
    snprintf(p->subj.get, sizeof(p->subj.get), "$JS.API.DIRECT.GET.%s", cfg->nats_stream);
    snprintf(p->subj.pull, sizeof(p->subj.pull), "$JS.API.CONSUMER.MSG.NEXT.%s.%s",
             cfg->nats_stream, NATS_ACKER);
    snprintf(p->subj.ack_prefix, sizeof(p->subj.ack_prefix), "$JS.ACK.%s.%s.1.", cfg->nats_stream,
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
    p->xq.max_bytes =
        NATS_QUEUE_FACTOR * (cfg->max_message_size > cfg->max_send_buffer ? cfg->max_message_size
                                                                          : cfg->max_send_buffer);
    /* None of these fails on Unix (libuv 1.44); from here on p is freed via the handles. */
    uv_async_init(loop, &p->async, nats_on_async);
    uv_timer_init(loop, &p->req.timer);
    uv_timer_init(loop, &p->check.timer);
    uv_timer_init(loop, &p->retry.timer);
    uv_timer_init(loop, &p->acker.timer);
    (void)later_init(&p->later, loop); /* uv_idle_init: cannot fail either */
    p->async.data = p->req.timer.data = p->check.timer.data = p->retry.timer.data = p;
    p->acker.timer.data = p->later.data = p;
    nats_el_init(p, loop);
    p->open_handles = 7;
    p->last_rx = uv_now(loop);
    nats_url_redact(cfg->nats_url, url, sizeof(url));

    s = natsInbox_Create(&inbox);
    if (s == NATS_OK) {
        snprintf(p->subj.inbox, sizeof(p->subj.inbox), "%s", (const char *)inbox);
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
        p->conn = NATS_CONN_CHECKING;
        /* The loop does not serve yet, so this one blocking check is fine here: an
         * incompatible stream stops the gateway at start with a clear message. */
        rc = nats_open_check(p);
        if (rc == UV_EINVAL && strstr(p->check.why, "JetStream") != NULL) {
            log_error("event=nats_jetstream_disabled url=%s reason=\"%s\"", url, p->check.why);
            goto fail;
        }
        if (rc == UV_EINVAL) {
            log_error("event=nats_stream_incompatible stream=%s url=%s reason=\"%s\" "
                      "hint=\"delete or fix that stream, or set [nats] stream to another name\"",
                      cfg->nats_stream, url, p->check.why);
            goto fail;
        }
        if (rc < 0) {
            log_warn("event=nats_stream_check_failed stream=%s err=%s reason=\"%s\"",
                     cfg->nats_stream, uv_err_name(rc), p->check.why);
            uv_timer_start(&p->check.timer, nats_on_retry_timer, NATS_RETRY_MS, 0);
        } else {
            p->conn = NATS_CONN_READY;
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
        snprintf(subject, sizeof(subject), "%s.r.*", p->subj.inbox);
        if ((rc = nats_subscribe(p, subject, NULL, &p->req.sub, NULL)) == 0)
            p->req.sub_id = natsSubscription_GetID(p->req.sub);
        snprintf(subject, sizeof(subject), "%s.p.*", p->subj.inbox);
        if (rc == 0 &&
            (rc = nats_err(natsConnection_SubscribeSync(&p->req.psub, p->nc, subject))) < 0)
            p->req.psub = NULL;
        snprintf(subject, sizeof(subject), "%s.a", p->subj.inbox);
        if (rc == 0 && (rc = nats_subscribe(p, subject, NULL, &p->acker.sub, NULL)) == 0)
            p->acker.sub_id = natsSubscription_GetID(p->acker.sub);
        if (rc < 0) {
            log_error("event=nats_subscribe_failed subject=%s err=%s", subject, uv_err_name(rc));
            goto fail;
        }
    }
    b->priv = p;
    nats_acker_pull(p);
    log_info("event=broker_open type=nats url=%s stream=%s prefix=%s connected=%d "
             "window=%u",
             url, cfg->nats_stream, cfg->prefix, nats_conn_up(p), p->window);
    return 0;
fail:
    if (p->nc != NULL) {
        /* Wait for the closed callback so no nats thread can touch p after it is freed. */
        nats_unsubscribe(p, &p->req.sub, NULL);
        nats_unsubscribe(p, &p->req.psub, NULL);
        nats_unsubscribe(p, &p->acker.sub, NULL);
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
    uv_close((uv_handle_t *)&p->req.timer, nats_on_open_failed_closed);
    uv_close((uv_handle_t *)&p->check.timer, nats_on_open_failed_closed);
    uv_close((uv_handle_t *)&p->retry.timer, nats_on_open_failed_closed);
    uv_close((uv_handle_t *)&p->acker.timer, nats_on_open_failed_closed);
    nats_el_close(p, nats_on_open_failed_closed);
    later_close(&p->later, nats_on_open_failed_later_closed); /* nothing queued yet */
    return rc < 0 ? rc : UV_EINVAL;
}

static int nats_ready(struct broker *b)
{
    struct nats_broker *p = b->priv;
    return p != NULL && !nats_closing(p) && nats_conn_ready(p);
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
    if (p == NULL || nats_closing(p))
        return UV_ECANCELED;
    if (!nats_ready(b))
        return UV_EAGAIN; /* 503: clients retry; nothing is held for them */
    if ((ns = calloc(1, sizeof(*ns) + (size_t)s->ntopics * sizeof(ns->tsubs[0]))) == NULL)
        return UV_ENOMEM;
    ns->ntsubs = s->ntopics;
    ns->s = s;
    s->bpriv = ns;
    if ((rc = topics_subscribe(&p->topics, s, ns->tsubs)) < 0 ||
        (rc = nats_key_get(p, s->key, s->key_len, &k)) < 0) {
        nats_sess_free(p, ns);
        return rc;
    }
    nats_key_join(p, k, ns);
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

/* --- close --- */

/* One of our handles is closed; after the last one (later ran every call still queued:
 * accepted pushes and publishes got their one callback) free p, then the owner's cb. */
static void nats_close_handle_done(struct nats_broker *p)
{
    struct broker *b = p->b;
    broker_close_cb cb = p->close_cb;
    if (--p->open_handles > 0)
        return;
    b->priv = NULL;
    nats_free(p);
    if (cb != NULL)
        cb(b);
}

static void nats_on_handle_closed(uv_handle_t *h)
{
    nats_close_handle_done(h->data);
}

static void nats_on_later_closed(struct later *l)
{
    nats_close_handle_done(l->data);
}

/* Advance the close: first natsConnection_Close on the thread pool (it flushes our acks
 * and joins nats.c's connection threads), then, once the closed callback and every
 * subscription's completion callback have run (nothing on a nats thread can reach p any
 * more), destroy the connection and close our handles. */
void nats_close_step(struct nats_broker *p)
{
    int subs_left, closed, rc;
    if (p->check.busy || p->phase == NATS_CLOSING_HANDLES)
        return;
    if (p->nc != NULL && !p->check.close) {
        p->check.close = 1;
        p->check.work.data = p;
        if ((rc = uv_queue_work(p->b->loop, &p->check.work, nats_on_stream_work,
                                nats_on_stream_done)) == 0) {
            p->check.busy = 1;
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
    p->phase = NATS_CLOSING_HANDLES;
    uv_close((uv_handle_t *)&p->async, nats_on_handle_closed);
    uv_close((uv_handle_t *)&p->req.timer, nats_on_handle_closed);
    uv_close((uv_handle_t *)&p->check.timer, nats_on_handle_closed);
    uv_close((uv_handle_t *)&p->retry.timer, nats_on_handle_closed);
    uv_close((uv_handle_t *)&p->acker.timer, nats_on_handle_closed);
    nats_el_close(p, nats_on_handle_closed);
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
    if (p == NULL || nats_closing(p))
        return; /* already closing: the first close's cb will run */
    p->phase = NATS_CLOSING;
    p->close_cb = cb;
    uv_timer_stop(&p->check.timer);
    uv_timer_stop(&p->retry.timer);
    uv_timer_stop(&p->acker.timer);
    while ((r = p->req.head) != NULL) {
        nats_req_unlink(p, r);
        if (r->kind == NATS_REQ_PUSH)
            (void)later_push_done(&p->later, r->cb, r->arg, UV_ECANCELED);
        free(r);
    }
    uv_timer_stop(&p->req.timer);
    map_iter_init(&it, &p->keys);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_key *k = map_entry(n, struct nats_key, node);
        uint32_t left = k->waiting.nsocks + k->socks.nsocks;
        /* the last socket frees the key (after the loop's cursor has moved past it) */
        while (left-- > 0) {
            struct qd_sock *q = k->waiting.nsocks > 0 ? k->waiting.socks : k->socks.socks;
            struct nats_sess *ns = q->s->bpriv;
            struct session *s = ns->s;
            int waiting = ns->waiting;
            nats_sess_free(p, ns);
            if (waiting)
                session_attached(s, UV_ECANCELED);
            else
                session_close(s, NATS_CLOSE_CODE);
        }
    }
    /* settles due get no callback at close (the core closes their sockets) */
    for (struct nats_settle *st = p->settle_due; st != NULL; st = st->next)
        later_cancel(&p->later, &st->due);
    /* the pushes cancelled above (and publishes accepted before) get their callback once
     * later's handle is closed, a pass or so from now; p goes with the last handle */
    later_close(&p->later, nats_on_later_closed);
    nats_unsubscribe(p, &p->req.sub, NULL);
    nats_unsubscribe(p, &p->req.psub, NULL);
    nats_unsubscribe(p, &p->acker.sub, NULL);
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
