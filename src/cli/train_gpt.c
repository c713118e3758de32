/* train_gpt.c - `mhub train --config FILE`: train a provider's model on
 * a token dataset, data parallel under mpiexec.
 *
 * The config is one JSON object:
 *   "model":     a provider config (mhub_model.json's form)
 *   "ddp":       DDP settings (Megatron-Core's names; optional)
 *   "optimizer": {"type": "adamw"|"sgd", "lr", "min_lr", "warmup_steps",
 *                 "beta1", "beta2", "eps", "weight_decay", "momentum",
 *                 "clip_grad"}
 *   "training":  {"steps", "micro_batch", "global_batch", "seq_len",
 *                 "dp_engine", "seed", "log_every"}
 *   "data":      {"path": FILE} (text or Megatron .bin/.idx), or the
 *                bundled task {"task": "addition", "digits", "problems",
 *                "seed", "path"} which mhub writes itself
 *   "checkpoint": {"save": DIR, "save_every": N, "load": DIR} (optional):
 *                save to DIR/step-<k> every N steps and after the last
 *                one; resume from DIR's latest checkpoint (or a step
 *                directory), bitwise where the dp size is unchanged. A
 *                resume must keep micro_batch, global_batch, seq_len,
 *                the data and the seed (an error otherwise); another
 *                schedule (steps, warmup, lr, min_lr, weight_decay) is
 *                a warning
 * Flags after --config override it. The learning rate warms up linearly
 * over warmup_steps, then follows a cosine from lr down to min_lr at the
 * last step. */
#include <cjson/cJSON.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "mhub/mhub.h"
#include "src/cli/cli.h"
#include "src/fileio.h"

#define CMD "train"

typedef struct gpt_options {
    const char *config_path;
    mhub_provider_config *model;
    mhub_ddp_config ddp;
    mhub_dp_engine_kind engine;
    mhub_optim_config optim;
    double min_lr, clip_grad;
    int warmup, steps, micro_batch, global_batch, seq_len, log_every;
    long seed;
    char data_path[512];
    bool task_addition;
    int digits;
    long problems, data_seed;
    int eval_problems;
    const char *metrics_path;
    char save_dir[512], load_dir[512];
    int save_every;
    bool quiet, digest;
    bool cuda;                 /* --backend cuda */
    bool guard;                /* --backend guard: the CPU's, closed to host code */
    int matmul;                /* --matmul: an mhub_matmul_precision, or -1 = by dtype */
} gpt_options;

/* ---- the config file --------------------------------------------------------- */

static mhub_status bad_key(const char *file, const char *section, const char *key,
                           const char *want)
{
    return mhub_error(MHUB_ERR_PARSE, "%s: %s%s%s must be %s", file, section,
                      section[0] ? "." : "", key, want);
}

/* The number at key, integral when `integer`, within [lo, hi]; absent
 * keys leave *out alone. */
static mhub_status get_number(const cJSON *obj, const char *file, const char *section,
                              const char *key, bool integer, double lo, double hi, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return MHUB_OK;
    char want[96];
    snprintf(want, sizeof want, "%s in [%g, %g]", integer ? "an integer" : "a number", lo, hi);
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi || (integer && v->valuedouble != floor(v->valuedouble)))
        return bad_key(file, section, key, want);
    *out = v->valuedouble;
    return MHUB_OK;
}

static mhub_status get_int(const cJSON *obj, const char *file, const char *section,
                           const char *key, double lo, double hi, int *out)
{
    double d = *out;
    MHUB_TRY(get_number(obj, file, section, key, true, lo, hi, &d));
    *out = (int)d;
    return MHUB_OK;
}

static mhub_status get_long(const cJSON *obj, const char *file, const char *section,
                            const char *key, double lo, double hi, long *out)
{
    double d = (double)*out;
    MHUB_TRY(get_number(obj, file, section, key, true, lo, hi, &d));
    *out = (long)d;
    return MHUB_OK;
}

static mhub_status get_string(const cJSON *obj, const char *file, const char *section,
                              const char *key, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return MHUB_OK;
    if (!cJSON_IsString(v))
        return bad_key(file, section, key, "a string");
    *out = v->valuestring;
    return MHUB_OK;
}

/* Every key of obj must be one of `known` (NULL-terminated). */
static mhub_status check_keys(const cJSON *obj, const char *file, const char *section,
                              const char *const *known)
{
    if (!cJSON_IsObject(obj))
        return mhub_error(MHUB_ERR_PARSE, "%s: %s must be a JSON object, not %s", file,
                          section[0] ? section : "the config", mhub_json_kind(obj));
    for (const cJSON *it = obj->child; it; it = it->next) {
        bool ok = false;
        for (int i = 0; known[i] && !ok; i++)
            ok = !strcmp(it->string, known[i]);
        if (!ok)
            return mhub_error(MHUB_ERR_PARSE, "%s: unknown key '%s%s%s'", file, section,
                              section[0] ? "." : "", it->string);
    }
    return MHUB_OK;
}

static mhub_status read_model(const cJSON *root, const char *file, gpt_options *o)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!m)
        return mhub_error(MHUB_ERR_PARSE, "%s: the \"model\" section is missing", file);
    char *text = cJSON_PrintUnformatted(m);
    if (!text)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "model section");
    char source[600];
    snprintf(source, sizeof source, "%s (model)", file);
    mhub_status s = mhub_config_from_json(text, strlen(text), source, MHUB_CONFIG_STRICT,
                                          &o->model);
    free(text);
    return s;
}

