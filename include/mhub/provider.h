/* provider.h - the model-provider pattern: provider types, provide(),
 * wrap hooks and get_model.
 *
 * A *provider type* is a vtable (mhub_provider_type): a name, a config
 * struct described by a field table (config.h), and provide(), which
 * builds one model *chunk*: the layers of one pipeline stage (one virtual
 * stage when virtual pipelining is on), with the input layer only when
 * pre_process and the output layer and loss only when post_process. A
 * registry maps type names to vtables, so a config file names its
 * provider; "mlp" is built in and a program can register its own
 * (examples/custom_provider.c).
 *
 * A *provider* (mhub_provider) is a config plus runtime state: the
 * backend to build on, the process groups of initialize_model_parallel,
 * and the registered wrap hooks. mhub_provide_distributed_model() turns
 * it into the list of chunks this rank trains, in the reference's order:
 *
 *   1. check the options (fp16 with bf16, wrap without a ddp config);
 *   2. apply the fp16/bf16/cpu-init/meta overrides to a COPY of the
 *      config (the provider's own config and the caller's ddp config are
 *      never modified);
 *   3. create the chunks: one per virtual stage, pre_process only for the
 *      first stage's first chunk, post_process only for the last stage's
 *      last chunk;
 *   4. run the pre-wrap hooks;
 *   5. print " > number of parameters on (tensor, pipeline) model
 *      parallel rank (T, P): N" on dp rank 0 (and cp rank 0);
 *   6. place the chunks on the backend (not for meta chunks; cpu
 *      initialisation builds on the host first);
 *   7. fp16/bf16: parameters in 16 bits, the optimizer keeps f32 main
 *      copies;
 *   8. wrap each chunk with DDP, the distributed optimizer (ddp_config's
 *      use_distributed_optimizer) or FSDP (use_fsdp); nothing when
 *      wrap_with_ddp is false;
 *   9. broadcast the parameters from dp rank 0 when
 *      data_parallel_random_init is on (only when wrapped);
 *  10. run the post-wrap hooks.
 *
 * Seeds (initialize_model_parallel): the parameters of pipeline rank p
 * start from seed + 100 p, as Megatron-LM's training loop does (the
 * reference's provider seeds every stage alike); tensor-parallel ranks
 * draw split parameters from seed + 100 p + 2718 + tp_rank; with
 * data_parallel_random_init each dp rank adds 10 dp_rank (and step 9
 * makes the replicas equal again). Within a seed every parameter has its
 * own counter-based stream named after it (module.h), so a parameter's
 * initial value does not depend on the dp size or on how many chunks the
 * model was cut into. */
#ifndef MHUB_PROVIDER_H
#define MHUB_PROVIDER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "mhub/backend.h"
#include "mhub/comm.h"
#include "mhub/config.h"
#include "mhub/ddp.h"
#include "mhub/engine.h"
#include "mhub/fsdp.h"
#include "mhub/module.h"
#include "mhub/optim.h"
#include "mhub/parallel.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mhub_provider mhub_provider;

/* ---- chunks ------------------------------------------------------------- */

/* What a provider's model object must offer so mhub can count, wrap and
 * free it without knowing its type. set_* may be NULL for a model that
 * never trains. */
typedef struct mhub_chunk_ops {
    mhub_param_list *(*params)(void *model);
    void (*free)(void *model);
    void (*set_grad_ready)(void *model, mhub_grad_ready_fn fn, void *user);
    void (*set_unit_hooks)(void *model, const mhub_unit_hooks *hooks);
    /* One line about the layers this chunk holds ("layers 0-3 of 5"),
     * for mhub info; may be NULL. */
    void (*describe)(const void *model, char *buf, size_t len);
} mhub_chunk_ops;

