/* cuda_elementwise.cu - the CUDA backend's elementwise, loss, embedding,
 * conversion, random-fill and optimizer kernels (contracts in
 * include/mhub/backend.h, launchers in cuda_kernels.h).
 *
 * Each formula is the CPU backend's (backends/cpu/cpu_kernels.c,
 * cpu_transformer.c), written with cuda_device.cuh's strict arithmetic so
 * that it rounds operation by operation as the C does: the elementwise
 * maps, casts, optimizer steps and uniform fills give the CPU's bits.
 * An embedding row's gradient adds up in the CPU's row order; the
 * softmax's double row sum and the parameter-gradient column sums
 * (bias_backward) run in a fixed order of their own (see each).
 * Nothing uses float atomics, so every result is the same on every run.
 *
 * Launchers only enqueue work: no host synchronization, and a zero size
 * launches nothing. */
#include "backends/cuda/cuda_device.cuh"
#include "backends/cuda/cuda_kernels.h"
#include "backends/cuda/cuda_launch.h"

/* ---- flat maps: out[i] = f(a[i], b[i]) ----
 * f is a functor of two floats; a unary one (F::binary false) ignores the
 * second, which is then not loaded. out may be a (every element is read
 * and written by one thread). When all three arrays are 16-byte aligned
 * the body goes through float4 accesses. Each thread loads MHUB_UNROLL
 * items before it stores any (see cuda_device.cuh). */

template <class F> static __device__ __forceinline__ float4 apply4(F f, float4 x, float4 y)
{
    float4 r;
    r.x = f(x.x, y.x);
    r.y = f(x.y, y.y);
    r.z = f(x.z, y.z);
    r.w = f(x.w, y.w);
    return r;
}

template <class F>
static __global__ void __launch_bounds__(MHUB_THREADS)
map_kernel(float *out, const float *a, const float *b, int64_t n, bool vec4, F f)
{
    int64_t start = grid_index(), stride = grid_stride();
    int64_t done = 0;
    if (vec4) {
        int64_t quads = n / 4;
        const float4 *a4 = (const float4 *)a, *b4 = (const float4 *)b;
        float4 *o4 = (float4 *)out;
        for (int64_t q0 = start; q0 < quads; q0 += MHUB_UNROLL * stride) {
            float4 x[MHUB_UNROLL], y[MHUB_UNROLL];
#pragma unroll
            for (int u = 0; u < MHUB_UNROLL; u++) {
                int64_t q = q0 + u * stride;
                if (q < quads) {
                    x[u] = a4[q];
                    y[u] = F::binary ? b4[q] : x[u];
                }
            }
#pragma unroll
            for (int u = 0; u < MHUB_UNROLL; u++) {
                int64_t q = q0 + u * stride;
                if (q < quads)
                    o4[q] = apply4(f, x[u], y[u]);
            }
        }
        done = quads * 4;
    }
    for (int64_t i0 = done + start; i0 < n; i0 += MHUB_UNROLL * stride) {
        float x[MHUB_UNROLL], y[MHUB_UNROLL];
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t i = i0 + u * stride;
            if (i < n) {
                x[u] = a[i];
                y[u] = F::binary ? b[i] : x[u];
            }
        }
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t i = i0 + u * stride;
            if (i < n)
                out[i] = f(x[u], y[u]);
        }
    }
}

template <class F>
static cudaError_t launch_map(cudaStream_t s, float *out, const float *a, const float *b, int64_t n,
                              F f)
{
    if (n == 0)
        return cudaSuccess;
    bool vec4 = aligned16(out) && aligned16(a) && aligned16(b);
    int64_t items = vec4 ? n / 4 + n % 4 : n;
    MHUB_LAUNCH(map_kernel<F>, blocks_for(items, MHUB_THREADS * MHUB_UNROLL), MHUB_THREADS, 0, s)(
        out, a, b, n, vec4, f);
    return cudaGetLastError();
}

/* ---- bias ---- */

/* Grid: x over column tiles of MHUB_THREADS, y strides over rows, each
 * thread MHUB_UNROLL rows at a time; it keeps its bias value. */
static __global__ void __launch_bounds__(MHUB_THREADS)
bias_add_kernel(float *out, const float *bias, int64_t rows, int64_t cols)
{
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols)
        return;
    float b = bias[c];
    for (int64_t r0 = blockIdx.y; r0 < rows; r0 += MHUB_UNROLL * gridDim.y) {
        float v[MHUB_UNROLL];
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            if (r < rows)
                v[u] = out[r * cols + c];
        }
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            if (r < rows)
                out[r * cols + c] = (sfloat(v[u]) + b).v;
        }
    }
}

/* A 2-D grid over [rows, cols]: column tiles by enough row strides to
 * fill the GPU (each stride step covering MHUB_UNROLL rows). */
static dim3 row_column_grid(int64_t rows, int64_t cols)
{
    unsigned tiles = blocks_for(cols, MHUB_THREADS, INT32_MAX);
    int64_t y = MHUB_MAX_BLOCKS / (int64_t)tiles;
    int64_t row_steps = (rows + MHUB_UNROLL - 1) / MHUB_UNROLL;
    if (y > row_steps)
        y = row_steps;
    if (y > MHUB_MAX_GRID_Y)
        y = MHUB_MAX_GRID_Y;
    if (y < 1)
        y = 1;
    return dim3(tiles, (unsigned)y);
}

