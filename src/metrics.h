/* metrics.h — the gateway's counters and their rendering for GET /metrics (metrics.c).
 * Private to the core. Loop thread only. */
#ifndef WSGATE_METRICS_H
#define WSGATE_METRICS_H

#include <stdint.h>

struct server;
struct msg;

/* Why the gateway closed a connection, for /metrics (wsgate_connections_closed_total{reason}). */
enum conn_close_reason {
    CONN_CLOSE_SLOW = 0,        /* output over max_send_buffer */
    CONN_CLOSE_WRITE_TIMEOUT,   /* no write progress for write_timeout */
    CONN_CLOSE_REQUEST_TIMEOUT, /* head or whole request too slow (408) */
    CONN_CLOSE_FRAGMENTS,       /* more than max_fragments frames in one message (1009) */
    CONN_CLOSE_TOO_BIG,         /* message or frame over max_message_size (1009) */
    CONN_CLOSE_IDLE,            /* idle_timeout (1001) */
    CONN_CLOSE_NREASONS
};

/* Requests refused by access control, for /metrics (wsgate_auth_refused_total{reason}). */
enum auth_refused {
    AUTH_REFUSED_PUSH = 0,  /* /push, /publish without a valid token (401) */
    AUTH_REFUSED_METRICS,   /* /metrics without metrics_token (401) */
    AUTH_REFUSED_TOKEN,     /* upgrade: JWT missing or invalid (401) */
    AUTH_REFUSED_FORBIDDEN, /* upgrade: valid JWT, wrong sub or topic (403) */
    AUTH_REFUSED_ORIGIN,    /* upgrade: Origin not in allowed_origins (403) */
    AUTH_REFUSED_N
};

struct metrics {
    uint64_t ws_open;            /* gauge: WebSocket connections (101 sent) */
    uint64_t ws_total;           /* upgrades answered 101 */
    uint64_t http_open;          /* gauge: connections still speaking HTTP */
    uint64_t http_requests;      /* requests answered */
    uint64_t pushed;             /* /push accepted (202) */
    uint64_t published;          /* /publish accepted (202) */
    uint64_t delivered;          /* frames written to sockets */
    uint64_t dropped;            /* messages dropped by the core (closed socket, slow client) */
    uint64_t upstream;           /* client frames forwarded to the broker */
    uint64_t bytes_in;           /* bytes read from sockets */
    uint64_t bytes_out;          /* bytes written to sockets */
    uint64_t handshake_timeouts; /* 408s */
    uint64_t closed[CONN_CLOSE_NREASONS]; /* closes the gateway decided, by reason */
    uint64_t refused_http_limit;          /* connections closed at accept: max_http_connections */
    uint64_t refused_queue_full;          /* pushes answered 429 */
    uint64_t refused_per_ip;              /* upgrades over max_connections_per_ip (503) */
    uint64_t refused_rate;                /* upgrades over max_handshakes_per_second_per_ip (429) */
    uint64_t refused_auth[AUTH_REFUSED_N]; /* access control refusals by reason */
};

/* Render /metrics (Prometheus text) into a new raw msg (refs 1), or NULL. */
struct msg *metrics_render(const struct server *srv);

#endif
