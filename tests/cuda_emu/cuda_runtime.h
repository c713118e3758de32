/* tests/cuda_emu/cuda_runtime.h - the CUDA runtime of the CPU emulator.
 *
 * A test harness, not a GPU. The test build compiles the CUDA backend's
 * real source against this header instead of the toolkit's: cuda_backend.c
 * as C, the .cu files as C++ (g++), with MHUB_CUDA_EMU defined. Kernels
 * then run on the CPU, so `make check` compares every kernel and the
 * backend's own logic against the CPU backend on machines without a GPU.
 *
 * How a launch runs (cuda_emu.cpp): blocks one after another; the threads
 * of a block as fibers (ucontext) on the calling thread, switched only at
 * __syncthreads and the warp intrinsics, which are real barriers. So a
 * block's `__shared__` variables are plain thread_local statics, shared by
 * its fibers. A barrier that not every thread reaches, a bad launch shape,
 * too much shared memory and copies outside device memory are reported;
 * a missing barrier usually shows as wrong results: a block runs a warp
 * at a time between two __syncthreads, so a warp reads shared values a
 * later warp has not written yet, and with MHUB_EMU_THREAD_ORDER=reverse
 * (tests/test_conformance_emu_reverse.sh) the other way round; a wmma
 * store writes only the lane's share, so a lane that reads the tile
 * without a __syncwarp after the store reads stale values.
 * Device memory is host memory.
 *
 * Devices: cudaGetDeviceCount reports 8 (MHUB_EMU_DEVICES sets another
 * count), so that several ranks on one machine each take the device of
 * their local rank; the ordinals are names only, each process emulating
 * one memory and one set of streams, and seeing only its own.
 *
 * When work runs: as late as CUDA allows. Every stream, the legacy
 * default (NULL) stream too, is a queue. A launch, an asynchronous copy
 * or memset, a cuBLAS call or an NCCL operation checks its arguments at
 * the call (errors there, as CUDA's) and is queued with them captured by
 * value; it runs only when something makes the host wait for it:
 * cudaStreamSynchronize, cudaEventSynchronize, cudaEventQuery (which says
 * cudaErrorNotReady first, then runs up to the event), a device-to-host
 * copy (which returns once it has run), cudaDeviceSynchronize, cudaFree or
 * cudaStreamDestroy. A stream that reaches a cudaStreamWaitEvent first
 * runs the event's stream up to the event's record. The NULL stream waits
 * for the blocking streams (created without cudaStreamNonBlocking) and
 * they for it; non-blocking streams have no order with it. A device fault
 * (a stuck block) happens when its work runs and is reported by the next
 * call that waits, and by cudaGetLastError after it.
 *
 * So ordering mistakes show as wrong results here, as they would on a
 * GPU: a host read without a wait, a stream that uses another's output
 * without cudaStreamWaitEvent, work on the NULL stream meant to follow a
 * non-blocking stream, a cudaErrorNotReady taken for a failure. What runs
 * is still deterministic: one queue at a time, each in its order.
 *
 * What it cannot check: data races that need threads to interleave
 * (fibers switch only at barriers, streams never overlap), a missing
 * __syncwarp between lanes whose only other meeting is a shuffle (a real
 * barrier here, not a memory fence on a GPU), timing and occupancy,
 * out-of-bounds accesses inside kernels (plain host memory; .ci/run's
 * AddressSanitizer with alloc_each finds those past a device tensor),
 * static shared memory read before it is written (only the dynamic part
 * is poisoned), and the GPU's own rounding: device math is glibc's (the
 * __CUDA_ARCH__ paths are not compiled), and cuBLAS is OpenBLAS in f32
 * whatever the compute type (see cublas_v2.h). Only what the kernels use
 * is here. */
#ifndef MHUB_CUDA_EMU_RUNTIME_H
#define MHUB_CUDA_EMU_RUNTIME_H

#ifndef MHUB_CUDA_EMU
#error "tests/cuda_emu/ stands in for the CUDA toolkit only in the emulator build (-DMHUB_CUDA_EMU)"
#endif

/* The emulator's functions answer to names of their own, so a program can
 * link the emulator next to the real library (a static libmhub built
 * --with-cuda) without one taking the other's calls. */
