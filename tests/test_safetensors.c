/* test_safetensors.c - the safetensors reader and writer: round trips
 * (f32, bf16, f16, scalars, empty tensors, metadata), f32 conversion,
 * lookups, writer errors, a golden file written by Hugging Face's own
 * library (tests/data/safetensors/tiny.safetensors, made by make_tiny.py
 * there) read and reproduced byte for byte, and hostile files, each an
 * error naming the file (and the tensor) without a crash. */
#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

static char dir[] = "/tmp/mhub_test_safetensors_XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(dir)); }

static void teardown(void)
{
    ck_assert_int_eq(mhub_test_remove_tree(dir), 0);
    strcpy(dir, "/tmp/mhub_test_safetensors_XXXXXX");
}

static void scratch(const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s", dir, name);
}

/* tests/data/safetensors/<name> under $top_srcdir (make check sets it),
 * else beside this source file. */
static void fixture(const char *name, char *out, size_t len)
{
    char rel[256];
    snprintf(rel, sizeof rel, "safetensors/%s", name);
    mhub_test_data_path(rel, out, len);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    ck_assert_int_ge(n, 0);
    rewind(f);
    unsigned char *buf = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *x = slurp(a, &na), *y = slurp(b, &nb);
    ck_assert_msg(na == nb, "%s is %zu bytes, %s is %zu", a, na, b, nb);
    for (size_t i = 0; i < na; i++)
        ck_assert_msg(x[i] == y[i], "%s and %s differ at byte %zu", a, b, i);
    free(x);
    free(y);
}

/* Write every tensor and the metadata of `st` to `path` again. */
static void rewrite(const mhub_safetensors *st, const char *path)
{
    int n = mhub_safetensors_count(st);
    mhub_safetensors_entry *e = calloc((size_t)n + 1, sizeof *e);
    mhub_safetensors_tensor *t = calloc((size_t)n + 1, sizeof *t);
    ck_assert(e && t);
    for (int i = 0; i < n; i++) {
        CK_OK(mhub_safetensors_info(st, i, &t[i]));
        e[i] = (mhub_safetensors_entry){.name = t[i].name, .dtype_name = t[i].dtype_name,
                                        .ndim = t[i].ndim, .shape = t[i].shape,
                                        .data = t[i].data};
    }
    CK_OK(mhub_safetensors_write(path, e, n, mhub_safetensors_metadata_kv(st)));
    free(e);
    free(t);
}

static void assert_shape(const mhub_safetensors_tensor *t, int ndim, const int64_t *shape)
{
    ck_assert_int_eq(t->ndim, ndim);
    for (int i = 0; i < ndim; i++)
        ck_assert_int_eq(t->shape[i], shape[i]);
}

/* ---- round trips -------------------------------------------------------------- */

