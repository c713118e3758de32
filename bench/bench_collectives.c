/* bench_collectives.c - collective bandwidth through mhub_comm, as nccl-tests.
 *
 * For each size from --min-bytes to --max-bytes (x4 steps) and each of
 * allreduce, reduce_scatter and allgather (f32 sum, out of place), it times
 * every iteration on every rank between a barrier and the call's return,
 * takes the slowest rank per iteration and reports the median over
 * iterations. "size" is the whole message as nccl-tests counts it: the
 * buffer of one rank for allreduce, the send buffer (every block) for
 * reduce_scatter, the receive buffer for allgather. algbw = size / time;
 * busbw applies nccl-tests' factors, 2(n-1)/n for allreduce and (n-1)/n
 * for the other two, so that numbers compare across rank counts and with
 * the link's bandwidth. Run: mpiexec -n 4 bench_collectives [flags]. */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

#include "mhub/mhub.h"

enum { WARMUP = 2, ITERS_SMALL = 100, ITERS_LARGE = 20 };
#define SMALL_BYTES ((int64_t)1 << 20) /* up to here, ITERS_SMALL iterations */

typedef enum coll { ALLREDUCE, REDUCE_SCATTER, ALLGATHER, N_COLLS } coll;
static const char *const coll_names[N_COLLS] = {"allreduce", "reduce_scatter", "allgather"};

typedef struct options {
    int64_t min_bytes, max_bytes;
    int iters;          /* 0: ITERS_SMALL / ITERS_LARGE by size */
    bool run[N_COLLS];
    bool json;
} options;

typedef struct result {
    coll which;
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
        } else if (!has_value && (strcmp(a, "--min-bytes") == 0 || strcmp(a, "--max-bytes") == 0 ||
                                  strcmp(a, "--iters") == 0 || strcmp(a, "--op") == 0)) {
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

/* One call of `which` moving `bytes` in nccl-tests' terms; per-rank counts
 * round down as they do. */
static mhub_status run_once(mhub_comm *c, coll which, float *send, float *recv, int64_t count)
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

static double bus_factor(coll which, int n)
{
    if (n <= 1)
        return 0.0; /* nothing crosses a link */
    return which == ALLREDUCE ? 2.0 * (n - 1) / n : (double)(n - 1) / n;
}

/* Time one size: slowest rank per iteration, median over iterations. */
static result measure(mhub_comm *c, coll which, int64_t bytes, int iters, float *send,
                      float *recv, double *times, double *slowest)
{
    int64_t count = bytes / (int64_t)sizeof(float);
    /* a reduce_scatter or allgather moves whole blocks only */
    if (which != ALLREDUCE)
        count -= count % c->size;
    for (int it = -WARMUP; it < iters; it++) {
        check(mhub_comm_barrier(c), "barrier");
        double t0 = now_s();
        check(run_once(c, which, send, recv, count), coll_names[which]);
        if (it >= 0)
            times[it] = now_s() - t0;
    }
    MPI_Reduce(times, slowest, iters, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    result r = {.which = which, .bytes = count * (int64_t)sizeof(float), .count = count,
                .iters = iters};
    if (c->rank == 0) {
        double t = median(slowest, iters);
        r.time_us = t * 1e6;
        r.algbw = t > 0 ? (double)r.bytes / t / 1e9 : 0.0;
        r.busbw = r.algbw * bus_factor(which, c->size);
    }
    return r;
}

static void print_table(const result *rs, int n, int ranks)
{
    printf("# mhub_comm collectives: %d ranks, f32 sum, out of place; time = median over "
           "iterations of the slowest rank\n",
           ranks);
    printf("# %-14s %12s %11s %11s %11s %11s %6s\n", "collective", "size(B)", "count",
           "time(us)", "algbw(GB/s)", "busbw(GB/s)", "iters");
    for (int i = 0; i < n; i++)
        printf("  %-14s %12lld %11lld %11.1f %11.3f %11.3f %6d\n", coll_names[rs[i].which],
               (long long)rs[i].bytes, (long long)rs[i].count, rs[i].time_us, rs[i].algbw,
               rs[i].busbw, rs[i].iters);
}

static void print_json(const result *rs, int n, int ranks)
{
    printf("{\"ranks\": %d, \"dtype\": \"f32\", \"op\": \"sum\", \"inplace\": false, "
           "\"results\": [",
           ranks);
    for (int i = 0; i < n; i++)
        printf("%s\n  {\"collective\": \"%s\", \"bytes\": %lld, \"count\": %lld, "
               "\"time_us\": %.3f, \"algbw_gbps\": %.6f, \"busbw_gbps\": %.6f, \"iters\": %d}",
               i ? "," : "", coll_names[rs[i].which], (long long)rs[i].bytes,
               (long long)rs[i].count, rs[i].time_us, rs[i].algbw, rs[i].busbw, rs[i].iters);
    printf("\n]}\n");
}

static int run(const options *o)
{
    mhub_comm *world = NULL;
    check(mhub_comm_create_mpi_world(&world), "creating the world communicator");
    int max_iters = o->iters ? o->iters : ITERS_SMALL;
    /* reduce_scatter reads and allgather writes max_bytes; one pair of
     * buffers serves every size, so no size pays for page faults */
    size_t n = (size_t)(o->max_bytes / (int64_t)sizeof(float)) + 1;
    float *send = malloc(n * sizeof(float)), *recv = malloc(n * sizeof(float));
    double *times = malloc((size_t)max_iters * sizeof(double));
    double *slowest = malloc((size_t)max_iters * sizeof(double));
    result *rs = calloc(N_COLLS * 64, sizeof(result));
    if (!send || !recv || !times || !slowest || !rs) {
        fprintf(stderr, "bench_collectives: out of memory for %lld-byte buffers\n",
                (long long)o->max_bytes);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (size_t i = 0; i < n; i++)
        send[i] = recv[i] = (float)(i % 7);

    int nres = 0;
    for (int w = 0; w < N_COLLS; w++) {
        if (!o->run[w])
            continue;
        for (int64_t b = o->min_bytes; nres < N_COLLS * 64; b *= 4) {
            int iters = o->iters ? o->iters : b <= SMALL_BYTES ? ITERS_SMALL : ITERS_LARGE;
            rs[nres++] = measure(world, (coll)w, b, iters, send, recv, times, slowest);
            if (b > o->max_bytes / 4)
                break;
        }
    }
    if (world->rank == 0) {
        if (o->json)
            print_json(rs, nres, world->size);
        else
            print_table(rs, nres, world->size);
    }
    free(send);
    free(recv);
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
