// The emulated device: a shared library that stands in for libcuda.so (the CUDA driver API
// calls the engine makes through cudarc) and libcublasLt.so (the dense GEMMs), running the real
// kernels of kernels/*.cu on the CPU emulation (../include/cuda_emu.h). With it on
// LD_LIBRARY_PATH the engine's whole GPU path (device runtime, memory pool, streams and events,
// module loading, every launcher and its argument list, cuBLASLt calls, weight streaming) runs
// in CI without a GPU. tests/gpu_emulated.rs builds it and runs the GPU test binaries with it.
//
// Semantics: device memory is host memory (guard page after every allocation), every call is
// synchronous (streams and events only keep the API contract), one launch at a time (a global
// lock). cuDeviceGetName says what it is; nothing measured on it is a GPU number.
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <cmath>
#include <algorithm>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>
#include <string>

#include "cuda_emu.h"
#include "registry.h"

namespace emu {
std::map<std::string, KernelEntry>& registry() {
    static std::map<std::string, KernelEntry> r;
    return r;
}
}  // namespace emu

namespace {

std::recursive_mutex g_lock;


#define LOCK std::lock_guard<std::recursive_mutex> guard(g_lock)

// ---- streams -----------------------------------------------------------------------------
// Work issued on a stream is queued and runs only when the host has to see it (a synchronising
// call: stream/event/context sync, a synchronous memcpy, cuMemFree, ...). Then the queues are
// drained in an order that respects every cuStreamWaitEvent and prefers one stream: the first
// created (CONTENTV_EMU_STREAMS=compute-first, the default: a kernel that reads a buffer before
// the copy that fills it, without waiting for the copy's event, reads stale data), or the last
// created (copy-first: a copy into a buffer that a kernel still has to read, without waiting
// for the kernel's event, overwrites it first). `sync` runs everything at issue.
struct Op {
    std::function<void()> run;
    struct Stream* wait_stream = nullptr;  // runnable once wait_stream->executed >= wait_seq
    unsigned long long wait_seq = 0;
};
struct Stream {
    int id;
    std::deque<Op> q;
    unsigned long long issued = 0, executed = 0;
};
struct Event {
    Stream* s = nullptr;
    unsigned long long seq = 0;
    double t = 0;
};
enum class StreamMode { ComputeFirst, CopyFirst, Sync };
StreamMode g_stream_mode = StreamMode::ComputeFirst;
std::vector<Stream*> g_streams;
int g_next_stream = 0;

bool runnable(const Op& op) { return op.wait_stream == nullptr || op.wait_stream->executed >= op.wait_seq; }

void drain() {
    for (;;) {
        Stream* pick = nullptr;
        bool pending = false;
        for (Stream* st : g_streams) {
            if (st->q.empty()) continue;
            pending = true;
            if (!runnable(st->q.front())) continue;
            if (pick == nullptr || (g_stream_mode == StreamMode::CopyFirst ? st->id > pick->id : st->id < pick->id)) pick = st;
        }
        if (!pending) return;
        if (pick == nullptr) emu::fail("stream deadlock: every queued operation waits for an event that can never complete");
        Op op = std::move(pick->q.front());
        pick->q.pop_front();
        op.run();
        pick->executed++;
    }
}

// Queues `run` on stream `s` (the legacy null stream: drain everything, run now).
void enqueue(void* s, std::function<void()> run, Stream* wait_stream = nullptr, unsigned long long wait_seq = 0) {
    Stream* st = static_cast<Stream*>(s);
    if (st == nullptr || g_stream_mode == StreamMode::Sync) {
        if (st == nullptr) drain();
        if (wait_stream && wait_stream->executed < wait_seq) drain();
        run();
        if (st) {
            st->issued++;
            st->executed++;
        }
        return;
    }
    st->q.push_back(Op{std::move(run), wait_stream, wait_seq});
    st->issued++;
}

// Host memory from cuMemAllocHost / cuMemHostAlloc / cuMemHostRegister: async copies read or
// write it when they run. Other (pageable) memory is staged at the call, like the driver does.
std::map<uintptr_t, size_t> g_pinned;
bool is_pinned(const void* p, size_t n) {
    auto it = g_pinned.upper_bound((uintptr_t)p);
    if (it == g_pinned.begin()) return false;
    --it;
    return (uintptr_t)p + n <= it->first + it->second;
}

// Schedule of the emulated device: CONTENTV_EMU_SCHEDULE = roundrobin (default, the cheapest)
// | lowest | highest; CONTENTV_EMU_COPIES = lazy (default) | eager. See cuda_emu.h.
struct Config {
    Config() {
        const char* s = getenv("CONTENTV_EMU_SCHEDULE");
        const std::string sched = s ? s : "roundrobin";
        emu::g_schedule = sched == "lowest"    ? emu::Schedule::LowestFirst
                          : sched == "highest" ? emu::Schedule::HighestFirst
                                               : emu::Schedule::RoundRobin;
        const char* c = getenv("CONTENTV_EMU_COPIES");
        emu::g_copy_eager = c && std::string(c) == "eager";
        const char* m = getenv("CONTENTV_EMU_STREAMS");
        const std::string mode = m ? m : "compute-first";
        g_stream_mode = mode == "copy-first" ? StreamMode::CopyFirst : mode == "sync" ? StreamMode::Sync : StreamMode::ComputeFirst;
    }
} g_config;

constexpr int OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_FOUND = 500, INVALID_HANDLE = 400;

size_t total_bytes() {
    const char* v = getenv("CONTENTV_EMU_VRAM_GIB");
    const double gib = v ? atof(v) : 16.0;
    return (size_t)(gib * 1073741824.0);
}
size_t g_used = 0;
std::map<unsigned long long, size_t> g_sizes;  // device allocations

struct Func {
    const emu::KernelEntry* k;
    int max_dyn_smem = 48 * 1024;
};
std::map<std::string, Func*> g_funcs;

double now_ms() {
    timeval tv;
    gettimeofday(&tv, nullptr);
    return tv.tv_sec * 1e3 + tv.tv_usec * 1e-3;
}

int dev_alloc(unsigned long long* p, size_t bytes) {
    if (bytes == 0) return INVALID_VALUE;
    if (g_used + bytes > total_bytes()) return OUT_OF_MEMORY;
    *p = (unsigned long long)emu::device_alloc(bytes);
    g_sizes[*p] = bytes;
    g_used += bytes;
    return OK;
}
int dev_free(unsigned long long p) {
    auto it = g_sizes.find(p);
    if (it == g_sizes.end()) return INVALID_VALUE;
    g_used -= it->second;
    g_sizes.erase(it);
    emu::device_free((void*)p);
    return OK;
}

// The emulated driver and GPU: CONTENTV_EMU_DRIVER_VERSION (default 13000, the lent H200's
// driver) and CONTENTV_EMU_ARCH (compute capability as "9.0" or "90", default 9.0), so the
// engine's driver-version check and kernel-image choice are tested against drivers and GPUs
// we do not have. Module loading checks the image against both, as the driver does.
int env_int(const char* k, int dflt) {
    const char* v = getenv(k);
    return v && *v ? atoi(v) : dflt;
}
int driver_version() { return env_int("CONTENTV_EMU_DRIVER_VERSION", 13000); }
void arch(int* major, int* minor) {
    const char* v = getenv("CONTENTV_EMU_ARCH");
    std::string a = v && *v ? v : "9.0";
    size_t dot = a.find('.');
    if (dot != std::string::npos) {
        *major = atoi(a.substr(0, dot).c_str());
        *minor = atoi(a.substr(dot + 1).c_str());
    } else {
        int n = atoi(a.c_str());
        *major = n / 10;
        *minor = n % 10;
    }
}
int max_smem_optin() {
    int ma, mi;
    arch(&ma, &mi);
    const int sm = ma * 10 + mi;
    if (sm == 80 || sm == 87) return 163 * 1024;
    if (sm == 90 || sm == 100 || sm == 103) return 227 * 1024;
    return 99 * 1024;  // sm_86, sm_89, sm_120 and the rest
}

// A module keeps its image: a CUDA ELF cubin or NUL-terminated PTX, checked at load against the
// emulated GPU and driver as the driver checks them (the kernels that run are the emulated
// ones, but a kernel must be in the image to be found).
constexpr int INVALID_IMAGE = 200, NO_BINARY_FOR_GPU = 209, UNSUPPORTED_PTX_VERSION = 222;
struct Module {
    std::string image;
};
// The driver version a PTX ISA version needs (PTX ISA notes: 8.0 came with CUDA 12.0, ...).
int ptx_min_driver(int major, int minor) {
    if (major < 8) return 11000;
    if (major == 8) {
        static const int v[] = {12000, 12010, 12020, 12030, 12040, 12050, 12070, 12080, 12090};
        return minor <= 8 ? v[minor] : 12090;
    }
    return 13000 + (major - 9) * 1000 + minor * 10;
}
// A kernel fault, as the hardware reports it: CONTENTV_EMU_FAULT_KERNEL=<name> makes every
// launch of that kernel fail with CUDA_ERROR_ILLEGAL_ADDRESS when it runs. The error is sticky:
// every later synchronising call and launch returns it (the context is unusable), and which
// kernel caused it is not said, so the engine's CONTENTV_SYNC_LAUNCHES=1 is what names it.
constexpr int ILLEGAL_ADDRESS = 700;
int g_sticky = OK;
bool faults(const char* name) {
    const char* f = getenv("CONTENTV_EMU_FAULT_KERNEL");
    return f && *f && strcmp(f, name) == 0;
}
// A kernel that silently computes nothing, as a kernel miscompiled or misread for a GPU would
// give wrong numbers without an error: CONTENTV_EMU_SKIP_KERNEL=<name> makes every launch of
// that kernel succeed without running it (its output keeps whatever the memory held). Used to
// check that the engine's self-checks (ops::attention::select) catch such a kernel.
bool skipped(const char* name) {
    const char* f = getenv("CONTENTV_EMU_SKIP_KERNEL");
    return f && *f && strcmp(f, name) == 0;
}
}  // namespace

