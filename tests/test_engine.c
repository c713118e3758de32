/* test_engine.c - the engine wrapper under mpiexec -n 1, 2, 4: every
 * engine trains like one process on the same global batch; deterministic
 * mode gives the same bits on P ranks as on one, and the same bits for DDP
 * and the distributed optimizer; bad input; checkpoint access (parameters,
 * optimizer state by name, the step count AdamW's bias correction reads);
 * the memory estimate against the allocator, and on a
 * 175-billion-parameter meta list. */
#include <string.h>
#include <time.h>

#include "testutil_mpi.h"

/* be, world, setup and teardown: the engine fixture of testutil_mpi.h */
MHUB_TEST_ENGINE_FIXTURE

static const mhub_mlp_config model_cfg = {
    .inputs = 10, .num_hidden = 2, .hidden = {13, 7}, .classes = 4};

enum { GLOBAL_BATCH = 16, STEPS = 3, SHARDS = 8 };

typedef struct run {
    mhub_dp_engine_kind kind;
    mhub_optim_kind optim;
    bool deterministic;
    int micro;             /* micro-batches (or shards) per rank */
    mhub_dtype dtype;      /* parameter storage */
    bool grad_in_fp32;     /* grad_reduce_in_fp32 */
    double clip;           /* clip_grad_norm's max_norm each step; 0: no call */
} run;

/* Steps in which clip_grad_norm found the norm above max_norm (this rank). */
static int clipped_steps;

enum { MAX_PARAMS = 10 * 13 + 13 + 13 * 7 + 7 + 7 * 4 + 4 };

/* Overlap with 60-element buckets (several per model), the run's mode and
 * gradient dtype; SGD with momentum or AdamW. */
static void configs(const run *r, mhub_ddp_config *dc, mhub_optim_config *oc)
{
    mhub_ddp_config_init(dc);
    dc->overlap_grad_reduce = true;
    dc->bucket_size = 60;
    dc->deterministic = r->deterministic;
    dc->grad_reduce_in_fp32 = r->grad_in_fp32;
    mhub_optim_config_init(oc, r->optim);
    oc->lr = r->optim == MHUB_OPTIM_SGD ? 0.2f : 0.01f;
    oc->momentum = r->optim == MHUB_OPTIM_SGD ? 0.5f : 0.0f;
}

/* One optimizer step on this rank's part of step s's global batch. */
static void train_step(const run *r, mhub_comm *dp, mhub_dp_engine *e, mhub_mlp *m,
                       mhub_synthetic_task *task, int s)
{
    int64_t local = GLOBAL_BATCH / dp->size, rows = local / r->micro;
    /* deterministic: weight 1/G for any P; otherwise the rank's mean */
    float weight = r->deterministic ? 1.0f / GLOBAL_BATCH : 1.0f / (float)local;
    float x[GLOBAL_BATCH * 10];
    int32_t y[GLOBAL_BATCH];
    CK_OK(mhub_dp_engine_zero_grad(e));
    for (int k = 0; k < r->micro; k++) {
        int64_t shard = mhub_dp_engine_shard_index(e, dp->rank, dp->size, k, r->micro);
        ck_assert_int_ge(shard, 0);
        uint64_t first = (uint64_t)(s * GLOBAL_BATCH + shard * rows);
        CK_OK(mhub_synthetic_batch(task, first, rows, x, y));
        CK_OK(mhub_dp_engine_micro_begin(e, k, r->micro));
        CK_OK(mhub_mlp_forward(m, x, y, rows, NULL));
        CK_OK(mhub_mlp_backward(m, weight));
        CK_OK(mhub_dp_engine_micro_end(e, k, r->micro));
    }
    CK_OK(mhub_dp_engine_finish_grad_sync(e));
    if (r->clip > 0) {
        double norm = -1;
        CK_OK(mhub_dp_engine_clip_grad_norm(e, r->clip, &norm));
        ck_assert(isfinite(norm) && norm > 0);
        clipped_steps += norm > r->clip;
    }
    CK_OK(mhub_dp_engine_step(e));
}

/* Train through the wrapper: the digest of the final parameters (through
 * the engine, gathered when sharded) and, if `flat` is given, their values
 * read back after the engine returned them to the model. */
static void train(const run *r, mhub_comm *dp, char hex[65], float *flat)
{
    mhub_mlp *m;
    mhub_mlp_config cfg = model_cfg;
    cfg.param_dtype = r->dtype;
    CK_OK(mhub_mlp_create(&cfg, be, GLOBAL_BATCH, 8, &m));
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 2));
    mhub_ddp_config dc;
    mhub_optim_config oc;
    configs(r, &dc, &oc);
    mhub_dp_engine *e;
    CK_OK(mhub_dp_engine_create(r->kind, mhub_mlp_params(m), dp, &dc, &oc, NULL, &e));
    ck_assert_int_eq(mhub_dp_engine_kind_of(e), r->kind);
    mhub_grad_ready_fn fn;
    void *user;
    mhub_unit_hooks hooks;
    CK_OK(mhub_dp_engine_hooks(e, &fn, &user, &hooks));
    mhub_mlp_set_grad_ready(m, fn, user);
    mhub_mlp_set_unit_hooks(m, &hooks);
    for (int s = 0; s < STEPS; s++)
        train_step(r, dp, e, m, &task, s);
    mhub_dp_engine_stats st;
    mhub_dp_engine_get_stats(e, &st);
    ck_assert_int_eq(st.steps, STEPS);
    CK_OK(mhub_dp_engine_digest(e, hex));
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_dp_engine_free(e);
    mhub_param_list *pl = mhub_mlp_params(m);
    for (int p = 0, at = 0; flat && p < pl->count; at += (int)pl->items[p].value.numel, p++)
        CK_OK(be->ops->cast(be, flat + at, MHUB_F32, pl->items[p].value.data,
                            pl->items[p].value.dtype, pl->items[p].value.numel));
    char again[65];
    CK_OK(mhub_param_list_digest(pl, again));
    ck_assert_str_eq(again, hex); /* what the engine hashed is what the model holds */
    mhub_mlp_free(m);
    mhub_synthetic_free(&task);
}

static mhub_comm *alone_comm(void)
{
    mhub_comm *alone;
    CK_OK(mhub_comm_split(world, world->rank, 0, "alone", &alone));
    return alone;
}

START_TEST(test_deterministic_bits)
{
    mhub_comm *alone = alone_comm();
    for (int optim = 0; optim <= 1; optim++) {
        char ref[65], hex[65];
        run one = {MHUB_DP_DDP, (mhub_optim_kind)optim, true, SHARDS, MHUB_F32, false, 0};
        train(&one, alone, ref, NULL);
        for (int kind = 0; kind <= 2; kind++) {
            run r = {(mhub_dp_engine_kind)kind, (mhub_optim_kind)optim, true, SHARDS / world->size,
                     MHUB_F32, false, 0};
            train(&r, world, hex, NULL); /* P ranks == 1 rank, whatever the engine */
            ck_assert_msg(!strcmp(hex, ref), "%s, %s on %d ranks: %s != %s",
                          mhub_dp_engine_name(r.kind), mhub_optim_kind_name(r.optim),
                          world->size, hex, ref);
            r.micro = SHARDS;
            train(&r, alone, hex, NULL);
            ck_assert_str_eq(hex, ref);
        }
    }
    mhub_comm_free(alone);
}
END_TEST

START_TEST(test_every_engine_trains_like_one_process)
{
    /* Outside deterministic mode the sums are grouped differently on P
     * ranks, so P-rank and one-rank results agree to rounding: 1e-5. */
    mhub_comm *alone = alone_comm();
    static float dist[MAX_PARAMS], one[MAX_PARAMS];
    for (int kind = 0; kind <= 2; kind++)
        for (int optim = 0; optim <= 1; optim++)
            for (int micro = 1; micro <= 2; micro++) {
                run r = {(mhub_dp_engine_kind)kind, (mhub_optim_kind)optim, false, micro,
                         MHUB_F32, false, 0};
                char hd[65], h1[65];
                train(&r, world, hd, dist);
                run single = r;
                single.micro = 1;
                /* one rank, the whole global batch in one micro-batch */
                train(&single, alone, h1, one);
                double worst = 0;
                for (int i = 0; i < MAX_PARAMS; i++)
                    worst = fmax(worst, mhub_test_relerr(dist[i], one[i], 1e-2));
                ck_assert_msg(worst < 1e-5, "%s, %s, %d micro: rel diff %g",
                              mhub_dp_engine_name(r.kind), mhub_optim_kind_name(r.optim), micro,
                              worst);
            }
    mhub_comm_free(alone);
}
END_TEST

