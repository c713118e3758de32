/* cuda_norm.cu - the CUDA backend's LayerNorm, RMSNorm and rotary
 * position embedding (contracts in include/mhub/backend.h, launchers in
 * cuda_kernels.h).
 *
 * Row statistics follow backends/cpu/cpu_transformer.c exactly: 16
 * threads (a half warp) take one row and play the CPU's 16 double lanes
 * (lanes16_total in cuda_device.cuh), then the remainder is added in
 * order; the elementwise maps use the same float operations on the saved
 * float mean and rstd. So the forward outputs, the statistics and din are
 * the CPU's bits. Parameter gradients (dweight, dbias) are column sums
 * over rows, done by cuda_device.cuh's chunked fixed-order column_sums:
 * deterministic, and the CPU's bits only when the rows fit one chunk. */
#include "backends/cuda/cuda_device.cuh"
#include "backends/cuda/cuda_kernels.h"
#include "backends/cuda/cuda_launch.h"

/* Rows per block of the half-warp-per-row kernels. */
#define NORM_ROWS_PER_BLOCK (MHUB_THREADS / MHUB_LANES)

/* This thread's row and lane. Threads past the last row read the last
 * row (their whole warp must take part in the lane shuffles) and write
 * nothing. */
struct row_lane {
    int64_t row; /* the row read */
    int lane;
    bool writes;
};

static __device__ __forceinline__ row_lane this_row_lane(int64_t rows)
{
    row_lane rl;
    int64_t r = (int64_t)blockIdx.x * NORM_ROWS_PER_BLOCK + threadIdx.x / MHUB_LANES;
    rl.writes = r < rows;
    rl.row = rl.writes ? r : rows - 1;
    rl.lane = threadIdx.x % MHUB_LANES;
    return rl;
}

/* sum of x (row_sum), in the CPU's lane order; every lane of the row
 * gets it. */
static __device__ double row_sum(const float *x, int64_t n, int lane)
{
    sdouble acc = 0.0;
    int64_t body = lanes_body(n);
    for (int64_t i = lane; i < body; i += MHUB_LANES)
        acc = acc + (double)x[i];
    sdouble s = lanes16_total(acc.v);
    for (int64_t i = body; i < n; i++)
        s = s + (double)x[i];
    return s.v;
}

/* sum of ((double)x - c)^2 (row_sqdev) */
static __device__ double row_sqdev(const float *x, int64_t n, double c, int lane)
{
    sdouble acc = 0.0;
    int64_t body = lanes_body(n);
    for (int64_t i = lane; i < body; i += MHUB_LANES) {
        sdouble d = sdouble((double)x[i]) - c;
        acc = acc + d * d;
    }
    sdouble s = lanes16_total(acc.v);
    for (int64_t i = body; i < n; i++) {
        sdouble d = sdouble((double)x[i]) - c;
        s = s + d * d;
    }
    return s.v;
}

/* sum of (double)x * (double)y (row_dot) */
static __device__ double row_dot(const float *x, const float *y, int64_t n, int lane)
{
    sdouble acc = 0.0;
    int64_t body = lanes_body(n);
    for (int64_t i = lane; i < body; i += MHUB_LANES)
        acc = acc + sdouble((double)x[i]) * (double)y[i];
    sdouble s = lanes16_total(acc.v);
    for (int64_t i = body; i < n; i++)
        s = s + sdouble((double)x[i]) * (double)y[i];
    return s.v;
}

static unsigned norm_blocks(int64_t rows)
{
    return blocks_for(rows, NORM_ROWS_PER_BLOCK, INT32_MAX);
}

/* ---- LayerNorm ---- */

/* mean and variance in double by two passes, rstd = 1/sqrt(var + eps),
 * both saved as floats; out = (x - mean) * rstd * w (+ b) on the floats. */
static __global__ void __launch_bounds__(MHUB_THREADS)
layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *in, const float *weight,
                         const float *bias, int64_t rows, int64_t dim, float eps)
{
    row_lane rl = this_row_lane(rows);
    const float *x = in + rl.row * dim;
    double mu = (sdouble(row_sum(x, dim, rl.lane)) / (double)dim).v;
    double var = (sdouble(row_sqdev(x, dim, mu, rl.lane)) / (double)dim).v;
    float m = (float)mu;
    float rs = (float)(sdouble(1.0) / strict_sqrt(sdouble(var) + (double)eps)).v;
    if (!rl.writes)
        return;
    if (rl.lane == 0) {
        mean[rl.row] = m;
        rstd[rl.row] = rs;
    }
    float *o = out + rl.row * dim;
    for (int64_t i = rl.lane; i < dim; i += MHUB_LANES) {
        sfloat y = (sfloat(x[i]) - m) * rs * weight[i];
        o[i] = (bias ? y + bias[i] : y).v;
    }
}

