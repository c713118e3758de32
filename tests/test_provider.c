/* test_provider.c - the provider API under mpiexec -n 1, 2, 4: registry,
 * provide(), hooks, get_model's steps and options, seeds, meta models. */
#include <string.h>

#include "testutil_mpi.h"

MHUB_TEST_ENGINE_FIXTURE

/* An MLP provider with `layers` linear layers (widths 5, 6, ... ). */
static mhub_provider *mlp_provider(int layers)
{
    mhub_provider_config *cfg = NULL;
    CK_OK(mhub_config_create(mhub_mlp_provider_type(), &cfg));
    mhub_mlp_provider_config *m = (mhub_mlp_provider_config *)cfg;
    m->mlp.inputs = 5;
    m->mlp.classes = 3;
    m->mlp.num_hidden = layers - 1;
    for (int i = 0; i < layers - 1; i++)
        m->mlp.hidden[i] = 6 + i;
    mhub_provider *p = NULL;
    CK_OK(mhub_provider_create(cfg, &p));
    mhub_config_free(cfg);
    mhub_provider_set_backend(p, be);
    mhub_provider_set_micro_batch(p, 8);
    return p;
}

static mhub_mlp_provider_config *mlp_cfg(mhub_provider *p)
{
    return (mhub_mlp_provider_config *)mhub_provider_config_mut(p);
}

/* ---- registry -------------------------------------------------------------- */

typedef struct toy_config {
    mhub_provider_config base;
    int width;
} toy_config;

static const mhub_config_field toy_fields[] = {
    {.key = "width", .kind = MHUB_FIELD_INT, .offset = offsetof(toy_config, width), .min = 1,
     .max = 100, .help = "elements of the toy's one parameter"},
};

static mhub_param_list *toy_params(void *model) { return model; }
static void toy_free(void *model)
{
    mhub_param_list_free(model);
    free(model);
}

static mhub_status toy_provide(const mhub_provider_config *base, const mhub_provide_args *a,
                               mhub_chunk **out)
{
    const toy_config *c = (const toy_config *)base;
    mhub_param_list *pl = calloc(1, sizeof *pl);
    ck_assert_ptr_nonnull(pl);
    int64_t shape[1] = {c->width};
    CK_OK(mhub_param_list_add(pl, "toy.weight", MHUB_F32, 1, shape, MHUB_INIT_NORMAL, 1.0f,
                              NULL));
    if (a->backend)
        CK_OK(mhub_param_list_materialize(pl, a->backend, a->seed));
    static const mhub_chunk_ops ops = {.params = toy_params, .free = toy_free};
    return mhub_chunk_create("toy", pl, &ops, out);
}

static void toy_defaults(mhub_provider_config *base) { ((toy_config *)base)->width = 4; }

static const mhub_provider_type toy_type = {
    .name = "toy-provider-test",
    .description = "one vector",
    .config_size = sizeof(toy_config),
    .fields = toy_fields,
    .num_fields = 1,
    .config_defaults = toy_defaults,
    .provide = toy_provide,
};

START_TEST(test_registry)
{
    ck_assert_ptr_eq(mhub_provider_type_find("mlp"), mhub_mlp_provider_type());
    ck_assert_ptr_nonnull(mhub_provider_type_find("gpt"));
    ck_assert_ptr_null(mhub_provider_type_find("no-such-type"));
    ck_assert_ptr_null(mhub_provider_type_find(NULL));
    int before = mhub_provider_type_count();
    if (!mhub_provider_type_find(toy_type.name))
        CK_OK(mhub_provider_type_register(&toy_type));
    ck_assert_ptr_eq(mhub_provider_type_find(toy_type.name), &toy_type);
    ck_assert_int_ge(mhub_provider_type_count(), before);
    ck_assert_ptr_eq(mhub_provider_type_at(mhub_provider_type_count() - 1), &toy_type);
    ck_assert_ptr_null(mhub_provider_type_at(-1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_type_register(&toy_type));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "already registered"));

    mhub_provider_type bad = toy_type;
    bad.name = "bad-size";
    bad.config_size = sizeof(mhub_provider_config) - 1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_type_register(&bad));
    mhub_config_field clash = toy_fields[0];
    clash.key = "seed";
    bad = toy_type;
    bad.name = "bad-clash";
    bad.fields = &clash;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_type_register(&bad));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "seed"));
    mhub_config_field outside = toy_fields[0];
    outside.offset = 0;
    bad.name = "bad-offset";
    bad.fields = &outside;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_type_register(&bad));
    bad = toy_type;
    bad.name = "bad-no-provide";
    bad.provide = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_type_register(&bad));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_create_default("no-such-type", NULL));

    /* a user type works end to end */
    mhub_provider *p;
    CK_OK(mhub_provider_create_default(toy_type.name, &p));
    mhub_provider_set_backend(p, be);
    mhub_chunk *c;
    CK_OK(mhub_provider_provide(p, true, true, -1, &c));
    ck_assert_str_eq(mhub_chunk_type_name(c), "toy");
    ck_assert_int_eq(mhub_chunk_numel(c), 4);
    ck_assert(!mhub_chunk_is_meta(c));
    mhub_chunk_free(c);
    /* a toy chunk reports no gradient events, so it cannot be wrapped */
    CK_OK(mhub_provider_initialize_model_parallel(p, world, NULL, NULL));
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    o.ddp_config = &dc;
    o.log = fopen("/dev/null", "w");
    mhub_chunk_list l;
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_get_model(p, &o, &l));
    ck_assert_int_eq(l.count, 0);
    fclose(o.log);
    mhub_provider_free(p);
}
END_TEST

/* The type a provider was made from, whichever way it was made. */
START_TEST(test_provider_type_of)
{
    mhub_provider *p = mlp_provider(2);
    ck_assert_ptr_eq(mhub_provider_type_of(p), mhub_mlp_provider_type());
    ck_assert_ptr_eq(mhub_provider_type_of(p), mhub_provider_type_find("mlp"));
    mhub_provider_free(p);

    CK_OK(mhub_provider_create_default("gpt", &p));
    ck_assert_ptr_eq(mhub_provider_type_of(p), mhub_gpt_provider_type());
    ck_assert_str_eq(mhub_provider_type_of(p)->name, "gpt");
    mhub_provider_free(p);

    if (!mhub_provider_type_find(toy_type.name))
        CK_OK(mhub_provider_type_register(&toy_type));
    mhub_provider_config *cfg = NULL;
    CK_OK(mhub_config_create(&toy_type, &cfg));
    CK_OK(mhub_provider_create(cfg, &p));
    mhub_config_free(cfg); /* the provider keeps its own copy, of the same type */
    ck_assert_ptr_eq(mhub_provider_type_of(p), &toy_type);
    ck_assert_ptr_eq(mhub_provider_config_of(p)->type, &toy_type);
    mhub_provider_free(p);

    ck_assert_ptr_null(mhub_provider_type_of(NULL));
}
END_TEST

