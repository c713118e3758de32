/* dp_common.h - pieces the data-parallel engines share (internal).
 *
 *   mhub_bucket_plan      the bucketed buffer layout of DDP and the
 *                         distributed optimizer (one planner for both)
 *   mhub_unit_plan        FSDP's per-unit flat vectors and shards
 *   *_estimate_memory     what each engine will allocate, from shapes only
 *   mhub_dp_agree         every rank returns the same outcome of a local step
 *   mhub_dp_gather_pieces a sharded parameter (or state) whole on every rank
 *   mhub_dp_agree_on_nan  every rank fails the same step with one report
 *   mhub_sumtree          the fixed-shape gradient sum of deterministic
 *                         mode (see ddp.h): a per-rank binary counter over
 *                         micro-shards, then recursive halving/doubling
 *                         across ranks with partners r^1, r^2, r^4, ... */
#ifndef MHUB_DP_COMMON_H
#define MHUB_DP_COMMON_H

#include <stdbool.h>
#include <stdint.h>

#include "mhub/backend.h"
#include "mhub/comm.h"
#include "mhub/ddp.h"
#include "mhub/engine.h"
#include "mhub/module.h"
#include "mhub/optim.h"

/* ---- layouts ---------------------------------------------------------------
 * Planners are pure: they read only shapes (param->value.numel, the unit)
 * and requires_grad, so they work on meta lists (no storage) as well as on
 * a live model, and an engine and its memory estimate use the same one. */

/* One bucket of a bucket plan. */
typedef struct mhub_plan_bucket {
    int64_t offset;       /* first element in the buffer */
    int64_t numel;        /* elements, padding included */
    int64_t param_numel;  /* of those, elements that hold parameters */
    int first_param;      /* list index of its first (highest-index) parameter */
    int num_params;
} mhub_plan_bucket;

/* The gradient buffer of DDP and the distributed optimizer. Parameters
 * requiring a gradient are laid out in reverse list order (about the order
 * backward produces them), each starting at a multiple of param_align;
 * a bucket closes once it spans >= bucket_elems elements (alignment gaps
 * count, as in Megatron-Core) and its end is rounded up to a multiple of
 * bucket_align, where the next bucket starts. A parameter never straddles
 * two buckets. DDP uses alignments 1 and 1 (no padding); the distributed
 * optimizer MHUB_DISTOPT_PARAM_ALIGN and mhub_distopt_bucket_align(dp), so
 * every bucket splits into dp equal shards. */
typedef struct mhub_bucket_plan {
    int num_params;        /* the list's count */
    int *param_bucket;     /* per parameter: its bucket, -1 without gradient */
    int64_t *param_offset; /* per parameter: first element in the buffer (0 if none) */
    mhub_plan_bucket *buckets;
    int num_buckets;
    int64_t numel;         /* buffer elements, padding included */
    int64_t padding;       /* of those, elements that hold no parameter */
} mhub_bucket_plan;

/* bucket_elems >= 1 (INT64_MAX: one bucket), alignments >= 1. On error
 * *out is empty (and safe to free). */
mhub_status mhub_bucket_plan_make(const mhub_param_list *params, int64_t bucket_elems,
                                  int64_t param_align, int64_t bucket_align,
                                  mhub_bucket_plan *out);
void mhub_bucket_plan_free(mhub_bucket_plan *plan);
/* lcm(dp, MHUB_DISTOPT_BUCKET_ALIGN): the distributed optimizer's bucket
 * alignment (a bucket splits into dp shards that keep NCCL's 128-element
 * alignment). */
int64_t mhub_distopt_bucket_align(int dp_size);

/* One FSDP unit: its parameters flattened in list order into a vector
 * padded with zeros to a multiple of dp, of which each rank keeps one
 * `shard`-long slice. */
typedef struct mhub_unit_layout {
    int first;            /* into order[]: its parameters are order[first .. first+count) */
    int count;
    int64_t numel;
    int64_t padded;       /* numel rounded up to a multiple of dp */
    int64_t shard;        /* padded / dp */
    int64_t shard_offset; /* where its slice starts in the rank's shard vectors */
    int reader;           /* the other unit that reads its parameters too (their
                           * mhub_param.tied_unit), -1 if none */
} mhub_unit_layout;

typedef struct mhub_unit_plan {
    int num_units;         /* highest unit + 1 (units without parameters are empty) */
    mhub_unit_layout *units;
    int *order;            /* parameter indices grouped by unit, list order within */
    int64_t *param_offset; /* per parameter: first element in its unit vector */
    int64_t shard_numel;   /* sum of the units' shards */
    int64_t largest_padded, largest_shard;
} mhub_unit_plan;

/* Units are numbered from 0 (the caller checked). A unit's parameters
 * may name one other existing unit as their tied_unit (its reader);
 * anything else is refused. On error *out is empty (and safe to free). */
