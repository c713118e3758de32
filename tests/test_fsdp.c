/* test_fsdp.c - the FSDP (ZeRO-3) engine under mpiexec -n 1, 2, 4:
 * equivalence with one process on the same global batch (SGD-momentum
 * and AdamW, reshard and prefetch on/off, gradient accumulation, unit
 * sizes not divisible by dp), memory held per rank as the CPU allocator
 * measures it against the formula, the gather/prefetch schedule, hook
 * misuse failing loudly, NaN reports, bad input, and the model being
 * whole again after mhub_fsdp_free; bf16/f16 models (16-bit gathers, f32
 * masters) against a one-process run that rounds gradients where the
 * ranks do (train_reference_16bit). */
#include <stdlib.h>
#include <string.h>

#include "testutil_mpi.h"
#include "testutil_reduce.h"

/* be, world, setup and teardown: the engine fixture of testutil_mpi.h */
MHUB_TEST_ENGINE_FIXTURE

/* Units of out * (in + 1) elements: 169, 126, 50. None is a multiple of
 * 4 and the first is odd, so every dp > 1 pads. */
static const mhub_mlp_config odd_cfg = {
    .inputs = 12, .num_hidden = 2, .hidden = {13, 9}, .classes = 5};
/* Units of 15 and 8 elements: at dp 4 a shard of 15 is 4 elements. */
static const mhub_mlp_config tiny_cfg = {
    .inputs = 4, .num_hidden = 1, .hidden = {3}, .classes = 2};

enum { GLOBAL_BATCH = 16, STEPS = 3, MAX_INPUTS = 64 };

typedef struct run_options {
    const mhub_mlp_config *model;
    mhub_optim_config optim;
    mhub_fsdp_options fsdp;
    mhub_ddp_config ddp;
    int accum;              /* micro-batches per step */
} run_options;

/* Rows [first, first + rows) of step `step`'s global batch. */
static void batch(mhub_synthetic_task *task, int step, int64_t first, int64_t rows, float *x,
                  int32_t *y)
{
    CK_OK(mhub_synthetic_batch(task, (uint64_t)step * GLOBAL_BATCH + (uint64_t)first, rows, x,
                               y));
}

/* ---- the single-process reference -------------------------------------- */

/* The whole global batch in one process, the same update rule applied to
 * each full parameter with its own state arrays. */
static void train_single(mhub_mlp *m, const run_options *o)
{
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, o->model->inputs, o->model->classes, 9));
    mhub_param_list *pl = mhub_mlp_params(m);
    int k = mhub_optim_state_arrays(&o->optim);
    float *state[32][2] = {{NULL}};
    ck_assert_int_le(pl->count, 32);
    for (int p = 0; p < pl->count; p++)
        for (int a = 0; a < k; a++)
            state[p][a] = calloc((size_t)pl->items[p].value.numel, sizeof(float));
    float x[GLOBAL_BATCH * MAX_INPUTS];
    int32_t y[GLOBAL_BATCH];
    for (int s = 0; s < STEPS; s++) {
        CK_OK(mhub_param_list_zero_grad(pl));
        batch(&task, s, 0, GLOBAL_BATCH, x, y);
        CK_OK(mhub_mlp_forward(m, x, y, GLOBAL_BATCH, NULL));
        CK_OK(mhub_mlp_backward(m, 1.0f / GLOBAL_BATCH));
        for (int p = 0; p < pl->count; p++)
            CK_OK(mhub_optim_update(be, &o->optim, pl->items[p].value.data,
                                    pl->items[p].grad.data, state[p],
                                    pl->items[p].value.numel, s + 1));
    }
    for (int p = 0; p < pl->count; p++)
        for (int a = 0; a < k; a++)
            free(state[p][a]);
    mhub_synthetic_free(&task);
}

/* ---- FSDP training --------------------------------------------------------- */

static mhub_fsdp *make_engine(mhub_mlp *m, const run_options *o)
{
    mhub_fsdp *f = NULL;
    CK_OK(mhub_fsdp_create(mhub_mlp_params(m), world, &o->ddp, &o->fsdp, &o->optim, &f));
    mhub_unit_hooks h;
    CK_OK(mhub_fsdp_unit_hooks(f, &h));
    mhub_mlp_set_unit_hooks(m, &h);
    return f;
}

/* One optimizer step on this rank's slice of the global batch, in
 * o->accum micro-batches. Each rank's loss is the mean over its own
 * samples; the engine divides the sum over ranks by dp. */
static void fsdp_step(mhub_mlp *m, mhub_fsdp *f, mhub_synthetic_task *task, const run_options *o,
                      int s)
{
    int64_t local = GLOBAL_BATCH / world->size, micro = local / o->accum;
    float x[GLOBAL_BATCH * MAX_INPUTS];
    int32_t y[GLOBAL_BATCH];
    CK_OK(mhub_fsdp_zero_grad(f));
    for (int k = 0; k < o->accum; k++) {
        batch(task, s, world->rank * local + k * micro, micro, x, y);
        CK_OK(mhub_mlp_forward(m, x, y, micro, NULL));
        CK_OK(mhub_mlp_backward(m, 1.0f / (float)local));
    }
    CK_OK(mhub_fsdp_finish_grad_sync(f));
    CK_OK(mhub_fsdp_step(f));
}

static void train_fsdp(mhub_mlp *m, mhub_fsdp *f, const run_options *o)
{
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, o->model->inputs, o->model->classes, 9));
    for (int s = 0; s < STEPS; s++)
        fsdp_step(m, f, &task, o, s);
    mhub_synthetic_free(&task);
}

/* Max relative difference of two lists' values (and gradients), over
 * all ranks. */
static double max_diff(const mhub_param_list *a, const mhub_param_list *b, bool grads)
{
    double worst = 0;
    for (int p = 0; p < a->count; p++) {
        const mhub_tensor *ta = grads ? &a->items[p].grad : &a->items[p].value;
        const mhub_tensor *tb = grads ? &b->items[p].grad : &b->items[p].value;
        ck_assert_msg(ta->data && tb->data, "'%s' has no storage", a->items[p].name);
        const float *va = ta->data, *vb = tb->data;
        for (int64_t i = 0; i < ta->numel; i++)
            worst = fmax(worst, mhub_test_relerr(va[i], vb[i], 1e-2));
    }
    float w = (float)worst, all = w;
    CK_OK(mhub_comm_allreduce(world, &w, &all, 1, MHUB_F32, MHUB_MAX));
    return all;
}

static void describe(const run_options *o, char *buf, size_t cap)
{
    snprintf(buf, cap, "ranks %d, %s, hidden[0] %d, reshard %d, prefetch %d, accum %d, avg %d",
             world->size, mhub_optim_kind_name(o->optim.kind), o->model->hidden[0],
             o->fsdp.reshard_after_forward, o->fsdp.prefetch, o->accum,
             o->ddp.average_in_collective);
}

/* After STEPS steps: the gathered values match the single-process run,
 * and after mhub_fsdp_free the model's own values and gradients do too. */
static void check_matches_single_process(const run_options *o)
{
    mhub_mlp *dist, *single, *view;
    CK_OK(mhub_mlp_create(o->model, be, GLOBAL_BATCH, 21, &dist));
    CK_OK(mhub_mlp_create(o->model, be, GLOBAL_BATCH, 21, &single));
    CK_OK(mhub_mlp_create(o->model, be, 1, 0, &view));
    mhub_fsdp *f = make_engine(dist, o);
    train_fsdp(dist, f, o);
    train_single(single, o);
    char what[160];
    describe(o, what, sizeof what);
    CK_OK(mhub_fsdp_full_params(f, mhub_mlp_params(view)));
    double diff = max_diff(mhub_mlp_params(view), mhub_mlp_params(single), false);
    ck_assert_msg(diff < 1e-5, "%s: gathered values rel diff %g", what, diff);
    mhub_mlp_set_unit_hooks(dist, NULL);
    mhub_fsdp_free(f);
    diff = max_diff(mhub_mlp_params(dist), mhub_mlp_params(single), false);
    ck_assert_msg(diff < 1e-5, "%s: restored values rel diff %g", what, diff);
    /* the last step's gradient, gathered back from the shards */
    diff = max_diff(mhub_mlp_params(dist), mhub_mlp_params(single), true);
    ck_assert_msg(diff < 1e-5, "%s: restored gradients rel diff %g", what, diff);
    mhub_mlp_free(view);
    mhub_mlp_free(dist);
    mhub_mlp_free(single);
}

/* The optimizers the FSDP runs train with: SGD with momentum, or AdamW
 * with weight decay (default eps). */
static mhub_optim_config test_optim(mhub_optim_kind kind)
{
    mhub_optim_config c;
    mhub_optim_config_init(&c, kind);
    if (kind == MHUB_OPTIM_SGD) {
        c.lr = 0.2f;
        c.momentum = 0.5f;
    } else {
        c.lr = 1e-2f;
        c.weight_decay = 0.01f;
    }
    return c;
}

static void check_all_variants(mhub_optim_kind kind)
{
    const mhub_mlp_config *models[] = {&odd_cfg, &tiny_cfg};
    for (size_t mi = 0; mi < 2; mi++)
        for (int reshard = 0; reshard <= 1; reshard++)
            for (int pf = 0; pf <= 1; pf++)
                for (int accum = 1; accum <= 4; accum += 3) {
                    run_options o = {.model = models[mi], .accum = accum};
                    o.optim = test_optim(kind);
                    mhub_fsdp_options_init(&o.fsdp);
                    o.fsdp.reshard_after_forward = reshard;
                    o.fsdp.prefetch = pf;
                    mhub_ddp_config_init(&o.ddp);
                    o.ddp.average_in_collective = reshard != pf;
                    o.ddp.check_for_nan_in_grad = accum > 1;
                    check_matches_single_process(&o);
                }
}

START_TEST(test_sgd_momentum_matches_single_process)
{
    check_all_variants(MHUB_OPTIM_SGD);
}
END_TEST

START_TEST(test_adamw_matches_single_process)
{
    check_all_variants(MHUB_OPTIM_ADAMW);
}
END_TEST

/* ---- 16-bit models ---------------------------------------------------------- */

/* A parameter list's values as f32 (malloc'd, numel floats in list order). */
static float *values_f32(const mhub_param_list *pl)
{
    int64_t total = mhub_param_list_numel(pl), at = 0;
    float *out = malloc((size_t)total * sizeof(float));
    ck_assert_ptr_nonnull(out);
    for (int p = 0; p < pl->count; p++) {
        const mhub_tensor *t = &pl->items[p].value;
        ck_assert_msg(t->data, "'%s' has no storage", pl->items[p].name);
        CK_OK(be->ops->cast(be, out + at, MHUB_F32, t->data, t->dtype, t->numel));
        at += t->numel;
    }
    return out;
}

