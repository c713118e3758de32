/* mlp.c - Linear-GELU-...-Linear with softmax cross-entropy.
 *
 * Notation: L linear layers, widths d[0] = inputs, d[1..L-1] = hidden,
 * d[L] = classes; layer i maps d[i] -> d[i+1]. For a batch of R rows:
 *   a[0] = x                                  [R, d0]
 *   z[i] = a[i] W[i]^T + b[i]                 [R, d(i+1)]
 *   a[i+1] = gelu(z[i])        (i < L-1)
 *   logits = z[L-1];  loss_r = -log softmax(logits_r)[y_r]
 * Backward walks the layers in reverse; dz[i] holds dLoss/dz[i]. The
 * gradient of layer i is final as soon as its dz is known, so grad-ready
 * fires for it then: an engine can reduce it while layers < i still run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/mlp.h"

#define MAX_LAYERS (MHUB_MLP_MAX_HIDDEN + 1)

struct mhub_mlp {
    mhub_mlp_config cfg;
    mhub_backend *be;           /* NULL for a meta model */
    int layers;                 /* linear layers in this model (L when whole) */
    int first_layer;            /* global index of layers[0] (pipeline chunks) */
    bool whole;                 /* all L layers: forward and backward can run */
    int64_t width[MAX_LAYERS + 1];
    int64_t max_rows;
    mhub_param_list params;     /* layers.<i>.weight, layers.<i>.bias */
    /* activations, sized once for max_rows (backend memory) */
    float *z[MAX_LAYERS];       /* pre-activations; z[L-1] = logits */
    float *a[MAX_LAYERS];       /* a[i] for i >= 1 (a[0] is the caller's x) */
    float *dz[MAX_LAYERS];
    float *probs;
    float *losses;
    float *host_scratch;        /* max_rows * max(classes, 1) floats, for D2H reads */
    /* 16-bit parameters: f32 copies of one layer's weight and bias, and of
     * a gradient being accumulated (sized for the largest layer) */
    float *w32, *b32, *gw32, *gb32, *acc32;
    int32_t *host_labels;
    /* the last forward's batch */
    const float *x;
    const int32_t *y;
    int64_t rows;
    bool have_forward;
    mhub_grad_ready_fn grad_ready;
    void *grad_ready_user;
    mhub_unit_hooks hooks;
};

static int weight_index(int layer) { return 2 * layer; }
static int bias_index(int layer) { return 2 * layer + 1; }

static mhub_status check_config(const mhub_mlp_config *cfg, int64_t max_rows, bool meta)
{
    if (cfg->inputs < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "inputs = %d must be >= 1", cfg->inputs);
    if (cfg->classes < 2)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "classes = %d must be >= 2", cfg->classes);
    if (cfg->num_hidden < 0 || cfg->num_hidden > MHUB_MLP_MAX_HIDDEN)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "num_hidden = %d must be in [0, %d]",
                          cfg->num_hidden, MHUB_MLP_MAX_HIDDEN);
    if (!(cfg->init_std >= 0.0f) || cfg->init_std > 1e3f)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "init_std = %g must be in [0, 1000]",
                          (double)cfg->init_std);
    if (!mhub_dtype_valid(cfg->param_dtype))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "param_dtype %d is not a dtype",
                          (int)cfg->param_dtype);
    for (int i = 0; i < cfg->num_hidden; i++)
        if (cfg->hidden[i] < 1)
            return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "hidden[%d] = %d must be >= 1", i,
                              cfg->hidden[i]);
    if (!meta && max_rows < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "max_rows = %lld must be >= 1",
                          (long long)max_rows);
    return MHUB_OK;
}

