/* safetensors.c - see safetensors.h.
 *
 * Reading: map the file, check the header text (length, '{', NUL bytes,
 * UTF-8, the \u0000 escape) before cJSON sees it, read every entry with
 * type and range checks, refuse duplicate names, then check that the
 * tensors, sorted by offset, tile the data region exactly. Nothing is
 * trusted before it is checked, so a hostile file ends in an error
 * naming the file and the tensor, never in a read outside the map.
 *
 * Writing: check every entry, order them as Hugging Face's library does,
 * build the header (the only thing held in memory) and stream header and
 * tensors through an atomic temporary file. */
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
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mhub/safetensors.h"
#include "src/fileio.h"

#define MAX_NDIM MHUB_SAFETENSORS_MAX_NDIM
/* cJSON reads numbers as doubles, exact only below 2^53: a larger shape
 * or offset could have been rounded, so it is refused rather than
 * guessed (no real file comes near: offsets are bytes in one file). */
#define EXACT_LIMIT 9007199254740992.0
#define EXACT_LIMIT_U64 ((uint64_t)1 << 53)
/* Longest part of a name quoted in a message. */
#define SHOWN_CAP 64
/* Room for a shape in a message: "[" + 8 x "9007199254740991, " + "]". */
#define SHAPE_TEXT 192
#define METADATA_KEY "__metadata__"

/* ---- dtypes ------------------------------------------------------------- */

typedef struct st_dtype {
    const char *name;
    size_t size; /* bytes per element */
    /* Position in the reference library's Dtype enum; its writer orders
     * tensors by this, descending, then by name. The gaps are the
     * sub-byte types (F4, F6_E2M3, F6_E3M2), which mhub does not read. */
    int rank;
    int mhub; /* the mhub_dtype, or -1 */
} st_dtype;

static const st_dtype dtypes[] = {
    {"BOOL", 1, 0, -1},        {"U8", 1, 4, -1},          {"I8", 1, 5, -1},
    {"F8_E5M2", 1, 6, -1},     {"F8_E4M3", 1, 7, -1},     {"F8_E8M0", 1, 8, -1},
    {"F8_E4M3FNUZ", 1, 9, -1}, {"F8_E5M2FNUZ", 1, 10, -1}, {"I16", 2, 11, -1},
    {"U16", 2, 12, -1},        {"F16", 2, 13, MHUB_F16},  {"BF16", 2, 14, MHUB_BF16},
    {"I32", 4, 15, -1},        {"U32", 4, 16, -1},        {"F32", 4, 17, MHUB_F32},
    {"C64", 8, 18, -1},        {"F64", 8, 19, -1},        {"I64", 8, 20, -1},
    {"U64", 8, 21, -1},
};
#define NUM_DTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

static const st_dtype *dtype_by_name(const char *name)
{
    for (int i = 0; i < NUM_DTYPES; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return &dtypes[i];
    return NULL;
}

static const st_dtype *dtype_by_mhub(mhub_dtype dt)
{
    for (int i = 0; i < NUM_DTYPES; i++)
        if (dtypes[i].mhub >= 0 && dtypes[i].mhub == (int)dt)
            return &dtypes[i];
    return NULL;
}

/* "BOOL, U8, ..." for unknown-dtype messages. */
static const char *dtype_list(char *buf, size_t len)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int i = 0; i < NUM_DTYPES && at < len; i++)
        at += (size_t)snprintf(buf + at, len - at, "%s%s", i ? ", " : "", dtypes[i].name);
    return buf;
}

/* ---- messages --------------------------------------------------------------- */

/* `s` cut to SHOWN_CAP bytes at a UTF-8 boundary, control characters as
 * '?', so a hostile name cannot flood or garble a message. */
