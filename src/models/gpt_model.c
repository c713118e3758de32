/* gpt_model.c - the GPT's forward and backward on the backend table.
 *
 * Notation: B sequences of T tokens, N = B T rows; H hidden, a heads of
 * d channels in g query groups, A = a d, Q = (a + 2g) d, F the MLP width
 * (F1 = F, or 2F with SwiGLU), V the (padded) vocabulary, L layers.
 *
 *   x = wte[tokens] (+ wpe[positions])                       [N, H]
 *   per layer:  h = norm1(x); qkv = h Wqkv^T (+b); rope(q, k)
 *               y = causal_attention(qkv)                     [N, A]
 *               x = x + y Wproj^T (+b)
 *               h = norm2(x); u = act(h Wfc1^T (+b))          [N, F]
 *               x = x + u Wfc2^T (+b)
 *   logits = normf(x) Wout^T (Wout = wte when tied)           [N, V]
 *   loss_n = -log softmax(logits_n)[target_n]
 *
 * Backward walks the same steps in reverse with the residual gradient
 * dres; each kernel's backward sits next to its forward in the backend.
 * A layer's parameter gradients are final when its backward ends, so
 * grad-ready fires for them then and an engine can reduce them while
 * earlier layers still run. Every buffer is sized at create.
 *
 * Attention keeps, per layer, either the softmax probs [B, a, T, T] of
 * causal_attention (and the backward a B a T T scratch) or, when the
 * backend offers flash attention, only the per-row logsumexp lse
 * [B, a, T], from which the backward recomputes the probabilities: at
 * GPT-2's T = 1024 and a = 12 that is 48 MiB per sequence and layer
 * against 48 KiB.
 *
 * Parameters may be stored in bf16 or f16; compute is always f32. Every
 * read of a parameter goes through param_view (the f32 tensor itself, or
 * an exact widening into scratch) and every gradient write through
 * grad_begin/grad_end (an f32 gradient accumulates in place; a 16-bit one,
 * as an engine may re-point it, is computed into zeroed f32 scratch and
 * added with one rounding), as in mlp.c. The scratch costs a 16-bit model
 * three f32 copies of its largest parameter (usually the vocab x hidden
 * embedding) plus two of its largest vector, and each forward widens
 * the embedding table (twice when the head is tied to it): one pass over
 * V H elements, cheap next to the head's GEMM over the same table. A
 * tied table with a 16-bit gradient takes one more f32 copy of it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "src/models/gpt_internal.h"

/* Parameter indices of one layer; -1 when the config has no such
 * parameter (biases, LayerNorm's bias under RMSNorm). */
typedef struct layer_params {
    int ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b;
    int ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
} layer_params;

/* What a layer's forward keeps for its backward. */
typedef struct layer_acts {
    float *in;                      /* [N, H] residual stream entering the layer */
    float *ln1, *ln1_mean, *ln1_rstd;
    float *qkv;                     /* [N, Q], rotated when rope */
    float *probs;                   /* [B, a, T, T] attention softmax (plain attention) */
    float *lse;                     /* [B, a, T] its log normalisers (flash attention) */
    float *attn;                    /* [N, A] */
    float *mid;                     /* [N, H] residual after attention */
    float *ln2, *ln2_mean, *ln2_rstd;
    float *fc1;                     /* [N, F1] before the activation */
    float *act;                     /* [N, F] */
} layer_acts;

struct gpt_compute {
    int64_t max_batch, seq_cap, max_rows;
    bool flash;                     /* the backend's flash attention ops are used */
    int wte, wpe, lnf_w, lnf_b, out_w;
    layer_params *lp;
    layer_acts *la;
    float *out;                     /* [N, H] after the last layer */
    float *lnf, *lnf_mean, *lnf_rstd;
    float *logits, *probs, *losses; /* probs becomes dlogits in backward */
    int32_t *positions;             /* [N]: row b T + t holds t */
    int64_t positions_seq;          /* the T positions were filled for */
    int32_t *host_positions;
    float *host_losses;
    /* backward scratch */
    float *dres, *dtmp, *dnorm, *dqkv, *dattn, *dfc1, *dact;
    float *att_scratch;             /* [B, a, T, T], plain attention only */
    /* 16-bit parameters (NULL for f32 models): slot 0 holds a weight or
     * table, slot 1 the bias read or written beside it (sized scratch_cap
     * elements each); view32 are f32 copies of values, grad32 gradients
     * being computed, acc32 a 16-bit gradient widened for the add. */
    float *view32[2], *grad32[2], *acc32;
    int64_t scratch_cap[2];
    /* a tied table's 16-bit gradient gets two writes per backward (the
     * head's, then the lookup's): summed here in f32, rounded once */
    float *tied32;
    int tied_writes;
    /* the last forward */
    const int32_t *tokens, *targets;
    int64_t batch, seq;
    bool have_forward;
    mhub_grad_ready_fn ready;
    void *ready_user;
    mhub_unit_hooks hooks;
};

/* ---- small helpers ------------------------------------------------------- */

