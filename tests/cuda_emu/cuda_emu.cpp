/* cuda_emu.cpp - the CPU emulator's runtime: memory, streams, errors and
 * kernel launches (see cuda_runtime.h for what it is and is not).
 *
 * Streams are queues of work items, run as late as CUDA allows. A stream
 * numbers its items as they are queued; running it "up to" a number runs
 * its items in order until that many have run. An event is such a number
 * in one stream; a cudaStreamWaitEvent is an item that runs the event's
 * stream up to it. Items run on the calling thread inside the call that
 * forces them (a synchronization, a device-to-host copy); a stream
 * reached again while its own item runs means two streams wait for each
 * other, which hangs a GPU, and is reported as a device fault.
 *
 * The legacy NULL stream's order with the blocking streams is kept when
 * work is queued: an item for the NULL stream is preceded by a wait for
 * every blocking stream's queued work, an item for a blocking stream by
 * a wait for the NULL stream's.
 *
 * A launch runs its blocks one after another. A block's threads are
 * fibers (ucontext), switched only at barriers: __syncthreads, and the
 * warp intrinsics (shuffles, ballots, __syncwarp), which wait for the
 * warp. The scheduler runs a block a warp at a time: between two
 * __syncthreads it takes the first warp as far as it goes (its lanes in
 * turn, each to its next barrier, until all wait at __syncthreads or have
 * returned), then the next warp, and so on. So a warp that reads shared
 * memory another warp writes later in the same stretch reads it too
 * early, whatever warp-level operations stand between; with
 * MHUB_EMU_THREAD_ORDER=reverse the warps, and the lanes within each,
 * run in reverse, so the hazard in the other direction shows too. A
 * fiber whose thread finished takes the warp's next thread not yet
 * started, so a kernel without barriers runs a warp on one fiber. If no
 * fiber can move, the block is stuck (a barrier that not every thread
 * reaches) and the device faults with a message; so it does when a
 * warp's lanes made different wmma operations (mma.h). */
#include <ucontext.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <vector>

#include "cuda_runtime.h"

thread_local uint3 threadIdx, blockIdx;
thread_local dim3 blockDim, gridDim;
alignas(16) thread_local float smem[MHUB_EMU_MAX_SHARED_BYTES / sizeof(float)];

/* g++ (12) reads a thread_local declared `extern` inside a function
 * template through its initialization function and, there only, calls it
 * without first checking that one exists. smem needs no initialization;
 * this is the empty function those calls find. */
void smem_tls_init() __asm__("_ZTH4smem");
void smem_tls_init() {}

namespace {

/* ---- errors ---- */

/* What cudaGetLastError returns next (and clears). */
cudaError_t last_error = cudaSuccess;
/* A kernel that failed leaves the emulated device unusable, as a real
 * fault does: every later call that waits returns it, and queued work no
 * longer runs. */
cudaError_t sticky_error = cudaSuccess;

cudaError_t fail(cudaError_t err, const char *what)
{
    std::fprintf(stderr, "cuda emulator: %s\n", what);
    last_error = err;
    return err;
}

/* ---- devices: several, each process with its own ---- */

/* A node's worth of devices, so that ranks sharing a machine each take
 * their local rank's, as on a GPU node (MHUB_EMU_DEVICES sets how many).
 * They are names only: every process emulates one memory and one set of
 * queues whichever device is current, and a process sees only its own. */
const int default_device_count = 8;
const int max_device_count = 1024;
int current_device = 0;

int device_count()
{
    static int count = 0;
    if (count == 0) {
        const char *v = std::getenv("MHUB_EMU_DEVICES");
        char *end = nullptr;
        long n = v != nullptr ? std::strtol(v, &end, 10) : 0;
        bool valid = v != nullptr && end != v && *end == '\0' && n >= 1 && n <= max_device_count;
        if (v != nullptr && !valid)
            std::fprintf(stderr, "cuda emulator: MHUB_EMU_DEVICES=\"%s\" is not a count in "
                         "[1, %d]; using %d\n", v, max_device_count, default_device_count);
        count = valid ? (int)n : default_device_count;
    }
    return count;
}

/* ---- memory: host memory, with the blocks remembered ---- */

const size_t total_memory = (size_t)16 << 30;
size_t allocated = 0;
/* What a cudaMalloc block is: its size and the device current when it
 * was made (the device cudaPointerGetAttributes names). */
struct block_info {
    size_t bytes;
    int device;
};
std::map<uintptr_t, block_info> blocks; /* by base address */

/* The block holding [p, p + bytes), or null. */
const block_info *block_holding(const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p;
    auto it = blocks.upper_bound(a);
    if (it == blocks.begin())
        return nullptr;
    --it;
    size_t size = it->second.bytes;
    bool inside = a - it->first <= size && bytes <= size - (a - it->first);
    return inside ? &it->second : nullptr;
}

bool is_device_range(const void *p, size_t bytes)
{
    return block_holding(p, bytes) != nullptr;
}

cudaError_t check_device(const void *p, size_t bytes, const char *call)
{
    if (bytes == 0 || is_device_range(p, bytes))
        return cudaSuccess;
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s: %zu bytes at %p are not device memory", call, bytes, p);
    return fail(cudaErrorInvalidValue, msg);
}

/* Found while queued work runs: the device is done for, and the host
 * learns it at its next wait. */
void device_fault(cudaError_t err, const char *what)
{
    std::fprintf(stderr, "cuda emulator: %s\n", what);
    sticky_error = last_error = err;
}

} // namespace

