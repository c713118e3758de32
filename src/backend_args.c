/* backend_args.c - the argument contract of every backend operation (see
 * backend_args.h).
 *
 * Each check looks at the arguments alone: sizes, pointer values (NULL,
 * overlap, alignment) and scalars. It never reads through a pointer, since
 * on a GPU backend the pointers are device addresses. Messages start with
 * the operation's name in the ops table ("gemm: lda = 2 is less than
 * ..."), so every backend reports a bad call in the same words. */
#include "src/backend_args.h"

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Largest element count accepted: its byte size still fits in int64 and
 * pointer arithmetic, for any element type up to 8 bytes. */
#define MAX_ELEMENTS (INT64_MAX / 8)

/* ---- the kinds of check ---- */

static mhub_status check_count(const char *op, const char *name, int64_t n)
{
    if (n < 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "%s = %" PRId64 " is negative", name, n);
    if (n > MAX_ELEMENTS)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "%s = %" PRId64 " is too large", name, n);
    return MHUB_OK;
}

/* a * b into *out, for counts already checked non-negative; `what` names
 * the product in the message. */
static mhub_status check_product(const char *op, const char *what, int64_t a, int64_t b,
                                 int64_t *out)
{
    *out = 0;
    if (a > 0 && b > MAX_ELEMENTS / a)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%s = %" PRId64 " x %" PRId64 " is too many elements", what, a, b);
    *out = a * b;
    return MHUB_OK;
}

/* rows * cols into *total, with both counts checked and no overflow;
 * cols_name is what the op calls its columns. */
static mhub_status check_matrix(const char *op, int64_t rows, const char *cols_name,
                                int64_t cols, int64_t *total)
{
    *total = 0;
    MHUB_TRY(check_count(op, "rows", rows));
    MHUB_TRY(check_count(op, cols_name, cols));
    if (cols > 0 && rows > MAX_ELEMENTS / cols)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "rows = %" PRId64 " x %s = %" PRId64 " is too many elements", rows,
                             cols_name, cols);
    *total = rows * cols;
    return MHUB_OK;
}

static mhub_status check_ptr(const char *op, const char *name, const void *p, int64_t n)
{
    if (!p && n > 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%s is NULL with %" PRId64 " elements to access", name, n);
    return MHUB_OK;
}

static mhub_status check_finite(const char *op, const char *name, float v)
{
    if (!isfinite(v))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "%s = %g is not finite", name, (double)v);
    return MHUB_OK;
}

static mhub_status check_eps(const char *op, float eps)
{
    if (!(eps >= 0.0f) || !isfinite(eps))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "eps = %g must be finite and >= 0",
                             (double)eps);
    return MHUB_OK;
}

/* BLAS (OpenBLAS and cuBLAS alike) takes int sizes and strides. */
static mhub_status check_blas_size(const char *op, const char *name, int64_t v)
{
    if (v > INT_MAX)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%s = %" PRId64 " exceeds INT_MAX, the limit of the BLAS interface",
                             name, v);
    return MHUB_OK;
}

static size_t f32_bytes(int64_t n) { return (size_t)n * sizeof(float); }

static bool overlaps(const void *a, size_t abytes, const void *b, size_t bbytes)
{
    if (!a || !b || abytes == 0 || bbytes == 0)
        return false;
    uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
    return x < y + bbytes && y < x + abytes;
}

/* Kernels may assume that what they write does not alias what they read
 * (the CPU loops are restrict-qualified), so arrays must not overlap. */
static mhub_status check_separate(const char *op, const char *aname, const void *a,
                                  size_t abytes, const char *bname, const void *b, size_t bbytes)
{
    if (overlaps(a, abytes, b, bbytes))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%s and %s overlap; they must be separate arrays", aname, bname);
    return MHUB_OK;
}

/* For ops that may run in place: the same array, or separate ones. */
static mhub_status check_same_or_separate(const char *op, const char *aname, const void *a,
                                          const char *bname, const void *b, size_t bytes)
{
    if (a != b && overlaps(a, bytes, b, bytes))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%s and %s partly overlap; they must be the same array or "
                             "separate ones",
                             aname, bname);
    return MHUB_OK;
}

/* An array an op touches: its name for messages, start and size. */
typedef struct span {
    const char *name;
    const void *p;
    size_t bytes;
} span;

/* Every array an op writes must be separate from every other array it
 * touches; arrays that are only read may share memory. */
