/* dtype.h - element types and the bf16/f16 <-> f32 conversions.
 *
 * Storage may be f32, bf16 or f16; compute is always f32. Conversions to
 * the 16-bit types round to nearest, ties to even; NaN stays NaN (quiet)
 * and +-Inf stays +-Inf. f16 conversion handles subnormals exactly. */
#ifndef MHUB_DTYPE_H
#define MHUB_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mhub_dtype {
    MHUB_F32 = 0,
    MHUB_BF16 = 1,
    MHUB_F16 = 2
} mhub_dtype;

#define MHUB_DTYPE_COUNT 3

/* Bytes per element (4 or 2); 0 for an invalid dtype. */
size_t mhub_dtype_size(mhub_dtype dt);
/* "f32", "bf16", "f16"; "invalid" otherwise. */
const char *mhub_dtype_name(mhub_dtype dt);
/* Parse "f32"/"float32"/"fp32", "bf16"/"bfloat16", "f16"/"fp16"/"float16".
 * Returns 0 on success, -1 on an unknown name. */
int mhub_dtype_parse(const char *name, mhub_dtype *out);
/* 1 if dt is one of the three valid dtypes. */
int mhub_dtype_valid(mhub_dtype dt);

/* Bit casts between a float and its IEEE-754 pattern. memcpy is the
 * well-defined way in C11; compilers turn it into a register move (a lane
 * reinterpretation inside vectorized loops). */
static inline uint32_t mhub_f32_to_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float mhub_f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t mhub_f32_to_bf16(float f);
float mhub_bf16_to_f32(uint16_t h);
uint16_t mhub_f32_to_f16(float f);
float mhub_f16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif
#endif