START_TEST(test_half_precision_models)
{
    /* bf16 and f16 parameters with f32 main copies (DDP's optimizer, the
     * distributed optimizer's main shards, FSDP's master shards);
     * gradients reduced in f32
     * (grad_reduce_in_fp32) or in the model's dtype. P ranks against one
     * rank: the sums round differently, and in 16-bit more coarsely, so
     * the bound is a few 16-bit ulps. */
    mhub_comm *alone = alone_comm();
    static float dist[MAX_PARAMS], one[MAX_PARAMS];
    const mhub_dtype dts[] = {MHUB_BF16, MHUB_F16};
    const mhub_dp_engine_kind kinds[] = {MHUB_DP_DDP, MHUB_DP_DISTOPT, MHUB_DP_FSDP};
    for (int k = 0; k < 3; k++)
        for (int d = 0; d < 2; d++)
            for (int fp32 = 0; fp32 <= 1; fp32++) {
                run r = {kinds[k], MHUB_OPTIM_ADAMW, false, 2, dts[d], fp32, 0};
                char hd[65], h1[65];
                train(&r, world, hd, dist);
                run single = r;
                single.micro = 1;
                train(&single, alone, h1, one);
                double ulp = dts[d] == MHUB_BF16 ? 1.0 / 128 : 1.0 / 1024;
                int moved = 0;
                for (int i = 0; i < MAX_PARAMS; i++) {
                    ck_assert_msg(fabs(dist[i] - one[i]) <= 4 * ulp * fmax(fabs(one[i]), 1e-2),
                                  "%s, %s, grad in fp32 %d: element %d %g vs %g",
                                  mhub_dp_engine_name(r.kind), mhub_dtype_name(dts[d]), fp32, i,
                                  dist[i], one[i]);
                    moved += dist[i] != 0.0f;
                }
                ck_assert_int_gt(moved, MAX_PARAMS / 2);
            }
    /* deterministic mode and the NaN check need f32 gradients */
    mhub_mlp_config cfg = model_cfg;
    cfg.param_dtype = MHUB_BF16;
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, 4, 1, &m));
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    dc.deterministic = true;
    mhub_ddp *d = NULL;
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_ddp_create(mhub_mlp_params(m), world, &dc, &d));
    ck_assert_msg(strstr(mhub_last_error(), "grad_reduce_in_fp32") != NULL, "%s",
                  mhub_last_error());
    dc.grad_reduce_in_fp32 = true;
    CK_OK(mhub_ddp_create(mhub_mlp_params(m), world, &dc, &d));
    mhub_ddp_free(d);
    /* the distributed optimizer takes 16-bit models (its own checks are in
     * test_distopt.c; FSDP's in test_fsdp.c) */
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    mhub_ddp_config_init(&dc);
    mhub_dp_engine *e = NULL;
    CK_OK(mhub_dp_engine_create(MHUB_DP_DISTOPT, mhub_mlp_params(m), world, &dc, &oc, NULL, &e));
    mhub_dp_engine_free(e);
    mhub_mlp_free(m);
    mhub_comm_free(alone);
}
END_TEST

START_TEST(test_bad_input)
{
    mhub_dp_engine_kind k;
    ck_assert_int_eq(mhub_dp_engine_parse("fsdp", &k), 0);
    ck_assert_int_eq(k, MHUB_DP_FSDP);
    ck_assert_int_eq(mhub_dp_engine_parse("zero3", &k), -1);
    ck_assert_int_eq(mhub_dp_engine_parse(NULL, &k), -1);
    ck_assert_str_eq(mhub_dp_engine_name(MHUB_DP_DISTOPT), "distopt");
    ck_assert_str_eq(mhub_dp_engine_name((mhub_dp_engine_kind)9), "invalid");
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 1, &m));
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    mhub_dp_engine *e = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_create((mhub_dp_engine_kind)7,
                                                         mhub_mlp_params(m), world, &dc, &oc,
                                                         NULL, &e));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_dp_engine_create(MHUB_DP_DDP, NULL, world, &dc, &oc, NULL, &e));
    oc.lr = -1;
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_dp_engine_create(MHUB_DP_DDP, mhub_mlp_params(m), world, &dc, &oc, NULL, &e));
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    CK_OK(mhub_dp_engine_create(MHUB_DP_DDP, mhub_mlp_params(m), world, &dc, &oc, NULL, &e));
    ck_assert_int_eq(mhub_dp_engine_shard_index(e, 1, 2, 1, 4), 5);
    ck_assert_int_eq(mhub_dp_engine_shard_index(e, 2, 2, 1, 4), -1);
    ck_assert_int_eq(mhub_dp_engine_shard_index(NULL, 0, 1, 0, 1), -1);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_micro_begin(e, 2, 2));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_micro_end(e, 0, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_lr(e, -3.0f));
    CK_OK(mhub_dp_engine_set_lr(e, 0.5f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_digest(e, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_zero_grad(NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_hooks(e, NULL, NULL, NULL));
    mhub_dp_engine_free(e);
    mhub_dp_engine_free(NULL);
    mhub_mlp_free(m);
}
END_TEST

/* ---- gradient clipping ------------------------------------------------------- */

/* An engine over a fresh model (same seed on every rank) with its hooks
 * installed; the caller frees both. */
static mhub_dp_engine *engine_for(const run *r, mhub_comm *dp, mhub_mlp **m)
{
    mhub_mlp_config cfg = model_cfg;
    cfg.param_dtype = r->dtype;
    CK_OK(mhub_mlp_create(&cfg, be, GLOBAL_BATCH, 8, m));
    mhub_ddp_config dc;
    mhub_optim_config oc;
    configs(r, &dc, &oc);
    mhub_dp_engine *e;
    CK_OK(mhub_dp_engine_create(r->kind, mhub_mlp_params(*m), dp, &dc, &oc, NULL, &e));
    mhub_grad_ready_fn fn;
    void *user;
    mhub_unit_hooks hooks;
    CK_OK(mhub_dp_engine_hooks(e, &fn, &user, &hooks));
    mhub_mlp_set_grad_ready(*m, fn, user);
    mhub_mlp_set_unit_hooks(*m, &hooks);
    return e;
}

static void engine_done(mhub_dp_engine *e, mhub_mlp *m)
{
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_dp_engine_free(e);
    mhub_mlp_free(m);
}

/* Forward and backward of step 0's global batch, split as train_step
 * splits it, then finish_grad_sync: the reduced gradient is in place. */
static void reduce_step0(const run *r, mhub_comm *dp, mhub_dp_engine *e, mhub_mlp *m)
{
    int64_t local = GLOBAL_BATCH / dp->size, rows = local / r->micro;
    float weight = r->deterministic ? 1.0f / GLOBAL_BATCH : 1.0f / (float)local;
    float x[GLOBAL_BATCH * 10];
    int32_t y[GLOBAL_BATCH];
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 2));
    CK_OK(mhub_dp_engine_zero_grad(e));
    for (int k = 0; k < r->micro; k++) {
        int64_t shard = mhub_dp_engine_shard_index(e, dp->rank, dp->size, k, r->micro);
        CK_OK(mhub_synthetic_batch(&task, (uint64_t)(shard * rows), rows, x, y));
        CK_OK(mhub_dp_engine_micro_begin(e, k, r->micro));
        CK_OK(mhub_mlp_forward(m, x, y, rows, NULL));
        CK_OK(mhub_mlp_backward(m, weight));
        CK_OK(mhub_dp_engine_micro_end(e, k, r->micro));
    }
    CK_OK(mhub_dp_engine_finish_grad_sync(e));
    mhub_synthetic_free(&task);
}

