/* backend_wrap.c - every op of the backend table as a wrapper that runs
 * the inner backend's op between the wrapping backend's hooks (see
 * backend_wrap.h). */
#include "src/backend_wrap.h"

/* The products of causal attention over B sequences of T tokens, h heads
 * of d channels: `products` T x T x d matrix products, half of each under
 * the causal mask, at 2 flops a multiply-add (forward: Q K^T and P V;
 * backward: dV, dP, dQ and dK, and flash attention's recomputed Q K^T). */
static double attention_flops(int products, int64_t batch, int64_t seq, int64_t heads,
                              int64_t head_dim)
{
    return products * (double)batch * (double)heads * (double)seq * (double)seq *
           (double)head_dim;
}

/* PARAMS is the op's parameter list, ARGS the call with the inner backend
 * in place of the wrapping one, FLOPS the op's count (0 when not
 * counted). */
#define WRAPPED(op, PARAMS, ARGS, FLOPS)            \
    static mhub_status wrap_##op PARAMS             \
    {                                               \
        mhub_wrap *w = be->ctx;                     \
        w->before(w, #op);                          \
        mhub_status s = w->inner->ops->op ARGS;     \
        return w->after(w, #op, (FLOPS), s);        \
    }

WRAPPED(memset_zero, (mhub_backend *be, void *ptr, size_t bytes), (w->inner, ptr, bytes), 0)
WRAPPED(copy, (mhub_backend *be, void *dst, const void *src, size_t bytes, mhub_copy_kind kind),
        (w->inner, dst, src, bytes, kind), 0)
WRAPPED(synchronize, (mhub_backend *be), (w->inner), 0)
WRAPPED(gemm,
        (mhub_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
         const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
         int64_t ldc),
        (w->inner, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc),
        2.0 * (double)m * (double)n * (double)k)
WRAPPED(bias_add, (mhub_backend *be, float *out, const float *bias, int64_t rows, int64_t cols),
        (w->inner, out, bias, rows, cols), 0)
WRAPPED(bias_backward,
        (mhub_backend *be, float *dbias, const float *dout, int64_t rows, int64_t cols),
        (w->inner, dbias, dout, rows, cols), 0)
WRAPPED(gelu_forward, (mhub_backend *be, float *out, const float *in, int64_t n),
        (w->inner, out, in, n), 0)
WRAPPED(gelu_backward,
        (mhub_backend *be, float *din, const float *in, const float *dout, int64_t n),
        (w->inner, din, in, dout, n), 0)
WRAPPED(softmax_xent_forward,
        (mhub_backend *be, float *probs, float *losses, const float *logits,
         const int32_t *targets, int64_t rows, int64_t classes),
        (w->inner, probs, losses, logits, targets, rows, classes), 0)
WRAPPED(softmax_xent_backward,
        (mhub_backend *be, float *dlogits, const float *probs, const int32_t *targets,
         int64_t rows, int64_t classes, float dloss),
        (w->inner, dlogits, probs, targets, rows, classes, dloss), 0)
WRAPPED(embedding_forward,
        (mhub_backend *be, float *out, const float *table, const int32_t *ids, int64_t rows,
         int64_t vocab, int64_t dim, bool accumulate),
        (w->inner, out, table, ids, rows, vocab, dim, accumulate), 0)
WRAPPED(embedding_backward,
        (mhub_backend *be, float *dtable, const float *dout, const int32_t *ids, int64_t rows,
         int64_t vocab, int64_t dim),
        (w->inner, dtable, dout, ids, rows, vocab, dim), 0)
WRAPPED(layernorm_forward,
        (mhub_backend *be, float *out, float *mean, float *rstd, const float *in,
         const float *weight, const float *bias, int64_t rows, int64_t dim, float eps),
        (w->inner, out, mean, rstd, in, weight, bias, rows, dim, eps), 0)
WRAPPED(layernorm_backward,
        (mhub_backend *be, float *din, float *dweight, float *dbias, const float *dout,
         const float *in, const float *weight, const float *mean, const float *rstd,
         int64_t rows, int64_t dim),
        (w->inner, din, dweight, dbias, dout, in, weight, mean, rstd, rows, dim), 0)
WRAPPED(rmsnorm_forward,
        (mhub_backend *be, float *out, float *rstd, const float *in, const float *weight,
         int64_t rows, int64_t dim, float eps),
        (w->inner, out, rstd, in, weight, rows, dim, eps), 0)
WRAPPED(rmsnorm_backward,
        (mhub_backend *be, float *din, float *dweight, const float *dout, const float *in,
         const float *weight, const float *rstd, int64_t rows, int64_t dim),
        (w->inner, din, dweight, dout, in, weight, rstd, rows, dim), 0)
WRAPPED(swiglu_forward, (mhub_backend *be, float *out, const float *in, int64_t rows, int64_t f),
        (w->inner, out, in, rows, f), 0)
WRAPPED(swiglu_backward,
        (mhub_backend *be, float *din, const float *dout, const float *in, int64_t rows,
         int64_t f),
        (w->inner, din, dout, in, rows, f), 0)
WRAPPED(rope_forward,
        (mhub_backend *be, float *qkv, int64_t batch, int64_t seq, int64_t heads,
         int64_t groups, int64_t head_dim, float base),
        (w->inner, qkv, batch, seq, heads, groups, head_dim, base), 0)
WRAPPED(rope_backward,
        (mhub_backend *be, float *dqkv, int64_t batch, int64_t seq, int64_t heads,
         int64_t groups, int64_t head_dim, float base),
        (w->inner, dqkv, batch, seq, heads, groups, head_dim, base), 0)
WRAPPED(causal_attention_forward,
        (mhub_backend *be, float *out, float *probs, const float *qkv, int64_t batch,
         int64_t seq, int64_t heads, int64_t groups, int64_t head_dim),
        (w->inner, out, probs, qkv, batch, seq, heads, groups, head_dim),
        attention_flops(2, batch, seq, heads, head_dim))
WRAPPED(causal_attention_backward,
        (mhub_backend *be, float *dqkv, float *scratch, const float *dout, const float *qkv,
         const float *probs, int64_t batch, int64_t seq, int64_t heads, int64_t groups,
         int64_t head_dim),
        (w->inner, dqkv, scratch, dout, qkv, probs, batch, seq, heads, groups, head_dim),
        attention_flops(4, batch, seq, heads, head_dim))
WRAPPED(flash_attention_forward,
        (mhub_backend *be, float *out, float *lse, const float *qkv, int64_t batch, int64_t seq,
         int64_t heads, int64_t groups, int64_t head_dim),
        (w->inner, out, lse, qkv, batch, seq, heads, groups, head_dim),
        attention_flops(2, batch, seq, heads, head_dim))
WRAPPED(flash_attention_backward,
        (mhub_backend *be, float *dqkv, const float *dout, const float *out, const float *qkv,
         const float *lse, int64_t batch, int64_t seq, int64_t heads, int64_t groups,
         int64_t head_dim),
        (w->inner, dqkv, dout, out, qkv, lse, batch, seq, heads, groups, head_dim),
        attention_flops(5, batch, seq, heads, head_dim))
WRAPPED(cast,
        (mhub_backend *be, void *dst, mhub_dtype dst_dtype, const void *src,
         mhub_dtype src_dtype, int64_t n),
        (w->inner, dst, dst_dtype, src, src_dtype, n), 0)
WRAPPED(scale, (mhub_backend *be, float *x, int64_t n, float alpha), (w->inner, x, n, alpha), 0)
WRAPPED(axpy, (mhub_backend *be, float *y, const float *x, int64_t n, float alpha),
        (w->inner, y, x, n, alpha), 0)
WRAPPED(sum_squares, (mhub_backend *be, const float *x, int64_t n, double *out),
        (w->inner, x, n, out), 0)
WRAPPED(fill_normal,
        (mhub_backend *be, float *dst, int64_t n, uint64_t seed, uint64_t stream,
         uint64_t offset, float mean, float std),
        (w->inner, dst, n, seed, stream, offset, mean, std), 0)
WRAPPED(fill_uniform,
        (mhub_backend *be, float *dst, int64_t n, uint64_t seed, uint64_t stream,
         uint64_t offset, float lo, float hi),
        (w->inner, dst, n, seed, stream, offset, lo, hi), 0)
WRAPPED(sgd_step,
        (mhub_backend *be, float *param, const float *grad, float *momentum_buf, int64_t n,
         float lr, float momentum, float weight_decay),
        (w->inner, param, grad, momentum_buf, n, lr, momentum, weight_decay), 0)
WRAPPED(adamw_step,
        (mhub_backend *be, float *param, const float *grad, float *m, float *v, int64_t n,
         float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t),
        (w->inner, param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t), 0)

/* ---- memory: straight through, no hooks ---- */

static mhub_status wrap_alloc(mhub_backend *be, size_t bytes, void **out)
{
    mhub_wrap *w = be->ctx;
    return w->inner->ops->alloc(w->inner, bytes, out);
}

static void wrap_free(mhub_backend *be, void *ptr)
{
    mhub_wrap *w = be->ctx;
    w->inner->ops->free(w->inner, ptr);
}

static mhub_status wrap_memory_usage(mhub_backend *be, size_t *current, size_t *peak)
{
    mhub_wrap *w = be->ctx;
    return w->inner->ops->memory_usage(w->inner, current, peak);
}

static mhub_status wrap_reset_peak(mhub_backend *be)
{
    mhub_wrap *w = be->ctx;
    return w->inner->ops->reset_peak(w->inner);
}

void mhub_wrap_ops(const mhub_backend *inner, mhub_backend_ops *ops)
{
    const mhub_backend_ops *in = inner->ops;
    *ops = (mhub_backend_ops){0};
#define OFFER(op) ops->op = in->op ? wrap_##op : NULL
    OFFER(alloc);
    OFFER(free);
    OFFER(memory_usage);
    OFFER(reset_peak);
    OFFER(memset_zero);
    OFFER(copy);
    OFFER(synchronize);
    OFFER(gemm);
    OFFER(bias_add);
    OFFER(bias_backward);
    OFFER(gelu_forward);
    OFFER(gelu_backward);
    OFFER(softmax_xent_forward);
    OFFER(softmax_xent_backward);
    OFFER(embedding_forward);
    OFFER(embedding_backward);
    OFFER(layernorm_forward);
    OFFER(layernorm_backward);
    OFFER(rmsnorm_forward);
    OFFER(rmsnorm_backward);
    OFFER(swiglu_forward);
    OFFER(swiglu_backward);
    OFFER(rope_forward);
    OFFER(rope_backward);
    OFFER(causal_attention_forward);
    OFFER(causal_attention_backward);
    OFFER(flash_attention_forward);
    OFFER(flash_attention_backward);
    OFFER(cast);
    OFFER(scale);
    OFFER(axpy);
    OFFER(sum_squares);
    OFFER(fill_normal);
    OFFER(fill_uniform);
    OFFER(sgd_step);
    OFFER(adamw_step);
#undef OFFER
}
