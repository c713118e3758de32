/* dataset.c - see dataset.h.
 *
 * Both formats end up as one memory-mapped byte range holding the stream
 * in order: a text file is the stream, and a .bin is too once the index
 * is known to describe it exactly (every pointer equal to the running sum
 * of the sizes before it, the sizes adding up to the file's length). That
 * check is what lets a read at any token offset be a plain address
 * computation, so opening does it in full and the index is then unmapped.
 *
 * Files are read with explicit little-endian loads: the index's arrays
 * start at byte 34 and are not aligned, and Megatron writes
 * little-endian whatever the host. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mhub/dataset.h"
#include "src/fileio.h"

/* "MMIDIDX\0\0", version 1: Megatron-LM's _INDEX_HEADER. */
static const unsigned char IDX_MAGIC[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
#define IDX_MAGIC_LEN 9
#define IDX_VERSION 1
/* magic (9) + version u64 + dtype code u8 + sequence count u64 +
 * document count u64 */
#define IDX_HEADER_BYTES 34

struct mhub_dataset {
    mhub_dataset_format format;
    char *path;                 /* the token file: text file or .bin */
    const unsigned char *data;  /* its mapping; NULL for an empty file */
    size_t data_bytes;
    int dtype_code;             /* Megatron's code; 1 (uint8) for text */
    int token_bytes;
    int64_t tokens;
    int64_t documents;
    int64_t vocab;              /* 0 until mhub_dataset_vocab computes it */
};

/* ---- little-endian loads ------------------------------------------------- */

static uint64_t load_le(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t load_u64(const unsigned char *p) { return load_le(p, 8); }
static int64_t load_i64(const unsigned char *p) { return (int64_t)load_le(p, 8); }
static int32_t load_i32(const unsigned char *p) { return (int32_t)(uint32_t)load_le(p, 4); }

/* ---- token dtypes ---------------------------------------------------------- */

typedef struct token_dtype {
    const char *name;
    int bytes;     /* 0: a float dtype, which cannot hold token ids */
    bool is_signed;
} token_dtype;

/* Indexed by Megatron's DType code (formats.md): 1 uint8, 2 int8,
 * 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16. */
static const token_dtype DTYPES[] = {
    [1] = {"uint8", 1, false}, [2] = {"int8", 1, true},     [3] = {"int16", 2, true},
    [4] = {"int32", 4, true},  [5] = {"int64", 8, true},    [6] = {"float64", 0, false},
    [7] = {"float32", 0, false}, [8] = {"uint16", 2, false},
};
#define DTYPE_CODES ((int)(sizeof DTYPES / sizeof DTYPES[0]))

/* Token `i` of the stream, widened to int64 with its sign. */
static int64_t token_at(const mhub_dataset *ds, int64_t i)
{
    const unsigned char *p = ds->data + (size_t)i * (size_t)ds->token_bytes;
    uint64_t raw = load_le(p, ds->token_bytes);
    if (!DTYPES[ds->dtype_code].is_signed || ds->token_bytes == 8)
        return (int64_t)raw;
    /* sign-extend: flipping the sign bit and subtracting it moves the
     * values with it set below zero */
    uint64_t sign = (uint64_t)1 << (8 * ds->token_bytes - 1);
    return (int64_t)(raw ^ sign) - (int64_t)sign;
}

static mhub_status bad_token(const mhub_dataset *ds, int64_t index, int64_t value)
{
    return mhub_error(MHUB_ERR_PARSE,
                      "%s: token %lld has id %lld; token ids must be in [0, %d] (int32)",
                      ds->path, (long long)index, (long long)value, INT32_MAX);
}

/* ---- mapping files --------------------------------------------------------- */

/* Map `path` read-only. An empty regular file maps to (NULL, 0): callers
 * say why that is wrong for them. Directories and special files are
 * refused, naming what the file should have been. */
static mhub_status map_file(const char *path, const char *what, const unsigned char **data,
                            size_t *bytes)
{
    *data = NULL;
    *bytes = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mhub_error(MHUB_ERR_IO, "%s: cannot open %s: %s", path, what, strerror(errno));
    struct stat st;
    mhub_status s = MHUB_OK;
    if (fstat(fd, &st) != 0)
        s = mhub_error(MHUB_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    else if (S_ISDIR(st.st_mode))
        s = mhub_error(MHUB_ERR_IO, "%s: is a directory, expected %s", path, what);
    else if (!S_ISREG(st.st_mode))
        s = mhub_error(MHUB_ERR_IO, "%s: is not a regular file, expected %s", path, what);
    else if ((uintmax_t)st.st_size > SIZE_MAX)
        s = mhub_error(MHUB_ERR_IO, "%s: %jd bytes do not fit this address space", path,
                       (intmax_t)st.st_size);
    if (s == MHUB_OK && st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED)
            s = mhub_error(MHUB_ERR_IO, "%s: cannot map %s: %s", path, what, strerror(errno));
        else {
            *data = p;
            *bytes = (size_t)st.st_size;
        }
    }
    close(fd); /* the mapping keeps the file */
    return s;
}

static void unmap(const unsigned char *data, size_t bytes)
{
    if (data)
        munmap((void *)data, bytes);
}

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

/* ---- the index --------------------------------------------------------------- */

/* The .idx's layout once its header is read: where each array starts. */
typedef struct idx_layout {
    const char *path;
    const unsigned char *sizes;     /* int32[sequences] */
    const unsigned char *pointers;  /* int64[sequences] */
    const unsigned char *doc_index; /* int64[documents + 1] */
    uint64_t sequences, doc_entries;
    int dtype_code;
} idx_layout;

static mhub_status check_magic_and_version(const char *path, const unsigned char *p,
                                           size_t bytes)
{
    size_t have = bytes < IDX_MAGIC_LEN ? bytes : IDX_MAGIC_LEN;
    if (have == 0 || memcmp(p, IDX_MAGIC, have) != 0)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: bad magic; not a Megatron indexed dataset index (expected it "
                          "to start with \"MMIDIDX\\0\\0\")",
                          path);
    if (bytes < IDX_HEADER_BYTES)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: truncated: %zu bytes, shorter than the %d-byte header", path,
                          bytes, IDX_HEADER_BYTES);
    uint64_t version = load_u64(p + IDX_MAGIC_LEN);
    if (version != IDX_VERSION)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: index version %llu is not supported (only version %d)", path,
                          (unsigned long long)version, IDX_VERSION);
    return MHUB_OK;
}

