/* test_backend_args.c - the argument contract every backend checks its
 * calls against (src/backend_args.h).
 *
 * Each check is called with good arguments (MHUB_OK) and with every kind
 * of bad argument it refuses: MHUB_ERR_INVALID_ARG with a message that
 * starts with the operation's name and names the argument. The pointers
 * are stand-ins for device memory: addresses in the first 64 KiB, which
 * Linux never maps (vm.mmap_min_addr), so a check that read through one
 * would crash the test. Last, the CPU backend's kernels are shown to
 * report a bad call in exactly the contract's words. */
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "src/backend_args.h"
#include "testutil.h"

/* Slot i (1..15) of the stand-in address space: 4 KiB apart, so arrays
 * of up to 1024 floats in different slots are separate. */
#define DEV(i) ((float *)(uintptr_t)((uintptr_t)(i) * 4096u))
#define IDS(i) ((int32_t *)(uintptr_t)((uintptr_t)(i) * 4096u))
/* For arrays too large for those slots: 1 TiB apart. */
#define FAR(i) ((float *)(uintptr_t)((uint64_t)(i) << 40))

/* Too large for any count (MAX_ELEMENTS is INT64_MAX / 8). */
#define HUGE_COUNT (INT64_MAX / 4)
/* Fits as a count, but any product of two of them does not. */
#define BIG_COUNT ((int64_t)1 << 40)

#define CK_REJECTS(call, op, arg)                                                        \
    do {                                                                                 \
        CK_FAILS(MHUB_ERR_INVALID_ARG, (call));                                          \
        const char *ck_m_ = mhub_last_error();                                           \
        ck_assert_msg(strncmp(ck_m_, op ": ", strlen(op ": ")) == 0,                     \
                      "'%s' does not start with '%s: '", ck_m_, op);                     \
        ck_assert_msg(strstr(ck_m_ + strlen(op ": "), (arg)) != NULL,                    \
                      "'%s' does not name '%s'", ck_m_, (arg));                          \
    } while (0)

/* ---- memory ---- */

START_TEST(test_memset_zero)
{
    CK_OK(mhub_args_memset_zero(DEV(1), 64));
    CK_OK(mhub_args_memset_zero(NULL, 0));
    CK_REJECTS(mhub_args_memset_zero(NULL, 8), "memset_zero", "ptr is NULL");
    CK_REJECTS(mhub_args_memset_zero(DEV(1), SIZE_MAX), "memset_zero", "bytes");
}
END_TEST

START_TEST(test_copy)
{
    for (int k = MHUB_COPY_HOST_TO_DEVICE; k <= MHUB_COPY_DEVICE_TO_DEVICE; k++)
        CK_OK(mhub_args_copy(DEV(1), DEV(2), 4096, (mhub_copy_kind)k));
    CK_OK(mhub_args_copy(NULL, NULL, 0, MHUB_COPY_HOST_TO_DEVICE));
    CK_OK(mhub_args_copy(DEV(1), DEV(1), 64, MHUB_COPY_DEVICE_TO_DEVICE)); /* onto itself */
    CK_REJECTS(mhub_args_copy(DEV(1), DEV(2), 4, (mhub_copy_kind)7), "copy", "kind = 7");
    CK_REJECTS(mhub_args_copy(NULL, DEV(2), 4, MHUB_COPY_HOST_TO_DEVICE), "copy", "dst is NULL");
    CK_REJECTS(mhub_args_copy(DEV(1), NULL, 4, MHUB_COPY_HOST_TO_DEVICE), "copy", "src is NULL");
    CK_REJECTS(mhub_args_copy(DEV(1), (char *)DEV(1) + 4, 8, MHUB_COPY_DEVICE_TO_DEVICE), "copy",
               "overlap");
}
END_TEST

/* ---- dense algebra ---- */

START_TEST(test_gemm)
{
    float *a = DEV(1), *b = DEV(2), *c = DEV(3);
    /* A 4x3, B 3x5, C 4x5, and the transposed storages. */
    CK_OK(mhub_args_gemm(false, false, 4, 5, 3, a, 3, b, 5, c, 5));
    CK_OK(mhub_args_gemm(true, true, 4, 5, 3, a, 4, b, 3, c, 5));
    CK_OK(mhub_args_gemm(false, false, 4, 5, 3, a, 8, b, 9, c, 6)); /* padded rows */
    CK_OK(mhub_args_gemm(false, false, 0, 5, 3, NULL, 3, NULL, 5, NULL, 5));
    CK_OK(mhub_args_gemm(false, false, 4, 5, 0, NULL, 1, NULL, 5, c, 5)); /* C = beta C */

    CK_REJECTS(mhub_args_gemm(false, false, -1, 5, 3, a, 3, b, 5, c, 5), "gemm", "m = -1");
    CK_REJECTS(mhub_args_gemm(false, false, 4, -5, 3, a, 3, b, 5, c, 5), "gemm", "n = -5");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, -3, a, 3, b, 5, c, 5), "gemm", "k = -3");
    CK_REJECTS(mhub_args_gemm(false, false, (int64_t)INT_MAX + 1, 5, 3, a, 3, b, 5, c, 5),
               "gemm", "m = 2147483648 exceeds INT_MAX");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, a, 2, b, 5, c, 5), "gemm", "lda = 2");
    CK_REJECTS(mhub_args_gemm(true, false, 4, 5, 3, a, 3, b, 5, c, 5), "gemm", "lda = 3");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, a, 3, b, 4, c, 5), "gemm", "ldb = 4");
    CK_REJECTS(mhub_args_gemm(false, true, 4, 5, 3, a, 3, b, 2, c, 5), "gemm", "ldb = 2");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, a, 3, b, 5, c, 4), "gemm", "ldc = 4");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, a, (int64_t)INT_MAX + 1, b, 5, c, 5),
               "gemm", "lda = 2147483648 exceeds INT_MAX");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, NULL, 3, b, 5, c, 5), "gemm", "a is NULL");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, a, 3, NULL, 5, c, 5), "gemm", "b is NULL");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, a, 3, b, 5, NULL, 5), "gemm", "c is NULL");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, a, 3, b, 5, a + 11, 5), "gemm",
               "c and a overlap");
    CK_REJECTS(mhub_args_gemm(false, false, 4, 5, 3, a, 3, b, 5, b + 14, 5), "gemm",
               "c and b overlap");
}
END_TEST

/* ---- layer kernels ---- */

