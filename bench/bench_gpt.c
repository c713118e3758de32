/* bench_gpt.c - one GPT training step (forward, backward, AdamW) on a
 * backend, next to the floor a BLAS-based step cannot beat: the same
 * step's weight GEMMs alone, timed in the same run.
 *
 *   bench/bench_gpt [--shape 124m|small] [--batch B] [--seq T] [--threads N]
 *                   [--steps N] [--json] [--backend cpu|cuda]
 *                   [--matmul f32|tf32|bf16] [--peak-tflops P] [--profile N]
 *
 * On cuda, parameters and activations stay f32 and --matmul picks the
 * GEMMs' input rounding (bf16: tensor cores with f32 accumulation, as
 * autocast does); with --peak-tflops (the card's dense peak for that
 * precision) the model FLOP utilisation is printed too.
 *
 * 124m: GPT-2 small (12 layers, 12 heads, width 768, vocab 50257, tied);
 * small: 6 layers, 8 heads, width 512, vocab 256. Prints the median
 * ms/step over --steps timed steps (after 1 warmup), tokens/s, GFLOP/s
 * by llm.c's count (6 per matmul parameter per token plus attention) and
 * the ratio to the GEMM floor. --profile N then runs N more steps on the
 * profiling backend (mhub_profile_backend_create), each op waited for,
 * and prints where the time goes: op, calls, ms, share, TFLOP/s. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mhub/mhub.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp);
    return v[n / 2];
}

typedef struct opts {
    const char *shape, *backend, *matmul;
    int batch, seq, threads, steps, profile;
    double peak_tflops;
    bool json;
} opts;

static bool parse(int argc, char **argv, opts *o)
{
    *o = (opts){.shape = "124m", .backend = "cpu", .matmul = "f32", .batch = 4, .seq = 64,
                .threads = 2, .steps = 5};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        }
        if (!v)
            return false;
        i++;
        if (!strcmp(a, "--shape"))
            o->shape = v;
        else if (!strcmp(a, "--batch"))
            o->batch = atoi(v);
        else if (!strcmp(a, "--seq"))
            o->seq = atoi(v);
        else if (!strcmp(a, "--threads"))
            o->threads = atoi(v);
        else if (!strcmp(a, "--steps"))
            o->steps = atoi(v);
        else if (!strcmp(a, "--backend"))
            o->backend = v;
        else if (!strcmp(a, "--matmul"))
            o->matmul = v;
        else if (!strcmp(a, "--peak-tflops"))
            o->peak_tflops = atof(v);
        else if (!strcmp(a, "--profile"))
            o->profile = atoi(v);
        else
            return false;
    }
    if (strcmp(o->backend, "cpu") && strcmp(o->backend, "cuda"))
        return false;
    return o->batch > 0 && o->seq > 0 && o->threads > 0 && o->steps > 0 && o->profile >= 0 &&
           (!strcmp(o->shape, "124m") || !strcmp(o->shape, "small"));
}

static mhub_gpt_config *shape_config(const opts *o)
{
    char text[512];
    bool big = !strcmp(o->shape, "124m");
    snprintf(text, sizeof text,
             "{\"provider\": \"gpt\", \"num_layers\": %d, \"hidden_size\": %d, "
             "\"num_attention_heads\": %d, \"seq_length\": %d, \"vocab_size\": %d, "
             "\"init_method\": \"normal\", \"init_method_std\": 0.02}",
             big ? 12 : 6, big ? 768 : 512, big ? 12 : 8, o->seq, big ? 50257 : 256);
    mhub_provider_config *cfg = NULL;
    if (mhub_config_from_json(text, strlen(text), "bench", MHUB_CONFIG_STRICT, &cfg) != MHUB_OK)
        return NULL;
    return (mhub_gpt_config *)cfg;
}

/* The step's weight GEMMs alone (forward, input gradient, weight
 * gradient of every linear layer and the head) on buffers of the right
 * shapes: what no BLAS-based step can beat. */
