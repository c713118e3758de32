/* cuda_attention_wmma.cu - causal grouped-query flash attention on the
 * tensor cores (nvcuda::wmma, bf16 inputs, f32 accumulation), for head_dim
 * 64 and 128. Contracts in include/mhub/backend.h; the formulas and the
 * kernel structure are those of the tiled f32 path (cuda_attention.cu's
 * header): out and lse[b, h, t] forward, P recomputed from lse backward,
 * D_t = do_t . o_t, dqkv overwritten, no atomics, so a result is the same
 * bits run to run.
 *
 * Like the tiled path and unlike the cuBLAS path (cuda_attention_gemm.c),
 * no seq x seq matrix leaves the chip: a block of 4 warps owns a tile of
 * 64 rows, each warp 16 of them, and walks the other side's 64-row tiles
 * through shared memory. Every product is a 16 x 16 x 16 wmma: Q, K, V
 * and dO are read as f32 and rounded to bf16 when staged in shared
 * memory; a warp's 16 x 64 block of scores leaves its f32 accumulator
 * fragments for shared memory, where the lanes do the softmax in f32 (lane
 * l owns row l / 2 and half its columns, see block_col: a mapping of our
 * own, as the fragments' is unspecified), and P or dS goes back as bf16,
 * the A operand of the next product. Masked entries are exactly 0.
 *
 * - forward: one block per (batch, head, query tile), key tiles 0..qt.
 *   The online softmax's running max and sum per row, and the row's O,
 *   live in the lane's registers; P V goes through a fresh fragment to
 *   shared memory and is added as O = alpha O + P V by the owning lane.
 * - backward: D_t into the backend's `work` (whole (batch, group) units
 *   at a time); dK and dV of one (batch, group, key tile) per block,
 *   looping over the group's heads and the query tiles at or below the
 *   diagonal, in accumulator fragments (S^T = K Q^T, dP^T = V dO^T, then
 *   dV += P^T dO, dK += dS^T Q); dQ of one (batch, head, query tile) per
 *   block over key tiles (S and dP again, dQ += dS K).
 *
 * Shared memory per block (64 x D bf16 tiles with rows padded by 8
 * elements, per warp a 16 x 68 f32 score block and one or two 16 x 72
 * bf16 blocks) for D = 64 / 128: forward 2 tiles + 26 KB = 44 / 60 KB,
 * dK dV 4 tiles + 35.5 KB = 71.5 / 103.5 KB, dQ 4 tiles + 26.5 KB = 62.5
 * / 94.5 KB; above 48 KB the kernels opt in (sm_80 offers 163 KB a block,
 * sm_90 227 KB). On sm_90 at D = 64 every kernel fits 168 registers a
 * thread (WMMA_MIN_BLOCKS; ptxas spills at most 28 bytes), so an H100 SM
 * holds 3 blocks of 4 warps of each; at D = 128 (up to 255 registers) it
 * holds 2.
 *
 * Cost at GPT-2 124M (batch 16, seq 1024, 12 heads of 64, 12 layers): the
 * tiles at or below the diagonal make about 0.33 TFLOP forward and 1.15
 * TFLOP backward (7 products a tile pair against the forward's 2) a step.
 * These kernels are synchronous (staging, then products, then the
 * softmax, with only the 3 resident blocks per SM to overlap them) and
 * use mma.sync-class wmma, not Hopper's wgmma; at an assumed 100-200
 * TFLOP/s that is some 8-15 ms a step on an H100 (not yet timed). Next
 * steps: cp.async double buffering of the staged tiles (bf16 in global
 * memory would halve their traffic and drop the conversion), 128-row
 * tiles of 8 warps, the scores kept in registers through mma.sync's
 * documented fragment layout instead of a trip through shared memory,
 * wgmma on sm_90.
 *
 * Every fragment pointer is a multiple of 32 bytes past the start of
 * dynamic shared memory (tiles, blocks and the 16-row and 16-column
 * offsets into them), as wmma requires 256-bit alignment.
 *
 * Other head_dim, or a group whose D_t rows (per_group * seq floats) do
 * not fit `work`, get cudaErrorInvalidValue; the backend asks
 * mhub_cuda_attention_wmma_refusal first and chooses another path. */
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <cuda_bf16.h>
#include <mma.h>

#include "backends/cuda/cuda_kernels.h"
#include "backends/cuda/cuda_attention_common.cuh"
#include "backends/cuda/cuda_launch.h"

namespace wmma = nvcuda::wmma;
typedef __nv_bfloat16 bf16;

