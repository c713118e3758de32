/* nccl_comm.c - the NCCL communicator: comm.h's ops for device memory.
 *
 * One mhub_comm joins three things made over the same MPI communicator:
 * an NCCL communicator on the CUDA backend's device, a duplicate of the
 * MPI communicator (for split and for agreeing on failures), and an inner
 * MPI mhub_comm. Every operation looks at where its buffers live: device
 * (or managed) memory goes through NCCL, host memory through the inner MPI
 * communicator, since the core sends its small control messages (agreement
 * flags, loss sums, digests) through the same communicator as the device
 * gradients. One buffer of each kind in one call is an argument error.
 *
 * Ordering. NCCL runs on a stream of this communicator. An operation
 * records an event on the backend's compute stream and makes the
 * communication stream wait for it, so the collective reads what the
 * kernels issued before it wrote; the operation's own completion event is
 * recorded after the NCCL call. mhub_request_wait makes the compute stream
 * wait for that event and returns at once: the host never blocks, and the
 * kernels issued after the wait read the result. So a gradient bucket's
 * reduction overlaps the backward pass still running on the compute stream.
 *
 * Requests. The state of a pending operation (its two events, or the inner
 * MPI request) lives in a slot from a pool the communicator grows in
 * chunks and never shrinks: mhub_request.handle[0] points at the slot, or
 * is 0 for an operation that had nothing to move. A training step that
 * keeps the same number of requests in flight allocates nothing.
 *
 * Point to point. NCCL pairs the sends and receives between two ranks in
 * the order they are issued and has no tags (tags are checked, >= 0, and
 * otherwise unused), and a send and a receive with the same peer issued
 * as separate calls would each wait for the other rank's matching call on
 * one stream: a deadlock. So isend and irecv on device memory only queue
 * the operation; the queue is issued as one ncclGroupStart/End group at
 * the next wait, test, collective, barrier, split or destroy on this
 * communicator. Unlike MPI's, a queued send therefore does not progress
 * behind a later collective on the same communicator: the group is issued
 * before it, on one stream, so every rank must post its sends and
 * receives in the same order relative to its collectives. NCCL cannot
 * tell a receive that its message was shorter: on device memory, send and
 * receive counts must match (comm.h's contract) without being checked.
 *
 * No hang on failure. Creation agrees on every step's success over MPI
 * before the next collective step, so a rank that fails does not leave the
 * others waiting in NCCL's initialisation. Waits on the host (barrier,
 * destroy) poll the stream's progress and NCCL's asynchronous error and
 * give up after MHUB_NCCL_TIMEOUT_S seconds (default 600), aborting the
 * NCCL communicator; every later operation on it then fails at once, and
 * so does the wait or test of one still pending (the abort may have cut
 * it short).
 * Errors name the group, the rank, the call and NCCL's or CUDA's text. */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include "backends/cuda/cuda_internal.h"
#include "mhub/comm.h"

#define DEFAULT_TIMEOUT_S 600.0
#define TIMEOUT_ENV "MHUB_NCCL_TIMEOUT_S"
/* Slots added to the pool at a time; the first chunk is made at creation,
 * enough for a DDP step's buckets in flight. */
#define SLOTS_PER_CHUNK 32

/* What a slot of the pool holds. */
typedef enum slot_kind {
    SLOT_FREE = 0,
    SLOT_DEVICE,   /* issued to NCCL: `done` marks completion */
    SLOT_QUEUED,   /* a device send or receive waiting for the next group */
    SLOT_FAILED,   /* its group failed at issue: `failure` says how */
    SLOT_HOST      /* host memory: `host_req` is the inner MPI request */
} slot_kind;

typedef struct slot {
    struct slot *next;       /* in the free list or the send/receive queue */
    slot_kind kind;
    cudaEvent_t ready;       /* on the compute stream: the inputs are written */
    cudaEvent_t done;        /* on the communication stream: the transfer ended */
    mhub_request host_req;   /* SLOT_HOST */
    /* SLOT_QUEUED: the call to issue in the next group */
    bool is_send;
    void *buf;
    size_t count;
    ncclDataType_t type;
    int peer;
    /* SLOT_FAILED */
    const char *failed_call;
    ncclResult_t failure;
} slot;

typedef struct slot_chunk {
    struct slot_chunk *next;
    slot slots[SLOTS_PER_CHUNK];
} slot_chunk;

typedef struct nccl_comm {
    mhub_comm base;
    ncclComm_t nccl;         /* NULL once aborted */
    MPI_Comm mpi;            /* our duplicate, for split */
    mhub_comm *host;         /* the inner MPI communicator */
    mhub_backend *be;
    int device;
    cudaStream_t compute;    /* the backend's */
    cudaStream_t stream;     /* ours, for NCCL */
    cudaEvent_t drained;     /* marks the stream's end for host waits */
    bool stream_made, drained_made;
    slot *free_slots;
    slot_chunk *chunks;
    slot *queue_head, *queue_tail;
    double timeout_s;
    const char *last_call;   /* the latest NCCL call on the stream, for errors */
    bool aborted;
} nccl_comm;

static nccl_comm *ctx_of(const mhub_comm *c)
{
    return (nccl_comm *)c->ctx;
}

/* ---- errors ------------------------------------------------------------- */

