/* ddp.c - the contiguous gradient buffer, its buckets, and their
 * overlapped all-reduce (see ddp.h for the picture).
 *
 * Life of a step:
 *   zero_grad -> [no_sync micro-batches: forward/backward, nothing sent]
 *   -> last micro-batch backward: grad_ready(param) for each parameter;
 *      a bucket whose parameters are all ready is issued, in bucket order
 *   -> finish_grad_sync: issue the rest, wait for all, check NaN, reset. */
#include <cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mhub/backend.h"
#include "mhub/ddp.h"
#include "src/dp_common.h"

/* A bucket's state in the step; its layout is plan.buckets[same index]. */
typedef struct bucket {
    bool issued;
    bool in_backward;    /* issued from a grad-ready call */
    mhub_request req;
} bucket;

struct mhub_ddp {
    mhub_param_list *params;
    mhub_comm *dp;
    mhub_backend *be;
    mhub_ddp_config cfg;
    void *buffer;          /* all gradients, parameters in reverse list order */
    mhub_dtype gdt;        /* the buffer's dtype */
    size_t esize;          /* its element size */
    bool comm_memory;      /* buffer from mhub_comm_alloc */
    mhub_bucket_plan plan; /* the buffer's layout: offsets, buckets, numel */
    bucket *buckets;       /* per bucket of the plan */
    mhub_grad_schedule sched; /* readiness, issue order, no_sync */
    int64_t step;
    int nan_param;         /* first parameter found non-finite this step, or -1 */
    mhub_ddp_stats stats;
    mhub_sumtree tree;     /* deterministic mode's fixed-shape sum */
};

/* ---- config ---------------------------------------------------------- */

void mhub_ddp_config_init(mhub_ddp_config *cfg)
{
    if (!cfg)
        return;
    cfg->grad_reduce_in_fp32 = false;
    cfg->overlap_grad_reduce = false;
    cfg->bucket_size = MHUB_DDP_BUCKET_AUTO;
    cfg->average_in_collective = false;
    cfg->loss_is_global_mean = false;
    cfg->check_for_nan_in_grad = false;
    cfg->deterministic = false;
    cfg->use_distributed_optimizer = false;
    cfg->overlap_param_gather = false;
}

int64_t mhub_ddp_config_bucket_elems(const mhub_ddp_config *cfg, int dp_size)
{
    if (!cfg || !cfg->overlap_grad_reduce)
        return INT64_MAX;
    if (cfg->bucket_size != MHUB_DDP_BUCKET_AUTO)
        return cfg->bucket_size;
    int64_t scaled = (int64_t)1000000 * (dp_size > 0 ? dp_size : 1);
    return scaled > 40000000 ? scaled : 40000000;
}

mhub_status mhub_ddp_config_validate(const mhub_ddp_config *cfg)
{
    if (!cfg)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config is NULL");
    if (cfg->bucket_size != MHUB_DDP_BUCKET_AUTO && cfg->bucket_size < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "bucket_size = %lld: give a number of elements >= 1, or leave it "
                          "unset for max(40M, 1M * dp)",
                          (long long)cfg->bucket_size);
    return MHUB_OK;
}

typedef struct bool_field {
    const char *key;
    size_t offset;
} bool_field;

static const bool_field bool_fields[] = {
    {"grad_reduce_in_fp32", offsetof(mhub_ddp_config, grad_reduce_in_fp32)},
    {"overlap_grad_reduce", offsetof(mhub_ddp_config, overlap_grad_reduce)},
    {"average_in_collective", offsetof(mhub_ddp_config, average_in_collective)},
    {"loss_is_global_mean", offsetof(mhub_ddp_config, loss_is_global_mean)},
    {"check_for_nan_in_grad", offsetof(mhub_ddp_config, check_for_nan_in_grad)},
    {"deterministic", offsetof(mhub_ddp_config, deterministic)},
    {"use_distributed_optimizer", offsetof(mhub_ddp_config, use_distributed_optimizer)},
    {"overlap_param_gather", offsetof(mhub_ddp_config, overlap_param_gather)},
};
#define NUM_BOOL_FIELDS (sizeof bool_fields / sizeof bool_fields[0])

