/* kafka_io.c — the loop side of librdkafka for the kafka backend (see kafka_io.h):
 * configuration of the producer and the consumer, the pipes that bridge their queues to the
 * loop, librdkafka's callbacks, the state machine that starts one thread-pool job at a time
 * (kafka_jobs.c: start-up offsets, assign, probe, destroy) and applies its result,
 * readiness, produce with delivery reports, and the close that never blocks the loop.
 *
 * Does NOT route records or track what was written (kafka.c), or wait on the network
 * (kafka_jobs.c). Loop thread only. Threads in the process: librdkafka's own (a fixed
 * number per handle, about 4 with one broker) and libuv's pool; none per session. */
#include "kafka_io.h"
#include "kafka_io_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "msg.h"

#define KIO_OFFSETS_LOG 480 /* bytes of "p:offset,..." in the start-up log line */

/* One produce waiting for its delivery report. */
struct kio_req {
    broker_push_cb cb; /* the caller's */
    void *arg;         /* borrowed: the caller's */
};

static void kio_next(struct kio *k);
static void kio_on_retry(uv_timer_t *t);
static void kio_close_step(struct kio *k);

/* --- librdkafka callbacks (all served from the loop's drains) --- */

static void kio_on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* syslog levels; librdkafka's "errors" here are mostly transient connection failures */
    enum log_level l = level <= 4 ? LOG_LEVEL_WARN : level == 5 ? LOG_LEVEL_INFO : LOG_LEVEL_DEBUG;
    if (log_enabled(l))
        log_write(l, "event=kafka_log handle=%s fac=%s msg=\"%s\"", rd_kafka_name(rk), fac, buf);
}

static void kio_on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    struct kio *k = opaque;
    char buf[256];
    k->b->errors++;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, buf, sizeof(buf));
        log_error("event=kafka_fatal handle=%s reason=\"%s\" note=restart_needed",
                  rd_kafka_name(rk), buf);
        k->fatal = 1;
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        if (k->up)
            log_warn("event=kafka_down handle=%s reason=\"%s\"", rd_kafka_name(rk), reason);
        k->up = 0;
        if (k->close == KIO_OPEN)
            kio_next(k); /* probe until a metadata request succeeds again */
        return;
    }
    /* connection failures were logged already (log_cb, facility FAIL) */
    enum log_level l = err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE
                           ? LOG_LEVEL_DEBUG
                           : LOG_LEVEL_WARN;
    if (log_enabled(l))
        log_write(l, "event=kafka_error handle=%s err=%s reason=\"%s\"", rd_kafka_name(rk),
                  rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

static void kio_on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct kio *k = opaque;
    struct kio_req *r = m->_private;
    int status = 0;
    (void)rk;
    if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        k->b->errors++;
        status = m->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ? UV_E2BIG
                 : m->err == RD_KAFKA_RESP_ERR__MSG_TIMED_OUT   ? UV_ETIMEDOUT
                                                                : UV_EIO;
        log_info("event=kafka_produce_failed topic=%s err=%s", rd_kafka_topic_name(m->rkt),
                 rd_kafka_err2name(m->err));
    }
    k->inflight--;
    broker_push_cb cb = r->cb;
    void *arg = r->arg;
    free(r);
    cb(arg, status);
}

/* --- the pipes: the loop's view of the two queues --- */

static void kio_pipe_clear(struct kio_pipe *p)
{
    char buf[64];
    while (read(p->fds[0], buf, sizeof(buf)) > 0)
        ;
}

static void kio_pipe_kick(struct kio_pipe *p)
{
    ssize_t n = write(p->fds[1], "1", 1);
    (void)n; /* EAGAIN: the pipe is full, so a wake-up is pending anyway */
}

static void kio_on_prod_readable(uv_poll_t *h, int status, int events)
{
    struct kio *k = ((struct kio_pipe *)h->data)->k;
    (void)status;
    (void)events;
    kio_pipe_clear(&k->pp);
    while (rd_kafka_poll(k->prod, 0) > 0) /* delivery reports, errors, logs */
        ;
    if (k->close == KIO_CLOSE_DRAIN)
        kio_close_step(k);
}

