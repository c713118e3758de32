/* test_gpt_model.c - the GPT's forward and backward against PyTorch.
 *
 * tests/data/gpt/golden.safetensors comes from tests/reference/
 * gpt_reference.py: two tiny models (GPT-2-style and Llama-style with
 * GQA, RoPE, SwiGLU, RMSNorm, untied head), computed in float64 by
 * PyTorch from the same float32 weights. mhub must match the logits and
 * loss within 1e-5 relative, the gradients within 1e-4, and the
 * parameters after 3 AdamW steps within 1e-4. A finite-difference check
 * of the loss and the bad-input cases follow, the per-token losses
 * against a log-softmax in double of PyTorch's logits, then 16-bit
 * (bf16, f16) parameters: f32 compute on the same rounded weights, 16-bit
 * gradients rounded once per backward, and a bf16 model that learns. */
#include <string.h>

#include "testutil.h"

static mhub_backend *be;
static mhub_safetensors *golden;

static void setup(void)
{
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &be));
    char path[1024];
    mhub_test_data_path("gpt/golden.safetensors", path, sizeof path);
    CK_OK(mhub_safetensors_open(path, &golden));
}

static void teardown(void)
{
    mhub_safetensors_close(golden);
    mhub_backend_free(be);
}

/* The golden config of `model` ("gpt2" or "llama"). */
static mhub_gpt_config *golden_config(const char *model)
{
    char key[64];
    snprintf(key, sizeof key, "%s/config", model);
    const char *text = mhub_safetensors_metadata(golden, key);
    ck_assert_ptr_nonnull(text);
    mhub_provider_config *cfg = NULL;
    CK_OK(mhub_config_from_json(text, strlen(text), key, MHUB_CONFIG_STRICT, &cfg));
    return (mhub_gpt_config *)cfg;
}

static int golden_int(const char *key)
{
    const char *v = mhub_safetensors_metadata(golden, key);
    ck_assert_ptr_nonnull(v);
    return atoi(v);
}

static mhub_gpt *build(const mhub_gpt_config *cfg, int64_t batch)
{
    mhub_provide_args a = {.pre_process = true, .post_process = true, .vp_stage = -1,
                           .pp_size = 1, .vp_size = 1, .tp_size = 1, .backend = be,
                           .seed = 5, .tp_seed = 6, .micro_batch = batch};
    mhub_gpt *m = NULL;
    CK_OK(mhub_gpt_create(cfg, &a, &m));
    ck_assert(mhub_gpt_runnable(m));
    return m;
}

/* Set every parameter to the golden "<model>/<kind>/<name>" values. */
static void load(mhub_gpt *m, const char *model, const char *kind)
{
    mhub_param_list *pl = mhub_gpt_params(m);
    for (int i = 0; i < pl->count; i++) {
        char key[160];
        snprintf(key, sizeof key, "%s/%s/%s", model, kind, pl->items[i].name);
        mhub_tensor *v = &pl->items[i].value;
        CK_OK(mhub_safetensors_read_f32(golden, key, v->shape, v->ndim, v->data));
    }
}

static const int32_t *golden_ids(const char *model, const char *what, int64_t n)
{
    char key[64];
    snprintf(key, sizeof key, "%s/%s", model, what);
    int i = mhub_safetensors_find(golden, key);
    ck_assert_int_ge(i, 0);
    mhub_safetensors_tensor t;
    CK_OK(mhub_safetensors_info(golden, i, &t));
    ck_assert_str_eq(t.dtype_name, "I32");
    ck_assert_int_eq(t.numel, n);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    memcpy(ids, t.data, (size_t)n * sizeof *ids);
    return ids;
}

/* Worst |a - b| / max(|b|, floor) over n values. */
static double worst_relerr(const float *a, const float *b, int64_t n, double floor)
{
    double w = 0;
    for (int64_t i = 0; i < n; i++)
        w = fmax(w, mhub_test_relerr(a[i], b[i], floor));
    return w;
}

