/* fsdp.c - ZeRO-3: per-unit sharding of values, gradients and optimizer
 * state, with all-gathers and reduce-scatters driven by the unit hooks
 * (see fsdp.h for the picture).
 *
 * Memory, all allocated at create on the parameters' backend:
 *   shard_mem   this rank's slice of every unit vector: values, gradients,
 *               then the optimizer's state arrays, each `shard_numel` long;
 *               unit u's slice starts at units[u].shard_offset in each;
 *   gather      the full-value buffers ("gather slots"): unit u lives in
 *               slot slot_of(u); with reshard_after_forward that is u % 2,
 *               otherwise every unit has its own;
 *   grad slots  two full-gradient buffers, unit u's backward in u % 2: the
 *               reduce-scatter of u runs while u-1 computes in the other.
 *
 * Tied units: a unit whose parameters another unit reads too (a GPT's
 * embedding, read by its tied output layer in the last unit) gets a gather
 * slot and a grad slot of its own, after the shared ones (assign_slots).
 * Its full values are needed from its forward to its reader's, and in
 * backward from its reader's (the first) to its own (the last), while
 * every unit between them cycles through the two shared slots; its
 * gradient collects the reader's part and then its own. So it stays
 * gathered from its pre_forward until the later of the two post_backwards
 * (reshard_after_forward does not release it: its slot is its own, so
 * that would save no memory and cost two all-gathers of the unit), its
 * gradient slot is bound (zeroed) at the first of the two pre_backwards,
 * and it is reduce-scattered once, when the second backward ends
 * (backward_left counts down). The model calls only the running unit's
 * hooks; the engine does the rest. FairScale's and PyTorch's FSDP keep
 * the root module, the usual owner of tied weights, unsharded after
 * forward by default for the same reason.
 *
 * A gather slot is EMPTY, GATHERING (an all-gather into it is in flight)
 * or READY (the unit's parameters point into it). Anything that needs a
 * slot held by another unit first waits for that unit's collective and
 * turns its parameters back to meta, so a slot never changes under a unit
 * that still looks usable.
 *
 * Collectives on one communicator must be issued in the same order on
 * every rank. Every decision here (issue, prefetch, evict) depends only on
 * the sequence of hook calls, which is the same everywhere; completion
 * (polling) never issues anything. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mhub/backend.h"
#include "mhub/fsdp.h"
#include "src/dp_common.h"

typedef enum slot_state { SLOT_EMPTY = 0, SLOT_GATHERING, SLOT_READY } slot_state;

typedef struct gather_slot {
    void *data;          /* model dtype */
    int64_t capacity;    /* elements: the largest padded unit it serves */
    int unit;            /* unit it holds or receives, -1 when EMPTY */
    slot_state state;
    mhub_request req;
} gather_slot;

typedef struct grad_slot {
    void *data;          /* gradient dtype (gdt) */
    int64_t capacity;
    int unit;            /* unit in backward or being reduced, -1 when idle */
    bool bound;          /* between pre_backward and post_backward of `unit` */
    bool reducing;       /* the reduce-scatter of `unit` is in flight */
    mhub_request req;
} grad_slot;

struct mhub_fsdp {
    mhub_param_list *params;
    mhub_comm *dp;
    mhub_backend *be;
    mhub_ddp_config ddp_cfg;
    mhub_fsdp_options opts;
    mhub_optim_config opt_cfg;
    mhub_unit_plan plan;     /* units, their parameters' order and offsets, shards */
    mhub_dtype mdt;          /* the model's parameter dtype: gather slots, vshard */
    mhub_dtype gdt;          /* the full-gradient slots: f32 or mdt */
    size_t msize, gsize;     /* their element sizes */
    float *shard_mem;
    float *values, *grads;   /* into shard_mem: f32 master values, f32 gradients */
    void *vshard;            /* what is all-gathered: `values` for f32 models, else
                              * vshard_mem, the model-dtype copy of the master */
    void *vshard_mem;
    float *widen;            /* f32 copy of a reduced 16-bit block (largest shard) */
    float *state[2];         /* optimizer state arrays, into shard_mem */
    int num_state;
    void *gather_mem;
    gather_slot *gather;
    int num_gather;
    void *grad_mem;
    grad_slot *grad;
    int num_grad;
    int *gather_of, *grad_of; /* per unit: its gather slot and grad slot */
    int *backward_left;      /* per tied unit: of it and its reader, the backwards not
                              * yet ended in this pass (while its grad slot is bound) */
    bool sync_pending;       /* a reduce-scatter was issued since finish_grad_sync */
    int64_t step;            /* finish_grad_sync calls, for messages */
    int64_t opt_step;        /* optimizer steps; AdamW's t */
    int nan_param;           /* first parameter seen non-finite this step, or -1 */
    mhub_fsdp_stats stats;
    /* deterministic mode (see mhub_fsdp_shard_done) */
    mhub_sumtree tree;       /* binary counter over rounds, on shard-size vectors */
    float *round;            /* this round's reduced shards of every unit */
    float *tree_scratch;     /* half the largest padded unit */
};

void mhub_fsdp_options_init(mhub_fsdp_options *opts)
{
    if (!opts)
        return;
    opts->reshard_after_forward = true;
    opts->prefetch = true;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int slot_of(const mhub_fsdp *f, int unit) { return f->gather_of[unit]; }

static grad_slot *grad_slot_of(mhub_fsdp *f, int unit) { return &f->grad[f->grad_of[unit]]; }

/* Whether another unit reads `unit`'s parameters (see the top). */
static bool is_tied(const mhub_fsdp *f, int unit) { return f->plan.units[unit].reader >= 0; }

/* Element i of an array of `size`-byte elements. */
static void *elem_at(const void *base, int64_t i, size_t size)
{
    return (char *)base + i * (int64_t)size;
}

/* ---- parameter tensors -------------------------------------------------- */

/* Turn a tensor of the parameter's shape into a meta one (no storage). */
static void make_meta(mhub_tensor *t, const mhub_param *p, mhub_dtype dt)
{
    int64_t shape[MHUB_MAX_DIMS];
    int ndim = p->value.ndim;
    memcpy(shape, p->value.shape, sizeof shape);
    mhub_tensor_init_meta(t, dt, ndim, shape);
}

/* Point a tensor of the parameter's shape at `data` (engine memory). */
static mhub_status point_at(mhub_fsdp *f, mhub_tensor *t, const mhub_param *p, void *data,
                            mhub_dtype dt)
{
    int64_t shape[MHUB_MAX_DIMS];
    int ndim = p->value.ndim;
    memcpy(shape, p->value.shape, sizeof shape);
    return mhub_tensor_wrap(t, data, f->be, dt, ndim, shape);
}

static mhub_status bind_values(mhub_fsdp *f, int unit, void *full)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    for (int k = 0; k < u->count; k++) {
        int i = f->plan.order[u->first + k];
        mhub_param *p = &f->params->items[i];
        MHUB_TRY(point_at(f, &p->value, p, elem_at(full, f->plan.param_offset[i], f->msize),
                          f->mdt));
    }
    return MHUB_OK;
}

