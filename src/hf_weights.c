/* hf_weights.c - Hugging Face GPT-2 and Llama weights <-> a GPT chunk.
 *
 * One table of "specs" describes the whole model: each pairs a Hugging
 * Face tensor with (a part of) one mhub parameter, and says how the
 * layouts differ. Loading and saving walk the same table, one scattering
 * rows into the parameter and the other gathering them back, so the two
 * directions cannot disagree and save -> load -> save is byte-identical.
 *
 * Layout differences:
 *   - GPT-2's Conv1D weights are stored [in, out], the transpose of
 *     mhub's (and nn.Linear's) [out, in];
 *   - Hugging Face keeps q, k, v apart (Llama) or concatenated q | k | v
 *     (GPT-2's c_attn); mhub's linear_qkv groups its rows per query
 *     group: the group's a/g query heads, then its key head, then its
 *     value head (gpt.h);
 *   - Llama's gate_proj and up_proj are linear_fc1's two halves.
 * Rotary embeddings need no row permutation: Hugging Face's Llama rotates
 * halves (rotate_half), and so does mhub's rope kernel. (Meta's original
 * checkpoints rotate interleaved pairs; Hugging Face's conversion script
 * permutes their q/k rows into the rotate_half order, which is the order
 * a Hugging Face checkpoint holds and mhub wants.)
 *
 * Files may also hold tensors that are not weights: GPT-2's causal-mask
 * buffers (attn.bias, attn.masked_bias), old Llama files' rotary
 * inv_freq, and lm_head.weight beside a tied embedding. Those are
 * skipped; any other tensor that maps to no parameter is an error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "mhub/backend.h"
#include "mhub/gpt.h"
#include "mhub/safetensors.h"
#include "src/fileio.h"

#define HF_WEIGHTS_FILE "model.safetensors"
#define HF_INDEX_FILE "model.safetensors.index.json"
/* An index lists one line per tensor: a few MiB even for huge models. */
#define HF_INDEX_MAX_BYTES (64 << 20)

/* Which rows of the parameter a Hugging Face tensor holds. */
typedef enum spec_part {
    PART_WHOLE,    /* all of it */
    PART_QKV,      /* all of linear_qkv, as q | k | v (GPT-2's c_attn) */
    PART_Q,        /* linear_qkv's query heads */
    PART_K,        /* its key heads */
    PART_V,        /* its value heads */
    PART_FC1_GATE, /* linear_fc1's first F rows (swiglu) */
    PART_FC1_UP    /* its last F rows */
} spec_part;

typedef struct hf_spec {
    char hf[MHUB_NAME_MAX + 32];
    char mhub[MHUB_NAME_MAX];
    spec_part part;
    bool transposed; /* stored [in, out] (Conv1D) */
} hf_spec;

typedef struct spec_list {
    hf_spec *items;
    int count, cap;
} spec_list;

/* The model's sizes the row maps need. */
typedef struct qkv_shape {
    int64_t heads, groups, dim, ffn;
} qkv_shape;

static mhub_status spec_add(spec_list *l, const char *hf_prefix, const char *hf,
                            const char *mhub_prefix, const char *mhub, spec_part part,
                            bool transposed)
{
    if (l->count == l->cap) {
        int cap = l->cap ? 2 * l->cap : 64;
        hf_spec *n = realloc(l->items, (size_t)cap * sizeof *n);
        if (!n)
            return mhub_error(MHUB_ERR_NO_MEMORY, "Hugging Face tensor table");
        l->items = n;
        l->cap = cap;
    }
    hf_spec *s = &l->items[l->count++];
    snprintf(s->hf, sizeof s->hf, "%s%s", hf_prefix, hf);
    snprintf(s->mhub, sizeof s->mhub, "%s%s", mhub_prefix, mhub);
    s->part = part;
    s->transposed = transposed;
    return MHUB_OK;
}

