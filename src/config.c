/* config.c - provider configs: the common fields, table-driven validation,
 * JSON in and out, and save_pretrained / from_pretrained.
 *
 * Everything that touches a config by name walks the field tables (the
 * common table, then the type's own), so a provider type gets checking,
 * JSON and error messages from its table alone.
 *
 * Config files are untrusted input: the text is checked (no NUL bytes,
 * well-formed UTF-8, bounded nesting) before cJSON sees it, every value
 * is checked for its JSON type, exactness and range, and every error
 * names the source and the key. Reading goes into a scratch config that
 * replaces the caller's only when everything succeeded. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mhub/config.h"
#include "mhub/provider.h"
#include "src/fileio.h"

/* 2^53: the largest integer below which every integer is a double, so
 * JSON numbers up to it are read exactly. */
#define EXACT_INT_MAX 9007199254740992.0
/* A config is a flat object whose deepest values are arrays: nesting
 * beyond this is hostile, rejected before cJSON recurses into it. */
#define MAX_DEPTH 64
/* A config file is a few hundred bytes; anything near this is not one. */
#define MAX_CONFIG_BYTES ((size_t)16 << 20)
/* Longest key or snippet quoted from the input in a message. */
#define SHOWN_CAP 64

/* ---- common fields --------------------------------------------------------- */

void mhub_provider_config_defaults(mhub_provider_config *cfg)
{
    if (!cfg)
        return;
    /* cfg->type is left alone: the defaults belong to every type. */
    cfg->tensor_model_parallel_size = 1;
    cfg->pipeline_model_parallel_size = 1;
    cfg->virtual_pipeline_model_parallel_size = 0;
    cfg->context_parallel_size = 1;
    cfg->expert_model_parallel_size = 1;
    cfg->expert_tensor_parallel_size = 0;
    cfg->sequence_parallel = false;
    cfg->fp16 = false;
    cfg->bf16 = false;
    cfg->params_dtype = MHUB_F32;
    cfg->seed = 1234;
    cfg->init_method = MHUB_INIT_METHOD_FAN_IN;
    cfg->init_method_std = 0.02;
    cfg->use_cpu_initialization = false;
    cfg->init_model_with_meta_device = false;
}

mhub_dtype mhub_provider_config_param_dtype(const mhub_provider_config *cfg)
{
    if (!cfg)
        return MHUB_F32;
    if (cfg->fp16)
        return MHUB_F16;
    if (cfg->bf16)
        return MHUB_BF16;
    return cfg->params_dtype;
}

#define COMMON(field) offsetof(mhub_provider_config, field)
#define MAX_PARALLEL 1048576.0 /* 1 << 20: far beyond any real group size */

static const char *const init_method_names[] = {"fan_in", "normal", NULL};

static const mhub_config_field common_fields[] = {
    {.key = "tensor_model_parallel_size", .kind = MHUB_FIELD_INT,
     .offset = COMMON(tensor_model_parallel_size), .min = 1, .max = MAX_PARALLEL,
     .help = "ranks each layer's weights are split over (tensor parallelism)"},
    {.key = "pipeline_model_parallel_size", .kind = MHUB_FIELD_INT,
     .offset = COMMON(pipeline_model_parallel_size), .min = 1, .max = MAX_PARALLEL,
     .help = "pipeline stages the layers are cut into"},
    {.key = "virtual_pipeline_model_parallel_size", .kind = MHUB_FIELD_INT,
     .offset = COMMON(virtual_pipeline_model_parallel_size), .min = 1, .max = MAX_PARALLEL,
     .nullable = true, .null_value = 0,
     .help = "model chunks per pipeline stage (interleaved schedule); null for none"},
    {.key = "context_parallel_size", .kind = MHUB_FIELD_INT,
     .offset = COMMON(context_parallel_size), .min = 1, .max = MAX_PARALLEL,
     .help = "ranks the sequence is split over (context parallelism)"},
    {.key = "expert_model_parallel_size", .kind = MHUB_FIELD_INT,
     .offset = COMMON(expert_model_parallel_size), .min = 1, .max = MAX_PARALLEL,
     .help = "ranks the experts are spread over (expert parallelism)"},
    {.key = "expert_tensor_parallel_size", .kind = MHUB_FIELD_INT,
     .offset = COMMON(expert_tensor_parallel_size), .min = 1, .max = MAX_PARALLEL,
     .nullable = true, .null_value = 0,
     .help = "tensor parallelism inside experts; null for the same as tensor_model_parallel_size"},
    {.key = "sequence_parallel", .kind = MHUB_FIELD_BOOL, .offset = COMMON(sequence_parallel),
     .help = "split activations along the sequence in tensor-parallel regions (needs tp > 1)"},
    {.key = "fp16", .kind = MHUB_FIELD_BOOL, .offset = COMMON(fp16),
     .help = "float16 parameters with float32 main copies"},
    {.key = "bf16", .kind = MHUB_FIELD_BOOL, .offset = COMMON(bf16),
     .help = "bfloat16 parameters with float32 main copies"},
    {.key = "params_dtype", .kind = MHUB_FIELD_DTYPE, .offset = COMMON(params_dtype),
     .help = "parameter storage when neither fp16 nor bf16 is set"},
    {.key = "seed", .kind = MHUB_FIELD_INT64, .offset = COMMON(seed), .min = 0,
     .max = EXACT_INT_MAX, .help = "initialisation seed"},
    {.key = "init_method", .kind = MHUB_FIELD_ENUM, .offset = COMMON(init_method),
     .choices = init_method_names,
     .help = "weight initialisation: fan_in (N(0, 1/fan_in)) or normal (N(0, std^2))"},
    {.key = "init_method_std", .kind = MHUB_FIELD_DOUBLE, .offset = COMMON(init_method_std),
     .min = 0, .max = 1e3, .help = "standard deviation for init_method normal"},
    {.key = "use_cpu_initialization", .kind = MHUB_FIELD_BOOL,
     .offset = COMMON(use_cpu_initialization),
     .help = "initialise parameters on the host, then copy them to the device"},
    {.key = "init_model_with_meta_device", .kind = MHUB_FIELD_BOOL,
     .offset = COMMON(init_model_with_meta_device),
     .help = "build shapes only, without parameter storage"},
};

