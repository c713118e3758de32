/* gpt.c - the GPT provider: config, field table, parameter layout and
 * pipeline cut (gpt.h has the layout and the naming rules).
 *
 * Counts come in two forms that must agree: a closed form
 * (mhub_gpt_param_count, instant for a 175B config) and the parameter
 * list a chunk actually builds. Both are written from the same per-part
 * sizes below, and the tests hold them to each other. */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/gpt.h"
#include "src/models/gpt_internal.h"

/* Past 2^53 parameters a count is no longer exact in a double (JSON,
 * mhub info); no real model is near it. */
#define MAX_PARAMS 9007199254740992.0

static const char *const normalization_names[] = {"LayerNorm", "RMSNorm", NULL};
static const char *const activation_names[] = {"gelu", "swiglu", NULL};
static const char *const position_names[] = {"learned_absolute", "rope", NULL};

#define GPT_INT(field, lo, hi, text)                                                      \
    {.key = #field, .kind = MHUB_FIELD_INT, .offset = offsetof(mhub_gpt_config, field),   \
     .min = (lo), .max = (hi), .help = (text)}
/* JSON null (stored as 0) means "derived from the other sizes", as
 * Megatron's None; a number must be a real size. */
#define GPT_DERIVED(field, hi, text)                                                      \
    {.key = #field, .kind = MHUB_FIELD_INT, .offset = offsetof(mhub_gpt_config, field),   \
     .min = 1, .max = (hi), .nullable = true, .null_value = 0, .help = (text)}
#define GPT_DOUBLE(field, lo, hi, text)                                                   \
    {.key = #field, .kind = MHUB_FIELD_DOUBLE, .offset = offsetof(mhub_gpt_config, field),\
     .min = (lo), .max = (hi), .help = (text)}
#define GPT_ENUM(field, names, text)                                                      \
    {.key = #field, .kind = MHUB_FIELD_ENUM, .offset = offsetof(mhub_gpt_config, field),  \
     .choices = (names), .help = (text)}
#define GPT_BOOL(field, text)                                                             \
    {.key = #field, .kind = MHUB_FIELD_BOOL, .offset = offsetof(mhub_gpt_config, field),  \
     .help = (text)}

/* The ranges keep every product of sizes well inside int64; the total
 * is checked against 2^53 in gpt_validate. */
static const mhub_config_field gpt_fields[] = {
    GPT_INT(num_layers, 1, 65536, "transformer layers"),
    GPT_INT(hidden_size, 1, 1 << 20, "width of the residual stream (H)"),
    GPT_DERIVED(ffn_hidden_size, 1 << 22,
                "MLP width (F); null = 4 x hidden_size (gelu), required for swiglu"),
    GPT_INT(num_attention_heads, 1, 1 << 16, "attention heads"),
    GPT_DERIVED(num_query_groups, 1 << 16,
                "key/value heads; null = num_attention_heads, fewer = grouped-query attention"),
    GPT_DERIVED(kv_channels, 1 << 16, "head dimension; null = hidden_size / num_attention_heads"),
    GPT_INT(seq_length, 1, 1 << 24, "longest sequence (positions)"),
    GPT_INT(vocab_size, 1, 1 << 28, "vocabulary size as the tokenizer has it"),
    GPT_INT(make_vocab_size_divisible_by, 1, 1 << 16,
            "pad the vocabulary to a multiple of this x tensor_model_parallel_size"),
    GPT_ENUM(normalization, normalization_names, "\"LayerNorm\" or \"RMSNorm\""),
    GPT_ENUM(activation, activation_names, "MLP activation: \"gelu\" or \"swiglu\""),
    GPT_ENUM(position_embedding_type, position_names, "\"learned_absolute\" or \"rope\""),
    GPT_DOUBLE(rotary_base, 1.0, 1e12, "rope theta"),
    GPT_DOUBLE(layernorm_epsilon, 1e-30, 1.0, "added to the variance in every norm"),
    GPT_BOOL(share_embeddings_and_output_weights, "output layer tied to the word embeddings"),
    GPT_BOOL(add_bias_linear, "biases on every linear layer"),
    GPT_BOOL(add_qkv_bias, "bias on linear_qkv even without add_bias_linear"),
};

#define NUM_GPT_FIELDS ((int)(sizeof gpt_fields / sizeof gpt_fields[0]))

