#include "conv3d.cu"
#include "registry.h"
EMU_REGISTER(conv_f32_simt)
EMU_REGISTER(conv_bf16_mma)
EMU_REGISTER(conv_pack_weight_bf16)
EMU_REGISTER(conv_cache_update)
EMU_REGISTER(upsample_nearest2x_f32)
EMU_REGISTER(interleave_time_f32)
EMU_REGISTER(vae_channel_rms_norm_f32)
EMU_REGISTER(vae_copy2d_f32)
EMU_REGISTER(vae_softmax_dim0_f32)
