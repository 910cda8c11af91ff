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
//   shared memory as is, Q tiles as int8 (half the bytes of bf16). Each Q tile is converted
//   ONCE per CTA: after the cp.async wait all 256 threads turn the 128x32 int8 tile into a
//   128x32 bf16/f16 tile in shared memory (8 values per thread and pass, two passes), then the
//   warps read both operands with ldmatrix as a dense GEMM does. The conversion uses no I2F
//   (quarter rate on every arch): byte permutes and magic-number arithmetic (w8:: helpers
//   below; exhaustively tested over all 256 bytes in tests/emu/test_gemm_int8.cpp and by a
//   host twin in src/ops/quant.rs). Per-channel: the exact integer goes into the tile and the
//   scale multiplies the f32 accumulator in the epilogue (exact dequantisation). Group-wise:
//   the tile's group scales sit in shared memory and the tile holds q * s rounded to bf16/f16
//   (as a dequantised bf16 weight would be).
//   Requirements (checked by the launcher): K % 8 == 0, lda % 8 == 0, X 16-byte aligned,
//   Q 8-byte aligned, K / groups a multiple of 8. M, N, K need not be multiples of the tile.
// - w8a16_gemv_{bf16,f16}: M <= 16 rows (text encoders, decode-like shapes, adaLN-sized M):
//   one warp per output column, 8 weights per lane per step (converted with the same f32
//   magic-number route), every row's dot product in registers, warp reduction. Same
//   requirements.
// - dequant_i8_{f32,bf16,f16}: Q -> dense weight in the given dtype, for the large-M path
//   (src/ops/quant.rs: Auto picks it at M >= the crossover, then cuBLASLt) and the fallback
//   (f32 activations, K % 8 != 0). 16 values per thread and step (one 16-byte load, 16-byte
//   stores) where K, the group size and both pointers allow, else 8, else one.
#include "common.cuh"
#include "mma_frag.cuh"
#include "ptx.cuh"
#include "tiles.h"

// ------------------------------------------------------------------------------------------
// int8 -> f32 / bf16 / f16 without I2F
// ------------------------------------------------------------------------------------------
//
// x = w ^ 0x80808080 holds q + 128 (0..255) in each byte.
// - f32: 0x4B000000 (2^23, ulp 1) with a byte of x in its low byte is 2^23 + q + 128 (one
//   PRMT), and one FADD of -(2^23 + 128) leaves q exactly.
// - bf16: an integer with |q| <= 128 has at most 8 significant bits, which bf16 holds: the
//   high half of its f32 is its bf16, and one PRMT (selector 0x7632) packs the high halves of
//   two floats. 11 instructions per 4 values (LOP3, 4 PRMT, 4 FADD, 2 PRMT). (bf16's own 7
//   mantissa bits cannot hold a byte under a magic exponent, hence the f32 detour.)
// - f16: 0x6400 (1024, ulp 1 with 10 mantissa bits) with a byte of x in its low byte is
//   1024 + q + 128; one PRMT builds two such halves and one HSUB2 of 1152 leaves q in both:
//   5 instructions per 4 values (LOP3, 2 PRMT, 2 HSUB2).

namespace w8 {

constexpr uint32_t SIGN_FLIP = 0x80808080u;  // q -> q + 128 in every byte
constexpr uint32_t F32_MAGIC = 0x4B000000u;  // 2^23
constexpr float F32_BIAS = 8388736.f;        // 2^23 + 128
constexpr uint32_t F16_MAGIC = 0x64646464u;  // 0x64 in every byte: f16 0x64xx = 1024 + xx
constexpr uint32_t F16_BIAS2 = 0x64806480u;  // 1152 in both f16 lanes

// The 4 bytes of w (little-endian: byte e is element e) as exact floats.
__device__ __forceinline__ void i8x4_to_f32(uint32_t w, float (&f)[4]) {
    const uint32_t x = w ^ SIGN_FLIP;
    f[0] = __uint_as_float(prmt(x, F32_MAGIC, 0x7650)) - F32_BIAS;
    f[1] = __uint_as_float(prmt(x, F32_MAGIC, 0x7651)) - F32_BIAS;
    f[2] = __uint_as_float(prmt(x, F32_MAGIC, 0x7652)) - F32_BIAS;
    f[3] = __uint_as_float(prmt(x, F32_MAGIC, 0x7653)) - F32_BIAS;
}

// The 4 bytes of w as two registers of two T each (element 0 in the low half of r01), exact.
template <typename T>
__device__ __forceinline__ void i8x4_to_t(uint32_t w, uint32_t& r01, uint32_t& r23);
template <>
__device__ __forceinline__ void i8x4_to_t<__nv_bfloat16>(uint32_t w, uint32_t& r01, uint32_t& r23) {
    float f[4];
    i8x4_to_f32(w, f);
    // High halves: exact (at most 8 significant bits), no rounding instruction needed.
    r01 = prmt(__float_as_uint(f[0]), __float_as_uint(f[1]), 0x7632);
    r23 = prmt(__float_as_uint(f[2]), __float_as_uint(f[3]), 0x7632);
}
template <>
__device__ __forceinline__ void i8x4_to_t<__half>(uint32_t w, uint32_t& r01, uint32_t& r23) {
    const uint32_t x = w ^ SIGN_FLIP;
    r01 = hsub2_u32(prmt(x, F16_MAGIC, 0x4140), F16_BIAS2);
    r23 = hsub2_u32(prmt(x, F16_MAGIC, 0x4342), F16_BIAS2);
}

// The 4 bytes of w times s, rounded to T (round to nearest even) as two registers.
template <typename T>
__device__ __forceinline__ void i8x4_scaled_to_t(uint32_t w, float s, uint32_t& r01, uint32_t& r23) {
    float f[4];
    i8x4_to_f32(w, f);
    r01 = pack2<T>(f[0] * s, f[1] * s);
    r23 = pack2<T>(f[2] * s, f[3] * s);
}

}  // namespace w8

