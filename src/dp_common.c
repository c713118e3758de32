/* dp_common.c - parameter checks, the buffer and unit planners, NaN
 * agreement, the bucket schedule and the deterministic sum tree shared by
 * the DDP, distributed-optimizer and FSDP engines (see dp_common.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/distopt.h"
#include "src/dp_common.h"

/* The failing rank's message travels as raw bytes in an f32 buffer: a
 * broadcast copies bits, it does no arithmetic. */
#define AGREE_MSG_BYTES 512

mhub_status mhub_dp_agree(mhub_comm *dp, mhub_status mine)
{
    /* size - rank for a failing rank, so MAX picks the lowest one; f32
     * holds these small integers exactly */
    float mark = mine != MHUB_OK ? (float)(dp->size - dp->rank) : 0.0f, top = 0;
    MHUB_TRY(mhub_comm_allreduce(dp, &mark, &top, 1, MHUB_F32, MHUB_MAX));
    if (top == 0)
        return MHUB_OK;
    int root = dp->size - (int)top;
    enum { WORDS = AGREE_MSG_BYTES / sizeof(float) };
    float buf[WORDS];
    memset(buf, 0, sizeof buf);
    if (dp->rank == root) {
        snprintf((char *)buf, sizeof buf - sizeof(float), "%s", mhub_last_error());
        buf[WORDS - 1] = (float)mine;
    }
    MHUB_TRY(mhub_comm_broadcast(dp, buf, WORDS, MHUB_F32, root));
    mhub_status code = (mhub_status)(int)buf[WORDS - 1];
    if (root == dp->rank)
        return mine; /* its own message is still the last error */
    char msg[AGREE_MSG_BYTES];
    memcpy(msg, buf, sizeof msg - sizeof(float));
    msg[sizeof msg - sizeof(float)] = '\0';
    return mhub_error(code, "(from rank %d) %s", root, msg);
}

mhub_status mhub_dp_gather_pieces(mhub_comm *dp, mhub_status s, const mhub_dp_pieces *p,
                                  float *full)
{
    int64_t n = s == MHUB_OK ? p->numel : 0, ranks = dp->size;
    float *all = NULL, *mine = NULL;
    if (s == MHUB_OK) {
        all = calloc((size_t)(ranks * n + 1), sizeof *all);
        mine = calloc((size_t)(n + 1), sizeof *mine);
        if (!all || !mine)
            s = MHUB_ERROR(MHUB_ERR_NO_MEMORY, "state gather of %lld floats",
                           (long long)(ranks * n));
    }
    if (s == MHUB_OK)
        s = p->fill(p->engine, p->param, p->which, mine);
    /* a rank that failed above must not leave the others in the gather */
    s = mhub_dp_agree(dp, s);
    if (s == MHUB_OK)
        s = mhub_comm_allgather(dp, mine, all, n, MHUB_F32);
    int64_t lo, hi;
    for (int r = 0; s == MHUB_OK && r < ranks; r++)
        if (p->piece(p->engine, p->param, r, &lo, &hi))
            memcpy(full + lo, all + r * n + lo, (size_t)(hi - lo) * sizeof(float));
    free(all);
    free(mine);
    return s;
}

mhub_status mhub_dp_agree_on_nan(mhub_comm *dp, const mhub_param_list *params, int local_param,
                                 int64_t step, const char *engine)
{
    int per_rank = params->count + 1;
    float mine = local_param >= 0 ? (float)(dp->rank * per_rank + local_param + 1) : 0.0f;
    float worst = mine;
    if (dp->size > 1)
        MHUB_TRY(mhub_comm_allreduce(dp, &mine, &worst, 1, MHUB_F32, MHUB_MAX));
    if (worst == 0.0f)
        return MHUB_OK;
    int code = (int)worst;
    int rank = code / per_rank, param = code % per_rank - 1;
    return mhub_error(MHUB_ERR_NUMERIC,
                      "non-finite gradient in parameter '%s' on dp rank %d at step %lld "
                      "(check_for_nan_in_grad, %s); lower the learning rate or inspect the data",
                      params->items[param].name, rank, (long long)step, engine);
}

/* One dtype for every trainable parameter, and a gradient that is f32 or
 * of that dtype. */
