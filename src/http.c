/* http.c — HTTP/1.1 on llhttp: keep-alive, pipelining (answers in request order),
 * chunked bodies, Expect: 100-continue, header/body limits, deadlines, the routes of
 * DESIGN.md §2 and the WebSocket upgrade request (validated here, completed in ws.c).
 * Bodies are parsed straight into a struct msg, which goes to the broker as is.
 * Does NOT speak WebSocket frames or know which broker runs. Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <llhttp.h>
#include <openssl/evp.h>

#include "auth.h"
#include "broker.h"
#include "config.h"
#include "conn.h"
#include "iplimit.h"
#include "log.h"
#include "msg.h"
#include "route.h"
#include "server.h"
#include "session.h"
#include "util.h"

enum hdr_id {
    HDR_OTHER = 0,
    HDR_UPGRADE,
    HDR_WS_KEY,
    HDR_WS_VERSION,
    HDR_EXPECT,
    HDR_TE,
    /* captured whole into h->hbuf for access control (struct http_hval) */
    HDR_AUTHZ,
    HDR_ORIGIN,
    HDR_WS_PROTO,
    HDR_XFF,
};
#define HDR_FIRST_CAPTURED HDR_AUTHZ
#define HDR_NCAPTURED (HDR_XFF - HDR_AUTHZ + 1)

/* One captured header value of the current request: h->hbuf[off, off + len). */
struct http_hval {
    uint32_t off;
    uint32_t len;
    uint8_t count; /* headers of this name seen (XFF lines are joined with ", ") */
};

enum upgrade_state { UPG_NONE = 0, UPG_ATTACHING, UPG_ATTACHED, UPG_FAILED };

/* One answer slot, in request order. Async answers (push) fill resp later. */
struct http_pending {
    struct http_pending *next; /* owned list link (h->pend_head) */
    struct conn *c;            /* borrowed: c is ref'd while a callback may arrive */
    struct msg *resp;          /* ref: the answer once ready, NULL while waiting */
    uint8_t close_after;       /* close the connection after this answer */
    uint8_t upgrade;           /* this is the 101: switch to WebSocket after it */
    char *cors_origin;         /* owned: origin granted CORS on this answer, or NULL */
};

struct http_state {
    llhttp_t parser;            /* embedded; settings are srv-wide (static const) */
    struct conn *c;             /* borrowed: owner */
    uint8_t route;              /* enum route of the current request */
    uint8_t hdr;                /* enum hdr_id of the header being read */
    uint8_t in_message;         /* between message_begin and message_complete */
    uint8_t upgrade_ws;         /* Upgrade: websocket seen */
    uint8_t ws_version_ok;      /* Sec-WebSocket-Version: 13 */
    uint8_t expect_continue;    /* Expect: 100-continue */
    uint8_t expect_other;       /* some other Expect value (417) */
    uint8_t hname_len;          /* bytes in hname, 0xff = too long to matter */
    uint8_t hval_len;
    uint8_t ws_key_len;
    uint8_t upgrade;            /* enum upgrade_state */
    uint8_t stopped;            /* no more parsing on this connection */
    uint8_t blocked;            /* parser paused: too many answers pending or queued */
    uint8_t ws_keys;            /* Sec-WebSocket-Key headers seen (more than one: 400) */
    uint8_t te_other;           /* a Transfer-Encoding other than exactly "chunked" (501) */
    uint8_t obs_fold;           /* a header value continued on the next line (400) */
    uint8_t tail_lf;            /* the last feed ended in LF + blanks (obs-fold detection) */
    uint8_t cors;               /* the request's Origin is in cors_origins (/push, /publish) */
    uint8_t echo_bearer;        /* the 101 echoes "Sec-WebSocket-Protocol: bearer" */
    uint16_t err_status;        /* answer decided early (404/405/400...), 0 = none */
    const char *err_reason;     /* static string */
    const char *err_allow;      /* Allow header for 405, static */
    uint64_t deadline;          /* ms: head/body must arrive by then (0 = none) */
    uint64_t req_deadline;      /* ms: the whole request must be read by then */
    const char *feed_start;     /* borrowed: start of the bytes llhttp is parsing now */
    size_t head_bytes;          /* request line + headers so far */
    char *url;                  /* owned: request target, NUL-terminated */
    size_t url_len, url_cap;
    char hname[24];             /* lower-cased header name (only short ones matter) */
    char hval[64];              /* value of Upgrade/Version/Expect/Transfer-Encoding */
    char ws_key[32];            /* Sec-WebSocket-Key */
    struct http_hval hv[HDR_NCAPTURED]; /* Authorization, Origin, Sec-WebSocket-Protocol,
                                         * X-Forwarded-For of the current request */
    char *hbuf;                 /* owned: their bytes (bounded by max_header_size) */
    size_t hbuf_len, hbuf_cap;
    struct msg *body;           /* owned: the request body being received */
    struct http_pending *pend_head; /* owned: answers not yet queued, in order */
    struct http_pending *pend_tail;
    uint32_t npending;
    uint32_t nreq;              /* requests completed on this connection */
    struct http_pending *upg;   /* borrowed: the 101 slot while upgrading */
    uint8_t *unread;            /* owned: bytes read but not parsed: after the upgrade
                                 * request (moved to ws_start), or while blocked */
    size_t unread_len;
};

