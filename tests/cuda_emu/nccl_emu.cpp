/* nccl_emu.cpp - the CPU emulator's NCCL: communicators of any size, over
 * MPI (see nccl.h for what it is and is not).
 *
 * Joining. ncclGetUniqueId writes a token into the id: the MPI_COMM_WORLD
 * rank of the process that made it and that process's count of ids made,
 * which together name one communicator in the whole job. At
 * ncclCommInitRank every other member sends its NCCL rank to the maker
 * (NCCL rank 0) over MPI_COMM_WORLD, on a tag derived from the count;
 * rank 0 waits for all of them and answers each with the roster (the
 * world rank of every NCCL rank), and the members make an MPI
 * communicator of exactly themselves with MPI_Comm_create_group, which is
 * collective over the members only. So groups that other ranks are
 * forming at the same moment, or ranks that form none, are never
 * involved, and nothing outlives a crash (no files). Instead of waiting
 * forever: rank 0 gives up after the timeout (MHUB_EMU_NCCL_TIMEOUT_S)
 * when a rank has not joined, or at once when the joins disagree on the
 * size or on who is which, and its answer tells every member that joined;
 * a member gives up by itself only when rank 0 never answers, after twice
 * the timeout. One rank needs no MPI at all.
 *
 * Running. A collective checks its communicator, stream, type, operation
 * and buffers as NCCL would, then queues itself on its stream; when the
 * stream runs, it moves every rank's data with a nonblocking MPI
 * collective on the communicator's own MPI communicator and combines it
 * on this rank. Sends and receives are kept until the outermost
 * ncclGroupEnd, which queues the whole group on its stream; it runs as
 * MPI_Issend/MPI_Irecv, all posted before any is waited for, so a ring of
 * sends and receives cannot deadlock, and matched between two ranks in
 * the order they were issued, as NCCL matches them. A send or receive to
 * this same rank is a copy, paired at ncclGroupEnd with its partner in
 * the group. Every wait polls, yielding the core, and gives up after the
 * timeout (MHUB_EMU_NCCL_TIMEOUT_S): the communicator then reports an
 * asynchronous error, as a GPU would hang, and runs nothing more.
 *
 * Arithmetic. NCCL's, element by element: each rank's input is read in
 * the datatype, ncclAvg multiplies it by 1/nranks rounded to the datatype
 * (NCCL's premultiplied sum for floating types), and every addition,
 * product, maximum or minimum is rounded to the datatype. Inputs are
 * combined in rank order on every rank, so all ranks get the same bits,
 * as NCCL guarantees; NCCL's own order (its ring's) may round otherwise. */
#include <mpi.h>
#include <sched.h>
#include <time.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

#include "cuda_bf16.h"
#include "mhub/dtype.h"
#include "nccl.h"

/* A handle is checked against the live ones, so a destroyed one is caught. */
struct mhub_emu_nccl_comm {
    unsigned long serial;     /* unique in this process, for the work queued on streams */
    int rank, nranks;
    MPI_Comm mpi;             /* the members in NCCL rank order; MPI_COMM_NULL at one rank */
    ncclResult_t async_error; /* what ncclCommGetAsyncError reports */
};

