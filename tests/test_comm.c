/* test_comm.c - the communication interface over MPI, at 1, 2 and 4 ranks.
 *
 * Every collective runs for every dtype and reduction, at counts 0, 1, an
 * odd 1001 and a large count (>= 16 MiB of data, past MPICH's eager and
 * pipelining thresholds), blocking and nonblocking, in place and out of
 * place. Inputs are small integers that depend on rank and index, so every
 * partial sum is exact even in bf16 and the results can be compared bit for
 * bit, whatever order MPI adds in. Inputs and expected results repeat with
 * a prime period, so they come from small precomputed tables and checking
 * 16 MiB costs a memory pass. A case records its first failure instead of
 * aborting and the ranks agree on the outcome before moving on, so a wrong
 * result on one rank fails the test everywhere rather than hanging the
 * others in the next collective. Argument errors are made identically on
 * every rank and fail before any communication, so no rank waits for
 * another; the runtime errors (bad tag, mismatched receive) involve only
 * the ranks that make them. */
#include <limits.h>
#include <stdarg.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testutil_mpi.h"

/* Inputs repeat every PERIOD elements; a prime, so a block misplaced by a
 * power-of-two chunk never lands on equal data. */
#define PERIOD 251
/* Large counts: >= 16 MiB of data, and odd. */
#define LARGE_F32 4194311
#define LARGE_16BIT 8388617
#define SCRATCH_BYTES ((size_t)17 << 20)
#define POISON 0x5A

static mhub_comm *world;
static int rank, nranks;
/* Two scratch buffers shared by all tests: allocating 16 MiB per case would
 * dominate the run time at 4 ranks on 2 cores. */
static unsigned char *scratch_a, *scratch_b;

static const mhub_dtype all_dtypes[] = {MHUB_F32, MHUB_BF16, MHUB_F16};
static const mhub_reduce_op all_ops[] = {MHUB_SUM, MHUB_AVG, MHUB_MAX};

static void setup(void)
{
    CK_OK(mhub_comm_create_mpi_world(&world));
    rank = world->rank;
    nranks = world->size;
    scratch_a = malloc(SCRATCH_BYTES);
    scratch_b = malloc(SCRATCH_BYTES);
    ck_assert(scratch_a != NULL && scratch_b != NULL);
}

static void teardown(void)
{
    mhub_comm_free(world);
    world = NULL;
    free(scratch_a);
    free(scratch_b);
    scratch_a = scratch_b = NULL;
}

/* ---- data --------------------------------------------------------------- */

/* Rank r's input at index j: an integer in [-15, 15], distinct across the
 * first 31 ranks at every index so a maximum has one winner. */
static int value(int r, int64_t j)
{
    return (int)(((j % PERIOD) * 7 + r * 3) % 31) - 15;
}

typedef struct table {
    mhub_dtype dt;
    size_t es;
    uint32_t bits[PERIOD]; /* element bit patterns, 16-bit ones zero-extended */
} table;

static uint32_t encode(mhub_dtype dt, float v)
{
    uint32_t u;
    switch (dt) {
    case MHUB_F32: memcpy(&u, &v, 4); return u;
    case MHUB_BF16: return mhub_f32_to_bf16(v);
    case MHUB_F16: return mhub_f32_to_f16(v);
    }
    return 0;
}

static float decode(mhub_dtype dt, uint32_t bits)
{
    float f;
    switch (dt) {
    case MHUB_F32: memcpy(&f, &bits, 4); return f;
    case MHUB_BF16: return mhub_bf16_to_f32((uint16_t)bits);
    case MHUB_F16: return mhub_f16_to_f32((uint16_t)bits);
    }
    return NAN;
}

static void table_init(table *t, mhub_dtype dt)
{
    memset(t, 0, sizeof *t);
    t->dt = dt;
    t->es = mhub_dtype_size(dt);
}

/* Rank r's input. */
static void table_input(table *t, mhub_dtype dt, int r)
{
    table_init(t, dt);
    for (int k = 0; k < PERIOD; k++)
        t->bits[k] = encode(dt, (float)value(r, k));
}

/* The reduction of all ranks' inputs, rounded as the library rounds: sums
 * are exact integers; the average is one f32 division rounded to dt. */
static void table_reduced(table *t, mhub_dtype dt, mhub_reduce_op op, int n)
{
    table_init(t, dt);
    for (int k = 0; k < PERIOD; k++) {
        int sum = 0, max = INT_MIN;
        for (int r = 0; r < n; r++) {
            sum += value(r, k);
            max = value(r, k) > max ? value(r, k) : max;
        }
        float v = op == MHUB_MAX ? (float)max : (float)sum;
        if (op == MHUB_AVG)
            v = (float)sum / (float)n;
        t->bits[k] = encode(dt, v);
    }
}

static uint32_t element(const void *buf, size_t es, int64_t i)
{
    return es == 4 ? ((const uint32_t *)buf)[i] : ((const uint16_t *)buf)[i];
}

/* Elements [0, count) of buf = table entries from `offset` on. */
static void fill(void *buf, const table *t, int64_t offset, int64_t count)
{
    int k = (int)(offset % PERIOD);
    for (int64_t i = 0; i < count; i++) {
        if (t->es == 4)
            ((uint32_t *)buf)[i] = t->bits[k];
        else
            ((uint16_t *)buf)[i] = (uint16_t)t->bits[k];
        if (++k == PERIOD)
            k = 0;
    }
}

/* Index of the first element that differs from the table, or -1. */
static int64_t mismatch(const void *buf, const table *t, int64_t offset, int64_t count)
{
    int k = (int)(offset % PERIOD);
    for (int64_t i = 0; i < count; i++) {
        if (element(buf, t->es, i) != t->bits[k])
            return i;
        if (++k == PERIOD)
            k = 0;
    }
    return -1;
}