/* ---- provide ------------------------------------------------------------------ */

/* Which chunk of the model in model order, Megatron's interleaved
 * numbering: every virtual stage walks the whole pipeline before the
 * next begins. */
START_TEST(test_chunk_index)
{
    static const struct {
        int pp_size, vp_size, pp_rank, vp_stage, index;
    } cases[] = {
        {1, 1, 0, -1, 0}, /* one stage, no virtual pipelining */
        {4, 1, 0, -1, 0}, {4, 1, 3, -1, 3},
        {4, 2, 0, 0, 0},  {4, 2, 3, 0, 3},  /* the first virtual stage, pipeline ranks 0 .. 3 */
        {4, 2, 0, 1, 4},  {4, 2, 2, 1, 6},  /* the second follows the whole first */
        {2, 3, 1, 2, 5},  {2, 3, 0, 2, 4},  {2, 3, 1, 1, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        mhub_provide_args a = {.pp_size = cases[i].pp_size, .vp_size = cases[i].vp_size,
                               .pp_rank = cases[i].pp_rank, .vp_stage = cases[i].vp_stage};
        ck_assert_msg(mhub_provide_args_chunk_index(&a) == cases[i].index,
                      "pp %d vp %d, rank %d, vp stage %d: chunk %d, want %d", a.pp_size,
                      a.vp_size, a.pp_rank, a.vp_stage, mhub_provide_args_chunk_index(&a),
                      cases[i].index);
    }
    /* every (rank, virtual stage) of a cut names a different chunk, and
     * together they are all of them */
    const int pps[] = {1, 2, 4}, vps[] = {1, 2, 3};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            int pp = pps[i], vp = vps[j], chunks = pp * vp;
            bool seen[12] = {false};
            for (int r = 0; r < pp; r++)
                for (int v = 0; v < vp; v++) {
                    mhub_provide_args a = {.pp_size = pp, .vp_size = vp, .pp_rank = r,
                                           .vp_stage = vp > 1 ? v : -1};
                    ck_assert_int_eq(mhub_provide_args_num_chunks(&a), chunks);
                    int g = mhub_provide_args_chunk_index(&a);
                    ck_assert_msg(g >= 0 && g < chunks && !seen[g],
                                  "pp %d vp %d: rank %d stage %d gave chunk %d", pp, vp, r, v, g);
                    seen[g] = true;
                }
        }
    /* the provider builds the layers that index names: chunk g of 6
     * holds layers 2g and 2g + 1 of 12 */
    mhub_provider *p = mlp_provider(12);
    mlp_cfg(p)->base.pipeline_model_parallel_size = 2;
    mlp_cfg(p)->base.virtual_pipeline_model_parallel_size = 3;
    for (int r = 0; r < 2; r++) {
        mhub_chunk_list l;
        CK_OK(mhub_provider_meta_stage(p, r, &l));
        for (int v = 0; v < l.count; v++) {
            mhub_provide_args a = {.pp_size = 2, .vp_size = 3, .pp_rank = r, .vp_stage = v};
            char first[MHUB_NAME_MAX];
            snprintf(first, sizeof first, "layers.%d.weight",
                     2 * mhub_provide_args_chunk_index(&a));
            ck_assert_str_eq(mhub_chunk_params(l.items[v])->items[0].name, first);
        }
        mhub_chunk_list_free(&l);
    }
    mhub_provider_free(p);
    ck_assert_int_eq(mhub_provide_args_chunk_index(NULL), -1);
}
END_TEST

/* get_model's model_type reaches every chunk it builds; provide() and a
 * bare chunk are one stack. */
START_TEST(test_chunk_model_type)
{
    mhub_provider *p = mlp_provider(4);
    mhub_chunk *c = NULL;
    CK_OK(mhub_provider_provide(p, true, true, -1, &c));
    ck_assert_int_eq(mhub_chunk_model_type(c), MHUB_MODEL_ENCODER_OR_DECODER);
    mhub_chunk_free(c);

    mhub_param_list *pl = calloc(1, sizeof *pl);
    ck_assert_ptr_nonnull(pl);
    static const mhub_chunk_ops ops = {.params = toy_params, .free = toy_free};
    CK_OK(mhub_chunk_create("bare", pl, &ops, &c));
    ck_assert_int_eq(mhub_chunk_model_type(c), MHUB_MODEL_ENCODER_OR_DECODER);
    mhub_chunk_free(c);

    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    o.wrap_with_ddp = false;
    o.log = fopen("/dev/null", "w");
    const mhub_model_type types[] = {MHUB_MODEL_ENCODER_OR_DECODER,
                                     MHUB_MODEL_ENCODER_AND_DECODER};
    mlp_cfg(p)->base.pipeline_model_parallel_size = 2;
    for (int t = 0; t < 2; t++) {
        o.model_type = types[t];
        mhub_chunk_list l;
        CK_OK(mhub_get_model(p, &o, &l));
        ck_assert_int_eq(l.count, 1);
        ck_assert_int_eq(mhub_chunk_model_type(l.items[0]), types[t]);
        mhub_chunk_list_free(&l);
    }
    /* an encoder-and-decoder model has no virtual pipeline */
    mlp_cfg(p)->base.virtual_pipeline_model_parallel_size = 2;
    mhub_chunk_list l;
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_get_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "virtual_pipeline_model_parallel_size = 2"));
    ck_assert_int_eq(l.count, 0);
    o.model_type = MHUB_MODEL_ENCODER_OR_DECODER;
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert_int_eq(l.count, 2);
    for (int v = 0; v < 2; v++)
        ck_assert_int_eq(mhub_chunk_model_type(l.items[v]), MHUB_MODEL_ENCODER_OR_DECODER);
    mhub_chunk_list_free(&l);
    fclose(o.log);
    mhub_provider_free(p);
    ck_assert_int_eq(mhub_chunk_model_type(NULL), MHUB_MODEL_ENCODER_OR_DECODER);
}
END_TEST


