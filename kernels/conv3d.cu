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
// conv_bf16_mma: tensor cores (mma.sync m16n8k16 bf16 x bf16 -> f32), operands rounded to
// bf16 while staging into shared memory, f32 accumulation; 64x128x32 tiles, 8 warps.
#include "common.cuh"
#include "ptx.cuh"

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
#define S_BM 64
#define S_BN 64
#define S_BK 16

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
// bf16 tensor-core implicit GEMM: tile 64 (co) x 128 (pixels) x 32 (k), 8 warps as 2 (M) x 4 (N),
// each warp 32x32 = 2 m16 x 4 n8 mma tiles. Shared tiles are k-contiguous ([m][k] and [n][k])
// with a row pitch of 40 bf16 (80 B) so fragment loads hit 32 distinct banks.
// ---------------------------------------------------------------------------------------------
#define T_BM 64
#define T_BN 128
#define T_BK 32
#define T_LD 40

extern "C" __global__ void __launch_bounds__(256) conv_bf16_mma(CONV_KERNEL_ARGS) {
    const ConvParams p = CONV_PARAMS_INIT;
    __shared__ __align__(16) __nv_bfloat16 As[T_BM * T_LD];
    __shared__ __align__(16) __nv_bfloat16 Bs[T_BN * T_LD];
    __shared__ Tap taps[T_BK];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int b = blockIdx.z;
    const int m0 = blockIdx.y * T_BM;
    const long long n0 = (long long)blockIdx.x * T_BN;
    const int H = p.Hin << p.up, W = p.Win << p.up;
    const long long N = (long long)p.T * H * W;
    const int K = p.Ci * p.KT * p.KH * p.KW;

    // Loader roles: A 64x32 (8 per thread), B 128x32 (16 per thread).
    const int a_m = tid >> 2;         // 0..63
    const int a_k = (tid & 3) * 8;    // 0,8,16,24
    const int b_n = tid & 127;        // 0..127
    const int b_k = (tid >> 7) * 16;  // 0,16
    const Pix bpx = decode_pixel(n0 + b_n, H, W, N);

    const int wm = warp >> 2;  // 0..1 -> rows wm*32
    const int wn = warp & 3;   // 0..3 -> cols wn*32
    const int g = lane >> 2;
    const int tig = lane & 3;

    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    for (int k0 = 0; k0 < K; k0 += T_BK) {
        if (tid < T_BK) {
            int k = k0 + tid;
            taps[tid] = decode_tap(k < K ? k : 0, p.KT, p.KH, p.KW);
        }
        {
            int m = m0 + a_m;
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                int k = k0 + a_k + j;
                float v0 = (m < p.Co && k < K) ? p.w[(long long)m * K + k] : 0.f;
                float v1 = (m < p.Co && k + 1 < K) ? p.w[(long long)m * K + k + 1] : 0.f;
                *reinterpret_cast<__nv_bfloat162*>(&As[a_m * T_LD + a_k + j]) = __floats2bfloat162_rn(v0, v1);
            }
        }
        __syncthreads();  // taps ready
#pragma unroll
        for (int j = 0; j < 16; j += 2) {
            int kk = b_k + j;
            float v0 = (k0 + kk < K) ? gather_x(p, b, taps[kk], bpx, H, W) : 0.f;
            float v1 = (k0 + kk + 1 < K) ? gather_x(p, b, taps[kk + 1], bpx, H, W) : 0.f;
            *reinterpret_cast<__nv_bfloat162*>(&Bs[b_n * T_LD + kk]) = __floats2bfloat162_rn(v0, v1);
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < T_BK; ks += 16) {
            uint32_t af[2][4];
            uint32_t bfr[4][2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                const __nv_bfloat16* base = &As[(wm * 32 + i * 16 + g) * T_LD + ks + tig * 2];
                af[i][0] = *reinterpret_cast<const uint32_t*>(base);
                af[i][1] = *reinterpret_cast<const uint32_t*>(base + 8 * T_LD);
                af[i][2] = *reinterpret_cast<const uint32_t*>(base + 8);
                af[i][3] = *reinterpret_cast<const uint32_t*>(base + 8 * T_LD + 8);
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const __nv_bfloat16* base = &Bs[(wn * 32 + j * 8 + g) * T_LD + ks + tig * 2];
                bfr[j][0] = *reinterpret_cast<const uint32_t*>(base);
                bfr[j][1] = *reinterpret_cast<const uint32_t*>(base + 8);
            }
#pragma unroll
            for (int i = 0; i < 2; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) mma_16816_bf16(acc[i][j], af[i][0], af[i][1], af[i][2], af[i][3], bfr[j][0], bfr[j][1]);
        }
        __syncthreads();
    }

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
                    if (co < p.Co) store_y(p, b, co, px, H, W, acc[i][j][e0 * 2 + e1]);
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