static mhub_status nccl_fail(const nccl_comm *n, const char *what, const char *call,
                             ncclResult_t rc)
{
    const char *detail = ncclGetLastError(n->nccl);
    return mhub_error(MHUB_ERR_COMM, "%s: %s failed in group \"%s\" (rank %d of %d, device %d): "
                      "%s%s%s",
                      what, call, n->base.name, n->base.rank, n->base.size, n->device,
                      ncclGetErrorString(rc), detail && detail[0] ? ": " : "",
                      detail ? detail : "");
}

static mhub_status cuda_fail(const nccl_comm *n, const char *what, const char *call,
                             cudaError_t err)
{
    return mhub_error(MHUB_ERR_COMM, "%s: %s failed in group \"%s\" (rank %d of %d, device %d): "
                      "%s (%s)",
                      what, call, n->base.name, n->base.rank, n->base.size, n->device,
                      cudaGetErrorString(err), cudaGetErrorName(err));
}

#define CUDA_CALL(n, what, call)                                          \
    do {                                                                  \
        cudaError_t nccl_comm_err_ = (call);                              \
        if (nccl_comm_err_ != cudaSuccess)                                \
            return cuda_fail((n), (what), #call, nccl_comm_err_);          \
    } while (0)

static mhub_status mpi_fail(const nccl_comm *n, const char *what, const char *call, int rc)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return mhub_error(MHUB_ERR_COMM, "%s: %s failed in group \"%s\" (rank %d of %d): %s", what,
                      call, n->base.name, n->base.rank, n->base.size, msg);
}

/* After an abort the NCCL communicator is gone; say so instead of touching it. */
static mhub_status check_usable(const nccl_comm *n, const char *what)
{
    if (!n->aborted)
        return MHUB_OK;
    return mhub_error(MHUB_ERR_STATE,
                      "%s: the NCCL communicator of group \"%s\" (rank %d of %d) was aborted "
                      "after an earlier failure; free it and create a new one",
                      what, n->base.name, n->base.rank, n->base.size);
}

/* ---- the slot pool ------------------------------------------------------ */

static void destroy_chunk_events(slot_chunk *ch)
{
    for (int i = 0; i < SLOTS_PER_CHUNK; i++) {
        if (ch->slots[i].ready)
            cudaEventDestroy(ch->slots[i].ready);
        if (ch->slots[i].done)
            cudaEventDestroy(ch->slots[i].done);
    }
}

/* Timing is off: these events only order streams, and such events are
 * the cheapest to record and wait on. */
static mhub_status grow_pool(nccl_comm *n, const char *what)
{
    slot_chunk *ch = calloc(1, sizeof *ch);
    if (ch == NULL)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: out of memory for request slots in group "
                          "\"%s\" (rank %d)", what, n->base.name, n->base.rank);
    for (int i = 0; i < SLOTS_PER_CHUNK; i++) {
        slot *s = &ch->slots[i];
        cudaError_t err = cudaEventCreateWithFlags(&s->ready, cudaEventDisableTiming);
        if (err == cudaSuccess)
            err = cudaEventCreateWithFlags(&s->done, cudaEventDisableTiming);
        if (err != cudaSuccess) {
            destroy_chunk_events(ch);
            free(ch);
            return cuda_fail(n, what, "cudaEventCreateWithFlags", err);
        }
    }
    for (int i = SLOTS_PER_CHUNK - 1; i >= 0; i--) {
        ch->slots[i].next = n->free_slots;
        n->free_slots = &ch->slots[i];
    }
    ch->next = n->chunks;
    n->chunks = ch;
    return MHUB_OK;
}

static mhub_status take_slot(nccl_comm *n, const char *what, slot_kind kind, slot **out)
{
    if (n->free_slots == NULL)
        MHUB_TRY(grow_pool(n, what));
    slot *s = n->free_slots;
    n->free_slots = s->next;
    s->next = NULL;
    s->kind = kind;
    *out = s;
    return MHUB_OK;
}

static void release_slot(nccl_comm *n, slot *s)
{
    s->kind = SLOT_FREE;
    s->next = n->free_slots;
    n->free_slots = s;
}

static void free_pool(nccl_comm *n)
{
    while (n->chunks != NULL) {
        slot_chunk *ch = n->chunks;
        n->chunks = ch->next;
        destroy_chunk_events(ch);
        free(ch);
    }
    n->free_slots = NULL;
}

/* The handle is an array of uint64_t; the slot pointer goes in word 0. */
static void store_slot(mhub_request *req, const slot *s)
{
    req->handle[0] = (uint64_t)(uintptr_t)s;
}

static slot *load_slot(const mhub_request *req)
{
    return (slot *)(uintptr_t)req->handle[0];
}

/* ---- where buffers live ------------------------------------------------- */

typedef enum memory_side { SIDE_HOST, SIDE_DEVICE } memory_side;

/* Device memory must be this communicator's device; managed memory is
 * reachable from any device, and all other memory (pageable or pinned) is
 * the host's. */
