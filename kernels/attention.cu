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
#include "mma_frag.cuh"
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
constexpr float LOG2E = 1.4426950408889634f;
// Per warp and tile: 2 row blocks (m16) x 8 n8 tiles of keys (S) or of head dims (O), and
// 4 k-steps of 16 (head dims for Q K^T, keys for P V).
constexpr int MB = 2, NT = BN / mma::N, KS = D / mma::K;

// The shared-memory map (bytes from the dynamic base): stage s holds the K tile at k_off(s)
// and the V tile right after it; the Q tile is staged in stage 2 (K+V of one stage = 16 KiB =
// the Q tile), read into registers once before the ring's third stage is first filled. Every
// tile is [rows][64] bf16, swizzled (mma::swizzle64).
constexpr int STAGE_BYTES = 2 * TILE_KV * 2;
__host__ __device__ constexpr uint32_t k_off(int s) { return (uint32_t)(s * 2 * TILE_KV) * 2u; }
constexpr uint32_t V_IN_STAGE = TILE_KV * 2;  // the V tile's offset in a stage
constexpr uint32_t Q_OFF = k_off(2);
constexpr int SMEM_BYTES = tiles::FLASH_SMEM_BYTES;  // 48 KiB
static_assert(BM == WARPS * 32, "two m16 row blocks per warp");
static_assert(D == 64, "rows of 8 swizzled 16-B chunks (mma::swizzle64)");
static_assert(TILE_Q == 2 * TILE_KV, "Q fits one K+V stage");
static_assert(STAGES == 3 && Q_OFF + TILE_Q * 2 <= (uint32_t)SMEM_BYTES, "Q staged in the third stage");
static_assert(SMEM_BYTES == STAGES * STAGE_BYTES, "shared memory: STAGES x (K + V) bf16 tiles");
static_assert(SMEM_BYTES <= 48 * 1024, "no opt-in above the default 48 KiB");
static_assert(THREADS * 4 == BN * 8, "each thread copies 4 chunks of K and 4 of V per tile");

// Byte offset of chunk c of row r of a swizzled tile.
__device__ __forceinline__ uint32_t swz_bytes(int r, int c) { return (uint32_t)mma::swizzle64(r, c) * 2u; }
}  // namespace fa

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

// The key-tile walk of one thread: it copies rows r0, r0+16, r0+32, r0+48 (chunk lc) of every
// K and V tile. Tiles never straddle a segment boundary (of K or of V): a tile is at most BN
// rows of the current segments, so every row pointer is advanced, not searched.
struct KvWalk {
    KvSide k, v;
    int pos;  // position (over the concatenation) of the next tile to load
};

// ---- the steps of flash_attn_fwd_d64, in the order the kernel runs them ----

// Load Q: 8 chunks of 16 B per thread, once (rows may cross segments: seg_row per row); query
// rows >= Sq are zero-filled.
__device__ __forceinline__ void flash_load_q(const Segs& qs, uint32_t sQ, int tid, int m0, int b, int hoff, int Sq) {
    using namespace fa;
    const int c = tid & 7;
#pragma unroll
    for (int it = 0; it < TILE_Q / 8 / THREADS; it++) {  // 8
        const int r = (tid >> 3) + it * (THREADS / 8);
        const int i = m0 + r;
        const bool ok = i < Sq;
        const __nv_bfloat16* qp = ok ? seg_row<__nv_bfloat16>(qs, b, i) + hoff + c * 8 : (const __nv_bfloat16*)qs.p0;
        cp_async16(sQ + swz_bytes(r, c), qp, ok);
    }
}

// Load a K/V tile: issues the copies of the walk's next tile into `stage` and returns its
// length (0: no tile left). Rows past the tile are zero-filled (nothing read; src only has to
// be valid), so garbage never reaches the accumulators.
__device__ __forceinline__ int flash_load_kv(const Segs& ks, const Segs& vs, KvWalk& w, uint32_t sbase, int stage, int b,
                                             int r0, int lc, int hoff, int kend) {
    using namespace fa;
    kv_next_seg(ks, w.k, b, r0, hoff + lc * 8);
    kv_next_seg(vs, w.v, b, r0, hoff + lc * 8);
    if (w.pos >= kend || w.k.seg > 3 || w.v.seg > 3) return 0;
    const int len = min(BN, min(w.k.left, w.v.left));
    const uint32_t kst = sbase + k_off(stage);
    const uint32_t vst = kst + V_IN_STAGE;
#pragma unroll
    for (int it = 0; it < 4; it++) {
        const int r = r0 + 16 * it;
        const bool ok = r < len;
        const uint32_t off = swz_bytes(r, lc);
        cp_async16(kst + off, ok ? w.k.p + 16 * it * w.k.rs : (const __nv_bfloat16*)ks.p0, ok);
        cp_async16(vst + off, ok ? w.v.p + 16 * it * w.v.rs : (const __nv_bfloat16*)vs.p0, ok);
    }
    w.k.p += len * w.k.rs;
    w.v.p += len * w.v.rs;
    w.k.left -= len;
    w.v.left -= len;
    w.pos += len;
    return len;
}

