/* cpu_backend.c - the CPU backend object: creation, BLAS threads, memory.
 *
 * On the CPU "device" memory is host memory, so allocation is an aligned
 * zeroed malloc, every copy kind is a memcpy and there is nothing to wait
 * for. The only configuration is the OpenBLAS thread count, which is
 * process-wide: it is set when a backend is created. The kernels live in
 * cpu_kernels.c; the ops table here points at them.
 *
 * Allocator accounting: each block carries a header in front of the
 * pointer handed out that records its requested size, so free can keep
 * the current/peak byte counters (ops->memory_usage) without a table. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>

#include "backends/cpu/cpu_internal.h"
#include "src/backend_args.h"

/* Alignment of every allocation: a cache line, and enough for any vector
 * load the compiler or OpenBLAS may use. */
#define CPU_ALIGNMENT 64
/* Upper bound on a thread count; larger values are typos, not machines. */
#define CPU_MAX_THREADS 1024
#define CPU_THREADS_ENV "MHUB_BLAS_THREADS"
/* Bytes in front of every block for its size. A whole alignment unit, so
 * the pointer after it keeps the block's 64-byte alignment. */
#define CPU_HEADER CPU_ALIGNMENT

/* be->ctx points at `ctx`, the first member, so code that knows only
 * cpu_internal.h's mhub_cpu_ctx reads it as before. The counters are
 * atomic because nothing stops two threads from sharing one backend. */
typedef struct cpu_state {
    mhub_cpu_ctx ctx;
    /* this backend's table: cpu_ops, less the flash attention ops unless
     * the options asked for them */
    mhub_backend_ops ops;
    atomic_size_t current;   /* requested bytes of the live blocks */
    atomic_size_t peak;      /* highest `current` since creation or reset_peak */
} cpu_state;

static cpu_state *state_of(mhub_backend *be)
{
    return be ? (cpu_state *)be->ctx : NULL;
}

/* ---- memory ---- */

static void account_alloc(cpu_state *st, size_t bytes)
{
    if (!st)
        return;
    size_t now = atomic_fetch_add(&st->current, bytes) + bytes;
    size_t peak = atomic_load(&st->peak);
    /* raise the peak unless another thread already raised it past `now` */
    while (peak < now && !atomic_compare_exchange_weak(&st->peak, &peak, now)) {
    }
}

static void account_free(cpu_state *st, size_t bytes)
{
    if (st)
        atomic_fetch_sub(&st->current, bytes);
}

static mhub_status cpu_alloc(mhub_backend *be, size_t bytes, void **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    /* No object may exceed PTRDIFF_MAX; refusing here also keeps absurd
     * sizes (a negative count cast to size_t) away from the allocator. */
    if (bytes > (size_t)PTRDIFF_MAX - CPU_HEADER)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "%zu bytes is more than any allocation can hold",
                          bytes);
    /* posix_memalign, not aligned_alloc: C11 wants the size of the latter to
     * be a multiple of the alignment, and rounding up would hide overruns
     * from AddressSanitizer. One byte stands in for zero so that the
     * pointer is unique and must be freed like any other. */
    void *block = NULL;
    int rc = posix_memalign(&block, CPU_ALIGNMENT, CPU_HEADER + (bytes ? bytes : 1));
    if (rc != 0 || !block)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "cannot allocate %zu bytes (%s)", bytes,
                          strerror(rc));
    memcpy(block, &bytes, sizeof bytes);
    unsigned char *p = (unsigned char *)block + CPU_HEADER;
    memset(p, 0, bytes);
    account_alloc(state_of(be), bytes);
    *out = p;
    return MHUB_OK;
}

static void cpu_free(mhub_backend *be, void *ptr)
{
    if (!ptr)
        return;
    unsigned char *block = (unsigned char *)ptr - CPU_HEADER;
    size_t bytes;
    memcpy(&bytes, block, sizeof bytes);
    account_free(state_of(be), bytes);
    free(block);
}

static mhub_status cpu_memory_usage(mhub_backend *be, size_t *current_bytes, size_t *peak_bytes)
{
    cpu_state *st = state_of(be);
    if (!st)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend is NULL");
    if (current_bytes)
        *current_bytes = atomic_load(&st->current);
    if (peak_bytes)
        *peak_bytes = atomic_load(&st->peak);
    return MHUB_OK;
}