namespace {

/* ---- errors and bookkeeping ---- */

/* The prefix of every id ncclGetUniqueId makes; the maker's world rank
 * and its count of ids follow. */
const char id_magic[] = "mhub-emu-nccl-id";
unsigned long ids_made = 0;
unsigned long comms_made = 0;

std::vector<ncclComm_t> comms;

char last_error[256] = "";

/* mhub_emu_nccl_fail_peer's, for the next communicator asked */
ncclResult_t injected_async_error = ncclSuccess;

ncclResult_t fail(ncclResult_t rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

ncclResult_t fail(ncclResult_t rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    std::fprintf(stderr, "nccl emulator: %s\n", last_error);
    return rc;
}

bool is_comm(ncclComm_t c)
{
    for (ncclComm_t t : comms)
        if (t == c)
            return true;
    return false;
}

/* Queued work names its communicator by serial, not by pointer: one
 * destroyed or aborted before its work runs is then simply gone. */
ncclComm_t live_comm(unsigned long serial)
{
    for (ncclComm_t t : comms)
        if (t->serial == serial)
            return t;
    return nullptr;
}

/* Whether queued work on `c` may run: an aborted communicator's, or one
 * that already failed, does not (its peers are not coming). */
bool can_run(ncclComm_t c)
{
    return c != nullptr && c->async_error == ncclSuccess;
}

bool mpi_usable()
{
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    return initialized && !finalized;
}

int world_rank()
{
    int r = -1;
    if (mpi_usable())
        MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
}

/* ---- waiting, with a timeout ---- */

const double default_timeout_s = 60;

double timeout_s()
{
    const char *v = std::getenv("MHUB_EMU_NCCL_TIMEOUT_S");
    char *end = nullptr;
    double t = v != nullptr ? std::strtod(v, &end) : 0;
    return v != nullptr && end != v && *end == '\0' && t > 0 ? t : default_timeout_s;
}

double now_s()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

enum class outcome { done, failed, timed_out };

/* Poll until every request has completed, MPI reports an error, or the
 * deadline passes, yielding the core between polls: ranks oversubscribe
 * the cores in tests, and a spinning rank would starve the peer it waits
 * for. */
outcome wait_all(std::vector<MPI_Request> &reqs, double deadline)
{
    for (;;) {
        int done = 0;
        if (MPI_Testall((int)reqs.size(), reqs.data(), &done, MPI_STATUSES_IGNORE) !=
            MPI_SUCCESS)
            return outcome::failed;
        if (done)
            return outcome::done;
        if (now_s() > deadline)
            return outcome::timed_out;
        sched_yield();
    }
}

/* The outcome of the nonblocking collective `req`, which returned `start`
 * when it was started. */
outcome finish(int start, MPI_Request req)
{
    if (start != MPI_SUCCESS)
        return outcome::failed;
    std::vector<MPI_Request> reqs{req};
    return wait_all(reqs, now_s() + timeout_s());
}

/* Give up on point-to-point requests that never completed: receives are
 * cancelled; sends are let go, as MPI cannot reliably take a send back. */
void abandon_p2p(std::vector<MPI_Request> &reqs, const std::vector<bool> &is_recv)
{
    for (size_t i = 0; i < reqs.size(); i++)
        if (reqs[i] != MPI_REQUEST_NULL) {
            if (is_recv[i])
                MPI_Cancel(&reqs[i]);
            MPI_Request_free(&reqs[i]);
        }
}

/* A communicator whose work could not finish (`o`, while waiting for
 * `awaited`): it runs nothing more, and its next ncclCommGetAsyncError
 * reports it. */
void fail_comm(ncclComm_t c, const char *call, outcome o, const char *awaited)
{
    c->async_error = ncclSystemError;
    if (o == outcome::timed_out)
        fail(ncclSystemError, "%s: rank %d of %d waited %.0f s (MHUB_EMU_NCCL_TIMEOUT_S) for "
             "%s; on a GPU it would wait forever", call, c->rank, c->nranks, timeout_s(),
             awaited);
    else
        fail(ncclSystemError, "%s: rank %d of %d: MPI failed moving the data (do the ranks "
             "agree on counts and types?)", call, c->rank, c->nranks);
}

/* ---- joining a communicator ---- */

/* The token of an id: the maker's world rank and its count of ids. */
bool parse_id(const ncclUniqueId &id, int *maker, unsigned long *count)
{
    if (std::strncmp(id.internal, id_magic, sizeof id_magic - 1) != 0)
        return false;
    return std::sscanf(id.internal + sizeof id_magic - 1, " %d %lu", maker, count) == 2;
}

/* The rendezvous of id number `count` uses two tags of MPI_COMM_WORLD
 * (members to rank 0, rank 0's answer), in the upper half of the tags MPI
 * offers, which programs under the emulator leave alone. */
int rendezvous_tag(unsigned long count, int which)
{
    int *ub = nullptr, flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    int half = (flag ? *ub : 32767) / 2;
    return half + (int)(count % (unsigned long)(half / 2)) * 2 + which;
}

enum { TAG_JOIN = 0, TAG_ANSWER = 1 };

/* Rank 0: receive the other members' joins (each its NCCL rank and the
 * size it expects) into the roster until all have come or the timeout
 * passes; `joined` lists who sent one. One that does not fit is an error,
 * but the rest are still awaited, so that all of them hear of it. */
ncclResult_t collect_joins(std::vector<int> &roster, unsigned long count, std::vector<int> &joined)
{
    const int nranks = (int)roster.size();
    const double deadline = now_s() + timeout_s();
    ncclResult_t rc = ncclSuccess;
    for (int missing = nranks - 1; missing > 0;) {
        int arrived = 0;
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, rendezvous_tag(count, TAG_JOIN), MPI_COMM_WORLD, &arrived, &st);
        if (!arrived && now_s() > deadline)
            return rc != ncclSuccess
                       ? rc
                       : fail(ncclSystemError, "ncclCommInitRank: %d of the %d ranks did not "
                              "join within %.0f s (MHUB_EMU_NCCL_TIMEOUT_S)", missing, nranks,
                              timeout_s());
        if (!arrived) {
            sched_yield();
            continue;
        }
        int join[2] = {0, 0};
        MPI_Recv(join, 2, MPI_INT, st.MPI_SOURCE, st.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        joined.push_back(st.MPI_SOURCE);
        missing--;
        if (join[1] == nranks && join[0] > 0 && join[0] < nranks && roster[join[0]] < 0)
            roster[join[0]] = st.MPI_SOURCE;
        else if (rc == ncclSuccess)
            rc = fail(ncclInvalidUsage, "ncclCommInitRank: world rank %d joined as rank %d of "
                      "%d, but rank 0 forms %d ranks and expects each of ranks 1 to %d once",
                      st.MPI_SOURCE, join[0], join[1], nranks, nranks - 1);
    }
    return rc;
}

/* Rank 0: collect the joins, then answer everyone who joined with
 * {ncclSuccess, roster...} or, when the group cannot form, {the reason},
 * so that nobody waits for it any longer. */
ncclResult_t lead_rendezvous(std::vector<int> &roster, unsigned long count)
{
    roster.assign(roster.size(), -1);
    roster[0] = world_rank();
    std::vector<int> joined;
    ncclResult_t rc = collect_joins(roster, count, joined);
    std::vector<int> answer{(int)rc};
    if (rc == ncclSuccess)
        answer.insert(answer.end(), roster.begin(), roster.end());
    std::vector<MPI_Request> reqs(joined.size());
    for (size_t i = 0; i < joined.size(); i++)
        MPI_Isend(answer.data(), (int)answer.size(), MPI_INT, joined[i],
                  rendezvous_tag(count, TAG_ANSWER), MPI_COMM_WORLD, &reqs[i]);
    if (wait_all(reqs, now_s() + timeout_s()) != outcome::done) {
        abandon_p2p(reqs, std::vector<bool>(reqs.size(), false));
        if (rc == ncclSuccess)
            rc = fail(ncclSystemError, "ncclCommInitRank: the members did not take rank 0's "
                      "answer within %.0f s", timeout_s());
    }
    return rc;
}

/* Any other rank: tell rank 0 (world rank `maker`) who it is and take
 * the roster. */
ncclResult_t join_rendezvous(std::vector<int> &roster, int rank, int maker, unsigned long count)
{
    const int nranks = (int)roster.size();
    int join[2] = {rank, nranks};
    std::vector<int> answer((size_t)nranks + 1, 0);
    std::vector<MPI_Request> reqs(2);
    MPI_Isend(join, 2, MPI_INT, maker, rendezvous_tag(count, TAG_JOIN), MPI_COMM_WORLD,
              &reqs[0]);
    MPI_Irecv(answer.data(), nranks + 1, MPI_INT, maker, rendezvous_tag(count, TAG_ANSWER),
              MPI_COMM_WORLD, &reqs[1]);
    /* rank 0 answers within the timeout of its own start, even when it
     * gives up; twice that leaves its answer, with the reason, time to
     * come, so that only a rank 0 that never came is reported as such */
    if (wait_all(reqs, now_s() + 2 * timeout_s()) != outcome::done) {
        abandon_p2p(reqs, {false, true});
        return fail(ncclSystemError, "ncclCommInitRank: rank %d of %d had no answer from rank 0 "
                    "(world rank %d) within %.0f s (twice MHUB_EMU_NCCL_TIMEOUT_S)", rank,
                    nranks, maker, 2 * timeout_s());
    }
    if (answer[0] != ncclSuccess)
        return fail((ncclResult_t)answer[0], "ncclCommInitRank: rank 0 (world rank %d) gave up "
                    "on the group: a rank did not join, or the ranks disagree on its size or "
                    "on who is which (see rank 0's error)", maker);
    roster.assign(answer.begin() + 1, answer.end());
    return ncclSuccess;
}

/* The MPI communicator of exactly the roster's world ranks, in its
 * order; collective over those ranks only. */
ncclResult_t make_group_comm(const std::vector<int> &roster, unsigned long count, MPI_Comm *out)
{
    MPI_Group world_group, members;
    MPI_Comm_group(MPI_COMM_WORLD, &world_group);
    MPI_Group_incl(world_group, (int)roster.size(), roster.data(), &members);
    int rc = MPI_Comm_create_group(MPI_COMM_WORLD, members, rendezvous_tag(count, TAG_JOIN), out);
    MPI_Group_free(&members);
    MPI_Group_free(&world_group);
    if (rc != MPI_SUCCESS || *out == MPI_COMM_NULL)
        return fail(ncclSystemError, "ncclCommInitRank: MPI_Comm_create_group failed (MPI "
                    "error %d)", rc);
    /* a failure inside a collective becomes this communicator's error,
     * not the end of the process */
    MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
    return ncclSuccess;
}

/* Rank `rank` of `nranks` joins the group of id number `count` made by
 * world rank `maker`. */
ncclResult_t join_group(int nranks, int rank, int maker, unsigned long count, MPI_Comm *out)
{
    if (!mpi_usable())
        return fail(ncclInvalidUsage, "ncclCommInitRank: %d ranks need MPI, which is not "
                    "initialised (or already finalized)", nranks);
    if (rank == 0 && maker != world_rank())
        return fail(ncclInvalidUsage, "ncclCommInitRank: the emulator needs rank 0 to be the "
                    "process that made the id (world rank %d), not world rank %d", maker,
                    world_rank());
    std::vector<int> roster((size_t)nranks, -1);
    ncclResult_t rc = rank == 0 ? lead_rendezvous(roster, count)
                                : join_rendezvous(roster, rank, maker, count);
    return rc != ncclSuccess ? rc : make_group_comm(roster, count, out);
}

/* ---- datatypes and NCCL's arithmetic ---- */

size_t type_size(ncclDataType_t t)
{
    switch (t) {
    case ncclFloat16: return 2;
    case ncclBfloat16: return 2;
    case ncclFloat32: return 4;
    }
    return 0;
}

float load(const void *buf, ncclDataType_t t, size_t i)
{
    uint16_t bits = 0;
    switch (t) {
    case ncclFloat32: return static_cast<const float *>(buf)[i];
    case ncclBfloat16:
        std::memcpy(&bits, static_cast<const char *>(buf) + 2 * i, 2);
        return __bfloat162float(__nv_bfloat16{bits});
    case ncclFloat16:
        std::memcpy(&bits, static_cast<const char *>(buf) + 2 * i, 2);
        return mhub_f16_to_f32(bits); /* IEEE binary16, as NCCL's half */
    }
    return NAN;
}

/* Stores v rounded to the datatype. */
void store(void *buf, ncclDataType_t t, size_t i, float v)
{
    uint16_t bits = 0;
    switch (t) {
    case ncclFloat32: static_cast<float *>(buf)[i] = v; return;
    case ncclBfloat16: bits = __float2bfloat16(v).bits; break;
    case ncclFloat16: bits = mhub_f32_to_f16(v); break; /* nearest, ties to even */
    }
    std::memcpy(static_cast<char *>(buf) + 2 * i, &bits, 2);
}

float rounded(ncclDataType_t t, float v)
{
    uint32_t cell = 0; /* room for one element of any type */
    store(&cell, t, 0, v);
    return load(&cell, t, 0);
}

float combine(ncclRedOp_t op, float acc, float x)
{
    switch (op) {
    case ncclSum:
    case ncclAvg: return acc + x;
    case ncclProd: return acc * x;
    case ncclMax: return x > acc ? x : acc;
    case ncclMin: return x < acc ? x : acc;
    }
    return NAN;
}

/* out[i] = the reduction over r of blocks[r][i], the blocks `stride`
 * bytes apart, in rank order and NCCL's rounding (see the top). */
void reduce_blocks(const char *blocks, size_t stride, int nblocks, void *out, size_t count,
                   ncclDataType_t t, ncclRedOp_t op)
{
    const float scale = op == ncclAvg ? rounded(t, (float)(1.0 / nblocks)) : 1.0f;
    auto input = [&](int r, size_t i) {
        float x = load(blocks + (size_t)r * stride, t, i);
        return op == ncclAvg ? rounded(t, x * scale) : x;
    };
    for (size_t i = 0; i < count; i++) {
        float acc = input(0, i);
        for (int r = 1; r < nblocks; r++)
            acc = rounded(t, combine(op, acc, input(r, i)));
        store(out, t, i, acc);
    }
}

/* ---- checks at the call ---- */

ncclResult_t check_call(const char *call, ncclComm_t comm, cudaStream_t stream,
                        ncclDataType_t type)
{
    if (!is_comm(comm))
        return fail(ncclInvalidArgument, "%s: not a live communicator", call);
    if (!mhub_emu_is_stream(stream))
        return fail(ncclInvalidArgument, "%s: not a live stream", call);
    if (type_size(type) == 0)
        return fail(ncclInvalidArgument, "%s: datatype %d is not one the emulator knows", call,
                    (int)type);
    if (mhub_emu_sticky_error() != cudaSuccess)
        return fail(ncclUnhandledCudaError, "%s: the device faulted earlier", call);
    return ncclSuccess;
}

ncclResult_t check_buffer(const char *call, const char *arg, const void *p, size_t bytes)
{
    if (bytes == 0 || mhub_emu_is_device_range(p, bytes))
        return ncclSuccess;
    return fail(ncclInvalidArgument, "%s: %s (%zu bytes at %p) is not device memory", call, arg,
                bytes, p);
}

ncclResult_t check_op(const char *call, ncclRedOp_t op)
{
    if (op == ncclSum || op == ncclProd || op == ncclMax || op == ncclMin || op == ncclAvg)
        return ncclSuccess;
    return fail(ncclInvalidArgument, "%s: reduction %d is not one NCCL has", call, (int)op);
}

/* MPI counts are ints: one block of one rank must fit. */
ncclResult_t check_block_size(const char *call, size_t bytes)
{
    if (bytes <= (size_t)INT32_MAX)
        return ncclSuccess;
    return fail(ncclInvalidArgument, "%s: %zu bytes per rank; the emulator moves at most %d",
                call, bytes, INT32_MAX);
}

/* ---- collectives, run when their stream runs ---- */

enum collective_kind { ALL_REDUCE, REDUCE_SCATTER, ALL_GATHER, BROADCAST };

/* Captured by value when queued. */
struct collective {
    collective_kind kind;
    const char *call;
    const void *send;
    void *recv;
    size_t count; /* per rank: the result's (all-reduce, reduce-scatter, broadcast) or input's */
    ncclDataType_t type;
    ncclRedOp_t op;
    int root;
    unsigned long comm_serial;
};

/* Every rank's `bytes` at `mine`, in rank order. */
outcome gather(ncclComm_t c, const void *mine, size_t bytes, std::vector<char> &all)
{
    all.resize(bytes * (size_t)c->nranks);
    if (c->nranks == 1) {
        std::memcpy(all.data(), mine, bytes);
        return outcome::done;
    }
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Iallgather(mine, (int)bytes, MPI_BYTE, all.data(), (int)bytes, MPI_BYTE, c->mpi,
                            &req);
    return finish(rc, req);
}

/* Block r of every rank's send (blocks of `bytes`) arrives at rank r, in
 * rank order. */
outcome exchange_blocks(ncclComm_t c, const void *send, size_t bytes, std::vector<char> &mine)
{
    mine.resize(bytes * (size_t)c->nranks);
    if (c->nranks == 1) {
        std::memcpy(mine.data(), send, bytes);
        return outcome::done;
    }
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Ialltoall(send, (int)bytes, MPI_BYTE, mine.data(), (int)bytes, MPI_BYTE, c->mpi,
                           &req);
    return finish(rc, req);
}

outcome broadcast(ncclComm_t c, const collective &w, size_t bytes)
{
    if (c->rank == w.root && w.send != w.recv)
        std::memmove(w.recv, w.send, bytes);
    if (c->nranks == 1)
        return outcome::done;
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_Ibcast(w.recv, (int)bytes, MPI_BYTE, w.root, c->mpi, &req);
    return finish(rc, req);
}

/* The buffers of collectives given up on: MPI may still write into them
 * (a collective's request cannot be cancelled), so they are never freed. */
std::vector<std::vector<char>> abandoned_buffers;

/* Every rank's data is read before any is written, so the in-place forms
 * need no care. */
void run_collective(void *args)
{
    const collective &w = *static_cast<const collective *>(args);
    ncclComm_t c = live_comm(w.comm_serial);
    if (!can_run(c))
        return;
    const size_t bytes = w.count * type_size(w.type);
    std::vector<char> all;
    outcome o = outcome::done;
    switch (w.kind) {
    case ALL_REDUCE:
        if ((o = gather(c, w.send, bytes, all)) == outcome::done)
            reduce_blocks(all.data(), bytes, c->nranks, w.recv, w.count, w.type, w.op);
        break;
    case REDUCE_SCATTER:
        if ((o = exchange_blocks(c, w.send, bytes, all)) == outcome::done)
            reduce_blocks(all.data(), bytes, c->nranks, w.recv, w.count, w.type, w.op);
        break;
    case ALL_GATHER:
        if ((o = gather(c, w.send, bytes, all)) == outcome::done)
            std::memcpy(w.recv, all.data(), all.size());
        break;
    case BROADCAST: o = broadcast(c, w, bytes); break;
    }
    if (o != outcome::done) {
        abandoned_buffers.push_back(std::move(all));
        fail_comm(c, w.call, o, "a peer that never took part");
    }
}

/* Check a collective's arguments and queue it: `send_count` elements are
 * read from send and `recv_count` written to recv. */
ncclResult_t queue_collective(const collective &w, size_t send_count, size_t recv_count,
                              ncclComm_t comm, cudaStream_t stream)
{
    ncclResult_t rc = check_call(w.call, comm, stream, w.type);
    if (rc != ncclSuccess)
        return rc;
    size_t size = type_size(w.type);
    if ((rc = check_block_size(w.call, w.count * size)) != ncclSuccess ||
        (rc = check_buffer(w.call, "sendbuff", w.send, send_count * size)) != ncclSuccess ||
        (rc = check_buffer(w.call, "recvbuff", w.recv, recv_count * size)) != ncclSuccess)
        return rc;
    if (w.count == 0)
        return ncclSuccess;
    collective queued = w;
    queued.comm_serial = comm->serial;
    if (mhub_emu_enqueue(stream, run_collective, &queued, sizeof queued) != cudaSuccess)
        return fail(ncclUnhandledCudaError, "%s: its work could not be queued", w.call);
    return ncclSuccess;
}

/* ---- groups of sends and receives ---- */

struct p2p {
    bool is_send;
    void *buf;
    size_t count;
    ncclDataType_t type;
    int peer;
    ncclComm_t comm;
    cudaStream_t stream;
};

int group_depth = 0;
std::vector<p2p> group; /* the open group's sends and receives, in order */

/* Groups queued on a stream and not yet run, by number. They are kept
 * here rather than in the queued work, which is copied as plain bytes. */
struct queued_op {
    p2p op;
    unsigned long comm_serial;
};
std::map<unsigned long, std::vector<queued_op>> queued_groups;
unsigned long groups_queued = 0;

const int p2p_tag = 0; /* each communicator has its own MPI communicator */

bool to_self(const p2p &op) { return op.peer == op.comm->rank; }

/* A send to this same rank is a copy into the receive from it that pairs
 * with it (checked at ncclGroupEnd); the rest go through MPI, all posted
 * before any is waited for. */
void run_group(void *args)
{
    unsigned long number = 0;
    std::memcpy(&number, args, sizeof number);
    auto it = queued_groups.find(number);
    std::vector<queued_op> ops = std::move(it->second);
    queued_groups.erase(it);

    std::vector<const p2p *> self_sends, self_recvs;
    std::vector<MPI_Request> reqs;
    std::vector<bool> is_recv;
    std::vector<ncclComm_t> involved;
    bool all_started = true;
    for (queued_op &q : ops) {
        ncclComm_t c = live_comm(q.comm_serial);
        if (!can_run(c))
            continue;
        q.op.comm = c;
        involved.push_back(c);
        int bytes = (int)(q.op.count * type_size(q.op.type));
        if (to_self(q.op)) {
            (q.op.is_send ? self_sends : self_recvs).push_back(&q.op);
            continue;
        }
        /* synchronous: like NCCL's, a send is done only once its receive
         * has started, so one with no receive cannot pass for done */
        MPI_Request &req = reqs.emplace_back(MPI_REQUEST_NULL);
        int rc = q.op.is_send
                     ? MPI_Issend(q.op.buf, bytes, MPI_BYTE, q.op.peer, p2p_tag, c->mpi, &req)
                     : MPI_Irecv(q.op.buf, bytes, MPI_BYTE, q.op.peer, p2p_tag, c->mpi, &req);
        all_started = all_started && rc == MPI_SUCCESS;
        is_recv.push_back(!q.op.is_send);
    }
    for (size_t i = 0; i < self_sends.size() && i < self_recvs.size(); i++)
        std::memmove(self_recvs[i]->buf, self_sends[i]->buf,
                     self_sends[i]->count * type_size(self_sends[i]->type));
    outcome o = !all_started  ? outcome::failed
                : reqs.empty() ? outcome::done
                               : wait_all(reqs, now_s() + timeout_s());
    if (o == outcome::done)
        return;
    abandon_p2p(reqs, is_recv);
    for (ncclComm_t c : involved)
        if (c->async_error == ncclSuccess)
            fail_comm(c, "ncclSend/ncclRecv", o, "the partner of a send or receive, which a "
                      "peer never posted");
}

ncclResult_t queue_p2p(const char *call, bool is_send, void *buf, size_t count,
                       ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream)
{
    ncclResult_t rc = check_call(call, comm, stream, type);
    if (rc != ncclSuccess)
        return rc;
    if (peer < 0 || peer >= comm->nranks)
        return fail(ncclInvalidArgument, "%s: peer %d in a communicator of %d rank%s", call, peer,
                    comm->nranks, comm->nranks == 1 ? "" : "s");
    if ((rc = check_block_size(call, count * type_size(type))) != ncclSuccess ||
        (rc = check_buffer(call, "buffer", buf, count * type_size(type))) != ncclSuccess)
        return rc;
    group.push_back(p2p{is_send, buf, count, type, peer, comm, stream});
    return ncclSuccess;
}

/* A group is queued on one stream; NCCL would order its streams itself. */
ncclResult_t check_one_stream()
{
    for (const p2p &op : group)
        if (op.stream != group.front().stream)
            return fail(ncclInvalidUsage, "ncclGroupEnd: sends and receives on more than one "
                        "stream; the emulator runs a group on one stream only");
    return ncclSuccess;
}

/* What can be checked on this rank alone: a send to itself needs its
 * receive in the same group, in the same order (else, on a GPU, both
 * wait forever). A send to another rank that never gets its receive
 * shows when the group runs, as a timeout. */
ncclResult_t check_self_pairs()
{
    std::vector<const p2p *> sends, recvs;
    for (const p2p &op : group)
        if (to_self(op))
            (op.is_send ? sends : recvs).push_back(&op);
    if (sends.size() != recvs.size())
        return fail(ncclInvalidUsage, "ncclGroupEnd: %zu sends and %zu receives to self; each "
                    "needs a partner", sends.size(), recvs.size());
    for (size_t i = 0; i < sends.size(); i++) {
        const p2p &s = *sends[i], &r = *recvs[i];
        if (s.comm != r.comm || s.type != r.type || s.count != r.count)
            return fail(ncclInvalidUsage, "ncclGroupEnd: send %zu to self (%zu elements of type "
                        "%d) does not match receive %zu (%zu elements of type %d)", i, s.count,
                        (int)s.type, i, r.count, (int)r.type);
    }
    return ncclSuccess;
}

ncclResult_t complete_group()
{
    ncclResult_t rc = ncclSuccess;
    for (const p2p &op : group)
        if (!is_comm(op.comm) && rc == ncclSuccess)
            rc = fail(ncclInvalidArgument, "ncclGroupEnd: a communicator destroyed inside the "
                      "group");
    if (rc == ncclSuccess && !group.empty() && (rc = check_one_stream()) == ncclSuccess &&
        (rc = check_self_pairs()) == ncclSuccess) {
        unsigned long number = ++groups_queued;
        std::vector<queued_op> &ops = queued_groups[number];
        for (const p2p &op : group)
            ops.push_back(queued_op{op, op.comm->serial});
        if (mhub_emu_enqueue(group.front().stream, run_group, &number, sizeof number) !=
            cudaSuccess) {
            queued_groups.erase(number);
            rc = fail(ncclUnhandledCudaError, "ncclGroupEnd: its work could not be queued");
        }
    }
    group.clear();
    return rc;
}

void free_mpi_comm(ncclComm_t comm)
{
    if (comm->mpi != MPI_COMM_NULL && mpi_usable())
        MPI_Comm_free(&comm->mpi);
}

} // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    std::memset(id, 0, sizeof *id);
    std::snprintf(id->internal, sizeof id->internal, "%s %d %lu", id_magic, world_rank(),
                  ++ids_made);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank)
{
    *comm = nullptr;
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return fail(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d", rank, nranks);
    int maker = -1;
    unsigned long count = 0;
    if (!parse_id(id, &maker, &count))
        return fail(ncclInvalidArgument, "ncclCommInitRank: an id ncclGetUniqueId did not make");
    MPI_Comm mpi = MPI_COMM_NULL;
    if (nranks > 1) {
        ncclResult_t rc = join_group(nranks, rank, maker, count, &mpi);
        if (rc != ncclSuccess)
            return rc;
    }
    *comm = new mhub_emu_nccl_comm{++comms_made, rank, nranks, mpi, ncclSuccess};
    comms.push_back(*comm);
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    for (size_t i = 0; i < comms.size(); i++)
        if (comms[i] == comm) {
            comms.erase(comms.begin() + (long)i);
            free_mpi_comm(comm);
            delete comm;
            return ncclSuccess;
        }
    return fail(ncclInvalidArgument, "ncclCommDestroy: not a live communicator");
}

/* Work still queued for it finds it gone and does not run, as NCCL's
 * abort ends its kernels. */
ncclResult_t ncclCommAbort(ncclComm_t comm)
{
    if (comm == nullptr)
        return ncclSuccess;
    return ncclCommDestroy(comm);
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t *async_error)
{
    if (!is_comm(comm))
        return fail(ncclInvalidArgument, "ncclCommGetAsyncError: not a live communicator");
    if (injected_async_error != ncclSuccess && comm->async_error == ncclSuccess) {
        comm->async_error = injected_async_error;
        injected_async_error = ncclSuccess;
        std::snprintf(last_error, sizeof last_error, "a peer failed (mhub_emu_nccl_fail_peer)");
    }
    *async_error = comm->async_error;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t result)
{
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error";
    case ncclSystemError: return "unhandled system error";
    case ncclInternalError: return "internal error";
    case ncclInvalidArgument: return "invalid argument";
    case ncclInvalidUsage: return "invalid usage";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    }
    return "unknown result code";
}

