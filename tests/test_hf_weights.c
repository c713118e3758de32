/* test_hf_weights.c - Hugging Face GPT-2 and Llama weights.
 *
 * tests/data/gpt/hf-{gpt2,llama} hold the golden models' weights in
 * Hugging Face's names and layouts, converted by gpt_reference.py in
 * PyTorch independently of hf_weights.c. Loading them must give every
 * parameter of golden.safetensors exactly and the golden logits; saving
 * and loading again must reproduce the file's bytes; shards, pipeline
 * chunks and the bad-input cases follow. */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static mhub_backend *be;
static mhub_safetensors *golden;
static char data_dir[1024];
static char tmp[256];

static void setup(void)
{
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &be));
    mhub_test_data_path("gpt", data_dir, sizeof data_dir);
    char path[1100];
    snprintf(path, sizeof path, "%s/golden.safetensors", data_dir);
    CK_OK(mhub_safetensors_open(path, &golden));
    snprintf(tmp, sizeof tmp, "%s/mhub-hfw.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    ck_assert_int_eq(system(cmd), 0);
    mhub_safetensors_close(golden);
    mhub_backend_free(be);
}

static void model_dir(const char *model, char *out, size_t len)
{
    snprintf(out, len, "%s/hf-%s", data_dir, model);
}

static mhub_gpt_config *hf_config(const char *dir)
{
    mhub_provider_config *cfg = NULL;
    CK_OK(mhub_config_from_hf(dir, &cfg));
    return (mhub_gpt_config *)cfg;
}

/* Stage pp_rank of pp_size (1: the whole model). */
static mhub_gpt *build_stage(const mhub_gpt_config *cfg, int pp_rank, int pp_size, uint64_t seed)
{
    mhub_provide_args a = {.pre_process = pp_rank == 0, .post_process = pp_rank == pp_size - 1,
                           .vp_stage = -1, .pp_rank = pp_rank, .pp_size = pp_size,
                           .vp_size = 1, .tp_size = 1, .backend = be, .seed = seed,
                           .tp_seed = seed + 1, .micro_batch = 2};
    mhub_gpt *m = NULL;
    CK_OK(mhub_gpt_create(cfg, &a, &m));
    return m;
}

/* Golden "<model>/param/<name>" into a new buffer. */
static float *golden_param(const char *model, const char *name, const mhub_tensor *like)
{
    char key[160];
    snprintf(key, sizeof key, "%s/param/%s", model, name);
    float *v = malloc((size_t)like->numel * sizeof *v);
    CK_OK(mhub_safetensors_read_f32(golden, key, like->shape, like->ndim, v));
    return v;
}

/* Every parameter equals the golden one bit for bit; a tied model's cut
 * output layer equals the golden embedding. */
static void check_params(mhub_gpt *m, const char *model)
{
    mhub_param_list *pl = mhub_gpt_params(m);
    for (int i = 0; i < pl->count; i++) {
        const mhub_param *p = &pl->items[i];
        const char *name = p->name;
        if (!strcmp(name, "output_layer.weight") &&
            mhub_gpt_config_of(m)->share_embeddings_and_output_weights)
            name = "embedding.word_embeddings.weight";
        float *want = golden_param(model, name, &p->value);
        ck_assert_msg(memcmp(want, p->value.data, mhub_tensor_nbytes(&p->value)) == 0,
                      "%s: parameter %s differs from golden", model, p->name);
        free(want);
    }
}

static const int32_t *golden_ids(const char *model, const char *what)
{
    char key[64];
    snprintf(key, sizeof key, "%s/%s", model, what);
    mhub_safetensors_tensor t;
    int i = mhub_safetensors_find(golden, key);
    ck_assert_int_ge(i, 0);
    CK_OK(mhub_safetensors_info(golden, i, &t));
    return t.data;
}

static void check_forward(mhub_gpt *m, const char *model)
{
    ck_assert(mhub_gpt_runnable(m));
    float loss = 0;
    CK_OK(mhub_gpt_forward(m, golden_ids(model, "tokens"), golden_ids(model, "targets"), 2, 8,
                           &loss));
    int64_t n = 16 * mhub_gpt_padded_vocab_size(mhub_gpt_config_of(m));
    int64_t shape[2] = {16, mhub_gpt_padded_vocab_size(mhub_gpt_config_of(m))};
    float *want = malloc((size_t)n * sizeof *want), want_loss = 0;
    char key[64];
    snprintf(key, sizeof key, "%s/logits", model);
    CK_OK(mhub_safetensors_read_f32(golden, key, shape, 2, want));
    /* as test_gpt_model does: each element relative to the larger of
     * itself and 0.1 of the largest logit (f32 rounding is absolute) */
    const float *got = mhub_gpt_logits(m);
    double big = 0;
    for (int64_t i = 0; i < n; i++)
        big = fmax(big, fabs(want[i]));
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(mhub_test_relerr(got[i], want[i], 0.1 * big) < 1e-5,
                      "%s logit %lld: %g vs %g", model, (long long)i, got[i], want[i]);
    snprintf(key, sizeof key, "%s/loss", model);
    CK_OK(mhub_safetensors_read_f32(golden, key, (int64_t[]){1}, 1, &want_loss));
    ck_assert_msg(mhub_test_relerr(loss, want_loss, 1e-6) < 1e-5, "%s loss %g vs %g", model,
                  loss, want_loss);
    free(want);
}