/* Max relative difference of two equally long vectors, over all ranks. */
static double max_diff_f32(const float *a, const float *b, int64_t n, double floor)
{
    double worst = 0;
    for (int64_t i = 0; i < n; i++)
        worst = fmax(worst, mhub_test_relerr(a[i], b[i], floor));
    float w = (float)worst, all = w;
    CK_OK(mhub_comm_allreduce(world, &w, &all, 1, MHUB_F32, MHUB_MAX));
    return all;
}

/* The engine's f32 master values and optimizer state of every parameter,
 * into each step's "before" or "after" arrays. Collective. */
static void read_engine_state(mhub_fsdp *f, const mhub_optim_config *o, mhub_test_param_step *st,
                              int count, bool after)
{
    int k = mhub_optim_state_arrays(o);
    for (int p = 0; p < count; p++) {
        CK_OK(mhub_fsdp_get_state(f, p, -1, after ? st[p].master_after : st[p].master));
        for (int a = 0; a < k; a++)
            CK_OK(mhub_fsdp_get_state(f, p, a, after ? st[p].state_after[a] : st[p].state[a]));
    }
}

/* Each rank's gradient in step s, computed in this process by `ref` at the
 * engine's current parameters (its master values rounded to the model
 * dtype, as the gathers carry them). */
static void rank_grads(mhub_mlp *ref, mhub_synthetic_task *task, int s, int ranks,
                       mhub_test_param_step *st)
{
    mhub_param_list *pl = mhub_mlp_params(ref);
    for (int p = 0; p < pl->count; p++)
        CK_OK(be->ops->cast(be, pl->items[p].value.data, pl->items[p].value.dtype, st[p].master,
                            MHUB_F32, pl->items[p].value.numel));
    int64_t local = GLOBAL_BATCH / ranks;
    float x[GLOBAL_BATCH * MAX_INPUTS];
    int32_t y[GLOBAL_BATCH];
    for (int r = 0; r < ranks; r++) {
        CK_OK(mhub_param_list_zero_grad(pl));
        batch(task, s, r * local, local, x, y);
        CK_OK(mhub_mlp_forward(ref, x, y, local, NULL));
        CK_OK(mhub_mlp_backward(ref, 1.0f / (float)local));
        for (int p = 0; p < pl->count; p++)
            memcpy(st[p].grads[r], pl->items[p].grad.data,
                   (size_t)pl->items[p].grad.numel * sizeof(float));
    }
}

/* Train `dist` through `f` for STEPS steps and check every step against
 * the one-process reference of tests/testutil_reduce.h: `ref` (a model of
 * the same shapes) computes each rank's gradient, rounded to the gradient
 * dtype where the ranks round it, and the engine's new master values and
 * optimizer state must be the shared update rule's result for one of the
 * reduced gradients some summation order gives. That holds for whatever
 * order the MPI library adds in, and it fails for an engine that drops a
 * rank's gradient or counts one twice; the second assertion checks that
 * on this very data, by counting the elements that a double-counted
 * gradient would also explain.
 *
 * Why not a trajectory against one process with a tolerance? Where the
 * ranks' slice gradients nearly cancel, rounding each slice to 16 bits
 * and the order of the 16-bit partial sums decide the small sum: here
 * element 126 (layers.0.weight) has slice gradients -0.04476 and +0.04465
 * at dp 2, whose mean -5.7e-5 is below half a bf16 ulp of either slice,
 * so the reduced bf16 gradient is 0 where the one-process one is -5.7e-5,
 * and at dp 4 recursive halving and a pairwise chain differ the same way.
 * AdamW's update m / (sqrt(v) + eps) is scale-free for |g| >> eps (its
 * first step is lr * sign(g)), so such an element moves by up to lr per
 * step in one run and not in the other, and the difference then spreads
 * through the next steps' gradients. That is a property of reducing
 * 16-bit gradients, not an FSDP bug (grad_reduce_in_fp32 avoids it); a
 * bound wide enough for it would let real errors through. */
static void train_reference_16bit(mhub_mlp *dist, mhub_fsdp *f, mhub_mlp *ref,
                                  const run_options *o, mhub_dtype gdt, const char *what)
{
    enum { MAX_P = 8 };
    mhub_param_list *pl = mhub_mlp_params(ref);
    ck_assert_int_le(pl->count, MAX_P);
    mhub_test_param_step st[MAX_P];
    for (int p = 0; p < pl->count; p++)
        mhub_test_param_step_alloc(&st[p], pl->items[p].value.numel, world->size);
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, o->model->inputs, o->model->classes, 9));
    for (int s = 0; s < STEPS; s++) {
        read_engine_state(f, &o->optim, st, pl->count, false);
        rank_grads(ref, &task, s, world->size, st);
        fsdp_step(dist, f, &task, o, s);
        read_engine_state(f, &o->optim, st, pl->count, true);
        mhub_test_reduce r = {
            .be = be, .optim = &o->optim, .step = s + 1, .ranks = world->size, .gdt = gdt};
        mhub_test_check_step(&r, pl, st, what, s + 1);
    }
    mhub_synthetic_free(&task);
    for (int p = 0; p < pl->count; p++)
        mhub_test_param_step_free(&st[p]);
}

/* The engine's master values rounded to dt and widened back, in list
 * order: what the gathered parameters must be. Collective. */
static float *rounded_masters(mhub_fsdp *f, const mhub_param_list *pl, mhub_dtype dt)
{
    float *out = malloc((size_t)mhub_param_list_numel(pl) * sizeof(float));
    ck_assert_ptr_nonnull(out);
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++) {
        CK_OK(mhub_fsdp_get_state(f, p, -1, out + at));
        for (int64_t i = 0; i < pl->items[p].value.numel; i++)
            out[at + i] = mhub_test_round(out[at + i], dt);
    }
    return out;
}

static void check_16bit(mhub_dtype dt, bool fp32_grads, mhub_optim_kind kind, bool reshard)
{
    mhub_mlp_config cfg = odd_cfg;
    cfg.param_dtype = dt;
    run_options o = {.model = &cfg, .accum = 1};
    o.optim = test_optim(kind); /* AdamW's default eps: the reference takes the ranks' rounding */
    mhub_fsdp_options_init(&o.fsdp);
    o.fsdp.reshard_after_forward = reshard;
    mhub_ddp_config_init(&o.ddp);
    o.ddp.grad_reduce_in_fp32 = fp32_grads;
    o.ddp.check_for_nan_in_grad = fp32_grads && reshard; /* allowed with f32 gradients */
    double ulp = dt == MHUB_BF16 ? 1.0 / 128 : 1.0 / 1024;
    char what[160];
    snprintf(what, sizeof what, "ranks %d, %s, %s, fp32 grads %d, reshard %d", world->size,
             mhub_dtype_name(dt), mhub_optim_kind_name(kind), fp32_grads, reshard);

    mhub_mlp *dist, *ref, *view, *view16;
    CK_OK(mhub_mlp_create(&cfg, be, GLOBAL_BATCH, 21, &dist));
    CK_OK(mhub_mlp_create(&cfg, be, GLOBAL_BATCH, 21, &ref));
    CK_OK(mhub_mlp_create(&odd_cfg, be, 1, 0, &view));  /* f32 destination */
    CK_OK(mhub_mlp_create(&cfg, be, 1, 0, &view16));    /* model-dtype destination */
    int64_t n = mhub_param_list_numel(mhub_mlp_params(dist));
    float *initial = values_f32(mhub_mlp_params(dist));
    mhub_fsdp *f = make_engine(dist, &o);
    train_reference_16bit(dist, f, ref, &o, fp32_grads ? MHUB_F32 : dt, what);
    float *want = rounded_masters(f, mhub_mlp_params(dist), dt);
    CK_OK(mhub_fsdp_full_params(f, mhub_mlp_params(view)));
    CK_OK(mhub_fsdp_full_params(f, mhub_mlp_params(view16)));
    float *got = values_f32(mhub_mlp_params(view)), *got16 = values_f32(mhub_mlp_params(view16));
    ck_assert_msg(max_diff_f32(got, want, n, 1e-30) == 0,
                  "%s: gathered values are not the master values rounded to %s", what,
                  mhub_dtype_name(dt));
    /* the f32 destination is the exact widening of the model-dtype one */
    ck_assert_msg(max_diff_f32(got, got16, n, 1e-30) == 0, "%s: f32 and %s copies differ", what,
                  mhub_dtype_name(dt));
    /* and training moved the parameters */
    ck_assert_msg(max_diff_f32(got, initial, n, 1e-2) > 16 * ulp, "%s: parameters did not move",
                  what);
    mhub_mlp_set_unit_hooks(dist, NULL);
    mhub_fsdp_free(f);
    mhub_param_list *pl = mhub_mlp_params(dist);
    for (int p = 0; p < pl->count; p++) {
        ck_assert(pl->items[p].value.owns_data && pl->items[p].value.dtype == dt);
        ck_assert(pl->items[p].grad.owns_data && pl->items[p].grad.dtype == MHUB_F32);
    }
    float *restored = values_f32(pl);
    ck_assert_msg(max_diff_f32(restored, got, n, 1e-30) == 0, "%s: restored values differ",
                  what);
    /* the restored model trains on without the engine */
    float x[4 * 12], loss = 0;
    int32_t y[4] = {0, 1, 2, 3};
    mhub_rng_fill_normal(x, 48, 1, 1, 0, 0, 1);
    CK_OK(mhub_mlp_forward(dist, x, y, 4, &loss));
    ck_assert(isfinite(loss));
    CK_OK(mhub_mlp_backward(dist, 0.25f));
    free(initial);
    free(want);
    free(got);
    free(got16);
    free(restored);
    mhub_mlp_free(view16);
    mhub_mlp_free(view);
    mhub_mlp_free(dist);
    mhub_mlp_free(ref);
}

START_TEST(test_16bit_matches_single_process)
{
    const mhub_dtype dts[] = {MHUB_BF16, MHUB_F16};
    const mhub_optim_kind kinds[] = {MHUB_OPTIM_SGD, MHUB_OPTIM_ADAMW};
    for (int d = 0; d < 2; d++)
        for (int fp32 = 0; fp32 <= 1; fp32++)
            for (int k = 0; k < 2; k++)
                for (int reshard = 0; reshard <= 1; reshard++)
                    check_16bit(dts[d], fp32, kinds[k], reshard);
}
END_TEST

/* ---- memory -------------------------------------------------------------- */

/* Hooks that forward to the engine's and record the most units gathered
 * at once, so the "at most two units' full buffers" claim is observed,
 * not just implied by the allocation sizes. */
typedef struct watch {
    mhub_unit_hooks inner;
    mhub_fsdp *f;
    int max_gathered;
} watch;

static void count_gathered(watch *w)
{
    int n = 0;
    for (int u = 0; u < mhub_fsdp_num_units(w->f); u++)
        n += mhub_fsdp_unit_gathered(w->f, u);
    w->max_gathered = n > w->max_gathered ? n : w->max_gathered;
}

