/* kafka_jobs.c — the kafka backend's work for libuv's thread pool (kafka_io.c starts one job
 * at a time and applies its result on the loop): where each partition starts (metadata,
 * committed offsets, partition ends, the first record younger than [broker] ttl), the
 * assign, the probe that ends a broker outage (and rewinds partitions whose log went back),
 * and the destroy of both handles at close. Everything here may wait on the network or on
 * librdkafka's threads, which is why it is not on the loop.
 *
 * Does NOT touch the loop, uv handles, sessions or anything kafka.c owns. Thread pool only:
 * a job reads the kio's immutable parts (cfg, names, the rd_kafka_t and topic handles),
 * k->assign and k->assigned (written by the loop only while no job runs) and writes only
 * its own struct kio_job; the rd_kafka_* calls used are thread-safe. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "kafka_io_priv.h"

/* Partition count of topic t (auto-created where the cluster allows it). */
static rd_kafka_resp_err_t kio_partitions_thread_cb(struct kio *k, enum kio_topic t, int tmo,
                                                    int32_t *n)
{
    const struct rd_kafka_metadata *md;
    rd_kafka_resp_err_t err = rd_kafka_metadata(k->prod, 0, k->rkt[t], &md, tmo);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
        return err;
    if (md->topic_cnt != 1)
        err = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
    else if (md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR)
        err = md->topics[0].err;
    else if (md->topics[0].partition_cnt <= 0)
        err = RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION;
    else
        *n = md->topics[0].partition_cnt;
    rd_kafka_metadata_destroy(md);
    return err;
}

/* The producer's cached cluster id (metadata was just read) into out[KIO_CLUSTER_MAX]; "" if none.
 */
static void kio_cluster_thread_cb(struct kio *k, char *out)
{
    char *id = rd_kafka_clusterid(k->prod, 0);
    snprintf(out, KIO_CLUSTER_MAX, "%s", id != NULL ? id : "");
    if (id != NULL)
        rd_kafka_mem_free(k->prod, id);
}

/* After the brokers came back: a partition whose log is now shorter than our position
 * (an empty cluster came back: librdkafka's mock after a restart, a rebuilt cluster; or a
 * truncated log) would wait for offsets that may already hold records we must not skip,
 * so it goes back to the beginning of its log ([broker] ttl still bounds what is
 * delivered). With another cluster id, every partition goes back: positions mean nothing
 * there. Partitions nothing was read from yet reset themselves when their next fetch is
 * out of range (auto.offset.reset). */
static void kio_rewind_thread_cb(struct kio_job *j)
{
    struct kio *k = j->k;
    rd_kafka_topic_partition_list_t *l = NULL, *pos = NULL, *ends = NULL, *rew = NULL;
    rd_kafka_error_t *err;
    if (!k->assigned || rd_kafka_assignment(k->cons, &l) != 0 || l == NULL)
        return; /* not assigned yet: the loop rewinds k->assign if the cluster changed */
    if (j->replaced) {
        rew = rd_kafka_topic_partition_list_copy(l);
    } else {
        pos = rd_kafka_topic_partition_list_copy(l);
        ends = rd_kafka_topic_partition_list_copy(l);
        for (int i = 0; i < ends->cnt; i++)
            ends->elems[i].offset = RD_KAFKA_OFFSET_END;
        if (rd_kafka_position(k->cons, pos) != 0 ||
            rd_kafka_offsets_for_times(k->cons, ends, KIO_RETRY_MS) != 0)
            goto out; /* best effort: the next probe after a loss tries again */
        rew = rd_kafka_topic_partition_list_new(l->cnt);
        for (int i = 0; i < l->cnt; i++) {
            int64_t p = pos->elems[i].offset, e = ends->elems[i].offset;
            if (p >= 0 && e >= 0 && ends->elems[i].err == 0 && e < p)
                rd_kafka_topic_partition_list_add(rew, l->elems[i].topic, l->elems[i].partition);
        }
    }
    for (int i = 0; i < rew->cnt; i++)
        rew->elems[i].offset = RD_KAFKA_OFFSET_BEGINNING;
    j->rewound = rew->cnt;
    if (rew->cnt > 0 && (err = rd_kafka_seek_partitions(k->cons, rew, KIO_RETRY_MS)) != NULL) {
        j->err = rd_kafka_error_code(err);
        j->what = "seek";
        rd_kafka_error_destroy(err);
    }
out:
    rd_kafka_topic_partition_list_destroy(l);
    if (pos != NULL)
        rd_kafka_topic_partition_list_destroy(pos);
    if (ends != NULL)
        rd_kafka_topic_partition_list_destroy(ends);
    if (rew != NULL)
        rd_kafka_topic_partition_list_destroy(rew);
}

/* A list of topic t's partitions 0..n-1, each with offset off. */
static rd_kafka_topic_partition_list_t *kio_list(const struct kio *k, enum kio_topic t, int32_t n,
                                                 int64_t off, rd_kafka_topic_partition_list_t *l)
{
    if (l == NULL)
        l = rd_kafka_topic_partition_list_new(n);
    for (int32_t p = 0; p < n; p++)
        rd_kafka_topic_partition_list_add(l, k->names[t], p)->offset = off;
    return l;
}

