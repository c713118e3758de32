/* test_kernels.c - the CPU backend's memory ops, options and kernels.
 *
 * Forward kernels are compared with naive double-precision references.
 * Backward kernels are compared with central finite differences of a
 * double-precision copy of the forward written here (for GELU in GPT-2's
 * tanh form, not the kernel's sigmoid form), so a gradient is checked
 * against the function it claims to differentiate. Optimizer steps are
 * compared with hand-written double references over several steps. Sizes
 * are odd and above the kernels' vector block (16) so that both the
 * vectorized prefix and the remainder loop run. Every op is also given bad
 * arguments and must fail with MHUB_ERR_INVALID_ARG and a message. */
#include <dlfcn.h>
#include <float.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "backends/cpu/cpu_internal.h"

/* be, setup, teardown, buf_bytes, fbuf */
#include "testutil_buffers.h"

static float *fcopy(const float *x, int64_t n)
{
    float *y = fbuf(n);
    memcpy(y, x, (size_t)n * sizeof *x);
    return y;
}

/* scale * N(0, 1), deterministic per stream. */
static float *randn(int64_t n, uint64_t stream, float scale)
{
    float *x = fbuf(n);
    for (int64_t i = 0; i < n; i++)
        x[i] = scale * mhub_rng_normal(77, stream, (uint64_t)i);
    return x;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* |got - want| <= rel * max(|want|, floor), with a message naming the case.
 * Element loops test and abort only on failure: every passing ck_assert
 * also costs Check a write to its log. */
#define CK_CLOSE(got, want, rel, floor, what, i)                                         \
    do {                                                                                 \
        double ck_g_ = (double)(got), ck_w_ = (double)(want);                            \
        if (!(mhub_test_relerr(ck_g_, ck_w_, (floor)) <= (rel)))                         \
            ck_abort_msg("%s[%lld]: got %.9g, want %.9g (rel tol %g, floor %g)", (what), \
                         (long long)(i), ck_g_, ck_w_, (double)(rel), (double)(floor));  \
    } while (0)

#define CK_ERR_HAS(text)                                                                 \
    ck_assert_msg(strstr(mhub_last_error(), (text)) != NULL, "error '%s' lacks '%s'",    \
                  mhub_last_error(), (text))

/* Sizes that exercise the vector prefix and the remainder together. */
#define N_ODD 1003
#define COLS 37

/* Finite-difference step, in double. The double references are smooth and
 * O(1)..O(30) in size, so the central difference has truncation error
 * ~h^2 f''' ~ 1e-12 and rounding error ~1e-16 |f| / h < 1e-8. */
#define FD_H 1e-6
/* The f32 kernels carry ~1e-6 relative error, so comparing with the finite
 * differences to 1e-3 leaves three orders of margin either way while a
 * wrong term in a gradient formula is off by far more. The floor (as a
 * fraction of the gradient's natural scale) keeps gradients that are
 * nearly zero from demanding a relative accuracy neither side has. */
#define FD_REL 1e-3

/* ================================================================ memory */

START_TEST(test_alloc_aligned_zeroed)
{
    static const size_t sizes[] = {0, 1, 3, 63, 64, 65, 1000, (size_t)1 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = buf_bytes(sizes[i]);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq((uintptr_t)p % 64, 0);
        for (size_t j = 0; j < sizes[i]; j++)
            if (p[j] != 0)
                ck_abort_msg("alloc(%zu) byte %zu = %d", sizes[i], j, p[j]);
        memset(p, 0xAB, sizes[i]); /* all of it is writable */
    }
    /* Zero-byte allocations are distinct live pointers. */
    void *z1 = buf_bytes(0), *z2 = buf_bytes(0);
    ck_assert_ptr_ne(z1, z2);
    be->ops->free(be, NULL);
}
END_TEST

/* memory_usage counts the requested bytes of live blocks; the peak is the
 * high-water mark since reset_peak. Counted exactly: no padding, no
 * header, so an engine's footprint can be compared with its formula. */
START_TEST(test_memory_accounting)
{
    const mhub_backend_ops *o = be->ops;
    ck_assert(o->memory_usage && o->reset_peak);
    size_t cur0, peak0, cur, peak;
    CK_OK(o->memory_usage(be, &cur0, &peak0));
    ck_assert_uint_ge(peak0, cur0);
    void *a = NULL, *b = NULL, *z = NULL;
    CK_OK(o->alloc(be, 1000, &a));
    CK_OK(o->alloc(be, 24, &b));
    CK_OK(o->alloc(be, 0, &z));
    CK_OK(o->memory_usage(be, &cur, &peak));
    ck_assert_uint_eq(cur, cur0 + 1024);
    ck_assert_uint_ge(peak, cur);
    o->free(be, a);
    CK_OK(o->memory_usage(be, &cur, NULL));
    ck_assert_uint_eq(cur, cur0 + 24);
    /* the peak keeps the high-water mark until reset */
    CK_OK(o->memory_usage(be, NULL, &peak));
    ck_assert_uint_ge(peak, cur0 + 1024);
    CK_OK(o->reset_peak(be));
    CK_OK(o->memory_usage(be, &cur, &peak));
    ck_assert_uint_eq(peak, cur);
    CK_OK(o->alloc(be, 64, &a));
    o->free(be, a);
    CK_OK(o->memory_usage(be, &cur, &peak));
    ck_assert_uint_eq(cur, cur0 + 24);
    ck_assert_uint_eq(peak, cur0 + 24 + 64);
    o->free(be, b);
    o->free(be, z);
    o->free(be, NULL);
    CK_OK(o->memory_usage(be, &cur, NULL));
    ck_assert_uint_eq(cur, cur0);
    /* a failed allocation counts nothing */
    void *p = NULL;
    CK_FAILS(MHUB_ERR_NO_MEMORY, o->alloc(be, SIZE_MAX - 8, &p));
    CK_OK(o->memory_usage(be, &cur, NULL));
    ck_assert_uint_eq(cur, cur0);
    CK_FAILS(MHUB_ERR_INVALID_ARG, o->memory_usage(NULL, &cur, &peak));
    CK_FAILS(MHUB_ERR_INVALID_ARG, o->reset_peak(NULL));
}
END_TEST

START_TEST(test_memset_copy_synchronize)
{
    unsigned char *a = buf_bytes(100), *b = buf_bytes(100);
    for (int i = 0; i < 100; i++)
        a[i] = (unsigned char)(i + 1);
    CK_OK(be->ops->memset_zero(be, a + 10, 50));
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(a[i], (i >= 10 && i < 60) ? 0 : i + 1);
    CK_OK(be->ops->memset_zero(be, NULL, 0));

    const mhub_copy_kind kinds[] = {MHUB_COPY_HOST_TO_DEVICE, MHUB_COPY_DEVICE_TO_HOST,
                                    MHUB_COPY_DEVICE_TO_DEVICE};
    for (int k = 0; k < 3; k++) {
        memset(b, 0xEE, 100);
        CK_OK(be->ops->copy(be, b + 1, a, 98, kinds[k]));
        ck_assert_int_eq(b[0], 0xEE);
        ck_assert_int_eq(memcmp(b + 1, a, 98), 0);
        ck_assert_int_eq(b[99], 0xEE);
    }
    CK_OK(be->ops->copy(be, NULL, NULL, 0, MHUB_COPY_DEVICE_TO_DEVICE));
    CK_OK(be->ops->copy(be, a, a, 100, MHUB_COPY_DEVICE_TO_DEVICE));
    CK_OK(be->ops->synchronize(be));
}
END_TEST

START_TEST(test_memory_bad_args)
{
    void *p = (void *)1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->alloc(be, 16, NULL));
    CK_FAILS(MHUB_ERR_NO_MEMORY, be->ops->alloc(be, SIZE_MAX, &p));
    ck_assert_ptr_null(p);
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->memset_zero(be, NULL, 8));
    char *a = buf_bytes(64), *b = buf_bytes(64);
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->copy(be, NULL, a, 8, MHUB_COPY_HOST_TO_DEVICE));
    CK_ERR_HAS("dst");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->copy(be, b, NULL, 8, MHUB_COPY_HOST_TO_DEVICE));
    CK_ERR_HAS("src");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->copy(be, b, a, 8, (mhub_copy_kind)7));
    CK_ERR_HAS("kind");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->copy(be, a + 4, a, 8, MHUB_COPY_DEVICE_TO_DEVICE));
    CK_ERR_HAS("overlap");
}
END_TEST

/* ============================================================ the backend */

START_TEST(test_backend_identity)
{
    ck_assert_str_eq(be->name, "cpu");
    ck_assert_ptr_nonnull(be->ctx);
    const mhub_backend_ops *o = be->ops;
    ck_assert(o->alloc && o->free && o->memset_zero && o->copy && o->synchronize && o->gemm &&
              o->bias_add && o->bias_backward && o->gelu_forward && o->gelu_backward &&
              o->softmax_xent_forward && o->softmax_xent_backward && o->cast && o->scale &&
              o->axpy && o->sum_squares && o->fill_normal && o->fill_uniform && o->sgd_step &&
              o->adamw_step && o->destroy);
    ck_assert_int_ge(mhub_cpu_backend_threads(be), 1);
    ck_assert_int_eq(mhub_cpu_backend_threads(NULL), 0);
    mhub_backend other = {"other", NULL, NULL};
    ck_assert_int_eq(mhub_cpu_backend_threads(&other), 0);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_cpu_backend_create(NULL, NULL));
    mhub_backend_free(NULL);
}
END_TEST

/* Creates a backend with the options, returns its thread count and frees
 * it; -1 if creation failed (the error stays recorded). */