extern "C" cudaError_t mhub_cuda_bias_add(cudaStream_t s, float *out, const float *bias,
                                          int64_t rows, int64_t cols)
{
    if (rows == 0 || cols == 0)
        return cudaSuccess;
    MHUB_LAUNCH(bias_add_kernel, row_column_grid(rows, cols), MHUB_THREADS, 0, s)(
        out, bias, rows, cols);
    return cudaGetLastError();
}

struct bias_term {
    const float *dout;
    int64_t cols;
    __device__ void operator()(int64_t r, int64_t c, float v[1]) const
    {
        v[0] = dout[r * cols + c];
    }
};

extern "C" cudaError_t mhub_cuda_bias_backward(cudaStream_t s, void *work, float *dbias,
                                               const float *dout, int64_t rows, int64_t cols)
{
    column_targets<1> dst = {{dbias}};
    return column_sums<1>(s, work, bias_term{dout, cols}, dst, rows, cols);
}

/* ---- GELU (tanh form as x * sigmoid(2u); see cpu_kernels.c) ---- */

#define GELU_SQRT_2_OVER_PI 0.7978845608028654f
#define GELU_CUBIC 0.044715f

static __device__ __forceinline__ sfloat gelu_sigmoid(sfloat x)
{
    sfloat u = sfloat(GELU_SQRT_2_OVER_PI) * (x + sfloat(GELU_CUBIC) * x * x * x);
    return sfloat(1.0f) / (sfloat(1.0f) + dev_expf((sfloat(-2.0f) * u).v));
}

/* s + 2 (x s) (1 - s) du, du = sqrt(2/pi) (1 + 3 c x^2) */
static __device__ __forceinline__ sfloat gelu_grad(sfloat x)
{
    sfloat s = gelu_sigmoid(x);
    sfloat du = sfloat(GELU_SQRT_2_OVER_PI) * (sfloat(1.0f) + sfloat(3.0f) * GELU_CUBIC * x * x);
    return s + sfloat(2.0f) * (x * s) * (sfloat(1.0f) - s) * du;
}

struct gelu_op {
    static constexpr bool binary = false;
    __device__ float operator()(float x, float) const { return (sfloat(x) * gelu_sigmoid(x)).v; }
};

struct gelu_grad_op {
    static constexpr bool binary = true;
    __device__ float operator()(float x, float d) const { return (sfloat(d) * gelu_grad(x)).v; }
};

extern "C" cudaError_t mhub_cuda_gelu_forward(cudaStream_t s, float *out, const float *in,
                                              int64_t n)
{
    return launch_map(s, out, in, in, n, gelu_op{});
}

extern "C" cudaError_t mhub_cuda_gelu_backward(cudaStream_t s, float *din, const float *in,
                                               const float *dout, int64_t n)
{
    return launch_map(s, din, in, dout, n, gelu_grad_op{});
}

/* ---- softmax + cross-entropy ----
 * One block per row (the grid strides over rows), in the CPU's float
 * arithmetic:
 *   1. m = the row's max;
 *   2. sum = sum of e^(x - m), each exp the CPU's float, added in double;
 *   3. p = e^(x - m) * (float)(1 / sum);
 *   loss = log(sum) - (x[t] - m), from the logits as on the CPU (not
 *   -log p[t], which is Inf once p[t] underflows).
 * The double sum runs as a fixed tree (deterministic), not in the CPU's
 * 16 serial lanes: that order would leave a 1024-thread block waiting on
 * 16 chains of ~3000 dependent adds per GPT-2 row. The two sums differ in
 * their last double bits only (~1e-14 relative for a GPT-2 row), so the
 * float results (inv, loss) are the CPU's unless the two doubles fall on
 * either side of a float rounding boundary: for a GPT-2 row, a chance
 * of the order of 1e-7.
 * When the row fits in shared memory (GPT-2's 50304 classes take 196 KiB
 * of an H100's 227), it is staged there by the first pass and the exps are
 * kept there by the second: the row is read from memory once and written
 * once. Otherwise the passes reread it and the third recomputes the exps
 * (the same bits). Probs may be logits: every logit is read in the first
 * pass (thread 0 reads the target's logit before it), and a barrier
 * separates the reads of the second pass from the writes of the third. */

/* A row's block grows to 1024 threads for GPT-sized vocabularies; the
 * kernels' __launch_bounds__ then hold them to 64 registers a thread, or
 * such a launch would ask for more registers than a multiprocessor has. */
#define XENT_MAX_THREADS 1024
/* Elements a thread loads before it uses them (cf. MHUB_UNROLL). */
#define XENT_UNROLL 8

static __device__ __forceinline__ float shifted_exp(float x, float m)
{
    return dev_expf((sfloat(x) - m).v);
}

