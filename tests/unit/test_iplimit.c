/* test_iplimit.c — unit tests of src/iplimit.c: the per-IP connection cap and release,
 * the handshake token bucket over simulated time (uv_now-style milliseconds passed in),
 * Retry-After, "0 = no limit", and that entries disappear once an IP holds no
 * connection and its bucket is full again (memory bounded).
 * Pure code: no loop, no clock. Single-threaded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* cmocka.h needs the four headers above first */
#include <cmocka.h>

#include <stdio.h>
#include <uv.h>

#include "iplimit.h"

#define T0 1000000ULL /* an arbitrary uv_now() */

static void test_conn_cap_and_release(void **state)
{
    struct iplimit l;
    (void)state;
    assert_int_equal(iplimit_init(&l, 2, 0), 0);
    assert_int_equal(iplimit_conn_acquire(&l, "1.1.1.1"), 0);
    assert_int_equal(iplimit_conn_acquire(&l, "1.1.1.1"), 0);
    assert_int_equal(iplimit_conn_acquire(&l, "1.1.1.1"), UV_EBUSY);
    assert_int_equal(iplimit_conn_acquire(&l, "2001:db8::1"), 0); /* another IP */
    assert_int_equal(iplimit_count(&l), 2);
    iplimit_conn_release(&l, "1.1.1.1", T0);
    assert_int_equal(iplimit_conn_acquire(&l, "1.1.1.1"), 0);
    assert_int_equal(iplimit_conn_acquire(&l, "1.1.1.1"), UV_EBUSY);
    iplimit_conn_release(&l, "1.1.1.1", T0);
    iplimit_conn_release(&l, "1.1.1.1", T0);
    iplimit_conn_release(&l, "2001:db8::1", T0);
    assert_int_equal(iplimit_count(&l), 0);  /* no connection, full bucket: gone */
    iplimit_conn_release(&l, "9.9.9.9", T0); /* unknown: harmless */
    assert_int_equal(iplimit_count(&l), 0);
    iplimit_free(&l);
}

static void test_no_limits(void **state)
{
    struct iplimit l;
    (void)state;
    assert_int_equal(iplimit_init(&l, 0, 0), 0);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(iplimit_conn_acquire(&l, "1.1.1.1"), 0);
        assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0), 0);
    }
    assert_int_equal(iplimit_count(&l), 0); /* nothing is even tracked */
    assert_int_equal(iplimit_retry_after_s(&l, "1.1.1.1", T0), 0);
    iplimit_conn_release(&l, "1.1.1.1", T0);
    iplimit_free(&l);
}

static void test_bucket_refill(void **state)
{
    struct iplimit l;
    (void)state;
    assert_int_equal(iplimit_init(&l, 0, 4), 0);
    /* Capacity = rate: 4 at once, the fifth waits. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0), 0);
    assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0), UV_EAGAIN);
    assert_int_equal(iplimit_retry_after_s(&l, "1.1.1.1", T0), 1);
    assert_int_equal(iplimit_handshake_take(&l, "2.2.2.2", T0), 0); /* per IP */
    /* Refill at 4/s: one token per 250 ms. */
    assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0 + 249), UV_EAGAIN);
    assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0 + 250), 0);
    assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0 + 250), UV_EAGAIN);
    assert_int_equal(iplimit_retry_after_s(&l, "1.1.1.1", T0 + 250), 1);
    /* A long pause refills to capacity, not beyond. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0 + 60000), 0);
    assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0 + 60000), UV_EAGAIN);
    /* A steady 4/s passes indefinitely; 5/s does not. */
    for (uint64_t t = 0; t < 10000; t += 250)
        assert_int_equal(iplimit_handshake_take(&l, "3.3.3.3", T0 + 100000 + t), 0);
    int refused = 0;
    for (uint64_t t = 0; t < 10000; t += 200)
        refused += iplimit_handshake_take(&l, "4.4.4.4", T0 + 100000 + t) == UV_EAGAIN;
    assert_true(refused >= 6 && refused <= 8); /* 50 tries in 9.8 s: 4 + 39.2 tokens */
    /* A clock that steps back never grants extra tokens. */
    assert_int_equal(iplimit_handshake_take(&l, "4.4.4.4", T0), UV_EAGAIN);
    iplimit_free(&l);
}

static void test_retry_after_slow_rate(void **state)
{
    struct iplimit l;
    (void)state;
    assert_int_equal(iplimit_init(&l, 0, 1), 0);
    assert_int_equal(iplimit_retry_after_s(&l, "1.1.1.1", T0), 0);
    assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0), 0);
    assert_int_equal(iplimit_handshake_take(&l, "1.1.1.1", T0 + 1), UV_EAGAIN);
    assert_int_equal(iplimit_retry_after_s(&l, "1.1.1.1", T0 + 1), 1);
    assert_int_equal(iplimit_retry_after_s(&l, "1.1.1.1", T0 + 1000), 0);
    iplimit_free(&l);
}

static void test_memory_bounded(void **state)
{
    struct iplimit l;
    char ip[64];
    (void)state;
    assert_int_equal(iplimit_init(&l, 3, 2), 0);
    /* 1000 IPs handshake once; 10 of them keep a connection. */
    for (int i = 0; i < 1000; i++) {
        snprintf(ip, sizeof ip, "2001:db8::%x", i);
        assert_int_equal(iplimit_handshake_take(&l, ip, T0), 0);
        if (i < 10)
            assert_int_equal(iplimit_conn_acquire(&l, ip), 0);
    }
    assert_int_equal(iplimit_count(&l), 1000);
    /* Half a second on the buckets are not full yet: nothing to free. */
    iplimit_sweep(&l, T0 + 499);
    assert_int_equal(iplimit_count(&l), 1000);
    /* A handshake a second after that sweep sweeps again: only IPs with connections remain
     * (+ the new one). */
    assert_int_equal(iplimit_handshake_take(&l, "9.9.9.9", T0 + 1499), 0);
    assert_int_equal(iplimit_count(&l), 11);
    /* Releasing the connections after their buckets refilled frees them at once. */
    for (int i = 0; i < 10; i++) {
        snprintf(ip, sizeof ip, "2001:db8::%x", i);
        iplimit_conn_release(&l, ip, T0 + 1499);
    }
    assert_int_equal(iplimit_count(&l), 1);
    /* A release right after a handshake keeps the entry until the bucket is full (this
     * take's sweep freed 9.9.9.9). */
    assert_int_equal(iplimit_handshake_take(&l, "8.8.8.8", T0 + 5000), 0);
    assert_int_equal(iplimit_count(&l), 1);
    assert_int_equal(iplimit_conn_acquire(&l, "8.8.8.8"), 0);
    iplimit_conn_release(&l, "8.8.8.8", T0 + 5100);
    assert_int_equal(iplimit_count(&l), 1);
    iplimit_sweep(&l, T0 + 5600);
    assert_int_equal(iplimit_count(&l), 0);
    iplimit_free(&l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conn_cap_and_release), cmocka_unit_test(test_no_limits),
        cmocka_unit_test(test_bucket_refill),        cmocka_unit_test(test_retry_after_slow_rate),
        cmocka_unit_test(test_memory_bounded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
