// The Hopper subset of the emulation (include/cuda_emu_hopper.h) against cases worked out by
// hand from the PTX ISA's layout figures, not by running the emulator's own index code twice:
//   - wgmma: logical A (64 x K) and B (K x N) of small integers placed in shared memory by
//     explicit per-layout formulas (K-major and MN-major; no swizzle with unusual LBO / SBO,
//     32B, 64B and 128B swizzle with the chunk XOR written out), A also from registers (the
//     m16n8k16 fragment), the product compared exactly with a triple loop;
//   - TMA: boxes with out-of-bounds parts and every swizzle against bytes placed by the same
//     kind of independent formula; the tensor-map encoder's validity rules one by one;
//   - mbarrier phase and transaction sequences and every misuse the emulator must report;
//   - setmaxnreg's register pool: the flash kernel's 24 / 240 split at 168 x 384 fits, 32 / 240
//     and 24 / 248 (and a producer that never decs) are reported as deadlocks, inc waits for the
//     producer's dec;
//   - a demo GEMM chaining it all (producer warp: TMA into a two-stage ring tracked by full /
//     empty mbarriers; consumer warpgroup: wgmma SS, then RS with the result as A) under every
//     schedule, and MUTATIONS of it (no wait, wrong parity, wrong swizzle, wrong SBO, no
//     expect_tx, refill before release, P rewritten while the RS wgmma is in flight, the
//     accumulator scaled before the wait), each of which must fail under every schedule.
#include "hopper.cuh"

#include <functional>

#include "device/registry.h"
#include "harness.h"

namespace {

uint32_t pack_bf16(float lo, float hi) { return (uint32_t)emu::f2bf(lo) | ((uint32_t)emu::f2bf(hi) << 16); }

void report(const std::string& name, bool ok, const std::string& detail) {
    if (ok) {
        printf("ok   %s: %s\n", name.c_str(), detail.c_str());
    } else {
        printf("FAIL %s: %s\n", name.c_str(), detail.c_str());
        failures()++;
    }
}

// Runs `f` (one or more launches) with emu::fail throwing; the emulator's message, or "".
std::string emu_error(const std::function<void()>& f) {
    emu::g_fail_throws = true;
    std::string msg;
    try {
        f();
    } catch (const emu::Failure& e) {
        msg = e.msg.empty() ? "(no message)" : e.msg;
    }
    emu::g_fail_throws = false;
    return msg;
}

// Expects the emulator to report an error containing `want`.
void expect_error(const std::string& name, const std::string& want, const std::function<void()>& f) {
    if (!selected(name)) return;
    const std::string msg = emu_error(f);
    report(name, !msg.empty() && msg.find(want) != std::string::npos,
           msg.empty() ? "no error reported (want \"" + want + "\")" : "reported: " + msg.substr(0, 160));
}

// ------------------------------------------------------------------------------------------
// wgmma against hand-placed operands
// ------------------------------------------------------------------------------------------

// Small integers: every product and sum is exact in bf16 / f32.
float a_val(int m, int k) { return (float)((m * 5 + k * 3 + (m * k) % 7) % 11 - 5); }
float b_val(int k, int n) { return (float)((k * 7 + n * 3 + (k * n) % 5) % 13 - 6); }

struct WgCase {
    std::string name;
    int K;                                // 16 per k-step
    std::function<uint32_t(int, int)> a;  // byte offset of A[m][k] (unused with a_regs)
    std::function<uint32_t(int, int)> b;  // byte offset of B[k][n]
    std::function<uint64_t(int)> da, db;  // descriptors of k-step s
    bool a_regs;
};

template <int N, int TB>
void run_wgmma_case(const WgCase& c) {
    const std::string name = "hopper/wgmma " + c.name + " N" + std::to_string(N) + (TB ? " B MN-major" : " B K-major");
    if (!selected(name)) return;
    // The shared-memory image: NaN bytes except where an element is placed.
    size_t bytes = 0;
    for (int k = 0; k < c.K; k++) {
        for (int m = 0; m < 64 && !c.a_regs; m++) bytes = std::max(bytes, (size_t)c.a(m, k) + 2);
        for (int n = 0; n < N; n++) bytes = std::max(bytes, (size_t)c.b(k, n) + 2);
    }
    std::vector<unsigned char> img((bytes + 15) / 16 * 16, 0xff);
    std::vector<int> owner(img.size(), -1);
    bool clash = false;
    auto put = [&](uint32_t off, float v, int who) {
        if (owner[off] != -1) clash = true;
        owner[off] = who;
        const uint16_t h = emu::f2bf(v);
        memcpy(&img[off], &h, 2);
    };
    for (int k = 0; k < c.K; k++) {
        for (int m = 0; m < 64 && !c.a_regs; m++) put(c.a(m, k), a_val(m, k), 1);
        for (int n = 0; n < N; n++) put(c.b(k, n), b_val(k, n), 2);
    }
    if (clash) {
        report(name, false, "the test's placement formulas overlap");
        return;
    }
    DBuf<float> out((size_t)64 * N);
    const int steps = c.K / 16;
    emu::launch("wgmma_case", dim3(1), dim3(128), img.size(), [&] {
        DYNAMIC_SMEM(sm);
        const int tid = (int)threadIdx.x;
        for (size_t i = (size_t)tid; i < img.size(); i += 128) sm[i] = img[i];
        __syncthreads();
        fence_proxy_async();
        const int w = tid / 32, g = (tid % 32) / 4, t = tid % 4;
        float d[N / 2];
        uint32_t a[8][4];  // the register A operands stay unchanged until the wait
        if (steps > 8) emu::fail("wgmma case with K > 128");
        wgmma_fence();
        for (int s = 0; s < steps; s++) {
            if (c.a_regs) {
                // The m16n8k16 A fragment of this warp's rows 16 w .. 16 w + 15 at k-step s.
                const int r0 = 16 * w + g, k0 = 16 * s + 2 * t;
                a[s][0] = pack_bf16(a_val(r0, k0), a_val(r0, k0 + 1));
                a[s][1] = pack_bf16(a_val(r0 + 8, k0), a_val(r0 + 8, k0 + 1));
                a[s][2] = pack_bf16(a_val(r0, k0 + 8), a_val(r0, k0 + 9));
                a[s][3] = pack_bf16(a_val(r0 + 8, k0 + 8), a_val(r0 + 8, k0 + 9));
                wgmma_m64k16_rs<N, TB>(d, a[s], c.db(s), s > 0);
            } else {
                wgmma_m64k16_ss<N, TB>(d, c.da(s), c.db(s), s > 0);
            }
        }
        wgmma_commit();
        wgmma_wait<0>();
        // The accumulator layout of hopper.cuh.
        for (int j = 0; j < N / 8; j++)
            for (int e = 0; e < 4; e++) out[(size_t)(16 * w + g + 8 * (e / 2)) * N + 8 * j + 2 * t + e % 2] = d[4 * j + e];
    });
    std::vector<double> ref((size_t)64 * N);
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < N; n++) {
            double s = 0;
            for (int k = 0; k < c.K; k++) s += (double)a_val(m, k) * b_val(k, n);
            ref[(size_t)m * N + n] = s;
        }
    expect_close(name, out.p, ref, 0.0, 0.0);
}

