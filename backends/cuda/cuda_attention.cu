/* cuda_attention.cu - causal grouped-query attention on the GPU (contracts
 * in include/mhub/backend.h; the reference is backends/cpu/cpu_transformer.c).
 *
 * Two paths, all in f32, every sum in a fixed order (no atomics), so a
 * result is the same bits run to run:
 *
 * - causal_attention_forward/backward keep the [batch, heads, seq, seq]
 *   probabilities. They are a few simple kernels: 32 x 32 output tiles
 *   through shared memory for the products (S = scale Q K^T, O = P V and
 *   the gradients' products) and one warp per row for the softmax and its
 *   backward. They serve short sequences and the conformance tests.
 *
 * - flash_attention_forward/backward never form a seq x seq matrix. A
 *   block owns a tile of B query rows (forward, dq) or key rows (dk, dv) of
 *   one head and walks the other side's tiles through shared memory, the
 *   block's own outputs accumulating in registers; tiles wholly above the
 *   diagonal are skipped. The forward keeps the online softmax's running
 *   max and sum per row and stores lse = max + log(sum); the backward
 *   recomputes each probability from q, k and lse.
 *
 * Per (batch, head), with scale = 1/sqrt(head_dim), rows t (queries) and
 * j (keys, j <= t):
 *   S_tj = scale q_t . k_j,  P_tj = exp(S_tj - lse_t),  o_t = sum_j P_tj v_j.
 * Backward, from do_t = dL/do_t:
 *   dv_j  = sum_t P_tj do_t                       (o is linear in v)
 *   dP_tj = do_t . v_j                            (o is linear in P)
 *   dS_tj = P_tj (dP_tj - sum_i P_ti dP_ti)       (softmax: dP_ti/dS_tj =
 *                                                  P_ti (delta_ij - P_tj))
 *         = P_tj (dP_tj - D_t),  D_t = sum_i P_ti (do_t . v_i) = do_t . o_t
 *   dq_t  = scale sum_j dS_tj k_j,   dk_j = scale sum_t dS_tj q_t.
 * A group's key and value heads serve its heads/groups query heads, so
 * their gradients are the sums of those heads' dk_j and dv_j, taken here in
 * head order by one block.
 *
 * The flash backward runs in three kernels: D_t into the backend's `work`
 * scratch (in chunks of (batch, group) units when it does not fit), then a
 * kernel over key tiles that accumulates dk and dv (one block per batch,
 * group and key tile, looping over the group's query heads and the query
 * tiles at or below the diagonal), then a kernel over query tiles for dq.
 * Computing dq apart costs recomputing S and dP once more (7 tile products
 * instead of 5) but needs no atomics, which keeps the result deterministic.
 *
 * Tiles of the flash kernels: 256 threads as 16 x 16; a thread owns rows
 * ty + 16 i of its block's tile and columns tx + 16 c of head_dim, so a
 * row's softmax state is reduced over 16 lanes of one warp. head_dim is
 * served by the smallest compiled width D >= head_dim (the columns past
 * head_dim are zero in shared memory): D = 64 and 128 with B = 64 rows per
 * tile, D = 256 with B = 32. A head_dim above 256 gets cudaErrorInvalidValue
 * (the backend turns it into a message). Shared memory per block (opt-in
 * above 48 KB): forward 50, 83 or 70 KB, backward 84, 149 or 136 KB for
 * D = 64, 128, 256; sm_80 and sm_90 offer 163 and 227 KB, a GPU offering
 * less makes cudaFuncSetAttribute fail and that error is returned. The
 * backward also returns cudaErrorInvalidValue when one head's D_t rows do
 * not fit `work` (seq above MHUB_CUDA_WORK_BYTES / 4, 16 M positions).
 *
 * The backend runs flash attention on the tensor cores: in bf16 matmul
 * precision for head_dim 64 and 128 through the fused wmma kernels
 * (cuda_attention_wmma.cu), otherwise through cuBLAS (cuda_attention_gemm.c)
 * wherever a chunk of whole score matrices fits its scratch; these kernels
 * serve longer sequences and MHUB_CUDA_ATTENTION = tiled. What would make them faster: tensor-core products (mma.sync or
 * wgmma in TF32 or BF16 with f32 accumulation) in place of the CUDA-core
 * FMAs; cp.async / TMA double buffering so the next K/V tile loads while
 * the current one is used; wider register tiles read with 128-bit shared
 * loads; one backward kernel with dq accumulated across key tiles. */
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "backends/cuda/cuda_kernels.h"
#include "backends/cuda/cuda_attention_common.cuh"
#include "backends/cuda/cuda_launch.h"

namespace {

/* Where head h sits in a row: (h / per_group) * group_stride +
 * (h % per_group) * head_stride + offset. One form covers a query head in
 * qkv, the key or value head of h's group (head_stride 0) and head h of
 * the output (group_stride = per_group * head_dim). */
struct head_cols {
    int64_t group_stride, head_stride, offset, per_group;
};

/* A [batch * seq, row_stride] matrix whose rows hold one head per column
 * range of head_dim values. */
struct head_view {
    int64_t row_stride;
    head_cols cols;
};

/* A slice of the flash backward: (batch, group) units [unit0, unit0 +
 * n_units), and of each group the query heads [head0, head0 + n_heads).
 * accumulate: dk and dv add to what an earlier slice of the same units
 * wrote (only when a group's heads are split). */
struct bwd_slice {
    int64_t unit0, n_units, head0, n_heads;
    bool accumulate;
};

}  // namespace

/* ---- layout ---- */

static __host__ __device__ __forceinline__ int64_t head_col(const head_cols &c, int64_t h)
{
    return h / c.per_group * c.group_stride + h % c.per_group * c.head_stride + c.offset;
}

/* Group g's query heads, then its key head, then its value head. */
static __host__ __device__ __forceinline__ head_cols query_cols(const attn_dims &dm)
{
    return {(dm.per_group + 2) * dm.head_dim, dm.head_dim, 0, dm.per_group};
}

static __host__ __device__ __forceinline__ head_cols key_cols(const attn_dims &dm)
{
    return {(dm.per_group + 2) * dm.head_dim, 0, dm.per_group * dm.head_dim, dm.per_group};
}

static __host__ __device__ __forceinline__ head_cols value_cols(const attn_dims &dm)
{
    return {(dm.per_group + 2) * dm.head_dim, 0, (dm.per_group + 1) * dm.head_dim,
            dm.per_group};
}