#define cudaDeviceGetAttribute mhub_emu_cudaDeviceGetAttribute
#define cudaDeviceGetStreamPriorityRange mhub_emu_cudaDeviceGetStreamPriorityRange
#define cudaDeviceSynchronize mhub_emu_cudaDeviceSynchronize
#define cudaEventCreateWithFlags mhub_emu_cudaEventCreateWithFlags
#define cudaEventDestroy mhub_emu_cudaEventDestroy
#define cudaEventQuery mhub_emu_cudaEventQuery
#define cudaEventRecord mhub_emu_cudaEventRecord
#define cudaEventSynchronize mhub_emu_cudaEventSynchronize
#define cudaFree mhub_emu_cudaFree
#define cudaFuncSetAttribute mhub_emu_cudaFuncSetAttribute
#define cudaGetDevice mhub_emu_cudaGetDevice
#define cudaGetDeviceCount mhub_emu_cudaGetDeviceCount
#define cudaGetErrorName mhub_emu_cudaGetErrorName
#define cudaGetErrorString mhub_emu_cudaGetErrorString
#define cudaGetLastError mhub_emu_cudaGetLastError
#define cudaMalloc mhub_emu_cudaMalloc
#define cudaMemGetInfo mhub_emu_cudaMemGetInfo
#define cudaMemcpy mhub_emu_cudaMemcpy
#define cudaMemcpyAsync mhub_emu_cudaMemcpyAsync
#define cudaMemset mhub_emu_cudaMemset
#define cudaMemsetAsync mhub_emu_cudaMemsetAsync
#define cudaPointerGetAttributes mhub_emu_cudaPointerGetAttributes
#define cudaSetDevice mhub_emu_cudaSetDevice
#define cudaStreamCreateWithFlags mhub_emu_cudaStreamCreateWithFlags
#define cudaStreamCreateWithPriority mhub_emu_cudaStreamCreateWithPriority
#define cudaStreamDestroy mhub_emu_cudaStreamDestroy
#define cudaStreamSynchronize mhub_emu_cudaStreamSynchronize
#define cudaStreamWaitEvent mhub_emu_cudaStreamWaitEvent

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ---- the runtime API (C and C++) ---- */

/* The values are CUDA's own, so messages read the same. */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719
} cudaError_t;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4
};

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
/* the one device attribute the kernels ask about */
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 };

typedef struct mhub_emu_stream *cudaStream_t;
#define cudaStreamNonBlocking 0x01u

/* An event marks a place in its stream's queue (the latest
 * cudaEventRecord); it is complete once the stream has run past it, or
 * when it was never recorded. */
typedef struct mhub_emu_event *cudaEvent_t;
#define cudaEventDefault 0x00u
#define cudaEventBlockingSync 0x01u
#define cudaEventDisableTiming 0x02u

/* What cudaPointerGetAttributes says: a cudaMalloc block is memory of the
 * device current when it was made, every other address the host's,
 * unregistered. */
enum cudaMemoryType {
    cudaMemoryTypeUnregistered = 0,
    cudaMemoryTypeHost = 1,
    cudaMemoryTypeDevice = 2,
    cudaMemoryTypeManaged = 3
};

struct cudaPointerAttributes {
    enum cudaMemoryType type;
    int device;
    void *devicePointer;
    void *hostPointer;
};

#ifdef __cplusplus
extern "C" {
#endif

cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMalloc(void **ptr, size_t bytes);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaMemset(void *ptr, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaDeviceSynchronize(void);
/* One priority only (0): the emulator runs one stream at a time. */
cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest);
cudaError_t cudaStreamCreateWithPriority(cudaStream_t *stream, unsigned flags, int priority);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaEventQuery(cudaEvent_t event);
cudaError_t cudaEventSynchronize(cudaEvent_t event);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes, const void *ptr);
cudaError_t cudaGetLastError(void);
const char *cudaGetErrorString(cudaError_t err);
const char *cudaGetErrorName(cudaError_t err);

/* The emulator's own: whether [ptr, ptr + bytes) lies in one live
 * cudaMalloc block (the emulated cuBLAS checks its operands with it). */
int mhub_emu_is_device_range(const void *ptr, size_t bytes);
/* Whether `stream` is the default stream or a live one (the emulated
 * NCCL checks its streams with it), and the error a faulted device
 * leaves behind (cudaSuccess while it works). */
int mhub_emu_is_stream(cudaStream_t stream);
cudaError_t mhub_emu_sticky_error(void);
/* Queues run(copy of args) on `stream` (the emulated cuBLAS and NCCL
 * queue their work with it): the `bytes` at args are copied now, as a
 * launch copies its parameters. Fails as a launch would on a stream that
 * does not exist or a device that faulted. */
cudaError_t mhub_emu_enqueue(cudaStream_t stream, void (*run)(void *args), const void *args,
                             size_t bytes);
/* What queued work calls when it finds, as it runs, what would fault a
 * GPU (an operand outside device memory read through a device pointer):
 * the device is left unusable with `err`, reported by the next wait. */
void mhub_emu_device_fault(cudaError_t err, const char *what);

#ifdef __cplusplus
}
#endif

/* ---- what kernels see (C++ only) ---- */
#ifdef __cplusplus

#include <functional>
#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
/* One OS thread runs a block's fibers, so a thread_local static is one
 * copy per block, as shared memory is. */
#define __shared__ thread_local

/* Shared memory a block may use: sm_80's opt-in limit (163 KB), the
 * smaller of the two architectures the build targets; 48 KB without
 * cudaFuncSetAttribute. */
#define MHUB_EMU_MAX_SHARED_BYTES 166912u
#define MHUB_EMU_DEFAULT_SHARED_BYTES 49152u

/* Dynamic shared memory: the kernels' `extern __shared__ float smem[]`
 * (a block-scope declaration, so the namespace-scope array of this name,
 * defined in cuda_emu.cpp). A kernel inside an unnamed namespace would
 * declare a member of that namespace instead, and fail to link. The
 * emulator fills it with NaN before each block. */
