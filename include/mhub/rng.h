/* rng.h - counter-based random numbers (Philox4x32-10).
 *
 * A value is a pure function of (seed, stream, index): no hidden state, so
 * a parameter element gets the same initial value whether the model is
 * built on 1 rank or 4, whole or sharded, in any order. mhub uses the
 * stream to name a parameter (mhub_rng_stream_id of its full name) and the
 * index for the element within it.
 *
 * Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
 * 3", SC'11): key = seed (2 x 32 bits), counter = (index, stream) as
 * 4 x 32 bits, 10 rounds. */
#ifndef MHUB_RNG_H
#define MHUB_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One Philox4x32-10 block: counter ctr[4] under key[2] -> out[4]. */
void mhub_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* The four 32-bit words at (seed, stream, index). */
void mhub_rng_block(uint64_t seed, uint64_t stream, uint64_t index, uint32_t out[4]);

/* Uniform in [0, 1), 24 random bits. */
float mhub_rng_uniform(uint64_t seed, uint64_t stream, uint64_t index);
/* Standard normal (Box-Muller on two 32-bit words of the block); finite. */
float mhub_rng_normal(uint64_t seed, uint64_t stream, uint64_t index);
/* Uniform integer in [0, n) (n >= 1), bias below 2^-32. */
uint32_t mhub_rng_below(uint64_t seed, uint64_t stream, uint64_t index, uint32_t n);

/* Host fills: dst[i] at index offset + i. */
void mhub_rng_fill_normal(float *dst, int64_t n, uint64_t seed, uint64_t stream,
                          uint64_t offset, float mean, float std);
void mhub_rng_fill_uniform(float *dst, int64_t n, uint64_t seed, uint64_t stream,
                           uint64_t offset, float lo, float hi);

/* 64-bit FNV-1a hash of a name: the stream id of a named parameter. */
uint64_t mhub_rng_stream_id(const char *name);

#ifdef __cplusplus
}
#endif
#endif