static mhub_status check_dtype_code(const char *path, int code)
{
    if (code < 1 || code >= DTYPE_CODES)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: unknown token dtype code %d (Megatron's codes are 1-8)", path,
                          code);
    if (DTYPES[code].bytes == 0)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s: token dtype %s (code %d) cannot hold token ids; expected an "
                          "integer dtype",
                          path, DTYPES[code].name, code);
    return MHUB_OK;
}

/* Header fields, then the arrays' places. The file must be exactly the
 * header and three arrays, or those plus the int8[sequences] modes that
 * multimodal datasets append; every length is checked by division, so a
 * hostile count cannot overflow. */
static mhub_status read_layout(const char *path, const unsigned char *p, size_t bytes,
                               idx_layout *lay)
{
    MHUB_TRY(check_magic_and_version(path, p, bytes));
    lay->path = path;
    lay->dtype_code = p[IDX_MAGIC_LEN + 8];
    MHUB_TRY(check_dtype_code(path, lay->dtype_code));
    lay->sequences = load_u64(p + IDX_MAGIC_LEN + 9);
    lay->doc_entries = load_u64(p + IDX_MAGIC_LEN + 17);
    size_t rest = bytes - IDX_HEADER_BYTES;
    bool fits = lay->sequences <= rest / 12 &&
                lay->doc_entries <= (rest - 12 * lay->sequences) / 8;
    if (!fits)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: truncated: the header promises %llu sequences and %llu document "
                          "indices (34 + 12 x %llu + 8 x %llu bytes), the file has %zu bytes",
                          path, (unsigned long long)lay->sequences,
                          (unsigned long long)lay->doc_entries,
                          (unsigned long long)lay->sequences,
                          (unsigned long long)lay->doc_entries, bytes);
    size_t extra = rest - 12 * lay->sequences - 8 * lay->doc_entries;
    if (extra != 0 && extra != lay->sequences)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: %zu bytes follow the document indices; expected none (or %llu "
                          "sequence modes)",
                          path, extra, (unsigned long long)lay->sequences);
    lay->sizes = p + IDX_HEADER_BYTES;
    lay->pointers = lay->sizes + 4 * lay->sequences;
    lay->doc_index = lay->pointers + 8 * lay->sequences;
    return MHUB_OK;
}