static mhub_status check_dtypes(const mhub_param_list *params, const char *engine,
                                mhub_dtype *dtype)
{
    bool first = true;
    for (int i = 0; i < params->count; i++) {
        const mhub_param *p = &params->items[i];
        if (!p->requires_grad)
            continue;
        if (first)
            *dtype = p->value.dtype;
        first = false;
        if (p->value.dtype != *dtype)
            return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                              "parameter '%s' is %s while others are %s: the %s engine "
                              "takes one parameter dtype",
                              p->name, mhub_dtype_name(p->value.dtype), mhub_dtype_name(*dtype),
                              engine);
        if (p->grad.dtype != MHUB_F32 && p->grad.dtype != p->value.dtype)
            return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                              "parameter '%s' has a %s gradient for %s values", p->name,
                              mhub_dtype_name(p->grad.dtype), mhub_dtype_name(p->value.dtype));
    }
    return MHUB_OK;
}

static mhub_status check_unit(const mhub_param *p)
{
    if (p->unit < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "parameter '%s' has unit %d: units are numbered from 0", p->name,
                          p->unit);
    return MHUB_OK;
}

mhub_status mhub_dp_check_shapes(const mhub_param_list *params, const char *engine,
                                 mhub_dtype *dtype)
{
    *dtype = MHUB_F32;
    MHUB_TRY(check_dtypes(params, engine, dtype));
    bool trainable = false;
    for (int i = 0; i < params->count; i++) {
        const mhub_param *p = &params->items[i];
        if (!p->requires_grad)
            continue;
        MHUB_TRY(check_unit(p));
        trainable = true;
    }
    if (!trainable)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: no parameter requires a gradient", engine);
    return MHUB_OK;
}

mhub_status mhub_dp_check_params_any(const mhub_param_list *params, const char *engine,
                                     mhub_backend **be, mhub_dtype *dtype)
{
    *be = NULL;
    *dtype = MHUB_F32;
    MHUB_TRY(check_dtypes(params, engine, dtype));
    for (int i = 0; i < params->count; i++) {
        const mhub_param *p = &params->items[i];
        if (!p->requires_grad)
            continue;
        if (!p->value.backend || (!p->value.data && p->value.numel > 0))
            return MHUB_ERROR(MHUB_ERR_STATE,
                              "parameter '%s' has no storage (meta): materialize the model "
                              "before wrapping it with %s",
                              p->name, engine);
        MHUB_TRY(check_unit(p));
        if (*be && p->value.backend != *be)
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                              "parameter '%s' lives on another backend than the others",
                              p->name);
        *be = p->value.backend;
    }
    if (!*be)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: no parameter requires a gradient", engine);
    return MHUB_OK;
}

mhub_status mhub_dp_check_params(const mhub_param_list *params, const char *engine,
                                 mhub_backend **be)
{
    for (int i = 0; i < params->count; i++) {
        const mhub_param *p = &params->items[i];
        if (p->requires_grad && (p->value.dtype != MHUB_F32 || p->grad.dtype != MHUB_F32))
            return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                              "parameter '%s' is %s: the %s engine takes f32 parameters with "
                              "f32 gradients only",
                              p->name, mhub_dtype_name(p->value.dtype), engine);
    }
    mhub_dtype dt;
    return mhub_dp_check_params_any(params, engine, be, &dt);
}

mhub_status mhub_dp_grad_dtype(const mhub_ddp_config *cfg, mhub_dtype model_dtype,
                               const char *engine, mhub_dtype *out)
{
    *out = cfg->grad_reduce_in_fp32 ? MHUB_F32 : model_dtype;
    if (*out != MHUB_F32 && (cfg->deterministic || cfg->check_for_nan_in_grad))
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "%s needs f32 gradients; this %s model reduces %s gradients in the "
                          "%s engine: set grad_reduce_in_fp32",
                          cfg->deterministic ? "deterministic mode" : "check_for_nan_in_grad",
                          mhub_dtype_name(model_dtype), mhub_dtype_name(*out), engine);
    return MHUB_OK;
}

mhub_status mhub_dp_prepare_reduce(const mhub_ddp_config *cfg, mhub_backend *be, mhub_comm *dp,
                                   void *data, mhub_dtype dt, int64_t n, mhub_reduce_op *op)
{
    *op = MHUB_SUM;
    if (cfg->loss_is_global_mean)
        return MHUB_OK;
    if (cfg->average_in_collective || dt != MHUB_F32) {
        *op = MHUB_AVG;
        return MHUB_OK;
    }
    return be->ops->scale(be, data, n, 1.0f / (float)dp->size);
}

/* ---- layouts ------------------------------------------------------------------ */

static int64_t round_up(int64_t x, int64_t multiple)
{
    return (x + multiple - 1) / multiple * multiple;
}

