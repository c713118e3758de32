/* test_config.c - provider configs: defaults, the common field table,
 * validation rules, exact JSON round trips, strict and lenient loading,
 * overrides (apply_json, set), save_pretrained / from_pretrained, and a
 * battery of malformed and hostile config files that must each fail
 * cleanly with a message naming the problem.
 *
 * The suite registers its own provider type ("cfgtest") so it exercises
 * every field kind without depending on the built-in models. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

/* ---- the test provider type ------------------------------------------------------ */

typedef enum test_activation { ACT_RELU, ACT_GELU, ACT_SILU } test_activation;

typedef struct test_config {
    mhub_provider_config base; /* first, as every provider config */
    int width;
    double scale;
    int activation;            /* test_activation */
    int hidden[4];
    int num_hidden;
    bool tied;
} test_config;

static const char *const activation_names[] = {"relu", "gelu", "silu", NULL};

static const mhub_config_field test_fields[] = {
    {.key = "width", .kind = MHUB_FIELD_INT, .offset = offsetof(test_config, width), .min = 1,
     .max = 4096, .help = "hidden width"},
    {.key = "scale", .kind = MHUB_FIELD_DOUBLE, .offset = offsetof(test_config, scale),
     .min = -1e6, .max = 1e6, .help = "a scale factor"},
    {.key = "activation", .kind = MHUB_FIELD_ENUM, .offset = offsetof(test_config, activation),
     .choices = activation_names, .help = "the nonlinearity"},
    {.key = "hidden", .kind = MHUB_FIELD_INT_ARRAY, .offset = offsetof(test_config, hidden),
     .count_offset = offsetof(test_config, num_hidden), .max_count = 4, .min = 1,
     .max = 65536, .help = "hidden layer sizes"},
    {.key = "tied", .kind = MHUB_FIELD_BOOL, .offset = offsetof(test_config, tied),
     .help = "tie input and output weights"},
};

static void test_config_defaults(mhub_provider_config *c)
{
    test_config *t = (test_config *)c;
    t->width = 64;
    t->scale = 1.0;
    t->activation = ACT_GELU;
    t->hidden[0] = 32;
    t->hidden[1] = 16;
    t->num_hidden = 2;
    t->tied = false;
}

static mhub_status test_config_validate(const mhub_provider_config *c)
{
    const test_config *t = (const test_config *)c;
    if (t->width % c->tensor_model_parallel_size != 0)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "width = %d is not divisible by tensor_model_parallel_size = %d",
                          t->width, c->tensor_model_parallel_size);
    return MHUB_OK;
}

static mhub_status test_provide(const mhub_provider_config *cfg, const mhub_provide_args *args,
                                mhub_chunk **out)
{
    *out = NULL;
    return mhub_error(MHUB_ERR_UNSUPPORTED, "cfgtest builds no models");
}

static const mhub_provider_type test_type = {
    .name = "cfgtest",
    .description = "config test type: one field of every kind",
    .config_size = sizeof(test_config),
    .fields = test_fields,
    .num_fields = (int)(sizeof test_fields / sizeof test_fields[0]),
    .config_defaults = test_config_defaults,
    .config_validate = test_config_validate,
    .provide = test_provide,
};

/* Registered once per process (the suite runs without fork). */
static void setup(void)
{
    if (!mhub_provider_type_find("cfgtest"))
        CK_OK(mhub_provider_type_register(&test_type));
    ck_assert_ptr_eq(mhub_provider_type_find("cfgtest"), &test_type);
}

static test_config *new_test_config(void)
{
    mhub_provider_config *c = NULL;
    CK_OK(mhub_config_create(&test_type, &c));
    return (test_config *)c;
}

/* ---- helpers --------------------------------------------------------------------- */

#define CK_MSG_HAS(needle)                                                         \
    ck_assert_msg(strstr(mhub_last_error(), (needle)) != NULL,                     \
                  "message '%s' does not mention '%s'", mhub_last_error(), (needle))

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/mhub_test_config_XXXXXX";
    char *d = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(d);
    return strdup(d);
}


static void remove_tree(char *dir)
{
    ck_assert_int_eq(mhub_test_remove_tree(dir), 0);
    free(dir);
}

