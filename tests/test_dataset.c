/* test_dataset.c - token datasets: byte-level text files, Megatron
 * indexed datasets written here byte by byte from the format and the
 * golden pairs tests/data/megatron/make_idx.py wrote the way Megatron-LM
 * does, every integer token dtype, training windows and the data-parallel
 * slice property, the bundled addition task and its scorer, and hostile
 * files, each an error naming the file. */
#include <dirent.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

/* Check records the source line on every ck_assert (a write in no-fork
 * mode), so loops test a condition first and call into Check only to
 * report a failure. */
#define REQUIRE(cond, ...)             \
    do {                               \
        if (!(cond))                   \
            ck_abort_msg(__VA_ARGS__); \
    } while (0)

/* Fails with `code` and a message that contains `needle` (a file name,
 * a size). */
#define CK_FAILS_WITH(code, needle, expr)                                         \
    do {                                                                          \
        CK_FAILS(code, expr);                                                     \
        ck_assert_msg(strstr(mhub_last_error(), (needle)) != NULL,                \
                      "%s: message \"%s\" does not mention \"%s\"", #expr,        \
                      mhub_last_error(), (needle));                               \
    } while (0)

static char tmpdir[] = "/tmp/mhub_test_dataset_XXXXXX";

static void setup(void) { ck_assert_ptr_nonnull(mkdtemp(tmpdir)); }

/* Remove the scratch directory and what it holds (subdirectories too). */

static void teardown(void)
{
    mhub_test_remove_tree(tmpdir);
    strcpy(tmpdir, "/tmp/mhub_test_dataset_XXXXXX");
}

/* <tmpdir>/<name>. */
static void scratch(const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s", tmpdir, name);
}

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

/* Write `text` as <tmpdir>/<name>; its path in out. */
static void write_text(const char *name, const char *text, char *out, size_t len)
{
    scratch(name, out, len);
    write_file(out, text, strlen(text));
}

/* tests/data/megatron/<name> under $top_srcdir (make check sets it); run
 * by hand, beside this source file. */
static void fixture(const char *name, char *out, size_t len)
{
    char rel[256];
    snprintf(rel, sizeof rel, "megatron/%s", name);
    mhub_test_data_path(rel, out, len);
}

/* ---- writing Megatron files, byte by byte from the format --------------- */

typedef struct bytes {
    unsigned char b[1 << 16];
    size_t n;
} bytes;

static void put_le(bytes *o, uint64_t v, int width)
{
    ck_assert_uint_le(o->n + (size_t)width, sizeof o->b);
    for (int i = 0; i < width; i++, v >>= 8)
        o->b[o->n++] = (unsigned char)(v & 0xff);
}

/* Megatron's dtype codes and their sizes (formats.md). */
enum { U8 = 1, I8 = 2, I16 = 3, I32 = 4, I64 = 5, F64 = 6, F32 = 7, U16 = 8 };
static int code_bytes(int code)
{
    static const int size[] = {0, 1, 1, 2, 4, 8, 8, 4, 2};
    return size[code];
}

/* One dataset: the tokens of every sequence in order, the sizes, and the
 * document indices (leading 0, ending at the sequence count). */
typedef struct idx_spec {
    int code;
    const int64_t *tokens;
    const int32_t *sizes;
    int sequences;
    const int64_t *docs;
    int doc_entries;
} idx_spec;

/* The .idx as Megatron's _IndexWriter lays it out: magic, version 1,
 * dtype code, sequence count, document index count, sizes (int32),
 * pointers (int64, the running byte offset), document indices (int64). */
static void build_idx(const idx_spec *sp, bytes *o)
{
    o->n = 0;
    memcpy(o->b, "MMIDIDX\0\0", 9);
    o->n = 9;
    put_le(o, 1, 8);
    put_le(o, (uint64_t)sp->code, 1);
    put_le(o, (uint64_t)sp->sequences, 8);
    put_le(o, (uint64_t)sp->doc_entries, 8);
    for (int i = 0; i < sp->sequences; i++)
        put_le(o, (uint32_t)sp->sizes[i], 4);
    int64_t ptr = 0;
    for (int i = 0; i < sp->sequences; i++) {
        put_le(o, (uint64_t)ptr, 8);
        ptr += (int64_t)sp->sizes[i] * code_bytes(sp->code);
    }
    for (int i = 0; i < sp->doc_entries; i++)
        put_le(o, (uint64_t)sp->docs[i], 8);
}

static void build_bin(const idx_spec *sp, bytes *o)
{
    o->n = 0;
    int64_t total = 0;
    for (int i = 0; i < sp->sequences; i++)
        total += sp->sizes[i];
    for (int64_t t = 0; t < total; t++)
        put_le(o, (uint64_t)sp->tokens[t], code_bytes(sp->code));
}

/* Write <tmpdir>/<name>.bin and .idx; the prefix in out. */
static void write_pair(const char *name, const bytes *bin, const bytes *idx, char *out,
                       size_t len)
{
    char path[600];
    scratch(name, out, len);
    snprintf(path, sizeof path, "%s.bin", out);
    write_file(path, bin->b, bin->n);
    snprintf(path, sizeof path, "%s.idx", out);
    write_file(path, idx->b, idx->n);
}

static void write_spec(const char *name, const idx_spec *sp, char *out, size_t len)
{
    static bytes bin, idx;
    build_bin(sp, &bin);
    build_idx(sp, &idx);
    write_pair(name, &bin, &idx, out, len);
}

static void expect_tokens(mhub_dataset *ds, const int64_t *want, int64_t n)
{
    ck_assert_int_eq(mhub_dataset_tokens(ds), n);
    int32_t got[256];
    ck_assert_int_le(n, 256);
    CK_OK(mhub_dataset_read(ds, 0, n, got));
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(got[i] == want[i], "token %lld: %d, expected %lld", (long long)i,
                      got[i], (long long)want[i]);
}

/* ---- text files ----------------------------------------------------------- */

