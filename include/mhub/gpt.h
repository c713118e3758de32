/* gpt.h - the GPT provider ("gpt"): a decoder-only transformer's
 * configuration and parameter layout, in Megatron-Core's names.
 *
 * The config follows Megatron-Core's TransformerConfig and GPTModel
 * field names, so a Megatron user reads it without a glossary. One type
 * covers the GPT-2 family (LayerNorm, GELU, learned positions, biases,
 * tied output layer) and the Llama family (RMSNorm, SwiGLU, rotary
 * positions, grouped-query attention, no biases, untied output layer).
 *
 * Parameters of one chunk at tp = 1 (tensor parallelism below), in
 * forward order (V = padded vocab, S =
 * seq_length, H = hidden_size, F = ffn_hidden_size, a = heads, g =
 * query groups, d = kv_channels; i is the GLOBAL layer index, so a
 * parameter has the same name, and the same initial values, however the
 * model is cut):
 *
 *   embedding.word_embeddings.weight                     [V, H]   pre_process
 *   embedding.position_embeddings.weight                 [S, H]   pre_process, learned_absolute
 *   decoder.layers.i.self_attention.linear_qkv.layer_norm_weight  [H]
 *   decoder.layers.i.self_attention.linear_qkv.layer_norm_bias    [H]         LayerNorm
 *   decoder.layers.i.self_attention.linear_qkv.weight    [(a + 2g) d, H]
 *   decoder.layers.i.self_attention.linear_qkv.bias      [(a + 2g) d]  add_bias_linear
 *                                                                       or add_qkv_bias
 *   decoder.layers.i.self_attention.linear_proj.weight   [H, a d]
 *   decoder.layers.i.self_attention.linear_proj.bias     [H]           add_bias_linear
 *   decoder.layers.i.mlp.linear_fc1.layer_norm_weight    [H]
 *   decoder.layers.i.mlp.linear_fc1.layer_norm_bias      [H]           LayerNorm
 *   decoder.layers.i.mlp.linear_fc1.weight               [F, H]  ([2F, H] for swiglu:
 *                                                                 gate rows, then up rows)
 *   decoder.layers.i.mlp.linear_fc1.bias                 [F] ([2F])    add_bias_linear
 *   decoder.layers.i.mlp.linear_fc2.weight               [H, F]
 *   decoder.layers.i.mlp.linear_fc2.bias                 [H]           add_bias_linear
 *   decoder.final_layernorm.weight                       [H]      post_process
 *   decoder.final_layernorm.bias                         [H]      post_process, LayerNorm
 *   output_layer.weight                                  [V, H]   post_process, see below
 *
 * The rows of linear_qkv are grouped as Megatron-Core stores them: for
 * each query group, its a/g query heads, then its key head, then its
 * value head (d rows each).
 *
 * The output layer: untied (share_embeddings_and_output_weights false),
 * every post_process chunk holds output_layer.weight. Tied, a chunk
 * holding both ends uses embedding.word_embeddings.weight for the
 * logits; when the model is cut (the last chunk lacks the embedding) the
 * last chunk holds its own output_layer.weight, as Megatron-Core's
 * GPTModel does. That copy starts at zero, as Megatron's, whose
 * training step then sums it with the first stage's embedding over the
 * embedding group (and keeps their gradients summed) so both stay equal.
 * So the parameters of all chunks together exceed the model's
 * parameters by V x H exactly when the model is tied and cut.
 *
 * Tensor parallelism (tensor_model_parallel_size = tp > 1): as in
 * Megatron-Core, each tensor-parallel rank builds only its shard, and
 * the shapes above become, with every shard the same size:
 *
 *   column-parallel, cut along the output rows (dim 0), biases with them:
 *     linear_qkv    [(a + 2g) d / tp, H]: g/tp whole query groups, each
 *                   with its a/g query heads, key and value as above
 *     linear_fc1    [F / tp, H]; swiglu [2F / tp, H]: the rank's F/tp gate
 *                   rows, then its F/tp up rows
 *     word_embeddings and output_layer  [V / tp, H] (vocab-parallel)
 *   row-parallel, cut along the input columns (dim 1):
 *     linear_proj   [H, a d / tp]     linear_fc2   [H, F / tp]
 *     their biases stay [H] on every rank: Megatron adds them after the
 *     all-reduce of the partial outputs
 *   replicated: position_embeddings and every norm's weight and bias.
 *
 * Validation needs a, g and F to be multiples of tp (V is padded to one).
 * The split parameters draw their initial values from the
 * tensor-parallel seed (mhub_provide_args.tp_seed, different on each tp
 * rank), the replicated ones from the rank's seed (the same on every tp
 * rank), as Megatron initialises its tensor-parallel layers under the
 * model-parallel RNG, at any tp, 1 included. So a shard's initial values
 * are NOT a slice of the tp = 1 model's: concatenating the tp shards
 * gives a model of the same shapes and distribution, not the same
 * numbers. (Megatron with use_cpu_initialization draws the whole matrix
 * and slices it; mhub does not.)
 *
 * Wrapping units (module.h), local to the chunk and in forward order:
 * unit 0 is the embedding when pre_process, then one unit per
 * transformer layer, then the final norm with the output layer as the
 * last unit when post_process. A tied chunk's last unit reads the
 * embedding table, whose tied_unit names it (FSDP keeps unit 0 gathered
 * for it).
 *
 * Initialisation: norm weights one, biases zero. With init_method
 * NORMAL (Megatron's) weights are N(0, init_method_std^2), and the two
 * projections that write into the residual stream (linear_proj,
 * linear_fc2) use init_method_std / sqrt(2 num_layers), Megatron's
 * scaled init. With FAN_IN a weight [out, in] is N(0, 1/in), `in` being
 * the whole layer's input width even in a row-parallel shard; the
 * embeddings, whose rows are looked up rather than multiplied, use
 * 1/sqrt(H), the fan-in of the tied output layer that reads them. */