/* Sum of the sizes in tokens; each must be >= 0 and the total's bytes
 * must fit int64. */
static mhub_status sum_sizes(const idx_layout *lay, int token_bytes, int64_t *tokens)
{
    int64_t total = 0;
    for (uint64_t i = 0; i < lay->sequences; i++) {
        int32_t n = load_i32(lay->sizes + 4 * i);
        if (n < 0)
            return mhub_error(MHUB_ERR_PARSE, "%s: sequence %llu has negative size %d",
                              lay->path, (unsigned long long)i, n);
        if (total > INT64_MAX / token_bytes - n)
            return mhub_error(MHUB_ERR_PARSE, "%s: the sequence sizes overflow int64",
                              lay->path);
        total += n;
    }
    *tokens = total;
    return MHUB_OK;
}

/* Pointer i must be in the .bin and equal the bytes of the sequences
 * before it: Megatron's writer computes them that way, and the flat
 * stream depends on it. */
static mhub_status check_pointers(const idx_layout *lay, int token_bytes, size_t bin_bytes,
                                  const char *bin_path)
{
    int64_t expect = 0;
    for (uint64_t i = 0; i < lay->sequences; i++) {
        int64_t ptr = load_i64(lay->pointers + 8 * i);
        int64_t len = (int64_t)load_i32(lay->sizes + 4 * i) * token_bytes;
        if (ptr < 0 || (uint64_t)ptr > bin_bytes || (uint64_t)len > bin_bytes - (uint64_t)ptr)
            return mhub_error(MHUB_ERR_PARSE,
                              "%s: sequence %llu's pointer %lld (+ %lld bytes) is outside %s "
                              "(%zu bytes)",
                              lay->path, (unsigned long long)i, (long long)ptr, (long long)len,
                              bin_path, bin_bytes);
        if (ptr != expect)
            return mhub_error(MHUB_ERR_PARSE,
                              "%s: sequence %llu's pointer is %lld, but the sizes before it "
                              "add up to byte %lld",
                              lay->path, (unsigned long long)i, (long long)ptr,
                              (long long)expect);
        expect += len;
    }
    return MHUB_OK;
}

/* document_indices: 0, then non-decreasing sequence indices, ending at
 * the sequence count. */
static mhub_status check_documents(const idx_layout *lay)
{
    if (lay->doc_entries == 0)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: no document indices (Megatron writes a leading 0 and one end "
                          "per document)",
                          lay->path);
    int64_t prev = 0;
    for (uint64_t i = 0; i < lay->doc_entries; i++) {
        int64_t d = load_i64(lay->doc_index + 8 * i);
        bool ok = (i == 0 ? d == 0 : d >= prev) && (uint64_t)d <= lay->sequences;
        if (!ok)
            return mhub_error(MHUB_ERR_PARSE,
                              "%s: document index %llu is %lld; expected a non-decreasing "
                              "run from 0 to the sequence count %llu",
                              lay->path, (unsigned long long)i, (long long)d,
                              (unsigned long long)lay->sequences);
        prev = d;
    }
    if ((uint64_t)prev != lay->sequences)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: the last document index is %lld, not the sequence count %llu",
                          lay->path, (long long)prev, (unsigned long long)lay->sequences);
    return MHUB_OK;
}

