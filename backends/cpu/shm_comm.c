/* shm_comm.c - intra-node shared-memory all-reduce for the MPI communicator.
 *
 * Why: on one node MPICH's all-reduce copies every byte through its own
 * scratch buffers (and, above 32 MiB, page-faults them in on every call);
 * when the ranks' buffers already sit in one shared mapping, each rank can
 * read its peers' data directly and only do the arithmetic and one copy.
 * On a 2-core VM this runs at 4-8x MPICH's bus bandwidth from 1 MiB to
 * 256 MiB, at 2 and at 4 ranks (bench/bench_collectives --shm --raw-mpi).
 *
 * Memory. mhub_comm_alloc on a communicator whose ranks are all on one
 * node creates an MPI-3 shared window (MPI_Win_allocate_shared over the
 * MPI_COMM_TYPE_SHARED split) laid out as
 *
 *     [n control lines, 64 B each][slot 0][slot 1]...[slot n-1]
 *
 * and hands rank r slot r. Each slot is the requested size rounded up to
 * 64 bytes, so slots, and the chunk boundaries below, start on cache lines.
 * Rank 0 allocates the whole window (so the layout is ours, whatever the
 * MPI's own alignment); each rank zeroes its own slot first, so its pages
 * are faulted in by the rank that uses them.
 *
 * All-reduce (f32 sum of buf[0, count), in place, buf in this rank's slot
 * at the same offset on every rank). Three barriers made of flags:
 *   1. arrive: every rank's input is in its slot;
 *   2. reduce: rank r sums its chunk r of the range over all slots, in
 *      rank order, and stores it into its own slot (no one else reads
 *      chunk r of slot r in this step, and no one else writes slot r);
 *      barrier: every chunk is reduced;
 *   3. gather: rank r copies chunk q from slot q into its own slot, for
 *      every q != r; barrier: no one reads slot r any more, so its owner
 *      may overwrite it (the next gradient) as soon as the call returns.
 * Each element is added by exactly one rank, always in rank order, then
 * copied: the result is bitwise identical on every rank and every run.
 *
 * Flags. Rank r's control line holds a counter `epoch` written only by r:
 * the number of barriers r has passed on this window (mod 2^32), and the
 * number of peers asleep waiting for it to change. A barrier
 * is "publish epoch + 1, wait until every peer's epoch >= mine". Counters
 * only grow, so back-to-back calls need no reset: a fast rank already in
 * the next call shows a larger value, which still satisfies a slow peer
 * waiting on the previous barrier, and it cannot get further than one
 * barrier ahead. The store (sequentially consistent, so at least release)
 * orders this rank's plain data stores, and its reads of peers' slots,
 * before the flag; the peer's acquire load orders its data accesses after
 * it. Non-temporal stores are weakly ordered even on x86, so they are
 * fenced (sfence) before a flag is published. MPI_Win_sync + a barrier
 * once after allocation publish the zeroed memory, as MPI's unified model
 * asks; within a call, the C11 atomics on lock-free 32-bit counters do it
 * (MPI_Win_sync plus an MPI barrier per step costs 5-15x a flag barrier,
 * which would cancel the gain on small buffers).
 *
 * Waiting polls, then yields, then sleeps on the peer's counter (a futex
 * on Linux; the owner wakes sleepers when it publishes), as more ranks
 * than cores is common here; it lets MPI progress now and then, and gives
 * up when one barrier has waited MHUB_SHM_TIMEOUT seconds (default 120),
 * with MHUB_ERR_COMM naming the rank that did not arrive: a dead or absent
 * rank must not hang the others forever. The window is unusable after
 * that (the counters are out of step) and calls on it fail until it is
 * freed. */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <unistd.h>

#if defined(__SSE__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include "backends/cpu/shm_internal.h"

