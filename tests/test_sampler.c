/* test_sampler.c - the epoch permutation is a bijection that changes with
 * epoch and seed, epochs cover the dataset, rank slices reassemble the
 * same global batch for any data-parallel size, endless and sequential
 * modes, and bad input. */
#include <string.h>

#include "testutil.h"

/* Check records the source line on every ck_assert (a write in no-fork
 * mode), so loops over ~10^6 lookups test a condition first and call into
 * Check only to report a failure. */
#define REQUIRE(cond, ...)                \
    do {                                  \
        if (!(cond))                      \
            ck_abort_msg(__VA_ARGS__);    \
    } while (0)

/* perm_epoch(i), failing the test on an error. */
static uint64_t perm(const mhub_sampler *s, uint64_t epoch, uint64_t i)
{
    uint64_t v = UINT64_MAX;
    mhub_status st = mhub_sampler_permute(s, epoch, i, &v);
    REQUIRE(st == MHUB_OK, "permute(epoch %llu, %llu): %s", (unsigned long long)epoch,
            (unsigned long long)i, mhub_last_error());
    return v;
}

/* Every i < N maps into [0, N) and no two i collide. */
static void assert_bijection(const mhub_sampler *s, uint64_t epoch)
{
    uint64_t n = s->dataset_size;
    unsigned char *seen = calloc(n, 1);
    ck_assert_ptr_nonnull(seen);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t v = perm(s, epoch, i);
        REQUIRE(v < n, "N=%llu epoch %llu: perm(%llu) = %llu is out of range",
                (unsigned long long)n, (unsigned long long)epoch, (unsigned long long)i,
                (unsigned long long)v);
        REQUIRE(!seen[v], "N=%llu epoch %llu: %llu is hit twice", (unsigned long long)n,
                (unsigned long long)epoch, (unsigned long long)v);
        seen[v] = 1;
    }
    free(seen);
}

START_TEST(test_permutation_is_bijection)
{
    static const uint64_t sizes[] = {1, 2, 3, 7, 1000, 4096, 4097, 100003 /* prime */};
    static const uint64_t seeds[] = {0, 0x9e3779b97f4a7c15ull};
    static const uint64_t epochs[] = {0, 1, 1000003};
    for (size_t n = 0; n < sizeof sizes / sizeof sizes[0]; n++)
        for (size_t k = 0; k < 2; k++) {
            mhub_sampler s;
            CK_OK(mhub_sampler_init(&s, sizes[n], 1, seeds[k], true));
            for (size_t e = 0; e < 3; e++)
                assert_bijection(&s, epochs[e]);
        }
}
END_TEST

/* Positions where two permutations of [0, n) agree. */
static int agreements(const mhub_sampler *a, uint64_t ea, const mhub_sampler *b, uint64_t eb)
{
    int same = 0;
    for (uint64_t i = 0; i < a->dataset_size; i++)
        same += perm(a, ea, i) == perm(b, eb, i);
    return same;
}

START_TEST(test_permutation_varies)
{
    mhub_sampler s1, s2, seq;
    CK_OK(mhub_sampler_init(&s1, 1000, 10, 1, true));
    CK_OK(mhub_sampler_init(&s2, 1000, 10, 2, true));
    CK_OK(mhub_sampler_init(&seq, 1000, 10, 1, false));
    /* two independent random permutations agree in ~1 place */
    ck_assert_int_lt(agreements(&s1, 0, &s1, 1), 10);
    ck_assert_int_lt(agreements(&s1, 5, &s2, 5), 10);
    ck_assert_int_lt(agreements(&s1, 0, &seq, 0), 10); /* not the identity */
    ck_assert_int_eq(agreements(&s1, 3, &s1, 3), 1000);

    /* neighbours do not stay neighbours (a weak mix keeps runs) */
    int runs = 0;
    for (uint64_t i = 1; i < 1000; i++)
        runs += perm(&s1, 0, i) == perm(&s1, 0, i - 1) + 1;
    ck_assert_int_lt(runs, 10);
}
END_TEST

/* Where sample 0 lands over many epochs: about uniform on [0, 10). */
START_TEST(test_permutation_roughly_uniform)
{
    enum { N = 10, EPOCHS = 20000 };
    mhub_sampler s;
    CK_OK(mhub_sampler_init(&s, N, 1, 7, true));
    int where[N] = {0};
    for (uint64_t e = 0; e < EPOCHS; e++)
        for (uint64_t i = 0; i < N; i++)
            where[i] += perm(&s, e, i) == 0;
    /* expected 2000 each, sd ~42: 6 sd either side */
    for (int i = 0; i < N; i++)
        ck_assert_msg(where[i] > 1750 && where[i] < 2250, "position %d holds sample 0 %d times",
                      i, where[i]);
}
END_TEST

