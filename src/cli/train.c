/* train.c - `mhub train`: train the MLP on the built-in synthetic task.
 *
 * One process for now. Step s trains on samples [s*B, (s+1)*B) of the
 * task's endless stream, so no sample is seen twice; accuracy is measured
 * on held-out samples from index 2^40 on, which training never reaches. */
#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mhub/mhub.h"
#include "src/cli/cli.h"

#define CMD "train"
#define EVAL_FIRST_SAMPLE (UINT64_C(1) << 40)

typedef struct train_options {
    const char *model;
    int steps;
    int batch;
    int features;
    int classes;
    mhub_mlp_config mlp;
    double lr;
    double momentum;
    double weight_decay;
    long seed;
    int blas_threads;
    int log_every;
    int eval_samples;
    bool quiet;
    int grad_accum;
    int micro_shards;      /* deterministic mode: shards of the global batch */
    mhub_ddp_config ddp;
    mhub_dp_engine_kind engine;
    mhub_optim_kind optimizer;
    bool digest;
} train_options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mhub train --model mlp [options]\n"
            "\n"
            "Train a model on the built-in synthetic classification task and print\n"
            "step, loss and throughput. Under mpiexec -n N each rank trains on its\n"
            "slice of every global batch (data parallel).\n"
            "\n"
            "  --model NAME        model to train: mlp (required)\n"
            "  --steps N           optimizer steps (default 600)\n"
            "  --batch N           global batch: samples per step over all ranks (default 128)\n"
            "  --grad-accum N      micro-batches per step on each rank (default 1)\n"
            "  --dp-engine NAME    data-parallel engine: ddp (default), distopt (sharded\n"
            "                      optimizer state, ZeRO-1/2) or fsdp (everything sharded)\n"
            "  --optimizer NAME    sgd (default, with --momentum) or adamw\n"
            "  --param-dtype T     parameter storage: f32 (default), bf16 or f16; compute is\n"
            "                      f32 and the optimizer keeps f32 main copies (ddp engine)\n"
            "  --grad-reduce-in-fp32  16-bit models: accumulate and reduce gradients in f32\n"
            "  --overlap-param-gather  distopt: gather updated parameters during the next\n"
            "                      forward instead of right after the step\n"
            "  --bucket-size N     gradient elements per bucket (default max(40M, 1M x ranks))\n"
            "  --ddp-config FILE   a JSON object of DDP settings (Megatron-Core's field names:\n"
            "                      overlap_grad_reduce, bucket_size, average_in_collective,\n"
            "                      check_for_nan_in_grad, use_distributed_optimizer,\n"
            "                      overlap_param_gather, deterministic, loss_is_global_mean);\n"
            "                      flags after it override it\n"
            "  --no-overlap        reduce gradients after backward instead of during it\n"
            "  --digest            end with 'params sha256: <hex>' of the trained parameters\n"
            "  --deterministic     bitwise-identical training on any power-of-two rank count\n"
            "  --micro-shards N    deterministic mode: shards of the global batch, a power\n"
            "                      of two, one backward each (default 8)\n"
            "  --hidden W[,W...]   hidden layer widths (default 128,128)\n"
            "  --features N        input features (default 32)\n"
            "  --classes N         classes (default 8)\n"
            "  --lr F              learning rate (default 0.1)\n"
            "  --momentum F        SGD momentum in [0, 1) (default 0.9)\n"
            "  --weight-decay F    L2 weight decay (default 0)\n"
            "  --seed N            seed of the data and the initial weights (default 1234)\n"
            "  --threads N         BLAS threads (default: automatic)\n"
            "  --log-every N       print a progress line every N steps (default 50)\n"
            "  --eval-samples N    held-out samples for the final accuracy (default 4096)\n"
            "  --quiet             print only the summary\n"
            "  --help              this text\n");
}

static int usage_error(void)
{
    fprintf(stderr, "\n");
    usage(stderr);
    return MHUB_EXIT_USAGE;
}