static int threads_for(int blas_threads, int local_ranks)
{
    mhub_cpu_options opts = {.blas_threads = blas_threads, .local_ranks = local_ranks};
    mhub_backend *b = (mhub_backend *)1;
    mhub_status s = mhub_cpu_backend_create(&opts, &b);
    if (s != MHUB_OK) {
        ck_assert_ptr_null(b);
        return -1;
    }
    int t = mhub_cpu_backend_threads(b);
    mhub_backend_free(b);
    return t;
}

START_TEST(test_thread_options)
{
    const char *saved = getenv("MHUB_BLAS_THREADS");
    char *saved_copy = saved ? strdup(saved) : NULL;
    int cores = (int)sysconf(_SC_NPROCESSORS_ONLN);

    unsetenv("MHUB_BLAS_THREADS");
    ck_assert_int_eq(threads_for(3, 0), 3);
    ck_assert_int_eq(openblas_get_num_threads(), 3);
    ck_assert_int_eq(threads_for(0, 4), 1);     /* ranks share the node */
    ck_assert_int_eq(threads_for(0, 1), cores); /* alone: every core */
    ck_assert_int_eq(threads_for(0, 0), cores);
    mhub_backend *b = NULL;
    CK_OK(mhub_cpu_backend_create(NULL, &b));
    ck_assert_int_eq(mhub_cpu_backend_threads(b), cores);
    mhub_backend_free(b);

    setenv("MHUB_BLAS_THREADS", "2", 1); /* overrides the automatic choice */
    ck_assert_int_eq(threads_for(0, 4), 2);
    ck_assert_int_eq(threads_for(0, 1), 2);
    ck_assert_int_eq(threads_for(5, 4), 5); /* but not an explicit count */
    setenv("MHUB_BLAS_THREADS", "", 1);     /* empty counts as unset */
    ck_assert_int_eq(threads_for(0, 4), 1);

    static const char *bad_env[] = {"abc", "0", "-2", "3x", "99999999999999", "1.5", "100000"};
    for (size_t i = 0; i < sizeof bad_env / sizeof bad_env[0]; i++) {
        setenv("MHUB_BLAS_THREADS", bad_env[i], 1);
        mhub_clear_error();
        ck_assert_msg(threads_for(0, 1) == -1, "MHUB_BLAS_THREADS=%s accepted", bad_env[i]);
        CK_ERR_HAS("MHUB_BLAS_THREADS");
        ck_assert_int_eq(threads_for(2, 1), 2); /* not consulted when explicit */
    }
    unsetenv("MHUB_BLAS_THREADS");

    mhub_clear_error();
    ck_assert_int_eq(threads_for(-1, 0), -1);
    CK_ERR_HAS("blas_threads = -1");
    ck_assert_int_eq(threads_for(100000, 0), -1);
    CK_ERR_HAS("blas_threads");
    ck_assert_int_eq(threads_for(0, -1), -1);
    CK_ERR_HAS("local_ranks = -1");

    if (saved_copy)
        setenv("MHUB_BLAS_THREADS", saved_copy, 1);
    free(saved_copy);
}
END_TEST

/* A backend with threads to share shortens the spin of OpenBLAS's idle
 * workers (cpu_backend.c, quiet_blas_workers) unless the user set
 * OPENBLAS_THREAD_TIMEOUT: OpenBLAS's own record of the setting then
 * reads 4, and the environment is as it was. Skipped, saying so, with a
 * BLAS that does not export that record. */
START_TEST(test_blas_workers_quieted)
{
    int (*timeout)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "openblas_thread_timeout");
    if (!timeout || getenv("OPENBLAS_THREAD_TIMEOUT")) {
        printf("test_blas_workers_quieted: skipped (%s)\n",
               timeout ? "OPENBLAS_THREAD_TIMEOUT is set" : "not OpenBLAS's pthread build");
        return;
    }
    mhub_backend *two;
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 2}, &two));
    ck_assert_int_eq(timeout(), 4);
    ck_assert_ptr_null(getenv("OPENBLAS_THREAD_TIMEOUT"));
    /* and threaded GEMMs still work after the workers' restart */
    enum { N = 96 };
    float *a = fbuf(N * N), *b = fbuf(N * N), *c = fbuf(N * N);
    for (int i = 0; i < N * N; i++) {
        a[i] = (float)(i % 7) - 3.0f;
        b[i] = (float)(i % 5) - 2.0f;
    }
    CK_OK(two->ops->gemm(two, false, false, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N));
    for (int i = 0; i < N; i += 17)
        for (int j = 0; j < N; j += 13) {
            double want = 0;
            for (int k = 0; k < N; k++)
                want += (double)a[i * N + k] * b[k * N + j];
            ck_assert_msg(c[i * N + j] == (float)want, "c[%d][%d] = %g, want %g", i, j,
                          (double)c[i * N + j], want);
        }
    mhub_backend_free(two);
}
END_TEST

/* ================================================================== bias */

START_TEST(test_bias_add)
{
    const int64_t rows = 5, cols = COLS;
    float *x = randn(rows * cols, 1, 1.0f), *bias = randn(cols, 2, 1.0f);
    float *out = fcopy(x, rows * cols);
    CK_OK(be->ops->bias_add(be, out, bias, rows, cols));
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            double want = (double)x[r * cols + c] + (double)bias[c];
            CK_CLOSE(out[r * cols + c], want, FLT_EPSILON, 1e-30, "bias_add", r * cols + c);
        }
    CK_OK(be->ops->bias_add(be, NULL, NULL, 0, cols));
    CK_OK(be->ops->bias_add(be, NULL, NULL, rows, 0));
}
END_TEST

/* Objective J(bias) = sum dout * (x + bias), in double. */
static double bias_objective(const float *x, const double *bias, const float *dout,
                             int64_t rows, int64_t cols)
{
    double j = 0.0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            j += (double)dout[r * cols + c] * ((double)x[r * cols + c] + bias[c]);
    return j;
}

START_TEST(test_bias_backward_fd_and_accumulation)
{
    const int64_t rows = 6, cols = COLS;
    float *x = randn(rows * cols, 3, 1.0f), *bias = randn(cols, 4, 1.0f);
    float *dout = randn(rows * cols, 5, 1.0f);
    float *g0 = randn(cols, 6, 1.0f); /* a gradient already accumulated */
    float *dbias = fcopy(g0, cols);
    CK_OK(be->ops->bias_backward(be, dbias, dout, rows, cols));

    double bd[COLS];
    for (int64_t c = 0; c < cols; c++)
        bd[c] = bias[c];
    for (int64_t c = 0; c < cols; c++) {
        double keep = bd[c];
        bd[c] = keep + FD_H;
        double jp = bias_objective(x, bd, dout, rows, cols);
        bd[c] = keep - FD_H;
        double jm = bias_objective(x, bd, dout, rows, cols);
        bd[c] = keep;
        double fd = (jp - jm) / (2.0 * FD_H);
        /* The kernel's result is g0 + gradient: it accumulates. */
        CK_CLOSE(dbias[c], (double)g0[c] + fd, FD_REL, 1e-3, "bias_backward", c);
    }
    /* A second call adds the same gradient again. */
    float *once = fcopy(dbias, cols);
    CK_OK(be->ops->bias_backward(be, dbias, dout, rows, cols));
    for (int64_t c = 0; c < cols; c++)
        CK_CLOSE(dbias[c], 2.0 * (double)once[c] - (double)g0[c], 1e-5, 1e-3,
                 "bias_backward twice", c);
    CK_OK(be->ops->bias_backward(be, NULL, NULL, 0, 0));
}
END_TEST

/* =================================================================== exp */

/* |got - e^x| in units of the float spacing at e^x (2^-149 below FLT_MIN),
 * e^x in double. */