/* The reference: one process, the whole global batch, the norm summed
 * here from the model's f32 gradients. */
static double reference_norm(void)
{
    mhub_comm *alone;
    CK_OK(mhub_comm_split(world, world->rank, 0, "alone", &alone));
    run one = {MHUB_DP_DDP, MHUB_OPTIM_SGD, false, 1, MHUB_F32, false, 0};
    mhub_mlp *m;
    mhub_dp_engine *e = engine_for(&one, alone, &m);
    reduce_step0(&one, alone, e, m);
    mhub_param_list *pl = mhub_mlp_params(m);
    static float g[MAX_PARAMS];
    double ss = 0;
    for (int p = 0; p < pl->count; p++) {
        const mhub_tensor *t = &pl->items[p].grad;
        CK_OK(be->ops->copy(be, g, t->data, (size_t)t->numel * sizeof(float),
                            MHUB_COPY_DEVICE_TO_HOST));
        for (int64_t i = 0; i < t->numel; i++)
            ss += (double)g[i] * g[i];
    }
    engine_done(e, m);
    mhub_comm_free(alone);
    return sqrt(ss);
}

/* Every rank's value of x, bitwise equal to rank 0's. */
static void check_same_on_every_rank(double x)
{
    double all[8];
    ck_assert_int_le(world->size, 8);
    CK_OK(mhub_comm_allgather(world, &x, all, 2, MHUB_F32)); /* 8 bytes, copied */
    for (int q = 0; q < world->size; q++)
        ck_assert_msg(!memcmp(&all[q], &all[0], sizeof x), "rank %d: %.17g vs %.17g", q,
                      all[q], all[0]);
}

/* Measure (max_norm 0), clip to half, measure again: the clipped norm is
 * max_norm up to the 1e-6 of the formula and the f32 scale factor (16-bit
 * gradients round each element once more: `tol`). Returns the norm. */
static double measure_and_clip(mhub_dp_engine *e, double tol)
{
    double norm = -1, again = -1, clipped = -1;
    CK_OK(mhub_dp_engine_clip_grad_norm(e, 0, &norm));
    check_same_on_every_rank(norm);
    CK_OK(mhub_dp_engine_clip_grad_norm(e, 1e9, &again)); /* above the norm: no change */
    ck_assert(again == norm);
    double max_norm = norm / 2;
    CK_OK(mhub_dp_engine_clip_grad_norm(e, max_norm, &again));
    ck_assert(again == norm); /* reports the norm before clipping */
    CK_OK(mhub_dp_engine_clip_grad_norm(e, 0, &clipped));
    check_same_on_every_rank(clipped);
    ck_assert_msg(mhub_test_relerr(clipped, max_norm, 0) < tol, "clipped %.9g, max %.9g",
                  clipped, max_norm);
    return norm;
}

START_TEST(test_clip_norm_matches_one_process)
{
    double ref = reference_norm();
    ck_assert(ref > 0);
    for (int kind = 0; kind <= 2; kind++)
        for (int det = 0; det <= 1; det++)
            for (int micro = 1; micro <= 2; micro++) {
                run r = {(mhub_dp_engine_kind)kind, MHUB_OPTIM_SGD, det, micro, MHUB_F32, false,
                         0};
                mhub_mlp *m;
                mhub_dp_engine *e = engine_for(&r, world, &m);
                reduce_step0(&r, world, e, m);
                double norm = measure_and_clip(e, 1e-5);
                ck_assert_msg(mhub_test_relerr(norm, ref, 0) < 1e-6,
                              "%s det %d micro %d on %d ranks: norm %.12g, one process %.12g",
                              mhub_dp_engine_name(r.kind), det, micro, world->size, norm, ref);
                CK_OK(mhub_dp_engine_step(e)); /* the clipped gradients are usable */
                engine_done(e, m);
            }
}
END_TEST

START_TEST(test_clip_norm_of_16bit_gradients)
{
    /* bf16/f16 models with gradients kept in the model's dtype (DDP and
     * distopt buffers) or f32 (FSDP's shards, grad_reduce_in_fp32): read
     * and scaled through f32; the norm is that of rounded gradients */
    double ref = reference_norm();
    const mhub_dtype dts[] = {MHUB_BF16, MHUB_F16};
    for (int kind = 0; kind <= 2; kind++)
        for (int d = 0; d < 2; d++)
            for (int fp32 = 0; fp32 <= 1; fp32++) {
                run r = {(mhub_dp_engine_kind)kind, MHUB_OPTIM_ADAMW, false, 2, dts[d], fp32, 0};
                mhub_mlp *m;
                mhub_dp_engine *e = engine_for(&r, world, &m);
                reduce_step0(&r, world, e, m);
                double ulp = dts[d] == MHUB_BF16 ? 1.0 / 128 : 1.0 / 1024;
                double norm = measure_and_clip(e, fp32 ? 1e-5 : ulp);
                /* 16-bit parameters change the forward too: a loose bound */
                ck_assert_msg(mhub_test_relerr(norm, ref, 0) < 0.05, "%s %s: %g vs %g",
                              mhub_dp_engine_name(r.kind), mhub_dtype_name(dts[d]), norm, ref);
                CK_OK(mhub_dp_engine_step(e));
                engine_done(e, m);
            }
}
END_TEST

START_TEST(test_clipped_training_matches_one_process)
{
    /* max_norm well below the gradients' norm, so every step clips */
    mhub_comm *alone = alone_comm();
    static float dist[MAX_PARAMS], one[MAX_PARAMS];
    char hd[65], h1[65];
    run single = {MHUB_DP_DDP, MHUB_OPTIM_SGD, false, 1, MHUB_F32, false, 0.05};
    for (int optim = 0; optim <= 1; optim++) {
        single.optim = (mhub_optim_kind)optim;
        clipped_steps = 0;
        train(&single, alone, h1, one);
        ck_assert_int_eq(clipped_steps, STEPS);
        for (int kind = 0; kind <= 2; kind++)
            for (int micro = 1; micro <= 2; micro++) {
                run r = single;
                r.kind = (mhub_dp_engine_kind)kind;
                r.micro = micro;
                clipped_steps = 0;
                train(&r, world, hd, dist);
                ck_assert_int_eq(clipped_steps, STEPS);
                double worst = 0;
                for (int i = 0; i < MAX_PARAMS; i++)
                    worst = fmax(worst, mhub_test_relerr(dist[i], one[i], 1e-2));
                ck_assert_msg(worst < 1e-5, "%s, %s, %d micro: rel diff %g",
                              mhub_dp_engine_name(r.kind), mhub_optim_kind_name(r.optim), micro,
                              worst);
            }
    }
    mhub_comm_free(alone);
}
END_TEST

START_TEST(test_deterministic_clipping_bits)
{
    /* DDP and the distributed optimizer sum the norm per parameter in list
     * order over the full reduced gradient: clipped training keeps the
     * same bits on P ranks as on one, for both engines */
    mhub_comm *alone = alone_comm();
    char ref[65], hex[65];
    run one = {MHUB_DP_DDP, MHUB_OPTIM_ADAMW, true, SHARDS, MHUB_F32, false, 0.05};
    clipped_steps = 0;
    train(&one, alone, ref, NULL);
    ck_assert_int_eq(clipped_steps, STEPS);
    for (int kind = 0; kind <= 1; kind++) {
        run r = one;
        r.kind = (mhub_dp_engine_kind)kind;
        r.micro = SHARDS / world->size;
        train(&r, world, hex, NULL);
        ck_assert_msg(!strcmp(hex, ref), "%s on %d ranks: %s != %s", mhub_dp_engine_name(r.kind),
                      world->size, hex, ref);
    }
    mhub_comm_free(alone);
}
END_TEST

/* A NaN in parameter 0's gradient on every rank (after the reduction). */
static void poison_first_grad(mhub_dp_engine *e)
{
    const mhub_tensor *t = &mhub_dp_engine_params(e)->items[0].grad;
    static float nan_block[MAX_PARAMS];
    for (int64_t i = 0; i < t->numel; i++)
        nan_block[i] = NAN;
    CK_OK(be->ops->copy(be, t->data, nan_block, (size_t)t->numel * sizeof(float),
                        MHUB_COPY_HOST_TO_DEVICE));
}

