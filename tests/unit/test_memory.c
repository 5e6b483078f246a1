/* test_memory.c — unit tests of backends/memory.c on a real libuv loop. This file stands
 * in for the core: it defines session_deliver/session_attached/session_close (recording
 * every call, taking a msg ref per delivery like the real outq) and links only memory.o
 * map.o msg.o util.o log.o (Makefile TEST_OBJS_test_memory). Every run has a guard timer
 * (a hang fails) and every test ends with broker close + uv_loop_close() == 0; run under
 * SAN=1 to have LeakSanitizer check that close frees everything. Single thread. */
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

#include "broker.h"
#include "config.h"
#include "msg.h"
#include "session.h"

#define FX_SESSIONS 8
#define FX_RECS 256
#define FX_PUSHES 64
#define FX_GUARD_MS 3000

struct fx;

/* The test's connection: what the session_* stand-ins saw for one session. */
struct conn {
    struct fx *f;      /* borrowed: the fixture */
    int deliver_rc;    /* session_deliver returns this (0 = take the message) */
    int attempts;      /* session_deliver calls, refused ones included */
    int delivered;     /* accepted deliveries */
    int attached;      /* session_attached calls */
    int attach_status; /* status of the last one */
    int closes;        /* session_close calls */
    uint16_t close_code;
};

/* One accepted delivery. */
struct rec {
    struct session *s; /* borrowed */
    uint64_t msg_id;
    struct msg *m; /* ref: released by fx_finish */
    int attached;  /* s's session_attached count when it was delivered */
};

/* One push/publish callback slot. */
struct pcb {
    struct fx *f; /* borrowed: the fixture */
    int calls;
    int status;
};

struct fx {
    uv_loop_t loop;
    uv_timer_t guard; /* ref'd only while a run waits: fires => timed_out */
    int timed_out;
    struct config cfg; /* only ttl_ms, max_queue and memory_max_bytes matter to memory.c */
    struct broker b;
    int closed;   /* broker close callback count */
    int finished; /* fx_finish completed */
    struct conn conns[FX_SESSIONS];
    struct session sess[FX_SESSIONS];
    char *topics[FX_SESSIONS][4];
    struct rec rec[FX_RECS];
    int nrec;
    struct pcb pcb[FX_PUSHES];
    int in_broker_call; /* 1 while the test is inside push/publish/attach/close */
    int cb_during_call; /* a push callback ran inside a broker call (a bug) */
};

/* --- stand-ins for the core (src/session.c is not linked) --- */

int session_deliver(struct session *s, uint64_t msg_id, struct msg *m)
{
    struct conn *c = s->conn;
    struct fx *f = c->f;
    c->attempts++;
    if (c->deliver_rc != 0)
        return c->deliver_rc;
    assert_true(f->nrec < FX_RECS);
    f->rec[f->nrec].s = s;
    f->rec[f->nrec].msg_id = msg_id;
    f->rec[f->nrec].m = msg_ref(m);
    f->rec[f->nrec].attached = c->attached;
    f->nrec++;
    c->delivered++;
    return 0;
}

/* memory.c never asks (no window): qdeliver.o links it, so it must exist. */
int session_can_take(const struct session *s, size_t len)
{
    (void)s, (void)len;
    fail_msg("session_can_take called by an at-most-once backend");
    return 1;
}

void session_attached(struct session *s, int status)
{
    s->conn->attached++;
    s->conn->attach_status = status;
}

void session_close(struct session *s, uint16_t code)
{
    s->conn->closes++;
    s->conn->close_code = code;
}

/* --- fixture --- */

static void fx_on_guard(uv_timer_t *h)
{
    struct fx *f = h->data;
    f->timed_out = 1;
}

static void fx_on_closed(struct broker *b)
{
    struct fx *f = b->data;
    f->closed++;
}

static void fx_on_pushed(void *arg, int status)
{
    struct pcb *p = arg;
    if (p->f != NULL && p->f->in_broker_call)
        p->f->cb_during_call = 1; /* must never run inside push/publish/attach/close */
    p->calls++;
    p->status = status;
}

static void fx_guard_start(struct fx *f, uint64_t ms)
{
    f->timed_out = 0;
    uv_timer_start(&f->guard, fx_on_guard, ms, 0);
}

/* Run the loop until cond holds; a guard timer turns a hang into a failure. */
#define RUN_UNTIL(f, cond)                                                                         \
    do {                                                                                           \
        fx_guard_start((f), FX_GUARD_MS);                                                          \
        while (!(cond) && !(f)->timed_out)                                                         \
            uv_run(&(f)->loop, UV_RUN_ONCE);                                                       \
        uv_timer_stop(&(f)->guard);                                                                \
        assert_true(cond);                                                                         \
    } while (0)

/* Run the loop for about ms milliseconds. */
static void fx_run_for(struct fx *f, uint64_t ms)
{
    fx_guard_start(f, ms);
    while (!f->timed_out)
        uv_run(&f->loop, UV_RUN_ONCE);
}

static int fx_setup_cfg(void **state, uint64_t ttl_ms, uint32_t max_queue, uint64_t max_bytes)
{
    struct fx *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return -1;
    if (uv_loop_init(&f->loop) != 0 || uv_timer_init(&f->loop, &f->guard) != 0)
        return -1;
    f->guard.data = f;
    f->cfg.ttl_ms = ttl_ms;
    f->cfg.max_queue = max_queue;
    f->cfg.memory_max_bytes = max_bytes;
    f->b.ops = &broker_memory_ops; /* what broker_open does (src/broker.c is not linked) */
    f->b.loop = &f->loop;
    f->b.cfg = &f->cfg;
    f->b.data = f;
    if (f->b.ops->open(&f->b, &f->loop, &f->cfg) != 0)
        return -1;
    for (int i = 0; i < FX_SESSIONS; i++) {
        f->conns[i].f = f;
        f->sess[i].conn = &f->conns[i];
        f->sess[i].id = (uint64_t)i + 1;
    }
    for (int i = 0; i < FX_PUSHES; i++)
        f->pcb[i].f = f;
    *state = f;
    return 0;
}