static const char *status_text(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 204: return "No Content";
    case 202: return "Accepted";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

/* A raw (unframed) msg holding a copy of data, refs 1; NULL on allocation failure. */
static struct msg *msg_new_copy_raw(const char *data, size_t len)
{
    struct msg *m = msg_new(len);
    if (m == NULL)
        return NULL;
    memcpy(m->data, data, len);
    m->len = (uint32_t)len;
    return m;
}

/* Render a full answer into a new raw msg (refs 1). extra: more header lines, each
 * ending in \r\n, or "". */
struct msg *http_render(int status, const char *ctype, const char *extra,
                               const char *body, size_t body_len, int close)
{
    char head[512];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                     status, status_text(status), ctype, body_len, extra,
                     close ? "Connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head))
        return NULL;
    struct msg *m = msg_new((size_t)n + body_len);
    if (m == NULL)
        return NULL;
    memcpy(m->data, head, (size_t)n);
    if (body_len > 0)
        memcpy(m->data + n, body, body_len);
    m->len = (uint32_t)((size_t)n + body_len);
    return m;
}

/* A JSON error answer. more: extra header lines (CORS), or NULL. */
static struct msg *http_render_error_more(struct server *srv, int status, const char *reason,
                                          const char *allow, const char *more, int close)
{
    char body[160], extra[768] = "";
    int bl = snprintf(body, sizeof(body), "{\"error\":\"%s\"}", reason);
    int n = 0;
    if (status == 503 || status == 429)
        n = snprintf(extra, sizeof(extra), "Retry-After: %llu\r\n",
                     (unsigned long long)srv->cfg->retry_after_s);
    else if (status == 405 && allow != NULL)
        n = snprintf(extra, sizeof(extra), "Allow: %s\r\n", allow);
    else if (status == 401)
        n = snprintf(extra, sizeof(extra), "WWW-Authenticate: Bearer\r\n");
    if (more != NULL && n >= 0 && (size_t)n < sizeof(extra))
        snprintf(extra + n, sizeof(extra) - (size_t)n, "%s", more);
    return http_render(status, "application/json", extra, body, (size_t)bl, close);
}

static struct msg *http_render_error(struct server *srv, int status, const char *reason,
                                     const char *allow, int close)
{
    return http_render_error_more(srv, status, reason, allow, NULL, close);
}

/* 204 No Content: no Content-Type, no Content-Length (RFC 9110 §8.6). */
static struct msg *http_render_204(const char *extra, int close)
{
    char head[1200];
    int n = snprintf(head, sizeof(head), "HTTP/1.1 204 No Content\r\n%s%s\r\n", extra,
                     close ? "Connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head))
        return NULL;
    return msg_new_copy_raw(head, (size_t)n);
}

/* --- captured headers --- */

/* The value of captured header id (trimmed by the caller's checks), or (NULL, 0). An
 * Origin or Authorization sent twice reads as "" (present, and matching nothing): which
 * of two one would believe is exactly what an attacker would like to choose. */
static const char *http_hval(const struct http_state *h, int id, size_t *len)
{
    const struct http_hval *v = &h->hv[id - HDR_FIRST_CAPTURED];
    if (v->count > 1 && (id == HDR_ORIGIN || id == HDR_AUTHZ)) {
        *len = 0;
        return "";
    }
    *len = v->count ? v->len : 0;
    return v->count ? h->hbuf + v->off : NULL;
}

/* "Access-Control-Allow-Origin: <origin>" lines for a CORS-granted request, or "". */
static const char *http_cors_lines(const char *origin, size_t len, char *buf, size_t cap)
{
    if (origin == NULL)
        return "";
    snprintf(buf, cap, "Access-Control-Allow-Origin: %.*s\r\nVary: Origin\r\n", (int)len,
             origin);
    return buf;
}

static void http_feed(struct conn *c, const uint8_t *bytes, size_t len);
static void http_check_timeout(struct conn *c, uint64_t now);

/* --- answers in order --- */

/* Parsing must stop before the next request: as many answers pending as max_pipeline,
 * or max_send_buffer bytes queued the client has not read. The parser itself pauses
 * (not only the socket) so one read buffer of pipelined requests cannot queue more. */
static int http_must_wait(const struct conn *c)
{
    return c->http->npending >= c->srv->cfg->max_pipeline ||
           c->out.bytes >= c->srv->cfg->max_send_buffer;
}

static struct http_pending *http_slot_new(struct http_state *h)
{
    struct http_pending *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->c = h->c;
    if (h->pend_tail)
        h->pend_tail->next = p;
    else
        h->pend_head = p;
    h->pend_tail = p;
    h->npending++;
    if (h->npending >= h->c->srv->cfg->max_pipeline)
        conn_read_pause(h->c, 1);
    return p;
}

/* Queue m (a ref is taken) as the next answer; in order behind pending ones. */
static void http_answer(struct conn *c, struct msg *m, int close)
{
    struct http_state *h = c->http;
    if (m == NULL) { /* out of memory while rendering: nothing sane to say */
        c->flags |= CONN_F_CLOSE_AFTER;
        conn_dirty(c);
        return;
    }
    if (h->pend_head == NULL) {
        conn_queue(c, m, 0);
        if (close) {
            c->flags |= CONN_F_CLOSE_AFTER;
            h->stopped = 1;
            conn_read_pause(c, 1);
        }
        return;
    }
    struct http_pending *p = http_slot_new(h);
    if (p == NULL) {
        c->flags |= CONN_F_CLOSE_AFTER;
        conn_dirty(c);
        return;
    }
    p->resp = msg_ref(m);
    p->close_after = (uint8_t)close;
    if (close) {
        h->stopped = 1;
        conn_read_pause(c, 1);
    }
}

/* Answer m (consumed: its reference moves to the answer); for HEAD, without the body but
 * with the Content-Length a GET would get. */
static void http_answer_head(struct conn *c, struct msg *m, int head, int close)
{
    if (m != NULL && head) {
        char *end = memmem(m->data, m->len, "\r\n\r\n", 4);
        if (end != NULL)
            m->len = (uint32_t)(end + 4 - m->data);
    }
    http_answer(c, m, close);
    msg_unref(m);
}

void http_error(struct conn *c, int status, const char *reason, int close)
{
    struct msg *m = http_render_error(c->srv, status, reason, NULL, close);
    http_answer(c, m, close);
    msg_unref(m);
}

/* Emit ready answers from the head of the pending list (flush pass / write done). */
static void http_drained(struct conn *c)
{
    struct http_state *h = c->http;
    if (h == NULL)
        return;
    while (h->pend_head != NULL && h->pend_head->resp != NULL) {
        struct http_pending *p = h->pend_head;
        h->pend_head = p->next;
        if (h->pend_head == NULL)
            h->pend_tail = NULL;
        h->npending--;
        conn_queue(c, p->resp, 0);
        msg_unref(p->resp);
        int close = p->close_after, upgrade = p->upgrade;
        free(p->cors_origin);
        free(p);
        if (upgrade) {
            /* everything before the upgrade is answered: this connection is a WebSocket */
            h->upg = NULL;
            uint8_t *pre = h->unread;
            size_t pre_len = h->unread_len;
            h->unread = NULL;
            c->http = NULL;
            http_free(h);
            ws_start(c, pre, pre_len); /* pre moves */
            return;
        }
        if (close) {
            c->flags |= CONN_F_CLOSE_AFTER;
            h->stopped = 1;
            conn_read_pause(c, 1);
            return;
        }
    }
    if (h->blocked && !h->stopped && !http_must_wait(c)) {
        /* room again: parse what was read while blocked, then read more */
        uint8_t *rest = h->unread;
        size_t len = h->unread_len;
        h->unread = NULL;
        h->unread_len = 0;
        h->blocked = 0;
        llhttp_resume(&h->parser);
        if (rest != NULL)
            http_feed(c, rest, len);
        free(rest);
        if (c->state != CONN_HTTP || c->http != h)
            return;
    }
    if (!h->stopped && !h->blocked && h->npending < c->srv->cfg->max_pipeline &&
        h->upgrade == UPG_NONE)
        conn_read_pause(c, 0);
    if (h->npending == 0 && !h->in_message && h->deadline == 0 && c->out.count == 0)
        h->deadline = c->srv->now_ms + c->srv->cfg->keepalive_timeout_ms;
}

int http_busy(const struct conn *c)
{
    return c->http != NULL && c->http->npending > 0;
}

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
    conn_dirty(c); /* the flush pass emits it in order */
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
        p->resp = rc == UV_ENOBUFS   ? http_render_error(srv, 429, "session queue full", NULL, 0)
                  : rc == UV_ENOSPC ? http_render_error(srv, 503, "memory broker full", NULL, 0)
                                    : http_render_error(srv, 503, "broker unavailable", NULL, 0);
        if (p->resp == NULL) {
            p->resp = msg_ref(srv->resp_202);
            p->close_after = 1;
        }
        conn_dirty(c);
        return;
    }
    if (publish)
        srv->m.published++;
    else
        srv->m.pushed++;
    conn_ref(c);
}

