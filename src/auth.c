/* auth.c — access control (see src/auth.h): bearer tokens kept as
 * HMAC-SHA256 digests under a per-process random key and compared with CRYPTO_memcmp
 * (the last push token that passed is kept too and compared first, in constant time);
 * client JWTs verified with OpenSSL (HMAC, EVP_DigestVerify) and their claims read with
 * jansson, after the header's alg was matched against the configured key types; origin
 * lists; the client IP behind trusted proxies. Client JWTs: auth_jwt.c.
 * Does NOT answer requests, log token bytes or count per-IP usage (iplimit.c).
 * Loop thread only; auth_mint has no state and runs anywhere. */
#include "auth.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "hmac.h"
#include "util.h"

/* --- small helpers --- */

static void auth_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void auth_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int auth_is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Strip spaces, tabs, CR and LF from both ends of s[0..*len). */
static void auth_trim(const char **s, size_t *len)
{
    const char *p = *s;
    size_t n = *len;

    while (n > 0 && (auth_is_ows(p[0]) || p[0] == '\r' || p[0] == '\n')) {
        p++;
        n--;
    }
    while (n > 0 && (auth_is_ows(p[n - 1]) || p[n - 1] == '\r' || p[n - 1] == '\n'))
        n--;
    *s = p;
    *len = n;
}

/* 1 when s[0..len) holds a space, a control byte or DEL: such a token could never be
 * sent as "Bearer <token>". */
static int auth_has_space_or_ctl(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f)
            return 1;
    }
    return 0;
}

int auth_eq(const char *s, size_t len, const char *w, size_t wl)
{
    return len == wl && (len == 0 || memcmp(s, w, len) == 0);
}

/* Read a whole regular file of at most max bytes into a malloc'd, NUL-terminated buffer.
 * Returns 0, or a negative UV_E* (UV_EFBIG when over max, UV_EINVAL when not a file). */
static int auth_read_file(const char *path, size_t max, char **out, size_t *out_len)
{
    struct stat st;
    char *buf = NULL;
    size_t n = 0;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = UV_EINVAL;
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc = UV_EFBIG;
        goto out;
    }
    /* Sized by fstat, but read until EOF with a bound: the file may change meanwhile. */
    if ((buf = malloc(max + 1)) == NULL) {
        rc = UV_ENOMEM;
        goto out;
    }
    for (;;) {
        ssize_t r = read(fd, buf + n, max + 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            goto out;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > max) {
            rc = UV_EFBIG;
            goto out;
        }
    }
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    buf = NULL;
out:
    if (buf != NULL) {
        OPENSSL_cleanse(buf, n);
        free(buf);
    }
    close(fd);
    return rc;
}

/* --- token digests --- */

/* A growable array of digests while a token set is being built. */
struct auth_dvec {
    uint8_t (*d)[AUTH_DIGEST_LEN]; /* owned */
    size_t n;                      /* used */
    size_t cap;                    /* allocated */
};

int auth_hmac(EVP_MAC_CTX *ctx, const void *p, size_t len, uint8_t out[AUTH_DIGEST_LEN])
{
    return hmac_sha256(ctx, p, len, out) < 0 ? UV_ENOMEM : 0;
}

static int auth_dvec_add(struct auth_dvec *v, EVP_MAC_CTX *mac, const char *tok, size_t len)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 8;
        void *d = realloc(v->d, cap * sizeof *v->d);
        if (d == NULL)
            return UV_ENOMEM;
        v->d = d;
        v->cap = cap;
    }
    if (auth_hmac(mac, tok, len, v->d[v->n]) < 0)
        return UV_ENOMEM;
    v->n++;
    return 0;
}

static void auth_dvec_free(struct auth_dvec *v)
{
    free(v->d);
    v->d = NULL;
    v->n = v->cap = 0;
}

