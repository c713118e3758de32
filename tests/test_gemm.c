/* test_gemm.c - the CPU backend's GEMM against a naive double-precision loop.
 *
 * Every transpose combination on shapes with sizes of 1, odd sizes, sizes
 * just off powers of two and random sizes, with alpha/beta other than 1/0
 * and leading dimensions wider than the rows. Padding elements of A and B
 * hold NaN, so reading one would show in C; padding of C holds a sentinel
 * that must survive. Then the argument checks. */
#include <float.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "testutil.h"

static mhub_backend *be;

static void setup(void) { CK_OK(mhub_cpu_backend_create(NULL, &be)); }

static void teardown(void)
{
    mhub_backend_free(be);
    be = NULL;
}

#define C_SENTINEL 12345.0f

typedef struct gemm_case {
    bool ta, tb;
    int64_t m, n, k;
    float alpha, beta;
    int64_t pad; /* extra elements per stored row of A, B and C */
} gemm_case;

/* A stored rows x cols matrix with row stride cols + pad: uniform values in
 * [-1, 1) from `stream`, NaN in the padding. */
static float *stored_matrix(int64_t rows, int64_t cols, int64_t pad, uint64_t stream)
{
    int64_t ld = cols + pad;
    size_t count = (size_t)(rows * ld) + 1;
    float *x = malloc(count * sizeof *x);
    ck_assert_ptr_nonnull(x);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < ld; c++)
            x[r * ld + c] =
                c < cols ? 2.0f * mhub_rng_uniform(11, stream, (uint64_t)(r * ld + c)) - 1.0f
                         : NAN;
    return x;
}

/* op(X)[i, j] of a matrix stored with row stride ld. */
static double op_at(const float *x, int64_t ld, bool trans, int64_t i, int64_t j)
{
    return trans ? (double)x[j * ld + i] : (double)x[i * ld + j];
}

static void run_case(const gemm_case *g, uint64_t stream)
{
    int64_t a_rows = g->ta ? g->k : g->m, a_cols = g->ta ? g->m : g->k;
    int64_t b_rows = g->tb ? g->n : g->k, b_cols = g->tb ? g->k : g->n;
    int64_t lda = (a_cols > 1 ? a_cols : 1) + g->pad;
    int64_t ldb = (b_cols > 1 ? b_cols : 1) + g->pad;
    int64_t ldc = g->n + g->pad;
    float *a = stored_matrix(a_rows, lda - g->pad, g->pad, 3 * stream);
    float *b = stored_matrix(b_rows, ldb - g->pad, g->pad, 3 * stream + 1);
    float *c = stored_matrix(g->m, g->n, g->pad, 3 * stream + 2);
    for (int64_t i = 0; i < g->m; i++)
        for (int64_t j = g->n; j < ldc; j++)
            c[i * ldc + j] = C_SENTINEL;
    size_t c_count = (size_t)(g->m * ldc);
    float *c0 = malloc((c_count + 1) * sizeof *c0);
    ck_assert_ptr_nonnull(c0);
    memcpy(c0, c, c_count * sizeof *c);

    CK_OK(be->ops->gemm(be, g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, lda, b, ldb, g->beta,
                        c, ldc));

    /* Each C element is a k-term dot product, scaled by alpha, plus
     * beta * C. In f32 with any summation order its error is at most
     * (k + 2) units of roundoff (2^-24) times the sum of the absolute
     * terms (Higham, Accuracy and Stability, sec. 3.1); (k + 4) * 2^-23
     * bounds that with room to spare and is still ~1e-5 relative at
     * k = 129, far below what a wrong index or transpose produces. */
    for (int64_t i = 0; i < g->m; i++) {
        for (int64_t j = 0; j < ldc; j++) {
            float got = c[i * ldc + j];
            if (j >= g->n) {
                if (got != C_SENTINEL)
                    ck_abort_msg("C padding [%lld, %lld] overwritten", (long long)i,
                                 (long long)j);
                continue;
            }
            double dot = 0.0, mag = 0.0;
            for (int64_t p = 0; p < g->k; p++) {
                double t = op_at(a, lda, g->ta, i, p) * op_at(b, ldb, g->tb, p, j);
                dot += t;
                mag += fabs(t);
            }
            double c_old = g->beta == 0.0f ? 0.0 : (double)c0[i * ldc + j];
            double want = (double)g->alpha * dot + (double)g->beta * c_old;
            double scale = fabs((double)g->alpha) * mag + fabs((double)g->beta * c_old);
            double tol = (double)(g->k + 4) * FLT_EPSILON * scale + FLT_MIN;
            /* Test, then abort: a passing ck_assert costs a write to Check's log. */
            if (!(fabs((double)got - want) <= tol))
                ck_abort_msg("ta=%d tb=%d m=%lld n=%lld k=%lld alpha=%g beta=%g pad=%lld: "
                             "C[%lld, %lld] = %.9g, want %.9g (tol %.3g)",
                             g->ta, g->tb, (long long)g->m, (long long)g->n, (long long)g->k,
                             (double)g->alpha, (double)g->beta, (long long)g->pad,
                             (long long)i, (long long)j, (double)got, want, tol);
        }
    }
    free(a);
    free(b);
    free(c);
    free(c0);
}