#define FX_MAX_BYTES (256u << 20) /* the config default */

static int fx_setup(void **state)
{
    return fx_setup_cfg(state, 3600 * 1000, 1000, FX_MAX_BYTES);
}

static int fx_setup_maxq(void **state) /* max_queue 2 */
{
    return fx_setup_cfg(state, 3600 * 1000, 2, FX_MAX_BYTES);
}

static int fx_setup_ttl(void **state) /* ttl 200ms */
{
    return fx_setup_cfg(state, 200, 1000, FX_MAX_BYTES);
}

/* memory_max_bytes 3500: three 1000-byte messages fit, a fourth does not. Each is charged
 * 1004 (payload + 4-byte frame header) plus a per-item overhead under 160, so 3 x 1164 <=
 * 3500 < 4 x 1004 holds for any overhead the backend may pick in that range. */
#define FX_CAP_BYTES 3500
#define FX_BIG 1000

static int fx_setup_cap(void **state) /* max_queue 2, memory_max_bytes 3500 */
{
    return fx_setup_cfg(state, 3600 * 1000, 2, FX_CAP_BYTES);
}

static int fx_setup_cap_ttl(void **state) /* ttl 200ms, memory_max_bytes 3500 */
{
    return fx_setup_cfg(state, 200, 1000, FX_CAP_BYTES);
}

static void fx_release_recs(struct fx *f)
{
    for (int i = 0; i < f->nrec; i++)
        msg_unref(f->rec[i].m);
    f->nrec = 0;
}

/* Close the broker, then check that the loop has nothing left. Every test ends here. */
static void fx_finish(struct fx *f)
{
    f->in_broker_call = 1;
    broker_close(&f->b, fx_on_closed);
    f->in_broker_call = 0;
    assert_int_equal(f->closed, 0); /* later, never inside close */
    RUN_UNTIL(f, f->closed == 1);
    assert_null(f->b.priv);
    fx_release_recs(f);
    uv_close((uv_handle_t *)&f->guard, NULL);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    assert_int_equal(f->closed, 1);
    assert_int_equal(f->cb_during_call, 0);
    f->finished = 1;
}

/* After a failed assertion: free what can be freed, without asserting. */
static int fx_teardown(void **state)
{
    struct fx *f = *state;
    if (!f->finished) {
        if (f->b.priv != NULL && f->closed == 0)
            broker_close(&f->b, fx_on_closed);
        for (int i = 0; i < 100 && f->closed == 0; i++)
            uv_run(&f->loop, UV_RUN_NOWAIT);
        fx_release_recs(f);
        if (!uv_is_closing((uv_handle_t *)&f->guard))
            uv_close((uv_handle_t *)&f->guard, NULL);
        uv_run(&f->loop, UV_RUN_DEFAULT);
        (void)uv_loop_close(&f->loop);
    }
    free(f);
    return 0;
}

/* Session i with key and up to 4 topics (NULL-terminated list). */
static struct session *fx_session(struct fx *f, int i, const char *key, ...)
{
    struct session *s = &f->sess[i];
    va_list ap;
    const char *t;
    size_t len = strlen(key);
    assert_true(len <= KEY_MAX_LEN);
    memcpy(s->key, key, len + 1);
    s->key_len = (uint8_t)len;
    s->ntopics = 0;
    s->topics = f->topics[i];
    va_start(ap, key);
    while ((t = va_arg(ap, const char *)) != NULL) {
        assert_true(s->ntopics < 4);
        f->topics[i][s->ntopics++] = (char *)t;
    }
    va_end(ap);
    return s;
}

static int fx_attach(struct fx *f, struct session *s)
{
    int rc;
    f->in_broker_call = 1;
    rc = broker_attach(&f->b, s);
    f->in_broker_call = 0;
    return rc;
}

/* Attach s and run until its session_attached ran. */
static void fx_attach_wait(struct fx *f, struct session *s)
{
    int before = s->conn->attached;
    assert_int_equal(fx_attach(f, s), 0);
    assert_int_equal(s->conn->attached, before); /* never inside attach */
    RUN_UNTIL(f, s->conn->attached == before + 1);
    assert_int_equal(s->conn->attach_status, 0);
}

/* Push a copy of text to key with callback slot slot; returns the broker's rc. The
 * test's own msg ref is dropped right after the call, as the core does. */
static int fx_push(struct fx *f, const char *key, const char *text, int slot)
{
    struct msg *m = msg_new_copy(text, strlen(text), MSG_FRAME_AUTO);
    int rc;
    assert_non_null(m);
    f->in_broker_call = 1;
    rc = broker_push(&f->b, key, m, fx_on_pushed, &f->pcb[slot]);
    f->in_broker_call = 0;
    msg_unref(m);
    return rc;
}

static int fx_publish(struct fx *f, const char *topic, const char *text, int slot)
{
    struct msg *m = msg_new_copy(text, strlen(text), MSG_FRAME_AUTO);
    int rc;
    assert_non_null(m);
    f->in_broker_call = 1;
    rc = broker_publish(&f->b, topic, m, fx_on_pushed, &f->pcb[slot]);
    f->in_broker_call = 0;
    msg_unref(m);
    return rc;
}

static void fx_assert_rec(struct fx *f, int i, struct session *s, const char *text)
{
    assert_true(i < f->nrec);
    assert_ptr_equal(f->rec[i].s, s);
    assert_int_equal(f->rec[i].msg_id, 0); /* memory is at-most-once: never an ack id */
    assert_int_equal(f->rec[i].m->len, strlen(text));
    assert_memory_equal(f->rec[i].m->data, text, strlen(text));
}