static __host__ __device__ __forceinline__ head_cols output_cols(const attn_dims &dm)
{
    return {dm.per_group * dm.head_dim, dm.head_dim, 0, dm.per_group};
}

/* Every size positive: otherwise qkv is empty and there is nothing to do
 * (heads == 0 comes with groups == 0, checked before the launcher). */
static bool has_work(int64_t batch, int64_t seq, int64_t heads, int64_t head_dim)
{
    return batch > 0 && seq > 0 && heads > 0 && head_dim > 0;
}

/* ---- half-warp reductions (butterflies: every lane ends with the same bits) ---- */

/* Over the 16 lanes of a half warp (lanes 0-15 and 16-31 apart). */
static __device__ __forceinline__ float half_warp_sum(float v)
{
    for (int o = 8; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float half_warp_max(float v)
{
    for (int o = 8; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ==== the probabilities path ==== */

/* 32 x 32 output tiles computed by 32 x 8 threads, 4 rows each. */
#define PROBS_TILE 32
#define PROBS_ROW_STEP 8
#define PROBS_THREADS (PROBS_TILE * PROBS_ROW_STEP)
#define PROBS_ROWS_PER_THREAD (PROBS_TILE / PROBS_ROW_STEP)


/* c[pair][t][j] = alpha * a_t . b_j for j <= t and 0 above the diagonal,
 * where a_t and b_j are head h's rows of a and b (b's head mapped as its
 * head_cols say). Block = (pair, row tile, column tile), pair fastest. */
static __global__ void __launch_bounds__(PROBS_THREADS)
scores_kernel(float *c, const float *a, head_view av, const float *b, head_view bv,
              attn_dims dm, int64_t pair0, int64_t n_pairs, float alpha)
{
    __shared__ float a_s[PROBS_TILE][PROBS_TILE + 1];
    __shared__ float b_s[PROBS_TILE][PROBS_TILE + 1];
    const int tx = (int)(threadIdx.x % PROBS_TILE), ty = (int)(threadIdx.x / PROBS_TILE);
    const int64_t seq = dm.seq, n_tiles = ceil_div64(seq, PROBS_TILE);
    int64_t blk = blockIdx.x;
    const int64_t pair = pair0 + blk % n_pairs;
    blk /= n_pairs;
    const int64_t r0 = blk / n_tiles * PROBS_TILE, c0 = blk % n_tiles * PROBS_TILE;
    float *cp = c + pair * seq * seq;
    if (c0 > r0 + PROBS_TILE - 1) {  /* wholly above the diagonal */
        for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++) {
            int64_t t = r0 + ty + PROBS_ROW_STEP * i, j = c0 + tx;
            if (t < seq && j < seq)
                cp[t * seq + j] = 0.0f;
        }
        return;
    }
    const int64_t bi = pair / dm.heads, h = pair % dm.heads;
    const float *ap = a + bi * seq * av.row_stride + head_col(av.cols, h);
    const float *bp = b + bi * seq * bv.row_stride + head_col(bv.cols, h);
    float acc[PROBS_ROWS_PER_THREAD] = {};
    for (int64_t k0 = 0; k0 < dm.head_dim; k0 += PROBS_TILE) {
        const int64_t kk = k0 + tx;
        for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++) {
            const int r = ty + PROBS_ROW_STEP * i;
            const int64_t t = r0 + r, j = c0 + r;
            a_s[r][tx] = t < seq && kk < dm.head_dim ? ap[t * av.row_stride + kk] : 0.0f;
            b_s[r][tx] = j < seq && kk < dm.head_dim ? bp[j * bv.row_stride + kk] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < PROBS_TILE; k++) {
            const float bk = b_s[tx][k];
            for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++)
                acc[i] = fmaf(a_s[ty + PROBS_ROW_STEP * i][k], bk, acc[i]);
        }
        __syncthreads();
    }
    for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++) {
        const int64_t t = r0 + ty + PROBS_ROW_STEP * i, j = c0 + tx;
        if (t < seq && j < seq)
            cp[t * seq + j] = j <= t ? alpha * acc[i] : 0.0f;
    }
}

/* c_t = alpha * sum_{j <= t} m[pair][t][j] b_j over head h's rows (b's
 * head mapped by its head_cols), written to head h's columns of c. Block =
 * (pair, row tile, head_dim tile), pair fastest. */
static __global__ void __launch_bounds__(PROBS_THREADS)
rows_times_heads_kernel(float *c, head_view cv, const float *m, const float *b, head_view bv,
                        attn_dims dm, int64_t pair0, int64_t n_pairs, float alpha)
{
    __shared__ float m_s[PROBS_TILE][PROBS_TILE + 1];
    __shared__ float b_s[PROBS_TILE][PROBS_TILE + 1];
    const int tx = (int)(threadIdx.x % PROBS_TILE), ty = (int)(threadIdx.x / PROBS_TILE);
    const int64_t seq = dm.seq, d = dm.head_dim, n_col_tiles = ceil_div64(d, PROBS_TILE);
    int64_t blk = blockIdx.x;
    const int64_t pair = pair0 + blk % n_pairs;
    blk /= n_pairs;
    const int64_t r0 = blk / n_col_tiles * PROBS_TILE, c0 = blk % n_col_tiles * PROBS_TILE;
    const int64_t bi = pair / dm.heads, h = pair % dm.heads;
    const float *mp = m + pair * seq * seq;
    const float *bp = b + bi * seq * bv.row_stride + head_col(bv.cols, h);
    float *cp = c + bi * seq * cv.row_stride + head_col(cv.cols, h);
    const int64_t last = r0 + PROBS_TILE - 1 < seq - 1 ? r0 + PROBS_TILE - 1 : seq - 1;
    float acc[PROBS_ROWS_PER_THREAD] = {};
    for (int64_t k0 = 0; k0 <= last; k0 += PROBS_TILE) {
        for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++) {
            const int r = ty + PROBS_ROW_STEP * i;
            const int64_t t = r0 + r, j = k0 + tx;
            m_s[r][tx] = t < seq && j <= t ? mp[t * seq + j] : 0.0f;
            const int64_t jr = k0 + r, col = c0 + tx;
            b_s[r][tx] = jr < seq && col < d ? bp[jr * bv.row_stride + col] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < PROBS_TILE; k++) {
            const float bk = b_s[k][tx];
            for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++)
                acc[i] = fmaf(m_s[ty + PROBS_ROW_STEP * i][k], bk, acc[i]);
        }
        __syncthreads();
    }
    for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++) {
        const int64_t t = r0 + ty + PROBS_ROW_STEP * i, col = c0 + tx;
        if (t < seq && col < d)
            cp[t * cv.row_stride + col] = alpha * acc[i];
    }
}

