/* nats_acker.c — making our acks count on NATS_ACKER, the stream's one consumer: on
 * servers that ignore an ack ahead of the consumer's delivery (nats-server 2.11+, or
 * [nats] consumer_pull = always) a pull request is kept outstanding so the consumer
 * hands out (headers only, dropped here) every message before its ack comes; and settle
 * (broker_ops.settle): a leaving session's last ack sent again with a reply subject,
 * whose reply confirms every ack before it.
 * Does NOT: send the per-message acks (nats_keys.c, nats_pend_ack) or create the consumer
 * (nats_setup.c). Thread: the loop. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "session.h"

#include "nats_priv.h"

static void nats_on_pull_timer(uv_timer_t *h);

/* Keep a pull request outstanding on NATS_ACKER, so that the consumer has handed out
 * (pending) every stored message by the time we ack it: nats-server 2.11 and later ignore
 * an ack above the consumer's delivery pointer (2.9 and 2.10 remove the message anyway).
 * The copies are headers only and dropped on arrival: a small, constant cost per message
 * whatever the number of sessions. The next request goes out while a quarter of the
 * last one is left, so the consumer never waits for us. */
void nats_acker_pull(struct nats_broker *p)
{
    char body[96], reply[96];
    natsStatus s;
    int n;
    /* check.busy before acker.ahead: a running stream check may be writing it */
    if (!nats_conn_ready(p) || nats_closing(p) || p->acker.sub == NULL || p->check.busy ||
        p->acker.ahead != NATS_ACKS_AHEAD_NO || p->acker.pull_out > NATS_PULL_BATCH / 4)
        return;
    n = snprintf(body, sizeof(body), "{\"batch\":%u,\"expires\":%" PRIu64 "}", NATS_PULL_BATCH,
                 (uint64_t)NATS_PULL_EXPIRES_MS * 1000000);
    snprintf(reply, sizeof(reply), "%s.a", p->subj.inbox);
    if ((s = natsConnection_PublishRequest(p->nc, p->subj.pull, reply, body, n)) != NATS_OK) {
        p->b->errors++;
        nats_conn_check(p, s);
        uv_timer_start(&p->acker.timer, nats_on_pull_timer, NATS_RETRY_MS, 0);
        return;
    }
    p->acker.pull_out += NATS_PULL_BATCH;
    uv_timer_start(&p->acker.timer, nats_on_pull_timer, NATS_PULL_EXPIRES_MS + NATS_PULL_MARGIN_MS,
                   0);
}

static void nats_on_pull_timer(uv_timer_t *h)
{
    struct nats_broker *p = h->data;
    p->acker.pull_out = 0; /* expired without a 408, or the last send failed */
    nats_acker_pull(p);
}

/* A message on <inbox>.a: a copy handed out by NATS_ACKER (dropped), or a status about a
 * pull request (408 expired, 409 consumer deleted or limits, 100 heartbeat). */
void nats_on_acker_msg(struct nats_broker *p, natsMsg *nm)
{
    const char *reply = natsMsg_GetReply(nm);
    char code[8], desc[96];
    if (reply != NULL && strncmp(reply, "$JS.ACK.", 8) == 0) {
        if (p->acker.pull_out > 0)
            p->acker.pull_out--;
        nats_acker_pull(p);
        return;
    }
    nats_header(nm, NATS_STATUS_HDR, code, sizeof(code));
    if (strcmp(code, "100") == 0)
        return;
    p->acker.pull_out = 0; /* one request ended; asking again early costs nothing */
    if (strcmp(code, "408") != 0) {
        nats_header(nm, NATS_DESC_HDR, desc, sizeof(desc));
        p->b->errors++;
        log_warn("event=nats_acker_pull_refused consumer=%s status=%s reason=\"%s\"", NATS_ACKER,
                 code, desc);
        if (strstr(desc, "Deleted") != NULL || strcmp(code, "503") == 0) {
            /* someone deleted our consumer: acks would remove nothing; create it again */
            if (p->conn == NATS_CONN_READY)
                p->conn = NATS_CONN_CHECKING;
            nats_stream_check_start(p);
            return;
        }
    }
    nats_acker_pull(p);
}

/* --- settle: confirm a leaving session's acks --- */

static void nats_settle_push(struct nats_settle **list, struct nats_settle *st)
{
    st->prev = NULL;
    st->next = *list;
    if (*list != NULL)
        (*list)->prev = st;
    *list = st;
}

void nats_settle_unlink(struct nats_broker *p, struct nats_settle *st)
{
    struct nats_settle **list = st->req != 0 ? &p->settle_wait : &p->settle_due;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        *list = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    if (st->ns != NULL)
        st->ns->settle = NULL;
}

/* Forget st without calling back: its session was detached first. */
void nats_settle_cancel(struct nats_broker *p, struct nats_settle *st)
{
    later_cancel(&p->later, &st->due); /* a due one is queued there */
    if (st->req != 0) {
        /* its reply, if it still comes, completes nothing */
        struct map_node *n = map_get(&p->req.map, (const char *)&st->req, sizeof(st->req));
        if (n != NULL)
            map_entry(n, struct nats_req, node)->settle = NULL;
    }
    nats_settle_unlink(p, st);
    free(st);
}

/* A due settle's turn on p->later: nothing to confirm, or no way to. */
static void nats_on_settle_due(void *arg, int status)
{
    struct nats_settle *st = arg;
    (void)status;
    nats_settle_done(st->p, st);
}

/* st is complete: call back (the core detaches s inside). */
void nats_settle_done(struct nats_broker *p, struct nats_settle *st)
{
    struct session *s = st->s;
    broker_settle_cb cb = st->cb;
    nats_settle_unlink(p, st);
    free(st);
    cb(s);
}

/* s is leaving (client close frame or server close): cb(s) once the server confirmed
 * every ack given for s, so that the client, once it has its close reply, cannot be
 * handed those messages again by any node. Acks are plain publishes (one per written
 * frame, no round trip); here the last one goes out again with a reply subject, and its
 * reply is the barrier (nats_req_complete). Nothing acked yet, or no connection to
 * confirm on: cb from p->later (the next loop pass). Never blocks. cb never runs when
 * detach(s) comes first, or when the broker is closing or out of memory (the core then
 * closes the socket after its close timeout). */
void nats_settle(struct broker *b, struct session *s, broker_settle_cb cb)
{
    struct nats_broker *p = b->priv;
    struct nats_sess *ns = s->bpriv;
    struct nats_settle *st;
    struct nats_req *r;
    char subject[NATS_SUBJ_MAX + 64];
    if (p == NULL || nats_closing(p) || (ns != NULL && ns->settle != NULL))
        return;
    if ((st = calloc(1, sizeof(*st))) == NULL) {
        p->b->errors++;
        return;
    }
    st->p = p;
    st->s = s;
    st->ns = ns;
    st->cb = cb;
    if (ns != NULL && ns->last_ack != 0 && nats_conn_ready(p) &&
        (r = nats_req_new(p, NATS_REQ_SETTLE)) != NULL) {
        snprintf(subject, sizeof(subject), "%s%" PRIu64 ".%" PRIu64 ".0.0", p->subj.ack_prefix,
                 ns->last_ack, ns->last_ack);
        r->settle = st;
        if (nats_req_send(p, r, subject, NULL, 0) == 0) {
            st->req = r->id;
            nats_settle_push(&p->settle_wait, st);
            ns->settle = st;
            return;
        }
        free(r);
    }
    nats_settle_push(&p->settle_due, st);
    if (ns != NULL)
        ns->settle = st;
    later_call_add(&p->later, &st->due, nats_on_settle_due, st, 0);
}