template <bool staged>
static __global__ void __launch_bounds__(XENT_MAX_THREADS)
softmax_xent_forward_kernel(mhub_cuda_fault *fault, float *probs, float *losses,
                            const float *logits, const int32_t *targets, int64_t rows,
                            int64_t classes)
{
    /* the staged row (classes floats); every kernel calls its dynamic shared
     * memory smem, which is also the name the test emulator provides */
    extern __shared__ float smem[];
    __shared__ float max_scratch[32];
    __shared__ double sum_scratch[32];
    const int tid = threadIdx.x, nt = blockDim.x;
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const float *x = logits + row * classes;
        float *p = probs + row * classes;
        int32_t t = targets[row];
        bool bad = t < 0 || t >= classes;
        float x_t = tid == 0 && !bad ? x[t] : 0.0f;

        float m = -INFINITY;
        for (int64_t i0 = tid; i0 < classes; i0 += XENT_UNROLL * nt) {
            float v[XENT_UNROLL];
#pragma unroll
            for (int u = 0; u < XENT_UNROLL; u++)
                v[u] = i0 + u * nt < classes ? x[i0 + u * nt] : -INFINITY;
#pragma unroll
            for (int u = 0; u < XENT_UNROLL; u++) {
                if (staged && i0 + u * nt < classes)
                    smem[i0 + u * nt] = v[u];
                m = max_keep(m, v[u]);
            }
        }
        m = block_max(m, max_scratch); /* its barriers publish smem */

        /* each thread adds its elements in increasing order */
        sdouble acc = 0.0;
        for (int64_t i0 = tid; i0 < classes; i0 += XENT_UNROLL * nt) {
            float v[XENT_UNROLL];
#pragma unroll
            for (int u = 0; u < XENT_UNROLL; u++)
                if (i0 + u * nt < classes)
                    v[u] = staged ? smem[i0 + u * nt] : x[i0 + u * nt];
#pragma unroll
            for (int u = 0; u < XENT_UNROLL; u++) {
                if (i0 + u * nt >= classes)
                    break;
                float e = shifted_exp(v[u], m);
                if (staged)
                    smem[i0 + u * nt] = e;
                acc = acc + (double)e;
            }
        }
        double sum = block_sum(acc.v, sum_scratch); /* and these the exps */
        float inv = (float)(sdouble(1.0) / sum).v;
        if (tid == 0) {
            if (bad) {
                record_fault(fault, MHUB_CUDA_FAULT_TARGET, row, t, classes);
                losses[row] = NAN;
            } else {
                float d = (sfloat(x_t) - m).v;
                losses[row] = (float)(sdouble(log(sum)) - (double)d).v;
            }
        }
        for (int64_t i0 = tid; i0 < classes; i0 += XENT_UNROLL * nt) {
            float e[XENT_UNROLL];
#pragma unroll
            for (int u = 0; u < XENT_UNROLL; u++)
                if (i0 + u * nt < classes)
                    e[u] = staged ? smem[i0 + u * nt] : x[i0 + u * nt];
#pragma unroll
            for (int u = 0; u < XENT_UNROLL; u++)
                if (i0 + u * nt < classes)
                    p[i0 + u * nt] = (sfloat(staged ? e[u] : shifted_exp(e[u], m)) * inv).v;
        }
        __syncthreads(); /* the next row reuses smem */
    }
}

/* Threads for a row of `classes`: enough to cover it, at most
 * XENT_MAX_THREADS (a function of the size alone, so is the sum's order). */
static int xent_threads(int64_t classes)
{
    int threads = 128;
    while (threads < XENT_MAX_THREADS && threads * 8 < classes)
        threads *= 2;
    return threads;
}

/* Bytes of a staged row when it fits the device's shared memory per
 * block (less what the kernel declares itself), else 0. */
static size_t xent_staged_bytes(int64_t classes)
{
    int device = 0, optin = 0;
    if (cudaGetDevice(&device) != cudaSuccess ||
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
            cudaSuccess)
        return 0;
    size_t bytes = (size_t)classes * sizeof(float);
    size_t own = 32 * sizeof(float) + 32 * sizeof(double);
    return bytes + own <= (size_t)optin ? bytes : 0;
}

/* dlogits = probs * dloss, less dloss at the target; a bad target makes
 * the row NaN. dlogits may be probs. */
static __global__ void __launch_bounds__(XENT_MAX_THREADS)
softmax_xent_backward_kernel(mhub_cuda_fault *fault, float *dlogits, const float *probs,
                             const int32_t *targets, int64_t rows, int64_t classes, float dloss)
{
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const float *p = probs + row * classes;
        float *d = dlogits + row * classes;
        int32_t t = targets[row];
        bool bad = t < 0 || t >= classes;
        if (bad && threadIdx.x == 0)
            record_fault(fault, MHUB_CUDA_FAULT_TARGET, row, t, classes);
        for (int64_t i0 = threadIdx.x; i0 < classes; i0 += XENT_UNROLL * blockDim.x) {
            float v[XENT_UNROLL];
#pragma unroll
            for (int u = 0; u < XENT_UNROLL; u++)
                if (i0 + u * blockDim.x < classes)
                    v[u] = p[i0 + u * blockDim.x];
#pragma unroll
            for (int u = 0; u < XENT_UNROLL; u++) {
                int64_t i = i0 + u * blockDim.x;
                if (i < classes) {
                    sfloat pi = v[u];
                    d[i] = bad ? NAN : (i == t ? (pi - 1.0f) * dloss : pi * dloss).v;
                }
            }
        }
    }
}

