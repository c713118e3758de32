/* mpi_comm.c - the MPI communicator: comm.h's ops on top of MPI-3/4.
 *
 * Each mhub_comm owns a duplicate of the MPI communicator it was made from,
 * with MPI_ERRORS_RETURN set so that every MPI failure comes back as
 * MHUB_ERR_COMM with MPI's own explanation instead of aborting the job.
 * Every operation is a nonblocking MPI call whose MPI_Request is kept inside
 * the caller's mhub_request; waiting polls it and yields the core between
 * polls (see wait_for below for why). f32 maps onto MPI_FLOAT and the
 * built-in MPI_SUM/MPI_MAX; bf16 and f16, which MPI lacks, travel as a
 * 2-byte datatype reduced by user-defined operations that compute in f32.
 * Those types and operations are created once, with the first
 * communicator, and freed inside MPI_Finalize. MHUB_AVG is a sum here;
 * comm.c's finish step divides. With MPI 4 every call uses the large-count
 * (_c) variant, so counts above INT_MAX work; with an older MPI they fail
 * with MHUB_ERR_UNSUPPORTED. On one node, mhub_comm_alloc hands out slots
 * of a shared-memory window, and an in-place f32 sum/avg all-reduce of a
 * range in such a slot runs over shared memory instead (shm_comm.c); it
 * is complete when the issuing call returns. The first communicator also
 * asks MPICH for its pairwise nonblocking reduce-scatter (see
 * prefer_pairwise_reduce_scatter). */
#include <assert.h>
#include <limits.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mpi.h>

#include "backends/cpu/shm_internal.h"
#include "mhub/comm.h"

/* Build with -DMHUB_MPI_NO_LARGE_COUNT to exercise the MPI-3 path. */
#if MPI_VERSION >= 4 && !defined(MHUB_MPI_NO_LARGE_COUNT)
#define LARGE_COUNT 1
#define MPI_LC(fn) fn##_c
typedef MPI_Count mpi_count;
#else
#define LARGE_COUNT 0
#define MPI_LC(fn) fn
typedef int mpi_count;
#endif

typedef struct mpi_comm {
    mhub_comm base;
    MPI_Comm comm;
    mhub_shm *shm;  /* shared-memory windows; NULL until the first alloc */
    int spin_polls; /* polls before a wait starts yielding (see wait_for) */
} mpi_comm;

/* What a pending operation still needs at completion. */
typedef enum pending_kind {
    PENDING_PLAIN = 0,
    /* a receive: check that the message filled all `count` elements */
    PENDING_RECV,
    /* an in-place reduce_scatter: MPI leaves the result in block 0, the
     * interface promises it in block `rank`, so move it there */
    PENDING_MOVE_BLOCK,
    /* finished when it was issued (the shared-memory all-reduce): no MPI
     * request to complete */
    PENDING_DONE
} pending_kind;

/* Lives in mhub_request.handle: copied in and out with memcpy, since the
 * handle is an array of uint64_t and not this type. */
typedef struct pending {
    MPI_Request request;
    int32_t kind;
    int32_t dtype;
    char *base;     /* PENDING_MOVE_BLOCK: the reduce_scatter buffer */
    int64_t count;  /* elements: the block (MOVE_BLOCK) or the receive (RECV) */
} pending;

static_assert(sizeof(pending) <= sizeof(((mhub_request *)0)->handle),
              "the MPI request state must fit in mhub_request.handle");

/* ---- the 16-bit types and their reductions ------------------------------ */

static struct {
    bool ready;
    int keyval;
    MPI_Datatype bf16, f16;
    MPI_Op bf16_sum, bf16_max, f16_sum, f16_max;
} g16 = {.keyval = MPI_KEYVAL_INVALID};

/* MPI reduction callbacks: inout[i] = in[i] (op) inout[i]. Sums round the
 * f32 result back once; a maximum is one of its inputs, so it keeps the
 * winner's bits untouched. */
