/* eval.c - `mhub eval`: a GPT's mean next-token loss on a token file.
 *
 * Window i takes tokens [i T, i T + T] of the data (T = --seq-len):
 * inputs the first T, targets the last T; windows 0 .. N-1 are scored
 * (all of them by default) and the loss is the mean over every target
 * token. Under mpiexec each rank scores a contiguous block of windows;
 * the per-rank sums of per-token losses are gathered and added in f64 in
 * rank order, so any rank count gives the same number up to the f32
 * rounding inside the forward. Every rank reads and checks the same
 * inputs before any communication, so bad input fails on all of them
 * alike (rank 0 reports it). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "mhub/mhub.h"
#include "src/cli/cli.h"
#include "src/fileio.h"

#define CMD "eval"
/* Windows per forward: bounds the activation memory. */
#define EVAL_BATCH 8

typedef struct eval_options {
    const char *config_path, *hf_dir, *weights_dir, *data_path;
    int seq_len;     /* 0: the model's seq_length */
    long batches;    /* 0: every window */
    bool json;
} eval_options;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mhub eval (--config FILE [--weights DIR] | --hf DIR) --data FILE\n"
            "                 [--seq-len T] [--batches N] [--json]\n"
            "\n"
            "Print the mean next-token loss of a GPT on a token file (byte-level text or\n"
            "a Megatron .bin/.idx): window i is tokens [i T, i T + T], scored for\n"
            "windows 0..N-1 (all by default); T defaults to the model's seq_length.\n"
            "  --hf DIR       a Hugging Face model directory: config.json + weights\n"
            "  --config FILE  a training config (its \"model\" section) or a provider\n"
            "                 config (mhub_model.json, or a directory holding it);\n"
            "                 without --weights the model has its\n"
            "                 seeded initial weights (the config's seed)\n"
            "  --weights DIR  Hugging Face-format weights for --config's model\n"
            "  --json         print {\"loss\", \"tokens\", \"windows\"} instead\n"
            "Under mpiexec the windows are split over the ranks; the loss is the same.\n"
            "Each rank runs the whole model, whatever tensor/pipeline layout the config\n"
            "was written for (the layout does not change the function).\n");
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "mhub " CMD ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(mhub " CMD " --help for usage)\n");
    return MHUB_EXIT_USAGE;
}

/* -1 to go on, else the exit code. */
static int parse_args(int argc, char **argv, eval_options *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 1; i < argc; i++) {
        char name[64];
        const char *inl = NULL;
        if (!cli_split_flag(argv[i], name, sizeof name, &inl))
            snprintf(name, sizeof name, "%s", argv[i]);
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            usage(stdout);
            return MHUB_EXIT_OK;
        }
        if (!strcmp(name, "--json")) {
            o->json = true;
            continue;
        }
        const char **str = !strcmp(name, "--config")    ? &o->config_path
                           : !strcmp(name, "--hf")      ? &o->hf_dir
                           : !strcmp(name, "--weights") ? &o->weights_dir
                           : !strcmp(name, "--data")    ? &o->data_path
                                                        : NULL;
        bool number = !strcmp(name, "--seq-len") || !strcmp(name, "--batches");
        if (!str && !number)
            return usage_error("unknown flag '%s'", argv[i]);
        const char *v = cli_flag_value(CMD, argc, argv, &i, inl);
        if (!v)
            return MHUB_EXIT_USAGE;
        if (str)
            *str = v;
        else if (!strcmp(name, "--seq-len") ? !cli_parse_int(CMD, name, v, 1, 1 << 20, &o->seq_len)
                                            : !cli_parse_long(CMD, name, v, 1, 1L << 40,
                                                              &o->batches))
            return MHUB_EXIT_USAGE;
    }
    if (!o->config_path == !o->hf_dir)
        return usage_error("%s", "give exactly one of --config FILE and --hf DIR");
    if (o->hf_dir && o->weights_dir)
        return usage_error("%s", "--weights goes with --config (--hf DIR holds its weights)");
    if (!o->data_path)
        return usage_error("%s", "--data FILE is required");
    return -1;
}

/* --config: a training config's "model" section, or a provider config. */
static mhub_status read_config(const char *path, mhub_provider_config **out)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) /* a directory holding mhub_model.json */
        return mhub_config_from_pretrained(path, MHUB_CONFIG_STRICT, NULL, out);
    char *text = NULL;
    size_t len = 0;
    MHUB_TRY(mhub_file_read_all(path, 16 << 20, "a config", &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root)
        return mhub_error(MHUB_ERR_PARSE, "%s: not valid JSON", path);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    mhub_status s;
    if (cJSON_IsObject(model)) {
        char *section = cJSON_PrintUnformatted(model);
        char source[1100];
        snprintf(source, sizeof source, "%s (model)", path);
        s = section ? mhub_config_from_json(section, strlen(section), source,
                                            MHUB_CONFIG_STRICT, out)
                    : mhub_error(MHUB_ERR_NO_MEMORY, "%s: model section", path);
        free(section);
    } else {
        s = mhub_config_from_pretrained(path, MHUB_CONFIG_STRICT, NULL, out);
    }
    cJSON_Delete(root);
    return s;
}