static mhub_status read_ddp(const cJSON *root, const char *file, gpt_options *o)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "ddp");
    if (!d)
        return MHUB_OK;
    char *text = cJSON_PrintUnformatted(d);
    if (!text)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "ddp section");
    char source[600];
    snprintf(source, sizeof source, "%s (ddp)", file);
    mhub_status s = mhub_ddp_config_from_json(text, source, &o->ddp);
    free(text);
    return s;
}

static mhub_status read_optimizer(const cJSON *root, const char *file, gpt_options *o)
{
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "optimizer");
    if (!p)
        return MHUB_OK;
    static const char *const keys[] = {"type",  "lr",    "min_lr",       "warmup_steps",
                                       "beta1", "beta2", "eps",          "weight_decay",
                                       "momentum", "clip_grad", NULL};
    MHUB_TRY(check_keys(p, file, "optimizer", keys));
    const char *type = NULL;
    MHUB_TRY(get_string(p, file, "optimizer", "type", &type));
    if (type) {
        mhub_optim_kind kind;
        if (mhub_optim_kind_parse(type, &kind) != 0)
            return bad_key(file, "optimizer", "type", "\"adamw\" or \"sgd\"");
        float lr = o->optim.lr;
        mhub_optim_config_init(&o->optim, kind);
        o->optim.lr = lr;
    }
    double lr = o->optim.lr, b1 = o->optim.beta1, b2 = o->optim.beta2, eps = o->optim.eps;
    double wd = o->optim.weight_decay, mom = o->optim.momentum;
    MHUB_TRY(get_number(p, file, "optimizer", "lr", false, 0, 10, &lr));
    MHUB_TRY(get_number(p, file, "optimizer", "min_lr", false, 0, 10, &o->min_lr));
    MHUB_TRY(get_int(p, file, "optimizer", "warmup_steps", 0, 1e9, &o->warmup));
    MHUB_TRY(get_number(p, file, "optimizer", "beta1", false, 0, 0.999999, &b1));
    MHUB_TRY(get_number(p, file, "optimizer", "beta2", false, 0, 0.999999, &b2));
    MHUB_TRY(get_number(p, file, "optimizer", "eps", false, 0, 1, &eps));
    MHUB_TRY(get_number(p, file, "optimizer", "weight_decay", false, 0, 10, &wd));
    MHUB_TRY(get_number(p, file, "optimizer", "momentum", false, 0, 0.999999, &mom));
    MHUB_TRY(get_number(p, file, "optimizer", "clip_grad", false, 0, 1e9, &o->clip_grad));
    o->optim.lr = (float)lr;
    o->optim.beta1 = (float)b1;
    o->optim.beta2 = (float)b2;
    o->optim.eps = (float)eps;
    o->optim.weight_decay = (float)wd;
    o->optim.momentum = (float)mom;
    return MHUB_OK;
}

static mhub_status read_training(const cJSON *root, const char *file, gpt_options *o)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "training");
    if (!t)
        return MHUB_OK;
    static const char *const keys[] = {"steps", "micro_batch", "global_batch", "seq_len",
                                       "dp_engine", "seed", "log_every", "eval_problems",
                                       NULL};
    MHUB_TRY(check_keys(t, file, "training", keys));
    MHUB_TRY(get_int(t, file, "training", "steps", 1, 1e9, &o->steps));
    MHUB_TRY(get_int(t, file, "training", "micro_batch", 1, 1 << 20, &o->micro_batch));
    MHUB_TRY(get_int(t, file, "training", "global_batch", 1, 1 << 24, &o->global_batch));
    MHUB_TRY(get_int(t, file, "training", "seq_len", 1, 1 << 24, &o->seq_len));
    MHUB_TRY(get_int(t, file, "training", "log_every", 1, 1e9, &o->log_every));
    MHUB_TRY(get_int(t, file, "training", "eval_problems", 0, 1e6, &o->eval_problems));
    MHUB_TRY(get_long(t, file, "training", "seed", 0, 9007199254740992.0, &o->seed));
    const char *engine = NULL;
    MHUB_TRY(get_string(t, file, "training", "dp_engine", &engine));
    if (engine && mhub_dp_engine_parse(engine, &o->engine) != 0)
        return bad_key(file, "training", "dp_engine", "\"ddp\", \"distopt\" or \"fsdp\"");
    return MHUB_OK;
}

static mhub_status read_data(const cJSON *root, const char *file, gpt_options *o)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "data");
    if (!d)
        return mhub_error(MHUB_ERR_PARSE, "%s: the \"data\" section is missing", file);
    static const char *const keys[] = {"path", "task", "digits", "problems", "seed", NULL};
    MHUB_TRY(check_keys(d, file, "data", keys));
    const char *path = NULL, *task = NULL;
    MHUB_TRY(get_string(d, file, "data", "path", &path));
    MHUB_TRY(get_string(d, file, "data", "task", &task));
    MHUB_TRY(get_int(d, file, "data", "digits", 1, 9, &o->digits));
    MHUB_TRY(get_long(d, file, "data", "problems", 1, 1e9, &o->problems));
    MHUB_TRY(get_long(d, file, "data", "seed", 0, 9007199254740992.0, &o->data_seed));
    if (task && strcmp(task, "addition") != 0)
        return bad_key(file, "data", "task", "\"addition\" (the bundled task)");
    o->task_addition = task != NULL;
    if (!path && !task)
        return mhub_error(MHUB_ERR_PARSE, "%s: data needs a \"path\" or a \"task\"", file);
    if (path)
        snprintf(o->data_path, sizeof o->data_path, "%s", path);
    else
        snprintf(o->data_path, sizeof o->data_path, "mhub-addition-%dd-%ld-%ld.txt", o->digits,
                 o->problems, o->data_seed);
    return MHUB_OK;
}

