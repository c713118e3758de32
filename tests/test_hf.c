/* test_hf.c - Hugging Face config.json in and out: real configs of gpt2,
 * Llama-2-7b and TinyLlama (tests/data/hf), round trips for both
 * families, configs Hugging Face has no architecture for, and malformed
 * files, each an error naming the file and the key. */
#include <cJSON.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char tmpdir[] = "/tmp/mhub_test_hf_XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(tmpdir)); }

/* Remove the scratch directory's files (one level of subdirectories). */

static void teardown(void)
{
    mhub_test_remove_tree(tmpdir);
    strcpy(tmpdir, "/tmp/mhub_test_hf_XXXXXX");
}

/* tests/data/hf/<name> under $top_srcdir (make check sets it); run by
 * hand, beside this source file, which also finds it from an out-of-tree
 * build directory. */
static void fixture(const char *name, char *out, size_t len)
{
    const char *top = getenv("top_srcdir");
    if (top && *top) {
        snprintf(out, len, "%s/tests/data/hf/%s", top, name);
        return;
    }
    const char *slash = strrchr(__FILE__, '/');
    int dir = slash ? (int)(slash - __FILE__) + 1 : 0;
    snprintf(out, len, "%.*sdata/hf/%s", dir, __FILE__, name);
}

static void scratch(const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s", tmpdir, name);
}

