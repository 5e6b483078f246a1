/* redis_list.c — the "redis-list" broker: durable per-session queues in Redis lists,
 * at-least-once delivery across any number of gateway nodes. Loop thread only.
 *
 * Keys (prefix p = [broker] prefix, S = session key, T = topic):
 *   p.recv.S                 list: RPUSH by producers (POST /push or plain redis-cli),
 *                            PEXPIRE ttl on every push made by the gateway
 *   p.send.S                 list: client frames (upstream = on), RPUSH + PEXPIRE ttl
 *   p.topic.T                pub/sub channel for broadcasts (not stored)
 *   p.inflight.N.I           list: messages taken for socket I (struct session id) of node
 *                            incarnation N, delivered and not yet acked
 *   p.node.N                 hash I -> "p.recv.S": which queue each in-flight list returns to
 *   p.lease.N                string with a PX lease, refreshed by the node's heartbeat
 *   p.nodes                  set of node incarnations that may own in-flight lists
 *
 * Flow: a socket attaches -> SUBSCRIBE __keyspace@db__:p.recv.S (+ p.topic.T) on the
 * node's one pub/sub connection; once confirmed, the socket gets its 101 and a fetch: one
 * EVALSHA that LPOPs up to min(batch, free window) messages and RPUSHes them onto the
 * socket's in-flight list (the window is [websocket] max_inflight delivered-but-unwritten
 * messages: nothing is taken from Redis that the socket cannot take; the count is also cut
 * to what max_send_buffer can take at the socket's average message size, and a fetched
 * message that would still push the socket over max_send_buffer is held here, in order,
 * until writes make room: a slow reader is held back, never closed 1008). Any RPUSH/LPUSH on
 * p.recv.S (ours or a plain redis-cli's) produces a keyspace notification that wakes the
 * holder's fetch; there is no polling. A push made through the node that holds a socket of
 * S with room, while p.recv.S is empty, skips all that: one EVALSHA appends it to that
 * socket's in-flight list and its reply writes the frame (direct push: one round trip from
 * POST to frame instead of three). When the core reports a frame written (ack), the
 * acked count is LPOPped off the socket's in-flight list lazily: inside the socket's next
 * fetch, or within RLIST_ACK_DELAY_MS in one pipelined batch for all sockets (a crash in
 * that window redelivers those messages: at-least-once). On detach the acked ones are
 * dropped and the unacked go back to the head of p.recv.S in order (one EVALSHA). A socket
 * that leaves cleanly (close handshake, or closed by the gateway) is settled first: that
 * release goes out at once, behind every ack command already sent for it, and the core's
 * close reply waits for its answer (settle), so a reconnect anywhere never gets a written
 * message again, even if this node dies right after.
 * Commands of one loop iteration leave in one write per link (redis_conn.c).
 *
 * Scripts: loaded with SCRIPT LOAD on every connect and called by SHA1. If Redis loses them
 * (SCRIPT FLUSH, a failover behind a proxy), the first NOSCRIPT holds further EVALSHAs back
 * until those in flight answered, reloads, and retries each failed call once, in order
 * (rlist_eval); /readyz is 503 only while the scripts cannot be loaded.
 *
 * Crash recovery: each connection of the command link registers a fresh incarnation N
 * with a lease (max(3 ping, 2 timeout) + 1 s). Every node's heartbeat sweeps p.nodes and
 * returns the in-flight lists of incarnations whose lease expired to the heads of their
 * queues, atomically in Lua; a node whose own link dropped reclaims its old incarnation as
 * soon as it reconnects. So a kill -9'd node's in-flight messages are redelivered by any
 * node within one lease, and nothing is removed from Redis before its ack.
 *
 * Does NOT: buffer messages in gateway memory beyond the window, poll Redis, use blocking
 * commands, or open more than two Redis connections (one command link, one pub/sub link)
 * however many sessions are attached. Opening and closing those links, p.kind.name names,
 * the session and topic subscriptions with their confirmation count, PUBLISH and the
 * fan-out of broadcasts are shared with redis-pubsub in redis_common.c.
 *
 * Files (redis_list.h): this one holds the broker_ops (open, attach, detach, settle and
 * release, push with the direct path, upstream, ack, close); redis_list_lua.c the scripts
 * and EVALSHA; redis_list_node.c registration, lease and heartbeat; redis_list_fetch.c
 * delivery. Each socket's window and pull state are the shared core's (qdeliver.h). */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "config.h"