/* Steps run through epochs back to back: each window of N consecutive
 * global positions starting at a multiple of N is one whole permutation,
 * even though N is no multiple of G. */
START_TEST(test_epochs_cover_dataset)
{
    enum { N = 1000, G = 96, EPOCHS = 3 };
    mhub_sampler s;
    CK_OK(mhub_sampler_init(&s, N, G, 99, true));
    int64_t steps = (EPOCHS * N + G - 1) / G;
    uint64_t *all = malloc((size_t)(steps * G) * sizeof *all);
    ck_assert_ptr_nonnull(all);
    for (int64_t st = 0; st < steps; st++)
        CK_OK(mhub_sampler_fill(&s, st, 0, G, all + st * G));
    for (int e = 0; e < EPOCHS; e++) {
        unsigned char seen[N] = {0};
        for (int i = 0; i < N; i++) {
            uint64_t v = all[e * N + i];
            REQUIRE(v < N && !seen[v], "epoch %d: %llu is out of range or visited twice", e,
                    (unsigned long long)v);
            seen[v] = 1;
            REQUIRE(v == perm(&s, (uint64_t)e, (uint64_t)i),
                    "epoch %d position %d: fill and permute disagree", e, i);
        }
    }
    /* single lookups agree with the bulk fill, e.g. across the epoch edge
     * inside step 10 (positions 1000..1055 are epoch 1) */
    for (int64_t j = 0; j < G; j++) {
        uint64_t v;
        CK_OK(mhub_sampler_index(&s, 10, j, &v));
        ck_assert_uint_eq(v, all[10 * G + j]);
    }
    free(all);
}
END_TEST

/* Concatenating every rank's micro-batches in (rank, micro) order must
 * give the dp = 1 global batch, for each step, data-parallel size and
 * accumulation depth. */
static void assert_slices_rebuild_batch(const mhub_sampler *s, int64_t step)
{
    int64_t g = s->global_batch;
    uint64_t *whole = malloc((size_t)g * sizeof *whole);
    uint64_t *joined = malloc((size_t)g * sizeof *joined);
    ck_assert(whole && joined);
    CK_OK(mhub_sampler_fill(s, step, 0, g, whole));
    static const int dps[] = {1, 2, 4, 8};
    for (int d = 0; d < 4; d++)
        for (int mb = 1; mb <= 4; mb++) {
            int64_t next = 0;
            for (int r = 0; r < dps[d]; r++)
                for (int m = 0; m < mb; m++) {
                    int64_t first, count;
                    CK_OK(mhub_sampler_rank_slice(s, r, dps[d], mb, m, &first, &count));
                    ck_assert_int_eq(first, next); /* contiguous, in order */
                    ck_assert_int_eq(count, g / (dps[d] * mb));
                    CK_OK(mhub_sampler_fill(s, step, first, count, joined + first));
                    next = first + count;
                }
            ck_assert_int_eq(next, g);
            ck_assert_msg(!memcmp(whole, joined, (size_t)g * sizeof *whole),
                          "step %lld dp %d micro-batches %d: batch differs from dp 1",
                          (long long)step, dps[d], mb);
        }
    free(whole);
    free(joined);
}

START_TEST(test_rank_slices_rebuild_global_batch)
{
    mhub_sampler shuffled, endless;
    CK_OK(mhub_sampler_init(&shuffled, 1000, 96, 5, true)); /* 96 = 8 * lcm(1..4) */
    CK_OK(mhub_sampler_init(&endless, 0, 96, 5, true));
    for (int64_t step = 0; step < 24; step++) {
        assert_slices_rebuild_batch(&shuffled, step);
        assert_slices_rebuild_batch(&endless, step);
    }
    /* a concrete case: rank 2 of 4, micro-batch 1 of 3 -> [8*3 + 8, +8) */
    int64_t first, count;
    CK_OK(mhub_sampler_rank_slice(&shuffled, 2, 4, 3, 1, &first, &count));
    ck_assert_int_eq(first, 56);
    ck_assert_int_eq(count, 8);
}
END_TEST

START_TEST(test_endless_and_sequential)
{
    mhub_sampler s;
    uint64_t v[7];
    /* endless: the global position itself, whatever seed or shuffle */
    for (int shuffle = 0; shuffle < 2; shuffle++) {
        CK_OK(mhub_sampler_init(&s, 0, 7, 1234, shuffle));
        CK_OK(mhub_sampler_fill(&s, 1000000, 0, 7, v));
        for (int j = 0; j < 7; j++)
            ck_assert_uint_eq(v[j], 7000000u + (uint64_t)j);
    }
    uint64_t x;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_permute(&s, 0, 0, &x));

    /* shuffle off: positions wrap around the dataset in order */
    CK_OK(mhub_sampler_init(&s, 10, 7, 1234, false));
    for (int64_t step = 0; step < 30; step++) {
        CK_OK(mhub_sampler_fill(&s, step, 0, 7, v));
        for (int j = 0; j < 7; j++)
            ck_assert_uint_eq(v[j], (uint64_t)(step * 7 + j) % 10);
    }
    /* one-sample dataset: always sample 0 */
    CK_OK(mhub_sampler_init(&s, 1, 7, 1234, true));
    CK_OK(mhub_sampler_fill(&s, 3, 0, 7, v));
    for (int j = 0; j < 7; j++)
        ck_assert_uint_eq(v[j], 0);
}
END_TEST

