/* fuzz_ws.c — libFuzzer target: a valid upgrade to /ws/fz on a fresh in-process gateway
 * (fuzz_gw.h), then the fuzz bytes as the client's WebSocket byte stream: frames,
 * malformed headers, masks, control frames, fragments, close - through conn.c, ws.c
 * (ws_scan, wslay) and the output queue as shipped. The client half-closes after its
 * last byte; the input fails if a sanitizer fires, if the server keeps the connection
 * (hang), or if anything is left when the gateway stops. Single thread.
 *
 * Input: byte 0 is the mode, the rest is the stream.
 *   bits 0-4  chunk: bytes per loop turn (0 = as much as the socket takes), then the
 *             half-close; three values end otherwise (all bytes at once): 29 = the gateway
 *             shuts down (close 1001, drain) once the server has taken the bytes in and
 *             waits; 30 = a reset at that point; 31 = the socket stays open: pings,
 *             the idle timeout, the close timeout (29 and 31 use FZ_CFG_FAST: 10-30 ms
 *             timeouts, 100 ms drain, so the input stays fast)
 *   bit 5     send the upgrade request and the stream in one write, without waiting for
 *             the 101 (http.c keeps the bytes after the head while the attach runs)
 *   bit 6     a message is pushed to "fz" before the upgrade: the broker hands it over at
 *             attach, before the 101 is out (the early queue)
 *   bit 7     a second client pushes to "fz" and publishes to its topic "t1" while the
 *             stream is sent (server frames interleaved with pongs and the close)
 * A protocol check (on unless WSGATE_FUZZ_STRICT=0): whatever the stream holds, the client's
 * first bytes are the 101 (off by default while the bit-5 case is known to fail it).
 * Reproduce: build-fuzz/fuzz_ws FILE (WSGATE_FUZZ_LOG=debug: server log + one line per client). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_gw.h"

static const char fz_upgrade[] = "GET /ws/fz?topics=t1 HTTP/1.1\r\n"
                                 "Host: fuzz\r\n"
                                 "Upgrade: websocket\r\n"
                                 "Connection: Upgrade\r\n"
                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 "Sec-WebSocket-Version: 13\r\n\r\n";

static const char fz_push_early[] = "POST /push/fz HTTP/1.1\r\nContent-Length: 5\r\n"
                                    "Connection: close\r\n\r\nearly";

static const char fz_push_during[] = "POST /push/fz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
                                     "POST /publish/t1 HTTP/1.1\r\nContent-Length: 4\r\n\r\n"
                                     "\xff\xfe\x00\x01"
                                     "POST /push/fz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                                     "Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct fz_gw gw;
    struct fz_client ws, push;
    struct fz_client *cl[2] = {&ws, &push};
    uint8_t *joined = NULL;
    static int strict = -1;
    if (size < 1)
        return 0;
    fz_init();
    if (strict < 0)
        strict = getenv("WSGATE_FUZZ_STRICT") == NULL || strcmp(getenv("WSGATE_FUZZ_STRICT"), "0") != 0;
    uint8_t mode = data[0];
    size_t chunk = mode & 0x1f;
    enum fz_end end = chunk == 29   ? FZ_END_DRAIN
                      : chunk == 30 ? FZ_END_RST
                      : chunk == 31 ? FZ_END_NONE
                                    : FZ_END_FIN;
    if (end != FZ_END_FIN)
        chunk = 0;
    const uint8_t *stream = data + 1;
    size_t len = size - 1;
    fz_config(&gw.cfg, end == FZ_END_NONE || end == FZ_END_DRAIN ? FZ_CFG_FAST : 0);
    /* the upgrade request is the harness's own: a loaded machine must not make it miss a
     * 20 ms head deadline (the server would rightly close without an answer) */
    gw.cfg.handshake_timeout_ms = 2000;
    fz_gw_start(&gw);
    if (mode & 0x40) {
        fz_client_open(&gw, &push, (const uint8_t *)fz_push_early, sizeof(fz_push_early) - 1, 0,
                       FZ_END_FIN, 0);
        fz_settle(&gw, cl + 1, 1);
    }
    if (mode & 0x20) {
        /* upgrade + stream in one go: the server reads them together */
        joined = malloc(sizeof(fz_upgrade) - 1 + len);
        FZ_CHECK(&gw, joined != NULL, "out of memory");
        memcpy(joined, fz_upgrade, sizeof(fz_upgrade) - 1);
        memcpy(joined + sizeof(fz_upgrade) - 1, stream, len);
        fz_client_open(&gw, &ws, joined, sizeof(fz_upgrade) - 1 + len, 0, end, 0);
    } else {
        fz_client_open(&gw, &ws, (const uint8_t *)fz_upgrade, sizeof(fz_upgrade) - 1, 0,
                       FZ_END_NONE, 0);
        FZ_CHECK(&gw, fz_run(&gw, cl, 1, fz_has_head, FZ_SETTLE_MS), "no answer to the upgrade");
        FZ_CHECK(&gw, strncmp(ws.head, "HTTP/1.1 101 ", 13) == 0, "upgrade answered: %s",
                 fz_client_head(&ws));
        ws.data = stream; /* now the frames, chunk by chunk, then the end */
        ws.len = len;
        ws.off = 0;
        ws.chunk = chunk;
        ws.end = end;
    }
    if (mode & 0x80) {
        fz_client_open(&gw, &push, (const uint8_t *)fz_push_during, sizeof(fz_push_during) - 1, 0,
                       FZ_END_FIN, 0);
        fz_settle(&gw, cl, 2);
    } else {
        fz_settle(&gw, cl, 1);
    }
    if (strict && ws.rx > 0)
        FZ_CHECK(&gw, strncmp(ws.head, "HTTP/1.1 101 ", 13) == 0,
                 "the client's first bytes are not the 101 but: %s", fz_client_head(&ws));
    fz_gw_stop(&gw);
    free(joined);
    return 0;
}