#define WMMA_THREADS 128
#define WMMA_WARPS (WMMA_THREADS / 32)
#define WMMA_TILE 64  /* rows of a query or key tile: 16 per warp */
/* Blocks per SM the register allocation must allow on sm_90: 3 at
 * head_dim 64 (at most 168 registers a thread, which ptxas meets with a
 * few bytes of spills at most; an H100's shared memory holds 3 blocks of
 * every kernel there), no bound at 128 (the backward's accumulators alone take 128
 * registers). On sm_80 shared memory allows 2 backward blocks anyway, and
 * the bound would only make ptxas spill. (The CUDA programming guide's
 * pattern: launch bounds may depend on __CUDA_ARCH__.) */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define WMMA_MIN_BLOCKS(D) 1
#else
#define WMMA_MIN_BLOCKS(D) ((D) == 64 ? 3 : 1)
#endif

namespace {

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> frag_a;
/* B as stored row by row (V, Q, dO, K as the right factor) or column by
 * column (K^T, Q^T, dO^T, V^T read from the row-major tile). */
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> frag_b_rows;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> frag_b_cols;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_acc;

/* Four staged values, stored at once (tile rows and every fourth column
 * are 8-byte aligned). */
struct alignas(8) bf16_quad {
    bf16 v[4];
};

/* Shared memory of the kernels for head_dim D. Row strides are multiples
 * of 16 bytes (wmma's rule) and not of 128, so the 16 rows a fragment
 * load touches start in different banks. */
template <int D>
struct wmma_layout {
    static_assert(D % 64 == 0, "head_dim a multiple of 64");
    static constexpr int ld = D + 8;                  /* bf16 tile row */
    static constexpr int tile = WMMA_TILE * ld;       /* bf16 of a 64 x D tile */
    static constexpr int lds = WMMA_TILE + 4;         /* f32 score row */
    static constexpr int scores = 16 * lds;           /* a warp's f32 16 x 64 block */
    static constexpr int ldp = WMMA_TILE + 8;         /* bf16 P or dS row */
    static constexpr int probs = 16 * ldp;            /* a warp's bf16 16 x 64 block */
    static constexpr size_t tile_bytes = sizeof(bf16) * tile;
    static constexpr size_t scores_bytes = sizeof(float) * WMMA_WARPS * scores;
    static constexpr size_t probs_bytes = sizeof(bf16) * WMMA_WARPS * probs;
    static constexpr size_t rows_bytes = sizeof(float) * 2 * WMMA_TILE;  /* lse and D_t */
    static constexpr size_t forward_bytes = 2 * tile_bytes + scores_bytes + probs_bytes;
    static constexpr size_t dkdv_bytes = 4 * tile_bytes + scores_bytes + 2 * probs_bytes +
                                         rows_bytes;
    static constexpr size_t dq_bytes = 4 * tile_bytes + scores_bytes + probs_bytes + rows_bytes;
    /* every fragment pointer 32-byte aligned: the regions and 16-row steps */
    static_assert(16 * ld * sizeof(bf16) % 32 == 0 && 16 * lds * sizeof(float) % 32 == 0 &&
                      16 * ldp * sizeof(bf16) % 32 == 0,
                  "32-byte fragment alignment");
};

}  // namespace

/* ---- layout of qkv: per group, its query heads, then its key and value heads ---- */

static __host__ __device__ __forceinline__ int64_t query_col(const attn_dims &dm, int64_t h,
                                                             int d)
{
    return h / dm.per_group * (dm.per_group + 2) * d + h % dm.per_group * d;
}

static __host__ __device__ __forceinline__ int64_t key_col(const attn_dims &dm, int64_t g, int d)
{
    return g * (dm.per_group + 2) * d + dm.per_group * d;
}

/* ---- the lanes' share of a warp's 16 x 64 block ---- */

/* Lane l owns row l / 2 of the block and the 32 columns of parity l % 2;
 * block_col(j, off) is its j-th, off = lane_col_offset(l). The lanes of
 * rows r and r + 8 start one column pair apart: with row strides of 68
 * (f32) and 36 (bf16 pairs) words, rows 8 apart share banks, and so each
 * step j of the 32 lanes touches 32 different banks (16 words shared by
 * two lanes, for bf16) instead of 8. */
static __device__ __forceinline__ int lane_col_offset(int lane)
{
    return 2 * (lane / 16) + lane % 2;
}

static __device__ __forceinline__ int block_col(int j, int off)
{
    return (2 * j + off) & (WMMA_TILE - 1);
}

/* ---- staging ---- */

/* dst (64 x D bf16, row stride ld) = rows [r0, r0 + 64) of src (f32, row
 * stride `stride`), rounded to nearest even; rows past seq are zero. The
 * rows are read 4 floats a load when src is 16-byte aligned (the pool's
 * buffers are, and strides and head offsets are multiples of head_dim),
 * which takes a quarter of the load instructions; one float a load
 * otherwise. The values staged are the same either way. */
