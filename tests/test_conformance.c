/* test_conformance.c - one suite for every backend: each operation of the
 * backend table runs on the backend under test and on the CPU backend
 * (the reference) with the same random inputs, and the results must
 * agree: f32 to a relative error of 1e-5 (as a whole tensor: ||a-b||/||b||),
 * GEMMs rounded to tf32 to 1e-3 and to bf16 to 1e-2, casts and random
 * fills bit for bit. Bad arguments must give the reference's message
 * word for word, and the PyTorch golden files of the GPT (tests/data/gpt)
 * must be matched on the backend under test as on the CPU.
 *
 * The backend under test is MHUB_TEST_BACKEND: "cpu" (a second CPU
 * backend on 2 threads against the reference's 1, which checks the suite
 * itself and the CPU's threading), "cuda", or "cuda-emu": the CUDA
 * backend's own code with its kernels run on the CPU by the emulator of
 * tests/cuda_emu/ (in builds that link it, MHUB_TEST_CUDA_EMU), which
 * checks the kernels and the backend's logic on machines without a GPU.
 * Without a usable GPU the cuda run prints why and exits 77, which
 * automake reports as SKIP.
 *
 * Every buffer the suite touches on the backend under test goes through
 * ops->alloc and ops->copy, so the suite never reads device memory from
 * the host. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "mhub/gpt.h"
#include "mhub/rng.h"
#include "mhub/safetensors.h"
#include "testutil.h"
#ifdef MHUB_TEST_CUDA_EMU
#include "cuda_emu/cuda_emu.h"
#endif

#define TOL_F32 1e-5
#define TOL_TF32 1e-3
#define TOL_BF16 1e-2

static mhub_backend *ref; /* the CPU backend, 1 thread */
static mhub_backend *dut; /* the backend under test */
static const char *dut_name = "cpu";

/* ---- buffers on both backends ---- */

#define MAX_BUFS 96
static struct {
    mhub_backend *be;
    void *p;
} bufs[MAX_BUFS];
static int nbufs;

static void *alloc_on(mhub_backend *be, size_t bytes)
{
    ck_assert_int_lt(nbufs, MAX_BUFS);
    void *p = NULL;
    CK_OK(be->ops->alloc(be, bytes, &p));
    bufs[nbufs].be = be;
    bufs[nbufs++].p = p;
    return p;
}

static void free_all(void)
{
    for (int i = 0; i < nbufs; i++)
        bufs[i].be->ops->free(bufs[i].be, bufs[i].p);
    nbufs = 0;
}

/* The same n floats on the reference (r) and on the backend under test (d). */
typedef struct pair {
    float *r, *d;
    int64_t n;
} pair;

static void upload(mhub_backend *be, void *dst, const void *host, size_t bytes)
{
    CK_OK(be->ops->copy(be, dst, host, bytes, MHUB_COPY_HOST_TO_DEVICE));
}

static void download(mhub_backend *be, void *host, const void *src, size_t bytes)
{
    CK_OK(be->ops->copy(be, host, src, bytes, MHUB_COPY_DEVICE_TO_HOST));
}

static pair pair_from(const float *host, int64_t n)
{
    pair p = {alloc_on(ref, (size_t)n * sizeof(float)), alloc_on(dut, (size_t)n * sizeof(float)),
              n};
    upload(ref, p.r, host, (size_t)n * sizeof(float));
    upload(dut, p.d, host, (size_t)n * sizeof(float));
    return p;
}

/* Uniform values in [lo, hi) from the project's counter-based RNG. */
static pair pair_random(int64_t n, uint64_t stream, float lo, float hi)
{
    float *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        h[i] = lo + (hi - lo) * mhub_rng_uniform(2024, stream, (uint64_t)i);
    pair p = pair_from(h, n);
    free(h);
    return p;
}

static pair pair_zeros(int64_t n)
{
    return (pair){alloc_on(ref, (size_t)n * sizeof(float)),
                  alloc_on(dut, (size_t)n * sizeof(float)), n};
}

typedef struct ipair {
    int32_t *r, *d;
} ipair;

static ipair ipair_from(const int32_t *host, int64_t n)
{
    size_t bytes = (size_t)n * sizeof(int32_t);
    ipair p = {alloc_on(ref, bytes), alloc_on(dut, bytes)};
    upload(ref, p.r, host, bytes);
    upload(dut, p.d, host, bytes);
    return p;
}

