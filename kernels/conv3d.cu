// Convolutions of the Wan2.1 VAE decoder (src/ops/conv.rs), f32 activations and weights.
//
// One implicit-GEMM formulation covers every conv of the decoder:
//   y[b, co, t, h, w] = bias[co] + sum_{ci,kt,kh,kw} W[co, ci, kt, kh, kw] * X(b, ci, t+kt-(KT-1), h+kh-KH/2, w+kw-KW/2)
// with M = Co, N = T*H*W (per batch, grid.z = batch), K = Ci*KT*KH*KW (PyTorch weight layout
// [Co, Ci, KT, KH, KW] row-major = a dense [M, K] matrix).
//   * X at a negative frame index reads the `ctx` tensor [B, Ci, KT-1, Hin, Win] (the cached
//     frames in front of this chunk), or zero when ctx is null (causal zero padding).
//   * X outside [0,H)x[0,W) is zero (spatial zero padding KH/2, KW/2).
//   * up = 1: the conv runs on the nearest-2x upsampled input (H = 2*Hin), fused: X(h, w)
//     reads x[h>>1, w>>1].
//   * interleave = 1 (upsample3d time_conv): output channel co = s*(Co/2) + c at frame t is
//     written to channel c, frame 2t+s of y [B, Co/2, 2T, H, W].
//   * out_frames / out_t0: y has out_frames frames and this conv writes frames
//     [out_t0, out_t0 + T) (or 2T when interleaving), so the last conv can write straight into
//     the video.
//   * resid (optional, same layout as y) is added after the bias, then the optional clamp.
//
// conv_f32_simt: CUDA-core f32 FMA, 64x64x16 tiles (the exact reference path).
// conv_bf16_mma: tensor cores (mma.sync m16n8k16 bf16 x bf16 -> f32), weights prepared once per
// layer as bf16 (conv_pack_weight_bf16), activations f32 in memory and rounded to bf16 when the
// fragments are built, f32 accumulation; 64x128x32 tiles, 8 warps, 3-stage cp.async ring.
#include "common.cuh"
#include "ptx.cuh"
#include "tiles.h"

struct ConvParams {
    const float* x;      // [B, Ci, T, Hin, Win]
    const float* ctx;    // [B, Ci, KT-1, Hin, Win] or null
    const float* w;      // [Co, K]
    const float* bias;   // [Co] or null
    const float* resid;  // like y, or null
    float* y;
    int B, Ci, Co, T, Hin, Win, KT, KH, KW, up, interleave, out_frames, out_t0, do_clamp;
    float lo, hi;
};

#define CONV_KERNEL_ARGS const float* x, const float* ctx, const float* w, const float* bias, const float* resid, float* y, \
    int B, int Ci, int Co, int T, int Hin, int Win, int KT, int KH, int KW, int up, int interleave, int out_frames, \
    int out_t0, int do_clamp, float lo, float hi
#define CONV_PARAMS_INIT {x, ctx, w, bias, resid, y, B, Ci, Co, T, Hin, Win, KT, KH, KW, up, interleave, out_frames, out_t0, do_clamp, lo, hi}

// Per-pixel source coordinates, fixed over the K loop.
struct Pix {
    int t, h, w;
    bool valid;
};

__device__ __forceinline__ Pix decode_pixel(long long n, int H, int W, long long N) {
    Pix p;
    p.valid = n < N;
    long long nn = p.valid ? n : 0;
    int hw = H * W;
    p.t = (int)(nn / hw);
    int r = (int)(nn - (long long)p.t * hw);
    p.h = r / W;
    p.w = r - p.h * W;
    return p;
}

// k -> (ci, kt, kh, kw) packed as offsets: ci and the three tap offsets (already shifted by the padding).
struct Tap {
    int ci, dt, dh, dw;  // dt in [-(KT-1), 0], dh in [-KH/2, KH/2], dw likewise
};

__device__ __forceinline__ Tap decode_tap(int k, int KT, int KH, int KW) {
    int khw = KH * KW;
    int kthw = KT * khw;
    Tap tp;
    tp.ci = k / kthw;
    int r = k - tp.ci * kthw;
    int kt = r / khw;
    r -= kt * khw;
    int kh = r / KW;
    int kw = r - kh * KW;
    tp.dt = kt - (KT - 1);
    tp.dh = kh - KH / 2;
    tp.dw = kw - KW / 2;
    return tp;
}

