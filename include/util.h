/* util.h — pure helpers: session-key rules, UTF-8 validation, duration and size parsing,
 * decimal and string building for hot paths (snprintf costs ~1,000 instructions a call).
 * No allocation, no I/O, no state: safe from any thread. */
#ifndef WSGATE_UTIL_H
#define WSGATE_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define KEY_MAX_LEN 128

/* Session keys and topic names: 1..128 bytes of [A-Za-z0-9_:.-], no leading/trailing
 * '.' (it separates NATS subject tokens), no "..".
 * Returns 1 when valid. Used for session keys and topic names. */
int key_valid(const char *s, size_t len);
/* 1 when buf[0..len) is well-formed UTF-8 (no overlongs, surrogates, > U+10FFFF). */
int utf8_valid(const void *buf, size_t len);
/* "250ms", "30s", "5m", "1h", bare number = seconds. 0 and *ms set, or -1. */
int parse_duration_ms(const char *s, uint64_t *ms);
/* "512", "64k", "1m" (KiB/MiB), bare number = bytes. 0 and *bytes set, or -1. */
int parse_size(const char *s, uint64_t *bytes);

/* v in decimal into out (room for 21 bytes: 20 digits and a NUL); returns the digits. */
size_t fmt_u64(char *out, uint64_t v);
/* Append s[0..n) to out at offset at, truncating to keep room for a NUL within cap; out[]
 * is NUL-terminated after it. Returns the new offset (at most cap - 1; 0 when cap is 0). */
size_t str_put(char *out, size_t cap, size_t at, const char *s, size_t n);

#endif