// Q as mma A fragments: the warp's 2 row blocks x 4 k-steps of 16 head dims, read once.
__device__ __forceinline__ void flash_q_frags(uint32_t (&qf)[fa::MB][fa::KS][4], uint32_t sQ, int wrow, int lane) {
    using namespace fa;
#pragma unroll
    for (int mb = 0; mb < MB; mb++)
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
            ldsm_x4(qf[mb][kk], sQ + swz_bytes(wrow + mb * 16 + mma::a_row(lane), kk * 2 + mma::a_k8(lane)));
}

// QK: S = Q K^T for the warp's 32 query rows and the tile's 64 keys. K's [key][d] rows are the
// "col" B operand: one ldmatrix.x4 gives the B fragments of two n8 key tiles, shared by both row
// blocks (four mma per ldmatrix).
__device__ __forceinline__ void flash_qk(float (&s)[fa::MB][fa::NT][4], const uint32_t (&qf)[fa::MB][fa::KS][4],
                                         uint32_t kbase, int lane) {
    using namespace fa;
#pragma unroll
    for (int mb = 0; mb < MB; mb++)
#pragma unroll
        for (int i = 0; i < NT; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[mb][i][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
#pragma unroll
        for (int np = 0; np < NT / 2; np++) {
            uint32_t kb[4];  // regs 0, 1 = B of key tile 2np, regs 2, 3 = B of key tile 2np+1
            ldsm_x4(kb, kbase + swz_bytes(np * 16 + mma::b_row(lane), kk * 2 + mma::b_k8(lane)));
#pragma unroll
            for (int mb = 0; mb < MB; mb++) {
                mma_16816_bf16(s[mb][2 * np], qf[mb][kk][0], qf[mb][kk][1], qf[mb][kk][2], qf[mb][kk][3], kb[0], kb[1]);
                mma_16816_bf16(s[mb][2 * np + 1], qf[mb][kk][0], qf[mb][kk][1], qf[mb][kk][2], qf[mb][kk][3], kb[2], kb[3]);
            }
        }
    }
}

// Softmax, part 1: one row block's scores to the log2 domain (scale, + bias), and -inf where a
// key is past the tile (partial tile) or after the query (causal). `row0`: the block's first
// query position; keys n0 .. n0+nv-1.
__device__ __forceinline__ void flash_scale_mask(float (&s)[fa::NT][4], const float* __restrict__ bias, int h, int Sq,
                                                 int Sk, int row0, int n0, int nv, int causal, int qfirst,
                                                 float scale_log2, int g, int c0) {
    using namespace fa;
    if (bias != nullptr) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
            // Row pointer once per row and tile; the columns are immediate offsets.
            const int i = row0 + g + 8 * r;
            const float* brow = bias + ((long long)h * Sq + min(i, Sq - 1)) * Sk + n0 + c0;
            const int cmax = i < Sq ? nv - c0 : 0;  // columns nt * 8 + u < cmax exist
#pragma unroll
            for (int nt = 0; nt < NT; nt++)
#pragma unroll
                for (int u = 0; u < 2; u++) {
                    const float bv = nt * 8 + u < cmax ? __ldg(brow + nt * 8 + u) : 0.f;
                    s[nt][2 * r + u] = fmaf(s[nt][2 * r + u], scale_log2, bv * LOG2E);
                }
        }
    } else {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[nt][e] *= scale_log2;
    }
    // Masking is needed on a partial tile, and (causal) where a key may exceed the warp's first
    // query.
    if (nv < BN || (causal && n0 + BN - 1 > qfirst)) {
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int i = row0 + g + (e < 2 ? 0 : 8);
                const int cj = nt * 8 + c0 + (e & 1);
                if (cj >= nv || (causal && n0 + cj > i)) s[nt][e] = -INFINITY;
            }
    }
}