START_TEST(test_round_trip)
{
    float w[6] = {1.5f, -2.0f, 0.1f, 3e-5f, -1e8f, 0.0f};
    uint16_t b[3], h[4];
    for (int i = 0; i < 3; i++)
        b[i] = mhub_f32_to_bf16(0.3f * (float)i - 1.0f);
    for (int i = 0; i < 4; i++)
        h[i] = mhub_f32_to_f16(0.7f * (float)i + 0.01f);
    float scalar = 42.5f;
    int64_t sw[2] = {2, 3}, sb[1] = {3}, sh[2] = {2, 2}, se[2] = {0, 5};
    const mhub_safetensors_entry entries[] = {
        {.name = "h", .dtype = MHUB_F16, .ndim = 2, .shape = sh, .data = h},
        {.name = "w", .dtype = MHUB_F32, .ndim = 2, .shape = sw, .data = w},
        {.name = "b", .dtype = MHUB_BF16, .ndim = 1, .shape = sb, .data = b},
        {.name = "s", .dtype = MHUB_F32, .ndim = 0, .data = &scalar},
        {.name = "empty", .dtype = MHUB_F32, .ndim = 2, .shape = se},
    };
    const char *meta[] = {"format", "pt", "note", "caf\xc3\xa9 \"quoted\"\n", NULL};
    char path[256], again[256];
    scratch("a.safetensors", path, sizeof path);
    CK_OK(mhub_safetensors_write(path, entries, 5, meta));

    mhub_safetensors *st;
    CK_OK(mhub_safetensors_open(path, &st));
    ck_assert_str_eq(mhub_safetensors_path(st), path);
    ck_assert_int_eq(mhub_safetensors_count(st), 5);
    /* data order: F32 tensors by name, then BF16, then F16 */
    const char *order[] = {"empty", "s", "w", "b", "h"};
    mhub_safetensors_tensor t;
    for (int i = 0; i < 5; i++) {
        CK_OK(mhub_safetensors_info(st, i, &t));
        ck_assert_str_eq(t.name, order[i]);
        ck_assert_int_eq(mhub_safetensors_find(st, order[i]), i);
    }
    CK_OK(mhub_safetensors_info(st, mhub_safetensors_find(st, "w"), &t));
    ck_assert_str_eq(t.dtype_name, "F32");
    ck_assert(t.has_mhub_dtype);
    ck_assert_int_eq(t.dtype, MHUB_F32);
    assert_shape(&t, 2, sw);
    ck_assert_int_eq(t.numel, 6);
    ck_assert_uint_eq(t.nbytes, sizeof w);
    ck_assert_mem_eq(t.data, w, sizeof w);
    ck_assert_uint_eq(t.file_offset % 4, 0); /* the padding aligns the data */
    CK_OK(mhub_safetensors_info(st, mhub_safetensors_find(st, "b"), &t));
    ck_assert_str_eq(t.dtype_name, "BF16");
    ck_assert_int_eq(t.dtype, MHUB_BF16);
    ck_assert_mem_eq(t.data, b, sizeof b);
    CK_OK(mhub_safetensors_info(st, mhub_safetensors_find(st, "h"), &t));
    ck_assert_str_eq(t.dtype_name, "F16");
    ck_assert_int_eq(t.dtype, MHUB_F16);
    assert_shape(&t, 2, sh);
    ck_assert_mem_eq(t.data, h, sizeof h);
    CK_OK(mhub_safetensors_info(st, mhub_safetensors_find(st, "s"), &t));
    ck_assert_int_eq(t.ndim, 0);
    ck_assert_int_eq(t.numel, 1);
    ck_assert_mem_eq(t.data, &scalar, 4);
    CK_OK(mhub_safetensors_info(st, mhub_safetensors_find(st, "empty"), &t));
    assert_shape(&t, 2, se);
    ck_assert_int_eq(t.numel, 0);
    ck_assert_uint_eq(t.nbytes, 0);

    ck_assert_str_eq(mhub_safetensors_metadata(st, "format"), "pt");
    ck_assert_str_eq(mhub_safetensors_metadata(st, "note"), "caf\xc3\xa9 \"quoted\"\n");
    ck_assert_ptr_null(mhub_safetensors_metadata(st, "missing"));
    const char *const *kv = mhub_safetensors_metadata_kv(st);
    for (int i = 0; i < 4; i++)
        ck_assert_str_eq(kv[i], meta[i]);
    ck_assert_ptr_null(kv[4]);

    /* read and written again: the same bytes */
    scratch("b.safetensors", again, sizeof again);
    rewrite(st, again);
    mhub_safetensors_close(st);
    assert_same_file(path, again);

    /* 8 + N is a multiple of 8, N padded with spaces */
    size_t len;
    unsigned char *raw = slurp(path, &len);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | raw[i];
    ck_assert_uint_eq((8 + n) % 8, 0);
    ck_assert_int_eq(raw[8], '{');
    free(raw);
}
END_TEST

