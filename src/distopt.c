/* distopt.c - the distributed optimizer: padded buffers, sharded
 * optimizer state, reduce-scatter of gradients and all-gather of
 * parameters (see distopt.h for the picture).
 *
 * Life of a step:
 *   zero_grad -> forward (pre_forward hooks wait for gathers in flight)
 *   -> backward: grad_ready(param) for each parameter; a bucket whose
 *      parameters are all ready starts its reduce-scatter, in bucket order
 *   -> finish_grad_sync: issue the rest, wait, check NaN
 *   -> step: update each owned shard, copy it into the parameter buffer,
 *      all-gather bucket after bucket in forward order (last bucket first).
 *
 * Two pieces of bookkeeping carry the stale-weight guarantee:
 *   gather_pending (per bucket) is set when a gather is issued and cleared
 *     only by an explicit wait (hook, wait_params, the step itself), never
 *     by polling, so every rank agrees whether a forward skipped a wait;
 *   caller_waits records that the hooks or wait_params were seen since
 *     the last step; only then does the step leave gathers in flight. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mhub/backend.h"
#include "mhub/distopt.h"
#include "src/dp_common.h"

/* A run of parameter elements inside this rank's shard of one bucket. The
 * optimizer updates runs, not whole shards, so padding is never touched
 * (AdamW with eps 0 would turn zero padding into NaN). */
typedef struct segment {
    int64_t buf;    /* first element in the buffers */
    int64_t main;   /* first element in the main params and state arrays */
    int64_t numel;
} segment;

typedef struct bucket {
    const mhub_plan_bucket *at; /* its layout in the plan: offset and padded numel
                                 * are multiples of lcm(dp, 128) */
    bool grad_issued;      /* reduce-scatter started this step */
    bool gather_pending;   /* all-gather issued and not yet waited for */
    int first_segment;
    int num_segments;
    mhub_request grad_req;
    mhub_request param_req;
} bucket;

struct mhub_distopt {
    mhub_param_list *params;
    mhub_comm *dp;
    mhub_backend *be;
    mhub_ddp_config ddp_cfg;
    mhub_optim_config opt_cfg;
    bool overlap_param_gather;
    void *grads;            /* gradient buffer, parameters in reverse list order */
    void *values;           /* parameter buffer, same layout */
    mhub_dtype gdt, vdt;    /* their dtypes: gdt f32 or the model's, vdt the model's */
    size_t gsize, vsize;    /* their element sizes */
    float *main;            /* fp32 main params: this rank's shards, bucket after bucket */
    float *grad32;          /* a 16-bit gradient segment cast to f32 (largest shard) */
    float *state[2];        /* optimizer state arrays, laid out as main */
    int num_state;
    mhub_bucket_plan plan;  /* the buffers' layout: offsets, buckets, numel, padding */
    bucket *buckets;        /* per bucket of the plan */
    segment *segments;
    int num_segments;
    int *unit_lo, *unit_hi; /* per unit: range of buckets holding its parameters */
    int num_units;
    mhub_grad_schedule sched; /* readiness, reduce-scatter order, no_sync */
    bool grads_reduced;     /* finish_grad_sync succeeded since the last zero_grad/step */
    bool caller_waits;      /* hooks or wait_params seen since the last step */
    int64_t sync_step;      /* finish_grad_sync calls, for messages */
    int nan_param;          /* first parameter found non-finite this step, or -1 */
    mhub_sumtree tree;      /* deterministic mode's fixed-shape sum */
    mhub_distopt_stats stats;
};

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int64_t shard_numel(const mhub_distopt *d, const bucket *b)
{
    return b->at->numel / d->dp->size;
}

/* First element of this rank's shard of a bucket, in the buffers. */
static int64_t shard_start(const mhub_distopt *d, const bucket *b)
{
    return b->at->offset + (int64_t)d->dp->rank * shard_numel(d, b);
}

/* The main params hold every bucket's shard back to back; since bucket
 * offsets are multiples of dp, bucket b's shard starts at offset / dp. */
static int64_t main_start(const mhub_distopt *d, const bucket *b)
{
    return b->at->offset / d->dp->size;
}

/* Element `offset` of the gradient and parameter buffers. */
static void *grad_at(const mhub_distopt *d, int64_t offset)
{
    return (char *)d->grads + (size_t)offset * d->gsize;
}

static void *value_at(const mhub_distopt *d, int64_t offset)
{
    return (char *)d->values + (size_t)offset * d->vsize;
}

/* ---- layout ---------------------------------------------------------------- */

/* The shared planner with Megatron-Core's distributed-optimizer padding:
 * parameter starts aligned to 64 elements, bucket ends to lcm(dp, 128). A
 * bucket closes once it spans >= bucket_elems elements, alignment gaps
 * included. */
static mhub_status plan_buckets(mhub_distopt *d, int64_t bucket_elems)
{
    MHUB_TRY(mhub_bucket_plan_make(d->params, bucket_elems, MHUB_DISTOPT_PARAM_ALIGN,
                                   mhub_distopt_bucket_align(d->dp->size), &d->plan));
    int n = d->params->count, nb = d->plan.num_buckets;
    d->buckets = calloc((size_t)nb + 1, sizeof *d->buckets);
    d->segments = calloc((size_t)n + 1, sizeof *d->segments); /* at most one per parameter */
    if (!d->buckets || !d->segments)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "state of %d buckets", nb);
    for (int b = 0; b < nb; b++)
        d->buckets[b].at = &d->plan.buckets[b];
    return MHUB_OK;
}

