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

#ifdef __cplusplus
}
#endif
#endif
