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
        // The 16-byte vector path (aligned buffers above) and the scalar path (the same values
        // one element off alignment) give identical results; in place (y = a) too; and the
        // division-free index walk of add_bcast gives the same with a grid-stride loop of
        // many steps (1 block of 32 threads: stride 32, period 37).
        DBuf<T> a1((size_t)n + 1), b1((size_t)n + 1), y1((size_t)n + 1);
        for (long long i = 0; i < n; i++) a1[(size_t)i + 1] = a[(size_t)i], b1[(size_t)i + 1] = b[(size_t)i];
        auto same = [&](const std::string& what, const T* got, const T* want) {
            std::vector<double> w((size_t)n);
            for (size_t i = 0; i < w.size(); i++) w[i] = to_float(want[i]);
            expect_close("ops/elementwise_" + tn + " " + what, got, w, 0.0, 0.0);
        };
        DBuf<T> yref((size_t)n);
        emu::launch("axpby", small_grid, b256, 0, [&] { axpby(a.p, b.p, yref.p, n, 0.75f, -1.5f); });
        emu::launch("axpby", small_grid, b256, 0, [&] { axpby(a1.p + 1, b1.p + 1, y1.p + 1, n, 0.75f, -1.5f); });
        same("axpby unaligned = aligned", y1.p + 1, yref.p);
        emu::launch("axpby", small_grid, b256, 0, [&] { axpby(a.p, nullptr, yref.p, n, 0.75f, 0.f); });
        emu::launch("axpby", small_grid, b256, 0, [&] { axpby(a1.p + 1, nullptr, y1.p + 1, n, 0.75f, 0.f); });
        same("axpby without b unaligned = aligned", y1.p + 1, yref.p);
        emu::launch("mul", small_grid, b256, 0, [&] { mul(a.p, b.p, yref.p, n); });
        emu::launch("mul", small_grid, b256, 0, [&] { mul(a1.p + 1, b1.p + 1, a1.p + 1, n); });
        same("mul unaligned in place = aligned", a1.p + 1, yref.p);
        emu::launch("add_bcast", small_grid, b256, 0, [&] { add_bcast(a.p, b.p, yref.p, n, 37); });
        emu::launch("add_bcast", dim3(1), dim3(32), 0, [&] { add_bcast(a.p, b.p, y.p, n, 37); });
        same("add_bcast long grid-stride walk", y.p, yref.p);
        auto act = (void (*)(const T*, T*, long long, int))PICK(act, T);
        emu::launch("act", small_grid, b256, 0, [&] { act(b1.p + 1, y1.p + 1, n, 1); });
        emu::launch("act", small_grid, b256, 0, [&] { act(b.p, y.p, n, 1); });
        same("act unaligned = aligned", y1.p + 1, y.p);
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
        // The division-free (batch, channel) walk over many grid-stride steps (stride 32 < C S)
        // gives the same bits as one element per thread.
        DBuf<T> out2(x.n);
        emu::launch("gated_residual", dim3(1), dim3(32), 0, [&] { f(x.p, yv.p, gate, ld, out2.p, B * S * C, S, C); });
        std::vector<double> first(x.n);
        for (size_t i = 0; i < first.size(); i++) first[i] = to_float(out[i]);
        expect_close("ops/gated_residual_" + tn + " long grid-stride walk", out2.p, first, 0.0, 0.0);
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

void run_copy_nd(Rng& rng);

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
    if (selected("ops/copy_nd")) run_copy_nd(rng);
}

// copy_nd's division magic for d (1 <= d < 2^31), as src/runtime/copy.rs computes it.
void copy_magic(unsigned d, unsigned& mul, unsigned& shr) {
    unsigned l = 0;
    while ((1ull << l) < d) l++;
    shr = l;
    mul = (unsigned)((((1ull << 32) * ((1ull << l) - d)) / d) + 1);
}