static mhub_status read_key(const cJSON *item, const char *source, mhub_ddp_config *c)
{
    for (size_t f = 0; f < NUM_BOOL_FIELDS; f++) {
        if (strcmp(item->string, bool_fields[f].key) != 0)
            continue;
        if (!cJSON_IsBool(item))
            return mhub_error(MHUB_ERR_PARSE, "%s: ddp config key '%s' must be true or false",
                              source, item->string);
        *(bool *)((char *)c + bool_fields[f].offset) = cJSON_IsTrue(item);
        return MHUB_OK;
    }
    if (!strcmp(item->string, "bucket_size")) {
        if (cJSON_IsNull(item)) {
            c->bucket_size = MHUB_DDP_BUCKET_AUTO;
            return MHUB_OK;
        }
        double v = cJSON_GetNumberValue(item);
        if (!cJSON_IsNumber(item) || v != floor(v) || v < 1 || v > 9.0e15)
            return mhub_error(MHUB_ERR_PARSE,
                              "%s: ddp config key 'bucket_size' must be a whole number of "
                              "elements >= 1 (or null for the default)",
                              source);
        c->bucket_size = (int64_t)v;
        return MHUB_OK;
    }
    return mhub_error(MHUB_ERR_PARSE,
                      "%s: unknown ddp config key '%s' (known: grad_reduce_in_fp32, "
                      "overlap_grad_reduce, "
                      "bucket_size, average_in_collective, loss_is_global_mean, "
                      "check_for_nan_in_grad, "
                      "deterministic, use_distributed_optimizer, overlap_param_gather)",
                      source, item->string);
}

mhub_status mhub_ddp_config_from_json(const char *json_text, const char *source,
                                      mhub_ddp_config *cfg)
{
    if (!source)
        source = "ddp config";
    if (!json_text || !cfg)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: text or config is NULL", source);
    cJSON *root = cJSON_Parse(json_text);
    if (!root)
        return mhub_error(MHUB_ERR_PARSE, "%s: not valid JSON near '%.20s'", source,
                          cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
    mhub_status s = MHUB_OK;
    mhub_ddp_config c = *cfg;
    if (!cJSON_IsObject(root))
        s = mhub_error(MHUB_ERR_PARSE, "%s: the ddp config must be a JSON object", source);
    for (const cJSON *item = root->child; s == MHUB_OK && item; item = item->next)
        s = read_key(item, source, &c);
    cJSON_Delete(root);
    if (s == MHUB_OK)
        s = mhub_ddp_config_validate(&c);
    if (s == MHUB_OK)
        *cfg = c;
    return s;
}

mhub_status mhub_ddp_config_to_json(const mhub_ddp_config *cfg, char **out)
{
    if (!cfg || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config or out is NULL");
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "JSON object");
    for (size_t f = 0; f < NUM_BOOL_FIELDS; f++)
        cJSON_AddBoolToObject(o, bool_fields[f].key,
                              *(const bool *)((const char *)cfg + bool_fields[f].offset));
    if (cfg->bucket_size == MHUB_DDP_BUCKET_AUTO)
        cJSON_AddNullToObject(o, "bucket_size");
    else
        cJSON_AddNumberToObject(o, "bucket_size", (double)cfg->bucket_size);
    *out = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return *out ? MHUB_OK : MHUB_ERROR(MHUB_ERR_NO_MEMORY, "JSON text");
}

/* ---- layout ------------------------------------------------------------ */

/* The shared planner without padding: parameters back to back in reverse
 * list order, a bucket closing once it holds >= bucket_elems elements. */
static mhub_status plan_buckets(mhub_ddp *d, int64_t bucket_elems)
{
    MHUB_TRY(mhub_bucket_plan_make(d->params, bucket_elems, 1, 1, &d->plan));
    d->buckets = calloc((size_t)d->plan.num_buckets + 1, sizeof *d->buckets);
    if (!d->buckets)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "state of %d buckets", d->plan.num_buckets);
    return mhub_schedule_init(&d->sched, d->params->count, d->plan.param_bucket,
                              d->plan.num_buckets);
}

/* Element `offset` of the buffer. */
static void *slot_at(const mhub_ddp *d, int64_t offset)
{
    return (char *)d->buffer + (size_t)offset * d->esize;
}

/* The buffer lives in communicator memory when the communicator offers it
 * (a shared-memory window makes the all-reduce several times faster) and
 * the parameters are in host memory; otherwise on the backend. */
static mhub_status alloc_buffer(mhub_ddp *d)
{
    size_t bytes = (size_t)d->plan.numel * d->esize;
    void *p = NULL;
    if (d->dp->size > 1 && !strcmp(d->be->name, "cpu")) {
        mhub_status s = mhub_comm_alloc(d->dp, bytes, &p);
        if (s == MHUB_OK) {
            d->buffer = p;
            d->comm_memory = true;
            return MHUB_OK;
        }
        if (s != MHUB_ERR_UNSUPPORTED)
            return s;
    }
    MHUB_TRY(d->be->ops->alloc(d->be, bytes, &p));
    d->buffer = p;
    return MHUB_OK;
}