const char *ncclGetLastError(ncclComm_t comm)
{
    (void)comm;
    return last_error;
}

ncclResult_t ncclAllReduce(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                           cudaStream_t stream)
{
    ncclResult_t rc = check_op("ncclAllReduce", op);
    collective w{ALL_REDUCE, "ncclAllReduce", sendbuff, recvbuff, count, datatype, op, 0, 0};
    return rc != ncclSuccess ? rc : queue_collective(w, count, count, comm, stream);
}

ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream)
{
    ncclResult_t rc = check_op("ncclReduceScatter", op);
    if (rc != ncclSuccess)
        return rc;
    if (!is_comm(comm))
        return fail(ncclInvalidArgument, "ncclReduceScatter: not a live communicator");
    collective w{REDUCE_SCATTER, "ncclReduceScatter", sendbuff, recvbuff, recvcount, datatype,
                 op, 0, 0};
    return queue_collective(w, recvcount * (size_t)comm->nranks, recvcount, comm, stream);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
                           ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream)
{
    if (!is_comm(comm))
        return fail(ncclInvalidArgument, "ncclAllGather: not a live communicator");
    collective w{ALL_GATHER, "ncclAllGather", sendbuff, recvbuff, sendcount, datatype, ncclSum,
                 0, 0};
    return queue_collective(w, sendcount, sendcount * (size_t)comm->nranks, comm, stream);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream)
{
    if (!is_comm(comm))
        return fail(ncclInvalidArgument, "ncclBroadcast: not a live communicator");
    if (root < 0 || root >= comm->nranks)
        return fail(ncclInvalidArgument, "ncclBroadcast: root %d in a communicator of %d rank%s",
                    root, comm->nranks, comm->nranks == 1 ? "" : "s");
    /* only the root's sendbuff is read */
    collective w{BROADCAST, "ncclBroadcast", sendbuff, recvbuff, count, datatype, ncclSum, root,
                 0};
    return queue_collective(w, comm->rank == root ? count : 0, count, comm, stream);
}

/* Outside a group, each is a group of its own, as in NCCL. */
ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream)
{
    ncclGroupStart();
    ncclResult_t rc = queue_p2p("ncclSend", true, const_cast<void *>(sendbuff), count, datatype,
                                peer, comm, stream);
    ncclResult_t end = ncclGroupEnd();
    return rc != ncclSuccess ? rc : end;
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream)
{
    ncclGroupStart();
    ncclResult_t rc = queue_p2p("ncclRecv", false, recvbuff, count, datatype, peer, comm, stream);
    ncclResult_t end = ncclGroupEnd();
    return rc != ncclSuccess ? rc : end;
}

ncclResult_t ncclGroupStart(void)
{
    group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void)
{
    if (group_depth == 0)
        return fail(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    return --group_depth == 0 ? complete_group() : ncclSuccess;
}

void mhub_emu_nccl_fail_peer(void) { injected_async_error = ncclRemoteError; }

} /* extern "C" */