/* The Hugging Face family of a config, by its architecture. */
static mhub_status family_of(const mhub_gpt_config *c, bool *gpt2)
{
    bool ln = c->normalization == MHUB_GPT_LAYERNORM, gelu = c->activation == MHUB_GPT_GELU;
    bool learned = c->position_embedding_type == MHUB_GPT_LEARNED_ABSOLUTE;
    if (ln && gelu && learned && c->add_bias_linear) {
        *gpt2 = true;
        return MHUB_OK;
    }
    if (!ln && !gelu && !learned) {
        *gpt2 = false;
        return MHUB_OK;
    }
    return mhub_error(MHUB_ERR_UNSUPPORTED,
                      "this GPT config is neither GPT-2 (LayerNorm, gelu, learned positions, "
                      "biases) nor Llama (RMSNorm, swiglu, rope): Hugging Face has no weight "
                      "layout for it");
}

static mhub_status gpt2_layer_specs(spec_list *l, const char *pre, int i)
{
    char h[48], m[48];
    snprintf(h, sizeof h, "%sh.%d.", pre, i);
    snprintf(m, sizeof m, "decoder.layers.%d.", i);
    MHUB_TRY(spec_add(l, h, "ln_1.weight", m, "self_attention.linear_qkv.layer_norm_weight",
                      PART_WHOLE, false));
    MHUB_TRY(spec_add(l, h, "ln_1.bias", m, "self_attention.linear_qkv.layer_norm_bias",
                      PART_WHOLE, false));
    MHUB_TRY(spec_add(l, h, "attn.c_attn.weight", m, "self_attention.linear_qkv.weight",
                      PART_QKV, true));
    MHUB_TRY(spec_add(l, h, "attn.c_attn.bias", m, "self_attention.linear_qkv.bias", PART_QKV,
                      false));
    MHUB_TRY(spec_add(l, h, "attn.c_proj.weight", m, "self_attention.linear_proj.weight",
                      PART_WHOLE, true));
    MHUB_TRY(spec_add(l, h, "attn.c_proj.bias", m, "self_attention.linear_proj.bias",
                      PART_WHOLE, false));
    MHUB_TRY(spec_add(l, h, "ln_2.weight", m, "mlp.linear_fc1.layer_norm_weight", PART_WHOLE,
                      false));
    MHUB_TRY(spec_add(l, h, "ln_2.bias", m, "mlp.linear_fc1.layer_norm_bias", PART_WHOLE,
                      false));
    MHUB_TRY(spec_add(l, h, "mlp.c_fc.weight", m, "mlp.linear_fc1.weight", PART_WHOLE, true));
    MHUB_TRY(spec_add(l, h, "mlp.c_fc.bias", m, "mlp.linear_fc1.bias", PART_WHOLE, false));
    MHUB_TRY(spec_add(l, h, "mlp.c_proj.weight", m, "mlp.linear_fc2.weight", PART_WHOLE, true));
    return spec_add(l, h, "mlp.c_proj.bias", m, "mlp.linear_fc2.bias", PART_WHOLE, false);
}

/* GPT-2's names; `pre` is "transformer." (save_pretrained's files) or ""
 * (the original gpt2 upload). */
static mhub_status gpt2_specs(const mhub_gpt_config *c, const char *pre, spec_list *l)
{
    MHUB_TRY(spec_add(l, pre, "wte.weight", "", "embedding.word_embeddings.weight", PART_WHOLE,
                      false));
    MHUB_TRY(spec_add(l, pre, "wpe.weight", "", "embedding.position_embeddings.weight",
                      PART_WHOLE, false));
    for (int i = 0; i < c->num_layers; i++)
        MHUB_TRY(gpt2_layer_specs(l, pre, i));
    MHUB_TRY(spec_add(l, pre, "ln_f.weight", "", "decoder.final_layernorm.weight", PART_WHOLE,
                      false));
    MHUB_TRY(spec_add(l, pre, "ln_f.bias", "", "decoder.final_layernorm.bias", PART_WHOLE,
                      false));
    if (!c->share_embeddings_and_output_weights)
        return spec_add(l, "", "lm_head.weight", "", "output_layer.weight", PART_WHOLE, false);
    return MHUB_OK;
}