/* Everything in the index against the mapped .bin, then the fields the
 * dataset keeps. */
static mhub_status check_index(const idx_layout *lay, mhub_dataset *ds)
{
    int token_bytes = DTYPES[lay->dtype_code].bytes;
    int64_t tokens = 0;
    MHUB_TRY(sum_sizes(lay, token_bytes, &tokens));
    if ((uint64_t)tokens * (uint64_t)token_bytes != ds->data_bytes)
        return mhub_error(MHUB_ERR_PARSE,
                          "%s: the sequence sizes add up to %lld %s tokens (%lld bytes), but "
                          "%s is %zu bytes",
                          lay->path, (long long)tokens, DTYPES[lay->dtype_code].name,
                          (long long)(tokens * token_bytes), ds->path, ds->data_bytes);
    MHUB_TRY(check_pointers(lay, token_bytes, ds->data_bytes, ds->path));
    MHUB_TRY(check_documents(lay));
    ds->dtype_code = lay->dtype_code;
    ds->token_bytes = token_bytes;
    ds->tokens = tokens;
    ds->documents = (int64_t)lay->doc_entries - 1;
    return MHUB_OK;
}

/* Map PREFIX.bin into ds and check PREFIX.idx against it. */
static mhub_status open_indexed(const char *prefix, mhub_dataset *ds)
{
    char *idx_path = concat(prefix, ".idx");
    ds->path = concat(prefix, ".bin");
    if (!idx_path || !ds->path) {
        free(idx_path);
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: path", prefix);
    }
    ds->format = MHUB_DATASET_INDEXED;
    const unsigned char *idx = NULL;
    size_t idx_bytes = 0;
    idx_layout lay = {0};
    mhub_status s = map_file(idx_path, "a Megatron .idx index", &idx, &idx_bytes);
    if (s == MHUB_OK)
        s = read_layout(idx_path, idx, idx_bytes, &lay);
    if (s == MHUB_OK && !exists(ds->path))
        s = mhub_error(MHUB_ERR_IO, "%s: the index's data file %s is missing", idx_path,
                       ds->path);
    if (s == MHUB_OK)
        s = map_file(ds->path, "a Megatron .bin data file", &ds->data, &ds->data_bytes);
    if (s == MHUB_OK)
        s = check_index(&lay, ds);
    unmap(idx, idx_bytes);
    free(idx_path);
    return s;
}

static mhub_status open_text(const char *path, mhub_dataset *ds)
{
    ds->format = MHUB_DATASET_TEXT;
    ds->path = strdup(path);
    if (!ds->path)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: path", path);
    /* the path may have been meant as either format: say both are absent */
    if (!exists(path))
        return mhub_error(MHUB_ERR_IO,
                          "%s: no such file, and no Megatron dataset %s.bin + %s.idx either",
                          path, path, path);
    MHUB_TRY(map_file(path, "a text dataset", &ds->data, &ds->data_bytes));
    ds->dtype_code = 1; /* every byte a token: uint8 */
    ds->token_bytes = 1;
    ds->tokens = (int64_t)ds->data_bytes;
    ds->documents = 1;
    ds->vocab = 256;
    return MHUB_OK;
}

/* *prefix = the indexed pair's prefix that `path` names, or NULL for a
 * text file (the rule is in dataset.h). With no file at `path`, one half
 * of a pair is enough, so that the missing half is what gets reported. */