static const mhub_gpt_config *as_gpt(const mhub_provider_config *cfg)
{
    return (const mhub_gpt_config *)cfg;
}

/* ---- defaults and derived sizes ------------------------------------------ */

static void gpt_defaults(mhub_provider_config *base)
{
    mhub_gpt_config *c = (mhub_gpt_config *)base;
    c->num_layers = 2;
    c->hidden_size = 64;
    c->ffn_hidden_size = 0;
    c->num_attention_heads = 4;
    c->num_query_groups = 0;
    c->kv_channels = 0;
    c->seq_length = 64;
    c->vocab_size = 256;
    /* Megatron pads to 128 by default; mhub does not, so that (at tp 1)
     * vocab_size is the embedding's row count and Hugging Face weights
     * (wte is [50257, H] in gpt2) load and save without adding or
     * dropping rows, and GPT-2 124M counts its known 124,439,808. Set
     * 128 to get Megatron's GEMM-friendly padding. */
    c->make_vocab_size_divisible_by = 1;
    c->normalization = MHUB_GPT_LAYERNORM;
    c->activation = MHUB_GPT_GELU;
    c->position_embedding_type = MHUB_GPT_LEARNED_ABSOLUTE;
    c->rotary_base = 10000.0;
    c->layernorm_epsilon = 1e-5;
    c->share_embeddings_and_output_weights = true;
    c->add_bias_linear = true;
    /* Megatron's default: linear_qkv has a bias whenever add_bias_linear
     * is on, so GPT-2 needs nothing more; this flag adds one without the
     * others (Qwen2-style). */
    c->add_qkv_bias = false;
}

void mhub_gpt_config_init(mhub_gpt_config *cfg)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    mhub_provider_config_defaults(&cfg->base);
    cfg->base.type = mhub_gpt_provider_type();
    gpt_defaults(&cfg->base);
}

/* The derived sizes tolerate an unvalidated config (0, never a trap):
 * describe and the counts may see one. */
int mhub_gpt_query_groups(const mhub_gpt_config *c)
{
    if (!c)
        return 0;
    return c->num_query_groups > 0 ? c->num_query_groups : c->num_attention_heads;
}

int mhub_gpt_head_dim(const mhub_gpt_config *c)
{
    if (!c)
        return 0;
    if (c->kv_channels > 0)
        return c->kv_channels;
    return c->num_attention_heads > 0 ? c->hidden_size / c->num_attention_heads : 0;
}

int mhub_gpt_ffn_size(const mhub_gpt_config *c)
{
    if (!c)
        return 0;
    if (c->ffn_hidden_size > 0)
        return c->ffn_hidden_size;
    return c->hidden_size > 0 && c->hidden_size <= INT_MAX / 4 ? 4 * c->hidden_size : 0;
}

int64_t mhub_gpt_padded_vocab_size(const mhub_gpt_config *c)
{
    if (!c)
        return 0;
    /* Megatron's _vocab_size_with_padding: the multiple grows with tp so
     * each tensor-parallel rank gets an equal slice of the vocabulary. */
    int64_t tp = c->base.tensor_model_parallel_size > 0 ? c->base.tensor_model_parallel_size : 1;
    int64_t multiple = (int64_t)(c->make_vocab_size_divisible_by > 0
                                     ? c->make_vocab_size_divisible_by : 1) * tp;
    return (c->vocab_size + multiple - 1) / multiple * multiple;
}

static bool layernorm(const mhub_gpt_config *c) { return c->normalization == MHUB_GPT_LAYERNORM; }
static bool learned_positions(const mhub_gpt_config *c)
{
    return c->position_embedding_type == MHUB_GPT_LEARNED_ABSOLUTE;
}
static bool qkv_bias(const mhub_gpt_config *c) { return c->add_bias_linear || c->add_qkv_bias; }
static bool tied(const mhub_gpt_config *c) { return c->share_embeddings_and_output_weights; }

/* A chunk with post_process holds output_layer.weight unless the tied
 * embedding is in the same chunk. */
static bool has_output_layer(const mhub_gpt_config *c, bool pre) { return !tied(c) || !pre; }

/* An upper bound of the total in doubles, so a config whose count would
 * overflow is refused before anything multiplies in int64. */
