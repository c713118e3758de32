/* test_shm.c - communicator-owned memory and the shared-memory all-reduce,
 * at 1, 2 and 4 ranks (all on this node, so mhub_comm_alloc always hands
 * out a slot of a shared window here).
 *
 * Exact data (small integers) checks every element bit for bit; random
 * floats check the documented order (each element is the left-to-right sum
 * over ranks 0..n-1, which at 4 ranks differs from MPICH's own order in
 * about a fifth of the elements, so it also shows the shared path ran) and
 * that every rank and every run gets the same bits. Results are compared
 * across ranks by hashing them and reducing the hash with MIN and MAX.
 * As in test_comm, a check records its first failure and the ranks agree
 * on the verdict before going on, so a wrong result on one rank fails the
 * test everywhere instead of hanging the others in the next collective. */
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "testutil_mpi.h"

#define LARGE 4194311 /* f32 elements: 16 MiB + 28 bytes, odd */

static mhub_comm *world;
static int rank, nranks;

static void setup(void)
{
    CK_OK(mhub_comm_create_mpi_world(&world));
    rank = world->rank;
    nranks = world->size;
}

static void teardown(void)
{
    mhub_comm_free(world);
    world = NULL;
}

/* ---- agreeing on outcomes (verdicts: testutil_mpi.h) ---------------------- */

/* Raw MPI, not the code under test, and yielding (blocking MPI spins for a
 * scheduler tick per call at 4 ranks on 2 cores). */
