// The fiber runtime of the CUDA emulation (include/cuda_emu.h has the model and the checks).
#include "cuda_emu.h"

#include <stdarg.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <string>
#include <map>

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

// An mbarrier's state (PTX ISA "mbarrier"): the phase in progress (`phase` phases completed so
// far), its pending arrivals and its transaction count.
struct MBar {
    uint32_t offset = 0, count = 0;
    int pending = 0;
    long long tx = 0;
    unsigned phase = 0;
    int init_thread = -1;
    bool fenced = false;  // fence.mbarrier_init by the initialising thread since
};

// A bulk tensor copy in flight: the box, already read, lands in shared memory and completes its
// bytes on the mbarrier.
struct TmaCopy {
    uint32_t dst, bar;
    std::vector<unsigned char> data;
};

// One wgmma.mma_async of one thread (its 2 rows x n / 4 columns of D).
struct WgOp {
    float* d;
    int n, trans_b, scale_d;
    bool rs, chained;
    uint64_t desc_a, desc_b;
    uint32_t a[128];   // rs: the warp's A fragment (lane L's registers at 4 L .. 4 L + 3)
    const uint32_t* a_src;  // rs: this thread's four A registers, checked unchanged at the covering wait
    float c_in[128];   // scale_d and not chained: D's value at issue
};

// The warpgroup-wide instructions (wgmma.*, setmaxnreg) in the order the warpgroup's first
// warp to reach each executed them; every warp must execute the same sequence.
struct WgEntry {
    int kind;
    uint64_t p[3];
};
struct WarpGroup {
    std::deque<WgEntry> log;
    size_t base = 0;
    size_t pos[4] = {0, 0, 0, 0};
    int maxnreg = 0;
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
    // Hopper: the mbarrier phase this fiber waits for in try_wait, and its wgmma operations.
    const MBar* mbar_wait = nullptr;
    uint32_t mbar_parity = 0;
    bool wg_fenced = false;
    // setmaxnreg: lane 0 waits for `nreg_need` registers of the CTA's pool (0: not waiting); the
    // other lanes wait until their warp's count of setmaxnreg done reaches `nreg_calls`.
    long long nreg_need = 0;
    int nreg_target = 0;
    unsigned nreg_calls = 0;
    bool nreg_lane_wait = false;
    std::vector<WgOp> wg_uncommitted;
    std::deque<std::vector<WgOp>> wg_groups;
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
Alloc g_last_alloc{0, 0, nullptr, 0};  // the buffer a bulk copy read last (reset when freed)

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

std::map<uint32_t, MBar> g_mbars;  // the block's mbarriers by shared-memory offset
std::deque<TmaCopy> g_tma;          // bulk tensor copies in flight (lazy mode), oldest first
WarpGroup g_wg[MAX_THREADS / 128];
struct NamedBar {
    Barrier b;
    int expected = 0;  // the thread count of the phase in progress (0: none arrived yet)
};
NamedBar g_named[16];

// The CTA's register pool (setmaxnreg): every warp holds `g_warp_regs` registers per thread,
// `g_launch_regs` at launch; dec returns the difference to the pool, inc waits until the pool
// has it. The pool starts empty: the CTA owns exactly launch registers x threads.
int g_launch_regs = 0;
long long g_reg_free = 0;
int g_warp_regs[MAX_THREADS / 32];
unsigned g_warp_nreg_done[MAX_THREADS / 32];

bool runnable(const Fiber& f) {
    if (f.done) return false;
    if (f.mbar_wait) return (f.mbar_wait->phase & 1) != f.mbar_parity;
    if (f.nreg_need) return g_reg_free >= f.nreg_need;
    if (f.nreg_lane_wait) return g_warp_nreg_done[f.warp] >= f.nreg_calls;
    return f.wait_bar == nullptr || f.wait_bar->gen != f.wait_gen;
}

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
    if (!f.wg_uncommitted.empty() || !f.wg_groups.empty())
        fail("thread exits with wgmma operations not waited for (%zu uncommitted, %zu groups): wgmma_commit and wgmma_wait<0> first",
             f.wg_uncommitted.size(), f.wg_groups.size());
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

bool g_fail_throws = false;
namespace {
bool g_aborted = false;  // a fiber failed with g_fail_throws: the scheduler throws
std::string g_abort_msg;
}  // namespace

void fail(const char* fmt, ...) {
    if (g_fail_throws) {
        char buf[2048];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);
        g_abort_msg = buf;
        if (g_cur == nullptr) throw Failure{g_abort_msg};
        // On a fiber's stack: back to the scheduler for good, which throws on the launch's stack.
        g_aborted = true;
        for (;;) yield();
    }
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
            g_last_alloc = Alloc{0, 0, nullptr, 0};
            if (g_allocs[i].map_bytes == 0)
                free(g_allocs[i].map);
            else
                munmap(g_allocs[i].map, g_allocs[i].map_bytes);
            g_allocs.erase(g_allocs.begin() + (long)i);
            return;
        }
}

// ------------------------------------------------------------------------------------------
// Hopper (sm_90a): mbarrier, bulk tensor copy (TMA), elect.sync, setmaxnreg, wgmma
// ------------------------------------------------------------------------------------------

