/* distopt.h - the distributed optimizer (ZeRO-1/2): gradients are
 * reduce-scattered, each rank updates only its shard, parameters are
 * all-gathered back.
 *
 * The engine takes a model's parameter list, a data-parallel communicator,
 * the DDP config (bucketing, overlap, scaling, NaN check) and an optimizer
 * config, and:
 *   1. lays parameters out as DDP does (reverse list order, a bucket closes
 *      once it spans >= bucket_size elements) but padded as Megatron-Core's
 *      distributed optimizer: each parameter starts at a multiple of 64
 *      elements and each bucket's size is a multiple of lcm(dp, 128), so
 *      every bucket splits into dp equal shards;
 *   2. keeps TWO contiguous buffers with that layout: gradients
 *      (param->grad re-pointed at its slot; f32 with grad_reduce_in_fp32,
 *      else the model's dtype) and parameter values (param->value
 *      re-pointed at its slot, values copied in; the model's dtype);
 *   3. gives rank r elements [r*n/dp, (r+1)*n/dp) of every bucket of n
 *      elements: it holds fp32 main parameters (the master copy, cast
 *      from the parameter buffer at create) and the optimizer state
 *      (momentum, or AdamW's two moments) for those shards only, so state
 *      memory per rank is 1/dp of the model's (plus padding);
 *   4. backward: a bucket whose gradients are all ready starts its
 *      nonblocking reduce-scatter (with overlap_grad_reduce; in bucket
 *      order, as DDP); finish_grad_sync issues the rest and waits. Rank r
 *      then holds the dp-mean of the gradients of its shards (the rest of
 *      the gradient buffer is undefined: the reduce-scatter is in place);
 *   5. step: the optimizer update on each owned shard of the main params
 *      (a 16-bit gradient shard read as f32 through a scratch as large as
 *      the largest shard), the result cast into the rank's shard of the
 *      parameter buffer, then every bucket all-gathered (in place, in the
 *      model's dtype) so all ranks hold all new values.
 *
 * Parameter gather overlap (ddp_cfg->overlap_param_gather, or later
 * mhub_distopt_set_overlap_param_gather): the step only starts the
 * all-gathers, in FORWARD order (the last bucket, which holds the model's
 * first layers, first; Megatron-LM #950), and the next forward waits
 * for each unit's buckets just before the unit runs: install the hooks of
 * mhub_distopt_unit_hooks with the model's set_unit_hooks, or call
 * mhub_distopt_wait_params before a forward that runs without them.
 * A forward never reads stale weights by accident:
 *   - the step leaves gathers in flight only when, since the previous
 *     step, the engine saw its pre_forward hook run or wait_params called;
 *     otherwise it completes them itself (no overlap, correct values);
 *   - if a forward still ran without waiting (hooks removed after the
 *     engine saw them), the next grad_ready, finish_grad_sync or step
 *     finds the gathers in flight, completes them and fails with
 *     MHUB_ERR_STATE naming the bucket, instead of training on.
 * Any other reader of parameter values between a step and the next
 * forward (evaluation, a checkpoint) must call mhub_distopt_wait_params.
 *
 * A step, with everything in place:
 *   zero_grad -> forward (hooks wait per unit) -> backward (grad_ready
 *   issues reduce-scatters) -> finish_grad_sync -> step (update, gathers).
 * Gradient accumulation and scaling are as in DDP (ddp.h): no_sync scopes
 * communicate nothing; gradients are divided by the dp size by pre-scaling
 * before a SUM, or with MHUB_AVG when average_in_collective.
 *
 * Models in f32, bf16 or f16 (Megatron-style mixed precision): bf16/f16
 * parameters are rounded once per step from the fp32 main params; padding
 * stays zero in every buffer. Deterministic mode and check_for_nan_in_grad
 * need an f32 gradient buffer: with a 16-bit model they are refused
 * (MHUB_ERR_UNSUPPORTED) unless grad_reduce_in_fp32 is set. */
#ifndef MHUB_DISTOPT_H
#define MHUB_DISTOPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mhub/comm.h"
#include "mhub/ddp.h"
#include "mhub/module.h"
#include "mhub/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Megatron-Core's distributed-optimizer alignment: parameter starts are
 * rounded up to this many elements; buckets to lcm(dp, 128). */