static bool parse_widths(const char *text, mhub_mlp_config *cfg)
{
    cfg->num_hidden = 0;
    if (!strcmp(text, "none"))
        return true;
    const char *p = text;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char tok[32];
        if (len >= sizeof tok) {
            fprintf(stderr, "mhub %s: --hidden: '%.*s' is too long\n", CMD, (int)len, p);
            return false;
        }
        memcpy(tok, p, len);
        tok[len] = '\0';
        if (cfg->num_hidden == MHUB_MLP_MAX_HIDDEN) {
            fprintf(stderr, "mhub %s: --hidden: at most %d layers\n", CMD, MHUB_MLP_MAX_HIDDEN);
            return false;
        }
        if (!cli_parse_int(CMD, "--hidden", tok, 1, 1 << 16, &cfg->hidden[cfg->num_hidden]))
            return false;
        cfg->num_hidden++;
        if (!comma)
            return true;
        p = comma + 1;
    }
}

/* Read a DDP config file over the settings so far. */
static bool load_ddp_config(const char *path, mhub_ddp_config *cfg)
{
    if (cli_read_ddp_config(path, cfg) == MHUB_OK)
        return true;
    fprintf(stderr, "mhub %s: --ddp-config: %s\n", CMD, cli_error_text(mhub_last_error()));
    return false;
}

