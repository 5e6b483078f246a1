/* nats_loop.c — nats.c's socket I/O on our libuv loop (nats.c's event-loop mode). nats.c
 * reads on the loop (natsConnection_ProcessReadEvent, one read of up to its I/O buffer per
 * readable event) and its buffered publishes, acks and pings are written once per loop
 * pass, after the pass's callbacks have queued them (a uv_check handle): no reader or
 * flusher thread, no 1 ms flusher timer, and a write that would block never blocks (the
 * socket is non-blocking; the rest waits for POLLOUT).
 * nats.c calls the four callbacks below with its connection lock held, from the loop
 * (publishes, a read that fails) or from its own threads (the reconnect thread attaches
 * the new socket, the ping timer may find the server gone): they only record what is
 * wanted, under xq.lock, and a call from another thread wakes the loop (p->async), where
 * nats_el_apply acts on it. We poll a dup of nats.c's socket, so nats.c closing its
 * descriptor at any time (a reconnect) never leaves us polling a reused number.
 * Does NOT: parse or deliver (nats.c does, then nats_events.c), decide the connection's
 * state (nats_conn.c). Threads: nats_el_cb_* on any thread; the rest on the loop. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "log.h"

#include "nats_priv.h"

enum { NATS_EL_READ = 1, NATS_EL_WRITE = 2 };
#define NATS_EL_READS 16 /* reads (of NATS_IO_BUF each) per readable event, at most */

struct nats_el_poll {
    uv_poll_t h; /* h.data: the broker until closed */
    int fd;      /* owned: our dup of nats.c's socket, closed with the handle */
    int events;  /* what h is started with (UV_READABLE | UV_WRITABLE) */
};

static void nats_el_on_poll(uv_poll_t *h, int status, int events);
static void nats_el_on_check(uv_check_t *h);

/* --- nats.c's callbacks: any thread, nats.c's connection lock held --- */

static int nats_el_on_loop(const struct nats_broker *p)
{
    uv_thread_t self = uv_thread_self();
    return uv_thread_equal(&self, &p->el.loop_thread);
}

/* Record under xq.lock; act now on the loop, else wake it. */
static void nats_el_changed(struct nats_broker *p)
{
    if (nats_el_on_loop(p))
        nats_el_apply(p);
    else
        uv_async_send(&p->async);
}

static natsStatus nats_el_cb_attach(void **user, void *loop, natsConnection *nc, natsSock sock)
{
    struct nats_broker *p = loop;
    int fd = fcntl((int)sock, F_DUPFD_CLOEXEC, 3);
    (void)nc;
    if (fd < 0)
        return NATS_SYS_ERROR; /* nats.c gives up this socket and reconnects */
    uv_mutex_lock(&p->xq.lock);
    if (p->el.fd_new >= 0) /* attached twice before the loop took the first: drop it */
        close(p->el.fd_new);
    p->el.fd_new = fd;
    p->el.want = NATS_EL_READ; /* attaching means: read */
    p->el.detached = 0;
    uv_mutex_unlock(&p->xq.lock);
    *user = p;
    nats_el_changed(p);
    return NATS_OK;
}

static natsStatus nats_el_cb_want(void *user, unsigned what, bool add)
{
    struct nats_broker *p = user;
    uv_mutex_lock(&p->xq.lock);
    if (add)
        p->el.want |= what;
    else
        p->el.want &= ~what;
    uv_mutex_unlock(&p->xq.lock);
    nats_el_changed(p);
    return NATS_OK;
}

static natsStatus nats_el_cb_read(void *user, bool add)
{
    return nats_el_cb_want(user, NATS_EL_READ, add);
}

static natsStatus nats_el_cb_write(void *user, bool add)
{
    return nats_el_cb_want(user, NATS_EL_WRITE, add);
}

/* The connection is closed for good (natsConnection_Close): nothing more to poll. */
static natsStatus nats_el_cb_detach(void *user)
{
    struct nats_broker *p = user;
    uv_mutex_lock(&p->xq.lock);
    if (p->el.fd_new >= 0)
        close(p->el.fd_new);
    p->el.fd_new = -1;
    p->el.want = 0;
    p->el.detached = 1;
    uv_mutex_unlock(&p->xq.lock);
    nats_el_changed(p);
    return NATS_OK;
}