#define WATCHED(hook)                                            \
    static mhub_status watched_##hook(void *user, int unit)      \
    {                                                            \
        watch *w = user;                                         \
        MHUB_TRY(w->inner.hook(w->inner.user, unit));            \
        count_gathered(w);                                       \
        return MHUB_OK;                                          \
    }
WATCHED(pre_forward)
WATCHED(post_forward)
WATCHED(pre_backward)
WATCHED(post_backward)

/* The engine's hooks wrapped by `w`, for any model. */
static mhub_unit_hooks watch_hooks(mhub_fsdp *f, watch *w)
{
    memset(w, 0, sizeof *w);
    w->f = f;
    CK_OK(mhub_fsdp_unit_hooks(f, &w->inner));
    return (mhub_unit_hooks){watched_pre_forward, watched_post_forward, watched_pre_backward,
                             watched_post_backward, w};
}

static void install_watch(mhub_mlp *m, mhub_fsdp *f, watch *w)
{
    mhub_unit_hooks h = watch_hooks(f, w);
    mhub_mlp_set_unit_hooks(m, &h);
}

static size_t current_bytes(void)
{
    size_t cur = 0;
    CK_OK(be->ops->memory_usage(be, &cur, NULL));
    return cur;
}

/* Seven units: 96*65 = 6240, 80*97 = 7760, 72*81 = 5832, 64*73 = 4672,
 * 56*65 = 3640, 48*57 = 2736, 10*49 = 490 (31370 elements). */
static const mhub_mlp_config big_cfg = {.inputs = MAX_INPUTS,
                                        .num_hidden = 6,
                                        .hidden = {96, 80, 72, 64, 56, 48},
                                        .classes = 10};

static void check_memory(bool reshard, mhub_dtype dt)
{
    mhub_mlp_config cfg = big_cfg;
    cfg.param_dtype = dt;
    run_options o = {.model = &cfg, .accum = 2};
    mhub_optim_config_init(&o.optim, MHUB_OPTIM_ADAMW);
    mhub_fsdp_options_init(&o.fsdp);
    o.fsdp.reshard_after_forward = reshard;
    mhub_ddp_config_init(&o.ddp);
    int dp = world->size, k = mhub_optim_state_arrays(&o.optim);
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, GLOBAL_BATCH, 5, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    int64_t total = mhub_param_list_numel(pl);
    /* value and full-gradient slot element sizes: the model dtype, and
     * (grad_reduce_in_fp32 off) the model dtype too */
    int64_t vsize = (int64_t)mhub_dtype_size(dt), gsize = vsize;
    /* the model's own values (its dtype) and f32 gradients, which the
     * engine frees */
    size_t full_bytes = (size_t)total * ((size_t)vsize + sizeof(float));
    size_t before = current_bytes();
    mhub_fsdp *f = make_engine(m, &o);
    size_t after = current_bytes();
    mhub_fsdp_stats st;
    mhub_fsdp_get_stats(f, &st);

    /* 1. the allocator sees exactly what the engine says it holds */
    ck_assert_int_eq((int64_t)(after - (before - full_bytes)), st.bytes_held);
    /* 2. the shards: values, gradients and k state arrays of
     * sum(padded unit / dp) elements, at most one padding element per unit
     * more than total / dp */
    int units = mhub_fsdp_num_units(f);
    int64_t shard = 0, padded[8], largest = 0, second = 0, all_padded = 0, largest_shard = 0;
    ck_assert_int_le(units, 8);
    for (int u = 0; u < units; u++) {
        mhub_fsdp_unit_info info;
        CK_OK(mhub_fsdp_unit(f, u, &info));
        ck_assert_int_eq(info.padded_numel % dp, 0);
        ck_assert_int_lt(info.padded_numel - info.numel, dp);
        shard += info.shard_numel;
        largest_shard = info.shard_numel > largest_shard ? info.shard_numel : largest_shard;
        padded[u] = info.padded_numel;
        all_padded += padded[u];
        if (padded[u] > largest) {
            second = largest;
            largest = padded[u];
        } else if (padded[u] > second) {
            second = padded[u];
        }
    }
    ck_assert_int_le(shard, (total + dp - 1) / dp + units);
    /* f32 master values, f32 gradients and state; a 16-bit model adds its
     * model-dtype value shard (what is all-gathered) */
    ck_assert_int_eq(st.shard_bytes, (int64_t)sizeof(float) * (2 + k) * shard +
                                         (dt != MHUB_F32 ? vsize * shard : 0));
    /* 3. the full-size buffers: two units' values and two units' gradients
     * with reshard (each slot sized to the largest unit of its parity, so
     * together at most the two largest); every unit's values without.
     * Value slots are of the model dtype, gradient slots of the gradient
     * dtype; 16-bit gradient slots add an f32 block to widen a reduced
     * shard into */
    int64_t value_bound = reshard ? largest + second : all_padded;
    int64_t widen = gsize != (int64_t)sizeof(float) ? (int64_t)sizeof(float) * largest_shard : 0;
    ck_assert_int_le(st.buffer_bytes, vsize * value_bound + gsize * (largest + second) + widen);
    /* with reshard and more than two units both kinds of slot are exactly
     * the largest unit of each parity */
    if (reshard && units > 2) {
        int64_t cap[2] = {0, 0};
        for (int u = 0; u < units; u++)
            cap[u % 2] = padded[u] > cap[u % 2] ? padded[u] : cap[u % 2];
        ck_assert_int_eq(st.buffer_bytes, (vsize + gsize) * (cap[0] + cap[1]) + widen);
    }

    /* 4. a step allocates nothing: the peak over it is where it started */
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, cfg.inputs, cfg.classes, 9));
    watch w;
    install_watch(m, f, &w);
    CK_OK(be->ops->reset_peak(be));
    size_t step_start = current_bytes(), step_peak = 0, step_end = 0;
    fsdp_step(m, f, &task, &o, 0);
    CK_OK(be->ops->memory_usage(be, &step_end, &step_peak));
    ck_assert_uint_eq(step_peak, step_start);
    ck_assert_uint_eq(step_end, step_start);
    ck_assert_int_le(w.max_gathered, reshard ? 2 : units);
    ck_assert_int_ge(w.max_gathered, reshard ? 1 : units);

    /* what replicated data parallelism would hold for the same state */
    int64_t replicated = (int64_t)sizeof(float) * total * (2 + k);
    if (world->rank == 0)
        printf("fsdp memory (dp %d, %s, reshard %d, AdamW, %lld params): per rank shards %lld B + "
               "buffers %lld B = %lld B held (allocator delta %lld B); replicated would hold "
               "%lld B; most units gathered at once %d; step peak - start = %lld B\n",
               dp, mhub_dtype_name(dt), reshard, (long long)total, (long long)st.shard_bytes,
               (long long)st.buffer_bytes, (long long)st.bytes_held,
               (long long)(after - (before - full_bytes)), (long long)replicated,
               w.max_gathered, (long long)(step_peak - step_start));
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_fsdp_free(f);
    /* free restores the model's full storage and releases the engine's */
    ck_assert_uint_eq(current_bytes(), before);
    mhub_synthetic_free(&task);
    mhub_mlp_free(m);
}

START_TEST(test_memory_matches_formula)
{
    ck_assert_ptr_nonnull(be->ops->memory_usage);
    check_memory(true, MHUB_F32);
    check_memory(false, MHUB_F32);
    check_memory(true, MHUB_BF16);
    check_memory(false, MHUB_BF16);
}
END_TEST

/* ---- the schedule -------------------------------------------------------- */

START_TEST(test_gather_schedule)
{
    /* L = 3 units, one micro-batch: forward gathers every unit and prefetches
     * all but the first; backward regathers all but the last (kept from
     * forward) when resharding, each prefetched by the unit after it */
    for (int reshard = 0; reshard <= 1; reshard++)
        for (int pf = 0; pf <= 1; pf++) {
            run_options o = {.model = &odd_cfg, .accum = 1};
            mhub_optim_config_init(&o.optim, MHUB_OPTIM_SGD);
            mhub_fsdp_options_init(&o.fsdp);
            o.fsdp.reshard_after_forward = reshard;
            o.fsdp.prefetch = pf;
            mhub_ddp_config_init(&o.ddp);
            mhub_mlp *m;
            CK_OK(mhub_mlp_create(&odd_cfg, be, GLOBAL_BATCH, 21, &m));
            mhub_fsdp *f = make_engine(m, &o);
            ck_assert_int_eq(mhub_fsdp_num_units(f), 3);
            float x[4 * 12];
            int32_t y[4] = {0, 1, 2, 3};
            mhub_rng_fill_normal(x, 48, 1, 1, 0, 0, 1);
            CK_OK(mhub_fsdp_zero_grad(f));
            CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
            for (int u = 0; u < 3; u++)
                ck_assert_int_eq(mhub_fsdp_unit_gathered(f, u), (!reshard || u == 2));
            CK_OK(mhub_mlp_backward(m, 0.25f));
            for (int u = 0; u < 3; u++)
                ck_assert(!mhub_fsdp_unit_gathered(f, u));
            CK_OK(mhub_fsdp_finish_grad_sync(f));
            mhub_fsdp_stats st;
            mhub_fsdp_get_stats(f, &st);
            ck_assert_int_eq(st.gathers_issued, reshard ? 3 + 2 : 3);
            ck_assert_int_eq(st.gathers_prefetched, pf ? (reshard ? 2 + 2 : 2) : 0);
            ck_assert_int_eq(st.reduce_scatters, 3);
            ck_assert_int_eq(st.steps, 1);
            CK_OK(mhub_fsdp_step(f));
            mhub_fsdp_get_stats(f, &st);
            ck_assert_int_eq(st.optimizer_steps, 1);
            mhub_mlp_set_unit_hooks(m, NULL);
            mhub_fsdp_free(f);
            mhub_mlp_free(m);
        }
}
END_TEST

/* ---- misuse -------------------------------------------------------------- */

static void small_batch(float *x, int32_t *y)
{
    mhub_rng_fill_normal(x, 48, 1, 1, 0, 0, 1);
    for (int r = 0; r < 4; r++)
        y[r] = r;
}