static void bf16_sum(void *in, void *inout, mpi_count *len, MPI_Datatype *type)
{
    (void)type;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (mpi_count i = 0; i < *len; i++)
        b[i] = mhub_f32_to_bf16(mhub_bf16_to_f32(a[i]) + mhub_bf16_to_f32(b[i]));
}

static void bf16_max(void *in, void *inout, mpi_count *len, MPI_Datatype *type)
{
    (void)type;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (mpi_count i = 0; i < *len; i++)
        if (mhub_bf16_to_f32(a[i]) > mhub_bf16_to_f32(b[i]))
            b[i] = a[i];
}

static void f16_sum(void *in, void *inout, mpi_count *len, MPI_Datatype *type)
{
    (void)type;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (mpi_count i = 0; i < *len; i++)
        b[i] = mhub_f32_to_f16(mhub_f16_to_f32(a[i]) + mhub_f16_to_f32(b[i]));
}

static void f16_max(void *in, void *inout, mpi_count *len, MPI_Datatype *type)
{
    (void)type;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (mpi_count i = 0; i < *len; i++)
        if (mhub_f16_to_f32(a[i]) > mhub_f16_to_f32(b[i]))
            b[i] = a[i];
}

static void free_16bit(void)
{
    MPI_Datatype *types[] = {&g16.bf16, &g16.f16};
    MPI_Op *ops[] = {&g16.bf16_sum, &g16.bf16_max, &g16.f16_sum, &g16.f16_max};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (*types[i] != MPI_DATATYPE_NULL)
            MPI_Type_free(types[i]);
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (*ops[i] != MPI_OP_NULL)
            MPI_Op_free(ops[i]);
    g16.ready = false;
}

/* MPI_Finalize deletes MPI_COMM_SELF's attributes before anything else, so
 * an attribute there is the portable hook for freeing our types and ops
 * while MPI still works. */
static int release_16bit(MPI_Comm comm, int keyval, void *value, void *extra)
{
    (void)comm;
    (void)value;
    (void)extra;
    free_16bit();
    int k = keyval;
    MPI_Comm_free_keyval(&k);
    g16.keyval = MPI_KEYVAL_INVALID;
    return MPI_SUCCESS;
}

static mhub_status init_error(const char *what, int rc)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return mhub_error(MHUB_ERR_COMM, "mhub_comm_create_mpi: %s failed: %s", what, msg);
}

static int make_16bit_type(MPI_Datatype *t)
{
    int rc = MPI_Type_contiguous(2, MPI_BYTE, t);
    return rc == MPI_SUCCESS ? MPI_Type_commit(t) : rc;
}

/* Runs on the thread that creates communicators, as MPI calls do. The
 * handles start as NULL so a failure half-way frees exactly what exists. */
static mhub_status ensure_16bit(void)
{
    if (g16.ready)
        return MHUB_OK;
    g16.bf16 = g16.f16 = MPI_DATATYPE_NULL;
    g16.bf16_sum = g16.bf16_max = g16.f16_sum = g16.f16_max = MPI_OP_NULL;
    int rc = make_16bit_type(&g16.bf16);
    if (rc == MPI_SUCCESS)
        rc = make_16bit_type(&g16.f16);
    if (rc == MPI_SUCCESS)
        rc = MPI_LC(MPI_Op_create)(bf16_sum, 1, &g16.bf16_sum);
    if (rc == MPI_SUCCESS)
        rc = MPI_LC(MPI_Op_create)(bf16_max, 1, &g16.bf16_max);
    if (rc == MPI_SUCCESS)
        rc = MPI_LC(MPI_Op_create)(f16_sum, 1, &g16.f16_sum);
    if (rc == MPI_SUCCESS)
        rc = MPI_LC(MPI_Op_create)(f16_max, 1, &g16.f16_max);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_create_keyval(MPI_COMM_NULL_COPY_FN, release_16bit, &g16.keyval, NULL);
    if (rc == MPI_SUCCESS) {
        rc = MPI_Comm_set_attr(MPI_COMM_SELF, g16.keyval, NULL);
        if (rc != MPI_SUCCESS) {
            MPI_Comm_free_keyval(&g16.keyval);
            g16.keyval = MPI_KEYVAL_INVALID;
        }
    }
    if (rc != MPI_SUCCESS) {
        free_16bit();
        return init_error("creating the bf16/f16 datatypes and reductions", rc);
    }
    g16.ready = true;
    return MHUB_OK;
}

