/* server.c — the listener, accept, the flush pass (prepare + check handles: every
 * connection with queued output is written once per loop iteration, so many messages
 * share one writev), the sweep timer (handshake/keep-alive deadlines, pings, idle and
 * close timeouts; it runs only while connections exist), signals and the drain on
 * SIGTERM/SIGINT, and /metrics. Does NOT parse anything. Loop thread only. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "broker.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "msg.h"
#include "server.h"

#define RBUF_SIZE (64 * 1024)

static void server_on_accept(uv_stream_t *listener, int status)
{
    struct server *srv = listener->data;
    if (status < 0) {
        log_warn("event=accept_failed err=%s", uv_err_name(status));
        return;
    }
    if (srv->phase != SRV_RUNNING)
        return;
    if (srv->http.count >= srv->cfg->max_http_connections) {
        /* over the HTTP connection limit: take the socket and close it at once */
        uv_tcp_t *t = malloc(sizeof(*t));
        if (t == NULL || uv_tcp_init(srv->loop, t) < 0) {
            free(t);
            return;
        }
        uv_accept(listener, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, (uv_close_cb)free);
        srv->m.refused_http_limit++;
        srv->refused_unlogged++;
        /* one line per second at most: a flood of refusals must not flood the log */
        uint64_t now = uv_now(srv->loop);
        if (srv->refused_logged_ms == 0 || now - srv->refused_logged_ms >= 1000) {
            log_warn("event=http_connection_limit max=%u refused=%llu",
                     srv->cfg->max_http_connections, (unsigned long long)srv->refused_unlogged);
            srv->refused_logged_ms = now;
            srv->refused_unlogged = 0;
        }
        return;
    }
    conn_accept(srv);
}

static void server_on_flush(uv_handle_t *h)
{
    conn_flush_all(h->data);
}

static void server_on_prepare(uv_prepare_t *h)
{
    server_on_flush((uv_handle_t *)h);
}

static void server_on_check(uv_check_t *h)
{
    server_on_flush((uv_handle_t *)h);
}

static uint64_t min_nz(uint64_t a, uint64_t b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    return a < b ? a : b;
}

static void server_on_sweep(uv_timer_t *t)
{
    struct server *srv = t->data;
    const struct config *cfg = srv->cfg;
    uint64_t now = uv_now(srv->loop);
    struct conn *c, *next;
    srv->now_ms = now;
    for (c = srv->http.head; c != NULL; c = next) {
        next = c->next;
        c->proto->timeout(c, now);
    }
    /* srv->ws is ordered by last activity: stop at the first one not yet due */
    uint64_t due = min_nz(cfg->ping_interval_ms, cfg->idle_timeout_ms);
    for (c = srv->ws.head; c != NULL; c = next) {
        next = c->next;
        if (now - c->active_ms < due)
            break;
        c->proto->timeout(c, now);
    }
    for (c = srv->closing.head; c != NULL; c = next) {
        next = c->next;
        if (now - c->active_ms < cfg->close_timeout_ms)
            break;
        c->proto->timeout(c, now);
    }
    /* only connections whose socket refused bytes have a write in flight */
    for (c = srv->writing; c != NULL; c = next) {
        next = c->wnext;
        conn_check_write(c, now);
    }
    if (srv->http.count + srv->ws.count + srv->closing.count == 0)
        uv_timer_stop(t); /* nothing to watch: no wake-ups while idle */
}

void server_sweep_arm(struct server *srv)
{
    if (!uv_is_active((uv_handle_t *)&srv->sweep))
        uv_timer_start(&srv->sweep, server_on_sweep, srv->sweep_period_ms, srv->sweep_period_ms);
}

static void server_finish(struct server *srv);

void server_on_conn_closed(struct server *srv)
{
    if (srv->phase == SRV_DRAINING && srv->http.count + srv->ws.count + srv->closing.count == 0)
        server_finish(srv);
}

static void server_on_broker_closed(struct broker *b)
{
    log_info("event=broker_closed broker=%s", b->ops->name);
}

/* Close every server handle; uv_run returns when the last one is closed. */
static void server_finish(struct server *srv)
{
    if (srv->phase == SRV_STOPPED)
        return;
    srv->phase = SRV_STOPPED;
    uv_close((uv_handle_t *)&srv->sweep, NULL);
    uv_close((uv_handle_t *)&srv->flush_prep, NULL);
    uv_close((uv_handle_t *)&srv->flush_check, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sighup, NULL);
    uv_close((uv_handle_t *)&srv->drain_timer, NULL);
    broker_close(srv->broker, server_on_broker_closed);
    log_info("event=stopped");
}

static void server_on_drain_timeout(uv_timer_t *t)
{
    struct server *srv = t->data;
    struct conn *c, *next;
    log_warn("event=drain_timeout open=%u", srv->http.count + srv->ws.count + srv->closing.count);
    struct conn_list *lists[] = {&srv->http, &srv->ws, &srv->closing};
    for (int i = 0; i < 3; i++)
        for (c = lists[i]->head; c != NULL; c = next) {
            next = c->next;
            conn_close(c);
        }
    server_finish(srv);
}

void server_shutdown(struct server *srv)
{
    struct conn *c, *next;
    if (srv->phase != SRV_RUNNING)
        return;
    srv->phase = SRV_DRAINING;
    log_info("event=draining ws=%u http=%u", srv->ws.count, srv->http.count);
    if (srv->listening) {
        uv_close((uv_handle_t *)&srv->listener, NULL);
        srv->listening = 0;
    }
    for (c = srv->ws.head; c != NULL; c = next) {
        next = c->next;
        c->proto->end(c, 1001);
    }
    for (c = srv->http.head; c != NULL; c = next) {
        next = c->next;
        http_drain(c);
    }
    uv_timer_start(&srv->drain_timer, server_on_drain_timeout, srv->cfg->drain_timeout_ms, 0);
    server_sweep_arm(srv);
    conn_flush_all(srv);
    server_on_conn_closed(srv);
}

