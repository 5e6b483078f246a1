/* test_util.c — unit tests of src/util.c (session-key rules, strict UTF-8, durations,
 * sizes) and of src/log.c's line format (log has no test file of its own yet).
 * Does NOT touch the network or brokers. Single-threaded; the log tests point fd 2 at a
 * temp file for a moment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka.h needs the four headers above first */
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

/* --- key_valid --- */

static const char key_allowed[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                  "0123456789_:.-";

static int kv(const char *s)
{
    return key_valid(s, strlen(s));
}

static void test_key_lengths(void **state)
{
    char buf[KEY_MAX_LEN + 2];
    (void)state;

    assert_int_equal(KEY_MAX_LEN, 128);
    assert_false(key_valid("", 0));
    assert_false(key_valid(NULL, 0));
    assert_true(kv("a"));
    memset(buf, 'k', sizeof buf);
    assert_true(key_valid(buf, 128));
    assert_false(key_valid(buf, 129));
    assert_true(key_valid(buf, 127));
    /* 128 bytes with dots inside is fine; ending with '.' is not. */
    for (int i = 1; i < 127; i += 2)
        buf[i] = '.';
    assert_true(key_valid(buf, 128));
    buf[127] = '.';
    assert_false(key_valid(buf, 128));
    assert_true(key_valid(buf, 127)); /* ends in 'k' at 126 */
}

static void test_key_every_byte(void **state)
{
    (void)state;
    /* "a<c>a" is valid exactly when c is one of [A-Za-z0-9_:.-]. */
    for (int c = 0; c < 256; c++) {
        char s[3] = {'a', (char)c, 'a'};
        int want = c != 0 && strchr(key_allowed, c) != NULL;
        if (key_valid(s, 3) != want)
            fail_msg("key_valid(\"a\\x%02x a\") = %d, want %d", c, !want, want);
        /* as a one-byte key, '.' is refused (leading and trailing) */
        int want1 = want && c != '.';
        if (key_valid(s + 1, 1) != want1)
            fail_msg("key_valid(\"\\x%02x\") = %d, want %d", c, !want1, want1);
    }
    assert_true(key_valid(key_allowed, strlen(key_allowed)));
}

static void test_key_dots(void **state)
{
    (void)state;
    assert_true(kv("svc1.user42"));
    assert_true(kv("a.b.c"));
    assert_true(kv("a:b-c_d.E9"));
    assert_true(kv("-"));
    assert_true(kv(":"));
    assert_false(kv("."));
    assert_false(kv(".."));
    assert_false(kv(".a"));
    assert_false(kv("a."));
    assert_false(kv("a..b"));
    assert_false(kv("a...b"));
    assert_false(kv("a.b..c"));
    assert_false(kv("a/b"));
    assert_false(kv("a b"));
    assert_false(kv("a%2Eb"));
    assert_false(kv("é"));
    /* len is honoured, not strlen */
    assert_false(key_valid("a.b", 2)); /* "a." */
    assert_true(key_valid("a..", 1));  /* "a" */
    assert_false(key_valid("a\0b", 3));
}

/* --- utf8_valid --- */

/* Reference decoder, written the other way round from util.c: decode the code point,
 * then refuse overlongs, surrogates and > U+10FFFF by value. */
static int ref_utf8(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        size_t need;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            need = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            need = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i - 1 < need)
            return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* utf8_valid on an exactly-sized heap copy, so ASan sees any read past the end. */
static int u8(const void *p, size_t n)
{
    unsigned char *copy = malloc(n ? n : 1);
    assert_non_null(copy);
    memcpy(copy, p, n);
    int r = utf8_valid(copy, n);
    free(copy);
    return r;
}

#define U8_OK(lit) assert_int_equal(u8(lit, sizeof(lit) - 1), 1)
#define U8_BAD(lit) assert_int_equal(u8(lit, sizeof(lit) - 1), 0)

static void test_utf8_valid_sequences(void **state)
{
    (void)state;
    U8_OK("");
    U8_OK("plain ascii, all of it: !\"#$%&'()*+,-./0123456789:;<=>?@ ~\x7f");
    U8_OK("\x00\x01 nul and controls are valid UTF-8");
    U8_OK("h\xc3\xa9llo \xe2\x82\xac"); /* héllo € */
    U8_OK("\xc2\x80");                  /* U+0080 smallest 2-byte */
    U8_OK("\xdf\xbf");                  /* U+07FF */
    U8_OK("\xe0\xa0\x80");              /* U+0800 smallest 3-byte */
    U8_OK("\xed\x9f\xbf");              /* U+D7FF just below the surrogates */
    U8_OK("\xee\x80\x80");              /* U+E000 just above */
    U8_OK("\xef\xbf\xbf");              /* U+FFFF */
    U8_OK("\xef\xbb\xbf");              /* BOM is a character */
    U8_OK("\xf0\x90\x80\x80");          /* U+10000 smallest 4-byte */
    U8_OK("\xf0\x9f\x98\x80");          /* U+1F600 */
    U8_OK("\xf3\xbf\xbf\xbf");          /* U+FFFFF */
    U8_OK("\xf4\x8f\xbf\xbf");          /* U+10FFFF largest */
    U8_OK("abcdefg\xc3\xa9"
          "abcdefgh\xe2\x82\xac"
          "12345678\xf0\x9f\x98\x80"
          "x");
}

static void test_utf8_overlongs(void **state)
{
    (void)state;
    U8_BAD("\xc0\x80"); /* U+0000 in 2 bytes */
    U8_BAD("\xc0\xaf"); /* '/' */
    U8_BAD("\xc1\xbf"); /* U+007F */
    U8_BAD("\xe0\x80\x80");
    U8_BAD("\xe0\x80\xaf");
    U8_BAD("\xe0\x9f\xbf"); /* U+07FF in 3 bytes */
    U8_BAD("\xf0\x80\x80\x80");
    U8_BAD("\xf0\x80\x80\xaf");
    U8_BAD("\xf0\x8f\xbf\xbf"); /* U+FFFF in 4 bytes */
    U8_BAD("\xf8\x80\x80\x80\xaf");
    U8_BAD("\xfc\x80\x80\x80\x80\xaf");
}

static void test_utf8_surrogates(void **state)
{
    (void)state;
    U8_BAD("\xed\xa0\x80");             /* U+D800 */
    U8_BAD("\xed\xad\xbf");             /* U+DB7F */
    U8_BAD("\xed\xb0\x80");             /* U+DC00 */
    U8_BAD("\xed\xbf\xbf");             /* U+DFFF */
    U8_BAD("\xed\xa0\xbd\xed\xb8\x80"); /* CESU-8 pair for U+1F600 */
    U8_BAD("ok so far \xed\xa0\x80");
}

static void test_utf8_above_max(void **state)
{
    (void)state;
    U8_BAD("\xf4\x90\x80\x80"); /* U+110000 */
    U8_BAD("\xf4\xbf\xbf\xbf");
    U8_BAD("\xf5\x80\x80\x80");
    U8_BAD("\xf7\xbf\xbf\xbf"); /* U+1FFFFF */
    U8_BAD("\xf8\x88\x80\x80\x80");
    U8_BAD("\xfe");
    U8_BAD("\xff");
    U8_BAD("\xfe\xfe\xff\xff");
}

static void test_utf8_truncated_and_stray(void **state)
{
    (void)state;
    U8_BAD("\xc3");
    U8_BAD("\xe2\x82");
    U8_BAD("\xe2");
    U8_BAD("\xf0\x9f\x98");
    U8_BAD("\xf0\x9f");
    U8_BAD("\xf0");
    U8_BAD("abc\xe2\x82"); /* cut at the end of the buffer */
    U8_BAD("\xe2\x82"
           "A"); /* ASCII where a continuation belongs */
    U8_BAD("\xf0\x9f\x98"
           "ABCDEFGH");
    U8_BAD("\xc3\xc3\xa9"); /* lead byte as continuation */
    U8_BAD("\x80");         /* stray continuation */
    U8_BAD("\xbf");
    U8_BAD("a\x80"
           "bcdefghij");
    U8_BAD("\xc3\xa9\xa9"); /* one continuation too many */
    /* the length argument ends the buffer: a valid char cut by len is invalid */
    assert_int_equal(utf8_valid("\xe2\x82\xac", 2), 0);
    assert_int_equal(utf8_valid("\xe2\x82\xac", 3), 1);
    assert_int_equal(utf8_valid("\xff", 0), 1);
}

/* Every 1-, 2- and 3-byte sequence, and every 4-byte lead with every second byte and
 * boundary third/fourth bytes, agree with the reference decoder. */
static void test_utf8_exhaustive_short(void **state)
{
    unsigned char b[4];
    static const unsigned char edge[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f,
                                         0xa0, 0xbf, 0xc0, 0xc2, 0xf4, 0xff};
    (void)state;

    for (unsigned a = 0; a < 256; a++) {
        b[0] = (unsigned char)a;
        assert_int_equal(utf8_valid(b, 1), ref_utf8(b, 1));
        for (unsigned c = 0; c < 256; c++) {
            b[1] = (unsigned char)c;
            if (utf8_valid(b, 2) != ref_utf8(b, 2))
                fail_msg("%02x %02x", a, c);
        }
    }
    for (unsigned a = 0xE0; a <= 0xEF; a++) {
        for (unsigned c = 0; c < 256; c++) {
            for (unsigned d = 0; d < 256; d++) {
                b[0] = (unsigned char)a, b[1] = (unsigned char)c, b[2] = (unsigned char)d;
                if (utf8_valid(b, 3) != ref_utf8(b, 3))
                    fail_msg("%02x %02x %02x", a, c, d);
            }
        }
    }
    for (unsigned a = 0xF0; a <= 0xFF; a++) {
        for (unsigned c = 0; c < 256; c++) {
            for (size_t i = 0; i < sizeof edge; i++) {
                for (size_t j = 0; j < sizeof edge; j++) {
                    b[0] = (unsigned char)a, b[1] = (unsigned char)c;
                    b[2] = edge[i], b[3] = edge[j];
                    if (utf8_valid(b, 4) != ref_utf8(b, 4))
                        fail_msg("%02x %02x %02x %02x", a, c, b[2], b[3]);
                }
            }
        }
    }
}

/* The 8-bytes-at-a-time ASCII path: a bad or multi-byte character at every position of
 * buffers of 0..40 bytes, starting at every alignment, right up to the last byte. */
static void test_utf8_fast_path_boundaries(void **state)
{
    static const struct {
        const char *s;
        size_t n;
        int ok;
    } ins[] = {
        {"\x80", 1, 0},         {"\xff", 1, 0},
        {"\xc3\xa9", 2, 1},     {"\xc3", 1, 0},
        {"\xe2\x82\xac", 3, 1}, {"\xe2\x82", 2, 0},
        {"\xed\xa0\x80", 3, 0}, {"\xf0\x9f\x98\x80", 4, 1},
        {"\xf0\x9f\x98", 3, 0}, {"\xf4\x90\x80\x80", 4, 0},
        {"\xc0\x80", 2, 0},
    };
    unsigned char area[64 + 8];
    (void)state;

    for (size_t align = 0; align < 8; align++) {
        for (size_t len = 0; len <= 40; len++) {
            unsigned char *buf = area + align;
            memset(buf, 'a', len);
            assert_int_equal(u8(buf, len), 1);
            for (size_t t = 0; t < sizeof ins / sizeof ins[0]; t++) {
                for (size_t pos = 0; pos + ins[t].n <= len; pos++) {
                    memset(buf, 'a', len);
                    memcpy(buf + pos, ins[t].s, ins[t].n);
                    /* directly on the aligned/unaligned buffer, and on a tight copy */
                    int got = utf8_valid(buf, len);
                    if (got != ins[t].ok || u8(buf, len) != ins[t].ok)
                        fail_msg("insert %zu at pos %zu len %zu align %zu: got %d", t, pos, len,
                                 align, got);
                }
            }
            /* a multi-byte char cut by the end of the buffer */
            if (len >= 1) {
                memset(buf, 'a', len);
                buf[len - 1] = 0xe2;
                assert_int_equal(u8(buf, len), 0);
            }
        }
    }
}

/* Random mixes of ASCII runs and characters, some corrupted, against the reference. */
static void test_utf8_random_vs_reference(void **state)
{
    static const char *const chars[] = {
        "a", "abcdefgh", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xef\xbf\xbf", "\x7f"};
    unsigned char buf[256];
    uint32_t seed = 12345;
    int valid = 0, invalid = 0;
    (void)state;

    for (int iter = 0; iter < 20000; iter++) {
        size_t n = 0;
        while (n < 200) {
            seed = seed * 1103515245u + 12345u;
            const char *c = chars[(seed >> 16) % 7];
            size_t cl = strlen(c);
            memcpy(buf + n, c, cl);
            n += cl;
        }
        if (iter % 2) {
            seed = seed * 1103515245u + 12345u;
            buf[(seed >> 8) % n] = (unsigned char)(seed >> 24);
        }
        int want = ref_utf8(buf, n);
        if (u8(buf, n) != want)
            fail_msg("iteration %d: mismatch with reference (want %d)", iter, want);
        want ? valid++ : invalid++;
    }
    /* the generator must exercise both answers */
    assert_true(valid > 1000);
    assert_true(invalid > 1000);
}

/* --- durations and sizes --- */

static void test_duration_units(void **state)
{
    uint64_t v;
    (void)state;

    assert_int_equal(parse_duration_ms("250ms", &v), 0);
    assert_int_equal(v, 250);
    assert_int_equal(parse_duration_ms("30s", &v), 0);
    assert_int_equal(v, 30000);
    assert_int_equal(parse_duration_ms("5m", &v), 0);
    assert_int_equal(v, 300000);
    assert_int_equal(parse_duration_ms("1h", &v), 0);
    assert_int_equal(v, 3600000);
    assert_int_equal(parse_duration_ms("10", &v), 0); /* bare = seconds */
    assert_int_equal(v, 10000);
    assert_int_equal(parse_duration_ms("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(parse_duration_ms("0ms", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(parse_duration_ms("007s", &v), 0);
    assert_int_equal(v, 7000);
    assert_int_equal(parse_duration_ms("1ms", &v), 0);
    assert_int_equal(v, 1);
}

static void test_duration_garbage(void **state)
{
    static const char *const bad[] = {
        "",   "ms", "s",    "-1s",  "+1s", "1.5s", "1 s", " 1s", "1s ",   "1sec", "1d",    "1S",
        "1H", "1M", "1mss", "1ms1", "s1",  "0x10", "1e3", "1hm", "1m30s", "abc",  "1_000", "\t1",
    };
    uint64_t v = 4242;
    (void)state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse_duration_ms(bad[i], &v) != -1)
            fail_msg("parse_duration_ms(\"%s\") accepted", bad[i]);
    }
    assert_int_equal(v, 4242); /* untouched on error */
    assert_int_equal(parse_duration_ms(NULL, &v), -1);
}

static void test_duration_overflow(void **state)
{
    uint64_t v;
    (void)state;

    assert_int_equal(parse_duration_ms("18446744073709551615ms", &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(parse_duration_ms("18446744073709551616ms", &v), -1);
    assert_int_equal(parse_duration_ms("99999999999999999999999ms", &v), -1);
    /* UINT64_MAX / 1000 = 18446744073709551 */
    assert_int_equal(parse_duration_ms("18446744073709551s", &v), 0);
    assert_true(v == 18446744073709551000ULL);
    assert_int_equal(parse_duration_ms("18446744073709552s", &v), -1);
    assert_int_equal(parse_duration_ms("18446744073709552", &v), -1);
    /* UINT64_MAX / 60000 = 307445734561825, / 3600000 = 5124095576030 */
    assert_int_equal(parse_duration_ms("307445734561825m", &v), 0);
    assert_int_equal(parse_duration_ms("307445734561826m", &v), -1);
    assert_int_equal(parse_duration_ms("5124095576030h", &v), 0);
    assert_true(v == 5124095576030ULL * 3600000ULL);
    assert_int_equal(parse_duration_ms("5124095576031h", &v), -1);
}

static void test_size_units(void **state)
{
    uint64_t v;
    (void)state;

    assert_int_equal(parse_size("512", &v), 0);
    assert_int_equal(v, 512);
    assert_int_equal(parse_size("0", &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(parse_size("64k", &v), 0);
    assert_int_equal(v, 65536);
    assert_int_equal(parse_size("1m", &v), 0);
    assert_int_equal(v, 1048576);
    assert_int_equal(parse_size("64m", &v), 0);
    assert_int_equal(v, 64ULL * 1024 * 1024);
    assert_int_equal(parse_size("8K", &v), 0);
    assert_int_equal(v, 8192);
    assert_int_equal(parse_size("2M", &v), 0);
    assert_int_equal(v, 2097152);
}

static void test_size_garbage(void **state)
{
    static const char *const bad[] = {"",    "k",    "m",   "-1", "+1",  "-1k",   "1.5m",
                                      "1 k", " 1",   "1 ",  "1g", "1kb", "1KiB",  "1mb",
                                      "1b",  "0x10", "1e3", "k1", "1kk", "1,000", "1_000"};
    uint64_t v = 77;
    (void)state;

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (parse_size(bad[i], &v) != -1)
            fail_msg("parse_size(\"%s\") accepted", bad[i]);
    }
    assert_int_equal(v, 77);
    assert_int_equal(parse_size(NULL, &v), -1);
}

static void test_size_overflow(void **state)
{
    uint64_t v;
    (void)state;

    assert_int_equal(parse_size("18446744073709551615", &v), 0);
    assert_true(v == UINT64_MAX);
    assert_int_equal(parse_size("18446744073709551616", &v), -1);
    /* UINT64_MAX / 1024 = 18014398509481983, / 1048576 = 17592186044415 */
    assert_int_equal(parse_size("18014398509481983k", &v), 0);
    assert_int_equal(parse_size("18014398509481984k", &v), -1);
    assert_int_equal(parse_size("17592186044415m", &v), 0);
    assert_true(v == 17592186044415ULL * 1048576ULL);
    assert_int_equal(parse_size("17592186044416m", &v), -1);
}

/* --- log --- */

/* Run fn with fd 2 pointed at a temp file; returns what it wrote (malloc'd, caller frees). */
static char *log_capture(void (*fn)(void))
{
    char path[] = "/tmp/wsgate-test-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(fd, 2) == 2);
    fn();
    fflush(stderr);
    assert_true(dup2(saved, 2) == 2);
    close(saved);
    off_t end = lseek(fd, 0, SEEK_END);
    assert_true(end >= 0);
    char *out = malloc((size_t)end + 1);
    assert_non_null(out);
    assert_int_equal(pread(fd, out, (size_t)end, 0), end);
    out[end] = '\0';
    close(fd);
    return out;
}

static void test_log_level_parse(void **state)
{
    enum log_level l = LOG_LEVEL_INFO;
    (void)state;

    assert_int_equal(log_level_parse("error", &l), 0);
    assert_int_equal(l, LOG_LEVEL_ERROR);
    assert_int_equal(log_level_parse("warn", &l), 0);
    assert_int_equal(l, LOG_LEVEL_WARN);
    assert_int_equal(log_level_parse("info", &l), 0);
    assert_int_equal(l, LOG_LEVEL_INFO);
    assert_int_equal(log_level_parse("debug", &l), 0);
    assert_int_equal(l, LOG_LEVEL_DEBUG);
    assert_int_equal(log_level_parse("DEBUG", &l), 0);
    assert_int_equal(log_level_parse("warning", &l), -1);
    assert_int_equal(log_level_parse("", &l), -1);
    assert_int_equal(log_level_parse(NULL, &l), -1);
    assert_int_equal(l, LOG_LEVEL_DEBUG);
}

static void test_log_enabled(void **state)
{
    (void)state;
    log_init(LOG_LEVEL_WARN);
    assert_true(log_enabled(LOG_LEVEL_ERROR));
    assert_true(log_enabled(LOG_LEVEL_WARN));
    assert_false(log_enabled(LOG_LEVEL_INFO));
    assert_false(log_enabled(LOG_LEVEL_DEBUG));
    log_init(LOG_LEVEL_DEBUG);
    assert_true(log_enabled(LOG_LEVEL_DEBUG));
    log_init(LOG_LEVEL_INFO);
}

static void log_emit_basic(void)
{
    log_info("event=test n=%d s=%s", 42, "x");
}

static void test_log_line_format(void **state)
{
    (void)state;
    log_init(LOG_LEVEL_INFO);
    time_t before = time(NULL);
    char *out = log_capture(log_emit_basic);
    time_t after = time(NULL);

    /* ts=YYYY-MM-DDTHH:MM:SS.mmmZ level=info event=test n=42 s=x\n */
    const char *tail = " level=info event=test n=42 s=x\n";
    assert_int_equal(strlen(out), strlen("ts=2026-01-01T00:00:00.000Z") + strlen(tail));
    assert_memory_equal(out, "ts=", 3);
    assert_string_equal(out + 27, tail);
    const char *pat = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; pat[i]; i++) {
        char c = out[3 + i];
        if (pat[i] == 'd' ? (c < '0' || c > '9') : c != pat[i])
            fail_msg("timestamp char %zu is '%c' in %s", i, c, out);
    }
    struct tm tm = {0};
    assert_non_null(strptime(out + 3, "%Y-%m-%dT%H:%M:%S", &tm));
    time_t t = timegm(&tm); /* UTC, so it must match the clock */
    assert_true(t >= before - 1 && t <= after + 1);
    free(out);
}

static void log_emit_levels(void)
{
    log_debug("event=hidden_debug");
    log_info("event=hidden_info");
    log_warn("event=shown_warn");
    log_error("event=shown_error");
}

static void test_log_level_filter(void **state)
{
    (void)state;
    log_init(LOG_LEVEL_WARN);
    char *out = log_capture(log_emit_levels);
    log_init(LOG_LEVEL_INFO);
    assert_null(strstr(out, "hidden"));
    const char *w = strstr(out, " level=warn event=shown_warn\n");
    const char *e = strstr(out, " level=error event=shown_error\n");
    assert_non_null(w);
    assert_non_null(e);
    assert_true(w < e);
    free(out);
}

static void log_emit_newline(void)
{
    log_warn("event=bad err=%s", "line1\nline2\r\x1b");
}

static void test_log_one_line_per_call(void **state)
{
    (void)state;
    log_init(LOG_LEVEL_INFO);
    char *out = log_capture(log_emit_newline);
    assert_non_null(strstr(out, " level=warn event=bad err=line1?line2??\n"));
    assert_ptr_equal(strchr(out, '\n'), out + strlen(out) - 1);
    free(out);
}

static char log_big[100000];

static void log_emit_long(void)
{
    log_info("event=long v=%.*s", 10000, log_big);
    log_info("event=huge v=%s", log_big);
}

static void test_log_long_lines(void **state)
{
    (void)state;
    memset(log_big, 'z', sizeof log_big - 1);
    log_init(LOG_LEVEL_INFO);
    char *out = log_capture(log_emit_long);
    /* 10000 bytes: whole, on one line */
    char *first = strstr(out, "event=long v=");
    assert_non_null(first);
    char *nl = strchr(first, '\n');
    assert_non_null(nl);
    assert_int_equal(nl - first, strlen("event=long v=") + 10000);
    /* 99999 bytes: cut at 64 KiB and marked, still one line */
    char *second = strstr(nl + 1, "event=huge v=");
    assert_non_null(second);
    char *nl2 = strchr(second, '\n');
    assert_non_null(nl2);
    assert_ptr_equal(nl2 + 1, out + strlen(out));
    const char *mark = " log_truncated=1";
    assert_memory_equal(nl2 - strlen(mark), mark, strlen(mark));
    assert_int_equal(nl2 - second, 64 * 1024 + strlen(mark));
    free(out);
}

static void test_fmt_u64(void **state)
{
    (void)state;
    char b[21];
    assert_int_equal(fmt_u64(b, 0), 1);
    assert_string_equal(b, "0");
    assert_int_equal(fmt_u64(b, 7), 1);
    assert_string_equal(b, "7");
    assert_int_equal(fmt_u64(b, 10), 2);
    assert_string_equal(b, "10");
    assert_int_equal(fmt_u64(b, 4294967295u), 10);
    assert_string_equal(b, "4294967295");
    assert_int_equal(fmt_u64(b, UINT64_MAX), 20);
    assert_string_equal(b, "18446744073709551615");
}

static void test_str_put(void **state)
{
    (void)state;
    char b[8];
    size_t at = str_put(b, sizeof b, 0, "ws", 2);
    at = str_put(b, sizeof b, at, ".", 1);
    at = str_put(b, sizeof b, at, "recv", 4);
    assert_int_equal(at, 7);
    assert_string_equal(b, "ws.recv");
    at = str_put(b, sizeof b, at, ".x", 2); /* full: truncated, still terminated */
    assert_int_equal(at, 7);
    assert_string_equal(b, "ws.recv");
    assert_int_equal(str_put(b, sizeof b, 0, "abcdefghij", 10), 7);
    assert_string_equal(b, "abcdefg");
    assert_int_equal(str_put(b, sizeof b, 3, "", 0), 3);
    assert_string_equal(b, "abc");
    assert_int_equal(str_put(b, 0, 0, "a", 1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fmt_u64),
        cmocka_unit_test(test_str_put),
        cmocka_unit_test(test_key_lengths),
        cmocka_unit_test(test_key_every_byte),
        cmocka_unit_test(test_key_dots),
        cmocka_unit_test(test_utf8_valid_sequences),
        cmocka_unit_test(test_utf8_overlongs),
        cmocka_unit_test(test_utf8_surrogates),
        cmocka_unit_test(test_utf8_above_max),
        cmocka_unit_test(test_utf8_truncated_and_stray),
        cmocka_unit_test(test_utf8_exhaustive_short),
        cmocka_unit_test(test_utf8_fast_path_boundaries),
        cmocka_unit_test(test_utf8_random_vs_reference),
        cmocka_unit_test(test_duration_units),
        cmocka_unit_test(test_duration_garbage),
        cmocka_unit_test(test_duration_overflow),
        cmocka_unit_test(test_size_units),
        cmocka_unit_test(test_size_garbage),
        cmocka_unit_test(test_size_overflow),
        cmocka_unit_test(test_log_level_parse),
        cmocka_unit_test(test_log_enabled),
        cmocka_unit_test(test_log_line_format),
        cmocka_unit_test(test_log_level_filter),
        cmocka_unit_test(test_log_one_line_per_call),
        cmocka_unit_test(test_log_long_lines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
