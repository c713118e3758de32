/* hf.c - Hugging Face config.json <-> "gpt" provider configs.
 *
 * Two families map onto the GPT provider:
 *   GPT-2  (model_type "gpt2"): LayerNorm, gelu, learned positions,
 *          biases on every linear layer, tied output layer by default;
 *   Llama  (model_type "llama", also "mistral" without a sliding window):
 *          RMSNorm, swiglu, rope, no biases, untied by default;
 *          "qwen2" is the Llama layout with a bias on q, k and v only
 *          (add_qkv_bias).
 * Each family's keys are listed once, in a table pairing a Hugging Face
 * key with the GPT field it sets; the field's own table entry gives its
 * kind and range, so reading and writing use the same facts. Keys the
 * tables do not name are ignored: Hugging Face configs carry many
 * (dropout, token ids, task parameters) that do not change the
 * architecture. Keys that would change it in a way mhub cannot build
 * (rope_scaling, a sliding window, an unknown activation) are refused
 * rather than silently dropped.
 *
 * initializer_range, when present, selects Megatron's normal init with
 * that std (and is written back only for that init). The common fields
 * that are training settings (parallel sizes, dtype flags, seed) are not
 * in Hugging Face configs: from_hf leaves their defaults.
 *
 * from_hf returns a canonical form: a "derived" size (JSON null in mhub,
 * a missing or null key in Hugging Face's) stays 0, an explicit one is
 * kept as written, and save_hf writes back only what was explicit. So
 * from_hf(save_hf(cfg)) == cfg whenever the fields Hugging Face has no
 * key for hold their defaults: the training settings above,
 * make_vocab_size_divisible_by (mhub pads nothing by default, so
 * vocab_size is the checkpoint's row count), rotary_base for GPT-2, and
 * add_qkv_bias when add_bias_linear already gives q, k, v a bias.
 * torch_dtype is written (the dtype of the weights saved beside it) and
 * not read: mixed precision is a training choice, not the model's.
 *
 * Errors: MHUB_ERR_IO for files that cannot be read or written,
 * MHUB_ERR_PARSE for malformed JSON, a missing key, a wrong type or a
 * value out of range (or sizes that disagree), MHUB_ERR_UNSUPPORTED for
 * a valid Hugging Face config that mhub cannot build, and for a config
 * Hugging Face has no architecture for. Every message names the file
 * and the key. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

#include "mhub/gpt.h"
#include "mhub/provider.h"
#include "src/fileio.h"

#define HF_CONFIG_NAME "config.json"
/* A real config.json is a few KiB; anything near this is not one. */
#define HF_MAX_BYTES (16 << 20)

typedef enum hf_family { HF_GPT2, HF_LLAMA, HF_QWEN2 } hf_family;

/* How a derived (0) value is written: Hugging Face's GPT-2 config
 * writes "n_inner": null; Llama's simply omits the optional keys. */
typedef enum hf_null { HF_NULL_WRITE, HF_NULL_OMIT } hf_null;

typedef struct hf_key {
    const char *hf;     /* the Hugging Face key */
    const char *field;  /* the GPT (or common) field it sets */
    bool required;
    hf_null null_as;
} hf_key;

static const hf_key gpt2_keys[] = {
    {"n_embd", "hidden_size", true, HF_NULL_OMIT},
    {"n_layer", "num_layers", true, HF_NULL_OMIT},
    {"n_head", "num_attention_heads", true, HF_NULL_OMIT},
    {"n_inner", "ffn_hidden_size", false, HF_NULL_WRITE},
    {"vocab_size", "vocab_size", true, HF_NULL_OMIT},
    {"layer_norm_epsilon", "layernorm_epsilon", false, HF_NULL_OMIT},
    {"tie_word_embeddings", "share_embeddings_and_output_weights", false, HF_NULL_OMIT},
};