void test_wgmma_layouts() {
    const uint64_t SW0 = WGMMA_SW_NONE, S128 = WGMMA_SW_128, S64 = WGMMA_SW_64, S32 = WGMMA_SW_32;
    // K-major, 128-byte swizzle (A: 64 rows of 64 k = 128 bytes; B: N rows of 64 k): row r of an
    // 8-row 1024-byte atom at r * 128; 16-byte chunk c (k / 8) stored at chunk c ^ (r % 8);
    // atoms SBO = 1024 apart; k-step s starts 32 s bytes into the row.
    auto a_k128 = [](int m, int k) { return (uint32_t)((m / 8) * 1024 + (m % 8) * 128 + (((k / 8) ^ (m % 8)) * 16) + (k % 8) * 2); };
    const uint32_t B0 = 8192;
    auto b_k128 = [=](int k, int n) { return B0 + (uint32_t)((n / 8) * 1024 + (n % 8) * 128 + (((k / 8) ^ (n % 8)) * 16) + (k % 8) * 2); };
    auto da_k128 = [=](int s) { return wgmma_desc(32 * s, 16, 1024, (int)S128); };
    auto db_k128 = [=](int s) { return wgmma_desc(B0 + 32 * s, 16, 1024, (int)S128); };
    run_wgmma_case<64, 0>({"A K-major SW128, B K-major SW128", 64, a_k128, b_k128, da_k128, db_k128, false});
    run_wgmma_case<128, 0>({"A K-major SW128, B K-major SW128", 64, a_k128, b_k128, da_k128, db_k128, false});

    // MN-major, 128-byte swizzle (B as [k][n] rows of 64 n = 128 bytes): k-row r of an 8-row
    // atom at r * 128, chunk c (n % 64 / 8) at c ^ (k % 8); atoms of 8 k SBO = 1024 apart, the
    // next 64 columns LBO = 8192 further; k-step s starts 2048 s bytes in.
    auto b_mn128 = [=](int k, int n) { return B0 + (uint32_t)((n / 64) * 8192 + k * 128 + ((((n % 64) / 8) ^ (k % 8)) * 16) + (n % 8) * 2); };
    auto db_mn128 = [=](int s) { return wgmma_desc(B0 + 2048 * s, 8192, 1024, (int)S128); };
    run_wgmma_case<128, 1>({"A K-major SW128, B MN-major SW128", 64, a_k128, b_mn128, da_k128, db_mn128, false});
    run_wgmma_case<64, 1>({"A K-major SW128, B MN-major SW128", 64, a_k128, b_mn128, da_k128, db_mn128, false});

    // No swizzle, K-major: core matrices of 8 rows x 16 bytes (128 contiguous bytes); A with the
    // K-direction offset LBO = 1024 and the M-direction offset SBO = 128 (the other way round
    // from the usual, so a swap shows); B with LBO = 128, SBO = 1024.
    auto a_kn = [](int m, int k) { return (uint32_t)((m / 8) * 128 + (k / 8) * 1024 + (m % 8) * 16 + (k % 8) * 2); };
    auto da_kn = [](int s) { return wgmma_desc(2048 * s, 1024, 128, (int)SW0); };
    auto b_kn = [=](int k, int n) { return B0 + (uint32_t)((n / 8) * 1024 + (k / 8) * 128 + (n % 8) * 16 + (k % 8) * 2); };
    auto db_kn = [=](int s) { return wgmma_desc(B0 + 256 * s, 128, 1024, (int)SW0); };
    run_wgmma_case<64, 0>({"A K-major no swizzle, B K-major no swizzle", 64, a_kn, b_kn, da_kn, db_kn, false});
    run_wgmma_case<24, 0>({"A K-major no swizzle, B K-major no swizzle", 64, a_kn, b_kn, da_kn, db_kn, false});

    // No swizzle, MN-major B: core matrix = 8 k-rows x 8 n (16 bytes each); the next 8 n SBO =
    // 128 further, the next 8 k LBO = 1024 further.
    const uint32_t BN = 16384;
    auto b_mnn = [=](int k, int n) { return BN + (uint32_t)((n / 8) * 128 + (k / 8) * 1024 + (k % 8) * 16 + (n % 8) * 2); };
    auto db_mnn = [=](int s) { return wgmma_desc(BN + 2048 * s, 1024, 128, (int)SW0); };
    // K-major, 64-byte swizzle A: rows of 64 bytes (32 k), 8-row atoms of 512 bytes SBO = 512
    // apart, chunk c of row r at c ^ (r / 2 % 4); k 32.. in a second block 4096 bytes further.
    auto a_k64 = [](int m, int k) {
        return (uint32_t)((k / 32) * 4096 + (m / 8) * 512 + (m % 8) * 64 + ((((k % 32) / 8) ^ ((m % 8) / 2)) * 16) + (k % 8) * 2);
    };
    auto da_k64 = [](int s) { return wgmma_desc(4096 * (s / 2) + 32 * (s % 2), 16, 512, (int)S64); };
    run_wgmma_case<64, 1>({"A K-major SW64, B MN-major no swizzle", 64, a_k64, b_mnn, da_k64, db_mnn, false});

    // K-major, 32-byte swizzle A: rows of 32 bytes (16 k), 8-row atoms of 256 bytes SBO = 256
    // apart, chunk c of row r at c ^ (r / 4 % 2); each k-step in its own 2048-byte block.
    auto a_k32 = [](int m, int k) {
        return (uint32_t)((k / 16) * 2048 + (m / 8) * 256 + (m % 8) * 32 + ((((k % 16) / 8) ^ ((m % 8) / 4)) * 16) + (k % 8) * 2);
    };
    auto da_k32 = [](int s) { return wgmma_desc(2048 * s, 16, 256, (int)S32); };
    // MN-major, 64-byte swizzle B: k-rows of 64 bytes (32 n), 8-k atoms of 512 bytes SBO = 512
    // apart, chunk c of k-row r at c ^ (r / 2 % 4), the next 32 columns LBO = 4096 further.
    auto b_mn64 = [=](int k, int n) {
        return BN + (uint32_t)((n / 32) * 4096 + (k / 8) * 512 + (k % 8) * 64 + ((((n % 32) / 8) ^ ((k % 8) / 2)) * 16) + (n % 8) * 2);
    };
    auto db_mn64 = [=](int s) { return wgmma_desc(BN + 1024 * s, 4096, 512, (int)S64); };
    run_wgmma_case<64, 1>({"A K-major SW32, B MN-major SW64", 64, a_k32, b_mn64, da_k32, db_mn64, false});
    // MN-major, 32-byte swizzle B: k-rows of 32 bytes (16 n), 8-k atoms of 256 bytes SBO = 256
    // apart, chunk c of k-row r at c ^ (r / 4 % 2), the next 16 columns LBO = 2048 further.
    auto b_mn32 = [=](int k, int n) {
        return BN + (uint32_t)((n / 16) * 2048 + (k / 8) * 256 + (k % 8) * 32 + ((((n % 16) / 8) ^ ((k % 8) / 4)) * 16) + (n % 8) * 2);
    };
    auto db_mn32 = [=](int s) { return wgmma_desc(BN + 512 * s, 2048, 256, (int)S32); };
    run_wgmma_case<64, 1>({"A K-major SW128, B MN-major SW32", 64, a_k128, b_mn32, da_k128, db_mn32, false});
    // K-major, 64-byte swizzle B.
    auto b_k64 = [=](int k, int n) { return BN + a_k64(n, k); };
    auto db_k64 = [=](int s) { return wgmma_desc(BN + 4096 * (s / 2) + 32 * (s % 2), 16, 512, (int)S64); };
    run_wgmma_case<64, 0>({"A K-major SW32, B K-major SW64", 64, a_k32, b_k64, da_k32, db_k64, false});

    // A from registers (the m16n8k16 fragment per warp).
    auto none = [](int, int) { return 0u; };
    auto dnone = [](int) { return (uint64_t)0; };
    run_wgmma_case<128, 0>({"A registers, B K-major SW128", 64, none, b_k128, dnone, db_k128, true});
    run_wgmma_case<64, 1>({"A registers, B MN-major SW128", 64, none, b_mn128, dnone, db_mn128, true});
    // N = 256 (no swizzle, MN-major B: the next 8 n 128 bytes further, the next 8 k 4096).
    auto b_mnn256 = [=](int k, int n) { return BN + (uint32_t)((n / 8) * 128 + (k / 8) * 4096 + (k % 8) * 16 + (n % 8) * 2); };
    auto db_mnn256 = [=](int s) { return wgmma_desc(BN + 8192 * s, 4096, 128, (int)SW0); };
    run_wgmma_case<256, 1>({"A registers, B MN-major no swizzle", 32, none, b_mnn256, dnone, db_mnn256, true});
}

