/* test_dtype.c - dtype names, the f32 bit casts and the bf16/f16 <-> f32
 * conversions.
 *
 * The conversions are checked against a reference that shares no code or
 * trick with src/dtype.c: a 16-bit pattern's value is decoded from its
 * bit fields with ldexp in double, and rounding an f32 to 16 bits is a
 * search of the sorted table of all non-negative 16-bit values for the
 * nearest one, by exact comparison in double, ties to the even pattern.
 * 16 -> 32 is checked on all 65,536 patterns; 32 -> 16 on every 16-bit
 * value, every midpoint between neighbours (the ties) and the f32 values
 * either side of it, hand-picked edge cases, and a million random f32 bit
 * patterns. The bit casts are checked against known patterns, powers of
 * two made by ldexpf, a union reinterpretation and a decoding of the
 * fields, NaN payloads and signs included. */
#include <float.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "testutil.h"

/* A 16-bit float format: sign, exp_bits of exponent, mant_bits of
 * mantissa, and the library's conversions for it. */
typedef struct fmt16 {
    const char *name;
    int exp_bits, mant_bits;
    uint16_t (*from_f32)(float);
    float (*to_f32)(uint16_t);
} fmt16;

static const fmt16 BF16 = {"bf16", 8, 7, mhub_f32_to_bf16, mhub_bf16_to_f32};
static const fmt16 F16 = {"f16", 5, 10, mhub_f32_to_f16, mhub_f16_to_f32};

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int exp_max(const fmt16 *f) { return (1 << f->exp_bits) - 1; }
static int exp_bias(const fmt16 *f) { return (1 << (f->exp_bits - 1)) - 1; }
static uint32_t inf_pattern(const fmt16 *f) { return (uint32_t)exp_max(f) << f->mant_bits; }
static uint32_t quiet_bit(const fmt16 *f) { return 1u << (f->mant_bits - 1); }

static bool pattern_is_nan(const fmt16 *f, uint32_t h)
{
    return (h & 0x7FFFu) > inf_pattern(f);
}

/* The value of a pattern from its fields; NaN and Inf by class. */
static double decode16(const fmt16 *f, uint32_t h)
{
    uint32_t mant = h & ((1u << f->mant_bits) - 1u);
    int exp = (int)((h >> f->mant_bits) & (uint32_t)exp_max(f));
    double sign = (h & 0x8000u) ? -1.0 : 1.0;
    if (exp == exp_max(f))
        return mant ? NAN : sign * INFINITY;
    if (exp == 0)
        return sign * ldexp((double)mant, 1 - exp_bias(f) - f->mant_bits);
    return sign * ldexp((double)(mant | (1u << f->mant_bits)), exp - exp_bias(f) - f->mant_bits);
}

/* The non-negative values in pattern order, 0 .. Inf pattern, with the Inf
 * pattern standing for the power of two one step past the largest finite
 * value: rounding behaves as if the exponent went on, and whatever rounds
 * to that step becomes Inf. */
typedef struct ladder {
    const fmt16 *f;
    uint32_t top; /* the Inf pattern, the last rung */
    double *v;
} ladder;

static ladder ladder_make(const fmt16 *f)
{
    ladder l = {f, inf_pattern(f), NULL};
    l.v = malloc(((size_t)l.top + 1) * sizeof *l.v);
    ck_assert_ptr_nonnull(l.v);
    for (uint32_t p = 0; p < l.top; p++)
        l.v[p] = decode16(f, p);
    l.v[l.top] = ldexp(1.0, exp_max(f) - exp_bias(f));
    return l;
}

/* Reference rounding of a non-NaN x to the nearest rung, ties to even. The
 * differences are exact in double (Sterbenz: a rung and x are within a
 * factor 2 of each other, or the lower rung is 0). */