static const char *shown(const char *s, char buf[SHOWN_CAP + 4])
{
    size_t n = strlen(s), cut = n > SHOWN_CAP ? SHOWN_CAP : n;
    while (cut < n && cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--; /* back to the start of a UTF-8 sequence */
    for (size_t i = 0; i < cut; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    strcpy(buf + cut, cut < n ? "..." : "");
    return buf;
}

static const char *shape_text(const int64_t *shape, int ndim, char buf[SHAPE_TEXT])
{
    size_t at = (size_t)snprintf(buf, SHAPE_TEXT, "[");
    for (int i = 0; i < ndim && at < SHAPE_TEXT; i++)
        at += (size_t)snprintf(buf + at, SHAPE_TEXT - at, "%s%" PRId64, i ? ", " : "", shape[i]);
    if (at < SHAPE_TEXT)
        snprintf(buf + at, SHAPE_TEXT - at, "]");
    return buf;
}

/* "<path>: tensor '<name>': <message>" with code. */
static mhub_status tensor_error(mhub_status code, const char *path, const char *name,
                                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static mhub_status tensor_error(mhub_status code, const char *path, const char *name,
                                const char *fmt, ...)
{
    char msg[512], sn[SHOWN_CAP + 4];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mhub_error(code, "%s: tensor '%s': %s", path, shown(name, sn), msg);
}

/* ---- names -------------------------------------------------------------- */

typedef struct named {
    const char *name;
    int index;
} named;

static int named_cmp(const void *a, const void *b)
{
    const named *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->index > y->index) - (x->index < y->index);
}

/* Sort v by name; the first name that appears twice, or NULL. Sorting
 * keeps this O(n log n) for headers with millions of entries. */
static const char *sort_named(named *v, int n)
{
    if (n > 1)
        qsort(v, (size_t)n, sizeof *v, named_cmp);
    for (int i = 1; i < n; i++)
        if (strcmp(v[i - 1].name, v[i].name) == 0)
            return v[i].name;
    return NULL;
}

/* ---- the handle ----------------------------------------------------------- */

typedef struct st_tensor {
    char *name;
    const st_dtype *dt;
    int ndim;
    int64_t shape[MAX_NDIM];
    int64_t numel;
    uint64_t begin, end; /* relative to the start of the data */
    int pos;             /* place in the header, to break ties in sorting */
} st_tensor;

struct mhub_safetensors {
    char *path;
    unsigned char *map;
    size_t map_len;
    size_t data_start; /* 8 + header length */
    st_tensor *tensors; /* in data order once open */
    int count, cap;
    int *by_name;       /* tensor indices sorted by name, for find */
    char **meta;        /* NULL-terminated key, value pairs; NULL when absent */
};

static void free_kv(char **kv)
{
    for (char **p = kv; p && *p; p++)
        free(*p);
    free(kv);
}

void mhub_safetensors_close(mhub_safetensors *st)
{
    if (!st)
        return;
    for (int i = 0; i < st->count; i++)
        free(st->tensors[i].name);
    free(st->tensors);
    free(st->by_name);
    free_kv(st->meta);
    if (st->map)
        munmap(st->map, st->map_len);
    free(st->path);
    free(st);
}

/* ---- opening: the file and the header length --------------------------------- */

static uint64_t load_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static mhub_status map_file(mhub_safetensors *st)
{
    int fd = open(st->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return mhub_error(MHUB_ERR_IO, "cannot open %s: %s", st->path, strerror(errno));
    struct stat sb;
    mhub_status s = MHUB_OK;
    if (fstat(fd, &sb) != 0)
        s = mhub_error(MHUB_ERR_IO, "cannot stat %s: %s", st->path, strerror(errno));
    else if (!S_ISREG(sb.st_mode))
        s = mhub_error(MHUB_ERR_IO, "%s is not a regular file, expected a safetensors file",
                       st->path);
    else if (sb.st_size < 8)
        s = mhub_error(MHUB_ERR_PARSE, "%s: the file is %jd bytes, too short for the 8-byte "
                       "header length of a safetensors file", st->path, (intmax_t)sb.st_size);
    else if ((uintmax_t)sb.st_size > SIZE_MAX)
        s = mhub_error(MHUB_ERR_IO, "%s: %jd bytes do not fit in the address space", st->path,
                       (intmax_t)sb.st_size);
    if (s == MHUB_OK) {
        void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED)
            s = mhub_error(MHUB_ERR_IO, "cannot map %s: %s", st->path, strerror(errno));
        else
            st->map = map, st->map_len = (size_t)sb.st_size;
    }
    close(fd); /* the map keeps the file */
    return s;
}

static mhub_status read_header_length(mhub_safetensors *st)
{
    uint64_t n = load_u64(st->map);
    if (n > MHUB_SAFETENSORS_MAX_HEADER)
        return mhub_error(MHUB_ERR_PARSE, "%s: the header length %" PRIu64 " is over the %" PRIu64
                          "-byte limit (not a safetensors file?)", st->path, n,
                          MHUB_SAFETENSORS_MAX_HEADER);
    if (n > st->map_len - 8)
        return mhub_error(MHUB_ERR_PARSE, "%s: the header length %" PRIu64 " runs past the end "
                          "of the file (%zu bytes; truncated?)", st->path, n, st->map_len);
    st->data_start = 8 + (size_t)n;
    return MHUB_OK;
}

/* ---- opening: the header text ---------------------------------------------- */

static bool json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* One pass over the header's strings for what cJSON lets through but
 * JSON forbids: the escape \u0000 (cJSON would turn it into a NUL that
 * silently cuts a name) and raw control characters, inside strings or
 * between tokens (cJSON skips any byte below 0x21 as space). */
static mhub_status scan_strings(const char *path, const char *h, size_t n)
{
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (c < 0x20 && (in_string || !json_space((char)c)))
            return mhub_error(MHUB_ERR_PARSE, "%s: control character 0x%02x at header offset "
                              "%zu", path, (unsigned)c, i);
        if (c == '"') {
            in_string = !in_string;
        } else if (c == '\\' && in_string) {
            if (i + 5 < n && h[i + 1] == 'u' && memcmp(h + i + 2, "0000", 4) == 0)
                return mhub_error(MHUB_ERR_PARSE, "%s: the escape \\u0000 at header offset %zu "
                                  "is not allowed", path, i);
            i++; /* the escaped character cannot end the string */
        }
    }
    return MHUB_OK;
}

/* What cJSON cannot be trusted with: the header must be an object
 * (starting with '{' as the format requires), text (no NUL byte: the
 * length is the truth), well-formed UTF-8, and JSON's strings. */
static mhub_status check_header_text(const char *path, const char *h, size_t n)
{
    if (n == 0)
        return mhub_error(MHUB_ERR_PARSE, "%s: the header is empty", path);
    if (h[0] != '{')
        return mhub_error(MHUB_ERR_PARSE, "%s: the header must start with '{' (a JSON object), "
                          "not byte 0x%02x", path, (unsigned)(unsigned char)h[0]);
    const char *nul = memchr(h, '\0', n);
    if (nul)
        return mhub_error(MHUB_ERR_PARSE, "%s: NUL byte at header offset %zu (the header is "
                          "JSON text)", path, (size_t)(nul - h));
    size_t bad = mhub_utf8_invalid_at((const unsigned char *)h, n);
    if (bad < n)
        return mhub_error(MHUB_ERR_PARSE, "%s: the header is not valid UTF-8 at offset %zu "
                          "(byte 0x%02x)", path, bad, (unsigned)(unsigned char)h[bad]);
    return scan_strings(path, h, n);
}

/* Parse the checked header; writers pad it with spaces after the object. */
static mhub_status parse_header_json(const char *path, const char *h, size_t n, cJSON **out)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(h, n, &end, 0);
    size_t at = end && end >= h && end <= h + n ? (size_t)(end - h) : n;
    if (!root)
        return mhub_error(MHUB_ERR_PARSE, "%s: the header is not valid JSON (error near header "
                          "offset %zu)", path, at);
    if (!cJSON_IsObject(root)) {
        mhub_status s = mhub_error(MHUB_ERR_PARSE, "%s: the header must be a JSON object, not %s",
                                   path, mhub_json_kind(root));
        cJSON_Delete(root);
        return s;
    }
    while (at < n && json_space(h[at]))
        at++;
    if (at < n) {
        cJSON_Delete(root);
        return mhub_error(MHUB_ERR_PARSE, "%s: unexpected byte 0x%02x after the header's JSON "
                          "object at header offset %zu (only spaces may pad it)", path,
                          (unsigned)(unsigned char)h[at], at);
    }
    *out = root;
    return MHUB_OK;
}

