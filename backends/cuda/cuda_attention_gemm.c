/* cuda_attention_gemm.c - causal grouped-query attention from cuBLAS's
 * batched GEMMs (see cuda_attention_gemm.h; the math and notation are in
 * cuda_attention.cu's header, the row kernels in cuda_attention_rows.cu).
 *
 * Per chunk of (batch, head) pairs, with scale = 1/sqrt(head_dim):
 *
 *   forward    S = scale Q K^T             batched GEMM into scratch
 *              P = causal softmax(S), lse  row kernel, in place
 *              O = P V                     batched GEMM into out's columns
 *   backward   S = scale Q K^T             batched GEMM (recomputed)
 *              dP = dO V^T                 batched GEMM into scratch
 *              P = e^(S - lse),            one row kernel, both in place
 *              dS = P (dP - D), D = dO.O
 *              dQ = scale dS K             batched GEMM into dqkv
 *              dK = scale dS^T Q           one batched GEMM per query head
 *              dV = P^T dO                   of the group (see below)
 *
 * Q, K, V, O and their gradients are read and written in place: a head's
 * rows are a [seq, head_dim] matrix inside the qkv (or out) rows, whose
 * leading dimension is the row width. Their addresses differ from pair to
 * pair by amounts that are not one stride (a group's query heads, then its
 * key and value), so the GEMMs take pointer arrays (cublasGemmBatchedEx),
 * which a kernel writes into scratch: nothing is copied from the host and
 * nothing waits for the device.
 *
 * Grouped queries: the heads of a group share its key and value head, so
 * their dK and dV are sums over the group's query heads. A chunk holds
 * whole (batch, group) units, its entries ordered head-major, so the
 * entries of one head index are consecutive and one batched GEMM per head
 * index writes every unit's dK (dV) once; the first head of a group writes
 * with beta = 0 and the others add with beta = 1, in head order, so the
 * sum's order is fixed and the result the same bits run to run. When one
 * group's heads do not fit the scratch, a chunk holds some of them and the
 * next chunk goes on adding. Every dqkv element is written (the first
 * head overwrites dK and dV, dQ is written whole), so nothing needs zeroing.
 *
 * The S rectangle is computed whole, above the diagonal too (twice the
 * causal FLOPs): the row kernels write exact zeros there, so the masked
 * scores never reach a result. The GEMMs run in the backend's precision
 * (f32, or tf32 / bf16 inputs on the tensor cores with f32 accumulation);
 * S, P and dS stay f32 in memory. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "backends/cuda/cuda_attention_gemm.h"
#include "backends/cuda/cuda_internal.h"
#include "backends/cuda/cuda_kernels.h"

/* Scratch parts, and each entry's S and dP matrices, start on this
 * boundary, as the pool's blocks do: cuBLAS's tensor-core kernels want
 * their operands 16-byte aligned. */
#define SCRATCH_ALIGN 256
/* Entries of one batched GEMM: some of cuBLAS's batched kernels put the
 * batch in the grid's z dimension (at most 65535), so a chunk stays
 * within it. */
#define MAX_BATCH_COUNT 65535
/* A sequence longer than this never gets here: its pair alone needs 8 TiB
 * of scratch (the bound keeps seq^2 products far from overflow). */
#define MAX_GEMM_SEQ ((int64_t)1 << 20)

typedef struct attn_shape {
    int64_t batch, seq, heads, groups, head_dim;
    int64_t per_group;  /* query heads per group */
    int64_t units;      /* (batch, group) units */
    int64_t width;      /* a qkv row: (heads + 2 groups) * head_dim */
    int64_t out_width;  /* an out row: heads * head_dim */
    float scale;
} attn_shape;

static attn_shape shape_of(int64_t batch, int64_t seq, int64_t heads, int64_t groups,
                           int64_t head_dim)
{
    attn_shape sh = {.batch = batch, .seq = seq, .heads = heads, .groups = groups,
                     .head_dim = head_dim};
    sh.per_group = groups > 0 ? heads / groups : 0;
    sh.units = batch * groups;
    sh.width = (heads + 2 * groups) * head_dim;
    sh.out_width = heads * head_dim;
    sh.scale = (float)(1.0 / sqrt((double)head_dim));  /* as the CPU backend rounds it */
    return sh;
}

static bool has_work(const attn_shape *sh)
{
    return sh->batch > 0 && sh->seq > 0 && sh->heads > 0 && sh->head_dim > 0;
}

/* cuBLAS takes int sizes and leading dimensions. */
static bool fits_cublas(const attn_shape *sh)
{
    return sh->seq <= MAX_GEMM_SEQ && sh->width <= INT32_MAX && sh->out_width <= INT32_MAX;
}

/* ---- scratch ---- */

static size_t align_up(size_t n)
{
    return (n + SCRATCH_ALIGN - 1) / SCRATCH_ALIGN * SCRATCH_ALIGN;
}