static double exp_ulps(float x, float got)
{
    double want = exp((double)x);
    int e;
    frexp(want, &e);
    double ulp = want < FLT_MIN ? ldexp(1.0, -149) : ldexp(1.0, e - 24);
    return fabs((double)got - want) / ulp;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* The kernels' exp (GELU, softmax) is measured at <= 0.99 ulp over every
 * float; 2 ulp is the promise checked here, on a dense grid and at random
 * points, including random bit patterns (so tiny |x| too). */
START_TEST(test_expf_accuracy)
{
    double worst = 0.0;
    float worst_x = 0.0f;
#define EXP_TRACK(x)                                   \
    do {                                               \
        float x_ = (x);                                \
        double u_ = exp_ulps(x_, mhub_cpu_expf(x_));   \
        if (!(u_ <= worst)) {                          \
            worst = u_;                                \
            worst_x = x_;                              \
        }                                              \
    } while (0)
    for (int64_t k = -87 * 1024; k <= 88 * 1024; k++)
        EXP_TRACK((float)ldexp((double)k, -10)); /* exact in float */
    for (uint64_t i = 0; i < 200000; i++)
        EXP_TRACK(-87.0f + 175.0f * mhub_rng_uniform(5, 1, i));
    for (uint64_t i = 0; i < 200000; i++) {
        uint32_t r[4];
        mhub_rng_block(5, 2, i, r);
        float x = f32_from_bits(r[0]);
        if (x >= -87.0f && x <= 88.0f)
            EXP_TRACK(x);
    }
#undef EXP_TRACK
    ck_assert_msg(worst <= 2.0, "mhub_cpu_expf: %.3f ulp at x = %a", worst, (double)worst_x);

    /* Results below FLT_MIN: gradual underflow, within a unit of 2^-149. */
    for (int64_t k = -104 * 256; k < -87 * 256; k++) {
        float x = (float)ldexp((double)k, -8);
        double u = exp_ulps(x, mhub_cpu_expf(x));
        ck_assert_msg(u <= 1.0, "mhub_cpu_expf(%a): %.3f units of 2^-149", (double)x, u);
    }
}
END_TEST

START_TEST(test_expf_special_values)
{
    ck_assert(mhub_cpu_expf(0.0f) == 1.0f);
    ck_assert(mhub_cpu_expf(-0.0f) == 1.0f);
    ck_assert(mhub_cpu_expf(1e-30f) == 1.0f);
    ck_assert(mhub_cpu_expf(-1e-30f) == 1.0f);
    ck_assert(mhub_cpu_expf(FLT_TRUE_MIN) == 1.0f);
    ck_assert(isnan(mhub_cpu_expf(NAN)));
    ck_assert(isnan(mhub_cpu_expf(-NAN)));
    ck_assert(isnan(mhub_cpu_expf(f32_from_bits(0x7f800001u)))); /* signaling, payload 1 */
    ck_assert(isnan(mhub_cpu_expf(f32_from_bits(0xffbfffffu))));
    float inf = mhub_cpu_expf(INFINITY);
    ck_assert(isinf(inf) && inf > 0.0f);
    float zero = mhub_cpu_expf(-INFINITY);
    ck_assert(zero == 0.0f && !signbit(zero));
    /* e^89 > FLT_MAX; e^-104 < 2^-150, half the smallest subnormal. */
    const float huge[] = {89.0f, 100.0f, 104.0f, 105.0f, 1e4f, 1e30f, FLT_MAX};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        float hi = mhub_cpu_expf(huge[i]);
        ck_assert_msg(isinf(hi) && hi > 0.0f, "exp(%g) = %g", (double)huge[i], (double)hi);
        if (huge[i] < 104.0f)
            continue;
        float lo = mhub_cpu_expf(-huge[i]);
        ck_assert_msg(lo == 0.0f && !signbit(lo), "exp(%g) = %g", -(double)huge[i], (double)lo);
    }
    /* Overflow to +Inf and underflow to +0 start exactly where libm's expf
     * has them: checked over 4096 floats on each side of both edges. */
    const float edges[] = {88.72283935546875f, -103.97207641601562f};
    for (size_t e = 0; e < 2; e++) {
        uint32_t b = f32_bits(edges[e]);
        for (uint32_t d = 0; d < 8192; d++) {
            float x = f32_from_bits(b - 4096u + d);
            float got = mhub_cpu_expf(x), want = expf(x);
            ck_assert_msg(isinf(got) == isinf(want) && (got == 0.0f) == (want == 0.0f),
                          "exp(%a): %a, expf gives %a", (double)x, (double)got, (double)want);
        }
    }
    /* The largest and smallest normal results are in range. */
    ck_assert(isfinite(mhub_cpu_expf(88.72f)) && mhub_cpu_expf(88.72f) > 3.3e38f);
    ck_assert(mhub_cpu_expf(-87.33f) >= FLT_MIN);
}
END_TEST

/* ================================================================== GELU */

/* GPT-2's formula, in double. */
static double gelu_ref(double x)
{
    const double k = sqrt(2.0 / M_PI);
    return 0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x)));
}

/* N_ODD inputs: edge values first, then 3 * N(0, 1). */
static float *gelu_inputs(void)
{
    static const float edges[] = {0.0f, -0.0f, 1e-3f, -1e-3f, 0.5f, -0.5f, 1.0f, -1.0f,
                                  3.0f, -3.0f, 5.0f, -5.0f, 9.0f, -9.0f, 12.0f, -12.0f,
                                  20.0f, -20.0f, 30.0f, -30.0f};
    float *x = randn(N_ODD, 10, 3.0f);
    memcpy(x, edges, sizeof edges);
    return x;
}

START_TEST(test_gelu_forward)
{
    float *in = gelu_inputs();
    float *out = fbuf(N_ODD);
    CK_OK(be->ops->gelu_forward(be, out, in, N_ODD));
    /* The kernel's relative error is a few times |2u| ulps (<= 5e-6 for
     * |x| <= 10); values below 1e-6 in size are compared absolutely. */
    for (int64_t i = 0; i < N_ODD; i++)
        CK_CLOSE(out[i], gelu_ref(in[i]), 2e-5, 1e-6, "gelu_forward", i);
    ck_assert_float_eq(out[0], 0.0f);
    ck_assert_float_eq(out[16], 20.0f);
    ck_assert_float_eq(out[17], -0.0f);

    float *inplace = fcopy(in, N_ODD);
    CK_OK(be->ops->gelu_forward(be, inplace, inplace, N_ODD));
    ck_assert_int_eq(memcmp(inplace, out, N_ODD * sizeof(float)), 0);
}
END_TEST

START_TEST(test_gelu_backward_fd)
{
    float *in = gelu_inputs();
    float *dout = randn(N_ODD, 11, 1.0f);
    float *din = fbuf(N_ODD);
    CK_OK(be->ops->gelu_backward(be, din, in, dout, N_ODD));
    for (int64_t i = 0; i < N_ODD; i++) {
        double x = in[i];
        double fd = (gelu_ref(x + FD_H) - gelu_ref(x - FD_H)) / (2.0 * FD_H);
        CK_CLOSE(din[i], (double)dout[i] * fd, FD_REL, 1e-5, "gelu_backward", i);
    }
    /* din may alias dout. */
    float *alias = fcopy(dout, N_ODD);
    CK_OK(be->ops->gelu_backward(be, alias, in, alias, N_ODD));
    ck_assert_int_eq(memcmp(alias, din, N_ODD * sizeof(float)), 0);
}
END_TEST

/* An element's result must not depend on whether it falls in a kernel's
 * vectorized prefix or in its scalar remainder (the deterministic mode's
 * equal digests at any rank count rely on this): each element again, alone. */
START_TEST(test_gelu_same_bits_vector_or_scalar)
{
    float *in = gelu_inputs();
    float *dout = randn(N_ODD, 12, 1.0f);
    float *out = fbuf(N_ODD), *din = fbuf(N_ODD);
    CK_OK(be->ops->gelu_forward(be, out, in, N_ODD));
    CK_OK(be->ops->gelu_backward(be, din, in, dout, N_ODD));
    for (int64_t i = 0; i < N_ODD; i++) {
        float one, grad;
        CK_OK(be->ops->gelu_forward(be, &one, &in[i], 1));
        CK_OK(be->ops->gelu_backward(be, &grad, &in[i], &dout[i], 1));
        ck_assert_msg(f32_bits(one) == f32_bits(out[i]) && f32_bits(grad) == f32_bits(din[i]),
                      "gelu at %lld (x = %a) differs alone", (long long)i, (double)in[i]);
    }
}
END_TEST

/* Far out, the sigmoid reaches exactly 0 and 1 (u^3 even overflows to
 * +-Inf); NaN stays NaN. */
START_TEST(test_gelu_limits)
{
    enum { N = 6 };
    const float x[N] = {1e30f, -1e30f, 50.0f, -50.0f, NAN, 0.0f};
    float out[N], din[N];
    const float ones[N] = {1, 1, 1, 1, 1, 1};
    CK_OK(be->ops->gelu_forward(be, out, x, N));
    CK_OK(be->ops->gelu_backward(be, din, x, ones, N));
    ck_assert(out[0] == 1e30f && out[2] == 50.0f);
    ck_assert(out[1] == 0.0f && signbit(out[1]) && out[3] == 0.0f && signbit(out[3]));
    ck_assert(isnan(out[4]) && isnan(din[4]));
    ck_assert(din[2] == 1.0f && din[3] == 0.0f);
    ck_assert(out[5] == 0.0f && din[5] == 0.5f);
}
END_TEST

/* ===================================================== softmax + x-entropy */

/* -log softmax(x)[t] of one row, in double. */
static double xent_ref(const float *x, int64_t classes, int32_t t)
{
    double mx = x[0];
    for (int64_t c = 1; c < classes; c++)
        mx = fmax(mx, (double)x[c]);
    double sum = 0.0;
    for (int64_t c = 0; c < classes; c++)
        sum += exp((double)x[c] - mx);
    return log(sum) + mx - (double)x[t];
}

/* The same with one logit moved by +-h, for the finite differences. */
static double xent_ref_moved(const float *x, int64_t classes, int32_t t, int64_t at, double dx)
{
    double xs[COLS];
    for (int64_t c = 0; c < classes; c++)
        xs[c] = (double)x[c] + (c == at ? dx : 0.0);
    double mx = xs[0];
    for (int64_t c = 1; c < classes; c++)
        mx = fmax(mx, xs[c]);
    double sum = 0.0;
    for (int64_t c = 0; c < classes; c++)
        sum += exp(xs[c] - mx);
    return log(sum) + mx - xs[t];
}

static int32_t *random_targets(int64_t rows, int64_t classes, uint64_t stream)
{
    int32_t *t = buf_bytes((size_t)rows * sizeof *t);
    for (int64_t r = 0; r < rows; r++)
        t[r] = (int32_t)mhub_rng_below(77, stream, (uint64_t)r, (uint32_t)classes);
    return t;
}

static void check_softmax_rows(const float *probs, const float *losses, const float *logits,
                               const int32_t *targets, int64_t rows, int64_t classes)
{
    for (int64_t r = 0; r < rows; r++) {
        const float *x = logits + r * classes;
        double loss = xent_ref(x, classes, targets[r]);
        /* Loss: ~1 ulp of its terms; ~0 losses compared absolutely. */
        CK_CLOSE(losses[r], loss, 1e-5, 0.1, "loss", r);
        double lse = loss + (double)x[targets[r]];
        for (int64_t c = 0; c < classes; c++)
            CK_CLOSE(probs[r * classes + c], exp((double)x[c] - lse), 1e-5, 1e-30, "probs",
                     r * classes + c);
    }
}