/* A checkpoint directory into its option buffer; too long is an error,
 * not a silently shortened path. */
static bool set_dir(char *dst, size_t size, const char *path)
{
    int n = snprintf(dst, size, "%s", path);
    return n >= 0 && (size_t)n < size;
}

static mhub_status read_checkpoint(const cJSON *root, const char *file, gpt_options *o)
{
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "checkpoint");
    if (!c)
        return MHUB_OK;
    static const char *const keys[] = {"save", "save_every", "load", NULL};
    MHUB_TRY(check_keys(c, file, "checkpoint", keys));
    const char *save = NULL, *load = NULL;
    MHUB_TRY(get_string(c, file, "checkpoint", "save", &save));
    MHUB_TRY(get_string(c, file, "checkpoint", "load", &load));
    MHUB_TRY(get_int(c, file, "checkpoint", "save_every", 0, 1e9, &o->save_every));
    if ((save && !set_dir(o->save_dir, sizeof o->save_dir, save)) ||
        (load && !set_dir(o->load_dir, sizeof o->load_dir, load)))
        return bad_key(file, "checkpoint", save ? "save" : "load", "a shorter path");
    return MHUB_OK;
}

static mhub_status read_config(gpt_options *o)
{
    char *text = NULL;
    size_t len = 0;
    MHUB_TRY(mhub_file_read_all(o->config_path, 16 << 20, "a training config", &text, &len));
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!root)
        return mhub_error(MHUB_ERR_PARSE, "%s: not valid JSON", o->config_path);
    static const char *const keys[] = {"model", "ddp",  "optimizer", "training",
                                       "data",  "checkpoint", NULL};
    const char *f = o->config_path;
    mhub_status s = check_keys(root, f, "", keys);
    if (s == MHUB_OK)
        s = read_model(root, f, o);
    if (s == MHUB_OK)
        s = read_ddp(root, f, o);
    if (s == MHUB_OK)
        s = read_optimizer(root, f, o);
    if (s == MHUB_OK)
        s = read_training(root, f, o);
    if (s == MHUB_OK)
        s = read_data(root, f, o);
    if (s == MHUB_OK)
        s = read_checkpoint(root, f, o);
    cJSON_Delete(root);
    return s;
}

/* ---- flags ---------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mhub train --config FILE [--steps N] [--micro-batch N] [--global-batch N]\n"
            "                  [--lr F] [--dp-engine ddp|distopt|fsdp] [--backend cpu|cuda|guard]\n"
            "                  [--matmul f32|tf32|bf16]\n"
            "                  [--metrics FILE] [--quiet] [--digest]\n"
            "                  [--save DIR [--save-every N]] [--load DIR]\n"
            "\n"
            "Train the model a JSON config describes (model, ddp, optimizer, training,\n"
            "data; see examples/configs/gpt-addition.json) on every rank of mpiexec.\n"
            "Rank 0 prints a progress line per logged step; --metrics writes one JSON\n"
            "object per step. --save writes checkpoints to DIR/step-N (every N steps\n"
            "and at the end), --load resumes from DIR's latest one (or a step directory),\n"
            "--digest prints the final parameters' SHA-256. Flags override the config.\n");
}

static void set_defaults(gpt_options *o)
{
    memset(o, 0, sizeof *o);
    mhub_ddp_config_init(&o->ddp);
    mhub_optim_config_init(&o->optim, MHUB_OPTIM_ADAMW);
    o->optim.lr = 1e-3f;
    o->steps = 100;
    o->micro_batch = 8;
    o->global_batch = 32;
    o->log_every = 1;
    o->matmul = -1;
    o->digits = 3;
    o->problems = 20000;
    o->data_seed = 1;
    o->seed = 1234;
    o->eval_problems = 200;
}

/* One flag that takes a value; false (with a message) when it is bad or
 * unknown. */