/* For (batch, group) unit: c_j = alpha * sum over the group's query heads h
 * (in order) of sum_{t >= j} m[pair(h)][t][j] b_t, b_t being head h's row t
 * of b; written to the group's columns of c (cv maps head g * per_group to
 * them). Block = (unit, row tile, head_dim tile), unit fastest. */
static __global__ void __launch_bounds__(PROBS_THREADS)
grouped_transposed_kernel(float *c, head_view cv, const float *m, const float *b,
                          head_view bv, attn_dims dm, int64_t unit0, int64_t n_units,
                          float alpha)
{
    __shared__ float m_s[PROBS_TILE][PROBS_TILE + 1];
    __shared__ float b_s[PROBS_TILE][PROBS_TILE + 1];
    const int tx = (int)(threadIdx.x % PROBS_TILE), ty = (int)(threadIdx.x / PROBS_TILE);
    const int64_t seq = dm.seq, d = dm.head_dim, n_col_tiles = ceil_div64(d, PROBS_TILE);
    int64_t blk = blockIdx.x;
    const int64_t unit = unit0 + blk % n_units;
    blk /= n_units;
    const int64_t j0 = blk / n_col_tiles * PROBS_TILE, c0 = blk % n_col_tiles * PROBS_TILE;
    const int64_t bi = unit / dm.groups, g = unit % dm.groups;
    float acc[PROBS_ROWS_PER_THREAD] = {};
    for (int64_t hh = 0; hh < dm.per_group; hh++) {
        const int64_t h = g * dm.per_group + hh;
        const float *mp = m + (bi * dm.heads + h) * seq * seq;
        const float *bp = b + bi * seq * bv.row_stride + head_col(bv.cols, h);
        /* Rows t < j0 would only meet entries above the diagonal. */
        for (int64_t t0 = j0; t0 < seq; t0 += PROBS_TILE) {
            for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++) {
                const int r = ty + PROBS_ROW_STEP * i;
                const int64_t t = t0 + r, j = j0 + tx, col = c0 + tx;
                m_s[r][tx] = t < seq && j <= t ? mp[t * seq + j] : 0.0f;
                b_s[r][tx] = t < seq && col < d ? bp[t * bv.row_stride + col] : 0.0f;
            }
            __syncthreads();
#pragma unroll 8
            for (int k = 0; k < PROBS_TILE; k++) {
                const float bk = b_s[k][tx];
                for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++)
                    acc[i] = fmaf(m_s[k][ty + PROBS_ROW_STEP * i], bk, acc[i]);
            }
            __syncthreads();
        }
    }
    float *cp = c + bi * seq * cv.row_stride + head_col(cv.cols, g * dm.per_group);
    for (int i = 0; i < PROBS_ROWS_PER_THREAD; i++) {
        const int64_t j = j0 + ty + PROBS_ROW_STEP * i, col = c0 + tx;
        if (j < seq && col < d)
            cp[j * cv.row_stride + col] = alpha * acc[i];
    }
}

/* Row t of each [seq, seq] block of p: softmax over its first t + 1
 * scores (max subtracted), zeros after them. One warp per row. */