namespace {

const uint32_t MBAR_MARK = 0x7262616du;  // "mbar": the first 4 bytes of every live mbarrier

void mbar_mark(uint32_t bar) {
    uint32_t m[2] = {MBAR_MARK, bar};
    memcpy(g_smem + bar, m, 8);
}

MBar& mbar_get(uint32_t bar, const char* what) {
    check_smem(bar, 8, 8, what);
    auto it = g_mbars.find(bar);
    if (it == g_mbars.end()) fail("%s at shared offset %u: no mbarrier was initialised there (mbar_init first)", what, bar);
    uint32_t m[2];
    memcpy(m, g_smem + bar, 8);
    if (m[0] != MBAR_MARK || m[1] != bar)
        fail("%s at shared offset %u: the mbarrier's 8 bytes were overwritten by a plain store or a copy", what, bar);
    return it->second;
}

void mbar_complete_phase(MBar& m) {
    m.phase++;
    m.pending = (int)m.count;
    m.tx = 0;
}

void mbar_arrive_on(MBar& m, const char* what) {
    if (m.pending == 0)
        fail("%s on the mbarrier at shared offset %u: all %u expected arrivals of phase %u already happened (%lld transaction bytes "
             "pending): more arrivals than the init count",
             what, m.offset, m.count, m.phase, m.tx);
    m.pending--;
    if (m.pending == 0 && m.tx == 0) mbar_complete_phase(m);
}

void mbar_complete_tx(MBar& m, uint32_t bytes) {
    m.tx -= (long long)bytes;
    if (m.tx < 0)
        fail("bulk copy completes %u bytes on the mbarrier at shared offset %u (phase %u), which expects only %lld more: a missing or "
             "too small arrive.expect_tx",
             bytes, m.offset, m.phase, m.tx + (long long)bytes);
    if (m.pending == 0 && m.tx == 0) mbar_complete_phase(m);
}

// The encoded tensor map (emu::tensor_map_encode_tiled writes it into the 128 opaque bytes).
struct TensorMap {
    uint32_t magic;
    uint8_t dtype, rank, interleave, swizzle, l2, oob, esize, pad;
    uint64_t addr;
    uint64_t dim[5];
    uint64_t stride[5];  // bytes; stride[0] = the element size
    uint16_t box[5];
    uint8_t estride[5];
};
static_assert(sizeof(TensorMap) <= 128, "a tensor map has 128 bytes");
const uint32_t TMAP_MAGIC = 0x70616d74u;  // "tmap"

int elem_size(int dtype) {
    static const int sizes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2, 4, 4, 4};
    return dtype >= 0 && dtype <= 12 ? sizes[dtype] : 0;
}

// The swizzle of the PTX ISA / CUTLASS Swizzle<B, 4, 3> on a shared-memory byte address: the
// 16-byte chunk bits [4, 4 + B) are XORed with bits [7, 7 + B) (B = 3 for 128B, 2 for 64B, 1 for
// 32B): in each 128-byte line, chunk c goes to c ^ (line % 8) for 128B, c ^ (line / 2 % 4) for
// 64B, c ^ (line / 4 % 2) for 32B.
uint32_t swizzle_addr(uint32_t a, int bits) {
    if (bits == 0) return a;
    const uint32_t mask = (1u << bits) - 1;
    return a ^ (((a >> 7) & mask) << 4);
}
// Tensor-map swizzle mode (0 none, 1 32B, 2 64B, 3 128B) -> Swizzle bits.
int tmap_swizzle_bits(int sw) { return sw == 3 ? 3 : sw == 2 ? 2 : sw == 1 ? 1 : 0; }
// wgmma descriptor swizzle mode (0 none, 1 128B, 2 64B, 3 32B) -> Swizzle bits.
int desc_swizzle_bits(int sw) { return sw == 1 ? 3 : sw == 2 ? 2 : sw == 3 ? 1 : 0; }

bool in_device_buffer(uintptr_t a, size_t n) {
    if (a >= g_last_alloc.begin && a + n <= g_last_alloc.end) return true;
    for (const Alloc& al : g_allocs)
        if (a >= al.begin && a + n <= al.end) {
            g_last_alloc = al;
            return true;
        }
    return false;
}

void tma_land(TmaCopy& c) {
    for (const auto& kv : g_mbars)
        if (kv.first + 8 > c.dst && kv.first < c.dst + c.data.size())
            fail("bulk tensor copy into shared [%u, %zu) overwrites the mbarrier at %u", c.dst, c.dst + c.data.size(), kv.first);
    memcpy(g_smem + c.dst, c.data.data(), c.data.size());
    auto it = g_mbars.find(c.bar);
    if (it == g_mbars.end()) fail("bulk tensor copy completes on the mbarrier at shared offset %u, which no longer exists", c.bar);
    mbar_complete_tx(it->second, (uint32_t)c.data.size());
}

