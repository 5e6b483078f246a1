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
 * the session and topic subscriptions with their confirmation count, and PUBLISH for
 * broadcasts are shared with redis-pubsub in redis_common.c. */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "config.h"
#include "log.h"
#include "msg.h"
#include "redis_common.h"
#include "session.h"

#define RLIST_BATCH_MAX 1000  /* Lua unpack() limit is ~8000; keep replies small */
#define RLIST_HSET_CHUNK 256  /* sessions per HSET when re-registering */
#define RLIST_ACK_DELAY_MS 20 /* acks not carried by a fetch are applied within this */
#define RLIST_ACK_CHUNK 64    /* in-flight lists per ack script call */

/* --- Lua (loaded with SCRIPT LOAD on every connect; EVALSHA by locally computed SHA1) --- */

/* clang-format off */
/* KEYS[1] queue; ARGV payload, max_queue (0 = none), ttl_ms. -1 when full. */
static const char rlist_lua_push[] =
    "local max = tonumber(ARGV[2])\n"
    "if max > 0 and redis.call('LLEN', KEYS[1]) >= max then return -1 end\n"
    "local n = redis.call('RPUSH', KEYS[1], ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "return n\n";

/* A push from this node for a session with a socket here that can take it now. KEYS[1]
 * queue, KEYS[2] that socket's in-flight list, KEYS[3] lease; ARGV payload, max_queue, ttl_ms,
 * acks. Drops the acked head of the in-flight list; then, when the queue is empty (nothing
 * to pass) and the lease holds, appends the payload to the in-flight list and returns -2:
 * the gateway writes it at once, no wake-up, no fetch. Otherwise a plain push (as above). */
static const char rlist_lua_pushd[] =
    "local a = tonumber(ARGV[4])\n"
    "if a > 0 then redis.call('LPOP', KEYS[2], a) end\n"
    "local q = redis.call('LLEN', KEYS[1])\n"
    "if q == 0 and redis.call('EXISTS', KEYS[3]) == 1 then\n"
    "  redis.call('RPUSH', KEYS[2], ARGV[1])\n"
    "  return -2\n"
    "end\n"
    "local max = tonumber(ARGV[2])\n"
    "if max > 0 and q >= max then return -1 end\n"
    "local n = redis.call('RPUSH', KEYS[1], ARGV[1])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[3])\n"
    "return n\n";

/* KEYS[1] queue, KEYS[2] in-flight list, KEYS[3] lease; ARGV acks, k.
 * Drops the acked head of the in-flight list, then moves up to k messages. */
static const char rlist_lua_flow[] =
    "local a = tonumber(ARGV[1])\n"
    "if a > 0 then redis.call('LPOP', KEYS[2], a) end\n"
    "local k = tonumber(ARGV[2])\n"
    "if k <= 0 then return {} end\n"
    "if redis.call('EXISTS', KEYS[3]) == 0 then\n"
    "  return redis.error_reply('WSGATE_LEASE node lease lost')\n"
    "end\n"
    "local v = redis.call('LPOP', KEYS[1], k)\n"
    "if not v then return {} end\n"
    "redis.call('RPUSH', KEYS[2], unpack(v))\n"
    "return v\n";

/* KEYS in-flight lists, ARGV[i] the acked count of KEYS[i]: drops each acked head. */
static const char rlist_lua_acks[] =
    "for i = 1, #KEYS do redis.call('LPOP', KEYS[i], ARGV[i]) end\n"
    "return #KEYS\n";

/* KEYS[1] in-flight list, KEYS[2] queue, KEYS[3] node hash; ARGV acks, sid, ttl_ms.
 * Drops the acked head, moves the rest back to the queue head in order. */
static const char rlist_lua_release[] =
    "local a = tonumber(ARGV[1])\n"
    "if a > 0 then redis.call('LPOP', KEYS[1], a) end\n"
    "local n = 0\n"
    "while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do n = n + 1 end\n"
    "if n > 0 and redis.call('PTTL', KEYS[2]) < 0 then\n"
    "  redis.call('PEXPIRE', KEYS[2], ARGV[3])\n"
    "end\n"
    "redis.call('HDEL', KEYS[3], ARGV[2])\n"
    "return n\n";

/* ARGV prefix, nid ("" = none), old nid to reclaim ("" = none), lease_ms, ttl_ms, mode.
 * mode "beat": refresh our lease (-1 if it is gone), then sweep. Otherwise: reclaim old,
 * register nid, sweep. Returns the number of messages moved back to their queues. */
static const char rlist_lua_node[] =
    "local p = ARGV[1]\n"
    "local function reclaim(id)\n"
    "  local h = p .. '.node.' .. id\n"
    "  local m = redis.call('HGETALL', h)\n"
    "  local moved = 0\n"
    "  for i = 1, #m, 2 do\n"
    "    local f = p .. '.inflight.' .. id .. '.' .. m[i]\n"
    "    local q = m[i + 1]\n"
    "    local n = 0\n"
    "    while redis.call('LMOVE', f, q, 'RIGHT', 'LEFT') do n = n + 1 end\n"
    "    if n > 0 and redis.call('PTTL', q) < 0 then redis.call('PEXPIRE', q, ARGV[5]) end\n"
    "    moved = moved + n\n"
    "  end\n"
    "  redis.call('DEL', h, p .. '.lease.' .. id)\n"
    "  redis.call('SREM', p .. '.nodes', id)\n"
    "  return moved\n"
    "end\n"
    "local moved = 0\n"
    "if ARGV[6] == 'beat' then\n"
    "  if redis.call('PEXPIRE', p .. '.lease.' .. ARGV[2], ARGV[4]) == 0 then return -1 end\n"
    "else\n"
    "  if ARGV[3] ~= '' then moved = reclaim(ARGV[3]) end\n"
    "  if ARGV[2] == '' then return moved end\n"
    "  redis.call('SADD', p .. '.nodes', ARGV[2])\n"
    "  redis.call('SET', p .. '.lease.' .. ARGV[2], '1', 'PX', ARGV[4])\n"
    "end\n"
    "for _, id in ipairs(redis.call('SMEMBERS', p .. '.nodes')) do\n"
    "  if redis.call('EXISTS', p .. '.lease.' .. id) == 0 then moved = moved + reclaim(id) end\n"
    "end\n"
    "return moved\n";