static void unbind_values(mhub_fsdp *f, int unit)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    for (int k = 0; k < u->count; k++) {
        mhub_param *p = &f->params->items[f->plan.order[u->first + k]];
        make_meta(&p->value, p, f->mdt);
    }
}

static mhub_status bind_grads(mhub_fsdp *f, int unit, void *full)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    for (int k = 0; k < u->count; k++) {
        int i = f->plan.order[u->first + k];
        mhub_param *p = &f->params->items[i];
        MHUB_TRY(point_at(f, &p->grad, p, elem_at(full, f->plan.param_offset[i], f->gsize),
                          f->gdt));
    }
    return MHUB_OK;
}

static void unbind_grads(mhub_fsdp *f, int unit)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    for (int k = 0; k < u->count; k++) {
        mhub_param *p = &f->params->items[f->plan.order[u->first + k]];
        make_meta(&p->grad, p, f->gdt);
    }
}

/* ---- gathers ------------------------------------------------------------ */

static mhub_status wait_request(mhub_fsdp *f, mhub_request *req)
{
    if (!req->active)
        return MHUB_OK;
    double t0 = now_seconds();
    mhub_status s = mhub_request_wait(req);
    f->stats.wait_seconds += now_seconds() - t0;
    return s;
}

/* Empty a slot: wait for a gather still writing into it, and turn the
 * parameters of the unit it held back to meta. */
static mhub_status clear_slot(mhub_fsdp *f, gather_slot *g)
{
    mhub_status s = wait_request(f, &g->req);
    if (g->unit >= 0)
        unbind_values(f, g->unit);
    g->unit = -1;
    g->state = SLOT_EMPTY;
    return s;
}

static mhub_status issue_gather(mhub_fsdp *f, int unit, bool prefetched)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    gather_slot *g = &f->gather[slot_of(f, unit)];
    MHUB_TRY(mhub_comm_iallgather(f->dp, elem_at(f->vshard, u->shard_offset, f->msize), g->data,
                                  u->shard, f->mdt, &g->req));
    g->unit = unit;
    g->state = SLOT_GATHERING;
    f->stats.gathers_issued++;
    f->stats.gathers_prefetched += prefetched;
    return MHUB_OK;
}

/* Make `unit`'s full values usable: issue its gather unless a prefetch
 * did, wait, and point its parameters into the slot. */
static mhub_status ensure_gathered(mhub_fsdp *f, int unit)
{
    gather_slot *g = &f->gather[slot_of(f, unit)];
    if (g->unit == unit && g->state == SLOT_READY)
        return MHUB_OK;
    if (g->unit != unit) {
        MHUB_TRY(clear_slot(f, g));
        MHUB_TRY(issue_gather(f, unit, false));
    }
    mhub_status s = wait_request(f, &g->req);
    if (s != MHUB_OK) {
        /* the slot's contents are undefined: never bind them later */
        g->unit = -1;
        g->state = SLOT_EMPTY;
        return s;
    }
    MHUB_TRY(bind_values(f, unit, g->data));
    g->state = SLOT_READY;
    return MHUB_OK;
}

/* Start `unit`'s gather early if its slot is free. A slot still held by
 * another unit is left alone: that unit may be in use (a model that skips
 * post hooks); the unit's own pre hook will evict it. */
static mhub_status prefetch(mhub_fsdp *f, int unit)
{
    if (!f->opts.prefetch || unit < 0 || unit >= f->plan.num_units ||
        f->plan.units[unit].padded == 0)
        return MHUB_OK;
    gather_slot *g = &f->gather[slot_of(f, unit)];
    if (g->unit == unit || g->state != SLOT_EMPTY)
        return MHUB_OK;
    return issue_gather(f, unit, true);
}

static mhub_status release_values(mhub_fsdp *f, int unit)
{
    gather_slot *g = &f->gather[slot_of(f, unit)];
    return g->unit == unit ? clear_slot(f, g) : MHUB_OK;
}

static mhub_status release_all_values(mhub_fsdp *f)
{
    mhub_status s = MHUB_OK;
    for (int i = 0; i < f->num_gather; i++) {
        mhub_status c = clear_slot(f, &f->gather[i]);
        if (s == MHUB_OK)
            s = c;
    }
    return s;
}

/* ---- gradient reduction --------------------------------------------------- */

/* The reduce-scatter left this rank's block of the dp-mean gradient at
 * block `rank` of the slot; add it to the f32 shard (accumulation over
 * micro-batches), widened to f32 first when the slot is 16-bit. */
static mhub_status accumulate_shard(mhub_fsdp *f, grad_slot *g)
{
    const mhub_unit_layout *u = &f->plan.units[g->unit];
    const void *mine = elem_at(g->data, (int64_t)f->dp->rank * u->shard, f->gsize);
    const float *add = mine;
    mhub_status s = MHUB_OK;
    if (f->gdt != MHUB_F32) {
        s = f->be->ops->cast(f->be, f->widen, MHUB_F32, mine, f->gdt, u->shard);
        add = f->widen;
    }
    if (s == MHUB_OK)
        s = f->be->ops->axpy(f->be, f->grads + u->shard_offset, add, u->shard, 1.0f);
    g->reducing = false;
    g->unit = -1;
    return s;
}

static mhub_status complete_reduce(mhub_fsdp *f, grad_slot *g)
{
    if (!g->reducing)
        return MHUB_OK;
    mhub_status s = wait_request(f, &g->req);
    if (s != MHUB_OK) {
        g->reducing = false;
        g->unit = -1;
        return s;
    }
    return accumulate_shard(f, g);
}

/* Let issued collectives progress: MPI moves messages only inside MPI
 * calls, so every hook tests what is outstanding. */
static mhub_status poll_outstanding(mhub_fsdp *f)
{
    bool done;
    for (int i = 0; i < f->num_gather; i++)
        if (f->gather[i].req.active)
            MHUB_TRY(mhub_request_test(&f->gather[i].req, &done));
    for (int i = 0; i < f->num_grad; i++) {
        grad_slot *g = &f->grad[i];
        if (!g->reducing)
            continue;
        MHUB_TRY(mhub_request_test(&g->req, &done));
        if (done)
            MHUB_TRY(accumulate_shard(f, g));
    }
    return MHUB_OK;
}

/* Point `unit`'s gradients at a zeroed full-size buffer. The buffer's
 * previous unit (two units later in forward order) is reduced first. */
static mhub_status begin_backward(mhub_fsdp *f, int unit)
{
    grad_slot *g = grad_slot_of(f, unit);
    if (g->bound && g->unit == unit)
        return MHUB_OK; /* a repeated pre_backward must not zero the gradient */
    if (g->bound)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "pre_backward(%d) at step %lld: unit %d's backward has not ended "
                          "(post_backward(%d) missing) on dp rank %d",
                          unit, (long long)f->step, g->unit, g->unit, f->dp->rank);
    MHUB_TRY(complete_reduce(f, g));
    const mhub_unit_layout *u = &f->plan.units[unit];
    MHUB_TRY(f->be->ops->memset_zero(f->be, g->data, (size_t)u->padded * f->gsize));
    MHUB_TRY(bind_grads(f, unit, g->data));
    g->unit = unit;
    g->bound = true;
    if (is_tied(f, unit))
        f->backward_left[unit] = 2; /* its own and its reader's */
    return MHUB_OK;
}