static mhub_status side_of(const nccl_comm *n, const char *what, const char *arg, const void *p,
                           memory_side *out)
{
    struct cudaPointerAttributes a;
    cudaError_t err = cudaPointerGetAttributes(&a, p);
    if (err != cudaSuccess)
        return cuda_fail(n, what, "cudaPointerGetAttributes", err);
    if (a.type == cudaMemoryTypeManaged) {
        *out = SIDE_DEVICE;
    } else if (a.type == cudaMemoryTypeDevice) {
        if (a.device != n->device)
            return mhub_error(MHUB_ERR_INVALID_ARG,
                              "%s: %s %p is memory of device %d, but group \"%s\" (rank %d of "
                              "%d) communicates on device %d",
                              what, arg, p, a.device, n->base.name, n->base.rank, n->base.size,
                              n->device);
        *out = SIDE_DEVICE;
    } else {
        *out = SIDE_HOST;
    }
    return MHUB_OK;
}

static mhub_status side_of_pair(const nccl_comm *n, const char *what, const void *send,
                                const void *recv, memory_side *out)
{
    memory_side s = SIDE_HOST, r = SIDE_HOST;
    MHUB_TRY(side_of(n, what, "send", send, &s));
    MHUB_TRY(side_of(n, what, "recv", recv, &r));
    if (s != r)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "%s: send %p is %s memory but recv %p is %s memory (group \"%s\", rank "
                          "%d of %d); both must be device memory (NCCL) or both host memory "
                          "(MPI)",
                          what, send, s == SIDE_HOST ? "host" : "device", recv,
                          r == SIDE_HOST ? "host" : "device", n->base.name, n->base.rank,
                          n->base.size);
    *out = s;
    return MHUB_OK;
}

/* ---- NCCL's names for types and reductions ------------------------------ */

static ncclDataType_t nccl_type(mhub_dtype dt)
{
    switch (dt) {
    case MHUB_F32: return ncclFloat32;
    case MHUB_BF16: return ncclBfloat16;
    case MHUB_F16: return ncclFloat16;
    }
    return ncclFloat32; /* not reached: comm.c checked dt */
}

static ncclRedOp_t nccl_op(mhub_reduce_op op)
{
    switch (op) {
    case MHUB_SUM: return ncclSum;
    case MHUB_AVG: return ncclAvg;
    case MHUB_MAX: return ncclMax;
    }
    return ncclSum; /* not reached: comm.c checked op */
}

/* ---- waiting on the host ------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Abort the NCCL communicator (which also ends its kernels still waiting
 * for peers) and report `why`. */
static mhub_status abort_with(nccl_comm *n, const char *what, mhub_status code, const char *why)
{
    if (n->nccl != NULL)
        ncclCommAbort(n->nccl);
    n->nccl = NULL;
    n->aborted = true;
    return mhub_error(code, "%s: %s in group \"%s\" (rank %d of %d, device %d; latest NCCL call "
                      "%s); the NCCL communicator was aborted",
                      what, why, n->base.name, n->base.rank, n->base.size, n->device,
                      n->last_call ? n->last_call : "none");
}

/* An asynchronous NCCL failure (a peer that died, a network error) is
 * only seen by asking; it leaves the communicator unusable. */
static mhub_status check_async(nccl_comm *n, const char *what)
{
    ncclResult_t async = ncclSuccess;
    ncclResult_t rc = ncclCommGetAsyncError(n->nccl, &async);
    if (rc != ncclSuccess)
        return nccl_fail(n, what, "ncclCommGetAsyncError", rc);
    if (async == ncclSuccess || async == ncclInProgress)
        return MHUB_OK;
    char why[384];
    const char *detail = ncclGetLastError(n->nccl);
    snprintf(why, sizeof why, "NCCL reported an asynchronous error: %s%s%s",
             ncclGetErrorString(async), detail && detail[0] ? ": " : "", detail ? detail : "");
    return abort_with(n, what, MHUB_ERR_COMM, why);
}

/* Wait on the host for `ev`, yielding the core between polls (as the MPI
 * communicator's waits do), and abort after the timeout. */
static mhub_status wait_event_on_host(nccl_comm *n, const char *what, cudaEvent_t ev)
{
    double deadline = now_s() + n->timeout_s;
    for (;;) {
        cudaError_t err = cudaEventQuery(ev);
        if (err == cudaSuccess)
            return MHUB_OK;
        if (err != cudaErrorNotReady)
            return cuda_fail(n, what, "cudaEventQuery", err);
        MHUB_TRY(check_async(n, what));
        if (now_s() > deadline) {
            char why[160];
            snprintf(why, sizeof why, "timed out after %.0f s waiting for the communication "
                     "stream (" TIMEOUT_ENV " sets the limit)", n->timeout_s);
            return abort_with(n, what, MHUB_ERR_COMM, why);
        }
        sched_yield();
    }
}

/* Everything issued on the communication stream so far has finished. */
static mhub_status drain_stream(nccl_comm *n, const char *what)
{
    MHUB_TRY(check_usable(n, what));
    CUDA_CALL(n, what, cudaEventRecord(n->drained, n->stream));
    return wait_event_on_host(n, what, n->drained);
}

/* ---- issuing ------------------------------------------------------------ */

/* The communication stream starts `s`'s work only after everything issued
 * so far on the compute stream. */
static mhub_status after_compute(nccl_comm *n, const char *what, slot *s)
{
    CUDA_CALL(n, what, cudaEventRecord(s->ready, n->compute));
    CUDA_CALL(n, what, cudaStreamWaitEvent(n->stream, s->ready, 0));
    return MHUB_OK;
}

/* Mark every queued operation as failed in `call` with `rc`; each reports
 * it at its own wait or test. */
