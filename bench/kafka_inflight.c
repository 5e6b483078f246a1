/* bench/kafka_inflight.c — what a Kafka-protocol broker gives a producer that keeps a
 * fixed number of records in flight, with wsgate's producer settings (acks=all,
 * idempotent, linger.ms 1 unless given, murmur2_random) and no gateway in the way: the
 * ceiling of the kafka backend's "one request in flight per push connection" scenario
 * (32 push connections = 32 records in flight).
 *
 * Usage: bench/kafka_inflight BOOTSTRAP [IN_FLIGHT=32] [RECORDS=20000] [LINGER_MS=1]
 * Produces 64-byte records to ws.recv with keys over 1,000 sessions, keeps IN_FLIGHT
 * unacknowledged, and prints key=value lines: records_per_s, mean_rtt_ms (produce call to
 * delivery report). Exit 0, 1 on a delivery error, 2 on bad usage.
 *
 * Threads: main, plus librdkafka's own; delivery reports run on main inside
 * rd_kafka_poll. No global mutable state: the counters live in struct kin on main's stack. */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct kin {
    long inflight; /* produced, no delivery report yet */
    long done;     /* delivery reports counted */
    double rtt_s;  /* sum of produce-to-report times of the counted ones */
    int failed;    /* a delivery report carried an error */
};

struct rec {
    double t0; /* when it was produced */
};

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    struct kin *k = opaque;
    struct rec *r = m->_private; /* owned: allocated per record by produce_one */
    (void)rk;
    if (m->err) {
        fprintf(stderr, "kafka_inflight: delivery: %s\n", rd_kafka_err2str(m->err));
        k->failed = 1;
    }
    k->rtt_s += now_s() - r->t0;
    free(r);
    k->inflight--;
    k->done++;
}

static int produce_one(rd_kafka_t *rk, struct kin *k, long i)
{
    static const char val[64] = "kafka_inflight-----------------------------------------------";
    char key[16];
    int kl = snprintf(key, sizeof key, "s%ld", i % 1000);
    struct rec *r = malloc(sizeof *r); /* owned by librdkafka until on_delivery frees it */
    if (r == NULL)
        return -1;
    r->t0 = now_s();
    if (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("ws.recv"), RD_KAFKA_V_KEY(key, (size_t)kl),
                          RD_KAFKA_V_VALUE((void *)val, sizeof val), RD_KAFKA_V_OPAQUE(r),
                          RD_KAFKA_V_END) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        free(r);
        return -1;
    }
    k->inflight++;
    return 0;
}

int main(int argc, char **argv)
{
    char err[256];
    struct kin k = {0};
    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: kafka_inflight BOOTSTRAP [IN_FLIGHT=32] [RECORDS=20000] "
                        "[LINGER_MS=1]\n");
        return 2;
    }
    long w = argc > 2 ? atol(argv[2]) : 32, n = argc > 3 ? atol(argv[3]) : 20000;
    const char *linger = argc > 4 ? argv[4] : "1";
    if (w < 1 || n < 1)
        return 2;
    rd_kafka_conf_t *c = rd_kafka_conf_new(); /* owned by rk once rd_kafka_new succeeds */
    if (rd_kafka_conf_set(c, "bootstrap.servers", argv[1], err, sizeof err) ||
        rd_kafka_conf_set(c, "acks", "all", err, sizeof err) ||
        rd_kafka_conf_set(c, "enable.idempotence", "true", err, sizeof err) ||
        rd_kafka_conf_set(c, "linger.ms", linger, err, sizeof err) ||
        rd_kafka_conf_set(c, "partitioner", "murmur2_random", err, sizeof err)) {
        fprintf(stderr, "kafka_inflight: %s\n", err);
        rd_kafka_conf_destroy(c);
        return 2;
    }
    rd_kafka_conf_set_opaque(c, &k);
    rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err); /* owned */
    if (rk == NULL) {
        fprintf(stderr, "kafka_inflight: %s\n", err);
        rd_kafka_conf_destroy(c);
        return 2;
    }
    /* one record first: connections and the producer id are set up before timing */
    if (produce_one(rk, &k, 0) < 0)
        return 1;
    while (k.inflight > 0)
        rd_kafka_poll(rk, 100);
    k.done = 0;
    k.rtt_s = 0;
    long sent = 0;
    double t0 = now_s();
    while (k.done < n && !k.failed) {
        while (k.inflight < w && sent < n) {
            if (produce_one(rk, &k, sent) < 0) {
                fprintf(stderr, "kafka_inflight: produce failed\n");
                rd_kafka_destroy(rk);
                return 1;
            }
            sent++;
        }
        rd_kafka_poll(rk, 1);
    }
    double el = now_s() - t0;
    printf("in_flight=%ld\nrecords=%ld\nlinger_ms=%s\nrecords_per_s=%.0f\nmean_rtt_ms=%.2f\n", w,
           k.done, linger, (double)k.done / el, k.rtt_s / (double)(k.done ? k.done : 1) * 1e3);
    rd_kafka_flush(rk, 5000);
    rd_kafka_destroy(rk);
    return k.failed;
}
