/* checkpoint.h - save and resume training: parameters, optimizer state,
 * the step (the data position: sampler order is a pure function of seed
 * and step), the model config and the run's settings, written by every
 * data-parallel rank.
 *
 * Layout of one checkpoint, DIR/step-<N>/:
 *   manifest.json             see below
 *   mhub_model.json           the provider config (mhub_config_save_pretrained)
 *   shard-<r>-of-<D>.safetensors
 *                             rank r's share: parameter i goes to rank
 *                             i % D, as FULL f32 tensors "<name>" and
 *                             "<name>.<state>" ("exp_avg", "exp_avg_sq",
 *                             "momentum", "main_param")
 * and DIR/latest names the newest step directory. Because tensors are
 * stored whole, by name, a checkpoint written at one dp size loads at any
 * other: every rank reads the tensors and the engine keeps its own part.
 *
 * manifest.json (format version 2):
 *   "format": "mhub-checkpoint", "version": 2,
 *   "step", "optim_steps", "seed", "dp_size", "params" (integers),
 *   "engine"   the engine that wrote it (informational),
 *   "shards"   dp_size objects {"file": "shard-...", "sha256": 64 hex
 *              digits}, the SHA-256 of each shard file as written,
 *   "run"      the run's settings as {"key": "value"} strings (below).
 * Version 1 (no checksums, no settings) is refused with a message saying
 * so: it cannot be verified, and a resume from it cannot be checked.
 *
 * Integrity: each shard file is hashed (by one of the loading ranks, in
 * turn) and compared with the manifest before any tensor is used; a
 * mismatch fails the load on every rank, naming the file and both
 * digests' first hex digits.
 *
 * Run settings: the caller names what a resume must agree on (exact:
 * batch sizes, sequence length, data) and what it may change (the
 * schedule: steps, learning rate, ...). On load an exact setting that
 * differs from, or is missing in, the checkpoint is an error naming it
 * with both values; a changeable one is reported in
 * mhub_checkpoint_info.changed for the caller to warn about.
 *
 * Saving is atomic: every rank writes (and fsyncs) its shard into
 * DIR/.tmp-step-<N>, then rank 0 writes the config and the manifest,
 * renames the directory to step-<N> and replaces DIR/latest (temporary +
 * rename). A crash at any point leaves the previous checkpoint loadable.
 *
 * Both calls are collective over the data-parallel communicator, and
 * every rank returns the same outcome: ranks agree on errors (an
 * allreduce) before every collective step, bad arguments on one rank
 * included, and a failing rank's message is sent to all, so none hangs
 * and each can report it. Only a NULL communicator returns at once. */
#ifndef MHUB_CHECKPOINT_H
#define MHUB_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "mhub/comm.h"
#include "mhub/config.h"
#include "mhub/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The manifest's format version; other versions are refused. */
#define MHUB_CHECKPOINT_VERSION 2

/* One setting of the training run, as text: values are compared as
 * strings, so format them the same way on save and load (e.g. "%.9g" for
 * a float). Keys are unique, non-empty; values non-NULL. */
typedef struct mhub_checkpoint_setting {
    const char *key;    /* "global_batch", "lr", ... */
    const char *value;  /* "32", "0.00100000005", ... */
    bool exact;         /* a resume with another value would not continue
                           the saved run exactly: loading is an error */
} mhub_checkpoint_setting;

/* Room for mhub_checkpoint_info.changed; a longer list ends in "...". */
#define MHUB_CHECKPOINT_CHANGED_BYTES 512

typedef struct mhub_checkpoint_info {
    int64_t step;         /* training steps done when it was saved */
    int64_t optim_steps;  /* optimizer steps taken */
    int64_t seed;         /* the training seed */
    int dp_size;          /* ranks it was written at */
    /* the non-exact settings whose value differs from the checkpoint's,
     * as "key saved -> now" joined by "; "; "" when none */
    char changed[MHUB_CHECKPOINT_CHANGED_BYTES];
} mhub_checkpoint_info;

/* Save the engine's parameters and optimizer state after `step` training
 * steps to DIR/step-<step> (DIR is created if missing), with the run's
 * settings (run may be NULL when run_count is 0). The previous
 * checkpoints stay. On failure nothing new is left in DIR. */
mhub_status mhub_checkpoint_save(const char *dir, mhub_dp_engine *e, mhub_comm *dp,
                                 const mhub_provider_config *cfg, int64_t step, int64_t seed,
                                 const mhub_checkpoint_setting *run, int run_count);

/* Load `path` (a checkpoint directory, or a DIR holding "latest") into
 * the engine, whose parameters must match by name and shape and whose
 * model config must equal the saved one (a difference names the key).
 * Every shard file is verified against its checksum first; `run` is
 * compared with the saved settings as described above. info may be
 * NULL. On error the engine's contents are unspecified only if the
 * failure came while copying (after every file was checked). */
mhub_status mhub_checkpoint_load(const char *path, mhub_dp_engine *e, mhub_comm *dp,
                                 const mhub_provider_config *cfg,
                                 const mhub_checkpoint_setting *run, int run_count,
                                 mhub_checkpoint_info *info);

#ifdef __cplusplus
}
#endif
#endif
