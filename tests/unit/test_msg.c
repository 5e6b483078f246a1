/* test_msg.c — refcounted, pre-framed messages (src/msg.c): frame headers at the 125 /
 * 126 / 65535 / 65536 boundaries, the text-or-binary rule, append limits, refcounts
 * (a message is freed exactly at the last unref: run under ASan/LSan). No loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "msg.h"

static void test_msg_frame_header_lengths(void **state)
{
    uint8_t h[10];
    (void)state;
    assert_int_equal(msg_frame_header(h, 0x1, 0), 2);
    assert_int_equal(h[0], 0x81);
    assert_int_equal(h[1], 0);
    assert_int_equal(msg_frame_header(h, 0x2, 125), 2);
    assert_int_equal(h[0], 0x82);
    assert_int_equal(h[1], 125);
    assert_int_equal(msg_frame_header(h, 0x1, 126), 4);
    assert_int_equal(h[1], 126);
    assert_int_equal(h[2], 0);
    assert_int_equal(h[3], 126);
    assert_int_equal(msg_frame_header(h, 0x1, 65535), 4);
    assert_int_equal(h[2], 0xff);
    assert_int_equal(h[3], 0xff);
    assert_int_equal(msg_frame_header(h, 0x1, 65536), 10);
    assert_int_equal(h[1], 127);
    static const uint8_t want[8] = {0, 0, 0, 0, 0, 1, 0, 0};
    assert_memory_equal(h + 2, want, 8);
}

static void test_msg_seal_follows_bytes(void **state)
{
    (void)state;
    struct msg *t = msg_new_copy("h\xc3\xa9llo", 6, MSG_FRAME_AUTO);
    struct msg *b = msg_new_copy("\xff\x00", 2, MSG_FRAME_AUTO);
    struct msg *e = msg_new_copy(NULL, 0, MSG_FRAME_AUTO);
    struct msg *nul = msg_new_copy("\0\0", 2, MSG_FRAME_AUTO); /* U+0000 is valid UTF-8 */
    assert_int_equal(t->opcode, 0x1);
    assert_int_equal(b->opcode, 0x2);
    assert_int_equal(e->opcode, 0x1);
    assert_int_equal(e->len, 0);
    assert_int_equal(nul->opcode, 0x1);
    assert_int_equal(t->hdr_len, 2);
    assert_int_equal(t->kind, MSG_KIND_FRAME);
    assert_int_equal(t->hdr[1], 6);
    assert_memory_equal(t->data, "h\xc3\xa9llo", 6);
    struct msg *forced = msg_new_copy("text", 4, MSG_FRAME_BINARY);
    assert_int_equal(forced->opcode, 0x2);
    struct msg *forced_t = msg_new_copy("\xff", 1, MSG_FRAME_TEXT);
    assert_int_equal(forced_t->opcode, 0x1);
    msg_unref(t);
    msg_unref(b);
    msg_unref(e);
    msg_unref(nul);
    msg_unref(forced);
    msg_unref(forced_t);
}

static void test_msg_append_grows_and_limits(void **state)
{
    (void)state;
    struct msg *m = msg_new(4);
    char chunk[1000];
    assert_int_equal(m->kind, MSG_KIND_RAW); /* bytes as they are until sealed */
    memset(chunk, 'x', sizeof(chunk));
    for (int i = 0; i < 10; i++)
        assert_int_equal(msg_append(&m, chunk, sizeof(chunk), 10000), 0);
    assert_int_equal(m->len, 10000);
    assert_true(m->cap >= 10000 && m->cap <= 10000); /* capped at the limit */
    assert_int_equal(msg_append(&m, "y", 1, 10000), UV_E2BIG);
    assert_int_equal(m->len, 10000); /* unchanged by the refused append */
    msg_seal(m, MSG_FRAME_AUTO);
    assert_int_equal(m->hdr_len, 4);
    assert_int_equal(m->kind, MSG_KIND_FRAME);
    msg_unref(m);
}

static void test_msg_refcount(void **state)
{
    (void)state;
    struct msg *m = msg_new_copy("fan-out", 7, MSG_FRAME_AUTO);
    assert_int_equal(m->refs, 1);
    for (int i = 0; i < 1000; i++)
        assert_ptr_equal(msg_ref(m), m);
    assert_int_equal(m->refs, 1001);
    for (int i = 0; i < 1000; i++)
        msg_unref(m);
    assert_int_equal(m->refs, 1);
    assert_memory_equal(m->data, "fan-out", 7); /* still alive: ASan would catch a free */
    msg_unref(m);
    msg_unref(NULL); /* a no-op */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_frame_header_lengths),
        cmocka_unit_test(test_msg_seal_follows_bytes),
        cmocka_unit_test(test_msg_append_grows_and_limits),
        cmocka_unit_test(test_msg_refcount),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