typedef struct evaluator {
    eval_options o;
    mhub_comm *world;
    mhub_backend *be;
    mhub_provider_config *cfg;
    mhub_gpt *model;
    mhub_dataset *data;
    int seq;
    int64_t windows;
    int32_t *inputs, *targets;
    float *losses;
} evaluator;

/* Eval runs the whole model on every rank, whatever layout the config
 * was written for: tensor, pipeline, context and expert parallelism split
 * the same function over ranks, so one rank computes it alone. The one
 * layout-dependent part of the function is the vocabulary padding
 * (a multiple of make_vocab_size_divisible_by x tp), kept by folding tp
 * into the divisor. */
static void as_whole_model(mhub_gpt_config *g)
{
    mhub_provider_config *b = &g->base;
    g->make_vocab_size_divisible_by *= b->tensor_model_parallel_size;
    b->tensor_model_parallel_size = 1;
    b->pipeline_model_parallel_size = 1;
    b->virtual_pipeline_model_parallel_size = 0;
    b->context_parallel_size = 1;
    b->expert_model_parallel_size = 1;
    b->expert_tensor_parallel_size = 0;
    b->sequence_parallel = false;
}

static mhub_status build_model(evaluator *e)
{
    if (e->o.hf_dir)
        MHUB_TRY(mhub_config_from_hf(e->o.hf_dir, &e->cfg));
    else
        MHUB_TRY(read_config(e->o.config_path, &e->cfg));
    const char *src = e->o.hf_dir ? e->o.hf_dir : e->o.config_path;
    if (e->cfg->type != mhub_gpt_provider_type())
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: eval scores \"gpt\" models, not \"%s\"",
                          src, e->cfg->type->name);
    mhub_gpt_config *g = (mhub_gpt_config *)e->cfg;
    as_whole_model(g);
    e->seq = e->o.seq_len ? e->o.seq_len : g->seq_length;
    if (e->seq > g->seq_length)
        return mhub_error(MHUB_ERR_INVALID_ARG, "--seq-len %d exceeds the model's seq_length %d "
                          "(%s)", e->seq, g->seq_length, src);
    /* one whole model per rank; the seeds are those of the provider's
     * rank 0 (provider.h), so --config without weights scores the same
     * initial model training starts from */
    mhub_provide_args a = {.pre_process = true, .post_process = true, .vp_stage = -1,
                           .pp_size = 1, .vp_size = 1, .tp_size = 1, .backend = e->be,
                           .seed = (uint64_t)e->cfg->seed,
                           .tp_seed = (uint64_t)e->cfg->seed + 2718, .micro_batch = EVAL_BATCH};
    MHUB_TRY(mhub_gpt_create(g, &a, &e->model));
    if (!mhub_gpt_runnable(e->model))
        return mhub_error(MHUB_ERR_UNSUPPORTED, "%s: eval runs f32 models with "
                          "tensor_model_parallel_size 1", src);
    const char *weights = e->o.hf_dir ? e->o.hf_dir : e->o.weights_dir;
    return weights ? mhub_gpt_load_hf_weights(e->model, weights) : MHUB_OK;
}

/* Tokens [0, n) all inside [0, vocab), read a block at a time so a large
 * dataset is not held in memory. */
static mhub_status check_tokens(const evaluator *e, int64_t n, int vocab)
{
    enum { BLOCK = 1 << 20 };
    int32_t *tokens = malloc((size_t)(n < BLOCK ? n : BLOCK) * sizeof *tokens);
    if (!tokens)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: tokens", e->o.data_path);
    mhub_status s = MHUB_OK;
    for (int64_t first = 0; s == MHUB_OK && first < n; first += BLOCK) {
        int64_t count = n - first < BLOCK ? n - first : BLOCK;
        s = mhub_dataset_read(e->data, first, count, tokens);
        for (int64_t i = 0; s == MHUB_OK && i < count; i++)
            if (tokens[i] < 0 || tokens[i] >= vocab)
                s = mhub_error(MHUB_ERR_INVALID_ARG, "%s: token %d at position %lld is outside "
                               "the model's vocabulary of %d", e->o.data_path, tokens[i],
                               (long long)(first + i), vocab);
    }
    free(tokens);
    return s;
}

/* Open the data, count the windows and check every token scored is
 * inside the model's vocabulary. Every rank checks all of them, so a bad
 * token fails every rank before any communication. */
