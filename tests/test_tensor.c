/* test_tensor.c - shapes, allocation, views, meta tensors; the parameter
 * list. */
#include <string.h>

#include "testutil.h"

static mhub_backend *be;

static void setup(void) { CK_OK(mhub_cpu_backend_create(NULL, &be)); }
static void teardown(void)
{
    mhub_backend_free(be);
    be = NULL;
}

START_TEST(test_shape_numel)
{
    int64_t s[4] = {2, 3, 4, 5};
    ck_assert_int_eq(mhub_shape_numel(0, NULL), 1);
    ck_assert_int_eq(mhub_shape_numel(1, s), 2);
    ck_assert_int_eq(mhub_shape_numel(4, s), 120);
    int64_t z[2] = {0, 7};
    ck_assert_int_eq(mhub_shape_numel(2, z), 0);
    int64_t neg[2] = {3, -1};
    ck_assert_int_eq(mhub_shape_numel(2, neg), -1);
    ck_assert_int_eq(mhub_shape_numel(5, s), -1);
    ck_assert_int_eq(mhub_shape_numel(-1, s), -1);
    ck_assert_int_eq(mhub_shape_numel(2, NULL), -1);
    int64_t huge[3] = {INT64_MAX / 2, 3, 1};
    ck_assert_int_eq(mhub_shape_numel(3, huge), -1);
}
END_TEST

START_TEST(test_meta)
{
    mhub_tensor t;
    int64_t s[3] = {175000, 12288, 4};
    CK_OK(mhub_tensor_init_meta(&t, MHUB_BF16, 3, s));
    ck_assert(mhub_tensor_is_meta(&t));
    ck_assert_int_eq(t.numel, 175000LL * 12288 * 4);
    ck_assert_uint_eq(mhub_tensor_nbytes(&t), (size_t)t.numel * 2);
    ck_assert_int_eq(t.shape[3], 1);
    char buf[64];
    ck_assert_str_eq(mhub_tensor_describe(&t, buf, sizeof buf), "bf16[175000, 12288, 4] meta");
    mhub_tensor v;
    int64_t vs[1] = {10};
    CK_OK(mhub_tensor_view(&v, &t, 5, 1, vs));
    ck_assert(mhub_tensor_is_meta(&v));
    mhub_tensor_free(&t); /* no storage: nothing to free, struct reset */
    ck_assert_int_eq(t.numel, 0);
}
END_TEST

START_TEST(test_alloc_view_reshape)
{
    mhub_tensor t, v;
    int64_t s[2] = {4, 6};
    CK_OK(mhub_tensor_alloc(&t, be, MHUB_F32, 2, s));
    ck_assert(!mhub_tensor_is_meta(&t));
    ck_assert(t.owns_data);
    float *d = t.data;
    for (int i = 0; i < 24; i++)
        ck_assert(d[i] == 0.0f); /* zero-filled */
    for (int i = 0; i < 24; i++)
        d[i] = (float)i;
    int64_t vs[2] = {2, 3};
    CK_OK(mhub_tensor_view(&v, &t, 6, 2, vs));
    ck_assert(!v.owns_data);
    ck_assert_ptr_eq(v.data, d + 6);
    ck_assert(((float *)v.data)[5] == 11.0f);
    /* a view of a view */
    mhub_tensor vv;
    int64_t one[1] = {1};
    CK_OK(mhub_tensor_view(&vv, &v, 5, 1, one));
    ck_assert(((float *)vv.data)[0] == 11.0f);
    /* views at the very end, and empty views, are fine */
    int64_t zero[1] = {0};
    CK_OK(mhub_tensor_view(&vv, &t, 24, 1, zero));
    int64_t six[1] = {6};
    CK_OK(mhub_tensor_view(&vv, &t, 18, 1, six));
    /* out of range */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_view(&vv, &t, 19, 1, six));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_view(&vv, &t, -1, 1, one));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_view(&vv, &t, 25, 1, zero));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_view(&t, &t, 0, 1, one));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_view(NULL, &t, 0, 1, one));
    /* reshape keeps storage */
    int64_t r[3] = {2, 2, 6};
    CK_OK(mhub_tensor_reshape(&t, 3, r));
    ck_assert_int_eq(t.ndim, 3);
    ck_assert_ptr_eq(t.data, d);
    int64_t bad[2] = {5, 5};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_reshape(&t, 2, bad));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_reshape(NULL, 2, bad));
    mhub_tensor_free(&v); /* a view frees nothing */
    ck_assert(((float *)t.data)[23] == 23.0f);
    mhub_tensor_free(&t);
    ck_assert_ptr_null(t.data);
    mhub_tensor_free(NULL);
}
END_TEST