// Records warpgroup instruction `kind` for the calling warp (lane 0 calls it after the warp's
// own exchange) and checks it against what the warpgroup's other warps executed at the same
// position. True for the first warp to get there.
bool wg_log(int kind, uint64_t p0, uint64_t p1, uint64_t p2, const char* what) {
    Fiber& f = *g_cur;
    const int nthreads = (int)(g_block_dim.x * g_block_dim.y * g_block_dim.z);
    const int wg = f.warp / 4, w = f.warp % 4;
    if ((wg + 1) * 128 > nthreads) fail("%s in warpgroup %d, which the block's %d threads do not fill (128 threads each)", what, wg, nthreads);
    WarpGroup& G = g_wg[wg];
    const size_t i = G.pos[w]++;
    for (int k = 0; k < 4; k++)
        if (g_warp_live[wg * 4 + k] == 0 && G.pos[k] <= i)
            fail("%s: warp %d of warpgroup %d exited before executing it (warpgroup instruction %zu); every thread of the warpgroup "
                 "must execute it",
                 what, wg * 4 + k, wg, i);
    bool first = false;
    if (i < G.base + G.log.size()) {
        const WgEntry& e = G.log[i - G.base];
        if (e.kind != kind || e.p[0] != p0 || e.p[1] != p1 || e.p[2] != p2)
            fail("%s: warp %d of warpgroup %d differs from another warp of its warpgroup at warpgroup instruction %zu (op %d there): "
                 "all 128 threads must execute the same wgmma / setmaxnreg sequence with the same shapes and descriptors",
                 what, f.warp, wg, i, e.kind);
    } else {
        G.log.push_back(WgEntry{kind, {p0, p1, p2}});
        first = true;
    }
    size_t lo = G.pos[0];
    for (int k = 1; k < 4; k++) lo = std::min(lo, G.pos[k]);
    while (G.base < lo) {
        G.log.pop_front();
        G.base++;
    }
    return first;
}

float smem_bf16(uint32_t a, const char* what) {
    if ((size_t)a + 2 > g_smem_bytes) fail("%s reads shared offset %u, past the %zu bytes of dynamic shared memory", what, a, g_smem_bytes);
    uint16_t h;
    memcpy(&h, g_smem + a, 2);
    return bf2f(h);
}

// Element (mn, k) of a wgmma shared-memory operand (bf16: T = 8 elements per 16 bytes), from the
// canonical layouts of the PTX ISA ("Shared Memory Matrix Layout", in CuTe notation, strides in
// elements except LBO / SBO in bytes):
//   K-major,  no swizzle: ((8,m),(T,2k)):((1T,SBO),(1,LBO))       core matrix = 8 rows x 16 B
//   K-major,  swizzle S:  ((8,m),(T,2k)):((S/16 T,SBO),(1,T))     rows of S bytes, LBO unused
//   MN-major, no swizzle: ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO))    core matrix = 8 k-rows x 16 B
//   MN-major, swizzle S:  ((T,S/16,m),(8,k)):((1,T,LBO),(S/16 T,SBO))
// then the Swizzle<B,4,3> of the mode on the resulting byte address.
float wgmma_operand(uint64_t desc, bool mn_major, int mn, int k, const char* what) {
    const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4;
    const uint32_t lbo = (uint32_t)((desc >> 16) & 0x3FFF) << 4;
    const uint32_t sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
    const int bits = desc_swizzle_bits((int)(desc >> 62));
    const uint32_t span = bits ? 16u << bits : 0;  // 32, 64 or 128 bytes
    uint32_t off;
    if (!mn_major) {
        if (bits == 0) off = (uint32_t)(mn % 8) * 16 + (uint32_t)(mn / 8) * sbo + (uint32_t)(k % 8) * 2 + (uint32_t)(k / 8) * lbo;
        else off = (uint32_t)(mn % 8) * span + (uint32_t)(mn / 8) * sbo + (uint32_t)k * 2;
    } else {
        if (bits == 0) off = (uint32_t)(mn % 8) * 2 + (uint32_t)(mn / 8) * sbo + (uint32_t)(k % 8) * 16 + (uint32_t)(k / 8) * lbo;
        else {
            const uint32_t per_row = span / 2;  // elements of one S-byte row
            off = (uint32_t)(mn % (int)per_row) * 2 + (uint32_t)(mn / (int)per_row) * lbo + (uint32_t)(k % 8) * span + (uint32_t)(k / 8) * sbo;
        }
    }
    return smem_bf16(swizzle_addr(start + off, bits), what);
}

void check_desc(uint64_t desc, const char* what) {
    const uint64_t reserved = (3ull << 14) | (3ull << 30) | (7ull << 46) | (0x3FFull << 52);
    if (desc & reserved) fail("%s: matrix descriptor 0x%016llx has reserved bits set", what, (unsigned long long)desc);
    if ((desc >> 49) & 7)
        fail("%s: matrix descriptor 0x%016llx has a base offset (bits 49-51); hopper.cuh's tiles are aligned to their swizzle pattern "
             "and the emulator supports base offset 0 only",
             what, (unsigned long long)desc);
}

// What the accumulators of a wgmma in flight hold: a signaling NaN, so a read gives NaN and
// any write, arithmetic on the poison included (it returns a quiet NaN), changes the bits.
constexpr uint32_t WG_POISON = 0x7fa00000u;

