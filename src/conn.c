/* conn.c — connection lifecycle and output: accept, read dispatch (HTTP or WebSocket),
 * the ordered output queue of refcounted messages written with one writev per flush,
 * acks after the write, deferred and immediate close, and freeing in the close
 * callback. Does NOT parse HTTP (http.c) or frames (ws.c), and never knows which broker
 * runs. Loop thread only. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "config.h"
#include "conn.h"
#include "iplimit.h"
#include "log.h"
#include "msg.h"
#include "outq.h"
#include "server.h"
#include "session.h"

#define FLUSH_MAX_ITEMS 256 /* messages gathered into one writev */

static void conn_on_closed(uv_handle_t *h);

/* --- lists --- */

static struct conn_list *conn_list_of(struct conn *c, int which)
{
    switch (which) {
    case CONN_LIST_HTTP:
        return &c->srv->http;
    case CONN_LIST_WS:
        return &c->srv->ws;
    default:
        return &c->srv->closing;
    }
}

/* which list c is on follows from its state: HTTP, WS, WS_CLOSING; CLOSING = none */
static struct conn_list *conn_list_current(struct conn *c)
{
    switch (c->state) {
    case CONN_HTTP:
        return &c->srv->http;
    case CONN_WS:
        return &c->srv->ws;
    case CONN_WS_CLOSING:
        return &c->srv->closing;
    default:
        return NULL;
    }
}

void conn_list_remove(struct conn *c)
{
    struct conn_list *l = conn_list_current(c);
    if (l == NULL)
        return;
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->count--;
}

void conn_list_append(struct conn *c, int which)
{
    struct conn_list *l = conn_list_of(c, which);
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->count++;
}

/* --- reading --- */

static void conn_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    struct conn *c = h->data;
    (void)hint;
    /* one buffer for the whole loop: every read is consumed (or copied) before the
     * read callback returns, so idle connections hold no read memory at all */
    buf->base = c->srv->rbuf;
    buf->len = c->srv->rbuf_size;
}

static void conn_on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = stream->data;
    struct server *srv = c->srv;
    if (nread == 0)
        return;
    if (c->flags & CONN_F_LINGERING) { /* draining after an error answer: discard */
        if (nread < 0)
            conn_close(c);
        return;
    }
    if (nread < 0) {
        if (nread != UV_EOF)
            log_debug("event=read_error conn=%p err=%s", (void *)c, uv_err_name((int)nread));
        if (c->state == CONN_HTTP && c->http != NULL && nread == UV_EOF) {
            /* half-close: answer what was asked, then close */
            uv_read_stop(stream);
            c->flags |= CONN_F_CLOSE_AFTER;
            conn_flush_later(c);
            return;
        }
        conn_close(c);
        return;
    }
    srv->m.bytes_in += (uint64_t)nread;
    srv->now_ms = uv_now(srv->loop);
    c->active_ms = srv->now_ms;
    c->proto->feed(c, (const uint8_t *)buf->base, (size_t)nread);
}

void conn_read_pause(struct conn *c, int pause)
{
    if (c->state == CONN_CLOSING)
        return;
    if (pause && !(c->flags & CONN_F_READ_PAUSED)) {
        c->flags |= CONN_F_READ_PAUSED;
        uv_read_stop((uv_stream_t *)&c->tcp);
    } else if (!pause && (c->flags & CONN_F_READ_PAUSED)) {
        c->flags &= ~CONN_F_READ_PAUSED;
        uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    }
}

/* A connection on srv speaking HTTP, with no socket yet (the transport comes from
 * conn_accept; unit tests feed its protocol directly and read its output queue). */
struct conn *conn_new(struct server *srv)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->srv = srv;
    c->tcp.data = c;
    if (uv_tcp_init(srv->loop, &c->tcp) < 0) {
        free(c);
        return NULL;
    }
    if (http_start(c) < 0) {
        c->state = CONN_CLOSING;
        uv_close((uv_handle_t *)&c->tcp, conn_on_closed);
        return NULL;
    }
    c->state = CONN_HTTP;
    c->active_ms = uv_now(srv->loop);
    conn_list_append(c, CONN_LIST_HTTP);
    srv->m.http_open++;
    server_sweep_arm(srv);
    return c;
}

struct conn *conn_accept(struct server *srv)
{
    struct conn *c = conn_new(srv);
    if (c == NULL)
        return NULL;
    if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return NULL;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read);
    return c;
}

/* --- writing --- */

int conn_queue(struct conn *c, struct msg *m, uint64_t msg_id)
{
    int rc = outq_push(&c->out, m, msg_id);
    if (rc == 0)
        conn_flush_later(c);
    return rc;
}

