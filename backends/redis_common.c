/* redis_common.c — the parts the redis-list and redis-pubsub backends share (see
 * redis_common.h): opening and closing the node's command + pub/sub link pair, p.kind.name
 * naming and PUBLISH, and the attached-session list with its channel subscriptions and
 * confirmation count. Does NOT deliver messages, keep queues or free session structs: the
 * backends do. Topics here are channels of the pub/sub link's registry (redis_conn.c), which
 * already subscribes a channel once per node and lists its local users, so topics.h's
 * registry is not used; only its de-duplication of a session's repeated names is.
 * Loop thread only. */
#include "redis_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "util.h"
#include "msg.h"
#include "session.h"
#include "topics.h"

/* --- links --- */

/* Counts one more confirmed channel of the session; the backend hears of it once all are. */
static void rcommon_on_sub_ready(struct rconn *rc, struct rsub *sub, void *arg)
{
    struct rcommon *r = arg;
    struct rcommon_sess *cs = sub->owner;
    (void)rc;
    if (cs->detached || ++cs->nready < cs->nsubs)
        return;
    r->on_sess_ready(r, cs);
}

static void rcommon_on_sub_state(struct rconn *rc, int up, void *arg)
{
    struct rcommon *r = arg;
    (void)rc;
    if (up)
        return; /* rsubs become ready one by one (rcommon_on_sub_ready) */
    for (struct rcommon_sess *cs = r->sessions; cs; cs = cs->next)
        cs->nready = 0;
}

int rcommon_open(struct rcommon *r, struct broker *b, uv_loop_t *loop, const struct config *cfg,
                 rconn_state_cb on_cmd_state, rconn_message_cb on_message,
                 rcommon_sess_ready_cb on_sess_ready)
{
    unsigned char rnd[6];
    char probe[128];
    int rc;
    r->b = b;
    r->cfg = cfg;
    r->on_sess_ready = on_sess_ready;
    if ((rc = rconn_url_parse(cfg->redis_url, &r->url)) < 0) {
        log_error("event=redis_bad_url");
        return rc;
    }
    /* A channel of our own per node: the pub/sub link's liveness probe (redis_conn.h). */
    if (uv_random(NULL, NULL, rnd, sizeof(rnd), 0, NULL) < 0)
        memset(rnd, 0, sizeof(rnd));
    snprintf(probe, sizeof(probe), "%s.probe.%02x%02x%02x%02x%02x%02x", cfg->prefix, rnd[0], rnd[1],
             rnd[2], rnd[3], rnd[4], rnd[5]);
    struct rconn_opts o = {
        .name = "cmd",
        .kind = RCONN_CMD,
        .url = &r->url,
        .timeout_ms = cfg->redis_timeout_ms,
        .ping_ms = cfg->redis_ping_interval_ms,
        .backoff_max_ms = cfg->redis_backoff_max_ms,
        .on_state = on_cmd_state,
        .arg = r,
    };
    if ((rc = rconn_open(&r->cmd, loop, &o)) < 0)
        return rc;
    o.name = "sub";
    o.kind = RCONN_SUB;
    o.probe_channel = probe;
    o.on_state = rcommon_on_sub_state;
    o.on_message = on_message;
    o.on_sub_ready = rcommon_on_sub_ready;
    if ((rc = rconn_open(&r->sub, loop, &o)) < 0) {
        /* cmd is not up yet, and a closing rconn calls no on_state: nothing refers to r */
        rconn_close(r->cmd, NULL, NULL);
        r->cmd = NULL;
        return rc;
    }
    return 0;
}

int rcommon_ready(const struct rcommon *r)
{
    return !r->closing && rconn_is_up(r->cmd) && rconn_is_up(r->sub);
}

/* --- names, PUBLISH --- */

size_t rcommon_name(const struct rcommon *r, const char *kind, const char *name, char *out,
                    size_t cap)
{
    /* "<prefix>.<kind>.<name>", truncated like snprintf (on every push: no snprintf) */
    size_t at = str_put(out, cap, 0, r->cfg->prefix, strlen(r->cfg->prefix));
    at = str_put(out, cap, at, ".", 1);
    at = str_put(out, cap, at, kind, strlen(kind));
    at = str_put(out, cap, at, ".", 1);
    return str_put(out, cap, at, name, strlen(name));
}

