/* config.h - provider configurations: the common fields, field tables,
 * and JSON in and out (mhub_model.json).
 *
 * Every provider type has a config struct whose FIRST member is an
 * mhub_provider_config (the fields every provider has, as Megatron's
 * TransformerConfig names them), followed by the type's own fields:
 *
 *   typedef struct my_config {
 *       mhub_provider_config base;
 *       int width;
 *   } my_config;
 *
 * A field table (mhub_config_field) describes each field once: its JSON
 * key, kind, offset and valid range. The table drives everything that
 * touches a config by name, so a new provider type gets JSON round trips,
 * strict/lenient loading and error messages that name the key and the
 * file without writing a parser.
 *
 * The JSON form is one flat object: {"provider": "<type name>", <common
 * fields>, <type fields>}. Numbers must be exact: integers beyond 2^53
 * and non-finite values are rejected. */
#ifndef MHUB_CONFIG_H
#define MHUB_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mhub/dtype.h"
#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_provider_type mhub_provider_type;

/* How parameters are initialised (mhub_provider_config.init_method). */
typedef enum mhub_init_method {
    MHUB_INIT_METHOD_FAN_IN = 0, /* weights N(0, 1/fan_in): keeps activations O(1) */
    MHUB_INIT_METHOD_NORMAL = 1  /* weights N(0, init_method_std^2), as Megatron */
} mhub_init_method;

/* The fields every provider has. Sizes of 1 (and 0 for the optional
 * ones) mean "no parallelism of that kind". */
typedef struct mhub_provider_config {
    const mhub_provider_type *type;            /* set by mhub_config_create */
    int tensor_model_parallel_size;            /* >= 1 */
    int pipeline_model_parallel_size;          /* >= 1 */
    int virtual_pipeline_model_parallel_size;  /* 0 = none (JSON null); else >= 1, needs pp > 1 */
    int context_parallel_size;                 /* >= 1 */
    int expert_model_parallel_size;            /* >= 1 */
    int expert_tensor_parallel_size;           /* 0 = same as tp (JSON null) */
    bool sequence_parallel;                    /* needs tp > 1 */
    bool fp16;                                 /* 16-bit parameters, f32 main copies */
    bool bf16;                                 /* (fp16 and bf16 together is an error) */
    mhub_dtype params_dtype;                   /* storage when neither is set */
    int64_t seed;                              /* initialisation seed, [0, 2^53] */
    mhub_init_method init_method;
    double init_method_std;                    /* for MHUB_INIT_METHOD_NORMAL */
    bool use_cpu_initialization;               /* initialise on the host, then copy */
    bool init_model_with_meta_device;          /* shapes only, no storage */
} mhub_provider_config;

/* Megatron's defaults: every size 1, no vp, f32, seed 1234, fan-in init
 * (std 0.02 for "normal"). */
void mhub_provider_config_defaults(mhub_provider_config *cfg);

/* The storage dtype the config asks for: f16 with fp16, bf16 with bf16,
 * params_dtype otherwise. */
mhub_dtype mhub_provider_config_param_dtype(const mhub_provider_config *cfg);

/* ---- field tables ------------------------------------------------------ */

typedef enum mhub_field_kind {
    MHUB_FIELD_BOOL,       /* bool */
    MHUB_FIELD_INT,        /* int, in [min, max] */
    MHUB_FIELD_INT64,      /* int64_t, in [min, max] (|x| <= 2^53) */
    MHUB_FIELD_DOUBLE,     /* double, finite, in [min, max] */
    MHUB_FIELD_ENUM,       /* int index into `choices` (JSON: the name) */
    MHUB_FIELD_DTYPE,      /* mhub_dtype (JSON: "float32", "bfloat16", "float16") */
    MHUB_FIELD_INT_ARRAY   /* int[max_count] at offset, its length (int) at count_offset */
} mhub_field_kind;

