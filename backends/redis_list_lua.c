/* redis_list_lua.c — the redis-list backend's Lua scripts (push, direct push, fetch,
 * acks, release, node registration and heartbeat), their SHA1s, SCRIPT LOAD, and EVALSHA
 * with the reload-and-retry-once path for when Redis lost them (rlist_eval). Does NOT
 * decide what to run or when: redis_list.c, redis_list_node.c and redis_list_fetch.c do.
 * Loop thread only. */
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "msg.h"
#include "redis_list.h"

/* --- scripts (loaded with SCRIPT LOAD on every connect; EVALSHA by locally computed SHA1) --- */

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

const char *const rlist_lua[RLIST_LUA_N] = {rlist_lua_push,    rlist_lua_pushd, rlist_lua_flow,
                                            rlist_lua_release, rlist_lua_node,  rlist_lua_acks};

/* --- helpers --- */

void rlist_hex(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void rlist_scripts_sha(struct rlist *rl)
{
    for (int i = 0; i < RLIST_LUA_N; i++) {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1((const unsigned char *)rlist_lua[i], strlen(rlist_lua[i]), md);
        rlist_hex(md, sizeof(md), rl->sha[i]);
    }
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
void rlist_eval_fail_waiting(struct rlist *rl)
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
int rlist_eval(struct rlist *rl, redisCallbackFn *fn, rconn_status_cb scb, void *priv,
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

/* --- SCRIPT LOAD --- */

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

/* SCRIPT LOAD every script; the caller counts the replies (rlist_on_script_load). */
void rlist_scripts_load(struct rlist *rl)
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
void rlist_reload(struct rlist *rl)
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