static mhub_status prepare_data(evaluator *e)
{
    MHUB_TRY(mhub_dataset_open(e->o.data_path, &e->data));
    MHUB_TRY(mhub_dataset_windows(e->data, e->seq, &e->windows));
    if (e->o.batches > e->windows)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: --batches %ld, but the data holds %lld "
                          "windows of %d tokens", e->o.data_path, e->o.batches,
                          (long long)e->windows, e->seq);
    if (e->o.batches)
        e->windows = e->o.batches;
    return check_tokens(e, e->windows * e->seq + 1,
                        ((const mhub_gpt_config *)e->cfg)->vocab_size);
}

/* Sum the per-token losses of windows [first, end) in f64. */
static mhub_status score(evaluator *e, int64_t first, int64_t end, double *sum)
{
    size_t rows = (size_t)EVAL_BATCH * (size_t)e->seq;
    e->inputs = malloc(rows * sizeof *e->inputs);
    e->targets = malloc(rows * sizeof *e->targets);
    e->losses = malloc(rows * sizeof *e->losses);
    if (!e->inputs || !e->targets || !e->losses)
        return mhub_error(MHUB_ERR_NO_MEMORY, "eval buffers");
    *sum = 0;
    for (int64_t w = first; w < end; w += EVAL_BATCH) {
        int64_t b = end - w < EVAL_BATCH ? end - w : EVAL_BATCH;
        for (int64_t k = 0; k < b; k++)
            MHUB_TRY(mhub_dataset_window(e->data, e->seq, w + k, e->inputs + k * e->seq,
                                         e->targets + k * e->seq));
        MHUB_TRY(mhub_gpt_forward(e->model, e->inputs, e->targets, b, e->seq, NULL));
        size_t bytes = (size_t)(b * e->seq) * sizeof *e->losses;
        MHUB_TRY(e->be->ops->copy(e->be, e->losses, mhub_gpt_losses(e->model), bytes,
                                  MHUB_COPY_DEVICE_TO_HOST));
        for (int64_t i = 0; i < b * e->seq; i++)
            *sum += e->losses[i];
    }
    return MHUB_OK;
}

/* Every rank's f64 sum, added in rank order. The comm reduces f32 only,
 * so each double travels as its 8 bytes (two f32 slots, copied, never
 * added) through an allgather. */
static mhub_status total(evaluator *e, double mine, double *all)
{
    int n = e->world->size;
    double *sums = calloc((size_t)n, sizeof *sums);
    if (!sums)
        return mhub_error(MHUB_ERR_NO_MEMORY, "eval sums");
    mhub_status s = mhub_comm_allgather(e->world, &mine, sums, 2, MHUB_F32);
    *all = 0;
    for (int r = 0; s == MHUB_OK && r < n; r++)
        *all += sums[r];
    free(sums);
    return s;
}

static mhub_status run(evaluator *e)
{
    MHUB_TRY(mhub_comm_create_mpi_world(&e->world));
    MHUB_TRY(mhub_cpu_backend_create(&(mhub_cpu_options){.local_ranks = e->world->size},
                                     &e->be));
    MHUB_TRY(build_model(e));
    MHUB_TRY(prepare_data(e));
    int r = e->world->rank, n = e->world->size;
    double mine = 0, sum = 0;
    MHUB_TRY(score(e, e->windows * r / n, e->windows * (r + 1) / n, &mine));
    MHUB_TRY(total(e, mine, &sum));
    int64_t tokens = e->windows * e->seq;
    if (r == 0 && e->o.json)
        printf("{\"loss\": %.9g, \"tokens\": %lld, \"windows\": %lld}\n", sum / (double)tokens,
               (long long)tokens, (long long)e->windows);
    else if (r == 0)
        printf("loss: %.9g\n", sum / (double)tokens);
    return MHUB_OK;
}

static void evaluator_free(evaluator *e)
{
    free(e->inputs);
    free(e->targets);
    free(e->losses);
    mhub_dataset_close(e->data);
    mhub_gpt_free(e->model);
    mhub_config_free(e->cfg);
    mhub_backend_free(e->be);
    mhub_comm_free(e->world);
}

int mhub_cli_eval(int argc, char **argv)
{
    evaluator e;
    memset(&e, 0, sizeof e);
    int rc = parse_args(argc, argv, &e.o);
    if (rc >= 0)
        return rc;
    MPI_Init(NULL, NULL);
    mhub_status s = run(&e);
    int rank = e.world ? e.world->rank : 0;
    if (s != MHUB_OK && rank == 0)
        fprintf(stderr, "mhub " CMD ": %s\n", cli_error_text(mhub_last_error()));
    evaluator_free(&e);
    MPI_Finalize();
    if (s == MHUB_OK)
        return MHUB_EXIT_OK;
    return MHUB_EXIT_FAILED;
}