/* 1 when the digest of tok equals one of the n digests at set; every one is compared. */
static int auth_digest_match(const struct auth *a, const char *tok, size_t len, const uint8_t *set,
                             size_t n)
{
    uint8_t d[AUTH_DIGEST_LEN];
    int hit = 0;

    if (auth_hmac(a->tok_mac, tok, len, d) < 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        hit |= CRYPTO_memcmp(d, set + i * AUTH_DIGEST_LEN, AUTH_DIGEST_LEN) == 0;
    return hit;
}

/* Add the comma-separated tokens of s to v. */
static int auth_tokens_parse_list(struct auth_dvec *v, EVP_MAC_CTX *mac, const char *s, char *err,
                                  size_t errlen)
{
    const char *p = s;
    int rc;

    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        const char *t = p;
        size_t tl = len;
        auth_trim(&t, &tl);
        if (tl > 0) {
            if (auth_has_space_or_ctl(t, tl)) {
                auth_err(err, errlen,
                         "key 'auth.push_tokens': token %zu holds a space or control byte",
                         v->n + 1);
                return UV_EINVAL;
            }
            if ((rc = auth_dvec_add(v, mac, t, tl)) < 0) {
                auth_err(err, errlen, "key 'auth.push_tokens': out of memory");
                return rc;
            }
        }
        p += len;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* Add the tokens of the file at path (one per line, '#' comments, blanks) to v. */
static int auth_tokens_load_file(struct auth_dvec *v, EVP_MAC_CTX *mac, const char *path, char *err,
                                 size_t errlen)
{
    char *buf = NULL;
    size_t len = 0, line = 0;
    int rc = auth_read_file(path, AUTH_FILE_MAX, &buf, &len);

    if (rc < 0) {
        auth_err(err, errlen, "key 'auth.push_tokens_file': cannot read '%s': %s", path,
                 uv_strerror(rc));
        return rc;
    }
    for (size_t i = 0; i < len;) {
        const char *nl = memchr(buf + i, '\n', len - i);
        size_t ll = nl != NULL ? (size_t)(nl - (buf + i)) : len - i;
        const char *t = buf + i;
        size_t tl = ll;
        line++;
        i += ll + 1;
        auth_trim(&t, &tl);
        if (tl == 0 || t[0] == '#')
            continue;
        if (auth_has_space_or_ctl(t, tl)) {
            auth_err(err, errlen,
                     "key 'auth.push_tokens_file': '%s' line %zu: token holds a space or "
                     "control byte",
                     path, line);
            rc = UV_EINVAL;
            break;
        }
        if ((rc = auth_dvec_add(v, mac, t, tl)) < 0) {
            auth_err(err, errlen, "key 'auth.push_tokens_file': out of memory");
            break;
        }
    }
    OPENSSL_cleanse(buf, len);
    free(buf);
    return rc;
}

/* --- lists of origins --- */

static void auth_list_free(struct auth_list *l)
{
    free(l->buf);
    free(l->item);
    free(l->len);
    memset(l, 0, sizeof *l);
}

/* One origin as a browser serializes it: "null", or scheme "://" host[:port] in lowercase
 * with no path, query, fragment or trailing '/'. */
static int auth_origin_valid(const char *s, size_t len)
{
    const char *sep;

    if (auth_eq(s, len, "null", 4))
        return 1;
    if (auth_has_space_or_ctl(s, len))
        return 0;
    sep = memmem(s, len, "://", 3);
    if (sep == NULL || sep == s || (size_t)(sep - s) + 3 == len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if ((c >= 'A' && c <= 'Z') || (s + i >= sep + 3 && (c == '/' || c == '?' || c == '#')))
            return 0;
    }
    return 1;
}

/* Parse "*", "" or a comma-separated list of origins for the key named key. */
static int auth_list_parse(struct auth_list *l, const char *s, const char *key, char *err,
                           size_t errlen)
{
    size_t cap = 1, n = 0;
    const char *t = s;
    size_t tl = strlen(s);
    char *p;

    memset(l, 0, sizeof *l);
    auth_trim(&t, &tl);
    if (auth_eq(t, tl, "*", 1)) {
        l->any = 1;
        return 0;
    }
    if (tl == 0)
        return 0;
    for (const char *q = s; *q != '\0'; q++)
        cap += *q == ',';
    l->buf = strdup(s);
    l->item = calloc(cap, sizeof *l->item);
    l->len = calloc(cap, sizeof *l->len);
    if (l->buf == NULL || l->item == NULL || l->len == NULL) {
        auth_list_free(l);
        auth_err(err, errlen, "key '%s': out of memory", key);
        return UV_ENOMEM;
    }
    for (p = l->buf;;) {
        char *comma = strchr(p, ',');
        const char *e = p;
        size_t el = comma != NULL ? (size_t)(comma - p) : strlen(p);
        auth_trim(&e, &el);
        if (el > 0) {
            if (auth_eq(e, el, "*", 1)) {
                auth_err(err, errlen, "key '%s': '*' must stand alone", key);
                goto bad;
            }
            if (!auth_origin_valid(e, el)) {
                auth_err(err, errlen,
                         "key '%s': '%.*s' is not an origin as browsers send it "
                         "(scheme://host[:port], lowercase, no path) or 'null'",
                         key, (int)el, e);
                goto bad;
            }
            l->buf[(size_t)(e - l->buf) + el] = '\0';
            l->item[n] = e;
            l->len[n] = el;
            n++;
        }
        if (comma == NULL)
            break;
        p = comma + 1;
    }
    l->n = n;
    return 0;
bad:
    auth_list_free(l);
    return UV_EINVAL;
}

static int auth_list_has(const struct auth_list *l, const char *s, size_t len)
{
    if (l->any)
        return 1;
    if (s == NULL)
        return 0;
    auth_trim(&s, &len);
    for (size_t i = 0; i < l->n; i++)
        if (auth_eq(s, len, l->item[i], l->len[i]))
            return 1;
    return 0;
}

int auth_origin_ok(const struct auth *a, const char *origin, size_t len)
{
    return auth_list_has(&a->origins, origin, len);
}

int auth_cors_ok(const struct auth *a, const char *origin, size_t len)
{
    return auth_list_has(&a->cors, origin, len);
}

/* --- addresses and trusted proxies --- */

/* A bare IPv4 or IPv6 address in s[0..len) as 16 bytes (IPv4 mapped). 0 or -1. */
static int auth_ip16_parse(const char *s, size_t len, uint8_t out[16])
{
    char buf[INET6_ADDRSTRLEN];
    struct in_addr v4;

    if (len == 0 || len >= sizeof buf)
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, &v4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &v4, 4);
        return 0;
    }
    return inet_pton(AF_INET6, buf, out) == 1 ? 0 : -1;
}

