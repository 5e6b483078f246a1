/* auth.h — who may push and who may read: publisher and /metrics bearer tokens
 * (compared in constant time), client JWTs (HS256 with [auth] jwt_secret, RS256 or ES256
 * with [auth] jwt_public_key_file, the algorithm pinned by the key), the three client
 * token transports, Origin and CORS lists, and the client IP behind trusted proxies.
 * Does NOT write HTTP answers, log tokens, read the clock or keep per-IP counters (see
 * iplimit.h): every check takes header values as (ptr, len) and returns a verdict.
 * All state lives in a struct auth the server owns. Loop thread only (auth_reload
 * included: call it from the loop's SIGHUP handler, not from a signal handler). */
#ifndef WSGATE_AUTH_H
#define WSGATE_AUTH_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct config;
struct evp_pkey_st;    /* OpenSSL's EVP_PKEY */
struct evp_mac_ctx_st; /* OpenSSL's EVP_MAC_CTX */

#define AUTH_TOKEN_MAX 8192     /* longest client JWT looked at; longer: 401 */
#define AUTH_DIGEST_LEN 32      /* HMAC-SHA256 */
#define AUTH_PUSH_LAST_MAX 64   /* longest push token remembered as the last one that passed */
#define AUTH_FILE_MAX (1 << 20) /* push_tokens_file / jwt_public_key_file size bound */

/* Verdict of auth_jwt_check. The values are the HTTP status to answer. */
enum auth_result {
    AUTH_OK = 0,
    AUTH_UNAUTHORIZED = 401, /* no usable credentials: answer 401 + WWW-Authenticate: Bearer */
    AUTH_FORBIDDEN = 403,    /* a valid token that does not grant this session or topic */
};

/* Type of the key in jwt_public_key_file, which pins the accepted algorithm. */
enum auth_key_type {
    AUTH_KEY_NONE = 0, /* no public key: RS256/ES256 tokens are refused */
    AUTH_KEY_RSA,      /* RS256 only (RSA >= 2048 bits) */
    AUTH_KEY_EC_P256,  /* ES256 only */
};

/* Where auth_client_token found the client's token (DESIGN order). */
enum auth_from {
    AUTH_FROM_NONE = 0, /* no token anywhere: 401 "missing token" */
    AUTH_FROM_HEADER,   /* Authorization: Bearer <jwt> */
    AUTH_FROM_QUERY,    /* ?token=<jwt> */
    AUTH_FROM_PROTOCOL, /* Sec-WebSocket-Protocol: bearer, <jwt> */
};

/* A parsed comma-separated list ("*" or exact strings). */
struct auth_list {
    char *buf;         /* owned: copy of the list, entries NUL-terminated in place */
    const char **item; /* owned array of n pointers into buf */
    size_t *len;       /* owned array of n lengths */
    size_t n;          /* entries */
    int any;           /* the list was "*" */
};

/* An IPv4 or IPv6 network; IPv4 is held as ::ffff:a.b.c.d/(96 + bits). */
struct auth_cidr {
    uint8_t addr[16]; /* network address, host bits zero */
    uint8_t bits;     /* prefix length in the 128-bit space */
};

struct auth {
    struct evp_mac_ctx_st *tok_mac;        /* owned: HMAC-SHA256 under a random per-process key;
                                              tokens are compared as its digests (auth_hmac) */
    struct evp_mac_ctx_st *jwt_mac;        /* owned: HMAC-SHA256 under jwt_secret, or NULL */
    uint8_t (*push)[AUTH_DIGEST_LEN];      /* owned: digests of push_tokens, then the file's */
    size_t npush;                          /* digests in push */
    size_t npush_cfg;                      /* the first npush_cfg come from push_tokens */
    uint8_t push_last[AUTH_PUSH_LAST_MAX]; /* the last push token that passed, zero-padded
                                              (a service repeats it: no HMAC per push) */
    size_t push_last_len;                  /* its length; 0 = none (cleared on reload) */
    int push_required;                     /* push_tokens or push_tokens_file set */
    char *push_file;                       /* owned: push_tokens_file path, or NULL */
    uint8_t metrics[AUTH_DIGEST_LEN];      /* digest of metrics_token */
    int metrics_required;                  /* metrics_token set */
    unsigned char *hs_secret;              /* owned: jwt_secret bytes (cleansed on free), or NULL */
    size_t hs_secret_len;                  /* bytes in hs_secret */
    struct evp_pkey_st *pkey;              /* owned: parsed jwt_public_key_file, or NULL */
    enum auth_key_type key_type;           /* what pkey is: pins RS256 or ES256 */
    int64_t leeway_s;                      /* jwt_leeway in whole seconds (rounded down) */
    char *audience;                        /* owned: required aud, or NULL */
    char *issuer;                          /* owned: required iss, or NULL */
    struct auth_list origins;              /* allowed_origins */
    struct auth_list cors;                 /* cors_origins */
    struct auth_cidr *proxies;             /* owned: trusted_proxies */
    size_t nproxies;                       /* entries in proxies */
};