/* Rows a row-per-block kernel's grid covers at once; it strides over the
 * rest. */
#define MHUB_MAX_ROW_BLOCKS 65536

extern "C" cudaError_t mhub_cuda_softmax_xent_forward(cudaStream_t s, mhub_cuda_fault *fault,
                                                      float *probs, float *losses,
                                                      const float *logits, const int32_t *targets,
                                                      int64_t rows, int64_t classes)
{
    if (rows == 0 || classes == 0)
        return cudaSuccess;
    int threads = xent_threads(classes);
    unsigned blocks = blocks_for(rows, 1, MHUB_MAX_ROW_BLOCKS);
    size_t bytes = xent_staged_bytes(classes);
    if (bytes == 0) {
        MHUB_LAUNCH(softmax_xent_forward_kernel<false>, blocks, threads, 0, s)(
            fault, probs, losses, logits, targets, rows, classes);
        return cudaGetLastError();
    }
    cudaError_t err = cudaFuncSetAttribute(softmax_xent_forward_kernel<true>,
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (err != cudaSuccess)
        return err;
    MHUB_LAUNCH(softmax_xent_forward_kernel<true>, blocks, threads, bytes, s)(
        fault, probs, losses, logits, targets, rows, classes);
    return cudaGetLastError();
}

extern "C" cudaError_t mhub_cuda_softmax_xent_backward(cudaStream_t s, mhub_cuda_fault *fault,
                                                       float *dlogits, const float *probs,
                                                       const int32_t *targets, int64_t rows,
                                                       int64_t classes, float dloss)
{
    if (rows == 0 || classes == 0)
        return cudaSuccess;
    int threads = xent_threads(classes);
    MHUB_LAUNCH(softmax_xent_backward_kernel, blocks_for(rows, 1, MHUB_MAX_ROW_BLOCKS), threads,
                0, s)(
        fault, dlogits, probs, targets, rows, classes, dloss);
    return cudaGetLastError();
}

/* ---- embedding ---- */

/* out[r] = table[ids[r]] (or +=), a 2-D grid as bias_add. A bad id
 * records a fault and makes its output row NaN. */
static __global__ void __launch_bounds__(MHUB_THREADS)
embedding_forward_kernel(mhub_cuda_fault *fault, float *out, const float *table, const int32_t *ids,
                         int64_t rows, int64_t vocab, int64_t dim, bool accumulate)
{
    int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= dim)
        return;
    for (int64_t r0 = blockIdx.y; r0 < rows; r0 += MHUB_UNROLL * gridDim.y) {
        int32_t id[MHUB_UNROLL];
        float v[MHUB_UNROLL], old[MHUB_UNROLL];
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            id[u] = r < rows ? ids[r] : 0;
        }
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            bool valid = r < rows && id[u] >= 0 && id[u] < vocab;
            v[u] = valid ? table[(int64_t)id[u] * dim + c] : NAN;
            old[u] = valid && accumulate ? out[r * dim + c] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            if (r >= rows)
                continue;
            if (id[u] < 0 || id[u] >= vocab) {
                if (c == 0)
                    record_fault(fault, MHUB_CUDA_FAULT_EMBED_ID, r, id[u], vocab);
                out[r * dim + c] = NAN;
            } else {
                out[r * dim + c] = accumulate ? (sfloat(old[u]) + v[u]).v : v[u];
            }
        }
    }
}

extern "C" cudaError_t mhub_cuda_embedding_forward(cudaStream_t s, mhub_cuda_fault *fault,
                                                   float *out, const float *table,
                                                   const int32_t *ids, int64_t rows, int64_t vocab,
                                                   int64_t dim, bool accumulate)
{
    if (rows == 0 || dim == 0)
        return cudaSuccess;
    MHUB_LAUNCH(embedding_forward_kernel, row_column_grid(rows, dim), MHUB_THREADS, 0, s)(
        fault, out, table, ids, rows, vocab, dim, accumulate);
    return cudaGetLastError();
}

/* The backward must add each table row's gradients in row order, as the
 * CPU does, without float atomics. Work is split two ways that keep that
 * order: by columns (a warp owns 32 adjacent columns: coalesced) and by
 * ids (the warp owns the ids with id % buckets == its bucket). Each warp
 * scans all the ids in row order, 32 at a time with a ballot, and adds the
 * rows it owns; since every (id, column) belongs to one thread, the adds
 * into it happen in row order, one thread, no atomics: the CPU's bits.
 * The ids are staged through shared memory a tile at a time for the
 * block's warps. A thread keeps its current table entry in a register
 * while consecutive owned rows share the id, and loads the gradients of
 * up to EMB_BATCH owned rows together so their latencies overlap.
 * Warp 0 reports the first bad id; bad rows are skipped. */
