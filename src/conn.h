/* conn.h — one client connection: HTTP/1.1 (llhttp) until a valid upgrade, then
 * WebSocket (wslay). Owns the socket, the HTTP state, the wslay context, the session
 * and the output queue of refcounted messages. Does NOT route messages or know which
 * broker runs: it calls session_* and broker_* only. Loop thread only.
 * Private header of the core (src/): backends never see it. */
#ifndef WSGATE_CONN_H
#define WSGATE_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include <wslay/wslay.h>

#include "outq.h"
#include "server.h"

struct server;
struct msg;
struct session;
struct http_state;

enum conn_state { CONN_HTTP = 0, CONN_WS, CONN_WS_CLOSING, CONN_CLOSING };

enum conn_flag {
    CONN_F_FLUSH_PENDING = 1 << 0, /* on srv->flush_list */
    CONN_F_WRITING = 1 << 1,       /* a uv_write is in flight (c is on srv->writing) */
    CONN_F_CLOSE_AFTER = 1 << 2,   /* close the socket once the queue is written */
    CONN_F_CLOSE_SOON = 1 << 3,    /* close at the next flush pass (deferred close) */
    CONN_F_READ_PAUSED = 1 << 4,   /* reads stopped for backpressure */
    CONN_F_PINGED = 1 << 5,        /* a ping went out since the last activity */
    CONN_F_CLOSED_H = 1 << 6,      /* the uv handle is closed: free when refs reach 0 */
    CONN_F_ATTACHED = 1 << 7,      /* the broker holds c->sess (101 sent, detach not yet) */
    CONN_F_LINGER = 1 << 8,        /* at CLOSE_AFTER: shut the write side, drain input, close */
    CONN_F_LINGERING = 1 << 9,     /* write side shut: input is read and discarded */
    CONN_F_SETTLING = 1 << 10,     /* closing: waiting for broker_settle before the detach */
};

/* The protocol spoken over a connection's transport (HTTP until a valid upgrade, then
 * WebSocket): conn.c reads, writes and closes, and calls these; it never parses. */
struct conn_proto {
    const char *name;
    /* Bytes read from the socket (borrowed for the call). May close c. */
    void (*feed)(struct conn *c, const uint8_t *data, size_t len);
    /* Move on what waited for the output queue: queue answers that became ready (and
     * switch to WebSocket or SSE behind the last of them), feed bytes held back, resume
     * reading. Runs before each flush pass writes c, after each finished write and once
     * the queue ran empty, whether or not anything was written. May close c. */
    void (*advance)(struct conn *c);
    /* Sweep: deadlines of this protocol (request, keep-alive, ping, idle, close). */
    void (*timeout)(struct conn *c, uint64_t now);
    /* The gateway ends the session (shutdown 1001, slow 1008, broker 1011): close the
     * protocol's way (a close frame, or just the end of the stream). */
    void (*end)(struct conn *c, uint16_t code);
};
extern const struct conn_proto http_proto; /* http.c */
extern const struct conn_proto ws_proto;   /* ws.c */
extern const struct conn_proto sse_proto;  /* sse.c */

struct conn {
    uv_tcp_t tcp;                   /* embedded: c is freed only in conn_on_closed() */
    struct server *srv;             /* borrowed: srv owns c via its lists */
    const struct conn_proto *proto; /* borrowed: static table of the protocol spoken now */
    struct conn *prev;              /* list links (srv->http, srv->ws or srv->closing) */
    struct conn *next;
    struct conn *flush_next; /* link on srv->flush_list */
    struct conn *wprev;      /* links on srv->writing while CONN_F_WRITING */
    struct conn *wnext;
    uint8_t state;              /* enum conn_state */
    uint16_t flags;             /* enum conn_flag */
    uint16_t close_code;        /* WebSocket close code to send at the deferred close */
    uint32_t refs;              /* async ops holding c (push callbacks); free at 0 after close */
    uint32_t upstream_inflight; /* upstream publishes not yet called back (max_upstream_inflight) */
    uint64_t active_ms;         /* last activity (ws: any frame; http: deadline base) */
    uint64_t wr_ms;             /* last write progress of the in-flight write (write_timeout) */
    size_t wr_left;             /* libuv's write queue size when wr_ms was taken */
    struct http_state *http;    /* owned: NULL after the upgrade */
    wslay_event_context_ptr ws; /* owned: exists only while a client frame is half read or
                                 * a close is under way (idle sockets hold none: ~9 KiB) */
    struct session *sess;       /* owned: from the upgrade request until conn_on_closed */
    const uint8_t *rx;          /* borrowed: unread bytes of the current read (wslay pulls) */
    size_t rx_len;
    uint64_t rx_frame_left; /* payload bytes of the client frame being read */
    uint8_t rx_hdr[14];     /* partial client frame header */
    uint8_t rx_hdr_len;     /* bytes in rx_hdr */
    uint8_t rx_fragmented;  /* inside a fragmented client message */
    uint32_t rx_frags;      /* frames of the current fragmented message (max_fragments) */
    uint64_t rx_msg_len;    /* payload bytes of the current client message so far */
    uint8_t *pre;           /* owned: client bytes that came with the upgrade request,
                             * fed once everything queued before them is written */
    size_t pre_len;
    struct outq out;   /* owned: bytes to write, in order */
    struct outq early; /* owned: frames delivered before the 101 went out */
    char *ip;          /* owned: client IP counted by max_connections_per_ip, or NULL */
};

