/* test_gpt_fd.c - the whole GPT's gradient against finite differences of
 * an independent double-precision reference.
 *
 * The reference below is a second implementation of the GPT forward and
 * loss, written from the definitions (gpt.h's parameter layout, the usual
 * formulas of each block) in plain double loops: no BLAS, no mhub kernel.
 * It reads the parameter values of an mhub model, widened to double, so
 * both compute the same function of the same numbers:
 *   1. the reference loss equals mhub's f32 forward loss to 1e-5 relative;
 *   2. central differences of the reference loss, on a few elements of
 *      every parameter tensor, equal mhub's analytic f32 gradient to 1e-4
 *      relative (with a floor, see grad_agrees);
 *   3. negative controls: a deliberately wrong gradient fails check 2,
 *      and a reference with another convention (interleaved rotary
 *      pairs, strided query groups, erf GELU) fails check 1.
 * Two tiny models cover both families: GPT-2 style (LayerNorm with bias,
 * tanh GELU, learned positions, biases, tied output over a padded
 * vocabulary) and Llama style (RMSNorm, SwiGLU, rotary positions,
 * grouped-query attention with a head dim other than H / a, untied
 * output, no biases). The parameters are set to seeded values of O(1)
 * effect (not the init's near-zero ones), so every block is nonlinear
 * and every gradient carries signal. */
#include <string.h>

#include "testutil.h"

/* ---- seeded numbers ------------------------------------------------------- */

/* splitmix64: a small, well-mixed generator, so the test is reproducible. */
static uint64_t next_u64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double uniform(uint64_t *state, double lo, double hi)
{
    return lo + (hi - lo) * (double)(next_u64(state) >> 11) * 0x1.0p-53;
}

/* An index in [0, n); the modulo's bias (n / 2^64) is immaterial here. */
static int64_t below(uint64_t *state, int64_t n)
{
    return (int64_t)(next_u64(state) % (uint64_t)n);
}

/* ---- the two models ------------------------------------------------------- */

enum { BATCH = 2, SEQ = 8 };

/* GPT-2 style; vocab 40 padded to 48, so the padded rows (tied: they are
 * output rows too) take part in the softmax as in Megatron. */
static mhub_gpt_config gpt2_tiny(void)
{
    mhub_gpt_config c;
    mhub_gpt_config_init(&c);
    c.num_layers = 2;
    c.hidden_size = 32;
    c.num_attention_heads = 4;
    c.seq_length = SEQ;
    c.vocab_size = 40;
    c.make_vocab_size_divisible_by = 16;
    return c;
}

/* Llama style: 4 query heads in 2 groups, head dim 6 (so a d = 24 != H),
 * a rotary base small enough that every frequency turns visibly over 8
 * positions. */
static mhub_gpt_config llama_tiny(void)
{
    mhub_gpt_config c;
    mhub_gpt_config_init(&c);
    c.num_layers = 2;
    c.hidden_size = 32;
    c.ffn_hidden_size = 48;
    c.num_attention_heads = 4;
    c.num_query_groups = 2;
    c.kv_channels = 6;
    c.seq_length = SEQ;
    c.vocab_size = 40;
    c.normalization = MHUB_GPT_RMSNORM;
    c.activation = MHUB_GPT_SWIGLU;
    c.position_embedding_type = MHUB_GPT_ROPE;
    c.rotary_base = 64.0;
    c.layernorm_epsilon = 1e-6;
    c.share_embeddings_and_output_weights = false;
    c.add_bias_linear = false;
    return c;
}

static mhub_backend *be;

static void setup(void)
{
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &be));
}

static void teardown(void) { mhub_backend_free(be); }

static mhub_gpt *build(const mhub_gpt_config *cfg)
{
    mhub_provide_args a = {.pre_process = true, .post_process = true, .vp_stage = -1,
                           .pp_size = 1, .vp_size = 1, .tp_size = 1, .backend = be,
                           .seed = 11, .tp_seed = 12, .micro_batch = BATCH};
    mhub_gpt *m = NULL;
    CK_OK(mhub_gpt_create(cfg, &a, &m));
    ck_assert(mhub_gpt_runnable(m));
    return m;
}

static bool ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), k = strlen(tail);
    return n >= k && strcmp(s + n - k, tail) == 0;
}

