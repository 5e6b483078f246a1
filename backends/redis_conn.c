/* redis_conn.c — one Redis connection driven by the gateway's libuv loop (see redis_conn.h):
 * the hiredis 0.14 event hooks on a uv_poll_t, one uv_timer_t per connection for the
 * connect deadline, the reply-progress deadline, the liveness probe and the reconnect
 * backoff, connect (AUTH, SELECT, the first PING or probe SUBSCRIBE), reconnects and close.
 * The redis:// URL parser is in redis_conn_url.c, the subscriber's channel registry and
 * (UN)SUBSCRIBE in redis_conn_sub.c. Does NOT know sessions or key naming.
 * Loop thread only.
 *
 * Lifetimes: a struct rconn lives from rconn_open until its close callback. Each hiredis
 * context gets its own struct rconn_ev (the uv_poll_t), freed in the poll handle's close
 * callback; hiredis owns and frees the context itself right after our cleanup hook runs,
 * so rc->ac is NULLed there and never touched again. */
#include "redis_conn_priv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "map.h"
#include "util.h"

#define RCONN_BACKOFF_MIN_MS 100

static void rconn_on_timer(uv_timer_t *t);
static void rconn_on_idle(uv_idle_t *h);
static void rconn_connect_start(struct rconn *rc);
static void rconn_close_step(struct rconn *rc);

/* --- output flushing --- */

static void rconn_flush(struct rconn *rc)
{
    if (!rc->want_flush)
        return;
    rc->want_flush = 0;
    if (rc->ac == NULL || !(rc->ac->c.flags & REDIS_CONNECTED))
        return;
    rc->in_flush = 1;
    redisAsyncHandleWrite(rc->ac); /* may free the context (write error): cleanup hook */
    rc->in_flush = 0;
}

static void rconn_on_prepare(uv_prepare_t *h)
{
    struct rconn *rc = h->data;
    rc->after_prepare = 1;
    rconn_flush(rc);
}

static void rconn_on_check(uv_check_t *h)
{
    struct rconn *rc = h->data;
    rc->after_prepare = 0;
    /* The poll is over: an idle started for it (a command queued in the poll phase, which
     * this flush sends) would only make the next poll spin once for nothing. */
    uv_idle_stop(&rc->idle);
    rconn_flush(rc);
}

static void rconn_on_idle(uv_idle_t *h)
{
    uv_idle_stop(h); /* its only job was to keep the poll from blocking */
}

/* --- hiredis event hooks --- */

static void rconn_ev_on_closed(uv_handle_t *h)
{
    struct rconn_ev *ev = h->data;
    struct rconn *rc = ev->rc;
    free(ev);
    rc->open_evs--;
    rconn_close_step(rc);
}

