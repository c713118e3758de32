/* test_engine.c - the engine wrapper under mpiexec -n 1, 2, 4: every
 * engine trains like one process on the same global batch; deterministic
 * mode gives the same bits on P ranks as on one, and the same bits for DDP
 * and the distributed optimizer; bad input. */
#include <string.h>

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
} run;

enum { MAX_PARAMS = 10 * 13 + 13 + 13 * 7 + 7 + 7 * 4 + 4 };

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
    mhub_ddp_config_init(&dc);
    dc.overlap_grad_reduce = true;
    dc.bucket_size = 60;
    dc.deterministic = r->deterministic;
    dc.grad_reduce_in_fp32 = r->grad_in_fp32;
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, r->optim);
    oc.lr = r->optim == MHUB_OPTIM_SGD ? 0.2f : 0.01f;
    oc.momentum = r->optim == MHUB_OPTIM_SGD ? 0.5f : 0.0f;
    mhub_dp_engine *e;
    CK_OK(mhub_dp_engine_create(r->kind, mhub_mlp_params(m), dp, &dc, &oc, NULL, &e));
    ck_assert_int_eq(mhub_dp_engine_kind_of(e), r->kind);
    mhub_grad_ready_fn fn;
    void *user;
    mhub_unit_hooks hooks;
    CK_OK(mhub_dp_engine_hooks(e, &fn, &user, &hooks));
    mhub_mlp_set_grad_ready(m, fn, user);
    mhub_mlp_set_unit_hooks(m, &hooks);
    int64_t local = GLOBAL_BATCH / dp->size, rows = local / r->micro;
    /* deterministic: weight 1/G for any P; otherwise the rank's mean */
    float weight = r->deterministic ? 1.0f / GLOBAL_BATCH : 1.0f / (float)local;
    float x[GLOBAL_BATCH * 10];
    int32_t y[GLOBAL_BATCH];
    for (int s = 0; s < STEPS; s++) {
        CK_OK(mhub_dp_engine_zero_grad(e));
        for (int k = 0; k < r->micro; k++) {
            int64_t shard = mhub_dp_engine_shard_index(e, dp->rank, dp->size, k, r->micro);
            ck_assert_int_ge(shard, 0);
            uint64_t first = (uint64_t)(s * GLOBAL_BATCH + shard * rows);
            CK_OK(mhub_synthetic_batch(&task, first, rows, x, y));
            CK_OK(mhub_dp_engine_micro_begin(e, k, r->micro));
            CK_OK(mhub_mlp_forward(m, x, y, rows, NULL));
            CK_OK(mhub_mlp_backward(m, weight));
            CK_OK(mhub_dp_engine_micro_end(e, k, r->micro));
        }
        CK_OK(mhub_dp_engine_finish_grad_sync(e));
        CK_OK(mhub_dp_engine_step(e));
    }
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
        run one = {MHUB_DP_DDP, (mhub_optim_kind)optim, true, SHARDS, MHUB_F32, false};
        train(&one, alone, ref, NULL);
        for (int kind = 0; kind <= 2; kind++) {
            run r = {(mhub_dp_engine_kind)kind, (mhub_optim_kind)optim, true, SHARDS / world->size,
                     MHUB_F32, false};
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
                         MHUB_F32, false};
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
                run r = {kinds[k], MHUB_OPTIM_ADAMW, false, 2, dts[d], fp32};
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
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return mhub_test_mpi_main(argc, argv, make_suite); }
