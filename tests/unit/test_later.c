/* test_later.c — unit tests of src/later.c on a real libuv loop: calls run exactly once,
 * later (never inside the call that queued them), in queue order across the three kinds,
 * a call queued by a callback waits for the next pass, cancellation, the idle handle is
 * active only while calls wait, and close runs what still waits (with its status) before
 * its callback; every test ends with uv_loop_close() == 0. Links only later.o and stands
 * in for session_attached. Single thread. */
/* cmocka.h needs these four first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "later.h"
#include "session.h"

#define FX_LOG 32

struct fx;

/* The test's connection: how the session_attached stand-in finds the fixture. */
struct conn {
    struct fx *f; /* borrowed */
};

struct fx {
    uv_loop_t loop;
    struct later l;
    int log[FX_LOG]; /* who ran, in order (the tag of each call) */
    int status[FX_LOG];
    int n;
    int closed;                   /* later_close callback count */
    int n_at_closed;              /* calls that had run when it came */
    struct later_call c[4];       /* embedded calls */
    struct later_call *cancel_me; /* borrowed: cancelled by tag 100's callback */
    struct conn conn;             /* sessions' conn: points back here */
};

struct tag {
    struct fx *f;
    int id;
};

/* --- stand-in for the core --- */

void session_attached(struct session *s, int status)
{
    struct fx *f = s->conn->f;
    assert_true(f->n < FX_LOG);
    f->status[f->n] = status;
    f->log[f->n++] = 1000 + (int)s->id;
}

/* --- fixture --- */

static void fx_on_call(void *arg, int status)
{
    struct tag *t = arg;
    struct fx *f = t->f;
    assert_true(f->n < FX_LOG);
    f->status[f->n] = status;
    f->log[f->n++] = t->id;
    if (t->id == 100 && f->cancel_me != NULL)
        later_cancel(&f->l, f->cancel_me);
    if (t->id == 200)
        later_close(&f->l, NULL);
}

static void fx_on_closed(struct later *l)
{
    struct fx *f = l->data;
    f->closed++;
    f->n_at_closed = f->n;
}

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(later_init(&f->l, &f->loop), 0);
    f->l.data = f;
    f->conn.f = f;
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    if (!f->l.closing)
        later_close(&f->l, fx_on_closed);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

/* One loop iteration: the idle pass runs once. */
static void fx_step(struct fx *f)
{
    uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* --- tests --- */

static void test_later_idle_only_while_calls_wait(void **state)
{
    struct fx *f = *state;
    struct tag t = {f, 1};
    assert_false(uv_is_active((uv_handle_t *)&f->l.idle));
    assert_int_equal(later_push_done(&f->l, fx_on_call, &t, 0), 0);
    assert_true(uv_is_active((uv_handle_t *)&f->l.idle));
    assert_int_equal(later_count(&f->l), 1);
    fx_step(f);
    assert_int_equal(f->n, 1);
    assert_int_equal(later_count(&f->l), 0);
    assert_false(uv_is_active((uv_handle_t *)&f->l.idle));
    /* nothing waits: the loop has nothing alive and returns at once */
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
}

static void test_later_runs_once_later_in_order(void **state)
{
    struct fx *f = *state;
    struct tag t1 = {f, 1}, t2 = {f, 2}, t3 = {f, 3};
    struct session s = {.id = 7, .conn = &f->conn};
    assert_int_equal(later_push_done(&f->l, fx_on_call, &t1, UV_ENOBUFS), 0);
    later_attached(&f->l, &f->c[0], &s);
    later_call_add(&f->l, &f->c[1], fx_on_call, &t2, 5);
    assert_int_equal(later_push_done(&f->l, fx_on_call, &t3, 0), 0);
    assert_int_equal(f->n, 0); /* never inside the call */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->n, 4);
    assert_int_equal(f->log[0], 1);
    assert_int_equal(f->status[0], UV_ENOBUFS);
    assert_int_equal(f->log[1], 1007);
    assert_int_equal(f->status[1], 0);
    assert_int_equal(f->log[2], 2);
    assert_int_equal(f->status[2], 5);
    assert_int_equal(f->log[3], 3);
    assert_false(later_call_queued(&f->c[0]));
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->n, 4); /* exactly once */
}

