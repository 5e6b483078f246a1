/* test_map.c — unit tests of src/map.c: SipHash-2-4 known answers, per-map random seeds,
 * put/get/remove, growth, iteration (with removal of the current node), 100k keys, keys
 * with equal 32-bit hashes and keys sharing a bucket, and a hash-flooding attack built
 * against the old unkeyed FNV-1a (thousands of keys for one bucket) that must not make
 * long chains any more. Pure code: no loop, no I/O. Single thread. */
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

/* Nodes in the longest bucket chain. */
static size_t longest_chain(const struct map *m)
{
    size_t longest = 0;
    for (size_t b = 0; b < m->nbuckets; b++) {
        size_t len = 0;
        for (const struct map_node *n = m->buckets[b]; n != NULL; n = n->next)
            len++;
        if (len > longest)
            longest = len;
    }
    return longest;
}

/* The SipHash reference key 00 01 .. 0f (the paper's Appendix A). */
static const struct map_seed ref_seed = {0x0706050403020100u, 0x0f0e0d0c0b0a0908u};

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

static void test_map_siphash_known_answers(void **state)
{
    /* SipHash-2-4, key 00..0f, message 00 01 .. (len-1): the 64-bit vector of the paper's
     * Appendix A (len 15) and entries 0, 1, 7, 8 and 63 of the reference implementation's
     * vectors.h (also checked against OpenSSL's SIPHASH MAC with size 8). */
    static const struct {
        size_t len;
        uint64_t want;
    } kat[] = {
        {15, 0xa129ca6149be45e5u}, {0, 0x726fdb47dd0e0e31u}, {1, 0x74f839c593dc67fdu},
        {7, 0xab0200f58b01d137u},  {8, 0x93f5f5799a932462u}, {63, 0x958a324ceb064572u},
    };
    uint8_t msg[64];
    struct map m;
    (void)state;
    for (int i = 0; i < 64; i++)
        msg[i] = (uint8_t)i;
    for (size_t i = 0; i < sizeof(kat) / sizeof(kat[0]); i++)
        assert_int_equal(map_siphash(&ref_seed, msg, kat[i].len), kat[i].want);
    /* The map stores the low 32 bits under its own seed. */
    map_init_seed(&m, &ref_seed);
    assert_int_equal(map_hash(&m, (const char *)msg, 15), 0x49be45e5u);
    assert_int_equal(map_hash(&m, "", 0), 0xdd0e0e31u);
    map_free(&m);
}

static void test_map_seeds_are_random(void **state)
{
    static const char *const keys[] = {"a", "svc1.user42", "topic", "", "k1", "k2", "k3", "k4"};
    struct map a, b;
    struct map_seed s1, s2;
    int differ = 0;
    (void)state;
    /* Fresh random bits each time (the kernel's, on any working system). */
    assert_int_equal(map_seed_random(&s1), 0);
    assert_int_equal(map_seed_random(&s2), 0);
    assert_true(s1.k0 != s2.k0 || s1.k1 != s2.k1);
    /* Two maps: two seeds, so the same key hashes differently (all eight keys equal in
     * both would be a 2^-256 event). Within one map a key always hashes the same. */
    map_init(&a);
    map_init(&b);
    assert_true(a.seed.k0 != b.seed.k0 || a.seed.k1 != b.seed.k1);
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        size_t len = strlen(keys[i]);
        differ += map_hash(&a, keys[i], len) != map_hash(&b, keys[i], len);
        assert_int_equal(map_hash(&a, keys[i], len), map_hash(&a, keys[i], len));
    }
    assert_true(differ > 0);
    /* map_free keeps the seed: the map is reusable as it was. */
    {
        struct map_seed before = a.seed;
        struct item it;
        item_set(&it, "x", 1);
        assert_int_equal(map_put(&a, &it.node), 0);
        map_remove(&a, &it.node);
        map_free(&a);
        assert_int_equal(a.seed.k0, before.k0);
        assert_int_equal(a.seed.k1, before.k1);
        assert_int_equal(map_put(&a, &it.node), 0);
        assert_ptr_equal(item_get(&a, "x"), &it);
        map_remove(&a, &it.node);
    }
    map_free(&a);
    map_free(&b);
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
    assert_true(longest_chain(&m) <= 12);
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

/* The string whose prefixes test_map_colliding_keys needs: n bytes from a fixed LCG. */
static char *lcg_string(size_t n)
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    char *w = malloc(n);
    uint32_t x = 1;
    assert_non_null(w);
    for (size_t k = 0; k < n; k++) {
        x = x * 1103515245u + 12345u;
        w[k] = alnum[(x >> 16) % 62];
    }
    return w;
}

