/* pyjson.h - JSON as Python's json module reads and writes it, for files
 * that must come out byte for byte as Hugging Face's save_pretrained
 * writes them: json.dumps(obj, indent=2, sort_keys=True) + "\n". Not
 * public.
 *
 * Python tells an integer literal (1024) from a float (1024.0, 1e-05)
 * and prints each its own way; cJSON keeps a double only. So every
 * number node made or parsed here carries its Python text in
 * valuestring (cJSON_Delete frees it), and the printer writes that
 * text. */
#ifndef MHUB_PYJSON_H
#define MHUB_PYJSON_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "mhub/status.h"

/* Python's repr of a float: the shortest digits that read back exactly
 * (David Gay's, as repr chooses them), fixed notation for exponents -4
 * to 15 with at least one digit after the point ("10000.0", "0.0001"),
 * else "1e-05", "1.5e+16". v must be finite; 32 bytes always suffice. */
void mhub_pyjson_float_text(double v, char *buf, size_t cap);

/* Number nodes with their Python text (NULL when out of memory). */
cJSON *mhub_pyjson_int(long long v);
cJSON *mhub_pyjson_float(double v);

/* Parse text as json.loads would read it: numbers keep their literal's
 * Python form ("-0" is the integer 0, "1.50" the float 1.5), and of
 * duplicate keys the last wins. Invalid UTF-8, a "\u0000" in a string
 * (a C string cannot hold it) and a float outside the doubles' range
 * are MHUB_ERR_PARSE naming `file`, as is malformed JSON. */
mhub_status mhub_pyjson_parse(const char *text, size_t len, const char *file, cJSON **out);

/* json.dumps(item, indent=2, sort_keys=True, ensure_ascii=True) + "\n":
 * keys sorted by code point, everything outside printable ASCII
 * escaped as \u00e9 (astral characters as surrogate pairs). Caller
 * free()s *out; *len excludes the terminating NUL. */
mhub_status mhub_pyjson_dump(const cJSON *item, char **out, size_t *len);

#endif