static const hf_key llama_keys[] = {
    {"hidden_size", "hidden_size", true, HF_NULL_OMIT},
    {"intermediate_size", "ffn_hidden_size", true, HF_NULL_OMIT},
    {"num_hidden_layers", "num_layers", true, HF_NULL_OMIT},
    {"num_attention_heads", "num_attention_heads", true, HF_NULL_OMIT},
    {"num_key_value_heads", "num_query_groups", false, HF_NULL_OMIT},
    {"head_dim", "kv_channels", false, HF_NULL_OMIT},
    {"max_position_embeddings", "seq_length", true, HF_NULL_OMIT},
    {"vocab_size", "vocab_size", true, HF_NULL_OMIT},
    {"rms_norm_eps", "layernorm_epsilon", false, HF_NULL_OMIT},
    {"rope_theta", "rotary_base", false, HF_NULL_OMIT},
    {"tie_word_embeddings", "share_embeddings_and_output_weights", false, HF_NULL_OMIT},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const hf_key *family_keys(hf_family f, int *count)
{
    if (f == HF_GPT2) {
        *count = COUNT(gpt2_keys);
        return gpt2_keys;
    }
    *count = COUNT(llama_keys);
    return llama_keys;
}

/* The table entry of a GPT field or a common field, by name. */
static const mhub_config_field *find_field(const char *name)
{
    const mhub_provider_type *t = mhub_gpt_provider_type();
    for (int i = 0; i < t->num_fields; i++)
        if (strcmp(t->fields[i].key, name) == 0)
            return &t->fields[i];
    int n = 0;
    const mhub_config_field *common = mhub_provider_common_fields(&n);
    for (int i = 0; i < n; i++)
        if (strcmp(common[i].key, name) == 0)
            return &common[i];
    return NULL;
}

/* ---- reading ---------------------------------------------------------------- */

typedef struct hf_reader {
    const char *file;     /* for messages */
    const cJSON *root;
} hf_reader;


/* The key's value, or NULL when it is absent or null (Hugging Face
 * writes null for "use the default"). */
static const cJSON *value_of(const hf_reader *r, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(r->root, key);
    return it && !cJSON_IsNull(it) ? it : NULL;
}

static mhub_status missing(const hf_reader *r, const char *key)
{
    return mhub_error(MHUB_ERR_PARSE, "%s: key \"%s\" is missing (or null) and has no default",
                      r->file, key);
}

static mhub_status wrong_type(const hf_reader *r, const char *key, const char *want,
                              const cJSON *it)
{
    return mhub_error(MHUB_ERR_PARSE, "%s: key \"%s\" must be %s, got %s", r->file, key, want,
                      mhub_json_kind(it));
}

/* An integer in [lo, hi]: exact (no fraction, no 1e400). */
static mhub_status read_int(const hf_reader *r, const char *key, const cJSON *it, double lo,
                            double hi, int *out)
{
    if (!cJSON_IsNumber(it))
        return wrong_type(r, key, "an integer", it);
    double v = cJSON_GetNumberValue(it);
    if (!isfinite(v) || v != floor(v))
        return mhub_error(MHUB_ERR_PARSE, "%s: key \"%s\" must be an integer, got %.17g", r->file,
                          key, v);
    if (v < lo || v > hi)
        return mhub_error(MHUB_ERR_PARSE, "%s: key \"%s\" = %.17g is outside [%.17g, %.17g]",
                          r->file, key, v, lo, hi);
    *out = (int)v;
    return MHUB_OK;
}

static mhub_status read_double(const hf_reader *r, const char *key, const cJSON *it, double lo,
                               double hi, double *out)
{
    if (!cJSON_IsNumber(it))
        return wrong_type(r, key, "a number", it);
    double v = cJSON_GetNumberValue(it);
    if (!isfinite(v) || v < lo || v > hi)
        return mhub_error(MHUB_ERR_PARSE, "%s: key \"%s\" = %.17g is outside [%.17g, %.17g]",
                          r->file, key, v, lo, hi);
    *out = v;
    return MHUB_OK;
}

static mhub_status read_bool(const hf_reader *r, const char *key, const cJSON *it, bool *out)
{
    if (!cJSON_IsBool(it))
        return wrong_type(r, key, "true or false", it);
    *out = cJSON_IsTrue(it);
    return MHUB_OK;
}

/* A string key, or `fallback` when absent or null. */
static mhub_status read_string(const hf_reader *r, const char *key, const char *fallback,
                               const char **out)
{
    const cJSON *it = value_of(r, key);
    if (!it) {
        *out = fallback;
        return MHUB_OK;
    }
    if (!cJSON_IsString(it))
        return wrong_type(r, key, "a string", it);
    *out = cJSON_GetStringValue(it);
    return MHUB_OK;
}

/* An optional boolean key; absent or null keeps *out. */
static mhub_status read_flag(const hf_reader *r, const char *key, bool *out)
{
    const cJSON *it = value_of(r, key);
    return it ? read_bool(r, key, it, out) : MHUB_OK;
}

/* Set the field `k` names from the file; absent keys keep the family's
 * default, or fail when required. A derived field (nullable) takes a
 * null as its derived value (0); a number must be in the field's range. */
static mhub_status read_key(const hf_reader *r, const hf_key *k, mhub_gpt_config *cfg)
{
    const mhub_config_field *f = find_field(k->field);
    if (!f)
        return mhub_error(MHUB_ERR_STATE, "no field \"%s\" for key \"%s\"", k->field, k->hf);
    const cJSON *it = value_of(r, k->hf);
    void *dst = (char *)cfg + f->offset;
    /* family_defaults already holds the default (0 for derived sizes) */
    if (!it)
        return k->required ? missing(r, k->hf) : MHUB_OK;
    switch (f->kind) {
    case MHUB_FIELD_INT:
        return read_int(r, k->hf, it, f->min, f->max, dst);
    case MHUB_FIELD_DOUBLE:
        return read_double(r, k->hf, it, f->min, f->max, dst);
    case MHUB_FIELD_BOOL:
        return read_bool(r, k->hf, it, dst);
    default:
        return mhub_error(MHUB_ERR_STATE, "field \"%s\" has no Hugging Face form", k->field);
    }
}

static mhub_status read_keys(const hf_reader *r, hf_family fam, mhub_gpt_config *cfg)
{
    int n = 0;
    const hf_key *keys = family_keys(fam, &n);
    for (int i = 0; i < n; i++)
        MHUB_TRY(read_key(r, &keys[i], cfg));
    return MHUB_OK;
}

/* Which family the file describes: model_type, or for old files without
 * one, GPT-2's n_embd. */
static mhub_status detect_family(const hf_reader *r, hf_family *out)
{
    const char *type = NULL;
    MHUB_TRY(read_string(r, "model_type", NULL, &type));
    if (!type) {
        if (value_of(r, "n_embd")) {
            *out = HF_GPT2;
            return MHUB_OK;
        }
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: key \"model_type\" is missing and there is no \"n_embd\": "
                          "cannot tell which architecture this is", r->file);
    }
    if (strcmp(type, "gpt2") == 0)
        *out = HF_GPT2;
    else if (strcmp(type, "llama") == 0 || strcmp(type, "mistral") == 0)
        *out = HF_LLAMA;
    else if (strcmp(type, "qwen2") == 0)
        *out = HF_QWEN2;
    else
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: key \"model_type\" = \"%s\": mhub builds \"gpt2\", \"llama\", "
                          "\"mistral\" and \"qwen2\" configs", r->file, type);
    return MHUB_OK;
}

