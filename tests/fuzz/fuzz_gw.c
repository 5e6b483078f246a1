/* fuzz_gw.c — the in-process gateway and TCP clients of the fuzz targets (fuzz_gw.h).
 * Each input gets a fresh loop + memory broker + server, so an input replays alone
 * exactly as it ran during fuzzing, and fz_gw_stop() can demand that everything was
 * closed and freed (uv_loop_close() == 0; LeakSanitizer sees any conn still held).
 * The clients are plain non-blocking sockets polled together with the loop's backend
 * fd: the loop only runs between client writes, so each chunk reaches the server as one
 * read. Does NOT touch the server's internals except to read its connection lists for
 * the checks and diagnostics. Single thread. */
#include "fuzz_gw.h"

#include <errno.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "log.h"

#define FZ_POLL_MAX_MS 20 /* longest single wait: the loop is polled too, so only a cap */

static struct sigaction fz_saved_int, fz_saved_term; /* libFuzzer's handlers */
static int fz_trace;           /* WSGATE_FUZZ_LOG set: a line per client and per input */
static uint64_t fz_started_ms; /* when fz_gw_start ran, for the trace */

static uint64_t fz_now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

void fz_init(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    signal(SIGPIPE, SIG_IGN); /* the server writes to sockets the client reset */
    /* uv_signal_stop() resets SIGINT/SIGTERM to SIG_DFL: fz_gw_stop puts these back */
    sigaction(SIGINT, NULL, &fz_saved_int);
    sigaction(SIGTERM, NULL, &fz_saved_term);
    enum log_level lvl = LOG_LEVEL_ERROR;
    const char *env = getenv("WSGATE_FUZZ_LOG");
    if (env != NULL) {
        log_level_parse(env, &lvl);
        fz_trace = 1;
    }
    log_init(lvl);
}

void fz_config(struct config *cfg, int flags)
{
    config_defaults(cfg);
    snprintf(cfg->listen, sizeof(cfg->listen), "127.0.0.1:0");
    cfg->backlog = 16;
    cfg->max_connections = 4;
    cfg->max_http_connections = 8;
    cfg->handshake_timeout_ms = 200;
    cfg->keepalive_timeout_ms = 200;
    cfg->request_timeout_ms = 300;
    cfg->write_timeout_ms = 300;
    cfg->linger_timeout_ms = 100;
    cfg->drain_timeout_ms = 500;
    cfg->ping_interval_ms = 100;
    cfg->idle_timeout_ms = 300;
    cfg->close_timeout_ms = 200;
    cfg->max_header_size = 1024;
    cfg->max_message_size = 2048;
    cfg->max_pipeline = 4;
    cfg->max_send_buffer = 8192;
    cfg->max_topics = 4;
    cfg->max_inflight = 4;
    cfg->max_upstream_inflight = 4;
    cfg->max_fragments = 8;
    cfg->ttl_ms = 1000;
    cfg->max_queue = 4;
    cfg->memory_max_bytes = 64 * 1024;
    cfg->upstream = 1; /* memory has no upstream: the core's drop path */
    if (flags & FZ_CFG_TINY) {
        cfg->max_header_size = 160; /* the upgrade requests of the targets still fit */
        cfg->max_message_size = 48;
        cfg->max_pipeline = 2;
        cfg->max_send_buffer = 64; /* two pipelined pushes to a live socket: a slow client */
        cfg->max_topics = 1;
        cfg->max_inflight = 1;
        cfg->max_upstream_inflight = 1;
        cfg->max_fragments = 1;
        cfg->max_queue = 1;
        cfg->frame_type = MSG_FRAME_TEXT;
    }
    if (flags & FZ_CFG_FAST) {
        cfg->handshake_timeout_ms = 20;
        cfg->keepalive_timeout_ms = 20;
        cfg->request_timeout_ms = 30;
        cfg->write_timeout_ms = 30;
        cfg->linger_timeout_ms = 10;
        cfg->ping_interval_ms = 10;
        cfg->idle_timeout_ms = 30;
        cfg->close_timeout_ms = 20;
        cfg->drain_timeout_ms = 100;
        cfg->ttl_ms = 10;
    }
}

/* --- diagnostics --- */

static void fz_walk_print(uv_handle_t *h, void *arg)
{
    (void)arg;
    fprintf(stderr, "fuzz_gw:   handle %p type=%s active=%d closing=%d\n", (void *)h,
            uv_handle_type_name(h->type), uv_is_active(h), uv_is_closing(h));
}

