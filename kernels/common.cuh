// Shared device helpers of the contentv kernels: typed loads/stores, rounding to the storage
// type (the reference rounds bf16 intermediates; we round at the same points), activations,
// block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#if defined(__CUDACC_RTC__)
// NVRTC (the build's compiler, build.rs) has no C library headers: the fixed-width integer
// types and INFINITY are all the kernels take from them.
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#else
#include <stdint.h>
#include <math.h>
#endif

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// x rounded to T's precision and back (identity for float).
template <typename T> __device__ __forceinline__ float rnd(float x) { return to_f(from_f<T>(x)); }

// Activation codes: 0 none, 1 silu, 2 gelu (tanh), 3 gelu (erf), 4 quick_gelu. Same as ops::gemm::Act::code.
__device__ __forceinline__ float act_apply(float x, int code) {
    switch (code) {
    case 1: return x / (1.f + __expf(-x));
    case 2: return 0.5f * x * (1.f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
    case 3: return 0.5f * x * (1.f + erff(x * 0.70710678118f));
    case 4: return x / (1.f + __expf(-1.702f * x));
    default: return x;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, <= 1024). Every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float sh[32];
    __syncthreads();  // sh may still be read by a previous call
    v = warp_sum(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = lane < nw ? sh[lane] : 0.f;
    return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v) {
    __shared__ float sh[32];
    __syncthreads();
    v = warp_max(v);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    if (lane == 0) sh[w] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = lane < nw ? sh[lane] : -INFINITY;
    return warp_max(v);
}

// The block's dynamic shared memory as `unsigned char name[]`, 128-byte aligned. (A macro so
// that the CPU emulation in tests/emu can hand out its own per-block buffer.)
#ifndef CONTENTV_EMU
#define DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

#define GRID_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)