START_TEST(test_metadata_and_empty_files)
{
    char path[256], again[256];
    mhub_safetensors *st;
    /* no tensors, no metadata: the header "{}" and padding only */
    scratch("none.safetensors", path, sizeof path);
    CK_OK(mhub_safetensors_write(path, NULL, 0, NULL));
    size_t len;
    unsigned char *raw = slurp(path, &len);
    ck_assert_uint_eq(len, 16);
    ck_assert_mem_eq(raw, "\x08\0\0\0\0\0\0\0{}      ", 16);
    free(raw);
    CK_OK(mhub_safetensors_open(path, &st));
    ck_assert_int_eq(mhub_safetensors_count(st), 0);
    ck_assert_ptr_null(mhub_safetensors_metadata_kv(st));
    ck_assert_int_eq(mhub_safetensors_find(st, "x"), -1);
    mhub_safetensors_close(st);
    /* an empty metadata object stays one */
    const char *empty[] = {NULL};
    CK_OK(mhub_safetensors_write(path, NULL, 0, empty));
    CK_OK(mhub_safetensors_open(path, &st));
    ck_assert_ptr_nonnull(mhub_safetensors_metadata_kv(st));
    ck_assert_ptr_null(mhub_safetensors_metadata_kv(st)[0]);
    scratch("again.safetensors", again, sizeof again);
    rewrite(st, again);
    /* over the open file itself: the rename leaves the map intact */
    rewrite(st, path);
    ck_assert_ptr_null(mhub_safetensors_metadata_kv(st)[0]);
    mhub_safetensors_close(st);
    assert_same_file(path, again);
    mhub_safetensors_close(NULL);
}
END_TEST

/* Many tensors: the entry array grows, find searches the name index. */
START_TEST(test_many_tensors)
{
    enum { N = 100 };
    mhub_safetensors_entry e[N];
    char names[N][16];
    int64_t shape[N];
    static float data[N * (N + 1) / 2];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "t%03d", (i * 37) % N);
        shape[i] = i;
        e[i] = (mhub_safetensors_entry){.name = names[i], .ndim = 1, .shape = &shape[i],
                                        .data = data};
    }
    for (int i = 0; i < N * (N + 1) / 2; i++)
        data[i] = (float)i;
    char path[256];
    scratch("many.safetensors", path, sizeof path);
    CK_OK(mhub_safetensors_write(path, e, N, NULL));
    mhub_safetensors *st;
    CK_OK(mhub_safetensors_open(path, &st));
    ck_assert_int_eq(mhub_safetensors_count(st), N);
    mhub_safetensors_tensor t;
    for (int i = 0; i < N; i++) {
        int k = mhub_safetensors_find(st, names[i]);
        ck_assert_int_ge(k, 0);
        CK_OK(mhub_safetensors_info(st, k, &t));
        ck_assert_str_eq(t.name, names[i]);
        ck_assert_int_eq(t.shape[0], i);
        ck_assert_mem_eq(t.data, data, (size_t)i * 4);
    }
    ck_assert_int_eq(mhub_safetensors_find(st, "t100"), -1);
    ck_assert_int_eq(mhub_safetensors_find(st, ""), -1);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_info(st, N, &t));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_info(st, -1, &t));
    mhub_safetensors_close(st);
}
END_TEST

/* ---- read_f32 --------------------------------------------------------------- */

START_TEST(test_read_f32)
{
    float w[6] = {1.5f, -2.0f, 0.1f, 3e-5f, -1e8f, 65504.0f};
    uint16_t b[6], h[6];
    for (int i = 0; i < 6; i++)
        b[i] = mhub_f32_to_bf16(w[i]), h[i] = mhub_f32_to_f16(w[i]);
    int64_t ids[2] = {7, -1};
    int64_t s23[2] = {2, 3}, s32[2] = {3, 2}, s6[1] = {6}, s2[1] = {2};
    const mhub_safetensors_entry entries[] = {
        {.name = "w", .dtype = MHUB_F32, .ndim = 2, .shape = s23, .data = w},
        {.name = "b", .dtype = MHUB_BF16, .ndim = 2, .shape = s23, .data = b},
        {.name = "h", .dtype = MHUB_F16, .ndim = 1, .shape = s6, .data = h},
        {.name = "ids", .dtype_name = "I64", .ndim = 1, .shape = s2, .data = ids},
    };
    char path[256];
    scratch("f.safetensors", path, sizeof path);
    CK_OK(mhub_safetensors_write(path, entries, 4, NULL));
    mhub_safetensors *st;
    CK_OK(mhub_safetensors_open(path, &st));
    float out[6];
    CK_OK(mhub_safetensors_read_f32(st, "w", s23, 2, out));
    ck_assert_mem_eq(out, w, sizeof w);
    CK_OK(mhub_safetensors_read_f32(st, "b", s23, 2, out));
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(out[i], mhub_bf16_to_f32(b[i]));
    CK_OK(mhub_safetensors_read_f32(st, "h", NULL, -1, out)); /* any shape */
    for (int i = 0; i < 6; i++)
        ck_assert_float_eq(out[i], mhub_f16_to_f32(h[i]));
    ck_assert_float_eq(out[0], 1.5f);
    ck_assert_float_eq(out[5], 65504.0f);

    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_read_f32(st, "w", s32, 2, out));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), path));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "tensor 'w': shape [2, 3], expected [3, 2]"));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_read_f32(st, "h", s23, 2, out));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "shape [6], expected [2, 3]"));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_read_f32(st, "nope", s6, 1, out));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), path));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "tensor 'nope': no such tensor"));
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_safetensors_read_f32(st, "ids", s2, 1, out));
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), "tensor 'ids': dtype I64"));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_read_f32(st, "w", NULL, 2, out));
    mhub_safetensors_tensor t;
    CK_OK(mhub_safetensors_info(st, mhub_safetensors_find(st, "ids"), &t));
    ck_assert(!t.has_mhub_dtype);
    ck_assert_str_eq(t.dtype_name, "I64");
    ck_assert_uint_eq(t.elem_size, 8);
    ck_assert_mem_eq(t.data, ids, sizeof ids);
    mhub_safetensors_close(st);
}
END_TEST

