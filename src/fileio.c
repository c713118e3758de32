/* fileio.c - see fileio.h. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/fileio.h"

/* "16 MiB" for whole MiB, else bytes. */
static const char *size_text(size_t bytes, char buf[32])
{
    if (bytes % ((size_t)1 << 20) == 0)
        snprintf(buf, 32, "%zu MiB", bytes >> 20);
    else
        snprintf(buf, 32, "%zu bytes", bytes);
    return buf;
}

/* Refuse what cannot be the file asked for before reading it. *hint:
 * bytes to expect. */
static mhub_status check_open_file(FILE *f, const char *path, size_t max_bytes,
                                   const char *what, size_t *hint)
{
    struct stat st;
    if (fstat(fileno(f), &st) != 0)
        return mhub_error(MHUB_ERR_IO, "cannot stat %s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode))
        return mhub_error(MHUB_ERR_IO, "%s is a directory, expected %s", path, what);
    char limit[32];
    if (S_ISREG(st.st_mode) && (uintmax_t)st.st_size > max_bytes)
        return mhub_error(MHUB_ERR_IO, "%s is %jd bytes; %s may be at most %s", path,
                          (intmax_t)st.st_size, what, size_text(max_bytes, limit));
    *hint = S_ISREG(st.st_mode) ? (size_t)st.st_size : 4096;
    return MHUB_OK;
}

/* Read f to its end, not trusting the size it reported. */
static mhub_status read_stream(FILE *f, const char *path, size_t max_bytes, const char *what,
                               size_t hint, char **data, size_t *len)
{
    size_t cap = hint + 1, n = 0; /* +1: see end of file without a second buffer */
    char *buf = malloc(cap + 1);
    if (!buf)
        return mhub_error(MHUB_ERR_NO_MEMORY, "%zu bytes for %s", cap, path);
    for (;;) {
        n += fread(buf + n, 1, cap - n, f);
        mhub_status s = MHUB_OK;
        if (ferror(f))
            s = mhub_error(MHUB_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        else if (n > max_bytes) {
            char limit[32];
            s = mhub_error(MHUB_ERR_IO, "%s is larger than %s; not %s", path,
                           size_text(max_bytes, limit), what);
        }
        else if (n < cap)
            break; /* end of file */
        char *grown = s == MHUB_OK ? realloc(buf, 2 * cap + 1) : NULL;
        if (s == MHUB_OK && !grown)
            s = mhub_error(MHUB_ERR_NO_MEMORY, "%zu bytes for %s", 2 * cap, path);
        if (s != MHUB_OK) {
            free(buf);
            return s;
        }
        buf = grown;
        cap *= 2;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
    return MHUB_OK;
}

mhub_status mhub_file_read_all(const char *path, size_t max_bytes, const char *what,
                               char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return mhub_error(MHUB_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    size_t hint = 0;
    mhub_status s = check_open_file(f, path, max_bytes, what, &hint);
    if (s == MHUB_OK)
        s = read_stream(f, path, max_bytes, what, hint, data, len);
    fclose(f);
    return s;
}

mhub_status mhub_dir_ensure(const char *dir)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return mhub_error(MHUB_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0)
        return mhub_error(MHUB_ERR_IO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return mhub_error(MHUB_ERR_IO, "%s exists and is not a directory", dir);
    return MHUB_OK;
}

static mhub_status write_all(int fd, const char *path, const char *data, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, data, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return mhub_error(MHUB_ERR_IO, "cannot write %s: %s", path,
                              w < 0 ? strerror(errno) : "no progress");
        data += w;
        n -= (size_t)w;
    }
    return MHUB_OK;
}

/* The rename is durable only once the directory is synced; some file
 * systems cannot sync a directory, and the file is complete either way,
 * so errors here are not failures. */
static void sync_parent(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    if (!dir)
        return;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(dir);
}

/* Close f's descriptor (when open) and forget both paths. */
static void atomic_release(mhub_atomic_file *f)
{
    if (f->fd >= 0)
        close(f->fd);
    free(f->tmp);
    free(f->path);
    f->fd = -1;
    f->tmp = f->path = NULL;
}

mhub_status mhub_atomic_begin(const char *path, mhub_atomic_file *f)
{
    *f = (mhub_atomic_file){.fd = -1};
    size_t n = strlen(path) + 32;
    f->tmp = malloc(n);
    f->path = strdup(path);
    if (!f->tmp || !f->path) {
        atomic_release(f);
        return mhub_error(MHUB_ERR_NO_MEMORY, "path for %s", path);
    }
    snprintf(f->tmp, n, "%s.tmp.%ld", path, (long)getpid());
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        mhub_status s = mhub_error(MHUB_ERR_IO, "cannot create %s: %s", f->tmp, strerror(errno));
        atomic_release(f);
        return s;
    }
    return MHUB_OK;
}

mhub_status mhub_atomic_write(mhub_atomic_file *f, const void *data, size_t len)
{
    if (f->fd < 0)
        return mhub_error(MHUB_ERR_STATE, "write to an atomic file that is not open");
    return write_all(f->fd, f->tmp, data, len);
}

void mhub_atomic_abort(mhub_atomic_file *f)
{
    if (f->fd >= 0)
        unlink(f->tmp);
    atomic_release(f);
}

mhub_status mhub_atomic_commit(mhub_atomic_file *f)
{
    if (f->fd < 0)
        return mhub_error(MHUB_ERR_STATE, "commit of an atomic file that is not open");
    mhub_status s = MHUB_OK;
    if (fsync(f->fd) != 0)
        s = mhub_error(MHUB_ERR_IO, "cannot sync %s: %s", f->tmp, strerror(errno));
    int fd = f->fd;
    f->fd = -1; /* closed here, whatever close says */
    if (close(fd) != 0 && s == MHUB_OK)
        s = mhub_error(MHUB_ERR_IO, "cannot close %s: %s", f->tmp, strerror(errno));
    if (s == MHUB_OK && rename(f->tmp, f->path) != 0)
        s = mhub_error(MHUB_ERR_IO, "cannot rename %s to %s: %s", f->tmp, f->path,
                       strerror(errno));
    if (s != MHUB_OK)
        unlink(f->tmp);
    else
        sync_parent(f->path);
    atomic_release(f);
    return s;
}

mhub_status mhub_file_write_atomic(const char *path, const void *data, size_t len)
{
    mhub_atomic_file f;
    MHUB_TRY(mhub_atomic_begin(path, &f));
    mhub_status s = mhub_atomic_write(&f, data, len);
    if (s != MHUB_OK) {
        mhub_atomic_abort(&f);
        return s;
    }
    return mhub_atomic_commit(&f);
}

const char *mhub_json_kind(const cJSON *item)
{
    if (cJSON_IsNull(item))
        return "null";
    if (cJSON_IsBool(item))
        return "a boolean";
    if (cJSON_IsNumber(item))
        return "a number";
    if (cJSON_IsString(item))
        return "a string";
    if (cJSON_IsArray(item))
        return "an array";
    if (cJSON_IsObject(item))
        return "an object";
    return "an unknown JSON value";
}

size_t mhub_utf8_invalid_at(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t more;
        unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            more = 1;
        } else if (c == 0xE0) {
            more = 2, lo = 0xA0; /* no overlong 3-byte forms */
        } else if (c == 0xED) {
            more = 2, hi = 0x9F; /* no surrogates */
        } else if (c >= 0xE1 && c <= 0xEF) {
            more = 2;
        } else if (c == 0xF0) {
            more = 3, lo = 0x90; /* no overlong 4-byte forms */
        } else if (c >= 0xF1 && c <= 0xF3) {
            more = 3;
        } else if (c == 0xF4) {
            more = 3, hi = 0x8F; /* nothing past U+10FFFF */
        } else {
            return i;
        }
        if (len - i <= more)
            return i;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k <= more; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return i;
        i += more + 1;
    }
    return len;
}
