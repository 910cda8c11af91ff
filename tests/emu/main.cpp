// Runs the kernels of kernels/*.cu on the CPU emulation (include/cuda_emu.h) against plain
// references. Usage: kernels_emu [substring ...]: only the cases whose name contains one of the
// substrings. Exit status 0 when every case passed. Driven by tests/kernels_emu.rs.
#include <stdio.h>

#include <string>
#include <vector>

#include "harness.h"

static std::vector<std::string> g_filters;

int& failures() {
    static int n = 0;
    return n;
}

bool selected(const std::string& name) {
    if (g_filters.empty()) return true;
    for (const std::string& f : g_filters)
        if (name.find(f) != std::string::npos) return true;
    return false;
}

int main(int argc, char** argv) {
    for (int i = 1; i < argc; i++) g_filters.push_back(argv[i]);
    setvbuf(stdout, nullptr, _IOLBF, 0);
    using emu::Schedule;
    const struct {
        bool eager;
        Schedule sched;
        const char* what;
    } modes[] = {
        {false, Schedule::LowestFirst, "copies land at the wait, lowest warp first"},
        {true, Schedule::LowestFirst, "copies land at issue, lowest warp first"},
        {true, Schedule::HighestFirst, "copies land at issue, highest warp first"},
        {false, Schedule::RoundRobin, "copies land at the wait, round robin"},
    };
    for (const auto& m : modes) {
        emu::g_copy_eager = m.eager;
        emu::g_schedule = m.sched;
        printf("== schedule: %s\n", m.what);
        test_ops();
        test_attention();
        test_conv();
        test_gemm_int8();
        test_hopper();
    }
    if (failures()) {
        printf("%d emulated kernel case(s) FAILED\n", failures());
        return 1;
    }
    printf("all emulated kernel cases passed\n");
    return 0;
}