/* ---- writer errors ---------------------------------------------------------- */

static void write_fails(const mhub_safetensors_entry *e, int n, const char *const *meta,
                        const char *expect)
{
    char path[256];
    scratch("bad.safetensors", path, sizeof path);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_write(path, e, n, meta));
    ck_assert_msg(strstr(mhub_last_error(), expect), "'%s' does not say '%s'",
                  mhub_last_error(), expect);
    ck_assert_ptr_nonnull(strstr(mhub_last_error(), path));
    ck_assert_int_eq(access(path, F_OK), -1); /* nothing written */
}

START_TEST(test_write_errors)
{
    float x[4] = {0};
    int64_t s2[1] = {2}, neg[1] = {-1}, huge[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
    mhub_safetensors_entry two[2] = {
        {.name = "a", .ndim = 1, .shape = s2, .data = x},
        {.name = "a", .dtype = MHUB_BF16, .ndim = 1, .shape = s2, .data = x},
    };
    write_fails(two, 2, NULL, "tensor 'a': the name is given more than once");
    mhub_safetensors_entry e = {.name = "a", .ndim = 1, .shape = s2};
    write_fails(&e, 1, NULL, "tensor 'a': data is NULL");
    e = (mhub_safetensors_entry){.name = "a", .dtype = (mhub_dtype)7, .ndim = 1, .shape = s2,
                                 .data = x};
    write_fails(&e, 1, NULL, "invalid mhub_dtype 7");
    e = (mhub_safetensors_entry){.name = "a", .dtype_name = "F33", .ndim = 1, .shape = s2,
                                 .data = x};
    write_fails(&e, 1, NULL, "unknown dtype 'F33'");
    e = (mhub_safetensors_entry){.name = "__metadata__", .ndim = 1, .shape = s2, .data = x};
    write_fails(&e, 1, NULL, "reserved");
    e = (mhub_safetensors_entry){.name = "a", .ndim = 1, .shape = neg, .data = x};
    write_fails(&e, 1, NULL, "shape[0] = -1");
    e = (mhub_safetensors_entry){.name = "a", .ndim = 2, .shape = huge, .data = x};
    write_fails(&e, 1, NULL, "overflows");
    e = (mhub_safetensors_entry){.name = "a", .ndim = 9, .shape = s2, .data = x};
    write_fails(&e, 1, NULL, "ndim 9 is outside");
    e = (mhub_safetensors_entry){.name = "a", .ndim = 1, .data = x};
    write_fails(&e, 1, NULL, "NULL shape");
    e = (mhub_safetensors_entry){.name = "bad\xff", .ndim = 1, .shape = s2, .data = x};
    write_fails(&e, 1, NULL, "not valid UTF-8");
    e = (mhub_safetensors_entry){.ndim = 1, .shape = s2, .data = x};
    write_fails(&e, 1, NULL, "entry 0 has no name");
    e = (mhub_safetensors_entry){.name = "a", .ndim = 1, .shape = s2, .data = x};
    const char *dup[] = {"k", "1", "k", "2", NULL};
    write_fails(&e, 1, dup, "metadata key 'k' is given more than once");
    const char *odd[] = {"k", NULL};
    write_fails(&e, 1, odd, "metadata key 'k' has no value");
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_write(NULL, &e, 1, NULL));
    write_fails(NULL, 1, NULL, "1 entries");
}
END_TEST

