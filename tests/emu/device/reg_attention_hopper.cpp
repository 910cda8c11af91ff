#include "attention_hopper.cu"
#include "registry.h"
EMU_REGISTER(flash_attn_hopper_d64)