/* clang-format on */

enum {
    RLIST_LUA_PUSH = 0,
    RLIST_LUA_PUSHD,
    RLIST_LUA_FLOW,
    RLIST_LUA_RELEASE,
    RLIST_LUA_NODE,
    RLIST_LUA_ACKS,
    RLIST_LUA_N
};

static const char *const rlist_lua[RLIST_LUA_N] = {
    rlist_lua_push, rlist_lua_pushd, rlist_lua_flow, rlist_lua_release, rlist_lua_node,
    rlist_lua_acks};

struct rlist;

/* One attached socket. Allocated by attach with its rsubs and queue name in one block;
 * freed when it is detached and no reply callback or service-queue entry refers to it. */
struct rlist_sess {
    struct rcommon_sess base; /* first: s, list links, attach state (redis_common.h) */
    struct rlist *rl;         /* borrowed: outlives rs */
    struct rlist_sess *snext; /* rl service queue, while queued */
    struct rlist_sess *anext; /* rl ack list, while in_acks */
    char *qkey;               /* points into this allocation: "p.recv.S" */
    uint32_t qkey_len;        /* strlen(qkey) */
    uint64_t sid;             /* s->id: names the in-flight list */
    uint32_t unacked;         /* delivered in this epoch, not acked yet */
    uint32_t fetching;        /* messages asked by the outstanding fetch (0 = none) */
    uint32_t direct;          /* direct pushes to this socket not answered yet (window) */
    uint32_t acks;            /* acked, not yet dropped from the in-flight list */
    uint32_t refs;            /* outstanding replies + service-queue membership */
    uint64_t fetch_epoch;     /* rl->epoch when the outstanding fetch was sent */
    uint8_t more;             /* the queue may hold messages: fetch when the window allows */
    uint8_t dirty;            /* woken while a fetch was in flight */
    uint8_t queued;           /* in the service queue */
    uint8_t in_acks;          /* in the ack list (holds a ref) */
    uint8_t dead;             /* session_deliver refused: wait for detach */
    uint8_t settling;         /* settle called: s is leaving; no more fetches */
    uint8_t released;         /* the release went out for settle: detach sends none */
    uint8_t settle_due;       /* nothing to wait for (link down): call settle_cb next pass */
    broker_settle_cb settle_cb; /* borrowed: settle's callback until it runs; detach drops it */
    struct msg **held;        /* owned: fetched (so in the in-flight list) but not yet given
                               * to the socket, whose unsent bytes were at max_send_buffer;
                               * FIFO from held_off, taken as writes make room */
    uint32_t nheld;           /* messages in held */
    uint32_t held_off;        /* index of the oldest */
    uint32_t held_cap;        /* slots in held */
    uint32_t avg_len;         /* running mean of this socket's message sizes (fetch sizing) */
    struct rsub subs[];       /* embedded: subs[0] keyspace channel, then topic channels;
                               * registered with rl->base.sub from attach to detach */
};

struct rlist {
    struct rcommon base;         /* first: links, url, sessions, close (redis_common.h) */
    uv_check_t check;            /* embedded: drains the service queue after each poll */
    uv_idle_t idle;              /* embedded: keeps the next poll from blocking while queued */
    uv_timer_t ack_timer;        /* embedded: applies lazy acks in one pipelined batch */
    struct rlist_sess *ack_head; /* sessions with acks not yet applied (each holds a ref) */
    uv_timer_t hb;               /* embedded: lease heartbeat + sweep */
    struct rlist_sess *svc_head; /* service queue (each entry holds a ref) */
    struct rlist_sess *svc_tail; /* idem */
    char sha[RLIST_LUA_N][41];   /* SHA1 hex of each script */
    char nid[17];                /* current incarnation id (hex), registered when `registered` */
    char old_nid[17];            /* incarnation to reclaim at the next registration, or "" */
    uint64_t epoch;              /* +1 whenever the command link drops */
    uint64_t next_id;            /* last msg_id given out */
    uint64_t first_valid_id;     /* acks below this belong to a dead epoch: ignored */
    uint64_t lease_ms;           /* node lease length */
    uint32_t batch;              /* messages per fetch at most */
    int setup_pending;           /* setup replies still awaited after the link came up */
    uint8_t registered;          /* setup done on the current command link */
    /* EVALSHA bookkeeping (rlist_eval): scripts lost, reloaded, commands retried once */
    struct rlist_eval *retry_head; /* answered NOSCRIPT: sent again first after the reload */
    struct rlist_eval *retry_tail; /* idem */
    struct rlist_eval *hold_head;  /* issued while holding: sent after the retries */
    struct rlist_eval *hold_tail;  /* idem */
    uint32_t evals_out;            /* EVALSHAs sent on the current link, not answered yet */
    int loads_pending;             /* SCRIPT LOAD replies still awaited */
    uint8_t loads_failed;          /* one of them was not the expected SHA1 */
    uint8_t reloading;             /* the loads in progress follow a loss (log, kick after) */
    uint8_t holding;               /* scripts lost: new EVALSHAs wait for the reload */
    uint8_t scripts_bad;           /* the last load failed: not ready until one succeeds */
};