static void load_matches_golden(const char *model)
{
    char dir[1100];
    model_dir(model, dir, sizeof dir);
    mhub_gpt_config *cfg = hf_config(dir);
    mhub_gpt *m = build_stage(cfg, 0, 1, 99);
    CK_OK(mhub_gpt_load_hf_weights(m, dir));
    check_params(m, model);
    check_forward(m, model);
    mhub_gpt_free(m);
    mhub_config_free(&cfg->base);
}

START_TEST(test_gpt2_loads) { load_matches_golden("gpt2"); }
END_TEST

START_TEST(test_llama_loads) { load_matches_golden("llama"); }
END_TEST

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*len + 1);
    ck_assert_uint_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void same_file(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    ck_assert_msg(la == lb && memcmp(x, y, la) == 0, "%s and %s differ", a, b);
    free(x);
    free(y);
}

/* save -> load -> save: the same bytes, the same parameters. */
static void round_trip(const char *model)
{
    char src[1100], a[300], b[300], fa[340], fb[340];
    model_dir(model, src, sizeof src);
    snprintf(a, sizeof a, "%s/%s-a", tmp, model);
    snprintf(b, sizeof b, "%s/%s-b", tmp, model);
    mhub_gpt_config *cfg = hf_config(src);
    mhub_gpt *m = build_stage(cfg, 0, 1, 1);
    CK_OK(mhub_gpt_load_hf_weights(m, src));
    CK_OK(mhub_gpt_save_hf_weights(m, a));
    mhub_gpt_config *cfg2 = hf_config(a);
    mhub_gpt *m2 = build_stage(cfg2, 0, 1, 2);
    CK_OK(mhub_gpt_load_hf_weights(m2, a));
    check_params(m2, model);
    CK_OK(mhub_gpt_save_hf_weights(m2, b));
    snprintf(fa, sizeof fa, "%s/model.safetensors", a);
    snprintf(fb, sizeof fb, "%s/model.safetensors", b);
    same_file(fa, fb);
    snprintf(fa, sizeof fa, "%s/config.json", a);
    snprintf(fb, sizeof fb, "%s/config.json", b);
    same_file(fa, fb);
    mhub_gpt_free(m2);
    mhub_gpt_free(m);
    mhub_config_free(&cfg2->base);
    mhub_config_free(&cfg->base);
}

START_TEST(test_round_trip)
{
    round_trip("gpt2");
    round_trip("llama");
}
END_TEST

/* Each pipeline stage takes its own layers; the tied GPT-2's last stage
 * takes the embedding as its output layer. */
START_TEST(test_pipeline_stages)
{
    static const char *const models[] = {"gpt2", "llama"};
    for (int k = 0; k < 2; k++) {
        char dir[1100];
        model_dir(models[k], dir, sizeof dir);
        mhub_gpt_config *cfg = hf_config(dir);
        for (int stage = 0; stage < 2; stage++) {
            mhub_gpt *m = build_stage(cfg, stage, 2, 3);
            ck_assert_int_eq(mhub_gpt_first_layer(m), stage);
            CK_OK(mhub_gpt_load_hf_weights(m, dir));
            check_params(m, models[k]);
            CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_gpt_save_hf_weights(m, tmp));
            mhub_gpt_free(m);
        }
        mhub_config_free(&cfg->base);
    }
}
END_TEST

/* Copy the tensors of `src` into <dir>/<file>, leaving out `skip`,
 * giving `reshape` a wrong shape, and adding `extra`; `only_prefix`
 * (when not NULL) keeps only names starting with it, `except_prefix`
 * drops them. */
typedef struct variant {
    const char *skip, *reshape, *extra, *only_prefix, *except_prefix, *as_bf16, *as_i32;
} variant;

