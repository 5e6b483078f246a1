/* util.c — pure helpers: session-key rules (1..128 bytes of [A-Za-z0-9_:.-], see
 * util.h), strict UTF-8 validation, duration and size parsing for the config.
 * Does NOT allocate, log or keep state: every function only reads its arguments, so any
 * thread may call them. utf8_valid runs on every text message: it checks 8 ASCII bytes
 * per step and decodes byte by byte only around non-ASCII characters. */
#include "util.h"

#include <string.h>

/* --- session keys and topic names --- */

/* 1 for the bytes of [A-Za-z0-9_:.-]: the only characters a key may hold. */
static const unsigned char util_key_chars[256] = {
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1,
    ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1,
    ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1,
    ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1,
    ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1,
    ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1,
    ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1, ['_'] = 1, [':'] = 1,
    ['.'] = 1, ['-'] = 1,
};

int key_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;

    if (s == NULL || len == 0 || len > KEY_MAX_LEN)
        return 0;
    /* '.' separates NATS subject tokens: an empty token (leading, trailing or "..")
     * would make an invalid subject. */
    if (p[0] == '.' || p[len - 1] == '.')
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (!util_key_chars[p[i]])
            return 0;
        if (p[i] == '.' && i + 1 < len && p[i + 1] == '.')
            return 0;
    }
    return 1;
}

/* --- UTF-8 --- */

#define UTIL_HI_BITS 0x8080808080808080ULL

/* Strict UTF-8 after the Unicode standard's table 3-7 (well-formed byte sequences):
 * the second byte's range depends on the lead byte, which is what rejects overlongs
 * (E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and code points over U+10FFFF
 * (F4 90..BF, F5..FF). C0, C1 and stray continuation bytes are never a lead. */
int utf8_valid(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t i = 0;

    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            /* In ASCII text: step 8 bytes at a time until a word holds a high byte. Only
             * entered from an ASCII byte, so dense non-ASCII text pays nothing for it. */
            i++;
            while (len - i >= 8) {
                uint64_t w;
                memcpy(&w, p + i, 8); /* unaligned-safe; compiles to one load */
                if ((w & UTIL_HI_BITS) != 0) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                    /* skip the ASCII bytes before the first high byte */
                    i += (size_t)__builtin_ctzll(w & UTIL_HI_BITS) / 8;
#endif
                    break;
                }
                i += 8;
            }
            continue;
        }
        size_t left = len - i;
        if (c >= 0xC2 && c <= 0xDF) {
            if (left < 2 || (p[i + 1] & 0xC0) != 0x80)
                return 0;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (left < 3)
                return 0;
            unsigned c1 = p[i + 1];
            unsigned lo = c == 0xE0 ? 0xA0 : 0x80; /* E0 80..9F: overlong */
            unsigned hi = c == 0xED ? 0x9F : 0xBF; /* ED A0..BF: surrogates */
            if (c1 < lo || c1 > hi || (p[i + 2] & 0xC0) != 0x80)
                return 0;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (left < 4)
                return 0;
            unsigned c1 = p[i + 1];
            unsigned lo = c == 0xF0 ? 0x90 : 0x80; /* F0 80..8F: overlong */
            unsigned hi = c == 0xF4 ? 0x8F : 0xBF; /* F4 90..: over U+10FFFF */
            if (c1 < lo || c1 > hi || (p[i + 2] & 0xC0) != 0x80 || (p[i + 3] & 0xC0) != 0x80)
                return 0;
            i += 4;
        } else {
            return 0; /* 80..C1 or F5..FF can never start a character */
        }
    }
    return 1;
}

/* --- durations and sizes --- */

/* Leading decimal digits of s into *out; returns a pointer past them, or NULL when there
 * are none or the number overflows 64 bits. No sign, no spaces. */
static const char *util_digits_parse(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    const char *p = s;

    while (*p >= '0' && *p <= '9') {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return NULL;
        v = v * 10 + d;
        p++;
    }
    if (p == s)
        return NULL;
    *out = v;
    return p;
}

/* *out = v * mul, or -1 on overflow. */
static int util_mul(uint64_t v, uint64_t mul, uint64_t *out)
{
    if (mul != 0 && v > UINT64_MAX / mul)
        return -1;
    *out = v * mul;
    return 0;
}

int parse_duration_ms(const char *s, uint64_t *ms)
{
    uint64_t v, mul;
    const char *u;

    if (s == NULL || (u = util_digits_parse(s, &v)) == NULL)
        return -1;
    if (strcmp(u, "") == 0 || strcmp(u, "s") == 0)
        mul = 1000;
    else if (strcmp(u, "ms") == 0)
        mul = 1;
    else if (strcmp(u, "m") == 0)
        mul = 60 * 1000;
    else if (strcmp(u, "h") == 0)
        mul = 60 * 60 * 1000;
    else
        return -1;
    return util_mul(v, mul, ms);
}

int parse_size(const char *s, uint64_t *bytes)
{
    uint64_t v, mul;
    const char *u;

    if (s == NULL || (u = util_digits_parse(s, &v)) == NULL)
        return -1;
    if (u[0] == '\0')
        mul = 1;
    else if ((u[0] == 'k' || u[0] == 'K') && u[1] == '\0')
        mul = 1024;
    else if ((u[0] == 'm' || u[0] == 'M') && u[1] == '\0')
        mul = 1024 * 1024;
    else
        return -1;
    return util_mul(v, mul, bytes);
}

size_t fmt_u64(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    out[n] = '\0';
    return n;
}

size_t str_put(char *out, size_t cap, size_t at, const char *s, size_t n)
{
    if (cap == 0)
        return 0;
    if (at > cap - 1)
        at = cap - 1;
    if (n > cap - 1 - at)
        n = cap - 1 - at;
    if (n > 0)
        memcpy(out + at, s, n);
    out[at + n] = '\0';
    return at + n;
}
