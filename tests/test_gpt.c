/* test_gpt.c - the GPT provider's config and parameter layout: defaults,
 * validation, names and shapes, closed-form counts against built chunks
 * for every pipeline cut and tensor-parallel shard, the known sizes of
 * GPT-2 124M and GPT-3 175B (whole and per rank at tp 8 x pp 8), which
 * chunk holds which end, and the FLOPs of a step against a published
 * formula and a count by hand. */
#include <string.h>
#include <time.h>

#include "testutil.h"

/* A config of the GPT type with its defaults. */
static mhub_gpt_config gpt_default(void)
{
    mhub_gpt_config c;
    mhub_gpt_config_init(&c);
    return c;
}

/* A tiny Llama-style config: RMSNorm, swiglu, rope, GQA (4 heads, 2
 * groups), no biases, untied. */
static mhub_gpt_config llama_tiny(void)
{
    mhub_gpt_config c = gpt_default();
    c.normalization = MHUB_GPT_RMSNORM;
    c.activation = MHUB_GPT_SWIGLU;
    c.position_embedding_type = MHUB_GPT_ROPE;
    c.num_query_groups = 2;
    c.ffn_hidden_size = 96;
    c.add_bias_linear = false;
    c.share_embeddings_and_output_weights = false;
    c.layernorm_epsilon = 1e-6;
    return c;
}

static mhub_gpt_config gpt2_124m(void)
{
    mhub_gpt_config c = gpt_default();
    c.num_layers = 12;
    c.hidden_size = 768;
    c.num_attention_heads = 12;
    c.seq_length = 1024;
    c.vocab_size = 50257;
    return c;
}

static mhub_gpt_config gpt3_175b(void)
{
    mhub_gpt_config c = gpt_default();
    c.num_layers = 96;
    c.hidden_size = 12288;
    c.num_attention_heads = 96;
    c.seq_length = 2048;
    c.vocab_size = 50257;
    return c;
}

/* Arguments for tensor-parallel rank tp_rank's shard of chunk (pp_rank,
 * vp_stage) of a pp x vp cut, flags and seeds set as get_model sets them
 * (provider.h); meta (no backend). */
static mhub_provide_args tp_chunk_args(int pp, int vp, int pp_rank, int vp_stage, int tp,
                                       int tp_rank)
{
    mhub_provide_args a;
    memset(&a, 0, sizeof a);
    a.pp_size = pp;
    a.vp_size = vp;
    a.pp_rank = pp_rank;
    a.vp_stage = vp > 1 ? vp_stage : -1;
    a.tp_size = tp;
    a.tp_rank = tp_rank;
    a.seed = 1234;
    a.tp_seed = 1234 + 2718 + (uint64_t)tp_rank;
    a.micro_batch = 1;
    a.pre_process = vp_stage == 0 && pp_rank == 0;
    a.post_process = vp_stage == vp - 1 && pp_rank == pp - 1;
    return a;
}

static mhub_provide_args chunk_args(int pp, int vp, int pp_rank, int vp_stage)
{
    return tp_chunk_args(pp, vp, pp_rank, vp_stage, 1, 0);
}

static mhub_gpt *build(const mhub_gpt_config *c, const mhub_provide_args *a)
{
    mhub_gpt *m = NULL;
    CK_OK(mhub_gpt_create(c, a, &m));
    return m;
}

/* The chunk's parameter called `name` (which must exist). */
static const mhub_param *param(mhub_gpt *m, const char *name)
{
    mhub_param_list *l = mhub_gpt_params(m);
    int i = mhub_param_list_find(l, name);
    ck_assert_msg(i >= 0, "no parameter %s", name);
    return &l->items[i];
}

static mhub_gpt *build_whole(const mhub_gpt_config *c)
{
    mhub_provide_args a = chunk_args(1, 1, 0, 0);
    return build(c, &a);
}

/* Validation fails and the message names `key`. */
static void expect_invalid(const mhub_gpt_config *c, const char *key)
{
    mhub_clear_error();
    mhub_status s = mhub_config_validate(&c->base);
    ck_assert_msg(s != MHUB_OK, "config with a bad %s validated", key);
    ck_assert_msg(strstr(mhub_last_error(), key) != NULL, "message '%s' does not name %s",
                  mhub_last_error(), key);
}

/* ---- config ------------------------------------------------------------------- */

START_TEST(test_defaults)
{
    mhub_gpt_config c = gpt_default();
    ck_assert_ptr_eq(c.base.type, mhub_gpt_provider_type());
    ck_assert_str_eq(mhub_gpt_provider_type()->name, "gpt");
    ck_assert_int_eq(c.num_layers, 2);
    ck_assert_int_eq(c.hidden_size, 64);
    ck_assert_int_eq(c.num_attention_heads, 4);
    ck_assert_int_eq(c.seq_length, 64);
    ck_assert_int_eq(c.vocab_size, 256);
    ck_assert_int_eq(c.normalization, MHUB_GPT_LAYERNORM);
    ck_assert_int_eq(c.activation, MHUB_GPT_GELU);
    ck_assert_int_eq(c.position_embedding_type, MHUB_GPT_LEARNED_ABSOLUTE);
    ck_assert(c.share_embeddings_and_output_weights && c.add_bias_linear);
    ck_assert_double_eq(c.rotary_base, 10000.0);
    ck_assert_double_eq(c.layernorm_epsilon, 1e-5);
    /* derived sizes */
    ck_assert_int_eq(mhub_gpt_query_groups(&c), 4);
    ck_assert_int_eq(mhub_gpt_head_dim(&c), 16);
    ck_assert_int_eq(mhub_gpt_ffn_size(&c), 256);
    ck_assert_int_eq(mhub_gpt_padded_vocab_size(&c), 256);
    CK_OK(mhub_config_validate(&c.base));
    /* by hand: 2 x 49,984 per layer + 256 x 64 + 64 x 64 + final norm 128 */
    ck_assert_int_eq(mhub_gpt_total_params(&c), 120576);

    mhub_provider_config *made = NULL;
    CK_OK(mhub_config_create(mhub_gpt_provider_type(), &made));
    ck_assert(mhub_config_equal(made, &c.base));
    mhub_config_free(made);
}
END_TEST

START_TEST(test_registered)
{
    ck_assert_ptr_eq(mhub_provider_type_find("gpt"), mhub_gpt_provider_type());
}
END_TEST

START_TEST(test_validation_failures)
{
    mhub_gpt_config c = gpt_default();
    c.num_attention_heads = 5;          /* 64 / 5 */
    expect_invalid(&c, "num_attention_heads");
    c.kv_channels = 16;                 /* an explicit head dim makes it fine */
    CK_OK(mhub_config_validate(&c.base));

    c = gpt_default();
    c.num_query_groups = 3;
    expect_invalid(&c, "num_query_groups");

    c = llama_tiny();
    c.ffn_hidden_size = 0;
    expect_invalid(&c, "ffn_hidden_size");

    c = llama_tiny();
    c.kv_channels = 15;
    expect_invalid(&c, "kv_channels");

    c = gpt_default();
    c.base.tensor_model_parallel_size = 8;  /* 4 heads over 8 ranks */
    expect_invalid(&c, "num_attention_heads");

    c = gpt_default();
    c.num_layers = 0;
    expect_invalid(&c, "num_layers");

    c = gpt_default();
    c.vocab_size = -3;
    expect_invalid(&c, "vocab_size");

    c = gpt_default();
    c.layernorm_epsilon = 0.0;
    expect_invalid(&c, "layernorm_epsilon");

    c = gpt_default();
    c.normalization = (mhub_gpt_normalization)7;
    expect_invalid(&c, "normalization");

    /* each size in range, the product beyond 2^53 */
    c = gpt_default();
    c.num_layers = 65536;
    c.hidden_size = 1 << 20;
    c.num_attention_heads = 1024;
    expect_invalid(&c, "parameters");
}
END_TEST

