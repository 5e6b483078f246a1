/* kafka_io.h — librdkafka on the loop, for the kafka backend (kafka.c): one producer and one
 * consumer handle per node, whose queues wake the loop through a pipe (librdkafka's IO event,
 * watched by a uv_poll_t) and are drained completely on every wake-up, so that every
 * librdkafka callback (delivery reports, errors, logs) runs on the loop thread. What may
 * wait on the network or on librdkafka's threads (metadata, committed offsets, list
 * offsets, assign, destroy) runs in libuv's thread pool, one job at a time; its result is
 * applied on the loop.
 *
 * Start-up: the consumer is assigned every partition of <prefix>.recv, each at this node's
 * committed offset (group <group>.<node>) or, with none, at the partition's end, and every
 * partition of <prefix>.topic at its end (broadcasts are never replayed). Those ends are
 * read before the node reports ready, so a record produced after ready is never skipped.
 * With records between a committed offset and the end (the node stopped without committing
 * them), the assignment waits [kafka] replay_delay after ready. Offsets are committed only
 * as kio_store() is told (enable.auto.offset.store=false), by librdkafka's auto-commit.
 *
 * Readiness: not ready until the start-up job succeeded; not ready from librdkafka's
 * "all brokers down" until a metadata request succeeds again (retried every second while
 * down: no timer runs while the node is up and idle).
 *
 * Does NOT know sessions, topics of clients or what a record means: kafka.c does, through
 * kio_handlers. Loop thread only, except the jobs, which touch only their own struct and
 * the (thread-safe) librdkafka handles. */
#ifndef WSGATE_KAFKA_IO_H
#define WSGATE_KAFKA_IO_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <uv.h>

#include "broker.h"

struct config;
struct msg;
struct kio;

enum kio_topic {
    KIO_RECV = 0, /* <prefix>.recv: to sessions, record key = session */
    KIO_SEND,     /* <prefix>.send: client frames, record key = session */
    KIO_TOPIC,    /* <prefix>.topic: broadcasts, record key = topic */
    KIO_NTOPICS
};

struct kio_handlers {
    /* A record of KIO_RECV or KIO_TOPIC (m->err == 0), on the loop, in partition order.
     * m: borrowed for the call. */
    void (*on_record)(void *arg, enum kio_topic t, const rd_kafka_message_t *m);
    /* The consumer is assigned: l lists every KIO_RECV and KIO_TOPIC partition with its
     * start offset. On the loop; records of l may have been read already. l: borrowed. */
    void (*on_assigned)(void *arg, const rd_kafka_topic_partition_list_t *l);
};

typedef void (*kio_close_cb)(void *arg);

/* Create both handles (config from cfg: [kafka], [broker] prefix and ttl), their pipes and
 * polls, and start the start-up job. h and arg: borrowed, must outlive k. 0, or UV_E* with
 * nothing left behind (a librdkafka configuration error is logged). */
int kio_open(struct kio **out, struct broker *b, uv_loop_t *loop, const struct config *cfg,
             const struct kio_handlers *h, void *arg);
/* 1 when started, brokers reachable and not closing. */
int kio_ready(const struct kio *k);
/* The topic's full name ("ws.recv" ...), for logs and offset lists. */
const char *kio_topic_name(const struct kio *k, enum kio_topic t);
/* Produce m with key[0..klen) to t (partitioner murmur2_random, acks=all, idempotent). m:
 * borrowed (copied). 0 => cb(arg, status) runs exactly once, later, from the delivery
 * report (0, UV_E2BIG too large, UV_ETIMEDOUT no ack within [kafka] timeout, UV_EIO);
 * < 0 => cb never runs: UV_ENOTCONN not ready, UV_ECANCELED closing, UV_EAGAIN
 * max_buffered reached, UV_E2BIG, UV_ENOMEM, UV_EIO. */
int kio_produce(struct kio *k, enum kio_topic t, const char *key, size_t klen, const struct msg *m,
                broker_push_cb cb, void *arg);
/* Offsets of KIO_RECV partitions that may be committed (the next record to read after a
 * restart): l's topics must be kio_topic_name(k, KIO_RECV). l: borrowed. Failures
 * (partition no longer assigned, closing) are logged at debug level and ignored. */
void kio_store(struct kio *k, rd_kafka_topic_partition_list_t *l);
/* Wait for every delivery report, close the consumer (final commit), destroy both handles
 * off the loop, close the uv handles, free k, then cb(arg) on the loop. Bounded: a consumer
 * close that does not finish within [kafka] timeout is abandoned (destroyed without it). */
void kio_close(struct kio *k, kio_close_cb cb, void *arg);

#endif