/* --- conn.c --- */
/* Accept the next connection from srv's listener; NULL on failure (nothing to undo). */
struct conn *conn_accept(struct server *srv);
/* A connection speaking HTTP with no socket (conn_accept adds it; tests drive the
 * protocol through c->proto and read c->out). NULL on allocation failure. */
struct conn *conn_new(struct server *srv);
/* Queue m (a ref is taken) with an ack id. 0, or UV_ENOMEM. */
int conn_queue(struct conn *c, struct msg *m, uint64_t msg_id);
/* Queue a copy of bytes as a raw (unframed) message. 0 or UV_ENOMEM. */
int conn_queue_bytes(struct conn *c, const void *data, size_t len);
/* Mark c for the next flush pass. */
void conn_flush_later(struct conn *c);
/* Write what is queued (called from the flush pass). */
void conn_flush(struct conn *c);
/* Close now (I/O callbacks only: detaches from the broker synchronously). Idempotent. */
void conn_close(struct conn *c);
/* Count a close the gateway decided for a reason (metrics). */
void conn_count_close(struct conn *c, enum conn_close_reason why);
/* Sweep: close c when its in-flight write made no progress for write_timeout. */
void conn_check_write(struct conn *c, uint64_t now);
/* Close at the next flush pass; safe inside broker callbacks. */
void conn_close_soon(struct conn *c);
/* Move c between server lists. */
void conn_list_remove(struct conn *c);
void conn_list_append(struct conn *c, int which);
enum { CONN_LIST_HTTP, CONN_LIST_WS, CONN_LIST_CLOSING };
/* c's session is attached and its answer (101, or the SSE head) queued: c now speaks
 * proto, on the list of streaming connections (pings, idle, write_timeout). */
void conn_upgraded(struct conn *c, const struct conn_proto *proto);
/* The broker forgets c->sess (unacked go back); no ack after this. Idempotent. */
void conn_detach(struct conn *c);
void conn_ref(struct conn *c);
void conn_unref(struct conn *c);
void conn_read_pause(struct conn *c, int pause);
/* The flush pass: flush every conn marked by conn_flush_later. */
void conn_flush_all(struct server *srv);

/* --- http.c --- */
int http_start(struct conn *c);
void http_free(struct http_state *h);
/* c closes while its upgrade is attaching or attached without a 101: undo the attach. */
void http_upgrade_abort(struct conn *c);
/* 1 while c has requests read but not answered (push callbacks pending). */
int http_busy(const struct conn *c);
/* Queue a JSON error answer. close=1 adds Connection: close and closes after. */
void http_error(struct conn *c, int status, const char *reason, int close);
/* Render a whole answer as a raw msg (refs 1); extra = header lines ending in CRLF. */
struct msg *http_render(int status, const char *ctype, const char *extra, const char *body,
                        size_t body_len, int close);
/* Shutdown: close c now if idle, else after its pending answers. */
void http_drain(struct conn *c);

/* The broker finished attaching c->sess (session_attached): answer the upgrade. */
void http_upgrade_attached(struct conn *c, int status);

/* --- session.c --- */
/* A session for c's upgrade: key (validated), topics from query (NULL: none). NULL with
 * *err UV_EINVAL (bad ?topics=) or UV_ENOMEM. Owned by c from then on (session_free). */
struct session *session_new(struct conn *c, const char *key, size_t key_len, const char *query,
                            int *err);
void session_free(struct session *s);
/* Parse ?topics=a,b of query into s->topics (one allocation). 0 or -1 (invalid, too many). */
int session_topics_parse(struct session *s, const char *query, uint32_t max_topics);

/* --- ws.c --- */
/* The 101 for c is queued: switch to WS. pre (moved, may be NULL): client bytes read after
 * the upgrade request; they are fed once what is queued before them is written. */
int ws_start(struct conn *c, uint8_t *pre, size_t pre_len);
/* Closing c has no write in flight: settle its acks with the broker, then detach. */
void ws_leave(struct conn *c);
/* --- sse.c --- */
/* The 200 text/event-stream head for c is queued: switch to Server-Sent Events. pre
 * (moved, may be NULL) is discarded. */
int sse_start(struct conn *c, uint8_t *pre, size_t pre_len);
/* session_deliver for an SSE connection: m re-encoded as one event. 0 or UV_ENOMEM. */
int sse_deliver(struct conn *c, uint64_t msg_id, struct msg *m);

/* Begin the closing handshake with code (1000-4999); the socket closes later. */
void ws_close(struct conn *c, uint16_t code);
void ws_free(struct conn *c);
/* Compute Sec-WebSocket-Accept for a client key (base64 of 24 chars + NUL into out[29]). */
void ws_accept_key(const char *client_key, size_t len, char out[29]);

#endif
