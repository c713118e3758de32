/* optim.c - SGD (optionally with momentum) over a parameter list. The
 * arithmetic lives in the backend's sgd_step kernel; this file owns the
 * momentum state and walks the list. */
#include <math.h>
#include <stdlib.h>

#include "mhub/backend.h"
#include "mhub/optim.h"

struct mhub_sgd {
    mhub_param_list *list;
    mhub_backend *be;
    mhub_sgd_config cfg;
    float **momentum;   /* one buffer per parameter, NULL without momentum */
};

static mhub_status check_config(const mhub_sgd_config *cfg)
{
    if (!isfinite(cfg->lr) || cfg->lr < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "lr = %g must be finite and >= 0",
                          (double)cfg->lr);
    if (!(cfg->momentum >= 0 && cfg->momentum < 1))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "momentum = %g must be in [0, 1)",
                          (double)cfg->momentum);
    if (!isfinite(cfg->weight_decay) || cfg->weight_decay < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "weight_decay = %g must be finite and >= 0",
                          (double)cfg->weight_decay);
    return MHUB_OK;
}

mhub_status mhub_sgd_create(mhub_param_list *list, mhub_backend *be,
                            const mhub_sgd_config *cfg, mhub_sgd **out)
{
    if (!list || !be || !cfg || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "list, backend, config or out is NULL");
    *out = NULL;
    MHUB_TRY(check_config(cfg));
    for (int i = 0; i < list->count; i++) {
        const mhub_param *p = &list->items[i];
        if (p->value.dtype != MHUB_F32)
            return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                              "parameter '%s' is %s; SGD updates f32 parameters", p->name,
                              mhub_dtype_name(p->value.dtype));
        if (!p->value.data && p->value.numel > 0)
            return MHUB_ERROR(MHUB_ERR_STATE, "parameter '%s' has no storage (meta)", p->name);
    }
    mhub_sgd *opt = calloc(1, sizeof *opt);
    if (!opt)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "optimizer struct");
    opt->list = list;
    opt->be = be;
    opt->cfg = *cfg;
    if (cfg->momentum > 0) {
        opt->momentum = calloc((size_t)list->count, sizeof *opt->momentum);
        if (!opt->momentum) {
            free(opt);
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "momentum table");
        }
        for (int i = 0; i < list->count; i++) {
            void *buf = NULL;
            mhub_status s = be->ops->alloc(be, mhub_tensor_nbytes(&list->items[i].value), &buf);
            if (s != MHUB_OK) {
                mhub_sgd_free(opt);
                return s;
            }
            opt->momentum[i] = buf;
        }
    }
    *out = opt;
    return MHUB_OK;
}

mhub_status mhub_sgd_step(mhub_sgd *opt)
{
    if (!opt)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "optimizer is NULL");
    for (int i = 0; i < opt->list->count; i++) {
        mhub_param *p = &opt->list->items[i];
        if (!p->requires_grad)
            continue;
        MHUB_TRY(opt->be->ops->sgd_step(opt->be, p->value.data, p->grad.data,
                                        opt->momentum ? opt->momentum[i] : NULL,
                                        p->value.numel, opt->cfg.lr, opt->cfg.momentum,
                                        opt->cfg.weight_decay));
    }
    return MHUB_OK;
}

mhub_status mhub_sgd_set_lr(mhub_sgd *opt, float lr)
{
    if (!opt)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "optimizer is NULL");
    mhub_sgd_config c = opt->cfg;
    c.lr = lr;
    MHUB_TRY(check_config(&c));
    opt->cfg = c;
    return MHUB_OK;
}

void mhub_sgd_free(mhub_sgd *opt)
{
    if (!opt)
        return;
    if (opt->momentum) {
        for (int i = 0; i < opt->list->count; i++)
            if (opt->momentum[i])
                opt->be->ops->free(opt->be, opt->momentum[i]);
        free(opt->momentum);
    }
    free(opt);
}