/* ---- streams: queues of work ---- */

using work_item = std::function<void()>; /* empty: a place an event marks */

struct mhub_emu_stream {
    unsigned long id; /* never reused: a wait names its stream by it */
    bool blocking;    /* ordered with the NULL stream */
    std::deque<work_item> queue;
    uint64_t queued, ran; /* items queued and run so far */
    bool running;
};

namespace {

mhub_emu_stream null_stream{0, true, {}, 0, 0, false};
unsigned long streams_made = 0;
std::map<unsigned long, mhub_emu_stream *> live_streams = {{0, &null_stream}};

bool is_stream(cudaStream_t s)
{
    if (!s)
        return true; /* the default stream */
    for (const auto &live : live_streams)
        if (live.second == s)
            return true;
    return false;
}

mhub_emu_stream &stream_of(cudaStream_t s) { return s ? *s : null_stream; }

/* Runs s's items until `position` of them have run. */
void run_until(mhub_emu_stream &s, uint64_t position)
{
    if (s.ran >= position)
        return;
    if (s.running) {
        device_fault(cudaErrorLaunchFailure, "two streams wait for each other (each "
                     "cudaStreamWaitEvent names an event the other stream records later): "
                     "a GPU would hang");
        return;
    }
    s.running = true;
    while (s.ran < position) {
        work_item item = std::move(s.queue.front());
        s.queue.pop_front();
        /* a faulted device runs nothing more */
        if (item && sticky_error == cudaSuccess)
            item();
        s.ran++;
    }
    s.running = false;
}

void run_all(mhub_emu_stream &s) { run_until(s, s.queued); }

/* The stream with this id, run up to `position`; a destroyed stream ran
 * all its work when it was destroyed. */
void run_stream_until(unsigned long id, uint64_t position)
{
    auto it = live_streams.find(id);
    if (it != live_streams.end())
        run_until(*it->second, position);
}

uint64_t push(mhub_emu_stream &s, work_item item)
{
    s.queue.push_back(std::move(item));
    return ++s.queued;
}

void push_wait(mhub_emu_stream &s, const mhub_emu_stream &on)
{
    if (on.queued > on.ran)
        push(s, [id = on.id, position = on.queued] { run_stream_until(id, position); });
}

/* Queues `item` on s behind the waits the legacy NULL stream implies;
 * returns its position. */
uint64_t enqueue(mhub_emu_stream &s, work_item item)
{
    if (&s == &null_stream) {
        for (const auto &live : live_streams)
            if (live.second != &null_stream && live.second->blocking)
                push_wait(s, *live.second);
    } else if (s.blocking) {
        push_wait(s, null_stream);
    }
    return push(s, std::move(item));
}

void run_everything()
{
    for (const auto &live : live_streams)
        run_all(*live.second);
}

} // namespace

/* ---- events: a place in one stream's queue ---- */

struct mhub_emu_event {
    unsigned long stream_id;
    uint64_t position; /* 0: never recorded */
};

