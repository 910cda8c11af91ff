// Multi-head attention over concatenated sequence segments (src/ops/attention.rs,
// src/ops/attention_cuda.rs):  O = softmax(scale * Q K^T + bias) V.
//
// Layout: tokens-major with the heads in the last dim. Q, K and V are each given as up to 4
// segments [B, S_i, H*d] (the MMDiT joint attention passes [video; text] without building a
// concatenated copy); segment i has its own base pointer, row stride and batch stride (elements,
// last dim dense). Positions (causal mask, bias rows/columns) count over the concatenation.
// Output [B, Sq, H*d], contiguous. Bias (optional, may be null): f32 [H, Sq, Sk], broadcast over
// the batch (T5 relative positions). Causal: key j is masked for query i when j > i.
//
// flash_attn_fwd_d64 (bf16, d = 64): FlashAttention-2 forward.
//   * CTA = 128 query rows of one (head, batch), 8 warps x 16 rows; grid (ceil(Sq/128), H, B).
//   * Key/value tiles of 64 rows, cp.async double-buffered in shared memory (2 stages each);
//     the Q tile is loaded once and kept in registers as mma A-fragments.
//   * S = Q K^T and O += P V with mma.sync m16n8k16 (bf16 x bf16 -> f32). K is read with
//     ldmatrix (its [key][d] rows are the "col" B operand of Q K^T); V with ldmatrix.trans.
//   * Online softmax in the exp2 domain (scores pre-multiplied by scale*log2(e)), running max and
//     sum per row, the quad of 4 threads that shares a row reduces with shfl_xor 1, 2. P is
//     rounded to bf16 in registers: the C-fragment of the two m16n8 score tiles of 16 keys is
//     exactly the A-fragment of the P V mma.
//   * Keys >= Sk are masked to -inf and their K/V rows zero-filled (cp.async src-size 0), so
//     garbage (NaN poison) never reaches the accumulators; queries >= Sq are zero-filled and not
//     stored. A tile may straddle two segments: every 16-byte chunk picks its segment by the key
//     index.
//   * Shared memory rows are 64 bf16 = 8 chunks of 16 B, XOR-swizzled (chunk ^ (row & 7)), so
//     the cp.async stores and ldmatrix loads of 8 rows are bank-conflict free. 48 KiB total
//     (Q 16 KiB + K 2x8 KiB + V 2x8 KiB).
//
// attn_naive_{f32,bf16,f16} (any d <= 256): one warp per (query row, head, batch), 4 warps per
// block, keys in chunks of 32 (one key per lane for the score, then the 32 probabilities are
// broadcast for the P V update), online softmax in f32 with expf. Slow but simple; used for the
// tiny test models and as a second opinion for the flash kernel.
#include "common.cuh"
#include "ptx.cuh"

// ------------------------------------------------------------------------------------------------
// Segment lists
// ------------------------------------------------------------------------------------------------

// The kernel parameters of one segmented operand X (q, k or v): 4 base pointers, 4 lengths
// (rows), 4 row strides and 4 batch strides (elements). Unused segments have length 0.
#define SEG_ARGS(X)                                                                                  \
    const void *X##p0, const void *X##p1, const void *X##p2, const void *X##p3, int X##n0, int X##n1, \
        int X##n2, int X##n3, long long X##rs0, long long X##rs1, long long X##rs2, long long X##rs3,  \
        long long X##bs0, long long X##bs1, long long X##bs2, long long X##bs3
