/* cuda_device.cuh - device helpers shared by the CUDA backend's kernels.
 *
 * The CUDA kernels aim at the CPU backend's bits, not just its formulas:
 * a CUDA run can then be checked against a CPU run exactly, and a model
 * trained on either starts from the same initial values. Three things
 * stand in the way, and this file removes each:
 *
 *   - nvcc fuses a * b + c into one FMA (one rounding instead of two) by
 *     default, while the CPU backend's C is built with -std=c11, which
 *     turns that contraction off. sfloat and sdouble below are floats
 *     whose every operator is one IEEE operation rounded to nearest
 *     (__fmul_rn and friends, which nvcc never fuses), so a formula
 *     written with them rounds step by step as the C does;
 *   - the CPU's exp is its own polynomial (vexpf in
 *     backends/cpu/cpu_internal.h), not libm's: dev_expf is the same
 *     function, operation for operation;
 *   - the CPU sums a row in VEC_BLOCK = 16 double lanes (lane j takes
 *     elements j, j + 16, ...; the lanes are then added in order, then
 *     the remainder): lanes16_total gives 16 threads that order.
 *
 * The bit-level conversions (bf16/f16), Philox and its float mappings are
 * __host__ __device__ copies of src/dtype.c and src/rng.c, written with
 * the same integer steps. Everything here is inline (a header shared by
 * several .cu files; nothing unused may warn). */
#ifndef MHUB_CUDA_DEVICE_CUH
#define MHUB_CUDA_DEVICE_CUH

#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cuda_runtime.h>

#include "backends/cuda/cuda_kernels.h"
#include "backends/cuda/cuda_launch.h"

#define MHUB_HD __host__ __device__ __forceinline__
#define MHUB_DEV __device__ __forceinline__

/* ---- bit casts ---- */

MHUB_HD uint32_t dev_f32_bits(float f)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}

MHUB_HD float dev_f32_from_bits(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}

/* ---- strict arithmetic: one rounding per operator, never fused ----
 * On the host the plain operators already are (the host compiler runs in
 * ISO mode, without contraction). */

/* T op T with the device's correctly rounded intrinsic `dev` (never
 * contracted into an FMA), and the plain operator on the host. */
#ifdef __CUDA_ARCH__
#define MHUB_STRICT_OP(T, op, dev) \
    MHUB_HD T operator op(T a, T b) { return dev(a.v, b.v); }
#define MHUB_STRICT_SQRT(T, name, dev, host) \
    MHUB_HD T name(T a) { return dev(a.v); }
#else
#define MHUB_STRICT_OP(T, op, dev) \
    MHUB_HD T operator op(T a, T b) { return a.v op b.v; }
#define MHUB_STRICT_SQRT(T, name, dev, host) \
    MHUB_HD T name(T a) { return host(a.v); }
#endif

struct sfloat {
    float v;
    MHUB_HD sfloat(float x) : v(x) {}
};

MHUB_STRICT_OP(sfloat, +, __fadd_rn)
MHUB_STRICT_OP(sfloat, -, __fsub_rn)
MHUB_STRICT_OP(sfloat, *, __fmul_rn)
MHUB_STRICT_OP(sfloat, /, __fdiv_rn)
MHUB_STRICT_SQRT(sfloat, strict_sqrtf, __fsqrt_rn, sqrtf)

struct sdouble {
    double v;
    MHUB_HD sdouble(double x) : v(x) {}
};

MHUB_STRICT_OP(sdouble, +, __dadd_rn)
MHUB_STRICT_OP(sdouble, -, __dsub_rn)
MHUB_STRICT_OP(sdouble, *, __dmul_rn)
MHUB_STRICT_OP(sdouble, /, __ddiv_rn)
MHUB_STRICT_SQRT(sdouble, strict_sqrt, __dsqrt_rn, sqrt)

/* ---- bf16 / f16 <-> f32, as src/dtype.c (see its comments) ---- */

MHUB_HD uint32_t dev_select_u32(bool c, uint32_t x, uint32_t y) { return c ? x : y; }

MHUB_HD uint16_t dev_f32_to_bf16(float f)
{
    uint32_t u = dev_f32_bits(f);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (u >> 16) | 0x0040u;
    return (uint16_t)dev_select_u32((u & 0x7FFFFFFFu) > 0x7F800000u, quiet_nan, rounded);
}

MHUB_HD float dev_bf16_to_f32(uint16_t h) { return dev_f32_from_bits((uint32_t)h << 16); }

/* The subnormal case lets the float unit round |f| / 2^-24 by adding 0.5
 * (exact in round-to-nearest; nvcc keeps subnormals unless -ftz). */