static int64_t kio_offset_of(const rd_kafka_topic_partition_list_t *l, const char *topic, int32_t p)
{
    const rd_kafka_topic_partition_t *e = rd_kafka_topic_partition_list_find(l, topic, p);
    return e != NULL && e->err == RD_KAFKA_RESP_ERR_NO_ERROR ? e->offset : -1;
}

/* Where each partition starts (kafka_io.h): recv at max(committed, first record younger
 * than ttl) or, with no committed offset, at the end; topic at the end. The ends are read
 * here, before ready, so nothing produced after ready can be skipped. */
static void kio_job_start_thread_cb(struct kio_job *j)
{
    struct kio *k = j->k;
    int tmo = (int)k->cfg->kafka_timeout_ms;
    const char *recv = k->names[KIO_RECV];
    rd_kafka_topic_partition_list_t *committed = NULL, *ends = NULL, *young = NULL;
    int32_t nr = 0, nt = 0;
    struct timespec now;
    if ((j->err = kio_partitions_thread_cb(k, KIO_RECV, tmo, &nr)) != 0 ||
        (j->err = kio_partitions_thread_cb(k, KIO_TOPIC, tmo, &nt)) != 0) {
        j->what = "metadata";
        return;
    }
    kio_cluster_thread_cb(k, j->cluster);
    committed = kio_list(k, KIO_RECV, nr, RD_KAFKA_OFFSET_INVALID, NULL);
    if ((j->err = rd_kafka_committed(k->cons, committed, tmo)) != 0) {
        j->what = "committed";
        goto out;
    }
    /* ListOffsets with the "timestamp" -1 answers each partition's end */
    ends = kio_list(k, KIO_TOPIC, nt, RD_KAFKA_OFFSET_END,
                    kio_list(k, KIO_RECV, nr, RD_KAFKA_OFFSET_END, NULL));
    if ((j->err = rd_kafka_offsets_for_times(k->cons, ends, tmo)) != 0) {
        j->what = "list_offsets";
        goto out;
    }
    for (int i = 0; i < ends->cnt; i++) {
        if (ends->elems[i].err != 0 || ends->elems[i].offset < 0) {
            j->err = ends->elems[i].err != 0 ? ends->elems[i].err : RD_KAFKA_RESP_ERR__BAD_MSG;
            j->what = "list_offsets";
            goto out;
        }
    }
    /* The first record younger than ttl, as a lower bound for a stale committed offset.
     * Best effort: an error, or -1 (no such record, or librdkafka's mock cluster, which
     * answers -1 for every timestamp), leaves the bound out; kafka.c still never delivers
     * a record older than ttl. */
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t now_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    young = kio_list(k, KIO_RECV, nr, now_ms - (int64_t)k->cfg->ttl_ms, NULL);
    if (rd_kafka_offsets_for_times(k->cons, young, tmo) != 0)
        rd_kafka_topic_partition_list_destroy(young), young = NULL;
    j->assign = rd_kafka_topic_partition_list_new(nr + nt);
    for (int32_t p = 0; p < nr; p++) {
        int64_t c = kio_offset_of(committed, recv, p), e = kio_offset_of(ends, recv, p);
        int64_t y = young != NULL ? kio_offset_of(young, recv, p) : -1, start = c >= 0 ? c : e;
        if (c >= 0 && y > start)
            start = y;
        if (start > e)
            start = e; /* committed past the end: the log was truncated or replaced */
        j->replay |= start < e;
        rd_kafka_topic_partition_list_add(j->assign, recv, p)->offset = start;
    }
    for (int32_t p = 0; p < nt; p++)
        rd_kafka_topic_partition_list_add(j->assign, k->names[KIO_TOPIC], p)->offset =
            kio_offset_of(ends, k->names[KIO_TOPIC], p);
out:
    rd_kafka_topic_partition_list_destroy(committed);
    if (ends != NULL)
        rd_kafka_topic_partition_list_destroy(ends);
    if (young != NULL)
        rd_kafka_topic_partition_list_destroy(young);
}

void kio__job_thread_cb(uv_work_t *w)
{
    struct kio_job *j = (struct kio_job *)w; /* work is the first member */
    struct kio *k = j->k;
    int32_t n;
    switch (j->kind) {
    case KIO_JOB_START:
        kio_job_start_thread_cb(j);
        break;
    case KIO_JOB_ASSIGN: /* waits for librdkafka's main thread: not on the loop */
        if ((j->err = rd_kafka_assign(k->cons, k->assign)) != 0)
            j->what = "assign";
        break;
    case KIO_JOB_PROBE: /* short: a close waits for it */
        if ((j->err = kio_partitions_thread_cb(k, KIO_RECV, KIO_RETRY_MS, &n)) != 0) {
            j->what = "metadata";
            break;
        }
        kio_cluster_thread_cb(k, j->cluster);
        j->replaced = k->cluster[0] && j->cluster[0] && strcmp(k->cluster, j->cluster);
        kio_rewind_thread_cb(j);
        break;
    case KIO_JOB_DESTROY: /* joins librdkafka's threads */
        rd_kafka_queue_destroy(k->prod_q);
        rd_kafka_queue_destroy(k->cons_q);
        for (int t = 0; t < KIO_NTOPICS; t++)
            rd_kafka_topic_destroy(k->rkt[t]);
        rd_kafka_destroy(k->prod);
        rd_kafka_destroy_flags(k->cons, k->cons_closed ? 0 : RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
        break;
    }
}
