/* mlp_provider.c - the MLP as a provider type ("mlp").
 *
 * The config adds inputs, hidden and classes to the common fields; a
 * chunk is a contiguous run of linear layers (mlp.h explains the cut). */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "mhub/mlp.h"

#define CFG(field) offsetof(mhub_mlp_provider_config, field)

static const mhub_config_field mlp_fields[] = {
    {.key = "inputs", .kind = MHUB_FIELD_INT, .offset = CFG(mlp.inputs), .min = 1,
     .max = 1 << 30, .help = "features per sample"},
    {.key = "hidden", .kind = MHUB_FIELD_INT_ARRAY, .offset = CFG(mlp.hidden), .min = 1,
     .max = 1 << 30, .count_offset = CFG(mlp.num_hidden), .max_count = MHUB_MLP_MAX_HIDDEN,
     .help = "widths of the hidden layers ([] gives logistic regression)"},
    {.key = "classes", .kind = MHUB_FIELD_INT, .offset = CFG(mlp.classes), .min = 2,
     .max = 1 << 30, .help = "output classes"},
};

static void mlp_defaults(mhub_provider_config *base)
{
    mhub_mlp_provider_config *c = (mhub_mlp_provider_config *)base;
    memset(&c->mlp, 0, sizeof c->mlp);
    c->mlp.inputs = 32;
    c->mlp.num_hidden = 2;
    c->mlp.hidden[0] = c->mlp.hidden[1] = 128;
    c->mlp.classes = 8;
}

static mhub_status mlp_validate(const mhub_provider_config *base)
{
    const mhub_mlp_provider_config *c = (const mhub_mlp_provider_config *)base;
    if (base->tensor_model_parallel_size > 1 || base->context_parallel_size > 1 ||
        base->expert_model_parallel_size > 1)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "the mlp provider has no tensor, context or expert parallel layers "
                          "(tensor_model_parallel_size, context_parallel_size and "
                          "expert_model_parallel_size must be 1)");
    int layers = c->mlp.num_hidden + 1;
    int vp = base->virtual_pipeline_model_parallel_size;
    int chunks = base->pipeline_model_parallel_size * (vp > 0 ? vp : 1);
    if (chunks > layers)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "the mlp has %d linear layers (len(hidden) + 1), fewer than its %d "
                          "pipeline chunks (pipeline_model_parallel_size x "
                          "virtual_pipeline_model_parallel_size)",
                          layers, chunks);
    return MHUB_OK;
}

/* The model config a chunk is built from. */
static mhub_mlp_config model_config(const mhub_mlp_provider_config *c)
{
    mhub_mlp_config m = c->mlp;
    m.param_dtype = mhub_provider_config_param_dtype(&c->base);
    m.init_std = c->base.init_method == MHUB_INIT_METHOD_NORMAL ? (float)c->base.init_method_std
                                                                : 0.0f;
    return m;
}

static mhub_param_list *ops_params(void *model) { return mhub_mlp_params(model); }
static void ops_free(void *model) { mhub_mlp_free(model); }
static void ops_grad_ready(void *model, mhub_grad_ready_fn fn, void *user)
{
    mhub_mlp_set_grad_ready(model, fn, user);
}
static void ops_unit_hooks(void *model, const mhub_unit_hooks *hooks)
{
    mhub_mlp_set_unit_hooks(model, hooks);
}

static void ops_describe(const void *model, char *buf, size_t len)
{
    const mhub_mlp *m = model;
    int first = mhub_mlp_first_layer(m), n = mhub_mlp_num_units(m);
    int total = mhub_mlp_config_of(m)->num_hidden + 1;
    snprintf(buf, len, "linear layers %d-%d of %d%s%s", first, first + n - 1, total,
             first == 0 ? ", input layer" : "",
             first + n == total ? ", output layer + loss" : "");
}

static const mhub_chunk_ops mlp_chunk_ops = {
    .params = ops_params,
    .free = ops_free,
    .set_grad_ready = ops_grad_ready,
    .set_unit_hooks = ops_unit_hooks,
    .describe = ops_describe,
};

