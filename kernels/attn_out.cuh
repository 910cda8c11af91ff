// The outputs of the attention kernels (kernels/attention.cu, kernels/attention_hopper.cu): one
// output per query segment. Query segment i (its n_i rows over the concatenation) is written to
// output segment i: base pointer, row stride and batch stride in elements (last dim H*d dense).
// The MMDiT block passes two separate contiguous tensors [B, n_i, H*d] (video, text), so the
// output projections read them in place; the single-output attention() passes views of one
// [B, Sq, H*d] tensor (row stride H*d, batch stride Sq*H*d, base offset by the rows before).
// Unused entries (query segment length 0) are never dereferenced.
#pragma once
#include "common.cuh"

#define OUT_ARGS(X)                                                                                                   \
    void *X##p0, void *X##p1, void *X##p2, void *X##p3, long long X##rs0, long long X##rs1, long long X##rs2,          \
        long long X##rs3, long long X##bs0, long long X##bs1, long long X##bs2, long long X##bs3
#define OUT_MAKE(X) \
    OutSegs { X##p0, X##p1, X##p2, X##p3, X##rs0, X##rs1, X##rs2, X##rs3, X##bs0, X##bs1, X##bs2, X##bs3 }

struct OutSegs {
    void *p0, *p1, *p2, *p3;
    long long rs0, rs1, rs2, rs3;
    long long bs0, bs1, bs2, bs3;
};

// Output segment i (0..3): row `r` (local to the segment) of batch b.
template <typename T>
__device__ __forceinline__ T* out_seg_row(const OutSegs& o, int i, int b, int r) {
    void* p = i == 0 ? o.p0 : i == 1 ? o.p1 : i == 2 ? o.p2 : o.p3;
    const long long rs = i == 0 ? o.rs0 : i == 1 ? o.rs1 : i == 2 ? o.rs2 : o.rs3;
    const long long bs = i == 0 ? o.bs0 : i == 1 ? o.bs1 : i == 2 ? o.bs2 : o.bs3;
    return reinterpret_cast<T*>(p) + (long long)b * bs + (long long)r * rs;
}

// The output row of query position i (over the concatenation of query segments of n0..n3 rows).
template <typename T>
__device__ __forceinline__ T* out_row(const OutSegs& o, int n0, int n1, int n2, int b, int i) {
    const int e0 = n0, e1 = e0 + n1, e2 = e1 + n2;
    if (i < e0) return out_seg_row<T>(o, 0, b, i);
    if (i < e1) return out_seg_row<T>(o, 1, b, i - e0);
    if (i < e2) return out_seg_row<T>(o, 2, b, i - e1);
    return out_seg_row<T>(o, 3, b, i - e2);
}