/* Returns -1 to continue, or an exit code. */
static int parse_args(int argc, char **argv, train_options *o)
{
    memset(o, 0, sizeof *o);
    o->steps = 600;
    o->batch = 128;
    o->features = 32;
    o->classes = 8;
    o->mlp.num_hidden = 2;
    o->mlp.hidden[0] = o->mlp.hidden[1] = 128;
    o->lr = 0.1;
    o->momentum = 0.9;
    o->seed = 1234;
    o->log_every = 50;
    o->eval_samples = 4096;
    o->grad_accum = 1;
    mhub_ddp_config_init(&o->ddp);
    o->ddp.overlap_grad_reduce = true;
    /* every sample's loss weighs 1/global batch (micro_step), so the
     * engines only sum: no scaling pass over the gradients */
    o->ddp.loss_is_global_mean = true;
    for (int i = 1; i < argc; i++) {
        char name[64];
        const char *inline_value = NULL;
        const char *arg = argv[i];
        if (cli_split_flag(arg, name, sizeof name, &inline_value))
            arg = name;
        bool ok = true;
        const char *v = NULL;
#define VALUE() (v = cli_flag_value(CMD, argc, argv, &i, inline_value))
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            usage(stdout);
            return MHUB_EXIT_OK;
        } else if (!strcmp(arg, "--quiet") && !inline_value) {
            o->quiet = true;
        } else if (!strcmp(arg, "--no-overlap") && !inline_value) {
            o->ddp.overlap_grad_reduce = false;
        } else if (!strcmp(arg, "--digest") && !inline_value) {
            o->digest = true;
        } else if (!strcmp(arg, "--deterministic") && !inline_value) {
            o->ddp.deterministic = true;
        } else if (!strcmp(arg, "--micro-shards")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 1, 1 << 20, &o->micro_shards);
            if (ok && (o->micro_shards & (o->micro_shards - 1)) != 0) {
                fprintf(stderr, "mhub %s: --micro-shards: %d is not a power of two\n", CMD,
                        o->micro_shards);
                ok = false;
            }
        } else if (!strcmp(arg, "--grad-accum")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 1, 1 << 20, &o->grad_accum);
        } else if (!strcmp(arg, "--ddp-config")) {
            ok = VALUE() && load_ddp_config(v, &o->ddp);
            if (ok && o->ddp.use_distributed_optimizer)
                o->engine = MHUB_DP_DISTOPT;
        } else if (!strcmp(arg, "--bucket-size")) {
            long b = 0;
            ok = VALUE() && cli_parse_long(CMD, arg, v, 1, 0x7fffffffffffL, &b);
            o->ddp.bucket_size = b;
        } else if (!strcmp(arg, "--dp-engine")) {
            ok = VALUE() != NULL;
            if (ok && mhub_dp_engine_parse(v, &o->engine) != 0) {
                fprintf(stderr,
                        "mhub %s: --dp-engine: unknown engine '%s' (available: ddp, distopt, "
                        "fsdp)\n",
                        CMD, v);
                ok = false;
            }
        } else if (!strcmp(arg, "--optimizer")) {
            ok = VALUE() != NULL;
            if (ok && mhub_optim_kind_parse(v, &o->optimizer) != 0) {
                fprintf(stderr, "mhub %s: --optimizer: unknown optimizer '%s' (available: sgd, "
                                "adamw)\n",
                        CMD, v);
                ok = false;
            }
        } else if (!strcmp(arg, "--param-dtype")) {
            ok = VALUE() != NULL;
            if (ok && mhub_dtype_parse(v, &o->mlp.param_dtype) != 0) {
                fprintf(stderr, "mhub %s: --param-dtype: unknown dtype '%s' (f32, bf16, f16)\n",
                        CMD, v);
                ok = false;
            }
        } else if (!strcmp(arg, "--grad-reduce-in-fp32") && !inline_value) {
            o->ddp.grad_reduce_in_fp32 = true;
        } else if (!strcmp(arg, "--overlap-param-gather") && !inline_value) {
            o->ddp.overlap_param_gather = true;
        } else if (!strcmp(arg, "--model")) {
            ok = VALUE() != NULL;
            o->model = v;
        } else if (!strcmp(arg, "--steps")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 1, 100000000, &o->steps);
        } else if (!strcmp(arg, "--batch")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 1, 1 << 20, &o->batch);
        } else if (!strcmp(arg, "--hidden")) {
            ok = VALUE() && parse_widths(v, &o->mlp);
        } else if (!strcmp(arg, "--features")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 1, 1 << 16, &o->features);
        } else if (!strcmp(arg, "--classes")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 2, 1 << 16, &o->classes);
        } else if (!strcmp(arg, "--lr")) {
            ok = VALUE() && cli_parse_double(CMD, arg, v, 0.0, 1e3, &o->lr);
        } else if (!strcmp(arg, "--momentum")) {
            ok = VALUE() && cli_parse_double(CMD, arg, v, 0.0, 0.999999, &o->momentum);
        } else if (!strcmp(arg, "--weight-decay")) {
            ok = VALUE() && cli_parse_double(CMD, arg, v, 0.0, 1e3, &o->weight_decay);
        } else if (!strcmp(arg, "--seed")) {
            ok = VALUE() && cli_parse_long(CMD, arg, v, 0, 0x7fffffffL, &o->seed);
        } else if (!strcmp(arg, "--threads")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 1, 256, &o->blas_threads);
        } else if (!strcmp(arg, "--log-every")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 1, 100000000, &o->log_every);
        } else if (!strcmp(arg, "--eval-samples")) {
            ok = VALUE() && cli_parse_int(CMD, arg, v, 0, 1 << 24, &o->eval_samples);
        } else {
            fprintf(stderr, "mhub %s: unknown option '%s'\n", CMD, argv[i]);
            ok = false;
        }
#undef VALUE
        if (!ok)
            return usage_error();
    }
    if (!o->model) {
        fprintf(stderr, "mhub %s: --model is required (available: mlp)\n", CMD);
        return usage_error();
    }
    if (strcmp(o->model, "mlp") != 0) {
        fprintf(stderr, "mhub %s: --model: unknown model '%s' (available: mlp)\n", CMD, o->model);
        return usage_error();
    }
    if (o->micro_shards && !o->ddp.deterministic) {
        fprintf(stderr, "mhub %s: --micro-shards needs --deterministic (use --grad-accum)\n", CMD);
        return usage_error();
    }
    if (o->ddp.deterministic && o->grad_accum != 1) {
        fprintf(stderr,
                "mhub %s: --grad-accum does not apply with --deterministic: the global batch is "
                "cut into --micro-shards pieces instead\n",
                CMD);
        return usage_error();
    }
    if (o->ddp.deterministic && !o->micro_shards)
        o->micro_shards = 8;
    o->mlp.inputs = o->features;
    o->mlp.classes = o->classes;
    return -1;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct trainer {
    train_options o;
    int rank, world;
    mhub_comm *comm;       /* the data-parallel group: every rank */
    mhub_backend *be;
    mhub_provider *provider;
    mhub_chunk_list chunks;   /* get_model's result: one wrapped chunk */
    mhub_mlp *model;          /* the chunk's model and engine */
    mhub_dp_engine *engine;
    mhub_synthetic_task task;
    mhub_sampler sampler;
    int64_t local_batch;   /* samples per step on this rank */
    int micro_per_rank;    /* micro-batches (or deterministic shards) per step */
    int64_t micro_rows;    /* samples per micro-batch */
    float *x;              /* backend memory, one micro-batch (or eval chunk) */
    int32_t *y;
    float *host_x;         /* host staging */
    int32_t *host_y;
    double *step_ms;       /* per-step time without data generation */
} trainer;

