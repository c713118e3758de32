/* testutil.h - shared helpers for the Check suites.
 *
 * Suites run without fork (CK_FORK=no): MPI and fork do not mix. An MPI
 * suite calls mhub_test_mpi_main(), which initialises MPI, runs the suite
 * on every rank and exits non-zero on every rank if any rank failed. */
#ifndef MHUB_TESTUTIL_H
#define MHUB_TESTUTIL_H

#include <check.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/mhub.h"

/* Assert that an mhub call returned MHUB_OK, printing the error if not. */
#define CK_OK(expr)                                                            \
    do {                                                                       \
        mhub_status ck_ok_s_ = (expr);                                         \
        ck_assert_msg(ck_ok_s_ == MHUB_OK, "%s -> %s: %s", #expr,              \
                      mhub_status_name(ck_ok_s_), mhub_last_error());          \
    } while (0)

/* Assert that an mhub call failed with `code` and left a non-empty message. */
#define CK_FAILS(code, expr)                                                   \
    do {                                                                       \
        mhub_clear_error();                                                    \
        mhub_status ck_f_s_ = (expr);                                          \
        ck_assert_msg(ck_f_s_ == (code), "%s -> %s, expected %s (%s)", #expr,  \
                      mhub_status_name(ck_f_s_), mhub_status_name(code),       \
                      mhub_last_error());                                      \
        ck_assert_msg(mhub_last_error()[0] != '\0', "%s left no message", #expr); \
    } while (0)

/* Relative error |a - b| / max(|b|, floor), floor avoids dividing by ~0. */
static inline double mhub_test_relerr(double a, double b, double floor)
{
    double d = fabs(a - b), m = fabs(b);
    return d / (m > floor ? m : floor);
}

/* tests/data/<rel> into out[len]: under $top_srcdir when make check sets
 * it; run by hand (or from an out-of-tree build's directory), beside this
 * header, whose __FILE__ is the path the compiler was given. */
static inline void mhub_test_data_path(const char *rel, char *out, size_t len)
{
    const char *top = getenv("top_srcdir");
    if (top && *top) {
        snprintf(out, len, "%s/tests/data/%s", top, rel);
        return;
    }
    const char *slash = strrchr(__FILE__, '/');
    int dir = slash ? (int)(slash - __FILE__) + 1 : 0;
    snprintf(out, len, "%.*sdata/%s", dir, __FILE__, rel);
}

static inline int mhub_test_run_suite(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

static inline int mhub_test_remove_entry(const char *path, const struct stat *st, int flag,
                                         struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf dir (a test's scratch directory); 0 on success. Symbolic links
 * are removed, never followed. */
static inline int mhub_test_remove_tree(const char *dir)
{
    return nftw(dir, mhub_test_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* For single-process suites: main() { return mhub_test_main(make_suite()); } */
static inline int mhub_test_main(Suite *s)
{
    return mhub_test_run_suite(s) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

#endif
