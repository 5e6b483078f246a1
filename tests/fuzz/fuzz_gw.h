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
#include "auth.h"
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
    struct auth auth;        /* access control from cfg (open unless the input sets keys) */
    struct sockaddr_in addr; /* where the listener is bound (port from the kernel) */
};

/* How a client ends once its data is sent. */
enum fz_end {
    FZ_END_NONE = 0, /* keep the socket open: the server's timeouts must close it */
    FZ_END_FIN,      /* shutdown(SHUT_WR): the half-close the server answers, then closes */
    FZ_END_RST,      /* close with SO_LINGER 0 (a reset) once the server, after the last
                      * byte, has nothing left to do but wait */
    FZ_END_DRAIN,    /* keep the socket open; at the same point the gateway shuts down
                      * (server_shutdown, as on SIGTERM) with c connected */
};

enum fz_client_flag {
    FZ_SLOW_READER = 1 << 0, /* a slow network: 2 KiB receive buffer here, the server's
                              * send buffer on this connection set to 4 KiB right after the
                              * accept; reads only once all is sent (or when sending is
                              * blocked, so a large input cannot deadlock) */
};

/* Config variants for fz_config. */
enum fz_config_flag {
    FZ_CFG_TINY = 1 << 0, /* smallest limits: pipeline 2, 160-byte heads, 48-byte messages,
                           * 64-byte send buffer, 1 queued message, forced text frames */
    FZ_CFG_FAST = 1 << 1, /* timeouts of 10-30 ms (handshake, keep-alive, ping, idle,
                           * close), 100 ms drain, 10 ms TTL, for inputs that wait for them */
};

/* One client socket: sends data[0..len) chunk bytes per loop turn (0 = as much as the
 * socket takes), then ends as end says; reads and discards everything. */
struct fz_client {
    int fd;              /* owned: -1 when closed */
    const uint8_t *data; /* borrowed: the bytes to send, until they are sent */
    size_t len;          /* of data */
    size_t off;          /* bytes of data sent */
    size_t chunk;        /* bytes per write, 0 = unlimited */
    enum fz_end end;     /* what happens after the last byte (may be changed later) */
    int flags;           /* enum fz_client_flag */
    int shut;            /* FIN sent, or sending failed */
    int blocked;         /* the last send found the socket full */
    int tuned;           /* FZ_SLOW_READER: the server's end has its small send buffer */
    int end_turn;        /* FZ_END_RST/DRAIN: all sent, the end comes when the loop is quiet */
    int eof;             /* the server closed: EOF or a reset seen (or we reset) */
    char head[512];      /* first bytes received (NUL-terminated), for the 101 check */
    size_t head_len;     /* bytes in head */
    size_t rx;           /* bytes received in total */
};

/* Process set-up once (SIGPIPE ignored, log level; WSGATE_FUZZ_LOG=debug|info shows logs). */
void fz_init(void);
/* The fuzzing configuration: defaults, 127.0.0.1:0, timeouts of 100-500 ms, small limits;
 * flags: enum fz_config_flag. */
void fz_config(struct config *cfg, int flags);
/* Fresh loop, memory broker and server on gw->cfg, listening on the port of the previous
 * input (cfg->listen is overwritten; the first input takes one from the kernel). Aborts on
 * failure. */
void fz_gw_start(struct fz_gw *gw);
/* Shut the server down, run the loop until every handle is closed, check that nothing is
 * left (no connection, uv_loop_close() == 0), restore libFuzzer's signal handlers. */
void fz_gw_stop(struct fz_gw *gw);
/* Connect c to the gateway (a non-blocking socket) to send data[0..len) chunk bytes per
 * loop turn, then end; flags: enum fz_client_flag. */
void fz_client_open(struct fz_gw *gw, struct fz_client *c, const uint8_t *data, size_t len,
                    size_t chunk, enum fz_end end, int flags);
/* Close the socket (no-op when closed). */
void fz_client_close(struct fz_client *c);
/* Run the loop and the n clients until stop(c[0]) returns 1, or with stop NULL until
 * every client has sent its data and is closed (EOF seen) and the server holds no
 * connection. Returns 1 if so, 0 when ms passed first. */
int fz_run(struct fz_gw *gw, struct fz_client **c, int n, int (*stop)(struct fz_client *),
           uint64_t ms);
/* fz_run(stop NULL), then close the clients; a hang (abort) after FZ_SETTLE_MS. */
void fz_settle(struct fz_gw *gw, struct fz_client **c, int n);
/* Connections the server still has (lists + open or closing TCP handles). */
unsigned fz_server_conns(struct fz_gw *gw);
/* 1 once a whole HTTP answer head (CRLFCRLF) has arrived, or EOF. */
int fz_has_head(struct fz_client *c);
/* The first line of what c received, non-printable bytes as '.', for messages. */
const char *fz_client_head(struct fz_client *c);
/* 1 once c is closed (EOF seen or reset). */
int fz_closed(struct fz_client *c);
void fz_fail(struct fz_gw *gw, const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 4, 5)));

#endif