void wgmma_compute(WgOp& op) {
    Fiber& f = *g_cur;
    const int w = f.warp % 4, g = f.lane >> 2, t = f.lane & 3;
    // The hardware reads the register A operand and writes the accumulators at some point between
    // the issue and the covering wait: a write to either in between is undefined there.
    if (op.rs)
        for (int i = 0; i < 4; i++)
            if (op.a_src[i] != op.a[f.lane * 4 + i])
                fail("wgmma.wait_group: A register %d of a wgmma.mma_async (A in registers) was rewritten while the wgmma was in "
                     "flight (0x%08x at issue, 0x%08x at the covering wait): the hardware may read it any time before the wait; "
                     "write the A fragment (P) only after wgmma_wait covers every wgmma that reads it",
                     i, op.a[f.lane * 4 + i], op.a_src[i]);
    if (!op.chained)
        for (int i = 0; i < op.n / 2; i++)
            if (f2u(op.d[i]) != WG_POISON)
                fail("wgmma.wait_group: accumulator register %d of a wgmma.mma_async was written while the wgmma was in flight "
                     "(the hardware writes it any time before the covering wait): touch the accumulators only after wgmma_wait",
                     i);
    float A[2][16];
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 16; k++) {
            const int lr = g + 8 * h;  // row in the warp's 16
            if (op.rs) {
                // m16n8k16 A fragment: a0 (row g, k 2t..), a1 (row g + 8), a2 (row g, k 2t + 8..), a3 (row g + 8, k 2t + 8..)
                const int L = (lr % 8) * 4 + (k % 8) / 2, r = (lr >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
                const uint32_t v = op.a[L * 4 + r];
                A[h][k] = bf2f((uint16_t)(k % 2 ? v >> 16 : v & 0xffff));
            } else {
                A[h][k] = wgmma_operand(op.desc_a, false, 16 * w + lr, k, "wgmma A operand");
            }
        }
    for (int j = 0; j < op.n / 8; j++)
        for (int c = 0; c < 2; c++) {
            const int col = 8 * j + 2 * t + c;
            float B[16];
            for (int k = 0; k < 16; k++) B[k] = wgmma_operand(op.desc_b, op.trans_b != 0, col, k, "wgmma B operand");
            for (int h = 0; h < 2; h++) {
                double s = 0;  // products of bf16 are exact in double
                for (int k = 0; k < 16; k++) s += (double)A[h][k] * (double)B[k];
                const int r = 4 * j + 2 * h + c;
                if (op.scale_d) s += (double)(op.chained ? op.d[r] : op.c_in[r]);
                op.d[r] = (float)s;
            }
        }
}

}  // namespace

void mbar_init(uint32_t bar, uint32_t count) {
    check_smem(bar, 8, 8, "mbarrier.init");
    if (count == 0 || count > (1u << 20) - 1) fail("mbarrier.init at shared offset %u with count %u (must be in [1, 2^20 - 1])", bar, count);
    for (const TmaCopy& c : g_tma)
        if (bar + 8 > c.dst && bar < c.dst + c.data.size())
            fail("mbarrier.init at shared offset %u inside the destination of a bulk copy in flight", bar);
    MBar& m = g_mbars[bar];
    m = MBar{};
    m.offset = bar;
    m.count = count;
    m.pending = (int)count;
    m.init_thread = g_cur->linear;
    mbar_mark(bar);
}

void mbar_fence_init() {
    for (auto& kv : g_mbars)
        if (kv.second.init_thread == g_cur->linear) kv.second.fenced = true;
}

void mbar_arrive(uint32_t bar) { mbar_arrive_on(mbar_get(bar, "mbarrier.arrive"), "mbarrier.arrive"); }

void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
    MBar& m = mbar_get(bar, "mbarrier.arrive.expect_tx");
    m.tx += bytes;
    if (m.tx > (1 << 20) - 1)
        fail("mbarrier.arrive.expect_tx at shared offset %u: %lld transaction bytes pending, past the limit 2^20 - 1", bar, m.tx);
    mbar_arrive_on(m, "mbarrier.arrive.expect_tx");
}

bool mbar_try_wait(uint32_t bar, uint32_t parity) {
    MBar& m = mbar_get(bar, "mbarrier.try_wait.parity");
    if (parity > 1) fail("mbarrier.try_wait.parity at shared offset %u with parity %u (0 or 1)", bar, parity);
    // The phase of parity p has completed when the phase in progress has the other parity. The
    // wait blocks this fiber until then (the time limit of try_wait never expires here: a
    // spinning thread is resumed only once the phase completed), so all threads blocked is a
    // deadlock unless a copy in flight can still complete a phase.
    if ((m.phase & 1) != parity) return true;
    g_cur->mbar_wait = &m;
    g_cur->mbar_parity = parity;
    while ((m.phase & 1) == parity) yield();
    g_cur->mbar_wait = nullptr;
    return true;
}

