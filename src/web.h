/* web.h — the browser files the gateway serves when [server] demo = on (web/ in the
 * repository, compiled in by the Makefile: build/gen/web_assets.c). Private to the core.
 * Read-only data: any thread. */
#ifndef WSGATE_WEB_H
#define WSGATE_WEB_H

#include <stddef.h>

struct web_asset {
    const char *name; /* "client" (/wsgate.js) or "demo" (/demo/) */
    const char *type; /* Content-Type */
    const char *data; /* the file's bytes */
    size_t len;
};

/* The asset called name ("client", "demo"), or NULL. */
const struct web_asset *web_asset_get(const char *name);

#endif
