/* pyjson.c - JSON as Python's json module reads and writes it (see
 * pyjson.h). */
#include <ctype.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "src/fileio.h"
#include "src/pyjson.h"

/* ---- floats as repr writes them ------------------------------------------------ */

/* A positive decimal d1.d2d3... x 10^exp. */
typedef struct decimal {
    char digits[24];
    int ndigits;
    int exp;
} decimal;

/* v > 0 correctly rounded to `prec` significant digits. */
static void round_to(double v, int prec, decimal *d)
{
    char buf[48];
    snprintf(buf, sizeof buf, "%.*e", prec - 1, v);
    const char *p = buf;
    d->ndigits = 0;
    for (; *p && *p != 'e'; p++)
        if (isdigit((unsigned char)*p))
            d->digits[d->ndigits++] = *p;
    d->digits[d->ndigits] = '\0';
    d->exp = atoi(p + 1);
}

static double decimal_value(const decimal *d)
{
    char buf[48];
    snprintf(buf, sizeof buf, "%c.%se%d", d->digits[0], d->digits + 1, d->exp);
    return strtod(buf, NULL);
}

/* d plus one unit in its last digit ("199" -> "200", "99" -> "10" x 10). */
static void step_up(decimal *d)
{
    int i = d->ndigits - 1;
    while (i >= 0 && d->digits[i] == '9')
        d->digits[i--] = '0';
    if (i >= 0) {
        d->digits[i]++;
        return;
    }
    d->digits[0] = '1';
    d->exp++;
}

/* The shortest digits that read back as exactly v > 0, the nearest to v
 * among those. The correctly rounded ones are the nearest; but at a
 * power of two the gap to the double below is half the gap above, so a
 * candidate above v with fewer digits can read back where the nearest
 * (below) does not, and repr takes it: 2^-1017 is 7.120236347223045e-307
 * (16 digits), though its 16-digit rounding ...044e-307 is no longer
 * 2^-1017. */
static void shortest_decimal(double v, decimal *out)
{
    int prec = mhub_shortest_precision(v);
    round_to(v, prec, out);
    int e2 = 0;
    bool power_of_two = frexp(v, &e2) == 0.5 && v > DBL_MIN;
    for (int q = 1; power_of_two && q < prec; q++) {
        decimal above;
        round_to(v, q, &above);
        if (decimal_value(&above) < v)
            step_up(&above);
        if (decimal_value(&above) == v) {
            *out = above;
            break;
        }
    }
    while (out->ndigits > 1 && out->digits[out->ndigits - 1] == '0')
        out->digits[--out->ndigits] = '\0';
}

void mhub_pyjson_float_text(double v, char *buf, size_t cap)
{
    if (v == 0) {
        snprintf(buf, cap, "%s", signbit(v) ? "-0.0" : "0.0");
        return;
    }
    decimal d;
    shortest_decimal(fabs(v), &d);
    const char *sign = v < 0 ? "-" : "";
    int point = d.exp + 1; /* digits before the decimal point */
    if (d.exp < -4 || d.exp > 15)
        snprintf(buf, cap, "%s%c%s%se%c%02d", sign, d.digits[0], d.ndigits > 1 ? "." : "",
                 d.digits + 1, d.exp < 0 ? '-' : '+', abs(d.exp));
    else if (point <= 0)
        snprintf(buf, cap, "%s0.%.*s%s", sign, -point, "0000", d.digits);
    else if (point >= d.ndigits)
        snprintf(buf, cap, "%s%s%.*s.0", sign, d.digits, point - d.ndigits,
                 "0000000000000000");
    else
        snprintf(buf, cap, "%s%.*s.%s", sign, point, d.digits, d.digits + point);
}

/* A number node whose Python text is `text`. */
static cJSON *number_with_text(double v, const char *text)
{
    cJSON *n = cJSON_CreateNumber(v);
    char *copy = n ? malloc(strlen(text) + 1) : NULL;
    if (!copy) {
        cJSON_Delete(n);
        return NULL;
    }
    strcpy(copy, text);
    n->valuestring = copy;
    return n;
}

cJSON *mhub_pyjson_int(long long v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", v);
    return number_with_text((double)v, buf);
}

cJSON *mhub_pyjson_float(double v)
{
    char buf[32];
    mhub_pyjson_float_text(v, buf, sizeof buf);
    return number_with_text(v, buf);
}

/* ---- parsing ---------------------------------------------------------------------- */

/* Past the string whose opening quote is at p (or end); *nul is set when
 * it holds a "\u0000" escape. */