START_TEST(test_clip_bad_input)
{
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_clip_grad_norm(NULL, 1.0, NULL));
    for (int kind = 0; kind <= 2; kind++) {
        run r = {(mhub_dp_engine_kind)kind, MHUB_OPTIM_SGD, false, 1, MHUB_F32, false, 0};
        mhub_mlp *m;
        mhub_dp_engine *e = engine_for(&r, world, &m);
        /* no reduced gradients yet: at create, after zero_grad */
        CK_FAILS(MHUB_ERR_STATE, mhub_dp_engine_clip_grad_norm(e, 1.0, NULL));
        ck_assert_msg(strstr(mhub_last_error(), "finish_grad_sync") != NULL, "%s",
                      mhub_last_error());
        CK_OK(mhub_dp_engine_zero_grad(e));
        CK_FAILS(MHUB_ERR_STATE, mhub_dp_engine_clip_grad_norm(e, 1.0, NULL));
        reduce_step0(&r, world, e, m);
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_clip_grad_norm(e, -1.0, NULL));
        ck_assert_msg(strstr(mhub_last_error(), "max_norm") != NULL, "%s", mhub_last_error());
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_clip_grad_norm(e, NAN, NULL));
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_clip_grad_norm(e, INFINITY, NULL));
        CK_OK(mhub_dp_engine_clip_grad_norm(e, 1.0, NULL)); /* norm_out may be NULL */
        CK_OK(mhub_dp_engine_step(e));
        /* after the step the gradients are spent */
        CK_FAILS(MHUB_ERR_STATE, mhub_dp_engine_clip_grad_norm(e, 1.0, NULL));
        if (kind != MHUB_DP_FSDP) { /* FSDP's gradients are not reachable from outside */
            reduce_step0(&r, world, e, m);
            poison_first_grad(e);
            double norm = 0;
            CK_FAILS(MHUB_ERR_NUMERIC, mhub_dp_engine_clip_grad_norm(e, 1.0, &norm));
            ck_assert(isnan(norm));
            ck_assert_msg(strstr(mhub_last_error(), "norm") != NULL, "%s", mhub_last_error());
        }
        engine_done(e, m);
    }
}
END_TEST

/* ---- checkpoint access: parameters, optimizer state, step count ------------- */

/* A model (same seed on every rank) under an engine with optimizer `oc`
 * and the default DDP config, hooks installed; free with engine_done. */
static mhub_dp_engine *engine_with(mhub_dp_engine_kind kind, mhub_dtype dt,
                                   const mhub_optim_config *oc, mhub_mlp **m)
{
    mhub_mlp_config cfg = model_cfg;
    cfg.param_dtype = dt;
    CK_OK(mhub_mlp_create(&cfg, be, GLOBAL_BATCH, 8, m));
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_dp_engine *e;
    CK_OK(mhub_dp_engine_create(kind, mhub_mlp_params(*m), world, &dc, oc, NULL, &e));
    mhub_grad_ready_fn fn;
    void *user;
    mhub_unit_hooks hooks;
    CK_OK(mhub_dp_engine_hooks(e, &fn, &user, &hooks));
    mhub_mlp_set_grad_ready(*m, fn, user);
    mhub_mlp_set_unit_hooks(*m, &hooks);
    return e;
}

/* A smooth pattern distinct for every (tensor, element); `salt` tells
 * tensors apart. Small multiples of 1/1024 when `coarse`, exact in bf16. */
static float pattern(int salt, int64_t i, bool coarse)
{
    if (coarse)
        return (float)((salt * 7 + i) % 41 - 20) / 1024.0f;
    return 0.05f * (float)sin(0.37 * (double)i + 1.3 * salt) + 0.001f * (float)salt;
}

static void fill_pattern(float *dst, int64_t n, int salt, bool coarse)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = pattern(salt, i, coarse);
}

/* Step 0's full global batch through a plain model (no engine, one
 * process) holding `values` (every parameter in list order, flat): the
 * reference gradient, flat in the same order. */
static void one_process_grads(const float *values, float *grads)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, 8, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
        CK_OK(be->ops->copy(be, pl->items[p].value.data, values + at,
                            mhub_tensor_nbytes(&pl->items[p].value), MHUB_COPY_HOST_TO_DEVICE));
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 2));
    float x[GLOBAL_BATCH * 10];
    int32_t y[GLOBAL_BATCH];
    CK_OK(mhub_synthetic_batch(&task, 0, GLOBAL_BATCH, x, y));
    CK_OK(mhub_param_list_zero_grad(pl));
    CK_OK(mhub_mlp_forward(m, x, y, GLOBAL_BATCH, NULL));
    CK_OK(mhub_mlp_backward(m, 1.0f / GLOBAL_BATCH));
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
        CK_OK(be->ops->copy(be, grads + at, pl->items[p].grad.data,
                            mhub_tensor_nbytes(&pl->items[p].grad), MHUB_COPY_DEVICE_TO_HOST));
    mhub_synthetic_free(&task);
    mhub_mlp_free(m);
}

START_TEST(test_state_names)
{
    const struct {
        mhub_optim_kind optim;
        float momentum;
        mhub_dtype dt;
        int count;
        const char *names[3];
    } cases[] = {
        {MHUB_OPTIM_ADAMW, 0.0f, MHUB_F32, 2, {"exp_avg", "exp_avg_sq"}},
        {MHUB_OPTIM_ADAMW, 0.0f, MHUB_BF16, 3, {"exp_avg", "exp_avg_sq", "main_param"}},
        {MHUB_OPTIM_SGD, 0.5f, MHUB_F32, 1, {"momentum"}},
        {MHUB_OPTIM_SGD, 0.5f, MHUB_F16, 2, {"momentum", "main_param"}},
        {MHUB_OPTIM_SGD, 0.0f, MHUB_F32, 0, {NULL}},
        {MHUB_OPTIM_SGD, 0.0f, MHUB_BF16, 1, {"main_param"}},
    };
    for (int kind = 0; kind <= 2; kind++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
            mhub_optim_config oc;
            mhub_optim_config_init(&oc, cases[c].optim);
            oc.momentum = cases[c].momentum;
            mhub_mlp *m;
            mhub_dp_engine *e = engine_with((mhub_dp_engine_kind)kind, cases[c].dt, &oc, &m);
            int count = mhub_dp_engine_params(e)->count;
            for (int p = 0; p < count; p++) {
                ck_assert_int_eq(mhub_dp_engine_state_count(e, p), cases[c].count);
                for (int w = 0; w < cases[c].count; w++) {
                    const char *name = mhub_dp_engine_state_name(e, p, w);
                    ck_assert_msg(name && !strcmp(name, cases[c].names[w]),
                                  "%s case %zu state %d: %s, expected %s",
                                  mhub_dp_engine_name((mhub_dp_engine_kind)kind), c, w,
                                  name ? name : "NULL", cases[c].names[w]);
                }
                ck_assert_ptr_null(mhub_dp_engine_state_name(e, p, cases[c].count));
                ck_assert_ptr_null(mhub_dp_engine_state_name(e, p, -1));
            }
            ck_assert_ptr_null(mhub_dp_engine_state_name(e, -1, 0));
            ck_assert_ptr_null(mhub_dp_engine_state_name(e, count, 0));
            ck_assert_ptr_null(mhub_dp_engine_state_name(NULL, 0, 0));
            engine_done(e, m);
        }
    /* a frozen parameter has no state (DDP and distopt take frozen ones) */
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_ADAMW);
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 8, &m));
    mhub_mlp_params(m)->items[1].requires_grad = false;
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    for (int kind = 0; kind <= 1; kind++) {
        mhub_dp_engine *e;
        CK_OK(mhub_dp_engine_create((mhub_dp_engine_kind)kind, mhub_mlp_params(m), world, &dc,
                                    &oc, NULL, &e));
        ck_assert_int_eq(mhub_dp_engine_state_count(e, 1), 0);
        ck_assert_ptr_null(mhub_dp_engine_state_name(e, 1, 0));
        ck_assert_str_eq(mhub_dp_engine_state_name(e, 0, 1), "exp_avg_sq");
        mhub_dp_engine_free(e);
    }
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_set_param_round_trip_and_step_from_it)
{
    /* SGD with momentum from zero state: the first step moves every
     * parameter by -lr * the reduced gradient, which one process computes
     * here at the values set_param installed */
    static float set[MAX_PARAMS], got[MAX_PARAMS], grads[MAX_PARAMS];
    for (int kind = 0; kind <= 2; kind++) {
        run r = {(mhub_dp_engine_kind)kind, MHUB_OPTIM_SGD, false, 1, MHUB_F32, false, 0};
        mhub_mlp *m;
        mhub_dp_engine *e = engine_for(&r, world, &m);
        const mhub_param_list *pl = mhub_dp_engine_params(e);
        int64_t total = 0;
        for (int p = 0; p < pl->count; total += pl->items[p].value.numel, p++) {
            int64_t n = pl->items[p].value.numel;
            CK_OK(mhub_dp_engine_get_param(e, p, got + total));
            fill_pattern(set + total, n, p, false);
            ck_assert(memcmp(set + total, got + total, (size_t)n * sizeof(float)) != 0);
            CK_OK(mhub_dp_engine_set_param(e, p, set + total));
            CK_OK(mhub_dp_engine_get_param(e, p, got + total));
            ck_assert_msg(!memcmp(set + total, got + total, (size_t)n * sizeof(float)),
                          "%s: parameter %d does not read back bit for bit",
                          mhub_dp_engine_name(r.kind), p);
        }
        ck_assert_int_eq(total, MAX_PARAMS);
        one_process_grads(set, grads);
        reduce_step0(&r, world, e, m);
        CK_OK(mhub_dp_engine_step(e));
        double worst = 0;
        for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
            CK_OK(mhub_dp_engine_get_param(e, p, got + at));
        for (int i = 0; i < MAX_PARAMS; i++) {
            double expect = (double)set[i] - 0.2 * (double)grads[i];
            worst = fmax(worst, mhub_test_relerr(got[i], expect, 1e-2));
        }
        ck_assert_msg(worst < 1e-6, "%s on %d ranks: a step from the set values is off by %g",
                      mhub_dp_engine_name(r.kind), world->size, worst);
        engine_done(e, m);
    }
}
END_TEST