static void rlist_service_schedule(struct rlist_sess *rs);

/* --- helpers --- */

static void rlist_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
}

static size_t rlist_inflight_key(const struct rlist *rl, uint64_t sid, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s.inflight.%s.%llu", rl->base.cfg->prefix, rl->nid,
                     (unsigned long long)sid);
    return n < 0 ? 0 : (size_t)n;
}

static void rlist_sess_unref(struct rlist_sess *rs)
{
    if (--rs->refs == 0 && rs->base.detached)
        free(rs);
}

/* --- EVALSHA, reloaded and retried once when Redis lost the scripts --- */

/* Redis forgets loaded scripts on SCRIPT FLUSH, on a restart without them, or behind a
 * proxy that fails over to a server that never saw our SCRIPT LOAD: every EVALSHA then
 * answers NOSCRIPT. So every EVALSHA goes through rlist_eval. On the first NOSCRIPT the
 * node holds new EVALSHAs back and waits until every one already sent has answered (they
 * answer in order; those sent after the loss answer NOSCRIPT too), then sends SCRIPT LOAD
 * for every script, the failed commands in their original order, then the held ones. So
 * EVALSHAs keep their order on the link (an ack carried by a fetch still runs before the
 * release of that socket), nothing waits on the loop, and each command is retried once:
 * a second NOSCRIPT is its final answer and marks the scripts bad (not ready) until a
 * reload succeeds (the heartbeat tries again). */
struct rlist_eval {
    struct rlist_eval *next; /* rl->retry_* or rl->hold_* list while waiting */
    struct rlist *rl;        /* borrowed: outlives its commands (failed at link loss) */
    redisCallbackFn *fn;     /* the caller's reply callback, or NULL (reply ignored) */
    rconn_status_cb scb;     /* or a status callback (pushes: rconn_status_cb codes) */
    void *priv;              /* borrowed: fn's or scb's argument */
    struct msg *m;           /* ref: the payload one argument points into, or NULL */
    uint8_t retried;         /* answered NOSCRIPT once: the next answer is final */
    int argc;                /* number of arguments */
    const char **argv;       /* into this allocation (the payload argument: into m) */
    size_t *lens;            /* into this allocation */
};

static void rlist_evq_append(struct rlist_eval **head, struct rlist_eval **tail,
                             struct rlist_eval *e)
{
    e->next = NULL;
    if (*tail != NULL)
        (*tail)->next = e;
    else
        *head = e;
    *tail = e;
}

/* Give reply (NULL: the link was lost) to e's caller, then free e. */
static void rlist_eval_finish(struct rlist_eval *e, redisReply *reply)
{
    struct rlist *rl = e->rl;
    if (e->scb != NULL) {
        int status = 0;
        if (reply == NULL) {
            status = rconn_last_error(rl->base.cmd);
        } else if (reply->type == REDIS_REPLY_ERROR) {
            log_warn("event=redis_error conn=cmd err=\"%.*s\"", (int)reply->len, reply->str);
            status = UV_EIO;
        } else if (reply->type == REDIS_REPLY_INTEGER && reply->integer == -1) {
            status = UV_ENOBUFS;
        }
        e->scb(e->priv, status);
    } else if (e->fn != NULL) {
        e->fn(NULL, reply, e->priv); /* our callbacks never use the context */
    }
    msg_unref(e->m);
    free(e);
}

/* Fail every waiting command (link lost or closing: they were never sent). */
static void rlist_eval_fail_waiting(struct rlist *rl)
{
    struct rlist_eval *lists[2] = {rl->retry_head, rl->hold_head};
    rl->retry_head = rl->retry_tail = rl->hold_head = rl->hold_tail = NULL;
    rl->holding = 0;
    for (int i = 0; i < 2; i++) {
        for (struct rlist_eval *e = lists[i], *next; e != NULL; e = next) {
            next = e->next;
            rlist_eval_finish(e, NULL);
        }
    }
}

static void rlist_on_eval_reply(redisAsyncContext *ac, void *r, void *priv);
static void rlist_reload(struct rlist *rl);

static int rlist_eval_send(struct rlist_eval *e)
{
    int rc = rconn_command(e->rl->base.cmd, rlist_on_eval_reply, e, e->argc, e->argv, e->lens);
    if (rc == 0)
        e->rl->evals_out++;
    return rc;
}

static void rlist_on_eval_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist_eval *e = priv;
    struct rlist *rl = e->rl;
    redisReply *reply = r;
    (void)ac;
    rl->evals_out--;
    if (reply != NULL && reply->type == REDIS_REPLY_ERROR && reply->len >= 8 &&
        memcmp(reply->str, "NOSCRIPT", 8) == 0) {
        if (!e->retried && rconn_is_up(rl->base.cmd)) {
            if (!rl->holding && !rl->reloading)
                log_warn("event=redis_scripts_lost action=reload");
            rl->holding = 1;
            e->retried = 1;
            rlist_evq_append(&rl->retry_head, &rl->retry_tail, e);
            if (rl->evals_out == 0)
                rlist_reload(rl);
            return;
        }
        rl->scripts_bad = 1; /* lost again right after a reload: the heartbeat retries */
    }
    rlist_eval_finish(e, reply);
    if (rl->holding && rl->evals_out == 0)
        rlist_reload(rl);
}