mhub_status mhub_unit_plan_make(const mhub_param_list *params, int dp_size,
                                mhub_unit_plan *out);
void mhub_unit_plan_free(mhub_unit_plan *plan);

/* ---- memory estimates (engine.h's mhub_dp_engine_estimate_memory) ----------
 * Each engine sizes its allocations from a plan; these size them from the
 * same plan without allocating, and check what create checks short of
 * storage. DDP's estimate covers the DDP engine (gradient buffer,
 * deterministic mode), not the wrapper's optimizer state. */
mhub_status mhub_ddp_estimate_memory(const mhub_param_list *params, int dp_size,
                                     const mhub_ddp_config *cfg, mhub_dp_memory *out);
mhub_status mhub_distopt_estimate_memory(const mhub_param_list *params, int dp_size,
                                         const mhub_ddp_config *ddp_cfg,
                                         const mhub_optim_config *opt_cfg, mhub_dp_memory *out);
mhub_status mhub_fsdp_estimate_memory(const mhub_param_list *params, int dp_size,
                                      const mhub_ddp_config *ddp_cfg,
                                      const mhub_fsdp_options *opts,
                                      const mhub_optim_config *opt_cfg, mhub_dp_memory *out);

/* What mhub_dp_check_params_any checks that a meta list can show: one
 * dtype for the trainable parameters (in *dtype), f32 or same-dtype
 * gradients, units >= 0, at least one parameter requiring a gradient. */
mhub_status mhub_dp_check_shapes(const mhub_param_list *params, const char *engine,
                                 mhub_dtype *dtype);

/* Deterministic mode's group size rule: a power of two (MHUB_ERR_INVALID_ARG
 * naming the group otherwise). */
mhub_status mhub_dp_check_pow2(int size, const char *group);

/* Bytes a sum tree over numel f32 elements allocates during the first
 * step with one micro-shard per rank: one level, plus, when `exchange`
 * runs across dp_size > 1 ranks, the half-buffer receive scratch. Each
 * doubling of the micro-shards per rank adds one level (numel floats). */
int64_t mhub_sumtree_bytes(int64_t numel, int dp_size, bool exchange);

/* Collective: every rank passes the status of its own local work (an
 * allocation, a copy) and gets back the same outcome, so no rank enters a
 * later collective that another has left. The lowest failing rank's
 * status and message go to all, marked "(from rank r)". Call it before
 * any collective that follows local work which can fail. */
mhub_status mhub_dp_agree(mhub_comm *dp, mhub_status mine);

/* A parameter's full f32 values, or one of its optimizer states, when
 * its elements are spread over the dp ranks (the sharded engines): rank r
 * holds elements [lo, hi) of it, as `piece` says. Each rank writes its own
 * piece into a zeroed numel-element vector (`fill`, in the parameter's
 * coordinates), the vectors are all-gathered, and every rank copies each
 * rank's piece out of that rank's vector: gathering rather than summing
 * keeps every bit, the sign of zero too. Collective. `s` is the caller's
 * own checks; it and the local allocations are agreed on (mhub_dp_agree)
 * before the gather. */
typedef struct mhub_dp_pieces {
    void *engine;
    int param, which;
    int64_t numel;
    mhub_status (*fill)(void *engine, int param, int which, float *mine);
    bool (*piece)(const void *engine, int param, int rank, int64_t *lo, int64_t *hi);
} mhub_dp_pieces;

mhub_status mhub_dp_gather_pieces(mhub_comm *dp, mhub_status s, const mhub_dp_pieces *p,
                                  float *full);

/* Every rank learns the highest rank that saw a NaN and which parameter,
 * packed as rank * (params + 1) + param + 1 (exact in f32 below 2^24) and
 * maximised over dp. local_param is this rank's finding or -1. Returns
 * MHUB_ERR_NUMERIC naming parameter, rank, step and engine on every rank
 * when any rank found one. Collective. */
mhub_status mhub_dp_agree_on_nan(mhub_comm *dp, const mhub_param_list *params, int local_param,
                                 int64_t step, const char *engine);

/* The parameters an engine can wrap: every one that requires a gradient
 * is f32 with an f32 gradient, has storage, a unit >= 0, and lives on the
 * same backend as the others (returned in *be); at least one requires a
 * gradient. Errors name the parameter and the engine. */
mhub_status mhub_dp_check_params(const mhub_param_list *params, const char *engine,
                                 mhub_backend **be);
/* The same for an engine that also takes 16-bit models: every trainable
 * parameter has one dtype (returned in *dtype) and an f32 or same-dtype
 * gradient. */
mhub_status mhub_dp_check_params_any(const mhub_param_list *params, const char *engine,
                                     mhub_backend **be, mhub_dtype *dtype);