START_TEST(test_set_param_of_16bit_models)
{
    /* Values exact in bf16/f16 read back unchanged, and a step with a zero
     * learning rate keeps them: the step starts from the set values, not
     * from an f32 main copy left behind. A value between two bf16
     * neighbours is rounded: every engine then holds the same parameters
     * (digest of the model-dtype values). */
    static float set[MAX_PARAMS], got[MAX_PARAMS];
    const mhub_dtype dts[] = {MHUB_BF16, MHUB_F16};
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    for (int d = 0; d < 2; d++) {
        char digest[3][65];
        for (int kind = 0; kind <= 2; kind++) {
            const char *name = mhub_dp_engine_name((mhub_dp_engine_kind)kind);
            mhub_mlp *m;
            mhub_dp_engine *e = engine_with((mhub_dp_engine_kind)kind, dts[d], &oc, &m);
            const mhub_param_list *pl = mhub_dp_engine_params(e);
            for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++) {
                fill_pattern(set + at, pl->items[p].value.numel, p, true);
                CK_OK(mhub_dp_engine_set_param(e, p, set + at));
            }
            run r = {(mhub_dp_engine_kind)kind, MHUB_OPTIM_SGD, false, 1, dts[d], false, 0};
            reduce_step0(&r, world, e, m);
            CK_OK(mhub_dp_engine_set_lr(e, 0.0f));
            CK_OK(mhub_dp_engine_step(e));
            for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
                CK_OK(mhub_dp_engine_get_param(e, p, got + at));
            for (int i = 0; i < MAX_PARAMS; i++)
                ck_assert_msg(got[i] == set[i], "%s %s: element %d is %.9g after a step of lr 0 "
                              "from %.9g", name, mhub_dtype_name(dts[d]), i, got[i], set[i]);
            /* 1 + 2^-10: between bf16's 1 and 1 + 2^-7 (nearer 1), exact in f16 */
            int64_t n = pl->items[0].value.numel;
            for (int64_t i = 0; i < n; i++)
                set[i] = 1.0f + 1.0f / 1024;
            CK_OK(mhub_dp_engine_set_param(e, 0, set));
            CK_OK(mhub_dp_engine_digest(e, digest[kind]));
            /* every engine returns the parameter, rounded to its dtype */
            float expect = dts[d] == MHUB_BF16 ? 1.0f : 1.0f + 1.0f / 1024;
            CK_OK(mhub_dp_engine_get_param(e, 0, got));
            for (int64_t i = 0; i < n; i++)
                ck_assert_msg(got[i] == expect, "%s %s: %.9g, expected %.9g", name,
                              mhub_dtype_name(dts[d]), got[i], expect);
            ck_assert_msg(!strcmp(digest[kind], digest[0]), "%s %s: digest %s, ddp's %s", name,
                          mhub_dtype_name(dts[d]), digest[kind], digest[0]);
            engine_done(e, m);
        }
    }
}
END_TEST

/* PyTorch's AdamW step t on one element (no weight decay), in double. */
static double adamw_reference(double x, double g, double m, double v, const mhub_optim_config *oc,
                              int64_t t)
{
    double b1 = oc->beta1, b2 = oc->beta2;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    double bc1 = 1 - pow(b1, (double)t), bc2 = 1 - pow(b2, (double)t);
    return x - oc->lr / bc1 * m / (sqrt(v) / sqrt(bc2) + oc->eps);
}

START_TEST(test_state_round_trip_and_bias_correction)
{
    /* Set the values, both moments and the step count, take one step, and
     * compare with AdamW's formula at t = steps + 1 from those states and
     * the one-process gradient. */
    enum { RESUME_AT = 9 };
    static float x0[MAX_PARAMS], m0[MAX_PARAMS], v0[MAX_PARAMS], got[MAX_PARAMS],
        grads[MAX_PARAMS], m1[MAX_PARAMS];
    for (int kind = 0; kind <= 2; kind++) {
        run r = {(mhub_dp_engine_kind)kind, MHUB_OPTIM_ADAMW, false, 1, MHUB_F32, false, 0};
        mhub_mlp *m;
        mhub_dp_engine *e = engine_for(&r, world, &m);
        mhub_ddp_config dc;
        mhub_optim_config oc;
        configs(&r, &dc, &oc);
        const mhub_param_list *pl = mhub_dp_engine_params(e);
        ck_assert_int_eq(mhub_dp_engine_optim_steps(e), 0);
        for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++) {
            int64_t n = pl->items[p].value.numel;
            fill_pattern(x0 + at, n, p, false);
            for (int64_t i = 0; i < n; i++) {
                m0[at + i] = 0.01f * pattern(p + 11, i, false);
                v0[at + i] = 1e-4f * (1.0f + pattern(p + 23, i, false));
            }
            CK_OK(mhub_dp_engine_set_param(e, p, x0 + at));
            CK_OK(mhub_dp_engine_set_state(e, p, 0, m0 + at));
            CK_OK(mhub_dp_engine_set_state(e, p, 1, v0 + at));
            CK_OK(mhub_dp_engine_get_state(e, p, 0, got));
            ck_assert(!memcmp(got, m0 + at, (size_t)n * sizeof(float)));
            CK_OK(mhub_dp_engine_get_state(e, p, 1, got));
            ck_assert(!memcmp(got, v0 + at, (size_t)n * sizeof(float)));
        }
        CK_OK(mhub_dp_engine_set_optim_steps(e, RESUME_AT));
        ck_assert_int_eq(mhub_dp_engine_optim_steps(e), RESUME_AT);
        one_process_grads(x0, grads);
        reduce_step0(&r, world, e, m);
        CK_OK(mhub_dp_engine_step(e));
        ck_assert_int_eq(mhub_dp_engine_optim_steps(e), RESUME_AT + 1);
        for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++) {
            CK_OK(mhub_dp_engine_get_param(e, p, got + at));
            CK_OK(mhub_dp_engine_get_state(e, p, 0, m1 + at));
        }
        /* errors relative to the step (floor 1e-5: a few f32 ulps of the
         * parameter are then far below the bound) */
        double worst = 0, worst_m = 0, moved = 0, t1_apart = 0;
        for (int i = 0; i < MAX_PARAMS; i++) {
            double want = adamw_reference(x0[i], grads[i], m0[i], v0[i], &oc, RESUME_AT + 1);
            double first = adamw_reference(x0[i], grads[i], m0[i], v0[i], &oc, 1);
            double step = fabs(want - x0[i]);
            worst = fmax(worst, fabs(got[i] - want) / fmax(step, 1e-5));
            moved += step;
            t1_apart += fabs(first - want); /* what a step count left at 0 would give */
            double want_m = 0.9 * m0[i] + 0.1 * grads[i];
            worst_m = fmax(worst_m, mhub_test_relerr(m1[i], want_m, 1e-4));
        }
        ck_assert_msg(worst < 1e-3, "%s on %d ranks: update off AdamW's t = %d by %g of a step",
                      mhub_dp_engine_name(r.kind), world->size, RESUME_AT + 1, worst);
        ck_assert_msg(t1_apart > 0.3 * moved, "t = 1 and t = %d are too close to tell apart",
                      RESUME_AT + 1);
        ck_assert_msg(worst_m < 1e-4, "%s: exp_avg off by %g", mhub_dp_engine_name(r.kind),
                      worst_m);
        engine_done(e, m);
    }
}
END_TEST

