/* test_hf.c - Hugging Face config.json in and out: real configs of gpt2,
 * Llama-2-7b and TinyLlama (tests/data/hf), round trips for both
 * families, configs Hugging Face has no architecture for, and malformed
 * files, each an error naming the file and the key. The files written
 * are checked byte for byte against transformers' own
 * (tests/data/hf-config, made by tests/reference/hf_config_reference.py),
 * and the float printer against Python's repr. */
#include <cJSON.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/pyjson.h"
#include "testutil.h"

static char tmpdir[] = "/tmp/mhub_test_hf_XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(tmpdir)); }

/* Remove the scratch directory's files (one level of subdirectories). */

static void teardown(void)
{
    mhub_test_remove_tree(tmpdir);
    strcpy(tmpdir, "/tmp/mhub_test_hf_XXXXXX");
}

/* tests/data/<rel> under $top_srcdir (make check sets it); run by
 * hand, beside this source file, which also finds it from an out-of-tree
 * build directory. */
static void data_file(const char *rel, char *out, size_t len)
{
    mhub_test_data_path(rel, out, len);
}

/* tests/data/hf/<name> */
static void fixture(const char *name, char *out, size_t len)
{
    char rel[256];
    snprintf(rel, sizeof rel, "hf/%s", name);
    data_file(rel, out, len);
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
    ck_assert_int_eq(c->num_query_groups, 0);   /* 32 key/value heads: multi-head */
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

/* ---- byte for byte with transformers ---------------------------------------------- */

/* The whole file; *len its size. Caller free()s. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = (n + 4096 + 1) * 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
        size_t got = fread(buf + n, 1, 4096, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void expect_same_file(const char *got, const char *want)
{
    size_t lg = 0, lw = 0;
    char *g = slurp(got, &lg), *w = slurp(want, &lw);
    size_t at = 0;
    while (at < lg && at < lw && g[at] == w[at])
        at++;
    ck_assert_msg(lg == lw && at == lg, "%s differs from %s at byte %zu:\n%s\n---- want:\n%s",
                  got, want, at, g, w);
    free(g);
    free(w);
}

static void golden(const char *name, char *out, size_t len)
{
    char rel[256];
    snprintf(rel, sizeof rel, "hf-config/%s/config.json", name);
    data_file(rel, out, len);
}

/* Read `file`, write the config back over its source: the same bytes. */
static void expect_byte_round_trip(const char *file, const char *name)
{
    mhub_hf_source *src = NULL;
    CK_OK(mhub_hf_source_read(file, &src));
    mhub_provider_config *cfg = NULL;
    CK_OK(mhub_config_clone(mhub_hf_source_config(src), &cfg));
    char dir[512], out[600];
    scratch(name, dir, sizeof dir);
    CK_OK(mhub_config_save_hf_with(cfg, src, dir));
    snprintf(out, sizeof out, "%s/config.json", dir);
    expect_same_file(out, file);
    /* the source alone, as convert keeps it beside mhub's files */
    snprintf(out, sizeof out, "%s/source.json", dir);
    CK_OK(mhub_hf_source_write(src, out));
    expect_same_file(out, file);
    mhub_config_free(cfg);
    mhub_hf_source_free(src);
}

START_TEST(test_golden_round_trip)
{
    const char *made[] = {"gpt2-default", "gpt2-untied", "gpt2-extras", "llama-default",
                          "llama-gqa", "llama-bias", "qwen2-small", "qwen2-head-dim"};
    char file[512], name[64];
    for (int i = 0; i < 8; i++) {
        golden(made[i], file, sizeof file);
        expect_byte_round_trip(file, made[i]);
    }
    /* published configs of transformers 4 (torch_dtype, rope_theta, n_ctx) */
    const char *published[] = {"gpt2", "gpt2-legacy", "llama-2-7b", "tinyllama-1.1b"};
    for (int i = 0; i < 4; i++) {
        fixture(published[i], file, sizeof file);
        strncat(file, "/config.json", sizeof file - strlen(file) - 1);
        snprintf(name, sizeof name, "published-%s", published[i]);
        expect_byte_round_trip(file, name);
    }
}
END_TEST

static mhub_gpt_config gpt2_sized(int hidden, int layers, int heads, int seq, int vocab)
{
    mhub_gpt_config c;
    mhub_gpt_config_init(&c);
    c.hidden_size = hidden;
    c.num_layers = layers;
    c.num_attention_heads = heads;
    c.seq_length = seq;
    c.vocab_size = vocab;
    c.base.init_method = MHUB_INIT_METHOD_NORMAL;
    c.base.init_method_std = 0.02;
    return c;
}

static mhub_gpt_config llama_sized(int hidden, int ffn, int layers, int heads, int seq, int vocab)
{
    mhub_gpt_config c = gpt2_sized(hidden, layers, heads, seq, vocab);
    c.normalization = MHUB_GPT_RMSNORM;
    c.activation = MHUB_GPT_SWIGLU;
    c.position_embedding_type = MHUB_GPT_ROPE;
    c.ffn_hidden_size = ffn;
    c.add_bias_linear = false;
    c.share_embeddings_and_output_weights = false;
    c.layernorm_epsilon = 1e-6;
    c.rotary_base = 10000.0;
    return c;
}

/* mhub's own config, written: transformers' file for the same settings,
 * and that file read: the same config. */
static void expect_native(const mhub_gpt_config *c, const char *name)
{
    char dir[512], out[600], want[512];
    scratch(name, dir, sizeof dir);
    CK_OK(mhub_config_save_hf(&c->base, dir));
    snprintf(out, sizeof out, "%s/config.json", dir);
    golden(name, want, sizeof want);
    expect_same_file(out, want);
    mhub_gpt_config *back = load(want);
    mhub_gpt_config expect = *c;
    /* dtype is the weights' (written, not read) */
    expect.base.bf16 = expect.base.fp16 = false;
    ck_assert_msg(mhub_config_equal(&back->base, &expect.base), "%s reads differently", name);
    mhub_config_free(&back->base);
}

START_TEST(test_golden_native)
{
    mhub_gpt_config c = gpt2_sized(768, 12, 12, 1024, 50257);
    expect_native(&c, "gpt2-default");

    c = gpt2_sized(32, 2, 4, 16, 64);
    c.ffn_hidden_size = 64;
    c.share_embeddings_and_output_weights = false;
    c.layernorm_epsilon = 1e-6;
    c.base.init_method_std = 0.006;
    expect_native(&c, "gpt2-untied");

    c = llama_sized(4096, 11008, 32, 32, 2048, 32000);
    expect_native(&c, "llama-default");

    c = llama_sized(32, 48, 2, 4, 16, 64);
    c.num_query_groups = 2;
    c.rotary_base = 500000.0;
    c.layernorm_epsilon = 1e-5;
    c.share_embeddings_and_output_weights = true;
    c.base.bf16 = true;
    expect_native(&c, "llama-gqa");

    c = llama_sized(32, 48, 2, 4, 16, 64);
    c.kv_channels = 16;
    c.add_bias_linear = true;
    c.layernorm_epsilon = 1.2345678901234567e-07;
    c.base.init_method_std = 0.01;
    expect_native(&c, "llama-bias");

    c = llama_sized(32, 48, 3, 4, 16, 64);
    c.num_query_groups = 2;
    c.rotary_base = 1e6;
    c.share_embeddings_and_output_weights = true;
    c.add_qkv_bias = true;
    expect_native(&c, "qwen2-small");

    c = llama_sized(64, 96, 2, 4, 32, 100);
    c.kv_channels = 32;
    c.layernorm_epsilon = 3e-6;
    c.add_qkv_bias = true;
    c.base.fp16 = true;
    expect_native(&c, "qwen2-head-dim");
}
END_TEST

/* ---- writing over a source --------------------------------------------------------- */

static cJSON *saved_json(const char *dir)
{
    char file[600];
    snprintf(file, sizeof file, "%s/config.json", dir);
    size_t len = 0;
    char *text = slurp(file, &len);
    cJSON *root = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(root);
    return root;
}

static double number_at(const cJSON *obj, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, key);
    ck_assert_msg(cJSON_IsNumber(it), "\"%s\" is not a number", key);
    return cJSON_GetNumberValue(it);
}

