/* test_distopt.c - the distributed optimizer under mpiexec -n 1, 2, 4:
 * the padded layout, equivalence with one process running the same
 * optimizer on the same global batch (SGD-momentum and AdamW, every
 * overlap and bucket setting, gradient accumulation), forwards that never
 * see stale weights (Megatron-LM #950), unused parameters, NaN reports,
 * bf16/f16 models with fp32 main shards, memory accounting and misuse. */
#include <string.h>

#include "testutil_mpi.h"
#include "testutil_reduce.h"

/* be, world, setup and teardown: the engine fixture of testutil_mpi.h */
MHUB_TEST_ENGINE_FIXTURE

/* parameters in list order: W0 [16,12] 192, b0 16, W1 [10,16] 160, b1 10,
 * W2 [5,10] 50, b2 5: 433 elements */
static const mhub_mlp_config model_cfg = {
    .inputs = 12, .num_hidden = 2, .hidden = {16, 10}, .classes = 5};
enum { MODEL_NUMEL = 433, STEPS = 4, PROBE_ROWS = 8 };

static int64_t lcm_with_128(int dp)
{
    int64_t l = 128;
    while (l % dp != 0)
        l += 128;
    return l;
}

static mhub_optim_config sgd_config(void)
{
    mhub_optim_config c;
    mhub_optim_config_init(&c, MHUB_OPTIM_SGD);
    c.lr = 0.2f;
    c.momentum = 0.5f;
    c.weight_decay = 0.01f;
    return c;
}

static mhub_optim_config adamw_config(void)
{
    mhub_optim_config c;
    mhub_optim_config_init(&c, MHUB_OPTIM_ADAMW);
    c.lr = 0.02f;
    c.weight_decay = 0.01f;
    return c;
}

typedef struct run_options {
    mhub_ddp_config ddp;     /* ddp.overlap_param_gather: gathers left to the next forward */
    mhub_optim_config opt;
    bool hooks;          /* install the engine's unit hooks on the model */
    bool wait_params;    /* call mhub_distopt_wait_params before each forward */
    int accum;           /* micro-batches per step */
    int drop_param;      /* a parameter whose grad-ready is never reported, or -1 */
    int global_batch;
} run_options;

static run_options default_options(mhub_optim_config opt)
{
    run_options o = {.opt = opt, .accum = 1, .drop_param = -1, .global_batch = 16};
    mhub_ddp_config_init(&o.ddp);
    return o;
}

/* One model trained by a distributed optimizer, one step at a time. */
typedef struct dist_run {
    mhub_mlp *model;
    mhub_distopt *engine;
    mhub_comm *dp;
    run_options o;
    mhub_synthetic_task task;
    int drop;
} dist_run;

static mhub_status filtered_ready(void *user, int index)
{
    dist_run *r = user;
    return index == r->drop ? MHUB_OK : mhub_distopt_grad_ready(r->engine, index);
}

static void run_begin(dist_run *r, mhub_mlp *m, mhub_comm *dp, const run_options *o)
{
    memset(r, 0, sizeof *r);
    r->model = m;
    r->dp = dp;
    r->o = *o;
    r->drop = o->drop_param;
    CK_OK(mhub_synthetic_init(&r->task, model_cfg.inputs, model_cfg.classes, 9));
    CK_OK(mhub_distopt_create(mhub_mlp_params(m), dp, &o->ddp, &o->opt, &r->engine));
    mhub_mlp_set_grad_ready(m, filtered_ready, r);
    if (o->hooks) {
        mhub_unit_hooks h;
        CK_OK(mhub_distopt_unit_hooks(r->engine, &h));
        mhub_mlp_set_unit_hooks(m, &h);
    }
}

/* Step s on samples [s*G, (s+1)*G): this rank's slice, in micro-batches. */
static void run_step(dist_run *r, int s)
{
    int64_t local = r->o.global_batch / r->dp->size, micro = local / r->o.accum;
    float x[16 * 12];
    int32_t y[16];
    CK_OK(mhub_distopt_zero_grad(r->engine));
    for (int k = 0; k < r->o.accum; k++) {
        uint64_t first = (uint64_t)s * (uint64_t)r->o.global_batch +
                         (uint64_t)(r->dp->rank * local + k * micro);
        CK_OK(mhub_synthetic_batch(&r->task, first, micro, x, y));
        bool last = k == r->o.accum - 1;
        if (!last)
            CK_OK(mhub_distopt_no_sync_begin(r->engine));
        if (r->o.wait_params)
            CK_OK(mhub_distopt_wait_params(r->engine));
        CK_OK(mhub_mlp_forward(r->model, x, y, micro, NULL));
        /* each rank's loss is the mean over its own samples */
        CK_OK(mhub_mlp_backward(r->model, 1.0f / (float)local));
        if (!last)
            CK_OK(mhub_distopt_no_sync_end(r->engine));
    }
    CK_OK(mhub_distopt_finish_grad_sync(r->engine));
    CK_OK(mhub_distopt_step(r->engine));
}

static void run_end(dist_run *r, mhub_distopt_stats *stats)
{
    if (stats)
        mhub_distopt_get_stats(r->engine, stats);
    mhub_mlp_set_grad_ready(r->model, NULL, NULL);
    mhub_mlp_set_unit_hooks(r->model, NULL);
    mhub_distopt_free(r->engine);
    mhub_synthetic_free(&r->task);
}

static void train_distributed(mhub_mlp *m, mhub_comm *dp, const run_options *o,
                              mhub_distopt_stats *stats)
{
    dist_run r;
    run_begin(&r, m, dp, o);
    for (int s = 0; s < STEPS; s++)
        run_step(&r, s);
    run_end(&r, stats);
}

/* The same optimizer over the whole global batch in one process, through
 * the shared update rule on each full parameter. */
static void train_reference(mhub_mlp *m, const run_options *o)
{
    mhub_param_list *pl = mhub_mlp_params(m);
    int arrays = mhub_optim_state_arrays(&o->opt);
    float *state[8][2] = {{NULL}};
    for (int p = 0; p < pl->count; p++)
        for (int a = 0; a < arrays; a++) {
            void *buf;
            CK_OK(be->ops->alloc(be, mhub_tensor_nbytes(&pl->items[p].value), &buf));
            state[p][a] = buf;
        }
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 9));
    int64_t g = o->global_batch;
    float x[16 * 12];
    int32_t y[16];
    for (int s = 0; s < STEPS; s++) {
        CK_OK(mhub_param_list_zero_grad(pl));
        CK_OK(mhub_synthetic_batch(&task, (uint64_t)(s * g), g, x, y));
        CK_OK(mhub_mlp_forward(m, x, y, g, NULL));
        CK_OK(mhub_mlp_backward(m, 1.0f / (float)g));
        for (int p = 0; p < pl->count; p++)
            CK_OK(mhub_optim_update(be, &o->opt, pl->items[p].value.data,
                                    pl->items[p].grad.data, state[p],
                                    pl->items[p].value.numel, s + 1));
    }
    mhub_synthetic_free(&task);
    for (int p = 0; p < pl->count; p++)
        for (int a = 0; a < arrays; a++)
            be->ops->free(be, state[p][a]);
}

