// Emulation stand-in (tests/cuda_emulation): the "current stream" of the glue is a null stream.
#pragma once
#include "emu_cuda.h"
namespace c10 {
namespace cuda {
struct EmuStream {
  cudaStream_t stream() const { return nullptr; }
};
inline EmuStream getCurrentCUDAStream() { return {}; }
}  // namespace cuda
}  // namespace c10
