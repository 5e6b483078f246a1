/* test_map.c — unit tests of src/map.c: put/get/remove, growth, iteration (with removal
 * of the current node), 100k keys, keys with equal 32-bit hashes and keys sharing a
 * bucket. Pure code: no loop, no I/O. Single thread. */
/* cmocka.h needs these four first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "map.h"

/* The user's struct: the node and the key it points at live together. */
struct item {
    struct map_node node; /* in the map under test */
    int value;
    int seen; /* iteration count */
    char key[24];
};

static void item_set(struct item *it, const char *key, int value)
{
    size_t len = strlen(key);
    assert_true(len < sizeof(it->key));
    memcpy(it->key, key, len + 1);
    it->node.key = it->key;
    it->node.key_len = (uint32_t)len;
    it->value = value;
    it->seen = 0;
}

static struct item *item_get(const struct map *m, const char *key)
{
    struct map_node *n = map_get(m, key, strlen(key));
    return n != NULL ? map_entry(n, struct item, node) : NULL;
}

static int is_pow2(size_t n)
{
    return n != 0 && (n & (n - 1)) == 0;
}

static void test_map_put_get_remove(void **state)
{
    struct map m;
    struct item a, b, c, dup;
    (void)state;
    map_init(&m);
    assert_null(map_get(&m, "a", 1)); /* empty, no buckets yet */
    assert_int_equal(map_count(&m), 0);
    item_set(&a, "alpha", 1);
    item_set(&b, "alphabet", 2); /* "alpha" is a prefix: lengths must differ in the match */
    item_set(&c, "", 3);         /* the empty key is a key like any other */
    assert_int_equal(map_put(&m, &a.node), 0);
    assert_int_equal(map_put(&m, &b.node), 0);
    assert_int_equal(map_put(&m, &c.node), 0);
    assert_int_equal(map_count(&m), 3);
    assert_ptr_equal(item_get(&m, "alpha"), &a);
    assert_ptr_equal(item_get(&m, "alphabet"), &b);
    assert_ptr_equal(item_get(&m, ""), &c);
    assert_null(item_get(&m, "alph"));
    assert_null(item_get(&m, "alphabets"));
    assert_null(item_get(&m, "Alpha"));
    /* Lookups take (key, len): no NUL needed, bytes past len ignored. */
    assert_ptr_equal(map_entry(map_get(&m, "alphaXYZ", 5), struct item, node), &a);
    /* A second node with the same key is refused and the first one stays. */
    item_set(&dup, "alpha", 9);
    assert_int_equal(map_put(&m, &dup.node), UV_EEXIST);
    assert_int_equal(map_count(&m), 3);
    assert_int_equal(item_get(&m, "alpha")->value, 1);
    /* Remove, then the key is gone and its neighbours stay. */
    map_remove(&m, &a.node);
    assert_int_equal(map_count(&m), 2);
    assert_null(item_get(&m, "alpha"));
    assert_ptr_equal(item_get(&m, "alphabet"), &b);
    /* Now the duplicate fits. */
    assert_int_equal(map_put(&m, &dup.node), 0);
    assert_int_equal(item_get(&m, "alpha")->value, 9);
    map_remove(&m, &b.node);
    map_remove(&m, &c.node);
    map_remove(&m, &dup.node);
    assert_int_equal(map_count(&m), 0);
    assert_null(item_get(&m, "alpha"));
    map_free(&m);
    assert_null(m.buckets);
    assert_int_equal(m.nbuckets, 0);
    map_free(&m); /* twice is fine: map_free leaves an empty map */
}

static void test_map_hash_is_fnv1a(void **state)
{
    (void)state;
    /* Reference values of 32-bit FNV-1a. */
    assert_int_equal(map_hash("", 0), 0x811c9dc5u);
    assert_int_equal(map_hash("a", 1), 0xe40c292cu);
    assert_int_equal(map_hash("foobar", 6), 0xbf9cf968u);
}

