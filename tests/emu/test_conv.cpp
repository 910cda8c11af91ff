// kernels/conv3d.cu on the emulator: the implicit-GEMM convolutions (f32 SIMT and bf16 mma)
// with causal context, zero padding, fused upsampling, time interleave, output frame window,
// residual and clamp, plus the small VAE kernels, against double-precision references.
#include "conv3d.cu"

#include <memory>

#include "harness.h"

namespace {

struct ConvCase {
    std::string name;
    int B, Ci, Co, T, Hin, Win, KT, KH, KW;
    bool ctx, up, interleave, bias, resid, clamp;
    int extra_frames;  // out_frames = produced frames + extra, written at out_t0 = extra / 2
};

// y at output frame index (out_t0 + t') for every (b, co', t', h, w), as conv3d.cu's header.
void conv_reference(const ConvCase& c, const std::vector<float>& x, const std::vector<float>& ctx, const std::vector<float>& w,
                    const std::vector<float>& bias, const std::vector<float>& resid, int out_frames, int out_t0, bool bf16,
                    std::vector<double>& y, std::vector<double>& tol) {
    const int H = c.Hin << c.up, W = c.Win << c.up, K = c.Ci * c.KT * c.KH * c.KW;
    const int Cy = c.interleave ? c.Co / 2 : c.Co;
    const size_t plane = (size_t)H * W;
    y.assign((size_t)c.B * Cy * out_frames * plane, NAN);  // frames outside the window: never written
    tol.assign(y.size(), 0.0);
    auto q = [&](float v) { return bf16 ? (double)round_t<__nv_bfloat16>(v) : (double)v; };
    for (int b = 0; b < c.B; b++)
        for (int co = 0; co < c.Co; co++)
            for (int t = 0; t < c.T; t++)
                for (int h = 0; h < H; h++)
                    for (int wq = 0; wq < W; wq++) {
                        double s = 0, mag = 0;
                        for (int ci = 0; ci < c.Ci; ci++)
                            for (int kt = 0; kt < c.KT; kt++)
                                for (int kh = 0; kh < c.KH; kh++)
                                    for (int kw = 0; kw < c.KW; kw++) {
                                        const int ts = t + kt - (c.KT - 1), hs = h + kh - c.KH / 2, ws = wq + kw - c.KW / 2;
                                        if (hs < 0 || hs >= H || ws < 0 || ws >= W) continue;
                                        const size_t sp = (size_t)(hs >> c.up) * c.Win + (ws >> c.up);
                                        float xv;
                                        if (ts >= 0)
                                            xv = x[(((size_t)b * c.Ci + ci) * c.T + ts) * c.Hin * c.Win + sp];
                                        else if (c.ctx)
                                            xv = ctx[(((size_t)b * c.Ci + ci) * (c.KT - 1) + (c.KT - 1 + ts)) * c.Hin * c.Win + sp];
                                        else
                                            xv = 0.f;
                                        const float wv = w[(size_t)co * K + ((ci * c.KT + kt) * c.KH + kh) * c.KW + kw];
                                        s += q(wv) * q(xv);
                                        mag += fabs((double)wv * xv);
                                    }
                        int cy = co, ty = t;
                        if (c.interleave) {
                            cy = co % Cy;
                            ty = 2 * t + co / Cy;
                        }
                        const size_t idx = (((size_t)b * Cy + cy) * out_frames + out_t0 + ty) * plane + (size_t)h * W + wq;
                        if (c.bias) s += bias[(size_t)co];
                        if (c.resid) s += resid[idx];
                        const double e = 1e-5 * mag + 1e-6;  // the reference rounds the operands like the kernel
                        if (c.clamp && (s < -0.5 || s > 0.5)) {
                            s = std::min(0.5, std::max(-0.5, s));
                        }
                        y[idx] = s;
                        tol[idx] = e;
                    }
}

void run_conv(const ConvCase& c, bool bf16, uint64_t seed) {
    const std::string name = std::string(bf16 ? "conv/bf16_mma " : "conv/f32_simt ") + c.name;
    if (!selected(name)) return;
    Rng rng(seed);
    const int H = c.Hin << c.up, W = c.Win << c.up, K = c.Ci * c.KT * c.KH * c.KW;
    const int Cy = c.interleave ? c.Co / 2 : c.Co;
    const int frames = c.interleave ? 2 * c.T : c.T;
    const int out_frames = frames + c.extra_frames, out_t0 = c.extra_frames / 2;
    std::vector<float> x((size_t)c.B * c.Ci * c.T * c.Hin * c.Win), ctx, w((size_t)c.Co * K), bias, resid;
    for (float& v : x) v = rng.sym();
    if (c.ctx) {
        ctx.resize((size_t)c.B * c.Ci * (c.KT - 1) * c.Hin * c.Win);
        for (float& v : ctx) v = rng.sym();
    }
    for (float& v : w) v = rng.sym(0.3f);
    if (c.bias) {
        bias.resize((size_t)c.Co);
        for (float& v : bias) v = rng.sym();
    }
    const size_t ny = (size_t)c.B * Cy * out_frames * H * W;
    if (c.resid) {
        resid.resize(ny);
        for (float& v : resid) v = rng.sym();
    }
    auto upload = [](const std::vector<float>& v) {
        auto d = std::make_unique<DBuf<float>>(v.size());
        if (!v.empty()) memcpy(d->p, v.data(), v.size() * sizeof(float));
        return d;
    };
    auto dx = upload(x), dctx = upload(ctx), dw = upload(w), dbias = upload(bias), dres = upload(resid);
    DBuf<float> y(ny);
    const long long N = (long long)c.T * H * W;
    if (!bf16) {
        const dim3 grid((unsigned)((N + S_BN - 1) / S_BN), (unsigned)((c.Co + S_BM - 1) / S_BM), (unsigned)c.B);
        emu::launch("conv_f32_simt", grid, dim3(256), 0, [&] {
            conv_f32_simt(dx->p, c.ctx ? dctx->p : nullptr, dw->p, c.bias ? dbias->p : nullptr, c.resid ? dres->p : nullptr, y.p, c.B, c.Ci,
                          c.Co, c.T, c.Hin, c.Win, c.KT, c.KH, c.KW, c.up, c.interleave, out_frames, out_t0, c.clamp, -0.5f, 0.5f);
        });
    } else {
        // The weights prepared once (conv_pack_weight_bf16), then the pipelined kernel.
        const int taps = c.KT * c.KH * c.KW;
        const int co_pad = (c.Co + T_BM - 1) / T_BM * T_BM, k_pad = (K + T_BK - 1) / T_BK * T_BK;
        DBuf<__nv_bfloat16> wp((size_t)co_pad * k_pad);
        emu::launch("conv_pack_weight_bf16", dim3(5), dim3(128), 0,
                    [&] { conv_pack_weight_bf16(dw->p, wp.p, c.Co, c.Ci, taps, co_pad, k_pad); });
        const dim3 grid((unsigned)((N + T_BN - 1) / T_BN), (unsigned)(co_pad / T_BM), (unsigned)c.B);
        emu::launch("conv_bf16_mma", grid, dim3(256), CONV_BF16_SMEM, [&] {
            conv_bf16_mma(dx->p, c.ctx ? dctx->p : nullptr, wp.p, c.bias ? dbias->p : nullptr, c.resid ? dres->p : nullptr, y.p, c.B, c.Ci,
                          c.Co, c.T, c.Hin, c.Win, c.KT, c.KH, c.KW, c.up, c.interleave, out_frames, out_t0, c.clamp, -0.5f, 0.5f);
        });
    }
    std::vector<double> ref, tol;
    conv_reference(c, x, ctx, w, bias, resid, out_frames, out_t0, bf16, ref, tol);
    expect_close(name, y.p, ref, tol);
}

// The small kernels, grid-stride loops run with a small grid so every thread loops.
void run_small(uint64_t seed) {
    Rng rng(seed);
    const dim3 grid(3), block(64);
    if (selected("conv/cache_update")) {
        for (bool with_ctx : {true, false})
            for (int T : {1, 3}) {
                const int B = 2, C = 3, nc = 2;
                const long long HW = 7;
                DBuf<float> ctx((size_t)B * C * nc * HW), x((size_t)B * C * T * HW), out((size_t)B * C * nc * HW);
                for (size_t i = 0; i < ctx.n; i++) ctx[i] = rng.sym();
                for (size_t i = 0; i < x.n; i++) x[i] = rng.sym();
                emu::launch("conv_cache_update", grid, block, 0,
                            [&] { conv_cache_update(with_ctx ? ctx.p : nullptr, x.p, out.p, B, C, T, nc, HW); });
                std::vector<double> ref(out.n);
                for (int bc = 0; bc < B * C; bc++)
                    for (int j = 0; j < nc; j++)
                        for (long long s = 0; s < HW; s++) {
                            const int k = T + j;  // index into cat(ctx, x)
                            ref[((size_t)bc * nc + j) * HW + s] =
                                k >= nc ? x[((size_t)bc * T + k - nc) * HW + s] : (with_ctx ? ctx[((size_t)bc * nc + k) * HW + s] : 0.f);
                        }
                expect_close("conv/cache_update T=" + std::to_string(T) + (with_ctx ? " ctx" : " no ctx"), out.p, ref, 0.0, 0.0);
            }
    }
    if (selected("conv/pack_weight_bf16")) {
        // [Co, Ci, taps] f32 -> bf16 [co_pad, k_pad], k = tap * Ci + ci, zero padded: exact.
        const int Co = 70, Ci = 5, taps = 27, co_pad = 128, k_pad = 160;
        DBuf<float> w((size_t)Co * Ci * taps);
        DBuf<__nv_bfloat16> out((size_t)co_pad * k_pad);
        for (size_t i = 0; i < w.n; i++) w[i] = rng.sym();
        emu::launch("conv_pack_weight_bf16", grid, block, 0, [&] { conv_pack_weight_bf16(w.p, out.p, Co, Ci, taps, co_pad, k_pad); });
        std::vector<double> ref(out.n, 0.0);
        for (int m = 0; m < Co; m++)
            for (int ci = 0; ci < Ci; ci++)
                for (int tp = 0; tp < taps; tp++)
                    ref[(size_t)m * k_pad + tp * Ci + ci] = round_t<__nv_bfloat16>(w[((size_t)m * Ci + ci) * taps + tp]);
        std::vector<float> got(out.n);
        for (size_t i = 0; i < out.n; i++) got[i] = emu::bf2f(out[i].bits);
        expect_close("conv/pack_weight_bf16", got.data(), ref, 0.0, 0.0);
    }
    if (selected("conv/upsample")) {
        const long long BCT = 5;
        const int H = 3, W = 4;
        DBuf<float> x((size_t)BCT * H * W), y((size_t)BCT * 4 * H * W);
        for (size_t i = 0; i < x.n; i++) x[i] = rng.sym();
        emu::launch("upsample_nearest2x_f32", grid, block, 0, [&] { upsample_nearest2x_f32(x.p, y.p, BCT, H, W); });
        std::vector<double> ref(y.n);
        for (long long f = 0; f < BCT; f++)
            for (int h = 0; h < 2 * H; h++)
                for (int w = 0; w < 2 * W; w++) ref[((size_t)f * 2 * H + h) * 2 * W + w] = x[((size_t)f * H + h / 2) * W + w / 2];
        expect_close("conv/upsample_nearest2x", y.p, ref, 0.0, 0.0);
    }
    if (selected("conv/interleave")) {
        const int B = 2, C = 3, T = 2;
        const long long HW = 5;
        DBuf<float> x((size_t)B * 2 * C * T * HW), y(x.n);
        for (size_t i = 0; i < x.n; i++) x[i] = rng.sym();
        emu::launch("interleave_time_f32", grid, block, 0, [&] { interleave_time_f32(x.p, y.p, B, C, T, HW); });
        std::vector<double> ref(y.n);
        for (int b = 0; b < B; b++)
            for (int c = 0; c < C; c++)
                for (int t2 = 0; t2 < 2 * T; t2++)
                    for (long long s = 0; s < HW; s++)
                        ref[(((size_t)b * C + c) * 2 * T + t2) * HW + s] = x[(((size_t)b * 2 * C + (t2 % 2) * C + c) * T + t2 / 2) * HW + s];
        expect_close("conv/interleave_time", y.p, ref, 0.0, 0.0);
    }
    if (selected("conv/channel_rms_norm")) {
        for (int silu : {0, 1}) {
            const int B = 2, C = 6;
            const long long N = 11;
            DBuf<float> x((size_t)B * C * N), g((size_t)C), y(x.n);
            for (size_t i = 0; i < x.n; i++) x[i] = rng.sym();
            for (int i = 0; i < C; i++) g[(size_t)i] = 0.5f + rng.uniform();
            for (int c = 0; c < C; c++) x[(size_t)c * N + 3] = 0.f;  // an all-zero pixel: norm clamped to 1e-12
            emu::launch("vae_channel_rms_norm_f32", grid, block, 0, [&] { vae_channel_rms_norm_f32(x.p, g.p, y.p, B, C, N, silu); });
            std::vector<double> ref(y.n);
            for (int b = 0; b < B; b++)
                for (long long n = 0; n < N; n++) {
                    double ss = 0;
                    for (int c = 0; c < C; c++) ss += (double)x[((size_t)b * C + c) * N + n] * x[((size_t)b * C + c) * N + n];
                    const double s = std::sqrt((double)C) / std::max(std::sqrt(ss), 1e-12);
                    for (int c = 0; c < C; c++) {
                        double u = x[((size_t)b * C + c) * N + n] * s * g[(size_t)c];
                        if (silu) u = u / (1 + std::exp(-u));
                        ref[((size_t)b * C + c) * N + n] = u;
                    }
                }
            expect_close(std::string("conv/channel_rms_norm") + (silu ? "+silu" : ""), y.p, ref, 1e-6, 1e-5);
        }
    }
    if (selected("conv/copy2d")) {
        // Rows 3 x cols 4 of a [5, 6] source at (1, 2), transposed into a [4, 3] destination at offset 1.
        DBuf<float> x(30), y(14);
        for (size_t i = 0; i < x.n; i++) x[i] = rng.sym();
        for (size_t i = 0; i < y.n; i++) y[i] = 7.f;
        emu::launch("vae_copy2d_f32", grid, block, 0, [&] { vae_copy2d_f32(x.p, y.p, 3, 4, 1 * 6 + 2, 6, 1, 1, 1, 3); });
        std::vector<double> ref(y.n, 7.0);
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) ref[(size_t)(1 + r + c * 3)] = x[(size_t)(8 + r * 6 + c)];
        expect_close("conv/copy2d", y.p, ref, 0.0, 0.0);
    }
    if (selected("conv/softmax_dim0")) {
        const int J = 9, I = 200;
        DBuf<float> s((size_t)J * I);
        std::vector<float> in(s.n);
        for (size_t i = 0; i < s.n; i++) s[i] = in[i] = rng.sym(4.f);
        emu::launch("vae_softmax_dim0_f32", grid, block, 0, [&] { vae_softmax_dim0_f32(s.p, J, I); });
        std::vector<double> ref(s.n);
        for (int i = 0; i < I; i++) {
            double m = -INFINITY, sum = 0;
            for (int j = 0; j < J; j++) m = std::max(m, (double)in[(size_t)j * I + i]);
            for (int j = 0; j < J; j++) sum += std::exp(in[(size_t)j * I + i] - m);
            for (int j = 0; j < J; j++) ref[(size_t)j * I + i] = std::exp(in[(size_t)j * I + i] - m) / sum;
        }
        expect_close("conv/softmax_dim0", s.p, ref, 1e-6, 1e-5);
    }
}

}  // namespace