// Softmax, part 2: the online update of one row block (rows g, g+8; the quad of 4 threads that
// shares a row reduces with shfl_xor 1, 2): new running max, the probabilities P rounded to
// bf16 as A fragments of the P V mma (the C fragment of the two n8 score tiles of 16 keys is
// exactly the A fragment of that k-step), the running sum, and O rescaled by exp2(old - new max).
__device__ __forceinline__ void flash_softmax(const float (&s)[fa::NT][4], uint32_t (&pa)[fa::KS][4], float (&o)[fa::NT][4],
                                              float (&mrow)[2], float (&lrow)[2]) {
    using namespace fa;
    float mx[2] = {mrow[0], mrow[1]};
#pragma unroll
    for (int nt = 0; nt < NT; nt++) {
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
    for (int nt = 0; nt < NT; nt++) {
        const float p0 = fast_exp2(s[nt][0] - base[0]);
        const float p1 = fast_exp2(s[nt][1] - base[0]);
        const float p2 = fast_exp2(s[nt][2] - base[1]);
        const float p3 = fast_exp2(s[nt][3] - base[1]);
        ls[0] += p0 + p1;
        ls[1] += p2 + p3;
        // C fragment of key tile nt = half of the A fragment of k-step nt / 2.
        pa[nt >> 1][(nt & 1) * 2 + 0] = pack2<__nv_bfloat16>(p0, p1);
        pa[nt >> 1][(nt & 1) * 2 + 1] = pack2<__nv_bfloat16>(p2, p3);
    }
    lrow[0] = lrow[0] * alpha[0] + ls[0];
    lrow[1] = lrow[1] * alpha[1] + ls[1];
#pragma unroll
    for (int dt = 0; dt < NT; dt++) {
        o[dt][0] *= alpha[0];
        o[dt][1] *= alpha[0];
        o[dt][2] *= alpha[1];
        o[dt][3] *= alpha[1];
    }
}

// PV: O += P V. V's [key][d] rows are read with ldmatrix.trans: one ldmatrix.x4 gives the B
// fragments of two n8 tiles of head dims, shared by both row blocks.
__device__ __forceinline__ void flash_pv(float (&o)[fa::MB][fa::NT][4], const uint32_t (&pa)[fa::MB][fa::KS][4],
                                         uint32_t vbase, int lane) {
    using namespace fa;
#pragma unroll
    for (int ks2 = 0; ks2 < KS; ks2++) {  // 16 keys per k-step
#pragma unroll
        for (int dp = 0; dp < NT / 2; dp++) {
            uint32_t vb[4];  // regs 0, 1 = B of dim tile 2dp, regs 2, 3 = B of dim tile 2dp+1
            ldsm_x4_t(vb, vbase + swz_bytes(ks2 * 16 + mma::bt_row(lane), dp * 2 + mma::bt_n8(lane)));
#pragma unroll
            for (int mb = 0; mb < MB; mb++) {
                const uint32_t(&a)[4] = pa[mb][ks2];
                mma_16816_bf16(o[mb][2 * dp], a[0], a[1], a[2], a[3], vb[0], vb[1]);
                mma_16816_bf16(o[mb][2 * dp + 1], a[0], a[1], a[2], a[3], vb[2], vb[3]);
            }
        }
    }
}

// Store: O / rowsum (the quad's partial sums added), bf16, rows < Sq, each to its query
// segment's output.
__device__ __forceinline__ void flash_store(const OutSegs& os, const float (&o)[fa::MB][fa::NT][4], const float (&lrow)[fa::MB][2],
                                            int qn0, int qn1, int qn2, int b, int hoff, int qfirst, int Sq, int g,
                                            int c0) {
    using namespace fa;
#pragma unroll
    for (int mb = 0; mb < MB; mb++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float l = lrow[mb][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const float inv = l > 0.f ? 1.f / l : 0.f;
            const int qi = qfirst + mb * 16 + g + r * 8;
            if (qi < Sq) {
                __nv_bfloat16* op = out_row<__nv_bfloat16>(os, qn0, qn1, qn2, b, qi) + hoff + c0;
#pragma unroll
                for (int dt = 0; dt < NT; dt++)
                    *reinterpret_cast<uint32_t*>(op + dt * 8) =
                        pack2<__nv_bfloat16>(o[mb][dt][2 * r] * inv, o[mb][dt][2 * r + 1] * inv);
            }
        }
}

// scale_log2 = scale * log2(e). bias: f32 [H, Sq, Sk] or null. causal: 0 / 1.
extern "C" __global__ void __launch_bounds__(fa::THREADS, fa::MIN_CTAS)
    flash_attn_fwd_d64(SEG_ARGS(q), SEG_ARGS(k), SEG_ARGS(v), OUT_ARGS(o), const float* __restrict__ bias, int H, int Sq, int Sk, float scale_log2, int causal) {
    using namespace fa;
    DYNAMIC_SMEM(smem_raw);
    const uint32_t sbase = smem_u32(smem_raw);
    const uint32_t sQ = sbase + Q_OFF;

    const Segs qs = SEG_MAKE(q), ks = SEG_MAKE(k), vs = SEG_MAKE(v);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z;
    const int hoff = h * D;

    // Keys this CTA needs: all, or (causal) those j <= the CTA's last valid query.
    const int kend = causal ? min(Sk, min(m0 + BM, Sq)) : Sk;

    // Prologue: group 0 = Q + tile 0 (stage 0), group 1 = tile 1 (stage 1).
    flash_load_q(qs, sQ, tid, m0, b, hoff, Sq);
    const int lc = tid & 7, r0 = tid >> 3;
    KvWalk w{{nullptr, 0, 0, -1}, {nullptr, 0, 0, -1}, 0};
    int pos0 = w.pos, len0 = flash_load_kv(ks, vs, w, sbase, 0, b, r0, lc, hoff, kend);
    cp_async_commit();
    int pos1 = w.pos, len1 = flash_load_kv(ks, vs, w, sbase, 1, b, r0, lc, hoff, kend);
    cp_async_commit();

    // This thread's (row, column) in every C fragment: rows g and g+8 of each of the warp's two
    // m16 blocks, columns c0, c0+1 of every n8 tile.
    const int g = mma::c_row0(lane), c0 = mma::c_col0(lane);
    const int wrow = warp * 32;
    const int qfirst = m0 + wrow;  // the warp's first query position
    uint32_t qf[MB][KS][4];  // A fragments of Q
    cp_async_wait<1>();
    __syncthreads();
    flash_q_frags(qf, sQ, wrow, lane);
    // (Stage 2, which held Q, is refilled only after the loop's first barrier.)

    float o[MB][NT][4];  // O accumulators: 2 row blocks x 8 n8 tiles of head dims
#pragma unroll
    for (int mb = 0; mb < MB; mb++)
#pragma unroll
        for (int i = 0; i < NT; i++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[mb][i][e] = 0.f;
    float mrow[MB][2] = {{-INFINITY, -INFINITY}, {-INFINITY, -INFINITY}};  // running max (log2 domain)
    float lrow[MB][2] = {{0.f, 0.f}, {0.f, 0.f}};  // running sum (this thread's columns only)

    int cstage = 0, lstage = 2;
    while (len0 > 0) {
        // One barrier per tile: this tile's copies (this thread's: wait_group; everyone's: the
        // barrier) are complete, and every warp is done with the previous tile's stage, which
        // is refilled right away with the tile after next.
        cp_async_wait<1>();
        __syncthreads();
        const int pos2 = w.pos, len2 = flash_load_kv(ks, vs, w, sbase, lstage, b, r0, lc, hoff, kend);
        cp_async_commit();  // always (maybe empty), so that wait_group<1> counts uniformly

        // This tile: keys pos0 .. pos0+len0-1. (Causal: a tile past all of a warp's queries is
        // computed and fully masked; skipping it costs registers, and only the CTA's last tile
        // or two can be one.)
        const uint32_t kbase = sbase + k_off(cstage);
        const uint32_t vbase = kbase + V_IN_STAGE;
        float s[MB][NT][4];
        flash_qk(s, qf, kbase, lane);
        uint32_t pa[MB][KS][4];  // P as bf16 A fragments: 2 row blocks x 4 k-steps of 16 keys
#pragma unroll
        for (int mb = 0; mb < MB; mb++) {
            flash_scale_mask(s[mb], bias, h, Sq, Sk, qfirst + mb * 16, pos0, len0, causal, qfirst, scale_log2, g, c0);
            flash_softmax(s[mb], pa[mb], o[mb], mrow[mb], lrow[mb]);
        }
        flash_pv(o, pa, vbase, lane);

        pos0 = pos1;
        len0 = len1;
        pos1 = pos2;
        len1 = len2;
        cstage = cstage == STAGES - 1 ? 0 : cstage + 1;
        lstage = lstage == STAGES - 1 ? 0 : lstage + 1;
    }
    cp_async_wait<0>();

    flash_store(OUT_MAKE(o), o, lrow, qn0, qn1, qn2, b, hoff, qfirst, Sq, g, c0);
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