MHUB_HD uint16_t dev_f32_to_f16(float f)
{
    uint32_t u = dev_f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7FFFFFFFu;

    uint32_t rebiased = a - ((127u - 15u) << 23);
    uint32_t normal = (rebiased + 0x0FFFu + ((rebiased >> 13) & 1u)) >> 13;
    normal = dev_select_u32(normal < 0x7C00u, normal, 0x7C00u);

    uint32_t subnormal = dev_f32_bits((sfloat(dev_f32_from_bits(a)) + 0.5f).v) - dev_f32_bits(0.5f);
    uint32_t quiet_nan = 0x7E00u | ((a >> 13) & 0x03FFu);

    uint32_t mag = dev_select_u32(a < 0x38800000u, subnormal, normal);
    mag = dev_select_u32(a > 0x7F800000u, quiet_nan, mag);
    return (uint16_t)(sign | mag);
}

/* (float)(int)mant * 2^-24 is exact: mant < 2^10. */
MHUB_HD float dev_f16_to_f32(uint16_t h)
{
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t exp = ((uint32_t)h >> 10) & 0x1Fu;
    uint32_t mant = (uint32_t)h & 0x03FFu;

    uint32_t normal = ((exp + (127u - 15u)) << 23) | (mant << 13);
    uint32_t subnormal = dev_f32_bits((sfloat((float)(int32_t)mant) * 0x1p-24f).v);
    uint32_t special = 0x7F800000u | (mant << 13);

    uint32_t mag = dev_select_u32(exp == 0, subnormal, normal);
    mag = dev_select_u32(exp == 0x1Fu, special, mag);
    return dev_f32_from_bits(sign | mag);
}

/* An element of an array of dtype dt, as f32, and back (rounded). */
MHUB_DEV float dev_load_as_f32(const void *p, mhub_dtype dt, int64_t i)
{
    if (dt == MHUB_F32)
        return ((const float *)p)[i];
    uint16_t h = ((const uint16_t *)p)[i];
    return dt == MHUB_BF16 ? dev_bf16_to_f32(h) : dev_f16_to_f32(h);
}

MHUB_DEV void dev_store_from_f32(void *p, mhub_dtype dt, int64_t i, float v)
{
    if (dt == MHUB_F32)
        ((float *)p)[i] = v;
    else
        ((uint16_t *)p)[i] = dt == MHUB_BF16 ? dev_f32_to_bf16(v) : dev_f32_to_f16(v);
}

/* ---- exp: vexpf of backends/cpu/cpu_internal.h, step for step ----
 * Cephes' constants and the same split of 2^n into two normal powers, so
 * subnormal results, overflow to +Inf and NaN come out as on the CPU. */
MHUB_HD float dev_expf(float xin)
{
    uint32_t bits = dev_f32_bits(xin);
    uint32_t sign = bits & 0x80000000u;
    int32_t mag = (int32_t)(bits ^ sign);
    const int32_t limit = (int32_t)dev_f32_bits(104.0f);
    uint32_t nan_bits = mag > 0x7f800000 ? 0x7fc00000u : 0u;
    mag = mag < limit ? mag : limit;
    sfloat x = dev_f32_from_bits((uint32_t)mag | sign);

    const float shifter = 0x1.8p23f;
    sfloat t = x * 0x1.715476p0f + shifter;
    sfloat nf = t - shifter;
    sfloat r = x - nf * 0x1.63p-1f;
    r = r - nf * -2.12194440e-4f;
    sfloat r2 = r * r;
    sfloat p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r2 + r + 1.0f;

    uint32_t m = dev_f32_bits(t.v) - dev_f32_bits(shifter) + 256u;
    uint32_t h = m >> 1;
    float s1 = dev_f32_from_bits((h - 1u) << 23);
    float s2 = dev_f32_from_bits((m - h - 1u) << 23);
    return dev_f32_from_bits(dev_f32_bits((p * s1 * s2).v) | nan_bits);
}

/* ---- Philox4x32-10 and its mappings, as src/rng.c ---- */

MHUB_HD void dev_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

MHUB_HD void dev_rng_block(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4])
{
    const uint32_t ctr[4] = {(uint32_t)index, (uint32_t)(index >> 32), (uint32_t)stream,
                             (uint32_t)(stream >> 32)};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    dev_philox4x32_10(ctr, key, out);
}

/* 24 high bits times 2^-24: exact. */
MHUB_HD float dev_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t r[4];
    dev_rng_block(seed, stream, index, r);
    return (sfloat((float)(r[0] >> 8)) * (1.0f / 16777216.0f)).v;
}

