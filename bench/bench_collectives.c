/* bench_collectives.c - collective bandwidth through mhub_comm, as nccl-tests.
 *
 * For each size from --min-bytes to --max-bytes (x4 steps) and each of
 * allreduce, reduce_scatter and allgather (f32 sum; out of place but for
 * the in-place runs below), it times
 * every iteration on every rank between a barrier and the call's return,
 * takes the slowest rank per iteration and reports the median over
 * iterations. "size" is the whole message as nccl-tests counts it: the
 * buffer of one rank for allreduce, the send buffer (every block) for
 * reduce_scatter, the receive buffer for allgather. algbw = size / time;
 * busbw applies nccl-tests' factors, 2(n-1)/n for allreduce and (n-1)/n
 * for the other two, so that numbers compare across rank counts and with
 * the link's bandwidth.
 *
 * Paths, printed side by side for each size: "mhub" (the default) goes
 * through mhub_comm over MPI; --raw-mpi adds "mpi", the same collective
 * called on MPI directly (blocking at up to 2 ranks, else nonblocking with
 * a test-and-yield loop, as mhub waits: MPI's own blocking wait spins for a
 * scheduler tick per call when ranks outnumber cores), to show what the
 * wrapper costs; --shm adds "shm", the all-reduce in place in memory from
 * mhub_comm_alloc (the shared-memory path on one node), and a closing
 * table of allreduce busbw with shm/mpi. --backend cuda times "nccl"
 * instead: the collectives on device buffers of a CUDA backend, through
 * mhub_comm over NCCL, each iteration ending when the backend's stream has
 * the result (mhub_request_wait only orders the stream; synchronize waits
 * for it), as nccl-tests times to the stream's completion. It needs a GPU
 * per rank and refuses to run without one. In-place runs (shm, and the
 * others with --inplace) rewrite the input before every iteration,
 * untimed, as a training step writes its gradient before reducing it.
 * The paths of a size take turns in rounds (see measure), so that their
 * ratios hold on a busy machine. Run: mpiexec -n 4 bench_collectives [flags]. */
#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "mhub/mhub.h"

enum { WARMUP = 2, ITERS_SMALL = 100, ITERS_LARGE = 20, ROUNDS = 4 };
#define SMALL_BYTES ((int64_t)1 << 20) /* up to here, ITERS_SMALL iterations */

typedef enum coll { ALLREDUCE, REDUCE_SCATTER, ALLGATHER, N_COLLS } coll;
static const char *const coll_names[N_COLLS] = {"allreduce", "reduce_scatter", "allgather"};

/* Who does the collective: mhub_comm, MPI itself, mhub_comm on
 * communicator memory (the shared-memory all-reduce), or mhub_comm over
 * NCCL on device memory. */
typedef enum path { PATH_MHUB, PATH_MPI, PATH_SHM, PATH_NCCL, N_PATHS } path;
static const char *const path_names[N_PATHS] = {"mhub", "mpi", "shm", "nccl"};

typedef struct options {
    int64_t min_bytes, max_bytes;
    int iters;          /* 0: ITERS_SMALL / ITERS_LARGE by size */
    bool run[N_COLLS];
    bool json;
    bool raw_mpi, shm, inplace;
    bool cuda;          /* --backend cuda: the NCCL path alone */
} options;

/* The buffers of one run: max_bytes each. send holds the input and is
 * never written, so in-place runs refill their buffer from it. */
typedef struct buffers {
    float *send, *recv;
    float *slot;        /* from mhub_comm_alloc; NULL without --shm */
    float *dev_send, *dev_recv; /* device copies; NULL without --backend cuda */
} buffers;

typedef struct result {
    coll which;
    path how;
    bool inplace;
    int64_t bytes, count;
    int iters;
    double time_us, algbw, busbw;
} result;

static void usage(FILE *to)
{
    fprintf(to,
            "usage: mpiexec -n N bench_collectives [flags]\n"
            "  --min-bytes B   smallest message (default 4K; suffixes K, M, G)\n"
            "  --max-bytes B   largest message (default 64M); sizes grow x4\n"
            "  --iters N       timed iterations per size (default 100 up to 1 MiB, else 20)\n"
            "  --op NAME       allreduce | reduce_scatter | allgather | all (default all)\n"
            "  --raw-mpi       also time the collectives called on MPI directly\n"
            "  --shm           also time allreduce in place in mhub_comm_alloc memory\n"
            "  --inplace       run the mhub and MPI allreduce in place too\n"
            "  --backend NAME  cpu (default) | cuda: device buffers through mhub_comm over\n"
            "                  NCCL, one GPU per rank (not with --raw-mpi or --shm)\n"
            "  --json          print JSON instead of a table\n");
}