static MPI_Datatype mpi_type(mhub_dtype dt)
{
    switch (dt) {
    case MHUB_F32: return MPI_FLOAT;
    case MHUB_BF16: return g16.bf16;
    case MHUB_F16: return g16.f16;
    }
    return MPI_DATATYPE_NULL;
}

/* MHUB_AVG sums here; comm.c divides afterwards. */
static MPI_Op mpi_op(mhub_dtype dt, mhub_reduce_op op)
{
    bool max = op == MHUB_MAX;
    switch (dt) {
    case MHUB_F32: return max ? MPI_MAX : MPI_SUM;
    case MHUB_BF16: return max ? g16.bf16_max : g16.bf16_sum;
    case MHUB_F16: return max ? g16.f16_max : g16.f16_sum;
    }
    return MPI_OP_NULL;
}

/* ---- errors and counts -------------------------------------------------- */

static mhub_status mpi_fail(const mhub_comm *c, const char *what, const char *call, int rc)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return mhub_error(MHUB_ERR_COMM, "%s: %s failed in group \"%s\" (rank %d of %d): %s", what,
                      call, c->name, c->rank, c->size, msg);
}

static mhub_status to_mpi_count(const mhub_comm *c, const char *what, int64_t count,
                                mpi_count *out)
{
#if LARGE_COUNT
    (void)c;
    (void)what;
#else
    if (count > INT_MAX)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: count %lld in group \"%s\" (rank %d) exceeds INT_MAX; this MPI "
                          "(version %d) has no large-count calls, so split the buffer",
                          what, (long long)count, c->name, c->rank, MPI_VERSION);
#endif
    *out = (mpi_count)count;
    return MHUB_OK;
}

static MPI_Comm comm_of(const mhub_comm *c)
{
    return ((const mpi_comm *)c->ctx)->comm;
}

static mhub_shm *shm_of(const mhub_comm *c)
{
    return ((const mpi_comm *)c->ctx)->shm;
}

static void store_pending(mhub_request *req, const pending *p)
{
    memcpy(req->handle, p, sizeof *p);
}

static pending load_pending(const mhub_request *req)
{
    pending p;
    memcpy(&p, req->handle, sizeof p);
    return p;
}

/* Record a started MPI call (or turn its failure into an mhub error). */
static mhub_status started(mhub_comm *c, mhub_request *req, const char *call, int rc,
                           const pending *p)
{
    if (rc != MPI_SUCCESS)
        return mpi_fail(c, req->what, call, rc);
    store_pending(req, p);
    return MHUB_OK;
}

/* ---- operations --------------------------------------------------------- */

/* The shared-memory path takes in-place f32 sums and averages of a range
 * inside this rank's slot of a window; it runs to completion now, so the
 * request is done at issue. It divides for MHUB_AVG itself (each rank its
 * own chunk), so the request's finish step has nothing left to do. */
static mhub_status try_shm_allreduce(mhub_comm *c, const void *send, void *recv, int64_t count,
                                     mhub_dtype dt, mhub_reduce_op op, mhub_request *req,
                                     bool *used)
{
    *used = false;
    if (shm_of(c) == NULL || send != recv || dt != MHUB_F32 || op == MHUB_MAX)
        return MHUB_OK;
    MHUB_TRY(mhub_shm_allreduce(c, shm_of(c), recv, count, req->finish_divisor, used));
    if (*used) {
        req->finish_divisor = 1.0f;
        pending p = {.kind = PENDING_DONE, .request = MPI_REQUEST_NULL};
        store_pending(req, &p);
    }
    return MHUB_OK;
}

