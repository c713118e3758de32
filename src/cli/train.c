/* train.c - `mhub train`: train the MLP on the built-in synthetic task.
 *
 * One process for now. Step s trains on samples [s*B, (s+1)*B) of the
 * task's endless stream, so no sample is seen twice; accuracy is measured
 * on held-out samples from index 2^40 on, which training never reaches. */
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
} train_options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mhub train --model mlp [options]\n"
            "\n"
            "Train a model on the built-in synthetic classification task and print\n"
            "step, loss and throughput.\n"
            "\n"
            "  --model NAME        model to train: mlp (required)\n"
            "  --steps N           optimizer steps (default 600)\n"
            "  --batch N           samples per step (default 128)\n"
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
    mhub_backend *be;
    mhub_mlp *model;
    mhub_sgd *opt;
    mhub_synthetic_task task;
    float *x;          /* backend memory, batch rows */
    int32_t *y;
    float *host_x;     /* host staging */
    int32_t *host_y;
    double *step_ms;   /* per-step model time, for the median */
} trainer;

static void trainer_free(trainer *t)
{
    if (t->be) {
        if (t->x)
            t->be->ops->free(t->be, t->x);
        if (t->y)
            t->be->ops->free(t->be, t->y);
    }
    mhub_sgd_free(t->opt);
    mhub_mlp_free(t->model);
    mhub_synthetic_free(&t->task);
    mhub_backend_free(t->be);
    free(t->host_x);
    free(t->host_y);
    free(t->step_ms);
}

static mhub_status trainer_init(trainer *t)
{
    const train_options *o = &t->o;
    int64_t rows = o->batch > o->eval_samples ? o->batch : o->eval_samples;
    if (rows > 65536)
        rows = 65536;
    if (rows < o->batch)
        rows = o->batch;
    mhub_cpu_options copts = {.blas_threads = o->blas_threads, .local_ranks = 1};
    MHUB_TRY(mhub_cpu_backend_create(&copts, &t->be));
    MHUB_TRY(mhub_synthetic_init(&t->task, o->features, o->classes, (uint64_t)o->seed));
    MHUB_TRY(mhub_mlp_create(&o->mlp, t->be, rows, (uint64_t)o->seed, &t->model));
    mhub_sgd_config sc = {.lr = (float)o->lr, .momentum = (float)o->momentum,
                          .weight_decay = (float)o->weight_decay};
    MHUB_TRY(mhub_sgd_create(mhub_mlp_params(t->model), t->be, &sc, &t->opt));
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

/* Generate samples [first, first+rows) and copy them to the backend. */
static mhub_status load_batch(trainer *t, uint64_t first, int64_t rows)
{
    MHUB_TRY(mhub_synthetic_batch(&t->task, first, rows, t->host_x, t->host_y));
    MHUB_TRY(t->be->ops->copy(t->be, t->x, t->host_x,
                              (size_t)rows * (size_t)t->o.features * sizeof(float),
                              MHUB_COPY_HOST_TO_DEVICE));
    return t->be->ops->copy(t->be, t->y, t->host_y, (size_t)rows * sizeof(int32_t),
                            MHUB_COPY_HOST_TO_DEVICE);
}

static mhub_status train_step(trainer *t, int step, float *loss)
{
    int64_t b = t->o.batch;
    MHUB_TRY(load_batch(t, (uint64_t)step * (uint64_t)b, b));
    double t0 = now_seconds();
    MHUB_TRY(mhub_param_list_zero_grad(mhub_mlp_params(t->model)));
    MHUB_TRY(mhub_mlp_forward(t->model, t->x, t->y, b, loss));
    MHUB_TRY(mhub_mlp_backward(t->model, 1.0f / (float)b));
    MHUB_TRY(mhub_sgd_step(t->opt));
    MHUB_TRY(t->be->ops->synchronize(t->be));
    t->step_ms[step] = 1e3 * (now_seconds() - t0);
    if (!isfinite(*loss))
        return mhub_error(MHUB_ERR_NUMERIC,
                          "loss became %f at step %d: lower --lr (now %g)", (double)*loss,
                          step + 1, t->o.lr);
    return MHUB_OK;
}

static mhub_status evaluate(trainer *t, double *accuracy, float *loss)
{
    int64_t n = t->o.eval_samples, done = 0, correct = 0;
    double loss_sum = 0;
    while (done < n) {
        int64_t rows = n - done < 65536 ? n - done : 65536;
        float l = 0;
        int64_t c = 0;
        MHUB_TRY(load_batch(t, EVAL_FIRST_SAMPLE + (uint64_t)done, rows));
        MHUB_TRY(mhub_mlp_forward(t->model, t->x, t->y, rows, &l));
        MHUB_TRY(mhub_mlp_count_correct(t->model, &c));
        loss_sum += (double)l * (double)rows;
        correct += c;
        done += rows;
    }
    *accuracy = n ? (double)correct / (double)n : 0;
    *loss = n ? (float)(loss_sum / (double)n) : 0;
    return MHUB_OK;
}

static mhub_status run(trainer *t)
{
    const train_options *o = &t->o;
    MHUB_TRY(trainer_init(t));
    double flops = mhub_mlp_flops_per_step(&o->mlp, o->batch);
    int64_t nparams = mhub_param_list_numel(mhub_mlp_params(t->model));
    if (!o->quiet) {
        printf("model mlp %d", o->features);
        for (int i = 0; i < o->mlp.num_hidden; i++)
            printf("-%d", o->mlp.hidden[i]);
        printf("-%d, %lld parameters; batch %d, %d steps, lr %g, momentum %g, "
               "%d BLAS thread(s)\n",
               o->classes, (long long)nparams, o->batch, o->steps, o->lr, o->momentum,
               mhub_cpu_backend_threads(t->be));
    }
    float first_loss = 0, loss = 0;
    double window_ms = 0;
    for (int s = 0; s < o->steps; s++) {
        MHUB_TRY(train_step(t, s, &loss));
        if (s == 0)
            first_loss = loss;
        window_ms += t->step_ms[s];
        if (!o->quiet && ((s + 1) % o->log_every == 0 || s == 0 || s + 1 == o->steps)) {
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
    qsort(t->step_ms, (size_t)o->steps, sizeof(double), compare_doubles);
    double median = t->step_ms[o->steps / 2];
    printf("first loss %.4f, last loss %.4f; held-out: loss %.4f, accuracy %.2f%% on %d "
           "samples (chance %.2f%%); median %.3f ms/step, %.0f samples/s\n",
           (double)first_loss, (double)loss, (double)eval_loss, 100.0 * acc, o->eval_samples,
           100.0 / o->classes, median, 1e3 * o->batch / median);
    return MHUB_OK;
}

int mhub_cli_train(int argc, char **argv)
{
    train_options o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    int world = 1;
    MPI_Init(NULL, NULL);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (world > 1) {
        int rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        fprintf(stderr,
                "mhub %s: rank %d: running on %d ranks needs a data-parallel engine, which "
                "this version does not have yet; run one process\n",
                CMD, rank, world);
        MPI_Finalize();
        return MHUB_EXIT_FAILED;
    }
    trainer t;
    memset(&t, 0, sizeof t);
    t.o = o;
    mhub_status s = run(&t);
    if (s != MHUB_OK)
        fprintf(stderr, "mhub %s: %s: %s\n", CMD, mhub_status_name(s), mhub_last_error());
    trainer_free(&t);
    MPI_Finalize();
    return s == MHUB_OK ? MHUB_EXIT_OK : MHUB_EXIT_FAILED;
}
