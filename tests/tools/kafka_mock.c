/* kafka_mock.c — a Kafka test broker for the integration tests and the README: librdkafka's
 * mock cluster (in-memory, loopback only) in a process of its own, never inside the gateway.
 *
 *   kafka_mock [-b BROKERS] [-p PORT] [-f FILE] [-t TOPIC:PARTITIONS]...
 *
 * Prints "BOOTSTRAP 127.0.0.1:PORT[,...]" on stdout and, with -f, writes the bootstrap list
 * to FILE atomically (FILE.tmp, then rename), then waits for SIGTERM or SIGINT and exits 0.
 * -t creates a topic up front (several -t allowed); unknown topics are auto-created with 4
 * partitions anyway. -p PORT makes broker 1 listen on PORT (broker n on PORT+n-1) instead of
 * a random port, so a killed mock can come back on the same address: the mock has no port
 * option, so this file interposes bind(2) (the executable's symbol wins over libc's for
 * librdkafka's call) and rewrites the port of its 127.0.0.1:0 binds.
 *
 * Does NOT persist anything (a restart is an empty cluster: offsets start at 0 again) or
 * support SASL/TLS or CreateTopics (DEPS.md). Threads: librdkafka's; main only waits. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int mock_port; /* -p: port for the next mock listener, 0 = random */

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    struct sockaddr_in sin;
    if (real_bind == NULL)
        real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (mock_port != 0 && addr->sa_family == AF_INET && len >= sizeof(sin)) {
        memcpy(&sin, addr, sizeof(sin));
        if (sin.sin_port == 0) {
            sin.sin_port = htons((uint16_t)mock_port++);
            return real_bind(fd, (const struct sockaddr *)&sin, sizeof(sin));
        }
    }
    return real_bind(fd, addr, len);
}

static int usage(void)
{
    fprintf(stderr, "usage: kafka_mock [-b BROKERS] [-p PORT] [-f FILE] [-t TOPIC:PARTITIONS]...\n");
    return 64;
}

int main(int argc, char **argv)
{
    const char *file = NULL, *topics[32];
    int brokers = 1, ntopics = 0, sig;
    char errstr[256];
    sigset_t set;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            return usage();
        if (strcmp(argv[i], "-b") == 0)
            brokers = atoi(argv[++i]);
        else if (strcmp(argv[i], "-p") == 0)
            mock_port = atoi(argv[++i]);
        else if (strcmp(argv[i], "-f") == 0)
            file = argv[++i];
        else if (strcmp(argv[i], "-t") == 0 && ntopics < 32)
            topics[ntopics++] = argv[++i];
        else
            return usage();
    }
    if (brokers < 1 || mock_port < 0 || mock_port > 65535)
        return usage();
    /* librdkafka's threads inherit this mask, so only sigwait below sees the signals */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    /* quiet: the launcher itself has no bootstrap.servers (a notice at level 5) */
    rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        fprintf(stderr, "kafka_mock: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (mc == NULL) { /* librdkafka 2.0.2 may abort inside cluster_new instead (bind failed) */
        fprintf(stderr, "kafka_mock: cannot create the mock cluster (port in use?)\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    for (int i = 0; i < ntopics; i++) {
        char name[256];
        const char *colon = strrchr(topics[i], ':');
        int parts = colon != NULL ? atoi(colon + 1) : 4;
        size_t n = colon != NULL ? (size_t)(colon - topics[i]) : strlen(topics[i]);
        if (n == 0 || n >= sizeof(name) || parts < 1)
            return usage();
        memcpy(name, topics[i], n);
        name[n] = '\0';
        if (rd_kafka_mock_topic_create(mc, name, parts, 1) != RD_KAFKA_RESP_ERR_NO_ERROR)
            fprintf(stderr, "kafka_mock: cannot create topic %s\n", name);
    }
    const char *bootstrap = rd_kafka_mock_cluster_bootstraps(mc);
    printf("BOOTSTRAP %s\n", bootstrap);
    fflush(stdout);
    if (file != NULL) {
        char tmp[4096];
        FILE *f;
        snprintf(tmp, sizeof(tmp), "%s.tmp", file);
        if ((f = fopen(tmp, "w")) == NULL || fprintf(f, "%s\n", bootstrap) < 0 ||
            fclose(f) != 0 || rename(tmp, file) != 0) {
            perror("kafka_mock: bootstrap file");
            return 1;
        }
    }
    sigwait(&set, &sig);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return 0;
}