START_TEST(test_provide_flags_and_layers)
{
    mhub_provider *p = mlp_provider(4);
    mhub_chunk *c;
    CK_OK(mhub_provider_provide(p, true, true, -1, &c));
    ck_assert(mhub_chunk_pre_process(c) && mhub_chunk_post_process(c));
    ck_assert_int_eq(mhub_chunk_vp_stage(c), -1);
    mhub_param_list *pl = mhub_chunk_params(c);
    ck_assert_int_eq(pl->count, 8);
    ck_assert_str_eq(pl->items[0].name, "layers.0.weight");
    mhub_mlp_config whole = mlp_cfg(p)->mlp;
    ck_assert_int_eq(mhub_chunk_numel(c), mhub_mlp_param_count(&whole));
    char d[128];
    mhub_chunk_describe(c, d, sizeof d);
    ck_assert_str_eq(d, "linear layers 0-3 of 4, input layer, output layer + loss");
    mhub_chunk_free(c);
    /* a single stage holds the input layer: pre_process false contradicts it */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_provide(p, false, true, -1, &c));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "pre_process=false"));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_provide(p, true, true, 3, &c));
    /* a pipelined config: provide() builds stage 0 before the groups exist */
    mlp_cfg(p)->base.pipeline_model_parallel_size = 2;
    CK_OK(mhub_provider_provide(p, true, false, -1, &c));
    ck_assert_str_eq(mhub_chunk_params(c)->items[0].name, "layers.0.weight");
    ck_assert_int_eq(mhub_chunk_params(c)->count, 4);
    mhub_chunk_free(c);
    /* more chunks than layers */
    mlp_cfg(p)->base.pipeline_model_parallel_size = 8;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_provide(p, true, false, -1, &c));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "fewer than"));
    mhub_provider_free(p);
}
END_TEST

/* Every stage of every (pp, vp): flags as the reference sets them, layers
 * cut in order, the chunks together hold the whole model exactly once. */
START_TEST(test_meta_stages_cover_the_model)
{
    mhub_provider *p = mlp_provider(9);
    mhub_mlp_config whole = mlp_cfg(p)->mlp;
    int64_t total = mhub_mlp_param_count(&whole);
    const int pps[] = {1, 2, 4}, vps[] = {0, 1, 2};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 3; b++) {
            int pp = pps[a], vp = vps[b];
            mlp_cfg(p)->base.pipeline_model_parallel_size = pp;
            mlp_cfg(p)->base.virtual_pipeline_model_parallel_size = vp;
            mhub_chunk_list l;
            if (pp == 1 && vp > 0) {
                CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_meta_stage(p, 0, &l));
                ck_assert_ptr_nonnull(strstr(mhub_last_error(),
                                             "virtual_pipeline_model_parallel_size"));
                continue;
            }
            int64_t sum = 0, next_layer = 0;
            int per_stage = pp > 1 && vp > 0 ? vp : 1;
            /* walk chunks in model order: vp stage outer, pipeline rank inner */
            for (int v = 0; v < per_stage; v++)
                for (int r = 0; r < pp; r++) {
                    CK_OK(mhub_provider_meta_stage(p, r, &l));
                    ck_assert_int_eq(l.count, per_stage);
                    mhub_chunk *c = l.items[v];
                    ck_assert(mhub_chunk_is_meta(c));
                    ck_assert_int_eq(mhub_chunk_vp_stage(c), pp > 1 && vp > 0 ? v : -1);
                    ck_assert(mhub_chunk_pre_process(c) == (v == 0 && r == 0));
                    ck_assert(mhub_chunk_post_process(c) == (v == per_stage - 1 && r == pp - 1));
                    mhub_param_list *pl = mhub_chunk_params(c);
                    char first[MHUB_NAME_MAX];
                    snprintf(first, sizeof first, "layers.%lld.weight", (long long)next_layer);
                    ck_assert_str_eq(pl->items[0].name, first);
                    for (int k = 0; k < pl->count; k++)
                        ck_assert_ptr_null(pl->items[k].value.data);
                    next_layer += pl->count / 2;
                    sum += mhub_chunk_numel(c);
                    mhub_chunk_list_free(&l);
                }
            ck_assert_int_eq(next_layer, 9);
            ck_assert_int_eq(sum, total);
        }
    mhub_provider_free(p);
}
END_TEST

/* Under mpiexec: the chunks get_model builds on this rank for every
 * pipeline size the world allows. */
START_TEST(test_get_model_pipeline_flags)
{
    mhub_provider *p = mlp_provider(9);
    const int pps[] = {1, 2, 4}, vps[] = {0, 2};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 2; b++) {
            int pp = pps[a], vp = vps[b];
            if (world->size % pp != 0 || (pp == 1 && vp > 0))
                continue;
            mlp_cfg(p)->base.pipeline_model_parallel_size = pp;
            mlp_cfg(p)->base.virtual_pipeline_model_parallel_size = vp;
            CK_OK(mhub_provider_initialize_model_parallel(p, world, NULL, NULL));
            int pr = mhub_parallel_rank(mhub_provider_parallel(p), MHUB_GROUP_PP);
            mhub_get_model_options o;
            mhub_get_model_options_init(&o);
            o.wrap_with_ddp = false;
            o.log = fopen("/dev/null", "w");
            mhub_chunk_list l;
            CK_OK(mhub_get_model(p, &o, &l));
            fclose(o.log);
            int per_stage = vp > 0 ? vp : 1;
            ck_assert_int_eq(l.count, per_stage);
            for (int v = 0; v < l.count; v++) {
                ck_assert(mhub_chunk_pre_process(l.items[v]) == (v == 0 && pr == 0));
                ck_assert(mhub_chunk_post_process(l.items[v]) ==
                          (v == per_stage - 1 && pr == pp - 1));
                ck_assert_ptr_null(mhub_chunk_engine(l.items[v]));
            }
            /* summed over one pipeline group, the chunks are the model */
            float mine = (float)mhub_chunk_list_numel(&l), all = 0;
            mhub_comm *ppc = mhub_parallel_comm(mhub_provider_parallel(p), MHUB_GROUP_PP);
            CK_OK(mhub_comm_allreduce(ppc, &mine, &all, 1, MHUB_F32, MHUB_SUM));
            mhub_mlp_config whole = mlp_cfg(p)->mlp;
            ck_assert_int_eq((int64_t)all, mhub_mlp_param_count(&whole));
            mhub_chunk_list_free(&l);
        }
    mhub_provider_free(p);
}
END_TEST

