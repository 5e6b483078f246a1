/* test_auth.c — unit tests of src/auth.c: client JWTs (HS256, RS256, ES256 made with
 * libjwt from keys generated here; alg none and HS/RS confusion tokens made by hand),
 * claims (exp, nbf, iat, aud, iss, sub, topics), publisher and /metrics tokens, the token
 * file and its reload, init errors, token transports, origins, the client IP behind
 * trusted proxies, minting. Writes temp files under /tmp (mkstemp) and removes them.
 * Pure code: no loop. Single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka.h needs the four headers above first */
#include <cmocka.h>

#include <arpa/inet.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "auth.h"
#include "config.h"

#define NOW 1700000000LL
#define SECRET "s3cret-s3cret-s3cret-s3cret-0123"

/* --- fixtures: keys made once for the whole run --- */

struct keypair {
    char *priv;    /* owned: PKCS#8 PEM of the private key (libjwt signs with it) */
    char *pub;     /* owned: SubjectPublicKeyInfo PEM */
    char path[64]; /* temp file holding pub */
};

static struct keypair rsa, ec, ec2, rsa_small, ec384;
static char tmpfiles[16][64];
static int ntmp;

static char *bio_string(BIO *b)
{
    char *p;
    long n = BIO_get_mem_data(b, &p);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    BIO_free(b);
    return s;
}

static const char *write_temp(const char *content)
{
    char *path = tmpfiles[ntmp++];
    int fd;
    assert_true(ntmp <= 16);
    strcpy(path, "/tmp/test_auth.XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

static void rewrite(const char *path, const char *content)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static void keypair_make(struct keypair *k, EVP_PKEY *pk)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_non_null(pk);
    assert_int_equal(PEM_write_bio_PrivateKey(b, pk, NULL, NULL, 0, NULL, NULL), 1);
    k->priv = bio_string(b);
    b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PUBKEY(b, pk), 1);
    k->pub = bio_string(b);
    strcpy(k->path, write_temp(k->pub));
    EVP_PKEY_free(pk);
}

static int group_setup(void **state)
{
    (void)state;
    keypair_make(&rsa, EVP_RSA_gen(2048));
    keypair_make(&ec, EVP_EC_gen("P-256"));
    keypair_make(&ec2, EVP_EC_gen("P-256"));
    keypair_make(&rsa_small, EVP_RSA_gen(1024));
    keypair_make(&ec384, EVP_EC_gen("P-384"));
    return 0;
}

static int group_teardown(void **state)
{
    struct keypair *all[] = {&rsa, &ec, &ec2, &rsa_small, &ec384};
    (void)state;
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        free(all[i]->priv);
        free(all[i]->pub);
    }
    for (int i = 0; i < ntmp; i++)
        unlink(tmpfiles[i]);
    return 0;
}

/* --- helpers --- */

static struct config *cfg_new(void)
{
    struct config *c = malloc(sizeof *c);
    assert_non_null(c);
    config_defaults(c);
    return c;
}

static void auth_ok_init(struct auth *a, const struct config *c)
{
    char err[512] = "";
    int rc = auth_init(a, c, err, sizeof err);
    if (rc != 0)
        fail_msg("auth_init: %s", err);
}

/* A token signed by libjwt: alg and key, claims as a JSON object. Caller frees. */
static char *sign(jwt_alg_t alg, const char *key, size_t key_len, const char *claims)
{
    jwt_t *j = NULL;
    char *t;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, claims), 0);
    assert_int_equal(jwt_set_alg(j, alg, (const unsigned char *)key, (int)key_len), 0);
    t = jwt_encode_str(j);
    assert_non_null(t);
    jwt_free(j);
    return t;
}

static char *hs(const char *claims)
{
    return sign(JWT_ALG_HS256, SECRET, strlen(SECRET), claims);
}

static void b64url(const void *in, size_t len, char *out)
{
    int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
}

/* header.payload.sig from raw JSON, the signature given raw (may be empty). */
static char *craft(const char *header, const char *payload, const void *sig, size_t sig_len)
{
    char *t = malloc(4096);
    size_t n;
    assert_non_null(t);
    b64url(header, strlen(header), t);
    n = strlen(t);
    t[n++] = '.';
    b64url(payload, strlen(payload), t + n);
    n = strlen(t);
    t[n++] = '.';
    b64url(sig, sig_len, t + n);
    return t;
}

/* header.payload signed HS256 with key (any bytes), by hand. */
static char *craft_hs(const char *header, const char *payload, const char *key, size_t key_len)
{
    char *t = craft(header, payload, "", 0);
    unsigned char mac[32];
    unsigned int ml = 0;
    size_t n = strlen(t);
    HMAC(EVP_sha256(), key, (int)key_len, (unsigned char *)t, n - 1, mac, &ml);
    b64url(mac, ml, t + n);
    return t;
}

static enum auth_result check(const struct auth *a, const char *tok, const char **why)
{
    return auth_jwt_check(a, tok, strlen(tok), "user42", 6, NULL, 0, NOW, why);
}

#define EXPECT(a, tok, res, reason)                                                                \
    do {                                                                                           \
        const char *why_ = NULL;                                                                   \
        char *t_ = (tok);                                                                          \
        assert_int_equal(check((a), t_, &why_), (res));                                            \
        assert_string_equal(why_, (reason));                                                       \
        free(t_);                                                                                  \
    } while (0)

