/* engine.c - one training-loop interface over DDP, the distributed
 * optimizer and FSDP (see engine.h). Each call is a switch to the engine's
 * own function; the only logic here is DDP's optimizer (the other two
 * engines own theirs) and the micro-batch protocol. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/backend.h"
#include "mhub/digest.h"
#include "mhub/distopt.h"
#include "mhub/engine.h"
#include "src/dp_common.h"

struct mhub_dp_engine {
    mhub_dp_engine_kind kind;
    mhub_param_list *params;
    mhub_comm *dp;             /* for the sharded engines' gradient norm */
    mhub_backend *be;          /* the parameters' backend (FSDP leaves them meta) */
    mhub_ddp_config ddp_cfg;
    mhub_optim_config optim;
    mhub_ddp *ddp;
    mhub_distopt *distopt;
    mhub_fsdp *fsdp;
    /* DDP only: per parameter [f32 main copy of a 16-bit parameter,
     * optimizer state 0, 1]; f32 scratch for widening 16-bit gradients
     * (NULL when the gradient buffer is f32) */
    float **state;
    float *grad32;
    int64_t optim_steps;
    /* finish_grad_sync succeeded and no zero_grad, micro-batch or step came
     * since: the gradients are the reduced ones the step will use */
    bool grads_synced;
};

static const char *const kind_names[] = {"ddp", "distopt", "fsdp"};

int mhub_dp_engine_parse(const char *name, mhub_dp_engine_kind *out)
{
    for (int k = 0; name && out && k < 3; k++)
        if (!strcmp(name, kind_names[k])) {
            *out = (mhub_dp_engine_kind)k;
            return 0;
        }
    return -1;
}

const char *mhub_dp_engine_name(mhub_dp_engine_kind kind)
{
    return kind >= MHUB_DP_DDP && kind <= MHUB_DP_FSDP ? kind_names[kind] : "invalid";
}

/* DDP's optimizer, per parameter: the optimizer state arrays and, for a
 * 16-bit parameter, its f32 main copy (the update happens there and is
 * rounded into the parameter once). A shared f32 scratch widens 16-bit
 * gradients. */
enum { SLOT_MAIN = 0, SLOTS = 3 };

/* What alloc_ddp_state allocates, in f32 elements; the memory estimate
 * reads the same sizes. */
typedef struct ddp_state_elems {
    int64_t main;    /* main copies of 16-bit parameters */
    int64_t state;   /* optimizer state, every array */
    int64_t widen;   /* the gradient scratch: the largest trainable parameter */
} ddp_state_elems;

static ddp_state_elems ddp_state_size(const mhub_param_list *params,
                                      const mhub_optim_config *optim, bool grads_16bit)
{
    ddp_state_elems n = {0, 0, 0};
    int arrays = mhub_optim_state_arrays(optim);
    for (int i = 0; i < params->count; i++) {
        const mhub_param *p = &params->items[i];
        if (!p->requires_grad)
            continue;
        n.state += arrays * p->value.numel;
        n.main += p->value.dtype != MHUB_F32 ? p->value.numel : 0;
        if (grads_16bit && p->value.numel > n.widen)
            n.widen = p->value.numel;
    }
    return n;
}

static mhub_status alloc_f32(mhub_backend *be, int64_t n, float **out)
{
    void *mem = NULL;
    MHUB_TRY(be->ops->alloc(be, (size_t)n * sizeof(float), &mem));
    *out = mem;
    return MHUB_OK;
}

static mhub_status alloc_ddp_state(mhub_dp_engine *e)
{
    int arrays = mhub_optim_state_arrays(&e->optim), n = e->params->count;
    e->state = calloc((size_t)n * SLOTS, sizeof *e->state);
    if (!e->state)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "optimizer state table");
    bool grads_16bit = false;
    for (int i = 0; i < n; i++) {
        mhub_param *p = &e->params->items[i];
        if (!p->requires_grad)
            continue;
        float **slot = e->state + SLOTS * i;
        for (int a = 0; a < arrays; a++)
            MHUB_TRY(alloc_f32(e->be, p->value.numel, &slot[1 + a]));
        if (p->value.dtype != MHUB_F32) {
            MHUB_TRY(alloc_f32(e->be, p->value.numel, &slot[SLOT_MAIN]));
            MHUB_TRY(e->be->ops->cast(e->be, slot[SLOT_MAIN], MHUB_F32, p->value.data,
                                      p->value.dtype, p->value.numel));
        }
        /* the DDP engine gave every gradient the buffer's dtype */
        grads_16bit = grads_16bit || p->grad.dtype != MHUB_F32;
    }
    /* f32 gradients are read in place: no scratch */
    if (!grads_16bit)
        return MHUB_OK;
    return alloc_f32(e->be, ddp_state_size(e->params, &e->optim, true).widen, &e->grad32);
}

