// The fiber runtime of the CUDA emulation (include/cuda_emu.h has the model and the checks).
#include "cuda_emu.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif

// Fiber switches: a six-register switch on x86-64 (swapcontext also saves the signal mask with
// a system call each time, several times slower); ucontext elsewhere and under ASan.
#if defined(__x86_64__) && !defined(EMU_ASAN)
#define EMU_FAST_SWITCH 1
extern "C" void emu_switch(void** save_sp, void* to_sp);
asm(R"(
    .text
    .globl emu_switch
    .hidden emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#endif

namespace emu {

namespace {

constexpr size_t STACK_BYTES = 256 * 1024;
constexpr int MAX_THREADS = 1024;

struct Copy {
    uint32_t dst;
    const void* src;
    int bytes, src_bytes;
};

struct Barrier {
    int arrived = 0;
    unsigned gen = 0;
};

struct WarpSlot {
    int op[32];
    uint32_t data[32 * 8];
};

}  // namespace

struct Fiber {
#ifdef EMU_FAST_SWITCH
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    dim3 tid;
    int linear = 0, warp = 0, lane = 0;
    bool done = false;
    const struct Barrier* wait_bar = nullptr;  // the barrier this fiber waits at, and its generation
    unsigned wait_gen = 0;
    unsigned collectives = 0;       // warp collectives so far (slot parity)
    std::vector<Copy> uncommitted;  // cp.async issued since the last commit
    std::vector<std::vector<Copy>> groups;  // committed, not yet waited for (oldest first)
};

Fiber* g_cur = nullptr;
bool g_copy_eager = false;
Schedule g_schedule = Schedule::LowestFirst;
dim3 g_block_idx, g_block_dim, g_grid_dim;

namespace {

#ifdef EMU_FAST_SWITCH
void* g_sched_sp = nullptr;
#else
ucontext_t g_sched;
#endif
std::vector<Fiber> g_fibers;
std::vector<char*> g_stacks;
const char* g_kernel = "?";
const std::function<void()>* g_body = nullptr;
unsigned char* g_smem = nullptr;  // dynamic shared memory of the current launch
size_t g_smem_bytes = 0;
size_t g_smem_capacity = 0;
int g_live = 0;
int g_warp_live[MAX_THREADS / 32];
Barrier g_block_bar;
Barrier g_warp_bar[MAX_THREADS / 32];
WarpSlot g_slots[MAX_THREADS / 32][2];

struct Alloc {
    uintptr_t begin, end;  // the usable bytes
    void* map;
    size_t map_bytes;
};
std::vector<Alloc> g_allocs;

size_t page() { return (size_t)sysconf(_SC_PAGESIZE); }

void yield() {
#ifdef EMU_FAST_SWITCH
    emu_switch(&g_cur->sp, g_sched_sp);
#else
    swapcontext(&g_cur->ctx, &g_sched);
#endif
}

void wait_barrier(Barrier& b, int expected) {
    const unsigned gen = b.gen;
    if (++b.arrived == expected) {
        b.arrived = 0;
        b.gen++;
        return;
    }
    g_cur->wait_bar = &b;
    g_cur->wait_gen = gen;
    while (b.gen == gen) yield();  // the scheduler resumes this fiber only once the barrier released
    g_cur->wait_bar = nullptr;
}

bool runnable(const Fiber& f) { return !f.done && (f.wait_bar == nullptr || f.wait_bar->gen != f.wait_gen); }

// The next fiber to run, or -1 if none can (a deadlock when threads are left).
int choose(int n, int last) {
    switch (g_schedule) {
    case Schedule::LowestFirst:
        for (int i = 0; i < n; i++)
            if (runnable(g_fibers[(size_t)i])) return i;
        return -1;
    case Schedule::HighestFirst:
        for (int i = n - 1; i >= 0; i--)
            if (runnable(g_fibers[(size_t)i])) return i;
        return -1;
    case Schedule::RoundRobin:
        for (int k = 1; k <= n; k++) {
            const int i = (last + k) % n;
            if (runnable(g_fibers[(size_t)i])) return i;
        }
        return -1;
    }
    return -1;
}

// A fiber finished: barriers waiting for it may now be complete.
void release_if_complete(Barrier& b, int expected) {
    if (b.arrived > 0 && b.arrived == expected) {
        b.arrived = 0;
        b.gen++;
    }
}

void run_copies(const std::vector<Copy>& cs) {
    for (const Copy& c : cs) {
        unsigned char* d = g_smem + c.dst;
        if (c.src_bytes > 0) memcpy(d, c.src, (size_t)c.src_bytes);
        if (c.src_bytes < c.bytes) memset(d + c.src_bytes, 0, (size_t)(c.bytes - c.src_bytes));
    }
}

void trampoline() {
    (*g_body)();
    Fiber& f = *g_cur;
    if (!f.uncommitted.empty() || !f.groups.empty())
        fail("thread exits with cp.async copies not waited for (%zu uncommitted, %zu groups)", f.uncommitted.size(), f.groups.size());
    if (g_block_bar.arrived > 0) fail("thread exits while %d threads wait at __syncthreads", g_block_bar.arrived);
    f.done = true;
    g_live--;
    g_warp_live[f.warp]--;
    release_if_complete(g_warp_bar[f.warp], g_warp_live[f.warp]);
    // uc_link returns to the scheduler (ucontext); fiber_entry switches back (fast switch).
}

#ifdef EMU_FAST_SWITCH
void fiber_entry() {
    trampoline();
    void* dead;
    emu_switch(&dead, g_sched_sp);  // never resumed
    __builtin_unreachable();
}
#endif

}  // namespace

const dim3& thread_idx() { return g_cur->tid; }
unsigned char* dyn_smem() { return g_smem_bytes ? g_smem : nullptr; }
int lane_id() { return g_cur->lane; }

void fail(const char* fmt, ...) {
    fflush(stdout);
    fprintf(stderr, "EMU FAIL in %s", g_kernel);
    if (g_cur)
        fprintf(stderr, " block (%u,%u,%u) thread (%u,%u,%u)", g_block_idx.x, g_block_idx.y, g_block_idx.z, g_cur->tid.x,
                g_cur->tid.y, g_cur->tid.z);
    fprintf(stderr, ": ");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n");
    _exit(1);
}

void syncthreads() {
    const int n = (int)(g_block_dim.x * g_block_dim.y * g_block_dim.z);
    if (g_live != n) fail("__syncthreads after %d of the block's %d threads exited", n - g_live, n);
    wait_barrier(g_block_bar, g_live);
}

void warp_exchange(int op, const uint32_t* in, int n, uint32_t* out) {
    Fiber& f = *g_cur;
    const int nthreads = (int)(g_block_dim.x * g_block_dim.y * g_block_dim.z);
    const int warp_size = std::min(32, nthreads - f.warp * 32);
    if (g_warp_live[f.warp] != warp_size)
        fail("warp collective (op %d) with %d of %d lanes: a lane exited or the mask is wrong", op, g_warp_live[f.warp], warp_size);
    if (warp_size != 32) fail("warp collective in a partial warp of %d lanes", warp_size);
    WarpSlot& s = g_slots[f.warp][f.collectives & 1];
    f.collectives++;
    s.op[f.lane] = op;
    for (int i = 0; i < n; i++) s.data[f.lane * 8 + i] = in[i];
    wait_barrier(g_warp_bar[f.warp], g_warp_live[f.warp]);
    for (int l = 0; l < 32; l++)
        if (s.op[l] != op) fail("lanes of one warp at different collectives (lane %d op %d, lane %d op %d)", f.lane, op, l, s.op[l]);
    for (int l = 0; l < 32; l++)
        for (int i = 0; i < n; i++) out[l * n + i] = s.data[l * 8 + i];
    // The slot is reused two collectives later, after the next barrier: every lane has read it.
}

void check_smem(uint32_t off, int bytes, int align, const char* what) {
    if (g_smem_bytes == 0) fail("%s: the launch has no dynamic shared memory", what);
    if ((size_t)off + (size_t)bytes > g_smem_bytes)
        fail("%s at shared offset %u + %d is past the %zu bytes of dynamic shared memory", what, off, bytes, g_smem_bytes);
    if (off % (uint32_t)align) fail("%s at shared offset %u is not %d-byte aligned", what, off, align);
}

void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes) {
    check_smem(dst, bytes, bytes, "cp.async destination");
    const uintptr_t s = (uintptr_t)src;
    if (s % (uintptr_t)bytes) fail("cp.async source %p is not %d-byte aligned", src, bytes);
    if (src_bytes > 0) {
        bool ok = false;
        for (const Alloc& a : g_allocs)
            if (s >= a.begin && s + (uintptr_t)src_bytes <= a.end) ok = true;
        if (!ok) fail("cp.async reads %d bytes at %p, outside every device buffer", src_bytes, src);
    }
    const Copy c{dst, src, bytes, src_bytes};
    if (g_copy_eager) {
        run_copies({c});
        g_cur->uncommitted.push_back(Copy{dst, nullptr, 0, 0});  // still counted as in flight until waited for
    } else {
        g_cur->uncommitted.push_back(c);
    }
}

void cp_async_commit_group() {
    Fiber& f = *g_cur;
    f.groups.push_back(std::move(f.uncommitted));
    f.uncommitted.clear();
}

void cp_async_wait_group(int n) {
    Fiber& f = *g_cur;
    while ((int)f.groups.size() > n) {
        run_copies(f.groups.front());
        f.groups.erase(f.groups.begin());
    }
}

void* device_alloc(size_t bytes) {
#ifdef EMU_ASAN
    // AddressSanitizer's red zones catch accesses on both sides of the buffer.
    void* a = aligned_alloc(16, (bytes + 15) / 16 * 16);
    g_allocs.push_back(Alloc{(uintptr_t)a, (uintptr_t)a + bytes, a, 0});
    return a;
#endif
    const size_t pg = page();
    const size_t usable = (bytes + 15) / 16 * 16;
    const size_t data_pages = (usable + pg - 1) / pg;
    const size_t map_bytes = (data_pages + 1) * pg;
    void* m = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) fail("device_alloc: mmap of %zu bytes failed", map_bytes);
    unsigned char* guard = static_cast<unsigned char*>(m) + data_pages * pg;
    mprotect(guard, pg, PROT_NONE);
    unsigned char* p = guard - usable;  // 16-byte aligned, its end touches the guard page
    g_allocs.push_back(Alloc{(uintptr_t)p, (uintptr_t)p + bytes, m, map_bytes});
    return p;
}