/* The pieces of parameters inside this rank's shard of each bucket, in
 * buffer order (so grouped by bucket). */
static void plan_segments(mhub_distopt *d)
{
    for (int i = d->params->count - 1; i >= 0; i--) {
        int bi = d->plan.param_bucket[i];
        if (bi < 0)
            continue;
        bucket *b = &d->buckets[bi];
        if (b->num_segments == 0)
            b->first_segment = d->num_segments;
        int64_t s0 = shard_start(d, b), s1 = s0 + shard_numel(d, b);
        int64_t p0 = d->plan.param_offset[i], p1 = p0 + d->params->items[i].value.numel;
        int64_t lo = p0 > s0 ? p0 : s0, hi = p1 < s1 ? p1 : s1;
        if (lo >= hi)
            continue;
        d->segments[d->num_segments++] =
            (segment){.buf = lo, .main = main_start(d, b) + (lo - s0), .numel = hi - lo};
        b->num_segments++;
    }
}

/* Which buckets a unit's pre_forward must wait for. A unit whose
 * parameters are not contiguous waits for the whole range between them:
 * more than needed, never less. */
static mhub_status plan_units(mhub_distopt *d)
{
    d->num_units = 0;
    for (int i = 0; i < d->params->count; i++)
        if (d->plan.param_bucket[i] >= 0 && d->params->items[i].unit >= d->num_units)
            d->num_units = d->params->items[i].unit + 1;
    /* at least one unit: check_params saw a parameter with unit >= 0 */
    d->unit_lo = malloc((size_t)d->num_units * sizeof *d->unit_lo);
    d->unit_hi = malloc((size_t)d->num_units * sizeof *d->unit_hi);
    if (!d->unit_lo || !d->unit_hi)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "unit tables for %d units", d->num_units);
    for (int u = 0; u < d->num_units; u++) {
        d->unit_lo[u] = INT_MAX;
        d->unit_hi[u] = -1;
    }
    for (int i = 0; i < d->params->count; i++) {
        int bi = d->plan.param_bucket[i], u = d->params->items[i].unit;
        if (bi < 0)
            continue;
        d->unit_lo[u] = bi < d->unit_lo[u] ? bi : d->unit_lo[u];
        d->unit_hi[u] = bi > d->unit_hi[u] ? bi : d->unit_hi[u];
    }
    return MHUB_OK;
}

static mhub_status alloc_bytes(mhub_distopt *d, size_t bytes, void **out)
{
    return d->be->ops->alloc(d->be, bytes, out);
}

static mhub_status alloc_floats(mhub_distopt *d, int64_t n, float **out)
{
    void *p = NULL;
    MHUB_TRY(alloc_bytes(d, (size_t)n * sizeof(float), &p));
    *out = p;
    return MHUB_OK;
}

/* The largest bucket shard: the f32 scratch a 16-bit gradient segment is
 * widened into. */
static int64_t widest_shard(const mhub_bucket_plan *plan, int dp_size)
{
    int64_t widest = 0;
    for (int b = 0; b < plan->num_buckets; b++) {
        int64_t shard = plan->buckets[b].numel / dp_size;
        widest = shard > widest ? shard : widest;
    }
    return widest;
}

/* Both buffers in full on every rank (ZeRO-1/2: only the optimizer side is
 * sharded), in their dtypes (zeroed, so padding starts at zero); main
 * params and state for this rank's shards; for a 16-bit gradient buffer an
 * f32 scratch as large as the largest shard. */
static mhub_status alloc_buffers(mhub_distopt *d)
{
    int64_t shards = d->plan.numel / d->dp->size;
    MHUB_TRY(alloc_bytes(d, (size_t)d->plan.numel * d->gsize, &d->grads));
    MHUB_TRY(alloc_bytes(d, (size_t)d->plan.numel * d->vsize, &d->values));
    MHUB_TRY(alloc_floats(d, shards, &d->main));
    if (d->gdt != MHUB_F32)
        MHUB_TRY(alloc_floats(d, widest_shard(&d->plan, d->dp->size), &d->grad32));
    d->num_state = mhub_optim_state_arrays(&d->opt_cfg);
    for (int k = 0; k < d->num_state; k++)
        MHUB_TRY(alloc_floats(d, shards, &d->state[k]));
    return MHUB_OK;
}

/* Values of the parameters left out of the buffers (no gradient): they
 * keep their own storage. */
static int64_t unbuffered_value_bytes(const mhub_param_list *params, const mhub_bucket_plan *plan)
{
    int64_t bytes = 0;
    for (int i = 0; i < params->count; i++)
        if (plan->param_bucket[i] < 0)
            bytes += params->items[i].value.numel *
                     (int64_t)mhub_dtype_size(params->items[i].value.dtype);
    return bytes;
}

/* alloc_buffers' sizes from the same plan, and the first step's
 * deterministic-mode buffers. */
