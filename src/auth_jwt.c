/* auth_jwt.c — client JWTs of /ws and /sse: the header's alg matched against the
 * configured key type first (HS256 with jwt_secret, RS256 with an RSA key, ES256 with an
 * EC P-256 key; so "none" and HS/RS confusion are refused), the signature verified with
 * OpenSSL (HMAC, EVP_DigestVerify), the claims read with jansson (sub, exp, nbf, iat,
 * aud, iss, topics); and HS256 minting through libjwt for --mint-token.
 * Does NOT log token bytes or answer requests. Loop thread only; auth_mint runs anywhere. */
#include "auth.h"

#include <jansson.h>
#include <jwt.h>
#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/objects.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "config.h"
#include "util.h"

#define AUTH_MINT_TTL_MAX (100ULL * 366 * 24 * 3600) /* a century: keeps exp in range */

/* --- client JWTs --- */

int auth_client_required(const struct auth *a)
{
    return a->hs_secret != NULL || a->pkey != NULL;
}

/* Strict base64url without padding (RFC 7515 §2): only [A-Za-z0-9_-], length % 4 != 1,
 * unused low bits of the last character zero (one encoding per value). out holds at
 * least len * 3 / 4 bytes. Returns the decoded length, or -1. */
static long auth_b64url_decode(const char *in, size_t len, unsigned char *out)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t n = 0;

    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        char c = in[i];
        unsigned v;
        if (c >= 'A' && c <= 'Z')
            v = (unsigned)(c - 'A');
        else if (c >= 'a' && c <= 'z')
            v = (unsigned)(c - 'a') + 26;
        else if (c >= '0' && c <= '9')
            v = (unsigned)(c - '0') + 52;
        else if (c == '-')
            v = 62;
        else if (c == '_')
            v = 63;
        else
            return -1;
        acc = (acc << 6) | v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0)
        return -1;
    return (long)n;
}

static int auth_evp_verify(EVP_PKEY *k, const unsigned char *data, size_t dlen,
                           const unsigned char *sig, size_t slen)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, k) == 1 &&
             EVP_DigestVerify(ctx, sig, slen, data, dlen) == 1;

    EVP_MD_CTX_free(ctx);
    return ok;
}

/* ES256 signatures are R || S, 32 bytes each (RFC 7518 §3.4); OpenSSL wants DER. */
static int auth_es256_verify(EVP_PKEY *k, const unsigned char *data, size_t dlen,
                             const unsigned char *sig, size_t slen)
{
    ECDSA_SIG *es;
    BIGNUM *r, *s;
    unsigned char *der = NULL;
    int derlen, ok = 0;

    if (slen != 64)
        return 0;
    es = ECDSA_SIG_new();
    r = BN_bin2bn(sig, 32, NULL);
    s = BN_bin2bn(sig + 32, 32, NULL);
    if (es == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return 0;
    }
    if ((derlen = i2d_ECDSA_SIG(es, &der)) > 0)
        ok = auth_evp_verify(k, data, dlen, der, (size_t)derlen);
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    return ok;
}

static int auth_hs256_verify(const struct auth *a, const unsigned char *data, size_t dlen,
                             const unsigned char *sig, size_t slen)
{
    uint8_t mac[AUTH_DIGEST_LEN];

    if (slen != AUTH_DIGEST_LEN || a->jwt_mac == NULL || auth_hmac(a->jwt_mac, data, dlen, mac) < 0)
        return 0;
    return CRYPTO_memcmp(mac, sig, AUTH_DIGEST_LEN) == 0;
}

static int auth_json_streq(const json_t *v, const char *s, size_t len)
{
    return json_is_string(v) && auth_eq(json_string_value(v), json_string_length(v), s, len);
}

