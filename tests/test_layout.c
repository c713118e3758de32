/* test_layout.c - the rank layout against Megatron-Core's tables.
 *
 * The expected groups below are written out by hand from the RankGenerator
 * rule (rank = tp + TP*(cp + CP*(dp + DP*pp)) for the default order; a
 * group varies the masked axes, first axis fastest, and groups are listed
 * over the other axes, first fastest) and, for world 8 / tp 2 / pp 2, copied
 * from the worked example in the Megatron-Core reference notes. Groups are
 * compared as text, "0 1|2 3|4 5|6 7", so a failure shows the whole table.
 * Structural properties (every rank in exactly one group, coordinates that
 * round-trip, group_of agreeing with the lists, JSON that parses back) are
 * checked over every valid size combination of a few world sizes. */
#include <cJSON.h>
#include <limits.h>
#include <stdbool.h>
#include <string.h>

#include "testutil.h"

/* ---- helpers ------------------------------------------------------------ */

static mhub_layout *make(int world, int tp, int pp, int cp, int ep, int etp, const char *order)
{
    mhub_parallel_sizes s = {.tp = tp, .pp = pp, .cp = cp, .ep = ep, .etp = etp, .order = order};
    mhub_layout *l = NULL;
    CK_OK(mhub_layout_create(world, &s, &l));
    ck_assert_ptr_nonnull(l);
    return l;
}

/* The groups of one kind as "a b|c d|...". */
static const char *groups_text(const mhub_layout *l, mhub_group_kind kind)
{
    static char buf[8192];
    size_t used = 0;
    buf[0] = '\0';
    for (int g = 0; g < mhub_layout_group_count(l, kind); g++) {
        const int *r = mhub_layout_group_ranks(l, kind, g);
        ck_assert_ptr_nonnull(r);
        for (int j = 0; j < mhub_layout_group_size(l, kind, g); j++) {
            const char *sep = j > 0 ? " " : g > 0 ? "|" : "";
            used += (size_t)snprintf(buf + used, sizeof buf - used, "%s%d", sep, r[j]);
            ck_assert_uint_lt(used, sizeof buf);
        }
    }
    return buf;
}

#define CK_GROUPS(l, kind, expected)                                                    \
    ck_assert_msg(strcmp(groups_text((l), (kind)), (expected)) == 0,                   \
                  "%s groups: got \"%s\", expected \"%s\"", mhub_group_name(kind),       \
                  groups_text((l), (kind)), (expected))

static const char *const singletons8 = "0|1|2|3|4|5|6|7";

/* ---- Megatron-Core's worked examples ------------------------------------ */