START_TEST(test_text_file)
{
    char path[512];
    scratch("bytes.txt", path, sizeof path);
    const unsigned char text[] = {'h', 'i', '\n', 0x00, 0x7f, 0x80, 0xff};
    write_file(path, text, sizeof text);
    mhub_dataset *ds;
    CK_OK(mhub_dataset_open(path, &ds));
    ck_assert_int_eq(mhub_dataset_get_format(ds), MHUB_DATASET_TEXT);
    ck_assert_str_eq(mhub_dataset_path(ds), path);
    ck_assert_int_eq(mhub_dataset_documents(ds), 1);
    int64_t vocab;
    CK_OK(mhub_dataset_vocab(ds, &vocab));
    ck_assert_int_eq(vocab, 256);
    /* bytes over 127 are tokens 128..255, not negative chars */
    const int64_t want[] = {'h', 'i', '\n', 0, 127, 128, 255};
    expect_tokens(ds, want, 7);
    int32_t two[2];
    CK_OK(mhub_dataset_read(ds, 5, 2, two));
    ck_assert_int_eq(two[0], 128);
    ck_assert_int_eq(two[1], 255);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_read(ds, 6, 2, two));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_read(ds, -1, 1, two));
    CK_OK(mhub_dataset_read(ds, 7, 0, two)); /* an empty range at the end */
    mhub_dataset_close(ds);
}
END_TEST

/* A text file named like a prefix stays text while no .idx/.bin is
 * beside it. */
START_TEST(test_text_without_pair)
{
    char path[512];
    write_text("corpus", "abc", path, sizeof path);
    mhub_dataset *ds;
    CK_OK(mhub_dataset_open(path, &ds));
    ck_assert_int_eq(mhub_dataset_get_format(ds), MHUB_DATASET_TEXT);
    mhub_dataset_close(ds);
}
END_TEST

/* ---- indexed datasets ------------------------------------------------------- */

/* Three documents, the second of two sequences (--split-sentences). */
static const int64_t U16_TOKENS[] = {464, 2068, 50256, 40, 65535, 0, 1212, 318, 50256};
static const int32_t U16_SIZES[] = {3, 2, 4};
static const int64_t U16_DOCS[] = {0, 1, 3};

static idx_spec u16_spec(void)
{
    return (idx_spec){U16, U16_TOKENS, U16_SIZES, 3, U16_DOCS, 3};
}

START_TEST(test_indexed_opens_by_prefix_bin_or_idx)
{
    char prefix[512], path[600];
    idx_spec sp = u16_spec();
    write_spec("corpus_text_document", &sp, prefix, sizeof prefix);
    const char *suffixes[] = {"", ".bin", ".idx"};
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s%s", prefix, suffixes[k]);
        mhub_dataset *ds;
        CK_OK(mhub_dataset_open(path, &ds));
        ck_assert_int_eq(mhub_dataset_get_format(ds), MHUB_DATASET_INDEXED);
        ck_assert(strstr(mhub_dataset_path(ds), "corpus_text_document.bin") != NULL);
        ck_assert_int_eq(mhub_dataset_documents(ds), 2);
        expect_tokens(ds, U16_TOKENS, 9);
        int64_t vocab;
        CK_OK(mhub_dataset_vocab(ds, &vocab));
        ck_assert_int_eq(vocab, 65536); /* 65535 is uint16, not -1 */
        CK_OK(mhub_dataset_vocab(ds, &vocab)); /* remembered */
        ck_assert_int_eq(vocab, 65536);
        /* a window across sequence and document boundaries */
        int32_t mid[4];
        CK_OK(mhub_dataset_read(ds, 2, 4, mid));
        ck_assert_int_eq(mid[0], 50256);
        ck_assert_int_eq(mid[1], 40);
        ck_assert_int_eq(mid[2], 65535);
        ck_assert_int_eq(mid[3], 0);
        mhub_dataset_close(ds);
    }
}
END_TEST

/* Each integer dtype round trips its extreme values; signed ones hold
 * negative ids, which are errors when read. */
START_TEST(test_dtype_variants)
{
    static const struct {
        int code;
        int64_t tokens[4];
        int64_t vocab;
    } cases[] = {
        {U8, {0, 7, 255, 3}, 256},
        {I8, {0, 7, 127, 3}, 128},
        {I16, {0, 7, 32767, 3}, 32768},
        {U16, {0, 7, 65535, 50256}, 65536},
        {I32, {0, 128255, INT32_MAX, 3}, (int64_t)INT32_MAX + 1},
        {I64, {0, 100000, INT32_MAX, 3}, (int64_t)INT32_MAX + 1},
    };
    static const int32_t sizes[] = {4};
    static const int64_t docs[] = {0, 1};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        idx_spec sp = {cases[c].code, cases[c].tokens, sizes, 1, docs, 2};
        char prefix[512], name[32];
        snprintf(name, sizeof name, "dtype%d", cases[c].code);
        write_spec(name, &sp, prefix, sizeof prefix);
        mhub_dataset *ds;
        CK_OK(mhub_dataset_open(prefix, &ds));
        expect_tokens(ds, cases[c].tokens, 4);
        int64_t vocab;
        CK_OK(mhub_dataset_vocab(ds, &vocab));
        ck_assert_int_eq(vocab, cases[c].vocab);
        mhub_dataset_close(ds);
    }
}
END_TEST

/* An id that does not fit int32 (too large, or negative) is an error
 * naming the .bin and the token, from read and from vocab. */
