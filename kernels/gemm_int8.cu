// W8A16: INT8 weight-only GEMM kernels (src/ops/quant.rs launches them).
//
//   Y[M, N] = act( X[M, K] · dequant(Q[N, K])^T + bias[N] )
//   dequant(Q)[n, k] = Q[n, k] * scale[n * groups + k / (K / groups)]
//
// X: bf16 or f16, rows of stride lda (elements); Q: int8 row-major [N, K] (PyTorch linear
// layout); scale: f32 [N] (groups = 1, per output channel) or [N, groups] (group-wise);
// bias: f32 [N] or null; Y: dense [M, N] in X's dtype. f32 accumulation.
//
// Kernels:
// - w8a16_mma_{bf16,f16} / w8a16_mma_group_{bf16,f16}: tensor cores (mma.sync m16n8k16),
//   block tile 128x128x32, 8 warps of 64x32, a 3-stage cp.async pipeline. X tiles go to
//   shared memory as is (read with ldmatrix), Q tiles as int8 (half the bytes of bf16); the
//   int8 values become bf16/f16 when the B fragments are built (integers in [-127, 127] are
//   exact in both). Per-channel: the scale multiplies the f32 accumulator in the epilogue
//   (exact dequantisation). Group-wise: the group scales of the tile sit in shared memory and
//   multiply the values while the B fragments are built (q * s rounded to bf16/f16, as a
//   dequantised bf16 weight would be).
//   Requirements (checked by the launcher): K % 8 == 0, lda % 8 == 0, X 16-byte aligned,
//   Q 8-byte aligned, K / groups a multiple of 8. M, N, K need not be multiples of the tile.
// - w8a16_gemv_{bf16,f16}: M <= 16 rows (decode-like shapes, adaLN-sized M): one warp per
//   output column, 8 weights per lane per step, every row's dot product in registers, warp
//   reduction. Same requirements.
// - dequant_i8_{f32,bf16,f16}: Q -> dense weight in the activation dtype, for the fallback path
//   (f32 activations, K % 8 != 0) that then runs the cuBLASLt GEMM.
#include "common.cuh"
#include "ptx.cuh"

// ------------------------------------------------------------------------------------------
// Dequantisation (fallback path)
// ------------------------------------------------------------------------------------------

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

// ------------------------------------------------------------------------------------------
// Helpers and tile configuration (the PTX wrappers are in ptx.cuh)
// ------------------------------------------------------------------------------------------

namespace w8 {

// Two consecutive int8 (little-endian 16-bit word) -> floats.
__device__ __forceinline__ float2 i8x2_to_f(unsigned short v) {
    return make_float2((float)(signed char)(v & 0xff), (float)(signed char)(v >> 8));
}

// Tile configuration.
constexpr int BM = 128, BN = 128, BK = 32, STAGES = 3, THREADS = 256;
// Two CTAs per SM where shared memory allows (sm_80/90/100; the grouped kernel's 51 KiB fits
// once on the 100 KiB SMs of sm_86/89/120): at most 128 registers per thread.
constexpr int MIN_CTAS = 2;
constexpr int WM = 64, WN = 32;             // warp tile: 2 warps along M, 4 along N
constexpr int MI = WM / 16, NI = WN / 8;    // 4 x 4 mma tiles per warp
constexpr int A_LD = BK + 8;                // bf16/f16 per smem row: 80 B, 16-B aligned, ldmatrix conflict-free
constexpr int B_LD = BK + 8;                // bytes per smem row: 40 B, 8-B aligned, conflict-free fragment reads
constexpr int S_PER_ROW = BK / 8;           // group scales per row and tile (one per 8 k; groups are multiples of 8)
constexpr int A_STAGE = BM * A_LD;          // elements
constexpr int B_STAGE = BN * B_LD;          // bytes
constexpr int S_STAGE = BN * S_PER_ROW;     // floats
// Dynamic shared memory: 46,080 B per-channel, 52,224 B group-wise (host: w8a16_smem_bytes).
constexpr int SMEM_A = STAGES * A_STAGE * 2;
constexpr int SMEM_B = STAGES * B_STAGE;
constexpr int SMEM_S = STAGES * S_STAGE * 4;
static_assert(SMEM_A + SMEM_B == 46080 && SMEM_A + SMEM_B + SMEM_S == 52224, "host side: w8a16_smem_bytes in src/ops/quant.rs");

}  // namespace w8

// ------------------------------------------------------------------------------------------
// Tensor-core W8A16 GEMM
// ------------------------------------------------------------------------------------------

