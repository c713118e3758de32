/* test_parallel.c - process-group communicators under mpiexec -n 1, 2, 4.
 *
 * For every size combination the world allows, each rank builds its
 * communicators and checks them against the pure layout: its rank and the
 * size in every group, and - by allreducing a one-hot vector over the
 * group - that the communicator holds exactly the group's world ranks, no
 * more and no fewer. Bad sizes must fail on every rank without a hang: a
 * barrier on the world after each failure would block forever if some rank
 * had gone on to communicate. */
#include <stdlib.h>
#include <string.h>

#include "testutil_mpi.h"

static mhub_comm *world_comm(void)
{
    mhub_comm *w = NULL;
    CK_OK(mhub_comm_create_mpi_world(&w));
    ck_assert_ptr_nonnull(w);
    return w;
}

/* The world ranks in this rank's communicator of `kind`, found by summing
 * one-hot vectors: member[r] == 1 exactly when world rank r is in it. */
static void check_membership(mhub_comm *c, const mhub_layout *l, mhub_group_kind kind,
                             int me, int world)
{
    float *mine = calloc((size_t)world, sizeof *mine);
    float *members = calloc((size_t)world, sizeof *members);
    ck_assert_ptr_nonnull(mine);
    ck_assert_ptr_nonnull(members);
    mine[me] = 1.0f;
    CK_OK(mhub_comm_allreduce(c, mine, members, world, MHUB_F32, MHUB_SUM));
    int g = mhub_layout_group_of(l, kind, me);
    const int *ranks = mhub_layout_group_ranks(l, kind, g);
    int n = mhub_layout_group_size(l, kind, g);
    for (int r = 0; r < world; r++) {
        float want = 0.0f;
        for (int j = 0; j < n; j++)
            want = ranks[j] == r ? 1.0f : want;
        ck_assert_msg(members[r] == want, "%s group of rank %d: world rank %d counted %g times",
                      mhub_group_name(kind), me, r, (double)members[r]);
    }
    free(mine);
    free(members);
}

static void check_parallel(mhub_comm *w, const mhub_parallel *p)
{
    const mhub_layout *l = mhub_parallel_layout(p);
    ck_assert_ptr_nonnull(l);
    ck_assert_ptr_eq(mhub_parallel_world(p), w);
    ck_assert_int_eq(mhub_layout_world(l), w->size);
    int me = w->rank;
    for (int k = 0; k < MHUB_GROUP_COUNT; k++) {
        mhub_group_kind kind = (mhub_group_kind)k;
        mhub_comm *c = mhub_parallel_comm(p, kind);
        int g = mhub_layout_group_of(l, kind, me);
        if (g < 0) {
            ck_assert_msg(c == NULL, "rank %d is in no %s group but has a communicator", me,
                          mhub_group_name(kind));
            ck_assert_int_eq(mhub_parallel_rank(p, kind), -1);
            ck_assert_int_eq(mhub_parallel_size(p, kind), 0);
            continue;
        }
        ck_assert_msg(c != NULL, "rank %d has no %s communicator", me, mhub_group_name(kind));
        ck_assert_str_eq(c->name, mhub_group_name(kind));
        const int *ranks = mhub_layout_group_ranks(l, kind, g);
        ck_assert_int_eq(c->size, mhub_layout_group_size(l, kind, g));
        ck_assert_int_eq(mhub_parallel_size(p, kind), c->size);
        ck_assert_int_eq(mhub_parallel_rank(p, kind), c->rank);
        /* the communicator orders its ranks as the layout lists them */
        ck_assert_int_eq(ranks[c->rank], me);
        check_membership(c, l, kind, me, w->size);
    }
    mhub_rank_coords want;
    CK_OK(mhub_layout_coords(l, me, &want));
    const mhub_rank_coords *got = mhub_parallel_coords(p);
    ck_assert_int_eq(memcmp(got, &want, sizeof want), 0);
    int stages = mhub_layout_sizes(l)->pp;
    ck_assert(mhub_parallel_is_first_stage(p) == (want.pp == 0));
    ck_assert(mhub_parallel_is_last_stage(p) == (want.pp == stages - 1));
    ck_assert_int_eq(mhub_parallel_rank(p, MHUB_GROUP_PP), want.pp);
    ck_assert_int_eq(mhub_parallel_rank(p, MHUB_GROUP_TP), want.tp);
}

START_TEST(test_every_combination)
{
    mhub_comm *w = world_comm();
    int n = w->size, built = 0;
    for (int tp = 1; tp <= n; tp++)
        for (int pp = 1; pp <= n; pp++)
            for (int cp = 1; cp <= n; cp++) {
                if (n % (tp * pp * cp))
                    continue;
                mhub_parallel_sizes s = {.tp = tp, .pp = pp, .cp = cp};
                mhub_parallel *p = NULL;
                CK_OK(mhub_parallel_create(w, &s, &p));
                check_parallel(w, p);
                mhub_parallel_free(p);
                built++;
            }
    /* 1 rank: 1 layout; 2 ranks: 4; 4 ranks: 10 */
    ck_assert_int_eq(built, n == 1 ? 1 : n == 2 ? 4 : n == 4 ? 10 : built);
    mhub_comm_free(w);
}
END_TEST

