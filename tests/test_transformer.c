/* test_transformer.c - the CPU backend's transformer kernels: embedding,
 * LayerNorm, RMSNorm, SwiGLU, RoPE and causal grouped-query attention,
 * plain and flash (the latter also against the former on the same inputs).
 *
 * Every kernel is compared with a naive double-precision reference written
 * here from the contract in include/mhub/backend.h (forwards to a relative
 * error of 1e-5, backwards to 1e-4). Every backward is also compared with
 * central finite differences of sum(w * forward) for random w, taken on a
 * double-precision copy of the reference forward, so that a gradient is
 * checked against the function it claims to differentiate rather than
 * against a second copy of the same derivation. Parameter gradients must
 * accumulate onto what is there, activation gradients and outputs
 * overwrite (they start as NaN here, which any accidental read would
 * spread). Shapes are small, include grouped queries (heads 4 with 2 and 1
 * groups), sequences of 1 and 7, and sizes above the kernels' vector block
 * (16) so that both the vectorized blocks and the remainders run. Every
 * kernel is also given bad arguments: it must fail with
 * MHUB_ERR_INVALID_ARG, a message naming the argument, and write nothing. */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>


/* be, setup, teardown, buf_bytes, fbuf: one BLAS thread, 512 buffers */
#define MHUB_TEST_BLAS_THREADS 1
#define MHUB_TEST_MAX_BUFS 512
#include "testutil_buffers.h"

static double *dbuf(int64_t n) { return buf_bytes((size_t)n * sizeof(double)); }

static uint64_t next_stream = 1;

/* shift + scale * N(0, 1), a fresh deterministic stream per call. */
static float *randn(int64_t n, float scale, float shift)
{
    float *x = fbuf(n);
    uint64_t stream = next_stream++;
    for (int64_t i = 0; i < n; i++)
        x[i] = shift + scale * mhub_rng_normal(2024, stream, (uint64_t)i);
    return x;
}

/* Outputs that the kernel must overwrite start as NaN. */
static float *nans(int64_t n)
{
    float *x = fbuf(n);
    for (int64_t i = 0; i < n; i++)
        x[i] = NAN;
    return x;
}

static float *fcopy(const float *x, int64_t n)
{
    float *y = fbuf(n);
    memcpy(y, x, (size_t)n * sizeof *x);
    return y;
}

static double *widen(const float *x, int64_t n)
{
    double *y = dbuf(n);
    for (int64_t i = 0; i < n; i++)
        y[i] = (double)x[i];
    return y;
}

static double rms(const double *x, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += x[i] * x[i];
    return n > 0 ? sqrt(s / (double)n) : 0.0;
}

#define FWD_REL 1e-5 /* forward kernels against the double references */
#define BWD_REL 1e-4 /* backward kernels against the double references */
/* Finite differences: the double references are smooth and O(1), so with
 * h = 1e-6 the central difference is accurate to ~1e-9 (truncation h^2 f'''
 * plus rounding 1e-16 |f| / h); the f32 kernels carry ~1e-6 relative error.
 * 1e-3 leaves orders of margin both ways, while a wrong term in a gradient
 * is off by far more. */
#define FD_H 1e-6
#define FD_REL 1e-3

/* Every got[i] within rel * max(|want[i]|, floor). */
static void ck_close_floor(const float *got, const double *want, int64_t n, double rel,
                           double floor, const char *what)
{
    for (int64_t i = 0; i < n; i++)
        if (!(mhub_test_relerr((double)got[i], want[i], floor) <= rel))
            ck_abort_msg("%s[%lld]: got %.9g, want %.9g (rel tol %g, floor %g)", what,
                         (long long)i, (double)got[i], want[i], rel, floor);
}

/* The same with the floor at the RMS of want (at least 1e-6): elements
 * that cancel to near zero are judged on the scale of the whole array,
 * which is all f32 can promise. */
static void ck_close_all(const float *got, const double *want, int64_t n, double rel,
                         const char *what)
{
    double floor = rms(want, n);
    ck_close_floor(got, want, n, rel, floor > 1e-6 ? floor : 1e-6, what);
}

#define CK_BAD(call, text)                                                               \
    do {                                                                                 \
        CK_FAILS(MHUB_ERR_INVALID_ARG, call);                                            \
        ck_assert_msg(strstr(mhub_last_error(), (text)) != NULL, "error '%s' lacks '%s'", \
                      mhub_last_error(), (text));                                        \
    } while (0)

/* The bytes of x are those of a copy taken before a failed call. */
#define CK_UNCHANGED(x, copy, n)                                                         \
    ck_assert_msg(memcmp((x), (copy), (size_t)(n) * sizeof *(x)) == 0,                   \
                  "%s was written by a call that failed", #x)

/* ---- finite differences ---- */

/* Evaluates sum(w * forward(inputs)) in double from a context whose
 * inputs the caller perturbs in place. */
typedef double (*objective_fn)(void *ctx);

/* Central differences of f with respect to x[0..n) into grad; x is left
 * as it was. */
static void fd_gradient(objective_fn f, void *ctx, double *x, int64_t n, double *grad)
{
    for (int64_t i = 0; i < n; i++) {
        double keep = x[i];
        x[i] = keep + FD_H;
        double fp = f(ctx);
        x[i] = keep - FD_H;
        double fm = f(ctx);
        x[i] = keep;
        grad[i] = (fp - fm) / (2.0 * FD_H);
    }
}

static double weighted_sum(const double *w, const double *y, int64_t n)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += w[i] * y[i];
    return s;
}

/* ================================================================ embedding */

enum { EMB_ROWS = 9, EMB_VOCAB = 11, EMB_DIM = 37 };

/* Ids with repeats (rows 0, 3, 6 share one). */
static int32_t *emb_ids(void)
{
    int32_t *ids = buf_bytes(EMB_ROWS * sizeof *ids);
    for (int r = 0; r < EMB_ROWS; r++)
        ids[r] = (int32_t)((r * 4 + 5) % 12 % EMB_VOCAB);
    ids[3] = ids[6] = ids[0];
    ids[8] = EMB_VOCAB - 1;
    return ids;
}

START_TEST(test_embedding_forward)
{
    const int64_t n = EMB_ROWS * EMB_DIM;
    int32_t *ids = emb_ids();
    float *table = randn(EMB_VOCAB * EMB_DIM, 1.0f, 0.0f);
    float *base = randn(n, 1.0f, 0.0f);
    double *want = dbuf(n), *want_acc = dbuf(n);
    for (int r = 0; r < EMB_ROWS; r++)
        for (int c = 0; c < EMB_DIM; c++) {
            double t = (double)table[ids[r] * EMB_DIM + c];
            want[r * EMB_DIM + c] = t;
            want_acc[r * EMB_DIM + c] = (double)base[r * EMB_DIM + c] + t;
        }
    float *out = nans(n);
    CK_OK(be->ops->embedding_forward(be, out, table, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM, false));
    ck_close_all(out, want, n, FWD_REL, "embedding_forward");
    float *acc = fcopy(base, n);
    CK_OK(be->ops->embedding_forward(be, acc, table, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM, true));
    ck_close_all(acc, want_acc, n, FWD_REL, "embedding_forward accumulate");
}
END_TEST

/* Accumulates onto dtable, repeated ids add up, in row order: the result
 * is bit-identical to a sequential float sum row by row. */
START_TEST(test_embedding_backward_accumulates_in_order)
{
    const int64_t n = EMB_ROWS * EMB_DIM, tn = EMB_VOCAB * EMB_DIM;
    int32_t *ids = emb_ids();
    float *dout = randn(n, 1.0f, 0.0f);
    float *g0 = randn(tn, 1.0f, 0.0f);
    double *want = widen(g0, tn);
    float *seq_sum = fcopy(g0, tn);
    for (int r = 0; r < EMB_ROWS; r++)
        for (int c = 0; c < EMB_DIM; c++) {
            want[ids[r] * EMB_DIM + c] += (double)dout[r * EMB_DIM + c];
            seq_sum[ids[r] * EMB_DIM + c] += dout[r * EMB_DIM + c];
        }
    float *dtable = fcopy(g0, tn);
    CK_OK(be->ops->embedding_backward(be, dtable, dout, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM));
    ck_close_all(dtable, want, tn, BWD_REL, "embedding_backward");
    ck_assert_msg(memcmp(dtable, seq_sum, (size_t)tn * sizeof *dtable) == 0,
                  "embedding_backward differs from the in-order float sum");
}
END_TEST

typedef struct emb_ctx {
    const int32_t *ids;
    double *table, *w, *out;
} emb_ctx;

static double emb_objective(void *p)
{
    emb_ctx *c = p;
    for (int r = 0; r < EMB_ROWS; r++)
        for (int k = 0; k < EMB_DIM; k++)
            c->out[r * EMB_DIM + k] = c->table[c->ids[r] * EMB_DIM + k];
    return weighted_sum(c->w, c->out, EMB_ROWS * EMB_DIM);
}