/* --- upgrade --- */


/* Access control of an upgrade, before any broker work (DESIGN.md §8.1): Origin, the
 * client's JWT (sub = key, topics within its claim), then the per-IP handshake rate and
 * connection cap. 0 when allowed (c->ip then holds the counted address, if any), or -1
 * after queueing the refusal. */
static int http_upgrade_allowed(struct conn *c, const char *key, size_t key_len,
                                const char *query)
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
            struct msg *m =
                http_render(429, "application/json", extra, body, sizeof(body) - 1, 1);
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
            srv->m.refused_auth[r == AUTH_FORBIDDEN ? AUTH_REFUSED_FORBIDDEN
                                                    : AUTH_REFUSED_TOKEN]++;
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
        http_error(c, 503, rc == UV_EBUSY ? "too many connections from this address"
                                          : "out of memory", 1);
        return -1;
    }
    return 0;
}

static void http_upgrade(struct conn *c, const char *key, size_t key_len, const char *query)
{
    struct http_state *h = c->http;
    struct server *srv = c->srv;
    if (!key_valid(key, key_len)) {
        http_error(c, 400, "invalid session key", 1);
        return;
    }
    if (!h->upgrade_ws || !h->parser.upgrade) {
        http_error(c, 400, "websocket upgrade required", 1);
        return;
    }
    if (h->parser.http_major != 1 || h->parser.http_minor < 1) {
        http_error(c, 400, "websocket upgrade requires HTTP/1.1", 1);
        return;
    }
    if (!h->ws_version_ok) {
        struct msg *m = http_render(400, "application/json", "Sec-WebSocket-Version: 13\r\n",
                                    "{\"error\":\"unsupported websocket version\"}", 41, 1);
        http_answer(c, m, 1);
        msg_unref(m);
        return;
    }
    uint8_t raw[20];
    if (h->ws_keys != 1 || h->ws_key_len != 24 || EVP_DecodeBlock(raw, (const unsigned char *)h->ws_key, 24) != 18 ||
        h->ws_key[22] != '=' || h->ws_key[23] != '=') {
        http_error(c, 400, "invalid Sec-WebSocket-Key", 1);
        return;
    }
    if (http_upgrade_allowed(c, key, key_len, query) < 0)
        return;
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
    p->upgrade = 1;
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
        conn_dirty(c);
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
        char accept[29], head[200];
        ws_accept_key(h->ws_key, 24, accept);
        int n = snprintf(head, sizeof(head),
                         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
                         accept, h->echo_bearer ? "Sec-WebSocket-Protocol: bearer\r\n" : "");
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
    conn_dirty(c);
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
static void http_check_head(struct http_state *h)
{
    struct route r;
    int method = h->parser.method;
    http_route(h, &r);
    h->route = (uint8_t)r.id;
    switch (r.id) {
    case ROUTE_WS:
        if (method != HTTP_GET)
            h->err_status = 405;
        break;
    case ROUTE_PUSH:
    case ROUTE_PUBLISH: {
        const struct auth *a = h->c->srv->auth;
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

static void http_dispatch(struct conn *c)
{
    struct http_state *h = c->http;
    struct server *srv = c->srv;
    int keep = llhttp_should_keep_alive(&h->parser);
    struct route r;
    http_route(h, &r);
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
        snprintf(extra, sizeof(extra),
                 "Allow: POST, OPTIONS\r\n%s%s", cors ? cors : "",
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
    case ROUTE_WS: {
        char k[KEY_MAX_LEN + 1];
        if (key_len > KEY_MAX_LEN) {
            http_error(c, 400, "invalid session key", 1);
            return;
        }
        memcpy(k, key, key_len);
        k[key_len] = '\0';
        http_upgrade(c, k, key_len, query);
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
        int ok = h->route == ROUTE_HEALTHZ || (broker_ready(srv->broker) && srv->phase == SRV_RUNNING);
        struct msg *m = ok ? http_render(200, "application/json", "", "{\"ok\":true}", 11, !keep)
                           : http_render_error(srv, 503, "broker unavailable", NULL, !keep);
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

/* --- llhttp callbacks --- */

static int head_grow(struct http_state *h, size_t len)
{
    h->head_bytes += len;
    if (h->head_bytes > h->c->srv->cfg->max_header_size) {
        h->err_status = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    struct http_state *h = p->data;
    struct conn *c = h->c;
    h->in_message = 1;
    h->route = ROUTE_NONE;
    h->hdr = HDR_OTHER;
    h->upgrade_ws = h->ws_version_ok = 0;
    h->expect_continue = h->expect_other = 0;
    h->hname_len = h->hval_len = h->ws_key_len = 0;
    h->ws_keys = h->te_other = h->obs_fold = 0;
    memset(h->hv, 0, sizeof(h->hv));
    h->hbuf_len = 0;
    h->err_status = 0;
    h->err_reason = NULL;
    h->err_allow = NULL;
    h->head_bytes = 0;
    h->url_len = 0;
    if (h->url)
        h->url[0] = '\0';
    /* one absolute deadline for the head and one for the whole request, taken at its
     * first byte and never pushed back by later bytes (a trickle cannot hold the slot) */
    h->req_deadline = c->srv->now_ms + c->srv->cfg->request_timeout_ms;
    h->deadline = c->srv->now_ms + c->srv->cfg->handshake_timeout_ms;
    if (h->deadline > h->req_deadline)
        h->deadline = h->req_deadline;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    struct http_state *h = p->data;
    if (head_grow(h, len) < 0)
        return -1;
    if (h->url_len + len + 1 > h->url_cap) {
        size_t cap = h->url_cap ? h->url_cap : 128;
        while (cap < h->url_len + len + 1)
            cap *= 2;
        char *n = realloc(h->url, cap);
        if (n == NULL)
            return -1;
        h->url = n;
        h->url_cap = cap;
    }
    memcpy(h->url + h->url_len, at, len);
    h->url_len += len;
    h->url[h->url_len] = '\0';
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    struct http_state *h = p->data;
    if (head_grow(h, len + 4) < 0) /* + ": " and CRLF */
        return -1;
    if (h->hname_len == 0xff)
        return 0; /* too long to be a name that matters */
    if (h->hname_len + len >= sizeof(h->hname)) {
        h->hname_len = 0xff;
        return 0;
    }
    char *dst = h->hname + h->hname_len;
    for (size_t i = 0; i < len; i++) { /* lower-case (names are tokens: ASCII) */
        unsigned char ch = (unsigned char)at[i];
        dst[i] = (char)(ch | (((unsigned)ch - (unsigned)'A' < 26u) << 5));
    }
    h->hname_len = (uint8_t)(h->hname_len + len);
    return 0;
}

/* Append to hbuf (the head limit bounds it). 0 or -1. */
static int http_hbuf_add(struct http_state *h, const char *at, size_t len)
{
    if (h->hbuf_len + len > h->hbuf_cap) {
        size_t cap = h->hbuf_cap ? h->hbuf_cap : 256;
        while (cap < h->hbuf_len + len)
            cap *= 2;
        char *n = realloc(h->hbuf, cap);
        if (n == NULL)
            return -1;
        h->hbuf = n;
        h->hbuf_cap = cap;
    }
    memcpy(h->hbuf + h->hbuf_len, at, len);
    h->hbuf_len += len;
    return 0;
}

/* A captured header starts: its value goes to the end of hbuf. A repeated
 * X-Forwarded-For or Sec-WebSocket-Protocol continues the list; a repeated Origin or
 * Authorization starts over, and its count makes the checks refuse it (http_hval). */
static int http_hval_begin(struct http_state *h)
{
    struct http_hval *v = &h->hv[h->hdr - HDR_FIRST_CAPTURED];
    if (v->count < 0xff)
        v->count++;
    if (v->count > 1 && (h->hdr == HDR_XFF || h->hdr == HDR_WS_PROTO))
        return v->len > 0 ? http_hbuf_add(h, ", ", 2) : 0; /* lists: one value */
    v->off = (uint32_t)h->hbuf_len;
    v->len = 0;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    struct http_state *h = p->data;
    h->hdr = HDR_OTHER;
    if (h->hname_len != 0xff) {
        /* the names that matter, told apart by length first: one memcmp per header */
#define HNAME(lit, id_)                                                                        \
    if (memcmp(h->hname, lit, sizeof(lit) - 1) == 0)                                           \
        h->hdr = id_;
        switch (h->hname_len) {
        case 6:
            HNAME("origin", HDR_ORIGIN) else HNAME("expect", HDR_EXPECT) break;
        case 7:
            HNAME("upgrade", HDR_UPGRADE) break;
        case 13:
            HNAME("authorization", HDR_AUTHZ) break;
        case 15:
            HNAME("x-forwarded-for", HDR_XFF) break;
        case 17:
            HNAME("sec-websocket-key", HDR_WS_KEY) else HNAME("transfer-encoding", HDR_TE) break;
        case 21:
            HNAME("sec-websocket-version", HDR_WS_VERSION) break;
        case 22:
            HNAME("sec-websocket-protocol", HDR_WS_PROTO) break;
        default:
            break;
        }
#undef HNAME
        if (h->hdr >= HDR_FIRST_CAPTURED && http_hval_begin(h) < 0)
            return -1;
        if (h->hdr == HDR_WS_KEY && h->ws_keys < 0xff)
            h->ws_keys++;
    }
    h->hname_len = 0;
    h->hval_len = 0;
    return 0;
}

/* 1 when the value span at `at` follows a line break (obs-fold: "Name:\r\n value" or a
 * value continued on a line starting with a blank). llhttp (8.x) accepts that and then
 * misreads Content-Length / Transfer-Encoding: a request smuggled past a proxy that reads
 * it the other way. A value span otherwise follows ':' and blanks; a span can also start
 * a feed because the previous feed ended inside the value: then tail_lf tells. */
static inline int http_value_folded(const struct http_state *h, const char *at)
{
    const char *q = at;
    while (q > h->feed_start && (q[-1] == ' ' || q[-1] == '\t'))
        q--;
    if (q > h->feed_start)
        return q[-1] == '\n';
    return h->tail_lf;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    struct http_state *h = p->data;
    if (head_grow(h, len) < 0)
        return -1;
    if (h->feed_start != NULL && http_value_folded(h, at))
        h->obs_fold = 1;
    if (h->hdr == HDR_WS_KEY) {
        for (size_t i = 0; i < len; i++)
            if (h->ws_key_len < sizeof(h->ws_key) - 1)
                h->ws_key[h->ws_key_len++] = at[i];
            else
                h->ws_key_len = sizeof(h->ws_key); /* too long: invalid */
    } else if (h->hdr >= HDR_FIRST_CAPTURED) {
        struct http_hval *v = &h->hv[h->hdr - HDR_FIRST_CAPTURED];
        if (http_hbuf_add(h, at, len) < 0)
            return -1;
        v->len = (uint32_t)(h->hbuf_len - v->off);
    } else if (h->hdr != HDR_OTHER) {
        for (size_t i = 0; i < len; i++)
            if (h->hval_len < sizeof(h->hval) - 1)
                h->hval[h->hval_len++] = at[i];
    }
    return 0;
}

/* s without leading and trailing blanks (s is modified). */
static char *http_trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/* 1 when the comma-separated list holds token (case-insensitive, blanks around). */
static int http_token_listed(const char *list, const char *token)
{
    size_t tl = strlen(token);
    while (*list) {
        while (*list == ' ' || *list == '\t' || *list == ',')
            list++;
        const char *end = list;
        while (*end && *end != ',')
            end++;
        const char *e = end;
        while (e > list && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - list) == tl && strncasecmp(list, token, tl) == 0)
            return 1;
        list = end;
    }
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    struct http_state *h = p->data;
    h->hval[h->hval_len] = '\0';
    switch (h->hdr) {
    case HDR_UPGRADE:
        h->upgrade_ws = http_token_listed(h->hval, "websocket");
        break;
    case HDR_TE:
        /* only "chunked" is implemented: anything else (gzip, chunked) is 501 rather
         * than a body stored still encoded; a truncated value is not "chunked" either */
        if (h->hval_len >= sizeof(h->hval) - 1 || strcasecmp(http_trim(h->hval), "chunked") != 0)
            h->te_other = 1;
        break;
    case HDR_WS_VERSION:
        h->ws_version_ok = strcmp(h->hval, "13") == 0;
        break;
    case HDR_EXPECT:
        if (strcasecmp(h->hval, "100-continue") == 0)
            h->expect_continue = 1;
        else
            h->expect_other = 1;
        break;
    default:
        break;
    }
    h->hdr = HDR_OTHER;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    struct http_state *h = p->data;
    struct conn *c = h->c;
    h->deadline = h->req_deadline; /* the body: the rest of the request's own deadline */
    if (h->obs_fold) {
        h->err_status = 400;
        h->err_reason = "obsolete header line folding";
        return -1;
    }
    if (h->te_other) {
        h->err_status = 501;
        h->err_reason = "unsupported transfer encoding";
        return -1;
    }
    http_check_head(h);
    if (h->route == ROUTE_PUSH || h->route == ROUTE_PUBLISH) {
        if (h->err_status != 0 && (h->expect_continue || h->err_status == 413)) {
            /* a final answer instead of 100 Continue; the body will not be read */
            return -1;
        }
        if (h->err_status == 0) {
            size_t cap = (h->parser.flags & F_CHUNKED) ? 1024 : (size_t)h->parser.content_length;
            h->body = msg_new(cap);
            if (h->body == NULL)
                return -1;
            if (h->expect_continue) {
                static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                struct msg *m = msg_new(sizeof(cont) - 1);
                if (m == NULL)
                    return -1;
                memcpy(m->data, cont, sizeof(cont) - 1);
                m->len = sizeof(cont) - 1;
                http_answer(c, m, 0);
                msg_unref(m);
            }
        }
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    struct http_state *h = p->data;
    struct conn *c = h->c;
    if (h->body == NULL || h->err_status != 0)
        return 0; /* discarded (error answer decided at head time) */
    int rc = msg_append(&h->body, at, len, c->srv->cfg->max_message_size);
    if (rc < 0) {
        h->err_status = rc == UV_E2BIG ? 413 : 500;
        return -1;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct http_state *h = p->data;
    struct conn *c = h->c;
    h->in_message = 0;
    h->deadline = 0;
    h->nreq++;
    c->srv->m.http_requests++;
    http_dispatch(c);
    msg_unref(h->body);
    h->body = NULL;
    if (h->stopped || c->state != CONN_HTTP)
        return HPE_PAUSED;
    if (http_must_wait(c)) {
        h->blocked = 1;
        conn_read_pause(c, 1);
        return HPE_PAUSED;
    }
    return 0;
}

static const llhttp_settings_t *http_settings(void)
{
    static llhttp_settings_t s; /* written once, identical every time: effectively const */
    static int init;
    if (!init) {
        llhttp_settings_init(&s);
        s.on_message_begin = on_message_begin;
        s.on_url = on_url;
        s.on_header_field = on_header_field;
        s.on_header_field_complete = on_header_field_complete;
        s.on_header_value = on_header_value;
        s.on_header_value_complete = on_header_value_complete;
        s.on_headers_complete = on_headers_complete;
        s.on_body = on_body;
        s.on_message_complete = on_message_complete;
        init = 1;
    }
    return &s;
}

const struct conn_proto http_proto = {
    .name = "http",
    .feed = http_feed,
    .drained = http_drained,
    .timeout = http_check_timeout,
};

int http_start(struct conn *c)
{
    struct http_state *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return UV_ENOMEM;
    llhttp_init(&h->parser, HTTP_REQUEST, http_settings());
    h->parser.data = h;
    h->c = c;
    h->deadline = uv_now(c->srv->loop) + c->srv->cfg->handshake_timeout_ms;
    c->http = h;
    c->proto = &http_proto;
    return 0;
}

/* Keep data[0..len) for later (upgrade or blocked): 0, or UV_ENOMEM. */
static int http_keep_unread(struct http_state *h, const char *data, size_t len)
{
    if (len == 0)
        return 0;
    uint8_t *n = realloc(h->unread, h->unread_len + len);
    if (n == NULL)
        return UV_ENOMEM;
    memcpy(n + h->unread_len, data, len);
    h->unread = n;
    h->unread_len += len;
    return 0;
}

/* Did the feed end in a line feed and blanks (the next one may start a folded value)? */
static void http_note_tail(struct http_state *h, const char *data, size_t len)
{
    const char *q = data + len;
    while (q > data && (q[-1] == ' ' || q[-1] == '\t'))
        q--;
    if (q > data)
        h->tail_lf = q[-1] == '\n';
}

static void http_feed(struct conn *c, const uint8_t *bytes, size_t len)
{
    const char *data = (const char *)bytes;
    struct http_state *h = c->http;
    if (h->stopped)
        return;
    if (h->blocked || h->upgrade == UPG_ATTACHING) {
        /* parsing is paused; a read that raced the pause is kept, not parsed
         * (at most one read buffer: reads stop with the pause) */
        if (http_keep_unread(h, data, len) < 0)
            conn_close(c);
        return;
    }
    h->feed_start = data;
    llhttp_errno_t err = llhttp_execute(&h->parser, data, len);
    if (c->state != CONN_HTTP || c->http != h)
        return;
    h->feed_start = NULL;
    if (err == HPE_OK) {
        http_note_tail(h, data, len);
        return;
    }
    if (err == HPE_PAUSED_UPGRADE || err == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&h->parser);
        size_t used = pos ? (size_t)(pos - data) : len;
        http_note_tail(h, data, used);
        if (h->upgrade == UPG_ATTACHING || h->blocked) {
            /* bytes after the upgrade request (frames, kept for ws), or after the
             * request that filled the pipeline / the send buffer (parsed on resume) */
            if (http_keep_unread(h, data + used, len - used) < 0)
                conn_close(c);
            return;
        }
        if (h->stopped)
            return; /* closing after an answer: the rest is ignored */
        /* a paused non-WebSocket upgrade (Upgrade header on another route): ignore it */
        if (err == HPE_PAUSED_UPGRADE)
            llhttp_resume_after_upgrade(&h->parser);
        else
            llhttp_resume(&h->parser);
        if (used < len)
            http_feed(c, bytes + used, len - used);
        return;
    }
    /* a parse error or a limit: answer once and close, lingering so the client can read
     * the answer although it is still sending (no reset before the answer) */
    int status = h->err_status ? h->err_status : 400;
    const char *reason = status == 431   ? "request header too large"
                         : status == 413 ? "message too large"
                         : h->err_reason ? h->err_reason
                                         : llhttp_errno_name(err);
    if (status == 400 && h->err_reason == NULL)
        reason = "malformed request";
    if (h->err_status == 405) {
        struct msg *m = http_render_error(c->srv, 405, reason, h->err_allow, 1);
        http_answer(c, m, 1);
        msg_unref(m);
    } else {
        http_error(c, status, reason, 1);
    }
    h->stopped = 1;
    c->flags |= CONN_F_LINGER;
}

static void http_check_timeout(struct conn *c, uint64_t now)
{
    struct http_state *h = c->http;
    if (c->flags & CONN_F_LINGERING) {
        if (now - c->active_ms >= c->srv->cfg->linger_timeout_ms)
            conn_close(c);
        return;
    }
    if (h == NULL || h->deadline == 0 || now < h->deadline || h->stopped)
        return;
    if (h->in_message) {
        /* a head (or body) trickling in: the slowloris case */
        c->srv->m.handshake_timeouts++;
        conn_count_close(c, CONN_CLOSE_REQUEST_TIMEOUT);
        http_error(c, 408, "request timeout", 1);
        c->flags |= CONN_F_LINGER;
        return;
    }
    /* idle: a keep-alive connection after its keepalive_timeout, or one that never sent a
     * byte within handshake_timeout. Closed without an answer nobody asked for. */
    if (h->npending == 0 && c->out.count == 0)
        conn_close(c);
}

void http_free(struct http_state *h)
{
    if (h == NULL)
        return;
    /* no broker callback is outstanding here: c (and so h) is freed only when the
     * last one has run, and an upgrade happens only once every earlier answer is out */
    struct http_pending *p = h->pend_head;
    while (p != NULL) {
        struct http_pending *n = p->next;
        msg_unref(p->resp);
        free(p->cors_origin);
        free(p);
        p = n;
    }
    msg_unref(h->body);
    free(h->url);
    free(h->hbuf);
    free(h->unread);
    free(h);
}

void http_drain(struct conn *c)
{
    struct http_state *h = c->http;
    if (h == NULL || (!h->in_message && h->npending == 0 && c->out.count == 0)) {
        conn_close(c);
        return;
    }
    h->stopped = 1;
    conn_read_pause(c, 1);
    c->flags |= CONN_F_CLOSE_AFTER;
    conn_dirty(c);
}