START_TEST(test_json_round_trip)
{
    mhub_gpt_config c = llama_tiny();
    c.kv_channels = 32;
    c.rotary_base = 500000.0;
    c.make_vocab_size_divisible_by = 128;
    char *json = NULL;
    CK_OK(mhub_config_to_json(&c.base, true, &json));
    ck_assert_ptr_nonnull(strstr(json, "\"normalization\": \"RMSNorm\""));
    ck_assert_ptr_nonnull(strstr(json, "\"position_embedding_type\": \"rope\""));
    mhub_provider_config *back = NULL;
    CK_OK(mhub_config_from_json(json, strlen(json), "test", MHUB_CONFIG_STRICT, &back));
    ck_assert(mhub_config_equal(back, &c.base));
    mhub_config_free(back);
    free(json);

    /* derived sizes are JSON null */
    mhub_gpt_config d = gpt_default();
    CK_OK(mhub_config_to_json(&d.base, false, &json));
    ck_assert_ptr_nonnull(strstr(json, "\"num_query_groups\":null"));
    free(json);
}
END_TEST

/* ---- layout --------------------------------------------------------------------- */

typedef struct expected_param {
    const char *name;
    int64_t rows, cols;   /* cols 0: 1-D */
    int unit;
    mhub_init_kind init;
} expected_param;

static void expect_layout(mhub_gpt *m, const expected_param *want, int n)
{
    mhub_param_list *l = mhub_gpt_params(m);
    ck_assert_int_eq(l->count, n);
    for (int i = 0; i < n; i++) {
        const mhub_param *p = &l->items[i];
        ck_assert_str_eq(p->name, want[i].name);
        int ndim = want[i].cols > 0 ? 2 : 1;
        ck_assert_msg(p->value.ndim == ndim, "%s: ndim %d", p->name, p->value.ndim);
        ck_assert_msg(p->value.shape[0] == want[i].rows, "%s: rows %lld", p->name,
                      (long long)p->value.shape[0]);
        if (ndim == 2)
            ck_assert_msg(p->value.shape[1] == want[i].cols, "%s: cols %lld", p->name,
                          (long long)p->value.shape[1]);
        ck_assert_msg(p->unit == want[i].unit, "%s: unit %d", p->name, p->unit);
        ck_assert_msg(p->init == want[i].init, "%s: init %d", p->name, (int)p->init);
        ck_assert_ptr_null(p->value.data);
    }
}

#define L0 "decoder.layers.0."
#define L1 "decoder.layers.1."
#define N MHUB_INIT_NORMAL
#define ONE MHUB_INIT_ONES
#define ZERO MHUB_INIT_ZEROS

START_TEST(test_gpt2_layout)
{
    mhub_gpt_config c = gpt_default();
    static const expected_param want[] = {
        {"embedding.word_embeddings.weight", 256, 64, 0, N},
        {"embedding.position_embeddings.weight", 64, 64, 0, N},
        {L0 "self_attention.linear_qkv.layer_norm_weight", 64, 0, 1, ONE},
        {L0 "self_attention.linear_qkv.layer_norm_bias", 64, 0, 1, ZERO},
        {L0 "self_attention.linear_qkv.weight", 192, 64, 1, N},
        {L0 "self_attention.linear_qkv.bias", 192, 0, 1, ZERO},
        {L0 "self_attention.linear_proj.weight", 64, 64, 1, N},
        {L0 "self_attention.linear_proj.bias", 64, 0, 1, ZERO},
        {L0 "mlp.linear_fc1.layer_norm_weight", 64, 0, 1, ONE},
        {L0 "mlp.linear_fc1.layer_norm_bias", 64, 0, 1, ZERO},
        {L0 "mlp.linear_fc1.weight", 256, 64, 1, N},
        {L0 "mlp.linear_fc1.bias", 256, 0, 1, ZERO},
        {L0 "mlp.linear_fc2.weight", 64, 256, 1, N},
        {L0 "mlp.linear_fc2.bias", 64, 0, 1, ZERO},
        {L1 "self_attention.linear_qkv.layer_norm_weight", 64, 0, 2, ONE},
        {L1 "self_attention.linear_qkv.layer_norm_bias", 64, 0, 2, ZERO},
        {L1 "self_attention.linear_qkv.weight", 192, 64, 2, N},
        {L1 "self_attention.linear_qkv.bias", 192, 0, 2, ZERO},
        {L1 "self_attention.linear_proj.weight", 64, 64, 2, N},
        {L1 "self_attention.linear_proj.bias", 64, 0, 2, ZERO},
        {L1 "mlp.linear_fc1.layer_norm_weight", 64, 0, 2, ONE},
        {L1 "mlp.linear_fc1.layer_norm_bias", 64, 0, 2, ZERO},
        {L1 "mlp.linear_fc1.weight", 256, 64, 2, N},
        {L1 "mlp.linear_fc1.bias", 256, 0, 2, ZERO},
        {L1 "mlp.linear_fc2.weight", 64, 256, 2, N},
        {L1 "mlp.linear_fc2.bias", 64, 0, 2, ZERO},
        {"decoder.final_layernorm.weight", 64, 0, 3, ONE},
        {"decoder.final_layernorm.bias", 64, 0, 3, ZERO},
    };
    mhub_gpt *m = build_whole(&c);
    expect_layout(m, want, (int)(sizeof want / sizeof want[0]));
    ck_assert_int_eq(mhub_gpt_num_units(m), 4);
    ck_assert_int_eq(mhub_param_list_numel(mhub_gpt_params(m)), mhub_gpt_total_params(&c));
    mhub_gpt_free(m);
}
END_TEST

START_TEST(test_llama_layout)
{
    mhub_gpt_config c = llama_tiny();
    /* 4 heads + 2 x 2 groups, 16 channels each; fc1 holds gate and up */
    static const expected_param want[] = {
        {"embedding.word_embeddings.weight", 256, 64, 0, N},
        {L0 "self_attention.linear_qkv.layer_norm_weight", 64, 0, 1, ONE},
        {L0 "self_attention.linear_qkv.weight", 128, 64, 1, N},
        {L0 "self_attention.linear_proj.weight", 64, 64, 1, N},
        {L0 "mlp.linear_fc1.layer_norm_weight", 64, 0, 1, ONE},
        {L0 "mlp.linear_fc1.weight", 192, 64, 1, N},
        {L0 "mlp.linear_fc2.weight", 64, 96, 1, N},
        {L1 "self_attention.linear_qkv.layer_norm_weight", 64, 0, 2, ONE},
        {L1 "self_attention.linear_qkv.weight", 128, 64, 2, N},
        {L1 "self_attention.linear_proj.weight", 64, 64, 2, N},
        {L1 "mlp.linear_fc1.layer_norm_weight", 64, 0, 2, ONE},
        {L1 "mlp.linear_fc1.weight", 192, 64, 2, N},
        {L1 "mlp.linear_fc2.weight", 64, 96, 2, N},
        {"decoder.final_layernorm.weight", 64, 0, 3, ONE},
        {"output_layer.weight", 256, 64, 3, N},
    };
    mhub_gpt *m = build_whole(&c);
    expect_layout(m, want, (int)(sizeof want / sizeof want[0]));
    mhub_gpt_free(m);
}
END_TEST