// ------------------------------------------------------------------------------------------
// Dequantisation: the large-M path (then cuBLASLt) and the fallback
// ------------------------------------------------------------------------------------------

// V consecutive weights of one row (V = 8 or 16), all under one scale, stored as T.
template <typename T, int V>
__device__ __forceinline__ void dequant_store(T* w, const uint32_t (&q)[V / 4], float s) {
    if constexpr (sizeof(T) == 4) {
#pragma unroll
        for (int j = 0; j < V / 4; j++) {
            float f[4];
            w8::i8x4_to_f32(q[j], f);
            *reinterpret_cast<float4*>(w + 4 * j) = make_float4(f[0] * s, f[1] * s, f[2] * s, f[3] * s);
        }
    } else {
#pragma unroll
        for (int j = 0; j < V / 8; j++) {
            uint4 o;
            w8::i8x4_scaled_to_t<T>(q[2 * j], s, o.x, o.y);
            w8::i8x4_scaled_to_t<T>(q[2 * j + 1], s, o.z, o.w);
            *reinterpret_cast<uint4*>(w + 8 * j) = o;
        }
    }
}

// The vector width the kernel uses: 16 (16-byte loads) where K, the group size and the
// pointers allow, else 8, else 1. The launcher (dequant_vector_width in src/ops/quant.rs) sizes
// the grid with the same rule; the loops are grid-stride, so any grid is correct.
__device__ __forceinline__ int dequant_width(const void* q, const void* w, long long k, long long gsize) {
    const unsigned long long qa = (unsigned long long)q, wa = (unsigned long long)w;
    if (k % 16 == 0 && gsize % 16 == 0 && qa % 16 == 0 && wa % 16 == 0) return 16;
    if (k % 8 == 0 && gsize % 8 == 0 && qa % 8 == 0 && wa % 16 == 0) return 8;
    return 1;
}

template <typename T>
__device__ void dequant_k(const int8_t* q, const float* scale, T* w, long long n, long long k, long long groups) {
    const long long g = k / groups;
    const int width = dequant_width(q, w, k, g);  // uniform over the grid
    if (width == 16) {
        GRID_STRIDE(c, n * k / 16) {
            const long long i = c * 16, r = i / k, col = i % k;
            const uint4 v = *reinterpret_cast<const uint4*>(q + i);
            const uint32_t qw[4] = {v.x, v.y, v.z, v.w};
            dequant_store<T, 16>(w + i, qw, scale[r * groups + col / g]);
        }
    } else if (width == 8) {
        GRID_STRIDE(c, n * k / 8) {
            const long long i = c * 8, r = i / k, col = i % k;
            const uint2 v = *reinterpret_cast<const uint2*>(q + i);
            const uint32_t qw[2] = {v.x, v.y};
            dequant_store<T, 8>(w + i, qw, scale[r * groups + col / g]);
        }
    } else {
        GRID_STRIDE(i, n * k) {
            const long long r = i / k, c = i % k;
            w[i] = from_f<T>((float)q[i] * scale[r * groups + c / g]);
        }
    }
}

extern "C" __global__ void dequant_i8_f32(const int8_t* q, const float* s, float* w, long long n, long long k, long long g) { dequant_k(q, s, w, n, k, g); }
extern "C" __global__ void dequant_i8_bf16(const int8_t* q, const float* s, __nv_bfloat16* w, long long n, long long k, long long g) { dequant_k(q, s, w, n, k, g); }
extern "C" __global__ void dequant_i8_f16(const int8_t* q, const float* s, __half* w, long long n, long long k, long long g) { dequant_k(q, s, w, n, k, g); }

