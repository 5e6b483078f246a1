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
 * sessions; a channel shared by several local sockets is subscribed once.
 *
 * Shared with redis-list in redis_common.c: opening and closing the two links, p.kind.name
 * names, the topic subscriptions and their confirmation count, PUBLISH for broadcasts and
 * upstream. This file keeps what is pub/sub-only: the session channel p.recv.S, fan-out to
 * every ready socket, and the push whose PUBLISH reply counts drops. */
#include <stdlib.h>

#include "broker.h"
#include "config.h"
#include "log.h"
#include "msg.h"
#include "redis_common.h"
#include "session.h"

struct rps;

/* One attached socket: its rsubs (p.recv.S, then distinct topics). Freed at detach (no
 * reply callback ever refers to it). */
struct rps_sess {
    struct rcommon_sess base; /* first: s, list links, confirmation count (redis_common.h) */
    struct rps *rp;           /* borrowed: outlives rs */
    uint8_t busy;             /* inside session_attached: free deferred to the caller */
    struct rsub subs[];       /* embedded: registered with rp->base.sub from attach to detach */
};

struct rps {
    struct rcommon base; /* first: links, url, sessions, close (redis_common.h) */
};

/* Every channel here is a broadcast one: the session's own p.recv.S too (pub/sub fans
 * out to every socket of S). */
static void rps_on_message(struct rconn *rc, struct rconn_chan *ch, const char *data, size_t len,
                           void *arg)
{
    struct rps *rp = arg;
    (void)rc;
    rcommon_broadcast(&rp->base, ch, data, len);
}

static void rps_on_sess_ready(struct rcommon *r, struct rcommon_sess *cs)
{
    struct rps_sess *rs = (struct rps_sess *)cs;
    (void)r;
    if (cs->attached)
        return; /* resubscribed after a reconnect: nothing to do */
    cs->attached = 1;
    rs->busy = 1; /* session_attached may detach rs */
    session_attached(cs->s, 0);
    rs->busy = 0;
    if (cs->detached)
        free(rs);
}

static int rps_open(struct broker *b, uv_loop_t *loop, const struct config *cfg)
{
    struct rps *rp = calloc(1, sizeof(*rp));
    int rc;
    if (rp == NULL)
        return UV_ENOMEM;
    if ((rc = rcommon_open(&rp->base, b, loop, cfg, NULL, rps_on_message, rps_on_sess_ready)) < 0) {
        free(rp);
        return rc;
    }
    b->priv = rp;
    log_info("event=broker_open type=redis-pubsub host=%s port=%d prefix=%s", rp->base.url.host,
             rp->base.url.port, cfg->prefix);
    return 0;
}

static int rps_ready(struct broker *b)
{
    struct rps *rp = b->priv;
    return rp != NULL && rcommon_ready(&rp->base);
}

static int rps_attach(struct broker *b, struct session *s)
{
    struct rps *rp = b->priv;
    struct rps_sess *rs;
    char ch[RCOMMON_NAME_MAX];
    size_t cl;
    int rc;
    if (!rps_ready(b))
        return UV_ENOTCONN;
    rs = calloc(1, sizeof(*rs) + rcommon_sess_nchans(s) * sizeof(struct rsub));
    if (rs == NULL)
        return UV_ENOMEM;
    rs->rp = rp;
    cl = rcommon_name(&rp->base, "recv", s->key, ch, sizeof(ch));
    if ((rc = rcommon_sess_attach(&rp->base, &rs->base, rs->subs, s, ch, cl)) < 0)
        free(rs);
    return rc;
}

static void rps_sess_detach(struct rps *rp, struct rps_sess *rs)
{
    rcommon_sess_detach(&rp->base, &rs->base);
    if (!rs->busy)
        free(rs);
}

static void rps_detach(struct broker *b, struct session *s)
{
    struct rps *rp = b->priv;
    struct rps_sess *rs = s->bpriv;
    if (rp == NULL || rs == NULL || rs->base.detached)
        return;
    rps_sess_detach(rp, rs);
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
        status = rconn_last_error(req->rp->base.cmd);
    } else if (reply->type != REDIS_REPLY_INTEGER) {
        req->rp->base.b->errors++;
        status = UV_EIO;
    } else if (reply->integer == 0) {
        req->rp->base.b->dropped++;
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
    char ch[RCOMMON_NAME_MAX];
    size_t cl = rcommon_name(&rp->base, "recv", key, ch, sizeof(ch));
    const char *argv[] = {"PUBLISH", ch, m->data};
    size_t lens[] = {7, cl, m->len};
    int rc;
    if (rp->base.closing)
        return UV_ECANCELED;
    if ((req = malloc(sizeof(*req))) == NULL)
        return UV_ENOMEM;
    req->rp = rp;
    req->cb = cb;
    req->arg = arg;
    if ((rc = rconn_command(rp->base.cmd, rps_on_push_reply, req, 3, argv, lens)) < 0)
        free(req);
    return rc;
}

static int rps_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb,
                        void *arg)
{
    struct rps *rp = b->priv;
    return rcommon_publish_to(&rp->base, "send", s->key, m, cb, arg);
}

static void rps_close(struct broker *b, broker_close_cb cb)
{
    struct rps *rp = b->priv;
    if (rp == NULL || rp->base.closing)
        return;
    rp->base.closing = 1;
    rp->base.close_cb = cb;
    while (rp->base.sessions != NULL)
        rps_sess_detach(rp, (struct rps_sess *)rp->base.sessions);
    rcommon_close_links(&rp->base);
}

const struct broker_ops broker_redis_pubsub_ops = {
    .name = "redis-pubsub",
    .open = rps_open,
    .attach = rps_attach,
    .detach = rps_detach,
    .push = rps_push,
    .publish = rcommon_publish,
    .upstream = rps_upstream,
    .ack = NULL,
    .ready = rps_ready,
    .close = rps_close,
};
