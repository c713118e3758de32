/* mlp.h - a multi-layer perceptron: Linear-GELU-...-Linear + softmax
 * cross-entropy, forward and backward on the backend interface.
 *
 * Parameters, in order of use (PyTorch's nn.Linear layout, y = x W^T + b):
 *   layers.<i>.weight  [out_i, in_i]
 *   layers.<i>.bias    [out_i]
 * Weights start N(0, 1/in_i) (std = 1/sqrt(fan_in)); biases start at zero.
 * Parameters are stored in `param_dtype` (f32, bf16 or f16); compute is f32
 * (16-bit weights are widened exactly before each GEMM). Gradients are
 * f32 unless an engine re-points them at 16-bit storage, in which case the
 * model accumulates in f32 and rounds once per micro-batch.
 * Activation buffers are sized once for `max_rows` rows; forward and
 * backward allocate nothing. */
#ifndef MHUB_MLP_H
#define MHUB_MLP_H

#include <stdint.h>

#include "mhub/backend.h"
#include "mhub/module.h"
#include "mhub/provider.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MHUB_MLP_MAX_HIDDEN 16

typedef struct mhub_mlp_config {
    int inputs;                        /* features per sample */
    int hidden[MHUB_MLP_MAX_HIDDEN];   /* widths of the hidden layers */
    int num_hidden;                    /* 0 gives logistic regression */
    int classes;
    mhub_dtype param_dtype;            /* storage of the parameters; 0 = f32 */
    float init_std;                    /* > 0: weights N(0, init_std^2);
                                        * 0: N(0, 1/fan_in) */
} mhub_mlp_config;

typedef struct mhub_mlp mhub_mlp;

/* Build the model. With be == NULL the model is meta: parameters have
 * shapes and no storage (for inspection; forward is an error). Otherwise
 * parameters are allocated on `be` and initialised from `seed`. */
mhub_status mhub_mlp_create(const mhub_mlp_config *cfg, mhub_backend *be, int64_t max_rows,
                            uint64_t seed, mhub_mlp **out);
void mhub_mlp_free(mhub_mlp *m);

/* A pipeline chunk: linear layers [first_layer, first_layer + num_layers)
 * of the model's num_hidden + 1, parameters named by their global layer
 * index. Only a whole model (all layers) runs forward and backward; a
 * partial chunk holds its parameters (for counting, wrapping and
 * checkpoints) and its forward is MHUB_ERR_UNSUPPORTED. */
mhub_status mhub_mlp_create_chunk(const mhub_mlp_config *cfg, int first_layer, int num_layers,
                                  mhub_backend *be, int64_t max_rows, uint64_t seed,
                                  mhub_mlp **out);
/* Global index of the chunk's first layer (0 for a whole model). */
int mhub_mlp_first_layer(const mhub_mlp *m);

mhub_param_list *mhub_mlp_params(mhub_mlp *m);
const mhub_mlp_config *mhub_mlp_config_of(const mhub_mlp *m);

/* Forward on rows samples: x[rows, inputs] and y[rows] in backend memory.
 * *mean_loss (may be NULL) receives the mean cross-entropy over the rows. */
mhub_status mhub_mlp_forward(mhub_mlp *m, const float *x, const int32_t *y, int64_t rows,
                             float *mean_loss);

/* Backward of the last forward. Each row's loss is weighted by
 * `loss_weight` (1/rows for the mean of this batch; 1/global_batch when
 * micro-batches or ranks share one objective). Parameter gradients
 * ACCUMULATE into param->grad, so zero them between steps. The grad-ready
 * callback, if set, fires once per parameter when its gradient is final. */
mhub_status mhub_mlp_backward(mhub_mlp *m, float loss_weight);

void mhub_mlp_set_grad_ready(mhub_mlp *m, mhub_grad_ready_fn fn, void *user);

/* Unit hooks (module.h); unit i is linear layer i (layers.<i>.weight and
 * .bias). NULL removes them. */
void mhub_mlp_set_unit_hooks(mhub_mlp *m, const mhub_unit_hooks *hooks);
/* Number of units (linear layers). */
int mhub_mlp_num_units(const mhub_mlp *m);

/* Correct predictions (argmax of the last forward's logits vs y) among
 * its rows. */
mhub_status mhub_mlp_count_correct(mhub_mlp *m, int64_t *correct);

/* FLOPs of one forward+backward on `rows` rows (2 per multiply-add; the
 * backward is twice the forward's GEMMs). */
double mhub_mlp_flops_per_step(const mhub_mlp_config *cfg, int64_t rows);

/* ---- the "mlp" provider type (provider.h) ----
 * Config keys: the common ones plus inputs, hidden (array of widths) and
 * classes; params_dtype/fp16/bf16 give the parameter storage, init_method
 * "normal" uses init_method_std. Chunk g of C (pipeline x virtual
 * stages) holds linear layers [g L / C, (g+1) L / C): the input layer in
 * the first chunk, the output layer and the loss in the last; a config
 * with fewer layers than chunks is an error. */
typedef struct mhub_mlp_provider_config {
    mhub_provider_config base;
    mhub_mlp_config mlp;   /* param_dtype and init_std come from base */
} mhub_mlp_provider_config;

const mhub_provider_type *mhub_mlp_provider_type(void);

/* Parameters of the whole model, by formula. */
int64_t mhub_mlp_param_count(const mhub_mlp_config *cfg);

#ifdef __cplusplus
}
#endif
#endif