static mhub_status mpi_iallreduce(mhub_comm *c, const void *send, void *recv, int64_t count,
                                  mhub_dtype dt, mhub_reduce_op op, mhub_request *req)
{
    bool used = false;
    MHUB_TRY(try_shm_allreduce(c, send, recv, count, dt, op, req, &used));
    if (used)
        return MHUB_OK;
    mpi_count n = 0;
    MHUB_TRY(to_mpi_count(c, req->what, count, &n));
    pending p = {.kind = PENDING_PLAIN};
    const void *src = send == recv ? MPI_IN_PLACE : send;
    int rc = MPI_LC(MPI_Iallreduce)(src, recv, n, mpi_type(dt), mpi_op(dt, op), comm_of(c),
                                    &p.request);
    return started(c, req, "MPI_Iallreduce", rc, &p);
}

/* MPI's in-place reduce_scatter reads the whole buffer and writes the
 * result to block 0; the interface's in-place form (recv at block `rank`)
 * is that call plus a move at completion. The other blocks hold whatever
 * MPI left there (block 0 a copy of the result): only block `rank` is defined. */
static mhub_status mpi_ireduce_scatter(mhub_comm *c, const void *send, void *recv,
                                       int64_t recv_count, mhub_dtype dt, mhub_reduce_op op,
                                       mhub_request *req)
{
    mpi_count n = 0;
    MHUB_TRY(to_mpi_count(c, req->what, recv_count, &n));
    size_t block = (size_t)recv_count * mhub_dtype_size(dt);
    bool inplace = (uintptr_t)send + (size_t)c->rank * block == (uintptr_t)recv;
    pending p = {.kind = PENDING_PLAIN};
    int rc;
    if (inplace) {
        if (c->rank > 0 && block > 0)
            p = (pending){.kind = PENDING_MOVE_BLOCK, .base = (char *)send, .count = recv_count,
                          .dtype = dt};
        rc = MPI_LC(MPI_Ireduce_scatter_block)(MPI_IN_PLACE, (void *)send, n, mpi_type(dt),
                                               mpi_op(dt, op), comm_of(c), &p.request);
    } else {
        rc = MPI_LC(MPI_Ireduce_scatter_block)(send, recv, n, mpi_type(dt), mpi_op(dt, op),
                                               comm_of(c), &p.request);
    }
    return started(c, req, "MPI_Ireduce_scatter_block", rc, &p);
}

static mhub_status mpi_iallgather(mhub_comm *c, const void *send, void *recv,
                                  int64_t send_count, mhub_dtype dt, mhub_request *req)
{
    mpi_count n = 0;
    MHUB_TRY(to_mpi_count(c, req->what, send_count, &n));
    size_t block = (size_t)send_count * mhub_dtype_size(dt);
    bool inplace = (uintptr_t)recv + (size_t)c->rank * block == (uintptr_t)send;
    MPI_Datatype t = mpi_type(dt);
    pending p = {.kind = PENDING_PLAIN};
    int rc = inplace ? MPI_LC(MPI_Iallgather)(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recv, n, t,
                                              comm_of(c), &p.request)
                     : MPI_LC(MPI_Iallgather)(send, n, t, recv, n, t, comm_of(c), &p.request);
    return started(c, req, "MPI_Iallgather", rc, &p);
}

static mhub_status mpi_ibroadcast(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                                  int root, mhub_request *req)
{
    mpi_count n = 0;
    MHUB_TRY(to_mpi_count(c, req->what, count, &n));
    pending p = {.kind = PENDING_PLAIN};
    int rc = MPI_LC(MPI_Ibcast)(buf, n, mpi_type(dt), root, comm_of(c), &p.request);
    return started(c, req, "MPI_Ibcast", rc, &p);
}

static mhub_status mpi_isend(mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt,
                             int peer, int tag, mhub_request *req)
{
    mpi_count n = 0;
    MHUB_TRY(to_mpi_count(c, req->what, count, &n));
    pending p = {.kind = PENDING_PLAIN};
    int rc = MPI_LC(MPI_Isend)(buf, n, mpi_type(dt), peer, tag, comm_of(c), &p.request);
    return started(c, req, "MPI_Isend", rc, &p);
}