static void check_matches_single_process(mhub_comm *dp, const run_options *o,
                                         mhub_distopt_stats *stats)
{
    mhub_mlp *dist, *single;
    CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &dist));
    CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &single));
    train_distributed(dist, dp, o, stats);
    train_reference(single, o);
    double diff = mhub_test_max_param_diff(world, dist, single);
    ck_assert_msg(diff < 1e-5,
                  "%s, dp %d, overlap grad %d param %d (hooks %d), bucket %lld, avg %d, "
                  "accum %d: rel diff %g",
                  mhub_optim_kind_name(o->opt.kind), dp->size, o->ddp.overlap_grad_reduce,
                  o->ddp.overlap_param_gather, o->hooks, (long long)o->ddp.bucket_size,
                  o->ddp.average_in_collective, o->accum, diff);
    mhub_mlp_free(dist);
    mhub_mlp_free(single);
}

START_TEST(test_matches_single_process)
{
    const mhub_optim_config opts[] = {sgd_config(), adamw_config()};
    /* one parameter per bucket, a prime (several per bucket), one bucket */
    const int64_t buckets[] = {1, 211, 1000000};
    for (int k = 0; k < 2; k++)
        for (int overlap_grad = 0; overlap_grad <= 1; overlap_grad++)
            for (int b = 0; b < 3; b++) {
                if (!overlap_grad && b > 0)
                    continue; /* without overlap the whole buffer is one bucket */
                for (int overlap_param = 0; overlap_param <= 1; overlap_param++)
                    for (int avg = 0; avg <= 1; avg++) {
                        run_options o = default_options(opts[k]);
                        o.ddp.overlap_grad_reduce = overlap_grad;
                        o.ddp.bucket_size = buckets[b];
                        o.ddp.average_in_collective = avg;
                        o.ddp.overlap_param_gather = overlap_param;
                        o.hooks = overlap_param;
                        check_matches_single_process(world, &o, NULL);
                    }
            }
}
END_TEST

START_TEST(test_gradient_accumulation)
{
    const mhub_optim_config opts[] = {sgd_config(), adamw_config()};
    for (int k = 0; k < 2; k++)
        for (int overlap = 0; overlap <= 1; overlap++) {
            run_options o = default_options(opts[k]);
            o.accum = 4;
            o.ddp.overlap_grad_reduce = overlap;
            o.ddp.bucket_size = 100;
            o.ddp.overlap_param_gather = overlap;
            o.hooks = overlap;
            check_matches_single_process(world, &o, NULL);
        }
}
END_TEST

START_TEST(test_three_ranks)
{
    /* dp = 3 pads buckets to lcm(3, 128) = 384: a shard boundary falls
     * inside parameters. Ranks 0-2 of a 4-rank world train; rank 3 waits. */
    if (world->size != 4)
        return;
    mhub_comm *three;
    CK_OK(mhub_comm_split(world, world->rank < 3 ? 0 : -1, world->rank, "dp3", &three));
    if (three) {
        run_options o = default_options(adamw_config());
        o.global_batch = 12;
        o.ddp.overlap_grad_reduce = true;
        o.ddp.bucket_size = 211;
        o.ddp.overlap_param_gather = true;
        o.hooks = true;
        mhub_mlp *dist, *single;
        CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &dist));
        CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &single));
        train_distributed(dist, three, &o, NULL);
        train_reference(single, &o);
        mhub_param_list *pa = mhub_mlp_params(dist), *pb = mhub_mlp_params(single);
        for (int p = 0; p < pa->count; p++)
            for (int64_t i = 0; i < pa->items[p].value.numel; i++)
                ck_assert_double_lt(mhub_test_relerr(((float *)pa->items[p].value.data)[i],
                                                     ((float *)pb->items[p].value.data)[i],
                                                     1e-2),
                                    1e-5);
        mhub_mlp_free(dist);
        mhub_mlp_free(single);
        mhub_comm_free(three);
    }
    CK_OK(mhub_comm_barrier(world));
}
END_TEST

static void check_layout(mhub_distopt *d, mhub_param_list *pl, int dp)
{
    int64_t align = lcm_with_128(dp), next = 0, padding = 0;
    int owner[6] = {0};
    for (int b = 0; b < mhub_distopt_num_buckets(d); b++) {
        mhub_distopt_bucket_info info;
        CK_OK(mhub_distopt_bucket(d, b, &info));
        ck_assert_int_eq(info.offset, next); /* contiguous */
        ck_assert_int_eq(info.offset % align, 0);
        ck_assert_int_eq(info.numel % align, 0);
        ck_assert_int_eq(info.shard_numel * dp, info.numel);
        ck_assert_int_eq(mhub_distopt_param_bucket(d, info.first_param), b);
        next += info.numel;
        padding += info.padding;
        int64_t in_bucket = 0;
        for (int p = 0; p < pl->count; p++) {
            if (mhub_distopt_param_bucket(d, p) != b)
                continue;
            owner[p]++;
            int64_t off = mhub_distopt_param_offset(d, p);
            ck_assert_int_eq(off % 64, 0);
            ck_assert_int_ge(off, info.offset);
            ck_assert_int_le(off + pl->items[p].value.numel, info.offset + info.numel);
            in_bucket += pl->items[p].value.numel;
        }
        ck_assert_int_eq(in_bucket + info.padding, info.numel);
    }
    for (int p = 0; p < pl->count; p++)
        ck_assert_int_eq(owner[p], 1); /* every parameter in exactly one bucket */
    ck_assert_int_eq(next, mhub_distopt_numel(d));
    ck_assert_int_eq(padding, mhub_distopt_padding_elems(d));
    ck_assert_int_eq(next - padding, MODEL_NUMEL);
    /* parameters never overlap: walk them in buffer (reverse) order */
    for (int p = pl->count - 1; p > 0; p--)
        ck_assert_int_ge(mhub_distopt_param_offset(d, p - 1),
                         mhub_distopt_param_offset(d, p) + pl->items[p].value.numel);
    /* value and grad point at the same slot of their buffers */
    const float *v5 = pl->items[5].value.data, *g5 = pl->items[5].grad.data;
    for (int p = 0; p < pl->count; p++) {
        int64_t rel = mhub_distopt_param_offset(d, p) - mhub_distopt_param_offset(d, 5);
        ck_assert_ptr_eq(pl->items[p].value.data, v5 + rel);
        ck_assert_ptr_eq(pl->items[p].grad.data, g5 + rel);
    }
}