static void mpi_done(MPI_Request *req)
{
    int done = 0;
    while (MPI_Test(req, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && !done)
        sched_yield();
}

/* FNV-1a over the bits of x[0, n). */
static uint64_t hash_floats(const float *x, size_t n)
{
    uint64_t h = 14695981039346656037ull;
    const unsigned char *p = (const unsigned char *)x;
    for (size_t i = 0; i < n * sizeof(float); i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

/* Whether every rank of `mc` holds the same hash. */
static bool same_on_all_ranks(MPI_Comm mc, uint64_t h)
{
    unsigned long long lo = h, hi = h, v = h;
    MPI_Request req[2];
    MPI_Iallreduce(&v, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, mc, &req[0]);
    MPI_Iallreduce(&v, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, mc, &req[1]);
    mpi_done(&req[0]);
    mpi_done(&req[1]);
    return lo == hi;
}

/* ---- data --------------------------------------------------------------- */

/* Rank r's exact input at index j of call `call`: an integer in [-15, 15],
 * so every sum is exact in f32 and the order of the additions is moot. */
static float small_int(int r, size_t j, int call)
{
    return (float)((int)((j * 7 + (size_t)r * 3 + (size_t)call * 11) % 31) - 15);
}

static float small_int_sum(int n, size_t j, int call)
{
    float s = 0.0f;
    for (int r = 0; r < n; r++)
        s += small_int(r, j, call);
    return s;
}

/* splitmix64 of (seed, r, j) -> uniform in [-1, 1) with 24 random bits. */
static float random_float(uint64_t seed, int r, size_t j)
{
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * ((uint64_t)r * 0x100000001ull + j + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) / (float)(1 << 23) - 1.0f;
}

/* The documented result: ranks 0..n-1 added left to right, in f32. */
static float random_rank_order_sum(uint64_t seed, int n, size_t j)
{
    float s = random_float(seed, 0, j);
    for (int r = 1; r < n; r++)
        s += random_float(seed, r, j);
    return s;
}

static bool bits_equal(float a, float b)
{
    return memcmp(&a, &b, sizeof a) == 0;
}

/* A value no reduction here produces, different on every rank, to show
 * that elements outside the reduced range are left alone. */
static float sentinel(int r)
{
    return 1000.25f + (float)r;
}

static void fill_sentinel(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = sentinel(rank);
}

static void expect_sentinel(verdict *o, const float *x, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (!bits_equal(x[i], sentinel(rank))) {
            flunk(o, "%s (rank %d): element %zu outside the range changed to %g", what, rank, i,
                 (double)x[i]);
            return;
        }
}

/* buf[i] = small_int sums (divided by n for AVG), for i in [0, count). */
static void expect_small_int_result(verdict *o, const float *buf, size_t count, int n, int call,
                                    mhub_reduce_op op, const char *what)
{
    for (size_t j = 0; j < count; j++) {
        float want = small_int_sum(n, j, call);
        if (op == MHUB_AVG)
            want /= (float)n;
        if (!bits_equal(buf[j], want)) {
            flunk(o, "%s (rank %d of %d): element %zu of %zu is %.9g, expected %.9g", what, rank,
                 n, j, count, (double)buf[j], (double)want);
            return;
        }
    }
}

static void fill_small_int(float *buf, size_t count, int r, int call)
{
    for (size_t j = 0; j < count; j++)
        buf[j] = small_int(r, j, call);
}

/* ---- allocation --------------------------------------------------------- */

START_TEST(test_alloc_is_zeroed_slot)
{
    verdict o = {0};
    size_t bytes = 4096 * sizeof(float) + 3; /* not a multiple of anything */
    unsigned char *p = NULL;
    if (expect_ok(&o, mhub_comm_alloc(world, bytes, (void **)&p), "alloc")) {
        if (((uintptr_t)p & 63) != 0)
            flunk(&o, "slot %p is not 64-byte aligned", (void *)p);
        for (size_t i = 0; i < bytes; i++)
            if (p[i] != 0) {
                flunk(&o, "byte %zu of the new slot is %d, not 0", i, p[i]);
                break;
            }
        memset(p, 0xAB, bytes); /* every byte is ours to write */
    }
    settle(&o);
    mhub_comm_free_mem(world, p);
}
END_TEST

/* ---- exact sums at many counts ----------------------------------------- */

static void exact_case(float *slot, size_t count, mhub_reduce_op op, bool blocking)
{
    char what[128];
    snprintf(what, sizeof what, "shm allreduce %s count %zu %s", mhub_reduce_op_name(op), count,
             blocking ? "blocking" : "nonblocking");
    verdict o = {0};
    int call = (int)(count % 97);
    fill_small_int(slot, count, rank, call);
    fill_sentinel(slot + count, 64);
    void *buf = count > 0 ? slot : NULL;
    mhub_status s;
    if (blocking) {
        s = mhub_comm_allreduce(world, buf, buf, (int64_t)count, MHUB_F32, op);
    } else {
        mhub_request req = {0};
        bool done = false;
        s = mhub_comm_iallreduce(world, buf, buf, (int64_t)count, MHUB_F32, op, &req);
        /* the shared-memory path is complete when the call returns */
        if (s == MHUB_OK)
            s = mhub_request_test(&req, &done);
        if (s == MHUB_OK && count > 0 && !done)
            flunk(&o, "%s: not done at the first test", what);
        if (s == MHUB_OK)
            s = mhub_request_wait(&req);
    }
    if (expect_ok(&o, s, what)) {
        expect_small_int_result(&o, slot, count, nranks, call, op, what);
        expect_sentinel(&o, slot + count, 64, what);
        if (!same_on_all_ranks(MPI_COMM_WORLD, hash_floats(slot, count)))
            flunk(&o, "%s: the ranks' results differ", what);
    }
    settle(&o);
}

START_TEST(test_exact_counts)
{
    static const size_t counts[] = {0, 1, 37, 1000003, LARGE};
    float *slot = NULL;
    CK_OK(mhub_comm_alloc(world, (LARGE + 64) * sizeof(float), (void **)&slot));
    for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
        exact_case(slot, counts[i], MHUB_SUM, true);
        exact_case(slot, counts[i], MHUB_AVG, true);
        exact_case(slot, counts[i], MHUB_SUM, false);
    }
    mhub_comm_free_mem(world, slot);
}
END_TEST

/* ---- random floats: order and reproducibility --------------------------- */

static uint64_t random_run(float *slot, size_t count, uint64_t seed, verdict *o)
{
    for (size_t j = 0; j < count; j++)
        slot[j] = random_float(seed, rank, j);
    if (!expect_ok(o, mhub_comm_allreduce(world, slot, slot, (int64_t)count, MHUB_F32, MHUB_SUM),
                   "random allreduce"))
        return 0;
    for (size_t j = 0; j < count; j++) {
        float want = random_rank_order_sum(seed, nranks, j);
        if (!bits_equal(slot[j], want)) {
            flunk(o, "random allreduce (rank %d of %d): element %zu is %.9g, the rank-order sum "
                    "is %.9g",
                 rank, nranks, j, (double)slot[j], (double)want);
            break;
        }
    }
    return hash_floats(slot, count);
}

START_TEST(test_random_bitwise_reproducible)
{
    size_t count = 1000003;
    float *slot = NULL;
    CK_OK(mhub_comm_alloc(world, count * sizeof(float), (void **)&slot));
    verdict o = {0};
    uint64_t first = random_run(slot, count, 42, &o);
    uint64_t second = random_run(slot, count, 42, &o);
    if (first != second)
        flunk(&o, "two runs on the same input gave different bits on rank %d", rank);
    if (!same_on_all_ranks(MPI_COMM_WORLD, first))
        flunk(&o, "the ranks' results differ");
    settle(&o);
    mhub_comm_free_mem(world, slot);
}
END_TEST

/* ---- back to back ------------------------------------------------------- */

/* 200 calls with nothing else in between: each rank rewrites its slot for
 * the next call as soon as the previous one returns, which is only safe if
 * no peer still reads it, and the counters must never be reset. Counts
 * and offsets vary, so chunk boundaries move from call to call. */
START_TEST(test_back_to_back)
{
    enum { CALLS = 200, MAX_COUNT = 300, MAX_OFFSET = 5 };
    float *slot = NULL;
    CK_OK(mhub_comm_alloc(world, (MAX_COUNT + MAX_OFFSET) * sizeof(float), (void **)&slot));
    verdict o = {0};
    for (int i = 0; i < CALLS && !o.failed; i++) {
        size_t count = 1 + (size_t)(i * 37) % MAX_COUNT, off = (size_t)i % MAX_OFFSET;
        float *buf = slot + off;
        fill_small_int(buf, count, rank, i);
        mhub_status s;
        if (i % 2) {
            s = mhub_comm_allreduce(world, buf, buf, (int64_t)count, MHUB_F32, MHUB_SUM);
        } else {
            mhub_request req = {0};
            s = mhub_comm_iallreduce(world, buf, buf, (int64_t)count, MHUB_F32, MHUB_SUM, &req);
            if (s == MHUB_OK)
                s = mhub_request_wait(&req);
        }
        char what[64];
        snprintf(what, sizeof what, "call %d (count %zu at %zu)", i, count, off);
        if (expect_ok(&o, s, what))
            expect_small_int_result(&o, buf, count, nranks, i, MHUB_SUM, what);
    }
    settle(&o);
    mhub_comm_free_mem(world, slot);
}
END_TEST

/* ---- part of a slot ----------------------------------------------------- */

/* A range starting 3 elements in (off the 64-byte grid) and ending short of
 * the slot's end: only the range changes. */
START_TEST(test_sub_range)
{
    size_t total = 2048, off = 3, count = 1001;
    float *slot = NULL;
    CK_OK(mhub_comm_alloc(world, total * sizeof(float), (void **)&slot));
    verdict o = {0};
    fill_sentinel(slot, total);
    fill_small_int(slot + off, count, rank, 5);
    if (expect_ok(&o, mhub_comm_allreduce(world, slot + off, slot + off, (int64_t)count, MHUB_F32,
                                          MHUB_AVG),
                  "sub-range allreduce")) {
        expect_small_int_result(&o, slot + off, count, nranks, 5, MHUB_AVG, "sub-range");
        expect_sentinel(&o, slot, off, "before the sub-range");
        expect_sentinel(&o, slot + off + count, total - off - count, "after the sub-range");
    }
    settle(&o);
    mhub_comm_free_mem(world, slot);
}
END_TEST

/* ---- what keeps the MPI path -------------------------------------------- */

/* A private buffer, an out-of-place call into a slot, MAX and bf16 in a
 * slot: all still work, through MPI. */
START_TEST(test_other_calls_use_mpi)
{
    size_t count = 1001;
    float *slot = NULL, *priv = malloc(count * sizeof(float));
    ck_assert_ptr_nonnull(priv);
    CK_OK(mhub_comm_alloc(world, 2 * count * sizeof(float), (void **)&slot));
    verdict o = {0};

    fill_small_int(priv, count, rank, 1);
    if (expect_ok(&o, mhub_comm_allreduce(world, priv, priv, (int64_t)count, MHUB_F32, MHUB_SUM),
                  "private buffer"))
        expect_small_int_result(&o, priv, count, nranks, 1, MHUB_SUM, "private buffer");

    fill_small_int(priv, count, rank, 2);
    if (expect_ok(&o, mhub_comm_allreduce(world, priv, slot, (int64_t)count, MHUB_F32, MHUB_AVG),
                  "out of place into a slot"))
        expect_small_int_result(&o, slot, count, nranks, 2, MHUB_AVG, "out of place");

    /* MAX: every value is in [-15, 15] and rank r adds 3r, so compare with
     * the maximum computed here */
    fill_small_int(slot, count, rank, 3);
    if (expect_ok(&o, mhub_comm_allreduce(world, slot, slot, (int64_t)count, MHUB_F32, MHUB_MAX),
                  "max in a slot"))
        for (size_t j = 0; j < count; j++) {
            float want = small_int(0, j, 3);
            for (int r = 1; r < nranks; r++)
                want = small_int(r, j, 3) > want ? small_int(r, j, 3) : want;
            if (!bits_equal(slot[j], want)) {
                flunk(&o, "max in a slot: element %zu is %g, expected %g", j, (double)slot[j],
                     (double)want);
                break;
            }
        }

    uint16_t *h = (uint16_t *)slot;
    for (size_t j = 0; j < count; j++)
        h[j] = mhub_f32_to_bf16(small_int(rank, j, 4));
    if (expect_ok(&o, mhub_comm_allreduce(world, h, h, (int64_t)count, MHUB_BF16, MHUB_SUM),
                  "bf16 in a slot"))
        for (size_t j = 0; j < count; j++)
            if (mhub_bf16_to_f32(h[j]) != small_int_sum(nranks, j, 4)) {
                flunk(&o, "bf16 in a slot: element %zu is %g", j, (double)mhub_bf16_to_f32(h[j]));
                break;
            }
    settle(&o);
    mhub_comm_free_mem(world, slot);
    free(priv);
}
END_TEST

/* ---- several windows, freeing, and sub-communicators -------------------- */

static void small_sum_in(mhub_comm *c, float *buf, size_t count, int call, verdict *o,
                         const char *what)
{
    fill_small_int(buf, count, c->rank, call);
    if (expect_ok(o, mhub_comm_allreduce(c, buf, buf, (int64_t)count, MHUB_F32, MHUB_SUM), what))
        expect_small_int_result(o, buf, count, c->size, call, MHUB_SUM, what);
}

START_TEST(test_free_and_realloc)
{
    verdict o = {0};
    float *a = NULL, *b = NULL, *d = NULL;
    CK_OK(mhub_comm_alloc(world, 1 << 20, (void **)&a));
    CK_OK(mhub_comm_alloc(world, 100 * sizeof(float), (void **)&b));
    small_sum_in(world, a, 1 << 18, 1, &o, "first window");
    small_sum_in(world, b, 100, 2, &o, "second window");
    mhub_comm_free_mem(world, b);
    CK_OK(mhub_comm_alloc(world, 333 * sizeof(float), (void **)&d));
    small_sum_in(world, d, 333, 3, &o, "window after a free");
    small_sum_in(world, a, 1000, 4, &o, "first window again");
    mhub_comm_free_mem(world, a);
    mhub_comm_free_mem(world, d);
    settle(&o);
}
END_TEST

/* The table of windows is small; when it is full, alloc says UNSUPPORTED
 * (the caller then allocates with the backend), and a free makes room. */
START_TEST(test_window_table_full)
{
    enum { TRIES = 32 };
    void *p[TRIES] = {0};
    int got = 0;
    mhub_status s = MHUB_OK;
    while (got < TRIES && (s = mhub_comm_alloc(world, 256, &p[got])) == MHUB_OK)
        got++;
    ck_assert_int_ge(got, 2);
    ck_assert_int_lt(got, TRIES);
    ck_assert_int_eq(s, MHUB_ERR_UNSUPPORTED);
    ck_assert(strstr(mhub_last_error(), "mhub_comm_free_mem") != NULL);
    mhub_comm_free_mem(world, p[0]);
    CK_OK(mhub_comm_alloc(world, 256, &p[0]));
    for (int i = 0; i < got; i++)
        mhub_comm_free_mem(world, p[i]);
}
END_TEST

/* Each communicator has its own windows: halves of the world reduce only
 * over their own members. */
START_TEST(test_split_communicator)
{
    mhub_comm *half = NULL;
    CK_OK(mhub_comm_split(world, rank % 2, rank, "half", &half));
    float *slot = NULL;
    CK_OK(mhub_comm_alloc(half, 512 * sizeof(float), (void **)&slot));
    verdict o = {0};
    small_sum_in(half, slot, 512, 6, &o, "half-world allreduce");
    settle(&o);
    mhub_comm_free_mem(half, slot);
    mhub_comm_free(half);
}
END_TEST

/* Windows still allocated go with their communicator. */
START_TEST(test_comm_free_releases_windows)
{
    mhub_comm *dup = NULL;
    MPI_Comm w = MPI_COMM_WORLD;
    CK_OK(mhub_comm_create_mpi(&w, "dup", &dup));
    void *p = NULL, *q = NULL;
    CK_OK(mhub_comm_alloc(dup, 4096, &p));
    CK_OK(mhub_comm_alloc(dup, 64, &q));
    mhub_comm_free(dup);
}
END_TEST

/* ---- errors ------------------------------------------------------------- */

static const mhub_comm_ops no_memory_ops = {0};

START_TEST(test_alloc_bad_arguments)
{
    void *p = (void *)&p;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_alloc(NULL, 64, &p));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_alloc(world, 64, NULL));
    ck_assert(strstr(mhub_last_error(), "out is NULL") != NULL);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_alloc(world, 0, &p));
    ck_assert(strstr(mhub_last_error(), "mhub_comm_alloc") != NULL);
    ck_assert(strstr(mhub_last_error(), "world") != NULL);
    ck_assert_ptr_null(p);
    /* more than any window can address: every rank fails together */
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_alloc(world, SIZE_MAX / 2, &p));
    ck_assert_ptr_null(p);

    /* a communicator whose backend offers no memory */
    mhub_comm fake = {.ops = &no_memory_ops, .rank = 0, .size = 1, .name = "nomem"};
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_comm_alloc(&fake, 64, &p));
    ck_assert(strstr(mhub_last_error(), "backend") != NULL);
    mhub_clear_error();
    mhub_comm_free_mem(&fake, &p);
    ck_assert(strstr(mhub_last_error(), "mhub_comm_free_mem") != NULL);
}
END_TEST