#include "log.h"
#include "msg.h"
#include "redis_list.h"
#include "session.h"
#include "util.h"

/* --- helpers --- */

size_t rlist_inflight_key(const struct rlist *rl, uint64_t sid, char *out, size_t cap)
{
    /* "<prefix>.inflight.<node>.<sid>" (on every push and fetch: no snprintf) */
    char num[21];
    size_t nl = fmt_u64(num, sid);
    size_t at = str_put(out, cap, 0, rl->base.cfg->prefix, strlen(rl->base.cfg->prefix));
    at = str_put(out, cap, at, ".inflight.", 10);
    at = str_put(out, cap, at, rl->nid, strlen(rl->nid));
    at = str_put(out, cap, at, ".", 1);
    return str_put(out, cap, at, num, nl);
}

void rlist_sess_unref(struct rlist_sess *rs)
{
    if (--rs->refs == 0 && rs->base.detached)
        free(rs);
}

/* --- vtable --- */

static int rlist_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    struct rlist *rl;
    int rc;
    rl = calloc(1, sizeof(*rl));
    if (rl == NULL)
        return UV_ENOMEM;
    rlist_scripts_sha(rl);
    {
        uint64_t a = 3 * cfg->redis_ping_interval_ms, c = 2 * cfg->redis_timeout_ms;
        rl->lease_ms = (a > c ? a : c) + 1000;
    }
    rl->batch = cfg->redis_batch > RLIST_BATCH_MAX ? RLIST_BATCH_MAX : cfg->redis_batch;
    if (rl->batch == 0)
        rl->batch = 1;
    rl->window = cfg->max_inflight > 0 ? cfg->max_inflight : 1;
    rl->next_id = 0;
    rl->first_valid_id = 1;
    if ((rc = rcommon_open(&rl->base, b, loop, cfg, rlist_on_cmd_state, rlist_on_message,
                           rlist_on_sess_ready)) < 0) {
        free(rl);
        return rc;
    }
    uv_check_init(loop, &rl->check);
    rl->check.data = rl;
    uv_idle_init(loop, &rl->idle);
    rl->idle.data = rl;
    uv_timer_init(loop, &rl->ack_timer);
    rl->ack_timer.data = rl;
    uv_timer_init(loop, &rl->hb);
    rl->hb.data = rl;
    b->priv = rl;
    log_info("event=broker_open type=redis-list host=%s port=%d db=%d prefix=%s", rl->base.url.host,
             rl->base.url.port, rl->base.url.db, cfg->prefix);
    return 0;
}

static int rlist_ready(struct broker *b)
{
    struct rlist *rl = b->priv;
    return rl != NULL && rl->registered && !rl->scripts_bad && rcommon_ready(&rl->base);
}