START_TEST(test_qkv_bias_only)
{
    mhub_gpt_config c = llama_tiny();
    c.add_qkv_bias = true;
    mhub_gpt *m = build_whole(&c);
    mhub_param_list *l = mhub_gpt_params(m);
    int bias = mhub_param_list_find(l, L0 "self_attention.linear_qkv.bias");
    ck_assert_int_ge(bias, 0);
    ck_assert_int_eq(l->items[bias].value.shape[0], 128);
    ck_assert_int_lt(mhub_param_list_find(l, L0 "self_attention.linear_proj.bias"), 0);
    ck_assert_int_lt(mhub_param_list_find(l, L0 "mlp.linear_fc1.bias"), 0);
    ck_assert_int_eq(mhub_param_list_numel(l), mhub_gpt_total_params(&c));
    mhub_gpt_free(m);
}
END_TEST

/* Megatron's init: std for weights, std / sqrt(2 L) for the two
 * residual projections; fan-in: 1/sqrt(in). */
START_TEST(test_init_std)
{
    mhub_gpt_config c = llama_tiny();
    c.base.init_method = MHUB_INIT_METHOD_NORMAL;
    c.base.init_method_std = 0.02;
    mhub_gpt *m = build_whole(&c);
    const mhub_param *qkv = param(m, L0 "self_attention.linear_qkv.weight");
    const mhub_param *proj = param(m, L1 "self_attention.linear_proj.weight");
    const mhub_param *fc2 = param(m, L0 "mlp.linear_fc2.weight");
    ck_assert_float_eq_tol(qkv->init_std, 0.02f, 1e-7f);
    ck_assert_float_eq_tol(proj->init_std, 0.01f, 1e-7f);   /* 0.02 / sqrt(2 x 2) */
    ck_assert_float_eq_tol(fc2->init_std, 0.01f, 1e-7f);
    mhub_gpt_free(m);

    c.base.init_method = MHUB_INIT_METHOD_FAN_IN;
    m = build_whole(&c);
    fc2 = param(m, L0 "mlp.linear_fc2.weight");
    qkv = param(m, L0 "self_attention.linear_qkv.weight");
    ck_assert_float_eq_tol(fc2->init_std, 1.0f / sqrtf(96.0f), 1e-7f);
    ck_assert_float_eq_tol(qkv->init_std, 0.125f, 1e-7f);
    mhub_gpt_free(m);
}
END_TEST

/* With a backend: norms one, biases zero, and a parameter's values are
 * the same whichever chunk builds it (global names, same seed). */
START_TEST(test_materialized_values)
{
    mhub_backend *be = NULL;
    CK_OK(mhub_cpu_backend_create(NULL, &be));
    mhub_gpt_config c = gpt_default();
    c.num_layers = 4;
    mhub_provide_args whole = chunk_args(1, 1, 0, 0), last = chunk_args(2, 1, 1, 0);
    whole.backend = last.backend = be;
    mhub_gpt *a = build(&c, &whole), *b = build(&c, &last);
    const char *name = "decoder.layers.3.mlp.linear_fc1.weight";
    const mhub_param *pa = param(a, name), *pb = param(b, name);
    ck_assert_ptr_nonnull(pa->value.data);
    ck_assert_int_eq(pa->value.dtype, MHUB_F32);
    ck_assert_int_eq(memcmp(pa->value.data, pb->value.data, (size_t)pa->value.numel * 4), 0);
    const float *w = pa->value.data;
    ck_assert(w[0] != 0.0f || w[1] != 0.0f);

    const mhub_param *norm = param(a, "decoder.final_layernorm.weight");
    const mhub_param *bias = param(a, "decoder.final_layernorm.bias");
    for (int i = 0; i < c.hidden_size; i++) {
        ck_assert_float_eq(((const float *)norm->value.data)[i], 1.0f);
        ck_assert_float_eq(((const float *)bias->value.data)[i], 0.0f);
    }
    /* the last stage's copy of the tied embedding starts at zero */
    const mhub_param *copy = param(b, "output_layer.weight");
    for (int64_t i = 0; i < copy->value.numel; i++)
        ck_assert_float_eq(((const float *)copy->value.data)[i], 0.0f);
    mhub_gpt_free(a);
    mhub_gpt_free(b);
    mhub_backend_free(be);
}
END_TEST

/* ---- pipeline cuts and counts ---------------------------------------------------- */

/* Every chunk of a pp x vp cut: its list matches the closed form, holds
 * the right global layers and units, and no storage; the chunks together
 * hold the model plus the tied embedding's copy when the model is cut. */
static void check_cut(const mhub_gpt_config *c, int pp, int vp)
{
    int chunks = pp * vp, per = c->num_layers / chunks;
    int64_t sum = 0;
    for (int v = 0; v < vp; v++) {
        for (int p = 0; p < pp; p++) {
            mhub_provide_args a = chunk_args(pp, vp, p, v);
            int g = v * pp + p;
            mhub_gpt *m = build(c, &a);
            mhub_param_list *l = mhub_gpt_params(m);
            int64_t n = mhub_param_list_numel(l);
            ck_assert_msg(n == mhub_gpt_param_count(c, g, chunks, a.pre_process, a.post_process),
                          "pp %d vp %d chunk %d: list %lld, formula %lld", pp, vp, g,
                          (long long)n,
                          (long long)mhub_gpt_param_count(c, g, chunks, a.pre_process,
                                                          a.post_process));
            ck_assert_int_eq(mhub_gpt_first_layer(m), g * per);
            ck_assert_int_eq(mhub_gpt_num_layers(m), per);
            char name[MHUB_NAME_MAX];
            snprintf(name, sizeof name, "decoder.layers.%d.mlp.linear_fc2.weight",
                     g * per + per - 1);
            ck_assert_int_ge(mhub_param_list_find(l, name), 0);
            int last_unit = l->items[l->count - 1].unit;
            ck_assert_int_eq(last_unit, mhub_gpt_num_units(m) - 1);
            for (int i = 0; i < l->count; i++) {
                ck_assert_ptr_null(l->items[i].value.data);
                if (i > 0)
                    ck_assert_int_le(l->items[i - 1].unit, l->items[i].unit);
            }
            sum += n;
            mhub_gpt_free(m);
        }
    }
    int64_t copy = c->share_embeddings_and_output_weights && chunks > 1
                       ? mhub_gpt_padded_vocab_size(c) * c->hidden_size : 0;
    ck_assert_int_eq(sum, mhub_gpt_total_params(c) + copy);
}