static char *join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    ck_assert_ptr_nonnull(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void write_bytes(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    char *buf = calloc(1, 1 << 16);
    ck_assert_ptr_nonnull(buf);
    size_t n = fread(buf, 1, (1 << 16) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

/* A config of the test type through JSON text and back. */
static mhub_provider_config *round_trip(const mhub_provider_config *c, bool pretty)
{
    char *text = NULL;
    CK_OK(mhub_config_to_json(c, pretty, &text));
    mhub_provider_config *back = NULL;
    CK_OK(mhub_config_from_json(text, strlen(text), "round trip", MHUB_CONFIG_STRICT, &back));
    ck_assert_msg(mhub_config_equal(c, back), "round trip changed the config:\n%s", text);
    free(text);
    return back;
}

/* ---- defaults and the table -------------------------------------------------------- */

START_TEST(test_defaults)
{
    test_config *t = new_test_config();
    const mhub_provider_config *c = &t->base;
    ck_assert_ptr_eq(c->type, &test_type);
    ck_assert_int_eq(c->tensor_model_parallel_size, 1);
    ck_assert_int_eq(c->pipeline_model_parallel_size, 1);
    ck_assert_int_eq(c->virtual_pipeline_model_parallel_size, 0);
    ck_assert_int_eq(c->context_parallel_size, 1);
    ck_assert_int_eq(c->expert_model_parallel_size, 1);
    ck_assert_int_eq(c->expert_tensor_parallel_size, 0);
    ck_assert(!c->sequence_parallel && !c->fp16 && !c->bf16);
    ck_assert_int_eq(c->params_dtype, MHUB_F32);
    ck_assert_int_eq(c->seed, 1234);
    ck_assert_int_eq(c->init_method, MHUB_INIT_METHOD_FAN_IN);
    ck_assert(c->init_method_std == 0.02);
    ck_assert(!c->use_cpu_initialization && !c->init_model_with_meta_device);
    /* The type's own defaults ran after the common ones. */
    ck_assert_int_eq(t->width, 64);
    ck_assert(t->scale == 1.0);
    ck_assert_int_eq(t->activation, ACT_GELU);
    ck_assert_int_eq(t->num_hidden, 2);
    ck_assert_int_eq(t->hidden[0], 32);
    CK_OK(mhub_config_validate(c));

    /* The defaults never touch the type pointer. */
    mhub_provider_config plain;
    memset(&plain, 0, sizeof plain);
    plain.type = &test_type;
    plain.seed = 99;
    mhub_provider_config_defaults(&plain);
    ck_assert_ptr_eq(plain.type, &test_type);
    ck_assert_int_eq(plain.seed, 1234);
    mhub_config_free(&t->base);
}
END_TEST

START_TEST(test_param_dtype)
{
    mhub_provider_config c;
    mhub_provider_config_defaults(&c);
    ck_assert_int_eq(mhub_provider_config_param_dtype(&c), MHUB_F32);
    c.params_dtype = MHUB_BF16;
    ck_assert_int_eq(mhub_provider_config_param_dtype(&c), MHUB_BF16);
    c.fp16 = true;
    ck_assert_int_eq(mhub_provider_config_param_dtype(&c), MHUB_F16);
    c.fp16 = false;
    c.bf16 = true;
    c.params_dtype = MHUB_F32;
    ck_assert_int_eq(mhub_provider_config_param_dtype(&c), MHUB_BF16);
}
END_TEST

START_TEST(test_common_table)
{
    static const char *const keys[] = {
        "tensor_model_parallel_size", "pipeline_model_parallel_size",
        "virtual_pipeline_model_parallel_size", "context_parallel_size",
        "expert_model_parallel_size", "expert_tensor_parallel_size", "sequence_parallel", "fp16",
        "bf16", "params_dtype", "seed", "init_method", "init_method_std",
        "use_cpu_initialization", "init_model_with_meta_device"};
    static const size_t offsets[] = {
        offsetof(mhub_provider_config, tensor_model_parallel_size),
        offsetof(mhub_provider_config, pipeline_model_parallel_size),
        offsetof(mhub_provider_config, virtual_pipeline_model_parallel_size),
        offsetof(mhub_provider_config, context_parallel_size),
        offsetof(mhub_provider_config, expert_model_parallel_size),
        offsetof(mhub_provider_config, expert_tensor_parallel_size),
        offsetof(mhub_provider_config, sequence_parallel),
        offsetof(mhub_provider_config, fp16),
        offsetof(mhub_provider_config, bf16),
        offsetof(mhub_provider_config, params_dtype),
        offsetof(mhub_provider_config, seed),
        offsetof(mhub_provider_config, init_method),
        offsetof(mhub_provider_config, init_method_std),
        offsetof(mhub_provider_config, use_cpu_initialization),
        offsetof(mhub_provider_config, init_model_with_meta_device)};
    int n = 0;
    const mhub_config_field *f = mhub_provider_common_fields(&n);
    ck_assert_int_eq(n, 15);
    for (int i = 0; i < n; i++) {
        ck_assert_str_eq(f[i].key, keys[i]);
        ck_assert_uint_eq(f[i].offset, offsets[i]);
        ck_assert_msg(f[i].help && f[i].help[0], "%s has no help", f[i].key);
    }
    ck_assert(f[2].nullable && f[2].null_value == 0);  /* vp */
    ck_assert(f[5].nullable && f[5].null_value == 0);  /* etp */
    ck_assert_int_eq(f[10].kind, MHUB_FIELD_INT64);
    ck_assert(f[10].min == 0 && f[10].max == 9007199254740992.0);
    ck_assert_int_eq(f[11].kind, MHUB_FIELD_ENUM);
    ck_assert_str_eq(f[11].choices[MHUB_INIT_METHOD_FAN_IN], "fan_in");
    ck_assert_str_eq(f[11].choices[MHUB_INIT_METHOD_NORMAL], "normal");
    ck_assert_ptr_null(f[11].choices[2]);
    ck_assert(f[0].min == 1 && f[0].max == 1048576);
}
END_TEST

/* ---- validation ---------------------------------------------------------------------- */

/* Set one thing on a fresh config and expect validate to name `needle`. */
#define EXPECT_INVALID(stmt, needle)                                  \
    do {                                                              \
        test_config *t_ = new_test_config();                          \
        mhub_provider_config *c_ = &t_->base;                         \
        (void)c_;                                                     \
        stmt;                                                         \
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_validate(c_));     \
        CK_MSG_HAS(needle);                                           \
        mhub_config_free(c_);                                         \
    } while (0)

START_TEST(test_validate_rules)
{
    EXPECT_INVALID(c_->pipeline_model_parallel_size = 0,
                   "pipeline_model_parallel_size = 0 is out of range [1, 1048576]");
    EXPECT_INVALID(c_->tensor_model_parallel_size = -3, "tensor_model_parallel_size = -3");
    EXPECT_INVALID(c_->context_parallel_size = (1 << 20) + 1, "context_parallel_size");
    EXPECT_INVALID(c_->expert_model_parallel_size = 0, "expert_model_parallel_size");
    EXPECT_INVALID(c_->expert_tensor_parallel_size = -1, "expert_tensor_parallel_size");
    EXPECT_INVALID(c_->virtual_pipeline_model_parallel_size = -2,
                   "virtual_pipeline_model_parallel_size");
    EXPECT_INVALID(c_->seed = -1, "seed = -1");
    EXPECT_INVALID(c_->seed = (int64_t)1 << 60, "seed");
    EXPECT_INVALID(c_->init_method_std = -0.5, "init_method_std");
    EXPECT_INVALID(c_->init_method_std = NAN, "init_method_std");
    EXPECT_INVALID(c_->init_method = (mhub_init_method)7, "init_method");
    EXPECT_INVALID(c_->params_dtype = (mhub_dtype)9, "params_dtype");
    /* Cross-field rules. */
    EXPECT_INVALID((c_->fp16 = true, c_->bf16 = true), "fp16");
    EXPECT_INVALID(c_->virtual_pipeline_model_parallel_size = 2,
                   "virtual_pipeline_model_parallel_size");
    EXPECT_INVALID(c_->sequence_parallel = true, "sequence_parallel");
    /* The type's fields and its own validate. */
    EXPECT_INVALID(t_->width = 0, "width");
    EXPECT_INVALID(t_->scale = INFINITY, "scale");
    EXPECT_INVALID(t_->activation = 3, "activation");
    EXPECT_INVALID(t_->num_hidden = 5, "hidden");
    EXPECT_INVALID(t_->hidden[1] = 0, "hidden[1]");
    EXPECT_INVALID((c_->tensor_model_parallel_size = 4, t_->width = 10), "width = 10");

    /* What the rules allow. */
    test_config *t = new_test_config();
    mhub_provider_config *c = &t->base;
    c->pipeline_model_parallel_size = 4;
    c->virtual_pipeline_model_parallel_size = 2;
    c->tensor_model_parallel_size = 2;
    c->sequence_parallel = true;
    c->bf16 = true;
    c->expert_tensor_parallel_size = 1;
    c->seed = (int64_t)1 << 53;
    t->num_hidden = 0;
    CK_OK(mhub_config_validate(c));
    mhub_config_free(c);

    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_validate(NULL));
    mhub_provider_config untyped;
    mhub_provider_config_defaults(&untyped);
    untyped.type = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_validate(&untyped));
}
END_TEST

