/* http.c — HTTP/1.1 on llhttp for one connection: parsing (strict: obs-fold, transfer
 * codings, duplicate upgrade headers), request and head deadlines, header capture for
 * access control, pipelining with answers in request order, and the parser's pause when
 * max_pipeline answers are pending or max_send_buffer bytes wait unread. What a request
 * does is in http_routes.c. Does NOT speak WebSocket frames or know which broker runs.
 * Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "config.h"
#include "conn.h"
#include "http.h"
#include "log.h"
#include "msg.h"
#include "route.h"
#include "server.h"
#include "session.h"

static const char *status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 202:
        return "Accepted";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 417:
        return "Expectation Failed";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
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
struct msg *http_render(int status, const char *ctype, const char *extra, const char *body,
                        size_t body_len, int close)
{
    char head[512];
    int n = snprintf(
        head, sizeof(head), "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
        status, status_text(status), ctype, body_len, extra, close ? "Connection: close\r\n" : "");
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
struct msg *http_render_error_more(struct server *srv, int status, const char *reason,
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

struct msg *http_render_error(struct server *srv, int status, const char *reason, const char *allow,
                              int close)
{
    return http_render_error_more(srv, status, reason, allow, NULL, close);
}

/* 204 No Content: no Content-Type, no Content-Length (RFC 9110 §8.6). */
struct msg *http_render_204(const char *extra, int close)
{
    char head[1200];
    int n = snprintf(head, sizeof(head), "HTTP/1.1 204 No Content\r\n%s%s\r\n", extra,
                     close ? "Connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head))
        return NULL;
    return msg_new_copy_raw(head, (size_t)n);
}

/* --- captured headers --- */

/* "Access-Control-Allow-Origin: <origin>" lines for a CORS-granted request, or "". */
const char *http_cors_lines(const char *origin, size_t len, char *buf, size_t cap)
{
    if (origin == NULL)
        return "";
    snprintf(buf, cap, "Access-Control-Allow-Origin: %.*s\r\nVary: Origin\r\n", (int)len, origin);
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

struct http_pending *http_slot_new(struct http_state *h)
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
void http_answer(struct conn *c, struct msg *m, int close)
{
    struct http_state *h = c->http;
    if (m == NULL) { /* out of memory while rendering: nothing sane to say */
        c->flags |= CONN_F_CLOSE_AFTER;
        conn_flush_later(c);
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
        conn_flush_later(c);
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
void http_answer_head(struct conn *c, struct msg *m, int head, int close)
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
static void http_advance(struct conn *c)
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
            if (upgrade == HTTP_UPGRADE_SSE)
                sse_start(c, pre, pre_len); /* pre moves */
            else
                ws_start(c, pre, pre_len);
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
    if (len == 0)
        return 0; /* an empty value: nothing to keep (and hbuf may still be NULL) */
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
#define HNAME(lit, id_)                                                                            \
    if (memcmp(h->hname, lit, sizeof(lit) - 1) == 0)                                               \
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
    /* (an empty value gives an empty span that may sit at the next line's start) */
    if (len > 0 && h->feed_start != NULL && http_value_folded(h, at))
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

static void http_end(struct conn *c, uint16_t code)
{
    (void)code;
    conn_close(c);
}

const struct conn_proto http_proto = {
    .name = "http",
    .feed = http_feed,
    .advance = http_advance,
    .timeout = http_check_timeout,
    .end = http_end,
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
    conn_flush_later(c);
}
