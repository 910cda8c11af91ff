// The small kernels: activations, softmax, LayerNorm (+ adaLN modulation), RMSNorm (and the
// per-head q/k RMSNorm of a fused QKV output, in place), elementwise
// arithmetic, gated residual, embedding gather, dtype casts and strided copies. Each has an f32
// CPU reference in src/ops/<module>.rs. Templates are instantiated for float, bf16 and f16 as
// extern "C" entry points `<name>_f32|_bf16|_f16`.
//
// Rounding: bf16 results are rounded where the PyTorch reference rounds (each bf16 op rounds
// its output), e.g. adaLN = bf16(bf16(bf16(LN(x)) * bf16(1 + scale)) + shift).
#include "common.cuh"

// ------------------------------------------------------------------------------------------------
// Elementwise driver: 16-byte vector loads and stores where every pointer allows them, a scalar
// tail (and the scalar path for unaligned pointers). The per-element arithmetic is the same on
// both paths, so results do not depend on alignment.
// ------------------------------------------------------------------------------------------------

// Elements of T in one 16-byte vector.
template <typename T>
struct Vec16 {
    static constexpr int N = 16 / (int)sizeof(T);
    alignas(16) T v[N];
};

__device__ __forceinline__ bool aligned16(const void* p) { return p == nullptr || ((unsigned long long)p & 15ull) == 0; }

// y[i] = f(a[i], b[i]) for i < n (b may be null: f gets T() then). y may be a or b (each thread
// reads a vector or element before it writes the same one).
template <typename T, typename F>
__device__ __forceinline__ void elementwise2(const T* a, const T* b, T* y, long long n, F f) {
    constexpr int N = Vec16<T>::N;
    const long long nv = aligned16(a) && aligned16(b) && aligned16(y) ? n / N : 0;
    GRID_STRIDE(i, nv) {
        const Vec16<T> va = reinterpret_cast<const Vec16<T>*>(a)[i];
        Vec16<T> vb;
        if (b) vb = reinterpret_cast<const Vec16<T>*>(b)[i];
        Vec16<T> vy;
#pragma unroll
        for (int k = 0; k < N; k++) vy.v[k] = f(va.v[k], b ? vb.v[k] : T());
        reinterpret_cast<Vec16<T>*>(y)[i] = vy;
    }
    const long long done = nv * N;
    GRID_STRIDE(j, n - done) {
        const long long i = done + j;
        y[i] = f(a[i], b ? b[i] : T());
    }
}

template <typename T>
__device__ void act_k(const T* x, T* y, long long n, int code) {
    elementwise2<T>(x, nullptr, y, n, [code](T v, T) { return from_f<T>(act_apply(to_f(v), code)); });
}

template <typename T>
__device__ void softmax_last_k(const T* x, T* y, int rows, int cols) {
    const T* r = x + (long long)blockIdx.x * cols;
    T* o = y + (long long)blockIdx.x * cols;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) m = fmaxf(m, to_f(r[j]));
    m = block_max(m);
    // A fully masked row (max -inf) gives zeros like the CPU reference (softmax_row), not NaN:
    // subtract 0 instead (exp(-inf) = 0), and 1/0 is avoided below.
    const float base = m == -INFINITY ? 0.f : m;
    float s = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += __expf(to_f(r[j]) - base);
    s = block_sum(s);
    float inv = s > 0.f ? 1.f / s : 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) o[j] = from_f<T>(__expf(to_f(r[j]) - base) * inv);
}

// Mean and 1/sqrt(var + eps) of one row (two passes over global memory; rows are L1/L2 resident).
template <typename T>
__device__ __forceinline__ void row_stats(const T* r, int c, float eps, float& mean, float& inv) {
    float s = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) s += to_f(r[j]);
    mean = block_sum(s) / c;
    float v = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float d = to_f(r[j]) - mean;
        v += d * d;
    }
    inv = rsqrtf(block_sum(v) / c + eps);
}

