/* cuda_attention_common.cuh - what the three attention paths share
 * (cuda_attention.cu: probabilities and tiled flash; cuda_attention_rows.cu:
 * the row kernels of the cuBLAS path; cuda_attention_wmma.cu: tensor-core
 * flash): a call's dimensions, ceil division, the warp butterflies, the
 * launch shape of one-warp-per-row kernels, and the shared-memory opt-in. */
#ifndef MHUB_CUDA_ATTENTION_COMMON_CUH
#define MHUB_CUDA_ATTENTION_COMMON_CUH

#include <math.h>
#include <stdint.h>

#include <cuda_runtime.h>

/* Row kernels: one warp per row, 8 warps per block. */
#define ROW_THREADS 256
#define ROW_WARPS (ROW_THREADS / 32)
#define ROW_MAX_BLOCKS 65536

/* exp(x) = exp2(x log2 e); the online softmaxes run in base 2 */
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

namespace {

struct attn_dims {
    int64_t batch, seq, heads, groups, head_dim;
    int64_t per_group;  /* query heads per group */
    int64_t width;      /* a qkv row: (heads + 2 groups) * head_dim */
    int64_t out_width;  /* an output row: heads * head_dim */
    float scale;        /* 1/sqrt(head_dim) */
};

}  // namespace

static inline attn_dims make_attn_dims(int64_t batch, int64_t seq, int64_t heads, int64_t groups,
                                       int64_t head_dim)
{
    attn_dims dm;
    dm.batch = batch;
    dm.seq = seq;
    dm.heads = heads;
    dm.groups = groups;
    dm.head_dim = head_dim;
    dm.per_group = heads / groups;
    dm.width = (heads + 2 * groups) * head_dim;
    dm.out_width = heads * head_dim;
    dm.scale = (float)(1.0 / sqrt((double)head_dim));  /* as the CPU backend rounds it */
    return dm;
}

static __host__ __device__ __forceinline__ int64_t ceil_div64(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* Blocks for `rows` rows of a one-warp-per-row kernel (grid-stride
 * beyond ROW_MAX_BLOCKS). */
static inline unsigned row_blocks(int64_t rows)
{
    const int64_t blocks = ceil_div64(rows, ROW_WARPS);
    return (unsigned)(blocks < ROW_MAX_BLOCKS ? blocks : ROW_MAX_BLOCKS);
}

/* ---- warp reductions (butterflies: every lane ends with the same bits) ---- */

static __device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Kernels needing more than the default 48 KB of dynamic shared memory
 * must say so first; a GPU with less than `bytes` per block refuses. */
template <typename Kernel>
static cudaError_t allow_shared_bytes(Kernel *kernel, size_t bytes)
{
    if (bytes <= 48 * 1024)
        return cudaSuccess;
    cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err != cudaSuccess)
        (void)cudaGetLastError();  /* returned here; not left for the next launch */
    return err;
}

#endif
