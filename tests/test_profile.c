/* test_profile.c - the profiling backend: the inner backend's results
 * and errors, each op's calls, time and flops in its row. */
#include <string.h>

#include "testutil.h"

static mhub_backend *cpu_or_fail(void)
{
    mhub_backend *c = NULL;
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &c));
    return c;
}

static const mhub_profile_row *find_row(const mhub_profile_row *rows, int n, const char *op)
{
    for (int i = 0; i < n; i++)
        if (strcmp(rows[i].op, op) == 0)
            return &rows[i];
    return NULL;
}

/* Ops through the profiler give the inner backend's bits; each op's row
 * counts its calls and, for GEMMs and attention, 2 flops a multiply-add. */
START_TEST(test_rows_and_results)
{
    mhub_backend *c = cpu_or_fail(), *p = NULL;
    CK_OK(mhub_profile_backend_create(c, &p));
    ck_assert_str_eq(p->name, "profile");
    enum { M = 64, N = 48, K = 32 };
    float *a, *b, *out;
    CK_OK(p->ops->alloc(p, M * K * sizeof(float), (void **)&a));
    CK_OK(p->ops->alloc(p, K * N * sizeof(float), (void **)&b));
    CK_OK(p->ops->alloc(p, M * N * sizeof(float), (void **)&out));
    size_t used = 0;
    CK_OK(c->ops->memory_usage(c, &used, NULL)); /* memory ops reach the inner backend */
    ck_assert_uint_eq(used, (M * K + K * N + M * N) * sizeof(float));
    CK_OK(p->ops->fill_normal(p, a, M * K, 1, 2, 0, 0.0f, 1.0f));
    CK_OK(p->ops->fill_normal(p, b, K * N, 1, 3, 0, 0.0f, 1.0f));
    for (int i = 0; i < 3; i++)
        CK_OK(p->ops->gemm(p, false, false, M, N, K, 1.0f, a, K, b, N, 0.0f, out, N));
    float via_profile[M * N], direct[M * N];
    CK_OK(p->ops->copy(p, via_profile, out, sizeof via_profile, MHUB_COPY_DEVICE_TO_HOST));
    CK_OK(c->ops->gemm(c, false, false, M, N, K, 1.0f, a, K, b, N, 0.0f, out, N));
    CK_OK(c->ops->copy(c, direct, out, sizeof direct, MHUB_COPY_DEVICE_TO_HOST));
    ck_assert(memcmp(via_profile, direct, sizeof direct) == 0);
    /* flash attention's flops: Q K^T and P V under the causal mask */
    const int64_t batch = 2, seq = 16, heads = 2, head_dim = 8;
    mhub_backend *cf = NULL, *pf = NULL;
    CK_OK(mhub_cpu_backend_create(
        &(mhub_cpu_options){.blas_threads = 1, .flash_attention = true}, &cf));
    CK_OK(mhub_profile_backend_create(cf, &pf));
    float *qkv, *att, *lse;
    CK_OK(pf->ops->alloc(pf, batch * seq * 3 * heads * head_dim * sizeof(float), (void **)&qkv));
    CK_OK(pf->ops->alloc(pf, batch * seq * heads * head_dim * sizeof(float), (void **)&att));
    CK_OK(pf->ops->alloc(pf, batch * heads * seq * sizeof(float), (void **)&lse));
    CK_OK(pf->ops->flash_attention_forward(pf, att, lse, qkv, batch, seq, heads, heads,
                                           head_dim));

    mhub_profile_row rows[8];
    int n = 0;
    CK_OK(mhub_profile_backend_rows(p, rows, 8, &n));
    ck_assert_int_eq(n, 3); /* fill_normal, gemm, copy */
    for (int i = 0; i + 1 < n; i++)
        ck_assert(rows[i].seconds >= rows[i + 1].seconds); /* slowest first */
    const mhub_profile_row *g = find_row(rows, n, "gemm"), *f = find_row(rows, n, "fill_normal");
    ck_assert_ptr_nonnull(g);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(g->calls, 3);
    ck_assert(g->flops == 3 * 2.0 * M * N * K);
    ck_assert(g->seconds > 0);
    ck_assert_int_eq(f->calls, 2);
    ck_assert(f->flops == 0);
    CK_OK(mhub_profile_backend_rows(pf, rows, 8, &n));
    const mhub_profile_row *fa = find_row(rows, n, "flash_attention_forward");
    ck_assert_ptr_nonnull(fa);
    ck_assert(fa->flops == 2.0 * batch * heads * seq * seq * head_dim);
    /* a short buffer gets the slowest rows and the full count */
    CK_OK(mhub_profile_backend_rows(p, rows, 1, &n));
    ck_assert_int_eq(n, 3);

    FILE *tmp = tmpfile();
    ck_assert_ptr_nonnull(tmp);
    CK_OK(mhub_profile_backend_print(p, tmp));
    rewind(tmp);
    char text[2048] = {0};
    ck_assert_uint_gt(fread(text, 1, sizeof text - 1, tmp), 0);
    fclose(tmp);
    ck_assert_msg(strstr(text, "gemm") && strstr(text, "fill_normal") && strstr(text, "total") &&
                      strstr(text, "TFLOP/s"),
                  "table:\n%s", text);
    CK_OK(mhub_profile_backend_reset(p));
    CK_OK(mhub_profile_backend_rows(p, rows, 8, &n));
    ck_assert_int_eq(n, 0);

    p->ops->free(p, a);
    p->ops->free(p, b);
    p->ops->free(p, out);
    CK_OK(c->ops->memory_usage(c, &used, NULL));
    ck_assert_uint_eq(used, 0);
    pf->ops->free(pf, qkv);
    pf->ops->free(pf, att);
    pf->ops->free(pf, lse);
    mhub_backend_free(pf); /* the profilers first: they do not own their backends */
    mhub_backend_free(p);
    mhub_backend_free(cf);
    mhub_backend_free(c);
}
END_TEST

