// flash_attn_hopper_d64: FlashAttention-3-style attention forward for Hopper (sm_90a), bf16,
// head dim 64. Same semantics as flash_attn_fwd_d64 (kernels/attention.cu):
//   O = softmax(scale * Q K^T + bias) V
// over segment lists (the MMDiT's [video; text] stays two tensors), Q/K/V segments [B, S_i, H*64]
// with their own base pointer, row stride and batch stride, positions (causal mask, bias
// rows/columns) counted over the concatenation. Output: one per query segment (OUT_ARGS,
// kernels/attn_out.cuh: base pointer, row and batch stride per segment; a query tile, which never
// straddles segments, writes its rows to its segment's output); bias f32 [H, Sq, Sk] or null (broadcast over the batch); causal: key j masked for query i when
// j > i. Built for sm_90a only (build.rs: the file uses wgmma); launcher src/ops/attention_hopper.rs.
//
// Design
//   * CTA = 3 warpgroups (384 threads), one CTA per SM (__launch_bounds__(384, 1): 168 registers
//     at launch). Warpgroup 0 is the producer: it drops to PRODUCER_REGS registers (setmaxnreg.dec)
//     and one elected thread of its warp 0 issues every bulk tensor copy (TMA). Warpgroups 1 and 2
//     are consumers (setmaxnreg.inc to CONSUMER_REGS; 24 + 2 x 240 = 504 <= 512 per thread-slot,
//     168 x 3 = 504 as launched): each owns 64 query rows (wgmma M = 64), BM = 128 rows per CTA.
//   * Grid (query tiles, H, B). Query tiles never straddle segments: tile x of the grid is tile t
//     of query segment i, local rows [128 t, min(128 (t + 1), n_i)); key tiles of BN = 128 rows
//     likewise per key segment (in segment order, which is position order). Rows past a segment's
//     end are zero-filled by the TMA (out of bounds of that segment's tensor map) and masked to
//     -inf; the TMA still completes the whole box's bytes, so expect_tx is always one box.
//   * One CUtensorMap per segment per operand (12 __grid_constant__ parameters), made on the host
//     (cuTensorMapEncodeTiled): bf16, rank 3 {H*64, rows, B}, strides {row, batch} bytes, box
//     {64, 128, 1}, SWIZZLE_128B. A box is one head's 128 rows of 128 bytes = 16 KiB, written in
//     the SW128 layout the wgmma descriptors read (tiles 1024-byte aligned).
//   * Shared memory: Q (128 x 64, loaded once), a ring of STAGES K tiles and STAGES V tiles, each
//     K and V stage with a full mbarrier (count 1 + transaction bytes, the producer's
//     arrive.expect_tx) and an empty mbarrier (count 256: every consumer thread arrives once it
//     no longer reads the stage). K and V have separate barriers so S = Q K^T may start before V
//     has landed. Use u of stage s waits for phase parity u & 1 (consumers on full) and
//     (u & 1) ^ 1 (producer on empty: a fresh barrier counts as released).
//   * S = Q K^T: wgmma m64n128k16, A = Q (smem, K-major SW128), B = the K tile ([key][d], K-major
//     SW128); 4 k-steps over d = 64 (start address + 32 bytes each; SBO = 1024, 8 rows of 128 B).
//     O += P V: wgmma m64n64k16 with P from registers (the C fragment of S packed to bf16 is the
//     A fragment, exactly as in the FA2 kernel) and B = the V tile ([key][d]: MN-major SW128,
//     16 keys = two 8-key groups of 1024 B per k-step; SBO = 1024, LBO unused for N = 64).
//   * Online softmax in the exp2 domain with the scale folded in: p = exp2(s * scale_log2 - m) is
//     one FFMA + EX2 per element (with a bias the scores are first made s * scale_log2 +
//     bias * log2 e, then p = exp2(s' - m)). Row max / sum over the quad (shfl_xor 1, 2); the row
//     sum stays per thread until the epilogue. Needs scale > 0 (the launcher checks).
//   * Overlap within a warpgroup: iteration j issues S_j = Q K_j^T and then O += P_{j-1} V_{j-1},
//     waits for S_j only (wait_group 1), does the softmax of S_j while P_{j-1} V_{j-1} runs, then
//     waits for it, releases V_{j-1}, rescales O and packs P_j (the registers of P_{j-1} are
//     read by the running wgmma until then).
//   * Ping-pong between the two consumer warpgroups (named barriers 1 and 2, 256 threads): a
//     warpgroup waits on its own barrier before issuing its GEMMs and arrives on the other's
//     after, so one warpgroup's softmax overlaps the other's GEMMs. Warpgroup 2 arrives once at
//     the start (warpgroup 1 goes first) and skips its last arrival, so the counts balance.
//   * Epilogue: O / rowsum from registers, bf16, plain stores of the valid rows into the output
//     of the tile's query segment (its own pointer, row and batch stride).
//
// Emulation: tests/emu defines every hopper.cuh entry point with the PTX semantics (wgmma results
// invisible before the wait, mbarrier phases and tx counts, TMA swizzle and OOB fill).
#include "common.cuh"
#include "attn_out.cuh"
#include "hopper.cuh"
#include "tiles.h"