// ------------------------------------------------------------------------------------------
// TMA boxes and the tensor-map encoder
// ------------------------------------------------------------------------------------------

// A 3D tensor of distinct 16-bit values (x0 innermost), rows padded to `pitch` elements.
struct Tensor3 {
    int d0, d1, d2, pitch;
    DBuf<uint16_t> buf;
    Tensor3(int a, int b, int c, int p) : d0(a), d1(b), d2(c), pitch(p), buf((size_t)p * b * c) {
        for (size_t i = 0; i < buf.n; i++) buf[i] = 0xEEEE;  // padding: must never be read
        for (int z = 0; z < c; z++)
            for (int y = 0; y < b; y++)
                for (int x = 0; x < a; x++) buf[((size_t)z * b + y) * p + x] = value(x, y, z);
    }
    static uint16_t value(int x, int y, int z) { return (uint16_t)(1 + x + 97 * y + 4001 * z); }
    uint16_t at(long long x, long long y, long long z, uint16_t fill) const {
        if (x < 0 || y < 0 || z < 0 || x >= d0 || y >= d1 || z >= d2) return fill;
        return value((int)x, (int)y, (int)z);
    }
};

int encode(TmaDesc* map, Tensor3& t, int dtype, const uint32_t box[3], const uint32_t es[3], int swizzle, int oob) {
    const uint64_t dims[3] = {(uint64_t)t.d0, (uint64_t)t.d1, (uint64_t)t.d2};
    const uint64_t strides[2] = {(uint64_t)t.pitch * 2, (uint64_t)t.pitch * 2 * t.d1};
    return emu::tensor_map_encode_tiled(map, dtype, 3, t.buf.p, dims, strides, box, es, 0, swizzle, 2, oob);
}

// Loads one box with a single elected thread and returns the shared-memory bytes.
std::vector<uint16_t> load_box(const TmaDesc& map, uint32_t bytes, int c0, int c1, int c2) {
    std::vector<uint16_t> got(bytes / 2);
    DBuf<uint16_t> out(bytes / 2);
    const uint32_t DST = 1024;
    emu::launch("tma_box", dim3(1), dim3(32), DST + bytes, [&] {
        if (threadIdx.x == 0) {
            mbar_init(0, 1);
            mbar_fence_init();
        }
        __syncwarp();
        if (elect_one()) {
            mbar_arrive_expect_tx(0, bytes);
            tma_load_3d(DST, &map, 0, c0, c1, c2);
        }
        __syncwarp();
        while (!mbar_try_wait(0, 0)) {
        }
        DYNAMIC_SMEM(sm);
        for (uint32_t i = threadIdx.x; i < bytes / 2; i += 32) memcpy(&out[i], sm + DST + 2 * i, 2);
    });
    for (size_t i = 0; i < got.size(); i++) got[i] = out[i];
    return got;
}

void test_tma_boxes() {
    Tensor3 t(80, 37, 3, 88);
    struct BoxCase {
        const char* name;
        uint32_t box[3], es[3];
        int swizzle, oob;
        int c0, c1, c2;
    };
    const BoxCase cases[] = {
        {"SW128 box 64x16, past the end in x and y", {64, 16, 1}, {1, 1, 1}, emu::TMAP_SWIZZLE_128B, 0, 40, 30, 2},
        {"SW128 box 64x16, negative corner", {64, 16, 1}, {1, 1, 1}, emu::TMAP_SWIZZLE_128B, 0, -8, -3, 0},
        {"SW64 box 32x16", {32, 16, 1}, {1, 1, 1}, emu::TMAP_SWIZZLE_64B, 0, 56, 25, 1},
        {"SW32 box 16x24", {16, 24, 1}, {1, 1, 1}, emu::TMAP_SWIZZLE_32B, 0, -4, 20, 1},
        {"no swizzle box 8x5x2", {8, 5, 2}, {1, 1, 1}, emu::TMAP_SWIZZLE_NONE, 0, 75, 33, 2},
        {"no swizzle box 16x8 NaN fill", {16, 8, 1}, {1, 1, 1}, emu::TMAP_SWIZZLE_NONE, 1, 72, -2, 0},
        {"no swizzle box 16x8 element strides 1,2", {16, 8, 1}, {1, 2, 1}, emu::TMAP_SWIZZLE_NONE, 0, 3, 30, 1},
    };
    for (const BoxCase& c : cases) {
        const std::string name = std::string("hopper/tma ") + c.name;
        if (!selected(name)) continue;
        TmaDesc map;
        const int rc = encode(&map, t, emu::TMAP_BFLOAT16, c.box, c.es, c.swizzle, c.oob);
        if (rc != 0) {
            report(name, false, "encode returned " + std::to_string(rc));
            continue;
        }
        const uint32_t n0 = c.box[0], n1 = (c.box[1] + c.es[1] - 1) / c.es[1], n2 = c.box[2];
        const uint32_t row_bytes = n0 * 2, bytes = n0 * n1 * n2 * 2;
        const std::vector<uint16_t> got = load_box(map, bytes, c.c0, c.c1, c.c2);
        // Expected bytes: row r (= i1 + n1 i2) of row_bytes, its 16-byte chunk q moved to
        //   128B: q ^ (r % 8)   (rows of 128 bytes)
        //   64B:  q ^ (r / 2 % 4) (rows of 64 bytes)
        //   32B:  q ^ (r / 4 % 2) (rows of 32 bytes)
        std::vector<uint16_t> want(bytes / 2, 0x1234);
        const uint16_t fill = c.oob ? 0xFFFF : 0;
        for (uint32_t i2 = 0; i2 < n2; i2++)
            for (uint32_t i1 = 0; i1 < n1; i1++)
                for (uint32_t i0 = 0; i0 < n0; i0++) {
                    const uint32_t r = i1 + n1 * i2, q = i0 / 8;
                    uint32_t qq = q;
                    if (c.swizzle == emu::TMAP_SWIZZLE_128B) qq = q ^ (r % 8);
                    if (c.swizzle == emu::TMAP_SWIZZLE_64B) qq = q ^ (r / 2 % 4);
                    if (c.swizzle == emu::TMAP_SWIZZLE_32B) qq = q ^ (r / 4 % 2);
                    const uint32_t off = r * row_bytes + qq * 16 + (i0 % 8) * 2;
                    want[off / 2] = t.at(c.c0 + (long long)i0, c.c1 + (long long)(i1 * c.es[1]), c.c2 + (long long)i2, fill);
                }
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < want.size(); i++)
            if (got[i] != want[i]) {
                if (!bad) first = i;
                bad++;
            }
        char buf[160];
        snprintf(buf, sizeof buf, "%zu of %zu elements differ (first at %zu: got 0x%04x want 0x%04x)", bad, want.size(), first,
                 bad ? got[first] : 0, bad ? want[first] : 0);
        report(name, bad == 0, bad ? buf : std::to_string(want.size()) + " elements as placed by the swizzle formula");
    }
}