#define LINE 64              /* bytes: slot alignment, flag spacing, chunk granule */
#define LINE_FLOATS (LINE / (int)sizeof(float))
#define MAX_WINDOWS 8        /* a DDP engine needs one; tests use a few */
#define DEFAULT_TIMEOUT_S 120.0
#define MAX_TIMEOUT_S 1e9
/* Non-temporal stores for the gather from this many bytes of range on.
 * Streaming skips reading each destination line before writing it, but
 * leaves the result in memory instead of the caches. Measured on a 2-core
 * Zen 4 VM (32 MiB L3), 2 ranks: the all-reduce alone gains 1.3-1.5x with
 * NT from 4 to 64 MiB and loses 1.2-1.7x at 1 MiB. Below the threshold the
 * whole window (n ranges) still fits the L3 and the gradient's next reader
 * (the optimizer) finds it there, which the all-reduce's own time does not
 * show; from 16 MiB at 2 ranks it does not fit anyway. */
#define NT_MIN_BYTES ((size_t)16 << 20)
/* Waiting for a peer: SPIN_POLLS polls first (a peer on its own core
 * usually arrives within them, and anything else is a system call), then
 * yields, then sleeps on the peer's counter. With a core per rank, yielding
 * is fastest (2 ranks, 1 MiB, one rank 50 us late: 73 us yielding, 87-128
 * us sleeping, the wake-up's cost), so it goes on for YIELD_S before the
 * rank sleeps (a long wait: a peer still computing). With more ranks than
 * cores, only sleeping works: under the kernel's EEVDF scheduler a rank
 * that yields can keep the core from the rank it waits for for
 * milliseconds (4 ranks, 2 cores, 1 MiB: median 2.8-6 ms in 4 of 6 runs
 * yielding, 0.1-0.3 ms sleeping after YIELD_POLLS yields). */
#define SPIN_POLLS 64
#define YIELD_POLLS 8
#define YIELD_S 1e-3
/* Longest single sleep: bounds how late a timeout is noticed, not how
 * late a wake-up comes. */
#define DOZE_NS 10000000L
/* Waits between two calls that let MPI progress. */
#define PROGRESS_EVERY 8

static_assert(ATOMIC_INT_LOCK_FREE == 2,
              "flags in shared memory must be lock-free atomics (hence address-free)");
static_assert(sizeof(atomic_uint) == 4, "a futex word is 32 bits");

/* One rank's flags, alone on a cache line so that polling a peer's line
 * does not disturb the owner's writes to its own. */
typedef struct ctrl_line {
    /* barriers this rank has passed on the window, modulo 2^32 (ranks are
     * never more than one apart, so comparing by difference is exact);
     * also the futex word that sleeping peers wait on */
    atomic_uint epoch;
    atomic_uint sleepers; /* peers asleep on `epoch`, for the owner to wake */
    uint64_t offset;      /* this call's range in elements from the slot start, */
    uint64_t count;       /* published by the arrive barrier for a consistency check */
    char pad[LINE - 2 * sizeof(atomic_uint) - 2 * sizeof(uint64_t)];
} ctrl_line;

static_assert(sizeof(ctrl_line) == LINE, "a control line is one cache line");

typedef struct shm_window {
    MPI_Win win;           /* MPI_WIN_NULL: the table entry is free */
    ctrl_line *ctrl;       /* n lines, rank order */
    char *slots;           /* slot 0; slot q at slots + q * slot_bytes */
    size_t bytes;          /* what the caller asked for */
    size_t slot_bytes;     /* bytes rounded up to LINE */
    unsigned epoch;        /* this rank's counter (mirrors its ctrl line) */
    double timeout_s;
    double yield_s;        /* how long a wait yields before it sleeps */
    bool broken;           /* a wait timed out: counters are out of step */
} shm_window;

typedef enum node_state { NODE_UNKNOWN = 0, NODE_SINGLE, NODE_MANY } node_state;

struct mhub_shm {
    node_state node;
    MPI_Comm node_comm;    /* the shared split, kept while NODE_SINGLE */
    shm_window win[MAX_WINDOWS];
};

/* ---- errors ------------------------------------------------------------- */

static mhub_status mpi_failed(const mhub_comm *c, const char *call, const char *mpi_call,
                              int rc)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error code %d", rc);
    return mhub_error(MHUB_ERR_COMM, "%s: %s failed in group \"%s\" (rank %d of %d): %s", call,
                      mpi_call, c->name, c->rank, c->size, msg);
}

