/* http_routes.c — what each route does once HTTP has parsed a request (http.c): push and
 * publish into the broker (answers in request order when the broker calls back),
 * /healthz, /readyz, /metrics, CORS preflights, and the WebSocket upgrade: access
 * control (Origin, client JWT, per-IP rate and cap) before any broker work, then the
 * session's attach and the 101. Does NOT parse bytes or write to sockets. Loop thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/evp.h>

#include "auth.h"
#include "broker.h"
#include "config.h"
#include "conn.h"
#include "http.h"
#include "iplimit.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"
#include "route.h"
#include "server.h"
#include "session.h"
#include "util.h"
#include "web.h"

/* --- push / publish --- */

static void http_on_pushed(void *arg, int status)
{
    struct http_pending *p = arg;
    struct conn *c = p->c;
    struct server *srv = c->srv;
    if (c->state == CONN_CLOSING) {
        /* the client went away: the answer has nowhere to go (the message was taken);
         * the slot stays on the list and is freed with the connection */
        p->resp = msg_ref(srv->resp_202);
        conn_unref(c);
        return;
    }
    char corsbuf[640];
    const char *cors = p->cors_origin ? http_cors_lines(p->cors_origin, strlen(p->cors_origin),
                                                        corsbuf, sizeof(corsbuf))
                                      : NULL;
    if (status == 0 && cors == NULL) {
        p->resp = msg_ref(srv->resp_202);
    } else if (status == 0) {
        p->resp = http_render(202, "application/json", cors, "{\"ok\":true}", 11, 0);
    } else if (status == UV_ENOBUFS) {
        srv->m.refused_queue_full++;
        p->resp = http_render_error_more(srv, 429, "session queue full", NULL, cors, 0);
    } else if (status == UV_ENOSPC) {
        p->resp = http_render_error_more(srv, 503, "memory broker full", NULL, cors, 0);
    } else if (status == UV_E2BIG) {
        p->resp = http_render_error_more(srv, 413, "message too large", NULL, cors, 0);
    } else {
        p->resp = http_render_error_more(srv, 503, "broker unavailable", NULL, cors, 0);
    }
    if (p->resp == NULL) {
        p->resp = msg_ref(srv->resp_202); /* placeholder so the order holds */
        p->close_after = 1;
    }
    conn_flush_later(c); /* the flush pass emits it in order */
    conn_unref(c);
}

static void http_do_push(struct conn *c, int publish, const char *key)
{
    struct http_state *h = c->http;
    struct server *srv = c->srv;
    struct msg *m = h->body;
    h->body = NULL;
    if (m == NULL && (m = msg_new(0)) == NULL) {
        http_error(c, 500, "out of memory", 1);
        return;
    }
    msg_seal(m, srv->cfg->frame_type);
    if (!broker_ready(srv->broker)) {
        msg_unref(m);
        http_error(c, 503, "broker unavailable", 0);
        return;
    }
    struct http_pending *p = http_slot_new(h);
    if (p == NULL) {
        msg_unref(m);
        http_error(c, 500, "out of memory", 1);
        return;
    }
    if (h->cors) {
        size_t olen;
        const char *o = http_hval(h, HDR_ORIGIN, &olen);
        p->cors_origin = strndup(o, olen); /* NULL on ENOMEM: the answer lacks CORS only */
    }
    int rc = publish ? broker_publish(srv->broker, key, m, http_on_pushed, p)
                     : broker_push(srv->broker, key, m, http_on_pushed, p);
    msg_unref(m);
    if (rc < 0) {
        if (rc == UV_ENOBUFS)
            srv->m.refused_queue_full++;
        p->resp = rc == UV_ENOBUFS  ? http_render_error(srv, 429, "session queue full", NULL, 0)
                  : rc == UV_ENOSPC ? http_render_error(srv, 503, "memory broker full", NULL, 0)
                                    : http_render_error(srv, 503, "broker unavailable", NULL, 0);
        if (p->resp == NULL) {
            p->resp = msg_ref(srv->resp_202);
            p->close_after = 1;
        }
        conn_flush_later(c);
        return;
    }
    if (publish)
        srv->m.published++;
    else
        srv->m.pushed++;
    conn_ref(c);
}

/* --- upgrade --- */

/* Access control of an upgrade, before any broker work: Origin, the
 * client's JWT (sub = key, topics within its claim), then the per-IP handshake rate and
 * connection cap. 0 when allowed (c->ip then holds the counted address, if any), or -1
 * after queueing the refusal. */