START_TEST(test_token_ids_beyond_int32)
{
    static const int32_t sizes[] = {3};
    static const int64_t docs[] = {0, 1};
    static const struct {
        int code;
        int64_t tokens[3];
        const char *value;
    } cases[] = {
        {I64, {1, (int64_t)INT32_MAX + 1, 2}, "2147483648"},
        {I64, {1, INT64_MAX, 2}, "9223372036854775807"},
        {I32, {1, -5, 2}, "-5"},
        {I16, {1, -32768, 2}, "-32768"},
        {I8, {1, -1, 2}, "-1"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        idx_spec sp = {cases[c].code, cases[c].tokens, sizes, 1, docs, 2};
        char prefix[512], name[32];
        snprintf(name, sizeof name, "wide%zu", c);
        write_spec(name, &sp, prefix, sizeof prefix);
        mhub_dataset *ds;
        CK_OK(mhub_dataset_open(prefix, &ds));
        int32_t out[3];
        CK_OK(mhub_dataset_read(ds, 0, 1, out)); /* the good token alone is fine */
        CK_FAILS_WITH(MHUB_ERR_PARSE, cases[c].value, mhub_dataset_read(ds, 0, 3, out));
        ck_assert(strstr(mhub_last_error(), ".bin") != NULL);
        ck_assert(strstr(mhub_last_error(), "token 1") != NULL);
        int64_t vocab;
        CK_FAILS_WITH(MHUB_ERR_PARSE, name, mhub_dataset_vocab(ds, &vocab));
        int64_t windows;
        CK_OK(mhub_dataset_windows(ds, 1, &windows));
        int32_t in[1], tg[1];
        CK_FAILS_WITH(MHUB_ERR_PARSE, name, mhub_dataset_window(ds, 1, 0, in, tg));
        mhub_dataset_close(ds);
    }
}
END_TEST

/* The pairs make_idx.py wrote the way Megatron's builder does. */
START_TEST(test_golden_megatron_pairs)
{
    char prefix[512];
    mhub_dataset *ds;
    int64_t vocab;

    fixture("tiny_uint16_text_document", prefix, sizeof prefix);
    CK_OK(mhub_dataset_open(prefix, &ds));
    static const int64_t u16[] = {464,  2068, 7586, 21831, 50256, 40, 588, 33918,
                                  13,   1212, 318,  3734,  13,    50256, 65535, 0,
                                  1,    50256};
    expect_tokens(ds, u16, 18);
    ck_assert_int_eq(mhub_dataset_documents(ds), 3);
    CK_OK(mhub_dataset_vocab(ds, &vocab));
    ck_assert_int_eq(vocab, 65536);
    mhub_dataset_close(ds);

    fixture("tiny_int32_text_document.idx", prefix, sizeof prefix);
    CK_OK(mhub_dataset_open(prefix, &ds));
    static const int64_t i32[] = {128000, 9906, 1917, 128001, 128000, 15339, 128255, 70000,
                                  128001};
    expect_tokens(ds, i32, 9);
    ck_assert_int_eq(mhub_dataset_documents(ds), 2);
    CK_OK(mhub_dataset_vocab(ds, &vocab));
    ck_assert_int_eq(vocab, 128256);
    mhub_dataset_close(ds);
}
END_TEST

/* ---- training windows ----------------------------------------------------- */

START_TEST(test_windows)
{
    char path[512];
    write_text("digits.txt", "0123456789", path, sizeof path);
    mhub_dataset *ds;
    CK_OK(mhub_dataset_open(path, &ds));
    int64_t n;
    CK_OK(mhub_dataset_windows(ds, 3, &n));
    ck_assert_int_eq(n, 3); /* (10 - 1) / 3 */
    int32_t in[3], tg[3];
    CK_OK(mhub_dataset_window(ds, 3, 0, in, tg));
    ck_assert(in[0] == '0' && in[1] == '1' && in[2] == '2');
    ck_assert(tg[0] == '1' && tg[1] == '2' && tg[2] == '3');
    CK_OK(mhub_dataset_window(ds, 3, 2, in, tg));
    ck_assert(in[0] == '6' && in[2] == '8' && tg[2] == '9');
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_window(ds, 3, 3, in, tg));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_window(ds, 3, -1, in, tg));
    CK_OK(mhub_dataset_windows(ds, 4, &n));
    ck_assert_int_eq(n, 2); /* the tail that cannot fill a window is left out */
    CK_OK(mhub_dataset_windows(ds, 9, &n));
    ck_assert_int_eq(n, 1); /* exactly seq_len + 1 tokens */
    /* too short: the file and both sizes in the message */
    CK_FAILS_WITH(MHUB_ERR_INVALID_ARG, path, mhub_dataset_windows(ds, 10, &n));
    ck_assert(strstr(mhub_last_error(), "10 tokens") != NULL);
    ck_assert(strstr(mhub_last_error(), "11 tokens") != NULL);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_windows(ds, 0, &n));
    mhub_dataset_close(ds);
}
END_TEST

/* An int32 dataset whose token i is i: a window's first input names it. */
enum { SEQ = 4, WINDOWS = 96, GLOBAL = 16, STEPS = 20 };

static mhub_dataset *open_counting(void)
{
    static int64_t tokens[SEQ * WINDOWS + 1 + 3]; /* 3 left over past the last window */
    static const int32_t sizes[] = {100, 200, SEQ * WINDOWS + 4 - 300};
    static const int64_t docs[] = {0, 2, 3};
    for (int64_t i = 0; i < SEQ * WINDOWS + 4; i++)
        tokens[i] = i;
    idx_spec sp = {I32, tokens, sizes, 3, docs, 3};
    char prefix[512];
    write_spec("counting", &sp, prefix, sizeof prefix);
    mhub_dataset *ds;
    CK_OK(mhub_dataset_open(prefix, &ds));
    int64_t n;
    CK_OK(mhub_dataset_windows(ds, SEQ, &n));
    ck_assert_int_eq(n, WINDOWS);
    return ds;
}

/* Window ids step by step as dp_size ranks of micro_batches each read
 * them, concatenated in (rank, micro) order. Checks every row on the way:
 * inputs are SEQ consecutive tokens and targets the same shifted by one. */