static int rlist_attach(struct broker *b, struct session *s)
{
    struct rlist *rl = b->priv;
    struct rlist_sess *rs;
    size_t n, qlen, klen;
    char qkey[RCOMMON_NAME_MAX], kch[RCOMMON_NAME_MAX];
    int rc;
    if (!rlist_ready(b))
        return UV_ENOTCONN;
    qlen = rcommon_name(&rl->base, "recv", s->key, qkey, sizeof(qkey));
    n = rcommon_sess_nchans(s);
    rs = calloc(1, sizeof(*rs) + n * sizeof(struct rsub) + qlen + 1);
    if (rs == NULL)
        return UV_ENOMEM;
    rs->rl = rl;
    rs->sid = s->id;
    rs->sock.s = s; /* a key's sockets here are found by channel, so no qd_key */
    rs->qkey = (char *)&rs->subs[n];
    memcpy(rs->qkey, qkey, qlen + 1);
    rs->qkey_len = (uint32_t)qlen;
    /* The session's channel is the keyspace channel of its queue: any push wakes us. */
    klen = (size_t)snprintf(kch, sizeof(kch), "__keyspace@%d__:%s", rl->base.url.db, qkey);
    if ((rc = rcommon_sess_attach(&rl->base, &rs->base, rs->subs, s, kch, klen)) < 0) {
        free(rs);
        return rc;
    }
    /* Register the in-flight list before any fetch can fill it (same link, in order). */
    {
        char hkey[RCOMMON_NAME_MAX], sid[24];
        size_t hl = rcommon_name(&rl->base, "node", rl->nid, hkey, sizeof(hkey));
        int sl = snprintf(sid, sizeof(sid), "%llu", (unsigned long long)rs->sid);
        const char *argv[] = {"HSET", hkey, sid, rs->qkey};
        size_t alens[] = {4, hl, (size_t)sl, rs->qkey_len};
        rconn_command(rl->base.cmd, NULL, NULL, 4, argv, alens);
    }
    return 0;
}

static void rlist_release_log(struct rlist_sess *rs, const redisReply *reply)
{
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
        rs->rl->base.b->errors++;
        log_warn("event=redis_release_failed err=\"%.*s\"", (int)reply->len, reply->str);
    } else if (reply != NULL && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        log_debug("event=redis_released messages=%lld", reply->integer);
    }
}

static void rlist_on_release(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist_sess *rs = priv;
    (void)ac;
    rlist_release_log(rs, r);
    rlist_sess_unref(rs);
}

/* The settle's release answered: every ack given for rs so far ran before it (same link,
 * in order), so a reconnect anywhere cannot be handed those messages again. */
static void rlist_on_settled(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist_sess *rs = priv;
    redisReply *reply = r;
    (void)ac;
    rlist_release_log(rs, reply);
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        rs->released = 0; /* detach tries again (or the incarnation's reclaim returns them) */
    rlist_settle_done(rs);
    rlist_sess_unref(rs);
}

/* Send the release of rs's in-flight list: drop its acked head (rs->acks, and everything
 * acked in earlier commands, which run first on the same link), move the rest back to the
 * head of the queue in order, forget the list. The reply callback fn gets a ref on rs.
 * 0, or < 0 when it could not be sent (link down: the next registration reclaims the list). */
static int rlist_release(struct rlist *rl, struct rlist_sess *rs, redisCallbackFn *fn)
{
    char fkey[RCOMMON_NAME_MAX], hkey[RCOMMON_NAME_MAX], acks[16], sid[24], ttl[24];
    int rc;
    if (!rl->registered || !rconn_is_up(rl->base.cmd))
        return UV_ENOTCONN;
    size_t fl = rlist_inflight_key(rl, rs->sid, fkey, sizeof(fkey));
    size_t hl = rcommon_name(&rl->base, "node", rl->nid, hkey, sizeof(hkey));
    int al = snprintf(acks, sizeof(acks), "%u", rs->acks);
    int sl = snprintf(sid, sizeof(sid), "%llu", (unsigned long long)rs->sid);
    int tl = snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)rl->base.cfg->ttl_ms);
    const char *argv[] = {
        "EVALSHA", rl->sha[RLIST_LUA_RELEASE], "3", fkey, rs->qkey, hkey, acks, sid, ttl};
    size_t lens[] = {7, 40, 1, fl, rs->qkey_len, (size_t)hl, (size_t)al, (size_t)sl, (size_t)tl};
    if ((rc = rlist_eval(rl, fn, NULL, rs, NULL, 9, argv, lens)) < 0)
        return rc;
    rs->refs++;
    rs->acks = 0;
    return 0;
}

