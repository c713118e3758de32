/* comm.c - the backend-agnostic half of the communication interface.
 *
 * Every public call in comm.h lands here first: its arguments are checked
 * (so a backend only ever sees valid ones, and a bad call fails on the rank
 * that made it, before any communication, leaving no peer waiting), the
 * caller's request is prepared, and the work goes to the communicator's ops
 * table. Completion (mhub_request_wait / mhub_request_test) asks the backend
 * to finish the transfer and then runs the finish step, which is where
 * MHUB_AVG divides by the group size. The blocking forms are the
 * nonblocking ones followed by a wait, so both share one code path.
 *
 * Contract with backends: the request reaches ops->i* with comm, what and
 * the finish fields filled in; finish_divisor is the divisor (the group size
 * for MHUB_AVG, 1.0 for nothing to do). A backend that averages natively
 * sets it back to 1.0; one that does not (MPI) sums and leaves it. ops->destroy
 * releases everything, the mhub_comm struct included. */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mhub/comm.h"
#include "src/comm_internal.h"

/* Longest group name that fits comm->name with its terminator. */
#define NAME_MAX_LEN (sizeof(((mhub_comm *)0)->name) - 1)

const char *mhub_reduce_op_name(mhub_reduce_op op)
{
    switch (op) {
    case MHUB_SUM: return "sum";
    case MHUB_AVG: return "avg";
    case MHUB_MAX: return "max";
    }
    return "invalid";
}

/* ---- error messages ---------------------------------------------------- */

/* Record "call (group "g", rank r): detail" and return `code`; every
 * argument error names where it happened so a log line from one rank of
 * many is enough to find the faulty call. */
__attribute__((format(printf, 4, 5)))
static mhub_status comm_error(mhub_status code, const mhub_comm *c, const char *call,
                              const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    return mhub_error(code, "%s (group \"%s\", rank %d of %d): %s", call, c->name, c->rank,
                      c->size, detail);
}

static mhub_status check_comm(const mhub_comm *c, const char *call)
{
    if (c == NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: comm is NULL", call);
    if (c->ops == NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: comm has no ops table", call);
    return MHUB_OK;
}

static mhub_status check_request(const mhub_comm *c, const mhub_request *req, const char *call)
{
    if (req == NULL)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "req is NULL");
    if (req->active)
        return comm_error(MHUB_ERR_STATE, c, call,
                          "req is still active with a pending %s; wait for it (or test it "
                          "until done) before reusing it",
                          req->what ? req->what : "operation");
    return MHUB_OK;
}

static mhub_status check_dtype(const mhub_comm *c, mhub_dtype dt, const char *call)
{
    if (!mhub_dtype_valid(dt))
        return comm_error(MHUB_ERR_INVALID_ARG, c, call,
                          "dtype %d is not a valid dtype (f32, bf16 or f16)", (int)dt);
    return MHUB_OK;
}

static mhub_status check_op(const mhub_comm *c, mhub_reduce_op op, const char *call)
{
    if (op != MHUB_SUM && op != MHUB_AVG && op != MHUB_MAX)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call,
                          "op %d is not a valid reduction (MHUB_SUM, MHUB_AVG or MHUB_MAX)",
                          (int)op);
    return MHUB_OK;
}

/* A count must be >= 0, and count * blocks elements of `dt` must be
 * addressable, since the overlap checks work in bytes. */
static mhub_status check_count(const mhub_comm *c, int64_t count, int64_t blocks, mhub_dtype dt,
                               const char *arg, const char *call)
{
    if (count < 0)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "%s is %lld; it must be >= 0", arg,
                          (long long)count);
    int64_t limit = INT64_MAX / blocks / (int64_t)mhub_dtype_size(dt);
    if (count > limit)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call,
                          "%s %lld is too large: %lld blocks of it in %s overflow a byte count",
                          arg, (long long)count, (long long)blocks, mhub_dtype_name(dt));
    return MHUB_OK;
}

static mhub_status check_buffer(const mhub_comm *c, const void *buf, int64_t count,
                                const char *arg, const char *call)
{
    if (buf == NULL && count > 0)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "%s is NULL with %lld elements", arg,
                          (long long)count);
    return MHUB_OK;
}