/* MHUB_SHM_TIMEOUT: seconds a rank waits for a peer inside the shared-memory
 * all-reduce. Read at each alloc, so every window keeps the value it was
 * made with. The environment is the same on every rank under mpiexec, so a
 * bad value fails everywhere before any communication. */
static mhub_status read_timeout(const mhub_comm *c, double *out)
{
    const char *s = getenv("MHUB_SHM_TIMEOUT");
    *out = DEFAULT_TIMEOUT_S;
    if (s == NULL || *s == '\0')
        return MHUB_OK;
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v > 0.0 && v <= MAX_TIMEOUT_S))
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "mhub_comm_alloc (group \"%s\", rank %d of %d): MHUB_SHM_TIMEOUT=\"%s\" "
                          "is not a number of seconds in (0, %g]",
                          c->name, c->rank, c->size, s, MAX_TIMEOUT_S);
    *out = v;
    return MHUB_OK;
}

/* ---- small MPI helpers -------------------------------------------------- */

/* Complete a nonblocking collective, yielding between polls: a blocking
 * MPI call spins until the scheduler tick when ranks outnumber cores. */
static int mpi_wait_yielding(MPI_Request *req)
{
    int done = 0, rc;
    while ((rc = MPI_Test(req, &done, MPI_STATUS_IGNORE)) == MPI_SUCCESS && !done)
        sched_yield();
    return rc;
}

static int barrier_yielding(MPI_Comm comm)
{
    MPI_Request req;
    int rc = MPI_Ibarrier(comm, &req);
    return rc == MPI_SUCCESS ? mpi_wait_yielding(&req) : rc;
}

/* MIN over the ranks, in place. */
static int allreduce_min_yielding(long long *v, int n, MPI_Comm comm)
{
    MPI_Request req;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_LONG_LONG, MPI_MIN, comm, &req);
    return rc == MPI_SUCCESS ? mpi_wait_yielding(&req) : rc;
}

/* ---- the node decision -------------------------------------------------- */

static mhub_status state_get(mhub_comm *c, mhub_shm **state)
{
    if (*state != NULL)
        return MHUB_OK;
    mhub_shm *st = calloc(1, sizeof *st);
    if (st == NULL)
        return mhub_error(MHUB_ERR_NO_MEMORY,
                          "mhub_comm_alloc (group \"%s\", rank %d): out of memory", c->name,
                          c->rank);
    st->node_comm = MPI_COMM_NULL;
    for (int i = 0; i < MAX_WINDOWS; i++)
        st->win[i].win = MPI_WIN_NULL;
    *state = st;
    return MHUB_OK;
}

/* Split off the ranks that share memory with this one; the window needs
 * all of the communicator there, in the communicator's order (the key is
 * the rank), so slot q is rank q's. All ranks agree on the answer, so a
 * partial split never leaves some ranks allocating a window alone. */
static mhub_status decide_node(mhub_comm *c, MPI_Comm comm, mhub_shm *st)
{
    const char *call = "mhub_comm_alloc";
    MPI_Comm node = MPI_COMM_NULL;
    int rc = MPI_Comm_split_type(comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node);
    if (rc != MPI_SUCCESS)
        return mpi_failed(c, call, "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)", rc);
    int node_size = 0, node_rank = -1;
    rc = MPI_Comm_size(node, &node_size);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_rank(node, &node_rank);
    long long all_here = rc == MPI_SUCCESS && node_size == c->size && node_rank == c->rank;
    if (rc == MPI_SUCCESS)
        rc = allreduce_min_yielding(&all_here, 1, comm);
    if (rc != MPI_SUCCESS) {
        MPI_Comm_free(&node);
        return mpi_failed(c, call, "agreeing on the node", rc);
    }
    if (all_here) {
        st->node = NODE_SINGLE;
        st->node_comm = node;
    } else {
        st->node = NODE_MANY;
        MPI_Comm_free(&node);
    }
    return MHUB_OK;
}

/* ---- windows ------------------------------------------------------------ */

static size_t round_up(size_t x, size_t to)
{
    return (x + to - 1) / to * to;
}