static double approx_total(const mhub_gpt_config *c)
{
    double h = c->hidden_size, a = c->num_attention_heads, g = mhub_gpt_query_groups(c);
    double d = mhub_gpt_head_dim(c), f = mhub_gpt_ffn_size(c), v = c->vocab_size;
    double f1 = c->activation == MHUB_GPT_SWIGLU ? 2 * f : f;
    double layer = 4 * h + (a + 2 * g) * d * (h + 1) + h * a * d + h + f1 * (h + 1) + h * f + h;
    /* padding adds less than one multiple of rows */
    double pad = (double)c->make_vocab_size_divisible_by * c->base.tensor_model_parallel_size;
    return c->num_layers * layer + 2 * (v + pad) * h + (double)c->seq_length * h + 2 * h;
}

/* ---- sizes of the parts (shared by the closed form and the builder) ----- */

static int tp_size(const mhub_gpt_config *c)
{
    return c->base.tensor_model_parallel_size > 0 ? c->base.tensor_model_parallel_size : 1;
}

/* Whether every split size divides by tp. Validation refuses a config
 * where one does not; the closed form, which may see an unvalidated
 * config, answers -1 rather than a rounded count. The padded vocabulary
 * always divides (it is padded to a multiple of tp), and a d divides
 * whenever a does. */
static bool splits_evenly(const mhub_gpt_config *c)
{
    int tp = tp_size(c);
    return c->num_attention_heads % tp == 0 && mhub_gpt_query_groups(c) % tp == 0 &&
           mhub_gpt_ffn_size(c) % tp == 0;
}

static gpt_dims dims_of(const mhub_gpt_config *c, int shards)
{
    gpt_dims d;
    int64_t head_dim = mhub_gpt_head_dim(c);
    d.qkv_rows = (c->num_attention_heads + 2 * (int64_t)mhub_gpt_query_groups(c)) * head_dim /
                 shards;
    d.attn_width = (int64_t)c->num_attention_heads * head_dim / shards;
    d.ffn = mhub_gpt_ffn_size(c) / shards;
    d.fc1_rows = d.ffn * (c->activation == MHUB_GPT_SWIGLU ? 2 : 1);
    d.vocab = mhub_gpt_padded_vocab_size(c) / shards;
    return d;
}

static int64_t norm_params(const mhub_gpt_config *c)
{
    return (int64_t)c->hidden_size * (layernorm(c) ? 2 : 1);
}

/* The column-parallel biases (qkv, fc1) are split with their rows; the
 * row-parallel ones (proj, fc2) are whole, added after the all-reduce. */
static int64_t layer_params(const mhub_gpt_config *c, const gpt_dims *d)
{
    int64_t h = c->hidden_size;
    int64_t attn = d->qkv_rows * h + (qkv_bias(c) ? d->qkv_rows : 0)
                   + h * d->attn_width + (c->add_bias_linear ? h : 0);
    int64_t mlp = d->fc1_rows * h + (c->add_bias_linear ? d->fc1_rows : 0)
                  + h * d->ffn + (c->add_bias_linear ? h : 0);
    return 2 * norm_params(c) + attn + mlp;
}

static int64_t embedding_params(const mhub_gpt_config *c, const gpt_dims *d)
{
    int64_t h = c->hidden_size;
    int64_t positions = learned_positions(c) ? (int64_t)c->seq_length * h : 0;
    return d->vocab * h + positions;
}

static int64_t head_params(const mhub_gpt_config *c, const gpt_dims *d, bool pre)
{
    int64_t out = has_output_layer(c, pre) ? d->vocab * c->hidden_size : 0;
    return norm_params(c) + out;
}

static int64_t count_parts(const mhub_gpt_config *c, const gpt_dims *d, int layers, bool pre,
                           bool post)
{
    int64_t n = (int64_t)layers * layer_params(c, d);
    if (pre)
        n += embedding_params(c, d);
    if (post)
        n += head_params(c, d, pre);
    return n;
}

/* A config the counts can be computed for without dividing by zero or
 * overflowing. */
static bool countable(const mhub_gpt_config *c)
{
    return c && c->hidden_size >= 1 && c->num_attention_heads >= 1 &&
           mhub_gpt_query_groups(c) >= 1 && approx_total(c) <= MAX_PARAMS;
}

int64_t mhub_gpt_param_count(const mhub_gpt_config *cfg, int chunk, int num_chunks, bool pre,
                             bool post)
{
    if (!countable(cfg) || num_chunks < 1 || chunk < 0 || chunk >= num_chunks ||
        cfg->num_layers % num_chunks != 0 || !splits_evenly(cfg))
        return -1;
    gpt_dims d = dims_of(cfg, tp_size(cfg));
    return count_parts(cfg, &d, cfg->num_layers / num_chunks, pre, post);
}