START_TEST(test_bias)
{
    float *x = DEV(1), *bias = DEV(2);
    CK_OK(mhub_args_bias_add(x, bias, 4, 8));
    CK_OK(mhub_args_bias_add(NULL, NULL, 0, 8));
    CK_OK(mhub_args_bias_backward(bias, x, 4, 8));
    CK_OK(mhub_args_bias_backward(NULL, NULL, 4, 0));

    CK_REJECTS(mhub_args_bias_add(x, bias, -1, 8), "bias_add", "rows = -1");
    CK_REJECTS(mhub_args_bias_add(x, bias, 4, -8), "bias_add", "cols = -8");
    CK_REJECTS(mhub_args_bias_add(x, bias, HUGE_COUNT, 8), "bias_add", "rows = ");
    CK_REJECTS(mhub_args_bias_add(x, bias, BIG_COUNT, BIG_COUNT), "bias_add",
               "is too many elements");
    CK_REJECTS(mhub_args_bias_add(NULL, bias, 4, 8), "bias_add", "out is NULL");
    CK_REJECTS(mhub_args_bias_add(x, NULL, 4, 8), "bias_add", "bias is NULL");
    CK_REJECTS(mhub_args_bias_add(x, x + 31, 4, 8), "bias_add", "out and bias overlap");

    CK_REJECTS(mhub_args_bias_backward(bias, x, -4, 8), "bias_backward", "rows = -4");
    CK_REJECTS(mhub_args_bias_backward(bias, x, 4, HUGE_COUNT), "bias_backward", "cols = ");
    CK_REJECTS(mhub_args_bias_backward(bias, NULL, 4, 8), "bias_backward", "dout is NULL");
    CK_REJECTS(mhub_args_bias_backward(NULL, x, 4, 8), "bias_backward", "dbias is NULL");
    CK_REJECTS(mhub_args_bias_backward(x + 4, x, 4, 8), "bias_backward",
               "dbias and dout overlap");
}
END_TEST

START_TEST(test_gelu)
{
    float *x = DEV(1), *y = DEV(2), *z = DEV(3);
    CK_OK(mhub_args_gelu_forward(y, x, 100));
    CK_OK(mhub_args_gelu_forward(x, x, 100)); /* in place */
    CK_OK(mhub_args_gelu_forward(NULL, NULL, 0));
    CK_OK(mhub_args_gelu_backward(z, x, y, 100));
    CK_OK(mhub_args_gelu_backward(y, x, y, 100)); /* din over dout */

    CK_REJECTS(mhub_args_gelu_forward(y, x, -1), "gelu_forward", "n = -1 is negative");
    CK_REJECTS(mhub_args_gelu_forward(y, x, HUGE_COUNT), "gelu_forward", "n = ");
    CK_REJECTS(mhub_args_gelu_forward(NULL, x, 4), "gelu_forward", "out is NULL");
    CK_REJECTS(mhub_args_gelu_forward(y, NULL, 4), "gelu_forward", "in is NULL");
    CK_REJECTS(mhub_args_gelu_forward(x + 1, x, 4), "gelu_forward", "out and in partly overlap");

    CK_REJECTS(mhub_args_gelu_backward(z, x, y, -2), "gelu_backward", "n = -2");
    CK_REJECTS(mhub_args_gelu_backward(NULL, x, y, 4), "gelu_backward", "din is NULL");
    CK_REJECTS(mhub_args_gelu_backward(z, NULL, y, 4), "gelu_backward", "in is NULL");
    CK_REJECTS(mhub_args_gelu_backward(z, x, NULL, 4), "gelu_backward", "dout is NULL");
    CK_REJECTS(mhub_args_gelu_backward(y + 2, x, y, 4), "gelu_backward",
               "din and dout partly overlap");
    CK_REJECTS(mhub_args_gelu_backward(x, x, y, 4), "gelu_backward", "din and in overlap");
}
END_TEST

START_TEST(test_softmax_xent)
{
    float *logits = DEV(1), *probs = DEV(2), *losses = DEV(3);
    int32_t *t = IDS(4);
    CK_OK(mhub_args_softmax_xent_forward(probs, losses, logits, t, 4, 10));
    CK_OK(mhub_args_softmax_xent_forward(logits, losses, logits, t, 4, 10)); /* in place */
    CK_OK(mhub_args_softmax_xent_forward(NULL, NULL, NULL, NULL, 0, 10));
    CK_OK(mhub_args_softmax_xent_backward(logits, probs, t, 4, 10, 0.25f));
    CK_OK(mhub_args_softmax_xent_backward(probs, probs, t, 4, 10, 0.25f)); /* in place */

    CK_REJECTS(mhub_args_softmax_xent_forward(probs, losses, logits, t, -4, 10),
               "softmax_xent_forward", "rows = -4");
    CK_REJECTS(mhub_args_softmax_xent_forward(probs, losses, logits, t, 4, -10),
               "softmax_xent_forward", "classes = -10");
    CK_REJECTS(mhub_args_softmax_xent_forward(probs, losses, logits, t, BIG_COUNT, BIG_COUNT),
               "softmax_xent_forward", "classes = 1099511627776 is too many elements");
    CK_REJECTS(mhub_args_softmax_xent_forward(NULL, losses, logits, t, 4, 10),
               "softmax_xent_forward", "probs is NULL");
    CK_REJECTS(mhub_args_softmax_xent_forward(probs, losses, NULL, t, 4, 10),
               "softmax_xent_forward", "logits is NULL");
    CK_REJECTS(mhub_args_softmax_xent_forward(probs, NULL, logits, t, 4, 10),
               "softmax_xent_forward", "losses is NULL");
    CK_REJECTS(mhub_args_softmax_xent_forward(probs, losses, logits, NULL, 4, 10),
               "softmax_xent_forward", "targets is NULL");
    CK_REJECTS(mhub_args_softmax_xent_forward(logits + 3, losses, logits, t, 4, 10),
               "softmax_xent_forward", "probs and logits partly overlap");
    CK_REJECTS(mhub_args_softmax_xent_forward(probs, probs + 39, logits, t, 4, 10),
               "softmax_xent_forward", "losses and probs overlap");
    CK_REJECTS(mhub_args_softmax_xent_forward(probs, logits + 2, logits, t, 4, 10),
               "softmax_xent_forward", "losses and logits overlap");

    CK_REJECTS(mhub_args_softmax_xent_backward(logits, probs, t, -1, 10, 1.0f),
               "softmax_xent_backward", "rows = -1");
    CK_REJECTS(mhub_args_softmax_xent_backward(logits, probs, t, 4, -1, 1.0f),
               "softmax_xent_backward", "classes = -1");
    CK_REJECTS(mhub_args_softmax_xent_backward(NULL, probs, t, 4, 10, 1.0f),
               "softmax_xent_backward", "dlogits is NULL");
    CK_REJECTS(mhub_args_softmax_xent_backward(logits, NULL, t, 4, 10, 1.0f),
               "softmax_xent_backward", "probs is NULL");
    CK_REJECTS(mhub_args_softmax_xent_backward(logits, probs, NULL, 4, 10, 1.0f),
               "softmax_xent_backward", "targets is NULL");
    CK_REJECTS(mhub_args_softmax_xent_backward(probs + 1, probs, t, 4, 10, 1.0f),
               "softmax_xent_backward", "dlogits and probs partly overlap");
}
END_TEST

/* ---- transformer kernels ---- */

