/* test_rng.c - Philox4x32-10 against its published known-answer vectors,
 * and the properties initialisation relies on. */
#include <string.h>

#include "testutil.h"

/* Known-answer vectors of Philox4x32-10 from the Random123 distribution
 * (kat_vectors): counter, key -> output. */
START_TEST(test_philox_known_answers)
{
    static const struct {
        uint32_t ctr[4], key[2], out[4];
    } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
         {0xffffffff, 0xffffffff},
         {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
         {0xa4093822, 0x299f31d0},
         {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
        uint32_t out[4];
        mhub_philox4x32_10(kat[i].ctr, kat[i].key, out);
        for (int j = 0; j < 4; j++)
            ck_assert_msg(out[j] == kat[i].out[j], "vector %zu word %d: %08x != %08x", i, j,
                          out[j], kat[i].out[j]);
    }
}
END_TEST

START_TEST(test_block_layout)
{
    /* (seed, stream, index) map onto key and counter words as documented */
    uint32_t a[4], b[4];
    uint64_t seed = 0x0123456789abcdefull, stream = 0xfedcba9876543210ull,
             index = 0x1122334455667788ull;
    mhub_rng_block(seed, stream, index, a);
    const uint32_t ctr[4] = {0x55667788, 0x11223344, 0x76543210, 0xfedcba98};
    const uint32_t key[2] = {0x89abcdef, 0x01234567};
    mhub_philox4x32_10(ctr, key, b);
    ck_assert_mem_eq(a, b, sizeof a);
}
END_TEST

START_TEST(test_uniform_range_and_moments)
{
    const int n = 200000;
    double sum = 0, sumsq = 0;
    for (int i = 0; i < n; i++) {
        float u = mhub_rng_uniform(7, 3, (uint64_t)i);
        ck_assert(u >= 0.0f && u < 1.0f);
        sum += u;
        sumsq += (double)u * u;
    }
    double mean = sum / n, var = sumsq / n - mean * mean;
    /* standard error of the mean is 0.29/sqrt(n) ~ 6.5e-4: 5 sigma */
    ck_assert_double_lt(fabs(mean - 0.5), 3.3e-3);
    ck_assert_double_lt(fabs(var - 1.0 / 12.0), 2e-3);
}
END_TEST

START_TEST(test_normal_moments)
{
    const int n = 200000;
    double sum = 0, sumsq = 0, sum4 = 0;
    for (int i = 0; i < n; i++) {
        double z = mhub_rng_normal(11, 5, (uint64_t)i);
        ck_assert(isfinite(z));
        sum += z;
        sumsq += z * z;
        sum4 += z * z * z * z;
    }
    double mean = sum / n, var = sumsq / n - mean * mean, kurt = sum4 / n;
    ck_assert_double_lt(fabs(mean), 0.012);     /* ~5 sigma of 1/sqrt(n) */
    ck_assert_double_lt(fabs(var - 1.0), 0.02);
    ck_assert_double_lt(fabs(kurt - 3.0), 0.1);   /* Gaussian fourth moment */
}
END_TEST

START_TEST(test_below)
{
    int counts[7] = {0};
    for (int i = 0; i < 70000; i++) {
        uint32_t v = mhub_rng_below(1, 2, (uint64_t)i, 7);
        ck_assert_uint_lt(v, 7);
        counts[v]++;
    }
    for (int k = 0; k < 7; k++)
        ck_assert_int_gt(counts[k], 9400); /* expected 10000, sd ~93 */
    ck_assert_uint_eq(mhub_rng_below(1, 2, 3, 1), 0);
}
END_TEST

START_TEST(test_split_fills_equal_whole)
{
    /* The property that makes initialisation world-size independent: a
     * range filled in pieces equals the range filled at once, bitwise. */
    enum { N = 1003 };
    float whole[N], parts[N];
    mhub_rng_fill_normal(whole, N, 42, 9, 0, 0.5f, 2.0f);
    int64_t cuts[] = {0, 1, 250, 251, 777, N};
    for (size_t c = 0; c + 1 < sizeof cuts / sizeof cuts[0]; c++)
        mhub_rng_fill_normal(parts + cuts[c], cuts[c + 1] - cuts[c], 42, 9, (uint64_t)cuts[c],
                             0.5f, 2.0f);
    ck_assert_mem_eq(whole, parts, sizeof whole);
    mhub_rng_fill_uniform(whole, N, 42, 9, 100, -1.0f, 1.0f);
    mhub_rng_fill_uniform(parts, 500, 42, 9, 100, -1.0f, 1.0f);
    mhub_rng_fill_uniform(parts + 500, N - 500, 42, 9, 600, -1.0f, 1.0f);
    ck_assert_mem_eq(whole, parts, sizeof whole);
    for (int i = 0; i < N; i++)
        ck_assert(whole[i] >= -1.0f && whole[i] < 1.0f);
}
END_TEST

START_TEST(test_streams_and_seeds_differ)
{
    ck_assert(mhub_rng_normal(1, 1, 0) != mhub_rng_normal(1, 2, 0));
    ck_assert(mhub_rng_normal(1, 1, 0) != mhub_rng_normal(2, 1, 0));
    ck_assert(mhub_rng_normal(1, 1, 0) != mhub_rng_normal(1, 1, 1));
    ck_assert(mhub_rng_normal(1, 1, 5) == mhub_rng_normal(1, 1, 5));
}
END_TEST

START_TEST(test_stream_id)
{
    /* FNV-1a 64 reference values */
    ck_assert_uint_eq(mhub_rng_stream_id(""), 0xcbf29ce484222325ull);
    ck_assert_uint_eq(mhub_rng_stream_id("a"), 0xaf63dc4c8601ec8cull);
    ck_assert_uint_eq(mhub_rng_stream_id("foobar"), 0x85944171f73967e8ull);
    ck_assert_uint_eq(mhub_rng_stream_id(NULL), 0xcbf29ce484222325ull);
    ck_assert(mhub_rng_stream_id("layers.0.weight") != mhub_rng_stream_id("layers.0.bias"));
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("rng");
    TCase *tc = tcase_create("philox");
    tcase_add_test(tc, test_philox_known_answers);
    tcase_add_test(tc, test_block_layout);
    tcase_add_test(tc, test_uniform_range_and_moments);
    tcase_add_test(tc, test_normal_moments);
    tcase_add_test(tc, test_below);
    tcase_add_test(tc, test_split_fills_equal_whole);
    tcase_add_test(tc, test_streams_and_seeds_differ);
    tcase_add_test(tc, test_stream_id);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
