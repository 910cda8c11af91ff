// Kernel registry of the emulated device: every extern "C" kernel of kernels/*.cu by name, with
// an invoker that unpacks cuLaunchKernel's parameter array by the kernel's own C signature.
#pragma once
#include <map>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda_emu.h"

namespace emu {
using Invoker = void (*)(void* fn, void** params);
struct KernelEntry {
    const char* name;
    void* fn;
    Invoker invoke;
    int arity;            // number of parameters
    const size_t* sizes;  // their sizes in bytes (a tensor map: 128)
};
std::map<std::string, KernelEntry>& registry();

template <typename... A, size_t... I>
void call_unpacked(void (*fn)(A...), void** p, std::index_sequence<I...>) {
    fn(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(p[I])...);
}
template <typename... A>
void invoke_as(void* fn, void** p) {
    call_unpacked(reinterpret_cast<void (*)(A...)>(fn), p, std::index_sequence_for<A...>{});
}
template <typename... A>
struct ParamSizes {
    static constexpr size_t v[sizeof...(A) + 1] = {sizeof(std::remove_cv_t<std::remove_reference_t<A>>)..., 0};
};
template <typename... A>
struct Registrar {
    Registrar(const char* name, void (*fn)(A...)) {
        registry()[name] = KernelEntry{name, (void*)fn, &invoke_as<A...>, (int)sizeof...(A), ParamSizes<A...>::v};
    }
};
template <typename... A>
Registrar<A...> make_registrar(const char* name, void (*fn)(A...)) {
    return Registrar<A...>(name, fn);
}
}  // namespace emu

#define EMU_REGISTER(fn) static auto emu_reg_##fn = emu::make_registrar(#fn, fn);