static void test_map_grows(void **state)
{
    enum { N = 1000 };
    struct item *items = calloc(N, sizeof(*items));
    struct map m;
    size_t last = 0;
    int grew = 0;
    (void)state;
    assert_non_null(items);
    map_init(&m);
    for (int i = 0; i < N; i++) {
        char key[24];
        snprintf(key, sizeof(key), "key-%d", i);
        item_set(&items[i], key, i);
        assert_int_equal(map_put(&m, &items[i].node), 0);
        assert_true(is_pow2(m.nbuckets));
        assert_true(m.count <= m.nbuckets); /* load stays at most 1 */
        if (m.nbuckets != last) {
            if (last != 0)
                assert_int_equal(m.nbuckets, last * 2); /* doubling */
            grew += last != 0;
            last = m.nbuckets;
        }
        /* Every key so far survives each resize. */
        if (m.nbuckets != 0 && (i & (i + 1)) == 0)
            for (int j = 0; j <= i; j++)
                assert_ptr_equal(item_get(&m, items[j].key), &items[j]);
    }
    assert_true(grew >= 6); /* 16 -> 1024 */
    assert_int_equal(m.nbuckets, 1024);
    for (int i = 0; i < N; i++)
        assert_int_equal(item_get(&m, items[i].key)->value, i);
    map_free(&m);
    free(items);
}

static void test_map_iterate(void **state)
{
    enum { N = 300 };
    struct item *items = calloc(N, sizeof(*items));
    struct map m;
    struct map_iter it;
    struct map_node *n;
    int count = 0;
    (void)state;
    assert_non_null(items);
    map_init(&m);
    /* An empty map (no buckets) iterates to nothing. */
    map_iter_init(&it, &m);
    assert_null(map_iter_next(&it));
    for (int i = 0; i < N; i++) {
        char key[24];
        snprintf(key, sizeof(key), "it%d", i);
        item_set(&items[i], key, i);
        assert_int_equal(map_put(&m, &items[i].node), 0);
    }
    map_iter_init(&it, &m);
    while ((n = map_iter_next(&it)) != NULL) {
        map_entry(n, struct item, node)->seen++;
        assert_true(++count <= N); /* a stuck iterator fails instead of spinning */
    }
    assert_null(map_iter_next(&it)); /* stays at the end */
    assert_int_equal(count, N);
    for (int i = 0; i < N; i++)
        assert_int_equal(items[i].seen, 1);
    /* Removing (and clobbering) the node just returned is allowed mid-walk. */
    count = 0;
    map_iter_init(&it, &m);
    while ((n = map_iter_next(&it)) != NULL) {
        struct item *x = map_entry(n, struct item, node);
        x->seen++;
        assert_true(++count <= N);
        if (x->value % 2 == 0) {
            map_remove(&m, n);
            memset(n, 0xa5, sizeof(*n)); /* as if freed */
        }
    }
    assert_int_equal(count, N);
    assert_int_equal(map_count(&m), N / 2);
    for (int i = 0; i < N; i++) {
        assert_int_equal(items[i].seen, 2);
        if (i % 2 == 0) {
            items[i].node.key = items[i].key; /* restore for the lookup below */
            items[i].node.key_len = (uint32_t)strlen(items[i].key);
            assert_null(item_get(&m, items[i].key));
        } else {
            assert_ptr_equal(item_get(&m, items[i].key), &items[i]);
        }
    }
    /* Emptying the map through the iterator (what a backend's close does). */
    count = 0;
    map_iter_init(&it, &m);
    while ((n = map_iter_next(&it)) != NULL) {
        map_remove(&m, n);
        assert_true(++count <= N / 2);
    }
    assert_int_equal(map_count(&m), 0);
    for (size_t b = 0; b < m.nbuckets; b++)
        assert_null(m.buckets[b]);
    map_free(&m);
    free(items);
}

static void test_map_many_keys(void **state)
{
    enum { N = 100000 };
    struct item *items = calloc(N, sizeof(*items));
    struct map m;
    size_t longest = 0;
    (void)state;
    assert_non_null(items);
    map_init(&m);
    for (int i = 0; i < N; i++) {
        char key[24];
        snprintf(key, sizeof(key), "svc1.user%d", i);
        item_set(&items[i], key, i);
        assert_int_equal(map_put(&m, &items[i].node), 0);
    }
    assert_int_equal(map_count(&m), N);
    assert_true(m.nbuckets >= N && is_pow2(m.nbuckets));
    /* The hash spreads sequential keys: no chain is long. */
    for (size_t b = 0; b < m.nbuckets; b++) {
        size_t len = 0;
        for (struct map_node *n = m.buckets[b]; n != NULL; n = n->next)
            len++;
        if (len > longest)
            longest = len;
    }
    assert_true(longest <= 12);
    for (int i = 0; i < N; i += 2)
        map_remove(&m, &items[i].node);
    assert_int_equal(map_count(&m), N / 2);
    for (int i = 0; i < N; i++) {
        struct item *x = item_get(&m, items[i].key);
        if (i % 2 == 0)
            assert_null(x);
        else
            assert_ptr_equal(x, &items[i]);
    }
    map_free(&m);
    free(items);
}

