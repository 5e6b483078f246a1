/* kafka_io_priv.h — what kafka_io.c (the loop side) and kafka_jobs.c (the thread-pool side)
 * of the kafka backend share: the kio struct, the job struct, and the one entry point of the
 * jobs. Not for kafka.c (it uses kafka_io.h only). Which fields a job may touch from the
 * pool is said in kafka_jobs.c's header. */
#ifndef WSGATE_KAFKA_IO_PRIV_H
#define WSGATE_KAFKA_IO_PRIV_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <uv.h>

#include "kafka_io.h"

#define KIO_RETRY_MS 1000  /* between attempts while not started, down, or not assigned */
#define KIO_NAME_MAX 80    /* "<prefix>.topic": prefix is at most 63 bytes */
#define KIO_CLUSTER_MAX 64 /* a cluster id, NUL included (longer ones are cut) */

/* One librdkafka queue's wake-up. librdkafka writes a byte to fds[1] when the queue goes
 * from empty to non-empty (only then: so every wake-up drains the queue completely). */
struct kio_pipe {
    uv_poll_t poll; /* embedded: watches fds[0]; closed by the close path */
    int fds[2];     /* owned: closed after the poll handle and the rd_kafka_t are gone */
    struct kio *k;  /* borrowed: owns this pipe */
};

enum kio_job_kind { KIO_JOB_START, KIO_JOB_ASSIGN, KIO_JOB_PROBE, KIO_JOB_DESTROY };

/* Work for the thread pool: only the *_thread_cb functions run off the loop. */
struct kio_job {
    uv_work_t work;                          /* embedded: the job is freed in kio_on_job_done */
    struct kio *k;                           /* borrowed: k waits for its job before it is freed */
    enum kio_job_kind kind;                  /* what to do */
    rd_kafka_resp_err_t err;                 /* result: 0, or the error of step what */
    const char *what;                        /* the step that failed (static string) */
    rd_kafka_topic_partition_list_t *assign; /* START: owned result, moved to k */
    int replay;                              /* START: a recv partition starts before its end */
    int replaced;                  /* PROBE: the cluster id changed (an empty cluster came back) */
    int rewound;                   /* PROBE: partitions sent back to the beginning of their log */
    char cluster[KIO_CLUSTER_MAX]; /* START, PROBE: the cluster id seen, or "" */
};

enum kio_close_state {
    KIO_OPEN = 0,       /* running */
    KIO_CLOSE_DRAIN,    /* waiting for the delivery reports of everything produced */
    KIO_CLOSE_CONSUMER, /* rd_kafka_consumer_close_queue sent: serving until closed */
    KIO_CLOSE_DESTROY,  /* polls stopped, the destroy job runs */
    KIO_CLOSE_HANDLES,  /* uv handles closing; then k is freed */
};

struct kio {
    struct broker *b;                      /* borrowed: for b->errors */
    uv_loop_t *loop;                       /* borrowed */
    const struct config *cfg;              /* borrowed: outlives k */
    const struct kio_handlers *h;          /* borrowed */
    void *arg;                             /* borrowed: for h's callbacks */
    rd_kafka_t *prod;                      /* owned: destroyed by the destroy job */
    rd_kafka_t *cons;                      /* owned: idem */
    rd_kafka_queue_t *prod_q;              /* owned ref: the producer's main queue */
    rd_kafka_queue_t *cons_q;              /* owned ref: the consumer queue (main forwarded) */
    rd_kafka_topic_t *rkt[KIO_NTOPICS];    /* owned: the producer's topic handles */
    char names[KIO_NTOPICS][KIO_NAME_MAX]; /* "ws.recv", "ws.send", "ws.topic" */
    struct kio_pipe pp;                    /* embedded: producer queue wake-up */
    struct kio_pipe cp;                    /* embedded: consumer queue wake-up */
    uv_timer_t retry;                      /* embedded: retry after a failed job; close deadline */
    uv_timer_t replay;                     /* embedded: replay_delay before the first assign */
    struct kio_job *job;                   /* owned: the job in the pool, or NULL */
    rd_kafka_topic_partition_list_t *assign; /* owned: start positions until assigned */
    uint64_t inflight;                       /* produced, delivery report not yet run */
    char cluster[KIO_CLUSTER_MAX];           /* cluster id at start (or the last replacement) */
    uint8_t started;                         /* start-up job succeeded: positions known */
    uint8_t up;                              /* brokers reachable (since start or the last probe) */
    uint8_t assigned;                        /* the consumer is assigned */
    uint8_t replay_due;                      /* the assign may go ahead (replay_delay passed) */
    uint8_t fatal;                           /* librdkafka fatal error: never ready again */
    uint8_t cons_closed;                     /* the consumer close finished (final commit done) */
    enum kio_close_state close;              /* KIO_OPEN until kio_close */
    int open_handles;                        /* uv handles not yet closed (close path) */
    kio_close_cb close_cb;                   /* the owner's */
    void *close_arg;                         /* borrowed: the owner's */
};

/* Run job j (kafka_jobs.c). Thread pool only; j->work is j's first member. */
void kio__job_thread_cb(uv_work_t *w);

#endif
