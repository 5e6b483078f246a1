/* outq.c — the ordered output queue of one connection: a power-of-two ring of message
 * references (each with the broker id to ack once written), grown by doubling, unwrapped
 * oldest first. Does NOT write to sockets, ack or count metrics (conn.c does). Loop
 * thread only. */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "msg.h"
#include "outq.h"

int outq_push(struct outq *q, struct msg *m, uint64_t msg_id)
{
    if (q->count == q->cap) {
        uint32_t ncap = q->cap ? q->cap * 2 : 8;
        struct outq_item *n = malloc(sizeof(*n) * ncap);
        if (n == NULL)
            return UV_ENOMEM;
        /* unwrap the ring into the new storage, oldest first */
        for (uint32_t i = 0; i < q->count; i++)
            n[i] = q->items[(q->head + i) & (q->cap - 1)];
        free(q->items);
        q->items = n;
        q->cap = ncap;
        q->head = 0;
    }
    struct outq_item *it = &q->items[(q->head + q->count) & (q->cap - 1)];
    it->m = msg_ref(m);
    it->msg_id = msg_id;
    q->count++;
    q->bytes += outq_item_bytes(m);
    return 0;
}

uint32_t outq_drop_unsent(struct outq *q)
{
    uint32_t dropped = 0, kept;
    /* items [0, writing) belong to an in-flight write and the head item may be half
     * written: both must stay so the stream is never cut mid-frame */
    uint32_t keep = q->writing;
    if (keep == 0 && q->off > 0)
        keep = 1;
    /* of the rest, messages (WebSocket frames, SSE events: whole items, so the stream stays
     * well-formed) go, as their broker gets them back at the detach: written after it,
     * they would be delivered twice; raw bytes (a 101 not yet written, pongs, a close
     * frame, an SSE comment) stay, in order */
    kept = keep;
    for (uint32_t i = keep; i < q->count; i++) {
        struct outq_item it = *outq_at(q, i);
        if (it.m->kind == MSG_KIND_RAW) {
            *outq_at(q, kept++) = it;
            continue;
        }
        q->bytes -= outq_item_bytes(it.m);
        dropped++;
        msg_unref(it.m);
    }
    q->count = kept;
    return dropped;
}

void outq_free(struct outq *q)
{
    while (q->count > 0) {
        msg_unref(outq_at(q, 0)->m);
        outq_pop(q);
    }
    free(q->items);
    memset(q, 0, sizeof(*q));
}
