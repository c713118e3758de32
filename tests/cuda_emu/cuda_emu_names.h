/* cuda_emu_names.h - the emulated CUDA backend's own names.
 *
 * The test build compiles backends/cuda/ a second time, against the CPU
 * emulator, and links it into test programs next to libmhub, which has
 * the same entry points (the real backend's with --with-cuda, cuda_absent.c's
 * without). Every function the backend's files define with external linkage
 * gets another name here, so the two never meet; the build force-includes
 * this file (-include) into each emulated object. Tests reach the emulated
 * backend through tests/cuda_emu/cuda_emu.h. */
#ifndef MHUB_CUDA_EMU_NAMES_H
#define MHUB_CUDA_EMU_NAMES_H

/* include/mhub/backend.h and cuda_internal.h */
#define mhub_cuda_available mhub_cuda_emu_available
#define mhub_cuda_backend_create mhub_cuda_emu_backend_create
#define mhub_cuda_backend_set_matmul mhub_cuda_emu_backend_set_matmul
#define mhub_cuda_backend_device mhub_cuda_emu_backend_device
#define mhub_cuda_backend_stream mhub_cuda_emu_backend_stream
#define mhub_cuda_error mhub_cuda_emu_error

/* include/mhub/comm.h: the NCCL communicator (nccl_comm.c) */
#define mhub_comm_create_nccl mhub_cuda_emu_comm_create_nccl

/* the kernel launchers of cuda_kernels.h */
#define mhub_cuda_bias_add mhub_cuda_emu_bias_add
#define mhub_cuda_bias_backward mhub_cuda_emu_bias_backward
#define mhub_cuda_gelu_forward mhub_cuda_emu_gelu_forward
#define mhub_cuda_gelu_backward mhub_cuda_emu_gelu_backward
#define mhub_cuda_softmax_xent_forward mhub_cuda_emu_softmax_xent_forward
#define mhub_cuda_softmax_xent_backward mhub_cuda_emu_softmax_xent_backward
#define mhub_cuda_embedding_forward mhub_cuda_emu_embedding_forward
#define mhub_cuda_embedding_backward mhub_cuda_emu_embedding_backward
#define mhub_cuda_layernorm_forward mhub_cuda_emu_layernorm_forward
#define mhub_cuda_layernorm_backward mhub_cuda_emu_layernorm_backward
#define mhub_cuda_rmsnorm_forward mhub_cuda_emu_rmsnorm_forward
#define mhub_cuda_rmsnorm_backward mhub_cuda_emu_rmsnorm_backward
#define mhub_cuda_swiglu_forward mhub_cuda_emu_swiglu_forward
#define mhub_cuda_swiglu_backward mhub_cuda_emu_swiglu_backward
#define mhub_cuda_rope mhub_cuda_emu_rope
#define mhub_cuda_causal_attention_forward mhub_cuda_emu_causal_attention_forward
#define mhub_cuda_causal_attention_backward mhub_cuda_emu_causal_attention_backward
#define mhub_cuda_flash_attention_forward mhub_cuda_emu_flash_attention_forward
#define mhub_cuda_flash_attention_backward mhub_cuda_emu_flash_attention_backward
#define mhub_cuda_attention_wmma_refusal mhub_cuda_emu_attention_wmma_refusal
#define mhub_cuda_wmma_attention_forward mhub_cuda_emu_wmma_attention_forward
#define mhub_cuda_wmma_attention_backward mhub_cuda_emu_wmma_attention_backward
#define mhub_cuda_cast mhub_cuda_emu_cast
#define mhub_cuda_scale mhub_cuda_emu_scale
#define mhub_cuda_axpy mhub_cuda_emu_axpy
#define mhub_cuda_sum_squares mhub_cuda_emu_sum_squares
#define mhub_cuda_fill_normal mhub_cuda_emu_fill_normal
#define mhub_cuda_fill_uniform mhub_cuda_emu_fill_uniform
#define mhub_cuda_sgd_step mhub_cuda_emu_sgd_step
#define mhub_cuda_adamw_step mhub_cuda_emu_adamw_step
#define mhub_cuda_divide mhub_cuda_emu_divide
#define mhub_cuda_attn_pointers mhub_cuda_emu_attn_pointers
#define mhub_cuda_attn_softmax_rows mhub_cuda_emu_attn_softmax_rows
#define mhub_cuda_attn_probs_dscores_rows mhub_cuda_emu_attn_probs_dscores_rows

/* the GEMM attention path of cuda_attention_gemm.h */
#define mhub_cuda_attention_gemm_scratch mhub_cuda_emu_attention_gemm_scratch
#define mhub_cuda_attention_gemm_forward mhub_cuda_emu_attention_gemm_forward
#define mhub_cuda_attention_gemm_backward mhub_cuda_emu_attention_gemm_backward

#endif