static int64_t lcm64(int64_t a, int64_t b)
{
    int64_t x = a, y = b;
    while (y) {
        int64_t r = x % y;
        x = y;
        y = r;
    }
    return a / x * b;
}

int64_t mhub_distopt_bucket_align(int dp_size)
{
    return lcm64(dp_size > 0 ? dp_size : 1, MHUB_DISTOPT_BUCKET_ALIGN);
}

void mhub_bucket_plan_free(mhub_bucket_plan *plan)
{
    if (!plan)
        return;
    free(plan->param_bucket);
    free(plan->param_offset);
    free(plan->buckets);
    memset(plan, 0, sizeof *plan);
}

/* Pad the open bucket's end to the bucket alignment; the next bucket
 * starts there. */
static int64_t close_bucket(mhub_bucket_plan *plan, mhub_plan_bucket *b, int64_t end,
                            int64_t bucket_align)
{
    int64_t padded = round_up(end, bucket_align);
    b->numel = padded - b->offset;
    plan->padding += b->numel - b->param_numel;
    return padded;
}

mhub_status mhub_bucket_plan_make(const mhub_param_list *params, int64_t bucket_elems,
                                  int64_t param_align, int64_t bucket_align,
                                  mhub_bucket_plan *out)
{
    memset(out, 0, sizeof *out);
    if (bucket_elems < 1 || param_align < 1 || bucket_align < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "bucket plan: bucket size %lld, alignments %lld and %lld (all >= 1)",
                          (long long)bucket_elems, (long long)param_align,
                          (long long)bucket_align);
    int n = params->count;
    out->num_params = n;
    out->param_bucket = malloc(((size_t)n + 1) * sizeof *out->param_bucket);
    out->param_offset = calloc((size_t)n + 1, sizeof *out->param_offset);
    out->buckets = calloc((size_t)n + 1, sizeof *out->buckets); /* at most one per parameter */
    if (!out->param_bucket || !out->param_offset || !out->buckets) {
        mhub_bucket_plan_free(out);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "bucket tables for %d parameters", n);
    }
    int64_t offset = 0;
    mhub_plan_bucket *open = NULL;
    for (int i = n - 1; i >= 0; i--) {
        const mhub_param *p = &params->items[i];
        out->param_bucket[i] = -1;
        if (!p->requires_grad)
            continue;
        if (!open) {
            open = &out->buckets[out->num_buckets++];
            open->offset = offset;
            open->first_param = i;
        }
        offset = round_up(offset, param_align);
        out->param_offset[i] = offset;
        out->param_bucket[i] = (int)(open - out->buckets);
        offset += p->value.numel;
        open->param_numel += p->value.numel;
        open->num_params++;
        if (offset - open->offset >= bucket_elems) {
            offset = close_bucket(out, open, offset, bucket_align);
            open = NULL;
        }
    }
    if (open)
        offset = close_bucket(out, open, offset, bucket_align);
    out->numel = offset;
    return MHUB_OK;
}

void mhub_unit_plan_free(mhub_unit_plan *plan)
{
    if (!plan)
        return;
    free(plan->units);
    free(plan->order);
    free(plan->param_offset);
    memset(plan, 0, sizeof *plan);
}

/* Lay out one unit: its parameters in list order, then the padding. */
static void plan_unit(const mhub_param_list *params, int unit, int64_t dp, int *next,
                      mhub_unit_plan *plan)
{
    mhub_unit_layout *u = &plan->units[unit];
    u->first = *next;
    u->reader = -1;
    for (int i = 0; i < params->count; i++) {
        if (params->items[i].unit != unit)
            continue;
        if (params->items[i].tied_unit >= 0)
            u->reader = params->items[i].tied_unit;
        plan->order[(*next)++] = i;
        plan->param_offset[i] = u->numel;
        u->numel += params->items[i].value.numel;
    }
    u->count = *next - u->first;
    u->padded = round_up(u->numel, dp);
    u->shard = u->padded / dp;
    u->shard_offset = plan->shard_numel;
    plan->shard_numel += u->shard;
    plan->largest_padded = u->padded > plan->largest_padded ? u->padded : plan->largest_padded;
    plan->largest_shard = u->shard > plan->largest_shard ? u->shard : plan->largest_shard;
}

/* A tied parameter names another unit of the list as its reader, and
 * all tied parameters of one unit name the same one: a unit's gathered
 * values and gradient serve itself and at most one reader. */