static void trainer_free(trainer *t)
{
    if (t->be) {
        if (t->x)
            t->be->ops->free(t->be, t->x);
        if (t->y)
            t->be->ops->free(t->be, t->y);
    }
    mhub_chunk_list_free(&t->chunks);
    mhub_provider_free(t->provider);
    mhub_synthetic_free(&t->task);
    mhub_backend_free(t->be);
    mhub_comm_free(t->comm);
    free(t->host_x);
    free(t->host_y);
    free(t->step_ms);
}

enum { EVAL_CHUNK = 4096 };

/* The model through the provider path: an "mlp" provider from the flags,
 * its process groups, and get_model wrapping it with the chosen engine.
 * Every rank builds the same initial model: values depend only on (seed,
 * parameter name, element), never on the rank. */
static mhub_status build_model(trainer *t, int64_t rows)
{
    const train_options *o = &t->o;
    mhub_provider_config *base = NULL;
    MHUB_TRY(mhub_config_create(mhub_mlp_provider_type(), &base));
    mhub_mlp_provider_config *cfg = (mhub_mlp_provider_config *)base;
    cfg->mlp = o->mlp;
    cfg->base.params_dtype = o->mlp.param_dtype;
    cfg->base.seed = o->seed;
    mhub_status s = mhub_provider_create(base, &t->provider);
    mhub_config_free(base);
    MHUB_TRY(s);
    mhub_provider_set_backend(t->provider, t->be);
    mhub_provider_set_micro_batch(t->provider, rows);
    MHUB_TRY(mhub_provider_initialize_model_parallel(t->provider, t->comm, NULL, NULL));
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, o->optimizer);
    oc.lr = (float)o->lr;
    oc.momentum = o->optimizer == MHUB_OPTIM_SGD ? (float)o->momentum : 0.0f;
    oc.weight_decay = (float)o->weight_decay;
    mhub_ddp_config ddp = o->ddp;
    ddp.use_distributed_optimizer = o->engine == MHUB_DP_DISTOPT;
    mhub_get_model_options opts;
    mhub_get_model_options_init(&opts);
    opts.ddp_config = &ddp;
    opts.use_fsdp = o->engine == MHUB_DP_FSDP;
    opts.optim = &oc;
    FILE *devnull = o->quiet ? fopen("/dev/null", "w") : NULL;
    opts.log = devnull;
    s = mhub_get_model(t->provider, &opts, &t->chunks);
    if (devnull)
        fclose(devnull);
    MHUB_TRY(s);
    t->model = mhub_chunk_model(t->chunks.items[0]);
    t->engine = mhub_chunk_engine(t->chunks.items[0]);
    return MHUB_OK;
}