/* --- the loop --- */

static void nats_el_on_poll_closed(uv_handle_t *h)
{
    struct nats_el_poll *ep = (struct nats_el_poll *)h;
    close(ep->fd);
    free(ep);
}

static void nats_el_poll_drop(struct nats_el *e)
{
    if (e->cur == NULL)
        return;
    uv_close((uv_handle_t *)&e->cur->h, nats_el_on_poll_closed);
    e->cur = NULL;
}

void nats_el_init(struct nats_broker *p, uv_loop_t *loop)
{
    p->el.loop_thread = uv_thread_self();
    p->el.fd_new = -1;
    uv_check_init(loop, &p->el.check); /* cannot fail */
    p->el.check.data = p;
}

/* Act on what nats.c asked for last: a new socket to poll, reads on or off, a write to
 * make at the end of this pass (or, after one that would have blocked, on POLLOUT). */
void nats_el_apply(struct nats_broker *p)
{
    struct nats_el *e = &p->el;
    unsigned want;
    int fd_new, detached, events = 0;
    uv_mutex_lock(&p->xq.lock);
    fd_new = e->fd_new;
    e->fd_new = -1;
    want = e->want;
    detached = e->detached;
    uv_mutex_unlock(&p->xq.lock);
    if (fd_new >= 0 || detached)
        nats_el_poll_drop(e);
    if (fd_new >= 0) {
        struct nats_el_poll *ep = calloc(1, sizeof(*ep));
        int rc = ep != NULL ? uv_poll_init(p->b->loop, &ep->h, fd_new) : UV_ENOMEM;
        if (rc < 0) {
            /* The connection cannot be read: take it as lost (nats.c's pings then find
             * it dead and it reconnects, attaching again). */
            log_error("event=nats_poll_failed err=%s", uv_err_name(rc));
            free(ep);
            close(fd_new);
            nats_conn_lost(p, "poll");
        } else {
            ep->fd = fd_new;
            ep->h.data = p;
            e->cur = ep;
        }
        e->write_blocked = 0;
    }
    if (!(want & NATS_EL_WRITE))
        e->write_blocked = 0;
    if (want & NATS_EL_READ)
        events |= UV_READABLE;
    if ((want & NATS_EL_WRITE) && e->write_blocked)
        events |= UV_WRITABLE;
    if (e->cur != NULL && events != e->cur->events) {
        int rc = events != 0 ? uv_poll_start(&e->cur->h, events, nats_el_on_poll)
                             : uv_poll_stop(&e->cur->h);
        if (rc < 0)
            log_error("event=nats_poll_failed err=%s", uv_err_name(rc));
        e->cur->events = events;
    }
    if ((want & NATS_EL_WRITE) && !e->write_blocked && e->cur != NULL)
        uv_check_start(&e->check, nats_el_on_check);
    else
        uv_check_stop(&e->check);
}

static unsigned nats_el_want(struct nats_broker *p)
{
    unsigned want;
    uv_mutex_lock(&p->xq.lock);
    want = p->el.want;
    uv_mutex_unlock(&p->xq.lock);
    return want;
}

/* Write what nats.c buffered (one send); what the socket did not take waits for POLLOUT. */
static void nats_el_write(struct nats_broker *p)
{
    if (p->nc == NULL || !(nats_el_want(p) & NATS_EL_WRITE))
        return;
    natsConnection_ProcessWriteEvent(p->nc); /* all sent: it asks to stop writing */
    if (nats_el_want(p) & NATS_EL_WRITE) {
        p->el.write_blocked = 1;
        nats_el_apply(p);
    }
}

/* The end of a loop pass: everything its callbacks published goes out in one write. */
static void nats_el_on_check(uv_check_t *h)
{
    struct nats_broker *p = h->data;
    uv_check_stop(h);
    nats_el_write(p);
}