#define EMB_WARPS 8
#define EMB_TILE 2048
#define EMB_BATCH 8
/* Warps to aim for (column strips x id buckets). */
#define EMB_TARGET_WARPS 2048

static __global__ void __launch_bounds__(EMB_WARPS * 32)
    embedding_backward_kernel(mhub_cuda_fault *fault, float *dtable, const float *dout,
                              const int32_t *ids, int64_t rows, int64_t vocab, int64_t dim,
                              int64_t strips, int buckets)
{
    __shared__ int32_t tile[EMB_TILE];
    const int lane = threadIdx.x & 31;
    const int64_t warp = (int64_t)blockIdx.x * EMB_WARPS + (threadIdx.x >> 5);
    const bool has_work = warp < strips * buckets;
    const int64_t bucket = warp / strips;
    const int64_t c = (warp % strips) * 32 + lane;
    const bool active = has_work && c < dim;
    bool reported = warp != 0;
    int64_t cur = -1;
    float acc = 0.0f;
    for (int64_t t0 = 0; t0 < rows; t0 += EMB_TILE) {
        int len = (int)(rows - t0 < EMB_TILE ? rows - t0 : EMB_TILE);
        __syncthreads(); /* the previous tile is scanned */
        for (int k = threadIdx.x; k < len; k += blockDim.x)
            tile[k] = ids[t0 + k];
        __syncthreads();
        if (!has_work)
            continue;
        for (int k0 = 0; k0 < len; k0 += 32) {
            int k = k0 + lane;
            int32_t id = k < len ? tile[k] : 0;
            bool valid = id >= 0 && id < vocab;
            if (!reported) {
                unsigned bad = __ballot_sync(MHUB_FULL_MASK, k < len && !valid);
                if (bad) {
                    int first = __ffs(bad) - 1;
                    int32_t bad_id = __shfl_sync(MHUB_FULL_MASK, id, first);
                    if (lane == 0)
                        record_fault(fault, MHUB_CUDA_FAULT_EMBED_ID, t0 + k0 + first, bad_id,
                                     vocab);
                    reported = true;
                }
            }
            bool owned = valid && (unsigned)id % (unsigned)buckets == (unsigned)bucket;
            unsigned mine = __ballot_sync(MHUB_FULL_MASK, k < len && owned);
            while (mine) {
                int j[EMB_BATCH], got = 0;
#pragma unroll
                for (int q = 0; q < EMB_BATCH; q++) {
                    j[q] = 0;
                    if (mine) {
                        j[q] = __ffs(mine) - 1;
                        mine &= mine - 1;
                        got = q + 1;
                    }
                }
                float d[EMB_BATCH];
#pragma unroll
                for (int q = 0; q < EMB_BATCH; q++)
                    d[q] = q < got && active ? dout[(t0 + k0 + j[q]) * dim + c] : 0.0f;
#pragma unroll
                for (int q = 0; q < EMB_BATCH; q++) {
                    if (q >= got)
                        break;
                    int64_t row_id = __shfl_sync(MHUB_FULL_MASK, id, j[q]);
                    if (row_id != cur) {
                        if (cur >= 0 && active)
                            dtable[cur * dim + c] = acc;
                        cur = row_id;
                        if (active)
                            acc = dtable[cur * dim + c];
                    }
                    acc = (sfloat(acc) + d[q]).v;
                }
            }
        }
    }
    if (cur >= 0 && active)
        dtable[cur * dim + c] = acc;
}

extern "C" cudaError_t mhub_cuda_embedding_backward(cudaStream_t s, mhub_cuda_fault *fault,
                                                    void *work, float *dtable, const float *dout,
                                                    const int32_t *ids, int64_t rows, int64_t vocab,
                                                    int64_t dim)
{
    if (rows == 0 || dim == 0)
        return cudaSuccess;
    int64_t strips = (dim + 31) / 32;
    int64_t buckets = EMB_TARGET_WARPS / strips;
    if (buckets > vocab)
        buckets = vocab;
    if (buckets < 1)
        buckets = 1;
    unsigned blocks = blocks_for(strips * buckets, EMB_WARPS, INT32_MAX);
    MHUB_LAUNCH(embedding_backward_kernel, blocks, EMB_WARPS * 32, 0, s)(
        fault, dtable, dout, ids, rows, vocab, dim, strips, (int)buckets);
    return cudaGetLastError();
}

/* ---- SwiGLU: in[r] = [gate F | up F], out[r] = silu(gate) * up ---- */

/* 1 / (1 + e^-g): 0 (so silu -0) for g below about -88, as on the CPU. */
static __device__ __forceinline__ sfloat sigmoid(sfloat g)
{
    return sfloat(1.0f) / (sfloat(1.0f) + dev_expf(-g.v));
}

static __global__ void __launch_bounds__(MHUB_THREADS)
swiglu_forward_kernel(float *out, const float *in, int64_t rows, int64_t ffn)
{
    int64_t f = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= ffn)
        return;
    for (int64_t r0 = blockIdx.y; r0 < rows; r0 += MHUB_UNROLL * gridDim.y) {
        float g[MHUB_UNROLL], up[MHUB_UNROLL];
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            if (r < rows) {
                g[u] = in[r * 2 * ffn + f];
                up[u] = in[r * 2 * ffn + ffn + f];
            }
        }
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            if (r < rows)
                out[r * ffn + f] = (sfloat(g[u]) * sigmoid(g[u]) * up[u]).v;
        }
    }
}