#define SEG_MAKE(X) \
    Segs { X##p0, X##p1, X##p2, X##p3, X##n0, X##n1, X##n2, X##n3, X##rs0, X##rs1, X##rs2, X##rs3, X##bs0, X##bs1, X##bs2, X##bs3 }

struct Segs {
    const void *p0, *p1, *p2, *p3;
    int n0, n1, n2, n3;
    long long rs0, rs1, rs2, rs3;
    long long bs0, bs1, bs2, bs3;
};

// Pointer to row j (0 <= j < n0+n1+n2+n3, over the concatenation) of batch b.
template <typename T>
__device__ __forceinline__ const T* seg_row(const Segs& s, int b, int j) {
    const int e0 = s.n0, e1 = e0 + s.n1, e2 = e1 + s.n2;
    const void* p;
    long long rs, bs;
    int jj;
    if (j < e0) {
        p = s.p0; rs = s.rs0; bs = s.bs0; jj = j;
    } else if (j < e1) {
        p = s.p1; rs = s.rs1; bs = s.bs1; jj = j - e0;
    } else if (j < e2) {
        p = s.p2; rs = s.rs2; bs = s.bs2; jj = j - e1;
    } else {
        p = s.p3; rs = s.rs3; bs = s.bs3; jj = j - e2;
    }
    return reinterpret_cast<const T*>(p) + (long long)b * bs + (long long)jj * rs;
}

// ------------------------------------------------------------------------------------------------
// flash_attn_fwd_d64
// ------------------------------------------------------------------------------------------------

namespace fa {
constexpr int D = 64;        // head dim
constexpr int BM = 128;      // query rows per CTA
constexpr int BN = 64;       // keys per tile
constexpr int WARPS = 8;     // 16 query rows each
constexpr int THREADS = WARPS * 32;
// Two CTAs per SM (16 warps) need at most 128 registers per thread: ptxas gives it 126-128 on
// sm_80..sm_90, 132-134 on sm_100/sm_120 (1 CTA there). It is not pinned with a minimum CTA
// count: at a cap of 128 it spills on sm_90 (12 B) and sm_100/120 (up to 132 B, LDL/STL in
// the loop). The static kernel gate (tests/kernel_gate.rs) checks the counts on every arch.
constexpr int TILE_Q = BM * D;  // elements
constexpr int TILE_KV = BN * D;
constexpr int SMEM_BYTES = (TILE_Q + 4 * TILE_KV) * 2;  // Q + 2 K + 2 V stages = 48 KiB
constexpr float LOG2E = 1.4426950408889634f;
static_assert(BM == WARPS * 16, "one m16 tile per warp");
static_assert(SMEM_BYTES == 49152, "the launcher passes 48 KiB");
}  // namespace fa

// Element offset of the 16-byte chunk `c` (0..7) of row `r` in a swizzled [rows][64] bf16 tile.
__device__ __forceinline__ int swz(int r, int c) { return r * fa::D + ((c ^ (r & 7)) << 3); }

// scale_log2 = scale * log2(e). bias: f32 [H, Sq, Sk] or null. causal: 0 / 1.
extern "C" __global__ void __launch_bounds__(fa::THREADS) flash_attn_fwd_d64(SEG_ARGS(q), SEG_ARGS(k), SEG_ARGS(v),
                                                                              __nv_bfloat16* __restrict__ out,
                                                                              const float* __restrict__ bias, int H, int Sq,
                                                                              int Sk, float scale_log2, int causal) {
    using namespace fa;
    DYNAMIC_SMEM(smem_raw);
    __nv_bfloat16* sQ = reinterpret_cast<__nv_bfloat16*>(smem_raw);
    __nv_bfloat16* sK = sQ + TILE_Q;   // 2 stages
    __nv_bfloat16* sV = sK + 2 * TILE_KV;  // 2 stages
    const uint32_t sQa = smem_u32(sQ), sKa = smem_u32(sK), sVa = smem_u32(sV);

    const Segs qs = SEG_MAKE(q), ks = SEG_MAKE(k), vs = SEG_MAKE(v);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z;
    const int hoff = h * D;

    // Keys this CTA needs: all, or (causal) those j <= the CTA's last valid query.
    const int kend = causal ? min(Sk, min(m0 + BM, Sq)) : Sk;
    const int ntiles = (kend + BN - 1) / BN;

    // --- async loads: every thread copies 16-byte chunks; chunk c of row r ---
    auto load_kv = [&](int tile, int stage) {
        const int n0 = tile * BN;
#pragma unroll
        for (int it = 0; it < TILE_KV / 8 / THREADS; it++) {  // 2
            const int idx = tid + it * THREADS;
            const int r = idx >> 3, c = idx & 7;
            const int j = n0 + r;
            const bool ok = j < Sk;
            const __nv_bfloat16* kp = ok ? seg_row<__nv_bfloat16>(ks, b, j) + hoff + c * 8 : (const __nv_bfloat16*)kp0;
            const __nv_bfloat16* vp = ok ? seg_row<__nv_bfloat16>(vs, b, j) + hoff + c * 8 : (const __nv_bfloat16*)vp0;
            const uint32_t off = (uint32_t)(stage * TILE_KV + swz(r, c)) * 2u;
            cp_async16(sKa + off, kp, ok);
            cp_async16(sVa + off, vp, ok);
        }
    };

    // Prologue: group 0 = Q + K/V tile 0, group 1 = K/V tile 1 (possibly empty).
#pragma unroll
    for (int it = 0; it < TILE_Q / 8 / THREADS; it++) {  // 4
        const int idx = tid + it * THREADS;
        const int r = idx >> 3, c = idx & 7;
        const int i = m0 + r;
        const bool ok = i < Sq;
        const __nv_bfloat16* qp = ok ? seg_row<__nv_bfloat16>(qs, b, i) + hoff + c * 8 : (const __nv_bfloat16*)qp0;
        cp_async16(sQa + (uint32_t)swz(r, c) * 2u, qp, ok);
    }
    if (ntiles > 0) load_kv(0, 0);
    cp_async_commit();
    if (ntiles > 1) load_kv(1, 1);
    cp_async_commit();

    // Fragment coordinates: this thread holds rows g and g+8 of the warp's 16, columns 2*t4, 2*t4+1
    // of every n8 tile.
    const int g = lane >> 2, t4 = lane & 3;
    const int wrow = warp * 16;
    const int qi0 = m0 + wrow + g, qi1 = qi0 + 8;  // query positions of the two rows

    uint32_t qf[4][4];  // A fragments of Q, 4 k-steps of 16 dims
    float o[8][4];      // O accumulators: 8 n8 tiles of head dims
#pragma unroll
    for (int i = 0; i < 8; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[i][e] = 0.f;
    float mrow[2] = {-INFINITY, -INFINITY};  // running max (log2 domain)
    float lrow[2] = {0.f, 0.f};              // running sum (this thread's columns only)

    for (int tile = 0; tile < ntiles; tile++) {
        cp_async_wait<1>();  // the group of this tile is complete (only the next one may be pending)
        __syncthreads();     // ... for every thread's copies
        if (tile == 0) {
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                // matrices: 0 rows 0-7 dims k0..+7, 1 rows 8-15 k0, 2 rows 0-7 k0+8, 3 rows 8-15 k0+8
                const int r = wrow + (lane & 15), c = kk * 2 + (lane >> 4);
                ldsm_x4(qf[kk], sQa + (uint32_t)swz(r, c) * 2u);
            }
        }
        const int stage = tile & 1;
        const uint32_t kbase = sKa + (uint32_t)(stage * TILE_KV) * 2u;
        const uint32_t vbase = sVa + (uint32_t)(stage * TILE_KV) * 2u;
        const int n0 = tile * BN;

        // ---- S = Q K^T (16 x 64 per warp) ----
        float s[8][4];
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[i][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int np = 0; np < 4; np++) {
                // matrices: 0 keys n..n+7 dims k0..+7, 1 keys n..+7 dims k0+8.., 2 keys n+8.. k0, 3 keys n+8.. k0+8
                // -> regs 0,1 = B of key tile 2np, regs 2,3 = B of key tile 2np+1.
                const int r = np * 16 + (lane & 7) + ((lane >> 4) << 3);
                const int c = kk * 2 + ((lane >> 3) & 1);
                uint32_t kb[4];
                ldsm_x4(kb, kbase + (uint32_t)swz(r, c) * 2u);
                mma_16816_bf16(s[2 * np], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], kb[0], kb[1]);
                mma_16816_bf16(s[2 * np + 1], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], kb[2], kb[3]);
            }
        }

        // ---- scale, bias, mask (log2 domain) ----
        if (bias != nullptr) {
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = e < 2 ? qi0 : qi1;
                    const int j = n0 + nt * 8 + 2 * t4 + (e & 1);
                    float bv = 0.f;
                    if (i < Sq && j < Sk) bv = __ldg(bias + ((long long)h * Sq + i) * Sk + j);
                    s[nt][e] = fmaf(s[nt][e], scale_log2, bv * LOG2E);
                }
        } else {
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) s[nt][e] *= scale_log2;
        }
        // Masking is needed on the last (partial) tile, and (causal) where a key may exceed the
        // warp's first query.
        const bool need_mask = (n0 + BN > Sk) || (causal && n0 + BN - 1 > m0 + wrow);
        if (need_mask) {
#pragma unroll
            for (int nt = 0; nt < 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = e < 2 ? qi0 : qi1;
                    const int j = n0 + nt * 8 + 2 * t4 + (e & 1);
                    if (j >= Sk || (causal && j > i)) s[nt][e] = -INFINITY;
                }
        }

        // ---- online softmax ----
        float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
        }
        float alpha[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            // A row with no valid key yet keeps max -inf: subtract 0 instead (exp2(-inf) = 0, no NaN).
            base[r] = mx[r] == -INFINITY ? 0.f : mx[r];
            alpha[r] = fast_exp2(mrow[r] - base[r]);
            mrow[r] = mx[r];
        }
        float ls[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            s[nt][0] = fast_exp2(s[nt][0] - base[0]);
            s[nt][1] = fast_exp2(s[nt][1] - base[0]);
            s[nt][2] = fast_exp2(s[nt][2] - base[1]);
            s[nt][3] = fast_exp2(s[nt][3] - base[1]);
            ls[0] += s[nt][0] + s[nt][1];
            ls[1] += s[nt][2] + s[nt][3];
        }
        lrow[0] = lrow[0] * alpha[0] + ls[0];
        lrow[1] = lrow[1] * alpha[1] + ls[1];