static const int64_t fixed_shapes[][3] = {
    {1, 1, 1},   {1, 17, 3},   {3, 1, 63},   {17, 63, 1},  {63, 17, 129},
    {129, 3, 17}, {64, 65, 66}, {2, 129, 257}, {31, 33, 9}, {7, 5, 3},
};

static const float scalars[][2] = {{1.0f, 0.0f}, {0.5f, -1.25f}, {-2.0f, 0.75f}};

START_TEST(test_fixed_shapes_all_transposes)
{
    uint64_t stream = 0;
    for (size_t s = 0; s < sizeof fixed_shapes / sizeof fixed_shapes[0]; s++)
        for (int t = 0; t < 4; t++)
            for (size_t ab = 0; ab < sizeof scalars / sizeof scalars[0]; ab++)
                for (int64_t pad = 0; pad <= 3; pad += 3) {
                    gemm_case g = {t & 1, (t >> 1) & 1, fixed_shapes[s][0], fixed_shapes[s][1],
                                   fixed_shapes[s][2], scalars[ab][0], scalars[ab][1], pad};
                    run_case(&g, stream++);
                }
}
END_TEST

START_TEST(test_random_shapes)
{
    for (uint64_t i = 0; i < 48; i++) {
        uint32_t r[4];
        mhub_rng_block(99, 1, i, r);
        gemm_case g = {(r[0] & 1) != 0, (r[0] & 2) != 0, 1 + r[1] % 70, 1 + r[2] % 70,
                       1 + r[3] % 70, 1.5f, (r[0] & 4) ? 0.0f : -0.5f, (int64_t)(r[0] >> 8) % 4};
        run_case(&g, 1000 + i);
    }
}
END_TEST

/* beta = 0 means C is not read (it may hold garbage, NaN included). */
START_TEST(test_beta_zero_ignores_c)
{
    float a[6] = {1, 2, 3, 4, 5, 6}; /* 2 x 3 */
    float b[3] = {1, -1, 2};         /* 3 x 1 */
    float c[2] = {NAN, INFINITY};
    CK_OK(be->ops->gemm(be, false, false, 2, 1, 3, 1.0f, a, 3, b, 1, 0.0f, c, 1));
    ck_assert_float_eq(c[0], 1.0f - 2.0f + 6.0f);
    ck_assert_float_eq(c[1], 4.0f - 5.0f + 12.0f);
}
END_TEST

/* k = 0: the product is empty, C = beta * C. */
START_TEST(test_k_zero_scales_c)
{
    float c[4] = {1, 2, 3, 4};
    float dummy = 0.0f;
    CK_OK(be->ops->gemm(be, false, false, 2, 2, 0, 1.0f, &dummy, 1, &dummy, 2, 0.5f, c, 2));
    ck_assert_float_eq(c[0], 0.5f);
    ck_assert_float_eq(c[3], 2.0f);
    CK_OK(be->ops->gemm(be, true, true, 2, 2, 0, 1.0f, NULL, 2, NULL, 1, 0.0f, c, 2));
    ck_assert_float_eq(c[0], 0.0f);
    ck_assert_float_eq(c[3], 0.0f);
}
END_TEST

/* An empty C: nothing to do, and no matrix is touched (NULLs are fine). */
START_TEST(test_empty_output)
{
    CK_OK(be->ops->gemm(be, false, false, 0, 5, 3, 1.0f, NULL, 3, NULL, 5, 0.0f, NULL, 5));
    CK_OK(be->ops->gemm(be, false, false, 4, 0, 3, 1.0f, NULL, 3, NULL, 1, 0.0f, NULL, 1));
}
END_TEST