START_TEST(test_embedding_backward_fd)
{
    const int64_t n = EMB_ROWS * EMB_DIM, tn = EMB_VOCAB * EMB_DIM;
    int32_t *ids = emb_ids();
    float *table = randn(tn, 1.0f, 0.0f), *w = randn(n, 1.0f, 0.0f);
    emb_ctx c = {ids, widen(table, tn), widen(w, n), dbuf(n)};
    double *fd = dbuf(tn);
    fd_gradient(emb_objective, &c, c.table, tn, fd);
    float *dtable = fbuf(tn);
    CK_OK(be->ops->embedding_backward(be, dtable, w, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM));
    ck_close_all(dtable, fd, tn, FD_REL, "embedding_backward vs finite differences");
}
END_TEST

START_TEST(test_embedding_bad_args)
{
    const mhub_backend_ops *o = be->ops;
    const int64_t n = EMB_ROWS * EMB_DIM, tn = EMB_VOCAB * EMB_DIM;
    int32_t *ids = emb_ids();
    float *table = randn(tn, 1.0f, 0.0f), *out = randn(n, 1.0f, 0.0f);
    float *out0 = fcopy(out, n), *table0 = fcopy(table, tn);

    ids[2] = -1;
    CK_BAD(o->embedding_forward(be, out, table, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM, false),
           "embedding_forward: ids[2] = -1 is outside [0, vocab = 11)");
    CK_BAD(o->embedding_backward(be, table, out, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM),
           "embedding_backward: ids[2] = -1");
    ids[2] = 0;
    ids[EMB_ROWS - 1] = EMB_VOCAB;
    CK_BAD(o->embedding_forward(be, out, table, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM, true),
           "ids[8] = 11");
    CK_BAD(o->embedding_backward(be, table, out, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM),
           "ids[8] = 11");
    CK_UNCHANGED(out, out0, n); /* the bad id is in the last row: nothing before it */
    CK_UNCHANGED(table, table0, tn);
    ids[EMB_ROWS - 1] = 0;

    CK_BAD(o->embedding_forward(be, out, table, ids, -1, EMB_VOCAB, EMB_DIM, false),
           "rows = -1");
    CK_BAD(o->embedding_forward(be, out, table, ids, EMB_ROWS, -2, EMB_DIM, false),
           "vocab = -2");
    CK_BAD(o->embedding_forward(be, out, table, ids, EMB_ROWS, EMB_VOCAB, -3, false),
           "dim = -3");
    CK_BAD(o->embedding_forward(be, NULL, table, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM, false),
           "out is NULL");
    CK_BAD(o->embedding_forward(be, out, NULL, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM, false),
           "table is NULL");
    CK_BAD(o->embedding_forward(be, out, table, NULL, EMB_ROWS, EMB_VOCAB, EMB_DIM, false),
           "ids is NULL");
    CK_BAD(o->embedding_forward(be, table + 3, table, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM,
                                false),
           "out and table overlap");
    CK_BAD(o->embedding_forward(be, out, table, ids, INT64_MAX / 16, EMB_VOCAB, 4, false),
           "rows = 576460752303423487 x dim = 4 is too many elements");
    CK_BAD(o->embedding_backward(be, table, out, ids, -1, EMB_VOCAB, EMB_DIM), "rows = -1");
    CK_BAD(o->embedding_backward(be, NULL, out, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM),
           "dtable is NULL");
    CK_BAD(o->embedding_backward(be, table, NULL, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM),
           "dout is NULL");
    CK_BAD(o->embedding_backward(be, table, out, NULL, EMB_ROWS, EMB_VOCAB, EMB_DIM),
           "ids is NULL");
    CK_BAD(o->embedding_backward(be, table, table + 1, ids, EMB_ROWS, EMB_VOCAB, EMB_DIM),
           "dtable and dout overlap");
    CK_UNCHANGED(out, out0, n);
    CK_UNCHANGED(table, table0, tn);

    /* Nothing to do: NULL pointers are fine. */
    CK_OK(o->embedding_forward(be, NULL, NULL, NULL, 0, EMB_VOCAB, EMB_DIM, false));
    CK_OK(o->embedding_backward(be, NULL, NULL, NULL, 0, 0, EMB_DIM));
}
END_TEST

/* ================================================================ norms */

/* LayerNorm in double, two-pass statistics. */
static void ref_layernorm(double *out, double *mean, double *rstd, const double *in,
                          const double *w, const double *b, int64_t rows, int64_t dim,
                          double eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const double *x = in + r * dim;
        double mu = 0.0, var = 0.0;
        for (int64_t i = 0; i < dim; i++)
            mu += x[i];
        mu /= (double)dim;
        for (int64_t i = 0; i < dim; i++)
            var += (x[i] - mu) * (x[i] - mu);
        double rs = 1.0 / sqrt(var / (double)dim + eps);
        if (mean)
            mean[r] = mu;
        if (rstd)
            rstd[r] = rs;
        for (int64_t i = 0; i < dim; i++)
            out[r * dim + i] = (x[i] - mu) * rs * w[i] + (b ? b[i] : 0.0);
    }
}

/* din overwritten, dw and db (may be NULL) accumulate. */
static void ref_layernorm_backward(double *din, double *dw, double *db, const double *dout,
                                   const double *in, const double *w, int64_t rows,
                                   int64_t dim, double eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const double *x = in + r * dim, *dy = dout + r * dim;
        double mu = 0.0, var = 0.0;
        for (int64_t i = 0; i < dim; i++)
            mu += x[i];
        mu /= (double)dim;
        for (int64_t i = 0; i < dim; i++)
            var += (x[i] - mu) * (x[i] - mu);
        double rs = 1.0 / sqrt(var / (double)dim + eps), mg = 0.0, mgx = 0.0;
        for (int64_t i = 0; i < dim; i++) {
            mg += dy[i] * w[i];
            mgx += dy[i] * w[i] * (x[i] - mu) * rs;
        }
        mg /= (double)dim;
        mgx /= (double)dim;
        for (int64_t i = 0; i < dim; i++) {
            double xh = (x[i] - mu) * rs;
            din[r * dim + i] = rs * (dy[i] * w[i] - mg - xh * mgx);
            dw[i] += dy[i] * xh;
            if (db)
                db[i] += dy[i];
        }
    }
}

static void ref_rmsnorm(double *out, double *rstd, const double *in, const double *w,
                        int64_t rows, int64_t dim, double eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const double *x = in + r * dim;
        double ms = 0.0;
        for (int64_t i = 0; i < dim; i++)
            ms += x[i] * x[i];
        double rs = 1.0 / sqrt(ms / (double)dim + eps);
        if (rstd)
            rstd[r] = rs;
        for (int64_t i = 0; i < dim; i++)
            out[r * dim + i] = x[i] * rs * w[i];
    }
}

static void ref_rmsnorm_backward(double *din, double *dw, const double *dout, const double *in,
                                 const double *w, int64_t rows, int64_t dim, double eps)
{
    for (int64_t r = 0; r < rows; r++) {
        const double *x = in + r * dim, *dy = dout + r * dim;
        double ms = 0.0, c = 0.0;
        for (int64_t i = 0; i < dim; i++)
            ms += x[i] * x[i];
        double rs = 1.0 / sqrt(ms / (double)dim + eps);
        for (int64_t i = 0; i < dim; i++)
            c += dy[i] * w[i] * x[i] * rs;
        c /= (double)dim;
        for (int64_t i = 0; i < dim; i++) {
            double xh = x[i] * rs;
            din[r * dim + i] = rs * (dy[i] * w[i] - xh * c);
            dw[i] += dy[i] * xh;
        }
    }
}

#define NORM_ROWS 5
#define NORM_EPS 1e-5f
static const int64_t norm_dims[] = {1, 7, 37, 100};
#define N_NORM_DIMS ((int)(sizeof norm_dims / sizeof norm_dims[0]))

START_TEST(test_layernorm_forward)
{
    for (int di = 0; di < N_NORM_DIMS; di++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            int64_t dim = norm_dims[di], n = NORM_ROWS * dim;
            float *in = randn(n, 1.5f, 0.7f), *w = randn(dim, 0.3f, 1.0f);
            float *b = with_bias ? randn(dim, 0.2f, 0.0f) : NULL;
            double *want = dbuf(n), *wmean = dbuf(NORM_ROWS), *wrstd = dbuf(NORM_ROWS);
            ref_layernorm(want, wmean, wrstd, widen(in, n), widen(w, dim),
                          b ? widen(b, dim) : NULL, NORM_ROWS, dim, (double)NORM_EPS);
            float *out = nans(n), *mean = nans(NORM_ROWS), *rstd = nans(NORM_ROWS);
            CK_OK(be->ops->layernorm_forward(be, out, mean, rstd, in, w, b, NORM_ROWS, dim,
                                             NORM_EPS));
            ck_close_all(out, want, n, FWD_REL, "layernorm_forward out");
            ck_close_all(mean, wmean, NORM_ROWS, FWD_REL, "layernorm_forward mean");
            ck_close_all(rstd, wrstd, NORM_ROWS, FWD_REL, "layernorm_forward rstd");
        }
}
END_TEST

