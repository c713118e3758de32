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
 * tables do not name do not change the architecture as mhub builds it
 * (dropout, token ids, task parameters); keys that would change it in a
 * way mhub cannot build (rope scaling, a sliding window, an unknown
 * activation) are refused rather than silently dropped. Both spellings
 * of rope's base are read: transformers 4's "rope_theta" and 5's
 * "rope_parameters": {"rope_theta": ..., "rope_type": "default"}.
 *
 * initializer_range, when present, selects Megatron's normal init with
 * that std (and is written back only for that init: transformers has no
 * fan-in init). The common fields that are training settings (parallel
 * sizes, dtype flags, seed) are not in Hugging Face configs: from_hf
 * leaves their defaults. dtype (torch_dtype before transformers 5) is
 * written, the dtype of the weights saved beside it, and not read:
 * mixed precision is a training choice, not the model's.
 *
 * from_hf returns a canonical form: a "derived" size (JSON null in mhub)
 * stays 0, and so does a size equal to what mhub would derive (Llama's
 * num_key_value_heads = num_attention_heads, head_dim = hidden_size /
 * num_attention_heads, which transformers 5 always writes); other sizes
 * are kept as written. So from_hf(save_hf(cfg)) == cfg whenever cfg is
 * canonical and the fields Hugging Face has no key for hold their
 * defaults: the training settings above, make_vocab_size_divisible_by
 * (mhub pads nothing by default, so vocab_size is the checkpoint's row
 * count), rotary_base for GPT-2, and add_qkv_bias when add_bias_linear
 * already gives q, k, v a bias.
 *
 * Writing, two cases:
 *   - a config of mhub's own: the file transformers 5.24.0 writes when it
 *     saves a model of that config (model.save_pretrained: the keys its
 *     config class writes, "architectures", "dtype", and
 *     "transformers_version": "5.24.0"), byte for byte;
 *   - a config read from a config.json, whose mhub_hf_source is passed
 *     along: that file, with only the keys whose value the config changed
 *     rewritten. So keys mhub does not model (token ids, task
 *     parameters, "_name_or_path", the file's own transformers_version)
 *     survive, and an unchanged config writes the file back byte for
 *     byte. A change is found by writing both configs in mhub's own form
 *     and comparing key by key; a changed key replaces the file's
 *     spelling of the same fact ("n_ctx" for n_positions, "rope_theta"
 *     for rope_parameters, "torch_dtype" for dtype).
 * The text is json.dumps(indent=2, sort_keys=True) + "\n", transformers'
 * own (pyjson.c).
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
#include "src/pyjson.h"

#define HF_CONFIG_NAME "config.json"
/* A real config.json is a few KiB; anything near this is not one. */
#define HF_MAX_BYTES (16 << 20)
/* The transformers release whose save_pretrained mhub's own configs
 * reproduce (tests/reference/hf_config_reference.py). */
#define HF_TRANSFORMERS_VERSION "5.24.0"

typedef enum hf_family { HF_GPT2, HF_LLAMA, HF_QWEN2 } hf_family;

/* How a derived (0) size is written: GPT-2's config writes "n_inner":
 * null; Llama's writes the size it resolves to; Qwen2's has no head_dim
 * of its own (its model reads one when present). */
typedef enum hf_null { HF_NULL_WRITE, HF_NULL_OMIT, HF_NULL_RESOLVE } hf_null;

typedef struct hf_key {
    const char *hf;     /* the Hugging Face key */
    const char *field;  /* the GPT (or common) field it sets */
    bool required;
    hf_null null_as;
    int (*resolve)(const mhub_gpt_config *c); /* HF_NULL_RESOLVE: the size 0 stands for */
} hf_key;

static const hf_key gpt2_keys[] = {
    {"n_embd", "hidden_size", true, HF_NULL_OMIT, NULL},
    {"n_layer", "num_layers", true, HF_NULL_OMIT, NULL},
    {"n_head", "num_attention_heads", true, HF_NULL_OMIT, NULL},
    {"n_inner", "ffn_hidden_size", false, HF_NULL_WRITE, NULL},
    {"vocab_size", "vocab_size", true, HF_NULL_OMIT, NULL},
    {"layer_norm_epsilon", "layernorm_epsilon", false, HF_NULL_OMIT, NULL},
    {"tie_word_embeddings", "share_embeddings_and_output_weights", false, HF_NULL_OMIT, NULL},
};

#define LLAMA_SHARED_KEYS                                                                  \
    {"hidden_size", "hidden_size", true, HF_NULL_OMIT, NULL},                              \
    {"intermediate_size", "ffn_hidden_size", true, HF_NULL_OMIT, NULL},                    \
    {"num_hidden_layers", "num_layers", true, HF_NULL_OMIT, NULL},                         \
    {"num_attention_heads", "num_attention_heads", true, HF_NULL_OMIT, NULL},              \
    {"num_key_value_heads", "num_query_groups", false, HF_NULL_RESOLVE,                    \
     mhub_gpt_query_groups},                                                                \
    {"max_position_embeddings", "seq_length", true, HF_NULL_OMIT, NULL},                   \
    {"vocab_size", "vocab_size", true, HF_NULL_OMIT, NULL},                                \
    {"rms_norm_eps", "layernorm_epsilon", false, HF_NULL_OMIT, NULL},                      \
    {"tie_word_embeddings", "share_embeddings_and_output_weights", false, HF_NULL_OMIT, NULL}

static const hf_key llama_keys[] = {
    LLAMA_SHARED_KEYS,
    {"head_dim", "kv_channels", false, HF_NULL_RESOLVE, mhub_gpt_head_dim},
};

static const hf_key qwen2_keys[] = {
    LLAMA_SHARED_KEYS,
    {"head_dim", "kv_channels", false, HF_NULL_OMIT, NULL},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static const hf_key *family_keys(hf_family f, int *count)
{
    if (f == HF_GPT2) {
        *count = COUNT(gpt2_keys);
        return gpt2_keys;
    }
    if (f == HF_QWEN2) {
        *count = COUNT(qwen2_keys);
        return qwen2_keys;
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

/* rope's base: transformers 4 writes "rope_theta" (and "rope_scaling"
 * for the variants), 5 one "rope_parameters" object. */
static mhub_status read_rope(const hf_reader *r, mhub_gpt_config *c)
{
    if (value_of(r, "rope_scaling"))
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: key \"rope_scaling\" is set: mhub's rope has no scaling (the "
                          "model would compute differently)", r->file);
    const mhub_config_field *f = find_field("rotary_base");
    const cJSON *theta = value_of(r, "rope_theta");
    if (theta)
        MHUB_TRY(read_double(r, "rope_theta", theta, f->min, f->max, &c->rotary_base));
    const cJSON *params = value_of(r, "rope_parameters");
    if (!params)
        return MHUB_OK;
    if (!cJSON_IsObject(params))
        return wrong_type(r, "rope_parameters", "an object", params);
    for (const cJSON *it = params->child; it; it = it->next) {
        bool is_type = strcmp(it->string, "rope_type") == 0;
        if (is_type && !(cJSON_IsString(it) && strcmp(it->valuestring, "default") == 0))
            return mhub_error(MHUB_ERR_UNSUPPORTED,
                              "%s: key \"rope_parameters\": mhub's rope is \"rope_type\": "
                              "\"default\" only (the model would compute differently)", r->file);
        if (!is_type && strcmp(it->string, "rope_theta") != 0)
            return mhub_error(MHUB_ERR_UNSUPPORTED,
                              "%s: key \"rope_parameters\" holds \"%s\": mhub's rope takes "
                              "\"rope_theta\" and \"rope_type\" only", r->file, it->string);
    }
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(params, "rope_theta");
    if (!inner)
        return MHUB_OK;
    double base = 0;
    MHUB_TRY(read_double(r, "rope_parameters.rope_theta", inner, f->min, f->max, &base));
    if (theta && base != c->rotary_base)
        return mhub_error(MHUB_ERR_PARSE, "%s: key \"rope_theta\" = %.17g and "
                          "\"rope_parameters.rope_theta\" = %.17g disagree", r->file,
                          c->rotary_base, base);
    c->rotary_base = base;
    return MHUB_OK;
}

/* transformers 5 lists each layer's attention; mhub's are all full. */
static mhub_status read_layer_types(const hf_reader *r, const mhub_gpt_config *c)
{
    const cJSON *types = value_of(r, "layer_types");
    if (!types)
        return MHUB_OK;
    if (!cJSON_IsArray(types))
        return wrong_type(r, "layer_types", "an array", types);
    int i = 0;
    for (const cJSON *it = types->child; it; it = it->next, i++)
        if (!cJSON_IsString(it) || strcmp(it->valuestring, "full_attention") != 0)
            return mhub_error(MHUB_ERR_UNSUPPORTED,
                              "%s: key \"layer_types\"[%d] is not \"full_attention\": mhub's "
                              "attention has no sliding window", r->file, i);
    if (i != c->num_layers)
        return mhub_error(MHUB_ERR_PARSE, "%s: key \"layer_types\" lists %d layers, "
                          "\"num_hidden_layers\" is %d", r->file, i, c->num_layers);
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
    MHUB_TRY(read_rope(r, c));
    MHUB_TRY(read_layer_types(r, c));
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

/* A size equal to the one mhub derives reads as derived (0), so a
 * config's canonical form does not depend on whether the file spelled
 * the default out (transformers 5 always does). */
static void canonical_sizes(mhub_gpt_config *c)
{
    if (c->num_query_groups == c->num_attention_heads)
        c->num_query_groups = 0;
    if (c->num_attention_heads > 0 && c->hidden_size % c->num_attention_heads == 0 &&
        c->kv_channels == c->hidden_size / c->num_attention_heads)
        c->kv_channels = 0;
}

static mhub_status read_config(const hf_reader *r, hf_family *family, mhub_gpt_config *c)
{
    MHUB_TRY(detect_family(r, family));
    family_defaults(*family, c);
    MHUB_TRY(read_keys(r, *family, c));
    if (*family == HF_GPT2)
        MHUB_TRY(read_gpt2_extras(r, c));
    else
        MHUB_TRY(read_llama_extras(r, *family, c));
    canonical_sizes(c);
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
    *root = NULL;
    MHUB_TRY(mhub_file_read_all(file, HF_MAX_BYTES, "a config.json", &text, &len));
    mhub_status s = len ? mhub_pyjson_parse(text, len, file, root)
                        : mhub_error(MHUB_ERR_PARSE, "%s: the file is empty", file);
    if (s == MHUB_OK && !cJSON_IsObject(*root)) {
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

struct mhub_hf_source {
    char *file;                     /* for messages */
    cJSON *root;                    /* every key of the file, numbers with their text */
    hf_family family;
    mhub_provider_config *config;   /* what the file describes, canonical */
};

void mhub_hf_source_free(mhub_hf_source *src)
{
    if (!src)
        return;
    mhub_config_free(src->config);
    cJSON_Delete(src->root);
    free(src->file);
    free(src);
}

static mhub_status read_source(mhub_hf_source *src)
{
    MHUB_TRY(parse_file(src->file, &src->root));
    MHUB_TRY(mhub_config_create(mhub_gpt_provider_type(), &src->config));
    hf_reader r = {src->file, src->root};
    MHUB_TRY(read_config(&r, &src->family, (mhub_gpt_config *)src->config));
    /* sizes that are each fine but disagree (heads vs hidden, ...) */
    if (mhub_config_validate(src->config) != MHUB_OK)
        return with_file(MHUB_ERR_PARSE, src->file);
    return MHUB_OK;
}

mhub_status mhub_hf_source_read(const char *path, mhub_hf_source **out)
{
    if (!path || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path or out is NULL");
    *out = NULL;
    mhub_hf_source *src = calloc(1, sizeof *src);
    if (!src)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: config source", path);
    mhub_status s = resolve_file(path, &src->file);
    if (s == MHUB_OK)
        s = read_source(src);
    if (s != MHUB_OK) {
        mhub_hf_source_free(src);
        return s;
    }
    *out = src;
    return MHUB_OK;
}

const mhub_provider_config *mhub_hf_source_config(const mhub_hf_source *src)
{
    return src ? src->config : NULL;
}

mhub_status mhub_config_from_hf(const char *path, mhub_provider_config **out)
{
    if (!path || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path or out is NULL");
    *out = NULL;
    mhub_hf_source *src = NULL;
    MHUB_TRY(mhub_hf_source_read(path, &src));
    mhub_status s = mhub_config_clone(src->config, out);
    mhub_hf_source_free(src);
    return s;
}

/* ---- writing ----------------------------------------------------------------- */

static const char *const family_type[] = {"gpt2", "llama", "qwen2"};
static const char *const family_arch[] = {"GPT2LMHeadModel", "LlamaForCausalLM",
                                          "Qwen2ForCausalLM"};

/* The keys transformers 5.24.0 writes for each family whose values mhub
 * does not model: its config classes' defaults. */
static const char *const family_fixed_keys[] = {
    [HF_GPT2] = "{\"activation_function\": \"gelu_new\", \"add_cross_attention\": false, "
                "\"attn_pdrop\": 0.1, \"bos_token_id\": 50256, \"embd_pdrop\": 0.1, "
                "\"eos_token_id\": 50256, \"pad_token_id\": null, "
                "\"reorder_and_upcast_attn\": false, \"resid_pdrop\": 0.1, "
                "\"scale_attn_by_inverse_layer_idx\": false, \"scale_attn_weights\": true, "
                "\"summary_activation\": null, \"summary_first_dropout\": 0.1, "
                "\"summary_proj_to_labels\": true, \"summary_type\": \"cls_index\", "
                "\"summary_use_proj\": true, \"use_cache\": true}",
    [HF_LLAMA] = "{\"attention_dropout\": 0.0, \"bos_token_id\": 1, \"eos_token_id\": 2, "
                 "\"hidden_act\": \"silu\", \"pad_token_id\": null, \"pretraining_tp\": 1, "
                 "\"use_cache\": true}",
    [HF_QWEN2] = "{\"attention_dropout\": 0.0, \"bos_token_id\": null, \"eos_token_id\": null, "
                 "\"hidden_act\": \"silu\", \"max_window_layers\": 28, \"pad_token_id\": null, "
                 "\"sliding_window\": null, \"use_cache\": true, \"use_sliding_window\": false}",
};

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
        bool derived = f->nullable && v == f->null_value;
        if (derived && k->null_as == HF_NULL_OMIT)
            return MHUB_OK;
        if (derived && k->null_as == HF_NULL_WRITE)
            return add_item(obj, k->hf, cJSON_CreateNull());
        return add_item(obj, k->hf, mhub_pyjson_int(derived ? k->resolve(c) : v));
    }
    case MHUB_FIELD_DOUBLE:
        return add_item(obj, k->hf, mhub_pyjson_float(*(const double *)src));
    case MHUB_FIELD_BOOL:
        return add_item(obj, k->hf, cJSON_CreateBool(*(const bool *)src));
    default:
        return mhub_error(MHUB_ERR_STATE, "field \"%s\" has no Hugging Face form", k->field);
    }
}

static const char *dtype_name(mhub_dtype dt)
{
    return dt == MHUB_BF16 ? "bfloat16" : dt == MHUB_F16 ? "float16" : "float32";
}

static mhub_status add_rope(cJSON *obj, const mhub_gpt_config *c)
{
    cJSON *rope = cJSON_CreateObject();
    MHUB_TRY(add_item(obj, "rope_parameters", rope));
    MHUB_TRY(add_item(rope, "rope_theta", mhub_pyjson_float(c->rotary_base)));
    return add_item(rope, "rope_type", cJSON_CreateString("default"));
}

static mhub_status add_layer_types(cJSON *obj, const mhub_gpt_config *c)
{
    cJSON *types = cJSON_CreateArray();
    MHUB_TRY(add_item(obj, "layer_types", types));
    for (int i = 0; i < c->num_layers; i++)
        if (!cJSON_AddItemToArray(types, cJSON_CreateString("full_attention")))
            return mhub_error(MHUB_ERR_NO_MEMORY, "JSON for key \"layer_types\"");
    return MHUB_OK;
}

/* The keys only some families have, beyond the key tables. */
static mhub_status add_family_keys(cJSON *obj, const mhub_gpt_config *c, hf_family fam)
{
    if (fam == HF_GPT2)
        return add_item(obj, "n_positions", mhub_pyjson_int(c->seq_length));
    MHUB_TRY(add_rope(obj, c));
    if (fam == HF_QWEN2)
        return add_layer_types(obj, c);
    MHUB_TRY(add_item(obj, "attention_bias", cJSON_CreateBool(c->add_bias_linear)));
    return add_item(obj, "mlp_bias", cJSON_CreateBool(c->add_bias_linear));
}

/* The config as transformers writes a model of it (the top of this file):
 * a new object in *out. */
static mhub_status build_native(const mhub_gpt_config *c, hf_family fam, cJSON **out)
{
    const char *fixed = family_fixed_keys[fam];
    MHUB_TRY(mhub_pyjson_parse(fixed, strlen(fixed), "the Hugging Face defaults", out));
    cJSON *obj = *out;
    const char *arch = family_arch[fam];
    MHUB_TRY(add_item(obj, "architectures", cJSON_CreateStringArray(&arch, 1)));
    MHUB_TRY(add_item(obj, "model_type", cJSON_CreateString(family_type[fam])));
    MHUB_TRY(add_item(obj, "transformers_version", cJSON_CreateString(HF_TRANSFORMERS_VERSION)));
    MHUB_TRY(add_item(obj, "dtype", cJSON_CreateString(
                                        dtype_name(mhub_provider_config_param_dtype(&c->base)))));
    int n = 0;
    const hf_key *keys = family_keys(fam, &n);
    for (int i = 0; i < n; i++)
        MHUB_TRY(write_key(obj, &keys[i], c));
    MHUB_TRY(add_family_keys(obj, c, fam));
    if (c->base.init_method == MHUB_INIT_METHOD_NORMAL)
        MHUB_TRY(add_item(obj, "initializer_range", mhub_pyjson_float(c->base.init_method_std)));
    return MHUB_OK;
}

/* ---- writing over a source ------------------------------------------------------ */

/* Keys of the native form and the older spellings a source may use for
 * the same fact; setting the first drops the second. */
static const char *const key_aliases[][2] = {
    {"n_positions", "n_ctx"},
    {"rope_parameters", "rope_theta"},
    {"dtype", "torch_dtype"},
};

static void drop_key(cJSON *obj, const char *key)
{
    cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
    for (int i = 0; i < COUNT(key_aliases); i++)
        if (strcmp(key, key_aliases[i][0]) == 0)
            cJSON_DeleteItemFromObjectCaseSensitive(obj, key_aliases[i][1]);
}

/* Whether two values print the same (cJSON_Compare takes numbers as
 * equal when merely close, and ignores 1 vs 1.0). */
static mhub_status same_value(const cJSON *a, const cJSON *b, bool *same)
{
    char *ta = NULL, *tb = NULL;
    size_t la = 0, lb = 0;
    mhub_status s = mhub_pyjson_dump(a, &ta, &la);
    if (s == MHUB_OK)
        s = mhub_pyjson_dump(b, &tb, &lb);
    *same = s == MHUB_OK && la == lb && memcmp(ta, tb, la) == 0;
    free(ta);
    free(tb);
    return s;
}

/* out (a copy of the source) += every key where `now` differs from
 * `was`, the native forms of the config and of the source's own config:
 * what changed is set, what is gone is removed, the rest is the
 * source's. */
static mhub_status apply_changes(cJSON *out, const cJSON *now, const cJSON *was)
{
    for (const cJSON *it = now->child; it; it = it->next) {
        const cJSON *before = cJSON_GetObjectItemCaseSensitive(was, it->string);
        bool same = false;
        if (before)
            MHUB_TRY(same_value(it, before, &same));
        if (same)
            continue;
        drop_key(out, it->string);
        MHUB_TRY(add_item(out, it->string, cJSON_Duplicate(it, true)));
    }
    for (const cJSON *it = was->child; it; it = it->next)
        if (!cJSON_GetObjectItemCaseSensitive(now, it->string))
            drop_key(out, it->string);
    return MHUB_OK;
}

/* The source with the config's changes; *out is a new object. */
static mhub_status build_over_source(const mhub_gpt_config *c, const mhub_hf_source *src,
                                     cJSON **out)
{
    cJSON *now = NULL, *was = NULL;
    mhub_status s = build_native(c, src->family, &now);
    if (s == MHUB_OK)
        s = build_native((const mhub_gpt_config *)src->config, src->family, &was);
    *out = s == MHUB_OK ? cJSON_Duplicate(src->root, true) : NULL;
    if (s == MHUB_OK && !*out)
        s = mhub_error(MHUB_ERR_NO_MEMORY, "%s: copy", src->file);
    if (s == MHUB_OK)
        s = apply_changes(*out, now, was);
    cJSON_Delete(now);
    cJSON_Delete(was);
    return s;
}

/* ---- files ------------------------------------------------------------------------ */

static mhub_status write_json(const cJSON *obj, const char *file)
{
    char *text = NULL;
    size_t len = 0;
    MHUB_TRY(mhub_pyjson_dump(obj, &text, &len));
    mhub_status s = mhub_file_write_atomic(file, text, len);
    free(text);
    return s;
}

mhub_status mhub_hf_source_write(const mhub_hf_source *src, const char *file)
{
    if (!src || !file)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "source or file is NULL");
    return write_json(src->root, file);
}

/* The config's family, after checking that Hugging Face can hold it. */
static mhub_status hf_family_of(const mhub_provider_config *cfg, hf_family *fam)
{
    if (cfg->type != mhub_gpt_provider_type())
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED,
                          "Hugging Face configs exist for \"gpt\" configs only, not \"%s\"",
                          cfg->type && cfg->type->name ? cfg->type->name : "(untyped)");
    MHUB_TRY(mhub_config_validate(cfg));
    const mhub_gpt_config *c = (const mhub_gpt_config *)cfg;
    MHUB_TRY(classify(c, fam));
    return *fam == HF_GPT2 ? check_gpt2(c) : MHUB_OK;
}

mhub_status mhub_config_save_hf_with(const mhub_provider_config *cfg, const mhub_hf_source *src,
                                     const char *dir)
{
    if (!cfg || !dir)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config or dir is NULL");
    hf_family fam = HF_GPT2;
    MHUB_TRY(hf_family_of(cfg, &fam));
    MHUB_TRY(mhub_dir_ensure(dir));
    const mhub_gpt_config *c = (const mhub_gpt_config *)cfg;
    cJSON *obj = NULL;
    /* a source of another family says nothing about this config */
    mhub_status s = src && src->family == fam ? build_over_source(c, src, &obj)
                                              : build_native(c, fam, &obj);
    size_t n = strlen(dir) + sizeof "/" HF_CONFIG_NAME;
    char *file = s == MHUB_OK ? malloc(n) : NULL;
    if (s == MHUB_OK && !file)
        s = mhub_error(MHUB_ERR_NO_MEMORY, "%s: path", dir);
    if (s == MHUB_OK) {
        snprintf(file, n, "%s/%s", dir, HF_CONFIG_NAME);
        s = write_json(obj, file);
    }
    free(file);
    cJSON_Delete(obj);
    return s;
}

mhub_status mhub_config_save_hf(const mhub_provider_config *cfg, const char *dir)
{
    return mhub_config_save_hf_with(cfg, NULL, dir);
}
