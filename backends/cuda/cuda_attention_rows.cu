/* cuda_attention_rows.cu - the small kernels of the GEMM attention path
 * (cuda_attention_gemm.c; launchers declared in cuda_kernels.h).
 *
 * That path keeps each (batch, head) pair's full [seq, seq] score matrix
 * of a chunk in scratch and leaves the products to cuBLAS. What is left
 * is row work over those matrices, plus the pointer table the batched
 * GEMMs read:
 *
 *   forward    S = scale Q K^T (GEMM), then per row t the causal softmax
 *              P_tj = e^(S_tj - m) / l over j <= t (m the row max, l the
 *              sum of e^(S_tj - m)), P_tj = 0 for j > t, lse_t = m + log l;
 *   backward   from the recomputed scores and dP = dO V^T (GEMMs), in one
 *              pass: P_tj = e^(S_tj - lse_t) and dS_tj = P_tj (dP_tj - D_t)
 *              with D_t = do_t . o_t, the same quantities as the flash
 *              kernels of cuda_attention.cu (see its header for the
 *              derivation).
 *
 * One warp per row, 8 rows per block, in a grid-stride loop; every sum is
 * a fixed butterfly, so results are the same bits run to run. Entries
 * above the diagonal are written as exact zeros, so the GEMMs that read
 * the whole rectangle (O = P V, dQ = dS K, ...) see nothing of the masked
 * scores. */
#include <math.h>
#include <stdint.h>

#include "backends/cuda/cuda_kernels.h"
#include "backends/cuda/cuda_attention_common.cuh"
#include "backends/cuda/cuda_launch.h"

#define TABLE_THREADS 128

namespace {

/* Where chunk entry i sits: batch b, group g, query head h (of all heads)
 * and its index hh inside the group. */
struct entry_at {
    int64_t b, g, hh, h;
};

}  // namespace

static __host__ __device__ __forceinline__ entry_at chunk_entry(const mhub_cuda_attn_chunk &c,
                                                                int64_t i)
{
    const int64_t unit = c.unit0 + i % c.n_units;
    entry_at e;
    e.b = unit / c.groups;
    e.g = unit % c.groups;
    e.hh = c.head0 + i / c.n_units;
    e.h = e.g * (c.heads / c.groups) + e.hh;
    return e;
}

static __host__ __device__ __forceinline__ int64_t chunk_rows(const mhub_cuda_attn_chunk &c)
{
    return c.n_units * c.n_heads * c.seq;
}

/* ---- the pointer table ---- */

static __global__ void __launch_bounds__(TABLE_THREADS)
pointers_kernel(void **table, int64_t stride, mhub_cuda_attn_bases bs, mhub_cuda_attn_chunk c)
{
    const int64_t i = (int64_t)blockIdx.x * TABLE_THREADS + threadIdx.x;
    if (i >= c.n_units * c.n_heads)
        return;
    const entry_at e = chunk_entry(c, i);
    const int64_t d = c.head_dim, per_group = c.heads / c.groups;
    const int64_t width = (c.heads + 2 * c.groups) * d, out_width = c.heads * d;
    /* a group's columns of a qkv row: its query heads, its key, its value */
    const int64_t group_col = e.g * (per_group + 2) * d, row0 = e.b * c.seq;
    const int64_t q_at = row0 * width + group_col + e.hh * d;
    const int64_t k_at = row0 * width + group_col + per_group * d;
    const int64_t o_at = row0 * out_width + e.h * d;
    const int64_t s_at = i * c.s_stride;
    table[MHUB_ATTN_Q * stride + i] = (void *)(bs.qkv + q_at);
    table[MHUB_ATTN_K * stride + i] = (void *)(bs.qkv + k_at);
    table[MHUB_ATTN_V * stride + i] = (void *)(bs.qkv + k_at + d);
    table[MHUB_ATTN_O * stride + i] = (void *)(bs.o + o_at);
    table[MHUB_ATTN_S * stride + i] = bs.s + s_at;
    if (bs.dp)
        table[MHUB_ATTN_DP * stride + i] = bs.dp + s_at;
    if (bs.dqkv) {
        table[MHUB_ATTN_DQ * stride + i] = bs.dqkv + q_at;
        table[MHUB_ATTN_DK * stride + i] = bs.dqkv + k_at;
        table[MHUB_ATTN_DV * stride + i] = bs.dqkv + k_at + d;
    }
}