/* --- life cycle --- */

/* Build a from cfg (borrowed for the call; nothing of it is kept). Reads
 * push_tokens_file and jwt_public_key_file, parses the lists. Returns 0, or a negative
 * UV_E* with one line in err ("key 'auth.jwt_public_key_file': ...") that names the key
 * and never contains a secret (tokens, jwt_secret). On error a needs no auth_free.
 * Rules: push_tokens entries and file lines are trimmed; blank lines and lines starting
 * with '#' are skipped; a token holding a space or control byte is an error; a set
 * push_tokens_file with no token refuses every push (fails closed). The key file must
 * be a SubjectPublicKeyInfo PEM ("BEGIN PUBLIC KEY"): RSA >= 2048 bits or EC P-256; a
 * file holding a private key is refused. allowed_origins/cors_origins: "*" alone, or
 * exact origins ("https://a.example", "http://h:8080", "null"), "" = none.
 * trusted_proxies: IPv4/IPv6 addresses or CIDRs (host bits are masked off). */
int auth_init(struct auth *a, const struct config *cfg, char *err, size_t errlen);
/* Free everything auth_init made; a is zeroed. Idempotent. */
void auth_free(struct auth *a);
/* Re-read push_tokens_file (SIGHUP). Returns 0 (new set in force), 0 when no file is
 * configured (nothing to do), or a negative UV_E* with a line in err (may be NULL): then
 * the previous set stays in force. */
int auth_reload(struct auth *a, char *err, size_t errlen);

/* --- token transports: pure string functions on raw header values --- */

/* "Bearer <token>" (scheme case-insensitive, one or more spaces/tabs, surrounding
 * whitespace trimmed). Sets *tok, *tok_len to a slice of v. Returns 0, UV_ENOENT when v is
 * empty or another scheme ("Basic ..."), UV_EINVAL for "Bearer" without a single token. */
int auth_bearer(const char *v, size_t len, const char **tok, size_t *tok_len);
/* The value of the first "token=" parameter of a query string (without the '?'; one
 * leading '?' is skipped). Parameters split on '&'. No percent-decoding: a JWT is
 * base64url and needs none, and a %-escaped token simply fails verification. Returns 0,
 * or UV_ENOENT when absent or empty. */
int auth_query_token(const char *q, size_t len, const char **tok, size_t *tok_len);
/* Sec-WebSocket-Protocol value (several headers joined with ','): the element right after
 * the element "bearer" (exact, case-sensitive). Elements split on ',' with optional
 * spaces/tabs. Returns 0 (then the 101 must carry "Sec-WebSocket-Protocol: bearer"), or
 * UV_ENOENT when no "bearer" element is followed by another one. */
int auth_ws_protocol_token(const char *v, size_t len, const char **tok, size_t *tok_len);
/* The client token by DESIGN order: Authorization Bearer, then ?token=, then the
 * subprotocol. Any argument may be (NULL, 0) when the header or query is absent. An
 * Authorization of another scheme or a malformed Bearer counts as absent. Returns where it
 * came from; AUTH_FROM_NONE leaves *tok NULL and *tok_len 0. */
enum auth_from auth_client_token(const char *authz, size_t authz_len, const char *query,
                                 size_t query_len, const char *proto, size_t proto_len,
                                 const char **tok, size_t *tok_len);

/* --- publisher and /metrics tokens --- */

/* 1 when POST /push and /publish need a token. */
int auth_push_required(const struct auth *a);
/* Authorization value (NULL, 0 when absent). 1 when not required, or when it is
 * "Bearer <t>" and t is one of the configured tokens; 0 otherwise (answer 401). Every
 * configured token is compared, as HMAC-SHA256 digests under a per-process key with
 * CRYPTO_memcmp: the time depends on the number of tokens only. The last token that
 * passed is remembered (a service repeats it) and compared first in constant time. */