static char *slot_of(const shm_window *w, int rank)
{
    return w->slots + (size_t)rank * w->slot_bytes;
}

/* Window bytes for n slots of slot_bytes, plus the control lines and LINE
 * of slack to align the start; false if that overflows MPI_Aint. */
static bool window_bytes(size_t slot_bytes, int n, size_t *out)
{
    size_t limit = (size_t)PTRDIFF_MAX - (size_t)(n + 1) * LINE;
    if (slot_bytes > limit / (size_t)n)
        return false;
    *out = (size_t)n * slot_bytes + (size_t)(n + 1) * LINE;
    return true;
}

/* Every rank must ask for the same size (the slots must line up) and the
 * window must be addressable. Decided together, so that all ranks fail
 * alike instead of some waiting in MPI_Win_allocate_shared for the rest. */
static mhub_status agree_on_size(mhub_comm *c, MPI_Comm comm, size_t bytes, size_t *total)
{
    const char *call = "mhub_comm_alloc";
    size_t slot_bytes = bytes <= SIZE_MAX - LINE ? round_up(bytes, LINE) : SIZE_MAX;
    long long b = bytes > (size_t)LLONG_MAX ? LLONG_MAX : (long long)bytes;
    /* one MIN reduction: fits everywhere, the smallest size, and (negated)
     * the largest */
    long long v[3] = {window_bytes(slot_bytes, c->size, total), b, -b};
    int rc = allreduce_min_yielding(v, 3, comm);
    if (rc != MPI_SUCCESS)
        return mpi_failed(c, call, "agreeing on the size", rc);
    if (v[1] != -v[2])
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "%s (group \"%s\", rank %d of %d): the ranks asked for different sizes "
                          "(%lld to %lld bytes; this rank %zu); it is collective: every rank "
                          "must ask for the same size",
                          call, c->name, c->rank, c->size, v[1], -v[2], bytes);
    if (!v[0])
        return mhub_error(MHUB_ERR_INVALID_ARG,
                          "%s (group \"%s\", rank %d of %d): %zu bytes per rank times %d ranks "
                          "is more than a shared window can address",
                          call, c->name, c->rank, c->size, bytes, c->size);
    return MHUB_OK;
}

static shm_window *free_entry(mhub_shm *st)
{
    for (int i = 0; i < MAX_WINDOWS; i++)
        if (st->win[i].win == MPI_WIN_NULL)
            return &st->win[i];
    return NULL;
}

/* Collective: MPI_Win_free waits for every rank of the node. */
static int release_window(shm_window *w)
{
    int rc = MPI_Win_unlock_all(w->win);
    int rc_free = MPI_Win_free(&w->win);
    *w = (shm_window){.win = MPI_WIN_NULL};
    return rc != MPI_SUCCESS ? rc : rc_free;
}

/* Rank 0 holds the whole window; every rank maps it and finds the layout
 * from rank 0's base. The passive epoch (lock_all) stays open for the
 * window's life: MPI_Win_sync is only valid inside one. */
static mhub_status map_window(mhub_comm *c, MPI_Comm node, size_t total, shm_window *w)
{
    const char *call = "mhub_comm_alloc";
    char *base = NULL;
    MPI_Aint mine = c->rank == 0 ? (MPI_Aint)total : 0;
    int rc = MPI_Win_allocate_shared(mine, 1, MPI_INFO_NULL, node, &base, &w->win);
    if (rc != MPI_SUCCESS) {
        w->win = MPI_WIN_NULL;
        return mpi_failed(c, call, "MPI_Win_allocate_shared", rc);
    }
    MPI_Aint size = 0;
    int disp = 0;
    const char *failed = "MPI_Win_set_errhandler";
    rc = MPI_Win_set_errhandler(w->win, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS) {
        failed = "MPI_Win_shared_query";
        rc = MPI_Win_shared_query(w->win, 0, &size, &disp, &base);
    }
    if (rc == MPI_SUCCESS) {
        failed = "MPI_Win_lock_all";
        rc = MPI_Win_lock_all(MPI_MODE_NOCHECK, w->win);
    }
    if (rc != MPI_SUCCESS) {
        MPI_Win_free(&w->win);
        w->win = MPI_WIN_NULL;
        return mpi_failed(c, call, failed, rc);
    }
    /* every process maps the segment page-aligned, so the slack needed to
     * reach a line boundary is the same in all of them */
    uintptr_t start = round_up((uintptr_t)base, LINE);
    w->ctrl = (ctrl_line *)start;
    w->slots = (char *)(start + (size_t)c->size * LINE);
    return MHUB_OK;
}