/* Changed values replace the source's, its other keys stay. */
START_TEST(test_source_changes)
{
    char file[512], dir[512];
    golden("gpt2-extras", file, sizeof file);
    mhub_hf_source *src = NULL;
    CK_OK(mhub_hf_source_read(file, &src));
    mhub_provider_config *cfg = NULL;
    CK_OK(mhub_config_clone(mhub_hf_source_config(src), &cfg));
    mhub_gpt_config *c = (mhub_gpt_config *)cfg;
    c->vocab_size = 96;
    c->seq_length = 32;
    c->base.bf16 = true;
    c->base.init_method = MHUB_INIT_METHOD_FAN_IN;   /* no initializer_range */
    scratch("changed", dir, sizeof dir);
    CK_OK(mhub_config_save_hf_with(cfg, src, dir));
    cJSON *root = saved_json(dir);
    ck_assert_int_eq((int)number_at(root, "vocab_size"), 96);
    ck_assert_int_eq((int)number_at(root, "n_positions"), 32);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(root, "dtype")), "bfloat16");
    ck_assert_ptr_null(cJSON_GetObjectItem(root, "initializer_range"));
    ck_assert_int_eq((int)number_at(root, "negative"), -12);
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(root, "task_specific_params"));
    ck_assert_ptr_nonnull(cJSON_GetObjectItem(root, "nested"));
    cJSON_Delete(root);
    mhub_gpt_config *back = load(dir);
    c->base.bf16 = false;
    ck_assert(mhub_config_equal(&back->base, cfg));
    mhub_config_free(&back->base);

    /* a config of another family writes its own keys only */
    c->normalization = MHUB_GPT_RMSNORM;
    c->activation = MHUB_GPT_SWIGLU;
    c->position_embedding_type = MHUB_GPT_ROPE;
    c->ffn_hidden_size = 64;
    c->add_bias_linear = false;
    scratch("other-family", dir, sizeof dir);
    CK_OK(mhub_config_save_hf_with(cfg, src, dir));
    root = saved_json(dir);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(root, "model_type")), "llama");
    ck_assert_ptr_null(cJSON_GetObjectItem(root, "nested"));
    cJSON_Delete(root);
    mhub_config_free(cfg);
    mhub_hf_source_free(src);

    /* a changed fact replaces the source's older spelling of it */
    fixture("tinyllama-1.1b", file, sizeof file);
    CK_OK(mhub_hf_source_read(file, &src));
    CK_OK(mhub_config_clone(mhub_hf_source_config(src), &cfg));
    ((mhub_gpt_config *)cfg)->rotary_base = 500000.0;
    scratch("rope", dir, sizeof dir);
    CK_OK(mhub_config_save_hf_with(cfg, src, dir));
    root = saved_json(dir);
    ck_assert_ptr_null(cJSON_GetObjectItem(root, "rope_theta"));
    cJSON *rope = cJSON_GetObjectItem(root, "rope_parameters");
    ck_assert_double_eq(number_at(rope, "rope_theta"), 500000.0);
    ck_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(root, "torch_dtype")), "bfloat16");
    cJSON_Delete(root);
    back = load(dir);
    ck_assert(mhub_config_equal(&back->base, cfg));
    mhub_config_free(&back->base);
    mhub_config_free(cfg);
    mhub_hf_source_free(src);

    fixture("gpt2-legacy", file, sizeof file);
    CK_OK(mhub_hf_source_read(file, &src));
    CK_OK(mhub_config_clone(mhub_hf_source_config(src), &cfg));
    ((mhub_gpt_config *)cfg)->seq_length = 512;
    scratch("legacy", dir, sizeof dir);
    CK_OK(mhub_config_save_hf_with(cfg, src, dir));
    root = saved_json(dir);
    ck_assert_ptr_null(cJSON_GetObjectItem(root, "n_ctx"));
    ck_assert_int_eq((int)number_at(root, "n_positions"), 512);
    cJSON_Delete(root);
    mhub_config_free(cfg);
    mhub_hf_source_free(src);

    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_hf_source_read(NULL, &src));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_hf_source_write(NULL, "x"));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_save_hf_with(NULL, NULL, "x"));
    ck_assert_ptr_null(mhub_hf_source_config(NULL));
}
END_TEST

