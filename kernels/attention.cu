// Multi-head attention over concatenated sequence segments (src/ops/attention/: mod.rs,
// mma.rs, naive.rs):  O = softmax(scale * Q K^T + bias) V.
//
// Layout: tokens-major with the heads in the last dim. Q, K and V are each given as up to 4
// segments [B, S_i, H*d] (the MMDiT joint attention passes [video; text] without building a
// concatenated copy); segment i has its own base pointer, row stride and batch stride (elements,
// last dim dense). Positions (causal mask, bias rows/columns) count over the concatenation.
// Output: one per query segment (OUT_ARGS, kernels/attn_out.cuh): query segment i's rows go to
// output segment i [B, n_i, H*d] at its own base pointer, row stride and batch stride (the MMDiT
// block gets separate contiguous video and text outputs that its output projections read in
// place; attention() with one output passes views of one [B, Sq, H*d] tensor). Bias (optional,
// may be null): f32 [H, Sq, Sk], broadcast over the batch (T5 relative positions). Causal: key j
// is masked for query i when j > i.
//
// flash_attn_fwd_d64 (bf16, d = 64): FlashAttention-2 forward (issue 17's mma.sync kernel).
//   * CTA = 128 query rows of one (head, batch), 4 warps x 32 rows (two m16 row blocks per warp
//     share every K/V ldmatrix: one ldmatrix.x4 per four mma); grid (ceil(Sq/128), H, B);
//     __launch_bounds__(128, 2): two CTAs per SM on every arch (<= 255 registers, no spills:
//     tests/kernel_gate.rs).
//   * Key/value tiles of (at most) 64 rows in a 3-stage cp.async ring; the Q tile is staged in
//     the third stage, read once into registers as mma A-fragments before that stage is first
//     refilled. One __syncthreads per tile: wait_group 1, barrier, then the refill of the stage
//     every warp finished in the previous iteration (tile t+2), then the math of tile t.
//   * Tiles never straddle a segment boundary (of K or of V): the key walk goes segment by
//     segment, the last tile of a segment partial. Every thread sets its K/V row pointers once
//     per segment and advances them by len * row_stride per tile (no per-chunk segment search).
//     The position of a key (causal mask, bias column) is the tile's start over the
//     concatenation + its column.
//   * S = Q K^T and O += P V with mma.sync m16n8k16 (bf16 x bf16 -> f32). K is read with
//     ldmatrix (its [key][d] rows are the "col" B operand of Q K^T); V with ldmatrix.trans.
//   * Online softmax in the exp2 domain (scores pre-multiplied by scale*log2(e)), running max and
//     sum per row, the quad of 4 threads that shares a row reduces with shfl_xor 1, 2. P is
//     rounded to bf16 in registers: the C-fragment of the two m16n8 score tiles of 16 keys is
//     exactly the A-fragment of the P V mma.
//   * Keys past a tile's length are masked to -inf and their K/V rows zero-filled (cp.async
//     src-size 0), so garbage (NaN poison) never reaches the accumulators; queries >= Sq are
//     zero-filled and not stored.
//   * Shared memory rows are 64 bf16 = 8 chunks of 16 B, XOR-swizzled (chunk ^ (row & 7)), so
//     the cp.async stores and ldmatrix loads of 8 rows are bank-conflict free. 48 KiB total
//     (3 stages x (K 8 KiB + V 8 KiB); Q's 16 KiB reuse stage 2).
//
// attn_naive_{f32,bf16,f16} (any d <= 256): one warp per (query row, head, batch), 4 warps per
// block, keys in chunks of 32 (one key per lane for the score, then the 32 probabilities are
// broadcast for the P V update), online softmax in f32 with expf. Slow but simple; used for the
// tiny test models and as a second opinion for the flash kernel.
#include "common.cuh"
#include "attn_out.cuh"
#include "ptx.cuh"
#include "tiles.h"

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
// The launch geometry is kernels/tiles.h's (the launcher in src/ops/attention/mma.rs reads the
// same numbers through runtime::kernels::tiles).
constexpr int D = tiles::FLASH_D;            // head dim
constexpr int BM = tiles::FLASH_BM;          // query rows per CTA
constexpr int BN = tiles::FLASH_BN;          // keys per tile (at most; the last tile of a segment is partial)
constexpr int WARPS = tiles::FLASH_WARPS;    // 32 query rows each (two m16 row blocks sharing every K/V fragment)
constexpr int THREADS = tiles::FLASH_THREADS;
constexpr int STAGES = tiles::FLASH_STAGES;  // K/V tiles in flight (cp.async ring)
constexpr int MIN_CTAS = 2; // __launch_bounds__ minimum CTAs per SM: <= 255 registers a thread
constexpr int TILE_Q = BM * D;  // elements
constexpr int TILE_KV = BN * D;
// The Q tile is staged in the third K/V stage (K+V of one stage = 16 KiB = the Q tile): it is
// read into registers once before the ring's third stage is first filled.
constexpr int SMEM_BYTES = tiles::FLASH_SMEM_BYTES;  // 48 KiB
constexpr float LOG2E = 1.4426950408889634f;
static_assert(BM == WARPS * 32, "two m16 row blocks per warp");
static_assert(TILE_Q == 2 * TILE_KV, "Q fits one K+V stage");
static_assert(SMEM_BYTES == STAGES * 2 * TILE_KV * 2, "shared memory: STAGES x (K + V) bf16 tiles");
static_assert(SMEM_BYTES <= 48 * 1024, "no opt-in above the default 48 KiB");
static_assert(THREADS * 4 == BN * 8, "each thread copies 4 chunks of K and 4 of V per tile");
}  // namespace fa