static void windows_read(mhub_dataset *ds, const mhub_sampler *s, int dp_size, int micro_batches,
                         int64_t *ids)
{
    int rows = GLOBAL / (dp_size * micro_batches);
    int32_t in[GLOBAL * SEQ], tg[GLOBAL * SEQ];
    int64_t k = 0;
    for (int64_t step = 0; step < STEPS; step++)
        for (int r = 0; r < dp_size; r++)
            for (int m = 0; m < micro_batches; m++) {
                CK_OK(mhub_dataset_batch(ds, s, SEQ, step, r, dp_size, micro_batches, m, in,
                                         tg));
                for (int row = 0; row < rows; row++) {
                    const int32_t *x = in + row * SEQ, *y = tg + row * SEQ;
                    REQUIRE(x[0] % SEQ == 0, "row starts at token %d, not a window", x[0]);
                    for (int t = 0; t < SEQ; t++)
                        REQUIRE(x[t] == x[0] + t && y[t] == x[t] + 1,
                                "dp %d: step %lld row %d is not a window", dp_size,
                                (long long)step, row);
                    ids[k++] = x[0] / SEQ;
                }
            }
}

/* The windows a step trains on are the same at dp 1, 2 and 4 (with and
 * without micro-batches), every epoch visits each window once, and the
 * order is shuffled. */
START_TEST(test_batches_same_at_any_dp_size)
{
    mhub_dataset *ds = open_counting();
    mhub_sampler s;
    CK_OK(mhub_sampler_init(&s, WINDOWS, GLOBAL, 1234, true));
    static int64_t ref[STEPS * GLOBAL], got[STEPS * GLOBAL];
    windows_read(ds, &s, 1, 1, ref);
    static const int layouts[][2] = {{2, 1}, {4, 1}, {2, 2}, {4, 2}, {1, 4}};
    for (size_t l = 0; l < sizeof layouts / sizeof layouts[0]; l++) {
        windows_read(ds, &s, layouts[l][0], layouts[l][1], got);
        for (int i = 0; i < STEPS * GLOBAL; i++)
            REQUIRE(got[i] == ref[i], "dp %d x micro %d: position %d reads window %lld, "
                    "dp 1 reads %lld", layouts[l][0], layouts[l][1], i, (long long)got[i],
                    (long long)ref[i]);
    }
    /* epochs 0 and 1 (positions [0, 96) and [96, 192)) each visit every
     * window once, in different orders, neither the identity */
    for (int e = 0; e < 2; e++) {
        int seen[WINDOWS] = {0}, in_place = 0;
        for (int i = 0; i < WINDOWS; i++) {
            seen[ref[e * WINDOWS + i]]++;
            in_place += ref[e * WINDOWS + i] == i;
        }
        for (int w = 0; w < WINDOWS; w++)
            ck_assert_int_eq(seen[w], 1);
        ck_assert_int_lt(in_place, 10);
    }
    ck_assert(memcmp(ref, ref + WINDOWS, 16 * sizeof ref[0]) != 0);
    mhub_dataset_close(ds);
}
END_TEST

START_TEST(test_batch_bad_input)
{
    mhub_dataset *ds = open_counting();
    int32_t in[GLOBAL * SEQ], tg[GLOBAL * SEQ];
    mhub_sampler wrong, s;
    CK_OK(mhub_sampler_init(&wrong, WINDOWS + 1, GLOBAL, 1, true)); /* another seq_len */
    CK_FAILS_WITH(MHUB_ERR_INVALID_ARG, "counting.bin",
                  mhub_dataset_batch(ds, &wrong, SEQ, 0, 0, 1, 1, 0, in, tg));
    CK_OK(mhub_sampler_init(&wrong, 0, GLOBAL, 1, true)); /* endless */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_batch(ds, &wrong, SEQ, 0, 0, 1, 1, 0, in, tg));
    CK_OK(mhub_sampler_init(&s, WINDOWS, GLOBAL, 1, true));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_batch(ds, &s, SEQ, 0, 0, 3, 1, 0, in, tg));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_batch(ds, &s, SEQ, 0, 2, 2, 1, 0, in, tg));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_batch(ds, &s, SEQ, -1, 0, 1, 1, 0, in, tg));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_batch(ds, &s, SEQ, 0, 0, 1, 1, 0, NULL, tg));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_batch(ds, NULL, SEQ, 0, 0, 1, 1, 0, in, tg));
    mhub_dataset_close(ds);
}
END_TEST