/* ---- hooks ---------------------------------------------------------------------- */

typedef struct hook_log {
    char order[32];
} hook_log;

static mhub_status record(void *user, const char *tag)
{
    hook_log *log = user;
    strncat(log->order, tag, sizeof log->order - strlen(log->order) - 1);
    return MHUB_OK;
}
static mhub_status hook_a(void *user, mhub_chunk_list *c) { (void)c; return record(user, "a"); }
static mhub_status hook_b(void *user, mhub_chunk_list *c) { (void)c; return record(user, "b"); }
static mhub_status hook_c(void *user, mhub_chunk_list *c) { (void)c; return record(user, "c"); }
static mhub_status hook_post(void *user, mhub_chunk_list *c)
{
    /* post-wrap hooks see wrapped chunks */
    for (int i = 0; i < c->count; i++)
        if (!mhub_chunk_engine(c->items[i]))
            return MHUB_ERROR(MHUB_ERR_STATE, "chunk %d is not wrapped", i);
    return record(user, "P");
}
static mhub_status hook_fails(void *user, mhub_chunk_list *c)
{
    (void)user;
    (void)c;
    return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "this hook refuses");
}
static mhub_status hook_empties(void *user, mhub_chunk_list *c)
{
    (void)user;
    mhub_chunk_list_free(c);
    return MHUB_OK;
}
/* freezing, the reference's example use: no gradient for layer 0 */
static mhub_status hook_freeze_first(void *user, mhub_chunk_list *c)
{
    mhub_param_list *pl = mhub_chunk_params(c->items[0]);
    pl->items[0].requires_grad = false;
    return record(user, "f");
}

START_TEST(test_hooks_order_and_override)
{
    mhub_provider *p = mlp_provider(3);
    ck_assert_ptr_null(mhub_provider_pre_wrap_hook(p));
    ck_assert_ptr_null(mhub_provider_post_wrap_hook(p));
    hook_log log = {""};
    CK_OK(mhub_provider_register_pre_wrap_hook(p, "a", hook_a, &log, false));
    CK_OK(mhub_provider_register_pre_wrap_hook(p, "b", hook_b, &log, false));
    CK_OK(mhub_provider_register_pre_wrap_hook(p, "c", hook_c, &log, true));
    CK_OK(mhub_provider_register_post_wrap_hook(p, "post", hook_post, &log, false));
    const mhub_hook_chain *pre = mhub_provider_pre_wrap_hook(p);
    ck_assert_int_eq(mhub_hook_chain_length(pre), 3);
    ck_assert_str_eq(mhub_hook_chain_at(pre, 0)->name, "c");
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_register_pre_wrap_hook(p, "x", NULL, NULL, 0));

    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    o.ddp_config = &dc;
    o.world = world;
    o.log = fopen("/dev/null", "w");
    mhub_chunk_list l;
    mhub_chunk *c0;
    CK_OK(mhub_provide_distributed_model(p, &o, &l));
    ck_assert_str_eq(log.order, "cabP");
    mhub_chunk_list_free(&l);

    /* the meta model runs the pre-wrap hooks only: nothing is wrapped */
    log.order[0] = '\0';
    CK_OK(mhub_provider_meta_model(p, &l));
    ck_assert_str_eq(log.order, "cab");
    mhub_chunk_list_free(&l);
    /* the composed hook runs the live list on its own */
    log.order[0] = '\0';
    CK_OK(mhub_provider_provide(p, true, true, -1, &c0));
    l = (mhub_chunk_list){0};
    CK_OK(mhub_chunk_list_append(&l, c0));
    CK_OK(mhub_hook_chain_run(mhub_provider_pre_wrap_hook(p), &l));
    ck_assert_str_eq(log.order, "cab");
    mhub_chunk_list_free(&l);

    /* call-time hooks replace the registered ones for this call only */
    log.order[0] = '\0';
    const mhub_wrap_hook once[] = {{"b", hook_b, &log}, {"freeze", hook_freeze_first, &log}};
    o.pre_wrap_hooks = once;
    o.num_pre_wrap_hooks = 2;
    CK_OK(mhub_provide_distributed_model(p, &o, &l));
    ck_assert_str_eq(log.order, "bfP");
    mhub_chunk_list_free(&l);
    ck_assert_int_eq(mhub_hook_chain_length(mhub_provider_pre_wrap_hook(p)), 3);
    o.pre_wrap_hooks = NULL;
    o.num_pre_wrap_hooks = 0;
    log.order[0] = '\0';
    CK_OK(mhub_provide_distributed_model(p, &o, &l));
    ck_assert_str_eq(log.order, "cabP");
    mhub_chunk_list_free(&l);

    /* get_model itself runs only call-time pre hooks, never post hooks */
    log.order[0] = '\0';
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert_str_eq(log.order, "");
    mhub_chunk_list_free(&l);

    /* a failing hook aborts cleanly and names itself */
    const mhub_wrap_hook bad[] = {{"a", hook_a, &log}, {"refuser", hook_fails, NULL}};
    o.pre_wrap_hooks = bad;
    o.num_pre_wrap_hooks = 2;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provide_distributed_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "pre-wrap hook 'refuser' failed"));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "this hook refuses"));
    ck_assert_int_eq(l.count, 0);
    const mhub_wrap_hook empties[] = {{"emptier", hook_empties, NULL}};
    o.pre_wrap_hooks = empties;
    o.num_pre_wrap_hooks = 1;
    CK_FAILS(MHUB_ERR_STATE, mhub_provide_distributed_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "'emptier' left no model chunks"));
    o.pre_wrap_hooks = NULL;
    o.num_pre_wrap_hooks = 0;
    const mhub_wrap_hook post_bad[] = {{"late", hook_fails, NULL}};
    o.post_wrap_hooks = post_bad;
    o.num_post_wrap_hooks = 1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provide_distributed_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "post-wrap hook 'late'"));
    ck_assert_int_eq(l.count, 0);
    fclose(o.log);
    mhub_provider_free(p);
}
END_TEST

