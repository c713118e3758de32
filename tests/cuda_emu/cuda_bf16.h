/* tests/cuda_emu/cuda_bf16.h - the bfloat16 type of the CPU emulator.
 *
 * Only what the kernels use: the type and its two conversions. As on the
 * GPU, __float2bfloat16 rounds to nearest, ties to even, and keeps a NaN
 * a NaN (quiet); __bfloat162float is exact (a bfloat16 is the top half of
 * an f32). */
#ifndef MHUB_CUDA_EMU_BF16_H
#define MHUB_CUDA_EMU_BF16_H

#ifndef MHUB_CUDA_EMU
#error "tests/cuda_emu/ stands in for the CUDA toolkit only in the emulator build (-DMHUB_CUDA_EMU)"
#endif

#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    uint16_t bits;
};

static inline __nv_bfloat16 __float2bfloat16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        b.bits = (uint16_t)((u >> 16) | 0x0040u);  /* NaN: quiet, sign kept */
        return b;
    }
    /* add half an ulp of the result, less one when the kept part is even:
     * a tie then rounds to the even neighbour */
    u += 0x7fffu + ((u >> 16) & 1u);
    b.bits = (uint16_t)(u >> 16);
    return b;
}

static inline float __bfloat162float(__nv_bfloat16 b)
{
    uint32_t u = (uint32_t)b.bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

#endif