template <typename T>
__device__ void layer_norm_k(const T* x, T* y, const float* w, const float* b, int rows, int c, float eps) {
    const T* r = x + (long long)blockIdx.x * c;
    T* o = y + (long long)blockIdx.x * c;
    float mean, inv;
    row_stats(r, c, eps, mean, inv);
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float v = (to_f(r[j]) - mean) * inv;  // F.layer_norm rounds once at the end (from_f)
        if (w || b) v = v * (w ? w[j] : 1.f) + (b ? b[j] : 0.f);  // a bias without a weight counts too
        o[j] = from_f<T>(v);
    }
}

// x [B, S, C]; shift, scale rows of batch b at shift + b * shift_ld.
template <typename T>
__device__ void ln_modulate_k(const T* x, T* y, const T* shift, long long shift_ld, const T* scale, long long scale_ld, int s, int c,
                              float eps) {
    long long row = blockIdx.x;
    int b = (int)(row / s);
    const T* r = x + row * c;
    T* o = y + row * c;
    const T* sh = shift + b * shift_ld;
    const T* sc = scale + b * scale_ld;
    float mean, inv;
    row_stats(r, c, eps, mean, inv);
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float n = rnd<T>((to_f(r[j]) - mean) * inv);
        float t = rnd<T>(1.f + to_f(sc[j]));
        o[j] = from_f<T>(rnd<T>(n * t) + to_f(sh[j]));
    }
}

// y = T(x * rsqrt(mean(x^2) + eps)) * w  (diffusers RMSNorm / T5LayerNorm).
template <typename T>
__device__ void rms_norm_k(const T* x, T* y, const float* w, int rows, int c, float eps) {
    const T* r = x + (long long)blockIdx.x * c;
    T* o = y + (long long)blockIdx.x * c;
    float s = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float v = to_f(r[j]);
        s += v * v;
    }
    float inv = rsqrtf(block_sum(s) / c + eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x) {
        float v = rnd<T>(to_f(r[j]) * inv);
        o[j] = from_f<T>(w ? v * w[j] : v);
    }
}

// Per-head RMSNorm of the q and k heads of a fused QKV projection, in place (the attention's
// qk_norm): `rows` rows of x at row stride `ld` elements; hq q heads of hd at column q_col with
// gain wq, hk k heads at column k_col with gain wk (f32 [hd] or null); the v columns are not
// touched. One warp per (row, head), 8 warps a block. Same rounding as rms_norm_k:
// y = T(T(x * rsqrt(mean(x^2) + eps)) * w), sum of squares in f32.
template <typename T>
struct alignas(2 * sizeof(T)) Pair2 {
    T a, b;
};
template <typename T>
__device__ void qk_rms_norm_k(T* x, long long ld, long long rows, int q_col, int hq, const float* wq, int k_col, int hk, const float* wk,
                              int hd, float eps) {
    const int lane = threadIdx.x & 31;
    const int hpr = hq + hk;
    const long long warp = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (hpr <= 0 || warp >= rows * hpr) return;  // warp-uniform: a warp exits whole
    const long long row = warp / hpr;
    const int h = (int)(warp - row * hpr);
    const bool isq = h < hq;
    T* p = x + row * ld + (isq ? q_col + (long long)h * hd : k_col + (long long)(h - hq) * hd);
    const float* w = isq ? wq : wk;
    // Pairs (one 2 x sizeof(T) load per lane and step) when the head is even and aligned.
    const bool pairs = (hd % 2 == 0) && (((unsigned long long)p) % (2 * sizeof(T)) == 0);
    float s = 0.f;
    if (pairs) {
        const Pair2<T>* pp = reinterpret_cast<const Pair2<T>*>(p);
        for (int j = lane; j < hd / 2; j += 32) {
            const Pair2<T> v = pp[j];
            const float a = to_f(v.a), b = to_f(v.b);
            s += a * a + b * b;
        }
    } else {
        for (int j = lane; j < hd; j += 32) {
            const float v = to_f(p[j]);
            s += v * v;
        }
    }
    const float inv = rsqrtf(warp_sum(s) / hd + eps);
    if (pairs) {
        Pair2<T>* pp = reinterpret_cast<Pair2<T>*>(p);
        for (int j = lane; j < hd / 2; j += 32) {
            Pair2<T> v = pp[j];
            const float a = rnd<T>(to_f(v.a) * inv), b = rnd<T>(to_f(v.b) * inv);
            v.a = from_f<T>(w ? a * w[2 * j] : a);
            v.b = from_f<T>(w ? b * w[2 * j + 1] : b);
            pp[j] = v;
        }
    } else {
        for (int j = lane; j < hd; j += 32) {
            const float v = rnd<T>(to_f(p[j]) * inv);
            p[j] = from_f<T>(w ? v * w[j] : v);
        }
    }
}