/* ---- the golden file ----------------------------------------------------- */

/* The tensors of make_tiny.py: ramp(n, step, start). */
static void ramp(float *v, int n, float step, float start)
{
    for (int i = 0; i < n; i++)
        v[i] = start + step * (float)i;
}

START_TEST(test_golden)
{
    char golden[512], path[256];
    fixture("tiny.safetensors", golden, sizeof golden);
    mhub_safetensors *st;
    CK_OK(mhub_safetensors_open(golden, &st));
    ck_assert_int_eq(mhub_safetensors_count(st), 7);
    ck_assert_str_eq(mhub_safetensors_metadata(st, "format"), "pt");

    float wte[12], bias[3], attn[6], fc[5], scale = 2.5f, out[12];
    ramp(wte, 12, 0.25f, -1.25f);
    ramp(bias, 3, 0.5f, 0.5f);
    ramp(attn, 6, 0.5f, -1.0f);
    ramp(fc, 5, 0.125f, -0.25f);
    int64_t s_wte[2] = {4, 3}, s_bias[1] = {3}, s_attn[2] = {2, 3}, s_fc[1] = {5};
    int64_t s_empty[2] = {0, 4}, s_ids[2] = {1, 4}, ids[4] = {0, 1, 2, 3};
    CK_OK(mhub_safetensors_read_f32(st, "wte.weight", s_wte, 2, out));
    ck_assert_mem_eq(out, wte, sizeof wte);
    CK_OK(mhub_safetensors_read_f32(st, "ln_f.bias", s_bias, 1, out));
    ck_assert_mem_eq(out, bias, sizeof bias);
    CK_OK(mhub_safetensors_read_f32(st, "h.0.attn.c_attn.weight", s_attn, 2, out));
    ck_assert_mem_eq(out, attn, sizeof attn);
    CK_OK(mhub_safetensors_read_f32(st, "h.0.mlp.c_fc.bias", s_fc, 1, out));
    ck_assert_mem_eq(out, fc, sizeof fc);
    CK_OK(mhub_safetensors_read_f32(st, "scale", NULL, 0, out));
    ck_assert_float_eq(out[0], 2.5f);
    CK_OK(mhub_safetensors_read_f32(st, "empty", s_empty, 2, NULL));
    mhub_safetensors_tensor t;
    CK_OK(mhub_safetensors_info(st, mhub_safetensors_find(st, "position_ids"), &t));
    ck_assert_str_eq(t.dtype_name, "I64");
    assert_shape(&t, 2, s_ids);
    ck_assert_mem_eq(t.data, ids, sizeof ids);
    CK_OK(mhub_safetensors_info(st, mhub_safetensors_find(st, "h.0.attn.c_attn.weight"), &t));
    ck_assert_int_eq(t.dtype, MHUB_BF16);

    /* read and written again: Hugging Face's bytes */
    scratch("rewritten.safetensors", path, sizeof path);
    rewrite(st, path);
    mhub_safetensors_close(st);
    assert_same_file(golden, path);

    /* the same tensors built here, in another order: the same bytes */
    uint16_t attn16[6], fc16[5];
    for (int i = 0; i < 6; i++)
        attn16[i] = mhub_f32_to_bf16(attn[i]);
    for (int i = 0; i < 5; i++)
        fc16[i] = mhub_f32_to_f16(fc[i]);
    const mhub_safetensors_entry e[] = {
        {.name = "wte.weight", .dtype = MHUB_F32, .ndim = 2, .shape = s_wte, .data = wte},
        {.name = "ln_f.bias", .dtype = MHUB_F32, .ndim = 1, .shape = s_bias, .data = bias},
        {.name = "h.0.attn.c_attn.weight", .dtype = MHUB_BF16, .ndim = 2, .shape = s_attn,
         .data = attn16},
        {.name = "h.0.mlp.c_fc.bias", .dtype = MHUB_F16, .ndim = 1, .shape = s_fc, .data = fc16},
        {.name = "scale", .dtype = MHUB_F32, .ndim = 0, .data = &scale},
        {.name = "empty", .dtype = MHUB_F16, .ndim = 2, .shape = s_empty},
        {.name = "position_ids", .dtype_name = "I64", .ndim = 2, .shape = s_ids, .data = ids},
    };
    const char *meta[] = {"format", "pt", NULL};
    scratch("built.safetensors", path, sizeof path);
    CK_OK(mhub_safetensors_write(path, e, 7, meta));
    assert_same_file(golden, path);
}
END_TEST

