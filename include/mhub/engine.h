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
 *              finish_grad_sync; step.
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
mhub_status mhub_dp_engine_step(mhub_dp_engine *e);
mhub_status mhub_dp_engine_set_lr(mhub_dp_engine *e, float lr);

/* Make the parameter values readable outside a training forward (an
 * evaluation): waits for the distributed optimizer's gathers. FSDP
 * parameters are read through its hooks, which stay installed. */
mhub_status mhub_dp_engine_sync_params(mhub_dp_engine *e);

/* SHA-256 of the full parameters (mhub_param_list_digest's format),
 * gathered when sharded. Collective. */
mhub_status mhub_dp_engine_digest(mhub_dp_engine *e, char hex[65]);

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
