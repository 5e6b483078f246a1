/* config.c — the gateway's configuration. One table of keys (cfg_keys below: section,
 * name, type, field, default, help, limits) drives everything: config_defaults,
 * INI parsing (libinih), WSGATE_<SECTION>_<KEY> environment overrides, validation and
 * config_write_defaults (the text of gateway.conf.example).
 * Does NOT open sockets or brokers, resolve names or check that files named by values
 * exist: it only checks a value's form and range.
 * Thread: main thread at start-up, before the loop and any other thread starts.
 *
 * Errors go to the caller's FILE, one line each, all of them (not only the first):
 *   FILE:LINE: key 'section.name': reason
 *   env WSGATE_SECTION_NAME: key 'section.name': reason
 * Values of secret keys (URLs that may carry a password, tokens) are never echoed.
 *
 * libinih as built by Debian (DEPS.md) does not pass line numbers to the handler and
 * cuts lines at 200 bytes, so the file is read through cfg_file_gets(), which counts
 * lines, refuses over-long lines instead of letting them be cut, reports syntax errors
 * itself (inih only reports the first one) and strips leading blanks so an indented
 * "key = value" is an ordinary key, never a continuation of the previous value. */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util.h"

/* Longest line (without its line ending) accepted in a config file. libinih reads at
 * most INI_MAX_LINE - 1 = 199 bytes including "\r\n"; config_write_defaults states it. */
#define CFG_LINE_MAX 197

#define KIB 1024ULL
#define MIB (1024ULL * 1024ULL)
#define SEC_MS 1000ULL
#define MIN_MS (60ULL * SEC_MS)
#define HOUR_MS (60ULL * MIN_MS)

enum cfg_type {
    CFG_STR,    /* char[] field; check() validates the form */
    CFG_CHOICE, /* char[] field holding one of choices[] (canonical spelling) */
    CFG_ENUM,   /* enum field: the index of the value in choices[] */
    CFG_U32,    /* uint32_t, decimal */
    CFG_SIZE,   /* uint64_t bytes: 512, 64k, 1m */
    CFG_MS,     /* uint64_t milliseconds: 250ms, 30s, 5m, 1h, bare = seconds */
    CFG_SEC,    /* uint64_t seconds, written as a duration of whole seconds */
    CFG_BOOL,   /* int 0/1: on/off, true/false, yes/no, 1/0 */
};

#define CFG_SECRET 0x1 /* never echo the value in an error */

/* String form check: 0, or -1 with the reason in why. */
typedef int (*cfg_check_fn)(const char *v, char *why, size_t whylen);