/* The architecture's fixed choices and Hugging Face's defaults for the
 * keys a file may leave out. */
static void family_defaults(hf_family fam, mhub_gpt_config *c)
{
    bool gpt2 = fam == HF_GPT2;
    c->normalization = gpt2 ? MHUB_GPT_LAYERNORM : MHUB_GPT_RMSNORM;
    c->activation = gpt2 ? MHUB_GPT_GELU : MHUB_GPT_SWIGLU;
    c->position_embedding_type = gpt2 ? MHUB_GPT_LEARNED_ABSOLUTE : MHUB_GPT_ROPE;
    c->layernorm_epsilon = gpt2 ? 1e-5 : 1e-6;
    c->rotary_base = 10000.0;
    c->share_embeddings_and_output_weights = gpt2;
    c->add_bias_linear = gpt2;
    c->add_qkv_bias = fam == HF_QWEN2;
    c->ffn_hidden_size = 0;
    c->num_query_groups = 0;
    c->kv_channels = 0;
    c->make_vocab_size_divisible_by = 1;
}

static mhub_status read_gpt2_extras(const hf_reader *r, mhub_gpt_config *c)
{
    /* n_ctx is the older name of n_positions */
    const char *key = value_of(r, "n_positions") ? "n_positions" : "n_ctx";
    const cJSON *it = value_of(r, key);
    if (!it)
        return mhub_error(MHUB_ERR_PARSE, "%s: key \"n_positions\" (or the older \"n_ctx\") is "
                          "missing", r->file);
    const mhub_config_field *f = find_field("seq_length");
    MHUB_TRY(read_int(r, key, it, f->min, f->max, &c->seq_length));
    const char *act = NULL;
    MHUB_TRY(read_string(r, "activation_function", "gelu_new", &act));
    /* mhub's gelu is the tanh form, exactly gelu_new/gelu_pytorch_tanh;
     * the erf form ("gelu") differs from it by under 1e-3. */
    if (strcmp(act, "gelu_new") != 0 && strcmp(act, "gelu_pytorch_tanh") != 0 &&
        strcmp(act, "gelu") != 0)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: key \"activation_function\" = \"%s\": mhub's GPT-2 MLP uses gelu "
                          "(\"gelu_new\", \"gelu_pytorch_tanh\" or \"gelu\")", r->file, act);
    /* Attention variants GPT-2's code offers that mhub does not build. */
    bool scale = true, by_layer = false;
    MHUB_TRY(read_flag(r, "scale_attn_weights", &scale));
    MHUB_TRY(read_flag(r, "scale_attn_by_inverse_layer_idx", &by_layer));
    if (!scale || by_layer)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: key \"%s\" = %s: mhub scales attention by 1/sqrt(head dim) only",
                          r->file, scale ? "scale_attn_by_inverse_layer_idx" : "scale_attn_weights",
                          scale ? "true" : "false");
    return MHUB_OK;
}