START_TEST(test_half_dtypes_and_zero_size)
{
    mhub_tensor t;
    int64_t s[1] = {7};
    CK_OK(mhub_tensor_alloc(&t, be, MHUB_F16, 1, s));
    ck_assert_uint_eq(mhub_tensor_nbytes(&t), 14);
    mhub_tensor_free(&t);
    int64_t z[2] = {0, 5};
    CK_OK(mhub_tensor_alloc(&t, be, MHUB_BF16, 2, z));
    ck_assert_ptr_nonnull(t.data); /* storage, even if empty: not meta */
    ck_assert(!mhub_tensor_is_meta(&t));
    mhub_tensor_free(&t);
    CK_OK(mhub_tensor_alloc(&t, be, MHUB_F32, 0, NULL)); /* a scalar */
    ck_assert_int_eq(t.numel, 1);
    mhub_tensor_free(&t);
}
END_TEST

START_TEST(test_wrap_and_materialize)
{
    float buf[6] = {1, 2, 3, 4, 5, 6};
    mhub_tensor t;
    int64_t s[2] = {2, 3};
    CK_OK(mhub_tensor_wrap(&t, buf, be, MHUB_F32, 2, s));
    ck_assert(!t.owns_data);
    mhub_tensor_free(&t);
    ck_assert(buf[5] == 6.0f); /* caller's memory untouched */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_wrap(&t, NULL, be, MHUB_F32, 2, s));
    CK_OK(mhub_tensor_init_meta(&t, MHUB_F32, 2, s));
    CK_OK(mhub_tensor_materialize(&t, be));
    ck_assert(!mhub_tensor_is_meta(&t));
    CK_FAILS(MHUB_ERR_STATE, mhub_tensor_materialize(&t, be));
    mhub_tensor_free(&t);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_materialize(&t, NULL));
}
END_TEST

START_TEST(test_bad_args)
{
    mhub_tensor t, u;
    int64_t s[2] = {2, 3}, neg[2] = {2, -3};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_init_meta(NULL, MHUB_F32, 2, s));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_init_meta(&t, (mhub_dtype)9, 2, s));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_init_meta(&t, MHUB_F32, 5, s));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_init_meta(&t, MHUB_F32, 2, neg));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_tensor_alloc(&t, NULL, MHUB_F32, 2, s));
    CK_OK(mhub_tensor_init_meta(&t, MHUB_F32, 2, s));
    CK_OK(mhub_tensor_init_meta(&u, MHUB_F16, 2, s));
    ck_assert(mhub_tensor_same_shape(&t, &u));
    int64_t s2[2] = {3, 2};
    CK_OK(mhub_tensor_init_meta(&u, MHUB_F32, 2, s2));
    ck_assert(!mhub_tensor_same_shape(&t, &u));
    ck_assert(!mhub_tensor_same_shape(&t, NULL));
    char small[4];
    mhub_tensor_describe(&t, small, sizeof small);
    ck_assert_uint_eq(strlen(small), 3);
    ck_assert_uint_eq(mhub_tensor_nbytes(NULL), 0);
    ck_assert(!mhub_tensor_is_meta(NULL));
}
END_TEST