extern "C" {


// ---- init, device, context ------------------------------------------------------------------
int cuInit(unsigned) { return OK; }
int cuDriverGetVersion(int* v) { *v = driver_version(); return OK; }
int cuDeviceGetCount(int* n) { *n = 1; return OK; }
int cuDeviceGet(int* d, int ordinal) { if (ordinal != 0) return INVALID_VALUE; *d = 0; return OK; }
int cuDeviceGetName(char* name, int len, int) {
    snprintf(name, (size_t)len, "contentv CPU emulation (not a GPU)");
    return OK;
}
int cuDeviceTotalMem_v2(size_t* b, int) { *b = total_bytes(); return OK; }
int cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
    case 1: *v = 1024; break;            // max threads per block
    case 16: *v = 4; break;              // multiprocessors
    case 75: { int mi; arch(v, &mi); break; }  // compute capability major
    case 76: { int ma; arch(&ma, v); break; }  // and minor
    case 97: *v = max_smem_optin(); break;     // max shared memory per block (opt-in)
    case 115: *v = 0; break;             // no memory pools: plain cuMemAlloc
    default: *v = 0;
    }
    return OK;
}
static int g_ctx_dummy;
int cuDevicePrimaryCtxRetain(void** ctx, int) { *ctx = &g_ctx_dummy; return OK; }
int cuDevicePrimaryCtxRelease_v2(int) { return OK; }
int cuCtxSetCurrent(void*) { return OK; }
int cuCtxGetCurrent(void** ctx) { *ctx = &g_ctx_dummy; return OK; }
int cuCtxPushCurrent_v2(void*) { return OK; }
int cuCtxPopCurrent_v2(void** ctx) { if (ctx) *ctx = &g_ctx_dummy; return OK; }
int cuCtxSynchronize() { LOCK; drain(); return g_sticky; }
int cuCtxGetDevice(int* d) { *d = 0; return OK; }
int cuGetErrorString(int e, const char** s) {
    *s = e == OK ? "no error" : e == OUT_OF_MEMORY ? "out of memory (emulated device)" : "error (emulated device)";
    return OK;
}
int cuGetErrorName(int e, const char** s) { return cuGetErrorString(e, s); }