static void poison(void *buf, size_t bytes)
{
    memset(buf, POISON, bytes);
}

static bool still_poisoned(const void *buf, size_t bytes)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < bytes; i++)
        if (p[i] != POISON)
            return false;
    return true;
}

/* ---- verdicts (testutil_mpi.h holds the machinery) ------------------------ */

/* buf[0, count) must match t from `offset`. */
static void expect_table(verdict *v, const void *buf, const table *t, int64_t offset,
                         int64_t count, const char *what)
{
    int64_t bad = mismatch(buf, t, offset, count);
    if (bad < 0)
        return;
    uint32_t got = element(buf, t->es, bad);
    flunk(v, "%s (rank %d of %d): element %lld of %lld is %.9g, expected %.9g", what, rank, nranks,
         (long long)bad, (long long)count, (double)decode(t->dt, got),
         (double)decode(t->dt, t->bits[(offset + bad) % PERIOD]));
}


static int64_t large_count(mhub_dtype dt)
{
    return dt == MHUB_F32 ? LARGE_F32 : LARGE_16BIT;
}

/* The counts every collective is run at; the large one is the total, so
 * per-rank counts of reduce_scatter and allgather divide it (kept odd). */
static int64_t case_count(int which, mhub_dtype dt, bool per_rank)
{
    static const int64_t small[] = {0, 1, 1001};
    if (which < 3)
        return small[which];
    return per_rank ? (large_count(dt) / nranks) | 1 : large_count(dt);
}
#define N_COUNTS 4

typedef struct variant {
    bool inplace, blocking;
} variant;
static const variant all_variants[] = {{false, true}, {false, false}, {true, true}, {true, false}};
#define N_VARIANTS 4

static void describe(char *out, size_t n, const char *coll, mhub_dtype dt, int op,
                     int64_t count, variant v)
{
    snprintf(out, n, "%s %s%s%s count %lld %s %s", coll, mhub_dtype_name(dt),
             op >= 0 ? " " : "", op >= 0 ? mhub_reduce_op_name((mhub_reduce_op)op) : "",
             (long long)count, v.inplace ? "in-place" : "out-of-place",
             v.blocking ? "blocking" : "nonblocking");
}

/* ---- allreduce ---------------------------------------------------------- */

static void allreduce_case(mhub_dtype dt, mhub_reduce_op op, int64_t count, variant var)
{
    char what[160];
    describe(what, sizeof what, "allreduce", dt, op, count, var);
    verdict v = {0};
    size_t bytes = (size_t)count * mhub_dtype_size(dt);
    table in, want;
    table_input(&in, dt, rank);
    table_reduced(&want, dt, op, nranks);

    /* count 0 passes NULL out of place: allowed, nothing is touched */
    void *send = count > 0 ? scratch_a : NULL, *recv = count > 0 ? scratch_b : NULL;
    if (var.inplace)
        send = recv = scratch_b;
    poison(scratch_b, bytes + 64);
    fill(var.inplace ? scratch_b : scratch_a, &in, 0, count);

    mhub_status s;
    if (var.blocking) {
        s = mhub_comm_allreduce(world, send, recv, count, dt, op);
    } else {
        mhub_request req = {0};
        s = mhub_comm_iallreduce(world, send, recv, count, dt, op, &req);
        if (s == MHUB_OK && !req.active)
            flunk(&v, "%s: request not active after issue", what);
        if (s == MHUB_OK)
            s = mhub_request_wait(&req);
        if (req.active || req.comm != NULL)
            flunk(&v, "%s: request not idle after wait", what);
    }
    if (expect_ok(&v, s, what)) {
        expect_table(&v, scratch_b, &want, 0, count, what);
        if (!still_poisoned(scratch_b + bytes, 64))
            flunk(&v, "%s: wrote past the end of recv", what);
        if (!var.inplace)
            expect_table(&v, scratch_a, &in, 0, count, "allreduce changed its send buffer");
    }
    settle(&v);
}

START_TEST(test_allreduce)
{
    mhub_dtype dt = all_dtypes[_i];
    for (int o = 0; o < 3; o++)
        for (int c = 0; c < N_COUNTS; c++)
            for (int k = 0; k < N_VARIANTS; k++)
                allreduce_case(dt, all_ops[o], case_count(c, dt, false), all_variants[k]);
}
END_TEST

/* ---- reduce_scatter ----------------------------------------------------- */

static void reduce_scatter_case(mhub_dtype dt, mhub_reduce_op op, int64_t count, variant var)
{
    char what[160];
    describe(what, sizeof what, "reduce_scatter", dt, op, count, var);
    verdict v = {0};
    size_t es = mhub_dtype_size(dt), block = (size_t)count * es;
    table in, want;
    table_input(&in, dt, rank);
    table_reduced(&want, dt, op, nranks);

    /* the full input (count * size) is in scratch_a, or in scratch_b in place */
    void *send = count > 0 ? scratch_a : NULL, *recv = count > 0 ? scratch_b : NULL;
    if (var.inplace) {
        send = scratch_b;
        recv = scratch_b + (size_t)rank * block;
    }
    poison(scratch_b, block * (size_t)nranks + 64);
    fill(var.inplace ? scratch_b : scratch_a, &in, 0, count * nranks);

    mhub_status s;
    if (var.blocking) {
        s = mhub_comm_reduce_scatter(world, send, recv, count, dt, op);
    } else {
        mhub_request req = {0};
        s = mhub_comm_ireduce_scatter(world, send, recv, count, dt, op, &req);
        if (s == MHUB_OK)
            s = mhub_request_wait(&req);
    }
    if (expect_ok(&v, s, what)) {
        /* rank r holds block r of the reduction: global indices from r * count */
        expect_table(&v, recv, &want, (int64_t)rank * count, count, what);
        if (!var.inplace && !still_poisoned(scratch_b + block, 64))
            flunk(&v, "%s: wrote past the end of recv", what);
        if (!var.inplace)
            expect_table(&v, scratch_a, &in, 0, count * nranks,
                         "reduce_scatter changed its send buffer");
    }
    settle(&v);
}