int tensor_map_encode_tiled(void* tensorMap, int dtype, uint32_t rank, void* globalAddress, const uint64_t* globalDim,
                            const uint64_t* globalStrides, const uint32_t* boxDim, const uint32_t* elementStrides, int interleave,
                            int swizzle, int l2Promotion, int oobFill) {
    const int INVALID = 1, NOT_SUPPORTED = 801;
    if (tensorMap == nullptr || (uintptr_t)tensorMap % 64) return INVALID;
    const int es = elem_size(dtype);
    if (es == 0) return INVALID;
    if (rank < 1 || rank > 5) return INVALID;
    if (interleave < 0 || interleave > 2 || swizzle < 0 || swizzle > 3 || l2Promotion < 0 || l2Promotion > 3 || oobFill < 0 || oobFill > 1)
        return INVALID;
    if (interleave != 0 && rank < 3) return INVALID;
    const uintptr_t addr_align = interleave == 2 ? 32 : 16;
    if (globalAddress == nullptr || (uintptr_t)globalAddress % addr_align) return INVALID;
    if (globalDim == nullptr || boxDim == nullptr || elementStrides == nullptr || (rank > 1 && globalStrides == nullptr)) return INVALID;
    for (uint32_t i = 0; i < rank; i++)
        if (globalDim[i] == 0 || globalDim[i] > (1ull << 32)) return INVALID;
    for (uint32_t i = 0; i + 1 < rank; i++)
        if (globalStrides[i] % (interleave == 2 ? 32 : 16) || globalStrides[i] >= (1ull << 40)) return INVALID;
    for (uint32_t i = 0; i < rank; i++) {
        if (boxDim[i] == 0 || boxDim[i] > 256) return INVALID;
        if (elementStrides[i] == 0 || elementStrides[i] > 8) return INVALID;
    }
    if (interleave == 0 && (boxDim[0] * (uint32_t)es) % 16) return INVALID;
    if (interleave == 0 && swizzle != 0 && boxDim[0] * (uint32_t)es > (16u << swizzle)) return INVALID;
    if (oobFill == 1 && dtype <= 5) return INVALID;  // NaN fill needs a floating-point type
    if (interleave != 0) return NOT_SUPPORTED;
    TensorMap m;
    memset(&m, 0, sizeof m);
    m.magic = TMAP_MAGIC;
    m.dtype = (uint8_t)dtype;
    m.rank = (uint8_t)rank;
    m.interleave = (uint8_t)interleave;
    m.swizzle = (uint8_t)swizzle;
    m.l2 = (uint8_t)l2Promotion;
    m.oob = (uint8_t)oobFill;
    m.esize = (uint8_t)es;
    m.addr = (uint64_t)(uintptr_t)globalAddress;
    for (uint32_t i = 0; i < rank; i++) {
        m.dim[i] = globalDim[i];
        m.stride[i] = i == 0 ? (uint64_t)es : globalStrides[i - 1];
        m.box[i] = (uint16_t)boxDim[i];
        m.estride[i] = (uint8_t)elementStrides[i];
    }
    memset(tensorMap, 0, 128);
    memcpy(tensorMap, &m, sizeof m);
    return 0;
}

void tma_load(uint32_t dst, const void* map, uint32_t bar, const int* coords, int n) {
    TensorMap m;
    memcpy(&m, map, sizeof m);
    if (m.magic != TMAP_MAGIC) fail("cp.async.bulk.tensor with a tensor map that cuTensorMapEncodeTiled did not make");
    if (m.rank != n) fail("cp.async.bulk.tensor.%dd with a tensor map of rank %d", n, m.rank);
    // Box elements per dimension (every elementStrides-th element of the box).
    uint64_t cnt[5] = {1, 1, 1, 1, 1}, total = 1;
    for (int i = 0; i < n; i++) {
        cnt[i] = (m.box[i] + m.estride[i] - 1) / m.estride[i];
        total *= cnt[i];
    }
    const size_t bytes = (size_t)(total * m.esize);
    const int bits = tmap_swizzle_bits(m.swizzle);
    const int align = bits == 3 ? 1024 : bits == 2 ? 512 : bits == 1 ? 256 : 128;
    check_smem(dst, (int)bytes, align, "cp.async.bulk.tensor destination");
    MBar& mb = mbar_get(bar, "cp.async.bulk.tensor mbarrier");
    if (!mb.fenced)
        fail("cp.async.bulk.tensor completes on the mbarrier at shared offset %u, whose init was not followed by mbar_fence_init "
             "(fence.mbarrier_init) in the initialising thread",
             bar);
    for (const auto& kv : g_mbars)
        if (kv.first + 8 > dst && kv.first < dst + bytes)
            fail("cp.async.bulk.tensor into shared [%u, %zu) overwrites the mbarrier at %u", dst, dst + bytes, kv.first);
    TmaCopy c{dst, bar, std::vector<unsigned char>(bytes)};
    const uint32_t row_bytes = (uint32_t)(cnt[0] * m.esize);
    uint64_t idx[5] = {0, 0, 0, 0, 0};
    for (uint64_t row = 0; row < total / cnt[0]; row++) {
        // idx[1..] of this row
        uint64_t r = row;
        bool oob_row = false;
        uintptr_t base = (uintptr_t)m.addr;
        for (int i = 1; i < n; i++) {
            idx[i] = r % cnt[i];
            r /= cnt[i];
            const long long x = (long long)coords[i] + (long long)(idx[i] * m.estride[i]);
            if (x < 0 || (unsigned long long)x >= m.dim[i]) oob_row = true;
            else base += (uintptr_t)((uint64_t)x * m.stride[i]);
        }
        for (uint64_t e = 0; e < cnt[0]; e++) {
            const long long x = (long long)coords[0] + (long long)(e * m.estride[0]);
            const uint32_t lin = (uint32_t)(row * row_bytes + e * m.esize);
            unsigned char* out = c.data.data() + (swizzle_addr(dst + lin, bits) - dst);
            if (oob_row || x < 0 || (unsigned long long)x >= m.dim[0]) {
                memset(out, m.oob ? 0xff : 0, m.esize);  // NaN_REQUEST_ZERO_FMA: all-ones bytes, a NaN of every float type
            } else {
                const uintptr_t src = base + (uintptr_t)x * m.esize;
                if (!in_device_buffer(src, m.esize))
                    fail("cp.async.bulk.tensor reads element (%lld, ...) at %p, outside every device buffer (the tensor map's dims or "
                         "strides exceed its buffer)",
                         x, (const void*)src);
                memcpy(out, (const void*)src, m.esize);
            }
        }
    }
    if (g_copy_eager) tma_land(c);
    else g_tma.push_back(std::move(c));
}