// ------------------------------------------------------------------------------------------
// Tile configuration (the PTX wrappers are in ptx.cuh)
// ------------------------------------------------------------------------------------------

namespace w8 {

// The launch geometry is kernels/tiles.h's (src/ops/quant.rs reads the same numbers through
// runtime::kernels::tiles).
constexpr int BM = tiles::W8_BM, BN = tiles::W8_BN, BK = tiles::W8_BK, STAGES = tiles::W8_STAGES,
              THREADS = tiles::W8_THREADS;
// Two CTAs per SM where shared memory allows (sm_80/90/100; one on the 100 KiB SMs of
// sm_86/89/120): at most 128 registers per thread.
constexpr int MIN_CTAS = 2;
constexpr int WM = 64, WN = 32;             // warp tile: 2 warps along M, 4 along N
constexpr int MI = WM / mma::M, NI = WN / mma::N;  // 4 x 4 mma tiles per warp
constexpr int A_LD = BK + tiles::W8_PAD;    // bf16/f16 per smem row: 80 B, 16-B aligned, ldmatrix conflict-free
constexpr int B_LD = BK + tiles::W8_PAD;    // the converted B tile: same layout as A
constexpr int Q_LD = BK;                    // int8 tile rows: 32 B, read back as 8-B words (conflict-free)
constexpr int S_PER_ROW = BK / 8;           // group scales per row and tile (one per 8 k; groups are multiples of 8)
constexpr int A_STAGE = BM * A_LD;          // elements
constexpr int Q_STAGE = BN * Q_LD;          // bytes
constexpr int S_STAGE = BN * S_PER_ROW;     // floats
// Dynamic shared memory: A stages, int8 stages, the converted B tile (one buffer), and
// (group-wise) the scale stages: 53,248 B per-channel, 59,392 B group-wise (host:
// w8a16_smem_bytes).
constexpr int SMEM_A = STAGES * A_STAGE * 2;
constexpr int SMEM_Q = STAGES * Q_STAGE;
constexpr int SMEM_BT = BN * B_LD * 2;
constexpr int SMEM_S = STAGES * S_STAGE * 4;
static_assert(SMEM_A + SMEM_Q + SMEM_BT == tiles::W8_SMEM_BYTES &&
                  SMEM_A + SMEM_Q + SMEM_BT + SMEM_S == tiles::W8_GROUP_SMEM_BYTES,
              "the map above is what tiles.h gives the launcher (w8a16_smem_bytes in src/ops/quant.rs)");

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
    T* As = reinterpret_cast<T*>(smem);                                        // [STAGES][BM][A_LD]
    int8_t* Bq = reinterpret_cast<int8_t*>(smem + SMEM_A);                     // [STAGES][BN][Q_LD]
    T* Bt = reinterpret_cast<T*>(smem + SMEM_A + SMEM_Q);                      // [BN][B_LD], converted
    float* Ss = reinterpret_cast<float*>(smem + SMEM_A + SMEM_Q + SMEM_BT);    // [STAGES][BN][S_PER_ROW] (GROUPED)

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int warp_m = warp >> 2, warp_n = warp & 3;
    const int n0 = blockIdx.x * BN, m0 = blockIdx.y * BM;
    const int KT = (K + BK - 1) / BK;
    const int gsize = GROUPED ? K / groups : K;

    // Group-wise: the group of this thread's k chunk in the next tile to load, kept as
    // (group, offset in it) and stepped by BK per load (tiles load in order 0, 1, 2, ...): no
    // integer division in the loop. Both chunks of a thread share the k offset (tid % 4) * 8.
    int g_idx = 0, g_off = 0;
    if (GROUPED) {
        g_idx = ((tid & 3) * 8) / gsize;
        g_off = ((tid & 3) * 8) - g_idx * gsize;
    }

