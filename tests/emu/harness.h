// Test helpers of the kernel emulation: device buffers, random inputs, comparisons against
// double-precision references. Each test file includes one kernels/*.cu.
#pragma once
#include <stdio.h>

#include <string>
#include <vector>

#include "cuda_emu.h"

// A device buffer of n T ending at a guard page, filled with NaN bytes until written.
template <typename T>
struct DBuf {
    T* p = nullptr;
    size_t n = 0;
    explicit DBuf(size_t count) : p(static_cast<T*>(emu::device_alloc(count * sizeof(T) + (count == 0)))), n(count) {
        memset((void*)p, 0xff, count * sizeof(T));
    }
    ~DBuf() { emu::device_free(p); }
    DBuf(const DBuf&) = delete;
    DBuf& operator=(const DBuf&) = delete;
    T& operator[](size_t i) { return p[i]; }
};

// Deterministic inputs (splitmix64).
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9e3779b97f4a7c15ull + 1) {}
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    float uniform() { return (float)((next() >> 40) * (1.0 / 16777216.0)); }  // [0, 1)
    float sym(float a = 1.f) { return (2.f * uniform() - 1.f) * a; }          // [-a, a)
    int range(int n) { return (int)(next() % (uint64_t)n); }
};

// Storage conversions on the host side (same rounding as the device).
template <typename T> inline T to_t(float x);
template <> inline float to_t<float>(float x) { return x; }
template <> inline __nv_bfloat16 to_t<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> inline __half to_t<__half>(float x) { return __float2half_rn(x); }
inline float to_float(float x) { return x; }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float to_float(__half x) { return __half2float(x); }
template <typename T> inline float round_t(float x) { return to_float(to_t<T>(x)); }
template <typename T> inline const char* tname();
template <> inline const char* tname<float>() { return "f32"; }
template <> inline const char* tname<__nv_bfloat16>() { return "bf16"; }
template <> inline const char* tname<__half>() { return "f16"; }
// Relative precision of T's storage (half an ulp at 1).
template <typename T> inline double eps_t() { return 6e-8; }
template <> inline double eps_t<__nv_bfloat16>() { return 1.0 / 256; }
template <> inline double eps_t<__half>() { return 1.0 / 2048; }

// The activation codes of common.cuh (0 none, 1 SiLU, 2 tanh-GELU, 3 erf-GELU, 4 quick-GELU).
inline double act_ref(double x, int code) {
    switch (code) {
    case 1: return x / (1 + std::exp(-x));
    case 2: return 0.5 * x * (1 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    case 3: return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case 4: return x / (1 + std::exp(-1.702 * x));
    default: return x;
    }
}

int& failures();
bool selected(const std::string& name);

// Compares got[i] with ref[i]: |got - ref| <= tol[i] (tol per element) or atol + rtol |ref|.
// NaN in the output (an element the kernel never wrote, or a poisoned input that leaked)
// fails. Prints one line per case.
template <typename T>
bool expect_close(const std::string& name, const T* got, const std::vector<double>& ref, const std::vector<double>& tol) {
    double worst = 0, worst_ratio = 0;
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        const double g = to_float(got[i]);
        const double e = fabs(g - ref[i]);
        const bool ok = std::isfinite(g) ? e <= tol[i] : (std::isnan(ref[i]) || (std::isinf(ref[i]) && g == ref[i]));
        if (!ok) {
            if (bad == 0) first_bad = i;
            bad++;
        }
        if (std::isfinite(e)) {
            worst = e > worst ? e : worst;
            if (tol[i] > 0 && e / tol[i] > worst_ratio) worst_ratio = e / tol[i];
        }
    }
    if (bad) {
        printf("FAIL %s: %zu of %zu elements off (first at %zu: got %g, want %g +- %g); max |err| %.3g\n", name.c_str(), bad, ref.size(),
               first_bad, (double)to_float(got[first_bad]), ref[first_bad], tol[first_bad], worst);
        failures()++;
        return false;
    }
    printf("ok   %s: %zu elements, max |err| %.3g (%.2f of the bound)\n", name.c_str(), ref.size(), worst, worst_ratio);
    return true;
}

template <typename T>
bool expect_close(const std::string& name, const T* got, const std::vector<double>& ref, double atol, double rtol) {
    std::vector<double> tol(ref.size());
    for (size_t i = 0; i < ref.size(); i++) tol[i] = atol + rtol * fabs(ref[i]);
    return expect_close(name, got, ref, tol);
}

void test_attention();
void test_conv();
void test_gemm_int8();
void test_hopper();
void test_ops();