__device__ __forceinline__ float gather_x(const ConvParams& p, int b, const Tap& tp, const Pix& px, int H, int W) {
    if (!px.valid) return 0.f;
    int ts = px.t + tp.dt;
    int hs = px.h + tp.dh;
    int ws = px.w + tp.dw;
    if (hs < 0 || hs >= H || ws < 0 || ws >= W) return 0.f;
    hs >>= p.up;
    ws >>= p.up;
    long long plane = (long long)p.Hin * p.Win;
    long long sp = (long long)hs * p.Win + ws;
    if (ts >= 0) {
        return p.x[(((long long)b * p.Ci + tp.ci) * p.T + ts) * plane + sp];
    }
    if (p.ctx == nullptr) return 0.f;
    int nc = p.KT - 1;
    return p.ctx[(((long long)b * p.Ci + tp.ci) * nc + (nc + ts)) * plane + sp];
}

__device__ __forceinline__ void store_y(const ConvParams& p, int b, int co, const Pix& px, int H, int W, float v) {
    if (p.bias) v += p.bias[co];
    long long plane = (long long)H * W;
    long long sp = (long long)px.h * W + px.w;
    long long idx;
    if (p.interleave) {
        int c2 = p.Co / 2;
        int s = co / c2;
        int c = co - s * c2;
        idx = (((long long)b * c2 + c) * p.out_frames + p.out_t0 + 2 * px.t + s) * plane + sp;
    } else {
        idx = (((long long)b * p.Co + co) * p.out_frames + p.out_t0 + px.t) * plane + sp;
    }
    if (p.resid) v += p.resid[idx];
    if (p.do_clamp) v = fminf(fmaxf(v, p.lo), p.hi);
    p.y[idx] = v;
}

// ---------------------------------------------------------------------------------------------
// f32 SIMT implicit GEMM: block 256 threads, tile 64 (co) x 64 (pixels) x 16 (k), 4x4 per thread.
// ---------------------------------------------------------------------------------------------
constexpr int S_BM = 64;
constexpr int S_BN = 64;
constexpr int S_BK = 16;