    // Loads tile kt into stage st: 512 16-B chunks of X (row, 8 k), 512 8-B chunks of Q, and
    // (group-wise) 512 scales, two of each per thread. K % 8 == 0: a chunk is all in or all out
    // (out: zero-filled, so rows past N and k past K convert to 0). Called for kt = 0, 1, 2, ...
    // in order.
    auto load_tile = [&](int kt, int st) {
        const int k0 = kt * BK;
        T* as = As + st * A_STAGE;
        int8_t* bq = Bq + st * Q_STAGE;
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
            cp_async8(bq + row * Q_LD + kc, vb ? (const void*)(Q + (long long)gn * K + gk) : (const void*)Q, vb);
            if (GROUPED) {
                // Scale of (row, k block c & 3).
                float* ss = Ss + st * S_STAGE;
                cp_async4(ss + row * S_PER_ROW + (c & 3), vb ? (const void*)(scale + (long long)gn * groups + g_idx) : (const void*)scale, vb);
            }
        }
        if (GROUPED) {
            g_off += BK;
            while (g_off >= gsize) {  // gsize >= 8: at most 4 steps
                g_off -= gsize;
                g_idx++;
            }
        }
    };

    mma::FragC acc[MI][NI];
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
        // with the stage about to be overwritten and with Bt (both read in iteration kt - 1).
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int nk = kt + STAGES - 1;
            if (nk < KT) load_tile(nk, nk % STAGES);
            cp_async_commit();  // always: keeps the group count in step with the wait above
        }
        const int st = kt % STAGES;
        // The int8 tile -> Bt, once for the CTA: 512 chunks of 8 values (row, k block), two per
        // thread: one 8-B shared load, 2 x 11 (bf16) or 2 x 5 (f16) ALU instructions (2 x 4 + 2
        // FMUL + 4 F2F more group-wise), one 16-B shared store.
        {
            const int8_t* bq = Bq + st * Q_STAGE;
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const int c = tid + i * THREADS;
                const int row = c >> 2, kc = (c & 3) * 8;
                const uint2 v = *reinterpret_cast<const uint2*>(bq + row * Q_LD + kc);
                uint4 o;
                if (GROUPED) {
                    const float s = Ss[st * S_STAGE + row * S_PER_ROW + (c & 3)];
                    i8x4_scaled_to_t<T>(v.x, s, o.x, o.y);
                    i8x4_scaled_to_t<T>(v.y, s, o.z, o.w);
                } else {
                    i8x4_to_t<T>(v.x, o.x, o.y);
                    i8x4_to_t<T>(v.y, o.z, o.w);
                }
                *reinterpret_cast<uint4*>(Bt + row * B_LD + kc) = o;
            }
        }
        __syncthreads();  // Bt complete
        const T* as = As + st * A_STAGE;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            // A fragments (m16 x k16, row-major As rows): mma::a_row / a_k8.
            mma::FragA af[MI];
#pragma unroll
            for (int i = 0; i < MI; i++) {
                const int r = warp_m * WM + i * 16 + mma::a_row(lane);
                ldsm_x4(af[i], as + r * A_LD + kk + mma::a_k8(lane) * 8);
            }
            // B fragments (k16 x n8, "col" = Bt's [n][k] rows), two n8 tiles per ldmatrix.x4
            // (mma::b_row / b_k8): registers 0, 1 = tile 2jp, 2, 3 = tile 2jp + 1.
#pragma unroll
            for (int jp = 0; jp < NI / 2; jp++) {
                uint32_t bfr[4];
                const int n = warp_n * WN + jp * 16 + mma::b_row(lane);
                ldsm_x4(bfr, Bt + n * B_LD + kk + mma::b_k8(lane) * 8);
#pragma unroll
                for (int i = 0; i < MI; i++) {
                    mma_16816<T>(acc[i][2 * jp], af[i], bfr[0], bfr[1]);
                    mma_16816<T>(acc[i][2 * jp + 1], af[i], bfr[2], bfr[3]);
                }
            }
        }
    }
    cp_async_wait<0>();  // nothing real is pending (empty groups), but leave no copy in flight

    // Epilogue. Accumulator c0, c1: row mma::c_row0, columns mma::c_col0 + {0, 1}; c2, c3: row + 8.
#pragma unroll
    for (int j = 0; j < NI; j++) {
        const int col = n0 + warp_n * WN + j * 8 + mma::c_col0(lane);
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
                const int row = m0 + warp_m * WM + i * 16 + mma::c_row0(lane) + h * 8;
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

constexpr int GEMV_MAX_M = tiles::W8_GEMV_MAX_M;  // (src/ops/quant.rs reads the same numbers)
constexpr int GEMV_WARPS = tiles::W8_GEMV_WARPS;

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
        // Exact integers (byte permutes and FADD, no I2F); group-wise, times the group's scale.
        float w[2][4];
        w8::i8x4_to_f32(qv.x, w[0]);
        w8::i8x4_to_f32(qv.y, w[1]);
        if (groups > 1) {
            const float s = scale[(long long)n * groups + k / gsize];
#pragma unroll
            for (int e = 0; e < 8; e++) w[e >> 2][e & 3] *= s;
        }
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; m++) {
            if (m < M) {
                // 8 activations (16-B aligned: lda % 8 == 0, X 16-B aligned).
                const uint4 xv = *reinterpret_cast<const uint4*>(X + (long long)m * lda + k);
                const T* xe = reinterpret_cast<const T*>(&xv);
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < 8; e++) d += to_f(xe[e]) * w[e >> 2][e & 3];
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