/* ---- opening: the entries ----------------------------------------------------- */

/* An integer in [0, 2^53) from a JSON number; `what` names it
 * ("shape[1]"). */
static mhub_status read_count(const char *path, const char *name, const cJSON *item,
                              const char *what, uint64_t *out)
{
    if (!cJSON_IsNumber(item))
        return tensor_error(MHUB_ERR_PARSE, path, name,
                            "%s must be a non-negative integer, not %s", what,
                            mhub_json_kind(item));
    double d = item->valuedouble;
    if (d < 0)
        return tensor_error(MHUB_ERR_PARSE, path, name, "%s = %.17g is negative", what, d);
    if (d != floor(d))
        return tensor_error(MHUB_ERR_PARSE, path, name, "%s = %.17g is not an integer", what, d);
    if (d >= EXACT_LIMIT)
        return tensor_error(MHUB_ERR_PARSE, path, name,
                            "%s = %.17g is too large (2^53 or more cannot be read exactly)",
                            what, d);
    *out = (uint64_t)d;
    return MHUB_OK;
}

static mhub_status read_dtype(const char *path, st_tensor *t, const cJSON *item)
{
    if (!cJSON_IsString(item))
        return tensor_error(MHUB_ERR_PARSE, path, t->name, "dtype must be a string, not %s",
                            mhub_json_kind(item));
    t->dt = dtype_by_name(item->valuestring);
    if (!t->dt) {
        char sn[SHOWN_CAP + 4], list[256];
        return tensor_error(MHUB_ERR_PARSE, path, t->name, "unknown dtype '%s' (known: %s)",
                            shown(item->valuestring, sn), dtype_list(list, sizeof list));
    }
    return MHUB_OK;
}

static mhub_status read_shape(const char *path, st_tensor *t, const cJSON *item)
{
    if (!cJSON_IsArray(item))
        return tensor_error(MHUB_ERR_PARSE, path, t->name, "shape must be an array, not %s",
                            mhub_json_kind(item));
    int ndim = cJSON_GetArraySize(item);
    if (ndim > MAX_NDIM)
        return tensor_error(MHUB_ERR_UNSUPPORTED, path, t->name,
                            "%d dimensions; mhub reads at most %d", ndim, MAX_NDIM);
    t->ndim = 0;
    for (const cJSON *d = item->child; d; d = d->next) {
        char what[32];
        snprintf(what, sizeof what, "shape[%d]", t->ndim);
        uint64_t v;
        MHUB_TRY(read_count(path, t->name, d, what, &v));
        t->shape[t->ndim++] = (int64_t)v;
    }
    return MHUB_OK;
}

static mhub_status read_offsets(const char *path, st_tensor *t, const cJSON *item)
{
    if (!cJSON_IsArray(item))
        return tensor_error(MHUB_ERR_PARSE, path, t->name,
                            "data_offsets must be an array [begin, end], not %s",
                            mhub_json_kind(item));
    if (cJSON_GetArraySize(item) != 2)
        return tensor_error(MHUB_ERR_PARSE, path, t->name,
                            "data_offsets must have 2 entries [begin, end], not %d",
                            cJSON_GetArraySize(item));
    MHUB_TRY(read_count(path, t->name, item->child, "data_offsets[0]", &t->begin));
    MHUB_TRY(read_count(path, t->name, item->child->next, "data_offsets[1]", &t->end));
    if (t->end < t->begin)
        return tensor_error(MHUB_ERR_PARSE, path, t->name,
                            "data_offsets [%" PRIu64 ", %" PRIu64 "] end before they begin",
                            t->begin, t->end);
    return MHUB_OK;
}