/* Values with O(1) effect: matrices U(-r, r) with r = sqrt(3 / fan_in),
 * unit variance out for unit variance in; embeddings U(-0.5, 0.5), which
 * keeps the tied GPT-2's logits O(1) (wider, its softmax saturates at a
 * loss twice ln V, an over-confident regime no training reaches); norm
 * weights near 1 and biases near 0 but neither exactly, so a gradient
 * that mixes up weight and bias, or drops a bias, shows. */
static void randomize(mhub_gpt *m, uint64_t seed)
{
    mhub_param_list *pl = mhub_gpt_params(m);
    for (int i = 0; i < pl->count; i++) {
        mhub_param *p = &pl->items[i];
        float *v = p->value.data;
        ck_assert_int_eq(p->value.dtype, MHUB_F32);
        bool vector = p->value.ndim == 1;
        bool norm = strstr(p->name, "norm") != NULL;
        bool embedding = strstr(p->name, "embedding") != NULL;
        double r = sqrt(3.0 / (double)p->value.shape[p->value.ndim - 1]);
        for (int64_t e = 0; e < p->value.numel; e++) {
            if (vector && norm && ends_with(p->name, "weight"))
                v[e] = (float)uniform(&seed, 0.7, 1.3);
            else if (vector)
                v[e] = (float)uniform(&seed, -0.2, 0.2);
            else if (embedding)
                v[e] = (float)uniform(&seed, -0.5, 0.5);
            else
                v[e] = (float)uniform(&seed, -r, r);
        }
    }
}

/* ---- the reference: a GPT in plain double loops --------------------------- */

/* Deliberate deviations from the definitions, for the negative controls. */
typedef enum ref_variant {
    REF_AS_DEFINED = 0,
    REF_ROPE_INTERLEAVED, /* rotate pairs (2i, 2i + 1) (GPT-NeoX's other form) */
    REF_GROUPS_STRIDED,   /* query head h attends with group h mod g's key and value */
    REF_GELU_ERF          /* the exact GELU instead of the tanh approximation */
} ref_variant;

typedef struct ref_layer {
    const double *ln1_w, *ln1_b, *qkv_w, *qkv_b, *proj_w, *proj_b;
    const double *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} ref_layer;

typedef struct ref_model {
    mhub_gpt_config cfg;
    ref_variant variant;
    int64_t vocab; /* padded: the rows of the output layer */
    int layers, hidden, heads, groups, head_dim, ffn;
    int64_t qkv_rows, attn_width, fc1_rows;
    double eps, rope_base;
    int count;
    double **values; /* parameter i of the mhub list, widened */
    const double *wte, *wpe, *lnf_w, *lnf_b, *out_w;
    ref_layer *layer;
    /* activations of one forward, [rows, width] */
    double *x, *normed, *qkv, *attn, *fc1, *act, *logits, *scores;
} ref_model;

/* The widened values of parameter `name` (layer-formatted), or NULL when
 * the config has no such parameter. */
static const double *ref_param(const ref_model *r, const mhub_param_list *pl, const char *fmt,
                               int layer)
{
    char name[MHUB_NAME_MAX];
    snprintf(name, sizeof name, fmt, layer);
    int i = mhub_param_list_find(pl, name);
    return i < 0 ? NULL : r->values[i];
}