template <typename T>
__device__ void axpby_k(const T* a, const T* b, T* y, long long n, float alpha, float beta) {
    const bool has_b = b != nullptr;
    elementwise2<T>(a, b, y, n, [=](T av, T bv) {
        float v = alpha == 1.f ? to_f(av) : rnd<T>(alpha * to_f(av));
        if (has_b) v += beta == 1.f ? to_f(bv) : rnd<T>(beta * to_f(bv));
        return from_f<T>(v);
    });
}

template <typename T>
__device__ void mul_k(const T* a, const T* b, T* y, long long n) {
    elementwise2<T>(a, b, y, n, [](T av, T bv) { return from_f<T>(to_f(av) * to_f(bv)); });
}

// A grid-stride index i together with i / d and i % d, kept without a division per element:
// divided once at the start, then advanced by the stride's own quotient and remainder.
struct DivWalk {
    long long q, r;          // i / d, i % d
    long long step_q, step_r;  // stride / d, stride % d
    long long d;
    __device__ __forceinline__ DivWalk(long long i, long long stride, long long d_)
        : q(i / d_), r(i % d_), step_q(stride / d_), step_r(stride % d_), d(d_) {}
    __device__ __forceinline__ void advance() {
        q += step_q;
        r += step_r;
        if (r >= d) {
            r -= d;
            q++;
        }
    }
};

template <typename T>
__device__ void add_bcast_k(const T* a, const T* b, T* y, long long n, long long period) {
    const long long i0 = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    if (i0 >= n) return;
    DivWalk w(i0, stride, period);  // w.r = i % period
    for (long long i = i0; i < n; i += stride, w.advance()) y[i] = from_f<T>(to_f(a[i]) + to_f(b[w.r]));
}

// out = x + gate[b] * y over [B, S, C]; the product is rounded like the reference's bf16 mul.
template <typename T>
__device__ void gated_residual_k(const T* x, const T* y, const T* gate, long long gate_ld, T* out, long long n, long long s, long long c) {
    const long long i0 = (long long)blockIdx.x * blockDim.x + threadIdx.x, stride = (long long)gridDim.x * blockDim.x;
    if (i0 >= n) return;
    DivWalk bw(i0, stride, s * c), cw(i0, stride, c);  // bw.q = i / (s c) = batch, cw.r = i % c = channel
    for (long long i = i0; i < n; i += stride, bw.advance(), cw.advance()) {
        const float g = to_f(gate[bw.q * gate_ld + cw.r]);
        out[i] = from_f<T>(to_f(x[i]) + rnd<T>(g * to_f(y[i])));
    }
}

template <typename T>
__device__ void embedding_k(const T* table, const unsigned* ids, T* y, int c) {
    const T* r = table + (long long)ids[blockIdx.x] * c;
    T* o = y + (long long)blockIdx.x * c;
    for (int j = threadIdx.x; j < c; j += blockDim.x) o[j] = r[j];
}

