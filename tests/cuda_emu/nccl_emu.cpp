/* nccl_emu.cpp - the CPU emulator's NCCL: communicators of one rank (see
 * nccl.h for what it is and is not).
 *
 * A collective checks its communicator, stream, type, operation and
 * buffers as NCCL would, then queues its copy on its stream (it runs when
 * the stream does, see cuda_runtime.h). Sends and receives are kept until
 * the outermost ncclGroupEnd, which pairs the i-th send with the i-th
 * receive (NCCL's order between two ranks) and queues the copies; a
 * receive or send left without a partner is an error, as it would hang on
 * a GPU. */
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "nccl.h"

/* A handle is checked against the live ones, so a destroyed one is caught. */
struct mhub_emu_nccl_comm {
    unsigned long id;         /* the number of the ncclGetUniqueId that made its id */
    ncclResult_t async_error; /* what ncclCommGetAsyncError reports */
};

namespace {

/* The prefix of every id ncclGetUniqueId makes; a counter follows. */
const char id_magic[] = "mhub-emu-nccl-id";
unsigned long ids_made = 0;

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

size_t type_size(ncclDataType_t t)
{
    switch (t) {
    case ncclFloat16: return 2;
    case ncclBfloat16: return 2;
    case ncclFloat32: return 4;
    }
    return 0;
}

/* What every operation checks before it moves anything. */
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

/* One rank's transfer: queued on its stream, run when the stream is. */
struct copy_args {
    void *dst;
    const void *src;
    size_t bytes;
};

void run_copy(void *args)
{
    const copy_args *c = static_cast<const copy_args *>(args);
    std::memmove(c->dst, c->src, c->bytes);
}

ncclResult_t queue_copy(const char *call, void *dst, const void *src, size_t bytes,
                        cudaStream_t stream)
{
    if (bytes == 0 || dst == src)
        return ncclSuccess;
    copy_args c{dst, src, bytes};
    if (mhub_emu_enqueue(stream, run_copy, &c, sizeof c) != cudaSuccess)
        return fail(ncclUnhandledCudaError, "%s: its copy could not be queued", call);
    return ncclSuccess;
}

/* A collective of one rank: recv gets send's count elements. */
ncclResult_t copy_collective(const char *call, const void *send, void *recv, size_t count,
                             ncclDataType_t type, ncclComm_t comm, cudaStream_t stream)
{
    ncclResult_t rc = check_call(call, comm, stream, type);
    if (rc != ncclSuccess)
        return rc;
    size_t bytes = count * type_size(type);
    if ((rc = check_buffer(call, "sendbuff", send, bytes)) != ncclSuccess ||
        (rc = check_buffer(call, "recvbuff", recv, bytes)) != ncclSuccess)
        return rc;
    return queue_copy(call, recv, send, bytes, stream);
}

ncclResult_t check_op(const char *call, ncclRedOp_t op)
{
    if (op == ncclSum || op == ncclProd || op == ncclMax || op == ncclMin || op == ncclAvg)
        return ncclSuccess;
    return fail(ncclInvalidArgument, "%s: reduction %d is not one NCCL has", call, (int)op);
}

/* ---- groups ---- */

struct p2p {
    void *buf;
    size_t count;
    ncclDataType_t type;
    ncclComm_t comm;
    cudaStream_t stream;
};

int group_depth = 0;
std::vector<p2p> sends, recvs;

ncclResult_t queue_p2p(const char *call, std::vector<p2p> &queue, void *buf, size_t count,
                       ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream)
{
    ncclResult_t rc = check_call(call, comm, stream, type);
    if (rc != ncclSuccess)
        return rc;
    if (peer != 0)
        return fail(ncclInvalidArgument, "%s: peer %d in a communicator of 1 rank", call, peer);
    if (group_depth == 0)
        return fail(ncclInvalidUsage, "%s outside ncclGroupStart/End: with one rank it would "
                    "wait forever for its partner", call);
    if ((rc = check_buffer(call, "buffer", buf, count * type_size(type))) != ncclSuccess)
        return rc;
    queue.push_back(p2p{buf, count, type, comm, stream});
    return ncclSuccess;
}

/* A send and its receive are one transfer, which the emulator queues on
 * one stream; NCCL would order the two streams itself. */
ncclResult_t check_streams()
{
    for (const std::vector<p2p> *queue : {&sends, &recvs})
        for (const p2p &op : *queue)
            if (op.stream != sends.front().stream)
                return fail(ncclInvalidUsage, "ncclGroupEnd: sends and receives on more than "
                            "one stream; the emulator runs a group on one stream only");
    return ncclSuccess;
}

/* Pairs the group's sends and receives in order and queues the copies. */
ncclResult_t complete_group()
{
    ncclResult_t rc = ncclSuccess;
    if (sends.size() != recvs.size())
        rc = fail(ncclInvalidUsage, "ncclGroupEnd: %zu sends and %zu receives to self; each "
                  "needs a partner", sends.size(), recvs.size());
    else if (!sends.empty())
        rc = check_streams();
    for (size_t i = 0; rc == ncclSuccess && i < sends.size(); i++) {
        const p2p &s = sends[i], &r = recvs[i];
        if (s.comm != r.comm || s.type != r.type || s.count != r.count) {
            rc = fail(ncclInvalidUsage, "ncclGroupEnd: send %zu (%zu elements of type %d) does "
                      "not match receive %zu (%zu elements of type %d)", i, s.count,
                      (int)s.type, i, r.count, (int)r.type);
            break;
        }
        if (!is_comm(s.comm))
            rc = fail(ncclInvalidArgument, "ncclGroupEnd: a communicator destroyed inside "
                      "the group");
        else
            rc = queue_copy("ncclGroupEnd", r.buf, s.buf, s.count * type_size(s.type),
                            s.stream);
    }
    sends.clear();
    recvs.clear();
    return rc;
}

} // namespace