/* Orders, ep, etp and vp change which ranks group together, not the checks. */
START_TEST(test_orders_and_expert_sizes)
{
    mhub_comm *w = world_comm();
    int n = w->size;
    mhub_parallel_sizes cases[] = {
        {.tp = n, .order = "pp-dp-cp-ep-tp"},
        {.pp = n, .vp = 2, .order = "tp-cp-ep-pp-dp"},
        {.ep = n, .etp = 1},
        {.tp = n > 1 ? 2 : 1, .ep = n > 2 ? 2 : 1, .etp = 1},
        {.pp = n > 1 ? 2 : 1, .order = "pp-tp-dp"},
        {.tp = n > 2 ? 2 : 1, .ep = n > 1 ? 2 : 1},
        {.pp = n > 1 ? 2 : 1, .ep = n > 2 ? 2 : 1, .cp = n > 2 ? 2 : 1, .etp = 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (cases[i].vp > 0 && n == 1)
            continue; /* vp needs pp > 1 */
        mhub_parallel *p = NULL;
        CK_OK(mhub_parallel_create(w, &cases[i], &p));
        check_parallel(w, p);
        if (cases[i].vp > 0)
            ck_assert_int_eq(mhub_layout_sizes(mhub_parallel_layout(p))->vp, cases[i].vp);
        mhub_parallel_free(p);
    }
    mhub_comm_free(w);
}
END_TEST

/* Each bad configuration fails alike everywhere; the barrier after it
 * proves every rank came back instead of waiting in a split. */
START_TEST(test_invalid_sizes_fail_everywhere)
{
    mhub_comm *w = world_comm();
    int n = w->size;
    mhub_parallel_sizes bad[] = {
        {.tp = 3},
        {.tp = 2 * n},
        {.pp = n, .cp = 2},
        {.ep = 3},
        {.etp = 2 * n},
        {.tp = -1},
        {.vp = 2, .pp = 1},
        {.order = "tp-dp-dp"},
        {.order = "tp-xx-pp"},
        {.pp = 2 * n, .order = "tp-dp"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mhub_parallel *p = (mhub_parallel *)w; /* must be overwritten with NULL */
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_parallel_create(w, &bad[i], &p));
        ck_assert_ptr_null(p);
        CK_OK(mhub_comm_barrier(w));
    }
    /* and the world still works for a good layout afterwards */
    mhub_parallel *p = NULL;
    CK_OK(mhub_parallel_create(w, &(mhub_parallel_sizes){.tp = n}, &p));
    check_parallel(w, p);
    mhub_parallel_free(p);
    mhub_comm_free(w);
}
END_TEST

START_TEST(test_null_arguments)
{
    mhub_comm *w = world_comm();
    mhub_parallel_sizes s = {0};
    mhub_parallel *p = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_parallel_create(NULL, &s, &p));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_parallel_create(w, &s, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_parallel_create(w, NULL, &p));
    ck_assert_ptr_null(p);
    ck_assert_ptr_null(mhub_parallel_comm(NULL, MHUB_GROUP_TP));
    ck_assert_ptr_null(mhub_parallel_layout(NULL));
    ck_assert_ptr_null(mhub_parallel_coords(NULL));
    ck_assert_int_eq(mhub_parallel_rank(NULL, MHUB_GROUP_TP), -1);
    ck_assert_int_eq(mhub_parallel_size(NULL, MHUB_GROUP_TP), 0);
    ck_assert(!mhub_parallel_is_first_stage(NULL));
    ck_assert(!mhub_parallel_is_last_stage(NULL));
    mhub_parallel_free(NULL);
    CK_OK(mhub_comm_barrier(w));
    mhub_comm_free(w);
}
END_TEST

/* The reference example needs 8 ranks; with 4, tp 2 x pp 2 is the same
 * pattern one dp replica smaller: TP [0,1][2,3], PP [0,2][1,3]. */
START_TEST(test_four_rank_table)
{
    mhub_comm *w = world_comm();
    if (w->size == 4) {
        mhub_parallel *p = NULL;
        CK_OK(mhub_parallel_create(w, &(mhub_parallel_sizes){.tp = 2, .pp = 2}, &p));
        const int tp_rank[4] = {0, 1, 0, 1}, pp_rank[4] = {0, 0, 1, 1};
        ck_assert_int_eq(mhub_parallel_rank(p, MHUB_GROUP_TP), tp_rank[w->rank]);
        ck_assert_int_eq(mhub_parallel_rank(p, MHUB_GROUP_PP), pp_rank[w->rank]);
        ck_assert_int_eq(mhub_parallel_size(p, MHUB_GROUP_DP), 1);
        ck_assert_int_eq(mhub_parallel_size(p, MHUB_GROUP_MP), 4);
        ck_assert(mhub_parallel_is_first_stage(p) == (w->rank < 2));
        ck_assert(mhub_parallel_is_last_stage(p) == (w->rank >= 2));
        /* tp group sums: ranks {0,1} -> 1, {2,3} -> 5 */
        float mine = (float)w->rank, sum = 0.0f;
        CK_OK(mhub_comm_allreduce(mhub_parallel_comm(p, MHUB_GROUP_TP), &mine, &sum, 1,
                                  MHUB_F32, MHUB_SUM));
        ck_assert(sum == (w->rank < 2 ? 1.0f : 5.0f));
        mhub_parallel_free(p);
    }
    mhub_comm_free(w);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("parallel");
    TCase *tc = tcase_create("groups");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_every_combination);
    tcase_add_test(tc, test_orders_and_expert_sizes);
    tcase_add_test(tc, test_invalid_sizes_fail_everywhere);
    tcase_add_test(tc, test_null_arguments);
    tcase_add_test(tc, test_four_rank_table);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return mhub_test_mpi_main(argc, argv, make_suite); }