START_TEST(test_reduce_scatter)
{
    mhub_dtype dt = all_dtypes[_i];
    for (int o = 0; o < 3; o++)
        for (int c = 0; c < N_COUNTS; c++)
            for (int k = 0; k < N_VARIANTS; k++)
                reduce_scatter_case(dt, all_ops[o], case_count(c, dt, true), all_variants[k]);
}
END_TEST

/* ---- allgather ---------------------------------------------------------- */

static void allgather_case(mhub_dtype dt, int64_t count, variant var)
{
    char what[160];
    describe(what, sizeof what, "allgather", dt, -1, count, var);
    verdict v = {0};
    size_t es = mhub_dtype_size(dt), block = (size_t)count * es;
    table in;
    table_input(&in, dt, rank);

    void *send = count > 0 ? scratch_a : NULL, *recv = count > 0 ? scratch_b : NULL;
    poison(scratch_b, block * (size_t)nranks + 64);
    if (var.inplace) {
        recv = scratch_b;
        send = scratch_b + (size_t)rank * block;
    }
    fill(var.inplace ? send : scratch_a, &in, 0, count);

    mhub_status s;
    if (var.blocking) {
        s = mhub_comm_allgather(world, send, recv, count, dt);
    } else {
        mhub_request req = {0};
        s = mhub_comm_iallgather(world, send, recv, count, dt, &req);
        if (s == MHUB_OK)
            s = mhub_request_wait(&req);
    }
    if (expect_ok(&v, s, what)) {
        for (int q = 0; q < nranks; q++) {
            table from;
            table_input(&from, dt, q);
            char block_what[200];
            snprintf(block_what, sizeof block_what, "%s, block of rank %d", what, q);
            expect_table(&v, scratch_b + (size_t)q * block, &from, 0, count, block_what);
        }
        if (!still_poisoned(scratch_b + block * (size_t)nranks, 64))
            flunk(&v, "%s: wrote past the end of recv", what);
        if (!var.inplace)
            expect_table(&v, scratch_a, &in, 0, count, "allgather changed its send buffer");
    }
    settle(&v);
}

START_TEST(test_allgather)
{
    mhub_dtype dt = all_dtypes[_i];
    for (int c = 0; c < N_COUNTS; c++)
        for (int k = 0; k < N_VARIANTS; k++)
            allgather_case(dt, case_count(c, dt, true), all_variants[k]);
}
END_TEST

/* ---- broadcast ---------------------------------------------------------- */

static void broadcast_case(mhub_dtype dt, int64_t count, int root, bool blocking)
{
    char what[160];
    snprintf(what, sizeof what, "broadcast %s count %lld root %d %s", mhub_dtype_name(dt),
             (long long)count, root, blocking ? "blocking" : "nonblocking");
    verdict v = {0};
    size_t bytes = (size_t)count * mhub_dtype_size(dt);
    table in;
    table_input(&in, dt, root);
    poison(scratch_b, bytes + 64);
    if (rank == root)
        fill(scratch_b, &in, 0, count);
    void *buf = count > 0 ? scratch_b : NULL;

    mhub_status s;
    if (blocking) {
        s = mhub_comm_broadcast(world, buf, count, dt, root);
    } else {
        mhub_request req = {0};
        s = mhub_comm_ibroadcast(world, buf, count, dt, root, &req);
        if (s == MHUB_OK)
            s = mhub_request_wait(&req);
    }
    if (expect_ok(&v, s, what)) {
        expect_table(&v, scratch_b, &in, 0, count, what);
        if (!still_poisoned(scratch_b + bytes, 64))
            flunk(&v, "%s: wrote past the end", what);
    }
    settle(&v);
}

/* Broadcast is in place by definition; it runs from the first and the
 * last rank. */
START_TEST(test_broadcast)
{
    mhub_dtype dt = all_dtypes[_i];
    int roots[] = {0, nranks - 1};
    for (int c = 0; c < N_COUNTS; c++)
        for (int r = 0; r < (nranks > 1 ? 2 : 1); r++)
            for (int b = 0; b < 2; b++)
                broadcast_case(dt, case_count(c, dt, false), roots[r], b == 0);
}
END_TEST

/* ---- send / recv -------------------------------------------------------- */

typedef enum ring_mode { RING_NONBLOCKING, RING_BLOCKING_SEND, RING_BLOCKING_RECV } ring_mode;

/* Both halves of a ring step; a blocking call is always paired with a
 * nonblocking one already posted, so the ring cannot deadlock on
 * rendezvous-sized messages (or on itself at 1 rank). */
static mhub_status ring_exchange(const void *sbuf, void *rbuf, int64_t count, mhub_dtype dt,
                                 int next, int prev, int tag, ring_mode mode)
{
    mhub_request sreq = {0}, rreq = {0};
    switch (mode) {
    case RING_NONBLOCKING:
        MHUB_TRY(mhub_comm_irecv(world, rbuf, count, dt, prev, tag, &rreq));
        MHUB_TRY(mhub_comm_isend(world, sbuf, count, dt, next, tag, &sreq));
        MHUB_TRY(mhub_request_wait(&rreq));
        return mhub_request_wait(&sreq);
    case RING_BLOCKING_SEND:
        MHUB_TRY(mhub_comm_irecv(world, rbuf, count, dt, prev, tag, &rreq));
        MHUB_TRY(mhub_comm_send(world, sbuf, count, dt, next, tag));
        return mhub_request_wait(&rreq);
    case RING_BLOCKING_RECV:
        MHUB_TRY(mhub_comm_isend(world, sbuf, count, dt, next, tag, &sreq));
        MHUB_TRY(mhub_comm_recv(world, rbuf, count, dt, prev, tag));
        return mhub_request_wait(&sreq);
    }
    return MHUB_ERR_INVALID_ARG;
}