int64_t mhub_gpt_total_params(const mhub_gpt_config *cfg)
{
    if (!countable(cfg))
        return -1;
    gpt_dims d = dims_of(cfg, 1);
    return count_parts(cfg, &d, cfg->num_layers, true, true);
}

/* ---- validation ------------------------------------------------------------ */

static mhub_status check_heads(const mhub_gpt_config *c)
{
    int heads = c->num_attention_heads, groups = mhub_gpt_query_groups(c);
    if (c->kv_channels == 0 && c->hidden_size % heads != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "num_attention_heads = %d must divide hidden_size = %d "
                          "(or set kv_channels)", heads, c->hidden_size);
    if (heads % groups != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "num_query_groups = %d must divide num_attention_heads = %d", groups,
                          heads);
    return MHUB_OK;
}

/* Each tensor-parallel rank holds an equal shard of the split layers
 * (gpt.h). Heads dividing by tp makes the attention width a d divide
 * too, and the padded vocabulary is a multiple of tp by construction, so
 * these three are all the sizes that can fail to split. */
static mhub_status check_tensor_parallel(const mhub_gpt_config *c)
{
    int tp = tp_size(c);
    if (c->num_attention_heads % tp != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "num_attention_heads = %d must be a multiple of "
                          "tensor_model_parallel_size = %d", c->num_attention_heads, tp);
    if (mhub_gpt_query_groups(c) % tp != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "num_query_groups = %d must be a multiple of "
                          "tensor_model_parallel_size = %d (each rank holds whole groups)",
                          mhub_gpt_query_groups(c), tp);
    if (mhub_gpt_ffn_size(c) % tp != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "ffn_hidden_size = %d%s must be a multiple of "
                          "tensor_model_parallel_size = %d", mhub_gpt_ffn_size(c),
                          c->ffn_hidden_size > 0 ? "" : " (4 x hidden_size)", tp);
    return MHUB_OK;
}

static mhub_status gpt_validate(const mhub_provider_config *base)
{
    const mhub_gpt_config *c = as_gpt(base);
    if (c->num_attention_heads < 1 || c->hidden_size < 1)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "num_attention_heads and hidden_size must be >= 1");
    MHUB_TRY(check_heads(c));
    if (c->activation == MHUB_GPT_SWIGLU && c->ffn_hidden_size == 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "activation \"swiglu\" needs ffn_hidden_size set (Llama's "
                          "intermediate_size); it has no default");
    MHUB_TRY(check_tensor_parallel(c));
    if (mhub_gpt_head_dim(c) < 1)
        return mhub_error(MHUB_ERR_INVALID_ARG, "kv_channels (head dim) must be >= 1");
    if (c->position_embedding_type == MHUB_GPT_ROPE && mhub_gpt_head_dim(c) % 2 != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "position_embedding_type \"rope\" rotates pairs of channels: "
                          "kv_channels (head dim) = %d must be even", mhub_gpt_head_dim(c));
    double total = approx_total(c);
    if (total > MAX_PARAMS)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "the model would have about %.3g parameters, more than 2^53 "
                          "(num_layers, hidden_size, ffn_hidden_size, vocab_size)", total);
    return MHUB_OK;
}

/* ---- describe ------------------------------------------------------------- */

