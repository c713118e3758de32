/* guard_backend.c - the CPU backend with its memory closed to the host.
 *
 * A GPU backend's memory cannot be read by host code: a model, an engine
 * or a command that dereferences a backend pointer instead of going
 * through ops->copy works on the CPU and crashes (or reads garbage) on a
 * GPU. The guard backend finds such code on any machine. Its memory is
 * one anonymous mapping kept PROT_NONE; every backend call opens it
 * (PROT_READ | PROT_WRITE), runs the CPU backend's kernel, and closes it
 * again. A host access outside a backend call faults, and the handler
 * names the address before the default action ends the process.
 *
 * The communicator wrapper (mhub_comm_create_guard) does the same for
 * every communication call on backend memory, since MPI reads and writes
 * the buffers inside its calls; MHUB_AVG's division, which comm.c runs
 * on the host after a wait, happens inside the wrapper's wait instead,
 * as NCCL averages inside its collective.
 *
 * Results are the CPU backend's, bit for bit: the guard only changes
 * when memory may be touched. Each call costs two mprotect system calls,
 * so it is a checking tool, not a way to train. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backends/cuda/cuda_pool.h"
#include "mhub/backend.h"
#include "mhub/comm.h"
#include "src/comm_internal.h"

#define GUARD_ALIGN 64
#define GUARD_ARENA_ENV "MHUB_GUARD_ARENA_MB"
/* Address space reserved, not memory: pages cost only once touched. */
#define GUARD_ARENA_DEFAULT ((size_t)16 << 30)
#define GUARD_MAX_LIVE 8

typedef struct guard_state {
    mhub_backend *cpu;
    unsigned char *arena;
    size_t size;
    mhub_pool *pool;
    int open_depth;       /* nested opens: a comm call inside a backend call */
    mhub_backend_ops ops; /* guard_ops, with the optional ops the CPU backend lacks unset */
} guard_state;

/* The live arenas, for the fault handler's message. */
static _Atomic(guard_state *) live[GUARD_MAX_LIVE];
static struct sigaction previous_segv;
static atomic_flag handler_installed = ATOMIC_FLAG_INIT;

static void on_segv(int sig, siginfo_t *info, void *ctx)
{
    (void)ctx;
    uintptr_t at = (uintptr_t)info->si_addr;
    for (int i = 0; i < GUARD_MAX_LIVE; i++) {
        guard_state *g = atomic_load(&live[i]);
        if (g && at >= (uintptr_t)g->arena && at - (uintptr_t)g->arena < g->size) {
            char msg[256];
            int n = snprintf(msg, sizeof msg,
                             "mhub guard backend: host code touched backend memory at %p "
                             "(offset %zu of the arena) outside a backend call\n",
                             info->si_addr, (size_t)(at - (uintptr_t)g->arena));
            if (n > 0 && write(STDERR_FILENO, msg, (size_t)n) < 0)
                n = 0;
            break;
        }
    }
    /* hand the fault to whatever handled it before (the default: a core) */
    sigaction(sig, &previous_segv, NULL);
}

static void install_handler(void)
{
    if (atomic_flag_test_and_set(&handler_installed))
        return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
}

static guard_state *state_of(const mhub_backend *be) { return be ? be->ctx : NULL; }

static void open_arena(guard_state *g)
{
    if (g->open_depth++ == 0)
        mprotect(g->arena, g->size, PROT_READ | PROT_WRITE);
}

static void close_arena(guard_state *g)
{
    if (--g->open_depth == 0)
        mprotect(g->arena, g->size, PROT_NONE);
}

/* ---- memory ---- */

