/* outq.h — the ordered output queue of one connection (see outq.c). Private to the
 * core. Loop thread only. */
#ifndef WSGATE_OUTQ_H
#define WSGATE_OUTQ_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

/* One queued item: a message ref, and the broker id to ack once written (0 = none). */
struct outq_item {
    struct msg *m;   /* ref: released when written or dropped */
    uint64_t msg_id; /* for broker_ack after the write; 0 = no ack */
};

/* Ring of queued items; items [0, writing) are in the in-flight uv_write. */
struct outq {
    struct outq_item *items; /* owned: ring storage, NULL while never used */
    uint32_t cap;            /* power of two */
    uint32_t head;           /* index of the oldest item */
    uint32_t count;          /* items queued */
    uint32_t writing;        /* items covered by the in-flight write */
    uint32_t off;            /* bytes of the head item already written */
    size_t bytes;            /* unwritten bytes of all items */
};

/* Bytes an item puts on the wire: its frame header (none unless MSG_KIND_FRAME) and
 * payload. */
static inline size_t outq_item_bytes(const struct msg *m)
{
    return (size_t)m->hdr_len + m->len;
}
/* Append m (a ref is taken). 0 or UV_ENOMEM. */
int outq_push(struct outq *q, struct msg *m, uint64_t msg_id);
/* The i-th item from the oldest (i < q->count). Inline: the flush path walks items. */
static inline struct outq_item *outq_at(struct outq *q, uint32_t i)
{
    return &q->items[(q->head + i) & (q->cap - 1)];
}
/* Forget the oldest item (its ref is the caller's to release). */
static inline void outq_pop(struct outq *q)
{
    q->head = (q->head + 1) & (q->cap - 1);
    q->count--;
}
/* Drop the queued messages (frames, SSE events) of q not yet being written (closing: the
 * broker gets them back at the detach); raw bytes (the 101, control frames, SSE comments)
 * stay so the stream remains well formed. Returns the count dropped. */
uint32_t outq_drop_unsent(struct outq *q);
/* Release every ref and the ring. */
void outq_free(struct outq *q);

#endif
