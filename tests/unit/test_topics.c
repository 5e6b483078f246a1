/* test_topics.c — unit tests of src/topics.c: de-duplication of a session's repeated names,
 * fan-out to every local subscriber (exact order and counts, a refusal stops nobody else),
 * the first/last hooks (exactly once per topic, their failure undoes the subscribe), and
 * unsubscribe freeing empty topics. Stands in for session_deliver and links only topics.o,
 * map.o, msg.o, util.o, log.o. No loop needed. Single thread. */
/* cmocka.h needs these four first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "msg.h"
#include "session.h"
#include "topics.h"

#define FX_LOG 32

struct fx;

/* The test's connection: what session_deliver saw for one session. */
struct conn {
    struct fx *f;  /* borrowed */
    int refuse;    /* session_deliver returns UV_ECANCELED */
    int delivered; /* accepted deliveries */
};

struct fx {
    struct topics ts;
    struct conn conns[3];
    struct session sess[3];
    struct topics_sub subs[3][4];
    char *names[3][4];
    uint64_t log[FX_LOG]; /* session ids in delivery order */
    int n;
    int firsts, lasts; /* hook calls */
    char last_first[16], last_last[16];
    int fail_first_on; /* on_first fails for this topic name's first letter ('\0' none) */
};

int session_deliver(struct session *s, uint64_t msg_id, struct msg *m)
{
    struct fx *f = s->conn->f;
    assert_int_equal(msg_id, 0);
    assert_non_null(m);
    if (s->conn->refuse)
        return UV_ECANCELED;
    assert_true(f->n < FX_LOG);
    f->log[f->n++] = s->id;
    s->conn->delivered++;
    return 0;
}

static int fx_on_first(void *arg, struct topics_topic *t)
{
    struct fx *f = arg;
    if (f->fail_first_on != 0 && t->name[0] == f->fail_first_on)
        return UV_EIO;
    f->firsts++;
    snprintf(f->last_first, sizeof(f->last_first), "%s", t->name);
    t->bdata = f;
    return 0;
}

static void fx_on_last(void *arg, struct topics_topic *t)
{
    struct fx *f = arg;
    assert_ptr_equal(t->bdata, f); /* only topics whose on_first succeeded */
    assert_int_equal(t->nsubs, 0);
    f->lasts++;
    snprintf(f->last_last, sizeof(f->last_last), "%s", t->name);
}

/* Session i with the given topic names (up to 4). */
static struct session *fx_sess(struct fx *f, int i, int n, const char *a, const char *b,
                               const char *c)
{
    const char *v[3] = {a, b, c};
    struct session *s = &f->sess[i];
    f->conns[i].f = f;
    s->conn = &f->conns[i];
    s->id = (uint64_t)i + 1;
    for (int k = 0; k < n; k++)
        f->names[i][k] = (char *)v[k];
    s->topics = f->names[i];
    s->ntopics = (uint16_t)n;
    return s;
}

static int fx_setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    topics_init(&f->ts, fx_on_first, fx_on_last, f);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *f = *state;
    for (int i = 0; i < 3; i++)
        topics_unsubscribe(&f->ts, f->subs[i], f->sess[i].ntopics);
    assert_int_equal(topics_count(&f->ts), 0);
    assert_int_equal(f->firsts, f->lasts); /* every topic announced was withdrawn */
    topics_free(&f->ts);
    free(f);
    return 0;
}

