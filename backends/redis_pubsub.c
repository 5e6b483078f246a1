/* redis_pubsub.c — the "redis-pubsub" broker: session messages and broadcasts over Redis
 * pub/sub, at-most-once, nothing stored. Loop thread only.
 *
 * Names (prefix p = [broker] prefix): a session S listens on channel p.recv.S (so a
 * service reaches it with a plain `PUBLISH p.recv.S payload`), broadcasts go to p.topic.T,
 * client frames (upstream = on) are PUBLISHed on p.send.S. Every socket of S, on every
 * node, gets each message once (pub/sub fans out; there is no queue to share).
 *
 * Does NOT: buffer for offline sessions (a push to a session nobody listens to is accepted
 * and dropped: 202, as PUBLISH answers), ack, or retry. A push answers 202 once Redis took
 * the PUBLISH. Two Redis connections per node (commands, pub/sub), whatever the number of
 * sessions; a channel shared by several local sockets is subscribed once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"
#include "config.h"
#include "log.h"
#include "msg.h"
#include "redis_conn.h"
#include "session.h"

#define RPS_NAME_MAX 320 /* prefix(64) + ".topic." + key(128) + slack */

struct rps;

/* One attached socket: its rsubs (p.recv.S, then distinct topics). Freed at detach (no
 * reply callback ever refers to it). */
struct rps_sess {
    struct rps *rp;        /* borrowed: outlives rs */
    struct session *s;     /* borrowed: from attach until detach */
    struct rps_sess *next; /* rp->sessions */
    struct rps_sess *prev; /* idem */
    uint16_t nsubs;        /* entries in subs */
    uint16_t nready;       /* confirmed on the current pub/sub connection */
    uint8_t attached;      /* session_attached(s, 0) was called */
    uint8_t detached;      /* detach ran */
    uint8_t busy;          /* inside session_attached: free deferred to the caller */
    struct rsub subs[];    /* embedded: registered with rp->sub from attach to detach */
};

struct rps {
    struct broker *b;          /* borrowed: owns rp through b->priv */
    const struct config *cfg;  /* borrowed */
    struct rconn_url url;      /* parsed [redis] url */
    struct rconn *cmd;         /* owned: PUBLISH link */
    struct rconn *sub;         /* owned: SUBSCRIBE link */
    struct rps_sess *sessions; /* attached sessions (owned nodes) */
    uint8_t closing;           /* rps_close called */
    int close_pending;         /* links still closing */
    broker_close_cb close_cb;  /* set by rps_close */
};

static void rps_on_message(struct rconn *rc, struct rconn_chan *ch, const char *data, size_t len,
                           void *arg)
{
    struct rps *rp = arg;
    struct msg *m;
    (void)rc;
    if (ch->ready == NULL || (m = msg_new_copy(data, len, rp->cfg->frame_type)) == NULL)
        return;
    for (struct rsub *u = ch->ready; u; u = u->next) {
        struct rps_sess *rs = u->owner;
        if (!rs->detached && rs->attached)
            session_deliver(rs->s, 0, m); /* at-most-once: a refusal drops it */
    }
    msg_unref(m);
}

static void rps_on_sub_ready(struct rconn *rc, struct rsub *sub, void *arg)
{
    struct rps_sess *rs = sub->owner;
    (void)rc;
    (void)arg;
    if (rs->detached || ++rs->nready < rs->nsubs || rs->attached)
        return;
    rs->attached = 1;
    rs->busy = 1; /* session_attached may detach rs */
    session_attached(rs->s, 0);
    rs->busy = 0;
    if (rs->detached)
        free(rs);
}

static void rps_on_sub_state(struct rconn *rc, int up, void *arg)
{
    struct rps *rp = arg;
    (void)rc;
    if (!up)
        for (struct rps_sess *rs = rp->sessions; rs; rs = rs->next)
            rs->nready = 0;
}

