// kernels/attention.cu and kernels/attention_hopper.cu on the emulator: flash_attn_fwd_d64,
// flash_attn_hopper_d64 (wgmma / TMA / mbarriers on the emulated Hopper subset) and attn_naive_*
// against a double-precision softmax(scale Q K^T + bias) V over segment lists (the joint
// [video; text] layout of the MMDiT, fused-QKV row strides, padded batch strides, causal masks,
// T5 bias). Outputs: one per query segment (OUT_ARGS), by default each its own buffer with
// padded rows and batches whose padding must stay untouched; `joint_out` cases write views of
// one [B, Sq, H*D] buffer as attention() does.
#include "attention.cu"
#include "attention_hopper.cu"

#include <memory>

#include "harness.h"

namespace {

// One operand (q, k or v) as up to 4 segments; each segment its own buffer [B][bs] whose rows
// (stride rs) hold H*D values at element offset `off` (a fused QKV row puts q, k, v side by side).
template <typename T>
struct Operand {
    struct Seg {
        int n;
        long long rs, bs, off;
        std::unique_ptr<DBuf<T>> buf;
    };
    std::vector<Seg> segs;
    int rows() const {
        int s = 0;
        for (const Seg& g : segs) s += g.n;
        return s;
    }
    // Row j (over the concatenation) of batch b.
    const T* row(int b, int j) const {
        for (const Seg& g : segs) {
            if (j < g.n) return g.buf->p + g.off + (long long)b * g.bs + (long long)j * g.rs;
            j -= g.n;
        }
        return nullptr;
    }
    const void* ptr(int i) const { return i < (int)segs.size() ? (const void*)(segs[(size_t)i].buf->p + segs[(size_t)i].off) : ptr(0); }
    int len(int i) const { return i < (int)segs.size() ? segs[(size_t)i].n : 0; }
    long long rs(int i) const { return i < (int)segs.size() ? segs[(size_t)i].rs : 0; }
    long long bs(int i) const { return i < (int)segs.size() ? segs[(size_t)i].bs : 0; }
};

#define SEG_PASS(X)                                                                                                    \
    X.ptr(0), X.ptr(1), X.ptr(2), X.ptr(3), X.len(0), X.len(1), X.len(2), X.len(3), X.rs(0), X.rs(1), X.rs(2), X.rs(3), \
        X.bs(0), X.bs(1), X.bs(2), X.bs(3)

#define OUT_PASS(O) O.ptr(0), O.ptr(1), O.ptr(2), O.ptr(3), O.rs(0), O.rs(1), O.rs(2), O.rs(3), O.bs(0), O.bs(1), O.bs(2), O.bs(3)

// The outputs of the query segments of lengths `lens`: separate buffers (segment i: rows of HD at
// stride HD + 2 + 4 i, batches padded by 6 + 2 i elements; even strides, as the flash kernels'
// 4-byte stores need) or (joint) views of one dense [B, Sq, HD] buffer. Buffers start as NaN
// bytes (DBuf), so padding the kernel must not write stays 0xff.
template <typename T>
struct Outputs {
    struct Seg {
        int n;
        long long rs, bs;
        T* p;
    };
    std::vector<std::unique_ptr<DBuf<T>>> bufs;
    std::vector<Seg> segs;
    int B, HD;
    Outputs(int B_, int HD_, const std::vector<int>& lens, bool joint) : B(B_), HD(HD_) {
        int sq = 0;
        for (int n : lens) sq += n;
        if (joint) bufs.push_back(std::make_unique<DBuf<T>>((size_t)B * sq * HD));
        int off = 0;
        for (size_t i = 0; i < lens.size(); i++) {
            Seg g;
            g.n = lens[i];
            if (joint) {
                g.rs = HD;
                g.bs = (long long)sq * HD;
                g.p = bufs[0]->p + (size_t)off * HD;
            } else {
                g.rs = HD + 2 + 4 * (long long)i;
                g.bs = (long long)g.n * g.rs + 6 + 2 * (long long)i;
                bufs.push_back(std::make_unique<DBuf<T>>((size_t)(B * g.bs)));
                g.p = bufs.back()->p;
            }
            segs.push_back(g);
            off += lens[i];
        }
    }
    void* ptr(int i) const { return i < (int)segs.size() ? (void*)segs[(size_t)i].p : (void*)segs[0].p; }
    long long rs(int i) const { return i < (int)segs.size() ? segs[(size_t)i].rs : 0; }
    long long bs(int i) const { return i < (int)segs.size() ? segs[(size_t)i].bs : 0; }
    // Dense [B, Sq, HD] copy of what the kernel wrote.
    std::vector<T> gather() const {
        std::vector<T> out;
        for (int b = 0; b < B; b++)
            for (const Seg& g : segs)
                for (int r = 0; r < g.n; r++) {
                    const T* row = g.p + (long long)b * g.bs + (long long)r * g.rs;
                    out.insert(out.end(), row, row + HD);
                }
        return out;
    }
    // Elements outside every segment's rows that are no longer poison (0xff bytes).
    size_t touched_padding() const {
        size_t bad = 0;
        for (const auto& buf : bufs) {
            std::vector<char> row_elem(buf->n, 0);
            for (const Seg& g : segs)
                for (int b = 0; b < B; b++)
                    for (int r = 0; r < g.n; r++) {
                        const long long o = (g.p - buf->p) + (long long)b * g.bs + (long long)r * g.rs;
                        if (o < 0 || o + HD > (long long)buf->n) continue;  // another buffer's segment
                        for (int c = 0; c < HD; c++) row_elem[(size_t)(o + c)] = 1;
                    }
            const unsigned char* bytes = reinterpret_cast<const unsigned char*>(buf->p);
            for (size_t i = 0; i < buf->n; i++) {
                if (row_elem[i]) continue;
                for (size_t k = 0; k < sizeof(T); k++)
                    if (bytes[i * sizeof(T) + k] != 0xff) {
                        bad++;
                        break;
                    }
            }
        }
        return bad;
    }
};

// Checks the outputs against the reference and that no padding was written.
template <typename T>
void check_outputs(const std::string& name, const Outputs<T>& out, const std::vector<double>& ref, double atol, double rtol) {
    const std::vector<T> got = out.gather();
    if (!expect_close(name, got.data(), ref, atol, rtol)) return;
    const size_t bad = out.touched_padding();
    if (bad) {
        printf("FAIL %s: %zu padding elements of the outputs written\n", name.c_str(), bad);
        failures()++;
    }
}

template <typename T>
std::vector<int> seg_lens(const Operand<T>& o) {
    std::vector<int> lens;
    for (const auto& g : o.segs) lens.push_back(g.n);
    return lens;
}

struct SegSpec {
    int n;
    int row_pad;    // extra elements per row (rs = H*D + pad, a multiple of 8 for the flash kernel)
    int batch_pad;  // extra rows' worth of elements per batch
    int off;        // element offset of the operand inside its row
};

template <typename T>
Operand<T> make_operand(Rng& rng, int B, int HD, const std::vector<SegSpec>& spec) {
    Operand<T> o;
    for (const SegSpec& s : spec) {
        typename Operand<T>::Seg g;
        g.n = s.n;
        g.rs = HD + s.row_pad;
        g.bs = (long long)s.n * g.rs + s.batch_pad;
        g.off = s.off;
        const size_t total = (size_t)(B * g.bs + g.off);
        g.buf = std::make_unique<DBuf<T>>(total);
        for (size_t i = 0; i < total; i++) (*g.buf)[i] = to_t<T>(rng.sym(2.f));
        o.segs.push_back(std::move(g));
    }
    return o;
}

struct Case {
    std::string name;
    int B, H, D;
    std::vector<SegSpec> q, kv;
    bool causal, bias;
    std::vector<SegSpec> v = {};  // the values' segments when they differ from the keys' (same total)
    bool joint_out = false;       // views of one [B, Sq, H*D] output instead of separate buffers
};

// Reference: softmax over keys in double from the stored (rounded) inputs.
template <typename T>
std::vector<double> reference(const Operand<T>& q, const Operand<T>& k, const Operand<T>& v, const float* bias, int B, int H, int D,
                              float scale, bool causal) {
    const int Sq = q.rows(), Sk = k.rows();
    std::vector<double> out((size_t)B * Sq * H * D, 0.0), s((size_t)Sk);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Sq; i++) {
                const T* qr = q.row(b, i) + h * D;
                double mx = -INFINITY;
                for (int j = 0; j < Sk; j++) {
                    if (causal && j > i) {
                        s[(size_t)j] = -INFINITY;
                        continue;
                    }
                    const T* kr = k.row(b, j) + h * D;
                    double dot = 0;
                    for (int c = 0; c < D; c++) dot += (double)to_float(qr[c]) * to_float(kr[c]);
                    s[(size_t)j] = dot * scale + (bias ? bias[((size_t)h * Sq + i) * Sk + j] : 0.0);
                    mx = std::max(mx, s[(size_t)j]);
                }
                double l = 0;
                for (int j = 0; j < Sk; j++) l += s[(size_t)j] = std::exp(s[(size_t)j] - mx);
                double* o = &out[(((size_t)b * Sq + i) * H + h) * D];
                for (int j = 0; j < Sk; j++) {
                    if (s[(size_t)j] == 0) continue;
                    const T* vr = v.row(b, j) + h * D;
                    for (int c = 0; c < D; c++) o[c] += s[(size_t)j] / l * to_float(vr[c]);
                }
            }
    return out;
}