static mhub_status hook_d(void *user, mhub_chunk_list *c) { (void)c; return record(user, "d"); }
/* fails without leaving a message of its own */
static mhub_status hook_fails_quietly(void *user, mhub_chunk_list *c)
{
    (void)user;
    (void)c;
    return MHUB_ERR_STATE;
}
/* hooks edit the list in place: this one drops the last chunk */
static mhub_status hook_drop_last(void *user, mhub_chunk_list *c)
{
    mhub_chunk_free(mhub_chunk_list_remove(c, c->count - 1));
    return record(user, "-");
}

/* Two whole chunks of `p` in a new list. */
static mhub_chunk_list two_chunks(mhub_provider *p)
{
    mhub_chunk_list l = {0};
    for (int i = 0; i < 2; i++) {
        mhub_chunk *c = NULL;
        CK_OK(mhub_provider_provide(p, true, true, -1, &c));
        CK_OK(mhub_chunk_list_append(&l, c));
    }
    return l;
}

/* mhub_wrap_hooks_run on its own: in array order, the list edited in
 * place, and the first failure stops the run, named with its kind. */
START_TEST(test_wrap_hooks_run)
{
    mhub_provider *p = mlp_provider(2);
    mhub_chunk_list l = two_chunks(p);
    hook_log log = {""};
    const mhub_wrap_hook abc[] = {{"a", hook_a, &log}, {"b", hook_b, &log}, {"c", hook_c, &log}};
    CK_OK(mhub_wrap_hooks_run(abc, 3, "pre-wrap", &l));
    ck_assert_str_eq(log.order, "abc");
    const mhub_wrap_hook ca[] = {{"c", hook_c, &log}, {"a", hook_a, &log}};
    log.order[0] = '\0';
    CK_OK(mhub_wrap_hooks_run(ca, 2, NULL, &l));
    ck_assert_str_eq(log.order, "ca");
    log.order[0] = '\0';
    CK_OK(mhub_wrap_hooks_run(NULL, 0, "pre-wrap", &l)); /* no hooks: nothing to do */
    ck_assert_str_eq(log.order, "");
    ck_assert_int_eq(l.count, 2);

    /* a failure stops the run: the hooks after it never run */
    const mhub_wrap_hook stops[] = {{"a", hook_a, &log}, {"refuser", hook_fails, NULL},
                                    {"b", hook_b, &log}};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_wrap_hooks_run(stops, 3, "adapter", &l));
    ck_assert_str_eq(log.order, "a");
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "adapter hook 'refuser' failed"));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "this hook refuses"));
    ck_assert_int_eq(l.count, 2); /* the caller's list, untouched by the failure */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_wrap_hooks_run(stops + 1, 1, NULL, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "wrap hook 'refuser' failed"));
    /* a hook that says nothing is named with its status */
    const mhub_wrap_hook quiet[] = {{NULL, hook_fails_quietly, NULL}};
    CK_FAILS(MHUB_ERR_STATE, mhub_wrap_hooks_run(quiet, 1, "post-wrap", &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "post-wrap hook '(unnamed)' failed"));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), mhub_status_name(MHUB_ERR_STATE)));
    /* a hook without a function stops the run where it stands */
    log.order[0] = '\0';
    const mhub_wrap_hook hollow[] = {{"a", hook_a, &log}, {"hollow", NULL, NULL},
                                     {"b", hook_b, &log}};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_wrap_hooks_run(hollow, 3, "pre-wrap", &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "'hollow' has no function"));
    ck_assert_str_eq(log.order, "a");
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_wrap_hooks_run(NULL, 1, "pre-wrap", &l));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_wrap_hooks_run(abc, 3, "pre-wrap", NULL));

    /* the list a hook leaves is the list the next one sees */
    log.order[0] = '\0';
    const mhub_wrap_hook drop[] = {{"drop", hook_drop_last, &log}, {"a", hook_a, &log},
                                   {"drop again", hook_drop_last, &log}, {"b", hook_b, &log}};
    CK_FAILS(MHUB_ERR_STATE, mhub_wrap_hooks_run(drop, 4, "pre-wrap", &l));
    ck_assert_str_eq(log.order, "-a-");
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "pre-wrap hook 'drop again' left no model "
                                                    "chunks"));
    ck_assert_int_eq(l.count, 0);
    mhub_chunk_list_free(&l);
    l = two_chunks(p);
    log.order[0] = '\0';
    CK_OK(mhub_wrap_hooks_run(drop, 2, "pre-wrap", &l));
    ck_assert_str_eq(log.order, "-a");
    ck_assert_int_eq(l.count, 1);
    mhub_chunk_list_free(&l);
    mhub_provider_free(p);
}
END_TEST

/* Registration: prepend puts a hook before every hook registered so
 * far, append after; the chain copies the names; running the chain, or
 * its hooks as an array, keeps that order. */
START_TEST(test_hook_prepend_order)
{
    mhub_provider *p = mlp_provider(2);
    hook_log log = {""};
    char name[16] = "a";
    CK_OK(mhub_provider_register_post_wrap_hook(p, name, hook_a, &log, false));
    strcpy(name, "b");
    CK_OK(mhub_provider_register_post_wrap_hook(p, name, hook_b, &log, true));
    strcpy(name, "c");
    CK_OK(mhub_provider_register_post_wrap_hook(p, name, hook_c, &log, true));
    strcpy(name, "d");
    CK_OK(mhub_provider_register_post_wrap_hook(p, name, hook_d, &log, false));
    strcpy(name, "gone");
    const mhub_hook_chain *chain = mhub_provider_post_wrap_hook(p);
    ck_assert_int_eq(mhub_hook_chain_length(chain), 4);
    const char *want[] = {"c", "b", "a", "d"};
    mhub_wrap_hook copy[4];
    for (int i = 0; i < 4; i++) {
        ck_assert_str_eq(mhub_hook_chain_at(chain, i)->name, want[i]);
        copy[i] = *mhub_hook_chain_at(chain, i);
    }
    ck_assert_ptr_null(mhub_hook_chain_at(chain, 4));
    ck_assert_ptr_null(mhub_provider_pre_wrap_hook(p)); /* the other kind is separate */

    mhub_chunk_list l = two_chunks(p);
    CK_OK(mhub_hook_chain_run(chain, &l));
    ck_assert_str_eq(log.order, "cbad");
    log.order[0] = '\0';
    CK_OK(mhub_wrap_hooks_run(copy, 4, "post-wrap", &l));
    ck_assert_str_eq(log.order, "cbad");
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_hook_chain_run(NULL, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "none registered"));
    mhub_chunk_list_free(&l);
    mhub_provider_free(p);
}
END_TEST

