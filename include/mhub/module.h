/* module.h - named parameters: the list that data-parallel engines wrap.
 *
 * A model owns an mhub_param_list. Each parameter has a full dotted name
 * ("layers.0.weight"), its value tensor and its gradient tensor. Engines
 * (DDP, FSDP) may re-point `grad` (and `value`) at slots of their own
 * contiguous buffers, so model code reads param->grad.data at use time and
 * never caches it.
 *
 * Initial values come from the counter-based RNG with the parameter's
 * stream = mhub_rng_stream_id(name): element i of "layers.0.weight" has the
 * same value on any number of ranks. */
#ifndef MHUB_MODULE_H
#define MHUB_MODULE_H

#include <stdbool.h>
#include <stdint.h>

#include "mhub/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MHUB_NAME_MAX 96

typedef enum mhub_init_kind {
    MHUB_INIT_ZEROS = 0,
    MHUB_INIT_ONES,
    MHUB_INIT_NORMAL,   /* N(0, std^2) */
    MHUB_INIT_UNIFORM   /* U(-bound, bound), bound = std */
} mhub_init_kind;

typedef struct mhub_param {
    char name[MHUB_NAME_MAX];
    mhub_tensor value;       /* the parameter */
    mhub_tensor grad;        /* f32 gradient, same shape; accumulates */
    uint64_t rng_stream;     /* mhub_rng_stream_id(name) */
    mhub_init_kind init;
    float init_std;
    bool requires_grad;
    int unit;                /* wrapping unit (layer) the model uses it in; see hooks */
    int tied_unit;           /* another unit that reads it too (an output layer tied to
                              * the embedding), or -1 (the default); see hooks */
} mhub_param;

typedef struct mhub_param_list {
    mhub_param *items;
    int count;
    int cap;
} mhub_param_list;

/* Append a parameter (meta: shape only, no storage). The name must be
 * non-empty, shorter than MHUB_NAME_MAX and unique in the list. Returns its
 * index through *index (may be NULL). Pointers into items are invalidated
 * by later adds: keep indices. */
mhub_status mhub_param_list_add(mhub_param_list *list, const char *name, mhub_dtype dt,
                                int ndim, const int64_t *shape, mhub_init_kind init,
                                float init_std, int *index);

/* Give every meta parameter storage on `be` (values and f32 grads, zero)
 * and, when `seed` is given, its initial values from the RNG. */
mhub_status mhub_param_list_materialize(mhub_param_list *list, mhub_backend *be,
                                        uint64_t seed);

/* One parameter of a list: storage as mhub_param_list_materialize gives
 * it, values from `seed`. For a model whose parameters draw from
 * different seeds (a tensor-parallel shard's split weights from the
 * tensor-parallel seed, its replicated ones from the rank's seed). */
mhub_status mhub_param_materialize(mhub_param *p, mhub_backend *be, uint64_t seed);

/* Refill every parameter's value from (seed, its stream, element index). */
mhub_status mhub_param_list_init_values(mhub_param_list *list, uint64_t seed);

/* Zero every gradient. */
mhub_status mhub_param_list_zero_grad(mhub_param_list *list);

/* Index of the parameter called `name`, or -1. */
int mhub_param_list_find(const mhub_param_list *list, const char *name);

/* Total elements over all parameters (works on meta lists). */
int64_t mhub_param_list_numel(const mhub_param_list *list);

/* Free storage and the list itself (the struct is reset to empty). */
void mhub_param_list_free(mhub_param_list *list);

/* Called by a model's backward as soon as a parameter's gradient for this
 * micro-batch is final, in backward order. Engines use it to start a
 * bucket's reduction while the rest of backward runs. */
typedef mhub_status (*mhub_grad_ready_fn)(void *user, int param_index);

/* Unit hooks: a model is a sequence of wrapping units (the MLP's linear
 * layers, a GPT's transformer blocks), numbered in forward order; each
 * parameter names its unit (mhub_param.unit). A model calls, for unit u:
 *   forward:  pre_forward(u) before reading any parameter of u,
 *             post_forward(u) when its forward no longer needs them;
 *   backward (units in reverse): pre_backward(u) before reading u's
 *             parameters, post_backward(u) once u's gradients are final
 *             and its parameters are no longer needed.
 * FSDP gathers a unit's parameters in pre_* and frees them in post_*;
 * the distributed optimizer waits for a unit's all-gathered parameters in
 * pre_forward. Any hook may be NULL; an error stops the pass.
 * A parameter that a second unit reads too (tied weights: a GPT's output
 * layer is its embedding table) names that unit in tied_unit. The model
 * calls the hooks of the unit it is running only: between the reader's
 * pre_* and post_* hooks the parameter is usable and its gradient
 * accumulates the reader's part, and the gradient is final only after
 * both units' backwards (FSDP keeps such a unit gathered, fsdp.h). */
typedef struct mhub_unit_hooks {
    mhub_status (*pre_forward)(void *user, int unit);
    mhub_status (*post_forward)(void *user, int unit);
    mhub_status (*pre_backward)(void *user, int unit);
    mhub_status (*post_backward)(void *user, int unit);
    void *user;
} mhub_unit_hooks;

#ifdef __cplusplus
}
#endif
#endif