template <typename T>
void run_case(const Case& c, bool flash, uint64_t seed) {
    const std::string name = std::string(flash ? "attention/flash_d64 " : "attention/naive_") + (flash ? "" : tname<T>()) +
                             (flash ? "" : " ") + c.name + (c.joint_out ? " [joint output]" : "");
    if (!selected(name)) return;
    Rng rng(seed);
    const int HD = c.H * c.D;
    Operand<T> q = make_operand<T>(rng, c.B, HD, c.q);
    Operand<T> k = make_operand<T>(rng, c.B, HD, c.kv);
    Operand<T> v = make_operand<T>(rng, c.B, HD, c.v.empty() ? c.kv : c.v);
    const int Sq = q.rows(), Sk = k.rows();
    std::unique_ptr<DBuf<float>> bias;
    if (c.bias) {
        bias = std::make_unique<DBuf<float>>((size_t)c.H * Sq * Sk);
        for (size_t i = 0; i < bias->n; i++) (*bias)[i] = rng.sym(3.f);
    }
    const float* bp = bias ? bias->p : nullptr;
    Outputs<T> out(c.B, HD, seg_lens(q), c.joint_out);
    const float scale = 1.f / std::sqrt((float)c.D);
    if (flash) {
        emu::launch("flash_attn_fwd_d64", dim3((unsigned)(Sq + fa::BM - 1) / fa::BM, (unsigned)c.H, (unsigned)c.B), dim3(fa::THREADS),
                    fa::SMEM_BYTES, [&] {
                        flash_attn_fwd_d64(SEG_PASS(q), SEG_PASS(k), SEG_PASS(v), OUT_PASS(out), bp, c.H, Sq, Sk,
                                           scale * fa::LOG2E, c.causal);
                    });
    } else {
        auto kernel = [&] {
            if constexpr (std::is_same<T, float>::value)
                attn_naive_f32(SEG_PASS(q), SEG_PASS(k), SEG_PASS(v), OUT_PASS(out), bp, c.H, c.D, Sq, Sk, scale, c.causal);
            else if constexpr (std::is_same<T, __nv_bfloat16>::value)
                attn_naive_bf16(SEG_PASS(q), SEG_PASS(k), SEG_PASS(v), OUT_PASS(out), bp, c.H, c.D, Sq, Sk, scale, c.causal);
            else
                attn_naive_f16(SEG_PASS(q), SEG_PASS(k), SEG_PASS(v), OUT_PASS(out), bp, c.H, c.D, Sq, Sk, scale, c.causal);
        };
        emu::launch("attn_naive", dim3((unsigned)(Sq + naive::WARPS - 1) / naive::WARPS, (unsigned)c.H, (unsigned)c.B),
                    dim3(naive::WARPS * 32), 0, kernel);
    }
    const std::vector<double> ref = reference(q, k, v, bp, c.B, c.H, c.D, scale, c.causal);
    // Outputs are weighted means of |v| <= 2. The flash kernel rounds P to bf16 before P V
    // (relative 2^-9 per weight) and the output to bf16; the naive kernels round the output.
    const double atol = flash ? 2e-2 : 4 * eps_t<T>() + 1e-5;
    const double rtol = flash ? 1e-2 : 2 * eps_t<T>();
    check_outputs(name, out, ref, atol, rtol);
}