static bool is_layernorm(const mhub_gpt *m) { return m->cfg.normalization == MHUB_GPT_LAYERNORM; }
static bool is_rope(const mhub_gpt *m) { return m->cfg.position_embedding_type == MHUB_GPT_ROPE; }
static bool is_swiglu(const mhub_gpt *m) { return m->cfg.activation == MHUB_GPT_SWIGLU; }

static int find(const mhub_gpt *m, const char *fmt, int layer)
{
    char name[MHUB_NAME_MAX];
    snprintf(name, sizeof name, fmt, layer);
    return mhub_param_list_find(&m->params, name);
}

static mhub_status hook(const gpt_compute *c, mhub_status (*fn)(void *, int), int unit)
{
    return fn ? fn(c->hooks.user, unit) : MHUB_OK;
}

static mhub_status announce(gpt_compute *c, int param)
{
    return param >= 0 && c->ready ? c->ready(c->ready_user, param) : MHUB_OK;
}

bool mhub_gpt_runnable(const mhub_gpt *m)
{
    return m && m->pre_process && m->post_process && m->tp_size == 1 &&
           (m->dtype == MHUB_F32 || m->dtype == MHUB_BF16 || m->dtype == MHUB_F16);
}

/* ---- parameter values and gradients in f32 ----------------------------------
 * Slot 0 takes weights and embedding tables, slot 1 the bias (or norm
 * bias) a kernel uses beside them, so one kernel can read or write two
 * parameters at once. */
enum { SLOT_MAIN = 0, SLOT_BIAS = 1 };

static mhub_status check_slot(const gpt_compute *c, const mhub_param *p, int slot)
{
    if (p->value.numel <= c->scratch_cap[slot])
        return MHUB_OK;
    return MHUB_ERROR(MHUB_ERR_STATE, "%s: no f32 scratch for a %s parameter of %lld elements",
                      p->name, mhub_dtype_name(p->value.dtype), (long long)p->value.numel);
}

/* A sharding engine (FSDP) leaves a parameter meta outside its unit's
 * hooks: name it rather than compute through a NULL pointer. */
static mhub_status check_storage(const mhub_param *p, const mhub_tensor *t, const char *what)
{
    if (t->data || t->numel == 0)
        return MHUB_OK;
    return MHUB_ERROR(MHUB_ERR_STATE,
                      "the %s of '%s' has no storage here (meta): the engine did not gather "
                      "its unit %d for this use",
                      what, p->name, p->unit);
}

/* Parameter i's value as f32 (NULL when i < 0): the tensor itself, or
 * widened (exactly) into slot's scratch, valid until the slot's next use. */
static mhub_status param_view(mhub_gpt *m, int i, int slot, const float **out)
{
    *out = NULL;
    if (i < 0)
        return MHUB_OK;
    const mhub_param *p = &m->params.items[i];
    MHUB_TRY(check_storage(p, &p->value, "value"));
    if (p->value.dtype == MHUB_F32) {
        *out = p->value.data;
        return MHUB_OK;
    }
    gpt_compute *c = m->compute;
    MHUB_TRY(check_slot(c, p, slot));
    *out = c->view32[slot];
    return m->be->ops->cast(m->be, c->view32[slot], MHUB_F32, p->value.data, p->value.dtype,
                            p->value.numel);
}

static bool is_tied_table(const gpt_compute *c, int i) { return i == c->wte && c->out_w == c->wte; }

/* Where parameter i's gradient accumulates (NULL when i < 0). Read at
 * use time: an engine may re-point gradients at its buffer, in the
 * parameter's 16-bit dtype; then the kernel accumulates into zeroed f32
 * scratch and grad_end adds that in. */
static mhub_status grad_begin(mhub_gpt *m, int i, int slot, float **out)
{
    *out = NULL;
    if (i < 0)
        return MHUB_OK;
    const mhub_param *p = &m->params.items[i];
    MHUB_TRY(check_storage(p, &p->grad, "gradient"));
    if (p->grad.dtype == MHUB_F32) {
        *out = p->grad.data;
        return MHUB_OK;
    }
    gpt_compute *c = m->compute;
    float *scratch = c->grad32[slot];
    if (is_tied_table(c, i)) {
        scratch = c->tied32;
        if (c->tied_writes++ > 0) { /* the lookup adds to the head's part */
            *out = scratch;
            return MHUB_OK;
        }
    } else {
        MHUB_TRY(check_slot(c, p, slot));
    }
    *out = scratch;
    return m->be->ops->memset_zero(m->be, scratch, (size_t)p->grad.numel * sizeof(float));
}

/* A 16-bit gradient += the scratch grad_begin gave, summed in f32 and
 * rounded once; nothing for an f32 gradient (already accumulated in
 * place), nor for a tied table's first write (the lookup's follows). */
static mhub_status grad_end(mhub_gpt *m, int i, int slot)
{
    if (i < 0)
        return MHUB_OK;
    const mhub_tensor *g = &m->params.items[i].grad;
    if (g->dtype == MHUB_F32)
        return MHUB_OK;
    gpt_compute *c = m->compute;
    const float *scratch = c->grad32[slot];
    if (is_tied_table(c, i)) {
        if (c->tied_writes < 2)
            return MHUB_OK;
        c->tied_writes = 0;
        scratch = c->tied32;
    }
    const mhub_backend_ops *op = m->be->ops;
    MHUB_TRY(op->cast(m->be, c->acc32, MHUB_F32, g->data, g->dtype, g->numel));
    MHUB_TRY(op->axpy(m->be, c->acc32, scratch, g->numel, 1.0f));
    return op->cast(m->be, g->data, g->dtype, c->acc32, MHUB_F32, g->numel);
}

