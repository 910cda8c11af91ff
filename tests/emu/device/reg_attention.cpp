#include "attention.cu"
#include "registry.h"
EMU_REGISTER(flash_attn_fwd_d64)
EMU_REGISTER(attn_naive_f32)
EMU_REGISTER(attn_naive_bf16)
EMU_REGISTER(attn_naive_f16)
