/* route.c — request target -> route (src/route.h). Pure; any thread. */
#include <string.h>

#include "route.h"

#define ROUTE_LIT(s) s, sizeof(s) - 1

void route_parse(const char *target, struct route *out)
{
    /* most frequent first; lengths computed at compile time, one memcmp per candidate */
    static const struct {
        const char *prefix;
        size_t len;
        enum route_id id;
    } keyed[] = {{ROUTE_LIT("/push/"), ROUTE_PUSH},
                 {ROUTE_LIT("/ws/"), ROUTE_WS},
                 {ROUTE_LIT("/publish/"), ROUTE_PUBLISH},
                 {ROUTE_LIT("/sse/"), ROUTE_SSE}};
    static const struct {
        const char *path;
        size_t len;
        enum route_id id;
    } fixed[] = {{ROUTE_LIT("/healthz"), ROUTE_HEALTHZ},   {ROUTE_LIT("/readyz"), ROUTE_READYZ},
                 {ROUTE_LIT("/metrics"), ROUTE_METRICS},   {ROUTE_LIT("/wsgate.js"), ROUTE_CLIENT_JS},
                 {ROUTE_LIT("/demo/"), ROUTE_DEMO},        {ROUTE_LIT("/demo"), ROUTE_DEMO}};
    const char *q = strchr(target, '?');
    size_t plen = q ? (size_t)(q - target) : strlen(target);
    out->query = q ? q + 1 : NULL;
    out->key = NULL;
    out->key_len = 0;
    for (size_t i = 0; i < sizeof(keyed) / sizeof(keyed[0]); i++) {
        if (plen >= keyed[i].len && memcmp(target, keyed[i].prefix, keyed[i].len) == 0) {
            out->id = keyed[i].id;
            out->key = target + keyed[i].len;
            out->key_len = plen - keyed[i].len;
            return;
        }
    }
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (plen == fixed[i].len && memcmp(target, fixed[i].path, plen) == 0) {
            out->id = fixed[i].id;
            return;
        }
    }
    out->id = ROUTE_NOTFOUND;
}

const char *route_allow(enum route_id id)
{
    switch (id) {
    case ROUTE_WS:
    case ROUTE_SSE:
        return "GET";
    case ROUTE_PUSH:
    case ROUTE_PUBLISH:
        return "POST";
    case ROUTE_HEALTHZ:
    case ROUTE_READYZ:
    case ROUTE_METRICS:
    case ROUTE_CLIENT_JS:
    case ROUTE_DEMO:
        return "GET, HEAD";
    default:
        return NULL;
    }
}