int conn_queue_bytes(struct conn *c, const void *data, size_t len)
{
    struct msg *m = msg_new(len);
    if (m == NULL)
        return UV_ENOMEM;
    memcpy(m->data, data, len);
    m->len = (uint32_t)len; /* MSG_KIND_RAW (msg_new): written as is */
    int rc = conn_queue(c, m, 0);
    msg_unref(m);
    return rc;
}

void conn_flush_later(struct conn *c)
{
    if (c->flags & CONN_F_FLUSH_PENDING)
        return;
    c->flags |= CONN_F_FLUSH_PENDING;
    c->flush_next = c->srv->flush_list;
    c->srv->flush_list = c;
}

/* Release n (<= FLUSH_MAX_ITEMS) fully written items from the head: count, then ack.
 * Every item is popped before the first broker_ack runs: an ack may deliver again
 * (redis-list refills the window from its held messages), and that push may grow the
 * ring, so nothing here may hold a pointer into it across an ack. */
static void conn_written(struct conn *c, uint32_t n)
{
    struct server *srv = c->srv;
    uint64_t acks[FLUSH_MAX_ITEMS];
    uint32_t nacks = 0;
    /* ack only while the broker still knows the session (not after detach) */
    int can_ack = (c->flags & CONN_F_ATTACHED) != 0;
    assert(n <= FLUSH_MAX_ITEMS);
    while (n-- > 0) {
        struct outq_item *it = outq_at(&c->out, 0);
        size_t b = outq_item_bytes(it->m) - c->out.off;
        c->out.bytes -= b;
        c->out.off = 0;
        if (it->m->kind != MSG_KIND_RAW) /* a message (frame or event) */
            srv->m.delivered++;
        if (it->msg_id != 0 && can_ack)
            acks[nacks++] = it->msg_id;
        msg_unref(it->m);
        outq_pop(&c->out);
    }
    for (uint32_t i = 0; i < nacks; i++)
        broker_ack(srv->broker, c->sess, acks[i]);
}

/* --- the in-flight write list (write_timeout) --- */

static void conn_writing_add(struct conn *c)
{
    struct server *srv = c->srv;
    c->flags |= CONN_F_WRITING;
    c->wr_ms = srv->now_ms = uv_now(srv->loop);
    c->wr_left = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    c->wprev = NULL;
    c->wnext = srv->writing;
    if (srv->writing != NULL)
        srv->writing->wprev = c;
    srv->writing = c;
}

static void conn_writing_remove(struct conn *c)
{
    if (!(c->flags & CONN_F_WRITING))
        return;
    c->flags &= ~CONN_F_WRITING;
    if (c->wprev != NULL)
        c->wprev->wnext = c->wnext;
    else
        c->srv->writing = c->wnext;
    if (c->wnext != NULL)
        c->wnext->wprev = c->wprev;
    c->wprev = c->wnext = NULL;
}

void conn_check_write(struct conn *c, uint64_t now)
{
    size_t left = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (left != c->wr_left) { /* the kernel took bytes since the last look: progress */
        c->wr_left = left;
        c->wr_ms = now;
        return;
    }
    if (now - c->wr_ms < c->srv->cfg->write_timeout_ms)
        return;
    log_info("event=write_timeout conn=%p unsent=%zu", (void *)c, left);
    conn_count_close(c, CONN_CLOSE_WRITE_TIMEOUT);
    conn_close(c);
}

void conn_count_close(struct conn *c, enum conn_close_reason why)
{
    c->srv->m.closed[why]++;
}

static void conn_on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    uint32_t n = c->out.writing;
    free(req);
    conn_writing_remove(c);
    c->out.writing = 0;
    if (status < 0) {
        /* UV_ECANCELED at close, or a reset: nothing was confirmed written */
        if (c->state != CONN_CLOSING)
            conn_close(c);
        conn_unref(c);
        return;
    }
    conn_written(c, n);
    if (c->state == CONN_WS_CLOSING && (c->flags & CONN_F_ATTACHED))
        ws_leave(c); /* closing waited for this write so its frames could be acked */
    if (c->state != CONN_CLOSING) {
        c->proto->advance(c);
        if (c->state != CONN_CLOSING)
            conn_flush(c);
    }
    conn_unref(c);
}

/* --- lingering close --- */

static void conn_on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    (void)status; /* UV_ECANCELED at close: nothing to do either way */
    free(req);
    conn_unref(c);
}

/* An error was answered before the request was read to its end: closing now could make
 * the kernel reset the connection (unread input) and the client would never read the
 * answer. So shut the write side down (the answer and a FIN go out), read and discard
 * for at most linger_timeout (http_check_timeout), and close at EOF or then. */
