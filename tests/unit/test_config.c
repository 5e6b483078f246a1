/* test_config.c — unit tests of src/config.c and src/config_keys.c: defaults against a
 * fixed copy of the documented keys (rows[] below), INI parsing with line numbers in
 * errors, environment overrides, validation, config_write_defaults and
 * gateway.conf.example.
 * Does NOT start the gateway. Writes temp files under /tmp (mkstemp) and removes them.
 * Run from the repository root (scripts/run-tests.sh does) for the example-file test.
 * Single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka.h needs the four headers above first */
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

/* --- helpers --- */

struct run {
    int rc;            /* config_load's return */
    struct config cfg; /* what it loaded (defaults-filled first) */
    char *err;         /* owned: everything written to err */
    char path[64];     /* the temp file, already removed; "" without a file */
};

/* Write text to a fresh /tmp file (name into path); returns path. */
static const char *tmp_write(char path[64], const char *text, size_t len)
{
    strcpy(path, "/tmp/wsgate-test-conf-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    close(fd);
    return path;
}

/* config_load on text (NULL: no file) and envp; the struct is owned by the caller. */
static struct run *load_n(const char *text, size_t len, char *const *envp)
{
    struct run *r = calloc(1, sizeof *r);
    size_t errlen = 0;
    assert_non_null(r);
    FILE *err = open_memstream(&r->err, &errlen);
    assert_non_null(err);
    config_defaults(&r->cfg);
    if (text != NULL)
        tmp_write(r->path, text, len);
    r->rc = config_load(&r->cfg, text != NULL ? r->path : NULL, envp, err);
    fclose(err);
    if (text != NULL)
        unlink(r->path);
    return r;
}

static struct run *load(const char *text, char *const *envp)
{
    return load_n(text, text != NULL ? strlen(text) : 0, envp);
}

static void run_free(struct run *r)
{
    free(r->err);
    free(r);
}

static int lines_count(const char *s)
{
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* Assert that err holds exactly this line; "%P" in fmt... is not used: fmt gets the
 * file path as its first argument when it starts with "%s:". */
static void assert_line(const struct run *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void assert_line(const struct run *r, const char *fmt, ...)
{
    char want[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(want, sizeof want, fmt, ap);
    va_end(ap);
    size_t wl = strlen(want);
    for (const char *p = r->err; *p;) {
        const char *nl = strchr(p, '\n');
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        if (l == wl && memcmp(p, want, wl) == 0)
            return;
        p += l + (nl != NULL);
    }
    /* cmocka cuts long messages (and their newline): keep them short */
    fail_msg("missing error line:\n  %.300s\ngot:\n%.500s", want, r->err);
}

static void assert_ok(const struct run *r)
{
    if (r->rc != 0 || r->err[0] != '\0')
        fail_msg("config_load rc=%d, errors:\n%.600s", r->rc, r->err);
}

/* --- every documented key with its default, an oracle independent of config_keys.c --- */

struct row {
    const char *section, *key;
    const char *def;  /* default as written in the table */
    const char *alt;  /* another valid value */
    size_t off, size; /* the struct config field */
    int is_str;       /* field is a string: alt is stored as written */
    uint64_t num;     /* else the number alt means in the field's unit */
};

#define F(f) offsetof(struct config, f), sizeof(((struct config *)0)->f)

static const struct row rows[] = {
    {"server", "listen", "0.0.0.0:8080", "127.0.0.1:0", F(listen), 1, 0},
    {"server", "backlog", "511", "128", F(backlog), 0, 128},
    {"server", "max_connections", "10000", "5", F(max_connections), 0, 5},
    {"server", "max_http_connections", "1024", "7", F(max_http_connections), 0, 7},
    {"server", "max_header_size", "8k", "16k", F(max_header_size), 0, 16384},
    {"server", "max_message_size", "1m", "2m", F(max_message_size), 0, 2097152},
    {"server", "handshake_timeout", "10s", "3s", F(handshake_timeout_ms), 0, 3000},
    {"server", "keepalive_timeout", "60s", "2m", F(keepalive_timeout_ms), 0, 120000},
    {"server", "drain_timeout", "10s", "1500ms", F(drain_timeout_ms), 0, 1500},
    {"server", "max_pipeline", "64", "8", F(max_pipeline), 0, 8},
    {"server", "request_timeout", "30s", "5s", F(request_timeout_ms), 0, 5000},
    {"server", "write_timeout", "30s", "2s", F(write_timeout_ms), 0, 2000},
    {"server", "linger_timeout", "2s", "500ms", F(linger_timeout_ms), 0, 500},
    {"server", "max_connections_per_ip", "0", "20", F(max_connections_per_ip), 0, 20},
    {"server", "max_handshakes_per_second_per_ip", "0", "5", F(max_handshakes_per_second_per_ip), 0,
     5},
    {"server", "allowed_origins", "*", "https://a.example,https://b.example:8443",
     F(allowed_origins), 1, 0},
    {"server", "cors_origins", "", "https://a.example", F(cors_origins), 1, 0},
    {"server", "trusted_proxies", "", "10.0.0.0/8,::1", F(trusted_proxies), 1, 0},
    {"server", "demo", "off", "on", F(demo), 0, 1},
    {"server", "log_level", "info", "debug", F(log_level), 0, LOG_LEVEL_DEBUG},
    {"websocket", "ping_interval", "30s", "10s", F(ping_interval_ms), 0, 10000},
    {"websocket", "idle_timeout", "75s", "100", F(idle_timeout_ms), 0, 100000},
    {"websocket", "max_send_buffer", "1m", "64k", F(max_send_buffer), 0, 65536},
    {"websocket", "close_timeout", "5s", "1s", F(close_timeout_ms), 0, 1000},
    {"websocket", "frame_type", "auto", "binary", F(frame_type), 0, MSG_FRAME_BINARY},
    {"websocket", "upstream", "off", "on", F(upstream), 0, 1},
    {"websocket", "max_topics", "32", "4", F(max_topics), 0, 4},
    {"websocket", "max_inflight", "64", "16", F(max_inflight), 0, 16},
    {"websocket", "max_upstream_inflight", "64", "8", F(max_upstream_inflight), 0, 8},
    {"websocket", "max_fragments", "1024", "10", F(max_fragments), 0, 10},
    {"broker", "type", "memory", "redis-list", F(broker_type), 1, 0},
    {"broker", "prefix", "ws", "gw1", F(prefix), 1, 0},
    {"broker", "ttl", "1h", "10m", F(ttl_ms), 0, 600000},
    {"broker", "max_queue", "1000", "50", F(max_queue), 0, 50},
    {"broker", "retry_after", "1s", "5s", F(retry_after_s), 0, 5},
    {"broker", "memory_max_bytes", "256m", "64m", F(memory_max_bytes), 0, 67108864},
    {"redis", "url", "redis://127.0.0.1:6379/0", "redis://:pw@10.0.0.1:6380/2", F(redis_url), 1, 0},
    {"redis", "timeout", "2s", "500ms", F(redis_timeout_ms), 0, 500},
    {"redis", "ping_interval", "1s", "3s", F(redis_ping_interval_ms), 0, 3000},
    {"redis", "backoff_max", "5s", "30s", F(redis_backoff_max_ms), 0, 30000},
    {"redis", "batch", "64", "16", F(redis_batch), 0, 16},
    {"nats", "url", "nats://127.0.0.1:4222", "nats://a:4222,nats://b:4223", F(nats_url), 1, 0},
    {"nats", "stream", "WSRECV", "STREAM_2", F(nats_stream), 1, 0},
    {"nats", "token", "", "s3cret", F(nats_token), 1, 0},
    {"nats", "creds", "", "/etc/wsgate/nats.creds", F(nats_creds), 1, 0},
    {"nats", "ack_wait", "1h", "1m", F(nats_ack_wait_ms), 0, 60000},
    {"nats", "consumer_pull", "auto", "always", F(nats_pull), 0, 1},
    {"nats", "timeout", "2s", "5s", F(nats_timeout_ms), 0, 5000},
    {"auth", "push_tokens", "", "t1,t2", F(push_tokens), 1, 0},
    {"auth", "push_tokens_file", "", "/etc/wsgate/tokens", F(push_tokens_file), 1, 0},
    {"auth", "jwt_secret", "", "s3cret", F(jwt_secret), 1, 0},
    {"auth", "jwt_public_key_file", "", "/etc/wsgate/jwt.pem", F(jwt_public_key_file), 1, 0},
    {"auth", "metrics_token", "", "m3trics", F(metrics_token), 1, 0},
    {"auth", "jwt_leeway", "60s", "5s", F(jwt_leeway_ms), 0, 5000},
    {"auth", "jwt_audience", "", "wsgate", F(jwt_audience), 1, 0},
    {"auth", "jwt_issuer", "", "https://issuer.example", F(jwt_issuer), 1, 0},
    {"kafka", "brokers", "127.0.0.1:9092", "k1:9092,k2.example:9093", F(kafka_brokers), 1, 0},
    {"kafka", "group", "wsgate", "gw-group.1", F(kafka_group), 1, 0},
    {"kafka", "node", "", "gw-1", F(kafka_node), 1, 0},
    {"kafka", "timeout", "5s", "2s", F(kafka_timeout_ms), 0, 2000},
    {"kafka", "replay_delay", "2s", "0", F(kafka_replay_delay_ms), 0, 0},
    {"kafka", "max_buffered", "64m", "1m", F(kafka_max_buffered), 0, 1048576},
    {"kafka", "fetch_wait", "500ms", "10ms", F(kafka_fetch_wait_ms), 0, 10},
};
#define NROWS (sizeof rows / sizeof rows[0])

static uint64_t field_num(const struct config *c, const struct row *w)
{
    const char *p = (const char *)c + w->off;
    if (w->size == 4) {
        uint32_t v;
        memcpy(&v, p, 4);
        return v;
    }
    uint64_t v;
    assert_int_equal(w->size, 8);
    memcpy(&v, p, 8);
    return v;
}

/* Only field w differs from the defaults, and it holds w's alt value. */
static void assert_only_field_set(const struct config *got, const struct row *w)
{
    struct config def;
    config_defaults(&def);
    const unsigned char *a = (const void *)got, *b = (const void *)&def;
    for (size_t i = 0; i < sizeof def; i++) {
        if ((i < w->off || i >= w->off + w->size) && a[i] != b[i])
            fail_msg("%s.%s changed byte %zu outside its field", w->section, w->key, i);
    }
    if (w->is_str)
        assert_string_equal((const char *)got + w->off, w->alt);
    else if (field_num(got, w) != w->num)
        fail_msg("%s.%s = %llu, want %llu", w->section, w->key,
                 (unsigned long long)field_num(got, w), (unsigned long long)w->num);
}

/* --- defaults --- */

static void test_defaults_match_key_table(void **state)
{
    struct config c;
    (void)state;
    memset(&c, 0x5a, sizeof c);
    config_defaults(&c);

    assert_int_equal(NROWS, 63);
    assert_string_equal(c.listen, "0.0.0.0:8080");
    assert_int_equal(c.backlog, 511);
    assert_int_equal(c.max_connections, 10000);
    assert_int_equal(c.max_http_connections, 1024);
    assert_int_equal(c.max_header_size, 8 * 1024);
    assert_int_equal(c.max_message_size, 1024 * 1024);
    assert_int_equal(c.handshake_timeout_ms, 10000);
    assert_int_equal(c.keepalive_timeout_ms, 60000);
    assert_int_equal(c.drain_timeout_ms, 10000);
    assert_int_equal(c.max_pipeline, 64);
    assert_int_equal(c.log_level, LOG_LEVEL_INFO);
    assert_int_equal(c.ping_interval_ms, 30000);
    assert_int_equal(c.idle_timeout_ms, 75000);
    assert_int_equal(c.max_send_buffer, 1024 * 1024);
    assert_int_equal(c.close_timeout_ms, 5000);
    assert_int_equal(c.frame_type, MSG_FRAME_AUTO);
    assert_int_equal(c.upstream, 0);
    assert_int_equal(c.max_topics, 32);
    assert_int_equal(c.max_inflight, 64);
    assert_int_equal(c.max_upstream_inflight, 64);
    assert_string_equal(c.broker_type, "memory");
    assert_string_equal(c.prefix, "ws");
    assert_int_equal(c.ttl_ms, 3600000);
    assert_int_equal(c.max_queue, 1000);
    assert_int_equal(c.retry_after_s, 1);
    assert_string_equal(c.redis_url, "redis://127.0.0.1:6379/0");
    assert_int_equal(c.redis_timeout_ms, 2000);
    assert_int_equal(c.redis_ping_interval_ms, 1000);
    assert_int_equal(c.redis_backoff_max_ms, 5000);
    assert_int_equal(c.redis_batch, 64);
    assert_string_equal(c.nats_url, "nats://127.0.0.1:4222");
    assert_string_equal(c.nats_stream, "WSRECV");
    assert_string_equal(c.nats_token, "");
    assert_string_equal(c.nats_creds, "");
    assert_int_equal(c.nats_ack_wait_ms, 3600000);
    assert_int_equal(c.nats_pull, 0);
    assert_int_equal(c.nats_timeout_ms, 2000);
    assert_string_equal(c.kafka_brokers, "127.0.0.1:9092");
    assert_string_equal(c.kafka_group, "wsgate");
    assert_string_equal(c.kafka_node, "");
    assert_int_equal(c.kafka_timeout_ms, 5000);
    assert_int_equal(c.kafka_replay_delay_ms, 2000);
    assert_int_equal(c.kafka_max_buffered, 64 * 1024 * 1024);
    assert_int_equal(c.kafka_fetch_wait_ms, 500);

    /* deterministic: padding and string tails are zeroed, whatever was there before */
    struct config d;
    memset(&d, 0xa5, sizeof d);
    config_defaults(&d);
    assert_memory_equal(&c, &d, sizeof c);
}

static void test_load_nothing_is_defaults(void **state)
{
    struct config def;
    char *empty[] = {NULL};
    char *other[] = {"PATH=/usr/bin", "WSGATEX=1",       "wsgate_server_listen=x",
                     "WSGATE_BIN=/x", "WSGATE_TOOLS=/y", NULL};
    (void)state;
    config_defaults(&def);

    struct run *r = load(NULL, NULL);
    assert_ok(r);
    assert_memory_equal(&r->cfg, &def, sizeof def);
    run_free(r);
    r = load(NULL, empty);
    assert_ok(r);
    assert_memory_equal(&r->cfg, &def, sizeof def);
    run_free(r);
    /* unrelated variables, and the test harness's own WSGATE_BIN/WSGATE_TOOLS */
    r = load(NULL, other);
    assert_ok(r);
    assert_memory_equal(&r->cfg, &def, sizeof def);
    run_free(r);
    r = load("", NULL);
    assert_ok(r);
    assert_memory_equal(&r->cfg, &def, sizeof def);
    run_free(r);
}

/* Every key of the table, set alone from a file and from WSGATE_<SECTION>_<KEY>,
 * lands in its own field and nowhere else. */
static void test_every_key_by_file_and_env(void **state)
{
    char text[256], var[256];
    (void)state;

    for (size_t i = 0; i < NROWS; i++) {
        const struct row *w = &rows[i];
        snprintf(text, sizeof text, "[%s]\n%s = %s\n", w->section, w->key, w->alt);
        struct run *r = load(text, NULL);
        assert_ok(r);
        assert_only_field_set(&r->cfg, w);
        run_free(r);

        int n = snprintf(var, sizeof var, "WSGATE_%s_%s", w->section, w->key);
        for (int j = 0; j < n; j++)
            var[j] = (char)(var[j] >= 'a' && var[j] <= 'z' ? var[j] - 32 : var[j]);
        snprintf(var + n, sizeof var - (size_t)n, "=%s", w->alt);
        char *env[] = {var, NULL};
        r = load(NULL, env);
        assert_ok(r);
        assert_only_field_set(&r->cfg, w);
        run_free(r);
    }
}

/* --- file parsing --- */

static void test_file_values_and_layout(void **state)
{
    const char *text = "\xEF\xBB\xBF; a comment\r\n"
                       "# another comment\r\n"
                       "\r\n"
                       "[server]\r\n"
                       "  listen = [::1]:0   ; inline comment\r\n"
                       "\tmax_message_size=64m\r\n"
                       "log_level = WARN\r\n"
                       "[websocket]\n"
                       "    upstream = Yes\n"
                       "    frame_type = text\n"
                       "    ping_interval = 0\n"
                       "    idle_timeout = 250ms\n"
                       "[broker]\n"
                       "type = redis-pubsub\n"
                       "retry_after = 2000ms\n"
                       "[server]\n"
                       "backlog: 16\n"
                       "[nats]\n"
                       "token =\n"
                       "creds = /path/with spaces;semi#hash\n";
    (void)state;

    struct run *r = load(text, NULL);
    assert_ok(r);
    assert_string_equal(r->cfg.listen, "[::1]:0");
    assert_int_equal(r->cfg.max_message_size, 64 * 1024 * 1024);
    assert_int_equal(r->cfg.log_level, LOG_LEVEL_WARN);
    assert_int_equal(r->cfg.upstream, 1);
    assert_int_equal(r->cfg.frame_type, MSG_FRAME_TEXT);
    assert_int_equal(r->cfg.ping_interval_ms, 0);
    assert_int_equal(r->cfg.idle_timeout_ms, 250);
    assert_string_equal(r->cfg.broker_type, "redis-pubsub");
    assert_int_equal(r->cfg.retry_after_s, 2);
    assert_int_equal(r->cfg.backlog, 16);
    assert_string_equal(r->cfg.nats_token, "");
    assert_string_equal(r->cfg.nats_creds, "/path/with spaces;semi#hash");
    run_free(r);
}

static void test_bool_spellings(void **state)
{
    static const struct {
        const char *v;
        int want;
    } b[] = {{"on", 1}, {"off", 0}, {"true", 1}, {"false", 0}, {"yes", 1},
             {"no", 0}, {"1", 1},   {"0", 0},    {"ON", 1},    {"False", 0}};
    char text[128];
    (void)state;

    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) {
        snprintf(text, sizeof text, "[websocket]\nupstream = %s\n", b[i].v);
        struct run *r = load(text, NULL);
        assert_ok(r);
        assert_int_equal(r->cfg.upstream, b[i].want);
        run_free(r);
    }
    struct run *r = load("[websocket]\nupstream = maybe\n", NULL);
    assert_int_equal(r->rc, -1);
    assert_line(r,
                "%s:2: key 'websocket.upstream': expected on/off, true/false, yes/no or 1/0 "
                "(got 'maybe')",
                r->path);
    run_free(r);
}

static void test_error_unknown_key_line(void **state)
{
    const char *text = "; wsgate\n"
                       "\n"
                       "[server]\n"
                       "listen = 127.0.0.1:1\n"
                       "listne = 127.0.0.1:2\n";
    (void)state;

    struct run *r = load(text, NULL);
    assert_int_equal(r->rc, -1);
    assert_line(r, "%s:5: key 'server.listne': unknown key", r->path);
    assert_int_equal(lines_count(r->err), 1);
    run_free(r);
}

static void test_error_unknown_section(void **state)
{
    const char *text = "[server]\n"
                       "backlog = 5\n"
                       "[servr]\n"
                       "listen = 127.0.0.1:1\n"
                       "backlog = 7\n"
                       "[server]\n"
                       "nope = 1\n";
    (void)state;

    struct run *r = load(text, NULL);
    assert_int_equal(r->rc, -1);
    assert_line(r, "%s:4: key 'servr.listen': unknown section 'servr'", r->path);
    assert_line(r, "%s:5: key 'servr.backlog': unknown section 'servr'", r->path);
    assert_line(r, "%s:7: key 'server.nope': unknown key", r->path);
    assert_int_equal(lines_count(r->err), 3);
    run_free(r);
}

/* Bad values on known lines: every one is reported, each with its line and reason. */
static void test_error_bad_values_all_reported(void **state)
{
    const char *text = "[server]\n"                /* 1 */
                       "backlog = abc\n"           /* 2 */
                       "max_message_size = 65m\n"  /* 3 */
                       "max_header_size = 1g\n"    /* 4 */
                       "handshake_timeout = 10d\n" /* 5 */
                       "listen = 0.0.0.0:8080\n"   /* 6: fine */
                       "max_connections = 0\n"     /* 7 */
                       "backlog = -1\n"            /* 8: twice */
                       "[broker]\n"                /* 9 */
                       "type = rabbitmq\n"         /* 10 */
                       "retry_after = 1500ms\n"    /* 11 */
                       "max_queue = 1k\n"          /* 12 */
                       "[websocket]\n"             /* 13 */
                       "frame_type = utf8\n"       /* 14 */
                       "max_send_buffer = 0\n"     /* 15 */
                       "[server]\n"                /* 16 */
                       "log_level = verbose\n"     /* 17 */
                       "keepalive_timeout = 0\n";  /* 18 */
    (void)state;

    struct run *r = load(text, NULL);
    assert_int_equal(r->rc, -1);
    const char *p = r->path;
    assert_line(r, "%s:2: key 'server.backlog': expected a whole number (got 'abc')", p);
    assert_line(r,
                "%s:3: key 'server.max_message_size': out of range: must be between 1 and 64m "
                "(got '65m')",
                p);
    assert_line(r,
                "%s:4: key 'server.max_header_size': expected a size such as 512, 64k or 1m "
                "(got '1g')",
                p);
    assert_line(r,
                "%s:5: key 'server.handshake_timeout': expected a duration such as 250ms, 30s, "
                "5m or 1h (got '10d')",
                p);
    assert_line(r,
                "%s:7: key 'server.max_connections': out of range: must be between 1 and "
                "10000000 (got '0')",
                p);
    assert_line(r, "%s:8: key 'server.backlog': set twice (first on line 2)", p);
    assert_line(r,
                "%s:10: key 'broker.type': expected one of memory, redis-list, redis-pubsub, "
                "nats, kafka (got 'rabbitmq')",
                p);
    assert_line(r,
                "%s:11: key 'broker.retry_after': expected a duration of whole seconds such as "
                "1s, 30s or 5m (got '1500ms')",
                p);
    assert_line(r, "%s:12: key 'broker.max_queue': expected a whole number (got '1k')", p);
    assert_line(r,
                "%s:14: key 'websocket.frame_type': expected one of auto, text, binary "
                "(got 'utf8')",
                p);
    assert_line(r,
                "%s:15: key 'websocket.max_send_buffer': out of range: must be between 1 and "
                "1024m (got '0')",
                p);
    assert_line(r,
                "%s:17: key 'server.log_level': expected one of error, warn, info, debug "
                "(got 'verbose')",
                p);
    assert_line(r,
                "%s:18: key 'server.keepalive_timeout': out of range: must be between 1ms and "
                "24h (got '0')",
                p);
    assert_int_equal(lines_count(r->err), 13);
    run_free(r);

    /* the limits themselves are accepted */
    r = load("[server]\nmax_message_size = 64m\n[websocket]\nmax_send_buffer = 1\n", NULL);
    assert_ok(r);
    run_free(r);
    r = load("[server]\nmax_message_size = 1\n", NULL);
    assert_ok(r);
    run_free(r);
    r = load("[server]\nmax_message_size = 67108865\n", NULL);
    assert_int_equal(r->rc, -1);
    run_free(r);
}

static void test_error_syntax_lines(void **state)
{
    const char *text = "orphan = 1\n"              /* 1: no section */
                       "[server]\n"                /* 2 */
                       "this line has no equals\n" /* 3 */
                       "[broken\n"                 /* 4 */
                       "listen = bogus\n"          /* 5: skipped, section unknown */
                       "[server] trailing\n"       /* 6 */
                       "[websocket]\n"             /* 7 */
                       "max_topics = 5\n"          /* 8: fine */
                       "= 5\n";                    /* 9 */
    (void)state;

    struct run *r = load(text, NULL);
    assert_int_equal(r->rc, -1);
    assert_line(r, "%s:1: key 'orphan': key outside any [section]", r->path);
    assert_line(r, "%s:3: syntax error: expected 'key = value'", r->path);
    assert_line(r, "%s:4: syntax error: expected '[section]'", r->path);
    assert_line(r, "%s:6: syntax error: expected '[section]'", r->path);
    assert_line(r, "%s:9: syntax error: expected 'key = value'", r->path);
    assert_int_equal(lines_count(r->err), 5);
    assert_int_equal(r->cfg.max_topics, 32); /* failed load: defaults left as they were */
    run_free(r);
}

/* libinih cuts lines at 199 bytes: a longer line is an error naming the line (and the
 * variable to use instead), never a silently truncated value. */
static void test_long_line(void **state)
{
    char pw[256], text[1024];
    (void)state;

    /* "url = redis://:" + pw + "@h:1/0" is 21 + len(pw) characters */
    memset(pw, 'p', sizeof pw);
    pw[176] = '\0';
    snprintf(text, sizeof text, "[redis]\nurl = redis://:%s@h:1/0\n", pw);
    assert_int_equal(strlen(strchr(text, '\n') + 1), 197 + 1);
    struct run *r = load(text, NULL);
    assert_ok(r);
    assert_int_equal(strlen(r->cfg.redis_url), 197 - 6);
    run_free(r);

    pw[176] = 'p';
    pw[177] = '\0';
    snprintf(text, sizeof text,
             "[redis]\n"
             "url = redis://:%s@h:1/0\n"
             "bogus = 1\n",
             pw);
    r = load(text, NULL);
    assert_int_equal(r->rc, -1);
    assert_line(r,
                "%s:2: key 'redis.url': line is 198 characters, over the 197 a config file line "
                "may have; set this value in the environment (WSGATE_REDIS_URL) instead",
                r->path);
    assert_line(r, "%s:3: key 'redis.bogus': unknown key", r->path); /* counting goes on */
    assert_int_equal(lines_count(r->err), 2);
    assert_null(strstr(r->err, "pppp")); /* the secret is not echoed */
    run_free(r);

    /* a long comment line is refused as well (inih would parse its tail as a line) */
    memset(text, 'x', 600);
    text[0] = ';';
    strcpy(text + 600, "\n[server]\nbacklog = 1\n");
    r = load(text, NULL);
    assert_int_equal(r->rc, -1);
    assert_line(r, "%s:1: line is 600 characters, over the 197 a config file line may have",
                r->path);
    assert_int_equal(lines_count(r->err), 1);
    run_free(r);
}

static void test_nul_byte_line(void **state)
{
    static const char text[] = "[server]\nbacklog = 1\0 2\nmax_pipeline = 2\n";
    (void)state;

    struct run *r = load_n(text, sizeof text - 1, NULL);
    assert_int_equal(r->rc, -1);
    assert_line(r, "%s:2: line contains a NUL byte", r->path);
    assert_int_equal(lines_count(r->err), 1);
    run_free(r);
}

static void test_missing_file(void **state)
{
    char path[64], *out = NULL;
    size_t outlen = 0;
    struct config c;
    (void)state;

    tmp_write(path, "", 0);
    unlink(path); /* a name that surely does not exist */
    FILE *err = open_memstream(&out, &outlen);
    assert_int_equal(config_load(&c, path, NULL, err), -1);
    fclose(err);
    char want[256];
    snprintf(want, sizeof want, "%s: cannot open config file: No such file or directory\n", path);
    assert_string_equal(out, want);
    free(out);
}

/* --- environment --- */

static void test_env_wins_over_file(void **state)
{
    const char *text = "[server]\n"
                       "listen = 127.0.0.1:1\n"
                       "max_message_size = 70m\n" /* bad in the file: still an error */
                       "[broker]\n"
                       "type = redis-list\n"
                       "max_queue = 5\n";
    char *env[] = {"WSGATE_BROKER_TYPE=nats", "WSGATE_SERVER_LISTEN=[::]:9", NULL};
    (void)state;

    struct run *r = load(text, env);
    assert_int_equal(r->rc, -1);
    assert_int_equal(lines_count(r->err), 1);
    run_free(r);

    text = "[server]\nlisten = 127.0.0.1:1\n[broker]\ntype = redis-list\nmax_queue = 5\n";
    r = load(text, env);
    assert_ok(r);
    assert_string_equal(r->cfg.broker_type, "nats");
    assert_string_equal(r->cfg.listen, "[::]:9");
    assert_int_equal(r->cfg.max_queue, 5); /* from the file, no variable for it */
    run_free(r);
}

static void test_env_unknown_and_bad(void **state)
{
    char *env[] = {"WSGATE_SERVER_LISTNE=1",
                   "WSGATE_SERVR_LISTEN=1",
                   "WSGATE_NOPE=1",
                   "WSGATE_SERVER_MAX_MESSAGE_SIZE=0",
                   "WSGATE_BROKER_TYPE=Rabbit",
                   "WSGATE_SERVER_BACKLOG=",
                   "WSGATE_SERVER_LISTEN=localhost:80",
                   "WSGATE_BIN=/usr/bin/wsgate",
                   "HOME=/root",
                   NULL};
    (void)state;

    struct run *r = load(NULL, env);
    assert_int_equal(r->rc, -1);
    assert_line(r, "env WSGATE_SERVER_LISTNE: key 'server.listne': unknown key");
    assert_line(r, "env WSGATE_SERVR_LISTEN: key 'servr.listen': unknown section 'servr'");
    assert_line(r, "env WSGATE_NOPE: key 'nope': unknown section 'nope'");
    assert_line(r, "env WSGATE_SERVER_MAX_MESSAGE_SIZE: key 'server.max_message_size': out of "
                   "range: must be between 1 and 64m (got '0')");
    assert_line(r, "env WSGATE_BROKER_TYPE: key 'broker.type': expected one of memory, "
                   "redis-list, redis-pubsub, nats, kafka (got 'Rabbit')");
    assert_line(r, "env WSGATE_SERVER_BACKLOG: key 'server.backlog': expected a whole number "
                   "(got '')");
    assert_line(r, "env WSGATE_SERVER_LISTEN: key 'server.listen': expected host:port with an "
                   "IPv4 address or an [IPv6] address and a port 0-65535, e.g. 0.0.0.0:8080 or "
                   "[::1]:8080 (got 'localhost:80')");
    assert_int_equal(lines_count(r->err), 7);
    run_free(r);

    /* enum values are case-insensitive and stored in their canonical spelling */
    char *env2[] = {"WSGATE_BROKER_TYPE=Redis-List", NULL};
    r = load(NULL, env2);
    assert_ok(r);
    assert_string_equal(r->cfg.broker_type, "redis-list");
    run_free(r);
}

static void test_env_long_value(void **state)
{
    char var[1024];
    (void)state;

    /* longer than a file line can be: fine from the environment */
    int n = snprintf(var, sizeof var, "WSGATE_NATS_TOKEN=");
    memset(var + n, 't', 511);
    var[n + 511] = '\0';
    char *env[] = {var, NULL};
    struct run *r = load(NULL, env);
    assert_ok(r);
    assert_int_equal(strlen(r->cfg.nats_token), 511);
    run_free(r);

    var[n + 511] = 't';
    var[n + 512] = '\0';
    r = load(NULL, env);
    assert_int_equal(r->rc, -1);
    assert_line(r, "env WSGATE_NATS_TOKEN: key 'nats.token': value too long: 512 bytes, at most "
                   "511");
    assert_null(strstr(r->err, "ttt"));
    run_free(r);
}

/* --- validation --- */

static void test_listen_forms(void **state)
{
    static const char *const good[] = {"0.0.0.0:8080", "127.0.0.1:0",    "[::1]:8080",
                                       "[::]:0",       "10.1.2.3:65535", "[fe80::1]:1"};
    static const char *const bad[] = {
        "localhost:8080", "1.2.3.4", "1.2.3.4:",    "1.2.3.4:65536", "1.2.3.4:-1",   "1.2.3.4:80x",
        "[::1]",          "::1:80",  "[::1]80",     "[1.2.3.4]:80",  "256.1.1.1:80", ":80",
        "1.2.3.4:80:1",   "",        "[::1]:8080 x"};
    char text[128];
    (void)state;

    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        snprintf(text, sizeof text, "[server]\nlisten = %s\n", good[i]);
        struct run *r = load(text, NULL);
        if (r->rc != 0)
            fail_msg("listen '%s' refused: %.300s", good[i], r->err);
        assert_string_equal(r->cfg.listen, good[i]);
        run_free(r);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(text, sizeof text, "[server]\nlisten = %s\n", bad[i]);
        struct run *r = load(text, NULL);
        if (r->rc != -1 || strstr(r->err, ":2: key 'server.listen': expected host:port") == NULL)
            fail_msg("listen '%s' accepted or wrong error: %.300s", bad[i], r->err);
        run_free(r);
    }
}

static void test_names_and_urls(void **state)
{
    static const struct {
        const char *section, *key, *value;
        int ok;
    } c[] = {
        {"broker", "prefix", "ws", 1},
        {"broker", "prefix", "A-b_C9", 1},
        {"broker", "prefix", "a.b", 0},
        {"broker", "prefix", "a b", 0},
        {"broker", "prefix", "", 0},
        {"broker", "prefix", "a*", 0},
        {"nats", "stream", "WS_RECV-2", 1},
        {"nats", "stream", "WS.RECV", 0},
        {"nats", "stream", "", 0},
        {"redis", "url", "redis://127.0.0.1:6379/0", 1},
        {"redis", "url", "redis://:p@ss:w@rd@redis.example:6380/15", 1},
        {"redis", "url", "redis://localhost", 1},
        {"redis", "url", "redis://[::1]:6379/1", 1},
        {"redis", "url", "http://127.0.0.1:6379/0", 0},
        {"redis", "url", "redis://", 0},
        {"redis", "url", "redis://h:0/0", 0},
        {"redis", "url", "redis://h:70000/0", 0},
        {"redis", "url", "redis://h:6379/x", 0},
        {"redis", "url", "redis://h:6379/", 0},
        {"nats", "url", "nats://127.0.0.1:4222", 1},
        {"nats", "url", "nats://a:1,tls://b:2,nats://u:p@c", 1},
        {"nats", "url", "nats://a:1,", 0},
        {"nats", "url", "http://a:1", 0},
        {"nats", "url", "nats://a:1/x", 0},
        {"kafka", "brokers", "127.0.0.1:9092", 1},
        {"kafka", "brokers", "k1:9092,k2.example.com:9093,[::1]:9094", 1},
        {"kafka", "brokers", "k1", 0},
        {"kafka", "brokers", "k1:9092,", 0},
        {"kafka", "brokers", "k1:9092;k2:9092", 0},
        {"kafka", "group", "wsgate.gw-1_a", 1},
        {"kafka", "group", "", 0},
        {"kafka", "group", "a b", 0},
        {"kafka", "node", "", 1},
        {"kafka", "node", "gw-1.eu", 1},
        {"kafka", "node", "a/b", 0},
        {"kafka", "timeout", "50ms", 0},
        {"kafka", "max_buffered", "512", 0},
    };
    char text[256];
    (void)state;

    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        snprintf(text, sizeof text, "[%s]\n%s = %s\n", c[i].section, c[i].key, c[i].value);
        struct run *r = load(text, NULL);
        if ((r->rc == 0) != c[i].ok)
            fail_msg("%s.%s = '%s': rc %d, want %s: %.300s", c[i].section, c[i].key, c[i].value,
                     r->rc, c[i].ok ? "ok" : "error", r->err);
        if (!c[i].ok && lines_count(r->err) != 1)
            fail_msg("%s.%s = '%s': want one error line: %.300s", c[i].section, c[i].key,
                     c[i].value, r->err);
        run_free(r);
    }
}

static void test_secrets_not_echoed(void **state)
{
    char *env[] = {"WSGATE_NATS_URL=nats://user:hunter3@", NULL};
    (void)state;

    struct run *r = load("[redis]\nurl = redis://:hunter2@host:99999/0\n", env);
    assert_int_equal(r->rc, -1);
    assert_line(r, "%s:2: key 'redis.url': expected redis://[:password@]host:port/db", r->path);
    assert_line(r, "env WSGATE_NATS_URL: key 'nats.url': expected "
                   "nats://host:port[,nats://host:port...]");
    assert_null(strstr(r->err, "hunter"));
    run_free(r);
}

static void test_idle_timeout_vs_ping(void **state)
{
    (void)state;
    struct run *r = load("[websocket]\nidle_timeout = 30s\n", NULL);
    assert_int_equal(r->rc, -1);
    assert_line(r,
                "%s:2: key 'websocket.idle_timeout': websocket.idle_timeout (30s) must be "
                "greater than websocket.ping_interval (30s) when pings are on",
                r->path);
    assert_int_equal(lines_count(r->err), 1);
    run_free(r);

    r = load("[websocket]\nping_interval = 0\nidle_timeout = 1s\n", NULL);
    assert_ok(r);
    run_free(r);

    r = load("[websocket]\nping_interval = 10s\nidle_timeout = 10001ms\n", NULL);
    assert_ok(r);
    run_free(r);

    /* the variable that broke the rule is the one named */
    char *env[] = {"WSGATE_WEBSOCKET_PING_INTERVAL=2m", NULL};
    r = load("[websocket]\nidle_timeout = 90s\n", env);
    assert_int_equal(r->rc, -1);
    assert_line(r, "env WSGATE_WEBSOCKET_PING_INTERVAL: key 'websocket.ping_interval': "
                   "websocket.idle_timeout (90s) must be greater than websocket.ping_interval "
                   "(2m) when pings are on");
    run_free(r);
}

static void test_failed_load_leaves_cfg_untouched(void **state)
{
    struct config c, before;
    char *out = NULL;
    size_t outlen = 0;
    char *env[] = {"WSGATE_SERVER_BACKLOG=x", NULL};
    (void)state;

    memset(&c, 0xab, sizeof c);
    before = c;
    FILE *err = open_memstream(&out, &outlen);
    assert_int_equal(config_load(&c, NULL, env, err), -1);
    fclose(err);
    assert_memory_equal(&c, &before, sizeof c);
    free(out);
}

/* --- config_write_defaults and gateway.conf.example --- */

static char *defaults_text(void)
{
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_non_null(f);
    config_write_defaults(f);
    fclose(f);
    return out;
}

static void test_write_defaults_complete(void **state)
{
    char section[64] = "", seen[NROWS] = {0};
    int keys = 0;
    (void)state;

    char *text = defaults_text();
    char *prev = NULL;
    for (char *line = strtok(text, "\n"); line; prev = line, line = strtok(NULL, "\n")) {
        if (strlen(line) > 197)
            fail_msg("line over the 197-character limit: %.300s", line);
        if (line[0] == ';')
            continue;
        if (line[0] == '[') {
            snprintf(section, sizeof section, "%.*s", (int)strcspn(line + 1, "]"), line + 1);
            continue;
        }
        /* "key = default" with a help comment right above it */
        assert_non_null(prev);
        if (prev[0] != ';' || prev[1] != ' ' || strlen(prev) < 10)
            fail_msg("no help comment above '%s'", line);
        keys++;
        size_t i;
        for (i = 0; i < NROWS; i++) {
            char want[256];
            snprintf(want, sizeof want, "%s =%s%s", rows[i].key, rows[i].def[0] ? " " : "",
                     rows[i].def);
            if (strcmp(section, rows[i].section) == 0 && strcmp(line, want) == 0)
                break;
        }
        if (i == NROWS)
            fail_msg("line '%s' in [%s] is not a key of the table with its default", line, section);
        assert_int_equal(seen[i], 0);
        seen[i] = 1;
    }
    assert_int_equal(keys, NROWS);
    free(text);
}

static void test_write_defaults_round_trip(void **state)
{
    struct config def;
    (void)state;
    config_defaults(&def);
    char *text = defaults_text();
    struct run *r = load(text, NULL);
    assert_ok(r);
    assert_memory_equal(&r->cfg, &def, sizeof def);
    run_free(r);
    free(text);
}

static void test_example_file_is_defaults(void **state)
{
    (void)state;
    FILE *f = fopen("gateway.conf.example", "r");
    if (f == NULL)
        fail_msg("gateway.conf.example not found: run from the repository root");
    char *file = NULL;
    size_t cap = 0, len = 0;
    char buf[4096];
    size_t n;
    FILE *m = open_memstream(&file, &cap);
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, m);
    fclose(m);
    fclose(f);
    len = strlen(file);
    char *text = defaults_text();
    if (strcmp(file, text) != 0)
        fail_msg("gateway.conf.example (%zu bytes) differs from config_write_defaults() (%zu "
                 "bytes): regenerate it",
                 len, strlen(text));
    free(text);
    free(file);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_match_key_table),
        cmocka_unit_test(test_load_nothing_is_defaults),
        cmocka_unit_test(test_every_key_by_file_and_env),
        cmocka_unit_test(test_file_values_and_layout),
        cmocka_unit_test(test_bool_spellings),
        cmocka_unit_test(test_error_unknown_key_line),
        cmocka_unit_test(test_error_unknown_section),
        cmocka_unit_test(test_error_bad_values_all_reported),
        cmocka_unit_test(test_error_syntax_lines),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_nul_byte_line),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_env_wins_over_file),
        cmocka_unit_test(test_env_unknown_and_bad),
        cmocka_unit_test(test_env_long_value),
        cmocka_unit_test(test_listen_forms),
        cmocka_unit_test(test_names_and_urls),
        cmocka_unit_test(test_secrets_not_echoed),
        cmocka_unit_test(test_idle_timeout_vs_ping),
        cmocka_unit_test(test_failed_load_leaves_cfg_untouched),
        cmocka_unit_test(test_write_defaults_complete),
        cmocka_unit_test(test_write_defaults_round_trip),
        cmocka_unit_test(test_example_file_is_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