/* Where a chunk of up to `entries` pairs keeps its pointer table (one
 * array of `entries` per role), its S matrices and its dP matrices. */
typedef struct scratch_layout {
    int64_t entries;
    size_t s, dp, total;  /* byte offsets of S and dP (the table is at 0), and the end */
} scratch_layout;

/* Bytes of one entry's [seq, seq] matrix, aligned. */
static size_t matrix_bytes(int64_t seq)
{
    return align_up((size_t)seq * (size_t)seq * sizeof(float));
}

static scratch_layout layout_for(int64_t entries, int64_t seq)
{
    size_t table = (size_t)entries * MHUB_ATTN_ROLES * sizeof(void *);
    size_t matrices = (size_t)entries * matrix_bytes(seq);
    scratch_layout ly = {.entries = entries};
    ly.s = align_up(table);
    ly.dp = ly.s + align_up(matrices);
    ly.total = ly.dp + matrices;
    return ly;
}

/* The most pairs whose layout fits `bytes` (at most all of the shape's
 * and one batched GEMM's worth); 0 when not even one does. */
static int64_t pairs_fitting(const attn_shape *sh, size_t bytes)
{
    const size_t per_pair = MHUB_ATTN_ROLES * sizeof(void *) + 2 * matrix_bytes(sh->seq);
    /* an upper bound (the layout adds alignment), then down to what fits */
    size_t n = bytes / per_pair;
    const int64_t pairs = sh->batch * sh->heads;
    if (n > (size_t)pairs)
        n = (size_t)pairs;
    if (n > MAX_BATCH_COUNT)
        n = MAX_BATCH_COUNT;
    while (n > 0 && layout_for((int64_t)n, sh->seq).total > bytes)
        n--;
    return (int64_t)n;
}

size_t mhub_cuda_attention_gemm_scratch(int64_t batch, int64_t seq, int64_t heads,
                                        int64_t groups, int64_t head_dim, size_t budget)
{
    attn_shape sh = shape_of(batch, seq, heads, groups, head_dim);
    if (!has_work(&sh) || !fits_cublas(&sh))
        return 0;
    int64_t n = pairs_fitting(&sh, budget);
    return n > 0 ? layout_for(n, seq).total : 0;
}

/* ---- chunks ---- */

/* Whole groups of as many units as fit, or, when one group's heads alone
 * do not fit, as many of its heads as do (one unit at a time). */
typedef struct chunk_plan {
    int64_t units_per, heads_per;
} chunk_plan;

static chunk_plan plan_chunks(const attn_shape *sh, int64_t fit)
{
    chunk_plan p;
    if (fit >= sh->per_group) {
        p.heads_per = sh->per_group;
        p.units_per = fit / sh->per_group < sh->units ? fit / sh->per_group : sh->units;
    } else {
        p.heads_per = fit;
        p.units_per = 1;
    }
    return p;
}

static mhub_cuda_attn_chunk chunk_at(const attn_shape *sh, const chunk_plan *p, int64_t u0,
                                     int64_t h0)
{
    mhub_cuda_attn_chunk c = {.batch = sh->batch, .seq = sh->seq, .heads = sh->heads,
                              .groups = sh->groups, .head_dim = sh->head_dim, .unit0 = u0,
                              .head0 = h0,
                              .s_stride = (int64_t)(matrix_bytes(sh->seq) / sizeof(float))};
    c.n_units = sh->units - u0 < p->units_per ? sh->units - u0 : p->units_per;
    c.n_heads = sh->per_group - h0 < p->heads_per ? sh->per_group - h0 : p->heads_per;
    return c;
}

/* The scratch of a call, laid out for the chunks `plan` makes. */
typedef struct attn_work {
    const mhub_cuda_attn_gemm_ctx *cx;
    attn_shape sh;
    scratch_layout ly;
    chunk_plan plan;
    void **table;
    float *s, *dp;
} attn_work;

static mhub_status work_for(const mhub_cuda_attn_gemm_ctx *cx, const attn_shape *sh,
                            const char *op, attn_work *w)
{
    if (!fits_cublas(sh))
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "seq = %lld or a row of %lld floats is beyond the GEMM attention "
                             "path's range",
                             (long long)sh->seq, (long long)sh->width);
    int64_t fit = pairs_fitting(sh, cx->scratch_bytes);
    if (fit == 0)
        return mhub_error_at(MHUB_ERR_INVALID_ARG, op,
                             "%zu bytes of attention scratch hold no (batch, head) pair at "
                             "seq = %lld",
                             cx->scratch_bytes, (long long)sh->seq);
    w->cx = cx;
    w->sh = *sh;
    w->ly = layout_for(fit, sh->seq);
    w->plan = plan_chunks(sh, fit);
    w->table = (void **)cx->scratch;
    w->s = (float *)((char *)cx->scratch + w->ly.s);
    w->dp = (float *)((char *)cx->scratch + w->ly.dp);
    return MHUB_OK;
}