static __global__ void __launch_bounds__(ROW_THREADS)
softmax_causal_rows_kernel(float *p, int64_t rows, int64_t seq)
{
    const int lane = (int)(threadIdx.x % 32);
    const int64_t stride = (int64_t)gridDim.x * ROW_WARPS;
    for (int64_t row = (int64_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32; row < rows;
         row += stride) {
        float *pr = p + row * seq;
        const int64_t t = row % seq;
        float m = -INFINITY;
        for (int64_t j = lane; j <= t; j += 32)
            m = fmaxf(m, pr[j]);
        m = warp_max(m);
        float sum = 0.0f;
        for (int64_t j = lane; j < seq; j += 32) {
            const float e = j <= t ? expf(pr[j] - m) : 0.0f;
            pr[j] = e;
            sum += e;
        }
        const float inv = 1.0f / warp_sum(sum);
        for (int64_t j = lane; j <= t; j += 32)
            pr[j] *= inv;
    }
}

/* Row t: dP -> dS = P * (dP - sum_{j <= t} P_j dP_j) in place over its
 * first t + 1 entries, zeros after them. One warp per row. */
static __global__ void __launch_bounds__(ROW_THREADS)
softmax_causal_backward_rows_kernel(float *ds, const float *p, int64_t rows, int64_t seq)
{
    const int lane = (int)(threadIdx.x % 32);
    const int64_t stride = (int64_t)gridDim.x * ROW_WARPS;
    for (int64_t row = (int64_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32; row < rows;
         row += stride) {
        float *dr = ds + row * seq;
        const float *pr = p + row * seq;
        const int64_t t = row % seq;
        float dot = 0.0f;
        for (int64_t j = lane; j <= t; j += 32)
            dot = fmaf(pr[j], dr[j], dot);
        dot = warp_sum(dot);
        for (int64_t j = lane; j < seq; j += 32)
            dr[j] = j <= t ? pr[j] * (dr[j] - dot) : 0.0f;
    }
}

/* Items of a 1-D grid launched per pass: the grid stays within INT_MAX
 * blocks. 0 when even one item's blocks exceed it. */
static int64_t items_per_launch(int64_t blocks_per_item)
{
    return blocks_per_item > INT_MAX ? 0 : INT_MAX / blocks_per_item;
}

/* Cover `items` work items of `blocks_per_item` blocks each in as few
 * launches as the grid limit allows: launch(first item, item count, grid
 * blocks) issues one. cudaErrorInvalidValue when one item alone exceeds
 * the limit; otherwise the first launch error. */
template <class Launch>
static cudaError_t launch_in_chunks(int64_t items, int64_t blocks_per_item, Launch launch)
{
    const int64_t per = items_per_launch(blocks_per_item);
    if (per == 0)
        return cudaErrorInvalidValue;
    for (int64_t i0 = 0; i0 < items; i0 += per) {
        const int64_t n = items - i0 < per ? items - i0 : per;
        launch(i0, n, (unsigned)(n * blocks_per_item));
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess)
            return err;
    }
    return cudaSuccess;
}

/* scores_kernel over every (batch, head) pair. */
static cudaError_t launch_scores(cudaStream_t s, float *c, const float *a, head_view av,
                                 const float *b, head_view bv, const attn_dims &dm, float alpha)
{
    const int64_t n_tiles = ceil_div64(dm.seq, PROBS_TILE);
    return launch_in_chunks(dm.batch * dm.heads, n_tiles * n_tiles,
                            [&](int64_t p0, int64_t n, unsigned grid) {
                                MHUB_LAUNCH(scores_kernel, grid, PROBS_THREADS, 0, s)(
                                    c, a, av, b, bv, dm, p0, n, alpha);
                            });
}

static cudaError_t launch_rows_times_heads(cudaStream_t s, float *c, head_view cv,
                                           const float *m, const float *b, head_view bv,
                                           const attn_dims &dm, float alpha)
{
    const int64_t blocks = ceil_div64(dm.seq, PROBS_TILE) * ceil_div64(dm.head_dim, PROBS_TILE);
    return launch_in_chunks(dm.batch * dm.heads, blocks,
                            [&](int64_t p0, int64_t n, unsigned grid) {
                                MHUB_LAUNCH(rows_times_heads_kernel, grid, PROBS_THREADS, 0, s)(
                                    c, cv, m, b, bv, dm, p0, n, alpha);
                            });
}

static cudaError_t launch_grouped_transposed(cudaStream_t s, float *c, head_view cv,
                                             const float *m, const float *b, head_view bv,
                                             const attn_dims &dm, float alpha)
{
    const int64_t blocks = ceil_div64(dm.seq, PROBS_TILE) * ceil_div64(dm.head_dim, PROBS_TILE);
    return launch_in_chunks(dm.batch * dm.groups, blocks,
                            [&](int64_t u0, int64_t n, unsigned grid) {
                                MHUB_LAUNCH(grouped_transposed_kernel, grid, PROBS_THREADS, 0,
                                            s)(c, cv, m, b, bv, dm, u0, n, alpha);
                            });
}

extern "C" cudaError_t mhub_cuda_causal_attention_forward(cudaStream_t s, float *out,
                                                          float *probs, const float *qkv,
                                                          int64_t batch, int64_t seq,
                                                          int64_t heads, int64_t groups,
                                                          int64_t head_dim)
{
    if (!has_work(batch, seq, heads, head_dim))
        return cudaSuccess;
    const attn_dims dm = make_attn_dims(batch, seq, heads, groups, head_dim);
    const head_view q = {dm.width, query_cols(dm)}, k = {dm.width, key_cols(dm)},
                    v = {dm.width, value_cols(dm)}, o = {dm.out_width, output_cols(dm)};
    /* S = scale Q K^T, then P = softmax(S) in place, then O = P V. */
    cudaError_t err = launch_scores(s, probs, qkv, q, qkv, k, dm, dm.scale);
    if (err != cudaSuccess)
        return err;
    const int64_t rows = batch * heads * seq;
    MHUB_LAUNCH(softmax_causal_rows_kernel, row_blocks(rows), ROW_THREADS, 0, s)(probs, rows, seq);
    err = cudaGetLastError();
    if (err != cudaSuccess)
        return err;
    return launch_rows_times_heads(s, out, o, probs, qkv, v, dm, 1.0f);
}

extern "C" cudaError_t mhub_cuda_causal_attention_backward(cudaStream_t s, float *dqkv,
                                                           float *scratch, const float *dout,
                                                           const float *qkv,
                                                           const float *probs, int64_t batch,
                                                           int64_t seq, int64_t heads,
                                                           int64_t groups, int64_t head_dim)
{
    if (!has_work(batch, seq, heads, head_dim))
        return cudaSuccess;
    const attn_dims dm = make_attn_dims(batch, seq, heads, groups, head_dim);
    const head_view q = {dm.width, query_cols(dm)}, k = {dm.width, key_cols(dm)},
                    v = {dm.width, value_cols(dm)}, o = {dm.out_width, output_cols(dm)};
    /* dP = dO V^T into scratch, then dS in place. */
    cudaError_t err = launch_scores(s, scratch, dout, o, qkv, v, dm, 1.0f);
    if (err != cudaSuccess)
        return err;
    const int64_t rows = batch * heads * seq;
    MHUB_LAUNCH(softmax_causal_backward_rows_kernel, row_blocks(rows), ROW_THREADS, 0, s)(
        scratch, probs, rows, seq);
    err = cudaGetLastError();
    if (err != cudaSuccess)
        return err;
    /* dQ = scale dS K; dK = scale sum_heads dS^T Q; dV = sum_heads P^T dO.
     * Together they overwrite every column of every dqkv row. */
    err = launch_rows_times_heads(s, dqkv, q, scratch, qkv, k, dm, dm.scale);
    if (err != cudaSuccess)
        return err;
    err = launch_grouped_transposed(s, dqkv, k, scratch, qkv, q, dm, dm.scale);
    if (err != cudaSuccess)
        return err;
    return launch_grouped_transposed(s, dqkv, v, probs, dout, o, dm, 1.0f);
}

/* ==== the flash path ==== */

#define FLASH_THREADS 256

/* A tile of B rows by head_dim columns, compiled for head_dim <= D. */
template <int D, int B>
struct flash_tile {
    static_assert(D % 32 == 0 && B % 16 == 0, "tile sizes");
    static constexpr int rows = B / 16;    /* tile rows per thread: ty + 16 i */
    static constexpr int cols = D / 16;    /* head_dim columns per thread: tx + 16 c */
    /* Row strides in shared memory: D + 1 and B + 1 are 1 mod 32, so the 16
     * different rows a half warp reads at one column fall in 16 banks. */
    static constexpr int ld = D + 1;
    static constexpr int ldp = B + 1;
    static constexpr int tile = B * ld;    /* floats of a B x D tile */
    static constexpr int ptile = B * ldp;  /* floats of a B x B tile */
    static constexpr size_t forward_bytes = sizeof(float) * (2 * tile + ptile);
    static constexpr size_t backward_bytes = sizeof(float) * (4 * tile + ptile + 2 * B);
};

/* dst (B x D, stride D + 1) = rows [r0, r0 + B) of src (row stride
 * `stride`, head_dim columns); rows past seq and columns past head_dim are
 * zero, so products over all D columns and all B rows stay exact. */
template <int D, int B>
static __device__ __forceinline__ void load_tile(float *dst, const float *src, int64_t stride,
                                                 int64_t r0, int64_t seq, int d)
{
    for (int idx = (int)threadIdx.x; idx < B * D; idx += FLASH_THREADS) {
        const int r = idx / D, c = idx % D;
        const int64_t t = r0 + r;
        dst[r * (D + 1) + c] = t < seq && c < d ? src[t * stride + c] : 0.0f;
    }
}

/* dst[r] = factor * src[r0 + r] for r < B, 0 past seq. */
template <int B>
static __device__ __forceinline__ void load_row_values(float *dst, const float *src, int64_t r0,
                                                       int64_t seq, float factor)
{
    for (int r = (int)threadIdx.x; r < B; r += FLASH_THREADS)
        dst[r] = r0 + r < seq ? factor * src[r0 + r] : 0.0f;
}

/* s[i][j] = a_(ty + 16 i) . b_(tx + 16 j) over D columns of two B x D tiles. */
template <int D, int B>
static __device__ __forceinline__ void tile_dots(float (&s)[B / 16][B / 16], const float *a_s,
                                                 const float *b_s, int tx, int ty)
{
    using T = flash_tile<D, B>;
#pragma unroll
    for (int i = 0; i < T::rows; i++)
#pragma unroll
        for (int j = 0; j < T::rows; j++)
            s[i][j] = 0.0f;
#pragma unroll 4
    for (int c = 0; c < D; c++) {
        float a[T::rows], b[T::rows];
#pragma unroll
        for (int i = 0; i < T::rows; i++)
            a[i] = a_s[(ty + 16 * i) * T::ld + c];
#pragma unroll
        for (int j = 0; j < T::rows; j++)
            b[j] = b_s[(tx + 16 * j) * T::ld + c];
#pragma unroll
        for (int i = 0; i < T::rows; i++)
#pragma unroll
            for (int j = 0; j < T::rows; j++)
                s[i][j] = fmaf(a[i], b[j], s[i][j]);
    }
}

/* acc[i][c] += sum_r p[ty + 16 i][r] x[r][tx + 16 c]: the thread's rows of
 * P X, P a B x B tile, X a B x D tile. */
template <int D, int B>
static __device__ __forceinline__ void accumulate_rows(float (&acc)[B / 16][D / 16],
                                                       const float *p_s, const float *x_s,
                                                       int tx, int ty)
{
    using T = flash_tile<D, B>;
#pragma unroll 4
    for (int r = 0; r < B; r++) {
        float p[T::rows];
#pragma unroll
        for (int i = 0; i < T::rows; i++)
            p[i] = p_s[(ty + 16 * i) * T::ldp + r];
#pragma unroll
        for (int c = 0; c < T::cols; c++) {
            const float x = x_s[r * T::ld + tx + 16 * c];
#pragma unroll
            for (int i = 0; i < T::rows; i++)
                acc[i][c] = fmaf(p[i], x, acc[i][c]);
        }
    }
}

/* acc[i][c] += sum_r p[r][ty + 16 i] x[r][tx + 16 c]: the thread's rows of
 * P^T X. */
template <int D, int B>
static __device__ __forceinline__ void accumulate_columns(float (&acc)[B / 16][D / 16],
                                                          const float *p_s, const float *x_s,
                                                          int tx, int ty)
{
    using T = flash_tile<D, B>;
#pragma unroll 4
    for (int r = 0; r < B; r++) {
        float p[T::rows];
#pragma unroll
        for (int i = 0; i < T::rows; i++)
            p[i] = p_s[r * T::ldp + ty + 16 * i];
#pragma unroll
        for (int c = 0; c < T::cols; c++) {
            const float x = x_s[r * T::ld + tx + 16 * c];
#pragma unroll
            for (int i = 0; i < T::rows; i++)
                acc[i][c] = fmaf(p[i], x, acc[i][c]);
        }
    }
}

/* s[i][j] -> the shared B x B tile at (ty + 16 i, tx + 16 j). */
template <int B>
static __device__ __forceinline__ void store_scores(float *p_s, const float (&s)[B / 16][B / 16],
                                                    int tx, int ty)
{
#pragma unroll
    for (int i = 0; i < B / 16; i++)
#pragma unroll
        for (int j = 0; j < B / 16; j++)
            p_s[(ty + 16 * i) * (B + 1) + tx + 16 * j] = s[i][j];
}

/* One block per (batch, head, query tile), the tiles with the most key
 * tiles first. The running max m and sum l of each row are in log2 units
 * (scores times log2 e, for exp2f); every lane of a row's half warp keeps
 * the same copy. Key tile kt of query tile qt: kt < qt is wholly below the
 * diagonal; kt == qt (same first row, as the tiles have the same height)
 * masks keys past the query, and its first key is <= every query, so each
 * processed tile gives every row a finite max. */
template <int D, int B>
static __global__ void __launch_bounds__(FLASH_THREADS)
flash_forward_kernel(float *out, float *lse, const float *qkv, attn_dims dm, int64_t pair0,
                     int64_t n_pairs)
{
    using T = flash_tile<D, B>;
    extern __shared__ float smem[];
    float *q_s = smem, *kv_s = smem + T::tile, *p_s = smem + 2 * T::tile;
    const int tx = (int)(threadIdx.x & 15), ty = (int)(threadIdx.x >> 4);
    const int d = (int)dm.head_dim;
    const int64_t seq = dm.seq, n_tiles = ceil_div64(seq, B);
    const int64_t pair = pair0 + blockIdx.x % n_pairs;
    const int64_t qt = n_tiles - 1 - blockIdx.x / n_pairs, q0 = qt * B;
    const int64_t bi = pair / dm.heads, h = pair % dm.heads;
    const float *rows = qkv + bi * seq * dm.width;
    const float *q_g = rows + head_col(query_cols(dm), h);
    const float *k_g = rows + head_col(key_cols(dm), h);
    const float *v_g = k_g + d;
    const float scale_log2 = dm.scale * LOG2E;

    load_tile<D, B>(q_s, q_g, dm.width, q0, seq, d);
    float o[T::rows][T::cols], m[T::rows], l[T::rows];
#pragma unroll
    for (int i = 0; i < T::rows; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int c = 0; c < T::cols; c++)
            o[i][c] = 0.0f;
    }
    for (int64_t kt = 0; kt <= qt; kt++) {
        const int64_t k0 = kt * B;
        __syncthreads();  /* the previous tile's V and P are used up */
        load_tile<D, B>(kv_s, k_g, dm.width, k0, seq, d);
        __syncthreads();
        float s[T::rows][T::rows];
        tile_dots<D, B>(s, q_s, kv_s, tx, ty);
#pragma unroll
        for (int i = 0; i < T::rows; i++) {
            float tile_max = -INFINITY;
#pragma unroll
            for (int j = 0; j < T::rows; j++) {
                s[i][j] *= scale_log2;
                if (kt == qt && tx + 16 * j > ty + 16 * i)
                    s[i][j] = -INFINITY;
                tile_max = fmaxf(tile_max, s[i][j]);
            }
            const float m_new = fmaxf(m[i], half_warp_max(tile_max));
            /* A row with no finite score yet (only with infinite inputs)
             * shifts by 0 rather than forming -inf - -inf. */
            const float shift = m_new == -INFINITY ? 0.0f : m_new;
            const float rescale = exp2f(m[i] - shift);
            float row_sum = 0.0f;
#pragma unroll
            for (int j = 0; j < T::rows; j++) {
                s[i][j] = exp2f(s[i][j] - shift);
                row_sum += s[i][j];
            }
            l[i] = l[i] * rescale + half_warp_sum(row_sum);
            m[i] = m_new;
#pragma unroll
            for (int c = 0; c < T::cols; c++)
                o[i][c] *= rescale;
        }
        __syncthreads();  /* K is used up: V replaces it */
        store_scores<B>(p_s, s, tx, ty);
        load_tile<D, B>(kv_s, v_g, dm.width, k0, seq, d);
        __syncthreads();
        accumulate_rows<D, B>(o, p_s, kv_s, tx, ty);
    }
#pragma unroll
    for (int i = 0; i < T::rows; i++) {
        const int64_t t = q0 + ty + 16 * i;
        if (t >= seq)
            continue;
        const float inv = 1.0f / l[i];
        float *orow = out + (bi * seq + t) * dm.out_width + h * d;
#pragma unroll
        for (int c = 0; c < T::cols; c++)
            if (tx + 16 * c < d)
                orow[tx + 16 * c] = o[i][c] * inv;
        if (tx == 0)
            lse[pair * seq + t] = m[i] * LN2 + logf(l[i]);
    }
}