static void free_ddp_state(mhub_dp_engine *e)
{
    if (e->grad32)
        e->be->ops->free(e->be, e->grad32);
    if (!e->state)
        return;
    for (int i = 0; i < e->params->count * SLOTS; i++)
        if (e->state[i])
            e->be->ops->free(e->be, e->state[i]);
    free(e->state);
}

mhub_status mhub_dp_engine_create(mhub_dp_engine_kind kind, mhub_param_list *params,
                                  mhub_comm *dp, const mhub_ddp_config *ddp_cfg,
                                  const mhub_optim_config *optim_cfg,
                                  const mhub_fsdp_options *fsdp_opts, mhub_dp_engine **out)
{
    if (!params || !dp || !ddp_cfg || !optim_cfg || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "params, dp, configs or out is NULL");
    *out = NULL;
    if (kind < MHUB_DP_DDP || kind > MHUB_DP_FSDP)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "unknown data-parallel engine %d", (int)kind);
    MHUB_TRY(mhub_optim_config_validate(optim_cfg));
    mhub_dp_engine *e = calloc(1, sizeof *e);
    if (!e)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "engine wrapper");
    e->kind = kind;
    e->params = params;
    e->dp = dp;
    for (int i = 0; i < params->count && !e->be; i++)
        e->be = params->items[i].value.backend;
    e->ddp_cfg = *ddp_cfg;
    e->optim = *optim_cfg;
    mhub_status s;
    switch (kind) {
    case MHUB_DP_DDP:
        s = mhub_ddp_create(params, dp, ddp_cfg, &e->ddp);
        if (s == MHUB_OK)
            s = alloc_ddp_state(e);
        break;
    case MHUB_DP_DISTOPT:
        s = mhub_distopt_create(params, dp, ddp_cfg, optim_cfg, &e->distopt);
        if (s == MHUB_OK)
            s = mhub_distopt_set_overlap_param_gather(e->distopt, ddp_cfg->overlap_param_gather);
        break;
    default:
        s = mhub_fsdp_create(params, dp, ddp_cfg, fsdp_opts, optim_cfg, &e->fsdp);
        break;
    }
    if (s != MHUB_OK) {
        mhub_dp_engine_free(e);
        return s;
    }
    *out = e;
    return MHUB_OK;
}

void mhub_dp_engine_free(mhub_dp_engine *e)
{
    if (!e)
        return;
    free_ddp_state(e);
    mhub_ddp_free(e->ddp);
    mhub_distopt_free(e->distopt);
    mhub_fsdp_free(e->fsdp);
    free(e);
}

/* ---- memory estimate ------------------------------------------------------- */

/* DDP: the model keeps its parameters; the DDP engine adds the gradient
 * buffer (and deterministic mode's tree); this wrapper the optimizer state,
 * main copies of 16-bit parameters and the widening scratch. */
static mhub_status estimate_ddp(const mhub_param_list *params, int dp_size,
                                const mhub_ddp_config *ddp_cfg, const mhub_optim_config *optim,
                                mhub_dp_memory *out)
{
    MHUB_TRY(mhub_ddp_estimate_memory(params, dp_size, ddp_cfg, out));
    mhub_dtype model_dt, gdt;
    MHUB_TRY(mhub_dp_check_shapes(params, "ddp", &model_dt));
    MHUB_TRY(mhub_dp_grad_dtype(ddp_cfg, model_dt, "ddp", &gdt));
    for (int i = 0; i < params->count; i++)
        out->param_bytes += params->items[i].value.numel *
                            (int64_t)mhub_dtype_size(params->items[i].value.dtype);
    ddp_state_elems n = ddp_state_size(params, optim, gdt != MHUB_F32);
    const int64_t f32 = sizeof(float);
    out->main_param_bytes = n.main * f32;
    out->optim_state_bytes = n.state * f32;
    out->scratch_bytes += n.widen * f32;
    return MHUB_OK;
}

