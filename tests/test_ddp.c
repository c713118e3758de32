/* test_ddp.c - the DDP engine under mpiexec -n 1, 2, 4: bucket layout,
 * equivalence with one process on the same global batch, gradient
 * accumulation, unused parameters, NaN reports, config parsing. */
#include <string.h>

#include "testutil_mpi.h"

/* be, world, setup and teardown: the engine fixture of testutil_mpi.h */
MHUB_TEST_ENGINE_FIXTURE

static const mhub_mlp_config model_cfg = {
    .inputs = 12, .num_hidden = 2, .hidden = {16, 10}, .classes = 5};

enum { GLOBAL_BATCH = 16, STEPS = 4 };

typedef struct run_options {
    mhub_ddp_config ddp;
    int accum;            /* micro-batches per step */
    int drop_param;       /* a parameter whose grad-ready is never reported, or -1 */
} run_options;

typedef struct filter {
    mhub_ddp *ddp;
    int drop;
} filter;

static mhub_status filtered_ready(void *user, int index)
{
    filter *f = user;
    return index == f->drop ? MHUB_OK : mhub_ddp_grad_ready(f->ddp, index);
}

/* Train STEPS steps of SGD on samples [s*G, (s+1)*G): with dp == NULL the
 * whole global batch in one process, else this rank's slice through DDP. */
static void train(mhub_mlp *m, mhub_comm *dp, const run_options *o, mhub_ddp_stats *stats)
{
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 9));
    int ranks = dp ? dp->size : 1, rank = dp ? dp->rank : 0;
    int accum = dp ? o->accum : 1;
    int64_t local = GLOBAL_BATCH / ranks, micro = local / accum;
    mhub_ddp *ddp = NULL;
    filter f = {.drop = o->drop_param};
    if (dp) {
        CK_OK(mhub_ddp_create(mhub_mlp_params(m), dp, &o->ddp, &ddp));
        f.ddp = ddp;
        mhub_mlp_set_grad_ready(m, filtered_ready, &f);
    }
    mhub_sgd *opt;
    CK_OK(mhub_sgd_create(mhub_mlp_params(m), be, &(mhub_sgd_config){.lr = 0.2f, .momentum = 0.5f},
                          &opt));
    float x[GLOBAL_BATCH * 12];
    int32_t y[GLOBAL_BATCH];
    for (int s = 0; s < STEPS; s++) {
        if (ddp)
            CK_OK(mhub_ddp_zero_grad(ddp));
        else
            CK_OK(mhub_param_list_zero_grad(mhub_mlp_params(m)));
        for (int k = 0; k < accum; k++) {
            uint64_t first = (uint64_t)s * GLOBAL_BATCH + (uint64_t)(rank * local + k * micro);
            CK_OK(mhub_synthetic_batch(&task, first, micro, x, y));
            bool last = k == accum - 1;
            if (ddp && !last)
                CK_OK(mhub_ddp_no_sync_begin(ddp));
            CK_OK(mhub_mlp_forward(m, x, y, micro, NULL));
            /* each rank's loss is the mean over its own samples, or each
             * sample weighs 1/global batch when the engine only sums */
            float weight = o->ddp.loss_is_global_mean ? 1.0f / GLOBAL_BATCH : 1.0f / (float)local;
            CK_OK(mhub_mlp_backward(m, weight));
            if (ddp && !last)
                CK_OK(mhub_ddp_no_sync_end(ddp));
        }
        if (ddp)
            CK_OK(mhub_ddp_finish_grad_sync(ddp));
        CK_OK(mhub_sgd_step(opt));
    }
    if (stats)
        mhub_ddp_get_stats(ddp, stats);
    mhub_sgd_free(opt);
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_ddp_free(ddp);
    mhub_synthetic_free(&task);
}