START_TEST(test_padded_layout)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 1, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    const int64_t bucket_size[] = {1, 211, 1000000};
    const int expect_buckets[] = {6, 2, 1};
    /* at dp <= 4 lcm(dp, 128) = 128. One bucket per parameter pads each
     * to 128 or 256 (W1, W0). One bucket: b2 0, W2 64, b1 128, W1 192,
     * b0 384, W0 448..640. Bucket 211: the same starts, closed after W1
     * (352 >= 211, padded to 384) and after W0 (640). */
    const int64_t expect_numel[] = {1024, 640, 640};
    const mhub_optim_config opts[] = {sgd_config(), adamw_config()};
    for (int c = 0; c < 3; c++) {
        mhub_ddp_config cfg;
        mhub_ddp_config_init(&cfg);
        cfg.overlap_grad_reduce = true;
        cfg.bucket_size = bucket_size[c];
        mhub_optim_config opt = opts[c % 2];
        mhub_distopt *d;
        CK_OK(mhub_distopt_create(pl, world, &cfg, &opt, &d));
        ck_assert_int_eq(mhub_distopt_num_buckets(d), expect_buckets[c]);
        ck_assert_int_eq(mhub_distopt_numel(d), expect_numel[c]);
        check_layout(d, pl, world->size);
        ck_assert_int_eq(mhub_distopt_param_bucket(d, 5), 0); /* reverse order */
        ck_assert_int_eq(mhub_distopt_param_offset(d, 5), 0);
        ck_assert_int_eq(mhub_distopt_param_bucket(d, 0), expect_buckets[c] - 1);
        ck_assert_int_eq(mhub_distopt_param_bucket(d, 99), -1);
        ck_assert_int_eq(mhub_distopt_param_offset(d, -1), -1);
        /* optimizer state: 1/dp of the padded buffer per state array */
        mhub_distopt_memory mem;
        mhub_distopt_get_memory(d, &mem);
        int64_t shard_bytes = mhub_distopt_numel(d) / world->size * 4;
        ck_assert_int_eq(mem.main_param_bytes, shard_bytes);
        ck_assert_int_eq(mem.optimizer_state_bytes,
                         mhub_optim_state_arrays(&opt) * shard_bytes);
        ck_assert_int_eq(mem.optimizer_state_bytes * (size_t)world->size,
                         (size_t)mhub_optim_state_arrays(&opt) * 4 *
                             (MODEL_NUMEL + (size_t)mhub_distopt_padding_elems(d)));
        ck_assert_int_eq(mem.grad_buffer_bytes, mhub_distopt_numel(d) * 4);
        mhub_distopt_bucket_info info;
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_bucket(d, expect_buckets[c], &info));
        mhub_distopt_free(d);
    }
    /* without overlap the whole buffer is one bucket */
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    mhub_optim_config opt = sgd_config();
    mhub_distopt *d;
    CK_OK(mhub_distopt_create(pl, world, &cfg, &opt, &d));
    ck_assert_int_eq(mhub_distopt_num_buckets(d), 1);
    mhub_distopt_free(d);
    /* dp = 3 (ranks 0-2 of four): buckets pad to lcm(3, 128) = 384 */
    if (world->size == 4) {
        mhub_comm *three;
        CK_OK(mhub_comm_split(world, world->rank < 3 ? 0 : -1, world->rank, "dp3", &three));
        if (three) {
            cfg.overlap_grad_reduce = true;
            cfg.bucket_size = 1;
            CK_OK(mhub_distopt_create(pl, three, &cfg, &opt, &d));
            check_layout(d, pl, 3);
            ck_assert_int_eq(mhub_distopt_numel(d), 6 * 384);
            mhub_distopt_free(d);
            mhub_comm_free(three);
        }
    }
    mhub_mlp_free(m);
}
END_TEST

/* The first 8 samples after the training data. */
static float probe_loss(mhub_mlp *m)
{
    static float x[PROBE_ROWS * 12];
    static int32_t y[PROBE_ROWS];
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 9));
    CK_OK(mhub_synthetic_batch(&task, 10000, PROBE_ROWS, x, y));
    mhub_synthetic_free(&task);
    float loss = 0;
    CK_OK(mhub_mlp_forward(m, x, y, PROBE_ROWS, &loss));
    return loss;
}

/* Wraps the engine's pre_forward: once it returns, no bucket holding the
 * unit's parameters may still have its gather in flight. Counts the
 * units that had one in flight on entry (the overlap really happened). */
typedef struct spy {
    mhub_unit_hooks engine;
    mhub_distopt *d;
    mhub_param_list *params;
    int in_flight_on_entry;
    int violations;
} spy;

static bool unit_in_flight(const spy *s, int unit)
{
    bool any = false;
    for (int p = 0; p < s->params->count; p++) {
        mhub_distopt_bucket_info info;
        if (s->params->items[p].unit != unit ||
            mhub_distopt_bucket(s->d, mhub_distopt_param_bucket(s->d, p), &info) != MHUB_OK)
            continue;
        any = any || info.gather_in_flight;
    }
    return any;
}

static mhub_status spy_pre_forward(void *user, int unit)
{
    spy *s = user;
    s->in_flight_on_entry += unit_in_flight(s, unit);
    MHUB_TRY(s->engine.pre_forward(s->engine.user, unit));
    s->violations += unit_in_flight(s, unit);
    return MHUB_OK;
}

START_TEST(test_no_stale_weights_with_overlapped_gather)
{
    /* Megatron-LM #950: a forward right after the step, with the gathers
     * still in flight, must see exactly the new weights. Engine A leaves
     * its gathers to the hooks, engine B completes them in the step; both
     * see the same data, so every loss must be bitwise equal. The model is
     * wide (256-unit layers, 256 KiB weights) so that MPI cannot finish a
     * gather before someone waits for it. */
    const mhub_mlp_config wide = {.inputs = 12, .num_hidden = 2, .hidden = {256, 256},
                                  .classes = 5};
    mhub_mlp *ma, *mb;
    CK_OK(mhub_mlp_create(&wide, be, 16, 21, &ma));
    CK_OK(mhub_mlp_create(&wide, be, 16, 21, &mb));
    run_options oa = default_options(adamw_config());
    oa.ddp.overlap_grad_reduce = true;
    oa.ddp.bucket_size = 1;
    oa.ddp.overlap_param_gather = true;
    oa.hooks = true;
    run_options ob = oa;
    ob.ddp.overlap_param_gather = false;
    ob.hooks = false;
    dist_run a, b;
    run_begin(&a, ma, world, &oa);
    run_begin(&b, mb, world, &ob);
    spy watch = {.d = a.engine, .params = mhub_mlp_params(ma)};
    CK_OK(mhub_distopt_unit_hooks(a.engine, &watch.engine));
    mhub_mlp_set_unit_hooks(ma, &(mhub_unit_hooks){.pre_forward = spy_pre_forward,
                                                   .user = &watch});
    for (int s = 0; s < STEPS; s++) {
        run_step(&a, s);
        float la = probe_loss(ma); /* waits per unit inside */
        run_step(&b, s);
        float lb = probe_loss(mb);
        ck_assert_msg(la == lb, "step %d: overlapped %.9g vs synchronous %.9g", s, (double)la,
                      (double)lb);
    }
    ck_assert_int_eq(watch.violations, 0);
    mhub_distopt_stats sa, sb;
    run_end(&a, &sa);
    run_end(&b, &sb);
    if (world->size > 1) {
        /* every gather of A was left to the hooks (6 buckets per step),
         * and the probe forward found all three units' in flight */
        ck_assert_int_eq(sa.gathers_issued, 6 * STEPS);
        ck_assert_int_eq(sa.gathers_deferred, 6 * STEPS);
        ck_assert_int_eq(sb.gathers_deferred, 0);
        ck_assert_int_eq(watch.in_flight_on_entry, 3 * STEPS);
    }
    ck_assert_int_eq(sa.steps, STEPS);
    ck_assert(mhub_test_max_param_diff(world, ma, mb) == 0);
    mhub_mlp_free(ma);
    mhub_mlp_free(mb);
}
END_TEST

