// kernels/ops.cu on the emulator: activations, softmax, LayerNorm, adaLN modulation, RMSNorm
// (and the fused QKV per-head q/k RMSNorm, in place),
// elementwise kernels, gated residual, embedding, casts and strided copies, launched like
// src/ops/*.rs launches them (one block per row, or grid-stride loops on a small grid), against
// double references. Tolerances: a few units of the storage type's precision.
#include "ops.cu"

#include <functional>
#include <memory>

#include "harness.h"

namespace {

template <typename T>
void fill(DBuf<T>& b, Rng& rng, float a = 2.f) {
    for (size_t i = 0; i < b.n; i++) b[i] = to_t<T>(rng.sym(a));
}
template <typename T>
double val(DBuf<T>& b, size_t i) {
    return to_float(b[i]);
}

// Bound for a value computed in f32 then rounded to T once or a few times.
template <typename T>
double atol_t() {
    return std::is_same<T, float>::value ? 1e-5 : 3 * eps_t<T>();
}
template <typename T>
double rtol_t() {
    return std::is_same<T, float>::value ? 1e-5 : 3 * eps_t<T>();
}

#define PICK(NAME, T) (std::is_same<T, float>::value ? (void*)NAME##_f32 : std::is_same<T, __nv_bfloat16>::value ? (void*)NAME##_bf16 : (void*)NAME##_f16)

template <typename T>
void run_all(uint64_t seed) {
    const std::string tn = tname<T>();
    Rng rng(seed);
    const dim3 small_grid(3), b256(256);

    if (selected("ops/act_" + tn)) {
        for (int code = 0; code <= 4; code++) {
            DBuf<T> x(1000), y(1000);
            fill(x, rng, 4.f);
            auto f = (void (*)(const T*, T*, long long, int))PICK(act, T);
            emu::launch("act", small_grid, b256, 0, [&] { f(x.p, y.p, (long long)x.n, code); });
            std::vector<double> ref(x.n);
            for (size_t i = 0; i < x.n; i++) ref[i] = act_ref(val(x, i), code);
            expect_close("ops/act_" + tn + " code " + std::to_string(code), y.p, ref, atol_t<T>(), rtol_t<T>());
        }
    }
    if (selected("ops/softmax_last_" + tn)) {
        const int rows = 4, cols = 300;
        DBuf<T> x((size_t)rows * cols), y(x.n);
        fill(x, rng, 5.f);
        for (int j = 0; j < cols; j++) x[(size_t)2 * cols + j] = to_t<T>(-INFINITY);  // fully masked row: zeros
        auto f = (void (*)(const T*, T*, int, int))PICK(softmax_last, T);
        emu::launch("softmax_last", dim3(rows), b256, 0, [&] { f(x.p, y.p, rows, cols); });
        std::vector<double> ref(x.n, 0.0);
        for (int r = 0; r < rows; r++) {
            if (r == 2) continue;
            double m = -INFINITY, s = 0;
            for (int j = 0; j < cols; j++) m = std::max(m, val(x, (size_t)r * cols + j));
            for (int j = 0; j < cols; j++) s += std::exp(val(x, (size_t)r * cols + j) - m);
            for (int j = 0; j < cols; j++) ref[(size_t)r * cols + j] = std::exp(val(x, (size_t)r * cols + j) - m) / s;
        }
        expect_close("ops/softmax_last_" + tn, y.p, ref, atol_t<T>() * 0.1, rtol_t<T>());
    }
    if (selected("ops/layer_norm_" + tn)) {
        const int rows = 3, c = 77;
        for (int mode = 0; mode < 4; mode++) {  // no affine, weight, bias, both
            DBuf<T> x((size_t)rows * c), y(x.n);
            DBuf<float> w((size_t)c), b((size_t)c);
            fill(x, rng, 3.f);
            for (int j = 0; j < c; j++) {
                w[(size_t)j] = 0.5f + rng.uniform();
                b[(size_t)j] = rng.sym();
            }
            const float* wp = (mode & 1) ? w.p : nullptr;
            const float* bp = (mode & 2) ? b.p : nullptr;
            auto f = (void (*)(const T*, T*, const float*, const float*, int, int, float))PICK(layer_norm, T);
            emu::launch("layer_norm", dim3(rows), b256, 0, [&] { f(x.p, y.p, wp, bp, rows, c, 1e-6f); });
            std::vector<double> ref(x.n);
            for (int r = 0; r < rows; r++) {
                double m = 0, v = 0;
                for (int j = 0; j < c; j++) m += val(x, (size_t)r * c + j);
                m /= c;
                for (int j = 0; j < c; j++) v += std::pow(val(x, (size_t)r * c + j) - m, 2);
                const double inv = 1 / std::sqrt(v / c + 1e-6);
                for (int j = 0; j < c; j++)
                    ref[(size_t)r * c + j] = (val(x, (size_t)r * c + j) - m) * inv * (wp ? wp[j] : 1.0) + (bp ? bp[j] : 0.0);
            }
            expect_close("ops/layer_norm_" + tn + " affine " + std::to_string(mode), y.p, ref, atol_t<T>(), rtol_t<T>());
        }
    }
    if (selected("ops/ln_modulate_" + tn)) {
        // x [B, S, C]; shift and scale are column slices of a [B, 6C] modulation tensor (ld 6C).
        const int B = 2, S = 3, C = 50;
        const long long ld = 6LL * C;
        DBuf<T> x((size_t)B * S * C), y(x.n), mod((size_t)(B * ld));
        fill(x, rng, 3.f);
        fill(mod, rng, 1.f);
        const T* shift = mod.p + 0;
        const T* scale = mod.p + C;
        auto f = (void (*)(const T*, T*, const T*, long long, const T*, long long, int, int, float))PICK(ln_modulate, T);
        emu::launch("ln_modulate", dim3(B * S), b256, 0, [&] { f(x.p, y.p, shift, ld, scale, ld, S, C, 1e-6f); });
        std::vector<double> ref(x.n);
        for (int r = 0; r < B * S; r++) {
            const int b = r / S;
            double m = 0, v = 0;
            for (int j = 0; j < C; j++) m += val(x, (size_t)r * C + j);
            m /= C;
            for (int j = 0; j < C; j++) v += std::pow(val(x, (size_t)r * C + j) - m, 2);
            const double inv = 1 / std::sqrt(v / C + 1e-6);
            for (int j = 0; j < C; j++) {
                const double n = round_t<T>((float)((val(x, (size_t)r * C + j) - m) * inv));
                const double t = round_t<T>(1.f + to_float(scale[b * ld + j]));
                ref[(size_t)r * C + j] = round_t<T>((float)(n * t)) + to_float(shift[b * ld + j]);
            }
        }
        expect_close("ops/ln_modulate_" + tn, y.p, ref, atol_t<T>(), 2 * rtol_t<T>());
    }
    if (selected("ops/rms_norm_" + tn)) {
        for (int c : {64, 300}) {  // the q/k norm launch (64 threads) and the wide one (256)
            const int rows = 5;
            DBuf<T> x((size_t)rows * c), y(x.n);
            DBuf<float> w((size_t)c);
            fill(x, rng, 3.f);
            for (int j = 0; j < c; j++) w[(size_t)j] = 0.5f + rng.uniform();
            auto f = (void (*)(const T*, T*, const float*, int, int, float))PICK(rms_norm, T);
            emu::launch("rms_norm", dim3(rows), dim3(c <= 128 ? 64 : 256), 0, [&] { f(x.p, y.p, w.p, rows, c, 1e-6f); });
            std::vector<double> ref(x.n);
            for (int r = 0; r < rows; r++) {
                double ss = 0;
                for (int j = 0; j < c; j++) ss += std::pow(val(x, (size_t)r * c + j), 2);
                const double inv = 1 / std::sqrt(ss / c + 1e-6);
                for (int j = 0; j < c; j++) ref[(size_t)r * c + j] = round_t<T>((float)(val(x, (size_t)r * c + j) * inv)) * w[(size_t)j];
            }
            expect_close("ops/rms_norm_" + tn + " c " + std::to_string(c), y.p, ref, atol_t<T>(), 2 * rtol_t<T>());
        }
    }
    if (selected("ops/qk_rms_norm_" + tn)) {
        // The fused QKV q/k norm in place: rows of q | k | v (or k | v) at row stride ld inside a
        // wider buffer, heads of 64 (paired loads), 16, 7 (odd: scalar path), an odd column
        // offset (unaligned: scalar path), a null gain; warps = rows x heads not a multiple of
        // the 8 warps of a block (the last block's idle warps exit whole). Every other element
        // keeps its value.
        struct Case {
            int heads, hd, with_q, pad, null_q;
        };
        for (Case cs : {Case{3, 64, 1, 0, 0}, Case{2, 64, 1, 1, 0}, Case{2, 16, 0, 2, 0}, Case{3, 7, 1, 1, 1}, Case{1, 64, 0, 0, 0}}) {
            const int rows = 5, d = cs.heads * cs.hd, w = (cs.with_q ? 3 : 2) * d, ld = w + 2 * cs.pad;
            DBuf<T> x((size_t)rows * ld);
            DBuf<float> gq((size_t)cs.hd), gk((size_t)cs.hd);
            fill(x, rng, 3.f);
            for (int j = 0; j < cs.hd; j++) gq[(size_t)j] = 0.5f + rng.uniform(), gk[(size_t)j] = 0.5f + rng.uniform();
            std::vector<double> ref(x.n);
            for (size_t i = 0; i < x.n; i++) ref[i] = val(x, i);
            const int hq = cs.with_q ? cs.heads : 0, qcol = 0, kcol = cs.with_q ? d : 0;
            const float* wq = cs.null_q ? nullptr : gq.p;
            for (int r = 0; r < rows; r++) {
                for (int h = 0; h < hq + cs.heads; h++) {
                    const bool isq = h < hq;
                    const size_t c0 = (size_t)r * ld + cs.pad + (isq ? qcol + h * cs.hd : kcol + (h - hq) * cs.hd);
                    double ss = 0;
                    for (int j = 0; j < cs.hd; j++) ss += std::pow(val(x, c0 + j), 2);
                    const double inv = 1 / std::sqrt(ss / cs.hd + 1e-6);
                    for (int j = 0; j < cs.hd; j++) {
                        const double g = isq ? (wq ? wq[j] : 1.0) : gk[(size_t)j];
                        ref[c0 + j] = round_t<T>((float)(val(x, c0 + j) * inv)) * g;
                    }
                }
            }
            auto f = (void (*)(T*, long long, long long, int, int, const float*, int, int, const float*, int, float))PICK(qk_rms_norm, T);
            const long long warps = (long long)rows * (hq + cs.heads);
            T* base = x.p + cs.pad;
            emu::launch("qk_rms_norm", dim3((unsigned)((warps + 7) / 8)), b256, 0,
                        [&] { f(base, ld, rows, qcol, hq, wq, kcol, cs.heads, gk.p, cs.hd, 1e-6f); });
            expect_close("ops/qk_rms_norm_" + tn + " heads " + std::to_string(cs.heads) + "x" + std::to_string(cs.hd) + " q " +
                             std::to_string(cs.with_q) + " pad " + std::to_string(cs.pad),
                         x.p, ref, atol_t<T>(), 2 * rtol_t<T>());
        }
    }
    if (selected("ops/elementwise_" + tn)) {
        const long long n = 777;
        DBuf<T> a((size_t)n), b((size_t)n), y((size_t)n);
        fill(a, rng);
        fill(b, rng);
        auto axpby = (void (*)(const T*, const T*, T*, long long, float, float))PICK(axpby, T);
        emu::launch("axpby", small_grid, b256, 0, [&] { axpby(a.p, b.p, y.p, n, 0.75f, -1.5f); });
        std::vector<double> ref((size_t)n);
        for (size_t i = 0; i < ref.size(); i++) ref[i] = 0.75 * val(a, i) - 1.5 * val(b, i);
        expect_close("ops/elementwise_" + tn + " axpby", y.p, ref, atol_t<T>(), 2 * rtol_t<T>());
        auto mul = (void (*)(const T*, const T*, T*, long long))PICK(mul, T);
        emu::launch("mul", small_grid, b256, 0, [&] { mul(a.p, b.p, y.p, n); });
        for (size_t i = 0; i < ref.size(); i++) ref[i] = val(a, i) * val(b, i);
        expect_close("ops/elementwise_" + tn + " mul", y.p, ref, atol_t<T>(), rtol_t<T>());
        auto add_bcast = (void (*)(const T*, const T*, T*, long long, long long))PICK(add_bcast, T);
        emu::launch("add_bcast", small_grid, b256, 0, [&] { add_bcast(a.p, b.p, y.p, n, 37); });
        for (size_t i = 0; i < ref.size(); i++) ref[i] = val(a, i) + val(b, i % 37);
        expect_close("ops/elementwise_" + tn + " add_bcast", y.p, ref, atol_t<T>(), rtol_t<T>());
    }
    if (selected("ops/gated_residual_" + tn)) {
        // out = x + gate[b] * y over [B, S, C]; the gate is a column slice of [B, 6C].
        const long long B = 2, S = 5, C = 24, ld = 6 * C;
        DBuf<T> x((size_t)(B * S * C)), yv(x.n), out(x.n), mod((size_t)(B * ld));
        fill(x, rng);
        fill(yv, rng);
        fill(mod, rng);
        const T* gate = mod.p + 2 * C;
        auto f = (void (*)(const T*, const T*, const T*, long long, T*, long long, long long, long long))PICK(gated_residual, T);
        emu::launch("gated_residual", small_grid, b256, 0, [&] { f(x.p, yv.p, gate, ld, out.p, B * S * C, S, C); });
        std::vector<double> ref(x.n);
        for (size_t i = 0; i < ref.size(); i++) {
            const size_t b = i / (size_t)(S * C);
            ref[i] = val(x, i) + round_t<T>(to_float(gate[b * (size_t)ld + i % (size_t)C]) * (float)val(yv, i));
        }
        expect_close("ops/gated_residual_" + tn, out.p, ref, atol_t<T>(), rtol_t<T>());
    }
    if (selected("ops/embedding_" + tn)) {
        const int V = 10, C = 300, n = 4;
        DBuf<T> table((size_t)V * C), y((size_t)n * C);
        DBuf<unsigned> ids((size_t)n);
        fill(table, rng);
        const unsigned pick[n] = {3, 0, 9, 3};
        for (int i = 0; i < n; i++) ids[(size_t)i] = pick[i];
        auto f = (void (*)(const T*, const unsigned*, T*, int))PICK(embedding, T);
        emu::launch("embedding", dim3(n), dim3(128), 0, [&] { f(table.p, ids.p, y.p, C); });
        std::vector<double> ref(y.n);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < C; j++) ref[(size_t)i * C + j] = val(table, (size_t)pick[i] * C + j);
        expect_close("ops/embedding_" + tn, y.p, ref, 0.0, 0.0);
    }
}