// Element offset of the 16-byte chunk `c` (0..7) of row `r` in a swizzled [rows][64] bf16 tile.
__device__ __forceinline__ int swz(int r, int c) { return r * fa::D + ((c ^ (r & 7)) << 3); }

// Segment i (0..3) of a list: base pointer, length, row and batch strides.
__device__ __forceinline__ void seg_pick(const Segs& s, int i, const void*& p, int& n, long long& rs, long long& bs) {
    p = i == 0 ? s.p0 : i == 1 ? s.p1 : i == 2 ? s.p2 : s.p3;
    n = i == 0 ? s.n0 : i == 1 ? s.n1 : i == 2 ? s.n2 : s.n3;
    rs = i == 0 ? s.rs0 : i == 1 ? s.rs1 : i == 2 ? s.rs2 : s.rs3;
    bs = i == 0 ? s.bs0 : i == 1 ? s.bs1 : i == 2 ? s.bs2 : s.bs3;
}

// One side (K or V) of the key-tile walk of one thread: the current segment, the rows left in
// it, and the pointer to this thread's first row (tile row r0, chunk c) of the next tile. The
// pointer is set once per segment and advanced by len * rs per tile.
struct KvSide {
    const __nv_bfloat16* p;  // row r0 of the next tile, + head offset + chunk
    int rs;                  // row stride (elements; the launcher keeps 48 * rs < 2^31)
    int left;                // rows left in the segment
    int seg;                 // segment index (4: past the end)
};

// Moves `x` to the next non-empty segment if the current one is used up.
__device__ __forceinline__ void kv_next_seg(const Segs& s, KvSide& x, int b, int r0, int col) {
    while (x.left == 0 && x.seg < 3) {
        x.seg++;
        const void* p;
        long long rs, bs;
        seg_pick(s, x.seg, p, x.left, rs, bs);
        x.rs = (int)rs;
        x.p = reinterpret_cast<const __nv_bfloat16*>(p) + (long long)b * bs + r0 * x.rs + col;
    }
    if (x.left == 0) x.seg = 4;
}