template <int D>
static __device__ __forceinline__ void stage_tile(bf16 *dst, const float *src, int64_t stride,
                                                  int64_t r0, int64_t seq)
{
    using L = wmma_layout<D>;
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
        for (int idx = (int)threadIdx.x; idx < WMMA_TILE * D; idx += WMMA_THREADS) {
            const int r = idx / D, c = idx % D;
            const int64_t t = r0 + r;
            dst[r * L::ld + c] = __float2bfloat16(t < seq ? src[t * stride + c] : 0.0f);
        }
        return;
    }
    for (int idx = (int)threadIdx.x; idx < WMMA_TILE * D / 4; idx += WMMA_THREADS) {
        const int r = idx / (D / 4), c = idx % (D / 4) * 4;
        const int64_t t = r0 + r;
        float4 v;
        if (t < seq) {
            v = *reinterpret_cast<const float4 *>(src + t * stride + c);
        } else {
            v.x = v.y = v.z = v.w = 0.0f;
        }
        bf16_quad q;
        q.v[0] = __float2bfloat16(v.x);
        q.v[1] = __float2bfloat16(v.y);
        q.v[2] = __float2bfloat16(v.z);
        q.v[3] = __float2bfloat16(v.w);
        *reinterpret_cast<bf16_quad *>(dst + r * L::ld + c) = q;  /* one 8-byte store */
    }
}

/* dst[r] = factor * src[r0 + r] for r < 64, 0 past seq. */
static __device__ __forceinline__ void stage_row_values(float *dst, const float *src, int64_t r0,
                                                        int64_t seq, float factor)
{
    for (int r = (int)threadIdx.x; r < WMMA_TILE; r += WMMA_THREADS)
        dst[r] = r0 + r < seq ? factor * src[r0 + r] : 0.0f;
}

/* ---- warp products ---- */

/* out (16 x 64 f32, stride lds) = A B^T: A the 16 x D rows at a, B the 64
 * x D rows at b, both bf16 with stride ld. */
template <int D>
static __device__ __forceinline__ void warp_rows_dot_rows(float *out, const bf16 *a, const bf16 *b)
{
    using L = wmma_layout<D>;
    for (int n = 0; n < WMMA_TILE / 16; n++) {
        frag_acc acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int k = 0; k < D / 16; k++) {
            frag_a fa;
            frag_b_cols fb;
            wmma::load_matrix_sync(fa, a + k * 16, L::ld);
            wmma::load_matrix_sync(fb, b + n * 16 * L::ld + k * 16, L::ld);
            wmma::mma_sync(acc, fa, fb, acc);
        }
        wmma::store_matrix_sync(out + n * 16, acc, L::lds, wmma::mem_row_major);
    }
}

/* acc[n] += M X[:, 16 n ...+ 16]: M the warp's 16 x 64 bf16 block (stride
 * ldp), X a 64 x D bf16 tile (stride ld). */
template <int D>
static __device__ __forceinline__ void warp_accumulate(frag_acc (&acc)[D / 16], const bf16 *m,
                                                       const bf16 *x)
{
    using L = wmma_layout<D>;
#pragma unroll
    for (int k = 0; k < WMMA_TILE / 16; k++) {
        frag_a fa;
        wmma::load_matrix_sync(fa, m + k * 16, L::ldp);
#pragma unroll
        for (int n = 0; n < D / 16; n++) {
            frag_b_rows fb;
            wmma::load_matrix_sync(fb, x + k * 16 * L::ld + n * 16, L::ld);
            wmma::mma_sync(acc[n], fa, fb, acc[n]);
        }
    }
}

/* Rows [row0, row0 + 16) of dst (f32, row stride `stride`, rows past seq
 * skipped) = factor * acc, one fragment at a time through the warp's
 * score block. */
template <int D>
static __device__ __forceinline__ void warp_write_rows(float *dst, int64_t stride, int64_t row0,
                                                       int64_t seq, const frag_acc (&acc)[D / 16],
                                                       float factor, float *scores_w)
{
    using L = wmma_layout<D>;
    const int lane = (int)(threadIdx.x % 32), r = lane / 2, c0 = lane % 2 * 8;
#pragma unroll
    for (int n = 0; n < D / 16; n++) {
        __syncwarp();  /* the block's previous use is over */
        wmma::store_matrix_sync(scores_w, acc[n], L::lds, wmma::mem_row_major);
        __syncwarp();
        if (row0 + r < seq)
            for (int c = 0; c < 8; c++)
                dst[(row0 + r) * stride + n * 16 + c0 + c] = factor * scores_w[r * L::lds + c0 + c];
    }
}

