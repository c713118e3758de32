/* test_status.c - status names and the last-error message. */
#include <pthread.h>
#include <string.h>

#include "testutil.h"

START_TEST(test_names)
{
    ck_assert_str_eq(mhub_status_name(MHUB_OK), "MHUB_OK");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_INVALID_ARG), "MHUB_ERR_INVALID_ARG");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_NO_MEMORY), "MHUB_ERR_NO_MEMORY");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_IO), "MHUB_ERR_IO");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_PARSE), "MHUB_ERR_PARSE");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_COMM), "MHUB_ERR_COMM");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_UNSUPPORTED), "MHUB_ERR_UNSUPPORTED");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_NUMERIC), "MHUB_ERR_NUMERIC");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_STATE), "MHUB_ERR_STATE");
    ck_assert_str_eq(mhub_status_name(MHUB_ERR_DEVICE), "MHUB_ERR_DEVICE");
    ck_assert_str_eq(mhub_status_name((mhub_status)999), "MHUB_ERR_UNKNOWN");
}
END_TEST

static mhub_status fail_here(void) { return MHUB_ERROR(MHUB_ERR_STATE, "twice"); }

START_TEST(test_error_message)
{
    mhub_clear_error();
    ck_assert_str_eq(mhub_last_error(), "");
    mhub_status s = mhub_error(MHUB_ERR_IO, "cannot open %s (rank %d)", "x.bin", 3);
    ck_assert_int_eq(s, MHUB_ERR_IO);
    ck_assert_str_eq(mhub_last_error(), "cannot open x.bin (rank 3)");
    s = mhub_error_at(MHUB_ERR_PARSE, "load_config", "key '%s' unknown", "foo");
    ck_assert_int_eq(s, MHUB_ERR_PARSE);
    ck_assert_str_eq(mhub_last_error(), "load_config: key 'foo' unknown");
    s = fail_here();
    ck_assert_int_eq(s, MHUB_ERR_STATE);
    ck_assert_str_eq(mhub_last_error(), "fail_here: twice"); /* names the function */
    mhub_clear_error();
    ck_assert_str_eq(mhub_last_error(), "");
}
END_TEST

START_TEST(test_long_message_truncates)
{
    char big[4096];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    mhub_error(MHUB_ERR_IO, "%s", big);
    size_t n = strlen(mhub_last_error());
    ck_assert_uint_gt(n, 500);
    ck_assert_uint_lt(n, sizeof big - 1);
    char where[2048];
    memset(where, 'w', sizeof where - 1);
    where[sizeof where - 1] = '\0';
    mhub_error_at(MHUB_ERR_IO, where, "tail");
    ck_assert_uint_lt(strlen(mhub_last_error()), sizeof where);
}
END_TEST

static mhub_status try_chain(int fail)
{
    MHUB_TRY(fail ? mhub_error(MHUB_ERR_NUMERIC, "inner") : MHUB_OK);
    return MHUB_OK;
}

START_TEST(test_try_macro)
{
    ck_assert_int_eq(try_chain(0), MHUB_OK);
    ck_assert_int_eq(try_chain(1), MHUB_ERR_NUMERIC);
    ck_assert_str_eq(mhub_last_error(), "inner");
}
END_TEST

static void *other_thread(void *arg)
{
    (void)arg;
    mhub_error(MHUB_ERR_COMM, "from the other thread");
    return NULL;
}

START_TEST(test_thread_local)
{
    mhub_error(MHUB_ERR_IO, "main thread");
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, other_thread, NULL), 0);
    pthread_join(th, NULL);
    ck_assert_str_eq(mhub_last_error(), "main thread");
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_error_message);
    tcase_add_test(tc, test_long_message_truncates);
    tcase_add_test(tc, test_try_macro);
    tcase_add_test(tc, test_thread_local);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