namespace fa3 {
// The launch geometry is kernels/tiles.h's (the launcher in src/ops/attention/hopper.rs reads
// the same numbers through runtime::kernels::tiles); the shared-memory map is this file's.
constexpr int D = tiles::HOPPER_D;            // head dim
constexpr int BM = tiles::HOPPER_BM;          // query rows per CTA (2 consumer warpgroups x 64)
constexpr int BN = tiles::HOPPER_BN;          // keys per tile
constexpr int STAGES = tiles::HOPPER_STAGES;  // K/V ring depth
constexpr int THREADS = tiles::HOPPER_THREADS;  // 3 warpgroups
constexpr int TILE_BYTES = tiles::HOPPER_TILE_BYTES;  // one TMA box: 128 rows x 128 B (Q, K or V tile)
constexpr int Q_OFF = 0;
constexpr int K_OFF = Q_OFF + TILE_BYTES;
constexpr int V_OFF = K_OFF + STAGES * TILE_BYTES;
constexpr int BAR_OFF = V_OFF + STAGES * TILE_BYTES;
constexpr int NBARS = tiles::HOPPER_NBARS;  // q full; k full, v full, k empty, v empty per stage
constexpr int SMEM_BYTES = BAR_OFF + NBARS * 8 + 1024;  // + slack to align the base to 1024
constexpr int PRODUCER_REGS = 24;
constexpr int CONSUMER_REGS = 240;
constexpr int CONSUMERS = 256;            // consumer threads (empty barrier count)
// Registers per thread at launch: what __launch_bounds__(THREADS, 1) lets ptxas use (65536 per
// SM, a multiple of 8; ptxas -v reports 168, and the gate fails on its "setmaxnreg ignored").
// setmaxnreg only moves registers within the CTA's pool of LAUNCH_REGS x THREADS: a split that
// does not fit makes setmaxnreg.inc wait forever (the emulator reports it as a deadlock).
constexpr int LAUNCH_REGS = 65536 / THREADS / 8 * 8;
static_assert(LAUNCH_REGS == 168 && LAUNCH_REGS * THREADS <= 65536, "registers at launch: 168 x 384");
static_assert(PRODUCER_REGS * 128 + CONSUMER_REGS * CONSUMERS <= LAUNCH_REGS * THREADS,
              "the setmaxnreg split (producer x 128 + consumers x 256) must fit the CTA's registers at launch");
static_assert(THREADS == 128 + CONSUMERS, "one producer warpgroup and the consumers");
constexpr float LOG2E = 1.4426950408889634f;
static_assert(BM == 2 * 64 && BN == 128, "two m64 consumers, n128 score tiles");
static_assert(SMEM_BYTES <= 227 * 1024, "shared memory per CTA");
static_assert(SMEM_BYTES == tiles::HOPPER_SMEM_BYTES, "the map above is what tiles.h gives the launcher");
static_assert(TILE_BYTES == 128 * D * 2, "a TMA box is 128 rows of D bf16");
}  // namespace fa3

// Tile `it` of a list of up to 4 segments of n[0..3] rows, `bs` rows per tile, tiles never
// straddling two segments: its segment, first local row, first position (over the
// concatenation) and number of valid rows. `it` must be below the total tile count.
struct SegTile {
    int seg, row0, pos0, rows;
};
__device__ __forceinline__ SegTile seg_tile(int it, const int (&n)[4], int bs) {
    int pos = 0;
    SegTile t{3, 0, 0, 0};
#pragma unroll
    for (int s = 0; s < 4; s++) {
        const int nt = (n[s] + bs - 1) / bs;
        if (it >= 0 && it < nt) {
            t = SegTile{s, it * bs, pos + it * bs, min(bs, n[s] - it * bs)};
        }
        it -= nt;
        pos += n[s];
    }
    return t;
}

__device__ __forceinline__ const TmaDesc* pick_map(int s, const TmaDesc& m0, const TmaDesc& m1, const TmaDesc& m2,
                                                   const TmaDesc& m3) {
    return s == 0 ? &m0 : s == 1 ? &m1 : s == 2 ? &m2 : &m3;
}