START_TEST(test_gather_overlap_needs_a_waiter)
{
    /* Without hooks nor wait_params the step completes its own gathers;
     * with wait_params before each forward it leaves them in flight. */
    for (int wait = 0; wait <= 1; wait++) {
        run_options o = default_options(sgd_config());
        o.ddp.overlap_grad_reduce = true;
        o.ddp.bucket_size = 211;
        o.ddp.overlap_param_gather = true;
        o.wait_params = wait;
        mhub_distopt_stats st;
        check_matches_single_process(world, &o, &st);
        ck_assert_int_eq(st.gathers_deferred, wait && world->size > 1 ? 2 * STEPS : 0);
    }
}
END_TEST

START_TEST(test_overlap_setter)
{
    /* off from the config; the setter turns it on (the next step defers
     * its 2 gathers) and off again (which completes them at once) */
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &m));
    run_options o = default_options(sgd_config());
    o.ddp.overlap_grad_reduce = true;
    o.ddp.bucket_size = 211;
    o.hooks = true;
    dist_run r;
    run_begin(&r, m, world, &o);
    run_step(&r, 0);
    CK_OK(mhub_distopt_set_overlap_param_gather(r.engine, true));
    run_step(&r, 1);
    mhub_distopt_bucket_info info;
    CK_OK(mhub_distopt_bucket(r.engine, 1, &info));
    ck_assert(info.gather_in_flight == (world->size > 1));
    CK_OK(mhub_distopt_set_overlap_param_gather(r.engine, false));
    for (int b = 0; b < mhub_distopt_num_buckets(r.engine); b++) {
        CK_OK(mhub_distopt_bucket(r.engine, b, &info));
        ck_assert(!info.gather_in_flight);
    }
    run_step(&r, 2);
    mhub_distopt_stats st;
    run_end(&r, &st);
    ck_assert_int_eq(st.gathers_deferred, world->size > 1 ? 2 : 0);
    ck_assert_int_eq(st.gathers_issued, world->size > 1 ? 2 * 3 : 0);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_stale_forward_is_refused)
{
    /* The hooks ran in step 0, so the step left its gathers in flight;
     * then they are removed and a forward runs without waiting. Its
     * backward must fail on every rank rather than train on stale weights,
     * and the engine must work again afterwards. */
    if (world->size == 1)
        return; /* nothing is gathered on one rank */
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &m));
    run_options o = default_options(sgd_config());
    o.ddp.overlap_grad_reduce = true;
    o.ddp.bucket_size = 211;
    o.ddp.overlap_param_gather = true;
    o.hooks = true;
    dist_run r;
    run_begin(&r, m, world, &o);
    run_step(&r, 0);
    mhub_mlp_set_unit_hooks(m, NULL);
    float x[4 * 12];
    int32_t y[4] = {0, 1, 2, 3};
    mhub_rng_fill_normal(x, 48, 1, 1, 0, 0, 1);
    CK_OK(mhub_distopt_zero_grad(r.engine));
    CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
    CK_FAILS(MHUB_ERR_STATE, mhub_mlp_backward(m, 0.25f));
    ck_assert_msg(strstr(mhub_last_error(), "stale") && strstr(mhub_last_error(), "wait_params"),
                  "%s", mhub_last_error());
    /* recovered: a normal step goes through (no hooks now: the step syncs) */
    CK_OK(mhub_distopt_zero_grad(r.engine));
    CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
    CK_OK(mhub_mlp_backward(m, 0.25f));
    CK_OK(mhub_distopt_finish_grad_sync(r.engine));
    CK_OK(mhub_distopt_step(r.engine));
    mhub_distopt_stats st;
    run_end(&r, &st);
    ck_assert_int_eq(st.gathers_deferred, 2); /* step 0 only */
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_unused_parameter_does_not_stall)
{
    /* layers.0.bias (index 1) never reports ready, as for a parameter not
     * used in forward: its bucket and the one after it are reduced by
     * finish_grad_sync, in order; results stay exact. */
    run_options o = default_options(adamw_config());
    o.ddp.overlap_grad_reduce = true;
    o.ddp.bucket_size = 1;
    o.ddp.overlap_param_gather = true;
    o.hooks = true;
    o.drop_param = 1;
    mhub_distopt_stats st;
    check_matches_single_process(world, &o, &st);
    ck_assert_int_eq(st.buckets_issued, 6 * STEPS);
    ck_assert_int_eq(st.issued_in_backward, 4 * STEPS);
    ck_assert_int_eq(st.grad_syncs, STEPS);
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
    mhub_optim_config opt = sgd_config();
    mhub_distopt *d;
    CK_OK(mhub_distopt_create(mhub_mlp_params(m), world, &cfg, &opt, &d));
    mhub_mlp_set_grad_ready(m, mhub_distopt_grad_ready, d);
    float x[4 * 12];
    int32_t y[4] = {0, 1, 2, 3};
    mhub_rng_fill_normal(x, 48, 1, 1, 0, 0, 1);
    for (int step = 0; step < 2; step++) {
        CK_OK(mhub_distopt_zero_grad(d));
        if (step == 1 && world->rank == world->size - 1)
            x[3] = NAN; /* poison the last rank's input: every gradient turns NaN */
        CK_OK(mhub_mlp_forward(m, x, y, 4, NULL));
        CK_OK(mhub_mlp_backward(m, 0.25f));
        mhub_status s = mhub_distopt_finish_grad_sync(d);
        if (step == 0) {
            CK_OK(s);
            CK_OK(mhub_distopt_step(d));
            continue;
        }
        ck_assert_int_eq(s, MHUB_ERR_NUMERIC);
        char want[64];
        snprintf(want, sizeof want, "on dp rank %d at step 1", world->size - 1);
        ck_assert_msg(strstr(mhub_last_error(), want) != NULL, "%s", mhub_last_error());
        /* bucket 0 is scanned first; it starts with the last parameter */
        ck_assert_msg(strstr(mhub_last_error(), "'layers.2.bias'") != NULL, "%s",
                      mhub_last_error());
        /* and the poisoned gradients never reach the weights */
        CK_FAILS(MHUB_ERR_STATE, mhub_distopt_step(d));
    }
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_distopt_free(d);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_values_kept_and_broadcast)
{
    mhub_mlp *m, *ref;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 100 + (uint64_t)world->rank, &m));
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 100, &ref)); /* rank 0's init */
    mhub_param_list *pl = mhub_mlp_params(m), *rl = mhub_mlp_params(ref);
    float w3 = ((float *)pl->items[2].value.data)[3];
    ((float *)pl->items[2].grad.data)[7] = 3.5f;
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    mhub_optim_config opt;
    mhub_optim_config_init(&opt, MHUB_OPTIM_SGD); /* plain SGD: zero grads change nothing */
    mhub_distopt *d;
    CK_OK(mhub_distopt_create(pl, world, &cfg, &opt, &d));
    /* values and gradients present before wrapping are kept */
    ck_assert(((float *)pl->items[2].value.data)[3] == w3);
    ck_assert(((float *)pl->items[2].grad.data)[7] == 3.5f);
    CK_OK(mhub_distopt_broadcast_params(d));
    for (int p = 0; p < pl->count; p++)
        ck_assert_mem_eq(pl->items[p].value.data, rl->items[p].value.data,
                         mhub_tensor_nbytes(&pl->items[p].value));
    /* a step with zero gradients keeps rank 0's values on every rank:
     * the main params were refreshed by the broadcast */
    CK_OK(mhub_distopt_zero_grad(d));
    CK_OK(mhub_distopt_finish_grad_sync(d));
    CK_OK(mhub_distopt_step(d));
    for (int p = 0; p < pl->count; p++)
        ck_assert_mem_eq(pl->items[p].value.data, rl->items[p].value.data,
                         mhub_tensor_nbytes(&pl->items[p].value));
    ((float *)pl->items[2].value.data)[8] = -1.0f;
    ((float *)pl->items[2].grad.data)[8] = 2.0f;
    mhub_distopt_free(d);
    ck_assert(pl->items[2].value.owns_data && pl->items[2].grad.owns_data);
    ck_assert(((float *)pl->items[2].value.data)[8] == -1.0f);
    ck_assert(((float *)pl->items[2].grad.data)[8] == 2.0f);
    ck_assert(((float *)pl->items[0].value.data)[0] == ((float *)rl->items[0].value.data)[0]);
    mhub_mlp_free(ref);
    mhub_mlp_free(m);
}
END_TEST