/* Remember the first parameter of `unit` whose gradient is not finite. */
static mhub_status scan_for_nan(mhub_fsdp *f, int unit, const float *full)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    double ss = 0;
    MHUB_TRY(f->be->ops->sum_squares(f->be, full, u->numel, &ss));
    if (isfinite(ss) || f->nan_param >= 0)
        return MHUB_OK;
    for (int k = 0; k < u->count; k++) {
        int i = f->plan.order[u->first + k];
        MHUB_TRY(f->be->ops->sum_squares(f->be, full + f->plan.param_offset[i],
                                         f->params->items[i].value.numel, &ss));
        if (!isfinite(ss)) {
            f->nan_param = i;
            break;
        }
    }
    return MHUB_OK;
}

/* `unit`'s gradient is final: start its reduce-scatter and take the
 * gradients away from the parameters. */
static mhub_status end_backward(mhub_fsdp *f, int unit)
{
    grad_slot *g = grad_slot_of(f, unit);
    if (!g->bound || g->unit != unit)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "post_backward(%d) at step %lld on dp rank %d without "
                          "pre_backward(%d): the unit's gradient was never set up",
                          unit, (long long)f->step, f->dp->rank, unit);
    const mhub_unit_layout *u = &f->plan.units[unit];
    unbind_grads(f, unit);
    g->bound = false;
    if (f->ddp_cfg.check_for_nan_in_grad)
        MHUB_TRY(scan_for_nan(f, unit, g->data));
    if (f->ddp_cfg.deterministic) {
        /* the fixed-tree sum over this round's ranks, no scaling (the
         * loss is weighted by 1/global batch), blocking */
        g->unit = -1;
        f->stats.reduce_scatters++;
        return mhub_tree_reduce_scatter(f->dp, f->be, g->data, u->padded, f->tree_scratch,
                                        f->round + u->shard_offset);
    }
    mhub_reduce_op op;
    MHUB_TRY(mhub_dp_prepare_reduce(&f->ddp_cfg, f->be, f->dp, g->data, f->gdt, u->padded, &op));
    /* the in-place form */
    void *mine = elem_at(g->data, (int64_t)f->dp->rank * u->shard, f->gsize);
    MHUB_TRY(mhub_comm_ireduce_scatter(f->dp, g->data, mine, u->shard, f->gdt, op, &g->req));
    g->reducing = true;
    f->sync_pending = true;
    f->stats.reduce_scatters++;
    return MHUB_OK;
}

/* ---- the hooks ------------------------------------------------------------ */

static mhub_status hook_engine(void *user, int unit, const char *hook, mhub_fsdp **out)
{
    mhub_fsdp *f = user;
    if (!f)
        return mhub_error(MHUB_ERR_INVALID_ARG, "fsdp %s hook: engine is NULL", hook);
    if (unit < 0 || unit >= f->plan.num_units)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "fsdp %s hook: unit %d is outside [0, %d) (dp rank %d, step %lld)",
                          hook, unit, f->plan.num_units, f->dp->rank, (long long)f->step);
    *out = f;
    return poll_outstanding(f);
}

/* One of a tied unit's two backwards (its own or its reader's) ended;
 * after the second its gradient is final. */
static mhub_status end_tied_use(mhub_fsdp *f, int unit)
{
    grad_slot *g = grad_slot_of(f, unit);
    if (g->bound && g->unit == unit && --f->backward_left[unit] > 0)
        return MHUB_OK;
    MHUB_TRY(end_backward(f, unit)); /* or its error: pre_backward was missing */
    return release_values(f, unit);
}

/* Make the tied units that `unit` reads usable, and with `backward` bind
 * their gradients (kept bound, not zeroed, if already). */
static mhub_status gather_read_units(mhub_fsdp *f, int unit, bool backward)
{
    for (int owner = 0; owner < f->plan.num_units; owner++) {
        if (f->plan.units[owner].reader != unit)
            continue;
        MHUB_TRY(ensure_gathered(f, owner));
        if (backward)
            MHUB_TRY(begin_backward(f, owner));
    }
    return MHUB_OK;
}

static mhub_status end_read_units(mhub_fsdp *f, int unit)
{
    for (int owner = 0; owner < f->plan.num_units; owner++)
        if (f->plan.units[owner].reader == unit)
            MHUB_TRY(end_tied_use(f, owner));
    return MHUB_OK;
}

static mhub_status pre_forward(void *user, int unit)
{
    mhub_fsdp *f;
    MHUB_TRY(hook_engine(user, unit, "pre_forward", &f));
    bool own = f->plan.units[unit].padded > 0;
    if (own)
        MHUB_TRY(ensure_gathered(f, unit));
    MHUB_TRY(gather_read_units(f, unit, false));
    return own ? prefetch(f, unit + 1) : MHUB_OK;
}

static mhub_status post_forward(void *user, int unit)
{
    mhub_fsdp *f;
    MHUB_TRY(hook_engine(user, unit, "post_forward", &f));
    /* the last unit is the first one backward needs: keep it; a tied unit
     * stays until its backward (see the top) */
    if (!f->opts.reshard_after_forward || unit == f->plan.num_units - 1 || is_tied(f, unit))
        return MHUB_OK;
    return release_values(f, unit);
}

static mhub_status pre_backward(void *user, int unit)
{
    mhub_fsdp *f;
    MHUB_TRY(hook_engine(user, unit, "pre_backward", &f));
    bool own = f->plan.units[unit].padded > 0;
    if (own) {
        MHUB_TRY(ensure_gathered(f, unit));
        MHUB_TRY(prefetch(f, unit - 1));
        MHUB_TRY(begin_backward(f, unit));
    }
    return gather_read_units(f, unit, true);
}

static mhub_status post_backward(void *user, int unit)
{
    mhub_fsdp *f;
    MHUB_TRY(hook_engine(user, unit, "post_backward", &f));
    if (is_tied(f, unit)) {
        MHUB_TRY(end_tied_use(f, unit));
    } else if (f->plan.units[unit].padded > 0) {
        MHUB_TRY(end_backward(f, unit));
        MHUB_TRY(release_values(f, unit));
    }
    return end_read_units(f, unit);
}

mhub_status mhub_fsdp_unit_hooks(mhub_fsdp *f, mhub_unit_hooks *out)
{
    if (!f || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or out is NULL");
    out->pre_forward = pre_forward;
    out->post_forward = post_forward;
    out->pre_backward = pre_backward;
    out->post_backward = post_backward;
    out->user = f;
    return MHUB_OK;
}

/* ---- create ----------------------------------------------------------------- */

/* FSDP shards every parameter of the list, so each must be trainable. */
static mhub_status check_all_trainable(const mhub_param_list *params)
{
    if (params->count < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "the parameter list is empty");
    for (int i = 0; i < params->count; i++)
        if (!params->items[i].requires_grad)
            return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                              "parameter '%s' does not require a gradient: the FSDP engine "
                              "trains every parameter it shards",
                              params->items[i].name);
    return MHUB_OK;
}