#ifndef MHUB_GPT_H
#define MHUB_GPT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mhub/config.h"
#include "mhub/module.h"
#include "mhub/provider.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mhub_gpt_normalization {
    MHUB_GPT_LAYERNORM = 0,  /* "LayerNorm": weight and bias */
    MHUB_GPT_RMSNORM = 1     /* "RMSNorm": weight only */
} mhub_gpt_normalization;

typedef enum mhub_gpt_activation {
    MHUB_GPT_GELU = 0,       /* "gelu" (tanh approximation, GPT-2's) */
    MHUB_GPT_SWIGLU = 1      /* "swiglu": silu(gate) * up, fc1 holds both */
} mhub_gpt_activation;

typedef enum mhub_gpt_position_embedding {
    MHUB_GPT_LEARNED_ABSOLUTE = 0, /* "learned_absolute": a position table */
    MHUB_GPT_ROPE = 1              /* "rope": rotary, no parameters */
} mhub_gpt_position_embedding;

/* Fields whose 0 means "derived" are JSON null by default (Megatron's
 * None). */
typedef struct mhub_gpt_config {
    mhub_provider_config base;
    int num_layers;                   /* transformer layers */
    int hidden_size;                  /* H */
    int ffn_hidden_size;              /* F; 0 = 4 H (gelu only; swiglu needs it set) */
    int num_attention_heads;          /* a */
    int num_query_groups;             /* g; 0 = a (multi-head); fewer = GQA, must divide a */
    int kv_channels;                  /* d, the head dim; 0 = H / a */
    int seq_length;                   /* S, the longest sequence (position table size) */
    int vocab_size;                   /* tokens, as the tokenizer has them */
    int make_vocab_size_divisible_by; /* pad V to a multiple of this x tp; 1 = no padding */
    mhub_gpt_normalization normalization;
    mhub_gpt_activation activation;
    mhub_gpt_position_embedding position_embedding_type;
    double rotary_base;               /* rope's theta */
    double layernorm_epsilon;
    bool share_embeddings_and_output_weights; /* tied output layer */
    bool add_bias_linear;             /* biases on every linear layer */
    bool add_qkv_bias;                /* bias on linear_qkv even without add_bias_linear */
} mhub_gpt_config;

