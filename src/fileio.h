/* fileio.h - file and JSON helpers shared inside the library (config
 * files, Hugging Face configs, and later checkpoints). Not public.
 *
 * Every error names the path; nothing here prints. */
#ifndef MHUB_FILEIO_H
#define MHUB_FILEIO_H

#include <cjson/cJSON.h>
#include <stddef.h>

#include "mhub/status.h"

/* Read a whole file into a NUL-terminated buffer (caller free()s it).
 * A directory, or a file over max_bytes (checked on the size and again
 * while reading, so pipes and growing files are bounded too), is
 * MHUB_ERR_IO naming the path; `what` names what the file should be
 * ("a config file"). */
mhub_status mhub_file_read_all(const char *path, size_t max_bytes, const char *what,
                               char **data, size_t *len);

/* Create `dir` (mode 0755) unless it exists; an existing non-directory
 * is an error. Only the last component is created. */
mhub_status mhub_dir_ensure(const char *dir);

/* Write `len` bytes to `path` through a temporary file in the same
 * directory, fsync it, rename it over `path` and sync the directory:
 * readers see the old file or the whole new one, never half of it. The
 * file is created with mode 0644. */
mhub_status mhub_file_write_atomic(const char *path, const void *data, size_t len);

/* What a JSON value is, for "must be X, not Y" messages ("a number"). */
const char *mhub_json_kind(const cJSON *item);

/* A file written in pieces and published atomically, for files too large
 * to build in memory first (checkpoints). mhub_atomic_begin creates a
 * temporary file beside `path`; mhub_atomic_write appends to it; then
 * exactly one of mhub_atomic_commit (fsync, rename over `path`, sync the
 * directory: readers see the old file or the whole new one) or
 * mhub_atomic_abort (remove the temporary) ends it. Commit releases
 * everything even when it fails. Abort is safe on a file whose begin
 * failed or that was already ended, so cleanup paths may always call it.
 * The file is created with mode 0644. */
typedef struct mhub_atomic_file {
    int fd;    /* -1 when not open */
    char *tmp; /* the temporary's path; NULL when not open */
    char *path;
} mhub_atomic_file;

mhub_status mhub_atomic_begin(const char *path, mhub_atomic_file *f);
mhub_status mhub_atomic_write(mhub_atomic_file *f, const void *data, size_t len);
mhub_status mhub_atomic_commit(mhub_atomic_file *f);
void mhub_atomic_abort(mhub_atomic_file *f);

/* The fewest significant digits (1 to 17) whose correctly rounded
 * decimal ("%.*g") reads back as exactly v: the shortest exact form of
 * a double, for every JSON writer in the library (config.c). */
int mhub_shortest_precision(double v);

/* Offset of the first byte of s[0, len) that does not start well-formed
 * UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing past
 * U+10FFFF), or len when all of it is. */
size_t mhub_utf8_invalid_at(const unsigned char *s, size_t len);

#endif