namespace {

std::vector<cudaEvent_t> events;

bool is_event(cudaEvent_t e)
{
    for (cudaEvent_t t : events)
        if (t == e)
            return true;
    return false;
}

bool is_complete(const mhub_emu_event &e)
{
    auto it = live_streams.find(e.stream_id);
    return e.position == 0 || it == live_streams.end() || it->second->ran >= e.position;
}

/* ---- fibers ---- */

const size_t fiber_stack_bytes = (size_t)256 << 10;

struct barrier {
    unsigned expected, arrived, generation;
};

struct fiber {
    ucontext_t context;
    char *stack;
    uint3 thread;                /* the CUDA thread it runs now */
    unsigned linear;             /* that thread's linear index in the block */
    const unsigned *waits_on;    /* a barrier's generation, while waiting */
    unsigned waits_for_change_of;
    bool done;
};

/* A warp collective (a wmma operation) as one lane made it: every lane
 * of the warp must make the same ones, in the same order. */
struct collective {
    const char *op;
    const void *ptr;
    unsigned stride_bytes;
    bool operator!=(const collective &o) const
    {
        return std::strcmp(op, o.op) != 0 || ptr != o.ptr || stride_bytes != o.stride_bytes;
    }
};

/* The block being run and its scheduler. */
struct block_run {
    const std::function<void()> *body; /* one CUDA thread's work */
    unsigned threads;
    /* the threads of the warp being started, in start order, and the next */
    unsigned starting[32], starting_count, starting_next;
    barrier whole_block;
    barrier warp[32];
    /* warp_exchange's posts, two sets used in turn so a lane's next post
     * cannot overwrite a value another lane has still to read */
    uint64_t posts[2][32][32];
    /* each thread's collectives since its warp last met */
    std::vector<collective> collectives[1024];
    bool diverged; /* a warp's lanes made different collectives */
    fiber *current;
    ucontext_t scheduler;
};

block_run *running;

const size_t guard_bytes = 4096;

/* Fibers between blocks, kept for the next one; freed at exit. */
struct fiber_pool {
    std::vector<fiber *> idle;
    ~fiber_pool()
    {
        for (fiber *f : idle) {
            munmap(f->stack - guard_bytes, fiber_stack_bytes + guard_bytes);
            delete f;
        }
    }
} pool;
std::vector<fiber *> &idle_fibers = pool.idle;

fiber *new_fiber()
{
    if (!idle_fibers.empty()) {
        fiber *f = idle_fibers.back();
        idle_fibers.pop_back();
        return f;
    }
    /* a guard page below the stack turns an overflow into a fault */
    void *m = mmap(nullptr, fiber_stack_bytes + guard_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        std::perror("cuda emulator: mmap of a fiber stack");
        std::abort(); /* a test harness out of memory cannot go on */
    }
    mprotect(m, guard_bytes, PROT_NONE);
    fiber *f = new fiber();
    f->stack = (char *)m + guard_bytes;
    return f;
}

/* Whether a block's threads start from the last (MHUB_EMU_THREAD_ORDER). */
bool threads_reversed()
{
    static const int reversed = [] {
        const char *order = std::getenv("MHUB_EMU_THREAD_ORDER");
        if (!order || !*order || std::strcmp(order, "forward") == 0)
            return 0;
        if (std::strcmp(order, "reverse") == 0)
            return 1;
        std::fprintf(stderr, "cuda emulator: MHUB_EMU_THREAD_ORDER = '%s': expected forward "
                     "or reverse\n", order);
        std::abort(); /* a test harness set up wrong cannot judge anything */
    }();
    return reversed != 0;
}

uint3 thread_of(unsigned linear)
{
    return uint3{linear % blockDim.x, linear / blockDim.x % blockDim.y,
                 linear / (blockDim.x * blockDim.y)};
}

/* A fiber's life: CUDA threads of the warp being started, one after
 * another, until none is left to start; returning switches to the
 * scheduler (uc_link). */
void fiber_main()
{
    block_run &b = *running;
    fiber *me = b.current;
    while (b.starting_next < b.starting_count) {
        me->linear = b.starting[b.starting_next++];
        me->thread = thread_of(me->linear);
        threadIdx = me->thread;
        (*b.body)();
    }
    me->done = true;
}

/* The lanes of warp w made the same collectives since they last met:
 * checked when they meet again (a warp barrier, __syncthreads, the end
 * of the block), then forgotten. */
void check_collectives(block_run &b, unsigned w)
{
    unsigned first = 32 * w, last = std::min(b.threads, first + 32);
    for (unsigned t = first + 1; t < last && !b.diverged; t++) {
        const std::vector<collective> &a = b.collectives[first], &c = b.collectives[t];
        for (size_t i = 0; i < std::max(a.size(), c.size()); i++) {
            if (i < a.size() && i < c.size() && !(a[i] != c[i]))
                continue;
            std::fprintf(stderr, "cuda emulator: block (%u, %u, %u), warp %u: lane %u's "
                         "warp operation %zu is %s (%p, stride %u bytes), lane %u's %s (%p, "
                         "stride %u bytes); every lane must make the same ones\n",
                         blockIdx.x, blockIdx.y, blockIdx.z, w, 0u, i,
                         i < a.size() ? a[i].op : "none", i < a.size() ? a[i].ptr : nullptr,
                         i < a.size() ? a[i].stride_bytes : 0u, t - first,
                         i < c.size() ? c[i].op : "none", i < c.size() ? c[i].ptr : nullptr,
                         i < c.size() ? c[i].stride_bytes : 0u);
            b.diverged = true;
            break;
        }
    }
    for (unsigned t = first; t < last; t++)
        b.collectives[t].clear();
}

void check_all_collectives(block_run &b)
{
    for (unsigned w = 0; 32 * w < b.threads; w++)
        check_collectives(b, w);
}

void start(block_run &b, fiber *f)
{
    getcontext(&f->context);
    f->context.uc_stack.ss_sp = f->stack;
    f->context.uc_stack.ss_size = fiber_stack_bytes;
    f->context.uc_link = &b.scheduler;
    makecontext(&f->context, fiber_main, 0);
    f->done = false;
    f->waits_on = nullptr;
    b.current = f;
    swapcontext(&b.scheduler, &f->context);
}

void resume(block_run &b, fiber *f)
{
    b.current = f;
    threadIdx = f->thread;
    swapcontext(&b.scheduler, &f->context);
}

/* Arrive; the last arrival opens the barrier, the others wait for that.
 * At __syncthreads the last arrival hands back to the scheduler too, so
 * that the next stretch starts again from the first warp. */
void arrive_and_wait(barrier &bar)
{
    block_run &b = *running;
    fiber *me = b.current;
    unsigned generation = bar.generation;
    if (++bar.arrived == bar.expected) {
        bar.arrived = 0;
        bar.generation++;
        if (&bar != &b.whole_block) {
            check_collectives(b, me->linear / 32);
            return;
        }
        check_all_collectives(b);
    }
    me->waits_on = &bar.generation;
    me->waits_for_change_of = generation;
    swapcontext(&me->context, &b.scheduler);
    me->waits_on = nullptr;
}

/* The block's warps in the order they run (the reverse with
 * MHUB_EMU_THREAD_ORDER=reverse), and the threads of warp w likewise. */
unsigned warp_at(const block_run &b, unsigned i)
{
    unsigned warps = (b.threads + 31) / 32;
    return threads_reversed() ? warps - 1 - i : i;
}

void start_warp(block_run &b, unsigned w, std::vector<fiber *> &waiting)
{
    unsigned first = 32 * w, lanes = std::min(32u, b.threads - first);
    for (unsigned l = 0; l < lanes; l++)
        b.starting[l] = first + (threads_reversed() ? lanes - 1 - l : l);
    b.starting_count = lanes;
    b.starting_next = 0;
    while (b.starting_next < b.starting_count && !b.diverged) {
        fiber *f = new_fiber();
        start(b, f);
        (f->done ? idle_fibers : waiting).push_back(f);
    }
}

/* Resumes the warp's fibers whose barrier has opened, again and again,
 * until none can move or __syncthreads opens (the next stretch then
 * starts from the first warp). True when one moved. */
bool drive_warp(block_run &b, std::vector<fiber *> &waiting)
{
    const unsigned stretch = b.whole_block.generation;
    bool moved_any = false, moved = true;
    std::vector<fiber *> still;
    while (moved && b.whole_block.generation == stretch && !b.diverged) {
        moved = false;
        still.clear();
        for (fiber *f : waiting) {
            if (*f->waits_on == f->waits_for_change_of || b.diverged ||
                b.whole_block.generation != stretch) {
                still.push_back(f);
                continue;
            }
            resume(b, f);
            moved = moved_any = true;
            (f->done ? idle_fibers : still).push_back(f);
        }
        waiting.swap(still);
    }
    return moved_any;
}

void report_stuck(const block_run &b, const std::vector<fiber *> *waiting, unsigned warps)
{
    size_t at_block = 0, stuck = 0;
    for (unsigned w = 0; w < warps; w++)
        for (const fiber *f : waiting[w]) {
            stuck++;
            at_block += f->waits_on == &b.whole_block.generation;
        }
    std::fprintf(stderr,
                 "cuda emulator: block (%u, %u, %u) is stuck: %zu of its %u threads wait at "
                 "__syncthreads and %zu at a warp intrinsic; the others have returned (a "
                 "barrier that not every thread reaches)\n",
                 blockIdx.x, blockIdx.y, blockIdx.z, at_block, b.threads, stuck - at_block);
}

/* Runs one block, a warp at a time: each stretch between two
 * __syncthreads runs the first warp as far as it goes, then the next, so
 * a warp that reads what a later warp writes in the same stretch reads it
 * too early, whatever warp-level operations stand between. False when
 * the block got stuck or a warp's lanes diverged. */
bool run_block(block_run &b)
{
    const unsigned warps = (b.threads + 31) / 32;
    std::vector<fiber *> waiting[32];
    b.diverged = false;
    for (unsigned i = 0; i < warps && !b.diverged; i++) {
        unsigned w = warp_at(b, i);
        start_warp(b, w, waiting[w]);
        drive_warp(b, waiting[w]);
    }
    for (;;) {
        bool moved = false, left = false;
        for (unsigned i = 0; i < warps && !b.diverged; i++) {
            const unsigned stretch = b.whole_block.generation;
            moved = drive_warp(b, waiting[warp_at(b, i)]) || moved;
            if (b.whole_block.generation != stretch)
                break; /* __syncthreads opened: the next stretch starts at the first warp */
        }
        for (unsigned w = 0; w < warps; w++)
            left = left || !waiting[w].empty();
        if (!left && !b.diverged) {
            check_all_collectives(b); /* the lanes that returned last */
            if (!b.diverged)
                return true;
        }
        if (b.diverged || !moved) {
            if (!b.diverged)
                report_stuck(b, waiting, warps);
            /* the fibers are abandoned: their stacks are reused */
            for (unsigned w = 0; w < warps; w++)
                for (fiber *f : waiting[w])
                    idle_fibers.push_back(f);
            return false;
        }
    }
}

/* ---- launches ---- */

std::map<const void *, size_t> shared_allowance; /* per kernel, from cudaFuncSetAttribute */

cudaError_t check_shape(const mhub_emu::launch_config &c)
{
    char msg[200];
    const dim3 &g = c.grid, &t = c.block;
    unsigned long long threads = (unsigned long long)t.x * t.y * t.z;
    if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535 ||
        threads == 0 || threads > 1024 || t.x > 1024 || t.y > 1024 || t.z > 64) {
        std::snprintf(msg, sizeof msg, "launch of grid (%u, %u, %u) x block (%u, %u, %u): not a "
                      "shape CUDA accepts", g.x, g.y, g.z, t.x, t.y, t.z);
        return fail(cudaErrorInvalidConfiguration, msg);
    }
    auto it = shared_allowance.find(c.kernel);
    size_t allowed = it != shared_allowance.end() ? it->second : MHUB_EMU_DEFAULT_SHARED_BYTES;
    if (c.shared_bytes > allowed) {
        std::snprintf(msg, sizeof msg, "launch with %zu bytes of dynamic shared memory: the "
                      "kernel is allowed %zu (cudaFuncSetAttribute)", c.shared_bytes, allowed);
        return fail(cudaErrorInvalidValue, msg);
    }
    if (!is_stream(c.stream))
        return fail(cudaErrorInvalidResourceHandle, "launch on a stream that does not exist");
    return cudaSuccess;
}