START_TEST(test_softmax_xent_forward)
{
    const int64_t rows = 6, classes = COLS;
    float *logits = randn(rows * classes, 20, 3.0f);
    int32_t *targets = random_targets(rows, classes, 21);
    float *probs = fbuf(rows * classes), *losses = fbuf(rows);
    CK_OK(be->ops->softmax_xent_forward(be, probs, losses, logits, targets, rows, classes));
    check_softmax_rows(probs, losses, logits, targets, rows, classes);

    /* In place: probs over the logits. */
    float *inplace = fcopy(logits, rows * classes), *losses2 = fbuf(rows);
    CK_OK(be->ops->softmax_xent_forward(be, inplace, losses2, inplace, targets, rows, classes));
    ck_assert_int_eq(memcmp(inplace, probs, (size_t)(rows * classes) * sizeof(float)), 0);
    ck_assert_int_eq(memcmp(losses2, losses, (size_t)rows * sizeof(float)), 0);
    CK_OK(be->ops->softmax_xent_forward(be, NULL, NULL, NULL, NULL, 0, classes));
}
END_TEST

START_TEST(test_softmax_xent_large_logits)
{
    /* exp(1e4) overflows any float; the max subtraction must prevent it.
     * Row 0 targets the winner, row 1 a logit 2e4 below it (its
     * probability underflows to 0, yet the loss is finite), row 2 is flat. */
    enum { ROWS = 3, CLASSES = 5 };
    float *logits = fbuf(ROWS * CLASSES);
    const float rows_init[ROWS][CLASSES] = {{1e4f, 1e4f - 1.0f, -1e4f, 0.0f, 5e3f},
                                            {1e4f, 1e4f - 1.0f, -1e4f, 0.0f, 5e3f},
                                            {7.0f, 7.0f, 7.0f, 7.0f, 7.0f}};
    memcpy(logits, rows_init, sizeof rows_init);
    int32_t *targets = buf_bytes(ROWS * sizeof(int32_t));
    targets[0] = 0;
    targets[1] = 2;
    targets[2] = 3;
    float *probs = fbuf(ROWS * CLASSES), *losses = fbuf(ROWS);
    CK_OK(be->ops->softmax_xent_forward(be, probs, losses, logits, targets, ROWS, CLASSES));
    for (int r = 0; r < ROWS; r++) {
        double sum = 0.0;
        for (int c = 0; c < CLASSES; c++) {
            ck_assert(isfinite(probs[r * CLASSES + c]));
            sum += probs[r * CLASSES + c];
        }
        CK_CLOSE(sum, 1.0, 1e-6, 1.0, "row sum", r);
        ck_assert(isfinite(losses[r]));
    }
    check_softmax_rows(probs, losses, logits, targets, ROWS, CLASSES);
    CK_CLOSE(losses[0], log1p(exp(-1.0)), 1e-6, 1.0, "loss", 0);
    CK_CLOSE(losses[1], 2e4 + log1p(exp(-1.0)), 1e-6, 1.0, "loss", 1);
    CK_CLOSE(losses[2], log(5.0), 1e-6, 1.0, "loss", 2);
    CK_CLOSE(probs[2 * CLASSES + 1], 0.2, 1e-6, 1.0, "flat probs", 1);
}
END_TEST

/* Many short rows (the kernel handles rows in groups of ~4096 elements,
 * with one flat exp loop per group) and a few rows longer than a group:
 * against the reference, and bit for bit the same as one row at a time. */
START_TEST(test_softmax_xent_row_shapes)
{
    const int64_t shapes[][2] = {{1000, 10}, {3, 5000}, {40, 1}};
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        int64_t rows = shapes[k][0], classes = shapes[k][1];
        float *logits = randn(rows * classes, 40 + k, 4.0f);
        int32_t *targets = random_targets(rows, classes, 50 + k);
        float *probs = fbuf(rows * classes), *losses = fbuf(rows);
        CK_OK(be->ops->softmax_xent_forward(be, probs, losses, logits, targets, rows, classes));
        check_softmax_rows(probs, losses, logits, targets, rows, classes);
        float *row = fbuf(classes);
        for (int64_t r = 0; r < rows; r++) {
            float loss;
            CK_OK(be->ops->softmax_xent_forward(be, row, &loss, logits + r * classes,
                                                targets + r, 1, classes));
            ck_assert_msg(memcmp(row, probs + r * classes, (size_t)classes * sizeof(float)) == 0 &&
                              f32_bits(loss) == f32_bits(losses[r]),
                          "%lld x %lld: row %lld differs alone", (long long)rows,
                          (long long)classes, (long long)r);
        }
    }
}
END_TEST

static void check_softmax_backward(float dloss)
{
    const int64_t rows = 4, classes = COLS;
    float *logits = randn(rows * classes, 30, 2.0f);
    int32_t *targets = random_targets(rows, classes, 31);
    float *probs = fbuf(rows * classes), *losses = fbuf(rows), *dlogits = fbuf(rows * classes);
    CK_OK(be->ops->softmax_xent_forward(be, probs, losses, logits, targets, rows, classes));
    CK_OK(be->ops->softmax_xent_backward(be, dlogits, probs, targets, rows, classes, dloss));
    /* Objective: dloss * sum of the row losses; a logit only moves its row. */
    for (int64_t r = 0; r < rows; r++) {
        const float *x = logits + r * classes;
        for (int64_t c = 0; c < classes; c++) {
            double jp = xent_ref_moved(x, classes, targets[r], c, FD_H);
            double jm = xent_ref_moved(x, classes, targets[r], c, -FD_H);
            double fd = (double)dloss * (jp - jm) / (2.0 * FD_H);
            CK_CLOSE(dlogits[r * classes + c], fd, FD_REL, 1e-5 * fabs((double)dloss),
                     "softmax_xent_backward", r * classes + c);
        }
    }
    /* dlogits may overwrite probs. */
    float *inplace = fcopy(probs, rows * classes);
    CK_OK(be->ops->softmax_xent_backward(be, inplace, inplace, targets, rows, classes, dloss));
    ck_assert_int_eq(memcmp(inplace, dlogits, (size_t)(rows * classes) * sizeof(float)), 0);
}

START_TEST(test_softmax_xent_backward_fd)
{
    check_softmax_backward(0.25f); /* a mean over 4 rows */
    check_softmax_backward(-2.5f);
    CK_OK(be->ops->softmax_xent_backward(be, NULL, NULL, NULL, 0, COLS, 1.0f));
}
END_TEST

START_TEST(test_softmax_xent_bad_targets)
{
    const int64_t rows = 3, classes = COLS;
    float *logits = randn(rows * classes, 40, 1.0f);
    float *probs = fbuf(rows * classes), *losses = fbuf(rows);
    int32_t *targets = buf_bytes((size_t)rows * sizeof(int32_t));
    targets[0] = 0;
    targets[1] = (int32_t)classes;
    targets[2] = 1;
    losses[0] = 123.0f;
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->softmax_xent_forward(be, probs, losses, logits, targets, rows, classes));
    CK_ERR_HAS("softmax_xent_forward");
    CK_ERR_HAS("targets[1] = 37 is outside [0, 37)");
    ck_assert_float_eq(losses[0], 123.0f); /* nothing written */
    ck_assert_float_eq(probs[0], 0.0f);
    targets[1] = -1;
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->softmax_xent_backward(be, probs, probs, targets, rows, classes, 1.0f));
    CK_ERR_HAS("targets[1] = -1");
    targets[1] = 0;
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->softmax_xent_forward(be, probs, losses, logits, targets, rows, 0));
}
END_TEST

/* ================================================================== cast */

static const float cast_values[] = {
    0.0f, -0.0f, 1.0f, -2.5f, 3.14159265f, 65504.0f, 65520.0f, -65520.0f, 1e-7f, 0x1p-25f,
    0x1p-24f, 1e30f, -1e-30f, 1.0f + 0x1p-8f, 1.0f + 0x1p-11f, 1.0f + 0x3p-8f, INFINITY,
    -INFINITY, NAN, -NAN, 0.1f, 100.0f, -7.0f, 0x1p-14f,
};
#define N_CAST_VALUES ((int64_t)(sizeof cast_values / sizeof cast_values[0]))
#define N_CAST 41 /* > 16, odd: values repeat scaled by powers of two */

static float cast_value(int64_t i)
{
    return ldexpf(cast_values[i % N_CAST_VALUES], (int)(i / N_CAST_VALUES));
}

/* Element i of a buffer of dtype dt, widened to f32. */
static float load_as_f32(const void *p, mhub_dtype dt, int64_t i)
{
    switch (dt) {
    case MHUB_F32: return ((const float *)p)[i];
    case MHUB_BF16: return mhub_bf16_to_f32(((const uint16_t *)p)[i]);
    case MHUB_F16: return mhub_f16_to_f32(((const uint16_t *)p)[i]);
    }
    return NAN;
}

/* Bit pattern of an f32 rounded to dtype dt (f32: its own bits). */
static uint32_t narrow_bits(float f, mhub_dtype dt)
{
    switch (dt) {
    case MHUB_F32: return f32_bits(f);
    case MHUB_BF16: return mhub_f32_to_bf16(f);
    case MHUB_F16: return mhub_f32_to_f16(f);
    }
    return 0;
}

static uint32_t raw_bits(const void *p, mhub_dtype dt, int64_t i)
{
    return dt == MHUB_F32 ? ((const uint32_t *)p)[i] : ((const uint16_t *)p)[i];
}

