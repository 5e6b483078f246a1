/* redis_list.h — what the files of the redis-list backend share (private: not for other
 * backends): its broker and socket structs and the calls between its four files:
 *   redis_list.c        the broker_ops table: open, attach, detach, settle (release),
 *                       push (plain and direct), upstream, ack, close;
 *   redis_list_lua.c    the Lua scripts and EVALSHA with reload-and-retry on NOSCRIPT;
 *   redis_list_node.c   the command link's setup: node incarnation, lease, heartbeat,
 *                       keyspace notification config, in-flight list registration;
 *   redis_list_fetch.c  delivery: wake-ups, fetches, held messages, the service queue,
 *                       broadcasts, direct-push replies, lazy acks.
 * The per-socket window and pull state are qdeliver.h's (struct qd_sock, struct qd_pull).
 * Loop thread only. */
#ifndef WSGATE_REDIS_LIST_H
#define WSGATE_REDIS_LIST_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "broker.h"
#include "qdeliver.h"
#include "redis_common.h"

#define RLIST_BATCH_MAX 1000  /* Lua unpack() limit is ~8000; keep replies small */
#define RLIST_HSET_CHUNK 256  /* sessions per HSET when re-registering */
#define RLIST_ACK_DELAY_MS 20 /* acks not carried by a fetch are applied within this */
#define RLIST_ACK_CHUNK 64    /* in-flight lists per ack script call */

enum {
    RLIST_LUA_PUSH = 0,
    RLIST_LUA_PUSHD,
    RLIST_LUA_FLOW,
    RLIST_LUA_RELEASE,
    RLIST_LUA_NODE,
    RLIST_LUA_ACKS,
    RLIST_LUA_N
};

/* The scripts' source (redis_list_lua.c). */
extern const char *const rlist_lua[RLIST_LUA_N];

struct rlist;
struct rlist_eval;

/* One attached socket. Allocated by attach with its rsubs and queue name in one block;
 * freed when it is detached and no reply callback or service-queue entry refers to it. */
struct rlist_sess {
    struct rcommon_sess base;   /* first: s, list links, attach state (redis_common.h) */
    struct rlist *rl;           /* borrowed: outlives rs */
    struct rlist_sess *snext;   /* rl service queue, while queued */
    struct rlist_sess *anext;   /* rl ack list, while in_acks */
    char *qkey;                 /* points into this allocation: "p.recv.S" */
    uint32_t qkey_len;          /* strlen(qkey) */
    uint64_t sid;               /* s->id: names the in-flight list */
    struct qd_sock sock;        /* window: unacked (this epoch), promised (fetch in flight,
                                 * direct pushes unanswered, held), refused */
    struct qd_pull pull;        /* the queue may hold more; the fetch in flight (asked) */
    uint32_t acks;              /* acked, not yet dropped from the in-flight list */
    uint32_t refs;              /* outstanding replies + service-queue membership */
    uint64_t fetch_epoch;       /* rl->epoch when the outstanding fetch was sent */
    uint8_t queued;             /* in the service queue */
    uint8_t in_acks;            /* in the ack list (holds a ref) */
    uint8_t settling;           /* settle called: s is leaving; no more fetches */
    uint8_t released;           /* the release went out for settle: detach sends none */
    uint8_t settle_due;         /* nothing to wait for (link down): call settle_cb next pass */
    broker_settle_cb settle_cb; /* borrowed: settle's callback until it runs; detach drops it */
    struct msg **held;          /* owned: fetched (so in the in-flight list) but not yet given
                                 * to the socket, whose unsent bytes were at max_send_buffer;
                                 * FIFO from held_off, taken as writes make room */
    uint32_t nheld;             /* messages in held (counted in sock.promised) */
    uint32_t held_off;          /* index of the oldest */
    uint32_t held_cap;          /* slots in held */
    uint32_t avg_len;           /* running mean of this socket's message sizes (fetch sizing) */
    struct rsub subs[];         /* embedded: subs[0] keyspace channel, then topic channels;
                                 * registered with rl->base.sub from attach to detach */
};