static mhub_status check_peer(const mhub_comm *c, int peer, const char *arg, const char *call)
{
    if (peer < 0 || peer >= c->size)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "%s %d is out of range [0, %d)", arg,
                          peer, c->size);
    return MHUB_OK;
}

/* Byte ranges compared as integers: the buffers are usually distinct
 * objects, and pointer arithmetic across objects is undefined in C. */
static bool ranges_overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes)
{
    if (a_bytes == 0 || b_bytes == 0)
        return false;
    uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
    return a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

static bool at_offset(const void *base, size_t offset, const void *p)
{
    return (uintptr_t)base + offset == (uintptr_t)p;
}

/* Send and receive buffers of a collective: the documented in-place form
 * (`inplace`) or no overlap at all. */
static mhub_status check_overlap(const mhub_comm *c, const void *send, size_t send_bytes,
                                 const void *recv, size_t recv_bytes, bool inplace,
                                 const char *inplace_form, const char *call)
{
    if (inplace || !ranges_overlap(send, send_bytes, recv, recv_bytes))
        return MHUB_OK;
    return comm_error(MHUB_ERR_INVALID_ARG, c, call,
                      "send [%p, +%zu bytes) and recv [%p, +%zu bytes) overlap; the only "
                      "overlap allowed is the in-place form %s",
                      send, send_bytes, recv, recv_bytes, inplace_form);
}

/* ---- requests ---------------------------------------------------------- */

static void request_reset(mhub_request *req)
{
    memset(req, 0, sizeof *req);
}

static void request_prepare(mhub_request *req, mhub_comm *c, const char *what, void *finish_buf,
                            int64_t finish_count, mhub_dtype dt, mhub_reduce_op op)
{
    request_reset(req);
    req->comm = c;
    req->what = what;
    req->finish_buf = finish_buf;
    req->finish_count = finish_count;
    req->finish_dtype = dt;
    req->finish_divisor = op == MHUB_AVG ? (float)c->size : 1.0f;
}

/* Mark a request the backend accepted as pending, or clear one it refused
 * so the caller can reuse it at once. */
static mhub_status request_started(mhub_request *req, mhub_status s)
{
    if (s == MHUB_OK)
        req->active = true;
    else
        request_reset(req);
    return s;
}

/* Divide in f32 and round once per element: a correctly rounded quotient
 * keeps the average of exactly divisible sums exact at any group size,
 * which multiplying by a rounded 1/size would not. */
static void divide_f32(float *x, int64_t n, float d)
{
    for (int64_t i = 0; i < n; i++)
        x[i] /= d;
}

static void divide_bf16(uint16_t *x, int64_t n, float d)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = mhub_f32_to_bf16(mhub_bf16_to_f32(x[i]) / d);
}

static void divide_f16(uint16_t *x, int64_t n, float d)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = mhub_f32_to_f16(mhub_f16_to_f32(x[i]) / d);
}

void mhub_request_finish_host(mhub_request *req)
{
    float d = req->finish_divisor;
    if (d == 1.0f || req->finish_count == 0 || req->finish_buf == NULL)
        return;
    switch (req->finish_dtype) {
    case MHUB_F32: divide_f32(req->finish_buf, req->finish_count, d); break;
    case MHUB_BF16: divide_bf16(req->finish_buf, req->finish_count, d); break;
    case MHUB_F16: divide_f16(req->finish_buf, req->finish_count, d); break;
    }
    req->finish_divisor = 1.0f;
}

static mhub_status check_pending(const mhub_request *req, const char *call)
{
    if (req->comm == NULL || req->comm->ops == NULL)
        return mhub_error(MHUB_ERR_STATE, "%s: request for %s is active but has no communicator",
                          call, req->what ? req->what : "an operation");
    return MHUB_OK;
}

/* A failed transfer leaves the request idle too: the backend has released
 * it, and the caller can only report the error and move on. */
mhub_status mhub_request_wait(mhub_request *req)
{
    if (req == NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "mhub_request_wait: req is NULL");
    if (!req->active)
        return MHUB_OK;
    MHUB_TRY(check_pending(req, "mhub_request_wait"));
    mhub_comm *c = req->comm;
    mhub_status s = c->ops->wait(c, req);
    if (s == MHUB_OK)
        mhub_request_finish_host(req);
    request_reset(req);
    return s;
}