static mhub_status check_disjoint(const char *op, const span *written, int nw, const span *read,
                                  int nr)
{
    for (int i = 0; i < nw; i++) {
        for (int j = i + 1; j < nw; j++)
            MHUB_TRY(check_separate(op, written[i].name, written[i].p, written[i].bytes,
                                    written[j].name, written[j].p, written[j].bytes));
        for (int j = 0; j < nr; j++)
            MHUB_TRY(check_separate(op, written[i].name, written[i].p, written[i].bytes,
                                    read[j].name, read[j].p, read[j].bytes));
    }
    return MHUB_OK;
}

/* ---- memory ---- */

mhub_status mhub_args_memset_zero(const void *ptr, size_t bytes)
{
    static const char op[] = "memset_zero";
    if (bytes > (size_t)PTRDIFF_MAX)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "bytes = %zu is more than any allocation holds", bytes);
    if (!ptr && bytes > 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "ptr is NULL with bytes = %zu", bytes);
    return MHUB_OK;
}

mhub_status mhub_args_copy(const void *dst, const void *src, size_t bytes, mhub_copy_kind kind)
{
    static const char op[] = "copy";
    if (kind != MHUB_COPY_HOST_TO_DEVICE && kind != MHUB_COPY_DEVICE_TO_HOST &&
        kind != MHUB_COPY_DEVICE_TO_DEVICE)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "kind = %d is not a copy kind", (int)kind);
    if (bytes == 0)
        return MHUB_OK;
    if (!dst)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "dst is NULL with bytes = %zu", bytes);
    if (!src)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "src is NULL with bytes = %zu", bytes);
    /* A copy between overlapping ranges is undefined on a device (as for
     * cudaMemcpy), so it is refused everywhere rather than working only on
     * the CPU. Copying a range onto itself changes nothing and is allowed.
     * Host and device addresses live in one address space (CUDA's unified
     * addressing), so the comparison means the same for every kind. */
    if (dst != src && overlaps(dst, bytes, src, bytes))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "dst %p and src %p overlap within %zu bytes", dst, src, bytes);
    return MHUB_OK;
}

/* ---- dense algebra ---- */

static mhub_status check_gemm_dim(const char *op, const char *name, int64_t v)
{
    if (v < 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "%s = %" PRId64 " is negative", name, v);
    return check_blas_size(op, name, v);
}

/* A row-major matrix stored with `cols` columns needs a row stride of at
 * least max(1, cols) (BLAS's own rule, which OpenBLAS would otherwise
 * report by printing to stderr). */
static mhub_status check_ld(const char *op, const char *name, int64_t ld, int64_t cols,
                            const char *matrix)
{
    int64_t need = cols > 1 ? cols : 1;
    if (ld < need)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%s = %" PRId64 " is less than %" PRId64
                             ", the row length of %s as stored",
                             name, ld, need, matrix);
    return check_blas_size(op, name, ld);
}

/* Bytes spanned by a stored rows x cols matrix with row stride ld (all
 * <= INT_MAX, so no overflow). */
static size_t stored_bytes(int64_t rows, int64_t cols, int64_t ld)
{
    if (rows == 0 || cols == 0)
        return 0;
    return f32_bytes((rows - 1) * ld + cols);
}

mhub_status mhub_args_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           const float *a, int64_t lda, const float *b, int64_t ldb,
                           const float *c, int64_t ldc)
{
    static const char op[] = "gemm";
    MHUB_TRY(check_gemm_dim(op, "m", m));
    MHUB_TRY(check_gemm_dim(op, "n", n));
    MHUB_TRY(check_gemm_dim(op, "k", k));
    /* Stored shapes: A is M x K (K x M when transposed), B is K x N
     * (N x K), C is M x N. */
    int64_t a_rows = trans_a ? k : m, a_cols = trans_a ? m : k;
    int64_t b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
    MHUB_TRY(check_ld(op, "lda", lda, a_cols, trans_a ? "A (K x M, transposed)" : "A (M x K)"));
    MHUB_TRY(check_ld(op, "ldb", ldb, b_cols, trans_b ? "B (N x K, transposed)" : "B (K x N)"));
    MHUB_TRY(check_ld(op, "ldc", ldc, n, "C (M x N)"));
    if (m == 0 || n == 0)
        return MHUB_OK;
    MHUB_TRY(check_ptr(op, "c", c, m * n));
    MHUB_TRY(check_ptr(op, "a", a, m * k));
    MHUB_TRY(check_ptr(op, "b", b, k * n));
    size_t c_bytes = stored_bytes(m, n, ldc);
    MHUB_TRY(check_separate(op, "c", c, c_bytes, "a", a, stored_bytes(a_rows, a_cols, lda)));
    return check_separate(op, "c", c, c_bytes, "b", b, stored_bytes(b_rows, b_cols, ldb));
}

/* ---- layer kernels ---- */