typedef enum mhub_model_type {
    MHUB_MODEL_ENCODER_OR_DECODER = 0,  /* one stack (GPT, BERT, the MLP) */
    MHUB_MODEL_ENCODER_AND_DECODER = 1  /* T5-style; no virtual pipelining */
} mhub_model_type;

/* One model chunk: a model object of its provider's type and where it
 * sits in the pipeline. Owns the model (ops->free) and, once wrapped,
 * its data-parallel engine. */
typedef struct mhub_chunk mhub_chunk;

/* For provide() implementations: wrap a model object. On failure the
 * model is freed with ops->free. `type_name` is copied. */
mhub_status mhub_chunk_create(const char *type_name, void *model, const mhub_chunk_ops *ops,
                              mhub_chunk **out);
void mhub_chunk_free(mhub_chunk *c);

const char *mhub_chunk_type_name(const mhub_chunk *c);
void *mhub_chunk_model(mhub_chunk *c);          /* the provider's own object */
mhub_param_list *mhub_chunk_params(mhub_chunk *c);
int64_t mhub_chunk_numel(mhub_chunk *c);        /* parameters' elements */
bool mhub_chunk_pre_process(const mhub_chunk *c);
bool mhub_chunk_post_process(const mhub_chunk *c);
int mhub_chunk_vp_stage(const mhub_chunk *c);   /* -1 without virtual pipelining */
mhub_model_type mhub_chunk_model_type(const mhub_chunk *c);
bool mhub_chunk_is_meta(const mhub_chunk *c);   /* no parameter storage */
/* The engine wrapping the chunk, or NULL when not wrapped. */
mhub_dp_engine *mhub_chunk_engine(mhub_chunk *c);
void mhub_chunk_describe(const mhub_chunk *c, char *buf, size_t len);

/* An ordered, growable list of chunks. It owns its chunks: remove hands
 * one back to the caller, free frees them all. */
typedef struct mhub_chunk_list {
    mhub_chunk **items;
    int count;
    int cap;
} mhub_chunk_list;

mhub_status mhub_chunk_list_append(mhub_chunk_list *l, mhub_chunk *c);
mhub_status mhub_chunk_list_insert(mhub_chunk_list *l, int index, mhub_chunk *c);
/* Take chunk `index` out of the list (the caller owns it then). */
mhub_chunk *mhub_chunk_list_remove(mhub_chunk_list *l, int index);
int64_t mhub_chunk_list_numel(const mhub_chunk_list *l);
void mhub_chunk_list_free(mhub_chunk_list *l);   /* frees the chunks; list reset to empty */

/* ---- provider types ----------------------------------------------------- */

/* Where the chunk being built sits, and how to build it. */
typedef struct mhub_provide_args {
    bool pre_process;       /* holds the input layer */
    bool post_process;      /* holds the output layer and the loss */
    int vp_stage;           /* -1 without virtual pipelining */
    int pp_rank, pp_size;   /* pipeline stage of this rank */
    int vp_size;            /* chunks per stage (1 without virtual pipelining) */
    int tp_rank, tp_size;
    mhub_backend *backend;  /* NULL: a meta chunk (shapes, no storage) */
    uint64_t seed;          /* initialisation seed of this rank (offsets applied) */
    uint64_t tp_seed;       /* seed for tensor-parallel (split) parameters */
    int64_t micro_batch;    /* rows a forward must hold (activation sizing) */
} mhub_provide_args;

/* Global chunk index of (pp_rank, vp_stage) in model order, as
 * Megatron's interleaved schedule numbers them: vp_stage * pp + pp_rank. */
int mhub_provide_args_chunk_index(const mhub_provide_args *a);
/* Chunks the model is cut into: pp_size * vp_size. */
int mhub_provide_args_num_chunks(const mhub_provide_args *a);