__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
    while (!mbar_try_wait(bar, parity)) {
    }
}

// scale_log2 = scale * log2(e) (> 0). bias: f32 [H, Sq, Sk] or null. causal: 0 / 1.
// qn*/kn*: rows of the query / key segments (V has the key segments' lengths); 0 = unused.
extern "C" __global__ void __launch_bounds__(fa3::THREADS, 1)
    flash_attn_hopper_d64(const __grid_constant__ TmaDesc tq0, const __grid_constant__ TmaDesc tq1,
                          const __grid_constant__ TmaDesc tq2, const __grid_constant__ TmaDesc tq3,
                          const __grid_constant__ TmaDesc tk0, const __grid_constant__ TmaDesc tk1,
                          const __grid_constant__ TmaDesc tk2, const __grid_constant__ TmaDesc tk3,
                          const __grid_constant__ TmaDesc tv0, const __grid_constant__ TmaDesc tv1,
                          const __grid_constant__ TmaDesc tv2, const __grid_constant__ TmaDesc tv3, int qn0,
                          int qn1, int qn2, int qn3, int kn0, int kn1, int kn2, int kn3,
                          OUT_ARGS(o), const float* __restrict__ bias, int H, int Sq, int Sk,
                          float scale_log2, int causal) {
    using namespace fa3;
    DYNAMIC_SMEM(smem_raw);
    const uint32_t raw = smem_u32(smem_raw);
    const uint32_t base = (raw + 1023u) & ~1023u;
    const uint32_t sQ = base + Q_OFF, sK = base + K_OFF, sV = base + V_OFF, bars = base + BAR_OFF;
    const uint32_t qfull = bars;
    auto kfull = [&](int s) { return bars + 8u * (uint32_t)(1 + s); };
    auto vfull = [&](int s) { return bars + 8u * (uint32_t)(1 + STAGES + s); };
    auto kempty = [&](int s) { return bars + 8u * (uint32_t)(1 + 2 * STAGES + s); };
    auto vempty = [&](int s) { return bars + 8u * (uint32_t)(1 + 3 * STAGES + s); };

    const int tid = threadIdx.x;
    const int wg = __shfl_sync(0xffffffffu, tid / 128, 0);  // warp-uniform warpgroup index
    const int h = blockIdx.y, b = blockIdx.z;
    const int qn[4] = {qn0, qn1, qn2, qn3};
    const int kn[4] = {kn0, kn1, kn2, kn3};
    const SegTile qt = seg_tile(blockIdx.x, qn, BM);

    // Key tiles this CTA needs: all, or (causal) those starting at or before its last query.
    int ntiles = 0;
    {
        const int qlast = qt.pos0 + qt.rows - 1;
        int pos = 0;
#pragma unroll
        for (int s = 0; s < 4; s++) {
            const int nt = (kn[s] + BN - 1) / BN;
            int use = nt;
            if (causal) use = qlast < pos ? 0 : min(nt, (qlast - pos) / BN + 1);
            ntiles += use;
            pos += kn[s];
        }
    }

    if (tid == 0) {
        mbar_init(qfull, 1);
#pragma unroll
        for (int s = 0; s < STAGES; s++) {
            mbar_init(kfull(s), 1);
            mbar_init(vfull(s), 1);
            mbar_init(kempty(s), CONSUMERS);
            mbar_init(vempty(s), CONSUMERS);
        }
        mbar_fence_init();
    }
    __syncthreads();

    if (wg == 0) {
        // ---------------- producer ----------------
        setmaxnreg_dec<PRODUCER_REGS>();
        if (tid < 32 && elect_one()) {
            mbar_arrive_expect_tx(qfull, TILE_BYTES);
            tma_load_3d(sQ, pick_map(qt.seg, tq0, tq1, tq2, tq3), qfull, h * D, qt.row0, b);
            for (int it = 0; it < ntiles; it++) {
                const int s = it % STAGES;
                const uint32_t ph = (uint32_t)(it / STAGES) & 1u;
                const SegTile kt = seg_tile(it, kn, BN);
                mbar_wait(kempty(s), ph ^ 1u);
                mbar_arrive_expect_tx(kfull(s), TILE_BYTES);
                tma_load_3d(sK + (uint32_t)(s * TILE_BYTES), pick_map(kt.seg, tk0, tk1, tk2, tk3), kfull(s), h * D,
                            kt.row0, b);
                mbar_wait(vempty(s), ph ^ 1u);
                mbar_arrive_expect_tx(vfull(s), TILE_BYTES);
                tma_load_3d(sV + (uint32_t)(s * TILE_BYTES), pick_map(kt.seg, tv0, tv1, tv2, tv3), vfull(s), h * D,
                            kt.row0, b);
            }
        }
        return;
    }

    // ---------------- consumers ----------------
    setmaxnreg_inc<CONSUMER_REGS>();
    const int cw = wg - 1;  // 0 or 1: query rows 64 cw .. 64 cw + 63 of the CTA tile
    const int lane = tid & 31, wq = (tid >> 5) & 3;
    const int g = lane >> 2, t4 = lane & 3;
    const int r0 = cw * 64 + wq * 16 + g;  // local rows r0 and r0 + 8
    const int qi0 = qt.pos0 + r0, qi1 = qi0 + 8;
    const int wmin = qt.pos0 + cw * 64 + wq * 16;  // the warp's first query position
    const uint32_t sQw = sQ + (uint32_t)(cw * 64 * 128);
    const int my_bar = 1 + cw, other_bar = 2 - cw;
    const float sc = bias != nullptr ? 1.f : scale_log2;  // the factor of the exp2 FFMA

    if (cw == 1) named_bar_arrive(1, CONSUMERS);  // consumer 0 issues first

    float o[32];
#pragma unroll
    for (int i = 0; i < 32; i++) o[i] = 0.f;
    float s[64];
    uint32_t p[8][4];
    float mrow[2] = {-INFINITY, -INFINITY};  // running max of s * scale_log2 (+ bias log2 e)
    float lrow[2] = {0.f, 0.f};              // running sum, this thread's columns only
    float alpha[2] = {1.f, 1.f};

    // Register pins (hopper.cuh, wgmma_fence_operand): S, O and P before each wgmma_fence and after
    // the wait that covers their wgmmas, as CUTLASS / FA3 do.
    auto issue_s = [&](int st) {
        const uint32_t kb = sK + (uint32_t)(st * TILE_BYTES);
        wgmma_fence_operand(s);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            wgmma_m64n128k16_ss<0>(s, wgmma_desc(sQw + 32u * kk, 16, 1024, WGMMA_SW_128),
                                   wgmma_desc(kb + 32u * kk, 16, 1024, WGMMA_SW_128), kk > 0 ? 1 : 0);
        }
        wgmma_commit();
    };
    auto issue_pv = [&](int st) {
        const uint32_t vb = sV + (uint32_t)(st * TILE_BYTES);
#pragma unroll
        for (int ks = 0; ks < 8; ks++) {
            wgmma_m64n64k16_rs<1>(o, p[ks], wgmma_desc(vb + 2048u * ks, 1024, 1024, WGMMA_SW_128), 1);
        }
        wgmma_commit();
    };
    // Softmax of the score tile in s (tile kt): s becomes the unnormalised probabilities, the
    // running max and sum are updated, alpha is the factor for O.
    auto softmax = [&](const SegTile& kt) {
        if (bias != nullptr) {
#pragma unroll
            for (int nt = 0; nt < 16; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = e < 2 ? qi0 : qi1;
                    const int jl = nt * 8 + 2 * t4 + (e & 1);
                    const int j = kt.pos0 + jl;
                    float bv = 0.f;
                    if (i < Sq && jl < kt.rows) bv = __ldg(bias + ((long long)h * Sq + i) * Sk + j);
                    s[4 * nt + e] = fmaf(s[4 * nt + e], scale_log2, bv * LOG2E);
                }
        }
        const bool need_mask = kt.rows < BN || (causal && kt.pos0 + BN - 1 > wmin);
        if (need_mask) {
#pragma unroll
            for (int nt = 0; nt < 16; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int i = e < 2 ? qi0 : qi1;
                    const int jl = nt * 8 + 2 * t4 + (e & 1);
                    if (jl >= kt.rows || (causal && kt.pos0 + jl > i)) s[4 * nt + e] = -INFINITY;
                }
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int nt = 0; nt < 16; nt++) {
            mx[0] = fmaxf(mx[0], fmaxf(s[4 * nt + 0], s[4 * nt + 1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[4 * nt + 2], s[4 * nt + 3]));
        }
        float nb[2];  // -(the new max), 0 for a row with no valid key yet
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            const float mnew = fmaxf(mrow[r], mx[r] * sc);
            const float basev = mnew == -INFINITY ? 0.f : mnew;
            alpha[r] = fast_exp2(mrow[r] - basev);
            mrow[r] = mnew;
            nb[r] = -basev;
        }
        float ls[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < 16; nt++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float v = fast_exp2(fmaf(s[4 * nt + e], sc, nb[e >> 1]));
                s[4 * nt + e] = v;
                ls[e >> 1] += v;
            }
        }
        lrow[0] = lrow[0] * alpha[0] + ls[0];
        lrow[1] = lrow[1] * alpha[1] + ls[1];
    };
    // O *= alpha, then P (bf16 A fragments) from s.
    auto rescale_and_pack = [&]() {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            o[4 * j + 0] *= alpha[0];
            o[4 * j + 1] *= alpha[0];
            o[4 * j + 2] *= alpha[1];
            o[4 * j + 3] *= alpha[1];
        }