static enum kio_topic kio_topic_of(const struct kio *k, const rd_kafka_message_t *m)
{
    const char *name = rd_kafka_topic_name(m->rkt);
    if (strcmp(name, k->names[KIO_RECV]) == 0)
        return KIO_RECV;
    if (strcmp(name, k->names[KIO_TOPIC]) == 0)
        return KIO_TOPIC;
    return KIO_NTOPICS;
}

static void kio_on_cons_readable(uv_poll_t *h, int status, int events)
{
    struct kio *k = ((struct kio_pipe *)h->data)->k;
    rd_kafka_message_t *m;
    (void)status;
    (void)events;
    kio_pipe_clear(&k->cp);
    /* records, and the main queue's events (errors, logs) forwarded here */
    while ((m = rd_kafka_consumer_poll(k->cons, 0)) != NULL) {
        enum kio_topic t;
        if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            k->b->errors++;
            log_warn("event=kafka_consume_error topic=%s partition=%d err=%s reason=\"%s\"",
                     m->rkt != NULL ? rd_kafka_topic_name(m->rkt) : "-", (int)m->partition,
                     rd_kafka_err2name(m->err), rd_kafka_message_errstr(m));
        } else if ((t = kio_topic_of(k, m)) != KIO_NTOPICS) {
            k->h->on_record(k->arg, t, m);
        }
        rd_kafka_message_destroy(m);
    }
    if (k->close == KIO_CLOSE_CONSUMER)
        kio_close_step(k);
}

static int kio_pipe_open(struct kio *k, struct kio_pipe *p, rd_kafka_queue_t *q, uv_poll_cb cb)
{
    int rc;
    p->k = k;
    if (pipe2(p->fds, O_NONBLOCK | O_CLOEXEC) < 0) {
        rc = uv_translate_sys_error(errno);
        p->fds[0] = p->fds[1] = -1;
        return rc;
    }
    if ((rc = uv_poll_init(k->loop, &p->poll, p->fds[0])) < 0) {
        close(p->fds[0]);
        close(p->fds[1]);
        p->fds[0] = p->fds[1] = -1;
        return rc;
    }
    p->poll.data = p;
    rd_kafka_queue_io_event_enable(q, p->fds[1], "1", 1);
    uv_poll_start(&p->poll, UV_READABLE, cb);
    kio_pipe_kick(p); /* what was queued before the IO event was enabled (logs) */
    return 0;
}

/* --- configuration --- */

static int kio_set(rd_kafka_conf_t *c, const char *name, const char *value)
{
    char err[256];
    if (rd_kafka_conf_set(c, name, value, err, sizeof(err)) == RD_KAFKA_CONF_OK)
        return 0;
    log_error("event=kafka_config_error key=%s err=\"%s\"", name, err);
    return -1;
}

static int kio_set_num(rd_kafka_conf_t *c, const char *name, unsigned long long v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%llu", v);
    return kio_set(c, name, buf);
}

/* Settings both handles share: where, logs on the loop, callbacks, quick reconnects. */
static rd_kafka_conf_t *kio_conf_common(struct kio *k)
{
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    if (c == NULL)
        return NULL;
    rd_kafka_conf_set_opaque(c, k);
    rd_kafka_conf_set_log_cb(c, kio_on_log);
    rd_kafka_conf_set_error_cb(c, kio_on_error);
    /* Every request (an offset commit waiting for a broker that is gone, say) times out
     * within about [kafka] timeout, which bounds rd_kafka_destroy at close; librdkafka wants
     * fetch.wait.max.ms + 1000 at least. */
    uint64_t sock_ms = k->cfg->kafka_timeout_ms;
    if (sock_ms < k->cfg->kafka_fetch_wait_ms + 1000)
        sock_ms = k->cfg->kafka_fetch_wait_ms + 1000;
    if (kio_set(c, "bootstrap.servers", k->cfg->kafka_brokers) < 0 ||
        kio_set(c, "client.id", "wsgate") < 0 || kio_set(c, "log.queue", "true") < 0 ||
        kio_set(c, "reconnect.backoff.max.ms", "1000") < 0 ||
        kio_set_num(c, "socket.timeout.ms", sock_ms) < 0) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    return c;
}