/* EVALSHA argv[0..argc) (argv[0] = "EVALSHA"). argv/lens: borrowed for the call (copied;
 * an argument pointing at m->data is kept by a ref on m instead). Exactly one of fn
 * (reply, NULL when the link was lost; fn may be NULL) and scb (status) is used.
 * 0 => the callback runs exactly once, later; UV_ENOTCONN / UV_ENOMEM => never. */
static int rlist_eval(struct rlist *rl, redisCallbackFn *fn, rconn_status_cb scb, void *priv,
                      struct msg *m, int argc, const char **argv, const size_t *lens)
{
    size_t bytes = 0;
    struct rlist_eval *e;
    char *p;
    int rc;
    if (!rconn_is_up(rl->base.cmd))
        return UV_ENOTCONN;
    for (int i = 0; i < argc; i++)
        if (m == NULL || argv[i] != m->data)
            bytes += lens[i];
    e = malloc(sizeof(*e) + (size_t)argc * (sizeof(*e->argv) + sizeof(*e->lens)) + bytes);
    if (e == NULL)
        return UV_ENOMEM;
    e->next = NULL;
    e->rl = rl;
    e->fn = fn;
    e->scb = scb;
    e->priv = priv;
    e->m = NULL;
    e->retried = 0;
    e->argc = argc;
    e->argv = (const char **)(void *)(e + 1);
    e->lens = (size_t *)(void *)(e->argv + argc);
    p = (char *)(e->lens + argc);
    for (int i = 0; i < argc; i++) {
        e->lens[i] = lens[i];
        if (m != NULL && argv[i] == m->data) {
            e->argv[i] = m->data;
            if (e->m == NULL)
                e->m = msg_ref(m);
            continue;
        }
        memcpy(p, argv[i], lens[i]);
        e->argv[i] = p;
        p += lens[i];
    }
    if (rl->holding) {
        rlist_evq_append(&rl->hold_head, &rl->hold_tail, e);
        return 0;
    }
    if ((rc = rlist_eval_send(e)) < 0) {
        msg_unref(e->m);
        free(e);
    }
    return rc;
}

static void rlist_on_script_load(redisAsyncContext *ac, void *r, void *priv);

/* SCRIPT LOAD every script; the caller counts the replies (rlist_on_script_load). */
static void rlist_scripts_load(struct rlist *rl)
{
    rl->loads_pending = 0;
    rl->loads_failed = 0;
    for (int i = 0; i < RLIST_LUA_N; i++) {
        const char *argv[] = {"SCRIPT", "LOAD", rlist_lua[i]};
        size_t lens[] = {6, 4, strlen(rlist_lua[i])};
        if (rconn_command(rl->base.cmd, rlist_on_script_load, rl, 3, argv, lens) == 0)
            rl->loads_pending++;
    }
}

/* Every EVALSHA sent before the loss has answered: load the scripts, then send the failed
 * commands (in order) and the held ones behind the loads on the same link. */
static void rlist_reload(struct rlist *rl)
{
    struct rlist_eval *e;
    if (!rconn_is_up(rl->base.cmd))
        return; /* the link-down handler fails what waits */
    rl->holding = 0;
    rl->reloading = 1;
    rlist_scripts_load(rl);
    while ((e = rl->retry_head) != NULL || (e = rl->hold_head) != NULL) {
        if (e == rl->retry_head) {
            rl->retry_head = e->next;
            if (rl->retry_head == NULL)
                rl->retry_tail = NULL;
        } else {
            rl->hold_head = e->next;
            if (rl->hold_head == NULL)
                rl->hold_tail = NULL;
        }
        e->next = NULL;
        if (rlist_eval_send(e) < 0)
            rlist_eval_finish(e, NULL);
    }
}

/* --- delivery --- */

static void rlist_held_clear(struct rlist_sess *rs)
{
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
    return 0;
}

/* Hand m to the socket (msg_id for its ack); 0, or < 0 when it is closing. */
static int rlist_give(struct rlist_sess *rs, struct msg *m)
{
    struct rlist *rl = rs->rl;
    rs->avg_len = rs->avg_len == 0 ? m->len : rs->avg_len - rs->avg_len / 8 + m->len / 8;
    if (session_deliver(rs->base.s, ++rl->next_id, m) < 0) {
        rs->dead = 1; /* the core closes it; detach returns what is left */
        return UV_ECANCELED;
    }
    return 0;
}

/* Give held messages to the socket while its send buffer has room (after writes). */
static void rlist_held_drain(struct rlist_sess *rs)
{
    while (rs->nheld > 0 && !rs->dead && !rs->base.detached &&
           session_can_take(rs->base.s, rs->held[rs->held_off]->len)) {
        struct msg *m = rs->held[rs->held_off];
        rs->held_off++;
        rs->nheld--;
        (void)rlist_give(rs, m);
        msg_unref(m);
    }
    if (rs->nheld == 0)
        rs->held_off = 0;
}

/* Run settle's callback (once; not after detach, which cancels it). */
static void rlist_settle_done(struct rlist_sess *rs)
{
    broker_settle_cb cb = rs->settle_cb;
    rs->settle_cb = NULL;
    rs->settle_due = 0;
    if (cb != NULL && !rs->base.detached)
        cb(rs->base.s); /* the core detaches rs from inside */
}