/* Each rank sends to the next and receives from the previous. */
static void ring_case(mhub_dtype dt, int64_t count, ring_mode mode, int tag)
{
    static const char *const names[] = {"nonblocking", "blocking send", "blocking recv"};
    char what[160];
    snprintf(what, sizeof what, "ring %s count %lld %s", mhub_dtype_name(dt), (long long)count,
             names[mode]);
    verdict v = {0};
    int next = (rank + 1) % nranks, prev = (rank + nranks - 1) % nranks;
    size_t bytes = (size_t)count * mhub_dtype_size(dt);
    table mine, theirs;
    table_input(&mine, dt, rank);
    table_input(&theirs, dt, prev);
    fill(scratch_a, &mine, 0, count);
    poison(scratch_b, bytes + 64);
    void *sbuf = count > 0 ? scratch_a : NULL, *rbuf = count > 0 ? scratch_b : NULL;

    if (expect_ok(&v, ring_exchange(sbuf, rbuf, count, dt, next, prev, tag, mode), what)) {
        expect_table(&v, scratch_b, &theirs, 0, count, what);
        if (!still_poisoned(scratch_b + bytes, 64))
            flunk(&v, "%s: wrote past the end", what);
    }
    settle(&v);
}

START_TEST(test_send_recv_ring)
{
    mhub_dtype dt = all_dtypes[_i];
    for (int c = 0; c < N_COUNTS; c++)
        for (int m = 0; m < 3; m++)
            ring_case(dt, case_count(c, dt, false), (ring_mode)m, 10 * c + m);
}
END_TEST

/* ---- barrier ------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Rank 0 arrives 50 ms late; nobody may leave the barrier before it came. */
START_TEST(test_barrier)
{
    verdict v = {0};
    expect_ok(&v, mhub_comm_barrier(world), "first barrier");
    double t0 = now_s();
    if (rank == 0)
        usleep(50000);
    expect_ok(&v, mhub_comm_barrier(world), "second barrier");
    double waited = now_s() - t0;
    if (waited < 0.045)
        flunk(&v, "rank %d left the barrier after %.1f ms, before rank 0 came", rank,
             waited * 1e3);
    settle(&v);
}
END_TEST

/* ---- split -------------------------------------------------------------- */

START_TEST(test_split_parity_reversed)
{
    /* color = parity, key = -rank: each half in reverse world order */
    verdict v = {0};
    mhub_comm *half = NULL;
    CK_OK(mhub_comm_split(world, rank % 2, -rank, "parity", &half));
    ck_assert_ptr_nonnull(half);
    if (strcmp(half->name, "parity") != 0)
        flunk(&v, "split name is \"%s\"", half->name);
    int top = (nranks - 1) % 2 == rank % 2 ? nranks - 1 : nranks - 2;
    int size = (nranks - rank % 2 + 1) / 2, sub_rank = (top - rank) / 2;
    if (half->size != size || half->rank != sub_rank)
        flunk(&v, "world rank %d: parity rank %d of %d, expected %d of %d", rank, half->rank,
             half->size, sub_rank, size);

    /* members in the group's rank order, world rank top first */
    float members[64], me = (float)rank;
    ck_assert_int_le(half->size, 64);
    expect_ok(&v, mhub_comm_allgather(half, &me, members, 1, MHUB_F32), "allgather on split");
    for (int k = 0; k < half->size; k++)
        if ((int)members[k] != top - 2 * k)
            flunk(&v, "parity rank %d is world rank %d, expected %d", k, (int)members[k],
                 top - 2 * k);

    /* splitting a split works too */
    mhub_comm *again = NULL;
    expect_ok(&v, mhub_comm_split(half, 0, half->rank, "again", &again), "split of split");
    if (again == NULL || again->size != half->size || again->rank != half->rank)
        flunk(&v, "split of split did not keep the group");
    expect_ok(&v, mhub_comm_barrier(again), "barrier on split of split");
    mhub_comm_free(again);
    mhub_comm_free(half);
    settle(&v);
}
END_TEST

START_TEST(test_split_negative_color)
{
    /* odd ranks opt out and get NULL; even ranks form a group */
    verdict v = {0};
    mhub_comm *evens = world; /* must be overwritten */
    CK_OK(mhub_comm_split(world, rank % 2 == 0 ? 7 : -1, rank, "evens", &evens));
    if (rank % 2 != 0 && evens != NULL)
        flunk(&v, "rank %d opted out but got a communicator", rank);
    if (rank % 2 == 0) {
        ck_assert_ptr_nonnull(evens);
        if (evens->size != (nranks + 1) / 2 || evens->rank != rank / 2)
            flunk(&v, "evens: rank %d of %d, expected %d of %d", evens->rank, evens->size,
                 rank / 2, (nranks + 1) / 2);
        float x = (float)rank, want = 0.0f;
        for (int r = 0; r < nranks; r += 2)
            want += (float)r;
        expect_ok(&v, mhub_comm_allreduce(evens, &x, &x, 1, MHUB_F32, MHUB_SUM), "evens sum");
        if (x != want)
            flunk(&v, "sum of even world ranks is %g, expected %g", (double)x, (double)want);
        mhub_comm_free(evens);
    }
    settle(&v);
}
END_TEST

/* MHUB_AVG divides by the group's size, rounding once: at 3 ranks x/3 and
 * x * fl(1/3) differ for many sums (5/3, 7/3, ...), which powers of two
 * cannot show. Runs on a 3-rank split when there are at least 3 ranks. */