/* ||a - b|| / ||b||: the error of the tensor as a whole, which f32
 * arithmetic bounds; elementwise errors of values near zero are
 * dominated by absolute rounding and say little. */
static double norm_relerr(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double max_abs(const float *x, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++)
        m = fmax(m, fabs(x[i]));
    return m;
}

/* Compare each parameter's value (or gradient) with golden
 * "<model>/<kind>/<name>" within tol: as a whole (norm_relerr) and per
 * element relative to the larger of the element and 0.1 of the tensor's
 * largest. With `skip_flat`, elements whose golden gradient is below
 * 1e-6 are left out: their gradient is zero in exact arithmetic (the key
 * bias, see gpt_reference.py), so what either side computes is rounding
 * noise, which AdamW's normalisation turns into steps of up to lr; the
 * noise depends on the order of the sums (flash attention's differs from
 * PyTorch's), and can even round to an exact 0 on one side. Elements whose
 * gradient is exactly 0 on both sides (unused embedding rows) are
 * compared: only weight decay moves them. */
static void compare_params(mhub_gpt *m, const char *model, const char *kind, bool grads,
                           bool skip_flat, double tol)
{
    mhub_param_list *pl = mhub_gpt_params(m);
    int64_t skipped = 0, total = 0;
    for (int i = 0; i < pl->count; i++) {
        mhub_param *p = &pl->items[i];
        char key[160];
        snprintf(key, sizeof key, "%s/%s/%s", model, kind, p->name);
        int64_t n = p->value.numel;
        float *ref = malloc((size_t)n * sizeof *ref), *g = malloc((size_t)n * sizeof *g);
        float *got = malloc((size_t)n * sizeof *got);
        CK_OK(mhub_safetensors_read_f32(golden, key, p->value.shape, p->value.ndim, ref));
        memcpy(got, grads ? p->grad.data : p->value.data, (size_t)n * sizeof *got);
        if (skip_flat) {
            snprintf(key, sizeof key, "%s/grad/%s", model, p->name);
            CK_OK(mhub_safetensors_read_f32(golden, key, p->value.shape, p->value.ndim, g));
            const float *ours = p->grad.data; /* the last step's gradient */
            for (int64_t e = 0; e < n; e++)
                if (fabsf(g[e]) < 1e-6f && (g[e] != 0.0f || ours[e] != 0.0f)) {
                    got[e] = ref[e];
                    skipped++;
                }
        }
        total += n;
        double err = norm_relerr(got, ref, n);
        double worst = worst_relerr(got, ref, n, fmax(0.1 * max_abs(ref, n), 1e-30));
        ck_assert_msg(err < tol && worst < tol, "%s/%s/%s: %s relative error %.3g, worst "
                      "element %.3g (limit %.0e)", model, kind, p->name,
                      grads ? "gradient" : "value", err, worst, tol);
        free(ref);
        free(g);
        free(got);
    }
    /* the flat ones are few: the key biases (exact zeros, unused embedding
     * rows, compare exactly: only weight decay moves them) */
    ck_assert_msg(skipped * 20 < total, "%lld of %lld elements had no gradient",
                  (long long)skipped, (long long)total);
}