static void ref_bind_layer(ref_model *r, const mhub_param_list *pl, int l)
{
    ref_layer *y = &r->layer[l];
    y->ln1_w = ref_param(r, pl, "decoder.layers.%d.self_attention.linear_qkv.layer_norm_weight", l);
    y->ln1_b = ref_param(r, pl, "decoder.layers.%d.self_attention.linear_qkv.layer_norm_bias", l);
    y->qkv_w = ref_param(r, pl, "decoder.layers.%d.self_attention.linear_qkv.weight", l);
    y->qkv_b = ref_param(r, pl, "decoder.layers.%d.self_attention.linear_qkv.bias", l);
    y->proj_w = ref_param(r, pl, "decoder.layers.%d.self_attention.linear_proj.weight", l);
    y->proj_b = ref_param(r, pl, "decoder.layers.%d.self_attention.linear_proj.bias", l);
    y->ln2_w = ref_param(r, pl, "decoder.layers.%d.mlp.linear_fc1.layer_norm_weight", l);
    y->ln2_b = ref_param(r, pl, "decoder.layers.%d.mlp.linear_fc1.layer_norm_bias", l);
    y->fc1_w = ref_param(r, pl, "decoder.layers.%d.mlp.linear_fc1.weight", l);
    y->fc1_b = ref_param(r, pl, "decoder.layers.%d.mlp.linear_fc1.bias", l);
    y->fc2_w = ref_param(r, pl, "decoder.layers.%d.mlp.linear_fc2.weight", l);
    y->fc2_b = ref_param(r, pl, "decoder.layers.%d.mlp.linear_fc2.bias", l);
    ck_assert_ptr_nonnull(y->ln1_w);
    ck_assert_ptr_nonnull(y->qkv_w);
    ck_assert_ptr_nonnull(y->proj_w);
    ck_assert_ptr_nonnull(y->ln2_w);
    ck_assert_ptr_nonnull(y->fc1_w);
    ck_assert_ptr_nonnull(y->fc2_w);
}

static double *ref_alloc(int64_t n)
{
    double *p = calloc((size_t)n, sizeof *p);
    ck_assert_ptr_nonnull(p);
    return p;
}

/* A reference holding a copy of m's current parameter values. */
static ref_model *ref_create(mhub_gpt *m, ref_variant variant)
{
    ref_model *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    const mhub_gpt_config *c = mhub_gpt_config_of(m);
    r->cfg = *c;
    r->variant = variant;
    r->vocab = mhub_gpt_padded_vocab_size(c);
    r->layers = c->num_layers;
    r->hidden = c->hidden_size;
    r->heads = c->num_attention_heads;
    r->groups = mhub_gpt_query_groups(c);
    r->head_dim = mhub_gpt_head_dim(c);
    r->ffn = mhub_gpt_ffn_size(c);
    r->qkv_rows = (int64_t)(r->heads + 2 * r->groups) * r->head_dim;
    r->attn_width = (int64_t)r->heads * r->head_dim;
    r->fc1_rows = c->activation == MHUB_GPT_SWIGLU ? 2 * r->ffn : r->ffn;
    /* mhub's kernels take epsilon and the rotary base as floats: the
     * same function means the same rounded constants */
    r->eps = (double)(float)c->layernorm_epsilon;
    r->rope_base = (double)(float)c->rotary_base;
    mhub_param_list *pl = mhub_gpt_params(m);
    r->count = pl->count;
    r->values = calloc((size_t)pl->count, sizeof *r->values);
    ck_assert_ptr_nonnull(r->values);
    for (int i = 0; i < pl->count; i++) {
        const float *v = pl->items[i].value.data;
        r->values[i] = ref_alloc(pl->items[i].value.numel);
        for (int64_t e = 0; e < pl->items[i].value.numel; e++)
            r->values[i][e] = v[e];
    }
    r->wte = ref_param(r, pl, "embedding.word_embeddings.weight", 0);
    r->wpe = ref_param(r, pl, "embedding.position_embeddings.weight", 0);
    r->lnf_w = ref_param(r, pl, "decoder.final_layernorm.weight", 0);
    r->lnf_b = ref_param(r, pl, "decoder.final_layernorm.bias", 0);
    r->out_w = c->share_embeddings_and_output_weights ? r->wte
                                                      : ref_param(r, pl, "output_layer.weight", 0);
    ck_assert_ptr_nonnull(r->wte);
    ck_assert_ptr_nonnull(r->lnf_w);
    ck_assert_ptr_nonnull(r->out_w);
    r->layer = calloc((size_t)r->layers, sizeof *r->layer);
    ck_assert_ptr_nonnull(r->layer);
    for (int l = 0; l < r->layers; l++)
        ref_bind_layer(r, pl, l);
    int64_t rows = (int64_t)BATCH * SEQ;
    r->x = ref_alloc(rows * r->hidden);
    r->normed = ref_alloc(rows * r->hidden);
    r->qkv = ref_alloc(rows * r->qkv_rows);
    r->attn = ref_alloc(rows * r->attn_width);
    r->fc1 = ref_alloc(rows * r->fc1_rows);
    r->act = ref_alloc(rows * r->ffn);
    r->logits = ref_alloc(rows * r->vocab);
    r->scores = ref_alloc(SEQ);
    return r;
}