/* The element count of the shape, or an error when it overflows 64 bits
 * (checked as it goes, like the reference, so a later 0 does not excuse
 * an overflow before it). */
static mhub_status shape_numel(mhub_status code, const char *path, const char *name,
                               const int64_t *shape, int ndim, uint64_t *numel)
{
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && n > UINT64_MAX / d) {
            char sh[SHAPE_TEXT];
            return tensor_error(code, path, name,
                                "shape %s has too many elements (the count overflows 64 bits)",
                                shape_text(shape, ndim, sh));
        }
        n *= d;
    }
    *numel = n;
    return MHUB_OK;
}

/* Bytes of `numel` elements of dt, or an error when that overflows. */
static mhub_status tensor_bytes(mhub_status code, const char *path, const char *name,
                                const st_dtype *dt, const int64_t *shape, int ndim,
                                uint64_t *numel, uint64_t *nbytes)
{
    MHUB_TRY(shape_numel(code, path, name, shape, ndim, numel));
    if (*numel > UINT64_MAX / dt->size) {
        char sh[SHAPE_TEXT];
        return tensor_error(code, path, name, "shape %s of %s is more bytes than 64 bits count",
                            shape_text(shape, ndim, sh), dt->name);
    }
    *nbytes = *numel * dt->size;
    return MHUB_OK;
}

/* The offsets must hold exactly the shape's bytes, inside the data. */
static mhub_status check_extent(const char *path, st_tensor *t, uint64_t data_len)
{
    uint64_t numel, nbytes;
    MHUB_TRY(tensor_bytes(MHUB_ERR_PARSE, path, t->name, t->dt, t->shape, t->ndim, &numel,
                          &nbytes));
    t->numel = (int64_t)numel; /* <= nbytes < 2^53 once the check below passes */
    char sh[SHAPE_TEXT];
    if (t->end - t->begin != nbytes)
        return tensor_error(MHUB_ERR_PARSE, path, t->name,
                            "data_offsets [%" PRIu64 ", %" PRIu64 "] hold %" PRIu64 " bytes, but "
                            "shape %s of %s needs %" PRIu64, t->begin, t->end, t->end - t->begin,
                            shape_text(t->shape, t->ndim, sh), t->dt->name, nbytes);
    if (t->end > data_len)
        return tensor_error(MHUB_ERR_PARSE, path, t->name,
                            "data_offsets [%" PRIu64 ", %" PRIu64 "] run past the end of the "
                            "data (%" PRIu64 " bytes; truncated file?)", t->begin, t->end,
                            data_len);
    return MHUB_OK;
}

/* One tensor entry: an object with dtype, shape and data_offsets, each
 * once. Other keys are ignored, as the reference implementation does. */
static mhub_status read_tensor(const char *path, const cJSON *entry, st_tensor *t,
                               uint64_t data_len)
{
    if (!cJSON_IsObject(entry))
        return tensor_error(MHUB_ERR_PARSE, path, t->name, "the entry must be an object with "
                            "dtype, shape and data_offsets, not %s", mhub_json_kind(entry));
    static const char *const keys[3] = {"dtype", "shape", "data_offsets"};
    const cJSON *found[3] = {NULL, NULL, NULL};
    for (const cJSON *c = entry->child; c; c = c->next) {
        for (int k = 0; k < 3; k++) {
            if (strcmp(c->string, keys[k]) != 0)
                continue;
            if (found[k])
                return tensor_error(MHUB_ERR_PARSE, path, t->name, "duplicate key \"%s\"",
                                    keys[k]);
            found[k] = c;
        }
    }
    for (int k = 0; k < 3; k++)
        if (!found[k])
            return tensor_error(MHUB_ERR_PARSE, path, t->name, "missing \"%s\"", keys[k]);
    MHUB_TRY(read_dtype(path, t, found[0]));
    MHUB_TRY(read_shape(path, t, found[1]));
    MHUB_TRY(read_offsets(path, t, found[2]));
    return check_extent(path, t, data_len);
}

static mhub_status read_metadata(mhub_safetensors *st, const cJSON *item)
{
    if (st->meta)
        return mhub_error(MHUB_ERR_PARSE, "%s: duplicate \"%s\" in the header", st->path,
                          METADATA_KEY);
    if (!cJSON_IsObject(item))
        return mhub_error(MHUB_ERR_PARSE, "%s: \"%s\" must be an object of strings, not %s",
                          st->path, METADATA_KEY, mhub_json_kind(item));
    int n = cJSON_GetArraySize(item);
    st->meta = calloc(2 * (size_t)n + 1, sizeof *st->meta);
    if (!st->meta)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: %d metadata entries", st->path, n);
    char **kv = st->meta;
    for (const cJSON *c = item->child; c; c = c->next) {
        char sn[SHOWN_CAP + 4];
        if (!cJSON_IsString(c))
            return mhub_error(MHUB_ERR_PARSE, "%s: %s key '%s' must have a string value, not %s",
                              st->path, METADATA_KEY, shown(c->string, sn), mhub_json_kind(c));
        if (!(*kv = strdup(c->string)) || !(kv[1] = strdup(c->valuestring)))
            return mhub_error(MHUB_ERR_NO_MEMORY, "%s: metadata", st->path);
        kv += 2;
    }
    return MHUB_OK;
}