/* Zero this rank's slot and control line, then make everyone's zeroes
 * visible before anyone reads a flag or a slot. */
static mhub_status publish_zeroed(mhub_comm *c, MPI_Comm node, shm_window *w)
{
    memset(slot_of(w, c->rank), 0, w->slot_bytes);
    ctrl_line *me = &w->ctrl[c->rank];
    memset(me, 0, sizeof *me);
    atomic_init(&me->epoch, 0);
    atomic_init(&me->sleepers, 0);
    int rc = MPI_Win_sync(w->win);
    if (rc == MPI_SUCCESS)
        rc = barrier_yielding(node);
    if (rc == MPI_SUCCESS)
        rc = MPI_Win_sync(w->win);
    return rc == MPI_SUCCESS ? MHUB_OK : mpi_failed(c, "mhub_comm_alloc", "MPI_Win_sync", rc);
}

/* More ranks on this node than processors online: waiting ranks must
 * sleep to let the others run (see YIELD_S). */
static bool crowded(int ranks)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus > 0 && ranks > cpus;
}

mhub_status mhub_shm_alloc(mhub_comm *c, MPI_Comm comm, mhub_shm **state, size_t bytes,
                           void **out)
{
    const char *call = "mhub_comm_alloc";
    *out = NULL;
    double timeout_s = 0.0;
    MHUB_TRY(read_timeout(c, &timeout_s));
    MHUB_TRY(state_get(c, state));
    mhub_shm *st = *state;
    shm_window *w = free_entry(st);
    if (w == NULL)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s (group \"%s\", rank %d of %d): all %d shared-memory windows of "
                          "this communicator are in use; free one with mhub_comm_free_mem, or "
                          "allocate this buffer with the backend",
                          call, c->name, c->rank, c->size, MAX_WINDOWS);
    if (st->node == NODE_UNKNOWN)
        MHUB_TRY(decide_node(c, comm, st));
    if (st->node == NODE_MANY)
        return mhub_error(MHUB_ERR_UNSUPPORTED,
                          "%s (group \"%s\", rank %d of %d): the ranks are on more than one "
                          "node, so there is no shared memory for all of them; allocate with "
                          "the backend",
                          call, c->name, c->rank, c->size);
    size_t total = 0;
    MHUB_TRY(agree_on_size(c, comm, bytes, &total));
    MHUB_TRY(map_window(c, st->node_comm, total, w));
    w->bytes = bytes;
    w->slot_bytes = round_up(bytes, LINE);
    w->timeout_s = timeout_s;
    w->yield_s = crowded(c->size) ? 0.0 : YIELD_S;
    mhub_status s = publish_zeroed(c, st->node_comm, w);
    if (s != MHUB_OK) {
        release_window(w);
        return s;
    }
    *out = slot_of(w, c->rank);
    return MHUB_OK;
}

void mhub_shm_free(mhub_comm *c, mhub_shm *state, void *ptr)
{
    for (int i = 0; state != NULL && i < MAX_WINDOWS; i++) {
        shm_window *w = &state->win[i];
        if (w->win != MPI_WIN_NULL && slot_of(w, c->rank) == (char *)ptr) {
            int rc = release_window(w);
            if (rc != MPI_SUCCESS)
                mpi_failed(c, "mhub_comm_free_mem", "MPI_Win_free", rc);
            return;
        }
    }
    mhub_error(MHUB_ERR_INVALID_ARG,
               "mhub_comm_free_mem (group \"%s\", rank %d of %d): %p is not memory that "
               "mhub_comm_alloc returned on this communicator (or it was freed already); "
               "nothing was freed",
               c->name, c->rank, c->size, ptr);
}