#define NUM_COMMON_FIELDS ((int)(sizeof common_fields / sizeof common_fields[0]))

const mhub_config_field *mhub_provider_common_fields(int *count)
{
    if (count)
        *count = NUM_COMMON_FIELDS;
    return common_fields;
}

/* ---- walking both tables ----------------------------------------------------- */

static int num_fields(const mhub_provider_type *t)
{
    return NUM_COMMON_FIELDS + (t->fields ? t->num_fields : 0);
}

/* Field i of the combined table: the common fields, then the type's. */
static const mhub_config_field *field_at(const mhub_provider_type *t, int i)
{
    return i < NUM_COMMON_FIELDS ? &common_fields[i] : &t->fields[i - NUM_COMMON_FIELDS];
}

static const mhub_config_field *find_field(const mhub_provider_type *t, const char *key)
{
    for (int i = 0; i < num_fields(t); i++)
        if (strcmp(field_at(t, i)->key, key) == 0)
            return field_at(t, i);
    return NULL;
}

static void *field_ptr(mhub_provider_config *cfg, size_t offset)
{
    return (char *)cfg + offset;
}

static const void *field_cptr(const mhub_provider_config *cfg, size_t offset)
{
    return (const char *)cfg + offset;
}

static int num_choices(const mhub_config_field *f)
{
    int n = 0;
    while (f->choices && f->choices[n])
        n++;
    return n;
}

/* ---- message helpers ------------------------------------------------------- */

int mhub_shortest_precision(double v)
{
    char buf[40];
    for (int prec = 1; prec < 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return prec;
    }
    return 17;
}

/* The shortest text that reads back as exactly v: cJSON's own printing
 * is approximate (it accepts 15 digits when they are merely close) and
 * would change values like 2^53 or 0.1 + 1 ulp on a round trip. */
static void format_double(double v, char *buf, size_t cap)
{
    snprintf(buf, cap, "%.*g", mhub_shortest_precision(v), v);
}

/* Input text as it can be quoted in a message: at most `n` bytes,
 * control and non-ASCII bytes shown as '?', long text cut with "...",
 * so hostile input can neither flood nor garble the message. */
static const char *shown_n(const char *s, size_t n, char buf[SHOWN_CAP + 4])
{
    size_t i = 0;
    for (; i < n && s[i] && i < SHOWN_CAP; i++) {
        unsigned char c = (unsigned char)s[i];
        buf[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    if (i == SHOWN_CAP && i < n && s[i])
        memcpy(buf + i, "...", 3), i += 3;
    buf[i] = '\0';
    return buf;
}

static const char *shown(const char *s, char buf[SHOWN_CAP + 4])
{
    return shown_n(s, SIZE_MAX, buf);
}


/* Prefix the recorded message with where the text came from, so the
 * readers below need not carry the source around. */
static mhub_status in_source(mhub_status s, const char *source)
{
    if (s == MHUB_OK)
        return s;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mhub_last_error());
    return mhub_error(s, "%s: %s", source, msg);
}

/* Append "a, b, c" to buf (for lists of names in messages). */
static void append_name(char *buf, size_t cap, const char *name)
{
    size_t used = strlen(buf);
    if (used + 1 < cap)
        snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", name);
}

static void choices_list(const mhub_config_field *f, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int i = 0; f->choices && f->choices[i]; i++)
        append_name(buf, cap, f->choices[i]);
}

static void registered_types_list(char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int i = 0; i < mhub_provider_type_count(); i++)
        append_name(buf, cap, mhub_provider_type_at(i)->name);
    if (!buf[0])
        snprintf(buf, cap, "none");
}

static void keys_list(const mhub_provider_type *t, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int i = 0; i < num_fields(t); i++)
        append_name(buf, cap, field_at(t, i)->key);
}

/* ---- dtypes in JSON ----------------------------------------------------------- */

/* The names written to files: the long ones, as Megatron's configs and
 * torch spell them (mhub_dtype_name gives the short ones). */
static const char *dtype_json_name(mhub_dtype dt)
{
    switch (dt) {
    case MHUB_F32: return "float32";
    case MHUB_BF16: return "bfloat16";
    case MHUB_F16: return "float16";
    }
    return NULL;
}

/* ---- range checks --------------------------------------------------------------- */

/* The range an integer field can hold: its table range, cut to what the
 * C type stores and what a double represents exactly. */
static void integer_range(const mhub_config_field *f, double *lo, double *hi)
{
    double tmin = f->kind == MHUB_FIELD_INT64 ? -EXACT_INT_MAX : (double)INT_MIN;
    double tmax = f->kind == MHUB_FIELD_INT64 ? EXACT_INT_MAX : (double)INT_MAX;
    *lo = f->min > tmin ? f->min : tmin;
    *hi = f->max < tmax ? f->max : tmax;
}

/* "what = v is out of range [lo, hi]" unless lo <= v <= hi. */
static mhub_status check_range(const char *what, double v, double lo, double hi, bool nullable)
{
    if (v >= lo && v <= hi)
        return MHUB_OK;
    char vs[32], ls[32], hs[32];
    format_double(v, vs, sizeof vs);
    format_double(lo, ls, sizeof ls);
    format_double(hi, hs, sizeof hs);
    return mhub_error(MHUB_ERR_INVALID_ARG, "%s = %s is out of range [%s, %s]%s", what, vs, ls,
                      hs, nullable ? " (or null)" : "");
}