static int auth_ip16_is_v4(const uint8_t ip[16])
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(ip, prefix, sizeof prefix) == 0;
}

static void auth_ip16_format(const uint8_t ip[16], char out[INET6_ADDRSTRLEN])
{
    if (auth_ip16_is_v4(ip))
        inet_ntop(AF_INET, ip + 12, out, INET6_ADDRSTRLEN);
    else
        inet_ntop(AF_INET6, ip, out, INET6_ADDRSTRLEN);
}

static void auth_cidr_mask(uint8_t addr[16], unsigned bits)
{
    for (unsigned i = 0; i < 16; i++) {
        unsigned keep = bits >= 8 * (i + 1) ? 8 : bits > 8 * i ? bits - 8 * i : 0;
        addr[i] &= (uint8_t)(0xff00u >> keep);
    }
}

/* "a.b.c.d", "a.b.c.d/n", "v6", "v6/n". 0 or -1. */
static int auth_cidr_parse(const char *s, size_t len, struct auth_cidr *c)
{
    const char *slash = memchr(s, '/', len);
    size_t al = slash != NULL ? (size_t)(slash - s) : len;
    unsigned bits, max;

    if (auth_ip16_parse(s, al, c->addr) < 0)
        return -1;
    /* A literal "::ffff:a.b.c.d" counts as IPv4 as well: same 128-bit space. */
    max = memchr(s, ':', al) == NULL ? 32 : 128;
    bits = max;
    if (slash != NULL) {
        size_t dl = len - al - 1;
        if (dl == 0 || dl > 3)
            return -1;
        bits = 0;
        for (size_t i = 0; i < dl; i++) {
            char d = slash[1 + i];
            if (d < '0' || d > '9')
                return -1;
            bits = bits * 10 + (unsigned)(d - '0');
        }
        if (bits > max)
            return -1;
    }
    if (max == 32)
        bits += 96;
    c->bits = (uint8_t)bits;
    auth_cidr_mask(c->addr, bits);
    return 0;
}

