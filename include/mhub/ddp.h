/* ddp.h - data-parallel gradient reduction with buckets (DDP).
 *
 * The engine takes a model's parameter list and a data-parallel
 * communicator and:
 *   1. lays every gradient out in ONE contiguous f32 buffer, parameters in
 *      reverse order of the list (about the order backward produces them),
 *      and re-points each param->grad at its slot, so backward writes
 *      straight into the buffer (no copy);
 *   2. cuts the buffer into buckets of about `bucket_size` elements (a
 *      bucket closes once it holds >= bucket_size; a parameter never
 *      straddles two buckets), with the planner it shares with the
 *      distributed optimizer (src/dp_common.c);
 *   3. with overlap_grad_reduce, starts a bucket's nonblocking all-reduce
 *      as soon as the model reports the bucket's last gradient ready
 *      (mhub_ddp_grad_ready, the model's grad-ready hook), so the reduction
 *      runs while backward computes earlier layers;
 *   4. mhub_ddp_finish_grad_sync issues whatever has not been issued
 *      (every bucket without overlap; buckets holding a parameter that was
 *      unused this step) and waits for all.
 * Buckets are always issued in bucket order, on every rank, whatever order
 * their gradients became ready in: collectives on one communicator must
 * be issued in the same order everywhere.
 *
 * Gradient accumulation: between mhub_ddp_no_sync_begin/end nothing is
 * communicated and gradients accumulate in the buffer; the micro-batch
 * after the scope ends triggers the reduction.
 *
 * Scaling: each rank's loss is the mean over its own samples; the engine
 * divides the summed gradients by the dp size, either by scaling the
 * bucket before a SUM (default, as Megatron-Core) or with MHUB_AVG in the
 * collective (average_in_collective). A loop that weights every sample's
 * loss by 1/global batch instead sets loss_is_global_mean: the engine then
 * only sums, which saves a pass over the gradients.
 *
 * Deterministic mode (mhub's own; Megatron-Core, PyTorch and Horovod have
 * none): the global batch is cut into a fixed number S of micro-shards,
 * rank r of P computing shards [r*S/P, (r+1)*S/P), one backward each,
 * followed by mhub_ddp_shard_done. The engine sums the shard gradients in
 * a fixed binary tree: on each rank a binary counter folds its shards
 * ((g0+g1)+(g2+g3))..., then ranks combine their subtree sums by
 * recursive halving (partners r^1, r^2, r^4, ...: adjacent subtrees
 * first, exactly the tree one rank would build) and recursive doubling
 * to spread the result. Every sum thus has the same shape for any P, so
 * gradients and trained parameters are bitwise identical on 1, 2, 4 or 8
 * ranks. Requirements: P and S/P powers of two; each shard's loss weighted
 * by 1/global_batch (the engine does not divide by P: a division by P
 * would round differently for each P). Cost: no overlap with backward
 * (the exchange runs in finish_grad_sync), one extra add per shard, and
 * log2(S/P) + 1 extra gradient-sized buffers plus half a buffer of
 * receive scratch per rank.
 *
 * MPICH progresses a nonblocking collective only inside MPI calls, so the
 * engine tests its outstanding requests on every grad-ready call: between
 * layers, the messages of issued buckets move on. */
#ifndef MHUB_DDP_H
#define MHUB_DDP_H

#include <stdbool.h>
#include <stdint.h>

#include "mhub/comm.h"
#include "mhub/module.h"