/* ---- create, clone, equal -------------------------------------------------------------- */

START_TEST(test_clone_equal)
{
    test_config *a = new_test_config();
    mhub_provider_config *b = NULL;
    CK_OK(mhub_config_clone(&a->base, &b));
    ck_assert(mhub_config_equal(&a->base, b));
    ck_assert(mhub_config_equal(&a->base, &a->base));
    ck_assert(!mhub_config_equal(&a->base, NULL));

    /* Values past an array's count are slack, not values. */
    ((test_config *)b)->hidden[3] = 777;
    ck_assert(mhub_config_equal(&a->base, b));
    ((test_config *)b)->hidden[1] = 17;
    ck_assert(!mhub_config_equal(&a->base, b));
    ((test_config *)b)->hidden[1] = 16;
    ((test_config *)b)->num_hidden = 1;
    ck_assert(!mhub_config_equal(&a->base, b));
    ((test_config *)b)->num_hidden = 2;
    b->seed = 1;
    ck_assert(!mhub_config_equal(&a->base, b));
    b->seed = a->base.seed;
    ((test_config *)b)->scale = nextafter(1.0, 2.0);
    ck_assert(!mhub_config_equal(&a->base, b));
    ((test_config *)b)->scale = 1.0;
    ck_assert(mhub_config_equal(&a->base, b));

    /* Configs of different types are never equal. */
    mhub_provider_type other = test_type;
    other.name = "cfgtest_other";
    b->type = &other;
    ck_assert(!mhub_config_equal(&a->base, b));

    mhub_config_free(b);
    mhub_config_free(&a->base);
    mhub_config_free(NULL);

    static mhub_provider_config sentinel;
    mhub_provider_config *out = &sentinel;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_create(NULL, &out));
    ck_assert_ptr_null(out);
    mhub_provider_type tiny = test_type;
    tiny.config_size = 4;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_create(&tiny, &out));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_clone(NULL, &out));
    ck_assert_ptr_null(out);
}
END_TEST

/* ---- JSON ------------------------------------------------------------------------------- */

START_TEST(test_json_layout)
{
    test_config *t = new_test_config();
    t->base.params_dtype = MHUB_BF16;
    t->base.pipeline_model_parallel_size = 2;
    t->base.virtual_pipeline_model_parallel_size = 3;
    char *text = NULL;
    CK_OK(mhub_config_to_json(&t->base, true, &text));
    /* provider first, two-space indent, one key per line */
    ck_assert_msg(strncmp(text, "{\n  \"provider\": \"cfgtest\",\n", 27) == 0, "%s", text);
    ck_assert_ptr_null(strchr(text, '\t'));
    ck_assert_ptr_nonnull(strstr(text, "\n  \"tensor_model_parallel_size\": 1,\n"));
    ck_assert_ptr_nonnull(strstr(text, "\"virtual_pipeline_model_parallel_size\": 3,"));
    ck_assert_ptr_nonnull(strstr(text, "\"expert_tensor_parallel_size\": null,"));
    ck_assert_ptr_nonnull(strstr(text, "\"params_dtype\": \"bfloat16\","));
    ck_assert_ptr_nonnull(strstr(text, "\"init_method\": \"fan_in\","));
    ck_assert_ptr_nonnull(strstr(text, "\"init_method_std\": 0.02,"));
    ck_assert_ptr_nonnull(strstr(text, "\"seed\": 1234,"));
    ck_assert_ptr_nonnull(strstr(text, "\"activation\": \"gelu\","));
    ck_assert_ptr_nonnull(strstr(text, "\"hidden\": [32, 16],"));
    ck_assert_ptr_nonnull(strstr(text, "\"tied\": false\n}"));
    /* Common fields come before the type's. */
    ck_assert(strstr(text, "init_model_with_meta_device") < strstr(text, "\"width\""));
    free(text);

    CK_OK(mhub_config_to_json(&t->base, false, &text));
    ck_assert_msg(strncmp(text, "{\"provider\":\"cfgtest\",\"tensor_model_parallel_size\":1,", 53)
                      == 0, "%s", text);
    ck_assert_ptr_null(strchr(text, '\n'));
    free(text);

    /* A field outside its table cannot be written. */
    t->activation = 12;
    text = (char *)&text;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_to_json(&t->base, true, &text));
    CK_MSG_HAS("activation");
    ck_assert_ptr_null(text);
    mhub_config_free(&t->base);
}
END_TEST