#pragma unroll
        for (int dt = 0; dt < 8; dt++) {
            o[dt][0] *= alpha[0];
            o[dt][1] *= alpha[0];
            o[dt][2] *= alpha[1];
            o[dt][3] *= alpha[1];
        }

        // ---- O += P V ----
#pragma unroll
        for (int ks2 = 0; ks2 < 4; ks2++) {  // 16 keys per k-step
            // A fragment of P (rows g / g+8, keys 16*ks2 + 2*t4 (+8)) = C fragments of key tiles 2ks2, 2ks2+1.
            const uint32_t a0 = pack2<__nv_bfloat16>(s[2 * ks2][0], s[2 * ks2][1]);
            const uint32_t a1 = pack2<__nv_bfloat16>(s[2 * ks2][2], s[2 * ks2][3]);
            const uint32_t a2 = pack2<__nv_bfloat16>(s[2 * ks2 + 1][0], s[2 * ks2 + 1][1]);
            const uint32_t a3 = pack2<__nv_bfloat16>(s[2 * ks2 + 1][2], s[2 * ks2 + 1][3]);
#pragma unroll
            for (int dp = 0; dp < 4; dp++) {
                // .trans matrices: 0 keys k..k+7 dims d0..+7, 1 keys k+8.. d0, 2 keys k.. d0+8, 3 keys k+8.. d0+8
                // -> regs 0,1 = B of dim tile 2dp, regs 2,3 = B of dim tile 2dp+1.
                const int r = ks2 * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                const int c = dp * 2 + (lane >> 4);
                uint32_t vb[4];
                ldsm_x4_t(vb, vbase + (uint32_t)swz(r, c) * 2u);
                mma_16816_bf16(o[2 * dp], a0, a1, a2, a3, vb[0], vb[1]);
                mma_16816_bf16(o[2 * dp + 1], a0, a1, a2, a3, vb[2], vb[3]);
            }
        }

        __syncthreads();  // every warp is done with this stage before it is refilled
        if (tile + 2 < ntiles) load_kv(tile + 2, stage);
        cp_async_commit();  // always commit (maybe empty) so that wait_group<1> counts uniformly
    }
    cp_async_wait<0>();

    // ---- epilogue: O / rowsum, bf16, rows < Sq ----
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = lrow[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[r] = l > 0.f ? 1.f / l : 0.f;
    }
    const long long ld = (long long)H * D;
    if (qi0 < Sq) {
        __nv_bfloat16* op = out + ((long long)b * Sq + qi0) * ld + hoff + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < 8; dt++)
            *reinterpret_cast<uint32_t*>(op + dt * 8) = pack2<__nv_bfloat16>(o[dt][0] * inv[0], o[dt][1] * inv[0]);
    }
    if (qi1 < Sq) {
        __nv_bfloat16* op = out + ((long long)b * Sq + qi1) * ld + hoff + 2 * t4;
#pragma unroll
        for (int dt = 0; dt < 8; dt++)
            *reinterpret_cast<uint32_t*>(op + dt * 8) = pack2<__nv_bfloat16>(o[dt][2] * inv[1], o[dt][3] * inv[1]);
    }
}

