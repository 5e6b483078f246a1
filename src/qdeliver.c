/* qdeliver.c — per-key and per-socket delivery state of the queue backends (qdeliver.h):
 * the key's socket list with its round-robin position, the socket window, and the pull
 * bookkeeping. Does NOT allocate or talk to a broker. Loop thread only. */
#include "qdeliver.h"

#include "msg.h"
#include "session.h"

void qd_key_link(struct qd_key *k, struct qd_sock *q, struct session *s)
{
    q->s = s;
    q->prev = NULL;
    q->next = k->socks;
    if (k->socks != NULL)
        k->socks->prev = q;
    k->socks = q;
    k->nsocks++;
    if (k->rr == NULL)
        k->rr = q;
}

void qd_key_unlink(struct qd_key *k, struct qd_sock *q)
{
    struct qd_sock *next = q->next;
    if (q->prev != NULL)
        q->prev->next = q->next;
    else
        k->socks = q->next;
    if (q->next != NULL)
        q->next->prev = q->prev;
    q->next = q->prev = NULL;
    k->nsocks--;
    if (k->rr == q)
        k->rr = next != NULL ? next : k->socks;
}

uint32_t qd_sock_room(const struct qd_sock *q, uint32_t window)
{
    uint64_t used = (uint64_t)q->unacked + q->promised;
    if (q->refused)
        return 0;
    if (window == 0)
        return UINT32_MAX;
    return used < window ? (uint32_t)(window - used) : 0;
}

int qd_sock_give(struct qd_sock *q, uint64_t id, struct msg *m)
{
    int rc = session_deliver(q->s, id, m);
    if (rc < 0) {
        q->refused = 1; /* the core closes it; detach follows */
        return rc;
    }
    if (id != 0)
        q->unacked++;
    return 0;
}

int qd_sock_ack(struct qd_sock *q, uint32_t window)
{
    if (q->unacked > 0)
        q->unacked--;
    return qd_sock_room(q, window) > 0;
}

int qd_sock_can_take(const struct qd_sock *q, uint32_t window, size_t len)
{
    if (q->refused)
        return 0;
    return window == 0 || (qd_sock_room(q, window) > 0 && session_can_take(q->s, len));
}

struct qd_sock *qd_key_next(struct qd_key *k, uint32_t window, size_t len)
{
    for (uint32_t tries = k->nsocks; tries > 0; tries--) {
        struct qd_sock *q = k->rr;
        if (q == NULL)
            break; /* defensive: only an unlink from inside session_deliver could do this */
        k->rr = q->next != NULL ? q->next : k->socks;
        if (qd_sock_can_take(q, window, len))
            return q;
    }
    return NULL;
}

struct qd_sock *qd_key_give(struct qd_key *k, uint32_t window, uint64_t id, struct msg *m)
{
    struct qd_sock *q;
    /* a refusal marks q refused, so the next look skips it: this ends */
    while ((q = qd_key_next(k, window, m->len)) != NULL)
        if (qd_sock_give(q, id, m) == 0)
            return q;
    return NULL;
}

int qd_pull_wake(struct qd_pull *p)
{
    if (p->asked > 0) {
        p->woken_in_flight = 1;
        return 0;
    }
    p->may_have_more = 1;
    return 1;
}

void qd_pull_start(struct qd_pull *p, uint32_t n)
{
    p->asked = n > 0 ? n : 1;
    p->woken_in_flight = 0;
}

int qd_pull_done(struct qd_pull *p, uint32_t got)
{
    p->may_have_more = got >= p->asked || p->woken_in_flight;
    p->asked = 0;
    p->woken_in_flight = 0;
    return p->may_have_more;
}

void qd_pull_abort(struct qd_pull *p, int retry)
{
    p->asked = 0;
    p->woken_in_flight = 0;
    p->may_have_more = retry != 0;
}
