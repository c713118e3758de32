/* fsdp.h - fully sharded data parallelism (ZeRO-3) over a model's units.
 *
 * The wrapping unit is mhub_param.unit (a layer). For each unit the engine
 * flattens its parameters, in list order, into one unit vector padded
 * with zeros to a multiple of the dp size, and each rank keeps only its
 * 1/dp slice of every unit vector: the values, the gradient and the
 * optimizer state. The parameters' own full-size storage is freed at
 * create.
 *
 * 16-bit models (bf16/f16 parameters, one dtype for all): the gather
 * buffers hold the model dtype, so the all-gathers move 16-bit data. Each
 * rank keeps an f32 master shard of the values, which the optimizer
 * updates, plus a model-dtype value shard that is all-gathered (cast from
 * the master after every step; at create from the parameters). The
 * full-gradient buffers the model writes into are f32 with
 * ddp_cfg->grad_reduce_in_fp32, else the model dtype (the reduce-scatter
 * runs in that dtype, with MHUB_AVG instead of a 16-bit pre-scale); the
 * gradient shard and the optimizer state are always f32 (a reduced
 * 16-bit block is widened before it is accumulated, through an f32
 * scratch of the largest shard). Deterministic mode and
 * check_for_nan_in_grad need f32 gradients and are refused for a 16-bit
 * model unless grad_reduce_in_fp32 is set. For f32 models the value shard
 * is its own master.
 *
 * A parameter is usable only while its unit is gathered: param->value
 * (and, during the unit's backward, param->grad) then point into the
 * engine's buffers; otherwise they are meta (shape, no storage), so a
 * read outside the unit hooks fails loudly instead of using stale data.
 * The model drives the engine through the unit hooks (module.h):
 *
 *   pre_forward(u)   wait for u's all-gather (issue it if nobody did) and,
 *                    with prefetch, issue u+1's so it runs during u's
 *                    compute;
 *   post_forward(u)  with reshard_after_forward, release u's full values
 *                    (the last unit stays: backward needs it first);
 *   pre_backward(u)  gather u again if it was released (prefetching u-1),
 *                    point u's gradients at a zeroed full-size buffer;
 *   post_backward(u) reduce-scatter u's full gradient (scaled by 1/dp, or
 *                    MHUB_AVG) and release u's full values and gradient.
 *
 * Buffers are allocated once, at create: with reshard_after_forward, two
 * gather buffers used alternately (unit u in buffer u % 2, each sized to
 * the largest unit of its parity) and two full-gradient buffers likewise,
 * so a rank holds its shards plus at most two units' full values and two
 * units' full gradients (mhub_dp_engine_estimate_memory, engine.h, gives
 * the exact bytes from shapes alone). Without reshard_after_forward every unit keeps
 * its own gather buffer from forward to backward (ZeRO-2-like: fewer
 * all-gathers, full-size values in memory).
 *
 * Tied parameters (mhub_param.tied_unit, module.h: a GPT's output layer
 * reading the embedding table in the last unit): the unit holding them
 * (unit 0) is read by its reader (unit L+1) too, so it gets a gather
 * buffer and a full-gradient buffer of its own, outside the alternation.
 * It stays gathered from its pre_forward until its backward ends, even
 * with reshard_after_forward (its buffer is its own: releasing it would
 * free nothing and cost two all-gathers); its gradient buffer is zeroed
 * at the first pre_backward of the two units (the reader's), collects the
 * reader's part and then its own, and is reduce-scattered once, at the
 * second post_backward. A rank then holds at most three units' full
 * values and gradients: the tied unit's and two others'. The model calls
 * only the running unit's hooks.
 *
 * Gradient accumulation: every micro-batch's backward reduce-scatters,
 * and the shards ACCUMULATE (grad_shard += reduce_scatter(full grad)).
 * This costs one reduce-scatter per unit per micro-batch but keeps the
 * memory at shard size; there is no no_sync scope, whose full-size
 * gradients would defeat the point of sharding.
 *
 * Collectives are issued from the hooks, finish_grad_sync, full_params
 * and free, so every rank must make the same sequence of those calls (the
 * same forwards and backwards). create, zero_grad and step are local.
 * Parameters must hold the same values on every rank at create (same
 * seed, or a broadcast first): each rank keeps its slice of its own copy.
 * Gradients start at zero. Free the engine before the model. */