/* ---- hostile files ------------------------------------------------------- */

/* Write <dir>/<name>: the length `n`, `hlen` header bytes, then
 * `data_len` bytes of data (zeros when data is NULL); its path in out. */
static void raw_named(const char *name, uint64_t n, const char *header, size_t hlen,
                      const void *data, size_t data_len, char *out, size_t len)
{
    scratch(name, out, len);
    FILE *f = fopen(out, "wb");
    ck_assert_ptr_nonnull(f);
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(n >> (8 * i));
    ck_assert_uint_eq(fwrite(le, 1, 8, f), 8);
    ck_assert_uint_eq(fwrite(header, 1, hlen, f), hlen);
    for (size_t i = 0; i < data_len; i++)
        ck_assert_int_ne(fputc(data ? ((const unsigned char *)data)[i] : 0, f), EOF);
    ck_assert_int_eq(fclose(f), 0);
}

static void raw_file(uint64_t n, const char *header, size_t hlen, size_t data_len, char *out,
                     size_t len)
{
    raw_named("bad.safetensors", n, header, hlen, NULL, data_len, out, len);
}

/* Opening `path` fails with `code`, a message naming the file and saying
 * `expect`, and no handle. */
static void open_fails(const char *path, mhub_status code, const char *expect)
{
    mhub_safetensors *st = (mhub_safetensors *)&st; /* must come back NULL */
    CK_FAILS(code, mhub_safetensors_open(path, &st));
    ck_assert_ptr_null(st);
    ck_assert_msg(strstr(mhub_last_error(), path), "'%s' does not name %s", mhub_last_error(),
                  path);
    ck_assert_msg(strstr(mhub_last_error(), expect), "'%s' does not say '%s'",
                  mhub_last_error(), expect);
}

typedef struct hostile {
    const char *header;
    size_t data_len;
    const char *expect;
    mhub_status code;
} hostile;

#define T(name, body) "\"" name "\":{" body "}"
#define F32(shape, b, e) "\"dtype\":\"F32\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]"

