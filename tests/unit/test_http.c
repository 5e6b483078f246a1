/* test_http.c — the HTTP side of a connection (http.c) through a connection with no
 * socket (fake_conn.h): request bytes in, answer bytes out. Pipelining and the parser
 * pause at max_send_buffer, strictness (obs-fold across reads, Transfer-Encoding,
 * HTTP/1.0 and duplicate-key upgrades), the absolute request deadline, push answers in
 * request order, and the switch to WebSocket. */
#include "fake_conn.h"

static void tune_small_buffer(struct config *cfg)
{
    cfg->max_send_buffer = 64; /* one /healthz answer (~100 bytes) fills it */
}

static void test_pipelined_requests_answered_in_order(void **state)
{
    (void)state;
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    fake_feeds(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    fake_advance(c);
    fake_take(f, c);
    const char *a = strstr(f->out, "HTTP/1.1 200");
    const char *b = strstr(f->out, "HTTP/1.1 404");
    assert_non_null(a);
    assert_non_null(b);
    assert_true(a < b);
    assert_non_null(strstr(b + 1, "HTTP/1.1 200"));
    assert_int_equal(fake_count(f, "HTTP/1.1 "), 3);
    fake_free(f);
}

static void test_parser_stops_at_max_send_buffer(void **state)
{
    (void)state;
    struct fake *f = fake_new(tune_small_buffer);
    struct conn *c = fake_conn(f);
    fake_feeds(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    /* the client reads nothing: one answer, and the parser waits (not only the socket) */
    fake_advance(c);
    fake_take(f, c);
    assert_int_equal(fake_count(f, "HTTP/1.1 200"), 1);
    /* each time the answers are read, the next request is parsed */
    for (int i = 0; i < 2; i++) {
        fake_advance(c);
        fake_take(f, c);
        assert_int_equal(fake_count(f, "HTTP/1.1 200"), 1);
    }
    fake_advance(c);
    assert_int_equal(fake_take(f, c), 0);
    fake_free(f);
}

static void test_obs_fold_across_reads_is_400(void **state)
{
    (void)state;
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    /* the fold's line break ends one read, its blank starts the next */
    fake_feeds(c, "POST /push/a HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n");
    fake_feeds(c, " 5\r\n\r\nhello");
    fake_take(f, c);
    assert_memory_equal(f->out, "HTTP/1.1 400 ", 13);
    assert_non_null(strstr(f->out, "obsolete header line folding"));
    assert_int_equal(f->pushes, 0);
    fake_free(f);
}

static void test_strict_requests(void **state)
{
    (void)state;
    static const struct {
        const char *req, *status;
    } cases[] = {
        {"POST /push/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
         "HTTP/1.1 501 "},
        {"GET /ws/k HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 "},
        {"GET /ws/k HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBs\r\nSec-WebSocket-Key: ZSBub25jZQ==\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 "},
        {"GET /ws/k HTTP/1.1\r\nHost: x\r\nUpgrade: notwebsocketatall\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         "HTTP/1.1 400 "},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fake *f = fake_new(NULL);
        struct conn *c = fake_conn(f);
        fake_feeds(c, cases[i].req);
        fake_advance(c);
        fake_take(f, c);
        if (strncmp(f->out, cases[i].status, strlen(cases[i].status)) != 0)
            fail_msg("case %zu: got '%.40s', want '%s'", i, f->out, cases[i].status);
        assert_null(f->attaching); /* no broker work for a refused upgrade */
        assert_int_equal(f->pushes, 0);
        fake_free(f);
    }
}

static void test_request_deadline_not_pushed_back_by_bytes(void **state)
{
    (void)state;
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    uint64_t t0 = f->srv.now_ms;
    fake_feeds(c, "POST /push/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab");
    /* a byte just before the deadline does not move it */
    f->srv.now_ms = t0 + f->cfg.request_timeout_ms - 1;
    fake_feeds(c, "c");
    c->proto->timeout(c, t0 + f->cfg.request_timeout_ms - 1);
    assert_int_equal(fake_take(f, c), 0);
    c->proto->timeout(c, t0 + f->cfg.request_timeout_ms);
    fake_take(f, c);
    assert_memory_equal(f->out, "HTTP/1.1 408 ", 13);
    assert_int_equal(f->srv.m.closed[CONN_CLOSE_REQUEST_TIMEOUT], 1);
    fake_free(f);
}

static void test_push_answers_keep_request_order(void **state)
{
    (void)state;
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    fake_feeds(c, "POST /push/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                  "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    fake_advance(c);
    assert_int_equal(fake_take(f, c), 0); /* /healthz waits behind the push */
    assert_int_equal(f->pushes, 1);
    f->push_cb(f->push_arg, UV_ENOSPC); /* the broker's storage is full */
    fake_advance(c);
    fake_take(f, c);
    const char *full = strstr(f->out, "HTTP/1.1 503 ");
    assert_non_null(full);
    assert_non_null(strstr(full, "memory broker full"));
    assert_non_null(strstr(full, "Retry-After: "));
    assert_non_null(strstr(full, "HTTP/1.1 200 "));
    fake_free(f);
}

static void test_empty_captured_header_value(void **state)
{
    (void)state;
    /* an empty X-Forwarded-For as the first captured value: nothing to copy (the fuzzer
     * found a memcpy onto the not yet allocated buffer; UBSan flags it in make test-san) */
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    fake_feeds(c, "GET /healthz HTTP/1.1\r\nX-Forwarded-For:\r\nOrigin:\r\n\r\n");
    fake_advance(c);
    fake_take(f, c);
    assert_memory_equal(f->out, "HTTP/1.1 200 ", 13);
    fake_free(f);
}

static void only_origin_a(struct config *cfg)
{
    snprintf(cfg->allowed_origins, sizeof(cfg->allowed_origins), "https://a.example");
}

static void test_empty_origin_is_present(void **state)
{
    (void)state;
    /* "Origin:" with no value as the first captured header: present and matching nothing
     * (403), the same as after another captured header. It used to read as absent (a NULL
     * buffer + 0; the fuzzer's UBSan flagged the pointer arithmetic) and the upgrade
     * got its 101 from a page no one allowed. */
    static const char *reqs[] = {
        "GET /ws/k1 HTTP/1.1\r\nHost: x\r\nOrigin:\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n",
        "GET /ws/k1 HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\nOrigin:\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        struct fake *f = fake_new(only_origin_a);
        struct conn *c = fake_conn(f);
        fake_feeds(c, reqs[i]);
        assert_null(f->attaching); /* refused before any broker work */
        fake_advance(c);
        fake_take(f, c);
        assert_memory_equal(f->out, "HTTP/1.1 403 ", 13);
        fake_free(f);
    }
}

static void test_upgrade_switches_to_websocket(void **state)
{
    (void)state;
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    assert_true(c->proto == &http_proto);
    fake_upgrade(f, c);
    assert_int_equal(c->state, CONN_WS);
    assert_null(c->http);
    fake_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipelined_requests_answered_in_order),
        cmocka_unit_test(test_parser_stops_at_max_send_buffer),
        cmocka_unit_test(test_obs_fold_across_reads_is_400),
        cmocka_unit_test(test_strict_requests),
        cmocka_unit_test(test_request_deadline_not_pushed_back_by_bytes),
        cmocka_unit_test(test_push_answers_keep_request_order),
        cmocka_unit_test(test_empty_captured_header_value),
        cmocka_unit_test(test_empty_origin_is_present),
        cmocka_unit_test(test_upgrade_switches_to_websocket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
