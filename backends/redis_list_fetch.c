/* redis_list_fetch.c — delivery for the redis-list backend: keyspace wake-ups, the
 * per-socket fetch (one flow script: drop acked, move up to the window's room from the queue
 * to the socket's in-flight list), messages held while the socket's send buffer is full,
 * the service queue that sends at most one fetch per socket per pass, broadcasts from
 * p.topic.T, the replies of direct pushes, and lazy acks batched on a timer.
 * Window and pull state are qdeliver.h's: rs->sock counts what the socket was given and
 * not acked (unacked) and what is on its way (promised: the fetch in flight, direct pushes
 * not answered yet, held messages), rs->pull says whether the queue may hold more and
 * whether a wake-up came while a fetch was in flight.
 *
 * Held messages stay (they are not replaced by the check before fetching): a fetch asks
 * only for what the window and, at this socket's mean message size, the send buffer can
 * take, but by the time its reply arrives the buffer may have filled (broadcasts, messages
 * bigger than the mean, the first fetch of unknown size, a direct push), and the messages
 * are already in the socket's in-flight list. Giving them anyway could get the client
 * closed 1008 as slow, and returning them would cost a script and a round trip per reply;
 * both change behaviour, so they wait here, in order, until writes make room.
 * Does NOT open links, register the node, or load scripts. Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "msg.h"
#include "redis_list.h"
#include "session.h"
#include "util.h"

/* --- held messages and giving --- */

void rlist_held_clear(struct rlist_sess *rs)
{
    qd_sock_unpromise(&rs->sock, rs->nheld);
    for (uint32_t i = 0; i < rs->nheld; i++)
        msg_unref(rs->held[rs->held_off + i]);
    free(rs->held);
    rs->held = NULL;
    rs->nheld = rs->held_off = rs->held_cap = 0;
}

static int rlist_held_push(struct rlist_sess *rs, struct msg *m)
{
    if (rs->held_off + rs->nheld == rs->held_cap) {
        if (rs->held_off > 0) { /* slide the live part to the front */
            memmove(rs->held, rs->held + rs->held_off, rs->nheld * sizeof(*rs->held));
            rs->held_off = 0;
        } else {
            uint32_t cap = rs->held_cap ? rs->held_cap * 2 : 8;
            struct msg **a = realloc(rs->held, cap * sizeof(*a));
            if (a == NULL)
                return UV_ENOMEM;
            rs->held = a;
            rs->held_cap = cap;
        }
    }
    rs->held[rs->held_off + rs->nheld++] = msg_ref(m);
    qd_sock_promise(&rs->sock, 1); /* counts in the window until given */
    return 0;
}

/* Hand m to the socket (msg_id for its ack; counted in rs->sock.unacked); 0, or
 * UV_ECANCELED when it is closing (rs->sock.refused: detach returns what is left). */
static int rlist_give(struct rlist_sess *rs, struct msg *m)
{
    struct rlist *rl = rs->rl;
    rs->avg_len = rs->avg_len == 0 ? m->len : rs->avg_len - rs->avg_len / 8 + m->len / 8;
    return qd_sock_give(&rs->sock, ++rl->next_id, m) < 0 ? UV_ECANCELED : 0;
}

/* Give held messages to the socket while its send buffer has room (after writes). */
void rlist_held_drain(struct rlist_sess *rs)
{
    while (rs->nheld > 0 && !rs->sock.refused && !rs->base.detached &&
           session_can_take(rs->base.s, rs->held[rs->held_off]->len)) {
        struct msg *m = rs->held[rs->held_off];
        rs->held_off++;
        rs->nheld--;
        qd_sock_unpromise(&rs->sock, 1);
        (void)rlist_give(rs, m);
        msg_unref(m);
    }
    if (rs->nheld == 0)
        rs->held_off = 0;
}

/* Run settle's callback (once; not after detach, which cancels it). */
void rlist_settle_done(struct rlist_sess *rs)
{
    broker_settle_cb cb = rs->settle_cb;
    rs->settle_cb = NULL;
    rs->settle_due = 0;
    if (cb != NULL && !rs->base.detached)
        cb(rs->base.s); /* the core detaches rs from inside */
}