START_TEST(test_json_round_trip)
{
    test_config *t = new_test_config();
    mhub_provider_config *c = &t->base;
    mhub_provider_config *back;

    back = round_trip(c, true);   /* the defaults */
    mhub_config_free(back);

    c->tensor_model_parallel_size = 8;
    c->pipeline_model_parallel_size = 4;
    c->virtual_pipeline_model_parallel_size = 2;
    c->context_parallel_size = 2;
    c->expert_model_parallel_size = 4;
    c->expert_tensor_parallel_size = 2;
    c->sequence_parallel = true;
    c->fp16 = true;
    c->params_dtype = MHUB_F16;
    c->init_method = MHUB_INIT_METHOD_NORMAL;
    c->init_method_std = 0.1;
    c->use_cpu_initialization = true;
    c->init_model_with_meta_device = true;
    t->width = 4096;
    t->scale = 1.0 / 3.0;
    t->activation = ACT_SILU;
    t->hidden[0] = 1, t->hidden[1] = 65536, t->hidden[2] = 7, t->hidden[3] = 3;
    t->num_hidden = 4;
    t->tied = true;
    static const int64_t seeds[] = {0, 1, 1234, ((int64_t)1 << 53) - 1, (int64_t)1 << 53};
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        c->seed = seeds[i];
        back = round_trip(c, i % 2 == 0);
        ck_assert_int_eq(back->seed, seeds[i]);
        mhub_config_free(back);
    }

    /* Doubles must come back bit for bit, not merely close. */
    const double values[] = {0.1, 1e-5, 0.02, 1.0 / 3.0, 2.0 / 3.0, -0.1, 1e-300, 5e-324,
                             123456.789, 1e6, -1e6, 0.0, nextafter(0.1, 1.0),
                             nextafter(0.02, 0.0), 0.1 + 0.2, 3.141592653589793};
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
        t->scale = values[i];
        c->init_method_std = fabs(values[i]) <= 1e3 ? fabs(values[i]) : 0.5;
        back = round_trip(c, i % 2 == 1);
        test_config *bt = (test_config *)back;
        ck_assert_msg(memcmp(&bt->scale, &values[i], sizeof(double)) == 0,
                      "scale %.17g came back as %.17g", values[i], bt->scale);
        ck_assert(back->init_method_std == c->init_method_std);
        mhub_config_free(back);
    }

    /* Empty arrays and the null forms. */
    t->num_hidden = 0;
    c->virtual_pipeline_model_parallel_size = 0;
    c->expert_tensor_parallel_size = 0;
    back = round_trip(c, true);
    ck_assert_int_eq(((test_config *)back)->num_hidden, 0);
    ck_assert_int_eq(back->virtual_pipeline_model_parallel_size, 0);
    mhub_config_free(back);
    mhub_config_free(c);
}
END_TEST

/* Every registered type (the built-in ones too) gets the same exact
 * round trip from its table alone. */
START_TEST(test_registered_types_round_trip)
{
    ck_assert_int_ge(mhub_provider_type_count(), 1);
    for (int i = 0; i < mhub_provider_type_count(); i++) {
        const mhub_provider_type *type = mhub_provider_type_at(i);
        mhub_provider_config *c = NULL, *back;
        CK_OK(mhub_config_create(type, &c));
        ck_assert_msg(mhub_config_validate(c) == MHUB_OK, "%s defaults: %s", type->name,
                      mhub_last_error());
        c->seed = ((int64_t)1 << 53) - 3;
        c->init_method_std = 1.0 / 3.0;
        back = round_trip(c, true);
        mhub_config_free(back);
        back = round_trip(c, false);
        mhub_config_free(back);
        mhub_config_free(c);
    }
}
END_TEST

START_TEST(test_json_reading)
{
    mhub_provider_config *c = NULL;
    /* Missing keys keep the defaults; integral numbers in any spelling. */
    const char *text = "{\"width\": 1.28e2, \"provider\": \"cfgtest\", \"seed\": 0,"
                       " \"params_dtype\": \"bf16\", \"hidden\": [],"
                       " \"virtual_pipeline_model_parallel_size\": null}";
    CK_OK(mhub_config_from_json(text, strlen(text), "inline", MHUB_CONFIG_STRICT, &c));
    test_config *t = (test_config *)c;
    ck_assert_int_eq(t->width, 128);
    ck_assert_int_eq(c->seed, 0);
    ck_assert_int_eq(c->params_dtype, MHUB_BF16);
    ck_assert_int_eq(t->num_hidden, 0);
    ck_assert_int_eq(c->tensor_model_parallel_size, 1);
    ck_assert(t->scale == 1.0 && t->activation == ACT_GELU);
    mhub_config_free(c);

    /* Only `len` bytes are read: what follows need not be JSON or NUL. */
    const char buf[] = "{\"provider\":\"cfgtest\",\"width\":32}GARBAGE";
    CK_OK(mhub_config_from_json(buf, sizeof buf - 1 - 7, "prefix", MHUB_CONFIG_STRICT, &c));
    ck_assert_int_eq(((test_config *)c)->width, 32);
    mhub_config_free(c);

    /* A byte-order mark is tolerated. */
    const char bom[] = "\xEF\xBB\xBF{\"provider\": \"cfgtest\"}";
    CK_OK(mhub_config_from_json(bom, sizeof bom - 1, "bom", MHUB_CONFIG_STRICT, &c));
    mhub_config_free(c);

    /* Strict: an unknown key fails naming the key and the source. */
    const char *unknown = "{\"provider\": \"cfgtest\", \"width\": 32, \"colour\": \"blue\"}";
    static mhub_provider_config sentinel;
    c = &sentinel;
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_from_json(unknown, strlen(unknown), "my.json",
                                                   MHUB_CONFIG_STRICT, &c));
    ck_assert_ptr_null(c);
    CK_MSG_HAS("my.json");
    CK_MSG_HAS("'colour'");

    /* Lenient: a warning on stderr, the rest is read. */
    fflush(stderr);
    FILE *capture = tmpfile();
    ck_assert_ptr_nonnull(capture);
    int saved = dup(fileno(stderr));
    ck_assert_int_ge(saved, 0);
    ck_assert_int_ge(dup2(fileno(capture), fileno(stderr)), 0);
    mhub_status s = mhub_config_from_json(unknown, strlen(unknown), "my.json",
                                          MHUB_CONFIG_LENIENT, &c);
    fflush(stderr);
    dup2(saved, fileno(stderr));
    close(saved);
    CK_OK(s);
    ck_assert_int_eq(((test_config *)c)->width, 32);
    mhub_config_free(c);
    char warning[256] = {0};
    rewind(capture);
    ck_assert_uint_gt(fread(warning, 1, sizeof warning - 1, capture), 0);
    fclose(capture);
    ck_assert_str_eq(warning, "warning: my.json: unknown key 'colour' ignored\n");

    /* Lenient still refuses wrong values of known keys. */
    const char *bad = "{\"provider\": \"cfgtest\", \"width\": \"wide\"}";
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_from_json(bad, strlen(bad), "lenient.json",
                                                   MHUB_CONFIG_LENIENT, &c));
    CK_MSG_HAS("width");

    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_from_json(NULL, 0, "x", MHUB_CONFIG_STRICT, &c));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_from_json("{}", 2, "x", MHUB_CONFIG_STRICT, NULL));
}
END_TEST