/* ---- bf16 / f16 models -------------------------------------------------------- */

static void half_model(mhub_dtype dt, mhub_mlp **out)
{
    mhub_mlp_config c = model_cfg;
    c.param_dtype = dt;
    CK_OK(mhub_mlp_create(&c, be, 16, 21, out));
}

/* A model's parameters as f32, in list order. */
static void read_params(mhub_mlp *m, float *flat)
{
    mhub_param_list *pl = mhub_mlp_params(m);
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
        CK_OK(be->ops->cast(be, flat + at, MHUB_F32, pl->items[p].value.data,
                            pl->items[p].value.dtype, pl->items[p].value.numel));
}

/* Every padding element of the parameter buffer (the engine's view: the
 * slots around parameter 5, the first in the buffer) is zero. */
static void check_padding_zero(mhub_distopt *d, mhub_param_list *pl)
{
    const uint16_t *base = pl->items[5].value.data; /* 16-bit buffer, offset 0 */
    ck_assert_int_eq(mhub_distopt_param_offset(d, 5), 0);
    int64_t n = mhub_distopt_numel(d), zeros = 0;
    for (int64_t i = 0; i < n; i++) {
        bool in_param = false;
        for (int p = 0; p < pl->count && !in_param; p++) {
            int64_t off = mhub_distopt_param_offset(d, p);
            in_param = i >= off && i < off + pl->items[p].value.numel;
        }
        if (!in_param) {
            ck_assert_msg(base[i] == 0, "padding element %lld is 0x%04x", (long long)i,
                          base[i]);
            zeros++;
        }
    }
    ck_assert_int_eq(zeros, mhub_distopt_padding_elems(d));
}

/* The engine's f32 main params and optimizer state of every parameter,
 * into each step's "before" or "after" arrays. Collective. */
static void read_engine_state(mhub_distopt *d, const mhub_optim_config *o,
                              mhub_test_param_step *st, int count, bool after)
{
    int k = mhub_optim_state_arrays(o);
    for (int p = 0; p < count; p++) {
        CK_OK(mhub_distopt_get_state(d, p, -1, after ? st[p].master_after : st[p].master));
        for (int a = 0; a < k; a++)
            CK_OK(mhub_distopt_get_state(d, p, a, after ? st[p].state_after[a] : st[p].state[a]));
    }
}

/* Each rank's gradient in step s of run_step, computed in this process by
 * `ref` at the engine's current parameters (its main params rounded to the
 * model dtype, as the parameter buffer holds them). */
static void rank_grads(mhub_mlp *ref, mhub_synthetic_task *task, const run_options *o, int s,
                       int ranks, mhub_test_param_step *st)
{
    ck_assert_int_eq(o->accum, 1); /* one backward per rank and step, as here */
    mhub_param_list *pl = mhub_mlp_params(ref);
    for (int p = 0; p < pl->count; p++)
        CK_OK(be->ops->cast(be, pl->items[p].value.data, pl->items[p].value.dtype, st[p].master,
                            MHUB_F32, pl->items[p].value.numel));
    int64_t local = o->global_batch / ranks;
    float x[16 * 12];
    int32_t y[16];
    for (int r = 0; r < ranks; r++) {
        CK_OK(mhub_param_list_zero_grad(pl));
        uint64_t first = (uint64_t)s * (uint64_t)o->global_batch + (uint64_t)(r * local);
        CK_OK(mhub_synthetic_batch(task, first, local, x, y));
        CK_OK(mhub_mlp_forward(ref, x, y, local, NULL));
        CK_OK(mhub_mlp_backward(ref, 1.0f / (float)local));
        for (int p = 0; p < pl->count; p++)
            memcpy(st[p].grads[r], pl->items[p].grad.data,
                   (size_t)pl->items[p].grad.numel * sizeof(float));
    }
}

/* Run STEPS steps of r and check each against the one-process reference of
 * tests/testutil_reduce.h: `ref` computes every rank's gradient at the
 * engine's parameters, and the engine's new main params and optimizer
 * state must be the shared update rule's result for one of the reduced
 * gradients some summation order gives, whatever order the MPI library
 * adds in. Why per step and not a trajectory with a tolerance: with
 * 16-bit gradients, elements whose rank gradients nearly cancel get a
 * reduced value that depends on the summation order, and AdamW turns it
 * into a step of up to lr (test_fsdp.c's train_reference_16bit has a
 * measured example). The last assertion checks that the check would catch
 * a rank's gradient counted twice. */
static void run_checked_steps(dist_run *r, mhub_mlp *ref, mhub_dtype gdt, const char *what)
{
    mhub_param_list *pl = mhub_mlp_params(ref);
    mhub_test_param_step st[8];
    ck_assert_int_le(pl->count, 8);
    for (int p = 0; p < pl->count; p++)
        mhub_test_param_step_alloc(&st[p], pl->items[p].value.numel, r->dp->size);
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 9));
    for (int s = 0; s < STEPS; s++) {
        read_engine_state(r->engine, &r->o.opt, st, pl->count, false);
        rank_grads(ref, &task, &r->o, s, r->dp->size, st);
        run_step(r, s);
        read_engine_state(r->engine, &r->o.opt, st, pl->count, true);
        mhub_test_reduce rule = {
            .be = be, .optim = &r->o.opt, .step = s + 1, .ranks = r->dp->size, .gdt = gdt};
        mhub_test_check_step(&rule, pl, st, what, s + 1);
    }
    mhub_synthetic_free(&task);
    for (int p = 0; p < pl->count; p++)
        mhub_test_param_step_free(&st[p]);
}

/* Every parameter equals its main param rounded to the model dtype. */
static void check_params_are_rounded_mains(mhub_distopt *d, mhub_mlp *m, const char *what)
{
    mhub_param_list *pl = mhub_mlp_params(m);
    static float params[MODEL_NUMEL], main[MODEL_NUMEL];
    read_params(m, params);
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
        CK_OK(mhub_distopt_get_state(d, p, -1, main + at));
    for (int i = 0; i < MODEL_NUMEL; i++)
        ck_assert_msg(params[i] == mhub_test_round(main[i], pl->items[0].value.dtype),
                      "%s: element %d is %g, its main param %g", what, i, params[i], main[i]);
}

