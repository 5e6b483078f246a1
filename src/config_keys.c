/* config_keys.c — the one table of configuration keys (section, name, type, field,
 * default, help line, range or choices) and the form checks of string values (listen
 * address, broker URLs, names). config.c reads it for everything: config_defaults, the
 * file and environment passes, validation and config_write_defaults (the text of
 * gateway.conf.example). Does NOT parse files or the environment; the checks look at a
 * value's form only, never resolve names or open files.
 * Thread: main thread at start-up (const data, no state). */
#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "config_priv.h"

/* --- string form checks --- */

static int cfg_why(char *why, size_t whylen, const char *text)
{
    snprintf(why, whylen, "%s", text);
    return -1;
}

/* Port digits s[0..len) into *port; 0 or -1. */
static int cfg_port_parse(const char *s, size_t len, unsigned *port)
{
    unsigned v = 0;

    if (len == 0 || len > 5)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *port = v;
    return 0;
}

/* "IPv4:port" or "[IPv6]:port" with numeric addresses only (what the listener binds). */
static int cfg_check_listen(const char *v, char *why, size_t whylen)
{
    char host[INET6_ADDRSTRLEN + 1];
    unsigned char addr[16];
    const char *colon;
    unsigned port;
    int af;

    if (v[0] == '[') {
        const char *end = strchr(v, ']');
        if (end == NULL || end[1] != ':' || (size_t)(end - v - 1) >= sizeof host)
            goto bad;
        memcpy(host, v + 1, (size_t)(end - v - 1));
        host[end - v - 1] = '\0';
        colon = end + 1;
        af = AF_INET6;
    } else {
        colon = strchr(v, ':');
        if (colon == NULL || strchr(colon + 1, ':') != NULL || (size_t)(colon - v) >= sizeof host)
            goto bad;
        memcpy(host, v, (size_t)(colon - v));
        host[colon - v] = '\0';
        af = AF_INET;
    }
    if (inet_pton(af, host, addr) != 1 || cfg_port_parse(colon + 1, strlen(colon + 1), &port) < 0)
        goto bad;
    return 0;
bad:
    return cfg_why(why, whylen,
                   "expected host:port with an IPv4 address or an [IPv6] address and a port "
                   "0-65535, e.g. 0.0.0.0:8080 or [::1]:8080");
}

/* Naming prefix, JetStream stream name: [A-Za-z0-9_-]+ (safe in every broker's names). */
static int cfg_check_name(const char *v, char *why, size_t whylen)
{
    if (v[0] == '\0')
        return cfg_why(why, whylen, "must not be empty");
    for (const char *p = v; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
            return cfg_why(why, whylen, "only letters, digits, '_' and '-' are allowed");
    }
    return 0;
}

/* Kafka consumer group id: [A-Za-z0-9._-]+. */
static int cfg_check_group(const char *v, char *why, size_t whylen)
{
    if (v[0] == '\0')
        return cfg_why(why, whylen, "must not be empty");
    for (const char *p = v; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.')
            return cfg_why(why, whylen, "only letters, digits, '.', '_' and '-' are allowed");
    }
    return 0;
}

/* [kafka] node: empty (the host name) or a group-id token as above. */
static int cfg_check_node(const char *v, char *why, size_t whylen)
{
    return v[0] == '\0' ? 0 : cfg_check_group(v, why, whylen);
}

/* host[:port] in s[0..len): host is a name/IPv4 of [A-Za-z0-9.-] or an [IPv6] literal. */
static int cfg_hostport_check(const char *s, size_t len, int port_required)
{
    size_t i = 0;
    unsigned port;

    if (len > 0 && s[0] == '[') {
        char host[INET6_ADDRSTRLEN + 1];
        unsigned char addr[16];
        const char *end = memchr(s, ']', len);
        if (end == NULL || (size_t)(end - s - 1) >= sizeof host)
            return -1;
        memcpy(host, s + 1, (size_t)(end - s - 1));
        host[end - s - 1] = '\0';
        if (inet_pton(AF_INET6, host, addr) != 1)
            return -1;
        i = (size_t)(end - s) + 1;
    } else {
        while (i < len && (isalnum((unsigned char)s[i]) || s[i] == '.' || s[i] == '-'))
            i++;
        if (i == 0)
            return -1;
    }
    if (i == len)
        return port_required ? -1 : 0;
    if (s[i] != ':')
        return -1;
    return cfg_port_parse(s + i + 1, len - i - 1, &port) < 0 || port == 0 ? -1 : 0;
}