/* d/dgate = dy up s (1 + g (1 - s)), d/dup = dy g s */
static __global__ void __launch_bounds__(MHUB_THREADS)
swiglu_backward_kernel(float *din, const float *dout, const float *in, int64_t rows, int64_t ffn)
{
    int64_t f = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (f >= ffn)
        return;
    for (int64_t r0 = blockIdx.y; r0 < rows; r0 += MHUB_UNROLL * gridDim.y) {
        float gv[MHUB_UNROLL], upv[MHUB_UNROLL], dyv[MHUB_UNROLL];
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            if (r < rows) {
                gv[u] = in[r * 2 * ffn + f];
                upv[u] = in[r * 2 * ffn + ffn + f];
                dyv[u] = dout[r * ffn + f];
            }
        }
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++) {
            int64_t r = r0 + u * (int64_t)gridDim.y;
            if (r >= rows)
                continue;
            sfloat g = gv[u], up = upv[u], dy = dyv[u];
            sfloat s = sigmoid(g);
            din[r * 2 * ffn + f] = (dy * up * s * (sfloat(1.0f) + g * (sfloat(1.0f) - s))).v;
            din[r * 2 * ffn + ffn + f] = (dy * g * s).v;
        }
    }
}

extern "C" cudaError_t mhub_cuda_swiglu_forward(cudaStream_t s, float *out, const float *in,
                                                int64_t rows, int64_t ffn)
{
    if (rows == 0 || ffn == 0)
        return cudaSuccess;
    MHUB_LAUNCH(swiglu_forward_kernel, row_column_grid(rows, ffn), MHUB_THREADS, 0, s)(
        out, in, rows, ffn);
    return cudaGetLastError();
}

extern "C" cudaError_t mhub_cuda_swiglu_backward(cudaStream_t s, float *din, const float *dout,
                                                 const float *in, int64_t rows, int64_t ffn)
{
    if (rows == 0 || ffn == 0)
        return cudaSuccess;
    MHUB_LAUNCH(swiglu_backward_kernel, row_column_grid(rows, ffn), MHUB_THREADS, 0, s)(
        din, dout, in, rows, ffn);
    return cudaGetLastError();
}

/* ---- cast and divide ---- */

/* Through f32 for every pair, as the CPU: widening is exact, so a 16-bit
 * to 16-bit cast rounds once. */
static __global__ void __launch_bounds__(MHUB_THREADS)
cast_kernel(void *dst, mhub_dtype dst_dtype, const void *src, mhub_dtype src_dtype, int64_t n)
{
    int64_t stride = grid_stride();
    for (int64_t i0 = grid_index(); i0 < n; i0 += MHUB_UNROLL * stride) {
        float v[MHUB_UNROLL];
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++)
            if (i0 + u * stride < n)
                v[u] = dev_load_as_f32(src, src_dtype, i0 + u * stride);
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++)
            if (i0 + u * stride < n)
                dev_store_from_f32(dst, dst_dtype, i0 + u * stride, v[u]);
    }
}

extern "C" cudaError_t mhub_cuda_cast(cudaStream_t s, void *dst, mhub_dtype dst_dtype,
                                      const void *src, mhub_dtype src_dtype, int64_t n)
{
    if (n == 0 || (dst == src && dst_dtype == src_dtype))
        return cudaSuccess;
    if (dst_dtype == src_dtype)
        return cudaMemcpyAsync(dst, src, (size_t)n * mhub_dtype_size(dst_dtype),
                               cudaMemcpyDeviceToDevice, s);
    MHUB_LAUNCH(cast_kernel, blocks_for(n, MHUB_THREADS * MHUB_UNROLL), MHUB_THREADS, 0, s)(
        dst, dst_dtype, src, src_dtype, n);
    return cudaGetLastError();
}

static __global__ void __launch_bounds__(MHUB_THREADS)
divide_16bit_kernel(uint16_t *x, mhub_dtype dt, int64_t n, float divisor)
{
    int64_t stride = grid_stride();
    for (int64_t i0 = grid_index(); i0 < n; i0 += MHUB_UNROLL * stride) {
        float v[MHUB_UNROLL];
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++)
            if (i0 + u * stride < n)
                v[u] = dev_load_as_f32(x, dt, i0 + u * stride);
#pragma unroll
        for (int u = 0; u < MHUB_UNROLL; u++)
            if (i0 + u * stride < n)
                dev_store_from_f32(x, dt, i0 + u * stride, (sfloat(v[u]) / divisor).v);
    }
}

struct divide_op {
    static constexpr bool binary = false;
    float divisor;
    __device__ float operator()(float x, float) const { return (sfloat(x) / divisor).v; }
};