/* The claims of a verified token (payload). */
static enum auth_result auth_claims_check(const struct auth *a, const json_t *p, const char *key,
                                          size_t key_len, char *const *topics, size_t ntopics,
                                          int64_t now_s, const char **why)
{
    const json_t *exp = json_object_get(p, "exp"), *nbf = json_object_get(p, "nbf");
    const json_t *iat = json_object_get(p, "iat"), *sub = json_object_get(p, "sub");
    const json_t *tc = json_object_get(p, "topics");
    /* NumericDate may be a fraction; doubles hold Unix seconds exactly. */
    double now = (double)now_s, lw = (double)a->leeway_s;

    *why = "malformed";
    if (exp == NULL) {
        *why = "missing_exp";
        return AUTH_UNAUTHORIZED;
    }
    if (!json_is_number(exp) || (nbf != NULL && !json_is_number(nbf)) ||
        (iat != NULL && !json_is_number(iat)) || (sub != NULL && !json_is_string(sub)) ||
        (tc != NULL && !json_is_array(tc)))
        return AUTH_UNAUTHORIZED;
    if (now - lw >= json_number_value(exp)) {
        *why = "expired";
        return AUTH_UNAUTHORIZED;
    }
    if (nbf != NULL && now + lw < json_number_value(nbf)) {
        *why = "not_yet_valid";
        return AUTH_UNAUTHORIZED;
    }
    if (iat != NULL && json_number_value(iat) > now + lw) {
        *why = "iat_future";
        return AUTH_UNAUTHORIZED;
    }
    if (a->audience != NULL) {
        const json_t *aud = json_object_get(p, "aud");
        size_t al = strlen(a->audience);
        int hit = auth_json_streq(aud, a->audience, al);
        for (size_t i = 0; json_is_array(aud) && i < json_array_size(aud); i++)
            hit |= auth_json_streq(json_array_get(aud, i), a->audience, al);
        if (!hit) {
            *why = "audience";
            return AUTH_UNAUTHORIZED;
        }
    }
    if (a->issuer != NULL &&
        !auth_json_streq(json_object_get(p, "iss"), a->issuer, strlen(a->issuer))) {
        *why = "issuer";
        return AUTH_UNAUTHORIZED;
    }
    for (size_t i = 0; tc != NULL && i < json_array_size(tc); i++)
        if (!json_is_string(json_array_get(tc, i)))
            return AUTH_UNAUTHORIZED;
    /* From here on the token is good: what it does not grant is 403. */
    if (sub == NULL || !auth_json_streq(sub, key, key_len)) {
        *why = "sub_mismatch";
        return AUTH_FORBIDDEN;
    }
    for (size_t t = 0; tc != NULL && t < ntopics; t++) {
        size_t tl = strlen(topics[t]);
        int hit = 0;
        for (size_t i = 0; i < json_array_size(tc); i++)
            hit |= auth_json_streq(json_array_get(tc, i), topics[t], tl);
        if (!hit) {
            *why = "topic_not_allowed";
            return AUTH_FORBIDDEN;
        }
    }
    *why = "ok";
    return AUTH_OK;
}