static void check_model(const char *model)
{
    mhub_gpt_config *cfg = golden_config(model);
    int b = golden_int("batch"), t = golden_int("seq");
    int64_t n = (int64_t)b * t, v = mhub_gpt_padded_vocab_size(cfg);
    mhub_gpt *m = build(cfg, b);
    load(m, model, "param");
    const int32_t *tokens = golden_ids(model, "tokens", n);
    const int32_t *targets = golden_ids(model, "targets", n);
    float loss = 0, ref_loss = 0;
    CK_OK(mhub_param_list_zero_grad(mhub_gpt_params(m)));
    CK_OK(mhub_gpt_forward(m, tokens, targets, b, t, &loss));
    char key[64];
    snprintf(key, sizeof key, "%s/loss", model);
    CK_OK(mhub_safetensors_read_f32(golden, key, NULL, -1, &ref_loss));
    ck_assert_msg(mhub_test_relerr(loss, ref_loss, 1e-30) < 1e-5, "%s loss %.9g vs %.9g", model,
                  loss, ref_loss);
    float *logits = malloc((size_t)(n * v) * sizeof *logits);
    snprintf(key, sizeof key, "%s/logits", model);
    int64_t shape[2] = {n, v};
    CK_OK(mhub_safetensors_read_f32(golden, key, shape, 2, logits));
    double err = norm_relerr(mhub_gpt_logits(m), logits, n * v);
    double worst = worst_relerr(mhub_gpt_logits(m), logits, n * v, 0.1 * max_abs(logits, n * v));
    fprintf(stderr, "%s logits: relative error %.3g (worst element %.3g)\n", model, err, worst);
    ck_assert_msg(err < 1e-5, "%s logits relative error %.3g", model, err);
    ck_assert_msg(worst < 1e-5, "%s logits worst element error %.3g", model, worst);
    free(logits);
    CK_OK(mhub_gpt_backward(m, 1.0f / (float)n));
    compare_params(m, model, "grad", true, false, 1e-4);

    /* 3 AdamW steps on the same batch, from the same start */
    const char *adam = mhub_safetensors_metadata(golden, "adamw");
    ck_assert_ptr_nonnull(adam);
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_ADAMW);
    oc.lr = 1e-2f;
    oc.beta1 = 0.9f;
    oc.beta2 = 0.95f;
    oc.eps = 1e-5f;
    oc.weight_decay = 0.1f;
    ck_assert_ptr_nonnull(strstr(adam, "\"lr\": 0.01"));
    ck_assert_ptr_nonnull(strstr(adam, "\"beta2\": 0.95"));
    ck_assert_ptr_nonnull(strstr(adam, "\"weight_decay\": 0.1"));
    ck_assert_ptr_nonnull(strstr(adam, "\"eps\": 1e-05"));
    mhub_param_list *pl = mhub_gpt_params(m);
    float **state = calloc((size_t)pl->count * 2, sizeof *state);
    for (int i = 0; i < 2 * pl->count; i++)
        state[i] = calloc((size_t)pl->items[i / 2].value.numel, sizeof(float));
    load(m, model, "param");
    for (int step = 1; step <= 3; step++) {
        CK_OK(mhub_param_list_zero_grad(pl));
        CK_OK(mhub_gpt_forward(m, tokens, targets, b, t, NULL));
        CK_OK(mhub_gpt_backward(m, 1.0f / (float)n));
        for (int i = 0; i < pl->count; i++)
            CK_OK(mhub_optim_update(be, &oc, pl->items[i].value.data, pl->items[i].grad.data,
                                    &state[2 * i], pl->items[i].value.numel, step));
    }
    compare_params(m, model, "step3", false, true, 1e-4);
    for (int i = 0; i < 2 * pl->count; i++)
        free(state[i]);
    free(state);
    free((void *)tokens);
    free((void *)targets);
    mhub_gpt_free(m);
    mhub_config_free(&cfg->base);
}

START_TEST(test_gpt2_matches_pytorch) { check_model("gpt2"); }
END_TEST

START_TEST(test_llama_matches_pytorch) { check_model("llama"); }
END_TEST

/* Central differences of the mean loss (summed in double) against the
 * analytic gradient, for a few elements of several parameters. */