static void *cast_source(mhub_dtype dt)
{
    void *src = buf_bytes((size_t)N_CAST * mhub_dtype_size(dt));
    for (int64_t i = 0; i < N_CAST; i++) {
        uint32_t b = narrow_bits(cast_value(i), dt);
        if (dt == MHUB_F32)
            ((uint32_t *)src)[i] = b;
        else
            ((uint16_t *)src)[i] = (uint16_t)b;
    }
    return src;
}

START_TEST(test_cast_all_pairs)
{
    for (int s = 0; s < MHUB_DTYPE_COUNT; s++) {
        for (int d = 0; d < MHUB_DTYPE_COUNT; d++) {
            mhub_dtype sd = (mhub_dtype)s, dd = (mhub_dtype)d;
            void *src = cast_source(sd);
            void *dst = buf_bytes((size_t)N_CAST * mhub_dtype_size(dd));
            CK_OK(be->ops->cast(be, dst, dd, src, sd, N_CAST));
            for (int64_t i = 0; i < N_CAST; i++) {
                float wide = load_as_f32(src, sd, i);
                uint32_t got = raw_bits(dst, dd, i);
                if (isnan(wide)) {
                    float back = load_as_f32(dst, dd, i);
                    ck_assert_msg(isnan(back) && !signbit(back) == !signbit(wide),
                                  "%s -> %s: NaN [%lld] became 0x%x", mhub_dtype_name(sd),
                                  mhub_dtype_name(dd), (long long)i, (unsigned)got);
                    continue;
                }
                /* Widening is exact, so one rounding from the f32 value. */
                uint32_t want = s == d ? raw_bits(src, sd, i) : narrow_bits(wide, dd);
                ck_assert_msg(got == want, "%s -> %s [%lld] (%g): got 0x%x, want 0x%x",
                              mhub_dtype_name(sd), mhub_dtype_name(dd), (long long)i,
                              (double)wide, (unsigned)got, (unsigned)want);
            }
        }
    }
}
END_TEST

START_TEST(test_cast_spot_values)
{
    float *f = fbuf(4);
    uint16_t *h = buf_bytes(4 * sizeof(uint16_t)), *g = buf_bytes(4 * sizeof(uint16_t));
    f[0] = 1.0f;
    f[1] = 65520.0f;
    f[2] = -INFINITY;
    f[3] = NAN;
    CK_OK(be->ops->cast(be, h, MHUB_F16, f, MHUB_F32, 4));
    ck_assert_uint_eq(h[0], 0x3C00);
    ck_assert_uint_eq(h[1], 0x7C00); /* overflows to Inf */
    ck_assert_uint_eq(h[2], 0xFC00);
    ck_assert_uint_eq(h[3] & 0x7E00u, 0x7E00u); /* quiet NaN */
    CK_OK(be->ops->cast(be, h, MHUB_BF16, f, MHUB_F32, 4));
    ck_assert_uint_eq(h[0], 0x3F80);
    ck_assert_uint_eq(h[1], 0x4780);
    ck_assert_uint_eq(h[2], 0xFF80);
    ck_assert_uint_eq(h[3] & 0x7FC0u, 0x7FC0u);

    h[0] = 0x3C01; /* f16 1 + 2^-10: below bf16's precision, rounds to 1 */
    h[1] = 0x7BFF; /* f16 max 65504 -> bf16 65536 (RNE at 8 bits) */
    h[2] = 0x0001; /* f16 2^-24 is a normal bf16 */
    h[3] = 0x7E00;
    CK_OK(be->ops->cast(be, g, MHUB_BF16, h, MHUB_F16, 4));
    ck_assert_uint_eq(g[0], 0x3F80);
    ck_assert_uint_eq(g[1], 0x4780);
    ck_assert_uint_eq(g[2], 0x3380);
    ck_assert_uint_eq(g[3] & 0x7FC0u, 0x7FC0u);

    h[0] = 0x3F81; /* bf16 1 + 2^-7: exact in f16 */
    h[1] = 0x4780; /* bf16 65536: beyond f16 -> Inf */
    h[2] = 0x4049; /* bf16 3.140625 */
    h[3] = 0xFF80; /* -Inf */
    CK_OK(be->ops->cast(be, g, MHUB_F16, h, MHUB_BF16, 4));
    ck_assert_uint_eq(g[0], 0x3C08);
    ck_assert_uint_eq(g[1], 0x7C00);
    ck_assert_uint_eq(g[2], 0x4248);
    ck_assert_uint_eq(g[3], 0xFC00);
    CK_OK(be->ops->cast(be, f, MHUB_F32, h, MHUB_BF16, 4));
    ck_assert_float_eq(f[2], 3.140625f);
    ck_assert(isinf(f[3]) && f[3] < 0);

    /* Same dtype: a bit-exact copy, NaN payload included; in place is a no-op. */
    uint32_t *u = buf_bytes(2 * sizeof(uint32_t)), *v = buf_bytes(2 * sizeof(uint32_t));
    u[0] = 0x7FC01234u;
    u[1] = 0x00000001u;
    CK_OK(be->ops->cast(be, v, MHUB_F32, u, MHUB_F32, 2));
    ck_assert_uint_eq(v[0], 0x7FC01234u);
    ck_assert_uint_eq(v[1], 0x00000001u);
    CK_OK(be->ops->cast(be, v, MHUB_F32, v, MHUB_F32, 2));
    ck_assert_uint_eq(v[0], 0x7FC01234u);
    CK_OK(be->ops->cast(be, NULL, MHUB_F16, NULL, MHUB_F32, 0));
}
END_TEST

START_TEST(test_cast_bad_args)
{
    float *f = fbuf(8);
    uint16_t *h = buf_bytes(8 * sizeof(uint16_t));
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->cast(be, h, (mhub_dtype)3, f, MHUB_F32, 8));
    CK_ERR_HAS("dst_dtype = 3");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->cast(be, h, MHUB_F16, f, (mhub_dtype)-1, 8));
    CK_ERR_HAS("src_dtype = -1");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->cast(be, NULL, MHUB_F16, f, MHUB_F32, 8));
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->cast(be, h, MHUB_F16, NULL, MHUB_F32, 8));
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->cast(be, h, MHUB_F16, f, MHUB_F32, -1));
    CK_ERR_HAS("n = -1");
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->cast(be, h, MHUB_F16, (const char *)f + 2, MHUB_F32, 4));
    CK_ERR_HAS("aligned");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->cast(be, f, MHUB_F16, f, MHUB_F32, 8));
    CK_ERR_HAS("overlap");
}
END_TEST

/* ============================================= scale, axpy, sum_squares */

START_TEST(test_scale_axpy)
{
    static const int64_t sizes[] = {0, 5, 16, N_ODD};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        int64_t n = sizes[k];
        float *x = randn(n + 1, 50, 1.0f), *y0 = randn(n + 1, 51, 1.0f);
        float *s = fcopy(x, n + 1);
        CK_OK(be->ops->scale(be, s, n, -0.375f));
        /* One rounding of an exact double product: exactly the f32 product. */
        for (int64_t i = 0; i < n; i++)
            ck_assert_msg(s[i] == (float)((double)x[i] * -0.375), "scale[%lld]", (long long)i);
        ck_assert_float_eq(s[n], x[n]); /* one past the end is untouched */

        float *y = fcopy(y0, n + 1);
        CK_OK(be->ops->axpy(be, y, x, n, 1.5f));
        /* Two roundings (product and sum). */
        for (int64_t i = 0; i < n; i++) {
            double want = (double)y0[i] + 1.5 * (double)x[i];
            double tol = 2.0 * FLT_EPSILON * (fabs((double)y0[i]) + fabs(1.5 * x[i]));
            ck_assert_msg(fabs((double)y[i] - want) <= tol, "axpy[%lld]", (long long)i);
        }
        ck_assert_float_eq(y[n], y0[n]);
    }
}
END_TEST

START_TEST(test_sum_squares)
{
    float *x = randn(N_ODD, 60, 2.0f);
    double got = -1.0, want = 0.0;
    for (int64_t i = 0; i < N_ODD; i++)
        want += (double)x[i] * (double)x[i];
    CK_OK(be->ops->sum_squares(be, x, N_ODD, &got));
    /* Exact products, double sums in another order: ~n ulps of double. */
    CK_CLOSE(got, want, 1e-12, 1e-30, "sum_squares", 0);
    CK_OK(be->ops->sum_squares(be, x, 5, &got));
    want = 0.0;
    for (int64_t i = 0; i < 5; i++)
        want += (double)x[i] * (double)x[i];
    CK_CLOSE(got, want, 1e-12, 1e-30, "sum_squares", 5);
    CK_OK(be->ops->sum_squares(be, NULL, 0, &got));
    ck_assert(got == 0.0);

    /* Large floats do not overflow in double. */
    x[3] = 3e38f;
    CK_OK(be->ops->sum_squares(be, x, N_ODD, &got));
    ck_assert(isfinite(got) && got > 8.9e76);
    x[700] = INFINITY;
    CK_OK(be->ops->sum_squares(be, x, N_ODD, &got));
    ck_assert(isinf(got));
    x[1001] = NAN; /* in the remainder loop */
    CK_OK(be->ops->sum_squares(be, x, N_ODD, &got));
    ck_assert(isnan(got));
}
END_TEST

/* ================================================================= fills */