mhub_status mhub_dp_engine_estimate_memory(mhub_dp_engine_kind kind,
                                           const mhub_param_list *params, int dp_size,
                                           const mhub_ddp_config *ddp_cfg,
                                           const mhub_optim_config *optim_cfg,
                                           const mhub_fsdp_options *fsdp_opts,
                                           mhub_dp_memory *out)
{
    if (!params || !ddp_cfg || !optim_cfg || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "params, configs or out is NULL");
    memset(out, 0, sizeof *out);
    if (kind < MHUB_DP_DDP || kind > MHUB_DP_FSDP)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "unknown data-parallel engine %d", (int)kind);
    if (dp_size < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "dp size %d: give at least one rank", dp_size);
    MHUB_TRY(mhub_optim_config_validate(optim_cfg));
    mhub_status s;
    switch (kind) {
    case MHUB_DP_DDP: s = estimate_ddp(params, dp_size, ddp_cfg, optim_cfg, out); break;
    case MHUB_DP_DISTOPT:
        s = mhub_distopt_estimate_memory(params, dp_size, ddp_cfg, optim_cfg, out);
        break;
    default:
        s = mhub_fsdp_estimate_memory(params, dp_size, ddp_cfg, fsdp_opts, optim_cfg, out);
        break;
    }
    if (s != MHUB_OK) {
        memset(out, 0, sizeof *out);
        return s;
    }
    out->total_bytes = out->param_bytes + out->grad_bytes + out->main_param_bytes +
                       out->optim_state_bytes + out->gathered_bytes + out->scratch_bytes;
    return MHUB_OK;
}

mhub_dp_engine_kind mhub_dp_engine_kind_of(const mhub_dp_engine *e)
{
    return e ? e->kind : MHUB_DP_DDP;
}

mhub_status mhub_dp_engine_hooks(mhub_dp_engine *e, mhub_grad_ready_fn *grad_ready,
                                 void **grad_ready_user, mhub_unit_hooks *unit_hooks)
{
    if (!e || !grad_ready || !grad_ready_user || !unit_hooks)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or an out pointer is NULL");
    memset(unit_hooks, 0, sizeof *unit_hooks);
    *grad_ready = NULL;
    *grad_ready_user = NULL;
    switch (e->kind) {
    case MHUB_DP_DDP:
        *grad_ready = mhub_ddp_grad_ready;
        *grad_ready_user = e->ddp;
        return MHUB_OK;
    case MHUB_DP_DISTOPT:
        *grad_ready = mhub_distopt_grad_ready;
        *grad_ready_user = e->distopt;
        return mhub_distopt_unit_hooks(e->distopt, unit_hooks);
    default:
        return mhub_fsdp_unit_hooks(e->fsdp, unit_hooks);
    }
}

static mhub_status check_engine(const mhub_dp_engine *e)
{
    return e ? MHUB_OK : MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
}

mhub_status mhub_dp_engine_zero_grad(mhub_dp_engine *e)
{
    MHUB_TRY(check_engine(e));
    e->grads_synced = false;
    switch (e->kind) {
    case MHUB_DP_DDP: return mhub_ddp_zero_grad(e->ddp);
    case MHUB_DP_DISTOPT: return mhub_distopt_zero_grad(e->distopt);
    default: return mhub_fsdp_zero_grad(e->fsdp);
    }
}

static mhub_status check_micro(int micro, int num_micro)
{
    if (num_micro < 1 || micro < 0 || micro >= num_micro)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "micro-batch %d of %d", micro, num_micro);
    return MHUB_OK;
}

/* All but the last micro-batch run inside a no_sync scope (FSDP
 * accumulates reduced shards instead and needs no scope). */
mhub_status mhub_dp_engine_micro_begin(mhub_dp_engine *e, int micro, int num_micro)
{
    MHUB_TRY(check_engine(e));
    MHUB_TRY(check_micro(micro, num_micro));
    e->grads_synced = false;
    if (e->ddp_cfg.deterministic || micro == num_micro - 1)
        return MHUB_OK;
    switch (e->kind) {
    case MHUB_DP_DDP: return mhub_ddp_no_sync_begin(e->ddp);
    case MHUB_DP_DISTOPT: return mhub_distopt_no_sync_begin(e->distopt);
    default: return MHUB_OK;
    }
}