mhub_status mhub_distopt_estimate_memory(const mhub_param_list *params, int dp_size,
                                         const mhub_ddp_config *ddp_cfg,
                                         const mhub_optim_config *opt_cfg, mhub_dp_memory *out)
{
    const char *engine = "distributed optimizer";
    memset(out, 0, sizeof *out);
    MHUB_TRY(mhub_ddp_config_validate(ddp_cfg));
    MHUB_TRY(mhub_optim_config_validate(opt_cfg));
    mhub_dtype vdt, gdt;
    MHUB_TRY(mhub_dp_check_shapes(params, engine, &vdt));
    MHUB_TRY(mhub_dp_grad_dtype(ddp_cfg, vdt, engine, &gdt));
    if (ddp_cfg->deterministic)
        MHUB_TRY(mhub_dp_check_pow2(dp_size, "dp"));
    mhub_bucket_plan plan;
    MHUB_TRY(mhub_bucket_plan_make(params, mhub_ddp_config_bucket_elems(ddp_cfg, dp_size),
                                   MHUB_DISTOPT_PARAM_ALIGN, mhub_distopt_bucket_align(dp_size),
                                   &plan));
    int64_t shard_bytes = plan.numel / dp_size * (int64_t)sizeof(float);
    out->param_bytes = plan.numel * (int64_t)mhub_dtype_size(vdt) +
                       unbuffered_value_bytes(params, &plan);
    out->grad_bytes = plan.numel * (int64_t)mhub_dtype_size(gdt);
    out->main_param_bytes = shard_bytes;
    out->optim_state_bytes = mhub_optim_state_arrays(opt_cfg) * shard_bytes;
    if (gdt != MHUB_F32)
        out->scratch_bytes = widest_shard(&plan, dp_size) * (int64_t)sizeof(float);
    if (ddp_cfg->deterministic)
        out->scratch_bytes += mhub_sumtree_bytes(plan.numel, dp_size, true);
    out->padding_elems = plan.padding;
    mhub_bucket_plan_free(&plan);
    return MHUB_OK;
}

/* Move a tensor's contents into its buffer slot (of dtype dt, converting
 * from the tensor's own) and point it there. */
static mhub_status adopt_tensor(mhub_distopt *d, mhub_tensor *t, void *slot, mhub_dtype dt,
                                const mhub_tensor *shape_of)
{
    if (t->data && shape_of->numel > 0)
        MHUB_TRY(d->be->ops->cast(d->be, slot, dt, t->data, t->dtype, shape_of->numel));
    mhub_tensor view;
    MHUB_TRY(mhub_tensor_wrap(&view, slot, d->be, dt, shape_of->ndim, shape_of->shape));
    mhub_tensor_free(t);
    *t = view;
    return MHUB_OK;
}

static mhub_status adopt_params(mhub_distopt *d)
{
    for (int i = 0; i < d->params->count; i++) {
        mhub_param *p = &d->params->items[i];
        if (d->plan.param_bucket[i] < 0)
            continue;
        MHUB_TRY(adopt_tensor(d, &p->grad, grad_at(d, d->plan.param_offset[i]), d->gdt, &p->value));
        MHUB_TRY(adopt_tensor(d, &p->value, value_at(d, d->plan.param_offset[i]), d->vdt,
                              &p->value));
    }
    return MHUB_OK;
}

/* Main params = this rank's shards of the parameter buffer, in f32. */
static mhub_status load_main_params(mhub_distopt *d)
{
    for (int b = 0; b < d->plan.num_buckets; b++) {
        const bucket *bk = &d->buckets[b];
        MHUB_TRY(d->be->ops->cast(d->be, d->main + main_start(d, bk), MHUB_F32,
                                  value_at(d, shard_start(d, bk)), d->vdt, shard_numel(d, bk)));
    }
    return MHUB_OK;
}

mhub_status mhub_distopt_create(mhub_param_list *params, mhub_comm *dp,
                                const mhub_ddp_config *ddp_cfg,
                                const mhub_optim_config *opt_cfg, mhub_distopt **out)
{
    if (!params || !dp || !ddp_cfg || !opt_cfg || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "params, dp communicator, ddp config, optimizer config or out is NULL");
    *out = NULL;
    MHUB_TRY(mhub_ddp_config_validate(ddp_cfg));
    MHUB_TRY(mhub_optim_config_validate(opt_cfg));
    mhub_backend *be;
    mhub_dtype model_dt;
    MHUB_TRY(mhub_dp_check_params_any(params, "distributed optimizer", &be, &model_dt));
    mhub_dtype gdt;
    MHUB_TRY(mhub_dp_grad_dtype(ddp_cfg, model_dt, "distributed optimizer", &gdt));
    mhub_distopt *d = calloc(1, sizeof *d);
    if (!d)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "engine struct");
    d->params = params;
    d->dp = dp;
    d->be = be;
    d->gdt = gdt;
    d->vdt = model_dt;
    d->gsize = mhub_dtype_size(gdt);
    d->vsize = mhub_dtype_size(model_dt);
    d->ddp_cfg = *ddp_cfg;
    d->opt_cfg = *opt_cfg;
    d->overlap_param_gather = ddp_cfg->overlap_param_gather;
    d->nan_param = -1;
    mhub_status s = plan_buckets(d, mhub_ddp_config_bucket_elems(ddp_cfg, dp->size));
    if (s == MHUB_OK) {
        plan_segments(d);
        s = plan_units(d);
    }
    if (s == MHUB_OK)
        s = mhub_schedule_init(&d->sched, params->count, d->plan.param_bucket, d->plan.num_buckets);
    if (s == MHUB_OK && ddp_cfg->deterministic)
        s = mhub_sumtree_init(&d->tree, be, dp, d->plan.numel);
    if (s == MHUB_OK)
        s = alloc_buffers(d);
    if (s == MHUB_OK)
        s = adopt_params(d);
    if (s == MHUB_OK)
        s = load_main_params(d);
    if (s != MHUB_OK) {
        mhub_distopt_free(d);
        return s;
    }
    *out = d;
    return MHUB_OK;
}