/* ---- buffers --------------------------------------------------------------- */

static mhub_status alloc_f(mhub_backend *be, int64_t n, float **out)
{
    void *p = NULL;
    MHUB_TRY(be->ops->alloc(be, (size_t)n * sizeof(float), &p));
    *out = p;
    return MHUB_OK;
}

static mhub_status find_params(mhub_gpt *m, gpt_compute *c)
{
    c->lp = calloc((size_t)m->num_layers, sizeof *c->lp);
    if (!c->lp)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "layer tables");
    c->wte = find(m, "embedding.word_embeddings.weight", 0);
    c->wpe = find(m, "embedding.position_embeddings.weight", 0);
    c->lnf_w = find(m, "decoder.final_layernorm.weight", 0);
    c->lnf_b = find(m, "decoder.final_layernorm.bias", 0);
    int out = find(m, "output_layer.weight", 0);
    c->out_w = out >= 0 ? out : c->wte;
    for (int l = 0; l < m->num_layers; l++) {
        int g = m->first_layer + l;
        layer_params *p = &c->lp[l];
        p->ln1_w = find(m, "decoder.layers.%d.self_attention.linear_qkv.layer_norm_weight", g);
        p->ln1_b = find(m, "decoder.layers.%d.self_attention.linear_qkv.layer_norm_bias", g);
        p->qkv_w = find(m, "decoder.layers.%d.self_attention.linear_qkv.weight", g);
        p->qkv_b = find(m, "decoder.layers.%d.self_attention.linear_qkv.bias", g);
        p->proj_w = find(m, "decoder.layers.%d.self_attention.linear_proj.weight", g);
        p->proj_b = find(m, "decoder.layers.%d.self_attention.linear_proj.bias", g);
        p->ln2_w = find(m, "decoder.layers.%d.mlp.linear_fc1.layer_norm_weight", g);
        p->ln2_b = find(m, "decoder.layers.%d.mlp.linear_fc1.layer_norm_bias", g);
        p->fc1_w = find(m, "decoder.layers.%d.mlp.linear_fc1.weight", g);
        p->fc1_b = find(m, "decoder.layers.%d.mlp.linear_fc1.bias", g);
        p->fc2_w = find(m, "decoder.layers.%d.mlp.linear_fc2.weight", g);
        p->fc2_b = find(m, "decoder.layers.%d.mlp.linear_fc2.bias", g);
        if (p->ln1_w < 0 || p->qkv_w < 0 || p->proj_w < 0 || p->ln2_w < 0 || p->fc1_w < 0 ||
            p->fc2_w < 0)
            return MHUB_ERROR(MHUB_ERR_STATE, "layer %d lacks a weight", g);
    }
    if (c->wte < 0 || c->lnf_w < 0 || c->out_w < 0)
        return MHUB_ERROR(MHUB_ERR_STATE, "the model lacks its embedding or head");
    return MHUB_OK;
}

static mhub_status alloc_layer(mhub_backend *be, const mhub_gpt *m, int64_t n, int64_t b,
                               int64_t t, bool flash, layer_acts *a)
{
    int64_t h = m->cfg.hidden_size, heads = m->cfg.num_attention_heads;
    MHUB_TRY(alloc_f(be, n * h, &a->in));
    MHUB_TRY(alloc_f(be, n * h, &a->ln1));
    MHUB_TRY(alloc_f(be, n, &a->ln1_mean));
    MHUB_TRY(alloc_f(be, n, &a->ln1_rstd));
    MHUB_TRY(alloc_f(be, n * m->dims.qkv_rows, &a->qkv));
    if (flash)
        MHUB_TRY(alloc_f(be, b * heads * t, &a->lse));
    else
        MHUB_TRY(alloc_f(be, b * heads * t * t, &a->probs));
    MHUB_TRY(alloc_f(be, n * m->dims.attn_width, &a->attn));
    MHUB_TRY(alloc_f(be, n * h, &a->mid));
    MHUB_TRY(alloc_f(be, n * h, &a->ln2));
    MHUB_TRY(alloc_f(be, n, &a->ln2_mean));
    MHUB_TRY(alloc_f(be, n, &a->ln2_rstd));
    MHUB_TRY(alloc_f(be, n * m->dims.fc1_rows, &a->fc1));
    return alloc_f(be, n * m->dims.ffn, &a->act);
}

/* The 16-bit scratch: slot 0 fits any parameter, slot 1 any vector
 * (biases and norm parameters are the only ones slot 1 takes). An f32
 * model needs none. */