/* Box-Muller in double as the CPU. The integer-to-double conversions,
 * the + 1, the divisions by 2^32 and sqrt are exact or correctly rounded
 * on both sides; log and cos are each libm's (glibc on the host, CUDA's
 * on the device, within 1 and 2 double ulps), so the float result can
 * differ only when the double lands within a few double ulps of a float
 * rounding boundary: about one value in 2^28. */
MHUB_HD float dev_rng_normal(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t r[4];
    dev_rng_block(seed, stream, index, r);
    sdouble u1 = (sdouble((double)r[0]) + 1.0) / 4294967296.0;
    sdouble u2 = sdouble((double)r[1]) / 4294967296.0;
    sdouble radius = strict_sqrt(sdouble(-2.0) * log(u1.v));
    sdouble angle = sdouble(6.283185307179586) * u2;
    return (float)(radius * cos(angle.v)).v;
}

/* ---- reductions ---- */

#define MHUB_FULL_MASK 0xFFFFFFFFu

/* Sum over a warp by a fixed butterfly: the same order on every run (and
 * every lane ends with the same total). */
MHUB_DEV double warp_sum(double v)
{
    for (int off = 16; off > 0; off >>= 1)
        v = (sdouble(v) + __shfl_xor_sync(MHUB_FULL_MASK, v, off)).v;
    return v;
}

/* The larger of a and b, keeping a when b is not larger (so a NaN in b is
 * passed over, as the CPU's x > m ? x : m). */
MHUB_DEV float max_keep(float a, float b) { return b > a ? b : a; }

MHUB_DEV float warp_max(float v)
{
    for (int off = 16; off > 0; off >>= 1)
        v = max_keep(v, __shfl_xor_sync(MHUB_FULL_MASK, v, off));
    return v;
}

/* Block-wide sum and max (blockDim.x a multiple of 32, at most 1024),
 * every thread gets the result; all threads must call. `scratch` holds
 * 32 values. The order is fixed: warps by butterfly, then warp 0 over
 * the warps' sums. */
MHUB_DEV double block_sum(double v, double *scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads(); /* scratch may still be read from an earlier call */
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0;
    return warp_sum(v);
}

MHUB_DEV float block_max(float v, float *scratch)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0)
        scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

/* The CPU's lane order: 16 consecutive threads (a half warp, all of whose
 * threads call this together with the whole warp) each hold one lane's
 * double sum; every one of them gets ((0 + lane 0) + lane 1) + ... +
 * lane 15, the CPU's lanes_total. */
#define MHUB_LANES 16

MHUB_DEV double lanes16_total(double acc)
{
    sdouble s = 0.0;
    for (int j = 0; j < MHUB_LANES; j++)
        s = s + __shfl_sync(MHUB_FULL_MASK, acc, j, MHUB_LANES);
    return s.v;
}

/* n rounded down to whole lane blocks: the CPU's vec_prefix. */
MHUB_HD int64_t lanes_body(int64_t n) { return n & ~(int64_t)(MHUB_LANES - 1); }

/* ---- faults ---- */

/* The first fault wins (code 0 -> code); later ones leave it alone. */
MHUB_DEV void record_fault(mhub_cuda_fault *f, int code, long long row, long long value,
                           long long limit)
{
    if (atomicCAS(&f->code, 0, code) == 0) {
        f->row = row;
        f->value = value;
        f->limit = limit;
    }
}

/* ---- launch sizes ---- */

/* Threads per block of the elementwise kernels. */
#define MHUB_THREADS 256
/* Most blocks a grid-stride launch uses: a few waves of a large GPU; the
 * loops cover any size. A constant, so a launch's shape (and any order
 * that depends on it) is the same on every device. */
#define MHUB_MAX_BLOCKS 8192

/* Blocks for n items at `per_block` items a block, at least 1, at most
 * `cap`. */
inline unsigned blocks_for(int64_t n, int64_t per_block, int64_t cap = MHUB_MAX_BLOCKS)
{
    int64_t b = (n + per_block - 1) / per_block;
    if (b < 1)
        b = 1;
    if (b > cap)
        b = cap;
    return (unsigned)b;
}

/* Items a thread of a streaming kernel loads before it stores any. A
 * grid-stride loop whose store may alias its next load (out may be in)
 * keeps one load in flight per thread, far from the bytes in flight it
 * takes to fill an H100's memory pipe; loading a few items first, then
 * computing and storing them, overlaps their latencies. */
#define MHUB_UNROLL 4