/* One parameter dtype (f32, bf16 or f16) with f32 or same-dtype
 * gradients, storage, units >= 0, one backend (mhub_dp_check_params_any),
 * and every parameter trainable. */
static mhub_status check_params(const mhub_param_list *params, mhub_backend **be,
                                mhub_dtype *mdt)
{
    *be = NULL;
    MHUB_TRY(check_all_trainable(params));
    return mhub_dp_check_params_any(params, "fsdp", be, mdt);
}

/* Units, the order of their parameters, offsets in unit vectors and
 * shards: the shared unit planner. */
static mhub_status plan_units(mhub_fsdp *f)
{
    return mhub_unit_plan_make(f->params, f->dp->size, &f->plan);
}

/* ---- sizes: what create allocates, shared with the memory estimate -------- */

/* Which slots each unit uses. Units nobody else reads share two of each
 * by parity (u % 2; one when there is one such unit), except that without
 * reshard_after_forward every unit has a gather slot of its own (slot u).
 * A tied unit has its own gather slot and grad slot, numbered after the
 * shared ones (see the top). gather_of and grad_of hold num_units each. */
typedef struct slot_map {
    int *gather_of, *grad_of;
    int num_gather, num_grad;
} slot_map;

static void assign_slots(const mhub_unit_plan *plan, bool reshard, slot_map *map)
{
    int untied = 0;
    for (int u = 0; u < plan->num_units; u++)
        untied += plan->units[u].reader < 0;
    int shared = untied < 2 ? untied : 2;
    map->num_gather = reshard ? shared : plan->num_units;
    map->num_grad = shared;
    for (int u = 0; u < plan->num_units; u++) {
        bool tied = plan->units[u].reader >= 0;
        if (!reshard)
            map->gather_of[u] = u;
        else
            map->gather_of[u] = tied ? map->num_gather++ : u % shared;
        map->grad_of[u] = tied ? map->num_grad++ : u % shared;
    }
}

/* The largest padded unit that uses each of `slots` slots, per `of`
 * (caps holds `slots`). */
static void slot_capacities(const mhub_unit_plan *plan, const int *of, int slots, int64_t *caps)
{
    for (int i = 0; i < slots; i++)
        caps[i] = 0;
    for (int u = 0; u < plan->num_units; u++)
        caps[of[u]] = plan->units[u].padded > caps[of[u]] ? plan->units[u].padded : caps[of[u]];
}

/* Elements of the gather slots, and of the grad slots. */
static mhub_status slots_elems(const mhub_unit_plan *plan, bool reshard, int64_t *gather,
                               int64_t *grad)
{
    int n = plan->num_units;
    int *of = malloc(2 * (size_t)n * sizeof *of);
    int64_t *caps = malloc((size_t)(n + 2) * sizeof *caps);
    if (!of || !caps) {
        free(of);
        free(caps);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "slot tables for %d units", n);
    }
    slot_map map = {.gather_of = of, .grad_of = of + n};
    assign_slots(plan, reshard, &map);
    *gather = *grad = 0;
    slot_capacities(plan, map.gather_of, map.num_gather, caps);
    for (int i = 0; i < map.num_gather; i++)
        *gather += caps[i];
    slot_capacities(plan, map.grad_of, map.num_grad, caps);
    for (int i = 0; i < map.num_grad; i++)
        *grad += caps[i];
    free(of);
    free(caps);
    return MHUB_OK;
}

/* Deterministic mode's halving scratch: half the largest unit. */
static int64_t tree_scratch_elems(const mhub_unit_plan *plan)
{
    return plan->largest_padded / 2 + 1;
}

static mhub_status alloc_elems(mhub_fsdp *f, int64_t n, size_t size, void **out)
{
    void *p = NULL;
    MHUB_TRY(f->be->ops->alloc(f->be, (size_t)n * size, &p));
    *out = p;
    f->stats.bytes_held += n * (int64_t)size;
    return MHUB_OK;
}

static mhub_status alloc_floats(mhub_fsdp *f, int64_t n, float **out)
{
    void *p = NULL;
    MHUB_TRY(alloc_elems(f, n, sizeof(float), &p));
    *out = p;
    return MHUB_OK;
}

static mhub_status alloc_shards(mhub_fsdp *f)
{
    int64_t s = f->plan.shard_numel;
    f->num_state = mhub_optim_state_arrays(&f->opt_cfg);
    MHUB_TRY(alloc_floats(f, s * (2 + f->num_state), &f->shard_mem));
    f->values = f->shard_mem;
    f->grads = f->shard_mem + s;
    for (int k = 0; k < f->num_state; k++)
        f->state[k] = f->shard_mem + (2 + k) * s;
    f->vshard = f->values;
    if (f->mdt != MHUB_F32) {
        MHUB_TRY(alloc_elems(f, s, f->msize, &f->vshard_mem));
        f->vshard = f->vshard_mem;
    }
    f->stats.shard_bytes = f->stats.bytes_held;
    return MHUB_OK;
}

/* The per-unit tables and the slot structs (host memory). */
static mhub_status alloc_slot_tables(mhub_fsdp *f)
{
    int n = f->plan.num_units;
    f->gather_of = malloc((size_t)n * sizeof *f->gather_of);
    f->grad_of = malloc((size_t)n * sizeof *f->grad_of);
    f->backward_left = calloc((size_t)n, sizeof *f->backward_left);
    if (!f->gather_of || !f->grad_of || !f->backward_left)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "slot tables for %d units", n);
    slot_map map = {.gather_of = f->gather_of, .grad_of = f->grad_of};
    assign_slots(&f->plan, f->opts.reshard_after_forward, &map);
    f->num_gather = map.num_gather;
    f->num_grad = map.num_grad;
    f->gather = calloc((size_t)f->num_gather + 1, sizeof *f->gather);
    f->grad = calloc((size_t)f->num_grad + 1, sizeof *f->grad);
    if (!f->gather || !f->grad)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "%d gather and %d grad slots", f->num_gather,
                          f->num_grad);
    return MHUB_OK;
}

/* Every slot empty, sized by slot_capacities (as the estimate sizes it). */
static mhub_status size_slots(mhub_fsdp *f)
{
    int64_t *caps = malloc(((size_t)f->num_gather + (size_t)f->num_grad + 1) * sizeof *caps);
    if (!caps)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "slot sizes");
    slot_capacities(&f->plan, f->gather_of, f->num_gather, caps);
    slot_capacities(&f->plan, f->grad_of, f->num_grad, caps + f->num_gather);
    for (int i = 0; i < f->num_gather; i++) {
        f->gather[i].capacity = caps[i];
        f->gather[i].unit = -1;
    }
    for (int i = 0; i < f->num_grad; i++) {
        f->grad[i].capacity = caps[f->num_gather + i];
        f->grad[i].unit = -1;
    }
    free(caps);
    return MHUB_OK;
}

