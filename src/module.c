/* module.c - the named parameter list models expose and engines wrap. */
#include <stdlib.h>
#include <string.h>

#include "mhub/backend.h"
#include "mhub/module.h"
#include "mhub/rng.h"

mhub_status mhub_param_list_add(mhub_param_list *list, const char *name, mhub_dtype dt,
                                int ndim, const int64_t *shape, mhub_init_kind init,
                                float init_std, int *index)
{
    if (!list || !name)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "list or name is NULL");
    size_t len = strlen(name);
    if (len == 0 || len >= MHUB_NAME_MAX)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "parameter name '%s' must have 1..%d characters", name,
                          MHUB_NAME_MAX - 1);
    if (mhub_param_list_find(list, name) >= 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter '%s' is already in the list", name);
    if (init < MHUB_INIT_ZEROS || init > MHUB_INIT_UNIFORM)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter '%s': unknown init kind %d", name,
                          (int)init);
    mhub_param p;
    memset(&p, 0, sizeof p);
    MHUB_TRY(mhub_tensor_init_meta(&p.value, dt, ndim, shape));
    MHUB_TRY(mhub_tensor_init_meta(&p.grad, MHUB_F32, ndim, shape));
    memcpy(p.name, name, len + 1);
    p.rng_stream = mhub_rng_stream_id(name);
    p.init = init;
    p.init_std = init_std;
    p.requires_grad = true;
    p.unit = 0;
    p.tied_unit = -1;
    if (list->count == list->cap) {
        int cap = list->cap ? 2 * list->cap : 16;
        mhub_param *items = realloc(list->items, (size_t)cap * sizeof *items);
        if (!items)
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "growing the list to %d parameters", cap);
        list->items = items;
        list->cap = cap;
    }
    list->items[list->count] = p;
    if (index)
        *index = list->count;
    list->count++;
    return MHUB_OK;
}

/* Initial values are computed in f32 on the host, then stored in the
 * parameter's dtype on its backend: the same bits on every backend. */
static mhub_status init_one(mhub_param *p, uint64_t seed)
{
    mhub_backend *be = p->value.backend;
    int64_t n = p->value.numel;
    if (n == 0)
        return MHUB_OK;
    float *host = malloc((size_t)n * sizeof *host);
    if (!host)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "init of '%s' (%lld elements)", p->name,
                          (long long)n);
    switch (p->init) {
    case MHUB_INIT_ZEROS:
    case MHUB_INIT_ONES:
        for (int64_t i = 0; i < n; i++)
            host[i] = p->init == MHUB_INIT_ONES ? 1.0f : 0.0f;
        break;
    case MHUB_INIT_NORMAL:
        mhub_rng_fill_normal(host, n, seed, p->rng_stream, 0, 0.0f, p->init_std);
        break;
    case MHUB_INIT_UNIFORM:
        mhub_rng_fill_uniform(host, n, seed, p->rng_stream, 0, -p->init_std, p->init_std);
        break;
    }
    mhub_status s;
    if (p->value.dtype == MHUB_F32) {
        s = be->ops->copy(be, p->value.data, host, (size_t)n * sizeof *host,
                          MHUB_COPY_HOST_TO_DEVICE);
    } else {
        /* stage through device memory so the backend's own cast rounds */
        void *tmp = NULL;
        s = be->ops->alloc(be, (size_t)n * sizeof *host, &tmp);
        if (s == MHUB_OK)
            s = be->ops->copy(be, tmp, host, (size_t)n * sizeof *host,
                              MHUB_COPY_HOST_TO_DEVICE);
        if (s == MHUB_OK)
            s = be->ops->cast(be, p->value.data, p->value.dtype, tmp, MHUB_F32, n);
        if (tmp)
            be->ops->free(be, tmp);
    }
    free(host);
    return s;
}

mhub_status mhub_param_list_init_values(mhub_param_list *list, uint64_t seed)
{
    if (!list)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "list is NULL");
    for (int i = 0; i < list->count; i++) {
        mhub_param *p = &list->items[i];
        if (mhub_tensor_is_meta(&p->value) && p->value.numel > 0)
            return MHUB_ERROR(MHUB_ERR_STATE, "parameter '%s' is meta (no storage)", p->name);
        MHUB_TRY(init_one(p, seed));
    }
    return MHUB_OK;
}

/* Storage for whichever of value and grad is still meta. */
static mhub_status give_storage(mhub_param *p, mhub_backend *be)
{
    if (!p->value.data)
        MHUB_TRY(mhub_tensor_materialize(&p->value, be));
    if (!p->grad.data)
        MHUB_TRY(mhub_tensor_materialize(&p->grad, be));
    return MHUB_OK;
}

mhub_status mhub_param_list_materialize(mhub_param_list *list, mhub_backend *be,
                                        uint64_t seed)
{
    if (!list || !be)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "list or backend is NULL");
    for (int i = 0; i < list->count; i++)
        MHUB_TRY(give_storage(&list->items[i], be));
    return mhub_param_list_init_values(list, seed);
}

mhub_status mhub_param_materialize(mhub_param *p, mhub_backend *be, uint64_t seed)
{
    if (!p || !be)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter or backend is NULL");
    MHUB_TRY(give_storage(p, be));
    return init_one(p, seed);
}

mhub_status mhub_param_list_zero_grad(mhub_param_list *list)
{
    if (!list)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "list is NULL");
    for (int i = 0; i < list->count; i++) {
        mhub_tensor *g = &list->items[i].grad;
        if (g->data && g->backend)
            MHUB_TRY(g->backend->ops->memset_zero(g->backend, g->data, mhub_tensor_nbytes(g)));
    }
    return MHUB_OK;
}

int mhub_param_list_find(const mhub_param_list *list, const char *name)
{
    if (!list || !name)
        return -1;
    for (int i = 0; i < list->count; i++)
        if (!strcmp(list->items[i].name, name))
            return i;
    return -1;
}

int64_t mhub_param_list_numel(const mhub_param_list *list)
{
    int64_t n = 0;
    for (int i = 0; list && i < list->count; i++)
        n += list->items[i].value.numel;
    return n;
}

void mhub_param_list_free(mhub_param_list *list)
{
    if (!list)
        return;
    for (int i = 0; i < list->count; i++) {
        mhub_tensor_free(&list->items[i].value);
        mhub_tensor_free(&list->items[i].grad);
    }
    free(list->items);
    memset(list, 0, sizeof *list);
}