static bool parse_value_flag(const char *a, const char *v, gpt_options *o)
{
    double lr = 0;
    if (!strcmp(a, "--config"))
        return true; /* read before the flags */
    if (!strcmp(a, "--steps"))
        return cli_parse_int(CMD, a, v, 1, 1 << 30, &o->steps);
    if (!strcmp(a, "--micro-batch"))
        return cli_parse_int(CMD, a, v, 1, 1 << 20, &o->micro_batch);
    if (!strcmp(a, "--global-batch"))
        return cli_parse_int(CMD, a, v, 1, 1 << 24, &o->global_batch);
    if (!strcmp(a, "--save-every"))
        return cli_parse_int(CMD, a, v, 0, 1 << 30, &o->save_every);
    if (!strcmp(a, "--lr")) {
        if (!cli_parse_double(CMD, a, v, 0, 10, &lr))
            return false;
        o->optim.lr = (float)lr;
        return true;
    }
    if (!strcmp(a, "--metrics")) {
        o->metrics_path = v;
        return true;
    }
    if (!strcmp(a, "--save") || !strcmp(a, "--load")) {
        char *dst = a[2] == 's' ? o->save_dir : o->load_dir;
        if (set_dir(dst, sizeof o->save_dir, v))
            return true;
        fprintf(stderr, "mhub %s: %s: the path is over %zu bytes\n", CMD, a,
                sizeof o->save_dir - 1);
        return false;
    }
    if (!strcmp(a, "--backend")) {
        /* whether this build and machine can run cuda is told at run time,
         * by every rank, naming itself */
        if (!strcmp(v, "cpu") || !strcmp(v, "cuda") || !strcmp(v, "guard")) {
            o->cuda = !strcmp(v, "cuda");
            o->guard = !strcmp(v, "guard");
            return true;
        }
        fprintf(stderr, "mhub %s: --backend: unknown backend '%s' (cpu, cuda or guard)\n", CMD,
                v);
        return false;
    }
    if (!strcmp(a, "--matmul")) {
        for (int p = MHUB_MATMUL_F32; p <= MHUB_MATMUL_BF16; p++)
            if (!strcmp(v, mhub_matmul_precision_name((mhub_matmul_precision)p))) {
                o->matmul = p;
                return true;
            }
        fprintf(stderr, "mhub %s: --matmul: unknown precision '%s' (f32, tf32 or bf16)\n", CMD,
                v);
        return false;
    }
    if (!strcmp(a, "--dp-engine")) {
        if (mhub_dp_engine_parse(v, &o->engine) == 0)
            return true;
        fprintf(stderr, "mhub %s: --dp-engine: unknown engine '%s'\n", CMD, v);
        return false;
    }
    fprintf(stderr, "mhub %s: unknown flag '%s' (with --config)\n", CMD, a);
    return false;
}

/* Returns -1 to go on, or an exit status. Reads the config first so
 * flags override it. */
static int parse_args(int argc, char **argv, gpt_options *o)
{
    set_defaults(o);
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            o->config_path = argv[i + 1];
    if (!o->config_path) {
        usage(stderr);
        return MHUB_EXIT_USAGE;
    }
    if (read_config(o) != MHUB_OK) {
        fprintf(stderr, "mhub %s: %s\n", CMD, cli_error_text(mhub_last_error()));
        return MHUB_EXIT_USAGE;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--quiet")) {
            o->quiet = true;
            continue;
        }
        if (!strcmp(a, "--digest")) {
            o->digest = true;
            continue;
        }
        if (!strcmp(a, "--help")) {
            usage(stdout);
            return MHUB_EXIT_OK;
        }
        if (!v) {
            fprintf(stderr, "mhub %s: %s needs a value\n", CMD, a);
            return MHUB_EXIT_USAGE;
        }
        i++;
        if (!parse_value_flag(a, v, o))
            return MHUB_EXIT_USAGE;
    }
    return -1;
}

/* ---- training -------------------------------------------------------------------- */

typedef struct gpt_trainer {
    gpt_options o;
    mhub_comm *world;
    mhub_backend *be;
    mhub_provider *provider;
    mhub_chunk_list chunks;
    mhub_gpt *model;
    mhub_dp_engine *engine;
    mhub_dataset *data;
    mhub_sampler sampler;
    int micro_per_rank, rows, seq;
    int32_t *inputs, *targets;   /* backend memory, one micro-batch */
    int32_t *host_in, *host_tg;
    FILE *metrics;
} gpt_trainer;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Linear warmup, then a cosine from lr to min_lr at the last step. */
static float lr_at(const gpt_options *o, int step)
{
    if (step < o->warmup)
        return o->optim.lr * (float)(step + 1) / (float)o->warmup;
    int span = o->steps - o->warmup;
    double progress = span > 1 ? (double)(step - o->warmup) / (double)(span - 1) : 1.0;
    return (float)(o->min_lr + 0.5 * (o->optim.lr - o->min_lr) * (1.0 + cos(M_PI * progress)));
}

/* The bundled task's file, written by rank 0 when missing. */
static mhub_status prepare_data(gpt_trainer *t)
{
    const gpt_options *o = &t->o;
    struct stat st;
    mhub_status s = MHUB_OK;
    if (o->task_addition && t->world->rank == 0 && stat(o->data_path, &st) != 0)
        s = mhub_addition_generate(o->data_path, o->problems, o->digits,
                                   (uint64_t)o->data_seed);
    /* every rank learns whether rank 0 could write it, so none waits */
    float failed = s != MHUB_OK, any = 0;
    MHUB_TRY(mhub_comm_allreduce(t->world, &failed, &any, 1, MHUB_F32, MHUB_MAX));
    if (s != MHUB_OK)
        return s;
    if (any != 0)
        return mhub_error(MHUB_ERR_IO, "rank 0 could not write the task's data to %s",
                          o->data_path);
    MHUB_TRY(mhub_dataset_open(o->data_path, &t->data));
    int64_t windows = 0;
    MHUB_TRY(mhub_dataset_windows(t->data, t->seq, &windows));
    return mhub_sampler_init(&t->sampler, (uint64_t)windows, o->global_batch, (uint64_t)o->seed,
                             true);
}

