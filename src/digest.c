/* digest.c - SHA-256 from FIPS 180-4 and the parameter-list fingerprint.
 *
 * The hash is the plain FIPS 180-4 algorithm (section 6.2): 64-byte blocks,
 * a 64-word message schedule, 64 rounds. Speed is not a goal here: the
 * fingerprint is taken at checkpoints and in tests, and reading parameters
 * back from a device costs more than hashing them. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mhub/backend.h"
#include "mhub/digest.h"
#include "mhub/dtype.h"

/* FIPS 180-4 4.2.2: first 32 bits of the fractional parts of the cube
 * roots of the first 64 primes. */
static const uint32_t round_constants[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u,
    0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u,
    0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu,
    0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u,
    0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u,
    0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u,
    0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u,
    0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

/* FIPS 180-4 5.3.3: first 32 bits of the fractional parts of the square
 * roots of the first 8 primes. */
static const uint32_t initial_state[8] = {
    0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
    0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u,
};

/* Values are read back in pieces of this size so a multi-GiB parameter
 * never needs a matching host buffer. A multiple of every element size. */
#define DIGEST_CHUNK_BYTES ((size_t)1 << 20)

/* ---- SHA-256 ------------------------------------------------------------ */

static inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

/* The six logical functions of FIPS 180-4 4.1.2. */
static inline uint32_t ch(uint32_t x, uint32_t y, uint32_t z) { return (x & y) ^ (~x & z); }
static inline uint32_t maj(uint32_t x, uint32_t y, uint32_t z)
{
    return (x & y) ^ (x & z) ^ (y & z);
}
static inline uint32_t big_sigma0(uint32_t x) { return rotr(x, 2) ^ rotr(x, 13) ^ rotr(x, 22); }
static inline uint32_t big_sigma1(uint32_t x) { return rotr(x, 6) ^ rotr(x, 11) ^ rotr(x, 25); }
static inline uint32_t small_sigma0(uint32_t x) { return rotr(x, 7) ^ rotr(x, 18) ^ (x >> 3); }
static inline uint32_t small_sigma1(uint32_t x) { return rotr(x, 17) ^ rotr(x, 19) ^ (x >> 10); }

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* FIPS 180-4 6.2.2: fold one 64-byte block into the state. */
static void compress(uint32_t state[8], const uint8_t block[64])
{
    uint32_t w[64];
    for (int t = 0; t < 16; t++)
        w[t] = load_be32(block + 4 * t);
    for (int t = 16; t < 64; t++)
        w[t] = small_sigma1(w[t - 2]) + w[t - 7] + small_sigma0(w[t - 15]) + w[t - 16];

    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int t = 0; t < 64; t++) {
        uint32_t t1 = h + big_sigma1(e) + ch(e, f, g) + round_constants[t] + w[t];
        uint32_t t2 = big_sigma0(a) + maj(a, b, c);
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

mhub_status mhub_sha256_init(mhub_sha256_ctx *ctx)
{
    if (!ctx)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "ctx is NULL");
    memcpy(ctx->state, initial_state, sizeof ctx->state);
    ctx->length = 0;
    ctx->fill = 0;
    memset(ctx->block, 0, sizeof ctx->block);
    return MHUB_OK;
}

mhub_status mhub_sha256_update(mhub_sha256_ctx *ctx, const void *data, size_t len)
{
    if (!ctx)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "ctx is NULL");
    if (!data && len > 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "data is NULL with len = %zu", len);
    if (ctx->fill >= sizeof ctx->block)
        return MHUB_ERROR(MHUB_ERR_STATE, "ctx was not initialised by mhub_sha256_init");
    /* the padding stores the length in bits in 64 bits */
    const uint64_t max_bytes = (UINT64_MAX >> 3) - ctx->length;
    if ((uint64_t)len > max_bytes)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "message would exceed 2^61 - 1 bytes (%llu hashed, %zu more)",
                          (unsigned long long)ctx->length, len);
    const uint8_t *p = data;
    ctx->length += len;
    while (len > 0) {
        size_t take = sizeof ctx->block - ctx->fill;
        if (take > len)
            take = len;
        memcpy(ctx->block + ctx->fill, p, take);
        ctx->fill += take;
        p += take;
        len -= take;
        if (ctx->fill == sizeof ctx->block) {
            compress(ctx->state, ctx->block);
            ctx->fill = 0;
        }
    }
    return MHUB_OK;
}

