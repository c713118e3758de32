/* dataset.h - token datasets for language-model training.
 *
 * A dataset is one stream of token ids, memory-mapped, in one of two
 * formats:
 *
 *   - Megatron's indexed dataset (a .bin + .idx pair, as Megatron-LM's
 *     preprocess_data.py writes it): the .idx header names the token dtype
 *     (uint8, int8, int16, int32, int64 or uint16; float dtypes are
 *     refused), and the stream is every sequence of every document in
 *     file order, the way Megatron's GPT dataset concatenates them. Token
 *     ids must lie in [0, INT32_MAX]; one that does not is an error when
 *     it is read.
 *   - a byte-level text file: every byte is a token (vocabulary 256).
 *
 * mhub_dataset_open picks the format from the path: one ending in ".bin"
 * or ".idx" names an indexed pair by its prefix, as does a prefix for
 * which PREFIX.idx and PREFIX.bin exist (Megatron's --data-path form; or
 * just one of them when there is no file PREFIX, so the missing half is
 * reported); anything else is a text file. Opening checks the whole index (magic,
 * version, dtype, sizes against the .bin's length, pointers, document
 * indices) so a bad file fails there, naming the file, and never later
 * in a training step.
 *
 * Training windows: with sequence length T, window i is the T + 1 tokens
 * [i*T, i*T + T]; its first T tokens are the inputs and its last T the
 * targets (the rule `mhub eval` uses), and a dataset of N tokens has
 * (N - 1) / T windows. A job draws windows through an mhub_sampler over
 * that many samples, so each data-parallel rank reads its own slice of
 * every global batch and the windows a step trains on do not depend on
 * the data-parallel size (see sampler.h).
 *
 * The bundled task (mhub_addition_*) is a byte-level text file of
 * addition problems that a small GPT learns visibly, and a scorer that
 * measures a model's exact-match accuracy on held-out problems through a
 * completion callback, so it needs no model code. */
#ifndef MHUB_DATASET_H
#define MHUB_DATASET_H

#include <stdint.h>

#include "mhub/sampler.h"
#include "mhub/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mhub_dataset_format {
    MHUB_DATASET_TEXT = 0,    /* byte-level text, vocabulary 256 */
    MHUB_DATASET_INDEXED = 1  /* Megatron .bin + .idx */
} mhub_dataset_format;

typedef struct mhub_dataset mhub_dataset;

/* Open and check `path` (see above). A missing or unreadable file, a
 * directory, an empty file, a .idx without its .bin, and every malformed
 * index are errors naming the file; *out is NULL then. */
mhub_status mhub_dataset_open(const char *path, mhub_dataset **out);
/* Unmaps and frees; NULL is a no-op. */
void mhub_dataset_close(mhub_dataset *ds);

mhub_dataset_format mhub_dataset_get_format(const mhub_dataset *ds);
/* The file the tokens come from (the text file, or the .bin). */
const char *mhub_dataset_path(const mhub_dataset *ds);
/* Tokens in the stream (>= 1). */
int64_t mhub_dataset_tokens(const mhub_dataset *ds);
/* Documents: the .idx's document count less its leading 0; 1 for text. */
int64_t mhub_dataset_documents(const mhub_dataset *ds);

/* A bound on the token ids: 256 for text; for an indexed dataset the
 * largest id + 1, found by reading every token the first time (which
 * also checks every id fits int32) and remembered. Not thread-safe on
 * the first call; later calls only read. */
mhub_status mhub_dataset_vocab(mhub_dataset *ds, int64_t *vocab);

/* dst[i] = token first + i of the stream, for i < count; the range must
 * lie inside [0, tokens). Safe to call from several threads at once. */
mhub_status mhub_dataset_read(const mhub_dataset *ds, int64_t first, int64_t count,
                              int32_t *dst);

/* The number of training windows at sequence length seq_len (>= 1):
 * (tokens - 1) / seq_len. A dataset shorter than seq_len + 1 tokens has
 * none and is an error naming the file and both sizes. */
mhub_status mhub_dataset_windows(const mhub_dataset *ds, int seq_len, int64_t *windows);

/* Window `index`: inputs[t] = token index*T + t and targets[t] = token
 * index*T + t + 1, for t < T = seq_len. */
mhub_status mhub_dataset_window(const mhub_dataset *ds, int seq_len, int64_t index,
                                int32_t *inputs, int32_t *targets);

/* The windows that rank dp_rank of dp_size reads in micro-batch `micro`
 * of `micro_batches` at optimizer step `step`: rows = global_batch /
 * (dp_size * micro_batches) windows, chosen by the sampler (which must
 * have been set up over exactly mhub_dataset_windows(ds, seq_len)
 * samples), written row by row to inputs[rows, seq_len] and
 * targets[rows, seq_len]. */
mhub_status mhub_dataset_batch(const mhub_dataset *ds, const mhub_sampler *sampler,
                               int seq_len, int64_t step, int dp_rank, int dp_size,
                               int micro_batches, int micro, int32_t *inputs,
                               int32_t *targets);

/* ---- the bundled task: multi-digit addition as text ----------------------
 *
 * Problem i is a line "A+B=S\n": A and B have exactly `digits` digits
 * (zero-padded), and S is the sum's digits + 1 digits (zero-padded)
 * written least-significant digit first. "047+385=2340\n" says
 * 47 + 385 = 432.
 *
 * Why reversed: a model writes its answer left to right, and carries flow
 * from the lowest digit up. Lowest digit first, each answer digit depends
 * only on the two operand digits at its place and the carry out of the
 * digit just written; highest digit first, the first digit already
 * depends on the whole carry chain, which a small transformer learns far
 * more slowly (Lee et al. 2023, "Teaching Arithmetic to Small
 * Transformers", found reversed output learned with a fraction of the
 * data). Fixed widths put every digit at a fixed distance from '+' and
 * '=', so attention can find the digits to add by position.
 *
 * Which problems: (A, B) for problem i is element i of a seeded
 * pseudo-random permutation (the sampler's, epoch 0) of all
 * 10^(2*digits) operand pairs. Problems [0, count) of a seed are
 * therefore all different, and a held-out range [count, count + n) of
 * the same seed never repeats a training problem. digits is 1 .. 9. */

/* The prompt "A+B=" (2*digits + 2 chars) and the answer "S" (digits + 1
 * chars) of problem `index`, each NUL-terminated; prompt needs
 * 2*digits + 3 bytes and answer digits + 2. */
mhub_status mhub_addition_problem(int digits, uint64_t seed, int64_t index, char *prompt,
                                  char *answer);

/* Write problems [0, count) as a byte-level text file at `path`
 * (atomically). The same arguments always give the same bytes. */
mhub_status mhub_addition_generate(const char *path, int64_t count, int digits,
                                   uint64_t seed);

/* A model's greedy completion of `prompt`: write at most out_size - 1
 * characters and a NUL to out. What follows the first '\n' is ignored,
 * so a model may stop at the end of the line or run on. A failure is
 * passed back by mhub_addition_score. */
typedef mhub_status (*mhub_completion_fn)(void *ctx, const char *prompt, char *out,
                                          int out_size);

/* Exact-match accuracy of `complete` on problems [first, first + count)
 * of `seed`: the fraction whose completion, up to its first '\n', is the
 * answer exactly. Pass the training file's seed and first = its count
 * for problems the model has never seen. */
mhub_status mhub_addition_score(int digits, uint64_t seed, int64_t first, int64_t count,
                                mhub_completion_fn complete, void *ctx, double *accuracy);

#ifdef __cplusplus
}
#endif
#endif