struct fx_walk {
    struct fx *f;
    int n;
};

static void fx_walk_cb(uv_handle_t *h, void *arg)
{
    struct fx_walk *w = arg;
    if (h != (uv_handle_t *)&w->f->guard && uv_is_active(h))
        w->n++;
}

/* Number of the broker's handles that are active (idle or timer): 0 means no CPU use
 * and no wake-ups while nothing is pending. */
static int fx_active_handles(struct fx *f)
{
    struct fx_walk w = {f, 0};
    uv_walk(&f->loop, fx_walk_cb, &w);
    return w.n;
}

#define FX_BEGIN(state) struct fx *f = *(state)

/* --- tests --- */

static void test_memory_push_calls_back_once_later(void **state)
{
    FX_BEGIN(state);
    assert_string_equal(broker_memory_ops.name, "memory");
    assert_int_equal(broker_ready(&f->b), 1);
    assert_int_equal(fx_active_handles(f), 0); /* idle broker: nothing armed */
    assert_int_equal(fx_push(f, "s1", "hi", 0), 0);
    assert_int_equal(f->pcb[0].calls, 0); /* never from inside the call */
    RUN_UNTIL(f, f->pcb[0].calls == 1);
    assert_int_equal(f->pcb[0].status, 0);
    /* A second push's callback comes later too; the first never runs again. */
    assert_int_equal(fx_push(f, "s2", "ho", 1), 0);
    RUN_UNTIL(f, f->pcb[1].calls == 1);
    fx_run_for(f, 20);
    assert_int_equal(f->pcb[0].calls, 1);
    assert_int_equal(f->pcb[1].calls, 1);
    /* Callbacks done: the idle handle is stopped; only the (unref'd) TTL timer waits. */
    assert_int_equal(fx_active_handles(f), 1);
    assert_int_equal(uv_loop_alive(&f->loop), 0);
    /* Memory has no upstream reader: the core's wrapper reports ENOSYS and drops. */
    assert_null(broker_memory_ops.upstream);
    assert_int_equal(broker_upstream(&f->b, &f->sess[0], NULL, fx_on_pushed, NULL), UV_ENOSYS);
    assert_null(broker_memory_ops.ack);
    assert_int_equal(f->b.dropped, 0);
    fx_finish(f);
    assert_int_equal(f->b.dropped, 2); /* the two queued messages went with the broker */
}

static void test_memory_online_delivery_consume_once(void **state)
{
    FX_BEGIN(state);
    struct session *a = fx_session(f, 0, "user42", NULL);
    struct session *b = fx_session(f, 1, "user42", NULL);
    fx_attach_wait(f, a);
    assert_int_equal(fx_active_handles(f), 0);
    assert_int_equal(fx_push(f, "user42", "hello", 0), 0);
    assert_int_equal(f->nrec, 1); /* online: straight to the socket */
    fx_assert_rec(f, 0, a, "hello");
    assert_int_equal(f->rec[0].m->refs, 1); /* only the socket's ref is left */
    RUN_UNTIL(f, f->pcb[0].calls == 1);
    assert_int_equal(f->pcb[0].status, 0);
    /* Consumed once: a second socket of the key gets nothing, a third push goes once. */
    fx_attach_wait(f, b);
    assert_int_equal(f->nrec, 1);
    assert_int_equal(fx_push(f, "user42", "again", 1), 0);
    assert_int_equal(f->nrec, 2);
    assert_int_equal(a->conn->delivered + b->conn->delivered, 2);
    RUN_UNTIL(f, f->pcb[1].calls == 1);
    assert_int_equal(fx_active_handles(f), 0); /* nothing stored: no TTL timer */
    /* A push to another key does not reach these sockets. */
    assert_int_equal(fx_push(f, "user43", "other", 2), 0);
    RUN_UNTIL(f, f->pcb[2].calls == 1);
    assert_int_equal(f->nrec, 2);
    broker_detach(&f->b, a);
    broker_detach(&f->b, b);
    fx_finish(f);
}

static void test_memory_round_robin_two_sockets(void **state)
{
    FX_BEGIN(state);
    struct session *a = fx_session(f, 0, "k", NULL);
    struct session *b = fx_session(f, 1, "k", NULL);
    const char *texts[6] = {"m0", "m1", "m2", "m3", "m4", "m5"};
    fx_attach_wait(f, a);
    fx_attach_wait(f, b);
    for (int i = 0; i < 6; i++)
        assert_int_equal(fx_push(f, "k", texts[i], i), 0);
    assert_int_equal(f->nrec, 6);
    assert_int_equal(a->conn->delivered, 3);
    assert_int_equal(b->conn->delivered, 3);
    for (int i = 0; i < 6; i++) {
        fx_assert_rec(f, i, f->rec[i].s, texts[i]); /* in push order */
        if (i > 0)
            assert_ptr_not_equal(f->rec[i].s, f->rec[i - 1].s); /* alternating */
    }
    RUN_UNTIL(f, f->pcb[5].calls == 1);
    /* One socket leaves: every push goes to the other. */
    broker_detach(&f->b, a);
    for (int i = 6; i < 9; i++)
        assert_int_equal(fx_push(f, "k", "x", i), 0);
    assert_int_equal(f->nrec, 9);
    for (int i = 6; i < 9; i++)
        assert_ptr_equal(f->rec[i].s, b);
    RUN_UNTIL(f, f->pcb[8].calls == 1);
    broker_detach(&f->b, b);
    /* Nobody online: the next push waits offline. */
    assert_int_equal(fx_push(f, "k", "offline", 9), 0);
    assert_int_equal(f->nrec, 9);
    RUN_UNTIL(f, f->pcb[9].calls == 1);
    assert_int_equal(f->pcb[9].status, 0);
    fx_finish(f);
    assert_int_equal(f->b.dropped, 1);
}

