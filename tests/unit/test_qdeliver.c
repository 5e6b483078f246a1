/* test_qdeliver.c — unit tests of src/qdeliver.c: round-robin over a key's sockets (exact
 * order, unlink moves the position on), the window (unacked + promised against
 * max_inflight, room before a fetch, ack reopening it), the refused flag, send-buffer room,
 * the choice without the giving (qd_key_next, qd_sock_can_take), and the pull bookkeeping (a
 * wake-up during a fetch asks for another). Stands in for session_deliver and session_can_take;
 * links only qdeliver.o, msg.o, util.o. No loop. Single thread. */
/* cmocka.h needs these four first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <uv.h>

#include "msg.h"
#include "qdeliver.h"
#include "session.h"

#define FX_LOG 64

struct fx;

/* The test's connection: what the stand-ins saw and answer for one session. */
struct conn {
    struct fx *f; /* borrowed */
    int refuse;   /* session_deliver returns UV_ECANCELED */
    int full;     /* session_can_take returns 0 */
};

struct fx {
    struct conn conns[3];
    struct session sess[3];
    struct qd_sock socks[3];
    struct qd_key key;
    uint64_t who[FX_LOG]; /* session id per delivery, in order */
    uint64_t ids[FX_LOG]; /* msg id per delivery */
    int n;
    int attempts; /* session_deliver calls, refused ones included */
    struct msg *m;
};

int session_deliver(struct session *s, uint64_t msg_id, struct msg *m)
{
    struct fx *f = s->conn->f;
    assert_ptr_equal(m, f->m);
    f->attempts++;
    if (s->conn->refuse)
        return UV_ECANCELED;
    assert_true(f->n < FX_LOG);
    f->who[f->n] = s->id;
    f->ids[f->n++] = msg_id;
    return 0;
}

int session_can_take(const struct session *s, size_t len)
{
    (void)len;
    return !s->conn->full;
}

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    for (int i = 0; i < 3; i++) {
        f->conns[i].f = f;
        f->sess[i].conn = &f->conns[i];
        f->sess[i].id = (uint64_t)i + 1;
        qd_key_link(&f->key, &f->socks[i], &f->sess[i]);
    }
    f->m = msg_new_copy("hi", 2, MSG_FRAME_AUTO);
    assert_non_null(f->m);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    msg_unref(f->m);
    free(f);
    return 0;
}

static void test_qd_round_robin_order(void **state)
{
    struct fx *f = *state;
    assert_int_equal(f->key.nsocks, 3);
    for (int i = 0; i < 6; i++)
        assert_non_null(qd_key_give(&f->key, 0, 0, f->m));
    /* the first socket linked starts, then newest-first list order, wrapping */
    const uint64_t want[6] = {1, 3, 2, 1, 3, 2};
    assert_int_equal(f->n, 6);
    for (int i = 0; i < 6; i++)
        assert_int_equal(f->who[i], want[i]);
    /* no window: nothing counted */
    assert_int_equal(f->socks[0].unacked, 0);
    /* unlinking the next one moves the position on */
    assert_ptr_equal(f->key.rr, &f->socks[0]);
    qd_key_unlink(&f->key, &f->socks[0]);
    assert_int_equal(f->key.nsocks, 2);
    assert_ptr_equal(f->key.rr, &f->socks[2]); /* wrapped to the head */
    assert_ptr_equal(qd_key_give(&f->key, 0, 0, f->m), &f->socks[2]);
}

static void test_qd_refused_is_skipped(void **state)
{
    struct fx *f = *state;
    f->conns[0].refuse = 1;
    assert_ptr_equal(qd_key_give(&f->key, 0, 0, f->m), &f->socks[2]);
    assert_int_equal(f->attempts, 2); /* socket 1 was tried once and refused */
    assert_true(f->socks[0].refused);
    assert_int_equal(qd_sock_room(&f->socks[0], 0), 0);
    f->attempts = 0;
    for (int i = 0; i < 4; i++)
        assert_non_null(qd_key_give(&f->key, 0, 0, f->m));
    assert_int_equal(f->attempts, 4); /* never offered to the refused one again */
    f->conns[1].refuse = f->conns[2].refuse = 1;
    assert_null(qd_key_give(&f->key, 0, 0, f->m)); /* nobody: the backend keeps it */
}