/* D_t = do_t . o_t for the slice's (batch, group, head) rows, one warp per
 * row, into dsum[((unit - unit0) * n_heads + head - head0) * seq + t]. */
static __global__ void __launch_bounds__(ROW_THREADS)
flash_dsum_kernel(float *dsum, const float *dout, const float *out, attn_dims dm, bwd_slice sl)
{
    const int lane = (int)(threadIdx.x % 32);
    const int64_t rows = sl.n_units * sl.n_heads * dm.seq;
    const int64_t stride = (int64_t)gridDim.x * ROW_WARPS;
    for (int64_t row = (int64_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32; row < rows;
         row += stride) {
        const int64_t item = row / dm.seq, t = row % dm.seq;
        const int64_t unit = sl.unit0 + item / sl.n_heads;
        const int64_t bi = unit / dm.groups, g = unit % dm.groups;
        const int64_t h = g * dm.per_group + sl.head0 + item % sl.n_heads;
        const int64_t at = (bi * dm.seq + t) * dm.out_width + h * dm.head_dim;
        float dot = 0.0f;
        for (int64_t c = lane; c < dm.head_dim; c += 32)
            dot = fmaf(dout[at + c], out[at + c], dot);
        dot = warp_sum(dot);
        if (lane == 0)
            dsum[row] = dot;
    }
}

/* The probability and dS of the thread's (query ty + 16 i, key tx + 16 j)
 * entries, from S = q . k (unscaled) and dP = do . v in place: s becomes P,
 * dp becomes dS = P (dP - D). Masked: queries past seq, and keys past the
 * query in a diagonal tile (the query and key tiles start at one row). */
template <int B>
static __device__ __forceinline__ void probs_and_dscores(float (&s)[B / 16][B / 16],
                                                         float (&dp)[B / 16][B / 16],
                                                         const float *lse_s, const float *dsum_s,
                                                         float scale_log2, bool diagonal,
                                                         int64_t q0, int64_t seq, int tx, int ty)
{
#pragma unroll
    for (int i = 0; i < B / 16; i++) {
        const int qi = ty + 16 * i;
        const bool row_valid = q0 + qi < seq;
#pragma unroll
        for (int j = 0; j < B / 16; j++) {
            const int kj = tx + 16 * j;
            const bool valid = row_valid && !(diagonal && kj > qi);
            const float p = valid ? exp2f(fmaf(s[i][j], scale_log2, -lse_s[qi])) : 0.0f;
            s[i][j] = p;
            dp[i][j] = p * (dp[i][j] - dsum_s[qi]);
        }
    }
}

/* dk and dv of one (batch, group, key tile), key tiles in order (the first
 * has the most query tiles). For each of the slice's query heads in turn
 * and each query tile at or below the diagonal: P and dS of the tile, then
 * dv += P^T do and dk += dS^T q, all in registers; dk is scaled at the end. */
template <int D, int B>
static __global__ void __launch_bounds__(FLASH_THREADS)
flash_dkdv_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
                  const float *dsum, attn_dims dm, bwd_slice sl)
{
    using T = flash_tile<D, B>;
    extern __shared__ float smem[];
    float *k_s = smem, *v_s = k_s + T::tile, *q_s = v_s + T::tile, *do_s = q_s + T::tile;
    float *p_s = do_s + T::tile, *lse_s = p_s + T::ptile, *dsum_s = lse_s + B;
    const int tx = (int)(threadIdx.x & 15), ty = (int)(threadIdx.x >> 4);
    const int d = (int)dm.head_dim;
    const int64_t seq = dm.seq, n_tiles = ceil_div64(seq, B);
    const int64_t item = blockIdx.x % sl.n_units, unit = sl.unit0 + item;
    const int64_t kt = blockIdx.x / sl.n_units, k0 = kt * B;
    const int64_t bi = unit / dm.groups, g = unit % dm.groups;
    const float *rows = qkv + bi * seq * dm.width;
    const int64_t kcol = head_col(key_cols(dm), g * dm.per_group);
    const float scale_log2 = dm.scale * LOG2E;

    load_tile<D, B>(k_s, rows + kcol, dm.width, k0, seq, d);
    load_tile<D, B>(v_s, rows + kcol + d, dm.width, k0, seq, d);
    float dk[T::rows][T::cols], dv[T::rows][T::cols];
#pragma unroll
    for (int i = 0; i < T::rows; i++)
#pragma unroll
        for (int c = 0; c < T::cols; c++) {
            dk[i][c] = 0.0f;
            dv[i][c] = 0.0f;
        }
    for (int64_t hh = 0; hh < sl.n_heads; hh++) {
        const int64_t h = g * dm.per_group + sl.head0 + hh;
        const float *q_g = rows + head_col(query_cols(dm), h);
        const float *do_g = dout + bi * seq * dm.out_width + h * d;
        const float *lse_g = lse + (bi * dm.heads + h) * seq;
        const float *dsum_g = dsum + (item * sl.n_heads + hh) * seq;
        for (int64_t qt = kt; qt < n_tiles; qt++) {
            const int64_t q0 = qt * B;
            __syncthreads();  /* the previous tile's q, do and dS are used up */
            load_tile<D, B>(q_s, q_g, dm.width, q0, seq, d);
            load_tile<D, B>(do_s, do_g, dm.out_width, q0, seq, d);
            load_row_values<B>(lse_s, lse_g, q0, seq, LOG2E);
            load_row_values<B>(dsum_s, dsum_g, q0, seq, 1.0f);
            __syncthreads();
            float s[T::rows][T::rows], dp[T::rows][T::rows];
            tile_dots<D, B>(s, q_s, k_s, tx, ty);
            tile_dots<D, B>(dp, do_s, v_s, tx, ty);
            probs_and_dscores<B>(s, dp, lse_s, dsum_s, scale_log2, qt == kt, q0, seq, tx, ty);
            store_scores<B>(p_s, s, tx, ty);
            __syncthreads();
            accumulate_columns<D, B>(dv, p_s, do_s, tx, ty);
            __syncthreads();  /* P is used up: dS replaces it */
            store_scores<B>(p_s, dp, tx, ty);
            __syncthreads();
            accumulate_columns<D, B>(dk, p_s, q_s, tx, ty);
        }
    }
#pragma unroll
    for (int i = 0; i < T::rows; i++) {
        const int64_t j = k0 + ty + 16 * i;
        if (j >= seq)
            continue;
        float *dk_row = dqkv + (bi * seq + j) * dm.width + kcol, *dv_row = dk_row + d;
#pragma unroll
        for (int c = 0; c < T::cols; c++) {
            const int col = tx + 16 * c;
            if (col >= d)
                continue;
            const float dk_val = dm.scale * dk[i][c];
            dk_row[col] = sl.accumulate ? dk_row[col] + dk_val : dk_val;
            dv_row[col] = sl.accumulate ? dv_row[col] + dv[i][c] : dv[i][c];
        }
    }
}