static mhub_status check_int_array(const mhub_provider_config *cfg, const mhub_config_field *f)
{
    int count = *(const int *)field_cptr(cfg, f->count_offset);
    if (count < 0 || count > f->max_count)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s has %d elements; it holds 0 to %d", f->key,
                          count, f->max_count);
    const int *v = field_cptr(cfg, f->offset);
    double lo, hi;
    integer_range(f, &lo, &hi);
    for (int i = 0; i < count; i++) {
        char what[96];
        snprintf(what, sizeof what, "%s[%d]", f->key, i);
        MHUB_TRY(check_range(what, v[i], lo, hi, false));
    }
    return MHUB_OK;
}

/* One stored field against its table entry. */
static mhub_status check_field(const mhub_provider_config *cfg, const mhub_config_field *f)
{
    const void *p = field_cptr(cfg, f->offset);
    double lo, hi;
    switch (f->kind) {
    case MHUB_FIELD_BOOL:
        return MHUB_OK;
    case MHUB_FIELD_INT:
        if (f->nullable && *(const int *)p == f->null_value)
            return MHUB_OK;
        integer_range(f, &lo, &hi);
        return check_range(f->key, *(const int *)p, lo, hi, f->nullable);
    case MHUB_FIELD_INT64:
        integer_range(f, &lo, &hi);
        return check_range(f->key, (double)*(const int64_t *)p, lo, hi, false);
    case MHUB_FIELD_DOUBLE:
        if (!isfinite(*(const double *)p))
            return mhub_error(MHUB_ERR_INVALID_ARG, "%s is not a finite number", f->key);
        return check_range(f->key, *(const double *)p, f->min, f->max, false);
    case MHUB_FIELD_ENUM: {
        int v = *(const int *)p;
        if (v < 0 || v >= num_choices(f))
            return mhub_error(MHUB_ERR_INVALID_ARG, "%s = %d is not one of its %d choices",
                              f->key, v, num_choices(f));
        return MHUB_OK;
    }
    case MHUB_FIELD_DTYPE:
        if (!mhub_dtype_valid(*(const mhub_dtype *)p))
            return mhub_error(MHUB_ERR_INVALID_ARG, "%s = %d is not a dtype", f->key,
                              (int)*(const mhub_dtype *)p);
        return MHUB_OK;
    case MHUB_FIELD_INT_ARRAY:
        return check_int_array(cfg, f);
    }
    return mhub_error(MHUB_ERR_INVALID_ARG, "%s has an unknown field kind %d", f->key,
                      (int)f->kind);
}

static mhub_status check_fields(const mhub_provider_config *cfg)
{
    for (int i = 0; i < num_fields(cfg->type); i++)
        MHUB_TRY(check_field(cfg, field_at(cfg->type, i)));
    return MHUB_OK;
}

/* The rules that involve more than one common field. */
static mhub_status check_common_rules(const mhub_provider_config *c)
{
    if (c->fp16 && c->bf16)
        return mhub_error(MHUB_ERR_INVALID_ARG, "fp16 and bf16 are both true; set at most one");
    if (c->virtual_pipeline_model_parallel_size != 0 && c->pipeline_model_parallel_size <= 1)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "virtual_pipeline_model_parallel_size = %d needs "
                          "pipeline_model_parallel_size > 1 (it is %d); use null for none",
                          c->virtual_pipeline_model_parallel_size,
                          c->pipeline_model_parallel_size);
    if (c->sequence_parallel && c->tensor_model_parallel_size <= 1)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "sequence_parallel needs tensor_model_parallel_size > 1 (it is %d)",
                          c->tensor_model_parallel_size);
    return MHUB_OK;
}

mhub_status mhub_config_validate(const mhub_provider_config *cfg)
{
    if (!cfg)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config is NULL");
    if (!cfg->type)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "config has no provider type (make it with mhub_config_create)");
    MHUB_TRY(check_fields(cfg));
    MHUB_TRY(check_common_rules(cfg));
    if (cfg->type->config_validate)
        MHUB_TRY(cfg->type->config_validate(cfg));
    return MHUB_OK;
}

/* ---- create, clone, free, equal ------------------------------------------------ */

mhub_status mhub_config_create(const mhub_provider_type *type, mhub_provider_config **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!type)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "provider type is NULL");
    if (type->config_size < sizeof(mhub_provider_config))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "provider type '%s': config_size %zu is smaller than "
                          "mhub_provider_config (%zu)",
                          type->name ? type->name : "(unnamed)", type->config_size,
                          sizeof(mhub_provider_config));
    mhub_provider_config *cfg = calloc(1, type->config_size);
    if (!cfg)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "config of %zu bytes", type->config_size);
    cfg->type = type;
    mhub_provider_config_defaults(cfg);
    if (type->config_defaults)
        type->config_defaults(cfg);
    *out = cfg;
    return MHUB_OK;
}

mhub_status mhub_config_clone(const mhub_provider_config *cfg, mhub_provider_config **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!cfg || !cfg->type)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config is NULL or has no provider type");
    mhub_provider_config *copy = malloc(cfg->type->config_size);
    if (!copy)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "config of %zu bytes", cfg->type->config_size);
    memcpy(copy, cfg, cfg->type->config_size);
    *out = copy;
    return MHUB_OK;
}

void mhub_config_free(mhub_provider_config *cfg)
{
    free(cfg);
}

