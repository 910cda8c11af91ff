// The mma.sync m16n8k16 fragment layouts and the ldmatrix.x4 address walks of the tensor-core
// kernels (attention.cu's flash_attn_fwd_d64, gemm_int8.cu's w8a16_mma_*), written once: which
// (row, column) of a tile each register of a lane holds, and which row and 8-element column
// chunk each lane addresses for ldmatrix. The instructions themselves are in ptx.cuh.
//
// Lane l of a warp is (g, t) = (l / 4, l % 4). Each 32-bit register holds two 16-bit values, the
// lower column (or k) index in the low half.
#pragma once
#include "common.cuh"

namespace mma {

constexpr int M = 16, N = 8, K = 16;  // one mma.sync.m16n8k16

// A fragment (16 x 16, row-major): a0 (row g, k 2t..2t+1), a1 (row g+8, same k),
// a2 (row g, k 2t+8..2t+9), a3 (row g+8, k 2t+8..).
using FragA = uint32_t[4];
// B fragment (16 x 8, "col": stored as [n][k]): b0 (k 2t..2t+1, column g), b1 (k 2t+8.., column g).
using FragB = uint32_t[2];
// C/D fragment (16 x 8, f32): c0, c1 (row g, columns 2t, 2t+1), c2, c3 (row g+8, same columns).
using FragC = float[4];

// The (row, column) of element e (0..3) of a lane's C fragment.
__device__ __forceinline__ int c_row(int lane, int e) { return (lane >> 2) + ((e >> 1) << 3); }
__device__ __forceinline__ int c_col(int lane, int e) { return ((lane & 3) << 1) + (e & 1); }
// The row g and the first column 2t of a lane's C fragment (c0; c1 is the next column, c2 and
// c3 the same columns 8 rows down).
__device__ __forceinline__ int c_row0(int lane) { return lane >> 2; }
__device__ __forceinline__ int c_col0(int lane) { return (lane & 3) << 1; }

// ldmatrix.x4 walks: lane l gives the address of row (l % 8) of matrix (l / 8); each function
// pair below says which tile row and which 8-element chunk of k (or n) that is, for one use.

// A (16 x 16) from a row-major [m][k] tile: matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7),
// (rows 0-7, k 8-15), (rows 8-15, k 8-15) = registers a0..a3.
__device__ __forceinline__ int a_row(int lane) { return lane & 15; }
__device__ __forceinline__ int a_k8(int lane) { return lane >> 4; }

// Two B fragments (n8 tiles j, j+1) from a [n][k] tile (the "col" operand): matrices
// (n 0-7, k 0-7) = b0 of j, (n 0-7, k 8-15) = b1 of j, (n 8-15, k 0-7) = b0 of j+1,
// (n 8-15, k 8-15) = b1 of j+1: registers 0, 1 = tile j, 2, 3 = tile j+1.
__device__ __forceinline__ int b_row(int lane) { return (lane & 7) + ((lane >> 4) << 3); }
__device__ __forceinline__ int b_k8(int lane) { return (lane >> 3) & 1; }

// Two B fragments (n8 tiles j, j+1) from a [k][n] tile with ldmatrix.trans: matrices
// (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15): registers 0, 1 = tile j,
// 2, 3 = tile j+1.
__device__ __forceinline__ int bt_row(int lane) { return (lane & 7) + (((lane >> 3) & 1) << 3); }
__device__ __forceinline__ int bt_n8(int lane) { return lane >> 4; }

// A [rows][64] b16 tile whose rows are 8 chunks of 16 B, XOR-swizzled (chunk c of row r stored
// at chunk c ^ (r % 8)): the 16-B stores and the ldmatrix loads of 8 consecutive rows hit 8
// different bank groups. Element offset of chunk c (0..7) of row r.
__device__ __forceinline__ int swizzle64(int r, int c) { return r * 64 + ((c ^ (r & 7)) << 3); }

}  // namespace mma