void mhub_shm_destroy(mhub_shm *state, bool mpi_alive)
{
    if (state == NULL)
        return;
    for (int i = 0; mpi_alive && i < MAX_WINDOWS; i++)
        if (state->win[i].win != MPI_WIN_NULL)
            release_window(&state->win[i]);
    if (mpi_alive && state->node_comm != MPI_COMM_NULL)
        MPI_Comm_free(&state->node_comm);
    free(state);
}

/* ---- waiting ------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void cpu_relax(void)
{
#if defined(__SSE2__)
    _mm_pause();
#endif
}

static const char *const step_names[] = {"arrive", "reduce", "gather"};

/* A wait that has gone on for a while also lets MPI progress: a peer may be
 * blocked in an MPI operation (on any communicator) that needs this rank's
 * progress engine before it can come here. */
static void let_mpi_progress(MPI_Comm comm)
{
    int flag = 0;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm, &flag, MPI_STATUS_IGNORE);
}

/* Whether a counter value has reached `target` (modulo 2^32). */
static bool reached(unsigned value, unsigned target)
{
    return (int)(value - target) >= 0;
}

#if defined(__linux__)
/* Sleep until *word may differ from `seen` (or `ns` pass). Not the private
 * futex flag: the word is in memory shared between processes. */
static void futex_sleep(atomic_uint *word, unsigned seen, long ns)
{
    struct timespec ts = {.tv_sec = 0, .tv_nsec = ns};
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT, seen, &ts, NULL, 0);
}

static void futex_wake_all(atomic_uint *word)
{
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}
#endif

/* One wait of a long one: sleep on the peer's counter where the system
 * allows, else yield. The sleeper count and the counter are both
 * sequentially consistent, as are the owner's store of the counter and
 * its read of the count (barrier below): so either this rank sees the new
 * value and does not sleep, or the owner sees a sleeper and wakes it. */
static void doze(ctrl_line *peer, unsigned target)
{
#if defined(__linux__)
    atomic_fetch_add(&peer->sleepers, 1);
    unsigned seen = atomic_load(&peer->epoch);
    if (!reached(seen, target))
        futex_sleep(&peer->epoch, seen, DOZE_NS);
    atomic_fetch_sub(&peer->sleepers, 1);
#else
    (void)peer;
    (void)target;
    sched_yield();
#endif
}

static mhub_status timed_out(mhub_comm *c, shm_window *w, int q, int step)
{
    w->broken = true;
    return mhub_error(MHUB_ERR_COMM,
                      "allreduce: shared-memory all-reduce in group \"%s\" (rank %d of %d): "
                      "rank %d did not reach the %s step within %g s (MHUB_SHM_TIMEOUT); it "
                      "died, hangs, or skipped the call. The window is unusable now: free it",
                      c->name, c->rank, c->size, q, step_names[step], w->timeout_s);
}

/* Wait until rank q has passed this rank's barrier count: poll, then
 * yield, then sleep. The clock is read once waiting costs system calls
 * anyway; *since (0: not yet) is when the barrier's waiting began. */
static mhub_status wait_peer(mhub_comm *c, MPI_Comm node, shm_window *w, int q, int step,
                             double *since)
{
    ctrl_line *peer = &w->ctrl[q];
    for (unsigned long polls = 1;; polls++) {
        if (reached(atomic_load_explicit(&peer->epoch, memory_order_acquire), w->epoch))
            return MHUB_OK;
        if (polls <= SPIN_POLLS) {
            cpu_relax();
            continue;
        }
        double t = now_s();
        if (*since == 0.0)
            *since = t;
        if (t - *since > w->timeout_s)
            return timed_out(c, w, q, step);
        if (polls <= SPIN_POLLS + YIELD_POLLS || t - *since < w->yield_s)
            sched_yield();
        else
            doze(peer, w->epoch);
        if (polls % PROGRESS_EVERY == 0)
            let_mpi_progress(node);
    }
}

/* Publish "passed one more barrier" (waking peers asleep on it), then wait
 * for every peer to pass it. */