int auth_push_ok(struct auth *a, const char *authz, size_t len);
/* out = HMAC-SHA256(ctx's key, p[0..len)) with a context from hmac_sha256_new (hmac.h).
 * 0, or UV_ENOMEM. Loop thread: ctx is reused. */
int auth_hmac(struct evp_mac_ctx_st *ctx, const void *p, size_t len, uint8_t out[AUTH_DIGEST_LEN]);
/* The same for /metrics and metrics_token; 1 when metrics_token is empty. */
int auth_metrics_ok(const struct auth *a, const char *authz, size_t len);

/* --- client JWTs --- */

/* 1 when GET /ws/{S} and /sse/{S} need a JWT (jwt_secret or jwt_public_key_file set). */
int auth_client_required(const struct auth *a);
/* Verify token[0..len) for session key[0..key_len) and the requested topics (borrowed,
 * ntopics NUL-terminated strings; may be NULL when ntopics is 0) at now_s (Unix seconds).
 * AUTH_UNAUTHORIZED: empty or over AUTH_TOKEN_MAX, not three base64url parts, bad JSON
 * (duplicate keys included), a "crit" header, alg other than HS256 with a secret /
 * RS256 with an RSA key / ES256 with an EC key (so "none" and HS/RS confusion), bad
 * signature, exp missing or not a number, now >= exp + leeway, now + leeway < nbf,
 * iat > now + leeway, aud (string or array) without jwt_audience when set, iss !=
 * jwt_issuer when set, sub or topics of the wrong type. AUTH_FORBIDDEN: sub missing or
 * not equal to the key, or a requested topic not in the "topics" claim (absent = no
 * limit). reason (may be NULL) gets a static word for a log line ("expired", ...); it
 * never holds token content. */
enum auth_result auth_jwt_check(const struct auth *a, const char *token, size_t len,
                                const char *key, size_t key_len, char *const *topics,
                                size_t ntopics, int64_t now_s, const char **reason);

/* --- origins --- */

/* Origin header value of an upgrade (the caller skips the check when there is no Origin
 * header: a service or CLI). 1 when allowed_origins is "*" or lists it exactly
 * (case-sensitive, as sent; surrounding whitespace trimmed); 0: answer 403. */
int auth_origin_ok(const struct auth *a, const char *origin, size_t len);
/* The same against cors_origins ("" = none): 1 when /push, /publish may answer with
 * Access-Control-Allow-Origin (echo the request's origin, not "*"). */
int auth_cors_ok(const struct auth *a, const char *origin, size_t len);

/* --- client address --- */

/* The client IP as text in out: the socket peer, unless the peer is in trusted_proxies;
 * then the rightmost X-Forwarded-For hop that is not trusted, or the leftmost hop when
 * all are trusted. xff is every X-Forwarded-For value joined with ',' in arrival order
 * ((NULL, 0) when absent; the last header alone is safe, it just reaches less far). A
 * malformed hop (not a bare IPv4/IPv6 address: ports, brackets, "unknown") stops the walk:
 * the last good address (a trusted proxy) is the answer, never anything left of it.
 * An IPv4-mapped IPv6 peer (::ffff:a.b.c.d) matches IPv4 CIDRs and is written as
 * a.b.c.d, so one client has one spelling. Returns 0, or UV_EAFNOSUPPORT when peer is not
 * AF_INET/AF_INET6 (out is then ""). */
int auth_client_ip(const struct auth *a, const struct sockaddr *peer, const char *xff,
                   size_t xff_len, char out[INET6_ADDRSTRLEN]);

/* --- minting (wsgate --mint-token) --- */

/* A malloc'd HS256 JWT signed with cfg->jwt_secret: {"sub", "iat": now_s, "exp": now_s +
 * ttl_s} plus aud/iss when jwt_audience/jwt_issuer are set. NULL when jwt_secret is empty,
 * sub is not a valid session key, ttl_s is 0 or too large, or on allocation failure. The
 * caller frees it. Any thread (no state). */
char *auth_mint(const struct config *cfg, const char *sub, uint64_t ttl_s, int64_t now_s);

/* --- shared by auth.c and auth_jwt.c --- */
/* 1 when s[0..len) equals w[0..wl) exactly. */
int auth_eq(const char *s, size_t len, const char *w, size_t wl);

#endif