/* Runs body as every thread of the grid; a stuck block faults the device. */
void run_grid(const mhub_emu::launch_config &c, const std::function<void()> &body)
{
    gridDim = c.grid;
    blockDim = c.block;
    block_run b;
    b.body = &body;
    b.threads = c.block.x * c.block.y * c.block.z;
    block_run *outer = running;
    running = &b;
    for (unsigned z = 0; z < c.grid.z; z++)
        for (unsigned y = 0; y < c.grid.y; y++)
            for (unsigned x = 0; x < c.grid.x; x++) {
                blockIdx = uint3{x, y, z};
                b.whole_block = barrier{b.threads, 0, 0};
                for (unsigned w = 0; w < 32; w++) {
                    unsigned first = 32 * w;
                    unsigned lanes = first < b.threads ? b.threads - first : 0;
                    b.warp[w] = barrier{lanes < 32 ? lanes : 32, 0, 0};
                }
                /* NaN bytes: a kernel that reads shared memory it did not
                 * write sees NaN, not the previous block's values */
                memset(smem, 0xff, c.shared_bytes);
                if (!run_block(b)) {
                    sticky_error = last_error = cudaErrorLaunchFailure; /* said why above */
                    running = outer;
                    return;
                }
            }
    running = outer;
}

} // namespace