#ifdef __cplusplus
extern "C" {
#endif

/* bucket_size value meaning Megatron-Core's default, max(40M, 1M * dp). */
#define MHUB_DDP_BUCKET_AUTO (-1)

/* The fields of Megatron-Core's DistributedDataParallelConfig this engine
 * implements, with its defaults (mhub_ddp_config_init). */
typedef struct mhub_ddp_config {
    bool grad_reduce_in_fp32;    /* 16-bit models: keep and reduce gradients in f32 */
    bool overlap_grad_reduce;    /* false: reduce everything in finish_grad_sync */
    int64_t bucket_size;         /* elements; MHUB_DDP_BUCKET_AUTO or >= 1 */
    bool average_in_collective;  /* MHUB_AVG in the collective instead of pre-scaling */
    bool loss_is_global_mean;    /* the loss already weights each sample by 1/global
                                  * batch: sum, no division by dp (as Megatron-Core
                                  * with calculate_per_token_loss) */
    bool check_for_nan_in_grad;  /* stop the step on a NaN/Inf gradient, naming it */
    bool deterministic;          /* bitwise-identical results at any power-of-two dp size */
    /* read by the engine wrapper (engine.h), not by the DDP engine itself: */
    bool use_distributed_optimizer; /* shard optimizer state (distopt.h) */
    bool overlap_param_gather;      /* distopt: gather params during the next forward */
} mhub_ddp_config;

void mhub_ddp_config_init(mhub_ddp_config *cfg);

/* The bucket size a config resolves to at a given dp size (the config is
 * never modified). Without overlap the whole buffer is one bucket, as in
 * Megatron-Core: returns INT64_MAX then. */
int64_t mhub_ddp_config_bucket_elems(const mhub_ddp_config *cfg, int dp_size);

/* Check values: bucket_size 0 or < -1 is an error naming the field. */
mhub_status mhub_ddp_config_validate(const mhub_ddp_config *cfg);

/* Read a JSON object whose keys are the field names above. Missing keys
 * keep the value already in *cfg; an unknown key or a value of the wrong
 * type is MHUB_ERR_PARSE naming the key and `source` (a file name, for
 * the message). Nothing is written to *cfg on error. */
mhub_status mhub_ddp_config_from_json(const char *json_text, const char *source,
                                      mhub_ddp_config *cfg);
/* The config as a JSON object (every field). Caller free()s *out. */
mhub_status mhub_ddp_config_to_json(const mhub_ddp_config *cfg, char **out);

typedef struct mhub_ddp mhub_ddp;

/* Wrap `params` (parameters with storage, all of one dtype) for data
 * parallelism over `dp`. The gradient buffer is f32 for f32 models and,
 * for bf16/f16 models, f32 with grad_reduce_in_fp32 or else the model's
 * dtype (reduced in that dtype; a requested pre-scaling then becomes an
 * average in the collective, which divides in f32 and rounds once).
 * check_for_nan_in_grad and deterministic mode need an f32 buffer. The gradient buffer comes from mhub_comm_alloc when the
 * communicator offers it (a shared-memory window on one node) and from
 * the parameters' backend otherwise. Existing gradient values are kept.
 * `params` and `dp` must outlive the engine and the list must not grow. */
mhub_status mhub_ddp_create(mhub_param_list *params, mhub_comm *dp, const mhub_ddp_config *cfg,
                            mhub_ddp **out);
/* Give every parameter its own gradient storage back (values kept) and
 * free the engine. */
void mhub_ddp_free(mhub_ddp *ddp);

/* The model's grad-ready hook (an mhub_grad_ready_fn): `user` is the
 * engine. Reporting a parameter twice in one backward is harmless. */
mhub_status mhub_ddp_grad_ready(void *user, int param_index);

/* Zero the gradient buffer and start a new step. Fails if a reduction is
 * still outstanding (finish_grad_sync was not called). */
mhub_status mhub_ddp_zero_grad(mhub_ddp *ddp);

/* Gradient accumulation: inside the scope, backward communicates nothing. */
mhub_status mhub_ddp_no_sync_begin(mhub_ddp *ddp);
mhub_status mhub_ddp_no_sync_end(mhub_ddp *ddp);

/* Issue every bucket not yet issued, in order, and wait for all. After it,
 * every rank holds the dp-mean of the gradients. With
 * check_for_nan_in_grad, a NaN/Inf on any rank fails the step on every
 * rank with MHUB_ERR_NUMERIC naming the parameter, the rank and the step. */
mhub_status mhub_ddp_finish_grad_sync(mhub_ddp *ddp);

/* Deterministic mode: the backward of one micro-shard has finished; fold
 * its gradient (in the buffer) into this rank's tree and clear the buffer
 * for the next shard. */
mhub_status mhub_ddp_shard_done(mhub_ddp *ddp);

/* Copy every parameter from dp rank 0 to the others. */
mhub_status mhub_ddp_broadcast_params(mhub_ddp *ddp);

/* ---- inspection ---- */
typedef struct mhub_ddp_bucket_info {
    int64_t offset;       /* first element in the buffer */
    int64_t numel;
    int num_params;
    int first_param;      /* index (in the list) of the bucket's first parameter */
} mhub_ddp_bucket_info;

int mhub_ddp_num_buckets(const mhub_ddp *ddp);
mhub_status mhub_ddp_bucket(const mhub_ddp *ddp, int bucket, mhub_ddp_bucket_info *out);
/* Bucket holding a parameter, or -1. */
int mhub_ddp_param_bucket(const mhub_ddp *ddp, int param_index);
/* Whether the gradient buffer lives in communicator memory (shared window). */
bool mhub_ddp_uses_comm_memory(const mhub_ddp *ddp);

typedef struct mhub_ddp_stats {
    int64_t steps;               /* finish_grad_sync calls */
    int64_t buckets_issued;      /* collectives started */
    int64_t issued_in_backward;  /* of those, started from grad-ready (overlapped) */
    double sync_wait_seconds;    /* time spent inside finish_grad_sync */
} mhub_ddp_stats;

void mhub_ddp_get_stats(const mhub_ddp *ddp, mhub_ddp_stats *out);

#ifdef __cplusplus
}
#endif
#endif