mhub_status mhub_args_bias_add(const float *out, const float *bias, int64_t rows, int64_t cols)
{
    static const char op[] = "bias_add";
    int64_t total;
    MHUB_TRY(check_matrix(op, rows, "cols", cols, &total));
    MHUB_TRY(check_ptr(op, "out", out, total));
    MHUB_TRY(check_ptr(op, "bias", bias, total > 0 ? cols : 0));
    return check_separate(op, "out", out, f32_bytes(total), "bias", bias, f32_bytes(cols));
}

mhub_status mhub_args_bias_backward(const float *dbias, const float *dout, int64_t rows,
                                    int64_t cols)
{
    static const char op[] = "bias_backward";
    int64_t total;
    MHUB_TRY(check_matrix(op, rows, "cols", cols, &total));
    MHUB_TRY(check_ptr(op, "dout", dout, total));
    MHUB_TRY(check_ptr(op, "dbias", dbias, total > 0 ? cols : 0));
    return check_separate(op, "dbias", dbias, f32_bytes(cols), "dout", dout, f32_bytes(total));
}

mhub_status mhub_args_gelu_forward(const float *out, const float *in, int64_t n)
{
    static const char op[] = "gelu_forward";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_ptr(op, "out", out, n));
    MHUB_TRY(check_ptr(op, "in", in, n));
    return check_same_or_separate(op, "out", out, "in", in, f32_bytes(n));
}

mhub_status mhub_args_gelu_backward(const float *din, const float *in, const float *dout,
                                    int64_t n)
{
    static const char op[] = "gelu_backward";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_ptr(op, "din", din, n));
    MHUB_TRY(check_ptr(op, "in", in, n));
    MHUB_TRY(check_ptr(op, "dout", dout, n));
    MHUB_TRY(check_same_or_separate(op, "din", din, "dout", dout, f32_bytes(n)));
    return check_separate(op, "din", din, f32_bytes(n), "in", in, f32_bytes(n));
}

/* The targets' values (each in [0, classes)) are the backend's to check. */
mhub_status mhub_args_softmax_xent_forward(const float *probs, const float *losses,
                                           const float *logits, const int32_t *targets,
                                           int64_t rows, int64_t classes)
{
    static const char op[] = "softmax_xent_forward";
    int64_t total;
    MHUB_TRY(check_matrix(op, rows, "classes", classes, &total));
    MHUB_TRY(check_ptr(op, "probs", probs, total));
    MHUB_TRY(check_ptr(op, "logits", logits, total));
    MHUB_TRY(check_ptr(op, "losses", losses, rows));
    MHUB_TRY(check_ptr(op, "targets", targets, rows));
    MHUB_TRY(check_same_or_separate(op, "probs", probs, "logits", logits, f32_bytes(total)));
    MHUB_TRY(check_separate(op, "losses", losses, f32_bytes(rows), "probs", probs,
                            f32_bytes(total)));
    return check_separate(op, "losses", losses, f32_bytes(rows), "logits", logits,
                          f32_bytes(total));
}

mhub_status mhub_args_softmax_xent_backward(const float *dlogits, const float *probs,
                                            const int32_t *targets, int64_t rows,
                                            int64_t classes, float dloss)
{
    static const char op[] = "softmax_xent_backward";
    int64_t total;
    MHUB_TRY(check_matrix(op, rows, "classes", classes, &total));
    MHUB_TRY(check_ptr(op, "dlogits", dlogits, total));
    MHUB_TRY(check_ptr(op, "probs", probs, total));
    MHUB_TRY(check_ptr(op, "targets", targets, rows));
    return check_same_or_separate(op, "dlogits", dlogits, "probs", probs, f32_bytes(total));
}

/* ---- transformer kernels ---- */

/* What both embedding ops share: the [rows, dim] activation `act`, the
 * [vocab, dim] table `tab` and the ids; the forward writes the activation,
 * the backward the table. The ids' values (each in [0, vocab)) are the
 * backend's to check. */
static mhub_status check_embedding(const char *op, const char *act_name, const void *act,
                                   const char *tab_name, const void *tab, const int32_t *ids,
                                   int64_t rows, int64_t vocab, int64_t dim, bool table_written)
{
    int64_t act_n, tab_n;
    MHUB_TRY(check_matrix(op, rows, "dim", dim, &act_n));
    MHUB_TRY(check_count(op, "vocab", vocab));
    MHUB_TRY(check_product(op, "vocab x dim", vocab, dim, &tab_n));
    MHUB_TRY(check_ptr(op, act_name, act, act_n));
    MHUB_TRY(check_ptr(op, tab_name, tab, act_n > 0 ? tab_n : 0));
    MHUB_TRY(check_ptr(op, "ids", ids, rows));
    span act_span = {act_name, act, f32_bytes(act_n)};
    span tab_span = {tab_name, tab, f32_bytes(tab_n)};
    span ids_span = {"ids", ids, (size_t)rows * sizeof *ids};
    span written = table_written ? tab_span : act_span;
    span read[] = {table_written ? act_span : tab_span, ids_span};
    return check_disjoint(op, &written, 1, read, 2);
}