static void conn_linger(struct conn *c)
{
    struct server *srv = c->srv;
    uv_shutdown_t *req;
    c->flags &= ~(CONN_F_CLOSE_AFTER | CONN_F_LINGER);
    if (srv->cfg->linger_timeout_ms == 0 || (req = malloc(sizeof(*req))) == NULL) {
        conn_close(c);
        return;
    }
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, conn_on_shutdown) < 0) {
        free(req);
        conn_close(c);
        return;
    }
    conn_ref(c);
    c->flags |= CONN_F_LINGERING;
    c->active_ms = srv->now_ms = uv_now(srv->loop);
    c->flags &= ~CONN_F_READ_PAUSED;
    uv_read_start((uv_stream_t *)&c->tcp, conn_on_alloc, conn_on_read); /* EALREADY is fine */
}

/* Fill bufs from the queue starting at item 0 (skipping off bytes of it). */
static uint32_t conn_gather(struct conn *c, uv_buf_t *bufs, uint32_t *nbufs)
{
    uint32_t items = 0, nb = 0;
    size_t skip = c->out.off;
    while (items < c->out.count && items < FLUSH_MAX_ITEMS) {
        struct msg *m = outq_at(&c->out, items)->m;
        if (m->hdr_len > skip) {
            bufs[nb++] = uv_buf_init((char *)m->hdr + skip, (unsigned)(m->hdr_len - skip));
            skip = 0;
        } else {
            skip -= m->hdr_len;
        }
        if (m->len > skip)
            bufs[nb++] = uv_buf_init(m->data + skip, (unsigned)(m->len - skip));
        skip = 0;
        items++;
    }
    *nbufs = nb;
    return items;
}

/* A WebSocket is slow when the kernel refused its bytes (a write attempt left them, or a
 * write is still in flight) and what waits is over max_send_buffer: not merely because
 * a burst larger than that arrived within one loop iteration. Closes it 1008 (unsent
 * message frames are dropped; queue brokers get theirs back at the detach). 1 if so. */
static int conn_judge_slow(struct conn *c)
{
    if (c->state != CONN_WS || c->out.bytes <= c->srv->cfg->max_send_buffer)
        return 0;
    conn_count_close(c, CONN_CLOSE_SLOW);
    log_info("event=slow_client session=%s queued=%zu", c->sess->key, c->out.bytes);
    c->proto->end(c, 1008);
    return 1;
}

void conn_flush(struct conn *c)
{
    struct server *srv = c->srv;
    uv_buf_t bufs[FLUSH_MAX_ITEMS * 2];
    uint32_t nb;

    if ((c->flags & CONN_F_WRITING) && conn_judge_slow(c))
        return;
    while (!(c->flags & CONN_F_WRITING) && c->out.count > 0 && c->state != CONN_CLOSING) {
        uint32_t items = conn_gather(c, bufs, &nb);
        int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nb);
        if (n == UV_EAGAIN || n == UV_ENOSYS)
            n = 0;
        if (n < 0) {
            conn_close(c);
            return;
        }
        srv->m.bytes_out += (uint64_t)n;
        /* consume whole items written, and the offset into a partial one */
        size_t left = (size_t)n;
        uint32_t done = 0;
        while (done < items) {
            size_t b = outq_item_bytes(outq_at(&c->out, done)->m) - (done == 0 ? c->out.off : 0);
            if (left < b)
                break;
            left -= b;
            done++;
        }
        if (done > 0)
            conn_written(c, done);
        if (c->state == CONN_CLOSING)
            return; /* defensive: acks never close synchronously (broker.h) */
        c->out.off += left;
        c->out.bytes -= left;
        if (done == items && c->out.count > 0)
            continue; /* more than FLUSH_MAX_ITEMS queued: next batch */
        if (c->out.count == 0)
            break;
        if (conn_judge_slow(c))
            return;
        /* the socket is full: hand the rest of this batch to libuv */
        items = conn_gather(c, bufs, &nb);
        uv_write_t *req = malloc(sizeof(*req));
        if (req == NULL) {
            conn_close(c);
            return;
        }
        req->data = c;
        size_t total = 0;
        for (uint32_t i = 0; i < nb; i++)
            total += bufs[i].len;
        if (uv_write(req, (uv_stream_t *)&c->tcp, bufs, nb, conn_on_write) < 0) {
            free(req);
            conn_close(c);
            return;
        }
        srv->m.bytes_out += total;
        c->out.writing = items;
        conn_writing_add(c);
        conn_ref(c);
        return;
    }
    if (c->out.count == 0 && !(c->flags & CONN_F_WRITING)) {
        if (c->out.cap > 64) { /* a burst grew the ring: give the memory back */
            free(c->out.items);
            c->out.items = NULL;
            c->out.cap = c->out.head = 0;
        }
        if (c->flags & CONN_F_CLOSE_AFTER) {
            if (c->state == CONN_HTTP && http_busy(c))
                return; /* answers still to come (a push callback): they go out first */
            if (c->flags & CONN_F_SETTLING)
                return; /* the broker confirms the acks of what went out first (ws_leave);
                           its callback flushes again */
            if (c->flags & CONN_F_LINGER)
                conn_linger(c);
            else
                conn_close(c);
        } else {
            c->proto->advance(c); /* e.g. the 101 is out: read what came with it */
        }
    }
}

