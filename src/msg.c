/* msg.c — refcounted, pre-framed messages (see include/msg.h). The frame header is
 * computed once in msg_seal so fan-out to N sockets costs N references, not N copies.
 * Does NOT do I/O. Loop thread only. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "msg.h"
#include "util.h"

/* kind shares opcode's byte: the memory backend counts sizeof(struct msg) per message */
_Static_assert(offsetof(struct msg, data) == 24, "struct msg grew");

struct msg *msg_new(size_t cap)
{
    struct msg *m;
    if (cap > UINT32_MAX)
        return NULL;
    m = malloc(sizeof(*m) + cap);
    if (m == NULL)
        return NULL;
    m->refs = 1;
    m->len = 0;
    m->cap = (uint32_t)cap;
    m->hdr_len = 0;
    m->opcode = 0;
    m->kind = MSG_KIND_RAW;
    return m;
}

struct msg *msg_new_copy(const void *data, size_t len, enum msg_frame_type type)
{
    struct msg *m = msg_new(len);
    if (m == NULL)
        return NULL;
    if (len > 0)
        memcpy(m->data, data, len);
    m->len = (uint32_t)len;
    msg_seal(m, type);
    return m;
}

int msg_append(struct msg **mp, const void *data, size_t len, size_t limit)
{
    struct msg *m = *mp;
    size_t need = (size_t)m->len + len;
    if (need > limit || need > UINT32_MAX)
        return UV_E2BIG;
    if (need > m->cap) {
        size_t cap = m->cap ? (size_t)m->cap * 2 : 256;
        while (cap < need)
            cap *= 2;
        if (cap > limit)
            cap = limit;
        struct msg *n = realloc(m, sizeof(*m) + cap);
        if (n == NULL)
            return UV_ENOMEM;
        n->cap = (uint32_t)cap;
        *mp = m = n;
    }
    memcpy(m->data + m->len, data, len);
    m->len = (uint32_t)need;
    return 0;
}

size_t msg_frame_header(uint8_t out[10], uint8_t opcode, uint64_t len)
{
    out[0] = (uint8_t)(0x80 | opcode); /* FIN + opcode; server frames are never masked */
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

void msg_seal(struct msg *m, enum msg_frame_type type)
{
    int text;
    if (type == MSG_FRAME_TEXT)
        text = 1;
    else if (type == MSG_FRAME_BINARY)
        text = 0;
    else /* the bytes alone decide: a broker gives no Content-Type */
        text = utf8_valid(m->data, m->len);
    m->opcode = text ? 0x1 : 0x2;
    m->hdr_len = (uint8_t)msg_frame_header(m->hdr, m->opcode, m->len);
    m->kind = MSG_KIND_FRAME;
}

void msg_unref(struct msg *m)
{
    if (m != NULL && --m->refs == 0)
        free(m);
}
