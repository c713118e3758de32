/* cuda_pool.c - first-fit bookkeeping of the device memory pool. */
#include <stdbool.h>
#include <stdlib.h>

#include "backends/cuda/cuda_pool.h"

/* Blocks tile the pool in address order; a free block's `requested` is 0. */
typedef struct pool_block {
    uintptr_t addr;
    size_t size;        /* bytes the block spans (a multiple of align) */
    size_t requested;   /* bytes asked for; meaningful when used */
    bool used;
    struct pool_block *prev, *next;
} pool_block;

struct mhub_pool {
    uintptr_t base;
    size_t size, align;
    pool_block *head;
    size_t current, peak, blocks;
};

static bool is_power_of_two(size_t v) { return v && !(v & (v - 1)); }

mhub_status mhub_pool_create(uintptr_t base, size_t size, size_t align, mhub_pool **out)
{
    if (!out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "out is NULL");
    *out = NULL;
    if (!is_power_of_two(align))
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "alignment %zu is not a power of two", align);
    if (base % align)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "base address is not aligned to %zu", align);
    size -= size % align;
    if (size == 0)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "a pool needs at least %zu bytes", align);
    mhub_pool *p = calloc(1, sizeof *p);
    pool_block *b = calloc(1, sizeof *b);
    if (!p || !b) {
        free(p);
        free(b);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no host memory for the pool's bookkeeping");
    }
    b->addr = base;
    b->size = size;
    *p = (mhub_pool){.base = base, .size = size, .align = align, .head = b};
    *out = p;
    return MHUB_OK;
}

void mhub_pool_destroy(mhub_pool *p)
{
    if (!p)
        return;
    for (pool_block *b = p->head, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    free(p);
}

/* Split `b` so that it spans `size` bytes and a new free block the rest. */
static mhub_status split(pool_block *b, size_t size)
{
    pool_block *rest = calloc(1, sizeof *rest);
    if (!rest)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY, "no host memory for the pool's bookkeeping");
    rest->addr = b->addr + size;
    rest->size = b->size - size;
    rest->prev = b;
    rest->next = b->next;
    if (b->next)
        b->next->prev = rest;
    b->next = rest;
    b->size = size;
    return MHUB_OK;
}

mhub_status mhub_pool_alloc(mhub_pool *p, size_t bytes, uintptr_t *out)
{
    if (!p || !out)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "pool or out is NULL");
    *out = 0;
    size_t want = bytes ? bytes : 1;
    if (want > p->size)
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY,
                          "cannot allocate %zu bytes: the whole device pool holds %zu", bytes,
                          p->size);
    want = (want + p->align - 1) & ~(p->align - 1);
    pool_block *b = p->head;
    while (b && (b->used || b->size < want))
        b = b->next;
    if (!b) {
        mhub_pool_stats st;
        mhub_pool_get_stats(p, &st);
        return MHUB_ERROR(MHUB_ERR_NO_MEMORY,
                          "cannot allocate %zu bytes from the device pool: %zu of %zu bytes "
                          "free, the largest free block %zu bytes (%zu blocks in use)",
                          bytes, st.free_bytes, st.size, st.largest_free, st.blocks);
    }
    if (b->size > want)
        MHUB_TRY(split(b, want));
    b->used = true;
    b->requested = bytes;
    p->current += bytes;
    if (p->current > p->peak)
        p->peak = p->current;
    p->blocks++;
    *out = b->addr;
    return MHUB_OK;
}

/* Fold b->next into b (both free). */
static void merge_next(pool_block *b)
{
    pool_block *n = b->next;
    b->size += n->size;
    b->next = n->next;
    if (n->next)
        n->next->prev = b;
    free(n);
}

mhub_status mhub_pool_free(mhub_pool *p, uintptr_t addr)
{
    if (!p)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG, "pool is NULL");
    pool_block *b = p->head;
    while (b && b->addr < addr)
        b = b->next;
    if (!b || b->addr != addr || !b->used)
        return MHUB_ERROR(MHUB_ERR_INVALID_ARG,
                          "address %#zx is not a live block of the device pool "
                          "(freed twice, or never allocated here)",
                          (size_t)addr);
    b->used = false;
    p->current -= b->requested;
    b->requested = 0;
    p->blocks--;
    if (b->next && !b->next->used)
        merge_next(b);
    if (b->prev && !b->prev->used)
        merge_next(b->prev);
    return MHUB_OK;
}

int mhub_pool_contains(const mhub_pool *p, uintptr_t addr)
{
    return p && addr >= p->base && addr - p->base < p->size;
}

void mhub_pool_get_stats(const mhub_pool *p, mhub_pool_stats *out)
{
    if (!out)
        return;
    *out = (mhub_pool_stats){0};
    if (!p)
        return;
    out->size = p->size;
    out->current = p->current;
    out->peak = p->peak;
    out->blocks = p->blocks;
    for (const pool_block *b = p->head; b; b = b->next) {
        if (b->used)
            continue;
        out->free_bytes += b->size;
        if (b->size > out->largest_free)
            out->largest_free = b->size;
    }
}

void mhub_pool_reset_peak(mhub_pool *p)
{
    if (p)
        p->peak = p->current;
}