START_TEST(test_finite_differences)
{
    const char *models[] = {"gpt2", "llama"};
    for (int k = 0; k < 2; k++) {
        mhub_gpt_config *cfg = golden_config(models[k]);
        int b = golden_int("batch"), t = golden_int("seq");
        int64_t n = (int64_t)b * t;
        mhub_gpt *m = build(cfg, b);
        load(m, models[k], "param");
        const int32_t *tokens = golden_ids(models[k], "tokens", n);
        const int32_t *targets = golden_ids(models[k], "targets", n);
        mhub_param_list *pl = mhub_gpt_params(m);
        CK_OK(mhub_param_list_zero_grad(pl));
        CK_OK(mhub_gpt_forward(m, tokens, targets, b, t, NULL));
        CK_OK(mhub_gpt_backward(m, 1.0f / (float)n));
        int checked = 0;
        for (int i = 0; i < pl->count; i += 3) {
            mhub_param *p = &pl->items[i];
            float *w = p->value.data;
            const float *g = p->grad.data;
            /* the element with the largest gradient: a clear signal */
            int64_t j = 0;
            for (int64_t e = 1; e < p->value.numel; e++)
                if (fabsf(g[e]) > fabsf(g[j]))
                    j = e;
            if (fabsf(g[j]) < 1e-4f)
                continue;
            float keep = w[j], h = 1e-2f * fmaxf(fabsf(keep), 0.1f), lp = 0, lm = 0;
            w[j] = keep + h;
            CK_OK(mhub_gpt_forward(m, tokens, targets, b, t, &lp));
            w[j] = keep - h;
            CK_OK(mhub_gpt_forward(m, tokens, targets, b, t, &lm));
            w[j] = keep;
            double fd = ((double)lp - (double)lm) / (2.0 * ((double)(keep + h) - keep));
            ck_assert_msg(mhub_test_relerr(g[j], fd, 1e-3) < 3e-2,
                          "%s %s[%lld]: analytic %.6g, finite difference %.6g", models[k],
                          p->name, (long long)j, g[j], fd);
            checked++;
        }
        ck_assert_int_ge(checked, 5);
        free((void *)tokens);
        free((void *)targets);
        mhub_gpt_free(m);
        mhub_config_free(&cfg->base);
    }
}
END_TEST

START_TEST(test_bad_input)
{
    mhub_gpt_config *cfg = golden_config("gpt2");
    mhub_gpt *m = build(cfg, 2);
    int32_t tokens[16] = {0}, targets[16] = {0};
    CK_FAILS(MHUB_ERR_STATE, mhub_gpt_backward(m, 1.0f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_forward(m, tokens, targets, 3, 8, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_forward(m, tokens, targets, 1, 17, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_forward(m, NULL, targets, 1, 8, NULL));
    tokens[3] = 64;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_forward(m, tokens, targets, 1, 8, NULL));
    tokens[3] = 0;
    targets[5] = -1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_gpt_forward(m, tokens, targets, 1, 8, NULL));
    targets[5] = 0;
    float loss;
    CK_OK(mhub_gpt_forward(m, tokens, targets, 1, 8, &loss));
    ck_assert(isfinite(loss));
    mhub_gpt_free(m);
    /* a pipeline chunk holds parameters but cannot run */
    cfg->base.pipeline_model_parallel_size = 2;
    mhub_provide_args a = {.pre_process = true, .post_process = false, .vp_stage = -1,
                           .pp_size = 2, .vp_size = 1, .tp_size = 1, .backend = be,
                           .seed = 5, .tp_seed = 6, .micro_batch = 2};
    CK_OK(mhub_gpt_create(cfg, &a, &m));
    ck_assert(!mhub_gpt_runnable(m));
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_gpt_forward(m, tokens, targets, 1, 8, NULL));
    mhub_gpt_free(m);
    mhub_config_free(&cfg->base);
}
END_TEST