static mhub_status alloc_half_scratch(mhub_gpt *m, gpt_compute *c)
{
    if (m->dtype == MHUB_F32)
        return MHUB_OK;
    for (int i = 0; i < m->params.count; i++) {
        const mhub_tensor *v = &m->params.items[i].value;
        if (v->numel > c->scratch_cap[SLOT_MAIN])
            c->scratch_cap[SLOT_MAIN] = v->numel;
        if (v->ndim == 1 && v->numel > c->scratch_cap[SLOT_BIAS])
            c->scratch_cap[SLOT_BIAS] = v->numel;
    }
    for (int s = 0; s < 2; s++) {
        if (c->scratch_cap[s] == 0)
            continue;
        MHUB_TRY(alloc_f(m->be, c->scratch_cap[s], &c->view32[s]));
        MHUB_TRY(alloc_f(m->be, c->scratch_cap[s], &c->grad32[s]));
    }
    if (c->out_w == c->wte)
        MHUB_TRY(alloc_f(m->be, m->params.items[c->wte].value.numel, &c->tied32));
    return alloc_f(m->be, c->scratch_cap[SLOT_MAIN], &c->acc32);
}

static mhub_status alloc_buffers(mhub_gpt *m, gpt_compute *c)
{
    mhub_backend *be = m->be;
    int64_t n = c->max_rows, h = m->cfg.hidden_size, v = m->dims.vocab;
    c->la = calloc((size_t)m->num_layers, sizeof *c->la);
    if (!c->la)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "layer activations");
    for (int l = 0; l < m->num_layers; l++)
        MHUB_TRY(alloc_layer(be, m, n, c->max_batch, c->seq_cap, c->flash, &c->la[l]));
    MHUB_TRY(alloc_f(be, n * h, &c->out));
    MHUB_TRY(alloc_f(be, n * h, &c->lnf));
    MHUB_TRY(alloc_f(be, n, &c->lnf_mean));
    MHUB_TRY(alloc_f(be, n, &c->lnf_rstd));
    MHUB_TRY(alloc_f(be, n * v, &c->logits));
    MHUB_TRY(alloc_f(be, n * v, &c->probs));
    MHUB_TRY(alloc_f(be, n, &c->losses));
    MHUB_TRY(alloc_f(be, n * h, &c->dres));
    MHUB_TRY(alloc_f(be, n * h, &c->dtmp));
    MHUB_TRY(alloc_f(be, n * h, &c->dnorm));
    MHUB_TRY(alloc_f(be, n * m->dims.qkv_rows, &c->dqkv));
    MHUB_TRY(alloc_f(be, n * m->dims.attn_width, &c->dattn));
    MHUB_TRY(alloc_f(be, n * m->dims.fc1_rows, &c->dfc1));
    MHUB_TRY(alloc_f(be, n * m->dims.ffn, &c->dact));
    if (!c->flash)
        MHUB_TRY(alloc_f(be, c->max_batch * m->cfg.num_attention_heads * c->seq_cap * c->seq_cap,
                         &c->att_scratch));
    MHUB_TRY(alloc_half_scratch(m, c));
    void *p = NULL;
    MHUB_TRY(be->ops->alloc(be, (size_t)n * sizeof(int32_t), &p));
    c->positions = p;
    c->host_positions = malloc((size_t)n * sizeof(int32_t));
    c->host_losses = malloc((size_t)n * sizeof(float));
    if (!c->host_positions || !c->host_losses)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "host staging for %lld rows", (long long)n);
    return MHUB_OK;
}

mhub_status mhub_gpt_compute_create(mhub_gpt *m, int64_t batch)
{
    if (batch < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "micro_batch = %lld must be >= 1",
                          (long long)batch);
    gpt_compute *c = calloc(1, sizeof *c);
    if (!c)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "GPT activations");
    m->compute = c;
    c->max_batch = batch;
    c->seq_cap = m->cfg.seq_length;
    c->max_rows = batch * c->seq_cap;
    c->flash = m->be->ops->flash_attention_forward && m->be->ops->flash_attention_backward;
    MHUB_TRY(find_params(m, c));
    return alloc_buffers(m, c);
}

static void free_f(mhub_backend *be, void *p)
{
    if (p)
        be->ops->free(be, p);
}

void mhub_gpt_compute_free(mhub_gpt *m)
{
    gpt_compute *c = m ? m->compute : NULL;
    if (!c)
        return;
    mhub_backend *be = m->be;
    for (int l = 0; c->la && l < m->num_layers; l++) {
        layer_acts *a = &c->la[l];
        float *bufs[] = {a->in,  a->ln1,      a->ln1_mean, a->ln1_rstd, a->qkv,
                         a->probs, a->lse,    a->attn,     a->mid,      a->ln2,
                         a->ln2_mean, a->ln2_rstd, a->fc1, a->act};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            free_f(be, bufs[i]);
    }
    float *bufs[] = {c->out,  c->lnf,   c->lnf_mean, c->lnf_rstd, c->logits, c->probs,
                     c->losses, c->dres, c->dtmp,     c->dnorm,    c->dqkv,   c->dattn,
                     c->dfc1, c->dact, c->att_scratch, c->view32[0], c->view32[1],
                     c->grad32[0], c->grad32[1], c->acc32, c->tied32};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        free_f(be, bufs[i]);
    free_f(be, c->positions);
    free(c->host_positions);
    free(c->host_losses);
    free(c->lp);
    free(c->la);
    free(c);
    m->compute = NULL;
}