static void test_memory_offline_then_drain_in_order(void **state)
{
    FX_BEGIN(state);
    struct session *s = fx_session(f, 0, "svc1.user42", NULL);
    struct msg *keep = msg_new_copy("m1", 2, MSG_FRAME_AUTO);
    assert_non_null(keep);
    f->in_broker_call = 1;
    assert_int_equal(broker_push(&f->b, "svc1.user42", keep, fx_on_pushed, &f->pcb[0]), 0);
    f->in_broker_call = 0;
    assert_int_equal(keep->refs, 2); /* the queue holds a ref, no copy */
    assert_int_equal(fx_push(f, "svc1.user42", "m2", 1), 0);
    assert_int_equal(fx_push(f, "svc1.user42", "m3", 2), 0);
    RUN_UNTIL(f, f->pcb[2].calls == 1);
    assert_int_equal(f->pcb[0].calls + f->pcb[1].calls, 2);
    assert_int_equal(f->pcb[0].status | f->pcb[1].status | f->pcb[2].status, 0);
    assert_int_equal(f->nrec, 0);
    assert_int_equal(fx_active_handles(f), 1); /* the TTL timer waits for the first expiry */
    /* Attach, and push once more before the attach completes: m4 queues behind m1..m3. */
    assert_int_equal(fx_attach(f, s), 0);
    assert_int_equal(f->nrec, 0); /* the drain happens later, right before the 101 */
    assert_int_equal(fx_push(f, "svc1.user42", "m4", 3), 0);
    assert_int_equal(f->nrec, 0);
    RUN_UNTIL(f, s->conn->attached == 1);
    assert_int_equal(s->conn->attach_status, 0);
    assert_int_equal(f->nrec, 4);
    const char *want[4] = {"m1", "m2", "m3", "m4"};
    for (int i = 0; i < 4; i++) {
        fx_assert_rec(f, i, s, want[i]);
        assert_int_equal(f->rec[i].attached, 0); /* delivered before session_attached */
    }
    assert_ptr_equal(f->rec[0].m, keep);
    assert_int_equal(keep->refs, 2); /* test + socket: the queue let go of its ref */
    msg_unref(keep);
    RUN_UNTIL(f, f->pcb[3].calls == 1);
    assert_int_equal(fx_active_handles(f), 0); /* queue empty: the TTL timer is stopped */
    assert_int_equal(f->b.dropped, 0);
    /* Online now: the next push goes straight through. */
    assert_int_equal(fx_push(f, "svc1.user42", "m5", 4), 0);
    assert_int_equal(f->nrec, 5);
    fx_assert_rec(f, 4, s, "m5");
    RUN_UNTIL(f, f->pcb[4].calls == 1);
    broker_detach(&f->b, s);
    fx_finish(f);
    assert_int_equal(f->b.dropped, 0);
}

static void test_memory_max_queue_enobufs(void **state)
{
    FX_BEGIN(state); /* max_queue 2 */
    struct session *s = fx_session(f, 0, "full", NULL);
    assert_int_equal(fx_push(f, "full", "a", 0), 0);
    assert_int_equal(fx_push(f, "full", "b", 1), 0);
    assert_int_equal(fx_push(f, "full", "c", 2), 0);  /* accepted call, refused message */
    assert_int_equal(fx_push(f, "other", "d", 3), 0); /* the bound is per key */
    assert_int_equal(f->pcb[2].calls, 0);
    RUN_UNTIL(f, f->pcb[3].calls == 1);
    assert_int_equal(f->pcb[0].status, 0);
    assert_int_equal(f->pcb[1].status, 0);
    assert_int_equal(f->pcb[2].status, UV_ENOBUFS); /* the core answers 429 */
    assert_int_equal(f->pcb[2].calls, 1);
    assert_int_equal(f->pcb[3].status, 0);
    /* Draining frees room again. */
    fx_attach_wait(f, s);
    assert_int_equal(f->nrec, 2);
    fx_assert_rec(f, 0, s, "a");
    fx_assert_rec(f, 1, s, "b");
    broker_detach(&f->b, s);
    assert_int_equal(fx_push(f, "full", "e", 4), 0);
    assert_int_equal(fx_push(f, "full", "f", 5), 0);
    RUN_UNTIL(f, f->pcb[5].calls == 1);
    assert_int_equal(f->pcb[4].status, 0);
    assert_int_equal(f->pcb[5].status, 0);
    /* Refused messages are not "dropped" (the client got a 429 instead). */
    assert_int_equal(f->b.dropped, 0);
    fx_finish(f);
}

static void test_memory_ttl_expiry_counts_dropped(void **state)
{
    FX_BEGIN(state); /* ttl 200ms */
    struct session *s = fx_session(f, 0, "late", NULL);
    struct msg *m1 = msg_new_copy("old", 3, MSG_FRAME_AUTO);
    uint64_t t0;
    assert_non_null(m1);
    uv_update_time(&f->loop);
    t0 = uv_now(&f->loop);
    f->in_broker_call = 1;
    assert_int_equal(broker_push(&f->b, "late", m1, fx_on_pushed, &f->pcb[0]), 0);
    f->in_broker_call = 0;
    assert_int_equal(m1->refs, 2);
    fx_run_for(f, 100);
    assert_int_equal(f->b.dropped, 0); /* not before its time */
    assert_int_equal(fx_push(f, "late", "young", 1), 0);
    assert_int_equal(fx_push(f, "late2", "young2", 2), 0);
    RUN_UNTIL(f, f->b.dropped == 1);
    assert_true(uv_now(&f->loop) - t0 >= 200);
    assert_int_equal(m1->refs, 1); /* the queue's ref is gone */
    msg_unref(m1);
    assert_int_equal(fx_active_handles(f), 1); /* re-armed for "young" */
    /* The survivor is still delivered, alone. */
    fx_attach_wait(f, s);
    assert_int_equal(f->nrec, 1);
    fx_assert_rec(f, 0, s, "young");
    /* "young2" has nobody: it expires too, and then the timer stops (no polling). */
    RUN_UNTIL(f, f->b.dropped == 2);
    assert_int_equal(fx_active_handles(f), 0);
    assert_int_equal(uv_loop_alive(&f->loop), 0);
    broker_detach(&f->b, s);
    assert_int_equal(f->pcb[0].calls + f->pcb[1].calls + f->pcb[2].calls, 3);
    fx_finish(f);
    assert_int_equal(f->b.dropped, 2);
}