/* ---- the addition task ------------------------------------------------------ */

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    rewind(f);
    char *buf = malloc(*len + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(fread(buf, 1, *len, f), *len);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

/* "A+B=" with `digits`-digit operands -> A and B; false if malformed. */
static bool parse_prompt(const char *p, int digits, long long *a, long long *b)
{
    *a = *b = 0;
    for (int i = 0; i < 2 * digits + 2; i++) {
        char c = p[i];
        if (i == digits ? c != '+' : i == 2 * digits + 1 ? c != '=' : c < '0' || c > '9')
            return false;
        if (i < digits)
            *a = *a * 10 + (c - '0');
        else if (i > digits && i <= 2 * digits)
            *b = *b * 10 + (c - '0');
    }
    return p[2 * digits + 2] == '\0';
}

/* The sum's digits + 1 digits, lowest first, computed here independently. */
static void reversed_sum(long long sum, int digits, char *out)
{
    for (int i = 0; i <= digits; i++, sum /= 10)
        out[i] = (char)('0' + sum % 10);
    out[digits + 1] = '\0';
}

START_TEST(test_addition_file_format)
{
    enum { DIGITS = 2, ALL = 10000 }; /* every 2-digit pair, once each */
    char path[512];
    scratch("add.txt", path, sizeof path);
    CK_OK(mhub_addition_generate(path, ALL, DIGITS, 7));
    size_t len;
    char *text = slurp(path, &len);
    const size_t line = 3 * DIGITS + 4; /* "12+34=640\n" */
    ck_assert_uint_eq(len, ALL * line);
    static unsigned char seen[ALL];
    memset(seen, 0, sizeof seen);
    for (int i = 0; i < ALL; i++) {
        char *l = text + (size_t)i * line, want[DIGITS + 2];
        long long a, b;
        REQUIRE(l[line - 1] == '\n', "line %d does not end in a newline", i);
        l[2 * DIGITS + 2 + DIGITS + 1] = '\0';
        char saved = l[2 * DIGITS + 2];
        l[2 * DIGITS + 2] = '\0';
        REQUIRE(parse_prompt(l, DIGITS, &a, &b), "line %d: bad prompt \"%s\"", i, l);
        l[2 * DIGITS + 2] = saved;
        reversed_sum(a + b, DIGITS, want);
        REQUIRE(!strcmp(l + 2 * DIGITS + 2, want), "line %d: %lld+%lld: \"%s\", expected \"%s\"",
                i, a, b, l + 2 * DIGITS + 2, want);
        REQUIRE(!seen[a * 100 + b], "line %d repeats %lld+%lld", i, a, b);
        seen[a * 100 + b] = 1;
        /* line i is problem i */
        char prompt[2 * DIGITS + 3], answer[DIGITS + 2];
        CK_OK(mhub_addition_problem(DIGITS, 7, i, prompt, answer));
        REQUIRE(!strncmp(prompt, l, 2 * DIGITS + 2) && !strcmp(answer, want),
                "problem %d differs from line %d", i, i);
    }
    free(text);
    /* a byte-level dataset like any other */
    mhub_dataset *ds;
    CK_OK(mhub_dataset_open(path, &ds));
    ck_assert_int_eq(mhub_dataset_tokens(ds), ALL * line);
    mhub_dataset_close(ds);
}
END_TEST

START_TEST(test_addition_deterministic)
{
    char p1[512], p2[512], p3[512];
    scratch("a1.txt", p1, sizeof p1);
    scratch("a2.txt", p2, sizeof p2);
    scratch("a3.txt", p3, sizeof p3);
    CK_OK(mhub_addition_generate(p1, 500, 5, 42));
    CK_OK(mhub_addition_generate(p2, 500, 5, 42));
    CK_OK(mhub_addition_generate(p3, 500, 5, 43));
    size_t n1, n2, n3;
    char *t1 = slurp(p1, &n1), *t2 = slurp(p2, &n2), *t3 = slurp(p3, &n3);
    ck_assert_uint_eq(n1, 500 * 19);
    ck_assert_uint_eq(n1, n2);
    ck_assert_mem_eq(t1, t2, n1);
    ck_assert_uint_eq(n1, n3);
    ck_assert(memcmp(t1, t3, n1) != 0);
    /* a known problem pins the format: digit widths and the reversed,
     * padded sum */
    char prompt[32], answer[16];
    CK_OK(mhub_addition_problem(3, 1, 0, prompt, answer));
    long long a, b;
    ck_assert(parse_prompt(prompt, 3, &a, &b));
    char want[8];
    reversed_sum(a + b, 3, want);
    ck_assert_str_eq(answer, want);
    ck_assert_uint_eq(strlen(prompt), 8);
    free(t1);
    free(t2);
    free(t3);
}
END_TEST

/* Completion callbacks: ctx holds the digits and a count of calls. */
typedef struct oracle {
    int digits;
    int calls;
    const char *text; /* the training file: held-out prompts must not be in it */
} oracle;

static mhub_status perfect(void *ctx, const char *prompt, char *out, int out_size)
{
    oracle *o = ctx;
    o->calls++;
    long long a, b;
    REQUIRE(parse_prompt(prompt, o->digits, &a, &b), "bad prompt \"%s\"", prompt);
    REQUIRE(out_size >= o->digits + 3, "out_size %d has no room for the answer and a newline",
            out_size);
    REQUIRE(!o->text || !strstr(o->text, prompt), "held-out prompt %s is in the training file",
            prompt);
    reversed_sum(a + b, o->digits, out);
    strcat(out, "\n");
    return MHUB_OK;
}

/* Right digits written highest first: the plain order is not the format. */
static mhub_status unreversed(void *ctx, const char *prompt, char *out, int out_size)
{
    oracle *o = ctx;
    long long a, b;
    parse_prompt(prompt, o->digits, &a, &b);
    snprintf(out, (size_t)out_size, "%0*lld\n", o->digits + 1, a + b);
    if (out[0] == out[o->digits]) /* a palindrome would pass: spoil it */
        out[0] = out[0] == '9' ? '0' : (char)(out[0] + 1);
    return MHUB_OK;
}

/* The answer, then more digits with no newline: runs on past the end. */
static mhub_status runs_on(void *ctx, const char *prompt, char *out, int out_size)
{
    MHUB_TRY(perfect(ctx, prompt, out, out_size));
    out[((oracle *)ctx)->digits + 1] = '7';
    return MHUB_OK;
}

/* The answer and no newline (the model stopped there): passes. */
static mhub_status stops(void *ctx, const char *prompt, char *out, int out_size)
{
    MHUB_TRY(perfect(ctx, prompt, out, out_size));
    out[((oracle *)ctx)->digits + 1] = '\0';
    return MHUB_OK;
}

static mhub_status failing(void *ctx, const char *prompt, char *out, int out_size)
{
    return mhub_error(MHUB_ERR_STATE, "the model is not loaded");
}

START_TEST(test_addition_score)
{
    enum { DIGITS = 3, TRAIN = 2000, HELD_OUT = 300 };
    char path[512];
    scratch("train.txt", path, sizeof path);
    CK_OK(mhub_addition_generate(path, TRAIN, DIGITS, 99));
    size_t len;
    char *text = slurp(path, &len);
    oracle o = {DIGITS, 0, text};
    double acc = -1;
    CK_OK(mhub_addition_score(DIGITS, 99, TRAIN, HELD_OUT, perfect, &o, &acc));
    ck_assert_double_eq(acc, 1.0);
    ck_assert_int_eq(o.calls, HELD_OUT);
    o.text = NULL;
    CK_OK(mhub_addition_score(DIGITS, 99, TRAIN, HELD_OUT, unreversed, &o, &acc));
    ck_assert_double_eq(acc, 0.0);
    CK_OK(mhub_addition_score(DIGITS, 99, TRAIN, HELD_OUT, runs_on, &o, &acc));
    ck_assert_double_eq(acc, 0.0);
    CK_OK(mhub_addition_score(DIGITS, 99, TRAIN, HELD_OUT, stops, &o, &acc));
    ck_assert_double_eq(acc, 1.0);
    CK_FAILS_WITH(MHUB_ERR_STATE, "not loaded",
                  mhub_addition_score(DIGITS, 99, 0, 10, failing, &o, &acc));
    /* ranges past the problems, bad digits, NULLs */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_score(1, 99, 95, 10, perfect, &o, &acc));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_score(1, 99, 100, 1, perfect, &o, &acc));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_score(1, 99, -1, 1, perfect, &o, &acc));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_score(1, 99, 0, 0, perfect, &o, &acc));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_score(10, 99, 0, 1, perfect, &o, &acc));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_score(3, 99, 0, 1, NULL, &o, &acc));
    o.digits = 1;
    CK_OK(mhub_addition_score(1, 99, 90, 10, perfect, &o, &acc)); /* the last ten */
    ck_assert_double_eq(acc, 1.0);
    free(text);
}
END_TEST