static bool field_equal(const mhub_provider_config *a, const mhub_provider_config *b,
                        const mhub_config_field *f)
{
    const void *pa = field_cptr(a, f->offset), *pb = field_cptr(b, f->offset);
    switch (f->kind) {
    case MHUB_FIELD_BOOL:
        return *(const bool *)pa == *(const bool *)pb;
    case MHUB_FIELD_INT:
    case MHUB_FIELD_ENUM:
        return *(const int *)pa == *(const int *)pb;
    case MHUB_FIELD_DTYPE:
        return *(const mhub_dtype *)pa == *(const mhub_dtype *)pb;
    case MHUB_FIELD_INT64:
        return *(const int64_t *)pa == *(const int64_t *)pb;
    case MHUB_FIELD_DOUBLE:
        return *(const double *)pa == *(const double *)pb;
    case MHUB_FIELD_INT_ARRAY: {
        /* Only the first `count` elements are values; the rest is slack. */
        int na = *(const int *)field_cptr(a, f->count_offset);
        int nb = *(const int *)field_cptr(b, f->count_offset);
        if (na != nb)
            return false;
        return na <= 0 || memcmp(pa, pb, (size_t)na * sizeof(int)) == 0;
    }
    }
    return false;
}

bool mhub_config_equal(const mhub_provider_config *a, const mhub_provider_config *b)
{
    if (a == b)
        return true;
    if (!a || !b || a->type != b->type || !a->type)
        return false;
    /* Field by field: a memcmp of the structs would compare padding. */
    for (int i = 0; i < num_fields(a->type); i++)
        if (!field_equal(a, b, field_at(a->type, i)))
            return false;
    return true;
}

/* ---- JSON out -------------------------------------------------------------------- */

/* Numbers go in as raw text so they print exactly (see format_double). */
static cJSON *raw_number(double v)
{
    char buf[40];
    format_double(v, buf, sizeof buf);
    return cJSON_CreateRaw(buf);
}

static cJSON *raw_int64(int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return cJSON_CreateRaw(buf);
}

static cJSON *int_array_json(const mhub_provider_config *cfg, const mhub_config_field *f)
{
    int count = *(const int *)field_cptr(cfg, f->count_offset);
    const int *v = field_cptr(cfg, f->offset);
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; arr && i < count; i++) {
        cJSON *e = raw_int64(v[i]);
        if (!e || !cJSON_AddItemToArray(arr, e)) {
            cJSON_Delete(e);
            cJSON_Delete(arr);
            return NULL;
        }
    }
    return arr;
}

/* One field as a JSON value (the field already passed check_field). */
static cJSON *field_json(const mhub_provider_config *cfg, const mhub_config_field *f)
{
    const void *p = field_cptr(cfg, f->offset);
    switch (f->kind) {
    case MHUB_FIELD_BOOL:
        return cJSON_CreateBool(*(const bool *)p);
    case MHUB_FIELD_INT:
        if (f->nullable && *(const int *)p == f->null_value)
            return cJSON_CreateNull();
        return raw_int64(*(const int *)p);
    case MHUB_FIELD_INT64:
        return raw_int64(*(const int64_t *)p);
    case MHUB_FIELD_DOUBLE:
        return raw_number(*(const double *)p);
    case MHUB_FIELD_ENUM:
        return cJSON_CreateString(f->choices[*(const int *)p]);
    case MHUB_FIELD_DTYPE:
        return cJSON_CreateString(dtype_json_name(*(const mhub_dtype *)p));
    case MHUB_FIELD_INT_ARRAY:
        return int_array_json(cfg, f);
    }
    return NULL;
}

static mhub_status config_object(const mhub_provider_config *cfg, cJSON **out)
{
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "provider", cfg->type->name)) {
        cJSON_Delete(o);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "JSON object");
    }
    for (int i = 0; i < num_fields(cfg->type); i++) {
        const mhub_config_field *f = field_at(cfg->type, i);
        cJSON *v = field_json(cfg, f);
        if (!v || !cJSON_AddItemToObject(o, f->key, v)) {
            cJSON_Delete(v);
            cJSON_Delete(o);
            return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "JSON value of %s", f->key);
        }
    }
    *out = o;
    return MHUB_OK;
}

/* cJSON indents with tabs and puts a tab after each colon; configs are
 * read by people and diffed, so indent by two spaces and use one space
 * after colons. Strings are printed with tabs escaped, so every tab in
 * cJSON's output is layout. */
static char *retab(const char *text)
{
    size_t n = strlen(text);
    char *out = malloc(2 * n + 1);
    if (!out)
        return NULL;
    char *w = out;
    for (const char *r = text; *r; r++) {
        if (*r != '\t')
            *w++ = *r;
        else if (r > text && r[-1] == ':')
            *w++ = ' ';
        else
            *w++ = ' ', *w++ = ' ';
    }
    *w = '\0';
    return out;
}

mhub_status mhub_config_to_json(const mhub_provider_config *cfg, bool pretty, char **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!cfg || !cfg->type || !cfg->type->name)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config is NULL or has no provider type");
    /* A field outside its table could not be written (an enum index past
     * its names) or read back (a non-finite double). */
    MHUB_TRY(check_fields(cfg));
    cJSON *o = NULL;
    MHUB_TRY(config_object(cfg, &o));
    char *text = pretty ? cJSON_Print(o) : cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text && pretty) {
        char *spaced = retab(text);
        cJSON_free(text);
        text = spaced;
    } else if (text) {
        /* cJSON_free may not be free(); hand the caller malloc'd memory. */
        char *copy = strdup(text);
        cJSON_free(text);
        text = copy;
    }
    if (!text)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "JSON text of a '%s' config", cfg->type->name);
    *out = text;
    return MHUB_OK;
}

/* ---- checking the text before cJSON sees it --------------------------------- */


static bool json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_space(const char *t, size_t at, size_t len)
{
    while (at < len && json_space(t[at]))
        at++;
    return at;
}

/* Line and column (both from 1) of byte `at`, for messages. */
static void line_col(const char *t, size_t at, size_t *line, size_t *col)
{
    *line = 1, *col = 1;
    for (size_t i = 0; i < at; i++) {
        if (t[i] == '\n')
            ++*line, *col = 1;
        else
            ++*col;
    }
}

/* The string starting at the quote t[at]: *end is its closing quote (len
 * when unterminated, left for cJSON to report). The escape \u0000 is
 * refused: cJSON would turn it into a NUL that silently cuts the string
 * ("seed\u0000x" would read as the key "seed"). */