/* --- fetches and the service queue --- */

static void rlist_on_flow(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist_sess *rs = priv;
    struct rlist *rl = rs->rl;
    redisReply *reply = r;
    uint32_t k = rs->pull.asked;
    (void)ac;
    qd_sock_unpromise(&rs->sock, k); /* each message below is given or held (promised) */
    if (rs->settling && !rs->base.detached && reply != NULL) {
        /* leaving: the settle's release, behind this fetch on the link, returns what it
         * moved; nothing more goes to the socket */
        qd_pull_abort(&rs->pull, 0);
        rlist_sess_unref(rs);
        return;
    }
    if (rs->base.detached || reply == NULL || rs->fetch_epoch != rl->epoch) {
        qd_pull_abort(&rs->pull, 1); /* the next registration kicks every session */
        rlist_sess_unref(rs);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        rl->base.b->errors++;
        log_warn("event=redis_fetch_failed session=%s err=\"%.*s\"", rs->base.s->key,
                 (int)reply->len, reply->str);
        if (strncmp(reply->str, "WSGATE_LEASE", 12) == 0)
            rconn_reset(rl->base.cmd, "node lease lost");
        /* e.g. WRONGTYPE, or NOSCRIPT again after a reload: retry on the next wake-up (a
         * successful reload kicks every socket), not in a loop */
        qd_pull_abort(&rs->pull, 0);
        rlist_sess_unref(rs);
        return;
    }
    size_t n = reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0;
    for (size_t i = 0; i < n && !rs->sock.refused; i++) {
        redisReply *e = reply->element[i];
        struct msg *m;
        int rc;
        if (e->type != REDIS_REPLY_STRING)
            continue;
        m = msg_new_copy(e->str, e->len, rl->base.cfg->frame_type);
        if (m == NULL) {
            session_close(rs->base.s, 1011);
            rs->sock.refused = 1;
            break;
        }
        /* A socket over max_send_buffer keeps its messages waiting (held, in order)
         * rather than being closed as slow: backpressure, DESIGN.md section 2. */
        if (rs->nheld > 0 || !session_can_take(rs->base.s, m->len))
            rc = rlist_held_push(rs, m);
        else
            rc = rlist_give(rs, m);
        msg_unref(m);
        if (rc == UV_ENOMEM) {
            session_close(rs->base.s, 1011);
            rs->sock.refused = 1;
        }
        if (rc < 0)
            break;
    }
    /* all that was asked came (more may wait), or a wake-up came meanwhile: again */
    if (qd_pull_done(&rs->pull, (uint32_t)n))
        rlist_service_schedule(rs);
    rlist_sess_unref(rs);
}

