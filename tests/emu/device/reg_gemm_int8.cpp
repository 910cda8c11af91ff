#include "gemm_int8.cu"
#include "registry.h"
EMU_REGISTER(dequant_i8_f32)
EMU_REGISTER(dequant_i8_bf16)
EMU_REGISTER(dequant_i8_f16)
EMU_REGISTER(w8a16_mma_bf16)
EMU_REGISTER(w8a16_mma_f16)
EMU_REGISTER(w8a16_mma_group_bf16)
EMU_REGISTER(w8a16_mma_group_f16)
EMU_REGISTER(w8a16_gemv_bf16)
EMU_REGISTER(w8a16_gemv_f16)