static mhub_status llama_layer_specs(const mhub_gpt_config *c, spec_list *l, int i)
{
    char h[48], m[48];
    snprintf(h, sizeof h, "model.layers.%d.", i);
    snprintf(m, sizeof m, "decoder.layers.%d.", i);
    static const struct { const char *hf; spec_part part; } qkv[] = {
        {"self_attn.q_proj.", PART_Q}, {"self_attn.k_proj.", PART_K}, {"self_attn.v_proj.", PART_V}};
    bool bias = c->add_bias_linear, qkv_bias = bias || c->add_qkv_bias;
    char n[64];
    MHUB_TRY(spec_add(l, h, "input_layernorm.weight", m,
                      "self_attention.linear_qkv.layer_norm_weight", PART_WHOLE, false));
    for (int k = 0; k < 3; k++) {
        snprintf(n, sizeof n, "%sweight", qkv[k].hf);
        MHUB_TRY(spec_add(l, h, n, m, "self_attention.linear_qkv.weight", qkv[k].part, false));
        snprintf(n, sizeof n, "%sbias", qkv[k].hf);
        if (qkv_bias)
            MHUB_TRY(spec_add(l, h, n, m, "self_attention.linear_qkv.bias", qkv[k].part, false));
    }
    MHUB_TRY(spec_add(l, h, "self_attn.o_proj.weight", m, "self_attention.linear_proj.weight",
                      PART_WHOLE, false));
    MHUB_TRY(spec_add(l, h, "post_attention_layernorm.weight", m,
                      "mlp.linear_fc1.layer_norm_weight", PART_WHOLE, false));
    MHUB_TRY(spec_add(l, h, "mlp.gate_proj.weight", m, "mlp.linear_fc1.weight", PART_FC1_GATE,
                      false));
    MHUB_TRY(spec_add(l, h, "mlp.up_proj.weight", m, "mlp.linear_fc1.weight", PART_FC1_UP,
                      false));
    MHUB_TRY(spec_add(l, h, "mlp.down_proj.weight", m, "mlp.linear_fc2.weight", PART_WHOLE,
                      false));
    if (!bias)
        return MHUB_OK;
    MHUB_TRY(spec_add(l, h, "self_attn.o_proj.bias", m, "self_attention.linear_proj.bias",
                      PART_WHOLE, false));
    MHUB_TRY(spec_add(l, h, "mlp.gate_proj.bias", m, "mlp.linear_fc1.bias", PART_FC1_GATE,
                      false));
    MHUB_TRY(spec_add(l, h, "mlp.up_proj.bias", m, "mlp.linear_fc1.bias", PART_FC1_UP, false));
    return spec_add(l, h, "mlp.down_proj.bias", m, "mlp.linear_fc2.bias", PART_WHOLE, false);
}

static mhub_status llama_specs(const mhub_gpt_config *c, spec_list *l)
{
    MHUB_TRY(spec_add(l, "", "model.embed_tokens.weight", "", "embedding.word_embeddings.weight",
                      PART_WHOLE, false));
    for (int i = 0; i < c->num_layers; i++)
        MHUB_TRY(llama_layer_specs(c, l, i));
    MHUB_TRY(spec_add(l, "", "model.norm.weight", "", "decoder.final_layernorm.weight",
                      PART_WHOLE, false));
    if (!c->share_embeddings_and_output_weights)
        return spec_add(l, "", "lm_head.weight", "", "output_layer.weight", PART_WHOLE, false);
    return MHUB_OK;
}

/* The whole model's table. A tied model cut into pipeline stages gives
 * its last stage an output_layer.weight of its own (gpt.h): it starts as
 * a copy of the embedding, which is what a tied checkpoint holds. */
static mhub_status build_specs(const mhub_gpt_config *c, const char *gpt2_prefix,
                               spec_list *l)
{
    bool gpt2 = false;
    MHUB_TRY(family_of(c, &gpt2));
    MHUB_TRY(gpt2 ? gpt2_specs(c, gpt2_prefix, l) : llama_specs(c, l));
    if (!c->share_embeddings_and_output_weights)
        return MHUB_OK;
    char embedding[sizeof l->items[0].hf]; /* spec_add may move the table */
    memcpy(embedding, l->items[0].hf, sizeof embedding);
    return spec_add(l, "", embedding, "", "output_layer.weight", PART_WHOLE, false);
}

/* ---- row maps -------------------------------------------------------------- */

/* Rows of the parameter the part covers. */
static int64_t part_rows(const qkv_shape *q, spec_part part, int64_t param_rows)
{
    switch (part) {
    case PART_Q:
        return q->heads * q->dim;
    case PART_K:
    case PART_V:
        return q->groups * q->dim;
    case PART_FC1_GATE:
    case PART_FC1_UP:
        return q->ffn;
    default:
        return param_rows;
    }
}