static int auth_proxies_parse(struct auth *a, const char *s, char *err, size_t errlen)
{
    size_t cap = 1, n = 0;
    const char *p = s;

    for (const char *q = s; *q != '\0'; q++)
        cap += *q == ',';
    if ((a->proxies = calloc(cap, sizeof *a->proxies)) == NULL) {
        auth_err(err, errlen, "key 'server.trusted_proxies': out of memory");
        return UV_ENOMEM;
    }
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        const char *e = p;
        size_t el = len;
        auth_trim(&e, &el);
        if (el > 0) {
            if (auth_cidr_parse(e, el, &a->proxies[n]) < 0) {
                auth_err(err, errlen,
                         "key 'server.trusted_proxies': '%.*s' is not an IPv4/IPv6 address "
                         "or CIDR",
                         (int)el, e);
                return UV_EINVAL;
            }
            n++;
        }
        p += len;
        if (*p == ',')
            p++;
    }
    a->nproxies = n;
    return 0;
}

static int auth_trusted(const struct auth *a, const uint8_t ip[16])
{
    for (size_t i = 0; i < a->nproxies; i++) {
        const struct auth_cidr *c = &a->proxies[i];
        unsigned full = c->bits / 8, rest = c->bits % 8;
        if (memcmp(ip, c->addr, full) != 0)
            continue;
        if (rest == 0 || ((ip[full] ^ c->addr[full]) & (uint8_t)(0xff00u >> rest)) == 0)
            return 1;
    }
    return 0;
}

int auth_client_ip(const struct auth *a, const struct sockaddr *peer, const char *xff,
                   size_t xff_len, char out[INET6_ADDRSTRLEN])
{
    uint8_t cur[16], hop[16];
    size_t end = xff != NULL ? xff_len : 0;
    int more = end > 0;

    out[0] = '\0';
    if (peer->sa_family == AF_INET) {
        memset(cur, 0, 10);
        cur[10] = cur[11] = 0xff;
        memcpy(cur + 12, &((const struct sockaddr_in *)peer)->sin_addr, 4);
    } else if (peer->sa_family == AF_INET6) {
        memcpy(cur, &((const struct sockaddr_in6 *)peer)->sin6_addr, 16);
    } else {
        return UV_EAFNOSUPPORT;
    }
    /* Walk right to left while the address we stand on is a proxy we trust: only a trusted
     * proxy's word about the hop before it is believed. */
    while (more && auth_trusted(a, cur)) {
        size_t start = end;
        const char *h;
        size_t hl;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        h = xff + start;
        hl = end - start;
        auth_trim(&h, &hl);
        if (auth_ip16_parse(h, hl, hop) < 0)
            break; /* malformed: keep the last good address */
        memcpy(cur, hop, 16);
        more = start > 0;
        end = start > 0 ? start - 1 : 0;
    }
    auth_ip16_format(cur, out);
    return 0;
}

/* --- public key --- */

static int auth_key_load(struct auth *a, const char *path, char *err, size_t errlen)
{
    char *pem = NULL;
    size_t n = 0;
    BIO *bio = NULL;
    EVP_PKEY *k = NULL;
    int rc = auth_read_file(path, AUTH_FILE_MAX, &pem, &n);

    if (rc < 0) {
        auth_err(err, errlen, "key 'auth.jwt_public_key_file': cannot read '%s': %s", path,
                 uv_strerror(rc));
        return rc;
    }
    rc = UV_EINVAL;
    if (memmem(pem, n, "PRIVATE KEY-----", 16) != NULL) {
        auth_err(err, errlen,
                 "key 'auth.jwt_public_key_file': '%s' holds a private key; give the public "
                 "key only (openssl pkey -pubout)",
                 path);
        goto out;
    }
    if (memmem(pem, n, "-----BEGIN PUBLIC KEY-----", 26) == NULL) {
        auth_err(err, errlen,
                 "key 'auth.jwt_public_key_file': '%s' is not a SubjectPublicKeyInfo PEM "
                 "('BEGIN PUBLIC KEY', as openssl pkey -pubout writes)",
                 path);
        goto out;
    }
    if ((bio = BIO_new_mem_buf(pem, (int)n)) == NULL) {
        rc = UV_ENOMEM;
        auth_err(err, errlen, "key 'auth.jwt_public_key_file': out of memory");
        goto out;
    }
    if ((k = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL)) == NULL) {
        auth_err(err, errlen, "key 'auth.jwt_public_key_file': '%s': unreadable public key", path);
        goto out;
    }
    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA) {
        if (EVP_PKEY_get_bits(k) < 2048) {
            auth_err(err, errlen,
                     "key 'auth.jwt_public_key_file': '%s': RSA key of %d bits, at least 2048 "
                     "needed",
                     path, EVP_PKEY_get_bits(k));
            goto out;
        }
        a->key_type = AUTH_KEY_RSA;
    } else if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
        char group[64];
        size_t gl = 0;
        if (EVP_PKEY_get_group_name(k, group, sizeof group, &gl) != 1 ||
            OBJ_txt2nid(group) != NID_X9_62_prime256v1) {
            auth_err(err, errlen,
                     "key 'auth.jwt_public_key_file': '%s': EC key not on P-256 (ES256 only)",
                     path);
            goto out;
        }
        a->key_type = AUTH_KEY_EC_P256;
    } else {
        auth_err(err, errlen,
                 "key 'auth.jwt_public_key_file': '%s': key type is not RSA or EC P-256", path);
        goto out;
    }
    a->pkey = k;
    k = NULL;
    rc = 0;