/* ---- overrides: apply_json and set ---------------------------------------------------- */

START_TEST(test_apply_json)
{
    test_config *t = new_test_config();
    mhub_provider_config *c = &t->base;
    CK_OK(mhub_config_apply_json(c, "{\"pipeline_model_parallel_size\": 4, \"hidden\": [8],"
                                    " \"provider\": \"cfgtest\"}", "overrides.json",
                                 MHUB_CONFIG_STRICT));
    ck_assert_int_eq(c->pipeline_model_parallel_size, 4);
    ck_assert_int_eq(t->num_hidden, 1);
    ck_assert_int_eq(t->hidden[0], 8);
    ck_assert_int_eq(t->width, 64); /* untouched */

    mhub_provider_config *before = NULL;
    CK_OK(mhub_config_clone(c, &before));
    /* A failure half way (after a good key) changes nothing. */
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_apply_json(c, "{\"width\": 128, \"scale\": \"big\"}",
                                                    "overrides.json", MHUB_CONFIG_STRICT));
    CK_MSG_HAS("overrides.json");
    CK_MSG_HAS("scale");
    ck_assert(mhub_config_equal(c, before));
    /* So does one that fails validation as a whole. */
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_config_apply_json(c, "{\"fp16\": true, \"bf16\": true}", "o", MHUB_CONFIG_STRICT));
    ck_assert(mhub_config_equal(c, before));
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_apply_json(c, "{\"provider\": \"mlp\"}", "o",
                                                    MHUB_CONFIG_STRICT));
    CK_MSG_HAS("provider");
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_apply_json(c, "{\"provider\": 1}", "o",
                                                    MHUB_CONFIG_STRICT));
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_apply_json(c, "[1]", "o", MHUB_CONFIG_STRICT));
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_apply_json(c, "{\"nope\": 1}", "o", MHUB_CONFIG_STRICT));
    CK_MSG_HAS("nope");
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_apply_json(c, "{\"width\": 8, \"width\": 16}", "o",
                                                    MHUB_CONFIG_STRICT));
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_apply_json(c, "{\"width\": 8", "o", MHUB_CONFIG_STRICT));
    ck_assert(mhub_config_equal(c, before));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_apply_json(c, NULL, "o", MHUB_CONFIG_STRICT));
    mhub_config_free(before);
    mhub_config_free(c);
}
END_TEST

START_TEST(test_set)
{
    test_config *t = new_test_config();
    mhub_provider_config *c = &t->base;
    CK_OK(mhub_config_set(c, "width", "128"));
    ck_assert_int_eq(t->width, 128);
    CK_OK(mhub_config_set(c, "params_dtype", "bfloat16")); /* a bare word */
    ck_assert_int_eq(c->params_dtype, MHUB_BF16);
    CK_OK(mhub_config_set(c, "params_dtype", "\"float16\""));
    ck_assert_int_eq(c->params_dtype, MHUB_F16);
    CK_OK(mhub_config_set(c, "init_method", "normal"));
    ck_assert_int_eq(c->init_method, MHUB_INIT_METHOD_NORMAL);
    CK_OK(mhub_config_set(c, "scale", "0.1"));
    ck_assert(t->scale == 0.1);
    CK_OK(mhub_config_set(c, "hidden", "[8, 8, 8]"));
    ck_assert_int_eq(t->num_hidden, 3);
    CK_OK(mhub_config_set(c, "tied", "true"));
    ck_assert(t->tied);
    CK_OK(mhub_config_set(c, "pipeline_model_parallel_size", "2"));
    CK_OK(mhub_config_set(c, "virtual_pipeline_model_parallel_size", "4"));
    CK_OK(mhub_config_set(c, "virtual_pipeline_model_parallel_size", "null"));
    ck_assert_int_eq(c->virtual_pipeline_model_parallel_size, 0);
    CK_OK(mhub_config_set(c, "seed", "9007199254740992"));
    ck_assert_int_eq(c->seed, (int64_t)1 << 53);

    mhub_provider_config *before = NULL;
    CK_OK(mhub_config_clone(c, &before));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_set(c, "colour", "blue"));
    CK_MSG_HAS("'colour'");
    CK_MSG_HAS("width"); /* the valid keys are listed */
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "tensor_model_parallel_size", "abc"));
    CK_MSG_HAS("tensor_model_parallel_size");
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "tensor_model_parallel_size", "2.5"));
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "seed", "9007199254740993"));
    CK_MSG_HAS("2^53");
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "hidden", "[1, 2"));
    CK_MSG_HAS("not valid JSON");
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "seed", "1e309"));
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "params_dtype", "int8"));
    CK_MSG_HAS("params_dtype");
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "hidden", "[1,2,3,4,5]"));
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "tied", "yes"));
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_set(c, "width", ""));
    ck_assert(mhub_config_equal(c, before)); /* failed sets change nothing */
    mhub_config_free(before);

    /* The whole config is validated after the one field is set. */
    c->bf16 = true;
    CK_OK(mhub_config_clone(c, &before));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_set(c, "fp16", "true"));
    CK_MSG_HAS("fp16");
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_set(c, "sequence_parallel", "true"));
    CK_MSG_HAS("sequence_parallel");
    ck_assert(mhub_config_equal(c, before));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_set(c, NULL, "1"));
    mhub_config_free(before);
    mhub_config_free(c);
}
END_TEST