static void ref_free(ref_model *r)
{
    for (int i = 0; i < r->count; i++)
        free(r->values[i]);
    free(r->values);
    free(r->layer);
    free(r->x);
    free(r->normed);
    free(r->qkv);
    free(r->attn);
    free(r->fc1);
    free(r->act);
    free(r->logits);
    free(r->scores);
    free(r);
}

/* LayerNorm (bias may be NULL) or RMSNorm of each row. */
static void ref_norm(const ref_model *r, double *out, const double *x, const double *w,
                     const double *b, int64_t rows)
{
    int h = r->hidden;
    bool layernorm = r->cfg.normalization == MHUB_GPT_LAYERNORM;
    for (int64_t i = 0; i < rows; i++) {
        const double *xi = x + i * h;
        double mean = 0, var = 0;
        if (layernorm) {
            for (int k = 0; k < h; k++)
                mean += xi[k];
            mean /= h;
        }
        for (int k = 0; k < h; k++)
            var += (xi[k] - mean) * (xi[k] - mean);
        double scale = 1.0 / sqrt(var / h + r->eps);
        for (int k = 0; k < h; k++)
            out[i * h + k] = (xi[k] - mean) * scale * w[k] + (b ? b[k] : 0.0);
    }
}

/* out[i, o] (+)= b[o] + sum_k x[i, k] w[o, k]: a linear layer, weight
 * [out, in] as Megatron stores it. */
static void ref_linear(double *out, const double *x, const double *w, const double *b,
                       int64_t rows, int64_t in, int64_t outs, bool accumulate)
{
    for (int64_t i = 0; i < rows; i++)
        for (int64_t o = 0; o < outs; o++) {
            double s = b ? b[o] : 0.0;
            for (int64_t k = 0; k < in; k++)
                s += x[i * in + k] * w[o * in + k];
            out[i * outs + o] = (accumulate ? out[i * outs + o] : 0.0) + s;
        }
}

/* Columns of query head h and of the key head it attends with in a qkv
 * row: per group, its a/g query heads, then its key head, then its value
 * head; query head h belongs to group h / (a/g). */
static int64_t ref_query_col(const ref_model *r, int h)
{
    int per_group = r->heads / r->groups;
    return ((h / per_group) * (per_group + 2) + h % per_group) * r->head_dim;
}

static int64_t ref_key_col(const ref_model *r, int h)
{
    int per_group = r->heads / r->groups;
    int g = r->variant == REF_GROUPS_STRIDED ? h % r->groups : h / per_group;
    return (g * (per_group + 2) + per_group) * r->head_dim;
}

/* Rotate one head at position pos: the pair (x[i], x[i + d/2]) turns by
 * pos * base^(-2i/d), as rotate_half does (Llama, Megatron's default). */
static void ref_rotate(const ref_model *r, double *x, int pos)
{
    int d = r->head_dim, half = d / 2;
    for (int i = 0; i < half; i++) {
        double angle = pos * pow(r->rope_base, -2.0 * i / d);
        double c = cos(angle), s = sin(angle);
        int i1 = r->variant == REF_ROPE_INTERLEAVED ? 2 * i : i;
        int i2 = r->variant == REF_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
        double a = x[i1], b = x[i2];
        x[i1] = a * c - b * s;
        x[i2] = b * c + a * s;
    }
}

/* Rotary positions on every query and key head of every row. */
static void ref_rope(const ref_model *r)
{
    int per_group = r->heads / r->groups;
    for (int64_t row = 0; row < (int64_t)BATCH * SEQ; row++) {
        double *q = r->qkv + row * r->qkv_rows;
        for (int g = 0; g < r->groups; g++)
            for (int k = 0; k <= per_group; k++) /* the group's queries, then its key */
                ref_rotate(r, q + (int64_t)(g * (per_group + 2) + k) * r->head_dim,
                           (int)(row % SEQ));
    }
}

/* Causal softmax attention per sequence and head; head h's output lands
 * in columns [h d, (h + 1) d) of its row. */