void device_free(void* p) {
    for (size_t i = 0; i < g_allocs.size(); i++)
        if (g_allocs[i].begin == (uintptr_t)p) {
            if (g_allocs[i].map_bytes == 0)
                free(g_allocs[i].map);
            else
                munmap(g_allocs[i].map, g_allocs[i].map_bytes);
            g_allocs.erase(g_allocs.begin() + (long)i);
            return;
        }
}

void launch(const char* name, dim3 grid, dim3 block, size_t dyn_bytes, const std::function<void()>& kernel) {
    const int n = (int)(block.x * block.y * block.z);
    if (n <= 0 || n > MAX_THREADS) fail("launch of %d threads per block", n);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("launch with an empty grid (%u,%u,%u)", grid.x, grid.y, grid.z);
    if (grid.y > 65535 || grid.z > 65535) fail("grid (%u,%u,%u): y and z must be <= 65535", grid.x, grid.y, grid.z);
    if (dyn_bytes > 227 * 1024) fail("%zu bytes of dynamic shared memory: more than any GPU has", dyn_bytes);
    g_kernel = name;
    g_body = &kernel;
    g_grid_dim = grid;
    g_block_dim = block;
    // Dynamic shared memory: ends at a guard page.
    const size_t pg = page();
    static unsigned char* smem_map = nullptr;
    if (g_smem_capacity == 0) {
        g_smem_capacity = 256 * 1024;
        smem_map = static_cast<unsigned char*>(
            mmap(nullptr, g_smem_capacity + pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        mprotect(smem_map + g_smem_capacity, pg, PROT_NONE);
    }
    g_smem_bytes = dyn_bytes;
    g_smem = smem_map + g_smem_capacity - (dyn_bytes + 127) / 128 * 128;
    while (g_stacks.size() < (size_t)n) g_stacks.push_back(static_cast<char*>(malloc(STACK_BYTES)));
    g_fibers.assign((size_t)n, Fiber{});

    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                g_block_idx = dim3(bx, by, bz);
                memset(g_smem, 0xff, dyn_bytes);  // NaN in bf16, f16 and f32
                g_live = n;
                for (int w = 0; w < (n + 31) / 32; w++) {
                    g_warp_live[w] = std::min(32, n - w * 32);
                    g_warp_bar[w] = Barrier{};
                }
                g_block_bar = Barrier{};
                for (int i = 0; i < n; i++) {
                    Fiber& f = g_fibers[(size_t)i];
                    f = Fiber{};
                    f.linear = i;
                    f.tid = dim3((unsigned)i % block.x, (unsigned)i / block.x % block.y, (unsigned)i / (block.x * block.y));
                    f.warp = i / 32;
                    f.lane = i % 32;
#ifdef EMU_FAST_SWITCH
                    // The first switch pops six zero registers and "returns" into fiber_entry
                    // with the stack aligned as after a call.
                    uintptr_t top = ((uintptr_t)g_stacks[(size_t)i] + STACK_BYTES) & ~(uintptr_t)15;
                    void** sp = (void**)(top - 64);
                    for (int r = 0; r < 6; r++) sp[r] = nullptr;
                    sp[6] = (void*)&fiber_entry;
                    sp[7] = nullptr;
                    f.sp = sp;
#else
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = g_stacks[(size_t)i];
                    f.ctx.uc_stack.ss_size = STACK_BYTES;
                    f.ctx.uc_link = &g_sched;
                    makecontext(&f.ctx, trampoline, 0);
#endif
                }
                int last = n - 1;
                while (g_live > 0) {
                    const int i = choose(n, last);
                    if (i < 0)
                        fail("deadlock: %d threads wait at barriers that can never complete (%d at __syncthreads)", g_live,
                             g_block_bar.arrived);
                    g_cur = &g_fibers[(size_t)i];
#ifdef EMU_FAST_SWITCH
                    emu_switch(&g_sched_sp, g_cur->sp);
#else
                    swapcontext(&g_sched, &g_cur->ctx);
#endif
                    g_cur = nullptr;
                    last = i;
                }
            }
    g_cur = nullptr;
    g_smem_bytes = 0;
    g_kernel = "?";
}

}  // namespace emu