/* linear_qkv's row of query head `h` (or key/value head of group `h`),
 * row `r` within the head, in mhub's grouped order. */
static int64_t grouped_row(const qkv_shape *q, spec_part kind, int64_t h, int64_t r)
{
    int64_t per = q->heads / q->groups, group = kind == PART_Q ? h / per : h;
    int64_t slot = kind == PART_Q ? h % per : kind == PART_K ? per : per + 1;
    return (group * (per + 2) + slot) * q->dim + r;
}

/* The parameter row that row `r` of the part's Hugging Face tensor is. */
static int64_t param_row(const qkv_shape *q, spec_part part, int64_t r)
{
    int64_t ad = q->heads * q->dim, gd = q->groups * q->dim;
    switch (part) {
    case PART_QKV:
        if (r < ad)
            return grouped_row(q, PART_Q, r / q->dim, r % q->dim);
        r -= ad;
        return grouped_row(q, r < gd ? PART_K : PART_V, (r % gd) / q->dim, r % q->dim);
    case PART_Q:
    case PART_K:
    case PART_V:
        return grouped_row(q, part, r / q->dim, r % q->dim);
    case PART_FC1_UP:
        return q->ffn + r;
    default:
        return r;
    }
}

/* The Hugging Face tensor's shape for a spec over parameter `p`. */
static int hf_shape(const qkv_shape *q, const hf_spec *s, const mhub_param *p, int64_t *shape)
{
    int64_t rows = part_rows(q, s->part, p->value.shape[0]);
    if (p->value.ndim == 1) {
        shape[0] = rows;
        return 1;
    }
    int64_t cols = p->value.shape[1];
    shape[0] = s->transposed ? cols : rows;
    shape[1] = s->transposed ? rows : cols;
    return 2;
}

/* Move rows between the Hugging Face tensor `hf` and the parameter's
 * host copy `param` (row width `cols`): to_param scatters, else gathers. */
static void move_rows(const qkv_shape *q, const hf_spec *s, int64_t rows, int64_t cols,
                      float *hf, float *param, bool to_param)
{
    for (int64_t r = 0; r < rows; r++) {
        float *pr = param + param_row(q, s->part, r) * cols;
        for (int64_t c = 0; c < cols; c++) {
            /* transposed: the hf tensor is [cols, rows] */
            float *h = s->transposed ? &hf[c * rows + r] : &hf[r * cols + c];
            if (to_param)
                pr[c] = *h;
            else
                *h = pr[c];
        }
    }
}

/* ---- the files ------------------------------------------------------------- */

typedef struct hf_files {
    mhub_safetensors **st;
    int count;
} hf_files;

static void files_close(hf_files *f)
{
    for (int i = 0; i < f->count; i++)
        mhub_safetensors_close(f->st[i]);
    free(f->st);
    f->st = NULL;
    f->count = 0;
}

static mhub_status files_open_one(hf_files *f, const char *path)
{
    mhub_safetensors **n = realloc(f->st, (size_t)(f->count + 1) * sizeof *n);
    if (!n)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: file list", path);
    f->st = n;
    MHUB_TRY(mhub_safetensors_open(path, &f->st[f->count]));
    f->count++;
    return MHUB_OK;
}

static bool files_has(const hf_files *f, const char *path)
{
    for (int i = 0; i < f->count; i++)
        if (strcmp(mhub_safetensors_path(f->st[i]), path) == 0)
            return true;
    return false;
}

/* One weight_map entry: open its shard (once) and check the tensor is
 * there, so a stale index is caught by name. */
static mhub_status index_entry(hf_files *f, const char *index, const char *dir,
                               const cJSON *e)
{
    if (!cJSON_IsString(e) || strchr(e->valuestring, '/') || !e->valuestring[0])
        return mhub_error(MHUB_ERR_PARSE, "%s: weight_map[\"%s\"] must name a file in the "
                          "directory", index, e->string);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->valuestring);
    if (!files_has(f, path))
        MHUB_TRY(files_open_one(f, path));
    for (int i = 0; i < f->count; i++)
        if (strcmp(mhub_safetensors_path(f->st[i]), path) == 0 &&
            mhub_safetensors_find(f->st[i], e->string) < 0)
            return mhub_error(MHUB_ERR_PARSE, "%s: weight_map puts tensor \"%s\" in %s, "
                              "which does not hold it", index, e->string, path);
    return MHUB_OK;
}