/* ---- get_model options ------------------------------------------------------------ */

START_TEST(test_get_model_option_errors)
{
    mhub_provider *p = mlp_provider(3);
    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    ck_assert(o.wrap_with_ddp && !o.data_parallel_random_init && !o.use_fsdp);
    ck_assert_ptr_null(o.log);
    o.log = fopen("/dev/null", "w");
    ck_assert_int_eq(o.fp16, MHUB_UNSET);
    mhub_chunk_list l;
    /* wrap without a ddp config */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_get_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "ddp_config is required"));
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    o.ddp_config = &dc;
    /* wrap without process groups */
    CK_FAILS(MHUB_ERR_STATE, mhub_get_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "initialize_model_parallel"));
    CK_OK(mhub_provider_initialize_model_parallel(p, world, NULL, NULL));
    o.fp16 = o.bf16 = MHUB_TRUE;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_get_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "fp16 and bf16"));
    o.fp16 = 7;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_get_model(p, &o, &l));
    o.fp16 = o.bf16 = MHUB_UNSET;
    o.init_model_with_meta_device = MHUB_TRUE;
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_get_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "meta"));
    o.init_model_with_meta_device = MHUB_UNSET;
    mhub_ddp_config bad = dc;
    bad.bucket_size = 0;
    o.ddp_config = &bad;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_get_model(p, &o, &l));
    o.ddp_config = &dc;
    /* a bad config set through config_mut is caught at get_model */
    mlp_cfg(p)->base.pipeline_model_parallel_size = 0;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_get_model(p, &o, &l));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "pipeline_model_parallel_size"));
    ck_assert_int_eq(l.count, 0);
    fclose(o.log);
    mhub_provider_free(p);
}
END_TEST

START_TEST(test_get_model_precision_and_tristates)
{
    mhub_provider *p = mlp_provider(3);
    CK_OK(mhub_provider_initialize_model_parallel(p, world, NULL, NULL));
    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    o.wrap_with_ddp = false;
    o.log = fopen("/dev/null", "w");
    mhub_chunk_list l;
    o.bf16 = MHUB_TRUE;
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert_int_eq(mhub_chunk_params(l.items[0])->items[0].value.dtype, MHUB_BF16);
    mhub_chunk_list_free(&l);
    /* the provider's own config is untouched */
    ck_assert(!mhub_provider_config_of(p)->bf16);
    ck_assert_int_eq(mhub_provider_config_of(p)->params_dtype, MHUB_F32);
    /* enabling fp16 clears a provider-level bf16 */
    mlp_cfg(p)->base.bf16 = true;
    o.bf16 = MHUB_UNSET;
    o.fp16 = MHUB_TRUE;
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert_int_eq(mhub_chunk_params(l.items[0])->items[0].value.dtype, MHUB_F16);
    mhub_chunk_list_free(&l);
    /* unset keeps the provider's bf16 */
    o.fp16 = MHUB_UNSET;
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert_int_eq(mhub_chunk_params(l.items[0])->items[0].value.dtype, MHUB_BF16);
    mhub_chunk_list_free(&l);
    /* bf16 false overrides it back to f32 */
    o.bf16 = MHUB_FALSE;
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert_int_eq(mhub_chunk_params(l.items[0])->items[0].value.dtype, MHUB_F32);
    mhub_chunk_list_free(&l);
    mlp_cfg(p)->base.bf16 = false;
    o.bf16 = MHUB_UNSET;
    /* a provider-level meta flag: unset honours it, false overrides it */
    mlp_cfg(p)->base.init_model_with_meta_device = true;
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert(mhub_chunk_is_meta(l.items[0]));
    mhub_chunk_list_free(&l);
    o.init_model_with_meta_device = MHUB_FALSE;
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert(!mhub_chunk_is_meta(l.items[0]));
    ck_assert_ptr_nonnull(mhub_chunk_params(l.items[0])->items[0].value.data);
    mhub_chunk_list_free(&l);
    /* a provider-level cpu init flag survives an unset option */
    mlp_cfg(p)->base.init_model_with_meta_device = false;
    mlp_cfg(p)->base.use_cpu_initialization = true;
    CK_OK(mhub_get_model(p, &o, &l));
    ck_assert(!mhub_chunk_is_meta(l.items[0]));
    mhub_chunk_list_free(&l);
    ck_assert(mhub_provider_config_of(p)->use_cpu_initialization);
    fclose(o.log);
    mhub_provider_free(p);
}
END_TEST

/* The count line: on dp rank 0 only, in Megatron's words. */
START_TEST(test_get_model_prints_param_count)
{
    mhub_provider *p = mlp_provider(3);
    CK_OK(mhub_provider_initialize_model_parallel(p, world, NULL, NULL));
    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    o.wrap_with_ddp = false;
    char buf[512] = "";
    o.log = fmemopen(buf, sizeof buf - 1, "w");
    mhub_chunk_list l;
    CK_OK(mhub_get_model(p, &o, &l));
    fclose(o.log);
    mhub_mlp_config whole = mlp_cfg(p)->mlp;
    char want[160];
    snprintf(want, sizeof want,
             " > number of parameters on (tensor, pipeline) model parallel rank (0, 0): %lld\n",
             (long long)mhub_mlp_param_count(&whole));
    if (world->rank == 0)
        ck_assert_str_eq(buf, want);
    else
        ck_assert_str_eq(buf, "");
    mhub_chunk_list_free(&l);
    mhub_provider_free(p);
}
END_TEST

/* ---- wrapping and training ---------------------------------------------------------- */

static void param_checksum(mhub_chunk_list *l, double *out)
{
    double s = 0;
    for (int i = 0; i < l->count; i++) {
        mhub_param_list *pl = mhub_chunk_params(l->items[i]);
        for (int k = 0; k < pl->count; k++) {
            const float *v = pl->items[k].value.data;
            for (int64_t j = 0; j < pl->items[k].value.numel; j++)
                s += v[j] * (double)(j + 1 + 7 * k);
        }
    }
    *out = s;
}

/* Same value on every rank of `c`? */
static bool agree(mhub_comm *c, double v)
{
    float f = (float)v, lo = 0, hi = 0;
    CK_OK(mhub_comm_allreduce(c, &f, &hi, 1, MHUB_F32, MHUB_MAX));
    float neg = -f;
    CK_OK(mhub_comm_allreduce(c, &neg, &lo, 1, MHUB_F32, MHUB_MAX));
    return hi == -lo;
}