static mhub_status alloc_buffers(mhub_fsdp *f)
{
    MHUB_TRY(alloc_slot_tables(f));
    MHUB_TRY(size_slots(f));
    int64_t total = 0;
    for (int i = 0; i < f->num_gather; i++)
        total += f->gather[i].capacity;
    MHUB_TRY(alloc_elems(f, total, f->msize, &f->gather_mem));
    int64_t offset = 0;
    for (int i = 0; i < f->num_gather; i++) {
        f->gather[i].data = elem_at(f->gather_mem, offset, f->msize);
        offset += f->gather[i].capacity;
    }
    total = 0;
    for (int i = 0; i < f->num_grad; i++)
        total += f->grad[i].capacity;
    MHUB_TRY(alloc_elems(f, total, f->gsize, &f->grad_mem));
    offset = 0;
    for (int i = 0; i < f->num_grad; i++) {
        f->grad[i].data = elem_at(f->grad_mem, offset, f->gsize);
        offset += f->grad[i].capacity;
    }
    if (f->gdt != MHUB_F32)
        MHUB_TRY(alloc_floats(f, f->plan.largest_shard, &f->widen));
    f->stats.buffer_bytes = f->stats.bytes_held - f->stats.shard_bytes;
    return MHUB_OK;
}

/* Copy the part of each parameter that falls in this rank's slice of its
 * unit vector into the (model-dtype) value shard, and widen that into the
 * f32 master for a 16-bit model. */
static mhub_status take_value_shards(mhub_fsdp *f)
{
    for (int unit = 0; unit < f->plan.num_units; unit++) {
        const mhub_unit_layout *u = &f->plan.units[unit];
        int64_t lo = (int64_t)f->dp->rank * u->shard, hi = lo + u->shard;
        for (int k = 0; k < u->count; k++) {
            int i = f->plan.order[u->first + k];
            const mhub_param *p = &f->params->items[i];
            int64_t a = f->plan.param_offset[i], b = a + p->value.numel;
            int64_t from = a > lo ? a : lo, to = b < hi ? b : hi;
            if (from >= to)
                continue;
            MHUB_TRY(f->be->ops->copy(
                f->be, elem_at(f->vshard, u->shard_offset + (from - lo), f->msize),
                elem_at(p->value.data, from - a, f->msize), (size_t)(to - from) * f->msize,
                MHUB_COPY_DEVICE_TO_DEVICE));
        }
    }
    if (f->mdt != MHUB_F32)
        MHUB_TRY(f->be->ops->cast(f->be, f->values, MHUB_F32, f->vshard, f->mdt,
                                  f->plan.shard_numel));
    return MHUB_OK;
}

/* The parameters' own storage goes: from now on they exist only as
 * shards, and as views into the engine's buffers while gathered. */
static void drop_full_storage(mhub_fsdp *f)
{
    for (int i = 0; i < f->params->count; i++) {
        mhub_param *p = &f->params->items[i];
        mhub_tensor value = p->value, grad = p->grad;
        make_meta(&p->value, p, f->mdt);
        make_meta(&p->grad, p, f->gdt);
        mhub_tensor_free(&value);
        mhub_tensor_free(&grad);
    }
}

/* Free the engine's memory and tables; the parameters are not touched. */
static void destroy(mhub_fsdp *f)
{
    if (f->shard_mem)
        f->be->ops->free(f->be, f->shard_mem);
    if (f->vshard_mem)
        f->be->ops->free(f->be, f->vshard_mem);
    if (f->widen)
        f->be->ops->free(f->be, f->widen);
    if (f->gather_mem)
        f->be->ops->free(f->be, f->gather_mem);
    if (f->grad_mem)
        f->be->ops->free(f->be, f->grad_mem);
    if (f->round)
        f->be->ops->free(f->be, f->round);
    if (f->tree_scratch)
        f->be->ops->free(f->be, f->tree_scratch);
    mhub_sumtree_free(&f->tree);
    free(f->gather);
    free(f->grad);
    free(f->gather_of);
    free(f->grad_of);
    free(f->backward_left);
    mhub_unit_plan_free(&f->plan);
    free(f);
}

/* Deterministic mode's buffers: a round of reduced shards and the halving
 * scratch, plus the sum tree's levels (allocated in the first step). */
static mhub_status alloc_deterministic(mhub_fsdp *f)
{
    MHUB_TRY(mhub_sumtree_init(&f->tree, f->be, f->dp, f->plan.shard_numel));
    MHUB_TRY(alloc_floats(f, f->plan.shard_numel, &f->round));
    return alloc_floats(f, tree_scratch_elems(&f->plan), &f->tree_scratch);
}

/* Bytes of what alloc_shards, alloc_buffers and alloc_deterministic (plus
 * the sum tree's one level in the first step) allocate, by kind. */
static mhub_status estimate_from_plan(const mhub_unit_plan *plan, int dp_size, mhub_dtype mdt,
                                      mhub_dtype gdt, bool reshard, bool deterministic,
                                      int num_state, mhub_dp_memory *out)
{
    const int64_t f32 = sizeof(float), msize = (int64_t)mhub_dtype_size(mdt),
                  gsize = (int64_t)mhub_dtype_size(gdt), s = plan->shard_numel;
    /* the model-dtype value shard; for an f32 model it is the master itself */
    out->param_bytes = s * msize;
    out->main_param_bytes = mdt != MHUB_F32 ? s * f32 : 0;
    out->grad_bytes = s * f32;
    out->optim_state_bytes = num_state * s * f32;
    int64_t gather_elems = 0, grad_elems = 0;
    MHUB_TRY(slots_elems(plan, reshard, &gather_elems, &grad_elems));
    out->gathered_bytes = gather_elems * msize + grad_elems * gsize;
    if (gdt != MHUB_F32)
        out->scratch_bytes = plan->largest_shard * f32;
    if (deterministic)
        out->scratch_bytes += (s + tree_scratch_elems(plan)) * f32 +
                              mhub_sumtree_bytes(s, dp_size, false);
    for (int u = 0; u < plan->num_units; u++)
        out->padding_elems += plan->units[u].padded - plan->units[u].numel;
    return MHUB_OK;
}

mhub_status mhub_fsdp_estimate_memory(const mhub_param_list *params, int dp_size,
                                      const mhub_ddp_config *ddp_cfg,
                                      const mhub_fsdp_options *opts,
                                      const mhub_optim_config *opt_cfg, mhub_dp_memory *out)
{
    memset(out, 0, sizeof *out);
    MHUB_TRY(mhub_ddp_config_validate(ddp_cfg));
    MHUB_TRY(mhub_optim_config_validate(opt_cfg));
    MHUB_TRY(check_all_trainable(params));
    mhub_dtype mdt, gdt;
    MHUB_TRY(mhub_dp_check_shapes(params, "fsdp", &mdt));
    MHUB_TRY(mhub_dp_grad_dtype(ddp_cfg, mdt, "fsdp", &gdt));
    if (ddp_cfg->deterministic)
        MHUB_TRY(mhub_dp_check_pow2(dp_size, "dp"));
    mhub_fsdp_options o;
    mhub_fsdp_options_init(&o);
    if (opts)
        o = *opts;
    mhub_unit_plan plan;
    MHUB_TRY(mhub_unit_plan_make(params, dp_size, &plan));
    mhub_status s = estimate_from_plan(&plan, dp_size, mdt, gdt, o.reshard_after_forward,
                                       ddp_cfg->deterministic,
                                       mhub_optim_state_arrays(opt_cfg), out);
    mhub_unit_plan_free(&plan);
    return s;
}