/* Llama's attention_bias puts a bias on q, k, v and o; mlp_bias on the
 * MLP. mhub has one switch for every linear layer (plus one for qkv
 * alone), so the two must agree. */
static mhub_status read_llama_biases(const hf_reader *r, mhub_gpt_config *c)
{
    bool attn = false, mlp = false;
    MHUB_TRY(read_flag(r, "attention_bias", &attn));
    MHUB_TRY(read_flag(r, "mlp_bias", &mlp));
    if (attn != mlp)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: key \"attention_bias\" = %s with \"mlp_bias\" = %s: mhub's "
                          "add_bias_linear puts biases on the attention and the MLP together",
                          r->file, attn ? "true" : "false", mlp ? "true" : "false");
    c->add_bias_linear = attn;
    return MHUB_OK;
}

static mhub_status read_llama_extras(const hf_reader *r, hf_family fam, mhub_gpt_config *c)
{
    const char *act = NULL;
    MHUB_TRY(read_string(r, "hidden_act", "silu", &act));
    if (strcmp(act, "silu") != 0)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: key \"hidden_act\" = \"%s\": mhub's swiglu MLP needs \"silu\"",
                          r->file, act);
    if (value_of(r, "rope_scaling"))
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: key \"rope_scaling\" is set: mhub's rope has no scaling (the "
                          "model would compute differently)", r->file);
    bool window = false;
    MHUB_TRY(read_flag(r, "use_sliding_window", &window));
    const cJSON *size = value_of(r, "sliding_window");
    if (size && !cJSON_IsNumber(size))
        return wrong_type(r, "sliding_window", "a number or null", size);
    /* Mistral writes sliding_window without use_sliding_window; a window
     * at least as long as the context changes nothing. */
    bool limits = size && cJSON_GetNumberValue(size) < (double)c->seq_length;
    if (window || (fam == HF_LLAMA && limits))
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: key \"%s\": mhub's attention has no sliding window", r->file,
                          window ? "use_sliding_window" : "sliding_window");
    return fam == HF_QWEN2 ? MHUB_OK : read_llama_biases(r, c);
}

/* initializer_range: Hugging Face initialises weights N(0, range^2),
 * which is Megatron's normal init. */
static mhub_status read_init(const hf_reader *r, mhub_gpt_config *c)
{
    const cJSON *it = value_of(r, "initializer_range");
    if (!it)
        return MHUB_OK;
    const mhub_config_field *f = find_field("init_method_std");
    double lo = f ? f->min : 0.0, hi = f ? f->max : 1e6;
    MHUB_TRY(read_double(r, "initializer_range", it, lo, hi, &c->base.init_method_std));
    c->base.init_method = MHUB_INIT_METHOD_NORMAL;
    return MHUB_OK;
}