static double gemm_floor(mhub_backend *be, const mhub_gpt_config *c, int64_t n)
{
    int64_t h = c->hidden_size, f = mhub_gpt_ffn_size(c), v = mhub_gpt_padded_vocab_size(c);
    int64_t q = 3 * h;
    int64_t shapes[5][2] = {{q, h}, {h, h}, {f, h}, {h, f}, {v, h}};
    int64_t biggest = v * h > f * h ? v * h : f * h;
    int64_t acts = n * (v > f ? v : f);
    float *w, *g, *x, *y, *dx;
    be->ops->alloc(be, (size_t)biggest * 4, (void **)&w);
    be->ops->alloc(be, (size_t)biggest * 4, (void **)&g);
    be->ops->alloc(be, (size_t)acts * 4, (void **)&x);
    be->ops->alloc(be, (size_t)acts * 4, (void **)&y);
    be->ops->alloc(be, (size_t)acts * 4, (void **)&dx);
    double times[5];
    for (int r = 0; r < 5; r++) {
        be->ops->synchronize(be);
        double t0 = now();
        for (int k = 0; k < 5; k++) {
            int reps = k < 4 ? c->num_layers : 1;
            int64_t out = shapes[k][0], in = shapes[k][1];
            for (int l = 0; l < reps; l++) {
                be->ops->gemm(be, false, true, n, out, in, 1, x, in, w, in, 0, y, out);
                be->ops->gemm(be, false, false, n, in, out, 1, y, out, w, in, 0, dx, in);
                be->ops->gemm(be, true, false, out, in, n, 1, y, out, x, in, 1, g, in);
            }
        }
        be->ops->synchronize(be);
        times[r] = now() - t0;
    }
    float *bufs[] = {w, g, x, y, dx};
    for (int i = 0; i < 5; i++)
        be->ops->free(be, bufs[i]);
    return median(times, 5);
}

static mhub_status make_backend(const opts *o, mhub_backend **be)
{
    if (!strcmp(o->backend, "cpu"))
        return mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = o->threads}, be);
    mhub_cuda_options co = {.device = -1};
    for (int p = MHUB_MATMUL_F32; p <= MHUB_MATMUL_BF16; p++)
        if (!strcmp(o->matmul, mhub_matmul_precision_name((mhub_matmul_precision)p)))
            co.matmul = (mhub_matmul_precision)p;
    return mhub_cuda_backend_create(&co, be);
}

/* Tokens and targets in backend memory. */
static int32_t *upload_ids(mhub_backend *be, int64_t n, int64_t mul, int64_t add, int64_t mod)
{
    int32_t *host = malloc((size_t)n * 4), *dev = NULL;
    for (int64_t i = 0; i < n; i++)
        host[i] = (int32_t)((i * mul + add) % mod);
    if (be->ops->alloc(be, (size_t)n * 4, (void **)&dev) != MHUB_OK ||
        be->ops->copy(be, dev, host, (size_t)n * 4, MHUB_COPY_HOST_TO_DEVICE) != MHUB_OK)
        dev = NULL;
    free(host);
    return dev;
}

/* A model on a backend with its AdamW state, tokens and targets. */
typedef struct trainer {
    mhub_backend *be;
    mhub_gpt *m;
    mhub_param_list *pl;
    mhub_optim_config oc;
    float **state;
    int32_t *tokens, *targets;
    int64_t n;
} trainer;

static mhub_status trainer_open(trainer *tr, mhub_backend *be, const mhub_gpt_config *cfg,
                                const opts *o)
{
    *tr = (trainer){.be = be, .n = (int64_t)o->batch * o->seq};
    mhub_provide_args a = {.pre_process = true, .post_process = true, .vp_stage = -1,
                           .pp_size = 1, .vp_size = 1, .tp_size = 1, .backend = be, .seed = 1,
                           .tp_seed = 2, .micro_batch = o->batch};
    MHUB_TRY(mhub_gpt_create(cfg, &a, &tr->m));
    tr->pl = mhub_gpt_params(tr->m);
    tr->tokens = upload_ids(be, tr->n, 7919, 0, cfg->vocab_size);
    tr->targets = upload_ids(be, tr->n, 104729, 1, cfg->vocab_size);
    tr->state = calloc((size_t)tr->pl->count * 2, sizeof *tr->state);
    if (!tr->tokens || !tr->targets || !tr->state)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no memory for the tokens, targets or state");
    mhub_optim_config_init(&tr->oc, MHUB_OPTIM_ADAMW);
    for (int i = 0; i < 2 * tr->pl->count; i++)
        MHUB_TRY(be->ops->alloc(be, (size_t)tr->pl->items[i / 2].value.numel * 4,
                                (void **)&tr->state[i]));
    return MHUB_OK;
}

static void trainer_close(trainer *tr)
{
    for (int i = 0; tr->state && i < 2 * tr->pl->count; i++)
        tr->be->ops->free(tr->be, tr->state[i]);
    free(tr->state);
    tr->be->ops->free(tr->be, tr->tokens);
    tr->be->ops->free(tr->be, tr->targets);
    mhub_gpt_free(tr->m);
}

/* `steps` training steps (forward, backward, AdamW), each one's seconds
 * in t[] when t is not NULL. */
static mhub_status run_steps(trainer *tr, const opts *o, int steps, double *t)
{
    mhub_backend *be = tr->be;
    mhub_param_list *pl = tr->pl;
    for (int s = 0; s < steps; s++) {
        double t0 = now();
        MHUB_TRY(mhub_param_list_zero_grad(pl));
        MHUB_TRY(mhub_gpt_forward(tr->m, tr->tokens, tr->targets, o->batch, o->seq, NULL));
        MHUB_TRY(mhub_gpt_backward(tr->m, 1.0f / (float)tr->n));
        for (int i = 0; i < pl->count; i++)
            MHUB_TRY(mhub_optim_update(be, &tr->oc, pl->items[i].value.data,
                                       pl->items[i].grad.data, &tr->state[2 * i],
                                       pl->items[i].value.numel, s + 1));
        MHUB_TRY(be->ops->synchronize(be)); /* an asynchronous backend's step ends here */
        if (t)
            t[s] = now() - t0;
    }
    return MHUB_OK;
}