/* Append to buf at *used, never past len. */
static void put(char *buf, size_t len, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void put(char *buf, size_t len, size_t *used, const char *fmt, ...)
{
    if (*used >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *used, len - *used, fmt, ap);
    va_end(ap);
    if (n > 0)
        *used = *used + (size_t)n < len ? *used + (size_t)n : len;
}

void mhub_gpt_describe(const mhub_gpt_config *c, char *buf, size_t len)
{
    if (!buf || len == 0)
        return;
    buf[0] = '\0';
    if (!c || c->num_attention_heads < 1)
        return;
    size_t used = 0;
    put(buf, len, &used, "GPT: %d layers, hidden %d, %d heads (%d query groups)", c->num_layers,
        c->hidden_size, c->num_attention_heads, mhub_gpt_query_groups(c));
    if (c->kv_channels > 0 && c->kv_channels * c->num_attention_heads != c->hidden_size)
        put(buf, len, &used, ", head dim %d", c->kv_channels);
    put(buf, len, &used, ", ffn %d, vocab %d", mhub_gpt_ffn_size(c), c->vocab_size);
    if (mhub_gpt_padded_vocab_size(c) != c->vocab_size)
        put(buf, len, &used, " (padded %lld)", (long long)mhub_gpt_padded_vocab_size(c));
    put(buf, len, &used, ", seq %d, %s, %s, %s", c->seq_length,
        normalization_names[layernorm(c) ? 0 : 1],
        activation_names[c->activation == MHUB_GPT_SWIGLU ? 1 : 0],
        position_names[learned_positions(c) ? 0 : 1]);
    if (!learned_positions(c))
        put(buf, len, &used, " (base %g)", c->rotary_base);
    put(buf, len, &used, ", %s", tied(c) ? "tied" : "untied");
    if (!c->add_bias_linear)
        put(buf, len, &used, c->add_qkv_bias ? ", qkv bias only" : ", no biases");
}

static void gpt_type_describe(const mhub_provider_config *cfg, char *buf, size_t len)
{
    mhub_gpt_describe(as_gpt(cfg), buf, len);
}

/* ---- the model object ------------------------------------------------------ */


/* Add one parameter of the current unit; cols == 0 makes it 1-D.
 * `split` marks a tensor-parallel shard, which draws its initial values
 * from the tensor-parallel seed (see materialize). */
static mhub_status add_param(mhub_gpt *m, const char *name, int64_t rows, int64_t cols,
                             mhub_init_kind init, float std, bool split)
{
    if (m->split_cap == m->params.count) {
        int cap = m->split_cap ? 2 * m->split_cap : 16;
        bool *flags = realloc(m->split, (size_t)cap * sizeof *flags);
        if (!flags)
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "flags of %d parameters", cap);
        m->split = flags;
        m->split_cap = cap;
    }
    int64_t shape[2] = {rows, cols};
    int index = -1;
    MHUB_TRY(mhub_param_list_add(&m->params, name, m->dtype, cols > 0 ? 2 : 1, shape, init, std,
                                 &index));
    m->params.items[index].unit = m->unit;
    m->split[index] = split;
    return MHUB_OK;
}

/* Standard deviation of a weight whose whole layer reads `fan_in`
 * inputs (not the shard's: a row-parallel shard must draw from the same
 * distribution as the whole layer); `residual` marks the two projections
 * into the residual stream, which Megatron scales down by sqrt(2
 * num_layers) so the stream's variance does not grow with depth. */
static float weight_std(const mhub_gpt_config *c, int64_t fan_in, bool residual)
{
    if (c->base.init_method == MHUB_INIT_METHOD_FAN_IN)
        return (float)(1.0 / sqrt((double)fan_in));
    double std = c->base.init_method_std;
    if (residual)
        std /= sqrt(2.0 * c->num_layers);
    return (float)std;
}

/* The word embeddings are vocab-parallel (each rank holds V / tp rows);
 * the position table is replicated. */
static mhub_status add_embedding(mhub_gpt *m)
{
    const mhub_gpt_config *c = &m->cfg;
    int64_t h = c->hidden_size;
    float std = weight_std(c, h, false);
    MHUB_TRY(add_param(m, "embedding.word_embeddings.weight", m->dims.vocab, h,
                       MHUB_INIT_NORMAL, std, true));
    if (learned_positions(c))
        MHUB_TRY(add_param(m, "embedding.position_embeddings.weight", c->seq_length, h,
                           MHUB_INIT_NORMAL, std, false));
    return MHUB_OK;
}

/* A norm's weight (ones) and, for LayerNorm, its bias (zeros), named
 * <prefix>weight / <prefix>bias with the given suffixes; replicated. */
static mhub_status add_norm(mhub_gpt *m, const char *prefix, const char *weight,
                            const char *bias)
{
    char name[MHUB_NAME_MAX];
    snprintf(name, sizeof name, "%s%s", prefix, weight);
    MHUB_TRY(add_param(m, name, m->cfg.hidden_size, 0, MHUB_INIT_ONES, 0.0f, false));
    if (!layernorm(&m->cfg))
        return MHUB_OK;
    snprintf(name, sizeof name, "%s%s", prefix, bias);
    return add_param(m, name, m->cfg.hidden_size, 0, MHUB_INIT_ZEROS, 0.0f, false);
}

