/* test_checkpoint.c - checkpoints through the C API under mpiexec -n 1,
 * 2, 4: a save and load round trip restores parameters and optimizer
 * state bitwise for every engine; the run settings (exact ones refused
 * when they differ, the others listed); a flipped data byte fails the
 * load on every rank; and a rank that fails alone (bad arguments, a
 * directory it cannot write) makes every rank return an error that names
 * it, with nothing left behind and the ranks still in step (a later save
 * works), where skipping a collective would hang. */
#include <string.h>
#include <unistd.h>

#include "testutil_mpi.h"

/* be, world, setup and teardown: the engine fixture of testutil_mpi.h */
MHUB_TEST_ENGINE_FIXTURE

static const mhub_mlp_config model_cfg = {
    .inputs = 10, .num_hidden = 2, .hidden = {13, 7}, .classes = 4};

enum { GLOBAL_BATCH = 16 };

/* A scratch directory every rank sees (rank 0 makes it). */
static char dir[256];
static mhub_provider_config *cfg;

static void checkpoint_setup(void)
{
    setup();
    if (world->rank == 0) {
        snprintf(dir, sizeof dir, "%s/mhub-ckpt-XXXXXX", P_tmpdir);
        ck_assert_ptr_nonnull(mkdtemp(dir));
    }
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    CK_OK(mhub_config_create(mhub_mlp_provider_type(), &cfg));
    CK_OK(mhub_config_set(cfg, "inputs", "10"));
    CK_OK(mhub_config_set(cfg, "hidden", "[13, 7]"));
    CK_OK(mhub_config_set(cfg, "classes", "4"));
}

static void checkpoint_teardown(void)
{
    MPI_Barrier(MPI_COMM_WORLD);
    if (world->rank == 0)
        mhub_test_remove_tree(dir);
    mhub_config_free(cfg);
    teardown();
}

/* A model (seeded) and an engine over it, hooks installed. */
typedef struct trainee {
    mhub_mlp *model;
    mhub_dp_engine *engine;
    mhub_synthetic_task task;
} trainee;

static void trainee_make(trainee *t, mhub_dp_engine_kind kind, uint64_t seed)
{
    CK_OK(mhub_mlp_create(&model_cfg, be, GLOBAL_BATCH, seed, &t->model));
    CK_OK(mhub_synthetic_init(&t->task, model_cfg.inputs, model_cfg.classes, 3));
    mhub_ddp_config dc;
    mhub_ddp_config_init(&dc);
    dc.bucket_size = 60;
    mhub_optim_config oc;
    mhub_optim_config_init(&oc, MHUB_OPTIM_ADAMW);
    oc.lr = 0.01f;
    CK_OK(mhub_dp_engine_create(kind, mhub_mlp_params(t->model), world, &dc, &oc, NULL,
                                &t->engine));
    mhub_grad_ready_fn fn;
    void *user;
    mhub_unit_hooks hooks;
    CK_OK(mhub_dp_engine_hooks(t->engine, &fn, &user, &hooks));
    mhub_mlp_set_grad_ready(t->model, fn, user);
    mhub_mlp_set_unit_hooks(t->model, &hooks);
}

static void trainee_free(trainee *t)
{
    mhub_mlp_set_grad_ready(t->model, NULL, NULL);
    mhub_mlp_set_unit_hooks(t->model, NULL);
    mhub_dp_engine_free(t->engine);
    mhub_mlp_free(t->model);
    mhub_synthetic_free(&t->task);
}

/* Optimizer step s on this rank's slice of the global batch. */
static void train_step(trainee *t, int s)
{
    int64_t rows = GLOBAL_BATCH / world->size;
    float x[GLOBAL_BATCH * 10];
    int32_t y[GLOBAL_BATCH];
    CK_OK(mhub_dp_engine_zero_grad(t->engine));
    CK_OK(mhub_synthetic_batch(&t->task, (uint64_t)(s * GLOBAL_BATCH + world->rank * rows),
                               rows, x, y));
    CK_OK(mhub_dp_engine_micro_begin(t->engine, 0, 1));
    CK_OK(mhub_mlp_forward(t->model, x, y, rows, NULL));
    CK_OK(mhub_mlp_backward(t->model, 1.0f / (float)rows));
    CK_OK(mhub_dp_engine_micro_end(t->engine, 0, 1));
    CK_OK(mhub_dp_engine_finish_grad_sync(t->engine));
    CK_OK(mhub_dp_engine_step(t->engine));
}