static void fz_conns_print(struct fz_gw *gw)
{
    struct conn_list *lists[] = {&gw->srv.http, &gw->srv.ws, &gw->srv.closing};
    static const char *const names[] = {"http", "ws", "closing"};
    for (int i = 0; i < 3; i++)
        for (struct conn *c = lists[i]->head; c != NULL; c = c->next)
            fprintf(stderr,
                    "fuzz_gw:   conn %p list=%s state=%u flags=0x%x refs=%u out.count=%u "
                    "out.bytes=%zu early.count=%u http=%p ws=%p sess=%p\n",
                    (void *)c, names[i], c->state, c->flags, c->refs, c->out.count, c->out.bytes,
                    c->early.count, (void *)c->http, (void *)c->ws, (void *)c->sess);
    uv_walk(&gw->loop, fz_walk_print, NULL);
}

void fz_fail(struct fz_gw *gw, const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "fuzz_gw: %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    if (gw != NULL)
        fz_conns_print(gw);
    abort();
}

/* --- gateway --- */

/* The listener's port, kept from the first input on. Every input binding a new port would
 * leave that port held by TIME_WAIT sockets (the server closes first after an error
 * answer) for a minute: at hundreds of inputs a second that exhausts the ephemeral range,
 * for every process on the machine. One port takes them all; the clients' own TIME_WAIT
 * sockets are reused by connect() on loopback (tcp_tw_reuse=2, the default). */
static unsigned fz_port;

static int fz_gw_try_start(struct fz_gw *gw)
{
    int rc;
    memset(&gw->broker, 0, sizeof(gw->broker));
    FZ_CHECK(NULL, uv_loop_init(&gw->loop) == 0, "uv_loop_init failed");
    rc = broker_open(&gw->broker, broker_find("memory"), &gw->loop, &gw->cfg);
    FZ_CHECK(NULL, rc == 0, "broker_open(memory): %s", uv_err_name(rc));
    char aerr[256];
    rc = auth_init(&gw->auth, &gw->cfg, aerr, sizeof(aerr));
    FZ_CHECK(NULL, rc == 0, "auth_init: %s", aerr);
    rc = server_start(&gw->srv, &gw->loop, &gw->cfg, &gw->broker, &gw->auth);
    if (rc == 0)
        return 0;
    /* server_start closed what it opened and the broker (as main.c relies on) */
    while (uv_loop_alive(&gw->loop))
        uv_run(&gw->loop, UV_RUN_ONCE);
    server_free(&gw->srv);
    auth_free(&gw->auth);
    FZ_CHECK(NULL, uv_loop_close(&gw->loop) == 0, "uv_loop_close after a failed start");
    return rc;
}

void fz_gw_start(struct fz_gw *gw)
{
    int rc, len = sizeof(gw->addr);
    fz_started_ms = fz_now_ms();
    if (fz_port != 0)
        snprintf(gw->cfg.listen, sizeof(gw->cfg.listen), "127.0.0.1:%u", fz_port);
    rc = fz_gw_try_start(gw);
    if (rc == UV_EADDRINUSE && fz_port != 0) {
        /* someone took the port between two inputs: take another */
        snprintf(gw->cfg.listen, sizeof(gw->cfg.listen), "127.0.0.1:0");
        rc = fz_gw_try_start(gw);
    }
    FZ_CHECK(NULL, rc == 0, "server_start: %s", uv_err_name(rc));
    rc = uv_tcp_getsockname(&gw->srv.listener, (struct sockaddr *)&gw->addr, &len);
    FZ_CHECK(NULL, rc == 0, "getsockname: %s", uv_err_name(rc));
    fz_port = ntohs(gw->addr.sin_port);
}

struct fz_count {
    struct fz_gw *gw; /* borrowed */
    unsigned n;       /* TCP handles other than the listener */
};

static void fz_count_tcp(uv_handle_t *h, void *arg)
{
    struct fz_count *k = arg;
    if (h->type == UV_TCP && h != (uv_handle_t *)&k->gw->srv.listener)
        k->n++;
}

unsigned fz_server_conns(struct fz_gw *gw)
{
    struct fz_count k = {gw, 0};
    uv_walk(&gw->loop, fz_count_tcp, &k);
    return k.n + gw->srv.http.count + gw->srv.ws.count + gw->srv.closing.count;
}

/* Wait (at most max_ms) for the loop's backend fd or one of fds, then run the loop once
 * without blocking. */
static void fz_loop_turn(struct fz_gw *gw, struct pollfd *fds, int nfds, int max_ms)
{
    int t = uv_backend_timeout(&gw->loop);
    if (t < 0 || t > max_ms)
        t = max_ms;
    fds[nfds].fd = uv_backend_fd(&gw->loop);
    fds[nfds].events = POLLIN;
    fds[nfds].revents = 0;
    if (poll(fds, (nfds_t)nfds + 1, t) < 0 && errno != EINTR)
        fz_fail(gw, __FILE__, __LINE__, "poll: %s", strerror(errno));
    uv_run(&gw->loop, UV_RUN_NOWAIT);
}