START_TEST(test_params_are_meta_outside_hooks)
{
    run_options o = {.model = &odd_cfg, .accum = 1};
    mhub_optim_config_init(&o.optim, MHUB_OPTIM_SGD);
    mhub_fsdp_options_init(&o.fsdp);
    mhub_ddp_config_init(&o.ddp);
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&odd_cfg, be, 4, 21, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_fsdp *f = NULL;
    CK_OK(mhub_fsdp_create(pl, world, &o.ddp, &o.fsdp, &o.optim, &f));
    for (int p = 0; p < pl->count; p++) {
        ck_assert_msg(mhub_tensor_is_meta(&pl->items[p].value), "'%s'", pl->items[p].name);
        ck_assert(mhub_tensor_is_meta(&pl->items[p].grad));
        ck_assert_int_eq(pl->items[p].value.ndim, p % 2 ? 1 : 2); /* shape kept */
    }
    float x[48];
    int32_t y[4];
    small_batch(x, y);
    /* no hooks: the forward finds meta parameters and fails */
    mhub_clear_error();
    ck_assert_int_ne(mhub_mlp_forward(m, x, y, 4, NULL), MHUB_OK);
    ck_assert_msg(mhub_last_error()[0] != '\0', "no message");
    /* hooks without pre_backward: the backward finds meta gradients */
    mhub_unit_hooks h;
    CK_OK(mhub_fsdp_unit_hooks(f, &h));
    mhub_unit_hooks no_pre = h;
    no_pre.pre_backward = NULL;
    mhub_mlp_set_unit_hooks(m, &no_pre);
    CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
    ck_assert(mhub_tensor_is_meta(&pl->items[0].value)); /* unit 0 resharded */
    ck_assert(!mhub_tensor_is_meta(&pl->items[4].value)); /* the last unit kept */
    mhub_clear_error();
    ck_assert_int_ne(mhub_mlp_backward(m, 0.25f), MHUB_OK);
    ck_assert_msg(mhub_last_error()[0] != '\0', "no message");
    /* calling the hooks out of order */
    CK_FAILS(MHUB_ERR_STATE, h.post_backward(h.user, 1));
    ck_assert_msg(strstr(mhub_last_error(), "pre_backward(1)"), "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_INVALID_ARG, h.pre_forward(h.user, 7));
    ck_assert_msg(strstr(mhub_last_error(), "unit 7"), "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_INVALID_ARG, h.pre_forward(NULL, 0));
    CK_OK(h.pre_backward(h.user, 1));
    CK_FAILS(MHUB_ERR_STATE, mhub_fsdp_finish_grad_sync(f)); /* unit 1 still open */
    ck_assert_msg(strstr(mhub_last_error(), "unit 1"), "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_STATE, mhub_fsdp_zero_grad(f));
    CK_OK(h.post_backward(h.user, 1));
    /* a reduce-scatter is outstanding: the optimizer must wait for it */
    CK_FAILS(MHUB_ERR_STATE, mhub_fsdp_step(f));
    ck_assert_msg(strstr(mhub_last_error(), "finish_grad_sync"), "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_STATE, mhub_fsdp_zero_grad(f));
    CK_OK(mhub_fsdp_finish_grad_sync(f));
    CK_OK(mhub_fsdp_step(f));
    for (int p = 0; p < pl->count; p++)
        ck_assert(mhub_tensor_is_meta(&pl->items[p].value)); /* step released the last unit */
    /* free hands the model back: it runs without any hooks */
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_fsdp_free(f);
    for (int p = 0; p < pl->count; p++)
        ck_assert(pl->items[p].value.owns_data && pl->items[p].grad.owns_data);
    float loss = 0;
    CK_OK(mhub_mlp_forward(m, x, y, 4, &loss));
    ck_assert(isfinite(loss));
    CK_OK(mhub_mlp_backward(m, 0.25f));
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_nan_is_named_on_every_rank)
{
    run_options o = {.model = &odd_cfg, .accum = 1};
    mhub_optim_config_init(&o.optim, MHUB_OPTIM_SGD);
    mhub_fsdp_options_init(&o.fsdp);
    mhub_ddp_config_init(&o.ddp);
    o.ddp.check_for_nan_in_grad = true;
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&odd_cfg, be, 4, 1, &m));
    mhub_fsdp *f = make_engine(m, &o);
    float x[48];
    int32_t y[4];
    small_batch(x, y);
    for (int step = 0; step < 2; step++) {
        CK_OK(mhub_fsdp_zero_grad(f));
        if (step == 1 && world->rank == world->size - 1)
            x[3] = NAN; /* poisons every gradient of the last rank */
        CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
        CK_OK(mhub_mlp_backward(m, 0.25f));
        mhub_status s = mhub_fsdp_finish_grad_sync(f);
        if (step == 0) {
            CK_OK(s);
            CK_OK(mhub_fsdp_step(f));
            continue;
        }
        ck_assert_int_eq(s, MHUB_ERR_NUMERIC);
        char want[64];
        snprintf(want, sizeof want, "on dp rank %d at step 1", world->size - 1);
        ck_assert_msg(strstr(mhub_last_error(), want) != NULL, "%s", mhub_last_error());
        /* backward runs the last unit first: its weight is found first */
        ck_assert_msg(strstr(mhub_last_error(), "'layers.2.weight'") != NULL, "%s",
                      mhub_last_error());
    }
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_fsdp_free(f);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_bad_input_is_reported)
{
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_ADAMW);
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&tiny_cfg, be, 4, 1, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_fsdp *f = (mhub_fsdp *)1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(pl, world, &dc, NULL, &oc, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(NULL, world, &dc, NULL, &oc, &f));
    ck_assert_ptr_null(f);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(pl, NULL, &dc, NULL, &oc, &f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(pl, world, NULL, NULL, &oc, &f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(pl, world, &dc, NULL, NULL, &f));
    dc.bucket_size = 0;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(pl, world, &dc, NULL, &oc, &f));
    mhub_ddp_config_init(&dc);
    oc.beta1 = 1.5f;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(pl, world, &dc, NULL, &oc, &f));
    mhub_optim_config_init(&oc, MHUB_OPTIM_ADAMW);
    pl->items[1].unit = -1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(pl, world, &dc, NULL, &oc, &f));
    ck_assert_msg(strstr(mhub_last_error(), "'layers.0.bias'"), "%s", mhub_last_error());
    pl->items[1].unit = 0;
    pl->items[2].requires_grad = false;
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_fsdp_create(pl, world, &dc, NULL, &oc, &f));
    ck_assert_msg(strstr(mhub_last_error(), "'layers.1.weight'"), "%s", mhub_last_error());
    pl->items[2].requires_grad = true;
    /* failed creates leave the parameters alone */
    for (int p = 0; p < pl->count; p++)
        ck_assert(pl->items[p].value.owns_data && pl->items[p].grad.owns_data);

    /* a meta model */
    mhub_mlp *meta;
    CK_OK(mhub_mlp_create(&tiny_cfg, NULL, 0, 0, &meta));
    CK_FAILS(MHUB_ERR_STATE, mhub_fsdp_create(mhub_mlp_params(meta), world, &dc, NULL, &oc, &f));
    ck_assert_msg(strstr(mhub_last_error(), "meta"), "%s", mhub_last_error());
    mhub_mlp_free(meta);

    /* 16-bit parameters: one dtype only; deterministic mode and the NaN
     * check need f32 gradients */
    mhub_param_list half = {0};
    int64_t shape[1] = {10};
    CK_OK(mhub_param_list_add(&half, "h.weight", MHUB_BF16, 1, shape, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_add(&half, "h.bias", MHUB_F16, 1, shape, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_materialize(&half, be, 1));
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_fsdp_create(&half, world, &dc, NULL, &oc, &f));
    ck_assert_msg(strstr(mhub_last_error(), "'h.bias'") && strstr(mhub_last_error(), "bf16"),
                  "%s", mhub_last_error());
    half.count = 1; /* bf16 only */
    dc.check_for_nan_in_grad = true;
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_fsdp_create(&half, world, &dc, NULL, &oc, &f));
    ck_assert_msg(strstr(mhub_last_error(), "grad_reduce_in_fp32"), "%s", mhub_last_error());
    dc.check_for_nan_in_grad = false;
    dc.deterministic = true;
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_fsdp_create(&half, world, &dc, NULL, &oc, &f));
    ck_assert_msg(strstr(mhub_last_error(), "grad_reduce_in_fp32"), "%s", mhub_last_error());
    mhub_ddp_config_init(&dc);
    for (int p = 0; p < half.count; p++)
        ck_assert(half.items[p].value.owns_data);
    half.count = 2;
    mhub_param_list_free(&half);
    mhub_param_list empty = {0};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(&empty, world, &dc, NULL, &oc, &f));

    /* NULL engines */
    mhub_unit_hooks h;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_unit_hooks(NULL, &h));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_zero_grad(NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_finish_grad_sync(NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_step(NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_full_params(NULL, pl));
    ck_assert_int_eq(mhub_fsdp_num_units(NULL), 0);
    ck_assert(!mhub_fsdp_unit_gathered(NULL, 0));
    mhub_fsdp_free(NULL);

    /* a working engine refuses a destination of another shape */
    CK_OK(mhub_fsdp_create(pl, world, &dc, NULL, &oc, &f));
    mhub_fsdp_unit_info info;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_unit(f, 2, &info));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_unit_hooks(f, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_lr(f, -1.0f));
    mhub_mlp *other;
    CK_OK(mhub_mlp_create(&odd_cfg, be, 1, 0, &other));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_full_params(f, mhub_mlp_params(other)));
    mhub_mlp_free(other);
    mhub_fsdp_free(f);
    mhub_mlp_free(m);
}
END_TEST

/* Every rank ends with the same parameters: the digest of the gathered
 * values equals the restored model's on every rank. */
START_TEST(test_digest_agrees_across_ranks)
{
    run_options o = {.model = &odd_cfg, .accum = 1};
    mhub_optim_config_init(&o.optim, MHUB_OPTIM_ADAMW);
    mhub_fsdp_options_init(&o.fsdp);
    mhub_ddp_config_init(&o.ddp);
    mhub_mlp *m, *view;
    CK_OK(mhub_mlp_create(&odd_cfg, be, GLOBAL_BATCH, 21, &m));
    CK_OK(mhub_mlp_create(&odd_cfg, be, 1, 0, &view));
    mhub_fsdp *f = make_engine(m, &o);
    train_fsdp(m, f, &o);
    CK_OK(mhub_fsdp_full_params(f, mhub_mlp_params(view)));
    char gathered[MHUB_SHA256_HEX_CHARS], restored[MHUB_SHA256_HEX_CHARS];
    char root[MHUB_SHA256_HEX_CHARS];
    CK_OK(mhub_param_list_digest(mhub_mlp_params(view), gathered));
    /* a meta parameter cannot be hashed: the digest needs the gathered copy */
    CK_FAILS(MHUB_ERR_STATE, mhub_param_list_digest(mhub_mlp_params(m), restored));
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_fsdp_free(f);
    CK_OK(mhub_param_list_digest(mhub_mlp_params(m), restored));
    ck_assert_str_eq(gathered, restored);
    float bytes[MHUB_SHA256_HEX_CHARS];
    for (int i = 0; i < MHUB_SHA256_HEX_CHARS; i++)
        bytes[i] = (float)(unsigned char)gathered[i];
    CK_OK(mhub_comm_broadcast(world, bytes, MHUB_SHA256_HEX_CHARS, MHUB_F32, 0));
    for (int i = 0; i < MHUB_SHA256_HEX_CHARS; i++)
        root[i] = (char)(int)bytes[i];
    ck_assert_str_eq(gathered, root);
    mhub_mlp_free(view);
    mhub_mlp_free(m);
}
END_TEST