/* ---- Python's json ------------------------------------------------------------------ */

/* Every line of float-repr.txt: a double (C99 hex) and Python's repr. */
START_TEST(test_float_repr)
{
    char path[512];
    data_file("hf-config/float-repr.txt", path, sizeof path);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char hex[64], want[64], got[32];
    int lines = 0;
    while (fscanf(f, "%63s %63s", hex, want) == 2) {
        double v = strtod(hex, NULL);
        mhub_pyjson_float_text(v, got, sizeof got);
        ck_assert_msg(strcmp(got, want) == 0, "%s: got %s, Python's repr is %s", hex, got, want);
        lines++;
    }
    fclose(f);
    ck_assert_int_ge(lines, 2300);
}
END_TEST

static mhub_status parse_text(const char *text, const char *name, cJSON **root)
{
    return mhub_pyjson_parse(text, strlen(text), name, root);
}

static char *dumped(const char *text)
{
    cJSON *root = NULL;
    CK_OK(mhub_pyjson_parse(text, strlen(text), "test", &root));
    char *out = NULL;
    size_t len = 0;
    CK_OK(mhub_pyjson_dump(root, &out, &len));
    ck_assert_uint_eq(len, strlen(out));
    cJSON_Delete(root);
    return out;
}

static void expect_dump(const char *text, const char *want)
{
    char *got = dumped(text);
    ck_assert_msg(strcmp(got, want) == 0, "%s -> %s, want %s", text, got, want);
    free(got);
}