namespace mhub_emu {

void launch_grid(const launch_config &c, std::function<void()> thread_body)
{
    if (sticky_error != cudaSuccess) {
        last_error = sticky_error;
        return;
    }
    if (check_shape(c) != cudaSuccess)
        return;
    enqueue(stream_of(c.stream),
            [c, body = std::move(thread_body)] { run_grid(c, body); });
}

void sync_block() { arrive_and_wait(running->whole_block); }

unsigned lane_id() { return running->current->linear % 32; }

void warp_collective(const char *op, const void *ptr, unsigned stride_bytes)
{
    running->collectives[running->current->linear].push_back(collective{op, ptr, stride_bytes});
}

void warp_exchange(unsigned mask, uint64_t mine, uint64_t all[32])
{
    block_run &b = *running;
    unsigned linear = b.current->linear, w = linear / 32;
    barrier &bar = b.warp[w];
    unsigned present = bar.expected == 32 ? 0xffffffffu : (1u << bar.expected) - 1;
    if ((mask & present) != present || (mask & ~present) != 0) {
        std::fprintf(stderr, "cuda emulator: warp intrinsic with mask %#x in a warp of %u "
                     "threads: the emulator runs whole warps only\n", mask, bar.expected);
        std::abort(); /* a kernel this harness cannot judge */
    }
    /* the set this round uses; the barrier's next round uses the other */
    uint64_t(&posts)[32] = b.posts[bar.generation & 1][w];
    posts[linear % 32] = mine;
    arrive_and_wait(bar);
    for (unsigned lane = 0; lane < 32; lane++)
        all[lane] = lane < bar.expected ? posts[lane] : 0; /* lanes beyond the block: none */
}

cudaError_t set_max_dynamic_shared(const void *kernel, enum cudaFuncAttribute attr, int bytes)
{
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || bytes < 0)
        return fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: an attribute it does not know");
    if ((size_t)bytes > MHUB_EMU_MAX_SHARED_BYTES) {
        char msg[160];
        std::snprintf(msg, sizeof msg, "cudaFuncSetAttribute: %d bytes of shared memory; the "
                      "emulated device offers %u", bytes, MHUB_EMU_MAX_SHARED_BYTES);
        return fail(cudaErrorInvalidValue, msg);
    }
    shared_allowance[kernel] = (size_t)bytes;
    return cudaSuccess;
}

} // namespace mhub_emu