/* ---- files ---------------------------------------------------------------------------- */

START_TEST(test_save_from_pretrained)
{
    char *dir = make_tmpdir();
    char *sub = join(dir, "model"); /* created by save_pretrained */
    test_config *t = new_test_config();
    mhub_provider_config *c = &t->base;
    c->seed = 42;
    t->scale = 1.0 / 3.0;
    CK_OK(mhub_config_save_pretrained(c, sub, NULL, NULL));

    char *file = join(sub, MHUB_CONFIG_NAME);
    char *text = read_all(file);
    size_t n = strlen(text);
    ck_assert_msg(n > 2 && text[0] == '{' && text[n - 2] == '}' && text[n - 1] == '\n', "%s",
                  text);
    free(text);

    mhub_provider_config *back = NULL;
    CK_OK(mhub_config_from_pretrained(sub, MHUB_CONFIG_STRICT, NULL, &back));
    ck_assert(mhub_config_equal(c, back));
    mhub_config_free(back);
    /* The file path itself works too. */
    CK_OK(mhub_config_from_pretrained(file, MHUB_CONFIG_STRICT, NULL, &back));
    ck_assert(mhub_config_equal(c, back));
    mhub_config_free(back);

    /* Overwrite, a custom name, a case-insensitive format. */
    t->width = 256;
    CK_OK(mhub_config_save_pretrained(c, sub, "JSON", "alt"));
    CK_OK(mhub_config_from_pretrained(sub, MHUB_CONFIG_STRICT, "alt", &back));
    ck_assert_int_eq(((test_config *)back)->width, 256);
    mhub_config_free(back);
    CK_OK(mhub_config_save_pretrained(c, sub, "json", NULL));
    CK_OK(mhub_config_from_pretrained(sub, MHUB_CONFIG_STRICT, NULL, &back));
    ck_assert(mhub_config_equal(c, back));
    mhub_config_free(back);

    /* No temporary files are left behind. */
    char *listing[8] = {0};
    int count = 0;
    DIR *d = opendir(sub);
    ck_assert_ptr_nonnull(d);
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            ck_assert_int_lt(count, 8);
            listing[count++] = strdup(e->d_name);
        }
    closedir(d);
    ck_assert_int_eq(count, 2);
    for (int i = 0; i < count; i++) {
        ck_assert_msg(!strcmp(listing[i], "mhub_model.json") || !strcmp(listing[i], "alt.json"),
                      "unexpected %s", listing[i]);
        free(listing[i]);
    }

    /* Refusals. */
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_config_save_pretrained(c, sub, "yaml", NULL));
    CK_MSG_HAS("yaml");
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_save_pretrained(c, sub, NULL, "config.json"));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_save_pretrained(c, sub, NULL, "a/b"));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_save_pretrained(c, sub, NULL, ""));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_from_pretrained(sub, MHUB_CONFIG_STRICT,
                                                               "alt.json", &back));
    CK_FAILS(MHUB_ERR_IO, mhub_config_save_pretrained(c, file, NULL, NULL)); /* a file */
    CK_MSG_HAS(file);
    char *deep = join(dir, "no/such/parent");
    CK_FAILS(MHUB_ERR_IO, mhub_config_save_pretrained(c, deep, NULL, NULL));
    CK_MSG_HAS(deep);
    free(deep);
    c->fp16 = c->bf16 = true; /* an invalid config is never written */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_save_pretrained(c, sub, NULL, "bad"));
    CK_FAILS(MHUB_ERR_IO, mhub_config_from_pretrained(sub, MHUB_CONFIG_STRICT, "bad", &back));
    CK_MSG_HAS("bad.json");
    ck_assert_ptr_null(back);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_save_pretrained(NULL, sub, NULL, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_config_from_pretrained(NULL, MHUB_CONFIG_STRICT, NULL,
                                                               &back));

    mhub_config_free(c);
    free(file);
    free(sub);
    remove_tree(dir);
}
END_TEST

/* ---- hostile config files --------------------------------------------------------------- */

#define P "{\"provider\": \"cfgtest\", "

typedef struct hostile {
    const char *name;       /* the case, and the file's name */
    const char *text;       /* NULL: built by the test (see hostile_text) */
    size_t len;             /* 0: strlen(text) */
    mhub_status code;
    const char *needle;     /* besides the file name, the message must say this */
} hostile;

static const char nul_text[] = P "\"width\": 8,\0 \"seed\": 1}";