/* The dtype an engine keeps and reduces gradients in: f32 with
 * grad_reduce_in_fp32 (or for an f32 model), else the model's. Deterministic
 * mode and the NaN check need f32: MHUB_ERR_UNSUPPORTED naming the engine
 * and the fix otherwise. */
mhub_status mhub_dp_grad_dtype(const mhub_ddp_config *cfg, mhub_dtype model_dtype,
                               const char *engine, mhub_dtype *out);

/* How a gradient of n elements of dtype dt is made a dp-mean by the
 * coming collective, per the config: with loss_is_global_mean nothing (the
 * loss already carries 1/global batch), with average_in_collective
 * MHUB_AVG, else Megatron-Core's default, a pre-scale by 1/dp here and
 * MHUB_SUM (for a 16-bit gradient MHUB_AVG instead, which divides in f32
 * and rounds once rather than rounding the pre-scaled values). */
mhub_status mhub_dp_prepare_reduce(const mhub_ddp_config *cfg, mhub_backend *be, mhub_comm *dp,
                                   void *data, mhub_dtype dt, int64_t n, mhub_reduce_op *op);

/* The order in which gradient buckets are reduced. A bucket may start
 * once every parameter in it reported its gradient ready on the last
 * micro-batch, and buckets start strictly in index order on every rank
 * (collectives on a communicator must match everywhere), so one that is
 * complete waits for the lower ones. Shared by DDP and the distributed
 * optimizer; `next` is the first bucket not yet issued. */
typedef struct mhub_grad_schedule {
    int num_params;
    int num_buckets;
    int *bucket_params;   /* parameters per bucket */
    int *ready;           /* of those, reported ready this step */
    bool *param_ready;
    int next;             /* buckets [0, next) are issued */
    bool last_microbatch; /* false inside a no_sync scope */
} mhub_grad_schedule;

/* param_bucket[i]: bucket of parameter i, or -1 for one without gradient. */
mhub_status mhub_schedule_init(mhub_grad_schedule *s, int num_params, const int *param_bucket,
                               int num_buckets);
void mhub_schedule_free(mhub_grad_schedule *s);
/* A new step: nothing ready, nothing issued. */
void mhub_schedule_reset(mhub_grad_schedule *s);
/* Count parameter `param` of bucket `bucket` ready: false (nothing
 * counted) inside no_sync, for a parameter without bucket, or when it was
 * already reported this step. */
bool mhub_schedule_ready(mhub_grad_schedule *s, int param, int bucket);
/* Whether bucket `next` is complete and may be issued now. */
bool mhub_schedule_can_issue(const mhub_grad_schedule *s);
mhub_status mhub_schedule_no_sync_begin(mhub_grad_schedule *s);
mhub_status mhub_schedule_no_sync_end(mhub_grad_schedule *s);

#define MHUB_SUMTREE_LEVELS 40

typedef struct mhub_sumtree {
    mhub_backend *be;
    mhub_comm *dp;
    int64_t numel;
    float *level[MHUB_SUMTREE_LEVELS]; /* level l: the sum of 2^l shards, when full */
    bool full[MHUB_SUMTREE_LEVELS];
    int64_t shards;
    float *scratch;                    /* receive buffer of the halving exchange */
} mhub_sumtree;

/* dp must have a power-of-two size (MHUB_ERR_INVALID_ARG naming the group
 * otherwise). Buffers are allocated on first use, i.e. in the first step. */
mhub_status mhub_sumtree_init(mhub_sumtree *t, mhub_backend *be, mhub_comm *dp, int64_t numel);
void mhub_sumtree_free(mhub_sumtree *t);
/* Forget folded shards (a new step). */
void mhub_sumtree_reset(mhub_sumtree *t);
/* Fold the shard gradient in `buf` into the tree, then zero `buf`. */
mhub_status mhub_sumtree_fold(mhub_sumtree *t, float *buf);
/* Write this rank's subtree sum into `buf` (a power of two of shards
 * folded, else MHUB_ERR_STATE) and reset the tree. Local. */
mhub_status mhub_sumtree_collect(mhub_sumtree *t, float *buf);
/* Combine every rank's collected `buf` into the total, on every rank.
 * Collective. */
mhub_status mhub_sumtree_exchange(mhub_sumtree *t, float *buf);

/* Deterministic reduce-scatter for sharded engines: the sum over ranks of
 * full[n] (n divisible by the power-of-two dp size) by recursive halving
 * with partners r^1, r^2, ... (the same tree as mhub_sumtree_exchange),
 * rank r's block [r*n/P, (r+1)*n/P) written to out. `full` is
 * overwritten; scratch holds n/2 floats. Collective. */
mhub_status mhub_tree_reduce_scatter(mhub_comm *dp, mhub_backend *be, float *full, int64_t n,
                                     float *scratch, float *out);

#endif