START_TEST(test_avg_divides_by_group_size)
{
    verdict v = {0};
    mhub_comm *three = NULL;
    CK_OK(mhub_comm_split(world, rank < 3 ? 0 : -1, rank, "three", &three));
    if (three != NULL) {
        enum { N = 1001 };
        for (int d = 0; d < MHUB_DTYPE_COUNT; d++) {
            mhub_dtype dt = all_dtypes[d];
            table in, want;
            table_input(&in, dt, three->rank);
            table_reduced(&want, dt, MHUB_AVG, three->size);
            fill(scratch_a, &in, 0, N);
            expect_ok(&v, mhub_comm_allreduce(three, scratch_a, scratch_b, N, dt, MHUB_AVG),
                      "allreduce avg on the split");
            expect_table(&v, scratch_b, &want, 0, N, "allreduce avg on the split");
            fill(scratch_a, &in, 0, (int64_t)N * three->size);
            expect_ok(&v, mhub_comm_reduce_scatter(three, scratch_a, scratch_b, N, dt, MHUB_AVG),
                      "reduce_scatter avg on the split");
            expect_table(&v, scratch_b, &want, (int64_t)three->rank * N, N,
                         "reduce_scatter avg on the split");
        }
        mhub_comm_free(three);
    }
    settle(&v);
}
END_TEST

START_TEST(test_create_from_mpi_comm)
{
    MPI_Comm self = MPI_COMM_SELF;
    mhub_comm *c = NULL;
    CK_OK(mhub_comm_create_mpi(&self, "self", &c));
    ck_assert_int_eq(c->size, 1);
    ck_assert_int_eq(c->rank, 0);
    ck_assert_str_eq(c->name, "self");
    float x[3] = {1, 2, 3};
    CK_OK(mhub_comm_allreduce(c, x, x, 3, MHUB_F32, MHUB_AVG));
    ck_assert_float_eq(x[2], 3.0f);
    mhub_comm_free(c);
    mhub_comm_free(NULL); /* a no-op */
}
END_TEST

/* ---- requests ----------------------------------------------------------- */

/* Five different operations in flight at once, completed last to first. */
START_TEST(test_outstanding_reverse_order)
{
    enum { N = 100003 }; /* large enough that they really overlap */
    verdict v = {0};
    size_t n = (size_t)N * (size_t)nranks;
    float *ar_f32 = malloc(N * 4), *ag_send = malloc(N * 4), *ag_recv = malloc(n * 4);
    uint16_t *ar_bf16 = malloc(N * 2), *rs_f16 = malloc(n * 2), *bc_bf16 = malloc(N * 2);
    ck_assert(ar_f32 && ar_bf16 && rs_f16 && bc_bf16 && ag_send && ag_recv);

    table in32, in16b, in16h, bc_in, want;
    table_input(&in32, MHUB_F32, rank);
    table_input(&in16b, MHUB_BF16, rank);
    table_input(&in16h, MHUB_F16, rank);
    table_input(&bc_in, MHUB_BF16, nranks - 1);
    fill(ar_f32, &in32, 0, N);
    fill(ar_bf16, &in16b, 0, N);
    fill(rs_f16, &in16h, 0, (int64_t)n);
    fill(ag_send, &in32, 0, N);
    if (rank == nranks - 1)
        fill(bc_bf16, &bc_in, 0, N);
    else
        poison(bc_bf16, N * 2);

    mhub_request req[5] = {{0}};
    CK_OK(mhub_comm_iallreduce(world, ar_f32, ar_f32, N, MHUB_F32, MHUB_SUM, &req[0]));
    CK_OK(mhub_comm_iallreduce(world, ar_bf16, ar_bf16, N, MHUB_BF16, MHUB_AVG, &req[1]));
    CK_OK(mhub_comm_ireduce_scatter(world, rs_f16, rs_f16 + (size_t)rank * N, N, MHUB_F16,
                                    MHUB_MAX, &req[2]));
    CK_OK(mhub_comm_iallgather(world, ag_send, ag_recv, N, MHUB_F32, &req[3]));
    CK_OK(mhub_comm_ibroadcast(world, bc_bf16, N, MHUB_BF16, nranks - 1, &req[4]));
    for (int i = 4; i >= 0; i--)
        expect_ok(&v, mhub_request_wait(&req[i]), "waiting in reverse order");

    table_reduced(&want, MHUB_F32, MHUB_SUM, nranks);
    expect_table(&v, ar_f32, &want, 0, N, "outstanding allreduce f32 sum");
    table_reduced(&want, MHUB_BF16, MHUB_AVG, nranks);
    expect_table(&v, ar_bf16, &want, 0, N, "outstanding allreduce bf16 avg");
    table_reduced(&want, MHUB_F16, MHUB_MAX, nranks);
    expect_table(&v, rs_f16 + (size_t)rank * N, &want, (int64_t)rank * N, N,
                 "outstanding reduce_scatter f16 max");
    for (int q = 0; q < nranks; q++) {
        table from;
        table_input(&from, MHUB_F32, q);
        expect_table(&v, ag_recv + (size_t)q * N, &from, 0, N, "outstanding allgather");
    }
    expect_table(&v, bc_bf16, &bc_in, 0, N, "outstanding broadcast");
    free(ar_f32);
    free(ar_bf16);
    free(rs_f16);
    free(bc_bf16);
    free(ag_send);
    free(ag_recv);
    settle(&v);
}
END_TEST

/* One request through operations with and without a finish step: an
 * average's division must not leak into the sum that reuses its request. */