// The tensor map of one segment as the launcher (src/ops/attention_hopper.rs) makes it: rank 3
// {H*D, n, B}, byte strides {rs, bs}, box {64, 128, 1}, bf16, SWIZZLE_128B, OOB zero fill.
TmaDesc seg_map(const Operand<__nv_bfloat16>& o, int i, int B, int HD) {
    const int s = i < (int)o.segs.size() ? i : 0;
    const auto& g = o.segs[(size_t)s];
    const uint64_t dims[3] = {(uint64_t)HD, (uint64_t)g.n, (uint64_t)B};
    const uint64_t strides[2] = {(uint64_t)g.rs * 2, (uint64_t)g.bs * 2};
    const uint32_t box[3] = {64, (uint32_t)fa3::BN, 1};
    const uint32_t es[3] = {1, 1, 1};
    // Encoded into an explicitly aligned buffer (the driver wants 64 bytes; g++ does not
    // always align a TmaDesc temporary).
    alignas(64) unsigned char buf[128];
    const int rc = emu::tensor_map_encode_tiled(buf, emu::TMAP_BFLOAT16, 3, (void*)(g.buf->p + g.off), dims, strides, box, es, 0,
                                                emu::TMAP_SWIZZLE_128B, 2, 0);
    if (rc != 0) emu::fail("attention/hopper: the tensor map of segment %d was rejected (%d)", s, rc);
    TmaDesc m;
    memcpy(&m, buf, sizeof m);
    return m;
}