/* scheme://[userinfo@]host[:port], then "/db" digits when db_path; s[0..len). */
static int cfg_url_check(const char *s, size_t len, const char *scheme, int db_path)
{
    size_t sl = strlen(scheme);

    if (len < sl || memcmp(s, scheme, sl) != 0)
        return -1;
    s += sl;
    len -= sl;
    const char *slash = memchr(s, '/', len);
    size_t auth_len = slash != NULL ? (size_t)(slash - s) : len;
    if (slash != NULL) {
        /* redis: "/db" with a database number; nats: nothing after the authority. */
        size_t rest = len - auth_len - 1;
        if (!db_path || rest == 0)
            return -1;
        for (size_t i = 0; i < rest; i++) {
            if (slash[1 + i] < '0' || slash[1 + i] > '9')
                return -1;
        }
    }
    /* The password may hold anything, '@' included: the host follows the last '@'. */
    const char *at = NULL;
    for (size_t i = 0; i < auth_len; i++) {
        if (s[i] == '@')
            at = s + i;
    }
    if (at != NULL) {
        auth_len -= (size_t)(at + 1 - s);
        s = at + 1;
    }
    return cfg_hostport_check(s, auth_len, 0);
}

static int cfg_check_redis_url(const char *v, char *why, size_t whylen)
{
    if (cfg_url_check(v, strlen(v), "redis://", 1) < 0)
        return cfg_why(why, whylen, "expected redis://[:password@]host:port/db");
    return 0;
}