static void check_matches_single_process(const run_options *o)
{
    mhub_mlp *dist, *single;
    CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, 21, &dist));
    CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, 21, &single));
    train(dist, world, o, NULL);
    train(single, NULL, o, NULL);
    double diff = mhub_test_max_param_diff(world, dist, single);
    ck_assert_msg(diff < 1e-5, "ranks %d, overlap %d, bucket %lld, avg %d, accum %d: rel diff %g",
                  world->size, o->ddp.overlap_grad_reduce, (long long)o->ddp.bucket_size,
                  o->ddp.average_in_collective, o->accum, diff);
    mhub_mlp_free(dist);
    mhub_mlp_free(single);
}

START_TEST(test_matches_single_process)
{
    const int64_t buckets[] = {1, 37, 211, MHUB_DDP_BUCKET_AUTO, 1000000};
    for (int overlap = 0; overlap <= 1; overlap++)
        for (size_t b = 0; b < sizeof buckets / sizeof buckets[0]; b++)
            for (int scaling = 0; scaling <= 2; scaling++) {
                /* pre-scale + SUM, AVG in the collective, SUM of a global mean */
                run_options o = {.accum = 1, .drop_param = -1};
                mhub_ddp_config_init(&o.ddp);
                o.ddp.overlap_grad_reduce = overlap;
                o.ddp.bucket_size = buckets[b];
                o.ddp.average_in_collective = scaling == 1;
                o.ddp.loss_is_global_mean = scaling == 2;
                check_matches_single_process(&o);
            }
}
END_TEST

START_TEST(test_gradient_accumulation)
{
    if (GLOBAL_BATCH / world->size % 4 != 0)
        return;
    for (int overlap = 0; overlap <= 1; overlap++) {
        run_options o = {.accum = 4, .drop_param = -1};
        mhub_ddp_config_init(&o.ddp);
        o.ddp.overlap_grad_reduce = overlap;
        o.ddp.bucket_size = 50;
        check_matches_single_process(&o);
    }
}
END_TEST

START_TEST(test_unused_parameter_does_not_stall)
{
    /* The grad-ready of layers.0.bias (index 1) never arrives, as for a
     * parameter unused in forward: its bucket and every later one wait,
     * and finish_grad_sync issues them in order. Results stay exact. */
    run_options o = {.accum = 1, .drop_param = 1};
    mhub_ddp_config_init(&o.ddp);
    o.ddp.overlap_grad_reduce = true;
    o.ddp.bucket_size = 1;
    mhub_mlp *dist, *single;
    CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, 21, &dist));
    CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, 21, &single));
    mhub_ddp_stats st;
    train(dist, world, &o, &st);
    train(single, NULL, &o, NULL);
    ck_assert_double_lt(mhub_test_max_param_diff(world, dist, single), 1e-5);
    /* one parameter per bucket, reverse order: buckets 0..3 (layers 2
     * and 1) overlap; the dropped layers.0.bias (bucket 4) and
     * layers.0.weight behind it (bucket 5, kept in order) are issued by
     * finish: 4 of 6 per step, and no bucket twice */
    ck_assert_int_eq(st.buckets_issued, 6 * STEPS);
    ck_assert_int_eq(st.issued_in_backward, 4 * STEPS);
    mhub_mlp_free(dist);
    mhub_mlp_free(single);
}
END_TEST

/* Deterministic mode: SHARDS micro-shards of the global batch, rank r of
 * P computing shards [r*SHARDS/P, (r+1)*SHARDS/P), loss weight 1/G. */
enum { SHARDS = 8 };