/* An op's error is the inner backend's, and the failed call still has
 * its row; an optional op the inner backend lacks stays absent. */
START_TEST(test_errors_and_optional_ops)
{
    mhub_backend *c = cpu_or_fail(), *p = NULL;
    CK_OK(mhub_profile_backend_create(c, &p));
    mhub_clear_error();
    CK_FAILS(MHUB_ERR_INVALID_ARG, p->ops->gelu_forward(p, NULL, NULL, 5));
    char inner_message[512];
    snprintf(inner_message, sizeof inner_message, "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_INVALID_ARG, c->ops->gelu_forward(c, NULL, NULL, 5));
    ck_assert_str_eq(mhub_last_error(), inner_message);
    mhub_profile_row rows[4];
    int n = 0;
    CK_OK(mhub_profile_backend_rows(p, rows, 4, &n));
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(rows[0].op, "gelu_forward");
    ck_assert_int_eq(rows[0].calls, 1);
    /* the CPU backend offers flash attention only when asked */
    ck_assert_ptr_null(p->ops->flash_attention_forward);
    ck_assert_ptr_nonnull(p->ops->causal_attention_forward);
    mhub_backend_free(p);
    mhub_backend_free(c);
}
END_TEST

START_TEST(test_bad_arguments)
{
    mhub_backend *c = cpu_or_fail(), *p = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_create(c, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_create(NULL, &p));
    ck_assert_ptr_null(p);
    mhub_profile_row rows[2];
    int n = -1;
    /* the accessors refuse any other backend, naming the problem */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_rows(c, rows, 2, &n));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "not a profiling backend"));
    ck_assert_int_eq(n, -1);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_rows(NULL, rows, 2, &n));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_reset(c));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_print(c, stdout));
    CK_OK(mhub_profile_backend_create(c, &p));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_rows(p, NULL, 2, &n));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_rows(p, rows, -1, &n));
    CK_OK(mhub_profile_backend_rows(p, NULL, 0, &n)); /* just the count */
    ck_assert_int_eq(n, 0);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_profile_backend_print(p, NULL));
    mhub_backend_free(p);
    mhub_backend_free(c);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("profile");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_rows_and_results);
    tcase_add_test(tc, test_errors_and_optional_ops);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