static mhub_status open_index(hf_files *f, const char *index, const char *dir)
{
    char *text = NULL;
    size_t len = 0;
    MHUB_TRY(mhub_file_read_all(index, HF_INDEX_MAX_BYTES, "a safetensors index", &text, &len));
    cJSON *root = len ? cJSON_ParseWithLength(text, len) : NULL;
    free(text);
    if (!root)
        return mhub_error(MHUB_ERR_PARSE, "%s: not valid JSON", index);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    mhub_status s = MHUB_OK;
    if (!cJSON_IsObject(map))
        s = mhub_error(MHUB_ERR_PARSE, "%s: key \"weight_map\" must be an object of tensor "
                       "name -> file", index);
    for (const cJSON *e = map ? map->child : NULL; s == MHUB_OK && e; e = e->next)
        s = index_entry(f, index, dir, e);
    cJSON_Delete(root);
    return s;
}

/* <dir>/model.safetensors, or the shards <dir>/model.safetensors.index.json
 * names. */
static mhub_status files_open(hf_files *f, const char *dir)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, HF_WEIGHTS_FILE);
    if (stat(path, &st) == 0)
        return files_open_one(f, path);
    snprintf(path, sizeof path, "%s/%s", dir, HF_INDEX_FILE);
    if (stat(path, &st) == 0)
        return open_index(f, path, dir);
    return mhub_error(MHUB_ERR_IO, "%s: holds neither %s nor %s", dir, HF_WEIGHTS_FILE,
                      HF_INDEX_FILE);
}

/* The file holding tensor `name`, or NULL. */
static const mhub_safetensors *files_find(const hf_files *f, const char *name)
{
    for (int i = 0; i < f->count; i++)
        if (mhub_safetensors_find(f->st[i], name) >= 0)
            return f->st[i];
    return NULL;
}

/* ---- loading ---------------------------------------------------------------- */

/* Buffers and non-weight tensors that checkpoints carry (see the top). */
static bool skippable(const char *name, bool tied)
{
    size_t n = strlen(name);
    static const char *const ends[] = {".attn.bias", ".attn.masked_bias",
                                       ".rotary_emb.inv_freq"};
    for (size_t i = 0; i < sizeof ends / sizeof ends[0]; i++) {
        size_t e = strlen(ends[i]);
        if (n > e && strcmp(name + n - e, ends[i]) == 0)
            return true;
    }
    return tied && strcmp(name, "lm_head.weight") == 0;
}

static bool spec_known(const spec_list *l, const char *name)
{
    for (int i = 0; i < l->count; i++)
        if (strcmp(l->items[i].hf, name) == 0)
            return true;
    return false;
}

/* Every tensor in the files must map to a parameter of the model. */
static mhub_status check_extras(const hf_files *f, const spec_list *l, bool tied)
{
    for (int i = 0; i < f->count; i++) {
        int n = mhub_safetensors_count(f->st[i]);
        for (int k = 0; k < n; k++) {
            mhub_safetensors_tensor t;
            MHUB_TRY(mhub_safetensors_info(f->st[i], k, &t));
            if (!spec_known(l, t.name) && !skippable(t.name, tied))
                return mhub_error(MHUB_ERR_INVALID_ARG, "%s: tensor \"%s\" maps to no "
                                  "parameter of this model", mhub_safetensors_path(f->st[i]),
                                  t.name);
        }
    }
    return MHUB_OK;
}

static qkv_shape shape_of(const mhub_gpt_config *c)
{
    return (qkv_shape){c->num_attention_heads, mhub_gpt_query_groups(c), mhub_gpt_head_dim(c),
                       mhub_gpt_ffn_size(c)};
}