mhub_status mhub_args_embedding_forward(const float *out, const float *table,
                                        const int32_t *ids, int64_t rows, int64_t vocab,
                                        int64_t dim)
{
    return check_embedding("embedding_forward", "out", out, "table", table, ids, rows, vocab,
                           dim, false);
}

mhub_status mhub_args_embedding_backward(const float *dtable, const float *dout,
                                         const int32_t *ids, int64_t rows, int64_t vocab,
                                         int64_t dim)
{
    return check_embedding("embedding_backward", "dout", dout, "dtable", dtable, ids, rows,
                           vocab, dim, true);
}

/* Norms: with rows or dim 0 there is nothing to normalize, and nothing is
 * required of the pointers. */
mhub_status mhub_args_layernorm_forward(const float *out, const float *mean, const float *rstd,
                                        const float *in, const float *weight, const float *bias,
                                        int64_t rows, int64_t dim, float eps)
{
    static const char op[] = "layernorm_forward";
    int64_t total;
    MHUB_TRY(check_matrix(op, rows, "dim", dim, &total));
    int64_t per_row = total > 0 ? rows : 0, per_col = total > 0 ? dim : 0;
    MHUB_TRY(check_ptr(op, "out", out, total));
    MHUB_TRY(check_ptr(op, "mean", mean, per_row));
    MHUB_TRY(check_ptr(op, "rstd", rstd, per_row));
    MHUB_TRY(check_ptr(op, "in", in, total));
    MHUB_TRY(check_ptr(op, "weight", weight, per_col)); /* bias may be NULL */
    MHUB_TRY(check_eps(op, eps));
    span written[] = {{"out", out, f32_bytes(total)},
                      {"mean", mean, f32_bytes(per_row)},
                      {"rstd", rstd, f32_bytes(per_row)}};
    span read[] = {{"in", in, f32_bytes(total)},
                   {"weight", weight, f32_bytes(per_col)},
                   {"bias", bias, f32_bytes(per_col)}};
    return check_disjoint(op, written, 3, read, 3);
}

mhub_status mhub_args_layernorm_backward(const float *din, const float *dweight,
                                         const float *dbias, const float *dout, const float *in,
                                         const float *weight, const float *mean,
                                         const float *rstd, int64_t rows, int64_t dim)
{
    static const char op[] = "layernorm_backward";
    int64_t total;
    MHUB_TRY(check_matrix(op, rows, "dim", dim, &total));
    int64_t per_row = total > 0 ? rows : 0, per_col = total > 0 ? dim : 0;
    MHUB_TRY(check_ptr(op, "din", din, total));
    MHUB_TRY(check_ptr(op, "dweight", dweight, per_col)); /* dbias may be NULL */
    MHUB_TRY(check_ptr(op, "dout", dout, total));
    MHUB_TRY(check_ptr(op, "in", in, total));
    MHUB_TRY(check_ptr(op, "weight", weight, per_col));
    MHUB_TRY(check_ptr(op, "mean", mean, per_row));
    MHUB_TRY(check_ptr(op, "rstd", rstd, per_row));
    span written[] = {{"din", din, f32_bytes(total)},
                      {"dweight", dweight, f32_bytes(per_col)},
                      {"dbias", dbias, f32_bytes(per_col)}};
    span read[] = {{"dout", dout, f32_bytes(total)},     {"in", in, f32_bytes(total)},
                   {"weight", weight, f32_bytes(per_col)}, {"mean", mean, f32_bytes(per_row)},
                   {"rstd", rstd, f32_bytes(per_row)}};
    return check_disjoint(op, written, 3, read, 5);
}