START_TEST(test_alloc_sizes_must_match)
{
    if (nranks < 2)
        return;
    void *p = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_alloc(world, 64 + 64 * (size_t)rank, &p));
    ck_assert(strstr(mhub_last_error(), "different sizes") != NULL);
    ck_assert_ptr_null(p);
    /* nothing half-made is left behind: the next alloc works */
    CK_OK(mhub_comm_alloc(world, 64, &p));
    mhub_comm_free_mem(world, p);
}
END_TEST

START_TEST(test_bad_timeout_setting)
{
    void *p = NULL;
    static const char *const bad[] = {"abc", "0", "-1", "5s", "1e300"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        setenv("MHUB_SHM_TIMEOUT", bad[i], 1);
        CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_alloc(world, 64, &p));
        ck_assert(strstr(mhub_last_error(), "MHUB_SHM_TIMEOUT") != NULL);
    }
    unsetenv("MHUB_SHM_TIMEOUT");
    ck_assert_ptr_null(p);
}
END_TEST

/* Freeing something that is not a slot of this communicator reports an
 * error and frees nothing: the window keeps working. */
START_TEST(test_free_foreign_pointer)
{
    float local = 0.0f;
    float *slot = NULL;
    CK_OK(mhub_comm_alloc(world, 256 * sizeof(float), (void **)&slot));
    mhub_clear_error();
    mhub_comm_free_mem(world, &local);
    ck_assert(strstr(mhub_last_error(), "mhub_comm_free_mem") != NULL);
    ck_assert(strstr(mhub_last_error(), "not memory") != NULL);
    mhub_clear_error();
    mhub_comm_free_mem(world, slot + 16); /* inside, but not the start */
    ck_assert(mhub_last_error()[0] != '\0');
    mhub_clear_error();
    mhub_comm_free_mem(world, NULL); /* like free(NULL) */
    mhub_comm_free_mem(NULL, slot);  /* no communicator: nothing freed */
    ck_assert(mhub_last_error()[0] != '\0');

    verdict o = {0};
    small_sum_in(world, slot, 256, 7, &o, "window after foreign frees");
    settle(&o);
    mhub_comm_free_mem(world, slot);
    /* a second free of the same pointer is foreign now */
    mhub_clear_error();
    mhub_comm_free_mem(world, slot);
    ck_assert(strstr(mhub_last_error(), "freed already") != NULL);
}
END_TEST

