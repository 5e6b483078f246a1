/* redis_list_node.c — the redis-list backend's command-link setup and crash recovery:
 * on every connect a fresh node incarnation N (random id), SCRIPT LOAD, the keyspace
 * notification config check (K and l), registration with its lease (reclaiming the
 * previous incarnation's in-flight lists), HSET of every attached socket's in-flight list;
 * then the heartbeat that refreshes the lease and sweeps expired incarnations. On a link
 * loss it starts a new epoch (acks of the old one are ignored). Does NOT deliver or fetch
 * (redis_list_fetch.c). Loop thread only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "redis_list.h"

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

/* Send the node script: register (mode "reg") or heartbeat ("beat"). text: send the script
 * itself (EVAL), for the deregistration at close, which has no time for a reload. */
int rlist_node_cmd(struct rlist *rl, const char *nid, const char *old, const char *mode,
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
        argv[1] = rlist_lua[RLIST_LUA_NODE];
        lens[1] = strlen(rlist_lua[RLIST_LUA_NODE]);
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

void rlist_on_cmd_state(struct rconn *rc, int up, void *arg)
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
            rs->sock.unacked = 0;
            rs->acks = 0;
            rs->pull.may_have_more = 1;
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
    if (rl->scripts_bad && !rl->holding && rl->loads_pending == 0 && rconn_is_up(rl->base.cmd)) {
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
            if (rs->nheld == 0 && rs->pull.may_have_more)
                rlist_service_schedule(rs);
        }
    }
}