void test_tensor_map_rules() {
    const std::string name = "hopper/tensor map validity rules";
    if (!selected(name)) return;
    DBuf<uint16_t> g(4096);
    alignas(64) unsigned char raw[192];
    struct Args {
        void* map;
        int dtype;
        uint32_t rank;
        void* addr;
        uint64_t dims[5], strides[4];
        uint32_t box[5], es[5];
        int interleave, swizzle, l2, oob;
    };
    const Args base{raw, emu::TMAP_BFLOAT16, 3, g.p, {64, 16, 4, 1, 1}, {128, 2048, 0, 0}, {64, 8, 1, 1, 1}, {1, 1, 1, 1, 1}, 0, emu::TMAP_SWIZZLE_128B, 2, 0};
    auto call = [](const Args& a) {
        return emu::tensor_map_encode_tiled(a.map, a.dtype, a.rank, a.addr, a.dims, a.strides, a.box, a.es, a.interleave, a.swizzle, a.l2, a.oob);
    };
    struct Mut {
        const char* what;
        std::function<void(Args&)> f;
        int want;
    };
    const Mut muts[] = {
        {"valid baseline", [](Args&) {}, 0},
        {"rank 0", [](Args& a) { a.rank = 0; }, 1},
        {"rank 6", [](Args& a) { a.rank = 6; }, 1},
        {"rank 5 valid", [](Args& a) { a.rank = 5; a.strides[2] = a.strides[3] = 8192; }, 0},
        {"map not 64-byte aligned", [&](Args& a) { a.map = raw + 32; }, 1},
        {"address not 16-byte aligned", [&](Args& a) { a.addr = (char*)g.p + 8; }, 1},
        {"null address", [&](Args& a) { a.addr = nullptr; }, 1},
        {"data type 13", [](Args& a) { a.dtype = 13; }, 1},
        {"dim 0", [](Args& a) { a.dims[1] = 0; }, 1},
        {"dim 2^32 valid", [](Args& a) { a.dims[2] = 1ull << 32; }, 0},
        {"dim 2^32 + 1", [](Args& a) { a.dims[2] = (1ull << 32) + 1; }, 1},
        {"stride not a multiple of 16", [](Args& a) { a.strides[0] = 136; }, 1},
        {"stride 2^40", [](Args& a) { a.strides[1] = 1ull << 40; }, 1},
        {"stride 2^40 - 16 valid", [](Args& a) { a.strides[1] = (1ull << 40) - 16; }, 0},
        {"box 0", [](Args& a) { a.box[1] = 0; }, 1},
        {"box 257", [](Args& a) { a.box[1] = 257; }, 1},
        {"box 256 valid", [](Args& a) { a.box[1] = 256; }, 0},
        {"inner box 8 bytes", [](Args& a) { a.box[0] = 4; a.swizzle = 0; }, 1},
        {"inner box 256 bytes without swizzle valid", [](Args& a) { a.box[0] = 128; a.swizzle = 0; }, 0},
        {"inner box 256 bytes with 128B swizzle", [](Args& a) { a.box[0] = 128; }, 1},
        {"inner box 64 bytes with 32B swizzle", [](Args& a) { a.box[0] = 32; a.swizzle = emu::TMAP_SWIZZLE_32B; }, 1},
        {"inner box 32 bytes with 32B swizzle valid", [](Args& a) { a.box[0] = 16; a.swizzle = emu::TMAP_SWIZZLE_32B; }, 0},
        {"element stride 0", [](Args& a) { a.es[1] = 0; }, 1},
        {"element stride 9", [](Args& a) { a.es[1] = 9; }, 1},
        {"element stride 8 valid", [](Args& a) { a.es[1] = 8; }, 0},
        {"swizzle 4", [](Args& a) { a.swizzle = 4; }, 1},
        {"interleave 3", [](Args& a) { a.interleave = 3; }, 1},
        {"L2 promotion 4", [](Args& a) { a.l2 = 4; }, 1},
        {"OOB fill 2", [](Args& a) { a.oob = 2; }, 1},
        {"NaN fill on an integer type", [](Args& a) { a.oob = 1; a.dtype = emu::TMAP_UINT16; }, 1},
        {"NaN fill on bf16 valid", [](Args& a) { a.oob = 1; }, 0},
        {"interleave 32B (not emulated)", [](Args& a) { a.interleave = 2; a.swizzle = emu::TMAP_SWIZZLE_32B; a.box[0] = 16; }, 801},
        {"interleave with rank 2", [](Args& a) { a.interleave = 1; a.rank = 2; }, 1},
    };
    int bad = 0;
    std::string detail;
    for (const Mut& m : muts) {
        Args a = base;
        m.f(a);
        const int rc = call(a);
        if (rc != m.want) {
            bad++;
            detail += std::string(" [") + m.what + ": got " + std::to_string(rc) + " want " + std::to_string(m.want) + "]";
        }
    }
    report(name, bad == 0, bad ? detail : std::to_string(sizeof muts / sizeof muts[0]) + " argument sets accepted or rejected as the driver does");
}

// ------------------------------------------------------------------------------------------
// mbarrier sequences and misuse
// ------------------------------------------------------------------------------------------

