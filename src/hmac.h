/* hmac.h — HMAC-SHA256 with the key set once: OpenSSL 3's one-shot HMAC() looks the
 * algorithm up and keys it on every call (~280k instructions); a context keyed once and
 * restarted per message costs a few thousand. Used by auth (tokens, HS256 JWTs) and by
 * bench/loadgen (minting JWTs). No state of its own; a context is one thread's at a time. */
#ifndef WSGATE_HMAC_H
#define WSGATE_HMAC_H

#include <stddef.h>
#include <stdint.h>

#define HMAC_SHA256_LEN 32

struct evp_mac_ctx_st;

/* A context keyed with key[0..len) (len 0 allowed); NULL when OpenSSL lacks HMAC or memory
 * is short. Owned by the caller: EVP_MAC_CTX_free. */
struct evp_mac_ctx_st *hmac_sha256_new(const void *key, size_t len);

/* out = HMAC-SHA256(ctx's key, p[0..len)). 0, or -1 on an OpenSSL failure. */
int hmac_sha256(struct evp_mac_ctx_st *ctx, const void *p, size_t len,
                uint8_t out[HMAC_SHA256_LEN]);

#endif