static rd_kafka_t *kio_new(struct kio *k, rd_kafka_type_t type, rd_kafka_conf_t *c)
{
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(type, c, err, sizeof(err)); /* takes c on success */
    if (rk == NULL) {
        log_error("event=kafka_open_failed err=\"%s\"", err);
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    (void)k;
    rd_kafka_set_log_queue(rk, NULL); /* logs to the main queue: served on the loop */
    return rk;
}

static rd_kafka_t *kio_producer_new(struct kio *k)
{
    const struct config *cfg = k->cfg;
    rd_kafka_conf_t *c = kio_conf_common(k);
    unsigned long long maxmsg = cfg->max_message_size + 4096; /* record overhead, key */
    if (c == NULL)
        return NULL;
    rd_kafka_conf_set_dr_msg_cb(c, kio_on_delivery);
    if (kio_set(c, "acks", "all") < 0 || kio_set(c, "enable.idempotence", "true") < 0 ||
        kio_set(c, "partitioner", "murmur2_random") < 0 || kio_set(c, "linger.ms", "1") < 0 ||
        kio_set_num(c, "message.timeout.ms", cfg->kafka_timeout_ms) < 0 ||
        kio_set_num(c, "queue.buffering.max.kbytes", cfg->kafka_max_buffered / 1024) < 0 ||
        kio_set_num(c, "message.max.bytes", maxmsg < 1000000 ? 1000000 : maxmsg) < 0) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    return kio_new(k, RD_KAFKA_PRODUCER, c);
}

static rd_kafka_t *kio_consumer_new(struct kio *k)
{
    const struct config *cfg = k->cfg;
    rd_kafka_conf_t *c = kio_conf_common(k);
    char host[256] = "", group[sizeof(cfg->kafka_group) + sizeof(host) + 1];
    const char *node = cfg->kafka_node;
    if (c == NULL)
        return NULL;
    if (node[0] == '\0') {
        if (gethostname(host, sizeof(host) - 1) < 0 || host[0] == '\0')
            snprintf(host, sizeof(host), "localhost");
        node = host;
    }
    snprintf(group, sizeof(group), "%s.%s", cfg->kafka_group, node);
    /* Offsets: stored by kafka.c once everything before them was written, committed by
     * librdkafka's auto-commit (a thread of its own: no timer on the loop) and at close.
     * Out of range (retention, a broker that lost its log): from the earliest record;
     * [broker] ttl keeps old ones from being delivered. */
    if (kio_set(c, "group.id", group) < 0 || kio_set(c, "enable.auto.commit", "true") < 0 ||
        kio_set(c, "auto.commit.interval.ms", "1000") < 0 ||
        kio_set(c, "enable.auto.offset.store", "false") < 0 ||
        kio_set(c, "auto.offset.reset", "earliest") < 0 ||
        kio_set(c, "enable.partition.eof", "false") < 0 ||
        /* no group membership (assign, not subscribe), but librdkafka keeps a commit that
         * waits for a coordinator this long, and rd_kafka_destroy waits for that commit */
        kio_set_num(c, "session.timeout.ms", cfg->kafka_timeout_ms) < 0 ||
        kio_set_num(c, "heartbeat.interval.ms", cfg->kafka_timeout_ms / 3) < 0 ||
        kio_set_num(c, "fetch.wait.max.ms", cfg->kafka_fetch_wait_ms) < 0) {
        rd_kafka_conf_destroy(c);
        return NULL;
    }
    log_info("event=kafka_group group=%s", group);
    return kio_new(k, RD_KAFKA_CONSUMER, c);
}

/* --- jobs: run in the pool by kafka_jobs.c, finished here --- */

static void kio_close_handles(struct kio *k);

/* "0:12,1:0,..." of l's partitions of topic, cut at KIO_OFFSETS_LOG bytes. */
static void kio_offsets_format(const rd_kafka_topic_partition_list_t *l, const char *topic,
                               char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < l->cnt && used + 1 < cap; i++) {
        if (strcmp(l->elems[i].topic, topic) != 0)
            continue;
        int n = snprintf(buf + used, cap - used, "%s%d:%lld", used ? "," : "",
                         (int)l->elems[i].partition, (long long)l->elems[i].offset);
        if (n < 0 || (size_t)n >= cap - used) {
            snprintf(buf + (cap > 4 ? cap - 4 : 0), cap > 4 ? 4 : cap, "...");
            break;
        }
        used += (size_t)n;
    }
}