void test_mbarrier() {
    {
        const std::string name = "hopper/mbarrier phases and transaction counts";
        if (selected(name)) {
            Tensor3 t(64, 4, 1, 64);
            TmaDesc map;
            const uint32_t box[3] = {8, 1, 1}, es[3] = {1, 1, 1};
            encode(&map, t, emu::TMAP_BFLOAT16, box, es, 0, 0);
            std::vector<int> got;
            emu::launch("mbarrier_sequence", dim3(1), dim3(32), 2048, [&] {
                if (threadIdx.x == 0) {
                    mbar_init(8, 2);
                    mbar_fence_init();
                    got.push_back(emu::mbar_test_wait(8, 0));  // 0: phase 0 in progress
                    got.push_back(emu::mbar_test_wait(8, 1));  // 1: "the phase before" counts as complete
                    mbar_arrive(8);
                    got.push_back(emu::mbar_test_wait(8, 0));  // 0: one arrival pending
                    mbar_arrive_expect_tx(8, 16);
                    got.push_back(emu::mbar_test_wait(8, 0));  // 0: arrivals done, 16 bytes pending
                    tma_load_3d(1024, &map, 8, 0, 2, 0);
                    got.push_back(mbar_try_wait(8, 0));        // 1 once the copy landed
                    got.push_back(emu::mbar_test_wait(8, 0));  // 1
                    got.push_back(emu::mbar_test_wait(8, 1));  // 0: phase 1 in progress
                    mbar_arrive(8);
                    got.push_back(emu::mbar_test_wait(8, 1));  // 0
                    mbar_arrive(8);
                    got.push_back(emu::mbar_test_wait(8, 1));  // 1
                    got.push_back(emu::mbar_test_wait(8, 0));  // 0: phase 2 in progress
                    DYNAMIC_SMEM(sm);
                    uint16_t v;
                    memcpy(&v, sm + 1024 + 6, 2);
                    got.push_back(v == Tensor3::value(3, 2, 0));
                }
            });
            const std::vector<int> want = {0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 1};
            std::string s;
            for (int v : got) s += std::to_string(v);
            std::string w;
            for (int v : want) w += std::to_string(v);
            report(name, got == want, "sequence " + s + (got == want ? "" : " want " + w));
        }
    }
    Tensor3 t(64, 4, 1, 64);
    TmaDesc map;
    const uint32_t box[3] = {8, 1, 1}, es[3] = {1, 1, 1};
    encode(&map, t, emu::TMAP_BFLOAT16, box, es, 0, 0);
    auto one = [](const char* kname, const std::function<void()>& body) {
        return [=] { emu::launch(kname, dim3(1), dim3(32), 4096, [&] {
                         if (threadIdx.x == 0) body();
                     }); };
    };
    expect_error("hopper/mbarrier error: use before init", "no mbarrier was initialised", one("k", [] { mbar_arrive(16); }));
    expect_error("hopper/mbarrier error: misaligned", "not 8-byte aligned", one("k", [] { mbar_init(12, 1); }));
    expect_error("hopper/mbarrier error: outside shared memory", "past the", one("k", [] { mbar_init(4096, 1); }));
    expect_error("hopper/mbarrier error: more arrivals than the count", "more arrivals than the init count", one("k", [] {
                     mbar_init(0, 1);
                     mbar_arrive_expect_tx(0, 16);
                     mbar_arrive(0);
                 }));
    expect_error("hopper/mbarrier error: copy without expect_tx (tx underflow)", "missing or too small arrive.expect_tx", one("k", [&] {
                     mbar_init(0, 1);
                     mbar_fence_init();
                     mbar_arrive(0);
                     tma_load_3d(1024, &map, 0, 0, 0, 0);
                     mbar_try_wait(0, 1);
                 }));
    expect_error("hopper/mbarrier error: overwritten by a store", "overwritten", one("k", [] {
                     mbar_init(0, 1);
                     DYNAMIC_SMEM(sm);
                     sm[2] = 0;
                     mbar_arrive(0);
                 }));
    expect_error("hopper/mbarrier error: deadlock", "deadlock", one("k", [] {
                     mbar_init(0, 2);
                     mbar_arrive(0);
                     while (!mbar_try_wait(0, 0)) {
                     }
                 }));
    expect_error("hopper/mbarrier error: wrong parity deadlocks", "deadlock", one("k", [] {
                     mbar_init(0, 1);
                     mbar_arrive(0);
                     while (!mbar_try_wait(0, 1)) {  // phase 0 completed; phase 1 never will
                     }
                 }));
    expect_error("hopper/tma error: barrier init not fenced", "mbar_fence_init", one("k", [&] {
                     mbar_init(0, 1);
                     mbar_arrive_expect_tx(0, 16);
                     tma_load_3d(1024, &map, 0, 0, 0, 0);
                 }));
    expect_error("hopper/tma error: copy never waited for", "in flight", one("k", [&] {
                     mbar_init(0, 1);
                     mbar_fence_init();
                     mbar_arrive_expect_tx(0, 16);
                     tma_load_3d(1024, &map, 0, 0, 0, 0);
                 }));
    expect_error("hopper/tma error: destination not 128-byte aligned", "aligned", one("k", [&] {
                     mbar_init(0, 1);
                     mbar_fence_init();
                     tma_load_3d(1040, &map, 0, 0, 0, 0);
                 }));
    {
        TmaDesc m128;
        Tensor3 t2(64, 8, 1, 64);
        const uint32_t b2[3] = {64, 8, 1};
        encode(&m128, t2, emu::TMAP_BFLOAT16, b2, es, emu::TMAP_SWIZZLE_128B, 0);
        expect_error("hopper/tma error: 128B swizzle destination not 1024-byte aligned", "1024-byte aligned",
                     [&] { emu::launch("k", dim3(1), dim3(32), 8192, [&] {
                               if (threadIdx.x == 0) {
                                   mbar_init(0, 1);
                                   mbar_fence_init();
                                   tma_load_3d(512, &m128, 0, 0, 0, 0);
                               }
                           }); });
    }
    expect_error("hopper/tma error: copy over a live mbarrier", "overwrites the mbarrier", one("k", [&] {
                     mbar_init(1024, 1);
                     mbar_fence_init();
                     tma_load_3d(1024, &map, 1024, 0, 0, 0);
                 }));
    expect_error("hopper/tma error: zeroed tensor map", "did not make", one("k", [&] {
                     TmaDesc z;
                     memset(&z, 0, sizeof z);
                     mbar_init(0, 1);
                     mbar_fence_init();
                     tma_load_3d(1024, &z, 0, 0, 0, 0);
                 }));
}

// ------------------------------------------------------------------------------------------
// elect, setmaxnreg, wgmma misuse
// ------------------------------------------------------------------------------------------