/* Write `text` to <tmpdir>/<name>/config.json; the directory's path in out. */
static void write_config(const char *name, const char *text, char *out, size_t len)
{
    scratch(name, out, len);
    ck_assert_int_eq(mkdir(out, 0755), 0);
    char file[512];
    snprintf(file, sizeof file, "%s/config.json", out);
    FILE *f = fopen(file, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static mhub_gpt_config *load(const char *path)
{
    mhub_provider_config *cfg = NULL;
    CK_OK(mhub_config_from_hf(path, &cfg));
    ck_assert_ptr_eq(cfg->type, mhub_gpt_provider_type());
    return (mhub_gpt_config *)cfg;
}

/* ---- real configs ------------------------------------------------------------------- */

START_TEST(test_gpt2)
{
    char dir[512];
    fixture("gpt2", dir, sizeof dir);
    mhub_gpt_config *c = load(dir);
    ck_assert_int_eq(c->hidden_size, 768);
    ck_assert_int_eq(c->num_layers, 12);
    ck_assert_int_eq(c->num_attention_heads, 12);
    ck_assert_int_eq(c->seq_length, 1024);
    ck_assert_int_eq(c->vocab_size, 50257);
    ck_assert_int_eq(c->ffn_hidden_size, 0);          /* n_inner absent: 4 x n_embd */
    ck_assert_int_eq(mhub_gpt_ffn_size(c), 3072);
    ck_assert_double_eq(c->layernorm_epsilon, 1e-5);
    ck_assert_int_eq(c->normalization, MHUB_GPT_LAYERNORM);
    ck_assert_int_eq(c->activation, MHUB_GPT_GELU);
    ck_assert_int_eq(c->position_embedding_type, MHUB_GPT_LEARNED_ABSOLUTE);
    ck_assert(c->share_embeddings_and_output_weights);
    ck_assert(c->add_bias_linear);
    ck_assert_int_eq(c->base.init_method, MHUB_INIT_METHOD_NORMAL);
    ck_assert_double_eq(c->base.init_method_std, 0.02);
    ck_assert_int_eq(mhub_gpt_total_params(c), 124439808);
    mhub_config_free(&c->base);

    /* the file itself works as well as its directory */
    char file[600];
    snprintf(file, sizeof file, "%s/config.json", dir);
    c = load(file);
    ck_assert_int_eq(c->hidden_size, 768);
    mhub_config_free(&c->base);
}
END_TEST

/* No model_type, n_ctx rather than n_positions: GPT-2's earliest form. */
START_TEST(test_gpt2_legacy)
{
    char dir[512];
    fixture("gpt2-legacy", dir, sizeof dir);
    mhub_gpt_config *c = load(dir);
    ck_assert_int_eq(c->hidden_size, 1024);
    ck_assert_int_eq(c->num_layers, 24);
    ck_assert_int_eq(c->seq_length, 1024);
    ck_assert_int_eq(c->activation, MHUB_GPT_GELU);
    mhub_config_free(&c->base);
}
END_TEST

START_TEST(test_llama2_7b)
{
    char dir[512];
    fixture("llama-2-7b", dir, sizeof dir);
    mhub_gpt_config *c = load(dir);
    ck_assert_int_eq(c->hidden_size, 4096);
    ck_assert_int_eq(c->ffn_hidden_size, 11008);
    ck_assert_int_eq(c->num_layers, 32);
    ck_assert_int_eq(c->num_attention_heads, 32);
    ck_assert_int_eq(c->num_query_groups, 32);
    ck_assert_int_eq(c->kv_channels, 0);
    ck_assert_int_eq(c->seq_length, 4096);
    ck_assert_int_eq(c->vocab_size, 32000);
    ck_assert_double_eq(c->layernorm_epsilon, 1e-5);
    ck_assert_double_eq(c->rotary_base, 10000.0);       /* no rope_theta: the default */
    ck_assert_int_eq(c->normalization, MHUB_GPT_RMSNORM);
    ck_assert_int_eq(c->activation, MHUB_GPT_SWIGLU);
    ck_assert_int_eq(c->position_embedding_type, MHUB_GPT_ROPE);
    ck_assert(!c->share_embeddings_and_output_weights);
    ck_assert(!c->add_bias_linear && !c->add_qkv_bias);
    /* Llama-2-7b's published size */
    ck_assert_int_eq(mhub_gpt_total_params(c), INT64_C(6738415616));
    mhub_config_free(&c->base);
}
END_TEST

START_TEST(test_tinyllama)
{
    char dir[512];
    fixture("tinyllama-1.1b", dir, sizeof dir);
    mhub_gpt_config *c = load(dir);
    ck_assert_int_eq(c->num_query_groups, 4);            /* grouped-query attention */
    ck_assert_int_eq(mhub_gpt_head_dim(c), 64);
    ck_assert_int_eq(c->num_layers, 22);
    ck_assert_int_eq(c->seq_length, 2048);
    ck_assert_int_eq(mhub_gpt_total_params(c), INT64_C(1100048384));
    mhub_config_free(&c->base);
}
END_TEST

/* ---- round trips ---------------------------------------------------------------------- */

static void expect_round_trip(const mhub_gpt_config *c, const char *name)
{
    char dir[512];
    scratch(name, dir, sizeof dir);
    CK_OK(mhub_config_save_hf(&c->base, dir));
    mhub_gpt_config *back = load(dir);
    ck_assert_msg(mhub_config_equal(&back->base, &c->base), "%s does not round-trip", name);
    mhub_config_free(&back->base);
}

static mhub_gpt_config llama_like(void)
{
    mhub_gpt_config c;
    mhub_gpt_config_init(&c);
    c.normalization = MHUB_GPT_RMSNORM;
    c.activation = MHUB_GPT_SWIGLU;
    c.position_embedding_type = MHUB_GPT_ROPE;
    c.ffn_hidden_size = 172;
    c.add_bias_linear = false;
    c.share_embeddings_and_output_weights = false;
    c.layernorm_epsilon = 1e-6;
    return c;
}

START_TEST(test_round_trip_fixtures)
{
    const char *names[] = {"gpt2", "gpt2-legacy", "llama-2-7b", "tinyllama-1.1b"};
    for (int i = 0; i < 4; i++) {
        char dir[512];
        fixture(names[i], dir, sizeof dir);
        mhub_gpt_config *c = load(dir);
        expect_round_trip(c, names[i]);
        mhub_config_free(&c->base);
    }
}
END_TEST

START_TEST(test_round_trip_made)
{
    mhub_gpt_config c;
    mhub_gpt_config_init(&c);              /* GPT-2 family, fan-in init */
    expect_round_trip(&c, "gpt-default");
    c.ffn_hidden_size = 100;               /* n_inner */
    c.share_embeddings_and_output_weights = false;
    c.layernorm_epsilon = 1.2345678901234567e-7;
    c.base.init_method = MHUB_INIT_METHOD_NORMAL;
    c.base.init_method_std = 0.006;
    expect_round_trip(&c, "gpt-untied");

    c = llama_like();                       /* multi-head, derived head dim */
    expect_round_trip(&c, "llama-mha");
    c.num_query_groups = 2;
    c.kv_channels = 32;                    /* head_dim */
    c.rotary_base = 500000.0;
    c.share_embeddings_and_output_weights = true;
    expect_round_trip(&c, "llama-gqa");
    c.add_bias_linear = true;              /* attention_bias and mlp_bias */
    expect_round_trip(&c, "llama-bias");
    c.add_bias_linear = false;
    c.add_qkv_bias = true;                 /* Qwen2's layout */
    expect_round_trip(&c, "qwen2");
}
END_TEST

/* The written file carries Hugging Face's own markers, and nothing is
 * left beside it. */
START_TEST(test_saved_file)
{
    mhub_gpt_config c = llama_like();
    c.add_qkv_bias = true;
    char dir[512], file[600];
    scratch("saved", dir, sizeof dir);
    CK_OK(mhub_config_save_hf(&c.base, dir));
    CK_OK(mhub_config_save_hf(&c.base, dir));      /* overwriting is fine */
    snprintf(file, sizeof file, "%s/config.json", dir);
    FILE *f = fopen(file, "rb");
    ck_assert_ptr_nonnull(f);
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    cJSON *root = cJSON_Parse(text);
    ck_assert_ptr_nonnull(root);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(root, "model_type")), "qwen2");
    cJSON *arch = cJSON_GetObjectItem(root, "architectures");
    ck_assert(cJSON_IsArray(arch));
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetArrayItem(arch, 0)), "Qwen2ForCausalLM");
    ck_assert_int_eq((int)cJSON_GetNumberValue(cJSON_GetObjectItem(root, "intermediate_size")),
                     172);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(root, "hidden_act")), "silu");
    cJSON_Delete(root);

    DIR *d = opendir(dir);
    int entries = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        entries += e->d_name[0] != '.';
    closedir(d);
    ck_assert_int_eq(entries, 1);
    /* the temporary file is a dot file: make sure none is left either */
    d = opendir(dir);
    while ((e = readdir(d)) != NULL)
        ck_assert_msg(strncmp(e->d_name, ".config", 7) != 0, "left behind: %s", e->d_name);
    closedir(d);
}
END_TEST

