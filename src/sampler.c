/* sampler.c - seeded epoch permutations and data-parallel batch slicing.
 *
 * The permutation is never materialized: a Feistel network is a bijection
 * on k-bit integers whatever its round function, and cycle-walking turns a
 * bijection on [0, 2^k) into one on [0, N). With 2^k < 2N a walk takes
 * fewer than two passes on average, so looking up one position costs a
 * handful of Philox blocks. */
#include "mhub/rng.h"
#include "mhub/sampler.h"

/* Six rounds: more than the four Luby-Rackoff need for a strong
 * pseudo-random permutation, to make up for the unbalanced halves. */
#define FEISTEL_ROUNDS 6
/* Set in the RNG index so the sampler's draws never coincide with a
 * parameter's initial values drawn from the same seed. */
#define SAMPLER_INDEX_TAG ((uint64_t)0x5a4d << 40)

static inline uint64_t low_mask(int bits) { return ((uint64_t)1 << bits) - 1; }

/* Smallest k with 2^k >= n (n <= INT64_MAX, so k <= 63). */
static int bits_to_cover(uint64_t n)
{
    int k = 0;
    while (k < 63 && ((uint64_t)1 << k) < n)
        k++;
    return k;
}

static uint64_t round_function(const mhub_sampler *s, uint64_t epoch, int round, uint64_t right)
{
    uint32_t r[4];
    mhub_rng_block(s->seed, epoch, SAMPLER_INDEX_TAG | (uint64_t)round << 32 | right, r);
    return r[0];
}

/* One pass of the network over [0, 2^k). The low part is `lo` bits wide;
 * each round moves it to the top and the masked-xor'd high part to the
 * bottom, so the widths trade places. Halves are at most 32 bits. */
static uint64_t feistel(const mhub_sampler *s, uint64_t epoch, uint64_t x)
{
    int lo = s->domain_bits / 2, hi = s->domain_bits - lo;
    for (int round = 0; round < FEISTEL_ROUNDS; round++) {
        uint64_t right = x & low_mask(lo), left = x >> lo;
        uint64_t mixed = left ^ (round_function(s, epoch, round, right) & low_mask(hi));
        x = right << hi | mixed;
        int t = lo;
        lo = hi;
        hi = t;
    }
    return x;
}

/* x < N, so the cycle through x returns to [0, N) at latest at x itself:
 * the walk always ends. */
static uint64_t permute(const mhub_sampler *s, uint64_t epoch, uint64_t x)
{
    do
        x = feistel(s, epoch, x);
    while (x >= s->dataset_size);
    return x;
}

mhub_status mhub_sampler_init(mhub_sampler *s, uint64_t dataset_size, int64_t global_batch,
                              uint64_t seed, bool shuffle)
{
    if (!s)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "sampler is NULL");
    if (dataset_size > (uint64_t)INT64_MAX)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "dataset size %llu exceeds INT64_MAX (use 0 for an endless stream)",
                          (unsigned long long)dataset_size);
    if (global_batch < 1)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "global batch %lld must be >= 1",
                          (long long)global_batch);
    s->dataset_size = dataset_size;
    s->global_batch = global_batch;
    s->seed = seed;
    s->shuffle = shuffle;
    s->domain_bits = bits_to_cover(dataset_size);
    return MHUB_OK;
}

/* Catches a zeroed or hand-filled struct: everything below relies on
 * these invariants for its arithmetic. */
static mhub_status check_sampler(const mhub_sampler *s)
{
    if (!s)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "sampler is NULL");
    if (s->global_batch < 1 || s->dataset_size > (uint64_t)INT64_MAX ||
        s->domain_bits != bits_to_cover(s->dataset_size))
        return MHUB_ERROR(MHUB_ERR_STATE, "sampler was not set up by mhub_sampler_init");
    return MHUB_OK;
}