/* A few SGD steps on one batch lower the loss: the model learns. */
START_TEST(test_loss_falls)
{
    mhub_gpt_config *cfg = golden_config("llama");
    mhub_gpt *m = build(cfg, 2);
    int32_t tokens[16], targets[16];
    for (int i = 0; i < 16; i++) {
        tokens[i] = (7 * i + 3) % 64;
        targets[i] = (7 * i + 10) % 64;
    }
    mhub_param_list *pl = mhub_gpt_params(m);
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    oc.lr = 0.5f;
    float first = 0, last = 0;
    for (int s = 0; s < 20; s++) {
        CK_OK(mhub_param_list_zero_grad(pl));
        CK_OK(mhub_gpt_forward(m, tokens, targets, 2, 8, &last));
        if (s == 0)
            first = last;
        CK_OK(mhub_gpt_backward(m, 1.0f / 16));
        for (int i = 0; i < pl->count; i++)
            CK_OK(mhub_optim_update(be, &oc, pl->items[i].value.data, pl->items[i].grad.data,
                                    NULL, pl->items[i].value.numel, s + 1));
    }
    ck_assert_msg(last < 0.5f * first, "loss %.4f -> %.4f", first, last);
    mhub_gpt_free(m);
    mhub_config_free(&cfg->base);
}
END_TEST

/* ---- per-token losses ---------------------------------------------------------- */

/* -log softmax(row)[target], in double. */
static double ref_token_loss(const float *row, int64_t v, int32_t target)
{
    double top = row[0];
    for (int64_t j = 1; j < v; j++)
        top = fmax(top, row[j]);
    double sum = 0;
    for (int64_t j = 0; j < v; j++)
        sum += exp((double)row[j] - top);
    return top + log(sum) - (double)row[target];
}

/* Each of the n losses against the cross-entropy of its row of `logits`
 * [n, v], and their mean against the forward's mean loss. */
static void expect_token_losses(mhub_gpt *m, const float *logits, int64_t v,
                                const int32_t *targets, int64_t n, float mean_loss,
                                const char *what)
{
    const float *losses = mhub_gpt_losses(m);
    ck_assert_ptr_nonnull(losses);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        double want = ref_token_loss(logits + i * v, v, targets[i]);
        ck_assert_msg(mhub_test_relerr(losses[i], want, 1e-3) < 1e-5,
                      "%s token %lld: loss %.9g, log-softmax says %.9g", what, (long long)i,
                      losses[i], want);
        sum += losses[i];
    }
    ck_assert_msg(mhub_test_relerr(mean_loss, sum / (double)n, 1e-30) < 1e-6,
                  "%s: mean loss %.9g, the tokens' mean %.9g", what, mean_loss, sum / (double)n);
}

/* The golden models: per-token losses from PyTorch's logits. */
START_TEST(test_token_losses_match_pytorch)
{
    const char *models[] = {"gpt2", "llama"};
    for (int k = 0; k < 2; k++) {
        mhub_gpt_config *cfg = golden_config(models[k]);
        int b = golden_int("batch"), t = golden_int("seq");
        int64_t n = (int64_t)b * t, v = mhub_gpt_padded_vocab_size(cfg);
        mhub_gpt *m = build(cfg, b);
        load(m, models[k], "param");
        const int32_t *tokens = golden_ids(models[k], "tokens", n);
        const int32_t *targets = golden_ids(models[k], "targets", n);
        float loss = 0;
        CK_OK(mhub_gpt_forward(m, tokens, targets, b, t, &loss));
        float *logits = malloc((size_t)(n * v) * sizeof *logits);
        char key[64];
        snprintf(key, sizeof key, "%s/logits", models[k]);
        int64_t shape[2] = {n, v};
        CK_OK(mhub_safetensors_read_f32(golden, key, shape, 2, logits));
        expect_token_losses(m, logits, v, targets, n, loss, models[k]);
        free(logits);
        free((void *)tokens);
        free((void *)targets);
        mhub_gpt_free(m);
        mhub_config_free(&cfg->base);
    }
}
END_TEST

/* A padded vocabulary (60 tokens in 64 rows): the softmax runs over the
 * padded rows too, as Megatron's does; a smaller batch than the model
 * was sized for; and no losses where there is no forward to give them. */