/* ---- a GPT whose output layer is tied to its embedding ---------------------
 * The head (the last unit) reads the embedding table, which belongs to
 * unit 0 (mhub_param.tied_unit), so FSDP keeps unit 0 gathered while the
 * head runs and its gradient open from the head's backward to the
 * embedding's. Three layers make the head unit 4, of unit 0's parity:
 * without its own buffers unit 0 would share a slot with it. Hidden 10
 * and vocab 37 make the embedding (450 elements) and each layer (994) no
 * multiple of 4, so dp 2 and 4 pad them. */

enum { GPT_ROWS = 8, GPT_SEQ = 8, GPT_VOCAB = 37, GPT_LAYERS = 3, GPT_STEPS = 3,
       GPT_MAX_PARAMS = 48 };

static void tied_gpt_config(mhub_gpt_config *cfg, mhub_dtype dt)
{
    mhub_gpt_config_init(cfg); /* GPT-2 style: LayerNorm, gelu, learned positions, tied */
    cfg->num_layers = GPT_LAYERS;
    cfg->hidden_size = 10;
    cfg->num_attention_heads = 2;
    cfg->ffn_hidden_size = 24;
    cfg->seq_length = GPT_SEQ;
    cfg->vocab_size = GPT_VOCAB;
    cfg->make_vocab_size_divisible_by = 1;
    cfg->base.bf16 = dt == MHUB_BF16;
    ck_assert(cfg->share_embeddings_and_output_weights);
}

/* The same seeds on every rank: FSDP needs equal values at create. */
static mhub_gpt *tied_gpt(const mhub_gpt_config *cfg, int64_t micro_batch)
{
    mhub_provide_args a = {.pre_process = true, .post_process = true, .vp_stage = -1,
                           .pp_size = 1, .vp_size = 1, .tp_size = 1, .backend = be,
                           .seed = 11, .tp_seed = 12, .micro_batch = micro_batch};
    mhub_gpt *m = NULL;
    CK_OK(mhub_gpt_create(cfg, &a, &m));
    ck_assert(mhub_gpt_runnable(m));
    ck_assert_int_le(mhub_gpt_params(m)->count, GPT_MAX_PARAMS);
    return m;
}

/* Rows [first, first + rows) of step `step`'s global batch: hashed
 * tokens, each target a function of its token and position. */
static void gpt_batch(int step, int64_t first, int64_t rows, int32_t *tokens, int32_t *targets)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t t = 0; t < GPT_SEQ; t++) {
            uint64_t row = (uint64_t)step * GPT_ROWS + (uint64_t)(first + r);
            int32_t tok = (int32_t)((row * 2654435761u + (uint64_t)t * 40503u) % GPT_VOCAB);
            tokens[r * GPT_SEQ + t] = tok;
            targets[r * GPT_SEQ + t] = (int32_t)((tok + t + 1) % GPT_VOCAB);
        }
}

/* The reference: the whole global batch in one process with no engine,
 * the update rule applied to each full parameter (through an f32 main
 * copy rounded into a 16-bit parameter after every step). */
static void train_gpt_single(mhub_gpt *m, const mhub_optim_config *oc, int steps)
{
    mhub_param_list *pl = mhub_gpt_params(m);
    int k = mhub_optim_state_arrays(oc);
    float *state[GPT_MAX_PARAMS][2] = {{NULL}}, *main[GPT_MAX_PARAMS] = {NULL};
    for (int p = 0; p < pl->count; p++) {
        const mhub_tensor *v = &pl->items[p].value;
        for (int a = 0; a < k; a++)
            state[p][a] = calloc((size_t)v->numel, sizeof(float));
        if (v->dtype != MHUB_F32) {
            main[p] = malloc((size_t)v->numel * sizeof(float));
            CK_OK(be->ops->cast(be, main[p], MHUB_F32, v->data, v->dtype, v->numel));
        }
    }
    int32_t tokens[GPT_ROWS * GPT_SEQ], targets[GPT_ROWS * GPT_SEQ];
    for (int s = 0; s < steps; s++) {
        CK_OK(mhub_param_list_zero_grad(pl));
        gpt_batch(s, 0, GPT_ROWS, tokens, targets);
        CK_OK(mhub_gpt_forward(m, tokens, targets, GPT_ROWS, GPT_SEQ, NULL));
        CK_OK(mhub_gpt_backward(m, 1.0f / (GPT_ROWS * GPT_SEQ)));
        for (int p = 0; p < pl->count; p++) {
            mhub_tensor *v = &pl->items[p].value;
            float *target = main[p] ? main[p] : v->data;
            CK_OK(mhub_optim_update(be, oc, target, pl->items[p].grad.data, state[p], v->numel,
                                    s + 1));
            if (main[p])
                CK_OK(be->ops->cast(be, v->data, v->dtype, main[p], MHUB_F32, v->numel));
        }
    }
    for (int p = 0; p < pl->count; p++) {
        for (int a = 0; a < k; a++)
            free(state[p][a]);
        free(main[p]);
    }
}

typedef struct gpt_run {
    mhub_dtype dtype;
    mhub_optim_config optim;
    mhub_fsdp_options fsdp;
    mhub_ddp_config ddp;
    int accum;
} gpt_run;

/* SGD with momentum: its update follows the gradient's size. (AdamW's
 * m / sqrt(v) is scale-free, and the GPT has gradients that are exactly
 * zero but for rounding, the key biases', whose softmax ignores them: a
 * different summation order, more ranks or micro-batches, turns their
 * noise into full learning-rate steps of either sign.) */
static void gpt_run_init(gpt_run *r, mhub_dtype dt)
{
    memset(r, 0, sizeof *r);
    r->dtype = dt;
    r->accum = 1;
    mhub_optim_config_init(&r->optim, MHUB_OPTIM_SGD);
    r->optim.lr = 0.05f;
    r->optim.momentum = 0.5f;
    mhub_fsdp_options_init(&r->fsdp);
    mhub_ddp_config_init(&r->ddp);
}

static mhub_fsdp *gpt_engine(mhub_gpt *m, const gpt_run *r)
{
    mhub_fsdp *f = NULL;
    CK_OK(mhub_fsdp_create(mhub_gpt_params(m), world, &r->ddp, &r->fsdp, &r->optim, &f));
    mhub_unit_hooks h;
    CK_OK(mhub_fsdp_unit_hooks(f, &h));
    mhub_gpt_set_unit_hooks(m, &h);
    return f;
}

/* One step on this rank's slice of the global batch in r->accum
 * micro-batches, each token weighing 1 / (local tokens): the engine
 * divides the sum over ranks by dp. */
static void gpt_fsdp_step(mhub_gpt *m, mhub_fsdp *f, const gpt_run *r, int s)
{
    int64_t local = GPT_ROWS / world->size, micro = local / r->accum;
    int32_t tokens[GPT_ROWS * GPT_SEQ], targets[GPT_ROWS * GPT_SEQ];
    CK_OK(mhub_fsdp_zero_grad(f));
    for (int k = 0; k < r->accum; k++) {
        gpt_batch(s, world->rank * local + k * micro, micro, tokens, targets);
        CK_OK(mhub_gpt_forward(m, tokens, targets, micro, GPT_SEQ, NULL));
        CK_OK(mhub_gpt_backward(m, 1.0f / (float)(local * GPT_SEQ)));
    }
    CK_OK(mhub_fsdp_finish_grad_sync(f));
    CK_OK(mhub_fsdp_step(f));
}

/* A parameter list's gradients as f32 (malloc'd, list order). */
static float *grads_f32(const mhub_param_list *pl)
{
    int64_t at = 0;
    float *out = malloc((size_t)mhub_param_list_numel(pl) * sizeof(float));
    ck_assert_ptr_nonnull(out);
    for (int p = 0; p < pl->count; p++) {
        const mhub_tensor *g = &pl->items[p].grad;
        ck_assert_msg(g->data && g->dtype == MHUB_F32, "'%s'", pl->items[p].name);
        memcpy(out + at, g->data, (size_t)g->numel * sizeof(float));
        at += g->numel;
    }
    return out;
}

/* Over all ranks, the largest |a - b| in each parameter divided by that
 * parameter's largest |b| (at least 1e-2). bf16 keeps 8 significant
 * bits, so a bf16 run's error scales with the values of the tensor, not
 * with each element (a weight that trained through zero). */
static double max_diff_per_tensor(const mhub_param_list *pl, const float *a, const float *b)
{
    double worst = 0;
    int64_t at = 0;
    for (int p = 0; p < pl->count; p++) {
        int64_t n = pl->items[p].value.numel;
        double scale = 1e-2, diff = 0;
        for (int64_t i = at; i < at + n; i++) {
            scale = fmax(scale, fabs(b[i]));
            diff = fmax(diff, fabs((double)a[i] - b[i]));
        }
        worst = fmax(worst, diff / scale);
        at += n;
    }
    float w = (float)worst, all = w;
    CK_OK(mhub_comm_allreduce(world, &w, &all, 1, MHUB_F32, MHUB_MAX));
    return all;
}

typedef struct gpt_diffs {
    double values, grads, moved;
} gpt_diffs;

/* GPT_STEPS steps of FSDP against the single-process reference: the
 * gathered values, and after mhub_fsdp_free the model's own values (the
 * same bits) and last gradients (the tied table's holds the head's part
 * and the lookup's). f32 models compare element by element (relative,
 * floor 1e-2), bf16 ones per tensor (max_diff_per_tensor). *out gets
 * the differences and how far training moved the values. */
static void run_tied_gpt(const gpt_run *r, gpt_diffs *out)
{
    mhub_gpt_config cfg, cfg32;
    tied_gpt_config(&cfg, r->dtype);
    tied_gpt_config(&cfg32, MHUB_F32);
    mhub_gpt *dist = tied_gpt(&cfg, GPT_ROWS / world->size), *single = tied_gpt(&cfg, GPT_ROWS);
    mhub_gpt *view = tied_gpt(&cfg32, 1); /* f32 destination of the gathered values */
    mhub_param_list *pl = mhub_gpt_params(dist);
    int64_t n = mhub_param_list_numel(pl);
    float *initial = values_f32(pl);
    mhub_fsdp *f = gpt_engine(dist, r);
    /* the model's tie reached the engine: the head (the last unit) reads unit 0 */
    mhub_fsdp_unit_info info;
    CK_OK(mhub_fsdp_unit(f, 0, &info));
    ck_assert_int_eq(mhub_fsdp_num_units(f), GPT_LAYERS + 2);
    ck_assert_int_eq(info.reader, GPT_LAYERS + 1);
    for (int s = 0; s < GPT_STEPS; s++)
        gpt_fsdp_step(dist, f, r, s);
    train_gpt_single(single, &r->optim, GPT_STEPS);

    float *want = values_f32(mhub_gpt_params(single));
    CK_OK(mhub_fsdp_full_params(f, mhub_gpt_params(view)));
    float *got = values_f32(mhub_gpt_params(view));
    mhub_gpt_set_unit_hooks(dist, NULL);
    mhub_fsdp_free(f);
    float *restored = values_f32(pl);
    ck_assert_msg(max_diff_f32(restored, got, n, 1e-30) == 0, "restored values differ");
    float *g = grads_f32(pl), *gwant = grads_f32(mhub_gpt_params(single));
    bool f32 = r->dtype == MHUB_F32;
    out->values = f32 ? max_diff_f32(got, want, n, 1e-2) : max_diff_per_tensor(pl, got, want);
    out->grads = f32 ? max_diff_f32(g, gwant, n, 1e-2) : max_diff_per_tensor(pl, g, gwant);
    out->moved = f32 ? max_diff_f32(got, initial, n, 1e-2)
                     : max_diff_per_tensor(pl, got, initial);
    free(g);
    free(gwant);
    free(restored);
    free(got);
    free(want);
    free(initial);
    mhub_gpt_free(view);
    mhub_gpt_free(single);
    mhub_gpt_free(dist);
}