struct mhub_provider_type {
    const char *name;               /* the config file's "provider" value */
    const char *description;        /* one line */
    size_t config_size;             /* sizeof the type's config struct */
    const mhub_config_field *fields;/* the type's own fields (after the common ones) */
    int num_fields;
    /* Set the type's own fields to their defaults (common fields are
     * already set). */
    void (*config_defaults)(mhub_provider_config *cfg);
    /* Cross-field checks after the table's range checks; may be NULL. */
    mhub_status (*config_validate)(const mhub_provider_config *cfg);
    /* Build one chunk for `args`. Must not keep `cfg`. */
    mhub_status (*provide)(const mhub_provider_config *cfg, const mhub_provide_args *args,
                           mhub_chunk **out);
    /* One line about the whole architecture, for mhub info; may be NULL. */
    void (*describe)(const mhub_provider_config *cfg, char *buf, size_t len);
    /* Parameters of the whole model, shared weights counted once; NULL
     * when that is simply the sum over the chunks. (A tied GPT cut into
     * stages holds the embedding twice: on the first stage and, for the
     * output layer, on the last.) */
    int64_t (*total_params)(const mhub_provider_config *cfg);
};

/* The model's parameter count: the type's total_params, or the sum over
 * the meta chunks of every pipeline stage (allocating no storage). */
mhub_status mhub_provider_total_params(mhub_provider *p, int64_t *out);

/* Register a provider type (its name must be new, its table consistent:
 * config_size >= sizeof(mhub_provider_config), fields inside it, keys
 * unique and distinct from the common ones). The type must outlive its
 * use. The built-in types are registered on first use of the registry. */
mhub_status mhub_provider_type_register(const mhub_provider_type *type);
/* NULL when no type has that name. */
const mhub_provider_type *mhub_provider_type_find(const char *name);
int mhub_provider_type_count(void);
const mhub_provider_type *mhub_provider_type_at(int index);

/* ---- providers ------------------------------------------------------------ */

/* A provider of `cfg`'s type holding a copy of cfg (validated). */
mhub_status mhub_provider_create(const mhub_provider_config *cfg, mhub_provider **out);
/* A provider of a registered type with its default config. */
mhub_status mhub_provider_create_default(const char *type_name, mhub_provider **out);
void mhub_provider_free(mhub_provider *p);

const mhub_provider_type *mhub_provider_type_of(const mhub_provider *p);
/* The provider's config (cast to the type's struct to read its fields).
 * Changes made through mhub_provider_config_mut take effect at the next
 * provide/get_model and are validated there. */
const mhub_provider_config *mhub_provider_config_of(const mhub_provider *p);
mhub_provider_config *mhub_provider_config_mut(mhub_provider *p);

/* Runtime settings (not part of the saved config). The backend defaults
 * to none (only meta chunks can be built); micro_batch to 1. */
void mhub_provider_set_backend(mhub_provider *p, mhub_backend *be);
void mhub_provider_set_micro_batch(mhub_provider *p, int64_t rows);

/* provide(pre_process, post_process, vp_stage): one chunk at this rank's
 * pipeline position (stage 0 before initialize_model_parallel);
 * vp_stage -1 for none. Built on the provider's backend, meta without
 * one or when the config says init_model_with_meta_device. */
mhub_status mhub_provider_provide(mhub_provider *p, bool pre_process, bool post_process,
                                  int vp_stage, mhub_chunk **out);

/* ---- wrap hooks --------------------------------------------------------- */

/* A hook may change the list in place: reorder, remove, replace or add
 * chunks, freeze parameters. An error status aborts get_model cleanly;
 * so does leaving the list empty (the reference would pass None on). */
typedef mhub_status (*mhub_wrap_hook_fn)(void *user, mhub_chunk_list *chunks);

typedef struct mhub_wrap_hook {
    const char *name;   /* for error messages; NULL shows as "(unnamed)" */
    mhub_wrap_hook_fn fn;
    void *user;
} mhub_wrap_hook;

/* The registered hooks of one kind, run in order by mhub_hook_chain_run. */
typedef struct mhub_hook_chain mhub_hook_chain;