static mhub_status scan_string(const char *t, size_t at, size_t len, size_t *end)
{
    size_t i = at + 1;
    for (; i < len && t[i] != '"'; i++) {
        if (t[i] != '\\')
            continue;
        if (i + 5 < len && t[i + 1] == 'u' && memcmp(t + i + 2, "0000", 4) == 0)
            return mhub_error(MHUB_ERR_PARSE,
                              "the escape \\u0000 at byte offset %zu is not allowed in a "
                              "config string", i);
        i++; /* the escaped character cannot end the string */
    }
    *end = i;
    return MHUB_OK;
}

/* Length of the number-like token at t[at]. */
static size_t number_len(const char *t, size_t at, size_t len)
{
    size_t i = at;
    while (i < len && strchr("0123456789+-.eE", t[i]) && t[i] != '\0')
        i++;
    return i - at;
}

/* cJSON reads numbers as doubles, and 2^53 + 1 reads as 2^53: an integer
 * literal past 2^53 must be caught in the text, before it is rounded.
 * `key` (raw, key_len bytes; NULL outside an object) names it. */
static mhub_status check_integer_literal(const char *t, size_t at, size_t n, const char *key,
                                         size_t key_len)
{
    static const char max[] = "9007199254740992"; /* 2^53 */
    const char *d = t + at + (t[at] == '-');
    size_t nd = n - (size_t)(d - (t + at));
    for (size_t k = 0; k < nd; k++)
        if (d[k] < '0' || d[k] > '9')
            return MHUB_OK; /* a fraction or exponent: the value checks decide */
    while (nd > 1 && *d == '0')
        d++, nd--;
    if (nd < sizeof max - 1 || (nd == sizeof max - 1 && memcmp(d, max, nd) <= 0))
        return MHUB_OK;
    size_t line, col;
    line_col(t, at, &line, &col);
    char sk[SHOWN_CAP + 4], sn[SHOWN_CAP + 4];
    return mhub_error(MHUB_ERR_PARSE,
                      "%s = %s is beyond 2^53 and cannot be read exactly (line %zu, column %zu)",
                      key ? shown_n(key, key_len, sk) : "value", shown_n(t + at, n, sn), line,
                      col);
}

/* One lexical pass before cJSON: nesting depth (cJSON recurses per
 * level; a config is flat), \u0000 in strings, and integer literals past
 * 2^53. It tracks just enough of the grammar to name the key a number
 * belongs to; invalid JSON is left for cJSON to report. */
static mhub_status scan_structure(const char *t, size_t len)
{
    int depth = 0;
    const char *str = NULL, *key = NULL; /* the last string and the last key */
    size_t str_len = 0, key_len = 0;
    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        if (c == '"') {
            size_t end = len;
            MHUB_TRY(scan_string(t, i, len, &end));
            str = t + i + 1, str_len = end - i - 1;
            i = end;
        } else if (c == ':') {
            key = str, key_len = str_len;
        } else if (c == '[' || c == '{') {
            if (++depth > MAX_DEPTH)
                return mhub_error(MHUB_ERR_PARSE,
                                  "nesting deeper than %d levels at byte offset %zu "
                                  "(a config is a flat object)", MAX_DEPTH, i);
        } else if (c == ']' || c == '}') {
            depth--;
        } else if (c == '-' || (c >= '0' && c <= '9')) {
            size_t n = number_len(t, i, len);
            MHUB_TRY(check_integer_literal(t, i, n, key, key_len));
            i += n - 1;
        }
    }
    return MHUB_OK;
}

static mhub_status syntax_error(const char *t, size_t len, size_t at, const char *what)
{
    size_t line, col;
    line_col(t, at < len ? at : len, &line, &col);
    if (at >= len)
        return mhub_error(MHUB_ERR_PARSE, "%s: the text ends at line %zu, column %zu "
                          "(truncated?)", what, line, col);
    /* cJSON reports running out of text at the last byte; a closing
     * bracket there is a real error (a trailing comma), anything else
     * most likely a cut-off file. */
    bool cut = at + 1 == len && t[at] != '}' && t[at] != ']';
    char near[SHOWN_CAP + 4];
    return mhub_error(MHUB_ERR_PARSE, "%s at line %zu, column %zu near '%s'%s", what, line, col,
                      shown_n(t + at, 16 < len - at ? 16 : len - at, near),
                      cut ? " (the text ends there: truncated?)" : "");
}

/* Parse text[0, len) into a cJSON tree after checking that it is text:
 * no NUL byte (the length is the truth, not a terminator), well-formed
 * UTF-8, not empty, nesting bounded, and nothing after the value. */
static mhub_status parse_json(const char *text, size_t len, cJSON **out)
{
    *out = NULL;
    const char *nul = memchr(text, '\0', len);
    if (nul)
        return mhub_error(MHUB_ERR_PARSE, "NUL byte at byte offset %zu (a config is text)",
                          (size_t)(nul - text));
    size_t bad = mhub_utf8_invalid_at((const unsigned char *)text, len);
    if (bad < len)
        return mhub_error(MHUB_ERR_PARSE, "invalid UTF-8 at byte offset %zu (byte 0x%02x)", bad,
                          (unsigned)(unsigned char)text[bad]);
    size_t start = 0;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        start = 3; /* a byte-order mark some editors write */
    if (skip_space(text, start, len) == len)
        return mhub_error(MHUB_ERR_PARSE, "empty text; expected a JSON object");
    MHUB_TRY(scan_structure(text, len));
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text + start, len - start, &end, 0);
    size_t at = end ? (size_t)(end - text) : len;
    if (!root)
        return syntax_error(text, len, at, "not valid JSON");
    at = skip_space(text, at, len);
    if (at < len) {
        cJSON_Delete(root);
        return syntax_error(text, len, at, "unexpected text after the JSON value");
    }
    *out = root;
    return MHUB_OK;
}