static uint16_t ref_round(const ladder *l, float x)
{
    uint32_t sign = signbit(x) ? 0x8000u : 0u;
    double a = fabs((double)x);
    if (a >= l->v[l->top])
        return (uint16_t)(sign | l->top);
    uint32_t lo = 0, hi = l->top; /* v[lo] <= a < v[hi] */
    while (hi - lo > 1) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (l->v[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double below = a - l->v[lo], above = l->v[hi] - a;
    uint32_t p = below < above ? lo : above < below ? hi : (lo % 2 == 0 ? lo : hi);
    return (uint16_t)(sign | p);
}

/* Accumulates checks of f32 -> 16 and reports the count and the first bad
 * input at the end (one Check assertion per input would also be slow:
 * every passing assertion is written to Check's log). */
typedef struct round_check {
    const ladder *l;
    long checked, failed;
    uint32_t first_input;
    uint16_t first_got, first_want;
} round_check;

static void check_round(round_check *rc, float x)
{
    const fmt16 *f = rc->l->f;
    uint16_t got = f->from_f32(x);
    bool ok;
    uint16_t want;
    if (isnan(x)) {
        /* Any quiet NaN of the same sign. */
        want = (uint16_t)((signbit(x) ? 0x8000u : 0u) | inf_pattern(f) | quiet_bit(f));
        ok = pattern_is_nan(f, got) && (got & quiet_bit(f)) && (got & 0x8000u) == (want & 0x8000u);
    } else {
        want = ref_round(rc->l, x);
        ok = got == want;
    }
    rc->checked++;
    if (!ok && rc->failed++ == 0) {
        rc->first_input = f32_bits(x);
        rc->first_got = got;
        rc->first_want = want;
    }
}

static void check_round_bits(round_check *rc, uint32_t bits)
{
    check_round(rc, f32_from_bits(bits));
}

static void report_round(const round_check *rc)
{
    ck_assert_msg(rc->failed == 0,
                  "%s: %ld of %ld inputs rounded wrongly; first: f32 0x%08x -> 0x%04x, want "
                  "0x%04x",
                  rc->l->f->name, rc->failed, rc->checked, (unsigned)rc->first_input,
                  (unsigned)rc->first_got, (unsigned)rc->first_want);
}

/* ---- 16 -> 32 ---- */

static void check_all_widening(const fmt16 *f)
{
    for (uint32_t h = 0; h <= 0xFFFFu; h++) {
        float got = f->to_f32((uint16_t)h);
        double want = decode16(f, h);
        if (isnan(want)) {
            /* Exact means the payload too: the mantissa moves up unchanged. */
            uint32_t mant = h & ((1u << f->mant_bits) - 1u);
            uint32_t want_bits =
                ((h & 0x8000u) << 16) | 0x7F800000u | (mant << (23 - f->mant_bits));
            if (f32_bits(got) != want_bits)
                ck_abort_msg("%s 0x%04x -> 0x%08x, want NaN 0x%08x", f->name, (unsigned)h,
                             (unsigned)f32_bits(got), (unsigned)want_bits);
        } else if ((double)got != want || !signbit(got) != !signbit(want)) {
            ck_abort_msg("%s 0x%04x -> %a, want %a", f->name, (unsigned)h, (double)got, want);
        }
    }
}

START_TEST(test_bf16_to_f32_all_patterns) { check_all_widening(&BF16); }
END_TEST

START_TEST(test_f16_to_f32_all_patterns) { check_all_widening(&F16); }
END_TEST

/* ---- round trips ---- */

static void check_round_trips(const fmt16 *f)
{
    for (uint32_t h = 0; h <= 0xFFFFu; h++) {
        uint16_t back = f->from_f32(f->to_f32((uint16_t)h));
        /* A signalling NaN comes back quieted, everything else unchanged. */
        uint32_t want = pattern_is_nan(f, h) ? (h | quiet_bit(f)) : h;
        if (back != want)
            ck_abort_msg("%s 0x%04x -> f32 -> 0x%04x, want 0x%04x", f->name, (unsigned)h,
                         (unsigned)back, (unsigned)want);
    }
}

START_TEST(test_bf16_round_trip) { check_round_trips(&BF16); }
END_TEST

START_TEST(test_f16_round_trip) { check_round_trips(&F16); }
END_TEST

/* ---- 32 -> 16 against the reference ---- */

/* Every value, every midpoint between neighbours (both signs), and the f32
 * values one ulp either side of each midpoint. */
static void check_values_and_midpoints(const fmt16 *f)
{
    ladder l = ladder_make(f);
    round_check rc = {.l = &l};
    for (uint32_t p = 0; p < l.top; p++) {
        double mid = 0.5 * (l.v[p] + l.v[p + 1]);
        float midf = (float)mid;
        if ((double)midf != mid)
            ck_abort_msg("%s midpoint above 0x%04x is not an f32", f->name, (unsigned)p);
        for (int s = 0; s < 2; s++) {
            float sign = s ? -1.0f : 1.0f;
            check_round(&rc, sign * (float)l.v[p]);
            check_round(&rc, sign * midf);
            check_round(&rc, sign * nextafterf(midf, 0.0f));
            check_round(&rc, sign * nextafterf(midf, INFINITY));
        }
    }
    report_round(&rc);
    free(l.v);
}

START_TEST(test_bf16_values_and_ties) { check_values_and_midpoints(&BF16); }
END_TEST

START_TEST(test_f16_values_and_ties) { check_values_and_midpoints(&F16); }
END_TEST

#define RANDOM_INPUTS 1000000

/* Uniformly random f32 bit patterns (all classes, mostly far outside the
 * f16 range), then values just around random 16-bit values: the low f32
 * bits that the conversion rounds away are random. */
static void check_random(const fmt16 *f)
{
    ladder l = ladder_make(f);
    round_check rc = {.l = &l};
    uint32_t r[4];
    for (uint64_t i = 0; i < RANDOM_INPUTS / 4; i++) {
        mhub_rng_block(2024, 7, i, r);
        for (int j = 0; j < 4; j++)
            check_round_bits(&rc, r[j]);
    }
    uint32_t dropped = (1u << (23 - f->mant_bits)) - 1u;
    for (uint64_t i = 0; i < RANDOM_INPUTS / 8; i++) {
        mhub_rng_block(2024, 8, i, r);
        uint32_t p = r[0] % l.top;
        uint32_t sign = r[2] & 0x80000000u;
        check_round_bits(&rc, sign | (f32_bits((float)l.v[p]) ^ (r[1] & dropped)));
    }
    report_round(&rc);
    free(l.v);
}

START_TEST(test_bf16_random) { check_random(&BF16); }
END_TEST

START_TEST(test_f16_random) { check_random(&F16); }
END_TEST

/* Classes and boundaries, through the reference and also as fixed
 * answers, so that a mistake shared by the reference would still show. */
static const uint32_t special_inputs[] = {
    0x00000000u, 0x80000000u, /* +-0 */
    0x7F800000u, 0xFF800000u, /* +-Inf */
    0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFF800001u, 0x7FA00000u, 0x7FFFFFFFu, /* NaNs */
    0x00000001u, 0x007FFFFFu, 0x00400000u, 0x80000001u, /* f32 subnormals */
    0x00800000u, 0x7F7FFFFFu, 0xFF7FFFFFu, /* FLT_MIN, +-FLT_MAX */
    0x7F7F7FFFu, 0x7F7F8000u, 0x7F7F8001u, /* around the bf16 overflow tie */
    0x477FEFFFu, 0x477FF000u, 0x477FF001u, 0x477FE000u, 0x47800000u, /* f16 overflow */
    0x33000000u, 0x33000001u, 0x32FFFFFFu, 0x33C00000u, 0x33800000u, /* f16 subnormal ties */
    0x387FC000u, 0x387FE000u, 0x38800000u, /* up into the smallest f16 normal */
    0x3F800000u, 0x3F808000u, 0x3F818000u, 0x3F801000u, 0x3F803000u, /* ties near 1 */
};

static void check_specials(const fmt16 *f)
{
    ladder l = ladder_make(f);
    round_check rc = {.l = &l};
    for (size_t i = 0; i < sizeof special_inputs / sizeof special_inputs[0]; i++)
        check_round_bits(&rc, special_inputs[i]);
    report_round(&rc);
    free(l.v);
}

START_TEST(test_bf16_specials)
{
    check_specials(&BF16);
    ck_assert_uint_eq(mhub_f32_to_bf16(1.0f), 0x3F80);
    ck_assert_uint_eq(mhub_f32_to_bf16(-2.0f), 0xC000);
    ck_assert_uint_eq(mhub_f32_to_bf16(INFINITY), 0x7F80);
    ck_assert_uint_eq(mhub_f32_to_bf16(-INFINITY), 0xFF80);
    ck_assert_uint_eq(mhub_f32_to_bf16(f32_from_bits(0x3F808000u)), 0x3F80); /* tie, even down */
    ck_assert_uint_eq(mhub_f32_to_bf16(f32_from_bits(0x3F818000u)), 0x3F82); /* tie, even up */
    ck_assert_uint_eq(mhub_f32_to_bf16(f32_from_bits(0x3F808001u)), 0x3F81);
    ck_assert_uint_eq(mhub_f32_to_bf16(f32_from_bits(0x7F7F8000u)), 0x7F80); /* overflow */
    ck_assert_uint_eq(mhub_f32_to_bf16(f32_from_bits(0x7F7F7FFFu)), 0x7F7F);
    ck_assert_uint_eq(mhub_f32_to_bf16(f32_from_bits(0x00000001u)), 0x0000);
    ck_assert_uint_eq(mhub_f32_to_bf16(f32_from_bits(0x00010000u)), 0x0001); /* subnormal */
    uint16_t nan = mhub_f32_to_bf16(f32_from_bits(0x7F800001u)); /* payload in dropped bits */
    ck_assert_uint_eq(nan & 0x7F80u, 0x7F80u);
    ck_assert_uint_ne(nan & 0x0040u, 0);
    ck_assert_uint_eq(mhub_f32_to_bf16(f32_from_bits(0xFFC00000u)), 0xFFC0);
}
END_TEST

START_TEST(test_f16_specials)
{
    check_specials(&F16);
    ck_assert_uint_eq(mhub_f32_to_f16(1.0f), 0x3C00);
    ck_assert_uint_eq(mhub_f32_to_f16(-2.0f), 0xC000);
    ck_assert_uint_eq(mhub_f32_to_f16(65504.0f), 0x7BFF);
    ck_assert_uint_eq(mhub_f32_to_f16(65520.0f), 0x7C00);               /* tie to Inf */
    ck_assert_uint_eq(mhub_f32_to_f16(nextafterf(65520.0f, 0.0f)), 0x7BFF); /* 65519.996 */
    ck_assert_uint_eq(mhub_f32_to_f16(-65520.0f), 0xFC00);
    ck_assert_uint_eq(mhub_f32_to_f16(1e10f), 0x7C00);
    ck_assert_uint_eq(mhub_f32_to_f16(FLT_MAX), 0x7C00);
    ck_assert_uint_eq(mhub_f32_to_f16(INFINITY), 0x7C00);
    ck_assert_uint_eq(mhub_f32_to_f16(0x1p-24f), 0x0001);      /* smallest subnormal */
    ck_assert_uint_eq(mhub_f32_to_f16(0x1p-25f), 0x0000);      /* tie, even down */
    ck_assert_uint_eq(mhub_f32_to_f16(nextafterf(0x1p-25f, 1.0f)), 0x0001);
    ck_assert_uint_eq(mhub_f32_to_f16(0x3p-25f), 0x0002);      /* 1.5 units: tie, even up */
    ck_assert_uint_eq(mhub_f32_to_f16(0x1p-14f), 0x0400);      /* smallest normal */
    ck_assert_uint_eq(mhub_f32_to_f16(0x1.ff8p-15f), 0x03FF);  /* largest subnormal */
    ck_assert_uint_eq(mhub_f32_to_f16(0x1.ffcp-15f), 0x0400);  /* tie, up to the normal */
    ck_assert_uint_eq(mhub_f32_to_f16(0x1.ff4p-15f), 0x03FE);  /* tie, even down */
    ck_assert_uint_eq(mhub_f32_to_f16(-0x1p-24f), 0x8001);
    ck_assert_uint_eq(mhub_f32_to_f16(-0.0f), 0x8000);
    ck_assert_uint_eq(mhub_f32_to_f16(FLT_MIN), 0x0000);
    ck_assert_uint_eq(mhub_f32_to_f16(1.0f + 0x1p-11f), 0x3C00); /* tie, even down */
    ck_assert_uint_eq(mhub_f32_to_f16(1.0f + 0x3p-11f), 0x3C02); /* tie, even up */
    uint16_t nan = mhub_f32_to_f16(f32_from_bits(0x7F800001u));
    ck_assert_uint_eq(nan & 0x7C00u, 0x7C00u);
    ck_assert_uint_ne(nan & 0x0200u, 0);
    nan = mhub_f32_to_f16(-NAN);
    ck_assert_uint_eq(nan & 0xFE00u, 0xFE00u);
    ck_assert_float_eq(mhub_f16_to_f32(0x0001), 0x1p-24f);
    ck_assert_float_eq(mhub_f16_to_f32(0x03FF), 0x3FFp-24f);
    ck_assert_float_eq(mhub_f16_to_f32(0x7BFF), 65504.0f);
    ck_assert_float_eq(mhub_f16_to_f32(0xC000), -2.0f);
}
END_TEST

/* ---- the f32 bit casts ---- */

/* A union reads the other member's bytes (C11 6.5.2.3): a second,
 * independent way to reinterpret, next to the library's memcpy. */
typedef union f32_pun {
    float f;
    uint32_t u;
} f32_pun;

static uint32_t pun_bits(float f) { return (f32_pun){.f = f}.u; }
static float pun_float(uint32_t u) { return (f32_pun){.u = u}.f; }

/* The value of a finite f32 pattern from its fields, in double (exact). */
static double decode32(uint32_t u)
{
    uint32_t mant = u & 0x7FFFFFu;
    int exp = (int)((u >> 23) & 0xFFu);
    double sign = (u >> 31) ? -1.0 : 1.0;
    if (exp == 0)
        return sign * ldexp((double)mant, -149);
    return sign * ldexp((double)(mant | 0x800000u), exp - 150);
}

/* Patterns of every class, both signs: zeros, subnormals at both
 * ends, the normal boundaries, Inf, quiet and signalling NaNs with
 * payloads. */
static const struct {
    uint32_t bits;
    float value; /* unused for NaNs */
} known_bits[] = {
    {0x00000000u, 0.0f},          {0x80000000u, -0.0f},
    {0x3F800000u, 1.0f},          {0xC0000000u, -2.0f},
    {0x3DCCCCCDu, 0.1f},          {0x3EAAAAABu, 1.0f / 3.0f},
    {0x00000001u, 0x1p-149f},     {0x80000001u, -0x1p-149f},   /* smallest subnormal */
    {0x007FFFFFu, 0x1.fffffcp-127f},                           /* largest subnormal */
    {0x00400000u, 0x1p-127f},     {0x00800000u, FLT_MIN},
    {0x7F7FFFFFu, FLT_MAX},       {0xFF7FFFFFu, -FLT_MAX},
    {0x7F800000u, INFINITY},      {0xFF800000u, -INFINITY},
    {0x34000000u, FLT_EPSILON},   {0x4B800000u, 16777216.0f},
};

static const uint32_t nan_bits[] = {
    0x7FC00000u, 0xFFC00000u,                 /* quiet, both signs */
    0x7FC00001u, 0x7FFFFFFFu, 0xFFFFFFFFu,    /* quiet with payloads */
    0x7F800001u, 0x7FA5A5A5u, 0xFF800001u,    /* signalling, payloads */
};

START_TEST(test_f32_bits_known_patterns)
{
    for (size_t i = 0; i < sizeof known_bits / sizeof known_bits[0]; i++) {
        uint32_t u = known_bits[i].bits;
        float f = known_bits[i].value;
        ck_assert_msg(mhub_f32_to_bits(f) == u, "to_bits(%a) = 0x%08X, want 0x%08X", (double)f,
                      (unsigned)mhub_f32_to_bits(f), (unsigned)u);
        float back = mhub_f32_from_bits(u);
        ck_assert_msg(back == f && signbit(back) == signbit(f), "from_bits(0x%08X) = %a, want %a",
                      (unsigned)u, (double)back, (double)f);
        if (isfinite(f))
            ck_assert(back == decode32(u));
    }
    /* -0 and +0 compare equal: only the bits tell them apart */
    ck_assert(mhub_f32_to_bits(-0.0f) != mhub_f32_to_bits(0.0f));
    ck_assert(fpclassify(mhub_f32_from_bits(0x00000001u)) == FP_SUBNORMAL);
    ck_assert(fpclassify(mhub_f32_from_bits(0x007FFFFFu)) == FP_SUBNORMAL);
    ck_assert(fpclassify(mhub_f32_from_bits(0x00800000u)) == FP_NORMAL);
    /* NaNs keep sign and payload both ways */
    for (size_t i = 0; i < sizeof nan_bits / sizeof nan_bits[0]; i++) {
        uint32_t u = nan_bits[i];
        float f = mhub_f32_from_bits(u);
        ck_assert_msg(isnan(f), "from_bits(0x%08X) is not NaN", (unsigned)u);
        ck_assert_msg(mhub_f32_to_bits(f) == u, "NaN 0x%08X came back as 0x%08X", (unsigned)u,
                      (unsigned)mhub_f32_to_bits(f));
        ck_assert_msg(mhub_f32_to_bits(pun_float(u)) == u, "NaN 0x%08X", (unsigned)u);
        ck_assert_msg(pun_bits(f) == u, "NaN 0x%08X", (unsigned)u);
    }
}
END_TEST

/* Every power of two, normal and subnormal, from arithmetic: its pattern
 * is the biased exponent alone, or a single mantissa bit below 2^-126. */
START_TEST(test_f32_bits_powers_of_two)
{
    for (int e = -149; e <= 127; e++) {
        float f = ldexpf(1.0f, e);
        uint32_t want = e >= -126 ? (uint32_t)(e + 127) << 23 : 1u << (e + 149);
        ck_assert_msg(mhub_f32_to_bits(f) == want, "2^%d: 0x%08X, want 0x%08X", e,
                      (unsigned)mhub_f32_to_bits(f), (unsigned)want);
        ck_assert_msg(mhub_f32_to_bits(-f) == (want | 0x80000000u), "-2^%d", e);
        ck_assert(mhub_f32_from_bits(want) == f);
    }
}
END_TEST

/* A stride through all 2^32 patterns (about 4.3 million of them, every
 * class): both casts agree with the union, round trip bit for bit, and
 * finite values equal the value decoded from the fields. */
START_TEST(test_f32_bits_sweep)
{
    const uint32_t stride = 997; /* prime: the low bits vary too */
    int64_t checked = 0;
    for (uint64_t w = 0; w <= UINT32_MAX; w += stride) {
        uint32_t u = (uint32_t)w;
        float f = mhub_f32_from_bits(u);
        uint32_t back = mhub_f32_to_bits(f);
        if (back != u || pun_bits(f) != u || mhub_f32_to_bits(pun_float(u)) != u)
            ck_abort_msg("0x%08X: round trip 0x%08X, union 0x%08X", (unsigned)u, (unsigned)back,
                         (unsigned)pun_bits(f));
        bool nan_pattern = (u & 0x7FFFFFFFu) > 0x7F800000u;
        if (nan_pattern != (bool)isnan(f))
            ck_abort_msg("0x%08X: NaN class wrong", (unsigned)u);
        if (isfinite(f) && (double)f != decode32(u))
            ck_abort_msg("0x%08X: %a, fields say %a", (unsigned)u, (double)f, decode32(u));
        checked++;
    }
    ck_assert_int_eq(checked, (int64_t)(UINT32_MAX / stride) + 1);
}
END_TEST

/* ---- names ---- */

START_TEST(test_sizes_and_names)
{
    ck_assert_uint_eq(mhub_dtype_size(MHUB_F32), 4);
    ck_assert_uint_eq(mhub_dtype_size(MHUB_BF16), 2);
    ck_assert_uint_eq(mhub_dtype_size(MHUB_F16), 2);
    ck_assert_uint_eq(mhub_dtype_size((mhub_dtype)3), 0);
    ck_assert_uint_eq(mhub_dtype_size((mhub_dtype)-1), 0);
    ck_assert_str_eq(mhub_dtype_name(MHUB_F32), "f32");
    ck_assert_str_eq(mhub_dtype_name(MHUB_BF16), "bf16");
    ck_assert_str_eq(mhub_dtype_name(MHUB_F16), "f16");
    ck_assert_str_eq(mhub_dtype_name((mhub_dtype)3), "invalid");
    ck_assert_str_eq(mhub_dtype_name((mhub_dtype)-1), "invalid");
    ck_assert_int_eq(mhub_dtype_valid(MHUB_F32), 1);
    ck_assert_int_eq(mhub_dtype_valid(MHUB_BF16), 1);
    ck_assert_int_eq(mhub_dtype_valid(MHUB_F16), 1);
    ck_assert_int_eq(mhub_dtype_valid((mhub_dtype)MHUB_DTYPE_COUNT), 0);
    ck_assert_int_eq(mhub_dtype_valid((mhub_dtype)-1), 0);
    ck_assert_int_eq(mhub_dtype_valid((mhub_dtype)1000), 0);
}
END_TEST

START_TEST(test_parse)
{
    static const struct {
        const char *name;
        mhub_dtype want;
    } good[] = {
        {"f32", MHUB_F32},   {"float32", MHUB_F32},   {"fp32", MHUB_F32},
        {"bf16", MHUB_BF16}, {"bfloat16", MHUB_BF16}, {"f16", MHUB_F16},
        {"fp16", MHUB_F16},  {"float16", MHUB_F16},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        mhub_dtype dt = (mhub_dtype)99;
        ck_assert_int_eq(mhub_dtype_parse(good[i].name, &dt), 0);
        ck_assert_int_eq(dt, good[i].want);
    }
    /* Every name parses back to its dtype. */
    for (int d = 0; d < MHUB_DTYPE_COUNT; d++) {
        mhub_dtype dt = (mhub_dtype)99;
        ck_assert_int_eq(mhub_dtype_parse(mhub_dtype_name((mhub_dtype)d), &dt), 0);
        ck_assert_int_eq(dt, d);
    }
    static const char *bad[] = {"", "f64", "bf", "bf16 ", " f16", "f16x", "float", "invalid",
                                "int8", "fp8", "bfloat"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mhub_dtype dt = MHUB_BF16;
        ck_assert_msg(mhub_dtype_parse(bad[i], &dt) == -1, "'%s' parsed", bad[i]);
        ck_assert_int_eq(dt, MHUB_BF16); /* untouched on failure */
    }
    mhub_dtype dt;
    ck_assert_int_eq(mhub_dtype_parse(NULL, &dt), -1);
    ck_assert_int_eq(mhub_dtype_parse("f32", NULL), -1);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("dtype");
    TCase *names = tcase_create("names");
    tcase_add_test(names, test_sizes_and_names);
    tcase_add_test(names, test_parse);
    suite_add_tcase(s, names);

    TCase *conv = tcase_create("conversions");
    tcase_set_timeout(conv, 60);
    tcase_add_test(conv, test_bf16_to_f32_all_patterns);
    tcase_add_test(conv, test_f16_to_f32_all_patterns);
    tcase_add_test(conv, test_bf16_round_trip);
    tcase_add_test(conv, test_f16_round_trip);
    tcase_add_test(conv, test_bf16_values_and_ties);
    tcase_add_test(conv, test_f16_values_and_ties);
    tcase_add_test(conv, test_bf16_specials);
    tcase_add_test(conv, test_f16_specials);
    tcase_add_test(conv, test_bf16_random);
    tcase_add_test(conv, test_f16_random);
    suite_add_tcase(s, conv);

    TCase *bits = tcase_create("bit casts");
    tcase_set_timeout(bits, 60);
    tcase_add_test(bits, test_f32_bits_known_patterns);
    tcase_add_test(bits, test_f32_bits_powers_of_two);
    tcase_add_test(bits, test_f32_bits_sweep);
    suite_add_tcase(s, bits);
    return s;
}

int main(void) { return mhub_test_main(make_suite()); }