static mhub_status guard_alloc(mhub_backend *be, size_t bytes, void **out)
{
    guard_state *g = state_of(be);
    if (!g || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend or out is NULL");
    *out = NULL;
    uintptr_t at;
    MHUB_TRY(mhub_pool_alloc(g->pool, bytes, &at));
    open_arena(g);
    memset((void *)at, 0, bytes);
    close_arena(g);
    *out = (void *)at;
    return MHUB_OK;
}

static void guard_free(mhub_backend *be, void *ptr)
{
    guard_state *g = state_of(be);
    if (g && ptr)
        mhub_pool_free(g->pool, (uintptr_t)ptr);
}

static mhub_status guard_memory_usage(mhub_backend *be, size_t *current, size_t *peak)
{
    guard_state *g = state_of(be);
    if (!g)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend is NULL");
    mhub_pool_stats st;
    mhub_pool_get_stats(g->pool, &st);
    if (current)
        *current = st.current;
    if (peak)
        *peak = st.peak;
    return MHUB_OK;
}

static mhub_status guard_reset_peak(mhub_backend *be)
{
    guard_state *g = state_of(be);
    if (!g)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend is NULL");
    mhub_pool_reset_peak(g->pool);
    return MHUB_OK;
}

/* ---- every other op: open, run the CPU backend's, close ----
 * PARAMS is the op's parameter list, ARGS the call with the CPU backend
 * in place of the guard. */
#define GUARDED(op, PARAMS, ARGS)                                \
    static mhub_status guard_##op PARAMS                         \
    {                                                            \
        guard_state *g = state_of(be);                           \
        open_arena(g);                                           \
        mhub_status s = g->cpu->ops->op ARGS;                    \
        close_arena(g);                                          \
        return s;                                                \
    }

GUARDED(memset_zero, (mhub_backend *be, void *ptr, size_t bytes), (g->cpu, ptr, bytes))
GUARDED(copy, (mhub_backend *be, void *dst, const void *src, size_t bytes, mhub_copy_kind kind),
        (g->cpu, dst, src, bytes, kind))
GUARDED(synchronize, (mhub_backend *be), (g->cpu))
GUARDED(gemm,
        (mhub_backend *be, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha,
         const float *a, int64_t lda, const float *b, int64_t ldb, float beta, float *c,
         int64_t ldc),
        (g->cpu, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc))
GUARDED(bias_add, (mhub_backend *be, float *out, const float *bias, int64_t rows, int64_t cols),
        (g->cpu, out, bias, rows, cols))
GUARDED(bias_backward,
        (mhub_backend *be, float *dbias, const float *dout, int64_t rows, int64_t cols),
        (g->cpu, dbias, dout, rows, cols))
GUARDED(gelu_forward, (mhub_backend *be, float *out, const float *in, int64_t n),
        (g->cpu, out, in, n))
GUARDED(gelu_backward,
        (mhub_backend *be, float *din, const float *in, const float *dout, int64_t n),
        (g->cpu, din, in, dout, n))
GUARDED(softmax_xent_forward,
        (mhub_backend *be, float *probs, float *losses, const float *logits,
         const int32_t *targets, int64_t rows, int64_t classes),
        (g->cpu, probs, losses, logits, targets, rows, classes))
GUARDED(softmax_xent_backward,
        (mhub_backend *be, float *dlogits, const float *probs, const int32_t *targets,
         int64_t rows, int64_t classes, float dloss),
        (g->cpu, dlogits, probs, targets, rows, classes, dloss))
GUARDED(embedding_forward,
        (mhub_backend *be, float *out, const float *table, const int32_t *ids, int64_t rows,
         int64_t vocab, int64_t dim, bool accumulate),
        (g->cpu, out, table, ids, rows, vocab, dim, accumulate))
GUARDED(embedding_backward,
        (mhub_backend *be, float *dtable, const float *dout, const int32_t *ids, int64_t rows,
         int64_t vocab, int64_t dim),
        (g->cpu, dtable, dout, ids, rows, vocab, dim))
GUARDED(layernorm_forward,
        (mhub_backend *be, float *out, float *mean, float *rstd, const float *in,
         const float *weight, const float *bias, int64_t rows, int64_t dim, float eps),
        (g->cpu, out, mean, rstd, in, weight, bias, rows, dim, eps))
GUARDED(layernorm_backward,
        (mhub_backend *be, float *din, float *dweight, float *dbias, const float *dout,
         const float *in, const float *weight, const float *mean, const float *rstd,
         int64_t rows, int64_t dim),
        (g->cpu, din, dweight, dbias, dout, in, weight, mean, rstd, rows, dim))
GUARDED(rmsnorm_forward,
        (mhub_backend *be, float *out, float *rstd, const float *in, const float *weight,
         int64_t rows, int64_t dim, float eps),
        (g->cpu, out, rstd, in, weight, rows, dim, eps))
GUARDED(rmsnorm_backward,
        (mhub_backend *be, float *din, float *dweight, const float *dout, const float *in,
         const float *weight, const float *rstd, int64_t rows, int64_t dim),
        (g->cpu, din, dweight, dout, in, weight, rstd, rows, dim))
GUARDED(swiglu_forward, (mhub_backend *be, float *out, const float *in, int64_t rows, int64_t f),
        (g->cpu, out, in, rows, f))
GUARDED(swiglu_backward,
        (mhub_backend *be, float *din, const float *dout, const float *in, int64_t rows,
         int64_t f),
        (g->cpu, din, dout, in, rows, f))
GUARDED(rope_forward,
        (mhub_backend *be, float *qkv, int64_t batch, int64_t seq, int64_t heads,
         int64_t groups, int64_t head_dim, float base),
        (g->cpu, qkv, batch, seq, heads, groups, head_dim, base))
GUARDED(rope_backward,
        (mhub_backend *be, float *dqkv, int64_t batch, int64_t seq, int64_t heads,
         int64_t groups, int64_t head_dim, float base),
        (g->cpu, dqkv, batch, seq, heads, groups, head_dim, base))
GUARDED(causal_attention_forward,
        (mhub_backend *be, float *out, float *probs, const float *qkv, int64_t batch,
         int64_t seq, int64_t heads, int64_t groups, int64_t head_dim),
        (g->cpu, out, probs, qkv, batch, seq, heads, groups, head_dim))
GUARDED(causal_attention_backward,
        (mhub_backend *be, float *dqkv, float *scratch, const float *dout, const float *qkv,
         const float *probs, int64_t batch, int64_t seq, int64_t heads, int64_t groups,
         int64_t head_dim),
        (g->cpu, dqkv, scratch, dout, qkv, probs, batch, seq, heads, groups, head_dim))
GUARDED(flash_attention_forward,
        (mhub_backend *be, float *out, float *lse, const float *qkv, int64_t batch, int64_t seq,
         int64_t heads, int64_t groups, int64_t head_dim),
        (g->cpu, out, lse, qkv, batch, seq, heads, groups, head_dim))
GUARDED(flash_attention_backward,
        (mhub_backend *be, float *dqkv, const float *dout, const float *out, const float *qkv,
         const float *lse, int64_t batch, int64_t seq, int64_t heads, int64_t groups,
         int64_t head_dim),
        (g->cpu, dqkv, dout, out, qkv, lse, batch, seq, heads, groups, head_dim))
GUARDED(cast,
        (mhub_backend *be, void *dst, mhub_dtype dst_dtype, const void *src,
         mhub_dtype src_dtype, int64_t n),
        (g->cpu, dst, dst_dtype, src, src_dtype, n))
GUARDED(scale, (mhub_backend *be, float *x, int64_t n, float alpha), (g->cpu, x, n, alpha))
GUARDED(axpy, (mhub_backend *be, float *y, const float *x, int64_t n, float alpha),
        (g->cpu, y, x, n, alpha))
GUARDED(sum_squares, (mhub_backend *be, const float *x, int64_t n, double *out),
        (g->cpu, x, n, out))
GUARDED(fill_normal,
        (mhub_backend *be, float *dst, int64_t n, uint64_t seed, uint64_t stream,
         uint64_t offset, float mean, float std),
        (g->cpu, dst, n, seed, stream, offset, mean, std))
GUARDED(fill_uniform,
        (mhub_backend *be, float *dst, int64_t n, uint64_t seed, uint64_t stream,
         uint64_t offset, float lo, float hi),
        (g->cpu, dst, n, seed, stream, offset, lo, hi))
GUARDED(sgd_step,
        (mhub_backend *be, float *param, const float *grad, float *momentum_buf, int64_t n,
         float lr, float momentum, float weight_decay),
        (g->cpu, param, grad, momentum_buf, n, lr, momentum, weight_decay))
GUARDED(adamw_step,
        (mhub_backend *be, float *param, const float *grad, float *m, float *v, int64_t n,
         float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t),
        (g->cpu, param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t))

static void guard_destroy(mhub_backend *be)
{
    guard_state *g = state_of(be);
    if (g) {
        for (int i = 0; i < GUARD_MAX_LIVE; i++) {
            guard_state *expect = g;
            atomic_compare_exchange_strong(&live[i], &expect, NULL);
        }
        mhub_backend_free(g->cpu);
        mhub_pool_destroy(g->pool);
        if (g->arena)
            munmap(g->arena, g->size);
        free(g);
    }
    free(be);
}

static const mhub_backend_ops guard_ops = {
    .alloc = guard_alloc,
    .free = guard_free,
    .memset_zero = guard_memset_zero,
    .copy = guard_copy,
    .synchronize = guard_synchronize,
    .memory_usage = guard_memory_usage,
    .reset_peak = guard_reset_peak,
    .gemm = guard_gemm,
    .bias_add = guard_bias_add,
    .bias_backward = guard_bias_backward,
    .gelu_forward = guard_gelu_forward,
    .gelu_backward = guard_gelu_backward,
    .softmax_xent_forward = guard_softmax_xent_forward,
    .softmax_xent_backward = guard_softmax_xent_backward,
    .embedding_forward = guard_embedding_forward,
    .embedding_backward = guard_embedding_backward,
    .layernorm_forward = guard_layernorm_forward,
    .layernorm_backward = guard_layernorm_backward,
    .rmsnorm_forward = guard_rmsnorm_forward,
    .rmsnorm_backward = guard_rmsnorm_backward,
    .swiglu_forward = guard_swiglu_forward,
    .swiglu_backward = guard_swiglu_backward,
    .rope_forward = guard_rope_forward,
    .rope_backward = guard_rope_backward,
    .causal_attention_forward = guard_causal_attention_forward,
    .causal_attention_backward = guard_causal_attention_backward,
    .flash_attention_forward = guard_flash_attention_forward,
    .flash_attention_backward = guard_flash_attention_backward,
    .cast = guard_cast,
    .scale = guard_scale,
    .axpy = guard_axpy,
    .sum_squares = guard_sum_squares,
    .fill_normal = guard_fill_normal,
    .fill_uniform = guard_fill_uniform,
    .sgd_step = guard_sgd_step,
    .adamw_step = guard_adamw_step,
    .destroy = guard_destroy,
};

static mhub_status arena_size(size_t *out)
{
    const char *env = getenv(GUARD_ARENA_ENV);
    *out = GUARD_ARENA_DEFAULT;
    if (!env || !*env)
        return MHUB_OK;
    char *end = NULL;
    unsigned long long mb = strtoull(env, &end, 10);
    if (!end || *end || mb == 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s = '%s' is not a positive count of MiB",
                          GUARD_ARENA_ENV, env);
    *out = (size_t)mb << 20;
    return MHUB_OK;
}

static mhub_status register_live(guard_state *g)
{
    for (int i = 0; i < GUARD_MAX_LIVE; i++) {
        guard_state *expect = NULL;
        if (atomic_compare_exchange_strong(&live[i], &expect, g))
            return MHUB_OK;
    }
    return MHUB_ERROR(MHUB_ERR_UNSUPPORTED, "at most %d guard backends may live at once",
                      GUARD_MAX_LIVE);
}

mhub_status mhub_guard_backend_create(const mhub_cpu_options *opts, mhub_backend **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    mhub_backend *be = calloc(1, sizeof *be);
    guard_state *g = calloc(1, sizeof *g);
    if (!be || !g) {
        free(be);
        free(g);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no memory for the guard backend");
    }
    be->name = "guard";
    g->ops = guard_ops;
    be->ops = &g->ops;
    be->ctx = g;
    mhub_status s = arena_size(&g->size);
    if (s == MHUB_OK)
        s = mhub_cpu_backend_create(opts, &g->cpu);
    if (s == MHUB_OK && !g->cpu->ops->flash_attention_forward) {
        g->ops.flash_attention_forward = NULL;
        g->ops.flash_attention_backward = NULL;
    }
    if (s == MHUB_OK) {
        void *p = mmap(NULL, g->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        if (p == MAP_FAILED)
            s = MHUB_ERROR(MHUB_ERR_NO_MEMORY, "cannot reserve %zu MiB of address space (%s)",
                           g->size >> 20, strerror(errno));
        else
            g->arena = p;
    }
    if (s == MHUB_OK)
        s = mhub_pool_create((uintptr_t)g->arena, g->size, GUARD_ALIGN, &g->pool);
    if (s == MHUB_OK)
        s = register_live(g);
    if (s != MHUB_OK) {
        guard_destroy(be);
        return s;
    }
    install_handler();
    *out = be;
    return MHUB_OK;
}

/* ---- the communicator wrapper ---- */

typedef struct guard_comm {
    mhub_comm *inner;
    guard_state *g;
} guard_comm;

static guard_comm *gc_of(const mhub_comm *c) { return c->ctx; }

#define GUARDED_COMM(op, PARAMS, ARGS)                           \
    static mhub_status gcomm_##op PARAMS                         \
    {                                                            \
        guard_comm *gc = gc_of(c);                               \
        open_arena(gc->g);                                       \
        mhub_status s = gc->inner->ops->op ARGS;                 \
        close_arena(gc->g);                                      \
        return s;                                                \
    }

GUARDED_COMM(iallreduce,
             (mhub_comm *c, const void *send, void *recv, int64_t count, mhub_dtype dt,
              mhub_reduce_op op, mhub_request *req),
             (gc->inner, send, recv, count, dt, op, req))
GUARDED_COMM(ireduce_scatter,
             (mhub_comm *c, const void *send, void *recv, int64_t count, mhub_dtype dt,
              mhub_reduce_op op, mhub_request *req),
             (gc->inner, send, recv, count, dt, op, req))
GUARDED_COMM(iallgather,
             (mhub_comm *c, const void *send, void *recv, int64_t count, mhub_dtype dt,
              mhub_request *req),
             (gc->inner, send, recv, count, dt, req))
GUARDED_COMM(ibroadcast,
             (mhub_comm *c, void *buf, int64_t count, mhub_dtype dt, int root,
              mhub_request *req),
             (gc->inner, buf, count, dt, root, req))
GUARDED_COMM(isend,
             (mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt, int peer, int tag,
              mhub_request *req),
             (gc->inner, buf, count, dt, peer, tag, req))
GUARDED_COMM(irecv,
             (mhub_comm *c, void *buf, int64_t count, mhub_dtype dt, int peer, int tag,
              mhub_request *req),
             (gc->inner, buf, count, dt, peer, tag, req))
GUARDED_COMM(barrier, (mhub_comm *c), (gc->inner))

/* The transfer and MHUB_AVG's division both touch the buffer: both run
 * while the arena is open. */
static mhub_status gcomm_wait(mhub_comm *c, mhub_request *req)
{
    guard_comm *gc = gc_of(c);
    open_arena(gc->g);
    mhub_status s = gc->inner->ops->wait(gc->inner, req);
    if (s == MHUB_OK)
        mhub_request_finish_host(req);
    close_arena(gc->g);
    return s;
}

static mhub_status gcomm_test(mhub_comm *c, mhub_request *req, bool *done)
{
    guard_comm *gc = gc_of(c);
    open_arena(gc->g);
    mhub_status s = gc->inner->ops->test(gc->inner, req, done);
    if (s == MHUB_OK && *done)
        mhub_request_finish_host(req);
    close_arena(gc->g);
    return s;
}

static mhub_status wrap(mhub_comm *inner, guard_state *g, mhub_comm **out);

static mhub_status gcomm_split(mhub_comm *c, int color, int key, const char *name,
                               mhub_comm **out)
{
    guard_comm *gc = gc_of(c);
    mhub_comm *part = NULL;
    MHUB_TRY(gc->inner->ops->split(gc->inner, color, key, name, &part));
    if (!part) {
        *out = NULL;
        return MHUB_OK;
    }
    mhub_status s = wrap(part, gc->g, out);
    if (s != MHUB_OK)
        mhub_comm_free(part);
    return s;
}

static void gcomm_destroy(mhub_comm *c)
{
    if (!c)
        return;
    mhub_comm_free(gc_of(c)->inner);
    free(c->ctx);
    free(c);
}

/* alloc/free_mem are not offered: communicator memory would live outside
 * the arena and escape the check. */
static const mhub_comm_ops guard_comm_ops = {
    .iallreduce = gcomm_iallreduce,
    .ireduce_scatter = gcomm_ireduce_scatter,
    .iallgather = gcomm_iallgather,
    .ibroadcast = gcomm_ibroadcast,
    .isend = gcomm_isend,
    .irecv = gcomm_irecv,
    .wait = gcomm_wait,
    .test = gcomm_test,
    .barrier = gcomm_barrier,
    .split = gcomm_split,
    .destroy = gcomm_destroy,
};

static mhub_status wrap(mhub_comm *inner, guard_state *g, mhub_comm **out)
{
    mhub_comm *c = calloc(1, sizeof *c);
    guard_comm *gc = calloc(1, sizeof *gc);
    if (!c || !gc) {
        free(c);
        free(gc);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no memory for a guard communicator");
    }
    gc->inner = inner;
    gc->g = g;
    c->ops = &guard_comm_ops;
    c->ctx = gc;
    c->rank = inner->rank;
    c->size = inner->size;
    snprintf(c->name, sizeof c->name, "%s", inner->name);
    *out = c;
    return MHUB_OK;
}

mhub_status mhub_comm_create_guard(mhub_comm *inner, mhub_backend *guard, mhub_comm **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!inner || !guard || !guard->ops || guard->ops->destroy != guard_destroy)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "needs a communicator and a backend made by mhub_guard_backend_create");
    return wrap(inner, state_of(guard), out);
}
