/* fuzz_http.c — libFuzzer target: the fuzz bytes are what one HTTP client sends to a fresh
 * in-process gateway (fuzz_gw.h): llhttp and http.c's callbacks, routes, pipelining,
 * Expect, chunked bodies, pushes and publishes into the memory broker, answers written by
 * conn.c, and - when the bytes hold a valid upgrade - the WebSocket side too. The client
 * half-closes after its last byte; the input fails if a sanitizer fires, if the server
 * keeps the connection (hang), or if anything is left when the gateway stops.
 * Does NOT check answer contents. Single thread.
 *
 * Input: byte 0 is the mode, the rest is sent.
 *   bits 0-4  chunk: the client sends that many bytes per loop turn, so the parser sees
 *             split points (0 = as much as the socket takes), then half-closes; three
 *             values end otherwise (all bytes at once): 29 = the gateway shuts down (as on
 *             SIGTERM) with the client connected, once the server has taken the bytes in
 *             and waits; 30 = a reset at that point; 31 = the socket stays open
 *             and the server's timeouts must close it (29 and 31 use FZ_CFG_FAST: 10-30 ms
 *             timeouts, 100 ms drain, so the input stays fast)
 *   bit 5     slow readers (FZ_SLOW_READER: 2 KiB receive and 4 KiB server send buffers,
 *             answers read only after the last byte): the server's uv_write path,
 *             pipelining paused on output; the live WebSocket gets the small buffers too
 *   bit 6     tiny limits (FZ_CFG_TINY: pipeline 2, 160-byte heads, 48-byte messages,
 *             64-byte send buffer, forced text frames)
 *   bit 7     a WebSocket for session "fz" on topic "t1" is open while the bytes are sent,
 *             so /push/fz and /publish/t1 deliver to a live socket (fan-out, slow client)
 * A protocol check (on unless WSGATE_FUZZ_STRICT=0): the HTTP client's first bytes, if any, are
 * an HTTP/1.1 status line (off by default, like fuzz_ws's).
 * Reproduce: build-fuzz/fuzz_http FILE (WSGATE_FUZZ_LOG=debug: server log + one line per client).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_gw.h"

static const char fz_upgrade[] = "GET /ws/fz?topics=t1 HTTP/1.1\r\n"
                                 "Upgrade: websocket\r\n"
                                 "Connection: Upgrade\r\n"
                                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                                 "Sec-WebSocket-Version: 13\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct fz_gw gw; /* large: the server embeds its handles */
    struct fz_client ws, http;
    struct fz_client *cl[2] = {&http, &ws};
    static int strict = -1;
    if (size < 1)
        return 0;
    fz_init();
    if (strict < 0)
        strict = getenv("WSGATE_FUZZ_STRICT") == NULL || strcmp(getenv("WSGATE_FUZZ_STRICT"), "0") != 0;
    uint8_t mode = data[0];
    int live_ws = (mode & 0x80) != 0;
    size_t chunk = mode & 0x1f;
    enum fz_end end = chunk == 29   ? FZ_END_DRAIN
                      : chunk == 30 ? FZ_END_RST
                      : chunk == 31 ? FZ_END_NONE
                                    : FZ_END_FIN;
    if (end != FZ_END_FIN)
        chunk = 0;
    fz_config(&gw.cfg, ((mode & 0x40) ? FZ_CFG_TINY : 0) |
                           (end == FZ_END_NONE || end == FZ_END_DRAIN ? FZ_CFG_FAST : 0));
    fz_gw_start(&gw);
    if (live_ws) {
        struct fz_client *w[1] = {&ws};
        fz_client_open(&gw, &ws, (const uint8_t *)fz_upgrade, sizeof(fz_upgrade) - 1, 0,
                       FZ_END_NONE, (mode & 0x20) ? FZ_SLOW_READER : 0);
        FZ_CHECK(&gw, fz_run(&gw, w, 1, fz_has_head, FZ_SETTLE_MS), "no answer to the upgrade");
        FZ_CHECK(&gw, strncmp(ws.head, "HTTP/1.1 101 ", 13) == 0, "upgrade answered: %s",
                 fz_client_head(&ws));
    }
    fz_client_open(&gw, &http, data + 1, size - 1, chunk, end, (mode & 0x20) ? FZ_SLOW_READER : 0);
    /* the request stream first, with the WebSocket still open; then it half-closes too */
    FZ_CHECK(&gw, fz_run(&gw, cl, live_ws ? 2 : 1, fz_closed, FZ_SETTLE_MS),
             "the server did not close the HTTP connection within %d ms after the client's "
             "last byte (a hang)",
             FZ_SETTLE_MS);
    ws.end = FZ_END_FIN;
    fz_settle(&gw, cl, live_ws ? 2 : 1);
    if (strict && http.rx > 0)
        FZ_CHECK(&gw, strncmp(http.head, "HTTP/1.1 ", 9) == 0,
                 "the client's first bytes are not a status line but: %s", fz_client_head(&http));
    fz_gw_stop(&gw);
    return 0;
}