static void kio_on_replay_timer(uv_timer_t *t)
{
    struct kio *k = t->data;
    k->replay_due = 1;
    kio_next(k);
}

static void kio_on_job_done(uv_work_t *w, int status)
{
    struct kio_job *j = (struct kio_job *)w;
    struct kio *k = j->k;
    char offs[KIO_OFFSETS_LOG];
    k->job = NULL;
    if (j->kind == KIO_JOB_DESTROY) {
        free(j);
        kio_close_handles(k);
        return;
    }
    if (status < 0 && j->err == 0)
        j->err = RD_KAFKA_RESP_ERR__FAIL;
    if (k->close != KIO_OPEN || j->err != 0) {
        if (j->assign != NULL)
            rd_kafka_topic_partition_list_destroy(j->assign);
        if (k->close != KIO_OPEN) {
            free(j);
            kio_close_step(k);
            return;
        }
        k->b->errors++;
        log_warn("event=kafka_not_ready step=%s err=%s retry_ms=%d", j->what,
                 rd_kafka_err2name(j->err), KIO_RETRY_MS);
        free(j);
        uv_timer_start(&k->retry, kio_on_retry, KIO_RETRY_MS, 0);
        return;
    }
    switch (j->kind) {
    case KIO_JOB_START:
        k->assign = j->assign;
        k->started = k->up = 1;
        memcpy(k->cluster, j->cluster, sizeof(k->cluster));
        kio_offsets_format(k->assign, k->names[KIO_RECV], offs, sizeof(offs));
        log_info("event=kafka_ready topic=%s offsets=%s replay=%s", k->names[KIO_RECV], offs,
                 j->replay ? "yes" : "no");
        if (j->replay && k->cfg->kafka_replay_delay_ms > 0)
            uv_timer_start(&k->replay, kio_on_replay_timer, k->cfg->kafka_replay_delay_ms, 0);
        else
            k->replay_due = 1;
        break;
    case KIO_JOB_ASSIGN:
        k->assigned = 1;
        log_info("event=kafka_assigned partitions=%d", k->assign->cnt);
        k->h->on_assigned(k->arg, k->assign);
        rd_kafka_topic_partition_list_destroy(k->assign);
        k->assign = NULL;
        break;
    case KIO_JOB_PROBE:
        k->up = 1;
        log_info("event=kafka_up");
        if (j->rewound > 0)
            log_warn("event=kafka_rewound partitions=%d reason=%s", j->rewound,
                     j->replaced ? "cluster_replaced" : "log_shorter_than_position");
        if (j->replaced) {
            log_warn("event=kafka_cluster_replaced old=%s new=%s", k->cluster, j->cluster);
            memcpy(k->cluster, j->cluster, sizeof(k->cluster));
            for (int i = 0; k->assign != NULL && i < k->assign->cnt; i++)
                k->assign->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
        }
        break;
    case KIO_JOB_DESTROY:
        break;
    }
    free(j);
    kio_next(k);
}

static int kio_job_start(struct kio *k, enum kio_job_kind kind)
{
    struct kio_job *j = calloc(1, sizeof(*j));
    int rc;
    if (j == NULL)
        return UV_ENOMEM;
    j->k = k;
    j->kind = kind;
    if ((rc = uv_queue_work(k->loop, &j->work, kio__job_thread_cb, kio_on_job_done)) < 0) {
        free(j);
        return rc;
    }
    k->job = j;
    return 0;
}

static void kio_on_retry(uv_timer_t *t)
{
    kio_next(t->data);
}

/* Start the next job the state calls for, unless one runs or a retry is pending. */
static void kio_next(struct kio *k)
{
    enum kio_job_kind kind;
    if (k->close != KIO_OPEN || k->fatal || k->job != NULL ||
        uv_is_active((uv_handle_t *)&k->retry))
        return;
    if (!k->started)
        kind = KIO_JOB_START;
    else if (!k->up)
        kind = KIO_JOB_PROBE;
    else if (!k->assigned && k->replay_due)
        kind = KIO_JOB_ASSIGN;
    else
        return;
    if (kio_job_start(k, kind) < 0)
        uv_timer_start(&k->retry, kio_on_retry, KIO_RETRY_MS, 0);
}

/* --- public --- */

int kio_ready(const struct kio *k)
{
    return k != NULL && k->close == KIO_OPEN && k->started && k->up && !k->fatal;
}