// One copy_nd launch: index space `shape` (row-major), element strides ss / ds, elements of
// `esize` bytes, 32-bit (magic) or 64-bit index math; compared byte for byte with a plain loop,
// and every destination byte outside the index space must stay 0xff.
void copy_case(Rng& rng, const std::string& name, const std::vector<long long>& shape, const std::vector<long long>& ss,
               const std::vector<long long>& ds, int esize, bool wide) {
    const std::string full = "ops/copy_nd " + name + " esize " + std::to_string(esize) + (wide ? " wide" : " narrow");
    if (!selected(full)) return;
    const int rank = (int)shape.size();
    long long n = 1, smax = 0, dmax = 0;
    for (int k = 0; k < rank; k++) {
        n *= shape[(size_t)k];
        smax += (shape[(size_t)k] - 1) * ss[(size_t)k];
        dmax += (shape[(size_t)k] - 1) * ds[(size_t)k];
    }
    DBuf<uint8_t> src((size_t)((smax + 1) * esize)), dst((size_t)((dmax + 1) * esize));
    for (size_t i = 0; i < src.n; i++) src[i] = (uint8_t)rng.range(255);  // never 0xff
    long long sh[8] = {1, 1, 1, 1, 1, 1, 1, 1}, s8[8] = {0}, d8[8] = {0};
    unsigned mul[8] = {0}, shr[8] = {0};
    for (int k = 0; k < rank; k++) {
        sh[k] = shape[(size_t)k];
        s8[k] = ss[(size_t)k];
        d8[k] = ds[(size_t)k];
        if (!wide) copy_magic((unsigned)sh[k], mul[k], shr[k]);
    }
    emu::launch("copy_nd", dim3(3), dim3(32), 0, [&] {
        copy_nd(src.p, dst.p, n, esize, rank, wide ? 1 : 0, sh[0], sh[1], sh[2], sh[3], sh[4], sh[5], sh[6], sh[7], s8[0], s8[1], s8[2],
                s8[3], s8[4], s8[5], s8[6], s8[7], d8[0], d8[1], d8[2], d8[3], d8[4], d8[5], d8[6], d8[7], mul[0], mul[1], mul[2], mul[3],
                mul[4], mul[5], mul[6], mul[7], shr[0], shr[1], shr[2], shr[3], shr[4], shr[5], shr[6], shr[7]);
    });
    std::vector<double> ref(dst.n, 255.0);
    for (long long i = 0; i < n; i++) {
        long long x = i, so = 0, dof = 0;
        for (int k = rank - 1; k >= 0; k--) {
            const long long idx = x % shape[(size_t)k];
            x /= shape[(size_t)k];
            so += idx * ss[(size_t)k];
            dof += idx * ds[(size_t)k];
        }
        for (int e = 0; e < esize; e++) ref[(size_t)(dof * esize + e)] = src[(size_t)(so * esize + e)];
    }
    std::vector<float> got(dst.n);
    for (size_t i = 0; i < got.size(); i++) got[i] = dst[i];
    expect_close(full, got.data(), ref, 0.0, 0.0);
}

// Dense row-major strides of `shape`, permuted by `perm` (the view of a transpose) or padded.
std::vector<long long> dense(const std::vector<long long>& shape) {
    std::vector<long long> st(shape.size());
    long long s = 1;
    for (size_t k = shape.size(); k-- > 0;) {
        st[k] = s;
        s *= shape[k];
    }
    return st;
}

void run_copy_nd(Rng& rng) {
    // The pre-planning case: a [2, 3, 4] view with strides (1, 2, 6) gathered.
    for (int esize : {4, 2, 1}) copy_case(rng, "permuted [2,3,4]", {2, 3, 4}, {1, 2, 6}, {12, 4, 1}, esize, false);
    // Ranks 1..6 with odd sizes: gathers from permuted sources, scatters into padded
    // destinations, both paths, every element size.
    struct Shape {
        const char* name;
        std::vector<long long> shape, ss, ds;
    };
    std::vector<Shape> shapes = {
        {"rank 1 strided 37", {37}, {3}, {1}},
        {"rank 2 transpose 5x7", {5, 7}, {1, 5}, {7, 1}},
        {"rank 3 narrow rows 2x5x9 (video of [video; text])", {2, 5, 9}, {8 * 9, 9, 1}, {5 * 9, 9, 1}},
        {"rank 4 permute 3x2x5x3", {3, 2, 5, 3}, {1, 45, 3, 15}, {30, 15, 3, 1}},
        {"rank 5 scatter 2x3x1x5x3 padded", {2, 3, 1, 5, 3}, {45, 15, 15, 3, 1}, {100, 30, 30, 5, 1}},
        {"rank 6 patchify 2x3x2x3x2x5", {2, 3, 2, 3, 2, 5}, {180, 2, 90, 30, 1, 6}, dense({2, 3, 2, 3, 2, 5})},
        {"rank 8 all 2x3", {2, 3, 2, 3, 2, 3, 2, 3}, {1, 2, 6, 12, 36, 72, 216, 432}, dense({2, 3, 2, 3, 2, 3, 2, 3})},
    };
    for (const Shape& sh : shapes)
        for (int esize : {1, 2, 4, 8, 16})
            for (bool wide : {false, true}) {
                if ((esize == 8 || esize == 16) && !(sh.shape.size() == 3 || sh.shape.size() == 1)) continue;  // widened copies are short
                copy_case(rng, sh.name, sh.shape, sh.ss, sh.ds, esize, wide);
            }
    // A divisor above 2^16 on the 32-bit path (the magic's multiply-high matters).
    copy_case(rng, "large dim 3x65537", {3, 65537}, {65537, 1}, {65539, 1}, 1, false);
}

}  // namespace

void test_ops() {
    run_all<float>(500);
    run_all<__nv_bfloat16>(501);
    run_all<__half>(502);
    run_cast_copy(503);
}