/* Training runs the whole model on every rank, data parallel only: the
 * provider builds pipeline and tensor-parallel chunks, but there is no
 * pipeline schedule or tensor-parallel layer to run them. Checked before
 * anything is built, naming the setting. */
static mhub_status check_data_parallel_only(const mhub_provider_config *c, const char *file)
{
    const struct {
        const char *key;
        int value;
    } sizes[] = {{"tensor_model_parallel_size", c->tensor_model_parallel_size},
                 {"pipeline_model_parallel_size", c->pipeline_model_parallel_size},
                 {"context_parallel_size", c->context_parallel_size},
                 {"expert_model_parallel_size", c->expert_model_parallel_size}};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].value > 1)
            return mhub_error(MHUB_ERR_UNSUPPORTED,
                              "%s: model.%s is %d, but training runs data parallel only (the "
                              "whole model on every rank); set it to 1", file, sizes[i].key,
                              sizes[i].value);
    return MHUB_OK;
}

/* This rank's index among the ranks on its node, and their count. */
static void local_rank(int *rank, int *size)
{
    MPI_Comm node;
    *rank = 0;
    *size = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) !=
        MPI_SUCCESS)
        return;
    MPI_Comm_rank(node, rank);
    MPI_Comm_size(node, size);
    MPI_Comm_free(&node);
}

/* The GEMM precision a CUDA run uses: --matmul, else bf16 tensor cores
 * for 16-bit parameters and exact f32 for f32 ones. */
static mhub_matmul_precision matmul_for(const gpt_options *o, const mhub_gpt_config *g)
{
    if (o->matmul >= 0)
        return (mhub_matmul_precision)o->matmul;
    return mhub_provider_config_param_dtype(&g->base) == MHUB_F32 ? MHUB_MATMUL_F32
                                                                   : MHUB_MATMUL_BF16;
}

/* The CPU backend, or a CUDA backend on this rank's GPU with the world
 * communicator moved onto NCCL. Every rank learns whether every other
 * rank got its GPU before any NCCL call, so a rank without one (no GPU,
 * fewer GPUs than ranks on its node, no memory) makes all of them stop
 * with its reason instead of leaving them waiting. */
static mhub_status make_backend(gpt_trainer *t, const mhub_gpt_config *g)
{
    int ranks = t->world->size;
    if (t->o.guard) {
        MHUB_TRY(mhub_guard_backend_create(&(mhub_cpu_options){.local_ranks = ranks}, &t->be));
        mhub_comm *guarded = NULL;
        MHUB_TRY(mhub_comm_create_guard(t->world, t->be, &guarded));
        t->world = guarded; /* it owns the MPI world now */
        return MHUB_OK;
    }
    if (!t->o.cuda)
        return mhub_cpu_backend_create(&(mhub_cpu_options){.local_ranks = ranks}, &t->be);
    mhub_cuda_options co = {.device = -1, .matmul = matmul_for(&t->o, g)};
    local_rank(&co.local_rank, &co.local_ranks);
    mhub_status s = mhub_cuda_backend_create(&co, &t->be);
    char reason[512] = "";
    if (s != MHUB_OK)
        snprintf(reason, sizeof reason, "%s", mhub_last_error());
    float failed = s != MHUB_OK, any = 0;
    MHUB_TRY(mhub_comm_allreduce(t->world, &failed, &any, 1, MHUB_F32, MHUB_MAX));
    if (s != MHUB_OK)
        return mhub_error(s, "--backend cuda: %s", reason);
    if (any != 0)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "--backend cuda: another rank could not start its CUDA backend (its "
                          "own message says why)");
    mhub_comm *nccl = NULL;
    MHUB_TRY(mhub_comm_create_nccl(&(MPI_Comm){MPI_COMM_WORLD}, t->be, "world", &nccl));
    mhub_comm_free(t->world);
    t->world = nccl;
    return MHUB_OK;
}

