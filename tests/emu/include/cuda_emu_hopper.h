// The Hopper (sm_90a) subset of the CUDA emulation: every function of kernels/hopper.cuh with
// the semantics of the PTX ISA (included at the end of cuda_emu.h, which has the model; the
// runtime is in tests/emu/emu.cpp). What is emulated and checked is listed in cuda_emu.h's
// header comment, section "Hopper subset".
#pragma once
#include <stdint.h>

struct TmaDesc;  // kernels/hopper.cuh: the 128 bytes of a tensor map

namespace emu {

// ---- mbarrier (the barrier lives in the launch's dynamic shared memory; its state is kept in
// a side table keyed by the offset, the 8 bytes themselves hold a marker that plain stores
// would destroy) ----
void mbar_init(uint32_t bar, uint32_t count);
void mbar_fence_init();
void mbar_arrive(uint32_t bar);
void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes);
bool mbar_try_wait(uint32_t bar, uint32_t parity);
// mbarrier.test_wait.parity: the same test without waiting (not in hopper.cuh; for the tests).
bool mbar_test_wait(uint32_t bar, uint32_t parity);

// ---- tensor maps and the bulk tensor copy ----
// cuTensorMapEncodeTiled (cuda.h) with its validity rules; returns a CUresult (0 success,
// 1 CUDA_ERROR_INVALID_VALUE, 801 CUDA_ERROR_NOT_SUPPORTED for the interleaved layouts the
// emulator does not implement). The enums are passed as their int values.
enum TensorMapDataType {
    TMAP_UINT8 = 0, TMAP_UINT16, TMAP_UINT32, TMAP_INT32, TMAP_UINT64, TMAP_INT64, TMAP_FLOAT16, TMAP_FLOAT32, TMAP_FLOAT64,
    TMAP_BFLOAT16, TMAP_FLOAT32_FTZ, TMAP_TFLOAT32, TMAP_TFLOAT32_FTZ
};
enum TensorMapSwizzle { TMAP_SWIZZLE_NONE = 0, TMAP_SWIZZLE_32B, TMAP_SWIZZLE_64B, TMAP_SWIZZLE_128B };
int tensor_map_encode_tiled(void* tensorMap, int tensorDataType, uint32_t tensorRank, void* globalAddress, const uint64_t* globalDim,
                            const uint64_t* globalStrides, const uint32_t* boxDim, const uint32_t* elementStrides, int interleave,
                            int swizzle, int l2Promotion, int oobFill);
// cp.async.bulk.tensor.Nd (N = the map's rank, coords[0] innermost) into shared memory at `dst`,
// completing the box's bytes on the mbarrier `bar`.
void tma_load(uint32_t dst, const void* map, uint32_t bar, const int* coords, int n);
void fence_proxy_async();

// ---- warp and warpgroup control ----
bool elect_one();
void setmaxnreg(int n, bool inc);
// bar.sync / bar.arrive with a barrier id (1..15; 0 is __syncthreads) and a thread count (a
// multiple of 32): each thread counts one; the barrier completes when `n` threads arrived.
void named_bar(int id, int n, bool sync);

// ---- wgmma ----
void wgmma_fence();
void wgmma_commit();
void wgmma_wait(int n);
// d[n / 2] (+)= A (64 x 16) * B (16 x n), bf16 operands, f32 accumulators. A from shared memory
// (desc_a, K-major) when a_regs is null, else from the four registers of the m16n8k16 A
// fragment of each warp; B from shared memory (desc_b), K-major (trans_b 0) or MN-major (1).
void wgmma_mma(float* d, int n, int trans_b, uint64_t desc_a, const uint32_t* a_regs, uint64_t desc_b, int scale_d);
}  // namespace emu

#define __grid_constant__

inline void mbar_init(uint32_t bar, uint32_t count) { emu::mbar_init(bar, count); }
inline void mbar_fence_init() { emu::mbar_fence_init(); }
inline void mbar_arrive(uint32_t bar) { emu::mbar_arrive(bar); }
inline void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) { emu::mbar_arrive_expect_tx(bar, bytes); }
inline bool mbar_try_wait(uint32_t bar, uint32_t parity) { return emu::mbar_try_wait(bar, parity); }

inline void tma_load_3d(uint32_t dst, const TmaDesc* map, uint32_t bar, int c0, int c1, int c2) {
    const int c[3] = {c0, c1, c2};
    emu::tma_load(dst, map, bar, c, 3);
}
inline void fence_proxy_async() { emu::fence_proxy_async(); }

inline bool elect_one() { return emu::elect_one(); }
template <int N>
inline void setmaxnreg_inc() { emu::setmaxnreg(N, true); }
template <int N>
inline void setmaxnreg_dec() { emu::setmaxnreg(N, false); }

// Named barriers (kernels/hopper.cuh): bar.sync id, n and bar.arrive id, n.
inline void named_bar_sync(int id, int n) { emu::named_bar(id, n, true); }
inline void named_bar_arrive(int id, int n) { emu::named_bar(id, n, false); }

inline void wgmma_fence() { emu::wgmma_fence(); }
inline void wgmma_commit() { emu::wgmma_commit(); }
template <int N>
inline void wgmma_wait() { emu::wgmma_wait(N); }
// The register pins of hopper.cuh order nothing here (the emulator's calls are not reordered);
// what they protect on hardware, registers untouched while a wgmma is in flight, is checked at
// the covering wait (emu.cpp, wgmma_compute).
template <int R>
inline void wgmma_fence_operand(float (&)[R]) {}
template <int R, int C>
inline void wgmma_fence_operand(uint32_t (&)[R][C]) {}

// Any m64nNk16 (N a multiple of 8 up to 256): the wrappers of hopper.cuh are one line each.
template <int N, int TRANS_B>
inline void wgmma_m64k16_ss(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
    static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma m64nNk16: N is a multiple of 8 in [8, 256]");
    emu::wgmma_mma(d, N, TRANS_B, desc_a, nullptr, desc_b, scale_d);
}
template <int N, int TRANS_B>
inline void wgmma_m64k16_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b, int scale_d) {
    static_assert(N % 8 == 0 && N >= 8 && N <= 256, "wgmma m64nNk16: N is a multiple of 8 in [8, 256]");
    emu::wgmma_mma(d, N, TRANS_B, 0, a, desc_b, scale_d);
}
template <int TRANS_B>
inline void wgmma_m64n64k16_ss(float (&d)[32], uint64_t a, uint64_t b, int s) { wgmma_m64k16_ss<64, TRANS_B>(d, a, b, s); }
template <int TRANS_B>
inline void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b, int s) { wgmma_m64k16_rs<64, TRANS_B>(d, a, b, s); }
template <int TRANS_B>
inline void wgmma_m64n128k16_ss(float (&d)[64], uint64_t a, uint64_t b, int s) { wgmma_m64k16_ss<128, TRANS_B>(d, a, b, s); }
template <int TRANS_B>
inline void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b, int s) { wgmma_m64k16_rs<128, TRANS_B>(d, a, b, s); }