static void fail_queue(nccl_comm *n, const char *call, ncclResult_t rc)
{
    for (slot *s = n->queue_head; s != NULL; s = s->next) {
        s->kind = SLOT_FAILED;
        s->failed_call = call;
        s->failure = rc;
    }
}

static ncclResult_t issue_queued_calls(nccl_comm *n, const char **failed_call)
{
    for (slot *s = n->queue_head; s != NULL; s = s->next) {
        ncclResult_t rc = s->is_send
            ? ncclSend(s->buf, s->count, s->type, s->peer, n->nccl, n->stream)
            : ncclRecv(s->buf, s->count, s->type, s->peer, n->nccl, n->stream);
        if (rc != ncclSuccess) {
            *failed_call = s->is_send ? "ncclSend" : "ncclRecv";
            return rc;
        }
    }
    return ncclSuccess;
}

/* Issue the queued sends and receives as one group. Each queued request
 * recorded its `ready` event on the compute stream when it was posted;
 * the compute stream runs in order, so waiting for the newest covers them
 * all. A failure is recorded in the queued slots rather than returned, so
 * that the call which happened to issue the group (a collective, say) is
 * not the one to fail for it. */
static void issue_queue(nccl_comm *n)
{
    if (n->queue_head == NULL)
        return;
    const char *call = "ncclGroupStart";
    ncclResult_t rc = ncclInternalError;
    cudaError_t err = cudaStreamWaitEvent(n->stream, n->queue_tail->ready, 0);
    if (err != cudaSuccess) {
        call = "cudaStreamWaitEvent";
        rc = ncclUnhandledCudaError;
    } else if (n->aborted) {
        call = "ncclSend/ncclRecv (the communicator was aborted before they were issued)";
        rc = ncclInvalidUsage;
    } else if ((rc = ncclGroupStart()) == ncclSuccess) {
        ncclResult_t issued = issue_queued_calls(n, &call);
        /* the group must be closed whatever happened inside it */
        rc = ncclGroupEnd();
        if (issued != ncclSuccess)
            rc = issued;
        else if (rc != ncclSuccess)
            call = "ncclGroupEnd";
    }
    if (rc == ncclSuccess) {
        n->last_call = "ncclSend/ncclRecv group";
        for (slot *s = n->queue_head; s != NULL; s = s->next) {
            s->kind = SLOT_DEVICE;
            if (cudaEventRecord(s->done, n->stream) != cudaSuccess) {
                s->kind = SLOT_FAILED;
                s->failed_call = "cudaEventRecord";
                s->failure = ncclUnhandledCudaError;
            }
        }
    } else {
        fail_queue(n, call, rc);
    }
    /* the slots belong to their requests now; unlink them */
    slot *s = n->queue_head;
    while (s != NULL) {
        slot *next = s->next;
        s->next = NULL;
        s = next;
    }
    n->queue_head = n->queue_tail = NULL;
}

/* Start a device operation: queued sends and receives go first (they were
 * posted before it), then a slot ordered after the compute stream. */
static mhub_status device_begin(nccl_comm *n, const char *what, slot **out)
{
    MHUB_TRY(check_usable(n, what));
    issue_queue(n);
    slot *s = NULL;
    MHUB_TRY(take_slot(n, what, SLOT_DEVICE, &s));
    mhub_status st = after_compute(n, what, s);
    if (st != MHUB_OK) {
        release_slot(n, s);
        return st;
    }
    *out = s;
    return MHUB_OK;
}

/* Finish starting a device operation whose NCCL call returned `rc`. */
static mhub_status device_end(nccl_comm *n, mhub_request *req, slot *s, const char *call,
                              ncclResult_t rc)
{
    if (rc != ncclSuccess) {
        release_slot(n, s);
        return nccl_fail(n, req->what, call, rc);
    }
    n->last_call = call;
    cudaError_t err = cudaEventRecord(s->done, n->stream);
    if (err != cudaSuccess) {
        release_slot(n, s);
        return cuda_fail(n, req->what, "cudaEventRecord", err);
    }
    store_slot(req, s);
    return MHUB_OK;
}

/* Host memory: a slot holding the inner MPI communicator's request, which
 * runs its own finish step (MHUB_AVG's division) when it completes. */
static mhub_status host_begin(nccl_comm *n, mhub_request *req, slot **out)
{
    slot *s = NULL;
    MHUB_TRY(take_slot(n, req->what, SLOT_HOST, &s));
    memset(&s->host_req, 0, sizeof s->host_req);
    req->finish_divisor = 1.0f;
    *out = s;
    return MHUB_OK;
}

static mhub_status host_end(nccl_comm *n, mhub_request *req, slot *s, mhub_status st)
{
    if (st != MHUB_OK) {
        release_slot(n, s);
        return st;
    }
    store_slot(req, s);
    return MHUB_OK;
}

/* ---- operations --------------------------------------------------------- */

/* An operation with nothing to move leaves handle[0] = 0 and needs no
 * communication: every rank passes the same count to a collective, and
 * send and receive counts match, so every rank involved skips alike. */