static mhub_status build(gpt_trainer *t)
{
    gpt_options *o = &t->o;
    if (o->model->type != mhub_gpt_provider_type())
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: --config trains \"gpt\" models; this one "
                          "is \"%s\" (use --model mlp for the MLP)", o->config_path,
                          o->model->type->name);
    mhub_gpt_config *g = (mhub_gpt_config *)o->model;
    MHUB_TRY(check_data_parallel_only(&g->base, o->config_path));
    t->seq = o->seq_len ? o->seq_len : g->seq_length;
    if (t->seq > g->seq_length)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: training.seq_len %d exceeds the model's "
                          "seq_length %d", o->config_path, t->seq, g->seq_length);
    int ranks = t->world->size;
    if (o->global_batch % (ranks * o->micro_batch) != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "global_batch %d must be a multiple of ranks x micro_batch = %d x %d",
                          o->global_batch, ranks, o->micro_batch);
    t->micro_per_rank = o->global_batch / (ranks * o->micro_batch);
    t->rows = o->micro_batch;
    MHUB_TRY(make_backend(t, (mhub_gpt_config *)o->model));
    o->model->seed = o->seed;
    MHUB_TRY(mhub_provider_create(o->model, &t->provider));
    mhub_provider_set_backend(t->provider, t->be);
    mhub_provider_set_micro_batch(t->provider, t->rows);
    MHUB_TRY(mhub_provider_initialize_model_parallel(t->provider, t->world, NULL, NULL));
    mhub_ddp_config ddp = o->ddp;
    ddp.use_distributed_optimizer = o->engine == MHUB_DP_DISTOPT;
    ddp.loss_is_global_mean = true;   /* each token weighs 1 / (global batch x seq) */
    mhub_get_model_options go;
    mhub_get_model_options_init(&go);
    go.ddp_config = &ddp;
    go.use_fsdp = o->engine == MHUB_DP_FSDP;
    go.optim = &o->optim;
    FILE *devnull = o->quiet ? fopen("/dev/null", "w") : NULL;
    go.log = devnull;
    mhub_status s = mhub_get_model(t->provider, &go, &t->chunks);
    if (devnull)
        fclose(devnull);
    MHUB_TRY(s);
    t->model = mhub_chunk_model(t->chunks.items[0]);
    t->engine = mhub_chunk_engine(t->chunks.items[0]);
    if (!mhub_gpt_runnable(t->model))
        return mhub_error(MHUB_ERR_UNSUPPORTED, "%s: this model cannot train: training needs "
                          "f32, bf16 or f16 parameters", o->config_path);
    size_t bytes = (size_t)t->rows * (size_t)t->seq * sizeof(int32_t);
    void *p = NULL;
    MHUB_TRY(t->be->ops->alloc(t->be, bytes, &p));
    t->inputs = p;
    MHUB_TRY(t->be->ops->alloc(t->be, bytes, &p));
    t->targets = p;
    t->host_in = malloc(bytes);
    t->host_tg = malloc(bytes);
    if (!t->host_in || !t->host_tg)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "batch staging");
    if (o->metrics_path && t->world->rank == 0 && !(t->metrics = fopen(o->metrics_path, "w")))
        return mhub_error(MHUB_ERR_IO, "cannot write metrics to %s", o->metrics_path);
    return prepare_data(t);
}

static mhub_status train_step(gpt_trainer *t, int step, float *loss, double *gnorm)
{
    const gpt_options *o = &t->o;
    size_t bytes = (size_t)t->rows * (size_t)t->seq * sizeof(int32_t);
    float weight = 1.0f / ((float)o->global_batch * (float)t->seq), sum = 0;
    MHUB_TRY(mhub_dp_engine_zero_grad(t->engine));
    int shards = t->world->size * t->micro_per_rank;
    for (int k = 0; k < t->micro_per_rank; k++) {
        /* the engine says which global shard this micro-batch is (the
         * order deterministic FSDP sums in differs from rank-major) */
        int64_t shard = mhub_dp_engine_shard_index(t->engine, t->world->rank, t->world->size,
                                                   k, t->micro_per_rank);
        MHUB_TRY(mhub_dataset_batch(t->data, &t->sampler, t->seq, step, (int)shard, shards, 1,
                                    0, t->host_in, t->host_tg));
        MHUB_TRY(t->be->ops->copy(t->be, t->inputs, t->host_in, bytes, MHUB_COPY_HOST_TO_DEVICE));
        MHUB_TRY(t->be->ops->copy(t->be, t->targets, t->host_tg, bytes, MHUB_COPY_HOST_TO_DEVICE));
        float micro = 0;
        MHUB_TRY(mhub_dp_engine_micro_begin(t->engine, k, t->micro_per_rank));
        MHUB_TRY(mhub_gpt_forward(t->model, t->inputs, t->targets, t->rows, t->seq, &micro));
        MHUB_TRY(mhub_gpt_backward(t->model, weight));
        MHUB_TRY(mhub_dp_engine_micro_end(t->engine, k, t->micro_per_rank));
        sum += micro;
    }
    MHUB_TRY(mhub_dp_engine_finish_grad_sync(t->engine));
    *gnorm = -1;
    /* the engine knows which gradient elements each rank's step reads */
    if (o->clip_grad > 0)
        MHUB_TRY(mhub_dp_engine_clip_grad_norm(t->engine, o->clip_grad, gnorm));
    MHUB_TRY(mhub_dp_engine_set_lr(t->engine, lr_at(o, step)));
    MHUB_TRY(mhub_dp_engine_step(t->engine));
    float mine = sum / (float)t->micro_per_rank;
    MHUB_TRY(mhub_comm_allreduce(t->world, &mine, loss, 1, MHUB_F32, MHUB_SUM));
    *loss /= (float)t->world->size;
    return MHUB_OK;
}

static void print_progress(const gpt_trainer *t, int step, float loss, double ms, double eta)
{
    double tokens = (double)t->o.global_batch * t->seq;
    printf("step %5d/%d | loss %.4f | lr %.2e | %8.0f tok/s | %7.1f ms/step | ETA %dm%02ds\n",
           step + 1, t->o.steps, loss, lr_at(&t->o, step), tokens / (ms / 1e3), ms, (int)eta / 60,
           (int)eta % 60);
    fflush(stdout);
}

/* Greedy completion for the addition score: one forward per generated
 * character (no cache; the prompts are short). The prompt follows a
 * newline, as every problem does in the training text. */
