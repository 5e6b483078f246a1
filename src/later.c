/* later.c — the backends' "call back exactly once, later" queue (later.h): a doubly linked
 * FIFO of calls run from one uv_idle_t, started when the first call is queued and stopped
 * when the queue is empty. Does NOT know what the calls do; allocates only the entries of
 * later_push_done. Loop thread only. */
#include "later.h"

#include <assert.h>
#include <stdlib.h>

#include "session.h"

static void later_on_idle(uv_idle_t *h);

int later_init(struct later *l, uv_loop_t *loop)
{
    int rc;
    l->head = l->tail = NULL;
    l->next_seq = 0;
    l->count = 0;
    l->closing = 0;
    l->closed_cb = NULL;
    if ((rc = uv_idle_init(loop, &l->idle)) < 0)
        return rc;
    l->idle.data = l;
    return 0;
}

static void later_link(struct later *l, struct later_call *c, later_fn fn, void *arg, int status)
{
    assert(!c->queued); /* an embedded call is queued once at a time */
    c->fn = fn;
    c->arg = arg;
    c->status = status;
    c->seq = ++l->next_seq;
    c->queued = 1;
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->count++;
    if (!l->closing && !uv_is_active((uv_handle_t *)&l->idle))
        uv_idle_start(&l->idle, later_on_idle);
}

static void later_unlink(struct later *l, struct later_call *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->next = c->prev = NULL;
    c->queued = 0;
    l->count--;
}

/* Take the head off the queue and call it; an allocated entry is freed first, so the callback
 * may close and free whatever embeds l. */
static void later_run_head(struct later *l)
{
    struct later_call *c = l->head;
    later_fn fn = c->fn;
    void *arg = c->arg;
    int status = c->status;
    later_unlink(l, c);
    if (c->allocated)
        free(c);
    fn(arg, status);
}

static void later_on_idle(uv_idle_t *h)
{
    struct later *l = h->data;
    uint64_t last = l->next_seq; /* calls queued from here on wait for the next pass */
    while (!l->closing && l->head != NULL && l->head->seq <= last)
        later_run_head(l);
    if (!l->closing && l->head == NULL)
        uv_idle_stop(h);
}

static void later_on_closed(uv_handle_t *h)
{
    struct later *l = h->data;
    later_closed_cb cb = l->closed_cb;
    while (l->head != NULL) /* calls queued by these run too: every promise is kept */
        later_run_head(l);
    if (cb != NULL)
        cb(l);
}

void later_close(struct later *l, later_closed_cb cb)
{
    l->closing = 1;
    l->closed_cb = cb;
    uv_close((uv_handle_t *)&l->idle, later_on_closed);
}

struct later_call *later_reserve(void)
{
    struct later_call *c = malloc(sizeof(*c));
    if (c != NULL) {
        c->allocated = 1;
        c->queued = 0;
    }
    return c;
}

void later_push_reserved(struct later *l, struct later_call *c, broker_push_cb cb, void *arg,
                         int status)
{
    later_link(l, c, cb, arg, status);
}

void later_unreserve(struct later_call *c)
{
    free(c);
}

int later_push_done(struct later *l, broker_push_cb cb, void *arg, int status)
{
    struct later_call *c = later_reserve();
    if (c == NULL)
        return UV_ENOMEM;
    later_push_reserved(l, c, cb, arg, status);
    return 0;
}

static void later_on_attached(void *arg, int status)
{
    session_attached(arg, status);
}

void later_attached(struct later *l, struct later_call *c, struct session *s)
{
    c->allocated = 0;
    later_link(l, c, later_on_attached, s, 0);
}

void later_call_add(struct later *l, struct later_call *c, later_fn fn, void *arg, int status)
{
    c->allocated = 0;
    later_link(l, c, fn, arg, status);
}

void later_cancel(struct later *l, struct later_call *c)
{
    if (c->queued)
        later_unlink(l, c);
}