/* The chunk must be one tensor-parallel rank of 1, with f32 storage. */
static mhub_status check_model(const mhub_gpt *model, const char *dir)
{
    const mhub_gpt_config *c = mhub_gpt_config_of(model);
    if (c->base.tensor_model_parallel_size != 1)
        return mhub_error(MHUB_ERR_UNSUPPORTED, "%s: Hugging Face weights are whole matrices; "
                          "tensor_model_parallel_size %d shards are not supported",
                          dir, c->base.tensor_model_parallel_size);
    const mhub_param_list *pl = mhub_gpt_params((mhub_gpt *)model);
    for (int i = 0; i < pl->count; i++) {
        const mhub_param *p = &pl->items[i];
        if (mhub_tensor_is_meta(&p->value) || p->value.dtype != MHUB_F32)
            return mhub_error(MHUB_ERR_UNSUPPORTED, "%s: parameter \"%s\" must have f32 "
                              "storage for Hugging Face weights", dir, p->name);
    }
    return MHUB_OK;
}

/* GPT-2 files come with or without the "transformer." prefix. */
static const char *gpt2_prefix(const hf_files *f)
{
    return files_find(f, "transformer.wte.weight") || !files_find(f, "wte.weight")
               ? "transformer." : "";
}

/* Read one spec's tensor into the parameter's host copy. */
static mhub_status load_spec(const hf_files *f, const qkv_shape *q, const hf_spec *s,
                             const mhub_param *p, float *host, const char *dir)
{
    const mhub_safetensors *st = files_find(f, s->hf);
    if (!st)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: tensor \"%s\" (for parameter \"%s\") is "
                          "missing", f->count == 1 ? mhub_safetensors_path(f->st[0]) : dir,
                          s->hf, p->name);
    int64_t shape[2];
    int ndim = hf_shape(q, s, p, shape);
    int64_t rows = part_rows(q, s->part, p->value.shape[0]);
    int64_t cols = p->value.ndim == 1 ? 1 : p->value.shape[1];
    float *buf = malloc((size_t)(rows * cols) * sizeof *buf);
    if (!buf)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: tensor \"%s\"", dir, s->hf);
    mhub_status rc = mhub_safetensors_read_f32(st, s->hf, shape, ndim, buf);
    if (rc == MHUB_OK)
        move_rows(q, s, rows, cols, buf, host, true);
    free(buf);
    return rc;
}

/* Fill parameter `p` from every spec that targets it. */
static mhub_status load_param(const hf_files *f, const spec_list *l, const qkv_shape *q,
                              mhub_param *p, const char *dir)
{
    float *host = malloc((size_t)p->value.numel * sizeof *host);
    if (!host)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: parameter \"%s\"", dir, p->name);
    mhub_status s = MHUB_OK;
    bool found = false;
    for (int i = 0; s == MHUB_OK && i < l->count; i++)
        if (strcmp(l->items[i].mhub, p->name) == 0) {
            found = true;
            s = load_spec(f, q, &l->items[i], p, host, dir);
        }
    if (s == MHUB_OK && !found)
        s = mhub_error(MHUB_ERR_STATE, "%s: no Hugging Face tensor maps to parameter \"%s\"",
                       dir, p->name);
    mhub_backend *be = p->value.backend;
    if (s == MHUB_OK)
        s = be->ops->copy(be, p->value.data, host, mhub_tensor_nbytes(&p->value),
                          MHUB_COPY_HOST_TO_DEVICE);
    free(host);
    return s;
}

mhub_status mhub_gpt_load_hf_weights(mhub_gpt *model, const char *dir)
{
    if (!model || !dir)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "model or dir is NULL");
    MHUB_TRY(check_model(model, dir));
    const mhub_gpt_config *c = mhub_gpt_config_of(model);
    hf_files f = {0};
    spec_list l = {0};
    mhub_status s = files_open(&f, dir);
    if (s == MHUB_OK)
        s = build_specs(c, gpt2_prefix(&f), &l);
    if (s == MHUB_OK)
        s = check_extras(&f, &l, c->share_embeddings_and_output_weights);
    qkv_shape q = shape_of(c);
    mhub_param_list *pl = mhub_gpt_params(model);
    for (int i = 0; s == MHUB_OK && i < pl->count; i++)
        s = load_param(&f, &l, &q, &pl->items[i], dir);
    free(l.items);
    files_close(&f);
    return s;
}

/* ---- saving ------------------------------------------------------------------ */