START_TEST(test_token_losses_padded_vocab)
{
    mhub_gpt_config *cfg = golden_config("gpt2");
    cfg->vocab_size = 60;
    cfg->make_vocab_size_divisible_by = 16;
    int64_t v = mhub_gpt_padded_vocab_size(cfg);
    ck_assert_int_eq(v, 64);
    mhub_gpt *m = build(cfg, 3);
    int32_t tokens[2 * 7], targets[2 * 7];
    for (int i = 0; i < 14; i++) {
        tokens[i] = (11 * i + 5) % 60;
        targets[i] = (13 * i + 59) % 60; /* 59, the last real token, first */
    }
    float loss = 0;
    CK_OK(mhub_gpt_forward(m, tokens, targets, 2, 7, &loss));
    expect_token_losses(m, mhub_gpt_logits(m), v, targets, 14, loss, "padded");
    mhub_gpt_free(m);

    ck_assert_ptr_null(mhub_gpt_losses(NULL));
    cfg->base.pipeline_model_parallel_size = 2;
    mhub_provide_args a = {.pre_process = true, .post_process = false, .vp_stage = -1,
                           .pp_size = 2, .vp_size = 1, .tp_size = 1, .backend = be,
                           .seed = 5, .tp_seed = 6, .micro_batch = 2};
    CK_OK(mhub_gpt_create(cfg, &a, &m));
    ck_assert_ptr_null(mhub_gpt_losses(m)); /* holds parameters, never runs */
    mhub_gpt_free(m);
    mhub_config_free(&cfg->base);
}
END_TEST

/* ---- 16-bit parameters ------------------------------------------------------ */

static uint16_t to_half(mhub_dtype dt, float f)
{
    return dt == MHUB_BF16 ? mhub_f32_to_bf16(f) : mhub_f32_to_f16(f);
}

static float from_half(mhub_dtype dt, uint16_t h)
{
    return dt == MHUB_BF16 ? mhub_bf16_to_f32(h) : mhub_f16_to_f32(h);
}

/* A runnable chunk of cfg with `dt` parameters (bf16/fp16 in the config,
 * as "bf16": true does for mhub train). */
static mhub_gpt *build_dtype(mhub_gpt_config *cfg, int64_t batch, mhub_dtype dt)
{
    cfg->base.bf16 = dt == MHUB_BF16;
    cfg->base.fp16 = dt == MHUB_F16;
    mhub_gpt *m = build(cfg, batch);
    cfg->base.bf16 = cfg->base.fp16 = false;
    mhub_param_list *pl = mhub_gpt_params(m);
    for (int i = 0; i < pl->count; i++) {
        ck_assert_int_eq(pl->items[i].value.dtype, dt);
        ck_assert_int_eq(pl->items[i].grad.dtype, MHUB_F32);
    }
    return m;
}

/* Round the f32 model's values to `dt`: both models then hold the same
 * numbers, full in f32 and half in 16 bits. */
static void round_into(mhub_gpt *full, mhub_gpt *half, mhub_dtype dt)
{
    mhub_param_list *pf = mhub_gpt_params(full), *ph = mhub_gpt_params(half);
    ck_assert_int_eq(pf->count, ph->count);
    for (int i = 0; i < pf->count; i++) {
        float *f = pf->items[i].value.data;
        uint16_t *h = ph->items[i].value.data;
        for (int64_t e = 0; e < pf->items[i].value.numel; e++) {
            h[e] = to_half(dt, f[e]);
            f[e] = from_half(dt, h[e]);
        }
    }
}

/* Both models' forward on the golden batch; the loss and logits must
 * agree within 1e-5 relative (compute is f32 in both). */