static void test_memory_publish_fanout(void **state)
{
    FX_BEGIN(state);
    struct session *s1 = fx_session(f, 0, "u1", "news", "sport", NULL);
    struct session *s2 = fx_session(f, 1, "u2", "news", NULL);
    struct session *s3 = fx_session(f, 2, "u3", "weather", NULL);
    struct session *s4 = fx_session(f, 3, "u4", "news", "news", NULL); /* repeated topic */
    struct session *s5 = fx_session(f, 4, "u1", NULL);                 /* same key as s1 */
    fx_attach_wait(f, s1);
    fx_attach_wait(f, s2);
    fx_attach_wait(f, s3);
    fx_attach_wait(f, s4);
    fx_attach_wait(f, s5);
    assert_int_equal(fx_publish(f, "news", "breaking", 0), 0);
    assert_int_equal(f->nrec, 3);
    assert_int_equal(s1->conn->delivered, 1);
    assert_int_equal(s2->conn->delivered, 1);
    assert_int_equal(s3->conn->delivered, 0);
    assert_int_equal(s4->conn->delivered, 1); /* once, though listed twice */
    assert_int_equal(s5->conn->delivered, 0); /* same key, not subscribed */
    for (int i = 0; i < 3; i++)
        fx_assert_rec(f, i, f->rec[i].s, "breaking");
    assert_ptr_equal(f->rec[0].m, f->rec[1].m); /* one shared message, no copies */
    assert_ptr_equal(f->rec[1].m, f->rec[2].m);
    assert_int_equal(f->pcb[0].calls, 0);
    RUN_UNTIL(f, f->pcb[0].calls == 1);
    assert_int_equal(f->pcb[0].status, 0);
    /* Nobody subscribed: still 0, later; nothing delivered, nothing stored. */
    assert_int_equal(fx_publish(f, "empty", "void", 1), 0);
    assert_int_equal(f->nrec, 3);
    RUN_UNTIL(f, f->pcb[1].calls == 1);
    assert_int_equal(f->pcb[1].status, 0);
    assert_int_equal(fx_active_handles(f), 0);
    /* A refusing subscriber does not stop the others. */
    s1->conn->deliver_rc = UV_ENOBUFS;
    assert_int_equal(fx_publish(f, "news", "second", 2), 0);
    assert_int_equal(s1->conn->attempts, 2);
    assert_int_equal(f->nrec, 5);
    RUN_UNTIL(f, f->pcb[2].calls == 1);
    assert_int_equal(f->pcb[2].status, 0);
    /* After detach, s2 gets nothing; a late subscriber gets no history. */
    broker_detach(&f->b, s1);
    broker_detach(&f->b, s2);
    struct session *s6 = fx_session(f, 5, "u6", "news", NULL);
    fx_attach_wait(f, s6);
    assert_int_equal(f->nrec, 5);
    assert_int_equal(fx_publish(f, "news", "third", 3), 0);
    assert_int_equal(f->nrec, 7);
    assert_int_equal(s2->conn->delivered, 2);
    assert_int_equal(s4->conn->delivered, 3);
    assert_int_equal(s6->conn->delivered, 1);
    fx_assert_rec(f, 5, f->rec[5].s, "third");
    RUN_UNTIL(f, f->pcb[3].calls == 1);
    /* Topic delivery is not a session push: "sport" lost its only subscriber. */
    assert_int_equal(fx_publish(f, "sport", "goal", 4), 0);
    assert_int_equal(f->nrec, 7);
    RUN_UNTIL(f, f->pcb[4].calls == 1);
    broker_detach(&f->b, s3);
    broker_detach(&f->b, s4);
    broker_detach(&f->b, s5);
    broker_detach(&f->b, s6);
    assert_int_equal(fx_publish(f, "news", "gone", 5), 0);
    assert_int_equal(f->nrec, 7);
    RUN_UNTIL(f, f->pcb[5].calls == 1);
    for (int i = 0; i < 6; i++)
        assert_int_equal(f->sess[i].conn->closes, 0);
    fx_finish(f);
    assert_int_equal(f->b.dropped, 0);
}

static void test_memory_detach_cancels_pending_attach(void **state)
{
    FX_BEGIN(state);
    struct session *s = fx_session(f, 0, "gone", "t", NULL);
    assert_int_equal(fx_push(f, "gone", "waiting", 0), 0);
    assert_int_equal(fx_attach(f, s), 0);
    broker_detach(&f->b, s); /* the socket went away before its 101 */
    assert_null(s->bpriv);
    broker_detach(&f->b, s); /* a second detach is harmless */
    assert_int_equal(fx_push(f, "sentinel", "x", 1), 0);
    RUN_UNTIL(f, f->pcb[1].calls == 1);
    fx_run_for(f, 20);
    assert_int_equal(s->conn->attached, 0); /* never, not even with an error */
    assert_int_equal(s->conn->attempts, 0); /* its backlog stayed queued */
    assert_int_equal(f->pcb[0].status, 0);
    /* Its subscription went with it. */
    assert_int_equal(fx_publish(f, "t", "pub", 2), 0);
    RUN_UNTIL(f, f->pcb[2].calls == 1);
    assert_int_equal(s->conn->attempts, 0);
    /* The same session can attach again and gets the backlog then. */
    fx_attach_wait(f, s);
    assert_int_equal(f->nrec, 1);
    fx_assert_rec(f, 0, s, "waiting");
    broker_detach(&f->b, s);
    fx_finish(f);
    assert_int_equal(s->conn->attached, 1);
    assert_int_equal(s->conn->closes, 0);
    assert_int_equal(f->b.dropped, 1); /* "sentinel" was still queued at close */
}