static void fx_on_requeue(void *arg, int status)
{
    struct tag *t = arg;
    static struct tag next;
    (void)status;
    next.f = t->f;
    next.id = 2;
    t->f->log[t->f->n++] = t->id;
    assert_int_equal(later_push_done(&t->f->l, fx_on_call, &next, 0), 0);
}

static void test_later_queued_by_callback_waits_for_next_pass(void **state)
{
    struct fx *f = *state;
    struct tag t1 = {f, 1};
    later_call_add(&f->l, &f->c[0], fx_on_requeue, &t1, 0);
    fx_step(f);
    assert_int_equal(f->n, 1); /* the call it queued did not run in the same pass */
    assert_int_equal(later_count(&f->l), 1);
    fx_step(f);
    assert_int_equal(f->n, 2);
    assert_int_equal(f->log[1], 2);
}

static void test_later_cancel(void **state)
{
    struct fx *f = *state;
    struct tag t1 = {f, 1}, t2 = {f, 2}, t100 = {f, 100}, t3 = {f, 3};
    struct session s = {.id = 9, .conn = &f->conn};
    later_attached(&f->l, &f->c[0], &s);
    later_call_add(&f->l, &f->c[1], fx_on_call, &t1, 0);
    later_cancel(&f->l, &f->c[0]); /* detach before the 101 */
    later_cancel(&f->l, &f->c[0]); /* twice: a no-op */
    assert_false(later_call_queued(&f->c[0]));
    /* a callback cancels a call queued behind it in the same pass */
    later_call_add(&f->l, &f->c[2], fx_on_call, &t100, 0);
    later_call_add(&f->l, &f->c[3], fx_on_call, &t2, 0);
    f->cancel_me = &f->c[3];
    assert_int_equal(later_push_done(&f->l, fx_on_call, &t3, 0), 0);
    assert_int_equal(later_count(&f->l), 4);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->n, 3);
    assert_int_equal(f->log[0], 1);
    assert_int_equal(f->log[1], 100);
    assert_int_equal(f->log[2], 3);
    later_cancel(&f->l, &f->c[1]); /* after it ran: a no-op */
    assert_int_equal(later_count(&f->l), 0);
    /* an embedded call may be queued again once it ran */
    later_call_add(&f->l, &f->c[1], fx_on_call, &t1, 4);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->n, 4);
    assert_int_equal(f->status[3], 4);
}

static void test_later_close_runs_what_waits(void **state)
{
    struct fx *f = *state;
    struct tag t1 = {f, 1}, t2 = {f, 2};
    struct session s = {.id = 3, .conn = &f->conn};
    assert_int_equal(later_push_done(&f->l, fx_on_call, &t1, UV_ENOSPC), 0);
    later_attached(&f->l, &f->c[0], &s);
    later_call_status(&f->c[0], UV_ECANCELED); /* the broker closes before the 101 */
    later_close(&f->l, fx_on_closed);
    /* still accepted while closing: runs with the rest */
    assert_int_equal(later_push_done(&f->l, fx_on_call, &t2, 0), 0);
    assert_int_equal(f->n, 0); /* not inside later_close */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->closed, 1);
    assert_int_equal(f->n_at_closed, 3); /* every call ran before the close callback */
    assert_int_equal(f->log[0], 1);
    assert_int_equal(f->status[0], UV_ENOSPC);
    assert_int_equal(f->log[1], 1003);
    assert_int_equal(f->status[1], UV_ECANCELED);
    assert_int_equal(f->log[2], 2);
}

static void test_later_close_from_a_callback(void **state)
{
    struct fx *f = *state;
    struct tag t200 = {f, 200}, t1 = {f, 1};
    later_call_add(&f->l, &f->c[0], fx_on_call, &t200, 0);
    later_call_add(&f->l, &f->c[1], fx_on_call, &t1, 0);
    fx_step(f);
    /* the pass stopped at the close; the rest ran from the close */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(f->n, 2);
    assert_int_equal(f->log[0], 200);
    assert_int_equal(f->log[1], 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_later_idle_only_while_calls_wait, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_later_runs_once_later_in_order, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_later_queued_by_callback_waits_for_next_pass, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_later_cancel, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_later_close_runs_what_waits, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_later_close_from_a_callback, fx_setup, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