START_TEST(test_embedding)
{
    float *act = DEV(1), *table = DEV(2);
    int32_t *ids = IDS(3);
    CK_OK(mhub_args_embedding_forward(act, table, ids, 4, 50, 8));
    CK_OK(mhub_args_embedding_forward(NULL, NULL, NULL, 0, 50, 8));
    CK_OK(mhub_args_embedding_backward(table, act, ids, 4, 50, 8));

    CK_REJECTS(mhub_args_embedding_forward(act, table, ids, -4, 50, 8), "embedding_forward",
               "rows = -4");
    CK_REJECTS(mhub_args_embedding_forward(act, table, ids, 4, 50, -8), "embedding_forward",
               "dim = -8");
    CK_REJECTS(mhub_args_embedding_forward(act, table, ids, 4, -50, 8), "embedding_forward",
               "vocab = -50");
    CK_REJECTS(mhub_args_embedding_forward(act, table, ids, 4, BIG_COUNT, BIG_COUNT),
               "embedding_forward", "vocab x dim");
    CK_REJECTS(mhub_args_embedding_forward(NULL, table, ids, 4, 50, 8), "embedding_forward",
               "out is NULL");
    CK_REJECTS(mhub_args_embedding_forward(act, NULL, ids, 4, 50, 8), "embedding_forward",
               "table is NULL");
    CK_REJECTS(mhub_args_embedding_forward(act, table, NULL, 4, 50, 8), "embedding_forward",
               "ids is NULL");
    CK_REJECTS(mhub_args_embedding_forward(table + 8, table, ids, 4, 50, 8), "embedding_forward",
               "out and table overlap");
    CK_REJECTS(mhub_args_embedding_forward(act, table, (int32_t *)(act + 4), 4, 50, 8),
               "embedding_forward", "out and ids overlap");

    CK_REJECTS(mhub_args_embedding_backward(table, act, ids, 4, -1, 8), "embedding_backward",
               "vocab = -1");
    CK_REJECTS(mhub_args_embedding_backward(NULL, act, ids, 4, 50, 8), "embedding_backward",
               "dtable is NULL");
    CK_REJECTS(mhub_args_embedding_backward(table, NULL, ids, 4, 50, 8), "embedding_backward",
               "dout is NULL");
    CK_REJECTS(mhub_args_embedding_backward(table, act, NULL, 4, 50, 8), "embedding_backward",
               "ids is NULL");
    CK_REJECTS(mhub_args_embedding_backward(table, table + 100, ids, 4, 50, 8),
               "embedding_backward", "dtable and dout overlap");
    CK_REJECTS(mhub_args_embedding_backward(table, act, (int32_t *)table, 4, 50, 8),
               "embedding_backward", "dtable and ids overlap");
}
END_TEST

START_TEST(test_layernorm)
{
    float *out = DEV(1), *mean = DEV(2), *rstd = DEV(3), *in = DEV(4), *w = DEV(5), *b = DEV(6);
    float *din = DEV(7), *dw = DEV(8), *db = DEV(9), *dout = DEV(10);
    CK_OK(mhub_args_layernorm_forward(out, mean, rstd, in, w, b, 4, 32, 1e-5f));
    CK_OK(mhub_args_layernorm_forward(out, mean, rstd, in, w, NULL, 4, 32, 0.0f));
    CK_OK(mhub_args_layernorm_forward(NULL, NULL, NULL, NULL, NULL, NULL, 0, 32, 1e-5f));
    CK_OK(mhub_args_layernorm_backward(din, dw, db, dout, in, w, mean, rstd, 4, 32));
    CK_OK(mhub_args_layernorm_backward(din, dw, NULL, dout, in, w, mean, rstd, 4, 32));

    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, in, w, b, -4, 32, 1e-5f),
               "layernorm_forward", "rows = -4");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, in, w, b, 4, -32, 1e-5f),
               "layernorm_forward", "dim = -32");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, in, w, b, BIG_COUNT, BIG_COUNT,
                                           1e-5f),
               "layernorm_forward", "too many elements");
    CK_REJECTS(mhub_args_layernorm_forward(NULL, mean, rstd, in, w, b, 4, 32, 1e-5f),
               "layernorm_forward", "out is NULL");
    CK_REJECTS(mhub_args_layernorm_forward(out, NULL, rstd, in, w, b, 4, 32, 1e-5f),
               "layernorm_forward", "mean is NULL");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, NULL, in, w, b, 4, 32, 1e-5f),
               "layernorm_forward", "rstd is NULL");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, NULL, w, b, 4, 32, 1e-5f),
               "layernorm_forward", "in is NULL");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, in, NULL, b, 4, 32, 1e-5f),
               "layernorm_forward", "weight is NULL");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, in, w, b, 4, 32, -1e-5f),
               "layernorm_forward", "eps = ");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, in, w, b, 4, 32, NAN),
               "layernorm_forward", "eps = nan");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, in, w, b, 4, 32, INFINITY),
               "layernorm_forward", "eps = inf");
    CK_REJECTS(mhub_args_layernorm_forward(in, mean, rstd, in, w, b, 4, 32, 1e-5f),
               "layernorm_forward", "out and in overlap");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, mean + 3, in, w, b, 4, 32, 1e-5f),
               "layernorm_forward", "mean and rstd overlap");
    CK_REJECTS(mhub_args_layernorm_forward(out, mean, rstd, in, w, rstd, 4, 32, 1e-5f),
               "layernorm_forward", "rstd and bias overlap");

    CK_REJECTS(mhub_args_layernorm_backward(din, dw, db, dout, in, w, mean, rstd, 4, -1),
               "layernorm_backward", "dim = -1");
    CK_REJECTS(mhub_args_layernorm_backward(NULL, dw, db, dout, in, w, mean, rstd, 4, 32),
               "layernorm_backward", "din is NULL");
    CK_REJECTS(mhub_args_layernorm_backward(din, NULL, db, dout, in, w, mean, rstd, 4, 32),
               "layernorm_backward", "dweight is NULL");
    CK_REJECTS(mhub_args_layernorm_backward(din, dw, db, NULL, in, w, mean, rstd, 4, 32),
               "layernorm_backward", "dout is NULL");
    CK_REJECTS(mhub_args_layernorm_backward(din, dw, db, dout, NULL, w, mean, rstd, 4, 32),
               "layernorm_backward", "in is NULL");
    CK_REJECTS(mhub_args_layernorm_backward(din, dw, db, dout, in, NULL, mean, rstd, 4, 32),
               "layernorm_backward", "weight is NULL");
    CK_REJECTS(mhub_args_layernorm_backward(din, dw, db, dout, in, w, NULL, rstd, 4, 32),
               "layernorm_backward", "mean is NULL");
    CK_REJECTS(mhub_args_layernorm_backward(din, dw, db, dout, in, w, mean, NULL, 4, 32),
               "layernorm_backward", "rstd is NULL");
    CK_REJECTS(mhub_args_layernorm_backward(dout, dw, db, dout, in, w, mean, rstd, 4, 32),
               "layernorm_backward", "din and dout overlap");
    CK_REJECTS(mhub_args_layernorm_backward(din, dw, dw + 31, dout, in, w, mean, rstd, 4, 32),
               "layernorm_backward", "dweight and dbias overlap");
    CK_REJECTS(mhub_args_layernorm_backward(din, w, db, dout, in, w, mean, rstd, 4, 32),
               "layernorm_backward", "dweight and weight overlap");
}
END_TEST

