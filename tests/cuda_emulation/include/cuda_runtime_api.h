// Emulation stand-in for the CUDA runtime header (tests/cuda_emulation): see emu_cuda.h.
#pragma once
#include "emu_cuda.h"