/* ==== forward ==== */

/* One block per (batch, head, query tile), the tiles with the most key
 * tiles first. m and l (the running max and sum, in log2 units as the
 * tiled path's) and the row's O are the lane's, both lanes of a row
 * keeping the same m and l. Key tile kt == qt starts at the same row as
 * the query tile and masks keys past the query; kt < qt is wholly below
 * the diagonal, so every row has a finite max from the first tile on. */
template <int D>
static __global__ void __launch_bounds__(WMMA_THREADS, WMMA_MIN_BLOCKS(D))
wmma_forward_kernel(float *out, float *lse, const float *qkv, attn_dims dm, int64_t pair0,
                    int64_t n_pairs)
{
    using L = wmma_layout<D>;
    extern __shared__ float smem[];
    bf16 *k_s = reinterpret_cast<bf16 *>(smem), *v_s = k_s + L::tile;
    const int warp = (int)(threadIdx.x / 32), lane = (int)(threadIdx.x % 32);
    float *scores_w = reinterpret_cast<float *>(v_s + L::tile) + warp * L::scores;
    bf16 *probs_w = reinterpret_cast<bf16 *>(reinterpret_cast<float *>(v_s + L::tile) +
                                             WMMA_WARPS * L::scores) +
                    warp * L::probs;
    const int64_t seq = dm.seq, n_tiles = ceil_div64(seq, WMMA_TILE);
    const int64_t pair = pair0 + blockIdx.x % n_pairs;
    const int64_t qt = n_tiles - 1 - blockIdx.x / n_pairs, q0 = qt * WMMA_TILE;
    const int64_t bi = pair / dm.heads, h = pair % dm.heads;
    const float *rows = qkv + bi * seq * dm.width;
    const float *k_g = rows + key_col(dm, h / dm.per_group, D), *v_g = k_g + D;
    const float scale_log2 = dm.scale * LOG2E;
    /* the lane's row of the warp's 16, and its columns of a 64-column block */
    const int r = lane / 2, off = lane_col_offset(lane), qi = warp * 16 + r;

    /* Q goes through k_s into the warp's A fragments, kept for the loop. */
    stage_tile<D>(k_s, rows + query_col(dm, h, D), dm.width, q0, seq);
    __syncthreads();
    frag_a q_f[D / 16];
#pragma unroll
    for (int k = 0; k < D / 16; k++)
        wmma::load_matrix_sync(q_f[k], k_s + warp * 16 * L::ld + k * 16, L::ld);

    float o[D / 64][32], m = -INFINITY, l = 0.0f;
#pragma unroll
    for (int cb = 0; cb < D / 64; cb++)
#pragma unroll
        for (int j = 0; j < 32; j++)
            o[cb][j] = 0.0f;
    for (int64_t kt = 0; kt <= qt; kt++) {
        const int64_t k0 = kt * WMMA_TILE;
        __syncthreads();  /* Q's staging, or the previous K and V, are used up */
        stage_tile<D>(k_s, k_g, dm.width, k0, seq);
        stage_tile<D>(v_s, v_g, dm.width, k0, seq);
        __syncthreads();
        for (int n = 0; n < WMMA_TILE / 16; n++) {
            frag_acc acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int k = 0; k < D / 16; k++) {
                frag_b_cols fb;
                wmma::load_matrix_sync(fb, k_s + n * 16 * L::ld + k * 16, L::ld);
                wmma::mma_sync(acc, q_f[k], fb, acc);
            }
            wmma::store_matrix_sync(scores_w + n * 16, acc, L::lds, wmma::mem_row_major);
        }
        __syncwarp();
        /* the online softmax of row qi over this tile's 64 keys */
        float p[32], tile_max = -INFINITY;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const int kj = block_col(j, off);
            const float s = scores_w[r * L::lds + kj] * scale_log2;
            p[j] = kt == qt && kj > qi ? -INFINITY : s;
            tile_max = fmaxf(tile_max, p[j]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        /* a row with no finite score yet (only with infinite inputs)
         * shifts by 0 rather than forming -inf - -inf */
        const float shift = m_new == -INFINITY ? 0.0f : m_new;
        const float rescale = exp2f(m - shift);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 32; j++) {
            p[j] = exp2f(p[j] - shift);
            sum += p[j];
            probs_w[r * L::ldp + block_col(j, off)] = __float2bfloat16(p[j]);
        }
        l = l * rescale + (sum + __shfl_xor_sync(0xffffffffu, sum, 1));
        m = m_new;
        __syncwarp();  /* P is written, the scores are used up */
        frag_a p_f[WMMA_TILE / 16];
#pragma unroll
        for (int k = 0; k < WMMA_TILE / 16; k++)
            wmma::load_matrix_sync(p_f[k], probs_w + k * 16, L::ldp);
        /* P V in blocks of 64 columns, each added to O by its lanes */
#pragma unroll
        for (int cb = 0; cb < D / 64; cb++) {
            for (int n = 0; n < 4; n++) {
                frag_acc acc;
                wmma::fill_fragment(acc, 0.0f);
#pragma unroll
                for (int k = 0; k < WMMA_TILE / 16; k++) {
                    frag_b_rows fb;
                    wmma::load_matrix_sync(fb, v_s + k * 16 * L::ld + cb * 64 + n * 16, L::ld);
                    wmma::mma_sync(acc, p_f[k], fb, acc);
                }
                wmma::store_matrix_sync(scores_w + n * 16, acc, L::lds, wmma::mem_row_major);
            }
            __syncwarp();
#pragma unroll
            for (int j = 0; j < 32; j++)
                o[cb][j] = o[cb][j] * rescale + scores_w[r * L::lds + block_col(j, off)];
            __syncwarp();  /* the block is read: the next one may replace it */
        }
    }
    const int64_t t = q0 + qi;
    if (t >= seq)
        return;
    const float inv = 1.0f / l;
    float *orow = out + (bi * seq + t) * dm.out_width + h * D;