static mhub_status trainer_init(trainer *t)
{
    const train_options *o = &t->o;
    MHUB_TRY(mhub_comm_create_mpi_world(&t->comm));
    t->rank = t->comm->rank;
    t->world = t->comm->size;
    if (o->ddp.deterministic) {
        /* a fixed cut of the global batch, shared out over the ranks */
        if ((t->world & (t->world - 1)) != 0)
            return mhub_error(MHUB_ERR_INVALID_ARG,
                              "--deterministic needs a power-of-two number of ranks, not %d",
                              t->world);
        if (o->micro_shards % t->world != 0 || o->batch % o->micro_shards != 0)
            return mhub_error(MHUB_ERR_INVALID_ARG,
                              "--deterministic: --micro-shards %d must be a multiple of the %d "
                              "ranks and divide --batch %d",
                              o->micro_shards, t->world, o->batch);
        t->micro_per_rank = o->micro_shards / t->world;
    } else {
        if (o->batch % (t->world * o->grad_accum) != 0)
            return mhub_error(MHUB_ERR_INVALID_ARG,
                              "--batch %d must be divisible by ranks x --grad-accum = %d x %d",
                              o->batch, t->world, o->grad_accum);
        t->micro_per_rank = o->grad_accum;
    }
    t->local_batch = o->batch / t->world;
    t->micro_rows = t->local_batch / t->micro_per_rank;
    int64_t rows = t->micro_rows > EVAL_CHUNK ? t->micro_rows : EVAL_CHUNK;
    /* deterministic mode pins one BLAS thread, so no GEMM's summation order
     * can depend on how many threads a rank count leaves per process */
    int threads = o->ddp.deterministic && !o->blas_threads ? 1 : o->blas_threads;
    mhub_cpu_options copts = {.blas_threads = threads, .local_ranks = t->world};
    MHUB_TRY(mhub_cpu_backend_create(&copts, &t->be));
    MHUB_TRY(mhub_synthetic_init(&t->task, o->features, o->classes, (uint64_t)o->seed));
    MHUB_TRY(mhub_sampler_init(&t->sampler, 0, o->batch, (uint64_t)o->seed, false));
    MHUB_TRY(build_model(t, rows));
    void *p = NULL;
    MHUB_TRY(t->be->ops->alloc(t->be, (size_t)rows * (size_t)o->features * sizeof(float), &p));
    t->x = p;
    MHUB_TRY(t->be->ops->alloc(t->be, (size_t)rows * sizeof(int32_t), &p));
    t->y = p;
    t->host_x = malloc((size_t)rows * (size_t)o->features * sizeof(float));
    t->host_y = malloc((size_t)rows * sizeof(int32_t));
    t->step_ms = malloc((size_t)o->steps * sizeof(double));
    if (!t->host_x || !t->host_y || !t->step_ms)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "training buffers");
    return MHUB_OK;
}

/* Generate samples [first, first+rows) of the endless synthetic stream and
 * copy them to the backend. */
static mhub_status load_samples(trainer *t, uint64_t first, int64_t rows)
{
    MHUB_TRY(mhub_synthetic_batch(&t->task, first, rows, t->host_x, t->host_y));
    MHUB_TRY(t->be->ops->copy(t->be, t->x, t->host_x,
                              (size_t)rows * (size_t)t->o.features * sizeof(float),
                              MHUB_COPY_HOST_TO_DEVICE));
    return t->be->ops->copy(t->be, t->y, t->host_y, (size_t)rows * sizeof(int32_t),
                            MHUB_COPY_HOST_TO_DEVICE);
}

/* This rank's micro-batch k of `step`: its slice of the global batch, so
 * the samples a step sees do not depend on the number of ranks. */
static mhub_status load_micro_batch(trainer *t, int step, int k, double *data_seconds)
{
    double t0 = now_seconds();
    int64_t first, count;
    uint64_t sample;
    /* the engine says which shard of the global batch this micro-batch is
     * (deterministic FSDP works in rounds); shard j is the slice the
     * sampler gives rank j / M's micro-batch j % M */
    int m = t->micro_per_rank;
    int64_t shard = mhub_dp_engine_shard_index(t->engine, t->rank, t->world, k, m);
    MHUB_TRY(mhub_sampler_rank_slice(&t->sampler, (int)(shard / m), t->world, m, (int)(shard % m),
                                     &first, &count));
    /* the endless stream is in order: the slice is a contiguous run */
    MHUB_TRY(mhub_sampler_index(&t->sampler, step, first, &sample));
    MHUB_TRY(load_samples(t, sample, count));
    *data_seconds += now_seconds() - t0;
    return MHUB_OK;
}

