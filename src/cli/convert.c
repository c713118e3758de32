/* convert.c - `mhub convert --to hf|mhub SRC_DIR DST_DIR`: move a GPT's
 * weights between Hugging Face's layout and mhub's.
 *
 *   hf:   config.json + model.safetensors (or a sharded index), Hugging
 *         Face's names and layouts (hf_weights.c);
 *   mhub: mhub_model.json + model.safetensors holding every parameter
 *         under its mhub (Megatron-Core) name and shape, F32, and, for a
 *         model that came from Hugging Face, hf_config.json: the
 *         config.json it came from, whose keys mhub does not model
 *         (token ids, task parameters, ...) have nowhere else to live.
 * The model is built whole on the CPU, filled from SRC and written to
 * DST, so a conversion checks every tensor's name and shape on the way.
 * --to hf writes config.json over hf_config.json when there is one (with
 * the values mhub_model.json changes), else as transformers writes it
 * for that config. So hf -> mhub -> hf gives back the same config.json
 * and weights (F32 ones; others come back as F32), and mhub -> hf ->
 * mhub the same bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mhub/mhub.h"
#include "src/cli/cli.h"

#define CMD "convert"
#define MHUB_WEIGHTS_FILE "model.safetensors"
#define HF_SOURCE_FILE "hf_config.json"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mhub convert --to hf|mhub SRC_DIR DST_DIR\n"
            "\n"
            "Convert a GPT checkpoint directory between Hugging Face's layout\n"
            "(config.json + model.safetensors, GPT-2 or Llama names) and mhub's\n"
            "(mhub_model.json + model.safetensors in mhub's parameter names).\n"
            "  --to mhub   SRC_DIR is a Hugging Face model, DST_DIR gets mhub's files\n"
            "  --to hf     SRC_DIR is an mhub model, DST_DIR gets Hugging Face's files\n");
}

typedef struct convert_options {
    bool to_hf;
    const char *src, *dst;
} convert_options;

static int usage_error(const char *what)
{
    fprintf(stderr, "mhub " CMD ": %s\n(mhub " CMD " --help for usage)\n", what);
    return MHUB_EXIT_USAGE;
}

/* -1 to go on, else the exit code. */
static int parse_args(int argc, char **argv, convert_options *o)
{
    memset(o, 0, sizeof *o);
    const char *to = NULL;
    for (int i = 1; i < argc; i++) {
        char name[32];
        const char *inl = NULL;
        if (!cli_split_flag(argv[i], name, sizeof name, &inl))
            snprintf(name, sizeof name, "%s", argv[i]);
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            usage(stdout);
            return MHUB_EXIT_OK;
        }
        if (!strcmp(name, "--to")) {
            if (!(to = cli_flag_value(CMD, argc, argv, &i, inl)))
                return MHUB_EXIT_USAGE;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "mhub " CMD ": unknown flag '%s'\n", argv[i]);
            return MHUB_EXIT_USAGE;
        } else if (!o->src) {
            o->src = argv[i];
        } else if (!o->dst) {
            o->dst = argv[i];
        } else {
            return usage_error("too many arguments: give SRC_DIR and DST_DIR");
        }
    }
    if (!to || (strcmp(to, "hf") && strcmp(to, "mhub")))
        return usage_error("--to must be hf or mhub");
    if (!o->dst)
        return usage_error("give SRC_DIR and DST_DIR");
    o->to_hf = !strcmp(to, "hf");
    return -1;
}

static void join(char *out, size_t len, const char *dir, const char *file)
{
    snprintf(out, len, "%s/%s", dir, file);
}

/* Every parameter from <dir>/model.safetensors by its mhub name; a
 * tensor there that is no parameter is an error. */
static mhub_status load_mhub_weights(mhub_gpt *m, const char *dir)
{
    char path[4096];
    join(path, sizeof path, dir, MHUB_WEIGHTS_FILE);
    mhub_safetensors *st = NULL;
    MHUB_TRY(mhub_safetensors_open(path, &st));
    mhub_param_list *pl = mhub_gpt_params(m);
    mhub_status s = MHUB_OK;
    for (int i = 0; s == MHUB_OK && i < mhub_safetensors_count(st); i++) {
        mhub_safetensors_tensor t;
        s = mhub_safetensors_info(st, i, &t);
        if (s == MHUB_OK && mhub_param_list_find(pl, t.name) < 0)
            s = mhub_error(MHUB_ERR_INVALID_ARG, "%s: tensor \"%s\" is no parameter of this "
                           "model", path, t.name);
    }
    /* the CPU backend's memory is the host's */
    for (int i = 0; s == MHUB_OK && i < pl->count; i++) {
        mhub_tensor *v = &pl->items[i].value;
        s = mhub_safetensors_read_f32(st, pl->items[i].name, v->shape, v->ndim, v->data);
    }
    mhub_safetensors_close(st);
    return s;
}