/* The provider type, named "gpt". */
const mhub_provider_type *mhub_gpt_provider_type(void);

/* A config holding the common defaults and the GPT defaults: a tiny
 * GPT-2-like model (2 layers, hidden 64, 4 heads, seq 64, vocab 256,
 * LayerNorm, gelu, learned positions, biases, tied). */
void mhub_gpt_config_init(mhub_gpt_config *cfg);

/* Derived sizes (the config's 0s resolved). The padded vocabulary is
 * vocab_size rounded up to a multiple of make_vocab_size_divisible_by x
 * tensor_model_parallel_size, as Megatron pads it. */
int mhub_gpt_query_groups(const mhub_gpt_config *cfg);
int mhub_gpt_head_dim(const mhub_gpt_config *cfg);
int mhub_gpt_ffn_size(const mhub_gpt_config *cfg);
int64_t mhub_gpt_padded_vocab_size(const mhub_gpt_config *cfg);

/* Parameters ONE tensor-parallel rank holds of chunk `chunk` of
 * `num_chunks` (layers [chunk L/C, (chunk+1) L/C)) with the given ends,
 * by formula: no list is built. That is the count Megatron's get_model
 * prints per (tensor, pipeline) rank; every tp rank holds the same
 * number, and at tp = 1 it is the chunk's whole count. -1 when the
 * arguments are inconsistent (num_layers not divisible by num_chunks,
 * chunk out of range, a split size not divisible by tp, NULL config). */
int64_t mhub_gpt_param_count(const mhub_gpt_config *cfg, int chunk, int num_chunks, bool pre,
                             bool post);
/* Parameters of the whole model: one chunk with both ends, the split
 * layers at full size and the replicated ones once, a tied embedding
 * counted once. Independent of tp but for the vocabulary's padding,
 * which grows with tp. -1 for a NULL config. */
int64_t mhub_gpt_total_params(const mhub_gpt_config *cfg);

/* One line about the architecture: "GPT: 12 layers, hidden 768, 12
 * heads (12 query groups), ffn 3072, vocab 50257, seq 1024, LayerNorm,
 * gelu, learned_absolute, tied". */
void mhub_gpt_describe(const mhub_gpt_config *cfg, char *buf, size_t len);

/* ---- the model object (one chunk) ------------------------------------- */

typedef struct mhub_gpt mhub_gpt;

/* Build the chunk `args` asks for (see the top of this file): validates
 * the config, checks that num_layers divides into pp x vp chunks and
 * that args->tp_size is the config's tensor_model_parallel_size, builds
 * tensor-parallel rank args->tp_rank's shard, and gives the parameters
 * storage on args->backend, initialised from args->tp_seed (split
 * parameters) and args->seed (replicated ones), or none (meta) when
 * backend is NULL. */
mhub_status mhub_gpt_create(const mhub_gpt_config *cfg, const mhub_provide_args *args,
                            mhub_gpt **out);
void mhub_gpt_free(mhub_gpt *m);

mhub_param_list *mhub_gpt_params(mhub_gpt *m);
const mhub_gpt_config *mhub_gpt_config_of(const mhub_gpt *m);
/* Global index of the chunk's first layer, and how many it holds. */
int mhub_gpt_first_layer(const mhub_gpt *m);
int mhub_gpt_num_layers(const mhub_gpt *m);
bool mhub_gpt_pre_process(const mhub_gpt *m);
bool mhub_gpt_post_process(const mhub_gpt *m);
/* Wrapping units of the chunk (embedding, layers, head). */
int mhub_gpt_num_units(const mhub_gpt *m);
/* "embedding + layers 0-5 of 12", "layers 6-11 of 12 + final norm +
 * output layer", with ", tensor-parallel shard 2/8" (rank 1 of 8) when
 * tp > 1. */
void mhub_gpt_describe_chunk(const mhub_gpt *m, char *buf, size_t len);