START_TEST(test_counts_every_cut)
{
    mhub_gpt_config configs[4];
    configs[0] = gpt_default();
    configs[1] = llama_tiny();
    configs[2] = llama_tiny();            /* mixed: LayerNorm, learned, qkv bias only */
    configs[2].normalization = MHUB_GPT_LAYERNORM;
    configs[2].position_embedding_type = MHUB_GPT_LEARNED_ABSOLUTE;
    configs[2].add_qkv_bias = true;
    configs[3] = gpt_default();           /* padded vocabulary, explicit head dim */
    configs[3].vocab_size = 300;
    configs[3].make_vocab_size_divisible_by = 128;
    configs[3].kv_channels = 8;
    configs[3].ffn_hidden_size = 100;
    const int pps[] = {1, 2, 4}, vps[] = {1, 2};
    for (int k = 0; k < 4; k++) {
        configs[k].num_layers = 8;
        CK_OK(mhub_config_validate(&configs[k].base));
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 2; j++)
                check_cut(&configs[k], pps[i], vps[j]);
    }
    ck_assert_int_eq(mhub_gpt_padded_vocab_size(&configs[3]), 384);
}
END_TEST

START_TEST(test_param_count_bad_args)
{
    mhub_gpt_config c = gpt_default();
    ck_assert_int_eq(mhub_gpt_param_count(NULL, 0, 1, true, true), -1);
    ck_assert_int_eq(mhub_gpt_param_count(&c, 0, 3, true, true), -1);   /* 2 layers / 3 */
    ck_assert_int_eq(mhub_gpt_param_count(&c, 2, 2, true, true), -1);
    ck_assert_int_eq(mhub_gpt_param_count(&c, -1, 2, true, true), -1);
    ck_assert_int_eq(mhub_gpt_total_params(NULL), -1);
}
END_TEST

START_TEST(test_layers_not_divisible)
{
    mhub_gpt_config c = gpt_default();
    c.num_layers = 6;
    mhub_provide_args a = chunk_args(4, 1, 0, 0);
    mhub_gpt *m = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_create(&c, &a, &m));
    ck_assert_ptr_null(m);
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "num_layers = 6"));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "pipeline_model_parallel_size (4)"));

    a = chunk_args(2, 2, 1, 1);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_create(&c, &a, &m));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "virtual_pipeline_model_parallel_size (2)"));

    a = chunk_args(2, 1, 2, 0);   /* rank outside the pipeline */
    c.num_layers = 4;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_create(&c, &a, &m));
}
END_TEST

/* The provider type's provide() wraps the model in a chunk. */
START_TEST(test_provide_chunk)
{
    mhub_gpt_config c = gpt_default();
    c.num_layers = 4;
    mhub_provide_args a = chunk_args(2, 1, 1, 0);
    mhub_chunk *chunk = NULL;
    CK_OK(mhub_gpt_provider_type()->provide(&c.base, &a, &chunk));
    ck_assert_str_eq(mhub_chunk_type_name(chunk), "gpt");
    ck_assert_int_eq(mhub_chunk_numel(chunk), mhub_gpt_param_count(&c, 1, 2, false, true));
    char line[160];
    mhub_chunk_describe(chunk, line, sizeof line);
    ck_assert_str_eq(line, "layers 2-3 of 4 + final norm + output layer (copy of the tied "
                           "embedding)");
    mhub_gpt *m = mhub_chunk_model(chunk);
    ck_assert_int_eq(mhub_gpt_first_layer(m), 2);
    mhub_chunk_free(chunk);
}
END_TEST

/* Through a provider: the meta chunks of every stage add up. */
START_TEST(test_provider_meta_stages)
{
    mhub_provider *p = NULL;
    CK_OK(mhub_provider_create_default("gpt", &p));
    mhub_gpt_config *c = (mhub_gpt_config *)mhub_provider_config_mut(p);
    c->num_layers = 8;
    c->base.pipeline_model_parallel_size = 2;
    c->base.virtual_pipeline_model_parallel_size = 2;
    int64_t sum = 0;
    for (int stage = 0; stage < 2; stage++) {
        mhub_chunk_list l = {0};
        CK_OK(mhub_provider_meta_stage(p, stage, &l));
        ck_assert_int_eq(l.count, 2);
        for (int i = 0; i < l.count; i++)
            ck_assert(mhub_chunk_is_meta(l.items[i]));
        sum += mhub_chunk_list_numel(&l);
        mhub_chunk_list_free(&l);
    }
    ck_assert_int_eq(sum, mhub_gpt_total_params(c) + 256 * 64);
    mhub_provider_free(p);
}
END_TEST

START_TEST(test_describe)
{
    mhub_gpt_config c = gpt2_124m();
    char line[256];
    mhub_gpt_describe(&c, line, sizeof line);
    ck_assert_str_eq(line, "GPT: 12 layers, hidden 768, 12 heads (12 query groups), ffn 3072, "
                           "vocab 50257, seq 1024, LayerNorm, gelu, learned_absolute, tied");
    mhub_gpt_provider_type()->describe(&c.base, line, sizeof line);
    ck_assert_ptr_nonnull(strstr(line, "GPT: 12 layers"));
    mhub_gpt_config l = llama_tiny();
    l.make_vocab_size_divisible_by = 100;
    mhub_gpt_describe(&l, line, sizeof line);
    ck_assert_str_eq(line, "GPT: 2 layers, hidden 64, 4 heads (2 query groups), ffn 96, vocab 256 "
                           "(padded 300), seq 64, RMSNorm, swiglu, rope (base 10000), untied, "
                           "no biases");
    /* a short buffer truncates, never overflows */
    char tiny[8];
    mhub_gpt_describe(&c, tiny, sizeof tiny);
    ck_assert_str_eq(tiny, "GPT: 12");

    c.num_layers = 12;
    mhub_provide_args a = chunk_args(2, 1, 0, 0);
    mhub_gpt *m = build(&c, &a);
    mhub_gpt_describe_chunk(m, line, sizeof line);
    ck_assert_str_eq(line, "embedding + layers 0-5 of 12");
    mhub_gpt_free(m);
}
END_TEST

/* ---- tensor parallelism ------------------------------------------------------------ */

/* How gpt.h says a parameter is cut across tensor-parallel ranks, from
 * its name alone (written independently of the builder). */
typedef enum tp_kind { REPLICATED, COLUMN, ROW } tp_kind;

static bool ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), t = strlen(tail);
    return n >= t && strcmp(s + n - t, tail) == 0;
}

static tp_kind expected_kind(const char *name)
{
    static const char *const column[] = {"linear_qkv.weight", "linear_qkv.bias",
                                         "linear_fc1.weight", "linear_fc1.bias",
                                         "embedding.word_embeddings.weight",
                                         "output_layer.weight"};
    for (size_t i = 0; i < sizeof column / sizeof column[0]; i++)
        if (ends_with(name, column[i]))
            return COLUMN;
    if (ends_with(name, "linear_proj.weight") || ends_with(name, "linear_fc2.weight"))
        return ROW;
    return REPLICATED;   /* norms, positions, the row-parallel biases */
}

/* A config with tp = `tp` whose sizes split up to tp 8: GPT-2-style (8
 * heads) or Llama-style (16 heads in 8 query groups, head dim 8, padded
 * vocabulary). */
static mhub_gpt_config tp_config(bool llama, int tp)
{
    mhub_gpt_config c = llama ? llama_tiny() : gpt_default();
    c.num_layers = 4;
    c.num_attention_heads = llama ? 16 : 8;
    if (llama) {
        c.num_query_groups = 8;
        c.kv_channels = 8;
        c.vocab_size = 300;
        c.make_vocab_size_divisible_by = 4;
    }
    c.base.tensor_model_parallel_size = tp;
    return c;
}