/* What json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
 * gives (checked with Python 3.11). */
START_TEST(test_pyjson)
{
    expect_dump("[1.50, 1E5, -0, -0.0, 12345678901234567890123, 2.5e-3]",
                "[\n  1.5,\n  100000.0,\n  0,\n  -0.0,\n  12345678901234567890123,\n  0.0025\n]\n");
    expect_dump("{\"b\": 1, \"a\": 2, \"b\": 3}", "{\n  \"a\": 2,\n  \"b\": 3\n}\n");
    expect_dump("{\"\xc3\xa9\": \"\xf0\x9f\x98\x80\\u00e9\\/\", \"Z\": [], \"z\": {}}",
                "{\n  \"Z\": [],\n  \"z\": {},\n  \"\\u00e9\": \"\\ud83d\\ude00\\u00e9/\"\n}\n");
    expect_dump("\"\\b\\f\\n\\r\\t\\u001f\\u007f~\"", "\"\\b\\f\\n\\r\\t\\u001f\\u007f~\"\n");
    expect_dump("[true, false, null, {\"a\": [[]]}]",
                "[\n  true,\n  false,\n  null,\n  {\n    \"a\": [\n      []\n    ]\n  }\n]\n");

    cJSON *root = NULL;
    CK_FAILS(MHUB_ERR_PARSE, parse_text("[1e400]", "big.json", &root));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "big.json"));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "1e400"));
    CK_FAILS(MHUB_ERR_PARSE, parse_text("[\"a\\u0000b\"]", "nul.json", &root));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "u0000"));
    CK_FAILS(MHUB_ERR_PARSE, parse_text("[\"\xff\"]", "utf8.json", &root));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "UTF-8"));
    CK_FAILS(MHUB_ERR_PARSE, parse_text("[\"\\ud800\"]", "lone.json", &root));
    CK_FAILS(MHUB_ERR_PARSE, parse_text("{\"a\": }", "bad.json", &root));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "bad.json"));
    ck_assert_ptr_null(root);
}
END_TEST