template <typename T, bool GROUPED>
__device__ __forceinline__ void w8a16_mma_k(const T* __restrict__ X, long long lda, const int8_t* __restrict__ Q,
                                            const float* __restrict__ scale, int groups, const float* __restrict__ bias,
                                            T* __restrict__ Y, int M, int N, int K, int act) {
    using namespace w8;
    DYNAMIC_SMEM(smem);
    T* As = reinterpret_cast<T*>(smem);                                   // [STAGES][BM][A_LD]
    int8_t* Bs = reinterpret_cast<int8_t*>(smem + SMEM_A);                // [STAGES][BN][B_LD]
    float* Ss = reinterpret_cast<float*>(smem + SMEM_A + SMEM_B);         // [STAGES][BN][S_PER_ROW] (GROUPED)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp >> 2, warp_n = warp & 3;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const int KT = (K + BK - 1) / BK;
    const int gsize = GROUPED ? K / groups : K;

    // Loads tile kt into stage st: 512 16-B chunks of X (row, 8 k), 512 8-B chunks of Q, and
    // (group-wise) 512 scales, two of each per thread. K % 8 == 0: a chunk is all in or all out.
    auto load_tile = [&](int kt, int st) {
        const int k0 = kt * BK;
        T* as = As + st * A_STAGE;
        int8_t* bs = Bs + st * B_STAGE;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = tid + i * THREADS;
            const int row = c >> 2, kc = (c & 3) * 8;
            const int gk = k0 + kc;
            const int gm = m0 + row;
            const bool va = gm < M && gk < K;
            cp_async16(as + row * A_LD + kc, va ? (const void*)(X + (long long)gm * lda + gk) : (const void*)X, va);
            const int gn = n0 + row;
            const bool vb = gn < N && gk < K;
            cp_async8(bs + row * B_LD + kc, vb ? (const void*)(Q + (long long)gn * K + gk) : (const void*)Q, vb);
            if (GROUPED) {
                // Scale of (row, k block c & 3).
                float* ss = Ss + st * S_STAGE;
                cp_async4(ss + row * S_PER_ROW + (c & 3), vb ? (const void*)(scale + (long long)gn * groups + gk / gsize) : (const void*)scale, vb);
            }
        }
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; s++) {
        if (s < KT) load_tile(s, s);
        cp_async_commit();
    }

    for (int kt = 0; kt < KT; kt++) {
        // Tile kt has landed (at most STAGES - 2 newer groups pending) and every warp is done
        // with the stage about to be overwritten (computed in iteration kt - 1).
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int nk = kt + STAGES - 1;
            if (nk < KT) load_tile(nk, nk % STAGES);
            cp_async_commit();  // always: keeps the group count in step with the wait above
        }
        const int st = kt % STAGES;
        const T* as = As + st * A_STAGE;
        const int8_t* bs = Bs + st * B_STAGE;
        const float* ss = Ss + st * S_STAGE;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            // A fragments (m16 x k16, row-major): lane l addresses row (l % 16), k half (l / 16):
            // matrices 0..3 = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15),
            // (rows 8-15, k 8-15) = registers a0..a3 of mma.m16n8k16.
            unsigned af[MI][4];
#pragma unroll
            for (int i = 0; i < MI; i++) {
                const int r = warp_m * WM + i * 16 + (lane & 15);
                ldsm_x4(af[i], as + r * A_LD + kk + (lane >> 4) * 8);
            }
            // B fragments (k16 x n8, "col" = Q's [n][k] rows): lane l holds column n = l / 4 and
            // k = (l % 4) * 2 + {0, 1} (b0) and the same + 8 (b1).
#pragma unroll
            for (int j = 0; j < NI; j++) {
                const int n = warp_n * WN + j * 8 + (lane >> 2);
                const int kb = kk + (lane & 3) * 2;
                const int8_t* brow = bs + n * B_LD;
                const float2 lo = i8x2_to_f(*reinterpret_cast<const unsigned short*>(brow + kb));
                const float2 hi = i8x2_to_f(*reinterpret_cast<const unsigned short*>(brow + kb + 8));
                unsigned b0, b1;
                if (GROUPED) {
                    // k blocks of 8: kb and kb + 1 are in block kk / 8, kb + 8 in kk / 8 + 1.
                    const float s0 = ss[n * S_PER_ROW + (kk >> 3)];
                    const float s1 = ss[n * S_PER_ROW + (kk >> 3) + 1];
                    b0 = pack2<T>(lo.x * s0, lo.y * s0);
                    b1 = pack2<T>(hi.x * s1, hi.y * s1);
                } else {
                    b0 = pack2<T>(lo.x, lo.y);
                    b1 = pack2<T>(hi.x, hi.y);
                }
#pragma unroll
                for (int i = 0; i < MI; i++) mma_16816<T>(acc[i][j], af[i], b0, b1);
            }
        }
    }
    cp_async_wait<0>();  // nothing real is pending (empty groups), but leave no copy in flight

    // Epilogue. Accumulator c0, c1: row l / 4, columns (l % 4) * 2 + {0, 1}; c2, c3: row + 8.