extern "C" cudaError_t mhub_cuda_layernorm_forward(cudaStream_t s, float *out, float *mean,
                                                   float *rstd, const float *in,
                                                   const float *weight, const float *bias,
                                                   int64_t rows, int64_t dim, float eps)
{
    if (rows == 0 || dim == 0)
        return cudaSuccess;
    MHUB_LAUNCH(layernorm_forward_kernel, norm_blocks(rows), MHUB_THREADS, 0, s)(
        out, mean, rstd, in, weight, bias, rows, dim, eps);
    return cudaGetLastError();
}

/* din = rstd * (g - c1 - xhat * c2), g = dy * w, xhat = (x - mean) * rstd,
 * c1 = mean(g), c2 = mean(g * xhat) (the sums in double lanes). */
static __global__ void __launch_bounds__(MHUB_THREADS)
layernorm_din_kernel(float *din, const float *dout, const float *in, const float *weight,
                     const float *mean, const float *rstd, int64_t rows, int64_t dim)
{
    row_lane rl = this_row_lane(rows);
    const float *x = in + rl.row * dim, *dy = dout + rl.row * dim;
    float m = mean[rl.row], rs = rstd[rl.row];
    sdouble sg_acc = 0.0, sgx_acc = 0.0;
    int64_t body = lanes_body(dim);
    for (int64_t i = rl.lane; i < body; i += MHUB_LANES) {
        sfloat g = sfloat(dy[i]) * weight[i];
        sfloat xh = (sfloat(x[i]) - m) * rs;
        sg_acc = sg_acc + (double)g.v;
        sgx_acc = sgx_acc + (double)(g * xh).v;
    }
    sdouble sg = lanes16_total(sg_acc.v), sgx = lanes16_total(sgx_acc.v);
    for (int64_t i = body; i < dim; i++) {
        sfloat g = sfloat(dy[i]) * weight[i];
        sg = sg + (double)g.v;
        sgx = sgx + (double)(g * ((sfloat(x[i]) - m) * rs)).v;
    }
    float c1 = (float)(sg / (double)dim).v, c2 = (float)(sgx / (double)dim).v;
    if (!rl.writes)
        return;
    float *dx = din + rl.row * dim;
    for (int64_t i = rl.lane; i < dim; i += MHUB_LANES) {
        sfloat xh = (sfloat(x[i]) - m) * rs;
        dx[i] = (sfloat(rs) * (sfloat(dy[i]) * weight[i] - c1 - xh * c2)).v;
    }
}

/* The parameter gradients' terms: dweight += dy * xhat, dbias += dy. */
template <int K> struct layernorm_param_term {
    const float *dout, *in, *mean, *rstd;
    int64_t dim;
    __device__ void operator()(int64_t r, int64_t c, float v[K]) const
    {
        sfloat dy = dout[r * dim + c];
        sfloat xh = (sfloat(in[r * dim + c]) - mean[r]) * rstd[r];
        v[0] = (dy * xh).v;
        if (K > 1)
            v[K - 1] = dy.v;
    }
};

extern "C" cudaError_t mhub_cuda_layernorm_backward(cudaStream_t s, void *work, float *din,
                                                    float *dweight, float *dbias, const float *dout,
                                                    const float *in, const float *weight,
                                                    const float *mean, const float *rstd,
                                                    int64_t rows, int64_t dim)
{
    if (rows == 0 || dim == 0)
        return cudaSuccess;
    MHUB_LAUNCH(layernorm_din_kernel, norm_blocks(rows), MHUB_THREADS, 0, s)(
        din, dout, in, weight, mean, rstd, rows, dim);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return err;
    if (dbias) {
        column_targets<2> dst = {{dweight, dbias}};
        return column_sums<2>(s, work, layernorm_param_term<2>{dout, in, mean, rstd, dim}, dst,
                              rows, dim);
    }
    column_targets<1> dst = {{dweight}};
    return column_sums<1>(s, work, layernorm_param_term<1>{dout, in, mean, rstd, dim}, dst, rows,
                          dim);
}

/* ---- RMSNorm ---- */

/* rstd = 1/sqrt(mean(x^2) + eps), mean(x^2) in double lanes; out = x *
 * rstd * w. */
static __global__ void __launch_bounds__(MHUB_THREADS)
rmsnorm_forward_kernel(float *out, float *rstd, const float *in, const float *weight, int64_t rows,
                       int64_t dim, float eps)
{
    row_lane rl = this_row_lane(rows);
    const float *x = in + rl.row * dim;
    sdouble ms = sdouble(row_dot(x, x, dim, rl.lane)) / (double)dim;
    float rs = (float)(sdouble(1.0) / strict_sqrt(ms + (double)eps)).v;
    if (!rl.writes)
        return;
    if (rl.lane == 0)
        rstd[rl.row] = rs;
    float *o = out + rl.row * dim;
    for (int64_t i = rl.lane; i < dim; i += MHUB_LANES)
        o[i] = (sfloat(x[i]) * rs * weight[i]).v;
}

extern "C" cudaError_t mhub_cuda_rmsnorm_forward(cudaStream_t s, float *out, float *rstd,
                                                 const float *in, const float *weight, int64_t rows,
                                                 int64_t dim, float eps)
{
    if (rows == 0 || dim == 0)
        return cudaSuccess;
    MHUB_LAUNCH(rmsnorm_forward_kernel, norm_blocks(rows), MHUB_THREADS, 0, s)(
        out, rstd, in, weight, rows, dim, eps);
    return cudaGetLastError();
}