/* Give a tensor private storage of dtype dt holding its slot's values
 * (converted from the slot's dtype, the tensor's). */
static void release_tensor(mhub_distopt *d, mhub_tensor *t, const void *slot, mhub_dtype dt)
{
    if (t->owns_data || t->data != slot)
        return; /* never adopted (create failed part-way) */
    int64_t shape[MHUB_MAX_DIMS];
    int ndim = t->ndim;
    memcpy(shape, t->shape, sizeof shape);
    mhub_tensor own;
    if (mhub_tensor_alloc(&own, d->be, dt, ndim, shape) == MHUB_OK) {
        d->be->ops->cast(d->be, own.data, dt, slot, t->dtype, own.numel);
        *t = own;
    } else {
        mhub_tensor_init_meta(t, dt, ndim, shape);
    }
}

static void free_floats(mhub_distopt *d, void *p)
{
    if (p)
        d->be->ops->free(d->be, p);
}

void mhub_distopt_free(mhub_distopt *d)
{
    if (!d)
        return;
    /* complete every collective first: the parameter values must be whole
     * before they are copied out, and no request may outlive its buffer */
    for (int b = 0; d->buckets && b < d->plan.num_buckets; b++) {
        mhub_request_wait(&d->buckets[b].grad_req);
        mhub_request_wait(&d->buckets[b].param_req);
    }
    for (int i = 0; d->plan.param_bucket && i < d->params->count; i++) {
        if (d->plan.param_bucket[i] < 0)
            continue;
        mhub_param *p = &d->params->items[i];
        /* values in their own dtype, gradients in f32 (as DDP's release) */
        if (d->values)
            release_tensor(d, &p->value, value_at(d, d->plan.param_offset[i]), d->vdt);
        if (d->grads)
            release_tensor(d, &p->grad, grad_at(d, d->plan.param_offset[i]), MHUB_F32);
    }
    free_floats(d, d->grads);
    free_floats(d, d->values);
    free_floats(d, d->main);
    free_floats(d, d->grad32);
    for (int k = 0; k < 2; k++)
        free_floats(d, d->state[k]);
    mhub_bucket_plan_free(&d->plan);
    mhub_schedule_free(&d->sched);
    free(d->buckets);
    free(d->segments);
    free(d->unit_lo);
    free(d->unit_hi);
    mhub_sumtree_free(&d->tree);
    free(d);
}

static mhub_status wait_all_gathers(mhub_distopt *d);

mhub_status mhub_distopt_set_overlap_param_gather(mhub_distopt *d, bool on)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    /* not wait_params: that would count as evidence of a waiting caller */
    if (!on)
        MHUB_TRY(wait_all_gathers(d));
    d->overlap_param_gather = on;
    return MHUB_OK;
}

/* ---- parameter gathers ---------------------------------------------------- */

static mhub_status wait_gather(mhub_distopt *d, bucket *b)
{
    if (!b->gather_pending)
        return MHUB_OK;
    double t0 = now_seconds();
    mhub_status s = mhub_request_wait(&b->param_req);
    b->gather_pending = false;
    d->stats.param_wait_seconds += now_seconds() - t0;
    return s;
}

/* Wait in forward order (the order they were issued in). Every bucket is
 * waited even after an error, so no request stays behind. */
static mhub_status wait_all_gathers(mhub_distopt *d)
{
    mhub_status s = MHUB_OK;
    for (int b = d->plan.num_buckets - 1; b >= 0; b--) {
        mhub_status w = wait_gather(d, &d->buckets[b]);
        if (s == MHUB_OK)
            s = w;
    }
    return s;
}

/* A gather still pending here means a forward ran since the step without
 * waiting for it. Complete the gathers (so the engine can go on) and say
 * so: training on would use gradients of stale weights. */
static mhub_status refuse_stale_forward(mhub_distopt *d, const char *where)
{
    int stale = -1;
    for (int b = d->plan.num_buckets - 1; b >= 0 && stale < 0; b--)
        if (d->buckets[b].gather_pending)
            stale = b;
    if (stale < 0)
        return MHUB_OK;
    MHUB_TRY(wait_all_gathers(d));
    return MHUB_ERROR(MHUB_ERR_STATE,
                      "%s after step %lld: the all-gather of bucket %d (parameter '%s' on) was "
                      "still in flight, so the forward since the step may have read stale "
                      "weights; install mhub_distopt_unit_hooks on the model or call "
                      "mhub_distopt_wait_params before forward",
                      where, (long long)d->stats.steps, stale,
                      d->params->items[d->buckets[stale].at->first_param].name);
}

/* Let issued collectives progress (MPI moves messages only inside MPI
 * calls). A completed gather stays pending until explicitly waited. */
static mhub_status poll_requests(mhub_distopt *d)
{
    for (int b = 0; b < d->plan.num_buckets; b++) {
        bool done;
        if (d->buckets[b].grad_req.active)
            MHUB_TRY(mhub_request_test(&d->buckets[b].grad_req, &done));
        if (d->buckets[b].param_req.active)
            MHUB_TRY(mhub_request_test(&d->buckets[b].param_req, &done));
    }
    return MHUB_OK;
}