START_TEST(test_main_param_state_round_trip)
{
    /* a 16-bit model's f32 main copy keeps the unrounded values */
    static float set[MAX_PARAMS], got[MAX_PARAMS];
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    for (int kind = 0; kind <= 2; kind++) {
        mhub_mlp *m;
        mhub_dp_engine *e = engine_with((mhub_dp_engine_kind)kind, MHUB_BF16, &oc, &m);
        const mhub_param_list *pl = mhub_dp_engine_params(e);
        for (int p = 0; p < pl->count; p++) {
            int64_t n = pl->items[p].value.numel;
            ck_assert_str_eq(mhub_dp_engine_state_name(e, p, 0), "main_param");
            fill_pattern(set, n, p, false);
            CK_OK(mhub_dp_engine_set_state(e, p, 0, set));
            CK_OK(mhub_dp_engine_get_state(e, p, 0, got));
            ck_assert_msg(!memcmp(set, got, (size_t)n * sizeof(float)), "%s parameter %d",
                          mhub_dp_engine_name((mhub_dp_engine_kind)kind), p);
        }
        engine_done(e, m);
    }
}
END_TEST

START_TEST(test_checkpoint_access_bad_input)
{
    static float buf[MAX_PARAMS];
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_get_param(NULL, 0, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_param(NULL, 0, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_state(NULL, 0, 0, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_optim_steps(NULL, 1));
    ck_assert_int_eq(mhub_dp_engine_optim_steps(NULL), 0);
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_ADAMW);
    for (int kind = 0; kind <= 2; kind++) {
        const char *name = mhub_dp_engine_name((mhub_dp_engine_kind)kind);
        mhub_mlp *m;
        mhub_dp_engine *e = engine_with((mhub_dp_engine_kind)kind, MHUB_F32, &oc, &m);
        int count = mhub_dp_engine_params(e)->count;
        /* every rank passes the same bad argument */
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_get_param(e, -1, buf));
        ck_assert_msg(strstr(mhub_last_error(), "parameter index -1") != NULL, "%s: %s", name,
                      mhub_last_error());
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_param(e, count, buf));
        ck_assert_msg(strstr(mhub_last_error(), "parameter index") != NULL, "%s: %s", name,
                      mhub_last_error());
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_get_param(e, 0, NULL));
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_param(e, 0, NULL));
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_state(e, 0, 2, buf));
        ck_assert_msg(strstr(mhub_last_error(), "state 2 of parameter 0") != NULL, "%s: %s",
                      name, mhub_last_error());
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_state(e, 0, -1, buf));
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_state(e, count, 0, buf));
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_state(e, 0, 0, NULL));
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_optim_steps(e, -1));
        ck_assert_msg(strstr(mhub_last_error(), "optimizer steps -1") != NULL, "%s: %s", name,
                      mhub_last_error());
        ck_assert_int_eq(mhub_dp_engine_optim_steps(e), 0); /* left as it was */
        /* the sharded engines' get/set_param are collective: one rank's bad
         * index fails every rank, naming that rank, and nobody hangs */
        if (kind != MHUB_DP_DDP && world->size > 1) {
            int bad = world->size - 1;
            int index = world->rank == bad ? count + 3 : 0;
            CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_get_param(e, index, buf));
            char from[32];
            snprintf(from, sizeof from, "(from rank %d)", bad);
            if (world->rank != bad)
                ck_assert_msg(strstr(mhub_last_error(), from) != NULL, "%s: %s", name,
                              mhub_last_error());
            CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dp_engine_set_param(e, index, buf));
        }
        /* the engine is still usable afterwards */
        CK_OK(mhub_dp_engine_get_param(e, 0, buf));
        CK_OK(mhub_dp_engine_set_param(e, 0, buf));
        engine_done(e, m);
    }
}
END_TEST

/* ---- the memory estimate ---------------------------------------------------- */

/* DDP puts its gradient buffer in the communicator's shared-memory window
 * when dp > 1, where the backend's allocator does not see it. A copy of
 * the world communicator whose alloc/free_mem count those bytes lets the
 * test measure every byte the engine holds. */
enum { MAX_COMM_BLOCKS = 8 };
static struct {
    void *ptr;
    size_t bytes;
} comm_blocks[MAX_COMM_BLOCKS];
static size_t comm_held;
static const mhub_comm_ops *world_ops;

static mhub_status counting_alloc(mhub_comm *c, size_t bytes, void **out)
{
    MHUB_TRY(world_ops->alloc(c, bytes, out));
    for (int i = 0; i < MAX_COMM_BLOCKS; i++)
        if (!comm_blocks[i].ptr) {
            comm_blocks[i].ptr = *out;
            comm_blocks[i].bytes = bytes;
            comm_held += bytes;
            return MHUB_OK;
        }
    world_ops->free_mem(c, *out);
    return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "test: more than %d communicator blocks",
                      MAX_COMM_BLOCKS);
}

static void counting_free(mhub_comm *c, void *ptr)
{
    for (int i = 0; i < MAX_COMM_BLOCKS; i++)
        if (ptr && comm_blocks[i].ptr == ptr) {
            comm_held -= comm_blocks[i].bytes;
            comm_blocks[i].ptr = NULL;
        }
    world_ops->free_mem(c, ptr);
}

/* `counted` shares world's MPI state; it is never freed itself. */
static void make_counting_comm(mhub_comm *counted, mhub_comm_ops *ops)
{
    world_ops = world->ops;
    *ops = *world->ops;
    if (ops->alloc) {
        ops->alloc = counting_alloc;
        ops->free_mem = counting_free;
    }
    *counted = *world;
    counted->ops = ops;
}

static int64_t backend_bytes(void)
{
    size_t cur = 0;
    CK_OK(be->ops->memory_usage(be, &cur, NULL));
    return (int64_t)cur;
}

/* The model's parameter storage (values and f32 gradients), which the
 * engines keep, adopt into their buffers or free. */
static int64_t param_storage_bytes(const mhub_param_list *pl)
{
    int64_t bytes = 0;
    for (int p = 0; p < pl->count; p++)
        bytes += (int64_t)(mhub_tensor_nbytes(&pl->items[p].value) +
                           mhub_tensor_nbytes(&pl->items[p].grad));
    return bytes;
}