static mhub_status check_tied_units(const mhub_param_list *params, const mhub_unit_plan *plan)
{
    for (int i = 0; i < params->count; i++) {
        const mhub_param *p = &params->items[i];
        if (p->tied_unit < 0)
            continue;
        if (p->tied_unit == p->unit || p->tied_unit >= plan->num_units)
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                              "parameter '%s' of unit %d names unit %d as tied_unit: it must "
                              "be another of the list's units 0..%d",
                              p->name, p->unit, p->tied_unit, plan->num_units - 1);
        int reader = plan->units[p->unit].reader;
        if (p->tied_unit != reader)
            return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                              "parameter '%s' of unit %d is tied to unit %d, another of the "
                              "unit's parameters to unit %d: a unit may be read by one other "
                              "unit only",
                              p->name, p->unit, p->tied_unit, reader);
    }
    return MHUB_OK;
}

mhub_status mhub_unit_plan_make(const mhub_param_list *params, int dp_size,
                                mhub_unit_plan *out)
{
    memset(out, 0, sizeof *out);
    if (dp_size < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "unit plan for %d ranks", dp_size);
    int max_unit = 0;
    for (int i = 0; i < params->count; i++)
        max_unit = params->items[i].unit > max_unit ? params->items[i].unit : max_unit;
    out->num_units = max_unit + 1;
    out->units = calloc((size_t)out->num_units, sizeof *out->units);
    out->order = malloc(((size_t)params->count + 1) * sizeof *out->order);
    out->param_offset = calloc((size_t)params->count + 1, sizeof *out->param_offset);
    if (!out->units || !out->order || !out->param_offset) {
        int units = out->num_units;
        mhub_unit_plan_free(out);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "unit tables for %d units", units);
    }
    int next = 0;
    for (int unit = 0; unit < out->num_units; unit++)
        plan_unit(params, unit, dp_size, &next, out);
    mhub_status s = check_tied_units(params, out);
    if (s != MHUB_OK)
        mhub_unit_plan_free(out);
    return s;
}

/* ---- the bucket schedule ---------------------------------------------------- */

mhub_status mhub_schedule_init(mhub_grad_schedule *s, int num_params, const int *param_bucket,
                               int num_buckets)
{
    memset(s, 0, sizeof *s);
    s->num_params = num_params;
    s->num_buckets = num_buckets;
    s->last_microbatch = true;
    s->bucket_params = calloc((size_t)num_buckets + 1, sizeof *s->bucket_params);
    s->ready = calloc((size_t)num_buckets + 1, sizeof *s->ready);
    s->param_ready = calloc((size_t)num_params + 1, sizeof *s->param_ready);
    if (!s->bucket_params || !s->ready || !s->param_ready) {
        mhub_schedule_free(s);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "bucket schedule for %d parameters", num_params);
    }
    for (int i = 0; i < num_params; i++)
        if (param_bucket[i] >= 0)
            s->bucket_params[param_bucket[i]]++;
    return MHUB_OK;
}

void mhub_schedule_free(mhub_grad_schedule *s)
{
    free(s->bucket_params);
    free(s->ready);
    free(s->param_ready);
    s->bucket_params = s->ready = NULL;
    s->param_ready = NULL;
}

void mhub_schedule_reset(mhub_grad_schedule *s)
{
    memset(s->ready, 0, (size_t)s->num_buckets * sizeof *s->ready);
    memset(s->param_ready, 0, (size_t)s->num_params * sizeof *s->param_ready);
    s->next = 0;
}

bool mhub_schedule_ready(mhub_grad_schedule *s, int param, int bucket)
{
    if (!s->last_microbatch || bucket < 0 || s->param_ready[param])
        return false;
    s->param_ready[param] = true;
    s->ready[bucket]++;
    return true;
}

bool mhub_schedule_can_issue(const mhub_grad_schedule *s)
{
    return s->next < s->num_buckets && s->ready[s->next] == s->bucket_params[s->next];
}

mhub_status mhub_schedule_no_sync_begin(mhub_grad_schedule *s)
{
    if (!s->last_microbatch)
        return MHUB_ERROR(MHUB_ERR_STATE, "already inside a no_sync scope");
    s->last_microbatch = false;
    return MHUB_OK;
}

mhub_status mhub_schedule_no_sync_end(mhub_grad_schedule *s)
{
    if (s->last_microbatch)
        return MHUB_ERROR(MHUB_ERR_STATE, "no_sync_end without no_sync_begin");
    s->last_microbatch = true;
    return MHUB_OK;
}

