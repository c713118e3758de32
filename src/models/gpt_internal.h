/* gpt_internal.h - the GPT chunk's insides, shared by gpt.c (config,
 * parameter layout) and gpt_model.c (forward and backward). */
#ifndef MHUB_GPT_INTERNAL_H
#define MHUB_GPT_INTERNAL_H

#include "mhub/backend.h"
#include "mhub/gpt.h"

/* The sizes one tensor-parallel rank holds when the split layers are cut
 * into `shards` (tp for a rank, 1 for the whole model). Megatron's
 * column-parallel layers (linear_qkv by query groups, linear_fc1, the
 * vocabulary) are cut along their output rows, the row-parallel ones
 * (linear_proj, linear_fc2) along their input columns; H and the
 * sequence are never cut. */
typedef struct gpt_dims {
    int64_t qkv_rows;     /* (a + 2g) d / shards */
    int64_t attn_width;   /* a d / shards: linear_proj's input */
    int64_t ffn;          /* F / shards: linear_fc2's input */
    int64_t fc1_rows;     /* ffn, or 2 ffn for swiglu (gate shard, then up shard) */
    int64_t vocab;        /* padded V / shards */
} gpt_dims;

typedef struct gpt_compute gpt_compute;

struct mhub_gpt {
    mhub_gpt_config cfg;
    int first_layer;      /* global index of the chunk's first layer */
    int num_layers;       /* layers in this chunk */
    bool pre_process, post_process;
    int tp_rank, tp_size; /* the tensor-parallel shard this chunk holds */
    gpt_dims dims;        /* this shard's sizes of the split layers */
    mhub_dtype dtype;
    int unit;             /* unit of the parameters being added */
    mhub_param_list params;
    bool *split;          /* per parameter: a tensor-parallel shard */
    int split_cap;
    mhub_backend *be;     /* NULL for a meta chunk */
    gpt_compute *compute; /* activations; NULL when the chunk cannot run */
};

/* Activations for micro-batches of up to `batch` sequences of the
 * config's seq_length (gpt_model.c); called by mhub_gpt_create for a
 * chunk that can run. */
mhub_status mhub_gpt_compute_create(mhub_gpt *m, int64_t batch);
void mhub_gpt_compute_free(mhub_gpt *m);

#endif