START_TEST(test_request_reuse)
{
    enum { N = 1001 };
    verdict v = {0};
    float *x = (float *)scratch_a;
    table in, avg, sum;
    table_input(&in, MHUB_F32, rank);
    table_reduced(&avg, MHUB_F32, MHUB_AVG, nranks);
    table_reduced(&sum, MHUB_F32, MHUB_SUM, nranks);
    mhub_request req = {0};
    for (int round = 0; round < 3; round++) {
        fill(x, &in, 0, N);
        CK_OK(mhub_comm_iallreduce(world, x, x, N, MHUB_F32, MHUB_AVG, &req));
        expect_ok(&v, mhub_request_wait(&req), "wait for avg");
        expect_table(&v, x, &avg, 0, N, "reused request, avg");
        fill(x, &in, 0, N);
        CK_OK(mhub_comm_iallreduce(world, x, x, N, MHUB_F32, MHUB_SUM, &req));
        expect_ok(&v, mhub_request_wait(&req), "wait for sum");
        expect_table(&v, x, &sum, 0, N, "reused request, sum");
        float r = (float)(rank + 1);
        CK_OK(mhub_comm_ibroadcast(world, &r, 1, MHUB_F32, 0, &req));
        expect_ok(&v, mhub_request_wait(&req), "wait for broadcast");
        if (r != 1.0f)
            flunk(&v, "reused request, broadcast gave %g", (double)r);
    }
    /* waiting on an idle request is fine */
    expect_ok(&v, mhub_request_wait(&req), "wait on an idle request");
    settle(&v);
}
END_TEST

/* mhub_request_test: poll a large average to completion; the finish step
 * runs on the poll that reports done. */
START_TEST(test_request_test_polling)
{
    verdict v = {0};
    int64_t n = LARGE_F32;
    table in, want;
    table_input(&in, MHUB_F32, rank);
    table_reduced(&want, MHUB_F32, MHUB_AVG, nranks);
    fill(scratch_a, &in, 0, n);
    mhub_request req = {0};
    CK_OK(mhub_comm_iallreduce(world, scratch_a, scratch_b, n, MHUB_F32, MHUB_AVG, &req));
    bool done = false;
    while (!done && expect_ok(&v, mhub_request_test(&req, &done), "mhub_request_test"))
        if (!done)
            sched_yield();
    if (req.active)
        flunk(&v, "request still active after test reported done");
    expect_table(&v, scratch_b, &want, 0, n, "polled allreduce f32 avg");
    /* an idle request tests as done */
    done = false;
    expect_ok(&v, mhub_request_test(&req, &done), "test on an idle request");
    if (!done)
        flunk(&v, "an idle request did not test as done");
    settle(&v);
}
END_TEST

/* Counts past INT_MAX go through MPI 4's large-count calls. Only at 1 rank,
 * where MPI moves nothing, so the 4 GiB buffer is never touched. */
START_TEST(test_count_above_int_max)
{
    if (nranks != 1)
        return;
    int64_t n = (int64_t)INT_MAX + 3;
    uint16_t *big = calloc((size_t)n, 2);
    if (big == NULL) {
        fprintf(stderr, "test_count_above_int_max: skipped, no 4 GiB of address space\n");
        return;
    }
    /* the library is built against the same mpi.h (and flags) as this test */
#if MPI_VERSION >= 4 && !defined(MHUB_MPI_NO_LARGE_COUNT)
    CK_OK(mhub_comm_allreduce(world, big, big, n, MHUB_BF16, MHUB_SUM));
    CK_OK(mhub_comm_broadcast(world, big, n, MHUB_BF16, 0));
    ck_assert_int_eq(big[n - 1], 0);
#else
    CK_FAILS(MHUB_ERR_UNSUPPORTED, mhub_comm_broadcast(world, big, n, MHUB_BF16, 0));
#endif
    free(big);
}
END_TEST

/* ---- errors ------------------------------------------------------------- */

/* The call failed with `code` and its message names the call, and (when
 * the communicator was valid) the group and the rank. */
#define CK_FAILS_AT(code, call, expr)                                                      \
    do {                                                                                   \
        CK_FAILS(code, expr);                                                              \
        const char *m_ = mhub_last_error();                                                \
        ck_assert_msg(strstr(m_, call) != NULL, "message does not name %s: %s", call, m_); \
        char where_[64];                                                                   \
        snprintf(where_, sizeof where_, "rank %d", rank);                                  \
        ck_assert_msg(strstr(m_, "\"world\"") && strstr(m_, where_),                       \
                      "message does not name group and rank: %s", m_);                     \
    } while (0)

START_TEST(test_null_comm)
{
    float x[4] = {0};
    mhub_request req = {0};
    mhub_comm *out = NULL;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_iallreduce(NULL, x, x, 4, MHUB_F32, MHUB_SUM, &req));
    ck_assert(strstr(mhub_last_error(), "mhub_comm_iallreduce") != NULL);
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_allreduce(NULL, x, x, 4, MHUB_F32, MHUB_SUM));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_comm_ireduce_scatter(NULL, x, x, 1, MHUB_F32, MHUB_SUM, &req));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_reduce_scatter(NULL, x, x, 1, MHUB_F32, MHUB_SUM));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_iallgather(NULL, x, x, 1, MHUB_F32, &req));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_allgather(NULL, x, x, 1, MHUB_F32));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_ibroadcast(NULL, x, 4, MHUB_F32, 0, &req));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_broadcast(NULL, x, 4, MHUB_F32, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_isend(NULL, x, 4, MHUB_F32, 0, 0, &req));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_send(NULL, x, 4, MHUB_F32, 0, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_irecv(NULL, x, 4, MHUB_F32, 0, 0, &req));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_recv(NULL, x, 4, MHUB_F32, 0, 0));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_barrier(NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_split(NULL, 0, 0, "x", &out));
    ck_assert(!req.active);
}
END_TEST