static void describe_gpt_run(const gpt_run *r, char *buf, size_t cap)
{
    snprintf(buf, cap, "tied GPT, ranks %d, %s, gradients %s, reshard %d, prefetch %d, accum %d",
             world->size, mhub_dtype_name(r->dtype),
             r->dtype == MHUB_F32 || r->ddp.grad_reduce_in_fp32 ? "f32" : "bf16",
             r->fsdp.reshard_after_forward, r->fsdp.prefetch, r->accum);
}

/* Each variant's values within `tol` and gradients within `grad_tol`,
 * the values having moved by more than 4 tol; the worst printed. */
static void check_tied_gpt_runs(const gpt_run *runs, int count, double tol, double grad_tol)
{
    gpt_diffs worst = {0, 0, 1e30};
    char what[160];
    for (int i = 0; i < count; i++) {
        gpt_diffs d;
        run_tied_gpt(&runs[i], &d);
        describe_gpt_run(&runs[i], what, sizeof what);
        ck_assert_msg(d.values <= tol, "%s: values differ by %g > %g", what, d.values, tol);
        ck_assert_msg(d.grads <= grad_tol, "%s: gradients differ by %g > %g", what, d.grads,
                      grad_tol);
        ck_assert_msg(d.moved > 4 * tol, "%s: the values moved only %g", what, d.moved);
        worst.values = fmax(worst.values, d.values);
        worst.grads = fmax(worst.grads, d.grads);
        worst.moved = fmin(worst.moved, d.moved);
    }
    if (world->rank == 0)
        printf("tied GPT, %s, %d rank(s), %d variants vs one process: values differ by <= %.3g, "
               "last gradients by <= %.3g (tolerances %.3g, %.3g; training moved the values "
               ">= %.3g)\n",
               mhub_dtype_name(runs[0].dtype), world->size, count, worst.values, worst.grads,
               tol, grad_tol, worst.moved);
}

START_TEST(test_tied_gpt_matches_single_process)
{
    gpt_run runs[8];
    int count = 0;
    for (int reshard = 0; reshard <= 1; reshard++)
        for (int pf = 0; pf <= 1; pf++)
            for (int accum = 1; accum <= 2; accum++) {
                gpt_run *r = &runs[count++];
                gpt_run_init(r, MHUB_F32);
                r->fsdp.reshard_after_forward = reshard;
                r->fsdp.prefetch = pf;
                r->accum = accum;
                r->ddp.check_for_nan_in_grad = accum > 1;
            }
    /* an element of the last gradient (~1e-2) sums 64 tokens' terms that
     * are far larger and cancel; ranks and micro-batches group them
     * differently, and the values it is taken at differ by up to 1e-6:
     * it agrees to a few 1e-6 (a gradient missing the head's part of the
     * tied table would be off by its whole size) */
    check_tied_gpt_runs(runs, count, 1e-5, 1e-4);
}
END_TEST

/* bf16 parameters with gradients reduced in f32, or in bf16 (then the
 * tied table's two parts are summed in f32 and rounded once by the
 * model). The parameters are rounded to bf16 after every step on both
 * sides, and a master a hair from a rounding boundary lands one ulp off,
 * which the following steps carry on: 4 ulps of each tensor's scale
 * (4 x 2^-7) leave room for that. */
START_TEST(test_tied_gpt_bf16_matches_single_process)
{
    gpt_run runs[4];
    int count = 0;
    for (int fp32 = 0; fp32 <= 1; fp32++)
        for (int reshard = 0; reshard <= 1; reshard++) {
            gpt_run *r = &runs[count++];
            gpt_run_init(r, MHUB_BF16);
            r->ddp.grad_reduce_in_fp32 = fp32;
            r->fsdp.reshard_after_forward = reshard;
        }
    check_tied_gpt_runs(runs, count, 4.0 / 128, 4.0 / 128);
}
END_TEST

/* Deterministic mode: FSDP over the world's ranks and DDP in one process
 * (a communicator of this rank alone) sum the same GPT_SHARDS micro-shards
 * of each global batch in the same fixed tree, so they train the tied GPT
 * to the same bits, at any power-of-two dp size. */
enum { GPT_SHARDS = 4 };

static void train_gpt_engine(mhub_gpt *m, mhub_dp_engine *e, mhub_comm *dp)
{
    int micro = GPT_SHARDS / dp->size;
    int64_t rows = GPT_ROWS / GPT_SHARDS;
    int32_t tokens[GPT_ROWS * GPT_SEQ], targets[GPT_ROWS * GPT_SEQ];
    for (int s = 0; s < GPT_STEPS; s++) {
        CK_OK(mhub_dp_engine_zero_grad(e));
        for (int k = 0; k < micro; k++) {
            int64_t shard = mhub_dp_engine_shard_index(e, dp->rank, dp->size, k, micro);
            ck_assert_int_ge(shard, 0);
            gpt_batch(s, shard * rows, rows, tokens, targets);
            CK_OK(mhub_dp_engine_micro_begin(e, k, micro));
            CK_OK(mhub_gpt_forward(m, tokens, targets, rows, GPT_SEQ, NULL));
            CK_OK(mhub_gpt_backward(m, 1.0f / (GPT_ROWS * GPT_SEQ)));
            CK_OK(mhub_dp_engine_micro_end(e, k, micro));
        }
        CK_OK(mhub_dp_engine_finish_grad_sync(e));
        CK_OK(mhub_dp_engine_step(e));
    }
}

static void deterministic_digest(mhub_dp_engine_kind kind, mhub_comm *dp, bool reshard,
                                 char hex[MHUB_SHA256_HEX_CHARS])
{
    mhub_gpt_config cfg;
    tied_gpt_config(&cfg, MHUB_F32);
    mhub_gpt *m = tied_gpt(&cfg, GPT_ROWS / GPT_SHARDS);
    gpt_run r;
    gpt_run_init(&r, MHUB_F32);
    mhub_optim_config_init(&r.optim, MHUB_OPTIM_ADAMW); /* bitwise: any optimizer will do */
    r.optim.lr = 1e-2f;
    r.ddp.deterministic = true;
    r.ddp.loss_is_global_mean = true; /* each token weighs 1 / (global tokens) */
    r.fsdp.reshard_after_forward = reshard;
    mhub_dp_engine *e;
    CK_OK(mhub_dp_engine_create(kind, mhub_gpt_params(m), dp, &r.ddp, &r.optim, &r.fsdp, &e));
    mhub_grad_ready_fn fn;
    void *user;
    mhub_unit_hooks hooks;
    CK_OK(mhub_dp_engine_hooks(e, &fn, &user, &hooks));
    mhub_gpt_set_grad_ready(m, fn, user);
    mhub_gpt_set_unit_hooks(m, &hooks);
    train_gpt_engine(m, e, dp);
    CK_OK(mhub_dp_engine_digest(e, hex));
    mhub_gpt_set_grad_ready(m, NULL, NULL);
    mhub_gpt_set_unit_hooks(m, NULL);
    mhub_dp_engine_free(e);
    mhub_gpt_free(m);
}

START_TEST(test_tied_gpt_deterministic_digest_is_ddps)
{
    mhub_comm *self;
    CK_OK(mhub_comm_split(world, world->rank, 0, "self", &self));
    char ddp[MHUB_SHA256_HEX_CHARS], fsdp[MHUB_SHA256_HEX_CHARS];
    deterministic_digest(MHUB_DP_DDP, self, true, ddp);
    for (int reshard = 0; reshard <= 1; reshard++) {
        deterministic_digest(MHUB_DP_FSDP, world, reshard, fsdp);
        ck_assert_msg(!strcmp(fsdp, ddp), "ranks %d, reshard %d: fsdp %s, one-process ddp %s",
                      world->size, reshard, fsdp, ddp);
    }
    if (world->rank == 0)
        printf("tied GPT, deterministic, %d rank(s): fsdp digest = one-process ddp's %.16s...\n",
               world->size, ddp);
    mhub_comm_free(self);
}
END_TEST

/* Memory as the allocator sees it, the estimate, the buffers by formula,
 * and the gather schedule of one step: unit 0 has a value buffer and a
 * gradient buffer of its own, stays gathered from its forward to its
 * backward (never gathered twice), and is reduced once. */