START_TEST(test_addition_bad_input)
{
    char path[512];
    scratch("x.txt", path, sizeof path);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_generate(path, 0, 3, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_generate(path, 101, 1, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_generate(path, 10, 0, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_generate(path, 10, 10, 1));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_generate(NULL, 10, 3, 1));
    ck_assert_int_ne(access(path, F_OK), 0); /* nothing written */
    char dir[512];
    scratch("no/such/dir/x.txt", dir, sizeof dir);
    CK_FAILS_WITH(MHUB_ERR_IO, "no/such/dir", mhub_addition_generate(dir, 10, 3, 1));
    char prompt[32], answer[16];
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_addition_problem(2, 1, 10000, prompt, answer));
    CK_OK(mhub_addition_problem(9, 1, 0, prompt, answer)); /* the widest */
    ck_assert_uint_eq(strlen(prompt), 20);
    ck_assert_uint_eq(strlen(answer), 10);
}
END_TEST

/* ---- hostile files ---------------------------------------------------------- */

/* Open `path` expecting `code` and a message that names `needle`. */
static void expect_open_fails(const char *path, mhub_status code, const char *needle)
{
    mhub_dataset *ds = (mhub_dataset *)1;
    CK_FAILS_WITH(code, needle, mhub_dataset_open(path, &ds));
    ck_assert_ptr_null(ds);
}

START_TEST(test_hostile_files)
{
    char path[512], dir[512];
    /* empty text file */
    write_text("empty.txt", "", path, sizeof path);
    expect_open_fails(path, MHUB_ERR_PARSE, "empty.txt");
    /* missing file */
    scratch("nothing-here.txt", path, sizeof path);
    expect_open_fails(path, MHUB_ERR_IO, "nothing-here.txt");
    ck_assert(strstr(mhub_last_error(), "no such file") != NULL);
    /* a directory, as text and as an index */
    scratch("adir", dir, sizeof dir);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    expect_open_fails(dir, MHUB_ERR_IO, "adir");
    ck_assert(strstr(mhub_last_error(), "directory") != NULL);
    scratch("dir_as.idx", path, sizeof path);
    ck_assert_int_eq(mkdir(path, 0755), 0);
    expect_open_fails(path, MHUB_ERR_IO, "dir_as.idx");
    /* NULLs */
    mhub_dataset *ds;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_open(NULL, &ds));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_open(dir, NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_dataset_open("", &ds));
    mhub_dataset_close(NULL);
}
END_TEST

/* Too short for a window: the file and the sizes. */
START_TEST(test_hostile_too_short)
{
    char path[512];
    write_text("short.txt", "abcd", path, sizeof path);
    mhub_dataset *ds;
    CK_OK(mhub_dataset_open(path, &ds));
    int64_t n;
    CK_FAILS_WITH(MHUB_ERR_INVALID_ARG, "short.txt", mhub_dataset_windows(ds, 4, &n));
    ck_assert(strstr(mhub_last_error(), "4 tokens") && strstr(mhub_last_error(), "seq_len 4"));
    mhub_sampler s;
    CK_OK(mhub_sampler_init(&s, 1, 1, 1, true));
    int32_t in[4], tg[4];
    CK_FAILS_WITH(MHUB_ERR_INVALID_ARG, "short.txt",
                  mhub_dataset_batch(ds, &s, 4, 0, 0, 1, 1, 0, in, tg));
    mhub_dataset_close(ds);
    /* a single byte has no window at any length */
    write_text("one.txt", "a", path, sizeof path);
    CK_OK(mhub_dataset_open(path, &ds));
    CK_FAILS_WITH(MHUB_ERR_INVALID_ARG, "one.txt", mhub_dataset_windows(ds, 1, &n));
    mhub_dataset_close(ds);
}
END_TEST

/* Offsets into the u16 spec's index (3 sequences, 3 document entries). */
enum {
    OFF_VERSION = 9,
    OFF_CODE = 17,
    OFF_SEQS = 18,
    OFF_DOCS = 26,
    OFF_SIZES = 34,
    OFF_POINTERS = 34 + 4 * 3,
    OFF_DOC_INDEX = 34 + 12 * 3,
    IDX_LEN = 34 + 12 * 3 + 8 * 3
};

typedef void (*corrupt_fn)(bytes *bin, bytes *idx);

static void set_le(bytes *o, size_t off, uint64_t v, int width)
{
    for (int i = 0; i < width; i++, v >>= 8)
        o->b[off + (size_t)i] = (unsigned char)(v & 0xff);
}

