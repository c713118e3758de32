/* optim.h - optimizers over a parameter list (f32 parameters). */
#ifndef MHUB_OPTIM_H
#define MHUB_OPTIM_H

#include "mhub/module.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_sgd_config {
    float lr;
    float momentum;      /* 0 = plain SGD, no state */
    float weight_decay;  /* L2 added to the gradient */
} mhub_sgd_config;

typedef struct mhub_sgd mhub_sgd;

/* Momentum buffers (if any) are allocated here, once. `list` must outlive
 * the optimizer and keep its parameters. */
mhub_status mhub_sgd_create(mhub_param_list *list, mhub_backend *be,
                            const mhub_sgd_config *cfg, mhub_sgd **out);
/* param -= lr * (grad [+ wd*param], through momentum). Gradients are
 * left as they are; zero them before the next step's backward. */
mhub_status mhub_sgd_step(mhub_sgd *opt);
/* Change the learning rate (schedules). */
mhub_status mhub_sgd_set_lr(mhub_sgd *opt, float lr);
void mhub_sgd_free(mhub_sgd *opt);

/* ---- the update rule shared by every engine ----
 * Engines that own their optimizer state (the distributed optimizer,
 * FSDP: each rank updates only its shard) describe the optimizer with
 * this config and apply it to ranges of f32 elements. */
typedef enum mhub_optim_kind {
    MHUB_OPTIM_SGD = 0,    /* SGD with optional momentum and L2 weight decay */
    MHUB_OPTIM_ADAMW = 1   /* AdamW, decoupled weight decay, bias-corrected */
} mhub_optim_kind;

typedef struct mhub_optim_config {
    mhub_optim_kind kind;
    float lr;
    float weight_decay;
    float momentum;              /* SGD */
    float beta1, beta2, eps;     /* AdamW */
} mhub_optim_config;

/* Defaults: lr 1e-3, no weight decay, momentum 0; AdamW betas (0.9,
 * 0.999), eps 1e-8 (PyTorch's). */
void mhub_optim_config_init(mhub_optim_config *cfg, mhub_optim_kind kind);
mhub_status mhub_optim_config_validate(const mhub_optim_config *cfg);
/* "sgd" / "adamw" (and back). Returns 0, or -1 for an unknown name. */
int mhub_optim_kind_parse(const char *name, mhub_optim_kind *out);
const char *mhub_optim_kind_name(mhub_optim_kind kind);
/* f32 state arrays per parameter element: SGD 1 with momentum else 0,
 * AdamW 2. */
int mhub_optim_state_arrays(const mhub_optim_config *cfg);
/* One update of n elements: `state` holds mhub_optim_state_arrays(cfg)
 * arrays of n floats (zero before the first step); `step` counts from 1
 * (AdamW's bias correction). */
mhub_status mhub_optim_update(mhub_backend *be, const mhub_optim_config *cfg, float *param,
                              const float *grad, float *const *state, int64_t n, int64_t step);

#ifdef __cplusplus
}
#endif
#endif