static void test_qd_window(void **state)
{
    struct fx *f = *state;
    const uint32_t w = 2;
    uint64_t id = 0;
    for (int i = 0; i < 6; i++)
        assert_non_null(qd_key_give(&f->key, w, ++id, f->m));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(f->socks[i].unacked, 2);
        assert_int_equal(qd_sock_room(&f->socks[i], w), 0);
    }
    assert_null(qd_key_give(&f->key, w, ++id, f->m)); /* every window is full */
    assert_int_equal(f->attempts, 6);                 /* and nobody was even asked */
    assert_int_equal(f->ids[5], 6);
    assert_int_equal(qd_sock_ack(&f->socks[2], w), 1); /* the window reopened */
    assert_int_equal(qd_sock_room(&f->socks[2], w), 1);
    assert_ptr_equal(qd_key_give(&f->key, w, ++id, f->m), &f->socks[2]);
    /* promised messages count like delivered ones */
    assert_int_equal(qd_sock_ack(&f->socks[1], w), 1);
    qd_sock_promise(&f->socks[1], 1);
    assert_int_equal(qd_sock_room(&f->socks[1], w), 0);
    assert_int_equal(qd_sock_ack(&f->socks[1], w), 1);
    assert_int_equal(qd_sock_room(&f->socks[1], w), 1);
    qd_sock_unpromise(&f->socks[1], 5); /* never below zero */
    assert_int_equal(f->socks[1].promised, 0);
    assert_int_equal(qd_sock_room(&f->socks[1], w), 2);
    /* a full send buffer is skipped like a full window */
    f->conns[1].full = 1;
    f->n = 0;
    assert_null(qd_key_give(&f->key, w, ++id, f->m));
    assert_int_equal(f->n, 0);
    f->conns[1].full = 0;
    assert_ptr_equal(qd_key_give(&f->key, w, ++id, f->m), &f->socks[1]);
    assert_int_equal(f->ids[0], id);
    /* acks never go below zero */
    for (int i = 0; i < 5; i++)
        (void)qd_sock_ack(&f->socks[0], w);
    assert_int_equal(f->socks[0].unacked, 0);
}

static void test_qd_next_chooses_without_giving(void **state)
{
    struct fx *f = *state;
    const uint32_t w = 1;
    /* the order of qd_key_give, and nothing is delivered or counted */
    assert_ptr_equal(qd_key_next(&f->key, w, 2), &f->socks[0]);
    assert_ptr_equal(qd_key_next(&f->key, w, 2), &f->socks[2]);
    assert_int_equal(f->attempts, 0);
    assert_int_equal(f->socks[0].unacked + f->socks[2].unacked, 0);
    assert_ptr_equal(f->key.rr, &f->socks[1]);
    /* the caller gives with its own id: socket 2's window (1) is full now */
    assert_int_equal(qd_sock_give(&f->socks[1], 7, f->m), 0);
    assert_int_equal(f->ids[0], 7);
    assert_false(qd_sock_can_take(&f->socks[1], w, 2));
    assert_true(qd_sock_can_take(&f->socks[1], 0, 2));          /* no window: only refusal counts */
    assert_ptr_equal(qd_key_next(&f->key, w, 2), &f->socks[0]); /* 2 passed over */
    assert_ptr_equal(f->key.rr, &f->socks[2]);
    /* a full send buffer and a refused socket are passed over too */
    f->conns[2].full = 1;
    assert_false(qd_sock_can_take(&f->socks[2], w, 2));
    assert_ptr_equal(qd_key_next(&f->key, w, 2), &f->socks[0]);
    f->conns[0].refuse = 1;
    assert_int_equal(qd_sock_give(&f->socks[0], 8, f->m), UV_ECANCELED);
    assert_false(qd_sock_can_take(&f->socks[0], 0, 2));
    /* nobody: NULL after one look at each, and the position is where it was */
    assert_ptr_equal(f->key.rr, &f->socks[2]);
    assert_null(qd_key_next(&f->key, w, 2));
    assert_ptr_equal(f->key.rr, &f->socks[2]);
    assert_int_equal(f->n, 1);
    /* an ack reopens socket 2 */
    assert_int_equal(qd_sock_ack(&f->socks[1], w), 1);
    assert_ptr_equal(qd_key_next(&f->key, w, 2), &f->socks[1]);
}

static void test_qd_pull(void **state)
{
    struct qd_pull p = {0};
    (void)state;
    assert_false(qd_pull_wanted(&p));
    assert_int_equal(qd_pull_wake(&p), 1); /* nothing in flight: schedule a fetch */
    assert_true(qd_pull_wanted(&p));
    qd_pull_start(&p, 4);
    assert_false(qd_pull_wanted(&p));         /* one in flight */
    assert_int_equal(qd_pull_done(&p, 2), 0); /* short: the source is empty */
    assert_false(qd_pull_wanted(&p));
    assert_int_equal(qd_pull_wake(&p), 1);
    qd_pull_start(&p, 4);
    assert_int_equal(qd_pull_done(&p, 4), 1); /* full: more may wait */
    assert_true(qd_pull_wanted(&p));
    qd_pull_start(&p, 4);
    assert_int_equal(qd_pull_wake(&p), 0); /* in flight: remembered, no second fetch */
    assert_int_equal(p.asked, 4);
    assert_int_equal(qd_pull_done(&p, 1), 1); /* short, but woken meanwhile: again */
    assert_false(p.woken_in_flight);
    qd_pull_start(&p, 2);
    assert_int_equal(qd_pull_wake(&p), 0);
    qd_pull_abort(&p, 0); /* failed: wait for the next wake-up */
    assert_false(qd_pull_wanted(&p));
    assert_false(p.woken_in_flight);
    qd_pull_start(&p, 2);
    qd_pull_abort(&p, 1); /* lost with the link: retry */
    assert_true(qd_pull_wanted(&p));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_qd_round_robin_order, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_qd_refused_is_skipped, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_qd_window, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_qd_next_chooses_without_giving, fx_setup, fx_teardown),
        cmocka_unit_test(test_qd_pull),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