typedef struct mhub_config_field {
    const char *key;              /* JSON key, also the C field's name */
    mhub_field_kind kind;
    size_t offset;                /* from the start of the config struct */
    double min, max;              /* numbers and array elements: inclusive range */
    bool nullable;                /* INT: JSON null stores null_value */
    int null_value;
    const char *const *choices;   /* ENUM: names, NULL-terminated */
    size_t count_offset;          /* INT_ARRAY */
    int max_count;                /* INT_ARRAY capacity (min count is 0) */
    const char *help;             /* one line for documentation */
} mhub_config_field;

/* The common fields' table (offsets into mhub_provider_config). */
const mhub_config_field *mhub_provider_common_fields(int *count);

/* ---- JSON ---------------------------------------------------------------- */

typedef enum mhub_config_mode {
    MHUB_CONFIG_STRICT = 0,   /* an unknown key is an error */
    MHUB_CONFIG_LENIENT = 1   /* an unknown key is a warning (on stderr) and ignored */
} mhub_config_mode;

/* Check every field against its table range and the cross-field rules
 * (fp16 with bf16, vp without pp > 1, sequence_parallel without tp > 1),
 * then the type's own validate. Messages name the key. */
mhub_status mhub_config_validate(const mhub_provider_config *cfg);

/* The config as JSON text: {"provider": name, every common field, every
 * type field}, one key per line (indent 2) when pretty. Caller free()s. */
mhub_status mhub_config_to_json(const mhub_provider_config *cfg, bool pretty, char **out);

/* Parse JSON text into a newly allocated config of the type its
 * "provider" key names (a registered type; the only types mhub will
 * instantiate). Missing keys keep the type's defaults. A wrong type, an
 * out-of-range or inexact number, an unknown provider, or (strict) an
 * unknown key fails with MHUB_ERR_PARSE naming the key and `source`; a
 * config that reads but breaks a cross-field rule fails as
 * mhub_config_validate does. On error *out is NULL. Caller frees *out
 * with mhub_config_free. */
mhub_status mhub_config_from_json(const char *text, size_t len, const char *source,
                                  mhub_config_mode mode, mhub_provider_config **out);

/* Apply one JSON object's keys on top of an existing config (overrides;
 * "provider", if present, must name the config's own type). Nothing is
 * changed on error. */
mhub_status mhub_config_apply_json(mhub_provider_config *cfg, const char *text,
                                   const char *source, mhub_config_mode mode);

/* Set one field from text as it would appear in JSON ("4", "true",
 * "\"bfloat16\"", "[64,64]"); bare words are taken as strings. For
 * command-line overrides (key=value). */
mhub_status mhub_config_set(mhub_provider_config *cfg, const char *key, const char *value);

/* A new config of `type` holding its defaults. */
mhub_status mhub_config_create(const mhub_provider_type *type, mhub_provider_config **out);
/* A deep copy (configs are plain structs of config_size bytes). */
mhub_status mhub_config_clone(const mhub_provider_config *cfg, mhub_provider_config **out);
void mhub_config_free(mhub_provider_config *cfg);
/* Whether two configs of one type hold the same values. */
bool mhub_config_equal(const mhub_provider_config *a, const mhub_provider_config *b);

/* ---- files: save_pretrained / from_pretrained ---------------------------- */

/* File name of the default config, and its name without extension. */
#define MHUB_CONFIG_NAME "mhub_model.json"
#define MHUB_CONFIG_STEM "mhub_model"

/* Write <dir>/<config_name>.json (config_name NULL: "mhub_model"; an
 * extension in it is an error), creating dir (one level, mode 0755) if
 * missing. format NULL or "json"; anything else is MHUB_ERR_UNSUPPORTED.
 * Written to a temporary file and renamed, so a crash never leaves half
 * a config. */
mhub_status mhub_config_save_pretrained(const mhub_provider_config *cfg, const char *dir,
                                        const char *format, const char *config_name);

/* Read <path>/<config_name>.json when path is a directory, or the file
 * `path` itself. Errors name the file. */
mhub_status mhub_config_from_pretrained(const char *path, mhub_config_mode mode,
                                        const char *config_name, mhub_provider_config **out);

#ifdef __cplusplus
}
#endif
#endif