START_TEST(test_half_precision_models)
{
    /* Megatron-style mixed precision: 16-bit parameter buffer, fp32 main
     * shards, gradients reduced in f32 or in the model's dtype; every step
     * checked against one process (run_checked_steps). */
    const mhub_dtype dts[] = {MHUB_BF16, MHUB_F16};
    const mhub_optim_config opts[] = {sgd_config(), adamw_config()};
    static float init[MODEL_NUMEL], dist[MODEL_NUMEL];
    for (int t = 0; t < 2; t++)
        for (int fp32 = 0; fp32 <= 1; fp32++)
            for (int k = 0; k < 2; k++)
                for (int overlap = 0; overlap <= 1; overlap++) {
                    run_options o = default_options(opts[k]);
                    o.ddp.grad_reduce_in_fp32 = fp32;
                    o.ddp.overlap_grad_reduce = overlap;
                    o.ddp.bucket_size = 100; /* several buckets, shards split parameters */
                    o.ddp.overlap_param_gather = overlap;
                    o.hooks = overlap;
                    char what[128];
                    snprintf(what, sizeof what, "dp %d, %s, %s, grad in fp32 %d, overlap %d",
                             world->size, mhub_dtype_name(dts[t]),
                             mhub_optim_kind_name(o.opt.kind), fp32, overlap);
                    mhub_mlp *md, *ref;
                    half_model(dts[t], &md);
                    half_model(dts[t], &ref);
                    read_params(md, init);
                    dist_run r;
                    run_begin(&r, md, world, &o);
                    mhub_distopt_memory mem;
                    mhub_distopt_get_memory(r.engine, &mem);
                    size_t n = (size_t)mhub_distopt_numel(r.engine);
                    ck_assert_uint_eq(mem.param_buffer_bytes, 2 * n);
                    ck_assert_uint_eq(mem.grad_buffer_bytes, (fp32 ? 4 : 2) * n);
                    run_checked_steps(&r, ref, fp32 ? MHUB_F32 : dts[t], what);
                    CK_OK(mhub_distopt_wait_params(r.engine));
                    check_padding_zero(r.engine, mhub_mlp_params(md));
                    check_params_are_rounded_mains(r.engine, md, what);
                    run_end(&r, NULL);
                    /* free gave the parameters their own storage back */
                    mhub_param_list *pl = mhub_mlp_params(md);
                    for (int p = 0; p < pl->count; p++) {
                        ck_assert(pl->items[p].value.owns_data);
                        ck_assert_int_eq(pl->items[p].value.dtype, dts[t]);
                        ck_assert(pl->items[p].grad.owns_data);
                        ck_assert_int_eq(pl->items[p].grad.dtype, MHUB_F32);
                    }
                    read_params(md, dist);
                    int moved = 0;
                    for (int i = 0; i < MODEL_NUMEL; i++)
                        moved += dist[i] != init[i];
                    ck_assert_int_gt(moved, MODEL_NUMEL / 2);
                    mhub_mlp_free(md);
                    mhub_mlp_free(ref);
                }
}
END_TEST

START_TEST(test_half_precision_needs_f32_grads_for_checks)
{
    /* deterministic mode and the NaN check read f32 gradients */
    mhub_mlp *m;
    half_model(MHUB_BF16, &m);
    mhub_optim_config opt = sgd_config();
    for (int which = 0; which < 2; which++) {
        mhub_ddp_config cfg;
        mhub_ddp_config_init(&cfg);
        cfg.deterministic = which == 0;
        cfg.check_for_nan_in_grad = which == 1;
        mhub_distopt *d = NULL;
        CK_FAILS(MHUB_ERR_UNSUPPORTED,
                 mhub_distopt_create(mhub_mlp_params(m), world, &cfg, &opt, &d));
        ck_assert_msg(strstr(mhub_last_error(), "grad_reduce_in_fp32") != NULL, "%s",
                      mhub_last_error());
        ck_assert_ptr_null(d);
        ck_assert(mhub_mlp_params(m)->items[0].value.owns_data);
        cfg.grad_reduce_in_fp32 = true;
        CK_OK(mhub_distopt_create(mhub_mlp_params(m), world, &cfg, &opt, &d));
        mhub_distopt_free(d);
    }
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_bad_input_is_reported)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 1, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    mhub_optim_config opt = sgd_config();
    mhub_distopt *d = NULL;
    cfg.bucket_size = 0;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(pl, world, &cfg, &opt, &d));
    ck_assert_msg(strstr(mhub_last_error(), "bucket_size") != NULL, "%s", mhub_last_error());
    mhub_ddp_config_init(&cfg);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(NULL, world, &cfg, &opt, &d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(pl, NULL, &cfg, &opt, &d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(pl, world, NULL, &opt, &d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(pl, world, &cfg, NULL, &d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(pl, world, &cfg, &opt, NULL));
    /* shard_done belongs to deterministic mode (tested in test_engine.c) */
    CK_OK(mhub_distopt_create(pl, world, &cfg, &opt, &d));
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_shard_done(d));
    mhub_distopt_free(d);
    d = NULL;
    /* optimizer configs */
    mhub_optim_config bad = opt;
    bad.lr = -1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(pl, world, &cfg, &bad, &d));
    ck_assert_msg(strstr(mhub_last_error(), "lr") != NULL, "%s", mhub_last_error());
    bad = adamw_config();
    bad.beta2 = 1.5f;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(pl, world, &cfg, &bad, &d));
    bad.kind = (mhub_optim_kind)7;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_create(pl, world, &cfg, &bad, &d));
    /* a meta model */
    mhub_mlp *meta;
    CK_OK(mhub_mlp_create(&model_cfg, NULL, 0, 0, &meta));
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_create(mhub_mlp_params(meta), world, &cfg, &opt, &d));
    ck_assert_msg(strstr(mhub_last_error(), "layers.0.weight") != NULL, "%s", mhub_last_error());
    mhub_mlp_free(meta);
    /* bf16 and f16 parameters in one model */
    mhub_param_list half = {0};
    const int64_t shape[1] = {8};
    CK_OK(mhub_param_list_add(&half, "w", MHUB_BF16, 1, shape, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_add(&half, "v", MHUB_F16, 1, shape, MHUB_INIT_ONES, 0, NULL));
    CK_OK(mhub_param_list_materialize(&half, be, 1));
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_distopt_create(&half, world, &cfg, &opt, &d));
    ck_assert_msg(strstr(mhub_last_error(), "'v'") && strstr(mhub_last_error(), "one parameter"),
                  "%s", mhub_last_error());
    mhub_param_list_free(&half);
    ck_assert_ptr_null(d);
    /* the parameters are untouched by the failed attempts */
    ck_assert(pl->items[0].value.owns_data);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_misuse_is_reported)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 4, 1, &m));
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    cfg.overlap_grad_reduce = true;
    cfg.bucket_size = 1;
    mhub_optim_config opt = adamw_config();
    mhub_distopt *d;
    CK_OK(mhub_distopt_create(mhub_mlp_params(m), world, &cfg, &opt, &d));
    /* a step needs reduced gradients */
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_step(d));
    ck_assert_msg(strstr(mhub_last_error(), "finish_grad_sync") != NULL, "%s",
                  mhub_last_error());
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_no_sync_end(d));
    CK_OK(mhub_distopt_no_sync_begin(d));
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_no_sync_begin(d));
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_finish_grad_sync(d));
    CK_OK(mhub_distopt_no_sync_end(d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_grad_ready(d, 6));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_grad_ready(d, -1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_grad_ready(NULL, 0));
    /* a reduction in flight: bucket 0 holds layers.2.bias (index 5) only */
    CK_OK(mhub_distopt_grad_ready(d, 5));
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_zero_grad(d));
    CK_OK(mhub_distopt_finish_grad_sync(d));
    CK_OK(mhub_distopt_step(d));
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_step(d)); /* once per reduction */
    CK_OK(mhub_distopt_zero_grad(d));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_lr(d, -0.5f));
    CK_OK(mhub_distopt_set_lr(d, 0.001f));
    mhub_unit_hooks h;
    CK_OK(mhub_distopt_unit_hooks(d, &h));
    ck_assert_ptr_nonnull(h.pre_forward);
    ck_assert_ptr_null(h.post_backward);
    CK_FAILS(MHUB_ERR_INVALID_ARG, h.pre_forward(h.user, -1));
    CK_OK(h.pre_forward(h.user, 99)); /* a unit without parameters */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_unit_hooks(NULL, &h));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_unit_hooks(d, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_step(NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_wait_params(NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_overlap_param_gather(NULL, true));
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_shard_done(d)); /* not deterministic */
    ck_assert_int_eq(mhub_distopt_num_buckets(NULL), 0);
    mhub_distopt_free(d);
    mhub_distopt_free(NULL);
    mhub_mlp_free(m);
}
END_TEST