static mhub_status find_prefix(const char *path, char **prefix)
{
    *prefix = NULL;
    if (has_suffix(path, ".bin") || has_suffix(path, ".idx"))
        *prefix = strndup(path, strlen(path) - 4);
    else {
        char *idx = concat(path, ".idx"), *bin = concat(path, ".bin");
        bool oom = !idx || !bin, pair = false;
        if (!oom) {
            bool has_idx = exists(idx), has_bin = exists(bin);
            pair = (has_idx && has_bin) || (!exists(path) && (has_idx || has_bin));
        }
        free(idx);
        free(bin);
        if (oom)
            return mhub_error(MHUB_ERR_NO_MEMORY, "%s: path", path);
        if (!pair)
            return MHUB_OK;
        *prefix = strdup(path);
    }
    return *prefix ? MHUB_OK : mhub_error(MHUB_ERR_NO_MEMORY, "%s: path", path);
}

mhub_status mhub_dataset_open(const char *path, mhub_dataset **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!path || !*path)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path is NULL or empty");
    char *prefix;
    MHUB_TRY(find_prefix(path, &prefix));
    mhub_dataset *ds = calloc(1, sizeof *ds);
    if (!ds) {
        free(prefix);
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: dataset", path);
    }
    mhub_status s = prefix ? open_indexed(prefix, ds) : open_text(path, ds);
    free(prefix);
    if (s == MHUB_OK && ds->tokens == 0)
        s = mhub_error(MHUB_ERR_PARSE, "%s: the dataset is empty (no tokens)", ds->path);
    if (s != MHUB_OK) {
        mhub_dataset_close(ds);
        return s;
    }
    *out = ds;
    return MHUB_OK;
}

void mhub_dataset_close(mhub_dataset *ds)
{
    if (!ds)
        return;
    unmap(ds->data, ds->data_bytes);
    free(ds->path);
    free(ds);
}

mhub_dataset_format mhub_dataset_get_format(const mhub_dataset *ds) { return ds->format; }
const char *mhub_dataset_path(const mhub_dataset *ds) { return ds->path; }
int64_t mhub_dataset_tokens(const mhub_dataset *ds) { return ds->tokens; }
int64_t mhub_dataset_documents(const mhub_dataset *ds) { return ds->documents; }

/* ---- reading ------------------------------------------------------------------ */

mhub_status mhub_dataset_vocab(mhub_dataset *ds, int64_t *vocab)
{
    if (!ds || !vocab)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "ds or vocab is NULL");
    if (ds->vocab == 0) {
        int64_t max = 0;
        for (int64_t i = 0; i < ds->tokens; i++) {
            int64_t t = token_at(ds, i);
            if (t < 0 || t > INT32_MAX)
                return bad_token(ds, i, t);
            max = t > max ? t : max;
        }
        ds->vocab = max + 1;
    }
    *vocab = ds->vocab;
    return MHUB_OK;
}

mhub_status mhub_dataset_read(const mhub_dataset *ds, int64_t first, int64_t count,
                              int32_t *dst)
{
    if (!ds || (!dst && count > 0))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "ds or dst is NULL");
    if (first < 0 || count < 0 || first > ds->tokens - count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "%s: tokens [%lld, %lld + %lld) are not inside [0, %lld)", ds->path,
                          (long long)first, (long long)first, (long long)count,
                          (long long)ds->tokens);
    if (ds->format == MHUB_DATASET_TEXT) { /* no id can be out of range */
        for (int64_t i = 0; i < count; i++)
            dst[i] = ds->data[first + i];
        return MHUB_OK;
    }
    for (int64_t i = 0; i < count; i++) {
        int64_t t = token_at(ds, first + i);
        if (t < 0 || t > INT32_MAX)
            return bad_token(ds, first + i, t);
        dst[i] = (int32_t)t;
    }
    return MHUB_OK;
}

/* ---- training windows ------------------------------------------------------------ */

mhub_status mhub_dataset_windows(const mhub_dataset *ds, int seq_len, int64_t *windows)
{
    if (!ds || !windows)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "ds or windows is NULL");
    if (seq_len < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "seq_len %d must be >= 1", seq_len);
    if (ds->tokens - 1 < seq_len)
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "%s: %lld tokens are too few for one training window of seq_len "
                          "%d, which takes %lld tokens (seq_len + 1)",
                          ds->path, (long long)ds->tokens, seq_len, (long long)seq_len + 1);
    *windows = (ds->tokens - 1) / seq_len;
    return MHUB_OK;
}