static mhub_status add_params(mhub_mlp *m)
{
    for (int i = 0; i < m->layers; i++) {
        char name[MHUB_NAME_MAX];
        int64_t wshape[2] = {m->width[i + 1], m->width[i]};
        int64_t bshape[1] = {m->width[i + 1]};
        /* std 1/sqrt(fan_in) keeps activations O(1) through the stack */
        float std = m->cfg.init_std > 0 ? m->cfg.init_std : 1.0f / sqrtf((float)m->width[i]);
        snprintf(name, sizeof name, "layers.%d.weight", m->first_layer + i);
        MHUB_TRY(mhub_param_list_add(&m->params, name, m->cfg.param_dtype, 2, wshape,
                                     MHUB_INIT_NORMAL, std, NULL));
        snprintf(name, sizeof name, "layers.%d.bias", m->first_layer + i);
        MHUB_TRY(mhub_param_list_add(&m->params, name, m->cfg.param_dtype, 1, bshape,
                                     MHUB_INIT_ZEROS, 0.0f, NULL));
        m->params.items[weight_index(i)].unit = i;
        m->params.items[bias_index(i)].unit = i;
    }
    return MHUB_OK;
}

static mhub_status alloc_floats(mhub_backend *be, int64_t n, float **out)
{
    void *p = NULL;
    MHUB_TRY(be->ops->alloc(be, (size_t)n * sizeof(float), &p));
    *out = p;
    return MHUB_OK;
}

static mhub_status alloc_activations(mhub_mlp *m)
{
    mhub_backend *be = m->be;
    int64_t r = m->max_rows;
    for (int i = 0; i < m->layers; i++) {
        MHUB_TRY(alloc_floats(be, r * m->width[i + 1], &m->z[i]));
        MHUB_TRY(alloc_floats(be, r * m->width[i + 1], &m->dz[i]));
        if (i + 1 < m->layers)
            MHUB_TRY(alloc_floats(be, r * m->width[i + 1], &m->a[i + 1]));
    }
    int64_t wmax = 0, bmax = 0;
    for (int i = 0; i < m->layers; i++) {
        wmax = m->width[i] * m->width[i + 1] > wmax ? m->width[i] * m->width[i + 1] : wmax;
        bmax = m->width[i + 1] > bmax ? m->width[i + 1] : bmax;
    }
    MHUB_TRY(alloc_floats(be, wmax, &m->w32));
    MHUB_TRY(alloc_floats(be, bmax, &m->b32));
    MHUB_TRY(alloc_floats(be, wmax, &m->gw32));
    MHUB_TRY(alloc_floats(be, bmax, &m->gb32));
    MHUB_TRY(alloc_floats(be, wmax, &m->acc32));
    MHUB_TRY(alloc_floats(be, r * m->cfg.classes, &m->probs));
    MHUB_TRY(alloc_floats(be, r, &m->losses));
    m->host_scratch = malloc((size_t)(r * m->cfg.classes) * sizeof(float));
    m->host_labels = malloc((size_t)r * sizeof(int32_t));
    if (!m->host_scratch || !m->host_labels)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "host scratch for %lld rows", (long long)r);
    return MHUB_OK;
}

/* Width d[j] of the whole model (d[0] = inputs, d[L] = classes). */
static int64_t global_width(const mhub_mlp_config *cfg, int j)
{
    if (j == 0)
        return cfg->inputs;
    return j <= cfg->num_hidden ? cfg->hidden[j - 1] : cfg->classes;
}