/* One micro-batch: forward and backward into the engine's buffer. */
static mhub_status micro_step(trainer *t, int step, int k, double *data_seconds, float *loss_sum)
{
    float micro_loss = 0;
    MHUB_TRY(load_micro_batch(t, step, k, data_seconds));
    MHUB_TRY(mhub_dp_engine_micro_begin(t->engine, k, t->micro_per_rank));
    MHUB_TRY(mhub_mlp_forward(t->model, t->x, t->y, t->micro_rows, &micro_loss));
    /* every sample weighs 1/global batch, the same for any rank count:
     * the engine sums (loss_is_global_mean), deterministically if asked */
    float weight = 1.0f / (float)t->o.batch;
    MHUB_TRY(mhub_mlp_backward(t->model, weight));
    MHUB_TRY(mhub_dp_engine_micro_end(t->engine, k, t->micro_per_rank));
    *loss_sum += micro_loss * (float)t->micro_rows;
    return MHUB_OK;
}

/* One optimizer step over the global batch; *loss is its mean loss. */
static mhub_status train_step(trainer *t, int step, float *loss)
{
    double data_seconds = 0, t0 = now_seconds();
    float local_sum = 0;
    MHUB_TRY(mhub_dp_engine_zero_grad(t->engine));
    for (int k = 0; k < t->micro_per_rank; k++)
        MHUB_TRY(micro_step(t, step, k, &data_seconds, &local_sum));
    MHUB_TRY(mhub_dp_engine_finish_grad_sync(t->engine));
    MHUB_TRY(mhub_dp_engine_step(t->engine));
    MHUB_TRY(t->be->ops->synchronize(t->be));
    t->step_ms[step] = 1e3 * (now_seconds() - t0 - data_seconds);
    float global_sum = local_sum;
    MHUB_TRY(mhub_comm_allreduce(t->comm, &local_sum, &global_sum, 1, MHUB_F32, MHUB_SUM));
    *loss = global_sum / (float)t->o.batch;
    if (!isfinite(*loss))
        return mhub_error(MHUB_ERR_NUMERIC, "loss became %f at step %d: lower --lr (now %g)",
                          (double)*loss, step + 1, t->o.lr);
    return MHUB_OK;
}

/* Held-out loss and accuracy; the eval samples are split over the ranks. */
static mhub_status evaluate(trainer *t, double *accuracy, float *loss)
{
    int64_t n = t->o.eval_samples;
    int64_t begin = n * t->rank / t->world, end = n * (t->rank + 1) / t->world;
    float sums[2] = {0, 0}; /* loss sum, correct count: exact in f32 below 2^24 */
    MHUB_TRY(mhub_dp_engine_sync_params(t->engine));
    for (int64_t done = begin; done < end;) {
        int64_t rows = end - done < EVAL_CHUNK ? end - done : EVAL_CHUNK;
        float l = 0;
        int64_t c = 0;
        MHUB_TRY(load_samples(t, EVAL_FIRST_SAMPLE + (uint64_t)done, rows));
        MHUB_TRY(mhub_mlp_forward(t->model, t->x, t->y, rows, &l));
        MHUB_TRY(mhub_mlp_count_correct(t->model, &c));
        sums[0] += l * (float)rows;
        sums[1] += (float)c;
        done += rows;
    }
    float total[2];
    MHUB_TRY(mhub_comm_allreduce(t->comm, sums, total, 2, MHUB_F32, MHUB_SUM));
    *accuracy = n ? (double)total[1] / (double)n : 0;
    *loss = n ? total[0] / (float)n : 0;
    return MHUB_OK;
}