static void rconn_ev_on_poll(uv_poll_t *h, int status, int events)
{
    struct rconn_ev *ev = h->data;
    struct rconn *rc = ev->rc;
    if (ev->ac == NULL)
        return;
    if (status < 0) {
        /* libuv stopped the watcher (EPOLLERR). The stock adapter ignores this and the
         * connection hangs. Let hiredis read the socket error (a refused connect, a reset)
         * so the log says why; if the context survives that, drop it. */
        if (rc->ac->c.flags & REDIS_CONNECTED)
            redisAsyncHandleRead(ev->ac);
        else
            redisAsyncHandleWrite(ev->ac);
        if (ev->ac != NULL && !rc->dying) {
            rc->dying = 1;
            rc->kill_err = status;
            rc->kill_why = "poll error";
            redisAsyncFree(ev->ac);
        }
        return;
    }
    if (events & UV_READABLE) {
        rc->progress_ms = uv_now(rc->loop);
        redisAsyncHandleRead(ev->ac);
    }
    if (ev->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(ev->ac);
}

static void rconn_ev_update(struct rconn_ev *ev)
{
    if (ev->ac == NULL)
        return;
    if (ev->events != 0)
        uv_poll_start(&ev->poll, ev->events, rconn_ev_on_poll);
    else
        uv_poll_stop(&ev->poll);
}

/* Turn one of UV_READABLE / UV_WRITABLE on or off; the poll is touched only on a change. */
static void rconn_ev_want(struct rconn_ev *ev, int flag, int on)
{
    int events = on ? ev->events | flag : ev->events & ~flag;
    if (events != ev->events) {
        ev->events = events;
        rconn_ev_update(ev);
    }
}

static void rconn_ev_add_read(void *p)
{
    rconn_ev_want(p, UV_READABLE, 1);
}

static void rconn_ev_del_read(void *p)
{
    rconn_ev_want(p, UV_READABLE, 0);
}

/* hiredis asks for a writable event after every command it buffers. Waiting for one costs
 * two epoll_ctl calls and a loop iteration per batch, so once connected we flush from our
 * prepare/check handles instead (everything queued in one loop phase leaves in one write);
 * only a write that could not finish (socket full) waits for UV_WRITABLE. */
static void rconn_ev_add_write(void *p)
{
    struct rconn_ev *ev = p;
    struct rconn *rc = ev->rc;
    if ((ev->ac->c.flags & REDIS_CONNECTED) && !rc->in_flush) {
        rc->want_flush = 1;
        if (rc->after_prepare)
            uv_idle_start(&rc->idle, rconn_on_idle);
        return;
    }
    rconn_ev_want(ev, UV_WRITABLE, 1);
}

static void rconn_ev_del_write(void *p)
{
    rconn_ev_want(p, UV_WRITABLE, 0);
}

/* One line per failure streak at warn (the first), the rest at debug: a Redis that stays
 * down for an hour must not flood the log. */
static void rconn_log_fail(const struct rconn *rc, const char *why)
{
    if (rc->attempts == 0)
        log_warn("event=redis_connect_failed conn=%s host=%s port=%d err=\"%s\" "
                 "retry=backoff",
                 rc->name, rc->url.host, rc->url.port, why);
    else
        log_debug("event=redis_connect_failed conn=%s host=%s port=%d attempt=%u err=\"%s\"",
                  rc->name, rc->url.host, rc->url.port, rc->attempts + 1, why);
}

static void rconn_backoff(struct rconn *rc)
{
    unsigned shift = rc->attempts < 16 ? rc->attempts : 16;
    uint64_t d = (uint64_t)RCONN_BACKOFF_MIN_MS << shift;
    if (d > rc->backoff_max_ms)
        d = rc->backoff_max_ms;
    /* jitter in [d/2, d] so that many nodes do not reconnect in lockstep */
    rc->rng ^= rc->rng << 13;
    rc->rng ^= rc->rng >> 7;
    rc->rng ^= rc->rng << 17;
    d = d / 2 + rc->rng % (d / 2 + 1);
    rc->attempts++;
    rc->state = RC_BACKOFF;
    uv_timer_start(&rc->timer, rconn_on_timer, d ? d : 1, 0);
}

/* hiredis frees the context right after this hook (and the pending callbacks already got
 * their NULL replies): forget it, close its poll handle, and reconnect or finish closing. */
static void rconn_ev_cleanup(void *p)
{
    struct rconn_ev *ev = p;
    struct rconn *rc = ev->rc;
    redisAsyncContext *ac = ev->ac;
    int was_up = rc->state == RC_UP;
    const char *why = rc->kill_why ? rc->kill_why : (ac->c.err ? ac->c.errstr : "closed");
    ev->ac = NULL;
    uv_close((uv_handle_t *)&ev->poll, rconn_ev_on_closed);
    rc->ac = NULL;
    rc->ev = NULL;
    if (rc->kill_err == 0)
        rc->kill_err = UV_ECONNRESET;
    if (rc->kind == RCONN_SUB)
        rconn_chans_reset(rc);
    if (rc->state == RC_CLOSING)
        return; /* rconn_ev_on_closed drives the rest */
    if (was_up)
        log_warn("event=redis_down conn=%s addr=%s:%d err=\"%s\"", rc->name, rc->ip, rc->url.port,
                 why);
    else
        rconn_log_fail(rc, why);
    rconn_backoff(rc);
    if (was_up && rc->on_state != NULL)
        rc->on_state(rc, 0, rc->arg);
}

/* --- deadlines --- */

static int rconn_busy(const struct rconn *rc)
{
    if (rc->ac == NULL)
        return 0;
    return rc->ac->replies.head != NULL || rc->sub_owed > 0;
}

/* Kill the context; the cleanup hook does the rest (maybe after the current callback). */
static void rconn_kill(struct rconn *rc, int err, const char *why)
{
    if (rc->ac == NULL || rc->dying)
        return;
    rc->dying = 1;
    rc->kill_err = err;
    rc->kill_why = why;
    redisAsyncFree(rc->ac);
}

/* hiredis's redisAsyncCommandArgv formats through sdscatfmt per argument (~7,000
 * instructions per push); this is a few hundred, and the copies are the same: one here,
 * one into hiredis's output buffer. The text is NUL-terminated like hiredis's own:
 * redisAsyncFormattedCommand walks a SUBSCRIBE's arguments with strchr until it meets
 * the NUL (without it, it read past the end into stale bytes and could assert). */
const char *rconn_resp(char *buf, size_t cap, int argc, const char **argv, const size_t *lens,
                       size_t *len, char **heap)
{
    size_t need = 1 + 20 + 2 + 1; /* "*<argc>\r\n", and the NUL */
    for (int i = 0; i < argc; i++)
        need += 1 + 20 + 2 + lens[i] + 2; /* "$<len>\r\n<bytes>\r\n" */
    char *o = buf;
    *heap = NULL;
    if (need > cap && (o = *heap = malloc(need)) == NULL)
        return NULL;
    const char *start = o;
    *o++ = '*';
    o += fmt_u64(o, (uint64_t)argc);
    *o++ = '\r';
    *o++ = '\n';
    for (int i = 0; i < argc; i++) {
        *o++ = '$';
        o += fmt_u64(o, lens[i]);
        *o++ = '\r';
        *o++ = '\n';
        if (lens[i] > 0)
            memcpy(o, argv[i], lens[i]);
        o += lens[i];
        *o++ = '\r';
        *o++ = '\n';
    }
    *o = '\0';
    *len = (size_t)(o - start);
    return start;
}

/* Append a command to the context's output buffer; hiredis writes it when the socket is
 * writable, i.e. everything sent during this loop iteration leaves in one write. */
int rconn_send(struct rconn *rc, redisCallbackFn *fn, void *priv, int argc, const char **argv,
               const size_t *lens)
{
    int was_busy, rv;
    char buf[2048], *heap;
    size_t len;
    const char *cmd;
    if (rc->ac == NULL || rc->dying)
        return UV_ENOTCONN;
    was_busy = rconn_busy(rc);
    if ((cmd = rconn_resp(buf, sizeof(buf), argc, argv, lens, &len, &heap)) == NULL)
        return UV_ENOMEM;
    rv = redisAsyncFormattedCommand(rc->ac, fn, priv, cmd, len);
    free(heap);
    if (rv != REDIS_OK)
        return rc->ac->c.err == REDIS_ERR_OOM ? UV_ENOMEM : UV_ENOTCONN;
    if (!was_busy) {
        /* The deadline runs from now; make sure the timer fires by then. */
        rc->progress_ms = uv_now(rc->loop);
        if (rc->state == RC_UP && uv_timer_get_due_in(&rc->timer) > rc->timeout_ms)
            uv_timer_start(&rc->timer, rconn_on_timer, rc->timeout_ms, 0);
    }
    return 0;
}

static void rconn_probe(struct rconn *rc)
{
    if (rc->kind == RCONN_CMD) {
        const char *argv[] = {"PING"};
        size_t lens[] = {4};
        rconn_send(rc, NULL, NULL, 1, argv, lens);
    } else {
        const char *argv[] = {"SUBSCRIBE", rc->probe->name};
        size_t lens[] = {9, rc->probe->len};
        if (rconn_send(rc, rconn_on_sub_reply, rc, 2, argv, lens) == 0) {
            rc->probe->sent++;
            rc->sub_owed++;
        }
    }
}

static void rconn_check(struct rconn *rc)
{
    uint64_t now = uv_now(rc->loop), due;
    int busy = rconn_busy(rc);
    if (busy && now >= rc->progress_ms + rc->timeout_ms) {
        log_warn("event=redis_timeout conn=%s addr=%s:%d waited_ms=%llu", rc->name, rc->ip,
                 rc->url.port, (unsigned long long)(now - rc->progress_ms));
        rconn_kill(rc, UV_ETIMEDOUT, "reply deadline exceeded");
        return;
    }
    if (!busy && now >= rc->progress_ms + rc->ping_ms) {
        rconn_probe(rc);
        busy = rconn_busy(rc);
    }
    due = busy ? rc->progress_ms + rc->timeout_ms : rc->progress_ms + rc->ping_ms;
    uv_timer_start(&rc->timer, rconn_on_timer, due > now ? due - now : 1, 0);
}

static void rconn_on_timer(uv_timer_t *t)
{
    struct rconn *rc = t->data;
    switch (rc->state) {
    case RC_BACKOFF:
        rconn_connect_start(rc);
        break;
    case RC_RESOLVING:
        rconn_log_fail(rc, "resolve timeout");
        rc->gai_abandoned = 1;
        uv_cancel((uv_req_t *)&rc->gai);
        rconn_backoff(rc);
        break;
    case RC_CONNECTING:
        rconn_kill(rc, UV_ETIMEDOUT, "connect timeout");
        break;
    case RC_UP:
        rconn_check(rc);
        break;
    case RC_CLOSING:
        rconn_kill(rc, UV_ETIMEDOUT, "close timeout");
        break;
    }
}

/* --- connect --- */

void rconn_set_up(struct rconn *rc)
{
    rc->state = RC_UP;
    rc->attempts = 0;
    rc->progress_ms = uv_now(rc->loop);
    log_info("event=redis_up conn=%s addr=%s:%d db=%d", rc->name, rc->ip, rc->url.port, rc->url.db);
    rconn_check(rc);
    if (rc->on_state != NULL)
        rc->on_state(rc, 1, rc->arg);
}

/* AUTH / SELECT / PING replies while connecting: any error drops this attempt. */
static void rconn_on_setup_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct rconn *rc = ac->data;
    redisReply *reply = r;
    (void)priv;
    if (reply == NULL || rc->ac != ac)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        if (rc->attempts == 0)
            log_error("event=redis_setup_failed conn=%s err=\"%.*s\"", rc->name, (int)reply->len,
                      reply->str);
        rconn_kill(rc, UV_EIO, "setup command failed");
        return;
    }
    if (priv != NULL && rc->state == RC_CONNECTING) /* the final PING */
        rconn_set_up(rc);
}

