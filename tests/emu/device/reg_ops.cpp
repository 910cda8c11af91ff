#include "ops.cu"
#include "registry.h"
#define REG_T(S) EMU_REGISTER(act_##S) EMU_REGISTER(softmax_last_##S) EMU_REGISTER(layer_norm_##S) EMU_REGISTER(ln_modulate_##S) \
    EMU_REGISTER(rms_norm_##S) EMU_REGISTER(axpby_##S) EMU_REGISTER(mul_##S) EMU_REGISTER(add_bcast_##S)                       \
    EMU_REGISTER(gated_residual_##S) EMU_REGISTER(embedding_##S) EMU_REGISTER(qk_rms_norm_##S)
REG_T(f32)
REG_T(bf16)
REG_T(f16)
EMU_REGISTER(cast_any)
EMU_REGISTER(copy_nd)
