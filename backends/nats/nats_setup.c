/* nats_setup.c — the blocking JetStream setup: create or check the stream (and bring its
 * limits to the configuration), create or check NATS_ACKER, and probe once whether the
 * server removes a message on an ack ahead of the consumer's delivery.
 * Does NOT: touch struct nats_broker (it gets the connection, the config and where to
 * write its results), or serve anything. Thread: open() before the loop serves, or the
 * libuv thread pool (nats_on_stream_work); each call blocks for server round trips. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "log.h"

#include "nats_priv.h"

static uint64_t nats_min(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/* Create the gateway's one consumer on the stream (NATS_ACKER) or check it: explicit acks,
 * headers-only copies, no limit on pending messages. Its acks are how a written message
 * leaves the work-queue stream (docs/NATS.md). Same return convention as below. */
static int nats_acker_ensure(jsCtx *js, const struct config *cfg, const char *subject, char *why,
                             size_t whylen)
{
    jsConsumerConfig cc;
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    natsStatus s = js_GetConsumerInfo(&ci, js, cfg->nats_stream, NATS_ACKER, NULL, &jerr);
    int rc = 0;
    if (s == NATS_OK) {
        jsConsumerConfig *c = ci->Config;
        if (c->FilterSubject == NULL || strcmp(c->FilterSubject, subject) != 0 ||
            c->AckPolicy != js_AckExplicit || !c->HeadersOnly || c->MaxAckPending != -1 ||
            c->AckWait != (int64_t)cfg->nats_ack_wait_ms * 1000000) {
            jsConsumerInfo_Destroy(ci);
            ci = NULL;
            s = NATS_NOT_FOUND; /* settings changed: update it (a durable add updates) */
        }
    }
    if (s == NATS_NOT_FOUND || jerr == JSConsumerNotFoundErr) {
        jsConsumerConfig_Init(&cc);
        cc.Durable = NATS_ACKER;
        cc.FilterSubject = subject;
        cc.AckPolicy = js_AckExplicit;
        cc.AckWait = (int64_t)cfg->nats_ack_wait_ms * 1000000;
        cc.MaxAckPending = -1;
        cc.MaxDeliver = -1;
        cc.HeadersOnly = true;
        cc.MemoryStorage = true;
        jerr = 0;
        s = js_AddConsumer(&ci, js, cfg->nats_stream, &cc, NULL, &jerr);
        if (s != NATS_OK && jerr == 0) {
            snprintf(why, whylen, "consumer %s: %s", NATS_ACKER, natsStatus_GetText(s));
            rc = nats_err(s);
        } else if (s != NATS_OK) {
            snprintf(why, whylen, "consumer %s refused: %s (err_code %d)", NATS_ACKER,
                     nats_GetLastError(NULL), (int)jerr);
            rc = UV_EINVAL;
        }
    } else if (s != NATS_OK) {
        snprintf(why, whylen, "consumer %s info failed: %s", NATS_ACKER, natsStatus_GetText(s));
        rc = nats_err(s);
    }
    jsConsumerInfo_Destroy(ci);
    return rc;
}

/* Does this server remove a work-queue message on an ack for a sequence its consumer has
 * not handed out yet? nats-server 2.9 and 2.10 do (the ack goes straight to the stream);
 * 2.11 and later ignore such an ack. Tried once on a throwaway memory stream with its own
 * consumer that nobody pulls, replicated like ours (a clustered consumer takes acks
 * through its raft group): publish, ack ahead, see whether the message is gone.
 * Returns 1 (yes), 0 (no), or < 0 when the server could not be asked. */