static void print_header(const trainer *t)
{
    const train_options *o = &t->o;
    int64_t nparams = mhub_param_list_numel(mhub_mlp_params(t->model));
    printf("model mlp %d", o->features);
    for (int i = 0; i < o->mlp.num_hidden; i++)
        printf("-%d", o->mlp.hidden[i]);
    printf("-%d, %lld parameters; %d rank(s), engine %s%s%s; global batch %d "
           "(%lld per rank in %d micro-batch(es)), %d steps, %s lr %g, %d BLAS "
           "thread(s) per rank\n",
           o->classes, (long long)nparams, t->world, mhub_dp_engine_name(o->engine),
           o->ddp.overlap_grad_reduce && !o->ddp.deterministic ? ", overlapped" : "",
           o->ddp.deterministic ? ", deterministic" : "", o->batch, (long long)t->local_batch,
           t->micro_per_rank, o->steps, mhub_optim_kind_name(o->optimizer), o->lr,
           mhub_cpu_backend_threads(t->be));
}

static mhub_status run(trainer *t)
{
    const train_options *o = &t->o;
    MHUB_TRY(trainer_init(t));
    bool talk = t->rank == 0 && !o->quiet;
    double flops = mhub_mlp_flops_per_step(&o->mlp, o->batch);
    if (talk)
        print_header(t);
    float first_loss = 0, loss = 0;
    double window_ms = 0;
    for (int s = 0; s < o->steps; s++) {
        MHUB_TRY(train_step(t, s, &loss));
        if (s == 0)
            first_loss = loss;
        window_ms += t->step_ms[s];
        if (talk && ((s + 1) % o->log_every == 0 || s == 0 || s + 1 == o->steps)) {
            int n = s == 0 ? 1 : ((s + 1) % o->log_every ? (s + 1) % o->log_every : o->log_every);
            double ms = window_ms / n;
            printf("step %6d/%d  loss %.4f  %7.3f ms/step  %9.0f samples/s  %6.2f GFLOP/s\n",
                   s + 1, o->steps, (double)loss, ms, 1e3 * o->batch / ms, flops / ms * 1e-6);
            fflush(stdout);
            window_ms = 0;
        }
    }
    double acc = 0;
    float eval_loss = 0;
    if (o->eval_samples > 0)
        MHUB_TRY(evaluate(t, &acc, &eval_loss));
    char digest[MHUB_SHA256_HEX_CHARS] = "";
    if (o->digest)
        MHUB_TRY(mhub_dp_engine_digest(t->engine, digest));
    if (t->rank != 0)
        return MHUB_OK;
    mhub_dp_engine_stats st;
    mhub_dp_engine_get_stats(t->engine, &st);
    qsort(t->step_ms, (size_t)o->steps, sizeof(double), compare_doubles);
    double median = t->step_ms[o->steps / 2];
    printf("first loss %.4f, last loss %.4f; held-out: loss %.4f, accuracy %.2f%% on %d "
           "samples (chance %.2f%%); median %.3f ms/step, %.0f samples/s\n",
           (double)first_loss, (double)loss, (double)eval_loss, 100.0 * acc, o->eval_samples,
           100.0 / o->classes, median, 1e3 * o->batch / median);
    if (t->world > 1)
        printf("gradient sync: %lld of %lld bucket collectives started during backward; "
               "%.3f ms/step waited after backward (rank 0)\n",
               (long long)st.collectives_in_backward, (long long)st.collectives,
               1e3 * st.sync_wait_seconds / (double)(st.steps ? st.steps : 1));
    if (o->digest)
        printf("params sha256: %s\n", digest);
    return MHUB_OK;
}

int mhub_cli_train(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--config"))
            return mhub_cli_train_config(argc, argv);
    train_options o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    MPI_Init(NULL, NULL);
    trainer t;
    memset(&t, 0, sizeof t);
    t.o = o;
    mhub_status s = run(&t);
    /* every rank reaches the same verdict on bad settings (they are
     * checked before any communication), so each reports it and exits */
    if (s != MHUB_OK)
        fprintf(stderr, "mhub %s: rank %d: %s: %s\n", CMD, t.rank, mhub_status_name(s),
                mhub_last_error());
    trainer_free(&t);
    MPI_Finalize();
    if (s == MHUB_ERR_INVALID_ARG)
        return MHUB_EXIT_USAGE;
    return s == MHUB_OK ? MHUB_EXIT_OK : MHUB_EXIT_FAILED;
}