static void rlist_sess_detach(struct rlist *rl, struct rlist_sess *rs, int release)
{
    rcommon_sess_detach(&rl->base, &rs->base);
    rlist_held_clear(rs); /* they are in the in-flight list: released below */
    rs->settle_cb = NULL; /* detach cancels a settle */
    /* Unacked messages back to the queue head; runs after an outstanding fetch (same
     * link), so what that fetch moved goes back too. If the link is down, the next
     * registration reclaims this incarnation's lists instead. A settled socket's release
     * went out already. */
    if (release && !rs->released)
        (void)rlist_release(rl, rs, rlist_on_release);
    rs->acks = 0;
    if (rs->refs == 0)
        free(rs);
}

/* The core's close reply waits for cb: send the release now (it carries the pending acks
 * and runs after every command already sent for rs) and call cb on its answer. */
static void rlist_settle(struct broker *b, struct session *s, broker_settle_cb cb)
{
    struct rlist *rl = b->priv;
    struct rlist_sess *rs = s->bpriv;
    if (rl == NULL || rs == NULL || rs->base.detached)
        return; /* the broker is closing and forgot s: the core's close timeout ends it */
    rs->settling = 1;
    rs->settle_cb = cb;
    rlist_held_clear(rs); /* in the in-flight list: the release returns them */
    if (!rs->released && rlist_release(rl, rs, rlist_on_settled) == 0) {
        rs->released = 1;
        return;
    }
    /* Nothing can be confirmed (link down): let the client go at the next pass. */
    rs->settle_due = 1;
    rlist_service_schedule(rs);
}

static void rlist_detach(struct broker *b, struct session *s)
{
    struct rlist *rl = b->priv;
    struct rlist_sess *rs = s->bpriv;
    if (rl == NULL || rs == NULL || rs->base.detached)
        return;
    rlist_sess_detach(rl, rs, 1);
}

/* RPUSH m onto the list p.kind.name (push script: max_queue, PEXPIRE ttl). */
static int rlist_push_to(struct rlist *rl, const char *kind, const char *name, struct msg *m,
                         broker_push_cb cb, void *arg)
{
    char q[RCOMMON_NAME_MAX], max[21], ttl[24];
    size_t ql = rcommon_name(&rl->base, kind, name, q, sizeof(q));
    size_t ml = fmt_u64(max, rl->base.cfg->max_queue);
    size_t tl = fmt_u64(ttl, rl->base.cfg->ttl_ms);
    const char *argv[] = {"EVALSHA", rl->sha[RLIST_LUA_PUSH], "1", q, m->data, max, ttl};
    size_t lens[] = {7, 40, 1, ql, m->len, (size_t)ml, (size_t)tl};
    if (rl->base.closing)
        return UV_ECANCELED;
    return rlist_eval(rl, NULL, cb, arg, m, 7, argv, lens);
}