void mhub_gpt_set_grad_ready(mhub_gpt *m, mhub_grad_ready_fn fn, void *user)
{
    if (!m || !m->compute)
        return;
    m->compute->ready = fn;
    m->compute->ready_user = user;
}

void mhub_gpt_set_unit_hooks(mhub_gpt *m, const mhub_unit_hooks *hooks)
{
    if (!m || !m->compute)
        return;
    if (hooks)
        m->compute->hooks = *hooks;
    else
        memset(&m->compute->hooks, 0, sizeof m->compute->hooks);
}

const float *mhub_gpt_logits(const mhub_gpt *m) { return m && m->compute ? m->compute->logits : NULL; }
const float *mhub_gpt_losses(const mhub_gpt *m) { return m && m->compute ? m->compute->losses : NULL; }

/* ---- building blocks: each forward, then its backward ----------------------- */

/* y[N, out] = x[N, in] W[out, in]^T (+ bias), accumulating into y when
 * `add` (the residual connections). */
static mhub_status linear_forward(mhub_gpt *m, float *y, const float *x, int w, int b, int64_t n,
                                  int64_t in, int64_t out, bool add)
{
    const mhub_backend_ops *op = m->be->ops;
    const float *wv, *bv;
    MHUB_TRY(param_view(m, w, SLOT_MAIN, &wv));
    MHUB_TRY(param_view(m, b, SLOT_BIAS, &bv));
    MHUB_TRY(op->gemm(m->be, false, true, n, out, in, 1.0f, x, in, wv, in, add ? 1.0f : 0.0f, y,
                      out));
    return b >= 0 ? op->bias_add(m->be, y, bv, n, out) : MHUB_OK;
}

/* dx = dy W (overwritten; skipped when dx is NULL); dW += dy^T x;
 * db += column sums of dy. */
static mhub_status linear_backward(mhub_gpt *m, float *dx, const float *dy, const float *x, int w,
                                   int b, int64_t n, int64_t in, int64_t out)
{
    const mhub_backend_ops *op = m->be->ops;
    if (dx) {
        const float *wv;
        MHUB_TRY(param_view(m, w, SLOT_MAIN, &wv));
        MHUB_TRY(op->gemm(m->be, false, false, n, in, out, 1.0f, dy, out, wv, in, 0.0f, dx, in));
    }
    float *dw, *db;
    MHUB_TRY(grad_begin(m, w, SLOT_MAIN, &dw));
    MHUB_TRY(op->gemm(m->be, true, false, out, in, n, 1.0f, dy, out, x, in, 1.0f, dw, in));
    MHUB_TRY(grad_end(m, w, SLOT_MAIN));
    if (b < 0)
        return MHUB_OK;
    MHUB_TRY(grad_begin(m, b, SLOT_BIAS, &db));
    MHUB_TRY(op->bias_backward(m->be, db, dy, n, out));
    return grad_end(m, b, SLOT_BIAS);
}

static mhub_status norm_forward(mhub_gpt *m, float *out, float *mean, float *rstd,
                                const float *in, int w, int b, int64_t n)
{
    const mhub_backend_ops *op = m->be->ops;
    int64_t h = m->cfg.hidden_size;
    float eps = (float)m->cfg.layernorm_epsilon;
    const float *wv, *bv;
    MHUB_TRY(param_view(m, w, SLOT_MAIN, &wv));
    MHUB_TRY(param_view(m, b, SLOT_BIAS, &bv));
    if (is_layernorm(m))
        return op->layernorm_forward(m->be, out, mean, rstd, in, wv, bv, n, h, eps);
    return op->rmsnorm_forward(m->be, out, rstd, in, wv, n, h, eps);
}

static mhub_status norm_backward(mhub_gpt *m, float *din, const float *dout, const float *in,
                                 const float *mean, const float *rstd, int w, int b, int64_t n)
{
    const mhub_backend_ops *op = m->be->ops;
    int64_t h = m->cfg.hidden_size;
    const float *wv;
    float *dw, *db;
    MHUB_TRY(param_view(m, w, SLOT_MAIN, &wv));
    MHUB_TRY(grad_begin(m, w, SLOT_MAIN, &dw));
    MHUB_TRY(grad_begin(m, b, SLOT_BIAS, &db)); /* NULL without a bias */
    if (is_layernorm(m))
        MHUB_TRY(op->layernorm_backward(m->be, din, dw, db, dout, in, wv, mean, rstd, n, h));
    else
        MHUB_TRY(op->rmsnorm_backward(m->be, din, dw, dout, in, wv, rstd, n, h));
    MHUB_TRY(grad_end(m, w, SLOT_MAIN));
    return grad_end(m, b, SLOT_BIAS);
}

/* The sizes a layer's kernels take (notation at the top). */
typedef struct layer_sizes {
    int64_t n, h, q, aw, heads, groups, d, f, f1;
} layer_sizes;

static layer_sizes sizes_of(const mhub_gpt *m, int64_t b, int64_t t)
{
    return (layer_sizes){.n = b * t, .h = m->cfg.hidden_size, .q = m->dims.qkv_rows,
                         .aw = m->dims.attn_width, .heads = m->cfg.num_attention_heads,
                         .groups = mhub_gpt_query_groups(&m->cfg),
                         .d = mhub_gpt_head_dim(&m->cfg), .f = m->dims.ffn,
                         .f1 = m->dims.fc1_rows};
}