/* auth_init(&a, c, err) fails with rc_ and an error line holding substr. */
#define INIT_FAILS(rc_, substr)                                                                    \
    do {                                                                                           \
        err[0] = '\0';                                                                             \
        assert_int_equal(auth_init(&a, c, err, sizeof err), (rc_));                                \
        if (strstr(err, (substr)) == NULL)                                                         \
            fail_msg("error '%s' lacks '%s'", err, (substr));                                      \
    } while (0)

/* Fixture: an auth with jwt_secret only. */
static int hs_setup(void **state)
{
    struct config *c = cfg_new();
    struct auth *a = malloc(sizeof *a);
    strcpy(c->jwt_secret, SECRET);
    auth_ok_init(a, c);
    free(c);
    *state = a;
    return 0;
}

static int auth_teardown(void **state)
{
    auth_free(*state);
    free(*state);
    return 0;
}

/* --- HS256 and claims --- */

static void test_hs256_valid(void **state)
{
    struct auth *a = *state;
    assert_true(auth_client_required(a));
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1700000100}"), AUTH_OK, "ok");
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1700000100.5,\"iat\":1699999999}"), AUTH_OK, "ok");
}

static void test_hs256_wrong_key(void **state)
{
    EXPECT(*state, sign(JWT_ALG_HS256, "other", 5, "{\"sub\":\"user42\",\"exp\":1700000100}"),
           AUTH_UNAUTHORIZED, "bad_signature");
}

static void test_tampered_payload(void **state)
{
    char *t = hs("{\"sub\":\"user41\",\"exp\":1700000100}");
    char *d1 = strchr(t, '.'), *d2 = strchr(d1 + 1, '.');
    char other[128], *forged = malloc(strlen(t) + 16);
    const char *payload = "{\"sub\":\"user42\",\"exp\":1700000100}";
    b64url(payload, strlen(payload), other);
    sprintf(forged, "%.*s.%s%s", (int)(d1 - t), t, other, d2);
    free(t);
    EXPECT(*state, forged, AUTH_UNAUTHORIZED, "bad_signature");
}

static void test_exp(void **state)
{
    struct auth *a = *state;
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1699999000}"), AUTH_UNAUTHORIZED, "expired");
    /* Default leeway 60 s: 30 s past exp still passes, exactly 60 s past does not. */
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1699999970}"), AUTH_OK, "ok");
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1699999940}"), AUTH_UNAUTHORIZED, "expired");
    EXPECT(a, hs("{\"sub\":\"user42\"}"), AUTH_UNAUTHORIZED, "missing_exp");
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":\"1800000000\"}"), AUTH_UNAUTHORIZED, "malformed");
}

static void test_nbf_iat(void **state)
{
    struct auth *a = *state;
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1700000900,\"nbf\":1700000300}"), AUTH_UNAUTHORIZED,
           "not_yet_valid");
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1700000900,\"nbf\":1700000030}"), AUTH_OK, "ok");
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1700000900,\"iat\":1700000300}"), AUTH_UNAUTHORIZED,
           "iat_future");
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1700000900,\"iat\":1700000030}"), AUTH_OK, "ok");
    EXPECT(a, hs("{\"sub\":\"user42\",\"exp\":1700000900,\"nbf\":\"x\"}"), AUTH_UNAUTHORIZED,
           "malformed");
}

static void test_leeway_zero(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    (void)state;
    strcpy(c->jwt_secret, SECRET);
    c->jwt_leeway_ms = 0;
    auth_ok_init(&a, c);
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1699999999}"), AUTH_UNAUTHORIZED, "expired");
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000000}"), AUTH_UNAUTHORIZED, "expired");
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000001}"), AUTH_OK, "ok");
    auth_free(&a);
    free(c);
}

static void test_sub(void **state)
{
    struct auth *a = *state;
    EXPECT(a, hs("{\"sub\":\"user43\",\"exp\":1700000100}"), AUTH_FORBIDDEN, "sub_mismatch");
    EXPECT(a, hs("{\"sub\":\"user4\",\"exp\":1700000100}"), AUTH_FORBIDDEN, "sub_mismatch");
    EXPECT(a, hs("{\"exp\":1700000100}"), AUTH_FORBIDDEN, "sub_mismatch");
    EXPECT(a, hs("{\"sub\":42,\"exp\":1700000100}"), AUTH_UNAUTHORIZED, "malformed");
}

static void test_topics(void **state)
{
    struct auth *a = *state;
    char *in[] = {"news", "sport"}, *out[] = {"news", "admin"};
    const char *why;
    char *t = hs("{\"sub\":\"user42\",\"exp\":1700000100,\"topics\":[\"news\",\"sport\"]}");
    char *u = hs("{\"sub\":\"user42\",\"exp\":1700000100}");
    char *v = hs("{\"sub\":\"user42\",\"exp\":1700000100,\"topics\":[]}");
    char *w = hs("{\"sub\":\"user42\",\"exp\":1700000100,\"topics\":\"news\"}");

    assert_int_equal(auth_jwt_check(a, t, strlen(t), "user42", 6, in, 2, NOW, &why), AUTH_OK);
    assert_int_equal(auth_jwt_check(a, t, strlen(t), "user42", 6, in, 0, NOW, &why), AUTH_OK);
    assert_int_equal(auth_jwt_check(a, t, strlen(t), "user42", 6, out, 2, NOW, &why),
                     AUTH_FORBIDDEN);
    assert_string_equal(why, "topic_not_allowed");
    /* No topics claim: no limit. An empty claim: nothing allowed. */
    assert_int_equal(auth_jwt_check(a, u, strlen(u), "user42", 6, out, 2, NOW, &why), AUTH_OK);
    assert_int_equal(auth_jwt_check(a, v, strlen(v), "user42", 6, in, 1, NOW, &why),
                     AUTH_FORBIDDEN);
    assert_int_equal(auth_jwt_check(a, w, strlen(w), "user42", 6, in, 1, NOW, &why),
                     AUTH_UNAUTHORIZED);
    /* 401 outranks 403: a wrong sub with a bad topic claim is still malformed. */
    assert_int_equal(auth_jwt_check(a, w, strlen(w), "other", 5, in, 1, NOW, &why),
                     AUTH_UNAUTHORIZED);
    free(t);
    free(u);
    free(v);
    free(w);
}