extern "C" {

ncclResult_t ncclGetUniqueId(ncclUniqueId *id)
{
    std::memset(id, 0, sizeof *id);
    std::snprintf(id->internal, sizeof id->internal, "%s %lu", id_magic, ++ids_made);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank)
{
    *comm = nullptr;
    if (nranks != 1 || rank != 0)
        return fail(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d; the emulator has "
                    "communicators of 1 rank only", rank, nranks);
    if (std::strncmp(id.internal, id_magic, sizeof id_magic - 1) != 0)
        return fail(ncclInvalidArgument, "ncclCommInitRank: an id ncclGetUniqueId did not make");
    *comm = new mhub_emu_nccl_comm{std::strtoul(id.internal + sizeof id_magic, nullptr, 10),
                                   ncclSuccess};
    comms.push_back(*comm);
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    for (size_t i = 0; i < comms.size(); i++)
        if (comms[i] == comm) {
            comms.erase(comms.begin() + (long)i);
            delete comm;
            return ncclSuccess;
        }
    return fail(ncclInvalidArgument, "ncclCommDestroy: not a live communicator");
}

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
    return rc != ncclSuccess ? rc
                             : copy_collective("ncclAllReduce", sendbuff, recvbuff, count,
                                               datatype, comm, stream);
}

ncclResult_t ncclReduceScatter(const void *sendbuff, void *recvbuff, size_t recvcount,
                               ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                               cudaStream_t stream)
{
    ncclResult_t rc = check_op("ncclReduceScatter", op);
    return rc != ncclSuccess ? rc
                             : copy_collective("ncclReduceScatter", sendbuff, recvbuff,
                                               recvcount, datatype, comm, stream);
}

ncclResult_t ncclAllGather(const void *sendbuff, void *recvbuff, size_t sendcount,
                           ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream)
{
    return copy_collective("ncclAllGather", sendbuff, recvbuff, sendcount, datatype, comm,
                           stream);
}

ncclResult_t ncclBroadcast(const void *sendbuff, void *recvbuff, size_t count,
                           ncclDataType_t datatype, int root, ncclComm_t comm,
                           cudaStream_t stream)
{
    if (root != 0)
        return fail(ncclInvalidArgument, "ncclBroadcast: root %d in a communicator of 1 rank",
                    root);
    return copy_collective("ncclBroadcast", sendbuff, recvbuff, count, datatype, comm, stream);
}

ncclResult_t ncclSend(const void *sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream)
{
    return queue_p2p("ncclSend", sends, const_cast<void *>(sendbuff), count, datatype, peer,
                     comm, stream);
}

ncclResult_t ncclRecv(void *recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream)
{
    return queue_p2p("ncclRecv", recvs, recvbuff, count, datatype, peer, comm, stream);
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