extern "C" __global__ void __launch_bounds__(256) conv_f32_simt(CONV_KERNEL_ARGS) {
    const ConvParams p = CONV_PARAMS_INIT;
    __shared__ __align__(16) float As[S_BK][S_BM];
    __shared__ __align__(16) float Bs[S_BK][S_BN];
    __shared__ Tap taps[S_BK];

    const int tid = threadIdx.x;
    const int b = blockIdx.z;
    const int m0 = blockIdx.y * S_BM;
    const long long n0 = (long long)blockIdx.x * S_BN;
    const int H = p.Hin << p.up, W = p.Win << p.up;
    const long long N = (long long)p.T * H * W;
    const int K = p.Ci * p.KT * p.KH * p.KW;

    // Loader roles.
    const int a_m = tid >> 2;         // 0..63
    const int a_k = (tid & 3) * 4;    // 0,4,8,12
    const int b_n = tid & 63;         // 0..63
    const int b_k = tid >> 6;         // 0..3 (+4j)
    const Pix bpx = decode_pixel(n0 + b_n, H, W, N);

    // Compute roles.
    const int tx = tid & 15;  // pixels tx*4..+4
    const int ty = tid >> 4;  // co ty*4..+4
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.f;

    for (int k0 = 0; k0 < K; k0 += S_BK) {
        if (tid < S_BK) {
            int k = k0 + tid;
            taps[tid] = decode_tap(k < K ? k : 0, p.KT, p.KH, p.KW);
        }
        // A tile: W[m0 + a_m][k0 + a_k + j]
        {
            int m = m0 + a_m;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                int k = k0 + a_k + j;
                As[a_k + j][a_m] = (m < p.Co && k < K) ? p.w[(long long)m * K + k] : 0.f;
            }
        }
        __syncthreads();  // taps ready
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int kk = b_k + 4 * j;
            float v = 0.f;
            if (k0 + kk < K) v = gather_x(p, b, taps[kk], bpx, H, W);
            Bs[kk][b_n] = v;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < S_BK; kk++) {
            float4 a = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
            float4 bb = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
            float av[4] = {a.x, a.y, a.z, a.w};
            float bv[4] = {bb.x, bb.y, bb.z, bb.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int j = 0; j < 4; j++) {
        long long n = n0 + tx * 4 + j;
        if (n >= N) continue;
        Pix px = decode_pixel(n, H, W, N);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int co = m0 + ty * 4 + i;
            if (co < p.Co) store_y(p, b, co, px, H, W, acc[i][j]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// bf16 tensor-core implicit GEMM, pipelined (conv_bf16_mma).
//
// Weights: prepared once per layer by conv_pack_weight_bf16 into a bf16 [Co_pad, K_pad] matrix
// (Co_pad = Co rounded up to 64, K_pad = K rounded up to 32, zero padded) whose K order is
// tap-major: k = tap * Ci + ci with tap = (kt * KH + kh) * KW + kw. When Ci is a multiple of 16
// (every conv of the Wan VAE decoder), each loader's run of 16 consecutive k lies within one
// tap: the tap is resolved once per k-tile and the 16 channels are read with a fixed stride.
// Other Ci take a per-element path that steps (tap, ci) incrementally. Each thread carries its
// (tap, ci) from one k-tile to the next (tiles are loaded in order): no division in the k loop.
// Activations stay f32 in global memory (the norms, attention glue, caches and tiling are f32);
// the B tile is copied f32 into shared memory by cp.async (4 B, zero-fill for padding, causal
// frames without a cache and pixels past N) and rounded to bf16 when the mma fragments are built.
//
// Tile 64 (co) x 128 (pixels) x 32 (k), 8 warps as 2 (M) x 4 (N), warp tile 32x32 = 2 m16 x 4 n8
// mma.sync m16n8k16, f32 accumulators. CONV_STAGES-deep cp.async ring in dynamic shared memory:
//   A stage: bf16 [64][40] (80 B pitch: 16-B aligned rows, ldmatrix conflict-free), 5,120 B
//   B stage: f32 [128][40] (160 B pitch: the 64-bit fragment loads of a half-warp hit 32 banks),
//            20,480 B
// Per thread and k-tile the loader does one 16-B cp.async of A and 16 4-B cp.async of B: one
// pixel (fixed for the whole k loop: its (t, h, w) decomposed once) times 16 consecutive k.
// ---------------------------------------------------------------------------------------------
// The launch geometry is kernels/tiles.h's (runtime::kernels::tiles on the host;
// tests/kernel_gate.rs checks src/ops/conv.rs's CONV_BF16_SMEM against it).
constexpr int T_BM = tiles::CONV_BM;
constexpr int T_BN = tiles::CONV_BN;
constexpr int T_BK = tiles::CONV_BK;
constexpr int T_LDA = tiles::CONV_LDA;  // bf16 per A row
constexpr int T_LDB = tiles::CONV_LDB;  // f32 per B row
constexpr int CONV_STAGES = tiles::CONV_STAGES;
constexpr int CONV_MAX_TAPS = 32;
constexpr int CONV_A_STAGE_BYTES = T_BM * T_LDA * 2;
constexpr int CONV_B_STAGE_BYTES = T_BN * T_LDB * 4;
// Dynamic shared memory of conv_bf16_mma.
constexpr int CONV_BF16_SMEM = CONV_STAGES * (CONV_A_STAGE_BYTES + CONV_B_STAGE_BYTES);
static_assert(CONV_BF16_SMEM == tiles::CONV_SMEM_BYTES, "the map above is what tiles.h gives the launcher");

// Packs f32 weights [Co, Ci, KT, KH, KW] (= [Co, Ci * taps]) into the bf16 [co_pad, k_pad]
// tap-major matrix conv_bf16_mma reads (zero outside Co x K).
extern "C" __global__ void conv_pack_weight_bf16(const float* __restrict__ w, __nv_bfloat16* __restrict__ out, int Co, int Ci,
                                                 int taps, int co_pad, int k_pad) {
    const long long total = (long long)co_pad * k_pad;
    const int K = Ci * taps;
    GRID_STRIDE(i, total) {
        const int m = (int)(i / k_pad);
        const int k = (int)(i - (long long)m * k_pad);
        float v = 0.f;
        if (m < Co && k < K) {
            const int tap = k / Ci;
            const int ci = k - tap * Ci;
            v = w[(long long)m * K + (long long)ci * taps + tap];
        }
        out[i] = __float2bfloat16_rn(v);
    }
}

#define CONV_BF16_ARGS const float* x, const float* ctx, const __nv_bfloat16* w, const float* bias, const float* resid, float* y, \
    int B, int Ci, int Co, int T, int Hin, int Win, int KT, int KH, int KW, int up, int interleave, int out_frames, \
    int out_t0, int do_clamp, float lo, float hi

// Offsets of one tap: dt in [-(KT-1), 0], dh in [-KH/2, KH/2], dw likewise.
struct TapOff {
    int dt, dh, dw;
};

// One pixel's gather source for one tap: the address of channel 0 and the channel stride (x or
// the cached frames), or ok = false (zero fill).
struct TapSrc {
    const float* p;
    int cstride;  // T * Hin * Win or nc * Hin * Win (< 2^31: the host checks)
    bool ok;
};

__device__ __forceinline__ TapSrc tap_src(const float* x, const float* ctx, int b, int Ci, int T, int Hin, int Win, int nc, int up, int H,
                                          int W, int pt, int ph, int pw, bool pvalid, TapOff tp) {
    TapSrc s;
    const int ts = pt + tp.dt, hs = ph + tp.dh, ws = pw + tp.dw;
    s.ok = pvalid && hs >= 0 && hs < H && ws >= 0 && ws < W && (ts >= 0 || ctx != nullptr);
    const long long plane = (long long)Hin * Win;
    const long long sp = (long long)(hs >> up) * Win + (ws >> up);
    if (!s.ok) {
        s.p = x;
        s.cstride = 0;
    } else if (ts >= 0) {
        s.p = x + ((long long)b * Ci * T + ts) * plane + sp;
        s.cstride = T * Hin * Win;
    } else {
        s.p = ctx + ((long long)b * Ci * nc + nc + ts) * plane + sp;
        s.cstride = nc * Hin * Win;
    }
    return s;
}

extern "C" __global__ void __launch_bounds__(256, 2) conv_bf16_mma(CONV_BF16_ARGS) {
    DYNAMIC_SMEM(smem);
    __shared__ TapOff taps[CONV_MAX_TAPS];  // (dt, dh, dw) per tap, filled once per block

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int b = blockIdx.z;
    const int m0 = blockIdx.y * T_BM;
    const long long n0 = (long long)blockIdx.x * T_BN;
    const int H = Hin << up, W = Win << up;
    const long long N = (long long)T * H * W;
    const int ntaps = KT * KH * KW;
    const int K = Ci * ntaps;
    const int k_pad = (K + T_BK - 1) / T_BK * T_BK;
    const int nk = k_pad / T_BK;
    const int nc = KT - 1;

    if (tid < ntaps) {
        const int khw = KH * KW;
        const int kt = tid / khw, r = tid - kt * khw;
        const int kh = r / KW, kw = r - kh * KW;
        taps[tid] = TapOff{kt - nc, kh - KH / 2, kw - KW / 2};
    }

    // A loader: row tid / 4, 16-B chunk tid % 4 (always in bounds: the matrix is padded).
    const __nv_bfloat16* a_src = w + (long long)(m0 + (tid >> 2)) * k_pad + (tid & 3) * 8;
    const uint32_t a_dst = smem_u32(smem) + (uint32_t)((tid >> 2) * T_LDA + (tid & 3) * 8) * 2;
    // B loader: pixel n0 + (tid % 128), k half (tid / 128) * 16 of each k-tile; (t, h, w) once.
    const int b_n = tid & (T_BN - 1);
    const int b_k = (tid >> 7) * 16;
    const Pix bpx = decode_pixel(n0 + b_n, H, W, N);
    const uint32_t b_dst = smem_u32(smem) + CONV_STAGES * CONV_A_STAGE_BYTES + (uint32_t)(b_n * T_LDB + b_k) * 4;
    __syncthreads();  // taps

    // (tap, ci) of this thread's first k in the next tile to load: tiles are loaded in order,
    // so it is carried from tile to tile (one division here, none in the loop).
    int ld_tap = b_k / Ci;
    int ld_ci = b_k - ld_tap * Ci;
    auto load_tile = [&](int kt_i, int stage) {
        const int k0 = kt_i * T_BK;
        cp_async16(a_dst + stage * CONV_A_STAGE_BYTES, a_src + k0, true);
        const uint32_t bd = b_dst + stage * CONV_B_STAGE_BYTES;
        const int kf = k0 + b_k;
        int tap = ld_tap;
        int ci = ld_ci;
        for (ld_ci += T_BK; ld_ci >= Ci; ld_ci -= Ci) ld_tap++;
        if (tap < ntaps && ci + 16 <= Ci) {
            // One tap for all 16 k (the common case): resolve it once.
            const TapSrc s = tap_src(x, ctx, b, Ci, T, Hin, Win, nc, up, H, W, bpx.t, bpx.h, bpx.w, bpx.valid, taps[tap]);
            const float* src = s.p + (long long)ci * s.cstride;  // x itself when !s.ok (cstride 0)
#pragma unroll
            for (int j = 0; j < 16; j++) cp_async4(bd + j * 4, src + j * s.cstride, s.ok);
        } else {
            // Channel runs that cross a tap, or the K tail.
            TapSrc s = tap_src(x, ctx, b, Ci, T, Hin, Win, nc, up, H, W, bpx.t, bpx.h, bpx.w, bpx.valid, taps[tap < ntaps ? tap : 0]);
            for (int j = 0; j < 16; j++) {
                const bool in = kf + j < K;
                const bool ok = in && s.ok;
                cp_async4(bd + j * 4, ok ? s.p + (long long)ci * s.cstride : x, ok);
                if (++ci == Ci) {
                    ci = 0;
                    tap++;
                    if (tap < ntaps) s = tap_src(x, ctx, b, Ci, T, Hin, Win, nc, up, H, W, bpx.t, bpx.h, bpx.w, bpx.valid, taps[tap]);
                }
            }
        }
    };

    const int wm = warp >> 2;  // rows wm*32
    const int wn = warp & 3;   // cols wn*32
    const int g = lane >> 2;
    const int tig = lane & 3;
    // ldmatrix.x4 address of the A fragment (rows +(lane % 16), k +(lane / 16) * 8) per stage.
    const uint32_t a_frag = smem_u32(smem) + (uint32_t)((wm * 32 + (lane & 15)) * T_LDA + (lane >> 4) * 8) * 2;
    const float* b_frag = reinterpret_cast<const float*>(smem + CONV_STAGES * CONV_A_STAGE_BYTES) + (wn * 32 + g) * T_LDB + tig * 2;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

#pragma unroll
    for (int s = 0; s < CONV_STAGES - 1; s++) {
        if (s < nk) load_tile(s, s);
        cp_async_commit();
    }
    for (int kt_i = 0; kt_i < nk; kt_i++) {
        cp_async_wait<CONV_STAGES - 2>();
        __syncthreads();  // tile kt_i landed for every thread; stage (kt_i - 1) % S is free
        {
            const int nt = kt_i + CONV_STAGES - 1;
            if (nt < nk) load_tile(nt, nt % CONV_STAGES);
            cp_async_commit();
        }
        const int st = kt_i % CONV_STAGES;
        const uint32_t as = a_frag + st * CONV_A_STAGE_BYTES;
        const float* bs = b_frag + st * (CONV_B_STAGE_BYTES / 4);
#pragma unroll
        for (int ks = 0; ks < T_BK; ks += 16) {
            uint32_t af[2][4];
            uint32_t bfr[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) ldsm_x4(af[i], as + (uint32_t)(i * 16 * T_LDA + ks) * 2);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const float2 lo = *reinterpret_cast<const float2*>(bs + j * 8 * T_LDB + ks);
                const float2 hi = *reinterpret_cast<const float2*>(bs + j * 8 * T_LDB + ks + 8);
                bfr[j][0] = pack2<__nv_bfloat16>(lo.x, lo.y);
                bfr[j][1] = pack2<__nv_bfloat16>(hi.x, hi.y);
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_16816_bf16(acc[i][j], af[i][0], af[i][1], af[i][2], af[i][3], bfr[j][0], bfr[j][1]);
        }
    }
    cp_async_wait<0>();

    const ConvParams p = {x, ctx, nullptr, bias, resid, y, B, Ci, Co, T, Hin, Win, KT, KH, KW, up, interleave, out_frames, out_t0, do_clamp, lo, hi};
    // Epilogue: c0,c1 at (row g, cols 2*tig, 2*tig+1); c2,c3 at row g+8.
#pragma unroll
    for (int j = 0; j < 4; j++) {
#pragma unroll
        for (int e1 = 0; e1 < 2; e1++) {
            long long n = n0 + wn * 32 + j * 8 + tig * 2 + e1;
            if (n >= N) continue;
            Pix px = decode_pixel(n, H, W, N);
#pragma unroll
            for (int i = 0; i < 2; i++) {
#pragma unroll
                for (int e0 = 0; e0 < 2; e0++) {
                    int co = m0 + wm * 32 + i * 16 + g + e0 * 8;
                    if (co < Co) store_y(p, b, co, px, H, W, acc[i][j][e0 * 2 + e1]);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers.
// ---------------------------------------------------------------------------------------------

// New causal cache: the last `nc` frames of cat_time(ctx (nc frames, zeros if null), x (T frames)).
// out [B, C, nc, HW].
extern "C" __global__ void conv_cache_update(const float* __restrict__ ctx, const float* __restrict__ x,
                                             float* __restrict__ out, int B, int C, int T, int nc, long long HW) {
    long long total = (long long)B * C * nc * HW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long sp = i % HW;
        long long r = i / HW;
        int j = (int)(r % nc);
        long long bc = r / nc;
        int s = T + j;  // index in the concatenation of nc ctx frames and T x frames
        float v;
        if (s >= nc) {
            v = x[(bc * T + (s - nc)) * HW + sp];
        } else {
            v = ctx ? ctx[(bc * nc + s) * HW + sp] : 0.f;
        }
        out[i] = v;
    }
}

// Nearest 2x spatial upsampling: x [BCT, H, W] -> y [BCT, 2H, 2W].
extern "C" __global__ void upsample_nearest2x_f32(const float* __restrict__ x, float* __restrict__ y, long long BCT, int H, int W) {
    long long total = BCT * 4 * H * W;
    int W2 = 2 * W, H2 = 2 * H;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        int w2 = (int)(i % W2);
        long long r = i / W2;
        int h2 = (int)(r % H2);
        long long f = r / H2;
        y[i] = x[(f * H + (h2 >> 1)) * W + (w2 >> 1)];
    }
}

// Time interleave of the upsample3d time_conv output: x [B, 2C, T, HW] -> y [B, C, 2T, HW],
// y[b, c, 2t+s] = x[b, s*C + c, t].
extern "C" __global__ void interleave_time_f32(const float* __restrict__ x, float* __restrict__ y, int B, int C, int T, long long HW) {
    long long total = (long long)B * C * 2 * T * HW;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long sp = i % HW;
        long long r = i / HW;
        int t2 = (int)(r % (2 * T));
        long long bc = r / (2 * T);
        int c = (int)(bc % C);
        long long bb = bc / C;
        int s = t2 & 1, t = t2 >> 1;
        y[i] = x[((bb * 2 * C + s * C + c) * T + t) * HW + sp];
    }
}

// ---------------------------------------------------------------------------------------------
// VAE glue (src/model/vae/glue.rs): channel RMS norm, strided 2D copies and the column softmax
// of the mid-block attention (whose two GEMMs run through the conv kernels above).
// ---------------------------------------------------------------------------------------------

// y = x / max(||x||_2 over C, 1e-12) * sqrt(C) * gamma[c] (then SiLU if silu), x [B, C, N].
extern "C" __global__ void vae_channel_rms_norm_f32(const float* __restrict__ x, const float* __restrict__ gamma,
                                                    float* __restrict__ y, int B, int C, long long N, int silu) {
    long long total = (long long)B * N;
    float scale = sqrtf((float)C);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long b = i / N, n = i - b * N;
        const float* xp = x + b * C * N + n;
        float* yp = y + b * C * N + n;
        float ss = 0.f;
        for (int c = 0; c < C; c++) {
            float v = xp[(long long)c * N];
            ss = fmaf(v, v, ss);
        }
        float s = scale / fmaxf(sqrtf(ss), 1e-12f);
        for (int c = 0; c < C; c++) {
            float u = xp[(long long)c * N] * s * gamma[c];
            if (silu) u = u / (1.f + expf(-u));
            yp[(long long)c * N] = u;
        }
    }
}

// y[yoff + r*ysr + c*ysc] = x[xoff + r*xsr + c*xsc] for r < R, c < Cc.
extern "C" __global__ void vae_copy2d_f32(const float* __restrict__ x, float* __restrict__ y, long long R, long long Cc,
                                          long long xoff, long long xsr, long long xsc, long long yoff, long long ysr,
                                          long long ysc) {
    long long total = R * Cc;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        long long r = i / Cc, c = i - r * Cc;
        y[yoff + r * ysr + c * ysc] = x[xoff + r * xsr + c * xsc];
    }
}

// In place softmax over dim 0 of s [J, I] (one thread per column i).
extern "C" __global__ void vae_softmax_dim0_f32(float* __restrict__ s, int J, int I) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < I; i += (long long)gridDim.x * blockDim.x) {
        float m = -INFINITY;
        for (int j = 0; j < J; j++) m = fmaxf(m, s[(long long)j * I + i]);
        float sum = 0.f;
        for (int j = 0; j < J; j++) sum += expf(s[(long long)j * I + i] - m);
        float inv = 1.f / sum;
        for (int j = 0; j < J; j++) {
            long long k = (long long)j * I + i;
            s[k] = expf(s[k] - m) * inv;
        }
    }
}
