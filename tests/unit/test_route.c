/* test_route.c — request target -> route (src/route.c): every route, prefixes that only
 * look alike, queries, keys taken as sent. Pure; no loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

#include "route.h"

static void expect_route(const char *target, enum route_id id, const char *key,
                         const char *query)
{
    struct route r;
    route_parse(target, &r);
    assert_int_equal(r.id, id);
    if (key == NULL) {
        assert_int_equal(r.key_len, 0);
    } else {
        assert_int_equal(r.key_len, strlen(key));
        assert_memory_equal(r.key, key, r.key_len);
    }
    if (query == NULL)
        assert_null(r.query);
    else
        assert_string_equal(r.query, query);
}

static void test_route_keyed(void **state)
{
    (void)state;
    expect_route("/ws/s1", ROUTE_WS, "s1", NULL);
    expect_route("/ws/svc1.user42?topics=a,b", ROUTE_WS, "svc1.user42", "topics=a,b");
    expect_route("/push/s1", ROUTE_PUSH, "s1", NULL);
    expect_route("/push/s1?x=1", ROUTE_PUSH, "s1", "x=1");
    expect_route("/publish/news", ROUTE_PUBLISH, "news", NULL);
}

static void test_route_empty_and_raw_keys(void **state)
{
    (void)state;
    expect_route("/push/", ROUTE_PUSH, NULL, NULL); /* empty key: the caller answers 400 */
    expect_route("/push/?a", ROUTE_PUSH, NULL, "a");
    expect_route("/push/a%2Fb", ROUTE_PUSH, "a%2Fb", NULL); /* no percent-decoding */
    expect_route("/push/a/b", ROUTE_PUSH, "a/b", NULL);     /* key_valid() refuses '/' */
}

static void test_route_fixed(void **state)
{
    (void)state;
    expect_route("/healthz", ROUTE_HEALTHZ, NULL, NULL);
    expect_route("/readyz", ROUTE_READYZ, NULL, NULL);
    expect_route("/metrics", ROUTE_METRICS, NULL, NULL);
    expect_route("/metrics?x", ROUTE_METRICS, NULL, "x");
}

static void test_route_not_found(void **state)
{
    (void)state;
    expect_route("/", ROUTE_NOTFOUND, NULL, NULL);
    expect_route("", ROUTE_NOTFOUND, NULL, NULL);
    expect_route("/ws", ROUTE_NOTFOUND, NULL, NULL);
    expect_route("/push", ROUTE_NOTFOUND, NULL, NULL);
    expect_route("/healthz/", ROUTE_NOTFOUND, NULL, NULL);
    expect_route("/healthzz", ROUTE_NOTFOUND, NULL, NULL);
    expect_route("/metric", ROUTE_NOTFOUND, NULL, NULL);
    expect_route("/WS/s1", ROUTE_NOTFOUND, NULL, NULL);
    expect_route("http://host/push/s1", ROUTE_NOTFOUND, NULL, NULL);
}

static void test_route_allow(void **state)
{
    (void)state;
    assert_string_equal(route_allow(ROUTE_WS), "GET");
    assert_string_equal(route_allow(ROUTE_PUSH), "POST");
    assert_string_equal(route_allow(ROUTE_PUBLISH), "POST");
    assert_string_equal(route_allow(ROUTE_METRICS), "GET, HEAD");
    assert_null(route_allow(ROUTE_NOTFOUND));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_route_keyed),      cmocka_unit_test(test_route_empty_and_raw_keys),
        cmocka_unit_test(test_route_fixed),      cmocka_unit_test(test_route_not_found),
        cmocka_unit_test(test_route_allow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