void test_warpgroup_rules() {
    {
        const std::string name = "hopper/elect_one: exactly one lane per warp";
        if (selected(name)) {
            std::vector<int> count(4, 0);
            emu::launch("elect", dim3(1), dim3(128), 0, [&] {
                for (int i = 0; i < 3; i++)
                    if (elect_one()) count[threadIdx.x / 32]++;
            });
            report(name, count == std::vector<int>(4, 3), "3 elections in each of 4 warps");
        }
    }
    expect_error("hopper/elect_one error: half a warp", "lanes", [] { emu::launch("k", dim3(1), dim3(32), 0, [] {
                                                                       if (threadIdx.x < 16) return;
                                                                       elect_one();
                                                                   }); });
    expect_error("hopper/setmaxnreg error: 20 registers", "multiple of 8 in [24, 256]",
                 [] { emu::launch("k", dim3(1), dim3(128), 0, [] { setmaxnreg_dec<20>(); }); });
    expect_error("hopper/setmaxnreg error: 100 registers", "multiple of 8 in [24, 256]",
                 [] { emu::launch("k", dim3(1), dim3(128), 0, [] { setmaxnreg_inc<100>(); }); });
    expect_error("hopper/setmaxnreg error: a block of 64 threads", "do not fill",
                 [] { emu::launch("k", dim3(1), dim3(64), 0, [] { setmaxnreg_dec<40>(); }); });
    expect_error("hopper/setmaxnreg error: one warp of the warpgroup", "exited before", [] { emu::launch("k", dim3(1), dim3(128), 0, [] {
                                                                                       if (threadIdx.x < 96) return;
                                                                                       setmaxnreg_dec<40>();
                                                                                   }); });
    expect_error("hopper/setmaxnreg error: warps of a warpgroup disagree", "differs", [] { emu::launch("k", dim3(1), dim3(128), 0, [] {
                                                                                         if (threadIdx.x < 64) setmaxnreg_dec<40>();
                                                                                         else setmaxnreg_dec<48>();
                                                                                     }); });
    expect_error("hopper/setmaxnreg error: inc below the current count", "below", [] { emu::launch("k", dim3(1), dim3(128), 0, [] {
                                                                                     setmaxnreg_dec<40>();
                                                                                     setmaxnreg_inc<32>();
                                                                                 }); });
    // The CTA's register pool: 384 threads launch with 168 registers each (64,512 of the SM's
    // 65,536); warpgroup 0 gives P back, warpgroups 1 and 2 take C each. 24 / 240 is the flash
    // kernel's split (3,072 + 61,440 = 64,512: fits exactly); 32 / 240 (65,536) and 24 / 248
    // (66,560) do not, although the first is within the SM's 64K.
    auto split = [](int P, int C) {
        return [P, C] {
            emu::launch("split", dim3(1), dim3(384), 0, [P, C] {
                if (threadIdx.x < 128) {
                    if (P == 24) setmaxnreg_dec<24>();
                    else setmaxnreg_dec<32>();
                } else {
                    if (C == 240) setmaxnreg_inc<240>();
                    else setmaxnreg_inc<248>();
                }
            });
        };
    };
    {
        const std::string name = "hopper/setmaxnreg pool: the flash kernel's split 24 / 240 at 168 x 384 fits";
        if (selected(name)) {
            const std::string err = emu_error(split(24, 240));
            report(name, err.empty(), err.empty() ? "no error" : "reported: " + err.substr(0, 160));
        }
    }
    expect_error("hopper/setmaxnreg pool error: 32 / 240 overflows 168 x 384", "deadlock: setmaxnreg.inc 240", split(32, 240));
    expect_error("hopper/setmaxnreg pool error: 24 / 248 overflows 168 x 384", "deadlock: setmaxnreg.inc 248", split(24, 248));
    expect_error("hopper/setmaxnreg pool error: the producer never releases", "deadlock: setmaxnreg.inc",
                 [] { emu::launch("k", dim3(1), dim3(384), 0, [] {
                     if (threadIdx.x >= 128) setmaxnreg_inc<240>();
                 }); });
    expect_error("hopper/setmaxnreg error: dec above the registers at launch", "above the 168 registers",
                 [] { emu::launch("k", dim3(1), dim3(384), 0, [] { setmaxnreg_dec<176>(); }); });
    {
        // inc blocks until a dec released enough (PTX ISA): the consumers arrive on an mbarrier
        // and then ask for 240; the producer waits for all 256 arrivals, checks that no consumer
        // got past its inc (they cannot: the pool is empty until the dec), then decs.
        const std::string name = "hopper/setmaxnreg pool: inc waits for the producer's dec";
        if (selected(name)) {
            int past = 0, seen = -1;
            const std::string err = emu_error([&] {
                emu::launch("wait", dim3(1), dim3(384), 64, [&] {
                    if (threadIdx.x == 0) {
                        mbar_init(0, 256);
                        mbar_fence_init();
                    }
                    __syncthreads();
                    if (threadIdx.x < 128) {
                        while (!mbar_try_wait(0, 0)) {
                        }
                        if (threadIdx.x == 0) seen = past;
                        setmaxnreg_dec<24>();
                    } else {
                        mbar_arrive(0);
                        setmaxnreg_inc<240>();
                        past++;
                    }
                });
            });
            report(name, err.empty() && seen == 0 && past == 256,
                   err.empty() ? "consumers past inc before the dec: " + std::to_string(seen) + " (want 0), after: " + std::to_string(past)
                               : "reported: " + err.substr(0, 160));
        }
    }
    {
        // Ping-pong of two warpgroups on named barriers 1 and 2 (the FA3 schedule): each round,
        // warpgroup A waits (bar.sync 1, 256) for B's arrival (bar.arrive 1, 256) and vice versa
        // on barrier 2; what one wrote before arriving is visible to the other after its sync.
        const std::string name = "hopper/named barriers: ping-pong of two warpgroups";
        if (selected(name)) {
            int wrong = 0;
            emu::launch("pingpong", dim3(1), dim3(256), 64, [&] {
                DYNAMIC_SMEM(sm);
                int* turn = reinterpret_cast<int*>(sm);
                const int wg = (int)threadIdx.x / 128;
                if (threadIdx.x == 0) *turn = 0;
                __syncthreads();
                for (int r = 0; r < 4; r++) {
                    if (wg == 0) {
                        if (r > 0) named_bar_sync(1, 256);  // B's round r - 1 is done
                        if (*turn != 2 * r) wrong++;
                        named_bar_sync(3, 128);
                        if (threadIdx.x == 0) *turn = 2 * r + 1;
                        named_bar_arrive(2, 256);
                    } else {
                        named_bar_sync(2, 256);  // A's round r is done
                        if (*turn != 2 * r + 1) wrong++;
                        named_bar_sync(4, 128);
                        if (threadIdx.x == 128) *turn = 2 * r + 2;
                        if (r < 3) named_bar_arrive(1, 256);
                    }
                }
            });
            report(name, wrong == 0, wrong ? std::to_string(wrong) + " threads saw the other warpgroup's turn too early" : "4 rounds in order");
        }
    }
    expect_error("hopper/named barrier error: id 0", "named barriers are 1..15",
                 [] { emu::launch("k", dim3(1), dim3(64), 0, [] { named_bar_sync(0, 64); }); });
    expect_error("hopper/named barrier error: count not a multiple of 32", "multiple of 32",
                 [] { emu::launch("k", dim3(1), dim3(64), 0, [] { named_bar_sync(1, 48); }); });
    expect_error("hopper/named barrier error: counts disagree", "current phase counts",
                 [] { emu::launch("k", dim3(1), dim3(64), 0, [] { named_bar_sync(1, threadIdx.x < 32 ? 64 : 32); }); });
    expect_error("hopper/named barrier error: too few threads arrive", "deadlock", [] { emu::launch("k", dim3(1), dim3(128), 0, [] {
                                                                                      if (threadIdx.x < 64) named_bar_sync(1, 128);
                                                                                  }); });
    expect_error("hopper/named barrier error: unbalanced arrivals at exit", "do not balance",
                 [] { emu::launch("k", dim3(1), dim3(128), 0, [] {
                      if (threadIdx.x < 64) named_bar_arrive(1, 128);
                  }); });
    // wgmma misuse on a trivial operand (K-major no swizzle, everything at offset 0).
    const uint64_t desc = wgmma_desc(0, 128, 256, WGMMA_SW_NONE);
    auto wg = [=](const char* kname, const std::function<void(float (&)[32])>& body) {
        return [=] { emu::launch(kname, dim3(1), dim3(128), 8192, [&] {
                         DYNAMIC_SMEM(sm);
                         for (int i = (int)threadIdx.x; i < 8192; i += 128) sm[i] = 0;
                         __syncthreads();
                         float d[32];
                         body(d);
                     }); };
    };
    expect_error("hopper/wgmma error: mma without fence", "without a wgmma.fence", wg("k", [=](float (&d)[32]) {
                     wgmma_m64n64k16_ss<0>(d, desc, desc, 0);
                 }));
    expect_error("hopper/wgmma error: exit with a pending group", "not waited for", wg("k", [=](float (&d)[32]) {
                     wgmma_fence();
                     wgmma_m64n64k16_ss<0>(d, desc, desc, 0);
                     wgmma_commit();
                 }));
    expect_error("hopper/wgmma error: exit with an uncommitted mma", "not waited for", wg("k", [=](float (&d)[32]) {
                     wgmma_fence();
                     wgmma_m64n64k16_ss<0>(d, desc, desc, 0);
                     wgmma_wait<0>();
                 }));
    expect_error("hopper/wgmma error: one warp skips the mma", "differs", wg("k", [=](float (&d)[32]) {
                     wgmma_fence();
                     if (threadIdx.x >= 32) wgmma_m64n64k16_ss<0>(d, desc, desc, 0);
                     wgmma_commit();
                     wgmma_wait<0>();
                 }));
    expect_error("hopper/wgmma error: warps with different descriptors", "differs", wg("k", [=](float (&d)[32]) {
                     wgmma_fence();
                     wgmma_m64n64k16_ss<0>(d, desc + (threadIdx.x / 32), desc, 0);
                     wgmma_commit();
                     wgmma_wait<0>();
                 }));
    expect_error("hopper/wgmma error: a warp of the warpgroup exited", "exited before", wg("k", [=](float (&d)[32]) {
                     if (threadIdx.x < 32) return;
                     wgmma_fence();
                 }));
    expect_error("hopper/wgmma error: base offset in the descriptor", "base offset", wg("k", [=](float (&d)[32]) {
                     wgmma_fence();
                     wgmma_m64n64k16_ss<0>(d, desc | (1ull << 49), desc, 0);
                 }));
    expect_error("hopper/wgmma error: operand past shared memory", "past the", wg("k", [=](float (&d)[32]) {
                     wgmma_fence();
                     wgmma_m64n64k16_ss<0>(d, wgmma_desc(8192 - 64, 128, 256, WGMMA_SW_NONE), desc, 0);
                     wgmma_commit();
                     wgmma_wait<0>();
                 }));
    {
        // The shared operands are read at the wait: B overwritten between issue and wait (a
        // refill before the consumers released the buffer) changes the result.
        const std::string name = "hopper/wgmma: shared operands are read at the wait";
        if (selected(name)) {
            bool all = true;
            emu::launch("k", dim3(1), dim3(128), 8192, [&] {
                DYNAMIC_SMEM(sm);
                const uint16_t one = emu::f2bf(1.f), two = emu::f2bf(2.f);
                for (int i = (int)threadIdx.x; i < 4096; i += 128) memcpy(sm + 2 * i, &one, 2);
                __syncthreads();
                float d[32];
                wgmma_fence();
                wgmma_m64n64k16_ss<0>(d, desc, wgmma_desc(2048, 128, 256, WGMMA_SW_NONE), 0);
                wgmma_commit();
                __syncthreads();
                for (int i = 1024 + (int)threadIdx.x; i < 4096; i += 128) memcpy(sm + 2 * i, &two, 2);  // B := 2
                __syncthreads();
                wgmma_wait<0>();
                for (float v : d) all = all && v == 32.f;  // 16 products 1 x 2
            });
            report(name, all, all ? "B written after issue and before the wait is what the mma saw" : "the mma read B at issue");
        }
    }
    {
        const std::string name = "hopper/wgmma: accumulators are NaN before the wait";
        if (selected(name)) {
            bool nan_before = true, finite_after = true;
            emu::launch("k", dim3(1), dim3(128), 8192, [&] {
                DYNAMIC_SMEM(sm);
                for (int i = (int)threadIdx.x; i < 8192; i += 128) sm[i] = 0;
                __syncthreads();
                float d[32];
                for (float& v : d) v = 1.f;
                wgmma_fence();
                wgmma_m64n64k16_ss<0>(d, desc, desc, 1);
                wgmma_commit();
                for (float v : d) nan_before = nan_before && std::isnan(v);
                wgmma_wait<0>();
                for (float v : d) finite_after = finite_after && v == 1.f;  // 1 + 0 * 0
            });
            report(name, nan_before && finite_after, nan_before && finite_after ? "NaN after issue, the old D + A B after the wait" : "wrong");
        }
    }
}