/* ---- the runtime API ---- */

extern "C" {

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = device_count();
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    if (device < 0 || device >= device_count())
        return fail(cudaErrorInvalidDevice, "cudaSetDevice: no such device");
    current_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device)
{
    *device = current_device;
    return cudaSuccess;
}

/* Every emulated device is the same device. */
cudaError_t cudaDeviceGetAttribute(int *value, enum cudaDeviceAttr attr, int device)
{
    if (device < 0 || device >= device_count())
        return fail(cudaErrorInvalidDevice, "cudaDeviceGetAttribute: no such device");
    if (attr != cudaDevAttrMaxSharedMemoryPerBlockOptin)
        return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute: an attribute it does not know");
    *value = (int)MHUB_EMU_MAX_SHARED_BYTES;
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = total_memory - allocated;
    *total_bytes = total_memory;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
    *ptr = nullptr;
    if (bytes > total_memory - allocated)
        return fail(cudaErrorMemoryAllocation, "cudaMalloc: more than the emulated 16 GiB");
    /* Untouched pages cost nothing, so a large pool is cheap. The block
     * is exactly `bytes` long, so that AddressSanitizer, in a sanitized
     * build, stops a kernel at the first byte past it. */
    void *p = nullptr;
    if (posix_memalign(&p, 256, bytes ? bytes : 1) != 0)
        return fail(cudaErrorMemoryAllocation, "cudaMalloc: the host is out of memory");
    blocks[(uintptr_t)p] = block_info{bytes, current_device};
    allocated += bytes;
    *ptr = p;
    return cudaSuccess;
}