static mhub_status push_tensor(mhub_safetensors *st, const char *name, st_tensor **out)
{
    if (st->count == st->cap) {
        /* Grown as entries pass their checks, so a header of junk entries
         * costs no memory before its first error. */
        if (st->cap > INT_MAX / 2)
            return mhub_error(MHUB_ERR_PARSE, "%s: more than %d tensors", st->path, st->cap);
        int cap = st->cap ? 2 * st->cap : 16;
        st_tensor *grown = realloc(st->tensors, (size_t)cap * sizeof *grown);
        if (!grown)
            return mhub_error(MHUB_ERR_NO_MEMORY, "%s: %d tensors", st->path, cap);
        st->tensors = grown;
        st->cap = cap;
    }
    st_tensor *t = &st->tensors[st->count];
    *t = (st_tensor){.pos = st->count, .name = strdup(name)};
    if (!t->name)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: a tensor name", st->path);
    st->count++; /* from here close() frees the name */
    *out = t;
    return MHUB_OK;
}

static mhub_status read_entries(mhub_safetensors *st, const cJSON *root)
{
    uint64_t data_len = st->map_len - st->data_start;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (strcmp(c->string, METADATA_KEY) == 0) {
            MHUB_TRY(read_metadata(st, c));
            continue;
        }
        st_tensor *t = NULL;
        MHUB_TRY(push_tensor(st, c->string, &t));
        MHUB_TRY(read_tensor(st->path, c, t, data_len));
    }
    return MHUB_OK;
}

static mhub_status parse_header(mhub_safetensors *st)
{
    const char *h = (const char *)st->map + 8;
    size_t n = st->data_start - 8;
    MHUB_TRY(check_header_text(st->path, h, n));
    cJSON *root = NULL;
    MHUB_TRY(parse_header_json(st->path, h, n, &root));
    mhub_status s = read_entries(st, root);
    cJSON_Delete(root);
    return s;
}

/* ---- opening: names and layout --------------------------------------------- */

static mhub_status index_names(mhub_safetensors *st)
{
    named *v = malloc(((size_t)st->count + 1) * sizeof *v);
    st->by_name = malloc(((size_t)st->count + 1) * sizeof *st->by_name);
    if (!v || !st->by_name) {
        free(v);
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: index of %d tensors", st->path, st->count);
    }
    for (int i = 0; i < st->count; i++)
        v[i] = (named){st->tensors[i].name, i};
    const char *dup = sort_named(v, st->count);
    mhub_status s = MHUB_OK;
    if (dup)
        s = tensor_error(MHUB_ERR_PARSE, st->path, dup, "the name appears more than once");
    for (int i = 0; i < st->count; i++)
        st->by_name[i] = v[i].index;
    free(v);
    return s;
}

static int offset_cmp(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Index order is data order (the pos tie-break keeps empty tensors that
 * share an offset in header order). */
static void sort_by_offset(mhub_safetensors *st)
{
    if (st->count > 1)
        qsort(st->tensors, (size_t)st->count, sizeof *st->tensors, offset_cmp);
}

/* Sorted by offset, the tensors must tile [0, data_len) exactly: each
 * begins where the one before ended, and the last ends the file. */
static mhub_status check_tiling(const mhub_safetensors *st)
{
    uint64_t data_len = st->map_len - st->data_start, at = 0;
    const st_tensor *prev = NULL;
    char sn[SHOWN_CAP + 4];
    for (int i = 0; i < st->count; i++) {
        const st_tensor *t = &st->tensors[i];
        if (t->begin > at && !prev)
            return tensor_error(MHUB_ERR_PARSE, st->path, t->name, "the data begins with %"
                                PRIu64 " bytes before this tensor that belong to no tensor",
                                t->begin);
        if (t->begin > at)
            return tensor_error(MHUB_ERR_PARSE, st->path, t->name, "a hole of %" PRIu64 " bytes "
                                "between tensor '%s' (ends at %" PRIu64 ") and this one "
                                "(begins at %" PRIu64 ")", t->begin - at, shown(prev->name, sn),
                                at, t->begin);
        if (t->begin < at)
            return tensor_error(MHUB_ERR_PARSE, st->path, t->name, "data_offsets [%" PRIu64 ", %"
                                PRIu64 "] overlap tensor '%s' [%" PRIu64 ", %" PRIu64 "]",
                                t->begin, t->end, shown(prev->name, sn), prev->begin, prev->end);
        at = t->end;
        prev = t;
    }
    if (at != data_len && prev)
        return mhub_error(MHUB_ERR_PARSE, "%s: %" PRIu64 " bytes after the last tensor '%s' "
                          "belong to no tensor", st->path, data_len - at, shown(prev->name, sn));
    if (at != data_len)
        return mhub_error(MHUB_ERR_PARSE, "%s: %" PRIu64 " data bytes but no tensors", st->path,
                          data_len);
    return MHUB_OK;
}

mhub_status mhub_safetensors_open(const char *path, mhub_safetensors **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!path)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path is NULL");
    mhub_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: handle", path);
    }
    mhub_status s = map_file(st);
    if (s == MHUB_OK)
        s = read_header_length(st);
    if (s == MHUB_OK)
        s = parse_header(st);
    if (s == MHUB_OK) {
        sort_by_offset(st);
        /* Duplicates before tiling: a clearer message than an overlap. */
        s = index_names(st);
    }
    if (s == MHUB_OK)
        s = check_tiling(st);
    if (s != MHUB_OK) {
        mhub_safetensors_close(st);
        return s;
    }
    *out = st;
    return MHUB_OK;
}