extern "C" cudaError_t mhub_cuda_attn_pointers(cudaStream_t s, void **table, int64_t stride,
                                               mhub_cuda_attn_bases bases,
                                               mhub_cuda_attn_chunk c)
{
    const int64_t n = c.n_units * c.n_heads;
    if (n <= 0)
        return cudaSuccess;
    MHUB_LAUNCH(pointers_kernel, (unsigned)((n + TABLE_THREADS - 1) / TABLE_THREADS),
                TABLE_THREADS, 0, s)(table, stride, bases, c);
    return cudaGetLastError();
}

/* ---- row kernels ---- */

/* Rows of the chunk's [seq, seq] matrices: row r is query position
 * r % seq of entry r / seq. A warp takes rows first_row(), first_row() +
 * row_step(), ... */
static __device__ __forceinline__ int64_t first_row()
{
    return (int64_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32;
}

static __device__ __forceinline__ int64_t row_step()
{
    return (int64_t)gridDim.x * ROW_WARPS;
}

/* Where row r's seq entries start in matrices laid out as the chunk's. */
static __device__ __forceinline__ int64_t row_at(const mhub_cuda_attn_chunk &c, int64_t r)
{
    return r / c.seq * c.s_stride + r % c.seq * c.seq;
}

static __global__ void __launch_bounds__(ROW_THREADS)
softmax_rows_kernel(float *scores, float *lse, mhub_cuda_attn_chunk c)
{
    const int lane = (int)(threadIdx.x % 32);
    const int64_t seq = c.seq;
    for (int64_t row = first_row(), rows = chunk_rows(c); row < rows; row += row_step()) {
        float *r = scores + row_at(c, row);
        const int64_t t = row % seq;
        float m = -INFINITY;
        for (int64_t j = lane; j <= t; j += 32)
            m = fmaxf(m, r[j]);
        m = warp_max(m);
        float l = 0.0f;
        for (int64_t j = lane; j <= t; j += 32)
            l += expf(r[j] - m);
        l = warp_sum(l);  /* >= 1: the max contributes e^0 */
        const float inv = 1.0f / l;
        for (int64_t j = lane; j < seq; j += 32)
            r[j] = j <= t ? expf(r[j] - m) * inv : 0.0f;
        if (lane == 0) {
            const entry_at e = chunk_entry(c, row / seq);
            lse[(e.b * c.heads + e.h) * seq + t] = m + logf(l);
        }
    }
}

/* From the recomputed scores S and dP = dO V^T: P into S's place and
 * dS = P (dP - D_t) into dP's, D_t = do_t . o_t of the row's head. */
static __global__ void __launch_bounds__(ROW_THREADS)
probs_dscores_rows_kernel(float *scores, float *dp, const float *lse, const float *dout,
                          const float *out, mhub_cuda_attn_chunk c)
{
    const int lane = (int)(threadIdx.x % 32);
    const int64_t seq = c.seq, d = c.head_dim;
    for (int64_t row = first_row(), rows = chunk_rows(c); row < rows; row += row_step()) {
        const int64_t t = row % seq;
        const entry_at e = chunk_entry(c, row / seq);
        const int64_t at = (e.b * seq + t) * c.heads * d + e.h * d;
        float dsum = 0.0f;
        for (int64_t k = lane; k < d; k += 32)
            dsum = fmaf(dout[at + k], out[at + k], dsum);
        dsum = warp_sum(dsum);
        const float shift = lse[(e.b * c.heads + e.h) * seq + t];
        float *p = scores + row_at(c, row), *ds = dp + row_at(c, row);
        for (int64_t j = lane; j < seq; j += 32) {
            const float pj = j <= t ? expf(p[j] - shift) : 0.0f;
            p[j] = pj;
            ds[j] = j <= t ? pj * (ds[j] - dsum) : 0.0f;
        }
    }
}

extern "C" cudaError_t mhub_cuda_attn_softmax_rows(cudaStream_t s, float *scores, float *lse,
                                                   mhub_cuda_attn_chunk c)
{
    if (chunk_rows(c) <= 0)
        return cudaSuccess;
    MHUB_LAUNCH(softmax_rows_kernel, row_blocks(chunk_rows(c)), ROW_THREADS, 0, s)(scores, lse,
                                                                                   c);
    return cudaGetLastError();
}

extern "C" cudaError_t mhub_cuda_attn_probs_dscores_rows(cudaStream_t s, float *scores,
                                                         float *dp, const float *lse,
                                                         const float *dout, const float *out,
                                                         mhub_cuda_attn_chunk c)
{
    if (chunk_rows(c) <= 0)
        return cudaSuccess;
    MHUB_LAUNCH(probs_dscores_rows_kernel, row_blocks(chunk_rows(c)), ROW_THREADS, 0, s)(
        scores, dp, lse, dout, out, c);
    return cudaGetLastError();
}
