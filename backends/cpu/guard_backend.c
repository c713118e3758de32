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
#include "src/backend_wrap.h"
#include "src/comm_internal.h"

#define GUARD_ALIGN 64
#define GUARD_ARENA_ENV "MHUB_GUARD_ARENA_MB"
/* Address space reserved, not memory: pages cost only once touched. */
#define GUARD_ARENA_DEFAULT ((size_t)16 << 30)
#define GUARD_MAX_LIVE 8

typedef struct guard_state {
    mhub_wrap wrap;       /* first: the CPU backend and the open/close hooks */
    mhub_backend *cpu;
    unsigned char *arena;
    size_t size;
    mhub_pool *pool;
    int open_depth;       /* nested opens: a comm call inside a backend call */
    mhub_backend_ops ops; /* the CPU backend's, wrapped; memory ops of its own */
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

/* ---- every other op: open, run the CPU backend's, close ---- */

static void open_around(mhub_wrap *w, const char *op)
{
    (void)op;
    open_arena((guard_state *)w);
}

static mhub_status close_after(mhub_wrap *w, const char *op, double flops, mhub_status s)
{
    (void)op;
    (void)flops;
    close_arena((guard_state *)w);
    return s;
}

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
    be->ops = &g->ops;
    be->ctx = g;
    g->ops.destroy = guard_destroy;
    mhub_status s = arena_size(&g->size);
    if (s == MHUB_OK)
        s = mhub_cpu_backend_create(opts, &g->cpu);
    if (s == MHUB_OK) {
        g->wrap = (mhub_wrap){.inner = g->cpu, .before = open_around, .after = close_after};
        mhub_wrap_ops(g->cpu, &g->ops);
        g->ops.alloc = guard_alloc;
        g->ops.free = guard_free;
        g->ops.memory_usage = guard_memory_usage;
        g->ops.reset_peak = guard_reset_peak;
        g->ops.destroy = guard_destroy;
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