/* One fetch for this socket if the window allows; it also drops the acked messages. */
static void rlist_service(struct rlist_sess *rs)
{
    struct rlist *rl = rs->rl;
    char fkey[RCOMMON_NAME_MAX], lease[RCOMMON_NAME_MAX], acks[21], kbuf[21];
    size_t flen;
    uint32_t k = 0;
    if (rs->base.detached || rs->settling || !rl->registered || !rconn_is_up(rl->base.cmd))
        return;
    rlist_held_drain(rs);
    /* the room is checked before fetching: nothing is taken that the window cannot hold */
    if (rs->base.attached && qd_pull_wanted(&rs->pull) && rs->nheld == 0 &&
        rs->base.nready == rs->base.nsubs && (k = qd_sock_room(&rs->sock, rl->window)) > 0) {
        if (k > rl->batch)
            k = rl->batch;
        /* No more than the send buffer can take, going by this socket's message sizes
         * (the first fetch takes one message to learn them): what a fetch brings beyond
         * that waits in gateway memory (held), so this bounds it to about max_send_buffer
         * per socket. */
        uint64_t cap = rs->avg_len == 0 ? 1 : rl->base.cfg->max_send_buffer / rs->avg_len;
        if (k > cap)
            k = cap > 0 ? (uint32_t)cap : 1;
        while (k > 1 && !session_can_take(rs->base.s, (size_t)k * rs->avg_len))
            k /= 2;
        if (!session_can_take(rs->base.s, rs->avg_len))
            k = 0; /* full: the next write's ack comes back here */
    }
    if (k == 0)
        return; /* acks alone wait for the ack timer (rlist_on_ack_timer) */
    flen = rlist_inflight_key(rl, rs->sid, fkey, sizeof(fkey));
    size_t alen = fmt_u64(acks, rs->acks);
    size_t llen = rcommon_name(&rl->base, "lease", rl->nid, lease, sizeof(lease));
    size_t klen = fmt_u64(kbuf, (uint64_t)k);
    const char *argv[] = {"EVALSHA", rl->sha[RLIST_LUA_FLOW], "3", rs->qkey, fkey, lease, acks,
                          kbuf};
    size_t lens[] = {7, 40, 1, rs->qkey_len, flen, llen, (size_t)alen, (size_t)klen};
    if (rlist_eval(rl, rlist_on_flow, NULL, rs, NULL, 8, argv, lens) == 0) {
        rs->refs++;
        rs->acks = 0;
        qd_pull_start(&rs->pull, k);
        qd_sock_promise(&rs->sock, k);
        rs->fetch_epoch = rl->epoch;
    }
}

/* Each pass sends at most one command per socket; replies come back in a later poll.
 * Scheduling starts both handles: the check drains in the same iteration when we were
 * scheduled from an I/O callback; the idle handle covers scheduling from the core's own
 * prepare/check callbacks (its uv_try_write acks there), where a check started now would
 * only run after a blocking poll. */
static void rlist_service_drain(struct rlist *rl)
{
    while (rl->svc_head != NULL) {
        struct rlist_sess *rs = rl->svc_head;
        rl->svc_head = rs->snext;
        if (rl->svc_head == NULL)
            rl->svc_tail = NULL;
        rs->snext = NULL;
        rs->queued = 0;
        if (rs->settle_due)
            rlist_settle_done(rs);
        else if (!rl->base.closing)
            rlist_service(rs);
        rlist_sess_unref(rs);
    }
    uv_check_stop(&rl->check);
    uv_idle_stop(&rl->idle);
}

static void rlist_on_check(uv_check_t *h)
{
    rlist_service_drain(h->data);
}

static void rlist_on_idle(uv_idle_t *h)
{
    rlist_service_drain(h->data);
}

void rlist_service_schedule(struct rlist_sess *rs)
{
    struct rlist *rl = rs->rl;
    if (rs->queued || rs->base.detached || rl->base.closing)
        return;
    rs->queued = 1;
    rs->refs++;
    if (rl->svc_tail != NULL)
        rl->svc_tail->snext = rs;
    else
        rl->svc_head = rs;
    rl->svc_tail = rs;
    uv_check_start(&rl->check, rlist_on_check);
    uv_idle_start(&rl->idle, rlist_on_idle);
}

static void rlist_wake(struct rlist_sess *rs)
{
    if (rs->base.detached || !rs->base.attached || rs->settling)
        return;
    if (qd_pull_wake(&rs->pull)) /* else the fetch in flight is followed by another */
        rlist_service_schedule(rs);
}

void rlist_kick_all(struct rlist *rl)
{
    for (struct rcommon_sess *cs = rl->base.sessions; cs; cs = cs->next) {
        struct rlist_sess *rs = (struct rlist_sess *)cs;
        rs->pull.may_have_more = 1; /* a fetch in flight still decides on its reply */
        rlist_service_schedule(rs);
    }
}

/* --- pub/sub link callbacks --- */

static int rlist_is_push_event(const char *d, size_t n)
{
    return (n == 5 && (memcmp(d, "rpush", 5) == 0 || memcmp(d, "lpush", 5) == 0)) ||
           (n == 7 && memcmp(d, "linsert", 7) == 0);
}