static void train_deterministic(mhub_mlp *m, mhub_comm *dp, mhub_optim_kind kind)
{
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 4));
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    cfg.deterministic = true;
    mhub_ddp *ddp;
    CK_OK(mhub_ddp_create(mhub_mlp_params(m), dp, &cfg, &ddp));
    mhub_mlp_set_grad_ready(m, mhub_ddp_grad_ready, ddp);
    mhub_sgd *opt;
    mhub_sgd_config sc = {.lr = 0.3f, .momentum = kind == MHUB_OPTIM_SGD ? 0.0f : 0.9f};
    CK_OK(mhub_sgd_create(mhub_mlp_params(m), be, &sc, &opt));
    int per_rank = SHARDS / dp->size;
    int64_t rows = GLOBAL_BATCH / SHARDS;
    float x[GLOBAL_BATCH * 12];
    int32_t y[GLOBAL_BATCH];
    for (int s = 0; s < STEPS; s++) {
        CK_OK(mhub_ddp_zero_grad(ddp));
        for (int k = 0; k < per_rank; k++) {
            int shard = dp->rank * per_rank + k;
            CK_OK(mhub_synthetic_batch(&task, (uint64_t)(s * GLOBAL_BATCH + shard * rows), rows,
                                       x, y));
            CK_OK(mhub_mlp_forward(m, x, y, rows, NULL));
            CK_OK(mhub_mlp_backward(m, 1.0f / GLOBAL_BATCH));
            CK_OK(mhub_ddp_shard_done(ddp));
        }
        CK_OK(mhub_ddp_finish_grad_sync(ddp));
        CK_OK(mhub_sgd_step(opt));
    }
    mhub_sgd_free(opt);
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_ddp_free(ddp);
    mhub_synthetic_free(&task);
}

START_TEST(test_deterministic_is_bitwise_equal_to_one_rank)
{
    /* each rank also trains alone (a 1-rank communicator, all 8 shards);
     * the P-rank result must equal it bit for bit */
    mhub_comm *alone;
    CK_OK(mhub_comm_split(world, world->rank, 0, "alone", &alone));
    for (int kind = 0; kind <= 1; kind++) {
        mhub_mlp *dist, *single;
        CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, 5, &dist));
        CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, 5, &single));
        train_deterministic(dist, world, (mhub_optim_kind)kind);
        train_deterministic(single, alone, (mhub_optim_kind)kind);
        char hd[MHUB_SHA256_HEX_CHARS], hs[MHUB_SHA256_HEX_CHARS];
        CK_OK(mhub_param_list_digest(mhub_mlp_params(dist), hd));
        CK_OK(mhub_param_list_digest(mhub_mlp_params(single), hs));
        ck_assert_msg(!strcmp(hd, hs), "rank %d of %d: %s != %s", world->rank, world->size, hd,
                      hs);
        /* and the model did train: parameters moved from their init */
        mhub_mlp *init;
        CK_OK(mhub_mlp_create(&model_cfg, be, 1, 5, &init));
        CK_OK(mhub_param_list_digest(mhub_mlp_params(init), hs));
        ck_assert_str_ne(hd, hs);
        mhub_mlp_free(init);
        mhub_mlp_free(dist);
        mhub_mlp_free(single);
    }
    mhub_comm_free(alone);
}
END_TEST