// ---- streams and events (all work is synchronous) -------------------------------------------
int cuStreamCreate(void** s, unsigned) {
    LOCK;
    Stream* st = new Stream{g_next_stream++, {}, 0, 0};
    g_streams.push_back(st);
    *s = st;
    return OK;
}
int cuStreamCreateWithPriority(void** s, unsigned f, int) { return cuStreamCreate(s, f); }
int cuStreamDestroy_v2(void* s) {
    LOCK;
    drain();
    g_streams.erase(std::find(g_streams.begin(), g_streams.end(), static_cast<Stream*>(s)));
    delete static_cast<Stream*>(s);
    return OK;
}
int cuStreamSynchronize(void*) { LOCK; drain(); return g_sticky; }
int cuStreamQuery(void*) { LOCK; drain(); return OK; }
int cuStreamWaitEvent(void* s, void* e, unsigned) {
    LOCK;
    Event* ev = static_cast<Event*>(e);
    if (ev->s != nullptr) enqueue(s, [] {}, ev->s, ev->seq);
    return OK;
}
int cuEventCreate(void** e, unsigned) { *e = new Event(); return OK; }
int cuEventDestroy_v2(void* e) { LOCK; delete static_cast<Event*>(e); return OK; }
int cuEventRecord(void* e, void* s) {
    LOCK;
    Event* ev = static_cast<Event*>(e);
    enqueue(s, [ev] { ev->t = now_ms(); });
    ev->s = static_cast<Stream*>(s);
    ev->seq = ev->s ? ev->s->issued : 0;
    return OK;
}
int cuEventRecordWithFlags(void* e, void* s, unsigned) { return cuEventRecord(e, s); }
int cuEventSynchronize(void*) { LOCK; drain(); return g_sticky; }
int cuEventQuery(void*) { LOCK; drain(); return OK; }
int cuEventElapsedTime(float* ms, void* a, void* b) {
    LOCK;
    drain();
    *ms = (float)(static_cast<Event*>(b)->t - static_cast<Event*>(a)->t);
    return OK;
}
int cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// ---- memory ---------------------------------------------------------------------------------
int cuMemAlloc_v2(unsigned long long* p, size_t bytes) { LOCK; return dev_alloc(p, bytes); }
int cuMemFree_v2(unsigned long long p) { LOCK; drain(); return dev_free(p); }
int cuMemAllocAsync(unsigned long long* p, size_t bytes, void*) { LOCK; return dev_alloc(p, bytes); }
int cuMemFreeAsync(unsigned long long p, void*) { LOCK; drain(); return dev_free(p); }
int cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    LOCK;
    *total = total_bytes();
    *free_b = *total - g_used;
    return OK;
}
int cuMemAllocHost_v2(void** p, size_t bytes) {
    LOCK;
    *p = malloc(bytes ? bytes : 1);
    if (!*p) return OUT_OF_MEMORY;
    g_pinned[(uintptr_t)*p] = bytes;
    return OK;
}
int cuMemHostAlloc(void** p, size_t bytes, unsigned) { return cuMemAllocHost_v2(p, bytes); }
int cuMemFreeHost(void* p) {
    LOCK;
    drain();
    g_pinned.erase((uintptr_t)p);
    free(p);
    return OK;
}
int cuMemHostRegister_v2(void* p, size_t n, unsigned) { LOCK; g_pinned[(uintptr_t)p] = n; return OK; }
int cuMemHostUnregister(void* p) { LOCK; drain(); g_pinned.erase((uintptr_t)p); return OK; }
int cuMemcpyHtoD_v2(unsigned long long d, const void* h, size_t n) { LOCK; drain(); memcpy((void*)d, h, n); return OK; }
int cuMemcpyDtoH_v2(void* h, unsigned long long d, size_t n) { LOCK; drain(); if (g_sticky) return g_sticky; memcpy(h, (const void*)d, n); return OK; }
int cuMemcpyDtoD_v2(unsigned long long d, unsigned long long s, size_t n) { LOCK; drain(); memmove((void*)d, (const void*)s, n); return OK; }
int cuMemcpyHtoDAsync_v2(unsigned long long d, const void* h, size_t n, void* s) {
    LOCK;
    if (is_pinned(h, n)) {
        enqueue(s, [=] { memcpy((void*)d, h, n); });
    } else {  // pageable: staged now
        auto staged = std::make_shared<std::vector<unsigned char>>((const unsigned char*)h, (const unsigned char*)h + n);
        enqueue(s, [=] { memcpy((void*)d, staged->data(), n); });
    }
    return OK;
}
int cuMemcpyDtoHAsync_v2(void* h, unsigned long long d, size_t n, void* s) {
    LOCK;
    if (is_pinned(h, n)) {
        enqueue(s, [=] { memcpy(h, (const void*)d, n); });
    } else {  // pageable: returns when the data is there
        enqueue(s, [=] { memcpy(h, (const void*)d, n); });
        drain();
    }
    return OK;
}
int cuMemcpyDtoDAsync_v2(unsigned long long d, unsigned long long src, size_t n, void* s) {
    LOCK;
    enqueue(s, [=] { memmove((void*)d, (const void*)src, n); });
    return OK;
}
int cuMemsetD8Async(unsigned long long d, unsigned char v, size_t n, void* s) {
    LOCK;
    enqueue(s, [=] { memset((void*)d, v, n); });
    return OK;
}
int cuMemsetD16Async(unsigned long long d, unsigned short v, size_t n, void* s) {
    LOCK;
    enqueue(s, [=] {
        for (size_t i = 0; i < n; i++) ((unsigned short*)d)[i] = v;
    });
    return OK;
}
int cuMemsetD32Async(unsigned long long d, unsigned v, size_t n, void* s) {
    LOCK;
    enqueue(s, [=] {
        for (size_t i = 0; i < n; i++) ((unsigned*)d)[i] = v;
    });
    return OK;
}
int cuMemsetD8_v2(unsigned long long d, unsigned char v, size_t n) { return cuMemsetD8Async(d, v, n, nullptr); }
int cuMemsetD16_v2(unsigned long long d, unsigned short v, size_t n) { return cuMemsetD16Async(d, v, n, nullptr); }
int cuMemsetD32_v2(unsigned long long d, unsigned v, size_t n) { return cuMemsetD32Async(d, v, n, nullptr); }