/* dq of one (batch, head, query tile), the tiles with the most key tiles
 * first: over key tiles kt <= qt, P and dS again, then dq += dS k. */
template <int D, int B>
static __global__ void __launch_bounds__(FLASH_THREADS)
flash_dq_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
                const float *dsum, attn_dims dm, bwd_slice sl)
{
    using T = flash_tile<D, B>;
    extern __shared__ float smem[];
    float *q_s = smem, *do_s = q_s + T::tile, *k_s = do_s + T::tile, *v_s = k_s + T::tile;
    float *p_s = v_s + T::tile, *lse_s = p_s + T::ptile, *dsum_s = lse_s + B;
    const int tx = (int)(threadIdx.x & 15), ty = (int)(threadIdx.x >> 4);
    const int d = (int)dm.head_dim;
    const int64_t seq = dm.seq, n_tiles = ceil_div64(seq, B);
    const int64_t n_items = sl.n_units * sl.n_heads, item = blockIdx.x % n_items;
    const int64_t qt = n_tiles - 1 - blockIdx.x / n_items, q0 = qt * B;
    const int64_t unit = sl.unit0 + item / sl.n_heads;
    const int64_t bi = unit / dm.groups, g = unit % dm.groups;
    const int64_t h = g * dm.per_group + sl.head0 + item % sl.n_heads;
    const float *rows = qkv + bi * seq * dm.width;
    const int64_t qcol = head_col(query_cols(dm), h);
    const float *k_g = rows + head_col(key_cols(dm), h), *v_g = k_g + d;
    const float scale_log2 = dm.scale * LOG2E;

    load_tile<D, B>(q_s, rows + qcol, dm.width, q0, seq, d);
    load_tile<D, B>(do_s, dout + bi * seq * dm.out_width + h * d, dm.out_width, q0, seq, d);
    load_row_values<B>(lse_s, lse + (bi * dm.heads + h) * seq, q0, seq, LOG2E);
    load_row_values<B>(dsum_s, dsum + item * seq, q0, seq, 1.0f);
    float dq[T::rows][T::cols];
#pragma unroll
    for (int i = 0; i < T::rows; i++)
#pragma unroll
        for (int c = 0; c < T::cols; c++)
            dq[i][c] = 0.0f;
    for (int64_t kt = 0; kt <= qt; kt++) {
        const int64_t k0 = kt * B;
        __syncthreads();  /* the previous tile's k and dS are used up */
        load_tile<D, B>(k_s, k_g, dm.width, k0, seq, d);
        load_tile<D, B>(v_s, v_g, dm.width, k0, seq, d);
        __syncthreads();
        float s[T::rows][T::rows], dp[T::rows][T::rows];
        tile_dots<D, B>(s, q_s, k_s, tx, ty);
        tile_dots<D, B>(dp, do_s, v_s, tx, ty);
        probs_and_dscores<B>(s, dp, lse_s, dsum_s, scale_log2, kt == qt, q0, seq, tx, ty);
        store_scores<B>(p_s, dp, tx, ty);
        __syncthreads();
        accumulate_rows<D, B>(dq, p_s, k_s, tx, ty);
    }
#pragma unroll
    for (int i = 0; i < T::rows; i++) {
        const int64_t t = q0 + ty + 16 * i;
        if (t >= seq)
            continue;
        float *dq_row = dqkv + (bi * seq + t) * dm.width + qcol;
#pragma unroll
        for (int c = 0; c < T::cols; c++)
            if (tx + 16 * c < d)
                dq_row[tx + 16 * c] = dm.scale * dq[i][c];
    }
}