void conn_flush_all(struct server *srv)
{
    while (srv->flush_list != NULL) {
        struct conn *list = srv->flush_list;
        srv->flush_list = NULL;
        while (list != NULL) {
            struct conn *c = list;
            list = c->flush_next;
            c->flush_next = NULL;
            c->flags &= ~CONN_F_FLUSH_PENDING;
            if (c->state == CONN_CLOSING)
                continue;
            if (c->flags & CONN_F_CLOSE_SOON) {
                c->flags &= ~CONN_F_CLOSE_SOON;
                if (c->state == CONN_WS)
                    c->proto->end(c, c->close_code ? c->close_code : 1011);
                else if (c->state == CONN_HTTP)
                    conn_close(c);
                if (c->state == CONN_CLOSING)
                    continue;
            }
            c->proto->advance(c); /* emits ready answers, may switch to WS */
            if (c->state != CONN_CLOSING)
                conn_flush(c);
        }
    }
}

/* --- closing --- */

void conn_close_soon(struct conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->flags |= CONN_F_CLOSE_SOON;
    conn_flush_later(c);
}

void conn_close(struct conn *c)
{
    struct server *srv = c->srv;
    if (c->state == CONN_CLOSING)
        return;
    if (c->state == CONN_WS || c->state == CONN_WS_CLOSING)
        srv->m.ws_open--;
    else
        srv->m.http_open--;
    conn_writing_remove(c);
    if (c->ip != NULL) { /* counted by max_connections_per_ip */
        iplimit_conn_release(&srv->iplimit, c->ip, uv_now(srv->loop));
        free(c->ip);
        c->ip = NULL;
    }
    if (c->flags & CONN_F_ATTACHED)
        conn_detach(c); /* unacked messages go back */
    else if (c->sess != NULL && c->state == CONN_HTTP)
        http_upgrade_abort(c); /* attach pending or done, 101 not sent yet */
    conn_list_remove(c);
    c->state = CONN_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, conn_on_closed); /* writes end with UV_ECANCELED first */
}

void conn_upgraded(struct conn *c, const struct conn_proto *proto)
{
    struct server *srv = c->srv;
    conn_list_remove(c);
    c->state = CONN_WS;
    c->proto = proto;
    c->flags |= CONN_F_ATTACHED;
    conn_list_append(c, CONN_LIST_WS);
    srv->m.http_open--;
    srv->m.ws_open++;
    srv->m.ws_total++;
    c->active_ms = uv_now(srv->loop);
}

void conn_detach(struct conn *c)
{
    if (!(c->flags & CONN_F_ATTACHED))
        return;
    c->flags &= ~(CONN_F_ATTACHED | CONN_F_SETTLING); /* detach cancels a settle */
    broker_detach(c->srv->broker, c->sess);
}

void conn_ref(struct conn *c)
{
    c->refs++;
}

static void conn_free(struct conn *c)
{
    outq_free(&c->out);
    outq_free(&c->early);
    if (c->http != NULL)
        http_free(c->http);
    ws_free(c);
    free(c->pre);
    session_free(c->sess);
    free(c);
}

void conn_unref(struct conn *c)
{
    assert(c->refs > 0);
    if (--c->refs == 0 && (c->flags & CONN_F_CLOSED_H))
        conn_free(c);
}

static void conn_on_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    struct server *srv = c->srv;
    if (c->flags & CONN_F_FLUSH_PENDING) { /* rare: closed between conn_flush_later and the pass */
        struct conn **pp = &srv->flush_list;
        while (*pp != NULL && *pp != c)
            pp = &(*pp)->flush_next;
        if (*pp == c)
            *pp = c->flush_next;
    }
    c->flags |= CONN_F_CLOSED_H;
    if (c->refs == 0)
        conn_free(c);
    server_on_conn_closed(srv);
}