/* prepend: run before the hooks registered so far. The name is copied. */
mhub_status mhub_provider_register_pre_wrap_hook(mhub_provider *p, const char *name,
                                                 mhub_wrap_hook_fn fn, void *user, bool prepend);
mhub_status mhub_provider_register_post_wrap_hook(mhub_provider *p, const char *name,
                                                  mhub_wrap_hook_fn fn, void *user, bool prepend);
/* The composed hook: NULL when none is registered. Reads the live list,
 * so hooks registered later are included. */
const mhub_hook_chain *mhub_provider_pre_wrap_hook(const mhub_provider *p);
const mhub_hook_chain *mhub_provider_post_wrap_hook(const mhub_provider *p);
int mhub_hook_chain_length(const mhub_hook_chain *h);
const mhub_wrap_hook *mhub_hook_chain_at(const mhub_hook_chain *h, int index);
/* Run every hook in order. A failing hook's error, or an empty list after
 * a hook, is returned with the hook's name in the message. */
mhub_status mhub_hook_chain_run(const mhub_hook_chain *h, mhub_chunk_list *chunks);
/* The same over an array of hooks (a call-time override). */
mhub_status mhub_wrap_hooks_run(const mhub_wrap_hook *hooks, int count, const char *kind,
                                mhub_chunk_list *chunks);

/* ---- initialize_model_parallel ------------------------------------------ */

/* Collective over `world` (which must outlive the provider): build the
 * process groups from the config's sizes (order string NULL = Megatron's
 * "tp-cp-ep-dp-pp") and, when seed is not NULL, make *seed the
 * initialisation seed (otherwise the config's seed is used). Calling it
 * again replaces the groups. */
mhub_status mhub_provider_initialize_model_parallel(mhub_provider *p, mhub_comm *world,
                                                    const int64_t *seed, const char *order);
/* The groups, or NULL before initialize_model_parallel. */
mhub_parallel *mhub_provider_parallel(const mhub_provider *p);

/* Seeds this rank uses (see the top of this file). */
typedef struct mhub_provider_seeds {
    uint64_t base;            /* seed + 100 pp_rank (+ 10 dp_rank with dp random init) */
    uint64_t tensor_parallel; /* base + 2718 + tp_rank */
    uint64_t expert_parallel; /* base + 1024 + 100 ep_rank + etp_rank */
} mhub_provider_seeds;
mhub_status mhub_provider_seeds_of(const mhub_provider *p, bool data_parallel_random_init,
                                   mhub_provider_seeds *out);

/* ---- get_model -------------------------------------------------------------- */

typedef enum mhub_tristate {
    MHUB_UNSET = -1,  /* use the provider's config */
    MHUB_FALSE = 0,
    MHUB_TRUE = 1
} mhub_tristate;

/* The reference's GetModelKwargs, with its defaults (options_init). */
typedef struct mhub_get_model_options {
    const mhub_ddp_config *ddp_config;      /* copied; required when wrap_with_ddp */
    mhub_model_type model_type;
    bool overlap_param_gather_with_optimizer_step; /* one bucket per chunk */
    mhub_tristate fp16;
    mhub_tristate bf16;
    bool use_fsdp;                          /* FSDP (ZeRO-3) instead of DDP */
    bool wrap_with_ddp;                     /* default true */
    bool data_parallel_random_init;         /* default false */
    mhub_tristate use_cpu_initialization;
    mhub_tristate init_model_with_meta_device;
    /* Call-time hooks: when count > 0 they replace the registered hooks
     * of that kind for this call only. */
    const mhub_wrap_hook *pre_wrap_hooks;
    int num_pre_wrap_hooks;
    const mhub_wrap_hook *post_wrap_hooks;
    int num_post_wrap_hooks;
    /* mhub's own: */
    const mhub_optim_config *optim;         /* NULL: SGD, lr 1e-3 */
    const mhub_fsdp_options *fsdp_options;  /* NULL: defaults */
    mhub_comm *world;                       /* provide_distributed_model initialises the
                                             * groups over it when not yet done */
    FILE *log;                              /* parameter counts; NULL = stdout */
} mhub_get_model_options;