static mhub_status read_config(const hf_reader *r, mhub_gpt_config *c)
{
    hf_family fam = HF_GPT2;
    MHUB_TRY(detect_family(r, &fam));
    family_defaults(fam, c);
    MHUB_TRY(read_keys(r, fam, c));
    if (fam == HF_GPT2)
        MHUB_TRY(read_gpt2_extras(r, c));
    else
        MHUB_TRY(read_llama_extras(r, fam, c));
    return read_init(r, c);
}

/* path itself, or path/config.json when path is a directory. */
static mhub_status resolve_file(const char *path, char **out)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return mhub_error(MHUB_ERR_IO, "%s: %s", path, strerror(errno));
    size_t n = strlen(path) + sizeof "/" HF_CONFIG_NAME;
    *out = malloc(n);
    if (!*out)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: path", path);
    if (!S_ISDIR(st.st_mode)) {
        memcpy(*out, path, strlen(path) + 1);
        return MHUB_OK;
    }
    snprintf(*out, n, "%s/%s", path, HF_CONFIG_NAME);
    if (stat(*out, &st) != 0) {
        free(*out);
        *out = NULL;
        return mhub_error(MHUB_ERR_IO, "%s: the directory holds no %s", path, HF_CONFIG_NAME);
    }
    return MHUB_OK;
}

static mhub_status parse_file(const char *file, cJSON **root)
{
    char *text = NULL;
    size_t len = 0;
    MHUB_TRY(mhub_file_read_all(file, HF_MAX_BYTES, "a config.json", &text, &len));
    *root = len ? cJSON_ParseWithLength(text, len) : NULL;
    mhub_status s = MHUB_OK;
    if (!len)
        s = mhub_error(MHUB_ERR_PARSE, "%s: the file is empty", file);
    else if (!*root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        s = mhub_error(MHUB_ERR_PARSE, "%s: not valid JSON (error near byte %ld)", file, off);
    } else if (!cJSON_IsObject(*root)) {
        s = mhub_error(MHUB_ERR_PARSE, "%s: the top level must be a JSON object, got %s", file,
                       mhub_json_kind(*root));
        cJSON_Delete(*root);
        *root = NULL;
    }
    free(text);
    return s;
}

/* Re-record the current error with the file in front and `code`. */
static mhub_status with_file(mhub_status code, const char *file)
{
    char msg[512];
    snprintf(msg, sizeof msg, "%s", mhub_last_error());
    return mhub_error(code, "%s: %s", file, msg);
}

mhub_status mhub_config_from_hf(const char *path, mhub_provider_config **out)
{
    if (!path || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path or out is NULL");
    *out = NULL;
    char *file = NULL;
    MHUB_TRY(resolve_file(path, &file));
    cJSON *root = NULL;
    mhub_provider_config *cfg = NULL;
    mhub_status s = parse_file(file, &root);
    if (s == MHUB_OK)
        s = mhub_config_create(mhub_gpt_provider_type(), &cfg);
    if (s == MHUB_OK) {
        hf_reader r = {file, root};
        s = read_config(&r, (mhub_gpt_config *)cfg);
    }
    /* sizes that are each fine but disagree (heads vs hidden, ...) */
    if (s == MHUB_OK && mhub_config_validate(cfg) != MHUB_OK)
        s = with_file(MHUB_ERR_PARSE, file);
    cJSON_Delete(root);
    free(file);
    if (s != MHUB_OK) {
        mhub_config_free(cfg);
        return s;
    }
    *out = cfg;
    return MHUB_OK;
}

/* ---- writing ----------------------------------------------------------------- */

static const char *const family_type[] = {"gpt2", "llama", "qwen2"};
static const char *const family_arch[] = {"GPT2LMHeadModel", "LlamaForCausalLM",
                                          "Qwen2ForCausalLM"};

/* The family a config belongs to, or why Hugging Face has none. */
static mhub_status classify(const mhub_gpt_config *c, hf_family *out)
{
    bool ln = c->normalization == MHUB_GPT_LAYERNORM, gelu = c->activation == MHUB_GPT_GELU;
    bool learned = c->position_embedding_type == MHUB_GPT_LEARNED_ABSOLUTE;
    if (ln && gelu && learned) {
        *out = HF_GPT2;
        return MHUB_OK;
    }
    if (!ln && !gelu && !learned) {
        /* a bias on q, k, v alone is Qwen2's layout */
        *out = c->add_qkv_bias && !c->add_bias_linear ? HF_QWEN2 : HF_LLAMA;
        return MHUB_OK;
    }
    return mhub_error(MHUB_ERR_UNSUPPORTED,
                      "normalization \"%s\", activation \"%s\", position_embedding_type \"%s\": "
                      "Hugging Face has GPT-2 (LayerNorm, gelu, learned_absolute) and Llama "
                      "(RMSNorm, swiglu, rope), no architecture for this combination",
                      ln ? "LayerNorm" : "RMSNorm", gelu ? "gelu" : "swiglu",
                      learned ? "learned_absolute" : "rope");
}

/* What GPT-2's config cannot say. */
static mhub_status check_gpt2(const mhub_gpt_config *c)
{
    if (!c->add_bias_linear)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "add_bias_linear is false: GPT-2 has a bias on every linear layer");
    if (mhub_gpt_query_groups(c) != c->num_attention_heads)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "num_query_groups = %d: GPT-2 has no grouped-query attention",
                          c->num_query_groups);
    if (mhub_gpt_head_dim(c) * c->num_attention_heads != c->hidden_size)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "kv_channels = %d: GPT-2's head dim is n_embd / n_head", c->kv_channels);
    return MHUB_OK;
}