START_TEST(test_huge_values)
{
    mhub_sampler s;
    static const uint64_t sizes[] = {(uint64_t)INT64_MAX, ((uint64_t)1 << 62) + 1};
    for (int n = 0; n < 2; n++) {
        CK_OK(mhub_sampler_init(&s, sizes[n], 1000, 3, true));
        uint64_t v[64];
        CK_OK(mhub_sampler_fill(&s, 5, 0, 64, v));
        for (int i = 0; i < 64; i++) {
            ck_assert_uint_lt(v[i], sizes[n]);
            for (int j = 0; j < i; j++)
                ck_assert_uint_ne(v[i], v[j]);
        }
    }
    /* the last position that fits in int64 works, the next fails */
    CK_OK(mhub_sampler_init(&s, 0, 1000, 3, false));
    int64_t last = INT64_MAX / 1000 - 1;
    uint64_t x;
    CK_OK(mhub_sampler_index(&s, last, 999, &x));
    ck_assert_uint_eq(x, (uint64_t)last * 1000 + 999);
    /* INT64_MAX = 9223372036854775 * 1000 + 807 */
    CK_OK(mhub_sampler_index(&s, INT64_MAX / 1000, 807, &x));
    ck_assert_uint_eq(x, (uint64_t)INT64_MAX);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_index(&s, INT64_MAX / 1000, 808, &x));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_index(&s, INT64_MAX / 1000 + 1, 0, &x));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_fill(&s, INT64_MAX, 0, 1, &x));
}
END_TEST

START_TEST(test_bad_input)
{
    mhub_sampler s;
    int64_t first, count;
    uint64_t x;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_init(NULL, 10, 4, 0, true));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_init(&s, 10, 0, 0, true));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_init(&s, 10, -4, 0, true));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_init(&s, (uint64_t)INT64_MAX + 1, 4, 0, true));

    CK_OK(mhub_sampler_init(&s, 100, 96, 0, true));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 0, 5, 1, 0, &first, &count));
    ck_assert_msg(strstr(mhub_last_error(), "96") && strstr(mhub_last_error(), "5"),
                  "message does not name the numbers: %s", mhub_last_error());
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 0, 8, 5, 0, &first, &count));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 4, 4, 1, 0, &first, &count));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, -1, 4, 1, 0, &first, &count));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 0, 0, 1, 0, &first, &count));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 0, 4, 0, 0, &first, &count));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 0, 4, 2, 2, &first, &count));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 0, 4, 2, -1, &first, &count));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 0, 4, 2, 0, NULL, &count));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(&s, 0, 4, 2, 0, &first, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_rank_slice(NULL, 0, 4, 2, 0, &first, &count));

    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_index(&s, -1, 0, &x));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_index(&s, 0, 96, &x));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_index(&s, 0, -1, &x));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_index(&s, 0, 0, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_index(NULL, 0, 0, &x));

    uint64_t v[96];
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_fill(&s, 0, 90, 7, v));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_fill(&s, 0, -1, 2, v));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_fill(&s, 0, 0, -1, v));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_fill(&s, 0, 0, 4, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_fill(&s, -1, 0, 4, v));
    CK_OK(mhub_sampler_fill(&s, 0, 96, 0, NULL)); /* empty range */

    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_permute(&s, 0, 100, &x));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_sampler_permute(&s, 0, 0, NULL));

    /* a struct that never went through init */
    mhub_sampler zero;
    memset(&zero, 0, sizeof zero);
    CK_FAILS(MHUB_ERR_STATE, mhub_sampler_index(&zero, 0, 0, &x));
    CK_FAILS(MHUB_ERR_STATE, mhub_sampler_rank_slice(&zero, 0, 1, 1, 0, &first, &count));
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("sampler");
    tcase_add_test(tc, test_permutation_is_bijection);
    tcase_add_test(tc, test_permutation_varies);
    tcase_add_test(tc, test_permutation_roughly_uniform);
    tcase_add_test(tc, test_epochs_cover_dataset);
    tcase_add_test(tc, test_rank_slices_rebuild_global_batch);
    tcase_add_test(tc, test_endless_and_sequential);
    tcase_add_test(tc, test_huge_values);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