struct cfg_key {
    const char *section;
    const char *name;
    enum cfg_type type;
    size_t offset;              /* of the field in struct config */
    size_t size;                /* of the field: string capacity or integer width */
    const char *def;            /* default, in config-file syntax */
    const char *help;           /* one line for config_write_defaults */
    uint64_t min, max;          /* numbers: allowed range after unit conversion */
    const char *const *choices; /* CFG_CHOICE, CFG_ENUM: NULL-terminated */
    cfg_check_fn check;         /* CFG_STR: form check, or NULL for any text */
    unsigned flags;             /* CFG_SECRET */
};

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
static const struct cfg_key cfg_keys[] = {
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
     "Delivered but not yet written messages per socket (the ack window).",
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

#define CFG_NKEYS (sizeof cfg_keys / sizeof cfg_keys[0])

static const char *const cfg_sections[] = {"server", "websocket", "broker", "redis",
                                           "nats",   "kafka",     "auth"};

/* WSGATE_* variables that are not config keys: scripts/run-tests.sh exports them to every
 * test, and integration tests start wsgate with that environment. */
static const char *const cfg_env_ignored[] = {"WSGATE_BIN", "WSGATE_TOOLS", "WSGATE_TEST_LOGDIR"};

/* --- values --- */

/* "64m", "8k", "30s", "1h", ... : v of the key's unit in the shortest exact spelling. */
static void cfg_num_format(enum cfg_type type, uint64_t v, char *buf, size_t len)
{
    unsigned long long u = v;

    if (type == CFG_SIZE) {
        if (u != 0 && u % MIB == 0)
            snprintf(buf, len, "%llum", u / MIB);
        else if (u != 0 && u % KIB == 0)
            snprintf(buf, len, "%lluk", u / KIB);
        else
            snprintf(buf, len, "%llu", u);
        return;
    }
    if (type == CFG_SEC)
        u *= SEC_MS;
    if (type == CFG_MS || type == CFG_SEC) {
        if (u == 0)
            snprintf(buf, len, "0");
        else if (u % HOUR_MS == 0)
            snprintf(buf, len, "%lluh", u / HOUR_MS);
        else if (u % MIN_MS == 0)
            snprintf(buf, len, "%llum", u / MIN_MS);
        else if (u % SEC_MS == 0)
            snprintf(buf, len, "%llus", u / SEC_MS);
        else
            snprintf(buf, len, "%llums", u);
        return;
    }
    snprintf(buf, len, "%llu", u);
}

/* What a value of this key looks like, for "expected ..." reasons. */
static const char *cfg_type_expect(enum cfg_type type)
{
    switch (type) {
    case CFG_U32:
        return "a whole number";
    case CFG_SIZE:
        return "a size such as 512, 64k or 1m";
    case CFG_MS:
        return "a duration such as 250ms, 30s, 5m or 1h";
    case CFG_SEC:
        return "a duration of whole seconds such as 1s, 30s or 5m";
    case CFG_BOOL:
        return "on/off, true/false, yes/no or 1/0";
    default:
        return "a value";
    }
}

/* "a, b, c" */
static void cfg_choices_format(const char *const *choices, const char *sep, char *buf, size_t len)
{
    size_t n = 0;

    buf[0] = '\0';
    for (size_t i = 0; choices[i] != NULL && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%s", i ? sep : "", choices[i]);
}

static int cfg_bool_parse(const char *v, int *out)
{
    static const char *const yes[] = {"on", "true", "yes", "1"};
    static const char *const no[] = {"off", "false", "no", "0"};

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

/* v quoted for an error message: at most 64 bytes, control bytes as '?'; "" for secrets. */
static void cfg_value_quote(const struct cfg_key *k, const char *v, char *buf, size_t len)
{
    size_t n = 0, i;

    if (k != NULL && (k->flags & CFG_SECRET)) {
        buf[0] = '\0';
        return;
    }
    n += (size_t)snprintf(buf, len, " (got '");
    for (i = 0; v[i] != '\0' && i < 64 && n + 5 < len; i++)
        buf[n++] = (unsigned char)v[i] < 0x20 || v[i] == 0x7f ? '?' : v[i];
    snprintf(buf + n, len - n, "%s')", v[i] != '\0' ? "..." : "");
}

/* Parse v for key k into cfg. 0, or -1 with the reason in why. The one place a value
 * becomes a field: defaults, the file and the environment all come through here. */
static int cfg_value_set(struct config *cfg, const struct cfg_key *k, const char *v, char *why,
                         size_t whylen)
{
    char *field = (char *)cfg + k->offset;
    char got[96], lo[32], hi[32], list[128];
    uint64_t n = 0;

    cfg_value_quote(k, v, got, sizeof got);
    switch (k->type) {
    case CFG_STR:
    case CFG_CHOICE: {
        size_t len = strlen(v);
        if (k->type == CFG_CHOICE) {
            size_t i;
            for (i = 0; k->choices[i] != NULL && strcasecmp(v, k->choices[i]) != 0; i++)
                ;
            if (k->choices[i] == NULL) {
                cfg_choices_format(k->choices, ", ", list, sizeof list);
                snprintf(why, whylen, "expected one of %s%s", list, got);
                return -1;
            }
            v = k->choices[i];
            len = strlen(v);
        }
        if (len >= k->size) {
            snprintf(why, whylen, "value too long: %zu bytes, at most %zu", len, k->size - 1);
            return -1;
        }
        if (k->check != NULL && k->check(v, why, whylen) < 0) {
            size_t used = strlen(why);
            snprintf(why + used, whylen - used, "%s", got);
            return -1;
        }
        memset(field, 0, k->size);
        memcpy(field, v, len);
        return 0;
    }
    case CFG_ENUM: {
        int i;
        for (i = 0; k->choices[i] != NULL && strcasecmp(v, k->choices[i]) != 0; i++)
            ;
        if (k->choices[i] == NULL) {
            cfg_choices_format(k->choices, ", ", list, sizeof list);
            snprintf(why, whylen, "expected one of %s%s", list, got);
            return -1;
        }
        memcpy(field, &i, sizeof i);
        return 0;
    }
    case CFG_BOOL: {
        int b;
        if (cfg_bool_parse(v, &b) < 0) {
            snprintf(why, whylen, "expected %s%s", cfg_type_expect(k->type), got);
            return -1;
        }
        memcpy(field, &b, sizeof b);
        return 0;
    }
    case CFG_U32:
    case CFG_SIZE:
    case CFG_MS:
    case CFG_SEC: {
        int rc;
        if (k->type == CFG_U32) /* digits only: a bare size is the same number */
            rc = v[strspn(v, "0123456789")] == '\0' ? parse_size(v, &n) : -1;
        else if (k->type == CFG_SIZE)
            rc = parse_size(v, &n);
        else
            rc = parse_duration_ms(v, &n);
        if (rc < 0) {
            snprintf(why, whylen, "expected %s%s", cfg_type_expect(k->type), got);
            return -1;
        }
        if (k->type == CFG_SEC) {
            if (n % SEC_MS != 0) {
                snprintf(why, whylen, "expected %s%s", cfg_type_expect(k->type), got);
                return -1;
            }
            n /= SEC_MS;
        }
        if (n < k->min || n > k->max) {
            cfg_num_format(k->type, k->min, lo, sizeof lo);
            cfg_num_format(k->type, k->max, hi, sizeof hi);
            snprintf(why, whylen, "out of range: must be between %s and %s%s", lo, hi, got);
            return -1;
        }
        if (k->size == sizeof(uint32_t)) {
            uint32_t u = (uint32_t)n;
            memcpy(field, &u, sizeof u);
        } else {
            memcpy(field, &n, sizeof n);
        }
        return 0;
    }
    }
    return cfg_why(why, whylen, "unsupported key type");
}

/* --- lookup --- */

static const struct cfg_key *cfg_key_find(const char *section, const char *name)
{
    for (size_t i = 0; i < CFG_NKEYS; i++) {
        if (strcmp(cfg_keys[i].section, section) == 0 && strcmp(cfg_keys[i].name, name) == 0)
            return &cfg_keys[i];
    }
    return NULL;
}

static int cfg_section_known(const char *section)
{
    for (size_t i = 0; i < sizeof cfg_sections / sizeof cfg_sections[0]; i++) {
        if (strcmp(cfg_sections[i], section) == 0)
            return 1;
    }
    return 0;
}

/* "WSGATE_SECTION_NAME" for k into buf. */
static void cfg_env_name(const struct cfg_key *k, char *buf, size_t len)
{
    int n = snprintf(buf, len, "WSGATE_%s_%s", k->section, k->name);
    for (int i = 0; i < n && (size_t)i < len; i++)
        buf[i] = (char)toupper((unsigned char)buf[i]);
}

/* --- loading --- */

enum cfg_src { CFG_SRC_DEFAULT = 0, CFG_SRC_FILE, CFG_SRC_ENV };

struct cfg_origin {
    enum cfg_src src; /* where the key's current value came from */
    int line;         /* CFG_SRC_FILE: its line */
};

struct cfg_load {
    struct config cfg;                   /* being built; copied out only when valid */
    const char *path;                    /* borrowed: the config file, or NULL */
    FILE *err;                           /* borrowed: where error lines go */
    int lineno;                          /* file line being parsed (counted by the reader) */
    int errors;                          /* error lines written */
    int bad_section;                     /* after a broken "[..." line: skip its keys */
    char section[64];                    /* current section as the reader saw it */
    struct cfg_origin origin[CFG_NKEYS]; /* per key, indexed like cfg_keys */
};

/* One error line: "<where>: key 'section.name': reason". at == NULL: the current file
 * line; label NULL: a line-level error without a key. */
static void cfg_error(struct cfg_load *ld, const struct cfg_key *k, const struct cfg_origin *at,
                      const char *label, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void cfg_error(struct cfg_load *ld, const struct cfg_key *k, const struct cfg_origin *at,
                      const char *label, const char *fmt, ...)
{
    char line[1024], env[96];
    int n;
    va_list ap;

    if (at != NULL && at->src == CFG_SRC_ENV) {
        cfg_env_name(k, env, sizeof env);
        n = snprintf(line, sizeof line, "env %s: ", env);
    } else if (at != NULL && at->src == CFG_SRC_DEFAULT) {
        n = snprintf(line, sizeof line, "defaults: ");
    } else {
        n = snprintf(line, sizeof line, "%s:%d: ", ld->path, at != NULL ? at->line : ld->lineno);
    }
    if (label != NULL)
        n += snprintf(line + n, sizeof line - (size_t)n, "key '%s': ", label);
    else if (k != NULL)
        n += snprintf(line + n, sizeof line - (size_t)n, "key '%s.%s': ", k->section, k->name);
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(ld->err, "%s\n", line);
    ld->errors++;
}

/* Where an inline comment (';' after a blank) or one of chars starts in s; like inih's
 * find_chars_or_comment, so both agree on where a value ends. */
static const char *cfg_find_chars_or_comment(const char *s, const char *chars)
{
    int was_space = 0;

    while (*s && (chars == NULL || strchr(chars, *s) == NULL) && !(was_space && *s == ';')) {
        was_space = isspace((unsigned char)*s);
        s++;
    }
    return s;
}

struct cfg_file {
    FILE *f;             /* borrowed: opened and closed by config_load */
    char *buf;           /* owned: getline buffer, freed by config_load */
    size_t cap;          /* of buf */
    struct cfg_load *ld; /* borrowed */
};

/* For an over-long line: name the key it sets if that can be seen, and its variable. */
static void cfg_long_line_report(struct cfg_load *ld, const char *s, size_t len, size_t limit)
{
    char name[64], env[96];
    const char *eq = memchr(s, '=', len);
    const struct cfg_key *k = NULL;

    if (eq != NULL && !ld->bad_section) {
        size_t n = (size_t)(eq - s);
        while (n > 0 && isspace((unsigned char)s[n - 1]))
            n--;
        if (n < sizeof name) {
            memcpy(name, s, n);
            name[n] = '\0';
            k = cfg_key_find(ld->section, name);
        }
    }
    if (k != NULL) {
        cfg_env_name(k, env, sizeof env);
        cfg_error(ld, k, NULL, NULL,
                  "line is %zu characters, over the %zu a config file line may have; "
                  "set this value in the environment (%s) instead",
                  len, limit, env);
    } else {
        cfg_error(ld, NULL, NULL, NULL,
                  "line is %zu characters, over the %zu a config file line may have", len, limit);
    }
}

/* ini_reader: fgets-like, one whole line per call, counting lines. Lines inih would
 * mangle or reject are reported here and handed to inih as an empty line. */
static char *cfg_file_gets(char *str, int num, void *stream)
{
    struct cfg_file *cf = stream;
    struct cfg_load *ld = cf->ld;
    size_t limit = num > 3 && (size_t)(num - 3) < CFG_LINE_MAX ? (size_t)(num - 3) : CFG_LINE_MAX;
    ssize_t got = getline(&cf->buf, &cf->cap, cf->f);

    if (got < 0 || num < 2)
        return NULL;
    ld->lineno++;
    char *s = cf->buf;
    size_t len = (size_t)got;
    while (len > 0 && (s[len - 1] == '\n' || s[len - 1] == '\r'))
        len--;
    s[len] = '\0';
    strcpy(str, "\n");
    if (memchr(s, '\0', len) != NULL) {
        cfg_error(ld, NULL, NULL, NULL, "line contains a NUL byte");
        return str;
    }
    if (len > limit) {
        cfg_long_line_report(ld, s, len, limit);
        return str;
    }
    if (ld->lineno == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
        s += 3; /* UTF-8 byte order mark */
        len -= 3;
    }
    while (isspace((unsigned char)*s)) {
        s++;
        len--;
    }
    while (len > 0 && isspace((unsigned char)s[len - 1]))
        s[--len] = '\0';

    if (s[0] == '\0' || s[0] == ';' || s[0] == '#') {
        /* blank or comment: nothing for inih to do */
    } else if (s[0] == '[') {
        const char *end = cfg_find_chars_or_comment(s + 1, "]");
        const char *after = end[0] == ']' ? end + 1 : end;
        while (isspace((unsigned char)*after))
            after++;
        if (end[0] != ']' || (after[0] != '\0' && after[0] != ';')) {
            cfg_error(ld, NULL, NULL, NULL, "syntax error: expected '[section]'");
            ld->bad_section = 1;
            return str;
        }
        size_t n = (size_t)(end - s - 1);
        if (n >= sizeof ld->section)
            n = sizeof ld->section - 1;
        memcpy(ld->section, s + 1, n);
        ld->section[n] = '\0';
        ld->bad_section = 0;
    } else {
        const char *sep = cfg_find_chars_or_comment(s, "=:");
        if ((*sep != '=' && *sep != ':') || sep == s) {
            cfg_error(ld, NULL, NULL, NULL, "syntax error: expected 'key = value'");
            return str;
        }
    }
    memcpy(str, s, len);
    memcpy(str + len, "\n", 2);
    return str;
}

/* ini_handler: one "name = value" of the file. Always 1: errors are reported here. */
static int cfg_on_pair(void *user, const char *section, const char *name, const char *value)
{
    struct cfg_load *ld = user;
    char label[160], why[512];

    if (ld->bad_section)
        return 1;
    snprintf(label, sizeof label, "%s%s%s", section, section[0] ? "." : "", name);
    if (section[0] == '\0') {
        cfg_error(ld, NULL, NULL, label, "key outside any [section]");
        return 1;
    }
    const struct cfg_key *k = cfg_key_find(section, name);
    if (k == NULL) {
        if (cfg_section_known(section))
            cfg_error(ld, NULL, NULL, label, "unknown key");
        else
            cfg_error(ld, NULL, NULL, label, "unknown section '%s'", section);
        return 1;
    }
    struct cfg_origin *o = &ld->origin[k - cfg_keys];
    if (o->src == CFG_SRC_FILE) {
        cfg_error(ld, k, NULL, NULL, "set twice (first on line %d)", o->line);
        return 1;
    }
    o->src = CFG_SRC_FILE;
    o->line = ld->lineno;
    if (cfg_value_set(&ld->cfg, k, value, why, sizeof why) < 0)
        cfg_error(ld, k, NULL, NULL, "%s", why);
    return 1;
}

static void cfg_file_load(struct cfg_load *ld)
{
    struct cfg_file cf = {.ld = ld};

    cf.f = fopen(ld->path, "r");
    if (cf.f == NULL) {
        fprintf(ld->err, "%s: cannot open config file: %s\n", ld->path, strerror(errno));
        ld->errors++;
        return;
    }
    int before = ld->errors;
    int rc = ini_parse_stream(cfg_file_gets, &cf, cfg_on_pair, ld);
    if (ferror(cf.f)) {
        fprintf(ld->err, "%s: cannot read config file: %s\n", ld->path, strerror(errno));
        ld->errors++;
    } else if (rc == -2) {
        fprintf(ld->err, "%s: out of memory while parsing\n", ld->path);
        ld->errors++;
    } else if (rc != 0 && ld->errors == before) {
        /* inih saw an error our reader did not: still never pass it silently. */
        struct cfg_origin at = {CFG_SRC_FILE, rc};
        cfg_error(ld, NULL, &at, NULL, "syntax error");
    }
    free(cf.buf);
    fclose(cf.f);
}

/* "env WSGATE_SECTION_NAME: key 'section.name': unknown ..." for a variable that names
 * no key. Sections hold no '_', so the first '_' after WSGATE_ ends the section. */
static void cfg_env_unknown(struct cfg_load *ld, const char *var, size_t nlen)
{
    char name[128], label[128], section[64];
    size_t l = 0, sl = 0;
    int dot = 0;

    for (size_t i = 0; i < nlen && i + 1 < sizeof name; i++) {
        unsigned char c = (unsigned char)var[i];
        name[i] = c < 0x20 || c == 0x7f ? '?' : (char)c;
        name[i + 1] = '\0';
    }
    for (size_t i = 7; i < nlen && l + 1 < sizeof label; i++) {
        unsigned char c = (unsigned char)tolower((unsigned char)var[i]);
        if (c < 0x20 || c == 0x7f)
            c = '?';
        if (c == '_' && !dot) {
            dot = 1;
            c = '.';
        } else if (!dot && sl + 1 < sizeof section) {
            section[sl++] = (char)c;
        }
        label[l++] = (char)c;
    }
    label[l] = '\0';
    section[sl] = '\0';
    if (dot && cfg_section_known(section))
        fprintf(ld->err, "env %s: key '%s': unknown key\n", name, label);
    else
        fprintf(ld->err, "env %s: key '%s': unknown section '%s'\n", name, label, section);
    ld->errors++;
}

static void cfg_env_load(struct cfg_load *ld, char *const *envp)
{
    char env[96], why[512];

    for (size_t e = 0; envp != NULL && envp[e] != NULL; e++) {
        const char *var = envp[e];
        const char *eq = strchr(var, '=');
        if (strncmp(var, "WSGATE_", 7) != 0 || eq == NULL)
            continue;
        size_t nlen = (size_t)(eq - var);
        int ignored = 0;
        for (size_t i = 0; i < sizeof cfg_env_ignored / sizeof cfg_env_ignored[0]; i++) {
            if (strlen(cfg_env_ignored[i]) == nlen && memcmp(var, cfg_env_ignored[i], nlen) == 0)
                ignored = 1;
        }
        if (ignored)
            continue;
        const struct cfg_key *k = NULL;
        for (size_t i = 0; i < CFG_NKEYS && k == NULL; i++) {
            cfg_env_name(&cfg_keys[i], env, sizeof env);
            if (strlen(env) == nlen && memcmp(var, env, nlen) == 0)
                k = &cfg_keys[i];
        }
        if (k == NULL) {
            cfg_env_unknown(ld, var, nlen);
            continue;
        }
        struct cfg_origin *o = &ld->origin[k - cfg_keys];
        o->src = CFG_SRC_ENV;
        o->line = 0;
        if (cfg_value_set(&ld->cfg, k, eq + 1, why, sizeof why) < 0)
            cfg_error(ld, k, o, NULL, "%s", why);
    }
}

/* Which of two keys' settings to blame for a conflict: the environment over the file
 * over the defaults; in the file, the later line. */
static const struct cfg_key *cfg_blame(const struct cfg_load *ld, const struct cfg_key *a,
                                       const struct cfg_key *b)
{
    const struct cfg_origin *oa = &ld->origin[a - cfg_keys], *ob = &ld->origin[b - cfg_keys];

    if (oa->src != ob->src)
        return oa->src > ob->src ? a : b;
    return oa->line >= ob->line ? a : b;
}

/* Rules between keys, after the file and the environment. */
static void cfg_cross_check(struct cfg_load *ld)
{
    const struct config *c = &ld->cfg;

    if (c->ping_interval_ms > 0 && c->idle_timeout_ms <= c->ping_interval_ms) {
        const struct cfg_key *ping = cfg_key_find("websocket", "ping_interval");
        const struct cfg_key *idle = cfg_key_find("websocket", "idle_timeout");
        const struct cfg_key *k = cfg_blame(ld, idle, ping);
        char i[32], p[32];
        cfg_num_format(CFG_MS, c->idle_timeout_ms, i, sizeof i);
        cfg_num_format(CFG_MS, c->ping_interval_ms, p, sizeof p);
        cfg_error(ld, k, &ld->origin[k - cfg_keys], NULL,
                  "websocket.idle_timeout (%s) must be greater than websocket.ping_interval "
                  "(%s) when pings are on",
                  i, p);
    }
}

void config_defaults(struct config *cfg)
{
    char why[512];

    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < CFG_NKEYS; i++) {
        int rc = cfg_value_set(cfg, &cfg_keys[i], cfg_keys[i].def, why, sizeof why);
        /* A default the table itself rejects is a bug in this file (test_config). */
        if (rc < 0) {
            fprintf(stderr, "config: built-in default of %s.%s is invalid: %s\n",
                    cfg_keys[i].section, cfg_keys[i].name, why);
            abort();
        }
    }
}

int config_load(struct config *cfg, const char *path, char *const *envp, FILE *err)
{
    /* Built aside and copied out only when valid: on error *cfg is left untouched. */
    struct cfg_load *ld = calloc(1, sizeof *ld);

    if (err == NULL)
        err = stderr;
    if (ld == NULL) {
        fprintf(err, "config: out of memory\n");
        return -1;
    }
    ld->path = path;
    ld->err = err;
    config_defaults(&ld->cfg);
    if (path != NULL)
        cfg_file_load(ld);
    cfg_env_load(ld, envp);
    cfg_cross_check(ld);
    int rc = ld->errors == 0 ? 0 : -1;
    if (rc == 0)
        *cfg = ld->cfg;
    free(ld);
    return rc;
}

/* --- gateway.conf.example --- */

static const char cfg_file_header[] =
    "; wsgate configuration: every key with its built-in default.\n"
    "; This file mirrors the defaults compiled into wsgate (it is the output of\n"
    "; config_write_defaults() in src/config.c); wsgate without -c runs exactly so.\n"
    "; Every key can be overridden by an environment variable WSGATE_<SECTION>_<KEY>,\n"
    "; upper-cased, e.g. WSGATE_BROKER_TYPE=redis-list or WSGATE_SERVER_MAX_MESSAGE_SIZE=4m;\n"
    "; the environment wins over the file. `wsgate --check-config` validates both.\n"
    ";\n"
    "; Durations: 250ms, 30s, 5m, 1h (a bare number is seconds). Sizes: 512, 64k, 1m\n"
    "; (KiB/MiB; a bare number is bytes). Booleans: on/off, true/false, yes/no, 1/0.\n"
    "; A ';' after a blank starts a comment. A line may have at most 197 characters\n"
    "; (a libinih limit): a longer value (a long URL, broker list or secret) must come\n"
    "; from the environment. Secrets are better kept in the environment anyway.\n";

static void cfg_key_help_write(FILE *out, const struct cfg_key *k)
{
    char lo[32], hi[32], list[128];

    fprintf(out, "; %s", k->help);
    switch (k->type) {
    case CFG_CHOICE:
    case CFG_ENUM:
        cfg_choices_format(k->choices, " | ", list, sizeof list);
        fprintf(out, " One of: %s.", list);
        break;
    case CFG_BOOL:
        fprintf(out, " Boolean.");
        break;
    case CFG_U32:
    case CFG_SIZE:
    case CFG_MS:
    case CFG_SEC:
        cfg_num_format(k->type, k->min, lo, sizeof lo);
        cfg_num_format(k->type, k->max, hi, sizeof hi);
        fprintf(out, " %s, %s..%s.",
                k->type == CFG_U32    ? "Integer"
                : k->type == CFG_SIZE ? "Size"
                                      : "Duration",
                lo, hi);
        break;
    case CFG_STR:
        break;
    }
    fputc('\n', out);
}

void config_write_defaults(FILE *out)
{
    const char *section = NULL;

    fputs(cfg_file_header, out);
    for (size_t i = 0; i < CFG_NKEYS; i++) {
        const struct cfg_key *k = &cfg_keys[i];
        if (section == NULL || strcmp(section, k->section) != 0) {
            section = k->section;
            fprintf(out, "\n[%s]\n", section);
        }
        cfg_key_help_write(out, k);
        fprintf(out, "%s =%s%s\n", k->name, k->def[0] ? " " : "", k->def);
    }
}