static mhub_status pre_forward_hook(void *user, int unit)
{
    mhub_distopt *d = user;
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (unit < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "unit %d: units are numbered from 0", unit);
    d->caller_waits = true;
    if (unit >= d->num_units)
        return MHUB_OK; /* a unit without parameters in the buffers */
    for (int b = d->unit_lo[unit]; b <= d->unit_hi[unit]; b++)
        MHUB_TRY(wait_gather(d, &d->buckets[b]));
    /* move the later units' gathers on while this unit computes */
    return poll_requests(d);
}

mhub_status mhub_distopt_unit_hooks(mhub_distopt *d, mhub_unit_hooks *out)
{
    if (!d || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or out is NULL");
    memset(out, 0, sizeof *out);
    out->pre_forward = pre_forward_hook;
    out->user = d;
    return MHUB_OK;
}

mhub_status mhub_distopt_wait_params(mhub_distopt *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    d->caller_waits = true;
    return wait_all_gathers(d);
}

/* ---- gradients -------------------------------------------------------------- */

/* Remember the first parameter of a bucket holding a NaN/Inf. */
static mhub_status scan_for_nan(mhub_distopt *d, const bucket *b)
{
    double ss = 0;
    /* f32 gradients only: create refuses the check otherwise */
    MHUB_TRY(d->be->ops->sum_squares(d->be, (const float *)grad_at(d, b->at->offset),
                                     b->at->numel, &ss));
    if (isfinite(ss) || d->nan_param >= 0)
        return MHUB_OK;
    int index = (int)(b - d->buckets);
    /* the bucket's parameters: from first_param down, until the next bucket */
    for (int i = b->at->first_param; i >= 0 && d->plan.param_bucket[i] <= index; i--) {
        if (d->plan.param_bucket[i] != index)
            continue;
        const mhub_param *p = &d->params->items[i];
        MHUB_TRY(d->be->ops->sum_squares(d->be, p->grad.data, p->value.numel, &ss));
        if (!isfinite(ss)) {
            d->nan_param = i;
            break;
        }
    }
    return MHUB_OK;
}

/* In place: rank r's reduced shard lands at its own block of the bucket. */
static mhub_status issue_reduce_scatter(mhub_distopt *d, int index, bool in_backward)
{
    bucket *b = &d->buckets[index];
    if (d->ddp_cfg.check_for_nan_in_grad)
        MHUB_TRY(scan_for_nan(d, b));
    b->grad_issued = true;
    d->stats.buckets_issued++;
    d->stats.issued_in_backward += in_backward;
    if (d->dp->size == 1 || b->at->numel == 0)
        return MHUB_OK; /* the mean over one rank is the gradient itself */
    void *data = grad_at(d, b->at->offset);
    mhub_reduce_op op;
    MHUB_TRY(mhub_dp_prepare_reduce(&d->ddp_cfg, d->be, d->dp, data, d->gdt, b->at->numel, &op));
    return mhub_comm_ireduce_scatter(d->dp, data, grad_at(d, shard_start(d, b)),
                                     shard_numel(d, b), d->gdt, op, &b->grad_req);
}

mhub_status mhub_distopt_grad_ready(void *user, int param_index)
{
    mhub_distopt *d = user;
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (param_index < 0 || param_index >= d->params->count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter index %d is outside [0, %d)",
                          param_index, d->params->count);
    MHUB_TRY(refuse_stale_forward(d, "backward"));
    MHUB_TRY(poll_requests(d));
    if (d->ddp_cfg.deterministic ||
        !mhub_schedule_ready(&d->sched, param_index, d->plan.param_bucket[param_index]) ||
        !d->ddp_cfg.overlap_grad_reduce)
        return MHUB_OK;
    /* strictly in bucket order: collectives must match on every rank */
    while (mhub_schedule_can_issue(&d->sched)) {
        MHUB_TRY(issue_reduce_scatter(d, d->sched.next, true));
        d->sched.next++;
    }
    return MHUB_OK;
}

static void reset_step(mhub_distopt *d)
{
    for (int b = 0; b < d->plan.num_buckets; b++)
        d->buckets[b].grad_issued = false;
    mhub_schedule_reset(&d->sched);
    d->nan_param = -1;
}

mhub_status mhub_distopt_zero_grad(mhub_distopt *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (d->sched.next > 0)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "step %lld: gradients are still being reduce-scattered; call "
                          "mhub_distopt_finish_grad_sync first",
                          (long long)d->sync_step);
    reset_step(d);
    if (d->ddp_cfg.deterministic)
        mhub_sumtree_reset(&d->tree);
    d->grads_reduced = false;
    return d->be->ops->memset_zero(d->be, d->grads, (size_t)d->plan.numel * d->gsize);
}

mhub_status mhub_distopt_no_sync_begin(mhub_distopt *d)
{
    return d ? mhub_schedule_no_sync_begin(&d->sched)
             : MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
}

mhub_status mhub_distopt_no_sync_end(mhub_distopt *d)
{
    return d ? mhub_schedule_no_sync_end(&d->sched)
             : MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
}

mhub_status mhub_distopt_shard_done(mhub_distopt *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (!d->ddp_cfg.deterministic)
        return MHUB_ERROR(MHUB_ERR_STATE, "shard_done is for deterministic mode only");
    return mhub_sumtree_fold(&d->tree, (float *)d->grads); /* f32: create checked */
}

