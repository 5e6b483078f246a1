/* session.c — one client's session as the brokers see it: made from a valid upgrade
 * request (key, ?topics=), freed with its connection, and the session_* calls backends
 * make (session.h): deliver onto the connection's output queue, room left, attach
 * completion, close. Does NOT parse HTTP or frames or know which broker runs. Loop
 * thread only. */
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "config.h"
#include "conn.h"
#include "log.h"
#include "msg.h"
#include "server.h"
#include "session.h"
#include "util.h"

int session_topics_parse(struct session *s, const char *q, uint32_t max_topics)
{
    /* q: the query string (after '?'); only topics= matters; others (token) ignored */
    const char *v = NULL;
    size_t vlen = 0;
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        if (len > 7 && strncmp(q, "topics=", 7) == 0) {
            v = q + 7;
            vlen = len - 7;
        }
        q += len + (amp ? 1 : 0);
    }
    if (v == NULL || vlen == 0)
        return 0;
    uint32_t n = 1;
    for (size_t i = 0; i < vlen; i++)
        if (v[i] == ',')
            n++;
    if (n > max_topics)
        return -1;
    /* one allocation: pointer array then the strings */
    char **arr = malloc(n * sizeof(char *) + vlen + 1);
    if (arr == NULL)
        return -1;
    char *str = (char *)(arr + n);
    memcpy(str, v, vlen);
    str[vlen] = '\0';
    uint32_t i = 0;
    for (char *t = str;; i++) {
        char *comma = strchr(t, ',');
        if (comma)
            *comma = '\0';
        if (!key_valid(t, strlen(t))) {
            free(arr);
            return -1;
        }
        arr[i] = t;
        if (!comma)
            break;
        t = comma + 1;
    }
    s->topics = arr;
    s->ntopics = (uint16_t)n;
    return 0;
}

struct session *session_new(struct conn *c, const char *key, size_t key_len, const char *query,
                            int *err)
{
    struct session *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    s->conn = c;
    s->id = ++c->srv->next_session_id;
    memcpy(s->key, key, key_len);
    s->key[key_len] = '\0';
    s->key_len = (uint8_t)key_len;
    if (query != NULL && session_topics_parse(s, query, c->srv->cfg->max_topics) < 0) {
        free(s);
        *err = UV_EINVAL;
        return NULL;
    }
    return s;
}

void session_free(struct session *s)
{
    if (s == NULL)
        return;
    free(s->topics);
    free(s);
}

void session_attached(struct session *s, int status)
{
    http_upgrade_attached(s->conn, status);
}

int session_can_take(const struct session *s, size_t len)
{
    const struct conn *c = s->conn;
    size_t queued = c->out.bytes + c->early.bytes;
    if ((c->state != CONN_WS && c->state != CONN_HTTP) || (c->flags & CONN_F_CLOSE_SOON))
        return 0;
    return queued == 0 || queued + MSG_HDR_MAX + len <= c->srv->cfg->max_send_buffer;
}

int session_deliver(struct session *s, uint64_t msg_id, struct msg *m)
{
    struct conn *c = s->conn;
    struct server *srv = c->srv;
    if ((c->state != CONN_WS && c->state != CONN_HTTP) || (c->flags & CONN_F_CLOSE_SOON))
        return UV_ECANCELED;
    if (c->state == CONN_WS) { /* judged slow or not after the flush pass's write attempt */
        if (c->proto == &sse_proto)
            return sse_deliver(c, msg_id, m);
        return conn_queue(c, m, msg_id);
    }
    /* the 101 is not out yet: hold it behind, within max_send_buffer (nothing can be
     * written before the 101, so this bound is the only one) */
    size_t queued = c->early.bytes;
    if (queued > 0 && queued + outq_item_bytes(m) > srv->cfg->max_send_buffer) {
        conn_count_close(c, CONN_CLOSE_SLOW);
        log_info("event=slow_client session=%s queued=%zu", s->key, queued);
        c->close_code = 1008;
        conn_close_soon(c);
        return UV_ENOBUFS;
    }
    return outq_push(&c->early, m, msg_id);
}

void session_close(struct session *s, uint16_t code)
{
    struct conn *c = s->conn;
    c->close_code = code;
    conn_close_soon(c);
}