/* One tensor-parallel linear layer: <prefix>weight [rows, cols] (this
 * rank's shard) and, when `bias`, <prefix>bias [rows]. */
typedef struct linear_spec {
    const char *prefix;
    int64_t rows, cols;   /* the shard's shape */
    int64_t fan_in;       /* the whole layer's input width */
    bool row_parallel;    /* cut along cols: the bias is whole, added after the all-reduce */
    bool bias, residual;
} linear_spec;

static mhub_status add_linear(mhub_gpt *m, const linear_spec *l)
{
    char name[MHUB_NAME_MAX];
    snprintf(name, sizeof name, "%sweight", l->prefix);
    MHUB_TRY(add_param(m, name, l->rows, l->cols, MHUB_INIT_NORMAL,
                       weight_std(&m->cfg, l->fan_in, l->residual), true));
    if (!l->bias)
        return MHUB_OK;
    snprintf(name, sizeof name, "%sbias", l->prefix);
    return add_param(m, name, l->rows, 0, MHUB_INIT_ZEROS, 0.0f, !l->row_parallel);
}

static mhub_status add_layer(mhub_gpt *m, int layer)
{
    const mhub_gpt_config *c = &m->cfg;
    const gpt_dims *d = &m->dims;
    int64_t h = c->hidden_size;
    bool bias = c->add_bias_linear;
    char attn[MHUB_NAME_MAX], proj[MHUB_NAME_MAX], fc1[MHUB_NAME_MAX], fc2[MHUB_NAME_MAX];
    snprintf(attn, sizeof attn, "decoder.layers.%d.self_attention.linear_qkv.", layer);
    snprintf(proj, sizeof proj, "decoder.layers.%d.self_attention.linear_proj.", layer);
    snprintf(fc1, sizeof fc1, "decoder.layers.%d.mlp.linear_fc1.", layer);
    snprintf(fc2, sizeof fc2, "decoder.layers.%d.mlp.linear_fc2.", layer);
    const linear_spec qkv_l = {attn, d->qkv_rows, h, h, false, qkv_bias(c), false};
    const linear_spec proj_l = {proj, h, d->attn_width, d->attn_width * m->tp_size, true, bias,
                                true};
    const linear_spec fc1_l = {fc1, d->fc1_rows, h, h, false, bias, false};
    const linear_spec fc2_l = {fc2, h, d->ffn, d->ffn * m->tp_size, true, bias, true};
    /* Megatron-Core fuses each pre-norm into the linear layer after it,
     * hence linear_qkv.layer_norm_weight rather than input_layernorm. */
    MHUB_TRY(add_norm(m, attn, "layer_norm_weight", "layer_norm_bias"));
    MHUB_TRY(add_linear(m, &qkv_l));
    MHUB_TRY(add_linear(m, &proj_l));
    MHUB_TRY(add_norm(m, fc1, "layer_norm_weight", "layer_norm_bias"));
    MHUB_TRY(add_linear(m, &fc1_l));
    return add_linear(m, &fc2_l);
}

/* The output layer is column-parallel over the vocabulary, like the
 * embedding it may be tied to. */
static mhub_status add_head(mhub_gpt *m)
{
    const mhub_gpt_config *c = &m->cfg;
    MHUB_TRY(add_norm(m, "decoder.final_layernorm.", "weight", "bias"));
    if (!has_output_layer(c, m->pre_process))
        return MHUB_OK;
    int64_t h = c->hidden_size, v = m->dims.vocab;
    /* The tied copy starts at zero: the embedding group's sum makes it
     * the first stage's embedding (gpt.h). */
    if (tied(c))
        return add_param(m, "output_layer.weight", v, h, MHUB_INIT_ZEROS, 0.0f, true);
    return add_param(m, "output_layer.weight", v, h, MHUB_INIT_NORMAL, weight_std(c, h, false),
                     true);
}

static mhub_status build_params(mhub_gpt *m)
{
    m->unit = 0;
    if (m->pre_process) {
        MHUB_TRY(add_embedding(m));
        m->unit++;
    }
    for (int l = 0; l < m->num_layers; l++) {
        MHUB_TRY(add_layer(m, m->first_layer + l));
        m->unit++;
    }
    if (m->post_process)
        MHUB_TRY(add_head(m));
    /* a tied head reads the embedding table in the last unit */
    if (m->pre_process && m->post_process && tied(&m->cfg))
        m->params.items[mhub_param_list_find(&m->params, "embedding.word_embeddings.weight")]
            .tied_unit = m->unit;
    return MHUB_OK;
}