mhub_status mhub_sha256_final(mhub_sha256_ctx *ctx, uint8_t out[MHUB_SHA256_BYTES])
{
    if (!ctx || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "ctx or out is NULL");
    if (ctx->fill >= sizeof ctx->block)
        return MHUB_ERROR(MHUB_ERR_STATE, "ctx was not initialised by mhub_sha256_init");
    /* FIPS 180-4 5.1.1: a 1 bit, zeros up to 56 mod 64 bytes, then the
     * message length in bits as a big-endian 64-bit integer. */
    uint64_t bits = ctx->length << 3;
    ctx->block[ctx->fill++] = 0x80;
    if (ctx->fill > 56) {
        memset(ctx->block + ctx->fill, 0, sizeof ctx->block - ctx->fill);
        compress(ctx->state, ctx->block);
        ctx->fill = 0;
    }
    memset(ctx->block + ctx->fill, 0, 56 - ctx->fill);
    store_be32(ctx->block + 56, (uint32_t)(bits >> 32));
    store_be32(ctx->block + 60, (uint32_t)bits);
    compress(ctx->state, ctx->block);
    for (int i = 0; i < 8; i++)
        store_be32(out + 4 * i, ctx->state[i]);
    return mhub_sha256_init(ctx);
}

mhub_status mhub_sha256(const void *data, size_t len, uint8_t out[MHUB_SHA256_BYTES])
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    mhub_sha256_ctx ctx;
    MHUB_TRY(mhub_sha256_init(&ctx));
    MHUB_TRY(mhub_sha256_update(&ctx, data, len));
    return mhub_sha256_final(&ctx, out);
}

mhub_status mhub_sha256_hex(const uint8_t digest[MHUB_SHA256_BYTES],
                            char out[MHUB_SHA256_HEX_CHARS])
{
    static const char digits[] = "0123456789abcdef";
    if (!digest || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "digest or out is NULL");
    for (int i = 0; i < MHUB_SHA256_BYTES; i++) {
        out[2 * i] = digits[digest[i] >> 4];
        out[2 * i + 1] = digits[digest[i] & 0xf];
    }
    out[2 * MHUB_SHA256_BYTES] = '\0';
    return MHUB_OK;
}

/* ---- parameter-list fingerprint ----------------------------------------- */

static mhub_status update_i64_le(mhub_sha256_ctx *ctx, int64_t v)
{
    uint8_t b[8];
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(u >> (8 * i));
    return mhub_sha256_update(ctx, b, sizeof b);
}

/* The format fixes little-endian values; a big-endian host reverses each
 * element's bytes before hashing so its digest matches everyone else's. */
static bool host_is_little_endian(void)
{
    const uint16_t probe = 1;
    uint8_t first;
    memcpy(&first, &probe, 1);
    return first == 1;
}

static void reverse_elements(uint8_t *buf, size_t bytes, size_t elem)
{
    for (size_t off = 0; off + elem <= bytes; off += elem)
        for (size_t i = 0; i < elem / 2; i++) {
            uint8_t tmp = buf[off + i];
            buf[off + i] = buf[off + elem - 1 - i];
            buf[off + elem - 1 - i] = tmp;
        }
}