START_TEST(test_rmsnorm)
{
    float *out = DEV(1), *rstd = DEV(2), *in = DEV(3), *w = DEV(4);
    float *din = DEV(5), *dw = DEV(6), *dout = DEV(7);
    CK_OK(mhub_args_rmsnorm_forward(out, rstd, in, w, 4, 32, 1e-6f));
    CK_OK(mhub_args_rmsnorm_forward(NULL, NULL, NULL, NULL, 4, 0, 1e-6f));
    CK_OK(mhub_args_rmsnorm_backward(din, dw, dout, in, w, rstd, 4, 32));

    CK_REJECTS(mhub_args_rmsnorm_forward(out, rstd, in, w, -1, 32, 1e-6f), "rmsnorm_forward",
               "rows = -1");
    CK_REJECTS(mhub_args_rmsnorm_forward(out, rstd, in, w, 4, HUGE_COUNT, 1e-6f),
               "rmsnorm_forward", "dim = ");
    CK_REJECTS(mhub_args_rmsnorm_forward(NULL, rstd, in, w, 4, 32, 1e-6f), "rmsnorm_forward",
               "out is NULL");
    CK_REJECTS(mhub_args_rmsnorm_forward(out, NULL, in, w, 4, 32, 1e-6f), "rmsnorm_forward",
               "rstd is NULL");
    CK_REJECTS(mhub_args_rmsnorm_forward(out, rstd, NULL, w, 4, 32, 1e-6f), "rmsnorm_forward",
               "in is NULL");
    CK_REJECTS(mhub_args_rmsnorm_forward(out, rstd, in, NULL, 4, 32, 1e-6f), "rmsnorm_forward",
               "weight is NULL");
    CK_REJECTS(mhub_args_rmsnorm_forward(out, rstd, in, w, 4, 32, -1.0f), "rmsnorm_forward",
               "eps = -1");
    CK_REJECTS(mhub_args_rmsnorm_forward(out, out + 127, in, w, 4, 32, 1e-6f),
               "rmsnorm_forward", "out and rstd overlap");
    CK_REJECTS(mhub_args_rmsnorm_forward(out, rstd, in, rstd, 4, 32, 1e-6f), "rmsnorm_forward",
               "rstd and weight overlap");

    CK_REJECTS(mhub_args_rmsnorm_backward(din, dw, dout, in, w, rstd, -4, 32),
               "rmsnorm_backward", "rows = -4");
    CK_REJECTS(mhub_args_rmsnorm_backward(NULL, dw, dout, in, w, rstd, 4, 32),
               "rmsnorm_backward", "din is NULL");
    CK_REJECTS(mhub_args_rmsnorm_backward(din, NULL, dout, in, w, rstd, 4, 32),
               "rmsnorm_backward", "dweight is NULL");
    CK_REJECTS(mhub_args_rmsnorm_backward(din, dw, NULL, in, w, rstd, 4, 32),
               "rmsnorm_backward", "dout is NULL");
    CK_REJECTS(mhub_args_rmsnorm_backward(din, dw, dout, NULL, w, rstd, 4, 32),
               "rmsnorm_backward", "in is NULL");
    CK_REJECTS(mhub_args_rmsnorm_backward(din, dw, dout, in, NULL, rstd, 4, 32),
               "rmsnorm_backward", "weight is NULL");
    CK_REJECTS(mhub_args_rmsnorm_backward(din, dw, dout, in, w, NULL, 4, 32),
               "rmsnorm_backward", "rstd is NULL");
    CK_REJECTS(mhub_args_rmsnorm_backward(in + 4, dw, dout, in, w, rstd, 4, 32),
               "rmsnorm_backward", "din and in overlap");
    CK_REJECTS(mhub_args_rmsnorm_backward(din, din + 100, dout, in, w, rstd, 4, 32),
               "rmsnorm_backward", "din and dweight overlap");
}
END_TEST

START_TEST(test_swiglu)
{
    float *in = DEV(1), *out = DEV(2), *din = DEV(3), *dout = DEV(4);
    CK_OK(mhub_args_swiglu_forward(out, in, 4, 16));
    CK_OK(mhub_args_swiglu_forward(NULL, NULL, 0, 16));
    CK_OK(mhub_args_swiglu_backward(din, dout, in, 4, 16));

    CK_REJECTS(mhub_args_swiglu_forward(out, in, -4, 16), "swiglu_forward", "rows = -4");
    CK_REJECTS(mhub_args_swiglu_forward(out, in, 4, -16), "swiglu_forward", "ffn = -16");
    /* rows x ffn fits, its doubled input does not */
    CK_REJECTS(mhub_args_swiglu_forward(out, in, 1, INT64_MAX / 8), "swiglu_forward",
               "rows x 2 ffn");
    CK_REJECTS(mhub_args_swiglu_forward(NULL, in, 4, 16), "swiglu_forward", "out is NULL");
    CK_REJECTS(mhub_args_swiglu_forward(out, NULL, 4, 16), "swiglu_forward", "in is NULL");
    CK_REJECTS(mhub_args_swiglu_forward(in + 64, in, 4, 16), "swiglu_forward",
               "out and in overlap");

    CK_REJECTS(mhub_args_swiglu_backward(din, dout, in, 4, HUGE_COUNT), "swiglu_backward",
               "ffn = ");
    CK_REJECTS(mhub_args_swiglu_backward(NULL, dout, in, 4, 16), "swiglu_backward",
               "din is NULL");
    CK_REJECTS(mhub_args_swiglu_backward(din, NULL, in, 4, 16), "swiglu_backward",
               "dout is NULL");
    CK_REJECTS(mhub_args_swiglu_backward(din, dout, NULL, 4, 16), "swiglu_backward",
               "in is NULL");
    CK_REJECTS(mhub_args_swiglu_backward(din, din + 127, in, 4, 16), "swiglu_backward",
               "din and dout overlap");
    CK_REJECTS(mhub_args_swiglu_backward(in, dout, in, 4, 16), "swiglu_backward",
               "din and in overlap");
}
END_TEST