static const hostile hostiles[] = {
    {"truncated", P "\"width\": 6", 0, MHUB_ERR_PARSE, "truncated"},
    {"truncated_in_string", P "\"wid", 0, MHUB_ERR_PARSE, "not valid JSON"},
    {"empty", "", 0, MHUB_ERR_PARSE, "empty"},
    {"whitespace_only", " \n\t\r\n   ", 0, MHUB_ERR_PARSE, "empty"},
    {"top_level_array", "[{\"provider\": \"cfgtest\"}]", 0, MHUB_ERR_PARSE, "JSON object"},
    {"top_level_string", "\"cfgtest\"", 0, MHUB_ERR_PARSE, "JSON object"},
    {"top_level_number", "42", 0, MHUB_ERR_PARSE, "JSON object"},
    {"string_for_bool", P "\"fp16\": \"yes\"}", 0, MHUB_ERR_PARSE, "fp16"},
    {"number_for_bool", P "\"tied\": 1}", 0, MHUB_ERR_PARSE, "tied"},
    {"string_for_int", P "\"width\": \"64\"}", 0, MHUB_ERR_PARSE, "width"},
    {"float_for_int", P "\"width\": 2.5}", 0, MHUB_ERR_PARSE, "width = 2.5 is not an integer"},
    {"negative_size", P "\"tensor_model_parallel_size\": -2}", 0, MHUB_ERR_PARSE,
     "tensor_model_parallel_size = -2"},
    {"zero_pp", P "\"pipeline_model_parallel_size\": 0}", 0, MHUB_ERR_PARSE,
     "pipeline_model_parallel_size = 0 is out of range [1, 1048576]"},
    {"zero_etp", P "\"expert_tensor_parallel_size\": 0}", 0, MHUB_ERR_PARSE,
     "expert_tensor_parallel_size"},
    {"huge_1e309", P "\"seed\": 1e309}", 0, MHUB_ERR_PARSE, "seed is not a finite number"},
    {"huge_double", P "\"init_method_std\": -1e309}", 0, MHUB_ERR_PARSE, "init_method_std"},
    {"int_2_pow_60", P "\"seed\": 1152921504606846976}", 0, MHUB_ERR_PARSE, "seed"},
    {"int_2_pow_53_plus_2", P "\"seed\": 9007199254740994}", 0, MHUB_ERR_PARSE, "2^53"},
    {"negative_seed", P "\"seed\": -1}", 0, MHUB_ERR_PARSE, "seed = -1"},
    {"many_digits", P "\"width\": 1000000000000000000000000000000000000000000000000000000000000"
                      "000000000000000000000000000000000000000}", 0, MHUB_ERR_PARSE,
     "width = 1000000000"},
    {"int_2_pow_53_plus_1", P "\"seed\": 9007199254740993}", 0, MHUB_ERR_PARSE,
     "seed = 9007199254740993 is beyond 2^53"},
    {"big_int_in_array", P "\"hidden\": [8, -00000000000000000000009007199254740993]}", 0,
     MHUB_ERR_PARSE, NULL},
    {"nan_literal", P "\"scale\": NaN}", 0, MHUB_ERR_PARSE, "not valid JSON"},
    {"unknown_provider", "{\"provider\": \"nosuch\", \"width\": 8}", 0, MHUB_ERR_PARSE,
     "unknown provider 'nosuch'"},
    {"missing_provider", "{\"width\": 8}", 0, MHUB_ERR_PARSE, "missing key 'provider'"},
    {"provider_not_string", "{\"provider\": [\"cfgtest\"]}", 0, MHUB_ERR_PARSE,
     "provider must be a string"},
    {"provider_wrong_case", "{\"Provider\": \"cfgtest\"}", 0, MHUB_ERR_PARSE, "provider"},
    {"unknown_key", P "\"widht\": 8}", 0, MHUB_ERR_PARSE, "unknown key 'widht'"},
    {"duplicate_key", P "\"width\": 8, \"seed\": 3, \"width\": 16}", 0, MHUB_ERR_PARSE,
     "duplicate key 'width'"},
    {"duplicate_provider", P "\"provider\": \"cfgtest\"}", 0, MHUB_ERR_PARSE,
     "duplicate key 'provider'"},
    {"deep_nesting", NULL, 0, MHUB_ERR_PARSE, "nesting"},
    {"nested_array_value", P "\"width\": [[[[8]]]]}", 0, MHUB_ERR_PARSE,
     "width must be an integer"},
    {"nested_object_value", P "\"fp16\": {\"value\": true}}", 0, MHUB_ERR_PARSE,
     "fp16 must be true or false, not an object"},
    {"null_for_int", P "\"width\": null}", 0, MHUB_ERR_PARSE, "width"},
    {"non_utf8", P "\"width\": 8, \"\xff\xfe\": 1}", 0, MHUB_ERR_PARSE, "UTF-8"},
    {"overlong_utf8", P "\"width\": 8, \"x\xc0\xaf\": 1}", 0, MHUB_ERR_PARSE, "UTF-8"},
    {"utf8_surrogate", P "\"width\": 8, \"\xed\xa0\x80\": 1}", 0, MHUB_ERR_PARSE, "UTF-8"},
    {"lone_surrogate_escape", P "\"width\": 8, \"k\": \"\\ud800\"}", 0, MHUB_ERR_PARSE,
     "not valid JSON"},
    {"embedded_nul", nul_text, sizeof nul_text - 1, MHUB_ERR_PARSE, "NUL byte"},
    {"escaped_nul_key", P "\"width\\u0000junk\": 8}", 0, MHUB_ERR_PARSE, "\\u0000"},
    {"trailing_text", P "\"width\": 8} {\"x\": 1}", 0, MHUB_ERR_PARSE, "after the JSON value"},
    {"trailing_comma", P "\"width\": 8,}", 0, MHUB_ERR_PARSE, "line 1"},
    {"fp16_and_bf16", P "\"fp16\": true, \"bf16\": true}", 0, MHUB_ERR_INVALID_ARG, "bf16"},
    {"vp_without_pp", P "\"virtual_pipeline_model_parallel_size\": 2}", 0,
     MHUB_ERR_INVALID_ARG, "virtual_pipeline_model_parallel_size"},
    {"sp_without_tp", P "\"sequence_parallel\": true}", 0, MHUB_ERR_INVALID_ARG,
     "sequence_parallel"},
    {"type_rule", P "\"tensor_model_parallel_size\": 4, \"width\": 10}", 0,
     MHUB_ERR_INVALID_ARG, "width = 10"},
    {"array_too_long", P "\"hidden\": [1, 2, 3, 4, 5]}", 0, MHUB_ERR_PARSE, "hidden"},
    {"array_element_range", P "\"hidden\": [8, 0]}", 0, MHUB_ERR_PARSE, "hidden[1] = 0"},
    {"array_element_type", P "\"hidden\": [8, \"8\"]}", 0, MHUB_ERR_PARSE, "hidden[1]"},
    {"array_element_float", P "\"hidden\": [8.5]}", 0, MHUB_ERR_PARSE, "hidden[0]"},
    {"scalar_for_array", P "\"hidden\": 8}", 0, MHUB_ERR_PARSE, "hidden must be an array"},
    {"bad_enum", P "\"init_method\": \"xavier\"}", 0, MHUB_ERR_PARSE,
     "init_method = 'xavier' is not one of: fan_in, normal"},
    {"bad_dtype", P "\"params_dtype\": \"int8\"}", 0, MHUB_ERR_PARSE, "params_dtype"},
    {"number_for_dtype", P "\"params_dtype\": 1}", 0, MHUB_ERR_PARSE, "params_dtype"},
    {"directory_as_file", NULL, 0, MHUB_ERR_IO, "is a directory"},
    {"nonexistent_file", NULL, 0, MHUB_ERR_IO, "No such file"},
    {"oversized_file", NULL, 0, MHUB_ERR_IO, "16 MiB"},
};