START_TEST(test_deterministic_rules)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 1, &m));
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    mhub_ddp *d;
    CK_OK(mhub_ddp_create(mhub_mlp_params(m), world, &cfg, &d));
    CK_FAILS(MHUB_ERR_STATE, mhub_ddp_shard_done(d)); /* not deterministic */
    mhub_ddp_free(d);
    cfg.deterministic = true;
    CK_OK(mhub_ddp_create(mhub_mlp_params(m), world, &cfg, &d));
    /* no shard folded: refused before any communication, on every rank */
    CK_FAILS(MHUB_ERR_STATE, mhub_ddp_finish_grad_sync(d));
    CK_OK(mhub_ddp_zero_grad(d));
    for (int k = 0; k < 3; k++)
        CK_OK(mhub_ddp_shard_done(d));
    CK_FAILS(MHUB_ERR_STATE, mhub_ddp_finish_grad_sync(d)); /* 3 is not a power of two */
    CK_OK(mhub_ddp_zero_grad(d));
    CK_OK(mhub_ddp_shard_done(d));
    CK_OK(mhub_ddp_finish_grad_sync(d));
    mhub_ddp_free(d);
    if (world->size >= 3) {
        /* three ranks: not a power of two, refused on each of them */
        mhub_comm *three;
        CK_OK(mhub_comm_split(world, world->rank < 3 ? 0 : -1, world->rank, "three", &three));
        if (three) {
            CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_create(mhub_mlp_params(m), three, &cfg, &d));
            ck_assert_msg(strstr(mhub_last_error(), "power-of-two") != NULL, "%s",
                          mhub_last_error());
            mhub_comm_free(three);
        }
    }
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_bucket_layout)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 1, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    /* sizes in reverse order: b2 5, W2 50, b1 10, W1 160, b0 16, W0 192 */
    const int64_t bucket_size[] = {1, 60, 1000};
    const int expect_buckets[] = {6, 3, 1};
    for (int c = 0; c < 3; c++) {
        mhub_ddp_config cfg;
        mhub_ddp_config_init(&cfg);
        cfg.overlap_grad_reduce = true;
        cfg.bucket_size = bucket_size[c];
        mhub_ddp *d;
        CK_OK(mhub_ddp_create(pl, world, &cfg, &d));
        ck_assert_int_eq(mhub_ddp_num_buckets(d), expect_buckets[c]);
        int64_t next = 0;
        for (int b = 0; b < mhub_ddp_num_buckets(d); b++) {
            mhub_ddp_bucket_info info;
            CK_OK(mhub_ddp_bucket(d, b, &info));
            ck_assert_int_eq(info.offset, next); /* contiguous, no gaps */
            next += info.numel;
            /* a bucket only closes once it reached the size */
            if (b + 1 < mhub_ddp_num_buckets(d))
                ck_assert_int_ge(info.numel, bucket_size[c]);
        }
        ck_assert_int_eq(next, mhub_param_list_numel(pl));
        /* reverse order: the last parameter starts the buffer */
        ck_assert_ptr_eq(pl->items[5].grad.data, pl->items[5].grad.data);
        ck_assert(pl->items[4].grad.data == (float *)pl->items[5].grad.data + 5);
        ck_assert_int_eq(mhub_ddp_param_bucket(d, 5), 0);
        ck_assert_int_eq(mhub_ddp_param_bucket(d, 0), mhub_ddp_num_buckets(d) - 1);
        ck_assert_int_eq(mhub_ddp_param_bucket(d, 99), -1);
        mhub_ddp_bucket_info info;
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_bucket(d, 6, &info));
        mhub_ddp_free(d);
    }
    /* bucket 60 groups (5+50+10), (160), (16+192) */
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_nan_is_named_on_every_rank)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 1, &m));
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    cfg.check_for_nan_in_grad = true;
    cfg.overlap_grad_reduce = true;
    cfg.bucket_size = 40;
    mhub_ddp *d;
    CK_OK(mhub_ddp_create(mhub_mlp_params(m), world, &cfg, &d));
    mhub_mlp_set_grad_ready(m, mhub_ddp_grad_ready, d);
    float x[4 * 12];
    int32_t y[4] = {0, 1, 2, 3};
    mhub_rng_fill_normal(x, 48, 1, 1, 0, 0, 1);
    for (int step = 0; step < 2; step++) {
        CK_OK(mhub_ddp_zero_grad(d));
        CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
        if (step == 1 && world->rank == world->size - 1) {
            /* poison the input of the last rank: every gradient of layer 0 */
            x[3] = NAN;
            CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
        }
        CK_OK(mhub_mlp_backward(m, 0.25f));
        mhub_status s = mhub_ddp_finish_grad_sync(d);
        if (step == 0) {
            CK_OK(s);
        } else {
            ck_assert_int_eq(s, MHUB_ERR_NUMERIC);
            char want[64];
            snprintf(want, sizeof want, "on dp rank %d at step 1", world->size - 1);
            ck_assert_msg(strstr(mhub_last_error(), want) != NULL, "%s", mhub_last_error());
            ck_assert_msg(strstr(mhub_last_error(), "'layers.") != NULL, "%s",
                          mhub_last_error());
        }
    }
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_ddp_free(d);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_broadcast_and_free_keep_state)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 100 + (uint64_t)world->rank, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    float *g = pl->items[2].grad.data;
    g[7] = 3.5f; /* a gradient value present before wrapping is kept */
    mhub_ddp *d;
    CK_OK(mhub_ddp_create(pl, world, &cfg, &d));
    ck_assert(((float *)pl->items[2].grad.data)[7] == 3.5f);
    CK_OK(mhub_ddp_broadcast_params(d));
    mhub_mlp *ref;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 100, &ref)); /* rank 0's init */
    for (int p = 0; p < pl->count; p++)
        ck_assert_mem_eq(pl->items[p].value.data, mhub_mlp_params(ref)->items[p].value.data,
                         mhub_tensor_nbytes(&pl->items[p].value));
    ((float *)pl->items[2].grad.data)[8] = -1.0f;
    mhub_ddp_free(d);
    ck_assert(pl->items[2].grad.owns_data); /* own storage again, values kept */
    ck_assert(((float *)pl->items[2].grad.data)[7] == 3.5f);
    ck_assert(((float *)pl->items[2].grad.data)[8] == -1.0f);
    mhub_mlp_free(ref);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_misuse_is_reported)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 1, &m));
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    mhub_ddp *d = NULL;
    cfg.bucket_size = 0;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_create(mhub_mlp_params(m), world, &cfg, &d));
    ck_assert_msg(strstr(mhub_last_error(), "bucket_size") != NULL, "%s", mhub_last_error());
    cfg.bucket_size = -7;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_create(mhub_mlp_params(m), world, &cfg, &d));
    mhub_ddp_config_init(&cfg);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_create(NULL, world, &cfg, &d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_create(mhub_mlp_params(m), NULL, &cfg, &d));
    mhub_mlp *meta;
    CK_OK(mhub_mlp_create(&model_cfg, NULL, 0, 0, &meta));
    CK_FAILS(MHUB_ERR_STATE, mhub_ddp_create(mhub_mlp_params(meta), world, &cfg, &d));
    mhub_mlp_free(meta);
    ck_assert_ptr_null(d);
    CK_OK(mhub_ddp_create(mhub_mlp_params(m), world, &cfg, &d));
    CK_FAILS(MHUB_ERR_STATE, mhub_ddp_no_sync_end(d));
    CK_OK(mhub_ddp_no_sync_begin(d));
    CK_FAILS(MHUB_ERR_STATE, mhub_ddp_no_sync_begin(d));
    CK_FAILS(MHUB_ERR_STATE, mhub_ddp_finish_grad_sync(d));
    CK_OK(mhub_ddp_no_sync_end(d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_grad_ready(d, 6));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_grad_ready(NULL, 0));
    CK_OK(mhub_ddp_finish_grad_sync(d));
    CK_OK(mhub_ddp_zero_grad(d));
    mhub_ddp_free(d);
    mhub_ddp_free(NULL);
    mhub_mlp_free(m);
}
END_TEST