#define INST(T, S)                                                                                                              \
    extern "C" __global__ void act_##S(const T* x, T* y, long long n, int code) { act_k<T>(x, y, n, code); }                   \
    extern "C" __global__ void softmax_last_##S(const T* x, T* y, int rows, int cols) { softmax_last_k<T>(x, y, rows, cols); } \
    extern "C" __global__ void layer_norm_##S(const T* x, T* y, const float* w, const float* b, int rows, int c, float eps) {  \
        layer_norm_k<T>(x, y, w, b, rows, c, eps);                                                                              \
    }                                                                                                                           \
    extern "C" __global__ void ln_modulate_##S(const T* x, T* y, const T* shift, long long shl, const T* scale, long long scl, \
                                               int s, int c, float eps) {                                                       \
        ln_modulate_k<T>(x, y, shift, shl, scale, scl, s, c, eps);                                                              \
    }                                                                                                                           \
    extern "C" __global__ void rms_norm_##S(const T* x, T* y, const float* w, int rows, int c, float eps) {                    \
        rms_norm_k<T>(x, y, w, rows, c, eps);                                                                                   \
    }                                                                                                                           \
    extern "C" __global__ void qk_rms_norm_##S(T* x, long long ld, long long rows, int q_col, int hq, const float* wq, int k_col, \
                                               int hk, const float* wk, int hd, float eps) {                                    \
        qk_rms_norm_k<T>(x, ld, rows, q_col, hq, wq, k_col, hk, wk, hd, eps);                                                 \
    }                                                                                                                           \
    extern "C" __global__ void axpby_##S(const T* a, const T* b, T* y, long long n, float alpha, float beta) {                 \
        axpby_k<T>(a, b, y, n, alpha, beta);                                                                                    \
    }                                                                                                                           \
    extern "C" __global__ void mul_##S(const T* a, const T* b, T* y, long long n) { mul_k<T>(a, b, y, n); }                    \
    extern "C" __global__ void add_bcast_##S(const T* a, const T* b, T* y, long long n, long long period) {                    \
        add_bcast_k<T>(a, b, y, n, period);                                                                                     \
    }                                                                                                                           \
    extern "C" __global__ void gated_residual_##S(const T* x, const T* y, const T* gate, long long gate_ld, T* out, long long n, \
                                                  long long s, long long c) {                                                   \
        gated_residual_k<T>(x, y, gate, gate_ld, out, n, s, c);                                                                 \
    }                                                                                                                           \
    extern "C" __global__ void embedding_##S(const T* table, const unsigned* ids, T* y, int c) { embedding_k<T>(table, ids, y, c); }

INST(float, f32)
INST(__nv_bfloat16, bf16)
INST(__half, f16)

// dtype codes: 0 f32, 1 bf16, 2 f16.
__device__ __forceinline__ float load_any(const void* p, long long i, int dt) {
    if (dt == 0) return ((const float*)p)[i];
    if (dt == 1) return __bfloat162float(((const __nv_bfloat16*)p)[i]);
    return __half2float(((const __half*)p)[i]);
}
extern "C" __global__ void cast_any(const void* x, void* y, long long n, int sdt, int ddt) {
    GRID_STRIDE(i, n) {
        float v = load_any(x, i, sdt);
        if (ddt == 0) ((float*)y)[i] = v;
        else if (ddt == 1) ((__nv_bfloat16*)y)[i] = __float2bfloat16_rn(v);
        else ((__half*)y)[i] = __float2half_rn(v);
    }
}

// Strided gather/scatter (src/runtime/copy.rs plans it): index space shape[0..rank) (row-major,
// rank 1..8; the host drops unit dims and merges dims that are contiguous on both sides), source
// and destination strides in elements of `esize` bytes (1, 2, 4, 8 or 16: the host widens the
// element when the innermost dim is dense on both sides and everything is aligned, so a
// contiguous run moves as 16-byte loads and stores).
//   wide == 0: fewer than 2^31 elements and every offset below 2^31: 32-bit index math; the
//     division by shape[k] is a multiply-high, an add and a shift with the host's magic
//     (mul[k], shr[k]; exact for x < 2^31, Granlund and Montgomery), no 64-bit division.
//   wide == 1: 64-bit index math with plain division (beyond 2^31 elements or offsets).
// Dims are decomposed from the innermost out, only the `rank` used ones.
#define COPY_DIMS(X) long long X##0, long long X##1, long long X##2, long long X##3, long long X##4, long long X##5, long long X##6, long long X##7
#define COPY_U32S(X) unsigned X##0, unsigned X##1, unsigned X##2, unsigned X##3, unsigned X##4, unsigned X##5, unsigned X##6, unsigned X##7
#define COPY_LIST(X) {X##0, X##1, X##2, X##3, X##4, X##5, X##6, X##7}