static int nats_probe_acks_ahead(natsConnection *nc, jsCtx *js, int64_t replicas)
{
    char stream[64], subject[96], ack[160];
    const char *subjects[1] = {subject};
    natsInbox *nuid = NULL;
    jsStreamConfig sc;
    jsConsumerConfig cc;
    jsStreamInfo *si = NULL;
    jsConsumerInfo *ci = NULL;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus s;
    int rc = -1;
    if (natsInbox_Create(&nuid) != NATS_OK)
        return UV_ENOMEM;
    /* "_INBOX.<nuid>": the nuid makes names no other node uses at the same time */
    snprintf(stream, sizeof(stream), "WSGATE_PROBE_%s", (const char *)nuid + 7);
    snprintf(subject, sizeof(subject), "_wsgate.probe.%s", (const char *)nuid + 7);
    natsInbox_Destroy(nuid);
    jsStreamConfig_Init(&sc);
    sc.Name = stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Retention = js_WorkQueuePolicy;
    sc.Storage = js_MemoryStorage;
    sc.Replicas = replicas > 0 ? replicas : 1;
    if ((s = js_AddStream(&si, js, &sc, NULL, &jerr)) != NATS_OK)
        return nats_err(s) == 0 ? UV_EIO : nats_err(s);
    jsConsumerConfig_Init(&cc);
    cc.Durable = "p";
    cc.AckPolicy = js_AckExplicit;
    cc.MemoryStorage = true;
    s = js_AddConsumer(&ci, js, stream, &cc, NULL, &jerr);
    if (s == NATS_OK)
        s = js_Publish(&pa, js, subject, "x", 1, NULL, &jerr);
    if (s == NATS_OK) {
        snprintf(ack, sizeof(ack), "$JS.ACK.%s.p.1.%" PRIu64 ".%" PRIu64 ".0.0", stream,
                 pa->Sequence, pa->Sequence);
        s = natsConnection_Publish(nc, ack, NULL, 0);
    }
    /* the consumer takes acks from its own queue: give it up to ~300 ms */
    for (int i = 0; s == NATS_OK && i < 30 && rc < 0; i++) {
        jsStreamInfo_Destroy(si);
        si = NULL;
        if ((s = js_GetStreamInfo(&si, js, stream, NULL, &jerr)) == NATS_OK && si->State.Msgs == 0)
            rc = 1;
        else if (s == NATS_OK)
            nats_Sleep(10);
    }
    if (s == NATS_OK && rc < 0)
        rc = 0;
    if (s != NATS_OK)
        rc = nats_err(s) == 0 ? UV_EIO : nats_err(s);
    (void)js_DeleteStream(js, stream, NULL, NULL);
    jsPubAck_Destroy(pa);
    jsConsumerInfo_Destroy(ci);
    jsStreamInfo_Destroy(si);
    return rc;
}

/* Bring an existing stream's limits to the configuration: max age = [broker] ttl, at most
 * [broker] max_queue messages per subject with DiscardNew per subject (the 429). JetStream
 * updates both in place; the node that checks last sets them, and each change is logged
 * at warn with the old and new values (two nodes with different values show up in both
 * logs). Lowering them makes the server apply the new limits to what is stored: expired
 * messages go, and a subject holding more than the new limit keeps only its newest ones.
 * *si is replaced by the updated info. Same return convention as nats_stream_ensure. */