mhub_status mhub_fsdp_create(mhub_param_list *params, mhub_comm *dp,
                             const mhub_ddp_config *ddp_cfg, const mhub_fsdp_options *opts,
                             const mhub_optim_config *opt_cfg, mhub_fsdp **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!params || !dp || !ddp_cfg || !opt_cfg)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "params, dp communicator, ddp config or optimizer config is NULL");
    MHUB_TRY(mhub_ddp_config_validate(ddp_cfg));
    MHUB_TRY(mhub_optim_config_validate(opt_cfg));
    mhub_backend *be;
    mhub_dtype mdt;
    MHUB_TRY(check_params(params, &be, &mdt));
    mhub_dtype gdt;
    MHUB_TRY(mhub_dp_grad_dtype(ddp_cfg, mdt, "fsdp", &gdt));
    mhub_fsdp *f = calloc(1, sizeof *f);
    if (!f)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "engine struct");
    f->mdt = mdt;
    f->gdt = gdt;
    f->msize = mhub_dtype_size(mdt);
    f->gsize = mhub_dtype_size(gdt);
    f->params = params;
    f->dp = dp;
    f->be = be;
    f->ddp_cfg = *ddp_cfg;
    mhub_fsdp_options_init(&f->opts);
    if (opts)
        f->opts = *opts;
    f->opt_cfg = *opt_cfg;
    f->nan_param = -1;
    mhub_status s = plan_units(f);
    if (s == MHUB_OK)
        s = alloc_shards(f);
    if (s == MHUB_OK && ddp_cfg->deterministic)
        s = alloc_deterministic(f);
    if (s == MHUB_OK)
        s = alloc_buffers(f);
    if (s == MHUB_OK)
        s = take_value_shards(f);
    if (s != MHUB_OK) {
        destroy(f);
        return s;
    }
    drop_full_storage(f);
    *out = f;
    return MHUB_OK;
}

/* ---- the step ---------------------------------------------------------------- */

static mhub_status check_no_backward_open(const mhub_fsdp *f, const char *call)
{
    for (int i = 0; i < f->num_grad; i++)
        if (f->grad[i].bound)
            return mhub_error(MHUB_ERR_STATE,
                              "%s at step %lld on dp rank %d: unit %d's backward has not "
                              "ended (post_backward missing)",
                              call, (long long)f->step, f->dp->rank, f->grad[i].unit);
    return MHUB_OK;
}

mhub_status mhub_fsdp_zero_grad(mhub_fsdp *f)
{
    if (!f)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    MHUB_TRY(check_no_backward_open(f, "mhub_fsdp_zero_grad"));
    if (f->sync_pending)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "step %lld: gradients are still being reduced; call "
                          "mhub_fsdp_finish_grad_sync first",
                          (long long)f->step);
    f->nan_param = -1;
    if (f->ddp_cfg.deterministic)
        mhub_sumtree_reset(&f->tree);
    return f->be->ops->memset_zero(f->be, f->grads, (size_t)f->plan.shard_numel * sizeof(float));
}

mhub_status mhub_fsdp_shard_done(mhub_fsdp *f)
{
    if (!f)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (!f->ddp_cfg.deterministic)
        return MHUB_ERROR(MHUB_ERR_STATE, "shard_done is for deterministic mode only");
    MHUB_TRY(check_no_backward_open(f, "mhub_fsdp_shard_done"));
    return mhub_sumtree_fold(&f->tree, f->round);
}

mhub_status mhub_fsdp_finish_grad_sync(mhub_fsdp *f)
{
    if (!f)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    MHUB_TRY(check_no_backward_open(f, "mhub_fsdp_finish_grad_sync"));
    mhub_status s = MHUB_OK;
    /* wait for both slots even after an error: no request left behind */
    for (int i = 0; i < f->num_grad; i++) {
        mhub_status w = complete_reduce(f, &f->grad[i]);
        if (s == MHUB_OK)
            s = w;
    }
    if (s == MHUB_OK && f->ddp_cfg.deterministic)
        s = mhub_sumtree_collect(&f->tree, f->grads);
    if (s == MHUB_OK && f->ddp_cfg.check_for_nan_in_grad)
        s = mhub_dp_agree_on_nan(f->dp, f->params, f->nan_param, f->step, "fsdp");
    f->stats.steps++;
    f->step++;
    f->sync_pending = false;
    f->nan_param = -1;
    return s;
}

mhub_status mhub_fsdp_step(mhub_fsdp *f)
{
    if (!f)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    MHUB_TRY(check_no_backward_open(f, "mhub_fsdp_step"));
    if (f->sync_pending)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "step %lld on dp rank %d: reduce-scatters are outstanding; call "
                          "mhub_fsdp_finish_grad_sync before the optimizer step",
                          (long long)f->step, f->dp->rank);
    MHUB_TRY(release_all_values(f));
    /* padding elements hold 0 with gradient 0: every update keeps them 0 */
    MHUB_TRY(mhub_optim_update(f->be, &f->opt_cfg, f->values, f->grads, f->state,
                               f->plan.shard_numel, f->opt_step + 1));
    /* the model-dtype shard that the gathers send: rounded once per step */
    if (f->mdt != MHUB_F32)
        MHUB_TRY(f->be->ops->cast(f->be, f->vshard, f->mdt, f->values, MHUB_F32,
                                  f->plan.shard_numel));
    f->opt_step++;
    f->stats.optimizer_steps++;
    return MHUB_OK;
}

/* ---- gradient clipping -------------------------------------------------- */

static bool piece_of(const mhub_fsdp *f, int i, int r, int64_t *lo, int64_t *hi);

static mhub_status check_grads_reduced(const mhub_fsdp *f, const char *call)
{
    if (!f)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    MHUB_TRY(check_no_backward_open(f, call));
    if (f->sync_pending)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "%s at step %lld on dp rank %d: reduce-scatters are outstanding; "
                          "call mhub_fsdp_finish_grad_sync first",
                          call, (long long)f->step, f->dp->rank);
    return MHUB_OK;
}

mhub_status mhub_fsdp_grad_sum_squares(mhub_fsdp *f, double *out)
{
    MHUB_TRY(check_grads_reduced(f, "mhub_fsdp_grad_sum_squares"));
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = 0;
    int r = f->dp->rank;
    for (int i = 0; i < f->params->count; i++) {
        int64_t lo = 0, hi = 0;
        if (!piece_of(f, i, r, &lo, &hi))
            continue;
        /* lo is in unit-vector coordinates; the unit's slice starts at r * shard */
        const mhub_unit_layout *u = &f->plan.units[f->params->items[i].unit];
        double part = 0;
        MHUB_TRY(f->be->ops->sum_squares(f->be, f->grads + u->shard_offset + (lo - r * u->shard),
                                         hi - lo, &part));
        *out += part;
    }
    return MHUB_OK;
}

/* Padding holds gradient 0, so scaling whole shards leaves it 0. */
mhub_status mhub_fsdp_scale_grads(mhub_fsdp *f, float factor)
{
    MHUB_TRY(check_grads_reduced(f, "mhub_fsdp_scale_grads"));
    return f->be->ops->scale(f->be, f->grads, f->plan.shard_numel, factor);
}

