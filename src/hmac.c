/* hmac.c — HMAC-SHA256 contexts keyed once (see hmac.h). */
#include "hmac.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>

EVP_MAC_CTX *hmac_sha256_new(const void *key, size_t len)
{
    static const unsigned char empty = 0;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                           OSSL_PARAM_construct_end()};
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;

    EVP_MAC_free(mac); /* ctx holds its own reference */
    if (ctx != NULL && EVP_MAC_init(ctx, len > 0 ? key : &empty, len, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    return ctx;
}

int hmac_sha256(EVP_MAC_CTX *ctx, const void *p, size_t len, uint8_t out[HMAC_SHA256_LEN])
{
    size_t n = 0;

    /* a NULL key restarts the MAC with the key set in hmac_sha256_new (its inner and outer
     * pads are kept: no key schedule or algorithm lookup per call) */
    if (EVP_MAC_init(ctx, NULL, 0, NULL) != 1 || (len > 0 && EVP_MAC_update(ctx, p, len) != 1) ||
        EVP_MAC_final(ctx, out, &n, HMAC_SHA256_LEN) != 1 || n != HMAC_SHA256_LEN)
        return -1;
    return 0;
}