static mhub_status complete(void *ctx, const char *prompt_in, char *out, int out_size)
{
    gpt_trainer *t = ctx;
    char prompt[64];
    snprintf(prompt, sizeof prompt, "\n%s", prompt_in);
    int len = (int)strlen(prompt), n = 0;
    int64_t vocab = mhub_gpt_padded_vocab_size(mhub_gpt_config_of(t->model));
    const float *logits = mhub_gpt_logits(t->model);
    float *row = malloc((size_t)vocab * sizeof *row);
    if (!row)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "a logits row");
    mhub_status s = MHUB_OK;
    while (s == MHUB_OK && n < out_size - 1 && len + n < t->seq) {
        int T = len + n;
        for (int i = 0; i < T; i++) {
            t->host_in[i] = (unsigned char)(i < len ? prompt[i] : out[i - len]);
            t->host_tg[i] = 0;
        }
        s = t->be->ops->copy(t->be, t->inputs, t->host_in, (size_t)T * sizeof(int32_t),
                             MHUB_COPY_HOST_TO_DEVICE);
        if (s == MHUB_OK)
            s = t->be->ops->copy(t->be, t->targets, t->host_tg, (size_t)T * sizeof(int32_t),
                                 MHUB_COPY_HOST_TO_DEVICE);
        if (s == MHUB_OK)
            s = mhub_gpt_forward(t->model, t->inputs, t->targets, 1, T, NULL);
        if (s == MHUB_OK)
            s = t->be->ops->copy(t->be, row, logits + (int64_t)(T - 1) * vocab,
                                 (size_t)vocab * sizeof(float), MHUB_COPY_DEVICE_TO_HOST);
        int best = 0;
        for (int v = 1; v < 256 && v < vocab; v++)
            best = row[v] > row[best] ? v : best;
        out[n++] = (char)best;
        if (best == '\n')
            break;
    }
    out[n] = '\0';
    free(row);
    return s;
}

/* What a checkpoint records of the run, as text. A resume must keep the
 * batch shape, the data and the seed (they fix which samples each step
 * sees) to continue the run exactly; the schedule may change (a longer
 * run, another learning rate), with a warning. */
enum { RUN_SETTINGS = 11 };   /* as many as describe_run adds */

typedef struct run_settings {
    mhub_checkpoint_setting items[RUN_SETTINGS];
    char values[RUN_SETTINGS][600];
    int count;
} run_settings;

static void add_setting(run_settings *r, const char *key, bool exact, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void add_setting(run_settings *r, const char *key, bool exact, const char *fmt, ...)
{
    if (r->count == RUN_SETTINGS)
        return;   /* unreachable while RUN_SETTINGS matches describe_run */
    char *value = r->values[r->count];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof r->values[0], fmt, ap);
    va_end(ap);
    r->items[r->count++] = (mhub_checkpoint_setting){.key = key, .value = value, .exact = exact};
}

/* The shortest "%g" text that reads back as the same value, a float's
 * when `single` (so a setting shows as "0.01", not "0.00999999978"). */
static const char *shortest(char *buf, size_t size, double v, bool single)
{
    for (int digits = 6; digits <= 17; digits++) {
        snprintf(buf, size, "%.*g", digits, v);
        double back = strtod(buf, NULL);
        if (single ? (float)back == (float)v : back == v)
            break;
    }
    return buf;
}

static void describe_run(const gpt_trainer *t, run_settings *r)
{
    const gpt_options *o = &t->o;
    r->count = 0;
    add_setting(r, "micro_batch", true, "%d", o->micro_batch);
    add_setting(r, "global_batch", true, "%d", o->global_batch);
    add_setting(r, "seq_len", true, "%d", t->seq);
    if (o->task_addition)
        add_setting(r, "data", true, "task addition, digits %d, problems %ld, seed %ld",
                    o->digits, o->problems, o->data_seed);
    else
        add_setting(r, "data", true, "%s", o->data_path);
    add_setting(r, "seed", true, "%ld", o->seed);
    add_setting(r, "steps", false, "%d", o->steps);
    add_setting(r, "warmup_steps", false, "%d", o->warmup);
    char num[32];
    add_setting(r, "lr", false, "%s", shortest(num, sizeof num, o->optim.lr, true));
    add_setting(r, "min_lr", false, "%s", shortest(num, sizeof num, o->min_lr, false));
    add_setting(r, "lr_decay", false, "cosine");
    add_setting(r, "weight_decay", false, "%s",
                shortest(num, sizeof num, o->optim.weight_decay, true));
}

/* --load: the parameters, optimizer state and step of a checkpoint; the
 * data order needs nothing more, being a function of (seed, step). */
static mhub_status resume(gpt_trainer *t, int *begin)
{
    const gpt_options *o = &t->o;
    *begin = 0;
    if (!o->load_dir[0])
        return MHUB_OK;
    run_settings run;
    describe_run(t, &run);
    mhub_checkpoint_info info;
    MHUB_TRY(mhub_checkpoint_load(o->load_dir, t->engine, t->world, o->model, run.items,
                                  run.count, &info));
    if (info.step > o->steps)
        return mhub_error(MHUB_ERR_INVALID_ARG, "checkpoint %s is at step %lld, past "
                          "training.steps %d", o->load_dir, (long long)info.step, o->steps);
    *begin = (int)info.step;
    /* a changed schedule is how a run is extended, but its learning rates
     * from here on are not the saved run's: say so even with --quiet */
    if (t->world->rank == 0 && info.changed[0])
        fprintf(stderr, "mhub %s: warning: resuming %s with another schedule than it was "
                "saved with (%s)\n", CMD, o->load_dir, info.changed);
    if (t->world->rank == 0 && !o->quiet)
        printf("resumed from %s at step %lld (written at %d rank(s))\n", o->load_dir,
               (long long)info.step, info.dp_size);
    return MHUB_OK;
}