static void rconn_on_connect(const redisAsyncContext *ac, int status)
{
    (void)ac;
    (void)status; /* failures arrive in the cleanup hook with c.errstr set */
}

static void rconn_connect_ip(struct rconn *rc)
{
    redisAsyncContext *ac = redisAsyncConnect(rc->ip, rc->url.port);
    struct rconn_ev *ev;
    if (ac == NULL || ac->err) {
        rconn_log_fail(rc, ac ? ac->errstr : "out of memory");
        if (ac != NULL)
            redisAsyncFree(ac);
        rconn_backoff(rc);
        return;
    }
    ev = calloc(1, sizeof(*ev));
    if (ev == NULL || uv_poll_init(rc->loop, &ev->poll, ac->c.fd) < 0) {
        free(ev);
        redisAsyncFree(ac); /* no hooks yet: frees and closes the fd synchronously */
        rconn_backoff(rc);
        return;
    }
    ev->rc = rc;
    ev->ac = ac;
    ev->poll.data = ev;
    ac->ev.data = ev;
    ac->ev.addRead = rconn_ev_add_read;
    ac->ev.delRead = rconn_ev_del_read;
    ac->ev.addWrite = rconn_ev_add_write;
    ac->ev.delWrite = rconn_ev_del_write;
    ac->ev.cleanup = rconn_ev_cleanup;
    ac->data = rc;
    rc->ac = ac;
    rc->ev = ev;
    rc->open_evs++;
    rc->dying = 0;
    rc->kill_err = 0;
    rc->kill_why = NULL;
    rc->state = RC_CONNECTING;
    rc->progress_ms = uv_now(rc->loop);
    redisAsyncSetConnectCallback(ac, rconn_on_connect);

    /* Queued before the TCP connect completes; hiredis sends them in one write. */
    if (rc->url.pass[0] != '\0') {
        const char *argv[3] = {"AUTH", rc->url.user, rc->url.pass};
        size_t lens[3] = {4, strlen(rc->url.user), strlen(rc->url.pass)};
        if (rc->url.user[0] == '\0')
            rconn_send(rc, rconn_on_setup_reply, NULL, 2, (const char *[]){"AUTH", rc->url.pass},
                       (size_t[]){4, lens[2]});
        else
            rconn_send(rc, rconn_on_setup_reply, NULL, 3, argv, lens);
    }
    if (rc->kind == RCONN_CMD) {
        if (rc->url.db != 0) {
            char db[16];
            int n = snprintf(db, sizeof(db), "%d", rc->url.db);
            rconn_send(rc, rconn_on_setup_reply, NULL, 2, (const char *[]){"SELECT", db},
                       (size_t[]){6, (size_t)n});
        }
        rconn_send(rc, rconn_on_setup_reply, rc, 1, (const char *[]){"PING"}, (size_t[]){4});
    } else {
        rconn_resubscribe_all(rc); /* up when the probe channel is confirmed */
    }
    uv_timer_start(&rc->timer, rconn_on_timer, rc->timeout_ms, 0);
}