/* ---- forward and backward (gpt_model.c) ---------------------------------
 * A chunk runs when it is the whole model (pre_process and post_process,
 * tensor_model_parallel_size 1) with f32, bf16 or f16 parameters on a
 * backend; its activations are sized at create for args->micro_batch
 * sequences of seq_length tokens, and a step allocates nothing. Compute
 * is f32: 16-bit parameters are widened exactly into f32 scratch before
 * each use (three f32 copies of the largest parameter, usually the
 * embedding, plus a few vectors; a fourth copy of a tied embedding when
 * its gradient is 16-bit). A parameter's gradient may be f32 (accumulated
 * in place) or, when an engine re-points it, in the parameter's 16-bit
 * dtype (computed in f32 and added with one rounding per backward).
 * Other chunks hold parameters only: their forward is
 * MHUB_ERR_UNSUPPORTED. */
bool mhub_gpt_runnable(const mhub_gpt *m);

/* Forward on batch sequences of seq tokens: tokens and targets
 * [batch * seq] (row b * seq + t), in backend memory. *mean_loss (may be
 * NULL) gets the mean next-token cross-entropy over the batch * seq
 * targets. A token or target outside [0, vocab) is an error naming it. */
mhub_status mhub_gpt_forward(mhub_gpt *m, const int32_t *tokens, const int32_t *targets,
                             int64_t batch, int64_t seq, float *mean_loss);
/* Backward of the last forward; each target's loss weighs loss_weight
 * (1 / (batch * seq) for this batch's mean). Parameter gradients
 * accumulate; grad-ready fires once per parameter, in backward order. */
mhub_status mhub_gpt_backward(mhub_gpt *m, float loss_weight);
/* The last forward's logits [batch * seq, padded vocab] and per-token
 * losses [batch * seq], in backend memory. */
const float *mhub_gpt_logits(const mhub_gpt *m);
const float *mhub_gpt_losses(const mhub_gpt *m);

void mhub_gpt_set_grad_ready(mhub_gpt *m, mhub_grad_ready_fn fn, void *user);
/* Units: the embedding (0), each layer, the head (module.h). */
void mhub_gpt_set_unit_hooks(mhub_gpt *m, const mhub_unit_hooks *hooks);

/* FLOPs of one forward + backward on batch x seq tokens, as llm.c and
 * Megatron count them: 6 per parameter used in a matrix product per
 * token, plus attention's 12 L T a d per token (a heads of width d,
 * which is H unless kv_channels says otherwise; causal masking not
 * discounted). */
double mhub_gpt_flops_per_step(const mhub_gpt_config *cfg, int64_t batch, int64_t seq);

/* ---- Hugging Face weights (hf_weights.c) ----------------------------------
 * GPT-2 (LayerNorm, gelu, learned positions, biases) and Llama (RMSNorm,
 * swiglu, rope; Qwen2's q/k/v biases too) checkpoints, in Hugging Face's
 * tensor names and layouts: GPT-2's Conv1D weights transposed, q/k/v
 * split (Llama) or concatenated (GPT-2's c_attn) rather than grouped per
 * query group, gate_proj/up_proj as linear_fc1's halves. The config
 * itself goes through mhub_config_from_hf / mhub_config_save_hf
 * (provider.h). */

/* Fill the chunk's parameters from <dir>/model.safetensors, or from the
 * shards a <dir>/model.safetensors.index.json "weight_map" names. A
 * pipeline chunk takes its own layers (by global index) and ends; a tied
 * model's last stage takes the embedding as its output layer. F32, BF16
 * and F16 tensors are converted to the parameters' f32. A missing
 * tensor, a wrong shape or dtype, and a tensor that maps to no parameter
 * are errors naming the file and the tensor (mask buffers such as
 * GPT-2's attn.bias are skipped). The chunk must have f32 storage and
 * tensor_model_parallel_size 1 (MHUB_ERR_UNSUPPORTED otherwise). On
 * error the parameters may be partly filled. */
mhub_status mhub_gpt_load_hf_weights(mhub_gpt *model, const char *dir);

/* Write <dir>/config.json and <dir>/model.safetensors (F32, Hugging
 * Face's names and layouts, {"format": "pt"} metadata) for a whole model
 * (one chunk with both ends, tp 1). Loading the directory back gives the
 * same parameters, and saving those again the same bytes. */
mhub_status mhub_gpt_save_hf_weights(const mhub_gpt *model, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