mhub_status mhub_args_rmsnorm_forward(const float *out, const float *rstd, const float *in,
                                      const float *weight, int64_t rows, int64_t dim, float eps)
{
    static const char op[] = "rmsnorm_forward";
    int64_t total;
    MHUB_TRY(check_matrix(op, rows, "dim", dim, &total));
    int64_t per_row = total > 0 ? rows : 0, per_col = total > 0 ? dim : 0;
    MHUB_TRY(check_ptr(op, "out", out, total));
    MHUB_TRY(check_ptr(op, "rstd", rstd, per_row));
    MHUB_TRY(check_ptr(op, "in", in, total));
    MHUB_TRY(check_ptr(op, "weight", weight, per_col));
    MHUB_TRY(check_eps(op, eps));
    span written[] = {{"out", out, f32_bytes(total)}, {"rstd", rstd, f32_bytes(per_row)}};
    span read[] = {{"in", in, f32_bytes(total)}, {"weight", weight, f32_bytes(per_col)}};
    return check_disjoint(op, written, 2, read, 2);
}

mhub_status mhub_args_rmsnorm_backward(const float *din, const float *dweight,
                                       const float *dout, const float *in, const float *weight,
                                       const float *rstd, int64_t rows, int64_t dim)
{
    static const char op[] = "rmsnorm_backward";
    int64_t total;
    MHUB_TRY(check_matrix(op, rows, "dim", dim, &total));
    int64_t per_row = total > 0 ? rows : 0, per_col = total > 0 ? dim : 0;
    MHUB_TRY(check_ptr(op, "din", din, total));
    MHUB_TRY(check_ptr(op, "dweight", dweight, per_col));
    MHUB_TRY(check_ptr(op, "dout", dout, total));
    MHUB_TRY(check_ptr(op, "in", in, total));
    MHUB_TRY(check_ptr(op, "weight", weight, per_col));
    MHUB_TRY(check_ptr(op, "rstd", rstd, per_row));
    span written[] = {{"din", din, f32_bytes(total)}, {"dweight", dweight, f32_bytes(per_col)}};
    span read[] = {{"dout", dout, f32_bytes(total)},
                   {"in", in, f32_bytes(total)},
                   {"weight", weight, f32_bytes(per_col)},
                   {"rstd", rstd, f32_bytes(per_row)}};
    return check_disjoint(op, written, 2, read, 4);
}

/* The [rows, 2 ffn] input and the [rows, ffn] output. */
static mhub_status check_swiglu_shape(const char *op, int64_t rows, int64_t ffn, int64_t *in_n,
                                      int64_t *out_n)
{
    MHUB_TRY(check_matrix(op, rows, "ffn", ffn, out_n));
    return check_product(op, "rows x 2 ffn", *out_n, 2, in_n);
}

mhub_status mhub_args_swiglu_forward(const float *out, const float *in, int64_t rows,
                                     int64_t ffn)
{
    static const char op[] = "swiglu_forward";
    int64_t in_n, out_n;
    MHUB_TRY(check_swiglu_shape(op, rows, ffn, &in_n, &out_n));
    MHUB_TRY(check_ptr(op, "out", out, out_n));
    MHUB_TRY(check_ptr(op, "in", in, in_n));
    return check_separate(op, "out", out, f32_bytes(out_n), "in", in, f32_bytes(in_n));
}

mhub_status mhub_args_swiglu_backward(const float *din, const float *dout, const float *in,
                                      int64_t rows, int64_t ffn)
{
    static const char op[] = "swiglu_backward";
    int64_t in_n, out_n;
    MHUB_TRY(check_swiglu_shape(op, rows, ffn, &in_n, &out_n));
    MHUB_TRY(check_ptr(op, "din", din, in_n));
    MHUB_TRY(check_ptr(op, "dout", dout, out_n));
    MHUB_TRY(check_ptr(op, "in", in, in_n));
    span written[] = {{"din", din, f32_bytes(in_n)}};
    span read[] = {{"dout", dout, f32_bytes(out_n)}, {"in", in, f32_bytes(in_n)}};
    return check_disjoint(op, written, 1, read, 2);
}

/* Element counts of the grouped qkv layout (backend.h, causal attention). */
typedef struct qkv_counts {
    int64_t width;     /* a qkv row: (heads + 2 groups) * head_dim */
    int64_t out_width; /* an attention output row: heads * head_dim */
    int64_t qkv_n;     /* batch * seq * width */
    int64_t out_n;     /* batch * seq * out_width */
} qkv_counts;

/* The five sizes and the head/group split, and the sizes of qkv and of
 * the attention output, every product checked for overflow. heads == 0
 * needs groups == 0 (a group without query heads is no layout the models
 * produce). */
