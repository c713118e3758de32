/* dtype.c - element types and the bf16/f16 <-> f32 conversions.
 *
 * The conversions work on the IEEE-754 bit patterns with integer arithmetic
 * only, so they do not depend on the floating-point environment (rounding
 * mode, flush-to-zero) and never touch a subnormal float operand. Each one
 * computes every case (normal, subnormal, Inf/NaN) and selects the answer
 * with conditional expressions instead of branches: when a conversion is
 * inlined into a loop, gcc turns the selects into vector blends and
 * vectorizes the loop. Rounding to 16 bits is to nearest, ties to even. */
#include <string.h>

#include "mhub/dtype.h"

#define F32_ABS_MASK 0x7FFFFFFFu
#define F32_INF_BITS 0x7F800000u

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

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

/* bf16 is the top half of an f32, so rounding is one integer add: adding
 * 0x7FFF plus the lowest kept bit carries into the kept half exactly when
 * the dropped half is above one half, or equal to it with an odd kept
 * half. The carry runs into the exponent where it should: the largest
 * finite values round up to Inf. Only NaN needs its own answer, because
 * rounding a NaN whose payload sits in the dropped bits would give Inf. */
uint16_t mhub_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    uint32_t quiet_nan = (u >> 16) | 0x0040u;
    int is_nan = (u & F32_ABS_MASK) > F32_INF_BITS;
    return (uint16_t)(is_nan ? quiet_nan : rounded);
}

float mhub_bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }

/* Round the integer m / 2^s to nearest, ties to even (1 <= s <= 31). The
 * bias half - 1 rounds the remainder up only when it exceeds one half;
 * adding the quotient's low bit tips an exact half up for odd quotients. */
static inline uint32_t shift_right_rne(uint32_t m, uint32_t s)
{
    uint32_t half = 1u << (s - 1);
    return (m + (half - 1u) + ((m >> s) & 1u)) >> s;
}

/* Three candidate answers for |f|, selected at the end:
 *   normal:    rebias the exponent (127 -> 15) in place and round away 13
 *              mantissa bits; a carry out of the mantissa bumps the
 *              exponent, and past 65504 it reaches the Inf pattern, which
 *              caps every larger value;
 *   subnormal: |f| < 2^-14 is stored as round(|f| / 2^-24); with the
 *              implicit bit restored the f32 significand m holds
 *              |f| = m * 2^(e - 150), so the shift is 126 - e (clamped so
 *              the shift stays defined; f32 subnormals round to 0 anyway);
 *   NaN:       keep the high payload bits and force the quiet bit. */
uint16_t mhub_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & F32_ABS_MASK;

    uint32_t rebiased = a - ((127u - 15u) << 23);
    uint32_t normal = (rebiased + 0x0FFFu + ((rebiased >> 13) & 1u)) >> 13;
    normal = normal < 0x7C00u ? normal : 0x7C00u;

    uint32_t e = a >> 23;
    uint32_t e_clamped = e < 112u ? e : 112u;
    uint32_t s = 126u - e_clamped; /* >= 14 */
    s = s < 31u ? s : 31u;
    uint32_t significand = (a & 0x007FFFFFu) | 0x00800000u;
    uint32_t subnormal = shift_right_rne(significand, s);

    uint32_t quiet_nan = 0x7E00u | ((a >> 13) & 0x03FFu);

    uint32_t mag = a < 0x38800000u ? subnormal : normal; /* 2^-14 */
    mag = a > F32_INF_BITS ? quiet_nan : mag;
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
    uint32_t subnormal = f32_bits((float)(int32_t)mant * 0x1p-24f);
    uint32_t special = F32_INF_BITS | (mant << 13);

    uint32_t mag = exp == 0 ? subnormal : normal;
    mag = exp == 0x1Fu ? special : mag;
    return f32_from_bits(sign | mag);
}