/* ---- JSON values into fields -------------------------------------------------- */

/* An integer from a JSON number: finite, exactly representable
 * (|x| <= 2^53), integral and in [lo, hi]. `what` names it ("seed",
 * "hidden[2]"). */
static mhub_status read_integer(const cJSON *item, const char *what, double lo, double hi,
                                bool nullable, int64_t *out)
{
    if (!cJSON_IsNumber(item))
        return mhub_error(MHUB_ERR_PARSE, "%s must be an integer%s, not %s", what,
                          nullable ? " or null" : "", mhub_json_kind(item));
    double d = item->valuedouble;
    char ds[32];
    format_double(d, ds, sizeof ds);
    if (!isfinite(d))
        return mhub_error(MHUB_ERR_PARSE, "%s is not a finite number (too large for a double)",
                          what);
    if (fabs(d) > EXACT_INT_MAX)
        return mhub_error(MHUB_ERR_PARSE, "%s = %s is beyond 2^53 and cannot be read exactly",
                          what, ds);
    if (d != floor(d))
        return mhub_error(MHUB_ERR_PARSE, "%s = %s is not an integer", what, ds);
    if (check_range(what, d, lo, hi, nullable) != MHUB_OK)
        return MHUB_ERR_PARSE; /* check_range's message stands */
    *out = (int64_t)d;
    return MHUB_OK;
}

static mhub_status read_bool(const cJSON *item, const mhub_config_field *f, bool *out)
{
    if (!cJSON_IsBool(item))
        return mhub_error(MHUB_ERR_PARSE, "%s must be true or false, not %s", f->key,
                          mhub_json_kind(item));
    *out = cJSON_IsTrue(item);
    return MHUB_OK;
}

static mhub_status read_double(const cJSON *item, const mhub_config_field *f, double *out)
{
    if (!cJSON_IsNumber(item))
        return mhub_error(MHUB_ERR_PARSE, "%s must be a number, not %s", f->key,
                          mhub_json_kind(item));
    if (!isfinite(item->valuedouble))
        return mhub_error(MHUB_ERR_PARSE, "%s is not a finite number (too large for a double)",
                          f->key);
    if (check_range(f->key, item->valuedouble, f->min, f->max, false) != MHUB_OK)
        return MHUB_ERR_PARSE;
    *out = item->valuedouble;
    return MHUB_OK;
}

static mhub_status read_enum(const cJSON *item, const mhub_config_field *f, int *out)
{
    char names[512], sh[SHOWN_CAP + 4];
    choices_list(f, names, sizeof names);
    if (!cJSON_IsString(item))
        return mhub_error(MHUB_ERR_PARSE, "%s must be a string (one of: %s), not %s", f->key,
                          names, mhub_json_kind(item));
    for (int i = 0; f->choices && f->choices[i]; i++)
        if (strcmp(item->valuestring, f->choices[i]) == 0) {
            *out = i;
            return MHUB_OK;
        }
    return mhub_error(MHUB_ERR_PARSE, "%s = '%s' is not one of: %s", f->key,
                      shown(item->valuestring, sh), names);
}

static mhub_status read_dtype(const cJSON *item, const mhub_config_field *f, mhub_dtype *out)
{
    char sh[SHOWN_CAP + 4];
    if (!cJSON_IsString(item))
        return mhub_error(MHUB_ERR_PARSE,
                          "%s must be a dtype name (float32, bfloat16, float16), not %s", f->key,
                          mhub_json_kind(item));
    if (mhub_dtype_parse(item->valuestring, out) != 0)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s = '%s' is not a dtype (float32, bfloat16, float16)", f->key,
                          shown(item->valuestring, sh));
    return MHUB_OK;
}

static mhub_status read_int_array(const cJSON *item, const mhub_config_field *f,
                                  mhub_provider_config *cfg)
{
    if (!cJSON_IsArray(item))
        return mhub_error(MHUB_ERR_PARSE, "%s must be an array of integers, not %s", f->key,
                          mhub_json_kind(item));
    int *v = field_ptr(cfg, f->offset);
    double lo, hi;
    integer_range(f, &lo, &hi);
    int n = 0;
    for (const cJSON *e = item->child; e; e = e->next, n++) {
        if (n >= f->max_count)
            return mhub_error(MHUB_ERR_PARSE, "%s has more than %d elements", f->key,
                              f->max_count);
        char what[96];
        snprintf(what, sizeof what, "%s[%d]", f->key, n);
        int64_t x;
        MHUB_TRY(read_integer(e, what, lo, hi, false, &x));
        v[n] = (int)x;
    }
    /* Zero the slack so equal configs are also equal bytes there. */
    for (int i = n; i < f->max_count; i++)
        v[i] = 0;
    *(int *)field_ptr(cfg, f->count_offset) = n;
    return MHUB_OK;
}

/* Store one JSON value into field f of cfg, or fail naming the key. */
static mhub_status read_field(mhub_provider_config *cfg, const mhub_config_field *f,
                              const cJSON *item)
{
    void *p = field_ptr(cfg, f->offset);
    double lo, hi;
    int64_t x;
    switch (f->kind) {
    case MHUB_FIELD_BOOL:
        return read_bool(item, f, p);
    case MHUB_FIELD_INT:
        if (f->nullable && cJSON_IsNull(item)) {
            *(int *)p = f->null_value;
            return MHUB_OK;
        }
        integer_range(f, &lo, &hi);
        MHUB_TRY(read_integer(item, f->key, lo, hi, f->nullable, &x));
        *(int *)p = (int)x;
        return MHUB_OK;
    case MHUB_FIELD_INT64:
        integer_range(f, &lo, &hi);
        MHUB_TRY(read_integer(item, f->key, lo, hi, false, &x));
        *(int64_t *)p = x;
        return MHUB_OK;
    case MHUB_FIELD_DOUBLE:
        return read_double(item, f, p);
    case MHUB_FIELD_ENUM:
        return read_enum(item, f, p);
    case MHUB_FIELD_DTYPE:
        return read_dtype(item, f, p);
    case MHUB_FIELD_INT_ARRAY:
        return read_int_array(item, f, cfg);
    }
    return mhub_error(MHUB_ERR_INVALID_ARG, "%s has an unknown field kind %d", f->key,
                      (int)f->kind);
}