/* CUDA's cudaFree waits for the whole device first: no queued work may
 * still use the block. */
cudaError_t cudaFree(void *ptr)
{
    if (!ptr)
        return cudaSuccess;
    auto it = blocks.find((uintptr_t)ptr);
    if (it == blocks.end())
        return fail(cudaErrorInvalidValue, "cudaFree: not a cudaMalloc block");
    run_everything();
    allocated -= it->second.bytes;
    blocks.erase(it);
    std::free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *ptr, int value, size_t bytes, cudaStream_t stream)
{
    if (!is_stream(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaMemsetAsync: no such stream");
    cudaError_t err = check_device(ptr, bytes, "cudaMemsetAsync");
    if (err == cudaSuccess && bytes)
        enqueue(stream_of(stream), [ptr, value, bytes] { memset(ptr, value, bytes); });
    return err;
}

/* On the legacy NULL stream; the host does not wait for it. */
cudaError_t cudaMemset(void *ptr, int value, size_t bytes)
{
    return cudaMemsetAsync(ptr, value, bytes, nullptr);
}

/* static: inside extern "C" an unnamed namespace does not hide a name */
namespace {

static enum cudaMemcpyKind kind_of(const void *dst, const void *src)
{
    bool from_device = is_device_range(src, 1), to_device = is_device_range(dst, 1);
    return from_device ? (to_device ? cudaMemcpyDeviceToDevice : cudaMemcpyDeviceToHost)
                       : (to_device ? cudaMemcpyHostToDevice : cudaMemcpyHostToHost);
}

static cudaError_t check_copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    cudaError_t err = cudaSuccess;
    if (kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice)
        err = check_device(src, bytes, "cudaMemcpy (source)");
    if (err == cudaSuccess && (kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice))
        err = check_device(dst, bytes, "cudaMemcpy (destination)");
    return err;
}

/* CUDA's rules for pageable host memory (the emulator has no other): the
 * host's bytes are staged at the call, so the caller may reuse its
 * buffer at once; a copy to the host returns once it has run; a copy
 * between device buffers is only queued. */
static cudaError_t queue_copy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                       mhub_emu_stream &s)
{
    if (kind == cudaMemcpyHostToDevice) {
        std::vector<unsigned char> staged((const unsigned char *)src,
                                          (const unsigned char *)src + bytes);
        enqueue(s, [dst, staged = std::move(staged)] { memcpy(dst, staged.data(), staged.size()); });
        return cudaSuccess;
    }
    uint64_t position = enqueue(s, [dst, src, bytes] { memmove(dst, src, bytes); });
    if (kind == cudaMemcpyDeviceToDevice)
        return cudaSuccess;
    run_until(s, position);
    return sticky_error;
}

} // namespace

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind,
                            cudaStream_t stream)
{
    if (sticky_error != cudaSuccess)
        return sticky_error;
    if (!is_stream(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaMemcpyAsync: no such stream");
    if (kind == cudaMemcpyDefault)
        kind = kind_of(dst, src);
    cudaError_t err = check_copy(dst, src, bytes, kind);
    if (err != cudaSuccess || bytes == 0)
        return err;
    return queue_copy(dst, src, bytes, kind, stream_of(stream));
}

/* On the legacy NULL stream, with the same rules as the asynchronous
 * copy for pageable memory. */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags)
{
    if ((flags & ~cudaStreamNonBlocking) != 0)
        return fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: flags it does not know");
    unsigned long id = ++streams_made;
    *stream = new mhub_emu_stream{id, (flags & cudaStreamNonBlocking) == 0, {}, 0, 0, false};
    live_streams[id] = *stream;
    return cudaSuccess;
}

/* As CUDA: the work already queued still runs. */
cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    if (!stream || !is_stream(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: no such stream");
    run_all(*stream);
    live_streams.erase(stream->id);
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    if (!is_stream(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: no such stream");
    run_all(stream_of(stream));
    return sticky_error;
}

cudaError_t cudaDeviceSynchronize(void)
{
    run_everything();
    return sticky_error;
}

cudaError_t cudaDeviceGetStreamPriorityRange(int *least, int *greatest)
{
    *least = 0;
    *greatest = 0;
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithPriority(cudaStream_t *stream, unsigned flags, int priority)
{
    if (priority != 0)
        return fail(cudaErrorInvalidValue, "cudaStreamCreateWithPriority: a priority outside "
                    "cudaDeviceGetStreamPriorityRange's [0, 0]");
    return cudaStreamCreateWithFlags(stream, flags);
}

/* The wait is for the event's record as it is now: a later record does
 * not move it. */
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags)
{
    if (!is_stream(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: no such stream");
    if (!is_event(event))
        return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: no such event");
    if (flags != 0)
        return fail(cudaErrorInvalidValue, "cudaStreamWaitEvent: flags other than 0");
    mhub_emu_event record = *event;
    enqueue(stream_of(stream), [record] {
        if (record.position != 0)
            run_stream_until(record.stream_id, record.position);
    });
    return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags)
{
    if ((flags & ~(cudaEventBlockingSync | cudaEventDisableTiming)) != 0)
        return fail(cudaErrorInvalidValue, "cudaEventCreateWithFlags: flags it does not know");
    *event = new mhub_emu_event{0, 0};
    events.push_back(*event);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream)
{
    if (!is_event(event))
        return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: no such event");
    if (!is_stream(stream))
        return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: no such stream");
    mhub_emu_stream &s = stream_of(stream);
    event->position = enqueue(s, work_item());
    event->stream_id = s.id;
    return cudaSuccess;
}

/* An event not yet complete answers cudaErrorNotReady, as on a GPU, and
 * then runs its stream up to it, so that a polling caller sees it
 * complete at its next query. */
cudaError_t cudaEventQuery(cudaEvent_t event)
{
    if (!is_event(event))
        return fail(cudaErrorInvalidResourceHandle, "cudaEventQuery: no such event");
    if (sticky_error != cudaSuccess || is_complete(*event))
        return sticky_error;
    run_stream_until(event->stream_id, event->position);
    return cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event)
{
    if (!is_event(event))
        return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: no such event");
    if (event->position != 0)
        run_stream_until(event->stream_id, event->position);
    return sticky_error;
}

cudaError_t cudaEventDestroy(cudaEvent_t event)
{
    for (size_t i = 0; i < events.size(); i++)
        if (events[i] == event) {
            events.erase(events.begin() + (long)i);
            delete event;
            return cudaSuccess;
        }
    return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: no such event");
}

cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes *attributes, const void *ptr)
{
    const block_info *block = block_holding(ptr, 1);
    bool device = block != nullptr;
    attributes->type = device ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
    attributes->device = device ? block->device : -2; /* CUDA's "no device" */
    attributes->devicePointer = device ? const_cast<void *>(ptr) : nullptr;
    attributes->hostPointer = device ? nullptr : const_cast<void *>(ptr);
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    cudaError_t err = last_error;
    last_error = sticky_error;
    return err;
}

const char *cudaGetErrorName(cudaError_t err)
{
    switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorString(cudaError_t err)
{
    switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    }
    return "unknown error";
}

int mhub_emu_is_device_range(const void *ptr, size_t bytes) { return is_device_range(ptr, bytes); }

int mhub_emu_is_stream(cudaStream_t stream) { return is_stream(stream); }

cudaError_t mhub_emu_sticky_error(void) { return sticky_error; }

cudaError_t mhub_emu_enqueue(cudaStream_t stream, void (*run)(void *args), const void *args,
                             size_t bytes)
{
    if (sticky_error != cudaSuccess)
        return sticky_error;
    if (!is_stream(stream))
        return fail(cudaErrorInvalidResourceHandle, "work queued on a stream that does not exist");
    std::vector<unsigned char> copy((const unsigned char *)args,
                                    (const unsigned char *)args + bytes);
    enqueue(stream_of(stream), [run, copy = std::move(copy)]() mutable { run(copy.data()); });
    return cudaSuccess;
}

void mhub_emu_device_fault(cudaError_t err, const char *what) { device_fault(err, what); }

} /* extern "C" */