/* The qkv shape rules every op on the grouped layout shares, for one op. */
#define CK_QKV_SHAPE_RULES(call_with, op)                                                \
    do {                                                                                 \
        CK_REJECTS(call_with(-1, 8, 4, 2, 16), op, "batch = -1");                        \
        CK_REJECTS(call_with(2, -8, 4, 2, 16), op, "seq = -8");                          \
        CK_REJECTS(call_with(2, 8, -4, 2, 16), op, "heads = -4");                        \
        CK_REJECTS(call_with(2, 8, 4, -2, 16), op, "groups = -2");                       \
        CK_REJECTS(call_with(2, 8, 4, 2, -16), op, "head_dim = -16");                    \
        CK_REJECTS(call_with(2, 8, HUGE_COUNT, 1, 16), op, "heads = ");                  \
        CK_REJECTS(call_with(2, 8, 4, 3, 16), op, "groups = 3 does not divide heads = 4"); \
        CK_REJECTS(call_with(2, 8, 4, 0, 16), op, "groups = 0 does not divide heads = 4"); \
        CK_REJECTS(call_with(2, 8, 0, 1, 16), op, "groups = 1 with heads = 0");          \
        CK_REJECTS(call_with(2, 8, 4, 2, (int64_t)1 << 59), op,                          \
                   "(heads + 2 groups) x head_dim");                                     \
        CK_REJECTS(call_with(BIG_COUNT, BIG_COUNT, 4, 2, 16), op, "batch x seq = ");     \
        CK_REJECTS(call_with((int64_t)1 << 30, (int64_t)1 << 28, 4, 2, 16), op,          \
                   "batch x seq x row width");                                           \
    } while (0)

#define ROPE_FW(b, s, h, g, d) mhub_args_rope("rope_forward", DEV(1), b, s, h, g, d, 1e4f)
#define ROPE_BW(b, s, h, g, d) mhub_args_rope("rope_backward", DEV(1), b, s, h, g, d, 1e4f)

START_TEST(test_rope)
{
    CK_OK(ROPE_FW(2, 8, 4, 2, 16));
    CK_OK(ROPE_BW(2, 8, 4, 4, 16));
    CK_OK(mhub_args_rope("rope_forward", NULL, 0, 8, 4, 2, 16, 1e4f));
    CK_OK(mhub_args_rope("rope_forward", NULL, 2, 8, 0, 0, 16, 1e4f)); /* no heads */
    CK_QKV_SHAPE_RULES(ROPE_FW, "rope_forward");
    CK_QKV_SHAPE_RULES(ROPE_BW, "rope_backward");
    CK_REJECTS(ROPE_FW(2, 8, 4, 2, 15), "rope_forward", "head_dim = 15 is odd");
    CK_REJECTS(mhub_args_rope("rope_forward", DEV(1), 2, 8, 4, 2, 16, 0.0f), "rope_forward",
               "base = 0");
    CK_REJECTS(mhub_args_rope("rope_forward", DEV(1), 2, 8, 4, 2, 16, NAN), "rope_forward",
               "base = nan");
    CK_REJECTS(mhub_args_rope("rope_backward", DEV(1), 2, 8, 4, 2, 16, INFINITY),
               "rope_backward", "base = inf");
    CK_REJECTS(mhub_args_rope("rope_forward", NULL, 2, 8, 4, 2, 16, 1e4f), "rope_forward",
               "qkv is NULL");
    CK_REJECTS(mhub_args_rope("rope_backward", NULL, 2, 8, 4, 2, 16, 1e4f), "rope_backward",
               "dqkv is NULL");
}
END_TEST

/* Attention with batch 2, seq 8, 4 heads in 2 groups, head_dim 4: qkv has
 * 16 rows of 32 floats (512), out 16 rows of 16 (256), probs 2 x 4 x 64
 * (512), lse 2 x 4 x 8 (64); each fits in one stand-in slot. */
#define CA_FW(b, s, h, g, d) \
    mhub_args_causal_attention_forward(DEV(1), DEV(2), DEV(3), b, s, h, g, d)
#define CA_BW(b, s, h, g, d) \
    mhub_args_causal_attention_backward(DEV(1), DEV(2), DEV(3), DEV(4), DEV(5), b, s, h, g, d)
#define FA_FW(b, s, h, g, d) \
    mhub_args_flash_attention_forward(DEV(1), DEV(2), DEV(3), b, s, h, g, d)
#define FA_BW(b, s, h, g, d) \
    mhub_args_flash_attention_backward(DEV(1), DEV(2), DEV(3), DEV(4), DEV(5), b, s, h, g, d)

START_TEST(test_causal_attention)
{
    float *out = DEV(1), *probs = DEV(2), *qkv = DEV(3);
    CK_OK(CA_FW(2, 8, 4, 2, 4));
    CK_OK(CA_BW(2, 8, 4, 1, 4));
    CK_OK(mhub_args_causal_attention_forward(NULL, NULL, NULL, 2, 0, 4, 2, 4));
    CK_QKV_SHAPE_RULES(CA_FW, "causal_attention_forward");
    CK_QKV_SHAPE_RULES(CA_BW, "causal_attention_backward");

    /* BLAS limits, and the seq x seq probabilities */
    CK_REJECTS(CA_FW(1, (int64_t)INT_MAX + 1, 1, 1, 1), "causal_attention_forward",
               "seq = 2147483648 exceeds INT_MAX");
    CK_REJECTS(CA_FW(1, 1, (int64_t)1 << 30, 1 << 30, 1), "causal_attention_forward",
               "qkv row width");
    CK_REJECTS(CA_BW(1, (int64_t)1 << 30, 4, 2, 4), "causal_attention_backward",
               "seq x seq = 1073741824 x 1073741824");
    CK_REJECTS(CA_FW((int64_t)1 << 20, 1 << 10, 1 << 20, 1 << 20, 1), "causal_attention_forward",
               "batch x heads x seq x seq");

    CK_REJECTS(mhub_args_causal_attention_forward(NULL, probs, qkv, 2, 8, 4, 2, 4),
               "causal_attention_forward", "out is NULL");
    CK_REJECTS(mhub_args_causal_attention_forward(out, NULL, qkv, 2, 8, 4, 2, 4),
               "causal_attention_forward", "probs is NULL");
    CK_REJECTS(mhub_args_causal_attention_forward(out, probs, NULL, 2, 8, 4, 2, 4),
               "causal_attention_forward", "qkv is NULL");
    CK_REJECTS(mhub_args_causal_attention_forward(out, out + 255, qkv, 2, 8, 4, 2, 4),
               "causal_attention_forward", "out and probs overlap");
    CK_REJECTS(mhub_args_causal_attention_forward(qkv + 256, probs, qkv, 2, 8, 4, 2, 4),
               "causal_attention_forward", "out and qkv overlap");

    float *dqkv = DEV(1), *scratch = DEV(2), *dout = DEV(3);
    float *q = DEV(4), *p = DEV(5);
    CK_REJECTS(mhub_args_causal_attention_backward(NULL, scratch, dout, q, p, 2, 8, 4, 2, 4),
               "causal_attention_backward", "dqkv is NULL");
    CK_REJECTS(mhub_args_causal_attention_backward(dqkv, NULL, dout, q, p, 2, 8, 4, 2, 4),
               "causal_attention_backward", "scratch is NULL");
    CK_REJECTS(mhub_args_causal_attention_backward(dqkv, scratch, NULL, q, p, 2, 8, 4, 2, 4),
               "causal_attention_backward", "dout is NULL");
    CK_REJECTS(mhub_args_causal_attention_backward(dqkv, scratch, dout, NULL, p, 2, 8, 4, 2, 4),
               "causal_attention_backward", "qkv is NULL");
    CK_REJECTS(mhub_args_causal_attention_backward(dqkv, scratch, dout, q, NULL, 2, 8, 4, 2, 4),
               "causal_attention_backward", "probs is NULL");
    CK_REJECTS(mhub_args_causal_attention_backward(dqkv, dqkv + 511, dout, q, p, 2, 8, 4, 2, 4),
               "causal_attention_backward", "dqkv and scratch overlap");
    CK_REJECTS(mhub_args_causal_attention_backward(dqkv, scratch, dout, q, scratch, 2, 8, 4, 2,
                                                   4),
               "causal_attention_backward", "scratch and probs overlap");
    CK_REJECTS(mhub_args_causal_attention_backward(dqkv, scratch, dqkv, q, p, 2, 8, 4, 2, 4),
               "causal_attention_backward", "dqkv and dout overlap");
}
END_TEST