/* transformers 5's spellings that mhub cannot build. */
START_TEST(test_bad_v5_keys)
{
    expect_bad("rope-type", LLAMA_HEAD ", \"rope_parameters\": {\"rope_type\": \"llama3\", "
               "\"rope_theta\": 500000.0, \"factor\": 8.0}}", MHUB_ERR_UNSUPPORTED,
               "\"rope_parameters\"");
    expect_bad("rope-extra", LLAMA_HEAD ", \"rope_parameters\": {\"rope_type\": \"default\", "
               "\"rope_theta\": 500000.0, \"partial_rotary_factor\": 0.5}}", MHUB_ERR_UNSUPPORTED,
               "\"partial_rotary_factor\"");
    expect_bad("rope-array", LLAMA_HEAD ", \"rope_parameters\": [1]}", MHUB_ERR_PARSE,
               "\"rope_parameters\"");
    expect_bad("rope-theta-type", LLAMA_HEAD ", \"rope_parameters\": {\"rope_theta\": \"big\"}}",
               MHUB_ERR_PARSE, "rope_parameters.rope_theta");
    expect_bad("rope-disagree", LLAMA_HEAD ", \"rope_theta\": 10000.0, \"rope_parameters\": "
               "{\"rope_theta\": 500000.0, \"rope_type\": \"default\"}}", MHUB_ERR_PARSE,
               "disagree");
    expect_bad("sliding-layers", LLAMA_HEAD ", \"layer_types\": [\"full_attention\", "
               "\"sliding_attention\"]}", MHUB_ERR_UNSUPPORTED, "\"layer_types\"[1]");
    expect_bad("layer-count", LLAMA_HEAD ", \"layer_types\": [\"full_attention\"]}",
               MHUB_ERR_PARSE, "\"layer_types\"");
    expect_bad("layer-types-type", LLAMA_HEAD ", \"layer_types\": \"full_attention\"}",
               MHUB_ERR_PARSE, "\"layer_types\"");
    expect_bad("big-number", LLAMA_HEAD ", \"some_future_key\": 1e999}", MHUB_ERR_PARSE,
               "1e999");

    /* the same in transformers 5's spelling reads */
    char dir[512];
    write_config("rope-v5", LLAMA_HEAD ", \"rope_theta\": 500000, \"rope_parameters\": "
                 "{\"rope_theta\": 500000.0, \"rope_type\": \"default\"}, \"layer_types\": "
                 "[\"full_attention\", \"full_attention\"], \"head_dim\": 16, "
                 "\"num_key_value_heads\": 4}", dir, sizeof dir);
    mhub_gpt_config *c = load(dir);
    ck_assert_double_eq(c->rotary_base, 500000.0);
    ck_assert_int_eq(c->kv_channels, 0);          /* 64 / 4: derived */
    ck_assert_int_eq(c->num_query_groups, 0);     /* = heads: multi-head */
    mhub_config_free(&c->base);
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
    tcase_add_test(tc, test_golden_round_trip);
    tcase_add_test(tc, test_golden_native);
    tcase_add_test(tc, test_source_changes);
    tcase_add_test(tc, test_float_repr);
    tcase_add_test(tc, test_pyjson);
    tcase_add_test(tc, test_bad_v5_keys);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(hf_suite()); }