static void bad_magic(bytes *bin, bytes *idx) { idx->b[1] = 'N'; }
static void torch_magic(bytes *bin, bytes *idx) { memcpy(idx->b, "TNTIDX\0\0", 8); }
static void version_2(bytes *bin, bytes *idx) { set_le(idx, OFF_VERSION, 2, 8); }
static void code_0(bytes *bin, bytes *idx) { idx->b[OFF_CODE] = 0; }
static void code_9(bytes *bin, bytes *idx) { idx->b[OFF_CODE] = 9; }
static void code_255(bytes *bin, bytes *idx) { idx->b[OFF_CODE] = 255; }
static void code_f64(bytes *bin, bytes *idx) { idx->b[OFF_CODE] = F64; }
static void code_f32(bytes *bin, bytes *idx) { idx->b[OFF_CODE] = F32; }
static void cut_header(bytes *bin, bytes *idx) { idx->n = 20; }
static void cut_magic(bytes *bin, bytes *idx) { idx->n = 5; }
static void cut_arrays(bytes *bin, bytes *idx) { idx->n -= 4; }
static void cut_to_header(bytes *bin, bytes *idx) { idx->n = 34; }
static void huge_count(bytes *bin, bytes *idx) { set_le(idx, OFF_SEQS, UINT64_MAX / 2, 8); }
static void huge_docs(bytes *bin, bytes *idx) { set_le(idx, OFF_DOCS, UINT64_MAX, 8); }
static void trailing(bytes *bin, bytes *idx) { put_le(idx, 0, 2); }
static void bin_short(bytes *bin, bytes *idx) { bin->n -= 2; }
static void bin_long(bytes *bin, bytes *idx) { put_le(bin, 7, 2); }
static void bin_odd(bytes *bin, bytes *idx) { bin->n -= 1; }
static void bin_empty(bytes *bin, bytes *idx) { bin->n = 0; }
static void size_grows(bytes *bin, bytes *idx) { set_le(idx, OFF_SIZES + 4, 3, 4); }
static void size_negative(bytes *bin, bytes *idx) { set_le(idx, OFF_SIZES + 4, (uint32_t)-2, 4); }
static void ptr_huge(bytes *bin, bytes *idx) { set_le(idx, OFF_POINTERS + 8, 1ull << 40, 8); }
static void ptr_negative(bytes *bin, bytes *idx) { set_le(idx, OFF_POINTERS + 8, (uint64_t)-6, 8); }
static void ptr_past_end(bytes *bin, bytes *idx) { set_le(idx, OFF_POINTERS + 16, 12, 8); }
static void ptr_off_by_2(bytes *bin, bytes *idx) { set_le(idx, OFF_POINTERS + 8, 4, 8); }
static void ptr_first(bytes *bin, bytes *idx) { set_le(idx, OFF_POINTERS, 2, 8); }
static void doc_no_zero(bytes *bin, bytes *idx) { set_le(idx, OFF_DOC_INDEX, 1, 8); }
static void doc_short(bytes *bin, bytes *idx) { set_le(idx, OFF_DOC_INDEX + 16, 2, 8); }
static void doc_past(bytes *bin, bytes *idx) { set_le(idx, OFF_DOC_INDEX + 16, 4, 8); }
static void doc_down(bytes *bin, bytes *idx)
{
    set_le(idx, OFF_DOC_INDEX + 8, 3, 8);
    set_le(idx, OFF_DOC_INDEX + 16, 2, 8);
}
static void no_docs(bytes *bin, bytes *idx) { set_le(idx, OFF_DOCS, 0, 8); idx->n -= 24; }
static void no_tokens(bytes *bin, bytes *idx)
{
    for (int i = 0; i < 3; i++) {
        set_le(idx, OFF_SIZES + 4 * (size_t)i, 0, 4);
        set_le(idx, OFF_POINTERS + 8 * (size_t)i, 0, 8);
    }
    bin->n = 0;
}

/* Each corruption of a good pair, the status it must give, and what the
 * message must say besides the file's name. */
static const struct {
    const char *name;
    corrupt_fn corrupt;
    mhub_status code;
    const char *file; /* the file the message must name */
    const char *says;
} CORRUPTIONS[] = {
    {"bad_magic", bad_magic, MHUB_ERR_PARSE, ".idx", "magic"},
    {"torch_magic", torch_magic, MHUB_ERR_PARSE, ".idx", "magic"},
    {"version_2", version_2, MHUB_ERR_UNSUPPORTED, ".idx", "version 2"},
    {"code_0", code_0, MHUB_ERR_PARSE, ".idx", "code 0"},
    {"code_9", code_9, MHUB_ERR_PARSE, ".idx", "code 9"},
    {"code_255", code_255, MHUB_ERR_PARSE, ".idx", "code 255"},
    {"code_f64", code_f64, MHUB_ERR_UNSUPPORTED, ".idx", "float64"},
    {"code_f32", code_f32, MHUB_ERR_UNSUPPORTED, ".idx", "float32"},
    {"cut_header", cut_header, MHUB_ERR_PARSE, ".idx", "truncated"},
    {"cut_magic", cut_magic, MHUB_ERR_PARSE, ".idx", "truncated"},
    {"cut_arrays", cut_arrays, MHUB_ERR_PARSE, ".idx", "truncated"},
    {"cut_to_header", cut_to_header, MHUB_ERR_PARSE, ".idx", "truncated"},
    {"huge_count", huge_count, MHUB_ERR_PARSE, ".idx", "truncated"},
    {"huge_docs", huge_docs, MHUB_ERR_PARSE, ".idx", "truncated"},
    {"trailing", trailing, MHUB_ERR_PARSE, ".idx", "follow"},
    {"bin_short", bin_short, MHUB_ERR_PARSE, ".bin", "16 bytes"},
    {"bin_long", bin_long, MHUB_ERR_PARSE, ".bin", "20 bytes"},
    {"bin_odd", bin_odd, MHUB_ERR_PARSE, ".bin", "17 bytes"},
    {"bin_empty", bin_empty, MHUB_ERR_PARSE, ".bin", "0 bytes"},
    {"size_grows", size_grows, MHUB_ERR_PARSE, ".idx", "add up to 10 uint16"},
    {"size_negative", size_negative, MHUB_ERR_PARSE, ".idx", "negative size -2"},
    {"ptr_huge", ptr_huge, MHUB_ERR_PARSE, ".idx", "outside"},
    {"ptr_negative", ptr_negative, MHUB_ERR_PARSE, ".idx", "outside"},
    {"ptr_past_end", ptr_past_end, MHUB_ERR_PARSE, ".idx", "outside"},
    {"ptr_off_by_2", ptr_off_by_2, MHUB_ERR_PARSE, ".idx", "add up to byte 6"},
    {"ptr_first", ptr_first, MHUB_ERR_PARSE, ".idx", "add up to byte 0"},
    {"doc_no_zero", doc_no_zero, MHUB_ERR_PARSE, ".idx", "document index 0"},
    {"doc_short", doc_short, MHUB_ERR_PARSE, ".idx", "last document index is 2"},
    {"doc_past", doc_past, MHUB_ERR_PARSE, ".idx", "document index 2 is 4"},
    {"doc_down", doc_down, MHUB_ERR_PARSE, ".idx", "document index 2 is 2"},
    {"no_docs", no_docs, MHUB_ERR_PARSE, ".idx", "no document indices"},
    {"no_tokens", no_tokens, MHUB_ERR_PARSE, ".bin", "empty"},
};

