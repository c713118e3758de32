/* sampler.h - which sample each data-parallel rank reads at each step.
 *
 * A job consumes a global batch of G samples per optimizer step. Position
 * j in [0, G) of step s is global position p = s*G + j, and p names a
 * sample index:
 *
 *   - endless stream (dataset_size N = 0): sample = p;
 *   - finite dataset: epoch e = p / N visits every sample once, in the
 *     order perm_e(p mod N). perm_e is the identity with shuffle off, and
 *     otherwise a pseudo-random permutation of [0, N) keyed by (seed, e).
 *     Epochs run on across step boundaries: no sample is dropped or
 *     repeated within an epoch, and a batch may hold the end of one epoch
 *     and the start of the next.
 *
 * Everything is a pure function of (seed, N, G, step, position): nothing is
 * stored per sample, any rank computes any position in O(1) memory, and a
 * job resumed at step s reads exactly what it would have read.
 *
 * Ranks split the global batch, not the dataset: rank r of D takes the
 * r-th of D contiguous slices of [0, G), and gradient accumulation splits
 * that slice into M contiguous micro-batches. Concatenating every rank's
 * micro-batches in (rank, micro) order gives [0, G) in order, so the data
 * a job trains on does not depend on its data-parallel size.
 *
 * The permutation: a 6-round Feistel network on k-bit integers, k the
 * smallest with 2^k >= N. The value splits into a high part L and a low
 * part R of floor(k/2) bits; a round maps (L, R) to (R, L xor F(R)), with
 * the widths of the parts swapping, and F the first word of
 * mhub_rng_block(seed, e, round << 32 | R | 0x5a4d << 40) cut to L's width.
 * Values that land in [N, 2^k) are fed through again (cycle-walking) until
 * they fall in [0, N), which keeps it a bijection on [0, N). */
#ifndef MHUB_SAMPLER_H
#define MHUB_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_sampler {
    uint64_t dataset_size;  /* N; 0 = an endless stream */
    int64_t global_batch;   /* G, samples per step over all ranks */
    uint64_t seed;
    bool shuffle;           /* no effect on an endless stream */
    int domain_bits;        /* k: the permutation works on [0, 2^k) */
} mhub_sampler;

/* dataset_size 0 (endless) or 1 .. INT64_MAX; global_batch >= 1. */
mhub_status mhub_sampler_init(mhub_sampler *s, uint64_t dataset_size, int64_t global_batch,
                              uint64_t seed, bool shuffle);

/* Positions [*first, *first + *count) of the global batch that rank
 * dp_rank of dp_size reads in micro-batch `micro` of `micro_batches`.
 * G must be divisible by dp_size * micro_batches. The same for every
 * step. */
mhub_status mhub_sampler_rank_slice(const mhub_sampler *s, int dp_rank, int dp_size,
                                    int micro_batches, int micro, int64_t *first,
                                    int64_t *count);

/* The sample at position `position` (0 <= position < G) of step
 * `step` (>= 0). Fails if s*G + position overflows int64. */
mhub_status mhub_sampler_index(const mhub_sampler *s, int64_t step, int64_t position,
                               uint64_t *sample);

/* samples[i] = the sample at position first + i of step `step`, for
 * i < count; [first, first + count) must lie in [0, G). */
mhub_status mhub_sampler_fill(const mhub_sampler *s, int64_t step, int64_t first,
                              int64_t count, uint64_t *samples);

/* perm_epoch(i) for i < N: the epoch's visiting order (the identity with
 * shuffle off). An endless stream has no epochs: MHUB_ERR_INVALID_ARG. */
mhub_status mhub_sampler_permute(const mhub_sampler *s, uint64_t epoch, uint64_t i,
                                 uint64_t *out);

#ifdef __cplusplus
}
#endif
#endif