START_TEST(test_param_list)
{
    mhub_param_list list = {0};
    int64_t ws[2] = {3, 4}, bs[1] = {3};
    int wi = -1, bi = -1;
    CK_OK(mhub_param_list_add(&list, "fc.weight", MHUB_F32, 2, ws, MHUB_INIT_NORMAL, 0.5f, &wi));
    CK_OK(mhub_param_list_add(&list, "fc.bias", MHUB_F32, 1, bs, MHUB_INIT_ONES, 0.0f, &bi));
    ck_assert_int_eq(wi, 0);
    ck_assert_int_eq(bi, 1);
    ck_assert_int_eq(mhub_param_list_numel(&list), 15);
    ck_assert_int_eq(mhub_param_list_find(&list, "fc.bias"), 1);
    ck_assert_int_eq(mhub_param_list_find(&list, "nope"), -1);
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_param_list_add(&list, "fc.bias", MHUB_F32, 1, bs, MHUB_INIT_ZEROS, 0, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_param_list_add(&list, "", MHUB_F32, 1, bs, MHUB_INIT_ZEROS, 0, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_param_list_add(&list, "x", MHUB_F32, 1, bs, (mhub_init_kind)42, 0, NULL));
    char longname[MHUB_NAME_MAX + 1];
    memset(longname, 'n', MHUB_NAME_MAX);
    longname[MHUB_NAME_MAX] = '\0';
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_param_list_add(&list, longname, MHUB_F32, 1, bs, MHUB_INIT_ZEROS, 0, NULL));
    /* meta until materialized: values cannot be initialised */
    CK_FAILS(MHUB_ERR_STATE, mhub_param_list_init_values(&list, 1));
    CK_OK(mhub_param_list_materialize(&list, be, 99));
    const float *w = list.items[0].value.data, *b = list.items[1].value.data;
    for (int i = 0; i < 12; i++) /* value = f(seed, name, index) */
        ck_assert(w[i] == 0.5f * mhub_rng_normal(99, mhub_rng_stream_id("fc.weight"), (uint64_t)i));
    for (int i = 0; i < 3; i++)
        ck_assert(b[i] == 1.0f);
    float *g = list.items[0].grad.data;
    g[3] = 7.0f;
    CK_OK(mhub_param_list_zero_grad(&list));
    ck_assert(g[3] == 0.0f);
    mhub_param_list_free(&list);
    ck_assert_int_eq(list.count, 0);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_param_list_zero_grad(NULL));
}
END_TEST

START_TEST(test_param_list_many_and_half)
{
    /* growth past the initial capacity; bf16 values initialised through
     * the backend's cast (round to nearest even of the f32 draw) */
    mhub_param_list list = {0};
    int64_t s[1] = {5};
    for (int i = 0; i < 40; i++) {
        char name[32];
        snprintf(name, sizeof name, "p%d", i);
        CK_OK(mhub_param_list_add(&list, name, i % 2 ? MHUB_BF16 : MHUB_F32, 1, s,
                                  MHUB_INIT_UNIFORM, 0.1f, NULL));
    }
    CK_OK(mhub_param_list_materialize(&list, be, 5));
    const uint16_t *h = list.items[1].value.data;
    for (int i = 0; i < 5; i++) {
        float ref = -0.1f + 0.2f * mhub_rng_uniform(5, mhub_rng_stream_id("p1"), (uint64_t)i);
        ck_assert_uint_eq(h[i], mhub_f32_to_bf16(ref));
    }
    mhub_param_list_free(&list);
}
END_TEST

/* One parameter materialized with its own seed: storage for value and
 * grad, values from that seed alone (the list's other parameters keep
 * theirs). */
START_TEST(test_param_materialize_one)
{
    mhub_param_list list = {0};
    int64_t s[1] = {6};
    CK_OK(mhub_param_list_add(&list, "split.weight", MHUB_F32, 1, s, MHUB_INIT_NORMAL, 1.0f,
                              NULL));
    CK_OK(mhub_param_list_add(&list, "replicated.weight", MHUB_F32, 1, s, MHUB_INIT_NORMAL,
                              1.0f, NULL));
    CK_OK(mhub_param_materialize(&list.items[0], be, 7));
    CK_OK(mhub_param_materialize(&list.items[1], be, 8));
    for (int k = 0; k < 2; k++) {
        const mhub_param *p = &list.items[k];
        ck_assert_ptr_nonnull(p->grad.data);
        for (int i = 0; i < 6; i++) {
            ck_assert(((const float *)p->value.data)[i] ==
                      mhub_rng_normal(7u + (uint64_t)k, p->rng_stream, (uint64_t)i));
            ck_assert(((const float *)p->grad.data)[i] == 0.0f);
        }
    }
    /* storage already there: only the values are drawn again */
    const void *data = list.items[0].value.data;
    CK_OK(mhub_param_materialize(&list.items[0], be, 8));
    ck_assert_ptr_eq(list.items[0].value.data, data);
    ck_assert(((const float *)data)[0] == mhub_rng_normal(8, list.items[0].rng_stream, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_param_materialize(NULL, be, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_param_materialize(&list.items[0], NULL, 1));
    mhub_param_list_free(&list);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("tensor");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_shape_numel);
    tcase_add_test(tc, test_meta);
    tcase_add_test(tc, test_alloc_view_reshape);
    tcase_add_test(tc, test_half_dtypes_and_zero_size);
    tcase_add_test(tc, test_wrap_and_materialize);
    tcase_add_test(tc, test_bad_args);
    tcase_add_test(tc, test_param_list);
    tcase_add_test(tc, test_param_list_many_and_half);
    tcase_add_test(tc, test_param_materialize_one);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