static void rlist_on_flow(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist_sess *rs = priv;
    struct rlist *rl = rs->rl;
    redisReply *reply = r;
    uint32_t k = rs->fetching;
    (void)ac;
    rs->fetching = 0;
    if (rs->settling && !rs->base.detached && reply != NULL) {
        /* leaving: the settle's release, behind this fetch on the link, returns what it
         * moved; nothing more goes to the socket */
        rlist_sess_unref(rs);
        return;
    }
    if (rs->base.detached || reply == NULL || rs->fetch_epoch != rl->epoch) {
        rs->more = 1; /* the next registration kicks every session */
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
        rs->more = 0;
        rlist_sess_unref(rs);
        return;
    }
    size_t n = reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0;
    for (size_t i = 0; i < n && !rs->dead; i++) {
        redisReply *e = reply->element[i];
        struct msg *m;
        int rc;
        if (e->type != REDIS_REPLY_STRING)
            continue;
        m = msg_new_copy(e->str, e->len, rl->base.cfg->frame_type);
        if (m == NULL) {
            session_close(rs->base.s, 1011);
            rs->dead = 1;
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
            rs->dead = 1;
        }
        if (rc < 0)
            break;
        rs->unacked++;
    }
    rs->more = n >= k || rs->dirty;
    rs->dirty = 0;
    if (rs->more)
        rlist_service_schedule(rs);
    rlist_sess_unref(rs);
}

/* One fetch for this socket if the window allows; it also drops the acked messages. */
static void rlist_service(struct rlist_sess *rs)
{
    struct rlist *rl = rs->rl;
    char fkey[RCOMMON_NAME_MAX], lease[RCOMMON_NAME_MAX], acks[16], kbuf[16];
    size_t flen;
    uint32_t k = 0;
    if (rs->base.detached || rs->settling || !rl->registered || !rconn_is_up(rl->base.cmd))
        return;
    uint32_t window = rl->base.cfg->max_inflight > 0 ? rl->base.cfg->max_inflight : 1;
    rlist_held_drain(rs);
    if (rs->base.attached && rs->more && rs->fetching == 0 && !rs->dead && rs->nheld == 0 &&
        rs->base.nready == rs->base.nsubs && rs->unacked + rs->direct < window) {
        k = window - rs->unacked - rs->direct;
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
    int alen = snprintf(acks, sizeof(acks), "%u", rs->acks);
    size_t llen = rcommon_name(&rl->base, "lease", rl->nid, lease, sizeof(lease));
    int klen = snprintf(kbuf, sizeof(kbuf), "%u", k);
    const char *argv[] = {"EVALSHA", rl->sha[RLIST_LUA_FLOW], "3", rs->qkey, fkey, lease, acks,
                          kbuf};
    size_t lens[] = {7, 40, 1, rs->qkey_len, flen, llen, (size_t)alen, (size_t)klen};
    if (rlist_eval(rl, rlist_on_flow, NULL, rs, NULL, 8, argv, lens) == 0) {
        rs->refs++;
        rs->acks = 0;
        rs->fetching = k;
        rs->fetch_epoch = rl->epoch;
        rs->dirty = 0;
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

static void rlist_service_schedule(struct rlist_sess *rs)
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
    if (rs->fetching > 0) {
        rs->dirty = 1;
        return;
    }
    rs->more = 1;
    rlist_service_schedule(rs);
}

/* --- pub/sub link callbacks --- */

static int rlist_is_push_event(const char *d, size_t n)
{
    return (n == 5 && (memcmp(d, "rpush", 5) == 0 || memcmp(d, "lpush", 5) == 0)) ||
           (n == 7 && memcmp(d, "linsert", 7) == 0);
}

static void rlist_on_message(struct rconn *rc, struct rconn_chan *ch, const char *data, size_t len,
                             void *arg)
{
    struct rlist *rl = arg;
    struct msg *m = NULL;
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
    for (struct rsub *u = ch->ready; u; u = u->next) {
        struct rlist_sess *rs = u->owner;
        if (rs->base.detached || !rs->base.attached || rs->dead)
            continue;
        if (m == NULL && (m = msg_new_copy(data, len, rl->base.cfg->frame_type)) == NULL)
            return;
        session_deliver(rs->base.s, 0, m); /* a broadcast is not stored: no ack */
    }
    msg_unref(m);
}

static void rlist_on_sess_ready(struct rcommon *r, struct rcommon_sess *cs)
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
        rs->more = 1;
        rlist_service_schedule(rs);
    }
    rlist_sess_unref(rs);
}

/* --- command link setup --- */

static void rlist_kick_all(struct rlist *rl)
{
    for (struct rcommon_sess *cs = rl->base.sessions; cs; cs = cs->next) {
        struct rlist_sess *rs = (struct rlist_sess *)cs;
        rs->more = 1;
        rlist_service_schedule(rs);
    }
}

static void rlist_on_hb_timer(uv_timer_t *t);

static void rlist_setup_step(struct rlist *rl)
{
    if (--rl->setup_pending > 0)
        return;
    rl->registered = 1;
    rl->old_nid[0] = '\0';
    log_info("event=redis_registered node=%s lease_ms=%llu", rl->nid,
             (unsigned long long)rl->lease_ms);
    uv_timer_start(&rl->hb, rlist_on_hb_timer, rl->lease_ms / 3, rl->lease_ms / 3);
    rlist_kick_all(rl);
}

