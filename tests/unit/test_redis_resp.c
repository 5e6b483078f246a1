/* test_redis_resp.c — unit tests of rconn_resp (backends/redis_conn.c), the RESP
 * formatting every Redis command goes through: byte for byte what hiredis's own
 * redisFormatCommandArgv makes (empty, binary, CR/LF-holding and large arguments, the
 * stack buffer and the heap path), and NUL-terminated past the text, which hiredis's
 * redisAsyncFormattedCommand relies on when it walks a SUBSCRIBE's arguments (it asserted
 * on stale bytes after an unterminated command: seen as a crash under load). Pure code. */
/* cmocka.h needs these four first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <hiredis.h>
#include <stdlib.h>
#include <string.h>

#include "../../backends/redis_conn_priv.h"

/* Format argv with rconn_resp into a buffer of cap bytes pre-filled with '$' (what stale
 * bytes of an earlier command could hold) and compare with hiredis's formatting. */
static void same_as_hiredis(int argc, const char **argv, const size_t *lens, size_t cap)
{
    char *buf = malloc(cap + 1), *heap = NULL, *want = NULL;
    size_t len = 0;
    assert_non_null(buf);
    memset(buf, '$', cap + 1);
    const char *got = rconn_resp(buf, cap, argc, argv, lens, &len, &heap);
    assert_non_null(got);
    int wl = redisFormatCommandArgv(&want, argc, argv, lens);
    assert_true(wl > 0);
    assert_int_equal(len, (size_t)wl);
    assert_memory_equal(got, want, len);
    assert_int_equal(got[len], '\0'); /* terminated, whatever the buffer held */
    assert_true(heap == NULL ? got == buf : got == heap);
    redisFreeCommand(want);
    free(heap);
    free(buf);
}

static void test_small_commands(void **state)
{
    (void)state;
    const char *a1[] = {"PING"};
    size_t l1[] = {4};
    same_as_hiredis(1, a1, l1, 2048);
    const char *a2[] = {"SUBSCRIBE", "ws.a", "__keyspace@0__:ws.recv.k"};
    size_t l2[] = {9, 4, 24};
    same_as_hiredis(3, a2, l2, 2048);
    const char *a3[] = {"EVALSHA", "0123456789abcdef0123456789abcdef01234567", "1", "", "x\r\ny"};
    size_t l3[] = {7, 40, 1, 0, 4};
    same_as_hiredis(5, a3, l3, 2048);
    const char bin[] = {0, '\r', '\n', '$', '*', (char)0xff};
    const char *a4[] = {"PUBLISH", "ch", bin};
    size_t l4[] = {7, 2, sizeof bin};
    same_as_hiredis(3, a4, l4, 2048);
}

static void test_heap_path(void **state)
{
    (void)state;
    size_t big = 3 * 1024 * 1024 + 7;
    char *p = malloc(big);
    assert_non_null(p);
    memset(p, 'm', big);
    const char *a[] = {"RPUSH", "ws.recv.k", p};
    size_t l[] = {5, 9, big};
    same_as_hiredis(3, a, l, 2048); /* over the buffer: malloc'd */
    const char *s[] = {"GET", "k"};
    size_t sl[] = {3, 1};
    same_as_hiredis(2, s, sl, 8); /* a tiny buffer: malloc'd too */
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small_commands),
        cmocka_unit_test(test_heap_path),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
