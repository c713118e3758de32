/* engine.h - one interface over the three data-parallel engines.
 *
 * DDP (ddp.h), the distributed optimizer (distopt.h) and FSDP (fsdp.h)
 * differ in what they shard, not in how a training loop drives them. This
 * wrapper gives them one shape, owns the optimizer for DDP (the other two
 * own theirs), and is what `mhub train` and the provider's get_model use:
 *
 *   mhub_dp_engine_create(kind, params, dp, ddp_cfg, optim_cfg, &e);
 *   install mhub_dp_engine_hooks(e, ...) on the model;
 *   per step:  zero_grad;
 *              for each micro-batch k of K: micro_begin(e, k, K),
 *                  forward, backward, micro_end(e, k, K);
 *              finish_grad_sync; [clip_grad_norm;] step.
 * micro_begin/end open a no_sync scope for all but the last micro-batch,
 * or, in deterministic mode, fold each micro-shard into the engine's
 * summation tree. Which part of the global batch a rank's micro-batch k
 * holds is mhub_dp_engine_shard_index's answer: the global batch is cut
 * into ranks x num_micro equal shards, and every engine sums them in the
 * same fixed tree in deterministic mode, so DDP, distopt and FSDP reach
 * the same bits. */
#ifndef MHUB_ENGINE_H
#define MHUB_ENGINE_H

#include "mhub/ddp.h"
#include "mhub/fsdp.h"
#include "mhub/module.h"
#include "mhub/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mhub_dp_engine_kind {
    MHUB_DP_DDP = 0,      /* replicated parameters, all-reduced gradients */
    MHUB_DP_DISTOPT = 1,  /* ZeRO-1/2: sharded optimizer state, reduce-scatter + all-gather */
    MHUB_DP_FSDP = 2      /* ZeRO-3: parameters, gradients and state all sharded */
} mhub_dp_engine_kind;

/* "ddp", "distopt", "fsdp" and back; parse returns 0, or -1 when unknown. */
int mhub_dp_engine_parse(const char *name, mhub_dp_engine_kind *out);
const char *mhub_dp_engine_name(mhub_dp_engine_kind kind);

typedef struct mhub_dp_engine mhub_dp_engine;

/* fsdp_opts may be NULL (defaults); it is read only for MHUB_DP_FSDP.
 * For the distributed optimizer, ddp_cfg->overlap_param_gather selects
 * the overlapped parameter all-gather. Deterministic mode works with all
 * three. */
mhub_status mhub_dp_engine_create(mhub_dp_engine_kind kind, mhub_param_list *params,
                                  mhub_comm *dp, const mhub_ddp_config *ddp_cfg,
                                  const mhub_optim_config *optim_cfg,
                                  const mhub_fsdp_options *fsdp_opts, mhub_dp_engine **out);
void mhub_dp_engine_free(mhub_dp_engine *e);

/* Per-rank memory of an engine over a parameter list, in bytes: what
 * mhub_dp_engine_create plus the first training step allocate, counted as
 * the backend's allocator counts (requested bytes), plus the model's own
 * parameter storage that stays in use. */
typedef struct mhub_dp_memory {
    int64_t param_bytes;       /* parameter values the rank holds: DDP every parameter
                                * in its dtype (the model's storage); distopt the padded
                                * value buffer (model dtype) + parameters outside it;
                                * FSDP the model-dtype value shards */
    int64_t grad_bytes;        /* DDP the gradient buffer, distopt the padded gradient
                                * buffer (f32 or model dtype, see mhub_dp_grad_dtype's
                                * rule in ddp.h); FSDP the f32 gradient shards */
    int64_t main_param_bytes;  /* f32 main copies: DDP and FSDP of 16-bit models only
                                * (full for DDP, shards for FSDP); distopt always, for
                                * this rank's shards */
    int64_t optim_state_bytes; /* f32 optimizer state (0, 1 or 2 arrays): full for DDP,
                                * shards for distopt and FSDP */
    int64_t gathered_bytes;    /* FSDP: the full-unit buffers allocated once and reused:
                                * value gather slots (model dtype) and gradient slots
                                * (gradient dtype); 0 for the others */
    int64_t scratch_bytes;     /* f32 widening scratch for 16-bit gradients, and
                                * deterministic mode's buffers for one micro-shard per
                                * rank (each doubling of micro-shards per rank adds a
                                * gradient-sized f32 buffer, allocated in the first step) */
    int64_t padding_elems;     /* elements of the padded flat layout holding no
                                * parameter: distopt's buffers, FSDP's unit vectors
                                * (summed over the ranks' shards); 0 for DDP */
    int64_t total_bytes;       /* the sum of the *_bytes fields */
} mhub_dp_memory;

