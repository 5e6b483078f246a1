/* qdeliver.h — the delivery state a queue backend keeps per session key and per socket,
 * shared so that every durable backend counts windows and pulls the same way:
 *
 *   struct qd_key   the sockets of one key on this node, and the round-robin choice among
 *                   those with room (a queue message is consumed once, by one socket);
 *   struct qd_sock  one socket's window: messages given with an id and not acked yet
 *                   (`unacked`), plus those promised to it by requests in flight or waiting
 *                   in the backend (`promised`), against [websocket] max_inflight; and its
 *                   `refused` flag (session_deliver said no: it is closing, detach follows);
 *   struct qd_pull  one pull source (a socket's or a key's queue in the broker): whether it
 *                   may hold messages for us, the fetch in flight, and whether a wake-up came
 *                   while it was in flight (then fetch again when it is done).
 *
 * The room is checked before a fetch is sent (qd_sock_room): nothing is taken from the
 * broker that the window cannot hold. A window of 0 means "no window" (at-most-once
 * backends: no ids, no acks; only session_deliver decides).
 *
 * Typical use (redis-list): on a wake-up, qd_pull_wake() says whether to schedule a fetch;
 * the fetch asks for n <= qd_sock_room() messages, qd_pull_start(n) and qd_sock_promise(n);
 * on its reply qd_sock_unpromise(n), qd_sock_give() each message, and qd_pull_done(got)
 * says whether to fetch again; on an ack qd_sock_ack() says whether the window has room,
 * and then a fetch is due if qd_pull_wanted().
 *
 * Does NOT allocate, fetch, or know message ids beyond passing them to session_deliver:
 * the backend owns every struct here (embedded in its own) and decides what a pull is.
 * Loop thread only. */
#ifndef WSGATE_QDELIVER_H
#define WSGATE_QDELIVER_H

#include <stddef.h>
#include <stdint.h>

struct msg;
struct session;

struct qd_sock {
    struct qd_sock *next; /* borrowed: next socket of the same key (newest first) */
    struct qd_sock *prev; /* borrowed: previous one */
    struct session *s;    /* borrowed: the core's session, from link until unlink */
    uint32_t unacked;     /* given with an id, not acked yet */
    uint32_t promised;    /* on their way to it: asked by fetches in flight, direct pushes
                           * not answered yet, fetched but held by the backend */
    uint8_t refused;      /* session_deliver refused: it is closing; give nothing more */
};

struct qd_key {
    struct qd_sock *socks; /* borrowed: this node's sockets of the key (newest first) */
    struct qd_sock *rr;    /* borrowed: the member that is offered the next message */
    uint32_t nsocks;       /* sockets in socks */
};

struct qd_pull {
    uint32_t asked;          /* messages the fetch in flight asked for; 0 = none in flight */
    uint8_t may_have_more;   /* the source may hold messages: fetch when there is room */
    uint8_t woken_in_flight; /* something arrived while a fetch was in flight */
};

/* --- a key's sockets --- */

/* Add q (for s; zeroed or unlinked) to k. The first socket becomes the round-robin start. */
void qd_key_link(struct qd_key *k, struct qd_sock *q, struct session *s);
/* Remove q from k; the round-robin position moves on past it. */
void qd_key_unlink(struct qd_key *k, struct qd_sock *q);
/* Offer m to k's sockets in round-robin order, starting at k->rr, each at most once: the
 * first one that takes it gets it (qd_sock_give with id), and the next offer starts after
 * it. With window > 0 only sockets with room (qd_sock_room, session_can_take(m->len)) are
 * offered it. Returns the socket that took it, or NULL (none could: the backend keeps m). */
struct qd_sock *qd_key_give(struct qd_key *k, uint32_t window, uint64_t id, struct msg *m);
/* The choice of qd_key_give without the giving, for a backend that must prepare per socket
 * (its own message id, a slot in its table) before it gives: the next socket in round-robin
 * order from k->rr that could take a message of len bytes (qd_sock_can_take), each looked
 * at most once; k->rr moves past it. NULL when none could. The caller then calls
 * qd_sock_give; after a refusal the next call goes on from there. */
struct qd_sock *qd_key_next(struct qd_key *k, uint32_t window, size_t len);

/* --- one socket's window --- */

/* Messages q can still be given or promised: window - unacked - promised, 0 when refused or
 * full. window 0: no window (returns UINT32_MAX unless refused). */
uint32_t qd_sock_room(const struct qd_sock *q, uint32_t window);
/* Could q be given a message of len bytes now: not refused and, with window > 0, room in
 * its window (qd_sock_room) and in its send buffer (session_can_take). Changes nothing. */
int qd_sock_can_take(const struct qd_sock *q, uint32_t window, size_t len);
/* session_deliver(q->s, id, m). 0: taken, counted in unacked when id != 0. < 0: refused
 * (q->refused is set; the message was not taken and stays the backend's). */
int qd_sock_give(struct qd_sock *q, uint64_t id, struct msg *m);
/* The frame of one id given to q was written. 1 when q has window room now (the backend
 * should pull if its source may have more), else 0. */
int qd_sock_ack(struct qd_sock *q, uint32_t window);
/* n more messages are on their way to q (a fetch sent, a direct push, a held message). */
static inline void qd_sock_promise(struct qd_sock *q, uint32_t n)
{
    q->promised += n;
}
/* n of them arrived or will not come. */
static inline void qd_sock_unpromise(struct qd_sock *q, uint32_t n)
{
    q->promised = q->promised > n ? q->promised - n : 0;
}

/* --- pulling from the broker --- */

/* Something new may be in the source (a notification, a (re)subscription). 1: no fetch is in
 * flight, so the backend should schedule one (may_have_more is set). 0: one is in flight;
 * it is remembered and qd_pull_done will ask for another. */
int qd_pull_wake(struct qd_pull *p);
/* 1 when a fetch is due: the source may have more and none is in flight. */
static inline int qd_pull_wanted(const struct qd_pull *p)
{
    return p->may_have_more && p->asked == 0;
}
/* A fetch for n (>= 1) messages was sent. */
void qd_pull_start(struct qd_pull *p, uint32_t n);
/* The fetch in flight brought got messages. Returns (and sets may_have_more to) 1 when the
 * source may have more: it gave all it was asked for, or a wake-up came meanwhile. */
int qd_pull_done(struct qd_pull *p, uint32_t got);
/* The fetch in flight failed or its answer no longer counts (link lost, socket gone).
 * may_have_more becomes retry. */
void qd_pull_abort(struct qd_pull *p, int retry);

#endif