// ------------------------------------------------------------------------------------------------
// attn_naive_{f32,bf16,f16}: any head dim d <= 256
// ------------------------------------------------------------------------------------------------

namespace naive {
constexpr int WARPS = 4;  // query rows per block
constexpr int DMAX = 256;
}  // namespace naive

template <typename T>
__device__ __forceinline__ void attn_naive_impl(const Segs& qs, const Segs& ks, const Segs& vs, T* __restrict__ out,
                                                const float* __restrict__ bias, int H, int D, int Sq, int Sk, float scale,
                                                int causal) {
    using namespace naive;
    __shared__ float sq[WARPS][DMAX];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int i = blockIdx.x * WARPS + warp;  // query position
    const int h = blockIdx.y, b = blockIdx.z;
    if (i >= Sq) return;  // whole warp; no block-wide barrier below
    const long long hoff = (long long)h * D;

    const T* qr = seg_row<T>(qs, b, i) + hoff;
    for (int c = lane; c < D; c += 32) sq[warp][c] = to_f(qr[c]);
    __syncwarp();

    float o[DMAX / 32];
#pragma unroll
    for (int u = 0; u < DMAX / 32; u++) o[u] = 0.f;
    float m = -INFINITY, l = 0.f;
    const int kend = causal ? min(Sk, i + 1) : Sk;
    const float* brow = bias ? bias + ((long long)h * Sq + i) * Sk : nullptr;

    for (int j0 = 0; j0 < kend; j0 += 32) {
        const int j = j0 + lane;
        float s = -INFINITY;
        if (j < kend) {
            const T* kr = seg_row<T>(ks, b, j) + hoff;
            float dot = 0.f;
            for (int c = 0; c < D; c++) dot = fmaf(sq[warp][c], to_f(kr[c]), dot);
            s = dot * scale;
            if (brow) s += brow[j];
        }
        const float mnew = fmaxf(m, warp_max(s));
        const float base = mnew == -INFINITY ? 0.f : mnew;
        const float p = expf(s - base);
        const float alpha = expf(m - base);
        l = l * alpha + warp_sum(p);
        m = mnew;
#pragma unroll
        for (int u = 0; u < DMAX / 32; u++) o[u] *= alpha;
        const int nj = min(32, kend - j0);
        for (int jj = 0; jj < nj; jj++) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
            const T* vr = seg_row<T>(vs, b, j0 + jj) + hoff;
#pragma unroll
            for (int u = 0; u < DMAX / 32; u++) {
                const int c = lane + 32 * u;
                if (c < D) o[u] = fmaf(pj, to_f(vr[c]), o[u]);
            }
        }
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* orow = out + ((long long)b * Sq + i) * H * D + hoff;
#pragma unroll
    for (int u = 0; u < DMAX / 32; u++) {
        const int c = lane + 32 * u;
        if (c < D) orow[c] = from_f<T>(o[u] * inv);
    }
}

#define ATTN_NAIVE(NAME, T)                                                                                              \
    extern "C" __global__ void __launch_bounds__(naive::WARPS * 32)                                                     \
        NAME(SEG_ARGS(q), SEG_ARGS(k), SEG_ARGS(v), T* __restrict__ out, const float* __restrict__ bias, int H, int D, \
             int Sq, int Sk, float scale, int causal) {                                                                 \
        attn_naive_impl<T>(SEG_MAKE(q), SEG_MAKE(k), SEG_MAKE(v), out, bias, H, D, Sq, Sk, scale, causal);              \
    }

ATTN_NAIVE(attn_naive_f32, float)
ATTN_NAIVE(attn_naive_bf16, __nv_bfloat16)
ATTN_NAIVE(attn_naive_f16, __half)