/* ---- the deterministic sum tree ------------------------------------------- */

mhub_status mhub_sumtree_init(mhub_sumtree *t, mhub_backend *be, mhub_comm *dp, int64_t numel)
{
    memset(t, 0, sizeof *t);
    MHUB_TRY(mhub_dp_check_pow2(dp->size, dp->name));
    t->be = be;
    t->dp = dp;
    t->numel = numel;
    return MHUB_OK;
}

/* The halving exchange receives at most half the vector (rounded up). */
static int64_t exchange_scratch_elems(int64_t numel) { return numel / 2 + 1; }

mhub_status mhub_dp_check_pow2(int size, const char *group)
{
    if (size < 1 || (size & (size - 1)) != 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "deterministic mode needs a power-of-two data-parallel size; the "
                          "\"%s\" group has %d ranks",
                          group, size);
    return MHUB_OK;
}

int64_t mhub_sumtree_bytes(int64_t numel, int dp_size, bool exchange)
{
    /* the receive scratch of mhub_sumtree_exchange, allocated on its first
     * call, which returns before that on one rank */
    int64_t scratch = exchange && dp_size > 1 ? exchange_scratch_elems(numel) : 0;
    return (numel + scratch) * (int64_t)sizeof(float);
}

void mhub_sumtree_free(mhub_sumtree *t)
{
    if (!t || !t->be)
        return;
    for (int l = 0; l < MHUB_SUMTREE_LEVELS; l++)
        if (t->level[l])
            t->be->ops->free(t->be, t->level[l]);
    if (t->scratch)
        t->be->ops->free(t->be, t->scratch);
    memset(t, 0, sizeof *t);
}

void mhub_sumtree_reset(mhub_sumtree *t)
{
    memset(t->full, 0, sizeof t->full);
    t->shards = 0;
}

static size_t tree_bytes(const mhub_sumtree *t) { return (size_t)t->numel * sizeof(float); }

static mhub_status level_buffer(mhub_sumtree *t, int l)
{
    if (t->level[l])
        return MHUB_OK;
    void *p = NULL;
    MHUB_TRY(t->be->ops->alloc(t->be, tree_bytes(t), &p)); /* first step only */
    t->level[l] = p;
    return MHUB_OK;
}

/* A binary counter: adding shard k carries like k + 1 in binary, always
 * as (earlier subtree) + (later subtree). */
mhub_status mhub_sumtree_fold(mhub_sumtree *t, float *buf)
{
    const mhub_backend_ops *op = t->be->ops;
    MHUB_TRY(level_buffer(t, 0));
    if (!t->full[0]) {
        MHUB_TRY(op->copy(t->be, t->level[0], buf, tree_bytes(t), MHUB_COPY_DEVICE_TO_DEVICE));
        t->full[0] = true;
    } else {
        MHUB_TRY(op->axpy(t->be, t->level[0], buf, t->numel, 1.0f));
        t->full[0] = false;
        int l = 1;
        for (; l < MHUB_SUMTREE_LEVELS; l++) {
            MHUB_TRY(level_buffer(t, l));
            if (!t->full[l]) { /* the carry settles here: swap, no copy */
                float *spare = t->level[l];
                t->level[l] = t->level[l - 1];
                t->level[l - 1] = spare;
                t->full[l] = true;
                break;
            }
            MHUB_TRY(op->axpy(t->be, t->level[l], t->level[l - 1], t->numel, 1.0f));
            t->full[l] = false;
        }
        if (l == MHUB_SUMTREE_LEVELS)
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "more than 2^%d shards", MHUB_SUMTREE_LEVELS);
    }
    t->shards++;
    return op->memset_zero(t->be, buf, tree_bytes(t));
}

/* Send `out` to a partner while receiving `in` from it. */
static mhub_status swap_with(mhub_comm *dp, int partner, int tag, const float *out,
                             int64_t n_out, float *in, int64_t n_in)
{
    mhub_request send = {0}, recv = {0};
    MHUB_TRY(mhub_comm_irecv(dp, in, n_in, MHUB_F32, partner, tag, &recv));
    mhub_status s = mhub_comm_isend(dp, out, n_out, MHUB_F32, partner, tag, &send);
    mhub_status w = mhub_request_wait(&recv);
    if (send.active) {
        mhub_status ws = mhub_request_wait(&send);
        if (w == MHUB_OK)
            w = ws;
    }
    return s != MHUB_OK ? s : w;
}