static int rps_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    struct rps *rp = calloc(1, sizeof(*rp));
    unsigned char rnd[6];
    char probe[128];
    int rc;
    if (rp == NULL)
        return UV_ENOMEM;
    rp->b = b;
    rp->cfg = cfg;
    if ((rc = rconn_url_parse(cfg->redis_url, &rp->url)) < 0) {
        log_error("event=redis_bad_url");
        free(rp);
        return rc;
    }
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) < 0)
        memset(rnd, 0, sizeof(rnd));
    snprintf(probe, sizeof(probe), "%s.probe.%02x%02x%02x%02x%02x%02x", cfg->prefix, rnd[0], rnd[1],
             rnd[2], rnd[3], rnd[4], rnd[5]);
    struct rconn_opts o = {
        .name = "cmd",
        .kind = RCONN_CMD,
        .url = &rp->url,
        .timeout_ms = cfg->redis_timeout_ms,
        .ping_ms = cfg->redis_ping_interval_ms,
        .backoff_max_ms = cfg->redis_backoff_max_ms,
        .arg = rp,
    };
    if ((rc = rconn_open(&rp->cmd, loop, &o)) < 0) {
        free(rp);
        return rc;
    }
    o.name = "sub";
    o.kind = RCONN_SUB;
    o.probe_channel = probe;
    o.on_state = rps_on_sub_state;
    o.on_message = rps_on_message;
    o.on_sub_ready = rps_on_sub_ready;
    if ((rc = rconn_open(&rp->sub, loop, &o)) < 0) {
        rconn_close(rp->cmd, NULL, NULL);
        free(rp);
        return rc;
    }
    b->priv = rp;
    log_info("event=broker_open type=redis-pubsub host=%s port=%d prefix=%s", rp->url.host,
             rp->url.port, cfg->prefix);
    return 0;
}

static int rps_ready(struct broker *b)
{
    struct rps *rp = b->priv;
    return rp != NULL && !rp->closing && rconn_is_up(rp->cmd) && rconn_is_up(rp->sub);
}

static int rps_attach(struct broker *b, struct session *s)
{
    struct rps *rp = b->priv;
    struct rps_sess *rs;
    size_t n = 1;
    char **names = NULL;
    size_t *lens = NULL;
    int rc = UV_ENOMEM;
    if (!rps_ready(b))
        return UV_ENOTCONN;
    for (uint16_t i = 0; i < s->ntopics; i++) {
        int dup = 0;
        for (uint16_t j = 0; j < i && !dup; j++)
            dup = strcmp(s->topics[i], s->topics[j]) == 0;
        n += !dup;
    }
    rs = calloc(1, sizeof(*rs) + n * sizeof(struct rsub));
    names = calloc(n, sizeof(*names));
    lens = calloc(n, sizeof(*lens));
    if (rs == NULL || names == NULL || lens == NULL)
        goto out;
    rs->rp = rp;
    rs->s = s;
    rs->nsubs = (uint16_t)n;
    n = 0;
    for (uint16_t i = 0; i <= s->ntopics; i++) {
        char buf[RPS_NAME_MAX];
        int l;
        if (i == 0) {
            l = snprintf(buf, sizeof(buf), "%s.recv.%s", rp->cfg->prefix, s->key);
        } else {
            int dup = 0;
            for (uint16_t j = 0; j + 1 < i && !dup; j++)
                dup = strcmp(s->topics[i - 1], s->topics[j]) == 0;
            if (dup)
                continue;
            l = snprintf(buf, sizeof(buf), "%s.topic.%s", rp->cfg->prefix, s->topics[i - 1]);
        }
        if ((names[n] = strdup(buf)) == NULL)
            goto out;
        lens[n] = (size_t)l;
        rs->subs[n].owner = rs;
        n++;
    }
    if ((rc = rconn_subscribe(rp->sub, rs->subs, (const char *const *)names, lens, n)) < 0)
        goto out;
    rs->next = rp->sessions;
    if (rp->sessions != NULL)
        rp->sessions->prev = rs;
    rp->sessions = rs;
    s->bpriv = rs;
    rs = NULL;
    rc = 0;
out:
    if (names != NULL)
        for (size_t i = 0; i < n; i++)
            free(names[i]);
    free(names);
    free(lens);
    free(rs);
    return rc;
}

static void rps_sess_detach(struct rps *rp, struct rps_sess *rs)
{
    rs->detached = 1;
    if (rs->s != NULL)
        rs->s->bpriv = NULL;
    rs->s = NULL;
    if (rs->prev != NULL)
        rs->prev->next = rs->next;
    else
        rp->sessions = rs->next;
    if (rs->next != NULL)
        rs->next->prev = rs->prev;
    rconn_unsubscribe(rp->sub, rs->subs, rs->nsubs);
    if (!rs->busy)
        free(rs);
}