#ifndef MHUB_FSDP_H
#define MHUB_FSDP_H

#include <stdbool.h>
#include <stdint.h>

#include "mhub/comm.h"
#include "mhub/ddp.h"
#include "mhub/module.h"
#include "mhub/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_fsdp_options {
    bool reshard_after_forward;  /* free a unit's full values after its forward */
    bool prefetch;               /* issue the next unit's all-gather early */
} mhub_fsdp_options;

/* Defaults: both true. */
void mhub_fsdp_options_init(mhub_fsdp_options *opts);

typedef struct mhub_fsdp mhub_fsdp;

/* Shard `params` (one dtype, f32, bf16 or f16, with f32 or same-dtype
 * gradients; with storage, all requiring gradients, on one backend,
 * unit >= 0) over `dp`. From `ddp_cfg` the engine uses
 * average_in_collective (MHUB_AVG in the reduce-scatter instead of
 * pre-scaling by 1/dp) and check_for_nan_in_grad; it always overlaps the
 * reduce-scatters with backward, one per unit, so overlap_grad_reduce and
 * bucket_size do not apply. `opts` may be NULL for the defaults. `params`
 * and `dp` must outlive the engine and the list must not change. */
mhub_status mhub_fsdp_create(mhub_param_list *params, mhub_comm *dp,
                             const mhub_ddp_config *ddp_cfg, const mhub_fsdp_options *opts,
                             const mhub_optim_config *opt_cfg, mhub_fsdp **out);

/* Collective. Give every parameter full storage again, holding the
 * current values (gathered) and the gradients accumulated since the last
 * zero_grad (gathered dp-means), then free the engine: the model is usable
 * without it afterwards. Values get the model dtype, gradients f32. If that storage cannot be allocated the
 * parameter stays meta. NULL is fine. */
void mhub_fsdp_free(mhub_fsdp *f);

/* The hooks to install on the model (mhub_mlp_set_unit_hooks); `user` is
 * the engine. */
mhub_status mhub_fsdp_unit_hooks(mhub_fsdp *f, mhub_unit_hooks *out);

/* Zero the gradient shards and start a new step. Fails if a backward is
 * half done or its reduce-scatters were not waited for (finish_grad_sync). */
mhub_status mhub_fsdp_zero_grad(mhub_fsdp *f);

/* Deterministic mode (ddp.h; ddp_cfg->deterministic): the training loop
 * gives rank r of P the micro-shards r, P + r, 2P + r, ... (round k holds
 * the P adjacent shards kP .. kP+P-1) and calls this after each one's
 * backward. Each unit's post_backward sums the round over ranks with the
 * fixed halving tree (a blocking reduce-scatter), and this call folds the
 * round into a binary counter over rounds: every sum is the complete
 * binary tree over shards 0..S-1 in order, as in DDP, so the trained
 * parameters are bitwise those of DDP at any power-of-two dp size. Cost:
 * the per-unit reduce-scatter is not overlapped, and log2(S/P) + 2
 * shard-sized vectors plus half the largest unit of scratch are held.
 * MHUB_ERR_STATE outside deterministic mode. */
mhub_status mhub_fsdp_shard_done(mhub_fsdp *f);

/* Collective. Wait for every outstanding reduce-scatter; afterwards each
 * rank's gradient shards hold the dp-mean of the step's gradients. With
 * check_for_nan_in_grad, a NaN/Inf in any rank's gradient (checked before
 * the reduction, so the rank that produced it is known) fails the step on
 * every rank with MHUB_ERR_NUMERIC naming the parameter, the rank and the
 * step. */
mhub_status mhub_fsdp_finish_grad_sync(mhub_fsdp *f);

/* One optimizer update (mhub_optim_update) of every shard. Needs
 * finish_grad_sync after the last backward. Releases any unit still
 * gathered first, since its full copy would be stale afterwards. */
mhub_status mhub_fsdp_step(mhub_fsdp *f);