static const char *skip_string(const char *p, const char *end, bool *nul)
{
    for (p++; p < end && *p != '"'; p++) {
        if (*p != '\\')
            continue;
        if (end - p >= 6 && memcmp(p, "\\u0000", 6) == 0)
            *nul = true;
        p++;
    }
    return p < end ? p + 1 : end;
}

typedef struct scanner {
    const char *at, *end;
    const char *file;
} scanner;

static bool is_number_char(char c)
{
    return isdigit((unsigned char)c) || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* The next number literal outside strings (as cJSON read it). */
static bool next_literal(scanner *s, const char **lit, size_t *len)
{
    bool nul = false;
    while (s->at < s->end) {
        char c = *s->at;
        if (c == '"') {
            s->at = skip_string(s->at, s->end, &nul);
        } else if (c == '-' || isdigit((unsigned char)c)) {
            *lit = s->at;
            while (s->at < s->end && is_number_char(*s->at))
                s->at++;
            *len = (size_t)(s->at - *lit);
            return true;
        } else {
            s->at++;
        }
    }
    return false;
}

/* The Python text of a literal: a float when it has a fraction or an
 * exponent (json.loads' rule), else an integer, kept digit for digit
 * (Python's are unbounded). */
static mhub_status literal_text(const scanner *s, const char *lit, size_t len, double v,
                                char **out)
{
    bool is_float = memchr(lit, '.', len) || memchr(lit, 'e', len) || memchr(lit, 'E', len);
    char buf[32];
    if (is_float) {
        if (!isfinite(v))
            return mhub_error(MHUB_ERR_PARSE, "%s: the number %.*s is beyond a double's range",
                              s->file, (int)(len < 40 ? len : 40), lit);
        mhub_pyjson_float_text(v, buf, sizeof buf);
        lit = buf;
        len = strlen(buf);
    } else if (len == 2 && memcmp(lit, "-0", 2) == 0) {
        lit = "0";
        len = 1;
    }
    *out = malloc(len + 1);
    if (!*out)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%s: number text", s->file);
    memcpy(*out, lit, len);
    (*out)[len] = '\0';
    return MHUB_OK;
}

/* Give every number under `item` its literal's Python text; the tree's
 * numbers come in the text's order. */
static mhub_status attach_literals(cJSON *item, scanner *s)
{
    if (cJSON_IsNumber(item)) {
        const char *lit = NULL;
        size_t len = 0;
        if (!next_literal(s, &lit, &len))
            return mhub_error(MHUB_ERR_STATE, "%s: a number has no literal", s->file);
        return literal_text(s, lit, len, item->valuedouble, &item->valuestring);
    }
    for (cJSON *c = item->child; c; c = c->next)
        MHUB_TRY(attach_literals(c, s));
    return MHUB_OK;
}

/* Of keys that repeat in an object, keep the last, as a Python dict does. */
static void drop_duplicates(cJSON *item)
{
    cJSON *c = item->child;
    while (c) {
        cJSON *next = c->next;
        if (cJSON_IsObject(item))
            for (const cJSON *later = next; later; later = later->next)
                if (strcmp(later->string, c->string) == 0) {
                    cJSON_Delete(cJSON_DetachItemViaPointer(item, c));
                    c = NULL;
                    break;
                }
        if (c)
            drop_duplicates(c);
        c = next;
    }
}

static bool has_nul_escape(const char *p, const char *end)
{
    bool nul = false;
    while (p < end && !nul)
        p = *p == '"' ? skip_string(p, end, &nul) : p + 1;
    return nul;
}

mhub_status mhub_pyjson_parse(const char *text, size_t len, const char *file, cJSON **out)
{
    *out = NULL;
    size_t bad = mhub_utf8_invalid_at((const unsigned char *)text, len);
    if (bad < len)
        return mhub_error(MHUB_ERR_PARSE, "%s: not valid JSON: invalid UTF-8 at byte %zu", file, bad);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= text && at <= text + len ? (long)(at - text) : -1;
        return mhub_error(MHUB_ERR_PARSE, "%s: not valid JSON (error near byte %ld)", file, off);
    }
    if (has_nul_escape(text, end)) {
        cJSON_Delete(root);
        return mhub_error(MHUB_ERR_PARSE, "%s: a JSON string holds \\u0000, which mhub cannot keep",
                          file);
    }
    scanner s = {text, end, file};
    mhub_status st = attach_literals(root, &s);
    if (st != MHUB_OK) {
        cJSON_Delete(root);
        return st;
    }
    drop_duplicates(root);
    *out = root;
    return MHUB_OK;
}