// scale_log2 = scale * log2(e). bias: f32 [H, Sq, Sk] or null. causal: 0 / 1.
extern "C" __global__ void __launch_bounds__(fa::THREADS, fa::MIN_CTAS)
    flash_attn_fwd_d64(SEG_ARGS(q), SEG_ARGS(k), SEG_ARGS(v), OUT_ARGS(o), const float* __restrict__ bias, int H, int Sq, int Sk, float scale_log2, int causal) {
    using namespace fa;
    DYNAMIC_SMEM(smem_raw);
    // Stage s: K at s * 2 * TILE_KV, V right after it. Q staged in stage 2.
    const uint32_t sbase = smem_u32(smem_raw);
    const uint32_t sQa = sbase + (uint32_t)(2 * 2 * TILE_KV) * 2u;

    const Segs qs = SEG_MAKE(q), ks = SEG_MAKE(k), vs = SEG_MAKE(v);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z;
    const int hoff = h * D;

    // Keys this CTA needs: all, or (causal) those j <= the CTA's last valid query.
    const int kend = causal ? min(Sk, min(m0 + BM, Sq)) : Sk;

    // --- Q: 8 chunks of 16 B per thread, once (rows may cross segments: seg_row per row) ---
    {
        const int c = tid & 7;
#pragma unroll
        for (int it = 0; it < TILE_Q / 8 / THREADS; it++) {  // 8
            const int r = (tid >> 3) + it * (THREADS / 8);
            const int i = m0 + r;
            const bool ok = i < Sq;
            const __nv_bfloat16* qp = ok ? seg_row<__nv_bfloat16>(qs, b, i) + hoff + c * 8 : (const __nv_bfloat16*)qp0;
            cp_async16(sQa + (uint32_t)swz(r, c) * 2u, qp, ok);
        }
    }

    // --- K/V tile walk (every thread copies rows r0, r0+16, r0+32, r0+48, chunk lc) ---
    // Tiles never straddle a segment boundary (of K or of V): a tile is at most BN rows of the
    // current segments, so every row pointer is advanced, not searched.
    const int lc = tid & 7, r0 = tid >> 3;
    KvSide kx{nullptr, 0, 0, -1}, vx{nullptr, 0, 0, -1};
    int lpos = 0;  // position (over the concatenation) of the next tile to load
    // Issues the copies of the next tile into `stage`; returns its length (0: no tile left).
    auto load_next = [&](int stage) -> int {
        kv_next_seg(ks, kx, b, r0, hoff + lc * 8);
        kv_next_seg(vs, vx, b, r0, hoff + lc * 8);
        if (lpos >= kend || kx.seg > 3 || vx.seg > 3) return 0;
        const int len = min(BN, min(kx.left, vx.left));
        const uint32_t kst = sbase + (uint32_t)(stage * 2 * TILE_KV) * 2u;
        const uint32_t vst = kst + (uint32_t)TILE_KV * 2u;
#pragma unroll
        for (int it = 0; it < 4; it++) {
            const int r = r0 + 16 * it;
            const bool ok = r < len;
            const uint32_t off = (uint32_t)swz(r, lc) * 2u;
            // Rows past the tile are zero-filled (nothing read; src only has to be valid).
            cp_async16(kst + off, ok ? kx.p + 16 * it * kx.rs : (const __nv_bfloat16*)kp0, ok);
            cp_async16(vst + off, ok ? vx.p + 16 * it * vx.rs : (const __nv_bfloat16*)vp0, ok);
        }
        kx.p += len * kx.rs;
        vx.p += len * vx.rs;
        kx.left -= len;
        vx.left -= len;
        lpos += len;
        return len;
    };

    // Prologue: group 0 = Q + tile 0 (stage 0), group 1 = tile 1 (stage 1).
    int pos0 = lpos, len0 = load_next(0);
    cp_async_commit();
    int pos1 = lpos, len1 = load_next(1);
    cp_async_commit();

    // Fragment coordinates: this thread holds rows g and g+8 of each of the warp's two m16
    // blocks, columns 2*t4, 2*t4+1 of every n8 tile.
    const int g = lane >> 2, t4 = lane & 3;
    const int wrow = warp * 32;
    const int qfirst = m0 + wrow;  // the warp's first query position

    uint32_t qf[2][4][4];  // A fragments of Q: 2 row blocks x 4 k-steps of 16 dims
    cp_async_wait<1>();
    __syncthreads();
#pragma unroll
    for (int mb = 0; mb < 2; mb++)
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            // matrices: 0 rows 0-7 dims k0..+7, 1 rows 8-15 k0, 2 rows 0-7 k0+8, 3 rows 8-15 k0+8
            const int r = wrow + mb * 16 + (lane & 15), c = kk * 2 + (lane >> 4);
            ldsm_x4(qf[mb][kk], sQa + (uint32_t)swz(r, c) * 2u);
        }
    // (Stage 2, which held Q, is refilled only after the loop's first barrier.)

    float o[2][8][4];  // O accumulators: 2 row blocks x 8 n8 tiles of head dims