/* One Hugging Face tensor being written. */
typedef struct hf_out {
    int64_t shape[2];
    int ndim;
    float *data;
} hf_out;

/* Gather the tensor of spec `s` (and of later specs with the same name:
 * Llama's q, k, v each have their own tensor, GPT-2's c_attn is one). */
static mhub_status gather(const mhub_param_list *pl, const qkv_shape *q, const hf_spec *s,
                          hf_out *o)
{
    int pi = mhub_param_list_find(pl, s->mhub);
    if (pi < 0)
        return mhub_error(MHUB_ERR_STATE, "no parameter \"%s\" for tensor \"%s\"", s->mhub,
                          s->hf);
    const mhub_param *p = &pl->items[pi];
    float *host = malloc((size_t)p->value.numel * sizeof *host);
    int64_t rows = part_rows(q, s->part, p->value.shape[0]);
    int64_t cols = p->value.ndim == 1 ? 1 : p->value.shape[1];
    o->ndim = hf_shape(q, s, p, o->shape);
    o->data = malloc((size_t)(rows * cols) * sizeof *o->data);
    mhub_status st = host && o->data ? MHUB_OK
                                     : mhub_error(MHUB_ERR_NO_MEMORY, "tensor \"%s\"", s->hf);
    mhub_backend *be = p->value.backend;
    if (st == MHUB_OK)
        st = be->ops->copy(be, host, p->value.data, mhub_tensor_nbytes(&p->value),
                           MHUB_COPY_DEVICE_TO_HOST);
    if (st == MHUB_OK)
        move_rows(q, s, rows, cols, o->data, host, false);
    free(host);
    return st;
}

/* Specs that write a tensor: all but the tied output layer's alias of
 * the embedding (Hugging Face stores a tied matrix once). */
static bool writes(const spec_list *l, int i)
{
    for (int k = 0; k < i; k++)
        if (strcmp(l->items[k].hf, l->items[i].hf) == 0)
            return false;
    return true;
}

static mhub_status write_weights(const mhub_gpt *model, const spec_list *l, const char *path)
{
    const mhub_param_list *pl = mhub_gpt_params((mhub_gpt *)model);
    qkv_shape q = shape_of(mhub_gpt_config_of(model));
    hf_out *outs = calloc((size_t)l->count, sizeof *outs);
    mhub_safetensors_entry *e = calloc((size_t)l->count, sizeof *e);
    mhub_status s = outs && e ? MHUB_OK : mhub_error(MHUB_ERR_NO_MEMORY, "%s: tensors", path);
    int n = 0;
    for (int i = 0; s == MHUB_OK && i < l->count; i++) {
        if (!writes(l, i))
            continue;
        s = gather(pl, &q, &l->items[i], &outs[n]);
        e[n] = (mhub_safetensors_entry){.name = l->items[i].hf, .dtype = MHUB_F32,
                                        .ndim = outs[n].ndim, .shape = outs[n].shape,
                                        .data = outs[n].data};
        n++;
    }
    /* the metadata PyTorch's save_file writes, which transformers checks */
    static const char *const meta[] = {"format", "pt", NULL};
    if (s == MHUB_OK)
        s = mhub_safetensors_write(path, e, n, meta);
    for (int i = 0; outs && i < n; i++)
        free(outs[i].data);
    free(outs);
    free(e);
    return s;
}

mhub_status mhub_gpt_save_hf_weights(const mhub_gpt *model, const char *dir)
{
    if (!model || !dir)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "model or dir is NULL");
    MHUB_TRY(check_model(model, dir));
    if (!mhub_gpt_pre_process(model) || !mhub_gpt_post_process(model))
        return mhub_error(MHUB_ERR_UNSUPPORTED, "%s: a Hugging Face checkpoint is the whole "
                          "model; this chunk is one pipeline stage", dir);
    const mhub_gpt_config *c = mhub_gpt_config_of(model);
    spec_list l = {0};
    mhub_status s = build_specs(c, "transformer.", &l);
    if (s == MHUB_OK)
        s = mhub_config_save_hf(&c->base, dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, HF_WEIGHTS_FILE);
    if (s == MHUB_OK)
        s = write_weights(model, &l, path);
    free(l.items);
    return s;
}