static mhub_status check_param(const mhub_param *p, int index)
{
    if (!mhub_dtype_valid(p->value.dtype))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter %d '%s' has invalid dtype %d", index,
                          p->name, (int)p->value.dtype);
    if (mhub_tensor_is_meta(&p->value))
        return MHUB_ERROR(MHUB_ERR_STATE,
                          "parameter %d '%s' is meta (no storage); materialize it first",
                          index, p->name);
    const mhub_backend *be = p->value.backend;
    if (!be || !be->ops || !be->ops->copy)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "parameter %d '%s' has no backend to read from",
                          index, p->name);
    return MHUB_OK;
}

static mhub_status hash_header(mhub_sha256_ctx *ctx, const mhub_param *p)
{
    const char *dt = mhub_dtype_name(p->value.dtype);
    MHUB_TRY(mhub_sha256_update(ctx, p->name, strlen(p->name) + 1));
    MHUB_TRY(mhub_sha256_update(ctx, dt, strlen(dt) + 1));
    MHUB_TRY(update_i64_le(ctx, p->value.ndim));
    for (int d = 0; d < p->value.ndim; d++)
        MHUB_TRY(update_i64_le(ctx, p->value.shape[d]));
    return MHUB_OK;
}

/* Stream the value bytes device -> host buffer -> hash, one chunk at a
 * time. The synchronize makes an asynchronous backend's copy visible
 * before the host reads it. */
static mhub_status hash_values(mhub_sha256_ctx *ctx, const mhub_param *p, uint8_t *buf,
                               size_t cap)
{
    mhub_backend *be = p->value.backend;
    size_t elem = mhub_dtype_size(p->value.dtype);
    size_t total = mhub_tensor_nbytes(&p->value);
    const uint8_t *src = p->value.data;
    for (size_t done = 0; done < total;) {
        size_t n = total - done < cap ? total - done : cap;
        mhub_status s = be->ops->copy(be, buf, src + done, n, MHUB_COPY_DEVICE_TO_HOST);
        if (s == MHUB_OK && be->ops->synchronize)
            s = be->ops->synchronize(be);
        if (s != MHUB_OK) {
            /* copy the backend's message out: the new one is written over it */
            char cause[256];
            snprintf(cause, sizeof cause, "%s", mhub_last_error());
            return MHUB_ERROR(s, "reading parameter '%s' bytes [%zu, %zu): %s", p->name, done,
                              done + n, cause);
        }
        if (!host_is_little_endian())
            reverse_elements(buf, n, elem);
        MHUB_TRY(mhub_sha256_update(ctx, buf, n));
        done += n;
    }
    return MHUB_OK;
}

mhub_status mhub_param_list_digest(const mhub_param_list *list, char hex[MHUB_SHA256_HEX_CHARS])
{
    if (!list || !hex)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "list or hex is NULL");
    if (list->count < 0 || (list->count > 0 && !list->items))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "list has count %d and items %p", list->count,
                          (void *)list->items);
    /* validate everything first: no host buffer or partial hash to undo */
    size_t largest = 0;
    for (int i = 0; i < list->count; i++) {
        MHUB_TRY(check_param(&list->items[i], i));
        size_t nb = mhub_tensor_nbytes(&list->items[i].value);
        if (nb > largest)
            largest = nb;
    }
    size_t cap = largest < DIGEST_CHUNK_BYTES ? largest : DIGEST_CHUNK_BYTES;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "digest buffer of %zu bytes", cap);

    mhub_sha256_ctx ctx;
    mhub_status s = mhub_sha256_init(&ctx);
    for (int i = 0; s == MHUB_OK && i < list->count; i++) {
        s = hash_header(&ctx, &list->items[i]);
        if (s == MHUB_OK)
            s = hash_values(&ctx, &list->items[i], buf, cap);
    }
    free(buf);
    uint8_t digest[MHUB_SHA256_BYTES];
    if (s == MHUB_OK)
        s = mhub_sha256_final(&ctx, digest);
    if (s == MHUB_OK)
        s = mhub_sha256_hex(digest, hex);
    return s;
}
