/* server.h — the gateway's per-loop context: listener, connection lists, timers,
 * metrics, the broker handle, and the shared read buffer. Everything mutable lives
 * here (no globals). Does NOT parse HTTP or WebSocket (conn/http/ws do). Loop thread. */
#ifndef WSGATE_SERVER_H
#define WSGATE_SERVER_H

#include <stdint.h>
#include <uv.h>

#include "iplimit.h"
#include "metrics.h"

struct config;
struct broker;
struct conn;
struct msg;

/* Intrusive doubly linked list of connections (head = oldest activity). */
struct conn_list {
    struct conn *head; /* borrowed: members are owned by the server via conn_new/conn_free */
    struct conn *tail;
    uint32_t count;
};

enum server_phase {
    SRV_RUNNING = 0, /* accepting */
    SRV_DRAINING,    /* SIGTERM/SIGINT: closing connections, no new ones */
    SRV_STOPPED,     /* every handle closed (or closing): uv_run returns */
};

struct server {
    uv_loop_t *loop;            /* borrowed: outlives the server */
    const struct config *cfg;   /* borrowed: outlives the server */
    struct broker *broker;      /* borrowed: opened before server_start, closed after stop */
    struct auth *auth;          /* borrowed: built by the caller (auth_init), reloaded on SIGHUP */
    struct iplimit iplimit;     /* owned: per-IP counters (iplimit_init in server_start) */
    uv_signal_t sighup;         /* embedded: reload push_tokens_file */
    uv_tcp_t listener;          /* embedded */
    uv_timer_t sweep;           /* embedded: timeouts, pings (runs only while conns exist) */
    uv_prepare_t flush_prep;    /* embedded: flush pass before the loop blocks */
    uv_check_t flush_check;     /* embedded: flush pass after each I/O round */
    uv_signal_t sigterm;        /* embedded */
    uv_signal_t sigint;         /* embedded */
    uv_timer_t drain_timer;     /* embedded: hard deadline for shutdown */
    struct conn_list http;      /* HTTP connections (before upgrade) */
    struct conn_list ws;        /* WebSocket connections, least recently active first */
    struct conn_list closing;   /* WebSockets waiting for the client's close frame */
    struct conn *flush_list;    /* borrowed: singly linked (c->flush_next) conns to flush */
    struct conn *writing;       /* borrowed: conns with a uv_write in flight (c->wnext/wprev),
                                 * checked by the sweep for write_timeout */
    uint64_t refused_logged_ms; /* when the last http_connection_limit line was logged */
    uint64_t refused_unlogged;  /* refusals since that line */
    uint32_t upgrades_pending;  /* upgrades waiting for broker attach (count to max_connections) */
    uint64_t next_session_id;   /* session ids, unique in this process */
    uint64_t now_ms;            /* uv_now at the last sweep/read, ms */
    uint64_t sweep_period_ms;   /* sweep timer period */
    enum server_phase phase;    /* running, draining after SIGTERM/SIGINT, stopped */
    int listening;              /* listener is open */
    int exit_code;              /* what main returns */
    char *rbuf;                 /* owned: shared read buffer (reads are handled synchronously) */
    size_t rbuf_size;           /* its size */
    struct msg *resp_202;       /* owned: shared pre-rendered 202 {"ok":true} (keep-alive) */
    struct msg *ping_frame;     /* owned: shared empty ping frame */
    struct metrics m;           /* counters for /metrics */
    char listen_addr[64];       /* "host:port" actually bound, for logs */
};

/* Set up handles and bind/listen on cfg->listen. 0 or UV_E* (logged). */
int server_start(struct server *srv, uv_loop_t *loop, const struct config *cfg, struct broker *b,
                 struct auth *auth);
/* Begin shutdown: stop accepting, close WebSockets with 1001, drain, then close every
 * handle; uv_run returns once everything is closed (or at drain_timeout). */
void server_shutdown(struct server *srv);
/* Free what server_start allocated; after uv_run returned. */
void server_free(struct server *srv);
/* Make sure the sweep timer runs (a connection appeared). */
void server_sweep_arm(struct server *srv);
/* A connection finished closing (drain bookkeeping). */
void server_on_conn_closed(struct server *srv);

#endif