/* ---- one layer ------------------------------------------------------------------- */

static mhub_status layer_forward(mhub_gpt *m, int l, float *x_out, int64_t b, int64_t t)
{
    gpt_compute *c = m->compute;
    const layer_params *p = &c->lp[l];
    layer_acts *a = &c->la[l];
    const mhub_backend_ops *op = m->be->ops;
    const layer_sizes z = sizes_of(m, b, t);
    int64_t n = z.n, h = z.h, q = z.q, aw = z.aw, heads = z.heads, groups = z.groups, d = z.d;
    int64_t f = z.f, f1 = z.f1;
    /* attention block */
    MHUB_TRY(norm_forward(m, a->ln1, a->ln1_mean, a->ln1_rstd, a->in, p->ln1_w, p->ln1_b, n));
    MHUB_TRY(linear_forward(m, a->qkv, a->ln1, p->qkv_w, p->qkv_b, n, h, q, false));
    if (is_rope(m))
        MHUB_TRY(op->rope_forward(m->be, a->qkv, b, t, heads, groups, d,
                                  (float)m->cfg.rotary_base));
    if (c->flash)
        MHUB_TRY(op->flash_attention_forward(m->be, a->attn, a->lse, a->qkv, b, t, heads, groups,
                                             d));
    else
        MHUB_TRY(op->causal_attention_forward(m->be, a->attn, a->probs, a->qkv, b, t, heads,
                                              groups, d));
    MHUB_TRY(op->copy(m->be, a->mid, a->in, (size_t)(n * h) * sizeof(float),
                      MHUB_COPY_DEVICE_TO_DEVICE));
    MHUB_TRY(linear_forward(m, a->mid, a->attn, p->proj_w, p->proj_b, n, aw, h, true));
    /* MLP block */
    MHUB_TRY(norm_forward(m, a->ln2, a->ln2_mean, a->ln2_rstd, a->mid, p->ln2_w, p->ln2_b, n));
    MHUB_TRY(linear_forward(m, a->fc1, a->ln2, p->fc1_w, p->fc1_b, n, h, f1, false));
    if (is_swiglu(m))
        MHUB_TRY(op->swiglu_forward(m->be, a->act, a->fc1, n, f));
    else
        MHUB_TRY(op->gelu_forward(m->be, a->act, a->fc1, n * f));
    MHUB_TRY(op->copy(m->be, x_out, a->mid, (size_t)(n * h) * sizeof(float),
                      MHUB_COPY_DEVICE_TO_DEVICE));
    return linear_forward(m, x_out, a->act, p->fc2_w, p->fc2_b, n, f, h, true);
}

/* c->dres holds d loss / d(layer output) on entry and d loss / d(layer
 * input) on return. */
static mhub_status layer_backward(mhub_gpt *m, int l, int64_t b, int64_t t)
{
    gpt_compute *c = m->compute;
    const layer_params *p = &c->lp[l];
    layer_acts *a = &c->la[l];
    const mhub_backend_ops *op = m->be->ops;
    const layer_sizes z = sizes_of(m, b, t);
    int64_t n = z.n, h = z.h, q = z.q, aw = z.aw, heads = z.heads, groups = z.groups, d = z.d;
    int64_t f = z.f, f1 = z.f1;
    /* MLP block: x_out = mid + fc2(act(fc1(norm2(mid)))) */
    MHUB_TRY(linear_backward(m, c->dact, c->dres, a->act, p->fc2_w, p->fc2_b, n, f, h));
    if (is_swiglu(m))
        MHUB_TRY(op->swiglu_backward(m->be, c->dfc1, c->dact, a->fc1, n, f));
    else
        MHUB_TRY(op->gelu_backward(m->be, c->dfc1, a->fc1, c->dact, n * f));
    MHUB_TRY(linear_backward(m, c->dtmp, c->dfc1, a->ln2, p->fc1_w, p->fc1_b, n, h, f1));
    MHUB_TRY(norm_backward(m, c->dnorm, c->dtmp, a->mid, a->ln2_mean, a->ln2_rstd, p->ln2_w,
                           p->ln2_b, n));
    MHUB_TRY(op->axpy(m->be, c->dres, c->dnorm, n * h, 1.0f));
    /* attention block: mid = in + proj(attention(qkv(norm1(in)))) */
    MHUB_TRY(linear_backward(m, c->dattn, c->dres, a->attn, p->proj_w, p->proj_b, n, aw, h));
    if (c->flash)
        MHUB_TRY(op->flash_attention_backward(m->be, c->dqkv, c->dattn, a->attn, a->qkv, a->lse,
                                              b, t, heads, groups, d));
    else
        MHUB_TRY(op->causal_attention_backward(m->be, c->dqkv, c->att_scratch, c->dattn,
                                               a->qkv, a->probs, b, t, heads, groups, d));
    if (is_rope(m))
        MHUB_TRY(op->rope_backward(m->be, c->dqkv, b, t, heads, groups, d,
                                   (float)m->cfg.rotary_base));
    MHUB_TRY(linear_backward(m, c->dtmp, c->dqkv, a->ln1, p->qkv_w, p->qkv_b, n, h, q));
    MHUB_TRY(norm_backward(m, c->dnorm, c->dtmp, a->in, a->ln1_mean, a->ln1_rstd, p->ln1_w,
                           p->ln1_b, n));
    return op->axpy(m->be, c->dres, c->dnorm, n * h, 1.0f);
}

