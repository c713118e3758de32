/* bench_ddp.c - step time of the MLP under each data-parallel engine.
 *
 *   mpiexec -n 2 bench/bench_ddp [--hidden 2048,2048] [--batch 128] [--json]
 *
 * For each configuration it trains `--steps` timed steps (after
 * `--warmup`) on the synthetic task and reports the median over steps of
 * the slowest rank's step time. The "no comm" rows run the same engine on
 * a one-rank communicator per process: the same ranks doing the same
 * compute with the gradient communication skipped, so
 *   exposed communication = step(overlap) - step(no comm)
 * and the fraction hidden under backward follows from the no-overlap row. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mhub/mhub.h"

typedef struct bench_options {
    mhub_mlp_config mlp;
    int batch;
    int steps;
    int warmup;
    int64_t bucket_size;
    int engine_mask;    /* bit k: engine k; 0 = all */
    bool average_in_collective;
    bool json;
} bench_options;

typedef struct row {
    mhub_dp_engine_kind engine;
    bool overlap;
    bool skip_comm;
} row;

#define CHECK(expr)                                                                    \
    do {                                                                               \
        mhub_status s_ = (expr);                                                       \
        if (s_ != MHUB_OK) {                                                           \
            fprintf(stderr, "bench_ddp: %s: %s\n", #expr, mhub_last_error());         \
            MPI_Abort(MPI_COMM_WORLD, 1);                                              \
        }                                                                              \
    } while (0)

static double now(void)
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

static void usage(void)
{
    fprintf(stderr, "usage: bench_ddp [--features N] [--hidden W,W] [--classes N] [--batch N] "
                    "[--steps N] [--warmup N] [--bucket-size N] [--engine ddp|distopt|fsdp]... "
                    "[--average-in-collective] [--json]\n");
}

static bool parse_int(const char *text, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (!*text || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse(int argc, char **argv, bench_options *o)
{
    *o = (bench_options){.mlp = {.inputs = 1024, .num_hidden = 2, .hidden = {2048, 2048},
                                 .classes = 10},
                         .batch = 128, .steps = 20, .warmup = 3,
                         .bucket_size = MHUB_DDP_BUCKET_AUTO};
    for (int i = 1; i < argc; i++) {
        long v = 0;
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        if (!strcmp(a, "--average-in-collective")) {
            o->average_in_collective = true;
            continue;
        }
        if (!val)
            return false;
        i++;
        if (!strcmp(a, "--hidden")) {
            char widths[256];
            if (snprintf(widths, sizeof widths, "%s", val) >= (int)sizeof widths)
                return false;
            o->mlp.num_hidden = 0;
            for (char *save = NULL, *t = strtok_r(widths, ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                if (o->mlp.num_hidden == MHUB_MLP_MAX_HIDDEN || !parse_int(t, 1, 1 << 16, &v))
                    return false;
                o->mlp.hidden[o->mlp.num_hidden++] = (int)v;
            }
        } else if (!strcmp(a, "--engine")) {
            mhub_dp_engine_kind k;
            if (mhub_dp_engine_parse(val, &k) != 0)
                return false;
            o->engine_mask |= 1 << k;
        } else if (!parse_int(val, 1, 1L << 40, &v)) {
            return false;
        } else if (!strcmp(a, "--features")) {
            o->mlp.inputs = (int)v;
        } else if (!strcmp(a, "--classes")) {
            o->mlp.classes = (int)v;
        } else if (!strcmp(a, "--batch")) {
            o->batch = (int)v;
        } else if (!strcmp(a, "--steps")) {
            o->steps = (int)v;
        } else if (!strcmp(a, "--warmup")) {
            o->warmup = (int)v;
        } else if (!strcmp(a, "--bucket-size")) {
            o->bucket_size = v;
        } else {
            return false;
        }
    }
    return o->mlp.classes >= 2;
}

/* Median over timed steps of the slowest rank's step, in ms. */
static double run(const bench_options *o, const row *r, mhub_backend *be, mhub_comm *world,
                  mhub_comm *alone)
{
    mhub_comm *dp = r->skip_comm ? alone : world;
    int64_t local = o->batch / world->size;
    mhub_mlp *m;
    CHECK(mhub_mlp_create(&o->mlp, be, local, 1, &m));
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    cfg.overlap_grad_reduce = r->overlap;
    cfg.overlap_param_gather = r->overlap;
    cfg.bucket_size = o->bucket_size;
    cfg.average_in_collective = o->average_in_collective;
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    oc.lr = 0.01f;
    oc.momentum = 0.9f;
    mhub_dp_engine *e;
    CHECK(mhub_dp_engine_create(r->engine, mhub_mlp_params(m), dp, &cfg, &oc, NULL, &e));
    mhub_grad_ready_fn ready;
    void *ready_user;
    mhub_unit_hooks hooks;
    CHECK(mhub_dp_engine_hooks(e, &ready, &ready_user, &hooks));
    mhub_mlp_set_grad_ready(m, ready, ready_user);
    mhub_mlp_set_unit_hooks(m, &hooks);
    mhub_synthetic_task task;
    CHECK(mhub_synthetic_init(&task, o->mlp.inputs, o->mlp.classes, 1));
    float *x = malloc((size_t)local * (size_t)o->mlp.inputs * sizeof *x);
    int32_t *y = malloc((size_t)local * sizeof *y);
    double *ms = malloc((size_t)o->steps * sizeof *ms);
    CHECK(mhub_synthetic_batch(&task, (uint64_t)(world->rank * local), local, x, y));
    for (int s = -o->warmup; s < o->steps; s++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = now();
        CHECK(mhub_dp_engine_zero_grad(e));
        CHECK(mhub_mlp_forward(m, x, y, local, NULL));
        CHECK(mhub_mlp_backward(m, 1.0f / (float)local));
        CHECK(mhub_dp_engine_finish_grad_sync(e));
        CHECK(mhub_dp_engine_step(e));
        double mine = 1e3 * (now() - t0), slowest = mine;
        MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (s >= 0)
            ms[s] = slowest;
    }
    qsort(ms, (size_t)o->steps, sizeof *ms, cmp_double);
    double median = ms[o->steps / 2];
    free(x);
    free(y);
    free(ms);
    mhub_synthetic_free(&task);
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_dp_engine_free(e);
    mhub_mlp_free(m);
    return median;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    bench_options o;
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (!parse(argc, argv, &o) || o.batch % size != 0) {
        if (rank == 0)
            usage();
        MPI_Finalize();
        return 2;
    }
    mhub_backend *be;
    CHECK(mhub_cpu_backend_create(&(mhub_cpu_options){.local_ranks = size}, &be));
    mhub_comm *world, *alone;
    CHECK(mhub_comm_create_mpi_world(&world));
    CHECK(mhub_comm_split(world, rank, 0, "alone", &alone));
    mhub_mlp *probe;
    CHECK(mhub_mlp_create(&o.mlp, NULL, 0, 0, &probe));
    int64_t params = mhub_param_list_numel(mhub_mlp_params(probe));
    mhub_mlp_free(probe);
    if (rank == 0 && !o.json)
        printf("# MLP %d-...-%d, %lld parameters (%.1f MiB of gradients), global batch %d on %d "
               "rank(s), %d BLAS thread(s) per rank; median of %d steps, slowest rank\n"
               "%-8s %-8s %-8s %10s %12s\n",
               o.mlp.inputs, o.mlp.classes, (long long)params, params * 4.0 / 1048576.0,
               o.batch, size, mhub_cpu_backend_threads(be), o.steps, "engine", "overlap",
               "comm", "ms/step", "vs no-comm");
    double base = 0;
    for (int i = 0; i < 9; i++) {
        /* per engine: no comm (overlap on), overlap on, overlap off */
        row rr = {(mhub_dp_engine_kind)(i / 3), i % 3 != 2, i % 3 == 0};
        const row *r = &rr;
        if (o.engine_mask && !(o.engine_mask & (1 << rr.engine)))
            continue;
        double ms = run(&o, r, be, world, alone);
        if (r->skip_comm)
            base = ms;
        if (rank != 0)
            continue;
        if (o.json)
            printf("{\"engine\":\"%s\",\"overlap\":%s,\"comm\":%s,\"ranks\":%d,\"params\":%lld,"
                   "\"batch\":%d,\"ms_per_step\":%.4f,\"vs_no_comm\":%.4f}\n",
                   mhub_dp_engine_name(r->engine), r->overlap ? "true" : "false",
                   r->skip_comm ? "false" : "true", size, (long long)params, o.batch, ms,
                   ms / base);
        else
            printf("%-8s %-8s %-8s %10.3f %11.3fx\n", mhub_dp_engine_name(r->engine),
                   r->overlap ? "on" : "off", r->skip_comm ? "skipped" : "mpi", ms, ms / base);
    }
    mhub_comm_free(alone);
    mhub_comm_free(world);
    mhub_backend_free(be);
    MPI_Finalize();
    return 0;
}