static void ref_attention(ref_model *r)
{
    int d = r->head_dim;
    double scale = 1.0 / sqrt((double)d);
    for (int b = 0; b < BATCH; b++)
        for (int h = 0; h < r->heads; h++)
            for (int t = 0; t < SEQ; t++) {
                const double *q = r->qkv + (int64_t)(b * SEQ + t) * r->qkv_rows +
                                  ref_query_col(r, h);
                double top = -INFINITY, sum = 0;
                for (int u = 0; u <= t; u++) {
                    const double *k = r->qkv + (int64_t)(b * SEQ + u) * r->qkv_rows +
                                      ref_key_col(r, h);
                    double s = 0;
                    for (int i = 0; i < d; i++)
                        s += q[i] * k[i];
                    r->scores[u] = s * scale;
                    top = fmax(top, r->scores[u]);
                }
                for (int u = 0; u <= t; u++)
                    sum += r->scores[u] = exp(r->scores[u] - top);
                double *o = r->attn + (int64_t)(b * SEQ + t) * r->attn_width + (int64_t)h * d;
                for (int i = 0; i < d; i++)
                    o[i] = 0;
                for (int u = 0; u <= t; u++) {
                    const double *v = r->qkv + (int64_t)(b * SEQ + u) * r->qkv_rows +
                                      ref_key_col(r, h) + d;
                    for (int i = 0; i < d; i++)
                        o[i] += r->scores[u] / sum * v[i];
                }
            }
}

static double gelu_tanh(double x)
{
    const double pi = 3.14159265358979323846;
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / pi) * (x + 0.044715 * x * x * x)));
}

static double gelu_erf(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

/* act = gelu(fc1), or silu(gate) * up with fc1's rows [gate | up]. */
static void ref_activation(ref_model *r, int64_t rows)
{
    int f = r->ffn;
    for (int64_t i = 0; i < rows; i++)
        for (int k = 0; k < f; k++) {
            double *a = r->act + i * f + k;
            if (r->cfg.activation == MHUB_GPT_SWIGLU) {
                double gate = r->fc1[i * 2 * f + k], up = r->fc1[i * 2 * f + f + k];
                *a = gate / (1.0 + exp(-gate)) * up;
            } else {
                double x = r->fc1[i * f + k];
                *a = r->variant == REF_GELU_ERF ? gelu_erf(x) : gelu_tanh(x);
            }
        }
}

static void ref_layer_forward(ref_model *r, const ref_layer *y, int64_t rows)
{
    int64_t h = r->hidden;
    ref_norm(r, r->normed, r->x, y->ln1_w, y->ln1_b, rows);
    ref_linear(r->qkv, r->normed, y->qkv_w, y->qkv_b, rows, h, r->qkv_rows, false);
    if (r->cfg.position_embedding_type == MHUB_GPT_ROPE)
        ref_rope(r);
    ref_attention(r);
    ref_linear(r->x, r->attn, y->proj_w, y->proj_b, rows, r->attn_width, h, true);
    ref_norm(r, r->normed, r->x, y->ln2_w, y->ln2_b, rows);
    ref_linear(r->fc1, r->normed, y->fc1_w, y->fc1_b, rows, h, r->fc1_rows, false);
    ref_activation(r, rows);
    ref_linear(r->x, r->act, y->fc2_w, y->fc2_b, rows, r->ffn, h, true);
}

/* Mean next-token cross-entropy of the reference on BATCH x SEQ tokens. */
static double ref_loss(ref_model *r, const int32_t *tokens, const int32_t *targets)
{
    int64_t rows = (int64_t)BATCH * SEQ, h = r->hidden, v = r->vocab;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t k = 0; k < h; k++)
            r->x[i * h + k] = r->wte[tokens[i] * h + k] + (r->wpe ? r->wpe[(i % SEQ) * h + k] : 0);
    for (int l = 0; l < r->layers; l++)
        ref_layer_forward(r, &r->layer[l], rows);
    ref_norm(r, r->normed, r->x, r->lnf_w, r->lnf_b, rows);
    ref_linear(r->logits, r->normed, r->out_w, NULL, rows, h, v, false);
    double total = 0;
    for (int64_t i = 0; i < rows; i++) {
        const double *z = r->logits + i * v;
        double top = -INFINITY, sum = 0;
        for (int64_t k = 0; k < v; k++)
            top = fmax(top, z[k]);
        for (int64_t k = 0; k < v; k++)
            sum += exp(z[k] - top);
        total += top + log(sum) - z[targets[i]];
    }
    return total / (double)rows;
}