static mhub_status mpi_irecv(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt, int peer,
                             int tag, mhub_request *req)
{
    mpi_count n = 0;
    MHUB_TRY(to_mpi_count(c, req->what, count, &n));
    pending p = {.kind = PENDING_RECV, .count = count, .dtype = dt};
    int rc = MPI_LC(MPI_Irecv)(buf, n, mpi_type(dt), peer, tag, comm_of(c), &p.request);
    return started(c, req, "MPI_Irecv", rc, &p);
}

/* ---- completion --------------------------------------------------------- */

/* The interface has no way to report how much arrived, so a message shorter
 * than the receive buffer would leave stale data behind unnoticed. */
static mhub_status check_received(const mhub_comm *c, const mhub_request *req,
                                  const pending *p, const MPI_Status *st)
{
    mpi_count got = 0;
    int rc = MPI_LC(MPI_Get_count)(st, mpi_type((mhub_dtype)p->dtype), &got);
    if (rc != MPI_SUCCESS)
        return mpi_fail(c, req->what, "MPI_Get_count", rc);
    if ((int64_t)got != p->count)
        return mhub_error(MHUB_ERR_COMM,
                          "%s: group \"%s\" (rank %d of %d): received %lld elements from rank "
                          "%d (tag %d), expected %lld; send and recv counts must match",
                          req->what, c->name, c->rank, c->size, (long long)got, st->MPI_SOURCE,
                          st->MPI_TAG, (long long)p->count);
    return MHUB_OK;
}

static mhub_status complete(const mhub_comm *c, const mhub_request *req, const pending *p,
                            const MPI_Status *st)
{
    if (p->kind == PENDING_RECV)
        return check_received(c, req, p, st);
    if (p->kind == PENDING_MOVE_BLOCK) {
        size_t block = (size_t)p->count * mhub_dtype_size((mhub_dtype)p->dtype);
        memcpy(p->base + (size_t)c->rank * block, p->base, block);
    }
    return MHUB_OK;
}

/* One poll. MPI_Test frees the request when it reports completion, and also
 * when it fails, so either way the request is gone afterwards. */
static mhub_status poll_once(mhub_comm *c, mhub_request *req, bool *done)
{
    pending p = load_pending(req);
    MPI_Status st;
    int flag = 0;
    int rc = MPI_Test(&p.request, &flag, &st);
    store_pending(req, &p);
    if (rc != MPI_SUCCESS) {
        *done = true;
        return mpi_fail(c, req->what, "MPI_Test", rc);
    }
    *done = flag != 0;
    return *done ? complete(c, req, &p, &st) : MHUB_OK;
}

/* MPICH 4.0 reports a failed completion (a truncated receive, say) to
 * MPI_COMM_WORLD's error handler instead of the request communicator's, as
 * MPI 4.0 asks, and world's default handler aborts the job. So world's
 * handler is MPI_ERRORS_RETURN while a request completes here, and the
 * caller's own is put back before returning: the caller's code does not
 * run in between (unless another thread makes MPI calls meanwhile). */
typedef struct world_errors {
    MPI_Errhandler saved;
    bool swapped;
} world_errors;

static void world_errors_return(world_errors *w)
{
    w->swapped = MPI_Comm_get_errhandler(MPI_COMM_WORLD, &w->saved) == MPI_SUCCESS;
    if (w->swapped)
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
}

static void world_errors_restore(world_errors *w)
{
    if (!w->swapped)
        return;
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, w->saved);
    MPI_Errhandler_free(&w->saved);
}

/* Why poll and yield instead of MPI_Wait: with more ranks than cores
 * (mpiexec -n 4 on 2 cores), MPICH's blocking wait spins and only gives up
 * the core at the scheduler tick, so a 4 KiB allreduce took 8-11 ms. Polling
 * with MPI_Test and calling sched_yield() between polls hands the core to
 * the rank that has work: ~70 us for the same collective. A nanosleep(1 us)
 * loop was 10x worse (771 us). With a core per rank, the first polls spin
 * without the yield's system call, as MPI's own blocking wait does: that
 * brought a 1 MiB allgather at 2 ranks from 0.95 to 0.99 of
 * MPI_Allgather's bandwidth. Oversubscribed, spinning only delays the
 * rank with work (4 KiB allreduce at 4 ranks on 2 cores: 34 us with no
 * spin, 45 us with 200 polls), so there the spin is 0. */