static void test_aud_iss(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    (void)state;
    strcpy(c->jwt_secret, SECRET);
    strcpy(c->jwt_audience, "wsgate");
    strcpy(c->jwt_issuer, "https://issuer.example");
    auth_ok_init(&a, c);
#define ISS "\"iss\":\"https://issuer.example\""
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000100,\"aud\":\"wsgate\"," ISS "}"), AUTH_OK,
           "ok");
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000100,\"aud\":[\"x\",\"wsgate\"]," ISS "}"),
           AUTH_OK, "ok");
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000100,\"aud\":\"wsgatex\"," ISS "}"),
           AUTH_UNAUTHORIZED, "audience");
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000100,\"aud\":[\"x\",1]," ISS "}"),
           AUTH_UNAUTHORIZED, "audience");
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000100," ISS "}"), AUTH_UNAUTHORIZED,
           "audience");
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000100,\"aud\":\"wsgate\"}"), AUTH_UNAUTHORIZED,
           "issuer");
    EXPECT(&a,
           hs("{\"sub\":\"user42\",\"exp\":1700000100,\"aud\":\"wsgate\",\"iss\":\"https://"
              "evil.example\"}"),
           AUTH_UNAUTHORIZED, "issuer");
#undef ISS
    auth_free(&a);
    /* Not configured: aud and iss are not looked at. */
    c->jwt_audience[0] = c->jwt_issuer[0] = '\0';
    auth_ok_init(&a, c);
    EXPECT(&a, hs("{\"sub\":\"user42\",\"exp\":1700000100,\"aud\":\"other\",\"iss\":\"x\"}"),
           AUTH_OK, "ok");
    auth_free(&a);
    free(c);
}

static void test_malformed(void **state)
{
    struct auth *a = *state;
    char *big = malloc(AUTH_TOKEN_MAX + 2), *t;
    const char *why;
    size_t n;

    memset(big, 'A', AUTH_TOKEN_MAX + 1);
    big[AUTH_TOKEN_MAX + 1] = '\0';
    big[10] = big[20] = '.';
    EXPECT(a, big, AUTH_UNAUTHORIZED, "too_long");
    assert_int_equal(auth_jwt_check(a, "", 0, "user42", 6, NULL, 0, NOW, &why), AUTH_UNAUTHORIZED);
    EXPECT(a, strdup("garbage"), AUTH_UNAUTHORIZED, "malformed");
    EXPECT(a, strdup("a.b.c.d"), AUTH_UNAUTHORIZED, "malformed");
    EXPECT(a, strdup(".."), AUTH_UNAUTHORIZED, "malformed");
    /* A valid token with padding, a fourth part or a stray byte is no longer valid. */
    t = hs("{\"sub\":\"user42\",\"exp\":1700000100}");
    n = strlen(t);
    t = realloc(t, n + 3);
    strcpy(t + n, "==");
    EXPECT(a, t, AUTH_UNAUTHORIZED, "malformed");
    t = hs("{\"sub\":\"user42\",\"exp\":1700000100}");
    assert_int_equal(auth_jwt_check(a, t, strlen(t) - 1, "user42", 6, NULL, 0, NOW, &why),
                     AUTH_UNAUTHORIZED); /* signature cut short */
    free(t);
    /* Duplicate claim names, a payload that is not an object, a critical header. */
    EXPECT(a,
           craft_hs("{\"alg\":\"HS256\"}",
                    "{\"sub\":\"user42\",\"sub\":\"user43\",\"exp\":1700000100}", SECRET,
                    strlen(SECRET)),
           AUTH_UNAUTHORIZED, "malformed");
    EXPECT(a, craft_hs("{\"alg\":\"HS256\"}", "[1]", SECRET, strlen(SECRET)), AUTH_UNAUTHORIZED,
           "malformed");
    EXPECT(a,
           craft_hs("{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}",
                    "{\"sub\":\"user42\",\"exp\":1700000100}", SECRET, strlen(SECRET)),
           AUTH_UNAUTHORIZED, "malformed");
    /* Hand-made and correct: the crafting itself is right. */
    EXPECT(a,
           craft_hs("{\"alg\":\"HS256\"}", "{\"sub\":\"user42\",\"exp\":1700000100}", SECRET,
                    strlen(SECRET)),
           AUTH_OK, "ok");
}

static void test_alg_none(void **state)
{
    struct auth *a = *state;
    const char *p = "{\"sub\":\"user42\",\"exp\":1700000100}";
    EXPECT(a, craft("{\"alg\":\"none\"}", p, "", 0), AUTH_UNAUTHORIZED, "alg_not_allowed");
    EXPECT(a, craft("{\"alg\":\"None\",\"typ\":\"JWT\"}", p, "", 0), AUTH_UNAUTHORIZED,
           "alg_not_allowed");
    EXPECT(a, craft("{\"alg\":\"none\"}", p, "x", 1), AUTH_UNAUTHORIZED, "alg_not_allowed");
    EXPECT(a, craft("{\"typ\":\"JWT\"}", p, "", 0), AUTH_UNAUTHORIZED, "malformed");
    /* HS384/HS512 with the right secret are still not HS256. */
    EXPECT(a, sign(JWT_ALG_HS512, SECRET, strlen(SECRET), p), AUTH_UNAUTHORIZED, "alg_not_allowed");
}