START_TEST(test_hostile_index)
{
    const size_t k = (size_t)_i;
    idx_spec sp = u16_spec();
    static bytes bin, idx;
    build_bin(&sp, &bin);
    build_idx(&sp, &idx);
    ck_assert_uint_eq(idx.n, IDX_LEN);
    ck_assert_uint_eq(bin.n, 18);
    CORRUPTIONS[k].corrupt(&bin, &idx);
    char prefix[512], needle[600];
    write_pair(CORRUPTIONS[k].name, &bin, &idx, prefix, sizeof prefix);
    snprintf(needle, sizeof needle, "%s%s", CORRUPTIONS[k].name, CORRUPTIONS[k].file);
    expect_open_fails(prefix, CORRUPTIONS[k].code, needle);
    ck_assert_msg(strstr(mhub_last_error(), CORRUPTIONS[k].says) != NULL,
                  "%s: \"%s\" does not say \"%s\"", CORRUPTIONS[k].name, mhub_last_error(),
                  CORRUPTIONS[k].says);
    if (getenv("MHUB_TEST_VERBOSE"))
        printf("%-14s %s\n", CORRUPTIONS[k].name, mhub_last_error());
}
END_TEST

/* Sizes that disagree with the .bin name both files. */
START_TEST(test_sizes_disagree_names_both_files)
{
    idx_spec sp = u16_spec();
    static bytes bin, idx;
    build_bin(&sp, &bin);
    build_idx(&sp, &idx);
    bin.n -= 2;
    char prefix[512];
    write_pair("disagree", &bin, &idx, prefix, sizeof prefix);
    expect_open_fails(prefix, MHUB_ERR_PARSE, "disagree.idx");
    ck_assert(strstr(mhub_last_error(), "disagree.bin") != NULL);
    ck_assert(strstr(mhub_last_error(), "9 uint16 tokens (18 bytes)") != NULL);
}
END_TEST

/* One half of a pair without the other. */
START_TEST(test_hostile_missing_half)
{
    idx_spec sp = u16_spec();
    char prefix[512], path[600];
    write_spec("half", &sp, prefix, sizeof prefix);
    snprintf(path, sizeof path, "%s.bin", prefix);
    ck_assert_int_eq(unlink(path), 0);
    /* by the .idx, and by the prefix */
    snprintf(path, sizeof path, "%s.idx", prefix);
    expect_open_fails(path, MHUB_ERR_IO, "half.bin");
    ck_assert(strstr(mhub_last_error(), "half.idx") && strstr(mhub_last_error(), "missing"));
    expect_open_fails(prefix, MHUB_ERR_IO, "half.bin");
    /* the .bin without its .idx */
    write_spec("other", &sp, prefix, sizeof prefix);
    snprintf(path, sizeof path, "%s.idx", prefix);
    ck_assert_int_eq(unlink(path), 0);
    snprintf(path, sizeof path, "%s.bin", prefix);
    expect_open_fails(path, MHUB_ERR_IO, "other.idx");
    expect_open_fails(prefix, MHUB_ERR_IO, "other.idx");
}
END_TEST

/* A multimodal index (int8 modes appended) reads as the same tokens. */
START_TEST(test_multimodal_modes_accepted)
{
    idx_spec sp = u16_spec();
    static bytes bin, idx;
    build_bin(&sp, &bin);
    build_idx(&sp, &idx);
    for (int i = 0; i < 3; i++)
        put_le(&idx, 0, 1);
    char prefix[512];
    write_pair("modes", &bin, &idx, prefix, sizeof prefix);
    mhub_dataset *ds;
    CK_OK(mhub_dataset_open(prefix, &ds));
    expect_tokens(ds, U16_TOKENS, 9);
    mhub_dataset_close(ds);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("dataset");
    TCase *tc = tcase_create("dataset");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_text_file);
    tcase_add_test(tc, test_text_without_pair);
    tcase_add_test(tc, test_indexed_opens_by_prefix_bin_or_idx);
    tcase_add_test(tc, test_dtype_variants);
    tcase_add_test(tc, test_token_ids_beyond_int32);
    tcase_add_test(tc, test_golden_megatron_pairs);
    tcase_add_test(tc, test_windows);
    tcase_add_test(tc, test_batches_same_at_any_dp_size);
    tcase_add_test(tc, test_batch_bad_input);
    tcase_add_test(tc, test_addition_file_format);
    tcase_add_test(tc, test_addition_deterministic);
    tcase_add_test(tc, test_addition_score);
    tcase_add_test(tc, test_addition_bad_input);
    tcase_add_test(tc, test_hostile_files);
    tcase_add_test(tc, test_hostile_too_short);
    tcase_add_loop_test(tc, test_hostile_index, 0,
                        (int)(sizeof CORRUPTIONS / sizeof CORRUPTIONS[0]));
    tcase_add_test(tc, test_sizes_disagree_names_both_files);
    tcase_add_test(tc, test_hostile_missing_half);
    tcase_add_test(tc, test_multimodal_modes_accepted);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