void test_conv() {
    // {name, B, Ci, Co, T, Hin, Win, KT, KH, KW, ctx, up, interleave, bias, resid, clamp, extra_frames}
    const std::vector<ConvCase> cases = {
        {"causal 3x3x3 with cache", 1, 5, 7, 3, 5, 6, 3, 3, 3, true, false, false, true, false, false, 0},
        {"causal 3x3x3 zero pad b2", 2, 4, 9, 2, 4, 5, 3, 3, 3, false, false, false, false, false, false, 0},
        {"1x1x1 Co 70 (two row tiles)", 1, 70, 70, 2, 9, 9, 1, 1, 1, false, false, false, true, false, false, 0},
        {"upsample 2x then 3x3", 1, 6, 9, 2, 4, 5, 1, 3, 3, false, true, false, true, false, false, 0},
        {"time_conv interleave", 1, 4, 8, 3, 3, 4, 3, 1, 1, true, false, true, true, false, false, 0},
        {"frame window + resid + clamp", 2, 3, 5, 2, 4, 4, 3, 3, 3, true, false, false, true, true, true, 3},
        {"K 432 (14 k-tiles)", 1, 16, 12, 2, 3, 5, 3, 3, 3, true, false, false, true, false, false, 0},
        // Ci a multiple of 16 (the one-tap-per-run loader path) over many k-tiles, two row tiles
        // of Co, N not a multiple of the 128-pixel tile, cached frames, residual and clamp.
        {"Ci 32 3x3x3 ctx Co 80 resid clamp", 1, 32, 80, 2, 5, 7, 3, 3, 3, true, false, false, true, true, true, 0},
        {"Ci 48 upsample 3x3 b2", 2, 48, 24, 1, 3, 4, 1, 3, 3, false, true, false, true, false, false, 0},
        {"Ci 16 time_conv interleave ctx + window", 1, 16, 32, 2, 4, 5, 3, 1, 1, true, false, true, false, false, false, 2},
        {"Ci 3 1x1x1 odd", 1, 3, 5, 3, 5, 3, 1, 1, 1, false, false, false, true, false, false, 0},
    };
    uint64_t seed = 100;
    for (const ConvCase& c : cases) {
        run_conv(c, false, seed);
        run_conv(c, true, seed);
        seed++;
    }
    run_small(seed);
}