static mhub_status nccl_iallreduce(mhub_comm *c, const void *send, void *recv, int64_t count,
                                   mhub_dtype dt, mhub_reduce_op op, mhub_request *req)
{
    nccl_comm *n = ctx_of(c);
    if (count == 0)
        return MHUB_OK;
    memory_side side = SIDE_HOST;
    MHUB_TRY(side_of_pair(n, req->what, send, recv, &side));
    slot *s = NULL;
    if (side == SIDE_HOST) {
        MHUB_TRY(host_begin(n, req, &s));
        return host_end(n, req, s,
                        mhub_comm_iallreduce(n->host, send, recv, count, dt, op, &s->host_req));
    }
    MHUB_TRY(device_begin(n, req->what, &s));
    req->finish_divisor = 1.0f; /* ncclAvg divides */
    ncclResult_t rc = ncclAllReduce(send, recv, (size_t)count, nccl_type(dt), nccl_op(op),
                                    n->nccl, n->stream);
    return device_end(n, req, s, "ncclAllReduce", rc);
}

/* NCCL's in-place reduce-scatter is comm.h's: recv == send + rank * count. */
static mhub_status nccl_ireduce_scatter(mhub_comm *c, const void *send, void *recv,
                                        int64_t recv_count, mhub_dtype dt, mhub_reduce_op op,
                                        mhub_request *req)
{
    nccl_comm *n = ctx_of(c);
    if (recv_count == 0)
        return MHUB_OK;
    memory_side side = SIDE_HOST;
    MHUB_TRY(side_of_pair(n, req->what, send, recv, &side));
    slot *s = NULL;
    if (side == SIDE_HOST) {
        MHUB_TRY(host_begin(n, req, &s));
        return host_end(n, req, s,
                        mhub_comm_ireduce_scatter(n->host, send, recv, recv_count, dt, op,
                                                  &s->host_req));
    }
    MHUB_TRY(device_begin(n, req->what, &s));
    req->finish_divisor = 1.0f;
    ncclResult_t rc = ncclReduceScatter(send, recv, (size_t)recv_count, nccl_type(dt),
                                        nccl_op(op), n->nccl, n->stream);
    return device_end(n, req, s, "ncclReduceScatter", rc);
}

/* NCCL's in-place all-gather is comm.h's: send == recv + rank * count. */
static mhub_status nccl_iallgather(mhub_comm *c, const void *send, void *recv,
                                   int64_t send_count, mhub_dtype dt, mhub_request *req)
{
    nccl_comm *n = ctx_of(c);
    if (send_count == 0)
        return MHUB_OK;
    memory_side side = SIDE_HOST;
    MHUB_TRY(side_of_pair(n, req->what, send, recv, &side));
    slot *s = NULL;
    if (side == SIDE_HOST) {
        MHUB_TRY(host_begin(n, req, &s));
        return host_end(n, req, s,
                        mhub_comm_iallgather(n->host, send, recv, send_count, dt, &s->host_req));
    }
    MHUB_TRY(device_begin(n, req->what, &s));
    ncclResult_t rc = ncclAllGather(send, recv, (size_t)send_count, nccl_type(dt), n->nccl,
                                    n->stream);
    return device_end(n, req, s, "ncclAllGather", rc);
}

static mhub_status nccl_ibroadcast(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                                   int root, mhub_request *req)
{
    nccl_comm *n = ctx_of(c);
    if (count == 0)
        return MHUB_OK;
    memory_side side = SIDE_HOST;
    MHUB_TRY(side_of(n, req->what, "buf", buf, &side));
    slot *s = NULL;
    if (side == SIDE_HOST) {
        MHUB_TRY(host_begin(n, req, &s));
        return host_end(n, req, s,
                        mhub_comm_ibroadcast(n->host, buf, count, dt, root, &s->host_req));
    }
    MHUB_TRY(device_begin(n, req->what, &s));
    ncclResult_t rc = ncclBroadcast(buf, buf, (size_t)count, nccl_type(dt), root, n->nccl,
                                    n->stream);
    return device_end(n, req, s, "ncclBroadcast", rc);
}

/* Queue a device send or receive for the next group (see the top of the
 * file). Its `ready` event is recorded now, when its input is known to
 * be issued on the compute stream. */
static mhub_status queue_p2p(nccl_comm *n, mhub_request *req, bool is_send, void *buf,
                             int64_t count, mhub_dtype dt, int peer)
{
    MHUB_TRY(check_usable(n, req->what));
    slot *s = NULL;
    MHUB_TRY(take_slot(n, req->what, SLOT_QUEUED, &s));
    cudaError_t err = cudaEventRecord(s->ready, n->compute);
    if (err != cudaSuccess) {
        release_slot(n, s);
        return cuda_fail(n, req->what, "cudaEventRecord", err);
    }
    s->is_send = is_send;
    s->buf = buf;
    s->count = (size_t)count;
    s->type = nccl_type(dt);
    s->peer = peer;
    if (n->queue_tail != NULL)
        n->queue_tail->next = s;
    else
        n->queue_head = s;
    n->queue_tail = s;
    store_slot(req, s);
    return MHUB_OK;
}

static mhub_status nccl_isend(mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt,
                              int peer, int tag, mhub_request *req)
{
    nccl_comm *n = ctx_of(c);
    if (count == 0)
        return MHUB_OK;
    memory_side side = SIDE_HOST;
    MHUB_TRY(side_of(n, req->what, "buf", buf, &side));
    if (side == SIDE_DEVICE)
        return queue_p2p(n, req, true, (void *)buf, count, dt, peer);
    slot *s = NULL;
    MHUB_TRY(host_begin(n, req, &s));
    return host_end(n, req, s, mhub_comm_isend(n->host, buf, count, dt, peer, tag, &s->host_req));
}

