/* fuzz_config.c — libFuzzer target: bytes -> config_load() (src/config.c and the key
 * table of src/config_keys.c as shipped: cfg_file_gets, libinih, every key's value
 * parser, WSGATE_* environment overrides, the cross-key checks). The file is a memfd
 * named by /proc/self/fd/N, so nothing is written to disk. Besides the sanitizers, the contract of
 * config.h is checked: on error *cfg is left untouched; on success every string is terminated
 * within its field and the limits the server relies on hold. Single thread.
 *
 * Input: the config file, then optionally "\0\0" and environment entries separated by
 * single NULs (e.g. "WSGATE_SERVER_LISTEN=[::1]:0"; entries without WSGATE_ are ignored
 * by config_load). Errors go to /dev/null (WSGATE_FUZZ_LOG=1: to stderr).
 * Reproduce: build-fuzz/fuzz_config FILE. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

#define FZ_ENV_MAX 64 /* environment entries taken from one input */

#define FZ_TERMINATED(cfg, f) (memchr((cfg)->f, '\0', sizeof((cfg)->f)) != NULL)

static void fz_check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_config: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    static FILE *err;
    static struct config cfg, before;
    char *envp[FZ_ENV_MAX + 1];
    size_t nenv = 0;

    if (fd < 0) {
        fd = memfd_create("wsgate-fuzz.conf", MFD_CLOEXEC);
        fz_check(fd >= 0, "memfd_create failed");
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        err = getenv("WSGATE_FUZZ_LOG") ? stderr : fopen("/dev/null", "w");
        fz_check(err != NULL, "cannot open /dev/null");
    }
    const uint8_t *sep = memmem(data, size, "\0\0", 2);
    size_t flen = sep != NULL ? (size_t)(sep - data) : size;
    fz_check(ftruncate(fd, 0) == 0, "ftruncate failed");
    fz_check(flen == 0 || pwrite(fd, data, flen, 0) == (ssize_t)flen, "pwrite failed");

    /* the environment: a NUL-terminated copy of the rest, cut at each NUL */
    char *env = NULL;
    if (sep != NULL) {
        size_t elen = size - flen - 2;
        env = malloc(elen + 1);
        fz_check(env != NULL, "out of memory");
        memcpy(env, sep + 2, elen);
        env[elen] = '\0';
        for (char *p = env; p < env + elen && nenv < FZ_ENV_MAX; p += strlen(p) + 1)
            envp[nenv++] = p;
    }
    envp[nenv] = NULL;

    memset(&cfg, 0xa5, sizeof(cfg));
    before = cfg;
    int rc = config_load(&cfg, path, envp, err);
    fz_check(rc == 0 || rc == -1, "config_load returned neither 0 nor -1");
    if (rc < 0) {
        fz_check(memcmp(&cfg, &before, sizeof(cfg)) == 0, "config_load failed but changed *cfg");
    } else {
        fz_check(FZ_TERMINATED(&cfg, listen) && FZ_TERMINATED(&cfg, allowed_origins) &&
                     FZ_TERMINATED(&cfg, cors_origins) && FZ_TERMINATED(&cfg, trusted_proxies) &&
                     FZ_TERMINATED(&cfg, broker_type) && FZ_TERMINATED(&cfg, prefix) &&
                     FZ_TERMINATED(&cfg, redis_url) && FZ_TERMINATED(&cfg, nats_url) &&
                     FZ_TERMINATED(&cfg, nats_stream) && FZ_TERMINATED(&cfg, nats_token) &&
                     FZ_TERMINATED(&cfg, nats_creds) && FZ_TERMINATED(&cfg, push_tokens) &&
                     FZ_TERMINATED(&cfg, push_tokens_file) && FZ_TERMINATED(&cfg, jwt_secret) &&
                     FZ_TERMINATED(&cfg, jwt_public_key_file) &&
                     FZ_TERMINATED(&cfg, metrics_token) && FZ_TERMINATED(&cfg, jwt_audience) &&
                     FZ_TERMINATED(&cfg, jwt_issuer) && FZ_TERMINATED(&cfg, kafka_brokers) &&
                     FZ_TERMINATED(&cfg, kafka_group),
                 "a string field is not NUL-terminated");
        /* what the server divides by, loops on or sizes buffers from */
        fz_check(cfg.backlog >= 1 && cfg.max_connections >= 1 && cfg.max_http_connections >= 1 &&
                     cfg.max_pipeline >= 1 && cfg.max_inflight >= 1 &&
                     cfg.max_upstream_inflight >= 1 && cfg.max_fragments >= 1 && cfg.max_queue >= 1,
                 "a count that must be >= 1 is 0");
        fz_check(cfg.max_header_size >= 64 && cfg.max_message_size >= 1 &&
                     cfg.max_message_size <= 64ull * 1024 * 1024,
                 "a size is out of its range");
        fz_check(cfg.handshake_timeout_ms >= 1 && cfg.idle_timeout_ms >= 1 &&
                     cfg.close_timeout_ms >= 1 && cfg.ttl_ms >= 1,
                 "a timeout that must be >= 1 ms is 0");
        fz_check(cfg.ping_interval_ms == 0 || cfg.idle_timeout_ms > cfg.ping_interval_ms,
                 "idle_timeout <= ping_interval accepted");
        fz_check((unsigned)cfg.log_level <= LOG_LEVEL_DEBUG &&
                     (unsigned)cfg.frame_type <= MSG_FRAME_BINARY,
                 "an enum is out of range");
    }
    free(env);
    return 0;
}