mhub_status mhub_fsdp_set_lr(mhub_fsdp *f, float lr)
{
    if (!f)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    mhub_optim_config c = f->opt_cfg;
    c.lr = lr;
    MHUB_TRY(mhub_optim_config_validate(&c));
    f->opt_cfg = c;
    return MHUB_OK;
}

/* ---- full values ------------------------------------------------------------ */

static mhub_status check_destination(const mhub_fsdp *f, const mhub_param_list *dst)
{
    if (dst->count != f->params->count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "the destination has %d parameters, the engine %d", dst->count,
                          f->params->count);
    for (int i = 0; i < dst->count; i++) {
        const mhub_param *d = &dst->items[i], *p = &f->params->items[i];
        if (strcmp(d->name, p->name) || !mhub_tensor_same_shape(&d->value, &p->value) ||
            (d->value.dtype != MHUB_F32 && d->value.dtype != f->mdt))
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                              "destination parameter %d ('%s') does not match '%s' (name, "
                              "shape, %s or f32)",
                              i, d->name, p->name, mhub_dtype_name(f->mdt));
        if (!d->value.data && d->value.numel > 0)
            return MHUB_ERROR(MHUB_ERR_STATE, "destination parameter '%s' has no storage",
                              d->name);
    }
    return MHUB_OK;
}

/* The gathered (model-dtype) values into the destination, widened when
 * it is f32 and the model is not. */
static mhub_status copy_unit_out(mhub_fsdp *f, int unit, const void *full,
                                 mhub_param_list *dst)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    for (int k = 0; k < u->count; k++) {
        int i = f->plan.order[u->first + k];
        mhub_tensor *d = &dst->items[i].value;
        const void *src = elem_at(full, f->plan.param_offset[i], f->msize);
        if (d->dtype == f->mdt)
            MHUB_TRY(f->be->ops->copy(f->be, d->data, src, mhub_tensor_nbytes(d),
                                      MHUB_COPY_DEVICE_TO_DEVICE));
        else
            MHUB_TRY(f->be->ops->cast(f->be, d->data, d->dtype, src, f->mdt, d->numel));
    }
    return MHUB_OK;
}

mhub_status mhub_fsdp_full_params(mhub_fsdp *f, mhub_param_list *dst)
{
    if (!f || !dst)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or destination is NULL");
    MHUB_TRY(check_destination(f, dst));
    for (int unit = 0; unit < f->plan.num_units; unit++) {
        if (f->plan.units[unit].padded == 0)
            continue;
        const gather_slot *g = &f->gather[slot_of(f, unit)];
        bool was_gathered = g->unit == unit && g->state == SLOT_READY;
        MHUB_TRY(ensure_gathered(f, unit));
        MHUB_TRY(copy_unit_out(f, unit, g->data, dst));
        if (!was_gathered)
            MHUB_TRY(release_values(f, unit));
    }
    return MHUB_OK;
}

/* ---- free: back to full storage ------------------------------------------------ */

/* Blocking all-gather of one unit's slice of `shards` (dtype dt) into
 * `full`. */
static mhub_status gather_now(mhub_fsdp *f, int unit, const void *shards, mhub_dtype dt,
                              void *full)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    mhub_request req = {0};
    MHUB_TRY(mhub_comm_iallgather(f->dp, elem_at(shards, u->shard_offset, mhub_dtype_size(dt)),
                                  full, u->shard, dt, &req));
    return wait_request(f, &req);
}

/* Give one parameter owned storage: values of the model dtype holding
 * `values`, an f32 gradient holding `grads` (both NULL when the gathers
 * failed: the storage stays zero). It stays meta if the storage cannot be
 * allocated. */
static mhub_status own_storage(mhub_fsdp *f, mhub_param *p, const void *values,
                               const float *grads)
{
    mhub_tensor v, g;
    int64_t shape[MHUB_MAX_DIMS];
    int ndim = p->value.ndim;
    memcpy(shape, p->value.shape, sizeof shape);
    MHUB_TRY(mhub_tensor_alloc(&v, f->be, f->mdt, ndim, shape));
    mhub_status s = mhub_tensor_alloc(&g, f->be, MHUB_F32, ndim, shape);
    if (s != MHUB_OK) {
        mhub_tensor_free(&v);
        return s;
    }
    if (values && v.numel > 0)
        f->be->ops->copy(f->be, v.data, values, mhub_tensor_nbytes(&v),
                         MHUB_COPY_DEVICE_TO_DEVICE);
    if (grads && g.numel > 0)
        f->be->ops->copy(f->be, g.data, grads, mhub_tensor_nbytes(&g),
                         MHUB_COPY_DEVICE_TO_DEVICE);
    p->value = v;
    p->grad = g;
    return MHUB_OK;
}

/* Copy unit-vector elements [lo, lo + n) of `unit`, held in `src`, into
 * the f32 gradients of the unit's parameters that have storage. */
static mhub_status scatter_grads(mhub_fsdp *f, int unit, int64_t lo, int64_t n,
                                 const float *src)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    int64_t hi = lo + n;
    for (int k = 0; k < u->count; k++) {
        int i = f->plan.order[u->first + k];
        mhub_tensor *g = &f->params->items[i].grad;
        int64_t a = f->plan.param_offset[i], b = a + g->numel;
        int64_t from = a > lo ? a : lo, to = b < hi ? b : hi;
        if (from >= to || !g->data)
            continue;
        MHUB_TRY(f->be->ops->copy(f->be, (float *)g->data + (from - a), src + (from - lo),
                                  (size_t)(to - from) * sizeof(float),
                                  MHUB_COPY_DEVICE_TO_DEVICE));
    }
    return MHUB_OK;
}

/* Give `unit`'s parameters owned full storage holding the gathered values
 * and gradients. With f32 gradient slots the f32 gradient shards are
 * all-gathered into the unit's slot; a 16-bit slot cannot hold them, so
 * each rank's shard is broadcast in turn through the f32 widening scratch
 * (a shard long) and copied into place. Collective: every collective runs
 * even after a failure, so no rank is left waiting. */
static mhub_status restore_unit(mhub_fsdp *f, int unit)
{
    const mhub_unit_layout *u = &f->plan.units[unit];
    void *values = f->gather[slot_of(f, unit)].data;
    float *grads = f->gdt == MHUB_F32 ? grad_slot_of(f, unit)->data : NULL;
    mhub_status s = MHUB_OK;
    if (u->padded > 0) {
        s = gather_now(f, unit, f->vshard, f->mdt, values);
        if (grads) {
            mhub_status t = gather_now(f, unit, f->grads, MHUB_F32, grads);
            s = s != MHUB_OK ? s : t;
        }
    }
    for (int k = 0; k < u->count; k++) {
        int i = f->plan.order[u->first + k];
        int64_t off = f->plan.param_offset[i];
        mhub_status a = own_storage(f, &f->params->items[i],
                                    s == MHUB_OK ? elem_at(values, off, f->msize) : NULL,
                                    s == MHUB_OK && grads ? grads + off : NULL);
        s = s != MHUB_OK ? s : a;
    }
    if (grads || u->padded == 0)
        return s;
    for (int r = 0; r < f->dp->size; r++) {
        mhub_status t = MHUB_OK;
        if (r == f->dp->rank)
            t = f->be->ops->copy(f->be, f->widen, f->grads + u->shard_offset,
                                 (size_t)u->shard * sizeof(float), MHUB_COPY_DEVICE_TO_DEVICE);
        mhub_status b = mhub_comm_broadcast(f->dp, f->widen, u->shard, MHUB_F32, r);
        t = t != MHUB_OK ? t : b;
        if (t == MHUB_OK && s == MHUB_OK)
            t = scatter_grads(f, unit, (int64_t)r * u->shard, u->shard, f->widen);
        s = s != MHUB_OK ? s : t;
    }
    return s;
}