static mhub_status nccl_irecv(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt, int peer,
                              int tag, mhub_request *req)
{
    nccl_comm *n = ctx_of(c);
    if (count == 0)
        return MHUB_OK;
    memory_side side = SIDE_HOST;
    MHUB_TRY(side_of(n, req->what, "buf", buf, &side));
    if (side == SIDE_DEVICE)
        return queue_p2p(n, req, false, buf, count, dt, peer);
    slot *s = NULL;
    MHUB_TRY(host_begin(n, req, &s));
    return host_end(n, req, s, mhub_comm_irecv(n->host, buf, count, dt, peer, tag, &s->host_req));
}

/* ---- completion --------------------------------------------------------- */

static mhub_status slot_failure(const nccl_comm *n, const mhub_request *req, const slot *s)
{
    return nccl_fail(n, req->what, s->failed_call, s->failure);
}

/* The compute stream waits for the transfer; the host does not. */
static mhub_status nccl_wait(mhub_comm *c, mhub_request *req)
{
    nccl_comm *n = ctx_of(c);
    issue_queue(n);
    slot *s = load_slot(req);
    if (s == NULL)
        return MHUB_OK;
    mhub_status st = MHUB_OK;
    switch (s->kind) {
    case SLOT_HOST: st = mhub_request_wait(&s->host_req); break;
    case SLOT_FAILED: st = slot_failure(n, req, s); break;
    case SLOT_DEVICE: {
        /* the abort may have cut this transfer short: its result is not
         * one to compute with */
        st = check_usable(n, req->what);
        if (st != MHUB_OK)
            break;
        cudaError_t err = cudaStreamWaitEvent(n->compute, s->done, 0);
        if (err != cudaSuccess)
            st = cuda_fail(n, req->what, "cudaStreamWaitEvent", err);
        else
            st = check_async(n, req->what);
        break;
    }
    case SLOT_QUEUED: /* issue_queue above emptied the queue */
    case SLOT_FREE:
        st = mhub_error(MHUB_ERR_STATE, "%s: request of group \"%s\" (rank %d) refers to a "
                        "released slot; was it copied while pending?",
                        req->what, c->name, c->rank);
        break;
    }
    if (s->kind != SLOT_FREE)
        release_slot(n, s);
    return st;
}

static mhub_status test_device(nccl_comm *n, const mhub_request *req, const slot *s, bool *done)
{
    /* as at a wait: an aborted transfer is over, and failed */
    mhub_status st = check_usable(n, req->what);
    if (st != MHUB_OK) {
        *done = true;
        return st;
    }
    cudaError_t err = cudaEventQuery(s->done);
    if (err == cudaSuccess) {
        *done = true;
        return MHUB_OK;
    }
    if (err != cudaErrorNotReady) {
        *done = true;
        return cuda_fail(n, req->what, "cudaEventQuery", err);
    }
    st = check_async(n, req->what);
    *done = st != MHUB_OK;
    return st;
}

static mhub_status nccl_test(mhub_comm *c, mhub_request *req, bool *done)
{
    nccl_comm *n = ctx_of(c);
    issue_queue(n);
    slot *s = load_slot(req);
    *done = true;
    if (s == NULL)
        return MHUB_OK;
    mhub_status st;
    switch (s->kind) {
    case SLOT_HOST: st = mhub_request_test(&s->host_req, done); break;
    case SLOT_DEVICE: st = test_device(n, req, s, done); break;
    case SLOT_FAILED: st = slot_failure(n, req, s); break;
    default:
        return mhub_error(MHUB_ERR_STATE, "%s: request of group \"%s\" (rank %d) refers to a "
                          "released slot; was it copied while pending?",
                          req->what, c->name, c->rank);
    }
    if (st != MHUB_OK)
        *done = true;
    if (*done)
        release_slot(n, s);
    return st;
}

/* The MPI barrier runs even when draining failed: the other ranks are on
 * their way into it, and a barrier left short would hang them. */
static mhub_status nccl_barrier(mhub_comm *c)
{
    nccl_comm *n = ctx_of(c);
    issue_queue(n);
    mhub_status drained = drain_stream(n, "barrier");
    mhub_status st = mhub_comm_barrier(n->host);
    return drained != MHUB_OK ? drained : st;
}

/* ---- communicators ------------------------------------------------------ */

static const mhub_comm_ops nccl_comm_ops;

static mhub_status parse_timeout(const char *what, double *out)
{
    const char *v = getenv(TIMEOUT_ENV);
    *out = DEFAULT_TIMEOUT_S;
    if (v == NULL || v[0] == '\0')
        return MHUB_OK;
    char *end = NULL;
    errno = 0;
    double t = strtod(v, &end);
    if (errno != 0 || end == v || *end != '\0' || !(t > 0) || !isfinite(t))
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "%s: " TIMEOUT_ENV "=\"%s\" is not a positive number of seconds", what,
                          v);
    *out = t;
    return MHUB_OK;
}