static void digest_of(trainee *t, char hex[65])
{
    CK_OK(mhub_dp_engine_sync_params(t->engine));
    CK_OK(mhub_dp_engine_digest(t->engine, hex));
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* The rank that fails alone in the tests below: the last one (on one
 * rank, the only one). */
static int lone_rank(void)
{
    return world->size - 1;
}

/* After a failure that only `culprit` caused: its own message on it,
 * the message marked with its rank on the others. */
static void assert_names_culprit(int culprit, const char *what)
{
    const char *msg = mhub_last_error();
    ck_assert_msg(strstr(msg, what), "rank %d: '%s' lacks '%s'", world->rank, msg, what);
    if (world->rank != culprit) {
        char mark[32];
        snprintf(mark, sizeof mark, "(from rank %d)", culprit);
        ck_assert_msg(strstr(msg, mark), "rank %d: '%s' lacks '%s'", world->rank, msg, mark);
    }
}

/* ---- round trip ---------------------------------------------------------------- */

/* Save after two steps, load into an engine over a differently seeded
 * model: the same parameters, and a third step on both gives the same
 * bits, so the optimizer state and step count came along too. */
START_TEST(test_round_trip_is_bitwise)
{
    static const mhub_dp_engine_kind kinds[] = {MHUB_DP_DDP, MHUB_DP_DISTOPT, MHUB_DP_FSDP};
    mhub_dp_engine_kind kind = kinds[_i];
    trainee a, b;
    trainee_make(&a, kind, 5);
    train_step(&a, 0);
    train_step(&a, 1);
    CK_OK(mhub_dp_engine_sync_params(a.engine));
    CK_OK(mhub_checkpoint_save(dir, a.engine, world, cfg, 2, 77, NULL, 0));
    trainee_make(&b, kind, 6);
    char want[65], got[65];
    digest_of(&a, want);
    digest_of(&b, got);
    ck_assert_str_ne(want, got);
    mhub_checkpoint_info info;
    memset(&info, 0x55, sizeof info);
    CK_OK(mhub_checkpoint_load(dir, b.engine, world, cfg, NULL, 0, &info));
    ck_assert_int_eq(info.step, 2);
    ck_assert_int_eq(info.optim_steps, 2);
    ck_assert_int_eq(info.seed, 77);
    ck_assert_int_eq(info.dp_size, world->size);
    ck_assert_str_eq(info.changed, "");
    digest_of(&b, got);
    ck_assert_str_eq(want, got);
    train_step(&a, 2);
    train_step(&b, 2);
    digest_of(&a, want);
    digest_of(&b, got);
    ck_assert_str_eq(want, got);
    trainee_free(&a);
    trainee_free(&b);
}
END_TEST

/* ---- run settings --------------------------------------------------------------- */

static const mhub_checkpoint_setting saved_run[] = {
    {"global_batch", "8", true}, {"data", "tokens.bin", true},
    {"steps", "10", false},      {"lr", "0.1", false}};

START_TEST(test_run_settings)
{
    trainee t;
    trainee_make(&t, MHUB_DP_DDP, 5);
    CK_OK(mhub_checkpoint_save(dir, t.engine, world, cfg, 0, 1, saved_run, 4));
    mhub_checkpoint_info info;
    CK_OK(mhub_checkpoint_load(dir, t.engine, world, cfg, saved_run, 4, &info));
    ck_assert_str_eq(info.changed, "");

    /* the schedule may change: listed, in the caller's order */
    const mhub_checkpoint_setting longer[] = {
        {"global_batch", "8", true}, {"lr", "0.2", false}, {"steps", "20", false},
        {"warmup", "3", false}};
    CK_OK(mhub_checkpoint_load(dir, t.engine, world, cfg, longer, 4, &info));
    ck_assert_str_eq(info.changed, "lr 0.1 -> 0.2; steps 10 -> 20; warmup (not recorded) -> 3");

    /* an exact one may not; nor may one the checkpoint does not record */
    const mhub_checkpoint_setting bigger[] = {{"steps", "20", false},
                                              {"global_batch", "16", true}};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_load(dir, t.engine, world, cfg, bigger, 2,
                                                        &info));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "manifest.json: global_batch was 8 in the "
                                                    "saved run and is 16 here"));
    const mhub_checkpoint_setting unknown[] = {{"micro_batch", "4", true}};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_load(dir, t.engine, world, cfg, unknown, 1,
                                                        NULL));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "micro_batch was not recorded in the saved "
                                                    "run and is 4 here"));

    /* a list longer than the room for it is cut with "..." */
    enum { MANY = 40 };
    mhub_checkpoint_setting many[MANY];
    char keys[MANY][16];
    for (int i = 0; i < MANY; i++) {
        snprintf(keys[i], sizeof keys[i], "setting_%02d", i);
        many[i] = (mhub_checkpoint_setting){keys[i], "a changed value", false};
    }
    CK_OK(mhub_checkpoint_load(dir, t.engine, world, cfg, many, MANY, &info));
    size_t len = strlen(info.changed);
    ck_assert_uint_eq(len, MHUB_CHECKPOINT_CHANGED_BYTES - 1);
    ck_assert_str_eq(info.changed + len - 3, "...");
    ck_assert_ptr_nonnull(strstr(info.changed, "setting_00 (not recorded) -> a changed value; "
                                               "setting_01 (not recorded)"));
    trainee_free(&t);
}
END_TEST