/* Gradient clipping (mhub_dp_engine_clip_grad_norm, engine.h), between
 * finish_grad_sync and the step; MHUB_ERR_STATE while reduce-scatters are
 * outstanding or a backward is open. grad_sum_squares: the f64 sum of
 * squares of this rank's pieces of every parameter in its gradient shards
 * (padding excluded, each element on exactly one rank), parameter by
 * parameter in list order; the caller adds the ranks' sums. */
mhub_status mhub_fsdp_grad_sum_squares(mhub_fsdp *f, double *out);
/* Multiply this rank's gradient shards (what the step reads) by `factor`. */
mhub_status mhub_fsdp_scale_grads(mhub_fsdp *f, float factor);
/* Change the learning rate (schedules). */
mhub_status mhub_fsdp_set_lr(mhub_fsdp *f, float lr);

/* ---- checkpoint state ----
 * Per parameter, as full f32 host arrays of numel floats. `which` is an
 * optimizer state array (0 .. state arrays - 1) or -1 for the f32 master
 * values (the parameters themselves for f32 models). get is collective
 * (an all-gather of every rank's piece); set keeps only this rank's piece
 * (every rank passes the same full array) and drops any gathered copy,
 * so the next forward gathers the new values. Call them between steps. */
mhub_status mhub_fsdp_get_state(mhub_fsdp *f, int param_index, int which, float *full);
mhub_status mhub_fsdp_set_state(mhub_fsdp *f, int param_index, int which, const float *full);
/* Optimizer steps taken (AdamW's t), and set. */
int64_t mhub_fsdp_optim_steps(const mhub_fsdp *f);
mhub_status mhub_fsdp_set_optim_steps(mhub_fsdp *f, int64_t steps);

/* Collective. Write the full current values into `dst`, a parameter list
 * with the same names and shapes, of the model dtype or f32 (widened from
 * the gathered 16-bit values), with storage (a second copy of the
 * model, for a digest or a checkpoint). Units are gathered one at a time
 * through the engine's own buffers; call it between steps. */
mhub_status mhub_fsdp_full_params(mhub_fsdp *f, mhub_param_list *dst);

/* ---- inspection ---- */
typedef struct mhub_fsdp_unit_info {
    int num_params;
    int first_param;       /* list index of its first parameter, -1 if none */
    int64_t numel;         /* elements of its parameters */
    int64_t padded_numel;  /* numel rounded up to a multiple of dp */
    int64_t shard_numel;   /* padded_numel / dp: what each rank keeps */
    int reader;            /* the other unit that reads its parameters (tied), or -1 */
} mhub_fsdp_unit_info;

int mhub_fsdp_num_units(const mhub_fsdp *f);
mhub_status mhub_fsdp_unit(const mhub_fsdp *f, int unit, mhub_fsdp_unit_info *out);
/* Whether a unit's full values are gathered and its parameters usable. */
bool mhub_fsdp_unit_gathered(const mhub_fsdp *f, int unit);

typedef struct mhub_fsdp_stats {
    int64_t steps;                 /* finish_grad_sync calls */
    int64_t optimizer_steps;       /* mhub_fsdp_step calls */
    int64_t gathers_issued;        /* all-gathers started */
    int64_t gathers_prefetched;    /* of those, started ahead of their unit */
    int64_t reduce_scatters;       /* reduce-scatters started */
    /* bytes the engine holds on the backend, all allocated at create */
    int64_t shard_bytes;           /* f32 values + f32 gradients + optimizer state
                                    * shards, + the model-dtype value shard of a
                                    * 16-bit model */
    int64_t buffer_bytes;          /* full-size gather (model dtype) and gradient
                                    * (gradient dtype) buffers, the f32 widening
                                    * scratch of 16-bit gradients, deterministic
                                    * mode's buffers */
    int64_t bytes_held;            /* shard_bytes + buffer_bytes */
    double wait_seconds;           /* time spent waiting for collectives */
} mhub_fsdp_stats;

void mhub_fsdp_get_stats(const mhub_fsdp *f, mhub_fsdp_stats *out);

#ifdef __cplusplus
}
#endif
#endif
