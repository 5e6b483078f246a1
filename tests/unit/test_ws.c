/* test_ws.c — the WebSocket side of a connection (ws.c) through a connection with no
 * socket (fake_conn.h): client frames in, server frames out. Ping/pong, the 1009 judged
 * from a frame header before any payload, max_fragments, unmasked frames, and the close
 * handshake held until the broker settled the session's acks. */
#include "fake_conn.h"

static void tune_fragments(struct config *cfg)
{
    cfg->max_fragments = 8;
}

/* The taken output holds a close frame with code; 1 if so. */
static int has_close(const struct fake *f, uint16_t code)
{
    const uint8_t want[4] = {0x88, 0x02, (uint8_t)(code >> 8), (uint8_t)code};
    return memmem(f->out, f->out_len, want, 4) != NULL;
}

static void test_ping_gets_pong(void **state)
{
    (void)state;
    uint8_t fr[64];
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    fake_upgrade(f, c);
    fake_feed(c, fr, fake_frame(fr, 1, 0x9, "abc", 3));
    fake_take(f, c);
    assert_int_equal(f->out_len, 5);
    assert_memory_equal(f->out,
                        "\x8a\x03"
                        "abc",
                        5);
    fake_free(f);
}

static void test_1009_from_the_header_alone(void **state)
{
    (void)state;
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    fake_upgrade(f, c);
    /* binary frame announcing 2^40 bytes, masked, and not one payload byte */
    static const uint8_t hdr[] = {0x82, 0xff, 0, 0, 0x01, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    fake_feed(c, hdr, sizeof(hdr));
    fake_take(f, c);
    assert_true(has_close(f, 1009));
    assert_int_equal(f->srv.m.closed[CONN_CLOSE_TOO_BIG], 1);
    fake_free(f);
}

static void test_max_fragments(void **state)
{
    (void)state;
    uint8_t buf[1024];
    size_t n = 0;
    struct fake *f = fake_new(tune_fragments);
    struct conn *c = fake_conn(f);
    fake_upgrade(f, c);
    n += fake_frame(buf + n, 0, 0x1, "a", 1);
    for (int i = 0; i < 7; i++) /* 8 frames: allowed */
        n += fake_frame(buf + n, 0, 0x0, "b", 1);
    fake_feed(c, buf, n);
    fake_take(f, c);
    assert_false(has_close(f, 1009));
    n = fake_frame(buf, 0, 0x0, "c", 1); /* the 9th */
    fake_feed(c, buf, n);
    fake_take(f, c);
    assert_true(has_close(f, 1009));
    assert_int_equal(f->srv.m.closed[CONN_CLOSE_FRAGMENTS], 1);
    fake_free(f);
}

static void test_unmasked_frame_is_1002(void **state)
{
    (void)state;
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    fake_upgrade(f, c);
    fake_feed(c, "\x81\x02hi", 4);
    fake_take(f, c);
    assert_true(has_close(f, 1002));
    fake_free(f);
}

static void test_close_reply_waits_for_settle(void **state)
{
    (void)state;
    uint8_t fr[16];
    struct fake *f = fake_new(NULL);
    struct conn *c = fake_conn(f);
    fake_upgrade(f, c);
    int detaches = f->detaches;
    fake_feed(c, fr, fake_frame(fr, 1, 0x8, "\x03\xe8", 2)); /* close 1000 */
    fake_take(f, c);
    /* the broker has not confirmed the acks: no reply yet, still attached */
    assert_false(has_close(f, 1000));
    assert_non_null(f->settling);
    assert_int_equal(f->detaches, detaches);
    struct session *s = f->settling;
    f->settling = NULL;
    f->settle_cb(s);
    fake_take(f, c);
    assert_true(has_close(f, 1000));
    assert_int_equal(f->detaches, detaches + 1);
    fake_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_gets_pong),
        cmocka_unit_test(test_1009_from_the_header_alone),
        cmocka_unit_test(test_max_fragments),
        cmocka_unit_test(test_unmasked_frame_is_1002),
        cmocka_unit_test(test_close_reply_waits_for_settle),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