out:
    EVP_PKEY_free(k);
    BIO_free(bio);
    OPENSSL_cleanse(pem, n); /* a private key may have been in it */
    free(pem);
    ERR_clear_error();
    return rc;
}

/* --- life cycle --- */

int auth_init(struct auth *a, const struct config *cfg, char *err, size_t errlen)
{
    struct auth_dvec v = {0};
    int rc;

    memset(a, 0, sizeof *a);
    {
        uint8_t key[32]; /* random per process: tokens are compared as HMACs under it */
        if (RAND_bytes(key, sizeof key) != 1) {
            auth_err(err, errlen, "auth: no randomness for the token key");
            return UV_EIO;
        }
        a->tok_mac = hmac_sha256_new(key, sizeof key);
        OPENSSL_cleanse(key, sizeof key);
        if (a->tok_mac == NULL) {
            auth_err(err, errlen, "auth: OpenSSL has no HMAC-SHA256");
            return UV_ENOMEM;
        }
    }
    /* Publisher tokens: the configured list first, then the file's lines. */
    if ((rc = auth_tokens_parse_list(&v, a->tok_mac, cfg->push_tokens, err, errlen)) < 0)
        goto fail;
    if (cfg->push_tokens[0] != '\0' && v.n == 0) {
        auth_err(err, errlen, "key 'auth.push_tokens': no token in the list");
        rc = UV_EINVAL;
        goto fail;
    }
    a->npush_cfg = v.n;
    if (cfg->push_tokens_file[0] != '\0') {
        if ((a->push_file = strdup(cfg->push_tokens_file)) == NULL) {
            auth_err(err, errlen, "key 'auth.push_tokens_file': out of memory");
            rc = UV_ENOMEM;
            goto fail;
        }
        if ((rc = auth_tokens_load_file(&v, a->tok_mac, a->push_file, err, errlen)) < 0)
            goto fail;
    }
    a->push = v.d;
    a->npush = v.n;
    v.d = NULL;
    a->push_required = cfg->push_tokens[0] != '\0' || a->push_file != NULL;

    if (cfg->metrics_token[0] != '\0') {
        size_t ml = strlen(cfg->metrics_token);
        if (auth_has_space_or_ctl(cfg->metrics_token, ml)) {
            auth_err(err, errlen, "key 'auth.metrics_token': holds a space or control byte");
            rc = UV_EINVAL;
            goto fail;
        }
        if ((rc = auth_hmac(a->tok_mac, cfg->metrics_token, ml, a->metrics)) < 0) {
            auth_err(err, errlen, "key 'auth.metrics_token': out of memory");
            goto fail;
        }
        a->metrics_required = 1;
    }

    /* Client JWTs. */
    if (cfg->jwt_secret[0] != '\0') {
        a->hs_secret_len = strlen(cfg->jwt_secret);
        if ((a->hs_secret = malloc(a->hs_secret_len)) == NULL) {
            auth_err(err, errlen, "key 'auth.jwt_secret': out of memory");
            rc = UV_ENOMEM;
            goto fail;
        }
        memcpy(a->hs_secret, cfg->jwt_secret, a->hs_secret_len);
        if ((a->jwt_mac = hmac_sha256_new(a->hs_secret, a->hs_secret_len)) == NULL) {
            auth_err(err, errlen, "key 'auth.jwt_secret': OpenSSL has no HMAC-SHA256");
            rc = UV_ENOMEM;
            goto fail;
        }
    }
    if (cfg->jwt_public_key_file[0] != '\0' &&
        (rc = auth_key_load(a, cfg->jwt_public_key_file, err, errlen)) < 0)
        goto fail;
    a->leeway_s = (int64_t)(cfg->jwt_leeway_ms / 1000);
    if ((cfg->jwt_audience[0] != '\0' && (a->audience = strdup(cfg->jwt_audience)) == NULL) ||
        (cfg->jwt_issuer[0] != '\0' && (a->issuer = strdup(cfg->jwt_issuer)) == NULL)) {
        auth_err(err, errlen, "key 'auth.jwt_audience': out of memory");
        rc = UV_ENOMEM;
        goto fail;
    }

    if ((rc = auth_list_parse(&a->origins, cfg->allowed_origins, "server.allowed_origins", err,
                              errlen)) < 0 ||
        (rc = auth_list_parse(&a->cors, cfg->cors_origins, "server.cors_origins", err, errlen)) <
            0 ||
        (rc = auth_proxies_parse(a, cfg->trusted_proxies, err, errlen)) < 0)
        goto fail;
    return 0;
fail:
    auth_dvec_free(&v);
    auth_free(a);
    return rc;
}

