/* nats_conn.c — the connection as the loop sees it (enum nats_conn_state): nats.c's
 * options, (re)connected and disconnected events, a connection we take as lost before
 * nats.c says so (a write failed, a request went unanswered), the stream check on the
 * thread pool after each (re)connect, and what a reconnect redoes (acks that waited,
 * reads from every cursor, a stream whose sequences went back).
 * Does NOT: connect or reconnect itself (nats.c does, on its threads), or deliver.
 * Thread: the loop; nats_on_stream_work runs on the libuv thread pool. */
#include <stdio.h>

#include "log.h"

#include "nats_priv.h"

void nats_opts_set(struct nats_broker *p, const struct config *cfg, natsStatus *sp)
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
        s = natsOptions_SetPingInterval(
            o, (int64_t)(cfg->nats_timeout_ms / 2 > 0 ? cfg->nats_timeout_ms / 2 : 1));
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, NATS_PINGS_OUT);
    if (s == NATS_OK)
        s = natsOptions_UseGlobalMessageDelivery(o, true); /* no thread per subscription */
    /* Socket I/O on our loop: reads there, and what a loop pass buffered is written at
     * its end, in one send (nats_loop.c). SendAsap: no flusher thread and its 1 ms timer
     * (with an event loop it only asks for that write, it does not send). */
    if (s == NATS_OK)
        s = natsOptions_SetSendAsap(o, true);
    if (s == NATS_OK)
        s = nats_el_opts_set(p, o);
    /* One read takes up to this much (nats.c's default is 32 KB): with NATS_EL_READS reads
     * per readable event the loop drains a flood faster than it delivers, even under ASan,
     * so the excess is dropped at the hand-over instead of piling up in nats-server until
     * it closes us as a slow consumer (test_nats_backend, the flood test). */
    if (s == NATS_OK)
        s = natsOptions_SetIOBufSize(o, NATS_IO_BUF);
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

/* After a publish from the loop failed with s: a write deadline or socket error means the
 * connection is gone (nats.c shuts the socket down and reconnects), and
 * NATS_INSUFFICIENT_BUFFER means nats.c is already reconnecting (it has no reconnect
 * buffer: nats_opts_set). Either way stop calling into nats.c from the loop at once,
 * before its disconnected callback arrives: its reconnect thread holds the connection
 * lock through each connect attempt. The clean-up runs from the async handler (callers
 * may be iterating); the retry timer re-checks the connection in case nats.c never
 * reports a disconnect. */
void nats_conn_check(struct nats_broker *p, natsStatus s)
{
    if ((s != NATS_TIMEOUT && s != NATS_IO_ERROR && s != NATS_INSUFFICIENT_BUFFER) ||
        !nats_conn_up(p) || nats_closing(p))
        return;
    log_warn("event=nats_write_failed err=\"%s\"", natsStatus_GetText(s));
    nats_conn_lost(p, s == NATS_INSUFFICIENT_BUFFER ? "reconnecting" : "write");
}

/* The connection counts as lost from now on, before nats.c says so (see above; why:
 * "write", "reconnecting", "read_timeout"): no more calls into nats.c from the loop,
 * /readyz and pushes 503 at once, requests in flight fail from the async handler. */
void nats_conn_lost(struct nats_broker *p, const char *why)
{
    if (!nats_conn_up(p) || nats_closing(p))
        return;
    p->lost_why = why;
    p->conn = NATS_CONN_LOST;
    p->cleanup_pending = 1;
    nats_kick(p);
    uv_timer_start(&p->check.timer, nats_on_retry_timer, 2 * p->cfg->nats_timeout_ms, 0);
}

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
        nats_key_wake(p, k);
    }
    p->acker.pull_out = 0; /* requests do not survive a reconnect */
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
             p->cfg->nats_stream, (unsigned long long)last, (unsigned long long)p->seq_before);
    map_iter_init(&it, &p->keys);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_key *k = map_entry(n, struct nats_key, node);
        for (uint32_t i = 0; i < k->npend;) {
            struct nats_pend *e = &k->pend[i];
            if (e->epoch == p->epoch || e->seq <= last) {
                i++;
                continue;
            }
            if (e->ns != NULL) /* its window slot comes back now */
                (void)qd_sock_ack(&e->ns->sock, p->window);
            nats_pend_remove(k, e);
        }
        k->next_seq = 0;
        k->gap_from = 0;
        (void)qd_pull_wake(&k->pull);
    }
    p->max_seq = last;
}

/* nats.c dropped messages for us (slow consumer): a live copy may be lost, so every key
 * reads from its oldest stored message again (the ones we hold are skipped). */