/* ---- what Hugging Face cannot hold --------------------------------------------------- */

static void expect_save_fails(const mhub_gpt_config *c, const char *words)
{
    char dir[512];
    scratch("nope", dir, sizeof dir);
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_config_save_hf(&c->base, dir));
    ck_assert_msg(strstr(mhub_last_error(), words) != NULL, "'%s' lacks '%s'",
                  mhub_last_error(), words);
}

START_TEST(test_save_unsupported)
{
    mhub_gpt_config c;
    mhub_gpt_config_init(&c);
    c.activation = MHUB_GPT_SWIGLU;               /* LayerNorm + swiglu + learned */
    c.ffn_hidden_size = 128;
    expect_save_fails(&c, "no architecture for this combination");

    mhub_gpt_config_init(&c);
    c.add_bias_linear = false;
    expect_save_fails(&c, "add_bias_linear");

    mhub_gpt_config_init(&c);
    c.num_query_groups = 2;
    expect_save_fails(&c, "grouped-query");

    mhub_gpt_config_init(&c);
    c.kv_channels = 8;
    expect_save_fails(&c, "kv_channels");

    /* only gpt configs have a Hugging Face form */
    mhub_provider_config *mlp = NULL;
    CK_OK(mhub_config_create(mhub_provider_type_find("mlp"), &mlp));
    char dir[512];
    scratch("mlp", dir, sizeof dir);
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_config_save_hf(mlp, dir));
    mhub_config_free(mlp);

    /* a file where the directory should be */
    char file[512];
    write_config("blocker", "{}", file, sizeof file);
    strncat(file, "/config.json", sizeof file - strlen(file) - 1);
    mhub_gpt_config_init(&c);
    CK_FAILS(MHUB_ERR_IO, mhub_config_save_hf(&c.base, file));
}
END_TEST

