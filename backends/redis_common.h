/* redis_common.h — what the redis-list and redis-pubsub backends share above one connection
 * (redis_conn.h): the node's two links (one command, one pub/sub) opened from the config
 * with a random liveness probe channel, names of the form p.kind.name, PUBLISH for
 * broadcasts (p.topic.T) and other channels, the list of attached sessions with their
 * channel subscriptions (the backend's own channel for the session, then p.topic.T per
 * distinct topic) counted until all are confirmed, and the close of both links and of the
 * backend's own handles, which ends by freeing the backend struct.
 *
 * Does NOT decide delivery: what a message on a channel means, queues, acks, what happens
 * once a session's subscriptions are confirmed, and when a backend session struct is freed
 * all stay in the backends. Loop thread only.
 *
 * Layout contract: struct rcommon is the FIRST member of the backend struct that b->priv
 * points to, and struct rcommon_sess is the FIRST member of the backend's per-session struct
 * (whose trailing rsub array it borrows). So b->priv, the rconn callbacks' arg and rsub.owner
 * point to both the common and the backend struct, and rcommon frees the backend struct
 * (allocated with malloc/calloc) at the end of its close. */
#ifndef WSGATE_REDIS_COMMON_H
#define WSGATE_REDIS_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "broker.h"
#include "redis_conn.h"

struct config;
struct msg;
struct session;
struct rcommon;

#define RCOMMON_NAME_MAX 320 /* any name either backend builds: prefix(64) + kind + key(128) */

/* rsub.tag of a session's channels, set by rcommon_sess_attach. */
enum rcommon_tag {
    RCOMMON_TAG_SESS = 1, /* subs[0]: the backend's channel for the session itself */
    RCOMMON_TAG_TOPIC,    /* subs[1..]: p.topic.T */
};

/* The common head of a backend's per-session struct (its first member). */
struct rcommon_sess {
    struct rcommon_sess *next; /* r->sessions (attached, not detached) */
    struct rcommon_sess *prev; /* idem */
    struct session *s;         /* borrowed: from attach until detach, then NULL */
    struct rsub *subs;         /* borrowed: the embedding struct's rsub array (nsubs) */
    uint16_t nsubs;            /* subs[0] session channel, then distinct topic channels */
    uint16_t nready;           /* subs confirmed on the current pub/sub connection */
    uint8_t attached;          /* session_attached(s, 0) was called (set by the backend) */
    uint8_t detached;          /* detach ran: s is gone */
};

/* All of cs's channels are confirmed (again after every pub/sub reconnect). May detach cs. */
typedef void (*rcommon_sess_ready_cb)(struct rcommon *r, struct rcommon_sess *cs);

/* The common head of a backend struct (its first member). */
struct rcommon {
    struct broker *b;                    /* borrowed: owns the backend struct through b->priv */
    const struct config *cfg;            /* borrowed: outlives the broker */
    struct rconn_url url;                /* parsed [redis] url */
    struct rconn *cmd;                   /* owned: command link, closed by rcommon_close_links */
    struct rconn *sub;                   /* owned: pub/sub link, idem */
    struct rcommon_sess *sessions;       /* attached sessions (nodes owned by the backend) */
    rcommon_sess_ready_cb on_sess_ready; /* the backend's */
    uint8_t closing;                     /* the backend's close started (set by the backend) */
    unsigned close_pending;              /* links and backend handles still closing */
    broker_close_cb close_cb;            /* set by the backend's close; may be NULL */
};

/* Fill r (b, cfg, url), then open the command link (on_cmd_state may be NULL) and the
 * pub/sub link (on_message; rcommon counts confirmations and calls on_sess_ready). Every
 * callback gets r as its arg. 0, or UV_EINVAL (bad [redis] url, logged) / UV_ENOMEM with
 * nothing left open that refers to r: the caller frees its struct. */
int rcommon_open(struct rcommon *r, struct broker *b, uv_loop_t *loop, const struct config *cfg,
                 rconn_state_cb on_cmd_state, rconn_message_cb on_message,
                 rcommon_sess_ready_cb on_sess_ready);
/* 1 when not closing and both links are up. */
int rcommon_ready(const struct rcommon *r);

/* "p.kind.name" (p = [broker] prefix) into out (cap bytes); returns strlen(out). */
size_t rcommon_name(const struct rcommon *r, const char *kind, const char *name, char *out,
                    size_t cap);
/* PUBLISH m on channel p.kind.name. m: borrowed for the call. 0 => cb(arg, status) runs
 * exactly once, later (status as rconn_status_cb); UV_ECANCELED when closing, UV_ENOTCONN,
 * UV_ENOMEM => cb never runs. */
int rcommon_publish_to(struct rcommon *r, const char *kind, const char *name, struct msg *m,
                       broker_push_cb cb, void *arg);
/* The broker_ops.publish of both backends: rcommon_publish_to(b->priv, "topic", topic, ...). */
int rcommon_publish(struct broker *b, const char *topic, struct msg *m, broker_push_cb cb,
                    void *arg);

/* A message on a topic channel ch (rconn_message_cb): one msg (a copy of data, made only
 * when some user is attached) delivered with id 0 to every ready user of ch whose session
 * is attached and not detached; a refusal concerns only that socket. Not stored, no ack. */
void rcommon_broadcast(struct rcommon *r, struct rconn_chan *ch, const char *data, size_t len);

/* Channels a session s needs: 1 + its distinct topics. Size the rsub array with it. */
size_t rcommon_sess_nchans(const struct session *s);
/* Subscribe on r->sub: first (first_len bytes; the backend's channel for s itself), then
 * p.topic.T for each distinct topic of s, into subs[0..rcommon_sess_nchans(s)) with owner cs
 * and RCOMMON_TAG_* tags; then link cs into r->sessions and set s->bpriv = cs. cs must be
 * zeroed. 0, or UV_ENOMEM with nothing registered and cs not linked (the caller frees it). */
int rcommon_sess_attach(struct rcommon *r, struct rcommon_sess *cs, struct rsub *subs,
                        struct session *s, const char *first, size_t first_len);
/* Mark cs detached, forget s (s->bpriv = NULL), unlink cs and unsubscribe its channels.
 * Does not free cs: the backend does, when nothing of its own refers to it any more. */
void rcommon_sess_detach(struct rcommon *r, struct rcommon_sess *cs);

/* Close one of the backend's own handles (h->data must be r) as part of the close. */
void rcommon_close_handle(struct rcommon *r, uv_handle_t *h);
/* Close both links (after the backend's own handles, if any). When they and every handle
 * given to rcommon_close_handle are closed: b->priv = NULL, the backend struct (r) is freed,
 * then r->close_cb(b) runs if set. */
void rcommon_close_links(struct rcommon *r);

#endif