static mhub_status check_qkv_shape(const char *op, int64_t batch, int64_t seq, int64_t heads,
                                   int64_t groups, int64_t head_dim, qkv_counts *c)
{
    MHUB_TRY(check_count(op, "batch", batch));
    MHUB_TRY(check_count(op, "seq", seq));
    MHUB_TRY(check_count(op, "heads", heads));
    MHUB_TRY(check_count(op, "groups", groups));
    MHUB_TRY(check_count(op, "head_dim", head_dim));
    if (heads == 0 && groups != 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "groups = %" PRId64 " with heads = 0: a group needs query heads",
                             groups);
    if (heads > 0 && (groups < 1 || heads % groups != 0))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "groups = %" PRId64 " does not divide heads = %" PRId64, groups,
                             heads);
    int64_t rows;
    /* heads + 2 groups <= 3 MAX_ELEMENTS cannot overflow. */
    MHUB_TRY(check_product(op, "(heads + 2 groups) x head_dim", heads + 2 * groups, head_dim,
                           &c->width));
    MHUB_TRY(check_product(op, "heads x head_dim", heads, head_dim, &c->out_width));
    MHUB_TRY(check_product(op, "batch x seq", batch, seq, &rows));
    MHUB_TRY(check_product(op, "batch x seq x row width", rows, c->width, &c->qkv_n));
    return check_product(op, "batch x seq x heads x head_dim", rows, c->out_width, &c->out_n);
}

mhub_status mhub_args_rope(const char *op, const float *qkv, int64_t batch, int64_t seq,
                           int64_t heads, int64_t groups, int64_t head_dim, float base)
{
    qkv_counts c;
    MHUB_TRY(check_qkv_shape(op, batch, seq, heads, groups, head_dim, &c));
    if (head_dim % 2 != 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "head_dim = %" PRId64 " is odd; rotary pairs need an even one",
                             head_dim);
    if (!(base > 0.0f) || !isfinite(base))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "base = %g must be finite and > 0",
                             (double)base);
    /* The array is the backward's dqkv, named so in its messages. */
    bool backward = strcmp(op, "rope_backward") == 0;
    return check_ptr(op, backward ? "dqkv" : "qkv", qkv, c.qkv_n);
}

/* The attention ops' shape: the qkv layout, the BLAS limits their matrix
 * products run under (the rows of one head are strided by the row
 * widths), and the count of the per-row logsumexp, batch x heads x seq. */
static mhub_status check_attention_shape(const char *op, int64_t batch, int64_t seq,
                                         int64_t heads, int64_t groups, int64_t head_dim,
                                         qkv_counts *c, int64_t *lse_n)
{
    MHUB_TRY(check_qkv_shape(op, batch, seq, heads, groups, head_dim, c));
    MHUB_TRY(check_blas_size(op, "seq", seq));
    /* The output row (heads x head_dim) is never wider than the qkv row. */
    MHUB_TRY(check_blas_size(op, "qkv row width (heads + 2 groups) x head_dim", c->width));
    int64_t bh;
    MHUB_TRY(check_product(op, "batch x heads", batch, heads, &bh));
    return check_product(op, "batch x heads x seq", bh, seq, lse_n);
}

/* ... and of the [batch, heads, seq, seq] probabilities. */
static mhub_status check_probs_count(const char *op, int64_t batch, int64_t seq, int64_t heads,
                                     int64_t *probs_n)
{
    int64_t bh, ss;
    MHUB_TRY(check_product(op, "batch x heads", batch, heads, &bh));
    MHUB_TRY(check_product(op, "seq x seq", seq, seq, &ss));
    return check_product(op, "batch x heads x seq x seq", bh, ss, probs_n);
}

mhub_status mhub_args_causal_attention_forward(const float *out, const float *probs,
                                               const float *qkv, int64_t batch, int64_t seq,
                                               int64_t heads, int64_t groups, int64_t head_dim)
{
    static const char op[] = "causal_attention_forward";
    qkv_counts c;
    int64_t lse_n, probs_n;
    MHUB_TRY(check_attention_shape(op, batch, seq, heads, groups, head_dim, &c, &lse_n));
    MHUB_TRY(check_probs_count(op, batch, seq, heads, &probs_n));
    MHUB_TRY(check_ptr(op, "out", out, c.out_n));
    MHUB_TRY(check_ptr(op, "probs", probs, probs_n));
    MHUB_TRY(check_ptr(op, "qkv", qkv, c.qkv_n));
    span written[] = {{"out", out, f32_bytes(c.out_n)}, {"probs", probs, f32_bytes(probs_n)}};
    span read[] = {{"qkv", qkv, f32_bytes(c.qkv_n)}};
    return check_disjoint(op, written, 2, read, 1);
}