/* The steps of creation that involve only this rank. */
static mhub_status prepare_local(nccl_comm *n, const char *what)
{
    MHUB_TRY(parse_timeout(what, &n->timeout_s));
    bool ok = false;
    n->compute = mhub_cuda_backend_stream(n->be, &ok);
    n->device = mhub_cuda_backend_device(n->be);
    if (!ok || n->device < 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "%s: backend \"%s\" of group \"%s\" (rank %d) is not a CUDA backend; "
                          "NCCL needs one (mhub_cuda_backend_create)",
                          what, n->be->name ? n->be->name : "?", n->base.name, n->base.rank);
    CUDA_CALL(n, what, cudaSetDevice(n->device));
    /* Highest priority: the collective's few blocks get scheduled ahead of
     * the compute kernels they are meant to overlap, instead of queueing
     * behind them. */
    int least = 0, greatest = 0;
    CUDA_CALL(n, what, cudaDeviceGetStreamPriorityRange(&least, &greatest));
    CUDA_CALL(n, what, cudaStreamCreateWithPriority(&n->stream, cudaStreamNonBlocking, greatest));
    n->stream_made = true;
    CUDA_CALL(n, what, cudaEventCreateWithFlags(&n->drained, cudaEventDisableTiming));
    n->drained_made = true;
    return grow_pool(n, what);
}

/* Frees what creation made so far; the NCCL communicator is aborted, not
 * destroyed, since its peers may never get as far as destroying theirs. */
static void release_partial(nccl_comm *n)
{
    if (n->nccl != NULL)
        ncclCommAbort(n->nccl);
    free_pool(n);
    if (n->drained_made)
        cudaEventDestroy(n->drained);
    if (n->stream_made)
        cudaStreamDestroy(n->stream);
    mhub_comm_free(n->host);
    if (n->mpi != MPI_COMM_NULL)
        MPI_Comm_free(&n->mpi);
    free(n);
}

/* Agree over `comm` on whether every rank's step succeeded. A rank that
 * failed keeps its own message; the others report the lowest failing rank.
 * Collective: every rank calls it, whatever happened before. */
static mhub_status agree(MPI_Comm comm, const char *what, const char *group, int rank,
                         const char *step, mhub_status mine)
{
    int my_flag = mine == MHUB_OK ? INT32_MAX : rank, lowest = INT32_MAX;
    int rc = MPI_Allreduce(&my_flag, &lowest, 1, MPI_INT, MPI_MIN, comm);
    if (mine != MHUB_OK)
        return mine;
    if (rc != MPI_SUCCESS)
        return mhub_error(MHUB_ERR_COMM, "%s: MPI_Allreduce agreeing on %s failed in group "
                          "\"%s\" (rank %d)", what, step, group, rank);
    if (lowest != INT32_MAX)
        return mhub_error(MHUB_ERR_COMM, "%s: %s failed on rank %d of group \"%s\" (see that "
                          "rank's error); rank %d gives up as well", what, step, lowest, group,
                          rank);
    return MHUB_OK;
}

/* Rank 0 makes the id; its outcome travels with it, so a failure there
 * stops every rank instead of sending them into NCCL with garbage. */
static mhub_status share_unique_id(nccl_comm *n, const char *what, ncclUniqueId *id)
{
    struct { int ok; ncclUniqueId id; } msg;
    memset(&msg, 0, sizeof msg);
    mhub_status mine = MHUB_OK;
    if (n->base.rank == 0) {
        ncclResult_t rc = ncclGetUniqueId(&msg.id);
        msg.ok = rc == ncclSuccess;
        if (rc != ncclSuccess)
            mine = nccl_fail(n, what, "ncclGetUniqueId", rc);
    }
    int rc = MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, 0, n->mpi);
    if (rc != MPI_SUCCESS)
        return mpi_fail(n, what, "MPI_Bcast of the NCCL unique id", rc);
    if (mine != MHUB_OK)
        return mine;
    if (!msg.ok)
        return mhub_error(MHUB_ERR_COMM, "%s: ncclGetUniqueId failed on rank 0 of group \"%s\" "
                          "(see that rank's error); rank %d gives up as well",
                          what, n->base.name, n->base.rank);
    *id = msg.id;
    return MHUB_OK;
}

static mhub_status init_nccl(nccl_comm *n, const char *what, ncclUniqueId id)
{
    ncclResult_t rc = ncclCommInitRank(&n->nccl, n->base.size, id, n->base.rank);
    if (rc != ncclSuccess) {
        n->nccl = NULL;
        return nccl_fail(n, what, "ncclCommInitRank", rc);
    }
    return MHUB_OK;
}

/* Our duplicate of the MPI communicator, with MPI errors returned.
 * Collective over parent. */
static mhub_status dup_mpi(nccl_comm *n, MPI_Comm parent, const char *what)
{
    int rc = MPI_Comm_dup(parent, &n->mpi);
    if (rc != MPI_SUCCESS) {
        n->mpi = MPI_COMM_NULL;
        return mpi_fail(n, what, "MPI_Comm_dup", rc);
    }
    rc = MPI_Comm_set_errhandler(n->mpi, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS)
        return mpi_fail(n, what, "MPI_Comm_set_errhandler", rc);
    return MHUB_OK;
}