static mhub_status cpu_reset_peak(mhub_backend *be)
{
    cpu_state *st = state_of(be);
    if (!st)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend is NULL");
    atomic_store(&st->peak, atomic_load(&st->current));
    return MHUB_OK;
}

static void zero_range(void *ptr, int64_t lo, int64_t hi)
{
    memset((char *)ptr + lo, 0, (size_t)(hi - lo));
}

/* Zeroing a whole model's gradients is a memory-bound pass worth both
 * threads (cpu_parallel.c). */
static mhub_status cpu_memset_zero(mhub_backend *be, void *ptr, size_t bytes)
{
    MHUB_TRY(mhub_args_memset_zero(ptr, bytes));
    if (bytes > 0)
        mhub_cpu_parallel_ranges(be, (int64_t)bytes, zero_range, ptr);
    return MHUB_OK;
}

static mhub_status cpu_copy(mhub_backend *be, void *dst, const void *src, size_t bytes,
                            mhub_copy_kind kind)
{
    /* Overlapping ranges are refused (undefined on a device); a range
     * copied onto itself is allowed and changes nothing. */
    MHUB_TRY(mhub_args_copy(dst, src, bytes, kind));
    if (bytes == 0 || dst == src)
        return MHUB_OK;
    memcpy(dst, src, bytes);
    return MHUB_OK;
}

/* Every kernel runs to completion before it returns. */
static mhub_status cpu_synchronize(mhub_backend *be) { return MHUB_OK; }

static void cpu_destroy(mhub_backend *be)
{
    if (!be)
        return;
    free(state_of(be));
    free(be);
}

static const mhub_backend_ops cpu_ops = {
    .alloc = cpu_alloc,
    .free = cpu_free,
    .memset_zero = cpu_memset_zero,
    .copy = cpu_copy,
    .synchronize = cpu_synchronize,
    .memory_usage = cpu_memory_usage,
    .reset_peak = cpu_reset_peak,
    .gemm = mhub_cpu_gemm,
    .bias_add = mhub_cpu_bias_add,
    .bias_backward = mhub_cpu_bias_backward,
    .gelu_forward = mhub_cpu_gelu_forward,
    .gelu_backward = mhub_cpu_gelu_backward,
    .softmax_xent_forward = mhub_cpu_softmax_xent_forward,
    .softmax_xent_backward = mhub_cpu_softmax_xent_backward,
    .embedding_forward = mhub_cpu_embedding_forward,
    .embedding_backward = mhub_cpu_embedding_backward,
    .layernorm_forward = mhub_cpu_layernorm_forward,
    .layernorm_backward = mhub_cpu_layernorm_backward,
    .rmsnorm_forward = mhub_cpu_rmsnorm_forward,
    .rmsnorm_backward = mhub_cpu_rmsnorm_backward,
    .swiglu_forward = mhub_cpu_swiglu_forward,
    .swiglu_backward = mhub_cpu_swiglu_backward,
    .rope_forward = mhub_cpu_rope_forward,
    .rope_backward = mhub_cpu_rope_backward,
    .causal_attention_forward = mhub_cpu_causal_attention_forward,
    .causal_attention_backward = mhub_cpu_causal_attention_backward,
    .flash_attention_forward = mhub_cpu_flash_attention_forward,
    .flash_attention_backward = mhub_cpu_flash_attention_backward,
    .cast = mhub_cpu_cast,
    .scale = mhub_cpu_scale,
    .axpy = mhub_cpu_axpy,
    .sum_squares = mhub_cpu_sum_squares,
    .fill_normal = mhub_cpu_fill_normal,
    .fill_uniform = mhub_cpu_fill_uniform,
    .sgd_step = mhub_cpu_sgd_step,
    .adamw_step = mhub_cpu_adamw_step,
    .destroy = cpu_destroy,
};

/* ---- threads ---- */

/* The thread count from MHUB_BLAS_THREADS, or 0 when it is unset or empty
 * (an empty value is how a shell script "unsets" a variable it passes on). */
static mhub_status threads_from_env(int *out)
{
    *out = 0;
    const char *s = getenv(CPU_THREADS_ENV);
    if (!s || !*s)
        return MHUB_OK;
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 1 || v > CPU_MAX_THREADS)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "%s = \"%s\" is not a thread count: use a whole number in [1, %d], "
                          "or unset it for automatic",
                          CPU_THREADS_ENV, s, CPU_MAX_THREADS);
    *out = (int)v;
    return MHUB_OK;
}