void fence_proxy_async() {}

bool elect_one() {
    warp_exchange(OP_ELECT, nullptr, 0, nullptr);
    // Which lane: the lowest on the lowest-first schedule, the highest on highest-first, a
    // different one each time on round robin; a kernel must not depend on it.
    const Fiber& f = *g_cur;
    const int leader = g_schedule == Schedule::LowestFirst ? 0 : g_schedule == Schedule::HighestFirst ? 31 : (int)((f.collectives * 7 + (unsigned)f.warp * 3) % 32);
    return f.lane == leader;
}

void setmaxnreg(int n, bool inc) {
    const char* what = inc ? "setmaxnreg.inc" : "setmaxnreg.dec";
    if (n < 24 || n > 256 || n % 8) fail("%s.sync.aligned.u32 %d: the count must be a multiple of 8 in [24, 256]", what, n);
    uint32_t in = (uint32_t)n | (inc ? 1u << 16 : 0), all[32];
    warp_exchange(OP_SETMAXNREG, &in, 1, all);
    for (int l = 0; l < 32; l++)
        if (all[l] != in) fail("%s: lanes of one warp with different counts", what);
    Fiber& f = *g_cur;
    f.nreg_calls++;
    if (f.lane != 0) {
        // The whole warp waits with lane 0, which does the warp's accounting.
        f.nreg_lane_wait = true;
        while (g_warp_nreg_done[f.warp] < f.nreg_calls) yield();
        f.nreg_lane_wait = false;
        return;
    }
    const bool first = wg_log(OP_SETMAXNREG, in, 0, 0, what);
    WarpGroup& G = g_wg[f.warp / 4];
    if (first) {
        if (G.maxnreg && inc && n < G.maxnreg) fail("%s %d below the warpgroup's current %d registers", what, n, G.maxnreg);
        if (G.maxnreg && !inc && n > G.maxnreg) fail("%s %d above the warpgroup's current %d registers", what, n, G.maxnreg);
        G.maxnreg = n;
    }
    // The CTA's pool: dec releases at once; inc (PTX ISA: "blocks until sufficient registers are
    // available") waits for registers that other warps release.
    int& held = g_warp_regs[f.warp];
    if (!inc) {
        if (n > held)
            fail("%s %d above the %d registers per thread its warp holds (launch: %d per thread)", what, n, held, g_launch_regs);
        g_reg_free += (long long)(held - n) * 32;
        held = n;
    } else if (n > held) {
        f.nreg_need = (long long)(n - held) * 32;
        f.nreg_target = n;
        while (g_reg_free < f.nreg_need) yield();
        g_reg_free -= f.nreg_need;
        f.nreg_need = 0;
        held = n;
    }
    g_warp_nreg_done[f.warp] = f.nreg_calls;
}

void named_bar(int id, int n, bool sync) {
    const char* what = sync ? "bar.sync" : "bar.arrive";
    const int nthreads = (int)(g_block_dim.x * g_block_dim.y * g_block_dim.z);
    if (id < 1 || id > 15) fail("%s with barrier id %d: named barriers are 1..15 (0 is __syncthreads)", what, id);
    if (n <= 0 || n % 32 || n > nthreads) fail("%s %d, %d: the thread count must be a positive multiple of 32 up to the block's %d", what, id, n, nthreads);
    NamedBar& nb = g_named[id];
    if (nb.b.arrived == 0) nb.expected = n;
    else if (nb.expected != n) fail("%s %d, %d while the barrier's current phase counts %d threads", what, id, n, nb.expected);
    if (++nb.b.arrived == n) {
        nb.b.arrived = 0;
        nb.b.gen++;
        return;
    }
    if (!sync) return;
    const unsigned gen = nb.b.gen;
    g_cur->wait_bar = &nb.b;
    g_cur->wait_gen = gen;
    while (nb.b.gen == gen) yield();
    g_cur->wait_bar = nullptr;
}

