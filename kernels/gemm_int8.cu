// W8A16 support: dequantisation of an INT8 weight [N, K] with per-row (groups = 1) or per-group
// f32 scales into the activation dtype, feeding the cuBLASLt bf16 GEMM (src/ops/quant.rs).
// One pass over N*K bytes; at the transformer's GEMM sizes it is ~1% of the GEMM time.
#include "common.cuh"

template <typename T>
__device__ void dequant_k(const int8_t* q, const float* scale, T* w, long long n, long long k, long long groups) {
    long long g = k / groups;
    GRID_STRIDE(i, n * k) {
        long long r = i / k, c = i % k;
        w[i] = from_f<T>((float)q[i] * scale[r * groups + c / g]);
    }
}

extern "C" __global__ void dequant_i8_f32(const int8_t* q, const float* s, float* w, long long n, long long k, long long g) { dequant_k(q, s, w, n, k, g); }
extern "C" __global__ void dequant_i8_bf16(const int8_t* q, const float* s, __nv_bfloat16* w, long long n, long long k, long long g) { dequant_k(q, s, w, n, k, g); }
extern "C" __global__ void dequant_i8_f16(const int8_t* q, const float* s, __half* w, long long n, long long k, long long g) { dequant_k(q, s, w, n, k, g); }