// ---- modules and launches -------------------------------------------------------------------
int cuModuleLoadData(void** m, const void* image) {
    if (image == nullptr) return INVALID_VALUE;
    const unsigned char* b = static_cast<const unsigned char*>(image);
    int ma, mi;
    arch(&ma, &mi);
    const int dev = ma * 10 + mi;
    std::string bytes;
    if (memcmp(b, "\x7f" "ELF", 4) == 0) {
        // ELF64: e_ident[8] is the CUDA ELF ABI version; e_flags (offset 48) holds the SM.
        const int abi = b[8];
        unsigned flags;
        memcpy(&flags, b + 48, 4);
        int sm;
        bool arch_specific = false;
        if (abi >= 8) {
            sm = (int)((flags >> 8) & 0xffff);
        } else {
            sm = (int)(flags & 0xff);
            arch_specific = (flags & 0x800) != 0;
        }
        if (abi >= 8 && driver_version() < 12080) return INVALID_IMAGE;  // ELF ABI 8: CUDA 12.8+
        const bool runs = sm == dev || (!arch_specific && sm / 10 == dev / 10 && sm % 10 <= dev % 10);
        if (!runs) return NO_BINARY_FOR_GPU;
        unsigned long long shoff;
        unsigned short shentsize, shnum;
        memcpy(&shoff, b + 40, 8);
        memcpy(&shentsize, b + 58, 2);
        memcpy(&shnum, b + 60, 2);
        bytes.assign((const char*)b, (size_t)(shoff + (unsigned long long)shentsize * shnum));
    } else {
        const char* text = static_cast<const char*>(image);
        bytes = text;
        const size_t v = bytes.find(".version "), t = bytes.find(".target sm_");
        if (v == std::string::npos || t == std::string::npos) return INVALID_IMAGE;
        const int pmaj = atoi(bytes.c_str() + v + 9);
        const int pmin = atoi(bytes.c_str() + bytes.find('.', v + 9) + 1);
        if (driver_version() < ptx_min_driver(pmaj, pmin)) return UNSUPPORTED_PTX_VERSION;
        if (atoi(bytes.c_str() + t + 11) > dev) return NO_BINARY_FOR_GPU;
    }
    *m = new Module{std::move(bytes)};
    return OK;
}
int cuModuleUnload(void* m) { delete static_cast<Module*>(m); return OK; }
int cuModuleGetFunction(void** f, void* m, const char* name) {
    LOCK;
    const std::string& img = static_cast<Module*>(m)->image;
    // A cubin names its kernels in sections .text.<name>, PTX in `.entry <name>(`.
    if (img.find(std::string(".text.") + name + '\0') == std::string::npos &&
        img.find(std::string(".entry ") + name + '(') == std::string::npos)
        return NOT_FOUND;
    auto it = g_funcs.find(name);
    if (it == g_funcs.end()) {
        auto k = emu::registry().find(name);
        if (k == emu::registry().end()) return NOT_FOUND;
        it = g_funcs.emplace(name, new Func{&k->second}).first;
    }
    *f = it->second;
    return OK;
}
int cuFuncSetAttribute(void* f, int attr, int v) {
    if (attr == 8) {
        if (v > max_smem_optin()) return INVALID_VALUE;
        static_cast<Func*>(f)->max_dyn_smem = v;
    }
    return OK;
}
int cuFuncGetAttribute(int* v, int attr, void* f) {
    // 0: max threads per block, 1: static shared memory (the emulation allocates it itself;
    // reported as 0), 8: max dynamic shared memory.
    *v = attr == 0 ? 1024 : attr == 8 ? static_cast<Func*>(f)->max_dyn_smem : 0;
    return OK;
}
int cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, void* s,
                   void** params, void** extra) {
    LOCK;
    if (g_sticky) return g_sticky;
    Func* fn = static_cast<Func*>(f);
    if (extra != nullptr || params == nullptr) return INVALID_VALUE;
    if ((int)smem > fn->max_dyn_smem) return INVALID_VALUE;  // like the hardware: opt in above 48 KiB
    if ((unsigned long long)bx * by * bz > 1024 || gx == 0 || gy == 0 || gz == 0 || gy > 65535 || gz > 65535) return INVALID_VALUE;
    // The parameter values are read at the launch (the caller's storage may be gone when the
    // kernel runs), each with its own size (8 bytes for the scalars and pointers, 128 for a
    // tensor map), in 64-byte aligned slots.
    const emu::KernelEntry* k = fn->k;
    size_t total = 0;
    std::vector<size_t> offs((size_t)k->arity);
    for (int i = 0; i < k->arity; i++) {
        offs[(size_t)i] = total;
        total += (k->sizes[i] + 63) / 64 * 64;
    }
    std::shared_ptr<unsigned char> values(static_cast<unsigned char*>(aligned_alloc(64, total + 64)), free);
    for (int i = 0; i < k->arity; i++) memcpy(values.get() + offs[(size_t)i], params[i], k->sizes[i]);
    const bool fault = faults(k->name), skip = skipped(k->name);
    enqueue(s, [=] {
        if (fault || g_sticky) {
            g_sticky = ILLEGAL_ADDRESS;
            return;
        }
        if (skip) return;
        std::vector<void*> ptrs((size_t)k->arity);
        for (int i = 0; i < k->arity; i++) ptrs[(size_t)i] = values.get() + offs[(size_t)i];
        emu::launch(k->name, dim3(gx, gy, gz), dim3(bx, by, bz), smem, [&] { k->invoke(k->fn, ptrs.data()); });
    });
    return OK;
}