#define NUM_HOSTILE ((int)(sizeof hostiles / sizeof hostiles[0]))

/* Write case h into dir; returns the path to load (malloc'd). */
static char *hostile_file(const hostile *h, const char *dir)
{
    char name[128];
    snprintf(name, sizeof name, "%s.json", h->name);
    char *path = join(dir, name);
    if (h->text) {
        write_bytes(path, h->text, h->len ? h->len : strlen(h->text));
    } else if (strcmp(h->name, "deep_nesting") == 0) {
        /* 100000 '[' as a value: far past any sane nesting and cJSON's. */
        size_t depth = 100000, pre = strlen(P "\"width\": ");
        char *t = malloc(pre + depth + 2);
        ck_assert_ptr_nonnull(t);
        memcpy(t, P "\"width\": ", pre);
        memset(t + pre, '[', depth);
        t[pre + depth] = '}';
        write_bytes(path, t, pre + depth + 1);
        free(t);
    } else if (strcmp(h->name, "directory_as_file") == 0) {
        /* from_pretrained(dir) expects dir/mhub_model.json to be a file. */
        ck_assert_int_eq(mkdir(path, 0755), 0);
        char *inner = join(path, MHUB_CONFIG_NAME);
        ck_assert_int_eq(mkdir(inner, 0755), 0);
        free(inner);
    } else if (strcmp(h->name, "oversized_file") == 0) {
        /* Valid JSON padded past the limit: refused before parsing. */
        size_t n = ((size_t)16 << 20) + 64;
        char *t = malloc(n);
        ck_assert_ptr_nonnull(t);
        memset(t, ' ', n);
        memcpy(t, "{\"provider\": \"cfgtest\"}", 23);
        write_bytes(path, t, n);
        free(t);
    }
    return path; /* nonexistent_file: never written */
}

START_TEST(test_hostile_file)
{
    const hostile *h = &hostiles[_i];
    char *dir = make_tmpdir();
    char *path = hostile_file(h, dir);
    static mhub_provider_config sentinel;
    mhub_provider_config *c = &sentinel; /* must come back NULL */
    mhub_clear_error();
    mhub_status s = mhub_config_from_pretrained(path, MHUB_CONFIG_STRICT, NULL, &c);
    const char *msg = mhub_last_error();
    ck_assert_msg(s == h->code, "%s: got %s, expected %s (%s)", h->name, mhub_status_name(s),
                  mhub_status_name(h->code), msg);
    ck_assert_ptr_null(c);
    ck_assert_msg(msg[0] != '\0', "%s left no message", h->name);
    if (getenv("MHUB_TEST_VERBOSE")) /* to read the messages as a user would */
        printf("%-24s %s\n", h->name, msg);
    /* The message names the file (inside the directory when one was given)... */
    ck_assert_msg(strstr(msg, path) != NULL, "%s: message '%s' does not name %s", h->name, msg,
                  path);
    /* ...and the problem. */
    if (h->needle)
        ck_assert_msg(strstr(msg, h->needle) != NULL, "%s: message '%s' does not mention '%s'",
                      h->name, msg, h->needle);
    /* Lenient mode is no laxer about anything but unknown keys. */
    if (strcmp(h->name, "unknown_key") != 0) {
        s = mhub_config_from_pretrained(path, MHUB_CONFIG_LENIENT, NULL, &c);
        ck_assert_msg(s == h->code, "%s (lenient): got %s", h->name, mhub_status_name(s));
        ck_assert_ptr_null(c);
    }
    free(path);
    remove_tree(dir);
}
END_TEST

START_TEST(test_hostile_count)
{
    /* The brief: at least 22 distinct malformed or hostile files. */
    ck_assert_int_ge(NUM_HOSTILE, 22);
    /* Unknown provider names the registered ones. */
    const char *t = "{\"provider\": \"nosuch\"}";
    mhub_provider_config *c = NULL;
    CK_FAILS(MHUB_ERR_PARSE, mhub_config_from_json(t, strlen(t), "s", MHUB_CONFIG_STRICT, &c));
    CK_MSG_HAS("cfgtest");
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_param_dtype);
    tcase_add_test(tc, test_common_table);
    tcase_add_test(tc, test_validate_rules);
    tcase_add_test(tc, test_clone_equal);
    tcase_add_test(tc, test_json_layout);
    tcase_add_test(tc, test_json_round_trip);
    tcase_add_test(tc, test_registered_types_round_trip);
    tcase_add_test(tc, test_json_reading);
    tcase_add_test(tc, test_apply_json);
    tcase_add_test(tc, test_set);
    tcase_add_test(tc, test_save_from_pretrained);
    tcase_add_loop_test(tc, test_hostile_file, 0, NUM_HOSTILE);
    tcase_add_test(tc, test_hostile_count);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return mhub_test_main(config_suite());
}