static mhub_status add_item(cJSON *obj, const char *key, cJSON *item)
{
    if (!item || !cJSON_AddItemToObject(obj, key, item)) {
        cJSON_Delete(item);
        return mhub_error(MHUB_ERR_NO_MEMORY, "JSON for key \"%s\"", key);
    }
    return MHUB_OK;
}

static mhub_status write_key(cJSON *obj, const hf_key *k, const mhub_gpt_config *c)
{
    const mhub_config_field *f = find_field(k->field);
    if (!f)
        return mhub_error(MHUB_ERR_STATE, "no field \"%s\" for key \"%s\"", k->field, k->hf);
    const void *src = (const char *)c + f->offset;
    switch (f->kind) {
    case MHUB_FIELD_INT: {
        int v = *(const int *)src;
        if (f->nullable && v == f->null_value)
            return k->null_as == HF_NULL_WRITE ? add_item(obj, k->hf, cJSON_CreateNull())
                                               : MHUB_OK;
        return add_item(obj, k->hf, cJSON_CreateNumber(v));
    }
    case MHUB_FIELD_DOUBLE:
        return add_item(obj, k->hf, cJSON_CreateNumber(*(const double *)src));
    case MHUB_FIELD_BOOL:
        return add_item(obj, k->hf, cJSON_CreateBool(*(const bool *)src));
    default:
        return mhub_error(MHUB_ERR_STATE, "field \"%s\" has no Hugging Face form", k->field);
    }
}

static const char *torch_dtype(mhub_dtype dt)
{
    return dt == MHUB_BF16 ? "bfloat16" : dt == MHUB_F16 ? "float16" : "float32";
}

static mhub_status build_json(const mhub_gpt_config *c, hf_family fam, cJSON *obj)
{
    const char *arch = family_arch[fam];
    MHUB_TRY(add_item(obj, "architectures", cJSON_CreateStringArray(&arch, 1)));
    MHUB_TRY(add_item(obj, "model_type", cJSON_CreateString(family_type[fam])));
    int n = 0;
    const hf_key *keys = family_keys(fam, &n);
    for (int i = 0; i < n; i++)
        MHUB_TRY(write_key(obj, &keys[i], c));
    if (fam == HF_GPT2) {
        MHUB_TRY(add_item(obj, "n_positions", cJSON_CreateNumber(c->seq_length)));
        MHUB_TRY(add_item(obj, "activation_function", cJSON_CreateString("gelu_new")));
    } else {
        MHUB_TRY(add_item(obj, "hidden_act", cJSON_CreateString("silu")));
        if (fam == HF_LLAMA) {
            MHUB_TRY(add_item(obj, "attention_bias", cJSON_CreateBool(c->add_bias_linear)));
            MHUB_TRY(add_item(obj, "mlp_bias", cJSON_CreateBool(c->add_bias_linear)));
        }
    }
    if (c->base.init_method == MHUB_INIT_METHOD_NORMAL)
        MHUB_TRY(add_item(obj, "initializer_range", cJSON_CreateNumber(c->base.init_method_std)));
    /* the dtype the weights are stored in (informational for mhub) */
    return add_item(obj, "torch_dtype",
                    cJSON_CreateString(torch_dtype(mhub_provider_config_param_dtype(&c->base))));
}