/* ---- reading ---------------------------------------------------------------- */

const char *mhub_safetensors_path(const mhub_safetensors *st)
{
    return st ? st->path : NULL;
}

int mhub_safetensors_count(const mhub_safetensors *st)
{
    return st ? st->count : 0;
}

mhub_status mhub_safetensors_info(const mhub_safetensors *st, int index,
                                  mhub_safetensors_tensor *out)
{
    if (!st || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s is NULL", st ? "out" : "the handle");
    if (index < 0 || index >= st->count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: tensor index %d is outside [0, %d)",
                          st->path, index, st->count);
    const st_tensor *t = &st->tensors[index];
    *out = (mhub_safetensors_tensor){
        .name = t->name,
        .dtype_name = t->dt->name,
        .has_mhub_dtype = t->dt->mhub >= 0,
        .dtype = t->dt->mhub >= 0 ? (mhub_dtype)t->dt->mhub : MHUB_F32,
        .elem_size = t->dt->size,
        .ndim = t->ndim,
        .numel = t->numel,
        .nbytes = (size_t)(t->end - t->begin),
        .file_offset = st->data_start + t->begin,
        .data = st->map + st->data_start + t->begin,
    };
    memcpy(out->shape, t->shape, sizeof t->shape);
    return MHUB_OK;
}

int mhub_safetensors_find(const mhub_safetensors *st, const char *name)
{
    if (!st || !name)
        return -1;
    int lo = 0, hi = st->count; /* binary search of the name index */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(st->tensors[st->by_name[mid]].name, name);
        if (c == 0)
            return st->by_name[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const char *mhub_safetensors_metadata(const mhub_safetensors *st, const char *key)
{
    if (!st || !key)
        return NULL;
    for (char **kv = st->meta; kv && *kv; kv += 2)
        if (strcmp(kv[0], key) == 0)
            return kv[1];
    return NULL;
}

const char *const *mhub_safetensors_metadata_kv(const mhub_safetensors *st)
{
    return st ? (const char *const *)st->meta : NULL;
}

/* Little-endian loads byte by byte: the data may be unaligned, and this
 * is right on any host (compilers turn it into one load). */
static uint16_t load_u16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t load_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void convert_to_f32(const st_tensor *t, const unsigned char *src, float *dst)
{
    size_t n = (size_t)t->numel;
    switch (t->dt->mhub) {
    case MHUB_F32:
        for (size_t i = 0; i < n; i++) {
            uint32_t u = load_u32(src + 4 * i);
            memcpy(&dst[i], &u, sizeof u);
        }
        break;
    case MHUB_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = mhub_bf16_to_f32(load_u16(src + 2 * i));
        break;
    case MHUB_F16:
        for (size_t i = 0; i < n; i++)
            dst[i] = mhub_f16_to_f32(load_u16(src + 2 * i));
        break;
    }
}

static bool same_shape(const st_tensor *t, const int64_t *shape, int ndim)
{
    if (t->ndim != ndim)
        return false;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i])
            return false;
    return true;
}

mhub_status mhub_safetensors_read_f32(const mhub_safetensors *st, const char *name,
                                      const int64_t *expect_shape, int expect_ndim, float *dst)
{
    if (!st || !name)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s is NULL", st ? "name" : "the handle");
    if (expect_ndim > 0 && !expect_shape)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: expect_shape is NULL for tensor '%s'",
                          st->path, name);
    int i = mhub_safetensors_find(st, name);
    if (i < 0)
        return tensor_error(MHUB_ERR_INVALID_ARG, st->path, name, "no such tensor in the file");
    const st_tensor *t = &st->tensors[i];
    if (expect_ndim >= 0 && !same_shape(t, expect_shape, expect_ndim)) {
        char have[SHAPE_TEXT], want[SHAPE_TEXT];
        return tensor_error(MHUB_ERR_INVALID_ARG, st->path, name, "shape %s, expected %s",
                            shape_text(t->shape, t->ndim, have),
                            shape_text(expect_shape, expect_ndim, want));
    }
    if (t->dt->mhub < 0)
        return tensor_error(MHUB_ERR_UNSUPPORTED, st->path, name,
                            "dtype %s; only F32, BF16 and F16 convert to f32", t->dt->name);
    if (!dst && t->numel > 0)
        return tensor_error(MHUB_ERR_INVALID_ARG, st->path, name, "dst is NULL");
    convert_to_f32(t, st->map + st->data_start + t->begin, dst);
    return MHUB_OK;
}

/* ---- writing ---------------------------------------------------------------- */

typedef struct plan_item {
    const mhub_safetensors_entry *e;
    const st_dtype *dt;
    uint64_t nbytes;
} plan_item;

