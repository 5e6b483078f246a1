/* metrics.c — GET /metrics: the server's counters (struct metrics, bumped where things
 * happen) and the broker's, rendered in the Prometheus text format into one raw msg.
 * Does NOT count anything itself or parse requests. Loop thread only. */
#include <stdarg.h>
#include <stdio.h>

#include "broker.h"
#include "metrics.h"
#include "msg.h"
#include "server.h"

/* printf into the free tail of out; a line that does not fit is left out. */
static void metrics_append(struct msg *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out->data + out->len, out->cap - out->len, fmt, ap);
    va_end(ap);
    if (n > 0 && (uint32_t)n < out->cap - out->len)
        out->len += (uint32_t)n;
}

struct msg *metrics_render(const struct server *srv)
{
    const struct metrics *m = &srv->m;
    struct msg *out = msg_new(8192);
    if (out == NULL)
        return NULL;
#define METRIC(name, type, help, val)                                                              \
    do {                                                                                           \
        int n_ = snprintf(out->data + out->len, out->cap - out->len,                               \
                          "# HELP " name " " help "\n# TYPE " name " " type "\n" name " %llu\n",   \
                          (unsigned long long)(val));                                              \
        if (n_ > 0 && (uint32_t)n_ < out->cap - out->len)                                          \
            out->len += (uint32_t)n_;                                                              \
    } while (0)
    METRIC("wsgate_ws_connections_open", "gauge", "Open WebSocket connections.", m->ws_open);
    METRIC("wsgate_ws_connections_total", "counter", "WebSocket upgrades accepted.", m->ws_total);
    METRIC("wsgate_http_connections_open", "gauge", "Open HTTP connections.", m->http_open);
    METRIC("wsgate_http_requests_total", "counter", "HTTP requests answered.", m->http_requests);
    METRIC("wsgate_messages_pushed_total", "counter", "Messages accepted by /push.", m->pushed);
    METRIC("wsgate_messages_published_total", "counter", "Messages accepted by /publish.",
           m->published);
    METRIC("wsgate_messages_delivered_total", "counter", "Frames written to clients.",
           m->delivered);
    METRIC("wsgate_messages_dropped_total", "counter",
           "Messages dropped (slow or closed clients, expired in the broker).",
           m->dropped + srv->broker->dropped);
    METRIC("wsgate_messages_upstream_total", "counter", "Client frames forwarded to the broker.",
           m->upstream);
    METRIC("wsgate_bytes_in_total", "counter", "Bytes read from sockets.", m->bytes_in);
    METRIC("wsgate_bytes_out_total", "counter", "Bytes written to sockets.", m->bytes_out);
    METRIC("wsgate_broker_errors_total", "counter", "Broker errors.", srv->broker->errors);
    METRIC("wsgate_slow_client_closes_total", "counter",
           "Clients closed for exceeding max_send_buffer.", m->closed[CONN_CLOSE_SLOW]);
    METRIC("wsgate_handshake_timeouts_total", "counter", "Requests cut off with 408.",
           m->handshake_timeouts);
    METRIC("wsgate_broker_ready", "gauge", "1 when the broker is connected and accepting.",
           (uint64_t)broker_ready(srv->broker));
#undef METRIC
    static const char *const reasons[CONN_CLOSE_NREASONS] = {
        [CONN_CLOSE_SLOW] = "slow",
        [CONN_CLOSE_WRITE_TIMEOUT] = "write_timeout",
        [CONN_CLOSE_REQUEST_TIMEOUT] = "request_timeout",
        [CONN_CLOSE_FRAGMENTS] = "too_many_fragments",
        [CONN_CLOSE_TOO_BIG] = "message_too_big",
        [CONN_CLOSE_IDLE] = "idle",
    };
    metrics_append(out, "# HELP wsgate_connections_closed_total Connections the gateway closed, "
                        "by reason.\n# TYPE wsgate_connections_closed_total counter\n");
    for (int i = 0; i < CONN_CLOSE_NREASONS; i++)
        metrics_append(out, "wsgate_connections_closed_total{reason=\"%s\"} %llu\n", reasons[i],
                       (unsigned long long)m->closed[i]);
    metrics_append(out,
                   "# HELP wsgate_connections_refused_total Connections refused, by "
                   "reason.\n# TYPE wsgate_connections_refused_total counter\n"
                   "wsgate_connections_refused_total{reason=\"http_limit\"} %llu\n"
                   "wsgate_connections_refused_total{reason=\"per_ip\"} %llu\n"
                   "wsgate_connections_refused_total{reason=\"handshake_rate\"} %llu\n",
                   (unsigned long long)m->refused_http_limit, (unsigned long long)m->refused_per_ip,
                   (unsigned long long)m->refused_rate);
    static const char *const auth_reasons[AUTH_REFUSED_N] = {
        [AUTH_REFUSED_PUSH] = "push_token",    [AUTH_REFUSED_METRICS] = "metrics_token",
        [AUTH_REFUSED_TOKEN] = "client_token", [AUTH_REFUSED_FORBIDDEN] = "forbidden",
        [AUTH_REFUSED_ORIGIN] = "origin",
    };
    metrics_append(out, "# HELP wsgate_auth_refused_total Requests refused by access control, "
                        "by reason.\n# TYPE wsgate_auth_refused_total counter\n");
    for (int i = 0; i < AUTH_REFUSED_N; i++)
        metrics_append(out, "wsgate_auth_refused_total{reason=\"%s\"} %llu\n", auth_reasons[i],
                       (unsigned long long)m->refused_auth[i]);
    metrics_append(out,
                   "# HELP wsgate_pushes_refused_total Pushes refused, by reason.\n"
                   "# TYPE wsgate_pushes_refused_total counter\n"
                   "wsgate_pushes_refused_total{reason=\"queue_full\"} %llu\n"
                   "wsgate_pushes_refused_total{reason=\"memory_full\"} %llu\n",
                   (unsigned long long)m->refused_queue_full,
                   (unsigned long long)srv->broker->refused_full);
    return out;
}