static void compare_forward(mhub_gpt *full, mhub_gpt *half, const char *what,
                            const int32_t *tokens, const int32_t *targets, int b, int t)
{
    int64_t n = (int64_t)b * t, v = mhub_gpt_padded_vocab_size(mhub_gpt_config_of(full));
    float lf = 0, lh = 0;
    CK_OK(mhub_gpt_forward(full, tokens, targets, b, t, &lf));
    CK_OK(mhub_gpt_forward(half, tokens, targets, b, t, &lh));
    const float *gf = mhub_gpt_logits(full), *gh = mhub_gpt_logits(half);
    double err = norm_relerr(gh, gf, n * v);
    double worst = worst_relerr(gh, gf, n * v, 0.1 * max_abs(gf, n * v));
    fprintf(stderr, "%s: loss %.9g vs f32 %.9g, logits relative error %.3g (worst %.3g)\n",
            what, lh, lf, err, worst);
    ck_assert_msg(mhub_test_relerr(lh, lf, 1e-30) < 1e-5, "%s loss %.9g vs %.9g", what, lh, lf);
    ck_assert_msg(err < 1e-5 && worst < 1e-5, "%s logits error %.3g (worst %.3g)", what, err,
                  worst);
}

/* Gradients into 16-bit tensors (as an engine re-points them): two
 * backwards give round(round(g) + g) for the f32 gradient g of one,
 * that is, each backward sums in f32 and rounds once. */
static void check_half_grads(mhub_gpt *full, mhub_gpt *half, mhub_dtype dt, const char *what,
                             const int32_t *tokens, const int32_t *targets, int b, int t)
{
    mhub_param_list *pf = mhub_gpt_params(full), *ph = mhub_gpt_params(half);
    mhub_tensor *keep = malloc((size_t)ph->count * sizeof *keep);
    for (int i = 0; i < ph->count; i++) {
        keep[i] = ph->items[i].grad;
        CK_OK(mhub_tensor_alloc(&ph->items[i].grad, be, dt, ph->items[i].value.ndim,
                                ph->items[i].value.shape));
    }
    for (int k = 0; k < 2; k++) {
        CK_OK(mhub_gpt_forward(half, tokens, targets, b, t, NULL));
        CK_OK(mhub_gpt_backward(half, 1.0f / (float)(b * t)));
    }
    int64_t total = 0;
    for (int i = 0; i < ph->count; i++) {
        const float *g = pf->items[i].grad.data;
        const uint16_t *gh = ph->items[i].grad.data;
        for (int64_t e = 0; e < ph->items[i].grad.numel; e++) {
            uint16_t want = to_half(dt, from_half(dt, to_half(dt, g[e])) + g[e]);
            ck_assert_msg(gh[e] == want, "%s %s[%lld]: 16-bit gradient 0x%04x, want 0x%04x",
                          what, ph->items[i].name, (long long)e, gh[e], want);
        }
        total += ph->items[i].grad.numel;
        mhub_tensor_free(&ph->items[i].grad);
        ph->items[i].grad = keep[i];
    }
    fprintf(stderr, "%s: %lld 16-bit gradient elements rounded once per backward\n", what,
            (long long)total);
    free(keep);
}

/* A `dt` model computes what an f32 model on the same rounded weights
 * computes: the logits, the loss and (into f32 gradients) the gradients;
 * into 16-bit gradients it rounds once per backward. */
static void check_half_model(const char *model, mhub_dtype dt)
{
    char what[64];
    snprintf(what, sizeof what, "%s %s", model, mhub_dtype_name(dt));
    mhub_gpt_config *cfg = golden_config(model);
    int b = golden_int("batch"), t = golden_int("seq");
    int64_t n = (int64_t)b * t;
    mhub_gpt *full = build(cfg, b), *half = build_dtype(cfg, b, dt);
    load(full, model, "param");
    round_into(full, half, dt);
    const int32_t *tokens = golden_ids(model, "tokens", n);
    const int32_t *targets = golden_ids(model, "targets", n);
    CK_OK(mhub_param_list_zero_grad(mhub_gpt_params(full)));
    CK_OK(mhub_param_list_zero_grad(mhub_gpt_params(half)));
    compare_forward(full, half, what, tokens, targets, b, t);
    CK_OK(mhub_gpt_backward(full, 1.0f / (float)n));
    CK_OK(mhub_gpt_backward(half, 1.0f / (float)n));
    mhub_param_list *pf = mhub_gpt_params(full), *ph = mhub_gpt_params(half);
    double worst = 0;
    for (int i = 0; i < pf->count; i++) {
        int64_t e = pf->items[i].grad.numel;
        double err = norm_relerr(ph->items[i].grad.data, pf->items[i].grad.data, e);
        ck_assert_msg(err < 1e-5, "%s %s: gradient relative error %.3g", what,
                      pf->items[i].name, err);
        worst = fmax(worst, err);
    }
    fprintf(stderr, "%s: f32 gradients, worst relative error %.3g\n", what, worst);
    check_half_grads(full, half, dt, what, tokens, targets, b, t);
    free((void *)tokens);
    free((void *)targets);
    mhub_gpt_free(full);
    mhub_gpt_free(half);
    mhub_config_free(&cfg->base);
}