mhub_status mhub_dp_engine_micro_end(mhub_dp_engine *e, int micro, int num_micro)
{
    MHUB_TRY(check_engine(e));
    MHUB_TRY(check_micro(micro, num_micro));
    if (e->ddp_cfg.deterministic) {
        switch (e->kind) {
        case MHUB_DP_DDP: return mhub_ddp_shard_done(e->ddp);
        case MHUB_DP_DISTOPT: return mhub_distopt_shard_done(e->distopt);
        default: return mhub_fsdp_shard_done(e->fsdp);
        }
    }
    if (micro == num_micro - 1)
        return MHUB_OK;
    switch (e->kind) {
    case MHUB_DP_DDP: return mhub_ddp_no_sync_end(e->ddp);
    case MHUB_DP_DISTOPT: return mhub_distopt_no_sync_end(e->distopt);
    default: return MHUB_OK;
    }
}

int64_t mhub_dp_engine_shard_index(const mhub_dp_engine *e, int rank, int ranks, int micro,
                                   int num_micro)
{
    if (!e || ranks < 1 || rank < 0 || rank >= ranks || micro < 0 || micro >= num_micro)
        return -1;
    /* deterministic FSDP reduces one round of P adjacent shards at a time */
    if (e->ddp_cfg.deterministic && e->kind == MHUB_DP_FSDP)
        return (int64_t)micro * ranks + rank;
    return (int64_t)rank * num_micro + micro;
}

static mhub_status finish_grad_sync(mhub_dp_engine *e)
{
    switch (e->kind) {
    case MHUB_DP_DDP: return mhub_ddp_finish_grad_sync(e->ddp);
    case MHUB_DP_DISTOPT: return mhub_distopt_finish_grad_sync(e->distopt);
    default: return mhub_fsdp_finish_grad_sync(e->fsdp);
    }
}

mhub_status mhub_dp_engine_finish_grad_sync(mhub_dp_engine *e)
{
    MHUB_TRY(check_engine(e));
    mhub_status s = finish_grad_sync(e);
    e->grads_synced = s == MHUB_OK;
    return s;
}

/* ---- gradient clipping ------------------------------------------------------ */

/* DDP: every rank holds the same full reduced gradients (the all-reduce
 * gives every rank the same bits), so each computes the same sum with no
 * communication, parameter by parameter in list order: the order the
 * deterministic distributed optimizer uses too. 16-bit gradients are
 * widened through the optimizer's f32 scratch. */
static mhub_status ddp_sum_squares(mhub_dp_engine *e, double *out)
{
    *out = 0;
    for (int i = 0; i < e->params->count; i++) {
        const mhub_param *p = &e->params->items[i];
        if (!p->requires_grad)
            continue;
        const float *g = p->grad.data;
        if (p->grad.dtype != MHUB_F32) {
            MHUB_TRY(e->be->ops->cast(e->be, e->grad32, MHUB_F32, g, p->grad.dtype,
                                      p->grad.numel));
            g = e->grad32;
        }
        double part = 0;
        MHUB_TRY(e->be->ops->sum_squares(e->be, g, p->grad.numel, &part));
        *out += part;
    }
    return MHUB_OK;
}

static mhub_status ddp_scale(mhub_dp_engine *e, float factor)
{
    const mhub_backend_ops *op = e->be->ops;
    for (int i = 0; i < e->params->count; i++) {
        mhub_param *p = &e->params->items[i];
        if (!p->requires_grad)
            continue;
        if (p->grad.dtype == MHUB_F32) {
            MHUB_TRY(op->scale(e->be, p->grad.data, p->grad.numel, factor));
            continue;
        }
        MHUB_TRY(op->cast(e->be, e->grad32, MHUB_F32, p->grad.data, p->grad.dtype,
                          p->grad.numel));
        MHUB_TRY(op->scale(e->be, e->grad32, p->grad.numel, factor));
        MHUB_TRY(op->cast(e->be, p->grad.data, p->grad.dtype, e->grad32, MHUB_F32,
                          p->grad.numel));
    }
    return MHUB_OK;
}

/* The ranks' partial sums added in rank order on every rank, so all get
 * the same bits. The comm reduces f32 only: each double travels as its 8
 * bytes (two f32 slots, copied, never added) through an allgather. */