/* Every tp rank's shard of every chunk of a pp cut holds what the closed
 * form says, and all ranks hold the same count. */
static void check_tp_counts(const mhub_gpt_config *c, int pp)
{
    int tp = c->base.tensor_model_parallel_size;
    for (int p = 0; p < pp; p++) {
        for (int r = 0; r < tp; r++) {
            mhub_provide_args a = tp_chunk_args(pp, 1, p, 0, tp, r);
            mhub_gpt *m = build(c, &a);
            int64_t n = mhub_param_list_numel(mhub_gpt_params(m));
            int64_t want = mhub_gpt_param_count(c, p, pp, a.pre_process, a.post_process);
            ck_assert_msg(n == want, "tp %d rank %d pp %d stage %d: list %lld, formula %lld", tp,
                          r, pp, p, (long long)n, (long long)want);
            mhub_gpt_free(m);
        }
    }
}

START_TEST(test_tp_counts_match_formula)
{
    const int tps[] = {1, 2, 4, 8}, pps[] = {1, 2};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 4; i++) {
            mhub_gpt_config c = tp_config(k == 1, tps[i]);
            CK_OK(mhub_config_validate(&c.base));
            for (int j = 0; j < 2; j++)
                check_tp_counts(&c, pps[j]);
        }
    }
    /* the shard is smaller than the whole chunk once tp > 1 */
    mhub_gpt_config one = tp_config(false, 1), two = tp_config(false, 2);
    ck_assert_int_lt(mhub_gpt_param_count(&two, 0, 1, true, true),
                     mhub_gpt_param_count(&one, 0, 1, true, true));
}
END_TEST

/* The shards of one chunk against the same chunk at tp 1 (same padded
 * vocabulary): each parameter cut along the dimension gpt.h names, the
 * cut pieces adding up to the whole, the rest whole on every rank. */
static void check_shards(const mhub_gpt_config *c, int pp, int stage)
{
    int tp = c->base.tensor_model_parallel_size;
    mhub_gpt_config whole_cfg = *c;
    whole_cfg.base.tensor_model_parallel_size = 1;
    whole_cfg.vocab_size = (int)mhub_gpt_padded_vocab_size(c);
    whole_cfg.make_vocab_size_divisible_by = 1;
    mhub_provide_args wa = tp_chunk_args(pp, 1, stage, 0, 1, 0);
    mhub_gpt *whole = build(&whole_cfg, &wa);
    mhub_param_list *wl = mhub_gpt_params(whole);
    int64_t split_sum = 0, split_whole = 0, replicated = 0, all_ranks = 0;
    for (int r = 0; r < tp; r++) {
        mhub_provide_args a = tp_chunk_args(pp, 1, stage, 0, tp, r);
        mhub_gpt *m = build(c, &a);
        mhub_param_list *l = mhub_gpt_params(m);
        ck_assert_int_eq(l->count, wl->count);
        for (int i = 0; i < l->count; i++) {
            const mhub_tensor *v = &l->items[i].value, *w = &wl->items[i].value;
            ck_assert_str_eq(l->items[i].name, wl->items[i].name);
            ck_assert_int_eq(l->items[i].unit, wl->items[i].unit);
            ck_assert_int_eq(v->ndim, w->ndim);
            tp_kind kind = expected_kind(l->items[i].name);
            int cut = kind == COLUMN ? 0 : kind == ROW ? 1 : -1;
            for (int d = 0; d < v->ndim; d++)
                ck_assert_msg(v->shape[d] * (d == cut ? tp : 1) == w->shape[d],
                              "tp %d %s dim %d: %lld of %lld", tp, l->items[i].name, d,
                              (long long)v->shape[d], (long long)w->shape[d]);
            if (kind == REPLICATED) {
                replicated += r == 0 ? v->numel : 0;
            } else {
                split_sum += v->numel;
                split_whole += r == 0 ? w->numel : 0;
            }
        }
        all_ranks += mhub_param_list_numel(l);
        mhub_gpt_free(m);
    }
    ck_assert_int_eq(split_sum, split_whole);
    ck_assert_int_eq(all_ranks, mhub_param_list_numel(wl) + (tp - 1) * replicated);
    mhub_gpt_free(whole);
}

START_TEST(test_tp_shards_add_up)
{
    const int tps[] = {2, 4, 8};
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 3; i++) {
            mhub_gpt_config c = tp_config(k == 1, tps[i]);
            check_shards(&c, 1, 0);
            check_shards(&c, 2, 0);
            check_shards(&c, 2, 1);  /* the tied copy of the output layer is cut too */
            /* the whole model does not depend on tp but for the padding */
            mhub_gpt_config one = c;
            one.base.tensor_model_parallel_size = 1;
            one.vocab_size = (int)mhub_gpt_padded_vocab_size(&c);
            ck_assert_int_eq(mhub_gpt_total_params(&c), mhub_gpt_total_params(&one));
        }
    }
}
END_TEST

START_TEST(test_tp2_gpt2_layout)
{
    mhub_gpt_config c = gpt_default();   /* 4 heads of 16, ffn 256, vocab 256 */
    c.num_layers = 1;
    c.base.tensor_model_parallel_size = 2;
    static const expected_param want[] = {
        {"embedding.word_embeddings.weight", 128, 64, 0, N},
        {"embedding.position_embeddings.weight", 64, 64, 0, N},
        {L0 "self_attention.linear_qkv.layer_norm_weight", 64, 0, 1, ONE},
        {L0 "self_attention.linear_qkv.layer_norm_bias", 64, 0, 1, ZERO},
        {L0 "self_attention.linear_qkv.weight", 96, 64, 1, N},
        {L0 "self_attention.linear_qkv.bias", 96, 0, 1, ZERO},
        {L0 "self_attention.linear_proj.weight", 64, 32, 1, N},
        {L0 "self_attention.linear_proj.bias", 64, 0, 1, ZERO},
        {L0 "mlp.linear_fc1.layer_norm_weight", 64, 0, 1, ONE},
        {L0 "mlp.linear_fc1.layer_norm_bias", 64, 0, 1, ZERO},
        {L0 "mlp.linear_fc1.weight", 128, 64, 1, N},
        {L0 "mlp.linear_fc1.bias", 128, 0, 1, ZERO},
        {L0 "mlp.linear_fc2.weight", 64, 128, 1, N},
        {L0 "mlp.linear_fc2.bias", 64, 0, 1, ZERO},
        {"decoder.final_layernorm.weight", 64, 0, 2, ONE},
        {"decoder.final_layernorm.bias", 64, 0, 2, ZERO},
    };
    mhub_provide_args a = tp_chunk_args(1, 1, 0, 0, 2, 1);
    mhub_gpt *m = build(&c, &a);
    expect_layout(m, want, (int)(sizeof want / sizeof want[0]));
    char line[160];
    mhub_gpt_describe_chunk(m, line, sizeof line);
    ck_assert_str_eq(line, "embedding + layer 0 of 1 + final norm + output layer (tied to the "
                           "embedding), tensor-parallel shard 2/2");
    mhub_gpt_free(m);
}
END_TEST