static int http_upgrade_allowed(struct conn *c, const char *key, size_t key_len, const char *query)
{
    struct http_state *h = c->http;
    struct server *srv = c->srv;
    const struct config *cfg = srv->cfg;
    struct auth *a = srv->auth;
    size_t olen, alen, plen, xlen, toklen;
    const char *origin = http_hval(h, HDR_ORIGIN, &olen);
    const char *authz = http_hval(h, HDR_AUTHZ, &alen);
    const char *proto = http_hval(h, HDR_WS_PROTO, &plen);
    const char *xff = http_hval(h, HDR_XFF, &xlen);
    const char *tok;
    /* a browser's token rides as the subprotocol pair "bearer, <jwt>": the 101 must
     * then select "bearer", or the browser fails the connection */
    h->echo_bearer = proto != NULL && auth_ws_protocol_token(proto, plen, &tok, &toklen) == 0;
    if (origin != NULL && !auth_origin_ok(a, origin, olen)) {
        srv->m.refused_auth[AUTH_REFUSED_ORIGIN]++;
        http_error(c, 403, "origin not allowed", 1);
        return -1;
    }
    /* the handshake rate comes before the token check: failed guesses cost budget, and
     * a flood of tokens to verify (RS256 is not free) is cut off early */
    char ip[INET6_ADDRSTRLEN] = "";
    uint64_t now = uv_now(srv->loop);
    int rc = 0;
    if (cfg->max_connections_per_ip > 0 || cfg->max_handshakes_per_second_per_ip > 0) {
        struct sockaddr_storage peer;
        int plen_ = sizeof(peer);
        if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&peer, &plen_) < 0 ||
            auth_client_ip(a, (struct sockaddr *)&peer, xff, xlen, ip) < 0) {
            http_error(c, 400, "no client address", 1);
            return -1;
        }
        rc = iplimit_handshake_take(&srv->iplimit, ip, now);
        if (rc == UV_EAGAIN) {
            char extra[64], body[] = "{\"error\":\"too many handshakes\"}";
            srv->m.refused_rate++;
            snprintf(extra, sizeof(extra), "Retry-After: %llu\r\n",
                     (unsigned long long)iplimit_retry_after_s(&srv->iplimit, ip, now));
            struct msg *m = http_render(429, "application/json", extra, body, sizeof(body) - 1, 1);
            http_answer(c, m, 1);
            msg_unref(m);
            return -1;
        }
    }
    if (auth_client_required(a)) {
        struct session probe; /* topics as the session will hold them */
        memset(&probe, 0, sizeof(probe));
        if (query != NULL && session_topics_parse(&probe, query, cfg->max_topics) < 0) {
            http_error(c, 400, "invalid topics", 1);
            return -1;
        }
        const char *why = "missing_token";
        enum auth_result r = AUTH_UNAUTHORIZED;
        if (auth_client_token(authz, alen, query, query ? strlen(query) : 0, proto, plen, &tok,
                              &toklen) != AUTH_FROM_NONE)
            r = auth_jwt_check(a, tok, toklen, key, key_len, probe.topics, probe.ntopics,
                               (int64_t)time(NULL), &why);
        free(probe.topics);
        if (r != AUTH_OK) {
            srv->m
                .refused_auth[r == AUTH_FORBIDDEN ? AUTH_REFUSED_FORBIDDEN : AUTH_REFUSED_TOKEN]++;
            log_debug("event=upgrade_refused status=%d reason=%s", (int)r, why);
            http_error(c, (int)r, r == AUTH_FORBIDDEN ? "forbidden" : "invalid token", 1);
            return -1;
        }
    }
    if (rc == 0 && cfg->max_connections_per_ip > 0)
        rc = iplimit_conn_acquire(&srv->iplimit, ip);
    if (rc == UV_EBUSY)
        srv->m.refused_per_ip++;
    if (rc == 0 && cfg->max_connections_per_ip > 0 && (c->ip = strdup(ip)) == NULL) {
        iplimit_conn_release(&srv->iplimit, ip, now);
        rc = UV_ENOMEM;
    }
    if (rc < 0) {
        http_error(c, 503,
                   rc == UV_EBUSY ? "too many connections from this address" : "out of memory", 1);
        return -1;
    }
    return 0;
}