/* din = rstd * (g - xhat * c), g = dy * w, xhat = x * rstd,
 * c = mean(g * xhat), the sum's terms rounded to float as on the CPU. */
static __global__ void __launch_bounds__(MHUB_THREADS)
rmsnorm_din_kernel(float *din, const float *dout, const float *in, const float *weight,
                   const float *rstd, int64_t rows, int64_t dim)
{
    row_lane rl = this_row_lane(rows);
    const float *x = in + rl.row * dim, *dy = dout + rl.row * dim;
    float rs = rstd[rl.row];
    sdouble acc = 0.0;
    int64_t body = lanes_body(dim);
    for (int64_t i = rl.lane; i < body; i += MHUB_LANES)
        acc = acc + (double)(sfloat(dy[i]) * weight[i] * (sfloat(x[i]) * rs)).v;
    sdouble sum = lanes16_total(acc.v);
    for (int64_t i = body; i < dim; i++)
        sum = sum + (double)(sfloat(dy[i]) * weight[i] * (sfloat(x[i]) * rs)).v;
    float c = (float)(sum / (double)dim).v;
    if (!rl.writes)
        return;
    float *dx = din + rl.row * dim;
    for (int64_t i = rl.lane; i < dim; i += MHUB_LANES) {
        sfloat xh = sfloat(x[i]) * rs;
        dx[i] = (sfloat(rs) * (sfloat(dy[i]) * weight[i] - xh * c)).v;
    }
}

/* dweight += dy * (x * rstd) */
struct rmsnorm_param_term {
    const float *dout, *in, *rstd;
    int64_t dim;
    __device__ void operator()(int64_t r, int64_t c, float v[1]) const
    {
        v[0] = (sfloat(dout[r * dim + c]) * (sfloat(in[r * dim + c]) * rstd[r])).v;
    }
};

extern "C" cudaError_t mhub_cuda_rmsnorm_backward(cudaStream_t s, void *work, float *din,
                                                  float *dweight, const float *dout,
                                                  const float *in, const float *weight,
                                                  const float *rstd, int64_t rows, int64_t dim)
{
    if (rows == 0 || dim == 0)
        return cudaSuccess;
    MHUB_LAUNCH(rmsnorm_din_kernel, norm_blocks(rows), MHUB_THREADS, 0, s)(
        din, dout, in, weight, rstd, rows, dim);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess)
        return err;
    column_targets<1> dst = {{dweight}};
    return column_sums<1>(s, work, rmsnorm_param_term{dout, in, rstd, dim}, dst, rows, dim);
}

/* ---- rotary position embedding ----
 * One thread per (row, frequency i): it computes the angle pos *
 * base^(-2i/d) and its cos and sin in double, rounded once to float, as
 * the CPU's rope_apply (CUDA's double pow, cos and sin are within 2 ulps
 * of glibc's, which changes the float only for a value within a few
 * double ulps of a float rounding boundary), and rotates the pair
 * (x[i], x[i + d/2]) of every query and key head of its row. Threads of
 * a warp take consecutive i: coalesced within each head. */
static __global__ void __launch_bounds__(MHUB_THREADS)
rope_kernel(float *qkv, int64_t rows, int64_t seq, int64_t groups, int64_t per_group,
            int64_t head_dim, float base, float sign)
{
    int64_t half = head_dim / 2, width = (groups * (per_group + 2)) * head_dim;
    for (int64_t t = grid_index(); t < rows * half; t += grid_stride()) {
        int64_t row = t / half, i = t % half, pos = row % seq;
        double freq = pow((double)base, -2.0 * (double)i / (double)head_dim);
        double angle = (sdouble((double)pos) * freq).v;
        float c = (float)cos(angle);
        float sn = (sfloat(sign) * (float)sin(angle)).v;
        float *r = qkv + row * width + i;
        for (int64_t g = 0; g < groups; g++)
            for (int64_t k = 0; k <= per_group; k++) {
                float *x = r + (g * (per_group + 2) + k) * head_dim;
                sfloat a = x[0], b = x[half];
                x[0] = (a * c - b * sn).v;
                x[half] = (b * c + a * sn).v;
            }
    }
}

extern "C" cudaError_t mhub_cuda_rope(cudaStream_t s, float *qkv, int64_t batch, int64_t seq,
                                      int64_t heads, int64_t groups, int64_t head_dim, float base,
                                      bool inverse)
{
    int64_t rows = batch * seq, half = head_dim / 2;
    if (rows == 0 || heads == 0 || half == 0)
        return cudaSuccess;
    MHUB_LAUNCH(rope_kernel, blocks_for(rows * half, MHUB_THREADS), MHUB_THREADS, 0, s)(
        qkv, rows, seq, groups, heads / groups, head_dim, base, inverse ? -1.0f : 1.0f);
    return cudaGetLastError();
}