/* Point each gradient at its slot, carrying over what it held. */
static mhub_status adopt_gradients(mhub_ddp *d)
{
    for (int i = 0; i < d->params->count; i++) {
        mhub_param *p = &d->params->items[i];
        if (d->plan.param_bucket[i] < 0)
            continue;
        void *slot = slot_at(d, d->plan.param_offset[i]);
        if (p->grad.data && p->value.numel > 0)
            MHUB_TRY(d->be->ops->cast(d->be, slot, d->gdt, p->grad.data, p->grad.dtype,
                                      p->value.numel));
        mhub_tensor view;
        MHUB_TRY(mhub_tensor_wrap(&view, slot, d->be, d->gdt, p->value.ndim, p->value.shape));
        mhub_tensor_free(&p->grad);
        p->grad = view;
    }
    return MHUB_OK;
}

mhub_status mhub_ddp_create(mhub_param_list *params, mhub_comm *dp, const mhub_ddp_config *cfg,
                            mhub_ddp **out)
{
    if (!params || !dp || !cfg || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "params, dp communicator, config or out is NULL");
    *out = NULL;
    MHUB_TRY(mhub_ddp_config_validate(cfg));
    mhub_backend *be;
    mhub_dtype model_dt;
    MHUB_TRY(mhub_dp_check_params_any(params, "ddp", &be, &model_dt));
    mhub_dtype gdt;
    MHUB_TRY(mhub_dp_grad_dtype(cfg, model_dt, "ddp", &gdt));
    mhub_ddp *d = calloc(1, sizeof *d);
    if (!d)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "engine struct");
    d->params = params;
    d->dp = dp;
    d->be = be;
    d->cfg = *cfg;
    d->gdt = gdt;
    d->esize = mhub_dtype_size(gdt);
    d->nan_param = -1;
    mhub_status s = plan_buckets(d, mhub_ddp_config_bucket_elems(cfg, dp->size));
    if (s == MHUB_OK && cfg->deterministic)
        s = mhub_sumtree_init(&d->tree, be, dp, d->plan.numel);
    if (s == MHUB_OK)
        s = alloc_buffer(d);
    if (s == MHUB_OK)
        s = adopt_gradients(d);
    if (s != MHUB_OK) {
        mhub_ddp_free(d);
        return s;
    }
    *out = d;
    return MHUB_OK;
}

mhub_status mhub_ddp_estimate_memory(const mhub_param_list *params, int dp_size,
                                     const mhub_ddp_config *cfg, mhub_dp_memory *out)
{
    memset(out, 0, sizeof *out);
    MHUB_TRY(mhub_ddp_config_validate(cfg));
    mhub_dtype model_dt, gdt;
    MHUB_TRY(mhub_dp_check_shapes(params, "ddp", &model_dt));
    MHUB_TRY(mhub_dp_grad_dtype(cfg, model_dt, "ddp", &gdt));
    if (cfg->deterministic)
        MHUB_TRY(mhub_dp_check_pow2(dp_size, "dp"));
    mhub_bucket_plan plan;
    MHUB_TRY(mhub_bucket_plan_make(params, mhub_ddp_config_bucket_elems(cfg, dp_size), 1, 1,
                                   &plan));
    /* alloc_buffer's size, whether it lands on the backend or in the
     * communicator's window */
    out->grad_bytes = plan.numel * (int64_t)mhub_dtype_size(gdt);
    if (cfg->deterministic)
        out->scratch_bytes = mhub_sumtree_bytes(plan.numel, dp_size, true);
    mhub_bucket_plan_free(&plan);
    return MHUB_OK;
}

/* Give each parameter private gradient storage with the buffer's values. */
static void release_gradients(mhub_ddp *d)
{
    for (int i = 0; i < d->params->count; i++) {
        mhub_param *p = &d->params->items[i];
        if (!d->plan.param_bucket || d->plan.param_bucket[i] < 0 || p->grad.owns_data)
            continue;
        if (p->grad.data != slot_at(d, d->plan.param_offset[i]))
            continue; /* never adopted (create failed part-way) */
        mhub_tensor own;
        if (mhub_tensor_alloc(&own, d->be, MHUB_F32, p->value.ndim, p->value.shape) == MHUB_OK) {
            d->be->ops->cast(d->be, own.data, MHUB_F32, p->grad.data, p->grad.dtype,
                             p->value.numel);
            p->grad = own;
        } else {
            mhub_tensor_init_meta(&p->grad, MHUB_F32, p->value.ndim, p->value.shape);
        }
    }
}