static bool same_config(const mhub_ddp_config *a, const mhub_ddp_config *b)
{
    return a->overlap_grad_reduce == b->overlap_grad_reduce && a->bucket_size == b->bucket_size &&
           a->average_in_collective == b->average_in_collective &&
           a->loss_is_global_mean == b->loss_is_global_mean &&
           a->check_for_nan_in_grad == b->check_for_nan_in_grad &&
           a->deterministic == b->deterministic &&
           a->use_distributed_optimizer == b->use_distributed_optimizer &&
           a->overlap_param_gather == b->overlap_param_gather;
}

START_TEST(test_config_json)
{
    mhub_ddp_config c;
    mhub_ddp_config_init(&c);
    ck_assert(!c.overlap_grad_reduce);
    ck_assert_int_eq(c.bucket_size, MHUB_DDP_BUCKET_AUTO);
    /* Megatron's default bucket: max(40M, 1M * dp); one bucket without overlap */
    ck_assert_int_eq(mhub_ddp_config_bucket_elems(&c, 8), INT64_MAX);
    c.overlap_grad_reduce = true;
    ck_assert_int_eq(mhub_ddp_config_bucket_elems(&c, 8), 40000000);
    ck_assert_int_eq(mhub_ddp_config_bucket_elems(&c, 64), 64000000);
    ck_assert_int_eq(c.bucket_size, MHUB_DDP_BUCKET_AUTO); /* never mutated */
    CK_OK(mhub_ddp_config_from_json("{\"bucket_size\": 1024, \"average_in_collective\": true, "
                                    "\"overlap_param_gather\": true, \"deterministic\": false}",
                                    "cfg.json", &c));
    ck_assert(c.overlap_param_gather && !c.use_distributed_optimizer);
    ck_assert_int_eq(c.bucket_size, 1024);
    ck_assert(c.average_in_collective && c.overlap_grad_reduce);
    char *text;
    CK_OK(mhub_ddp_config_to_json(&c, &text));
    mhub_ddp_config back;
    mhub_ddp_config_init(&back);
    CK_OK(mhub_ddp_config_from_json(text, "roundtrip", &back));
    ck_assert(same_config(&back, &c));
    free(text);
    mhub_ddp_config keep = c;
    CK_FAILS(MHUB_ERR_PARSE, mhub_ddp_config_from_json("{\"bucket_sise\": 3}", "a.json", &c));
    ck_assert_msg(strstr(mhub_last_error(), "a.json") && strstr(mhub_last_error(), "bucket_sise"),
                  "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_PARSE, mhub_ddp_config_from_json("{\"overlap_grad_reduce\": 1}", NULL, &c));
    CK_FAILS(MHUB_ERR_PARSE, mhub_ddp_config_from_json("{\"bucket_size\": 0}", "b.json", &c));
    CK_FAILS(MHUB_ERR_PARSE, mhub_ddp_config_from_json("{\"bucket_size\": 2.5}", "b.json", &c));
    CK_FAILS(MHUB_ERR_PARSE, mhub_ddp_config_from_json("[1, 2]", "c.json", &c));
    CK_FAILS(MHUB_ERR_PARSE, mhub_ddp_config_from_json("{\"overlap", "d.json", &c));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_config_from_json(NULL, "e.json", &c));
    ck_assert(same_config(&keep, &c)); /* nothing written on error */
    CK_OK(mhub_ddp_config_from_json("{\"bucket_size\": null}", NULL, &c));
    ck_assert_int_eq(c.bucket_size, MHUB_DDP_BUCKET_AUTO);
}
END_TEST