void fz_gw_stop(struct fz_gw *gw)
{
    struct pollfd pfd[1];
    server_shutdown(&gw->srv);
    uint64_t end = fz_now_ms() + FZ_SETTLE_MS;
    while (uv_loop_alive(&gw->loop)) {
        FZ_CHECK(gw, fz_now_ms() < end, "the loop is still alive %d ms after server_shutdown",
                 FZ_SETTLE_MS);
        fz_loop_turn(gw, pfd, 0, FZ_POLL_MAX_MS);
    }
    FZ_CHECK(gw, fz_server_conns(gw) == 0, "connections left after shutdown");
    server_free(&gw->srv);
    auth_free(&gw->auth);
    int rc = uv_loop_close(&gw->loop);
    FZ_CHECK(gw, rc == 0, "uv_loop_close: %s (handles left open)", uv_err_name(rc));
    sigaction(SIGINT, &fz_saved_int, NULL);
    sigaction(SIGTERM, &fz_saved_term, NULL);
    if (fz_trace)
        fprintf(stderr, "fuzz_gw: input done in %llu ms\n",
                (unsigned long long)(fz_now_ms() - fz_started_ms));
}

/* --- clients --- */

void fz_client_open(struct fz_gw *gw, struct fz_client *c, const uint8_t *data, size_t len,
                    size_t chunk, enum fz_end end, int flags)
{
    int one = 1, small = 2048;
    memset(c, 0, sizeof(*c));
    c->data = data;
    c->len = len;
    c->chunk = chunk;
    c->end = end;
    c->flags = flags;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    FZ_CHECK(gw, c->fd >= 0, "socket: %s", strerror(errno));
    if (flags & FZ_SLOW_READER) /* before connect: the window is negotiated from it */
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    /* The kernel completes the handshake into the listener's backlog, no loop turn needed.
     * Non-blocking plus poll: libFuzzer's SIGALRM (its -timeout watchdog) would interrupt
     * a blocking connect, which cannot simply be retried. */
    if (connect(c->fd, (struct sockaddr *)&gw->addr, sizeof(gw->addr)) < 0) {
        struct pollfd p = {.fd = c->fd, .events = POLLOUT};
        int err = 0;
        socklen_t elen = sizeof(err);
        FZ_CHECK(gw, errno == EINPROGRESS, "connect: %s", strerror(errno));
        while (poll(&p, 1, FZ_SETTLE_MS) < 0)
            FZ_CHECK(gw, errno == EINTR, "poll: %s", strerror(errno));
        FZ_CHECK(gw, p.revents != 0, "connect: no answer in %d ms", FZ_SETTLE_MS);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        FZ_CHECK(gw, err == 0, "connect: %s", strerror(err));
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* one chunk, one segment */
}

void fz_client_close(struct fz_client *c)
{
    if (fz_trace && c->fd >= 0)
        fprintf(stderr, "fuzz_gw: client sent %zu/%zu bytes, received %zu%s: %s\n", c->off, c->len,
                c->rx, c->eof ? " + EOF" : "", fz_client_head(c));
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static int fz_client_sending(const struct fz_client *c)
{
    return c->fd >= 0 && !c->shut && !c->eof && c->off < c->len;
}

/* Send the next chunk (or as much as fits); then end as c->end says. */
static void fz_client_write(struct fz_client *c)
{
    if (fz_client_sending(c)) {
        size_t n = c->len - c->off;
        if (c->chunk > 0 && n > c->chunk)
            n = c->chunk;
        ssize_t w = send(c->fd, c->data + c->off, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        c->blocked = w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
        if (w > 0)
            c->off += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            c->shut = 1; /* reset by the server: nothing more goes out */
    }
    if (c->fd < 0 || c->shut || (c->off < c->len && !c->eof))
        return;
    if (c->end == FZ_END_FIN) {
        shutdown(c->fd, SHUT_WR);
        c->shut = 1;
    } else if (c->end == FZ_END_RST || c->end == FZ_END_DRAIN) {
        c->end_turn = 1; /* after the loop has seen the last bytes */
    }
}

/* FZ_SLOW_READER: shrink the send buffer of the server's end of c (found by port) before
 * the server writes to it, so output backs up into conn.c's queue and uv_write. Runs
 * after each loop turn; the accept and the first read never share one. */
static void fz_client_tune(struct fz_gw *gw, struct fz_client *c)
{
    struct sockaddr_in me, peer;
    socklen_t len = sizeof(me);
    int small = 4096;
    if (!(c->flags & FZ_SLOW_READER) || c->tuned || c->fd < 0 ||
        getsockname(c->fd, (struct sockaddr *)&me, &len) < 0)
        return;
    for (struct conn *sc = gw->srv.http.head; sc != NULL; sc = sc->next) {
        uv_os_fd_t fd;
        len = sizeof(peer);
        if (uv_fileno((uv_handle_t *)&sc->tcp, &fd) == 0 &&
            getpeername(fd, (struct sockaddr *)&peer, &len) == 0 && peer.sin_port == me.sin_port) {
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
            c->tuned = 1;
        }
    }
}

/* 1 when the server has nothing to do right now: no deferred work (the broker's idle
 * callbacks, closing handles) and no I/O event waiting (all readable bytes consumed). */
static int fz_loop_quiet(struct fz_gw *gw)
{
    struct pollfd p = {.fd = uv_backend_fd(&gw->loop), .events = POLLIN};
    return uv_backend_timeout(&gw->loop) != 0 && poll(&p, 1, 0) == 0;
}

/* The end of FZ_END_RST (a reset) or FZ_END_DRAIN (the gateway shuts down), once the
 * server has taken in what it will take of the client's bytes and is waiting. */
static void fz_client_end(struct fz_gw *gw, struct fz_client *c)
{
    struct linger lg = {1, 0};
    if (c->fd < 0 || !c->end_turn || !fz_loop_quiet(gw))
        return;
    c->end_turn = 0;
    if (c->end == FZ_END_DRAIN) {
        server_shutdown(&gw->srv); /* idempotent */
        return;
    }
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    c->eof = 1;
    fz_client_close(c);
}

static void fz_client_read(struct fz_client *c)
{
    char buf[16384];
    if ((c->flags & FZ_SLOW_READER) && fz_client_sending(c) && !c->blocked)
        return;
    while (c->fd >= 0 && !c->eof) {
        ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
        if (r > 0) {
            size_t room = sizeof(c->head) - 1 - c->head_len;
            size_t k = (size_t)r < room ? (size_t)r : room;
            memcpy(c->head + c->head_len, buf, k);
            c->head_len += k;
            c->head[c->head_len] = '\0';
            c->rx += (size_t)r;
        } else if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            c->eof = 1; /* EOF or ECONNRESET: the server is done with us */
        } else {
            break;
        }
    }
}

int fz_has_head(struct fz_client *c)
{
    return c->eof || strstr(c->head, "\r\n\r\n") != NULL;
}

const char *fz_client_head(struct fz_client *c)
{
    static char out[81];
    size_t n = 0;
    for (const char *p = c->head; *p != '\0' && *p != '\r' && n + 1 < sizeof(out); p++)
        out[n++] = (*p >= 0x20 && *p < 0x7f) ? *p : '.';
    out[n] = '\0';
    return out;
}

int fz_closed(struct fz_client *c)
{
    return c->eof || c->fd < 0;
}

static int fz_done(struct fz_gw *gw, struct fz_client **c, int n)
{
    for (int i = 0; i < n; i++)
        if (c[i]->fd >= 0 && (!c[i]->eof || fz_client_sending(c[i])))
            return 0;
    return fz_server_conns(gw) == 0;
}

int fz_run(struct fz_gw *gw, struct fz_client **c, int n, int (*stop)(struct fz_client *),
           uint64_t ms)
{
    struct pollfd pfd[8];
    uint64_t end = fz_now_ms() + ms;
    FZ_CHECK(gw, n >= 1 && n < 8, "fz_run: %d clients", n);
    for (;;) {
        for (int i = 0; i < n; i++)
            fz_client_write(c[i]);
        /* the loop runs between writes: each chunk is one read on the server side */
        uv_run(&gw->loop, UV_RUN_NOWAIT);
        for (int i = 0; i < n; i++) {
            fz_client_tune(gw, c[i]);
            fz_client_read(c[i]);
            fz_client_end(gw, c[i]);
        }
        if (stop != NULL ? stop(c[0]) : fz_done(gw, c, n))
            return 1;
        if (fz_now_ms() >= end)
            return 0;
        int busy = 0;
        for (int i = 0; i < n; i++) {
            pfd[i].fd = c[i]->fd; /* -1 once closed: poll ignores it */
            pfd[i].events = (short)(POLLIN | (fz_client_sending(c[i]) ? POLLOUT : 0));
            pfd[i].revents = 0;
            busy |= fz_client_sending(c[i]);
        }
        fz_loop_turn(gw, pfd, n, busy ? 0 : FZ_POLL_MAX_MS);
    }
}

void fz_settle(struct fz_gw *gw, struct fz_client **c, int n)
{
    if (!fz_run(gw, c, n, NULL, FZ_SETTLE_MS))
        fz_fail(gw, __FILE__, __LINE__,
                "the server still holds %u connection(s) %d ms after the client(s) finished "
                "sending (a hang)",
                fz_server_conns(gw), FZ_SETTLE_MS);
    for (int i = 0; i < n; i++)
        fz_client_close(c[i]);
}