void mhub_ddp_free(mhub_ddp *d)
{
    if (!d)
        return;
    for (int b = 0; d->buckets && b < d->plan.num_buckets; b++)
        if (d->buckets[b].req.active)
            mhub_request_wait(&d->buckets[b].req);
    if (d->buffer)
        release_gradients(d);
    if (d->buffer) {
        if (d->comm_memory)
            mhub_comm_free_mem(d->dp, d->buffer);
        else
            d->be->ops->free(d->be, d->buffer);
    }
    mhub_sumtree_free(&d->tree);
    mhub_bucket_plan_free(&d->plan);
    mhub_schedule_free(&d->sched);
    free(d->buckets);
    free(d);
}

/* ---- the step ------------------------------------------------------------ */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Remember the first parameter of the bucket holding a NaN/Inf. */
static mhub_status scan_for_nan(mhub_ddp *d, int index)
{
    const mhub_plan_bucket *b = &d->plan.buckets[index];
    double ss = 0;
    MHUB_TRY(d->be->ops->sum_squares(d->be, slot_at(d, b->offset), b->numel, &ss));
    if (isfinite(ss) || d->nan_param >= 0)
        return MHUB_OK;
    for (int k = 0, i = b->first_param; k < b->num_params; i--) {
        if (d->plan.param_bucket[i] < 0)
            continue;
        k++;
        const mhub_param *p = &d->params->items[i];
        MHUB_TRY(d->be->ops->sum_squares(d->be, p->grad.data, p->value.numel, &ss));
        if (!isfinite(ss)) {
            d->nan_param = i;
            break;
        }
    }
    return MHUB_OK;
}

static mhub_status issue_bucket(mhub_ddp *d, int index, bool in_backward)
{
    bucket *b = &d->buckets[index];
    const mhub_plan_bucket *at = &d->plan.buckets[index];
    if (d->cfg.check_for_nan_in_grad)
        MHUB_TRY(scan_for_nan(d, index));
    b->issued = true;
    b->in_backward = in_backward;
    d->stats.buckets_issued++;
    d->stats.issued_in_backward += in_backward;
    if (d->dp->size == 1)
        return MHUB_OK; /* the mean over one rank is the gradient itself */
    void *data = slot_at(d, at->offset);
    mhub_reduce_op op;
    MHUB_TRY(mhub_dp_prepare_reduce(&d->cfg, d->be, d->dp, data, d->gdt, at->numel, &op));
    return mhub_comm_iallreduce(d->dp, data, data, at->numel, d->gdt, op, &b->req);
}

/* Let issued collectives progress (MPI moves messages only inside MPI
 * calls); completed requests go idle. */
static mhub_status poll_issued(mhub_ddp *d)
{
    for (int b = 0; b < d->sched.next; b++) {
        if (!d->buckets[b].req.active)
            continue;
        bool done;
        MHUB_TRY(mhub_request_test(&d->buckets[b].req, &done));
    }
    return MHUB_OK;
}

mhub_status mhub_ddp_grad_ready(void *user, int param_index)
{
    mhub_ddp *d = user;
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (param_index < 0 || param_index >= d->params->count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter index %d is outside [0, %d)",
                          param_index, d->params->count);
    MHUB_TRY(poll_issued(d));
    if (d->cfg.deterministic ||
        !mhub_schedule_ready(&d->sched, param_index, d->plan.param_bucket[param_index]) ||
        !d->cfg.overlap_grad_reduce)
        return MHUB_OK;
    while (mhub_schedule_can_issue(&d->sched)) {
        MHUB_TRY(issue_bucket(d, d->sched.next, true));
        d->sched.next++;
    }
    return MHUB_OK;
}

static void reset_step(mhub_ddp *d)
{
    for (int b = 0; b < d->plan.num_buckets; b++) {
        d->buckets[b].issued = false;
        d->buckets[b].in_backward = false;
    }
    mhub_schedule_reset(&d->sched);
    d->nan_param = -1;
}

static bool any_outstanding(const mhub_ddp *d)
{
    for (int b = 0; b < d->plan.num_buckets; b++)
        if (d->buckets[b].issued)
            return true;
    return false;
}

mhub_status mhub_ddp_zero_grad(mhub_ddp *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (any_outstanding(d))
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "step %lld: gradients are still being reduced; call "
                          "mhub_ddp_finish_grad_sync first",
                          (long long)d->step);
    reset_step(d);
    if (d->cfg.deterministic)
        mhub_sumtree_reset(&d->tree);
    return d->be->ops->memset_zero(d->be, d->buffer, (size_t)d->plan.numel * d->esize);
}