START_TEST(test_config_validate)
{
    /* only bucket_size has values to refuse: 0 and anything below -1 */
    mhub_ddp_config c;
    mhub_ddp_config_init(&c);
    CK_OK(mhub_ddp_config_validate(&c));
    c.grad_reduce_in_fp32 = c.overlap_grad_reduce = c.average_in_collective = true;
    c.loss_is_global_mean = c.check_for_nan_in_grad = c.deterministic = true;
    c.use_distributed_optimizer = c.overlap_param_gather = true;
    const int64_t good[] = {MHUB_DDP_BUCKET_AUTO, 1, 60, INT64_MAX};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        c.bucket_size = good[i];
        CK_OK(mhub_ddp_config_validate(&c));
    }
    const int64_t bad[] = {0, -2, INT64_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c.bucket_size = bad[i];
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_config_validate(&c));
        char value[48];
        snprintf(value, sizeof value, "bucket_size = %lld", (long long)bad[i]);
        ck_assert_msg(strstr(mhub_last_error(), value) != NULL, "%s", mhub_last_error());
    }
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_ddp_config_validate(NULL));
    ck_assert_msg(strstr(mhub_last_error(), "NULL") != NULL, "%s", mhub_last_error());
}
END_TEST

/* A copy of the world communicator that records what its alloc hands
 * out, or (offer = false) offers no memory of its own. */