/* --- public keys --- */

static void test_rs256_es256(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    const char *p = "{\"sub\":\"user42\",\"exp\":1700000100}";
    (void)state;
    strcpy(c->jwt_public_key_file, rsa.path);
    auth_ok_init(&a, c);
    assert_true(auth_client_required(&a));
    assert_int_equal(a.key_type, AUTH_KEY_RSA);
    EXPECT(&a, sign(JWT_ALG_RS256, rsa.priv, strlen(rsa.priv), p), AUTH_OK, "ok");
    EXPECT(&a, sign(JWT_ALG_RS256, rsa.priv, strlen(rsa.priv), "{\"sub\":\"user42\",\"exp\":1}"),
           AUTH_UNAUTHORIZED, "expired");
    /* RS384 and ES256 do not meet an RSA key. */
    EXPECT(&a, sign(JWT_ALG_RS384, rsa.priv, strlen(rsa.priv), p), AUTH_UNAUTHORIZED,
           "alg_not_allowed");
    EXPECT(&a, sign(JWT_ALG_ES256, ec.priv, strlen(ec.priv), p), AUTH_UNAUTHORIZED,
           "alg_not_allowed");
    /* HS256 without a secret: refused whatever it is signed with. */
    EXPECT(&a, hs(p), AUTH_UNAUTHORIZED, "alg_not_allowed");
    auth_free(&a);

    strcpy(c->jwt_public_key_file, ec.path);
    auth_ok_init(&a, c);
    assert_int_equal(a.key_type, AUTH_KEY_EC_P256);
    EXPECT(&a, sign(JWT_ALG_ES256, ec.priv, strlen(ec.priv), p), AUTH_OK, "ok");
    EXPECT(&a, sign(JWT_ALG_ES256, ec2.priv, strlen(ec2.priv), p), AUTH_UNAUTHORIZED,
           "bad_signature");
    EXPECT(&a, sign(JWT_ALG_RS256, rsa.priv, strlen(rsa.priv), p), AUTH_UNAUTHORIZED,
           "alg_not_allowed");
    auth_free(&a);
    free(c);
}

static void test_confusion(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    const char *p = "{\"sub\":\"user42\",\"exp\":1700000100}";
    char *rs_with_secret_mac;
    (void)state;

    /* HS256 signed with the public PEM as the HMAC secret, against the public key: with
     * only the key configured, and with a secret as well. */
    strcpy(c->jwt_public_key_file, rsa.path);
    auth_ok_init(&a, c);
    EXPECT(&a, sign(JWT_ALG_HS256, rsa.pub, strlen(rsa.pub), p), AUTH_UNAUTHORIZED,
           "alg_not_allowed");
    EXPECT(&a, craft_hs("{\"alg\":\"HS256\"}", p, rsa.pub, strlen(rsa.pub)), AUTH_UNAUTHORIZED,
           "alg_not_allowed");
    auth_free(&a);
    strcpy(c->jwt_secret, SECRET);
    auth_ok_init(&a, c);
    EXPECT(&a, sign(JWT_ALG_HS256, rsa.pub, strlen(rsa.pub), p), AUTH_UNAUTHORIZED,
           "bad_signature");
    EXPECT(&a, hs(p), AUTH_OK, "ok");
    EXPECT(&a, sign(JWT_ALG_RS256, rsa.priv, strlen(rsa.priv), p), AUTH_OK, "ok");
    /* The other way: an RS256 header over an HMAC made with the secret. */
    rs_with_secret_mac = craft_hs("{\"alg\":\"RS256\"}", p, SECRET, strlen(SECRET));
    EXPECT(&a, strdup(rs_with_secret_mac), AUTH_UNAUTHORIZED, "bad_signature");
    auth_free(&a);
    /* Secret only: an RS256 token (genuinely signed, or with an HMAC) is refused. */
    c->jwt_public_key_file[0] = '\0';
    auth_ok_init(&a, c);
    EXPECT(&a, sign(JWT_ALG_RS256, rsa.priv, strlen(rsa.priv), p), AUTH_UNAUTHORIZED,
           "alg_not_allowed");
    EXPECT(&a, rs_with_secret_mac, AUTH_UNAUTHORIZED, "alg_not_allowed");
    auth_free(&a);
    free(c);
}

static void test_key_file_errors(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    char err[512];
    (void)state;

    strcpy(c->jwt_public_key_file, "/nonexistent/key.pem");
    INIT_FAILS(UV_ENOENT, "key 'auth.jwt_public_key_file': cannot read");
    strcpy(c->jwt_public_key_file, write_temp(rsa.priv));
    INIT_FAILS(UV_EINVAL, "private key");
    strcpy(c->jwt_public_key_file, write_temp("not a key\n"));
    INIT_FAILS(UV_EINVAL, "BEGIN PUBLIC KEY");
    strcpy(c->jwt_public_key_file,
           write_temp("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"));
    INIT_FAILS(UV_EINVAL, "unreadable");
    strcpy(c->jwt_public_key_file, rsa_small.path);
    INIT_FAILS(UV_EINVAL, "2048");
    strcpy(c->jwt_public_key_file, ec384.path);
    INIT_FAILS(UV_EINVAL, "P-256");
    strcpy(c->jwt_public_key_file, "/tmp");
    INIT_FAILS(UV_EINVAL, "cannot read");
    free(c);
}

