/* nats_pub.c — a tiny service-side NATS client for the README recipe and the tests
 * (Debian has no `nats` CLI). Speaks to nats-server through nats.c, never through wsgate.
 *
 *   nats_pub [-s URL] pub SUBJECT [DATA]      core publish (DATA, or stdin when omitted);
 *                                             a stream capturing SUBJECT stores it, unacked
 *   nats_pub [-s URL] jspub SUBJECT [DATA]    JetStream publish: waits for the stream's
 *                                             ack, prints "stream=S seq=N", exit 1 if refused
 *   nats_pub [-s URL] [-x] sub SUBJECT [N [SECONDS]]
 *                                             print N messages (default 1) then exit 0, or
 *                                             exit 2 after SECONDS (default 10); one line each:
 *                                             the payload, or with -x "SUBJECT HEX"; prints
 *                                             "ready" on stderr once subscribed
 *   nats_pub [-s URL] flood SECONDS SIZE RATE SUBJECT...
 *                                             core publishes of SIZE bytes, round robin over
 *                                             the SUBJECTs, RATE per second (0: as fast as
 *                                             the connection takes them), for SECONDS;
 *                                             prints "sent=N" (tests: a flooding publisher)
 *   nats_pub [-s URL] stream-rm NAME          delete a stream (tests: incompatible streams)
 *   nats_pub [-s URL] stream-add NAME SUBJECT [limits|workqueue] [file|memory]
 *   nats_pub [-s URL] consumers NAME          print the stream's consumer count and message count
 *   nats_pub [-s URL] streams PREFIX          print the names of streams starting with PREFIX
 *
 * URL defaults to $NATS_URL or nats://127.0.0.1:4222. Does NOT use the gateway's config.
 * Threads: nats.c's own; main only blocks in synchronous calls. */
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int usage(void)
{
    fprintf(stderr, "usage: nats_pub [-s URL] [-x] pub|jspub SUBJECT [DATA]\n"
                    "       nats_pub [-s URL] [-x] sub SUBJECT [N [SECONDS]]\n"
                    "       nats_pub [-s URL] flood SECONDS SIZE RATE SUBJECT...\n"
                    "       nats_pub [-s URL] stream-rm NAME | consumers NAME | streams PREFIX\n"
                    "       nats_pub [-s URL] stream-add NAME SUBJECT [limits|workqueue] "
                    "[file|memory]\n");
    return 64;
}

static int fail(const char *what, natsStatus s)
{
    fprintf(stderr, "nats_pub: %s: %s (%s)\n", what, natsStatus_GetText(s),
            nats_GetLastError(NULL));
    return 1;
}

/* DATA from argv, or all of stdin (binary-safe). *buf is malloc'd when read from stdin. */
static int read_data(int argc, char **argv, int i, char **buf, size_t *len)
{
    size_t cap = 0;
    if (i < argc) {
        *buf = argv[i];
        *len = strlen(argv[i]);
        return 0;
    }
    *buf = NULL;
    *len = 0;
    for (;;) {
        size_t n;
        if (*len == cap) {
            char *nb = realloc(*buf, cap = cap ? cap * 2 : 4096);
            if (nb == NULL)
                return -1;
            *buf = nb;
        }
        n = fread(*buf + *len, 1, cap - *len, stdin);
        if (n == 0)
            break;
        *len += n;
    }
    return 1;
}

