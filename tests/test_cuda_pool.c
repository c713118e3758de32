/* test_cuda_pool.c - the device pool's bookkeeping (plain C: runs
 * everywhere, with made-up addresses; no memory is touched). */
#include <string.h>

#include "backends/cuda/cuda_pool.h"
#include "testutil.h"

#define BASE ((uintptr_t)1 << 32)
#define ALIGN 256

static mhub_pool *make(size_t size)
{
    mhub_pool *p = NULL;
    CK_OK(mhub_pool_create(BASE, size, ALIGN, &p));
    return p;
}

START_TEST(test_alloc_aligned_distinct_and_counted)
{
    mhub_pool *p = make(1 << 20);
    uintptr_t a, b, c;
    CK_OK(mhub_pool_alloc(p, 100, &a));
    CK_OK(mhub_pool_alloc(p, 0, &b));
    CK_OK(mhub_pool_alloc(p, 1000, &c));
    ck_assert(a == BASE);
    ck_assert(b % ALIGN == 0 && c % ALIGN == 0);
    ck_assert(a != b && b != c && a != c);
    ck_assert(b >= a + 100 && c >= b + 1); /* blocks do not overlap */
    ck_assert(mhub_pool_contains(p, c + 999) && !mhub_pool_contains(p, BASE + (1 << 20)));
    mhub_pool_stats st;
    mhub_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.current, 1100); /* requested bytes, not padded ones */
    ck_assert_uint_eq(st.peak, 1100);
    ck_assert_uint_eq(st.blocks, 3);
    ck_assert_uint_eq(st.free_bytes, (1 << 20) - 256 - 256 - 1024);
    CK_OK(mhub_pool_free(p, b));
    mhub_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.current, 1100);
    ck_assert_uint_eq(st.blocks, 2);
    mhub_pool_reset_peak(p);
    CK_OK(mhub_pool_free(p, a));
    mhub_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.current, 1000);
    ck_assert_uint_eq(st.peak, 1100);
    mhub_pool_reset_peak(p);
    mhub_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.peak, 1000);
    mhub_pool_destroy(p);
}
END_TEST

/* Freed neighbours merge: after freeing everything the whole pool is one
 * block again, so the largest request fits. */
START_TEST(test_free_merges_neighbours)
{
    const size_t size = 64 * ALIGN;
    mhub_pool *p = make(size);
    uintptr_t blk[8];
    for (int i = 0; i < 8; i++)
        CK_OK(mhub_pool_alloc(p, 8 * ALIGN, &blk[i]));
    uintptr_t extra;
    CK_FAILS(MHUB_ERR_NO_MEMORY, mhub_pool_alloc(p, 1, &extra));
    /* free in an order that merges left, right and both ways */
    const int order[8] = {1, 3, 2, 6, 7, 0, 5, 4};
    for (int i = 0; i < 8; i++)
        CK_OK(mhub_pool_free(p, blk[order[i]]));
    mhub_pool_stats st;
    mhub_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.largest_free, size);
    ck_assert_uint_eq(st.blocks, 0);
    uintptr_t all;
    CK_OK(mhub_pool_alloc(p, size, &all));
    ck_assert(all == BASE);
    mhub_pool_destroy(p);
}
END_TEST

/* First fit reuses a hole, and a hole too small is skipped. */
START_TEST(test_first_fit_reuses_holes)
{
    mhub_pool *p = make(16 * ALIGN);
    uintptr_t a, b, c, d;
    CK_OK(mhub_pool_alloc(p, ALIGN, &a));
    CK_OK(mhub_pool_alloc(p, 4 * ALIGN, &b));
    CK_OK(mhub_pool_alloc(p, ALIGN, &c));
    CK_OK(mhub_pool_free(p, b));
    CK_OK(mhub_pool_alloc(p, 5 * ALIGN, &d)); /* does not fit the 4-unit hole */
    ck_assert(d > c);
    uintptr_t e;
    CK_OK(mhub_pool_alloc(p, 3 * ALIGN, &e)); /* fits it */
    ck_assert(e == b);
    mhub_pool_destroy(p);
}
END_TEST