void mhub_get_model_options_init(mhub_get_model_options *o);

/* The reference's get_model(): steps 1-9 above with the call-time pre-wrap
 * hooks only (registered hooks are provide_distributed_model's business).
 * Needs initialize_model_parallel when wrapping. On error *out is empty
 * and nothing is left allocated. */
mhub_status mhub_get_model(mhub_provider *p, const mhub_get_model_options *opts,
                           mhub_chunk_list *out);

/* provide_distributed_model(): initialises the groups over opts->world if
 * needed, resolves the hooks (call-time ones replace registered ones),
 * runs get_model and the post-wrap hooks. */
mhub_status mhub_provide_distributed_model(mhub_provider *p, const mhub_get_model_options *opts,
                                           mhub_chunk_list *out);

/* meta_model: this rank's chunks with shapes and no storage, unwrapped
 * (the reference's property, which is broken upstream), after the
 * registered pre-wrap hooks (post-wrap hooks expect wrapped chunks and
 * are not run). Allocates no tensor storage and prints nothing. Stage 0
 * of the configured pipeline before initialize_model_parallel. */
mhub_status mhub_provider_meta_model(mhub_provider *p, mhub_chunk_list *out);

/* The meta chunks of any pipeline stage, without process groups: what
 * `mhub info` walks. */
mhub_status mhub_provider_meta_stage(mhub_provider *p, int pp_rank, mhub_chunk_list *out);

/* ---- Hugging Face configs (hf.c) ------------------------------------------ */

/* Read a Hugging Face config.json (a file, or a directory holding one)
 * into a new provider config of the matching type (GPT-2, Llama or Qwen2
 * keys). Errors name the file and the key. */
mhub_status mhub_config_from_hf(const char *path, mhub_provider_config **out);

/* Write <dir>/config.json (creating dir, one level) as transformers
 * 5.24.0 writes it for a model of this config: its keys, its defaults
 * for the keys mhub does not model, "architectures", "dtype" and
 * "transformers_version", laid out as json.dumps(indent=2,
 * sort_keys=True) + "\n". MHUB_ERR_UNSUPPORTED for a config Hugging
 * Face has no architecture for. */
mhub_status mhub_config_save_hf(const mhub_provider_config *cfg, const char *dir);

/* A config.json as read: every key and value it holds, the modelled ones
 * and the rest (token ids, task parameters, its transformers_version),
 * kept so that the config can be written back over it. */
typedef struct mhub_hf_source mhub_hf_source;

/* Read and check a config.json (a file, or a directory holding one), as
 * mhub_config_from_hf does. Free with mhub_hf_source_free. */
mhub_status mhub_hf_source_read(const char *path, mhub_hf_source **out);
/* The config the source describes (owned by the source). */
const mhub_provider_config *mhub_hf_source_config(const mhub_hf_source *src);
/* Write the source to `file` as it was read: the same bytes when it was
 * written by transformers (json.dumps' form). */
mhub_status mhub_hf_source_write(const mhub_hf_source *src, const char *file);
void mhub_hf_source_free(mhub_hf_source *src);

/* mhub_config_save_hf over a source: the source's keys, with those whose
 * value the config changes rewritten, so a config read from `src` and
 * left as it was writes the file back byte for byte, and keys mhub does
 * not model survive. A NULL source, or one of another family (GPT-2 vs
 * Llama), writes the config as mhub_config_save_hf does. */
mhub_status mhub_config_save_hf_with(const mhub_provider_config *cfg, const mhub_hf_source *src,
                                     const char *dir);

#ifdef __cplusplus
}
#endif
#endif