START_TEST(test_tp2_llama_layout)
{
    mhub_gpt_config c = llama_tiny();    /* 4 heads in 2 groups of 16 channels, ffn 96 */
    c.num_layers = 1;
    c.base.tensor_model_parallel_size = 2;
    /* a rank holds 1 group: 2 query heads, 1 key, 1 value (64 rows); fc1
     * its 48 gate rows and 48 up rows */
    static const expected_param want[] = {
        {"embedding.word_embeddings.weight", 128, 64, 0, N},
        {L0 "self_attention.linear_qkv.layer_norm_weight", 64, 0, 1, ONE},
        {L0 "self_attention.linear_qkv.weight", 64, 64, 1, N},
        {L0 "self_attention.linear_proj.weight", 64, 32, 1, N},
        {L0 "mlp.linear_fc1.layer_norm_weight", 64, 0, 1, ONE},
        {L0 "mlp.linear_fc1.weight", 96, 64, 1, N},
        {L0 "mlp.linear_fc2.weight", 64, 48, 1, N},
        {"decoder.final_layernorm.weight", 64, 0, 2, ONE},
        {"output_layer.weight", 128, 64, 2, N},
    };
    c.base.init_method = MHUB_INIT_METHOD_FAN_IN;
    mhub_provide_args a = tp_chunk_args(1, 1, 0, 0, 2, 0);
    mhub_gpt *m = build(&c, &a);
    expect_layout(m, want, (int)(sizeof want / sizeof want[0]));
    /* a row-parallel shard draws with the whole layer's fan-in */
    ck_assert_float_eq_tol(param(m, L0 "mlp.linear_fc2.weight")->init_std, 1.0f / sqrtf(96.0f),
                           1e-7f);
    ck_assert_float_eq_tol(param(m, L0 "self_attention.linear_proj.weight")->init_std, 0.125f,
                           1e-7f);
    mhub_gpt_free(m);
}
END_TEST

/* Split parameters from the tensor-parallel seed (so the ranks' shards
 * differ), replicated ones from the rank's seed (equal on every rank). */
START_TEST(test_tp_seeds)
{
    mhub_backend *be = NULL;
    CK_OK(mhub_cpu_backend_create(NULL, &be));
    mhub_gpt_config c = gpt_default();
    c.base.tensor_model_parallel_size = 2;
    mhub_gpt *m[2];
    for (int r = 0; r < 2; r++) {
        mhub_provide_args a = tp_chunk_args(1, 1, 0, 0, 2, r);
        a.backend = be;
        m[r] = build(&c, &a);
    }
    const char *split = L1 "self_attention.linear_qkv.weight";
    const char *replicated = "embedding.position_embeddings.weight";
    for (int r = 0; r < 2; r++) {
        const mhub_param *s = param(m[r], split), *p = param(m[r], replicated);
        const float *sv = s->value.data, *pv = p->value.data;
        for (int64_t i = 0; i < 8; i++) {
            ck_assert(sv[i] == s->init_std * mhub_rng_normal(1234 + 2718 + (uint64_t)r,
                                                             s->rng_stream, (uint64_t)i));
            ck_assert(pv[i] == p->init_std * mhub_rng_normal(1234, p->rng_stream, (uint64_t)i));
        }
    }
    const mhub_param *s0 = param(m[0], split), *s1 = param(m[1], split);
    ck_assert_int_ne(memcmp(s0->value.data, s1->value.data, 8 * sizeof(float)), 0);
    const mhub_param *p0 = param(m[0], replicated), *p1 = param(m[1], replicated);
    ck_assert_int_eq(memcmp(p0->value.data, p1->value.data, (size_t)p0->value.numel * 4), 0);
    mhub_gpt_free(m[0]);
    mhub_gpt_free(m[1]);
    mhub_backend_free(be);
}
END_TEST

START_TEST(test_tp_validation)
{
    mhub_gpt_config c = llama_tiny();      /* 4 heads, 2 query groups */
    c.base.tensor_model_parallel_size = 4;
    expect_invalid(&c, "num_query_groups");
    ck_assert_int_eq(mhub_gpt_param_count(&c, 0, 1, true, true), -1);
    c.base.tensor_model_parallel_size = 2;
    CK_OK(mhub_config_validate(&c.base));

    c = gpt_default();
    c.ffn_hidden_size = 98;                /* splits in 2, not in 4 */
    c.base.tensor_model_parallel_size = 4;
    expect_invalid(&c, "ffn_hidden_size");
    ck_assert_int_eq(mhub_gpt_param_count(&c, 0, 1, true, true), -1);
    ck_assert_int_gt(mhub_gpt_total_params(&c), 0);   /* the whole model is still defined */
    c.base.tensor_model_parallel_size = 2;
    CK_OK(mhub_config_validate(&c.base));

    /* the args must be a rank of the config's tensor-parallel group */
    c = gpt_default();
    c.base.tensor_model_parallel_size = 2;
    mhub_gpt *m = NULL;
    mhub_provide_args a = tp_chunk_args(1, 1, 0, 0, 4, 0);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_create(&c, &a, &m));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "tensor_model_parallel_size = 2"));
    a = tp_chunk_args(1, 1, 0, 0, 2, 2);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_create(&c, &a, &m));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "tp_rank = 2"));
    ck_assert_ptr_null(m);
}
END_TEST

/* Through a provider: a stage's meta chunks are tensor-parallel rank 0's
 * shard, and the provider's total is still the whole model. */
START_TEST(test_provider_tp_meta_stage)
{
    mhub_provider *p = NULL;
    CK_OK(mhub_provider_create_default("gpt", &p));
    mhub_gpt_config *c = (mhub_gpt_config *)mhub_provider_config_mut(p);
    c->num_layers = 4;
    c->base.tensor_model_parallel_size = 4;
    c->base.pipeline_model_parallel_size = 2;
    for (int stage = 0; stage < 2; stage++) {
        mhub_chunk_list l = {0};
        CK_OK(mhub_provider_meta_stage(p, stage, &l));
        ck_assert_int_eq(l.count, 1);
        ck_assert_int_eq(mhub_chunk_list_numel(&l),
                         mhub_gpt_param_count(c, stage, 2, stage == 0, stage == 1));
        char line[160];
        mhub_chunk_describe(l.items[0], line, sizeof line);
        ck_assert_msg(ends_with(line, ", tensor-parallel shard 1/4"), "%s", line);
        mhub_chunk_list_free(&l);
    }
    int64_t total = 0;
    CK_OK(mhub_provider_total_params(p, &total));
    ck_assert_int_eq(total, mhub_gpt_total_params(c));
    mhub_provider_free(p);
}
END_TEST

/* ---- known sizes ------------------------------------------------------------------- */

START_TEST(test_gpt2_124m)
{
    mhub_gpt_config c = gpt2_124m();
    CK_OK(mhub_config_validate(&c.base));
    /* Hugging Face's gpt2 has 124,439,808 parameters (wte tied to the head) */
    ck_assert_int_eq(mhub_gpt_total_params(&c), 124439808);
    mhub_gpt *m = build_whole(&c);
    ck_assert_int_eq(mhub_param_list_numel(mhub_gpt_params(m)), 124439808);
    mhub_gpt_free(m);
    /* Megatron's padding to 128 gives the 50304-row table llm.c uses */
    c.make_vocab_size_divisible_by = 128;
    ck_assert_int_eq(mhub_gpt_padded_vocab_size(&c), 50304);
    ck_assert_int_eq(mhub_gpt_total_params(&c), 124439808 + (50304 - 50257) * 768);
}
END_TEST

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