#pragma unroll
    for (int mb = 0; mb < 2; mb++)
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mb][i][e] = 0.f;
    float mrow[2][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};  // running max (log2 domain)
    float lrow[2][2] = {{0.f, 0.f}, {0.f, 0.f}};  // running sum (this thread's columns only)

    int cstage = 0, lstage = 2;
    while (len0 > 0) {
        // One barrier per tile: this tile's copies (this thread's: wait_group; everyone's: the
        // barrier) are complete, and every warp is done with the previous tile's stage, which
        // is refilled right away with the tile after next.
        cp_async_wait<1>();
        __syncthreads();
        const int pos2 = lpos, len2 = load_next(lstage);
        cp_async_commit();  // always (maybe empty), so that wait_group<1> counts uniformly

        const int n0 = pos0, nv = len0;  // this tile: keys n0 .. n0+nv-1
        // (Causal: a tile past all of a warp's queries is computed and fully masked; skipping
        // it costs registers, and only the CTA's last tile or two can be one.)
        {
            const uint32_t kbase = sbase + (uint32_t)(cstage * 2 * TILE_KV) * 2u;
            const uint32_t vbase = kbase + (uint32_t)TILE_KV * 2u;

            // ---- S = Q K^T (32 x 64 per warp) ----
            float s[2][8][4];
#pragma unroll
            for (int mb = 0; mb < 2; mb++)
#pragma unroll
                for (int i = 0; i < 8; i++)
#pragma unroll
                    for (int e = 0; e < 4; e++) s[mb][i][e] = 0.f;
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
#pragma unroll
                    for (int mb = 0; mb < 2; mb++) {
                        mma_16816_bf16(s[mb][2 * np], qf[mb][kk][0], qf[mb][kk][1], qf[mb][kk][2], qf[mb][kk][3], kb[0], kb[1]);
                        mma_16816_bf16(s[mb][2 * np + 1], qf[mb][kk][0], qf[mb][kk][1], qf[mb][kk][2], qf[mb][kk][3], kb[2],
                                       kb[3]);
                    }
                }
            }

            // ---- online softmax (rows g, g+8 of each block; the quad shares a row) ----
            uint32_t pa[2][4][4];  // P as bf16 A fragments: 2 row blocks x 4 k-steps of 16 keys
#pragma unroll
            for (int mb = 0; mb < 2; mb++) {
                // ---- scale, bias, mask (log2 domain), one row block at a time ----
                if (bias != nullptr) {
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        // Row pointer once per row and tile; the columns are immediate offsets.
                        const int i = qfirst + mb * 16 + g + 8 * r;
                        const float* brow = bias + ((long long)h * Sq + min(i, Sq - 1)) * Sk + n0 + 2 * t4;
                        const int cmax = i < Sq ? nv - 2 * t4 : 0;  // columns nt * 8 + u < cmax exist
#pragma unroll
                        for (int nt = 0; nt < 8; nt++)
#pragma unroll
                            for (int u = 0; u < 2; u++) {
                                const float bv = nt * 8 + u < cmax ? __ldg(brow + nt * 8 + u) : 0.f;
                                s[mb][nt][2 * r + u] = fmaf(s[mb][nt][2 * r + u], scale_log2, bv * LOG2E);
                            }
                    }
                } else {
#pragma unroll
                    for (int nt = 0; nt < 8; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) s[mb][nt][e] *= scale_log2;
                }
                // Masking is needed on a partial tile, and (causal) where a key may exceed the
                // warp's first query.
                if (nv < BN || (causal && n0 + BN - 1 > qfirst)) {
#pragma unroll
                    for (int nt = 0; nt < 8; nt++)
#pragma unroll
                        for (int e = 0; e < 4; e++) {
                            const int i = qfirst + mb * 16 + g + (e < 2 ? 0 : 8);
                            const int cj = nt * 8 + 2 * t4 + (e & 1);
                            if (cj >= nv || (causal && n0 + cj > i)) s[mb][nt][e] = -INFINITY;
                        }
                }

                float mx[2] = {mrow[mb][0], mrow[mb][1]};
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    mx[0] = fmaxf(mx[0], fmaxf(s[mb][nt][0], s[mb][nt][1]));
                    mx[1] = fmaxf(mx[1], fmaxf(s[mb][nt][2], s[mb][nt][3]));
                }
                float alpha[2], base[2];
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                    mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
                    // A row with no valid key yet keeps max -inf: subtract 0 instead (exp2(-inf) = 0, no NaN).
                    base[r] = mx[r] == -INFINITY ? 0.f : mx[r];
                    alpha[r] = fast_exp2(mrow[mb][r] - base[r]);
                    mrow[mb][r] = mx[r];
                }
                float ls[2] = {0.f, 0.f};
#pragma unroll
                for (int nt = 0; nt < 8; nt++) {
                    const float p0 = fast_exp2(s[mb][nt][0] - base[0]);
                    const float p1 = fast_exp2(s[mb][nt][1] - base[0]);
                    const float p2 = fast_exp2(s[mb][nt][2] - base[1]);
                    const float p3 = fast_exp2(s[mb][nt][3] - base[1]);
                    ls[0] += p0 + p1;
                    ls[1] += p2 + p3;
                    // C fragment of key tile nt = half of the A fragment of k-step nt / 2.
                    pa[mb][nt >> 1][(nt & 1) * 2 + 0] = pack2<__nv_bfloat16>(p0, p1);
                    pa[mb][nt >> 1][(nt & 1) * 2 + 1] = pack2<__nv_bfloat16>(p2, p3);
                }
                lrow[mb][0] = lrow[mb][0] * alpha[0] + ls[0];
                lrow[mb][1] = lrow[mb][1] * alpha[1] + ls[1];