/* Deterministic mode reduces the whole gradient buffer with the fixed
 * tree (as DDP does) instead of reduce-scattering: every rank then holds
 * the total, of which the step reads its shards. One all-reduce's
 * traffic instead of a reduce-scatter's, for bitwise-identical results. */
static mhub_status reduce_deterministic(mhub_distopt *d)
{
    MHUB_TRY(mhub_sumtree_collect(&d->tree, (float *)d->grads));
    mhub_status s = MHUB_OK;
    for (int b = 0; d->ddp_cfg.check_for_nan_in_grad && s == MHUB_OK && b < d->plan.num_buckets;
         b++)
        s = scan_for_nan(d, &d->buckets[b]);
    if (s == MHUB_OK)
        s = mhub_sumtree_exchange(&d->tree, (float *)d->grads);
    d->stats.buckets_issued += d->dp->size > 1;
    return s;
}

mhub_status mhub_distopt_finish_grad_sync(mhub_distopt *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (!d->sched.last_microbatch)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "finish_grad_sync inside a no_sync scope: end the scope and run the "
                          "last micro-batch first");
    MHUB_TRY(refuse_stale_forward(d, "finish_grad_sync"));
    double t0 = now_seconds();
    mhub_status s = MHUB_OK;
    if (d->ddp_cfg.deterministic)
        s = reduce_deterministic(d);
    /* buckets not issued in backward: all of them without overlap, and any
     * holding a parameter unused this step (and those after it) */
    while (!d->ddp_cfg.deterministic && s == MHUB_OK && d->sched.next < d->plan.num_buckets) {
        s = issue_reduce_scatter(d, d->sched.next, false);
        d->sched.next++;
    }
    for (int b = 0; b < d->sched.next; b++) {
        mhub_status w = mhub_request_wait(&d->buckets[b].grad_req);
        if (s == MHUB_OK)
            s = w;
    }
    if (s == MHUB_OK && d->ddp_cfg.check_for_nan_in_grad)
        s = mhub_dp_agree_on_nan(d->dp, d->params, d->nan_param, d->sync_step,
                                 "distributed optimizer");
    d->grads_reduced = s == MHUB_OK;
    d->stats.sync_wait_seconds += now_seconds() - t0;
    d->stats.grad_syncs++;
    d->sync_step++;
    reset_step(d);
    return s;
}

/* ---- the step --------------------------------------------------------------- */

/* The update rule on each run of parameter elements in this rank's shard
 * (a 16-bit gradient run read through the f32 scratch), then the whole
 * shard of f32 main params (padding stays zero) cast into the parameter
 * buffer, in the model's dtype. */
static mhub_status update_shard(mhub_distopt *d, const bucket *b, int64_t t)
{
    for (int k = 0; k < b->num_segments; k++) {
        const segment *sg = &d->segments[b->first_segment + k];
        float *state[2] = {NULL, NULL};
        for (int a = 0; a < d->num_state; a++)
            state[a] = d->state[a] + sg->main;
        const float *grad = grad_at(d, sg->buf);
        if (d->gdt != MHUB_F32) {
            MHUB_TRY(d->be->ops->cast(d->be, d->grad32, MHUB_F32, grad_at(d, sg->buf), d->gdt,
                                      sg->numel));
            grad = d->grad32;
        }
        MHUB_TRY(mhub_optim_update(d->be, &d->opt_cfg, d->main + sg->main, grad, state,
                                   sg->numel, t));
    }
    if (d->vdt == MHUB_F32)
        return d->be->ops->copy(d->be, value_at(d, shard_start(d, b)), d->main + main_start(d, b),
                                (size_t)shard_numel(d, b) * sizeof(float),
                                MHUB_COPY_DEVICE_TO_DEVICE);
    return d->be->ops->cast(d->be, value_at(d, shard_start(d, b)), d->vdt,
                            d->main + main_start(d, b), MHUB_F32, shard_numel(d, b));
}

/* ---- gradient clipping -------------------------------------------------- */

static mhub_status check_reduced(const mhub_distopt *d, const char *call)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (!d->grads_reduced)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "%s at step %lld: no reduced gradients; call "
                          "mhub_distopt_finish_grad_sync (successfully) first",
                          call, (long long)d->stats.steps);
    return MHUB_OK;
}

/* The f64 sum of squares of n gradient elements at buffer offset `at`. */
static mhub_status run_sum_squares(mhub_distopt *d, int64_t at, int64_t n, double *out)
{
    const float *g = grad_at(d, at);
    if (d->gdt != MHUB_F32) {
        MHUB_TRY(d->be->ops->cast(d->be, d->grad32, MHUB_F32, g, d->gdt, n));
        g = d->grad32;
    }
    return d->be->ops->sum_squares(d->be, g, n, out);
}

/* Deterministic mode: every parameter's full reduced gradient, in list
 * order (f32: create checked). */
static mhub_status full_sum_squares(mhub_distopt *d, double *out)
{
    for (int i = 0; i < d->params->count; i++) {
        const mhub_param *p = &d->params->items[i];
        double part = 0;
        if (d->plan.param_bucket[i] < 0)
            continue;
        MHUB_TRY(d->be->ops->sum_squares(d->be, grad_at(d, d->plan.param_offset[i]),
                                         p->value.numel, &part));
        *out += part;
    }
    return MHUB_OK;
}