/* A mean 1000 times the spread: one-pass float statistics
 * (E[x^2] - E[x]^2) would lose about 6 digits of the variance; the
 * two-pass double ones keep mean and rstd to float precision. The output
 * is computed in float from the saved float mean, whose rounding
 * (|mean| 2^-24) is 1000 * 6e-8 of the unit spread: that bounds its
 * error, as the kernel's comment says. */
START_TEST(test_layernorm_large_mean)
{
    const int64_t rows = 4, dim = 256, n = rows * dim;
    float *in = randn(n, 1.0f, 1000.0f), *w = randn(dim, 0.3f, 1.0f);
    double *want = dbuf(n), *wmean = dbuf(rows), *wrstd = dbuf(rows);
    ref_layernorm(want, wmean, wrstd, widen(in, n), widen(w, dim), NULL, rows, dim,
                  (double)NORM_EPS);
    float *out = nans(n), *mean = nans(rows), *rstd = nans(rows);
    CK_OK(be->ops->layernorm_forward(be, out, mean, rstd, in, w, NULL, rows, dim, NORM_EPS));
    ck_close_all(mean, wmean, rows, 1e-7, "layernorm_forward mean");
    ck_close_all(rstd, wrstd, rows, 1e-6, "layernorm_forward rstd");
    ck_close_all(out, want, n, 3e-4, "layernorm_forward out");
}
END_TEST

START_TEST(test_layernorm_backward_ref_and_accumulate)
{
    for (int di = 0; di < N_NORM_DIMS; di++)
        for (int with_bias = 0; with_bias < 2; with_bias++) {
            int64_t dim = norm_dims[di], n = NORM_ROWS * dim;
            float *in = randn(n, 1.5f, 0.7f), *w = randn(dim, 0.3f, 1.0f);
            float *dout = randn(n, 1.0f, 0.0f);
            float *mean = fbuf(NORM_ROWS), *rstd = fbuf(NORM_ROWS), *out = fbuf(n);
            CK_OK(be->ops->layernorm_forward(be, out, mean, rstd, in, w, NULL, NORM_ROWS, dim,
                                             NORM_EPS));
            float *dw0 = randn(dim, 1.0f, 0.0f), *db0 = randn(dim, 1.0f, 0.0f);
            double *want_din = dbuf(n), *want_dw = widen(dw0, dim);
            double *want_db = with_bias ? widen(db0, dim) : NULL;
            ref_layernorm_backward(want_din, want_dw, want_db, widen(dout, n), widen(in, n),
                                   widen(w, dim), NORM_ROWS, dim, (double)NORM_EPS);
            float *din = nans(n), *dw = fcopy(dw0, dim);
            float *db = with_bias ? fcopy(db0, dim) : NULL;
            CK_OK(be->ops->layernorm_backward(be, din, dw, db, dout, in, w, mean, rstd,
                                              NORM_ROWS, dim));
            ck_close_all(din, want_din, n, BWD_REL, "layernorm_backward din");
            ck_close_all(dw, want_dw, dim, BWD_REL, "layernorm_backward dweight");
            if (with_bias)
                ck_close_all(db, want_db, dim, BWD_REL, "layernorm_backward dbias");
        }
}
END_TEST

typedef struct norm_ctx {
    int64_t rows, dim;
    double *in, *w, *b, *wt, *out;
} norm_ctx;

static double layernorm_objective(void *p)
{
    norm_ctx *c = p;
    ref_layernorm(c->out, NULL, NULL, c->in, c->w, c->b, c->rows, c->dim, (double)NORM_EPS);
    return weighted_sum(c->wt, c->out, c->rows * c->dim);
}

static double rmsnorm_objective(void *p)
{
    norm_ctx *c = p;
    ref_rmsnorm(c->out, NULL, c->in, c->w, c->rows, c->dim, (double)NORM_EPS);
    return weighted_sum(c->wt, c->out, c->rows * c->dim);
}

START_TEST(test_layernorm_backward_fd)
{
    static const int64_t dims[] = {7, 37};
    for (int di = 0; di < 2; di++) {
        int64_t rows = 3, dim = dims[di], n = rows * dim;
        float *in = randn(n, 1.5f, 0.7f), *w = randn(dim, 0.3f, 1.0f);
        float *b = randn(dim, 0.2f, 0.0f), *wt = randn(n, 1.0f, 0.0f);
        norm_ctx c = {rows, dim, widen(in, n), widen(w, dim), widen(b, dim), widen(wt, n),
                      dbuf(n)};
        double *fd_in = dbuf(n), *fd_w = dbuf(dim), *fd_b = dbuf(dim);
        fd_gradient(layernorm_objective, &c, c.in, n, fd_in);
        fd_gradient(layernorm_objective, &c, c.w, dim, fd_w);
        fd_gradient(layernorm_objective, &c, c.b, dim, fd_b);

        float *out = fbuf(n), *mean = fbuf(rows), *rstd = fbuf(rows);
        CK_OK(be->ops->layernorm_forward(be, out, mean, rstd, in, w, b, rows, dim, NORM_EPS));
        float *din = nans(n), *dw = fbuf(dim), *db = fbuf(dim);
        CK_OK(be->ops->layernorm_backward(be, din, dw, db, wt, in, w, mean, rstd, rows, dim));
        ck_close_all(din, fd_in, n, FD_REL, "layernorm din vs finite differences");
        ck_close_all(dw, fd_w, dim, FD_REL, "layernorm dweight vs finite differences");
        ck_close_all(db, fd_b, dim, FD_REL, "layernorm dbias vs finite differences");
    }
}
END_TEST

START_TEST(test_rmsnorm_forward)
{
    for (int di = 0; di < N_NORM_DIMS; di++) {
        int64_t dim = norm_dims[di], n = NORM_ROWS * dim;
        float *in = randn(n, 1.5f, 0.7f), *w = randn(dim, 0.3f, 1.0f);
        double *want = dbuf(n), *wrstd = dbuf(NORM_ROWS);
        ref_rmsnorm(want, wrstd, widen(in, n), widen(w, dim), NORM_ROWS, dim,
                    (double)NORM_EPS);
        float *out = nans(n), *rstd = nans(NORM_ROWS);
        CK_OK(be->ops->rmsnorm_forward(be, out, rstd, in, w, NORM_ROWS, dim, NORM_EPS));
        ck_close_all(out, want, n, FWD_REL, "rmsnorm_forward out");
        ck_close_all(rstd, wrstd, NORM_ROWS, FWD_REL, "rmsnorm_forward rstd");
    }
}
END_TEST

START_TEST(test_rmsnorm_backward_ref_and_accumulate)
{
    for (int di = 0; di < N_NORM_DIMS; di++) {
        int64_t dim = norm_dims[di], n = NORM_ROWS * dim;
        float *in = randn(n, 1.5f, 0.7f), *w = randn(dim, 0.3f, 1.0f);
        float *dout = randn(n, 1.0f, 0.0f), *out = fbuf(n), *rstd = fbuf(NORM_ROWS);
        CK_OK(be->ops->rmsnorm_forward(be, out, rstd, in, w, NORM_ROWS, dim, NORM_EPS));
        float *dw0 = randn(dim, 1.0f, 0.0f);
        double *want_din = dbuf(n), *want_dw = widen(dw0, dim);
        ref_rmsnorm_backward(want_din, want_dw, widen(dout, n), widen(in, n), widen(w, dim),
                             NORM_ROWS, dim, (double)NORM_EPS);
        float *din = nans(n), *dw = fcopy(dw0, dim);
        CK_OK(be->ops->rmsnorm_backward(be, din, dw, dout, in, w, rstd, NORM_ROWS, dim));
        /* din = rstd (g - xhat mean(g xhat)) is a difference of terms of
         * size rstd |g|, g = dout w; f32 is accurate relative to those. At
         * dim 1 they cancel down to g eps / (x^2 + eps), so the floor is
         * their scale rather than din's. */
        double term = 0.0;
        for (int64_t i = 0; i < n; i++) {
            double t = (double)rstd[i / dim] * (double)dout[i] * (double)w[i % dim];
            term += t * t / (double)n;
        }
        double floor = rms(want_din, n) > sqrt(term) ? rms(want_din, n) : sqrt(term);
        ck_close_floor(din, want_din, n, BWD_REL, floor, "rmsnorm_backward din");
        ck_close_all(dw, want_dw, dim, BWD_REL, "rmsnorm_backward dweight");
    }
}
END_TEST

START_TEST(test_rmsnorm_backward_fd)
{
    static const int64_t dims[] = {7, 37};
    for (int di = 0; di < 2; di++) {
        int64_t rows = 3, dim = dims[di], n = rows * dim;
        float *in = randn(n, 1.5f, 0.7f), *w = randn(dim, 0.3f, 1.0f);
        float *wt = randn(n, 1.0f, 0.0f);
        norm_ctx c = {rows, dim, widen(in, n), widen(w, dim), NULL, widen(wt, n), dbuf(n)};
        double *fd_in = dbuf(n), *fd_w = dbuf(dim);
        fd_gradient(rmsnorm_objective, &c, c.in, n, fd_in);
        fd_gradient(rmsnorm_objective, &c, c.w, dim, fd_w);

        float *out = fbuf(n), *rstd = fbuf(rows);
        CK_OK(be->ops->rmsnorm_forward(be, out, rstd, in, w, rows, dim, NORM_EPS));
        float *din = nans(n), *dw = fbuf(dim);
        CK_OK(be->ops->rmsnorm_backward(be, din, dw, wt, in, w, rstd, rows, dim));
        ck_close_all(din, fd_in, n, FD_REL, "rmsnorm din vs finite differences");
        ck_close_all(dw, fd_w, dim, FD_REL, "rmsnorm dweight vs finite differences");
    }
}
END_TEST