typedef struct hf_line {
    const char *key;
    char *value;    /* the value's JSON text */
} hf_line;

static int by_key(const void *a, const void *b)
{
    return strcmp(((const hf_line *)a)->key, ((const hf_line *)b)->key);
}

static size_t append(char *buf, size_t len, size_t used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static size_t append(char *buf, size_t len, size_t used, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + used, len - used, fmt, ap);
    va_end(ap);
    /* never past the buffer, even if a line did not fit */
    size_t end = n > 0 ? used + (size_t)n : used;
    return end < len ? end : len - 1;
}

/* The object as Hugging Face's save_pretrained lays it out: keys sorted,
 * one per line, indent 2. Values are flat (an array of strings at most),
 * so each fits on its line as cJSON prints it. Caller free()s *out. */
static mhub_status format_hf(const cJSON *obj, char **out)
{
    int n = cJSON_GetArraySize(obj);
    hf_line *lines = calloc((size_t)n + 1, sizeof *lines);
    if (!lines)
        return mhub_error(MHUB_ERR_NO_MEMORY, "JSON lines");
    mhub_status s = MHUB_OK;
    size_t len = sizeof "{\n}";
    int count = 0;
    for (const cJSON *it = obj->child; it && count < n; it = it->next, count++) {
        lines[count].key = it->string;
        lines[count].value = cJSON_PrintUnformatted(it);
        if (!lines[count].value) {
            s = mhub_error(MHUB_ERR_NO_MEMORY, "JSON for key \"%s\"", it->string);
            count++;
            break;
        }
        len += strlen(it->string) + strlen(lines[count].value) + sizeof "  \"\": ,\n";
    }
    char *text = s == MHUB_OK ? malloc(len) : NULL;
    if (s == MHUB_OK && !text)
        s = mhub_error(MHUB_ERR_NO_MEMORY, "JSON text");
    if (s == MHUB_OK) {
        qsort(lines, (size_t)count, sizeof *lines, by_key);
        size_t used = append(text, len, 0, "{\n");
        for (int k = 0; k < count; k++)
            used = append(text, len, used, "  \"%s\": %s%s\n", lines[k].key, lines[k].value,
                          k + 1 < count ? "," : "");
        append(text, len, used, "}");
        *out = text;
    }
    for (int k = 0; k < count; k++)
        free(lines[k].value);
    free(lines);
    return s;
}

mhub_status mhub_config_save_hf(const mhub_provider_config *cfg, const char *dir)
{
    if (!cfg || !dir)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config or dir is NULL");
    if (cfg->type != mhub_gpt_provider_type())
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "Hugging Face configs exist for \"gpt\" configs only, not \"%s\"",
                          cfg->type && cfg->type->name ? cfg->type->name : "(untyped)");
    MHUB_TRY(mhub_config_validate(cfg));
    const mhub_gpt_config *c = (const mhub_gpt_config *)cfg;
    hf_family fam = HF_GPT2;
    MHUB_TRY(classify(c, &fam));
    if (fam == HF_GPT2)
        MHUB_TRY(check_gpt2(c));
    MHUB_TRY(mhub_dir_ensure(dir));
    cJSON *obj = cJSON_CreateObject();
    if (!obj)
        return mhub_error(MHUB_ERR_NO_MEMORY, "JSON object");
    mhub_status s = build_json(c, fam, obj);
    char *text = NULL;
    if (s == MHUB_OK)
        s = format_hf(obj, &text);
    cJSON_Delete(obj);
    char *file = NULL, *file_text = NULL;
    if (s == MHUB_OK) {
        size_t n = strlen(dir) + sizeof "/" HF_CONFIG_NAME, t = strlen(text);
        file = malloc(n);
        file_text = malloc(t + 2);
        if (file && file_text) {
            snprintf(file, n, "%s/%s", dir, HF_CONFIG_NAME);
            memcpy(file_text, text, t);
            memcpy(file_text + t, "\n", 2);
        } else {
            s = mhub_error(MHUB_ERR_NO_MEMORY, "%s: path", dir);
        }
    }
    if (s == MHUB_OK)
        s = mhub_file_write_atomic(file, file_text, strlen(file_text));
    free(file_text);
    free(file);
    free(text);
    return s;
}