START_TEST(test_flash_attention)
{
    float *out = DEV(1), *lse = DEV(2), *qkv = DEV(3);
    CK_OK(FA_FW(2, 8, 4, 2, 4));
    CK_OK(FA_BW(2, 8, 4, 4, 4));
    CK_OK(mhub_args_flash_attention_backward(NULL, NULL, NULL, NULL, NULL, 0, 8, 4, 2, 4));
    /* No seq x seq array, so a sequence whose probabilities could not be
     * counted is fine (its arrays need addresses 1 TiB apart). */
    CK_OK(mhub_args_flash_attention_forward(FAR(1), FAR(2), FAR(3), 1, (int64_t)1 << 30, 4, 2,
                                            4));
    CK_QKV_SHAPE_RULES(FA_FW, "flash_attention_forward");
    CK_QKV_SHAPE_RULES(FA_BW, "flash_attention_backward");

    CK_REJECTS(FA_FW(1, (int64_t)INT_MAX + 1, 1, 1, 1), "flash_attention_forward",
               "seq = 2147483648 exceeds INT_MAX");
    CK_REJECTS(FA_BW(1, 1, (int64_t)1 << 30, 1 << 30, 1), "flash_attention_backward",
               "qkv row width");
    /* lse has no more elements than qkv unless head_dim is 0 */
    CK_REJECTS(FA_FW((int64_t)1 << 20, 1 << 21, 1 << 20, 1, 0), "flash_attention_forward",
               "batch x heads x seq = ");

    CK_REJECTS(mhub_args_flash_attention_forward(NULL, lse, qkv, 2, 8, 4, 2, 4),
               "flash_attention_forward", "out is NULL");
    CK_REJECTS(mhub_args_flash_attention_forward(out, NULL, qkv, 2, 8, 4, 2, 4),
               "flash_attention_forward", "lse is NULL");
    CK_REJECTS(mhub_args_flash_attention_forward(out, lse, NULL, 2, 8, 4, 2, 4),
               "flash_attention_forward", "qkv is NULL");
    CK_REJECTS(mhub_args_flash_attention_forward(out, out + 200, qkv, 2, 8, 4, 2, 4),
               "flash_attention_forward", "out and lse overlap");
    CK_REJECTS(mhub_args_flash_attention_forward(out, qkv + 500, qkv, 2, 8, 4, 2, 4),
               "flash_attention_forward", "lse and qkv overlap");

    float *dqkv = DEV(1), *dout = DEV(2), *o = DEV(3), *q = DEV(4), *l = DEV(5);
    CK_REJECTS(mhub_args_flash_attention_backward(NULL, dout, o, q, l, 2, 8, 4, 2, 4),
               "flash_attention_backward", "dqkv is NULL");
    CK_REJECTS(mhub_args_flash_attention_backward(dqkv, NULL, o, q, l, 2, 8, 4, 2, 4),
               "flash_attention_backward", "dout is NULL");
    CK_REJECTS(mhub_args_flash_attention_backward(dqkv, dout, NULL, q, l, 2, 8, 4, 2, 4),
               "flash_attention_backward", "out is NULL");
    CK_REJECTS(mhub_args_flash_attention_backward(dqkv, dout, o, NULL, l, 2, 8, 4, 2, 4),
               "flash_attention_backward", "qkv is NULL");
    CK_REJECTS(mhub_args_flash_attention_backward(dqkv, dout, o, q, NULL, 2, 8, 4, 2, 4),
               "flash_attention_backward", "lse is NULL");
    CK_REJECTS(mhub_args_flash_attention_backward(dqkv, dqkv + 1, o, q, l, 2, 8, 4, 2, 4),
               "flash_attention_backward", "dqkv and dout overlap");
    CK_REJECTS(mhub_args_flash_attention_backward(dqkv, dout, dqkv + 511, q, l, 2, 8, 4, 2, 4),
               "flash_attention_backward", "dqkv and out overlap");
    CK_REJECTS(mhub_args_flash_attention_backward(q, dout, o, q, l, 2, 8, 4, 2, 4),
               "flash_attention_backward", "dqkv and qkv overlap");
    CK_REJECTS(mhub_args_flash_attention_backward(dqkv, dout, o, q, dqkv + 64, 2, 8, 4, 2, 4),
               "flash_attention_backward", "dqkv and lse overlap");
    /* what is only read may share memory */
    CK_OK(mhub_args_flash_attention_backward(dqkv, dout, dout, q, l, 2, 8, 4, 2, 4));
}
END_TEST

/* ---- elementwise utilities ---- */

START_TEST(test_cast)
{
    void *dst = DEV(1), *src = DEV(2);
    for (int d = 0; d < MHUB_DTYPE_COUNT; d++)
        for (int s = 0; s < MHUB_DTYPE_COUNT; s++)
            CK_OK(mhub_args_cast(dst, (mhub_dtype)d, src, (mhub_dtype)s, 100));
    CK_OK(mhub_args_cast(dst, MHUB_BF16, dst, MHUB_BF16, 100)); /* onto itself: a no-op */
    CK_OK(mhub_args_cast(NULL, MHUB_F32, NULL, MHUB_F16, 0));

    CK_REJECTS(mhub_args_cast(dst, MHUB_F32, src, MHUB_F32, -1), "cast", "n = -1");
    CK_REJECTS(mhub_args_cast(dst, (mhub_dtype)3, src, MHUB_F32, 4), "cast",
               "dst_dtype = 3 is not a dtype");
    CK_REJECTS(mhub_args_cast(dst, MHUB_F32, src, (mhub_dtype)-1, 4), "cast",
               "src_dtype = -1 is not a dtype");
    CK_REJECTS(mhub_args_cast(NULL, MHUB_F32, src, MHUB_F32, 4), "cast", "dst is NULL");
    CK_REJECTS(mhub_args_cast(dst, MHUB_F32, NULL, MHUB_BF16, 4), "cast", "src is NULL");
    CK_REJECTS(mhub_args_cast((char *)dst + 2, MHUB_F32, src, MHUB_BF16, 4), "cast",
               "dst = ");
    CK_REJECTS(mhub_args_cast(dst, MHUB_F32, (char *)src + 1, MHUB_F16, 4), "cast",
               "not aligned for f16");
    /* in place across dtypes would overwrite what it still has to read */
    CK_REJECTS(mhub_args_cast(dst, MHUB_F32, dst, MHUB_BF16, 4), "cast",
               "dst and src overlap");
    CK_REJECTS(mhub_args_cast(dst, MHUB_BF16, (char *)dst + 4, MHUB_BF16, 4), "cast",
               "dst and src overlap");
}
END_TEST