START_TEST(test_megatron_world8_tp2_pp2)
{
    mhub_layout *l = make(8, 2, 2, 0, 0, 0, NULL);
    ck_assert_int_eq(mhub_layout_world(l), 8);
    ck_assert_int_eq(mhub_layout_dp(l), 2);
    ck_assert_int_eq(mhub_layout_edp(l), 2);
    CK_GROUPS(l, MHUB_GROUP_TP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_DP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_DP_CP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 4|1 5|2 6|3 7");
    CK_GROUPS(l, MHUB_GROUP_CP, singletons8);
    CK_GROUPS(l, MHUB_GROUP_MP, "0 1 4 5|2 3 6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_DP, "0 1 2 3|4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_CP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_DP_CP, "0 1 2 3|4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_EMBEDDING, "0 4|1 5|2 6|3 7");
    CK_GROUPS(l, MHUB_GROUP_POS_EMBEDDING, "0|1|2|3");
    /* ep = 1, etp = tp: the expert groups mirror the dense ones */
    CK_GROUPS(l, MHUB_GROUP_EP, singletons8);
    CK_GROUPS(l, MHUB_GROUP_ETP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_EDP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_TP_EP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_EP_PP, "0 1 4 5|2 3 6 7");
    /* rank 5 = tp 1, dp 0, pp 1 */
    mhub_rank_coords c;
    CK_OK(mhub_layout_coords(l, 5, &c));
    ck_assert_int_eq(c.tp, 1);
    ck_assert_int_eq(c.cp, 0);
    ck_assert_int_eq(c.dp, 0);
    ck_assert_int_eq(c.pp, 1);
    /* ranks 4..7 are in the second half of every embedding group */
    ck_assert_int_eq(mhub_layout_group_of(l, MHUB_GROUP_EMBEDDING, 6), 2);
    ck_assert_int_eq(mhub_layout_group_of(l, MHUB_GROUP_POS_EMBEDDING, 6), -1);
    ck_assert_int_eq(mhub_layout_group_of(l, MHUB_GROUP_POS_EMBEDDING, 2), 2);
    mhub_layout_free(l);
}
END_TEST

START_TEST(test_megatron_order_pp_before_dp)
{
    mhub_layout *l = make(8, 2, 2, 1, 1, 0, "tp-cp-ep-pp-dp");
    ck_assert_str_eq(mhub_layout_sizes(l)->order, "tp-cp-ep-pp-dp");
    CK_GROUPS(l, MHUB_GROUP_TP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_DP, "0 4|1 5|2 6|3 7");
    CK_GROUPS(l, MHUB_GROUP_MP, "0 1 2 3|4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_DP, "0 1 4 5|2 3 6 7");
    CK_GROUPS(l, MHUB_GROUP_EMBEDDING, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_POS_EMBEDDING, "0|1|4|5");
    /* rank = tp + 2*(pp + 2*dp) */
    mhub_rank_coords c;
    CK_OK(mhub_layout_coords(l, 6, &c));
    ck_assert_int_eq(c.tp, 0);
    ck_assert_int_eq(c.pp, 1);
    ck_assert_int_eq(c.dp, 1);
    mhub_layout_free(l);
}
END_TEST

START_TEST(test_megatron_ep2)
{
    mhub_layout *l = make(8, 2, 2, 1, 2, 0, NULL);
    ck_assert_int_eq(mhub_layout_sizes(l)->etp, 2);
    ck_assert_int_eq(mhub_layout_edp(l), 1);
    CK_GROUPS(l, MHUB_GROUP_EP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_EDP, singletons8);
    CK_GROUPS(l, MHUB_GROUP_TP_EP, "0 1 2 3|4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_ETP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_EP_PP, "0 1 2 3 4 5 6 7");
    /* dense groups ignore ep */
    CK_GROUPS(l, MHUB_GROUP_DP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 4|1 5|2 6|3 7");
    mhub_rank_coords c;
    CK_OK(mhub_layout_coords(l, 7, &c));
    ck_assert_int_eq(c.etp, 1);
    ck_assert_int_eq(c.ep, 1);
    ck_assert_int_eq(c.edp, 0);
    ck_assert_int_eq(c.pp, 1);
    mhub_layout_free(l);
}
END_TEST

/* ---- more tables, derived by hand --------------------------------------- */

/* rank = tp + 2*(cp + 2*(dp + 2*pp)): cp is 2 apart, dp 4, pp 8. */
START_TEST(test_world16_tp2_pp2_cp2)
{
    mhub_layout *l = make(16, 2, 2, 2, 0, 0, NULL);
    ck_assert_int_eq(mhub_layout_dp(l), 2);
    ck_assert_int_eq(mhub_layout_edp(l), 4);
    CK_GROUPS(l, MHUB_GROUP_TP, "0 1|2 3|4 5|6 7|8 9|10 11|12 13|14 15");
    CK_GROUPS(l, MHUB_GROUP_CP, "0 2|1 3|4 6|5 7|8 10|9 11|12 14|13 15");
    CK_GROUPS(l, MHUB_GROUP_DP, "0 4|1 5|2 6|3 7|8 12|9 13|10 14|11 15");
    CK_GROUPS(l, MHUB_GROUP_DP_CP, "0 2 4 6|1 3 5 7|8 10 12 14|9 11 13 15");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 8|1 9|2 10|3 11|4 12|5 13|6 14|7 15");
    CK_GROUPS(l, MHUB_GROUP_MP, "0 1 8 9|2 3 10 11|4 5 12 13|6 7 14 15");
    CK_GROUPS(l, MHUB_GROUP_TP_DP, "0 1 4 5|2 3 6 7|8 9 12 13|10 11 14 15");
    CK_GROUPS(l, MHUB_GROUP_TP_CP, "0 1 2 3|4 5 6 7|8 9 10 11|12 13 14 15");
    CK_GROUPS(l, MHUB_GROUP_TP_DP_CP, "0 1 2 3 4 5 6 7|8 9 10 11 12 13 14 15");
    CK_GROUPS(l, MHUB_GROUP_EMBEDDING, "0 8|1 9|2 10|3 11|4 12|5 13|6 14|7 15");
    CK_GROUPS(l, MHUB_GROUP_POS_EMBEDDING, "0|1|2|3|4|5|6|7");
    /* the expert generator has cp = 1, so edp spans dense cp and dp */
    CK_GROUPS(l, MHUB_GROUP_EDP, "0 2 4 6|1 3 5 7|8 10 12 14|9 11 13 15");
    CK_GROUPS(l, MHUB_GROUP_TP_EP_PP, "0 1 8 9|2 3 10 11|4 5 12 13|6 7 14 15");
    mhub_rank_coords c;
    CK_OK(mhub_layout_coords(l, 13, &c)); /* 13 = 1 + 2*(0 + 2*(1 + 2*1)) */
    ck_assert_int_eq(c.tp, 1);
    ck_assert_int_eq(c.cp, 0);
    ck_assert_int_eq(c.dp, 1);
    ck_assert_int_eq(c.pp, 1);
    ck_assert_int_eq(c.edp, 2); /* 13 = 1 + 2*(edp + 4*pp) */
    mhub_layout_free(l);
}
END_TEST

START_TEST(test_world8_pure_dp)
{
    mhub_layout *l = make(8, 1, 1, 1, 1, 0, NULL);
    ck_assert_int_eq(mhub_layout_dp(l), 8);
    CK_GROUPS(l, MHUB_GROUP_TP, singletons8);
    CK_GROUPS(l, MHUB_GROUP_PP, singletons8);
    CK_GROUPS(l, MHUB_GROUP_MP, singletons8);
    CK_GROUPS(l, MHUB_GROUP_DP, "0 1 2 3 4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_DP_CP, "0 1 2 3 4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_DP_CP, "0 1 2 3 4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_EDP, "0 1 2 3 4 5 6 7");
    /* one stage: each rank is its own first and last stage */
    CK_GROUPS(l, MHUB_GROUP_EMBEDDING, singletons8);
    CK_GROUPS(l, MHUB_GROUP_POS_EMBEDDING, singletons8);
    mhub_layout_free(l);
}
END_TEST

START_TEST(test_world4_tp4)
{
    mhub_layout *l = make(4, 4, 1, 1, 1, 0, NULL);
    ck_assert_int_eq(mhub_layout_dp(l), 1);
    CK_GROUPS(l, MHUB_GROUP_TP, "0 1 2 3");
    CK_GROUPS(l, MHUB_GROUP_DP, "0|1|2|3");
    CK_GROUPS(l, MHUB_GROUP_PP, "0|1|2|3");
    CK_GROUPS(l, MHUB_GROUP_MP, "0 1 2 3");
    CK_GROUPS(l, MHUB_GROUP_TP_DP, "0 1 2 3");
    CK_GROUPS(l, MHUB_GROUP_ETP, "0 1 2 3");
    CK_GROUPS(l, MHUB_GROUP_EDP, "0|1|2|3");
    mhub_layout_free(l);
}
END_TEST

/* Three stages: the middle stage has no embedding. */
START_TEST(test_world12_tp2_pp3)
{
    mhub_layout *l = make(12, 2, 3, 1, 1, 0, NULL);
    ck_assert_int_eq(mhub_layout_dp(l), 2);
    CK_GROUPS(l, MHUB_GROUP_TP, "0 1|2 3|4 5|6 7|8 9|10 11");
    CK_GROUPS(l, MHUB_GROUP_DP, "0 2|1 3|4 6|5 7|8 10|9 11");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 4 8|1 5 9|2 6 10|3 7 11");
    CK_GROUPS(l, MHUB_GROUP_MP, "0 1 4 5 8 9|2 3 6 7 10 11");
    CK_GROUPS(l, MHUB_GROUP_TP_DP, "0 1 2 3|4 5 6 7|8 9 10 11");
    CK_GROUPS(l, MHUB_GROUP_EMBEDDING, "0 8|1 9|2 10|3 11");
    CK_GROUPS(l, MHUB_GROUP_POS_EMBEDDING, "0|1|2|3");
    for (int r = 4; r < 8; r++)
        ck_assert_int_eq(mhub_layout_group_of(l, MHUB_GROUP_EMBEDDING, r), -1);
    ck_assert_int_eq(mhub_layout_group_of(l, MHUB_GROUP_EMBEDDING, 9), 1);
    mhub_layout_free(l);
}
END_TEST

/* etp = 1 with ep = 4: expert = (etp 1, ep 4, edp 2, pp 1), ep adjacent. */
START_TEST(test_etp_differs_from_tp)
{
    mhub_layout *l = make(8, 2, 1, 1, 4, 1, NULL);
    ck_assert_int_eq(mhub_layout_edp(l), 2);
    CK_GROUPS(l, MHUB_GROUP_TP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_DP, "0 2 4 6|1 3 5 7");
    CK_GROUPS(l, MHUB_GROUP_ETP, singletons8);
    CK_GROUPS(l, MHUB_GROUP_EP, "0 1 2 3|4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_EDP, "0 4|1 5|2 6|3 7");
    CK_GROUPS(l, MHUB_GROUP_TP_EP, "0 1 2 3|4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_EP_PP, "0 1 2 3|4 5 6 7");
    mhub_layout_free(l);

    /* world 16, tp 2, pp 2, ep 2, etp 1: edp = 16/(1*2*2) = 4 */
    l = make(16, 2, 2, 1, 2, 1, NULL);
    ck_assert_int_eq(mhub_layout_edp(l), 4);
    CK_GROUPS(l, MHUB_GROUP_EP, "0 1|2 3|4 5|6 7|8 9|10 11|12 13|14 15");
    CK_GROUPS(l, MHUB_GROUP_EDP, "0 2 4 6|1 3 5 7|8 10 12 14|9 11 13 15");
    CK_GROUPS(l, MHUB_GROUP_TP_EP_PP, "0 1 8 9|2 3 10 11|4 5 12 13|6 7 14 15");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 8|1 9|2 10|3 11|4 12|5 13|6 14|7 15");
    mhub_layout_free(l);
}
END_TEST

/* rank = pp + 2*(tp + 2*dp) */
START_TEST(test_order_pp_first)
{
    mhub_layout *l = make(8, 2, 2, 1, 1, 0, "pp-tp-dp");
    ck_assert_str_eq(mhub_layout_sizes(l)->order, "pp-tp-dp-ep-cp");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_TP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_DP, "0 4|1 5|2 6|3 7");
    CK_GROUPS(l, MHUB_GROUP_MP, "0 1 2 3|4 5 6 7");
    CK_GROUPS(l, MHUB_GROUP_TP_DP, "0 2 4 6|1 3 5 7");
    CK_GROUPS(l, MHUB_GROUP_EMBEDDING, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_POS_EMBEDDING, "0|2|4|6");
    mhub_layout_free(l);
}
END_TEST

START_TEST(test_defaults_resolved)
{
    mhub_parallel_sizes zero = {0};
    mhub_layout *l = NULL;
    CK_OK(mhub_layout_create(6, &zero, &l));
    const mhub_parallel_sizes *s = mhub_layout_sizes(l);
    ck_assert_int_eq(s->tp, 1);
    ck_assert_int_eq(s->pp, 1);
    ck_assert_int_eq(s->cp, 1);
    ck_assert_int_eq(s->ep, 1);
    ck_assert_int_eq(s->etp, 1);
    ck_assert_int_eq(s->vp, 0);
    ck_assert_str_eq(s->order, "tp-cp-ep-dp-pp");
    ck_assert_int_eq(mhub_layout_dp(l), 6);
    mhub_layout_free(l);

    /* etp follows tp; vp is kept; the order is case-insensitive and
     * axes of size 1 it leaves out are appended */
    mhub_parallel_sizes s2 = {.tp = 2, .pp = 2, .vp = 3, .order = "TP-DP-PP"};
    CK_OK(mhub_layout_create(8, &s2, &l));
    s = mhub_layout_sizes(l);
    ck_assert_int_eq(s->etp, 2);
    ck_assert_int_eq(s->vp, 3);
    ck_assert_str_eq(s->order, "tp-dp-pp-ep-cp");
    CK_GROUPS(l, MHUB_GROUP_DP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 4|1 5|2 6|3 7");
    mhub_layout_free(l);

    /* a one-rank world */
    CK_OK(mhub_layout_create(1, &zero, &l));
    for (int k = 0; k < MHUB_GROUP_COUNT; k++)
        CK_GROUPS(l, (mhub_group_kind)k, "0");
    mhub_layout_free(l);
}
END_TEST

/* ---- structure over every valid combination ----------------------------- */

/* Every rank in exactly one group of each partitioning kind, and group_of
 * agreeing with the lists; embedding kinds hold each pp group's ends. */
static void check_partitions(const mhub_layout *l)
{
    int world = mhub_layout_world(l);
    int *seen = calloc((size_t)world, sizeof *seen);
    ck_assert_ptr_nonnull(seen);
    for (int k = 0; k < MHUB_GROUP_COUNT; k++) {
        mhub_group_kind kind = (mhub_group_kind)k;
        bool partition = kind != MHUB_GROUP_EMBEDDING && kind != MHUB_GROUP_POS_EMBEDDING;
        memset(seen, 0, (size_t)world * sizeof *seen);
        int total = 0;
        for (int g = 0; g < mhub_layout_group_count(l, kind); g++) {
            const int *r = mhub_layout_group_ranks(l, kind, g);
            int n = mhub_layout_group_size(l, kind, g);
            for (int j = 0; j < n; j++) {
                ck_assert_int_ge(r[j], 0);
                ck_assert_int_lt(r[j], world);
                if (j > 0)
                    ck_assert_int_lt(r[j - 1], r[j]);
                seen[r[j]]++;
                ck_assert_int_eq(mhub_layout_group_of(l, kind, r[j]), g);
            }
            total += n;
        }
        for (int r = 0; r < world; r++) {
            ck_assert_int_le(seen[r], 1);
            if (partition)
                ck_assert_msg(seen[r] == 1, "%s: rank %d in %d groups", mhub_group_name(kind),
                              r, seen[r]);
            else if (!seen[r])
                ck_assert_int_eq(mhub_layout_group_of(l, kind, r), -1);
        }
        if (partition)
            ck_assert_int_eq(total, world);
    }
    free(seen);
}

/* Coordinates round-trip through the default order's formula, and every
 * group varies exactly its own axes. */
static void check_coords(const mhub_layout *l)
{
    const mhub_parallel_sizes *s = mhub_layout_sizes(l);
    int dp = mhub_layout_dp(l), edp = mhub_layout_edp(l);
    for (int r = 0; r < mhub_layout_world(l); r++) {
        mhub_rank_coords c;
        CK_OK(mhub_layout_coords(l, r, &c));
        ck_assert_int_eq(c.tp + s->tp * (c.cp + s->cp * (c.dp + dp * c.pp)), r);
        ck_assert_int_eq(c.etp + s->etp * (c.ep + s->ep * (c.edp + edp * c.pp)), r);
        const int *tp = mhub_layout_group_ranks(l, MHUB_GROUP_TP,
                                                mhub_layout_group_of(l, MHUB_GROUP_TP, r));
        const int *pp = mhub_layout_group_ranks(l, MHUB_GROUP_PP,
                                                mhub_layout_group_of(l, MHUB_GROUP_PP, r));
        const int *dpg = mhub_layout_group_ranks(l, MHUB_GROUP_DP,
                                                 mhub_layout_group_of(l, MHUB_GROUP_DP, r));
        const int *cp = mhub_layout_group_ranks(l, MHUB_GROUP_CP,
                                                mhub_layout_group_of(l, MHUB_GROUP_CP, r));
        const int *ep = mhub_layout_group_ranks(l, MHUB_GROUP_EP,
                                                mhub_layout_group_of(l, MHUB_GROUP_EP, r));
        /* a rank's place in its group is its coordinate on that axis */
        ck_assert_int_eq(tp[c.tp], r);
        ck_assert_int_eq(pp[c.pp], r);
        ck_assert_int_eq(dpg[c.dp], r);
        ck_assert_int_eq(cp[c.cp], r);
        ck_assert_int_eq(ep[c.ep], r);
        ck_assert_int_eq(tp[0], r - c.tp);
        ck_assert_int_eq(pp[0], r - c.pp * s->tp * s->cp * dp);
    }
}

static void check_sizes_of_groups(const mhub_layout *l)
{
    const mhub_parallel_sizes *s = mhub_layout_sizes(l);
    int dp = mhub_layout_dp(l), edp = mhub_layout_edp(l);
    const int want[MHUB_GROUP_COUNT] = {
        [MHUB_GROUP_TP] = s->tp,
        [MHUB_GROUP_CP] = s->cp,
        [MHUB_GROUP_DP] = dp,
        [MHUB_GROUP_DP_CP] = dp * s->cp,
        [MHUB_GROUP_PP] = s->pp,
        [MHUB_GROUP_MP] = s->tp * s->pp,
        [MHUB_GROUP_TP_DP] = s->tp * dp,
        [MHUB_GROUP_TP_CP] = s->tp * s->cp,
        [MHUB_GROUP_TP_DP_CP] = s->tp * dp * s->cp,
        [MHUB_GROUP_EMBEDDING] = s->pp > 1 ? 2 : 1,
        [MHUB_GROUP_POS_EMBEDDING] = 1,
        [MHUB_GROUP_EP] = s->ep,
        [MHUB_GROUP_ETP] = s->etp,
        [MHUB_GROUP_EDP] = edp,
        [MHUB_GROUP_TP_EP] = s->etp * s->ep,
        [MHUB_GROUP_TP_EP_PP] = s->etp * s->ep * s->pp,
    };
    for (int k = 0; k < MHUB_GROUP_COUNT; k++)
        for (int g = 0; g < mhub_layout_group_count(l, (mhub_group_kind)k); g++)
            ck_assert_msg(mhub_layout_group_size(l, (mhub_group_kind)k, g) == want[k],
                          "%s group %d has %d ranks, expected %d",
                          mhub_group_name((mhub_group_kind)k), g,
                          mhub_layout_group_size(l, (mhub_group_kind)k, g), want[k]);
}

START_TEST(test_structure_all_combinations)
{
    const int worlds[] = {1, 2, 4, 6, 8, 12, 16, 24, 32};
    int checked = 0;
    for (size_t w = 0; w < sizeof worlds / sizeof worlds[0]; w++) {
        int world = worlds[w];
        for (int tp = 1; tp <= world; tp++)
            for (int pp = 1; pp <= world; pp++)
                for (int cp = 1; cp <= world; cp++)
                    for (int ep = 1; ep <= world; ep++) {
                        if (world % (tp * pp * cp) || world % (tp * ep * pp))
                            continue;
                        mhub_layout *l = make(world, tp, pp, cp, ep, 0, NULL);
                        check_partitions(l);
                        check_coords(l);
                        check_sizes_of_groups(l);
                        mhub_layout_free(l);
                        checked++;
                    }
    }
    ck_assert_int_gt(checked, 200);
}
END_TEST

START_TEST(test_large_world)
{
    mhub_layout *l = make(4096, 8, 4, 2, 4, 2, NULL);
    ck_assert_int_eq(mhub_layout_dp(l), 64);
    ck_assert_int_eq(mhub_layout_edp(l), 128);
    check_partitions(l);
    check_coords(l);
    check_sizes_of_groups(l);
    mhub_layout_free(l);
}
END_TEST

START_TEST(test_accessors_reject_bad_arguments)
{
    mhub_layout *l = make(8, 2, 2, 1, 1, 0, NULL);
    ck_assert_int_eq(mhub_layout_group_of(l, MHUB_GROUP_TP, -1), -1);
    ck_assert_int_eq(mhub_layout_group_of(l, MHUB_GROUP_TP, 8), -1);
    ck_assert_int_eq(mhub_layout_group_of(l, MHUB_GROUP_COUNT, 0), -1);
    ck_assert_int_eq(mhub_layout_group_of(NULL, MHUB_GROUP_TP, 0), -1);
    ck_assert_int_eq(mhub_layout_group_count(l, MHUB_GROUP_COUNT), 0);
    ck_assert_int_eq(mhub_layout_group_count(NULL, MHUB_GROUP_TP), 0);
    ck_assert_int_eq(mhub_layout_group_size(l, MHUB_GROUP_TP, 4), 0);
    ck_assert_int_eq(mhub_layout_group_size(l, MHUB_GROUP_TP, -1), 0);
    ck_assert_ptr_null(mhub_layout_group_ranks(l, MHUB_GROUP_TP, 4));
    ck_assert_ptr_null(mhub_layout_group_ranks(l, (mhub_group_kind)-1, 0));
    mhub_rank_coords c;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_coords(l, 8, &c));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_coords(l, -1, &c));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_coords(l, 0, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_coords(NULL, 0, &c));
    char *json = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_to_json(NULL, &json));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_to_json(l, NULL));
    ck_assert_int_eq(mhub_layout_world(NULL), 0);
    ck_assert_ptr_null(mhub_layout_sizes(NULL));
    mhub_layout_free(l);
    mhub_layout_free(NULL);
}
END_TEST

START_TEST(test_group_names)
{
    const char *want[MHUB_GROUP_COUNT] = {
        "tp", "cp", "dp", "dp-cp", "pp", "mp", "tp-dp", "tp-cp", "tp-dp-cp", "embedding",
        "position-embedding", "ep", "etp", "edp", "tp-ep", "tp-ep-pp"};
    for (int k = 0; k < MHUB_GROUP_COUNT; k++)
        ck_assert_str_eq(mhub_group_name((mhub_group_kind)k), want[k]);
    ck_assert_str_eq(mhub_group_name(MHUB_GROUP_COUNT), "invalid");
}
END_TEST

/* ---- JSON --------------------------------------------------------------- */

static int json_int(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    ck_assert_msg(cJSON_IsNumber(v), "key %s missing or not a number", key);
    return v->valueint;
}

static void check_json_matches(const mhub_layout *l)
{
    char *text = NULL;
    CK_OK(mhub_layout_to_json(l, &text));
    ck_assert_ptr_null(strchr(text, '\n'));
    cJSON *root = cJSON_Parse(text);
    ck_assert_msg(root != NULL, "JSON does not parse: %s", text);
    ck_assert_int_eq(json_int(root, "world"), mhub_layout_world(l));
    const cJSON *sizes = cJSON_GetObjectItemCaseSensitive(root, "sizes");
    const mhub_parallel_sizes *s = mhub_layout_sizes(l);
    ck_assert_int_eq(json_int(sizes, "tp"), s->tp);
    ck_assert_int_eq(json_int(sizes, "pp"), s->pp);
    ck_assert_int_eq(json_int(sizes, "cp"), s->cp);
    ck_assert_int_eq(json_int(sizes, "ep"), s->ep);
    ck_assert_int_eq(json_int(sizes, "etp"), s->etp);
    ck_assert_int_eq(json_int(sizes, "vp"), s->vp);
    ck_assert_int_eq(json_int(sizes, "dp"), mhub_layout_dp(l));
    ck_assert_int_eq(json_int(sizes, "edp"), mhub_layout_edp(l));
    const cJSON *order = cJSON_GetObjectItemCaseSensitive(sizes, "order");
    ck_assert(cJSON_IsString(order));
    ck_assert_str_eq(order->valuestring, s->order);
    for (int k = 0; k < MHUB_GROUP_COUNT; k++) {
        mhub_group_kind kind = (mhub_group_kind)k;
        const cJSON *groups = cJSON_GetObjectItemCaseSensitive(root, mhub_group_name(kind));
        ck_assert_msg(cJSON_IsArray(groups), "no array for %s", mhub_group_name(kind));
        ck_assert_int_eq(cJSON_GetArraySize(groups), mhub_layout_group_count(l, kind));
        int g = 0;
        const cJSON *group;
        cJSON_ArrayForEach(group, groups)
        {
            const int *r = mhub_layout_group_ranks(l, kind, g);
            ck_assert_int_eq(cJSON_GetArraySize(group), mhub_layout_group_size(l, kind, g));
            int j = 0;
            const cJSON *rank;
            cJSON_ArrayForEach(rank, group)
            {
                ck_assert(cJSON_IsNumber(rank));
                ck_assert_int_eq(rank->valueint, r[j++]);
            }
            g++;
        }
    }
    cJSON_Delete(root);
    free(text);
}

START_TEST(test_json_round_trip)
{
    mhub_layout *l = make(8, 2, 2, 1, 1, 0, NULL);
    char *text = NULL;
    CK_OK(mhub_layout_to_json(l, &text));
    ck_assert_ptr_nonnull(strstr(text, "\"world\":8"));
    ck_assert_ptr_nonnull(strstr(text, "\"tp\":[[0,1],[2,3],[4,5],[6,7]]"));
    ck_assert_ptr_nonnull(strstr(text, "\"dp\":[[0,2],[1,3],[4,6],[5,7]]"));
    ck_assert_ptr_nonnull(strstr(text, "\"pp\":[[0,4],[1,5],[2,6],[3,7]]"));
    ck_assert_ptr_nonnull(strstr(text, "\"position-embedding\":[[0],[1],[2],[3]]"));
    free(text);
    check_json_matches(l);
    mhub_layout_free(l);

    l = make(16, 2, 2, 2, 2, 1, "tp-cp-ep-dp-pp");
    check_json_matches(l);
    mhub_layout_free(l);
}
END_TEST

/* ---- bad input ---------------------------------------------------------- */

/* Creating the layout fails with INVALID_ARG, leaves *out NULL and says
 * `needle` somewhere in the message. */
static void check_rejected(int world, mhub_parallel_sizes s, const char *needle)
{
    mhub_layout *l = (mhub_layout *)&s; /* any non-NULL value */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_create(world, &s, &l));
    ck_assert_ptr_null(l);
    ck_assert_msg(strstr(mhub_last_error(), needle) != NULL, "message \"%s\" lacks \"%s\"",
                  mhub_last_error(), needle);
}

START_TEST(test_rejects_bad_world_and_sizes)
{
    mhub_parallel_sizes ok = {.tp = 1};
    check_rejected(0, ok, "world size 0");
    check_rejected(-4, ok, "world size -4");
    check_rejected(8, (mhub_parallel_sizes){.tp = -1}, "tp = -1");
    check_rejected(8, (mhub_parallel_sizes){.pp = -2}, "pp = -2");
    check_rejected(8, (mhub_parallel_sizes){.cp = -1}, "cp = -1");
    check_rejected(8, (mhub_parallel_sizes){.ep = -1}, "ep = -1");
    check_rejected(8, (mhub_parallel_sizes){.etp = -3}, "etp = -3");
    check_rejected(8, (mhub_parallel_sizes){.vp = -1}, "vp = -1");
    check_rejected(8, (mhub_parallel_sizes){.tp = 3},
                   "world size 8 is not divisible by tp*cp*pp = 3*1*1 = 3");
    check_rejected(8, (mhub_parallel_sizes){.tp = 2, .pp = 2, .cp = 4},
                   "world size 8 is not divisible by tp*cp*pp = 2*4*2 = 16");
    check_rejected(12, (mhub_parallel_sizes){.tp = 2, .ep = 4},
                   "expert world size 12 is not divisible by etp*ep*pp = 2*4*1 = 8");
    check_rejected(8, (mhub_parallel_sizes){.tp = 2, .etp = 3},
                   "expert world size 8 is not divisible by etp*ep*pp = 3*1*1 = 3");
    check_rejected(8, (mhub_parallel_sizes){.tp = INT_MAX, .cp = INT_MAX}, "exceeds");
    check_rejected(8, (mhub_parallel_sizes){.vp = 2},
                   "pipeline-model-parallel size should be greater than 1 with interleaved "
                   "schedule");
    check_rejected(8, (mhub_parallel_sizes){.vp = 2, .pp = 1}, "vp = 2, pp = 1");

    mhub_layout *l = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_create(8, NULL, &l));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_layout_create(8, &ok, NULL));
}
END_TEST

START_TEST(test_rejects_bad_orders)
{
    mhub_parallel_sizes s = {.tp = 2, .pp = 2};
    const struct { const char *order, *needle; } cases[] = {
        {"", "is empty"},
        {"tp--dp-pp", "empty axis name"},
        {"-tp-dp-pp", "empty axis name"},
        {"tp-dp-pp-", "empty axis name"},
        {"-", "empty axis name"},
        {"tp-xx-pp", "unknown axis 'xx'"},
        {"tp-dp-pipe", "unknown axis 'pipe'"},
        {"tpdp-pp", "unknown axis 'tpdp'"},
        {"tp dp pp", "unknown axis 'tp dp pp'"},
        {"tp-dp-tp-pp", "names axis tp twice"},
        {"tp-PP-dp-pp", "names axis pp twice"},
        {"tp-dp", "does not name pp, whose size is 2"},
        {"dp-pp", "does not name tp, whose size is 2"},
        {"tp-pp", "does not name dp, whose size is 2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        s.order = cases[i].order;
        check_rejected(8, s, cases[i].needle);
    }
    /* ep > 1 lives only in the expert generator, but must still be named */
    check_rejected(8, (mhub_parallel_sizes){.tp = 2, .ep = 2, .order = "tp-dp-pp"},
                   "does not name ep, whose expert size (ep) is 2");
    /* dense dp is 1 here, expert dp is 4 */
    check_rejected(4, (mhub_parallel_sizes){.tp = 4, .etp = 1, .order = "tp-pp"},
                   "whose expert size (edp) is 4");
    /* cp > 1 must be named too */
    check_rejected(8, (mhub_parallel_sizes){.cp = 2, .order = "tp-dp-pp"},
                   "does not name cp, whose size is 2");
}
END_TEST

/* Megatron-Core's two consistency rules between the generators. */
START_TEST(test_rejects_inconsistent_expert_layout)
{
    /* pp not last: dp = 2 but edp = 8/(2*2*2) = 1 */
    check_rejected(8, (mhub_parallel_sizes){.tp = 2, .pp = 2, .ep = 2, .order = "tp-cp-ep-pp-dp"},
                   "dense dp (2) and expert dp (world/(etp*ep*pp) = 1) must be equal");
    /* dp = edp = 2, but pp is 2 ranks apart for dense (tp) and 1 for experts (etp) */
    check_rejected(8,
                   (mhub_parallel_sizes){.tp = 2, .pp = 2, .ep = 2, .etp = 1,
                                         .order = "tp-pp-ep-cp-dp"},
                   "different pipeline groups to dense layers (ranks 2 apart) and expert "
                   "layers (ranks 1 apart)");
    /* the same sizes with pp last are fine */
    mhub_layout *l = make(8, 2, 2, 1, 2, 1, "tp-cp-ep-dp-pp");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 4|1 5|2 6|3 7");
    CK_GROUPS(l, MHUB_GROUP_EP, "0 1|2 3|4 5|6 7");
    mhub_layout_free(l);
    /* pp not last but dp == edp and the pipelines agree (tp*cp = etp*ep) */
    l = make(8, 2, 2, 1, 2, 1, "tp-ep-pp-dp");
    CK_GROUPS(l, MHUB_GROUP_PP, "0 2|1 3|4 6|5 7");
    CK_GROUPS(l, MHUB_GROUP_EP, "0 1|2 3|4 5|6 7");
    CK_GROUPS(l, MHUB_GROUP_EDP, "0 4|1 5|2 6|3 7");
    mhub_layout_free(l);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("layout");
    TCase *tables = tcase_create("tables");
    tcase_add_test(tables, test_megatron_world8_tp2_pp2);
    tcase_add_test(tables, test_megatron_order_pp_before_dp);
    tcase_add_test(tables, test_megatron_ep2);
    tcase_add_test(tables, test_world16_tp2_pp2_cp2);
    tcase_add_test(tables, test_world8_pure_dp);
    tcase_add_test(tables, test_world4_tp4);
    tcase_add_test(tables, test_world12_tp2_pp3);
    tcase_add_test(tables, test_etp_differs_from_tp);
    tcase_add_test(tables, test_order_pp_first);
    tcase_add_test(tables, test_defaults_resolved);
    suite_add_tcase(s, tables);

    TCase *structure = tcase_create("structure");
    tcase_set_timeout(structure, 60);
    tcase_add_test(structure, test_structure_all_combinations);
    tcase_add_test(structure, test_large_world);
    tcase_add_test(structure, test_accessors_reject_bad_arguments);
    tcase_add_test(structure, test_group_names);
    tcase_add_test(structure, test_json_round_trip);
    suite_add_tcase(s, structure);

    TCase *bad = tcase_create("bad_input");
    tcase_add_test(bad, test_rejects_bad_world_and_sizes);
    tcase_add_test(bad, test_rejects_bad_orders);
    tcase_add_test(bad, test_rejects_inconsistent_expert_layout);
    suite_add_tcase(s, bad);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
