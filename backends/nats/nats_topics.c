/* nats_topics.c — topics and core publishes: one core subscription per topic with
 * subscribers on this node (<prefix>.topic.<name>), fanned out to them; broker_ops.publish
 * (to a topic) and broker_ops.upstream (a client frame to <prefix>.send.<key>), both
 * at-most-once core publishes.
 * Does NOT: store anything or retry; a broadcast dropped at the hand-over is lost
 * (counted). Thread: the loop. */
#include <string.h>

#include "msg.h"
#include "session.h"

#include "nats_priv.h"

void nats_topic_unlink(struct nats_broker *p, struct nats_tsub *ts)
{
    struct nats_topic *t = ts->t;
    if (t == NULL)
        return;
    if (ts->prev != NULL)
        ts->prev->next = ts->next;
    else
        t->subs = ts->next;
    if (ts->next != NULL)
        ts->next->prev = ts->prev;
    ts->t = NULL;
    if (t->subs == NULL) {
        nats_unsubscribe(p, &t->sub, &t->ref);
        map_remove(&p->topics, &t->node);
        free(t);
    }
}

/* A message on <prefix>.topic.<name>: fan it out to this node's subscribers. */
void nats_on_topic_msg(struct nats_broker *p, struct nats_topic *t, natsMsg *nm)
{
    struct msg *m =
        msg_new_copy(natsMsg_GetData(nm), (size_t)natsMsg_GetDataLength(nm), p->cfg->frame_type);
    if (m == NULL) {
        p->b->errors++;
        return;
    }
    /* session_deliver never calls back into the broker, so the list cannot change under
     * us; a refusal closes that socket and is none of the publisher's business. */
    for (struct nats_tsub *ts = t->subs; ts != NULL; ts = ts->next)
        (void)session_deliver(ts->ns->s, 0, m);
    msg_unref(m);
}

/* Subscribe ns to its topics (one core subscription per topic on this node). */
int nats_sess_topics(struct nats_broker *p, struct nats_sess *ns)
{
    struct session *s = ns->s;
    for (uint16_t i = 0; i < s->ntopics; i++) {
        const char *name = s->topics[i];
        char tsubject[NATS_NAME_SUBJ];
        struct map_node *n;
        struct nats_topic *t;
        int dup = 0, rc;
        if ((rc = nats_subject(p, "topic", name, tsubject)) < 0)
            return rc;
        for (uint16_t j = 0; j < i && !dup; j++) /* ?topics=a,a: subscribe once */
            dup = strcmp(s->topics[j], name) == 0;
        if (dup)
            continue;
        if ((n = map_get(&p->topics, name, strlen(name))) != NULL) {
            t = map_entry(n, struct nats_topic, node);
        } else {
            size_t len = strlen(name);
            if ((t = calloc(1, sizeof(*t) + len + 1)) == NULL)
                return UV_ENOMEM;
            memcpy(t->name, name, len + 1);
            t->node.key = t->name;
            t->node.key_len = (uint32_t)len;
            t->ref.t = t;
            if ((rc = nats_subscribe(p, tsubject, NULL, &t->sub, &t->ref)) < 0 ||
                (rc = map_put(&p->topics, &t->node)) < 0) {
                nats_unsubscribe(p, &t->sub, &t->ref);
                free(t);
                return rc;
            }
        }
        ns->tsubs[i].t = t;
        ns->tsubs[i].ns = ns;
        ns->tsubs[i].prev = NULL;
        ns->tsubs[i].next = t->subs;
        if (t->subs != NULL)
            t->subs->prev = &ns->tsubs[i];
        t->subs = &ns->tsubs[i];
    }
    return 0;
}

/* A core publish (no stream, at-most-once): cb(0) once it is handed to nats.c. */
static int nats_core_publish(struct nats_broker *p, const char *kind, const char *name,
                             struct msg *m, broker_push_cb cb, void *arg)
{
    char subject[NATS_NAME_SUBJ];
    natsStatus s;
    int rc;
    if (p == NULL || nats_closing(p))
        return UV_ECANCELED;
    if (!nats_conn_up(p))
        return UV_ENOTCONN;
    if ((rc = nats_subject(p, kind, name, subject)) < 0)
        return rc;
    if (m->len > INT32_MAX)
        return UV_E2BIG;
    s = natsConnection_Publish(p->nc, subject, m->data, (int)m->len);
    if (s != NATS_OK) {
        if (s != NATS_MAX_PAYLOAD)
            p->b->errors++;
        nats_conn_check(p, s);
        return nats_err(s);
    }
    return nats_done_add(p, cb, arg, 0);
}

int nats_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb, void *arg)
{
    return nats_core_publish(b->priv, "topic", topic, m, cb, arg);
}

int nats_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb, void *arg)
{
    return nats_core_publish(b->priv, "send", s->key, m, cb, arg);
}