extern thread_local float smem[];

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
    float x, y, z, w;
};

/* Set by the emulator before it runs each fiber. */
extern thread_local uint3 threadIdx, blockIdx;
extern thread_local dim3 blockDim, gridDim;

namespace mhub_emu {

struct launch_config {
    const void *kernel; /* identifies the kernel (its shared memory allowance) */
    dim3 grid, block;
    size_t shared_bytes;
    cudaStream_t stream;
};

/* Checks the shape as CUDA does (an error is kept for cudaGetLastError),
 * then queues the grid on config.stream: when the stream gets there,
 * thread_body runs as every thread of the grid. */
void launch_grid(const launch_config &config, std::function<void()> thread_body);

/* A barrier of the whole block, and one of the calling thread's warp
 * that also swaps values: every lane posts `mine` and gets all 32 lanes'
 * posts in `all` (lanes beyond the block keep 0). */
void sync_block();
void warp_exchange(unsigned mask, uint64_t mine, uint64_t all[32]);
unsigned lane_id();
/* A warp-wide operation (wmma) made by the calling lane: not a barrier,
 * but every lane of the warp must make the same ones, with the same
 * pointer and stride, by the time the warp next meets; otherwise the
 * block fails with a message (the operations' rule on a GPU). */
void warp_collective(const char *op, const void *ptr, unsigned stride_bytes);

/* kernel<<<grid, block, shared_bytes, stream>>>(args...) is
 * launch(kernel, grid, block, shared_bytes, stream)(args...): the
 * arguments are converted to the kernel's parameter types once, at the
 * call, as at a real launch (the grid runs later, so the caller may reuse
 * whatever it passed by value), and each thread gets its own copy. */
template <class... P> class launcher {
  public:
    launcher(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
             cudaStream_t stream)
        : kernel_(kernel),
          config_{reinterpret_cast<const void *>(kernel), grid, block, shared_bytes, stream}
    {
    }

    template <class... A> void operator()(A &&...args) const
    {
        void (*kernel)(P...) = kernel_;
        std::tuple<P...> params(std::forward<A>(args)...);
        launch_grid(config_, [kernel, params]() { std::apply(kernel, params); });
    }

  private:
    void (*kernel_)(P...);
    launch_config config_;
};

template <class... P>
launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                      cudaStream_t stream)
{
    return launcher<P...>(kernel, grid, block, shared_bytes, stream);
}

cudaError_t set_max_dynamic_shared(const void *kernel, enum cudaFuncAttribute attr, int bytes);

template <class T> uint64_t to_bits(T v)
{
    static_assert(sizeof(T) <= sizeof(uint64_t), "a warp shuffles at most 8 bytes a lane");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof v);
    return u;
}

template <class T> T from_bits(uint64_t u)
{
    T v;
    memcpy(&v, &u, sizeof v);
    return v;
}

} // namespace mhub_emu

template <class... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), enum cudaFuncAttribute attr, int value)
{
    return mhub_emu::set_max_dynamic_shared(reinterpret_cast<const void *>(kernel), attr, value);
}

inline void __syncthreads() { mhub_emu::sync_block(); }

/* A barrier of the calling thread's warp (the lanes in mask). */
inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    uint64_t all[32];
    mhub_emu::warp_exchange(mask, 0, all);
}

/* The warp intrinsics, with CUDA's rules for width: lanes form groups of
 * `width`; __shfl_sync reads lane src of the caller's group, and
 * __shfl_xor_sync returns the caller's own value when lane ^ mask falls
 * in a later group. */
template <class T> T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    uint64_t all[32];
    mhub_emu::warp_exchange(mask, mhub_emu::to_bits(v), all);
    unsigned lane = mhub_emu::lane_id(), w = (unsigned)width;
    return mhub_emu::from_bits<T>(all[(lane & ~(w - 1)) + ((unsigned)src & (w - 1))]);
}

template <class T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    uint64_t all[32];
    mhub_emu::warp_exchange(mask, mhub_emu::to_bits(v), all);
    unsigned lane = mhub_emu::lane_id(), w = (unsigned)width;
    unsigned src = lane ^ (unsigned)lane_mask;
    return src >= (lane / w + 1) * w ? v : mhub_emu::from_bits<T>(all[src]);
}

inline unsigned __ballot_sync(unsigned mask, int predicate)
{
    uint64_t all[32];
    mhub_emu::warp_exchange(mask, predicate != 0, all);
    unsigned bits = 0;
    for (unsigned lane = 0; lane < 32; lane++)
        if ((mask >> lane & 1u) && all[lane])
            bits |= 1u << lane;
    return bits;
}

inline int __ffs(int x) { return __builtin_ffs(x); }

/* Fibers switch only at barriers, so a read-modify-write is atomic. */
inline int atomicCAS(int *address, int compare, int value)
{
    int old = *address;
    if (old == compare)
        *address = value;
    return old;
}

#endif /* __cplusplus */
#endif
