/* custom_provider.c - a provider type of your own, from config file to a
 * DDP-wrapped model that trains.
 *
 *   mpicc custom_provider.c $(pkg-config --cflags --libs mhub) -o custom_provider
 *   mpiexec -n 2 ./custom_provider
 *
 * The type, "uniform-mlp", describes an MLP by depth and width instead of
 * a list of widths. It declares its config fields once, in a table, and
 * mhub gives it JSON save/load with strict checking, get_model with every
 * option, hooks and data-parallel wrapping. The model itself is mhub's
 * MLP; a provider of a new architecture would build its own object and
 * point the chunk ops at it.
 *
 * Exits non-zero unless the config round-trips exactly and the loss at
 * least halves, so `make check` runs it as a test of the public API. */
/* mkdtemp is POSIX.1-2008, not C11: ask for it when built with -std=c11 */
#define _POSIX_C_SOURCE 200809L

#include <mpi.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mhub/mhub.h>

#define CHECK(expr)                                                                  \
    do {                                                                             \
        mhub_status s_ = (expr);                                                     \
        if (s_ != MHUB_OK) {                                                         \
            fprintf(stderr, "%s failed: %s\n", #expr, mhub_last_error());            \
            MPI_Abort(MPI_COMM_WORLD, 1);                                            \
        }                                                                            \
    } while (0)

/* ---- the provider type ------------------------------------------------------ */

typedef struct uniform_mlp_config {
    mhub_provider_config base;   /* the common fields come first */
    int features;
    int width;
    int depth;                   /* hidden layers */
    int classes;
} uniform_mlp_config;

static const mhub_config_field uniform_fields[] = {
    {.key = "features", .kind = MHUB_FIELD_INT, .offset = offsetof(uniform_mlp_config, features),
     .min = 1, .max = 1 << 20, .help = "inputs per sample"},
    {.key = "width", .kind = MHUB_FIELD_INT, .offset = offsetof(uniform_mlp_config, width),
     .min = 1, .max = 1 << 20, .help = "width of every hidden layer"},
    {.key = "depth", .kind = MHUB_FIELD_INT, .offset = offsetof(uniform_mlp_config, depth),
     .min = 0, .max = MHUB_MLP_MAX_HIDDEN, .help = "hidden layers"},
    {.key = "classes", .kind = MHUB_FIELD_INT, .offset = offsetof(uniform_mlp_config, classes),
     .min = 2, .max = 1 << 20, .help = "output classes"},
};

static void uniform_defaults(mhub_provider_config *base)
{
    uniform_mlp_config *c = (uniform_mlp_config *)base;
    c->features = 16;
    c->width = 32;
    c->depth = 2;
    c->classes = 4;
}

static mhub_param_list *chunk_params(void *m) { return mhub_mlp_params(m); }
static void chunk_free(void *m) { mhub_mlp_free(m); }
static void chunk_grad_ready(void *m, mhub_grad_ready_fn fn, void *user)
{
    mhub_mlp_set_grad_ready(m, fn, user);
}
static void chunk_unit_hooks(void *m, const mhub_unit_hooks *h) { mhub_mlp_set_unit_hooks(m, h); }

static mhub_status uniform_provide(const mhub_provider_config *base, const mhub_provide_args *a,
                                   mhub_chunk **out)
{
    const uniform_mlp_config *c = (const uniform_mlp_config *)base;
    if (mhub_provide_args_num_chunks(a) != 1)
        return mhub_error(MHUB_ERR_UNSUPPORTED, "uniform-mlp runs on one pipeline stage");
    mhub_mlp_config m = {.inputs = c->features, .num_hidden = c->depth, .classes = c->classes,
                         .param_dtype = mhub_provider_config_param_dtype(base)};
    for (int i = 0; i < c->depth; i++)
        m.hidden[i] = c->width;
    mhub_mlp *mlp = NULL;
    mhub_status s = mhub_mlp_create(&m, a->backend, a->micro_batch, a->seed, &mlp);
    if (s != MHUB_OK)
        return s;
    static const mhub_chunk_ops ops = {.params = chunk_params, .free = chunk_free,
                                       .set_grad_ready = chunk_grad_ready,
                                       .set_unit_hooks = chunk_unit_hooks};
    return mhub_chunk_create("uniform-mlp", mlp, &ops, out);
}

static const mhub_provider_type uniform_mlp_type = {
    .name = "uniform-mlp",
    .description = "an MLP of `depth` hidden layers of one width",
    .config_size = sizeof(uniform_mlp_config),
    .fields = uniform_fields,
    .num_fields = sizeof uniform_fields / sizeof uniform_fields[0],
    .config_defaults = uniform_defaults,
    .provide = uniform_provide,
};

/* ---- a pre-wrap hook: runs on the raw chunks before DDP sees them ------------- */

static mhub_status report_chunks(void *user, mhub_chunk_list *chunks)
{
    if (*(int *)user == 0)
        printf("pre-wrap hook: %d chunk(s), %lld parameters\n", chunks->count,
               (long long)mhub_chunk_list_numel(chunks));
    return MHUB_OK;
}

/* ---- the program ------------------------------------------------------------------- */

enum { BATCH = 32, STEPS = 150 };

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    mhub_comm *world;
    CHECK(mhub_comm_create_mpi_world(&world));
    CHECK(mhub_provider_type_register(&uniform_mlp_type));

    /* a config as a user would write it; missing keys take the defaults */
    const char *text = "{\"provider\": \"uniform-mlp\", \"width\": 48, \"depth\": 2, "
                       "\"seed\": 7}";
    mhub_provider_config *cfg;
    CHECK(mhub_config_from_json(text, strlen(text), "inline config", MHUB_CONFIG_STRICT, &cfg));

    /* save_pretrained / from_pretrained round trip (rank 0 writes) */
    char dir[] = "/tmp/mhub-custom-provider-XXXXXX";
    if (world->rank == 0 && !mkdtemp(dir)) {
        perror("mkdtemp");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (world->rank == 0)
        CHECK(mhub_config_save_pretrained(cfg, dir, NULL, NULL));
    MPI_Barrier(MPI_COMM_WORLD);
    mhub_provider_config *loaded;
    CHECK(mhub_config_from_pretrained(dir, MHUB_CONFIG_STRICT, NULL, &loaded));
    if (!mhub_config_equal(cfg, loaded)) {
        fprintf(stderr, "the config did not survive save_pretrained/from_pretrained\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (world->rank == 0) {
        char path[sizeof dir + 32];
        snprintf(path, sizeof path, "%s/%s", dir, MHUB_CONFIG_NAME);
        unlink(path);
        rmdir(dir);
    }

    /* the provider: build on the CPU backend, a hook, then get_model */
    mhub_backend *be;
    CHECK(mhub_cpu_backend_create(NULL, &be));
    mhub_provider *provider;
    CHECK(mhub_provider_create(loaded, &provider));
    mhub_provider_set_backend(provider, be);
    int local = BATCH / world->size;
    mhub_provider_set_micro_batch(provider, local);
    CHECK(mhub_provider_register_pre_wrap_hook(provider, "report", report_chunks, &world->rank,
                                               false));
    mhub_ddp_config ddp;
    mhub_ddp_config_init(&ddp);
    ddp.overlap_grad_reduce = true;
    mhub_optim_config adamw;
    mhub_optim_config_init(&adamw, MHUB_OPTIM_ADAMW);
    adamw.lr = 0.01f;
    mhub_get_model_options opts;
    mhub_get_model_options_init(&opts);
    opts.ddp_config = &ddp;
    opts.optim = &adamw;
    opts.world = world;   /* the process groups are made on first use */
    mhub_chunk_list model;
    CHECK(mhub_provide_distributed_model(provider, &opts, &model));

    /* train: every rank reads its slice of each global batch */
    const uniform_mlp_config *uc = (const uniform_mlp_config *)mhub_provider_config_of(provider);
    mhub_mlp *mlp = mhub_chunk_model(model.items[0]);
    mhub_dp_engine *engine = mhub_chunk_engine(model.items[0]);
    mhub_synthetic_task task;
    CHECK(mhub_synthetic_init(&task, uc->features, uc->classes, 11));
    float *x = malloc((size_t)local * (size_t)uc->features * sizeof *x);
    int32_t *y = malloc((size_t)local * sizeof *y);
    float first = 0, last = 0;
    for (int step = 0; step < STEPS; step++) {
        uint64_t start = (uint64_t)step * BATCH + (uint64_t)(world->rank * local);
        CHECK(mhub_synthetic_batch(&task, start, local, x, y));
        float loss;
        CHECK(mhub_dp_engine_zero_grad(engine));
        CHECK(mhub_dp_engine_micro_begin(engine, 0, 1));
        CHECK(mhub_mlp_forward(mlp, x, y, local, &loss));
        CHECK(mhub_mlp_backward(mlp, 1.0f / (float)local));
        CHECK(mhub_dp_engine_micro_end(engine, 0, 1));
        CHECK(mhub_dp_engine_finish_grad_sync(engine));
        CHECK(mhub_dp_engine_step(engine));
        if (step == 0)
            first = loss;
        last = loss;
    }
    if (world->rank == 0)
        printf("uniform-mlp on %d rank(s): loss %.4f -> %.4f\n", world->size, first, last);
    int ok = last < 0.5f * first;
    free(x);
    free(y);
    mhub_chunk_list_free(&model);
    mhub_provider_free(provider);
    mhub_config_free(cfg);
    mhub_config_free(loaded);
    mhub_backend_free(be);
    mhub_comm_free(world);
    MPI_Finalize();
    return ok ? EXIT_SUCCESS : EXIT_FAILURE;
}
