/* bench/loadgen.c — wsgate's load generator for `make bench`.
 *
 * What it does: one scenario (queue, latency, fanout, idle) against one server (wsgate or
 * nchan), or several gateway nodes sharing a broker (--port P1,P2,...: receiving socket i
 * connects to port i % n, push connection j to port j % n), from one process: RFC 6455
 * WebSocket clients (real handshake checked with SHA-1 + base64, masked client frames, an
 * incremental fragmentation-safe frame parser, pongs for pings) and keep-alive HTTP/1.1
 * push/publish connections with pipelining. Every message body carries "<receiver:8
 * hex>:<seq:16 hex>:<send time ns:16 hex>" padded with '.' to --size, so each receiving
 * socket checks that every accepted message arrives exactly once and in order, and
 * push-to-frame latency is measured. Server CPU time is summed over --pid (every node); for
 * idle, it also reads the servers' VmRSS (summed over --pid) before and after opening the
 * connections. It prints a block of key=value lines and exits 0 (all good), 1 (a message
 * lost, duplicated, out of order or misrouted, a push refused, a connection failed) or 2
 * (bad usage/setup).
 *
 * What it does NOT do: start or stop servers (bench/run.sh does), TLS, permessage-deflate,
 * DNS beyond one getaddrinfo per port at start. It never waits without a deadline:
 * --timeout bounds the whole scenario, --grace the wait for deliveries after the last push
 * was answered.
 *
 * Threads: one (main); epoll, level-triggered, non-blocking sockets. No global mutable
 * state: everything lives in struct lg, owned by main().
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "hmac.h" /* src/hmac.h: compiled in (Makefile) */

#define LG_WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define LG_BODY_MIN 42 /* "%08x:%016x:%016x" */
#define LG_MAX_PIDS 16
#define LG_MAX_PORTS 16          /* --port P1,P2,...: gateway nodes */
#define LG_MAX_HEAD 16384        /* response head larger than this: protocol error */
#define LG_MAX_FRAME (16u << 20) /* server frame larger than this: protocol error */
#define LG_TOPIC_RX 0xffffffffu  /* receiver field of a topic message */

/* --- small helpers --- */

static int64_t lg_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

struct buf {
    char *data; /* owned: malloc'd, freed by buf_free() */
    size_t len; /* bytes stored */
    size_t off; /* bytes already consumed from the front */
    size_t cap; /* allocated size */
};

static void buf_free(struct buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

static size_t buf_avail(const struct buf *b)
{
    return b->len - b->off;
}

static void buf_consume(struct buf *b, size_t n)
{
    b->off += n;
    if (b->off == b->len)
        b->off = b->len = 0;
}

/* Makes room for n more bytes; returns the write position. Aborts on OOM: this is a
 * short-lived measurement tool, a half-measured run is worth nothing. */
static char *buf_reserve(struct buf *b, size_t n)
{
    if (b->off > 0 && b->len + n > b->cap) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->data, cap);
        if (p == NULL) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(2);
        }
        b->data = p;
        b->cap = cap;
    }
    return b->data + b->len;
}

static void buf_append(struct buf *b, const void *p, size_t n)
{
    memcpy(buf_reserve(b, n), p, n);
    b->len += n;
}

static void *lg_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "loadgen: out of memory\n");
        exit(2);
    }
    return p;
}

static bool bit_get(const uint8_t *bm, uint64_t i)
{
    return (bm[i >> 3] >> (i & 7)) & 1;
}