static int http_ws_handshake_ok(struct conn *c);
static void http_attach(struct conn *c, const char *key, size_t key_len, const char *query,
                        enum http_upgrade_kind kind);

/* GET /ws/{S} (kind WS) or /sse/{S} (kind SSE): checks, access control, the session,
 * the broker's attach; the answer (101, or 200 text/event-stream) waits in its slot for
 * http_upgrade_attached. */
static void http_upgrade(struct conn *c, const char *key, size_t key_len, const char *query,
                         enum http_upgrade_kind kind)
{
    if (!key_valid(key, key_len)) {
        http_error(c, 400, "invalid session key", 1);
        return;
    }
    if (kind == HTTP_UPGRADE_WS && http_ws_handshake_ok(c) < 0)
        return;
    if (http_upgrade_allowed(c, key, key_len, query) < 0)
        return;
    http_attach(c, key, key_len, query, kind);
}

/* The WebSocket handshake headers (RFC 6455 4.2.1). 0, or -1 after a 400. */
static int http_ws_handshake_ok(struct conn *c)
{
    struct http_state *h = c->http;
    if (!h->upgrade_ws || !h->parser.upgrade) {
        http_error(c, 400, "websocket upgrade required", 1);
        return -1;
    }
    if (h->parser.http_major != 1 || h->parser.http_minor < 1) {
        http_error(c, 400, "websocket upgrade requires HTTP/1.1", 1);
        return -1;
    }
    if (!h->ws_version_ok) {
        struct msg *m = http_render(400, "application/json", "Sec-WebSocket-Version: 13\r\n",
                                    "{\"error\":\"unsupported websocket version\"}", 41, 1);
        http_answer(c, m, 1);
        msg_unref(m);
        return -1;
    }
    uint8_t raw[20];
    if (h->ws_keys != 1 || h->ws_key_len != 24 ||
        EVP_DecodeBlock(raw, (const unsigned char *)h->ws_key, 24) != 18 || h->ws_key[22] != '=' ||
        h->ws_key[23] != '=') {
        http_error(c, 400, "invalid Sec-WebSocket-Key", 1);
        return -1;
    }
    return 0;
}

static void http_attach(struct conn *c, const char *key, size_t key_len, const char *query,
                        enum http_upgrade_kind kind)
{
    struct http_state *h = c->http;
    struct server *srv = c->srv;
    if (srv->phase != SRV_RUNNING) {
        http_error(c, 503, "shutting down", 1);
        return;
    }
    if (srv->m.ws_open + srv->upgrades_pending >= srv->cfg->max_connections) {
        http_error(c, 503, "too many connections", 1);
        return;
    }
    if (!broker_ready(srv->broker)) {
        http_error(c, 503, "broker unavailable", 1);
        return;
    }
    int rc;
    struct session *s = session_new(c, key, key_len, query, &rc);
    if (s == NULL) {
        http_error(c, rc == UV_EINVAL ? 400 : 503,
                   rc == UV_EINVAL ? "invalid topics" : "out of memory", 1);
        return;
    }
    struct http_pending *p = http_slot_new(h);
    if (p == NULL) {
        session_free(s);
        http_error(c, 503, "out of memory", 1);
        return;
    }
    p->upgrade = (uint8_t)kind;
    h->upg = p;
    h->stopped = 1;
    c->sess = s;
    h->upgrade = UPG_ATTACHING;
    srv->upgrades_pending++;
    conn_read_pause(c, 1);
    rc = broker_attach(srv->broker, s);
    if (rc < 0) {
        h->upgrade = UPG_FAILED;
        srv->upgrades_pending--;
        p->upgrade = 0;
        p->close_after = 1;
        p->resp = http_render_error(srv, 503, "broker unavailable", NULL, 1);
        h->upg = NULL;
        conn_flush_later(c);
    }
}

