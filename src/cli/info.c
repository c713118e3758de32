/* info.c - `mhub info CONFIG`: what a model is and what a run of it
 * would cost, before anything is allocated.
 *
 * Everything comes from meta chunks (shapes, no storage): the parameter
 * count of each pipeline stage (one tensor-parallel rank's shard, as
 * Megatron's get_model prints it), and the bytes each data-parallel engine
 * would hold per rank for the largest stage, from the engines' own
 * planner (engine.h). A 175-billion-parameter config takes milliseconds
 * and no tensor memory. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/mhub.h"
#include "src/cli/cli.h"

#define CMD "info"
#define MAX_WORLD (1 << 24)

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mhub info CONFIG [--world N] [--optimizer adamw|sgd] [--ddp-config FILE]\n"
            "                        [--json]\n"
            "       mhub info --hf DIR [options]\n"
            "\n"
            "Print a model's architecture, the parameters of each pipeline stage (per\n"
            "tensor-parallel rank) and the memory a rank would need with each\n"
            "data-parallel engine, without allocating the model.\n"
            "\n"
            "  CONFIG            a provider config (mhub_model.json, or a directory holding it)\n"
            "  --hf DIR          read a Hugging Face config.json instead\n"
            "  --world N         ranks of the run (default 1); dp = N / (tp x pp x cp)\n"
            "  --optimizer NAME  optimizer state to count: adamw (default) or sgd (momentum)\n"
            "  --ddp-config FILE DDP settings (bucket_size, grad_reduce_in_fp32, ...)\n"
            "  --json            one JSON object; its \"parameters\" field is the total,\n"
            "                    its stages' are per tensor-parallel rank (\"tp\")\n"
            "  --help            print this help\n");
}

typedef struct info_args {
    const char *config;
    const char *hf;
    const char *ddp_config;
    int world;
    mhub_optim_kind optimizer;
    bool json;
    bool help;
} info_args;

static bool usage_error(void)
{
    fputc('\n', stderr);
    usage(stderr);
    return false;
}

static bool parse_args(int argc, char **argv, info_args *a)
{
    a->world = 1;
    a->optimizer = MHUB_OPTIM_ADAMW;
    for (int i = 1; i < argc; i++) {
        char name[32];
        const char *inline_value = NULL;
        const char *flag = argv[i];
        if (cli_split_flag(argv[i], name, sizeof name, &inline_value))
            flag = name;
        if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
            a->help = true;
        } else if (!strcmp(flag, "--json")) {
            a->json = true;
        } else if (!strcmp(flag, "--world")) {
            const char *v = cli_flag_value(CMD, argc, argv, &i, inline_value);
            if (!v || !cli_parse_int(CMD, "--world", v, 1, MAX_WORLD, &a->world))
                return usage_error();
        } else if (!strcmp(flag, "--optimizer")) {
            const char *v = cli_flag_value(CMD, argc, argv, &i, inline_value);
            if (!v)
                return usage_error();
            if (mhub_optim_kind_parse(v, &a->optimizer) != 0) {
                fprintf(stderr, "mhub " CMD ": --optimizer: '%s' is not adamw or sgd\n", v);
                return usage_error();
            }
        } else if (!strcmp(flag, "--hf")) {
            a->hf = cli_flag_value(CMD, argc, argv, &i, inline_value);
            if (!a->hf)
                return usage_error();
        } else if (!strcmp(flag, "--ddp-config")) {
            a->ddp_config = cli_flag_value(CMD, argc, argv, &i, inline_value);
            if (!a->ddp_config)
                return usage_error();
        } else if (flag[0] == '-' && flag[1] != '\0') {
            fprintf(stderr, "mhub " CMD ": unknown flag '%s'\n", argv[i]);
            return usage_error();
        } else if (a->config) {
            fprintf(stderr, "mhub " CMD ": one CONFIG only ('%s' and '%s')\n", a->config,
                    argv[i]);
            return usage_error();
        } else {
            a->config = argv[i];
        }
    }
    if (!a->help && !a->config == !a->hf) {
        fprintf(stderr, "mhub " CMD ": give a CONFIG file or --hf DIR (one of them)\n");
        return usage_error();
    }
    return true;
}

/* ---- the numbers ---------------------------------------------------------------- */