static mhub_status sum_over_ranks(mhub_comm *dp, double mine, double *total)
{
    double *sums = calloc((size_t)dp->size, sizeof *sums);
    if (!sums)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "%d partial gradient norms", dp->size);
    mhub_status s = mhub_comm_allgather(dp, &mine, sums, 2, MHUB_F32);
    *total = 0;
    for (int r = 0; s == MHUB_OK && r < dp->size; r++)
        *total += sums[r];
    free(sums);
    return s;
}

/* The sum of squares of the gradient the step will read, over all ranks. */
static mhub_status grad_sum_squares(mhub_dp_engine *e, double *out)
{
    double mine = 0;
    bool partial = true;
    switch (e->kind) {
    case MHUB_DP_DDP: return ddp_sum_squares(e, out);
    case MHUB_DP_DISTOPT:
        MHUB_TRY(mhub_distopt_grad_sum_squares(e->distopt, &mine, &partial));
        break;
    default: MHUB_TRY(mhub_fsdp_grad_sum_squares(e->fsdp, &mine)); break;
    }
    if (!partial) {
        *out = mine;
        return MHUB_OK;
    }
    return sum_over_ranks(e->dp, mine, out);
}

static mhub_status scale_grads(mhub_dp_engine *e, float factor)
{
    switch (e->kind) {
    case MHUB_DP_DDP: return ddp_scale(e, factor);
    case MHUB_DP_DISTOPT: return mhub_distopt_scale_grads(e->distopt, factor);
    default: return mhub_fsdp_scale_grads(e->fsdp, factor);
    }
}

mhub_status mhub_dp_engine_clip_grad_norm(mhub_dp_engine *e, double max_norm, double *norm_out)
{
    MHUB_TRY(check_engine(e));
    if (!(max_norm >= 0) || isinf(max_norm))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "max_norm %g: use a finite value >= 0 (0 measures without clipping)",
                          max_norm);
    if (!e->grads_synced)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "clip_grad_norm needs the reduced gradients: call it after a "
                          "successful finish_grad_sync and before the step");
    double ss = 0;
    MHUB_TRY(grad_sum_squares(e, &ss));
    double norm = sqrt(ss);
    if (norm_out)
        *norm_out = norm;
    if (!isfinite(norm))
        return MHUB_ERROR(MHUB_ERR_NUMERIC,
                          "gradient norm is %g (a NaN or Inf gradient): nothing was scaled",
                          norm);
    if (max_norm > 0 && norm > max_norm)
        return scale_grads(e, (float)(max_norm / (norm + 1e-6)));
    return MHUB_OK;
}

static mhub_status ddp_step(mhub_dp_engine *e)
{
    const mhub_backend_ops *op = e->be->ops;
    e->optim_steps++;
    for (int i = 0; i < e->params->count; i++) {
        mhub_param *p = &e->params->items[i];
        if (!p->requires_grad)
            continue;
        float **slot = e->state + SLOTS * i;
        const float *grad = p->grad.data;
        if (p->grad.dtype != MHUB_F32) {
            MHUB_TRY(op->cast(e->be, e->grad32, MHUB_F32, p->grad.data, p->grad.dtype,
                              p->grad.numel));
            grad = e->grad32;
        }
        float *target = slot[SLOT_MAIN] ? slot[SLOT_MAIN] : p->value.data;
        MHUB_TRY(mhub_optim_update(e->be, &e->optim, target, grad, slot + 1, p->value.numel,
                                   e->optim_steps));
        if (slot[SLOT_MAIN])
            MHUB_TRY(op->cast(e->be, p->value.data, p->value.dtype, slot[SLOT_MAIN], MHUB_F32,
                              p->value.numel));
    }
    return MHUB_OK;
}

mhub_status mhub_dp_engine_step(mhub_dp_engine *e)
{
    MHUB_TRY(check_engine(e));
    e->grads_synced = false;
    switch (e->kind) {
    case MHUB_DP_DDP: return ddp_step(e);
    case MHUB_DP_DISTOPT: return mhub_distopt_step(e->distopt);
    default: return mhub_fsdp_step(e->fsdp);
    }
}

mhub_status mhub_dp_engine_set_lr(mhub_dp_engine *e, float lr)
{
    MHUB_TRY(check_engine(e));
    mhub_optim_config c = e->optim;
    c.lr = lr;
    MHUB_TRY(mhub_optim_config_validate(&c));
    e->optim = c;
    switch (e->kind) {
    case MHUB_DP_DDP: return MHUB_OK;
    case MHUB_DP_DISTOPT: return mhub_distopt_set_lr(e->distopt, lr);
    default: return mhub_fsdp_set_lr(e->fsdp, lr);
    }
}