/* ---- bad input --------------------------------------------------------------------- */

#define GPT2_HEAD "{\"model_type\": \"gpt2\", "
#define GPT2_SIZES "\"n_layer\": 2, \"n_positions\": 64, \"vocab_size\": 256"

/* The file fails with `code` and the message names the file and `key`. */
static void expect_bad(const char *name, const char *text, mhub_status code, const char *key)
{
    char dir[512];
    write_config(name, text, dir, sizeof dir);
    mhub_provider_config *cfg = NULL;
    CK_FAILS(code, mhub_config_from_hf(dir, &cfg));
    ck_assert_ptr_null(cfg);
    const char *msg = mhub_last_error();
    ck_assert_msg(strstr(msg, dir) != NULL, "%s: '%s' does not name the file", name, msg);
    if (key)
        ck_assert_msg(strstr(msg, key) != NULL, "%s: '%s' does not name %s", name, msg, key);
}

START_TEST(test_bad_values)
{
    expect_bad("missing", GPT2_HEAD "\"n_embd\": 64, " GPT2_SIZES "}", MHUB_ERR_PARSE,
               "\"n_head\"");
    expect_bad("null-required", GPT2_HEAD "\"n_embd\": null, \"n_head\": 4, " GPT2_SIZES "}",
               MHUB_ERR_PARSE, "\"n_embd\"");
    expect_bad("wrong-type", GPT2_HEAD "\"n_embd\": \"64\", \"n_head\": 4, " GPT2_SIZES "}",
               MHUB_ERR_PARSE, "\"n_embd\"");
    expect_bad("fraction", GPT2_HEAD "\"n_embd\": 64.5, \"n_head\": 4, " GPT2_SIZES "}",
               MHUB_ERR_PARSE, "\"n_embd\"");
    expect_bad("negative", GPT2_HEAD "\"n_embd\": -64, \"n_head\": 4, " GPT2_SIZES "}",
               MHUB_ERR_PARSE, "\"n_embd\"");
    expect_bad("huge", GPT2_HEAD "\"n_embd\": 1e300, \"n_head\": 4, " GPT2_SIZES "}",
               MHUB_ERR_PARSE, "\"n_embd\"");
    expect_bad("bool-type",
               GPT2_HEAD "\"n_embd\": 64, \"n_head\": 4, \"tie_word_embeddings\": \"yes\", "
               GPT2_SIZES "}", MHUB_ERR_PARSE, "\"tie_word_embeddings\"");
    expect_bad("eps-zero",
               GPT2_HEAD "\"n_embd\": 64, \"n_head\": 4, \"layer_norm_epsilon\": 0, "
               GPT2_SIZES "}", MHUB_ERR_PARSE, "\"layer_norm_epsilon\"");
    expect_bad("no-positions",
               "{\"model_type\": \"gpt2\", \"n_embd\": 64, \"n_head\": 4, \"n_layer\": 2, "
               "\"vocab_size\": 256}", MHUB_ERR_PARSE, "\"n_positions\"");
    expect_bad("activation",
               GPT2_HEAD "\"n_embd\": 64, \"n_head\": 4, \"activation_function\": \"relu\", "
               GPT2_SIZES "}", MHUB_ERR_UNSUPPORTED, "\"relu\"");
    /* sizes fine one by one, inconsistent together */
    expect_bad("heads", GPT2_HEAD "\"n_embd\": 64, \"n_head\": 5, " GPT2_SIZES "}",
               MHUB_ERR_PARSE, "num_attention_heads");
    expect_bad("model-type", "{\"model_type\": \"bert\", \"hidden_size\": 64}",
               MHUB_ERR_UNSUPPORTED, "\"bert\"");
    expect_bad("model-type-number", "{\"model_type\": 7}", MHUB_ERR_PARSE, "\"model_type\"");
    expect_bad("no-family", "{\"hidden_size\": 64}", MHUB_ERR_PARSE, "\"model_type\"");
}
END_TEST