void rlist_on_message(struct rconn *rc, struct rconn_chan *ch, const char *data, size_t len,
                      void *arg)
{
    struct rlist *rl = arg;
    (void)rc;
    if (ch->ready == NULL)
        return;
    if (ch->ready->tag == RCOMMON_TAG_SESS) {
        /* A session's own channel is its queue's keyspace channel. The payload is the event
         * name; our own LPOPs also notify and are ignored. */
        if (!rlist_is_push_event(data, len))
            return;
        for (struct rsub *u = ch->ready; u; u = u->next)
            rlist_wake(u->owner);
        return;
    }
    /* a broadcast is not stored: no ack (a refused socket refuses it again: closing) */
    rcommon_broadcast(&rl->base, ch, data, len);
}

void rlist_on_sess_ready(struct rcommon *r, struct rcommon_sess *cs)
{
    struct rlist_sess *rs = (struct rlist_sess *)cs;
    (void)r;
    rs->refs++; /* session_attached may detach rs (allowed outside attach) */
    if (!rs->base.attached) {
        rs->base.attached = 1;
        session_attached(rs->base.s, 0);
    }
    /* (Re)subscribed: anything pushed while we were not listening is fetched now. */
    if (!rs->base.detached) {
        rs->pull.may_have_more = 1;
        rlist_service_schedule(rs);
    }
    rlist_sess_unref(rs);
}

/* --- direct pushes: a push for a socket of this node skips the queue --- */

/* A push made through this node for a session with a socket here costs, the plain way,
 * three Redis round trips in a row before the frame goes out: the push, the keyspace
 * notification that wakes the holder, and its fetch (plus a notification for the fetch's
 * LPOP). The direct push does it in one: when the queue is empty, the push script appends
 * the message to that socket's in-flight list and the reply hands the message (the same
 * sealed msg, no copy) to the socket. Order holds because it happens only with an empty
 * queue and replies come back in link order, like fetches; delivery and acks are those of
 * a fetched message, and a socket that leaves before the reply gets it back to the queue
 * by its release, which runs after the push on the same link. */

/* A socket of the queue qkey on this node that can take one more message of len bytes now
 * (attached, not leaving, nothing held, window and send buffer room), or NULL. */
struct rlist_sess *rlist_direct_target(struct rlist *rl, const char *qkey, size_t qlen, size_t len)
{
    char kch[RCOMMON_NAME_MAX + 32];
    struct rconn_chan *ch;
    int kl;
    if (!rl->registered)
        return NULL;
    kl = snprintf(kch, sizeof(kch), "__keyspace@%d__:%.*s", rl->base.url.db, (int)qlen, qkey);
    if (kl < 0 || (size_t)kl >= sizeof(kch) ||
        (ch = rconn_chan_lookup(rl->base.sub, kch, (size_t)kl)) == NULL)
        return NULL;
    for (struct rsub *u = ch->ready; u != NULL; u = u->next) {
        struct rlist_sess *rs = u->owner;
        if (u->tag != RCOMMON_TAG_SESS || rs->base.detached || !rs->base.attached || rs->settling ||
            rs->nheld > 0 || qd_sock_room(&rs->sock, rl->window) == 0 ||
            !session_can_take(rs->base.s, len))
            continue;
        return rs;
    }
    return NULL;
}

/* The push script put m in rs's in-flight list: write it like a fetched message (given:
 * unacked, or held: promised). */
static void rlist_direct_give(struct rlist_sess *rs, struct msg *m)
{
    int rc;
    if (rs->base.detached || rs->settling || rs->sock.refused)
        return; /* the release (behind the push on the link) returns it to the queue */
    if (rs->nheld > 0 || !session_can_take(rs->base.s, m->len))
        rc = rlist_held_push(rs, m);
    else
        rc = rlist_give(rs, m);
    if (rc == UV_ENOMEM) {
        session_close(rs->base.s, 1011);
        rs->sock.refused = 1;
    }
}