#pragma unroll
    for (int cb = 0; cb < D / 64; cb++)
#pragma unroll
        for (int j = 0; j < 32; j++)
            orow[cb * 64 + block_col(j, off)] = o[cb][j] * inv;
    if (lane % 2 == 0)
        lse[pair * seq + t] = m * LN2 + logf(l);
}

/* ==== backward ==== */

/* D_t = do_t . o_t of the (batch, group) units [unit0, unit0 + n_units),
 * every query head of each, one warp per row, into dsum[((unit - unit0) *
 * per_group + head in group) * seq + t]. */
static __global__ void __launch_bounds__(ROW_THREADS)
wmma_dsum_kernel(float *dsum, const float *dout, const float *out, attn_dims dm, int d,
                 int64_t unit0, int64_t n_units)
{
    const int lane = (int)(threadIdx.x % 32);
    const int64_t rows = n_units * dm.per_group * dm.seq;
    const int64_t stride = (int64_t)gridDim.x * ROW_WARPS;
    for (int64_t row = (int64_t)blockIdx.x * ROW_WARPS + threadIdx.x / 32; row < rows;
         row += stride) {
        const int64_t item = row / dm.seq, t = row % dm.seq;
        const int64_t unit = unit0 + item / dm.per_group;
        const int64_t bi = unit / dm.groups, g = unit % dm.groups;
        const int64_t h = g * dm.per_group + item % dm.per_group;
        const int64_t at = (bi * dm.seq + t) * dm.out_width + h * d;
        float dot = 0.0f;
        for (int c = lane; c < d; c += 32)
            dot = fmaf(dout[at + c], out[at + c], dot);
        for (int o = 16; o > 0; o >>= 1)
            dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (lane == 0)
            dsum[row] = dot;
    }
}

/* dK and dV of one (batch, group, key tile), the warp owning 16 of its
 * keys, over the group's query heads in order and their query tiles qt >=
 * kt. The lane keeps its 32 probabilities (key row r, its 32 query
 * columns) in registers between P and dS. */