static void server_on_signal(uv_signal_t *h, int signum)
{
    struct server *srv = h->data;
    log_info("event=signal signal=%d", signum);
    server_shutdown(srv);
}

static int server_parse_listen(const char *s, struct sockaddr_storage *ss)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
        return UV_EINVAL;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    int port = atoi(colon + 1);
    if (host[0] == '[') {
        size_t l = strlen(host);
        if (l < 2 || host[l - 1] != ']')
            return UV_EINVAL;
        host[l - 1] = '\0';
        return uv_ip6_addr(host + 1, port, (struct sockaddr_in6 *)ss);
    }
    return uv_ip4_addr(host, port, (struct sockaddr_in *)ss);
}

static void server_on_sighup(uv_signal_t *h, int signum)
{
    struct server *srv = h->data;
    char err[256] = "";
    (void)signum;
    if (srv->cfg->push_tokens_file[0] == '\0') {
        log_info("event=reload what=nothing");
        return;
    }
    int rc = auth_reload(srv->auth, err, sizeof(err));
    if (rc < 0)
        log_error("event=reload_failed what=push_tokens_file err=%s detail=\"%s\"", uv_err_name(rc),
                  err);
    else
        log_info("event=reload what=push_tokens_file tokens=%zu", srv->auth->npush);
}

int server_start(struct server *srv, uv_loop_t *loop, const struct config *cfg, struct broker *b,
                 struct auth *auth)
{
    int rc;
    struct sockaddr_storage ss;
    memset(srv, 0, sizeof(*srv));
    srv->loop = loop;
    srv->cfg = cfg;
    srv->broker = b;
    srv->auth = auth;
    if ((rc = iplimit_init(&srv->iplimit, cfg->max_connections_per_ip,
                           cfg->max_handshakes_per_second_per_ip)) < 0)
        return rc;
    uint64_t p =
        min_nz(min_nz(cfg->handshake_timeout_ms, cfg->keepalive_timeout_ms),
               min_nz(min_nz(cfg->ping_interval_ms, cfg->idle_timeout_ms), cfg->close_timeout_ms));
    p /= 4;
    srv->sweep_period_ms = p < 10 ? 10 : p > 1000 ? 1000 : p;
    srv->rbuf_size = RBUF_SIZE;
    srv->rbuf = malloc(srv->rbuf_size);
    srv->resp_202 = http_render(202, "application/json", "", "{\"ok\":true}", 11, 0);
    static const uint8_t ping[] = {0x89, 0x00};
    srv->ping_frame = msg_new(sizeof(ping));
    if (srv->rbuf == NULL || srv->resp_202 == NULL || srv->ping_frame == NULL)
        return UV_ENOMEM;
    memcpy(srv->ping_frame->data, ping, sizeof(ping));
    srv->ping_frame->len = sizeof(ping);

    if ((rc = server_parse_listen(cfg->listen, &ss)) < 0) {
        log_error("event=listen_failed listen=%s err=%s", cfg->listen, uv_err_name(rc));
        return rc;
    }
    uv_timer_init(loop, &srv->sweep);
    uv_timer_init(loop, &srv->drain_timer);
    uv_prepare_init(loop, &srv->flush_prep);
    uv_check_init(loop, &srv->flush_check);
    uv_signal_init(loop, &srv->sigterm);
    uv_signal_init(loop, &srv->sigint);
    uv_signal_init(loop, &srv->sighup);
    srv->sweep.data = srv->drain_timer.data = srv->flush_prep.data = srv->flush_check.data =
        srv->sigterm.data = srv->sigint.data = srv->sighup.data = srv;
    uv_prepare_start(&srv->flush_prep, server_on_prepare);
    uv_check_start(&srv->flush_check, server_on_check);
    uv_unref((uv_handle_t *)&srv->flush_prep);
    uv_unref((uv_handle_t *)&srv->flush_check);
    uv_signal_start(&srv->sigterm, server_on_signal, SIGTERM);
    uv_signal_start(&srv->sigint, server_on_signal, SIGINT);
    uv_signal_start(&srv->sighup, server_on_sighup, SIGHUP);
    uv_unref((uv_handle_t *)&srv->sighup);

    if ((rc = uv_tcp_init(loop, &srv->listener)) < 0)
        goto fail;
    srv->listener.data = srv;
    srv->listening = 1;
    if ((rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0)) < 0 ||
        (rc = uv_listen((uv_stream_t *)&srv->listener, (int)cfg->backlog, server_on_accept)) < 0)
        goto fail;
    int len = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
    if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
        snprintf(srv->listen_addr, sizeof(srv->listen_addr), "[%s]:%d", ip,
                 ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    } else {
        uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
        snprintf(srv->listen_addr, sizeof(srv->listen_addr), "%s:%d", ip,
                 ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
    log_info("event=listening addr=%s broker=%s", srv->listen_addr, b->ops->name);
    return 0;
fail:
    log_error("event=listen_failed listen=%s err=%s", cfg->listen, uv_err_name(rc));
    server_finish(srv);
    uv_close((uv_handle_t *)&srv->listener, NULL);
    srv->listening = 0;
    return rc;
}

void server_free(struct server *srv)
{
    iplimit_free(&srv->iplimit);
    free(srv->rbuf);
    srv->rbuf = NULL;
    msg_unref(srv->resp_202);
    msg_unref(srv->ping_frame);
    srv->resp_202 = srv->ping_frame = NULL;
}
