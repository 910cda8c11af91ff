// kernels/gemm_int8.cu on the emulator: the int8 conversions (byte permutes and magic numbers,
// every byte value in every position), the W8A16 tensor-core GEMM (per-channel and group-wise
// scales), the small-M GEMV and the dequantisation kernels (16-, 8- and 1-wide paths) against
// a double-precision Y = act(X dequant(Q)^T + bias).
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
        const size_t base = w8::SMEM_A + w8::SMEM_Q + w8::SMEM_BT;
        const size_t smem = c.groups > 1 ? base + w8::SMEM_S : base;
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

// Every int8 value in every byte position of a word, through the device helpers: exact f32,
// exact bf16 / f16 pairs, and q * s rounded to T as pack2 rounds.
void run_conversions() {
    const std::string name = "w8a16/convert_all_bytes";
    if (!selected(name)) return;
    int bad = 0;
    const float scales[] = {1.f, 0.37f / 127.f, 3.1e-5f, 1.7e3f};
    for (int v = 0; v < 256; v++) {
        for (int pos = 0; pos < 4; pos++) {
            uint32_t w = 0;
            int8_t want[4];
            for (int e = 0; e < 4; e++) {
                const int b = e == pos ? v : (v * 7 + 61 * e + 13 * pos) & 0xff;
                w |= (uint32_t)b << (8 * e);
                want[e] = (int8_t)(uint8_t)b;
            }
            float f[4];
            w8::i8x4_to_f32(w, f);
            uint32_t b01, b23, h01, h23;
            w8::i8x4_to_t<__nv_bfloat16>(w, b01, b23);
            w8::i8x4_to_t<__half>(w, h01, h23);
            const uint32_t bw[2] = {b01, b23}, hw[2] = {h01, h23};
            for (int e = 0; e < 4; e++) {
                const uint16_t bb = (uint16_t)(bw[e >> 1] >> (16 * (e & 1)));
                const uint16_t hb = (uint16_t)(hw[e >> 1] >> (16 * (e & 1)));
                const bool ok = f[e] == (float)want[e] && emu::bf2f(bb) == (float)want[e] && emu::h2f(hb) == (float)want[e] &&
                                bb == emu::f2bf((float)want[e]) && hb == emu::f2h((float)want[e]);
                if (!ok && bad++ < 8)
                    printf("FAIL %s: word 0x%08x element %d (q %d): f32 %g bf16 0x%04x f16 0x%04x\n", name.c_str(), w, e, want[e], f[e], bb, hb);
            }
            for (float sc : scales) {
                w8::i8x4_scaled_to_t<__nv_bfloat16>(w, sc, b01, b23);
                w8::i8x4_scaled_to_t<__half>(w, sc, h01, h23);
                const uint32_t bs[2] = {b01, b23}, hs[2] = {h01, h23};
                for (int e = 0; e < 4; e++) {
                    const uint16_t bb = (uint16_t)(bs[e >> 1] >> (16 * (e & 1)));
                    const uint16_t hb = (uint16_t)(hs[e >> 1] >> (16 * (e & 1)));
                    const float prod = (float)want[e] * sc;
                    if ((bb != emu::f2bf(prod) || hb != emu::f2h(prod)) && bad++ < 8)
                        printf("FAIL %s: q %d * %g: bf16 0x%04x (want 0x%04x) f16 0x%04x (want 0x%04x)\n", name.c_str(), want[e], sc, bb,
                               emu::f2bf(prod), hb, emu::f2h(prod));
                }
            }
        }
    }
    const float bad_count = (float)bad;  // every mismatch printed above (the first 8)
    expect_close(name, &bad_count, std::vector<double>{0.0}, 0.0, 0.0);
}

// n x k weights at byte offset q_off into the int8 buffer (8: only the 8-wide path is aligned)
// and element offset w_off into the output (a w not 16-byte aligned: the 1-wide path).
template <typename T>
void run_dequant(long long n, long long k, long long groups, int q_off, int w_off, uint64_t seed) {
    const std::string name = std::string("w8a16/dequant_") + tname<T>() + " n" + std::to_string(n) + " k" + std::to_string(k) + " groups " +
                             std::to_string(groups) + " q+" + std::to_string(q_off) + " w+" + std::to_string(w_off);
    if (!selected(name)) return;
    Rng rng(seed);
    DBuf<int8_t> Q((size_t)(n * k + q_off));
    DBuf<float> S((size_t)(n * groups));
    DBuf<T> W((size_t)(n * k + w_off));
    // Every byte value appears (in order first, then random), -128 included.
    for (size_t i = 0; i < (size_t)(n * k); i++) Q[i + q_off] = i < 256 ? (int8_t)(uint8_t)i : (int8_t)(rng.range(256) - 128);
    for (size_t i = 0; i < S.n; i++) S[i] = (0.25f + rng.uniform()) / 127.f;
    emu::launch("dequant_i8", dim3(3), dim3(32), 0, [&] {
        if constexpr (std::is_same<T, float>::value) dequant_i8_f32(Q.p + q_off, S.p, W.p + w_off, n, k, groups);
        else if constexpr (std::is_same<T, __nv_bfloat16>::value) dequant_i8_bf16(Q.p + q_off, S.p, W.p + w_off, n, k, groups);
        else dequant_i8_f16(Q.p + q_off, S.p, W.p + w_off, n, k, groups);
    });
    std::vector<double> ref((size_t)(n * k));
    for (long long r = 0; r < n; r++)
        for (long long c = 0; c < k; c++)
            ref[(size_t)(r * k + c)] = round_t<T>((float)Q[(size_t)(r * k + c + q_off)] * S[(size_t)(r * groups + c / (k / groups))]);
    expect_close(name, W.p + w_off, ref, 0.0, 0.0);
}

}  // namespace

void test_gemm_int8() {
    run_conversions();
    // {M, N, K, lda_pad, groups, act, bias}
    const std::vector<GemmCase> mma_cases = {
        {37, 45, 72, 8, 1, 0, false},     // odd N: unpacked stores; partial tiles everywhere
        {130, 136, 96, 0, 1, 2, true},    // two M tiles, two N tiles, packed stores, GELU
        {1, 8, 8, 0, 1, 1, true},         // one row, one k step of 8 (the rest of the tile zero)
        {129, 257, 40, 16, 1, 4, true},   // K not a multiple of the 32-wide k tile, N odd past 2 tiles
        {33, 64, 96, 16, 3, 0, true},     // group-wise, groups of 32
        {20, 130, 64, 0, 8, 1, false},    // group-wise, groups of 8 (one per k block)
        {67, 31, 120, 8, 5, 3, true},     // group-wise, groups of 24 (straddling k tiles), odd M and N
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
    // {n, k, groups, q offset, w offset}: 16-wide, 16-wide group-wise, 8-wide (groups of 8,
    // or Q only 8-byte aligned), 1-wide (K % 8 != 0, or w misaligned).
    const long long dq[][5] = {{4, 256, 1, 0, 0}, {3, 96, 3, 0, 0}, {5, 24, 3, 0, 0}, {2, 144, 1, 8, 0}, {3, 20, 2, 0, 0}, {2, 64, 1, 0, 1}};
    for (const auto& d : dq) {
        run_dequant<float>(d[0], d[1], d[2], (int)d[3], (int)d[4], seed++);
        run_dequant<__nv_bfloat16>(d[0], d[1], d[2], (int)d[3], (int)d[4], seed++);
        run_dequant<__half>(d[0], d[1], d[2], (int)d[3], (int)d[4], seed++);
    }
}