static void bit_set(uint8_t *bm, uint64_t i)
{
    bm[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static int hex_val(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Parses exactly n hex digits; returns false on any other byte. */
static bool hex_parse(const char *p, int n, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++) {
        int d = hex_val((unsigned char)p[i]);
        if (d < 0)
            return false;
        v = (v << 4) | (uint64_t)d;
    }
    *out = v;
    return true;
}

/* Case-insensitive search of a header line "name: value" in a response head (head_len
 * bytes, the status line included). Returns the value start and its length, or NULL. */
static const char *http_header_find(const char *head, size_t head_len, const char *name,
                                    size_t *vlen)
{
    size_t nlen = strlen(name);
    const char *end = head + head_len;
    const char *line = memchr(head, '\n', head_len);
    while (line != NULL && line + 1 < end) {
        line++;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - line) > nlen && line[nlen] == ':' &&
            strncasecmp(line, name, nlen) == 0) {
            const char *v = line + nlen + 1;
            const char *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol < end ? eol : NULL;
    }
    return NULL;
}

static bool http_value_has(const char *v, size_t vlen, const char *token)
{
    size_t tlen = strlen(token);
    for (size_t i = 0; i + tlen <= vlen; i++)
        if (strncasecmp(v + i, token, tlen) == 0)
            return true;
    return false;
}

/* --- options --- */

enum lg_scenario { SCEN_QUEUE, SCEN_LATENCY, SCEN_FANOUT, SCEN_IDLE };

struct opts {
    const char *host;                /* borrowed: argv */
    char portlist[256];              /* --port's list, split in place by opts_parse */
    const char *ports[LG_MAX_PORTS]; /* borrowed: point into portlist */
    int nports;                      /* >= 1 */
    enum lg_scenario scen;
    const char *scen_name;   /* borrowed: static string */
    long sessions;           /* queue/latency: receiving sockets, one per session */
    long messages;           /* pushes (queue/latency) or publishes (fanout) */
    long size;               /* body bytes */
    long conns;              /* HTTP push connections */
    double rate;             /* latency: pushes per second (0 = as fast as possible) */
    long sockets;            /* fanout: subscribed sockets */
    const char *topic;       /* borrowed: argv or default */
    long idle;               /* idle: connections */
    pid_t pids[LG_MAX_PIDS]; /* server processes: VmRSS and CPU time summed */
    int npids;
    pid_t bpids[LG_MAX_PIDS]; /* broker processes whose CPU time is reported */
    int nbpids;
    bool nchan;             /* nchan routes: fanout sockets on /topic/T instead of /ws/S?topics=T */
    double timeout_s;       /* whole-scenario deadline */
    double grace_s;         /* wait for deliveries after the last push answer */
    long pipeline;          /* outstanding requests per push connection */
    long connect_batch;     /* WebSocket handshakes in progress at once */
    double settle_s;        /* idle: wait after the last connection before reading RSS */
    const char *label;      /* borrowed: argv or "wsgate"/"nchan" */
    char prefix[64];        /* session key prefix, unique per run */
    const char *push_token; /* borrowed: argv; NULL = pushes carry no Authorization */
    const char *jwt_secret; /* borrowed: argv; NULL = handshakes carry no token */
};

/* --- connections --- */

enum conn_kind { CONN_WS, CONN_HTTP };
enum conn_state {
    ST_NONE,       /* not started yet */
    ST_CONNECTING, /* non-blocking connect() in progress */
    ST_HANDSHAKE,  /* ws: GET sent, waiting for 101 */
    ST_OPEN,       /* ws: frames flow; http: requests flow */
    ST_RECONNECT,  /* http: closed by the server, reconnect at the next pump */
    ST_DEAD,       /* closed for good */
};

struct conn {
    int fd;           /* owned: closed by conn_close() */
    uint8_t kind;     /* enum conn_kind */
    uint8_t state;    /* enum conn_state */
    bool pollout;     /* EPOLLOUT currently registered */
    bool failed;      /* ws: never reached ST_OPEN (refused, timeout, bad 101) */
    uint32_t idx;     /* ws: receiver index; http: push connection index */
    int64_t deadline; /* ws: handshake deadline (ns) */
    struct buf in;    /* owned: unparsed input (a partial frame or response) */
    struct buf out;   /* owned: unsent output */
    struct buf frag;  /* owned: ws fragmented message being reassembled */
    uint8_t frag_op;  /* ws: opcode of the message in frag, 0 = none */
    char accept[32];  /* ws: expected Sec-WebSocket-Accept */
    /* http */
    uint32_t *ring;      /* owned: message ids awaiting a response, cap = pipeline */
    uint32_t ring_head;  /* index of the oldest */
    uint32_t ring_count; /* outstanding requests */
    uint32_t resend;     /* after a reconnect: ring entries still to rewrite */
    uint64_t next_i;     /* next message id this connection sends */
    uint32_t reconnects; /* server-side closes survived */
    bool close_after;    /* server said Connection: close */
};

struct rx {
    uint8_t *seen;    /* owned: bitmap of nexp bits */
    uint64_t nexp;    /* messages this receiver should get */
    uint64_t max_seq; /* highest seq seen + 1, 0 = none yet */
};

struct lg {
    struct opts o;
    int ep;             /* owned: epoll fd */
    int tfd;            /* owned: timerfd pacing the latency scenario, or -1 */
    struct conn *tmark; /* owned: epoll marker for tfd (fd -1: events skipped) */
    struct sockaddr_storage addr[LG_MAX_PORTS]; /* one per --port entry (node) */
    socklen_t addrlen[LG_MAX_PORTS];
    char hostport[LG_MAX_PORTS][300]; /* Host header, per node */
    uint32_t naddr;                   /* = o.nports */
    uint64_t rnd;                     /* xorshift state for keys and masks */
    EVP_MAC_CTX *jwt_mac;             /* owned: HMAC-SHA256 keyed once with --jwt-secret, or NULL */

    struct conn *ws; /* owned: nws receiving sockets */
    uint32_t nws;
    struct rx *rx;     /* owned: one per ws conn (not for idle) */
    struct conn *http; /* owned: nhttp push connections */
    uint32_t nhttp;
    uint8_t *accepted; /* owned: bitmap of messages answered 2xx */

    uint32_t ws_next;    /* next ws conn to start */
    uint32_t ws_pending; /* ws conns connecting or in handshake */
    uint32_t ws_open;    /* ws conns that reached ST_OPEN and are still open */
    uint32_t ws_done;    /* ws conns that finished connecting (open or failed) */
    int64_t t_scan;      /* last handshake-timeout scan */

    /* counters */
    uint64_t sent, resent, answered, accepted_n, rejected;
    int last_reject_status;
    uint64_t delivered, duplicated, out_of_order, misrouted, malformed;
    uint64_t connect_failed, handshake_failed, ws_closed, ws_protocol_errors, http_gaveup;
    int handshake_status; /* first non-101 status seen, 0 = none */
    int last_close_code;  /* last close code a server sent, 0 = none */
    uint64_t pings;

    int64_t t_first_send, t_last_answer, t_last_delivery, t_push_start;
    uint32_t *lat; /* owned: latency samples in microseconds */
    size_t nlat, caplat;
    char scratch[1 << 16]; /* read buffer, parsed in place when possible */
};

static uint64_t lg_rand(struct lg *g)
{
    uint64_t x = g->rnd;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    g->rnd = x;
    return x;
}

static void lat_add(struct lg *g, int64_t ns)
{
    if (g->nlat == g->caplat) {
        size_t cap = g->caplat ? g->caplat * 2 : 65536;
        uint32_t *p = realloc(g->lat, cap * sizeof(*p));
        if (p == NULL) {
            fprintf(stderr, "loadgen: out of memory\n");
            exit(2);
        }
        g->lat = p;
        g->caplat = cap;
    }
    if (ns < 0)
        ns = 0;
    int64_t us = ns / 1000;
    g->lat[g->nlat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static void conn_events_set(struct lg *g, struct conn *c, bool out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (c->pollout == out)
        return;
    c->pollout = out;
    epoll_ctl(g->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_close(struct lg *g, struct conn *c, enum conn_state next)
{
    if (c->fd >= 0) {
        epoll_ctl(g->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->in.len = c->in.off = 0;
    c->out.len = c->out.off = 0;
    c->frag.len = c->frag.off = 0;
    c->frag_op = 0;
    c->pollout = false;
    c->state = (uint8_t)next;
}

/* The node (index into --port's list) c talks to: receiving socket i and push connection
 * j go to i % n and j % n, round robin; a reconnect goes to the same node. */
static uint32_t conn_node(const struct lg *g, const struct conn *c)
{
    return c->idx % g->naddr;
}

/* Starts a non-blocking connect. Returns 0 or -errno. */
static int conn_connect(struct lg *g, struct conn *c)
{
    uint32_t node = conn_node(g, c);
    int fd = socket(g->addr[node].ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&g->addr[node], g->addrlen[node]) < 0 &&
        errno != EINPROGRESS) {
        int err = errno;
        close(fd);
        return -err;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    c->fd = fd;
    c->pollout = true;
    c->state = ST_CONNECTING;
    return 0;
}

static void ws_fail(struct lg *g, struct conn *c)
{
    bool was_open = c->state == ST_OPEN;
    bool was_pending = c->state == ST_CONNECTING || c->state == ST_HANDSHAKE;
    conn_close(g, c, ST_DEAD);
    if (was_open) {
        g->ws_open--;
        g->ws_closed++;
    }
    if (was_pending) {
        c->failed = true;
        g->ws_pending--;
        g->ws_done++;
    }
}

static void http_lost(struct lg *g, struct conn *c);

/* Writes what it can of c->out; arms EPOLLOUT for the rest. */
static void conn_flush(struct lg *g, struct conn *c)
{
    while (buf_avail(&c->out) > 0) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, buf_avail(&c->out), MSG_NOSIGNAL);
        if (n > 0) {
            buf_consume(&c->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_events_set(g, c, true);
            return;
        }
        if (c->kind == CONN_WS)
            ws_fail(g, c);
        else
            http_lost(g, c);
        return;
    }
    conn_events_set(g, c, false);
}

/* --- WebSocket client --- */

static void ws_accept_compute(const char *key, char out[32])
{
    char cat[128];
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int n = snprintf(cat, sizeof(cat), "%s%s", key, LG_WS_GUID);
    EVP_Digest(cat, (size_t)n, md, &mdlen, EVP_sha1(), NULL);
    EVP_EncodeBlock((unsigned char *)out, md, (int)mdlen);
}

/* Queues a masked client frame (FIN set). */
static void ws_frame_append(struct lg *g, struct conn *c, int op, const void *payload, size_t len)
{
    unsigned char hdr[14];
    size_t h = 0;
    hdr[h++] = (unsigned char)(0x80 | op);
    if (len < 126) {
        hdr[h++] = (unsigned char)(0x80 | len);
    } else if (len < 65536) {
        hdr[h++] = 0x80 | 126;
        hdr[h++] = (unsigned char)(len >> 8);
        hdr[h++] = (unsigned char)len;
    } else {
        hdr[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[h++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    uint32_t mask = (uint32_t)lg_rand(g);
    unsigned char mk[4] = {(unsigned char)(mask >> 24), (unsigned char)(mask >> 16),
                           (unsigned char)(mask >> 8), (unsigned char)mask};
    memcpy(hdr + h, mk, 4);
    h += 4;
    buf_append(&c->out, hdr, h);
    unsigned char *dst = (unsigned char *)buf_reserve(&c->out, len);
    const unsigned char *src = payload;
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ mk[i & 3];
    c->out.len += len;
}

static void ws_start(struct lg *g, struct conn *c)
{
    int rc = conn_connect(g, c);
    g->ws_pending++;
    c->deadline = lg_now_ns() + 10 * (int64_t)1000000000;
    if (rc < 0) {
        g->connect_failed++;
        c->state = ST_CONNECTING;
        ws_fail(g, c);
    }
}

/* base64url without padding of n bytes into out (room for 4*(n+2)/3+1); returns length. */
static int b64url(const unsigned char *in, int n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, in, n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    for (int i = 0; i < len; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    out[len] = '\0';
    return len;
}

/* An HS256 JWT {"sub": sub, "exp": now + 1 h} signed with the keyed context mac, minted
 * per handshake as each real client would present its own. Returns its length, or -1 if
 * it does not fit in cap. */
static int jwt_mint(EVP_MAC_CTX *mac, const char *sub, char *out, size_t cap)
{
    char claims[256];
    int cn = snprintf(claims, sizeof(claims), "{\"sub\":\"%s\",\"exp\":%lld}", sub,
                      (long long)time(NULL) + 3600);
    if (cn < 0 || (size_t)cn >= sizeof(claims) || cap < 512)
        return -1;
    /* {"alg":"HS256","typ":"JWT"} */
    int n = snprintf(out, cap, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.");
    n += b64url((const unsigned char *)claims, cn, out + n);
    uint8_t sig[HMAC_SHA256_LEN];
    if (hmac_sha256(mac, out, (size_t)n, sig) < 0)
        return -1;
    out[n++] = '.';
    n += b64url(sig, (int)sizeof(sig), out + n);
    return n;
}

static void ws_on_connected(struct lg *g, struct conn *c)
{
    unsigned char raw[16];
    char key[32];
    char req[1024];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = lg_rand(g);
        memcpy(raw + i, &r, 8);
    }
    EVP_EncodeBlock((unsigned char *)key, raw, 16);
    ws_accept_compute(key, c->accept);
    int n;
    if (g->o.scen == SCEN_FANOUT && g->o.nchan)
        n = snprintf(req, sizeof(req), "GET /topic/%s HTTP/1.1\r\n", g->o.topic);
    else if (g->o.scen == SCEN_FANOUT)
        n = snprintf(req, sizeof(req), "GET /ws/%s-%" PRIu32 "?topics=%s HTTP/1.1\r\n", g->o.prefix,
                     c->idx, g->o.topic);
    else
        n = snprintf(req, sizeof(req), "GET /ws/%s-%" PRIu32 " HTTP/1.1\r\n", g->o.prefix, c->idx);
    n += snprintf(req + n, sizeof(req) - (size_t)n,
                  "Host: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                  g->hostport[conn_node(g, c)], key);
    if (g->o.jwt_secret != NULL) { /* the browser transport: Sec-WebSocket-Protocol */
        char sub[96], jwt[512];
        snprintf(sub, sizeof(sub), "%s-%" PRIu32, g->o.prefix, c->idx);
        int jn = jwt_mint(g->jwt_mac, sub, jwt, sizeof(jwt));
        if (jn > 0)
            n += snprintf(req + n, sizeof(req) - (size_t)n,
                          "Sec-WebSocket-Protocol: bearer, %s\r\n", jwt);
    }
    n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
    buf_append(&c->out, req, (size_t)n);
    c->state = ST_HANDSHAKE;
    conn_flush(g, c);
}

/* One complete data message for receiver c. */
static void ws_on_message(struct lg *g, struct conn *c, const char *p, size_t len)
{
    int64_t now = lg_now_ns();
    uint64_t who, seq, ts;
    if (g->rx == NULL)
        return; /* idle: nothing is expected, nothing is checked */
    if (len < LG_BODY_MIN || p[8] != ':' || p[25] != ':' || !hex_parse(p, 8, &who) ||
        !hex_parse(p + 9, 16, &seq) || !hex_parse(p + 26, 16, &ts)) {
        g->malformed++;
        return;
    }
    uint64_t want = g->o.scen == SCEN_FANOUT ? LG_TOPIC_RX : c->idx;
    struct rx *r = &g->rx[c->idx];
    if (who != want || seq >= r->nexp) {
        g->misrouted++;
        return;
    }
    if (bit_get(r->seen, seq)) {
        g->duplicated++;
        return;
    }
    bit_set(r->seen, seq);
    g->delivered++;
    if (seq + 1 < r->max_seq)
        g->out_of_order++;
    else
        r->max_seq = seq + 1;
    g->t_last_delivery = now;
    lat_add(g, now - (int64_t)ts);
}

/* Parses server frames from p[0..n); returns bytes consumed (a partial frame is left).
 * May close c (check c->state). */
static size_t ws_parse_frames(struct lg *g, struct conn *c, const char *p, size_t n)
{
    size_t used = 0;
    while (c->state == ST_OPEN && n - used >= 2) {
        const unsigned char *h = (const unsigned char *)p + used;
        size_t avail = n - used;
        bool fin = h[0] & 0x80;
        int op = h[0] & 0x0f;
        bool masked = h[1] & 0x80;
        uint64_t plen = h[1] & 0x7f;
        size_t hl = 2;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = ((uint64_t)h[2] << 8) | h[3];
            hl = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | h[2 + i];
            hl = 10;
        }
        if (masked || (h[0] & 0x70) || plen > LG_MAX_FRAME || (op >= 8 && (!fin || plen > 125))) {
            g->ws_protocol_errors++;
            ws_fail(g, c);
            return n;
        }
        if (avail < hl + plen)
            break;
        const char *pl = p + used + hl;
        used += hl + (size_t)plen;
        switch (op) {
        case 0x0: /* continuation */
            if (c->frag_op == 0) {
                g->ws_protocol_errors++;
                ws_fail(g, c);
                return n;
            }
            buf_append(&c->frag, pl, (size_t)plen);
            if (fin) {
                ws_on_message(g, c, c->frag.data + c->frag.off, buf_avail(&c->frag));
                c->frag.len = c->frag.off = 0;
                c->frag_op = 0;
            }
            break;
        case 0x1: /* text */
        case 0x2: /* binary */
            if (c->frag_op != 0) {
                g->ws_protocol_errors++;
                ws_fail(g, c);
                return n;
            }
            if (fin) {
                ws_on_message(g, c, pl, (size_t)plen);
            } else {
                c->frag_op = (uint8_t)op;
                buf_append(&c->frag, pl, (size_t)plen);
            }
            break;
        case 0x8: /* close: answer with the same code, then drop the socket */
            g->last_close_code =
                plen >= 2 ? ((unsigned char)pl[0] << 8) | (unsigned char)pl[1] : 1005;
            ws_frame_append(g, c, 0x8, pl, plen >= 2 ? 2 : 0);
            conn_flush(g, c);
            if (c->state == ST_OPEN)
                ws_fail(g, c);
            return n;
        case 0x9: /* ping */
            g->pings++;
            ws_frame_append(g, c, 0xA, pl, (size_t)plen);
            conn_flush(g, c);
            break;
        case 0xA: /* pong */
            break;
        default:
            g->ws_protocol_errors++;
            ws_fail(g, c);
            return n;
        }
    }
    return used;
}

/* Parses the 101 answer; returns bytes consumed, 0 if the head is incomplete. */
static size_t ws_parse_handshake(struct lg *g, struct conn *c, const char *p, size_t n)
{
    const char *end = memmem(p, n, "\r\n\r\n", 4);
    if (end == NULL) {
        if (n > LG_MAX_HEAD) {
            g->handshake_failed++;
            ws_fail(g, c);
            return n;
        }
        return 0;
    }
    size_t head_len = (size_t)(end - p) + 4;
    int status = 0;
    if (n >= 12 && strncmp(p, "HTTP/1.", 7) == 0)
        status = atoi(p + 9);
    size_t vlen = 0;
    const char *v = http_header_find(p, head_len, "Sec-WebSocket-Accept", &vlen);
    if (status != 101 || v == NULL || vlen != strlen(c->accept) ||
        memcmp(v, c->accept, vlen) != 0) {
        if (g->handshake_status == 0)
            g->handshake_status = status ? status : -1;
        g->handshake_failed++;
        ws_fail(g, c);
        return n;
    }
    c->state = ST_OPEN;
    g->ws_pending--;
    g->ws_done++;
    g->ws_open++;
    return head_len;
}

static size_t ws_parse(struct lg *g, struct conn *c, const char *p, size_t n)
{
    size_t used = 0;
    if (c->state == ST_HANDSHAKE) {
        used = ws_parse_handshake(g, c, p, n);
        if (used == 0 || c->state != ST_OPEN)
            return used ? n : 0;
    }
    if (c->state == ST_OPEN)
        used += ws_parse_frames(g, c, p + used, n - used);
    return c->state == ST_DEAD ? n : used;
}

/* --- HTTP push/publish client --- */

static uint64_t msg_total(const struct lg *g)
{
    return (uint64_t)g->o.messages;
}

/* The push connection that carries message i: a session's messages always travel on the
 * same connection, so pipelining keeps them in order. */
static uint32_t msg_conn(const struct lg *g, uint64_t i)
{
    if (g->o.scen == SCEN_FANOUT)
        return 0;
    return (uint32_t)((i % (uint64_t)g->o.sessions) % g->nhttp);
}

static void http_next_advance(struct lg *g, struct conn *c)
{
    uint64_t n = msg_total(g);
    while (c->next_i < n && msg_conn(g, c->next_i) != c->idx)
        c->next_i++;
}

static int64_t msg_stamp(const struct lg *g, uint64_t i)
{
    /* latency: the intended send time, so a client-side backlog shows in the figures
     * instead of hiding (no coordinated omission); otherwise the time it is written. */
    if (g->o.rate > 0)
        return g->t_push_start + (int64_t)((double)i * 1e9 / g->o.rate);
    return lg_now_ns();
}

static void http_request_append(struct lg *g, struct conn *c, uint64_t i)
{
    char head[1024];
    int hn;
    uint32_t who;
    uint64_t seq;
    if (g->o.scen == SCEN_FANOUT) {
        who = LG_TOPIC_RX;
        seq = i;
        hn = snprintf(head, sizeof(head), "POST /publish/%s HTTP/1.1\r\n", g->o.topic);
    } else {
        who = (uint32_t)(i % (uint64_t)g->o.sessions);
        seq = i / (uint64_t)g->o.sessions;
        hn = snprintf(head, sizeof(head), "POST /push/%s-%" PRIu32 " HTTP/1.1\r\n", g->o.prefix,
                      who);
    }
    if (g->o.push_token != NULL)
        hn += snprintf(head + hn, sizeof(head) - (size_t)hn, "Authorization: Bearer %s\r\n",
                       g->o.push_token);
    hn += snprintf(head + hn, sizeof(head) - (size_t)hn,
                   "Host: %s\r\nContent-Type: text/plain\r\nContent-Length: %ld\r\n\r\n",
                   g->hostport[conn_node(g, c)], g->o.size);
    buf_append(&c->out, head, (size_t)hn);
    char *body = buf_reserve(&c->out, (size_t)g->o.size + 1);
    int bn = snprintf(body, (size_t)g->o.size + 1, "%08" PRIx32 ":%016" PRIx64 ":%016" PRIx64, who,
                      seq, (uint64_t)msg_stamp(g, i));
    memset(body + bn, '.', (size_t)(g->o.size - bn));
    c->out.len += (size_t)g->o.size;
}

/* Fills c's pipeline with messages below `allowed` (resends first, in order). */
static void http_pump(struct lg *g, struct conn *c, uint64_t allowed)
{
    bool wrote = false;
    uint32_t depth = (uint32_t)g->o.pipeline;
    while (c->resend > 0) {
        uint32_t pos = (c->ring_head + c->ring_count - c->resend) % depth;
        http_request_append(g, c, c->ring[pos]);
        c->resend--;
        g->resent++;
        wrote = true;
    }
    while (!c->close_after && c->ring_count < depth && c->next_i < allowed) {
        uint64_t i = c->next_i++;
        http_next_advance(g, c);
        http_request_append(g, c, i);
        c->ring[(c->ring_head + c->ring_count) % depth] = (uint32_t)i;
        c->ring_count++;
        g->sent++;
        if (g->t_first_send == 0)
            g->t_first_send = lg_now_ns();
        wrote = true;
    }
    if (wrote)
        conn_flush(g, c);
}

/* The server closed c or the socket failed: everything unanswered is written again on a
 * new connection (a request the server never answered was not processed by nginx or
 * wsgate when they close after a response; if it was, the receivers report a duplicate). */
static void http_lost(struct lg *g, struct conn *c)
{
    conn_close(g, c, ST_RECONNECT);
    c->close_after = false;
    c->resend = c->ring_count;
    if (++c->reconnects > 100) {
        g->http_gaveup++;
        c->state = ST_DEAD;
    }
}

static void http_on_response(struct lg *g, struct conn *c, int status)
{
    if (status >= 100 && status < 200)
        return; /* interim (100 Continue): the final answer follows */
    if (c->ring_count == 0) {
        g->ws_protocol_errors++; /* an answer nobody asked for */
        return;
    }
    uint32_t i = c->ring[c->ring_head];
    c->ring_head = (c->ring_head + 1) % (uint32_t)g->o.pipeline;
    c->ring_count--;
    if (c->resend > c->ring_count)
        c->resend = c->ring_count;
    g->answered++;
    g->t_last_answer = lg_now_ns();
    if (status >= 200 && status < 300) {
        if (!bit_get(g->accepted, i)) {
            bit_set(g->accepted, i);
            g->accepted_n++;
        }
    } else {
        g->rejected++;
        g->last_reject_status = status;
    }
}

/* Parses complete responses from p[0..n); returns bytes consumed. */
static size_t http_parse(struct lg *g, struct conn *c, const char *p, size_t n)
{
    size_t used = 0;
    while (used < n && c->state == ST_OPEN) {
        const char *s = p + used;
        size_t avail = n - used;
        const char *end = memmem(s, avail, "\r\n\r\n", 4);
        if (end == NULL) {
            if (avail > LG_MAX_HEAD)
                http_lost(g, c);
            break;
        }
        size_t head_len = (size_t)(end - s) + 4;
        if (avail < 12 || strncmp(s, "HTTP/1.", 7) != 0) {
            http_lost(g, c);
            break;
        }
        int status = atoi(s + 9);
        size_t vlen = 0;
        const char *v;
        size_t body_len = 0;
        bool chunked = false;
        if ((v = http_header_find(s, head_len, "Transfer-Encoding", &vlen)) != NULL &&
            http_value_has(v, vlen, "chunked"))
            chunked = true;
        else if ((v = http_header_find(s, head_len, "Content-Length", &vlen)) != NULL)
            body_len = strtoul(v, NULL, 10);
        bool close_it = (v = http_header_find(s, head_len, "Connection", &vlen)) != NULL &&
                        http_value_has(v, vlen, "close");
        size_t total = head_len;
        if (chunked) {
            /* walk chunks: size line, data, CRLF; a 0 chunk ends, then trailers + CRLF */
            bool complete = false;
            while (total < avail) {
                const char *eol = memmem(s + total, avail - total, "\r\n", 2);
                if (eol == NULL)
                    break;
                size_t csz = strtoul(s + total, NULL, 16);
                size_t line = (size_t)(eol - (s + total)) + 2;
                if (csz == 0) {
                    const char *tend =
                        memmem(s + total + line - 2, avail - total - line + 2, "\r\n\r\n", 4);
                    if (tend == NULL)
                        break;
                    total = (size_t)(tend - s) + 4;
                    complete = true;
                    break;
                }
                if (total + line + csz + 2 > avail)
                    break;
                total += line + csz + 2;
            }
            if (!complete)
                break;
        } else {
            if (avail < head_len + body_len)
                break;
            total = head_len + body_len;
        }
        used += total;
        http_on_response(g, c, status);
        if (close_it) {
            c->close_after = true;
            if (c->ring_count == 0) {
                http_lost(g, c);
                break;
            }
        }
    }
    return c->state == ST_OPEN ? used : n;
}

/* --- event loop --- */

static size_t conn_parse(struct lg *g, struct conn *c, const char *p, size_t n)
{
    return c->kind == CONN_WS ? ws_parse(g, c, p, n) : http_parse(g, c, p, n);
}

static void conn_on_eof(struct lg *g, struct conn *c)
{
    if (c->kind == CONN_WS)
        ws_fail(g, c);
    else
        http_lost(g, c);
}

static void conn_on_readable(struct lg *g, struct conn *c)
{
    for (int k = 0; k < 16; k++) {
        ssize_t n = recv(c->fd, g->scratch, sizeof(g->scratch), 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            conn_on_eof(g, c);
            return;
        }
        if (buf_avail(&c->in) == 0) {
            size_t used = conn_parse(g, c, g->scratch, (size_t)n);
            if (c->fd >= 0 && used < (size_t)n)
                buf_append(&c->in, g->scratch + used, (size_t)n - used);
        } else {
            buf_append(&c->in, g->scratch, (size_t)n);
            size_t used = conn_parse(g, c, c->in.data + c->in.off, buf_avail(&c->in));
            if (c->fd >= 0)
                buf_consume(&c->in, used);
        }
        if (c->fd < 0 || (size_t)n < sizeof(g->scratch))
            return;
    }
}

static void conn_on_connected(struct lg *g, struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err != 0) {
        if (c->kind == CONN_WS) {
            g->connect_failed++;
            ws_fail(g, c);
        } else {
            http_lost(g, c);
        }
        return;
    }
    if (c->kind == CONN_WS) {
        ws_on_connected(g, c);
    } else {
        c->state = ST_OPEN;
        conn_events_set(g, c, false);
    }
}

static void lg_poll(struct lg *g, int timeout_ms)
{
    struct epoll_event ev[512];
    int n = epoll_wait(g->ep, ev, 512, timeout_ms);
    for (int k = 0; k < n; k++) {
        struct conn *c = ev[k].data.ptr;
        uint32_t e = ev[k].events;
        if (c->fd < 0)
            continue; /* closed earlier in this batch */
        if (c->state == ST_CONNECTING) {
            if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP))
                conn_on_connected(g, c);
            continue;
        }
        if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
            conn_on_readable(g, c);
        if (c->fd >= 0 && (e & EPOLLOUT))
            conn_flush(g, c);
    }
}

/* Keeps up to connect_batch WebSocket handshakes in flight; times out stuck ones. */
static void ws_pump(struct lg *g)
{
    while (g->ws_next < g->nws && g->ws_pending < (uint32_t)g->o.connect_batch)
        ws_start(g, &g->ws[g->ws_next++]);
    int64_t now = lg_now_ns();
    if (g->ws_pending > 0 && now - g->t_scan > 100000000) {
        g->t_scan = now;
        for (uint32_t i = 0; i < g->ws_next; i++) {
            struct conn *c = &g->ws[i];
            if ((c->state == ST_CONNECTING || c->state == ST_HANDSHAKE) && now > c->deadline) {
                if (c->state == ST_CONNECTING)
                    g->connect_failed++;
                else
                    g->handshake_failed++;
                ws_fail(g, c);
            }
        }
    }
}

static void http_pump_all(struct lg *g, uint64_t allowed)
{
    for (uint32_t k = 0; k < g->nhttp; k++) {
        struct conn *c = &g->http[k];
        if (c->state == ST_RECONNECT && conn_connect(g, c) < 0)
            http_lost(g, c);
        if (c->state == ST_OPEN)
            http_pump(g, c, allowed);
    }
}

static bool http_all_answered(const struct lg *g)
{
    for (uint32_t k = 0; k < g->nhttp; k++) {
        const struct conn *c = &g->http[k];
        if (c->state != ST_DEAD && (c->ring_count > 0 || c->next_i < msg_total(g)))
            return false;
    }
    return true;
}

/* --- RSS --- */

static long rss_read_kib(const struct lg *g, const char *field)
{
    long sum = 0;
    for (int k = 0; k < g->o.npids; k++) {
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%d/%s", (int)g->o.pids[k],
                 strcmp(field, "Pss:") == 0 ? "smaps_rollup" : "status");
        FILE *f = fopen(path, "r");
        if (f == NULL)
            return -1;
        long v = -1;
        while (fgets(line, sizeof(line), f) != NULL)
            if (strncmp(line, field, strlen(field)) == 0) {
                v = strtol(line + strlen(field), NULL, 10);
                break;
            }
        fclose(f);
        if (v < 0)
            return -1;
        sum += v;
    }
    return sum;
}

/* utime + stime in seconds summed over pids (--pid: every node), or -1 (none given, or one
 * is gone). */
static double cpu_pids_s(const pid_t *pids, int npids)
{
    double ticks = 0;
    long hz = sysconf(_SC_CLK_TCK);
    for (int k = 0; k < npids; k++) {
        char path[64], line[1024];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pids[k]);
        FILE *f = fopen(path, "r");
        if (f == NULL)
            return -1;
        bool got = fgets(line, sizeof(line), f) != NULL;
        fclose(f);
        char *p = got ? strrchr(line, ')') : NULL; /* comm may hold spaces */
        unsigned long ut, st;
        if (p == NULL ||
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
            return -1;
        ticks += (double)ut + (double)st;
    }
    return npids > 0 && hz > 0 ? ticks / (double)hz : -1;
}

static double cpu_server_s(const struct lg *g)
{
    return cpu_pids_s(g->o.pids, g->o.npids);
}

static double cpu_broker_s(const struct lg *g)
{
    return cpu_pids_s(g->o.bpids, g->o.nbpids);
}

/* This process's CPU seconds. */
static double cpu_self_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

/* --- scenarios --- */

static int lat_cmp(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t lat_pct(const struct lg *g, double p)
{
    if (g->nlat == 0)
        return 0;
    size_t i = (size_t)(p * (double)(g->nlat - 1) + 0.5);
    return g->lat[i];
}

/* Opens every ws conn and (for push scenarios) every HTTP conn; false on timeout. */
static bool lg_connect_all(struct lg *g, int64_t deadline)
{
    for (uint32_t k = 0; k < g->nhttp; k++)
        if (conn_connect(g, &g->http[k]) < 0)
            http_lost(g, &g->http[k]);
    while (lg_now_ns() < deadline) {
        ws_pump(g);
        http_pump_all(g, 0); /* reconnects only */
        bool http_ready = true;
        for (uint32_t k = 0; k < g->nhttp; k++)
            if (g->http[k].state != ST_OPEN && g->http[k].state != ST_DEAD)
                http_ready = false;
        if (g->ws_done == g->nws && http_ready)
            return true;
        lg_poll(g, 10);
    }
    return false;
}

/* Machine-wide kernel figures for the idle scenario: Slab kB (/proc/meminfo) and TCP
 * sockets in use (/proc/net/sockstat). Other processes move them too: a rough figure. */
static void kernel_read(long *slab_kib, long *tcp_inuse)
{
    char line[256];
    *slab_kib = *tcp_inuse = -1;
    FILE *f = fopen("/proc/meminfo", "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "Slab: %ld kB", slab_kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    f = fopen("/proc/net/sockstat", "r");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "TCP: inuse %ld", tcp_inuse) == 1)
            break;
    if (f != NULL)
        fclose(f);
}

static int lg_run_idle(struct lg *g, int64_t deadline)
{
    long rss_before = rss_read_kib(g, "VmRSS:");
    long pss_before = rss_read_kib(g, "Pss:");
    long slab_before, tcp_before, slab_after, tcp_after;
    kernel_read(&slab_before, &tcp_before);
    double srv_cpu0 = cpu_server_s(g);
    int64_t t0 = lg_now_ns();
    bool all = lg_connect_all(g, deadline);
    double connect_s = (double)(lg_now_ns() - t0) / 1e9;
    double srv_cpu = cpu_server_s(g);
    int64_t settle_end = lg_now_ns() + (int64_t)(g->o.settle_s * 1e9);
    while (lg_now_ns() < settle_end && lg_now_ns() < deadline)
        lg_poll(g, 20);
    long rss_after = rss_read_kib(g, "VmRSS:");
    long pss_after = rss_read_kib(g, "Pss:");
    kernel_read(&slab_after, &tcp_after);
    uint32_t open = g->ws_open;
    printf("connections=%" PRIu32 "\n", open);
    printf("connect_s=%.3f\n", connect_s);
    printf("handshakes_per_s=%.0f\n", connect_s > 0 ? (double)open / connect_s : 0);
    if (srv_cpu >= 0 && srv_cpu0 >= 0 && open > 0) /* accept + handshake + attach + 101 */
        printf("server_cpu_us_per_handshake=%.1f\n", (srv_cpu - srv_cpu0) * 1e6 / open);
    if (slab_before >= 0 && slab_after >= 0 && tcp_after > tcp_before) /* both ends count */
        printf("kernel_slab_per_tcp_socket_bytes=%ld\n",
               (slab_after - slab_before) * 1024 / (tcp_after - tcp_before));
    printf("connect_failed=%" PRIu64 "\n", g->connect_failed);
    printf("handshake_failed=%" PRIu64 "\n", g->handshake_failed);
    if (g->handshake_status)
        printf("handshake_status=%d\n", g->handshake_status);
    printf("ws_closed=%" PRIu64 "\n", g->ws_closed);
    printf("rss_before_kib=%ld\n", rss_before);
    printf("rss_after_kib=%ld\n", rss_after);
    if (rss_before >= 0 && rss_after >= 0 && open > 0)
        printf("rss_per_conn_bytes=%ld\n", (rss_after - rss_before) * 1024 / (long)open);
    else
        printf("rss_per_conn_bytes=NA\n");
    if (pss_before >= 0 && pss_after >= 0 && open > 0)
        printf("pss_per_conn_bytes=%ld\n", (pss_after - pss_before) * 1024 / (long)open);
    bool ok = all && open == g->nws && rss_before >= 0 && rss_after >= 0;
    if (g->o.npids == 0)
        printf("note=no --pid given, RSS not measured\n");
    return ok ? 0 : 1;
}

static int lg_run_push(struct lg *g, int64_t deadline)
{
    bool all = lg_connect_all(g, deadline);
    uint32_t receivers = g->ws_open;
    if (!all || receivers != g->nws) {
        printf("error=receivers_not_connected\n");
        printf("receivers=%" PRIu32 "\n", receivers);
        printf("connect_failed=%" PRIu64 "\n", g->connect_failed);
        printf("handshake_failed=%" PRIu64 "\n", g->handshake_failed);
        if (g->handshake_status)
            printf("handshake_status=%d\n", g->handshake_status);
        return 1;
    }
    uint64_t total = msg_total(g);
    double srv_cpu0 = cpu_server_s(g), self_cpu0 = cpu_self_s(), brk_cpu0 = cpu_broker_s(g);
    g->t_push_start = lg_now_ns();
    int64_t grace_end = 0;
    bool timed_out = false;
    for (;;) {
        int64_t now = lg_now_ns();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        uint64_t allowed = total;
        if (g->o.rate > 0) {
            double due = (double)(now - g->t_push_start) * g->o.rate / 1e9 + 1;
            allowed = due < (double)total ? (uint64_t)due : total;
        }
        http_pump_all(g, allowed);
        if (g->o.rate > 0 && g->tfd >= 0 && allowed < total) {
            /* wake exactly when the next push is due: epoll_wait's 1 ms granularity
             * would batch pushes and add up to a millisecond to every measurement */
            int64_t next = g->t_push_start + (int64_t)((double)allowed * 1e9 / g->o.rate);
            struct itimerspec its = {{0, 0}, {next / 1000000000, next % 1000000000}};
            timerfd_settime(g->tfd, TFD_TIMER_ABSTIME, &its, NULL);
        }
        if (http_all_answered(g)) {
            uint64_t expect = g->o.scen == SCEN_FANOUT ? g->accepted_n * receivers : g->accepted_n;
            if (g->delivered >= expect)
                break;
            if (grace_end == 0)
                grace_end = now + (int64_t)(g->o.grace_s * 1e9);
            if (now >= grace_end)
                break;
        }
        lg_poll(g, g->o.rate > 0 && g->tfd < 0 ? 1 : 20);
    }

    double srv_cpu = cpu_server_s(g), self_cpu = cpu_self_s() - self_cpu0;
    double brk_cpu = cpu_broker_s(g);
    brk_cpu = brk_cpu >= 0 && brk_cpu0 >= 0 ? brk_cpu - brk_cpu0 : -1;
    if (srv_cpu >= 0 && srv_cpu0 >= 0)
        srv_cpu -= srv_cpu0;
    else
        srv_cpu = -1;

    /* lost = accepted but never seen by a receiver that should have it */
    uint64_t lost = 0;
    for (uint64_t i = 0; i < total; i++) {
        if (!bit_get(g->accepted, i))
            continue;
        if (g->o.scen == SCEN_FANOUT) {
            for (uint32_t r = 0; r < g->nws; r++)
                if (!g->ws[r].failed && !bit_get(g->rx[r].seen, i))
                    lost++;
        } else {
            uint32_t r = (uint32_t)(i % (uint64_t)g->o.sessions);
            if (!bit_get(g->rx[r].seen, i / (uint64_t)g->o.sessions))
                lost++;
        }
    }
    uint64_t unanswered = g->sent - g->rejected - g->accepted_n;
    int64_t t_end = g->t_last_delivery > g->t_last_answer ? g->t_last_delivery : g->t_last_answer;
    double elapsed = g->t_first_send ? (double)(t_end - g->t_first_send) / 1e9 : 0;
    double ans_elapsed = g->t_first_send ? (double)(g->t_last_answer - g->t_first_send) / 1e9 : 0;
    qsort(g->lat, g->nlat, sizeof(*g->lat), lat_cmp);

    if (g->o.scen == SCEN_FANOUT)
        printf("sockets=%" PRIu32 "\n", receivers);
    else
        printf("sessions=%" PRIu32 "\n", receivers);
    if (g->o.scen != SCEN_FANOUT && g->naddr > 1) {
        /* how many sessions get their pushes through the node that holds their socket
         * (session r: socket on node r % n, pushes on connection r % conns, so on node
         * (r % conns) % n): 100 when n divides --conns */
        uint64_t same = 0;
        for (uint64_t r = 0; r < (uint64_t)g->o.sessions; r++)
            same += (r % g->nhttp) % g->naddr == r % g->naddr;
        printf("push_via_socket_node_pct=%.1f\n", 100.0 * (double)same / (double)g->o.sessions);
    }
    printf("sent=%" PRIu64 "\n", g->sent);
    printf("accepted=%" PRIu64 "\n", g->accepted_n);
    printf("rejected=%" PRIu64 "\n", g->rejected);
    if (g->rejected)
        printf("last_reject_status=%d\n", g->last_reject_status);
    printf("unanswered=%" PRIu64 "\n", unanswered);
    printf("resent=%" PRIu64 "\n", g->resent);
    if (g->o.scen == SCEN_FANOUT)
        printf("expected=%" PRIu64 "\n", g->accepted_n * receivers);
    printf("delivered=%" PRIu64 "\n", g->delivered);
    printf("lost=%" PRIu64 "\n", lost);
    printf("duplicated=%" PRIu64 "\n", g->duplicated);
    printf("out_of_order=%" PRIu64 "\n", g->out_of_order);
    printf("misrouted=%" PRIu64 "\n", g->misrouted);
    printf("malformed=%" PRIu64 "\n", g->malformed);
    printf("ws_closed=%" PRIu64 "\n", g->ws_closed);
    if (g->last_close_code)
        printf("last_close_code=%d\n", g->last_close_code);
    printf("protocol_errors=%" PRIu64 "\n", g->ws_protocol_errors);
    printf("elapsed_s=%.3f\n", elapsed);
    printf("accepted_per_s=%.0f\n", ans_elapsed > 0 ? (double)g->accepted_n / ans_elapsed : 0);
    printf("delivered_per_s=%.0f\n", elapsed > 0 ? (double)g->delivered / elapsed : 0);
    if (srv_cpu >= 0) {
        printf("server_cpu_s=%.2f\n", srv_cpu);
        printf("server_cpu_us_per_delivery=%.2f\n",
               g->delivered ? srv_cpu * 1e6 / (double)g->delivered : 0);
    }
    if (brk_cpu >= 0) { /* the broker's servers (redis-server, nats-server, ...) */
        printf("broker_cpu_s=%.2f\n", brk_cpu);
        printf("broker_cpu_us_per_push=%.2f\n",
               g->accepted_n ? brk_cpu * 1e6 / (double)g->accepted_n : 0);
    }
    printf("client_cpu_s=%.2f\n", self_cpu);
    printf("p50_us=%" PRIu32 "\n", lat_pct(g, 0.50));
    printf("p99_us=%" PRIu32 "\n", lat_pct(g, 0.99));
    printf("max_us=%" PRIu32 "\n", g->nlat ? g->lat[g->nlat - 1] : 0);
    if (timed_out)
        printf("error=timeout\n");
    bool ok = !timed_out && lost == 0 && g->duplicated == 0 && g->out_of_order == 0 &&
              g->misrouted == 0 && g->malformed == 0 && g->rejected == 0 && unanswered == 0 &&
              g->ws_closed == 0 && g->ws_protocol_errors == 0 && g->http_gaveup == 0 &&
              g->sent == total;
    return ok ? 0 : 1;
}

/* --- setup --- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loadgen --scenario queue|latency|fanout|idle [options]\n"
            "  --url-host H      server address (default 127.0.0.1)\n"
            "  --port P[,P...]   server port (default 8080); several: gateway nodes sharing\n"
            "                    a broker, socket i on port i %% n, push connection j on\n"
            "                    port j %% n (also --ports)\n"
            "  --sessions N      queue/latency: receiving sessions (default 1000)\n"
            "  --messages N      pushes (queue 100000, latency 25000) or publishes (fanout "
            "200)\n"
            "  --size B          body bytes, >= %d (default 64)\n"
            "  --conns N         HTTP push connections (default 32; fanout 1)\n"
            "  --pipeline D      outstanding requests per push connection (default 8)\n"
            "  --rate R          latency: pushes per second (default 5000)\n"
            "  --sockets N       fanout: sockets subscribed to the topic (default 5000)\n"
            "  --topic T         fanout topic (default bench)\n"
            "  --idle N          idle: WebSocket connections (default 10000)\n"
            "  --pid PID[,PID]   server processes (every node): CPU time and VmRSS summed\n"
            "  --broker-pid PID[,PID]  broker processes: their CPU per push is reported\n"
            "  --nchan           nchan routes (fanout sockets on /topic/T)\n"
            "  --label L         target name printed as target= (default wsgate|nchan)\n"
            "  --prefix P        session key prefix (default lg<pid>-<scenario>)\n"
            "  --timeout S       whole-scenario deadline in seconds (default 60)\n"
            "  --grace S         wait for deliveries after the last answer (default 5)\n"
            "  --connect-batch N handshakes in flight at once (default 200)\n"
            "  --settle S        idle: wait before reading RSS (default 2)\n"
            "  --push-token T    send Authorization: Bearer T with every push/publish\n"
            "  --jwt-secret S    every handshake carries an HS256 JWT (sub = its session)\n"
            "                    minted with S, as Sec-WebSocket-Protocol: bearer, <jwt>\n"
            "exit: 0 ok, 1 lost/duplicated/out-of-order/refused/failed, 2 usage\n",
            LG_BODY_MIN);
}

static bool parse_long(const char *s, long min, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < min)
        return false;
    *out = v;
    return true;
}

static bool parse_double(const char *s, double min, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *s == '\0' || *end != '\0' || v < min)
        return false;
    *out = v;
    return true;
}

static bool key_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 100)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("_:.-", s[i]))
            return false;
    return true;
}

/* "PID[,PID...]" appended to pids (at most LG_MAX_PIDS in all). */
static bool parse_pids(const char *arg, pid_t *pids, int *npids)
{
    bool ok = true;
    char *save = NULL, *copy = strdup(arg);
    for (char *t = strtok_r(copy, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        long v;
        if (!parse_long(t, 1, &v) || *npids == LG_MAX_PIDS)
            ok = false;
        else
            pids[(*npids)++] = (pid_t)v;
    }
    free(copy);
    return ok;
}

static int opts_parse(struct opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"url-host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"ports", required_argument, NULL, 'p'},
        {"scenario", required_argument, NULL, 's'},
        {"sessions", required_argument, NULL, 'S'},
        {"messages", required_argument, NULL, 'm'},
        {"size", required_argument, NULL, 'b'},
        {"conns", required_argument, NULL, 'c'},
        {"rate", required_argument, NULL, 'r'},
        {"sockets", required_argument, NULL, 'k'},
        {"topic", required_argument, NULL, 't'},
        {"idle", required_argument, NULL, 'i'},
        {"pid", required_argument, NULL, 'P'},
        {"broker-pid", required_argument, NULL, 'K'},
        {"nchan", no_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 'T'},
        {"grace", required_argument, NULL, 'g'},
        {"pipeline", required_argument, NULL, 'd'},
        {"connect-batch", required_argument, NULL, 'B'},
        {"settle", required_argument, NULL, 'e'},
        {"label", required_argument, NULL, 'l'},
        {"prefix", required_argument, NULL, 'x'},
        {"push-token", required_argument, NULL, 'A'},
        {"jwt-secret", required_argument, NULL, 'J'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *scen = NULL, *prefix = NULL;
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    snprintf(o->portlist, sizeof(o->portlist), "8080");
    o->sessions = o->messages = o->conns = o->sockets = o->idle = -1;
    o->size = 64;
    o->rate = -1;
    o->topic = "bench";
    o->timeout_s = 60;
    o->grace_s = 5;
    o->pipeline = 8;
    o->connect_batch = 200;
    o->settle_s = 2;
    int ch;
    bool bad = false;
    while ((ch = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (ch) {
        case 'H':
            o->host = optarg;
            break;
        case 'p':
            bad |= snprintf(o->portlist, sizeof(o->portlist), "%s", optarg) >=
                   (int)sizeof(o->portlist);
            break;
        case 's':
            scen = optarg;
            break;
        case 'S':
            bad |= !parse_long(optarg, 1, &o->sessions);
            break;
        case 'm':
            bad |= !parse_long(optarg, 1, &o->messages);
            break;
        case 'b':
            bad |= !parse_long(optarg, LG_BODY_MIN, &o->size);
            break;
        case 'c':
            bad |= !parse_long(optarg, 1, &o->conns);
            break;
        case 'r':
            bad |= !parse_double(optarg, 0, &o->rate);
            break;
        case 'k':
            bad |= !parse_long(optarg, 1, &o->sockets);
            break;
        case 't':
            o->topic = optarg;
            break;
        case 'i':
            bad |= !parse_long(optarg, 1, &o->idle);
            break;
        case 'P':
            bad |= !parse_pids(optarg, o->pids, &o->npids);
            break;
        case 'K':
            bad |= !parse_pids(optarg, o->bpids, &o->nbpids);
            break;
        case 'n':
            o->nchan = true;
            break;
        case 'T':
            bad |= !parse_double(optarg, 1, &o->timeout_s);
            break;
        case 'g':
            bad |= !parse_double(optarg, 0, &o->grace_s);
            break;
        case 'd':
            bad |= !parse_long(optarg, 1, &o->pipeline);
            break;
        case 'B':
            bad |= !parse_long(optarg, 1, &o->connect_batch);
            break;
        case 'e':
            bad |= !parse_double(optarg, 0, &o->settle_s);
            break;
        case 'l':
            o->label = optarg;
            break;
        case 'x':
            prefix = optarg;
            break;
        case 'A':
            o->push_token = optarg;
            break;
        case 'J':
            o->jwt_secret = optarg;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            bad = true;
            break;
        }
    }
    if (bad || optind != argc || scen == NULL) {
        usage(stderr);
        return -1;
    }
    /* "P1,P2,...": split in place; an empty entry or more than LG_MAX_PORTS is an error */
    o->nports = 0;
    for (char *t = o->portlist, *end; t != NULL; t = end) {
        end = strchr(t, ',');
        if (end != NULL)
            *end++ = '\0';
        if (*t == '\0' || o->nports == LG_MAX_PORTS) {
            fprintf(stderr, "loadgen: --port: 1..%d non-empty ports, comma-separated\n",
                    LG_MAX_PORTS);
            return -1;
        }
        o->ports[o->nports++] = t;
    }
    static const char *const names[] = {"queue", "latency", "fanout", "idle"};
    o->scen_name = NULL;
    for (int k = 0; k < 4; k++)
        if (strcmp(scen, names[k]) == 0) {
            o->scen = (enum lg_scenario)k;
            o->scen_name = names[k];
        }
    if (o->scen_name == NULL) {
        fprintf(stderr, "loadgen: unknown scenario '%s'\n", scen);
        return -1;
    }
    if (o->sessions < 0)
        o->sessions = 1000;
    if (o->messages < 0)
        o->messages = o->scen == SCEN_QUEUE ? 100000 : o->scen == SCEN_LATENCY ? 25000 : 200;
    if (o->conns < 0)
        o->conns = o->scen == SCEN_FANOUT ? 1 : 32;
    if (o->rate < 0)
        o->rate = o->scen == SCEN_LATENCY ? 5000 : 0;
    if (o->scen != SCEN_LATENCY)
        o->rate = 0; /* queue and fanout go as fast as the pipeline allows */
    if (o->sockets < 0)
        o->sockets = 5000;
    if (o->idle < 0)
        o->idle = 10000;
    if (o->scen == SCEN_FANOUT && o->conns != 1) {
        /* one publisher connection: its pipeline fixes the order every socket must see */
        fprintf(stderr, "loadgen: fanout publishes on one connection (--conns 1)\n");
        return -1;
    }
    if (o->messages > UINT32_MAX || o->sessions > 10000000 || o->pipeline > 4096) {
        fprintf(stderr, "loadgen: --messages/--sessions/--pipeline too large\n");
        return -1;
    }
    if ((o->push_token != NULL && strlen(o->push_token) > 256) ||
        (o->jwt_secret != NULL && (strlen(o->jwt_secret) == 0 || strlen(o->jwt_secret) > 256))) {
        fprintf(stderr, "loadgen: --push-token/--jwt-secret: 1..256 bytes\n");
        return -1;
    }
    if (!key_valid(o->topic)) {
        fprintf(stderr, "loadgen: bad topic '%s'\n", o->topic);
        return -1;
    }
    if (prefix != NULL && !key_valid(prefix)) {
        fprintf(stderr, "loadgen: bad prefix '%s'\n", prefix);
        return -1;
    }
    if (prefix != NULL)
        snprintf(o->prefix, sizeof(o->prefix), "%s", prefix);
    else
        snprintf(o->prefix, sizeof(o->prefix), "lg%d-%c", (int)getpid(), o->scen_name[0]);
    if (o->label == NULL)
        o->label = o->nchan ? "nchan" : "wsgate";
    return 0;
}

/* Raises RLIMIT_NOFILE's soft limit to the hard one; fails if `need` fds won't fit. */
static int fd_limit_raise(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -errno;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            return -errno;
    }
    if (rl.rlim_cur != RLIM_INFINITY && (rlim_t)need + 64 > rl.rlim_cur) {
        fprintf(stderr, "loadgen: need %ld fds, RLIMIT_NOFILE is %lu\n", need + 64,
                (unsigned long)rl.rlim_cur);
        return -EMFILE;
    }
    return 0;
}

static int lg_setup(struct lg *g)
{
    struct opts *o = &g->o;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    g->naddr = (uint32_t)o->nports;
    for (uint32_t k = 0; k < g->naddr; k++) {
        struct addrinfo *ai = NULL;
        int rc = getaddrinfo(o->host, o->ports[k], &hints, &ai);
        if (rc != 0) {
            fprintf(stderr, "loadgen: %s:%s: %s\n", o->host, o->ports[k], gai_strerror(rc));
            return -1;
        }
        memcpy(&g->addr[k], ai->ai_addr, ai->ai_addrlen);
        g->addrlen[k] = ai->ai_addrlen;
        freeaddrinfo(ai);
        snprintf(g->hostport[k], sizeof(g->hostport[k]), strchr(o->host, ':') ? "[%s]:%s" : "%s:%s",
                 o->host, o->ports[k]);
    }
    g->rnd = (uint64_t)lg_now_ns() ^ ((uint64_t)getpid() << 32) ^ 0x9e3779b97f4a7c15ull;

    switch (o->scen) {
    case SCEN_QUEUE:
    case SCEN_LATENCY:
        g->nws = (uint32_t)o->sessions;
        break;
    case SCEN_FANOUT:
        g->nws = (uint32_t)o->sockets;
        break;
    case SCEN_IDLE:
        g->nws = (uint32_t)o->idle;
        break;
    }
    g->nhttp = o->scen == SCEN_IDLE ? 0 : (uint32_t)o->conns;
    if (fd_limit_raise((long)g->nws + (long)g->nhttp) < 0)
        return -1;
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    if (g->ep < 0) {
        perror("loadgen: epoll_create1");
        return -1;
    }
    g->tfd = -1;
    if (o->rate > 0) {
        prctl(PR_SET_TIMERSLACK, 1000UL); /* 1 us: the default 50 us slack skews latency */
        g->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        g->tmark = lg_calloc(1, sizeof(*g->tmark));
        g->tmark->fd = -1; /* lg_poll skips it; re-arming resets the timerfd */
        struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = g->tmark};
        if (g->tfd >= 0 && epoll_ctl(g->ep, EPOLL_CTL_ADD, g->tfd, &ev) < 0) {
            close(g->tfd);
            g->tfd = -1;
        }
    }
    g->ws = lg_calloc(g->nws, sizeof(*g->ws));
    for (uint32_t k = 0; k < g->nws; k++) {
        g->ws[k].fd = -1;
        g->ws[k].kind = CONN_WS;
        g->ws[k].idx = k;
    }
    g->http = lg_calloc(g->nhttp, sizeof(*g->http));
    for (uint32_t k = 0; k < g->nhttp; k++) {
        struct conn *c = &g->http[k];
        c->fd = -1;
        c->kind = CONN_HTTP;
        c->idx = k;
        c->ring = lg_calloc((size_t)o->pipeline, sizeof(*c->ring));
        http_next_advance(g, c);
    }
    if (o->scen != SCEN_IDLE) {
        uint64_t total = msg_total(g);
        g->accepted = lg_calloc((size_t)(total / 8 + 1), 1);
        g->rx = lg_calloc(g->nws, sizeof(*g->rx));
        for (uint32_t r = 0; r < g->nws; r++) {
            uint64_t nexp = total;
            if (o->scen != SCEN_FANOUT)
                nexp = total / (uint64_t)o->sessions + (r < total % (uint64_t)o->sessions);
            g->rx[r].nexp = nexp;
            g->rx[r].seen = lg_calloc((size_t)(nexp / 8 + 1), 1);
        }
    }
    return 0;
}

static void lg_free(struct lg *g)
{
    if (g->tfd >= 0)
        close(g->tfd);
    free(g->tmark);
    for (uint32_t k = 0; k < g->nws; k++) {
        conn_close(g, &g->ws[k], ST_DEAD);
        buf_free(&g->ws[k].in);
        buf_free(&g->ws[k].out);
        buf_free(&g->ws[k].frag);
        if (g->rx != NULL)
            free(g->rx[k].seen);
    }
    for (uint32_t k = 0; k < g->nhttp; k++) {
        conn_close(g, &g->http[k], ST_DEAD);
        buf_free(&g->http[k].in);
        buf_free(&g->http[k].out);
        free(g->http[k].ring);
    }
    free(g->ws);
    free(g->http);
    free(g->rx);
    free(g->accepted);
    free(g->lat);
    if (g->ep >= 0)
        close(g->ep);
    EVP_MAC_CTX_free(g->jwt_mac);
}

int main(int argc, char **argv)
{
    struct lg *g = lg_calloc(1, sizeof(*g)); /* owned: freed at the end of main */
    g->ep = -1;
    g->tfd = -1;
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (opts_parse(&g->o, argc, argv) < 0 ||
        (g->o.jwt_secret != NULL &&
         (g->jwt_mac = hmac_sha256_new(g->o.jwt_secret, strlen(g->o.jwt_secret))) == NULL) ||
        lg_setup(g) < 0) {
        lg_free(g);
        free(g);
        return 2;
    }
    printf("scenario=%s\n", g->o.scen_name);
    printf("target=%s\n", g->o.label);
    printf("nodes=%" PRIu32 "\n", g->naddr);
    if (g->o.scen != SCEN_IDLE) {
        printf("size=%ld\n", g->o.size);
        printf("conns=%ld\n", g->o.conns);
        printf("pipeline=%ld\n", g->o.pipeline);
        if (g->o.rate > 0)
            printf("rate=%.0f\n", g->o.rate);
    }
    int64_t deadline = lg_now_ns() + (int64_t)(g->o.timeout_s * 1e9);
    int rc = g->o.scen == SCEN_IDLE ? lg_run_idle(g, deadline) : lg_run_push(g, deadline);
    if (g->pings)
        printf("pings=%" PRIu64 "\n", g->pings);
    printf("result=%s\n", rc == 0 ? "ok" : "FAIL");
    lg_free(g);
    free(g);
    return rc;
}
