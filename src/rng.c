/* rng.c - Philox4x32-10 and the value-at-(seed, stream, index) helpers. */
#include <math.h>

#include "mhub/rng.h"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u /* golden ratio */
#define PHILOX_W1 0xBB67AE85u /* sqrt(3) - 1 */

static inline uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t *hi)
{
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    return (uint32_t)p;
}

void mhub_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4])
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, hi1;
        uint32_t lo0 = mulhilo(PHILOX_M0, c0, &hi0);
        uint32_t lo1 = mulhilo(PHILOX_M1, c2, &hi1);
        uint32_t n0 = hi1 ^ c1 ^ k0;
        uint32_t n2 = hi0 ^ c3 ^ k1;
        c0 = n0;
        c1 = lo1;
        c2 = n2;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

void mhub_rng_block(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4])
{
    const uint32_t ctr[4] = {(uint32_t)index, (uint32_t)(index >> 32), (uint32_t)stream,
                             (uint32_t)(stream >> 32)};
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    mhub_philox4x32_10(ctr, key, out);
}

/* 24 high bits -> [0, 1): exactly representable in f32, never 1.0. */
static inline float u32_to_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

float mhub_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t r[4];
    mhub_rng_block(seed, stream, index, r);
    return u32_to_unit(r[0]);
}

float mhub_rng_normal(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t r[4];
    mhub_rng_block(seed, stream, index, r);
    /* u1 in (0, 1] so log(u1) is finite; computed in double so the result
     * does not depend on the platform's float libm. */
    double u1 = ((double)r[0] + 1.0) / 4294967296.0;
    double u2 = (double)r[1] / 4294967296.0;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint32_t mhub_rng_below(uint64_t seed, uint64_t stream, uint64_t index, uint32_t n)
{
    uint32_t r[4];
    mhub_rng_block(seed, stream, index, r);
    uint64_t wide = ((uint64_t)r[0] << 32) | r[1];
    /* 64 random bits scaled to [0, n): bias < n / 2^64. */
    return (uint32_t)(((unsigned __int128)wide * n) >> 64);
}

void mhub_rng_fill_normal(float *dst, int64_t n, uint64_t seed, uint64_t stream,
                          uint64_t offset, float mean, float std)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = mean + std * mhub_rng_normal(seed, stream, offset + (uint64_t)i);
}

void mhub_rng_fill_uniform(float *dst, int64_t n, uint64_t seed, uint64_t stream,
                           uint64_t offset, float lo, float hi)
{
    for (int64_t i = 0; i < n; i++)
        dst[i] = lo + (hi - lo) * mhub_rng_uniform(seed, stream, offset + (uint64_t)i);
}

uint64_t mhub_rng_stream_id(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; p && *p; p++) {
        h ^= *p;
        h *= 0x100000001b3ull;
    }
    return h;
}
