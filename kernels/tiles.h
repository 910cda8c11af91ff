// Launch geometry shared by the kernels and their Rust launchers: block sizes, tile sizes and
// dynamic shared memory. This file is the one place these numbers are written. The kernels
// include it (their namespaces alias these names); build.rs reads every
// `constexpr int NAME = EXPR;` line below (EXPR: integers, earlier names, + - * / and
// parentheses) into `runtime::kernels::tiles` (`pub const NAME: u32`, the trailing comment as its
// doc), which the launchers in src/ops use. Nothing else may go in the namespace: build.rs
// fails on a line it cannot read.
#pragma once

namespace tiles {
// ---- flash_attn_fwd_d64 (attention.cu) ----
constexpr int FLASH_D = 64;  // head dim
constexpr int FLASH_BM = 128;  // query rows per CTA (4 warps x 32)
constexpr int FLASH_BN = 64;  // keys per tile (at most; the last tile of a segment is partial)
constexpr int FLASH_WARPS = 4;  // warps per CTA, 32 query rows each
constexpr int FLASH_THREADS = FLASH_WARPS * 32;  // threads per CTA
constexpr int FLASH_STAGES = 3;  // K/V tiles in flight (cp.async ring)
constexpr int FLASH_SMEM_BYTES = FLASH_STAGES * 2 * FLASH_BN * FLASH_D * 2;  // dynamic shared memory: STAGES x (K + V) bf16 tiles (Q reuses stage 2)

// ---- attn_naive_{f32,bf16,f16} (attention.cu) ----
constexpr int NAIVE_WARPS = 4;  // query rows per block (one warp each)
constexpr int NAIVE_DMAX = 256;  // largest head dim (a query row in shared memory)

// ---- flash_attn_hopper_d64 (attention_hopper.cu) ----
constexpr int HOPPER_D = 64;  // head dim
constexpr int HOPPER_BM = 128;  // query rows per CTA (2 consumer warpgroups x 64) and rows per TMA box
constexpr int HOPPER_BN = 128;  // keys per tile
constexpr int HOPPER_STAGES = 3;  // K/V ring depth
constexpr int HOPPER_THREADS = 384;  // 3 warpgroups: a producer and two consumers
constexpr int HOPPER_TILE_BYTES = HOPPER_BM * HOPPER_D * 2;  // one TMA box: 128 rows x 128 B (Q, K or V tile)
constexpr int HOPPER_NBARS = 1 + 4 * HOPPER_STAGES;  // mbarriers: q full; k full, v full, k empty, v empty per stage
constexpr int HOPPER_SMEM_BYTES = HOPPER_TILE_BYTES * (1 + 2 * HOPPER_STAGES) + HOPPER_NBARS * 8 + 1024;  // dynamic shared memory: Q, the K and V rings, the mbarriers, 1 KiB to align the base to 1024 B

// ---- w8a16_mma_* (gemm_int8.cu) ----
constexpr int W8_BM = 128;  // rows of X per CTA
constexpr int W8_BN = 128;  // output columns per CTA
constexpr int W8_BK = 32;  // k per stage
constexpr int W8_STAGES = 3;  // cp.async stages
constexpr int W8_THREADS = 256;  // threads per CTA (8 warps: 2 along M x 4 along N)
constexpr int W8_PAD = 8;  // bf16/f16 pad of a shared-memory row (80 B pitch: ldmatrix conflict-free)
constexpr int W8_SMEM_BYTES = W8_STAGES * W8_BM * (W8_BK + W8_PAD) * 2 + W8_STAGES * W8_BN * W8_BK + W8_BN * (W8_BK + W8_PAD) * 2;  // dynamic shared memory, per-channel scales: A stages, int8 stages, the converted B tile
constexpr int W8_GROUP_SMEM_BYTES = W8_SMEM_BYTES + W8_STAGES * W8_BN * (W8_BK / 8) * 4;  // dynamic shared memory, group-wise scales: + the scale stages

// ---- w8a16_gemv_* (gemm_int8.cu) ----
constexpr int W8_GEMV_MAX_M = 16;  // largest M (rows of X) the GEMV kernel takes
constexpr int W8_GEMV_WARPS = 8;  // output columns per block (one warp each)
constexpr int W8_GEMV_THREADS = W8_GEMV_WARPS * 32;  // threads per block

// ---- conv_bf16_mma (conv3d.cu) ----
constexpr int CONV_BM = 64;  // output channels per CTA
constexpr int CONV_BN = 128;  // output pixels per CTA
constexpr int CONV_BK = 32;  // k (taps x input channels) per stage
constexpr int CONV_LDA = 40;  // bf16 per A row in shared memory (80 B pitch)
constexpr int CONV_LDB = 40;  // f32 per B row in shared memory (160 B pitch)
constexpr int CONV_STAGES = 3;  // cp.async stages
constexpr int CONV_SMEM_BYTES = CONV_STAGES * (CONV_BM * CONV_LDA * 2 + CONV_BN * CONV_LDB * 4);  // dynamic shared memory: STAGES x (A + B)
}  // namespace tiles