/* Index of this thread in a 1-D grid-stride loop, and the stride. */
MHUB_DEV int64_t grid_index() { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
MHUB_DEV int64_t grid_stride() { return (int64_t)gridDim.x * blockDim.x; }

/* True when p is 16-byte aligned, so float4 accesses to it apply. */
inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

/* ---- deterministic column sums: dst[q][c] += sum over rows of term ----
 * A parameter gradient such as dbias[c] += sum_r dout[r, c] sums down
 * columns. Float atomics would make the sum's order, so its bits, vary
 * from run to run; instead the rows are cut into chunks of about
 * MHUB_COLSUM_ROWS, one thread sums its column over one chunk in row
 * order, and a second kernel adds the chunks' sums in chunk order. Chunk
 * 0 starts from the gradient's current value, so with a single chunk the
 * result is the CPU's (dst + t0) + t1 + ... exactly; with several it is
 * the same sum, rounded in another (fixed) order. The partial sums live
 * in the backend's `work` buffer; columns are taken in slabs that fit it.
 * The chunking depends only on rows and cols, so the bits do too.
 *
 * Term: a functor with __device__ void operator()(int64_t r, int64_t c,
 * float v[K]) giving row r's K terms of column c. */
#define MHUB_COLSUM_ROWS 32

template <int K> struct column_targets {
    float *p[K];
};

template <int K, class Term>
static __global__ void __launch_bounds__(MHUB_THREADS)
column_chunk_kernel(Term term, column_targets<K> dst, float *partials, int64_t rows, int64_t c0,
                    int64_t width, int64_t rows_per_chunk, int64_t chunks)
{
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width)
        return;
    int64_t c = c0 + j, k = blockIdx.y;
    int64_t r0 = k * rows_per_chunk;
    int64_t r1 = r0 + rows_per_chunk < rows ? r0 + rows_per_chunk : rows;
    float acc[K];
    for (int q = 0; q < K; q++)
        acc[q] = k == 0 ? dst.p[q][c] : 0.0f;
    for (int64_t r = r0; r < r1; r++) {
        float v[K];
        term(r, c, v);
        for (int q = 0; q < K; q++)
            acc[q] = (sfloat(acc[q]) + v[q]).v;
    }
    for (int q = 0; q < K; q++) {
        if (chunks == 1)
            dst.p[q][c] = acc[q];
        else
            partials[(q * chunks + k) * width + j] = acc[q];
    }
}

template <int K>
static __global__ void __launch_bounds__(MHUB_THREADS)
column_combine_kernel(column_targets<K> dst, const float *partials, int64_t c0, int64_t width,
                      int64_t chunks)
{
    int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= width)
        return;
    for (int q = 0; q < K; q++) {
        const float *part = partials + q * chunks * width + j;
        sfloat acc = part[0];
        for (int64_t k = 1; k < chunks; k++)
            acc = acc + part[k * width];
        dst.p[q][c0 + j] = acc.v;
    }
}

/* Largest grid y dimension. */
#define MHUB_MAX_GRID_Y 65535

template <int K, class Term>
static inline cudaError_t column_sums(cudaStream_t s, void *work, Term term, column_targets<K> dst,
                                      int64_t rows, int64_t cols)
{
    if (rows == 0 || cols == 0)
        return cudaSuccess;
    const int64_t capacity = (int64_t)(MHUB_CUDA_WORK_BYTES / sizeof(float));
    float *partials = (float *)work;
    int64_t slab = cols < capacity / K ? cols : capacity / K;
    for (int64_t c0 = 0; c0 < cols; c0 += slab) {
        int64_t width = cols - c0 < slab ? cols - c0 : slab;
        int64_t chunks = (rows + MHUB_COLSUM_ROWS - 1) / MHUB_COLSUM_ROWS;
        int64_t fit = capacity / (K * width);
        if (chunks > fit)
            chunks = fit;
        if (chunks > MHUB_MAX_GRID_Y)
            chunks = MHUB_MAX_GRID_Y;
        if (chunks < 1)
            chunks = 1;
        int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
        chunks = (rows + rows_per_chunk - 1) / rows_per_chunk; /* none left empty */
        dim3 grid(blocks_for(width, MHUB_THREADS, INT32_MAX), (unsigned)chunks);
        MHUB_LAUNCH((column_chunk_kernel<K, Term>), grid, MHUB_THREADS, 0, s)(
            term, dst, partials, rows, c0, width, rows_per_chunk, chunks);
        if (chunks > 1)
            MHUB_LAUNCH(column_combine_kernel<K>, blocks_for(width, MHUB_THREADS, INT32_MAX),
                        MHUB_THREADS, 0, s)(
                dst, partials, c0, width, chunks);
    }
    return cudaGetLastError();
}

#endif
