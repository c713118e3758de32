/* tensor.h - dense row-major tensors: owning buffers, views, meta tensors.
 *
 * An mhub_tensor is a small value type the caller owns (usually embedded in
 * another struct). Its storage is one of:
 *   - owned:    allocated by mhub_tensor_alloc on a backend; freed by
 *               mhub_tensor_free;
 *   - borrowed: a view into another tensor (mhub_tensor_view) or into
 *               memory the caller owns (mhub_tensor_wrap); never freed here;
 *   - none:     a meta tensor (mhub_tensor_init_meta): shape and dtype only,
 *               used to inspect a model without allocating it.
 * Tensors are always contiguous; a view is a contiguous range of elements
 * of its base, reinterpreted with a new shape. */
#ifndef MHUB_TENSOR_H
#define MHUB_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mhub/dtype.h"
#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MHUB_MAX_DIMS 4

typedef struct mhub_backend mhub_backend;

typedef struct mhub_tensor {
    mhub_dtype dtype;
    int ndim;                       /* 0 (scalar) .. MHUB_MAX_DIMS */
    int64_t shape[MHUB_MAX_DIMS];   /* unused dims are 1 */
    int64_t numel;                  /* product of shape[0..ndim) */
    void *data;                     /* NULL for meta tensors */
    mhub_backend *backend;          /* memory's home; NULL for meta tensors */
    bool owns_data;                 /* mhub_tensor_free releases data */
} mhub_tensor;

/* Element count of a shape, or -1 when a dim is negative, ndim is out of
 * range or the product overflows int64. */
int64_t mhub_shape_numel(int ndim, const int64_t *shape);

/* A tensor with a shape and no storage. */
mhub_status mhub_tensor_init_meta(mhub_tensor *t, mhub_dtype dt, int ndim,
                                  const int64_t *shape);

/* Allocate zero-filled storage on `be`. */
mhub_status mhub_tensor_alloc(mhub_tensor *t, mhub_backend *be, mhub_dtype dt,
                              int ndim, const int64_t *shape);

/* Give a meta tensor zero-filled storage on `be` (no-op error if it already
 * has storage). */
mhub_status mhub_tensor_materialize(mhub_tensor *t, mhub_backend *be);

/* A non-owning tensor over memory the caller owns (on backend `be`). */
mhub_status mhub_tensor_wrap(mhub_tensor *t, void *data, mhub_backend *be,
                             mhub_dtype dt, int ndim, const int64_t *shape);

/* A non-owning view of `numel(shape)` elements of `base` starting at
 * element `offset`. Fails if the range leaves the base. The view of a meta
 * tensor is a meta tensor. The base must outlive the view. */
mhub_status mhub_tensor_view(mhub_tensor *view, const mhub_tensor *base,
                             int64_t offset, int ndim, const int64_t *shape);

/* Same storage, new shape with the same element count. */
mhub_status mhub_tensor_reshape(mhub_tensor *t, int ndim, const int64_t *shape);

/* Release owned storage and reset *t to an empty meta tensor. Safe on a
 * zeroed struct, a view, a meta tensor and NULL. */
void mhub_tensor_free(mhub_tensor *t);

size_t mhub_tensor_nbytes(const mhub_tensor *t);
bool mhub_tensor_is_meta(const mhub_tensor *t);
bool mhub_tensor_same_shape(const mhub_tensor *a, const mhub_tensor *b);

/* Write "f32[4, 8]" into buf (always NUL-terminated). Returns buf. */
char *mhub_tensor_describe(const mhub_tensor *t, char *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
