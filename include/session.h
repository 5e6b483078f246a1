/* session.h — one WebSocket client as the brokers see it: the session key, its topics,
 * and the calls a backend makes to hand it messages. A session belongs to exactly one
 * connection (the conn owns it); several sessions may share one key (a second tab).
 * Does NOT touch sockets itself: session_deliver queues on the owning connection.
 * Loop thread only. None of these calls ever calls back into the broker synchronously,
 * so a backend may call them while iterating its own lists. */
#ifndef WSGATE_SESSION_H
#define WSGATE_SESSION_H

#include <stddef.h>
#include <stdint.h>

#include "util.h"

struct conn;
struct msg;

struct session {
    struct conn *conn;         /* borrowed: the conn owns this session and outlives it */
    void *bpriv;               /* owned by the backend from attach until detach returns */
    struct session *bnext;     /* free for the backend's own per-key list (attach..detach) */
    struct session *bprev;     /* idem */
    uint64_t id;               /* unique per process, for logs and backends */
    char **topics;             /* owned: ntopics NUL-terminated names in one allocation */
    uint16_t ntopics;          /* number of broadcast topics from ?topics= */
    uint8_t key_len;           /* strlen(key) */
    char key[KEY_MAX_LEN + 1]; /* session key, validated by key_valid() */
};

/* Queue m on s's socket. m: borrowed (a ref is taken). msg_id: the backend's id for
 * ack(); 0 = no ack wanted (broadcast, at-most-once). Returns 0 when queued; whether the
 * client is slow is judged after the next write attempt (the kernel refused bytes and
 * more than max_send_buffer waits: closed 1008, detach follows later). Before its 101 a
 * client cannot be written to: then UV_ENOBUFS when the held frames would pass
 * max_send_buffer (closed 1008 after this call returns). UV_ECANCELED when s is
 * closing. On failure the message was not taken: a queue backend keeps it. */
int session_deliver(struct session *s, uint64_t msg_id, struct msg *m);
/* Would session_deliver take a message with a len-byte payload now (s not closing, and
 * within max_send_buffer)? Lets a queue backend leave a message in its broker instead of
 * getting the client closed as slow. The room comes back as frames are written (acks). */
int session_can_take(const struct session *s, size_t len);
/* Completion of broker attach: status 0 answers the client 101; < 0 answers 503 and
 * closes, and the core does not call detach for s (the backend already forgot it). */
void session_attached(struct session *s, int status);
/* Close s's socket with a WebSocket close code (e.g. 1011 broker failure); detach follows. */
void session_close(struct session *s, uint16_t code);

#endif
