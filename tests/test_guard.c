/* test_guard.c - the guard backend: the CPU backend's results, with its
 * memory closed to host code outside backend calls. */
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

static mhub_backend *guard_or_fail(void)
{
    mhub_backend *g = NULL;
    CK_OK(mhub_guard_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &g));
    ck_assert_str_eq(g->name, "guard");
    return g;
}

/* Ops run through the guard give the CPU's bits, and copies move data. */
START_TEST(test_same_results_as_cpu)
{
    mhub_backend *g = guard_or_fail(), *c = NULL;
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &c));
    enum { N = 4096 };
    float host[N], a[N], b[N];
    float *gx, *cx;
    CK_OK(g->ops->alloc(g, sizeof host, (void **)&gx));
    CK_OK(c->ops->alloc(c, sizeof host, (void **)&cx));
    CK_OK(g->ops->fill_normal(g, gx, N, 1, 2, 3, 0.0f, 1.0f));
    CK_OK(c->ops->fill_normal(c, cx, N, 1, 2, 3, 0.0f, 1.0f));
    CK_OK(g->ops->gelu_forward(g, gx, gx, N));
    CK_OK(c->ops->gelu_forward(c, cx, cx, N));
    CK_OK(g->ops->copy(g, a, gx, sizeof a, MHUB_COPY_DEVICE_TO_HOST));
    CK_OK(c->ops->copy(c, b, cx, sizeof b, MHUB_COPY_DEVICE_TO_HOST));
    ck_assert(memcmp(a, b, sizeof a) == 0);
    double sg = 0, sc = 0;
    CK_OK(g->ops->sum_squares(g, gx, N, &sg));
    CK_OK(c->ops->sum_squares(c, cx, N, &sc));
    ck_assert(sg == sc);
    size_t cur = 0, peak = 0;
    CK_OK(g->ops->memory_usage(g, &cur, &peak));
    ck_assert_uint_eq(cur, sizeof host);
    /* bad arguments are the CPU backend's errors */
    CK_FAILS(MHUB_ERR_INVALID_ARG, g->ops->gelu_forward(g, gx, gx, -1));
    g->ops->free(g, gx);
    CK_OK(g->ops->memory_usage(g, &cur, &peak));
    ck_assert_uint_eq(cur, 0);
    ck_assert_uint_eq(peak, sizeof host);
    c->ops->free(c, cx);
    mhub_backend_free(c);
    mhub_backend_free(g);
}
END_TEST

/* A host read of guard memory outside a backend call ends the process
 * with SIGSEGV and a message naming the address: the check can fail. */
START_TEST(test_host_access_faults)
{
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        dup2(fds[1], STDERR_FILENO);
        mhub_backend *g = NULL;
        if (mhub_guard_backend_create(NULL, &g) != MHUB_OK)
            _exit(3);
        volatile float *p = NULL;
        if (g->ops->alloc(g, 64, (void **)&p) != MHUB_OK)
            _exit(4);
        float v = p[3]; /* the bug the guard exists to catch */
        _exit(v == 0.0f ? 0 : 5);
    }
    close(fds[1]);
    char msg[512] = "";
    ssize_t n = read(fds[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
#ifdef __SANITIZE_ADDRESS__
    /* AddressSanitizer reports the fault (before or after the guard's
     * handler) and aborts */
    ck_assert_msg(WIFSIGNALED(status), "child status %d", status);
    ck_assert_msg(strstr(msg, "touched backend memory") || strstr(msg, "SEGV"), "message: %s",
                  msg);
#else
    ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV, "child status %d",
                  status);
    ck_assert_msg(strstr(msg, "touched backend memory") && strstr(msg, "offset 12"),
                  "message: %s", msg);
#endif
}
END_TEST

START_TEST(test_bad_arguments)
{
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_guard_backend_create(NULL, NULL));
    mhub_comm *out = NULL;
    mhub_backend *c = NULL;
    CK_OK(mhub_cpu_backend_create(NULL, &c));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_create_guard(NULL, c, &out));
    mhub_backend_free(c);
    setenv("MHUB_GUARD_ARENA_MB", "lots", 1);
    mhub_backend *g = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_guard_backend_create(NULL, &g));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "MHUB_GUARD_ARENA_MB"));
    unsetenv("MHUB_GUARD_ARENA_MB");
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("guard");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_same_results_as_cpu);
    tcase_add_test(tc, test_host_access_faults);
    tcase_add_test(tc, test_bad_arguments);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