mhub_status mhub_dataset_window(const mhub_dataset *ds, int seq_len, int64_t index,
                                int32_t *inputs, int32_t *targets)
{
    if (!inputs || !targets)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "inputs or targets is NULL");
    int64_t n = 0;
    MHUB_TRY(mhub_dataset_windows(ds, seq_len, &n));
    if (index < 0 || index >= n)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: window %lld is not in [0, %lld)",
                          ds->path, (long long)index, (long long)n);
    /* inputs and targets are the same tokens shifted by one: two reads
     * instead of a scratch row */
    int64_t first = index * seq_len;
    MHUB_TRY(mhub_dataset_read(ds, first, seq_len, inputs));
    return mhub_dataset_read(ds, first + 1, seq_len, targets);
}

mhub_status mhub_dataset_batch(const mhub_dataset *ds, const mhub_sampler *sampler,
                               int seq_len, int64_t step, int dp_rank, int dp_size,
                               int micro_batches, int micro, int32_t *inputs,
                               int32_t *targets)
{
    if (!ds || !sampler || !inputs || !targets)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "ds, sampler, inputs or targets is NULL");
    int64_t windows = 0, first = 0, rows = 0;
    MHUB_TRY(mhub_dataset_windows(ds, seq_len, &windows));
    /* a sampler over another count would silently skip windows or read
     * past the end */
    if (sampler->dataset_size != (uint64_t)windows)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "%s: the sampler covers %llu samples, but the dataset has %lld "
                          "windows at seq_len %d",
                          ds->path, (unsigned long long)sampler->dataset_size,
                          (long long)windows, seq_len);
    MHUB_TRY(mhub_sampler_rank_slice(sampler, dp_rank, dp_size, micro_batches, micro, &first,
                                     &rows));
    for (int64_t r = 0; r < rows; r++) {
        uint64_t w;
        MHUB_TRY(mhub_sampler_index(sampler, step, first + r, &w));
        MHUB_TRY(mhub_dataset_window(ds, seq_len, (int64_t)w, inputs + r * seq_len,
                                     targets + r * seq_len));
    }
    return MHUB_OK;
}

/* ---- the addition task -------------------------------------------------------------- */

#define ADDITION_MAX_DIGITS 9 /* 10^18 operand pairs still fit int64 */

static int64_t pow10_i64(int n)
{
    int64_t p = 1;
    while (n-- > 0)
        p *= 10;
    return p;
}

/* Write v as exactly `width` decimal digits, most significant first
 * (reverse = false) or least significant first. */
static void put_digits(char *out, int64_t v, int width, bool reverse)
{
    for (int i = 0; i < width; i++, v /= 10)
        out[reverse ? i : width - 1 - i] = (char)('0' + v % 10);
}

static mhub_status check_digits(int digits)
{
    if (digits < 1 || digits > ADDITION_MAX_DIGITS)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "digits %d is not in [1, %d]", digits,
                          ADDITION_MAX_DIGITS);
    return MHUB_OK;
}

/* Problems are a permutation of the operand pairs, so the generator and
 * the scorer share a sampler over 10^(2 digits) of them. */
static mhub_status problem_sampler(int digits, uint64_t seed, mhub_sampler *s)
{
    MHUB_TRY(check_digits(digits));
    return mhub_sampler_init(s, (uint64_t)pow10_i64(2 * digits), 1, seed, true);
}

/* Problem `index`: prompt "A+B=" and answer "S", not NUL-terminated. */
static mhub_status format_problem(const mhub_sampler *s, int digits, int64_t index,
                                  char *prompt, char *answer)
{
    if (index < 0 || (uint64_t)index >= s->dataset_size)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "problem %lld is not in [0, %llu): %d-digit addition has no more",
                          (long long)index, (unsigned long long)s->dataset_size, digits);
    uint64_t pair;
    MHUB_TRY(mhub_sampler_permute(s, 0, (uint64_t)index, &pair));
    int64_t base = pow10_i64(digits), a = (int64_t)pair / base, b = (int64_t)pair % base;
    put_digits(prompt, a, digits, false);
    prompt[digits] = '+';
    put_digits(prompt + digits + 1, b, digits, false);
    prompt[2 * digits + 1] = '=';
    put_digits(answer, a + b, digits + 1, true);
    return MHUB_OK;
}