START_TEST(test_fills_match_rng)
{
    const int64_t n = 100;
    float *got = fbuf(n), *want = fbuf(n), *split = fbuf(n);
    CK_OK(be->ops->fill_normal(be, got, n, 42, 7, 1000, 0.5f, 2.0f));
    mhub_rng_fill_normal(want, n, 42, 7, 1000, 0.5f, 2.0f);
    ck_assert_int_eq(memcmp(got, want, (size_t)n * sizeof(float)), 0);
    /* Split at an arbitrary point: the same values. */
    CK_OK(be->ops->fill_normal(be, split, 37, 42, 7, 1000, 0.5f, 2.0f));
    CK_OK(be->ops->fill_normal(be, split + 37, n - 37, 42, 7, 1037, 0.5f, 2.0f));
    ck_assert_int_eq(memcmp(split, want, (size_t)n * sizeof(float)), 0);

    CK_OK(be->ops->fill_uniform(be, got, n, 42, 8, 5, -0.25f, 0.75f));
    mhub_rng_fill_uniform(want, n, 42, 8, 5, -0.25f, 0.75f);
    ck_assert_int_eq(memcmp(got, want, (size_t)n * sizeof(float)), 0);
    CK_OK(be->ops->fill_uniform(be, split, 1, 42, 8, 5, -0.25f, 0.75f));
    CK_OK(be->ops->fill_uniform(be, split + 1, n - 1, 42, 8, 6, -0.25f, 0.75f));
    ck_assert_int_eq(memcmp(split, want, (size_t)n * sizeof(float)), 0);
    for (int64_t i = 0; i < n; i++)
        ck_assert(got[i] >= -0.25f && got[i] < 0.75f);
    /* A different stream gives different values. */
    CK_OK(be->ops->fill_uniform(be, split, n, 42, 9, 5, -0.25f, 0.75f));
    ck_assert_int_ne(memcmp(split, want, (size_t)n * sizeof(float)), 0);
}
END_TEST

START_TEST(test_fills_bad_args)
{
    float *x = fbuf(4);
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->fill_normal(be, x, 4, 1, 2, 3, 0.0f, -1.0f));
    CK_ERR_HAS("std");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->fill_normal(be, x, 4, 1, 2, 3, NAN, 1.0f));
    CK_ERR_HAS("mean");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->fill_normal(be, x, 4, 1, 2, 3, 0.0f, INFINITY));
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->fill_uniform(be, x, 4, 1, 2, 3, 1.0f, 0.0f));
    CK_ERR_HAS("lo");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->fill_uniform(be, x, 4, 1, 2, 3, -INFINITY, 0.0f));
}
END_TEST

/* ============================================================ optimizers */

#define N_OPT 37
#define OPT_STEPS 3

START_TEST(test_sgd_plain)
{
    const float lr = 0.1f, wd = 0.01f;
    float *param = randn(N_OPT, 70, 1.0f);
    double ref[N_OPT];
    for (int i = 0; i < N_OPT; i++)
        ref[i] = param[i];
    for (int step = 0; step < OPT_STEPS; step++) {
        float *grad = randn(N_OPT, 71 + (uint64_t)step, 1.0f);
        CK_OK(be->ops->sgd_step(be, param, grad, NULL, N_OPT, lr, 0.0f, wd));
        for (int i = 0; i < N_OPT; i++) {
            ref[i] -= (double)lr * ((double)grad[i] + (double)wd * ref[i]);
            CK_CLOSE(param[i], ref[i], 1e-5, 1e-2, "sgd param", i);
        }
    }
}
END_TEST

START_TEST(test_sgd_momentum)
{
    const float lr = 0.05f, mom = 0.9f, wd = 1e-3f;
    float *param = randn(N_OPT, 80, 1.0f), *buf = fbuf(N_OPT);
    double ref[N_OPT], ref_buf[N_OPT] = {0};
    for (int i = 0; i < N_OPT; i++)
        ref[i] = param[i];
    for (int step = 0; step < OPT_STEPS; step++) {
        float *grad = randn(N_OPT, 81 + (uint64_t)step, 1.0f);
        CK_OK(be->ops->sgd_step(be, param, grad, buf, N_OPT, lr, mom, wd));
        for (int i = 0; i < N_OPT; i++) {
            double g = (double)grad[i] + (double)wd * ref[i];
            ref_buf[i] = (double)mom * ref_buf[i] + g;
            ref[i] -= (double)lr * ref_buf[i];
            CK_CLOSE(buf[i], ref_buf[i], 1e-5, 1e-2, "sgd buf", i);
            CK_CLOSE(param[i], ref[i], 1e-5, 1e-2, "sgd param", i);
        }
    }
    /* A buffer with momentum 0 holds this step's (decayed) gradient. */
    float *grad = randn(N_OPT, 89, 1.0f), *p0 = fcopy(param, N_OPT);
    CK_OK(be->ops->sgd_step(be, param, grad, buf, N_OPT, lr, 0.0f, wd));
    for (int i = 0; i < N_OPT; i++)
        CK_CLOSE(buf[i], (double)grad[i] + (double)wd * p0[i], 1e-6, 1e-2, "sgd buf, mom 0", i);
}
END_TEST

/* The optimizer updates split long arrays over the backend's threads;
 * every element must come out exactly as on one thread, for lengths that
 * do not divide evenly. */
START_TEST(test_optimizers_same_bits_on_any_thread_count)
{
    mhub_backend *one, *two;
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &one));
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 3}, &two));
    const int64_t n = (1 << 20) + 37;
    float *p[2], *g = malloc((size_t)n * sizeof *g), *m[2], *v[2];
    for (int k = 0; k < 2; k++) {
        p[k] = malloc((size_t)n * sizeof(float));
        m[k] = calloc((size_t)n, sizeof(float));
        v[k] = calloc((size_t)n, sizeof(float));
    }
    for (int64_t i = 0; i < n; i++) {
        g[i] = sinf((float)i * 0.37f);
        p[0][i] = p[1][i] = cosf((float)i * 0.11f);
    }
    mhub_backend *bes[2] = {one, two};
    for (int k = 0; k < 2; k++)
        for (int t = 1; t <= 3; t++) {
            CK_OK(bes[k]->ops->adamw_step(bes[k], p[k], g, m[k], v[k], n, 1e-2f, 0.9f, 0.95f,
                                          1e-8f, 0.1f, t));
            CK_OK(bes[k]->ops->sgd_step(bes[k], p[k], g, m[k], n, 1e-2f, 0.9f, 0.01f));
        }
    ck_assert_mem_eq(p[0], p[1], (size_t)n * sizeof(float));
    ck_assert_mem_eq(m[0], m[1], (size_t)n * sizeof(float));
    ck_assert_mem_eq(v[0], v[1], (size_t)n * sizeof(float));
    for (int k = 0; k < 2; k++) {
        free(p[k]);
        free(m[k]);
        free(v[k]);
    }
    free(g);
    mhub_backend_free(one);
    mhub_backend_free(two);
}
END_TEST

/* GELU and the softmax cross-entropy split long passes (by elements, by
 * whole rows) over the backend's threads: the bits must not depend on the
 * thread count, out of place and in place, for sizes that do not divide
 * evenly. Rows of 50257 classes (GPT-2's vocabulary) make the row split
 * real at a few rows. */
START_TEST(test_row_and_gelu_kernels_same_bits_on_any_thread_count)
{
    mhub_backend *bes[3];
    int counts[3] = {1, 2, 3};
    for (int k = 0; k < 3; k++)
        CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = counts[k]}, &bes[k]));
    const int64_t n = (1 << 19) + 29, rows = 13, classes = 50257, total = rows * classes;
    float *in = randn(n, 91, 3.0f), *dout = randn(n, 92, 1.0f);
    float *logits = randn(total, 93, 4.0f);
    int32_t targets[13];
    for (int r = 0; r < rows; r++)
        targets[r] = (int32_t)((r * 7919) % classes);
    float *g[3], *gi[3], *dg[3], *dgi[3], *probs[3], *loss[3], *dl[3];
    for (int k = 0; k < 3; k++) {
        mhub_backend *b = bes[k];
        g[k] = fbuf(n);
        gi[k] = fcopy(in, n);
        dg[k] = fbuf(n);
        dgi[k] = fcopy(dout, n);
        probs[k] = fbuf(total);
        dl[k] = fbuf(total);
        loss[k] = fbuf(rows);
        CK_OK(b->ops->gelu_forward(b, g[k], in, n));
        CK_OK(b->ops->gelu_forward(b, gi[k], gi[k], n));
        CK_OK(b->ops->gelu_backward(b, dg[k], in, dout, n));
        CK_OK(b->ops->gelu_backward(b, dgi[k], in, dgi[k], n));
        CK_OK(b->ops->softmax_xent_forward(b, probs[k], loss[k], logits, targets, rows, classes));
        CK_OK(b->ops->softmax_xent_backward(b, dl[k], probs[k], targets, rows, classes, 0.25f));
    }
    for (int k = 1; k < 3; k++) {
        ck_assert_mem_eq(g[0], g[k], (size_t)n * sizeof(float));
        ck_assert_mem_eq(g[0], gi[k], (size_t)n * sizeof(float));
        ck_assert_mem_eq(dg[0], dg[k], (size_t)n * sizeof(float));
        ck_assert_mem_eq(dg[0], dgi[k], (size_t)n * sizeof(float));
        ck_assert_mem_eq(probs[0], probs[k], (size_t)total * sizeof(float));
        ck_assert_mem_eq(loss[0], loss[k], (size_t)rows * sizeof(float));
        ck_assert_mem_eq(dl[0], dl[k], (size_t)total * sizeof(float));
    }
    for (int k = 0; k < 3; k++)
        mhub_backend_free(bes[k]);
}
END_TEST

/* The kernels may run a vector clone made for this machine (AVX2 here),
 * yet each element must be exactly what the plain scalar formula gives
 * in C11 float arithmetic: the same bits on every x86-64 machine. */
