/* cuda_pool.h - the bookkeeping of one device memory pool.
 *
 * The CUDA backend makes one cudaMalloc of the whole pool when it is
 * created and hands out pieces of it from then on, so a training step
 * never calls cudaMalloc (which synchronizes the device) and an
 * out-of-memory shows up at setup, with the pool's state in the message.
 * This file only does arithmetic on addresses; it never touches the
 * memory, so it is plain C, always built and tested on any machine.
 *
 * Strategy: first fit over an address-ordered list of blocks; a free
 * block is split when the remainder is worth keeping, and neighbours are
 * merged when freed. Training allocates its buffers once and frees them
 * at the end, so fragmentation is not a concern worth a cleverer
 * scheme. */
#ifndef MHUB_CUDA_POOL_H
#define MHUB_CUDA_POOL_H

#include <stddef.h>
#include <stdint.h>

#include "mhub/status.h"

typedef struct mhub_pool mhub_pool;

/* A pool over [base, base + size); every address handed out is a multiple
 * of `align` (a power of two) from base, which must itself be aligned. */
mhub_status mhub_pool_create(uintptr_t base, size_t size, size_t align, mhub_pool **out);
void mhub_pool_destroy(mhub_pool *p);
/* *out = the address of `bytes` free bytes (bytes == 0 still gives a
 * distinct block). MHUB_ERR_NO_MEMORY names the request, the free bytes
 * and the largest free block. */
mhub_status mhub_pool_alloc(mhub_pool *p, size_t bytes, uintptr_t *out);
/* Return a block; an address the pool did not hand out (or already got
 * back) is MHUB_ERR_INVALID_ARG and changes nothing. */
mhub_status mhub_pool_free(mhub_pool *p, uintptr_t addr);
/* true when addr lies inside the pool's range */
int mhub_pool_contains(const mhub_pool *p, uintptr_t addr);

typedef struct mhub_pool_stats {
    size_t size;           /* the whole pool */
    size_t current;        /* requested bytes of the live blocks */
    size_t peak;           /* highest `current` since create or reset_peak */
    size_t free_bytes;     /* bytes in free blocks */
    size_t largest_free;   /* the largest free block */
    size_t blocks;         /* live blocks */
} mhub_pool_stats;

void mhub_pool_get_stats(const mhub_pool *p, mhub_pool_stats *out);
void mhub_pool_reset_peak(mhub_pool *p);

#endif