void rlist_on_pushd(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist_push_req *req = priv;
    struct rlist_sess *rs = req->rs;
    struct rlist *rl = rs->rl;
    redisReply *reply = r;
    broker_push_cb cb = req->cb;
    void *arg = req->arg;
    int status = 0;
    (void)ac;
    qd_sock_unpromise(&rs->sock, 1); /* the direct push answered */
    if (reply == NULL) {
        status = rconn_last_error(rl->base.cmd);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        rl->base.b->errors++;
        log_warn("event=redis_error conn=cmd err=\"%.*s\"", (int)reply->len, reply->str);
        status = UV_EIO;
    } else if (reply->type == REDIS_REPLY_INTEGER && reply->integer == -1) {
        status = UV_ENOBUFS;
    } else if (reply->type == REDIS_REPLY_INTEGER && reply->integer == -2) {
        rlist_direct_give(rs, req->m);
    }
    msg_unref(req->m);
    free(req);
    rlist_sess_unref(rs);
    cb(arg, status);
}

/* --- lazy acks --- */

/* Drop the acked heads of n in-flight lists in one script call; releases the batch's refs. */
static void rlist_acks_send(struct rlist *rl, struct rlist_sess **batch, int n)
{
    char keys[RLIST_ACK_CHUNK][RCOMMON_NAME_MAX], counts[RLIST_ACK_CHUNK][21], nk[21];
    const char *argv[3 + 2 * RLIST_ACK_CHUNK];
    size_t lens[3 + 2 * RLIST_ACK_CHUNK];
    argv[0] = "EVALSHA";
    lens[0] = 7;
    argv[1] = rl->sha[RLIST_LUA_ACKS];
    lens[1] = 40;
    argv[2] = nk;
    lens[2] = fmt_u64(nk, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        argv[3 + i] = keys[i];
        lens[3 + i] = rlist_inflight_key(rl, batch[i]->sid, keys[i], sizeof(keys[i]));
        argv[3 + n + i] = counts[i];
        lens[3 + n + i] = fmt_u64(counts[i], batch[i]->acks);
    }
    int sent = rlist_eval(rl, NULL, NULL, NULL, NULL, 3 + 2 * n, argv, lens) == 0;
    for (int i = 0; i < n; i++) {
        if (sent)
            batch[i]->acks = 0;
        rlist_sess_unref(batch[i]);
    }
}

/* LPOP the acked head of every in-flight list with pending acks: one script call per
 * RLIST_ACK_CHUNK sockets, all in one pipelined write. */
static void rlist_on_ack_timer(uv_timer_t *t)
{
    struct rlist *rl = t->data;
    struct rlist_sess *rs = rl->ack_head, *batch[RLIST_ACK_CHUNK];
    int n = 0;
    rl->ack_head = NULL;
    while (rs != NULL) {
        struct rlist_sess *next = rs->anext;
        rs->anext = NULL;
        rs->in_acks = 0;
        if (!rs->base.detached && rs->acks > 0 && rl->registered && !rl->base.closing)
            batch[n++] = rs; /* keeps the ack list's ref until sent */
        else
            rlist_sess_unref(rs);
        if (n == RLIST_ACK_CHUNK || (next == NULL && n > 0)) {
            rlist_acks_send(rl, batch, n);
            n = 0;
        }
        rs = next;
    }
}

void rlist_sess_acked(struct rlist_sess *rs)
{
    struct rlist *rl = rs->rl;
    int room = qd_sock_ack(&rs->sock, rl->window);
    rs->acks++;
    rlist_held_drain(rs);
    /* Applied lazily: with the socket's next fetch if there is one (the window just
     * opened), else within RLIST_ACK_DELAY_MS together with every other socket's acks.
     * Until then a crash redelivers it (at-least-once); a detach drops it correctly. */
    if (room && rs->pull.may_have_more)
        rlist_service_schedule(rs);
    if (!rs->in_acks) {
        rs->in_acks = 1;
        rs->refs++;
        rs->anext = rl->ack_head;
        rl->ack_head = rs;
        if (!uv_is_active((uv_handle_t *)&rl->ack_timer))
            uv_timer_start(&rl->ack_timer, rlist_on_ack_timer, RLIST_ACK_DELAY_MS, 0);
    }
}