void nats_rescan(struct nats_broker *p)
{
    struct map_iter it;
    struct map_node *n;
    map_iter_init(&it, &p->keys);
    while ((n = map_iter_next(&it)) != NULL) {
        struct nats_key *k = map_entry(n, struct nats_key, node);
        k->next_seq = 0;
        nats_key_wake(p, k);
    }
}

/* Connection lost (from_event: nats.c said so; else nats_conn_lost decided it).
 * Requests in flight fail: pushes answer 503, attaches waiting for their read 503. */
void nats_on_disconnected(struct nats_broker *p, int from_event)
{
    if (nats_conn_up(p) || !from_event) {
        p->b->errors++;
        const char *source = p->lost_why != NULL ? p->lost_why : "write";
        log_warn("event=nats_disconnected source=%s", from_event ? "client" : source);
    }
    /* from_event: the loss is confirmed (the connected event will follow); else a local
     * loss stays one until nats.c reports it */
    p->conn = !from_event && p->conn == NATS_CONN_LOST ? NATS_CONN_LOST : NATS_CONN_DOWN;
    p->acker.pull_out = 0;
    if (p->max_seq > p->seq_before)
        p->seq_before = p->max_seq;
    { /* acks written just before may not have reached the server: read them again */
        struct map_iter it;
        struct map_node *n;
        map_iter_init(&it, &p->keys);
        while ((n = map_iter_next(&it)) != NULL)
            map_entry(n, struct nats_key, node)->nacked = 0;
    }
    uv_timer_stop(&p->acker.timer);
    nats_reqs_fail(p, UV_ECONNRESET);
}

void nats_on_connected(struct nats_broker *p)
{
    if (!nats_conn_up(p))
        log_info("event=nats_connected");
    p->epoch++;
    if (p->conn != NATS_CONN_READY)
        p->conn = NATS_CONN_CHECKING;
    p->check.reprobe = 1; /* maybe another server (version) now: probe acks ahead again */
    nats_grave_flush(p, 1);
    nats_stream_check_start(p);
}

void nats_on_stream_work(uv_work_t *w)
{
    struct nats_broker *p = w->data;
    if (p->check.close) {
        natsConnection_Close(p->nc); /* flushes (acks, nudges) for up to 500 ms, joins threads */
        return;
    }
    p->check.rc =
        nats_stream_ensure(p->nc, p->cfg, p->subj.stream, p->subj.deliver, &p->acker.ahead,
                           &p->check.last_seq, p->check.why, sizeof(p->check.why));
}

void nats_on_stream_done(uv_work_t *w, int status)
{
    struct nats_broker *p = w->data;
    p->check.busy = 0;
    if (p->check.close || nats_closing(p)) {
        nats_close_step(p);
        return;
    }
    if (status < 0 || p->check.rc < 0) {
        if (!p->check.failed) /* once per outage, not once per retry */
            log_error("event=nats_stream_check_failed stream=%s err=%s reason=\"%s\"",
                      p->cfg->nats_stream, uv_err_name(status < 0 ? status : p->check.rc),
                      p->check.why);
        p->check.failed = 1;
        p->b->errors++;
        uv_timer_start(&p->check.timer, nats_on_retry_timer, NATS_RETRY_MS, 0);
        return;
    }
    if (p->check.again) {
        nats_stream_check_start(p);
        return;
    }
    p->check.failed = 0;
    if (p->conn == NATS_CONN_LOST) { /* the write failure did not break it after all */
        p->conn = NATS_CONN_CHECKING;
        nats_grave_flush(p, 1);
        log_info("event=nats_connected source=check");
    }
    if (nats_conn_up(p)) {
        p->conn = NATS_CONN_READY;
        log_info("event=nats_ready");
        if (p->check.last_seq < p->seq_before)
            nats_seq_reset(p, p->check.last_seq);
        p->seq_before = 0;
        nats_resume(p);
    }
}

void nats_stream_check_start(struct nats_broker *p)
{
    int rc;
    if (nats_closing(p))
        return;
    if (p->check.busy) {
        p->check.again = 1;
        return;
    }
    p->check.again = 0;
    p->check.close = 0;
    p->check.work.data = p;
    if (p->check.reprobe && !p->cfg->nats_pull) /* (no work runs now: safe to write) */
        p->acker.ahead = NATS_ACKS_AHEAD_UNKNOWN;
    p->check.reprobe = 0;
    if ((rc = uv_queue_work(p->b->loop, &p->check.work, nats_on_stream_work, nats_on_stream_done)) <
        0) {
        log_error("event=nats_stream_check_failed err=%s", uv_err_name(rc));
        uv_timer_start(&p->check.timer, nats_on_retry_timer, NATS_RETRY_MS, 0);
        return;
    }
    p->check.busy = 1;
}

void nats_on_retry_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    if (p->conn == NATS_CONN_CHECKING || p->conn == NATS_CONN_LOST)
        nats_stream_check_start(p);
}
