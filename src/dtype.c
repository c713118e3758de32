/* dtype.c - element types and the bf16/f16 <-> f32 conversions.
 *
 * The conversions work on the IEEE-754 bit patterns, mostly with integer
 * arithmetic. Each one computes every case (normal, subnormal, Inf/NaN)
 * and selects the answer with masks instead of branches, so that a loop
 * calling an inlined copy of them vectorizes (with SSE2 alone). Rounding
 * to 16 bits is to nearest, ties to even; NaN stays a quiet NaN with its
 * sign; the 16 -> 32 conversions are exact. */
#include <string.h>

#include "mhub/backend.h"
#include "mhub/dtype.h"

#define F32_ABS_MASK 0x7FFFFFFFu
#define F32_INF_BITS 0x7F800000u

size_t mhub_dtype_size(mhub_dtype dt)
{
    switch (dt) {
    case MHUB_F32: return 4;
    case MHUB_BF16: return 2;
    case MHUB_F16: return 2;
    }
    return 0;
}

const char *mhub_dtype_name(mhub_dtype dt)
{
    switch (dt) {
    case MHUB_F32: return "f32";
    case MHUB_BF16: return "bf16";
    case MHUB_F16: return "f16";
    }
    return "invalid";
}

int mhub_dtype_parse(const char *name, mhub_dtype *out)
{
    static const struct {
        const char *name;
        mhub_dtype dtype;
    } names[] = {
        {"f32", MHUB_F32},   {"float32", MHUB_F32},   {"fp32", MHUB_F32},
        {"bf16", MHUB_BF16}, {"bfloat16", MHUB_BF16}, {"f16", MHUB_F16},
        {"fp16", MHUB_F16},  {"float16", MHUB_F16},
    };
    if (!name || !out)
        return -1;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(name, names[i].name) == 0) {
            *out = names[i].dtype;
            return 0;
        }
    }
    return -1;
}

int mhub_dtype_valid(mhub_dtype dt)
{
    /* Through int: the enum's underlying type may be unsigned, and callers
     * may hand in any integer they parsed. */
    int v = (int)dt;
    return v >= 0 && v < MHUB_DTYPE_COUNT;
}

/* Branch-free select: c ? x : y. Written with masks because gcc turns a
 * conditional expression whose arm holds a float operation back into a
 * branch (it will not evaluate a float operation speculatively), and a
 * loop with a branch does not vectorize. */
static inline uint32_t select_u32(int c, uint32_t x, uint32_t y)
{
    uint32_t mask = 0u - (uint32_t)(c != 0);
    return (x & mask) | (y & ~mask);
}

/* bf16 is the top half of an f32, so rounding is one integer add: adding
 * 0x7FFF plus the lowest kept bit carries into the kept half exactly when
 * the dropped half is above one half, or equal to it with an odd kept
 * half. The carry runs into the exponent where it should: the largest
 * finite values round up to Inf. Only NaN needs its own answer, because
 * rounding a NaN whose payload sits in the dropped bits would give Inf. */
uint16_t mhub_f32_to_bf16(float f)
{
    uint32_t u = mhub_f32_to_bits(f);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (u >> 16) | 0x0040u;
    return (uint16_t)select_u32((u & F32_ABS_MASK) > F32_INF_BITS, quiet_nan, rounded);
}

float mhub_bf16_to_f32(uint16_t h) { return mhub_f32_from_bits((uint32_t)h << 16); }

/* Three candidate answers for |f|, selected at the end:
 *   normal:    rebias the exponent (127 -> 15) in place and round away 13
 *              mantissa bits as for bf16; a carry out of the mantissa bumps
 *              the exponent, and from 65520 up it reaches the Inf pattern,
 *              which then caps every larger value;
 *   subnormal: |f| < 2^-14 is stored as round(|f| / 2^-24). Adding 0.5
 *              makes the float unit do it: every float in [0.5, 1) is a
 *              multiple of 2^-24, so the sum is 0.5 + that rounded
 *              multiple, ties to even, and subtracting the bits of 0.5
 *              leaves the multiple (0x400, the smallest normal, when it
 *              rounds up). Integer code would need a per-element shift,
 *              which SSE2 lacks. This relies on the default
 *              round-to-nearest mode, which mhub never changes; flushing
 *              subnormals to zero does not matter (they round to 0);
 *   NaN:       keep the high payload bits and force the quiet bit. */
uint16_t mhub_f32_to_f16(float f)
{
    uint32_t u = mhub_f32_to_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & F32_ABS_MASK;

    uint32_t rebiased = a - ((127u - 15u) << 23);
    uint32_t normal = (rebiased + 0x0FFFu + ((rebiased >> 13) & 1u)) >> 13;
    normal = select_u32(normal < 0x7C00u, normal, 0x7C00u);

    uint32_t subnormal = mhub_f32_to_bits(mhub_f32_from_bits(a) + 0.5f) - mhub_f32_to_bits(0.5f);
    uint32_t quiet_nan = 0x7E00u | ((a >> 13) & 0x03FFu);

    uint32_t mag = select_u32(a < 0x38800000u /* 2^-14 */, subnormal, normal);
    mag = select_u32(a > F32_INF_BITS, quiet_nan, mag);
    return (uint16_t)(sign | mag);
}

/* Normal f16 values only need the exponent rebiased (15 -> 127) and the
 * mantissa moved up; subnormals are the integer mantissa times 2^-24,
 * which converts exactly through an int -> float conversion; exponent 31
 * (Inf/NaN) keeps its payload under the all-ones f32 exponent. */
float mhub_f16_to_f32(uint16_t h)
{
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t exp = ((uint32_t)h >> 10) & 0x1Fu;
    uint32_t mant = (uint32_t)h & 0x03FFu;

    uint32_t normal = ((exp + (127u - 15u)) << 23) | (mant << 13);
    uint32_t subnormal = mhub_f32_to_bits((float)(int32_t)mant * 0x1p-24f);
    uint32_t special = F32_INF_BITS | (mant << 13);

    uint32_t mag = select_u32(exp == 0, subnormal, normal);
    mag = select_u32(exp == 0x1Fu, special, mag);
    return mhub_f32_from_bits(sign | mag);
}

const char *mhub_matmul_precision_name(mhub_matmul_precision p)
{
    switch (p) {
    case MHUB_MATMUL_F32: return "f32";
    case MHUB_MATMUL_TF32: return "tf32";
    case MHUB_MATMUL_BF16: return "bf16";
    }
    return "unknown";
}