static int compare_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* cJSON keeps every duplicate and lookups see only the first, so a file
 * saying "tp": 1 ... "tp": 8 would mean different things to different
 * readers; refuse it. Sorting keeps this O(n log n) on hostile input. */
static mhub_status check_duplicates(const cJSON *root)
{
    size_t n = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        n++;
    if (n < 2)
        return MHUB_OK;
    const char **keys = malloc(n * sizeof *keys);
    if (!keys)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "%zu keys", n);
    size_t i = 0;
    for (const cJSON *it = root->child; it; it = it->next)
        keys[i++] = it->string ? it->string : "";
    qsort(keys, n, sizeof *keys, compare_keys);
    mhub_status s = MHUB_OK;
    for (i = 1; i < n && s == MHUB_OK; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0) {
            char sh[SHOWN_CAP + 4];
            s = mhub_error(MHUB_ERR_PARSE, "duplicate key '%s'", shown(keys[i], sh));
        }
    free(keys);
    return s;
}

/* Every key of `root` except "provider" into cfg. Unknown keys fail
 * (strict) or are reported on stderr and skipped (lenient). */
static mhub_status read_object(mhub_provider_config *cfg, const cJSON *root,
                               mhub_config_mode mode, const char *source)
{
    MHUB_TRY(check_duplicates(root));
    for (const cJSON *it = root->child; it; it = it->next) {
        const char *key = it->string ? it->string : "";
        if (strcmp(key, "provider") == 0)
            continue; /* read (or matched) by the caller */
        const mhub_config_field *f = find_field(cfg->type, key);
        char sh[SHOWN_CAP + 4];
        if (f) {
            MHUB_TRY(read_field(cfg, f, it));
        } else if (mode == MHUB_CONFIG_LENIENT) {
            fprintf(stderr, "warning: %s: unknown key '%s' ignored\n", source, shown(key, sh));
        } else {
            return mhub_error(MHUB_ERR_PARSE,
                              "unknown key '%s' (provider '%s' has no such field; lenient "
                              "mode ignores unknown keys)",
                              shown(key, sh), cfg->type->name);
        }
    }
    return MHUB_OK;
}

/* The registered type named by root's "provider" key. */
static mhub_status read_provider(const cJSON *root, const mhub_provider_type **type)
{
    char names[512], sh[SHOWN_CAP + 4];
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "provider");
    if (!p) {
        registered_types_list(names, sizeof names);
        return mhub_error(MHUB_ERR_PARSE, "missing key 'provider' (the provider type: one of %s)",
                          names);
    }
    if (!cJSON_IsString(p))
        return mhub_error(MHUB_ERR_PARSE, "provider must be a string, not %s", mhub_json_kind(p));
    *type = mhub_provider_type_find(p->valuestring);
    if (!*type) {
        registered_types_list(names, sizeof names);
        return mhub_error(MHUB_ERR_PARSE, "unknown provider '%s' (registered: %s)",
                          shown(p->valuestring, sh), names);
    }
    return MHUB_OK;
}

static mhub_status config_from_tree(const cJSON *root, mhub_config_mode mode,
                                    const char *source, mhub_provider_config **out)
{
    if (!cJSON_IsObject(root))
        return mhub_error(MHUB_ERR_PARSE, "the config must be a JSON object, not %s",
                          mhub_json_kind(root));
    const mhub_provider_type *type = NULL;
    MHUB_TRY(read_provider(root, &type));
    mhub_provider_config *cfg = NULL;
    MHUB_TRY(mhub_config_create(type, &cfg));
    mhub_status s = read_object(cfg, root, mode, source);
    if (s == MHUB_OK)
        s = mhub_config_validate(cfg);
    if (s != MHUB_OK) {
        mhub_config_free(cfg);
        return s;
    }
    *out = cfg;
    return MHUB_OK;
}

mhub_status mhub_config_from_json(const char *text, size_t len, const char *source,
                                  mhub_config_mode mode, mhub_provider_config **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!source)
        source = "config";
    if (!text)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: text is NULL", source);
    cJSON *root = NULL;
    MHUB_TRY(in_source(parse_json(text, len, &root), source));
    mhub_status s = config_from_tree(root, mode, source, out);
    cJSON_Delete(root);
    return in_source(s, source);
}

/* Read root's keys onto a copy of cfg and commit only when the result
 * validates, so a failed override leaves cfg as it was. */
static mhub_status apply_tree(mhub_provider_config *cfg, const cJSON *root,
                              mhub_config_mode mode, const char *source)
{
    if (!cJSON_IsObject(root))
        return mhub_error(MHUB_ERR_PARSE, "overrides must be a JSON object, not %s",
                          mhub_json_kind(root));
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "provider");
    char sh[SHOWN_CAP + 4];
    if (p && !cJSON_IsString(p))
        return mhub_error(MHUB_ERR_PARSE, "provider must be a string, not %s", mhub_json_kind(p));
    if (p && strcmp(p->valuestring, cfg->type->name) != 0)
        return mhub_error(MHUB_ERR_PARSE, "provider '%s' does not match the config's type '%s'",
                          shown(p->valuestring, sh), cfg->type->name);
    mhub_provider_config *copy = NULL;
    MHUB_TRY(mhub_config_clone(cfg, &copy));
    mhub_status s = read_object(copy, root, mode, source);
    if (s == MHUB_OK)
        s = mhub_config_validate(copy);
    if (s == MHUB_OK)
        memcpy(cfg, copy, cfg->type->config_size);
    mhub_config_free(copy);
    return s;
}