void wgmma_fence() {
    warp_exchange(OP_WG_FENCE, nullptr, 0, nullptr);
    if (g_cur->lane == 0) wg_log(OP_WG_FENCE, 0, 0, 0, "wgmma.fence");
    g_cur->wg_fenced = true;
}

void wgmma_commit() {
    warp_exchange(OP_WG_COMMIT, nullptr, 0, nullptr);
    if (g_cur->lane == 0) wg_log(OP_WG_COMMIT, 0, 0, 0, "wgmma.commit_group");
    Fiber& f = *g_cur;
    f.wg_groups.push_back(std::move(f.wg_uncommitted));
    f.wg_uncommitted.clear();
}

void wgmma_wait(int n) {
    uint32_t in = (uint32_t)n, all[32];
    warp_exchange(OP_WG_WAIT, &in, 1, all);
    for (int l = 0; l < 32; l++)
        if (all[l] != in) fail("wgmma.wait_group: lanes of one warp with different counts");
    if (g_cur->lane == 0) wg_log(OP_WG_WAIT, in, 0, 0, "wgmma.wait_group");
    Fiber& f = *g_cur;
    while ((int)f.wg_groups.size() > n) {
        // The operations complete in issue order; their shared-memory operands are read now.
        for (WgOp& op : f.wg_groups.front()) wgmma_compute(op);
        f.wg_groups.pop_front();
    }
    f.wg_fenced = false;  // the accumulators are the thread's again: the next mma_async needs a fence
}

void wgmma_mma(float* d, int n, int trans_b, uint64_t desc_a, const uint32_t* a_regs, uint64_t desc_b, int scale_d) {
    const char* what = a_regs ? "wgmma.mma_async (A in registers)" : "wgmma.mma_async";
    if (n % 8 || n < 8 || n > 256) fail("%s with N = %d", what, n);
    const bool rs = a_regs != nullptr;
    const uint32_t code = (uint32_t)n | (uint32_t)(trans_b ? 1 : 0) << 9 | (uint32_t)rs << 10;
    uint32_t in[8] = {code, (uint32_t)(scale_d != 0), (uint32_t)desc_b, (uint32_t)(desc_b >> 32), 0, 0, 0, 0};
    if (rs) for (int i = 0; i < 4; i++) in[4 + i] = a_regs[i];
    else {
        in[4] = (uint32_t)desc_a;
        in[5] = (uint32_t)(desc_a >> 32);
    }
    uint32_t all[32 * 8];
    warp_exchange(OP_WGMMA, in, 8, all);
    for (int l = 0; l < 32; l++)
        for (int i = 0; i < (rs ? 4 : 6); i++)
            if (all[l * 8 + i] != in[i]) fail("%s: lanes of one warp with different shapes, scale-d or descriptors", what);
    Fiber& f = *g_cur;
    if (!f.wg_fenced)
        fail("%s without a wgmma.fence since the warpgroup's last wgmma.wait_group (or ever): the accumulator and A registers "
             "must be fenced before the first mma_async after they were touched",
             what);
    check_desc(desc_b, what);
    if (!rs) check_desc(desc_a, what);
    if (f.lane == 0) wg_log(OP_WGMMA, ((uint64_t)code << 32) | (uint64_t)(scale_d != 0), desc_b, rs ? 0 : desc_a, what);
    WgOp op;
    op.d = d;
    op.n = n;
    op.trans_b = trans_b ? 1 : 0;
    op.scale_d = scale_d != 0;
    op.rs = rs;
    op.desc_a = desc_a;
    op.desc_b = desc_b;
    op.chained = false;
    op.a_src = a_regs;
    if (rs)
        for (int l = 0; l < 32; l++)
            for (int i = 0; i < 4; i++) op.a[l * 4 + i] = all[l * 8 + 4 + i];
    const int nd = n / 2;
    auto check_pending = [&](const WgOp& p) {
        const int pn = p.n / 2;
        if (p.d == d && p.n == n) op.chained = true;
        else if (p.d < d + nd && d < p.d + pn)
            fail("%s: accumulator registers overlap those of a pending wgmma of another shape or offset", what);
    };
    for (const auto& grp : f.wg_groups)
        for (const WgOp& p : grp) check_pending(p);
    for (const WgOp& p : f.wg_uncommitted) check_pending(p);
    if (op.scale_d && !op.chained) memcpy(op.c_in, d, sizeof(float) * (size_t)nd);
    // Not readable before the covering wait_group: NaN until then.
    for (int i = 0; i < nd; i++) d[i] = u2f(WG_POISON);
    f.wg_uncommitted.push_back(op);
}

void launch(const char* name, dim3 grid, dim3 block, size_t dyn_bytes, const std::function<void()>& kernel) {
    try {
        launch_blocks(name, grid, block, dyn_bytes, kernel);
    } catch (const Failure&) {
        g_cur = nullptr;
        g_smem_bytes = 0;
        g_kernel = "?";
        throw;
    }
}

bool mbar_test_wait(uint32_t bar, uint32_t parity) {
    MBar& m = mbar_get(bar, "mbarrier.test_wait.parity");
    if (parity > 1) fail("mbarrier.test_wait.parity at shared offset %u with parity %u (0 or 1)", bar, parity);
    return (m.phase & 1) != parity;
}

