// kernels/gemm_int8.cu on the emulator: the W8A16 tensor-core GEMM (per-channel and group-wise
// scales), the small-M GEMV and the dequantisation kernels against a double-precision
// Y = act(X dequant(Q)^T + bias).
#include "gemm_int8.cu"

#include <memory>

#include "harness.h"

namespace {

struct GemmCase {
    int M, N, K, lda_pad, groups, act;
    bool bias;
};

template <typename T>
void run_gemm(const GemmCase& c, bool gemv, uint64_t seed) {
    const std::string name = std::string("w8a16/") + (gemv ? "gemv_" : "mma_") + (c.groups > 1 ? "group_" : "") + tname<T>() + " M" +
                             std::to_string(c.M) + " N" + std::to_string(c.N) + " K" + std::to_string(c.K) + " groups " +
                             std::to_string(c.groups) + " act " + std::to_string(c.act) + (c.bias ? " bias" : "");
    if (!selected(name)) return;
    Rng rng(seed);
    const long long lda = c.K + c.lda_pad;
    DBuf<T> X((size_t)(c.M * lda));
    DBuf<int8_t> Q((size_t)c.N * c.K);
    DBuf<float> S((size_t)c.N * c.groups), B((size_t)c.N);
    DBuf<T> Y((size_t)c.M * c.N);
    for (size_t i = 0; i < X.n; i++) X[i] = to_t<T>(rng.sym());
    for (size_t i = 0; i < Q.n; i++) Q[i] = (int8_t)(rng.range(255) - 127);
    for (size_t i = 0; i < S.n; i++) S[i] = (0.5f + rng.uniform()) / 127.f;
    for (size_t i = 0; i < B.n; i++) B[i] = rng.sym();
    const float* bias = c.bias ? B.p : nullptr;
    const bool bf = std::is_same<T, __nv_bfloat16>::value;
    if (gemv) {
        emu::launch("w8a16_gemv", dim3((unsigned)(c.N + GEMV_WARPS - 1) / GEMV_WARPS), dim3(GEMV_WARPS * 32), 0, [&] {
            if constexpr (std::is_same<T, __nv_bfloat16>::value)
                w8a16_gemv_bf16(X.p, lda, Q.p, S.p, c.groups, bias, Y.p, c.M, c.N, c.K, c.act);
            else
                w8a16_gemv_f16(X.p, lda, Q.p, S.p, c.groups, bias, Y.p, c.M, c.N, c.K, c.act);
        });
    } else {
        const size_t smem = c.groups > 1 ? w8::SMEM_A + w8::SMEM_B + w8::SMEM_S : w8::SMEM_A + w8::SMEM_B;
        const dim3 grid((unsigned)(c.N + w8::BN - 1) / w8::BN, (unsigned)(c.M + w8::BM - 1) / w8::BM);
        emu::launch("w8a16_mma", grid, dim3(w8::THREADS), smem, [&] {
            if (c.groups > 1) {
                if (bf) w8a16_mma_group_bf16((const __nv_bfloat16*)X.p, lda, Q.p, S.p, c.groups, bias, (__nv_bfloat16*)Y.p, c.M, c.N, c.K, c.act);
                else w8a16_mma_group_f16((const __half*)X.p, lda, Q.p, S.p, c.groups, bias, (__half*)Y.p, c.M, c.N, c.K, c.act);
            } else {
                if (bf) w8a16_mma_bf16((const __nv_bfloat16*)X.p, lda, Q.p, S.p, c.groups, bias, (__nv_bfloat16*)Y.p, c.M, c.N, c.K, c.act);
                else w8a16_mma_f16((const __half*)X.p, lda, Q.p, S.p, c.groups, bias, (__half*)Y.p, c.M, c.N, c.K, c.act);
            }
        });
    }
    // Reference from the dequantised weight; the group-wise tensor-core path rounds q * s to T
    // (a dequantised T weight), the others scale in f32: both within the bound below.
    const int gs = c.K / c.groups;
    std::vector<double> ref((size_t)c.M * c.N), tol(ref.size());
    for (int m = 0; m < c.M; m++)
        for (int n = 0; n < c.N; n++) {
            double s = 0, mag = 0;
            for (int k = 0; k < c.K; k++) {
                const double w = (double)Q[(size_t)n * c.K + k] * S[(size_t)n * c.groups + k / gs];
                const double x = to_float(X[(size_t)(m * lda + k)]);
                s += x * w;
                mag += fabs(x * w);
            }
            if (bias) s += B[(size_t)n];
            const double y = act_ref(s, c.act);
            ref[(size_t)m * c.N + n] = y;
            tol[(size_t)m * c.N + n] = 2 * eps_t<T>() * (fabs(y) + mag) + 1e-6;
        }
    expect_close(name, Y.p, ref, tol);
}

template <typename T>
void run_dequant(uint64_t seed) {
    const std::string name = std::string("w8a16/dequant_") + tname<T>();
    if (!selected(name)) return;
    Rng rng(seed);
    const long long n = 5, k = 24, groups = 3;
    DBuf<int8_t> Q((size_t)(n * k));
    DBuf<float> S((size_t)(n * groups));
    DBuf<T> W((size_t)(n * k));
    for (size_t i = 0; i < Q.n; i++) Q[i] = (int8_t)(rng.range(255) - 127);
    for (size_t i = 0; i < S.n; i++) S[i] = rng.uniform() / 127.f;
    emu::launch("dequant_i8", dim3(2), dim3(32), 0, [&] {
        if constexpr (std::is_same<T, float>::value) dequant_i8_f32(Q.p, S.p, W.p, n, k, groups);
        else if constexpr (std::is_same<T, __nv_bfloat16>::value) dequant_i8_bf16(Q.p, S.p, W.p, n, k, groups);
        else dequant_i8_f16(Q.p, S.p, W.p, n, k, groups);
    });
    std::vector<double> ref(W.n);
    for (long long r = 0; r < n; r++)
        for (long long c = 0; c < k; c++)
            ref[(size_t)(r * k + c)] = round_t<T>((float)Q[(size_t)(r * k + c)] * S[(size_t)(r * groups + c / (k / groups))]);
    expect_close(name, W.p, ref, 0.0, 0.0);
}

}  // namespace

void test_gemm_int8() {
    // {M, N, K, lda_pad, groups, act, bias}
    const std::vector<GemmCase> mma_cases = {
        {37, 45, 72, 8, 1, 0, false},    // odd N: unpacked stores; partial tiles everywhere
        {130, 136, 96, 0, 1, 2, true},   // two M tiles, two N tiles, packed stores, GELU
        {33, 64, 96, 16, 3, 0, true},    // group-wise, groups of 32
        {20, 130, 64, 0, 8, 1, false},   // group-wise, groups of 8 (one per k block)
    };
    const std::vector<GemmCase> gemv_cases = {
        {1, 45, 72, 0, 1, 0, true},
        {5, 64, 520, 8, 1, 3, false},  // K > 256: two steps per lane
        {16, 19, 96, 0, 12, 4, true},
    };
    uint64_t seed = 300;
    for (const GemmCase& c : mma_cases) {
        run_gemm<__nv_bfloat16>(c, false, seed++);
        run_gemm<__half>(c, false, seed++);
    }
    for (const GemmCase& c : gemv_cases) {
        run_gemm<__nv_bfloat16>(c, true, seed++);
        run_gemm<__half>(c, true, seed++);
    }
    run_dequant<float>(seed++);
    run_dequant<__nv_bfloat16>(seed++);
    run_dequant<__half>(seed++);
}