void http_upgrade_attached(struct conn *c, int status)
{
    struct session *s = c->sess;
    struct http_state *h = c->http;
    struct server *srv = c->srv;
    if (c->state != CONN_HTTP || h == NULL || h->upgrade != UPG_ATTACHING)
        return; /* defensive: the contract says detach cancels the callback */
    srv->upgrades_pending--;
    struct http_pending *p = h->upg;
    if (status < 0) {
        h->upgrade = UPG_FAILED;
        p->upgrade = 0;
        p->close_after = 1;
        p->resp = http_render_error(srv, 503, "broker unavailable", NULL, 1);
        h->upg = NULL;
        log_info("event=attach_failed session=%s err=%s", s->key, uv_err_name(status));
    } else {
        char accept[29], head[240];
        int n;
        if (p->upgrade == HTTP_UPGRADE_SSE) {
            /* no length: the stream is the body until either side closes */
            n = snprintf(head, sizeof(head),
                         "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n\r\n");
        } else {
            ws_accept_key(h->ws_key, 24, accept);
            n = snprintf(head, sizeof(head),
                         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
                         accept, h->echo_bearer ? "Sec-WebSocket-Protocol: bearer\r\n" : "");
        }
        h->upgrade = UPG_ATTACHED;
        p->resp = msg_new((size_t)n);
        if (p->resp == NULL) {
            /* out of memory: drop the connection; the detach happens in the flush pass,
             * never inside this broker callback */
            conn_close_soon(c);
            return;
        }
        memcpy(p->resp->data, head, (size_t)n);
        p->resp->len = (uint32_t)n;
    }
    conn_flush_later(c);
}

void http_upgrade_abort(struct conn *c)
{
    struct http_state *h = c->http;
    if (h == NULL)
        return;
    if (h->upgrade == UPG_ATTACHING)
        c->srv->upgrades_pending--;
    if (h->upgrade == UPG_ATTACHING || h->upgrade == UPG_ATTACHED)
        broker_detach(c->srv->broker, c->sess);
    h->upgrade = UPG_FAILED;
}

/* --- routing --- */

static void http_route(struct http_state *h, struct route *r)
{
    route_parse(h->url ? h->url : "", r);
}

/* Decide early errors once the head is known (before any body). */
void http_check_head(struct http_state *h)
{
    struct route r;
    int method = h->parser.method;
    http_route(h, &r);
    h->rt = r; /* parsed once: http_dispatch uses it */
    h->route = (uint8_t)r.id;
    switch (r.id) {
    case ROUTE_WS:
    case ROUTE_SSE:
        if (method != HTTP_GET)
            h->err_status = 405;
        break;
    case ROUTE_PUSH:
    case ROUTE_PUBLISH: {
        struct auth *a = h->c->srv->auth;
        size_t olen, alen;
        const char *origin = http_hval(h, HDR_ORIGIN, &olen);
        const char *authz = http_hval(h, HDR_AUTHZ, &alen);
        h->cors = origin != NULL && auth_cors_ok(a, origin, olen);
        if (method == HTTP_OPTIONS) {
            break; /* a CORS preflight: answered 204, with grants only for cors_origins */
        } else if (method != HTTP_POST) {
            h->err_status = 405;
        } else if (!auth_push_ok(a, authz, alen)) {
            /* before every other check: nothing about the target leaks to a stranger */
            h->c->srv->m.refused_auth[AUTH_REFUSED_PUSH]++;
            h->err_status = 401;
            h->err_reason = authz == NULL ? "missing token" : "invalid token";
        } else if (!key_valid(r.key, r.key_len)) {
            h->err_status = 400;
            h->err_reason = r.id == ROUTE_PUSH ? "invalid session key" : "invalid topic";
        } else if (h->parser.content_length > h->c->srv->cfg->max_message_size &&
                   !(h->parser.flags & F_CHUNKED)) {
            h->err_status = 413;
            h->err_reason = "message too large";
        } else if (h->expect_other) {
            h->err_status = 417;
            h->err_reason = "unsupported expectation";
        }
        break;
    }
    case ROUTE_CLIENT_JS:
    case ROUTE_DEMO:
        if (!h->c->srv->cfg->demo) {
            h->err_status = 404;
            h->err_reason = "not found";
        } else if (method != HTTP_GET && method != HTTP_HEAD) {
            h->err_status = 405;
        }
        break;
    case ROUTE_HEALTHZ:
    case ROUTE_READYZ:
    case ROUTE_METRICS:
        if (method != HTTP_GET && method != HTTP_HEAD) {
            h->err_status = 405;
        } else if (r.id == ROUTE_METRICS) {
            size_t alen;
            const char *authz = http_hval(h, HDR_AUTHZ, &alen);
            if (!auth_metrics_ok(h->c->srv->auth, authz, alen)) {
                h->c->srv->m.refused_auth[AUTH_REFUSED_METRICS]++;
                h->err_status = 401;
                h->err_reason = authz == NULL ? "missing token" : "invalid token";
            }
        }
        break;
    default:
        h->err_status = 404;
        h->err_reason = "not found";
    }
    if (h->err_status == 405) {
        h->err_reason = "method not allowed";
        h->err_allow = route_allow(r.id);
    }
}