/* Estimate, without allocating anything proportional to the model, the
 * memory one of dp_size ranks holds with engine `kind` over `params`,
 * which may be a meta list (shapes, no storage), so a 175-billion-
 * parameter model is sized at once. It uses the engines' own planners and
 * sizing rules and returns the errors mhub_dp_engine_create would for the
 * same list and configs (short of the storage checks). fsdp_opts may be
 * NULL (defaults). DDP's gradient buffer is counted even when it lives in
 * the communicator's shared-memory window rather than on the backend. */
mhub_status mhub_dp_engine_estimate_memory(mhub_dp_engine_kind kind,
                                           const mhub_param_list *params, int dp_size,
                                           const mhub_ddp_config *ddp_cfg,
                                           const mhub_optim_config *optim_cfg,
                                           const mhub_fsdp_options *fsdp_opts,
                                           mhub_dp_memory *out);

mhub_dp_engine_kind mhub_dp_engine_kind_of(const mhub_dp_engine *e);

/* What the model must call: a grad-ready hook (NULL for FSDP, which works
 * per unit) and unit hooks (empty for DDP). */
mhub_status mhub_dp_engine_hooks(mhub_dp_engine *e, mhub_grad_ready_fn *grad_ready,
                                 void **grad_ready_user, mhub_unit_hooks *unit_hooks);

mhub_status mhub_dp_engine_zero_grad(mhub_dp_engine *e);
mhub_status mhub_dp_engine_micro_begin(mhub_dp_engine *e, int micro, int num_micro);
mhub_status mhub_dp_engine_micro_end(mhub_dp_engine *e, int micro, int num_micro);
/* The global shard (of ranks x num_micro, in batch order) that `rank`
 * processes as its micro-batch `micro`: rank * num_micro + micro, except
 * for deterministic FSDP, which works in rounds of adjacent shards:
 * micro * ranks + rank. -1 on bad arguments. */
int64_t mhub_dp_engine_shard_index(const mhub_dp_engine *e, int rank, int ranks, int micro,
                                   int num_micro);
mhub_status mhub_dp_engine_finish_grad_sync(mhub_dp_engine *e);
/* Gradient-norm clipping, between finish_grad_sync and step (PyTorch's
 * clip_grad_norm_ over the whole model): the global L2 norm of the
 * reduced, dp-averaged gradient the step will use, and, when max_norm > 0
 * and the norm exceeds it, those gradients scaled in place by
 * max_norm / (norm + 1e-6). max_norm 0 only measures. *norm_out (may be
 * NULL) gets the norm, bitwise the same on every rank: DDP sums its full
 * buffer locally; distopt and FSDP sum the squares (in f64) of the
 * gradient elements each rank's step reads (padding excluded, every
 * element on exactly one rank) and add the ranks' sums in rank order.
 * 16-bit gradient buffers are read and scaled through f32.
 * Deterministic mode: DDP and the distributed optimizer (which then holds
 * the full reduced gradient on every rank) sum per parameter in list
 * order, so the norm, and the clipped training, are bitwise the same on
 * any dp size and for both engines. FSDP's norm comes from rank-sized
 * partial sums whose grouping depends on the dp size, so there it may
 * differ in the last bits across dp sizes (and a clipped run with it).
 * Errors: a negative or non-finite max_norm (MHUB_ERR_INVALID_ARG); no
 * successful finish_grad_sync since the last zero_grad, micro-batch or
 * step (MHUB_ERR_STATE); a NaN or Inf norm (MHUB_ERR_NUMERIC, nothing
 * scaled). Collective for distopt (outside deterministic mode) and FSDP. */