#pragma unroll
                for (int dt = 0; dt < 8; dt++) {
                    o[mb][dt][0] *= alpha[0];
                    o[mb][dt][1] *= alpha[0];
                    o[mb][dt][2] *= alpha[1];
                    o[mb][dt][3] *= alpha[1];
                }
            }

            // ---- O += P V ----
#pragma unroll
            for (int ks2 = 0; ks2 < 4; ks2++) {  // 16 keys per k-step
#pragma unroll
                for (int dp = 0; dp < 4; dp++) {
                    // .trans matrices: 0 keys k..k+7 dims d0..+7, 1 keys k+8.. d0, 2 keys k.. d0+8, 3 keys k+8.. d0+8
                    // -> regs 0,1 = B of dim tile 2dp, regs 2,3 = B of dim tile 2dp+1.
                    const int r = ks2 * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
                    const int c = dp * 2 + (lane >> 4);
                    uint32_t vb[4];
                    ldsm_x4_t(vb, vbase + (uint32_t)swz(r, c) * 2u);
#pragma unroll
                    for (int mb = 0; mb < 2; mb++) {
                        const uint32_t(&a)[4] = pa[mb][ks2];
                        mma_16816_bf16(o[mb][2 * dp], a[0], a[1], a[2], a[3], vb[0], vb[1]);
                        mma_16816_bf16(o[mb][2 * dp + 1], a[0], a[1], a[2], a[3], vb[2], vb[3]);
                    }
                }
            }
        }

        pos0 = pos1;
        len0 = len1;
        pos1 = pos2;
        len1 = len2;
        cstage = cstage == STAGES - 1 ? 0 : cstage + 1;
        lstage = lstage == STAGES - 1 ? 0 : lstage + 1;
    }
    cp_async_wait<0>();

    // ---- epilogue: O / rowsum, bf16, rows < Sq, each to its query segment's output ----
    const OutSegs os = OUT_MAKE(o);
#pragma unroll
    for (int mb = 0; mb < 2; mb++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l = lrow[mb][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int qi = qfirst + mb * 16 + g + r * 8;
            if (qi < Sq) {
                __nv_bfloat16* op = out_row<__nv_bfloat16>(os, qn0, qn1, qn2, b, qi) + hoff + 2 * t4;
#pragma unroll
                for (int dt = 0; dt < 8; dt++)
                    *reinterpret_cast<uint32_t*>(op + dt * 8) =
                        pack2<__nv_bfloat16>(o[mb][dt][2 * r] * inv, o[mb][dt][2 * r + 1] * inv);
            }
        }
}

// ------------------------------------------------------------------------------------------------
// attn_naive_{f32,bf16,f16}: any head dim d <= 256
// ------------------------------------------------------------------------------------------------

namespace naive {
constexpr int WARPS = tiles::NAIVE_WARPS;  // query rows per block
constexpr int DMAX = tiles::NAIVE_DMAX;
}  // namespace naive

template <typename T>
__device__ __forceinline__ void attn_naive_impl(const Segs& qs, const Segs& ks, const Segs& vs, const OutSegs& os,
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
    T* orow = out_row<T>(os, qs.n0, qs.n1, qs.n2, b, i) + hoff;
#pragma unroll
    for (int u = 0; u < DMAX / 32; u++) {
        const int c = lane + 32 * u;
        if (c < D) orow[c] = from_f<T>(o[u] * inv);
    }
}

#define ATTN_NAIVE(NAME, T)                                                                                              \
    extern "C" __global__ void __launch_bounds__(naive::WARPS * 32)                                                     \
        NAME(SEG_ARGS(q), SEG_ARGS(k), SEG_ARGS(v), OUT_ARGS(o), const float* __restrict__ bias, int H, int D, int Sq,   \
             int Sk, float scale, int causal) {                                                                         \
        attn_naive_impl<T>(SEG_MAKE(q), SEG_MAKE(k), SEG_MAKE(v), OUT_MAKE(o), bias, H, D, Sq, Sk, scale, causal);       \
    }

ATTN_NAIVE(attn_naive_f32, float)
ATTN_NAIVE(attn_naive_bf16, __nv_bfloat16)
ATTN_NAIVE(attn_naive_f16, __half)