static mhub_status barrier(mhub_comm *c, MPI_Comm node, shm_window *w, int step)
{
    ctrl_line *me = &w->ctrl[c->rank];
    w->epoch++;
    atomic_store(&me->epoch, w->epoch);
#if defined(__linux__)
    if (atomic_load(&me->sleepers) != 0)
        futex_wake_all(&me->epoch);
#endif
    double since = 0.0;
    for (int q = 0; q < c->size; q++)
        if (q != c->rank)
            MHUB_TRY(wait_peer(c, node, w, q, step, &since));
    return MHUB_OK;
}

/* ---- the arithmetic ----------------------------------------------------- */

/* Elements summed together: one cache line, held in 4 SSE registers
 * across all the slots. The loops over a block are unrolled completely,
 * so gcc -O2 keeps `acc` in registers and packs each group of additions
 * into vector instructions (2.5x faster from L2 than a block kept in
 * memory, measured; equal once memory-bound). */
#define SUM_LANES 16

/* dst[i] = slot 0[i] + slot 1[i] + ... + slot n-1[i], added left to right
 * (the fixed order makes the result independent of who computes it), then
 * divided by `divisor` when it is not 1 (MHUB_AVG: each rank divides its
 * own chunk while it is still in cache, instead of every rank making a
 * later pass over the whole buffer; the same correctly rounded quotient). The slots are `stride` bytes apart from `first`; dst may be
 * one of them, as each block is read completely before it is stored. */
static void sum_slots(float *dst, const char *first, size_t stride, int n, size_t len,
                      float divisor)
{
    if (divisor != 1.0f) {
        sum_slots(dst, first, stride, n, len, 1.0f);
        for (size_t i = 0; i < len; i++)
            dst[i] /= divisor;
        return;
    }
    size_t body = len / SUM_LANES * SUM_LANES;
    for (size_t i = 0; i < body; i += SUM_LANES) {
        float acc[SUM_LANES];
        const float *s0 = (const float *)first + i;
#pragma GCC unroll 16
        for (int k = 0; k < SUM_LANES; k++)
            acc[k] = s0[k];
        for (int q = 1; q < n; q++) {
            const float *s = (const float *)(first + (size_t)q * stride) + i;
#pragma GCC unroll 16
            for (int k = 0; k < SUM_LANES; k++)
                acc[k] += s[k];
        }
#pragma GCC unroll 16
        for (int k = 0; k < SUM_LANES; k++)
            dst[i + k] = acc[k];
    }
    for (size_t i = body; i < len; i++) {
        float acc = ((const float *)first)[i];
        for (int q = 1; q < n; q++)
            acc += ((const float *)(first + (size_t)q * stride))[i];
        dst[i] = acc;
    }
}

/* memcpy, or non-temporal stores that bypass the caches: for a range
 * larger than the caches the result is evicted before it is read anyway,
 * and streaming saves reading each destination line first. */
static void copy_floats(float *dst, const float *src, size_t len, bool nt)
{
#if defined(__SSE__)
    if (nt) {
        size_t i = 0;
        for (; i < len && ((uintptr_t)(dst + i) & 15) != 0; i++)
            dst[i] = src[i];
        for (; i + 16 <= len; i += 16)
            for (int k = 0; k < 16; k += 4)
                _mm_stream_ps(dst + i + k, _mm_loadu_ps(src + i + k));
        for (; i < len; i++)
            dst[i] = src[i];
        return;
    }
#else
    (void)nt;
#endif
    memcpy(dst, src, len * sizeof(float));
}

/* Streaming stores are not ordered by a release store: fence them before
 * the flag that tells peers the data is there. */
static void fence_streams(bool nt)
{
#if defined(__SSE__)
    if (nt)
        _mm_sfence();
#else
    (void)nt;
#endif
}

/* Rank r's chunk of the range [off, off + count) starts here. Boundaries
 * fall on whole lines of the slot, so the lines a rank writes in its slot
 * (its chunk) are never lines its peers read there in the same step; they
 * are clamped to the range, and ranks past its end get an empty chunk. */
static size_t chunk_start(size_t off, size_t count, int n, int r)
{
    if (r == 0)
        return off;
    if (r >= n)
        return off + count;
    size_t per = (count + (size_t)n - 1) / (size_t)n;
    size_t b = round_up(off + per * (size_t)r, LINE_FLOATS);
    return b < off + count ? b : off + count;
}

