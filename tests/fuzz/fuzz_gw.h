/* fuzz_gw.h — the in-process gateway the libFuzzer targets drive: a fresh uv loop,
 * memory broker and server (src/server.c, conn.c, http.c, ws.c as shipped) per input,
 * listening on 127.0.0.1:0, and plain TCP clients that send the fuzz bytes (in chunks,
 * so the parsers see split points), half-close, read and discard the answers, until the
 * server has closed every connection. Does NOT re-implement any server code or inspect
 * what the server answers beyond the status line of a 101: the sanitizers and the checks
 * here (no connection left, every handle closed, uv_loop_close() == 0) are the oracle.
 * Single thread: the fuzz target's, which also runs the loop. */
#ifndef WSGATE_FUZZ_GW_H
#define WSGATE_FUZZ_GW_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "broker.h"
#include "config.h"
#include "server.h"

/* A check failed: print the reason (and the server's connections) and abort(), so
 * libFuzzer saves the input as a crash. */
#define FZ_CHECK(gw, cond, ...)                                                                    \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fz_fail((gw), __FILE__, __LINE__, __VA_ARGS__);                                        \
    } while (0)

/* Longest wait for the server to close its side after a client finished sending.
 * Every server timeout in fz_config() is far shorter, so reaching it is a hang. */
#define FZ_SETTLE_MS 5000

struct fz_gw {
    uv_loop_t loop;          /* embedded: initialised by fz_gw_start, closed by fz_gw_stop */
    struct config cfg;       /* caller fills it (fz_config) before fz_gw_start */
    struct broker broker;    /* the memory broker */
    struct server srv;       /* the gateway under test */
    struct sockaddr_in addr; /* where the listener is bound (port from the kernel) */
};

/* One client socket: sends data[0..len) chunk bytes per loop turn (0 = as much as the
 * socket takes), then half-closes if shut_after; reads and discards everything. */
struct fz_client {
    int fd;              /* owned: -1 when closed */
    const uint8_t *data; /* borrowed: bytes still to send live here until sent */
    size_t len;          /* of data */
    size_t off;          /* bytes of data sent */
    size_t chunk;        /* bytes per write, 0 = unlimited */
    int shut_after;      /* shutdown(SHUT_WR) once data is sent */
    int shut;            /* SHUT_WR done (or sending failed) */
    int eof;             /* the server closed: EOF or a reset seen */
    char head[512];      /* first bytes received (NUL-terminated), for the 101 check */
    size_t head_len;     /* bytes in head */
    size_t rx;           /* bytes received in total */
};

/* Process set-up once (SIGPIPE ignored, log level; WSGATE_FUZZ_LOG=debug|info shows logs). */
void fz_init(void);
/* The fuzzing configuration: defaults, 127.0.0.1:0, short timeouts, small limits.
 * tiny = 1: the smallest limits (pipeline 1, 64-byte heads, 16-byte messages, ...). */
void fz_config(struct config *cfg, int tiny);
/* Fresh loop, memory broker and server on gw->cfg, listening on the port of the previous
 * input (cfg->listen is overwritten; the first input takes one from the kernel). Aborts on
 * failure. */
void fz_gw_start(struct fz_gw *gw);
/* Shut the server down, run the loop until every handle is closed, check that nothing is
 * left (no connection, uv_loop_close() == 0), restore libFuzzer's signal handlers. */
void fz_gw_stop(struct fz_gw *gw);
/* Connect c to the gateway (a non-blocking socket); data/len/chunk/
 * shut_after as given. */
void fz_client_open(struct fz_gw *gw, struct fz_client *c, const uint8_t *data, size_t len,
                    size_t chunk, int shut_after);
/* Close the socket (no-op when closed). */
void fz_client_close(struct fz_client *c);
/* Run the loop and the n clients until every client has sent all its data and either
 * sees EOF (all = 1) or, for all = 0, until stop(c[0]) returns 1. Returns 1 if it was
 * met, 0 on timeout after ms. */
int fz_run(struct fz_gw *gw, struct fz_client **c, int n, int (*stop)(struct fz_client *),
           uint64_t ms);
/* Run until every client saw EOF and the server holds no connection; abort (a hang)
 * after FZ_SETTLE_MS. */
void fz_settle(struct fz_gw *gw, struct fz_client **c, int n);
/* Connections the server still has (lists + open or closing TCP handles). */
unsigned fz_server_conns(struct fz_gw *gw);
/* 1 once a whole HTTP answer head (CRLFCRLF) has arrived, or EOF. */
int fz_has_head(struct fz_client *c);
void fz_fail(struct fz_gw *gw, const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

#endif