static mhub_status wait_for(mhub_comm *c, mhub_request *req)
{
    int spin = ((const mpi_comm *)c->ctx)->spin_polls;
    world_errors w;
    world_errors_return(&w);
    mhub_status s;
    for (int polls = 0;; polls++) {
        bool done = false;
        s = poll_once(c, req, &done);
        if (done || s != MHUB_OK)
            break;
        if (polls >= spin)
            sched_yield();
    }
    world_errors_restore(&w);
    return s;
}

static bool done_at_issue(const mhub_request *req)
{
    return load_pending(req).kind == PENDING_DONE;
}

static mhub_status mpi_wait(mhub_comm *c, mhub_request *req)
{
    if (done_at_issue(req))
        return MHUB_OK;
    return wait_for(c, req);
}

static mhub_status mpi_test(mhub_comm *c, mhub_request *req, bool *done)
{
    if (done_at_issue(req)) {
        *done = true;
        return MHUB_OK;
    }
    world_errors w;
    world_errors_return(&w);
    mhub_status s = poll_once(c, req, done);
    world_errors_restore(&w);
    return s;
}

static mhub_status mpi_barrier(mhub_comm *c)
{
    mhub_request req = {.comm = c, .what = "barrier"};
    pending p = {.kind = PENDING_PLAIN};
    int rc = MPI_Ibarrier(comm_of(c), &p.request);
    MHUB_TRY(started(c, &req, "MPI_Ibarrier", rc, &p));
    return wait_for(c, &req);
}

/* ---- the reduce-scatter algorithm --------------------------------------- */

/* MPICH 4.0 runs a nonblocking reduce-scatter by recursive halving, which
 * on one node was 25% slower than its blocking call at 1 MiB (106 vs 79 us,
 * 2 ranks); its pairwise exchange matches the blocking call. The choice is
 * the control variable below, which MPI_T can set after MPI_Init. It holds
 * for the whole process, the application's own MPI_Ireduce_scatter_block
 * included; a user who sets the variable in the environment keeps that
 * setting. Its value is the position of a name in the variable's list of
 * choices, and MPICH has no MPI_T enumeration for it, so the position is
 * read from the description text. Another MPI lacks the variable and is
 * left alone. */
#if MPI_VERSION > 3 || (MPI_VERSION == 3 && MPI_SUBVERSION >= 1) /* MPI_T_cvar_get_index */
#define RS_ALGORITHM_CVAR "IREDUCE_SCATTER_BLOCK_INTRA_ALGORITHM"
#define RS_PREFERRED_CHOICE "sched_pairwise"

/* A setting of the user's wins: MPICH reads its variables under any of
 * these prefixes. */
static bool rs_algorithm_set_by_user(void)
{
    const char *prefixes[] = {"MPIR_CVAR_", "MPICH_", "MPIR_PARAM_"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        char name[96];
        snprintf(name, sizeof name, "%s%s", prefixes[i], RS_ALGORITHM_CVAR);
        if (getenv(name) != NULL)
            return true;
    }
    return false;
}

static bool is_name_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_';
}

/* The position of `choice` among the choices the description lists, or -1.
 * MPICH writes each choice as "name - what it does" and joins the lines
 * without a separator ("...doubling algorithmsched_pairwise   - Force
 * pairwise algorithm..."), so a choice is the end of the word before a
 * " - ", and its position is the number of " - " before it. */
static int choice_position(const char *desc, const char *choice)
{
    size_t len = strlen(choice);
    int position = 0;
    for (const char *dash = strstr(desc, " - "); dash != NULL; dash = strstr(dash + 3, " - ")) {
        const char *end = dash;
        while (end > desc && end[-1] == ' ')
            end--;
        const char *start = end;
        while (start > desc && is_name_char(start[-1]))
            start--;
        if ((size_t)(end - start) >= len && memcmp(end - len, choice, len) == 0)
            return position;
        position++;
    }
    return -1;
}