mhub_status mhub_request_test(mhub_request *req, bool *done)
{
    if (req == NULL || done == NULL)
        return mhub_error(MHUB_ERR_INVALID_ARG, "mhub_request_test: %s is NULL",
                          req == NULL ? "req" : "done");
    *done = false;
    if (!req->active) {
        *done = true;
        return MHUB_OK;
    }
    MHUB_TRY(check_pending(req, "mhub_request_test"));
    mhub_comm *c = req->comm;
    bool complete = false;
    mhub_status s = c->ops->test(c, req, &complete);
    if (s != MHUB_OK) {
        request_reset(req);
        return s;
    }
    if (complete) {
        mhub_request_finish_host(req);
        request_reset(req);
        *done = true;
    }
    return MHUB_OK;
}

/* ---- issuing ----------------------------------------------------------- */

static mhub_status issue_allreduce(const char *call, mhub_comm *c, const void *send, void *recv,
                                   int64_t count, mhub_dtype dt, mhub_reduce_op op,
                                   mhub_request *req)
{
    MHUB_TRY(check_comm(c, call));
    MHUB_TRY(check_request(c, req, call));
    MHUB_TRY(check_dtype(c, dt, call));
    MHUB_TRY(check_op(c, op, call));
    MHUB_TRY(check_count(c, count, 1, dt, "count", call));
    MHUB_TRY(check_buffer(c, send, count, "send", call));
    MHUB_TRY(check_buffer(c, recv, count, "recv", call));
    size_t bytes = (size_t)count * mhub_dtype_size(dt);
    MHUB_TRY(check_overlap(c, send, bytes, recv, bytes, send == recv, "send == recv", call));
    request_prepare(req, c, "allreduce", recv, count, dt, op);
    return request_started(req, c->ops->iallreduce(c, send, recv, count, dt, op, req));
}

static mhub_status issue_reduce_scatter(const char *call, mhub_comm *c, const void *send,
                                        void *recv, int64_t recv_count, mhub_dtype dt,
                                        mhub_reduce_op op, mhub_request *req)
{
    MHUB_TRY(check_comm(c, call));
    MHUB_TRY(check_request(c, req, call));
    MHUB_TRY(check_dtype(c, dt, call));
    MHUB_TRY(check_op(c, op, call));
    MHUB_TRY(check_count(c, recv_count, c->size, dt, "recv_count", call));
    MHUB_TRY(check_buffer(c, send, recv_count, "send", call));
    MHUB_TRY(check_buffer(c, recv, recv_count, "recv", call));
    size_t block = (size_t)recv_count * mhub_dtype_size(dt);
    bool inplace = at_offset(send, (size_t)c->rank * block, recv);
    MHUB_TRY(check_overlap(c, send, block * (size_t)c->size, recv, block, inplace,
                           "recv == send + rank * recv_count", call));
    request_prepare(req, c, "reduce_scatter", recv, recv_count, dt, op);
    return request_started(req, c->ops->ireduce_scatter(c, send, recv, recv_count, dt, op, req));
}

static mhub_status issue_allgather(const char *call, mhub_comm *c, const void *send, void *recv,
                                   int64_t send_count, mhub_dtype dt, mhub_request *req)
{
    MHUB_TRY(check_comm(c, call));
    MHUB_TRY(check_request(c, req, call));
    MHUB_TRY(check_dtype(c, dt, call));
    MHUB_TRY(check_count(c, send_count, c->size, dt, "send_count", call));
    MHUB_TRY(check_buffer(c, send, send_count, "send", call));
    MHUB_TRY(check_buffer(c, recv, send_count, "recv", call));
    size_t block = (size_t)send_count * mhub_dtype_size(dt);
    bool inplace = at_offset(recv, (size_t)c->rank * block, send);
    MHUB_TRY(check_overlap(c, send, block, recv, block * (size_t)c->size, inplace,
                           "send == recv + rank * send_count", call));
    request_prepare(req, c, "allgather", NULL, 0, dt, MHUB_SUM);
    return request_started(req, c->ops->iallgather(c, send, recv, send_count, dt, req));
}

