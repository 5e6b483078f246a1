/* msg.h — one message as the gateway carries it: opaque bytes plus the WebSocket frame
 * header computed once, shared by reference between every socket it goes to (fan-out
 * without copies). The same struct carries what else a connection writes (HTTP answers,
 * the 101, control frames, SSE events); its kind says which. Does NOT know brokers or
 * sockets. Loop thread only (plain refcount). */
#ifndef WSGATE_MSG_H
#define WSGATE_MSG_H

#include <stddef.h>
#include <stdint.h>

enum msg_frame_type { MSG_FRAME_AUTO = 0, MSG_FRAME_TEXT, MSG_FRAME_BINARY };

/* What a msg's bytes are on a connection: how conn.c writes, counts and drops it. */
enum msg_kind {
    MSG_KIND_RAW = 0, /* bytes written as they are, not a message (HTTP answers, the 101,
                       * pings, pongs, close frames): what msg_new() makes */
    MSG_KIND_FRAME,   /* a message as a WebSocket frame: msg_seal() put its header in hdr[];
                       * counted as delivered once written, dropped unsent at a close */
    MSG_KIND_EVENT,   /* a message encoded as an SSE event (sse.c): written as it is,
                       * counted as delivered once written */
};

#define MSG_HDR_MAX 10 /* longest server frame header (64-bit length) */

struct msg {
    uint32_t refs;            /* counted: msg_unref frees at 0 */
    uint32_t len;             /* payload bytes in data[] */
    uint32_t cap;             /* bytes allocated for data[] */
    uint8_t hdr_len;          /* 0 until msg_seal(); then 2, 4 or 10 */
    uint8_t opcode : 4;       /* 0x1 text or 0x2 binary: msg_seal(), or ws.c's upstream copy */
    uint8_t kind : 4;         /* enum msg_kind: RAW from msg_new(), FRAME after msg_seal() */
    uint8_t hdr[MSG_HDR_MAX]; /* unmasked server frame header for data[] */
    char data[];              /* payload; the gateway never parses or rewraps it */
};

/* New message with room for cap bytes, len 0, refs 1, MSG_KIND_RAW until msg_seal().
 * NULL on allocation failure. */
struct msg *msg_new(size_t cap);
/* New message holding a copy of data (refs 1) and sealed with type. NULL on failure. */
struct msg *msg_new_copy(const void *data, size_t len, enum msg_frame_type type);
/* Append bytes, growing the buffer (may move it: *mp is updated) up to limit bytes.
 * Returns 0, UV_E2BIG over limit, UV_ENOMEM. Only before msg_seal(), while refs == 1. */
int msg_append(struct msg **mp, const void *data, size_t len, size_t limit);
/* Compute the frame header (m becomes MSG_KIND_FRAME): type AUTO picks text for valid
 * UTF-8, binary otherwise. */
void msg_seal(struct msg *m, enum msg_frame_type type);

static inline struct msg *msg_ref(struct msg *m)
{
    m->refs++;
    return m;
}
/* Drop one reference; frees the message at zero. NULL is a no-op. */
void msg_unref(struct msg *m);

/* Write a server (unmasked) frame header for opcode/len into out[10]; returns its length. */
size_t msg_frame_header(uint8_t out[10], uint8_t opcode, uint64_t len);

#endif