mhub_status mhub_args_causal_attention_backward(const float *dqkv, const float *scratch,
                                                const float *dout, const float *qkv,
                                                const float *probs, int64_t batch,
                                                int64_t seq, int64_t heads, int64_t groups,
                                                int64_t head_dim)
{
    static const char op[] = "causal_attention_backward";
    qkv_counts c;
    int64_t lse_n, probs_n;
    MHUB_TRY(check_attention_shape(op, batch, seq, heads, groups, head_dim, &c, &lse_n));
    MHUB_TRY(check_probs_count(op, batch, seq, heads, &probs_n));
    MHUB_TRY(check_ptr(op, "dqkv", dqkv, c.qkv_n));
    MHUB_TRY(check_ptr(op, "scratch", scratch, probs_n));
    MHUB_TRY(check_ptr(op, "dout", dout, c.out_n));
    MHUB_TRY(check_ptr(op, "qkv", qkv, c.qkv_n));
    MHUB_TRY(check_ptr(op, "probs", probs, probs_n));
    span written[] = {{"dqkv", dqkv, f32_bytes(c.qkv_n)},
                      {"scratch", scratch, f32_bytes(probs_n)}};
    span read[] = {{"dout", dout, f32_bytes(c.out_n)},
                   {"qkv", qkv, f32_bytes(c.qkv_n)},
                   {"probs", probs, f32_bytes(probs_n)}};
    return check_disjoint(op, written, 2, read, 3);
}

mhub_status mhub_args_flash_attention_forward(const float *out, const float *lse,
                                              const float *qkv, int64_t batch, int64_t seq,
                                              int64_t heads, int64_t groups, int64_t head_dim)
{
    static const char op[] = "flash_attention_forward";
    qkv_counts c;
    int64_t lse_n;
    MHUB_TRY(check_attention_shape(op, batch, seq, heads, groups, head_dim, &c, &lse_n));
    MHUB_TRY(check_ptr(op, "out", out, c.out_n));
    MHUB_TRY(check_ptr(op, "lse", lse, lse_n));
    MHUB_TRY(check_ptr(op, "qkv", qkv, c.qkv_n));
    span written[] = {{"out", out, f32_bytes(c.out_n)}, {"lse", lse, f32_bytes(lse_n)}};
    span read[] = {{"qkv", qkv, f32_bytes(c.qkv_n)}};
    return check_disjoint(op, written, 2, read, 1);
}

mhub_status mhub_args_flash_attention_backward(const float *dqkv, const float *dout,
                                               const float *out, const float *qkv,
                                               const float *lse, int64_t batch, int64_t seq,
                                               int64_t heads, int64_t groups,
                                               int64_t head_dim)
{
    static const char op[] = "flash_attention_backward";
    qkv_counts c;
    int64_t lse_n;
    MHUB_TRY(check_attention_shape(op, batch, seq, heads, groups, head_dim, &c, &lse_n));
    MHUB_TRY(check_ptr(op, "dqkv", dqkv, c.qkv_n));
    MHUB_TRY(check_ptr(op, "dout", dout, c.out_n));
    MHUB_TRY(check_ptr(op, "out", out, c.out_n));
    MHUB_TRY(check_ptr(op, "qkv", qkv, c.qkv_n));
    MHUB_TRY(check_ptr(op, "lse", lse, lse_n));
    span written[] = {{"dqkv", dqkv, f32_bytes(c.qkv_n)}};
    span read[] = {{"dout", dout, f32_bytes(c.out_n)},
                   {"out", out, f32_bytes(c.out_n)},
                   {"qkv", qkv, f32_bytes(c.qkv_n)},
                   {"lse", lse, f32_bytes(lse_n)}};
    return check_disjoint(op, written, 1, read, 4);
}

/* ---- elementwise utilities ---- */

static mhub_status check_cast_array(const char *op, const char *name, const void *p,
                                    mhub_dtype dt, int64_t n)
{
    if (!mhub_dtype_valid(dt))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "%s_dtype = %d is not a dtype", name,
                             (int)dt);
    MHUB_TRY(check_ptr(op, name, p, n));
    if ((uintptr_t)p % mhub_dtype_size(dt) != 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "%s = %p is not aligned for %s elements",
                             name, p, mhub_dtype_name(dt));
    return MHUB_OK;
}

/* Every pair of valid dtypes converts; an array cast onto itself with its
 * own dtype is a no-op, any other overlap is refused. */
mhub_status mhub_args_cast(const void *dst, mhub_dtype dst_dtype, const void *src,
                           mhub_dtype src_dtype, int64_t n)
{
    static const char op[] = "cast";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_cast_array(op, "dst", dst, dst_dtype, n));
    MHUB_TRY(check_cast_array(op, "src", src, src_dtype, n));
    if (n == 0 || (dst == src && dst_dtype == src_dtype))
        return MHUB_OK;
    return check_separate(op, "dst", dst, (size_t)n * mhub_dtype_size(dst_dtype), "src", src,
                          (size_t)n * mhub_dtype_size(src_dtype));
}

