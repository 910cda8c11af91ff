// CPU emulation of the CUDA subset used by kernels/*.cu, so that CI (no GPU) runs the real
// kernel sources on small shapes and compares them with plain references (tests/emu/*.cpp).
//
// Model: a kernel launch runs its blocks one after another; the threads of a block are fibers
// (ucontext) on one OS thread, each running until it reaches a barrier or a warp collective and
// then yielding. That schedule is adversarial on purpose: a thread runs as far ahead as the
// synchronisation allows, so a missing __syncthreads or cp.async wait shows up as wrong data.
//
// Emulated with the PTX ISA semantics: __syncthreads, __syncwarp, __shfl_sync, __shfl_xor_sync,
// ldmatrix .x4 (and .trans), mma.sync m16n8k16 (bf16 and f16 operands, f32 accumulators),
// cp.async 4/8/16 bytes with zero fill, commit_group / wait_group (a copy lands when its group
// is waited for, not earlier), bf16/f16 conversions with round to nearest even, prmt.b32
// (default mode, sign replication included) and sub.rn.f16x2.
//
// Checked, each a test failure with the kernel, block and thread named: a warp collective with
// a lane missing (exited or diverged) or lanes at different collectives, __syncthreads after
// some threads exited, a deadlock, ldmatrix / cp.async addresses that are misaligned or outside
// the launch's dynamic shared memory, cp.async reads outside every allocated device buffer,
// copies still in flight when a thread exits. Device buffers end at a guard page (an
// out-of-bounds access past the end faults), dynamic shared memory is poisoned with NaN bytes.
//
// Hopper subset (kernels/hopper.cuh; include/cuda_emu_hopper.h, runtime in emu.cpp), from the
// PTX ISA; tests/emu/test_hopper.cpp checks it against hand-placed cases and mutations:
//   - mbarrier init / arrive / arrive.expect_tx / try_wait.parity: state in a side table keyed
//     by the shared offset (phase, pending arrivals, transaction bytes); a phase completes when
//     both reach 0; try_wait.parity(p) is true once the phase of parity p completed (p = 1 is
//     true at once on a fresh barrier). A waiting thread blocks (yields) until then: the time
//     limit of the real try_wait never expires here. Checked: 8-byte aligned and inside the
//     dynamic shared memory (static __shared__ is a host static here: mbarriers, TMA
//     destinations and wgmma operands must be in dynamic shared memory), use before init, a plain
//     store over a live barrier (its 8 bytes hold a marker), more arrivals than the count,
//     transaction underflow (a copy completing bytes no expect_tx announced, e.g. a missing
//     expect_tx or the copy issued before it), tx-count above 2^20 - 1, parity not 0 or 1,
//     deadlock (every live thread blocked and no copy in flight) naming a waiting thread and
//     the barrier's state. fence.mbarrier_init is recorded: a bulk copy completing on a barrier
//     whose initialising thread did not fence after the init fails. fence.proxy.async is
//     accepted and not checked (plain shared-memory stores cannot be tracked).
//   - cp.async.bulk.tensor (tma_load_3d) with maps from emu::tensor_map_encode_tiled (the
//     emulated driver's cuTensorMapEncodeTiled: the driver's validity rules and CUresult codes;
//     interleaved layouts are valid but not emulated: 801): box with element strides, zero (or
//     NaN-request) fill of out-of-bounds elements, the full box's bytes completed on the
//     barrier, the 32/64/128-byte swizzle (Swizzle<1|2|3,4,3> on the shared address: 16-byte
//     chunk bits XOR the 128-byte line bits; box rows are packed at boxDim[0] x element bytes).
//     Lazy mode: a copy lands (bytes written, then complete_tx) only when no thread can run,
//     oldest first (newest first on round robin); eager mode: at issue. Checked: destination
//     aligned to 128 bytes (256 / 512 / 1024 with 32B / 64B / 128B swizzle) and inside shared
//     memory, not over a live mbarrier, the map's rank, every element read inside a device
//     buffer, no copy in flight at block end.
//   - elect.sync (warp collective; the leader is lane 0, lane 31 or changing with the schedule),
//     setmaxnreg.inc/.dec (all 128 threads of a full warpgroup, N a multiple of 8 in [24, 256],
//     inc not below / dec not above the warpgroup's last value) with the CTA's register pool:
//     the CTA launches with R registers per thread (the most its block size allows at one CTA per
//     SM, 65536 / threads rounded down to 8, at most 256: what __launch_bounds__(threads, 1) gives
//     ptxas), i.e. R x threads in all and none free; dec returns registers to the pool, inc
//     blocks (the warp waits, as on hardware) until the pool has them; a split that can never be
//     satisfied (every thread blocked) is reported as a setmaxnreg deadlock naming the warp, the
//     registers wanted and free and what every warp holds (on hardware it spins forever). A warp
//     that exits keeps its registers here. bar.sync / bar.arrive with a
//     named barrier id 1..15 and a thread count (multiple of 32, one per thread, the same count
//     for a phase; pending arrivals at block end fail).
//   - wgmma.mma_async m64nNk16 (any N multiple of 8 up to 256; bf16 x bf16 -> f32), A from
//     shared memory or registers (per warp the m16n8k16 A fragment), B K-major or MN-major; the
//     shared-memory matrix descriptor (start, LBO, SBO, swizzle; reserved bits and a non-zero
//     base offset fail) read with the canonical layouts of the PTX ISA. Asynchrony: on issue
//     the accumulators become a signaling NaN; wgmma.wait_group computes the retired groups in
//     issue order (chaining ops on the same accumulators), reading the shared operands then, so a
//     missing wait reads NaN and an operand overwritten before the wait gives wrong data. The
//     register A operand is taken at issue and checked unchanged at the covering wait (each
//     thread its own four registers), and the accumulators are checked still holding the
//     poison: a write to either while the wgmma is in flight (P rewritten, O rescaled before the
//     wait; arithmetic on the poison gives a quiet NaN, other bits) fails, as it is undefined on
//     hardware. The register pins of hopper.cuh (wgmma_fence_operand) are no-ops here: what they
//     prevent, the compiler moving or reusing those registers, cannot happen in the emulation and
//     is not checked (the kernel's SASS is). Each warp
//     computes its own 16 rows at its own wait (so a buffer must stay intact until every warp of
//     the warpgroup has waited). Checked: every warp of the warpgroup executes the same sequence
//     of fence / mma (shape, scale-d, descriptors) / commit / wait (a warp that exited before an
//     instruction the others executed, or different counts at block end, fail); a wgmma.fence
//     before the first mma_async after each wait_group; no pending or uncommitted wgmma at
//     thread exit; accumulators overlapping a pending op of another shape; operand reads past
//     the shared memory. Products are exact (double); the accumulation is rounded to f32 once
//     per k16 step, not in the tensor core's order.
// Not emulated: clusters and multicast, TMA stores, im2col maps, stmatrix, the .sp variants,
// other wgmma types (f16 / tf32 / fp8 / int8 would be a line each in wgmma_operand).
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#define CONTENTV_EMU 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define DYNAMIC_SMEM(name) unsigned char* name = emu::dyn_smem()