/* "4096", "4K", "64M", "1G" (binary multiples). */
static bool parse_bytes(const char *s, int64_t *out)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || v <= 0)
        return false;
    int shift = 0;
    if (*end == 'K' || *end == 'k')
        shift = 10;
    else if (*end == 'M' || *end == 'm')
        shift = 20;
    else if (*end == 'G' || *end == 'g')
        shift = 30;
    if (shift != 0)
        end++;
    if (*end != '\0' || v > (INT64_MAX >> shift))
        return false;
    *out = (int64_t)v << shift;
    return true;
}

static bool parse_op(const char *s, options *o)
{
    memset(o->run, 0, sizeof o->run);
    if (strcmp(s, "all") == 0) {
        for (int i = 0; i < N_COLLS; i++)
            o->run[i] = true;
        return true;
    }
    for (int i = 0; i < N_COLLS; i++)
        if (strcmp(s, coll_names[i]) == 0) {
            o->run[i] = true;
            return true;
        }
    return false;
}

/* Returns 0 to run, 1 for --help, 2 for a bad command line (message
 * printed on rank 0 only, since every rank parses the same flags). */
static int parse_args(int argc, char **argv, options *o, bool loud)
{
    *o = (options){.min_bytes = 4 << 10, .max_bytes = 64 << 20, .run = {true, true, true}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_value = i + 1 < argc;
        const char *v = has_value ? argv[i + 1] : NULL;
        bool ok = true;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            if (loud)
                usage(stdout);
            return 1;
        } else if (strcmp(a, "--json") == 0) {
            o->json = true;
            continue;
        } else if (strcmp(a, "--raw-mpi") == 0) {
            o->raw_mpi = true;
            continue;
        } else if (strcmp(a, "--shm") == 0) {
            o->shm = true;
            continue;
        } else if (strcmp(a, "--inplace") == 0) {
            o->inplace = true;
            continue;
        } else if (!has_value && (strcmp(a, "--min-bytes") == 0 || strcmp(a, "--max-bytes") == 0 ||
                                  strcmp(a, "--iters") == 0 || strcmp(a, "--op") == 0 ||
                                  strcmp(a, "--backend") == 0)) {
            if (loud)
                fprintf(stderr, "bench_collectives: %s needs a value\n", a);
            return 2;
        } else if (strcmp(a, "--min-bytes") == 0) {
            ok = parse_bytes(v, &o->min_bytes);
        } else if (strcmp(a, "--max-bytes") == 0) {
            ok = parse_bytes(v, &o->max_bytes);
        } else if (strcmp(a, "--iters") == 0) {
            char *end = NULL;
            long n = strtol(v, &end, 10);
            ok = end != v && *end == '\0' && n >= 1 && n <= 1000000;
            o->iters = ok ? (int)n : 0;
        } else if (strcmp(a, "--op") == 0) {
            ok = parse_op(v, o);
        } else if (strcmp(a, "--backend") == 0) {
            ok = strcmp(v, "cpu") == 0 || strcmp(v, "cuda") == 0;
            o->cuda = strcmp(v, "cuda") == 0;
        } else {
            if (loud) {
                fprintf(stderr, "bench_collectives: unknown flag '%s'\n", a);
                usage(stderr);
            }
            return 2;
        }
        if (!ok) {
            if (loud)
                fprintf(stderr, "bench_collectives: bad value '%s' for %s\n", v, a);
            return 2;
        }
        i++;
    }
    if (o->cuda && (o->raw_mpi || o->shm)) {
        if (loud)
            fprintf(stderr, "bench_collectives: --raw-mpi and --shm time host memory; they do "
                            "not combine with --backend cuda\n");
        return 2;
    }
    if (o->min_bytes > o->max_bytes) {
        if (loud)
            fprintf(stderr, "bench_collectives: --min-bytes %lld is above --max-bytes %lld\n",
                    (long long)o->min_bytes, (long long)o->max_bytes);
        return 2;
    }
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* A failed collective would leave the other ranks waiting: stop the job. */
static void check(mhub_status s, const char *what)
{
    if (s == MHUB_OK)
        return;
    fprintf(stderr, "bench_collectives: %s: %s: %s\n", what, mhub_status_name(s),
            mhub_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

static void check_mpi(int rc, const char *what)
{
    if (rc == MPI_SUCCESS)
        return;
    fprintf(stderr, "bench_collectives: %s failed: MPI error %d\n", what, rc);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* One call of `which` moving `bytes` in nccl-tests' terms; per-rank counts
 * round down as they do. In place, send is recv. */
static mhub_status run_mhub(mhub_comm *c, coll which, float *send, float *recv, int64_t count)
{
    int64_t per_rank = count / c->size;
    switch (which) {
    case ALLREDUCE: return mhub_comm_allreduce(c, send, recv, count, MHUB_F32, MHUB_SUM);
    case REDUCE_SCATTER:
        return mhub_comm_reduce_scatter(c, send, recv, per_rank, MHUB_F32, MHUB_SUM);
    case ALLGATHER: return mhub_comm_allgather(c, send, recv, per_rank, MHUB_F32);
    case N_COLLS: break;
    }
    return MHUB_ERR_INVALID_ARG;
}

/* Blocking up to 2 ranks; beyond, the wait mhub does (see comm.h). */
static void mpi_complete(int rc, MPI_Request *req, bool blocking, const char *what)
{
    check_mpi(rc, what);
    if (blocking)
        return;
    int done = 0;
    while ((rc = MPI_Test(req, &done, MPI_STATUS_IGNORE)) == MPI_SUCCESS && !done)
        sched_yield();
    check_mpi(rc, what);
}

/* The same call on MPI_COMM_WORLD directly (counts fit an int: the sizes
 * here stay far below 8 GiB). */
static void run_mpi(int ranks, coll which, float *send, float *recv, int64_t count)
{
    bool blocking = ranks <= 2;
    int per_rank = (int)(count / ranks), n = (int)count;
    const void *src = send == recv ? MPI_IN_PLACE : send;
    MPI_Comm w = MPI_COMM_WORLD;
    MPI_Request req = MPI_REQUEST_NULL;
    int rc = MPI_SUCCESS;
    switch (which) {
    case ALLREDUCE:
        rc = blocking ? MPI_Allreduce(src, recv, n, MPI_FLOAT, MPI_SUM, w)
                      : MPI_Iallreduce(src, recv, n, MPI_FLOAT, MPI_SUM, w, &req);
        break;
    case REDUCE_SCATTER:
        rc = blocking ? MPI_Reduce_scatter_block(send, recv, per_rank, MPI_FLOAT, MPI_SUM, w)
                      : MPI_Ireduce_scatter_block(send, recv, per_rank, MPI_FLOAT, MPI_SUM, w,
                                                  &req);
        break;
    case ALLGATHER:
        rc = blocking ? MPI_Allgather(send, per_rank, MPI_FLOAT, recv, per_rank, MPI_FLOAT, w)
                      : MPI_Iallgather(send, per_rank, MPI_FLOAT, recv, per_rank, MPI_FLOAT, w,
                                       &req);
        break;
    case N_COLLS: break;
    }
    mpi_complete(rc, &req, blocking, coll_names[which]);
}

/* The buffers a run of `how` uses: in place, the input is refilled into
 * the receive buffer (or the slot) before each iteration. */
static void pick_buffers(const buffers *b, path how, bool inplace, float **send, float **recv)
{
    *recv = how == PATH_SHM ? b->slot : how == PATH_NCCL ? b->dev_recv : b->recv;
    *send = inplace ? *recv : how == PATH_NCCL ? b->dev_send : b->send;
}

static double bus_factor(coll which, int n)
{
    if (n <= 1)
        return 0.0; /* nothing crosses a link */
    return which == ALLREDUCE ? 2.0 * (n - 1) / n : (double)(n - 1) / n;
}

/* One path's part of a size: its communicator, buffers and timings. */
typedef struct run_of {
    path how;
    bool inplace;
    mhub_comm *comm;
    mhub_backend *be;   /* the CUDA backend of device buffers, else NULL */
    float *send, *recv;
    double *times;      /* iters of them */
} run_of;

/* A device path is done when the backend's stream is: the request's wait
 * only made the stream wait for the collective. */
static void run_once(const run_of *r, coll which, int64_t count)
{
    if (r->how == PATH_MPI) {
        run_mpi(r->comm->size, which, r->send, r->recv, count);
        return;
    }
    check(run_mhub(r->comm, which, r->send, r->recv, count), coll_names[which]);
    if (r->be != NULL)
        check(r->be->ops->synchronize(r->be), "synchronize");
}

/* Rewrite an in-place run's input, and (on a device) wait for the copy so
 * the timed call does not pay for it. */
static void refill(const run_of *r, const buffers *b, int64_t count)
{
    size_t bytes = (size_t)count * sizeof(float);
    if (r->be == NULL) {
        memcpy(r->recv, b->send, bytes);
        return;
    }
    check(r->be->ops->copy(r->be, r->recv, b->dev_send, bytes, MHUB_COPY_DEVICE_TO_DEVICE),
          "refilling the device buffer");
    check(r->be->ops->synchronize(r->be), "synchronize");
}

/* A run's result: slowest rank per iteration, median over iterations. */
static result summarize(mhub_comm *c, coll which, const run_of *r, int64_t count, int iters,
                        double *slowest)
{
    MPI_Reduce(r->times, slowest, iters, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    result res = {.which = which, .how = r->how, .inplace = r->inplace,
                  .bytes = count * (int64_t)sizeof(float), .count = count, .iters = iters};
    if (c->rank == 0) {
        double t = median(slowest, iters);
        res.time_us = t * 1e6;
        res.algbw = t > 0 ? (double)res.bytes / t / 1e9 : 0.0;
        res.busbw = res.algbw * bus_factor(which, c->size);
    }
    return res;
}

/* Time one size on each of the runs. They take turns in ROUNDS rounds,
 * so that a burst of other load on the machine (run-to-run noise here is
 * 2-3x) hits all paths alike and their ratio holds; each turn starts with
 * WARMUP untimed calls, because a path runs slower right after another
 * one (after MPICH's blocking all-reduce, the shared-memory one took 4x as
 * long at 4 MiB). */
static int measure(mhub_comm *c, coll which, int64_t bytes, int iters, run_of *runs, int nruns,
                   const buffers *b, double *slowest, result *out)
{
    int64_t count = bytes / (int64_t)sizeof(float);
    /* a reduce_scatter or allgather moves whole blocks only */
    if (which != ALLREDUCE)
        count -= count % c->size;
    for (int round = 0; round < ROUNDS; round++) {
        /* this round's share of the timed iterations */
        int first = iters * round / ROUNDS, last = iters * (round + 1) / ROUNDS;
        for (int k = 0; k < nruns; k++) {
            run_of *r = &runs[k];
            for (int it = first - WARMUP; it < last; it++) {
                if (r->inplace)
                    refill(r, b, count);
                check(mhub_comm_barrier(c), "barrier");
                double t0 = now_s();
                run_once(r, which, count);
                if (it >= first)
                    r->times[it] = now_s() - t0;
            }
        }
    }
    for (int k = 0; k < nruns; k++)
        out[k] = summarize(c, which, &runs[k], count, iters, slowest);
    return nruns;
}

static void print_table(const result *rs, int n, int ranks)
{
    printf("# collectives: %d ranks, f32 sum; time = median over iterations of the slowest "
           "rank\n",
           ranks);
    printf("# %-14s %-4s %-5s %12s %11s %11s %11s %11s %6s\n", "collective", "path", "place",
           "size(B)", "count", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "iters");
    for (int i = 0; i < n; i++)
        printf("  %-14s %-4s %-5s %12lld %11lld %11.1f %11.3f %11.3f %6d\n",
               coll_names[rs[i].which], path_names[rs[i].how], rs[i].inplace ? "in" : "out",
               (long long)rs[i].bytes, (long long)rs[i].count, rs[i].time_us, rs[i].algbw,
               rs[i].busbw, rs[i].iters);
}

/* The allreduce busbw of `how` at `bytes`, or 0 if not measured. */
static double busbw_of(const result *rs, int n, path how, int64_t bytes)
{
    for (int i = 0; i < n; i++)
        if (rs[i].which == ALLREDUCE && rs[i].how == how && rs[i].bytes == bytes)
            return rs[i].busbw;
    return 0.0;
}

/* The paths' allreduce busbw per size, and shm over raw MPI. */
static void print_comparison(const result *rs, int n)
{
    printf("# allreduce busbw (GB/s) by path\n");
    printf("# %12s %9s %9s %9s %9s\n", "size(B)", "mpi", "mhub", "shm", "shm/mpi");
    for (int i = 0; i < n; i++) {
        if (rs[i].which != ALLREDUCE || rs[i].how != PATH_SHM)
            continue;
        double mpi = busbw_of(rs, n, PATH_MPI, rs[i].bytes);
        double mhub = busbw_of(rs, n, PATH_MHUB, rs[i].bytes);
        printf("  %12lld %9.3f %9.3f %9.3f %9.2f\n", (long long)rs[i].bytes, mpi, mhub,
               rs[i].busbw, mpi > 0 ? rs[i].busbw / mpi : 0.0);
    }
}

static void print_json(const result *rs, int n, int ranks)
{
    printf("{\"ranks\": %d, \"dtype\": \"f32\", \"op\": \"sum\", \"results\": [", ranks);
    for (int i = 0; i < n; i++)
        printf("%s\n  {\"collective\": \"%s\", \"path\": \"%s\", \"inplace\": %s, "
               "\"bytes\": %lld, \"count\": %lld, \"time_us\": %.3f, \"algbw_gbps\": %.6f, "
               "\"busbw_gbps\": %.6f, \"iters\": %d}",
               i ? "," : "", coll_names[rs[i].which], path_names[rs[i].how],
               rs[i].inplace ? "true" : "false", (long long)rs[i].bytes, (long long)rs[i].count,
               rs[i].time_us, rs[i].algbw, rs[i].busbw, rs[i].iters);
    printf("\n]}\n");
}

/* The paths that run `which`: mhub always, MPI with --raw-mpi, and the
 * shared-memory path for allreduce with --shm; with --backend cuda, NCCL
 * alone. */
static bool path_runs(const options *o, coll which, path how)
{
    if (o->cuda)
        return how == PATH_NCCL;
    switch (how) {
    case PATH_MHUB: return true;
    case PATH_MPI: return o->raw_mpi;
    case PATH_SHM: return o->shm && which == ALLREDUCE;
    case PATH_NCCL: return false;
    case N_PATHS: break;
    }
    return false;
}

/* The CUDA side of --backend cuda: every rank needs a device, else every
 * rank stops with the reason (collective over MPI_COMM_WORLD). */
typedef struct device_side {
    mhub_backend *be;
    mhub_comm *nccl;
} device_side;

static bool cuda_usable_everywhere(void)
{
    char why[256] = "";
    int mine = mhub_cuda_available(why, sizeof why), all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!mine) {
        int rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        fprintf(stderr, "bench_collectives: --backend cuda: rank %d has no usable CUDA device: "
                        "%s\n", rank, why);
    }
    return all != 0;
}

/* One GPU per rank, picked by the rank on its node; the pool holds the
 * two device buffers and some room for the allocator's alignment. */
static device_side open_device(size_t buffer_bytes)
{
    MPI_Comm node = MPI_COMM_NULL;
    int local_rank = 0, local_ranks = 1;
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    MPI_Comm_rank(node, &local_rank);
    MPI_Comm_size(node, &local_ranks);
    MPI_Comm_free(&node);
    mhub_cuda_options co = {.device = -1, .local_rank = local_rank, .local_ranks = local_ranks,
                            .pool_bytes = 2 * buffer_bytes + ((size_t)16 << 20),
                            .matmul = MHUB_MATMUL_F32};
    device_side d = {0};
    check(mhub_cuda_backend_create(&co, &d.be), "creating the CUDA backend");
    MPI_Comm world = MPI_COMM_WORLD;
    check(mhub_comm_create_nccl(&world, d.be, "world", &d.nccl), "creating the NCCL communicator");
    return d;
}

static float *device_copy(mhub_backend *be, const float *src, size_t bytes)
{
    void *p = NULL;
    check(be->ops->alloc(be, bytes, &p), "allocating a device buffer");
    check(be->ops->copy(be, p, src, bytes, MHUB_COPY_HOST_TO_DEVICE), "filling a device buffer");
    check(be->ops->synchronize(be), "synchronize");
    return p;
}

static void *alloc_or_die(size_t bytes)
{
    void *p = malloc(bytes);
    if (p == NULL) {
        fprintf(stderr, "bench_collectives: out of memory for %zu bytes\n", bytes);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return p;
}

enum { MAX_RESULTS = N_COLLS * N_PATHS * 64 };

static int run(const options *o)
{
    if (o->cuda && !cuda_usable_everywhere())
        return 2;
    mhub_comm *world = NULL;
    check(mhub_comm_create_mpi_world(&world), "creating the world communicator");
    int max_iters = o->iters ? o->iters : ITERS_SMALL;
    /* reduce_scatter reads and allgather writes max_bytes; one set of
     * buffers serves every size, so no size pays for page faults */
    size_t n = (size_t)(o->max_bytes / (int64_t)sizeof(float)) + 1;
    buffers b = {.send = alloc_or_die(n * sizeof(float)), .recv = alloc_or_die(n * sizeof(float))};
    if (o->shm)
        check(mhub_comm_alloc(world, n * sizeof(float), (void **)&b.slot),
              "mhub_comm_alloc (--shm)");
    double *times = alloc_or_die((size_t)N_PATHS * (size_t)max_iters * sizeof(double));
    double *slowest = alloc_or_die((size_t)max_iters * sizeof(double));
    result *rs = calloc(MAX_RESULTS, sizeof(result));
    if (rs == NULL)
        MPI_Abort(MPI_COMM_WORLD, 1);
    for (size_t i = 0; i < n; i++)
        b.send[i] = b.recv[i] = (float)(i % 7);
    device_side dev = {0};
    if (o->cuda) {
        dev = open_device(n * sizeof(float));
        b.dev_send = device_copy(dev.be, b.send, n * sizeof(float));
        b.dev_recv = device_copy(dev.be, b.recv, n * sizeof(float));
    }

    int nres = 0;
    for (int w = 0; w < N_COLLS; w++) {
        if (!o->run[w])
            continue;
        run_of runs[N_PATHS];
        int nruns = 0;
        for (int h = 0; h < N_PATHS; h++) {
            if (!path_runs(o, (coll)w, (path)h))
                continue;
            run_of *r = &runs[nruns];
            r->how = (path)h;
            r->inplace = h == PATH_SHM || (o->inplace && w == ALLREDUCE);
            r->times = times + (size_t)nruns * (size_t)max_iters;
            r->comm = h == PATH_NCCL ? dev.nccl : world;
            r->be = h == PATH_NCCL ? dev.be : NULL;
            pick_buffers(&b, r->how, r->inplace, &r->send, &r->recv);
            nruns++;
        }
        for (int64_t bytes = o->min_bytes; nres + N_PATHS <= MAX_RESULTS; bytes *= 4) {
            int iters = o->iters ? o->iters : bytes <= SMALL_BYTES ? ITERS_SMALL : ITERS_LARGE;
            nres += measure(world, (coll)w, bytes, iters, runs, nruns, &b, slowest, rs + nres);
            if (bytes > o->max_bytes / 4)
                break;
        }
    }
    if (world->rank == 0) {
        if (o->json) {
            print_json(rs, nres, world->size);
        } else {
            print_table(rs, nres, world->size);
            if (o->shm && o->run[ALLREDUCE])
                print_comparison(rs, nres);
        }
    }
    if (o->cuda) {
        dev.be->ops->free(dev.be, b.dev_send);
        dev.be->ops->free(dev.be, b.dev_recv);
        mhub_comm_free(dev.nccl);
        mhub_backend_free(dev.be);
    }
    mhub_comm_free_mem(world, b.slot);
    free(b.send);
    free(b.recv);
    free(times);
    free(slowest);
    free(rs);
    mhub_comm_free(world);
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    options o;
    int parsed = parse_args(argc, argv, &o, rank == 0);
    int rc = parsed == 0 ? run(&o) : parsed == 1 ? 0 : 2;
    MPI_Finalize();
    return rc;
}