static void rlist_on_config_set(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist *rl = priv;
    redisReply *reply = r;
    (void)ac;
    if (reply == NULL)
        return;
    if (reply->type == REDIS_REPLY_ERROR)
        log_error("event=redis_notify_config_failed err=\"%.*s\" hint=\"set "
                  "notify-keyspace-events to include K and l (e.g. Kl) in redis.conf: without "
                  "it plain RPUSH producers do not wake the gateway\"",
                  (int)reply->len, reply->str);
    else
        log_info("event=redis_notify_enabled");
    rlist_setup_step(rl);
}

static void rlist_on_config_get(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist *rl = priv;
    redisReply *reply = r;
    char flags[64];
    (void)ac;
    if (reply == NULL)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 ||
        reply->element[1]->type != REDIS_REPLY_STRING || reply->element[1]->len > 40) {
        log_warn("event=redis_notify_config_unknown hint=\"cannot read notify-keyspace-events: "
                 "make sure it includes K and l (e.g. Kl)\"");
        rlist_setup_step(rl);
        return;
    }
    const char *cur = reply->element[1]->str;
    int has_k = strchr(cur, 'K') != NULL;
    int has_l = strchr(cur, 'l') != NULL || strchr(cur, 'A') != NULL;
    if (has_k && has_l) {
        rlist_setup_step(rl);
        return;
    }
    int n = snprintf(flags, sizeof(flags), "%s%s%s", cur, has_k ? "" : "K", has_l ? "" : "l");
    const char *argv[] = {"CONFIG", "SET", "notify-keyspace-events", flags};
    size_t lens[] = {6, 3, 22, (size_t)n};
    if (rconn_command(rl->base.cmd, rlist_on_config_set, rl, 4, argv, lens) < 0)
        return; /* link going down: setup restarts on the next up */
}

static void rlist_on_register(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist *rl = priv;
    redisReply *reply = r;
    (void)ac;
    if (reply == NULL)
        return;
    if (reply->type != REDIS_REPLY_INTEGER) {
        rl->base.b->errors++;
        log_error("event=redis_register_failed err=\"%.*s\"", (int)reply->len,
                  reply->str ? reply->str : "");
        rconn_reset(rl->base.cmd, "register failed");
        return;
    }
    if (reply->integer > 0)
        log_info("event=redis_reclaimed messages=%lld", reply->integer);
    rlist_setup_step(rl);
}

static void rlist_on_script_load(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist *rl = priv;
    redisReply *reply = r;
    int ok = 0;
    (void)ac;
    if (reply == NULL || rl->loads_pending == 0)
        return; /* the link went down: the next one loads them again */
    for (int i = 0; i < RLIST_LUA_N; i++)
        ok |= reply->type == REDIS_REPLY_STRING && reply->len == 40 &&
              memcmp(reply->str, rl->sha[i], 40) == 0;
    if (!ok) {
        rl->loads_failed = 1;
        log_error("event=redis_script_load_failed err=\"%.*s\"", (int)reply->len,
                  reply->str ? reply->str : "");
    }
    if (--rl->loads_pending > 0)
        return;
    rl->scripts_bad = rl->loads_failed;
    if (rl->reloading && !rl->loads_failed) {
        log_info("event=redis_scripts_loaded reason=reload");
        if (rl->registered)
            rlist_kick_all(rl); /* fetches that failed meanwhile try again */
    }
    rl->reloading = 0;
}

/* Send the node script: register (mode "reg") or heartbeat ("beat"). text: send the script
 * itself (EVAL), for the deregistration at close, which has no time for a reload. */
static int rlist_node_cmd(struct rlist *rl, const char *nid, const char *old, const char *mode,
                          redisCallbackFn *fn, int text)
{
    char lease[24], ttl[24];
    int ll = snprintf(lease, sizeof(lease), "%llu", (unsigned long long)rl->lease_ms);
    int tl = snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)rl->base.cfg->ttl_ms);
    const char *argv[] = {
        "EVALSHA", rl->sha[RLIST_LUA_NODE], "0", rl->base.cfg->prefix, nid, old, lease, ttl, mode};
    size_t lens[] = {7,           40,          1,          strlen(rl->base.cfg->prefix),
                     strlen(nid), strlen(old), (size_t)ll, (size_t)tl,
                     strlen(mode)};
    if (text) {
        argv[0] = "EVAL";
        lens[0] = 4;
        argv[1] = rlist_lua_node;
        lens[1] = sizeof(rlist_lua_node) - 1;
        return rconn_command(rl->base.cmd, fn, rl, 9, argv, lens);
    }
    return rlist_eval(rl, fn, NULL, rl, NULL, 9, argv, lens);
}

/* HSET p.node.N I "p.recv.S" for every attached session, in chunks. */
static void rlist_hset_all(struct rlist *rl)
{
    char hkey[RCOMMON_NAME_MAX];
    char sids[RLIST_HSET_CHUNK][24];
    const char *argv[2 + 2 * RLIST_HSET_CHUNK];
    size_t lens[2 + 2 * RLIST_HSET_CHUNK];
    size_t hl = rcommon_name(&rl->base, "node", rl->nid, hkey, sizeof(hkey));
    int n = 0;
    argv[0] = "HSET";
    lens[0] = 4;
    argv[1] = hkey;
    lens[1] = hl;
    for (struct rcommon_sess *cs = rl->base.sessions; cs; cs = cs->next) {
        struct rlist_sess *rs = (struct rlist_sess *)cs;
        int sl = snprintf(sids[n], sizeof(sids[n]), "%llu", (unsigned long long)rs->sid);
        argv[2 + 2 * n] = sids[n];
        lens[2 + 2 * n] = (size_t)sl;
        argv[3 + 2 * n] = rs->qkey;
        lens[3 + 2 * n] = rs->qkey_len;
        if (++n == RLIST_HSET_CHUNK || cs->next == NULL) {
            rconn_command(rl->base.cmd, NULL, NULL, 2 + 2 * n, argv, lens);
            n = 0;
        }
    }
}