START_TEST(test_norm_bad_args)
{
    const mhub_backend_ops *o = be->ops;
    const int64_t rows = 4, dim = 8, n = rows * dim;
    float *in = randn(n, 1.0f, 0.0f), *w = randn(dim, 1.0f, 1.0f), *b = randn(dim, 1.0f, 0.0f);
    float *out = randn(n, 1.0f, 0.0f), *mean = randn(rows, 1.0f, 0.0f);
    float *rstd = randn(rows, 1.0f, 0.0f), *dw = randn(dim, 1.0f, 0.0f);
    float *out0 = fcopy(out, n), *mean0 = fcopy(mean, rows), *rstd0 = fcopy(rstd, rows);
    float *dw0 = fcopy(dw, dim);

    CK_BAD(o->layernorm_forward(be, out, mean, rstd, in, w, b, -1, dim, 1e-5f),
           "layernorm_forward: rows = -1");
    CK_BAD(o->layernorm_forward(be, out, mean, rstd, in, w, b, rows, -1, 1e-5f), "dim = -1");
    CK_BAD(o->layernorm_forward(be, NULL, mean, rstd, in, w, b, rows, dim, 1e-5f),
           "out is NULL");
    CK_BAD(o->layernorm_forward(be, out, NULL, rstd, in, w, b, rows, dim, 1e-5f),
           "mean is NULL");
    CK_BAD(o->layernorm_forward(be, out, mean, NULL, in, w, b, rows, dim, 1e-5f),
           "rstd is NULL");
    CK_BAD(o->layernorm_forward(be, out, mean, rstd, NULL, w, b, rows, dim, 1e-5f),
           "in is NULL");
    CK_BAD(o->layernorm_forward(be, out, mean, rstd, in, NULL, b, rows, dim, 1e-5f),
           "weight is NULL");
    CK_BAD(o->layernorm_forward(be, out, mean, rstd, in, w, b, rows, dim, -1e-5f),
           "eps = -1e-05 must be finite and >= 0");
    CK_BAD(o->layernorm_forward(be, out, mean, rstd, in, w, b, rows, dim, NAN), "eps = nan");
    CK_BAD(o->layernorm_forward(be, in, mean, rstd, in, w, b, rows, dim, 1e-5f),
           "out and in overlap");
    CK_BAD(o->layernorm_forward(be, out, out + 3, rstd, in, w, b, rows, dim, 1e-5f),
           "out and mean overlap");
    CK_BAD(o->layernorm_backward(be, NULL, dw, b, out, in, w, mean, rstd, rows, dim),
           "layernorm_backward: din is NULL");
    CK_BAD(o->layernorm_backward(be, out, NULL, b, out0, in, w, mean, rstd, rows, dim),
           "dweight is NULL");
    CK_BAD(o->layernorm_backward(be, out, dw, b, NULL, in, w, mean, rstd, rows, dim),
           "dout is NULL");
    CK_BAD(o->layernorm_backward(be, out, dw, b, out0, in, w, NULL, rstd, rows, dim),
           "mean is NULL");
    CK_BAD(o->layernorm_backward(be, out, dw, dw + 1, out0, in, w, mean, rstd, rows, dim),
           "dweight and dbias overlap");
    CK_BAD(o->layernorm_backward(be, out, dw, b, out, in, w, mean, rstd, rows, dim),
           "din and dout overlap");
    CK_BAD(o->layernorm_backward(be, out, dw, b, out0, in, w, mean, rstd, rows, -5),
           "dim = -5");

    CK_BAD(o->rmsnorm_forward(be, out, rstd, in, w, -1, dim, 1e-5f),
           "rmsnorm_forward: rows = -1");
    CK_BAD(o->rmsnorm_forward(be, NULL, rstd, in, w, rows, dim, 1e-5f), "out is NULL");
    CK_BAD(o->rmsnorm_forward(be, out, NULL, in, w, rows, dim, 1e-5f), "rstd is NULL");
    CK_BAD(o->rmsnorm_forward(be, out, rstd, in, NULL, rows, dim, 1e-5f), "weight is NULL");
    CK_BAD(o->rmsnorm_forward(be, out, rstd, in, w, rows, dim, INFINITY), "eps = inf");
    CK_BAD(o->rmsnorm_forward(be, out, rstd, out + 1, w, rows, dim, 1e-5f),
           "out and in overlap");
    CK_BAD(o->rmsnorm_backward(be, NULL, dw, out0, in, w, rstd, rows, dim),
           "rmsnorm_backward: din is NULL");
    CK_BAD(o->rmsnorm_backward(be, out, NULL, out0, in, w, rstd, rows, dim),
           "dweight is NULL");
    CK_BAD(o->rmsnorm_backward(be, out, dw, out0, in, w, NULL, rows, dim), "rstd is NULL");
    CK_BAD(o->rmsnorm_backward(be, out, dw, out0, in, dw, rstd, rows, dim),
           "dweight and weight overlap");
    CK_UNCHANGED(out, out0, n);
    CK_UNCHANGED(mean, mean0, rows);
    CK_UNCHANGED(rstd, rstd0, rows);
    CK_UNCHANGED(dw, dw0, dim);

    /* No elements: nothing is needed. */
    CK_OK(o->layernorm_forward(be, NULL, NULL, NULL, NULL, NULL, NULL, 0, dim, 1e-5f));
    CK_OK(o->layernorm_forward(be, NULL, NULL, NULL, NULL, NULL, NULL, rows, 0, 1e-5f));
    CK_OK(o->layernorm_backward(be, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, dim));
    CK_OK(o->rmsnorm_forward(be, NULL, NULL, NULL, NULL, 0, dim, 1e-5f));
    CK_OK(o->rmsnorm_backward(be, NULL, NULL, NULL, NULL, NULL, NULL, rows, 0));
}
END_TEST

/* ================================================================ SwiGLU */

static double silu_ref(double g) { return g / (1.0 + exp(-g)); }

static void ref_swiglu(double *out, const double *in, int64_t rows, int64_t ffn)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < ffn; j++)
            out[r * ffn + j] = silu_ref(in[r * 2 * ffn + j]) * in[r * 2 * ffn + ffn + j];
}

static void ref_swiglu_backward(double *din, const double *dout, const double *in,
                                int64_t rows, int64_t ffn)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < ffn; j++) {
            double g = in[r * 2 * ffn + j], u = in[r * 2 * ffn + ffn + j];
            double s = 1.0 / (1.0 + exp(-g)), dy = dout[r * ffn + j];
            din[r * 2 * ffn + j] = dy * u * (s + g * s * (1.0 - s));
            din[r * 2 * ffn + ffn + j] = dy * g * s;
        }
}

enum { SW_ROWS = 3, SW_FFN = 37 };

START_TEST(test_swiglu_forward_backward)
{
    const int64_t n = SW_ROWS * SW_FFN;
    float *in = randn(2 * n, 2.0f, 0.0f), *dout = randn(n, 1.0f, 0.0f);
    double *want = dbuf(n), *want_din = dbuf(2 * n);
    ref_swiglu(want, widen(in, 2 * n), SW_ROWS, SW_FFN);
    ref_swiglu_backward(want_din, widen(dout, n), widen(in, 2 * n), SW_ROWS, SW_FFN);
    float *out = nans(n), *din = nans(2 * n);
    CK_OK(be->ops->swiglu_forward(be, out, in, SW_ROWS, SW_FFN));
    CK_OK(be->ops->swiglu_backward(be, din, dout, in, SW_ROWS, SW_FFN));
    ck_close_all(out, want, n, FWD_REL, "swiglu_forward");
    ck_close_all(din, want_din, 2 * n, BWD_REL, "swiglu_backward");
}
END_TEST

/* Gates far out on both sides: silu reaches 0 and g, with no NaN from
 * e^-g overflowing. */
START_TEST(test_swiglu_extreme_gates)
{
    static const float gates[] = {-1000.0f, -100.0f, -88.0f, 88.0f, 100.0f, 1000.0f};
    const int64_t ffn = 6;
    float *in = fbuf(2 * ffn), *dout = fbuf(ffn), *out = nans(ffn), *din = nans(2 * ffn);
    for (int j = 0; j < ffn; j++) {
        in[j] = gates[j];
        in[ffn + j] = 1.5f;
        dout[j] = 1.0f;
    }
    CK_OK(be->ops->swiglu_forward(be, out, in, 1, ffn));
    CK_OK(be->ops->swiglu_backward(be, din, dout, in, 1, ffn));
    for (int j = 0; j < ffn; j++) {
        double g = gates[j], s = 1.0 / (1.0 + exp(-g));
        ck_assert_msg(isfinite(out[j]) && isfinite(din[j]) && isfinite(din[ffn + j]),
                      "gate %g: non-finite result", g);
        ck_assert_msg(fabs(out[j] - 1.5 * g * s) <= 1e-6 * fabs(g) + 1e-30, "gate %g: out %g",
                      g, (double)out[j]);
        ck_assert_msg(fabs(din[ffn + j] - g * s) <= 1e-6 * fabs(g) + 1e-30,
                      "gate %g: dup %g", g, (double)din[ffn + j]);
    }
}
END_TEST