static void test_topics_repeated_names_subscribe_once(void **state)
{
    struct fx *f = *state;
    struct session *s = fx_sess(f, 0, 3, "a", "b", "a");
    struct msg *m = msg_new_copy("x", 1, MSG_FRAME_AUTO);
    assert_int_equal(topics_distinct(s), 2);
    assert_int_equal(topics_name_repeats(s, 2), 1);
    assert_int_equal(topics_name_repeats(s, 1), 0);
    assert_int_equal(topics_subscribe(&f->ts, s, f->subs[0]), 0);
    assert_int_equal(topics_count(&f->ts), 2);
    assert_int_equal(f->firsts, 2);
    assert_null(f->subs[0][2].t);
    assert_int_equal(topics_publish(&f->ts, "a", 1, m), 1);
    assert_int_equal(f->n, 1); /* once, not twice */
    assert_int_equal(topics_publish(&f->ts, "zz", 2, m), 0);
    assert_null(topics_find(&f->ts, "zz", 2));
    msg_unref(m);
}

static void test_topics_fanout_order_and_refusal(void **state)
{
    struct fx *f = *state;
    struct msg *m = msg_new_copy("x", 1, MSG_FRAME_AUTO);
    for (int i = 0; i < 3; i++)
        assert_int_equal(topics_subscribe(&f->ts, fx_sess(f, i, 1, "t", NULL, NULL), f->subs[i]),
                         0);
    assert_int_equal(f->firsts, 1); /* one topic, three subscribers */
    assert_int_equal(topics_find(&f->ts, "t", 1)->nsubs, 3);
    f->conns[1].refuse = 1; /* the middle one is closing */
    assert_int_equal(topics_publish(&f->ts, "t", 1, m), 2);
    assert_int_equal(f->n, 2);
    assert_int_equal(f->log[0], 3); /* newest subscriber first */
    assert_int_equal(f->log[1], 1);
    msg_unref(m);
}

static void test_topics_last_subscriber_withdraws(void **state)
{
    struct fx *f = *state;
    assert_int_equal(topics_subscribe(&f->ts, fx_sess(f, 0, 2, "p", "q", NULL), f->subs[0]), 0);
    assert_int_equal(topics_subscribe(&f->ts, fx_sess(f, 1, 1, "q", NULL, NULL), f->subs[1]), 0);
    assert_int_equal(f->firsts, 2);
    topics_unsubscribe(&f->ts, f->subs[0], 2);
    assert_int_equal(f->lasts, 1); /* p went; q still has session 2 */
    assert_string_equal(f->last_last, "p");
    assert_null(topics_find(&f->ts, "p", 1));
    assert_non_null(topics_find(&f->ts, "q", 1));
    topics_unsubscribe(&f->ts, f->subs[0], 2); /* twice: a no-op */
    assert_int_equal(f->lasts, 1);
    topics_unsubscribe(&f->ts, f->subs[1], 1);
    assert_int_equal(f->lasts, 2);
    assert_int_equal(topics_count(&f->ts), 0);
    f->sess[0].ntopics = f->sess[1].ntopics = 0; /* teardown: nothing left */
}

static void test_topics_failed_first_undoes_everything(void **state)
{
    struct fx *f = *state;
    struct msg *m = msg_new_copy("x", 1, MSG_FRAME_AUTO);
    f->fail_first_on = 'y';
    assert_int_equal(topics_subscribe(&f->ts, fx_sess(f, 0, 3, "a", "b", "yy"), f->subs[0]),
                     UV_EIO);
    assert_int_equal(topics_count(&f->ts), 0);
    assert_int_equal(f->firsts, 2);
    assert_int_equal(f->lasts, 2); /* a and b were withdrawn again */
    assert_int_equal(topics_publish(&f->ts, "a", 1, m), 0);
    /* a bad name: the same */
    assert_int_equal(topics_subscribe(&f->ts, fx_sess(f, 1, 2, "c", "", NULL), f->subs[1]),
                     UV_EINVAL);
    assert_int_equal(topics_count(&f->ts), 0);
    assert_int_equal(f->firsts, 3);
    assert_int_equal(f->lasts, 3);
    msg_unref(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_topics_repeated_names_subscribe_once, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_topics_fanout_order_and_refusal, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_topics_last_subscriber_withdraws, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_topics_failed_first_undoes_everything, fx_setup,
                                        fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