static void test_memory_deliver_failure_keeps_message(void **state)
{
    FX_BEGIN(state);
    struct session *a = fx_session(f, 0, "k", NULL);
    struct session *b = fx_session(f, 1, "k", NULL);
    struct session *c = fx_session(f, 2, "k", NULL);
    fx_attach_wait(f, a);
    fx_attach_wait(f, b);
    /* One socket refuses (it is being closed): the other one gets the message. */
    a->conn->deliver_rc = UV_ECANCELED;
    for (int i = 0; i < 4; i++)
        assert_int_equal(fx_push(f, "k", "one", i), 0);
    assert_int_equal(b->conn->delivered, 4);
    assert_int_equal(a->conn->delivered, 0);
    assert_true(a->conn->attempts >= 1);
    RUN_UNTIL(f, f->pcb[3].calls == 1);
    /* Both refuse: the message stays queued, and the push still succeeds. */
    b->conn->deliver_rc = UV_ENOBUFS;
    assert_int_equal(fx_push(f, "k", "kept1", 4), 0);
    assert_int_equal(fx_push(f, "k", "kept2", 5), 0);
    assert_int_equal(f->nrec, 4);
    RUN_UNTIL(f, f->pcb[5].calls == 1);
    assert_int_equal(f->pcb[4].status, 0);
    assert_int_equal(f->pcb[5].status, 0);
    assert_int_equal(fx_active_handles(f), 1); /* TTL timer for the kept messages */
    /* The refusing sockets go away; a new one drains the kept messages in order. */
    broker_detach(&f->b, a);
    broker_detach(&f->b, b);
    fx_attach_wait(f, c);
    assert_int_equal(f->nrec, 6);
    fx_assert_rec(f, 4, c, "kept1");
    fx_assert_rec(f, 5, c, "kept2");
    assert_int_equal(fx_active_handles(f), 0);
    /* A drain that is refused midway keeps the rest for the next socket. */
    broker_detach(&f->b, c);
    assert_int_equal(fx_push(f, "k", "r1", 6), 0);
    assert_int_equal(fx_push(f, "k", "r2", 7), 0);
    RUN_UNTIL(f, f->pcb[7].calls == 1);
    struct session *d = fx_session(f, 3, "k", NULL);
    d->conn->deliver_rc = UV_ECANCELED;
    fx_attach_wait(f, d);
    broker_detach(&f->b, d);
    struct session *e = fx_session(f, 4, "k", NULL);
    fx_attach_wait(f, e);
    assert_int_equal(f->nrec, 8);
    fx_assert_rec(f, 6, e, "r1");
    fx_assert_rec(f, 7, e, "r2");
    broker_detach(&f->b, e);
    fx_finish(f);
    assert_int_equal(f->b.dropped, 0);
}

static void test_memory_close_frees_everything(void **state)
{
    FX_BEGIN(state);
    struct session *on = fx_session(f, 0, "online", "t1", "t2", NULL);
    struct session *pend = fx_session(f, 1, "pending", "t1", NULL);
    struct msg *m = msg_new_copy("held", 4, MSG_FRAME_AUTO);
    assert_non_null(m);
    fx_attach_wait(f, on);
    for (int i = 0; i < 10; i++) {
        char key[16];
        snprintf(key, sizeof(key), "off%d", i % 4);
        assert_int_equal(fx_push(f, key, "queued", i), 0);
    }
    f->in_broker_call = 1;
    assert_int_equal(broker_push(&f->b, "off0", m, fx_on_pushed, &f->pcb[10]), 0);
    f->in_broker_call = 0;
    assert_int_equal(m->refs, 2);
    /* Close with the callbacks still pending and an attach not yet answered. */
    assert_int_equal(fx_attach(f, pend), 0);
    assert_int_equal(fx_publish(f, "t1", "pub", 11), 0);
    assert_int_equal(f->nrec, 2); /* both t1 subscribers, pend included */
    f->in_broker_call = 1;
    broker_close(&f->b, fx_on_closed);
    f->in_broker_call = 0;
    assert_int_equal(broker_ready(&f->b), 0);
    assert_int_equal(fx_push(f, "x", "late", 12), UV_ECANCELED); /* closing: refused */
    assert_int_equal(f->pcb[12].calls, 0);
    assert_int_equal(f->pcb[0].calls, 0);
    assert_int_equal(m->refs, 1); /* freed with the queues, synchronously */
    msg_unref(m);
    RUN_UNTIL(f, f->closed == 1);
    for (int i = 0; i < 12; i++) {
        assert_int_equal(f->pcb[i].calls, 1); /* accepted calls still answer once */
        assert_int_equal(f->pcb[i].status, 0);
    }
    assert_int_equal(on->conn->closes, 1); /* online socket: going away */
    assert_int_equal(on->conn->close_code, 1001);
    assert_int_equal(pend->conn->attached, 1); /* pending attach: answered with an error */
    assert_int_equal(pend->conn->attach_status, UV_ECANCELED);
    assert_int_equal(pend->conn->closes, 0);
    assert_int_equal(f->b.dropped, 11);
    /* The core's detach after close is a no-op. */
    broker_detach(&f->b, on);
    broker_detach(&f->b, pend);
    assert_null(f->b.priv);
    f->closed = 0; /* fx_finish closes again: make that a fresh broker */
    assert_int_equal(f->b.ops->open(&f->b, &f->loop, &f->cfg), 0);
    fx_finish(f);
}