/* After the arrive barrier every rank reads all published ranges: if they
 * differ, each rank sees at least one peer unlike itself, so all of them
 * fail together. */
static bool same_range(const shm_window *w, int n, uint64_t off, uint64_t count)
{
    for (int q = 0; q < n; q++)
        if (w->ctrl[q].offset != off || w->ctrl[q].count != count)
            return false;
    return true;
}

static mhub_status range_mismatch(mhub_comm *c, MPI_Comm node, shm_window *w, uint64_t off,
                                  uint64_t count)
{
    /* one more barrier, so nobody rewrites its range (next call) while a
     * peer still compares it, and the counters stay in step */
    MHUB_TRY(barrier(c, node, w, 2));
    return mhub_error(MHUB_ERR_INVALID_ARG,
                      "allreduce: group \"%s\" (rank %d of %d): the ranks passed different "
                      "ranges of their shared-memory slots (this rank: %llu elements at "
                      "element %llu); every rank must pass the same offset and count",
                      c->name, c->rank, c->size, (unsigned long long)count,
                      (unsigned long long)off);
}

static mhub_status reduce_in_window(mhub_comm *c, MPI_Comm node, shm_window *w, size_t off,
                                    size_t count, float divisor)
{
    int n = c->size, r = c->rank;
    ctrl_line *me = &w->ctrl[r];
    me->offset = off;
    me->count = count;
    MHUB_TRY(barrier(c, node, w, 0));
    if (!same_range(w, n, off, count))
        return range_mismatch(c, node, w, off, count);

    float *mine = (float *)slot_of(w, r);
    size_t b = chunk_start(off, count, n, r), e = chunk_start(off, count, n, r + 1);
    sum_slots(mine + b, w->slots + b * sizeof(float), w->slot_bytes, n, e - b, divisor);
    MHUB_TRY(barrier(c, node, w, 1));

    bool nt = count * sizeof(float) >= NT_MIN_BYTES;
    for (int q = 0; q < n; q++) {
        if (q == r)
            continue;
        size_t qb = chunk_start(off, count, n, q), qe = chunk_start(off, count, n, q + 1);
        copy_floats(mine + qb, (const float *)slot_of(w, q) + qb, qe - qb, nt);
    }
    fence_streams(nt);
    return barrier(c, node, w, 2);
}

/* The window whose slot (this rank's, as asked for) holds the whole byte
 * range, and the range's start in elements; NULL if none. */
static shm_window *find_range(mhub_shm *st, int rank, const void *buf, size_t bytes,
                              size_t *off)
{
    uintptr_t p = (uintptr_t)buf;
    for (int i = 0; i < MAX_WINDOWS; i++) {
        shm_window *w = &st->win[i];
        if (w->win == MPI_WIN_NULL)
            continue;
        uintptr_t s = (uintptr_t)slot_of(w, rank);
        if (p < s || bytes > w->bytes || p - s > w->bytes - bytes || (p - s) % sizeof(float))
            continue;
        *off = (p - s) / sizeof(float);
        return w;
    }
    return NULL;
}

mhub_status mhub_shm_allreduce(mhub_comm *c, mhub_shm *state, float *buf, int64_t count,
                               float divisor, bool *used)
{
    *used = false;
    if (state == NULL || count <= 0)
        return MHUB_OK;
    size_t off = 0;
    shm_window *w = find_range(state, c->rank, buf, (size_t)count * sizeof(float), &off);
    if (w == NULL)
        return MHUB_OK;
    *used = true;
    if (w->broken)
        return mhub_error(MHUB_ERR_STATE,
                          "allreduce: group \"%s\" (rank %d of %d): this shared-memory window "
                          "timed out in an earlier all-reduce and its ranks are out of step; "
                          "free it (mhub_comm_free_mem) and allocate a new one",
                          c->name, c->rank, c->size);
    /* one rank: the sum is the slot itself */
    if (c->size == 1)
        return MHUB_OK;
    return reduce_in_window(c, state->node_comm, w, off, (size_t)count, divisor);
}