/* ---- the checks ------------------------------------------------------------- */

typedef struct batch {
    int32_t tokens[BATCH * SEQ], targets[BATCH * SEQ];
} batch;

/* Tokens and targets drawn from the real (unpadded) vocabulary. */
static batch random_batch(const mhub_gpt_config *cfg, uint64_t seed)
{
    batch b;
    for (int i = 0; i < BATCH * SEQ; i++) {
        b.tokens[i] = (int32_t)below(&seed, cfg->vocab_size);
        b.targets[i] = (int32_t)below(&seed, cfg->vocab_size);
    }
    return b;
}

/* mhub's f32 forward loss and its analytic gradient of the mean loss. */
static float mhub_loss_and_grad(mhub_gpt *m, const batch *b)
{
    float loss = 0;
    CK_OK(mhub_param_list_zero_grad(mhub_gpt_params(m)));
    CK_OK(mhub_gpt_forward(m, b->tokens, b->targets, BATCH, SEQ, &loss));
    CK_OK(mhub_gpt_backward(m, 1.0f / (BATCH * SEQ)));
    return loss;
}

/* d loss / d values[i][e] of the reference by the central difference
 * (L(w + h) - L(w - h)) / 2h, with h = step |w| (step for |w| < 1) so the
 * perturbation is relative for large values and still a step for zero
 * ones. The divisor is the difference of the two points as stored, so
 * the rounding of w +- h does not enter. */
static double ref_central_difference(ref_model *r, int i, int64_t e, const batch *b, double step)
{
    double *w = &r->values[i][e], keep = *w;
    double h = step * fmax(fabs(keep), 1.0);
    *w = keep + h;
    double up = *w, lp = ref_loss(r, b->tokens, b->targets);
    *w = keep - h;
    double down = *w, lm = ref_loss(r, b->tokens, b->targets);
    *w = keep;
    return (lp - lm) / (up - down);
}

/* The finite difference's own error, estimated by halving the step:
 * truncation falls 4-fold, so D(2h) - D(h) ~ 3 x D(h)'s truncation error
 * (plus rounding of both). */
static double fd_error_estimate(ref_model *r, int i, int64_t e, const batch *b, double step,
                                double fd)
{
    return fabs(ref_central_difference(r, i, e, b, 2 * step) - fd) / 3.0;
}

/* The reference loss agrees with mhub's f32 forward to this relative
 * error; f32 rounding leaves ~1e-7 (measured: under 6e-8). */
#define LOSS_RTOL 1e-5

/* The step: the loss is a sum of O(1) terms, so the reference rounds it
 * to about 1e-15 absolute, and the difference quotient's rounding error
 * is ~1e-15 / 1e-5 = 1e-10; truncation, h^2 |L'''| / 6, is ~1e-11 for
 * third derivatives of order 1. Both sit far below the smallest
 * allowance (GRAD_RTOL x GRAD_FLOOR x the tensor's largest gradient,
 * ~1e-9 and more here), which fd_error_estimate confirms element by
 * element (measured: under 1e-3 of the allowance). */
#define FD_STEP 1e-5

/* Gradients agree when |g_mhub - g_fd| <= GRAD_RTOL max(|g_fd|, floor),
 * floor = GRAD_FLOOR x the tensor's largest |g_mhub|. Why these: mhub's
 * gradient is f32 arithmetic (unit roundoff 6e-8) through sums of up to
 * ~100 terms and a few layers, which leaves ~1e-6 relative error on a
 * typical element; 1e-4 is two orders above that and two below the error
 * of a wrong formula (a missing term, a wrong factor or sign moves a
 * gradient by O(1) relative). An element much smaller than its tensor's
 * largest comes out of cancelling larger terms, whose f32 rounding is
 * absolute: over 11 seeds of each model it reached 4e-7 of the
 * tensor's largest gradient, so elements below 1% of it are held to an
 * absolute 1e-6 of it instead (still 10 times tighter than the golden
 * comparison in test_gpt_model.c). */
#define GRAD_RTOL 1e-4
#define GRAD_FLOOR 1e-2