// ------------------------------------------------------------------------------------------
// The demo GEMM: TMA -> mbarrier ring -> wgmma SS and RS
// ------------------------------------------------------------------------------------------

enum Mutation {
    MUT_NONE,
    MUT_NO_WAIT,
    MUT_WRONG_PARITY,
    MUT_WRONG_SWIZZLE,
    MUT_WRONG_SBO,
    MUT_NO_EXPECT_TX,
    MUT_EARLY_REFILL,
    MUT_REWRITE_P,
    MUT_TOUCH_ACC
};
const char* mutation_name(Mutation m) {
    switch (m) {
    case MUT_NO_WAIT: return "no wgmma_wait before reading the accumulators";
    case MUT_WRONG_PARITY: return "consumer waits for the wrong parity";
    case MUT_WRONG_SWIZZLE: return "A descriptor with 64B swizzle instead of 128B";
    case MUT_WRONG_SBO: return "A descriptor with SBO 512 instead of 1024";
    case MUT_NO_EXPECT_TX: return "producer arrives without expect_tx";
    case MUT_EARLY_REFILL: return "producer refills a stage before the consumers released it";
    case MUT_REWRITE_P: return "A registers (P) rewritten between the RS wgmma and its wait";
    case MUT_TOUCH_ACC: return "accumulator written between the wgmma and its wait";
    default: return "none";
    }
}

// Block (256 threads): warpgroup 0 produces, warpgroup 1 consumes. Per batch b (= blockIdx.x):
// C = A B (A 64 x 64 K-major, B 64 x 64 [k][n] MN-major, both 128B swizzle, B through a ring of
// two 16-row stages), then E = bf16(C) V with C as the register A operand.
constexpr uint32_t BAR_FULL = 0, BAR_EMPTY = 16, BAR_A = 32, BAR_V = 40;
constexpr uint32_t SM_A = 1024, SM_B = SM_A + 8192, SM_V = SM_B + 2 * 2048, SM_BYTES = SM_V + 8192;

void demo_gemm(const TmaDesc& mapA, const TmaDesc& mapB, const TmaDesc& mapV, float* C, float* E, Mutation mut) {
    const int tid = (int)threadIdx.x, b = (int)blockIdx.x;
    if (tid == 0) {
        for (int i = 0; i < 2; i++) {
            mbar_init(BAR_FULL + 8 * i, 1);
            mbar_init(BAR_EMPTY + 8 * i, 128);
        }
        mbar_init(BAR_A, 1);
        mbar_init(BAR_V, 1);
        mbar_fence_init();
    }
    __syncthreads();
    if (tid < 128) {
        setmaxnreg_dec<40>();
        if (tid < 32) {
            if (elect_one()) {
                mbar_arrive_expect_tx(BAR_A, 8192);
                tma_load_3d(SM_A, &mapA, BAR_A, 0, 0, b);
                mbar_arrive_expect_tx(BAR_V, 8192);
                tma_load_3d(SM_V, &mapV, BAR_V, 0, 0, b);
                for (int s = 0; s < 4; s++) {
                    const uint32_t st = (uint32_t)(s % 2);
                    if (s >= 2 && mut != MUT_EARLY_REFILL)
                        while (!mbar_try_wait(BAR_EMPTY + 8 * st, (uint32_t)((s / 2 - 1) & 1))) {
                        }
                    if (mut == MUT_NO_EXPECT_TX) mbar_arrive(BAR_FULL + 8 * st);
                    else mbar_arrive_expect_tx(BAR_FULL + 8 * st, 2048);
                    tma_load_3d(SM_B + 2048 * st, &mapB, BAR_FULL + 8 * st, 0, 16 * s, b);
                }
            }
            __syncwarp();
        }
        return;
    }
    setmaxnreg_inc<232>();
    const int ct = tid - 128, w = ct / 32, g = (ct % 32) / 4, t = ct % 4;
    while (!mbar_try_wait(BAR_A, 0)) {
    }
    const int a_sw = mut == MUT_WRONG_SWIZZLE ? WGMMA_SW_64 : WGMMA_SW_128;
    const uint32_t a_sbo = mut == MUT_WRONG_SBO ? 512 : 1024;
    float c[32];
    for (int s = 0; s < 4; s++) {
        const uint32_t st = (uint32_t)(s % 2);
        const uint32_t parity = (uint32_t)((s / 2) & 1) ^ (mut == MUT_WRONG_PARITY ? 1u : 0u);
        while (!mbar_try_wait(BAR_FULL + 8 * st, parity)) {
        }
        wgmma_fence();
        wgmma_m64n64k16_ss<1>(c, wgmma_desc(SM_A + 32 * s, 16, a_sbo, a_sw), wgmma_desc(SM_B + 2048 * st, 0, 1024, WGMMA_SW_128), s > 0);
        wgmma_commit();
        if (mut != MUT_NO_WAIT) wgmma_wait<0>();
        mbar_arrive(BAR_EMPTY + 8 * st);
    }
    for (int j = 0; j < 8; j++)
        for (int e = 0; e < 4; e++) C[((size_t)b * 64 + 16 * w + g + 8 * (e / 2)) * 64 + 8 * j + 2 * t + e % 2] = c[4 * j + e];
    // E = bf16(C) V: the accumulator fragment of k-columns 16 s .. 16 s + 15 is the A fragment.
    while (!mbar_try_wait(BAR_V, 0)) {
    }
    float e4[32];
    uint32_t a[4][4];  // P: read by the wgmmas until the wait
    for (int s = 0; s < 4; s++) {
        a[s][0] = pack_bf16(c[8 * s + 0], c[8 * s + 1]);
        a[s][1] = pack_bf16(c[8 * s + 2], c[8 * s + 3]);
        a[s][2] = pack_bf16(c[8 * s + 4], c[8 * s + 5]);
        a[s][3] = pack_bf16(c[8 * s + 6], c[8 * s + 7]);
    }
    wgmma_fence_operand(e4);
    wgmma_fence_operand(a);
    wgmma_fence();
    for (int s = 0; s < 4; s++) wgmma_m64n64k16_rs<1>(e4, a[s], wgmma_desc(SM_V + 2048 * s, 0, 1024, WGMMA_SW_128), s > 0);
    wgmma_commit();
    // MUT_REWRITE_P: the next P written into the A registers while P V is in flight.
    if (mut == MUT_REWRITE_P) a[3][ct % 4] ^= 0x00010001u;
    // MUT_TOUCH_ACC: an accumulator scaled while P V is in flight (a rescale moved up).
    if (mut == MUT_TOUCH_ACC) e4[0] *= 0.5f;
    wgmma_wait<0>();
    wgmma_fence_operand(e4);
    wgmma_fence_operand(a);
    for (int j = 0; j < 8; j++)
        for (int e = 0; e < 4; e++) E[((size_t)b * 64 + 16 * w + g + 8 * (e / 2)) * 64 + 8 * j + 2 * t + e % 2] = e4[4 * j + e];
}

