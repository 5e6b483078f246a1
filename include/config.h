/* config.h — the gateway's configuration: one table of keys (src/config_keys.c) drives
 * defaults, INI parsing (libinih), WSGATE_<SECTION>_<KEY> environment overrides and
 * --check-config. Does NOT open sockets or brokers. Loaded once on the main thread
 * before the loop starts; read-only afterwards (safe to read from any thread). */
#ifndef WSGATE_CONFIG_H
#define WSGATE_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "log.h"
#include "msg.h"

#define CFG_STR_MAX 512 /* longest string value (URLs, paths, secrets) */

struct config {
    /* [server] */
    char listen[CFG_STR_MAX];       /* "host:port", default "0.0.0.0:8080" */
    uint32_t backlog;               /* listen(2) backlog, default 511 */
    uint32_t max_connections;       /* WebSocket connections; next upgrade gets 503 */
    uint32_t max_http_connections;  /* plain HTTP connections at once; over: closed */
    uint64_t max_header_size;       /* request line + headers bytes; over: 431 */
    uint64_t max_message_size;      /* /push, /publish body and WS message; over: 413/1009 */
    uint64_t handshake_timeout_ms;  /* whole request head must arrive within; else 408 */
    uint64_t keepalive_timeout_ms;  /* idle keep-alive HTTP connection closed after */
    uint64_t drain_timeout_ms;      /* SIGTERM: exit within this */
    uint32_t max_pipeline;          /* unanswered requests per HTTP connection before reads pause */
    uint64_t request_timeout_ms;    /* whole request (head + body) from its first byte; else 408 */
    uint64_t write_timeout_ms;      /* queued output with no write progress this long: close */
    uint64_t linger_timeout_ms;     /* after an error answer: drain input at most this long */
    uint32_t max_connections_per_ip;/* connections at once from one client IP; 0 = no limit */
    uint32_t max_handshakes_per_second_per_ip; /* upgrade rate per client IP; 0 = no limit */
    char allowed_origins[CFG_STR_MAX]; /* "*" or comma-separated exact origins for upgrades */
    char cors_origins[CFG_STR_MAX]; /* origins granted CORS on /push, /publish; "" = none */
    char trusted_proxies[CFG_STR_MAX]; /* CIDRs whose X-Forwarded-For is believed; "" = none */
    int demo;                       /* serve /wsgate.js and /demo/ */
    enum log_level log_level;       /* [server] log_level */
    /* [websocket] */
    uint64_t ping_interval_ms;      /* server ping period; 0 = no pings */
    uint64_t idle_timeout_ms;       /* client silent this long: close 1001 */
    uint64_t max_send_buffer;       /* unsent bytes per client; over: close 1008 */
    uint64_t close_timeout_ms;      /* wait for the client's close frame at most this */
    enum msg_frame_type frame_type; /* auto|text|binary */
    int upstream;                   /* forward client frames to ws.send.S */
    uint32_t max_topics;            /* topics per connection in ?topics= */
    uint32_t max_inflight;          /* ack window: queue-broker messages on a socket, unwritten */
    uint32_t max_upstream_inflight; /* client frames sent upstream, unconfirmed; reads pause */
    uint32_t max_fragments;         /* frames in one fragmented client message; over: 1009 */
    /* [broker] */
    char broker_type[32];           /* memory|redis-list|redis-pubsub|nats|kafka */
    char prefix[64];                /* naming prefix, default "ws" */
    uint64_t ttl_ms;                /* offline message lifetime, default 1h */
    uint32_t max_queue;             /* messages per session queue; over: 429 */
    uint64_t retry_after_s;         /* Retry-After on 429/503 */
    uint64_t memory_max_bytes;      /* memory backend: stored bytes in total; over: 503 */
    /* [redis] */
    char redis_url[CFG_STR_MAX];    /* redis://[:password@]host:port/db */
    uint64_t redis_timeout_ms;      /* per-command deadline and connect timeout */
    uint64_t redis_ping_interval_ms;/* liveness check period */
    uint64_t redis_backoff_max_ms;  /* reconnect backoff cap */
    uint32_t redis_batch;           /* messages moved per LMOVE batch */
    /* [nats] */
    char nats_url[CFG_STR_MAX];     /* nats://host:port[,nats://...] */
    char nats_stream[64];           /* JetStream stream name */
    char nats_token[CFG_STR_MAX];   /* auth token, or "" */
    char nats_creds[CFG_STR_MAX];   /* credentials file path, or "" */
    uint64_t nats_ack_wait_ms;      /* ack wait of the wsgate consumer (pull mode) */
    int nats_pull;                  /* 0 auto (probe the server), 1 always pull */
    uint64_t nats_timeout_ms;       /* request/ack deadline */
    /* [auth] */
    char push_tokens[CFG_STR_MAX];  /* comma-separated bearer tokens for /push, /publish */
    char push_tokens_file[CFG_STR_MAX]; /* one token per line; read at start and on SIGHUP */
    char jwt_secret[CFG_STR_MAX];   /* HS256 secret (raw bytes); "" = none */
    char jwt_public_key_file[CFG_STR_MAX]; /* PEM SubjectPublicKeyInfo for RS256/ES256 */
    char metrics_token[CFG_STR_MAX];/* bearer token for /metrics; "" = open */
    uint64_t jwt_leeway_ms;         /* clock skew allowed on exp/nbf/iat */
    char jwt_audience[256];         /* required aud, or "" */
    char jwt_issuer[256];           /* required iss, or "" */
    /* [kafka] */
    char kafka_brokers[CFG_STR_MAX];/* host:port[,host:port] */
    char kafka_group[128];          /* consumer group id prefix: the group is <group>.<node> */
    char kafka_node[128];           /* this node's name in its group id; "" = the host name */
    uint64_t kafka_timeout_ms;      /* delivery report deadline (then 503), request deadline */
    uint64_t kafka_replay_delay_ms; /* after a restart: wait before re-reading uncommitted records */
    uint64_t kafka_max_buffered;    /* bytes produced and not yet acknowledged; over: 503 */
    uint64_t kafka_fetch_wait_ms;   /* fetch.wait.max.ms: how long a fetch waits for data */
};

/* Fill every field with its built-in default. */
void config_defaults(struct config *cfg);
/* Load path (NULL: no file) over the defaults, then apply WSGATE_* environment overrides
 * from envp (NULL-terminated "K=V" array, usually environ), then validate.
 * Returns 0, or -1 after writing "FILE:LINE: key 'NAME': reason" lines to err. */
int config_load(struct config *cfg, const char *path, char *const *envp, FILE *err);
/* Write every key with its default as an INI file (the basis of gateway.conf.example). */
void config_write_defaults(FILE *out);

#endif