mhub_status mhub_config_apply_json(mhub_provider_config *cfg, const char *text,
                                   const char *source, mhub_config_mode mode)
{
    if (!source)
        source = "overrides";
    if (!cfg || !cfg->type || !text)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: config (with a type) or text is NULL",
                          source);
    cJSON *root = NULL;
    MHUB_TRY(in_source(parse_json(text, strlen(text), &root), source));
    mhub_status s = apply_tree(cfg, root, mode, source);
    cJSON_Delete(root);
    return in_source(s, source);
}

/* The JSON value of an override's text. A bare word (params_dtype=
 * bfloat16) is not JSON and is taken as a string; text that starts like
 * a JSON number, array, object or string is JSON, and its errors stand. */
static mhub_status override_item(const char *value, cJSON **item)
{
    size_t len = strlen(value), first = skip_space(value, 0, len);
    if (first < len && strchr("-0123456789[{\"", value[first]))
        return parse_json(value, len, item);
    if (parse_json(value, len, item) == MHUB_OK) /* true, false, null */
        return MHUB_OK;
    *item = cJSON_CreateString(value);
    return *item ? MHUB_OK : MHUB_ERROR(MHUB_ERR_NO_MEMORY, "JSON string");
}

/* Set field f from an override's text on a copy; commit if it validates. */
static mhub_status set_field(mhub_provider_config *cfg, const mhub_config_field *f,
                             const char *value)
{
    cJSON *item = NULL;
    MHUB_TRY(override_item(value, &item));
    mhub_provider_config *copy = NULL;
    mhub_status s = mhub_config_clone(cfg, &copy);
    if (s == MHUB_OK)
        s = read_field(copy, f, item);
    if (s == MHUB_OK)
        s = mhub_config_validate(copy);
    if (s == MHUB_OK)
        memcpy(cfg, copy, cfg->type->config_size);
    mhub_config_free(copy);
    cJSON_Delete(item);
    return s;
}

mhub_status mhub_config_set(mhub_provider_config *cfg, const char *key, const char *value)
{
    if (!cfg || !cfg->type || !key || !value)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config (with a type), key or value is NULL");
    char sk[SHOWN_CAP + 4], sv[SHOWN_CAP + 4];
    const mhub_config_field *f = find_field(cfg->type, key);
    if (!f) {
        char keys[768];
        keys_list(cfg->type, keys, sizeof keys);
        return mhub_error(MHUB_ERR_INVALID_ARG, "unknown key '%s' for provider '%s' (keys: %s)",
                          shown(key, sk), cfg->type->name, keys);
    }
    mhub_status s = set_field(cfg, f, value);
    if (s == MHUB_OK) {
        mhub_clear_error(); /* a bare word's failed JSON parse is no error */
        return MHUB_OK;
    }
    char source[2 * SHOWN_CAP + 32];
    snprintf(source, sizeof source, "override %s=%s", f->key, shown(value, sv));
    return in_source(s, source);
}

/* ---- files ------------------------------------------------------------------ */

/* "<fmt>" formatted into a new malloc'd string (paths have no fixed
 * length). NULL when out of memory. */
static char *path_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *path_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* A config name is a bare stem: ".json" is added, and a '/' would write
 * outside the directory. */
static mhub_status check_config_name(const char *name)
{
    char sh[SHOWN_CAP + 4];
    if (!*name)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config_name is empty");
    if (strchr(name, '/'))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config_name '%s' must be a name, not a path",
                          shown(name, sh));
    if (strchr(name, '.'))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "config_name '%s' must not have an extension ('.json' is added)",
                          shown(name, sh));
    return MHUB_OK;
}

mhub_status mhub_config_save_pretrained(const mhub_provider_config *cfg, const char *dir,
                                        const char *format, const char *config_name)
{
    if (!cfg || !dir)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "config or directory is NULL");
    if (format && strcasecmp(format, "json") != 0) {
        char sh[SHOWN_CAP + 4];
        return MHUB_ERROR(MHUB_ERR_UNSUPPORTED, "config format '%s' is not supported (only json)",
                          shown(format, sh));
    }
    const char *name = config_name ? config_name : MHUB_CONFIG_STEM;
    MHUB_TRY(check_config_name(name));
    /* Only a config that validates is written, so every saved file loads. */
    MHUB_TRY(mhub_config_validate(cfg));
    char *text = NULL;
    MHUB_TRY(mhub_config_to_json(cfg, true, &text));
    mhub_status s = mhub_dir_ensure(dir);
    char *path = path_printf("%s/%s.json", dir, name);
    char *file_text = path_printf("%s\n", text);
    if (s == MHUB_OK && (!path || !file_text))
        s = MHUB_ERROR(MHUB_ERR_NO_MEMORY, "path in %s", dir);
    if (s == MHUB_OK)
        s = mhub_file_write_atomic(path, file_text, strlen(file_text));
    free(file_text);
    free(path);
    free(text);
    return s;
}

mhub_status mhub_config_from_pretrained(const char *path, mhub_config_mode mode,
                                        const char *config_name, mhub_provider_config **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!path)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path is NULL");
    const char *name = config_name ? config_name : MHUB_CONFIG_STEM;
    MHUB_TRY(check_config_name(name));
    struct stat st;
    if (stat(path, &st) != 0)
        return mhub_error(MHUB_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *file = S_ISDIR(st.st_mode) ? path_printf("%s/%s.json", path, name) : strdup(path);
    if (!file)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "path in %s", path);
    char *text = NULL;
    size_t len = 0;
    mhub_status s = mhub_file_read_all(file, MAX_CONFIG_BYTES, "a config file", &text, &len);
    if (s == MHUB_OK)
        s = mhub_config_from_json(text, len, file, mode, out);
    free(text);
    free(file);
    return s;
}