// ------------------------------------------------------------------------------------------
// Vector types and conversions
// ------------------------------------------------------------------------------------------

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3() = default;
    dim3(unsigned a, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

struct __nv_bfloat16 { uint16_t bits; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };
struct __half { uint16_t bits; };
struct __attribute__((aligned(4))) __half2 { __half x, y; };

namespace emu {
inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
inline uint16_t f2bf(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
inline float bf2f(uint16_t h) { return u2f((uint32_t)h << 16); }
inline float h2f(uint16_t h) {
    uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return u2f(s | 0x7f800000u | (m << 13));
    if (e == 0) {
        if (m == 0) return u2f(s);
        float v = std::ldexp((float)m, -24);
        return s ? -v : v;
    }
    return u2f(s | ((e + 112) << 23) | (m << 13));
}
inline uint16_t f2h(float f) {
    uint32_t u = f2u(f), s = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(s | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(s | 0x7c00u);  // rounds to >= 65520: inf
    if (a < 0x38800000u) {                                  // subnormal or zero: multiples of 2^-24
        float v = std::nearbyint(u2f(a) * 16777216.0f);     // exact scaling, round to nearest even
        return (uint16_t)(s | (uint32_t)v);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(s | ((r - 0x38000000u) >> 13));
}
}  // namespace emu

inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{emu::f2bf(f)}; }
inline float __bfloat162float(__nv_bfloat16 h) { return emu::bf2f(h.bits); }
inline __half __float2half_rn(float f) { return __half{emu::f2h(f)}; }
inline float __half2float(__half h) { return emu::h2f(h.bits); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__float2bfloat16_rn(a), __float2bfloat16_rn(b)}; }
inline __half2 __floats2half2_rn(float a, float b) { return {__float2half_rn(a), __float2half_rn(b)}; }

inline float __uint_as_float(unsigned u) { return emu::u2f(u); }
inline unsigned __float_as_uint(float f) { return emu::f2u(f); }
inline float __int_as_float(int i) { return emu::u2f((uint32_t)i); }

inline float __expf(float x) { return expf(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
template <typename T> inline T __ldg(const T* p) { return *p; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }

// ------------------------------------------------------------------------------------------
// Runtime (tests/emu/emu.cpp)
// ------------------------------------------------------------------------------------------

namespace emu {
struct Fiber;
extern Fiber* g_cur;
extern dim3 g_block_idx, g_block_dim, g_grid_dim;
const dim3& thread_idx();
unsigned char* dyn_smem();

[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Tests of the emulator's own checks: with g_fail_throws set, fail() makes the launch throw
// Failure (the kernel's threads are abandoned) instead of ending the process.
struct Failure {
    std::string msg;
};
extern bool g_fail_throws;

void syncthreads();
// Warp collective: every lane posts `n` words and gets back the words of all 32 lanes
// (out[lane * n + i]); `op` names the instruction (lanes must agree). n <= 8.
void warp_exchange(int op, const uint32_t* in, int n, uint32_t* out);

// cp.async: dst is an offset into the dynamic shared memory. When the copy lands is up to the
// hardware, anywhere between the issue and the wait_group that covers it: lazy (the default)
// lands it at the wait, which exposes reads before the wait; eager lands it at once, which
// exposes refills of a buffer other warps may still read. The tests run in both modes.
extern bool g_copy_eager;
// Which ready thread runs next: the lowest (or highest) index lets one warp run as far ahead of
// the others as the barriers allow, in both directions; round robin is closest to hardware.
enum class Schedule { LowestFirst, HighestFirst, RoundRobin };
extern Schedule g_schedule;
void cp_async(uint32_t dst, const void* src, int bytes, int src_bytes);
void cp_async_commit_group();
void cp_async_wait_group(int n);
// Checks that [off, off + bytes) lies in the launch's dynamic shared memory, aligned to `align`.
void check_smem(uint32_t off, int bytes, int align, const char* what);

// Device memory: `bytes` ending at a guard page, registered for the cp.async range check.
void* device_alloc(size_t bytes);
void device_free(void* p);

// Runs `kernel` for every block of `grid` with `block` threads and `dyn_smem` bytes of dynamic
// shared memory. `name` appears in failure messages.
void launch(const char* name, dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()>& kernel);
void launch_blocks(const char* name, dim3 grid, dim3 block, size_t dyn_smem, const std::function<void()>& kernel);
}  // namespace emu

#define threadIdx (emu::thread_idx())
#define blockIdx (emu::g_block_idx)
#define blockDim (emu::g_block_dim)
#define gridDim (emu::g_grid_dim)

inline void __syncthreads() { emu::syncthreads(); }

namespace emu {
enum Op {
    OP_SYNCWARP = 1, OP_SHFL, OP_SHFL_XOR, OP_LDSM, OP_LDSM_T, OP_MMA_BF16, OP_MMA_F16,
    OP_ELECT, OP_SETMAXNREG, OP_WG_FENCE, OP_WG_COMMIT, OP_WG_WAIT, OP_WGMMA
};
inline void check_full_mask(unsigned mask, const char* what) {
    if (mask != 0xffffffffu) fail("%s with mask 0x%08x: the emulator supports full-warp masks only", what, mask);
}
int lane_id();
}  // namespace emu

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    emu::check_full_mask(mask, "__syncwarp");
    emu::warp_exchange(emu::OP_SYNCWARP, nullptr, 0, nullptr);
}
inline float __shfl_sync(unsigned mask, float v, int src) {
    emu::check_full_mask(mask, "__shfl_sync");
    uint32_t in = emu::f2u(v), all[32];
    emu::warp_exchange(emu::OP_SHFL, &in, 1, all);
    return emu::u2f(all[src & 31]);
}
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    emu::check_full_mask(mask, "__shfl_xor_sync");
    uint32_t in = emu::f2u(v), all[32];
    emu::warp_exchange(emu::OP_SHFL_XOR, &in, 1, all);
    return emu::u2f(all[(emu::lane_id() ^ lane_mask) & 31]);
}

// ------------------------------------------------------------------------------------------
// The PTX wrappers of kernels/ptx.cuh
// ------------------------------------------------------------------------------------------

inline uint32_t smem_u32(const void* p) {
    const unsigned char* base = emu::dyn_smem();
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (base == nullptr || q < base) emu::fail("shared-memory address of a pointer outside the dynamic shared memory");
    return (uint32_t)(q - base);
}
inline void cp_async16(uint32_t dst, const void* src, bool pred) { emu::cp_async(dst, src, 16, pred ? 16 : 0); }
inline void cp_async8(uint32_t dst, const void* src, bool pred) { emu::cp_async(dst, src, 8, pred ? 8 : 0); }
inline void cp_async4(uint32_t dst, const void* src, bool pred) { emu::cp_async(dst, src, 4, pred ? 4 : 0); }
inline void cp_async_commit() { emu::cp_async_commit_group(); }
template <int N> inline void cp_async_wait() { emu::cp_async_wait_group(N); }

namespace emu {
inline void ldsm(uint32_t (&r)[4], uint32_t addr, bool trans) {
    check_smem(addr, 16, 16, trans ? "ldmatrix.trans row" : "ldmatrix row");
    uint32_t all[32];
    warp_exchange(trans ? OP_LDSM_T : OP_LDSM, &addr, 1, all);
    const int l = lane_id();
    const unsigned char* sm = dyn_smem();
    for (int j = 0; j < 4; j++) {
        uint16_t e[2];
        for (int h = 0; h < 2; h++) {
            // Plain: row l / 4, column 2 (l % 4) + h of matrix j. Trans: row 2 (l % 4) + h, column l / 4.
            const int row = trans ? 2 * (l & 3) + h : l >> 2;
            const int col = trans ? l >> 2 : 2 * (l & 3) + h;
            memcpy(&e[h], sm + all[j * 8 + row] + 2 * col, 2);
        }
        r[j] = (uint32_t)e[0] | ((uint32_t)e[1] << 16);
    }
}
inline float lo_hi(uint32_t v, int hi, bool bf16) {
    const uint16_t h = (uint16_t)(hi ? v >> 16 : v & 0xffff);
    return bf16 ? bf2f(h) : h2f(h);
}
inline void mma(float (&c)[4], const uint32_t (&ab)[6], bool bf16) {
    uint32_t all[32 * 6];
    warp_exchange(bf16 ? OP_MMA_BF16 : OP_MMA_F16, ab, 6, all);
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; L++) {
        const uint32_t* p = all + L * 6;
        const int g = L >> 2, t = L & 3;
        for (int h = 0; h < 2; h++) {
            A[g][2 * t + h] = lo_hi(p[0], h, bf16);
            A[g + 8][2 * t + h] = lo_hi(p[1], h, bf16);
            A[g][2 * t + 8 + h] = lo_hi(p[2], h, bf16);
            A[g + 8][2 * t + 8 + h] = lo_hi(p[3], h, bf16);
            B[2 * t + h][g] = lo_hi(p[4], h, bf16);
            B[2 * t + 8 + h][g] = lo_hi(p[5], h, bf16);
        }
    }
    const int l = lane_id(), g = l >> 2, t = l & 3;
    for (int e = 0; e < 4; e++) {
        const int row = g + (e >> 1) * 8, col = 2 * t + (e & 1);
        double s = 0;  // products of 16-bit floats are exact in double
        for (int k = 0; k < 16; k++) s += (double)A[row][k] * (double)B[k][col];
        c[e] = (float)((double)c[e] + s);
    }
}
}  // namespace emu

inline void ldsm_x4(uint32_t (&r)[4], uint32_t addr) { emu::ldsm(r, addr, false); }
inline void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) { emu::ldsm(r, addr, true); }
inline void mma_16816_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    const uint32_t ab[6] = {a0, a1, a2, a3, b0, b1};
    emu::mma(c, ab, true);
}
inline void mma_16816_f16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    const uint32_t ab[6] = {a0, a1, a2, a3, b0, b1};
    emu::mma(c, ab, false);
}
inline float fast_exp2(float x) { return exp2f(x); }
// prmt.b32 default mode (PTX ISA): nibble i of sel picks byte (nibble & 7) of {b:a} for result
// byte i; nibble bit 3 replicates that byte's sign bit instead.
inline uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    const uint64_t ab = (uint64_t)a | ((uint64_t)b << 32);
    uint32_t d = 0;
    for (int i = 0; i < 4; i++) {
        const uint32_t nib = (sel >> (4 * i)) & 0xf;
        uint32_t byte = (uint32_t)(ab >> (8 * (nib & 7))) & 0xff;
        if (nib & 8) byte = (byte & 0x80) ? 0xff : 0x00;
        d |= byte << (8 * i);
    }
    return d;
}
// sub.rn.f16x2: each lane's f16 difference, rounded to nearest even. The f32 difference of two
// f16 is exact or within half an f32 ulp (24 >= 2 * 11 + 2 bits: rounding it again to f16 is
// the correctly rounded f16 difference).
inline uint32_t hsub2_u32(uint32_t a, uint32_t b) {
    const uint16_t lo = emu::f2h(emu::h2f((uint16_t)a) - emu::h2f((uint16_t)b));
    const uint16_t hi = emu::f2h(emu::h2f((uint16_t)(a >> 16)) - emu::h2f((uint16_t)(b >> 16)));
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

#include "cuda_emu_hopper.h"