typedef struct swiglu_ctx {
    double *in, *w, *out;
} swiglu_ctx;

static double swiglu_objective(void *p)
{
    swiglu_ctx *c = p;
    ref_swiglu(c->out, c->in, SW_ROWS, SW_FFN);
    return weighted_sum(c->w, c->out, SW_ROWS * SW_FFN);
}

START_TEST(test_swiglu_backward_fd)
{
    const int64_t n = SW_ROWS * SW_FFN;
    float *in = randn(2 * n, 2.0f, 0.0f), *w = randn(n, 1.0f, 0.0f);
    swiglu_ctx c = {widen(in, 2 * n), widen(w, n), dbuf(n)};
    double *fd = dbuf(2 * n);
    fd_gradient(swiglu_objective, &c, c.in, 2 * n, fd);
    float *din = nans(2 * n);
    CK_OK(be->ops->swiglu_backward(be, din, w, in, SW_ROWS, SW_FFN));
    ck_close_all(din, fd, 2 * n, FD_REL, "swiglu_backward vs finite differences");
}
END_TEST

START_TEST(test_swiglu_bad_args)
{
    const mhub_backend_ops *o = be->ops;
    const int64_t rows = 2, ffn = 5;
    float *in = randn(2 * rows * ffn, 1.0f, 0.0f), *out = randn(2 * rows * ffn, 1.0f, 0.0f);
    float *out0 = fcopy(out, 2 * rows * ffn);
    CK_BAD(o->swiglu_forward(be, out, in, -1, ffn), "swiglu_forward: rows = -1");
    CK_BAD(o->swiglu_forward(be, out, in, rows, -2), "ffn = -2");
    CK_BAD(o->swiglu_forward(be, NULL, in, rows, ffn), "out is NULL");
    CK_BAD(o->swiglu_forward(be, out, NULL, rows, ffn), "in is NULL");
    CK_BAD(o->swiglu_forward(be, in + 2 * ffn, in, rows, ffn), "out and in overlap");
    CK_BAD(o->swiglu_forward(be, out, in, INT64_MAX / 16, 2), "too many");
    CK_BAD(o->swiglu_backward(be, out, in, in, -1, ffn), "swiglu_backward: rows = -1");
    CK_BAD(o->swiglu_backward(be, NULL, in, in, rows, ffn), "din is NULL");
    CK_BAD(o->swiglu_backward(be, out, NULL, in, rows, ffn), "dout is NULL");
    CK_BAD(o->swiglu_backward(be, out, in, NULL, rows, ffn), "in is NULL");
    CK_BAD(o->swiglu_backward(be, out, out + 1, in, rows, ffn), "din and dout overlap");
    CK_BAD(o->swiglu_backward(be, in, out0, in, rows, ffn), "din and in overlap");
    CK_UNCHANGED(out, out0, 2 * rows * ffn);
    CK_OK(o->swiglu_forward(be, NULL, NULL, 0, ffn));
    CK_OK(o->swiglu_backward(be, NULL, NULL, NULL, rows, 0));
}
END_TEST

/* ================================================================ qkv layout */

/* A shape of the grouped qkv layout. */
typedef struct shape {
    int64_t batch, seq, heads, groups, d;
} shape;

static int64_t width_of(shape s) { return (s.heads + 2 * s.groups) * s.d; }
static int64_t qkv_len(shape s) { return s.batch * s.seq * width_of(s); }
static int64_t out_len(shape s) { return s.batch * s.seq * s.heads * s.d; }
static int64_t probs_len(shape s) { return s.batch * s.heads * s.seq * s.seq; }

/* Columns, written out from the contract: per group (Megatron-Core's
 * order), its heads/groups query heads, then its key head, then its value
 * head. Query head h belongs to group h / (heads / groups). */
static int64_t col_q(shape s, int64_t h)
{
    int64_t per = s.heads / s.groups, g = h / per, j = h % per;
    return (g * (per + 2) + j) * s.d;
}
static int64_t col_k(shape s, int64_t g)
{
    int64_t per = s.heads / s.groups;
    return (g * (per + 2) + per) * s.d;
}

static int64_t col_v(shape s, int64_t g) { return col_k(s, g) + s.d; }

/* The shapes of the small tests: grouped queries (2 groups of 2, 1 group
 * of 4), plain multi-head (4 groups of 1), sequences of 7 and of 1. */
static const shape small_shapes[] = {
    {2, 7, 4, 2, 8}, {2, 7, 4, 1, 8}, {2, 7, 4, 4, 8}, {1, 1, 4, 2, 8}, {2, 1, 4, 1, 8},
};
#define N_SMALL ((int)(sizeof small_shapes / sizeof small_shapes[0]))

/* ================================================================ RoPE */

/* Rotates every query and key head of x by sign * pos * base^(-2i/d) on
 * the pairs (i, i + d/2), i < d/2 (Hugging Face's rotate_half), in
 * double; value heads are left alone. */
static void ref_rope(double *x, shape s, double base, double sign)
{
    int64_t half = s.d / 2, W = width_of(s);
    for (int64_t b = 0; b < s.batch; b++)
        for (int64_t t = 0; t < s.seq; t++) {
            double *row = x + (b * s.seq + t) * W;
            for (int64_t h = 0; h < s.heads + s.groups; h++) {
                /* the query heads, then the key head of every group */
                int64_t col = h < s.heads ? col_q(s, h) : col_k(s, h - s.heads);
                for (int64_t i = 0; i < half; i++) {
                    double a = sign * (double)t * pow(base, -2.0 * (double)i / (double)s.d);
                    double x1 = row[col + i], x2 = row[col + half + i];
                    row[col + i] = x1 * cos(a) - x2 * sin(a);
                    row[col + half + i] = x2 * cos(a) + x1 * sin(a);
                }
            }
        }
}

#define ROPE_BASE 10000.0f

/* The value columns of every row of qkv are the same in a and b. */
static void ck_values_untouched(const float *a, const float *b, shape s)
{
    int64_t W = width_of(s);
    for (int64_t r = 0; r < s.batch * s.seq; r++)
        for (int64_t g = 0; g < s.groups; g++)
            ck_assert_msg(memcmp(a + r * W + col_v(s, g), b + r * W + col_v(s, g),
                                 (size_t)s.d * sizeof *a) == 0,
                          "row %lld: value head %lld was rotated", (long long)r, (long long)g);
}

START_TEST(test_rope_forward_backward)
{
    shape shapes[N_SMALL + 1];
    memcpy(shapes, small_shapes, sizeof small_shapes);
    shapes[N_SMALL] = (shape){2, 5, 2, 1, 40}; /* d/2 = 20: a vector block and a remainder */
    for (int si = 0; si <= N_SMALL; si++) {
        shape s = shapes[si];
        int64_t n = qkv_len(s);
        float *x = randn(n, 1.0f, 0.0f);
        double *want = widen(x, n), *want_back = widen(x, n);
        ref_rope(want, s, ROPE_BASE, 1.0);
        ref_rope(want_back, s, ROPE_BASE, -1.0);
        float *y = fcopy(x, n);
        CK_OK(be->ops->rope_forward(be, y, s.batch, s.seq, s.heads, s.groups, s.d, ROPE_BASE));
        ck_close_all(y, want, n, FWD_REL, "rope_forward");
        ck_values_untouched(y, x, s);
        float *dy = fcopy(x, n);
        CK_OK(be->ops->rope_backward(be, dy, s.batch, s.seq, s.heads, s.groups, s.d,
                                     ROPE_BASE));
        ck_close_all(dy, want_back, n, BWD_REL, "rope_backward");
        ck_values_untouched(dy, x, s);
        /* The backward undoes the forward (a rotation's inverse is its
         * transpose). */
        CK_OK(be->ops->rope_backward(be, y, s.batch, s.seq, s.heads, s.groups, s.d,
                                     ROPE_BASE));
        ck_close_all(y, widen(x, n), n, FWD_REL, "rope_backward(rope_forward(x))");
    }
}
END_TEST

/* Angles in double: at positions in the thousands the rotated values still
 * match the double reference to float accuracy. */
START_TEST(test_rope_long_positions)
{
    shape s = {1, 4096, 1, 1, 64};
    int64_t n = qkv_len(s);
    float *x = randn(n, 1.0f, 0.0f);
    double *want = widen(x, n);
    ref_rope(want, s, 500000.0, 1.0);
    CK_OK(be->ops->rope_forward(be, x, s.batch, s.seq, s.heads, s.groups, s.d, 500000.0f));
    ck_close_all(x, want, n, FWD_REL, "rope_forward at long positions");
}
END_TEST

