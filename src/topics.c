/* topics.c — the local topic registry (topics.h): a map of topics with subscribers on this
 * node, each with a doubly linked list of its subscribers, fan-out by session_deliver, and
 * the first/last hooks. Does NOT talk to any broker itself. Loop thread only. */
#include "topics.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "msg.h"
#include "session.h"
#include "util.h"

void topics_init(struct topics *ts, topics_first_cb on_first, topics_last_cb on_last, void *arg)
{
    map_init(&ts->map);
    ts->on_first = on_first;
    ts->on_last = on_last;
    ts->arg = arg;
}

void topics_free(struct topics *ts)
{
    map_free(&ts->map);
}

int topics_name_repeats(const struct session *s, uint16_t i)
{
    for (uint16_t j = 0; j < i; j++)
        if (strcmp(s->topics[i], s->topics[j]) == 0)
            return 1;
    return 0;
}

uint16_t topics_distinct(const struct session *s)
{
    uint16_t n = 0;
    for (uint16_t i = 0; i < s->ntopics; i++)
        n += !topics_name_repeats(s, i);
    return n;
}

struct topics_topic *topics_find(const struct topics *ts, const char *name, size_t len)
{
    struct map_node *n = map_get(&ts->map, name, len);
    return n != NULL ? map_entry(n, struct topics_topic, node) : NULL;
}

/* The topic for name, created (and announced to on_first) when new. NULL with *err set. */
static struct topics_topic *topics_get(struct topics *ts, const char *name, size_t len, int *err)
{
    struct topics_topic *t = topics_find(ts, name, len);
    int rc;
    if (t != NULL)
        return t;
    if ((t = calloc(1, sizeof(*t) + len + 1)) == NULL) {
        *err = UV_ENOMEM;
        return NULL;
    }
    memcpy(t->name, name, len);
    t->name[len] = '\0';
    t->node.key = t->name;
    t->node.key_len = (uint32_t)len;
    if ((rc = map_put(&ts->map, &t->node)) < 0) { /* only ENOMEM: looked up first */
        free(t);
        *err = rc;
        return NULL;
    }
    if (ts->on_first != NULL && (rc = ts->on_first(ts->arg, t)) < 0) {
        map_remove(&ts->map, &t->node);
        free(t);
        *err = rc;
        return NULL;
    }
    return t;
}

int topics_subscribe(struct topics *ts, struct session *s, struct topics_sub *subs)
{
    int rc = 0;
    uint16_t i;
    for (i = 0; i < s->ntopics; i++) {
        const char *name = s->topics[i];
        size_t len = strnlen(name, KEY_MAX_LEN + 1);
        struct topics_sub *sub = &subs[i];
        struct topics_topic *t;
        sub->t = NULL;
        sub->next = sub->prev = NULL;
        sub->s = s;
        if (len == 0 || len > KEY_MAX_LEN) {
            rc = UV_EINVAL;
            goto fail;
        }
        if (topics_name_repeats(s, i)) /* ?topics=a,a: subscribe once */
            continue;
        if ((t = topics_get(ts, name, len, &rc)) == NULL)
            goto fail;
        sub->t = t;
        sub->next = t->subs;
        if (t->subs != NULL)
            t->subs->prev = sub;
        t->subs = sub;
        t->nsubs++;
    }
    return 0;
fail:
    topics_unsubscribe(ts, subs, i + 1); /* subs[i] is set up (t NULL): the rest never was */
    return rc;
}

void topics_unsubscribe(struct topics *ts, struct topics_sub *subs, uint16_t n)
{
    for (uint16_t i = 0; i < n; i++) {
        struct topics_sub *sub = &subs[i];
        struct topics_topic *t = sub->t;
        if (t == NULL)
            continue;
        if (sub->prev != NULL)
            sub->prev->next = sub->next;
        else
            t->subs = sub->next;
        if (sub->next != NULL)
            sub->next->prev = sub->prev;
        sub->next = sub->prev = NULL;
        sub->t = NULL;
        if (--t->nsubs == 0) {
            if (ts->on_last != NULL)
                ts->on_last(ts->arg, t);
            map_remove(&ts->map, &t->node);
            free(t);
        }
    }
}

uint32_t topics_deliver(const struct topics_topic *t, struct msg *m)
{
    uint32_t n = 0;
    /* session_deliver never calls back into a broker, so the list cannot change under us */
    for (const struct topics_sub *sub = t->subs; sub != NULL; sub = sub->next)
        n += session_deliver(sub->s, 0, m) == 0;
    return n;
}

uint32_t topics_publish(const struct topics *ts, const char *name, size_t len, struct msg *m)
{
    const struct topics_topic *t = topics_find(ts, name, len);
    return t != NULL ? topics_deliver(t, m) : 0;
}