// cuTensorMapEncodeTiled (CUDA 12.0): the emulator's encoder with the driver's validity rules
// (tests/emu/emu.cpp); the 128 bytes are what the emulated cp.async.bulk.tensor reads.
int cuTensorMapEncodeTiled(void* tensorMap, int tensorDataType, unsigned tensorRank, void* globalAddress, const unsigned long long* globalDim,
                           const unsigned long long* globalStrides, const unsigned* boxDim, const unsigned* elementStrides, int interleave,
                           int swizzle, int l2Promotion, int oobFill) {
    LOCK;
    static_assert(sizeof(unsigned long long) == sizeof(uint64_t), "cuuint64_t");
    return emu::tensor_map_encode_tiled(tensorMap, tensorDataType, tensorRank, globalAddress, (const uint64_t*)globalDim,
                                        (const uint64_t*)globalStrides, boxDim, elementStrides, interleave, swizzle, l2Promotion, oobFill);
}

// ---- cuBLASLt (naive GEMM with the epilogues the engine uses) -------------------------------
struct LtDesc {
    int transa = 0, transb = 0, epilogue = 1;
    const void* bias = nullptr;
    int bias_type = -1;
};
struct LtLayout {
    int type;
    unsigned long long rows, cols;
    long long ld;
    int batch = 1;
    long long stride = 0;
};
int cublasLtCreate(void** h) { *h = new int(0); return 0; }
int cublasLtDestroy(void* h) { delete static_cast<int*>(h); return 0; }
int cublasLtMatmulDescCreate(void** d, int compute, int scale) {
    if (compute != 68 /* CUBLAS_COMPUTE_32F */ || scale != 0 /* CUDA_R_32F */) return 7;  // not supported
    *d = new LtDesc();
    return 0;
}
int cublasLtMatmulDescDestroy(void* d) { delete static_cast<LtDesc*>(d); return 0; }
int cublasLtMatmulDescSetAttribute(void* dp, int attr, const void* buf, size_t size) {
    LtDesc* d = static_cast<LtDesc*>(dp);
    switch (attr) {
    case 3: memcpy(&d->transa, buf, 4); break;
    case 4: memcpy(&d->transb, buf, 4); break;
    case 7: memcpy(&d->epilogue, buf, 4); break;
    case 8: memcpy(&d->bias, buf, sizeof(void*)); break;
    case 26: memcpy(&d->bias_type, buf, 4); break;
    default: return 7;
    }
    (void)size;
    return 0;
}
int cublasLtMatrixLayoutCreate(void** l, int type, unsigned long long rows, unsigned long long cols, long long ld) {
    if (type != 0 && type != 2 && type != 14) return 7;
    if (ld < (long long)rows) return 7;  // CUBLAS_STATUS_INVALID_VALUE
    *l = new LtLayout{type, rows, cols, ld};
    return 0;
}
int cublasLtMatrixLayoutDestroy(void* l) { delete static_cast<LtLayout*>(l); return 0; }
int cublasLtMatrixLayoutSetAttribute(void* lp, int attr, const void* buf, size_t) {
    LtLayout* l = static_cast<LtLayout*>(lp);
    if (attr == 5) memcpy(&l->batch, buf, 4);
    else if (attr == 6) memcpy(&l->stride, buf, 8);
    else return 7;
    return 0;
}
int cublasLtMatmulPreferenceCreate(void** p) { *p = new int(0); return 0; }
int cublasLtMatmulPreferenceDestroy(void* p) { delete static_cast<int*>(p); return 0; }
int cublasLtMatmulPreferenceSetAttribute(void*, int, const void*, size_t) { return 0; }
struct HeurResult {
    unsigned long long algo[8];
    size_t workspace;
    int state;
    float waves;
    int reserved[4];
};
int cublasLtMatmulAlgoGetHeuristic(void*, void*, void*, void*, void*, void*, void*, int requested, HeurResult* res, int* count) {
    if (requested < 1) return 7;
    memset(res, 0, sizeof(HeurResult));
    *count = 1;
    return 0;
}