static int rlist_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb,
                      void *arg)
{
    struct rlist *rl = b->priv;
    struct rlist_sess *rs;
    struct rlist_push_req *req;
    char q[RCOMMON_NAME_MAX], fkey[RCOMMON_NAME_MAX], lease[RCOMMON_NAME_MAX], max[21], ttl[24],
        acks[21];
    size_t ql = rcommon_name(&rl->base, "recv", key, q, sizeof(q));
    int rc;
    if (rl->base.closing)
        return UV_ECANCELED;
    if ((rs = rlist_direct_target(rl, q, ql, m->len)) == NULL)
        return rlist_push_to(rl, "recv", key, m, cb, arg);
    if ((req = malloc(sizeof(*req))) == NULL)
        return UV_ENOMEM;
    size_t fl = rlist_inflight_key(rl, rs->sid, fkey, sizeof(fkey));
    size_t ll = rcommon_name(&rl->base, "lease", rl->nid, lease, sizeof(lease));
    size_t ml = fmt_u64(max, rl->base.cfg->max_queue);
    size_t tl = fmt_u64(ttl, rl->base.cfg->ttl_ms);
    size_t al = fmt_u64(acks, rs->acks);
    const char *argv[] = {
        "EVALSHA", rl->sha[RLIST_LUA_PUSHD], "3", q, fkey, lease, m->data, max, ttl, acks};
    size_t lens[] = {7, 40, 1, ql, fl, ll, m->len, (size_t)ml, (size_t)tl, (size_t)al};
    if ((rc = rlist_eval(rl, rlist_on_pushd, NULL, req, m, 10, argv, lens)) < 0) {
        free(req);
        return rc;
    }
    req->rs = rs;
    req->m = msg_ref(m);
    req->cb = cb;
    req->arg = arg;
    rs->refs++;
    qd_sock_promise(&rs->sock, 1); /* the window counts it until the reply */
    rs->acks = 0;                  /* carried by this push */
    return 0;
}

static int rlist_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb,
                          void *arg)
{
    return rlist_push_to(b->priv, "send", s->key, m, cb, arg);
}

static void rlist_ack(struct broker *b, struct session *s, uint64_t msg_id)
{
    struct rlist *rl = b->priv;
    struct rlist_sess *rs = s->bpriv;
    if (rl == NULL || rs == NULL || rs->base.detached || msg_id < rl->first_valid_id)
        return; /* an ack from before a reconnect: that message was reclaimed */
    rlist_sess_acked(rs);
}

static void rlist_close(struct broker *b, broker_close_cb cb)
{
    struct rlist *rl = b->priv;
    if (rl == NULL || rl->base.closing)
        return;
    rl->base.closing = 1;
    rl->base.close_cb = cb;
    /* Sessions the core did not detach: return their messages with the rest below. */
    while (rl->base.sessions != NULL)
        rlist_sess_detach(rl, (struct rlist_sess *)rl->base.sessions, 1);
    while (rl->svc_head != NULL) {
        struct rlist_sess *rs = rl->svc_head;
        rl->svc_head = rs->snext;
        rs->queued = 0;
        rlist_sess_unref(rs);
    }
    rl->svc_tail = NULL;
    /* Scripts lost just now: load them and send what waits (the releases above among it). */
    if (rl->holding)
        rlist_reload(rl);
    rlist_eval_fail_waiting(rl); /* only if the link is down */
    /* Deregister: whatever is still in flight goes back to its queue now, not after the
     * lease. The command link then closes gracefully (owed replies first). */
    if (rl->registered && rconn_is_up(rl->base.cmd))
        rlist_node_cmd(rl, "", rl->nid, "reg", NULL, 1);
    rl->registered = 0;
    while (rl->ack_head != NULL) {
        struct rlist_sess *rs = rl->ack_head;
        rl->ack_head = rs->anext;
        rs->in_acks = 0;
        rlist_sess_unref(rs);
    }
    rcommon_close_handle(&rl->base, (uv_handle_t *)&rl->ack_timer);
    rcommon_close_handle(&rl->base, (uv_handle_t *)&rl->check);
    rcommon_close_handle(&rl->base, (uv_handle_t *)&rl->idle);
    rcommon_close_handle(&rl->base, (uv_handle_t *)&rl->hb);
    rcommon_close_links(&rl->base); /* frees rl once everything is closed */
}

const struct broker_ops broker_redis_list_ops = {
    .name = "redis-list",
    .open = rlist_open,
    .attach = rlist_attach,
    .detach = rlist_detach,
    .push = rlist_push,
    .publish = rcommon_publish,
    .upstream = rlist_upstream,
    .ack = rlist_ack,
    .settle = rlist_settle,
    .ready = rlist_ready,
    .close = rlist_close,
};
