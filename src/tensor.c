/* tensor.c - shapes, owning allocations, views and meta tensors. */
#include <stdio.h>
#include <string.h>

#include "mhub/backend.h"
#include "mhub/tensor.h"

int64_t mhub_shape_numel(int ndim, const int64_t *shape)
{
    if (ndim < 0 || ndim > MHUB_MAX_DIMS || (ndim > 0 && !shape))
        return -1;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return -1;
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return -1;
        n *= shape[i];
    }
    return n;
}

/* Fill dtype, ndim, shape and numel; leaves storage fields untouched. */
static mhub_status set_shape(mhub_tensor *t, mhub_dtype dt, int ndim, const int64_t *shape,
                             const char *who)
{
    if (!t)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: tensor is NULL", who);
    if (!mhub_dtype_valid(dt))
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: invalid dtype %d", who, (int)dt);
    int64_t numel = mhub_shape_numel(ndim, shape);
    if (numel < 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "%s: bad shape (ndim %d must be 0..%d, dims >= 0, product must fit "
                          "in int64)",
                          who, ndim, MHUB_MAX_DIMS);
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < MHUB_MAX_DIMS; i++)
        t->shape[i] = i < ndim ? shape[i] : 1;
    t->numel = numel;
    return MHUB_OK;
}

mhub_status mhub_tensor_init_meta(mhub_tensor *t, mhub_dtype dt, int ndim,
                                  const int64_t *shape)
{
    MHUB_TRY(set_shape(t, dt, ndim, shape, "mhub_tensor_init_meta"));
    t->data = NULL;
    t->backend = NULL;
    t->owns_data = false;
    return MHUB_OK;
}

mhub_status mhub_tensor_alloc(mhub_tensor *t, mhub_backend *be, mhub_dtype dt, int ndim,
                              const int64_t *shape)
{
    MHUB_TRY(mhub_tensor_init_meta(t, dt, ndim, shape));
    return mhub_tensor_materialize(t, be);
}

mhub_status mhub_tensor_materialize(mhub_tensor *t, mhub_backend *be)
{
    if (!t || !be || !be->ops)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "tensor or backend is NULL");
    if (t->data)
        return MHUB_ERROR(MHUB_ERR_STATE, "tensor already has storage");
    size_t bytes = (size_t)t->numel * mhub_dtype_size(t->dtype);
    void *p = NULL;
    MHUB_TRY(be->ops->alloc(be, bytes, &p));
    t->data = p;
    t->backend = be;
    t->owns_data = true;
    return MHUB_OK;
}

mhub_status mhub_tensor_wrap(mhub_tensor *t, void *data, mhub_backend *be, mhub_dtype dt,
                             int ndim, const int64_t *shape)
{
    MHUB_TRY(set_shape(t, dt, ndim, shape, "mhub_tensor_wrap"));
    if (!data && t->numel > 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "data is NULL for %lld elements",
                          (long long)t->numel);
    t->data = data;
    t->backend = be;
    t->owns_data = false;
    return MHUB_OK;
}

mhub_status mhub_tensor_view(mhub_tensor *view, const mhub_tensor *base, int64_t offset,
                             int ndim, const int64_t *shape)
{
    if (!base || !view)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "base or view is NULL");
    if (view == base)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "view and base are the same struct");
    mhub_tensor v;
    MHUB_TRY(set_shape(&v, base->dtype, ndim, shape, "mhub_tensor_view"));
    if (offset < 0 || offset > base->numel || v.numel > base->numel - offset)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "elements [%lld, %lld) are outside the base's %lld elements",
                          (long long)offset, (long long)(offset + v.numel),
                          (long long)base->numel);
    v.backend = base->backend;
    v.owns_data = false;
    v.data = base->data ? (char *)base->data + (size_t)offset * mhub_dtype_size(base->dtype)
                        : NULL;
    *view = v;
    return MHUB_OK;
}

mhub_status mhub_tensor_reshape(mhub_tensor *t, int ndim, const int64_t *shape)
{
    if (!t)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "tensor is NULL");
    int64_t numel = mhub_shape_numel(ndim, shape);
    if (numel != t->numel)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "new shape has %lld elements, the tensor has %lld",
                          (long long)numel, (long long)t->numel);
    return set_shape(t, t->dtype, ndim, shape, "mhub_tensor_reshape");
}

void mhub_tensor_free(mhub_tensor *t)
{
    if (!t)
        return;
    if (t->owns_data && t->data && t->backend && t->backend->ops)
        t->backend->ops->free(t->backend, t->data);
    memset(t, 0, sizeof *t);
}

size_t mhub_tensor_nbytes(const mhub_tensor *t)
{
    return t ? (size_t)t->numel * mhub_dtype_size(t->dtype) : 0;
}

bool mhub_tensor_is_meta(const mhub_tensor *t) { return t && !t->data; }

bool mhub_tensor_same_shape(const mhub_tensor *a, const mhub_tensor *b)
{
    if (!a || !b || a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

char *mhub_tensor_describe(const mhub_tensor *t, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return buf;
    if (!t) {
        snprintf(buf, cap, "(null)");
        return buf;
    }
    size_t used = (size_t)snprintf(buf, cap, "%s[", mhub_dtype_name(t->dtype));
    for (int i = 0; i < t->ndim && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, "%s%lld", i ? ", " : "",
                                 (long long)t->shape[i]);
    if (used < cap)
        snprintf(buf + used, cap - used, "]%s", t->data ? "" : " meta");
    return buf;
}