mhub_status mhub_dp_engine_sync_params(mhub_dp_engine *e)
{
    MHUB_TRY(check_engine(e));
    return e->kind == MHUB_DP_DISTOPT ? mhub_distopt_wait_params(e->distopt) : MHUB_OK;
}

/* FSDP keeps only shards: gather into a same-shaped scratch list. */
static mhub_status fsdp_digest(mhub_dp_engine *e, char hex[65])
{
    mhub_param_list full = {0};
    mhub_status s = MHUB_OK;
    for (int i = 0; s == MHUB_OK && i < e->params->count; i++) {
        const mhub_param *p = &e->params->items[i];
        s = mhub_param_list_add(&full, p->name, p->value.dtype, p->value.ndim, p->value.shape,
                                MHUB_INIT_ZEROS, 0.0f, NULL);
    }
    if (s == MHUB_OK)
        s = mhub_param_list_materialize(&full, e->be, 0);
    if (s == MHUB_OK)
        s = mhub_fsdp_full_params(e->fsdp, &full);
    if (s == MHUB_OK)
        s = mhub_param_list_digest(&full, hex);
    mhub_param_list_free(&full);
    return s;
}

mhub_status mhub_dp_engine_digest(mhub_dp_engine *e, char hex[65])
{
    MHUB_TRY(check_engine(e));
    if (!hex)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "hex is NULL");
    if (e->kind == MHUB_DP_FSDP)
        return fsdp_digest(e, hex);
    MHUB_TRY(mhub_dp_engine_sync_params(e));
    return mhub_param_list_digest(e->params, hex);
}

void mhub_dp_engine_get_stats(const mhub_dp_engine *e, mhub_dp_engine_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!e)
        return;
    if (e->kind == MHUB_DP_DDP) {
        mhub_ddp_stats st;
        mhub_ddp_get_stats(e->ddp, &st);
        *out = (mhub_dp_engine_stats){st.steps, st.buckets_issued, st.issued_in_backward,
                                      st.sync_wait_seconds};
    } else if (e->kind == MHUB_DP_DISTOPT) {
        mhub_distopt_stats st;
        mhub_distopt_get_stats(e->distopt, &st);
        *out = (mhub_dp_engine_stats){st.grad_syncs, st.buckets_issued, st.issued_in_backward,
                                      st.sync_wait_seconds};
    } else {
        mhub_fsdp_stats st;
        mhub_fsdp_get_stats(e->fsdp, &st);
        *out = (mhub_dp_engine_stats){st.steps, st.reduce_scatters, st.reduce_scatters,
                                      st.wait_seconds};
    }
}

/* ---- checkpoint state ------------------------------------------------------ */

const mhub_param_list *mhub_dp_engine_params(const mhub_dp_engine *e)
{
    return e ? e->params : NULL;
}

static bool valid_param(const mhub_dp_engine *e, int i)
{
    return e && i >= 0 && i < e->params->count;
}

int mhub_dp_engine_state_count(const mhub_dp_engine *e, int param_index)
{
    if (!valid_param(e, param_index) || !e->params->items[param_index].requires_grad)
        return 0;
    const mhub_param *p = &e->params->items[param_index];
    return mhub_optim_state_arrays(&e->optim) + (p->value.dtype != MHUB_F32 ? 1 : 0);
}

const char *mhub_dp_engine_state_name(const mhub_dp_engine *e, int param_index, int which)
{
    if (which < 0 || which >= mhub_dp_engine_state_count(e, param_index))
        return NULL;
    int arrays = mhub_optim_state_arrays(&e->optim);
    if (which == arrays)
        return "main_param";
    if (e->optim.kind == MHUB_OPTIM_ADAMW)
        return which == 0 ? "exp_avg" : "exp_avg_sq";
    return "momentum";
}

/* DDP keeps everything full on every rank; the distributed optimizer and
 * FSDP gather their shards (distopt.h, fsdp.h). */
static mhub_status check_state_access(const mhub_dp_engine *e, int param_index)
{
    MHUB_TRY(check_engine(e));
    if (!valid_param(e, param_index))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter index %d of %d", param_index,
                          e->params->count);
    return MHUB_OK;
}