static void nats_el_on_poll(uv_poll_t *h, int status, int events)
{
    struct nats_broker *p = h->data;
    unsigned want;
    int pending;
    uv_mutex_lock(&p->xq.lock);
    pending = p->el.fd_new >= 0 || p->el.detached;
    uv_mutex_unlock(&p->xq.lock);
    if (pending || (struct nats_el_poll *)h != p->el.cur) {
        nats_el_apply(p); /* an old socket: poll the new one (this handle is closed) */
        return;
    }
    if ((events & UV_WRITABLE) || status < 0) {
        p->el.write_blocked = 0;
        nats_el_apply(p);
        nats_el_write(p);
    }
    /* an error reads too: nats.c sees it and reconnects */
    want = nats_el_want(p);
    if (!(((events & UV_READABLE) || status < 0) && (want & NATS_EL_READ) && p->nc != NULL))
        return;
    /* Bytes came from the server (a PONG counts): it is alive, however slow its replies
     * (nats_on_req_timer takes the link as lost only after nothing at all for timeout). */
    if (status == 0 && (events & UV_READABLE))
        p->last_rx = uv_now(p->b->loop);
    /* Up to NATS_EL_READS reads while more is there: the socket is drained faster than the
     * loop delivers, so a flood is dropped at the hand-over (bounded) rather than left in
     * the server, which would close us as a slow consumer. */
    for (int i = 0; i < NATS_EL_READS; i++) {
        int avail = 0;
        natsConnection_ProcessReadEvent(p->nc);
        nats_push_acks_take(p);
        if ((struct nats_el_poll *)h != p->el.cur || !(nats_el_want(p) & NATS_EL_READ) ||
            ioctl(p->el.cur->fd, FIONREAD, &avail) < 0 || avail == 0)
            break;
    }
}

natsStatus nats_el_opts_set(struct nats_broker *p, natsOptions *o)
{
    return natsOptions_SetEventLoop(o, p, nats_el_cb_attach, nats_el_cb_read, nats_el_cb_write,
                                    nats_el_cb_detach);
}

struct nats_el_job {
    void (*fn)(void *);
    void *arg;
    struct nats_broker *p;
    int done; /* under p->xq.lock */
};

static void nats_el_job_thread(void *arg)
{
    struct nats_el_job *j = arg;
    j->fn(j->arg);
    uv_mutex_lock(&j->p->xq.lock);
    j->done = 1;
    uv_mutex_unlock(&j->p->xq.lock);
}

/* Run fn(arg), which makes blocking nats.c requests, on a thread of its own while this
 * (the loop) thread does the connection's reads and writes: for open(), before the loop
 * runs. Returns 0, or a libuv error when no thread could be started (fn did not run). */
int nats_el_run_sync(struct nats_broker *p, void (*fn)(void *), void *arg)
{
    struct nats_el_job j = {.fn = fn, .arg = arg, .p = p};
    uv_thread_t t;
    int rc, done = 0;
    if ((rc = uv_thread_create(&t, nats_el_job_thread, &j)) < 0)
        return rc;
    while (!done) {
        unsigned want;
        struct pollfd pf = {.fd = -1};
        nats_el_apply(p);
        nats_el_write(p);
        want = nats_el_want(p);
        if (p->el.cur != NULL && (want & NATS_EL_READ)) {
            pf.fd = p->el.cur->fd;
            pf.events = POLLIN | (p->el.write_blocked ? POLLOUT : 0);
        }
        if (poll(&pf, pf.fd >= 0 ? 1 : 0, 5) > 0) {
            if (pf.revents & POLLOUT)
                p->el.write_blocked = 0;
            if ((pf.revents & (POLLIN | POLLERR | POLLHUP)) && p->nc != NULL)
                natsConnection_ProcessReadEvent(p->nc);
        }
        uv_mutex_lock(&p->xq.lock);
        done = j.done;
        uv_mutex_unlock(&p->xq.lock);
    }
    uv_thread_join(&t);
    nats_el_apply(p);
    return 0;
}

/* The connection is closed and destroyed: stop polling, then close the check handle
 * (done: the broker's handle counting). */
void nats_el_close(struct nats_broker *p, uv_close_cb done)
{
    nats_el_apply(p);
    nats_el_poll_drop(&p->el);
    uv_mutex_lock(&p->xq.lock);
    if (p->el.fd_new >= 0)
        close(p->el.fd_new);
    p->el.fd_new = -1;
    uv_mutex_unlock(&p->xq.lock);
    uv_close((uv_handle_t *)&p->el.check, done);
}