const char *kio_topic_name(const struct kio *k, enum kio_topic t)
{
    return k->names[t];
}

int kio_produce(struct kio *k, enum kio_topic t, const char *key, size_t klen, const struct msg *m,
                broker_push_cb cb, void *arg)
{
    struct kio_req *r;
    rd_kafka_resp_err_t err;
    if (k->close != KIO_OPEN)
        return UV_ECANCELED;
    if (!kio_ready(k))
        return UV_ENOTCONN;
    if ((r = malloc(sizeof(*r))) == NULL)
        return UV_ENOMEM;
    r->cb = cb;
    r->arg = arg;
    /* F_COPY and no F_BLOCK: never waits; the payload is copied into librdkafka's buffer */
    err = rd_kafka_producev(k->prod, RD_KAFKA_V_RKT(k->rkt[t]), RD_KAFKA_V_KEY(key, klen),
                            RD_KAFKA_V_VALUE((void *)m->data, m->len),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(r),
                            RD_KAFKA_V_END);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        free(r);
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            return UV_EAGAIN;
        if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
            return UV_E2BIG;
        k->b->errors++;
        log_info("event=kafka_produce_failed topic=%s err=%s", k->names[t], rd_kafka_err2name(err));
        return UV_EIO;
    }
    k->inflight++;
    return 0;
}

void kio_store(struct kio *k, rd_kafka_topic_partition_list_t *l)
{
    rd_kafka_resp_err_t err;
    if (k->close >= KIO_CLOSE_DESTROY || !k->assigned)
        return;
    if ((err = rd_kafka_offsets_store(k->cons, l)) != 0)
        log_debug("event=kafka_store_failed err=%s", rd_kafka_err2name(err));
}

static void kio_on_handle_closed(uv_handle_t *h);