int rcommon_publish_to(struct rcommon *r, const char *kind, const char *name, struct msg *m,
                       broker_push_cb cb, void *arg)
{
    char ch[RCOMMON_NAME_MAX];
    size_t cl = rcommon_name(r, kind, name, ch, sizeof(ch));
    const char *argv[] = {"PUBLISH", ch, m->data};
    size_t lens[] = {7, cl, m->len};
    if (r->closing)
        return UV_ECANCELED;
    return rconn_command_status(r->cmd, cb, arg, 3, argv, lens);
}

int rcommon_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb,
                    void *arg)
{
    return rcommon_publish_to(b->priv, "topic", topic, m, cb, arg);
}

void rcommon_broadcast(struct rcommon *r, struct rconn_chan *ch, const char *data, size_t len)
{
    struct msg *m = NULL;
    for (struct rsub *u = ch->ready; u; u = u->next) {
        struct rcommon_sess *cs = u->owner;
        if (cs->detached || !cs->attached)
            continue;
        if (m == NULL && (m = msg_new_copy(data, len, r->cfg->frame_type)) == NULL)
            return;
        (void)session_deliver(cs->s, 0, m); /* at-most-once: a refusal drops it */
    }
    msg_unref(m);
}

/* --- sessions --- */

/* One rsub per channel per session: a repeated topic name (?topics=a,a) gets none
 * (topics_name_repeats, the de-duplication every backend shares). */
size_t rcommon_sess_nchans(const struct session *s)
{
    return 1 + (size_t)topics_distinct(s);
}

int rcommon_sess_attach(struct rcommon *r, struct rcommon_sess *cs, struct rsub *subs,
                        struct session *s, const char *first, size_t first_len)
{
    size_t n = rcommon_sess_nchans(s), k = 0, chars = 0, used = 0;
    const char **names;
    size_t *lens;
    char *text;
    int rc;
    for (uint16_t i = 0; i < s->ntopics; i++)
        chars += strlen(r->cfg->prefix) + sizeof(".topic.") + strlen(s->topics[i]);
    /* one block: n name pointers, n lengths, then the topic channel names */
    names = malloc(n * (sizeof(*names) + sizeof(*lens)) + chars);
    if (names == NULL)
        return UV_ENOMEM;
    lens = (size_t *)(void *)(names + n);
    text = (char *)(lens + n);
    names[0] = first;
    lens[0] = first_len;
    subs[0].owner = cs;
    subs[0].tag = RCOMMON_TAG_SESS;
    for (uint16_t i = 0; i < s->ntopics; i++) {
        if (topics_name_repeats(s, i))
            continue;
        k++;
        names[k] = text + used;
        lens[k] = rcommon_name(r, "topic", s->topics[i], text + used, chars - used);
        used += lens[k] + 1;
        subs[k].owner = cs;
        subs[k].tag = RCOMMON_TAG_TOPIC;
    }
    cs->s = s;
    cs->subs = subs;
    cs->nsubs = (uint16_t)n;
    rc = rconn_subscribe(r->sub, subs, names, lens, n);
    free(names);
    if (rc < 0)
        return rc;
    cs->next = r->sessions;
    if (r->sessions != NULL)
        r->sessions->prev = cs;
    r->sessions = cs;
    s->bpriv = cs;
    return 0;
}

void rcommon_sess_detach(struct rcommon *r, struct rcommon_sess *cs)
{
    cs->detached = 1;
    if (cs->s != NULL)
        cs->s->bpriv = NULL;
    cs->s = NULL;
    if (cs->prev != NULL)
        cs->prev->next = cs->next;
    else
        r->sessions = cs->next;
    if (cs->next != NULL)
        cs->next->prev = cs->prev;
    cs->next = cs->prev = NULL;
    rconn_unsubscribe(r->sub, cs->subs, cs->nsubs);
}

/* --- close --- */

static void rcommon_close_step(struct rcommon *r)
{
    if (--r->close_pending > 0)
        return;
    struct broker *b = r->b;
    broker_close_cb cb = r->close_cb;
    b->priv = NULL;
    free(r); /* the backend struct: r is its first member */
    if (cb != NULL)
        cb(b);
}

static void rcommon_on_handle_closed(uv_handle_t *h)
{
    rcommon_close_step(h->data);
}

static void rcommon_on_rconn_closed(void *arg)
{
    rcommon_close_step(arg);
}

void rcommon_close_handle(struct rcommon *r, uv_handle_t *h)
{
    r->close_pending++;
    uv_close(h, rcommon_on_handle_closed);
}

void rcommon_close_links(struct rcommon *r)
{
    r->close_pending += 2;
    rconn_close(r->sub, rcommon_on_rconn_closed, r);
    rconn_close(r->cmd, rcommon_on_rconn_closed, r);
}