START_TEST(test_bad_counts_dtypes_ops)
{
    float x[8] = {0};
    mhub_request req = {0};
    const mhub_dtype bad_dt = (mhub_dtype)7;
    const mhub_reduce_op bad_op = (mhub_reduce_op)9;
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_iallreduce",
                mhub_comm_iallreduce(world, x, x, -1, MHUB_F32, MHUB_SUM, &req));
    ck_assert(strstr(mhub_last_error(), "count") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allreduce",
                mhub_comm_allreduce(world, x, x, 4, bad_dt, MHUB_SUM));
    ck_assert(strstr(mhub_last_error(), "dtype") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allreduce",
                mhub_comm_allreduce(world, x, x, 4, MHUB_F32, bad_op));
    ck_assert(strstr(mhub_last_error(), "op") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_reduce_scatter",
                mhub_comm_reduce_scatter(world, x, x, -3, MHUB_BF16, MHUB_SUM));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_ireduce_scatter",
                mhub_comm_ireduce_scatter(world, x, x, 1, MHUB_F32, (mhub_reduce_op)-1, &req));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_reduce_scatter",
                mhub_comm_reduce_scatter(world, x, x, 1, bad_dt, MHUB_MAX));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allgather",
                mhub_comm_allgather(world, x, x, -1, MHUB_F32));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_iallgather",
                mhub_comm_iallgather(world, x, x, 1, bad_dt, &req));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_broadcast",
                mhub_comm_broadcast(world, x, -2, MHUB_F16, 0));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_ibroadcast",
                mhub_comm_ibroadcast(world, x, 1, bad_dt, 0, &req));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_send",
                mhub_comm_send(world, x, -1, MHUB_F32, 0, 0));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_irecv",
                mhub_comm_irecv(world, x, 1, bad_dt, 0, 0, &req));
    /* a per-rank count whose total overflows a byte count */
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allgather",
                mhub_comm_allgather(world, x, x, INT64_MAX / 2, MHUB_F32));
    ck_assert(!req.active);
}
END_TEST

START_TEST(test_bad_buffers_and_ranks)
{
    float x[8] = {0};
    mhub_request req = {0};
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allreduce",
                mhub_comm_allreduce(world, NULL, x, 4, MHUB_F32, MHUB_SUM));
    ck_assert(strstr(mhub_last_error(), "send") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_iallreduce",
                mhub_comm_iallreduce(world, x, NULL, 4, MHUB_F32, MHUB_SUM, &req));
    ck_assert(strstr(mhub_last_error(), "recv") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_reduce_scatter",
                mhub_comm_reduce_scatter(world, NULL, x, 1, MHUB_F32, MHUB_SUM));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allgather",
                mhub_comm_allgather(world, x, NULL, 1, MHUB_F32));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_broadcast",
                mhub_comm_broadcast(world, NULL, 1, MHUB_F32, 0));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_send",
                mhub_comm_send(world, NULL, 1, MHUB_F32, 0, 0));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_recv",
                mhub_comm_recv(world, NULL, 1, MHUB_F32, 0, 0));

    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_broadcast",
                mhub_comm_broadcast(world, x, 1, MHUB_F32, nranks));
    ck_assert(strstr(mhub_last_error(), "root") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_ibroadcast",
                mhub_comm_ibroadcast(world, x, 1, MHUB_F32, -1, &req));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_isend",
                mhub_comm_isend(world, x, 1, MHUB_F32, nranks, 0, &req));
    ck_assert(strstr(mhub_last_error(), "peer") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_recv",
                mhub_comm_recv(world, x, 1, MHUB_F32, -1, 0));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_send",
                mhub_comm_send(world, x, 1, MHUB_F32, 0, -5));
    ck_assert(strstr(mhub_last_error(), "tag") != NULL);

    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_iallreduce",
                mhub_comm_iallreduce(world, x, x, 1, MHUB_F32, MHUB_SUM, NULL));
    ck_assert(strstr(mhub_last_error(), "req") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_irecv",
                mhub_comm_irecv(world, x, 1, MHUB_F32, 0, 0, NULL));
    ck_assert(!req.active);
}
END_TEST

START_TEST(test_overlapping_buffers)
{
    int64_t c = 2;
    size_t n = (size_t)c * (size_t)nranks;
    float *b = calloc(n + 4, sizeof(float));
    ck_assert_ptr_nonnull(b);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allreduce",
                mhub_comm_allreduce(world, b, b + 1, 4, MHUB_F32, MHUB_SUM));
    ck_assert(strstr(mhub_last_error(), "overlap") != NULL);
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_reduce_scatter",
                mhub_comm_reduce_scatter(world, b, b + (size_t)rank * c + 1, c, MHUB_F32,
                                         MHUB_SUM));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allgather",
                mhub_comm_allgather(world, b + (size_t)rank * c + 1, b, c, MHUB_F32));
    if (nranks > 1) {
        /* a whole block, but another rank's */
        size_t other = (size_t)((rank + 1) % nranks) * (size_t)c;
        CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_reduce_scatter",
                    mhub_comm_reduce_scatter(world, b, b + other, c, MHUB_F32, MHUB_SUM));
        CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allgather",
                    mhub_comm_allgather(world, b + other, b, c, MHUB_F32));
    }
    /* 16-bit elements: the in-place offset is in elements of dt, not bytes */
    uint16_t *h = (uint16_t *)b;
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_allreduce",
                mhub_comm_allreduce(world, h, h + 1, 2, MHUB_BF16, MHUB_SUM));
    free(b);
}
END_TEST

START_TEST(test_active_request)
{
    float x = 1.0f, y = 0.0f;
    mhub_request req = {0};
    CK_OK(mhub_comm_iallreduce(world, &x, &x, 1, MHUB_F32, MHUB_SUM, &req));
    CK_FAILS_AT(MHUB_ERR_STATE, "mhub_comm_iallreduce",
                mhub_comm_iallreduce(world, &y, &y, 1, MHUB_F32, MHUB_SUM, &req));
    ck_assert(strstr(mhub_last_error(), "allreduce") != NULL);
    CK_FAILS_AT(MHUB_ERR_STATE, "mhub_comm_ibroadcast",
                mhub_comm_ibroadcast(world, &y, 1, MHUB_F32, 0, &req));
    ck_assert(req.active);
    CK_OK(mhub_request_wait(&req));
    ck_assert_float_eq(x, (float)nranks);
    ck_assert_float_eq(y, 0.0f);

    bool done = false;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_request_wait(NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_request_test(NULL, &done));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_request_test(&req, NULL));
}
END_TEST