static mhub_status check_args(const mhub_provide_args *a)
{
    if (a->pp_size < 1 || a->vp_size < 1)
        return mhub_error(MHUB_ERR_INVALID_ARG, "pp_size = %d and vp_size = %d must be >= 1",
                          a->pp_size, a->vp_size);
    if (a->pp_rank < 0 || a->pp_rank >= a->pp_size)
        return mhub_error(MHUB_ERR_INVALID_ARG, "pp_rank = %d is outside [0, %d)", a->pp_rank,
                          a->pp_size);
    /* -1 (no virtual stage) counts as stage 0, as the chunk index does */
    if (a->vp_stage < -1 || a->vp_stage >= a->vp_size)
        return mhub_error(MHUB_ERR_INVALID_ARG, "vp_stage = %d is outside [-1, %d)",
                          a->vp_stage, a->vp_size);
    return MHUB_OK;
}

/* The shard sizes come from the config (its tp pads the vocabulary), so
 * the args must describe a rank of that same tensor-parallel group. */
static mhub_status check_tp_args(const mhub_gpt_config *c, const mhub_provide_args *a)
{
    if (a->tp_size != tp_size(c))
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "tp_size = %d differs from the config's tensor_model_parallel_size "
                          "= %d", a->tp_size, tp_size(c));
    if (a->tp_rank < 0 || a->tp_rank >= a->tp_size)
        return mhub_error(MHUB_ERR_INVALID_ARG, "tp_rank = %d is outside [0, %d)", a->tp_rank,
                          a->tp_size);
    return MHUB_OK;
}

/* Which layers chunk g of C holds; Megatron cuts the stack evenly. */
static mhub_status place_chunk(mhub_gpt *m, const mhub_provide_args *a)
{
    int chunks = mhub_provide_args_num_chunks(a);
    int g = mhub_provide_args_chunk_index(a);
    if (m->cfg.num_layers % chunks != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "num_layers = %d must be divisible by pipeline_model_parallel_size "
                          "(%d) x virtual_pipeline_model_parallel_size (%d) = %d chunks",
                          m->cfg.num_layers, a->pp_size, a->vp_size, chunks);
    m->num_layers = m->cfg.num_layers / chunks;
    m->first_layer = g * m->num_layers;
    m->pre_process = a->pre_process;
    m->post_process = a->post_process;
    m->tp_rank = a->tp_rank;
    m->tp_size = a->tp_size;
    m->dims = dims_of(&m->cfg, a->tp_size);
    return MHUB_OK;
}

/* Storage and initial values: the split parameters from the
 * tensor-parallel seed, the replicated ones from the rank's seed, as
 * Megatron draws its tensor-parallel layers under the model-parallel
 * RNG. So the replicated ones start equal on every tp rank, and the
 * shards differ. */
static mhub_status materialize(mhub_gpt *m, const mhub_provide_args *a)
{
    for (int i = 0; i < m->params.count; i++)
        MHUB_TRY(mhub_param_materialize(&m->params.items[i], a->backend,
                                        m->split[i] ? a->tp_seed : a->seed));
    return MHUB_OK;
}

mhub_status mhub_gpt_create(const mhub_gpt_config *cfg, const mhub_provide_args *args,
                            mhub_gpt **out)
{
    if (!cfg || !args || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config, args or out is NULL");
    *out = NULL;
    if (cfg->base.type != mhub_gpt_provider_type())
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "the config is not a \"gpt\" config");
    MHUB_TRY(mhub_config_validate(&cfg->base));
    MHUB_TRY(check_args(args));
    MHUB_TRY(check_tp_args(cfg, args));
    mhub_gpt *m = calloc(1, sizeof *m);
    if (!m)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "GPT model struct");
    m->cfg = *cfg;
    m->dtype = mhub_provider_config_param_dtype(&cfg->base);
    mhub_status s = place_chunk(m, args);
    if (s == MHUB_OK)
        s = build_params(m);
    if (s == MHUB_OK && args->backend)
        s = materialize(m, args);
    /* only a whole, unsharded model runs forward and backward (no
     * pipeline or tensor-parallel schedule yet); other chunks hold
     * parameters for counting, wrapping and checkpoints */
    m->be = args->backend;
    if (s == MHUB_OK && args->backend && mhub_gpt_runnable(m))
        s = mhub_gpt_compute_create(m, args->micro_batch);
    if (s != MHUB_OK) {
        mhub_gpt_free(m);
        return s;
    }
    *out = m;
    return MHUB_OK;
}