void auth_free(struct auth *a)
{
    EVP_MAC_CTX_free(a->tok_mac);
    EVP_MAC_CTX_free(a->jwt_mac);
    if (a->hs_secret != NULL)
        OPENSSL_cleanse(a->hs_secret, a->hs_secret_len);
    free(a->hs_secret);
    free(a->push);
    free(a->push_file);
    EVP_PKEY_free(a->pkey);
    free(a->audience);
    free(a->issuer);
    auth_list_free(&a->origins);
    auth_list_free(&a->cors);
    free(a->proxies);
    OPENSSL_cleanse(a, sizeof *a);
}

int auth_reload(struct auth *a, char *err, size_t errlen)
{
    struct auth_dvec v = {0};
    int rc;

    if (a->push_file == NULL)
        return 0;
    /* Build the new set beside the old one; swap only when the whole file was good. */
    v.cap = a->npush_cfg > 0 ? a->npush_cfg : 1;
    if ((v.d = malloc(v.cap * sizeof *v.d)) == NULL) {
        auth_err(err, errlen, "key 'auth.push_tokens_file': out of memory");
        return UV_ENOMEM;
    }
    if (a->npush_cfg > 0)
        memcpy(v.d, a->push, a->npush_cfg * sizeof *v.d);
    v.n = a->npush_cfg;
    if ((rc = auth_tokens_load_file(&v, a->tok_mac, a->push_file, err, errlen)) < 0) {
        auth_dvec_free(&v);
        return rc;
    }
    free(a->push);
    a->push = v.d;
    a->npush = v.n;
    OPENSSL_cleanse(a->push_last, sizeof a->push_last); /* it may have been removed */
    a->push_last_len = 0;
    return 0;
}

/* --- token transports --- */

/* The credentials span of "Bearer <token>": auth_bearer without checking the token's
 * bytes. Enough where the token is only compared with stored ones, which never hold a
 * space or a control byte (refused when loaded): such a token simply does not match. */
static int auth_bearer_span(const char *v, size_t len, const char **tok, size_t *tok_len)
{
    *tok = NULL;
    *tok_len = 0;
    if (v == NULL)
        return UV_ENOENT;
    auth_trim(&v, &len);
    if (len < 6 || ((v[0] | 0x20) != 'b' || (v[1] | 0x20) != 'e' || (v[2] | 0x20) != 'a' ||
                    (v[3] | 0x20) != 'r' || (v[4] | 0x20) != 'e' || (v[5] | 0x20) != 'r'))
        return UV_ENOENT;
    if (len == 6)
        return UV_EINVAL;
    if (!auth_is_ows(v[6]))
        return UV_ENOENT; /* "Bearerish ...": another scheme */
    v += 6;
    len -= 6;
    auth_trim(&v, &len);
    if (len == 0)
        return UV_EINVAL;
    *tok = v;
    *tok_len = len;
    return 0;
}

int auth_bearer(const char *v, size_t len, const char **tok, size_t *tok_len)
{
    int rc = auth_bearer_span(v, len, tok, tok_len);
    if (rc == 0 && auth_has_space_or_ctl(*tok, *tok_len)) {
        *tok = NULL;
        *tok_len = 0;
        return UV_EINVAL;
    }
    return rc;
}