START_TEST(test_gpt3_175b)
{
    mhub_gpt_config c = gpt3_175b();
    CK_OK(mhub_config_validate(&c.base));
    /* Megatron counts 174.6B: 96 x 12 H^2 + 13 H per layer, embeddings,
     * positions, final norm */
    int64_t total = mhub_gpt_total_params(&c);
    ck_assert_int_eq(total, INT64_C(174604259328));
    ck_assert(total > INT64_C(174550000000) && total < INT64_C(174650000000));

    double t0 = seconds_now();
    mhub_gpt *m = build_whole(&c);
    double elapsed = seconds_now() - t0;
    mhub_param_list *l = mhub_gpt_params(m);
    ck_assert_int_eq(mhub_param_list_numel(l), total);
    ck_assert_int_eq(l->count, 2 + 96 * 12 + 2);
    for (int i = 0; i < l->count; i++) {
        ck_assert_ptr_null(l->items[i].value.data);
        ck_assert_ptr_null(l->items[i].grad.data);
    }
    ck_assert_msg(elapsed < 1.0, "a meta 175B model took %.3f s", elapsed);
    mhub_gpt_free(m);

    /* 8 stages: each holds 12 layers; the stages add up (plus the copy) */
    c.base.pipeline_model_parallel_size = 8;
    int64_t sum = 0;
    for (int p = 0; p < 8; p++)
        sum += mhub_gpt_param_count(&c, p, 8, p == 0, p == 7);
    ck_assert_int_eq(sum, total + INT64_C(50257) * 12288);
}
END_TEST

/* GPT-3 175B at tp 8 x pp 8 (its Megatron layout): per (tensor,
 * pipeline) rank a layer holds 12 H^2 / 8 weights, the split biases
 * (3H + 4H) / 8, the whole proj and fc2 biases 2H and the norms 4H:
 * 226,576,896. Stage 0 adds its 1/8 of the padded vocabulary (50264 /
 * 8 = 6283 rows) and the whole position table: about 2.8 billion. */
START_TEST(test_gpt3_175b_tp8_pp8)
{
    mhub_gpt_config c = gpt3_175b();
    c.base.tensor_model_parallel_size = 8;
    c.base.pipeline_model_parallel_size = 8;
    CK_OK(mhub_config_validate(&c.base));
    ck_assert_int_eq(mhub_gpt_padded_vocab_size(&c), 50264);
    int64_t h = 12288, layer = 12 * h * h / 8 + 7 * h / 8 + 2 * h + 4 * h;
    ck_assert_int_eq(layer, 226576896);
    int64_t first = 12 * layer + 6283 * h + 2048 * h;
    int64_t last = 12 * layer + 2 * h + 6283 * h;
    ck_assert_int_eq(mhub_gpt_param_count(&c, 0, 8, true, false), first);
    ck_assert_int_eq(first, INT64_C(2821294080));
    ck_assert(first > INT64_C(2800000000) && first < INT64_C(2850000000));
    ck_assert_int_eq(mhub_gpt_param_count(&c, 3, 8, false, false), 12 * layer);
    ck_assert_int_eq(mhub_gpt_param_count(&c, 7, 8, false, true), last);
    /* the built meta shard agrees, on the last tp rank too */
    mhub_provide_args a = tp_chunk_args(8, 1, 0, 0, 8, 7);
    mhub_gpt *m = build(&c, &a);
    ck_assert_int_eq(mhub_param_list_numel(mhub_gpt_params(m)), first);
    mhub_gpt_free(m);
    /* the whole model: the tp 1 count plus the 7 padding rows */
    ck_assert_int_eq(mhub_gpt_total_params(&c), INT64_C(174604259328) + 7 * h);
}
END_TEST

/* ---- chunk ends ---------------------------------------------------------------------- */

static bool has_param(mhub_gpt *m, const char *name)
{
    return mhub_param_list_find(mhub_gpt_params(m), name) >= 0;
}

/* What a chunk's ends hold: the embedding with pre_process, the final
 * norm with post_process (and nothing of either without). */
static void expect_ends(mhub_gpt *m, bool pre, bool post)
{
    ck_assert_msg(mhub_gpt_pre_process(m) == pre, "layers from %d: pre_process %d, want %d",
                  mhub_gpt_first_layer(m), mhub_gpt_pre_process(m), pre);
    ck_assert_msg(mhub_gpt_post_process(m) == post, "layers from %d: post_process %d, want %d",
                  mhub_gpt_first_layer(m), mhub_gpt_post_process(m), post);
    ck_assert(has_param(m, "embedding.word_embeddings.weight") == pre);
    ck_assert(has_param(m, "decoder.final_layernorm.weight") == post);
}

/* The meta chunks of every stage of every pp x vp cut: only the first
 * chunk in model order is pre_process, only the last post_process, and
 * the model agrees with its chunk. */
START_TEST(test_pre_post_process_every_cut)
{
    mhub_provider *p = NULL;
    CK_OK(mhub_provider_create_default("gpt", &p));
    mhub_gpt_config *c = (mhub_gpt_config *)mhub_provider_config_mut(p);
    c->num_layers = 8;
    const int pps[] = {1, 2, 4}, vps[] = {0, 2};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 2; j++) {
            int pp = pps[i], vp = vps[j];
            if (pp == 1 && vp > 0)
                continue; /* virtual stages need a pipeline */
            c->base.pipeline_model_parallel_size = pp;
            c->base.virtual_pipeline_model_parallel_size = vp;
            int per_stage = vp > 0 ? vp : 1, chunks = pp * per_stage;
            for (int stage = 0; stage < pp; stage++) {
                mhub_chunk_list l = {0};
                CK_OK(mhub_provider_meta_stage(p, stage, &l));
                ck_assert_int_eq(l.count, per_stage);
                for (int v = 0; v < l.count; v++) {
                    int index = v * pp + stage; /* position in model order */
                    mhub_gpt *m = mhub_chunk_model(l.items[v]);
                    expect_ends(m, index == 0, index == chunks - 1);
                    ck_assert(mhub_gpt_pre_process(m) == mhub_chunk_pre_process(l.items[v]));
                    ck_assert(mhub_gpt_post_process(m) == mhub_chunk_post_process(l.items[v]));
                }
                mhub_chunk_list_free(&l);
            }
        }
    mhub_provider_free(p);
}
END_TEST

/* provide(pre_process, post_process, vp_stage) builds the ends it is
 * asked for, whatever they are; a missing model has neither. */
START_TEST(test_pre_post_process_as_asked)
{
    mhub_provider *p = NULL;
    CK_OK(mhub_provider_create_default("gpt", &p));
    mhub_gpt_config *c = (mhub_gpt_config *)mhub_provider_config_mut(p);
    c->num_layers = 4;
    c->base.pipeline_model_parallel_size = 2;
    for (int k = 0; k < 4; k++) {
        bool pre = k & 1, post = k & 2;
        mhub_chunk *chunk = NULL;
        CK_OK(mhub_provider_provide(p, pre, post, -1, &chunk));
        expect_ends(mhub_chunk_model(chunk), pre, post);
        mhub_chunk_free(chunk);
    }
    mhub_provider_free(p);
    ck_assert(!mhub_gpt_pre_process(NULL));
    ck_assert(!mhub_gpt_post_process(NULL));
}
END_TEST

/* ---- FLOPs per step -------------------------------------------------------------------- */