#define LLAMA_HEAD                                                                          \
    "{\"model_type\": \"llama\", \"hidden_size\": 64, \"intermediate_size\": 172, "         \
    "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"max_position_embeddings\": 64, " \
    "\"vocab_size\": 256"

START_TEST(test_bad_llama)
{
    expect_bad("llama-act", LLAMA_HEAD ", \"hidden_act\": \"gelu\"}", MHUB_ERR_UNSUPPORTED,
               "\"hidden_act\"");
    expect_bad("llama-scaling",
               LLAMA_HEAD ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}",
               MHUB_ERR_UNSUPPORTED, "\"rope_scaling\"");
    expect_bad("llama-bias", LLAMA_HEAD ", \"attention_bias\": true}", MHUB_ERR_UNSUPPORTED,
               "\"attention_bias\"");
    expect_bad("llama-kv", LLAMA_HEAD ", \"num_key_value_heads\": 3}", MHUB_ERR_PARSE,
               "num_query_groups");
    expect_bad("llama-kv-zero", LLAMA_HEAD ", \"num_key_value_heads\": 0}", MHUB_ERR_PARSE,
               "\"num_key_value_heads\"");
    expect_bad("llama-missing",
               "{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_hidden_layers\": 2, "
               "\"num_attention_heads\": 4, \"max_position_embeddings\": 64, "
               "\"vocab_size\": 256}", MHUB_ERR_PARSE, "\"intermediate_size\"");
    expect_bad("mistral-window",
               "{\"model_type\": \"mistral\", \"hidden_size\": 64, \"intermediate_size\": 172, "
               "\"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
               "\"max_position_embeddings\": 64, \"vocab_size\": 256, \"sliding_window\": 16}",
               MHUB_ERR_UNSUPPORTED, "\"sliding_window\"");

    /* a null optional key means its default; unknown keys are ignored */
    char dir[512];
    write_config("llama-nulls",
                 LLAMA_HEAD ", \"num_key_value_heads\": null, \"rope_theta\": null, "
                 "\"head_dim\": null, \"sliding_window\": null, \"some_future_key\": [1, {}]}",
                 dir, sizeof dir);
    mhub_gpt_config *c = load(dir);
    ck_assert_int_eq(c->num_query_groups, 0);
    ck_assert_double_eq(c->rotary_base, 10000.0);
    mhub_config_free(&c->base);
}
END_TEST

START_TEST(test_bad_files)
{
    expect_bad("truncated", GPT2_HEAD "\"n_embd\": 64, \"n_he", MHUB_ERR_PARSE, "JSON");
    expect_bad("array", "[1, 2, 3]", MHUB_ERR_PARSE, "object");
    expect_bad("string", "\"gpt2\"", MHUB_ERR_PARSE, "object");
    expect_bad("empty", "", MHUB_ERR_PARSE, "empty");
    expect_bad("garbage", "\xff\xfe not json", MHUB_ERR_PARSE, "JSON");

    /* a directory without config.json */
    char dir[512];
    scratch("no-config", dir, sizeof dir);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    mhub_provider_config *cfg = NULL;
    CK_FAILS(MHUB_ERR_IO, mhub_config_from_hf(dir, &cfg));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "config.json"));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), dir));

    scratch("does-not-exist", dir, sizeof dir);
    CK_FAILS(MHUB_ERR_IO, mhub_config_from_hf(dir, &cfg));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), dir));

    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_from_hf(NULL, &cfg));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_save_hf(NULL, "x"));
}
END_TEST

static Suite *hf_suite(void)
{
    Suite *s = suite_create("hf");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_gpt2);
    tcase_add_test(tc, test_gpt2_legacy);
    tcase_add_test(tc, test_llama2_7b);
    tcase_add_test(tc, test_tinyllama);
    tcase_add_test(tc, test_round_trip_fixtures);
    tcase_add_test(tc, test_round_trip_made);
    tcase_add_test(tc, test_saved_file);
    tcase_add_test(tc, test_save_unsupported);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_bad_llama);
    tcase_add_test(tc, test_bad_files);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(hf_suite()); }
