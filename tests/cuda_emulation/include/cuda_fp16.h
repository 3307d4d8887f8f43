// Emulation stand-in (tests/cuda_emulation) for CUDA's cuda_fp16.h, found first on the include
// path: __half and its conversions come from emu_extra_encodings.h through emu_cuda.h.
#pragma once
#include "emu_cuda.h"