void http_dispatch(struct conn *c)
{
    struct http_state *h = c->http;
    struct server *srv = c->srv;
    int keep = llhttp_should_keep_alive(&h->parser);
    const struct route r = h->rt;
    const char *key = r.key, *query = r.query;
    size_t key_len = r.key_len;
    char corsbuf[640];
    size_t olen;
    const char *origin = http_hval(h, HDR_ORIGIN, &olen);
    const char *cors = h->cors ? http_cors_lines(origin, olen, corsbuf, sizeof(corsbuf)) : NULL;
    if (h->err_status != 0) {
        struct msg *m = http_render_error_more(srv, h->err_status, h->err_reason, h->err_allow,
                                               cors, !keep || h->err_status == 413);
        http_answer(c, m, !keep || h->err_status == 413);
        msg_unref(m);
        return;
    }
    int head = h->parser.method == HTTP_HEAD;
    if (h->parser.method == HTTP_OPTIONS) { /* preflight of /push or /publish */
        char extra[1024];
        snprintf(extra, sizeof(extra), "Allow: POST, OPTIONS\r\n%s%s", cors ? cors : "",
                 cors ? "Access-Control-Allow-Methods: POST\r\n"
                        "Access-Control-Allow-Headers: Authorization, Content-Type\r\n"
                        "Access-Control-Max-Age: 600\r\n"
                      : "");
        struct msg *m = http_render_204(extra, !keep);
        http_answer(c, m, !keep);
        msg_unref(m);
        return;
    }
    switch (h->route) {
    case ROUTE_WS:
    case ROUTE_SSE: {
        char k[KEY_MAX_LEN + 1];
        if (key_len > KEY_MAX_LEN) {
            http_error(c, 400, "invalid session key", 1);
            return;
        }
        memcpy(k, key, key_len);
        k[key_len] = '\0';
        http_upgrade(c, k, key_len, query,
                     h->route == ROUTE_SSE ? HTTP_UPGRADE_SSE : HTTP_UPGRADE_WS);
        return;
    }
    case ROUTE_PUSH:
    case ROUTE_PUBLISH: {
        char k[KEY_MAX_LEN + 1];
        memcpy(k, key, key_len); /* key_valid() checked the length at head time */
        k[key_len] = '\0';
        http_do_push(c, h->route == ROUTE_PUBLISH, k);
        if (!keep) {
            /* the answer is the last slot, or (answered at once) already queued */
            if (h->pend_tail)
                h->pend_tail->close_after = 1;
            else
                c->flags |= CONN_F_CLOSE_AFTER;
            h->stopped = 1;
            conn_read_pause(c, 1);
        }
        return;
    }
    case ROUTE_HEALTHZ:
    case ROUTE_READYZ: {
        int ok =
            h->route == ROUTE_HEALTHZ || (broker_ready(srv->broker) && srv->phase == SRV_RUNNING);
        struct msg *m = ok ? http_render(200, "application/json", "", "{\"ok\":true}", 11, !keep)
                           : http_render_error(srv, 503, "broker unavailable", NULL, !keep);
        http_answer_head(c, m, head, !keep);
        return;
    }
    case ROUTE_CLIENT_JS:
    case ROUTE_DEMO: {
        const struct web_asset *a = web_asset_get(h->route == ROUTE_DEMO ? "demo" : "client");
        struct msg *m = a == NULL ? NULL /* out of memory is not possible; keep NULL safe */
                                  : http_render(200, a->type,
                                                "Cache-Control: no-cache\r\n"
                                                "X-Content-Type-Options: nosniff\r\n",
                                                a->data, a->len, !keep);
        http_answer_head(c, m, head, !keep);
        return;
    }
    case ROUTE_METRICS: {
        struct msg *b = metrics_render(srv);
        struct msg *m =
            b ? http_render(200, "text/plain; version=0.0.4", "", b->data, b->len, !keep) : NULL;
        msg_unref(b);
        http_answer_head(c, m, head, !keep);
        return;
    }
    default:
        http_error(c, 404, "not found", !keep);
    }
}