static double load_elem(const void* p, int type, long long i) {
    if (type == 0) return ((const float*)p)[i];
    if (type == 14) return emu::bf2f(((const uint16_t*)p)[i]);
    return emu::h2f(((const uint16_t*)p)[i]);
}
static void store_elem(void* p, int type, long long i, float v) {
    if (type == 0) ((float*)p)[i] = v;
    else if (type == 14) ((uint16_t*)p)[i] = emu::f2bf(v);
    else ((uint16_t*)p)[i] = emu::f2h(v);
}

// D = alpha op(A) op(B) + beta C, column-major, then the epilogue (bias per row of D, GELU tanh).
static int matmul_now(bool run, const LtDesc& d, float al, float be, const void* A, const LtLayout& a, const void* B, const LtLayout& b,
                      const void* C, const LtLayout& c, void* D, const LtLayout& o) {
    const long long m = (long long)o.rows, n = (long long)o.cols;
    const long long k = d.transa ? (long long)a.rows : (long long)a.cols;
    const long long am = d.transa ? (long long)a.cols : (long long)a.rows;
    const long long bk = d.transb ? (long long)b.cols : (long long)b.rows;
    const long long bn = d.transb ? (long long)b.rows : (long long)b.cols;
    if (am != m || bk != k || bn != n || (long long)c.rows != m || (long long)c.cols != n) return 7;
    const bool bias = d.epilogue == 4 || d.epilogue == 36, gelu = d.epilogue == 32 || d.epilogue == 36;
    if (d.epilogue != 1 && !bias && !gelu) return 7;
    if (bias && d.bias == nullptr) return 7;
    if (!run) return 0;
    const int bias_type = d.bias_type < 0 ? o.type : d.bias_type;
    // The operands are converted to f32 once per batch, k-contiguous (every storage type here
    // is exact in f32), so the inner loop is a dot product of two rows; the arithmetic is
    // unchanged: each product exact in double, rounded to f32, accumulated in f32.
    std::vector<float> af((size_t)(m * k)), bf((size_t)(n * k));
    for (int bt = 0; bt < o.batch; bt++) {
        for (long long i = 0; i < m; i++)
            for (long long p = 0; p < k; p++)
                af[(size_t)(i * k + p)] = (float)load_elem(A, a.type, bt * a.stride + (d.transa ? i * a.ld + p : p * a.ld + i));
        for (long long j = 0; j < n; j++)
            for (long long p = 0; p < k; p++)
                bf[(size_t)(j * k + p)] = (float)load_elem(B, b.type, bt * b.stride + (d.transb ? p * b.ld + j : j * b.ld + p));
        for (long long j = 0; j < n; j++)
            for (long long i = 0; i < m; i++) {
                const float* ar = &af[(size_t)(i * k)];
                const float* br = &bf[(size_t)(j * k)];
                float s = 0.f;  // f32 accumulation like CUBLAS_COMPUTE_32F
                for (long long p = 0; p < k; p++) s += (float)((double)ar[p] * (double)br[p]);
                float v = al * s;
                if (be != 0.f) v += be * (float)load_elem(C, c.type, bt * c.stride + j * c.ld + i);
                if (bias) v += (float)load_elem(d.bias, bias_type, i);
                if (gelu) v = 0.5f * v * (1.f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
                store_elem(D, o.type, bt * o.stride + j * o.ld + i, v);
            }
    }
    return 0;
}

// Checked at the call (errors are returned then), computed when the stream runs it.
int cublasLtMatmul(void*, void* dp, const void* alpha, const void* A, void* la, const void* B, void* lb, const void* beta, const void* C,
                   void* lc, void* D, void* ld, const void*, void*, size_t, void* stream) {
    LOCK;
    const LtDesc d = *static_cast<LtDesc*>(dp);
    const LtLayout a = *static_cast<LtLayout*>(la), b = *static_cast<LtLayout*>(lb), c = *static_cast<LtLayout*>(lc),
                   o = *static_cast<LtLayout*>(ld);
    const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
    const int err = matmul_now(false, d, al, be, A, a, B, b, C, c, D, o);
    if (err) return err;
    enqueue(stream, [=] { matmul_now(true, d, al, be, A, a, B, b, C, c, D, o); });
    return 0;
}

}  // extern "C"