/* A layer's gradients are final: report them, last parameter first (the
 * order the engines lay buckets out in). */
static mhub_status announce_layer(gpt_compute *c, int l)
{
    const layer_params *p = &c->lp[l];
    const int order[] = {p->fc2_b, p->fc2_w, p->fc1_b,  p->fc1_w,  p->ln2_b, p->ln2_w,
                         p->proj_b, p->proj_w, p->qkv_b, p->qkv_w, p->ln1_b, p->ln1_w};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        MHUB_TRY(announce(c, order[i]));
    return MHUB_OK;
}

/* ---- the model ---------------------------------------------------------------------- */

static mhub_status check_batch(const mhub_gpt *m, const int32_t *tokens, const int32_t *targets,
                               int64_t b, int64_t t)
{
    if (!tokens || !targets)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "tokens or targets is NULL");
    if (!mhub_gpt_runnable(m) || !m->compute)
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "this GPT chunk cannot run: forward and backward need the whole model "
                          "(one pipeline stage, tensor_model_parallel_size 1) with f32, bf16 "
                          "or f16 parameters on a backend");
    const gpt_compute *c = m->compute;
    if (b < 1 || b > c->max_batch)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "batch = %lld must be in [1, %lld] (micro_batch)",
                          (long long)b, (long long)c->max_batch);
    if (t < 1 || t > c->seq_cap)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "seq = %lld must be in [1, %lld] (seq_length)",
                          (long long)t, (long long)c->seq_cap);
    return MHUB_OK;
}

/* positions[b T + t] = t, refilled only when T changes. */
static mhub_status fill_positions(mhub_gpt *m, int64_t b, int64_t t)
{
    gpt_compute *c = m->compute;
    if (c->positions_seq == t)
        return MHUB_OK;
    for (int64_t r = 0; r < c->max_rows; r++)
        c->host_positions[r] = (int32_t)(r % t);
    (void)b;
    MHUB_TRY(m->be->ops->copy(m->be, c->positions, c->host_positions,
                              (size_t)c->max_rows * sizeof(int32_t), MHUB_COPY_HOST_TO_DEVICE));
    c->positions_seq = t;
    return MHUB_OK;
}

static mhub_status embed_forward(mhub_gpt *m, const int32_t *tokens, int64_t n)
{
    gpt_compute *c = m->compute;
    const mhub_backend_ops *op = m->be->ops;
    int64_t h = m->cfg.hidden_size;
    const float *table;
    /* a 16-bit table is widened whole: simple, and one pass over V H */
    MHUB_TRY(param_view(m, c->wte, SLOT_MAIN, &table));
    MHUB_TRY(op->embedding_forward(m->be, c->la[0].in, table, tokens, n, m->dims.vocab, h,
                                   false));
    if (c->wpe < 0)
        return MHUB_OK;
    MHUB_TRY(param_view(m, c->wpe, SLOT_MAIN, &table));
    return op->embedding_forward(m->be, c->la[0].in, table, c->positions, n, m->cfg.seq_length,
                                 h, true);
}

static mhub_status head_forward(mhub_gpt *m, const int32_t *targets, int64_t n)
{
    gpt_compute *c = m->compute;
    int64_t h = m->cfg.hidden_size, v = m->dims.vocab;
    MHUB_TRY(norm_forward(m, c->lnf, c->lnf_mean, c->lnf_rstd, c->out, c->lnf_w, c->lnf_b, n));
    MHUB_TRY(linear_forward(m, c->logits, c->lnf, c->out_w, -1, n, h, v, false));
    return m->be->ops->softmax_xent_forward(m->be, c->probs, c->losses, c->logits, targets, n, v);
}

static mhub_status mean_loss_of(mhub_gpt *m, int64_t n, float *out)
{
    gpt_compute *c = m->compute;
    MHUB_TRY(m->be->ops->copy(m->be, c->host_losses, c->losses, (size_t)n * sizeof(float),
                              MHUB_COPY_DEVICE_TO_HOST));
    double sum = 0;
    for (int64_t i = 0; i < n; i++)
        sum += c->host_losses[i];
    *out = (float)(sum / (double)n);
    return MHUB_OK;
}

