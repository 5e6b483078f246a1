/* msg.h — one message as the gateway carries it: opaque bytes plus the WebSocket frame
 * header computed once, shared by reference between every socket it goes to (fan-out
 * without copies). Does NOT know brokers or sockets. Loop thread only (plain refcount). */
#ifndef WSGATE_MSG_H
#define WSGATE_MSG_H

#include <stddef.h>
#include <stdint.h>

enum msg_frame_type { MSG_FRAME_AUTO = 0, MSG_FRAME_TEXT, MSG_FRAME_BINARY };

#define MSG_HDR_MAX 10 /* longest server frame header (64-bit length) */

struct msg {
    uint32_t refs;            /* counted: msg_unref frees at 0 */
    uint32_t len;             /* payload bytes in data[] */
    uint32_t cap;             /* bytes allocated for data[] */
    uint8_t hdr_len;          /* 0 until msg_seal(); then 2, 4 or 10 */
    uint8_t opcode;           /* 0x1 text or 0x2 binary, set by msg_seal() */
    uint8_t hdr[MSG_HDR_MAX]; /* unmasked server frame header for data[] */
    char data[];              /* payload; the gateway never parses or rewraps it */
};

/* New message with room for cap bytes, len 0, refs 1. NULL on allocation failure. */
struct msg *msg_new(size_t cap);
/* New message holding a copy of data (refs 1) and sealed with type. NULL on failure. */
struct msg *msg_new_copy(const void *data, size_t len, enum msg_frame_type type);
/* Append bytes, growing the buffer (may move it: *mp is updated) up to limit bytes.
 * Returns 0, UV_E2BIG over limit, UV_ENOMEM. Only before msg_seal(), while refs == 1. */
int msg_append(struct msg **mp, const void *data, size_t len, size_t limit);
/* Compute the frame header: type AUTO picks text for valid UTF-8, binary otherwise. */
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
