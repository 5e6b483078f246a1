/* ws.c — the WebSocket side of a connection: wslay for reading frames (validation,
 * reassembly, control frames, close codes), our own pre-framed messages for writing
 * (one header per message, shared by every socket it goes to), the 101 switch, pings,
 * idle and close timeouts, upstream forwarding, and the session_* calls backends use.
 * wslay's send callback always takes every byte into the output queue, so wslay is
 * never mid-frame and our frames can be interleaved safely (wslay never sees them).
 * Does NOT parse HTTP or know which broker runs. Loop thread only. */
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "broker.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "msg.h"
#include "server.h"
#include "session.h"

static const uint8_t close_1002[] = {0x88, 0x02, 0x03, 0xea};

void ws_accept_key(const char *client_key, size_t len, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char buf[64 + sizeof(guid)], sha[SHA_DIGEST_LENGTH];
    if (len > 64)
        len = 64;
    memcpy(buf, client_key, len);
    memcpy(buf + len, guid, sizeof(guid) - 1);
    SHA1(buf, len + sizeof(guid) - 1, sha);
    EVP_EncodeBlock((unsigned char *)out, sha, SHA_DIGEST_LENGTH); /* 28 chars + NUL */
}

/* --- wslay callbacks --- */

static ssize_t ws_on_recv(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                          void *user)
{
    struct conn *c = user;
    (void)flags;
    if (c->rx_len == 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < c->rx_len ? len : c->rx_len;
    memcpy(buf, c->rx, n);
    c->rx += n;
    c->rx_len -= n;
    return (ssize_t)n;
}

static ssize_t ws_on_send(wslay_event_context_ptr ctx, const uint8_t *data, size_t len, int flags,
                          void *user)
{
    struct conn *c = user;
    (void)flags;
    /* always take everything: wslay must never be left mid-frame */
    if (conn_queue_bytes(c, data, len) < 0) {
        wslay_event_set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void ws_on_upstream(void *arg, int status)
{
    struct conn *c = arg;
    struct server *srv = c->srv;
    c->upstream_inflight--;
    if (status == 0) {
        srv->m.upstream++;
    } else {
        srv->m.dropped++;
        log_warn("event=upstream_failed err=%s", uv_err_name(status));
    }
    if (c->state == CONN_WS && c->upstream_inflight < srv->cfg->max_upstream_inflight)
        conn_read_pause(c, 0);
    conn_unref(c);
}

static void ws_on_msg(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *arg,
                      void *user)
{
    struct conn *c = user;
    struct server *srv = c->srv;
    (void)ctx;
    if (arg->opcode != WSLAY_TEXT_FRAME && arg->opcode != WSLAY_BINARY_FRAME)
        return; /* ping answered by wslay; pong and close: activity already counted */
    if (!srv->cfg->upstream || c->state != CONN_WS || srv->broker->ops->upstream == NULL)
        return;
    struct msg *m = msg_new(arg->msg_length);
    if (m == NULL) {
        srv->m.dropped++;
        return;
    }
    if (arg->msg_length > 0) /* wslay passes msg == NULL for an empty message */
        memcpy(m->data, arg->msg, arg->msg_length);
    m->len = (uint32_t)arg->msg_length;
    m->opcode = arg->opcode == WSLAY_TEXT_FRAME ? 0x1 : 0x2; /* what the client sent */
    int rc = broker_upstream(srv->broker, c->sess, m, ws_on_upstream, c);
    msg_unref(m);
    if (rc < 0) {
        srv->m.dropped++;
        log_warn("event=upstream_failed err=%s", uv_err_name(rc));
        return;
    }
    conn_ref(c);
    if (++c->upstream_inflight >= srv->cfg->max_upstream_inflight)
        conn_read_pause(c, 1); /* backpressure: read no more frames than the broker takes */
}

static const struct wslay_event_callbacks ws_callbacks = {
    .recv_callback = ws_on_recv,
    .send_callback = ws_on_send,
    .on_msg_recv_callback = ws_on_msg,
};

/* --- lifecycle --- */

/* wslay's context costs ~9 KiB (frame buffers), more than everything else an idle
 * socket holds, so it exists only while needed: created when bytes arrive, freed again
 * once the input stands at a frame boundary outside a fragmented message (ws_scan tracks
 * that from the frame headers alone). */
static int ws_ctx_get(struct conn *c)
{
    if (c->ws != NULL)
        return 0;
    if (wslay_event_context_server_init(&c->ws, &ws_callbacks, c) != 0) {
        c->ws = NULL;
        return UV_ENOMEM;
    }
    wslay_event_config_set_max_recv_msg_length(c->ws, c->srv->cfg->max_message_size);
    return 0;
}

/* Follow client frame boundaries in data from the frame headers alone (payloads are
 * skipped), and judge each header as soon as it is complete, before any payload:
 * a close frame with a 1-byte payload (wslay would take it for "no status"; RFC 6455
 * makes it a protocol error) is 1002; a frame or message over max_message_size and a
 * message of more than max_fragments frames are 1009. Returns 0, or the close code with
 * *good = the offset of the offending frame's header (the bytes before it are fine). */
static uint16_t ws_scan(struct conn *c, const uint8_t *p, size_t len, size_t *good)
{
    const struct config *cfg = c->srv->cfg;
    const uint8_t *start = p, *hdr = p;
    while (len > 0) {
        if (c->rx_hdr_len == 0 && c->rx_frame_left == 0)
            hdr = p;
        if (c->rx_frame_left > 0) {
            size_t n = c->rx_frame_left < len ? (size_t)c->rx_frame_left : len;
            c->rx_frame_left -= n;
            p += n;
            len -= n;
            continue;
        }
        c->rx_hdr[c->rx_hdr_len++] = *p++;
        len--;
        if (c->rx_hdr_len < 2)
            continue;
        uint8_t b1 = c->rx_hdr[1] & 0x7f;
        size_t need = 2 + (b1 == 126 ? 2 : b1 == 127 ? 8 : 0) + ((c->rx_hdr[1] & 0x80) ? 4 : 0);
        if (c->rx_hdr_len < need)
            continue;
        uint64_t plen = b1;
        if (b1 == 126)
            plen = ((uint64_t)c->rx_hdr[2] << 8) | c->rx_hdr[3];
        else if (b1 == 127)
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | c->rx_hdr[2 + i];
        int fin = c->rx_hdr[0] & 0x80, op = c->rx_hdr[0] & 0x0f;
        *good = (size_t)(hdr - start);
        if (op == 0x8 && plen == 1)
            return 1002;
        if (op == 1 || op == 2) { /* first frame of a message */
            c->rx_msg_len = 0;
            c->rx_frags = 0;
            c->rx_fragmented = !fin;
        } else if (op == 0) {
            c->rx_fragmented = !fin;
            if (++c->rx_frags >= cfg->max_fragments) {
                conn_count_close(c, CONN_CLOSE_FRAGMENTS);
                return 1009;
            }
        }
        if (op <= 2) {
            c->rx_msg_len += plen;
            if (plen > cfg->max_message_size || c->rx_msg_len > cfg->max_message_size) {
                conn_count_close(c, CONN_CLOSE_TOO_BIG);
                return 1009;
            }
        }
        c->rx_frame_left = plen;
        c->rx_hdr_len = 0;
    }
    *good = (size_t)(p - start);
    return 0;
}

static void ws_feed(struct conn *c, const uint8_t *data, size_t len);
static void ws_feed_pre(struct conn *c);
static void ws_check_timeout(struct conn *c, uint64_t now);

/* Bytes from the client: activity (the LRU that drives pings and idle_timeout), then
 * frames. */
static void ws_proto_feed(struct conn *c, const uint8_t *data, size_t len)
{
    if (c->state == CONN_WS) {
        conn_list_remove(c);
        conn_list_append(c, CONN_LIST_WS);
        c->flags &= ~CONN_F_PINGED;
    }
    ws_feed(c, data, len);
}

static void ws_advance(struct conn *c)
{
    if (c->state == CONN_WS && c->pre != NULL && c->out.count == 0)
        ws_feed_pre(c);
}

const struct conn_proto ws_proto = {
    .name = "websocket",
    .feed = ws_proto_feed,
    .advance = ws_advance,
    .timeout = ws_check_timeout,
    .end = ws_close,
};

int ws_start(struct conn *c, uint8_t *pre, size_t pre_len)
{
    conn_upgraded(c, &ws_proto);
    /* frames delivered while the 101 was pending go right behind it, in order */
    for (uint32_t i = 0; i < c->early.count; i++) {
        struct outq_item *it = outq_at(&c->early, i);
        conn_queue(c, it->m, it->msg_id);
    }
    outq_free(&c->early);
    log_debug("event=ws_open session=%s id=%llu", c->sess->key, (unsigned long long)c->sess->id);
    /* Bytes the client sent along with its upgrade request (a close frame, say) are read
     * only once the 101 and the frames queued behind it are written (conn_flush calls
     * ws_feed_pre): read now, a close would drop them unsent. Reads stay paused until. */
    c->pre = pre;
    c->pre_len = pre_len;
    if (pre == NULL)
        conn_read_pause(c, 0);
    conn_flush_later(c);
    return 0;
}

/* The 101 and what was queued before it are written: read what came with the upgrade. */
static void ws_feed_pre(struct conn *c)
{
    uint8_t *pre = c->pre;
    size_t len = c->pre_len;
    c->pre = NULL;
    c->pre_len = 0;
    ws_feed(c, pre, len);
    free(pre);
    if (c->state == CONN_WS && !(c->flags & CONN_F_CLOSE_AFTER) &&
        c->upstream_inflight < c->srv->cfg->max_upstream_inflight)
        conn_read_pause(c, 0);
}

/* Leave CONN_WS: unsent frames are dropped, the broker forgets the session (unacked go
 * back) - after the write in flight, if any, so frames it carries are acked rather than
 * redelivered - and the connection moves to the closing list (close_timeout). */
static void ws_enter_closing(struct conn *c)
{
    struct server *srv = c->srv;
    if (c->state != CONN_WS)
        return;
    srv->m.dropped += outq_drop_unsent(&c->out);
    conn_list_remove(c);
    c->state = CONN_WS_CLOSING;
    conn_list_append(c, CONN_LIST_CLOSING);
    c->active_ms = uv_now(srv->loop);
    if (!(c->flags & CONN_F_WRITING))
        ws_leave(c);
    conn_flush_later(c);
}

/* Send what wslay holds (a close reply among it); close once both closes are through. */
static void ws_send_pending(struct conn *c)
{
    if (c->ws != NULL && (wslay_event_send(c->ws) != 0 ||
                          (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws)))) {
        c->flags |= CONN_F_CLOSE_AFTER;
        conn_read_pause(c, 1);
    }
    conn_flush_later(c); /* also an ended SSE stream's close, held while settling */
}

static void ws_on_settled(struct session *s)
{
    struct conn *c = s->conn;
    if (!(c->flags & CONN_F_SETTLING))
        return; /* defensive: detach cancels the callback */
    c->flags &= ~CONN_F_SETTLING;
    conn_detach(c);
    ws_send_pending(c); /* the close reply held back while settling */
}

void ws_leave(struct conn *c)
{
    if (!(c->flags & CONN_F_ATTACHED) || (c->flags & CONN_F_SETTLING))
        return;
    c->flags |= CONN_F_SETTLING;
    if (broker_settle(c->srv->broker, c->sess, ws_on_settled) < 0) {
        c->flags &= ~CONN_F_SETTLING;
        conn_detach(c);
    }
}

static void ws_feed(struct conn *c, const uint8_t *data, size_t len)
{
    if (ws_ctx_get(c) < 0) {
        conn_close(c);
        return;
    }
    size_t good = len;
    uint16_t bad = ws_scan(c, data, len, &good);
    c->rx = data;
    c->rx_len = good;
    int rc = wslay_event_recv(c->ws);
    c->rx = NULL;
    c->rx_len = 0;
    if (c->state == CONN_CLOSING)
        return;
    if (rc == 0 && bad != 0) {
        /* a frame the scan refused from its header: close with its code, read no more */
        if (c->state == CONN_WS)
            ws_close(c, bad);
        c->flags |= CONN_F_CLOSE_AFTER;
        conn_read_pause(c, 1);
        conn_flush_later(c);
        return;
    }
    if (rc != 0) {
        /* wslay failed without a status code (oversized or fragmented control frame,
         * non-minimal length: wslay 1.1.1 returns -400 and sends no close code): answer
         * 1002 ourselves and close; safe as wslay is never mid-frame (ws_on_send) */
        ws_enter_closing(c);
        if (rc == WSLAY_ERR_CALLBACK_FAILURE || rc == WSLAY_ERR_PROTO)
            conn_queue_bytes(c, close_1002, sizeof(close_1002));
        c->flags |= CONN_F_CLOSE_AFTER;
        conn_read_pause(c, 1);
        return;
    }
    if (!wslay_event_want_read(c->ws))
        ws_enter_closing(c); /* a close frame came in or wslay refused a frame */
    if ((c->flags & CONN_F_SETTLING) && wslay_event_get_close_received(c->ws)) {
        /* the close reply waits until the broker confirmed the acks (ws_on_settled): a
         * client that reconnects once it has it cannot be handed those messages again */
        conn_flush_later(c);
        return;
    }
    if (wslay_event_send(c->ws) != 0 ||
        (!wslay_event_want_read(c->ws) && !wslay_event_want_write(c->ws))) {
        c->flags |= CONN_F_CLOSE_AFTER;
        conn_read_pause(c, 1);
    } else if (c->state == CONN_WS && c->rx_frame_left == 0 && c->rx_hdr_len == 0 &&
               !c->rx_fragmented && !wslay_event_want_write(c->ws)) {
        ws_free(c); /* quiescent: nothing half read, nothing to send */
    }
    conn_flush_later(c);
}

void ws_close(struct conn *c, uint16_t code)
{
    if (c->state == CONN_HTTP) {
        conn_close(c);
        return;
    }
    if (c->state != CONN_WS)
        return;
    ws_enter_closing(c);
    if (ws_ctx_get(c) < 0) {
        conn_close(c);
        return;
    }
    wslay_event_queue_close(c->ws, code, NULL, 0);
    wslay_event_send(c->ws);
    if (!wslay_event_want_read(c->ws))
        c->flags |= CONN_F_CLOSE_AFTER;
}

static void ws_check_timeout(struct conn *c, uint64_t now)
{
    struct server *srv = c->srv;
    const struct config *cfg = srv->cfg;
    if (c->state == CONN_WS_CLOSING) {
        if (now - c->active_ms >= cfg->close_timeout_ms)
            conn_close(c);
        return;
    }
    if (c->state != CONN_WS)
        return;
    if (now - c->active_ms >= cfg->idle_timeout_ms) {
        log_debug("event=idle_timeout session=%s", c->sess->key);
        conn_count_close(c, CONN_CLOSE_IDLE);
        ws_close(c, 1001);
    } else if (cfg->ping_interval_ms > 0 && now - c->active_ms >= cfg->ping_interval_ms &&
               !(c->flags & CONN_F_PINGED)) {
        c->flags |= CONN_F_PINGED;
        conn_queue(c, srv->ping_frame, 0);
    }
}

void ws_free(struct conn *c)
{
    if (c->ws != NULL)
        wslay_event_context_free(c->ws);
    c->ws = NULL;
}