static void write_variant(const char *src_dir, const char *dir, const char *file,
                          const variant *v)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", src_dir);
    mhub_safetensors *st = NULL;
    CK_OK(mhub_safetensors_open(path, &st));
    int n = mhub_safetensors_count(st);
    mhub_safetensors_entry *e = calloc((size_t)n + 1, sizeof *e);
    mhub_safetensors_tensor *t = calloc((size_t)n + 1, sizeof *t);
    uint16_t *bf = NULL;
    int count = 0;
    static const int64_t odd[1] = {7}, one_elem[1] = {1};
    for (int i = 0; i < n; i++) {
        CK_OK(mhub_safetensors_info(st, i, &t[i]));
        const char *name = t[i].name;
        if ((v->skip && !strcmp(name, v->skip)) ||
            (v->only_prefix && strncmp(name, v->only_prefix, strlen(v->only_prefix))) ||
            (v->except_prefix && !strncmp(name, v->except_prefix, strlen(v->except_prefix))))
            continue;
        e[count] = (mhub_safetensors_entry){.name = name, .dtype = MHUB_F32, .ndim = t[i].ndim,
                                            .shape = t[i].shape, .data = t[i].data};
        if (v->reshape && !strcmp(name, v->reshape)) {
            e[count].ndim = 1;
            e[count].shape = odd;
        }
        if (v->as_i32 && !strcmp(name, v->as_i32))
            e[count].dtype_name = "I32"; /* the same 4-byte elements, read as integers */
        if (v->as_bf16 && !strcmp(name, v->as_bf16)) {
            /* truncated to bf16: the loaded values are within 2^-7
             * relative of the f32 ones */
            bf = malloc((size_t)t[i].numel * sizeof *bf);
            const float *f = t[i].data;
            for (int64_t k = 0; k < t[i].numel; k++) {
                uint32_t u;
                memcpy(&u, &f[k], 4);
                bf[k] = (uint16_t)(u >> 16);
            }
            e[count].dtype = MHUB_BF16;
            e[count].data = bf;
        }
        count++;
    }
    static const float one[1] = {1};
    if (v->extra)
        e[count++] = (mhub_safetensors_entry){.name = v->extra, .dtype = MHUB_F32, .ndim = 1,
                                              .shape = one_elem, .data = one};
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    CK_OK(mhub_safetensors_write(path, e, count, NULL));
    free(bf);
    free(t);
    free(e);
    mhub_safetensors_close(st);
}

static void write_text(const char *dir, const char *file, const char *text)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* Llama split over two shards and an index loads as the single file. */
START_TEST(test_sharded)
{
    char src[1100], dir[300];
    model_dir("llama", src, sizeof src);
    snprintf(dir, sizeof dir, "%s/sharded", tmp);
    write_variant(src, dir, "model-00001-of-00002.safetensors",
                  &(variant){.only_prefix = "model.layers.1."});
    write_variant(src, dir, "model-00002-of-00002.safetensors",
                  &(variant){.except_prefix = "model.layers.1."});
    /* the weight_map, built from the shards themselves */
    char text[8192] = "{\"metadata\": {}, \"weight_map\": {";
    for (int s = 1; s <= 2; s++) {
        char path[400];
        snprintf(path, sizeof path, "%s/model-0000%d-of-00002.safetensors", dir, s);
        mhub_safetensors *st = NULL;
        CK_OK(mhub_safetensors_open(path, &st));
        for (int i = 0; i < mhub_safetensors_count(st); i++) {
            mhub_safetensors_tensor t;
            CK_OK(mhub_safetensors_info(st, i, &t));
            size_t used = strlen(text);
            snprintf(text + used, sizeof text - used, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"",
                     used > 40 ? ", " : "", t.name, s);
        }
        mhub_safetensors_close(st);
    }
    strcat(text, "}}");
    write_text(dir, "model.safetensors.index.json", text);
    mhub_gpt_config *cfg = hf_config(src);
    mhub_gpt *m = build_stage(cfg, 0, 1, 4);
    CK_OK(mhub_gpt_load_hf_weights(m, dir));
    check_params(m, "llama");
    /* a stale index: a tensor listed in the wrong shard */
    char *p = strstr(text, "\"model.norm.weight\": \"model-00002");
    ck_assert_ptr_nonnull(p);
    p[strlen("\"model.norm.weight\": \"model-0000")] = '1';
    write_text(dir, "model.safetensors.index.json", text);
    CK_FAILS(MHUB_ERR_PARSE, mhub_gpt_load_hf_weights(m, dir));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "model.norm.weight"));
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": [1, 2]");
    CK_FAILS(MHUB_ERR_PARSE, mhub_gpt_load_hf_weights(m, dir));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "model.safetensors.index.json"));
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": [1, 2]}");
    CK_FAILS(MHUB_ERR_PARSE, mhub_gpt_load_hf_weights(m, dir));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "weight_map"));
    mhub_gpt_free(m);
    mhub_config_free(&cfg->base);
}
END_TEST