struct CopyGeo {
    int rank;
    long long n[8], s[8], d[8];
    unsigned mul[8], shr[8];
};

struct alignas(8) CopyU64 { uint32_t a, b; };
struct alignas(16) CopyU128 { uint32_t a, b, c, d; };

// q = x / n for x < 2^31 with the magic of n: (umulhi(x, mul) + x) >> shr (no overflow: the
// high product is at most x).
__device__ __forceinline__ unsigned copy_fastdiv(unsigned x, unsigned mul, unsigned shr) { return (__umulhi(x, mul) + x) >> shr; }

template <typename E>
__device__ __forceinline__ void copy_nd_narrow(const E* __restrict__ src, E* __restrict__ dst, unsigned total, const CopyGeo& g) {
    const unsigned stride = gridDim.x * blockDim.x;  // launch: stride + total < 2^32
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
        unsigned x = i, so = 0, dof = 0;
#pragma unroll
        for (int k = 7; k >= 1; --k) {
            if (k < g.rank) {
                const unsigned q = copy_fastdiv(x, g.mul[k], g.shr[k]);
                const unsigned idx = x - q * (unsigned)g.n[k];
                so += idx * (unsigned)g.s[k];
                dof += idx * (unsigned)g.d[k];
                x = q;
            }
        }
        so += x * (unsigned)g.s[0];
        dof += x * (unsigned)g.d[0];
        dst[dof] = src[so];
    }
}

template <typename E>
__device__ __forceinline__ void copy_nd_wide(const E* __restrict__ src, E* __restrict__ dst, long long total, const CopyGeo& g) {
    GRID_STRIDE(i, total) {
        long long x = i, so = 0, dof = 0;
#pragma unroll
        for (int k = 7; k >= 1; --k) {
            if (k < g.rank) {
                const long long q = x / g.n[k];
                const long long idx = x - q * g.n[k];
                so += idx * g.s[k];
                dof += idx * g.d[k];
                x = q;
            }
        }
        so += x * g.s[0];
        dof += x * g.d[0];
        dst[dof] = src[so];
    }
}

template <typename E>
__device__ __forceinline__ void copy_nd_e(const void* src, void* dst, long long n, int wide, const CopyGeo& g) {
    if (wide) copy_nd_wide<E>((const E*)src, (E*)dst, n, g);
    else copy_nd_narrow<E>((const E*)src, (E*)dst, (unsigned)n, g);
}

extern "C" __global__ void copy_nd(const void* src, void* dst, long long n, int esize, int rank, int wide, COPY_DIMS(n),
                                   COPY_DIMS(s), COPY_DIMS(d), COPY_U32S(mul), COPY_U32S(shr)) {
    const CopyGeo g{rank, COPY_LIST(n), COPY_LIST(s), COPY_LIST(d), COPY_LIST(mul), COPY_LIST(shr)};
    switch (esize) {
    case 16: copy_nd_e<CopyU128>(src, dst, n, wide, g); break;
    case 8: copy_nd_e<CopyU64>(src, dst, n, wide, g); break;
    case 4: copy_nd_e<uint32_t>(src, dst, n, wide, g); break;
    case 2: copy_nd_e<uint16_t>(src, dst, n, wide, g); break;
    default: copy_nd_e<uint8_t>(src, dst, n, wide, g); break;
    }
}