typedef struct stage_info {
    int64_t params;
    int chunks;
    char what[4][160];  /* describe() of the first chunks */
} stage_info;

typedef struct engine_row {
    mhub_dp_engine_kind kind;
    mhub_dp_memory mem;
} engine_row;

typedef struct report {
    mhub_provider *provider;
    const mhub_provider_config *cfg;
    int world, dp;
    int pp;
    stage_info *stages;
    int largest;            /* stage with the most parameters */
    int64_t total;
    engine_row rows[3];
    mhub_optim_config optim;
    mhub_ddp_config ddp;
    char arch[512];
} report;

static mhub_status count_stages(report *r)
{
    r->stages = calloc((size_t)r->pp, sizeof *r->stages);
    if (!r->stages)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "%d stages", r->pp);
    for (int s = 0; s < r->pp; s++) {
        mhub_chunk_list l;
        MHUB_TRY(mhub_provider_meta_stage(r->provider, s, &l));
        stage_info *st = &r->stages[s];
        st->chunks = l.count;
        st->params = mhub_chunk_list_numel(&l);
        for (int c = 0; c < l.count && c < 4; c++)
            mhub_chunk_describe(l.items[c], st->what[c], sizeof st->what[c]);
        mhub_chunk_list_free(&l);
        if (st->params > r->stages[r->largest].params)
            r->largest = s;
    }
    /* not the sum of the stages when weights are shared across them */
    return mhub_provider_total_params(r->provider, &r->total);
}

/* Per-rank bytes of each engine for the largest stage: one engine per
 * chunk, as get_model wraps them. */
static mhub_status estimate_memory(report *r)
{
    mhub_chunk_list l;
    MHUB_TRY(mhub_provider_meta_stage(r->provider, r->largest, &l));
    const mhub_dp_engine_kind kinds[3] = {MHUB_DP_DDP, MHUB_DP_DISTOPT, MHUB_DP_FSDP};
    mhub_status s = MHUB_OK;
    for (int k = 0; k < 3 && s == MHUB_OK; k++) {
        engine_row *row = &r->rows[k];
        row->kind = kinds[k];
        memset(&row->mem, 0, sizeof row->mem);
        for (int c = 0; c < l.count && s == MHUB_OK; c++) {
            mhub_dp_memory m;
            s = mhub_dp_engine_estimate_memory(kinds[k], mhub_chunk_params(l.items[c]), r->dp,
                                               &r->ddp, &r->optim, NULL, &m);
            row->mem.param_bytes += m.param_bytes;
            row->mem.grad_bytes += m.grad_bytes;
            row->mem.main_param_bytes += m.main_param_bytes;
            row->mem.optim_state_bytes += m.optim_state_bytes;
            row->mem.gathered_bytes += m.gathered_bytes;
            row->mem.scratch_bytes += m.scratch_bytes;
            row->mem.padding_elems += m.padding_elems;
            row->mem.total_bytes += m.total_bytes;
        }
    }
    mhub_chunk_list_free(&l);
    return s;
}

static mhub_status load_config(const info_args *a, mhub_provider_config **cfg)
{
    if (a->hf)
        return mhub_config_from_hf(a->hf, cfg);
    return mhub_config_from_pretrained(a->config, MHUB_CONFIG_STRICT, NULL, cfg);
}

static mhub_status load_ddp_config(const char *path, mhub_ddp_config *ddp)
{
    mhub_ddp_config_init(ddp);
    return path ? cli_read_ddp_config(path, ddp) : MHUB_OK;
}

