/* test_ddp_nccl_emu.c - DDP on the CUDA backend over NCCL trains like DDP
 * on the CPU backend over MPI, under mpiexec -n 1, 2, 4.
 *
 * Both run on the CPU: the CUDA backend's own source on the emulator of
 * tests/cuda_emu/, its communicator nccl_comm.c over the emulator's NCCL,
 * which moves data between the ranks through MPI. The same model, seed and
 * batches go through a few SGD steps on each; on every rank the
 * parameters must then agree to a relative 1e-5 (floor 1e-2), the bound
 * test_ddp holds DDP to against one process. Not bit for bit: the
 * emulated kernels (glibc's math, cuBLAS as OpenBLAS with its own
 * transpositions) agree with the CPU backend's to f32 rounding, as the
 * conformance suite checks, and the emulated NCCL adds the ranks'
 * gradients in rank order where MPI's allreduce picks an order of its
 * own. Overlapped buckets put several NCCL all-reduces in flight behind
 * the backward pass, as on a GPU. */
#include <stdlib.h>
#include <string.h>

#include "cuda_emu/cuda_emu.h"
#include "testutil_mpi.h"

static const mhub_mlp_config model_cfg = {
    .inputs = 12, .num_hidden = 2, .hidden = {16, 10}, .classes = 5};

enum { GLOBAL_BATCH = 16, STEPS = 4, SEED = 21 };

/* One side of the comparison: a backend and a communicator over it. */
typedef struct side {
    mhub_backend *be;
    mhub_comm *comm;
} side;

static side cpu, gpu;

/* ranks sharing this machine, which pick their emulated device */
static void local_rank(int *rank, int *ranks)
{
    MPI_Comm node = MPI_COMM_NULL;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, rank);
    MPI_Comm_size(node, ranks);
    MPI_Comm_free(&node);
}

static void setup(void)
{
    CK_OK(mhub_cpu_backend_create(&(mhub_cpu_options){.blas_threads = 1}, &cpu.be));
    CK_OK(mhub_comm_create_mpi_world(&cpu.comm));
    int rank = 0, ranks = 1;
    local_rank(&rank, &ranks);
    mhub_cuda_options o = {.device = -1, .local_rank = rank, .local_ranks = ranks,
                           .pool_bytes = (size_t)256 << 20, .matmul = MHUB_MATMUL_F32};
    CK_OK(mhub_cuda_emu_backend_create(&o, &gpu.be));
    MPI_Comm w = MPI_COMM_WORLD;
    CK_OK(mhub_cuda_emu_comm_create_nccl(&w, gpu.be, "world", &gpu.comm));
}

static void teardown(void)
{
    mhub_comm_free(gpu.comm);
    mhub_backend_free(gpu.be);
    mhub_comm_free(cpu.comm);
    mhub_backend_free(cpu.be);
}

/* Copies of a batch in backend memory, as forward takes it. */
typedef struct batch {
    float *x;
    int32_t *y;
} batch;

static void batch_alloc(mhub_backend *be, batch *b)
{
    void *x = NULL, *y = NULL;
    CK_OK(be->ops->alloc(be, sizeof(float) * GLOBAL_BATCH * 12, &x));
    CK_OK(be->ops->alloc(be, sizeof(int32_t) * GLOBAL_BATCH, &y));
    b->x = x;
    b->y = y;
}

static void batch_free(mhub_backend *be, batch *b)
{
    be->ops->free(be, b->x);
    be->ops->free(be, b->y);
}

/* STEPS steps of SGD with momentum, this rank taking its slice of each
 * global batch; `avg` averages in the collective instead of scaling the
 * loss by 1/local before a sum. */
