/* topics.h — the local topic registry of a backend: topic name -> the sessions on this node
 * subscribed to it (?topics=), with fan-out of one broadcast to all of them. A session's
 * repeated names (?topics=a,a) subscribe it once. Optional hooks tell the backend when a
 * topic gets its first local subscriber (subscribe it remotely: a NATS subject, a Redis
 * channel) and when it loses its last one (unsubscribe); the hook may keep its own state in
 * topic->bdata.
 *
 * Memory: one struct topics_topic per topic with subscribers here (one malloc, freed with
 * its last subscriber); one struct topics_sub per (session, topic), provided by the backend
 * (an array of s->ntopics in its per-session struct), so subscribing allocates nothing per
 * session. A broadcast is the same refcounted msg for every subscriber: no copy.
 *
 * Does NOT validate names beyond their length (the core checked them with key_valid),
 * know subjects or channels, or store broadcasts. Loop thread only. */
#ifndef WSGATE_TOPICS_H
#define WSGATE_TOPICS_H

#include <stddef.h>
#include <stdint.h>

#include "map.h"

struct msg;
struct session;
struct topics_topic;

/* t got its first local subscriber (before it is linked): subscribe it remotely. 0, or a
 * UV_E* that fails the topics_subscribe (the topic is then dropped, on_last is not called). */
typedef int (*topics_first_cb)(void *arg, struct topics_topic *t);
/* t lost its last local subscriber: unsubscribe it remotely; t is freed right after. */
typedef void (*topics_last_cb)(void *arg, struct topics_topic *t);

struct topics_sub {
    struct topics_sub *next; /* borrowed: next subscriber of t (newest first) */
    struct topics_sub *prev; /* borrowed: previous subscriber of t */
    struct topics_topic *t;  /* borrowed: NULL when not subscribed (a repeated name) */
    struct session *s;       /* borrowed: the subscriber */
};

struct topics_topic {
    struct map_node node;    /* in topics.map; node.key points at name[] */
    struct topics_sub *subs; /* borrowed: subscribers (each owned by its backend session) */
    uint32_t nsubs;          /* entries in subs */
    void *bdata;             /* owned by the backend: set in on_first, freed in on_last */
    char name[];             /* NUL-terminated copy of the topic name */
};

struct topics {
    struct map map;           /* name -> struct topics_topic (owned) */
    topics_first_cb on_first; /* may be NULL */
    topics_last_cb on_last;   /* may be NULL */
    void *arg;                /* borrowed: for the hooks */
};

/* An empty registry (allocates nothing). on_first/on_last may be NULL. */
void topics_init(struct topics *ts, topics_first_cb on_first, topics_last_cb on_last, void *arg);
/* Free the map's buckets. Every session must be unsubscribed first. */
void topics_free(struct topics *ts);

/* Subscribe s to each distinct name of s->topics, using subs[0..s->ntopics) (zeroed or
 * unsubscribed; owned by the caller, must stay in place until topics_unsubscribe). subs[i]
 * is for s->topics[i]; a repeated name leaves its subs[i].t NULL. 0, or UV_EINVAL (a name
 * of 0 or over KEY_MAX_LEN bytes), UV_ENOMEM, or on_first's error: then s is subscribed to
 * nothing. */
int topics_subscribe(struct topics *ts, struct session *s, struct topics_sub *subs);
/* Take subs[0..n) out of their topics (n = the s->ntopics given to topics_subscribe); a
 * topic left without subscribers goes (on_last first). Safe on never-subscribed entries. */
void topics_unsubscribe(struct topics *ts, struct topics_sub *subs, uint16_t n);

/* The topic name[0..len) when it has local subscribers, else NULL. */
struct topics_topic *topics_find(const struct topics *ts, const char *name, size_t len);
/* session_deliver(s, 0, m) to every subscriber of t (newest first). A refusal concerns only
 * that socket (it is being closed) and the rest still get m. Returns how many took it. */
uint32_t topics_deliver(const struct topics_topic *t, struct msg *m);
/* topics_find then topics_deliver; 0 when nobody here subscribes to name. */
uint32_t topics_publish(const struct topics *ts, const char *name, size_t len, struct msg *m);
/* Number of topics with local subscribers. */
static inline size_t topics_count(const struct topics *ts)
{
    return map_count(&ts->map);
}

/* 1 when s->topics[i] repeats a name at a lower index (subscribe it once). */
int topics_name_repeats(const struct session *s, uint16_t i);
/* Number of distinct names in s->topics. */
uint16_t topics_distinct(const struct session *s);

#endif