static int nats_stream_limits(jsCtx *js, const struct config *cfg, jsStreamInfo **si,
                              int64_t max_age, char *why, size_t whylen)
{
    jsStreamConfig *c = (*si)->Config;
    jsStreamInfo *nsi = NULL;
    jsErrCode jerr = 0;
    natsStatus s;
    int64_t old_age = c->MaxAge, old_per = c->MaxMsgsPerSubject;
    int old_dnps = c->DiscardNewPerSubject, old_discard = c->Discard == js_DiscardNew;
    if (old_age == max_age && old_per == (int64_t)cfg->max_queue && old_discard && old_dnps)
        return 0;
    c->MaxAge = max_age;
    c->MaxMsgsPerSubject = cfg->max_queue;
    c->Discard = js_DiscardNew;
    c->DiscardNewPerSubject = true;
    if (c->Duplicates > max_age) /* the server refuses a dedup window over the max age */
        c->Duplicates = (int64_t)nats_min(cfg->ttl_ms, 120000) * 1000000;
    s = js_UpdateStream(&nsi, js, c, NULL, &jerr);
    if (s != NATS_OK && jerr == 0) {
        snprintf(why, whylen, "stream update failed: %s", natsStatus_GetText(s));
        return nats_err(s) == 0 ? UV_EIO : nats_err(s);
    }
    if (s != NATS_OK) {
        snprintf(why, whylen,
                 "cannot apply [broker] ttl=%llums and max_queue=%u to the stream "
                 "(it has max_age %lldms, max_msgs_per_subject %lld): %s (err_code %d)",
                 (unsigned long long)cfg->ttl_ms, cfg->max_queue, (long long)(old_age / 1000000),
                 (long long)old_per, nats_GetLastError(NULL), (int)jerr);
        return UV_EINVAL;
    }
    log_warn("event=nats_stream_updated stream=%s max_age_ms=%lld->%llu "
             "max_msgs_per_subject=%lld->%u discard_new_per_subject=%d->1 "
             "keys=\"broker.ttl broker.max_queue\"",
             cfg->nats_stream, (long long)(old_age / 1000000), (unsigned long long)cfg->ttl_ms,
             (long long)old_per, cfg->max_queue, old_dnps && old_discard);
    jsStreamInfo_Destroy(*si);
    *si = nsi;
    return 0;
}

/* Create the stream or check the existing one. Returns 0; UV_EINVAL when the server has
 * something we cannot work with (why says what: incompatible stream, JetStream off);
 * another UV_E* when the server could not be asked (retry later). Any thread but the
 * loop once it serves (nats.c request/reply blocks for one round trip). */