typedef struct rope_ctx {
    shape s;
    double *x, *w, *y;
} rope_ctx;

static double rope_objective(void *p)
{
    rope_ctx *c = p;
    int64_t n = qkv_len(c->s);
    memcpy(c->y, c->x, (size_t)n * sizeof *c->y);
    ref_rope(c->y, c->s, ROPE_BASE, 1.0);
    return weighted_sum(c->w, c->y, n);
}

START_TEST(test_rope_backward_fd)
{
    for (int si = 0; si < N_SMALL; si++) {
        shape s = small_shapes[si];
        int64_t n = qkv_len(s);
        float *x = randn(n, 1.0f, 0.0f), *w = randn(n, 1.0f, 0.0f);
        rope_ctx c = {s, widen(x, n), widen(w, n), dbuf(n)};
        double *fd = dbuf(n);
        fd_gradient(rope_objective, &c, c.x, n, fd);
        float *dx = fcopy(w, n);
        CK_OK(be->ops->rope_backward(be, dx, s.batch, s.seq, s.heads, s.groups, s.d,
                                     ROPE_BASE));
        ck_close_all(dx, fd, n, FD_REL, "rope_backward vs finite differences");
    }
}
END_TEST

/* ================================================================ attention */

/* Longest sequence the references take (their row buffer is on the stack:
 * they run inside the finite-difference loops). */
#define REF_MAX_SEQ 512

/* Causal attention in double, straight from the contract. probs may be
 * NULL. */
static void ref_attention(double *out, double *probs, const double *qkv, shape s)
{
    int64_t T = s.seq, d = s.d, W = width_of(s), per = s.heads / s.groups;
    double scale = 1.0 / sqrt((double)d);
    double p[REF_MAX_SEQ];
    ck_assert_int_le(T, REF_MAX_SEQ);
    for (int64_t b = 0; b < s.batch; b++)
        for (int64_t h = 0; h < s.heads; h++) {
            const double *base = qkv + b * T * W;
            int64_t qc = col_q(s, h), kc = col_k(s, h / per), vc = col_v(s, h / per);
            for (int64_t t = 0; t < T; t++) {
                double m = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j <= t; j++) {
                    double dot = 0.0;
                    for (int64_t i = 0; i < d; i++)
                        dot += base[t * W + qc + i] * base[j * W + kc + i];
                    p[j] = dot * scale;
                    m = p[j] > m ? p[j] : m;
                }
                for (int64_t j = 0; j <= t; j++) {
                    p[j] = exp(p[j] - m);
                    sum += p[j];
                }
                for (int64_t j = 0; j < T; j++) {
                    double pj = j <= t ? p[j] / sum : 0.0;
                    if (probs)
                        probs[((b * s.heads + h) * T + t) * T + j] = pj;
                    p[j] = pj;
                }
                for (int64_t i = 0; i < d; i++) {
                    double o = 0.0;
                    for (int64_t j = 0; j <= t; j++)
                        o += p[j] * base[j * W + vc + i];
                    out[(b * T + t) * s.heads * d + h * d + i] = o;
                }
            }
        }
}

/* dqkv (overwritten) from dout, in double. */
static void ref_attention_backward(double *dqkv, const double *dout, const double *qkv, shape s)
{
    int64_t T = s.seq, d = s.d, W = width_of(s), per = s.heads / s.groups;
    double scale = 1.0 / sqrt((double)d);
    double *probs = dbuf(probs_len(s)), *out = dbuf(out_len(s)), *dp = dbuf(T);
    ref_attention(out, probs, qkv, s);
    memset(dqkv, 0, (size_t)qkv_len(s) * sizeof *dqkv);
    for (int64_t b = 0; b < s.batch; b++)
        for (int64_t h = 0; h < s.heads; h++) {
            const double *base = qkv + b * T * W;
            double *dbase = dqkv + b * T * W;
            int64_t qc = col_q(s, h), kc = col_k(s, h / per), vc = col_v(s, h / per);
            for (int64_t t = 0; t < T; t++) {
                const double *p = probs + ((b * s.heads + h) * T + t) * T;
                const double *dy = dout + (b * T + t) * s.heads * d + h * d;
                double dot = 0.0;
                for (int64_t j = 0; j <= t; j++) {
                    dp[j] = 0.0;
                    for (int64_t i = 0; i < d; i++) {
                        dp[j] += dy[i] * base[j * W + vc + i];
                        dbase[j * W + vc + i] += p[j] * dy[i];
                    }
                    dot += dp[j] * p[j];
                }
                for (int64_t j = 0; j <= t; j++) {
                    double ds = p[j] * (dp[j] - dot) * scale;
                    for (int64_t i = 0; i < d; i++) {
                        dbase[t * W + qc + i] += ds * base[j * W + kc + i];
                        dbase[j * W + kc + i] += ds * base[t * W + qc + i];
                    }
                }
            }
        }
}

static void run_attention_forward(float *out, float *probs, const float *qkv, shape s)
{
    CK_OK(be->ops->causal_attention_forward(be, out, probs, qkv, s.batch, s.seq, s.heads,
                                            s.groups, s.d));
}

static void run_attention_backward(float *dqkv, const float *dout, const float *qkv,
                                   const float *probs, shape s)
{
    float *scratch = nans(probs_len(s));
    CK_OK(be->ops->causal_attention_backward(be, dqkv, scratch, dout, qkv, probs, s.batch,
                                             s.seq, s.heads, s.groups, s.d));
}

/* Forward and backward against the references: out, probs (with exact
 * zeros above the diagonal), and dqkv overwritten from NaN. */
static void check_attention(shape s)
{
    int64_t n = qkv_len(s), no = out_len(s), np = probs_len(s);
    float *qkv = randn(n, 1.0f, 0.0f), *dout = randn(no, 1.0f, 0.0f);
    double *want = dbuf(no), *want_p = dbuf(np), *want_dqkv = dbuf(n);
    double *qkv_d = widen(qkv, n);
    ref_attention(want, want_p, qkv_d, s);
    ref_attention_backward(want_dqkv, widen(dout, no), qkv_d, s);
    float *out = nans(no), *probs = nans(np), *dqkv = nans(n);
    run_attention_forward(out, probs, qkv, s);
    ck_close_all(out, want, no, FWD_REL, "causal_attention_forward out");
    ck_close_all(probs, want_p, np, FWD_REL, "causal_attention_forward probs");
    for (int64_t i = 0; i < np; i++)
        if (want_p[i] == 0.0)
            ck_assert_msg(probs[i] == 0.0f, "probs[%lld] above the diagonal = %g",
                          (long long)i, (double)probs[i]);
    run_attention_backward(dqkv, dout, qkv, probs, s);
    ck_close_all(dqkv, want_dqkv, n, BWD_REL, "causal_attention_backward dqkv");
}

START_TEST(test_attention_small)
{
    for (int si = 0; si < N_SMALL; si++)
        check_attention(small_shapes[si]);
}
END_TEST

/* Sequences past the kernel's row block (128): two blocks, and three with
 * a last block of one row; head_dim 16 and 20 (a block and a remainder in
 * the softmax rows' lengths are covered by the sequence). */
START_TEST(test_attention_long)
{
    check_attention((shape){1, 150, 2, 1, 16});
    check_attention((shape){2, 257, 4, 2, 20});
}
END_TEST

typedef struct attn_ctx {
    shape s;
    double *qkv, *w, *out;
} attn_ctx;

static double attention_objective(void *p)
{
    attn_ctx *c = p;
    ref_attention(c->out, NULL, c->qkv, c->s);
    return weighted_sum(c->w, c->out, out_len(c->s));
}

START_TEST(test_attention_backward_fd)
{
    for (int si = 0; si < N_SMALL; si++) {
        shape s = small_shapes[si];
        int64_t n = qkv_len(s), no = out_len(s);
        float *qkv = randn(n, 1.0f, 0.0f), *w = randn(no, 1.0f, 0.0f);
        attn_ctx c = {s, widen(qkv, n), widen(w, no), dbuf(no)};
        double *fd = dbuf(n);
        fd_gradient(attention_objective, &c, c.qkv, n, fd);
        float *out = fbuf(no), *probs = fbuf(probs_len(s)), *dqkv = nans(n);
        run_attention_forward(out, probs, qkv, s);
        run_attention_backward(dqkv, w, qkv, probs, s);
        ck_close_all(dqkv, fd, n, FD_REL, "causal_attention_backward vs finite differences");
    }
}
END_TEST

/* ---------------------------------------------------------- flash attention */

/* lse[b, h, t] = log sum_{j <= t} exp(scale q_t . k_j), in double. */
static void ref_lse(double *lse, const double *qkv, shape s)
{
    int64_t T = s.seq, d = s.d, W = width_of(s), per = s.heads / s.groups;
    double scale = 1.0 / sqrt((double)d);
    double z[REF_MAX_SEQ];
    ck_assert_int_le(T, REF_MAX_SEQ);
    for (int64_t b = 0; b < s.batch; b++)
        for (int64_t h = 0; h < s.heads; h++) {
            const double *base = qkv + b * T * W;
            int64_t qc = col_q(s, h), kc = col_k(s, h / per);
            for (int64_t t = 0; t < T; t++) {
                double m = -INFINITY, sum = 0.0;
                for (int64_t j = 0; j <= t; j++) {
                    double dot = 0.0;
                    for (int64_t i = 0; i < d; i++)
                        dot += base[t * W + qc + i] * base[j * W + kc + i];
                    z[j] = dot * scale;
                    m = z[j] > m ? z[j] : m;
                }
                for (int64_t j = 0; j <= t; j++)
                    sum += exp(z[j] - m);
                lse[(b * s.heads + h) * T + t] = m + log(sum);
            }
        }
}