/* A bad file fails naming the file and the tensor. */
static void fails_naming(mhub_gpt *m, const char *src, const variant *v, mhub_status code,
                         const char *tensor)
{
    char dir[300];
    snprintf(dir, sizeof dir, "%s/bad", tmp);
    write_variant(src, dir, "model.safetensors", v);
    CK_FAILS(code, mhub_gpt_load_hf_weights(m, dir));
    ck_assert_msg(strstr(mhub_last_error(), tensor) && strstr(mhub_last_error(), "bad/model"),
                  "message does not name the file and %s: %s", tensor, mhub_last_error());
}

START_TEST(test_bad_input)
{
    char src[1100];
    model_dir("gpt2", src, sizeof src);
    mhub_gpt_config *cfg = hf_config(src);
    mhub_gpt *m = build_stage(cfg, 0, 1, 5);
    fails_naming(m, src, &(variant){.skip = "transformer.h.1.mlp.c_fc.bias"},
                 MHUB_ERR_INVALID_ARG, "transformer.h.1.mlp.c_fc.bias");
    fails_naming(m, src, &(variant){.reshape = "transformer.h.0.attn.c_attn.weight"},
                 MHUB_ERR_INVALID_ARG, "transformer.h.0.attn.c_attn.weight");
    fails_naming(m, src, &(variant){.as_i32 = "transformer.ln_f.bias"}, MHUB_ERR_UNSUPPORTED,
                 "transformer.ln_f.bias");
    fails_naming(m, src, &(variant){.extra = "transformer.h.0.attn.rotary"},
                 MHUB_ERR_INVALID_ARG, "transformer.h.0.attn.rotary");
    fails_naming(m, src, &(variant){.extra = "transformer.h.2.ln_1.weight"},
                 MHUB_ERR_INVALID_ARG, "transformer.h.2.ln_1.weight");
    /* mask buffers and a tied lm_head are not weights: skipped */
    char dir[300];
    snprintf(dir, sizeof dir, "%s/masks", tmp);
    write_variant(src, dir, "model.safetensors", &(variant){.extra = "transformer.h.0.attn.bias"});
    CK_OK(mhub_gpt_load_hf_weights(m, dir));
    write_variant(src, dir, "model.safetensors", &(variant){.extra = "lm_head.weight"});
    CK_OK(mhub_gpt_load_hf_weights(m, dir));
    check_params(m, "gpt2");
    /* BF16 is converted: the parameter gets the truncated values */
    write_variant(src, dir, "model.safetensors", &(variant){.as_bf16 = "transformer.wpe.weight"});
    CK_OK(mhub_gpt_load_hf_weights(m, dir));
    mhub_param_list *pl = mhub_gpt_params(m);
    const mhub_param *wpe = &pl->items[mhub_param_list_find(pl, "embedding.position_embeddings.weight")];
    float *want = golden_param("gpt2", wpe->name, &wpe->value);
    const float *got = wpe->value.data;
    for (int64_t i = 0; i < wpe->value.numel; i++)
        ck_assert(fabsf(got[i] - want[i]) <= fabsf(want[i]) / 128);
    free(want);
    /* no weights at all, and a directory that does not exist */
    snprintf(dir, sizeof dir, "%s/empty", tmp);
    mkdir(dir, 0755);
    CK_FAILS(MHUB_ERR_IO, mhub_gpt_load_hf_weights(m, dir));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "model.safetensors"));
    CK_FAILS(MHUB_ERR_IO, mhub_gpt_load_hf_weights(m, "/nonexistent/mhub"));
    /* a Llama file for a GPT-2 model: the first missing tensor is named */
    char llama[1100];
    model_dir("llama", llama, sizeof llama);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_load_hf_weights(m, llama));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "model.embed_tokens.weight"));
    mhub_gpt_free(m);
    /* a tensor-parallel shard is refused, naming the setting */
    cfg->base.tensor_model_parallel_size = 2;
    mhub_provide_args a = {.pre_process = true, .post_process = true, .vp_stage = -1,
                           .pp_size = 1, .vp_size = 1, .tp_size = 2, .backend = be,
                           .micro_batch = 1};
    CK_OK(mhub_gpt_create(cfg, &a, &m));
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_gpt_load_hf_weights(m, src));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "tensor_model_parallel_size"));
    mhub_gpt_free(m);
    mhub_config_free(&cfg->base);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("hf_weights");
    TCase *tc = tcase_create("hf_weights");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_gpt2_loads);
    tcase_add_test(tc, test_llama_loads);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_pipeline_stages);
    tcase_add_test(tc, test_sharded);
    tcase_add_test(tc, test_bad_input);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