/* Narayanan et al. 2021 ("Efficient Large-Scale Language Model Training
 * on GPU Clusters Using Megatron-LM") count 96 B s l h^2 (1 + s / 6h +
 * V / 16lh) FLOPs for B sequences of s tokens through a GPT-2-shaped
 * model (F = 4h, heads spanning h) with activation recomputation, whose
 * layers run forward twice. Without it, three passes instead of four: */
static double paper_flops(double B, double s, double l, double h, double V)
{
    return 72.0 * B * s * l * h * h * (1.0 + s / (6.0 * h) + V / (12.0 * l * h));
}

static void expect_flops(double got, double want, const char *what)
{
    ck_assert_msg(mhub_test_relerr(got, want, 1.0) < 1e-12, "%s: %.17g FLOPs, want %.17g", what,
                  got, want);
}

START_TEST(test_flops_gpt2_family)
{
    mhub_gpt_config c = gpt_default(); /* 2 layers, hidden 64, vocab 256 */
    expect_flops(mhub_gpt_flops_per_step(&c, 4, 32), paper_flops(4, 32, 2, 64, 256), "tiny");

    c = gpt2_124m();
    double tokens = 8.0 * 1024;
    double flops = mhub_gpt_flops_per_step(&c, 8, 1024);
    expect_flops(flops, paper_flops(8, 1024, 12, 768, 50257), "GPT-2 124M");
    /* by hand, per token: the weights of the products, 12 x (768 x 2304
     * qkv + 768 x 768 proj + 2 x 768 x 3072 mlp) + 768 x 50257 head =
     * 123,532,032, six FLOPs each; attention 12 x 12 layers x 1024 x 768 */
    expect_flops(flops, (6.0 * 123532032 + 12.0 * 12 * 1024 * 768) * tokens, "GPT-2 by hand");
    /* the weights in products are nearly all of its 124.4 M parameters
     * (the rest: positions, norms, biases), and attention adds s / 6h */
    double six_n = 6.0 * (double)mhub_gpt_total_params(&c) * tokens;
    double attention = 12.0 * 12 * 1024 * 768 * tokens;
    ck_assert(flops - attention < six_n && flops - attention > 0.99 * six_n);
    ck_assert(attention > 0.13 * flops && attention < 0.14 * flops);

    /* GPT-3 175B: 300 B training tokens cost 3.14e23 FLOPs without
     * attention (Brown et al. 2020, table D.1) */
    c = gpt3_175b();
    flops = mhub_gpt_flops_per_step(&c, 1, 2048);
    expect_flops(flops, paper_flops(1, 2048, 96, 12288, 50257), "GPT-3 175B");
    double per_token = (flops - 12.0 * 96 * 2048 * 12288 * 2048) / 2048;
    ck_assert_msg(fabs(per_token * 300e9 / 3.14e23 - 1) < 0.005, "%.4g", per_token * 300e9);
}
END_TEST

/* A Llama-style model whose head width a d (4 x 8) is not H (64):
 * grouped queries, swiglu, a padded vocabulary, counted matrix by
 * matrix. */
START_TEST(test_flops_llama_by_hand)
{
    mhub_gpt_config c = llama_tiny(); /* 2 layers, H 64, 4 heads, 2 groups, F 96 */
    c.kv_channels = 8;
    c.vocab_size = 300;
    c.make_vocab_size_divisible_by = 128; /* 384 rows */
    CK_OK(mhub_config_validate(&c.base));
    /* multiply-adds per token of one forward */
    double qkv = (4 + 2 * 2) * 8 * 64.0; /* 4 query heads, 2 keys, 2 values of 8 */
    double proj = 64 * (4 * 8.0);
    double fc1 = 2 * 96 * 64.0; /* gate and up */
    double fc2 = 64 * 96.0;
    double head = 384 * 64.0;
    double seq = 48, batch = 3;
    double scores = 4 * seq * 8, weighted_values = 4 * seq * 8; /* every key: no causal discount */
    double macs = 2 * (qkv + proj + fc1 + fc2 + scores + weighted_values) + head;
    /* two FLOPs per multiply-add; backward costs twice the forward */
    double want = 3 * 2 * macs * batch * seq;
    expect_flops(mhub_gpt_flops_per_step(&c, 3, 48), want, "llama-style");

    /* nothing without a matrix product changes it: ties, positions, norms, biases */
    mhub_gpt_config d = c;
    d.share_embeddings_and_output_weights = true;
    d.position_embedding_type = MHUB_GPT_LEARNED_ABSOLUTE;
    d.normalization = MHUB_GPT_LAYERNORM;
    d.add_bias_linear = true;
    expect_flops(mhub_gpt_flops_per_step(&d, 3, 48), want, "tied, learned, LayerNorm, biases");
    /* linear in the batch; the attention term quadratic in the sequence */
    expect_flops(mhub_gpt_flops_per_step(&c, 6, 48), 2 * want, "twice the batch");
    double attention = 3 * 2 * 2 * (scores + weighted_values) * batch * seq;
    expect_flops(mhub_gpt_flops_per_step(&c, 3, 96), 2 * (want - attention) + 4 * attention,
                 "twice the sequence");
}
END_TEST

START_TEST(test_flops_nothing)
{
    mhub_gpt_config c = gpt_default();
    ck_assert(mhub_gpt_flops_per_step(NULL, 4, 64) == 0.0);
    ck_assert(mhub_gpt_flops_per_step(&c, 0, 64) == 0.0);
    ck_assert(mhub_gpt_flops_per_step(&c, 4, 0) == 0.0);
}
END_TEST

static Suite *gpt_suite(void)
{
    Suite *s = suite_create("gpt");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_registered);
    tcase_add_test(tc, test_validation_failures);
    tcase_add_test(tc, test_json_round_trip);
    tcase_add_test(tc, test_gpt2_layout);
    tcase_add_test(tc, test_llama_layout);
    tcase_add_test(tc, test_qkv_bias_only);
    tcase_add_test(tc, test_init_std);
    tcase_add_test(tc, test_materialized_values);
    tcase_add_test(tc, test_counts_every_cut);
    tcase_add_test(tc, test_param_count_bad_args);
    tcase_add_test(tc, test_layers_not_divisible);
    tcase_add_test(tc, test_provide_chunk);
    tcase_add_test(tc, test_provider_meta_stages);
    tcase_add_test(tc, test_describe);
    tcase_add_test(tc, test_gpt2_124m);
    tcase_add_test(tc, test_gpt3_175b);
    tcase_add_test(tc, test_tp_counts_match_formula);
    tcase_add_test(tc, test_tp_shards_add_up);
    tcase_add_test(tc, test_tp2_gpt2_layout);
    tcase_add_test(tc, test_tp2_llama_layout);
    tcase_add_test(tc, test_tp_seeds);
    tcase_add_test(tc, test_tp_validation);
    tcase_add_test(tc, test_provider_tp_meta_stage);
    tcase_add_test(tc, test_gpt3_175b_tp8_pp8);
    tcase_add_test(tc, test_pre_post_process_every_cut);
    tcase_add_test(tc, test_pre_post_process_as_asked);
    tcase_add_test(tc, test_flops_gpt2_family);
    tcase_add_test(tc, test_flops_llama_by_hand);
    tcase_add_test(tc, test_flops_nothing);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(gpt_suite()); }