mhub_status mhub_sampler_rank_slice(const mhub_sampler *s, int dp_rank, int dp_size,
                                    int micro_batches, int micro, int64_t *first,
                                    int64_t *count)
{
    MHUB_TRY(check_sampler(s));
    if (!first || !count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "first or count is NULL");
    if (dp_size < 1 || dp_rank < 0 || dp_rank >= dp_size)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "dp_rank %d is not in [0, dp_size = %d)",
                          dp_rank, dp_size);
    if (micro_batches < 1 || micro < 0 || micro >= micro_batches)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "micro %d is not in [0, micro_batches = %d)",
                          micro, micro_batches);
    int64_t parts = (int64_t)dp_size * micro_batches;
    if (s->global_batch % parts != 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "global batch %lld is not divisible by dp_size %d x micro_batches "
                          "%d = %lld",
                          (long long)s->global_batch, dp_size, micro_batches, (long long)parts);
    int64_t per_micro = s->global_batch / parts;
    *count = per_micro;
    *first = ((int64_t)dp_rank * micro_batches + micro) * per_micro;
    return MHUB_OK;
}

/* Global position s*G + j, or an error when it leaves int64. */
static mhub_status global_position(const mhub_sampler *s, int64_t step, int64_t position,
                                   uint64_t *out)
{
    if (step < 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "step %lld is negative", (long long)step);
    if (position < 0 || position >= s->global_batch)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "position %lld is not in [0, %lld)",
                          (long long)position, (long long)s->global_batch);
    if (step > (INT64_MAX - position) / s->global_batch)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "step %lld x global batch %lld overflows the sample position",
                          (long long)step, (long long)s->global_batch);
    *out = (uint64_t)(step * s->global_batch + position);
    return MHUB_OK;
}

static uint64_t sample_at(const mhub_sampler *s, uint64_t pos)
{
    if (s->dataset_size == 0)
        return pos;
    uint64_t epoch = pos / s->dataset_size, offset = pos % s->dataset_size;
    return s->shuffle ? permute(s, epoch, offset) : offset;
}

mhub_status mhub_sampler_index(const mhub_sampler *s, int64_t step, int64_t position,
                               uint64_t *sample)
{
    MHUB_TRY(check_sampler(s));
    if (!sample)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "sample is NULL");
    uint64_t pos;
    MHUB_TRY(global_position(s, step, position, &pos));
    *sample = sample_at(s, pos);
    return MHUB_OK;
}

mhub_status mhub_sampler_fill(const mhub_sampler *s, int64_t step, int64_t first,
                              int64_t count, uint64_t *samples)
{
    MHUB_TRY(check_sampler(s));
    if (first < 0 || count < 0 || first > s->global_batch - count)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "positions [%lld, %lld + %lld) are not inside the global batch "
                          "[0, %lld)",
                          (long long)first, (long long)first, (long long)count,
                          (long long)s->global_batch);
    if (count == 0)
        return MHUB_OK;
    if (!samples)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "samples is NULL with count = %lld",
                          (long long)count);
    /* positions first .. first+count-1 are consecutive: validate the last
     * one (the largest) and step through the rest */
    uint64_t pos;
    MHUB_TRY(global_position(s, step, first + count - 1, &pos));
    pos -= (uint64_t)(count - 1);
    for (int64_t i = 0; i < count; i++)
        samples[i] = sample_at(s, pos + (uint64_t)i);
    return MHUB_OK;
}

mhub_status mhub_sampler_permute(const mhub_sampler *s, uint64_t epoch, uint64_t i,
                                 uint64_t *out)
{
    MHUB_TRY(check_sampler(s));
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    if (s->dataset_size == 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "an endless stream (dataset size 0) has no "
                                                "epoch permutation");
    if (i >= s->dataset_size)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "index %llu is not in [0, dataset size %llu)",
                          (unsigned long long)i, (unsigned long long)s->dataset_size);
    *out = s->shuffle ? permute(s, epoch, i) : i;
    return MHUB_OK;
}