mhub_status mhub_mlp_create_chunk(const mhub_mlp_config *cfg, int first_layer, int num_layers,
                                  mhub_backend *be, int64_t max_rows, uint64_t seed,
                                  mhub_mlp **out)
{
    if (!cfg || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config or out is NULL");
    *out = NULL;
    int total = cfg->num_hidden + 1;
    bool whole = first_layer == 0 && num_layers == total;
    MHUB_TRY(check_config(cfg, max_rows, be == NULL || !whole));
    if (first_layer < 0 || num_layers < 1 || first_layer + num_layers > total)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "layers [%d, %d) are not a non-empty range of the model's %d",
                          first_layer, first_layer + num_layers, total);
    mhub_mlp *m = calloc(1, sizeof *m);
    if (!m)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "model struct");
    m->cfg = *cfg;
    m->be = be;
    m->layers = num_layers;
    m->first_layer = first_layer;
    m->whole = whole;
    m->max_rows = max_rows;
    for (int i = 0; i <= num_layers; i++)
        m->width[i] = global_width(cfg, first_layer + i);
    mhub_status s = add_params(m);
    if (s == MHUB_OK && be) {
        s = mhub_param_list_materialize(&m->params, be, seed);
        /* a pipeline chunk holds its parameters but cannot run alone */
        if (s == MHUB_OK && whole)
            s = alloc_activations(m);
    }
    if (s != MHUB_OK) {
        mhub_mlp_free(m);
        return s;
    }
    *out = m;
    return MHUB_OK;
}