void launch_blocks(const char* name, dim3 grid, dim3 block, size_t dyn_bytes, const std::function<void()>& kernel) {
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
                g_mbars.clear();
                g_tma.clear();
                for (NamedBar& nb : g_named) nb = NamedBar{};
                for (WarpGroup& G : g_wg) G = WarpGroup{};
                // Registers at launch: the most the block size allows (65536 per CTA at one CTA
                // per SM, a multiple of 8 per thread, at most 256): what __launch_bounds__(n, 1)
                // lets ptxas use. A kernel compiled with fewer has a smaller pool on hardware; the
                // Hopper kernel static_asserts its split against this count (ptxas -v reports it).
                g_launch_regs = std::min(256, 65536 / (((n + 31) / 32) * 32) / 8 * 8);
                g_reg_free = 0;
                for (int w = 0; w < (n + 31) / 32; w++) {
                    g_warp_regs[w] = g_launch_regs;
                    g_warp_nreg_done[w] = 0;
                }
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
                    if (i < 0 && !g_tma.empty()) {
                        // Lazy bulk copies land at the latest possible point, when nothing else can
                        // run: the oldest first, or on round robin the newest (copies may complete in
                        // any order).
                        const bool newest = g_schedule == Schedule::RoundRobin;
                        TmaCopy c = std::move(newest ? g_tma.back() : g_tma.front());
                        if (newest) g_tma.pop_back();
                        else g_tma.pop_front();
                        tma_land(c);
                        continue;
                    }
                    if (i < 0) {
                        for (const Fiber& f : g_fibers)
                            if (!f.done && f.nreg_need) {
                                std::string held;
                                for (int w = 0; w < (n + 31) / 32; w++)
                                    held += (w ? ", " : "") + std::to_string(g_warp_regs[w]);
                                fail("deadlock: setmaxnreg.inc %d in warp %d (warpgroup %d) waits for %lld registers but the CTA's "
                                     "pool has %lld free and no warp can release more: the CTA launched with %d registers x %d "
                                     "threads = %lld, the warps now hold [%s] per thread; a producer/consumer split must fit "
                                     "(sum over warpgroups of setmaxnreg count x 128 <= launch registers x threads); on hardware "
                                     "this spins forever",
                                     f.nreg_target, f.warp, f.warp / 4, f.nreg_need, g_reg_free, g_launch_regs, n,
                                     (long long)g_launch_regs * n, held.c_str());
                            }
                        int on_mbar = 0;
                        const Fiber* ex = nullptr;
                        for (const Fiber& f : g_fibers)
                            if (!f.done && f.mbar_wait) {
                                on_mbar++;
                                if (!ex) ex = &f;
                            }
                        if (ex)
                            fail("deadlock: %d threads wait at barriers that can never complete (%d at __syncthreads, %d in "
                                 "mbarrier try_wait, e.g. thread %d for parity %u of the mbarrier at shared offset %u: phase %u in "
                                 "progress, %d arrivals and %lld transaction bytes pending, no bulk copy in flight)",
                                 g_live, g_block_bar.arrived, on_mbar, ex->linear, ex->mbar_parity, ex->mbar_wait->offset,
                                 ex->mbar_wait->phase, ex->mbar_wait->pending, ex->mbar_wait->tx);
                        int named = 0;
                        for (const Fiber& f : g_fibers)
                            for (const NamedBar& nb : g_named)
                                if (!f.done && f.wait_bar == &nb.b) named++;
                        fail("deadlock: %d threads wait at barriers that can never complete (%d at __syncthreads, %d at named "
                             "barriers)",
                             g_live, g_block_bar.arrived, named);
                    }
                    g_cur = &g_fibers[(size_t)i];
#ifdef EMU_FAST_SWITCH
                    emu_switch(&g_sched_sp, g_cur->sp);
#else
                    swapcontext(&g_sched, &g_cur->ctx);
#endif
                    g_cur = nullptr;
                    last = i;
                    if (g_aborted) {
                        g_aborted = false;
                        throw Failure{g_abort_msg};
                    }
                }
                if (!g_tma.empty())
                    fail("block ends with %zu bulk tensor copies in flight (into shared offset %u): every copy must be waited for",
                         g_tma.size(), g_tma.front().dst);
                for (int id = 1; id < 16; id++)
                    if (g_named[id].b.arrived)
                        fail("block ends with %d of %d threads arrived at named barrier %d: bar.sync / bar.arrive counts do not balance",
                             g_named[id].b.arrived, g_named[id].expected, id);
                for (int wg = 0; wg < (n + 127) / 128; wg++)
                    for (int w = 1; w < 4; w++)
                        if (g_wg[wg].pos[w] != g_wg[wg].pos[0])
                            fail("warps of warpgroup %d executed different numbers of warpgroup instructions (warp %d: %zu, warp %d: %zu)",
                                 wg, wg * 4, g_wg[wg].pos[0], wg * 4 + w, g_wg[wg].pos[w]);
            }
    g_cur = nullptr;
    g_smem_bytes = 0;
    g_kernel = "?";
}

}  // namespace emu