void run_hopper_case(const Case& c, uint64_t seed) {
    using T = __nv_bfloat16;
    const std::string name = "attention/hopper_d64 " + c.name + (c.joint_out ? " [joint output]" : "");
    if (!selected(name)) return;
    Rng rng(seed);
    const int HD = c.H * c.D;
    Operand<T> q = make_operand<T>(rng, c.B, HD, c.q);
    Operand<T> k = make_operand<T>(rng, c.B, HD, c.kv);
    Operand<T> v = make_operand<T>(rng, c.B, HD, c.kv);
    const int Sq = q.rows(), Sk = k.rows();
    std::unique_ptr<DBuf<float>> bias;
    if (c.bias) {
        bias = std::make_unique<DBuf<float>>((size_t)c.H * Sq * Sk);
        for (size_t i = 0; i < bias->n; i++) (*bias)[i] = rng.sym(3.f);
    }
    const float* bp = bias ? bias->p : nullptr;
    Outputs<T> out(c.B, HD, seg_lens(q), c.joint_out);
    const float scale = 1.f / std::sqrt((float)c.D);
    TmaDesc tq[4], tk[4], tv[4];
    for (int i = 0; i < 4; i++) {
        tq[i] = seg_map(q, i, c.B, HD);
        tk[i] = seg_map(k, i, c.B, HD);
        tv[i] = seg_map(v, i, c.B, HD);
    }
    unsigned tiles = 0;
    for (const auto& g : q.segs) tiles += (unsigned)((g.n + fa3::BM - 1) / fa3::BM);
    emu::launch("flash_attn_hopper_d64", dim3(tiles, (unsigned)c.H, (unsigned)c.B), dim3(fa3::THREADS), fa3::SMEM_BYTES, [&] {
        flash_attn_hopper_d64(tq[0], tq[1], tq[2], tq[3], tk[0], tk[1], tk[2], tk[3], tv[0], tv[1], tv[2], tv[3], q.len(0), q.len(1),
                              q.len(2), q.len(3), k.len(0), k.len(1), k.len(2), k.len(3), OUT_PASS(out), bp, c.H,
                              Sq, Sk, scale * fa3::LOG2E, c.causal);
    });
    const std::vector<double> ref = reference(q, k, v, bp, c.B, c.H, c.D, scale, c.causal);
    // As the flash kernel: P rounded to bf16 before P V, the output to bf16.
    check_outputs(name, out, ref, 2e-2, 1e-2);
}

}  // namespace