static void check_tied_gpt_schedule(bool reshard)
{
    gpt_run r;
    gpt_run_init(&r, MHUB_F32);
    r.fsdp.reshard_after_forward = reshard;
    mhub_gpt_config cfg;
    tied_gpt_config(&cfg, MHUB_F32);
    int64_t local = GPT_ROWS / world->size;
    mhub_gpt *m = tied_gpt(&cfg, local);
    mhub_param_list *pl = mhub_gpt_params(m);
    size_t full_bytes = 0; /* the model's own values and gradients, which the engine frees */
    for (int p = 0; p < pl->count; p++)
        full_bytes += mhub_tensor_nbytes(&pl->items[p].value) +
                      mhub_tensor_nbytes(&pl->items[p].grad);
    mhub_dp_memory est;
    CK_OK(mhub_dp_engine_estimate_memory(MHUB_DP_FSDP, pl, world->size, &r.ddp, &r.optim,
                                         &r.fsdp, &est));
    size_t before = current_bytes();
    mhub_fsdp *f = gpt_engine(m, &r);
    size_t after = current_bytes();
    mhub_fsdp_stats st;
    mhub_fsdp_get_stats(f, &st);
    ck_assert_int_eq((int64_t)(after - (before - full_bytes)), st.bytes_held);
    ck_assert_int_eq(est.total_bytes, st.bytes_held);

    const int units = GPT_LAYERS + 2, head = units - 1;
    ck_assert_int_eq(mhub_fsdp_num_units(f), units);
    int64_t padded[GPT_LAYERS + 2], cap[2] = {0, 0}, all = 0;
    for (int u = 0; u < units; u++) {
        mhub_fsdp_unit_info info;
        CK_OK(mhub_fsdp_unit(f, u, &info));
        ck_assert_int_eq(info.reader, u == 0 ? head : -1);
        padded[u] = info.padded_numel;
        all += padded[u];
        if (u > 0)
            cap[u % 2] = padded[u] > cap[u % 2] ? padded[u] : cap[u % 2];
    }
    /* values: unit 0's own buffer plus the others' two by parity, or
     * every unit's without reshard; gradients: unit 0's plus two */
    int64_t values = reshard ? padded[0] + cap[0] + cap[1] : all;
    int64_t grads = padded[0] + cap[0] + cap[1];
    ck_assert_int_eq(est.gathered_bytes, (int64_t)sizeof(float) * (values + grads));
    ck_assert_int_eq(st.buffer_bytes, est.gathered_bytes);

    watch w;
    mhub_unit_hooks h = watch_hooks(f, &w);
    mhub_gpt_set_unit_hooks(m, &h);
    int32_t tokens[GPT_ROWS * GPT_SEQ], targets[GPT_ROWS * GPT_SEQ];
    gpt_batch(0, world->rank * local, local, tokens, targets);
    CK_OK(be->ops->reset_peak(be));
    size_t step_start = current_bytes(), step_peak = 0, step_end = 0;
    CK_OK(mhub_fsdp_zero_grad(f));
    CK_OK(mhub_gpt_forward(m, tokens, targets, local, GPT_SEQ, NULL));
    for (int u = 0; u < units; u++)
        ck_assert_msg(mhub_fsdp_unit_gathered(f, u) == (!reshard || u == 0 || u == head),
                      "reshard %d: unit %d after forward", reshard, u);
    CK_OK(mhub_gpt_backward(m, 1.0f / (float)(local * GPT_SEQ)));
    for (int u = 0; u < units; u++)
        ck_assert_msg(!mhub_fsdp_unit_gathered(f, u), "unit %d after backward", u);
    CK_OK(mhub_fsdp_finish_grad_sync(f));
    CK_OK(mhub_fsdp_step(f));
    CK_OK(be->ops->memory_usage(be, &step_end, &step_peak));
    ck_assert_uint_eq(step_peak, step_start); /* a step allocates nothing */
    ck_assert_uint_eq(step_end, step_start);
    mhub_fsdp_get_stats(f, &st);
    /* forward gathers every unit, prefetching all but unit 0; backward
     * regathers (prefetched) units L..1 when resharding: neither the head,
     * kept from forward, nor unit 0 */
    int L = GPT_LAYERS;
    ck_assert_int_eq(st.gathers_issued, reshard ? (L + 2) + L : L + 2);
    ck_assert_int_eq(st.gathers_prefetched, reshard ? (L + 1) + L : L + 1);
    ck_assert_int_eq(st.reduce_scatters, L + 2); /* unit 0 once */
    ck_assert_int_le(w.max_gathered, reshard ? 3 : units);
    ck_assert_int_ge(w.max_gathered, 2);
    mhub_gpt_set_unit_hooks(m, NULL);
    mhub_fsdp_free(f);
    ck_assert_uint_eq(current_bytes(), before);
    mhub_gpt_free(m);
}

START_TEST(test_tied_gpt_schedule_and_memory)
{
    ck_assert_ptr_nonnull(be->ops->memory_usage);
    check_tied_gpt_schedule(true);
    check_tied_gpt_schedule(false);
}
END_TEST

START_TEST(test_tied_units_are_checked)
{
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_dp_memory est;
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&odd_cfg, be, 4, 1, &m)); /* units 0, 1, 2 */
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_fsdp *f = NULL;
    const int bad[] = {0, 3}; /* its own unit, a unit the list lacks */
    for (int i = 0; i < 2; i++) {
        pl->items[0].tied_unit = bad[i];
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_create(pl, world, &dc, NULL, &oc, &f));
        ck_assert_msg(strstr(mhub_last_error(), "'layers.0.weight'"), "%s", mhub_last_error());
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_estimate_memory(MHUB_DP_FSDP, pl,
                                                                      world->size, &dc, &oc,
                                                                      NULL, &est));
    }
    /* one unit read by two others */
    pl->items[0].tied_unit = 1;
    pl->items[1].tied_unit = 2;
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_fsdp_create(pl, world, &dc, NULL, &oc, &f));
    ck_assert_msg(strstr(mhub_last_error(), "'layers.0.weight'") &&
                      strstr(mhub_last_error(), "one other unit"),
                  "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_dp_engine_estimate_memory(MHUB_DP_FSDP, pl, world->size,
                                                                  &dc, &oc, NULL, &est));
    ck_assert_ptr_null(f);
    for (int p = 0; p < pl->count; p++)
        ck_assert(pl->items[p].value.owns_data && pl->items[p].grad.owns_data);
    pl->items[0].tied_unit = pl->items[1].tied_unit = -1;
    mhub_mlp_free(m);

    /* a GPT whose tie is not declared: the head finds the table meta
     * (unit 0 was resharded after its forward) and says so */
    mhub_gpt_config cfg;
    tied_gpt_config(&cfg, MHUB_F32);
    mhub_gpt *g = tied_gpt(&cfg, 1);
    mhub_param_list *gl = mhub_gpt_params(g);
    int wte = mhub_param_list_find(gl, "embedding.word_embeddings.weight");
    ck_assert_int_eq(gl->items[wte].tied_unit, GPT_LAYERS + 1);
    gl->items[wte].tied_unit = -1;
    gpt_run r;
    gpt_run_init(&r, MHUB_F32);
    f = gpt_engine(g, &r);
    int32_t tokens[GPT_SEQ], targets[GPT_SEQ];
    gpt_batch(0, 0, 1, tokens, targets);
    CK_FAILS(MHUB_ERR_STATE, mhub_gpt_forward(g, tokens, targets, 1, GPT_SEQ, NULL));
    ck_assert_msg(strstr(mhub_last_error(), "'embedding.word_embeddings.weight'") &&
                      strstr(mhub_last_error(), "meta"),
                  "%s", mhub_last_error());
    mhub_gpt_set_unit_hooks(g, NULL);
    mhub_fsdp_free(f);
    mhub_gpt_free(g);
}
END_TEST

/* ---- gradient norm pieces, scaling, checkpoint state, shard_done ------------ */

/* x from every rank (at most 8), added in rank order. */
static double sum_over_ranks(double x)
{
    double all[8];
    ck_assert_int_le(world->size, 8);
    CK_OK(mhub_comm_allgather(world, &x, all, 2, MHUB_F32)); /* 8 bytes, copied */
    double total = 0;
    for (int r = 0; r < world->size; r++)
        total += all[r];
    return total;
}

/* odd_cfg's parameters, flat: 169 + 126 + 50 */
enum { ODD_NUMEL = 345, SHARDS = 8 };

/* Rows [first, first + rows) of step 0's global batch through a plain
 * model of seed 21 (one process, no engine), loss weight `weight`: its
 * gradient, flat in list order. */
static void one_process_grads(int64_t first, int64_t rows, float weight, float *grads)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&odd_cfg, be, GLOBAL_BATCH, 21, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    ck_assert_int_eq(mhub_param_list_numel(pl), ODD_NUMEL);
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, odd_cfg.inputs, odd_cfg.classes, 9));
    float x[GLOBAL_BATCH * MAX_INPUTS];
    int32_t y[GLOBAL_BATCH];
    batch(&task, 0, first, rows, x, y);
    CK_OK(mhub_param_list_zero_grad(pl));
    CK_OK(mhub_mlp_forward(m, x, y, rows, NULL));
    CK_OK(mhub_mlp_backward(m, weight));
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
        memcpy(grads + at, pl->items[p].grad.data, mhub_tensor_nbytes(&pl->items[p].grad));
    mhub_synthetic_free(&task);
    mhub_mlp_free(m);
}

/* An odd_cfg model of seed 21 under FSDP (SGD, defaults otherwise). */
static mhub_fsdp *odd_engine(const mhub_ddp_config *dc, mhub_optim_kind kind, mhub_mlp **m)
{
    run_options o = {.model = &odd_cfg, .accum = 1, .ddp = *dc};
    mhub_optim_config_init(&o.optim, kind);
    mhub_fsdp_options_init(&o.fsdp);
    CK_OK(mhub_mlp_create(&odd_cfg, be, GLOBAL_BATCH, 21, m));
    return make_engine(*m, &o);
}

/* This rank's slice of step 0's global batch, forward and backward (the
 * reduce-scatters start from the hooks). */
static void backward_step0(mhub_mlp *m, mhub_fsdp *f)
{
    int64_t local = GLOBAL_BATCH / world->size;
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, odd_cfg.inputs, odd_cfg.classes, 9));
    float x[GLOBAL_BATCH * MAX_INPUTS];
    int32_t y[GLOBAL_BATCH];
    batch(&task, 0, world->rank * local, local, x, y);
    CK_OK(mhub_fsdp_zero_grad(f));
    CK_OK(mhub_mlp_forward(m, x, y, local, NULL));
    CK_OK(mhub_mlp_backward(m, 1.0f / (float)local));
    mhub_synthetic_free(&task);
}

/* Free the engine (which gathers the gradients back into the model) and
 * read the model's gradients, flat. */
static void free_and_read_grads(mhub_mlp *m, mhub_fsdp *f, float *grads)
{
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_fsdp_free(f);
    mhub_param_list *pl = mhub_mlp_params(m);
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
        memcpy(grads + at, pl->items[p].grad.data, mhub_tensor_nbytes(&pl->items[p].grad));
}

/* The units' layout (odd_cfg has three), kept to read gradients after
 * the engine is gone. */
enum { ODD_UNITS = 3 };
static void save_units(mhub_fsdp *f, mhub_fsdp_unit_info *units)
{
    ck_assert_int_eq(mhub_fsdp_num_units(f), ODD_UNITS);
    for (int u = 0; u < ODD_UNITS; u++)
        CK_OK(mhub_fsdp_unit(f, u, &units[u]));
}

/* The sum of squares of the elements of `grads` (flat, odd_cfg's list)
 * that this rank's slices hold: rank r keeps elements [r*s, (r+1)*s) of
 * each unit vector (the unit's parameters in list order, then padding). */
static double my_slice_sum_squares(const mhub_fsdp_unit_info *units, const float *grads)
{
    double ss = 0;
    int64_t at = 0;
    for (int u = 0; u < ODD_UNITS; u++) {
        int64_t lo = world->rank * units[u].shard_numel, hi = lo + units[u].shard_numel;
        for (int64_t i = lo; i < hi && i < units[u].numel; i++)
            ss += (double)grads[at + i] * grads[at + i];
        at += units[u].numel;
    }
    ck_assert_int_eq(at, ODD_NUMEL);
    return ss;
}