static void rlist_on_cmd_state(struct rconn *rc, int up, void *arg)
{
    struct rlist *rl = arg;
    unsigned char rnd[8];
    (void)rc;
    if (!up) {
        rlist_eval_fail_waiting(rl); /* those sent got their NULL replies already */
        rl->evals_out = 0;
        rl->loads_pending = 0;
        rl->epoch++;
        rl->first_valid_id = rl->next_id + 1;
        if (rl->registered)
            memcpy(rl->old_nid, rl->nid, sizeof(rl->nid));
        rl->registered = 0;
        uv_timer_stop(&rl->hb);
        for (struct rcommon_sess *cs = rl->base.sessions; cs; cs = cs->next) {
            struct rlist_sess *rs = (struct rlist_sess *)cs;
            rs->unacked = 0;
            rs->acks = 0;
            rs->more = 1;
            rlist_held_clear(rs); /* their in-flight list is reclaimed with the epoch */
        }
        return;
    }
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) < 0) {
        uint64_t t = uv_hrtime() ^ ((uint64_t)(uintptr_t)rl << 16);
        memcpy(rnd, &t, sizeof(rnd));
    }
    rlist_hex(rnd, sizeof(rnd), rl->nid);
    rl->evals_out = 0;
    rl->reloading = 0;
    rlist_scripts_load(rl);
    rl->setup_pending = 2;
    {
        const char *argv[] = {"CONFIG", "GET", "notify-keyspace-events"};
        size_t lens[] = {6, 3, 22};
        rconn_command(rl->base.cmd, rlist_on_config_get, rl, 3, argv, lens);
    }
    rlist_node_cmd(rl, rl->nid, rl->old_nid, "reg", rlist_on_register, 0);
    rlist_hset_all(rl);
}

static void rlist_on_beat(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist *rl = priv;
    redisReply *reply = r;
    (void)ac;
    if (reply == NULL || rl->base.closing)
        return;
    if (reply->type != REDIS_REPLY_INTEGER) {
        rl->base.b->errors++;
        log_warn("event=redis_heartbeat_failed err=\"%.*s\"", (int)reply->len,
                 reply->str ? reply->str : "");
        return;
    }
    if (reply->integer < 0) {
        /* Another node reclaimed our in-flight lists: start a new incarnation. */
        rconn_reset(rl->base.cmd, "node lease expired");
        return;
    }
    if (reply->integer > 0)
        log_info("event=redis_reclaimed messages=%lld", reply->integer);
}

static void rlist_on_hb_timer(uv_timer_t *t)
{
    struct rlist *rl = t->data;
    /* The last reload failed (not ready meanwhile): try again, behind what is in flight. */
    if (rl->scripts_bad && !rl->holding && rl->loads_pending == 0 &&
        rconn_is_up(rl->base.cmd)) {
        rl->holding = 1;
        if (rl->evals_out == 0)
            rlist_reload(rl);
    }
    if (rl->registered && rconn_is_up(rl->base.cmd))
        rlist_node_cmd(rl, rl->nid, "", "beat", rlist_on_beat, 0);
    /* Held messages wait for an ack; if the bytes ahead of them were broadcasts (no ack
     * comes), the heartbeat tries again. */
    for (struct rcommon_sess *cs = rl->base.sessions; cs; cs = cs->next) {
        struct rlist_sess *rs = (struct rlist_sess *)cs;
        if (rs->nheld > 0) {
            rlist_held_drain(rs);
            if (rs->nheld == 0 && rs->more)
                rlist_service_schedule(rs);
        }
    }
}

/* --- vtable --- */

static int rlist_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    struct rlist *rl;
    int rc;
    rl = calloc(1, sizeof(*rl));
    if (rl == NULL)
        return UV_ENOMEM;
    for (int i = 0; i < RLIST_LUA_N; i++) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)rlist_lua[i], strlen(rlist_lua[i]), md);
        rlist_hex(md, sizeof(md), rl->sha[i]);
    }
    {
        uint64_t a = 3 * cfg->redis_ping_interval_ms, c = 2 * cfg->redis_timeout_ms;
        rl->lease_ms = (a > c ? a : c) + 1000;
    }
    rl->batch = cfg->redis_batch > RLIST_BATCH_MAX ? RLIST_BATCH_MAX : cfg->redis_batch;
    if (rl->batch == 0)
        rl->batch = 1;
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
    size_t lens[] = {7,          40,         1,          fl,        rs->qkey_len,
                     (size_t)hl, (size_t)al, (size_t)sl, (size_t)tl};
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
    char q[RCOMMON_NAME_MAX], max[16], ttl[24];
    size_t ql = rcommon_name(&rl->base, kind, name, q, sizeof(q));
    int ml = snprintf(max, sizeof(max), "%u", rl->base.cfg->max_queue);
    int tl = snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)rl->base.cfg->ttl_ms);
    const char *argv[] = {"EVALSHA", rl->sha[RLIST_LUA_PUSH], "1", q, m->data, max, ttl};
    size_t lens[] = {7, 40, 1, ql, m->len, (size_t)ml, (size_t)tl};
    if (rl->base.closing)
        return UV_ECANCELED;
    return rlist_eval(rl, NULL, cb, arg, m, 7, argv, lens);
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
struct rlist_push_req {
    struct rlist_sess *rs; /* ref: the socket the message may go to */
    struct msg *m;         /* ref: the message */
    broker_push_cb cb;     /* borrowed: the core's */
    void *arg;             /* borrowed: for cb */
};

