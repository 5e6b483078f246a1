/* http.h — what the HTTP side of a connection shares between its parser and
 * pipelining (http.c) and its route handlers (http_routes.c): the per-connection state,
 * answer slots in request order, rendering, captured headers. Private to the core.
 * Loop thread only. */
#ifndef WSGATE_HTTP_H
#define WSGATE_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <llhttp.h>

#include "route.h"

struct conn;
struct msg;
struct server;

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

/* What an answer slot switches the connection to once it is out (http_pending.upgrade). */
enum http_upgrade_kind { HTTP_UPGRADE_NONE = 0, HTTP_UPGRADE_WS, HTTP_UPGRADE_SSE };

/* One answer slot, in request order. Async answers (push) fill resp later. */
struct http_pending {
    struct http_pending *next; /* owned list link (h->pend_head) */
    struct conn *c;            /* borrowed: c is ref'd while a callback may arrive */
    struct msg *resp;          /* ref: the answer once ready, NULL while waiting */
    uint8_t close_after;       /* close the connection after this answer */
    uint8_t upgrade;           /* enum http_upgrade_kind: switch protocols after this answer */
    char *cors_origin;         /* owned: origin granted CORS on this answer, or NULL */
};

struct http_state {
    llhttp_t parser;         /* embedded; settings are srv-wide (static const) */
    struct conn *c;          /* borrowed: owner */
    uint8_t route;           /* enum route of the current request */
    struct route rt;         /* the current request's route (key, query point into url) */
    uint8_t hdr;             /* enum hdr_id of the header being read */
    uint8_t in_message;      /* between message_begin and message_complete */
    uint8_t upgrade_ws;      /* Upgrade: websocket seen */
    uint8_t ws_version_ok;   /* Sec-WebSocket-Version: 13 */
    uint8_t expect_continue; /* Expect: 100-continue */
    uint8_t expect_other;    /* some other Expect value (417) */
    uint8_t hname_len;       /* bytes in hname, 0xff = too long to matter */
    uint8_t hval_len;
    uint8_t ws_key_len;
    uint8_t upgrade;        /* enum upgrade_state */
    uint8_t stopped;        /* no more parsing on this connection */
    uint8_t blocked;        /* parser paused: too many answers pending or queued */
    uint8_t ws_keys;        /* Sec-WebSocket-Key headers seen (more than one: 400) */
    uint8_t te_other;       /* a Transfer-Encoding other than exactly "chunked" (501) */
    uint8_t obs_fold;       /* a header value continued on the next line (400) */
    uint8_t tail_lf;        /* the last feed ended in LF + blanks (obs-fold detection) */
    uint8_t cors;           /* the request's Origin is in cors_origins (/push, /publish) */
    uint8_t echo_bearer;    /* the 101 echoes "Sec-WebSocket-Protocol: bearer" */
    uint16_t err_status;    /* answer decided early (404/405/400...), 0 = none */
    const char *err_reason; /* static string */
    const char *err_allow;  /* Allow header for 405, static */
    uint64_t deadline;      /* ms: head/body must arrive by then (0 = none) */
    uint64_t req_deadline;  /* ms: the whole request must be read by then */
    const char *feed_start; /* borrowed: start of the bytes llhttp is parsing now */
    size_t head_bytes;      /* request line + headers so far */
    char *url;              /* owned: request target, NUL-terminated */
    size_t url_len, url_cap;
    char hname[24];                     /* lower-cased header name (only short ones matter) */
    char hval[64];                      /* value of Upgrade/Version/Expect/Transfer-Encoding */
    char ws_key[32];                    /* Sec-WebSocket-Key */
    struct http_hval hv[HDR_NCAPTURED]; /* Authorization, Origin, Sec-WebSocket-Protocol,
                                         * X-Forwarded-For of the current request */
    char *hbuf;                         /* owned: their bytes (bounded by max_header_size) */
    size_t hbuf_len, hbuf_cap;
    struct msg *body;               /* owned: the request body being received */
    struct http_pending *pend_head; /* owned: answers not yet queued, in order */
    struct http_pending *pend_tail;
    uint32_t npending;
    uint32_t nreq;            /* requests completed on this connection */
    struct http_pending *upg; /* borrowed: the 101 slot while upgrading */
    uint8_t *unread;          /* owned: bytes read but not parsed: after the upgrade
                               * request (moved to ws_start), or while blocked */
    size_t unread_len;
};

/* --- rendering (http.c) --- */
/* A JSON error answer {"error":reason} (refs 1, NULL on ENOMEM); Retry-After on 429/503,
 * Allow on 405 (allow), WWW-Authenticate on 401; more: extra header lines or NULL. */
struct msg *http_render_error_more(struct server *srv, int status, const char *reason,
                                   const char *allow, const char *more, int close);
struct msg *http_render_error(struct server *srv, int status, const char *reason, const char *allow,
                              int close);
/* 204 No Content with extra header lines (no body headers). */
struct msg *http_render_204(const char *extra, int close);
/* The value of captured header id (trimmed by the caller's checks), or (NULL, 0) when
 * it was not sent; an empty value is ("", 0) whatever came before it. An
 * Origin or Authorization sent twice reads as "" (present, and matching nothing): which
 * of two one would believe is exactly what an attacker would like to choose. */
static inline const char *http_hval(const struct http_state *h, int id, size_t *len)
{
    const struct http_hval *v = &h->hv[id - HDR_FIRST_CAPTURED];
    if (v->count > 1 && (id == HDR_ORIGIN || id == HDR_AUTHZ)) {
        *len = 0;
        return "";
    }
    if (v->count == 0) {
        *len = 0;
        return NULL;
    }
    *len = v->len;
    return v->len > 0 ? h->hbuf + v->off : ""; /* hbuf is NULL until a value had bytes */
}
/* "Access-Control-Allow-Origin: <origin>" lines into buf (origin NULL: ""). */
const char *http_cors_lines(const char *origin, size_t len, char *buf, size_t cap);

/* --- answers in request order (http.c) --- */
/* A slot for an answer that comes later (a push); NULL on ENOMEM. */
struct http_pending *http_slot_new(struct http_state *h);
/* Queue m (a ref is taken; NULL: out of memory, close) as the next answer. */
void http_answer(struct conn *c, struct msg *m, int close);
/* Answer m (its reference moves); for HEAD without the body. */
void http_answer_head(struct conn *c, struct msg *m, int head, int close);

/* --- routes (http_routes.c) --- */
/* The head is complete: decide early answers (404, 405, 401, 413, ...) before a body. */
void http_check_head(struct http_state *h);
/* The request is complete: run its route. */
void http_dispatch(struct conn *c);

#endif