/* ---- gradient norm pieces, scaling, checkpoint state ------------------------ */

/* x from every rank of `dp` (at most 8), added in rank order. */
static double sum_over_ranks(mhub_comm *dp, double x)
{
    double all[8];
    ck_assert_int_le(dp->size, 8);
    CK_OK(mhub_comm_allgather(dp, &x, all, 2, MHUB_F32)); /* 8 bytes, copied */
    double total = 0;
    for (int r = 0; r < dp->size; r++)
        total += all[r];
    return total;
}

/* Step 0's whole global batch in one process (a fresh model of seed 21):
 * the reference gradient, flat in list order. */
static void one_process_grads(float *grads)
{
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 9));
    float x[16 * 12];
    int32_t y[16];
    CK_OK(mhub_synthetic_batch(&task, 0, 16, x, y));
    CK_OK(mhub_param_list_zero_grad(pl));
    CK_OK(mhub_mlp_forward(m, x, y, 16, NULL));
    CK_OK(mhub_mlp_backward(m, 1.0f / 16));
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
        memcpy(grads + at, pl->items[p].grad.data, mhub_tensor_nbytes(&pl->items[p].grad));
    mhub_synthetic_free(&task);
    mhub_mlp_free(m);
}

/* This rank's slice of step 0's global batch through the engine, one
 * backward (a deterministic run's one micro-shard: loss weight 1/G), then
 * finish_grad_sync. */
static void reduce_step0(mhub_distopt *d, mhub_mlp *m, bool deterministic)
{
    int64_t local = 16 / world->size;
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 9));
    float x[16 * 12];
    int32_t y[16];
    CK_OK(mhub_synthetic_batch(&task, (uint64_t)(world->rank * local), local, x, y));
    CK_OK(mhub_distopt_zero_grad(d));
    CK_OK(mhub_mlp_forward(m, x, y, local, NULL));
    CK_OK(mhub_mlp_backward(m, deterministic ? 1.0f / 16 : 1.0f / (float)local));
    if (deterministic)
        CK_OK(mhub_distopt_shard_done(d));
    CK_OK(mhub_distopt_finish_grad_sync(d));
    mhub_synthetic_free(&task);
}

/* Whether buffer element `at` lies in this rank's shard of its bucket. */
static bool owned(mhub_distopt *d, int param, int64_t at)
{
    mhub_distopt_bucket_info b;
    CK_OK(mhub_distopt_bucket(d, mhub_distopt_param_bucket(d, param), &b));
    int64_t lo = b.offset + world->rank * b.shard_numel;
    return at >= lo && at < lo + b.shard_numel;
}

/* The gradient elements the step reads, as the test finds them: this
 * rank's shards outside deterministic mode, every element in it. Copied
 * to `out` (flat, list order; others left as they are); returns how many. */
static int64_t read_step_grads(mhub_distopt *d, mhub_param_list *pl, bool all, float *out,
                               bool *mask)
{
    int64_t count = 0;
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++) {
        const float *g = pl->items[p].grad.data;
        int64_t off = mhub_distopt_param_offset(d, p);
        for (int64_t i = 0; i < pl->items[p].value.numel; i++) {
            mask[at + i] = all || owned(d, p, off + i);
            if (mask[at + i]) {
                out[at + i] = g[i];
                count++;
            }
        }
    }
    return count;
}

START_TEST(test_grad_sum_squares_and_scale)
{
    /* grad_sum_squares covers exactly the elements the step reads: summed
     * over ranks (or, deterministic, on each rank) it is the one-process
     * gradient's sum of squares; scale_grads multiplies exactly those */
    static float ref[MODEL_NUMEL], before[MODEL_NUMEL], after[MODEL_NUMEL];
    static bool mask[MODEL_NUMEL];
    one_process_grads(ref);
    double ref_ss = 0;
    for (int i = 0; i < MODEL_NUMEL; i++)
        ref_ss += (double)ref[i] * ref[i];
    const int64_t buckets[] = {MHUB_DDP_BUCKET_AUTO, 100};
    for (int det = 0; det <= 1; det++)
        for (int b = 0; b < 2; b++) {
            mhub_mlp *m;
            CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &m));
            mhub_param_list *pl = mhub_mlp_params(m);
            run_options o = default_options(sgd_config());
            o.ddp.deterministic = det;
            o.ddp.overlap_grad_reduce = buckets[b] > 0;
            o.ddp.bucket_size = buckets[b];
            mhub_distopt *d;
            CK_OK(mhub_distopt_create(pl, world, &o.ddp, &o.opt, &d));
            mhub_mlp_set_grad_ready(m, mhub_distopt_grad_ready, d);
            reduce_step0(d, m, det);
            double mine = -1;
            bool partial = det;
            CK_OK(mhub_distopt_grad_sum_squares(d, &mine, &partial));
            ck_assert(partial == !det);
            int64_t n = read_step_grads(d, pl, det, before, mask);
            double seen = 0, worst = 0;
            for (int i = 0; i < MODEL_NUMEL; i++)
                if (mask[i]) {
                    seen += (double)before[i] * before[i];
                    worst = fmax(worst, mhub_test_relerr(before[i], ref[i], 1e-3));
                }
            ck_assert_msg(worst < 1e-4, "det %d bucket %lld: reduced gradient off by %g", det,
                          (long long)buckets[b], worst);
            ck_assert_msg(mhub_test_relerr(mine, seen, 0) < 1e-12,
                          "det %d bucket %lld: %.17g, the test sums %.17g over %lld elements",
                          det, (long long)buckets[b], mine, seen, (long long)n);
            double total = partial ? sum_over_ranks(world, mine) : mine;
            ck_assert_msg(mhub_test_relerr(total, ref_ss, 0) < 1e-5,
                          "det %d bucket %lld on %d ranks: %.12g, one process %.12g", det,
                          (long long)buckets[b], world->size, total, ref_ss);
            if (!partial) /* the same bits everywhere */
                ck_assert(sum_over_ranks(world, mine) == world->size * mine);
            ck_assert_int_eq(sum_over_ranks(world, (double)n), det ? world->size * MODEL_NUMEL
                                                                   : MODEL_NUMEL);

            CK_OK(mhub_distopt_scale_grads(d, 3.0f));
            read_step_grads(d, pl, det, after, mask);
            for (int i = 0; i < MODEL_NUMEL; i++)
                if (mask[i])
                    ck_assert_msg(after[i] == before[i] * 3.0f, "element %d: %.9g, 3 x %.9g", i,
                                  after[i], before[i]);
            double scaled = -1;
            CK_OK(mhub_distopt_grad_sum_squares(d, &scaled, &partial));
            ck_assert(mhub_test_relerr(scaled, 9 * mine, 0) < 1e-6);
            CK_OK(mhub_distopt_step(d));
            CK_FAILS(MHUB_ERR_STATE, mhub_distopt_grad_sum_squares(d, &scaled, &partial));
            mhub_mlp_set_grad_ready(m, NULL, NULL);
            mhub_distopt_free(d);
            mhub_mlp_free(m);
        }
}
END_TEST