/* --- publisher and metrics tokens --- */

static void test_push_tokens(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    (void)state;
#define PUSH(v) auth_push_ok(&a, (v), strlen(v))
    auth_ok_init(&a, c);
    assert_false(auth_push_required(&a));
    assert_true(auth_push_ok(&a, NULL, 0));
    assert_true(auth_metrics_ok(&a, NULL, 0));
    assert_false(auth_client_required(&a));
    auth_free(&a);

    strcpy(c->push_tokens, " alpha , beta-2,,gamma ");
    auth_ok_init(&a, c);
    assert_true(auth_push_required(&a));
    assert_int_equal(a.npush, 3);
    assert_true(PUSH("Bearer alpha"));
    assert_true(PUSH("bearer beta-2"));
    assert_true(PUSH("BEARER   gamma  "));
    assert_false(PUSH("Bearer alph"));
    assert_false(PUSH("Bearer alphaa"));
    assert_false(PUSH("Bearer "));
    assert_false(PUSH("Bearer"));
    assert_false(PUSH("alpha"));
    assert_false(PUSH("Basic YWxwaGE6"));
    assert_false(PUSH("Bearer alpha beta-2"));
    assert_false(auth_push_ok(&a, NULL, 0));
    assert_false(auth_push_ok(&a, "Bearer alpha", 10)); /* length is honoured */
    /* with "alpha" as the last token that passed: the compared-first copy must not let
     * through a variant of it (control bytes, another scheme, a space inside) */
    assert_true(PUSH("Bearer alpha"));
    assert_false(PUSH("Bearer alpha\x7f"));
    assert_false(PUSH("Bearer alp\x01ha"));
    assert_false(PUSH("Bearerx alpha"));
    assert_false(PUSH("Bear alpha"));
    assert_false(PUSH("Bearer al pha"));
    assert_true(PUSH("Bearer\talpha"));
    auth_free(&a);

    /* a token of exactly AUTH_PUSH_LAST_MAX bytes: every 8-byte word of the kept copy
     * counts, the last one too */
    char tok[AUTH_PUSH_LAST_MAX + 1], hdr[AUTH_PUSH_LAST_MAX + 16];
    memset(tok, 'k', AUTH_PUSH_LAST_MAX);
    tok[AUTH_PUSH_LAST_MAX] = '\0';
    strcpy(c->push_tokens, tok);
    auth_ok_init(&a, c);
    snprintf(hdr, sizeof hdr, "Bearer %s", tok);
    assert_true(PUSH(hdr));
    assert_true(PUSH(hdr)); /* from the kept copy */
    for (size_t i = 0; i < AUTH_PUSH_LAST_MAX; i += 7) {
        hdr[7 + i] = 'x';
        assert_false(PUSH(hdr));
        hdr[7 + i] = 'k';
    }
    hdr[7 + AUTH_PUSH_LAST_MAX - 1] = 'x';
    assert_false(PUSH(hdr));
    hdr[7 + AUTH_PUSH_LAST_MAX - 1] = '\0'; /* one byte short */
    assert_false(PUSH(hdr));
    auth_free(&a);
    free(c);
#undef PUSH
}

static void test_metrics_token(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    (void)state;
    strcpy(c->metrics_token, "m-token");
    auth_ok_init(&a, c);
    assert_false(auth_push_required(&a));
    assert_true(auth_metrics_ok(&a, "Bearer m-token", 14));
    assert_false(auth_metrics_ok(&a, "Bearer m-toke", 13));
    assert_false(auth_metrics_ok(&a, NULL, 0));
    assert_true(auth_push_ok(&a, "Bearer m-token", 14)); /* push stays open */
    auth_free(&a);
    free(c);
}

static void test_token_file_reload(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    char err[512];
    const char *path = write_temp("# publishers\n\n  one  \r\ntwo\n#three\n");
    (void)state;
    strcpy(c->push_tokens, "cfg");
    strcpy(c->push_tokens_file, path);
    auth_ok_init(&a, c);
    assert_int_equal(a.npush, 3);
    assert_true(auth_push_ok(&a, "Bearer one", 10));
    assert_true(auth_push_ok(&a, "Bearer two", 10));
    assert_true(auth_push_ok(&a, "Bearer cfg", 10));
    assert_false(auth_push_ok(&a, "Bearer #three", 13));
    assert_false(auth_push_ok(&a, "Bearer four", 11));

    rewrite(path, "two\nfour");
    assert_int_equal(auth_reload(&a, err, sizeof err), 0);
    assert_true(auth_push_ok(&a, "Bearer four", 11));
    /* the last token that passed is remembered: neither a prefix nor an extension of it,
     * nor the same bytes with a NUL after them, pass through that shortcut */
    assert_false(auth_push_ok(&a, "Bearer fou", 10));
    assert_false(auth_push_ok(&a, "Bearer fourx", 12));
    assert_false(auth_push_ok(&a, "Bearer four\0", 12));
    assert_true(auth_push_ok(&a, "Bearer four", 11));
    assert_false(auth_push_ok(&a, "Bearer one", 10));
    assert_true(auth_push_ok(&a, "Bearer cfg", 10)); /* push_tokens survive a reload */

    /* A bad file (a token with a space; then no file) keeps the previous set. */
    rewrite(path, "five\nsix seven\n");
    assert_int_equal(auth_reload(&a, err, sizeof err), UV_EINVAL);
    assert_non_null(strstr(err, "line 2"));
    assert_null(strstr(err, "six"));
    assert_true(auth_push_ok(&a, "Bearer four", 11));
    assert_false(auth_push_ok(&a, "Bearer five", 11));
    unlink(path);
    assert_int_equal(auth_reload(&a, NULL, 0), UV_ENOENT);
    assert_true(auth_push_ok(&a, "Bearer four", 11));
    rewrite(path, "# nobody\n");
    assert_int_equal(auth_reload(&a, err, sizeof err), 0); /* empty: only cfg remains */
    assert_false(auth_push_ok(&a, "Bearer four", 11));
    assert_true(auth_push_ok(&a, "Bearer cfg", 10));
    auth_free(&a);

    /* A file with no token (and no push_tokens): required, nothing accepted. */
    c->push_tokens[0] = '\0';
    auth_ok_init(&a, c);
    assert_true(auth_push_required(&a));
    assert_false(auth_push_ok(&a, "Bearer nobody", 13));
    auth_free(&a);
    free(c);
}