/* Write the position of `choice` into the int variable at `index`. */
static void write_choice(int index, const char *choice)
{
    char name[128], desc[4096];
    int name_len = sizeof name, desc_len = sizeof desc, verbosity, bind, scope;
    MPI_Datatype type;
    MPI_T_enum enumtype;
    if (MPI_T_cvar_get_info(index, name, &name_len, &verbosity, &type, &enumtype, desc,
                            &desc_len, &bind, &scope) != MPI_SUCCESS ||
        type != MPI_INT || bind != MPI_T_BIND_NO_OBJECT)
        return;
    int value = choice_position(desc, choice);
    if (value < 0)
        return;
    MPI_T_cvar_handle handle;
    int count = 0;
    if (MPI_T_cvar_handle_alloc(index, NULL, &handle, &count) != MPI_SUCCESS)
        return;
    if (count == 1)
        MPI_T_cvar_write(handle, &value);
    MPI_T_cvar_handle_free(&handle);
}

/* Best effort, once per process: every failure leaves MPI's own choice.
 * MPI_T stays initialised (no MPI_T_finalize): once MPICH 4.0 has
 * finalised MPI_T, a later MPI_T_init_thread no longer finds any variable
 * by name, which would break the application's own MPI_T use. */
static void prefer_pairwise_reduce_scatter(void)
{
    static bool tried;
    if (tried)
        return;
    tried = true;
    if (rs_algorithm_set_by_user())
        return;
    int provided = 0;
    if (MPI_T_init_thread(MPI_THREAD_SINGLE, &provided) != MPI_SUCCESS)
        return;
    int index = -1;
    if (MPI_T_cvar_get_index("MPIR_CVAR_" RS_ALGORITHM_CVAR, &index) == MPI_SUCCESS)
        write_choice(index, RS_PREFERRED_CHOICE);
}
#else
static void prefer_pairwise_reduce_scatter(void) {}
#endif

/* ---- communicators ------------------------------------------------------ */

static const mhub_comm_ops mpi_comm_ops;

/* Polls a wait spins before it yields: SPIN_POLLS when the ranks of comm
 * on this node have a core each, else 0. Collective over comm (a
 * shared-memory split). Decided for the communicator an application
 * hands in (usually MPI_COMM_WORLD, so it counts every rank on the node)
 * and inherited by the groups split from it: a small group of an
 * oversubscribed node must not spin. */
#define SPIN_POLLS 1000

static int spin_polls_for(MPI_Comm comm)
{
    MPI_Comm node = MPI_COMM_NULL;
    int local = 0;
    if (MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS)
        return 0;
    int rc = MPI_Comm_size(node, &local);
    MPI_Comm_free(&node);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    return rc == MPI_SUCCESS && cores > 0 && local <= cores ? SPIN_POLLS : 0;
}

/* Take ownership of `comm` (freed here on failure). */
static mhub_status wrap(MPI_Comm comm, const char *name, const char *what, mhub_comm **out)
{
    mpi_comm *m = calloc(1, sizeof *m);
    if (m == NULL) {
        MPI_Comm_free(&comm);
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: out of memory for communicator \"%s\"", what,
                          name);
    }
    m->comm = comm;
    m->base.ops = &mpi_comm_ops;
    m->base.ctx = m;
    snprintf(m->base.name, sizeof m->base.name, "%s", name);
    int rc = MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_rank(comm, &m->base.rank);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_size(comm, &m->base.size);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_set_name(comm, m->base.name);
    if (rc != MPI_SUCCESS) {
        mhub_status s = mpi_fail(&m->base, what, "setting up the communicator", rc);
        MPI_Comm_free(&m->comm);
        free(m);
        return s;
    }
    *out = &m->base;
    return MHUB_OK;
}