/* A socket of the queue qkey on this node that can take one more message of len bytes now
 * (attached, not leaving, nothing held, window and send buffer room), or NULL. */
static struct rlist_sess *rlist_direct_target(struct rlist *rl, const char *qkey, size_t qlen,
                                              size_t len)
{
    char kch[RCOMMON_NAME_MAX + 32];
    uint32_t window = rl->base.cfg->max_inflight > 0 ? rl->base.cfg->max_inflight : 1;
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
        if (u->tag != RCOMMON_TAG_SESS || rs->base.detached || !rs->base.attached ||
            rs->settling || rs->dead || rs->nheld > 0 ||
            rs->unacked + rs->fetching + rs->direct >= window ||
            !session_can_take(rs->base.s, len))
            continue;
        return rs;
    }
    return NULL;
}

/* The push script put m in rs's in-flight list: write it like a fetched message. */
static void rlist_direct_give(struct rlist_sess *rs, struct msg *m)
{
    int rc;
    if (rs->base.detached || rs->settling || rs->dead)
        return; /* the release (behind the push on the link) returns it to the queue */
    if (rs->nheld > 0 || !session_can_take(rs->base.s, m->len))
        rc = rlist_held_push(rs, m);
    else
        rc = rlist_give(rs, m);
    if (rc == UV_ENOMEM) {
        session_close(rs->base.s, 1011);
        rs->dead = 1;
    }
    if (rc == 0)
        rs->unacked++;
}

static void rlist_on_pushd(redisAsyncContext *ac, void *r, void *priv)
{
    struct rlist_push_req *req = priv;
    struct rlist_sess *rs = req->rs;
    struct rlist *rl = rs->rl;
    redisReply *reply = r;
    broker_push_cb cb = req->cb;
    void *arg = req->arg;
    int status = 0;
    (void)ac;
    rs->direct--;
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

static int rlist_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb,
                      void *arg)
{
    struct rlist *rl = b->priv;
    struct rlist_sess *rs;
    struct rlist_push_req *req;
    char q[RCOMMON_NAME_MAX], fkey[RCOMMON_NAME_MAX], lease[RCOMMON_NAME_MAX], max[16], ttl[24],
        acks[16];
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
    int ml = snprintf(max, sizeof(max), "%u", rl->base.cfg->max_queue);
    int tl = snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)rl->base.cfg->ttl_ms);
    int al = snprintf(acks, sizeof(acks), "%u", rs->acks);
    const char *argv[] = {"EVALSHA", rl->sha[RLIST_LUA_PUSHD], "3", q, fkey, lease, m->data,
                          max, ttl, acks};
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
    rs->direct++;
    rs->acks = 0; /* carried by this push */
    return 0;
}

static int rlist_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb,
                          void *arg)
{
    return rlist_push_to(b->priv, "send", s->key, m, cb, arg);
}

/* LPOP the acked head of every in-flight list with pending acks: one pipelined write. */
/* Drop the acked heads of n in-flight lists in one script call; releases the batch's refs. */
static void rlist_acks_send(struct rlist *rl, struct rlist_sess **batch, int n)
{
    char keys[RLIST_ACK_CHUNK][RCOMMON_NAME_MAX], counts[RLIST_ACK_CHUNK][12], nk[8];
    const char *argv[3 + 2 * RLIST_ACK_CHUNK];
    size_t lens[3 + 2 * RLIST_ACK_CHUNK];
    argv[0] = "EVALSHA";
    lens[0] = 7;
    argv[1] = rl->sha[RLIST_LUA_ACKS];
    lens[1] = 40;
    argv[2] = nk;
    lens[2] = (size_t)snprintf(nk, sizeof(nk), "%d", n);
    for (int i = 0; i < n; i++) {
        argv[3 + i] = keys[i];
        lens[3 + i] = rlist_inflight_key(rl, batch[i]->sid, keys[i], sizeof(keys[i]));
        argv[3 + n + i] = counts[i];
        lens[3 + n + i] = (size_t)snprintf(counts[i], sizeof(counts[i]), "%u", batch[i]->acks);
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

static void rlist_ack(struct broker *b, struct session *s, uint64_t msg_id)
{
    struct rlist *rl = b->priv;
    struct rlist_sess *rs = s->bpriv;
    if (rl == NULL || rs == NULL || rs->base.detached || msg_id < rl->first_valid_id)
        return; /* an ack from before a reconnect: that message was reclaimed */
    if (rs->unacked > 0)
        rs->unacked--;
    rs->acks++;
    rlist_held_drain(rs);
    /* Applied lazily: with the socket's next fetch if there is one (the window just
     * opened), else within RLIST_ACK_DELAY_MS together with every other socket's acks.
     * Until then a crash redelivers it (at-least-once); a detach drops it correctly. */
    if (rs->more)
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
