/* sse.c — Server-Sent Events on a connection: after GET /sse/{S} is answered
 * "200 text/event-stream" (http_routes.c), the session's messages go out as events on the
 * same delivery path as a WebSocket (same queue semantics, acks after the write, slow
 * clients judged the same way). A text message is one event of "data:" lines (each "\n"
 * in the payload starts another line); anything else is "event: binary" with the payload
 * in base64. Messages from queue backends carry "id: <broker id>". A comment line ":"
 * every ping_interval keeps proxies from timing the stream out. Bytes from the client are
 * read and ignored; its EOF closes. Does NOT parse HTTP or know which broker runs.
 * Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "broker.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "msg.h"
#include "server.h"
#include "session.h"

static const char sse_comment[] = ":\n\n";

/* One event for m: a MSG_KIND_EVENT msg, written as is and counted as a message. */
static struct msg *sse_encode(uint64_t msg_id, const struct msg *m)
{
    char idline[40] = "";
    if (msg_id != 0)
        snprintf(idline, sizeof(idline), "id: %llu\n", (unsigned long long)msg_id);
    size_t il = strlen(idline), cap;
    int text = m->opcode == 0x1;
    if (text) {
        size_t lines = 1;
        for (uint32_t i = 0; i < m->len; i++)
            lines += m->data[i] == '\n';
        cap = il + m->len + lines * 7 + 1; /* "data: " + "\n" per line, then "\n" */
    } else {
        cap = il + 14 + 6 + 4 * ((size_t)m->len / 3 + 1) + 3; /* "event: binary\n" ... */
    }
    struct msg *e = msg_new(cap);
    if (e == NULL)
        return NULL;
    char *o = e->data;
    memcpy(o, idline, il);
    o += il;
    if (text) {
        const char *p = m->data, *end = m->data + m->len;
        for (;;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
            memcpy(o, "data: ", 6);
            memcpy(o + 6, p, n);
            o += 6 + n;
            *o++ = '\n';
            if (nl == NULL)
                break;
            p = nl + 1;
        }
    } else {
        memcpy(o, "event: binary\ndata: ", 20);
        o += 20;
        o += EVP_EncodeBlock((unsigned char *)o, (const unsigned char *)m->data, (int)m->len);
        *o++ = '\n';
    }
    *o++ = '\n';
    e->len = (uint32_t)(o - e->data);
    e->kind = MSG_KIND_EVENT; /* no frame header: written as is */
    return e;
}

int sse_deliver(struct conn *c, uint64_t msg_id, struct msg *m)
{
    struct msg *e = sse_encode(msg_id, m); /* one copy: SSE cannot share the WS frame */
    if (e == NULL)
        return UV_ENOMEM;
    int rc = conn_queue(c, e, msg_id);
    msg_unref(e);
    return rc;
}

static void sse_feed(struct conn *c, const uint8_t *data, size_t len)
{
    (void)c, (void)data, (void)len; /* nothing is expected from the client: ignored */
}

static void sse_advance(struct conn *c)
{
    (void)c;
}

static void sse_timeout(struct conn *c, uint64_t now)
{
    const struct config *cfg = c->srv->cfg;
    if (c->state == CONN_WS_CLOSING && now - c->active_ms >= cfg->close_timeout_ms) {
        conn_close(c); /* ended, and what was queued did not go out in time */
        return;
    }
    if (c->state != CONN_WS || cfg->ping_interval_ms == 0 ||
        now - c->active_ms < cfg->ping_interval_ms)
        return;
    conn_queue_bytes(c, sse_comment, sizeof(sse_comment) - 1);
    c->active_ms = now; /* to the tail of the list the sweep walks by activity */
    conn_list_remove(c);
    conn_list_append(c, CONN_LIST_WS);
}

/* The gateway ends the stream: unsent events are dropped, the write in flight finishes,
 * then the socket closes (an EventSource reconnects by itself). The broker is left as a
 * WebSocket leaves it (ws_leave: settle, then detach, so unacked messages go back) only
 * after that write, so the events it carries are acked, not delivered again later. */
static void sse_end(struct conn *c, uint16_t code)
{
    (void)code;
    if (c->state != CONN_WS)
        return;
    c->srv->m.dropped += outq_drop_unsent(&c->out);
    if (!(c->flags & CONN_F_WRITING))
        ws_leave(c); /* else conn_on_write does, once the write is through */
    conn_list_remove(c);
    c->state = CONN_WS_CLOSING; /* no more deliveries; close_timeout bounds the rest */
    conn_list_append(c, CONN_LIST_CLOSING);
    c->active_ms = uv_now(c->srv->loop);
    c->flags |= CONN_F_CLOSE_AFTER;
    conn_read_pause(c, 1);
    conn_flush_later(c);
}

const struct conn_proto sse_proto = {
    .name = "sse",
    .feed = sse_feed,
    .advance = sse_advance,
    .timeout = sse_timeout,
    .end = sse_end,
};

int sse_start(struct conn *c, uint8_t *pre, size_t pre_len)
{
    (void)pre_len;
    free(pre);
    conn_upgraded(c, &sse_proto);
    /* messages delivered while the head was pending: as events, in order */
    for (uint32_t i = 0; i < c->early.count; i++) {
        struct outq_item *it = outq_at(&c->early, i);
        if (sse_deliver(c, it->msg_id, it->m) < 0) {
            conn_close(c);
            return UV_ENOMEM;
        }
    }
    outq_free(&c->early);
    log_debug("event=sse_open session=%s id=%llu", c->sess->key, (unsigned long long)c->sess->id);
    conn_read_pause(c, 0); /* to see the client's EOF */
    conn_flush_later(c);
    return 0;
}