template <int D, int B>
static cudaError_t flash_forward(cudaStream_t s, float *out, float *lse, const float *qkv,
                                 const attn_dims &dm)
{
    using T = flash_tile<D, B>;
    cudaError_t err = allow_shared_bytes(flash_forward_kernel<D, B>, T::forward_bytes);
    if (err != cudaSuccess)
        return err;
    return launch_in_chunks(dm.batch * dm.heads, ceil_div64(dm.seq, B),
                            [&](int64_t p0, int64_t n, unsigned grid) {
                                MHUB_LAUNCH((flash_forward_kernel<D, B>), grid, FLASH_THREADS,
                                            T::forward_bytes, s)(out, lse, qkv, dm, p0, n);
                            });
}

/* How the backward's D_t (one float per (batch, head, row)) fits in
 * `work`: whole groups of as many (batch, group) units as fit, or, when
 * one group's rows alone exceed it, that group's heads a few at a time
 * (dk and dv then add up across the passes, in head order). Also keeps
 * each grid within INT_MAX blocks. false when not even one head's rows
 * fit (seq above MHUB_CUDA_WORK_BYTES / 4). */
static bool plan_backward(const attn_dims &dm, int64_t n_tiles, int64_t *units_per,
                          int64_t *heads_per)
{
    const int64_t work_floats = (int64_t)(MHUB_CUDA_WORK_BYTES / sizeof(float));
    const int64_t fit_heads = work_floats / dm.seq, grid_items = items_per_launch(n_tiles);
    if (fit_heads == 0 || grid_items == 0)
        return false;
    int64_t hp = dm.per_group < fit_heads ? dm.per_group : fit_heads;
    hp = hp < grid_items ? hp : grid_items;
    int64_t up = work_floats / (hp * dm.seq);
    up = up < grid_items / hp ? up : grid_items / hp;
    *heads_per = hp;
    *units_per = up;  /* >= 1: hp * seq <= work_floats and hp <= grid_items */
    return true;
}