/* Automatic choice: ranks that share a node each get one BLAS thread, so
 * they do not oversubscribe the cores; a lone process takes them all. */
static int automatic_threads(int local_ranks)
{
    if (local_ranks > 1)
        return 1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1)
        return 1;
    return cores < CPU_MAX_THREADS ? (int)cores : CPU_MAX_THREADS;
}

static mhub_status resolve_threads(const mhub_cpu_options *opts, int *out)
{
    mhub_cpu_options o = {0};
    if (opts)
        o = *opts;
    if (o.blas_threads < 0 || o.blas_threads > CPU_MAX_THREADS)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "blas_threads = %d is outside [0, %d] (0 = automatic)",
                          o.blas_threads, CPU_MAX_THREADS);
    if (o.local_ranks < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "local_ranks = %d is negative", o.local_ranks);
    if (o.blas_threads > 0) {
        *out = o.blas_threads;
        return MHUB_OK;
    }
    int env_threads;
    MHUB_TRY(threads_from_env(&env_threads));
    *out = env_threads > 0 ? env_threads : automatic_threads(o.local_ranks);
    return MHUB_OK;
}

/* ---- OpenBLAS's idle workers ----
 * After a GEMM, OpenBLAS's pthread workers spin (sched_yield in a loop)
 * for 2^28 cycles, about 0.1 s, before they sleep. A training step runs
 * elementwise kernels between its GEMMs on threads of its own
 * (cpu_parallel.c), and with as many threads as cores those kernels then
 * share the cores with spinning workers. OpenBLAS reads the spin length
 * (OPENBLAS_THREAD_TIMEOUT, log2 cycles, at least 4) only when it starts,
 * before main(); so when the user has not set it, the backend sets the
 * shortest one and has OpenBLAS read its environment again and restart
 * its workers, which pick it up. The cost is a futex wake per threaded
 * GEMM, microseconds against milliseconds. The two calls are OpenBLAS
 * internals (exported, not in cblas.h), looked up at run time so that
 * another BLAS, or an OpenBLAS without them, is simply left alone; the
 * environment is restored afterwards. */
#define OPENBLAS_TIMEOUT_ENV "OPENBLAS_THREAD_TIMEOUT"

static void quiet_blas_workers_once(void)
{
    if (getenv(OPENBLAS_TIMEOUT_ENV))
        return;
    void (*read_env)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "openblas_read_env");
    void (*shutdown)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "blas_thread_shutdown_");
    if (!read_env || !shutdown || setenv(OPENBLAS_TIMEOUT_ENV, "4", 0) != 0)
        return;
    read_env();
    unsetenv(OPENBLAS_TIMEOUT_ENV);
    shutdown(); /* the next threaded GEMM starts them with the short spin */
}

/* Once per process, from the first backend with threads to share; a
 * backend is created before its training threads start, so the brief
 * environment change races with nothing of ours. */
static void quiet_blas_workers(int threads)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    if (threads >= 2)
        pthread_once(&once, quiet_blas_workers_once);
}

/* ---- the backend object ---- */

mhub_status mhub_cpu_backend_create(const mhub_cpu_options *opts, mhub_backend **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    int threads = 0;
    MHUB_TRY(resolve_threads(opts, &threads));

    mhub_backend *be = calloc(1, sizeof *be);
    cpu_state *st = calloc(1, sizeof *st);
    if (!be || !st) {
        free(be);
        free(st);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "cannot allocate the CPU backend");
    }
    quiet_blas_workers(threads);
    openblas_set_num_threads(threads);
    atomic_init(&st->current, 0);
    atomic_init(&st->peak, 0);
    st->ctx.blas_threads = threads;
    st->ops = cpu_ops;
    if (!opts || !opts->flash_attention) {
        st->ops.flash_attention_forward = NULL;
        st->ops.flash_attention_backward = NULL;
    }
    be->name = "cpu";
    be->ops = &st->ops;
    be->ctx = &st->ctx;
    *out = be;
    return MHUB_OK;
}

int mhub_cpu_backend_threads(const mhub_backend *be)
{
    if (!be || !be->ops || be->ops->destroy != cpu_destroy || !be->ctx)
        return 0;
    return ((const mhub_cpu_ctx *)be->ctx)->blas_threads;
}

void mhub_backend_free(mhub_backend *be)
{
    if (be && be->ops && be->ops->destroy)
        be->ops->destroy(be);
}