mhub_status mhub_gpt_forward(mhub_gpt *m, const int32_t *tokens, const int32_t *targets,
                             int64_t batch, int64_t seq, float *mean_loss)
{
    if (!m)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "model is NULL");
    MHUB_TRY(check_batch(m, tokens, targets, batch, seq));
    gpt_compute *c = m->compute;
    int64_t n = batch * seq;
    int L = m->num_layers;
    c->have_forward = false;
    MHUB_TRY(fill_positions(m, batch, seq));
    MHUB_TRY(hook(c, c->hooks.pre_forward, 0));
    MHUB_TRY(embed_forward(m, tokens, n));
    MHUB_TRY(hook(c, c->hooks.post_forward, 0));
    for (int l = 0; l < L; l++) {
        float *x_out = l + 1 < L ? c->la[l + 1].in : c->out;
        MHUB_TRY(hook(c, c->hooks.pre_forward, l + 1));
        MHUB_TRY(layer_forward(m, l, x_out, batch, seq));
        MHUB_TRY(hook(c, c->hooks.post_forward, l + 1));
    }
    /* a tied head reads unit 0's table here: the table's tied_unit (set
     * in gpt.c) tells a sharding engine to keep unit 0 usable until the
     * head is done with it, in forward and in backward */
    MHUB_TRY(hook(c, c->hooks.pre_forward, L + 1));
    MHUB_TRY(head_forward(m, targets, n));
    MHUB_TRY(hook(c, c->hooks.post_forward, L + 1));
    c->tokens = tokens;
    c->targets = targets;
    c->batch = batch;
    c->seq = seq;
    c->have_forward = true;
    return mean_loss ? mean_loss_of(m, n, mean_loss) : MHUB_OK;
}

/* dres = d loss / d(last layer's output); the head's gradients. */
static mhub_status head_backward(mhub_gpt *m, int64_t n, float loss_weight)
{
    gpt_compute *c = m->compute;
    int64_t h = m->cfg.hidden_size, v = m->dims.vocab;
    /* probs turns into dlogits in place */
    MHUB_TRY(m->be->ops->softmax_xent_backward(m->be, c->probs, c->probs, c->targets, n, v,
                                               loss_weight));
    MHUB_TRY(linear_backward(m, c->dtmp, c->probs, c->lnf, c->out_w, -1, n, h, v));
    return norm_backward(m, c->dres, c->dtmp, c->out, c->lnf_mean, c->lnf_rstd, c->lnf_w,
                         c->lnf_b, n);
}

static mhub_status embed_backward(mhub_gpt *m, int64_t n)
{
    gpt_compute *c = m->compute;
    const mhub_backend_ops *op = m->be->ops;
    int64_t h = m->cfg.hidden_size;
    float *dtable;
    MHUB_TRY(grad_begin(m, c->wte, SLOT_MAIN, &dtable));
    MHUB_TRY(op->embedding_backward(m->be, dtable, c->dres, c->tokens, n, m->dims.vocab, h));
    MHUB_TRY(grad_end(m, c->wte, SLOT_MAIN));
    if (c->wpe < 0)
        return MHUB_OK;
    MHUB_TRY(grad_begin(m, c->wpe, SLOT_MAIN, &dtable));
    MHUB_TRY(op->embedding_backward(m->be, dtable, c->dres, c->positions, n, m->cfg.seq_length,
                                    h));
    return grad_end(m, c->wpe, SLOT_MAIN);
}

mhub_status mhub_gpt_backward(mhub_gpt *m, float loss_weight)
{
    if (!m)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "model is NULL");
    gpt_compute *c = m->compute;
    if (!c || !c->have_forward)
        return MHUB_ERROR(MHUB_ERR_STATE, "backward needs a forward first");
    int64_t n = c->batch * c->seq;
    int L = m->num_layers;
    c->tied_writes = 0; /* a failed backward may have left one pending */
    MHUB_TRY(hook(c, c->hooks.pre_backward, L + 1));
    MHUB_TRY(head_backward(m, n, loss_weight));
    /* a tied output layer is the embedding: final only after the lookup's
     * gradient is added, below */
    if (c->out_w != c->wte)
        MHUB_TRY(announce(c, c->out_w));
    MHUB_TRY(announce(c, c->lnf_b));
    MHUB_TRY(announce(c, c->lnf_w));
    MHUB_TRY(hook(c, c->hooks.post_backward, L + 1));
    for (int l = L - 1; l >= 0; l--) {
        MHUB_TRY(hook(c, c->hooks.pre_backward, l + 1));
        MHUB_TRY(layer_backward(m, l, c->batch, c->seq));
        MHUB_TRY(announce_layer(c, l));
        MHUB_TRY(hook(c, c->hooks.post_backward, l + 1));
    }
    MHUB_TRY(hook(c, c->hooks.pre_backward, 0));
    MHUB_TRY(embed_backward(m, n));
    MHUB_TRY(announce(c, c->wpe));
    MHUB_TRY(announce(c, c->wte));
    return hook(c, c->hooks.post_backward, 0);
}

double mhub_gpt_flops_per_step(const mhub_gpt_config *cfg, int64_t batch, int64_t seq)
{
    if (!cfg)
        return 0;
    double h = cfg->hidden_size, a = cfg->num_attention_heads, d = mhub_gpt_head_dim(cfg);
    double g = mhub_gpt_query_groups(cfg), f = mhub_gpt_ffn_size(cfg);
    double f1 = cfg->activation == MHUB_GPT_SWIGLU ? 2 * f : f;
    double v = (double)mhub_gpt_padded_vocab_size(cfg);
    double per_layer = h * (a + 2 * g) * d + a * d * h + f1 * h + h * f;
    double matmul_params = cfg->num_layers * per_layer + v * h;
    double tokens = (double)batch * (double)seq;
    return 6.0 * matmul_params * tokens + 12.0 * cfg->num_layers * (double)seq * a * d * tokens;
}