START_TEST(test_grad_sum_squares_and_scale)
{
    /* the ranks' sums add up to the one-process gradient's sum of squares
     * (odd unit sizes: padding at every dp > 1), each the sum over the
     * rank's slices; scale_grads multiplies the gradient the step and free
     * see by the factor, bit for bit */
    static float ref[ODD_NUMEL], plain[ODD_NUMEL], scaled[ODD_NUMEL];
    one_process_grads(0, GLOBAL_BATCH, 1.0f / GLOBAL_BATCH, ref);
    double ref_ss = 0;
    for (int i = 0; i < ODD_NUMEL; i++)
        ref_ss += (double)ref[i] * ref[i];
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_fsdp_unit_info units[ODD_UNITS];
    double mine[2] = {-1, -1};
    for (int run = 0; run < 2; run++) {
        mhub_mlp *m;
        mhub_fsdp *f = odd_engine(&dc, MHUB_OPTIM_SGD, &m);
        save_units(f, units);
        backward_step0(m, f);
        CK_OK(mhub_fsdp_finish_grad_sync(f));
        CK_OK(mhub_fsdp_grad_sum_squares(f, &mine[run]));
        double total = sum_over_ranks(mine[run]);
        ck_assert_msg(mhub_test_relerr(total, ref_ss, 0) < 1e-5,
                      "%d ranks: %.12g, one process %.12g", world->size, total, ref_ss);
        if (run == 1) {
            CK_OK(mhub_fsdp_scale_grads(f, 3.0f));
            double after = -1;
            CK_OK(mhub_fsdp_grad_sum_squares(f, &after));
            ck_assert(mhub_test_relerr(after, 9 * mine[1], 0) < 1e-6);
        }
        free_and_read_grads(m, f, run ? scaled : plain);
        mhub_mlp_free(m);
    }
    ck_assert(mine[0] == mine[1]); /* the same reduction twice */
    double sliced = my_slice_sum_squares(units, plain);
    ck_assert_msg(mhub_test_relerr(mine[0], sliced, 0) < 1e-12, "rank %d: %.17g, slices %.17g",
                  world->rank, mine[0], sliced);
    for (int i = 0; i < ODD_NUMEL; i++) {
        ck_assert_msg(scaled[i] == plain[i] * 3.0f, "element %d: %.9g, 3 x %.9g", i, scaled[i],
                      plain[i]);
        ck_assert_msg(mhub_test_relerr(plain[i], ref[i], 1e-3) < 1e-4, "element %d: %g vs %g",
                      i, plain[i], ref[i]);
    }
}
END_TEST

START_TEST(test_state_and_step_count_round_trip)
{
    static float set[ODD_NUMEL], got[ODD_NUMEL];
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_mlp *m, *view;
    mhub_fsdp *f = odd_engine(&dc, MHUB_OPTIM_ADAMW, &m);
    CK_OK(mhub_mlp_create(&odd_cfg, be, 1, 0, &view));
    mhub_param_list *pl = mhub_mlp_params(m);
    ck_assert_int_eq(mhub_fsdp_optim_steps(f), 0);
    /* every rank passes the same arrays; get gathers them back whole */
    for (int which = -1; which < 2; which++)
        for (int p = 0; p < pl->count; p++) {
            int64_t n = pl->items[p].value.numel;
            for (int64_t i = 0; i < n; i++) /* exp_avg_sq (1) stays >= 0 */
                set[i] = 0.01f * (float)((i * 13 + p * 5 + which * 3) % 29) -
                         (which == 1 ? 0.0f : 0.1f);
            CK_OK(mhub_fsdp_set_state(f, p, which, set));
            CK_OK(mhub_fsdp_get_state(f, p, which, got));
            ck_assert_msg(!memcmp(set, got, (size_t)n * sizeof(float)), "state %d of %d", which,
                          p);
        }
    /* new values replace a gathered copy: after a forward the last unit
     * stays gathered (backward needs it first) */
    backward_step0(m, f);
    CK_OK(mhub_fsdp_finish_grad_sync(f));
    CK_OK(mhub_fsdp_step(f));
    ck_assert_int_eq(mhub_fsdp_optim_steps(f), 1);
    float x[GLOBAL_BATCH * MAX_INPUTS];
    int32_t y[GLOBAL_BATCH];
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, odd_cfg.inputs, odd_cfg.classes, 9));
    batch(&task, 1, 0, 4, x, y);
    CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
    int last = pl->count - 1;
    ck_assert(mhub_fsdp_unit_gathered(f, pl->items[last].unit));
    for (int64_t i = 0; i < pl->items[last].value.numel; i++)
        set[i] = (float)i / 64;
    CK_OK(mhub_fsdp_set_state(f, last, -1, set));
    ck_assert(!mhub_fsdp_unit_gathered(f, pl->items[last].unit));
    CK_OK(mhub_fsdp_full_params(f, mhub_mlp_params(view)));
    ck_assert(!memcmp(mhub_mlp_params(view)->items[last].value.data, set,
                      mhub_tensor_nbytes(&pl->items[last].value)));
    /* the step count AdamW's bias correction reads */
    CK_OK(mhub_fsdp_set_optim_steps(f, 5));
    ck_assert_int_eq(mhub_fsdp_optim_steps(f), 5);
    backward_step0(m, f);
    CK_OK(mhub_fsdp_finish_grad_sync(f));
    CK_OK(mhub_fsdp_step(f));
    ck_assert_int_eq(mhub_fsdp_optim_steps(f), 6);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_optim_steps(f, -1));
    ck_assert_int_eq(mhub_fsdp_optim_steps(f), 6);
    mhub_synthetic_free(&task);
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_fsdp_free(f);
    mhub_mlp_free(view);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_norm_and_state_bad_input)
{
    static float buf[ODD_NUMEL];
    double ss = 0;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_grad_sum_squares(NULL, &ss));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_scale_grads(NULL, 2.0f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_state(NULL, 0, 0, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_optim_steps(NULL, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_shard_done(NULL));
    ck_assert_int_eq(mhub_fsdp_optim_steps(NULL), 0);
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_mlp *m;
    mhub_fsdp *f = odd_engine(&dc, MHUB_OPTIM_ADAMW, &m);
    int count = mhub_mlp_params(m)->count;
    /* reduce-scatters outstanding: neither the norm nor the scaling */
    backward_step0(m, f);
    CK_FAILS(MHUB_ERR_STATE, mhub_fsdp_grad_sum_squares(f, &ss));
    ck_assert_msg(strstr(mhub_last_error(), "finish_grad_sync") != NULL, "%s",
                  mhub_last_error());
    CK_FAILS(MHUB_ERR_STATE, mhub_fsdp_scale_grads(f, 2.0f));
    CK_OK(mhub_fsdp_finish_grad_sync(f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_grad_sum_squares(f, NULL));
    /* shard_done belongs to deterministic mode */
    CK_FAILS(MHUB_ERR_STATE, mhub_fsdp_shard_done(f));
    ck_assert_msg(strstr(mhub_last_error(), "deterministic") != NULL, "%s", mhub_last_error());
    /* state arguments */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_state(f, count, 0, buf));
    ck_assert_msg(strstr(mhub_last_error(), "parameter 6 of 6") != NULL, "%s",
                  mhub_last_error());
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_state(f, -1, 0, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_state(f, 0, 2, buf));
    ck_assert_msg(strstr(mhub_last_error(), "state 2 of 2") != NULL, "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_state(f, 0, -2, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_set_state(f, 0, 0, NULL));
    /* get is collective: the same refusal on every rank, nobody waits */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_fsdp_get_state(f, 0, 2, buf));
    CK_OK(mhub_fsdp_get_state(f, 0, 0, buf));
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_fsdp_free(f);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_shard_done_sums_the_shards_in_a_fixed_tree)
{
    /* Deterministic mode: rank r of P takes shards r, P + r, ... of the
     * SHARDS micro-shards and calls shard_done after each backward. The
     * gradient is then the complete binary tree over the shards'
     * gradients in shard order ((g0 + g1) + (g2 + g3)) + ..., which one
     * process adds here in f32: the same bits at any dp size. */
    static float shard_grads[SHARDS][ODD_NUMEL], got[ODD_NUMEL];
    const int64_t rows = GLOBAL_BATCH / SHARDS;
    for (int k = 0; k < SHARDS; k++)
        one_process_grads(k * rows, rows, 1.0f / GLOBAL_BATCH, shard_grads[k]);
    for (int width = SHARDS; width > 1; width /= 2)
        for (int k = 0; k < width / 2; k++)
            for (int i = 0; i < ODD_NUMEL; i++)
                shard_grads[k][i] = shard_grads[2 * k][i] + shard_grads[2 * k + 1][i];
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    dc.deterministic = true;
    mhub_mlp *m;
    mhub_fsdp *f = odd_engine(&dc, MHUB_OPTIM_SGD, &m);
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, odd_cfg.inputs, odd_cfg.classes, 9));
    float x[GLOBAL_BATCH * MAX_INPUTS];
    int32_t y[GLOBAL_BATCH];
    CK_OK(mhub_fsdp_zero_grad(f));
    for (int round = 0; round < SHARDS / world->size; round++) {
        batch(&task, 0, (round * world->size + world->rank) * rows, rows, x, y);
        CK_OK(mhub_mlp_forward(m, x, y, rows, NULL));
        CK_OK(mhub_mlp_backward(m, 1.0f / GLOBAL_BATCH));
        CK_OK(mhub_fsdp_shard_done(f));
    }
    CK_OK(mhub_fsdp_finish_grad_sync(f));
    mhub_synthetic_free(&task);
    free_and_read_grads(m, f, got);
    for (int i = 0; i < ODD_NUMEL; i++)
        ck_assert_msg(got[i] == shard_grads[0][i], "%d ranks, element %d: %.9g, tree %.9g",
                      world->size, i, got[i], shard_grads[0][i]);
    mhub_mlp_free(m);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("fsdp");
    TCase *tc = tcase_create("engine");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bad_input_is_reported);
    tcase_add_test(tc, test_grad_sum_squares_and_scale);
    tcase_add_test(tc, test_state_and_step_count_round_trip);
    tcase_add_test(tc, test_norm_and_state_bad_input);
    tcase_add_test(tc, test_shard_done_sums_the_shards_in_a_fixed_tree);
    tcase_add_test(tc, test_params_are_meta_outside_hooks);
    tcase_add_test(tc, test_gather_schedule);
    tcase_add_test(tc, test_sgd_momentum_matches_single_process);
    tcase_add_test(tc, test_adamw_matches_single_process);
    tcase_add_test(tc, test_16bit_matches_single_process);
    tcase_add_test(tc, test_memory_matches_formula);
    tcase_add_test(tc, test_nan_is_named_on_every_rank);
    tcase_add_test(tc, test_digest_agrees_across_ranks);
    tcase_add_test(tc, test_tied_units_are_checked);
    tcase_add_test(tc, test_tied_gpt_schedule_and_memory);
    tcase_add_test(tc, test_tied_gpt_matches_single_process);
    tcase_add_test(tc, test_tied_gpt_bf16_matches_single_process);
    tcase_add_test(tc, test_tied_gpt_deterministic_digest_is_ddps);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return mhub_test_mpi_main(argc, argv, make_suite); }