void mhub_gpt_free(mhub_gpt *m)
{
    if (!m)
        return;
    mhub_gpt_compute_free(m);
    mhub_param_list_free(&m->params);
    free(m->split);
    free(m);
}

mhub_param_list *mhub_gpt_params(mhub_gpt *m) { return m ? &m->params : NULL; }
const mhub_gpt_config *mhub_gpt_config_of(const mhub_gpt *m) { return m ? &m->cfg : NULL; }
int mhub_gpt_first_layer(const mhub_gpt *m) { return m ? m->first_layer : 0; }
int mhub_gpt_num_layers(const mhub_gpt *m) { return m ? m->num_layers : 0; }
bool mhub_gpt_pre_process(const mhub_gpt *m) { return m && m->pre_process; }
bool mhub_gpt_post_process(const mhub_gpt *m) { return m && m->post_process; }

int mhub_gpt_num_units(const mhub_gpt *m)
{
    return m ? m->num_layers + (m->pre_process ? 1 : 0) + (m->post_process ? 1 : 0) : 0;
}

void mhub_gpt_describe_chunk(const mhub_gpt *m, char *buf, size_t len)
{
    if (!buf || len == 0)
        return;
    buf[0] = '\0';
    if (!m)
        return;
    size_t used = 0;
    int last = m->first_layer + m->num_layers - 1;
    if (m->pre_process)
        put(buf, len, &used, "embedding + ");
    if (m->num_layers == 1)
        put(buf, len, &used, "layer %d of %d", m->first_layer, m->cfg.num_layers);
    else
        put(buf, len, &used, "layers %d-%d of %d", m->first_layer, last, m->cfg.num_layers);
    if (m->post_process) {
        put(buf, len, &used, " + final norm + output layer");
        if (tied(&m->cfg))
            put(buf, len, &used, m->pre_process ? " (tied to the embedding)"
                                                : " (copy of the tied embedding)");
    }
    if (m->tp_size > 1)
        put(buf, len, &used, ", tensor-parallel shard %d/%d", m->tp_rank + 1, m->tp_size);
}

/* ---- the provider type ------------------------------------------------------ */

static mhub_param_list *chunk_params(void *model) { return mhub_gpt_params(model); }
static void chunk_free(void *model) { mhub_gpt_free(model); }
static void chunk_describe(const void *model, char *buf, size_t len)
{
    mhub_gpt_describe_chunk(model, buf, len);
}

static void chunk_grad_ready(void *model, mhub_grad_ready_fn fn, void *user)
{
    mhub_gpt_set_grad_ready(model, fn, user);
}
static void chunk_unit_hooks(void *model, const mhub_unit_hooks *hooks)
{
    mhub_gpt_set_unit_hooks(model, hooks);
}

static const mhub_chunk_ops gpt_chunk_ops = {
    .params = chunk_params,
    .free = chunk_free,
    .set_grad_ready = chunk_grad_ready,
    .set_unit_hooks = chunk_unit_hooks,
    .describe = chunk_describe,
};

static mhub_status gpt_provide(const mhub_provider_config *cfg, const mhub_provide_args *args,
                               mhub_chunk **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    mhub_gpt *m = NULL;
    MHUB_TRY(mhub_gpt_create(as_gpt(cfg), args, &m));
    /* mhub_chunk_create frees the model when it fails */
    return mhub_chunk_create("gpt", m, &gpt_chunk_ops, out);
}

static int64_t gpt_type_total_params(const mhub_provider_config *cfg)
{
    return mhub_gpt_total_params(as_gpt(cfg));
}

static const mhub_provider_type gpt_type = {
    .name = "gpt",
    .description = "decoder-only transformer (GPT-2 and Llama families), Megatron-Core names",
    .config_size = sizeof(mhub_gpt_config),
    .fields = gpt_fields,
    .num_fields = NUM_GPT_FIELDS,
    .config_defaults = gpt_defaults,
    .config_validate = gpt_validate,
    .provide = gpt_provide,
    .describe = gpt_type_describe,
    .total_params = gpt_type_total_params,
};

const mhub_provider_type *mhub_gpt_provider_type(void) { return &gpt_type; }
