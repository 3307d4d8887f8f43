// Emulation stand-in for CUB's header (tests/cuda_emulation): see emu_cub.h.
#include "emu_cub.h"
