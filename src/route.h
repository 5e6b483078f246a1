/* route.h — the request target -> route mapping (/ws/{S}, /sse/{S}, /push/{S},
 * /publish/{T}, health, metrics, browser client; pure: no I/O, no allocation; safe from
 * any thread). Key validation is util.h's key_valid(). */
#ifndef WSGATE_ROUTE_H
#define WSGATE_ROUTE_H

#include <stddef.h>

enum route_id {
    ROUTE_NONE = 0,
    ROUTE_WS,        /* /ws/{session} */
    ROUTE_SSE,       /* /sse/{session} (Server-Sent Events) */
    ROUTE_PUSH,      /* /push/{session} */
    ROUTE_PUBLISH,   /* /publish/{topic} */
    ROUTE_HEALTHZ,   /* /healthz */
    ROUTE_READYZ,    /* /readyz */
    ROUTE_METRICS,   /* /metrics */
    ROUTE_CLIENT_JS, /* /wsgate.js ([server] demo = on) */
    ROUTE_DEMO,      /* /demo/ and /demo ([server] demo = on) */
    ROUTE_NOTFOUND,  /* anything else */
};

struct route {
    enum route_id id;
    const char *key;   /* borrowed from the target: {session}/{topic}, not NUL-terminated */
    size_t key_len;    /* 0 for routes without a key (and for "/push/") */
    const char *query; /* borrowed: after '?', NUL-terminated with the target, or NULL */
};

/* Map a NUL-terminated request target (path[?query]). Keys are taken as sent, without
 * percent-decoding; the caller validates them. */
void route_parse(const char *target, struct route *out);
/* The methods a route allows, for 405's Allow header ("GET", "POST", "GET, HEAD"). */
const char *route_allow(enum route_id id);

#endif