static void print_estimate_row(const run *r, bool reshard, const mhub_dp_memory *est,
                               int64_t measured, int64_t expect)
{
    if (world->rank != 0)
        return;
    printf("estimate dp %d %-7s %-4s %-5s %-5s micro %d%s: param %6lld grad %6lld main %6lld "
           "state %6lld gathered %6lld scratch %6lld pad %4lld | total %6lld expected %6lld "
           "measured %6lld\n",
           world->size, mhub_dp_engine_name(r->kind), mhub_dtype_name(r->dtype),
           mhub_optim_kind_name(r->optim), r->deterministic ? "det" : "plain", r->micro,
           r->kind == MHUB_DP_FSDP && !reshard ? " keep" : "", (long long)est->param_bytes,
           (long long)est->grad_bytes, (long long)est->main_param_bytes,
           (long long)est->optim_state_bytes, (long long)est->gathered_bytes,
           (long long)est->scratch_bytes, (long long)est->padding_elems,
           (long long)est->total_bytes, (long long)expect, (long long)measured);
}

/* The estimate for this model and configs against what the allocator (and
 * the communicator's window) count for the engine after create and one
 * training step, including the model's parameter storage still in use.
 * Exact: the estimate counts the engines' scratch too. The one known
 * difference is deterministic mode with more than one micro-shard per
 * rank: the estimate counts one sum-tree level, and each doubling of the
 * micro-shards adds one more gradient-sized f32 buffer. */
static void check_estimate(const run *r, bool reshard)
{
    mhub_comm counted;
    mhub_comm_ops ops;
    make_counting_comm(&counted, &ops);
    mhub_mlp_config cfg = model_cfg;
    cfg.param_dtype = r->dtype;
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, GLOBAL_BATCH, 8, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_ddp_config dc;
    mhub_optim_config oc;
    configs(r, &dc, &oc);
    mhub_fsdp_options fo;
    mhub_fsdp_options_init(&fo);
    fo.reshard_after_forward = reshard;
    mhub_dp_memory est;
    int64_t before = backend_bytes();
    CK_OK(mhub_dp_engine_estimate_memory(r->kind, pl, world->size, &dc, &oc, &fo, &est));
    ck_assert_int_eq(backend_bytes(), before); /* estimating allocates nothing */
    ck_assert_int_eq(est.total_bytes, est.param_bytes + est.grad_bytes + est.main_param_bytes +
                                          est.optim_state_bytes + est.gathered_bytes +
                                          est.scratch_bytes);
    int64_t outside = before - param_storage_bytes(pl);
    size_t comm_before = comm_held;

    mhub_dp_engine *e;
    CK_OK(mhub_dp_engine_create(r->kind, pl, &counted, &dc, &oc, &fo, &e));
    mhub_grad_ready_fn fn;
    void *user;
    mhub_unit_hooks hooks;
    CK_OK(mhub_dp_engine_hooks(e, &fn, &user, &hooks));
    mhub_mlp_set_grad_ready(m, fn, user);
    mhub_mlp_set_unit_hooks(m, &hooks);
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 2));
    train_step(r, &counted, e, m, &task, 0);
    int64_t measured = backend_bytes() - outside + (int64_t)(comm_held - comm_before);
    int64_t levels = 0;
    for (int k = r->micro; r->deterministic && k > 1; k /= 2)
        levels++;
    int64_t expect = est.total_bytes + levels * est.grad_bytes; /* f32 gradients here */
    print_estimate_row(r, reshard, &est, measured, expect);
    ck_assert_msg(measured == expect, "%s, %s, deterministic %d, dp %d: measured %lld B, "
                  "estimated %lld B",
                  mhub_dp_engine_name(r->kind), mhub_dtype_name(r->dtype), r->deterministic,
                  world->size, (long long)measured, (long long)expect);
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_mlp_set_unit_hooks(m, NULL);
    mhub_dp_engine_free(e);
    ck_assert_uint_eq(comm_held, comm_before);
    mhub_synthetic_free(&task);
    mhub_mlp_free(m);
}

/* The split into kinds agrees with what the engines report of themselves. */
static void check_estimate_fields(mhub_dtype dt)
{
    mhub_mlp_config cfg = model_cfg;
    cfg.param_dtype = dt;
    run r = {MHUB_DP_DISTOPT, MHUB_OPTIM_ADAMW, false, 1, dt, false, 0};
    mhub_ddp_config dc;
    mhub_optim_config oc;
    configs(&r, &dc, &oc);
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, 4, 8, &m));
    mhub_dp_memory est;
    CK_OK(mhub_dp_engine_estimate_memory(MHUB_DP_DISTOPT, mhub_mlp_params(m), world->size, &dc,
                                         &oc, NULL, &est));
    mhub_distopt *d;
    CK_OK(mhub_distopt_create(mhub_mlp_params(m), world, &dc, &oc, &d));
    mhub_distopt_memory got;
    mhub_distopt_get_memory(d, &got);
    ck_assert_int_eq(est.grad_bytes, (int64_t)got.grad_buffer_bytes);
    ck_assert_int_eq(est.param_bytes, (int64_t)got.param_buffer_bytes);
    ck_assert_int_eq(est.main_param_bytes, (int64_t)got.main_param_bytes);
    ck_assert_int_eq(est.optim_state_bytes, (int64_t)got.optimizer_state_bytes);
    ck_assert_int_eq(est.padding_elems, mhub_distopt_padding_elems(d));
    ck_assert_int_gt(est.padding_elems, 0); /* 128-element buckets always pad this model */
    mhub_distopt_free(d);

    CK_OK(mhub_dp_engine_estimate_memory(MHUB_DP_FSDP, mhub_mlp_params(m), world->size, &dc, &oc,
                                         NULL, &est));
    mhub_fsdp *f;
    CK_OK(mhub_fsdp_create(mhub_mlp_params(m), world, &dc, NULL, &oc, &f));
    mhub_fsdp_stats st;
    mhub_fsdp_get_stats(f, &st);
    ck_assert_int_eq(est.param_bytes + est.main_param_bytes + est.grad_bytes +
                         est.optim_state_bytes,
                     st.shard_bytes);
    ck_assert_int_eq(est.gathered_bytes + est.scratch_bytes, st.buffer_bytes);
    int64_t padding = 0;
    for (int u = 0; u < mhub_fsdp_num_units(f); u++) {
        mhub_fsdp_unit_info info;
        CK_OK(mhub_fsdp_unit(f, u, &info));
        padding += info.padded_numel - info.numel;
    }
    ck_assert_int_eq(est.padding_elems, padding);
    mhub_fsdp_free(f);
    mhub_mlp_free(m);
}

START_TEST(test_memory_estimate_matches_allocator)
{
    ck_assert_ptr_nonnull(be->ops->memory_usage);
    const mhub_dp_engine_kind kinds[] = {MHUB_DP_DDP, MHUB_DP_DISTOPT, MHUB_DP_FSDP};
    const mhub_dtype dts[] = {MHUB_F32, MHUB_BF16};
    for (int k = 0; k < 3; k++) {
        for (int d = 0; d < 2; d++) {
            /* bf16 gradients reduced in bf16: the widening scratch is used */
            run r = {kinds[k], MHUB_OPTIM_ADAMW, false, 2, dts[d], false, 0};
            check_estimate(&r, true);
            if (kinds[k] == MHUB_DP_FSDP)
                check_estimate(&r, false); /* every unit keeps its gather buffer */
            r.optim = MHUB_OPTIM_SGD;      /* one state array */
            check_estimate(&r, true);
        }
        /* deterministic mode: one micro-shard per rank, then several */
        run det = {kinds[k], MHUB_OPTIM_ADAMW, true, 1, MHUB_F32, false, 0};
        check_estimate(&det, true);
        det.micro = SHARDS / world->size;
        det.dtype = MHUB_BF16;
        det.grad_in_fp32 = true;
        check_estimate(&det, true);
    }
    check_estimate_fields(MHUB_F32);
    check_estimate_fields(MHUB_BF16);
}
END_TEST