/* Checked state index `which` of parameter i, and the sharded engines'
 * name for it (-1: the f32 main params). */
static mhub_status check_which(const mhub_dp_engine *e, int i, int which, int *distopt_which)
{
    if (which < 0 || which >= mhub_dp_engine_state_count(e, i))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "state %d of parameter %d", which, i);
    int arrays = mhub_optim_state_arrays(&e->optim);
    *distopt_which = which == arrays ? -1 : which;
    return MHUB_OK;
}

/* The DDP slot that state `which` of parameter i lives in. */
static float *ddp_state_slot(mhub_dp_engine *e, int i, int which)
{
    int arrays = mhub_optim_state_arrays(&e->optim);
    return e->state[SLOTS * i + (which == arrays ? SLOT_MAIN : 1 + which)];
}

/* n values of dtype dt on the backend to/from f32 host memory; 16-bit
 * values go through an f32 scratch on the backend (ops->cast works on
 * backend memory). */
static mhub_status to_host_f32(mhub_backend *be, float *dst, const void *src, mhub_dtype dt,
                               int64_t n)
{
    size_t bytes = (size_t)n * sizeof(float);
    if (dt == MHUB_F32)
        return be->ops->copy(be, dst, src, bytes, MHUB_COPY_DEVICE_TO_HOST);
    float *tmp = NULL;
    MHUB_TRY(alloc_f32(be, n, &tmp));
    mhub_status s = be->ops->cast(be, tmp, MHUB_F32, src, dt, n);
    if (s == MHUB_OK)
        s = be->ops->copy(be, dst, tmp, bytes, MHUB_COPY_DEVICE_TO_HOST);
    be->ops->free(be, tmp);
    return s;
}

static mhub_status from_host_f32(mhub_backend *be, void *dst, mhub_dtype dt, const float *src,
                                 int64_t n)
{
    size_t bytes = (size_t)n * sizeof(float);
    if (dt == MHUB_F32)
        return be->ops->copy(be, dst, src, bytes, MHUB_COPY_HOST_TO_DEVICE);
    float *tmp = NULL;
    MHUB_TRY(alloc_f32(be, n, &tmp));
    mhub_status s = be->ops->copy(be, tmp, src, bytes, MHUB_COPY_HOST_TO_DEVICE);
    if (s == MHUB_OK)
        s = be->ops->cast(be, dst, dt, tmp, MHUB_F32, n);
    be->ops->free(be, tmp);
    return s;
}

/* DDP's and the distributed optimizer's parameters are full on every rank
 * (the latter once its gathers are waited for); FSDP's are its f32 master
 * shards, gathered. */
/* The checks of a call that may communicate (a gather, a pending
 * parameter sync): agreed over dp for the sharded engines, so that a rank
 * with bad arguments fails together with the others instead of leaving
 * them in a collective. DDP's calls are local. */
static mhub_status check_collective_access(mhub_dp_engine *e, int param_index, const void *full)
{
    MHUB_TRY(check_engine(e));
    mhub_status s = check_state_access(e, param_index);
    if (s == MHUB_OK && !full)
        s = MHUB_ERROR(MHUB_ERR_INVALID_ARG, "full is NULL");
    return e->kind == MHUB_DP_DDP ? s : mhub_dp_agree(e->dp, s);
}

/* x rounded to dt (nearest, ties to even) and widened back to f32. */
static void round_to_dtype(float *x, int64_t n, mhub_dtype dt)
{
    if (dt == MHUB_BF16)
        for (int64_t i = 0; i < n; i++)
            x[i] = mhub_bf16_to_f32(mhub_f32_to_bf16(x[i]));
    else if (dt == MHUB_F16)
        for (int64_t i = 0; i < n; i++)
            x[i] = mhub_f16_to_f32(mhub_f32_to_f16(x[i]));
}

mhub_status mhub_dp_engine_get_param(mhub_dp_engine *e, int param_index, float *full)
{
    MHUB_TRY(check_collective_access(e, param_index, full));
    if (e->kind == MHUB_DP_FSDP) {
        /* FSDP keeps f32 masters; the parameter is the master rounded to
         * its dtype, which is what the other engines return */
        MHUB_TRY(mhub_fsdp_get_state(e->fsdp, param_index, -1, full));
        round_to_dtype(full, e->params->items[param_index].value.numel,
                       e->params->items[param_index].value.dtype);
        return MHUB_OK;
    }
    MHUB_TRY(mhub_dp_engine_sync_params(e));
    const mhub_tensor *v = &e->params->items[param_index].value;
    return to_host_f32(e->be, full, v->data, v->dtype, v->numel);
}