int main(int argc, char **argv)
{
    const char *url = getenv("NATS_URL");
    natsConnection *nc = NULL;
    natsStatus s;
    int hex = 0, i = 1, rc = 0;
    if (url == NULL || *url == '\0')
        url = "nats://127.0.0.1:4222";
    while (i < argc && argv[i][0] == '-') {
        if (strcmp(argv[i], "-s") == 0 && i + 1 < argc) {
            url = argv[i + 1];
            i += 2;
        } else if (strcmp(argv[i], "-x") == 0) {
            hex = 1;
            i++;
        } else {
            return usage();
        }
    }
    if (i + 1 >= argc)
        return usage();
    if ((s = natsConnection_ConnectTo(&nc, url)) != NATS_OK)
        return fail("connect", s);

    const char *cmd = argv[i], *arg = argv[i + 1];
    if (strcmp(cmd, "pub") == 0 || strcmp(cmd, "jspub") == 0) {
        char *data;
        size_t len;
        int owned = read_data(argc, argv, i + 2, &data, &len);
        if (owned < 0)
            return fail("read stdin", NATS_NO_MEMORY);
        if (strcmp(cmd, "pub") == 0) {
            s = natsConnection_Publish(nc, arg, data, (int)len);
            if (s == NATS_OK)
                s = natsConnection_FlushTimeout(nc, 5000);
            if (s != NATS_OK)
                rc = fail("publish", s);
        } else {
            jsCtx *js = NULL;
            jsPubAck *pa = NULL;
            jsErrCode jerr = 0;
            s = natsConnection_JetStream(&js, nc, NULL);
            if (s == NATS_OK)
                s = js_Publish(&pa, js, arg, data, (int)len, NULL, &jerr);
            if (s == NATS_OK)
                printf("stream=%s seq=%llu\n", pa->Stream, (unsigned long long)pa->Sequence);
            else
                rc = fail("jetstream publish", s);
            jsPubAck_Destroy(pa);
            jsCtx_Destroy(js);
        }
        if (owned > 0)
            free(data);
    } else if (strcmp(cmd, "sub") == 0) {
        natsSubscription *sub = NULL;
        long want = i + 2 < argc ? atol(argv[i + 2]) : 1;
        long secs = i + 3 < argc ? atol(argv[i + 3]) : 10;
        s = natsConnection_SubscribeSync(&sub, nc, arg);
        if (s == NATS_OK)
            s = natsConnection_FlushTimeout(nc, 5000); /* the server has the SUB now */
        if (s != NATS_OK)
            return fail("subscribe", s);
        fprintf(stderr, "ready\n");
        int64_t deadline = nats_Now() + secs * 1000;
        for (long got = 0; got < want;) {
            natsMsg *m = NULL;
            int64_t left = deadline - nats_Now();
            if (left <= 0 || (s = natsSubscription_NextMsg(&m, sub, left)) == NATS_TIMEOUT) {
                fprintf(stderr, "nats_pub: timeout after %ld of %ld messages\n", got, want);
                rc = 2;
                break;
            }
            if (s != NATS_OK) {
                rc = fail("next message", s);
                break;
            }
            const unsigned char *d = (const unsigned char *)natsMsg_GetData(m);
            int len = natsMsg_GetDataLength(m);
            if (hex) {
                printf("%s ", natsMsg_GetSubject(m));
                for (int k = 0; k < len; k++)
                    printf("%02x", d[k]);
                printf("\n");
            } else {
                fwrite(d, 1, (size_t)len, stdout);
                printf("\n");
            }
            fflush(stdout);
            natsMsg_Destroy(m);
            got++;
        }
        natsSubscription_Destroy(sub);
    } else if (strcmp(cmd, "flood") == 0) {
        long secs = atol(arg), size = i + 2 < argc ? atol(argv[i + 2]) : -1, sent = 0;
        long rate = i + 3 < argc ? atol(argv[i + 3]) : -1;
        int first = i + 4, nsubj = argc - first;
        char *data;
        if (size < 0 || size > (1 << 24) || rate < 0 || nsubj < 1)
            return usage();
        if ((data = malloc((size_t)size + 1)) == NULL)
            return fail("flood", NATS_NO_MEMORY);
        memset(data, 'f', (size_t)size);
        int64_t start = nats_Now(), deadline = start + secs * 1000;
        while (s == NATS_OK && nats_Now() < deadline) {
            for (int k = 0; k < 256 && s == NATS_OK; k++, sent++)
                s = natsConnection_Publish(nc, argv[first + sent % nsubj], data, (int)size);
            if (rate > 0) { /* the next batch is due when the rate allows it */
                int64_t due = start + (int64_t)sent * 1000 / rate;
                if (due > nats_Now())
                    nats_Sleep(due - nats_Now());
            }
        }
        if (s == NATS_OK)
            s = natsConnection_FlushTimeout(nc, 10000);
        if (s != NATS_OK)
            rc = fail("flood", s);
        printf("sent=%ld\n", sent);
        free(data);
    } else if (strcmp(cmd, "streams") == 0) {
        jsCtx *js = NULL;
        jsStreamNamesList *l = NULL;
        s = natsConnection_JetStream(&js, nc, NULL);
        if (s == NATS_OK)
            s = js_StreamNames(&l, js, NULL, NULL);
        if (s == NATS_NOT_FOUND) /* no stream at all */
            s = NATS_OK;
        for (int k = 0; s == NATS_OK && l != NULL && k < l->Count; k++)
            if (strncmp(l->List[k], arg, strlen(arg)) == 0)
                printf("%s\n", l->List[k]);
        jsStreamNamesList_Destroy(l);
        jsCtx_Destroy(js);
        if (s != NATS_OK)
            rc = fail("streams", s);
    } else if (strcmp(cmd, "stream-rm") == 0 || strcmp(cmd, "consumers") == 0 ||
               strcmp(cmd, "stream-add") == 0) {
        jsCtx *js = NULL;
        jsErrCode jerr = 0;
        s = natsConnection_JetStream(&js, nc, NULL);
        if (s == NATS_OK && strcmp(cmd, "stream-rm") == 0) {
            s = js_DeleteStream(js, arg, NULL, &jerr);
        } else if (s == NATS_OK && strcmp(cmd, "consumers") == 0) {
            jsStreamInfo *si = NULL;
            s = js_GetStreamInfo(&si, js, arg, NULL, &jerr);
            if (s == NATS_OK)
                printf("consumers=%lld msgs=%llu\n", (long long)si->State.Consumers,
                       (unsigned long long)si->State.Msgs);
            jsStreamInfo_Destroy(si);
        } else if (s == NATS_OK) {
            jsStreamConfig sc;
            const char *subjects[1];
            if (i + 2 >= argc)
                return usage();
            subjects[0] = argv[i + 2];
            jsStreamConfig_Init(&sc);
            sc.Name = arg;
            sc.Subjects = subjects;
            sc.SubjectsLen = 1;
            sc.Retention = i + 3 < argc && strcmp(argv[i + 3], "workqueue") == 0
                               ? js_WorkQueuePolicy
                               : js_LimitsPolicy;
            sc.Storage = i + 4 < argc && strcmp(argv[i + 4], "memory") == 0 ? js_MemoryStorage
                                                                            : js_FileStorage;
            s = js_AddStream(NULL, js, &sc, NULL, &jerr);
        }
        if (s != NATS_OK)
            rc = fail(cmd, s);
        jsCtx_Destroy(js);
    } else {
        rc = usage();
    }
    natsConnection_Destroy(nc);
    return rc;
}