/* One entry's checks; `total` accumulates the data size. */
static mhub_status check_entry(const char *path, const mhub_safetensors_entry *e, int index,
                               plan_item *item, uint64_t *total)
{
    if (!e->name)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: entry %d has no name", path, index);
    size_t len = strlen(e->name);
    if (mhub_utf8_invalid_at((const unsigned char *)e->name, len) < len)
        return tensor_error(MHUB_ERR_INVALID_ARG, path, e->name, "the name is not valid UTF-8");
    if (strcmp(e->name, METADATA_KEY) == 0)
        return tensor_error(MHUB_ERR_INVALID_ARG, path, e->name, "the name is reserved for "
                            "the metadata");
    item->e = e;
    item->dt = e->dtype_name ? dtype_by_name(e->dtype_name) : dtype_by_mhub(e->dtype);
    if (!item->dt) {
        char sn[SHOWN_CAP + 4], list[256];
        if (e->dtype_name)
            return tensor_error(MHUB_ERR_INVALID_ARG, path, e->name, "unknown dtype '%s' "
                                "(known: %s)", shown(e->dtype_name, sn),
                                dtype_list(list, sizeof list));
        return tensor_error(MHUB_ERR_INVALID_ARG, path, e->name, "invalid mhub_dtype %d",
                            (int)e->dtype);
    }
    if (e->ndim < 0 || e->ndim > MAX_NDIM || (e->ndim > 0 && !e->shape))
        return tensor_error(MHUB_ERR_INVALID_ARG, path, e->name, "ndim %d %s %d]", e->ndim,
                            e->ndim < 0 || e->ndim > MAX_NDIM ? "is outside [0,"
                                                              : "with a NULL shape [0,",
                            MAX_NDIM);
    for (int d = 0; d < e->ndim; d++)
        if (e->shape[d] < 0 || (uint64_t)e->shape[d] >= EXACT_LIMIT_U64)
            return tensor_error(MHUB_ERR_INVALID_ARG, path, e->name, "shape[%d] = %" PRId64
                                " is outside [0, 2^53)", d, e->shape[d]);
    uint64_t numel;
    MHUB_TRY(tensor_bytes(MHUB_ERR_INVALID_ARG, path, e->name, item->dt, e->shape, e->ndim,
                          &numel, &item->nbytes));
    if (item->nbytes > 0 && !e->data)
        return tensor_error(MHUB_ERR_INVALID_ARG, path, e->name, "data is NULL");
    /* Readers take offsets below 2^53 only (see EXACT_LIMIT). */
    if (item->nbytes >= EXACT_LIMIT_U64 - *total)
        return tensor_error(MHUB_ERR_INVALID_ARG, path, e->name, "the tensors total 2^53 "
                            "bytes or more");
    *total += item->nbytes;
    return MHUB_OK;
}

static mhub_status check_names(const char *path, plan_item *plan, int count)
{
    named *v = malloc(((size_t)count + 1) * sizeof *v);
    if (!v)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: %d names", path, count);
    for (int i = 0; i < count; i++)
        v[i] = (named){plan[i].e->name, i};
    const char *dup = sort_named(v, count);
    mhub_status s = MHUB_OK;
    if (dup)
        s = tensor_error(MHUB_ERR_INVALID_ARG, path, dup, "the name is given more than once");
    free(v);
    return s;
}

static mhub_status check_metadata(const char *path, const char *const *kv)
{
    int n = 0;
    for (const char *const *p = kv; p && *p; p += 2, n++) {
        char sn[SHOWN_CAP + 4];
        if (!p[1])
            return mhub_error(MHUB_ERR_INVALID_ARG, "%s: metadata key '%s' has no value (the "
                              "list is key, value pairs, then NULL)", path, shown(p[0], sn));
        for (int k = 0; k < 2; k++)
            if (mhub_utf8_invalid_at((const unsigned char *)p[k], strlen(p[k])) < strlen(p[k]))
                return mhub_error(MHUB_ERR_INVALID_ARG, "%s: metadata %s '%s' is not valid "
                                  "UTF-8", path, k ? "value" : "key", shown(p[k], sn));
    }
    named *v = malloc(((size_t)n + 1) * sizeof *v);
    if (!v)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: %d metadata keys", path, n);
    for (int i = 0; i < n; i++)
        v[i] = (named){kv[2 * i], i};
    const char *dup = sort_named(v, n);
    char sn[SHOWN_CAP + 4];
    mhub_status s = dup ? mhub_error(MHUB_ERR_INVALID_ARG, "%s: metadata key '%s' is given "
                                     "more than once", path, shown(dup, sn))
                        : MHUB_OK;
    free(v);
    return s;
}

/* Hugging Face's order: descending dtype rank, then name. */
static int plan_cmp(const void *a, const void *b)
{
    const plan_item *x = a, *y = b;
    if (x->dt->rank != y->dt->rank)
        return x->dt->rank > y->dt->rank ? -1 : 1;
    return strcmp(x->e->name, y->e->name);
}

/* A growing header text; a failed allocation sticks, checked once. */
typedef struct strbuf {
    char *p;
    size_t len, cap;
    bool failed;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n)
            cap *= 2;
        char *grown = realloc(b->p, cap);
        if (!grown) {
            b->failed = true;
            return;
        }
        b->p = grown;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void sb_puts(strbuf *b, const char *s)
{
    sb_put(b, s, strlen(s));
}