START_TEST(test_bad_settings)
{
    trainee t;
    trainee_make(&t, MHUB_DP_DDP, 5);
    const mhub_checkpoint_setting twice[] = {{"lr", "1", false}, {"lr", "2", false}};
    const mhub_checkpoint_setting no_key[] = {{NULL, "1", false}};
    const mhub_checkpoint_setting empty_key[] = {{"", "1", false}};
    const mhub_checkpoint_setting no_value[] = {{"lr", NULL, false}};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_save(dir, t.engine, world, cfg, 0, 1,
                                                        twice, 2));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "\"lr\" is given twice"));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_save(dir, t.engine, world, cfg, 0, 1,
                                                        no_key, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_save(dir, t.engine, world, cfg, 0, 1,
                                                        empty_key, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_save(dir, t.engine, world, cfg, 0, 1,
                                                        no_value, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_save(dir, t.engine, world, cfg, 0, 1,
                                                        NULL, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_save(dir, t.engine, world, cfg, 0, 1,
                                                        saved_run, -1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_save(dir, t.engine, world, cfg, -1, 1,
                                                        NULL, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_save(dir, t.engine, NULL, cfg, 0, 1,
                                                        NULL, 0));
    CK_OK(mhub_checkpoint_save(dir, t.engine, world, cfg, 0, 1, NULL, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_load(dir, t.engine, world, cfg, twice, 2,
                                                        NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_load(dir, t.engine, world, NULL, NULL, 0,
                                                        NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_load(NULL, t.engine, world, cfg, NULL, 0,
                                                        NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_load(dir, t.engine, NULL, cfg, NULL, 0,
                                                        NULL));
    trainee_free(&t);
}
END_TEST

/* ---- integrity -------------------------------------------------------------------- */

/* XOR one byte `past` bytes into the tensor data of a safetensors file
 * (after its 8-byte header length and the header). */
static void flip_data_byte(const char *path, long past)
{
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    unsigned char len[8];
    ck_assert_uint_eq(fread(len, 1, 8, f), 8);
    long header = 0;
    for (int i = 7; i >= 0; i--)
        header = header * 256 + len[i];
    long at = 8 + header + past;
    ck_assert_int_eq(fseek(f, at, SEEK_SET), 0);
    int byte = fgetc(f);
    ck_assert_int_ne(byte, EOF);
    ck_assert_int_eq(fseek(f, at, SEEK_SET), 0);
    ck_assert_int_ne(fputc(byte ^ 0x01, f), EOF);
    ck_assert_int_eq(fclose(f), 0);
}

START_TEST(test_flipped_byte_fails_everywhere)
{
    trainee t;
    trainee_make(&t, MHUB_DP_DISTOPT, 5);
    train_step(&t, 0);
    CK_OK(mhub_dp_engine_sync_params(t.engine));
    CK_OK(mhub_checkpoint_save(dir, t.engine, world, cfg, 1, 1, NULL, 0));
    char shard[512];
    snprintf(shard, sizeof shard, "shard-%05d-of-%05d.safetensors", lone_rank(), world->size);
    if (world->rank == 0) {
        char path[1024];
        snprintf(path, sizeof path, "%s/step-1/%s", dir, shard);
        flip_data_byte(path, 20);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    CK_FAILS(MHUB_ERR_IO, mhub_checkpoint_load(dir, t.engine, world, cfg, NULL, 0, NULL));
    const char *msg = mhub_last_error();
    ck_assert_msg(strstr(msg, shard) && strstr(msg, "fails its sha256 checksum"), "%s", msg);
    trainee_free(&t);
}
END_TEST

/* ---- one rank failing alone ----------------------------------------------------- */

/* A failed save of step 3 left nothing: no temporary, no step-3. Rank 0
 * clears the temporary after the ranks agreed, hence the first barrier;
 * the second keeps rank 0's next save from making a new one before every
 * rank has looked. */
static void assert_no_temporaries(void)
{
    char tmp[512], step[512];
    snprintf(tmp, sizeof tmp, "%s/.tmp-step-3", dir);
    snprintf(step, sizeof step, "%s/step-3", dir);
    MPI_Barrier(MPI_COMM_WORLD);
    bool left = exists(tmp), published = exists(step);
    MPI_Barrier(MPI_COMM_WORLD);
    ck_assert_msg(!left, "%s was left behind", tmp);
    ck_assert_msg(!published, "%s was published", step);
}

START_TEST(test_lone_bad_arguments)
{
    static const mhub_dp_engine_kind kinds[] = {MHUB_DP_DDP, MHUB_DP_FSDP};
    trainee t;
    trainee_make(&t, kinds[_i], 5);
    bool lone = world->rank == lone_rank();
    /* a NULL config on one rank only */
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_checkpoint_save(dir, t.engine, world, lone ? NULL : cfg, 3, 1, NULL, 0));
    assert_names_culprit(lone_rank(), "config is NULL");
    assert_no_temporaries();
    /* a path too long on one rank only */
    char *long_path = malloc(5000);
    ck_assert_ptr_nonnull(long_path);
    memset(long_path, 'x', 4999);
    long_path[4999] = '\0';
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_checkpoint_save(lone ? long_path : dir, t.engine, world, cfg, 3, 1, NULL, 0));
    assert_names_culprit(lone_rank(), "is over 2048 bytes");
    assert_no_temporaries();
    /* still in step: a save and a load go through */
    CK_OK(mhub_checkpoint_save(dir, t.engine, world, cfg, 4, 1, NULL, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_load(lone ? long_path : dir, t.engine, world,
                                                        cfg, NULL, 0, NULL));
    assert_names_culprit(lone_rank(), "is over 2048 bytes");
    const mhub_checkpoint_setting twice[] = {{"lr", "1", false}, {"lr", "2", false}};
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_checkpoint_load(dir, t.engine, world, cfg,
                                                        lone ? twice : NULL, lone ? 2 : 0,
                                                        NULL));
    assert_names_culprit(lone_rank(), "given twice");
    mhub_checkpoint_info info;
    CK_OK(mhub_checkpoint_load(dir, t.engine, world, cfg, NULL, 0, &info));
    ck_assert_int_eq(info.step, 4);
    free(long_path);
    trainee_free(&t);
}
END_TEST

/* ---- the engine's state calls ---------------------------------------------- */

/* mhub_dp_engine_get_state/set_state, which checkpoints are built on:
 * every state of every parameter comes back as it was set, bit for bit,
 * whichever rank holds which shard. And a rank that asks alone for a
 * parameter that does not exist fails without leaving the others in the
 * gather of a sharded engine: every rank of distopt/fsdp returns the
 * error, marked with the culprit's rank; ddp's state is local, so only
 * the culprit fails there. Either way no rank hangs, and the next call
 * works everywhere. */
START_TEST(test_engine_state_round_trip)
{
    static const mhub_dp_engine_kind kinds[] = {MHUB_DP_DDP, MHUB_DP_DISTOPT, MHUB_DP_FSDP};
    trainee t;
    trainee_make(&t, kinds[_i], 8);
    train_step(&t, 0);
    const mhub_param_list *pl = mhub_mlp_params(t.model);
    for (int i = 0; i < pl->count; i++) {
        int64_t n = pl->items[i].value.numel;
        float *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)n * sizeof *got);
        ck_assert_ptr_nonnull(want);
        ck_assert_ptr_nonnull(got);
        int states = mhub_dp_engine_state_count(t.engine, i);
        ck_assert_int_ge(states, 2); /* AdamW: exp_avg, exp_avg_sq */
        for (int w = 0; w < states; w++) {
            for (int64_t k = 0; k < n; k++)
                want[k] = 0.25f * (float)(k % 13) + (float)w + 0.5f * (float)i;
            CK_OK(mhub_dp_engine_set_state(t.engine, i, w, want));
            CK_OK(mhub_dp_engine_get_state(t.engine, i, w, got));
            ck_assert_mem_eq(got, want, (size_t)n * sizeof *got);
        }
        free(want);
        free(got);
    }
    /* one rank asks for a parameter that does not exist */
    float *full = malloc((size_t)pl->items[0].value.numel * sizeof *full);
    ck_assert_ptr_nonnull(full);
    bool lone = world->rank == lone_rank();
    mhub_status s = mhub_dp_engine_get_state(t.engine, lone ? pl->count + 5 : 0, 0, full);
    if (kinds[_i] == MHUB_DP_DDP && !lone) {
        CK_OK(s);
    } else {
        ck_assert_int_ne(s, MHUB_OK);
        assert_names_culprit(lone_rank(), "parameter");
    }
    CK_OK(mhub_dp_engine_get_state(t.engine, 0, 0, full));
    free(full);
    trainee_free(&t);
}
END_TEST

/* One rank's directory lies under a regular file: it cannot write its
 * shard (or, on one rank, make the temporary). Every rank fails, rank 0
 * clears its temporary, and the next save works. */
START_TEST(test_lone_unwritable_directory)
{
    static const mhub_dp_engine_kind kinds[] = {MHUB_DP_DDP, MHUB_DP_DISTOPT, MHUB_DP_FSDP};
    trainee t;
    trainee_make(&t, kinds[_i], 5);
    train_step(&t, 0);
    CK_OK(mhub_dp_engine_sync_params(t.engine));
    char blocker[512], bad[600];
    snprintf(blocker, sizeof blocker, "%s/blocker", dir);
    snprintf(bad, sizeof bad, "%s/sub", blocker);
    if (world->rank == 0) {
        FILE *f = fopen(blocker, "w");
        ck_assert_ptr_nonnull(f);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    bool lone = world->rank == lone_rank();
    CK_FAILS(MHUB_ERR_IO, mhub_checkpoint_save(lone ? bad : dir, t.engine, world, cfg, 3, 1,
                                               NULL, 0));
    assert_names_culprit(lone_rank(), "blocker/sub");
    assert_no_temporaries();
    CK_OK(mhub_checkpoint_save(dir, t.engine, world, cfg, 3, 1, NULL, 0));
    trainee_free(&t);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_add_checked_fixture(tc, checkpoint_setup, checkpoint_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_round_trip_is_bitwise, 0, 3);
    tcase_add_test(tc, test_run_settings);
    tcase_add_test(tc, test_bad_settings);
    tcase_add_test(tc, test_flipped_byte_fails_everywhere);
    tcase_add_loop_test(tc, test_engine_state_round_trip, 0, 3);
    tcase_add_loop_test(tc, test_lone_bad_arguments, 0, 2);
    tcase_add_loop_test(tc, test_lone_unwritable_directory, 0, 3);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv) { return mhub_test_mpi_main(argc, argv, make_suite); }