template <int D>
static __global__ void __launch_bounds__(WMMA_THREADS, WMMA_MIN_BLOCKS(D))
wmma_dkdv_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
                 const float *dsum, attn_dims dm, int64_t unit0, int64_t n_units)
{
    using L = wmma_layout<D>;
    extern __shared__ float smem[];
    bf16 *k_s = reinterpret_cast<bf16 *>(smem), *v_s = k_s + L::tile, *q_s = v_s + L::tile;
    bf16 *do_s = q_s + L::tile;
    const int warp = (int)(threadIdx.x / 32), lane = (int)(threadIdx.x % 32);
    float *scores_all = reinterpret_cast<float *>(do_s + L::tile);
    float *scores_w = scores_all + warp * L::scores;
    bf16 *probs_all = reinterpret_cast<bf16 *>(scores_all + WMMA_WARPS * L::scores);
    bf16 *probs_w = probs_all + warp * L::probs;
    bf16 *dscores_w = probs_all + (WMMA_WARPS + warp) * L::probs;
    float *lse_s = reinterpret_cast<float *>(probs_all + 2 * WMMA_WARPS * L::probs);
    float *dsum_s = lse_s + WMMA_TILE;
    const int64_t seq = dm.seq, n_tiles = ceil_div64(seq, WMMA_TILE);
    const int64_t item = blockIdx.x % n_units, unit = unit0 + item;
    const int64_t kt = blockIdx.x / n_units, k0 = kt * WMMA_TILE;
    const int64_t bi = unit / dm.groups, g = unit % dm.groups;
    const float *rows = qkv + bi * seq * dm.width;
    const int64_t kcol = key_col(dm, g, D);
    const float scale_log2 = dm.scale * LOG2E;
    const int r = lane / 2, off = lane_col_offset(lane), kj = warp * 16 + r;
    const bf16 *k_w = k_s + warp * 16 * L::ld, *v_w = v_s + warp * 16 * L::ld;

    stage_tile<D>(k_s, rows + kcol, dm.width, k0, seq);
    stage_tile<D>(v_s, rows + kcol + D, dm.width, k0, seq);
    frag_acc dk[D / 16], dv[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; n++) {
        wmma::fill_fragment(dk[n], 0.0f);
        wmma::fill_fragment(dv[n], 0.0f);
    }
    for (int64_t hh = 0; hh < dm.per_group; hh++) {
        const int64_t h = g * dm.per_group + hh;
        const float *q_g = rows + query_col(dm, h, D);
        const float *do_g = dout + bi * seq * dm.out_width + h * D;
        const float *lse_g = lse + (bi * dm.heads + h) * seq;
        const float *dsum_g = dsum + (item * dm.per_group + hh) * seq;
        for (int64_t qt = kt; qt < n_tiles; qt++) {
            const int64_t q0 = qt * WMMA_TILE;
            __syncthreads();  /* the previous tile's Q, dO, lse and D are used up */
            stage_tile<D>(q_s, q_g, dm.width, q0, seq);
            stage_tile<D>(do_s, do_g, dm.out_width, q0, seq);
            stage_row_values(lse_s, lse_g, q0, seq, LOG2E);
            stage_row_values(dsum_s, dsum_g, q0, seq, 1.0f);
            __syncthreads();
            warp_rows_dot_rows<D>(scores_w, k_w, q_s);  /* S^T */
            __syncwarp();
            float p[32];
#pragma unroll
            for (int j = 0; j < 32; j++) {
                const int qj = block_col(j, off);
                const bool valid = q0 + qj < seq && !(qt == kt && kj > qj);
                p[j] = valid ? exp2f(fmaf(scores_w[r * L::lds + qj], scale_log2, -lse_s[qj]))
                             : 0.0f;
                probs_w[r * L::ldp + qj] = __float2bfloat16(p[j]);
            }
            __syncwarp();  /* S^T is used up */
            warp_rows_dot_rows<D>(scores_w, v_w, do_s);  /* dP^T */
            __syncwarp();
#pragma unroll
            for (int j = 0; j < 32; j++) {
                const int qj = block_col(j, off);
                const float ds = p[j] * (scores_w[r * L::lds + qj] - dsum_s[qj]);
                dscores_w[r * L::ldp + qj] = __float2bfloat16(ds);
            }
            __syncwarp();
            warp_accumulate<D>(dv, probs_w, do_s);   /* dV += P^T dO */
            warp_accumulate<D>(dk, dscores_w, q_s);  /* dK += dS^T Q */
        }
    }
    float *dk_rows = dqkv + bi * seq * dm.width + kcol;
    warp_write_rows<D>(dk_rows, dm.width, k0 + warp * 16, seq, dk, dm.scale, scores_w);
    warp_write_rows<D>(dk_rows + D, dm.width, k0 + warp * 16, seq, dv, 1.0f, scores_w);
}

/* dQ of one (batch, head, query tile), the warp owning 16 of its queries,
 * over key tiles kt <= qt; the tiles with the most key tiles first. */