extern "C" cudaError_t mhub_cuda_divide(cudaStream_t s, void *x, mhub_dtype dt, int64_t n,
                                        float divisor)
{
    if (n == 0)
        return cudaSuccess;
    if (dt == MHUB_F32)
        return launch_map(s, (float *)x, (const float *)x, (const float *)x, n, divide_op{divisor});
    MHUB_LAUNCH(divide_16bit_kernel, blocks_for(n, MHUB_THREADS * MHUB_UNROLL), MHUB_THREADS, 0, s)(
        (uint16_t *)x, dt, n, divisor);
    return cudaGetLastError();
}

/* ---- scale, axpy, sum of squares ---- */

struct scale_op {
    static constexpr bool binary = false;
    float alpha;
    __device__ float operator()(float x, float) const { return (sfloat(x) * alpha).v; }
};

/* y + alpha * x, with a = y and b = x */
struct axpy_op {
    static constexpr bool binary = true;
    float alpha;
    __device__ float operator()(float y, float x) const
    {
        return (sfloat(y) + sfloat(alpha) * x).v;
    }
};

extern "C" cudaError_t mhub_cuda_scale(cudaStream_t s, float *x, int64_t n, float alpha)
{
    return launch_map(s, x, x, x, n, scale_op{alpha});
}

extern "C" cudaError_t mhub_cuda_axpy(cudaStream_t s, float *y, const float *x, int64_t n,
                                      float alpha)
{
    return launch_map(s, y, y, x, n, axpy_op{alpha});
}

/* Two passes with a fixed shape, so a fixed order: SUMSQ_BLOCKS (or fewer
 * for small n, a function of n alone) blocks each reduce their grid-stride
 * share into a double in `work`, then one block adds those. x^2 of a
 * float is exact in double, so only the order of the adds matters. */
#define SUMSQ_BLOCKS 1024

static __global__ void __launch_bounds__(MHUB_THREADS)
sum_squares_partial_kernel(const float *x, int64_t n, double *partials)
{
    __shared__ double scratch[32];
    sdouble acc = 0.0;
    for (int64_t i = grid_index(); i < n; i += grid_stride()) {
        double v = x[i];
        acc = acc + sdouble(v) * v;
    }
    double total = block_sum(acc.v, scratch);
    if (threadIdx.x == 0)
        partials[blockIdx.x] = total;
}

static __global__ void __launch_bounds__(SUMSQ_BLOCKS)
sum_squares_final_kernel(const double *partials, int count, double *out)
{
    __shared__ double scratch[32];
    double v = (int)threadIdx.x < count ? partials[threadIdx.x] : 0.0;
    double total = block_sum(v, scratch);
    if (threadIdx.x == 0)
        *out = total;
}

extern "C" cudaError_t mhub_cuda_sum_squares(cudaStream_t s, void *work, const float *x, int64_t n,
                                             double *dev_out)
{
    if (n == 0)
        return cudaMemsetAsync(dev_out, 0, sizeof(double), s); /* the empty sum */
    unsigned blocks = blocks_for(n, MHUB_THREADS, SUMSQ_BLOCKS);
    double *partials = (double *)work;
    MHUB_LAUNCH(sum_squares_partial_kernel, blocks, MHUB_THREADS, 0, s)(x, n, partials);
    MHUB_LAUNCH(sum_squares_final_kernel, 1, SUMSQ_BLOCKS, 0, s)(partials, (int)blocks, dev_out);
    return cudaGetLastError();
}

/* ---- random fills: element i is the RNG's value at offset + i ---- */

static __global__ void __launch_bounds__(MHUB_THREADS)
fill_normal_kernel(float *dst, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                   float mean, float std)
{
    for (int64_t i = grid_index(); i < n; i += grid_stride())
        dst[i] =
            (sfloat(mean) + sfloat(std) * dev_rng_normal(seed, stream, offset + (uint64_t)i)).v;
}

static __global__ void __launch_bounds__(MHUB_THREADS)
fill_uniform_kernel(float *dst, int64_t n, uint64_t seed, uint64_t stream, uint64_t offset,
                    float lo, float hi)
{
    for (int64_t i = grid_index(); i < n; i += grid_stride())
        dst[i] =
            (sfloat(lo) + (sfloat(hi) - lo) * dev_rng_uniform(seed, stream, offset + (uint64_t)i))
                .v;
}

extern "C" cudaError_t mhub_cuda_fill_normal(cudaStream_t s, float *dst, int64_t n, uint64_t seed,
                                             uint64_t stream, uint64_t offset, float mean,
                                             float std)
{
    if (n == 0)
        return cudaSuccess;
    MHUB_LAUNCH(fill_normal_kernel, blocks_for(n, MHUB_THREADS), MHUB_THREADS, 0, s)(
        dst, n, seed, stream, offset, mean, std);
    return cudaGetLastError();
}

extern "C" cudaError_t mhub_cuda_fill_uniform(cudaStream_t s, float *dst, int64_t n, uint64_t seed,
                                              uint64_t stream, uint64_t offset, float lo, float hi)
{
    if (n == 0)
        return cudaSuccess;
    MHUB_LAUNCH(fill_uniform_kernel, blocks_for(n, MHUB_THREADS), MHUB_THREADS, 0, s)(
        dst, n, seed, stream, offset, lo, hi);
    return cudaGetLastError();
}