void run_cast_copy(uint64_t seed) {
    Rng rng(seed);
    if (selected("ops/cast_any")) {
        const long long n = 500;
        DBuf<float> x((size_t)n), back((size_t)n);
        for (size_t i = 0; i < x.n; i++) x[i] = rng.sym(100.f);
        DBuf<__nv_bfloat16> bf((size_t)n);
        DBuf<__half> hf((size_t)n);
        emu::launch("cast_any", dim3(2), dim3(64), 0, [&] { cast_any(x.p, bf.p, n, 0, 1); });
        emu::launch("cast_any", dim3(2), dim3(64), 0, [&] { cast_any(bf.p, hf.p, n, 1, 2); });
        emu::launch("cast_any", dim3(2), dim3(64), 0, [&] { cast_any(hf.p, back.p, n, 2, 0); });
        std::vector<double> ref_bf((size_t)n), ref_back((size_t)n);
        for (size_t i = 0; i < ref_bf.size(); i++) {
            ref_bf[i] = round_t<__nv_bfloat16>(x[i]);
            ref_back[i] = round_t<__half>((float)ref_bf[i]);
        }
        expect_close("ops/cast_any f32->bf16", bf.p, ref_bf, 0.0, 0.0);
        expect_close("ops/cast_any bf16->f16->f32", back.p, ref_back, 0.0, 0.0);
    }
    if (selected("ops/copy_nd")) {
        // A [2, 3, 4] view with strides (1, 2, 6) (a permuted tensor) gathered into a dense
        // [2, 3, 4], for element sizes 4, 2 and 1.
        const long long n = 24;
        for (int esize : {4, 2, 1}) {
            DBuf<uint8_t> src((size_t)(n * esize)), dst((size_t)(n * esize));
            for (size_t i = 0; i < src.n; i++) src[i] = (uint8_t)rng.range(256);
            emu::launch("copy_nd", dim3(2), dim3(8), 0, [&] {
                copy_nd(src.p, dst.p, n, esize, 1, 1, 1, 1, 1, 2, 3, 4, 0, 0, 0, 0, 0, 1, 2, 6, 0, 0, 0, 0, 0, 12, 4, 1);
            });
            std::vector<double> ref((size_t)(n * esize)), got((size_t)(n * esize));
            for (int a = 0; a < 2; a++)
                for (int b = 0; b < 3; b++)
                    for (int c = 0; c < 4; c++)
                        for (int e = 0; e < esize; e++)
                            ref[(size_t)((a * 12 + b * 4 + c) * esize + e)] = src[(size_t)((a * 1 + b * 2 + c * 6) * esize + e)];
            std::vector<float> gotf(ref.size());
            for (size_t i = 0; i < gotf.size(); i++) gotf[i] = dst[i];
            expect_close("ops/copy_nd esize " + std::to_string(esize), gotf.data(), ref, 0.0, 0.0);
        }
    }
}

}  // namespace

void test_ops() {
    run_all<float>(500);
    run_all<__nv_bfloat16>(501);
    run_all<__half>(502);
    run_cast_copy(503);
}