/* Role r's pointer array, from entry `first` on. */
static void **role(const attn_work *w, mhub_cuda_attn_role r, int64_t first)
{
    return w->table + (int64_t)r * w->ly.entries + first;
}

static mhub_status kernel_status(const attn_work *w, cudaError_t err, const char *what)
{
    return err == cudaSuccess ? MHUB_OK : mhub_cuda_error(err, what, w->cx->device);
}

/* ---- batched GEMM ---- */

/* Row-major C_e = alpha op(A_e) op(B_e) + beta C_e for entries e of the
 * device pointer arrays a, b, c, mapped onto column-major cuBLAS as
 * cuda_backend.c's gemm does: B before A, n before m, same transposes. */
typedef struct batched_operand {
    void **ptrs;
    int64_t ld;
    bool trans;
} batched_operand;

static mhub_status gemm_batched(const attn_work *w, const char *what, int64_t m, int64_t n,
                                int64_t k, float alpha, batched_operand a, batched_operand b,
                                float beta, batched_operand c, int64_t count)
{
    cublasStatus_t s = cublasGemmBatchedEx(
        w->cx->blas, b.trans ? CUBLAS_OP_T : CUBLAS_OP_N, a.trans ? CUBLAS_OP_T : CUBLAS_OP_N,
        (int)n, (int)m, (int)k, &alpha, (const void *const *)b.ptrs, CUDA_R_32F, (int)b.ld,
        (const void *const *)a.ptrs, CUDA_R_32F, (int)a.ld, &beta, c.ptrs, CUDA_R_32F,
        (int)c.ld, (int)count, w->cx->compute, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return mhub_error_at(MHUB_ERR_DEVICE, what, "cuBLAS error on device %d: %s (%d)",
                             w->cx->device, cublasGetStatusString(s), (int)s);
    return MHUB_OK;
}

/* Operands of entries [first, ...) of one role. */
static batched_operand operand(const attn_work *w, mhub_cuda_attn_role r, int64_t first,
                               int64_t ld, bool trans)
{
    return (batched_operand){role(w, r, first), ld, trans};
}

/* S = scale Q K^T for every entry of the chunk. */
static mhub_status scores(const attn_work *w, int64_t n)
{
    const attn_shape *sh = &w->sh;
    return gemm_batched(w, "cublasGemmBatchedEx (attention S = scale Q K^T)", sh->seq, sh->seq,
                        sh->head_dim, sh->scale, operand(w, MHUB_ATTN_Q, 0, sh->width, false),
                        operand(w, MHUB_ATTN_K, 0, sh->width, true), 0.0f,
                        operand(w, MHUB_ATTN_S, 0, sh->seq, false), n);
}

/* ---- forward ---- */

static mhub_status forward_chunk(const attn_work *w, mhub_cuda_attn_chunk c, float *out,
                                 float *lse, const float *qkv)
{
    const attn_shape *sh = &w->sh;
    const int64_t n = c.n_units * c.n_heads;
    mhub_cuda_attn_bases bases = {.qkv = qkv, .o = out, .s = w->s};
    MHUB_TRY(kernel_status(
        w, mhub_cuda_attn_pointers(w->cx->stream, w->table, w->ly.entries, bases, c),
        "mhub_cuda_attn_pointers (flash_attention_forward)"));
    MHUB_TRY(scores(w, n));
    MHUB_TRY(kernel_status(w, mhub_cuda_attn_softmax_rows(w->cx->stream, w->s, lse, c),
                           "mhub_cuda_attn_softmax_rows (flash_attention_forward)"));
    return gemm_batched(w, "cublasGemmBatchedEx (attention O = P V)", sh->seq, sh->head_dim,
                        sh->seq, 1.0f, operand(w, MHUB_ATTN_S, 0, sh->seq, false),
                        operand(w, MHUB_ATTN_V, 0, sh->width, false), 0.0f,
                        operand(w, MHUB_ATTN_O, 0, sh->out_width, false), n);
}

mhub_status mhub_cuda_attention_gemm_forward(const mhub_cuda_attn_gemm_ctx *ctx, float *out,
                                             float *lse, const float *qkv, int64_t batch,
                                             int64_t seq, int64_t heads, int64_t groups,
                                             int64_t head_dim)
{
    attn_shape sh = shape_of(batch, seq, heads, groups, head_dim);
    if (!has_work(&sh))
        return MHUB_OK;
    attn_work w;
    MHUB_TRY(work_for(ctx, &sh, "flash_attention_forward", &w));
    for (int64_t u0 = 0; u0 < sh.units; u0 += w.plan.units_per)
        for (int64_t h0 = 0; h0 < sh.per_group; h0 += w.plan.heads_per)
            MHUB_TRY(forward_chunk(&w, chunk_at(&sh, &w.plan, u0, h0), out, lse, qkv));
    return MHUB_OK;
}

/* ---- backward ---- */

/* dK += scale dS^T Q and dV += P^T dO for head index j of the chunk's
 * groups: its n_units entries, each writing another unit's dK and dV. The
 * group's first head overwrites (beta = 0), the later ones add. */
static mhub_status key_value_grads(const attn_work *w, mhub_cuda_attn_chunk c, int64_t j)
{
    const attn_shape *sh = &w->sh;
    const int64_t first = j * c.n_units;
    const float beta = c.head0 + j == 0 ? 0.0f : 1.0f;
    MHUB_TRY(gemm_batched(w, "cublasGemmBatchedEx (attention dK = scale dS^T Q)", sh->seq,
                          sh->head_dim, sh->seq, sh->scale,
                          operand(w, MHUB_ATTN_DP, first, sh->seq, true),
                          operand(w, MHUB_ATTN_Q, first, sh->width, false), beta,
                          operand(w, MHUB_ATTN_DK, first, sh->width, false), c.n_units));
    return gemm_batched(w, "cublasGemmBatchedEx (attention dV = P^T dO)", sh->seq,
                        sh->head_dim, sh->seq, 1.0f,
                        operand(w, MHUB_ATTN_S, first, sh->seq, true),
                        operand(w, MHUB_ATTN_O, first, sh->out_width, false), beta,
                        operand(w, MHUB_ATTN_DV, first, sh->width, false), c.n_units);
}

static mhub_status backward_chunk(const attn_work *w, mhub_cuda_attn_chunk c, float *dqkv,
                                  const float *dout, const float *out, const float *qkv,
                                  const float *lse)
{
    const attn_shape *sh = &w->sh;
    const int64_t n = c.n_units * c.n_heads;
    cudaStream_t stream = w->cx->stream;
    mhub_cuda_attn_bases bases = {.qkv = qkv, .o = dout, .s = w->s, .dp = w->dp, .dqkv = dqkv};
    MHUB_TRY(kernel_status(w, mhub_cuda_attn_pointers(stream, w->table, w->ly.entries, bases, c),
                           "mhub_cuda_attn_pointers (flash_attention_backward)"));
    MHUB_TRY(scores(w, n));
    MHUB_TRY(gemm_batched(w, "cublasGemmBatchedEx (attention dP = dO V^T)", sh->seq, sh->seq,
                          sh->head_dim, 1.0f, operand(w, MHUB_ATTN_O, 0, sh->out_width, false),
                          operand(w, MHUB_ATTN_V, 0, sh->width, true), 0.0f,
                          operand(w, MHUB_ATTN_DP, 0, sh->seq, false), n));
    /* one pass over both matrices: P and dS in place */
    MHUB_TRY(kernel_status(
        w, mhub_cuda_attn_probs_dscores_rows(stream, w->s, w->dp, lse, dout, out, c),
        "mhub_cuda_attn_probs_dscores_rows (flash_attention_backward)"));
    MHUB_TRY(gemm_batched(w, "cublasGemmBatchedEx (attention dQ = scale dS K)", sh->seq,
                          sh->head_dim, sh->seq, sh->scale,
                          operand(w, MHUB_ATTN_DP, 0, sh->seq, false),
                          operand(w, MHUB_ATTN_K, 0, sh->width, false), 0.0f,
                          operand(w, MHUB_ATTN_DQ, 0, sh->width, false), n));
    for (int64_t j = 0; j < c.n_heads; j++)
        MHUB_TRY(key_value_grads(w, c, j));
    return MHUB_OK;
}

mhub_status mhub_cuda_attention_gemm_backward(const mhub_cuda_attn_gemm_ctx *ctx, float *dqkv,
                                              const float *dout, const float *out,
                                              const float *qkv, const float *lse,
                                              int64_t batch, int64_t seq, int64_t heads,
                                              int64_t groups, int64_t head_dim)
{
    attn_shape sh = shape_of(batch, seq, heads, groups, head_dim);
    if (!has_work(&sh))
        return MHUB_OK;
    attn_work w;
    MHUB_TRY(work_for(ctx, &sh, "flash_attention_backward", &w));
    /* h0 inner: a group's heads go in order, so its dK and dV sums do */
    for (int64_t u0 = 0; u0 < sh.units; u0 += w.plan.units_per)
        for (int64_t h0 = 0; h0 < sh.per_group; h0 += w.plan.heads_per)
            MHUB_TRY(backward_chunk(&w, chunk_at(&sh, &w.plan, u0, h0), dqkv, dout, out, qkv,
                                    lse));
    return MHUB_OK;
}