static void test_map_colliding_keys(void **state)
{
    /* Pairs with equal 32-bit map hashes under the reference seed (found offline by a
     * birthday search over "k<n>"): only the lengths and bytes tell them apart. */
    static const char *const pairs[][2] = {
        {"k12700", "k79314"},
        {"k4114", "k468089"},
        {"k2967", "k133153"},
        {"k274260", "k315856"},
    };
    struct item items[8];
    struct map m;
    (void)state;
    map_init_seed(&m, &ref_seed);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(map_hash(&m, pairs[i][0], strlen(pairs[i][0])),
                         map_hash(&m, pairs[i][1], strlen(pairs[i][1])));
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

    /* A key and a longer key it is a prefix of, with equal hashes: the lengths must be
     * compared. Found offline: among the prefixes of one long string (SipHash's state after
     * each full block is shared, so all prefixes hash in one pass) a birthday search gives
     * colliding prefix lengths; this pair is the shortest one for lcg_string. */
    enum { SHORT = 66658, LONG = 216763 };
    char *w = lcg_string(LONG);
    struct map_node shorter = {.key = w, .key_len = SHORT};
    struct map_node longer = {.key = w, .key_len = LONG};
    map_init_seed(&m, &ref_seed);
    assert_int_equal(map_hash(&m, w, SHORT), map_hash(&m, w, LONG));
    assert_int_equal(map_put(&m, &longer), 0);
    assert_null(map_get(&m, w, SHORT));
    assert_int_equal(map_put(&m, &shorter), 0);
    assert_ptr_equal(map_get(&m, w, SHORT), &shorter);
    assert_ptr_equal(map_get(&m, w, LONG), &longer);
    map_remove(&m, &longer);
    assert_null(map_get(&m, w, LONG));
    assert_ptr_equal(map_get(&m, w, SHORT), &shorter);
    map_free(&m);
    free(w);

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
    uint32_t want = map_hash(&m, "seed", 4) & 15;
    map_remove(&m, &probe.node);
    for (int i = 0; i < MAXTRY && found < K; i++) {
        char key[24];
        snprintf(key, sizeof(key), "c%d", i);
        if ((map_hash(&m, key, strlen(key)) & 15) == want) {
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

/* --- hash flooding: keys made for the old unkeyed hash --- */

/* The low 16 bits of 32-bit FNV-1a's state after bytes s[0..n), from state h. FNV-1a
 * steps are xor and multiply, so the low k bits of the result depend only on the low k
 * bits of the state and of the input: short blocks can be searched for separately and
 * chained. */
static uint32_t fnv1a_low16(uint32_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = ((h ^ (uint8_t)s[i]) * 16777619u) & 0xffffu;
    return h;
}

static uint32_t fnv1a(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* The first want 4-character alphanumeric blocks that take FNV-1a's low 16 bits from
 * state from to state to, written into out[want][4]. Returns how many were found. */
static int fnv_blocks(uint32_t from, uint32_t to, char (*out)[4], int want)
{
    static const char alnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    int found = 0;
    char b[4];
    for (int i = 0; i < 62 * 62 * 62 * 62 && found < want; i++) {
        b[0] = alnum[i % 62];
        b[1] = alnum[i / 62 % 62];
        b[2] = alnum[i / (62 * 62) % 62];
        b[3] = alnum[i / (62 * 62 * 62)];
        if (fnv1a_low16(from, b, 4) == to)
            memcpy(out[found++], b, 4);
    }
    return found;
}

static void test_map_fnv_flood_stays_flat(void **state)
{
    /* 20 x 16 x 16 = 5120 keys "AAAABBBBCCCC" whose FNV-1a hashes all end in the same 16
     * bits: A blocks take the offset basis to T, B blocks take T back to T. Under FNV-1a
     * every one of them lands in one bucket (the table has 8192) and the map degrades to a
     * list; under a keyed hash the longest chain of 5120 keys in 8192 buckets is ~5 (over
     * 8 with probability ~2e-7). */
    enum { NA = 20, NB = 16, N = NA * NB * NB };
    const uint32_t target = 0x2a2au;
    char a[NA][4], b[NB][4];
    struct item *items = calloc(N, sizeof(*items));
    struct map m;
    int k = 0;
    (void)state;
    assert_non_null(items);
    assert_int_equal(fnv_blocks(2166136261u & 0xffffu, target, a, NA), NA);
    assert_int_equal(fnv_blocks(target, target, b, NB), NB);
    for (int i = 0; i < NA; i++)
        for (int j = 0; j < NB; j++)
            for (int l = 0; l < NB; l++, k++) {
                char key[13];
                memcpy(key, a[i], 4);
                memcpy(key + 4, b[j], 4);
                memcpy(key + 8, b[l], 4);
                key[12] = '\0';
                item_set(&items[k], key, k);
                /* The attack is real: same low 16 bits of the old hash for every key. */
                assert_int_equal(fnv1a(key, 12) & 0xffffu, fnv1a(items[0].key, 12) & 0xffffu);
            }
    map_init(&m);
    for (int i = 0; i < N; i++)
        assert_int_equal(map_put(&m, &items[i].node), 0); /* all distinct */
    assert_int_equal(map_count(&m), N);
    assert_int_equal(m.nbuckets, 8192);
    assert_true(longest_chain(&m) <= 8);
    for (int i = 0; i < N; i += 97)
        assert_ptr_equal(item_get(&m, items[i].key), &items[i]);
    map_free(&m);
    free(items);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_siphash_known_answers),
        cmocka_unit_test(test_map_seeds_are_random),
        cmocka_unit_test(test_map_put_get_remove),
        cmocka_unit_test(test_map_grows),
        cmocka_unit_test(test_map_iterate),
        cmocka_unit_test(test_map_many_keys),
        cmocka_unit_test(test_map_colliding_keys),
        cmocka_unit_test(test_map_fnv_flood_stays_flat),
    };
    return cmocka_run_group_tests_name("map", tests, NULL, NULL);
}