static void rconn_on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct rconn *rc = req->data;
    rc->gai_busy = 0;
    if (rc->state == RC_CLOSING || rc->gai_abandoned || rc->state != RC_RESOLVING) {
        uv_freeaddrinfo(res);
        rconn_close_step(rc);
        return;
    }
    if (status < 0 || res == NULL) {
        rconn_log_fail(rc, uv_strerror(status));
        uv_freeaddrinfo(res);
        rconn_backoff(rc);
        return;
    }
    if (res->ai_family == AF_INET6)
        uv_ip6_name((const struct sockaddr_in6 *)res->ai_addr, rc->ip, sizeof(rc->ip));
    else
        uv_ip4_name((const struct sockaddr_in *)res->ai_addr, rc->ip, sizeof(rc->ip));
    uv_freeaddrinfo(res);
    rconn_connect_ip(rc);
}

static void rconn_connect_start(struct rconn *rc)
{
    struct in6_addr a6;
    struct addrinfo hints;
    int r;
    if (inet_pton(AF_INET, rc->url.host, &a6) == 1 || inet_pton(AF_INET6, rc->url.host, &a6) == 1) {
        snprintf(rc->ip, sizeof(rc->ip), "%s", rc->url.host);
        rconn_connect_ip(rc);
        return;
    }
    if (rc->gai_busy) { /* an abandoned lookup is still running: try again later */
        rconn_backoff(rc);
        return;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc->gai.data = rc;
    rc->gai_abandoned = 0;
    r = uv_getaddrinfo(rc->loop, &rc->gai, rconn_on_resolved, rc->url.host, NULL, &hints);
    if (r < 0) {
        rconn_log_fail(rc, uv_strerror(r));
        rconn_backoff(rc);
        return;
    }
    rc->gai_busy = 1;
    rc->state = RC_RESOLVING;
    snprintf(rc->ip, sizeof(rc->ip), "%s", rc->url.host);
    uv_timer_start(&rc->timer, rconn_on_timer, rc->timeout_ms, 0);
}

/* --- public --- */

int rconn_open(struct rconn **out, uv_loop_t *loop, const struct rconn_opts *o)
{
    struct rconn *rc;
    if (o->url == NULL || o->timeout_ms == 0 || o->ping_ms == 0 ||
        (o->kind == RCONN_SUB &&
         (o->probe_channel == NULL || o->on_message == NULL || o->on_sub_ready == NULL)))
        return UV_EINVAL;
    rc = calloc(1, sizeof(*rc));
    if (rc == NULL)
        return UV_ENOMEM;
    rc->loop = loop;
    rc->kind = o->kind;
    rc->url = *o->url;
    snprintf(rc->name, sizeof(rc->name), "%s", o->name ? o->name : "redis");
    rc->timeout_ms = o->timeout_ms;
    rc->ping_ms = o->ping_ms;
    rc->backoff_max_ms =
        o->backoff_max_ms < RCONN_BACKOFF_MIN_MS ? RCONN_BACKOFF_MIN_MS : o->backoff_max_ms;
    rc->on_state = o->on_state;
    rc->on_message = o->on_message;
    rc->on_sub_ready = o->on_sub_ready;
    rc->arg = o->arg;
    rc->rng = uv_hrtime() | 1;
    if (o->kind == RCONN_SUB) {
        (void)map_seed_random(&rc->hseed); /* always filled; see map.h */
        rc->probe = rconn_chan_get(rc, o->probe_channel, strlen(o->probe_channel));
        if (rc->probe == NULL) {
            free(rc->buckets);
            free(rc);
            return UV_ENOMEM;
        }
        rc->probe->internal = 1;
    }
    uv_timer_init(loop, &rc->timer);
    rc->timer.data = rc;
    uv_prepare_init(loop, &rc->prep);
    rc->prep.data = rc;
    uv_check_init(loop, &rc->check);
    rc->check.data = rc;
    uv_idle_init(loop, &rc->idle);
    rc->idle.data = rc;
    /* Always on: they run once per loop iteration (a flag test) and never keep the loop
     * awake; being always on is what tells rconn_ev_add_write which phase we are in. */
    uv_prepare_start(&rc->prep, rconn_on_prepare);
    uv_check_start(&rc->check, rconn_on_check);
    rc->open_handles = 4;
    rconn_connect_start(rc);
    *out = rc;
    return 0;
}

static void rconn_on_timer_closed(uv_handle_t *h)
{
    struct rconn *rc = h->data;
    if (--rc->open_handles > 0)
        return;
    rconn_closed_cb cb = rc->closed_cb;
    void *arg = rc->closed_arg;
    for (size_t i = 0; i < rc->nbuckets; i++) {
        struct rconn_chan *ch = rc->buckets[i], *next;
        for (; ch; ch = next) {
            next = ch->hnext;
            /* users still registered keep dangling ch pointers: detach them */
            for (struct rsub *s = ch->ready; s; s = s->next)
                s->ch = NULL;
            for (struct rsub *s = ch->pend_head; s; s = s->next)
                s->ch = NULL;
            free(ch);
        }
    }
    free(rc->buckets);
    free(rc);
    if (cb != NULL)
        cb(arg);
}

static void rconn_close_step(struct rconn *rc)
{
    if (rc->state != RC_CLOSING || rc->gai_busy || rc->open_evs > 0 || rc->ac != NULL ||
        rc->timer_closing)
        return;
    rc->timer_closing = 1;
    uv_close((uv_handle_t *)&rc->timer, rconn_on_timer_closed);
    uv_close((uv_handle_t *)&rc->prep, rconn_on_timer_closed);
    uv_close((uv_handle_t *)&rc->check, rconn_on_timer_closed);
    uv_close((uv_handle_t *)&rc->idle, rconn_on_timer_closed);
}

void rconn_close(struct rconn *rc, rconn_closed_cb cb, void *arg)
{
    enum rconn_state prev = rc->state;
    if (prev == RC_CLOSING)
        return;
    rc->state = RC_CLOSING;
    rc->closed_cb = cb;
    rc->closed_arg = arg;
    rc->on_state = NULL;
    uv_timer_stop(&rc->timer);
    if (rc->gai_busy)
        uv_cancel((uv_req_t *)&rc->gai);
    if (rc->ac != NULL) {
        if (prev == RC_UP && rc->kind == RCONN_CMD && rc->ac->replies.head != NULL && !rc->dying) {
            /* Let owed replies (e.g. the last acks) arrive; force after the deadline. */
            redisAsyncDisconnect(rc->ac);
            uv_timer_start(&rc->timer, rconn_on_timer, rc->timeout_ms, 0);
        } else {
            rc->kill_why = "closed";
            if (!rc->dying) {
                rc->dying = 1;
                rc->kill_err = UV_ECANCELED;
                redisAsyncFree(rc->ac);
            }
        }
    }
    rconn_close_step(rc);
}

void rconn_reset(struct rconn *rc, const char *reason)
{
    if (rc->state == RC_CLOSING)
        return;
    log_warn("event=redis_reset conn=%s reason=\"%s\"", rc->name, reason);
    if (rc->ac != NULL)
        rconn_kill(rc, UV_ECONNRESET, reason);
}

int rconn_is_up(const struct rconn *rc)
{
    return rc->state == RC_UP && !rc->dying;
}

int rconn_last_error(const struct rconn *rc)
{
    return rc->kill_err ? rc->kill_err : UV_ECONNRESET;
}

int rconn_command(struct rconn *rc, redisCallbackFn *fn, void *priv, int argc, const char **argv,
                  const size_t *lens)
{
    if (rc->kind != RCONN_CMD)
        return UV_EINVAL; /* a subscribed context accepts only (UN)SUBSCRIBE */
    if (!rconn_is_up(rc))
        return UV_ENOTCONN;
    return rconn_send(rc, fn, priv, argc, argv, lens);
}

struct rconn_status_req {
    rconn_status_cb cb; /* borrowed */
    void *arg;          /* borrowed */
    struct rconn *rc;   /* borrowed: outlives its pending replies */
};

static void rconn_on_status_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct rconn_status_req *req = priv;
    redisReply *reply = r;
    int status = 0;
    (void)ac;
    if (reply == NULL) {
        status = rconn_last_error(req->rc);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("event=redis_error conn=%s err=\"%.*s\"", req->rc->name, (int)reply->len,
                 reply->str);
        status = UV_EIO;
    } else if (reply->type == REDIS_REPLY_INTEGER && reply->integer == -1) {
        status = UV_ENOBUFS;
    }
    rconn_status_cb cb = req->cb;
    void *arg = req->arg;
    free(req);
    cb(arg, status);
}

int rconn_command_status(struct rconn *rc, rconn_status_cb cb, void *arg, int argc,
                         const char **argv, const size_t *lens)
{
    struct rconn_status_req *req;
    int r;
    if (rc->kind != RCONN_CMD)
        return UV_EINVAL;
    if (!rconn_is_up(rc))
        return UV_ENOTCONN;
    req = malloc(sizeof(*req));
    if (req == NULL)
        return UV_ENOMEM;
    req->cb = cb;
    req->arg = arg;
    req->rc = rc;
    r = rconn_send(rc, rconn_on_status_reply, req, argc, argv, lens);
    if (r < 0)
        free(req);
    return r;
}