/* A push callback that closes the broker: the remaining callbacks run once, from close. */
struct closer {
    struct fx *f;
    int calls;
};

static void fx_on_pushed_close(void *arg, int status)
{
    struct closer *c = arg;
    (void)status;
    c->calls++;
    broker_close(&c->f->b, fx_on_closed);
}

static void test_memory_close_from_callback(void **state)
{
    FX_BEGIN(state);
    struct closer c = {f, 0};
    struct msg *m = msg_new_copy("x", 1, MSG_FRAME_AUTO);
    assert_non_null(m);
    assert_int_equal(broker_push(&f->b, "a", m, fx_on_pushed_close, &c), 0);
    assert_int_equal(broker_push(&f->b, "b", m, fx_on_pushed, &f->pcb[0]), 0);
    assert_int_equal(broker_push(&f->b, "c", m, fx_on_pushed, &f->pcb[1]), 0);
    msg_unref(m);
    RUN_UNTIL(f, f->closed == 1);
    assert_int_equal(c.calls, 1);
    assert_int_equal(f->pcb[0].calls, 1);
    assert_int_equal(f->pcb[1].calls, 1);
    f->closed = 0;
    assert_int_equal(f->b.ops->open(&f->b, &f->loop, &f->cfg), 0);
    fx_finish(f);
}

/* A callback that pushes again is served on the next loop turn (no spinning in one). */
struct again {
    struct fx *f;
    int calls;
    int limit;
};

static void fx_on_pushed_again(void *arg, int status)
{
    struct again *a = arg;
    struct msg *m;
    assert_int_equal(status, 0);
    if (++a->calls >= a->limit)
        return;
    m = msg_new_copy("y", 1, MSG_FRAME_AUTO);
    assert_non_null(m);
    assert_int_equal(broker_push(&a->f->b, "again", m, fx_on_pushed_again, a), 0);
    msg_unref(m);
}

static void test_memory_push_from_callback(void **state)
{
    FX_BEGIN(state);
    struct session *s = fx_session(f, 0, "again", NULL);
    struct again a = {f, 0, 5};
    struct msg *m = msg_new_copy("y", 1, MSG_FRAME_AUTO);
    assert_non_null(m);
    fx_attach_wait(f, s);
    assert_int_equal(broker_push(&f->b, "again", m, fx_on_pushed_again, &a), 0);
    msg_unref(m);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    assert_int_equal(a.calls, 1); /* one per turn */
    RUN_UNTIL(f, a.calls == 5);
    assert_int_equal(f->nrec, 5);
    assert_int_equal(fx_active_handles(f), 0);
    broker_detach(&f->b, s);
    fx_finish(f);
}