#define MHUB_DISTOPT_PARAM_ALIGN 64
#define MHUB_DISTOPT_BUCKET_ALIGN 128

typedef struct mhub_distopt mhub_distopt;

/* Wrap `params` (trainable parameters of one dtype, f32/bf16/f16, with
 * storage and f32 or same-dtype gradients) over `dp`, with the bucket,
 * overlap (grad reduce and param gather), scaling and NaN settings of
 * `ddp_cfg` (deterministic mode too: see shard_done) and the update rule
 * of `opt_cfg` (both copied). Existing parameter values and gradients are
 * kept. `params` and `dp` must outlive the engine and the list must not
 * grow. No message is sent, but every rank must pass the same model and
 * configs: the layout decides which collectives run. */
mhub_status mhub_distopt_create(mhub_param_list *params, mhub_comm *dp,
                                const mhub_ddp_config *ddp_cfg,
                                const mhub_optim_config *opt_cfg, mhub_distopt **out);
/* Complete any gather in flight, give every parameter its own value
 * storage (in its dtype, current values kept) and f32 gradient storage
 * (values kept) back and free the engine. */
void mhub_distopt_free(mhub_distopt *d);

/* Change overlap_param_gather after create: leave the step's all-gathers
 * in flight for the next forward to wait. Turning it off completes the
 * gathers in flight. */
mhub_status mhub_distopt_set_overlap_param_gather(mhub_distopt *d, bool on);

/* The model's grad-ready hook (an mhub_grad_ready_fn): `user` is the
 * engine. Reporting a parameter twice in one backward is harmless. */
mhub_status mhub_distopt_grad_ready(void *user, int param_index);

/* Zero the gradient buffer and start a new step. Fails if a reduction is
 * still outstanding (finish_grad_sync was not called). Gathers in flight
 * are left alone: they write parameter values, not gradients. */
mhub_status mhub_distopt_zero_grad(mhub_distopt *d);

/* Gradient accumulation: inside the scope, backward communicates nothing. */
mhub_status mhub_distopt_no_sync_begin(mhub_distopt *d);
mhub_status mhub_distopt_no_sync_end(mhub_distopt *d);

/* Deterministic mode (ddp.h): after each micro-shard's backward, fold its
 * gradient into the fixed summation tree. In this mode finish_grad_sync
 * reduces the whole gradient buffer with the tree (an all-reduce's
 * traffic instead of a reduce-scatter's) and the step then updates this
 * rank's shards as usual, so results are bitwise identical to DDP's at
 * any power-of-two dp size. MHUB_ERR_STATE outside deterministic mode. */
mhub_status mhub_distopt_shard_done(mhub_distopt *d);

/* Issue every reduce-scatter not yet issued, in bucket order, and wait for
 * all. With check_for_nan_in_grad, a NaN/Inf on any rank fails the step on
 * every rank with MHUB_ERR_NUMERIC naming the parameter, rank and step. */
mhub_status mhub_distopt_finish_grad_sync(mhub_distopt *d);

/* Update this rank's shards and all-gather the parameters (see the top of
 * this file). Needs a successful finish_grad_sync since the last
 * zero_grad or step: MHUB_ERR_STATE otherwise, so a failed NaN check or a
 * forgotten sync never updates with unreduced gradients. */
mhub_status mhub_distopt_step(mhub_distopt *d);

/* Gradient clipping (mhub_dp_engine_clip_grad_norm, engine.h), between a
 * successful finish_grad_sync and the step; MHUB_ERR_STATE otherwise.
 * grad_sum_squares: the f64 sum of squares of the reduced gradient
 * elements the step reads. Outside deterministic mode that is this rank's
 * parameter runs of its shards (padding excluded; *partial = true: the
 * caller adds the ranks' sums). Deterministic mode reduces the whole
 * buffer on every rank, so the sum covers every trainable parameter, per
 * parameter in list order as DDP's wrapper sums it (*partial = false):
 * the same bits on any dp size. 16-bit gradients are widened through the
 * f32 scratch. */
mhub_status mhub_distopt_grad_sum_squares(mhub_distopt *d, double *out, bool *partial);
/* Multiply the gradient elements the step reads by `factor` (in place;
 * 16-bit ones through f32, rounded back once). */
mhub_status mhub_distopt_scale_grads(mhub_distopt *d, float factor);
/* Wait for every parameter gather in flight (callers without hooks). */
mhub_status mhub_distopt_wait_params(mhub_distopt *d);