#pragma unroll
        for (int ks = 0; ks < 8; ks++) {
            p[ks][0] = pack2<__nv_bfloat16>(s[8 * ks + 0], s[8 * ks + 1]);
            p[ks][1] = pack2<__nv_bfloat16>(s[8 * ks + 2], s[8 * ks + 3]);
            p[ks][2] = pack2<__nv_bfloat16>(s[8 * ks + 4], s[8 * ks + 5]);
            p[ks][3] = pack2<__nv_bfloat16>(s[8 * ks + 6], s[8 * ks + 7]);
        }
    };

    mbar_wait(qfull, 0);

    // Tile 0: S_0 only.
    mbar_wait(kfull(0), 0);
    named_bar_sync(my_bar, CONSUMERS);
    issue_s(0);
    named_bar_arrive(other_bar, CONSUMERS);
    wgmma_wait<0>();
    wgmma_fence_operand(s);
    mbar_arrive(kempty(0));
    softmax(seg_tile(0, kn, BN));
    rescale_and_pack();

    for (int it = 1; it < ntiles; it++) {
        const int st = it % STAGES, sp = (it - 1) % STAGES;
        mbar_wait(kfull(st), (uint32_t)(it / STAGES) & 1u);
        named_bar_sync(my_bar, CONSUMERS);
        issue_s(st);
        mbar_wait(vfull(sp), (uint32_t)((it - 1) / STAGES) & 1u);
        wgmma_fence_operand(o);
        wgmma_fence_operand(p);
        wgmma_fence();  // the wait loop above is a branch: fence again before the register-A wgmma
        issue_pv(sp);
        named_bar_arrive(other_bar, CONSUMERS);
        wgmma_wait<1>();  // S_it is done (P_{it-1} V_{it-1} may still run)
        wgmma_fence_operand(s);
        mbar_arrive(kempty(st));
        softmax(seg_tile(it, kn, BN));
        wgmma_wait<0>();
        wgmma_fence_operand(o);
        wgmma_fence_operand(p);  // P_{it-1} stays in its registers until here; rewritten below
        mbar_arrive(vempty(sp));
        rescale_and_pack();
    }

    // The last P V.
    {
        const int sl = (ntiles - 1) % STAGES;
        mbar_wait(vfull(sl), (uint32_t)((ntiles - 1) / STAGES) & 1u);
        named_bar_sync(my_bar, CONSUMERS);
        wgmma_fence_operand(o);
        wgmma_fence_operand(p);
        wgmma_fence();
        issue_pv(sl);
        if (cw == 0) named_bar_arrive(other_bar, CONSUMERS);
        wgmma_wait<0>();
        wgmma_fence_operand(o);
        wgmma_fence_operand(p);
        mbar_arrive(vempty(sl));
    }

    // ---- epilogue: O / rowsum, bf16, valid rows only, to the query segment's output ----
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        float l = lrow[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        inv[r] = l > 0.f ? 1.f / l : 0.f;
    }
    const OutSegs os = OUT_MAKE(o);
    if (r0 < qt.rows) {
        __nv_bfloat16* op = out_seg_row<__nv_bfloat16>(os, qt.seg, b, qt.row0 + r0) + h * D + 2 * t4;
#pragma unroll
        for (int j = 0; j < 8; j++)
            *reinterpret_cast<uint32_t*>(op + j * 8) = pack2<__nv_bfloat16>(o[4 * j] * inv[0], o[4 * j + 1] * inv[0]);
    }
    if (r0 + 8 < qt.rows) {
        __nv_bfloat16* op = out_seg_row<__nv_bfloat16>(os, qt.seg, b, qt.row0 + r0 + 8) + h * D + 2 * t4;
#pragma unroll
        for (int j = 0; j < 8; j++)
            *reinterpret_cast<uint32_t*>(op + j * 8) =
                pack2<__nv_bfloat16>(o[4 * j + 2] * inv[1], o[4 * j + 3] * inv[1]);
    }
}