static struct {
    const mhub_comm_ops *world_ops;
    void *block;
    size_t bytes;
} comm_mem;

static mhub_status recording_alloc(mhub_comm *c, size_t bytes, void **out)
{
    MHUB_TRY(comm_mem.world_ops->alloc(c, bytes, out));
    comm_mem.block = *out;
    comm_mem.bytes = bytes;
    return MHUB_OK;
}

static void recording_free(mhub_comm *c, void *ptr)
{
    if (ptr == comm_mem.block)
        comm_mem.block = NULL;
    comm_mem.world_ops->free_mem(c, ptr);
}

static void world_copy(mhub_comm *copy, mhub_comm_ops *ops, bool offer)
{
    comm_mem.world_ops = world->ops;
    comm_mem.block = NULL;
    *ops = *world->ops;
    ops->alloc = offer && world->ops->alloc ? recording_alloc : NULL;
    ops->free_mem = offer && world->ops->alloc ? recording_free : NULL;
    *copy = *world;
    copy->ops = ops;
}

START_TEST(test_uses_comm_memory)
{
    /* dp > 1 on one node: the gradient buffer is the communicator's
     * shared-memory slot, and every gradient lies in it; one rank, or a
     * communicator without memory of its own: the backend's */
    ck_assert(!mhub_ddp_uses_comm_memory(NULL));
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, 3, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    for (int offer = 0; offer <= 1; offer++) {
        mhub_comm copy;
        mhub_comm_ops ops;
        world_copy(&copy, &ops, offer);
        mhub_ddp *d;
        CK_OK(mhub_ddp_create(pl, &copy, &cfg, &d));
        bool expect = offer && world->size > 1 && world->ops->alloc != NULL;
        ck_assert_msg(mhub_ddp_uses_comm_memory(d) == expect, "offer %d, %d ranks: %d", offer,
                      world->size, mhub_ddp_uses_comm_memory(d));
        ck_assert(expect == (comm_mem.block != NULL));
        for (int p = 0; expect && p < pl->count; p++) {
            const char *g = pl->items[p].grad.data, *lo = comm_mem.block;
            ck_assert(g >= lo && g + mhub_tensor_nbytes(&pl->items[p].grad) <= lo + comm_mem.bytes);
        }
        /* a reduction runs in it */
        CK_OK(mhub_ddp_zero_grad(d));
        CK_OK(mhub_ddp_finish_grad_sync(d));
        mhub_ddp_free(d);
        ck_assert_ptr_null(comm_mem.block); /* given back */
    }
    mhub_mlp_free(m);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("ddp");
    TCase *tc = tcase_create("engine");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_config_json);
    tcase_add_test(tc, test_config_validate);
    tcase_add_test(tc, test_uses_comm_memory);
    tcase_add_test(tc, test_bucket_layout);
    tcase_add_test(tc, test_matches_single_process);
    tcase_add_test(tc, test_gradient_accumulation);
    tcase_add_test(tc, test_unused_parameter_does_not_stall);
    tcase_add_test(tc, test_nan_is_named_on_every_rank);
    tcase_add_test(tc, test_broadcast_and_free_keep_state);
    tcase_add_test(tc, test_misuse_is_reported);
    tcase_add_test(tc, test_deterministic_is_bitwise_equal_to_one_rank);
    tcase_add_test(tc, test_deterministic_rules);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return mhub_test_mpi_main(argc, argv, make_suite); }