int auth_query_token(const char *q, size_t len, const char **tok, size_t *tok_len)
{
    *tok = NULL;
    *tok_len = 0;
    if (q == NULL)
        return UV_ENOENT;
    if (len > 0 && q[0] == '?') {
        q++;
        len--;
    }
    for (size_t i = 0; i < len;) {
        const char *amp = memchr(q + i, '&', len - i);
        size_t pl = amp != NULL ? (size_t)(amp - (q + i)) : len - i;
        if (pl >= 6 && memcmp(q + i, "token=", 6) == 0) {
            if (pl == 6)
                return UV_ENOENT;
            *tok = q + i + 6;
            *tok_len = pl - 6;
            return 0;
        }
        i += pl + 1;
    }
    return UV_ENOENT;
}

int auth_ws_protocol_token(const char *v, size_t len, const char **tok, size_t *tok_len)
{
    int after_bearer = 0;

    *tok = NULL;
    *tok_len = 0;
    if (v == NULL)
        return UV_ENOENT;
    for (size_t i = 0; i < len;) {
        const char *comma = memchr(v + i, ',', len - i);
        size_t el = comma != NULL ? (size_t)(comma - (v + i)) : len - i;
        const char *e = v + i;
        i += el + 1;
        auth_trim(&e, &el);
        if (el == 0)
            continue; /* list syntax allows empty elements */
        if (after_bearer) {
            *tok = e;
            *tok_len = el;
            return 0;
        }
        after_bearer = auth_eq(e, el, "bearer", 6);
    }
    return UV_ENOENT;
}

enum auth_from auth_client_token(const char *authz, size_t authz_len, const char *query,
                                 size_t query_len, const char *proto, size_t proto_len,
                                 const char **tok, size_t *tok_len)
{
    if (auth_bearer(authz, authz_len, tok, tok_len) == 0)
        return AUTH_FROM_HEADER;
    if (auth_query_token(query, query_len, tok, tok_len) == 0)
        return AUTH_FROM_QUERY;
    if (auth_ws_protocol_token(proto, proto_len, tok, tok_len) == 0)
        return AUTH_FROM_PROTOCOL;
    return AUTH_FROM_NONE;
}

/* --- publisher and /metrics tokens --- */

int auth_push_required(const struct auth *a)
{
    return a->push_required;
}

/* 1 when the AUTH_PUSH_LAST_MAX bytes at a and b are equal, in time independent of
 * where they differ: 8-byte words XORed and ORed together, no branch on the data
 * (CRYPTO_memcmp goes byte by byte: ~460 instructions here, on every push). */
_Static_assert(AUTH_PUSH_LAST_MAX % 8 == 0, "push_last is compared in 8-byte words");
static int auth_same_last(const uint8_t *a, const uint8_t *b)
{
    uint64_t acc = 0;
    for (size_t i = 0; i < AUTH_PUSH_LAST_MAX; i += 8) {
        uint64_t x, y;
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        acc |= x ^ y;
    }
    return acc == 0;
}

int auth_push_ok(struct auth *a, const char *authz, size_t len)
{
    const char *t;
    size_t tl;

    if (!a->push_required)
        return 1;
    if (auth_bearer_span(authz, len, &t, &tl) != 0)
        return 0;
    /* A service sends the same token with every push: compare it with the last one that
     * passed first, in time independent of the stored token (zero-padded, both lengths
     * folded in), and run the HMAC only when it differs. */
    if (tl <= AUTH_PUSH_LAST_MAX && a->push_last_len > 0) {
        uint8_t buf[AUTH_PUSH_LAST_MAX] = {0};
        memcpy(buf, t, tl);
        if (auth_same_last(buf, a->push_last) & (tl == a->push_last_len))
            return 1;
    }
    if (!auth_digest_match(a, t, tl, (const uint8_t *)a->push, a->npush))
        return 0;
    if (tl <= AUTH_PUSH_LAST_MAX) {
        memset(a->push_last, 0, sizeof a->push_last);
        memcpy(a->push_last, t, tl);
        a->push_last_len = tl;
    }
    return 1;
}

int auth_metrics_ok(const struct auth *a, const char *authz, size_t len)
{
    const char *t;
    size_t tl;

    if (!a->metrics_required)
        return 1;
    if (auth_bearer(authz, len, &t, &tl) != 0)
        return 0;
    return auth_digest_match(a, t, tl, a->metrics, 1);
}
