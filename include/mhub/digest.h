/* digest.h - SHA-256 (FIPS 180-4) and a fingerprint of a parameter list.
 *
 * The fingerprint answers "do these two runs (ranks, checkpoints, backends)
 * hold bit-identical parameters?" with one short hex string that can be
 * printed, logged and compared across machines and against Python.
 *
 * mhub_param_list_digest hashes this byte string, parameter by parameter in
 * list order (nothing before the first or after the last parameter):
 *
 *   name       the parameter's full name in UTF-8, then one 0x00 byte
 *   dtype      mhub_dtype_name(dtype) ("f32", "bf16", "f16"), then 0x00
 *   ndim       int64, little-endian
 *   shape      ndim x int64, little-endian (none for a scalar)
 *   values     numel * element-size raw bytes as stored: IEEE binary32 for
 *              f32, the upper 16 bits of binary32 for bf16, IEEE binary16
 *              for f16; all little-endian (the byte order of every
 *              platform mhub supports)
 *
 * To reproduce it in Python from numpy arrays, each with its mhub dtype
 * name and the numpy type holding its bits ("<f4" for f32, "<u2" for bf16,
 * "<f2" for f16):
 *
 *   h = hashlib.sha256()
 *   for name, dtype_name, a in params:
 *       h.update(name.encode() + b"\0" + dtype_name.encode() + b"\0")
 *       h.update(struct.pack("<%dq" % (a.ndim + 1), a.ndim, *a.shape))
 *       h.update(a.tobytes())        # C order; little-endian dtype
 *   print(h.hexdigest())
 *
 * An empty list hashes the empty string. Gradients are not included. */
#ifndef MHUB_DIGEST_H
#define MHUB_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#include "mhub/module.h"
#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MHUB_SHA256_BYTES 32
#define MHUB_SHA256_HEX_CHARS 65 /* 64 lowercase hex digits and a NUL */

/* Streaming state. Treat the fields as private; the struct is public only
 * so callers can keep it on the stack. */
typedef struct mhub_sha256_ctx {
    uint32_t state[8];   /* the running hash H0..H7 */
    uint64_t length;     /* message bytes hashed so far */
    uint8_t block[64];   /* the message block being filled */
    size_t fill;         /* bytes waiting in block */
} mhub_sha256_ctx;

/* Start a new message. */
mhub_status mhub_sha256_init(mhub_sha256_ctx *ctx);
/* Append len bytes (data may be NULL when len is 0). Messages up to
 * 2^61 - 1 bytes, the FIPS 180-4 limit of 2^64 bits. */
mhub_status mhub_sha256_update(mhub_sha256_ctx *ctx, const void *data, size_t len);
/* Write the digest of everything appended since init and re-initialise
 * ctx, so it is ready for the next message. */
mhub_status mhub_sha256_final(mhub_sha256_ctx *ctx, uint8_t out[MHUB_SHA256_BYTES]);

/* One-shot digest of len bytes. */
mhub_status mhub_sha256(const void *data, size_t len, uint8_t out[MHUB_SHA256_BYTES]);
/* 64 lowercase hex digits and a NUL. */
mhub_status mhub_sha256_hex(const uint8_t digest[MHUB_SHA256_BYTES],
                            char out[MHUB_SHA256_HEX_CHARS]);

/* SHA-256, as hex, of the serialization described above. Values are read
 * through each parameter's backend (ops->copy to the host) in chunks of at
 * most 1 MiB, so the memory used does not grow with the model. A meta
 * parameter (no storage) is MHUB_ERR_STATE naming it. */
mhub_status mhub_param_list_digest(const mhub_param_list *list,
                                   char hex[MHUB_SHA256_HEX_CHARS]);

#ifdef __cplusplus
}
#endif
#endif
