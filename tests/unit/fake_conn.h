/* fake_conn.h — a fixture for unit tests of the protocol code (http.c, ws.c) through a
 * connection with no socket: bytes go in through c->proto->feed, answers are read off
 * the connection's output queue, and a hand-driven stand-in broker completes attaches,
 * pushes and settles when the test says so (the contract's "later" is the test's next
 * step). The loop only runs at teardown, to close what was opened. Header-only (static
 * functions) so each test file gets its own copy. Loop thread only. */
#ifndef WSGATE_FAKE_CONN_H
#define WSGATE_FAKE_CONN_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "auth.h"
#include "broker.h"
#include "config.h"
#include "conn.h"
#include "msg.h"
#include "outq.h"
#include "server.h"
#include "session.h"

struct fake {
    uv_loop_t loop;
    struct config cfg;
    struct broker b;
    struct server srv;
    struct auth auth;
    struct session *attaching; /* borrowed: waiting for fake_attach_done */
    broker_push_cb push_cb;    /* the last push's callback, not yet called */
    void *push_arg;
    int pushes;               /* push + publish calls */
    struct session *settling; /* borrowed: waiting for fake_settle_done */
    broker_settle_cb settle_cb;
    int detaches;
    char out[65536]; /* what fake_take read off the output queue */
    size_t out_len;
};

static inline struct fake *fake_of(struct broker *b)
{
    return b->data;
}

static int fake_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    (void)b, (void)loop, (void)cfg;
    return 0;
}

static int fake_attach(struct broker *b, struct session *s)
{
    fake_of(b)->attaching = s;
    return 0;
}

static void fake_detach(struct broker *b, struct session *s)
{
    struct fake *f = fake_of(b);
    f->detaches++;
    if (f->attaching == s)
        f->attaching = NULL;
    if (f->settling == s)
        f->settling = NULL;
}

static int fake_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb, void *arg)
{
    struct fake *f = fake_of(b);
    (void)key, (void)m;
    f->pushes++;
    f->push_cb = cb;
    f->push_arg = arg;
    return 0;
}

static void fake_settle(struct broker *b, struct session *s, broker_settle_cb cb)
{
    fake_of(b)->settling = s;
    fake_of(b)->settle_cb = cb;
}

static void fake_close(struct broker *b, broker_close_cb cb)
{
    if (cb != NULL)
        cb(b);
}

static const struct broker_ops fake_ops = {
    .name = "fake",
    .open = fake_open,
    .attach = fake_attach,
    .detach = fake_detach,
    .push = fake_push,
    .publish = fake_push,
    .settle = fake_settle,
    .close = fake_close,
};

/* A server (its listener on a free loopback port is never used) on the fake broker.
 * tune (may be NULL) adjusts the config before anything starts. */
static struct fake *fake_new(void (*tune)(struct config *cfg))
{
    char err[256];
    struct fake *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    config_defaults(&f->cfg);
    snprintf(f->cfg.listen, sizeof(f->cfg.listen), "127.0.0.1:0");
    log_init(LOG_LEVEL_ERROR);
    if (tune != NULL)
        tune(&f->cfg);
    f->b.data = f;
    assert_int_equal(broker_open(&f->b, &fake_ops, &f->loop, &f->cfg), 0);
    assert_int_equal(auth_init(&f->auth, &f->cfg, err, sizeof(err)), 0);
    assert_int_equal(server_start(&f->srv, &f->loop, &f->cfg, &f->b, &f->auth), 0);
    f->srv.now_ms = uv_now(&f->loop);
    return f;
}

static inline void fake_free(struct fake *f)
{
    server_shutdown(&f->srv); /* closes every connection, fake ones included */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    server_free(&f->srv);
    auth_free(&f->auth);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
}

static struct conn *fake_conn(struct fake *f)
{
    struct conn *c = conn_new(&f->srv);
    assert_non_null(c);
    return c;
}

/* Feed a string to c's protocol, as one read. */
static inline void fake_feed(struct conn *c, const void *data, size_t len)
{
    c->proto->feed(c, data, len);
}

static inline void fake_feeds(struct conn *c, const char *s)
{
    fake_feed(c, s, strlen(s));
}

/* What the flush pass would do before writing: let the protocol emit ready answers. */
static inline void fake_advance(struct conn *c)
{
    if (c->state != CONN_CLOSING)
        c->proto->advance(c);
}

/* Read everything queued on c as if the socket took it (no acks: the fake broker gives
 * no msg ids); f->out holds it, NUL-terminated. Returns the byte count. */
static inline size_t fake_take(struct fake *f, struct conn *c)
{
    f->out_len = 0;
    while (c->out.count > 0 && c->out.writing == 0) {
        struct outq_item *it = outq_at(&c->out, 0);
        struct msg *m = it->m;
        assert_true(f->out_len + m->hdr_len + m->len < sizeof(f->out));
        memcpy(f->out + f->out_len, m->hdr, m->hdr_len);
        memcpy(f->out + f->out_len + m->hdr_len, m->data, m->len);
        f->out_len += (size_t)m->hdr_len + m->len;
        c->out.bytes -= outq_item_bytes(m);
        msg_unref(m);
        outq_pop(&c->out);
    }
    f->out[f->out_len] = '\0';
    return f->out_len;
}

/* Number of times needle occurs in the taken output. */
static inline int fake_count(const struct fake *f, const char *needle)
{
    int n = 0;
    size_t nl = strlen(needle);
    for (const char *p = f->out; (p = memmem(p, f->out_len - (size_t)(p - f->out), needle, nl));
         p += nl)
        n++;
    return n;
}

/* A masked client frame (mask 0x01020304) of opcode with payload into out; its length. */
static inline size_t fake_frame(uint8_t *out, int fin, uint8_t opcode, const void *payload,
                                size_t len)
{
    static const uint8_t mask[4] = {1, 2, 3, 4};
    size_t n = 0;
    out[n++] = (uint8_t)((fin ? 0x80 : 0) | opcode);
    if (len < 126) {
        out[n++] = (uint8_t)(0x80 | len);
    } else {
        out[n++] = 0x80 | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    }
    memcpy(out + n, mask, 4);
    n += 4;
    for (size_t i = 0; i < len; i++)
        out[n + i] = ((const uint8_t *)payload)[i] ^ mask[i & 3];
    return n + len;
}

static const char fake_upgrade_req[] =
    "GET /ws/k1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/* Upgrade c on /ws/k1 through the fake broker; afterwards c speaks WebSocket and the 101
 * has been taken off its queue. */
static inline void fake_upgrade(struct fake *f, struct conn *c)
{
    fake_feeds(c, fake_upgrade_req);
    assert_non_null(f->attaching);
    struct session *s = f->attaching;
    f->attaching = NULL;
    session_attached(s, 0);
    fake_advance(c);
    fake_take(f, c);
    assert_memory_equal(f->out, "HTTP/1.1 101 ", 13);
    assert_true(c->proto == &ws_proto);
}

#endif