void mhub_fsdp_free(mhub_fsdp *f)
{
    if (!f)
        return;
    /* settle every collective first: a half-done backward's gradient is
     * dropped, finished reductions are added to the shards */
    for (int i = 0; i < f->num_grad; i++) {
        grad_slot *g = &f->grad[i];
        if (g->bound) {
            unbind_grads(f, g->unit);
            g->bound = false;
            g->unit = -1;
        }
        complete_reduce(f, g);
    }
    release_all_values(f);
    for (int unit = 0; unit < f->plan.num_units; unit++)
        restore_unit(f, unit);
    destroy(f);
}

/* ---- inspection ------------------------------------------------------------ */

int mhub_fsdp_num_units(const mhub_fsdp *f) { return f ? f->plan.num_units : 0; }

mhub_status mhub_fsdp_unit(const mhub_fsdp *f, int unit, mhub_fsdp_unit_info *out)
{
    if (!f || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or out is NULL");
    if (unit < 0 || unit >= f->plan.num_units)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "unit %d is outside [0, %d)", unit,
                          f->plan.num_units);
    const mhub_unit_layout *u = &f->plan.units[unit];
    out->num_params = u->count;
    out->first_param = u->count > 0 ? f->plan.order[u->first] : -1;
    out->numel = u->numel;
    out->padded_numel = u->padded;
    out->shard_numel = u->shard;
    out->reader = u->reader;
    return MHUB_OK;
}

bool mhub_fsdp_unit_gathered(const mhub_fsdp *f, int unit)
{
    if (!f || unit < 0 || unit >= f->plan.num_units)
        return false;
    const gather_slot *g = &f->gather[slot_of(f, unit)];
    return g->unit == unit && g->state == SLOT_READY;
}

void mhub_fsdp_get_stats(const mhub_fsdp *f, mhub_fsdp_stats *out)
{
    if (!out)
        return;
    if (!f) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = f->stats;
}

/* ---- checkpoint state --------------------------------------------------------- */

static mhub_status check_state_args(const mhub_fsdp *f, int param_index, int which,
                                    const float *full)
{
    if (!f || !full)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or full is NULL");
    if (param_index < 0 || param_index >= f->params->count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter %d of %d", param_index,
                          f->params->count);
    if (which < -1 || which >= f->num_state)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "state %d of %d", which, f->num_state);
    return MHUB_OK;
}

/* Where parameter i's elements [lo, hi) of rank r's slice lie: rank r
 * holds elements [r * shard, (r + 1) * shard) of the unit vector. Returns
 * false when the slice holds none of the parameter. */
static bool piece_of(const mhub_fsdp *f, int i, int r, int64_t *lo, int64_t *hi)
{
    const mhub_unit_layout *u = &f->plan.units[f->params->items[i].unit];
    int64_t a = f->plan.param_offset[i], b = a + f->params->items[i].value.numel;
    int64_t s0 = (int64_t)r * u->shard, s1 = s0 + u->shard;
    *lo = a > s0 ? a : s0;
    *hi = b < s1 ? b : s1;
    return *lo < *hi;
}

/* This rank's piece of parameter i out to to_full or in from from_full
 * (the other NULL): numel floats of host memory from the parameter's
 * first element. */
static mhub_status copy_piece(mhub_fsdp *f, int i, int which, float *to_full,
                              const float *from_full)
{
    int64_t lo, hi;
    if (!piece_of(f, i, f->dp->rank, &lo, &hi))
        return MHUB_OK;
    const mhub_unit_layout *u = &f->plan.units[f->params->items[i].unit];
    float *arr = (which < 0 ? f->values : f->state[which]) + u->shard_offset +
                 (lo - (int64_t)f->dp->rank * u->shard);
    int64_t at = lo - f->plan.param_offset[i];
    size_t bytes = (size_t)(hi - lo) * sizeof(float);
    if (to_full)
        return f->be->ops->copy(f->be, to_full + at, arr, bytes, MHUB_COPY_DEVICE_TO_HOST);
    return f->be->ops->copy(f->be, arr, from_full + at, bytes, MHUB_COPY_HOST_TO_DEVICE);
}

/* piece_of and copy_piece in mhub_dp_pieces' terms: offsets from the
 * parameter's first element. */
static bool fsdp_piece(const void *engine, int i, int r, int64_t *lo, int64_t *hi)
{
    const mhub_fsdp *f = engine;
    if (!piece_of(f, i, r, lo, hi))
        return false;
    *lo -= f->plan.param_offset[i];
    *hi -= f->plan.param_offset[i];
    return true;
}

static mhub_status fsdp_fill(void *engine, int i, int which, float *mine)
{
    return copy_piece(engine, i, which, mine, NULL);
}

mhub_status mhub_fsdp_get_state(mhub_fsdp *f, int param_index, int which, float *full)
{
    if (!f || !f->dp)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    mhub_status s = check_state_args(f, param_index, which, full);
    mhub_dp_pieces p = {f, param_index, which, 0, fsdp_fill, fsdp_piece};
    if (s == MHUB_OK)
        p.numel = f->params->items[param_index].value.numel;
    return mhub_dp_gather_pieces(f->dp, s, &p, full);
}

mhub_status mhub_fsdp_set_state(mhub_fsdp *f, int param_index, int which, const float *full)
{
    MHUB_TRY(check_state_args(f, param_index, which, full));
    MHUB_TRY(check_no_backward_open(f, "mhub_fsdp_set_state"));
    if (which >= 0)
        return copy_piece(f, param_index, which, NULL, full);
    /* a gathered copy would keep serving the old values */
    MHUB_TRY(release_all_values(f));
    MHUB_TRY(copy_piece(f, param_index, which, NULL, full));
    /* 16-bit models gather the model-dtype copy of the master */
    if (f->mdt == MHUB_F32)
        return MHUB_OK;
    return f->be->ops->cast(f->be, f->vshard, f->mdt, f->values, MHUB_F32,
                            f->plan.shard_numel);
}

int64_t mhub_fsdp_optim_steps(const mhub_fsdp *f)
{
    return f ? f->opt_step : 0;
}

mhub_status mhub_fsdp_set_optim_steps(mhub_fsdp *f, int64_t steps)
{
    if (!f || steps < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL or steps < 0");
    f->opt_step = steps;
    return MHUB_OK;
}