static int64_t lse_len(shape s) { return s.batch * s.heads * s.seq; }

/* Flash attention against the plain kernels on the same inputs (out and
 * dqkv within FLASH_REL of them, on the scale of the array), against the
 * double references, and lse against the softmax normaliser in double.
 * Outputs start as NaN. qkv ~ N(0, sigma^2): a large sigma spreads the
 * scores, so a later key tile often raises a row's running max.
 * FLASH_REL is twice the forward tolerance: at T = 500 with sigma 3 each
 * kernel's dqkv is itself ~1e-5 from the double reference (measured:
 * flash 2.0e-5, plain 1.1e-5, apart 1.0e-5), as rounding of the scores
 * grows with their spread and each row's sums with T. */
#define FLASH_REL 2e-5
/* The CPU offers flash attention only when asked (a GPT then takes it). */
START_TEST(test_flash_is_optional)
{
    mhub_backend *plain = NULL, *flash = NULL;
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &plain));
    CK_OK(mhub_cpu_backend_create(
        &(mhub_cpu_options){.blas_threads = 1, .flash_attention = true}, &flash));
    ck_assert_ptr_null(plain->ops->flash_attention_forward);
    ck_assert_ptr_null(plain->ops->flash_attention_backward);
    ck_assert_ptr_nonnull(flash->ops->flash_attention_forward);
    ck_assert_ptr_nonnull(flash->ops->flash_attention_backward);
    ck_assert_ptr_nonnull(plain->ops->causal_attention_forward);
    ck_assert_int_eq(mhub_cpu_backend_threads(flash), 1);
    mhub_backend_free(plain);
    mhub_backend_free(flash);
}
END_TEST

static void check_flash(shape s, float sigma)
{
    int64_t n = qkv_len(s), no = out_len(s), nl = lse_len(s);
    float *qkv = randn(n, sigma, 0.0f), *dout = randn(no, 1.0f, 0.0f);
    float *out_plain = fbuf(no), *probs = fbuf(probs_len(s)), *dqkv_plain = fbuf(n);
    run_attention_forward(out_plain, probs, qkv, s);
    run_attention_backward(dqkv_plain, dout, qkv, probs, s);

    float *out = nans(no), *lse = nans(nl), *dqkv = nans(n);
    CK_OK(be->ops->flash_attention_forward(be, out, lse, qkv, s.batch, s.seq, s.heads, s.groups,
                                           s.d));
    CK_OK(be->ops->flash_attention_backward(be, dqkv, dout, out, qkv, lse, s.batch, s.seq,
                                            s.heads, s.groups, s.d));
    ck_close_all(out, widen(out_plain, no), no, FLASH_REL, "flash out vs causal_attention");
    ck_close_all(dqkv, widen(dqkv_plain, n), n, FLASH_REL, "flash dqkv vs causal_attention");

    double *qkv_d = widen(qkv, n), *want_out = dbuf(no), *want_dqkv = dbuf(n);
    double *want_lse = dbuf(nl);
    ref_attention(want_out, NULL, qkv_d, s);
    ref_attention_backward(want_dqkv, widen(dout, no), qkv_d, s);
    ref_lse(want_lse, qkv_d, s);
    ck_close_all(out, want_out, no, FWD_REL, "flash_attention_forward out");
    ck_close_all(lse, want_lse, nl, FWD_REL, "flash_attention_forward lse");
    ck_close_all(dqkv, want_dqkv, n, BWD_REL, "flash_attention_backward dqkv");
}

/* GPT-2 style (groups == heads), grouped queries (2 groups and 1), and
 * sequences of 1 and 7: one key tile. */
START_TEST(test_flash_attention_small)
{
    for (int si = 0; si < N_SMALL; si++)
        check_flash(small_shapes[si], 1.0f);
}
END_TEST

/* Past the kernel's query block and key tile (256 each), with lengths
 * that are not multiples of them: 257 (a last block of one row), 300 and
 * 500 (two blocks, two tiles), and spread scores. */
START_TEST(test_flash_attention_long)
{
    check_flash((shape){1, 257, 3, 3, 8}, 1.0f);
    check_flash((shape){2, 300, 4, 2, 20}, 1.0f);
    check_flash((shape){1, 500, 4, 1, 16}, 3.0f);
}
END_TEST

START_TEST(test_flash_attention_edges_and_bad_args)
{
    const mhub_backend_ops *o = be->ops;
    shape s = {2, 3, 4, 2, 8};
    int64_t n = qkv_len(s), no = out_len(s), nl = lse_len(s);
    float *qkv = randn(n, 1.0f, 0.0f), *out = randn(no, 1.0f, 0.0f);
    float *lse = randn(nl, 1.0f, 0.0f), *dqkv = randn(n, 1.0f, 0.0f);
    float *dout = randn(no, 1.0f, 0.0f);
    float *qkv0 = fcopy(qkv, n), *out0 = fcopy(out, no), *lse0 = fcopy(lse, nl);
    float *dqkv0 = fcopy(dqkv, n);

    CK_BAD(o->flash_attention_forward(be, out, lse, qkv, 2, 3, 4, 3, 8),
           "flash_attention_forward: groups = 3 does not divide heads = 4");
    CK_BAD(o->flash_attention_forward(be, out, lse, qkv, 2, -3, 4, 2, 8),
           "flash_attention_forward: seq = -3");
    CK_BAD(o->flash_attention_forward(be, NULL, lse, qkv, 2, 3, 4, 2, 8), "out is NULL");
    CK_BAD(o->flash_attention_forward(be, out, NULL, qkv, 2, 3, 4, 2, 8), "lse is NULL");
    CK_BAD(o->flash_attention_forward(be, out, lse, NULL, 2, 3, 4, 2, 8), "qkv is NULL");
    CK_BAD(o->flash_attention_forward(be, out, out + 4, qkv, 2, 3, 4, 2, 8),
           "out and lse overlap");
    CK_BAD(o->flash_attention_forward(be, out, qkv, qkv, 2, 3, 4, 2, 8), "lse and qkv overlap");
    CK_BAD(o->flash_attention_backward(be, dqkv, dout, out, qkv, lse, 2, 3, 4, 0, 8),
           "flash_attention_backward: groups = 0 does not divide heads = 4");
    CK_BAD(o->flash_attention_backward(be, dqkv, dout, out, qkv, NULL, 2, 3, 4, 2, 8),
           "lse is NULL");
    CK_BAD(o->flash_attention_backward(be, dqkv, dout, NULL, qkv, lse, 2, 3, 4, 2, 8),
           "out is NULL");
    CK_BAD(o->flash_attention_backward(be, qkv, dout, out, qkv, lse, 2, 3, 4, 2, 8),
           "dqkv and qkv overlap");
    CK_BAD(o->flash_attention_backward(be, dqkv, dout, out, qkv, dqkv + 3, 2, 3, 4, 2, 8),
           "dqkv and lse overlap");
    CK_UNCHANGED(qkv, qkv0, n);
    CK_UNCHANGED(out, out0, no);
    CK_UNCHANGED(lse, lse0, nl);
    CK_UNCHANGED(dqkv, dqkv0, n);

    CK_OK(o->flash_attention_forward(be, NULL, NULL, NULL, 0, 3, 4, 2, 8));
    CK_OK(o->flash_attention_backward(be, NULL, NULL, NULL, NULL, NULL, 0, 3, 4, 2, 8));
    /* head_dim 0: every score is 0, so row t's normaliser is t + 1 */
    CK_OK(o->flash_attention_forward(be, NULL, lse, NULL, 2, 3, 4, 2, 0));
    for (int64_t i = 0; i < nl; i++)
        ck_assert_float_eq_tol(lse[i], (float)log((double)(i % 3 + 1)), 1e-7f);
}
END_TEST