static mhub_status issue_broadcast(const char *call, mhub_comm *c, void *buf, int64_t count,
                                   mhub_dtype dt, int root, mhub_request *req)
{
    MHUB_TRY(check_comm(c, call));
    MHUB_TRY(check_request(c, req, call));
    MHUB_TRY(check_dtype(c, dt, call));
    MHUB_TRY(check_count(c, count, 1, dt, "count", call));
    MHUB_TRY(check_buffer(c, buf, count, "buf", call));
    MHUB_TRY(check_peer(c, root, "root", call));
    request_prepare(req, c, "broadcast", NULL, 0, dt, MHUB_SUM);
    return request_started(req, c->ops->ibroadcast(c, buf, count, dt, root, req));
}

/* Checks shared by send and recv. */
static mhub_status check_p2p(mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt,
                             int peer, int tag, mhub_request *req, const char *call)
{
    MHUB_TRY(check_comm(c, call));
    MHUB_TRY(check_request(c, req, call));
    MHUB_TRY(check_dtype(c, dt, call));
    MHUB_TRY(check_count(c, count, 1, dt, "count", call));
    MHUB_TRY(check_buffer(c, buf, count, "buf", call));
    MHUB_TRY(check_peer(c, peer, "peer", call));
    if (tag < 0)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "tag %d is negative", tag);
    return MHUB_OK;
}

static mhub_status issue_send(const char *call, mhub_comm *c, const void *buf, int64_t count,
                              mhub_dtype dt, int peer, int tag, mhub_request *req)
{
    MHUB_TRY(check_p2p(c, buf, count, dt, peer, tag, req, call));
    request_prepare(req, c, "send", NULL, 0, dt, MHUB_SUM);
    return request_started(req, c->ops->isend(c, buf, count, dt, peer, tag, req));
}

static mhub_status issue_recv(const char *call, mhub_comm *c, void *buf, int64_t count,
                              mhub_dtype dt, int peer, int tag, mhub_request *req)
{
    MHUB_TRY(check_p2p(c, buf, count, dt, peer, tag, req, call));
    request_prepare(req, c, "recv", NULL, 0, dt, MHUB_SUM);
    return request_started(req, c->ops->irecv(c, buf, count, dt, peer, tag, req));
}

/* ---- nonblocking ------------------------------------------------------- */

mhub_status mhub_comm_iallreduce(mhub_comm *c, const void *send, void *recv, int64_t count,
                                 mhub_dtype dt, mhub_reduce_op op, mhub_request *req)
{
    return issue_allreduce("mhub_comm_iallreduce", c, send, recv, count, dt, op, req);
}

mhub_status mhub_comm_ireduce_scatter(mhub_comm *c, const void *send, void *recv,
                                      int64_t recv_count, mhub_dtype dt, mhub_reduce_op op,
                                      mhub_request *req)
{
    return issue_reduce_scatter("mhub_comm_ireduce_scatter", c, send, recv, recv_count, dt, op,
                                req);
}

mhub_status mhub_comm_iallgather(mhub_comm *c, const void *send, void *recv,
                                 int64_t send_count, mhub_dtype dt, mhub_request *req)
{
    return issue_allgather("mhub_comm_iallgather", c, send, recv, send_count, dt, req);
}

mhub_status mhub_comm_ibroadcast(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                                 int root, mhub_request *req)
{
    return issue_broadcast("mhub_comm_ibroadcast", c, buf, count, dt, root, req);
}

mhub_status mhub_comm_isend(mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt,
                            int peer, int tag, mhub_request *req)
{
    return issue_send("mhub_comm_isend", c, buf, count, dt, peer, tag, req);
}

mhub_status mhub_comm_irecv(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                            int peer, int tag, mhub_request *req)
{
    return issue_recv("mhub_comm_irecv", c, buf, count, dt, peer, tag, req);
}

/* ---- blocking ---------------------------------------------------------- */

mhub_status mhub_comm_allreduce(mhub_comm *c, const void *send, void *recv, int64_t count,
                                mhub_dtype dt, mhub_reduce_op op)
{
    mhub_request req = {0};
    MHUB_TRY(issue_allreduce("mhub_comm_allreduce", c, send, recv, count, dt, op, &req));
    return mhub_request_wait(&req);
}

