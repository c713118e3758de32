/* testutil_reduce.h - a reference for one data-parallel optimizer step
 * that does not depend on the order in which the MPI library adds the
 * ranks' gradients.
 *
 * A reduction applies its sum op to pairs of partial results, so the
 * reduced value of an element is the sum of the ranks' gradients taken as
 * some binary tree. Which tree is the library's choice (MPICH 4.0 alone
 * halves recursively or chains pairwise, depending on a tuning variable),
 * and with 16-bit gradients every partial sum is rounded to 16 bits, so
 * different trees give values a few 16-bit ulps apart. Where the ranks'
 * gradients nearly cancel, that difference can be the whole sum, and
 * AdamW, whose first update is lr * sign(g), turns it into a full step:
 * no tolerance on a multi-step trajectory covers that without also
 * covering real errors.
 *
 * So the reference checks one step at a time, from the engine's own state:
 * it computes every rank's gradient at the engine's current parameters,
 * forms every value any tree can give (mhub_test_tree_sums), and accepts
 * the engine's step when one of them, fed to the shared update rule with
 * the engine's master values and optimizer state from before the step,
 * gives the engine's master values and state after it. A gradient that
 * was dropped or counted twice gives none of those values, which
 * mhub_test_unexplained's `double_count` checks on the same data. */
#ifndef MHUB_TESTUTIL_REDUCE_H
#define MHUB_TESTUTIL_REDUCE_H

#include <stdbool.h>
#include <string.h>

#include "testutil.h"

enum {
    MHUB_TEST_MAX_RANKS = 8,
    /* distinct tree sums of one element kept per subset of ranks; a
     * sum over 4 ranks has at most 15 trees */
    MHUB_TEST_MAX_SUMS = 128
};

/* x rounded to dt, as a 16-bit buffer (or the 16-bit sum op) stores it. */
static inline float mhub_test_round(float x, mhub_dtype dt)
{
    switch (dt) {
    case MHUB_BF16: return mhub_bf16_to_f32(mhub_f32_to_bf16(x));
    case MHUB_F16: return mhub_f16_to_f32(mhub_f32_to_f16(x));
    case MHUB_F32: break;
    }
    return x;
}

static inline void mhub_test_add_unique(float *set, int *count, float v)
{
    for (int i = 0; i < *count; i++)
        if (set[i] == v)
            return;
    ck_assert_int_lt(*count, MHUB_TEST_MAX_SUMS);
    set[(*count)++] = v;
}

/* Every value terms[0..count) can sum to, taken as any binary tree with
 * each partial sum rounded to dt (an f32 add, then the rounding: the
 * 16-bit sum op's arithmetic). Built over subsets of the terms: a
 * subset's sums are those of each split into two smaller subsets. Writes
 * the distinct values to out (MHUB_TEST_MAX_SUMS at most) and returns how
 * many there are. */
static inline int mhub_test_tree_sums(const float *terms, int count, mhub_dtype dt, float *out)
{
    static float sums[1 << MHUB_TEST_MAX_RANKS][MHUB_TEST_MAX_SUMS];
    static int nsums[1 << MHUB_TEST_MAX_RANKS];
    ck_assert(count >= 1 && count <= MHUB_TEST_MAX_RANKS);
    unsigned all = (1u << count) - 1;
    for (unsigned set = 1; set <= all; set++) {
        nsums[set] = 0;
        if ((set & (set - 1)) == 0) { /* one term */
            int k = 0;
            while ((set >> k) != 1)
                k++;
            sums[set][0] = terms[k];
            nsums[set] = 1;
            continue;
        }
        /* each unordered split once: the left part holds the lowest term */
        unsigned low = set & -set;
        for (unsigned left = (set - 1) & set; left != 0; left = (left - 1) & set) {
            unsigned right = set ^ left;
            if ((left & low) == 0)
                continue;
            for (int i = 0; i < nsums[left]; i++)
                for (int j = 0; j < nsums[right]; j++)
                    mhub_test_add_unique(sums[set], &nsums[set],
                                         mhub_test_round(sums[left][i] + sums[right][j], dt));
        }
    }
    memcpy(out, sums[all], (size_t)nsums[all] * sizeof(float));
    return nsums[all];
}

/* How an engine reduces: `ranks` gradients in dtype gdt; f32 gradients
 * are scaled by 1/ranks on each rank before a sum, 16-bit ones summed and
 * then divided (MHUB_AVG), rounded once more (mhub_dp_prepare_reduce). */
typedef struct mhub_test_reduce {
    mhub_backend *be;
    const mhub_optim_config *optim;
    int64_t step;       /* the update's step number, from 1 */
    int ranks;
    mhub_dtype gdt;
} mhub_test_reduce;

/* One parameter's step: each rank's gradient as its backward left it (f32),
 * and the engine's f32 master values and optimizer state before and after. */
typedef struct mhub_test_param_step {
    int64_t n;
    float *grads[MHUB_TEST_MAX_RANKS];
    float *master, *state[2];
    float *master_after, *state_after[2];
} mhub_test_param_step;