mhub_status mhub_dp_engine_clip_grad_norm(mhub_dp_engine *e, double max_norm, double *norm_out);
mhub_status mhub_dp_engine_step(mhub_dp_engine *e);
mhub_status mhub_dp_engine_set_lr(mhub_dp_engine *e, float lr);

/* Make the parameter values readable outside a training forward (an
 * evaluation): waits for the distributed optimizer's gathers. FSDP
 * parameters are read through its hooks, which stay installed. */
mhub_status mhub_dp_engine_sync_params(mhub_dp_engine *e);

/* SHA-256 of the full parameters (mhub_param_list_digest's format),
 * gathered when sharded. Collective. */
mhub_status mhub_dp_engine_digest(mhub_dp_engine *e, char hex[65]);

/* ---- checkpoint state -------------------------------------------------------
 * A checkpoint stores everything as FULL f32 tensors by parameter, so it
 * loads at any dp size and under any engine layout: the getters gather a
 * sharded engine's pieces (collective: every rank calls them for every
 * index, in the same order) and the setters keep each rank's own part
 * (every rank passes the same full array). Call them between steps. */

/* The engine's parameter list (names, shapes, dtypes; FSDP's are meta). */
const mhub_param_list *mhub_dp_engine_params(const mhub_dp_engine *e);

/* Optimizer-state tensors parameter i has: the optimizer's arrays
 * (AdamW "exp_avg", "exp_avg_sq"; SGD with momentum "momentum"), then
 * "main_param", the f32 main copy, for a 16-bit parameter. 0 for a frozen
 * parameter or a bad index. */
int mhub_dp_engine_state_count(const mhub_dp_engine *e, int param_index);
/* The name of state `which` of parameter i, or NULL out of range. */
const char *mhub_dp_engine_state_name(const mhub_dp_engine *e, int param_index, int which);

/* Parameter i's full values as f32 host memory (numel floats).
 * get_param, set_param and get_state are collective over dp for distopt
 * and FSDP (they gather shards or a pending parameter sync): every rank
 * calls them, and bad arguments on one rank fail on all, marked
 * "(from rank r)", rather than leaving the others waiting. */
mhub_status mhub_dp_engine_get_param(mhub_dp_engine *e, int param_index, float *full);
/* Replace parameter i's values (rounded to its dtype). */
mhub_status mhub_dp_engine_set_param(mhub_dp_engine *e, int param_index, const float *full);
/* State `which` of parameter i, full, as f32 host memory. */
mhub_status mhub_dp_engine_get_state(mhub_dp_engine *e, int param_index, int which,
                                     float *full);
mhub_status mhub_dp_engine_set_state(mhub_dp_engine *e, int param_index, int which,
                                     const float *full);
/* Optimizer steps taken (AdamW's bias correction counts them). */
int64_t mhub_dp_engine_optim_steps(const mhub_dp_engine *e);
mhub_status mhub_dp_engine_set_optim_steps(mhub_dp_engine *e, int64_t steps);

typedef struct mhub_dp_engine_stats {
    int64_t steps;
    int64_t collectives;          /* gradient collectives started */
    int64_t collectives_in_backward;
    double sync_wait_seconds;     /* time inside finish_grad_sync */
} mhub_dp_engine_stats;

void mhub_dp_engine_get_stats(const mhub_dp_engine *e, mhub_dp_engine_stats *out);

#ifdef __cplusplus
}
#endif
#endif