/* ---- optimizers ---- */

/* param - lr (grad + wd param), with a = param and b = grad */
struct sgd_op {
    static constexpr bool binary = true;
    float lr, weight_decay;
    __device__ float operator()(float param, float grad) const
    {
        sfloat p = param;
        return (p - sfloat(lr) * (sfloat(grad) + sfloat(weight_decay) * p)).v;
    }
};

/* With a momentum buffer (used whenever one is given, as on the CPU):
 * g = grad + wd param, buf = momentum buf + g, param -= lr buf. */
static __global__ void __launch_bounds__(MHUB_THREADS)
sgd_momentum_kernel(float *param, const float *grad, float *buf, int64_t n, float lr,
                    float momentum, float weight_decay)
{
    for (int64_t i = grid_index(); i < n; i += grid_stride()) {
        sfloat p = param[i];
        sfloat g = sfloat(grad[i]) + sfloat(weight_decay) * p;
        sfloat b = sfloat(momentum) * buf[i] + g;
        buf[i] = b.v;
        param[i] = (p - sfloat(lr) * b).v;
    }
}

extern "C" cudaError_t mhub_cuda_sgd_step(cudaStream_t s, float *param, const float *grad,
                                          float *momentum_buf, int64_t n, float lr, float momentum,
                                          float weight_decay)
{
    if (n == 0)
        return cudaSuccess;
    if (!momentum_buf)
        return launch_map(s, param, param, grad, n, sgd_op{lr, weight_decay});
    MHUB_LAUNCH(sgd_momentum_kernel, blocks_for(n, MHUB_THREADS), MHUB_THREADS, 0, s)(
        param, grad, momentum_buf, n, lr, momentum, weight_decay);
    return cudaGetLastError();
}

/* AdamW's per-step scalars, computed on the host exactly as the CPU
 * backend does (adamw_coef in cpu_kernels.c). */
struct adamw_coef {
    float decay; /* 1 - lr * weight_decay */
    float beta1, beta2;
    float one_minus_beta1, one_minus_beta2;
    float step_size;    /* lr / (1 - beta1^t) */
    float inv_sqrt_bc2; /* 1 / sqrt(1 - beta2^t) */
    float eps;
};

static __device__ __forceinline__ float adamw_element(float &param, float grad, float &m, float &v,
                                                      const adamw_coef &k)
{
    sfloat g = grad;
    sfloat mi = sfloat(k.beta1) * m + sfloat(k.one_minus_beta1) * g;
    sfloat vi = sfloat(k.beta2) * v + sfloat(k.one_minus_beta2) * g * g;
    m = mi.v;
    v = vi.v;
    sfloat denom = strict_sqrtf(vi) * k.inv_sqrt_bc2 + k.eps;
    param = (sfloat(param) * k.decay - sfloat(k.step_size) * mi / denom).v;
    return param;
}

static __global__ void __launch_bounds__(MHUB_THREADS)
adamw_kernel(float *param, const float *grad, float *m, float *v, int64_t n, bool vec4,
             adamw_coef k)
{
    int64_t start = grid_index(), stride = grid_stride(), done = 0;
    if (vec4) {
        int64_t quads = n / 4;
        for (int64_t q = start; q < quads; q += stride) {
            float4 p4 = ((float4 *)param)[q], g4 = ((const float4 *)grad)[q];
            float4 m4 = ((float4 *)m)[q], v4 = ((float4 *)v)[q];
            adamw_element(p4.x, g4.x, m4.x, v4.x, k);
            adamw_element(p4.y, g4.y, m4.y, v4.y, k);
            adamw_element(p4.z, g4.z, m4.z, v4.z, k);
            adamw_element(p4.w, g4.w, m4.w, v4.w, k);
            ((float4 *)param)[q] = p4;
            ((float4 *)m)[q] = m4;
            ((float4 *)v)[q] = v4;
        }
        done = quads * 4;
    }
    for (int64_t i = done + start; i < n; i += stride)
        adamw_element(param[i], grad[i], m[i], v[i], k);
}

extern "C" cudaError_t mhub_cuda_adamw_step(cudaStream_t s, float *param, const float *grad,
                                            float *m, float *v, int64_t n, float lr, float beta1,
                                            float beta2, float eps, float weight_decay, int64_t t)
{
    if (n == 0)
        return cudaSuccess;
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    adamw_coef k;
    k.decay = (float)(1.0 - (double)lr * (double)weight_decay);
    k.beta1 = beta1;
    k.beta2 = beta2;
    k.one_minus_beta1 = (float)(1.0 - (double)beta1);
    k.one_minus_beta2 = (float)(1.0 - (double)beta2);
    k.step_size = (float)((double)lr / bc1);
    k.inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    k.eps = eps;
    bool vec4 = aligned16(param) && aligned16(grad) && aligned16(m) && aligned16(v);
    int64_t items = vec4 ? n / 4 + n % 4 : n;
    MHUB_LAUNCH(adamw_kernel, blocks_for(items, MHUB_THREADS), MHUB_THREADS, 0, s)(
        param, grad, m, v, n, vec4, k);
    return cudaGetLastError();
}