int kio_open(struct kio **out, struct broker *b, uv_loop_t *loop, const struct config *cfg,
             const struct kio_handlers *h, void *arg)
{
    static const char *const kinds[KIO_NTOPICS] = {"recv", "send", "topic"};
    struct kio *k = calloc(1, sizeof(*k));
    int rc = UV_EINVAL;
    if (k == NULL)
        return UV_ENOMEM;
    k->b = b;
    k->loop = loop;
    k->cfg = cfg;
    k->h = h;
    k->arg = arg;
    k->pp.fds[0] = k->pp.fds[1] = k->cp.fds[0] = k->cp.fds[1] = -1;
    for (int t = 0; t < KIO_NTOPICS; t++)
        snprintf(k->names[t], KIO_NAME_MAX, "%s.%s", cfg->prefix, kinds[t]);
    if ((k->prod = kio_producer_new(k)) == NULL || (k->cons = kio_consumer_new(k)) == NULL)
        goto fail;
    for (int t = 0; t < KIO_NTOPICS; t++)
        if ((k->rkt[t] = rd_kafka_topic_new(k->prod, k->names[t], NULL)) == NULL)
            goto fail;
    rd_kafka_poll_set_consumer(k->cons); /* the consumer's main queue goes to cons_q */
    k->prod_q = rd_kafka_queue_get_main(k->prod);
    k->cons_q = rd_kafka_queue_get_consumer(k->cons);
    if ((rc = kio_pipe_open(k, &k->pp, k->prod_q, kio_on_prod_readable)) < 0)
        goto fail;
    if ((rc = kio_pipe_open(k, &k->cp, k->cons_q, kio_on_cons_readable)) < 0)
        goto fail;
    uv_timer_init(loop, &k->retry);
    uv_timer_init(loop, &k->replay);
    k->retry.data = k->replay.data = k;
    kio_next(k);
    *out = k;
    return 0;
fail:
    /* Start-up, before the loop runs: rd_kafka_destroy here joins threads that have done
     * nothing yet, so it does not wait on the network. */
    if (k->prod_q != NULL)
        rd_kafka_queue_destroy(k->prod_q);
    if (k->cons_q != NULL)
        rd_kafka_queue_destroy(k->cons_q);
    for (int t = 0; t < KIO_NTOPICS; t++)
        if (k->rkt[t] != NULL)
            rd_kafka_topic_destroy(k->rkt[t]);
    if (k->prod != NULL)
        rd_kafka_destroy(k->prod);
    if (k->cons != NULL)
        rd_kafka_destroy_flags(k->cons, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    if (k->pp.fds[0] >= 0) { /* its poll handle exists: k is freed once it is closed */
        k->close = KIO_CLOSE_HANDLES;
        k->open_handles = 1;
        k->pp.poll.data = k;
        uv_close((uv_handle_t *)&k->pp.poll, kio_on_handle_closed);
        return rc;
    }
    free(k);
    return rc;
}

/* --- close --- */

static void kio_on_close_deadline(uv_timer_t *t)
{
    struct kio *k = t->data;
    if (k->close != KIO_CLOSE_CONSUMER)
        return;
    log_warn("event=kafka_close_timeout note=consumer_close_abandoned");
    k->close = KIO_CLOSE_DESTROY;
    kio_close_step(k);
}

/* Move the close on as far as it can go now; called again by whatever it waits for. */
static void kio_close_step(struct kio *k)
{
    rd_kafka_error_t *err;
    if (k->job != NULL)
        return; /* its completion calls back here */
    switch (k->close) {
    case KIO_OPEN:
    case KIO_CLOSE_HANDLES:
        return;
    case KIO_CLOSE_DRAIN:
        if (k->inflight > 0)
            return;                  /* message.timeout.ms bounds the wait; each drain calls back */
        if (!k->up || !k->started) { /* no final commit without a broker */
            k->close = KIO_CLOSE_DESTROY;
            kio_close_step(k);
            return;
        }
        k->close = KIO_CLOSE_CONSUMER;
        if ((err = rd_kafka_consumer_close_queue(k->cons, k->cons_q)) != NULL) {
            log_warn("event=kafka_close_error err=\"%s\"", rd_kafka_error_string(err));
            rd_kafka_error_destroy(err);
            k->close = KIO_CLOSE_DESTROY;
            kio_close_step(k);
            return;
        }
        uv_timer_start(&k->retry, kio_on_close_deadline, k->cfg->kafka_timeout_ms, 0);
        kio_pipe_kick(&k->cp); /* serve the queue at least once */
        return;
    case KIO_CLOSE_CONSUMER:
        if (!rd_kafka_consumer_closed(k->cons))
            return;
        k->cons_closed = 1;
        k->close = KIO_CLOSE_DESTROY;
        /* fall through */
    case KIO_CLOSE_DESTROY:
        uv_timer_stop(&k->retry);
        uv_poll_stop(&k->pp.poll);
        uv_poll_stop(&k->cp.poll);
        if (kio_job_start(k, KIO_JOB_DESTROY) < 0) {
            /* no thread pool: destroying here blocks the loop once, at exit */
            struct kio_job j = {.k = k, .kind = KIO_JOB_DESTROY};
            kio__job_thread_cb(&j.work);
            kio_close_handles(k);
        }
        return;
    }
}

static void kio_on_handle_closed(uv_handle_t *h)
{
    struct kio *k = h->data;
    if (--k->open_handles > 0)
        return;
    kio_close_cb cb = k->close_cb;
    void *arg = k->close_arg;
    int *fds[] = {k->pp.fds, k->cp.fds};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++)
            if (fds[i][j] >= 0)
                close(fds[i][j]);
    if (k->assign != NULL)
        rd_kafka_topic_partition_list_destroy(k->assign);
    free(k);
    if (cb != NULL)
        cb(arg);
}

static void kio_close_handles(struct kio *k)
{
    uv_handle_t *hs[] = {(uv_handle_t *)&k->pp.poll, (uv_handle_t *)&k->cp.poll,
                         (uv_handle_t *)&k->retry, (uv_handle_t *)&k->replay};
    k->close = KIO_CLOSE_HANDLES;
    k->open_handles = 4;
    for (int i = 0; i < 4; i++) {
        hs[i]->data = k;
        uv_close(hs[i], kio_on_handle_closed);
    }
}

void kio_close(struct kio *k, kio_close_cb cb, void *arg)
{
    if (k->close != KIO_OPEN)
        return;
    k->close = KIO_CLOSE_DRAIN;
    k->close_cb = cb;
    k->close_arg = arg;
    uv_timer_stop(&k->retry);
    uv_timer_stop(&k->replay);
    kio_close_step(k);
}