static void rps_detach(struct broker *b, struct session *s)
{
    struct rps *rp = b->priv;
    struct rps_sess *rs = s->bpriv;
    if (rp == NULL || rs == NULL || rs->detached)
        return;
    rps_sess_detach(rp, rs);
}

static int rps_publish_to(struct rps *rp, const char *kind, const char *name, struct msg *m,
                          broker_push_cb cb, void *arg)
{
    char ch[RPS_NAME_MAX];
    int cl = snprintf(ch, sizeof(ch), "%s.%s.%s", rp->cfg->prefix, kind, name);
    const char *argv[] = {"PUBLISH", ch, m->data};
    size_t lens[] = {7, (size_t)cl, m->len};
    if (rp->closing)
        return UV_ECANCELED;
    return rconn_command_status(rp->cmd, cb, arg, 3, argv, lens);
}

struct rps_push_req {
    struct rps *rp;    /* borrowed: outlives its pending replies */
    broker_push_cb cb; /* borrowed */
    void *arg;         /* borrowed */
};

/* PUBLISH answers the number of nodes subscribed: 0 means nobody holds the session, so the
 * message is gone (at-most-once); it is counted in wsgate_messages_dropped_total. */
static void rps_on_push_reply(redisAsyncContext *ac, void *r, void *priv)
{
    struct rps_push_req *req = priv;
    redisReply *reply = r;
    int status = 0;
    (void)ac;
    if (reply == NULL) {
        status = rconn_last_error(req->rp->cmd);
    } else if (reply->type != REDIS_REPLY_INTEGER) {
        req->rp->b->errors++;
        status = UV_EIO;
    } else if (reply->integer == 0) {
        req->rp->b->dropped++;
    }
    broker_push_cb cb = req->cb;
    void *arg = req->arg;
    free(req);
    cb(arg, status);
}

static int rps_push(struct broker *b, const char *key, struct msg *m, broker_push_cb cb, void *arg)
{
    struct rps *rp = b->priv;
    struct rps_push_req *req;
    char ch[RPS_NAME_MAX];
    int cl = snprintf(ch, sizeof(ch), "%s.recv.%s", rp->cfg->prefix, key);
    const char *argv[] = {"PUBLISH", ch, m->data};
    size_t lens[] = {7, (size_t)cl, m->len};
    int rc;
    if (rp->closing)
        return UV_ECANCELED;
    if ((req = malloc(sizeof(*req))) == NULL)
        return UV_ENOMEM;
    req->rp = rp;
    req->cb = cb;
    req->arg = arg;
    if ((rc = rconn_command(rp->cmd, rps_on_push_reply, req, 3, argv, lens)) < 0)
        free(req);
    return rc;
}

static int rps_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb,
                       void *arg)
{
    return rps_publish_to(b->priv, "topic", topic, m, cb, arg);
}

static int rps_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb,
                        void *arg)
{
    return rps_publish_to(b->priv, "send", s->key, m, cb, arg);
}

static void rps_on_rconn_closed(void *arg)
{
    struct rps *rp = arg;
    if (--rp->close_pending > 0)
        return;
    struct broker *b = rp->b;
    broker_close_cb cb = rp->close_cb;
    b->priv = NULL;
    free(rp);
    if (cb != NULL)
        cb(b);
}

static void rps_close(struct broker *b, broker_close_cb cb)
{
    struct rps *rp = b->priv;
    if (rp == NULL || rp->closing)
        return;
    rp->closing = 1;
    rp->close_cb = cb;
    while (rp->sessions != NULL)
        rps_sess_detach(rp, rp->sessions);
    rp->close_pending = 2;
    rconn_close(rp->sub, rps_on_rconn_closed, rp);
    rconn_close(rp->cmd, rps_on_rconn_closed, rp);
}

const struct broker_ops broker_redis_pubsub_ops = {
    .name = "redis-pubsub",
    .open = rps_open,
    .attach = rps_attach,
    .detach = rps_detach,
    .push = rps_push,
    .publish = rps_publish,
    .upstream = rps_upstream,
    .ack = NULL,
    .ready = rps_ready,
    .close = rps_close,
};