START_TEST(test_bad_split_and_create)
{
    mhub_comm *out = NULL;
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_split", mhub_comm_split(world, 0, 0, "x", NULL));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_split", mhub_comm_split(world, 0, 0, NULL, &out));
    CK_FAILS_AT(MHUB_ERR_INVALID_ARG, "mhub_comm_split",
                mhub_comm_split(world, 0, 0, "a-group-name-that-is-far-too-long", &out));
    ck_assert_ptr_null(out);

    MPI_Comm null_comm = MPI_COMM_NULL, w = MPI_COMM_WORLD;
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_create_mpi(&w, "w", NULL));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_create_mpi(NULL, "w", &out));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_create_mpi(&w, NULL, &out));
    CK_FAILS(MHUB_ERR_INVALID_ARG,
             mhub_comm_create_mpi(&w, "a-group-name-that-is-far-too-long", &out));
    CK_FAILS(MHUB_ERR_INVALID_ARG, mhub_comm_create_mpi(&null_comm, "w", &out));
    ck_assert(strstr(mhub_last_error(), "MPI_COMM_NULL") != NULL);
    ck_assert_ptr_null(out);
}
END_TEST

/* An error MPI itself reports (a tag above MPI_TAG_UB) becomes
 * MHUB_ERR_COMM with MPI's explanation, and leaves the request idle. */
START_TEST(test_mpi_error_becomes_comm_error)
{
    int *tag_ub = NULL, flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag);
    ck_assert(flag);
    if (*tag_ub == INT_MAX)
        return; /* every non-negative tag is valid here */
    float x = 0.0f;
    mhub_request req = {0};
    CK_FAILS_AT(MHUB_ERR_COMM, "MPI_Isend",
                mhub_comm_isend(world, &x, 1, MHUB_F32, rank, *tag_ub + 1, &req));
    ck_assert(!req.active);
    CK_OK(mhub_request_wait(&req));
}
END_TEST

/* A receive must get exactly its count: shorter and longer messages are
 * both MHUB_ERR_COMM on the receiver. Only ranks 0 and 1 take part. */
START_TEST(test_recv_count_mismatch)
{
    if (nranks < 2 || rank > 1)
        return;
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    if (rank == 0) {
        CK_OK(mhub_comm_send(world, x, 3, MHUB_F32, 1, 71));
        CK_OK(mhub_comm_send(world, x, 3, MHUB_F32, 1, 72));
        return;
    }
    float y[8] = {0};
    CK_FAILS_AT(MHUB_ERR_COMM, "recv", mhub_comm_recv(world, y, 5, MHUB_F32, 0, 71));
    ck_assert(strstr(mhub_last_error(), "received 3") != NULL);
    ck_assert_float_eq(y[2], 3.0f);
    mhub_request req = {0};
    CK_OK(mhub_comm_irecv(world, y, 2, MHUB_F32, 0, 72, &req));
    CK_FAILS_AT(MHUB_ERR_COMM, "MPI_Test", mhub_request_wait(&req));
    ck_assert(!req.active);
}
END_TEST

static Suite *make_suite(void)
{
    Suite *s = suite_create("comm");

    TCase *coll = tcase_create("collectives");
    tcase_add_unchecked_fixture(coll, setup, teardown);
    tcase_set_timeout(coll, 120);
    tcase_add_loop_test(coll, test_allreduce, 0, MHUB_DTYPE_COUNT);
    tcase_add_loop_test(coll, test_reduce_scatter, 0, MHUB_DTYPE_COUNT);
    tcase_add_loop_test(coll, test_allgather, 0, MHUB_DTYPE_COUNT);
    tcase_add_loop_test(coll, test_broadcast, 0, MHUB_DTYPE_COUNT);
    tcase_add_loop_test(coll, test_send_recv_ring, 0, MHUB_DTYPE_COUNT);
    tcase_add_test(coll, test_barrier);
    suite_add_tcase(s, coll);

    TCase *groups = tcase_create("groups");
    tcase_add_unchecked_fixture(groups, setup, teardown);
    tcase_add_test(groups, test_split_parity_reversed);
    tcase_add_test(groups, test_split_negative_color);
    tcase_add_test(groups, test_avg_divides_by_group_size);
    tcase_add_test(groups, test_create_from_mpi_comm);
    suite_add_tcase(s, groups);

    TCase *reqs = tcase_create("requests");
    tcase_add_unchecked_fixture(reqs, setup, teardown);
    tcase_set_timeout(reqs, 60);
    tcase_add_test(reqs, test_outstanding_reverse_order);
    tcase_add_test(reqs, test_request_reuse);
    tcase_add_test(reqs, test_request_test_polling);
    tcase_add_test(reqs, test_count_above_int_max);
    suite_add_tcase(s, reqs);

    TCase *errs = tcase_create("errors");
    tcase_add_unchecked_fixture(errs, setup, teardown);
    tcase_add_test(errs, test_null_comm);
    tcase_add_test(errs, test_bad_counts_dtypes_ops);
    tcase_add_test(errs, test_bad_buffers_and_ranks);
    tcase_add_test(errs, test_overlapping_buffers);
    tcase_add_test(errs, test_active_request);
    tcase_add_test(errs, test_bad_split_and_create);
    tcase_add_test(errs, test_mpi_error_becomes_comm_error);
    tcase_add_test(errs, test_recv_count_mismatch);
    suite_add_tcase(s, errs);
    return s;
}

int main(int argc, char **argv)
{
    return mhub_test_mpi_main(argc, argv, make_suite);
}