static void test_init_errors_hide_secrets(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    char err[512];
    (void)state;
    strcpy(c->push_tokens, "good,bad token-SECRETX");
    INIT_FAILS(UV_EINVAL, "key 'auth.push_tokens': token 2");
    assert_null(strstr(err, "SECRETX"));
    strcpy(c->push_tokens, " , ");
    INIT_FAILS(UV_EINVAL, "no token");
    c->push_tokens[0] = '\0';
    strcpy(c->push_tokens_file, "/nonexistent/tokens");
    INIT_FAILS(UV_ENOENT, "key 'auth.push_tokens_file'");
    c->push_tokens_file[0] = '\0';
    strcpy(c->metrics_token, "has SECRETX space");
    INIT_FAILS(UV_EINVAL, "key 'auth.metrics_token'");
    assert_null(strstr(err, "SECRETX"));
    c->metrics_token[0] = '\0';
    strcpy(c->trusted_proxies, "10.0.0.0/8, 300.1.1.1");
    INIT_FAILS(UV_EINVAL, "key 'server.trusted_proxies': '300.1.1.1'");
    strcpy(c->trusted_proxies, "10.0.0.0/33");
    INIT_FAILS(UV_EINVAL, "trusted_proxies");
    strcpy(c->trusted_proxies, "::1/129");
    INIT_FAILS(UV_EINVAL, "trusted_proxies");
    strcpy(c->trusted_proxies, "10.0.0.0/");
    INIT_FAILS(UV_EINVAL, "trusted_proxies");
    c->trusted_proxies[0] = '\0';
    strcpy(c->allowed_origins, "https://a.example, *");
    INIT_FAILS(UV_EINVAL, "key 'server.allowed_origins': '*'");
    strcpy(c->allowed_origins, "https://a.example/");
    INIT_FAILS(UV_EINVAL, "not an origin");
    strcpy(c->allowed_origins, "https://A.example");
    INIT_FAILS(UV_EINVAL, "lowercase");
    strcpy(c->allowed_origins, "a.example");
    INIT_FAILS(UV_EINVAL, "not an origin");
    strcpy(c->allowed_origins, "*");
    strcpy(c->cors_origins, "http://x:1 y");
    INIT_FAILS(UV_EINVAL, "key 'server.cors_origins'");
    free(c);
}

/* --- transports --- */

static void test_bearer_parse(void **state)
{
    const char *t;
    size_t n;
    (void)state;
#define BEARER(v) auth_bearer((v), strlen(v), &t, &n)
    assert_int_equal(BEARER("Bearer abc.def"), 0);
    assert_int_equal(n, 7);
    assert_memory_equal(t, "abc.def", 7);
    assert_int_equal(BEARER(" bEaReR \tabc \r\n"), 0);
    assert_int_equal(n, 3);
    assert_int_equal(BEARER("Basic dXNlcjpwdw=="), UV_ENOENT);
    assert_int_equal(BEARER("Bearerabc"), UV_ENOENT);
    assert_int_equal(BEARER(""), UV_ENOENT);
    assert_int_equal(BEARER("Bearer"), UV_EINVAL);
    assert_int_equal(BEARER("Bearer   "), UV_EINVAL);
    assert_int_equal(BEARER("Bearer a b"), UV_EINVAL);
    assert_int_equal(auth_bearer(NULL, 0, &t, &n), UV_ENOENT);
    assert_null(t);
#undef BEARER
}