START_TEST(test_scale_axpy_sum_squares)
{
    float *x = DEV(1), *y = DEV(2);
    double *out = (double *)DEV(3);
    CK_OK(mhub_args_scale(x, 100, 0.5f));
    CK_OK(mhub_args_scale(NULL, 0, 2.0f));
    CK_OK(mhub_args_axpy(y, x, 100, -1.0f));
    CK_OK(mhub_args_sum_squares(x, 100, out));
    CK_OK(mhub_args_sum_squares(NULL, 0, out));

    CK_REJECTS(mhub_args_scale(x, -3, 1.0f), "scale", "n = -3");
    CK_REJECTS(mhub_args_scale(NULL, 3, 1.0f), "scale", "x is NULL");
    CK_REJECTS(mhub_args_axpy(y, x, -3, 1.0f), "axpy", "n = -3");
    CK_REJECTS(mhub_args_axpy(y, x, HUGE_COUNT, 1.0f), "axpy", "n = ");
    CK_REJECTS(mhub_args_axpy(NULL, x, 3, 1.0f), "axpy", "y is NULL");
    CK_REJECTS(mhub_args_axpy(y, NULL, 3, 1.0f), "axpy", "x is NULL");
    CK_REJECTS(mhub_args_axpy(x, x, 3, 1.0f), "axpy", "y and x overlap");
    CK_REJECTS(mhub_args_sum_squares(x, -3, out), "sum_squares", "n = -3");
    CK_REJECTS(mhub_args_sum_squares(NULL, 3, out), "sum_squares", "x is NULL");
    CK_REJECTS(mhub_args_sum_squares(x, 0, NULL), "sum_squares", "out is NULL");
}
END_TEST

START_TEST(test_fills)
{
    float *x = DEV(1);
    CK_OK(mhub_args_fill_normal(x, 100, 0.0f, 0.02f));
    CK_OK(mhub_args_fill_normal(x, 100, -3.0f, 0.0f));
    CK_OK(mhub_args_fill_uniform(x, 100, -1.0f, 1.0f));
    CK_OK(mhub_args_fill_uniform(NULL, 0, 2.0f, 2.0f));

    CK_REJECTS(mhub_args_fill_normal(x, -1, 0.0f, 1.0f), "fill_normal", "n = -1");
    CK_REJECTS(mhub_args_fill_normal(NULL, 4, 0.0f, 1.0f), "fill_normal", "dst is NULL");
    CK_REJECTS(mhub_args_fill_normal(x, 4, NAN, 1.0f), "fill_normal", "mean = nan");
    CK_REJECTS(mhub_args_fill_normal(x, 4, 0.0f, INFINITY), "fill_normal", "std = inf");
    CK_REJECTS(mhub_args_fill_normal(x, 4, 0.0f, -1.0f), "fill_normal", "std = -1 is negative");
    CK_REJECTS(mhub_args_fill_uniform(x, -1, 0.0f, 1.0f), "fill_uniform", "n = -1");
    CK_REJECTS(mhub_args_fill_uniform(NULL, 4, 0.0f, 1.0f), "fill_uniform", "dst is NULL");
    CK_REJECTS(mhub_args_fill_uniform(x, 4, -INFINITY, 1.0f), "fill_uniform", "lo = -inf");
    CK_REJECTS(mhub_args_fill_uniform(x, 4, 0.0f, NAN), "fill_uniform", "hi = nan");
    CK_REJECTS(mhub_args_fill_uniform(x, 4, 1.0f, 0.0f), "fill_uniform",
               "lo = 1 is greater than hi = 0");
}
END_TEST

/* ---- optimizer updates ---- */

START_TEST(test_sgd_step)
{
    float *p = DEV(1), *g = DEV(2), *buf = DEV(3);
    CK_OK(mhub_args_sgd_step(p, g, buf, 100, 0.1f, 0.9f, 1e-4f));
    CK_OK(mhub_args_sgd_step(p, g, NULL, 100, 0.1f, 0.0f, 0.0f)); /* no momentum, no buffer */
    CK_OK(mhub_args_sgd_step(NULL, NULL, NULL, 0, 0.1f, 0.9f, 0.0f));

    CK_REJECTS(mhub_args_sgd_step(p, g, buf, -1, 0.1f, 0.9f, 0.0f), "sgd_step", "n = -1");
    CK_REJECTS(mhub_args_sgd_step(NULL, g, buf, 4, 0.1f, 0.9f, 0.0f), "sgd_step",
               "param is NULL");
    CK_REJECTS(mhub_args_sgd_step(p, NULL, buf, 4, 0.1f, 0.9f, 0.0f), "sgd_step",
               "grad is NULL");
    CK_REJECTS(mhub_args_sgd_step(p, g, buf, 4, NAN, 0.9f, 0.0f), "sgd_step", "lr = nan");
    CK_REJECTS(mhub_args_sgd_step(p, g, buf, 4, 0.1f, INFINITY, 0.0f), "sgd_step",
               "momentum = inf");
    CK_REJECTS(mhub_args_sgd_step(p, g, buf, 4, 0.1f, 0.9f, NAN), "sgd_step",
               "weight_decay = nan");
    CK_REJECTS(mhub_args_sgd_step(p, g, NULL, 4, 0.1f, 0.9f, 0.0f), "sgd_step",
               "momentum_buf is NULL with momentum = 0.9");
    CK_REJECTS(mhub_args_sgd_step(p, p + 3, buf, 4, 0.1f, 0.9f, 0.0f), "sgd_step",
               "param and grad overlap");
    CK_REJECTS(mhub_args_sgd_step(p, g, p, 4, 0.1f, 0.9f, 0.0f), "sgd_step",
               "param and momentum_buf overlap");
    CK_REJECTS(mhub_args_sgd_step(p, g, g + 1, 4, 0.1f, 0.9f, 0.0f), "sgd_step",
               "grad and momentum_buf overlap");
}
END_TEST

#define ADAMW(p, g, m, v, n, lr, b1, b2, eps, wd, t) \
    mhub_args_adamw_step(p, g, m, v, n, lr, b1, b2, eps, wd, t)