static mhub_status build_report(const info_args *a, report *r)
{
    mhub_provider_config *cfg = NULL;
    MHUB_TRY(load_config(a, &cfg));
    mhub_status s = mhub_provider_create(cfg, &r->provider);
    mhub_config_free(cfg);
    MHUB_TRY(s);
    r->cfg = mhub_provider_config_of(r->provider);
    r->world = a->world;
    r->pp = r->cfg->pipeline_model_parallel_size;
    int model_ranks = r->cfg->tensor_model_parallel_size * r->pp * r->cfg->context_parallel_size;
    if (a->world % model_ranks != 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "--world %d is not a multiple of tp x pp x cp = %d x %d x %d",
                          a->world, r->cfg->tensor_model_parallel_size, r->pp,
                          r->cfg->context_parallel_size);
    r->dp = a->world / model_ranks;
    mhub_optim_config_init(&r->optim, a->optimizer);
    MHUB_TRY(load_ddp_config(a->ddp_config, &r->ddp));
    if (r->cfg->type->describe)
        r->cfg->type->describe(r->cfg, r->arch, sizeof r->arch);
    else
        snprintf(r->arch, sizeof r->arch, "%s", r->cfg->type->description);
    MHUB_TRY(count_stages(r));
    return estimate_memory(r);
}

/* ---- output ---------------------------------------------------------------- */

/* 1234567 -> "1,234,567" */
static const char *grouped(int64_t v, char buf[32])
{
    char digits[24];
    int n = snprintf(digits, sizeof digits, "%lld", (long long)v), o = 0;
    for (int i = 0; i < n; i++) {
        buf[o++] = digits[i];
        int left = n - 1 - i;
        if (left > 0 && left % 3 == 0 && digits[i] != '-')
            buf[o++] = ',';
    }
    buf[o] = '\0';
    return buf;
}

static const char *human_bytes(double b, char buf[32])
{
    const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (b >= 1024 && u < 5) {
        b /= 1024;
        u++;
    }
    snprintf(buf, 32, u == 0 ? "%.0f %s" : "%.2f %s", b, unit[u]);
    return buf;
}

static void print_text(const info_args *a, const report *r)
{
    const mhub_provider_config *c = r->cfg;
    char b1[32], b2[32], b3[32], b4[32], b5[32], b6[32], b7[32];
    printf("config:        %s (provider %s)\n", a->hf ? a->hf : a->config, c->type->name);
    printf("architecture:  %s\n", r->arch);
    printf("precision:     %s parameters\n",
           mhub_dtype_name(mhub_provider_config_param_dtype(c)));
    printf("parallel:      world %d = tp %d x pp %d x cp %d x dp %d", r->world,
           c->tensor_model_parallel_size, r->pp, c->context_parallel_size, r->dp);
    if (c->virtual_pipeline_model_parallel_size > 0)
        printf(", %d virtual stages per rank", c->virtual_pipeline_model_parallel_size);
    printf("\nparameters:    %s\n", grouped(r->total, b1));
    /* A stage's chunks are one tensor-parallel rank's shard (what
     * get_model prints per (tensor, pipeline) rank), so with tp > 1 the
     * stages add up to less than the whole model above. */
    if (c->tensor_model_parallel_size > 1)
        printf("parameters per (tensor, pipeline) rank, each of a stage's %d tp ranks "
               "holding a shard:\n", c->tensor_model_parallel_size);
    for (int s = 0; s < r->pp; s++) {
        const stage_info *st = &r->stages[s];
        printf("  stage %d:     %s in %d chunk%s", s, grouped(st->params, b1), st->chunks,
               st->chunks == 1 ? "" : "s");
        for (int k = 0; k < st->chunks && k < 4; k++)
            printf("%s%s", k == 0 ? ": " : "; ", st->what[k]);
        printf("%s\n", st->chunks > 4 ? "; ..." : "");
    }
    printf("\nmemory per rank for stage %d (%s optimizer, dp %d):\n", r->largest,
           mhub_optim_kind_name(r->optim.kind), r->dp);
    printf("  %-8s %11s %11s %15s %11s %11s %11s %12s\n", "engine", "params", "grads",
           "main+optimizer", "gathered", "scratch", "total", "padding");
    for (int k = 0; k < 3; k++) {
        const mhub_dp_memory *m = &r->rows[k].mem;
        printf("  %-8s %11s %11s %15s %11s %11s %11s %12s\n",
               mhub_dp_engine_name(r->rows[k].kind), human_bytes((double)m->param_bytes, b1),
               human_bytes((double)m->grad_bytes, b2),
               human_bytes((double)(m->main_param_bytes + m->optim_state_bytes), b3),
               human_bytes((double)m->gathered_bytes, b4), human_bytes((double)m->scratch_bytes, b7),
               human_bytes((double)m->total_bytes, b5), grouped(m->padding_elems, b6));
    }
    printf("  (activations and communication buffers not included; padding is in elements)\n");
}