mhub_status mhub_comm_reduce_scatter(mhub_comm *c, const void *send, void *recv,
                                     int64_t recv_count, mhub_dtype dt, mhub_reduce_op op)
{
    mhub_request req = {0};
    MHUB_TRY(issue_reduce_scatter("mhub_comm_reduce_scatter", c, send, recv, recv_count, dt, op,
                                  &req));
    return mhub_request_wait(&req);
}

mhub_status mhub_comm_allgather(mhub_comm *c, const void *send, void *recv,
                                int64_t send_count, mhub_dtype dt)
{
    mhub_request req = {0};
    MHUB_TRY(issue_allgather("mhub_comm_allgather", c, send, recv, send_count, dt, &req));
    return mhub_request_wait(&req);
}

mhub_status mhub_comm_broadcast(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                                int root)
{
    mhub_request req = {0};
    MHUB_TRY(issue_broadcast("mhub_comm_broadcast", c, buf, count, dt, root, &req));
    return mhub_request_wait(&req);
}

mhub_status mhub_comm_send(mhub_comm *c, const void *buf, int64_t count, mhub_dtype dt,
                           int peer, int tag)
{
    mhub_request req = {0};
    MHUB_TRY(issue_send("mhub_comm_send", c, buf, count, dt, peer, tag, &req));
    return mhub_request_wait(&req);
}

mhub_status mhub_comm_recv(mhub_comm *c, void *buf, int64_t count, mhub_dtype dt,
                           int peer, int tag)
{
    mhub_request req = {0};
    MHUB_TRY(issue_recv("mhub_comm_recv", c, buf, count, dt, peer, tag, &req));
    return mhub_request_wait(&req);
}

mhub_status mhub_comm_barrier(mhub_comm *c)
{
    MHUB_TRY(check_comm(c, "mhub_comm_barrier"));
    return c->ops->barrier(c);
}

/* ---- lifetime ---------------------------------------------------------- */

mhub_status mhub_comm_split(mhub_comm *c, int color, int key, const char *name,
                            mhub_comm **out)
{
    const char *call = "mhub_comm_split";
    MHUB_TRY(check_comm(c, call));
    if (out == NULL)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "out is NULL");
    *out = NULL;
    if (name == NULL)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "name is NULL");
    if (strlen(name) > NAME_MAX_LEN)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call,
                          "name \"%s\" is longer than %zu characters", name, NAME_MAX_LEN);
    return c->ops->split(c, color, key, name, out);
}

void mhub_comm_free(mhub_comm *c)
{
    if (c != NULL && c->ops != NULL)
        c->ops->destroy(c);
}

/* ---- communicator-owned memory ------------------------------------------ */

/* Argument errors return before any communication, on every rank alike
 * (the call is collective, so every rank passes the same arguments). */
mhub_status mhub_comm_alloc(mhub_comm *c, size_t bytes, void **out)
{
    const char *call = "mhub_comm_alloc";
    MHUB_TRY(check_comm(c, call));
    if (out == NULL)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "out is NULL");
    *out = NULL;
    if (bytes == 0)
        return comm_error(MHUB_ERR_INVALID_ARG, c, call, "bytes is 0; ask for at least 1");
    if (c->ops->alloc == NULL || c->ops->free_mem == NULL)
        return comm_error(MHUB_ERR_UNSUPPORTED, c, call,
                          "this communicator's backend offers no memory of its own; allocate "
                          "the buffer with the compute backend instead");
    return c->ops->alloc(c, bytes, out);
}

/* Returns nothing, like free(); a pointer this communicator did not hand
 * out is reported through mhub_last_error() and left alone. */
void mhub_comm_free_mem(mhub_comm *c, void *ptr)
{
    const char *call = "mhub_comm_free_mem";
    if (ptr == NULL || check_comm(c, call) != MHUB_OK)
        return;
    if (c->ops->free_mem == NULL) {
        comm_error(MHUB_ERR_INVALID_ARG, c, call,
                   "%p cannot come from mhub_comm_alloc: this communicator offers no memory",
                   ptr);
        return;
    }
    c->ops->free_mem(c, ptr);
}
