/* safetensors.h - read and write Hugging Face safetensors files.
 *
 * The format: an 8-byte little-endian header length N, N bytes of UTF-8
 * JSON mapping each tensor name to {"dtype", "shape", "data_offsets":
 * [begin, end]} (offsets from the first byte after the header) plus an
 * optional "__metadata__" object of strings, then the tensors' bytes,
 * row-major and little-endian, covering the data region without holes or
 * overlaps.
 *
 * Reading maps the file read-only and checks everything at open, so a
 * handle that opened is consistent: every tensor's bytes lie inside the
 * file and match its dtype and shape. Files are untrusted input; every
 * error is MHUB_ERR_PARSE (or MHUB_ERR_IO for the file system) and names
 * the file and, where there is one, the tensor. An open handle is
 * read-only, so threads may share it.
 *
 * Writing mirrors Hugging Face's safetensors library byte for byte:
 * tensors ordered by dtype (the library's order: U64, I64, F64, C64,
 * F32, U32, I32, BF16, F16, U16, I16, the 1-byte types, BOOL) then name,
 * compact JSON in that order after "__metadata__", the header padded
 * with spaces to a multiple of 8 bytes. A file mhub wrote, read and
 * written again, is byte-identical. */
#ifndef MHUB_SAFETENSORS_H
#define MHUB_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mhub/dtype.h"
#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most dimensions a tensor may have; files with more are refused. */
#define MHUB_SAFETENSORS_MAX_NDIM 8
/* Largest header accepted, as in the reference implementation. */
#define MHUB_SAFETENSORS_MAX_HEADER ((uint64_t)100000000)

typedef struct mhub_safetensors mhub_safetensors;

/* One tensor of an open file. The strings and `data` belong to the
 * handle and live until mhub_safetensors_close. */
typedef struct mhub_safetensors_tensor {
    const char *name;
    const char *dtype_name;  /* as in the file: "F32", "BF16", "I64", ... */
    bool has_mhub_dtype;     /* true for F32, BF16 and F16 ... */
    mhub_dtype dtype;        /* ... and then this is it */
    size_t elem_size;        /* bytes per element */
    int ndim;                /* 0 for a scalar */
    int64_t shape[MHUB_SAFETENSORS_MAX_NDIM];
    int64_t numel;           /* 1 for a scalar, 0 for an empty tensor */
    size_t nbytes;           /* numel * elem_size */
    uint64_t file_offset;    /* where the bytes start in the file */
    const void *data;        /* into the map, little-endian; may be unaligned */
} mhub_safetensors_tensor;

/* Open and validate `path`. It is mapped read-only (PROT_READ,
 * MAP_PRIVATE): nothing is read into memory but the header, and the
 * data pages load as they are touched. The file must not be truncated
 * while it is open (the map would fault). *out is NULL on failure. */
mhub_status mhub_safetensors_open(const char *path, mhub_safetensors **out);
/* Unmap and free; NULL is a no-op. */
void mhub_safetensors_close(mhub_safetensors *st);

/* The path the handle was opened with. */
const char *mhub_safetensors_path(const mhub_safetensors *st);
/* Number of tensors. Index order is the order of the data in the file
 * (for files written by mhub or Hugging Face, the header's order). */
int mhub_safetensors_count(const mhub_safetensors *st);
/* Tensor `index` in [0, count); MHUB_ERR_INVALID_ARG outside it. */
mhub_status mhub_safetensors_info(const mhub_safetensors *st, int index,
                                  mhub_safetensors_tensor *out);
/* Index of the tensor called `name`, or -1 (no error recorded). */
int mhub_safetensors_find(const mhub_safetensors *st, const char *name);

/* The value of metadata `key`, or NULL when absent. */
const char *mhub_safetensors_metadata(const mhub_safetensors *st, const char *key);
/* All metadata as NULL-terminated key, value pairs in the file's order,
 * ready to pass to mhub_safetensors_write; NULL when the file has no
 * "__metadata__" (an empty list when it has an empty one). */
const char *const *mhub_safetensors_metadata_kv(const mhub_safetensors *st);

/* Copy tensor `name` into dst as f32, converting F32, BF16 or F16 (other
 * dtypes are MHUB_ERR_UNSUPPORTED). When expect_ndim >= 0 the tensor's
 * shape must equal expect_shape[0, expect_ndim); a missing tensor or a
 * different shape is MHUB_ERR_INVALID_ARG naming the file, the tensor and
 * both shapes. With expect_ndim < 0 any shape is taken (expect_shape may
 * be NULL) and dst must hold numel floats. */
mhub_status mhub_safetensors_read_f32(const mhub_safetensors *st, const char *name,
                                      const int64_t *expect_shape, int expect_ndim, float *dst);

/* One tensor to write. Unset fields (designated initializers) are zero. */
typedef struct mhub_safetensors_entry {
    const char *name;        /* UTF-8; not "__metadata__" */
    mhub_dtype dtype;        /* F32, BF16 or F16 ... */
    const char *dtype_name;  /* ... unless this names another safetensors dtype
                                ("I64", "U8", ...: any the reader knows), so a
                                file read can be written again whatever it holds */
    int ndim;                /* 0..MHUB_SAFETENSORS_MAX_NDIM */
    const int64_t *shape;    /* ndim non-negative sizes (NULL when ndim is 0) */
    const void *data;        /* numel * element size bytes, little-endian;
                                may be NULL when that is 0 */
} mhub_safetensors_entry;

/* Write `count` tensors and optional metadata (NULL-terminated key, value
 * pairs; NULL for no "__metadata__" at all) to `path`. The file is
 * streamed into a temporary beside `path` (nothing is built in memory
 * but the header), synced and renamed over `path`: readers see the old
 * file or the whole new one. Bad entries (duplicate or non-UTF-8 names,
 * unknown dtypes, sizes that overflow) are MHUB_ERR_INVALID_ARG naming
 * the tensor; nothing is written then. */
mhub_status mhub_safetensors_write(const char *path, const mhub_safetensors_entry *entries,
                                   int count, const char *const *metadata_kv);

#ifdef __cplusplus
}
#endif
#endif