static void test_map_colliding_keys(void **state)
{
    /* Pairs with equal 32-bit FNV-1a hashes: only the bytes tell them apart. */
    static const char *const pairs[][2] = {
        {"costarring", "liquid"},
        {"declinate", "macallums"},
        {"altarage", "zinke"},
        {"altarages", "zinkes"},
    };
    struct item items[8];
    struct map m;
    (void)state;
    map_init(&m);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(map_hash(pairs[i][0], strlen(pairs[i][0])),
                         map_hash(pairs[i][1], strlen(pairs[i][1])));
        item_set(&items[2 * i], pairs[i][0], 2 * i);
        item_set(&items[2 * i + 1], pairs[i][1], 2 * i + 1);
    }
    for (int i = 0; i < 8; i++)
        assert_int_equal(map_put(&m, &items[i].node), 0);
    for (int i = 0; i < 8; i++)
        assert_ptr_equal(item_get(&m, items[i].key), &items[i]);
    /* Remove one of each pair: its twin stays findable. */
    for (int i = 0; i < 4; i++) {
        map_remove(&m, &items[2 * i + (i % 2)].node);
        assert_null(item_get(&m, items[2 * i + (i % 2)].key));
        assert_ptr_equal(item_get(&m, items[2 * i + 1 - (i % 2)].key), &items[2 * i + 1 - (i % 2)]);
    }
    assert_int_equal(map_count(&m), 4);
    map_free(&m);

    /* A key and a longer key it is a prefix of, with equal hashes (found offline by
     * meet-in-the-middle; FNV-1a steps are invertible): the lengths must be compared. */
    struct item shorter, longer;
    item_set(&shorter, "svc.ab", 1);
    item_set(&longer, "svc.abHuCbAY", 2);
    assert_int_equal(map_hash(shorter.key, 6), map_hash(longer.key, 12));
    map_init(&m);
    assert_int_equal(map_put(&m, &longer.node), 0);
    assert_null(item_get(&m, "svc.ab"));
    assert_int_equal(map_put(&m, &shorter.node), 0);
    assert_ptr_equal(item_get(&m, "svc.ab"), &shorter);
    assert_ptr_equal(item_get(&m, "svc.abHuCbAY"), &longer);
    map_remove(&m, &longer.node);
    assert_null(item_get(&m, "svc.abHuCbAY"));
    assert_ptr_equal(item_get(&m, "svc.ab"), &shorter);
    map_free(&m);

    /* Keys that share a bucket (equal low hash bits) but not a hash: one long chain,
     * removal from its head, middle and tail. */
    enum { K = 6, MAXTRY = 200000 };
    struct item *chain = calloc(K, sizeof(*chain));
    struct item probe;
    int found = 0;
    assert_non_null(chain);
    map_init(&m);
    item_set(&probe, "seed", 0);
    assert_int_equal(map_put(&m, &probe.node), 0); /* 16 buckets: slot = hash & 15 */
    uint32_t want = map_hash("seed", 4) & 15;
    map_remove(&m, &probe.node);
    for (int i = 0; i < MAXTRY && found < K; i++) {
        char key[24];
        snprintf(key, sizeof(key), "c%d", i);
        if ((map_hash(key, strlen(key)) & 15) == want) {
            item_set(&chain[found], key, found);
            found++;
        }
    }
    assert_int_equal(found, K);
    for (int i = 0; i < K; i++)
        assert_int_equal(map_put(&m, &chain[i].node), 0);
    assert_int_equal(m.nbuckets, 16); /* 6 nodes: no growth, one chain of 6 */
    {
        size_t len = 0;
        for (struct map_node *n = m.buckets[want]; n != NULL; n = n->next)
            len++;
        assert_int_equal(len, K);
    }
    map_remove(&m, &chain[K - 1].node); /* chain head (inserted last) */
    map_remove(&m, &chain[2].node);     /* middle */
    map_remove(&m, &chain[0].node);     /* tail */
    for (int i = 0; i < K; i++) {
        struct item *x = item_get(&m, chain[i].key);
        if (i == K - 1 || i == 2 || i == 0)
            assert_null(x);
        else
            assert_ptr_equal(x, &chain[i]);
    }
    map_free(&m);
    free(chain);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_put_get_remove), cmocka_unit_test(test_map_hash_is_fnv1a),
        cmocka_unit_test(test_map_grows),          cmocka_unit_test(test_map_iterate),
        cmocka_unit_test(test_map_many_keys),      cmocka_unit_test(test_map_colliding_keys),
    };
    return cmocka_run_group_tests_name("map", tests, NULL, NULL);
}