mhub_status mhub_mlp_create(const mhub_mlp_config *cfg, mhub_backend *be, int64_t max_rows,
                            uint64_t seed, mhub_mlp **out)
{
    if (!cfg || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config or out is NULL");
    return mhub_mlp_create_chunk(cfg, 0, cfg->num_hidden + 1, be, max_rows, seed, out);
}

int mhub_mlp_first_layer(const mhub_mlp *m) { return m ? m->first_layer : 0; }

void mhub_mlp_free(mhub_mlp *m)
{
    if (!m)
        return;
    if (m->be && m->z[0]) {
        float *bufs[] = {m->probs, m->losses, m->w32, m->b32, m->gw32, m->gb32, m->acc32};
        for (int i = 0; i < m->layers; i++) {
            m->be->ops->free(m->be, m->z[i]);
            m->be->ops->free(m->be, m->dz[i]);
            if (m->a[i])
                m->be->ops->free(m->be, m->a[i]);
        }
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            if (bufs[i])
                m->be->ops->free(m->be, bufs[i]);
    }
    free(m->host_scratch);
    free(m->host_labels);
    mhub_param_list_free(&m->params);
    free(m);
}

mhub_param_list *mhub_mlp_params(mhub_mlp *m) { return m ? &m->params : NULL; }

const mhub_mlp_config *mhub_mlp_config_of(const mhub_mlp *m) { return m ? &m->cfg : NULL; }

void mhub_mlp_set_grad_ready(mhub_mlp *m, mhub_grad_ready_fn fn, void *user)
{
    if (!m)
        return;
    m->grad_ready = fn;
    m->grad_ready_user = user;
}

void mhub_mlp_set_unit_hooks(mhub_mlp *m, const mhub_unit_hooks *hooks)
{
    if (!m)
        return;
    if (hooks)
        m->hooks = *hooks;
    else
        memset(&m->hooks, 0, sizeof m->hooks);
}

int mhub_mlp_num_units(const mhub_mlp *m) { return m ? m->layers : 0; }

typedef mhub_status (*unit_hook_fn)(void *user, int unit);

static mhub_status call_hook(const mhub_mlp *m, unit_hook_fn fn, int unit)
{
    return fn ? fn(m->hooks.user, unit) : MHUB_OK;
}

/* The parameter as f32: itself, or widened into `scratch` (exact). */
static mhub_status param_f32(const mhub_mlp *m, int index, float *scratch, const float **out)
{
    const mhub_tensor *v = &m->params.items[index].value;
    if (v->dtype == MHUB_F32) {
        *out = v->data;
        return MHUB_OK;
    }
    *out = scratch;
    return m->be->ops->cast(m->be, scratch, MHUB_F32, v->data, v->dtype, v->numel);
}

/* Where a parameter's gradient is computed: straight into an f32
 * gradient (accumulating, beta = 1), or into zeroed f32 scratch that
 * add_scratch_to_grad then rounds into a 16-bit gradient. */
static mhub_status grad_target(const mhub_mlp *m, int index, float *scratch, float **out,
                               float *beta)
{
    const mhub_tensor *g = &m->params.items[index].grad;
    if (g->dtype == MHUB_F32) {
        *out = g->data;
        *beta = 1.0f;
        return MHUB_OK;
    }
    *out = scratch;
    *beta = 0.0f;
    return m->be->ops->memset_zero(m->be, scratch, (size_t)g->numel * sizeof(float));
}

/* 16-bit gradient += scratch, summed in f32 and rounded once. */
static mhub_status add_scratch_to_grad(const mhub_mlp *m, int index, const float *scratch)
{
    const mhub_tensor *g = &m->params.items[index].grad;
    if (g->dtype == MHUB_F32)
        return MHUB_OK;
    const mhub_backend_ops *op = m->be->ops;
    MHUB_TRY(op->cast(m->be, m->acc32, MHUB_F32, g->data, g->dtype, g->numel));
    MHUB_TRY(op->axpy(m->be, m->acc32, scratch, g->numel, 1.0f));
    return op->cast(m->be, g->data, g->dtype, m->acc32, MHUB_F32, g->numel);
}

static mhub_status mean_of_losses(mhub_mlp *m, float *mean_loss)
{
    mhub_backend *be = m->be;
    MHUB_TRY(be->ops->copy(be, m->host_scratch, m->losses, (size_t)m->rows * sizeof(float),
                           MHUB_COPY_DEVICE_TO_HOST));
    double sum = 0;
    for (int64_t r = 0; r < m->rows; r++)
        sum += m->host_scratch[r];
    *mean_loss = (float)(sum / (double)m->rows);
    return MHUB_OK;
}

mhub_status mhub_mlp_forward(mhub_mlp *m, const float *x, const int32_t *y, int64_t rows,
                             float *mean_loss)
{
    if (!m || !x || !y)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "model, x or y is NULL");
    if (!m->be)
        return MHUB_ERROR(MHUB_ERR_STATE, "the model is meta (built without a backend)");
    if (!m->whole)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "this chunk holds layers %d-%d of %d; forward runs on a whole "
                          "model (pipeline_model_parallel_size 1)",
                          m->first_layer, m->first_layer + m->layers - 1, m->cfg.num_hidden + 1);
    if (rows < 1 || rows > m->max_rows)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "rows = %lld must be in [1, %lld] (max_rows)",
                          (long long)rows, (long long)m->max_rows);
    const mhub_backend_ops *op = m->be->ops;
    m->have_forward = false;
    const float *in = x;
    for (int i = 0; i < m->layers; i++) {
        int64_t din = m->width[i], dout = m->width[i + 1];
        const float *w, *b;
        MHUB_TRY(call_hook(m, m->hooks.pre_forward, i));
        MHUB_TRY(param_f32(m, weight_index(i), m->w32, &w));
        MHUB_TRY(param_f32(m, bias_index(i), m->b32, &b));
        MHUB_TRY(op->gemm(m->be, false, true, rows, dout, din, 1.0f, in, din, w, din, 0.0f,
                          m->z[i], dout));
        MHUB_TRY(op->bias_add(m->be, m->z[i], b, rows, dout));
        MHUB_TRY(call_hook(m, m->hooks.post_forward, i));
        if (i + 1 < m->layers) {
            MHUB_TRY(op->gelu_forward(m->be, m->a[i + 1], m->z[i], rows * dout));
            in = m->a[i + 1];
        }
    }
    MHUB_TRY(op->softmax_xent_forward(m->be, m->probs, m->losses, m->z[m->layers - 1], y, rows,
                                      m->cfg.classes));
    m->x = x;
    m->y = y;
    m->rows = rows;
    m->have_forward = true;
    if (mean_loss)
        MHUB_TRY(mean_of_losses(m, mean_loss));
    return MHUB_OK;
}

static mhub_status announce(mhub_mlp *m, int index)
{
    return m->grad_ready ? m->grad_ready(m->grad_ready_user, index) : MHUB_OK;
}