struct rlist {
    struct rcommon base;         /* first: links, url, sessions, close (redis_common.h) */
    uv_check_t check;            /* embedded: drains the service queue after each poll */
    uv_idle_t idle;              /* embedded: keeps the next poll from blocking while queued */
    uv_timer_t ack_timer;        /* embedded: applies lazy acks in one pipelined batch */
    struct rlist_sess *ack_head; /* sessions with acks not yet applied (each holds a ref) */
    uv_timer_t hb;               /* embedded: lease heartbeat + sweep */
    struct rlist_sess *svc_head; /* service queue (each entry holds a ref) */
    struct rlist_sess *svc_tail; /* idem */
    char sha[RLIST_LUA_N][41];   /* SHA1 hex of each script */
    char nid[17];                /* current incarnation id (hex), registered when `registered` */
    char old_nid[17];            /* incarnation to reclaim at the next registration, or "" */
    uint64_t epoch;              /* +1 whenever the command link drops */
    uint64_t next_id;            /* last msg_id given out */
    uint64_t first_valid_id;     /* acks below this belong to a dead epoch: ignored */
    uint64_t lease_ms;           /* node lease length */
    uint32_t batch;              /* messages per fetch at most */
    uint32_t window;             /* [websocket] max_inflight, at least 1 */
    int setup_pending;           /* setup replies still awaited after the link came up */
    uint8_t registered;          /* setup done on the current command link */
    /* EVALSHA bookkeeping (rlist_eval): scripts lost, reloaded, commands retried once */
    struct rlist_eval *retry_head; /* answered NOSCRIPT: sent again first after the reload */
    struct rlist_eval *retry_tail; /* idem */
    struct rlist_eval *hold_head;  /* issued while holding: sent after the retries */
    struct rlist_eval *hold_tail;  /* idem */
    uint32_t evals_out;            /* EVALSHAs sent on the current link, not answered yet */
    int loads_pending;             /* SCRIPT LOAD replies still awaited */
    uint8_t loads_failed;          /* one of them was not the expected SHA1 */
    uint8_t reloading;             /* the loads in progress follow a loss (log, kick after) */
    uint8_t holding;               /* scripts lost: new EVALSHAs wait for the reload */
    uint8_t scripts_bad;           /* the last load failed: not ready until one succeeds */
};

/* A direct push waiting for its reply (redis_list.c sends it, redis_list_fetch.c answers). */
struct rlist_push_req {
    struct rlist_sess *rs; /* ref: the socket the message may go to */
    struct msg *m;         /* ref: the message */
    broker_push_cb cb;     /* borrowed: the core's */
    void *arg;             /* borrowed: for cb */
};

/* --- redis_list.c --- */

/* "p.inflight.N.I" for socket sid of the current incarnation into out; its length. */
size_t rlist_inflight_key(const struct rlist *rl, uint64_t sid, char *out, size_t cap);
/* Drop one reference; frees rs when it was the last and rs is detached. */
void rlist_sess_unref(struct rlist_sess *rs);

/* --- redis_list_lua.c --- */

/* Lower-case hex of in[0..n) into out (2n + 1 bytes). */
void rlist_hex(const unsigned char *in, size_t n, char *out);
/* Fill rl->sha with the SHA1 of each script. */
void rlist_scripts_sha(struct rlist *rl);
/* SCRIPT LOAD every script; the replies are counted in rl->loads_pending. */
void rlist_scripts_load(struct rlist *rl);
/* EVALSHA argv[0..argc) (argv[0] = "EVALSHA"). argv/lens: borrowed for the call (copied;
 * an argument pointing at m->data is kept by a ref on m instead). Exactly one of fn
 * (reply, NULL when the link was lost; fn may be NULL) and scb (status) is used.
 * 0 => the callback runs exactly once, later; UV_ENOTCONN / UV_ENOMEM => never. */
int rlist_eval(struct rlist *rl, redisCallbackFn *fn, rconn_status_cb scb, void *priv,
               struct msg *m, int argc, const char **argv, const size_t *lens);
/* Fail every EVALSHA waiting for a reload (link lost or closing: they were never sent). */
void rlist_eval_fail_waiting(struct rlist *rl);
/* Load the scripts again, then send the failed and the held EVALSHAs in order. */
void rlist_reload(struct rlist *rl);

/* --- redis_list_node.c --- */

/* The command link came up (register a new incarnation) or went down (rconn_state_cb). */
void rlist_on_cmd_state(struct rconn *rc, int up, void *arg);
/* Send the node script: register (mode "reg") or heartbeat ("beat"). text: EVAL the source
 * (the deregistration at close, which has no time for a reload). */
int rlist_node_cmd(struct rlist *rl, const char *nid, const char *old, const char *mode,
                   redisCallbackFn *fn, int text);

/* --- redis_list_fetch.c --- */

/* Drop rs's held messages (they are in its in-flight list: a release or reclaim returns
 * them). */
void rlist_held_clear(struct rlist_sess *rs);
/* Give held messages to the socket while its send buffer has room. */
void rlist_held_drain(struct rlist_sess *rs);
/* Put rs in the service queue (one fetch, or its settle callback, at the next pass). */
void rlist_service_schedule(struct rlist_sess *rs);
/* Every session may have messages waiting (after a registration or a reload). */
void rlist_kick_all(struct rlist *rl);
/* Run settle's callback (once; not after detach, which cancels it). */
void rlist_settle_done(struct rlist_sess *rs);
/* The pub/sub link's message callback (rconn_message_cb): wake-ups and broadcasts. */
void rlist_on_message(struct rconn *rc, struct rconn_chan *ch, const char *data, size_t len,
                      void *arg);
/* All of a session's channels are confirmed: the 101, then a fetch. */
void rlist_on_sess_ready(struct rcommon *r, struct rcommon_sess *cs);
/* A socket of the queue qkey here that can take one more message of len bytes now, or NULL. */
struct rlist_sess *rlist_direct_target(struct rlist *rl, const char *qkey, size_t qlen, size_t len);
/* The reply to a direct push (priv: its struct rlist_push_req). */
void rlist_on_pushd(redisAsyncContext *ac, void *r, void *priv);
/* One frame given to rs was written: count the ack, refill, apply it lazily. */
void rlist_sess_acked(struct rlist_sess *rs);

#endif