static const hostile hostiles[] = {
    {"{not json}", 0, "not valid JSON", MHUB_ERR_PARSE},
    {"[1,2]", 0, "must start with '{'", MHUB_ERR_PARSE},
    {"  {}", 0, "must start with '{'", MHUB_ERR_PARSE},
    {"{} x", 0, "unexpected byte 0x78", MHUB_ERR_PARSE},
    {"{" T("a", F32("[2,3]", 0, 24)) "}", 10, "tensor 'a': data_offsets [0, 24] run past the end", MHUB_ERR_PARSE},
    {"{" T("a", F32("[2]", 1000, 1008)) "}", 8, "tensor 'a': data_offsets [1000, 1008] run past", MHUB_ERR_PARSE},
    {"{" T("a", F32("[2]", 0, 8)) "," T("b", F32("[2]", 4, 12)) "}", 12,
     "tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]", MHUB_ERR_PARSE},
    {"{" T("a", F32("[2]", 0, 8)) "," T("b", F32("[2]", 12, 20)) "}", 20,
     "tensor 'b': a hole of 4 bytes between tensor 'a' (ends at 8)", MHUB_ERR_PARSE},
    {"{" T("a", F32("[1]", 4, 8)) "}", 8, "tensor 'a': the data begins with 4 bytes", MHUB_ERR_PARSE},
    {"{" T("a", F32("[1]", 0, 4)) "}", 8, "4 bytes after the last tensor 'a'", MHUB_ERR_PARSE},
    {"{}", 8, "8 data bytes but no tensors", MHUB_ERR_PARSE},
    {"{" T("a", F32("[0]", 8, 0)) "}", 8, "tensor 'a': data_offsets [8, 0] end before", MHUB_ERR_PARSE},
    {"{" T("a", F32("[3]", 0, 8)) "}", 8, "tensor 'a': data_offsets [0, 8] hold 8 bytes, but "
                                          "shape [3] of F32 needs 12", MHUB_ERR_PARSE},
    {"{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "tensor 'a': unknown dtype 'F33' (known: BOOL, U8", MHUB_ERR_PARSE},
    {"{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "tensor 'a': dtype must be a string, not a number", MHUB_ERR_PARSE},
    {"{" T("a", F32("[-2]", 0, 8)) "}", 8, "tensor 'a': shape[0] = -2 is negative", MHUB_ERR_PARSE},
    {"{" T("a", F32("[2.5]", 0, 8)) "}", 8, "tensor 'a': shape[0] = 2.5 is not an integer", MHUB_ERR_PARSE},
    {"{" T("a", F32("[\"2\"]", 0, 8)) "}", 8, "shape[0] must be a non-negative integer, not a "
                                              "string", MHUB_ERR_PARSE},
    {"{" T("a", F32("2", 0, 8)) "}", 8, "shape must be an array, not a number", MHUB_ERR_PARSE},
    {"{" T("a", F32("[9007199254740992,0]", 0, 0)) "}", 0, "shape[0] = 9007199254740992 is too "
                                                           "large", MHUB_ERR_PARSE},
    {"{" T("a", F32("[1099511627776,1099511627776]", 0, 8)) "}", 8,
     "tensor 'a': shape [1099511627776, 1099511627776] has too many elements", MHUB_ERR_PARSE},
    {"{" T("a", F32("[1,1,1,1,1,1,1,1,1]", 0, 4)) "}", 4, "9 dimensions", MHUB_ERR_UNSUPPORTED},
    {"{" T("a", F32("[1]", 0, 4)) "," T("a", F32("[1]", 4, 8)) "}", 8,
     "tensor 'a': the name appears more than once", MHUB_ERR_PARSE},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'a': missing \"dtype\"", MHUB_ERR_PARSE},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'a': missing \"shape\"", MHUB_ERR_PARSE},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'a': missing \"data_offsets\"", MHUB_ERR_PARSE},
    {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
     "tensor 'a': duplicate key \"dtype\"", MHUB_ERR_PARSE},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4,
     "data_offsets must have 2 entries [begin, end], not 1", MHUB_ERR_PARSE},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4,
     "data_offsets must be an array [begin, end], not an object", MHUB_ERR_PARSE},
    {"{\"a\":[1]}", 0, "tensor 'a': the entry must be an object", MHUB_ERR_PARSE},
    {"{\"a\xff\":{}}", 0, "not valid UTF-8 at offset 3 (byte 0xff)", MHUB_ERR_PARSE},
    {"{\"a\xc0\x80\":{}}", 0, "not valid UTF-8", MHUB_ERR_PARSE},
    {"{\"a\\u0000b\":{}}", 0, "the escape \\u0000 at header offset 3", MHUB_ERR_PARSE},
    {"{\"a\\\\u0000b\":{}}", 0, "tensor 'a\\u0000b': missing", MHUB_ERR_PARSE},
    {"{\"a\tb\":{}}", 0, "control character 0x09 at header offset 3", MHUB_ERR_PARSE},
    {"{\x01}", 0, "control character 0x01 at header offset 1", MHUB_ERR_PARSE},
    {"{\"\\n\":[]}", 0, "tensor '?': the entry must be", MHUB_ERR_PARSE},
    {"{\"__metadata__\":{\"format\":1}}", 0, "__metadata__ key 'format' must have a string "
                                             "value, not a number", MHUB_ERR_PARSE},
    {"{\"__metadata__\":[]}", 0, "\"__metadata__\" must be an object of strings, not an array", MHUB_ERR_PARSE},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate \"__metadata__\"", MHUB_ERR_PARSE},
};

START_TEST(test_hostile_headers)
{
    char path[256];
    for (size_t i = 0; i < sizeof hostiles / sizeof hostiles[0]; i++) {
        const hostile *h = &hostiles[i];
        size_t n = strlen(h->header);
        raw_file(n, h->header, n, h->data_len, path, sizeof path);
        open_fails(path, h->code, h->expect);
    }
}
END_TEST