START_TEST(test_state_and_step_count_round_trip)
{
    static float set[MODEL_NUMEL], got[MODEL_NUMEL];
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    run_options o = default_options(adamw_config());
    o.ddp.overlap_grad_reduce = true;
    o.ddp.bucket_size = 100; /* parameters cut across rank shards */
    mhub_distopt *d;
    CK_OK(mhub_distopt_create(pl, world, &o.ddp, &o.opt, &d));
    mhub_mlp_set_grad_ready(m, mhub_distopt_grad_ready, d);
    ck_assert_int_eq(mhub_distopt_optim_steps(d), 0);
    /* every rank passes the same arrays; get gathers them back whole */
    for (int which = -1; which < 2; which++)
        for (int p = 0; p < pl->count; p++) {
            int64_t n = pl->items[p].value.numel;
            for (int64_t i = 0; i < n; i++) /* exp_avg_sq (1) stays >= 0 */
                set[i] = 0.01f * (float)((i * 13 + p * 5 + which * 3) % 29) -
                         (which == 1 ? 0.0f : 0.1f);
            CK_OK(mhub_distopt_set_state(d, p, which, set));
            CK_OK(mhub_distopt_get_state(d, p, which, got));
            ck_assert_msg(!memcmp(set, got, (size_t)n * sizeof(float)), "state %d of %d", which,
                          p);
        }
    /* the main params are what the step starts from: with lr 0 and no
     * weight decay the step copies them into the parameters unchanged */
    static float mains[MODEL_NUMEL];
    for (int p = 0, at = 0; p < pl->count; at += (int)pl->items[p].value.numel, p++)
        CK_OK(mhub_distopt_get_state(d, p, -1, mains + at));
    CK_OK(mhub_distopt_set_lr(d, 0.0f));
    reduce_step0(d, m, false);
    CK_OK(mhub_distopt_step(d));
    CK_OK(mhub_distopt_wait_params(d));
    read_params(m, got);
    ck_assert(!memcmp(got, mains, sizeof mains));
    ck_assert_int_eq(mhub_distopt_optim_steps(d), 1);
    CK_OK(mhub_distopt_set_optim_steps(d, 7));
    ck_assert_int_eq(mhub_distopt_optim_steps(d), 7);
    reduce_step0(d, m, false);
    CK_OK(mhub_distopt_step(d));
    ck_assert_int_eq(mhub_distopt_optim_steps(d), 8);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_optim_steps(d, -2));
    ck_assert_int_eq(mhub_distopt_optim_steps(d), 8);
    CK_OK(mhub_distopt_set_optim_steps(d, 0));
    ck_assert_int_eq(mhub_distopt_optim_steps(d), 0);
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_distopt_free(d);
    mhub_mlp_free(m);
}
END_TEST

START_TEST(test_norm_and_state_bad_input)
{
    static float buf[MODEL_NUMEL];
    double ss = 0;
    bool partial = false;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_grad_sum_squares(NULL, &ss, &partial));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_scale_grads(NULL, 2.0f));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_state(NULL, 0, 0, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_optim_steps(NULL, 1));
    ck_assert_int_eq(mhub_distopt_optim_steps(NULL), 0);
    mhub_mlp *m;
    CK_OK(mhub_mlp_create(&model_cfg, be, 16, 21, &m));
    mhub_param_list *pl = mhub_mlp_params(m);
    pl->items[1].requires_grad = false; /* frozen: no state */
    run_options o = default_options(adamw_config());
    mhub_distopt *d;
    CK_OK(mhub_distopt_create(pl, world, &o.ddp, &o.opt, &d));
    mhub_mlp_set_grad_ready(m, mhub_distopt_grad_ready, d);
    /* no reduced gradients: at create, and after a step */
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_grad_sum_squares(d, &ss, &partial));
    ck_assert_msg(strstr(mhub_last_error(), "finish_grad_sync") != NULL, "%s",
                  mhub_last_error());
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_scale_grads(d, 2.0f));
    reduce_step0(d, m, false);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_grad_sum_squares(d, NULL, &partial));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_grad_sum_squares(d, &ss, NULL));
    CK_OK(mhub_distopt_scale_grads(d, 0.5f));
    CK_OK(mhub_distopt_step(d));
    CK_FAILS(MHUB_ERR_STATE, mhub_distopt_scale_grads(d, 2.0f));
    /* state arguments */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_state(d, 1, 0, buf));
    ck_assert_msg(strstr(mhub_last_error(), "parameter 1 has no optimizer state") != NULL, "%s",
                  mhub_last_error());
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_state(d, pl->count, 0, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_state(d, -1, 0, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_state(d, 0, 2, buf));
    ck_assert_msg(strstr(mhub_last_error(), "state 2 of 2") != NULL, "%s", mhub_last_error());
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_state(d, 0, -2, buf));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_set_state(d, 0, 0, NULL));
    /* get is collective: the same refusal on every rank, nobody waits */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_distopt_get_state(d, 1, 0, buf));
    CK_OK(mhub_distopt_get_state(d, 0, 0, buf));
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_distopt_free(d);
    mhub_mlp_free(m);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("distopt");
    TCase *tc = tcase_create("engine");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_padded_layout);
    tcase_add_test(tc, test_matches_single_process);
    tcase_add_test(tc, test_gradient_accumulation);
    tcase_add_test(tc, test_three_ranks);
    tcase_add_test(tc, test_no_stale_weights_with_overlapped_gather);
    tcase_add_test(tc, test_gather_overlap_needs_a_waiter);
    tcase_add_test(tc, test_overlap_setter);
    tcase_add_test(tc, test_stale_forward_is_refused);
    tcase_add_test(tc, test_unused_parameter_does_not_stall);
    tcase_add_test(tc, test_nan_is_named_on_every_rank);
    tcase_add_test(tc, test_values_kept_and_broadcast);
    tcase_add_test(tc, test_half_precision_models);
    tcase_add_test(tc, test_half_precision_needs_f32_grads_for_checks);
    tcase_add_test(tc, test_bad_input_is_reported);
    tcase_add_test(tc, test_misuse_is_reported);
    tcase_add_test(tc, test_grad_sum_squares_and_scale);
    tcase_add_test(tc, test_state_and_step_count_round_trip);
    tcase_add_test(tc, test_norm_and_state_bad_input);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return mhub_test_mpi_main(argc, argv, make_suite); }