static mhub_status mpi_split(mhub_comm *c, int color, int key, const char *name,
                             mhub_comm **out)
{
    MPI_Comm sub = MPI_COMM_NULL;
    int rc = MPI_Comm_split(comm_of(c), color < 0 ? MPI_UNDEFINED : color, key, &sub);
    if (rc != MPI_SUCCESS)
        return mpi_fail(c, "split", "MPI_Comm_split", rc);
    if (sub == MPI_COMM_NULL) {
        *out = NULL;
        return MHUB_OK;
    }
    MHUB_TRY(wrap(sub, name, "split", out));
    ((mpi_comm *)(*out)->ctx)->spin_polls = ((const mpi_comm *)c->ctx)->spin_polls;
    return MHUB_OK;
}

static mhub_status mpi_alloc(mhub_comm *c, size_t bytes, void **out)
{
    mpi_comm *m = c->ctx;
    return mhub_shm_alloc(c, m->comm, &m->shm, bytes, out);
}

static void mpi_free_mem(mhub_comm *c, void *ptr)
{
    mhub_shm_free(c, shm_of(c), ptr);
}

/* After MPI_Finalize the MPI handles are already gone with MPI itself;
 * only our memory is left to free. Windows still allocated are freed here
 * (collectively, as destroy is on every rank). */
static void mpi_destroy(mhub_comm *c)
{
    mpi_comm *m = c->ctx;
    int finalized = 0;
    MPI_Finalized(&finalized);
    mhub_shm_destroy(m->shm, !finalized);
    if (!finalized)
        MPI_Comm_free(&m->comm);
    free(m);
}

static const mhub_comm_ops mpi_comm_ops = {
    .iallreduce = mpi_iallreduce,
    .ireduce_scatter = mpi_ireduce_scatter,
    .iallgather = mpi_iallgather,
    .ibroadcast = mpi_ibroadcast,
    .isend = mpi_isend,
    .irecv = mpi_irecv,
    .wait = mpi_wait,
    .test = mpi_test,
    .barrier = mpi_barrier,
    .split = mpi_split,
    .destroy = mpi_destroy,
    .alloc = mpi_alloc,
    .free_mem = mpi_free_mem,
};

static mhub_status check_mpi_ready(const char *call)
{
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized)
        return mhub_error(MHUB_ERR_STATE,
                          "%s: MPI is %s; call it between MPI_Init and MPI_Finalize", call,
                          finalized ? "already finalized" : "not initialised");
    return MHUB_OK;
}

mhub_status mhub_comm_create_mpi(const void *mpi_comm_ptr, const char *name, mhub_comm **out)
{
    const char *call = "mhub_comm_create_mpi";
    if (out == NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: out is NULL", call);
    *out = NULL;
    if (mpi_comm_ptr == NULL || name == NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: %s is NULL", call,
                          name == NULL ? "name" : "mpi_comm");
    if (strlen(name) >= sizeof((mhub_comm *)0)->name)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: name \"%s\" is longer than %zu characters",
                          call, name, sizeof((mhub_comm *)0)->name - 1);
    MHUB_TRY(check_mpi_ready(call));
    MPI_Comm parent = *(const MPI_Comm *)mpi_comm_ptr;
    if (parent == MPI_COMM_NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: mpi_comm is MPI_COMM_NULL (group \"%s\")",
                          call, name);
    MHUB_TRY(ensure_16bit());
    prefer_pairwise_reduce_scatter();
    MPI_Comm dup = MPI_COMM_NULL;
    int rc = MPI_Comm_dup(parent, &dup);
    if (rc != MPI_SUCCESS)
        return init_error("MPI_Comm_dup", rc);
    int spin = spin_polls_for(dup);
    MHUB_TRY(wrap(dup, name, call, out));
    ((mpi_comm *)(*out)->ctx)->spin_polls = spin;
    return MHUB_OK;
}

mhub_status mhub_comm_create_mpi_world(mhub_comm **out)
{
    MPI_Comm world = MPI_COMM_WORLD;
    return mhub_comm_create_mpi(&world, "world", out);
}