struct DemoData {
    static constexpr int BATCH = 2;
    DBuf<__nv_bfloat16> A{(size_t)BATCH * 64 * 64}, B{(size_t)BATCH * 64 * 64}, V{(size_t)BATCH * 64 * 64};
    TmaDesc mapA, mapB, mapV;
    std::vector<double> refC, tolC, refE, tolE;
    DemoData() {
        Rng rng(1717);
        for (size_t i = 0; i < A.n; i++) A[i] = __float2bfloat16_rn(rng.sym());
        for (size_t i = 0; i < B.n; i++) B[i] = __float2bfloat16_rn(rng.sym());
        for (size_t i = 0; i < V.n; i++) V[i] = __float2bfloat16_rn(rng.sym());
        const uint64_t dims[3] = {64, 64, BATCH}, strides[2] = {128, 8192};
        const uint32_t boxA[3] = {64, 64, 1}, boxB[3] = {64, 16, 1}, es[3] = {1, 1, 1};
        int rc = 0;
        rc |= emu::tensor_map_encode_tiled(&mapA, emu::TMAP_BFLOAT16, 3, A.p, dims, strides, boxA, es, 0, emu::TMAP_SWIZZLE_128B, 2, 0);
        rc |= emu::tensor_map_encode_tiled(&mapB, emu::TMAP_BFLOAT16, 3, B.p, dims, strides, boxB, es, 0, emu::TMAP_SWIZZLE_128B, 2, 0);
        rc |= emu::tensor_map_encode_tiled(&mapV, emu::TMAP_BFLOAT16, 3, V.p, dims, strides, boxA, es, 0, emu::TMAP_SWIZZLE_128B, 2, 0);
        if (rc) emu::fail("demo: tensor map encoding failed");
        refC.resize((size_t)BATCH * 64 * 64);
        tolC.resize(refC.size());
        refE.resize(refC.size());
        tolE.resize(refC.size());
        for (int b = 0; b < BATCH; b++) {
            std::vector<double> cb(64 * 64);
            for (int m = 0; m < 64; m++)
                for (int n = 0; n < 64; n++) {
                    double s = 0, mag = 0;
                    for (int k = 0; k < 64; k++) {
                        const double p = (double)to_float(A[(size_t)(b * 64 + m) * 64 + k]) * to_float(B[(size_t)(b * 64 + k) * 64 + n]);
                        s += p;
                        mag += fabs(p);
                    }
                    refC[(size_t)(b * 64 + m) * 64 + n] = s;
                    tolC[(size_t)(b * 64 + m) * 64 + n] = 1e-6 * mag + 1e-7;
                    cb[(size_t)m * 64 + n] = round_t<__nv_bfloat16>((float)s);
                }
            for (int m = 0; m < 64; m++)
                for (int n = 0; n < 64; n++) {
                    double s = 0, mag = 0;
                    for (int k = 0; k < 64; k++) {
                        const double p = cb[(size_t)m * 64 + k] * to_float(V[(size_t)(b * 64 + k) * 64 + n]);
                        s += p;
                        mag += fabs(p);
                    }
                    refE[(size_t)(b * 64 + m) * 64 + n] = s;
                    tolE[(size_t)(b * 64 + m) * 64 + n] = 1.0 / 128 * mag + 1e-6;  // C's bf16 rounding may differ by an ulp
                }
        }
    }
};

// Runs the demo; true when both outputs match the reference (quiet when `quiet`).
bool run_demo(DemoData& d, Mutation mut, const std::string& name, bool quiet) {
    DBuf<float> C(d.refC.size()), E(d.refE.size());
    emu::launch("hopper_demo_gemm", dim3(DemoData::BATCH), dim3(256), SM_BYTES,
                [&] { demo_gemm(d.mapA, d.mapB, d.mapV, C.p, E.p, mut); });
    if (quiet) {
        for (size_t i = 0; i < d.refC.size(); i++) {
            if (!(fabs((double)C[i] - d.refC[i]) <= d.tolC[i])) return false;
            if (!(fabs((double)E[i] - d.refE[i]) <= d.tolE[i])) return false;
        }
        return true;
    }
    const bool okc = expect_close(name + " C = A B (SS)", C.p, d.refC, d.tolC);
    const bool oke = expect_close(name + " E = bf16(C) V (RS)", E.p, d.refE, d.tolE);
    return okc && oke;
}

void test_demo_gemm() {
    const std::string name = "hopper/demo gemm 64x64x64 TMA ring + wgmma";
    if (selected(name)) {
        DemoData d;
        run_demo(d, MUT_NONE, name, false);
    }
}

// Each mutation must be caught (an emulator error or a wrong result) under every schedule.
void test_mutations() {
    const Mutation muts[] = {MUT_NO_WAIT,      MUT_WRONG_PARITY, MUT_WRONG_SWIZZLE, MUT_WRONG_SBO,     MUT_NO_EXPECT_TX,
                             MUT_EARLY_REFILL, MUT_REWRITE_P,    MUT_TOUCH_ACC};
    const bool eager0 = emu::g_copy_eager;
    const emu::Schedule sched0 = emu::g_schedule;
    const struct {
        bool eager;
        emu::Schedule s;
        const char* what;
    } modes[] = {{false, emu::Schedule::LowestFirst, "lazy/lowest"},
                 {true, emu::Schedule::LowestFirst, "eager/lowest"},
                 {true, emu::Schedule::HighestFirst, "eager/highest"},
                 {false, emu::Schedule::RoundRobin, "lazy/round robin"}};
    DemoData d;
    for (Mutation m : muts) {
        const std::string name = std::string("hopper/mutation ") + mutation_name(m);
        if (!selected(name)) continue;
        std::string detail;
        bool all = true;
        for (const auto& md : modes) {
            emu::g_copy_eager = md.eager;
            emu::g_schedule = md.s;
            bool right = false;
            const std::string err = emu_error([&] { right = run_demo(d, m, name, true); });
            const bool caught = !err.empty() || !right;
            all = all && caught;
            detail += std::string(" [") + md.what + ": " + (!err.empty() ? "error: " + err.substr(0, 70) : right ? "NOT CAUGHT" : "wrong result") + "]";
        }
        emu::g_copy_eager = eager0;
        emu::g_schedule = sched0;
        report(name, all, "caught under every schedule:" + detail);
    }
}

}  // namespace

void test_hopper() {
    {
        // The emulated driver copies each kernel parameter with its own size: a tensor map is
        // 128 bytes passed by value (cuLaunchKernel's params[i] points at the 128 bytes).
        const std::string name = "hopper/emulated driver: parameter sizes with a tensor map";
        if (selected(name)) {
            using P = emu::ParamSizes<const __nv_bfloat16*, const TmaDesc, int, float>;
            const bool ok = P::v[0] == 8 && P::v[1] == 128 && P::v[2] == 4 && P::v[3] == 4 && alignof(TmaDesc) == 64;
            report(name, ok, "pointer 8, TmaDesc 128 (64-byte aligned), int 4, float 4");
        }
    }
    test_wgmma_layouts();
    test_tma_boxes();
    test_demo_gemm();
    // The rest does not depend on the schedule: once.
    if (!emu::g_copy_eager && emu::g_schedule == emu::Schedule::LowestFirst) {
        test_tensor_map_rules();
        test_mbarrier();
        test_warpgroup_rules();
        test_mutations();
    }
}