static mhub_status check_create_args(const void *mpi_comm, const mhub_backend *be,
                                     const char *name, const char *what)
{
    if (mpi_comm == NULL || be == NULL || name == NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: %s is NULL", what,
                          mpi_comm == NULL ? "mpi_comm" : be == NULL ? "be" : "name");
    if (strlen(name) >= sizeof((mhub_comm *)0)->name)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: name \"%s\" is longer than %zu characters",
                          what, name, sizeof((mhub_comm *)0)->name - 1);
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (!initialized || finalized)
        return mhub_error(MHUB_ERR_STATE, "%s: MPI is %s; call it between MPI_Init and "
                          "MPI_Finalize", what,
                          finalized ? "already finalized" : "not initialised");
    if (*(const MPI_Comm *)mpi_comm == MPI_COMM_NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: mpi_comm is MPI_COMM_NULL (group \"%s\")",
                          what, name);
    return MHUB_OK;
}

/* Argument errors are the same on every rank (the call is collective and
 * comm.h asks for valid arguments everywhere) and return before any
 * communication. Each later step starts only once all ranks agree that
 * the steps before it succeeded. */
mhub_status mhub_comm_create_nccl(const void *mpi_comm, mhub_backend *be, const char *name,
                                  mhub_comm **out)
{
    const char *what = "mhub_comm_create_nccl";
    if (out == NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: out is NULL", what);
    *out = NULL;
    MHUB_TRY(check_create_args(mpi_comm, be, name, what));
    MPI_Comm parent = *(const MPI_Comm *)mpi_comm;
    int rank = 0, size = 0;
    MPI_Comm_rank(parent, &rank);
    MPI_Comm_size(parent, &size);

    nccl_comm *n = calloc(1, sizeof *n);
    mhub_status st = n != NULL ? MHUB_OK
                               : mhub_error(MHUB_ERR_NO_MEMORY, "%s: out of memory for "
                                            "communicator \"%s\" (rank %d)", what, name, rank);
    st = agree(parent, what, name, rank, "allocating the communicator", st);
    if (st != MHUB_OK) {
        free(n);
        return st;
    }
    n->base.ops = &nccl_comm_ops;
    n->base.ctx = n;
    n->base.rank = rank;
    n->base.size = size;
    n->be = be;
    n->device = -1;
    n->mpi = MPI_COMM_NULL;
    snprintf(n->base.name, sizeof n->base.name, "%s", name);

    /* An agreement's outcome is the same on every rank, so every rank
     * takes the same branches: no rank enters a collective step that
     * another has skipped. */
    st = agree(parent, what, name, rank, "MPI_Comm_dup", dup_mpi(n, parent, what));
    if (st == MHUB_OK)
        st = agree(parent, what, name, rank, "creating the inner MPI communicator",
                   mhub_comm_create_mpi(&n->mpi, name, &n->host));
    if (st == MHUB_OK)
        st = agree(parent, what, name, rank, "preparing the device and its stream",
                   prepare_local(n, what));
    ncclUniqueId id;
    if (st == MHUB_OK)
        st = agree(parent, what, name, rank, "sharing the NCCL unique id",
                   share_unique_id(n, what, &id));
    if (st == MHUB_OK)
        st = agree(parent, what, name, rank, "ncclCommInitRank", init_nccl(n, what, id));
    if (st != MHUB_OK) {
        release_partial(n);
        return st;
    }
    *out = &n->base;
    return MHUB_OK;
}

/* A new NCCL communicator over the ranks of the same color, made the same
 * way as the first. */
static mhub_status nccl_split(mhub_comm *c, int color, int key, const char *name,
                              mhub_comm **out)
{
    nccl_comm *n = ctx_of(c);
    issue_queue(n);
    MPI_Comm sub = MPI_COMM_NULL;
    int rc = MPI_Comm_split(n->mpi, color < 0 ? MPI_UNDEFINED : color, key, &sub);
    if (rc != MPI_SUCCESS)
        return mpi_fail(n, "split", "MPI_Comm_split", rc);
    if (sub == MPI_COMM_NULL) {
        *out = NULL;
        return MHUB_OK;
    }
    mhub_status st = mhub_comm_create_nccl(&sub, n->be, name, out);
    MPI_Comm_free(&sub);
    return st;
}

/* Destroying waits for the stream (with the timeout) so that NCCL does
 * not free buffers its kernels still use; an unfinished stream aborts
 * the communicator instead. Errors go to mhub_last_error(), as destroy
 * returns nothing. */
static void nccl_destroy(mhub_comm *c)
{
    nccl_comm *n = ctx_of(c);
    issue_queue(n);
    if (!n->aborted && drain_stream(n, "destroy") == MHUB_OK) {
        ncclResult_t rc = ncclCommDestroy(n->nccl);
        if (rc != ncclSuccess)
            nccl_fail(n, "destroy", "ncclCommDestroy", rc);
        n->nccl = NULL;
    }
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized)
        n->mpi = MPI_COMM_NULL; /* gone with MPI itself */
    release_partial(n);
}

static const mhub_comm_ops nccl_comm_ops = {
    .iallreduce = nccl_iallreduce,
    .ireduce_scatter = nccl_ireduce_scatter,
    .iallgather = nccl_iallgather,
    .ibroadcast = nccl_ibroadcast,
    .isend = nccl_isend,
    .irecv = nccl_irecv,
    .wait = nccl_wait,
    .test = nccl_test,
    .barrier = nccl_barrier,
    .split = nccl_split,
    .destroy = nccl_destroy,
    .alloc = NULL,
    .free_mem = NULL,
};
