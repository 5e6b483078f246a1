/* test_conn.c — the connection core (conn.c, ws.c) against a stand-in broker whose ack
 * slot delivers again, as redis-list's does when an ack frees room in its window: the
 * written frames must be off the output ring before the first ack runs, or the ring a
 * delivery grows is walked after it moved (a heap-use-after-free under ASan).
 * A real gateway (server_start on 127.0.0.1:0) and a non-blocking client socket on the
 * same loop thread; no broker server is involved (the stand-in is the thing under test's
 * peer, not a broker being mocked for an integration test). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "auth.h"
#include "broker.h"
#include "config.h"
#include "msg.h"
#include "server.h"
#include "session.h"

#define NMSG 12 /* the first ack delivers 2..NMSG: more than the ring's first 8 slots */

struct fx {
    uv_loop_t loop;
    struct config cfg;
    struct broker b;
    struct server srv;
    struct auth auth;
    uv_idle_t attach_idle;     /* completes the attach outside broker_attach */
    struct session *pending;   /* borrowed: session waiting for its attach completion */
    struct session *attached;  /* borrowed: the attached session */
    int acks;                  /* ack calls seen */
    int closed;                /* broker close ran */
};

static struct fx *fx_of(struct broker *b)
{
    return b->data;
}

static void fx_deliver(struct session *s, uint64_t id)
{
    char text[16];
    int n = snprintf(text, sizeof(text), "m%llu", (unsigned long long)id);
    struct msg *m = msg_new_copy(text, (size_t)n, MSG_FRAME_TEXT);
    assert_non_null(m);
    assert_int_equal(session_deliver(s, id, m), 0);
    msg_unref(m);
}

static void fx_on_attach_idle(uv_idle_t *h)
{
    struct fx *f = h->data;
    uv_idle_stop(h);
    struct session *s = f->pending;
    f->pending = NULL;
    f->attached = s;
    fx_deliver(s, 1); /* held behind the 101 */
    session_attached(s, 0);
}

static int fx_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    (void)loop;
    (void)cfg;
    (void)b;
    return 0;
}

static int fx_attach(struct broker *b, struct session *s)
{
    struct fx *f = fx_of(b);
    f->pending = s;
    uv_idle_start(&f->attach_idle, fx_on_attach_idle);
    return 0;
}

static void fx_detach(struct broker *b, struct session *s)
{
    struct fx *f = fx_of(b);
    if (f->pending == s) {
        f->pending = NULL;
        uv_idle_stop(&f->attach_idle);
    }
    if (f->attached == s)
        f->attached = NULL;
}

static int fx_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb, void *arg)
{
    (void)b, (void)key, (void)m, (void)cb, (void)arg;
    return UV_ENOSYS;
}

/* What redis-list does when an ack frees its window: deliver the next held messages. */
static void fx_ack(struct broker *b, struct session *s, uint64_t id)
{
    struct fx *f = fx_of(b);
    f->acks++;
    if (id == 1)
        for (uint64_t i = 2; i <= NMSG; i++)
            fx_deliver(s, i);
}

static void fx_close(struct broker *b, broker_close_cb cb)
{
    fx_of(b)->closed = 1;
    cb(b);
}

static const struct broker_ops fx_ops = {
    .name = "stand-in",
    .open = fx_open,
    .attach = fx_attach,
    .detach = fx_detach,
    .push = fx_push,
    .publish = fx_push,
    .ack = fx_ack,
    .close = fx_close,
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    config_defaults(&f->cfg);
    snprintf(f->cfg.listen, sizeof(f->cfg.listen), "127.0.0.1:0");
    f->cfg.log_level = LOG_LEVEL_ERROR;
    log_init(LOG_LEVEL_ERROR);
    uv_idle_init(&f->loop, &f->attach_idle);
    f->attach_idle.data = f;
    f->b.data = f;
    assert_int_equal(broker_open(&f->b, &fx_ops, &f->loop, &f->cfg), 0);
    char err[256];
    assert_int_equal(auth_init(&f->auth, &f->cfg, err, sizeof(err)), 0);
    assert_int_equal(server_start(&f->srv, &f->loop, &f->cfg, &f->b, &f->auth), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    server_shutdown(&f->srv);
    uv_close((uv_handle_t *)&f->attach_idle, NULL);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    server_free(&f->srv);
    auth_free(&f->auth);
    assert_int_equal(f->closed, 1);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static int fx_connect(struct fx *f)
{
    const char *colon = strrchr(f->srv.listen_addr, ':');
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    assert_true(fd >= 0);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    assert_true(rc == 0 || errno == EINPROGRESS);
    return fd;
}

/* Run the loop and read from fd until want bytes arrived or 2 s of loop time passed. */
static size_t fx_read(struct fx *f, int fd, char *buf, size_t cap, size_t want)
{
    size_t got = 0;
    uint64_t end = uv_now(&f->loop) + 2000;
    while (got < want && uv_now(&f->loop) < end) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        ssize_t n = recv(fd, buf + got, cap - got, 0);
        if (n > 0)
            got += (size_t)n;
        else if (n == 0)
            break;
        else
            usleep(1000);
        uv_update_time(&f->loop);
    }
    return got;
}

static void test_ack_that_delivers_again_keeps_the_ring_intact(void **state)
{
    struct fx *f = *state;
    static const char req[] = "GET /ws/ring HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                              "Sec-WebSocket-Version: 13\r\n\r\n";
    int fd = fx_connect(f);
    char buf[4096];
    /* let the connect finish, then send the upgrade */
    for (int i = 0; i < 50 && send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) < 0; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    /* expected: the 101, then NMSG text frames m1..m12 in order */
    char want[512];
    size_t wl = 0;
    for (int i = 1; i <= NMSG; i++) {
        int n = snprintf(want + wl + 2, sizeof(want) - wl - 2, "m%d", i);
        want[wl] = (char)0x81;
        want[wl + 1] = (char)n;
        wl += 2 + (size_t)n;
    }
    size_t got = fx_read(f, fd, buf, sizeof(buf), 1);
    char *end = memmem(buf, got, "\r\n\r\n", 4);
    while (end == NULL && got < sizeof(buf)) {
        size_t more = fx_read(f, fd, buf + got, sizeof(buf) - got, 1);
        if (more == 0)
            break;
        got += more;
        end = memmem(buf, got, "\r\n\r\n", 4);
    }
    assert_non_null(end);
    assert_memory_equal(buf, "HTTP/1.1 101 ", 13);
    size_t head = (size_t)(end + 4 - buf);
    if (got - head < wl)
        got += fx_read(f, fd, buf + got, sizeof(buf) - got, wl - (got - head));
    assert_int_equal(got - head, wl);
    assert_memory_equal(buf + head, want, wl);
    assert_int_equal(f->acks, NMSG);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_ack_that_delivers_again_keeps_the_ring_intact,
                                        setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