mhub_status mhub_args_scale(const float *x, int64_t n, float alpha)
{
    static const char op[] = "scale";
    MHUB_TRY(check_count(op, "n", n));
    return check_ptr(op, "x", x, n);
}

mhub_status mhub_args_axpy(const float *y, const float *x, int64_t n, float alpha)
{
    static const char op[] = "axpy";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_ptr(op, "y", y, n));
    MHUB_TRY(check_ptr(op, "x", x, n));
    return check_separate(op, "y", y, f32_bytes(n), "x", x, f32_bytes(n));
}

/* out is written even for n == 0 (the sum is 0), so it is always needed. */
mhub_status mhub_args_sum_squares(const float *x, int64_t n, const double *out)
{
    static const char op[] = "sum_squares";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_ptr(op, "x", x, n));
    return check_ptr(op, "out", out, 1);
}

mhub_status mhub_args_fill_normal(const float *dst, int64_t n, float mean, float std)
{
    static const char op[] = "fill_normal";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_ptr(op, "dst", dst, n));
    MHUB_TRY(check_finite(op, "mean", mean));
    MHUB_TRY(check_finite(op, "std", std));
    if (std < 0.0f)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "std = %g is negative", (double)std);
    return MHUB_OK;
}

mhub_status mhub_args_fill_uniform(const float *dst, int64_t n, float lo, float hi)
{
    static const char op[] = "fill_uniform";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_ptr(op, "dst", dst, n));
    MHUB_TRY(check_finite(op, "lo", lo));
    MHUB_TRY(check_finite(op, "hi", hi));
    if (lo > hi)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "lo = %g is greater than hi = %g",
                             (double)lo, (double)hi);
    return MHUB_OK;
}

/* ---- optimizer updates ---- */

mhub_status mhub_args_sgd_step(const float *param, const float *grad, const float *momentum_buf,
                               int64_t n, float lr, float momentum, float weight_decay)
{
    static const char op[] = "sgd_step";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_ptr(op, "param", param, n));
    MHUB_TRY(check_ptr(op, "grad", grad, n));
    MHUB_TRY(check_finite(op, "lr", lr));
    MHUB_TRY(check_finite(op, "momentum", momentum));
    MHUB_TRY(check_finite(op, "weight_decay", weight_decay));
    if (momentum != 0.0f && !momentum_buf && n > 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "momentum_buf is NULL with momentum = %g",
                             (double)momentum);
    size_t bytes = f32_bytes(n);
    MHUB_TRY(check_separate(op, "param", param, bytes, "grad", grad, bytes));
    MHUB_TRY(check_separate(op, "param", param, bytes, "momentum_buf", momentum_buf, bytes));
    return check_separate(op, "grad", grad, bytes, "momentum_buf", momentum_buf, bytes);
}

static mhub_status check_adamw_scalars(const char *op, float lr, float beta1, float beta2,
                                       float eps, float weight_decay, int64_t t)
{
    MHUB_TRY(check_finite(op, "lr", lr));
    MHUB_TRY(check_finite(op, "weight_decay", weight_decay));
    if (!(beta1 >= 0.0f && beta1 < 1.0f))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "beta1 = %g is outside [0, 1)",
                             (double)beta1);
    if (!(beta2 >= 0.0f && beta2 < 1.0f))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op, "beta2 = %g is outside [0, 1)",
                             (double)beta2);
    MHUB_TRY(check_eps(op, eps));
    if (t < 1)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "t = %" PRId64 " must be >= 1 (steps count from 1)", t);
    return MHUB_OK;
}

mhub_status mhub_args_adamw_step(const float *param, const float *grad, const float *m,
                                 const float *v, int64_t n, float lr, float beta1, float beta2,
                                 float eps, float weight_decay, int64_t t)
{
    static const char op[] = "adamw_step";
    MHUB_TRY(check_count(op, "n", n));
    MHUB_TRY(check_ptr(op, "param", param, n));
    MHUB_TRY(check_ptr(op, "grad", grad, n));
    MHUB_TRY(check_ptr(op, "m", m, n));
    MHUB_TRY(check_ptr(op, "v", v, n));
    MHUB_TRY(check_adamw_scalars(op, lr, beta1, beta2, eps, weight_decay, t));
    size_t bytes = f32_bytes(n);
    const void *arrays[4] = {param, grad, m, v};
    const char *names[4] = {"param", "grad", "m", "v"};
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            MHUB_TRY(check_separate(op, names[i], arrays[i], bytes, names[j], arrays[j], bytes));
    return MHUB_OK;
}