mhub_status mhub_distopt_grad_sum_squares(mhub_distopt *d, double *out, bool *partial)
{
    MHUB_TRY(check_reduced(d, "grad_sum_squares"));
    if (!out || !partial)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out or partial is NULL");
    *out = 0;
    *partial = !d->ddp_cfg.deterministic;
    if (d->ddp_cfg.deterministic)
        return full_sum_squares(d, out);
    for (int k = 0; k < d->num_segments; k++) {
        double part = 0;
        MHUB_TRY(run_sum_squares(d, d->segments[k].buf, d->segments[k].numel, &part));
        *out += part;
    }
    return MHUB_OK;
}

/* Deterministic mode: the whole buffer, so that the full gradient every
 * rank holds (and sums its norm from) stays the same on every rank. */
static mhub_status scale_full(mhub_distopt *d, float factor)
{
    for (int i = 0; i < d->params->count; i++)
        if (d->plan.param_bucket[i] >= 0)
            MHUB_TRY(d->be->ops->scale(d->be, grad_at(d, d->plan.param_offset[i]),
                                       d->params->items[i].value.numel, factor));
    return MHUB_OK;
}

mhub_status mhub_distopt_scale_grads(mhub_distopt *d, float factor)
{
    MHUB_TRY(check_reduced(d, "scale_grads"));
    if (d->ddp_cfg.deterministic)
        return scale_full(d, factor); /* f32: create checked */
    for (int k = 0; k < d->num_segments; k++) {
        const segment *sg = &d->segments[k];
        void *g = grad_at(d, sg->buf);
        if (d->gdt == MHUB_F32) {
            MHUB_TRY(d->be->ops->scale(d->be, g, sg->numel, factor));
            continue;
        }
        MHUB_TRY(d->be->ops->cast(d->be, d->grad32, MHUB_F32, g, d->gdt, sg->numel));
        MHUB_TRY(d->be->ops->scale(d->be, d->grad32, sg->numel, factor));
        MHUB_TRY(d->be->ops->cast(d->be, g, d->gdt, d->grad32, MHUB_F32, sg->numel));
    }
    return MHUB_OK;
}

/* In place: this rank's block is already its slot of the bucket. */
static mhub_status issue_gather(mhub_distopt *d, bucket *b, bool deferred)
{
    if (d->dp->size == 1 || b->at->numel == 0)
        return MHUB_OK;
    MHUB_TRY(mhub_comm_iallgather(d->dp, value_at(d, shard_start(d, b)), value_at(d, b->at->offset),
                                  shard_numel(d, b), d->vdt, &b->param_req));
    b->gather_pending = true;
    d->stats.gathers_issued++;
    d->stats.gathers_deferred += deferred;
    return MHUB_OK;
}

mhub_status mhub_distopt_step(mhub_distopt *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    MHUB_TRY(refuse_stale_forward(d, "step"));
    if (!d->grads_reduced)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "step %lld: no reduced gradients; call mhub_distopt_finish_grad_sync "
                          "(successfully) after backward and before the step",
                          (long long)d->stats.steps);
    d->grads_reduced = false;
    /* leave the gathers to the next forward only if it is known to wait */
    bool defer = d->overlap_param_gather && d->caller_waits;
    d->caller_waits = false;
    int64_t t = d->stats.steps + 1;
    mhub_status s = MHUB_OK;
    /* forward order: the first layers' bucket is updated and sent first,
     * and each gather overlaps the next bucket's update */
    for (int b = d->plan.num_buckets - 1; b >= 0 && s == MHUB_OK; b--) {
        s = update_shard(d, &d->buckets[b], t);
        if (s == MHUB_OK)
            s = issue_gather(d, &d->buckets[b], defer);
    }
    if (s == MHUB_OK)
        d->stats.steps++;
    if (!defer || s != MHUB_OK) {
        mhub_status w = wait_all_gathers(d);
        if (s == MHUB_OK)
            s = w;
    }
    return s;
}

mhub_status mhub_distopt_broadcast_params(mhub_distopt *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    MHUB_TRY(wait_all_gathers(d));
    if (d->dp->size > 1) {
        MHUB_TRY(mhub_comm_broadcast(d->dp, d->values, d->plan.numel, d->vdt, 0));
        for (int i = 0; i < d->params->count; i++) {
            mhub_param *p = &d->params->items[i];
            if (d->plan.param_bucket[i] < 0 && p->value.data)
                MHUB_TRY(mhub_comm_broadcast(d->dp, p->value.data, p->value.numel,
                                             p->value.dtype, 0));
        }
    }
    return load_main_params(d);
}

mhub_status mhub_distopt_set_lr(mhub_distopt *d, float lr)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    mhub_optim_config c = d->opt_cfg;
    c.lr = lr;
    MHUB_TRY(mhub_optim_config_validate(&c));
    d->opt_cfg = c;
    return MHUB_OK;
}

/* ---- inspection --------------------------------------------------------------- */

int mhub_distopt_num_buckets(const mhub_distopt *d) { return d ? d->plan.num_buckets : 0; }

mhub_status mhub_distopt_bucket(const mhub_distopt *d, int index, mhub_distopt_bucket_info *out)
{
    if (!d || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or out is NULL");
    if (index < 0 || index >= d->plan.num_buckets)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "bucket %d is outside [0, %d)", index,
                          d->plan.num_buckets);
    const bucket *b = &d->buckets[index];
    out->offset = b->at->offset;
    out->numel = b->at->numel;
    out->shard_numel = shard_numel(d, b);
    out->padding = b->at->numel - b->at->param_numel;
    out->num_params = b->at->num_params;
    out->first_param = b->at->first_param;
    out->gather_in_flight = b->gather_pending;
    return MHUB_OK;
}