mhub_status mhub_mlp_backward(mhub_mlp *m, float loss_weight)
{
    if (!m)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "model is NULL");
    if (!m->have_forward)
        return MHUB_ERROR(MHUB_ERR_STATE, "backward needs a forward first");
    const mhub_backend_ops *op = m->be->ops;
    int64_t rows = m->rows;
    int last = m->layers - 1;
    MHUB_TRY(op->softmax_xent_backward(m->be, m->dz[last], m->probs, m->y, rows,
                                       m->cfg.classes, loss_weight));
    for (int i = last; i >= 0; i--) {
        int64_t din = m->width[i], dout = m->width[i + 1];
        const float *in = i == 0 ? m->x : m->a[i];
        float *gw, *gb, beta;
        MHUB_TRY(call_hook(m, m->hooks.pre_backward, i));
        /* dW[i] += dz[i]^T a[i]   [dout, din] */
        MHUB_TRY(grad_target(m, weight_index(i), m->gw32, &gw, &beta));
        MHUB_TRY(op->gemm(m->be, true, false, dout, din, rows, 1.0f, m->dz[i], dout, in, din,
                          beta, gw, din));
        MHUB_TRY(add_scratch_to_grad(m, weight_index(i), gw));
        MHUB_TRY(grad_target(m, bias_index(i), m->gb32, &gb, &beta));
        MHUB_TRY(op->bias_backward(m->be, gb, m->dz[i], rows, dout));
        MHUB_TRY(add_scratch_to_grad(m, bias_index(i), gb));
        /* reverse order of the parameter list: bias, then weight */
        MHUB_TRY(announce(m, bias_index(i)));
        MHUB_TRY(announce(m, weight_index(i)));
        if (i > 0) {
            /* da[i] = dz[i] W[i], written into dz[i-1], then through GELU */
            const float *w;
            MHUB_TRY(param_f32(m, weight_index(i), m->w32, &w));
            MHUB_TRY(op->gemm(m->be, false, false, rows, din, dout, 1.0f, m->dz[i], dout, w, din,
                              0.0f, m->dz[i - 1], din));
            MHUB_TRY(op->gelu_backward(m->be, m->dz[i - 1], m->z[i - 1], m->dz[i - 1],
                                       rows * din));
        }
        MHUB_TRY(call_hook(m, m->hooks.post_backward, i));
    }
    return MHUB_OK;
}

mhub_status mhub_mlp_count_correct(mhub_mlp *m, int64_t *correct)
{
    if (!m || !correct)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "model or correct is NULL");
    if (!m->have_forward)
        return MHUB_ERROR(MHUB_ERR_STATE, "count_correct needs a forward first");
    int64_t c = m->cfg.classes, rows = m->rows;
    MHUB_TRY(m->be->ops->copy(m->be, m->host_scratch, m->z[m->layers - 1],
                              (size_t)(rows * c) * sizeof(float), MHUB_COPY_DEVICE_TO_HOST));
    MHUB_TRY(m->be->ops->copy(m->be, m->host_labels, m->y, (size_t)rows * sizeof(int32_t),
                              MHUB_COPY_DEVICE_TO_HOST));
    int64_t ok = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *row = m->host_scratch + r * c;
        int64_t best = 0;
        for (int64_t k = 1; k < c; k++)
            if (row[k] > row[best])
                best = k;
        ok += best == m->host_labels[r];
    }
    *correct = ok;
    return MHUB_OK;
}

double mhub_mlp_flops_per_step(const mhub_mlp_config *cfg, int64_t rows)
{
    if (!cfg)
        return 0;
    double macs = 0;
    int64_t prev = cfg->inputs;
    for (int i = 0; i <= cfg->num_hidden; i++) {
        int64_t next = i < cfg->num_hidden ? cfg->hidden[i] : cfg->classes;
        macs += (double)prev * (double)next;
        prev = next;
    }
    /* forward 2*macs per row, backward twice that */
    return 6.0 * macs * (double)rows;
}
