/* later.h — "call back exactly once, later" for the backends: a FIFO of calls run from one
 * uv_idle_t on the loop, on the loop iteration after they were queued (never inside the
 * caller's call, as broker.h requires of push/publish/attach completions). The idle handle
 * is active only while calls wait, so an idle backend costs no wake-ups.
 *
 * Three kinds of call, all run in the order they were queued:
 *   - later_push_done(l, cb, arg, status): a broker_push_cb completion (push, publish,
 *     upstream). later allocates the entry (one small malloc) and frees it before the call.
 *   - later_attached(l, call, s): session_attached(s, status) for a pending attach. The entry
 *     is embedded in the backend's per-session struct, so it cannot fail and can be
 *     cancelled (detach before the 101: later_cancel). later_call_status changes the status
 *     it will be called with (e.g. UV_ECANCELED when the broker closes first).
 *   - later_call_add(l, call, fn, arg, status): any fn(arg, status), embedded and
 *     cancellable the same way (memory.c drains a key's backlog right before the 101 with it).
 *
 * Each pass runs the calls queued before it started; a call queued by a callback runs on the
 * next iteration, so a callback that queues again never spins. A callback may cancel other
 * calls, queue new ones, or close the broker (later_close): the pass then stops.
 * later_close closes the handle; once it is closed, every call still queued runs (in order,
 * with its status, including calls queued during the close), then the close callback. So a
 * backend's close keeps its "exactly once" promises by closing later last.
 *
 * Does NOT own the backend's structs, know brokers beyond the callback types, or take locks:
 * loop thread only (a backend with threads of its own crosses to the loop first, e.g. with
 * its uv_async_t, and queues from there). */
#ifndef WSGATE_LATER_H
#define WSGATE_LATER_H

#include <stdint.h>
#include <uv.h>

#include "broker.h"

struct later;
struct session;

/* A queued call: fn(arg, status). Same shape as broker_push_cb. */
typedef void (*later_fn)(void *arg, int status);
/* later_close finished: the handle is closed and every queued call has run. */
typedef void (*later_closed_cb)(struct later *l);

/* One queued call. Embed it (zeroed, or after later_call_init) in the struct it belongs to for
 * the cancellable kinds; later_push_done allocates its own. Fields are later's. */
struct later_call {
    struct later_call *next; /* borrowed: next in the queue while queued */
    struct later_call *prev; /* borrowed: previous in the queue while queued */
    later_fn fn;             /* what runs */
    void *arg;               /* borrowed: fn's argument */
    uint64_t seq;            /* queue order: a pass runs calls up to the seq it started at */
    int status;              /* fn's second argument */
    uint8_t queued;          /* 1 from add until it runs or is cancelled */
    uint8_t allocated;       /* 1: made by later_push_done, freed right before fn runs */
};

struct later {
    uv_idle_t idle;            /* embedded: active only while calls wait */
    struct later_call *head;   /* borrowed: oldest queued call (allocated ones owned) */
    struct later_call *tail;   /* borrowed: newest */
    uint64_t next_seq;         /* seq of the last call queued */
    uint32_t count;            /* calls queued */
    uint8_t closing;           /* later_close was called: passes stop, the close runs all */
    later_closed_cb closed_cb; /* the owner's, may be NULL */
    void *data;                /* borrowed: free for the owner (the backend struct) */
};

/* Set up l on loop (nothing queued, handle inactive). 0 or a uv_idle_init error. l must not
 * move until later_close's callback. */
int later_init(struct later *l, uv_loop_t *loop);
/* Close l: the handle closes (later, as uv_close does), then every call still queued runs in
 * order, then cb(l) if not NULL. Calls may still be queued until then (they run too).
 * Call once. */
void later_close(struct later *l, later_closed_cb cb);

/* Run cb(arg, status) exactly once, later. 0, or UV_ENOMEM (cb will never run). */
int later_push_done(struct later *l, broker_push_cb cb, void *arg, int status);
/* The same in two steps, for a call that must not fail after it did something it cannot
 * undo (handed the message to a socket): later_reserve() first (NULL: out of memory, do
 * nothing and return UV_ENOMEM), then later_push_reserved (cannot fail), or
 * later_unreserve if it ends up unused. */
struct later_call *later_reserve(void);
void later_push_reserved(struct later *l, struct later_call *c, broker_push_cb cb, void *arg,
                         int status);
void later_unreserve(struct later_call *c);
/* Queue session_attached(s, 0) on c (embedded, not queued now). Cannot fail. */
void later_attached(struct later *l, struct later_call *c, struct session *s);
/* Queue fn(arg, status) on c (embedded, not queued now). Cannot fail. */
void later_call_add(struct later *l, struct later_call *c, later_fn fn, void *arg, int status);
/* Take c out of the queue: its fn will not run. A no-op when c is not queued (it already
 * ran, was cancelled, or was never queued), so detach may always call it. */
void later_cancel(struct later *l, struct later_call *c);
/* The status c's fn will get (c queued). */
static inline void later_call_status(struct later_call *c, int status)
{
    c->status = status;
}
/* 1 while c waits to run. */
static inline int later_call_queued(const struct later_call *c)
{
    return c->queued;
}
/* Number of calls waiting. */
static inline uint32_t later_count(const struct later *l)
{
    return l->count;
}

#endif