template <int D>
static __global__ void __launch_bounds__(WMMA_THREADS, WMMA_MIN_BLOCKS(D))
wmma_dq_kernel(float *dqkv, const float *dout, const float *qkv, const float *lse,
               const float *dsum, attn_dims dm, int64_t unit0, int64_t n_units)
{
    using L = wmma_layout<D>;
    extern __shared__ float smem[];
    bf16 *q_s = reinterpret_cast<bf16 *>(smem), *do_s = q_s + L::tile, *k_s = do_s + L::tile;
    bf16 *v_s = k_s + L::tile;
    const int warp = (int)(threadIdx.x / 32), lane = (int)(threadIdx.x % 32);
    float *scores_all = reinterpret_cast<float *>(v_s + L::tile);
    float *scores_w = scores_all + warp * L::scores;
    bf16 *probs_all = reinterpret_cast<bf16 *>(scores_all + WMMA_WARPS * L::scores);
    bf16 *dscores_w = probs_all + warp * L::probs;
    float *lse_s = reinterpret_cast<float *>(probs_all + WMMA_WARPS * L::probs);
    float *dsum_s = lse_s + WMMA_TILE;
    const int64_t seq = dm.seq, n_tiles = ceil_div64(seq, WMMA_TILE);
    const int64_t n_items = n_units * dm.per_group, item = blockIdx.x % n_items;
    const int64_t qt = n_tiles - 1 - blockIdx.x / n_items, q0 = qt * WMMA_TILE;
    const int64_t unit = unit0 + item / dm.per_group;
    const int64_t bi = unit / dm.groups, g = unit % dm.groups;
    const int64_t h = g * dm.per_group + item % dm.per_group;
    const float *rows = qkv + bi * seq * dm.width;
    const int64_t qcol = query_col(dm, h, D);
    const float *k_g = rows + key_col(dm, g, D), *v_g = k_g + D;
    const float scale_log2 = dm.scale * LOG2E;
    const int r = lane / 2, off = lane_col_offset(lane), qi = warp * 16 + r;
    const bf16 *q_w = q_s + warp * 16 * L::ld, *do_w = do_s + warp * 16 * L::ld;

    stage_tile<D>(q_s, rows + qcol, dm.width, q0, seq);
    stage_tile<D>(do_s, dout + bi * seq * dm.out_width + h * D, dm.out_width, q0, seq);
    stage_row_values(lse_s, lse + (bi * dm.heads + h) * seq, q0, seq, LOG2E);
    stage_row_values(dsum_s, dsum + item * seq, q0, seq, 1.0f);
    frag_acc dq[D / 16];
#pragma unroll
    for (int n = 0; n < D / 16; n++)
        wmma::fill_fragment(dq[n], 0.0f);
    for (int64_t kt = 0; kt <= qt; kt++) {
        __syncthreads();  /* the previous K and V are used up */
        stage_tile<D>(k_s, k_g, dm.width, kt * WMMA_TILE, seq);
        stage_tile<D>(v_s, v_g, dm.width, kt * WMMA_TILE, seq);
        __syncthreads();
        warp_rows_dot_rows<D>(scores_w, q_w, k_s);  /* S */
        __syncwarp();
        const bool row_valid = q0 + qi < seq;
        const float row_lse = lse_s[qi], row_dsum = dsum_s[qi];
        float p[32];
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const int kj = block_col(j, off);
            const bool valid = row_valid && !(kt == qt && kj > qi);
            p[j] = valid ? exp2f(fmaf(scores_w[r * L::lds + kj], scale_log2, -row_lse)) : 0.0f;
        }
        __syncwarp();  /* S is used up */
        warp_rows_dot_rows<D>(scores_w, do_w, v_s);  /* dP */
        __syncwarp();
#pragma unroll
        for (int j = 0; j < 32; j++) {
            const int kj = block_col(j, off);
            const float ds = p[j] * (scores_w[r * L::lds + kj] - row_dsum);
            dscores_w[r * L::ldp + kj] = __float2bfloat16(ds);
        }
        __syncwarp();
        warp_accumulate<D>(dq, dscores_w, k_s);  /* dQ += dS K */
    }
    warp_write_rows<D>(dqkv + bi * seq * dm.width + qcol, dm.width, q0 + warp * 16, seq, dq,
                       dm.scale, scores_w);
}

/* ==== launchers ==== */

/* (batch, group) units per backward pass: as many as whose D_t rows fit
 * `work`, and as keep each grid within INT_MAX blocks. 0: not one. */
static int64_t backward_units_per_pass(int64_t seq, int64_t per_group)
{
    const int64_t work_floats = (int64_t)(MHUB_CUDA_WORK_BYTES / sizeof(float));
    const int64_t n_tiles = ceil_div64(seq, WMMA_TILE);
    const int64_t by_work = work_floats / (per_group * seq);
    const int64_t by_grid = INT_MAX / (n_tiles * per_group);
    return by_work < by_grid ? by_work : by_grid;
}

extern "C" const char *mhub_cuda_attention_wmma_refusal(int64_t seq, int64_t heads,
                                                        int64_t groups, int64_t head_dim)
{
    if (head_dim != 64 && head_dim != 128)
        return "head_dim must be 64 or 128";
    if (seq <= 0 || heads <= 0 || groups <= 0 || heads % groups != 0)
        return NULL;  /* nothing to do, or an argument check's business */
    if (seq > INT_MAX || backward_units_per_pass(seq, heads / groups) == 0)
        return "one group's backward rows (query heads per group x seq floats) exceed the "
               "kernels' scratch";
    return NULL;
}

