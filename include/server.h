/* server.h — the gateway's per-loop context: listener, connection lists, timers,
 * metrics, the broker handle, and the shared read buffer. Everything mutable lives
 * here (no globals). Does NOT parse HTTP or WebSocket (conn/http/ws do). Loop thread. */
#ifndef WSGATE_SERVER_H
#define WSGATE_SERVER_H

#include <stdint.h>
#include <uv.h>

#include "iplimit.h"

struct config;
struct broker;
struct conn;
struct msg;

/* Why the gateway closed a connection, for /metrics (wsgate_connections_closed_total{reason}). */
enum conn_close_reason {
    CONN_CLOSE_SLOW = 0,         /* output over max_send_buffer */
    CONN_CLOSE_WRITE_TIMEOUT,    /* no write progress for write_timeout */
    CONN_CLOSE_REQUEST_TIMEOUT,  /* head or whole request too slow (408) */
    CONN_CLOSE_FRAGMENTS,        /* more than max_fragments frames in one message (1009) */
    CONN_CLOSE_TOO_BIG,          /* message or frame over max_message_size (1009) */
    CONN_CLOSE_IDLE,             /* idle_timeout (1001) */
    CONN_CLOSE_NREASONS
};

/* Requests refused by access control, for /metrics (wsgate_auth_refused_total{reason}). */
enum auth_refused {
    AUTH_REFUSED_PUSH = 0,   /* /push, /publish without a valid token (401) */
    AUTH_REFUSED_METRICS,    /* /metrics without metrics_token (401) */
    AUTH_REFUSED_TOKEN,      /* upgrade: JWT missing or invalid (401) */
    AUTH_REFUSED_FORBIDDEN,  /* upgrade: valid JWT, wrong sub or topic (403) */
    AUTH_REFUSED_ORIGIN,     /* upgrade: Origin not in allowed_origins (403) */
    AUTH_REFUSED_N
};

struct metrics {
    uint64_t ws_open;             /* gauge: WebSocket connections (101 sent) */
    uint64_t ws_total;            /* upgrades answered 101 */
    uint64_t http_open;           /* gauge: connections still speaking HTTP */
    uint64_t http_requests;       /* requests answered */
    uint64_t pushed;              /* /push accepted (202) */
    uint64_t published;           /* /publish accepted (202) */
    uint64_t delivered;           /* frames written to sockets */
    uint64_t dropped;             /* messages dropped by the core (closed socket, slow client) */
    uint64_t upstream;            /* client frames forwarded to the broker */
    uint64_t bytes_in;            /* bytes read from sockets */
    uint64_t bytes_out;           /* bytes written to sockets */
    uint64_t handshake_timeouts;  /* 408s */
    uint64_t closed[CONN_CLOSE_NREASONS]; /* closes the gateway decided, by reason */
    uint64_t refused_http_limit;  /* connections closed at accept: max_http_connections */
    uint64_t refused_queue_full;  /* pushes answered 429 */
    uint64_t refused_per_ip;      /* upgrades over max_connections_per_ip (503) */
    uint64_t refused_rate;        /* upgrades over max_handshakes_per_second_per_ip (429) */
    uint64_t refused_auth[AUTH_REFUSED_N]; /* access control refusals by reason */
};

/* Intrusive doubly linked list of connections (head = oldest activity). */
struct conn_list {
    struct conn *head; /* borrowed: members are owned by the server via conn_new/conn_free */
    struct conn *tail;
    uint32_t count;
};

struct server {
    uv_loop_t *loop;           /* borrowed: outlives the server */
    const struct config *cfg;  /* borrowed: outlives the server */
    struct broker *broker;     /* borrowed: opened before server_start, closed after stop */
    struct auth *auth;         /* borrowed: built by the caller (auth_init), reloaded on SIGHUP */
    struct iplimit iplimit;    /* owned: per-IP counters (iplimit_init in server_start) */
    uv_signal_t sighup;        /* embedded: reload push_tokens_file */
    uv_tcp_t listener;         /* embedded */
    uv_timer_t sweep;          /* embedded: timeouts, pings (runs only while conns exist) */
    uv_prepare_t flush_prep;   /* embedded: flush dirty conns before the loop blocks */
    uv_check_t flush_check;    /* embedded: flush dirty conns after each I/O round */
    uv_signal_t sigterm;       /* embedded */
    uv_signal_t sigint;        /* embedded */
    uv_timer_t drain_timer;    /* embedded: hard deadline for shutdown */
    struct conn_list http;     /* HTTP connections (before upgrade) */
    struct conn_list ws;       /* WebSocket connections, least recently active first */
    struct conn_list closing;  /* WebSockets waiting for the client's close frame */
    struct conn *dirty;        /* borrowed: singly linked (c->dirty_next) conns to flush */
    struct conn *writing;      /* borrowed: conns with a uv_write in flight (c->wnext/wprev),
                                * checked by the sweep for write_timeout */
    uint64_t refused_logged_ms;/* when the last http_connection_limit line was logged */
    uint64_t refused_unlogged; /* refusals since that line */
    uint32_t upgrades_pending; /* upgrades waiting for broker attach (count to max_connections) */
    uint64_t next_session_id;  /* session ids, unique in this process */
    uint64_t now_ms;           /* uv_now at the last sweep/read, ms */
    uint64_t sweep_period_ms;  /* sweep timer period */
    int draining;              /* 1 after SIGTERM/SIGINT */
    int listening;             /* listener is open */
    int exit_code;             /* what main returns */
    char *rbuf;                /* owned: shared read buffer (reads are handled synchronously) */
    size_t rbuf_size;          /* its size */
    struct msg *resp_202;      /* owned: shared pre-rendered 202 {"ok":true} (keep-alive) */
    struct msg *ping_frame;    /* owned: shared empty ping frame */
    struct metrics m;          /* counters for /metrics */
    char listen_addr[64];      /* "host:port" actually bound, for logs */
};

/* Set up handles and bind/listen on cfg->listen. 0 or UV_E* (logged). */
int server_start(struct server *srv, uv_loop_t *loop, const struct config *cfg,
                 struct broker *b, struct auth *auth);
/* Begin shutdown: stop accepting, close WebSockets with 1001, drain, then close every
 * handle; uv_run returns once everything is closed (or at drain_timeout). */
void server_shutdown(struct server *srv);
/* Free what server_start allocated; after uv_run returned. */
void server_free(struct server *srv);
/* Make sure the sweep timer runs (a connection appeared). */
void server_sweep_arm(struct server *srv);
/* A connection finished closing (drain bookkeeping). */
void server_on_conn_closed(struct server *srv);
/* Render /metrics into a new raw msg (refs 1) or NULL. */
struct msg *server_metrics_render(struct server *srv);

#endif