/* DDP's optimizer (for a 16-bit parameter) and the distributed optimizer
 * update their f32 main copies and copy them into the parameters, so those
 * copies take the values too, or the next step would start from the old
 * ones ("main_param" state, when the checkpoint has it, then restores the
 * unrounded f32). */
mhub_status mhub_dp_engine_set_param(mhub_dp_engine *e, int param_index, const float *full)
{
    MHUB_TRY(check_collective_access(e, param_index, full));
    if (e->kind == MHUB_DP_FSDP)
        return mhub_fsdp_set_state(e->fsdp, param_index, -1, full);
    MHUB_TRY(mhub_dp_engine_sync_params(e));
    mhub_param *p = &e->params->items[param_index];
    MHUB_TRY(from_host_f32(e->be, p->value.data, p->value.dtype, full, p->value.numel));
    if (e->kind == MHUB_DP_DISTOPT && p->requires_grad)
        return mhub_distopt_set_state(e->distopt, param_index, -1, full);
    float *main_copy = e->kind == MHUB_DP_DDP ? e->state[SLOTS * param_index + SLOT_MAIN] : NULL;
    if (main_copy)
        return from_host_f32(e->be, main_copy, MHUB_F32, full, p->value.numel);
    return MHUB_OK;
}

mhub_status mhub_dp_engine_get_state(mhub_dp_engine *e, int param_index, int which,
                                     float *full)
{
    MHUB_TRY(check_engine(e));
    int dw = 0;
    mhub_status s = check_state_access(e, param_index);
    if (s == MHUB_OK)
        s = check_which(e, param_index, which, &dw);
    if (s == MHUB_OK && !full)
        s = MHUB_ERROR(MHUB_ERR_INVALID_ARG, "full is NULL");
    if (e->kind == MHUB_DP_DDP)
        return s == MHUB_OK ? to_host_f32(e->be, full, ddp_state_slot(e, param_index, which),
                                          MHUB_F32, e->params->items[param_index].value.numel)
                            : s;
    /* the sharded engines gather (see check_collective_access) */
    MHUB_TRY(mhub_dp_agree(e->dp, s));
    if (e->kind == MHUB_DP_DISTOPT)
        return mhub_distopt_get_state(e->distopt, param_index, dw, full);
    return mhub_fsdp_get_state(e->fsdp, param_index, dw, full);
}

mhub_status mhub_dp_engine_set_state(mhub_dp_engine *e, int param_index, int which,
                                     const float *full)
{
    MHUB_TRY(check_state_access(e, param_index));
    int dw = 0;
    MHUB_TRY(check_which(e, param_index, which, &dw));
    if (!full)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "full is NULL");
    if (e->kind == MHUB_DP_DISTOPT)
        return mhub_distopt_set_state(e->distopt, param_index, dw, full);
    if (e->kind == MHUB_DP_FSDP)
        return mhub_fsdp_set_state(e->fsdp, param_index, dw, full);
    return from_host_f32(e->be, ddp_state_slot(e, param_index, which), MHUB_F32, full,
                         e->params->items[param_index].value.numel);
}

int64_t mhub_dp_engine_optim_steps(const mhub_dp_engine *e)
{
    if (!e)
        return 0;
    switch (e->kind) {
    case MHUB_DP_DDP: return e->optim_steps;
    case MHUB_DP_DISTOPT: return mhub_distopt_optim_steps(e->distopt);
    default: return mhub_fsdp_optim_steps(e->fsdp);
    }
}

mhub_status mhub_dp_engine_set_optim_steps(mhub_dp_engine *e, int64_t steps)
{
    MHUB_TRY(check_engine(e));
    if (steps < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "optimizer steps %lld", (long long)steps);
    switch (e->kind) {
    case MHUB_DP_DDP: e->optim_steps = steps; return MHUB_OK;
    case MHUB_DP_DISTOPT: return mhub_distopt_set_optim_steps(e->distopt, steps);
    default: return mhub_fsdp_set_optim_steps(e->fsdp, steps);
    }
}
