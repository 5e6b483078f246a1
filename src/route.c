/* route.c — request target -> route (include/route.h). Pure; any thread. */
#include <string.h>

#include "route.h"

void route_parse(const char *target, struct route *out)
{
    static const struct {
        const char *prefix;
        enum route_id id;
    } keyed[] = {{"/ws/", ROUTE_WS}, {"/sse/", ROUTE_SSE}, {"/push/", ROUTE_PUSH}, {"/publish/", ROUTE_PUBLISH}};
    static const struct {
        const char *path;
        enum route_id id;
    } fixed[] = {{"/healthz", ROUTE_HEALTHZ}, {"/readyz", ROUTE_READYZ}, {"/metrics", ROUTE_METRICS},
                 {"/wsgate.js", ROUTE_CLIENT_JS}, {"/demo/", ROUTE_DEMO}, {"/demo", ROUTE_DEMO}};
    const char *q = strchr(target, '?');
    size_t plen = q ? (size_t)(q - target) : strlen(target);
    out->query = q ? q + 1 : NULL;
    out->key = NULL;
    out->key_len = 0;
    for (size_t i = 0; i < sizeof(keyed) / sizeof(keyed[0]); i++) {
        size_t l = strlen(keyed[i].prefix);
        if (plen >= l && strncmp(target, keyed[i].prefix, l) == 0) {
            out->id = keyed[i].id;
            out->key = target + l;
            out->key_len = plen - l;
            return;
        }
    }
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (plen == strlen(fixed[i].path) && strncmp(target, fixed[i].path, plen) == 0) {
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