START_TEST(test_bf16_matches_f32)
{
    check_half_model("gpt2", MHUB_BF16); /* tied embedding, LayerNorm, biases */
    check_half_model("llama", MHUB_BF16);
}
END_TEST

START_TEST(test_f16_matches_f32)
{
    check_half_model("gpt2", MHUB_F16);
    check_half_model("llama", MHUB_F16);
}
END_TEST

/* A bf16 model learns: SGD on f32 main copies (as the engines keep
 * them), rounded into the bf16 parameters after each step. */
START_TEST(test_bf16_loss_falls)
{
    mhub_gpt_config *cfg = golden_config("llama");
    mhub_gpt *m = build_dtype(cfg, 2, MHUB_BF16);
    int32_t tokens[16], targets[16];
    for (int i = 0; i < 16; i++) {
        tokens[i] = (7 * i + 3) % 64;
        targets[i] = (7 * i + 10) % 64;
    }
    mhub_param_list *pl = mhub_gpt_params(m);
    float **main32 = calloc((size_t)pl->count, sizeof *main32);
    for (int i = 0; i < pl->count; i++) {
        const uint16_t *h = pl->items[i].value.data;
        main32[i] = malloc((size_t)pl->items[i].value.numel * sizeof(float));
        for (int64_t e = 0; e < pl->items[i].value.numel; e++)
            main32[i][e] = mhub_bf16_to_f32(h[e]);
    }
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    oc.lr = 0.5f;
    float first = 0, last = 0;
    for (int s = 0; s < 20; s++) {
        CK_OK(mhub_param_list_zero_grad(pl));
        CK_OK(mhub_gpt_forward(m, tokens, targets, 2, 8, &last));
        if (s == 0)
            first = last;
        CK_OK(mhub_gpt_backward(m, 1.0f / 16));
        for (int i = 0; i < pl->count; i++) {
            uint16_t *h = pl->items[i].value.data;
            CK_OK(mhub_optim_update(be, &oc, main32[i], pl->items[i].grad.data, NULL,
                                    pl->items[i].value.numel, s + 1));
            for (int64_t e = 0; e < pl->items[i].value.numel; e++)
                h[e] = mhub_f32_to_bf16(main32[i][e]);
        }
    }
    fprintf(stderr, "bf16 llama, 20 SGD steps: loss %.4f -> %.4f\n", first, last);
    ck_assert_msg(last < 0.5f * first, "loss %.4f -> %.4f", first, last);
    for (int i = 0; i < pl->count; i++)
        free(main32[i]);
    free(main32);
    mhub_gpt_free(m);
    mhub_config_free(&cfg->base);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("gpt_model");
    TCase *tc = tcase_create("gpt_model");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_gpt2_matches_pytorch);
    tcase_add_test(tc, test_llama_matches_pytorch);
    tcase_add_test(tc, test_finite_differences);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_loss_falls);
    tcase_add_test(tc, test_token_losses_match_pytorch);
    tcase_add_test(tc, test_token_losses_padded_vocab);
    tcase_add_test(tc, test_bf16_matches_f32);
    tcase_add_test(tc, test_f16_matches_f32);
    tcase_add_test(tc, test_bf16_loss_falls);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