/* Fill hooks for mhub_mlp_set_unit_hooks (or any model's): pre_forward
 * waits for the unit's parameter buckets; the others are NULL. */
mhub_status mhub_distopt_unit_hooks(mhub_distopt *d, mhub_unit_hooks *out);

/* Copy every parameter from dp rank 0 to the others and refresh the main
 * params (also the way to load values set behind the engine's back).
 * Collective. */
mhub_status mhub_distopt_broadcast_params(mhub_distopt *d);

/* Change the learning rate (schedules); validated like the config. */
mhub_status mhub_distopt_set_lr(mhub_distopt *d, float lr);

/* ---- checkpoint state ----
 * Per parameter, as full f32 host arrays of numel floats. `which` is an
 * optimizer state array (0 .. state arrays - 1) or -1 for the f32 main
 * params. get is collective (an all-gather of every rank's pieces); set
 * keeps only this rank's pieces (every rank passes the same full array).
 * A frozen parameter has no state here: MHUB_ERR_INVALID_ARG. */
mhub_status mhub_distopt_get_state(mhub_distopt *d, int param_index, int which, float *full);
mhub_status mhub_distopt_set_state(mhub_distopt *d, int param_index, int which,
                                   const float *full);
/* Optimizer steps taken (AdamW's bias correction counts them), and set. */
int64_t mhub_distopt_optim_steps(const mhub_distopt *d);
mhub_status mhub_distopt_set_optim_steps(mhub_distopt *d, int64_t steps);

/* ---- inspection ---- */
typedef struct mhub_distopt_bucket_info {
    int64_t offset;       /* first element in the buffers: a multiple of lcm(dp, 128) */
    int64_t numel;        /* padded size: a multiple of lcm(dp, 128) */
    int64_t shard_numel;  /* numel / dp: what each rank owns */
    int64_t padding;      /* elements holding no parameter (aligned starts, padded end) */
    int num_params;
    int first_param;      /* index (in the list) of the bucket's first parameter */
    bool gather_in_flight; /* its parameter all-gather was issued and not yet waited for */
} mhub_distopt_bucket_info;

int mhub_distopt_num_buckets(const mhub_distopt *d);
mhub_status mhub_distopt_bucket(const mhub_distopt *d, int bucket,
                                mhub_distopt_bucket_info *out);
/* Bucket holding a parameter, or -1 (none, or no gradient). */
int mhub_distopt_param_bucket(const mhub_distopt *d, int param_index);
/* A parameter's first element in the buffers, or -1. */
int64_t mhub_distopt_param_offset(const mhub_distopt *d, int param_index);
/* Elements in each buffer, padding included. */
int64_t mhub_distopt_numel(const mhub_distopt *d);
/* Of those, elements that hold no parameter. */
int64_t mhub_distopt_padding_elems(const mhub_distopt *d);

/* The same sizes from shapes alone, before any engine exists:
 * mhub_dp_engine_estimate_memory (engine.h). */
typedef struct mhub_distopt_memory {
    size_t grad_buffer_bytes;      /* the full padded gradient buffer */
    size_t param_buffer_bytes;     /* the full padded parameter buffer */
    size_t main_param_bytes;       /* fp32 main params of this rank's shards */
    size_t optimizer_state_bytes;  /* optimizer state of this rank's shards */
} mhub_distopt_memory;

void mhub_distopt_get_memory(const mhub_distopt *d, mhub_distopt_memory *out);

typedef struct mhub_distopt_stats {
    int64_t steps;               /* optimizer steps taken */
    int64_t grad_syncs;          /* finish_grad_sync calls */
    int64_t buckets_issued;      /* reduce-scatters started */
    int64_t issued_in_backward;  /* of those, started from grad-ready (overlapped) */
    int64_t gathers_issued;      /* parameter all-gathers started */
    int64_t gathers_deferred;    /* of those, left in flight after the step */
    double sync_wait_seconds;    /* time inside finish_grad_sync */
    double param_wait_seconds;   /* time waiting for gathers (step, hooks, wait_params) */
} mhub_distopt_stats;

void mhub_distopt_get_stats(const mhub_distopt *d, mhub_distopt_stats *out);

#ifdef __cplusplus
}
#endif
#endif