static mhub_status mlp_provide(const mhub_provider_config *base, const mhub_provide_args *a,
                               mhub_chunk **out)
{
    const mhub_mlp_provider_config *c = (const mhub_mlp_provider_config *)base;
    int layers = c->mlp.num_hidden + 1;
    int chunks = mhub_provide_args_num_chunks(a), g = mhub_provide_args_chunk_index(a);
    if (g < 0 || g >= chunks)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "chunk %d (pipeline rank %d, vp stage %d) "
                          "outside the model's %d chunks", g, a->pp_rank, a->vp_stage, chunks);
    if (chunks > layers)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "the mlp has %d layers, fewer than %d chunks",
                          layers, chunks);
    /* the input layer is layer 0 and the output layer the last: the flags
     * must agree with where the chunk sits */
    if (a->pre_process != (g == 0) || a->post_process != (g == chunks - 1))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "chunk %d of %d has pre_process=%s and post_process=%s, but the "
                          "mlp's input layer is in chunk 0 and its output layer in chunk %d",
                          g, chunks, a->pre_process ? "true" : "false",
                          a->post_process ? "true" : "false", chunks - 1);
    int first = (int)((int64_t)g * layers / chunks);
    int end = (int)((int64_t)(g + 1) * layers / chunks);
    mhub_mlp_config m = model_config(c);
    mhub_mlp *mlp = NULL;
    MHUB_TRY(mhub_mlp_create_chunk(&m, first, end - first, a->backend, a->micro_batch, a->seed,
                                   &mlp));
    return mhub_chunk_create("mlp", mlp, &mlp_chunk_ops, out);
}

/* "hidden 128-64", or "hidden 15 x 4096" for runs of one width. */
static int describe_hidden(const mhub_mlp_config *m, char *buf, size_t len)
{
    int n = 0;
    for (int i = 0; i < m->num_hidden && n >= 0 && (size_t)n < len;) {
        int run = 1;
        while (i + run < m->num_hidden && m->hidden[i + run] == m->hidden[i])
            run++;
        const char *sep = i == 0 ? ", hidden " : "-";
        if (run > 2) {
            n += snprintf(buf + n, len - (size_t)n, "%s%d x %d", sep, run, m->hidden[i]);
            i += run;
        } else {
            n += snprintf(buf + n, len - (size_t)n, "%s%d", sep, m->hidden[i]);
            i++;
        }
    }
    return n;
}

static void mlp_describe(const mhub_provider_config *base, char *buf, size_t len)
{
    const mhub_mlp_provider_config *c = (const mhub_mlp_provider_config *)base;
    int n = snprintf(buf, len, "MLP: %d inputs", c->mlp.inputs);
    if (n >= 0 && (size_t)n < len)
        n += describe_hidden(&c->mlp, buf + n, len - (size_t)n);
    if (n >= 0 && (size_t)n < len)
        snprintf(buf + n, len - (size_t)n, ", %d classes, %d linear layers, GELU, "
                 "softmax cross-entropy", c->mlp.classes, c->mlp.num_hidden + 1);
}

static const mhub_provider_type mlp_type = {
    .name = "mlp",
    .description = "multi-layer perceptron with GELU and softmax cross-entropy",
    .config_size = sizeof(mhub_mlp_provider_config),
    .fields = mlp_fields,
    .num_fields = (int)(sizeof mlp_fields / sizeof mlp_fields[0]),
    .config_defaults = mlp_defaults,
    .config_validate = mlp_validate,
    .provide = mlp_provide,
    .describe = mlp_describe,
};

const mhub_provider_type *mhub_mlp_provider_type(void) { return &mlp_type; }

int64_t mhub_mlp_param_count(const mhub_mlp_config *cfg)
{
    if (!cfg)
        return 0;
    int64_t n = 0, prev = cfg->inputs;
    for (int i = 0; i <= cfg->num_hidden; i++) {
        int64_t next = i < cfg->num_hidden ? cfg->hidden[i] : cfg->classes;
        n += prev * next + next;
        prev = next;
    }
    return n;
}