/* Ranks passing different offsets fail together, and the window stays in
 * step for the next call. */
START_TEST(test_mismatched_ranges)
{
    if (nranks < 2)
        return;
    float *slot = NULL;
    CK_OK(mhub_comm_alloc(world, 256 * sizeof(float), (void **)&slot));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_comm_allreduce(world, slot + rank, slot + rank, 100, MHUB_F32, MHUB_SUM));
    ck_assert(strstr(mhub_last_error(), "different ranges") != NULL);
    verdict o = {0};
    small_sum_in(world, slot, 256, 8, &o, "allreduce after mismatched ranges");
    settle(&o);
    mhub_comm_free_mem(world, slot);
}
END_TEST

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The last rank never calls: the others give up after MHUB_SHM_TIMEOUT
 * with MHUB_ERR_COMM naming it, and the window refuses further calls. */
START_TEST(test_absent_rank_times_out)
{
    if (nranks < 2)
        return;
    float *slot = NULL;
    setenv("MHUB_SHM_TIMEOUT", "0.3", 1);
    mhub_status s = mhub_comm_alloc(world, 64 * sizeof(float), (void **)&slot);
    unsetenv("MHUB_SHM_TIMEOUT");
    CK_OK(s);
    int absent = nranks - 1;
    if (rank != absent) {
        double t0 = now_s();
        CK_FAILS(MHUB_ERR_COMM, mhub_comm_allreduce(world, slot, slot, 64, MHUB_F32, MHUB_SUM));
        double waited = now_s() - t0;
        char who[32];
        snprintf(who, sizeof who, "rank %d did not", absent);
        ck_assert_msg(strstr(mhub_last_error(), who) != NULL, "%s", mhub_last_error());
        ck_assert_msg(waited >= 0.25 && waited < 5.0, "gave up after %.3f s", waited);
        CK_FAILS(MHUB_ERR_STATE, mhub_comm_allreduce(world, slot, slot, 64, MHUB_F32, MHUB_SUM));
    }
    mhub_comm_free_mem(world, slot);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("shm");

    TCase *sums = tcase_create("allreduce");
    tcase_add_unchecked_fixture(sums, setup, teardown);
    tcase_set_timeout(sums, 120);
    tcase_add_test(sums, test_alloc_is_zeroed_slot);
    tcase_add_test(sums, test_exact_counts);
    tcase_add_test(sums, test_random_bitwise_reproducible);
    tcase_add_test(sums, test_back_to_back);
    tcase_add_test(sums, test_sub_range);
    tcase_add_test(sums, test_other_calls_use_mpi);
    suite_add_tcase(s, sums);

    TCase *life = tcase_create("lifetime");
    tcase_add_unchecked_fixture(life, setup, teardown);
    tcase_add_test(life, test_free_and_realloc);
    tcase_add_test(life, test_window_table_full);
    tcase_add_test(life, test_split_communicator);
    tcase_add_test(life, test_comm_free_releases_windows);
    suite_add_tcase(s, life);

    TCase *errs = tcase_create("errors");
    tcase_add_unchecked_fixture(errs, setup, teardown);
    tcase_add_test(errs, test_alloc_bad_arguments);
    tcase_add_test(errs, test_alloc_sizes_must_match);
    tcase_add_test(errs, test_bad_timeout_setting);
    tcase_add_test(errs, test_free_foreign_pointer);
    tcase_add_test(errs, test_mismatched_ranges);
    tcase_add_test(errs, test_absent_rank_times_out);
    suite_add_tcase(s, errs);
    return s;
}

int main(int argc, char **argv)
{
    return mhub_test_mpi_main(argc, argv, make_suite);
}