static bool grad_agrees(double g_mhub, double g_fd, double floor)
{
    return fabs(g_mhub - g_fd) <= GRAD_RTOL * fmax(fabs(g_fd), floor);
}

static double max_abs(const float *x, int64_t n)
{
    double m = 0;
    for (int64_t e = 0; e < n; e++)
        m = fmax(m, fabs(x[e]));
    return m;
}

static int64_t argmax_abs(const float *x, int64_t n)
{
    int64_t j = 0;
    for (int64_t e = 1; e < n; e++)
        if (fabsf(x[e]) > fabsf(x[j]))
            j = e;
    return j;
}

/* Per tensor: the largest-|gradient| element and RANDOM_PICKS seeded ones. */
enum { RANDOM_PICKS = 3 };

typedef struct fd_stats {
    int elements;
    double worst_ratio;    /* max |g_mhub - g_fd| / (GRAD_RTOL max(|g_fd|, floor)) */
    double worst_fd_error; /* max fd_error_estimate / the same allowance */
} fd_stats;

static void check_element(ref_model *r, mhub_param *p, int i, int64_t e, const batch *b,
                          double floor, fd_stats *st)
{
    const float *g = p->grad.data;
    double fd = ref_central_difference(r, i, e, b, FD_STEP);
    double allowed = GRAD_RTOL * fmax(fabs(fd), floor);
    double fd_err = fd_error_estimate(r, i, e, b, FD_STEP, fd);
    ck_assert_msg(fd_err <= 0.1 * allowed,
                  "%s[%lld]: the finite difference is uncertain by %.3g, near the allowance "
                  "%.3g; the step needs adjusting", p->name, (long long)e, fd_err, allowed);
    ck_assert_msg(grad_agrees(g[e], fd, floor),
                  "%s[%lld]: mhub gradient %.10g, finite difference of the reference %.10g "
                  "(difference %.3g, allowed %.3g)", p->name, (long long)e, (double)g[e], fd,
                  fabs(g[e] - fd), allowed);
    st->elements++;
    st->worst_ratio = fmax(st->worst_ratio, fabs(g[e] - fd) / allowed);
    st->worst_fd_error = fmax(st->worst_fd_error, fd_err / allowed);
}

static void check_gradients(const mhub_gpt_config *cfg, const char *label, uint64_t seed)
{
    mhub_gpt *m = build(cfg);
    randomize(m, seed);
    batch b = random_batch(cfg, seed + 1);
    float loss = mhub_loss_and_grad(m, &b);
    ref_model *r = ref_create(m, REF_AS_DEFINED);
    double ref = ref_loss(r, b.tokens, b.targets);
    ck_assert_msg(mhub_test_relerr(loss, ref, 1e-30) < LOSS_RTOL,
                  "%s: mhub loss %.9g, reference %.12g", label, (double)loss, ref);
    mhub_param_list *pl = mhub_gpt_params(m);
    fd_stats st = {0};
    uint64_t pick = seed + 2;
    for (int i = 0; i < pl->count; i++) {
        mhub_param *p = &pl->items[i];
        int64_t n = p->value.numel;
        double largest = max_abs(p->grad.data, n);
        ck_assert_msg(largest > 0, "%s %s: no gradient at all", label, p->name);
        check_element(r, p, i, argmax_abs(p->grad.data, n), &b, GRAD_FLOOR * largest, &st);
        for (int k = 0; k < RANDOM_PICKS; k++)
            check_element(r, p, i, below(&pick, n), &b, GRAD_FLOOR * largest, &st);
    }
    ck_assert_int_eq(st.elements, pl->count * (1 + RANDOM_PICKS));
    fprintf(stderr, "%s: loss %.9g (reference %.12g), %d tensors, %d elements; worst error "
            "%.3g of the allowance, finite-difference error <= %.3g of it\n", label,
            (double)loss, ref, pl->count, st.elements, st.worst_ratio, st.worst_fd_error);
    ref_free(r);
    mhub_gpt_free(m);
}

START_TEST(test_gpt2_gradient_matches_finite_differences)
{
    mhub_gpt_config c = gpt2_tiny();
    check_gradients(&c, "gpt2", 101);
}
END_TEST

START_TEST(test_llama_gradient_matches_finite_differences)
{
    mhub_gpt_config c = llama_tiny();
    check_gradients(&c, "llama", 202);
}
END_TEST