template <int D>
static cudaError_t wmma_forward(cudaStream_t s, float *out, float *lse, const float *qkv,
                                const attn_dims &dm)
{
    using L = wmma_layout<D>;
    cudaError_t err = allow_shared_bytes(wmma_forward_kernel<D>, L::forward_bytes);
    if (err != cudaSuccess)
        return err;
    const int64_t n_tiles = ceil_div64(dm.seq, WMMA_TILE), pairs = dm.batch * dm.heads;
    const int64_t per = INT_MAX / n_tiles;
    for (int64_t p0 = 0; p0 < pairs; p0 += per) {
        const int64_t n = pairs - p0 < per ? pairs - p0 : per;
        MHUB_LAUNCH(wmma_forward_kernel<D>, (unsigned)(n * n_tiles), WMMA_THREADS,
                    L::forward_bytes, s)(out, lse, qkv, dm, p0, n);
        err = cudaGetLastError();
        if (err != cudaSuccess)
            return err;
    }
    return cudaSuccess;
}

template <int D>
static cudaError_t wmma_backward(cudaStream_t s, float *dsum, float *dqkv, const float *dout,
                                 const float *out, const float *qkv, const float *lse,
                                 const attn_dims &dm)
{
    using L = wmma_layout<D>;
    cudaError_t err = allow_shared_bytes(wmma_dkdv_kernel<D>, L::dkdv_bytes);
    if (err != cudaSuccess)
        return err;
    err = allow_shared_bytes(wmma_dq_kernel<D>, L::dq_bytes);
    if (err != cudaSuccess)
        return err;
    const int64_t n_tiles = ceil_div64(dm.seq, WMMA_TILE), units = dm.batch * dm.groups;
    const int64_t per = backward_units_per_pass(dm.seq, dm.per_group);
    if (per == 0)
        return cudaErrorInvalidValue;
    for (int64_t u0 = 0; u0 < units; u0 += per) {
        const int64_t n = units - u0 < per ? units - u0 : per;
        const int64_t rows = n * dm.per_group * dm.seq;
        const int64_t row_blocks = ceil_div64(rows, ROW_WARPS);
        MHUB_LAUNCH(wmma_dsum_kernel,
                    (unsigned)(row_blocks < ROW_MAX_BLOCKS ? row_blocks : ROW_MAX_BLOCKS),
                    ROW_THREADS, 0, s)(dsum, dout, out, dm, D, u0, n);
        err = cudaGetLastError();
        if (err != cudaSuccess)
            return err;
        MHUB_LAUNCH(wmma_dkdv_kernel<D>, (unsigned)(n * n_tiles), WMMA_THREADS, L::dkdv_bytes,
                    s)(dqkv, dout, qkv, lse, dsum, dm, u0, n);
        err = cudaGetLastError();
        if (err != cudaSuccess)
            return err;
        MHUB_LAUNCH(wmma_dq_kernel<D>, (unsigned)(n * dm.per_group * n_tiles), WMMA_THREADS,
                    L::dq_bytes, s)(dqkv, dout, qkv, lse, dsum, dm, u0, n);
        err = cudaGetLastError();
        if (err != cudaSuccess)
            return err;
    }
    return cudaSuccess;
}

extern "C" cudaError_t mhub_cuda_wmma_attention_forward(cudaStream_t s, float *out, float *lse,
                                                        const float *qkv, int64_t batch,
                                                        int64_t seq, int64_t heads,
                                                        int64_t groups, int64_t head_dim)
{
    if (batch <= 0 || seq <= 0 || heads <= 0 || head_dim <= 0)
        return cudaSuccess;
    if (mhub_cuda_attention_wmma_refusal(seq, heads, groups, head_dim))
        return cudaErrorInvalidValue;
    const attn_dims dm = make_attn_dims(batch, seq, heads, groups, head_dim);
    return head_dim == 64 ? wmma_forward<64>(s, out, lse, qkv, dm)
                          : wmma_forward<128>(s, out, lse, qkv, dm);
}

extern "C" cudaError_t mhub_cuda_wmma_attention_backward(cudaStream_t s, void *work,
                                                         float *dqkv, const float *dout,
                                                         const float *out, const float *qkv,
                                                         const float *lse, int64_t batch,
                                                         int64_t seq, int64_t heads,
                                                         int64_t groups, int64_t head_dim)
{
    if (batch <= 0 || seq <= 0 || heads <= 0 || head_dim <= 0)
        return cudaSuccess;
    if (mhub_cuda_attention_wmma_refusal(seq, heads, groups, head_dim))
        return cudaErrorInvalidValue;
    const attn_dims dm = make_attn_dims(batch, seq, heads, groups, head_dim);
    float *dsum = (float *)work;
    return head_dim == 64 ? wmma_backward<64>(s, dsum, dqkv, dout, out, qkv, lse, dm)
                          : wmma_backward<128>(s, dsum, dqkv, dout, out, qkv, lse, dm);
}