static void train(const side *s, mhub_mlp *m, bool avg)
{
    mhub_synthetic_task task;
    CK_OK(mhub_synthetic_init(&task, model_cfg.inputs, model_cfg.classes, 9));
    mhub_ddp_config cfg;
    mhub_ddp_config_init(&cfg);
    cfg.overlap_grad_reduce = true;
    cfg.bucket_size = 60; /* several buckets per model */
    cfg.average_in_collective = avg;
    mhub_ddp *ddp = NULL;
    CK_OK(mhub_ddp_create(mhub_mlp_params(m), s->comm, &cfg, &ddp));
    mhub_mlp_set_grad_ready(m, mhub_ddp_grad_ready, ddp);
    mhub_sgd *opt = NULL;
    CK_OK(mhub_sgd_create(mhub_mlp_params(m), s->be,
                          &(mhub_sgd_config){.lr = 0.2f, .momentum = 0.5f}, &opt));
    int64_t local = GLOBAL_BATCH / s->comm->size;
    float x[GLOBAL_BATCH * 12];
    int32_t y[GLOBAL_BATCH];
    batch dev;
    batch_alloc(s->be, &dev);
    for (int step = 0; step < STEPS; step++) {
        CK_OK(mhub_ddp_zero_grad(ddp));
        uint64_t first = (uint64_t)step * GLOBAL_BATCH + (uint64_t)(s->comm->rank * local);
        CK_OK(mhub_synthetic_batch(&task, first, local, x, y));
        CK_OK(s->be->ops->copy(s->be, dev.x, x, sizeof(float) * (size_t)local * 12,
                               MHUB_COPY_HOST_TO_DEVICE));
        CK_OK(s->be->ops->copy(s->be, dev.y, y, sizeof(int32_t) * (size_t)local,
                               MHUB_COPY_HOST_TO_DEVICE));
        CK_OK(mhub_mlp_forward(m, dev.x, dev.y, local, NULL));
        CK_OK(mhub_mlp_backward(m, 1.0f / (float)local));
        CK_OK(mhub_ddp_finish_grad_sync(ddp));
        CK_OK(mhub_sgd_step(opt));
    }
    CK_OK(s->be->ops->synchronize(s->be));
    batch_free(s->be, &dev);
    mhub_sgd_free(opt);
    mhub_mlp_set_grad_ready(m, NULL, NULL);
    mhub_ddp_free(ddp);
    mhub_synthetic_free(&task);
}

/* Parameter p of m as f32 on the host (malloc'd). */
static float *host_values(const side *s, mhub_mlp *m, int p)
{
    const mhub_tensor *t = &mhub_mlp_params(m)->items[p].value;
    size_t bytes = (size_t)t->numel * sizeof(float);
    float *h = malloc(bytes);
    ck_assert_ptr_nonnull(h);
    CK_OK(s->be->ops->copy(s->be, h, t->data, bytes, MHUB_COPY_DEVICE_TO_HOST));
    CK_OK(s->be->ops->synchronize(s->be));
    return h;
}

/* The largest relative difference (floor 1e-2) between the two models'
 * parameters, over every rank; and whether the CPU model moved from
 * `init` at all (on this rank). */
static double max_param_diff(mhub_mlp *on_cpu, mhub_mlp *on_gpu, mhub_mlp *init, bool *moved)
{
    mhub_param_list *params = mhub_mlp_params(on_cpu);
    double worst = 0;
    *moved = false;
    for (int p = 0; p < params->count; p++) {
        const float *c = params->items[p].value.data;
        const float *i0 = mhub_mlp_params(init)->items[p].value.data;
        float *g = host_values(&gpu, on_gpu, p);
        for (int64_t i = 0; i < params->items[p].value.numel; i++) {
            worst = fmax(worst, mhub_test_relerr(g[i], c[i], 1e-2));
            *moved = *moved || c[i] != i0[i];
        }
        free(g);
    }
    float mine = (float)worst, all = mine;
    CK_OK(mhub_comm_allreduce(cpu.comm, &mine, &all, 1, MHUB_F32, MHUB_MAX));
    return all;
}

START_TEST(test_nccl_ddp_matches_mpi_ddp)
{
    bool avg = _i == 1;
    mhub_mlp *on_cpu = NULL, *on_gpu = NULL, *init = NULL;
    CK_OK(mhub_mlp_create(&model_cfg, cpu.be, GLOBAL_BATCH, SEED, &on_cpu));
    CK_OK(mhub_mlp_create(&model_cfg, gpu.be, GLOBAL_BATCH, SEED, &on_gpu));
    CK_OK(mhub_mlp_create(&model_cfg, cpu.be, 1, SEED, &init));
    train(&cpu, on_cpu, avg);
    train(&gpu, on_gpu, avg);
    bool moved = false;
    double diff = max_param_diff(on_cpu, on_gpu, init, &moved);
    ck_assert_msg(moved, "rank %d: training left the parameters where they started",
                  cpu.comm->rank);
    ck_assert_msg(diff < 1e-5, "%d ranks, %s: NCCL-on-CUDA parameters differ from "
                  "MPI-on-CPU ones by a relative %g", cpu.comm->size,
                  avg ? "average in the collective" : "sum of 1/local losses", diff);
    mhub_mlp_free(init);
    mhub_mlp_free(on_gpu);
    mhub_mlp_free(on_cpu);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("ddp_nccl_emu");
    TCase *tc = tcase_create("ddp");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_add_loop_test(tc, test_nccl_ddp_matches_mpi_ddp, 0, 2);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    return mhub_test_mpi_main(argc, argv, make_suite);
}