static mhub_status save_mhub_weights(mhub_gpt *m, const char *dir)
{
    mhub_param_list *pl = mhub_gpt_params(m);
    mhub_safetensors_entry *e = calloc((size_t)pl->count, sizeof *e);
    if (!e)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: tensor list", dir);
    for (int i = 0; i < pl->count; i++) {
        const mhub_tensor *v = &pl->items[i].value;
        e[i] = (mhub_safetensors_entry){.name = pl->items[i].name, .dtype = MHUB_F32,
                                        .ndim = v->ndim, .shape = v->shape, .data = v->data};
    }
    char path[4096];
    join(path, sizeof path, dir, MHUB_WEIGHTS_FILE);
    static const char *const meta[] = {"format", "pt", NULL};
    mhub_status s = mhub_safetensors_write(path, e, pl->count, meta);
    free(e);
    return s;
}

static mhub_status build(const mhub_provider_config *cfg, mhub_backend *be, mhub_gpt **m)
{
    if (cfg->type != mhub_gpt_provider_type())
        return mhub_error(MHUB_ERR_UNSUPPORTED, "only \"gpt\" models convert, not \"%s\"",
                          cfg->type->name);
    mhub_provide_args a = {.pre_process = true, .post_process = true, .vp_stage = -1,
                           .pp_size = 1, .vp_size = 1, .tp_size = 1, .backend = be,
                           .seed = 1, .tp_seed = 1, .micro_batch = 1};
    return mhub_gpt_create((const mhub_gpt_config *)cfg, &a, m);
}

/* The Hugging Face config an mhub directory keeps (NULL when none). */
static mhub_status read_kept_source(const char *dir, mhub_hf_source **src)
{
    char path[4096];
    join(path, sizeof path, dir, HF_SOURCE_FILE);
    *src = NULL;
    return access(path, F_OK) == 0 ? mhub_hf_source_read(path, src) : MHUB_OK;
}

static mhub_status read_config(const convert_options *o, mhub_provider_config **cfg,
                               mhub_hf_source **src)
{
    if (o->to_hf) {
        MHUB_TRY(mhub_config_from_pretrained(o->src, MHUB_CONFIG_STRICT, NULL, cfg));
        return read_kept_source(o->src, src);
    }
    MHUB_TRY(mhub_hf_source_read(o->src, src));
    return mhub_config_clone(mhub_hf_source_config(*src), cfg);
}

static mhub_status write_hf(mhub_gpt *m, const mhub_provider_config *cfg,
                            const mhub_hf_source *src, const char *dir)
{
    MHUB_TRY(mhub_gpt_save_hf_weights(m, dir));
    /* the weights' writer wrote mhub's own config.json; the source's keys
     * replace it */
    return src ? mhub_config_save_hf_with(cfg, src, dir) : MHUB_OK;
}

static mhub_status write_mhub(mhub_gpt *m, const mhub_provider_config *cfg,
                              const mhub_hf_source *src, const char *dir)
{
    MHUB_TRY(mhub_config_save_pretrained(cfg, dir, NULL, NULL));
    MHUB_TRY(save_mhub_weights(m, dir));
    char path[4096];
    join(path, sizeof path, dir, HF_SOURCE_FILE);
    return mhub_hf_source_write(src, path);
}

static mhub_status convert(const convert_options *o)
{
    mhub_backend *be = NULL;
    mhub_provider_config *cfg = NULL;
    mhub_hf_source *src = NULL;
    mhub_gpt *m = NULL;
    mhub_status s = mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &be);
    if (s == MHUB_OK)
        s = read_config(o, &cfg, &src);
    if (s == MHUB_OK)
        s = build(cfg, be, &m);
    if (s == MHUB_OK)
        s = o->to_hf ? load_mhub_weights(m, o->src) : mhub_gpt_load_hf_weights(m, o->src);
    if (s == MHUB_OK)
        s = o->to_hf ? write_hf(m, cfg, src, o->dst) : write_mhub(m, cfg, src, o->dst);
    mhub_gpt_free(m);
    mhub_hf_source_free(src);
    mhub_config_free(cfg);
    mhub_backend_free(be);
    return s;
}

int mhub_cli_convert(int argc, char **argv)
{
    convert_options o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    mhub_status s = convert(&o);
    if (s != MHUB_OK) {
        fprintf(stderr, "mhub " CMD ": %s\n", cli_error_text(mhub_last_error()));
        return MHUB_EXIT_FAILED;
    }
    printf("wrote %s (%s layout)\n", o.dst, o.to_hf ? "Hugging Face" : "mhub");
    return MHUB_EXIT_OK;
}