START_TEST(test_adamw_step)
{
    float *p = DEV(1), *g = DEV(2), *m = DEV(3), *v = DEV(4);
    CK_OK(ADAMW(p, g, m, v, 100, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1));
    CK_OK(ADAMW(p, g, m, v, 100, 1e-3f, 0.0f, 0.0f, 0.0f, 0.0f, 1000000));
    CK_OK(ADAMW(NULL, NULL, NULL, NULL, 0, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1));

    CK_REJECTS(ADAMW(p, g, m, v, -1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "n = -1");
    CK_REJECTS(ADAMW(NULL, g, m, v, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "param is NULL");
    CK_REJECTS(ADAMW(p, NULL, m, v, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "grad is NULL");
    CK_REJECTS(ADAMW(p, g, NULL, v, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "m is NULL");
    CK_REJECTS(ADAMW(p, g, m, NULL, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "v is NULL");
    CK_REJECTS(ADAMW(p, g, m, v, 4, INFINITY, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "lr = inf");
    CK_REJECTS(ADAMW(p, g, m, v, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, NAN, 1), "adamw_step",
               "weight_decay = nan");
    CK_REJECTS(ADAMW(p, g, m, v, 4, 1e-3f, 1.0f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "beta1 = 1 is outside [0, 1)");
    CK_REJECTS(ADAMW(p, g, m, v, 4, 1e-3f, -0.1f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "beta1 = -0.1");
    CK_REJECTS(ADAMW(p, g, m, v, 4, 1e-3f, 0.9f, NAN, 1e-8f, 0.1f, 1), "adamw_step",
               "beta2 = nan");
    CK_REJECTS(ADAMW(p, g, m, v, 4, 1e-3f, 0.9f, 0.999f, -1e-8f, 0.1f, 1), "adamw_step",
               "eps = ");
    CK_REJECTS(ADAMW(p, g, m, v, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 0), "adamw_step",
               "t = 0 must be >= 1");
    CK_REJECTS(ADAMW(p, p + 1, m, v, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "param and grad overlap");
    CK_REJECTS(ADAMW(p, g, p, v, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "param and m overlap");
    CK_REJECTS(ADAMW(p, g, m, g, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "grad and v overlap");
    CK_REJECTS(ADAMW(p, g, m, m + 3, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f, 1), "adamw_step",
               "m and v overlap");
}
END_TEST

/* ---- the CPU backend reports through the contract ---- */

/* The message of a refused backend call equals the contract's for the
 * same arguments, word for word. */
#define CK_SAME_MESSAGE(backend_call, args_call)                                         \
    do {                                                                                 \
        CK_FAILS(MHUB_ERR_INVALID_ARG, (args_call));                                     \
        char ck_want_[1024];                                                             \
        snprintf(ck_want_, sizeof ck_want_, "%s", mhub_last_error());                    \
        CK_FAILS(MHUB_ERR_INVALID_ARG, (backend_call));                                  \
        ck_assert_str_eq(mhub_last_error(), ck_want_);                                   \
    } while (0)

START_TEST(test_cpu_backend_uses_the_contract)
{
    mhub_backend *be = NULL;
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &be));
    const mhub_backend_ops *o = be->ops;
    float x[64] = {0}, y[64] = {0};
    CK_SAME_MESSAGE(o->memset_zero(be, NULL, 4), mhub_args_memset_zero(NULL, 4));
    CK_SAME_MESSAGE(o->copy(be, x, x + 1, 8, MHUB_COPY_DEVICE_TO_DEVICE),
                    mhub_args_copy(x, x + 1, 8, MHUB_COPY_DEVICE_TO_DEVICE));
    CK_SAME_MESSAGE(o->gemm(be, false, false, 2, 2, 2, 1.0f, x, 1, y, 2, 0.0f, x + 8, 2),
                    mhub_args_gemm(false, false, 2, 2, 2, x, 1, y, 2, x + 8, 2));
    CK_SAME_MESSAGE(o->gelu_forward(be, x + 1, x, 8), mhub_args_gelu_forward(x + 1, x, 8));
    CK_SAME_MESSAGE(o->softmax_xent_backward(be, x, y, NULL, 2, 4, 1.0f),
                    mhub_args_softmax_xent_backward(x, y, NULL, 2, 4, 1.0f));
    CK_SAME_MESSAGE(o->embedding_forward(be, x, y, NULL, 2, 4, 4, false),
                    mhub_args_embedding_forward(x, y, NULL, 2, 4, 4));
    CK_SAME_MESSAGE(o->layernorm_forward(be, x, y, y + 2, x + 16, y + 8, NULL, 2, 4, -1.0f),
                    mhub_args_layernorm_forward(x, y, y + 2, x + 16, y + 8, NULL, 2, 4, -1.0f));
    CK_SAME_MESSAGE(o->rope_backward(be, x, 1, 2, 4, 3, 2, 1e4f),
                    mhub_args_rope("rope_backward", x, 1, 2, 4, 3, 2, 1e4f));
    CK_SAME_MESSAGE(o->causal_attention_forward(be, x, NULL, y, 1, 2, 1, 1, 2),
                    mhub_args_causal_attention_forward(x, NULL, y, 1, 2, 1, 1, 2));
    CK_SAME_MESSAGE(o->cast(be, x, MHUB_F32, x, MHUB_F16, 4),
                    mhub_args_cast(x, MHUB_F32, x, MHUB_F16, 4));
    CK_SAME_MESSAGE(o->fill_uniform(be, x, 4, 1, 0, 0, 2.0f, 1.0f),
                    mhub_args_fill_uniform(x, 4, 2.0f, 1.0f));
    CK_SAME_MESSAGE(
        o->adamw_step(be, x, y, x + 32, y + 32, 8, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0),
        mhub_args_adamw_step(x, y, x + 32, y + 32, 8, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0));
    mhub_backend_free(be);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("backend_args");
    TCase *tc = tcase_create("contract");
    tcase_add_test(tc, test_memset_zero);
    tcase_add_test(tc, test_copy);
    tcase_add_test(tc, test_gemm);
    tcase_add_test(tc, test_bias);
    tcase_add_test(tc, test_gelu);
    tcase_add_test(tc, test_softmax_xent);
    tcase_add_test(tc, test_embedding);
    tcase_add_test(tc, test_layernorm);
    tcase_add_test(tc, test_rmsnorm);
    tcase_add_test(tc, test_swiglu);
    tcase_add_test(tc, test_rope);
    tcase_add_test(tc, test_causal_attention);
    tcase_add_test(tc, test_flash_attention);
    tcase_add_test(tc, test_cast);
    tcase_add_test(tc, test_scale_axpy_sum_squares);
    tcase_add_test(tc, test_fills);
    tcase_add_test(tc, test_sgd_step);
    tcase_add_test(tc, test_adamw_step);
    tcase_add_test(tc, test_cpu_backend_uses_the_contract);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