START_TEST(test_data_parallel_random_init)
{
    mhub_provider *p = mlp_provider(3);
    CK_OK(mhub_provider_initialize_model_parallel(p, world, NULL, NULL));
    mhub_provider_seeds s0, s1;
    CK_OK(mhub_provider_seeds_of(p, false, &s0));
    CK_OK(mhub_provider_seeds_of(p, true, &s1));
    ck_assert_uint_eq(s0.base, 1234);
    ck_assert_uint_eq(s0.tensor_parallel, 1234 + 2718);
    ck_assert_uint_eq(s0.expert_parallel, 1234 + 1024);
    ck_assert_uint_eq(s1.base, 1234 + 10 * (uint64_t)world->rank);
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    o.ddp_config = &dc;
    o.log = fopen("/dev/null", "w");
    o.data_parallel_random_init = true;
    mhub_chunk_list l;
    double sum;
    /* unwrapped: no broadcast, so ranks keep their own draws */
    o.wrap_with_ddp = false;
    CK_OK(mhub_get_model(p, &o, &l));
    param_checksum(&l, &sum);
    ck_assert(agree(world, sum) == (world->size == 1));
    mhub_chunk_list_free(&l);
    /* wrapped: rank 0's parameters everywhere */
    o.wrap_with_ddp = true;
    CK_OK(mhub_get_model(p, &o, &l));
    param_checksum(&l, &sum);
    ck_assert(agree(world, sum));
    mhub_chunk_list_free(&l);
    /* without dp random init every rank draws the same values */
    o.data_parallel_random_init = false;
    o.wrap_with_ddp = false;
    CK_OK(mhub_get_model(p, &o, &l));
    param_checksum(&l, &sum);
    ck_assert(agree(world, sum));
    mhub_chunk_list_free(&l);
    /* an explicit seed replaces the config's */
    int64_t seed = 99;
    CK_OK(mhub_provider_initialize_model_parallel(p, world, &seed, NULL));
    CK_OK(mhub_provider_seeds_of(p, false, &s0));
    ck_assert_uint_eq(s0.base, 99);
    seed = -1;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_initialize_model_parallel(p, world, &seed, NULL));
    fclose(o.log);
    mhub_provider_free(p);
}
END_TEST

/* The pipeline offset: stage p draws from seed + 100 p. */
START_TEST(test_seed_offset_by_pipeline_rank)
{
    if (world->size % 2 != 0)
        return;
    mhub_provider *p = mlp_provider(4);
    mlp_cfg(p)->base.pipeline_model_parallel_size = 2;
    CK_OK(mhub_provider_initialize_model_parallel(p, world, NULL, NULL));
    int pr = mhub_parallel_rank(mhub_provider_parallel(p), MHUB_GROUP_PP);
    mhub_provider_seeds s;
    CK_OK(mhub_provider_seeds_of(p, false, &s));
    ck_assert_uint_eq(s.base, 1234 + 100 * (uint64_t)pr);
    /* stage 1's meta stage, built from any rank, reports the same seed
     * through its values once materialised: compare with a direct build */
    mhub_get_model_options o;
    mhub_get_model_options_init(&o);
    o.wrap_with_ddp = false;
    o.log = fopen("/dev/null", "w");
    mhub_chunk_list l;
    CK_OK(mhub_get_model(p, &o, &l));
    mhub_mlp *m = mhub_chunk_model(l.items[0]);
    mhub_mlp *ref;
    mhub_mlp_config whole = mlp_cfg(p)->mlp;
    CK_OK(mhub_mlp_create_chunk(&whole, mhub_mlp_first_layer(m), mhub_mlp_num_units(m), be, 1,
                                1234 + 100 * (uint64_t)pr, &ref));
    mhub_param_list *a = mhub_mlp_params(m), *b = mhub_mlp_params(ref);
    for (int k = 0; k < a->count; k++)
        ck_assert_mem_eq(a->items[k].value.data, b->items[k].value.data,
                         (size_t)a->items[k].value.numel * sizeof(float));
    mhub_mlp_free(ref);
    mhub_chunk_list_free(&l);
    fclose(o.log);
    mhub_provider_free(p);
}
END_TEST

/* get_model's engines train like engines wrapped by hand, for each kind;
 * the caller's ddp config is not modified. */
START_TEST(test_get_model_wraps_and_trains)
{
    const mhub_dp_engine_kind kinds[] = {MHUB_DP_DDP, MHUB_DP_DISTOPT, MHUB_DP_FSDP};
    for (size_t k = 0; k < 3; k++) {
        mhub_provider *p = mlp_provider(3);
        CK_OK(mhub_provider_initialize_model_parallel(p, world, NULL, NULL));
        mhub_ddp_config dc;
        memset(&dc, 0, sizeof dc); /* defined padding: the struct is compared as bytes */
        mhub_ddp_config_init(&dc);
        dc.overlap_grad_reduce = true;
        dc.deterministic = true;
        dc.use_distributed_optimizer = kinds[k] == MHUB_DP_DISTOPT;
        mhub_ddp_config before = dc;
        mhub_optim_config oc;
        mhub_optim_config_init(&oc, MHUB_OPTIM_SGD);
        oc.lr = 0.1f;
        mhub_get_model_options o;
        mhub_get_model_options_init(&o);
        o.ddp_config = &dc;
        o.use_fsdp = kinds[k] == MHUB_DP_FSDP;
        o.optim = &oc;
        o.log = fopen("/dev/null", "w");
        o.overlap_param_gather_with_optimizer_step = true;
        mhub_chunk_list l;
        CK_OK(mhub_get_model(p, &o, &l));
        fclose(o.log);
        ck_assert_mem_eq(&dc, &before, sizeof dc);
        mhub_dp_engine *e = mhub_chunk_engine(l.items[0]);
        ck_assert_ptr_nonnull(e);
        ck_assert_int_eq(mhub_dp_engine_kind_of(e), kinds[k]);
        mhub_mlp *m = mhub_chunk_model(l.items[0]);
        /* two deterministic steps of 8 samples in 8 shards */
        mhub_synthetic_task task;
        CK_OK(mhub_synthetic_init(&task, 5, 3, 4));
        float x[8 * 5];
        int32_t y[8];
        int shards = 8 / world->size;
        for (int s = 0; s < 2; s++) {
            CK_OK(mhub_dp_engine_zero_grad(e));
            for (int j = 0; j < shards; j++) {
                int64_t shard = mhub_dp_engine_shard_index(e, world->rank, world->size, j, shards);
                CK_OK(mhub_synthetic_batch(&task, (uint64_t)(s * 8 + shard), 1, x, y));
                CK_OK(mhub_dp_engine_micro_begin(e, j, shards));
                CK_OK(mhub_mlp_forward(m, x, y, 1, NULL));
                CK_OK(mhub_mlp_backward(m, 1.0f / 8));
                CK_OK(mhub_dp_engine_micro_end(e, j, shards));
            }
            CK_OK(mhub_dp_engine_finish_grad_sync(e));
            CK_OK(mhub_dp_engine_step(e));
        }
        mhub_synthetic_free(&task);
        char hex[65];
        CK_OK(mhub_dp_engine_digest(e, hex));
        /* every kind and every world size reach the same bits */
        static char first[65];
        if (k == 0)
            memcpy(first, hex, sizeof hex);
        else
            ck_assert_str_eq(hex, first);
        mhub_chunk_list_free(&l);
        mhub_provider_free(p);
    }
}
END_TEST