/* A GPT-3-sized meta list: 96 blocks of d = 12288 (175 billion elements). */
static void gpt3_meta(mhub_param_list *pl, mhub_dtype dt)
{
    const int64_t d = 12288, vocab = 50257, ctx = 2048;
    const int64_t shapes[][2] = {{vocab, d}, {ctx, d}};
    CK_OK(mhub_param_list_add(pl, "wte", dt, 2, shapes[0], MHUB_INIT_NORMAL, 0.02f, NULL));
    CK_OK(mhub_param_list_add(pl, "wpe", dt, 2, shapes[1], MHUB_INIT_NORMAL, 0.02f, NULL));
    const struct {
        const char *name;
        int ndim;
        int64_t shape[2];
    } block[] = {{"ln1.w", 1, {d, 0}},         {"ln1.b", 1, {d, 0}},
                 {"attn.qkv.w", 2, {3 * d, d}}, {"attn.qkv.b", 1, {3 * d, 0}},
                 {"attn.proj.w", 2, {d, d}},    {"attn.proj.b", 1, {d, 0}},
                 {"ln2.w", 1, {d, 0}},         {"ln2.b", 1, {d, 0}},
                 {"mlp.fc.w", 2, {4 * d, d}},   {"mlp.fc.b", 1, {4 * d, 0}},
                 {"mlp.proj.w", 2, {d, 4 * d}}, {"mlp.proj.b", 1, {d, 0}}};
    for (int layer = 0; layer < 96; layer++)
        for (size_t k = 0; k < sizeof block / sizeof block[0]; k++) {
            char name[64];
            snprintf(name, sizeof name, "blocks.%d.%s", layer, block[k].name);
            int at;
            CK_OK(mhub_param_list_add(pl, name, dt, block[k].ndim, block[k].shape,
                                      MHUB_INIT_NORMAL, 0.02f, &at));
            pl->items[at].unit = layer + 1; /* the embeddings are unit 0 */
        }
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

START_TEST(test_memory_estimate_of_a_meta_model)
{
    mhub_param_list pl = {0};
    gpt3_meta(&pl, MHUB_BF16);
    int64_t total = mhub_param_list_numel(&pl);
    ck_assert_int_gt(total, (int64_t)1e11);
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    dc.overlap_grad_reduce = true; /* default buckets: max(40M, 1M * dp) */
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_ADAMW);
    int dp = world->size;
    int64_t before = backend_bytes();
    double t0 = seconds_now();
    mhub_dp_memory est[3];
    for (int k = 0; k < 3; k++)
        CK_OK(mhub_dp_engine_estimate_memory((mhub_dp_engine_kind)k, &pl, dp, &dc, &oc, NULL,
                                             &est[k]));
    double elapsed = seconds_now() - t0;
    ck_assert_int_eq(backend_bytes(), before);
    ck_assert_msg(elapsed < 1.0, "estimating took %g s", elapsed);
    /* DDP: bf16 values and (no grad_reduce_in_fp32) bf16 gradients, f32
     * main copies and two AdamW moments, all full size */
    ck_assert_int_eq(est[0].param_bytes, 2 * total);
    ck_assert_int_eq(est[0].grad_bytes, 2 * total);
    ck_assert_int_eq(est[0].main_param_bytes + est[0].optim_state_bytes, 12 * total);
    /* distopt: full padded buffers, 1/dp of the f32 state */
    ck_assert_int_ge(est[1].grad_bytes, 2 * total);
    ck_assert_int_eq(est[1].grad_bytes, 2 * (total + est[1].padding_elems));
    ck_assert_int_le(est[1].optim_state_bytes, 8 * (total + est[1].padding_elems) / dp);
    /* FSDP: about 1/dp of everything plus two blocks' full buffers */
    int64_t shard = (total + dp - 1) / dp;
    ck_assert_int_ge(est[2].grad_bytes, 4 * shard);
    ck_assert_int_le(est[2].grad_bytes, 4 * (shard + 97));
    /* with more than one rank, each level of sharding holds less */
    if (dp > 1) {
        ck_assert_int_lt(est[2].total_bytes, est[1].total_bytes);
        ck_assert_int_lt(est[1].total_bytes, est[0].total_bytes);
    }
    if (world->rank == 0)
        for (int k = 0; k < 3; k++)
            printf("175B meta estimate dp %d %-7s: %.1f GB per rank (%lld padding elements) "
                   "in %.3f ms for all three\n",
                   dp, mhub_dp_engine_name((mhub_dp_engine_kind)k),
                   (double)est[k].total_bytes / 1e9, (long long)est[k].padding_elems,
                   elapsed * 1e3);
    mhub_param_list_free(&pl);
}
END_TEST

START_TEST(test_memory_estimate_refuses_what_create_refuses)
{
    mhub_mlp_config cfg = model_cfg;
    cfg.param_dtype = MHUB_BF16;
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&cfg, be, 4, 1, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
    mhub_dp_memory est;
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_dp_engine_estimate_memory(MHUB_DP_DDP, NULL, 2, &dc, &oc, NULL, &est));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_dp_engine_estimate_memory((mhub_dp_engine_kind)5, pl, 2, &dc, &oc, NULL, &est));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_dp_engine_estimate_memory(MHUB_DP_FSDP, pl, 0, &dc, &oc, NULL, &est));
    dc.bucket_size = 0;
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_dp_engine_estimate_memory(MHUB_DP_DDP, pl, 2, &dc, &oc, NULL, &est));
    mhub_ddp_config_init(&dc);
    dc.deterministic = true; /* needs f32 gradients */
    for (int k = 0; k < 3; k++)
        CK_FAILS(MHUB_ERR_UNSUPPORTED,
                 mhub_dp_engine_estimate_memory((mhub_dp_engine_kind)k, pl, 2, &dc, &oc, NULL,
                                                &est));
    dc.grad_reduce_in_fp32 = true; /* and a power-of-two dp size */
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_dp_engine_estimate_memory(MHUB_DP_DISTOPT, pl, 3, &dc, &oc, NULL, &est));
    CK_OK(mhub_dp_engine_estimate_memory(MHUB_DP_DISTOPT, pl, 4, &dc, &oc, NULL, &est));
    mhub_ddp_config_init(&dc);
    pl->items[0].requires_grad = false; /* FSDP trains every parameter */
    CK_FAILS(MHUB_ERR_UNSUPPORTED,
             mhub_dp_engine_estimate_memory(MHUB_DP_FSDP, pl, 2, &dc, &oc, NULL, &est));
    ck_assert_int_eq(est.total_bytes, 0);
    /* the others leave it out of the buffers; distopt still counts its values */
    CK_OK(mhub_dp_engine_estimate_memory(MHUB_DP_DISTOPT, pl, 2, &dc, &oc, NULL, &est));
    mhub_dp_memory all_trainable;
    pl->items[0].requires_grad = true;
    CK_OK(mhub_dp_engine_estimate_memory(MHUB_DP_DISTOPT, pl, 2, &dc, &oc, NULL,
                                         &all_trainable));
    ck_assert_int_lt(est.grad_bytes, all_trainable.grad_bytes);
    ck_assert_int_ge(est.param_bytes, (int64_t)mhub_tensor_nbytes(&pl->items[0].value));
    mhub_mlp_free(m);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("engine");
    TCase *tc = tcase_create("wrapper");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_deterministic_bits);
    tcase_add_test(tc, test_every_engine_trains_like_one_process);
    tcase_add_test(tc, test_half_precision_models);
    tcase_add_test(tc, test_clip_norm_matches_one_process);
    tcase_add_test(tc, test_clip_norm_of_16bit_gradients);
    tcase_add_test(tc, test_clipped_training_matches_one_process);
    tcase_add_test(tc, test_deterministic_clipping_bits);
    tcase_add_test(tc, test_clip_bad_input);
    tcase_add_test(tc, test_state_names);
    tcase_add_test(tc, test_set_param_round_trip_and_step_from_it);
    tcase_add_test(tc, test_set_param_of_16bit_models);
    tcase_add_test(tc, test_state_round_trip_and_bias_correction);
    tcase_add_test(tc, test_main_param_state_round_trip);
    tcase_add_test(tc, test_checkpoint_access_bad_input);
    tcase_add_test(tc, test_memory_estimate_matches_allocator);
    tcase_add_test(tc, test_memory_estimate_of_a_meta_model);
    tcase_add_test(tc, test_memory_estimate_refuses_what_create_refuses);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return mhub_test_mpi_main(argc, argv, make_suite); }