mhub_status mhub_addition_problem(int digits, uint64_t seed, int64_t index, char *prompt,
                                  char *answer)
{
    if (!prompt || !answer)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "prompt or answer is NULL");
    mhub_sampler s;
    MHUB_TRY(problem_sampler(digits, seed, &s));
    MHUB_TRY(format_problem(&s, digits, index, prompt, answer));
    prompt[2 * digits + 2] = '\0';
    answer[digits + 1] = '\0';
    return MHUB_OK;
}

mhub_status mhub_addition_generate(const char *path, int64_t count, int digits, uint64_t seed)
{
    if (!path)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path is NULL");
    mhub_sampler s;
    MHUB_TRY(problem_sampler(digits, seed, &s));
    if (count < 1 || (uint64_t)count > s.dataset_size)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "%s: count %lld is not in [1, %llu] (the %d-digit problems)", path,
                          (long long)count, (unsigned long long)s.dataset_size, digits);
    size_t prompt_len = (size_t)(2 * digits + 2), line = prompt_len + (size_t)digits + 2;
    if ((uint64_t)count > SIZE_MAX / line)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: %lld problems do not fit in memory", path,
                          (long long)count);
    char *text = malloc((size_t)count * line);
    if (!text)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: %lld problems", path, (long long)count);
    mhub_status st = MHUB_OK;
    for (int64_t i = 0; i < count && st == MHUB_OK; i++) {
        char *l = text + (size_t)i * line;
        st = format_problem(&s, digits, i, l, l + prompt_len);
        l[line - 1] = '\n';
    }
    if (st == MHUB_OK)
        st = mhub_file_write_atomic(path, text, (size_t)count * line);
    free(text);
    return st;
}

/* The completion up to its first newline (or its end) is the answer. */
static bool exact_match(const char *completion, const char *answer, size_t answer_len)
{
    size_t n = strcspn(completion, "\n");
    return n == answer_len && memcmp(completion, answer, n) == 0;
}

mhub_status mhub_addition_score(int digits, uint64_t seed, int64_t first, int64_t count,
                                mhub_completion_fn complete, void *ctx, double *accuracy)
{
    if (!complete || !accuracy)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "complete or accuracy is NULL");
    mhub_sampler s;
    MHUB_TRY(problem_sampler(digits, seed, &s));
    if (first < 0 || count < 1 || (uint64_t)first >= s.dataset_size ||
        (uint64_t)count > s.dataset_size - (uint64_t)first)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "problems [%lld, %lld + %lld) are not inside the %llu %d-digit "
                          "problems",
                          (long long)first, (long long)first, (long long)count,
                          (unsigned long long)s.dataset_size, digits);
    /* room for the answer, then its newline or whatever the model writes
     * instead (so a completion that runs on past the answer without a
     * newline fails), then a NUL */
    char prompt[2 * ADDITION_MAX_DIGITS + 3], answer[ADDITION_MAX_DIGITS + 2];
    char out[ADDITION_MAX_DIGITS + 3];
    int out_size = digits + 3;
    int64_t correct = 0;
    for (int64_t i = first; i < first + count; i++) {
        MHUB_TRY(mhub_addition_problem(digits, seed, i, prompt, answer));
        out[0] = '\0';
        MHUB_TRY(complete(ctx, prompt, out, out_size));
        out[out_size - 1] = '\0'; /* a callback that forgot the NUL */
        correct += exact_match(out, answer, (size_t)digits + 1);
    }
    *accuracy = (double)correct / (double)count;
    return MHUB_OK;
}