/* The meta model costs no tensor memory, however large the config. */
START_TEST(test_meta_model_allocates_nothing)
{
    mhub_provider *p = mlp_provider(3);
    mhub_mlp_provider_config *c = mlp_cfg(p);
    c->mlp.inputs = 100000;
    c->mlp.num_hidden = 16;
    for (int i = 0; i < 16; i++)
        c->mlp.hidden[i] = 100000;
    c->mlp.classes = 1000;
    size_t before, peak, after;
    CK_OK(be->ops->reset_peak(be));
    CK_OK(be->ops->memory_usage(be, &before, &peak));
    mhub_chunk_list l;
    CK_OK(mhub_provider_meta_model(p, &l));
    CK_OK(be->ops->memory_usage(be, &after, &peak));
    ck_assert_uint_eq(after, before);
    ck_assert_uint_eq(peak, before);
    ck_assert(mhub_chunk_is_meta(l.items[0]));
    ck_assert_int_eq(mhub_chunk_list_numel(&l), mhub_mlp_param_count(&c->mlp));
    ck_assert_int_gt(mhub_chunk_list_numel(&l), INT64_C(100000000000));
    mhub_chunk_list_free(&l);
    mhub_provider_free(p);
}
END_TEST

/* The whole model's count: the chunks' sum for the MLP, the tied
 * embedding once for a GPT cut into stages (its last stage holds a copy). */
START_TEST(test_total_params)
{
    mhub_provider *p = mlp_provider(5);
    mlp_cfg(p)->base.pipeline_model_parallel_size = 2;
    int64_t n = 0;
    CK_OK(mhub_provider_total_params(p, &n));
    mhub_mlp_config whole = mlp_cfg(p)->mlp;
    ck_assert_int_eq(n, mhub_mlp_param_count(&whole));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_provider_total_params(NULL, &n));
    mhub_provider_free(p);

    CK_OK(mhub_provider_create_default("gpt", &p));
    mhub_gpt_config *g = (mhub_gpt_config *)mhub_provider_config_mut(p);
    g->base.pipeline_model_parallel_size = 2;
    ck_assert(g->share_embeddings_and_output_weights);
    CK_OK(mhub_provider_total_params(p, &n));
    ck_assert_int_eq(n, mhub_gpt_total_params(g));
    int64_t chunks = 0;
    for (int s = 0; s < 2; s++) {
        mhub_chunk_list l;
        CK_OK(mhub_provider_meta_stage(p, s, &l));
        chunks += mhub_chunk_list_numel(&l);
        mhub_chunk_list_free(&l);
    }
    ck_assert_int_gt(chunks, n);
    mhub_provider_free(p);
}
END_TEST

START_TEST(test_chunk_list)
{
    mhub_provider *p = mlp_provider(2);
    mhub_chunk *a, *b, *c;
    CK_OK(mhub_provider_provide(p, true, true, -1, &a));
    CK_OK(mhub_provider_provide(p, true, true, -1, &b));
    CK_OK(mhub_provider_provide(p, true, true, -1, &c));
    mhub_chunk_list l = {0};
    CK_OK(mhub_chunk_list_append(&l, a));
    CK_OK(mhub_chunk_list_append(&l, b));
    CK_OK(mhub_chunk_list_insert(&l, 0, c));
    ck_assert_ptr_eq(l.items[0], c);
    ck_assert_ptr_eq(l.items[2], b);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_chunk_list_insert(&l, 5, a));
    ck_assert_ptr_eq(mhub_chunk_list_remove(&l, 1), a);
    ck_assert_ptr_null(mhub_chunk_list_remove(&l, 2));
    ck_assert_int_eq(l.count, 2);
    ck_assert_int_eq(mhub_chunk_list_numel(&l), 2 * mhub_chunk_numel(a));
    mhub_chunk_free(a);
    mhub_chunk_list_free(&l);
    ck_assert_int_eq(l.count, 0);
    mhub_chunk_list_free(&l);
    mhub_provider_free(p);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("provider");
    TCase *tc = tcase_create("provider");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_registry);
    tcase_add_test(tc, test_provider_type_of);
    tcase_add_test(tc, test_chunk_index);
    tcase_add_test(tc, test_chunk_model_type);
    tcase_add_test(tc, test_provide_flags_and_layers);
    tcase_add_test(tc, test_meta_stages_cover_the_model);
    tcase_add_test(tc, test_get_model_pipeline_flags);
    tcase_add_test(tc, test_hooks_order_and_override);
    tcase_add_test(tc, test_wrap_hooks_run);
    tcase_add_test(tc, test_hook_prepend_order);
    tcase_add_test(tc, test_get_model_option_errors);
    tcase_add_test(tc, test_get_model_precision_and_tristates);
    tcase_add_test(tc, test_get_model_prints_param_count);
    tcase_add_test(tc, test_data_parallel_random_init);
    tcase_add_test(tc, test_seed_offset_by_pipeline_rank);
    tcase_add_test(tc, test_get_model_wraps_and_trains);
    tcase_add_test(tc, test_meta_model_allocates_nothing);
    tcase_add_test(tc, test_total_params);
    tcase_add_test(tc, test_chunk_list);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return mhub_test_mpi_main(argc, argv, make_suite); }