template <int D, int B>
static cudaError_t flash_backward(cudaStream_t s, float *dsum, float *dqkv, const float *dout,
                                  const float *out, const float *qkv, const float *lse,
                                  const attn_dims &dm)
{
    using T = flash_tile<D, B>;
    cudaError_t err = allow_shared_bytes(flash_dkdv_kernel<D, B>, T::backward_bytes);
    if (err != cudaSuccess)
        return err;
    err = allow_shared_bytes(flash_dq_kernel<D, B>, T::backward_bytes);
    if (err != cudaSuccess)
        return err;
    const int64_t n_tiles = ceil_div64(dm.seq, B), units = dm.batch * dm.groups;
    int64_t units_per, heads_per;
    if (!plan_backward(dm, n_tiles, &units_per, &heads_per))
        return cudaErrorInvalidValue;
    for (int64_t u0 = 0; u0 < units; u0 += units_per) {
        for (int64_t h0 = 0; h0 < dm.per_group; h0 += heads_per) {
            bwd_slice sl;
            sl.unit0 = u0;
            sl.n_units = units - u0 < units_per ? units - u0 : units_per;
            sl.head0 = h0;
            sl.n_heads = dm.per_group - h0 < heads_per ? dm.per_group - h0 : heads_per;
            sl.accumulate = h0 > 0;
            const int64_t items = sl.n_units * sl.n_heads;
            MHUB_LAUNCH(flash_dsum_kernel, row_blocks(items * dm.seq), ROW_THREADS, 0, s)(
                dsum, dout, out, dm, sl);
            err = cudaGetLastError();
            if (err != cudaSuccess)
                return err;
            MHUB_LAUNCH((flash_dkdv_kernel<D, B>), (unsigned)(sl.n_units * n_tiles), FLASH_THREADS,
                        T::backward_bytes, s)(
                dqkv, dout, qkv, lse, dsum, dm, sl);
            err = cudaGetLastError();
            if (err != cudaSuccess)
                return err;
            MHUB_LAUNCH((flash_dq_kernel<D, B>), (unsigned)(items * n_tiles), FLASH_THREADS,
                        T::backward_bytes, s)(
                dqkv, dout, qkv, lse, dsum, dm, sl);
            err = cudaGetLastError();
            if (err != cudaSuccess)
                return err;
        }
    }
    return cudaSuccess;
}

/* head_dim above this has no compiled tile: cudaErrorInvalidValue. */
#define FLASH_MAX_HEAD_DIM 256

extern "C" cudaError_t mhub_cuda_flash_attention_forward(cudaStream_t s, float *out, float *lse,
                                                         const float *qkv, int64_t batch,
                                                         int64_t seq, int64_t heads,
                                                         int64_t groups, int64_t head_dim)
{
    if (!has_work(batch, seq, heads, head_dim))
        return cudaSuccess;
    const attn_dims dm = make_attn_dims(batch, seq, heads, groups, head_dim);
    if (head_dim <= 64)
        return flash_forward<64, 64>(s, out, lse, qkv, dm);
    if (head_dim <= 128)
        return flash_forward<128, 64>(s, out, lse, qkv, dm);
    if (head_dim <= FLASH_MAX_HEAD_DIM)
        return flash_forward<256, 32>(s, out, lse, qkv, dm);
    return cudaErrorInvalidValue;
}

extern "C" cudaError_t mhub_cuda_flash_attention_backward(cudaStream_t s, void *work,
                                                          float *dqkv, const float *dout,
                                                          const float *out, const float *qkv,
                                                          const float *lse, int64_t batch,
                                                          int64_t seq, int64_t heads,
                                                          int64_t groups, int64_t head_dim)
{
    if (!has_work(batch, seq, heads, head_dim))
        return cudaSuccess;
    const attn_dims dm = make_attn_dims(batch, seq, heads, groups, head_dim);
    float *dsum = (float *)work;
    if (head_dim <= 64)
        return flash_backward<64, 64>(s, dsum, dqkv, dout, out, qkv, lse, dm);
    if (head_dim <= 128)
        return flash_backward<128, 64>(s, dsum, dqkv, dout, out, qkv, lse, dm);
    if (head_dim <= FLASH_MAX_HEAD_DIM)
        return flash_backward<256, 32>(s, dsum, dqkv, dout, out, qkv, lse, dm);
    return cudaErrorInvalidValue;
}
