/* optim.c - SGD (optionally with momentum) over a parameter list. The
 * arithmetic lives in the backend's sgd_step kernel; this file owns the
 * momentum state and walks the list. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

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

/* ---- the shared update rule ---------------------------------------------- */

void mhub_optim_config_init(mhub_optim_config *cfg, mhub_optim_kind kind)
{
    if (!cfg)
        return;
    cfg->kind = kind;
    cfg->lr = 1e-3f;
    cfg->weight_decay = 0.0f;
    cfg->momentum = 0.0f;
    cfg->beta1 = 0.9f;
    cfg->beta2 = 0.999f;
    cfg->eps = 1e-8f;
}

mhub_status mhub_optim_config_validate(const mhub_optim_config *cfg)
{
    if (!cfg)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "optimizer config is NULL");
    if (cfg->kind != MHUB_OPTIM_SGD && cfg->kind != MHUB_OPTIM_ADAMW)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "unknown optimizer kind %d", (int)cfg->kind);
    mhub_sgd_config common = {.lr = cfg->lr, .momentum = cfg->momentum,
                              .weight_decay = cfg->weight_decay};
    MHUB_TRY(check_config(&common));
    if (cfg->kind == MHUB_OPTIM_ADAMW &&
        !(cfg->beta1 >= 0 && cfg->beta1 < 1 && cfg->beta2 >= 0 && cfg->beta2 < 1 &&
          isfinite(cfg->eps) && cfg->eps >= 0))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "AdamW needs beta1, beta2 in [0, 1) and eps >= 0 (got %g, %g, %g)",
                          (double)cfg->beta1, (double)cfg->beta2, (double)cfg->eps);
    return MHUB_OK;
}

int mhub_optim_kind_parse(const char *name, mhub_optim_kind *out)
{
    if (!name || !out)
        return -1;
    if (!strcmp(name, "sgd"))
        *out = MHUB_OPTIM_SGD;
    else if (!strcmp(name, "adamw"))
        *out = MHUB_OPTIM_ADAMW;
    else
        return -1;
    return 0;
}

const char *mhub_optim_kind_name(mhub_optim_kind kind)
{
    return kind == MHUB_OPTIM_SGD ? "sgd" : kind == MHUB_OPTIM_ADAMW ? "adamw" : "invalid";
}

int mhub_optim_state_arrays(const mhub_optim_config *cfg)
{
    if (!cfg)
        return 0;
    if (cfg->kind == MHUB_OPTIM_ADAMW)
        return 2;
    return cfg->momentum > 0 ? 1 : 0;
}

mhub_status mhub_optim_update(mhub_backend *be, const mhub_optim_config *cfg, float *param,
                              const float *grad, float *const *state, int64_t n, int64_t step)
{
    if (!be || !cfg)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "backend or config is NULL");
    if (mhub_optim_state_arrays(cfg) > 0 && !state)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s needs %d state array(s), got NULL",
                          mhub_optim_kind_name(cfg->kind), mhub_optim_state_arrays(cfg));
    if (cfg->kind == MHUB_OPTIM_ADAMW)
        return be->ops->adamw_step(be, param, grad, state[0], state[1], n, cfg->lr, cfg->beta1,
                                   cfg->beta2, cfg->eps, cfg->weight_decay, step);
    return be->ops->sgd_step(be, param, grad, cfg->momentum > 0 ? state[0] : NULL, n, cfg->lr,
                             cfg->momentum, cfg->weight_decay);
}