/* --save: every save_every steps, and after the last one. */
static mhub_status maybe_save(gpt_trainer *t, int done)
{
    const gpt_options *o = &t->o;
    bool due = o->save_every > 0 && done % o->save_every == 0;
    if (!o->save_dir[0] || !(due || done == o->steps))
        return MHUB_OK;
    MHUB_TRY(mhub_dp_engine_sync_params(t->engine));
    run_settings run;
    describe_run(t, &run);
    MHUB_TRY(mhub_checkpoint_save(o->save_dir, t->engine, t->world, o->model, done, o->seed,
                                  run.items, run.count));
    if (t->world->rank == 0 && !o->quiet)
        printf("saved checkpoint %s/step-%d\n", o->save_dir, done);
    return MHUB_OK;
}

static mhub_status run(gpt_trainer *t)
{
    const gpt_options *o = &t->o;
    MHUB_TRY(mhub_comm_create_mpi_world(&t->world));
    MHUB_TRY(build(t));
    bool talk = t->world->rank == 0 && !o->quiet;
    if (talk) {
        char arch[256];
        mhub_gpt_describe(mhub_gpt_config_of(t->model), arch, sizeof arch);
        printf("%s\n%d rank(s), engine %s, global batch %d x %d tokens (%d per micro-batch, %d "
               "micro-batch(es) per rank), %d steps, %s lr %.1e, data %s\n",
               arch, t->world->size, mhub_dp_engine_name(o->engine), o->global_batch, t->seq,
               o->micro_batch, t->micro_per_rank, o->steps, mhub_optim_kind_name(o->optim.kind),
               o->optim.lr, o->data_path);
    }
    int begin = 0;
    MHUB_TRY(resume(t, &begin));
    double start = now_seconds();
    float first = 0, loss = 0;
    for (int step = begin; step < o->steps; step++) {
        double t0 = now_seconds(), gnorm = -1;
        MHUB_TRY(train_step(t, step, &loss, &gnorm));
        double ms = 1e3 * (now_seconds() - t0);
        if (step == begin)
            first = loss;
        double eta = (now_seconds() - start) / (step + 1 - begin) * (o->steps - step - 1);
        if (talk && (step % o->log_every == 0 || step + 1 == o->steps))
            print_progress(t, step, loss, ms, eta);
        if (t->metrics)
            fprintf(t->metrics,
                    "{\"step\":%d,\"loss\":%.6f,\"lr\":%.6e,\"ms\":%.3f,\"grad_norm\":%.6g}\n",
                    step + 1, loss, lr_at(o, step), ms, gnorm);
        MHUB_TRY(maybe_save(t, step + 1));
    }
    MHUB_TRY(mhub_dp_engine_sync_params(t->engine));
    if (o->digest) {
        char hex[65];
        MHUB_TRY(mhub_dp_engine_digest(t->engine, hex));
        if (t->world->rank == 0)
            printf("params sha256: %s\n", hex);
    }
    if (t->world->rank == 0 && !o->quiet)
        printf("loss %.4f -> %.4f in %.1f s\n", first, loss, now_seconds() - start);
    /* every rank scores the same problems with the same weights, so each
     * makes the same forward calls: FSDP's run collectives in its hooks */
    if (o->task_addition && o->eval_problems > 0) {
        double acc = 0;
        MHUB_TRY(mhub_addition_score(o->digits, (uint64_t)o->data_seed, o->problems,
                                     o->eval_problems, complete, t, &acc));
        if (t->world->rank == 0)
            printf("addition accuracy: %.1f%% on %d held-out %d-digit problems\n", 100 * acc,
                   o->eval_problems, o->digits);
    }
    return MHUB_OK;
}

static void trainer_free(gpt_trainer *t)
{
    if (t->metrics)
        fclose(t->metrics);
    if (t->be) {
        if (t->inputs)
            t->be->ops->free(t->be, t->inputs);
        if (t->targets)
            t->be->ops->free(t->be, t->targets);
    }
    free(t->host_in);
    free(t->host_tg);
    mhub_dataset_close(t->data);
    mhub_chunk_list_free(&t->chunks);
    mhub_provider_free(t->provider);
    mhub_backend_free(t->be);
    mhub_comm_free(t->world);
    mhub_config_free(t->o.model);
}

int mhub_cli_train_config(int argc, char **argv)
{
    gpt_trainer t;
    memset(&t, 0, sizeof t);
    int rc = parse_args(argc, argv, &t.o);
    if (rc >= 0) {
        mhub_config_free(t.o.model);
        return rc;
    }
    MPI_Init(NULL, NULL);
    mhub_status s = run(&t);
    if (s != MHUB_OK)
        fprintf(stderr, "mhub %s: rank %d: %s: %s\n", CMD, t.world ? t.world->rank : -1,
                mhub_status_name(s), mhub_last_error());
    trainer_free(&t);
    MPI_Finalize();
    if (s == MHUB_ERR_INVALID_ARG)
        return MHUB_EXIT_USAGE;
    return s == MHUB_OK ? MHUB_EXIT_OK : MHUB_EXIT_FAILED;
}
