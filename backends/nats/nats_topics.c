/* nats_topics.c — topics and core publishes: one core subscription per topic with
 * subscribers on this node (<prefix>.topic.<name>), made and dropped by the hooks of the
 * local topic registry (topics.h: p->topics holds the subscribers and fans out);
 * broker_ops.publish (to a topic) and broker_ops.upstream (a client frame to
 * <prefix>.send.<key>), both at-most-once core publishes.
 * Does NOT: store anything or retry; a broadcast dropped at the hand-over is lost
 * (counted). Thread: the loop. */
#include <string.h>

#include "msg.h"
#include "session.h"

#include "nats_priv.h"

int nats_topic_on_first(void *arg, struct topics_topic *t)
{
    struct nats_broker *p = arg;
    char subject[NATS_NAME_SUBJ];
    struct nats_topic *nt;
    int rc;
    if ((rc = nats_subject(p, "topic", t->name, subject)) < 0)
        return rc;
    if ((nt = calloc(1, sizeof(*nt))) == NULL)
        return UV_ENOMEM;
    nt->ref.t = t;
    if ((rc = nats_subscribe(p, subject, NULL, &nt->sub, &nt->ref)) < 0) {
        free(nt);
        return rc;
    }
    t->bdata = nt;
    return 0;
}

void nats_topic_on_last(void *arg, struct topics_topic *t)
{
    struct nats_topic *nt = t->bdata;
    nats_unsubscribe(arg, &nt->sub, &nt->ref);
    free(nt);
    t->bdata = NULL;
}

/* A message on <prefix>.topic.<name>: fan it out to this node's subscribers (one copy,
 * shared by all; a refusal closes that socket and is none of the publisher's business). */
void nats_on_topic_msg(struct nats_broker *p, struct topics_topic *t, natsMsg *nm)
{
    struct msg *m =
        msg_new_copy(natsMsg_GetData(nm), (size_t)natsMsg_GetDataLength(nm), p->cfg->frame_type);
    if (m == NULL) {
        p->b->errors++;
        return;
    }
    (void)topics_deliver(t, m);
    msg_unref(m);
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
    return later_push_done(&p->later, cb, arg, 0);
}

int nats_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb, void *arg)
{
    return nats_core_publish(b->priv, "topic", topic, m, cb, arg);
}

int nats_upstream(struct broker *b, struct session *s, struct msg *m, broker_push_cb cb, void *arg)
{
    return nats_core_publish(b->priv, "send", s->key, m, cb, arg);
}
