/* redis_conn_url.c — parsing of the [redis] url (redis://[user][:password@]host[:port][/db],
 * percent-decoded user and password, IPv6 literals in brackets) for redis_conn.h. Pure: no
 * I/O, no allocation. Does NOT resolve host names (redis_conn.c does, on the loop). Any
 * thread. */
#include <string.h>
#include <strings.h>

#include "redis_conn.h"

static int rconn_hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n) into out (size cap). 0 or UV_EINVAL. */
static int rconn_pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return UV_EINVAL;
            int h = rconn_hexval(s[i + 1]), l = rconn_hexval(s[i + 2]);
            if (h < 0 || l < 0)
                return UV_EINVAL;
            c = h * 16 + l;
            i += 2;
        }
        if (o + 1 >= cap)
            return UV_EINVAL;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

static int rconn_parse_uint(const char *s, size_t n, long max, int *out)
{
    long v = 0;
    if (n == 0 || n > 9)
        return UV_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return UV_EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return UV_EINVAL;
    *out = (int)v;
    return 0;
}

int rconn_url_parse(const char *url, struct rconn_url *out)
{
    static const char scheme[] = "redis://";
    const char *p, *at, *end, *h, *he;
    memset(out, 0, sizeof(*out));
    out->port = 6379;
    if (strncasecmp(url, scheme, sizeof(scheme) - 1) != 0)
        return UV_EINVAL;
    p = url + sizeof(scheme) - 1;
    end = p + strcspn(p, "/?#");
    /* userinfo as redis-cli reads it: "user:pass@", ":pass@" or "pass@" */
    at = memchr(p, '@', (size_t)(end - p));
    if (at == NULL) {
        /* an '@' after a '/' would belong to the password; accept "redis://:p/w@h" */
        const char *at2 = strrchr(p, '@');
        if (at2 != NULL) {
            at = at2;
            end = at + 1 + strcspn(at + 1, "/?#");
        }
    }
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon != NULL) {
            if (rconn_pct_decode(p, (size_t)(colon - p), out->user, sizeof(out->user)) < 0 ||
                rconn_pct_decode(colon + 1, (size_t)(at - colon - 1), out->pass,
                                 sizeof(out->pass)) < 0)
                return UV_EINVAL;
        } else if (rconn_pct_decode(p, (size_t)(at - p), out->pass, sizeof(out->pass)) < 0) {
            return UV_EINVAL;
        }
        p = at + 1;
    }
    /* host[:port] or [v6][:port] */
    if (*p == '[') {
        h = p + 1;
        he = memchr(h, ']', (size_t)(end - h));
        if (he == NULL)
            return UV_EINVAL;
        p = he + 1;
    } else {
        h = p;
        he = memchr(p, ':', (size_t)(end - p));
        if (he == NULL)
            he = end;
        p = he;
    }
    if (he == h || (size_t)(he - h) >= sizeof(out->host))
        return UV_EINVAL;
    memcpy(out->host, h, (size_t)(he - h));
    out->host[he - h] = '\0';
    if (p < end) {
        if (*p != ':' || rconn_parse_uint(p + 1, (size_t)(end - p - 1), 65535, &out->port) < 0 ||
            out->port == 0)
            return UV_EINVAL;
    }
    if (*end == '/' && end[1] != '\0' && end[1] != '?' && end[1] != '#') {
        size_t n = strcspn(end + 1, "?#");
        if (rconn_parse_uint(end + 1, n, 1 << 20, &out->db) < 0)
            return UV_EINVAL;
    }
    return 0;
}