#pragma unroll
    for (int j = 0; j < NI; j++) {
        const int col = n0 + warp_n * WN + j * 8 + (lane & 3) * 2;
        if (col >= N) continue;
        const bool has1 = col + 1 < N;
        float sc0 = 1.f, sc1 = 1.f;
        if (!GROUPED) {
            sc0 = scale[col];
            sc1 = has1 ? scale[col + 1] : 0.f;
        }
        const float b0 = bias ? bias[col] : 0.f;
        const float b1 = (bias && has1) ? bias[col + 1] : 0.f;
#pragma unroll
        for (int i = 0; i < MI; i++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = m0 + warp_m * WM + i * 16 + (lane >> 2) + h * 8;
                if (row >= M) continue;
                const float v0 = act_apply(acc[i][j][2 * h] * sc0 + b0, act);
                const float v1 = act_apply(acc[i][j][2 * h + 1] * sc1 + b1, act);
                T* y = Y + (long long)row * N + col;
                if (has1 && (N & 1) == 0) {
                    *reinterpret_cast<unsigned*>(y) = pack2<T>(v0, v1);  // 4-B aligned: row * N + col even
                } else {
                    y[0] = from_f<T>(v0);
                    if (has1) y[1] = from_f<T>(v1);
                }
            }
        }
    }
}

#define W8A16_MMA(NAME, T, GROUPED)                                                                                    \
    extern "C" __global__ void __launch_bounds__(w8::THREADS, w8::MIN_CTAS) NAME(const T* X, long long lda, const int8_t* Q,          \
                                                                  const float* scale, int groups, const float* bias,   \
                                                                  T* Y, int M, int N, int K, int act) {                \
        w8a16_mma_k<T, GROUPED>(X, lda, Q, scale, groups, bias, Y, M, N, K, act);                                      \
    }
W8A16_MMA(w8a16_mma_bf16, __nv_bfloat16, false)
W8A16_MMA(w8a16_mma_f16, __half, false)
W8A16_MMA(w8a16_mma_group_bf16, __nv_bfloat16, true)
W8A16_MMA(w8a16_mma_group_f16, __half, true)

// ------------------------------------------------------------------------------------------
// Small M (<= 16 rows): one warp per output column
// ------------------------------------------------------------------------------------------

constexpr int GEMV_MAX_M = 16;
constexpr int GEMV_WARPS = 8;

template <typename T>
__device__ __forceinline__ void w8a16_gemv_k(const T* __restrict__ X, long long lda, const int8_t* __restrict__ Q,
                                             const float* __restrict__ scale, int groups, const float* __restrict__ bias,
                                             T* __restrict__ Y, int M, int N, int K, int act) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;  // whole warp: no block-level synchronisation below
    const int gsize = K / groups;
    const int8_t* q = Q + (long long)n * K;
    float acc[GEMV_MAX_M];
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; m++) acc[m] = 0.f;
    for (int k = lane * 8; k < K; k += 32 * 8) {
        // 8 weights (8-B aligned: K % 8 == 0), all in one group (group sizes are multiples of 8).
        const uint2 qv = *reinterpret_cast<const uint2*>(q + k);
        const float s = groups > 1 ? scale[(long long)n * groups + k / gsize] : 1.f;
        float w[8];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            w[e] = (float)(signed char)((qv.x >> (8 * e)) & 0xff) * s;
            w[4 + e] = (float)(signed char)((qv.y >> (8 * e)) & 0xff) * s;
        }
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; m++) {
            if (m < M) {
                // 8 activations (16-B aligned: lda % 8 == 0, X 16-B aligned).
                const uint4 xv = *reinterpret_cast<const uint4*>(X + (long long)m * lda + k);
                const T* xe = reinterpret_cast<const T*>(&xv);
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += to_f(xe[e]) * w[e];
                acc[m] += d;
            }
        }
    }
    const float sc = groups > 1 ? 1.f : scale[n];
    const float b = bias ? bias[n] : 0.f;
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; m++) {
        if (m < M) {
            const float v = warp_sum(acc[m]);
            if (lane == 0) Y[(long long)m * N + n] = from_f<T>(act_apply(v * sc + b, act));
        }
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) w8a16_gemv_bf16(const __nv_bfloat16* X, long long lda, const int8_t* Q, const float* scale, int groups,
                                                                             const float* bias, __nv_bfloat16* Y, int M, int N, int K, int act) {
    w8a16_gemv_k(X, lda, Q, scale, groups, bias, Y, M, N, K, act);
}
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32) w8a16_gemv_f16(const __half* X, long long lda, const int8_t* Q, const float* scale, int groups,
                                                                            const float* bias, __half* Y, int M, int N, int K, int act) {
    w8a16_gemv_k(X, lda, Q, scale, groups, bias, Y, M, N, K, act);
}