static void sb_u64(strbuf *b, uint64_t v)
{
    char t[24];
    sb_put(b, t, (size_t)snprintf(t, sizeof t, "%" PRIu64, v));
}

/* A JSON string escaped as serde_json (the reference's JSON library)
 * escapes it: \" \\ \b \f \n \r \t, other control characters as \u00xx,
 * everything else (UTF-8 included) as it is. */
static void sb_json_string(strbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        const char *esc = NULL;
        char hex[8];
        switch (*p) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        default:
            if (*p < 0x20) {
                snprintf(hex, sizeof hex, "\\u%04x", (unsigned)*p);
                esc = hex;
            }
        }
        if (esc)
            sb_puts(b, esc);
        else
            sb_put(b, (const char *)p, 1);
    }
    sb_put(b, "\"", 1);
}

static void sb_metadata(strbuf *b, const char *const *kv)
{
    sb_json_string(b, METADATA_KEY);
    sb_puts(b, ":{");
    for (const char *const *p = kv; *p; p += 2) {
        if (p != kv)
            sb_put(b, ",", 1);
        sb_json_string(b, p[0]);
        sb_put(b, ":", 1);
        sb_json_string(b, p[1]);
    }
    sb_put(b, "}", 1);
}

/* {"name":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}, in plan
 * order, compact as serde_json writes it. */
static void sb_tensor(strbuf *b, const plan_item *item, uint64_t begin)
{
    sb_json_string(b, item->e->name);
    sb_puts(b, ":{\"dtype\":");
    sb_json_string(b, item->dt->name);
    sb_puts(b, ",\"shape\":[");
    for (int d = 0; d < item->e->ndim; d++) {
        if (d)
            sb_put(b, ",", 1);
        sb_u64(b, (uint64_t)item->e->shape[d]);
    }
    sb_puts(b, "],\"data_offsets\":[");
    sb_u64(b, begin);
    sb_put(b, ",", 1);
    sb_u64(b, begin + item->nbytes);
    sb_puts(b, "]}");
}

/* The header padded with spaces to a multiple of 8 bytes, so the data
 * (and so every 8-byte-aligned tensor) starts 8-byte aligned. */
static mhub_status build_header(const char *path, const plan_item *plan, int count,
                                const char *const *kv, strbuf *b)
{
    sb_put(b, "{", 1);
    if (kv)
        sb_metadata(b, kv);
    uint64_t at = 0;
    for (int i = 0; i < count; i++) {
        if (i || kv)
            sb_put(b, ",", 1);
        sb_tensor(b, &plan[i], at);
        at += plan[i].nbytes;
    }
    sb_put(b, "}", 1);
    while (!b->failed && b->len % 8 != 0)
        sb_put(b, " ", 1);
    if (b->failed)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: the header", path);
    if (b->len > MHUB_SAFETENSORS_MAX_HEADER)
        return mhub_error(MHUB_ERR_INVALID_ARG, "%s: the header would be %zu bytes, over the %"
                          PRIu64 "-byte limit readers accept", path, b->len,
                          MHUB_SAFETENSORS_MAX_HEADER);
    return MHUB_OK;
}

static mhub_status stream_file(const char *path, const strbuf *header, const plan_item *plan,
                               int count)
{
    unsigned char n[8];
    for (int i = 0; i < 8; i++)
        n[i] = (unsigned char)((uint64_t)header->len >> (8 * i));
    mhub_atomic_file f;
    MHUB_TRY(mhub_atomic_begin(path, &f));
    mhub_status s = mhub_atomic_write(&f, n, sizeof n);
    if (s == MHUB_OK)
        s = mhub_atomic_write(&f, header->p, header->len);
    for (int i = 0; i < count && s == MHUB_OK; i++)
        s = mhub_atomic_write(&f, plan[i].e->data, (size_t)plan[i].nbytes);
    if (s != MHUB_OK) {
        mhub_atomic_abort(&f);
        return s;
    }
    return mhub_atomic_commit(&f);
}

/* Little-endian hosts only: tensors are written as they lie in memory. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
               "mhub_safetensors_write copies host memory into a little-endian format");

mhub_status mhub_safetensors_write(const char *path, const mhub_safetensors_entry *entries,
                                   int count, const char *const *metadata_kv)
{
    if (!path)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "path is NULL");
    if (count < 0 || (count > 0 && !entries))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "%s: %d entries at %p", path, count,
                          (const void *)entries);
    plan_item *plan = calloc((size_t)count + 1, sizeof *plan);
    if (!plan)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: %d entries", path, count);
    uint64_t total = 0;
    mhub_status s = MHUB_OK;
    for (int i = 0; i < count && s == MHUB_OK; i++)
        s = check_entry(path, &entries[i], i, &plan[i], &total);
    if (s == MHUB_OK)
        s = check_names(path, plan, count);
    if (s == MHUB_OK)
        s = check_metadata(path, metadata_kv);
    strbuf header = {0};
    if (s == MHUB_OK) {
        if (count > 1)
            qsort(plan, (size_t)count, sizeof *plan, plan_cmp);
        s = build_header(path, plan, count, metadata_kv, &header);
    }
    if (s == MHUB_OK)
        s = stream_file(path, &header, plan, count);
    free(header.p);
    free(plan);
    return s;
}