mhub_status mhub_ddp_no_sync_begin(mhub_ddp *d)
{
    return d ? mhub_schedule_no_sync_begin(&d->sched)
             : MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
}

mhub_status mhub_ddp_no_sync_end(mhub_ddp *d)
{
    return d ? mhub_schedule_no_sync_end(&d->sched)
             : MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
}

/* ---- deterministic mode (the sum tree lives in dp_common.c) ---------------- */

mhub_status mhub_ddp_shard_done(mhub_ddp *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (!d->cfg.deterministic)
        return MHUB_ERROR(MHUB_ERR_STATE, "shard_done is for deterministic mode only");
    return mhub_sumtree_fold(&d->tree, (float *)d->buffer);
}

static mhub_status finish_deterministic(mhub_ddp *d)
{
    double t0 = now_seconds();
    MHUB_TRY(mhub_sumtree_collect(&d->tree, (float *)d->buffer));
    mhub_status s = MHUB_OK;
    /* scan this rank's own sum, so the report names the rank it came from */
    for (int b = 0; d->cfg.check_for_nan_in_grad && s == MHUB_OK && b < d->plan.num_buckets;
         b++)
        s = scan_for_nan(d, b);
    if (s == MHUB_OK)
        s = mhub_sumtree_exchange(&d->tree, (float *)d->buffer);
    if (s == MHUB_OK && d->cfg.check_for_nan_in_grad)
        s = mhub_dp_agree_on_nan(d->dp, d->params, d->nan_param, d->step, "ddp");
    d->stats.buckets_issued += d->dp->size > 1;
    d->stats.sync_wait_seconds += now_seconds() - t0;
    d->stats.steps++;
    d->step++;
    reset_step(d);
    return s;
}

mhub_status mhub_ddp_finish_grad_sync(mhub_ddp *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    if (!d->sched.last_microbatch)
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "finish_grad_sync inside a no_sync scope: end the scope and run the "
                          "last micro-batch first");
    if (d->cfg.deterministic)
        return finish_deterministic(d);
    double t0 = now_seconds();
    mhub_status s = MHUB_OK;
    /* buckets not issued in backward: all of them without overlap, and any
     * holding a parameter that was not used this step */
    while (s == MHUB_OK && d->sched.next < d->plan.num_buckets) {
        s = issue_bucket(d, d->sched.next, false);
        d->sched.next++;
    }
    /* wait for everything issued, even after an error, so no request is
     * left behind on this rank */
    for (int b = 0; b < d->sched.next; b++) {
        mhub_status w = mhub_request_wait(&d->buckets[b].req);
        if (s == MHUB_OK)
            s = w;
    }
    if (s == MHUB_OK && d->cfg.check_for_nan_in_grad)
        s = mhub_dp_agree_on_nan(d->dp, d->params, d->nan_param, d->step, "ddp");
    d->stats.sync_wait_seconds += now_seconds() - t0;
    d->stats.steps++;
    d->step++;
    reset_step(d);
    return s;
}

mhub_status mhub_ddp_broadcast_params(mhub_ddp *d)
{
    if (!d)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine is NULL");
    for (int i = 0; i < d->params->count; i++) {
        mhub_param *p = &d->params->items[i];
        MHUB_TRY(mhub_comm_broadcast(d->dp, p->value.data, p->value.numel, p->value.dtype, 0));
    }
    return MHUB_OK;
}

/* ---- inspection ------------------------------------------------------------ */

int mhub_ddp_num_buckets(const mhub_ddp *d) { return d ? d->plan.num_buckets : 0; }

mhub_status mhub_ddp_bucket(const mhub_ddp *d, int index, mhub_ddp_bucket_info *out)
{
    if (!d || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "engine or out is NULL");
    if (index < 0 || index >= d->plan.num_buckets)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "bucket %d is outside [0, %d)", index,
                          d->plan.num_buckets);
    const mhub_plan_bucket *b = &d->plan.buckets[index];
    out->offset = b->offset;
    out->numel = b->numel;
    out->num_params = b->num_params;
    out->first_param = b->first_param;
    return MHUB_OK;
}

int mhub_ddp_param_bucket(const mhub_ddp *d, int param_index)
{
    if (!d || param_index < 0 || param_index >= d->params->count)
        return -1;
    return d->plan.param_bucket[param_index];
}

bool mhub_ddp_uses_comm_memory(const mhub_ddp *d) { return d && d->comm_memory; }

void mhub_ddp_get_stats(const mhub_ddp *d, mhub_ddp_stats *out)
{
    if (!out)
        return;
    if (!d) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = d->stats;
}