/* --profile: the same training on the profiling backend, one step to
 * warm up, then o->profile steps booked op by op. */
static mhub_status profile_steps(mhub_backend *be, const mhub_gpt_config *cfg, const opts *o)
{
    mhub_backend *p = NULL;
    MHUB_TRY(mhub_profile_backend_create(be, &p));
    trainer tr;
    mhub_status s = trainer_open(&tr, p, cfg, o);
    if (s == MHUB_OK)
        s = run_steps(&tr, o, 1, NULL);
    if (s == MHUB_OK)
        s = mhub_profile_backend_reset(p);
    if (s == MHUB_OK)
        s = run_steps(&tr, o, o->profile, NULL);
    if (s == MHUB_OK) {
        printf("profile of %d step(s), each op waited for:\n", o->profile);
        s = mhub_profile_backend_print(p, stdout);
    }
    trainer_close(&tr);
    mhub_backend_free(p);
    return s;
}

int main(int argc, char **argv)
{
    opts o;
    if (!parse(argc, argv, &o)) {
        fprintf(stderr, "usage: bench_gpt [--shape 124m|small] [--batch B] [--seq T] "
                        "[--threads N] [--steps N] [--json] [--backend cpu|cuda] "
                        "[--matmul f32|tf32|bf16] [--peak-tflops P] [--profile N]\n");
        return 2;
    }
    mhub_backend *be;
    mhub_gpt_config *cfg = shape_config(&o);
    if (!cfg || make_backend(&o, &be))
        return fprintf(stderr, "bench_gpt: %s\n", mhub_last_error()), 1;
    int64_t n = (int64_t)o.batch * o.seq;
    trainer tr;
    double *t = malloc((size_t)(o.steps + 1) * sizeof *t);
    if (trainer_open(&tr, be, cfg, &o) != MHUB_OK || run_steps(&tr, &o, o.steps + 1, t) != MHUB_OK)
        return fprintf(stderr, "bench_gpt: %s\n", mhub_last_error()), 1;
    int64_t params = mhub_param_list_numel(tr.pl);
    double step = median(t + 1, o.steps);
    double floor_s = gemm_floor(be, cfg, n);
    double flops = mhub_gpt_flops_per_step(cfg, o.batch, o.seq);
    double mfu = o.peak_tflops > 0 ? flops / step / (o.peak_tflops * 1e12) : -1;
    if (o.json)
        printf("{\"shape\":\"%s\",\"backend\":\"%s\",\"matmul\":\"%s\",\"params\":%lld,"
               "\"batch\":%d,\"seq\":%d,\"threads\":%d,"
               "\"ms_per_step\":%.2f,\"tokens_per_s\":%.1f,\"gflops\":%.2f,"
               "\"gemm_floor_ms\":%.2f,\"ratio_to_floor\":%.3f,\"mfu\":%.4f}\n",
               o.shape, o.backend, o.matmul, (long long)params, o.batch, o.seq, o.threads,
               1e3 * step, n / step, flops / step / 1e9, 1e3 * floor_s, step / floor_s, mfu);
    else if (!strcmp(o.backend, "cpu"))
        printf("%-5s %lld params  B=%d T=%d  %d thread(s): %.1f ms/step, %.0f tokens/s, "
               "%.1f GFLOP/s; weight GEMMs alone %.1f ms: %.2fx the floor\n",
               o.shape, (long long)params, o.batch, o.seq, o.threads, 1e3 * step, n / step,
               flops / step / 1e9, 1e3 * floor_s, step / floor_s);
    else {
        char mfu_text[48] = "";
        if (mfu >= 0)
            snprintf(mfu_text, sizeof mfu_text, ", MFU %.1f%%", 100 * mfu);
        printf("%-5s %lld params  B=%d T=%d  cuda, %s GEMMs: %.2f ms/step, %.0f tokens/s, "
               "%.1f TFLOP/s%s; weight GEMMs alone %.2f ms: %.2fx the floor\n",
               o.shape, (long long)params, o.batch, o.seq, o.matmul, 1e3 * step, n / step,
               flops / step / 1e12, mfu_text, 1e3 * floor_s, step / floor_s);
    }
    trainer_close(&tr);
    free(t);
    if (o.profile > 0 && profile_steps(be, cfg, &o) != MHUB_OK)
        return fprintf(stderr, "bench_gpt: %s\n", mhub_last_error()), 1;
    return 0;
}
