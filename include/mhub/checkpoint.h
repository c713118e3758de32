/* checkpoint.h - save and resume training: parameters, optimizer state,
 * the step (the data position: sampler order is a pure function of seed
 * and step) and the model config, written by every data-parallel rank.
 *
 * Layout of one checkpoint, DIR/step-<N>/:
 *   manifest.json             format, version, step, optimizer steps, seed,
 *                             dp size, engine, optimizer, shard file names
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
 * Saving is atomic: every rank writes (and fsyncs) its shard into
 * DIR/.tmp-step-<N>, then rank 0 writes the config and the manifest,
 * renames the directory to step-<N> and replaces DIR/latest (temporary +
 * rename). A crash at any point leaves the previous checkpoint loadable.
 *
 * Both calls are collective over the data-parallel communicator, and
 * every rank returns the same outcome: ranks agree on errors (an
 * allreduce) before going on, and a failing rank's message is sent to
 * all, so none hangs and each can report it. */
#ifndef MHUB_CHECKPOINT_H
#define MHUB_CHECKPOINT_H

#include <stdint.h>

#include "mhub/comm.h"
#include "mhub/config.h"
#include "mhub/engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The manifest's format version; other versions are refused. */
#define MHUB_CHECKPOINT_VERSION 1

typedef struct mhub_checkpoint_info {
    int64_t step;         /* training steps done when it was saved */
    int64_t optim_steps;  /* optimizer steps taken */
    int64_t seed;         /* the training seed */
    int dp_size;          /* ranks it was written at */
} mhub_checkpoint_info;

/* Save the engine's parameters and optimizer state after `step` training
 * steps to DIR/step-<step> (DIR is created if missing). The previous
 * checkpoints stay. On failure nothing new is left in DIR. */
mhub_status mhub_checkpoint_save(const char *dir, mhub_dp_engine *e, mhub_comm *dp,
                                 const mhub_provider_config *cfg, int64_t step, int64_t seed);

/* Load `path` (a checkpoint directory, or a DIR holding "latest") into
 * the engine, whose parameters must match by name and shape and whose
 * model config must equal the saved one (a difference names the key).
 * info may be NULL. On error the engine's contents are unspecified only
 * if the failure came while copying (after every file was checked). */
mhub_status mhub_checkpoint_load(const char *path, mhub_dp_engine *e, mhub_comm *dp,
                                 const mhub_provider_config *cfg, mhub_checkpoint_info *info);

#ifdef __cplusplus
}
#endif
#endif