static inline void mhub_test_param_step_alloc(mhub_test_param_step *p, int64_t n, int ranks)
{
    memset(p, 0, sizeof *p);
    p->n = n;
    float **arrays[] = {&p->master, &p->state[0], &p->state[1], &p->master_after,
                        &p->state_after[0], &p->state_after[1]};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        *arrays[i] = calloc((size_t)n, sizeof(float));
    for (int r = 0; r < ranks; r++)
        p->grads[r] = calloc((size_t)n, sizeof(float));
}

static inline void mhub_test_param_step_free(mhub_test_param_step *p)
{
    float *arrays[] = {p->master, p->state[0], p->state[1], p->master_after, p->state_after[0],
                       p->state_after[1]};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        free(arrays[i]);
    for (int r = 0; r < MHUB_TEST_MAX_RANKS; r++)
        free(p->grads[r]);
}

/* The reduced gradients element i can have; double_count adds rank 0's
 * gradient twice (a wrong engine, for checking the check). */
static inline int mhub_test_reduced_grads(const mhub_test_reduce *r, const mhub_test_param_step *p,
                                          int64_t i, bool double_count, float *out)
{
    float terms[MHUB_TEST_MAX_RANKS + 1];
    int count = 0;
    for (int k = 0; k < r->ranks; k++) {
        float g = mhub_test_round(p->grads[k][i], r->gdt); /* the rank's gradient buffer */
        if (r->gdt == MHUB_F32)
            g *= 1.0f / (float)r->ranks;
        terms[count++] = g;
    }
    if (double_count)
        terms[count++] = terms[0];
    int n = mhub_test_tree_sums(terms, count, r->gdt, out);
    if (r->gdt != MHUB_F32 && r->ranks > 1)
        for (int k = 0; k < n; k++)
            out[k] = mhub_test_round(out[k] / (float)r->ranks, r->gdt);
    return n;
}

/* a and b agree to 4 f32 ulps: the update kernel may contract its
 * multiply-adds differently in its vector and scalar paths, while the
 * candidates differ in 16-bit ulps of the gradient. */
static inline bool mhub_test_close_f32(float a, float b)
{
    return fabsf(a - b) <= 4 * 0x1p-24f * fmaxf(fabsf(a), fabsf(b));
}

/* Whether the update with gradient g from element i's state before the
 * step gives its state after it. */
static inline bool mhub_test_update_gives(const mhub_test_reduce *r, const mhub_test_param_step *p,
                                          int64_t i, float g)
{
    int k = mhub_optim_state_arrays(r->optim);
    float master = p->master[i], s[2] = {p->state[0][i], p->state[1][i]};
    float *state[2] = {&s[0], &s[1]};
    CK_OK(mhub_optim_update(r->be, r->optim, &master, &g, state, 1, r->step));
    bool same = mhub_test_close_f32(master, p->master_after[i]);
    for (int a = 0; a < k; a++)
        same = same && mhub_test_close_f32(s[a], p->state_after[a][i]);
    return same;
}

/* The number of elements whose step no reduction order explains; *first
 * is the first of them (-1 if none). */
static inline int64_t mhub_test_unexplained(const mhub_test_reduce *r,
                                            const mhub_test_param_step *p, bool double_count,
                                            int64_t *first)
{
    float cand[MHUB_TEST_MAX_SUMS];
    int64_t bad = 0;
    *first = -1;
    for (int64_t i = 0; i < p->n; i++) {
        int n = mhub_test_reduced_grads(r, p, i, double_count, cand);
        bool explained = false;
        for (int c = 0; c < n && !explained; c++)
            explained = mhub_test_update_gives(r, p, i, cand[c]);
        if (!explained && bad++ == 0)
            *first = i;
    }
    return bad;
}

/* One step of every parameter in `pl`: each element's update must be
 * explained by some summation order, and a double-counted rank gradient
 * must be told apart for all but a tenth of the elements (or the check
 * would be too weak to catch one). `what` and `step` name the case. */
static inline void mhub_test_check_step(const mhub_test_reduce *r, const mhub_param_list *pl,
                                        const mhub_test_param_step *st, const char *what,
                                        int step)
{
    int64_t total = 0, fooled = 0, first;
    for (int p = 0; p < pl->count; p++) {
        int64_t bad = mhub_test_unexplained(r, &st[p], false, &first);
        ck_assert_msg(bad == 0,
                      "%s, step %d: %lld of %lld elements of '%s' match no summation "
                      "order; the first, %lld, went %g -> %g",
                      what, step, (long long)bad, (long long)st[p].n, pl->items[p].name,
                      (long long)first, st[p].master[first], st[p].master_after[first]);
        total += st[p].n;
        fooled += st[p].n - mhub_test_unexplained(r, &st[p], true, &first);
    }
    ck_assert_msg(fooled < total / 10,
                  "%s, step %d: a double-counted gradient would pass for %lld of %lld elements",
                  what, step, (long long)fooled, (long long)total);
}

#endif