/* ---- printing ------------------------------------------------------------------------ */

typedef struct text_buf {
    char *p;
    size_t len, cap;
    bool failed;
} text_buf;

static void put_n(text_buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void put(text_buf *b, const char *s) { put_n(b, s, strlen(s)); }

static void put_newline(text_buf *b, int depth)
{
    put(b, "\n");
    for (int i = 0; i < depth; i++)
        put(b, "  ");
}

/* The code point starting at *s (valid UTF-8, checked on parse), and
 * the bytes it takes. */
static unsigned long decode_utf8(const unsigned char *s, int *used)
{
    if (s[0] < 0x80) {
        *used = 1;
        return s[0];
    }
    int n = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : 2;
    unsigned long cp = s[0] & (0x7F >> n);
    for (int i = 1; i < n; i++)
        cp = cp << 6 | (s[i] & 0x3F);
    *used = n;
    return cp;
}

static void put_escaped(text_buf *b, unsigned long cp)
{
    static const char *const shorts[] = {['\b'] = "\\b", ['\t'] = "\\t", ['\n'] = "\\n",
                                         ['\f'] = "\\f", ['\r'] = "\\r"};
    char buf[32];
    if (cp < sizeof shorts / sizeof shorts[0] && shorts[cp]) {
        put(b, shorts[cp]);
    } else if (cp >= 0x10000) {
        cp -= 0x10000;
        snprintf(buf, sizeof buf, "\\u%04lx\\u%04lx", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
        put(b, buf);
    } else {
        snprintf(buf, sizeof buf, "\\u%04lx", cp);
        put(b, buf);
    }
}

/* ensure_ascii: printable ASCII as is (but " and \), the rest escaped. */
static void put_string(text_buf *b, const char *s)
{
    put(b, "\"");
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int used = 1;
        unsigned long cp = decode_utf8(p, &used);
        if (cp == '"' || cp == '\\') {
            put(b, cp == '"' ? "\\\"" : "\\\\");
        } else if (cp >= 0x20 && cp < 0x7F) {
            char c = (char)cp;
            put_n(b, &c, 1);
        } else {
            put_escaped(b, cp);
        }
        p += used;
    }
    put(b, "\"");
}

static int by_key(const void *a, const void *b)
{
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

static void put_value(text_buf *b, const cJSON *it, int depth);

/* An array, or an object with its keys sorted. */
static void put_container(text_buf *b, const cJSON *it, int depth)
{
    bool object = cJSON_IsObject(it);
    int n = cJSON_GetArraySize(it);
    if (n == 0) {
        put(b, object ? "{}" : "[]");
        return;
    }
    const cJSON **items = malloc((size_t)n * sizeof *items);
    if (!items) {
        b->failed = true;
        return;
    }
    int count = 0;
    for (const cJSON *c = it->child; c && count < n; c = c->next)
        items[count++] = c;
    if (object)
        qsort(items, (size_t)count, sizeof *items, by_key);
    put(b, object ? "{" : "[");
    for (int i = 0; i < count; i++) {
        put_newline(b, depth + 1);
        if (object) {
            put_string(b, items[i]->string);
            put(b, ": ");
        }
        put_value(b, items[i], depth + 1);
        if (i + 1 < count)
            put(b, ",");
    }
    put_newline(b, depth);
    put(b, object ? "}" : "]");
    free(items);
}

static void put_value(text_buf *b, const cJSON *it, int depth)
{
    char buf[32];
    if (cJSON_IsNull(it)) {
        put(b, "null");
    } else if (cJSON_IsBool(it)) {
        put(b, cJSON_IsTrue(it) ? "true" : "false");
    } else if (cJSON_IsNumber(it)) {
        /* a node made elsewhere, without a literal, is a float */
        if (!it->valuestring)
            mhub_pyjson_float_text(it->valuedouble, buf, sizeof buf);
        put(b, it->valuestring ? it->valuestring : buf);
    } else if (cJSON_IsString(it)) {
        put_string(b, it->valuestring);
    } else if (cJSON_IsArray(it) || cJSON_IsObject(it)) {
        put_container(b, it, depth);
    } else {
        b->failed = true;
    }
}

mhub_status mhub_pyjson_dump(const cJSON *item, char **out, size_t *len)
{
    text_buf b = {0};
    put_value(&b, item, 0);
    put(&b, "\n");
    if (b.failed) {
        free(b.p);
        return mhub_error(MHUB_ERR_NO_MEMORY, "JSON text");
    }
    *out = b.p;
    *len = b.len;
    return MHUB_OK;
}