START_TEST(test_gelu_bits_match_scalar_formula)
{
    const int64_t n = 4099;
    float *in = randn(n, 94, 4.0f), *out = fbuf(n);
    CK_OK(be->ops->gelu_forward(be, out, in, n));
    for (int64_t i = 0; i < n; i++) {
        volatile float x = in[i]; /* keeps this loop scalar */
        float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        float want = x * (1.0f / (1.0f + mhub_cpu_expf(-2.0f * u)));
        ck_assert_msg(f32_bits(out[i]) == f32_bits(want), "gelu(%a) = %a, scalar %a", (double)x,
                      (double)out[i], (double)want);
    }
}
END_TEST

/* AdamW runs vectorized (and, here, as an AVX2 clone); every element must
 * still be exactly the scalar formula in C11 float arithmetic, with the
 * per-step coefficients formed in double as adamw_step documents. */
START_TEST(test_adamw_bits_match_scalar_formula)
{
    const int64_t n = 4099;
    const float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    float *p = randn(n, 95, 1.0f), *g = randn(n, 96, 0.1f), *m = randn(n, 97, 0.01f);
    float *v = fbuf(n);
    for (int64_t i = 0; i < n; i++)
        v[i] = 1e-3f * fabsf(p[i]);
    float *p0 = fcopy(p, n), *m0 = fcopy(m, n), *v0 = fcopy(v, n);
    const int64_t t = 3;
    CK_OK(be->ops->adamw_step(be, p, g, m, v, n, lr, b1, b2, eps, wd, t));
    double bc1 = 1.0 - pow((double)b1, (double)t), bc2 = 1.0 - pow((double)b2, (double)t);
    float decay = (float)(1.0 - (double)lr * (double)wd);
    float omb1 = (float)(1.0 - (double)b1), omb2 = (float)(1.0 - (double)b2);
    float step = (float)((double)lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    for (int64_t i = 0; i < n; i++) {
        volatile float gi = g[i]; /* keeps this loop scalar */
        float mi = b1 * m0[i] + omb1 * gi;
        float vi = b2 * v0[i] + omb2 * gi * gi;
        float pi = p0[i] * decay - step * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
        ck_assert_msg(f32_bits(m[i]) == f32_bits(mi) && f32_bits(v[i]) == f32_bits(vi) &&
                          f32_bits(p[i]) == f32_bits(pi),
                      "element %lld: p %a m %a v %a, scalar %a %a %a", (long long)i,
                      (double)p[i], (double)m[i], (double)v[i], (double)pi, (double)mi,
                      (double)vi);
    }
}
END_TEST

/* The softmax cross-entropy, scalar, in the kernel's order: the row max
 * and the double row sum over 16 lanes (lane j takes elements j mod 16 of
 * the whole 16-element blocks, the tail is added after), e^(x - max) by
 * the same inline exp, p = e * (float)(1 / sum). */
static void softmax_xent_scalar(const float *x, int32_t target, int64_t c, float *p,
                                float *loss)
{
    enum { LANES = 16 };
    int64_t body = c & ~(int64_t)(LANES - 1);
    float mx = x[0];
    if (body > 0) {
        float acc[LANES];
        memcpy(acc, x, sizeof acc);
        for (int64_t i = LANES; i < body; i += LANES)
            for (int j = 0; j < LANES; j++)
                acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
        for (int j = 0; j < LANES; j++)
            mx = acc[j] > mx ? acc[j] : mx;
    }
    for (int64_t i = body; i < c; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int64_t i = 0; i < c; i++)
        p[i] = mhub_cpu_expf(x[i] - mx);
    double lane[LANES] = {0}, sum = 0;
    for (int64_t i = 0; i < body; i += LANES)
        for (int j = 0; j < LANES; j++)
            lane[j] += (double)p[i + j];
    for (int j = 0; j < LANES && body > 0; j++)
        sum += lane[j];
    for (int64_t i = body; i < c; i++)
        sum += (double)p[i];
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < c; i++)
        p[i] *= inv;
    *loss = (float)(log(sum) - (double)(x[target] - mx));
}

/* The vectorized (here AVX2-cloned) kernel gives the scalar order's bits,
 * for rows longer and shorter than a vector block. */
START_TEST(test_softmax_xent_bits_match_scalar_order)
{
    const int64_t classes[] = {50257, 37, 10};
    for (size_t k = 0; k < sizeof classes / sizeof classes[0]; k++) {
        const int64_t rows = 5, c = classes[k];
        float *x = randn(rows * c, 98 + k, 3.0f), *p = fbuf(rows * c), *loss = fbuf(rows);
        float *want = fbuf(c);
        int32_t t[5] = {0, 3, 7, 1, 9};
        CK_OK(be->ops->softmax_xent_forward(be, p, loss, x, t, rows, c));
        for (int64_t r = 0; r < rows; r++) {
            float want_loss;
            softmax_xent_scalar(x + r * c, t[r], c, want, &want_loss);
            for (int64_t i = 0; i < c; i++)
                ck_assert_msg(f32_bits(p[r * c + i]) == f32_bits(want[i]),
                              "classes %lld row %lld p[%lld] = %a, scalar %a", (long long)c,
                              (long long)r, (long long)i, (double)p[r * c + i], (double)want[i]);
            ck_assert_msg(f32_bits(loss[r]) == f32_bits(want_loss),
                          "classes %lld row %lld: loss %a, scalar %a", (long long)c,
                          (long long)r, (double)loss[r], (double)want_loss);
        }
    }
}
END_TEST

START_TEST(test_adamw_three_steps)
{
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f;
    float *param = randn(N_OPT, 90, 1.0f), *m = fbuf(N_OPT), *v = fbuf(N_OPT);
    double rp[N_OPT], rm[N_OPT] = {0}, rv[N_OPT] = {0};
    double m_scale[N_OPT] = {0}; /* the same average of |g|: m's size before cancellation */
    for (int i = 0; i < N_OPT; i++)
        rp[i] = param[i];
    for (int64_t t = 1; t <= OPT_STEPS; t++) {
        float *grad = randn(N_OPT, 90 + (uint64_t)t, 0.5f);
        grad[0] = 0.0f; /* m = v = 0: only the decay moves it */
        CK_OK(be->ops->adamw_step(be, param, grad, m, v, N_OPT, lr, b1, b2, eps, wd, t));
        for (int i = 0; i < N_OPT; i++) {
            double g = grad[i];
            rp[i] *= 1.0 - (double)lr * (double)wd;
            rm[i] = (double)b1 * rm[i] + (1.0 - (double)b1) * g;
            m_scale[i] = (double)b1 * m_scale[i] + (1.0 - (double)b1) * fabs(g);
            rv[i] = (double)b2 * rv[i] + (1.0 - (double)b2) * g * g;
            double mhat = rm[i] / (1.0 - pow((double)b1, (double)t));
            double vhat = rv[i] / (1.0 - pow((double)b2, (double)t));
            rp[i] -= (double)lr * mhat / (sqrt(vhat) + (double)eps);
            /* m averages gradients of both signs: its error is relative to
             * the average of their sizes, not to its own (maybe tiny) value. */
            ck_assert_msg(fabs((double)m[i] - rm[i]) <= 1e-6 * m_scale[i],
                          "adamw m[%d] step %lld: got %.9g, want %.9g", i, (long long)t,
                          (double)m[i], rm[i]);
            CK_CLOSE(v[i], rv[i], 1e-5, 1e-30, "adamw v", i);
            /* The step is ~lr; its f32 error is ~1e-6 of lr. */
            ck_assert_msg(fabs((double)param[i] - rp[i]) <= 1e-5 * (fabs(rp[i]) + (double)lr),
                          "adamw param[%d] step %lld: got %.9g, want %.9g", i, (long long)t,
                          (double)param[i], rp[i]);
        }
    }
}
END_TEST

START_TEST(test_optimizer_bad_args)
{
    float *p = fbuf(8), *g = fbuf(8), *m = fbuf(8), *v = fbuf(8);
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->sgd_step(be, p, g, NULL, 8, 0.1f, 0.9f, 0.0f));
    CK_ERR_HAS("momentum_buf");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->sgd_step(be, p, g, NULL, 8, NAN, 0.0f, 0.0f));
    CK_ERR_HAS("lr");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->sgd_step(be, p, p, NULL, 8, 0.1f, 0.0f, 0.0f));
    CK_ERR_HAS("overlap");
    CK_FAILS(MHUB_ERR_INVALID_ARG, be->ops->sgd_step(be, p, g, g, 8, 0.1f, 0.9f, 0.0f));

    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->adamw_step(be, p, g, m, v, 8, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0));
    CK_ERR_HAS("t = 0");
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->adamw_step(be, p, g, m, v, 8, 1e-3f, 1.0f, 0.999f, 1e-8f, 0.0f, 1));
    CK_ERR_HAS("beta1");
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->adamw_step(be, p, g, m, v, 8, 1e-3f, 0.9f, -0.1f, 1e-8f, 0.0f, 1));
    CK_ERR_HAS("beta2");
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->adamw_step(be, p, g, m, v, 8, 1e-3f, 0.9f, 0.999f, -1.0f, 0.0f, 1));
    CK_ERR_HAS("eps");
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->adamw_step(be, p, g, m, v, 8, INFINITY, 0.9f, 0.999f, 1e-8f, 0.0f, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             be->ops->adamw_step(be, p, g, m, m, 8, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1));
    CK_ERR_HAS("m and v overlap");
}
END_TEST

/* ============================ sizes and NULLs, the same way for every op */