START_TEST(test_qkv_bad_args)
{
    const mhub_backend_ops *o = be->ops;
    shape s = {2, 3, 4, 2, 8};
    int64_t n = qkv_len(s), no = out_len(s), np = probs_len(s);
    float *qkv = randn(n, 1.0f, 0.0f), *out = randn(no, 1.0f, 0.0f);
    float *probs = randn(np, 1.0f, 0.0f), *scratch = fbuf(np), *dqkv = randn(n, 1.0f, 0.0f);
    float *qkv0 = fcopy(qkv, n), *out0 = fcopy(out, no), *probs0 = fcopy(probs, np);
    float *dqkv0 = fcopy(dqkv, n);

    /* RoPE */
    CK_BAD(o->rope_forward(be, qkv, 2, 3, 4, 2, 7, ROPE_BASE),
           "rope_forward: head_dim = 7 is odd");
    CK_BAD(o->rope_backward(be, qkv, 2, 3, 4, 2, 7, ROPE_BASE),
           "rope_backward: head_dim = 7 is odd");
    CK_BAD(o->rope_forward(be, qkv, 2, 3, 4, 3, 8, ROPE_BASE),
           "groups = 3 does not divide heads = 4");
    CK_BAD(o->rope_forward(be, qkv, 2, 3, 4, 0, 8, ROPE_BASE),
           "groups = 0 does not divide heads = 4");
    CK_BAD(o->rope_forward(be, qkv, 2, 3, 0, 1, 8, ROPE_BASE), "groups = 1 with heads = 0");
    CK_BAD(o->rope_forward(be, qkv, -1, 3, 4, 2, 8, ROPE_BASE), "batch = -1");
    CK_BAD(o->rope_forward(be, qkv, 2, -3, 4, 2, 8, ROPE_BASE), "seq = -3");
    CK_BAD(o->rope_forward(be, qkv, 2, 3, -4, 2, 8, ROPE_BASE), "heads = -4");
    CK_BAD(o->rope_forward(be, qkv, 2, 3, 4, -2, 8, ROPE_BASE), "groups = -2");
    CK_BAD(o->rope_forward(be, qkv, 2, 3, 4, 2, -8, ROPE_BASE), "head_dim = -8");
    CK_BAD(o->rope_forward(be, qkv, 2, 3, 4, 2, 8, 0.0f), "base = 0 must be finite and > 0");
    CK_BAD(o->rope_forward(be, qkv, 2, 3, 4, 2, 8, NAN), "base = nan");
    CK_BAD(o->rope_forward(be, NULL, 2, 3, 4, 2, 8, ROPE_BASE), "qkv is NULL");
    CK_BAD(o->rope_backward(be, NULL, 2, 3, 4, 2, 8, ROPE_BASE), "dqkv is NULL");
    CK_BAD(o->rope_forward(be, qkv, INT64_MAX / 8, INT64_MAX / 8, 4, 2, 8, ROPE_BASE),
           "too many");

    /* attention forward */
    CK_BAD(o->causal_attention_forward(be, out, probs, qkv, 2, 3, 4, 3, 8),
           "causal_attention_forward: groups = 3 does not divide heads = 4");
    CK_BAD(o->causal_attention_forward(be, out, probs, qkv, 2, 3, 4, 0, 8),
           "groups = 0 does not divide heads = 4");
    CK_BAD(o->causal_attention_forward(be, out, probs, qkv, -2, 3, 4, 2, 8), "batch = -2");
    CK_BAD(o->causal_attention_forward(be, out, probs, qkv, 2, -1, 4, 2, 8), "seq = -1");
    CK_BAD(o->causal_attention_forward(be, out, probs, qkv, 2, 3, 4, 2, -8), "head_dim = -8");
    CK_BAD(o->causal_attention_forward(be, NULL, probs, qkv, 2, 3, 4, 2, 8), "out is NULL");
    CK_BAD(o->causal_attention_forward(be, out, NULL, qkv, 2, 3, 4, 2, 8), "probs is NULL");
    CK_BAD(o->causal_attention_forward(be, out, probs, NULL, 2, 3, 4, 2, 8), "qkv is NULL");
    CK_BAD(o->causal_attention_forward(be, qkv + 5, probs, qkv, 2, 3, 4, 2, 8),
           "out and qkv overlap");
    CK_BAD(o->causal_attention_forward(be, out, out + 1, qkv, 2, 3, 4, 2, 8),
           "out and probs overlap");
    CK_BAD(o->causal_attention_forward(be, out, probs, qkv, 1, (int64_t)1 << 32, 1, 1, 2),
           "seq = 4294967296 exceeds INT_MAX");
    CK_BAD(o->causal_attention_forward(be, out, probs, qkv, INT64_MAX / 16, 3, 1, 1, 2),
           "batch x seq = 576460752303423487 x 3 is too many elements");

    /* attention backward */
    CK_BAD(o->causal_attention_backward(be, dqkv, scratch, out, qkv, probs, 2, 3, 4, 3, 8),
           "causal_attention_backward: groups = 3 does not divide heads = 4");
    CK_BAD(o->causal_attention_backward(be, NULL, scratch, out, qkv, probs, 2, 3, 4, 2, 8),
           "dqkv is NULL");
    CK_BAD(o->causal_attention_backward(be, dqkv, NULL, out, qkv, probs, 2, 3, 4, 2, 8),
           "scratch is NULL");
    CK_BAD(o->causal_attention_backward(be, dqkv, scratch, NULL, qkv, probs, 2, 3, 4, 2, 8),
           "dout is NULL");
    CK_BAD(o->causal_attention_backward(be, dqkv, scratch, out, NULL, probs, 2, 3, 4, 2, 8),
           "qkv is NULL");
    CK_BAD(o->causal_attention_backward(be, dqkv, scratch, out, qkv, NULL, 2, 3, 4, 2, 8),
           "probs is NULL");
    CK_BAD(o->causal_attention_backward(be, qkv, scratch, out, qkv, probs, 2, 3, 4, 2, 8),
           "dqkv and qkv overlap");
    CK_BAD(o->causal_attention_backward(be, dqkv, probs, out, qkv, probs, 2, 3, 4, 2, 8),
           "scratch and probs overlap");
    CK_BAD(o->causal_attention_backward(be, dqkv, scratch, dqkv + 2, qkv, probs, 2, 3, 4, 2,
                                        8),
           "dqkv and dout overlap");

    CK_UNCHANGED(qkv, qkv0, n);
    CK_UNCHANGED(out, out0, no);
    CK_UNCHANGED(probs, probs0, np);
    CK_UNCHANGED(dqkv, dqkv0, n);

    /* Nothing to do: any size 0, NULL pointers fine. */
    CK_OK(o->rope_forward(be, NULL, 0, 3, 4, 2, 8, ROPE_BASE));
    CK_OK(o->rope_backward(be, NULL, 2, 3, 0, 0, 8, ROPE_BASE));
    CK_OK(o->causal_attention_forward(be, NULL, NULL, NULL, 2, 0, 4, 2, 8));
    /* head_dim 0 leaves qkv and out empty but not probs, which must then
     * be given, and is left alone. */
    CK_BAD(o->causal_attention_forward(be, NULL, NULL, NULL, 2, 3, 4, 2, 0),
           "probs is NULL with 72 elements");
    CK_OK(o->causal_attention_forward(be, NULL, probs, NULL, 2, 3, 4, 2, 0));
    CK_UNCHANGED(probs, probs0, np);
    CK_OK(o->causal_attention_backward(be, NULL, NULL, NULL, NULL, NULL, 0, 3, 4, 2, 8));
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("transformer");
    TCase *emb = tcase_create("embedding");
    tcase_add_checked_fixture(emb, setup, teardown);
    tcase_add_test(emb, test_embedding_forward);
    tcase_add_test(emb, test_embedding_backward_accumulates_in_order);
    tcase_add_test(emb, test_embedding_backward_fd);
    tcase_add_test(emb, test_embedding_bad_args);
    suite_add_tcase(s, emb);

    TCase *norm = tcase_create("norms");
    tcase_add_checked_fixture(norm, setup, teardown);
    tcase_add_test(norm, test_layernorm_forward);
    tcase_add_test(norm, test_layernorm_large_mean);
    tcase_add_test(norm, test_layernorm_backward_ref_and_accumulate);
    tcase_add_test(norm, test_layernorm_backward_fd);
    tcase_add_test(norm, test_rmsnorm_forward);
    tcase_add_test(norm, test_rmsnorm_backward_ref_and_accumulate);
    tcase_add_test(norm, test_rmsnorm_backward_fd);
    tcase_add_test(norm, test_norm_bad_args);
    suite_add_tcase(s, norm);

    TCase *sw = tcase_create("swiglu");
    tcase_add_checked_fixture(sw, setup, teardown);
    tcase_add_test(sw, test_swiglu_forward_backward);
    tcase_add_test(sw, test_swiglu_extreme_gates);
    tcase_add_test(sw, test_swiglu_backward_fd);
    tcase_add_test(sw, test_swiglu_bad_args);
    suite_add_tcase(s, sw);

    TCase *attn = tcase_create("rope and attention");
    tcase_add_checked_fixture(attn, setup, teardown);
    tcase_set_timeout(attn, 60);
    tcase_add_test(attn, test_rope_forward_backward);
    tcase_add_test(attn, test_rope_long_positions);
    tcase_add_test(attn, test_rope_backward_fd);
    tcase_add_test(attn, test_attention_small);
    tcase_add_test(attn, test_attention_long);
    tcase_add_test(attn, test_attention_backward_fd);
    tcase_add_test(attn, test_qkv_bad_args);
    tcase_add_test(attn, test_flash_is_optional);
    tcase_add_test(attn, test_flash_attention_small);
    tcase_add_test(attn, test_flash_attention_long);
    tcase_add_test(attn, test_flash_attention_edges_and_bad_args);
    suite_add_tcase(s, attn);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