void test_attention() {
    // {n, row_pad, batch_pad, off}
    const std::vector<Case> flash_cases = {
        {"one tile", 1, 1, 64, {{64, 0, 0, 0}}, {{64, 0, 0, 0}}, false, false},
        {"joint 45+13 x3 heads b2", 2, 3, 64, {{45, 0, 0, 0}, {13, 0, 0, 0}}, {{45, 0, 0, 0}, {13, 0, 0, 0}}, false, false},
        // Video rows from a fused QKV projection (row stride 3*H*D, q/k/v at offsets 0 / H*D / 2*H*D
        // are separate buffers here, same strides) plus padded batches; text segment of 33.
        {"fused strides 150+33 b2", 2, 2, 64, {{150, 256, 24, 0}, {33, 0, 0, 0}}, {{150, 256, 24, 128}, {33, 8, 16, 8}}, false, false},
        {"context_pre_only 100 x (100+29)", 1, 2, 64, {{100, 0, 0, 0}}, {{100, 0, 0, 0}, {29, 0, 0, 0}}, false, false},
        {"causal 200 bias", 1, 2, 64, {{200, 0, 0, 0}}, {{200, 0, 0, 0}}, true, true},
        {"bias 70 x (20+111)", 2, 1, 64, {{70, 0, 0, 0}}, {{20, 0, 0, 0}, {111, 0, 0, 0}}, false, true},
        {"four segments", 1, 1, 64, {{10, 0, 0, 0}, {20, 8, 0, 0}, {30, 0, 8, 0}, {7, 0, 0, 8}}, {{1, 0, 0, 0}, {64, 0, 0, 0}, {3, 0, 0, 0}, {65, 0, 0, 0}}, false, false},
        {"causal 130 x 130 b2", 2, 1, 64, {{130, 0, 0, 0}}, {{130, 0, 0, 0}}, true, false},
        {"long keys 140 x 1100 (18 tiles)", 1, 1, 64, {{140, 0, 0, 0}}, {{1000, 0, 0, 0}, {100, 0, 0, 0}}, false, true},
        // Key tiles restart at every segment (of K or of V): segments shorter than a tile, exact
        // multiples of BN = 64, and K and V cut at different places.
        {"segments 64+128+64 (BN multiples) x 256 queries", 1, 1, 64, {{128, 0, 0, 0}, {128, 0, 0, 0}}, {{64, 0, 0, 0}, {128, 8, 0, 0}, {64, 0, 8, 0}}, false, false},
        {"four short segments 5+70+2+130 strided bias", 1, 2, 64, {{33, 0, 0, 0}}, {{5, 8, 0, 0}, {70, 0, 16, 0}, {2, 0, 0, 8}, {130, 24, 0, 0}}, false, true},
        {"three segments 63+1+65 b2", 2, 1, 64, {{40, 0, 0, 0}, {9, 0, 0, 0}}, {{63, 0, 0, 0}, {1, 0, 0, 0}, {65, 0, 0, 0}}, false, false},
        {"k 45+13, v 20+38 (different cuts)", 1, 2, 64, {{30, 0, 0, 0}}, {{45, 0, 0, 0}, {13, 8, 0, 0}}, false, false, {{20, 0, 8, 0}, {38, 0, 0, 0}}},
        {"k 100, v 1+64+35", 1, 1, 64, {{17, 0, 0, 0}}, {{100, 0, 0, 0}}, false, true, {{1, 0, 0, 0}, {64, 8, 0, 0}, {35, 0, 0, 0}}},
        // Causal with Sq != Sk (key j masked for query i when j > i, positions over the
        // concatenation): fewer queries than keys, more queries than keys, with bias and segments.
        {"causal 100 x 300 segments", 1, 1, 64, {{60, 0, 0, 0}, {40, 0, 0, 0}}, {{200, 0, 0, 0}, {100, 8, 0, 0}}, true, false},
        {"causal 300 x 70 bias", 1, 1, 64, {{300, 0, 0, 0}}, {{50, 0, 0, 0}, {20, 0, 0, 0}}, true, true},
        {"causal 150 x (64+1+90) bias b2", 2, 1, 64, {{150, 0, 0, 0}}, {{64, 0, 0, 0}, {1, 0, 0, 0}, {90, 8, 8, 0}}, true, true},
    };
    // The single-output layout of attention() (views of one [B, Sq, H*D] tensor).
    const std::vector<Case> joint_cases = {
        {"joint 45+13 x3 heads b2", 2, 3, 64, {{45, 0, 0, 0}, {13, 0, 0, 0}}, {{45, 0, 0, 0}, {13, 0, 0, 0}}, false, false, {}, true},
        {"four segments", 1, 1, 64, {{10, 0, 0, 0}, {20, 8, 0, 0}, {30, 0, 8, 0}, {7, 0, 0, 8}}, {{1, 0, 0, 0}, {64, 0, 0, 0}, {3, 0, 0, 0}, {65, 0, 0, 0}}, false, false, {}, true},
    };
    uint64_t seed = 1;
    for (const Case& c : flash_cases) run_case<__nv_bfloat16>(c, true, seed++);
    for (const Case& c : joint_cases) run_case<__nv_bfloat16>(c, true, seed++);
    // A two-segment key list whose boundary falls at every offset class of a tile (the first
    // segment's length mod 64), with a partial second segment; one CTA of 20 queries.
    for (int n1 : {1, 7, 16, 31, 33, 50, 63, 64, 65, 100}) {
        const Case c{"boundary at " + std::to_string(n1) + " of (" + std::to_string(n1) + "+37)", 1, 1, 64, {{20, 0, 0, 0}},
                     {{n1, 0, 0, 0}, {37, 8, 0, 0}}, false, n1 % 2 == 1};
        run_case<__nv_bfloat16>(c, true, seed++);
    }

    // The Hopper kernel: every flash case (its tiles are per segment, 128 keys), plus tiles
    // that end exactly at a segment end, more tiles than ring stages with a causal skip, and the
    // production layout at reduced length (38 heads, batch 2, [video; text] keys).
    std::vector<Case> hopper_cases = flash_cases;
    hopper_cases.push_back({"exact tiles 256 x (128+128) b2", 2, 2, 64, {{256, 0, 0, 0}}, {{128, 0, 0, 0}, {128, 0, 0, 0}}, false, false});
    hopper_cases.push_back({"causal 2 query tiles x 7 key tiles", 1, 1, 64, {{200, 0, 0, 0}, {60, 0, 0, 0}}, {{700, 0, 0, 0}, {90, 0, 0, 0}}, true, false});
    hopper_cases.push_back({"production layout 38 heads b2 [150; 77]", 2, 38, 64, {{150, 0, 0, 0}, {77, 0, 0, 0}}, {{150, 0, 0, 0}, {77, 0, 0, 0}}, false, false});
    // Two query segments of odd lengths, B = 2, separate outputs, a query segment longer than
    // one tile (tiles 0..2 of segment 0, then segment 1) and a causal variant.
    hopper_cases.push_back({"odd segments 259+37 b2", 2, 2, 64, {{259, 0, 0, 0}, {37, 8, 16, 0}}, {{259, 0, 0, 0}, {37, 8, 16, 0}}, false, true});
    hopper_cases.push_back({"odd segments causal 131+3 b2", 2, 1, 64, {{131, 0, 0, 0}, {3, 0, 0, 0}}, {{131, 0, 0, 0}, {3, 0, 0, 0}}, true, false});
    for (const Case& c : joint_cases) hopper_cases.push_back(c);
    for (const Case& c : hopper_cases) run_hopper_case(c, seed++);

    const std::vector<Case> naive_cases = {
        {"d40 joint 9+5 b2", 2, 3, 40, {{9, 0, 0, 0}, {5, 0, 0, 0}}, {{9, 0, 0, 0}, {5, 0, 0, 0}}, false, false},
        {"d64 causal bias 37", 1, 2, 64, {{37, 0, 0, 0}}, {{37, 0, 0, 0}}, true, true},
        {"d80 strided 21 x (21+40)", 2, 1, 80, {{21, 16, 3, 0}}, {{21, 0, 0, 0}, {40, 4, 0, 0}}, false, true},
        {"d24 three query segments 5+1+9 b2", 2, 2, 24, {{5, 0, 0, 0}, {1, 0, 0, 0}, {9, 8, 0, 0}}, {{7, 0, 0, 0}, {8, 0, 0, 0}}, true, false},
        {"d40 joint output 9+5 b2", 2, 3, 40, {{9, 0, 0, 0}, {5, 0, 0, 0}}, {{9, 0, 0, 0}, {5, 0, 0, 0}}, false, false, {}, true},
    };
    for (const Case& c : naive_cases) {
        run_case<float>(c, false, seed++);
        run_case<__nv_bfloat16>(c, false, seed++);
        run_case<__half>(c, false, seed++);
    }
}