static ipair ipair_random(int64_t n, uint64_t stream, uint32_t below)
{
    int32_t *h = malloc((size_t)(n ? n : 1) * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        h[i] = (int32_t)mhub_rng_below(2024, stream, (uint64_t)i, below);
    ipair p = ipair_from(h, n);
    free(h);
    return p;
}

/* ||d - r|| / ||r|| in double, over both backends' copies of p. */
static double pair_relerr(pair p)
{
    size_t bytes = (size_t)(p.n ? p.n : 1) * sizeof(float);
    float *r = malloc(bytes), *d = malloc(bytes);
    download(ref, r, p.r, (size_t)p.n * sizeof(float));
    download(dut, d, p.d, (size_t)p.n * sizeof(float));
    double num = 0, den = 0;
    bool finite = true;
    for (int64_t i = 0; i < p.n; i++) {
        if (isfinite(r[i]) != isfinite(d[i]))
            finite = false;
        if (!isfinite(r[i]))
            continue;
        num += ((double)d[i] - r[i]) * ((double)d[i] - r[i]);
        den += (double)r[i] * r[i];
    }
    free(r);
    free(d);
    if (!finite)
        return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#define EXPECT_CLOSE(p, tol, what)                                                      \
    do {                                                                                \
        double e_ = pair_relerr(p);                                                     \
        ck_assert_msg(e_ <= (tol), "%s on %s: relative error %.3g > %.1g", (what),      \
                      dut_name, e_, (double)(tol));                                     \
    } while (0)

static void expect_same_bits(const void *rdev, const void *ddev, size_t bytes, const char *what)
{
    unsigned char *r = malloc(bytes ? bytes : 1), *d = malloc(bytes ? bytes : 1);
    download(ref, r, rdev, bytes);
    download(dut, d, ddev, bytes);
    ck_assert_msg(memcmp(r, d, bytes) == 0, "%s on %s: not bit-identical to the CPU", what,
                  dut_name);
    free(r);
    free(d);
}

/* Both backends refuse the call with the same code and message. */
#define EXPECT_SAME_ERROR(call_ref, call_dut)                                          \
    do {                                                                               \
        char msg_[512];                                                                \
        mhub_status sr_ = (call_ref);                                                  \
        snprintf(msg_, sizeof msg_, "%s", mhub_last_error());                          \
        mhub_status sd_ = (call_dut);                                                  \
        ck_assert_msg(sr_ != MHUB_OK && sr_ == sd_, "%s: %s vs %s", #call_dut,         \
                      mhub_status_name(sr_), mhub_status_name(sd_));                   \
        ck_assert_str_eq(mhub_last_error(), msg_);                                     \
    } while (0)

/* The real CUDA backend or the emulated one: both round GEMMs as asked. */
static bool dut_is_cuda(void)
{
    return strcmp(dut_name, "cuda") == 0 || strcmp(dut_name, "cuda-emu") == 0;
}

static void set_matmul(mhub_matmul_precision p)
{
    if (strcmp(dut_name, "cuda") == 0)
        CK_OK(mhub_cuda_backend_set_matmul(dut, p));
#ifdef MHUB_TEST_CUDA_EMU
    if (strcmp(dut_name, "cuda-emu") == 0)
        CK_OK(mhub_cuda_emu_backend_set_matmul(dut, p));
#endif
}

/* Create another backend of the kind under test (CUDA, real or emulated). */
static mhub_status create_cuda_like(const mhub_cuda_options *o, mhub_backend **out)
{
#ifdef MHUB_TEST_CUDA_EMU
    if (strcmp(dut_name, "cuda-emu") == 0)
        return mhub_cuda_emu_backend_create(o, out);
#endif
    return mhub_cuda_backend_create(o, out);
}

static void teardown(void)
{
    set_matmul(MHUB_MATMUL_F32);
    free_all();
}

/* ---- memory ---- */

START_TEST(test_memory)
{
    const int64_t n = 100003;
    pair z = pair_zeros(n); /* alloc is zero-filled on every backend */
    float *h = malloc((size_t)n * sizeof *h);
    download(dut, h, z.d, (size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(h[i] == 0.0f, "alloc left %g at %lld", h[i], (long long)i);
    pair a = pair_random(n, 1, -1, 1);
    CK_OK(dut->ops->copy(dut, z.d, a.d, (size_t)n * sizeof(float), MHUB_COPY_DEVICE_TO_DEVICE));
    CK_OK(ref->ops->copy(ref, z.r, a.r, (size_t)n * sizeof(float), MHUB_COPY_DEVICE_TO_DEVICE));
    expect_same_bits(z.r, z.d, (size_t)n * sizeof(float), "device-to-device copy");
    CK_OK(dut->ops->memset_zero(dut, z.d + 7, 1000 * sizeof(float)));
    CK_OK(ref->ops->memset_zero(ref, z.r + 7, 1000 * sizeof(float)));
    expect_same_bits(z.r, z.d, (size_t)n * sizeof(float), "memset_zero");
    if (dut->ops->memory_usage) {
        size_t before, after, peak;
        CK_OK(dut->ops->memory_usage(dut, &before, NULL));
        void *p = alloc_on(dut, 12345);
        CK_OK(dut->ops->memory_usage(dut, &after, &peak));
        ck_assert_uint_eq(after - before, 12345);
        ck_assert_uint_ge(peak, after);
        (void)p;
    }
    CK_OK(dut->ops->synchronize(dut));
    EXPECT_SAME_ERROR(ref->ops->memset_zero(ref, NULL, 8), dut->ops->memset_zero(dut, NULL, 8));
    free(h);
}
END_TEST

/* The comparison itself can fail: one element off by 1e-4 of the
 * tensor's scale is caught, and so is a NaN where the reference has a
 * number. */
START_TEST(test_suite_detects_differences)
{
    float h[1000];
    for (int i = 0; i < 1000; i++)
        h[i] = (float)(i % 7) - 3.0f;
    pair p = pair_from(h, 1000);
    ck_assert(pair_relerr(p) == 0.0);
    h[500] += 0.03f; /* ||diff|| / ||h|| ~ 0.03 / 63 = 5e-4 */
    upload(dut, p.d, h, sizeof h);
    ck_assert(pair_relerr(p) > TOL_F32);
    h[500] = NAN;
    upload(dut, p.d, h, sizeof h);
    ck_assert(isinf(pair_relerr(p)));
}
END_TEST

/* The CUDA backend's bad input: an allocation beyond its pool, more
 * ranks on the node than GPUs, a pool larger than the device, a precision
 * that does not exist. Each a clear error, nothing created. */
START_TEST(test_cuda_bad_input)
{
    if (!dut_is_cuda())
        return;
    void *p = NULL;
    mhub_clear_error();
    /* 3 GiB: more than the 2 GiB pool; 1 PiB when every tensor is its own
     * cudaMalloc (MHUB_CUDA_ALLOC=each) */
    const bool each = getenv("MHUB_CUDA_ALLOC") && strcmp(getenv("MHUB_CUDA_ALLOC"), "each") == 0;
    ck_assert_int_eq(dut->ops->alloc(dut, each ? (size_t)1 << 50 : (size_t)3 << 30, &p),
                     MHUB_ERR_NO_MEMORY);
    ck_assert_ptr_null(p);
    ck_assert_msg(strstr(mhub_last_error(), each ? "cudaMalloc" : "device pool") &&
                      strstr(mhub_last_error(), "device"),
                  "message: %s", mhub_last_error());
    mhub_backend *be = NULL;
    mhub_clear_error();
    ck_assert_int_eq(create_cuda_like(&(mhub_cuda_options){.device = -1, .local_rank = 0,
                                                           .local_ranks = 4096},
                                      &be),
                     MHUB_ERR_UNSUPPORTED);
    ck_assert_ptr_null(be);
    ck_assert_msg(strstr(mhub_last_error(), "for 4096 ranks") &&
                      strstr(mhub_last_error(), "local rank 0"),
                  "message: %s", mhub_last_error());
    mhub_clear_error();
    ck_assert_int_eq(create_cuda_like(&(mhub_cuda_options){.device = -1,
                                                           .pool_bytes = (size_t)1 << 50},
                                      &be),
                     MHUB_ERR_NO_MEMORY);
    ck_assert_msg(strstr(mhub_last_error(), "does not fit"), "message: %s", mhub_last_error());
    ck_assert_int_eq(create_cuda_like(&(mhub_cuda_options){.device = -1,
                                                           .matmul = (mhub_matmul_precision)7},
                                      &be),
                     MHUB_ERR_INVALID_ARG);
    ck_assert_int_eq(create_cuda_like(&(mhub_cuda_options){.device = 99}, &be),
                     MHUB_ERR_INVALID_ARG);
    ck_assert_ptr_null(be);
    /* the backend under test still works after all that */
    pair x = pair_random(1000, 5, -1, 1);
    CK_OK(dut->ops->scale(dut, x.d, 1000, 2.0f));
    CK_OK(ref->ops->scale(ref, x.r, 1000, 2.0f));
    expect_same_bits(x.r, x.d, 1000 * sizeof(float), "scale after failed creates");
}
END_TEST

/* alloc_each: every tensor its own cudaMalloc (for memory checkers). The
 * contract holds as with the pool: zero-filled, non-NULL for 0 bytes,
 * exact accounting, a clear error when the device has no room, and the
 * kernels run on such blocks. */
START_TEST(test_cuda_alloc_each)
{
    if (!dut_is_cuda())
        return;
    mhub_backend *be = NULL;
    CK_OK(create_cuda_like(&(mhub_cuda_options){.device = -1, .pool_bytes = (size_t)256 << 20,
                                                .alloc_each = true},
                           &be));
    size_t base, now, peak;
    CK_OK(be->ops->memory_usage(be, &base, NULL));
    ck_assert_uint_eq(base, 0);
    void *empty = NULL, *a = NULL, *b = NULL;
    CK_OK(be->ops->alloc(be, 0, &empty));
    ck_assert_ptr_nonnull(empty);
    const int64_t n = 4099;
    CK_OK(be->ops->alloc(be, (size_t)n * sizeof(float), &a));
    CK_OK(be->ops->alloc(be, (size_t)n * sizeof(float), &b));
    CK_OK(be->ops->memory_usage(be, &now, &peak));
    ck_assert_uint_eq(now, 2 * (size_t)n * sizeof(float));
    ck_assert_uint_eq(peak, now);
    float *h = malloc((size_t)n * sizeof *h);
    download(be, h, a, (size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(h[i] == 0.0f, "alloc_each left %g at %lld", h[i], (long long)i);
    for (int64_t i = 0; i < n; i++)
        h[i] = (float)i;
    upload(be, a, h, (size_t)n * sizeof *h);
    CK_OK(be->ops->axpy(be, (float *)b, (const float *)a, n, 2.0f)); /* b += 2 a, from 0 */
    download(be, h, b, (size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(h[i] == 2.0f * (float)i, "axpy on alloc_each blocks: %g at %lld", h[i],
                      (long long)i);
    be->ops->free(be, a);
    CK_OK(be->ops->memory_usage(be, &now, &peak));
    ck_assert_uint_eq(now, (size_t)n * sizeof(float));
    ck_assert_uint_eq(peak, 2 * (size_t)n * sizeof(float));
    CK_OK(be->ops->reset_peak(be));
    CK_OK(be->ops->memory_usage(be, NULL, &peak));
    ck_assert_uint_eq(peak, now);
    void *huge = NULL;
    mhub_clear_error();
    ck_assert_int_eq(be->ops->alloc(be, (size_t)1 << 50, &huge), MHUB_ERR_NO_MEMORY);
    ck_assert_ptr_null(huge);
    ck_assert_msg(strstr(mhub_last_error(), "cudaMalloc"), "message: %s", mhub_last_error());
    be->ops->free(be, b);
    be->ops->free(be, empty);
    /* the environment's switch takes each or pool, and says so otherwise */
    const char *was = getenv("MHUB_CUDA_ALLOC");
    char saved[16] = "";
    if (was)
        snprintf(saved, sizeof saved, "%s", was);
    setenv("MHUB_CUDA_ALLOC", "bogus", 1);
    mhub_backend *refused = NULL;
    ck_assert_int_eq(create_cuda_like(&(mhub_cuda_options){.device = -1,
                                                           .pool_bytes = (size_t)256 << 20},
                                      &refused),
                     MHUB_ERR_INVALID_ARG);
    ck_assert_ptr_null(refused);
    ck_assert_msg(strstr(mhub_last_error(), "MHUB_CUDA_ALLOC") &&
                      strstr(mhub_last_error(), "bogus"),
                  "message: %s", mhub_last_error());
    if (was)
        setenv("MHUB_CUDA_ALLOC", saved, 1);
    else
        unsetenv("MHUB_CUDA_ALLOC");
    CK_OK(be->ops->memory_usage(be, &now, NULL));
    ck_assert_uint_eq(now, 0);
    free(h);
    mhub_backend_free(be);
}
END_TEST

/* ---- GEMM ---- */

static void gemm_case(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t pad,
                      double tol)
{
    /* leading dimensions are at least 1, even for an empty k */
    int64_t lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
    lda = lda > 0 ? lda : 1;
    ldb = ldb > 0 ? ldb : 1;
    pair a = pair_random((ta ? k : m) * lda, 10, -1, 1);
    pair b = pair_random((tb ? n : k) * ldb, 11, -1, 1);
    pair c = pair_random(m * ldc, 12, -1, 1);
    CK_OK(ref->ops->gemm(ref, ta, tb, m, n, k, 0.75f, a.r, lda, b.r, ldb, 0.5f, c.r, ldc));
    CK_OK(dut->ops->gemm(dut, ta, tb, m, n, k, 0.75f, a.d, lda, b.d, ldb, 0.5f, c.d, ldc));
    char what[96];
    snprintf(what, sizeof what, "gemm %c%c %lldx%lldx%lld", ta ? 'T' : 'N', tb ? 'T' : 'N',
             (long long)m, (long long)n, (long long)k);
    EXPECT_CLOSE(c, tol, what);
}

static void gemm_all(double tol)
{
    for (int t = 0; t < 4; t++) {
        gemm_case(t & 1, t & 2, 37, 53, 71, 0, tol);
        gemm_case(t & 1, t & 2, 64, 768, 256, 3, tol);
    }
    gemm_case(false, true, 256, 1000, 768, 0, tol); /* a logits-like shape */
    gemm_case(false, false, 5, 7, 0, 0, tol);       /* k = 0: C = beta C */
}

START_TEST(test_gemm_f32)
{
    gemm_all(TOL_F32);
    pair c = pair_zeros(16);
    EXPECT_SAME_ERROR(ref->ops->gemm(ref, false, false, 4, 4, 4, 1, NULL, 4, c.r, 4, 0, c.r, 4),
                      dut->ops->gemm(dut, false, false, 4, 4, 4, 1, NULL, 4, c.d, 4, 0, c.d, 4));
    EXPECT_SAME_ERROR(ref->ops->gemm(ref, false, false, 4, 4, 4, 1, c.r, 3, c.r, 4, 0, c.r, 4),
                      dut->ops->gemm(dut, false, false, 4, 4, 4, 1, c.d, 3, c.d, 4, 0, c.d, 4));
}
END_TEST

START_TEST(test_gemm_tf32_bf16)
{
    if (!dut_is_cuda())
        return; /* the CPU computes every GEMM in f32 */
    set_matmul(MHUB_MATMUL_TF32);
    gemm_all(TOL_TF32);
    free_all(); /* the buffer table holds one gemm_all */
    set_matmul(MHUB_MATMUL_BF16);
    gemm_all(TOL_BF16);
}
END_TEST

/* ---- layer kernels ---- */

START_TEST(test_bias_gelu)
{
    const int64_t rows = 300, cols = 769;
    pair out = pair_random(rows * cols, 20, -3, 3), bias = pair_random(cols, 21, -1, 1);
    CK_OK(ref->ops->bias_add(ref, out.r, bias.r, rows, cols));
    CK_OK(dut->ops->bias_add(dut, out.d, bias.d, rows, cols));
    EXPECT_CLOSE(out, TOL_F32, "bias_add");
    pair db = pair_random(cols, 22, -1, 1);
    CK_OK(ref->ops->bias_backward(ref, db.r, out.r, rows, cols));
    CK_OK(dut->ops->bias_backward(dut, db.d, out.d, rows, cols));
    EXPECT_CLOSE(db, TOL_F32, "bias_backward");
    pair g = pair_zeros(rows * cols);
    CK_OK(ref->ops->gelu_forward(ref, g.r, out.r, rows * cols));
    CK_OK(dut->ops->gelu_forward(dut, g.d, out.d, rows * cols));
    EXPECT_CLOSE(g, TOL_F32, "gelu_forward");
    pair dout = pair_random(rows * cols, 23, -1, 1);
    CK_OK(ref->ops->gelu_backward(ref, dout.r, out.r, dout.r, rows * cols)); /* in place */
    CK_OK(dut->ops->gelu_backward(dut, dout.d, out.d, dout.d, rows * cols));
    EXPECT_CLOSE(dout, TOL_F32, "gelu_backward");
    CK_OK(ref->ops->gelu_forward(ref, out.r, out.r, rows * cols));
    CK_OK(dut->ops->gelu_forward(dut, out.d, out.d, rows * cols));
    EXPECT_CLOSE(out, TOL_F32, "gelu_forward in place");
    EXPECT_SAME_ERROR(ref->ops->gelu_forward(ref, g.r, out.r, -1),
                      dut->ops->gelu_forward(dut, g.d, out.d, -1));
    EXPECT_SAME_ERROR(ref->ops->bias_add(ref, out.r, out.r + 1, rows, cols),
                      dut->ops->bias_add(dut, out.d, out.d + 1, rows, cols));
}
END_TEST

static void xent_case(int64_t rows, int64_t classes)
{
    pair logits = pair_random(rows * classes, 30, -8, 8);
    ipair tg = ipair_random(rows, 31, (uint32_t)classes);
    pair probs = pair_zeros(rows * classes), loss = pair_zeros(rows);
    CK_OK(ref->ops->softmax_xent_forward(ref, probs.r, loss.r, logits.r, tg.r, rows, classes));
    CK_OK(dut->ops->softmax_xent_forward(dut, probs.d, loss.d, logits.d, tg.d, rows, classes));
    EXPECT_CLOSE(probs, TOL_F32, "softmax_xent_forward probs");
    EXPECT_CLOSE(loss, TOL_F32, "softmax_xent_forward losses");
    /* in place: dlogits == probs */
    CK_OK(ref->ops->softmax_xent_backward(ref, probs.r, probs.r, tg.r, rows, classes, 0.125f));
    CK_OK(dut->ops->softmax_xent_backward(dut, probs.d, probs.d, tg.d, rows, classes, 0.125f));
    EXPECT_CLOSE(probs, TOL_F32, "softmax_xent_backward");
}

START_TEST(test_softmax_xent)
{
    xent_case(7, 10);
    xent_case(16, 50257);
    xent_case(3, 1);
}
END_TEST

/* A fault the device finds: reported by the op itself (status s) or, on
 * an asynchronous backend, by the next wait, as INVALID_ARG with message. */
static void expect_fault(mhub_status s, const char *message)
{
    if (s == MHUB_OK)
        s = dut->ops->synchronize(dut);
    ck_assert_int_eq(s, MHUB_ERR_INVALID_ARG);
    ck_assert_msg(strstr(mhub_last_error(), message), "message: %s", mhub_last_error());
}

/* A target out of range: the CPU refuses at the call; a GPU finds it in
 * the kernel and reports it by the next call that waits. Either way the
 * error names the target and the row. */
START_TEST(test_device_faults)
{
    const int64_t rows = 4, classes = 9, dim = 5;
    int32_t bad[4] = {1, 2, 9, 0};
    ipair tg = ipair_from(bad, rows);
    pair logits = pair_random(rows * classes, 32, -1, 1);
    pair probs = pair_zeros(rows * classes), loss = pair_zeros(rows);
    mhub_clear_error();
    expect_fault(dut->ops->softmax_xent_forward(dut, probs.d, loss.d, logits.d, tg.d, rows,
                                                classes),
                 "targets[2] = 9 is outside [0, 9)");
    CK_OK(dut->ops->synchronize(dut)); /* reported once, then clear */
    int32_t ids[4] = {0, -1, 3, 4};
    ipair id = ipair_from(ids, rows);
    pair table = pair_random(classes * dim, 33, -1, 1), out = pair_zeros(rows * dim);
    expect_fault(dut->ops->embedding_forward(dut, out.d, table.d, id.d, rows, classes, dim,
                                             false),
                 "ids[1] = -1 is outside [0, vocab = 9)");
    CK_OK(dut->ops->synchronize(dut));
}
END_TEST

/* A fault reported, then another before any wait: the second is reported
 * at the next wait, not lost to the clearing of the first. Every buffer
 * is ready before the first fault, so that nothing waits in between. */
START_TEST(test_device_fault_after_fault)
{
    const int64_t rows = 4, classes = 9, dim = 5;
    int32_t bad_targets[4] = {1, 9, 2, 0}, bad_ids[4] = {0, 1, 2, 12};
    ipair tg = ipair_from(bad_targets, rows), id = ipair_from(bad_ids, rows);
    pair logits = pair_random(rows * classes, 34, -1, 1);
    pair probs = pair_zeros(rows * classes), loss = pair_zeros(rows);
    pair table = pair_random(classes * dim, 35, -1, 1), out = pair_zeros(rows * dim);
    mhub_clear_error();
    expect_fault(dut->ops->softmax_xent_forward(dut, probs.d, loss.d, logits.d, tg.d, rows,
                                                classes),
                 "targets[1] = 9 is outside [0, 9)");
    expect_fault(dut->ops->embedding_forward(dut, out.d, table.d, id.d, rows, classes, dim,
                                             false),
                 "ids[3] = 12 is outside [0, vocab = 9)");
    CK_OK(dut->ops->synchronize(dut));
}
END_TEST

static void embedding_case(int64_t rows, int64_t vocab, int64_t dim, uint64_t seed)
{
    pair table = pair_random(vocab * dim, seed, -1, 1);
    ipair ids = ipair_random(rows, seed + 1, (uint32_t)(vocab / 8)); /* few ids: many repeats */
    pair out = pair_random(rows * dim, seed + 2, -1, 1);
    CK_OK(ref->ops->embedding_forward(ref, out.r, table.r, ids.r, rows, vocab, dim, true));
    CK_OK(dut->ops->embedding_forward(dut, out.d, table.d, ids.d, rows, vocab, dim, true));
    EXPECT_CLOSE(out, TOL_F32, "embedding_forward accumulate");
    CK_OK(ref->ops->embedding_forward(ref, out.r, table.r, ids.r, rows, vocab, dim, false));
    CK_OK(dut->ops->embedding_forward(dut, out.d, table.d, ids.d, rows, vocab, dim, false));
    expect_same_bits(out.r, out.d, (size_t)(rows * dim) * sizeof(float), "embedding_forward");
    pair dtable = pair_random(vocab * dim, seed + 3, -1, 1);
    CK_OK(ref->ops->embedding_backward(ref, dtable.r, out.r, ids.r, rows, vocab, dim));
    CK_OK(dut->ops->embedding_backward(dut, dtable.d, out.d, ids.d, rows, vocab, dim));
    EXPECT_CLOSE(dtable, TOL_F32, "embedding_backward");
}

/* The second shape has more rows than the CUDA backward stages ids at
 * once (2048), so its tile loop turns. */
START_TEST(test_embedding)
{
    embedding_case(517, 300, 96, 40);
    embedding_case(4500, 64, 40, 44);
}
END_TEST

static void norm_case(int64_t rows, int64_t dim, bool rms, bool with_bias)
{
    pair in = pair_random(rows * dim, 50, -2, 3), w = pair_random(dim, 51, 0.5f, 1.5f);
    pair b = pair_random(dim, 52, -0.5f, 0.5f), out = pair_zeros(rows * dim);
    pair mean = pair_zeros(rows), rstd = pair_zeros(rows);
    if (rms) {
        CK_OK(ref->ops->rmsnorm_forward(ref, out.r, rstd.r, in.r, w.r, rows, dim, 1e-5f));
        CK_OK(dut->ops->rmsnorm_forward(dut, out.d, rstd.d, in.d, w.d, rows, dim, 1e-5f));
    } else {
        CK_OK(ref->ops->layernorm_forward(ref, out.r, mean.r, rstd.r, in.r, w.r,
                                          with_bias ? b.r : NULL, rows, dim, 1e-5f));
        CK_OK(dut->ops->layernorm_forward(dut, out.d, mean.d, rstd.d, in.d, w.d,
                                          with_bias ? b.d : NULL, rows, dim, 1e-5f));
        EXPECT_CLOSE(mean, TOL_F32, "layernorm mean");
    }
    EXPECT_CLOSE(out, TOL_F32, rms ? "rmsnorm_forward" : "layernorm_forward");
    EXPECT_CLOSE(rstd, TOL_F32, "norm rstd");
    pair dout = pair_random(rows * dim, 53, -1, 1), din = pair_zeros(rows * dim);
    pair dw = pair_random(dim, 54, -1, 1), db = pair_random(dim, 55, -1, 1);
    if (rms) {
        CK_OK(ref->ops->rmsnorm_backward(ref, din.r, dw.r, dout.r, in.r, w.r, rstd.r, rows,
                                         dim));
        CK_OK(dut->ops->rmsnorm_backward(dut, din.d, dw.d, dout.d, in.d, w.d, rstd.d, rows,
                                         dim));
    } else {
        CK_OK(ref->ops->layernorm_backward(ref, din.r, dw.r, with_bias ? db.r : NULL, dout.r,
                                           in.r, w.r, mean.r, rstd.r, rows, dim));
        CK_OK(dut->ops->layernorm_backward(dut, din.d, dw.d, with_bias ? db.d : NULL, dout.d,
                                           in.d, w.d, mean.d, rstd.d, rows, dim));
        EXPECT_CLOSE(db, TOL_F32, "layernorm dbias");
    }
    EXPECT_CLOSE(din, TOL_F32, "norm din");
    EXPECT_CLOSE(dw, TOL_F32, "norm dweight");
}

START_TEST(test_norms)
{
    norm_case(64, 768, false, true);
    norm_case(1031, 1000, false, false);
    norm_case(64, 768, true, false);
    norm_case(5, 4097, true, false);
}
END_TEST

START_TEST(test_swiglu)
{
    const int64_t rows = 129, ffn = 1000;
    pair in = pair_random(rows * 2 * ffn, 60, -4, 4), out = pair_zeros(rows * ffn);
    CK_OK(ref->ops->swiglu_forward(ref, out.r, in.r, rows, ffn));
    CK_OK(dut->ops->swiglu_forward(dut, out.d, in.d, rows, ffn));
    EXPECT_CLOSE(out, TOL_F32, "swiglu_forward");
    pair dout = pair_random(rows * ffn, 61, -1, 1), din = pair_zeros(rows * 2 * ffn);
    CK_OK(ref->ops->swiglu_backward(ref, din.r, dout.r, in.r, rows, ffn));
    CK_OK(dut->ops->swiglu_backward(dut, din.d, dout.d, in.d, rows, ffn));
    EXPECT_CLOSE(din, TOL_F32, "swiglu_backward");
}
END_TEST

START_TEST(test_rope)
{
    const int64_t batch = 3, seq = 37, heads = 8, groups = 2, d = 64;
    const int64_t n = batch * seq * (heads + 2 * groups) * d;
    pair qkv = pair_random(n, 70, -1, 1);
    CK_OK(ref->ops->rope_forward(ref, qkv.r, batch, seq, heads, groups, d, 10000.0f));
    CK_OK(dut->ops->rope_forward(dut, qkv.d, batch, seq, heads, groups, d, 10000.0f));
    EXPECT_CLOSE(qkv, TOL_F32, "rope_forward");
    CK_OK(ref->ops->rope_backward(ref, qkv.r, batch, seq, heads, groups, d, 500000.0f));
    CK_OK(dut->ops->rope_backward(dut, qkv.d, batch, seq, heads, groups, d, 500000.0f));
    EXPECT_CLOSE(qkv, TOL_F32, "rope_backward");
    EXPECT_SAME_ERROR(ref->ops->rope_forward(ref, qkv.r, batch, seq, heads, 3, d, 1e4f),
                      dut->ops->rope_forward(dut, qkv.d, batch, seq, heads, 3, d, 1e4f));
}
END_TEST

/* The probabilities path on both backends, then the flash path of the
 * backend under test (when offered) against the reference's
 * probabilities path: same out and dqkv up to rounding (flash_tol: the
 * flash path may run its products in the backend's GEMM precision). */
static void attention_case_tol(int64_t batch, int64_t seq, int64_t heads, int64_t groups,
                               int64_t d, double flash_tol)
{
    const int64_t rows = batch * seq, width = (heads + 2 * groups) * d;
    const int64_t pn = batch * heads * seq * seq;
    pair qkv = pair_random(rows * width, 80, -2, 2), out = pair_zeros(rows * heads * d);
    pair probs = pair_zeros(pn), scratch = pair_zeros(pn), dqkv = pair_zeros(rows * width);
    pair dout = pair_random(rows * heads * d, 81, -1, 1);
    CK_OK(ref->ops->causal_attention_forward(ref, out.r, probs.r, qkv.r, batch, seq, heads,
                                             groups, d));
    CK_OK(dut->ops->causal_attention_forward(dut, out.d, probs.d, qkv.d, batch, seq, heads,
                                             groups, d));
    EXPECT_CLOSE(out, TOL_F32, "causal_attention_forward out");
    EXPECT_CLOSE(probs, TOL_F32, "causal_attention_forward probs");
    CK_OK(ref->ops->causal_attention_backward(ref, dqkv.r, scratch.r, dout.r, qkv.r, probs.r,
                                              batch, seq, heads, groups, d));
    CK_OK(dut->ops->causal_attention_backward(dut, dqkv.d, scratch.d, dout.d, qkv.d, probs.d,
                                              batch, seq, heads, groups, d));
    EXPECT_CLOSE(dqkv, TOL_F32, "causal_attention_backward");
    if (!dut->ops->flash_attention_forward) {
        free_all();
        return;
    }
    pair fout = pair_zeros(rows * heads * d), lse = pair_zeros(batch * heads * seq);
    pair fdqkv = pair_zeros(rows * width);
    size_t before = 0, after = 0, peak = 0;
    CK_OK(dut->ops->reset_peak(dut));
    CK_OK(dut->ops->memory_usage(dut, &before, NULL));
    CK_OK(dut->ops->flash_attention_forward(dut, fout.d, lse.d, qkv.d, batch, seq, heads,
                                            groups, d));
    CK_OK(dut->ops->flash_attention_backward(dut, fdqkv.d, dout.d, fout.d, qkv.d, lse.d, batch,
                                             seq, heads, groups, d));
    /* scratch a backend keeps for itself is not the caller's memory */
    CK_OK(dut->ops->memory_usage(dut, &after, &peak));
    ck_assert_uint_eq(after, before);
    ck_assert_uint_eq(peak, before);
    /* compare the flash results with the reference's probabilities path */
    fout.r = out.r;
    fdqkv.r = dqkv.r;
    EXPECT_CLOSE(fout, flash_tol, "flash_attention_forward out");
    EXPECT_CLOSE(fdqkv, flash_tol, "flash_attention_backward");
    free_all(); /* the buffer table holds a few cases */
}

static void attention_case(int64_t batch, int64_t seq, int64_t heads, int64_t groups,
                           int64_t d)
{
    attention_case_tol(batch, seq, heads, groups, d, TOL_F32);
}

static void attention_cases(void)
{
    attention_case(2, 70, 4, 2, 64);   /* grouped queries, seq not a tile multiple */
    attention_case(1, 128, 12, 12, 64); /* GPT-2's heads */
    attention_case(2, 33, 2, 1, 128);  /* Llama's head_dim */
    attention_case(3, 1, 2, 2, 16);
}

/* The CUDA backend's flash attention has three paths, chosen per call by
 * MHUB_CUDA_ATTENTION: cuBLAS GEMMs over chunks of (batch, head) pairs
 * ("gemm", the default in f32 and tf32), tiled CUDA-core kernels
 * ("tiled") and fused bf16 tensor-core kernels ("wmma", the default in
 * bf16 for head_dim 64 and 128). */
#define ATTENTION_PATH_ENV "MHUB_CUDA_ATTENTION"
#define ATTENTION_SCRATCH_ENV "MHUB_CUDA_ATTENTION_SCRATCH_KB"

/* The GEMM path with scratch budgets that make it work in chunks: at seq
 * 70 a pair takes 39 KB, so 48 KiB holds one pair per chunk (a group's two
 * query heads in two chunks, dK and dV added across them), 200 KiB two
 * (batch, group) units of two heads, 100 KiB half of a 4-head group. A budget that holds no pair is an
 * error when the GEMM path is asked for by name, and sends the default
 * choice to the tiled kernels. */
static void gemm_attention_chunks(void)
{
    setenv(ATTENTION_PATH_ENV, "gemm", 1);
    setenv(ATTENTION_SCRATCH_ENV, "48", 1);
    attention_case(2, 70, 4, 2, 64);
    setenv(ATTENTION_SCRATCH_ENV, "200", 1);
    attention_case(2, 70, 4, 2, 64);
    setenv(ATTENTION_SCRATCH_ENV, "100", 1);
    attention_case(2, 70, 4, 1, 64);  /* two pairs: a group's 4 heads in two chunks */

    setenv(ATTENTION_SCRATCH_ENV, "16", 1);
    float *out = alloc_on(dut, 70 * 4 * 64 * sizeof(float));
    float *lse = alloc_on(dut, 4 * 70 * sizeof(float));
    float *qkv = alloc_on(dut, 70 * 8 * 64 * sizeof(float));
    ck_assert_int_eq(dut->ops->flash_attention_forward(dut, out, lse, qkv, 1, 70, 4, 2, 64),
                     MHUB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "attention scratch budget"));
    unsetenv(ATTENTION_PATH_ENV);
    attention_case(2, 70, 4, 2, 64);
    setenv(ATTENTION_PATH_ENV, "fastest", 1);
    ck_assert_int_eq(dut->ops->flash_attention_forward(dut, out, lse, qkv, 1, 70, 4, 2, 64),
                     MHUB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "expected gemm, tiled or wmma"));
    unsetenv(ATTENTION_PATH_ENV);
    unsetenv(ATTENTION_SCRATCH_ENV);
}

START_TEST(test_attention)
{
    if (!dut_is_cuda()) {
        attention_cases();
        return;
    }
    setenv(ATTENTION_PATH_ENV, "gemm", 1);
    attention_cases();
    setenv(ATTENTION_PATH_ENV, "tiled", 1);
    attention_cases();
    unsetenv(ATTENTION_PATH_ENV);
    gemm_attention_chunks();
}
END_TEST

/* The GEMM path's products in tf32 and bf16 (on a GPU; the emulator's
 * GEMMs stay f32). Rounding every GEMM input so gives a relative error
 * of about 4e-4 (tf32) and 4e-3 (bf16) in out and dqkv at these sizes,
 * within the GEMMs' own tolerances. */
START_TEST(test_attention_tf32_bf16)
{
    if (!dut_is_cuda())
        return; /* the CPU computes every GEMM in f32 */
    setenv(ATTENTION_PATH_ENV, "gemm", 1);
    set_matmul(MHUB_MATMUL_TF32);
    attention_case_tol(2, 70, 4, 2, 64, TOL_TF32);
    attention_case_tol(1, 128, 12, 12, 64, TOL_TF32);
    set_matmul(MHUB_MATMUL_BF16);
    attention_case_tol(2, 70, 4, 2, 64, TOL_BF16);
    attention_case_tol(2, 33, 2, 1, 128, TOL_BF16);
    unsetenv(ATTENTION_PATH_ENV);
}
END_TEST

/* The wmma kernels round Q, K, V, dO, P and dS to bf16 whatever the
 * matmul precision (the emulator too: its wmma multiplies bf16 values),
 * so they meet the bf16 GEMMs' tolerance: 64-row tiles with seq not a
 * multiple of them (70, 33, 130), grouped queries (2 and 4 heads a group)
 * and both head_dim. */
static void wmma_attention_cases(void)
{
    attention_case_tol(2, 70, 4, 2, 64, TOL_BF16);
    attention_case_tol(1, 128, 12, 12, 64, TOL_BF16);
    attention_case_tol(2, 33, 2, 1, 128, TOL_BF16);
    attention_case_tol(1, 130, 4, 1, 128, TOL_BF16);
    attention_case_tol(3, 1, 2, 2, 64, TOL_BF16);
}

/* flash_attention_forward's out as the dut computes it now. */
static void flash_out(float *host, float *out, float *lse, const float *qkv, int64_t batch,
                      int64_t seq, int64_t heads, int64_t groups, int64_t d)
{
    CK_OK(dut->ops->flash_attention_forward(dut, out, lse, qkv, batch, seq, heads, groups, d));
    download(dut, host, out, (size_t)(batch * seq * heads * d) * sizeof(float));
}

/* In bf16 precision the default is the wmma path: the same bits as asked
 * for by name (the GEMM path's would differ). */
static void wmma_is_bf16_default(void)
{
    const int64_t batch = 1, seq = 70, heads = 4, groups = 2, d = 64;
    const size_t n_out = (size_t)(batch * seq * heads * d);
    pair qkv = pair_random(batch * seq * (heads + 2 * groups) * d, 82, -2, 2);
    float *out = alloc_on(dut, n_out * sizeof(float));
    float *lse = alloc_on(dut, (size_t)(batch * heads * seq) * sizeof(float));
    float *chosen = malloc(n_out * sizeof *chosen), *wmma = malloc(n_out * sizeof *wmma);
    float *gemm = malloc(n_out * sizeof *gemm);
    set_matmul(MHUB_MATMUL_BF16);
    flash_out(chosen, out, lse, qkv.d, batch, seq, heads, groups, d);
    setenv(ATTENTION_PATH_ENV, "wmma", 1);
    flash_out(wmma, out, lse, qkv.d, batch, seq, heads, groups, d);
    setenv(ATTENTION_PATH_ENV, "gemm", 1);
    flash_out(gemm, out, lse, qkv.d, batch, seq, heads, groups, d);
    unsetenv(ATTENTION_PATH_ENV);
    ck_assert_msg(memcmp(chosen, wmma, n_out * sizeof(float)) == 0,
                  "bf16 flash attention on %s: the default is not the wmma path", dut_name);
    ck_assert_msg(memcmp(gemm, wmma, n_out * sizeof(float)) != 0,
                  "bf16 flash attention on %s: the gemm and wmma paths agree in every bit",
                  dut_name);
    free(chosen);
    free(wmma);
    free(gemm);
    free_all();
}

/* The wmma kernels read 16-byte aligned rows 4 floats at a time and
 * others one at a time: buffers one float off the pool's alignment give
 * the same bits. */
static void wmma_unaligned_rows(void)
{
    const int64_t batch = 1, seq = 70, heads = 4, groups = 2, d = 64;
    const int64_t n_qkv = batch * seq * (heads + 2 * groups) * d, n_out = batch * seq * heads * d;
    const size_t qkv_bytes = (size_t)n_qkv * sizeof(float);
    const size_t out_bytes = (size_t)n_out * sizeof(float);
    const size_t lse_bytes = (size_t)(batch * heads * seq) * sizeof(float);
    pair qkv = pair_random(n_qkv, 83, -2, 2), dout = pair_random(n_out, 84, -1, 1);
    float *out = alloc_on(dut, out_bytes), *lse = alloc_on(dut, lse_bytes);
    float *dqkv = alloc_on(dut, qkv_bytes);
    float *qkv1 = (float *)alloc_on(dut, qkv_bytes + sizeof(float)) + 1;
    float *dout1 = (float *)alloc_on(dut, out_bytes + sizeof(float)) + 1;
    float *out1 = (float *)alloc_on(dut, out_bytes + sizeof(float)) + 1;
    float *dqkv1 = (float *)alloc_on(dut, qkv_bytes + sizeof(float)) + 1;
    float *lse1 = alloc_on(dut, lse_bytes);
    CK_OK(dut->ops->copy(dut, qkv1, qkv.d, qkv_bytes, MHUB_COPY_DEVICE_TO_DEVICE));
    CK_OK(dut->ops->copy(dut, dout1, dout.d, out_bytes, MHUB_COPY_DEVICE_TO_DEVICE));
    setenv(ATTENTION_PATH_ENV, "wmma", 1);
    CK_OK(dut->ops->flash_attention_forward(dut, out, lse, qkv.d, batch, seq, heads, groups, d));
    CK_OK(dut->ops->flash_attention_backward(dut, dqkv, dout.d, out, qkv.d, lse, batch, seq,
                                             heads, groups, d));
    CK_OK(dut->ops->flash_attention_forward(dut, out1, lse1, qkv1, batch, seq, heads, groups, d));
    CK_OK(dut->ops->flash_attention_backward(dut, dqkv1, dout1, out1, qkv1, lse1, batch, seq,
                                             heads, groups, d));
    unsetenv(ATTENTION_PATH_ENV);
    float *a = malloc(qkv_bytes), *b = malloc(qkv_bytes);
    download(dut, a, out, out_bytes);
    download(dut, b, out1, out_bytes);
    ck_assert_msg(memcmp(a, b, out_bytes) == 0, "wmma forward on %s: unaligned rows differ",
                  dut_name);
    download(dut, a, dqkv, qkv_bytes);
    download(dut, b, dqkv1, qkv_bytes);
    ck_assert_msg(memcmp(a, b, qkv_bytes) == 0, "wmma backward on %s: unaligned rows differ",
                  dut_name);
    free(a);
    free(b);
    free_all();
}

START_TEST(test_attention_wmma)
{
    if (!dut_is_cuda())
        return; /* a CUDA path */
    setenv(ATTENTION_PATH_ENV, "wmma", 1);
    wmma_attention_cases(); /* asked for by name in f32 precision */
    /* head_dim 32 has no wmma kernels: an error by name, another path by default */
    float *out = alloc_on(dut, 40 * 2 * 32 * sizeof(float));
    float *lse = alloc_on(dut, 2 * 40 * sizeof(float));
    float *qkv = alloc_on(dut, 40 * 4 * 32 * sizeof(float));
    float *dqkv = alloc_on(dut, 40 * 4 * 32 * sizeof(float));
    float *dout = alloc_on(dut, 40 * 2 * 32 * sizeof(float));
    ck_assert_int_eq(dut->ops->flash_attention_forward(dut, out, lse, qkv, 1, 40, 2, 1, 32),
                     MHUB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "head_dim must be 64 or 128"));
    ck_assert_int_eq(dut->ops->flash_attention_backward(dut, dqkv, dout, out, qkv, lse, 1, 40, 2,
                                                        1, 32),
                     MHUB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "head_dim must be 64 or 128"));
    free_all();
    unsetenv(ATTENTION_PATH_ENV);
    set_matmul(MHUB_MATMUL_BF16);
    wmma_attention_cases(); /* the default path in bf16 */
    attention_case_tol(2, 40, 2, 1, 32, TOL_BF16);
    wmma_is_bf16_default();
    wmma_unaligned_rows();
}
END_TEST

/* ---- elementwise utilities ---- */

START_TEST(test_cast_bits)
{
    /* specials, halfway cases and subnormals of both 16-bit formats */
    static const uint32_t special[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,
                                       0x7fc00000u, 0x7f800001u, 0x3f808000u, 0x3f818000u,
                                       0x3f80ffffu, 0x477fe000u, 0x477ff000u, 0x33800000u,
                                       0x00000001u, 0x387fc000u, 0x7f7fffffu, 0xc0490fdbu};
    const int64_t n = 4096;
    float *h = malloc((size_t)n * sizeof *h);
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits = i < 16 ? special[i] : (uint32_t)mhub_rng_below(7, 90, (uint64_t)i, 0xffffffffu);
        memcpy(&h[i], &bits, sizeof bits);
    }
    pair src = pair_from(h, n);
    const mhub_dtype types[3] = {MHUB_F32, MHUB_BF16, MHUB_F16};
    for (int a = 0; a < 3; a++) {
        for (int b = 0; b < 3; b++) {
            size_t mid_bytes = (size_t)n * mhub_dtype_size(types[a]);
            size_t out_bytes = (size_t)n * mhub_dtype_size(types[b]);
            void *rm = alloc_on(ref, mid_bytes), *dm = alloc_on(dut, mid_bytes);
            void *ro = alloc_on(ref, out_bytes), *dd = alloc_on(dut, out_bytes);
            CK_OK(ref->ops->cast(ref, rm, types[a], src.r, MHUB_F32, n));
            CK_OK(dut->ops->cast(dut, dm, types[a], src.d, MHUB_F32, n));
            CK_OK(ref->ops->cast(ref, ro, types[b], rm, types[a], n));
            CK_OK(dut->ops->cast(dut, dd, types[b], dm, types[a], n));
            char what[64];
            snprintf(what, sizeof what, "cast %s -> %s", mhub_dtype_name(types[a]),
                     mhub_dtype_name(types[b]));
            expect_same_bits(ro, dd, out_bytes, what);
        }
    }
    free(h);
}
END_TEST

START_TEST(test_scale_axpy_sum_squares)
{
    const int64_t n = 1000003;
    pair x = pair_random(n, 100, -1, 1), y = pair_random(n, 101, -1, 1);
    CK_OK(ref->ops->scale(ref, x.r, n, 0.3f));
    CK_OK(dut->ops->scale(dut, x.d, n, 0.3f));
    expect_same_bits(x.r, x.d, (size_t)n * sizeof(float), "scale");
    CK_OK(ref->ops->axpy(ref, y.r, x.r, n, -1.7f));
    CK_OK(dut->ops->axpy(dut, y.d, x.d, n, -1.7f));
    EXPECT_CLOSE(y, TOL_F32, "axpy");
    double sr = 0, sd = 0;
    CK_OK(ref->ops->sum_squares(ref, y.r, n, &sr));
    CK_OK(dut->ops->sum_squares(dut, y.d, n, &sd));
    ck_assert_msg(fabs(sr - sd) <= 1e-12 * sr, "sum_squares %.17g vs %.17g", sd, sr);
    CK_OK(dut->ops->sum_squares(dut, y.d, 0, &sd));
    ck_assert(sd == 0.0);
    EXPECT_SAME_ERROR(ref->ops->scale(ref, x.r, -1, 2.0f), dut->ops->scale(dut, x.d, -1, 2.0f));
    EXPECT_SAME_ERROR(ref->ops->axpy(ref, y.r, y.r + 1, 10, 2.0f),
                      dut->ops->axpy(dut, y.d, y.d + 1, 10, 2.0f));
}
END_TEST

START_TEST(test_random_fills_bits)
{
    const int64_t n = 300001;
    pair a = pair_zeros(n);
    CK_OK(ref->ops->fill_normal(ref, a.r, n, 42, 7, 1000, 0.0f, 0.02f));
    CK_OK(dut->ops->fill_normal(dut, a.d, n, 42, 7, 1000, 0.0f, 0.02f));
    expect_same_bits(a.r, a.d, (size_t)n * sizeof(float), "fill_normal");
    CK_OK(ref->ops->fill_uniform(ref, a.r, n, 43, 8, 5, -0.1f, 0.1f));
    CK_OK(dut->ops->fill_uniform(dut, a.d, n, 43, 8, 5, -0.1f, 0.1f));
    expect_same_bits(a.r, a.d, (size_t)n * sizeof(float), "fill_uniform");
}
END_TEST

START_TEST(test_optimizers)
{
    const int64_t n = 200001;
    pair p = pair_random(n, 110, -1, 1), g = pair_random(n, 111, -1, 1);
    pair mom = pair_zeros(n), m = pair_zeros(n), v = pair_zeros(n);
    for (int step = 1; step <= 3; step++) {
        CK_OK(ref->ops->sgd_step(ref, p.r, g.r, mom.r, n, 0.1f, 0.9f, 0.01f));
        CK_OK(dut->ops->sgd_step(dut, p.d, g.d, mom.d, n, 0.1f, 0.9f, 0.01f));
        CK_OK(ref->ops->adamw_step(ref, p.r, g.r, m.r, v.r, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f,
                                   step));
        CK_OK(dut->ops->adamw_step(dut, p.d, g.d, m.d, v.d, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f,
                                   step));
    }
    EXPECT_CLOSE(p, TOL_F32, "sgd + adamw parameters");
    EXPECT_CLOSE(mom, TOL_F32, "sgd momentum");
    EXPECT_CLOSE(m, TOL_F32, "adamw m");
    EXPECT_CLOSE(v, TOL_F32, "adamw v");
    EXPECT_SAME_ERROR(
        ref->ops->adamw_step(ref, p.r, g.r, m.r, v.r, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0),
        dut->ops->adamw_step(dut, p.d, g.d, m.d, v.d, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0));
}
END_TEST

/* ---- the GPT against PyTorch's golden files ---- */

static mhub_safetensors *golden;

static void open_golden(void)
{
    char path[1024];
    mhub_test_data_path("gpt/golden.safetensors", path, sizeof path);
    CK_OK(mhub_safetensors_open(path, &golden));
}

static int golden_int(const char *key)
{
    const char *v = mhub_safetensors_metadata(golden, key);
    ck_assert_ptr_nonnull(v);
    return atoi(v);
}

static int32_t *golden_ids_on(mhub_backend *be, const char *model, const char *what, int64_t n)
{
    char key[64];
    snprintf(key, sizeof key, "%s/%s", model, what);
    int i = mhub_safetensors_find(golden, key);
    ck_assert_int_ge(i, 0);
    mhub_safetensors_tensor t;
    CK_OK(mhub_safetensors_info(golden, i, &t));
    ck_assert_int_eq(t.numel, n);
    int32_t *ids = alloc_on(be, (size_t)n * sizeof *ids);
    upload(be, ids, t.data, (size_t)n * sizeof *ids);
    return ids;
}

/* The worst ||x - golden|| / ||golden|| over the parameters' `kind`
 * ("param" values or "grad" gradients). */
static double golden_param_err(mhub_gpt *g, const char *model, const char *kind, bool grads)
{
    mhub_param_list *pl = mhub_gpt_params(g);
    double worst = 0;
    for (int i = 0; i < pl->count; i++) {
        mhub_tensor *t = grads ? &pl->items[i].grad : &pl->items[i].value;
        char key[160];
        snprintf(key, sizeof key, "%s/%s/%s", model, kind, pl->items[i].name);
        float *want = malloc((size_t)t->numel * sizeof *want);
        float *have = malloc((size_t)t->numel * sizeof *have);
        CK_OK(mhub_safetensors_read_f32(golden, key, t->shape, t->ndim, want));
        download(dut, have, t->data, (size_t)t->numel * sizeof *have);
        double num = 0, den = 0;
        for (int64_t k = 0; k < t->numel; k++) {
            num += ((double)have[k] - want[k]) * ((double)have[k] - want[k]);
            den += (double)want[k] * want[k];
        }
        double e = den > 0 ? sqrt(num / den) : sqrt(num);
        if (e > worst)
            worst = e;
        free(want);
        free(have);
    }
    return worst;
}

static void golden_case(const char *model)
{
    if (!golden)
        open_golden();
    char key[160];
    snprintf(key, sizeof key, "%s/config", model);
    const char *text = mhub_safetensors_metadata(golden, key);
    ck_assert_ptr_nonnull(text);
    mhub_provider_config *pc = NULL;
    CK_OK(mhub_config_from_json(text, strlen(text), key, MHUB_CONFIG_STRICT, &pc));
    mhub_gpt_config *cfg = (mhub_gpt_config *)pc;
    int b = golden_int("batch"), t = golden_int("seq");
    int64_t n = (int64_t)b * t, v = mhub_gpt_padded_vocab_size(cfg);
    mhub_provide_args a = {.pre_process = true, .post_process = true, .vp_stage = -1,
                           .pp_size = 1, .vp_size = 1, .tp_size = 1, .backend = dut,
                           .seed = 5, .tp_seed = 6, .micro_batch = b};
    mhub_gpt *g = NULL;
    CK_OK(mhub_gpt_create(cfg, &a, &g));
    mhub_param_list *pl = mhub_gpt_params(g);
    for (int i = 0; i < pl->count; i++) {
        mhub_tensor *val = &pl->items[i].value;
        float *h = malloc((size_t)val->numel * sizeof *h);
        snprintf(key, sizeof key, "%s/param/%s", model, pl->items[i].name);
        CK_OK(mhub_safetensors_read_f32(golden, key, val->shape, val->ndim, h));
        upload(dut, val->data, h, (size_t)val->numel * sizeof *h);
        free(h);
    }
    int32_t *tokens = golden_ids_on(dut, model, "tokens", n);
    int32_t *targets = golden_ids_on(dut, model, "targets", n);
    float loss = 0, ref_loss = 0;
    CK_OK(mhub_param_list_zero_grad(pl));
    CK_OK(mhub_gpt_forward(g, tokens, targets, b, t, &loss));
    snprintf(key, sizeof key, "%s/loss", model);
    CK_OK(mhub_safetensors_read_f32(golden, key, NULL, -1, &ref_loss));
    ck_assert_msg(fabs(loss - ref_loss) <= 1e-5 * fabs(ref_loss), "%s loss on %s: %.9g vs %.9g",
                  model, dut_name, loss, ref_loss);
    float *want = malloc((size_t)(n * v) * sizeof *want), *have = malloc((size_t)(n * v) * sizeof *have);
    snprintf(key, sizeof key, "%s/logits", model);
    int64_t shape[2] = {n, v};
    CK_OK(mhub_safetensors_read_f32(golden, key, shape, 2, want));
    download(dut, have, mhub_gpt_logits(g), (size_t)(n * v) * sizeof *have);
    double num = 0, den = 0;
    for (int64_t k = 0; k < n * v; k++) {
        num += ((double)have[k] - want[k]) * ((double)have[k] - want[k]);
        den += (double)want[k] * want[k];
    }
    ck_assert_msg(sqrt(num / den) < 1e-5, "%s logits on %s: relative error %.3g", model,
                  dut_name, sqrt(num / den));
    CK_OK(mhub_gpt_backward(g, 1.0f / (float)n));
    double gerr = golden_param_err(g, model, "grad", true);
    ck_assert_msg(gerr < 1e-4, "%s gradients on %s: relative error %.3g", model, dut_name, gerr);
    free(want);
    free(have);
    mhub_gpt_free(g);
    mhub_config_free(&cfg->base);
}

/* On CUDA, through each flash attention path. */
static void golden_cases(const char *model)
{
    if (!dut_is_cuda()) {
        golden_case(model);
        return;
    }
    setenv(ATTENTION_PATH_ENV, "gemm", 1);
    golden_case(model);
    setenv(ATTENTION_PATH_ENV, "tiled", 1);
    golden_case(model);
    unsetenv(ATTENTION_PATH_ENV);
}

START_TEST(test_golden_gpt2) { golden_cases("gpt2"); }
END_TEST

START_TEST(test_golden_llama) { golden_cases("llama"); }
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("conformance");
    TCase *tc = tcase_create("ops");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_suite_detects_differences);
    tcase_add_test(tc, test_memory);
    tcase_add_test(tc, test_cuda_bad_input);
    tcase_add_test(tc, test_cuda_alloc_each);
    tcase_add_test(tc, test_gemm_f32);
    tcase_add_test(tc, test_gemm_tf32_bf16);
    tcase_add_test(tc, test_bias_gelu);
    tcase_add_test(tc, test_softmax_xent);
    tcase_add_test(tc, test_device_faults);
    tcase_add_test(tc, test_device_fault_after_fault);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_norms);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_attention);
    tcase_add_test(tc, test_attention_tf32_bf16);
    tcase_add_test(tc, test_attention_wmma);
    tcase_add_test(tc, test_cast_bits);
    tcase_add_test(tc, test_scale_axpy_sum_squares);
    tcase_add_test(tc, test_random_fills_bits);
    tcase_add_test(tc, test_optimizers);
    tcase_add_test(tc, test_golden_gpt2);
    tcase_add_test(tc, test_golden_llama);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *want = getenv("MHUB_TEST_BACKEND");
    dut_name = want && *want ? want : "cpu";
    if (mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &ref) != MHUB_OK) {
        fprintf(stderr, "cannot create the CPU reference backend: %s\n", mhub_last_error());
        return EXIT_FAILURE;
    }
    mhub_status s;
    if (strcmp(dut_name, "cpu") == 0) {
        s = mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 2, .flash_attention = true},
                                    &dut);
    } else if (strcmp(dut_name, "cuda") == 0) {
        char why[256];
        if (!mhub_cuda_available(why, sizeof why)) {
            printf("SKIP: the conformance suite on cuda: %s\n", why);
            mhub_backend_free(ref);
            return 77;
        }
        /* a modest pool: the suite's largest case is ~100 MB */
        s = mhub_cuda_backend_create(&(mhub_cuda_options){.device = -1,
                                                          .pool_bytes = (size_t)2 << 30},
                                     &dut);
#ifdef MHUB_TEST_CUDA_EMU
    } else if (strcmp(dut_name, "cuda-emu") == 0) {
        s = mhub_cuda_emu_backend_create(&(mhub_cuda_options){.device = -1,
                                                              .pool_bytes = (size_t)2 << 30},
                                         &dut);
#endif
    } else {
        fprintf(stderr, "MHUB_TEST_BACKEND = '%s': expected cpu, cuda or cuda-emu\n", dut_name);
        return EXIT_FAILURE;
    }
    if (s != MHUB_OK) {
        fprintf(stderr, "cannot create the %s backend: %s\n", dut_name, mhub_last_error());
        return EXIT_FAILURE;
    }
    printf("conformance: %s against the CPU reference\n", dut_name);
    int rc = mhub_test_main(make_suite());
    if (golden)
        mhub_safetensors_close(golden);
    mhub_backend_free(dut);
    mhub_backend_free(ref);
    return rc;
}