static void test_memory_bad_input(void **state)
{
    FX_BEGIN(state);
    struct session *s = fx_session(f, 0, "ok", NULL);
    char longkey[KEY_MAX_LEN + 2];
    memset(longkey, 'a', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    assert_int_equal(fx_push(f, "", "x", 0), UV_EINVAL);
    assert_int_equal(fx_push(f, longkey, "x", 1), UV_EINVAL);
    assert_int_equal(fx_publish(f, "", "x", 2), UV_EINVAL);
    s->key_len = 0;
    assert_int_equal(fx_attach(f, s), UV_EINVAL);
    broker_detach(&f->b, s); /* after a failed attach: no-op */
    fx_run_for(f, 10);
    assert_int_equal(f->pcb[0].calls + f->pcb[1].calls + f->pcb[2].calls, 0);
    assert_int_equal(s->conn->attached, 0);
    fx_finish(f);
}

/* A text of n bytes (n < sizeof buf), the same every time. */
static const char *fx_text(size_t n)
{
    static char buf[4096];
    assert_true(n < sizeof(buf));
    memset(buf, 'x', n);
    buf[n] = '\0';
    return buf;
}

static void test_memory_max_bytes_enospc(void **state)
{
    FX_BEGIN(state); /* max_queue 2, memory_max_bytes 3500 */
    struct session *s1 = fx_session(f, 0, "k1", NULL);
    struct session *s4 = fx_session(f, 1, "k4", NULL);
    /* One message over the whole bound never fits, even in an empty broker. */
    assert_int_equal(fx_push(f, "k0", fx_text(FX_CAP_BYTES), 0), 0); /* refused later */
    RUN_UNTIL(f, f->pcb[0].calls == 1);
    assert_int_equal(f->pcb[0].status, UV_ENOSPC);
    assert_int_equal(f->b.refused_full, 1);
    /* Two for k1, then k1's own queue is full: 429 comes first, not counted as "full". */
    assert_int_equal(fx_push(f, "k1", fx_text(FX_BIG), 1), 0);
    assert_int_equal(fx_push(f, "k1", fx_text(FX_BIG), 2), 0);
    assert_int_equal(fx_push(f, "k1", fx_text(FX_BIG), 3), 0);
    RUN_UNTIL(f, f->pcb[3].calls == 1);
    assert_int_equal(f->pcb[1].status, 0);
    assert_int_equal(f->pcb[2].status, 0);
    assert_int_equal(f->pcb[3].status, UV_ENOBUFS);
    assert_int_equal(f->b.refused_full, 1);
    /* A third 1000-byte message fits, for another key; the fourth does not, whatever its
     * key; k1 (queue full and broker full) still answers 429. */
    assert_int_equal(fx_push(f, "k2", fx_text(FX_BIG), 4), 0);
    assert_int_equal(fx_push(f, "k3", fx_text(FX_BIG), 5), 0);
    assert_int_equal(fx_push(f, "k2", fx_text(FX_BIG), 6), 0);
    assert_int_equal(fx_push(f, "k1", fx_text(FX_BIG), 7), 0);
    assert_int_equal(f->pcb[5].calls, 0); /* the refusal is a callback, never inside push */
    RUN_UNTIL(f, f->pcb[7].calls == 1);
    assert_int_equal(f->pcb[4].status, 0);
    assert_int_equal(f->pcb[5].status, UV_ENOSPC); /* the core answers 503 */
    assert_int_equal(f->pcb[6].status, UV_ENOSPC);
    assert_int_equal(f->pcb[7].status, UV_ENOBUFS);
    assert_int_equal(f->b.refused_full, 3);
    for (int i = 0; i <= 7; i++)
        assert_int_equal(f->pcb[i].calls, 1);
    /* A message handed straight to an online socket is not stored: it needs no room. */
    fx_attach_wait(f, s4);
    assert_int_equal(fx_push(f, "k4", fx_text(FX_BIG), 8), 0);
    assert_int_equal(f->nrec, 1);
    RUN_UNTIL(f, f->pcb[8].calls == 1);
    assert_int_equal(f->pcb[8].status, 0);
    assert_int_equal(f->b.refused_full, 3);
    /* Delivery gives the bytes back: k1's two messages drain, two more fit. */
    fx_attach_wait(f, s1);
    assert_int_equal(f->nrec, 3);
    fx_assert_rec(f, 1, s1, fx_text(FX_BIG));
    broker_detach(&f->b, s1);
    assert_int_equal(fx_push(f, "k3", fx_text(FX_BIG), 9), 0);
    assert_int_equal(fx_push(f, "k5", fx_text(FX_BIG), 10), 0);
    assert_int_equal(fx_push(f, "k6", fx_text(FX_BIG), 11), 0);
    RUN_UNTIL(f, f->pcb[11].calls == 1);
    assert_int_equal(f->pcb[9].status, 0);
    assert_int_equal(f->pcb[10].status, 0);
    assert_int_equal(f->pcb[11].status, UV_ENOSPC); /* full again: k2, k3, k5 wait */
    assert_int_equal(f->b.refused_full, 4);
    assert_int_equal(f->b.dropped, 0); /* refused messages are not "dropped" */
    broker_detach(&f->b, s4);
    fx_finish(f);
    assert_int_equal(f->b.dropped, 3); /* close frees (and counts) the three held */
}

static void test_memory_max_bytes_back_after_ttl(void **state)
{
    FX_BEGIN(state); /* ttl 200ms, memory_max_bytes 3500 */
    assert_int_equal(fx_push(f, "a", fx_text(FX_BIG), 0), 0);
    assert_int_equal(fx_push(f, "b", fx_text(FX_BIG), 1), 0);
    assert_int_equal(fx_push(f, "c", fx_text(FX_BIG), 2), 0);
    assert_int_equal(fx_push(f, "d", fx_text(FX_BIG), 3), 0);
    RUN_UNTIL(f, f->pcb[3].calls == 1);
    assert_int_equal(f->pcb[0].status | f->pcb[1].status | f->pcb[2].status, 0);
    assert_int_equal(f->pcb[3].status, UV_ENOSPC);
    assert_int_equal(f->b.refused_full, 1);
    /* Small messages still fit in what is left: the bound is in bytes. */
    assert_int_equal(fx_push(f, "e", "tiny", 4), 0);
    RUN_UNTIL(f, f->pcb[4].calls == 1);
    assert_int_equal(f->pcb[4].status, 0);
    /* Expiry gives the bytes back. */
    RUN_UNTIL(f, f->b.dropped == 4);
    assert_int_equal(fx_active_handles(f), 0);
    for (int i = 5; i < 8; i++)
        assert_int_equal(fx_push(f, "d", "", i), 0);
    assert_int_equal(fx_push(f, "f", fx_text(FX_BIG), 8), 0);
    assert_int_equal(fx_push(f, "g", fx_text(FX_BIG), 9), 0);
    RUN_UNTIL(f, f->pcb[9].calls == 1);
    for (int i = 5; i < 10; i++)
        assert_int_equal(f->pcb[i].status, 0);
    assert_int_equal(f->b.refused_full, 1);
    /* Empty messages are charged their per-item overhead: 200 of them do not fit in the
     * ~1100 bytes left (they would, at 2 bytes of frame each). */
    for (int i = 0; i < 200; i++)
        assert_int_equal(fx_push(f, "h", "", 10), 0);
    RUN_UNTIL(f, f->pcb[10].calls == 200);
    assert_int_equal(f->pcb[10].status, UV_ENOSPC);
    assert_true(f->b.refused_full >= 1 + 100);
    uint64_t held = 5 + 200 - (f->b.refused_full - 1);
    fx_finish(f);
    assert_int_equal(f->b.dropped, 4 + held);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_memory_push_calls_back_once_later, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_online_delivery_consume_once, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_round_robin_two_sockets, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_offline_then_drain_in_order, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_max_queue_enobufs, fx_setup_maxq, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_ttl_expiry_counts_dropped, fx_setup_ttl,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_publish_fanout, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_detach_cancels_pending_attach, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_deliver_failure_keeps_message, fx_setup,
                                        fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_close_frees_everything, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_close_from_callback, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_push_from_callback, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_bad_input, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_max_bytes_enospc, fx_setup_cap, fx_teardown),
        cmocka_unit_test_setup_teardown(test_memory_max_bytes_back_after_ttl, fx_setup_cap_ttl,
                                        fx_teardown),
    };
    return cmocka_run_group_tests_name("memory", tests, NULL, NULL);
}