static void test_query_token(void **state)
{
    const char *t;
    size_t n;
    (void)state;
#define QUERY(v) auth_query_token((v), strlen(v), &t, &n)
    assert_int_equal(QUERY("token=abc"), 0);
    assert_int_equal(n, 3);
    assert_int_equal(QUERY("?topics=a,b&token=x.y.z&token=other"), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(t, "x.y.z", 5);
    assert_int_equal(QUERY("mytoken=abc&xtoken=1"), UV_ENOENT);
    assert_int_equal(QUERY("token="), UV_ENOENT);
    assert_int_equal(QUERY("token=&token=abc"), UV_ENOENT); /* the first one decides */
    assert_int_equal(QUERY("token=a%2Eb"), 0);              /* not decoded */
    assert_int_equal(n, 5);
    assert_int_equal(QUERY(""), UV_ENOENT);
    assert_int_equal(auth_query_token(NULL, 0, &t, &n), UV_ENOENT);
#undef QUERY
}

static void test_protocol_token(void **state)
{
    const char *t;
    size_t n;
    (void)state;
#define PROTO(v) auth_ws_protocol_token((v), strlen(v), &t, &n)
    assert_int_equal(PROTO("bearer, a.b.c"), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(t, "a.b.c", 5);
    assert_int_equal(PROTO("chat,bearer,\ta.b.c ,x"), 0);
    assert_int_equal(n, 5);
    assert_int_equal(PROTO("bearer,,a.b.c"), 0);
    assert_int_equal(PROTO("bearer"), UV_ENOENT);
    assert_int_equal(PROTO("bearer, "), UV_ENOENT);
    assert_int_equal(PROTO("Bearer, a.b.c"), UV_ENOENT);
    assert_int_equal(PROTO("a.b.c, bearer"), UV_ENOENT);
    assert_int_equal(PROTO("chat"), UV_ENOENT);
#undef PROTO
}

static void test_client_token_order(void **state)
{
    const char *t;
    size_t n;
    (void)state;
    assert_int_equal(auth_client_token("Bearer h", 8, "token=q", 7, "bearer, p", 9, &t, &n),
                     AUTH_FROM_HEADER);
    assert_memory_equal(t, "h", 1);
    assert_int_equal(auth_client_token("Basic x", 7, "token=q", 7, "bearer, p", 9, &t, &n),
                     AUTH_FROM_QUERY);
    assert_memory_equal(t, "q", 1);
    assert_int_equal(auth_client_token(NULL, 0, "a=1", 3, "bearer, p", 9, &t, &n),
                     AUTH_FROM_PROTOCOL);
    assert_memory_equal(t, "p", 1);
    assert_int_equal(auth_client_token(NULL, 0, NULL, 0, NULL, 0, &t, &n), AUTH_FROM_NONE);
    assert_null(t);
    assert_int_equal(n, 0);
}

/* --- origins --- */

static void test_origins(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    (void)state;
#define ORIGIN(v) auth_origin_ok(&a, (v), strlen(v))
#define CORS(v) auth_cors_ok(&a, (v), strlen(v))
    auth_ok_init(&a, c); /* defaults: allowed_origins "*", cors_origins "" */
    assert_true(ORIGIN("https://anything.example"));
    assert_true(ORIGIN("null"));
    assert_false(CORS("https://anything.example"));
    auth_free(&a);

    strcpy(c->allowed_origins, "https://app.example.com, http://localhost:8080");
    strcpy(c->cors_origins, "https://admin.example.com,null");
    auth_ok_init(&a, c);
    assert_true(ORIGIN("https://app.example.com"));
    assert_true(ORIGIN(" http://localhost:8080 "));
    assert_false(ORIGIN("http://app.example.com"));
    assert_false(ORIGIN("https://app.example.com:443"));
    assert_false(ORIGIN("https://APP.example.com"));
    assert_false(ORIGIN("https://app.example.co"));
    assert_false(ORIGIN("https://app.example.com.evil"));
    assert_false(ORIGIN("http://localhost"));
    assert_false(ORIGIN("null"));
    assert_false(ORIGIN(""));
    assert_false(auth_origin_ok(&a, NULL, 0));
    assert_true(CORS("https://admin.example.com"));
    assert_true(CORS("null"));
    assert_false(CORS("https://app.example.com"));
    auth_free(&a);
    free(c);
#undef ORIGIN
#undef CORS
}

/* --- client IP --- */

static void sa4(struct sockaddr_storage *ss, const char *ip)
{
    struct sockaddr_in *s = (struct sockaddr_in *)ss;
    memset(ss, 0, sizeof *ss);
    s->sin_family = AF_INET;
    assert_int_equal(inet_pton(AF_INET, ip, &s->sin_addr), 1);
}

static void sa6(struct sockaddr_storage *ss, const char *ip)
{
    struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof *ss);
    s->sin6_family = AF_INET6;
    assert_int_equal(inet_pton(AF_INET6, ip, &s->sin6_addr), 1);
}

static void expect_ip(const struct auth *a, const struct sockaddr_storage *peer, const char *xff,
                      const char *want)
{
    char out[INET6_ADDRSTRLEN];
    assert_int_equal(
        auth_client_ip(a, (const struct sockaddr *)peer, xff, xff != NULL ? strlen(xff) : 0, out),
        0);
    assert_string_equal(out, want);
}

static void test_client_ip(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    struct sockaddr_storage p;
    char out[INET6_ADDRSTRLEN];
    (void)state;

    /* No trusted proxies: X-Forwarded-For is never believed. */
    auth_ok_init(&a, c);
    sa4(&p, "10.1.2.3");
    expect_ip(&a, &p, "1.1.1.1", "10.1.2.3");
    auth_free(&a);

    strcpy(c->trusted_proxies, "10.0.0.0/8, 192.168.1.7, 2001:db8::/32");
    auth_ok_init(&a, c);
    assert_int_equal(a.nproxies, 3);
    sa4(&p, "203.0.113.9"); /* untrusted peer: its XFF is ignored */
    expect_ip(&a, &p, "1.1.1.1", "203.0.113.9");
    sa4(&p, "10.9.9.9"); /* trusted: the rightmost untrusted hop */
    expect_ip(&a, &p, "6.6.6.6, 1.1.1.1, 192.168.1.7", "1.1.1.1");
    expect_ip(&a, &p, "1.1.1.1,10.0.0.2", "1.1.1.1");
    expect_ip(&a, &p, "10.0.0.3, 10.0.0.2", "10.0.0.3"); /* all trusted: leftmost */
    expect_ip(&a, &p, NULL, "10.9.9.9");
    expect_ip(&a, &p, "", "10.9.9.9");
    /* Malformed hops stop the walk at the last good address. */
    expect_ip(&a, &p, "1.1.1.1, unknown", "10.9.9.9");
    expect_ip(&a, &p, "1.1.1.1, 2.2.2.2:5555, 10.0.0.2", "10.0.0.2");
    expect_ip(&a, &p, "1.1.1.1, , 10.0.0.2", "10.0.0.2");
    expect_ip(&a, &p, "1.1.1.1,", "10.9.9.9");
    expect_ip(&a, &p, "garbage, 10.0.0.2", "10.0.0.2");
    expect_ip(&a, &p, "[2001:db9::1]", "10.9.9.9");
    /* IPv6 peers and hops. */
    sa6(&p, "2001:db8:1::5");
    expect_ip(&a, &p, "2001:db9::1", "2001:db9::1");
    expect_ip(&a, &p, "1.1.1.1, 2001:db8::7", "1.1.1.1");
    sa6(&p, "2001:db9::5");
    expect_ip(&a, &p, "1.1.1.1", "2001:db9::5");
    /* An IPv4-mapped IPv6 peer matches the IPv4 CIDR and is written as IPv4. */
    sa6(&p, "::ffff:10.2.3.4");
    expect_ip(&a, &p, "1.1.1.1", "1.1.1.1");
    sa6(&p, "::ffff:8.8.8.8");
    expect_ip(&a, &p, "1.1.1.1", "8.8.8.8");
    /* A non-IP peer. */
    p.ss_family = AF_UNIX;
    assert_int_equal(auth_client_ip(&a, (struct sockaddr *)&p, NULL, 0, out), UV_EAFNOSUPPORT);
    assert_string_equal(out, "");
    auth_free(&a);

    /* Host bits in a CIDR are masked; /0 trusts everything; odd prefix lengths. */
    strcpy(c->trusted_proxies, "172.16.5.5/12,fe80::1/10");
    auth_ok_init(&a, c);
    sa4(&p, "172.31.255.255");
    expect_ip(&a, &p, "1.1.1.1", "1.1.1.1");
    sa4(&p, "172.32.0.1");
    expect_ip(&a, &p, "1.1.1.1", "172.32.0.1");
    sa6(&p, "febf::1");
    expect_ip(&a, &p, "1.1.1.1", "1.1.1.1");
    sa6(&p, "fec0::1");
    expect_ip(&a, &p, "1.1.1.1", "fec0::1");
    auth_free(&a);
    strcpy(c->trusted_proxies, "0.0.0.0/0");
    auth_ok_init(&a, c);
    sa4(&p, "5.5.5.5");
    expect_ip(&a, &p, "1.1.1.1, 2.2.2.2", "1.1.1.1");
    auth_free(&a);
    free(c);
}

/* --- minting --- */

static void test_mint(void **state)
{
    struct config *c = cfg_new();
    struct auth a;
    char *t;
    (void)state;
    assert_null(auth_mint(c, "user42", 3600, NOW)); /* no secret */
    strcpy(c->jwt_secret, SECRET);
    strcpy(c->jwt_audience, "wsgate");
    strcpy(c->jwt_issuer, "me");
    assert_null(auth_mint(c, "bad key!", 3600, NOW));
    assert_null(auth_mint(c, "user42", 0, NOW));
    auth_ok_init(&a, c);
    t = auth_mint(c, "user42", 3600, NOW);
    assert_non_null(t);
    assert_int_equal(auth_jwt_check(&a, t, strlen(t), "user42", 6, NULL, 0, NOW + 3599, NULL),
                     AUTH_OK);
    assert_int_equal(auth_jwt_check(&a, t, strlen(t), "user42", 6, NULL, 0, NOW + 3600 + 60, NULL),
                     AUTH_UNAUTHORIZED);
    assert_int_equal(auth_jwt_check(&a, t, strlen(t), "user43", 6, NULL, 0, NOW, NULL),
                     AUTH_FORBIDDEN);
    free(t);
    auth_free(&a);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hs256_valid, hs_setup, auth_teardown),
        cmocka_unit_test_setup_teardown(test_hs256_wrong_key, hs_setup, auth_teardown),
        cmocka_unit_test_setup_teardown(test_tampered_payload, hs_setup, auth_teardown),
        cmocka_unit_test_setup_teardown(test_exp, hs_setup, auth_teardown),
        cmocka_unit_test_setup_teardown(test_nbf_iat, hs_setup, auth_teardown),
        cmocka_unit_test(test_leeway_zero),
        cmocka_unit_test_setup_teardown(test_sub, hs_setup, auth_teardown),
        cmocka_unit_test_setup_teardown(test_topics, hs_setup, auth_teardown),
        cmocka_unit_test(test_aud_iss),
        cmocka_unit_test_setup_teardown(test_malformed, hs_setup, auth_teardown),
        cmocka_unit_test_setup_teardown(test_alg_none, hs_setup, auth_teardown),
        cmocka_unit_test(test_rs256_es256),
        cmocka_unit_test(test_confusion),
        cmocka_unit_test(test_key_file_errors),
        cmocka_unit_test(test_push_tokens),
        cmocka_unit_test(test_metrics_token),
        cmocka_unit_test(test_token_file_reload),
        cmocka_unit_test(test_init_errors_hide_secrets),
        cmocka_unit_test(test_bearer_parse),
        cmocka_unit_test(test_query_token),
        cmocka_unit_test(test_protocol_token),
        cmocka_unit_test(test_client_token_order),
        cmocka_unit_test(test_origins),
        cmocka_unit_test(test_client_ip),
        cmocka_unit_test(test_mint),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
