// Emulation stand-in (tests/cuda_emulation): the device guard of the glue does nothing on the host.
#pragma once
#include <c10/core/Device.h>
namespace c10 {
namespace cuda {
struct OptionalCUDAGuard {
  explicit OptionalCUDAGuard(c10::Device) {}
};
}  // namespace cuda
}  // namespace c10