enum auth_result auth_jwt_check(const struct auth *a, const char *token, size_t len,
                                const char *key, size_t key_len, char *const *topics,
                                size_t ntopics, int64_t now_s, const char **reason)
{
    /* Decoded parts are at most 3/4 of the token: stack buffers, no allocation. */
    unsigned char hbuf[AUTH_TOKEN_MAX * 3 / 4 + 1], pbuf[AUTH_TOKEN_MAX * 3 / 4 + 1],
        sbuf[AUTH_TOKEN_MAX * 3 / 4 + 1];
    const char *d1, *d2, *why = "malformed";
    long hl, pl, sl;
    json_t *hdr = NULL, *pay = NULL;
    const json_t *alg;
    enum auth_result res = AUTH_UNAUTHORIZED;
    int ok;

    if (len == 0 || token == NULL)
        goto out;
    if (len > AUTH_TOKEN_MAX) {
        why = "too_long";
        goto out;
    }
    if ((d1 = memchr(token, '.', len)) == NULL ||
        (d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token))) == NULL ||
        memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token)) != NULL)
        goto out;
    hl = auth_b64url_decode(token, (size_t)(d1 - token), hbuf);
    pl = auth_b64url_decode(d1 + 1, (size_t)(d2 - d1 - 1), pbuf);
    sl = auth_b64url_decode(d2 + 1, len - (size_t)(d2 + 1 - token), sbuf);
    if (hl <= 0 || pl <= 0 || sl < 0)
        goto out;
    /* Duplicate names are refused: two parsers reading different "sub"s is a classic. */
    hdr = json_loadb((const char *)hbuf, (size_t)hl, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(hdr) || !json_is_string(alg = json_object_get(hdr, "alg")))
        goto out;
    if (json_object_get(hdr, "crit") != NULL)
        goto out; /* we understand no extension, so none may be critical (RFC 7515 §4.1.11) */
    /* The key type pins the algorithm: an HS256 token meets only the secret, an RS256 or
     * ES256 token only the public key of that type. "none" meets nothing. */
    if (auth_json_streq(alg, "HS256", 5) && a->hs_secret != NULL)
        ok = auth_hs256_verify(a, (const unsigned char *)token, (size_t)(d2 - token), sbuf,
                               (size_t)sl);
    else if (auth_json_streq(alg, "RS256", 5) && a->key_type == AUTH_KEY_RSA)
        ok = auth_evp_verify(a->pkey, (const unsigned char *)token, (size_t)(d2 - token), sbuf,
                             (size_t)sl);
    else if (auth_json_streq(alg, "ES256", 5) && a->key_type == AUTH_KEY_EC_P256)
        ok = auth_es256_verify(a->pkey, (const unsigned char *)token, (size_t)(d2 - token), sbuf,
                               (size_t)sl);
    else {
        why = "alg_not_allowed";
        goto out;
    }
    if (!ok) {
        ERR_clear_error();
        why = "bad_signature";
        goto out;
    }
    pay = json_loadb((const char *)pbuf, (size_t)pl, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(pay))
        goto out;
    res = auth_claims_check(a, pay, key, key_len, topics, ntopics, now_s, &why);
out:
    json_decref(hdr);
    json_decref(pay);
    if (reason != NULL)
        *reason = why;
    return res;
}

/* --- minting --- */

char *auth_mint(const struct config *cfg, const char *sub, uint64_t ttl_s, int64_t now_s)
{
    jwt_t *j = NULL;
    char *tok = NULL;

    if (cfg->jwt_secret[0] == '\0' || sub == NULL || !key_valid(sub, strlen(sub)) || ttl_s == 0 ||
        ttl_s > AUTH_MINT_TTL_MAX || now_s < 0 || now_s > INT64_MAX - (int64_t)AUTH_MINT_TTL_MAX)
        return NULL;
    if (jwt_new(&j) != 0)
        return NULL;
    if (jwt_add_grant(j, "sub", sub) != 0 || jwt_add_grant_int(j, "iat", (long)now_s) != 0 ||
        jwt_add_grant_int(j, "exp", (long)(now_s + (int64_t)ttl_s)) != 0 ||
        (cfg->jwt_audience[0] != '\0' && jwt_add_grant(j, "aud", cfg->jwt_audience) != 0) ||
        (cfg->jwt_issuer[0] != '\0' && jwt_add_grant(j, "iss", cfg->jwt_issuer) != 0) ||
        jwt_set_alg(j, JWT_ALG_HS256, (const unsigned char *)cfg->jwt_secret,
                    (int)strlen(cfg->jwt_secret)) != 0)
        goto out;
    tok = jwt_encode_str(j); /* malloc'd by libjwt 1.10 (no allocator hooks in 1.10) */
out:
    jwt_free(j);
    return tok;
}