/* Comma-separated list; every item passes item_ok. */
static int cfg_list_check(const char *v, int (*item_ok)(const char *s, size_t len))
{
    const char *p = v;

    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        if (item_ok(p, len) < 0)
            return -1;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

static int cfg_nats_item_ok(const char *s, size_t len)
{
    if (cfg_url_check(s, len, "nats://", 0) == 0 || cfg_url_check(s, len, "tls://", 0) == 0)
        return 0;
    return -1;
}

static int cfg_check_nats_url(const char *v, char *why, size_t whylen)
{
    if (cfg_list_check(v, cfg_nats_item_ok) < 0)
        return cfg_why(why, whylen, "expected nats://host:port[,nats://host:port...]");
    return 0;
}

static int cfg_kafka_item_ok(const char *s, size_t len)
{
    return cfg_hostport_check(s, len, 1);
}

static int cfg_check_kafka_brokers(const char *v, char *why, size_t whylen)
{
    if (cfg_list_check(v, cfg_kafka_item_ok) < 0)
        return cfg_why(why, whylen, "expected host:port[,host:port...]");
    return 0;
}

/* --- the table --- */

#define CFG_FIELD(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)

static const char *const cfg_log_levels[] = {"error", "warn", "info", "debug", NULL};
static const char *const cfg_frame_types[] = {"auto", "text", "binary", NULL};
static const char *const cfg_broker_types[] = {"memory", "redis-list", "redis-pubsub",
                                               "nats",   "kafka",      NULL};
static const char *const cfg_bools[] = {"off", "on", NULL}; /* canonical spellings */
static const char *const cfg_nats_pulls[] = {"auto", "always", NULL};

_Static_assert(LOG_LEVEL_ERROR == 0 && LOG_LEVEL_DEBUG == 3, "cfg_log_levels order");
_Static_assert(MSG_FRAME_AUTO == 0 && MSG_FRAME_BINARY == 2, "cfg_frame_types order");
_Static_assert(sizeof(enum log_level) == sizeof(int), "CFG_ENUM stores an int");
_Static_assert(sizeof(enum msg_frame_type) == sizeof(int), "CFG_ENUM stores an int");

/* clang-format off */
const struct cfg_key cfg__keys[] = {
    /* [server] */
    {"server", "listen", CFG_STR, CFG_FIELD(listen), "0.0.0.0:8080",
     "Address and port to listen on, IPv4 or [IPv6]; port 0 = any free port (logged as addr=).",
     0, 0, NULL, cfg_check_listen, 0},
    {"server", "backlog", CFG_U32, CFG_FIELD(backlog), "511",
     "listen(2) backlog of connections not yet accepted.",
     1, 65535, NULL, NULL, 0},
    {"server", "max_connections", CFG_U32, CFG_FIELD(max_connections), "10000",
     "WebSocket connections at once; the next upgrade is answered 503.",
     1, 10000000, NULL, NULL, 0},
    {"server", "max_http_connections", CFG_U32, CFG_FIELD(max_http_connections), "1024",
     "Plain HTTP connections at once; more are closed.",
     1, 10000000, NULL, NULL, 0},
    {"server", "max_header_size", CFG_SIZE, CFG_FIELD(max_header_size), "8k",
     "Request line plus headers; over it: 431.",
     64, 1 * MIB, NULL, NULL, 0},
    {"server", "max_message_size", CFG_SIZE, CFG_FIELD(max_message_size), "1m",
     "Largest /push or /publish body and WebSocket message; over it: 413 or close 1009.",
     1, 64 * MIB, NULL, NULL, 0},
    {"server", "handshake_timeout", CFG_MS, CFG_FIELD(handshake_timeout_ms), "10s",
     "The whole request head must arrive within this; else 408.",
     1, 1 * HOUR_MS, NULL, NULL, 0},
    {"server", "keepalive_timeout", CFG_MS, CFG_FIELD(keepalive_timeout_ms), "60s",
     "An idle keep-alive HTTP connection is closed after this.",
     1, 24 * HOUR_MS, NULL, NULL, 0},
    {"server", "drain_timeout", CFG_MS, CFG_FIELD(drain_timeout_ms), "10s",
     "On SIGTERM/SIGINT: close every WebSocket with 1001 and exit within this.",
     0, 1 * HOUR_MS, NULL, NULL, 0},
    {"server", "max_pipeline", CFG_U32, CFG_FIELD(max_pipeline), "64",
     "Unanswered pipelined requests per HTTP connection before reading pauses.",
     1, 1024, NULL, NULL, 0},
    {"server", "request_timeout", CFG_MS, CFG_FIELD(request_timeout_ms), "30s",
     "A whole request (head and body) must arrive within this from its first byte; else 408.",
     1, 1 * HOUR_MS, NULL, NULL, 0},
    {"server", "write_timeout", CFG_MS, CFG_FIELD(write_timeout_ms), "30s",
     "A connection whose queued output makes no write progress for this long is closed.",
     1, 1 * HOUR_MS, NULL, NULL, 0},
    {"server", "linger_timeout", CFG_MS, CFG_FIELD(linger_timeout_ms), "2s",
     "After an error answer sent before the request was read: drain input at most this long.",
     0, 1 * MIN_MS, NULL, NULL, 0},
    {"server", "max_connections_per_ip", CFG_U32, CFG_FIELD(max_connections_per_ip), "0",
     "Connections at once from one client IP; over it: 503. 0 = no limit.",
     0, 10000000, NULL, NULL, 0},
    {"server", "max_handshakes_per_second_per_ip", CFG_U32,
     CFG_FIELD(max_handshakes_per_second_per_ip), "0",
     "WebSocket upgrades per second from one client IP (token bucket); over: 429. 0 = no limit.",
     0, 10000000, NULL, NULL, 0},
    {"server", "allowed_origins", CFG_STR, CFG_FIELD(allowed_origins), "*",
     "Origins allowed to upgrade: * or a comma-separated exact list; others get 403.",
     0, 0, NULL, NULL, 0},
    {"server", "cors_origins", CFG_STR, CFG_FIELD(cors_origins), "",
     "Origins granted CORS on /push and /publish (comma-separated); empty = none.",
     0, 0, NULL, NULL, 0},
    {"server", "trusted_proxies", CFG_STR, CFG_FIELD(trusted_proxies), "",
     "Load balancers (IPs or CIDRs, comma-separated) whose X-Forwarded-For is believed.",
     0, 0, NULL, NULL, 0},
    {"server", "demo", CFG_BOOL, CFG_FIELD(demo), "off",
     "Serve the browser client at /wsgate.js and a demo page at /demo/ (make run turns it on).",
     0, 0, cfg_bools, NULL, 0},
    {"server", "log_level", CFG_ENUM, CFG_FIELD(log_level), "info",
     "Lowest level written to stderr.",
     0, 0, cfg_log_levels, NULL, 0},
    /* [websocket] */
    {"websocket", "ping_interval", CFG_MS, CFG_FIELD(ping_interval_ms), "30s",
     "The server pings every client this often; 0 = no pings.",
     0, 24 * HOUR_MS, NULL, NULL, 0},
    {"websocket", "idle_timeout", CFG_MS, CFG_FIELD(idle_timeout_ms), "75s",
     "A client silent this long (pongs count) is closed with 1001; > ping_interval.",
     1, 24 * HOUR_MS, NULL, NULL, 0},
    {"websocket", "max_send_buffer", CFG_SIZE, CFG_FIELD(max_send_buffer), "1m",
     "Unsent bytes per connection (frames, pongs, HTTP answers); over it: WS close 1008 (queue brokers hold back), HTTP stops reading.",
     1, 1024 * MIB, NULL, NULL, 0},
    {"websocket", "close_timeout", CFG_MS, CFG_FIELD(close_timeout_ms), "5s",
     "After sending a close frame, wait at most this for the client's.",
     1, 1 * HOUR_MS, NULL, NULL, 0},
    {"websocket", "frame_type", CFG_ENUM, CFG_FIELD(frame_type), "auto",
     "auto: text frame for valid UTF-8, else binary; text/binary force one.",
     0, 0, cfg_frame_types, NULL, 0},
    {"websocket", "upstream", CFG_BOOL, CFG_FIELD(upstream), "off",
     "Forward client frames to <prefix>.send.<session>; off = ignore them.",
     0, 0, cfg_bools, NULL, 0},
    {"websocket", "max_topics", CFG_U32, CFG_FIELD(max_topics), "32",
     "Topics one connection may name in ?topics=.",
     0, 4096, NULL, NULL, 0},
    {"websocket", "max_inflight", CFG_U32, CFG_FIELD(max_inflight), "64",
     "The ack window only: messages redis-list and nats hand one socket that are not yet written (the rest wait in the broker).",
     1, 65536, NULL, NULL, 0},
    {"websocket", "max_upstream_inflight", CFG_U32, CFG_FIELD(max_upstream_inflight), "64",
     "Client frames forwarded to the broker and not yet confirmed, per socket; reading from the socket pauses at this many.",
     1, 65536, NULL, NULL, 0},
    {"websocket", "max_fragments", CFG_U32, CFG_FIELD(max_fragments), "1024",
     "Frames in one fragmented client message; over it: close 1009.",
     1, 1000000, NULL, NULL, 0},
    /* [broker] */
    {"broker", "type", CFG_CHOICE, CFG_FIELD(broker_type), "memory",
     "Message broker (memory: no setup, one node only).",
     0, 0, cfg_broker_types, NULL, 0},
    {"broker", "prefix", CFG_STR, CFG_FIELD(prefix), "ws",
     "First token of every broker name, <prefix>.recv.S etc. ([A-Za-z0-9_-]).",
     0, 0, NULL, cfg_check_name, 0},
    {"broker", "ttl", CFG_MS, CFG_FIELD(ttl_ms), "1h",
     "How long a message waits for an offline session.",
     1, 8760 * HOUR_MS, NULL, NULL, 0},
    {"broker", "max_queue", CFG_U32, CFG_FIELD(max_queue), "1000",
     "Messages queued per session; a push over it is answered 429.",
     1, 10000000, NULL, NULL, 0},
    {"broker", "retry_after", CFG_SEC, CFG_FIELD(retry_after_s), "1s",
     "Retry-After sent with 429 and 503 (whole seconds).",
     0, 3600, NULL, NULL, 0},
    {"broker", "memory_max_bytes", CFG_SIZE, CFG_FIELD(memory_max_bytes), "256m",
     "memory: bytes stored for all sessions together; a push over it gets 503.",
     1, 1024 * 1024 * MIB, NULL, NULL, 0},
    /* [redis] */
    {"redis", "url", CFG_STR, CFG_FIELD(redis_url), "redis://127.0.0.1:6379/0",
     "Redis server: redis://[:password@]host:port/db. redis-list enables keyspace events Kl at connect (or set them in redis.conf).",
     0, 0, NULL, cfg_check_redis_url, CFG_SECRET},
    {"redis", "timeout", CFG_MS, CFG_FIELD(redis_timeout_ms), "2s",
     "Connect timeout and deadline of each command.",
     1, 1 * HOUR_MS, NULL, NULL, 0},
    {"redis", "ping_interval", CFG_MS, CFG_FIELD(redis_ping_interval_ms), "1s",
     "Liveness check period of the Redis connections.",
     1, 1 * HOUR_MS, NULL, NULL, 0},
    {"redis", "backoff_max", CFG_MS, CFG_FIELD(redis_backoff_max_ms), "5s",
     "Longest wait between reconnect attempts.",
     1, 1 * HOUR_MS, NULL, NULL, 0},
    {"redis", "batch", CFG_U32, CFG_FIELD(redis_batch), "64",
     "redis-list: most messages moved from a queue by one fetch.",
     1, 1000, NULL, NULL, 0},
    /* [nats] */
    {"nats", "url", CFG_STR, CFG_FIELD(nats_url), "nats://127.0.0.1:4222",
     "NATS servers: nats://host:port[,nats://host2:port2].",
     0, 0, NULL, cfg_check_nats_url, CFG_SECRET},
    {"nats", "stream", CFG_STR, CFG_FIELD(nats_stream), "WSRECV",
     "JetStream stream holding <prefix>.recv.> ([A-Za-z0-9_-]).",
     0, 0, NULL, cfg_check_name, 0},
    {"nats", "token", CFG_STR, CFG_FIELD(nats_token), "",
     "Authentication token; empty = none. Prefer WSGATE_NATS_TOKEN to a file.",
     0, 0, NULL, NULL, CFG_SECRET},
    {"nats", "creds", CFG_STR, CFG_FIELD(nats_creds), "",
     "Credentials (.creds) file path; empty = none.",
     0, 0, NULL, NULL, 0},
    {"nats", "ack_wait", CFG_MS, CFG_FIELD(nats_ack_wait_ms), "1h",
     "Ack wait of the consumer wsgate; when pulled, a message still stored this long is handed out again.",
     1, 8760 * HOUR_MS, NULL, NULL, 0},
    {"nats", "consumer_pull", CFG_ENUM, CFG_FIELD(nats_pull), "auto",
     "Pull consumer wsgate: auto = only if the server ignores acks ahead of it (probed; 2.11+).",
     0, 0, cfg_nats_pulls, NULL, 0},
    {"nats", "timeout", CFG_MS, CFG_FIELD(nats_timeout_ms), "2s",
     "Deadline of requests and acks.",
     1, 1 * HOUR_MS, NULL, NULL, 0},
    /* [auth] */
    {"auth", "push_tokens", CFG_STR, CFG_FIELD(push_tokens), "",
     "Bearer tokens (comma-separated) for /push and /publish; empty (and no file) = open.",
     0, 0, NULL, NULL, CFG_SECRET},
    {"auth", "push_tokens_file", CFG_STR, CFG_FIELD(push_tokens_file), "",
     "File with one push token per line; read at start and on SIGHUP.",
     0, 0, NULL, NULL, 0},
    {"auth", "jwt_secret", CFG_STR, CFG_FIELD(jwt_secret), "",
     "HS256 secret (raw bytes) for client JWTs; set = /ws and /sse need a token.",
     0, 0, NULL, NULL, CFG_SECRET},
    {"auth", "jwt_public_key_file", CFG_STR, CFG_FIELD(jwt_public_key_file), "",
     "PEM public key (BEGIN PUBLIC KEY) for RS256 or ES256 client JWTs.",
     0, 0, NULL, NULL, 0},
    {"auth", "metrics_token", CFG_STR, CFG_FIELD(metrics_token), "",
     "Bearer token for /metrics; empty = open.",
     0, 0, NULL, NULL, CFG_SECRET},
    {"auth", "jwt_leeway", CFG_MS, CFG_FIELD(jwt_leeway_ms), "60s",
     "Clock skew allowed when checking exp and nbf.",
     0, 1 * HOUR_MS, NULL, NULL, 0},
    {"auth", "jwt_audience", CFG_STR, CFG_FIELD(jwt_audience), "",
     "Required aud claim; empty = not checked.",
     0, 0, NULL, NULL, 0},
    {"auth", "jwt_issuer", CFG_STR, CFG_FIELD(jwt_issuer), "",
     "Required iss claim; empty = not checked.",
     0, 0, NULL, NULL, 0},
    /* [kafka] */
    {"kafka", "brokers", CFG_STR, CFG_FIELD(kafka_brokers), "127.0.0.1:9092",
     "Kafka bootstrap brokers: host:port[,host:port].",
     0, 0, NULL, cfg_check_kafka_brokers, 0},
    {"kafka", "group", CFG_STR, CFG_FIELD(kafka_group), "wsgate",
     "Consumer group prefix ([A-Za-z0-9._-]): each node commits its ws.recv offsets as group <group>.<node>.",
     0, 0, NULL, cfg_check_group, 0},
    {"kafka", "node", CFG_STR, CFG_FIELD(kafka_node), "",
     "This node's stable name in its group id; empty = the host name. Two nodes must never share one.",
     0, 0, NULL, cfg_check_node, 0},
    {"kafka", "timeout", CFG_MS, CFG_FIELD(kafka_timeout_ms), "5s",
     "A produce not acknowledged (acks=all) within this is answered 503; also the deadline of metadata and offset requests.",
     100, 5 * MIN_MS, NULL, NULL, 0},
    {"kafka", "replay_delay", CFG_MS, CFG_FIELD(kafka_replay_delay_ms), "2s",
     "After a restart with uncommitted records, wait this long before reading them so reconnecting clients get them.",
     0, 1 * MIN_MS, NULL, NULL, 0},
    {"kafka", "max_buffered", CFG_SIZE, CFG_FIELD(kafka_max_buffered), "64m",
     "Bytes produced and not yet acknowledged by Kafka; a push over it gets 503.",
     1 * KIB, 1024 * MIB, NULL, NULL, 0},
    {"kafka", "fetch_wait", CFG_MS, CFG_FIELD(kafka_fetch_wait_ms), "500ms",
     "fetch.wait.max.ms. Kafka answers a fetch as soon as data arrives; librdkafka's mock cluster waits it out (use 10ms there).",
     1, 1 * MIN_MS, NULL, NULL, 0},
};
/* clang-format on */

const size_t cfg__nkeys = sizeof cfg__keys / sizeof cfg__keys[0];

const char *const cfg__sections[] = {"server", "websocket", "broker", "redis",
                                     "nats",   "kafka",     "auth"};
const size_t cfg__nsections = sizeof cfg__sections / sizeof cfg__sections[0];

/* WSGATE_* variables that are not config keys: scripts/run-tests.sh exports them to every
 * test, and integration tests start wsgate with that environment. */
const char *const cfg__env_ignored[] = {"WSGATE_BIN", "WSGATE_TOOLS", "WSGATE_TEST_LOGDIR"};
const size_t cfg__nenv_ignored = sizeof cfg__env_ignored / sizeof cfg__env_ignored[0];