int mhub_distopt_param_bucket(const mhub_distopt *d, int param_index)
{
    if (!d || param_index < 0 || param_index >= d->params->count)
        return -1;
    return d->plan.param_bucket[param_index];
}

int64_t mhub_distopt_param_offset(const mhub_distopt *d, int param_index)
{
    if (mhub_distopt_param_bucket(d, param_index) < 0)
        return -1;
    return d->plan.param_offset[param_index];
}

int64_t mhub_distopt_numel(const mhub_distopt *d) { return d ? d->plan.numel : 0; }

int64_t mhub_distopt_padding_elems(const mhub_distopt *d) { return d ? d->plan.padding : 0; }

void mhub_distopt_get_memory(const mhub_distopt *d, mhub_distopt_memory *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!d)
        return;
    size_t shards = (size_t)(d->plan.numel / d->dp->size) * sizeof(float);
    out->grad_buffer_bytes = (size_t)d->plan.numel * d->gsize;
    out->param_buffer_bytes = (size_t)d->plan.numel * d->vsize;
    out->main_param_bytes = shards;
    out->optimizer_state_bytes = (size_t)d->num_state * shards;
}

void mhub_distopt_get_stats(const mhub_distopt *d, mhub_distopt_stats *out)
{
    if (!out)
        return;
    if (!d) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = d->stats;
}

/* ---- checkpoint state ------------------------------------------------------- */

static mhub_status check_state_args(const mhub_distopt *d, int param_index, int which,
                                    const float *full)
{
    if (!d || !full)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or full is NULL");
    if (param_index < 0 || param_index >= d->params->count ||
        d->plan.param_bucket[param_index] < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter %d has no optimizer state",
                          param_index);
    if (which < -1 || which >= d->num_state)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "state %d of %d", which, d->num_state);
    return MHUB_OK;
}

/* The f32 array, laid out as the main params, that holds `which`. */
static float *state_array(const mhub_distopt *d, int which)
{
    return which < 0 ? d->main : d->state[which];
}

/* Copy this rank's pieces of parameter i out to to_full, or in from
 * from_full (the other NULL): numel floats of host memory indexed from
 * the parameter's first element. */
static mhub_status copy_pieces(mhub_distopt *d, int i, int which, float *to_full,
                               const float *from_full)
{
    int64_t p0 = d->plan.param_offset[i], p1 = p0 + d->params->items[i].value.numel;
    float *arr = state_array(d, which);
    for (int k = 0; k < d->num_segments; k++) {
        const segment *sg = &d->segments[k];
        if (sg->buf + sg->numel <= p0 || sg->buf >= p1)
            continue;   /* another parameter's piece; a piece never spans two */
        int64_t at = sg->buf - p0;
        size_t bytes = (size_t)sg->numel * sizeof(float);
        MHUB_TRY(to_full ? d->be->ops->copy(d->be, to_full + at, arr + sg->main, bytes,
                                            MHUB_COPY_DEVICE_TO_HOST)
                         : d->be->ops->copy(d->be, arr + sg->main, from_full + at, bytes,
                                            MHUB_COPY_HOST_TO_DEVICE));
    }
    return MHUB_OK;
}

/* Rank r's piece of parameter i: where the parameter meets rank r's shard
 * of its bucket, in the parameter's coordinates. */
static bool distopt_piece(const void *engine, int i, int r, int64_t *lo, int64_t *hi)
{
    const mhub_distopt *d = engine;
    const bucket *b = &d->buckets[d->plan.param_bucket[i]];
    int64_t p0 = d->plan.param_offset[i], n = d->params->items[i].value.numel;
    int64_t s0 = b->at->offset + r * shard_numel(d, b), s1 = s0 + shard_numel(d, b);
    *lo = (p0 > s0 ? p0 : s0) - p0;
    *hi = (p0 + n < s1 ? p0 + n : s1) - p0;
    return *lo < *hi;
}

static mhub_status distopt_fill(void *engine, int i, int which, float *mine)
{
    return copy_pieces(engine, i, which, mine, NULL);
}

mhub_status mhub_distopt_get_state(mhub_distopt *d, int param_index, int which, float *full)
{
    if (!d || !d->dp)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    mhub_status s = check_state_args(d, param_index, which, full);
    mhub_dp_pieces p = {d, param_index, which, 0, distopt_fill, distopt_piece};
    if (s == MHUB_OK)
        p.numel = d->params->items[param_index].value.numel;
    return mhub_dp_gather_pieces(d->dp, s, &p, full);
}

mhub_status mhub_distopt_set_state(mhub_distopt *d, int param_index, int which,
                                   const float *full)
{
    MHUB_TRY(check_state_args(d, param_index, which, full));
    return copy_pieces(d, param_index, which, NULL, full);
}

int64_t mhub_distopt_optim_steps(const mhub_distopt *d)
{
    return d ? d->stats.steps : 0;
}

mhub_status mhub_distopt_set_optim_steps(mhub_distopt *d, int64_t steps)
{
    if (!d || steps < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL or steps < 0");
    d->stats.steps = steps;
    return MHUB_OK;
}