static cJSON *memory_json(const mhub_dp_memory *m)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "param_bytes", (double)m->param_bytes);
    cJSON_AddNumberToObject(o, "grad_bytes", (double)m->grad_bytes);
    cJSON_AddNumberToObject(o, "main_param_bytes", (double)m->main_param_bytes);
    cJSON_AddNumberToObject(o, "optim_state_bytes", (double)m->optim_state_bytes);
    cJSON_AddNumberToObject(o, "gathered_bytes", (double)m->gathered_bytes);
    cJSON_AddNumberToObject(o, "scratch_bytes", (double)m->scratch_bytes);
    cJSON_AddNumberToObject(o, "padding_elems", (double)m->padding_elems);
    cJSON_AddNumberToObject(o, "total_bytes", (double)m->total_bytes);
    return o;
}

static bool print_json(const report *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "provider", r->cfg->type->name);
    cJSON_AddStringToObject(o, "architecture", r->arch);
    cJSON_AddNumberToObject(o, "parameters", (double)r->total);
    cJSON_AddNumberToObject(o, "world", r->world);
    cJSON_AddNumberToObject(o, "dp", r->dp);
    /* the stages' "parameters" are per tensor-parallel rank */
    cJSON_AddNumberToObject(o, "tp", r->cfg->tensor_model_parallel_size);
    cJSON *stages = cJSON_AddArrayToObject(o, "stages");
    for (int s = 0; s < r->pp; s++) {
        cJSON *st = cJSON_CreateObject();
        cJSON_AddNumberToObject(st, "stage", s);
        cJSON_AddNumberToObject(st, "parameters", (double)r->stages[s].params);
        cJSON_AddNumberToObject(st, "chunks", r->stages[s].chunks);
        cJSON_AddItemToArray(stages, st);
    }
    cJSON *mem = cJSON_AddObjectToObject(o, "memory_per_rank");
    cJSON_AddNumberToObject(mem, "stage", r->largest);
    cJSON_AddStringToObject(mem, "optimizer", mhub_optim_kind_name(r->optim.kind));
    for (int k = 0; k < 3; k++)
        cJSON_AddItemToObject(mem, mhub_dp_engine_name(r->rows[k].kind),
                              memory_json(&r->rows[k].mem));
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text)
        return false;
    printf("%s\n", text);
    free(text);
    return true;
}

int mhub_cli_info(int argc, char **argv)
{
    info_args a = {0};
    if (!parse_args(argc, argv, &a))
        return MHUB_EXIT_USAGE;
    if (a.help) {
        usage(stdout);
        return MHUB_EXIT_OK;
    }
    report r = {0};
    mhub_status s = build_report(&a, &r);
    int rc = MHUB_EXIT_OK;
    if (s != MHUB_OK) {
        fprintf(stderr, "mhub " CMD ": %s\n", cli_error_text(mhub_last_error()));
        rc = s == MHUB_ERR_INVALID_ARG && r.provider ? MHUB_EXIT_USAGE : MHUB_EXIT_FAILED;
    } else if (a.json) {
        if (!print_json(&r))
            rc = MHUB_EXIT_FAILED;
    } else {
        print_text(&a, &r);
    }
    free(r.stages);
    mhub_provider_free(r.provider);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "mhub " CMD ": could not write the output\n");
        rc = MHUB_EXIT_FAILED;
    }
    return rc;
}