/* Recursive halving with partners r^1, r^2, ... (adjacent subtrees first,
 * the tree one rank would build), then recursive doubling in the opposite
 * order to spread the finished pieces. Every rank splits ranges at the
 * same midpoints. */
mhub_status mhub_sumtree_exchange(mhub_sumtree *t, float *buf)
{
    if (t->dp->size == 1)
        return MHUB_OK;
    int p = t->dp->size, r = t->dp->rank, steps = 0;
    int64_t lo[MHUB_SUMTREE_LEVELS], mid[MHUB_SUMTREE_LEVELS], hi[MHUB_SUMTREE_LEVELS];
    int64_t cur_lo = 0, cur_hi = t->numel;
    if (!t->scratch) {
        void *mem = NULL;
        MHUB_TRY(t->be->ops->alloc(t->be, (size_t)exchange_scratch_elems(t->numel) * sizeof(float),
                                   &mem));
        t->scratch = mem;
    }
    for (int dist = 1; dist < p; dist <<= 1, steps++) {
        lo[steps] = cur_lo;
        hi[steps] = cur_hi;
        mid[steps] = cur_lo + (cur_hi - cur_lo) / 2;
        bool low = (r & dist) == 0;
        int64_t keep_lo = low ? cur_lo : mid[steps], keep_hi = low ? mid[steps] : cur_hi;
        int64_t send_lo = low ? mid[steps] : cur_lo, send_hi = low ? cur_hi : mid[steps];
        MHUB_TRY(swap_with(t->dp, r ^ dist, 100 + steps, buf + send_lo, send_hi - send_lo,
                           t->scratch, keep_hi - keep_lo));
        MHUB_TRY(t->be->ops->axpy(t->be, buf + keep_lo, t->scratch, keep_hi - keep_lo, 1.0f));
        cur_lo = keep_lo;
        cur_hi = keep_hi;
    }
    for (int k = steps - 1; k >= 0; k--) {
        int dist = 1 << k;
        bool low = (r & dist) == 0; /* the partner finished the other half */
        int64_t other_lo = low ? mid[k] : lo[k], other_hi = low ? hi[k] : mid[k];
        MHUB_TRY(swap_with(t->dp, r ^ dist, 200 + k, buf + cur_lo, cur_hi - cur_lo, buf + other_lo,
                           other_hi - other_lo));
        cur_lo = lo[k];
        cur_hi = hi[k];
    }
    return MHUB_OK;
}

mhub_status mhub_sumtree_collect(mhub_sumtree *t, float *buf)
{
    int64_t k = t->shards;
    if (k < 1 || (k & (k - 1)) != 0)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "deterministic mode: %lld micro-shards on rank %d this step; mark "
                          "each with shard_done, a power of two per rank",
                          (long long)k, t->dp->rank);
    int top = 0;
    while ((INT64_C(1) << top) < k)
        top++;
    MHUB_TRY(t->be->ops->copy(t->be, buf, t->level[top], tree_bytes(t),
                              MHUB_COPY_DEVICE_TO_DEVICE));
    mhub_sumtree_reset(t);
    return MHUB_OK;
}

mhub_status mhub_tree_reduce_scatter(mhub_comm *dp, mhub_backend *be, float *full, int64_t n,
                                     float *scratch, float *out)
{
    int p = dp->size, r = dp->rank;
    if (n % p != 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%lld elements do not split over %d ranks",
                          (long long)n, p);
    int64_t lo = 0, hi = n, block = n / p;
    for (int dist = 1; dist < p; dist <<= 1) {
        int64_t mid = lo + (hi - lo) / 2;
        bool low = (r & dist) == 0;
        int64_t keep_lo = low ? lo : mid, keep_hi = low ? mid : hi;
        int64_t send_lo = low ? mid : lo, send_hi = low ? hi : mid;
        MHUB_TRY(swap_with(dp, r ^ dist, 300 + dist, full + send_lo, send_hi - send_lo, scratch,
                           keep_hi - keep_lo));
        MHUB_TRY(be->ops->axpy(be, full + keep_lo, scratch, keep_hi - keep_lo, 1.0f));
        lo = keep_lo;
        hi = keep_hi;
    }
    /* halving leaves block bitreverse(r) here; its owner holds block r */
    int holder = (int)(lo / block);
    if (holder == r)
        return be->ops->copy(be, out, full + lo, (size_t)block * sizeof(float),
                             MHUB_COPY_DEVICE_TO_DEVICE);
    return swap_with(dp, holder, 400, full + lo, block, out, block);
}