START_TEST(test_out_of_memory_message)
{
    mhub_pool *p = make(8 * ALIGN);
    uintptr_t a;
    CK_OK(mhub_pool_alloc(p, 6 * ALIGN, &a));
    CK_FAILS(MHUB_ERR_NO_MEMORY, mhub_pool_alloc(p, 3 * ALIGN, &a));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "768 bytes"));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "512 of 2048 bytes free"));
    CK_FAILS(MHUB_ERR_NO_MEMORY, mhub_pool_alloc(p, 1 << 20, &a));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "whole device pool"));
    mhub_pool_destroy(p);
}
END_TEST

START_TEST(test_bad_arguments)
{
    mhub_pool *p = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_pool_create(BASE, 1 << 20, 100, &p));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_pool_create(BASE + 8, 1 << 20, ALIGN, &p));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_pool_create(BASE, ALIGN - 1, ALIGN, &p));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_pool_create(BASE, 1 << 20, ALIGN, NULL));
    p = make(4 * ALIGN);
    uintptr_t a;
    CK_OK(mhub_pool_alloc(p, 10, &a));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_pool_free(p, a + ALIGN)); /* never handed out */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_pool_free(p, a + 1));
    CK_OK(mhub_pool_free(p, a));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_pool_free(p, a)); /* twice */
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "freed twice"));
    mhub_pool_stats st;
    mhub_pool_get_stats(p, &st);
    ck_assert_uint_eq(st.free_bytes, 4 * ALIGN); /* nothing changed by the bad frees */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_pool_alloc(NULL, 1, &a));
    mhub_pool_destroy(p);
    mhub_pool_destroy(NULL);
}
END_TEST

/* Random alloc/free against a byte map of the pool: blocks never overlap,
 * and the counters always equal the live blocks' requested sizes. */
START_TEST(test_random_against_map)
{
    enum { UNITS = 512, LIVE = 64 };
    mhub_pool *p = make((size_t)UNITS * ALIGN);
    unsigned char owner[UNITS];
    memset(owner, 0, sizeof owner);
    uintptr_t addr[LIVE] = {0};
    size_t req[LIVE] = {0};
    unsigned seed = 12345;
    for (int it = 0; it < 20000; it++) {
        seed = seed * 1103515245u + 12345u;
        int slot = (int)((seed >> 8) % LIVE);
        if (addr[slot]) {
            CK_OK(mhub_pool_free(p, addr[slot]));
            for (int u = 0; u < UNITS; u++)
                if (owner[u] == slot + 1)
                    owner[u] = 0;
            addr[slot] = 0;
            req[slot] = 0;
            continue;
        }
        size_t bytes = (seed >> 16) % (12 * ALIGN);
        uintptr_t at;
        if (mhub_pool_alloc(p, bytes, &at) != MHUB_OK)
            continue; /* full or fragmented: fine, as long as nothing is corrupt */
        size_t first = (at - BASE) / ALIGN, units = bytes ? (bytes + ALIGN - 1) / ALIGN : 1;
        ck_assert((at - BASE) % ALIGN == 0 && first + units <= UNITS);
        for (size_t u = first; u < first + units; u++) {
            ck_assert_msg(owner[u] == 0, "unit %zu handed out twice", u);
            owner[u] = (unsigned char)(slot + 1);
        }
        addr[slot] = at;
        req[slot] = bytes;
        size_t sum = 0;
        for (int i = 0; i < LIVE; i++)
            sum += req[i];
        mhub_pool_stats st;
        mhub_pool_get_stats(p, &st);
        ck_assert_uint_eq(st.current, sum);
    }
    mhub_pool_destroy(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("cuda_pool");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_alloc_aligned_distinct_and_counted);
    tcase_add_test(tc, test_free_merges_neighbours);
    tcase_add_test(tc, test_first_fit_reuses_holes);
    tcase_add_test(tc, test_out_of_memory_message);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_random_against_map);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