START_TEST(test_every_op_rejects_bad_sizes_and_nulls)
{
    float *x = fbuf(64), *y = fbuf(64), *z = fbuf(64), *w = fbuf(64);
    int32_t *t = buf_bytes(8 * sizeof(int32_t));
    double d;
    const mhub_backend_ops *o = be->ops;
#define CK_BAD(call, text)                                                               \
    do {                                                                                 \
        CK_FAILS(MHUB_ERR_INVALID_ARG, call);                                            \
        CK_ERR_HAS(text);                                                                \
    } while (0)

    CK_BAD(o->bias_add(be, x, y, -1, 4), "rows = -1");
    CK_BAD(o->bias_add(be, x, y, 4, -2), "cols = -2");
    CK_BAD(o->bias_add(be, NULL, y, 4, 4), "out is NULL");
    CK_BAD(o->bias_add(be, x, NULL, 4, 4), "bias is NULL");
    CK_BAD(o->bias_add(be, x, x + 2, 4, 4), "overlap");
    CK_BAD(o->bias_add(be, x, y, INT64_MAX / 2, 4), "too large");
    CK_BAD(o->bias_add(be, x, y, INT64_MAX / 16, 4), "too many");
    CK_BAD(o->bias_backward(be, y, x, -1, 4), "rows = -1");
    CK_BAD(o->bias_backward(be, NULL, x, 4, 4), "dbias is NULL");
    CK_BAD(o->bias_backward(be, y, NULL, 4, 4), "dout is NULL");

    CK_BAD(o->gelu_forward(be, x, y, -1), "gelu_forward: n = -1");
    CK_BAD(o->gelu_forward(be, NULL, y, 4), "out is NULL");
    CK_BAD(o->gelu_forward(be, x, NULL, 4), "in is NULL");
    CK_BAD(o->gelu_forward(be, x + 1, x, 4), "partly overlap");
    CK_BAD(o->gelu_backward(be, x, y, z, -3), "n = -3");
    CK_BAD(o->gelu_backward(be, NULL, y, z, 4), "din is NULL");
    CK_BAD(o->gelu_backward(be, x, NULL, z, 4), "in is NULL");
    CK_BAD(o->gelu_backward(be, x, y, NULL, 4), "dout is NULL");
    CK_BAD(o->gelu_backward(be, x, x, z, 4), "overlap");

    for (int i = 0; i < 8; i++)
        t[i] = 0;
    CK_BAD(o->softmax_xent_forward(be, x, y, z, t, -1, 4), "rows = -1");
    CK_BAD(o->softmax_xent_forward(be, x, y, z, t, 4, -1), "classes = -1");
    CK_BAD(o->softmax_xent_forward(be, NULL, y, z, t, 4, 4), "probs is NULL");
    CK_BAD(o->softmax_xent_forward(be, x, NULL, z, t, 4, 4), "losses is NULL");
    CK_BAD(o->softmax_xent_forward(be, x, y, NULL, t, 4, 4), "logits is NULL");
    CK_BAD(o->softmax_xent_forward(be, x, y, z, NULL, 4, 4), "targets is NULL");
    CK_BAD(o->softmax_xent_forward(be, x, x + 3, z, t, 4, 4), "overlap");
    CK_BAD(o->softmax_xent_backward(be, x, y, t, -1, 4, 1.0f), "rows = -1");
    CK_BAD(o->softmax_xent_backward(be, NULL, y, t, 4, 4, 1.0f), "dlogits is NULL");
    CK_BAD(o->softmax_xent_backward(be, x, NULL, t, 4, 4, 1.0f), "probs is NULL");
    CK_BAD(o->softmax_xent_backward(be, x, y, NULL, 4, 4, 1.0f), "targets is NULL");

    CK_BAD(o->scale(be, x, -1, 2.0f), "scale: n = -1");
    CK_BAD(o->scale(be, NULL, 4, 2.0f), "x is NULL");
    CK_BAD(o->axpy(be, x, y, -1, 2.0f), "axpy: n = -1");
    CK_BAD(o->axpy(be, NULL, y, 4, 2.0f), "y is NULL");
    CK_BAD(o->axpy(be, x, NULL, 4, 2.0f), "x is NULL");
    CK_BAD(o->axpy(be, x, x, 4, 2.0f), "overlap");
    CK_BAD(o->sum_squares(be, x, -1, &d), "sum_squares: n = -1");
    CK_BAD(o->sum_squares(be, NULL, 4, &d), "x is NULL");
    CK_BAD(o->sum_squares(be, x, 4, NULL), "out is NULL");
    CK_BAD(o->fill_normal(be, x, -1, 1, 2, 3, 0.0f, 1.0f), "fill_normal: n = -1");
    CK_BAD(o->fill_normal(be, NULL, 4, 1, 2, 3, 0.0f, 1.0f), "dst is NULL");
    CK_BAD(o->fill_uniform(be, x, -1, 1, 2, 3, 0.0f, 1.0f), "fill_uniform: n = -1");
    CK_BAD(o->fill_uniform(be, NULL, 4, 1, 2, 3, 0.0f, 1.0f), "dst is NULL");

    CK_BAD(o->sgd_step(be, x, y, NULL, -1, 0.1f, 0.0f, 0.0f), "sgd_step: n = -1");
    CK_BAD(o->sgd_step(be, NULL, y, NULL, 4, 0.1f, 0.0f, 0.0f), "param is NULL");
    CK_BAD(o->sgd_step(be, x, NULL, NULL, 4, 0.1f, 0.0f, 0.0f), "grad is NULL");
    CK_BAD(o->adamw_step(be, x, y, z, w, -1, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, 1),
           "adamw_step: n = -1");
    CK_BAD(o->adamw_step(be, NULL, y, z, w, 4, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, 1),
           "param is NULL");
    CK_BAD(o->adamw_step(be, x, NULL, z, w, 4, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, 1),
           "grad is NULL");
    CK_BAD(o->adamw_step(be, x, y, NULL, w, 4, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, 1),
           "m is NULL");
    CK_BAD(o->adamw_step(be, x, y, z, NULL, 4, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, 1),
           "v is NULL");
#undef CK_BAD

    /* Zero sizes with NULL pointers are fine everywhere. */
    CK_OK(o->gelu_forward(be, NULL, NULL, 0));
    CK_OK(o->gelu_backward(be, NULL, NULL, NULL, 0));
    CK_OK(o->scale(be, NULL, 0, 2.0f));
    CK_OK(o->axpy(be, NULL, NULL, 0, 2.0f));
    CK_OK(o->fill_normal(be, NULL, 0, 1, 2, 3, 0.0f, 1.0f));
    CK_OK(o->fill_uniform(be, NULL, 0, 1, 2, 3, 0.0f, 1.0f));
    CK_OK(o->sgd_step(be, NULL, NULL, NULL, 0, 0.1f, 0.9f, 0.0f));
    CK_OK(o->adamw_step(be, NULL, NULL, NULL, NULL, 0, 1e-3f, 0.9f, 0.99f, 1e-8f, 0.0f, 1));
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("kernels");
    TCase *mem = tcase_create("memory_and_options");
    tcase_add_checked_fixture(mem, setup, teardown);
    tcase_add_test(mem, test_alloc_aligned_zeroed);
    tcase_add_test(mem, test_memory_accounting);
    tcase_add_test(mem, test_memset_copy_synchronize);
    tcase_add_test(mem, test_memory_bad_args);
    tcase_add_test(mem, test_backend_identity);
    tcase_add_test(mem, test_thread_options);
    tcase_add_test(mem, test_blas_workers_quieted);
    suite_add_tcase(s, mem);

    TCase *layer = tcase_create("layer_kernels");
    tcase_add_checked_fixture(layer, setup, teardown);
    tcase_add_test(layer, test_bias_add);
    tcase_add_test(layer, test_bias_backward_fd_and_accumulation);
    tcase_add_test(layer, test_expf_accuracy);
    tcase_add_test(layer, test_expf_special_values);
    tcase_add_test(layer, test_gelu_forward);
    tcase_add_test(layer, test_gelu_same_bits_vector_or_scalar);
    tcase_add_test(layer, test_gelu_limits);
    tcase_add_test(layer, test_gelu_backward_fd);
    tcase_add_test(layer, test_softmax_xent_forward);
    tcase_add_test(layer, test_softmax_xent_large_logits);
    tcase_add_test(layer, test_softmax_xent_row_shapes);
    tcase_add_test(layer, test_softmax_xent_backward_fd);
    tcase_add_test(layer, test_softmax_xent_bad_targets);
    suite_add_tcase(s, layer);

    TCase *util = tcase_create("utilities");
    tcase_add_checked_fixture(util, setup, teardown);
    tcase_add_test(util, test_cast_all_pairs);
    tcase_add_test(util, test_cast_spot_values);
    tcase_add_test(util, test_cast_bad_args);
    tcase_add_test(util, test_scale_axpy);
    tcase_add_test(util, test_sum_squares);
    tcase_add_test(util, test_fills_match_rng);
    tcase_add_test(util, test_fills_bad_args);
    suite_add_tcase(s, util);

    TCase *opt = tcase_create("optimizers");
    tcase_add_checked_fixture(opt, setup, teardown);
    tcase_add_test(opt, test_sgd_plain);
    tcase_add_test(opt, test_sgd_momentum);
    tcase_add_test(opt, test_adamw_three_steps);
    tcase_add_test(opt, test_adamw_bits_match_scalar_formula);
    tcase_add_test(opt, test_softmax_xent_bits_match_scalar_order);
    tcase_add_test(opt, test_optimizers_same_bits_on_any_thread_count);
    tcase_add_test(opt, test_row_and_gelu_kernels_same_bits_on_any_thread_count);
    tcase_add_test(opt, test_gelu_bits_match_scalar_formula);
    tcase_add_test(opt, test_optimizer_bad_args);
    tcase_add_test(opt, test_every_op_rejects_bad_sizes_and_nulls);
    suite_add_tcase(s, opt);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