/* A gradient off by 10x the tolerance, or of the wrong sign, fails the
 * very check that passes the true one, for the largest-gradient element
 * of every tensor. */
static void check_wrong_gradients_fail(const mhub_gpt_config *cfg, uint64_t seed)
{
    mhub_gpt *m = build(cfg);
    randomize(m, seed);
    batch b = random_batch(cfg, seed + 1);
    mhub_loss_and_grad(m, &b);
    ref_model *r = ref_create(m, REF_AS_DEFINED);
    mhub_param_list *pl = mhub_gpt_params(m);
    for (int i = 0; i < pl->count; i++) {
        const char *name = pl->items[i].name;
        const float *g = pl->items[i].grad.data;
        int64_t n = pl->items[i].value.numel, e = argmax_abs(g, n);
        double floor = GRAD_FLOOR * max_abs(g, n);
        double fd = ref_central_difference(r, i, e, &b, FD_STEP);
        ck_assert_msg(grad_agrees(g[e], fd, floor), "%s[%lld]: %.10g vs %.10g", name,
                      (long long)e, (double)g[e], fd);
        ck_assert_msg(!grad_agrees(g[e] * (1.0 + 10 * GRAD_RTOL), fd, floor),
                      "%s[%lld]: a gradient 1e-3 too large passed", name, (long long)e);
        ck_assert_msg(!grad_agrees(-g[e], fd, floor), "%s[%lld]: a negated gradient passed",
                      name, (long long)e);
    }
    ref_free(r);
    mhub_gpt_free(m);
}

START_TEST(test_wrong_gradient_is_caught)
{
    mhub_gpt_config gpt2 = gpt2_tiny(), llama = llama_tiny();
    check_wrong_gradients_fail(&gpt2, 303);
    check_wrong_gradients_fail(&llama, 303);
}
END_TEST

/* The loss check tells conventions apart: a reference that rotates
 * interleaved pairs, maps query heads to groups by stride, or uses the
 * exact GELU computes a different function, and misses mhub's loss by
 * more than LOSS_RTOL, which the reference as defined meets. (The two
 * GELUs differ by 1e-4 at most, so that miss is the narrowest: 1.9e-5.) */
static double variant_relerr(const mhub_gpt_config *cfg, ref_variant variant, uint64_t seed)
{
    mhub_gpt *m = build(cfg);
    randomize(m, seed);
    batch b = random_batch(cfg, seed + 1);
    float loss = 0;
    CK_OK(mhub_gpt_forward(m, b.tokens, b.targets, BATCH, SEQ, &loss));
    ref_model *r = ref_create(m, variant);
    double err = mhub_test_relerr(loss, ref_loss(r, b.tokens, b.targets), 1e-30);
    ref_free(r);
    mhub_gpt_free(m);
    return err;
}

START_TEST(test_other_conventions_are_caught)
{
    mhub_gpt_config llama = llama_tiny(), gpt2 = gpt2_tiny();
    ck_assert_double_lt(variant_relerr(&llama, REF_AS_DEFINED, 404), LOSS_RTOL);
    ck_assert_double_lt(variant_relerr(&gpt2, REF_AS_DEFINED, 404), LOSS_RTOL);
    double rope = variant_relerr(&llama, REF_ROPE_INTERLEAVED, 404);
    double groups = variant_relerr(&llama, REF_GROUPS_STRIDED, 404);
    double gelu = variant_relerr(&gpt2, REF_GELU_ERF, 404);
    fprintf(stderr, "loss relative error of the wrong conventions: interleaved rope %.3g, "
            "strided groups %.3g, erf gelu %.3g\n", rope, groups, gelu);
    ck_assert_double_gt(rope, LOSS_RTOL);
    ck_assert_double_gt(groups, LOSS_RTOL);
    ck_assert_double_gt(gelu, LOSS_RTOL);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("gpt_fd");
    TCase *tc = tcase_create("fd");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_gpt2_gradient_matches_finite_differences);
    tcase_add_test(tc, test_llama_gradient_matches_finite_differences);
    tcase_add_test(tc, test_wrong_gradient_is_caught);
    tcase_add_test(tc, test_other_conventions_are_caught);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