START_TEST(test_hostile_lengths)
{
    char path[256];
    /* shorter than the length field (and empty) */
    for (int len = 0; len < 8; len += 5) {
        scratch("short.safetensors", path, sizeof path);
        FILE *f = fopen(path, "wb");
        ck_assert_uint_eq(fwrite("\x02\0\0\0\0", 1, (size_t)len, f), (size_t)len);
        fclose(f);
        open_fails(path, MHUB_ERR_PARSE, "too short");
        unlink(path);
    }
    raw_file(UINT64_MAX, "{}", 2, 0, path, sizeof path);
    open_fails(path, MHUB_ERR_PARSE, "header length 18446744073709551615 is over the "
                                     "100000000-byte limit");
    raw_file(100000001, "{}", 2, 0, path, sizeof path);
    open_fails(path, MHUB_ERR_PARSE, "over the");
    raw_file(1000, "{}", 2, 10, path, sizeof path);
    open_fails(path, MHUB_ERR_PARSE, "header length 1000 runs past the end of the file (20 bytes");
    raw_file(0, "", 0, 0, path, sizeof path);
    open_fails(path, MHUB_ERR_PARSE, "the header is empty");
    raw_file(4, "{}\0 ", 4, 0, path, sizeof path);
    open_fails(path, MHUB_ERR_PARSE, "NUL byte at header offset 2");
    /* the header length cuts the JSON short */
    const char *text = "{" T("a", F32("[1]", 0, 4)) "}";
    raw_file(strlen(text) - 3, text, strlen(text), 4, path, sizeof path);
    open_fails(path, MHUB_ERR_PARSE, "not valid JSON");
    /* not a file at all */
    open_fails(dir, MHUB_ERR_IO, "not a regular file");
    scratch("missing.safetensors", path, sizeof path);
    open_fails(path, MHUB_ERR_IO, "cannot open");
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_open(NULL, &(mhub_safetensors *){NULL}));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_safetensors_open(path, NULL));
}
END_TEST

/* What the format allows beyond what mhub writes: any padding spaces,
 * an unaligned data start, header order unlike data order, unknown keys
 * in an entry, empty tensors sharing an offset. */
START_TEST(test_lenient_but_valid)
{
    const char *text = "{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[4,8],\"x\":1},"
                       "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,4]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"y\":{\"dtype\":\"BOOL\",\"shape\":[0,3],\"data_offsets\":[4,4]}}  \n ";
    char path[256];
    size_t n = strlen(text);
    ck_assert_uint_ne((8 + n) % 4, 0); /* the data starts unaligned */
    unsigned char data[8];
    float a = -3.25f;
    uint16_t b[2] = {mhub_f32_to_f16(0.5f), mhub_f32_to_f16(-8.0f)};
    memcpy(data, &a, 4);
    memcpy(data + 4, b, 4);
    raw_named("lenient.safetensors", n, text, n, data, sizeof data, path, sizeof path);
    mhub_safetensors *st;
    CK_OK(mhub_safetensors_open(path, &st));
    ck_assert_int_eq(mhub_safetensors_count(st), 4);
    const char *order[] = {"a", "z", "y", "b"}; /* data order; ties in header order */
    mhub_safetensors_tensor t;
    for (int i = 0; i < 4; i++) {
        CK_OK(mhub_safetensors_info(st, i, &t));
        ck_assert_str_eq(t.name, order[i]);
    }
    float out[2];
    int64_t s1 = 1, s2 = 2;
    CK_OK(mhub_safetensors_read_f32(st, "a", &s1, 1, out));
    ck_assert_float_eq(out[0], -3.25f);
    CK_OK(mhub_safetensors_read_f32(st, "b", &s2, 1, out));
    ck_assert_float_eq(out[0], 0.5f);
    ck_assert_float_eq(out[1], -8.0f);
    mhub_safetensors_close(st);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_metadata_and_empty_files);
    tcase_add_test(tc, test_many_tensors);
    tcase_add_test(tc, test_read_f32);
    tcase_add_test(tc, test_write_errors);
    tcase_add_test(tc, test_golden);
    tcase_add_test(tc, test_hostile_headers);
    tcase_add_test(tc, test_hostile_lengths);
    tcase_add_test(tc, test_lenient_but_valid);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