/* C = A . B (alpha 1, beta 0), for the argument checks. */
static mhub_status gemm1(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float *a,
                         int64_t lda, const float *b, int64_t ldb, float *c, int64_t ldc)
{
    return be->ops->gemm(be, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, 0.0f, c, ldc);
}

/* Fails with MHUB_ERR_INVALID_ARG and a message containing `text`. */
#define CK_BAD(call, text)                                                               \
    do {                                                                                 \
        CK_FAILS(MHUB_ERR_INVALID_ARG, call);                                            \
        ck_assert_msg(strstr(mhub_last_error(), (text)) != NULL, "error '%s' lacks '%s'", \
                      mhub_last_error(), (text));                                        \
    } while (0)

START_TEST(test_bad_arguments)
{
    float a[64] = {0}, b[64] = {0}, c[64] = {0};
    const int64_t big = (int64_t)INT_MAX + 1;
    /* The valid baseline: 4x3 . 3x5 -> 4x5. */
    CK_OK(gemm1(false, false, 4, 5, 3, a, 3, b, 5, c, 5));

    CK_BAD(gemm1(false, false, -1, 5, 3, a, 3, b, 5, c, 5), "m = -1");
    CK_BAD(gemm1(false, false, 4, -5, 3, a, 3, b, 5, c, 5), "n = -5");
    CK_BAD(gemm1(false, false, 4, 5, -3, a, 3, b, 5, c, 5), "k = -3");
    CK_BAD(gemm1(false, false, big, 5, 3, a, 3, b, 5, c, 5), "INT_MAX");
    CK_BAD(gemm1(false, false, 4, 5, big, a, big, b, 5, c, 5), "k = ");

    CK_BAD(gemm1(false, false, 4, 5, 3, NULL, 3, b, 5, c, 5), "a is NULL");
    CK_BAD(gemm1(false, false, 4, 5, 3, a, 3, NULL, 5, c, 5), "b is NULL");
    CK_BAD(gemm1(false, false, 4, 5, 3, a, 3, b, 5, NULL, 5), "c is NULL");

    /* Leading dimensions: at least the row length of the matrix as stored. */
    CK_BAD(gemm1(false, false, 4, 5, 3, a, 2, b, 5, c, 5), "lda = 2");
    CK_OK(gemm1(true, false, 4, 5, 3, a, 4, b, 5, c, 5));
    CK_BAD(gemm1(true, false, 4, 5, 3, a, 3, b, 5, c, 5), "lda = 3");
    CK_BAD(gemm1(false, false, 4, 5, 3, a, 3, b, 4, c, 5), "ldb = 4");
    CK_OK(gemm1(false, true, 4, 5, 3, a, 3, b, 3, c, 5));
    CK_BAD(gemm1(false, true, 4, 5, 3, a, 3, b, 2, c, 5), "ldb = 2");
    CK_BAD(gemm1(false, false, 4, 5, 3, a, 3, b, 5, c, 4), "ldc = 4");
    CK_BAD(gemm1(false, false, 4, 5, 0, a, 0, b, 5, c, 5), "lda = 0");
    CK_BAD(gemm1(false, false, 4, 5, 3, a, big, b, 5, c, 5), "lda");

    /* C may not overlap an input (BLAS reads A and B while writing C). */
    CK_BAD(gemm1(false, false, 4, 5, 3, c, 3, b, 5, c, 5), "overlap");
    CK_BAD(gemm1(false, false, 4, 5, 3, a, 3, c + 19, 5, c, 5), "overlap");
}
END_TEST

/* A failed call writes nothing. */
START_TEST(test_failure_leaves_c)
{
    float a[12], b[15], c[20];
    for (int i = 0; i < 20; i++)
        c[i] = (float)i;
    for (int i = 0; i < 12; i++)
        a[i] = 1.0f;
    for (int i = 0; i < 15; i++)
        b[i] = 1.0f;
    CK_FAILS(MHUB_ERR_INVALID_ARG, gemm1(false, false, 4, 5, 3, a, 3, b, 5, c, 3));
    for (int i = 0; i < 20; i++)
        ck_assert_float_eq(c[i], (float)i);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("gemm");
    TCase *tc = tcase_create("cblas");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_fixed_shapes_all_transposes);
    tcase_add_test(tc, test_random_shapes);
    tcase_add_test(tc, test_beta_zero_ignores_c);
    tcase_add_test(tc, test_k_zero_scales_c);
    tcase_add_test(tc, test_empty_output);
    tcase_add_test(tc, test_bad_arguments);
    tcase_add_test(tc, test_failure_leaves_c);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