int nats_stream_ensure(natsConnection *nc, const struct config *cfg, const char *subject,
                       const char *deliver, enum nats_acks_ahead *acks_ahead, uint64_t *last_seq,
                       char *why, size_t whylen)
{
    jsCtx *js = NULL;
    jsOptions jo;
    jsStreamConfig sc;
    jsRePublish rp;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    const char *subjects[1] = {subject};
    natsStatus s;
    int rc = 0;
    int64_t max_age = (int64_t)cfg->ttl_ms * 1000000, replicas;
    why[0] = '\0';
    jsOptions_Init(&jo);
    jo.Wait = (int64_t)cfg->nats_timeout_ms;
    if ((s = natsConnection_JetStream(&js, nc, &jo)) != NATS_OK)
        return nats_err(s);
    s = js_GetStreamInfo(&si, js, cfg->nats_stream, NULL, &jerr);
    if (s == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        jsStreamConfig_Init(&sc);
        jsRePublish_Init(&rp);
        rp.Source = subject;
        rp.Destination = deliver;
        sc.Name = cfg->nats_stream;
        sc.Subjects = subjects;
        sc.SubjectsLen = 1;
        sc.Retention = js_WorkQueuePolicy; /* an ack of NATS_ACKER removes a message */
        sc.Storage = js_FileStorage;
        sc.MaxAge = max_age;
        sc.MaxMsgsPerSubject = cfg->max_queue;
        sc.Discard = js_DiscardNew;
        sc.DiscardNewPerSubject = true;
        sc.AllowDirect = true;
        sc.RePublish = &rp;
        /* the dedup window may not exceed max age (the server refuses the stream) */
        sc.Duplicates = (int64_t)nats_min(cfg->ttl_ms, 120000) * 1000000;
        jerr = 0;
        s = js_AddStream(&si, js, &sc, NULL, &jerr);
        if (s == NATS_OK) {
            log_info("event=nats_stream_created stream=%s subjects=%s republish=%s "
                     "max_age_ms=%llu max_msgs_per_subject=%u storage=file retention=workqueue",
                     cfg->nats_stream, subject, deliver, (unsigned long long)cfg->ttl_ms,
                     cfg->max_queue);
        } else if (jerr == JSStreamSubjectOverlapErr) {
            snprintf(why, whylen, "subjects %s overlap another stream on the server", subject);
            rc = UV_EINVAL;
        } else if (jerr == JSNotEnabledErr || s == NATS_NO_RESPONDERS) {
            snprintf(why, whylen, "JetStream is not enabled on the server (nats-server -js)");
            rc = UV_EINVAL;
        } else if (jerr != 0) {
            snprintf(why, whylen, "stream create refused: %s (err_code %d)",
                     nats_GetLastError(NULL), (int)jerr);
            rc = UV_EINVAL;
        } else {
            snprintf(why, whylen, "stream create failed: %s", natsStatus_GetText(s));
            rc = nats_err(s);
        }
    } else if (s == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr) {
        snprintf(why, whylen, "JetStream is not enabled on the server (nats-server -js)");
        rc = UV_EINVAL;
    } else if (s != NATS_OK) {
        snprintf(why, whylen, "stream info failed: %s", natsStatus_GetText(s));
        rc = nats_err(s);
    } else {
        jsStreamConfig *c = si->Config;
        int covered = 0;
        for (int i = 0; i < c->SubjectsLen; i++)
            covered |= strcmp(c->Subjects[i], subject) == 0;
        if (c->Retention != js_WorkQueuePolicy) {
            snprintf(why, whylen, "retention is not workqueue (written messages must leave it)");
            rc = UV_EINVAL;
        } else if (c->Storage != js_FileStorage) {
            snprintf(why, whylen, "storage is not file (messages must survive a restart)");
            rc = UV_EINVAL;
        } else if (!covered) {
            snprintf(why, whylen, "its subjects do not include %s", subject);
            rc = UV_EINVAL;
        } else if (c->RePublish == NULL || c->RePublish->Source == NULL ||
                   c->RePublish->Destination == NULL ||
                   strcmp(c->RePublish->Source, subject) != 0 ||
                   strcmp(c->RePublish->Destination, deliver) != 0 || c->RePublish->HeadersOnly) {
            snprintf(why, whylen,
                     "it does not republish %s to %s with payloads (republish "
                     "cannot be changed on an existing stream)",
                     subject, deliver);
            rc = UV_EINVAL;
        } else if (!c->AllowDirect) {
            snprintf(why, whylen, "allow_direct is off (we read stored messages with DIRECT.GET)");
            rc = UV_EINVAL;
        } else {
            rc = nats_stream_limits(js, cfg, &si, max_age, why, whylen);
            if (rc == 0)
                log_info("event=nats_stream_ok stream=%s subjects=%s republish=%s",
                         cfg->nats_stream, subject, deliver);
        }
    }
    replicas = si != NULL && si->Config != NULL ? si->Config->Replicas : 1;
    *last_seq = si != NULL ? si->State.LastSeq : 0;
    jsStreamInfo_Destroy(si);
    if (rc == 0)
        rc = nats_acker_ensure(js, cfg, subject, why, whylen);
    if (rc == 0 && *acks_ahead == NATS_ACKS_AHEAD_UNKNOWN) {
        int r = nats_probe_acks_ahead(nc, js, replicas);
        if (r >= 0) {
            *acks_ahead = r ? NATS_ACKS_AHEAD_YES : NATS_ACKS_AHEAD_NO;
            log_info("event=nats_acks_ahead remove=%s pull=%s", r ? "yes" : "no", r ? "no" : "yes");
        } else { /* cannot tell (no permission for the probe stream?): pull, always safe */
            *acks_ahead = NATS_ACKS_AHEAD_NO;
            log_warn("event=nats_acks_ahead_probe_failed err=%s pull=yes", uv_err_name(r));
        }
    }
    jsCtx_Destroy(js);
    return rc;
}
