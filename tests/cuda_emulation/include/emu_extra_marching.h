// Emulation of the CUDA features the marching / compositing kernels use beyond emu_cuda.h
// (tests/cuda_emulation): float <-> bits reinterpretation and 32-bit atomicCAS / atomicExch
// through std::atomic_ref. Each definition is guarded so that another op's extra header may
// provide the same intrinsic.
#pragma once
#include <atomic>
#include <cstdint>
#include <cstring>

#ifndef OMNIFIELD_EMU_UINT_AS_FLOAT
#define OMNIFIELD_EMU_UINT_AS_FLOAT
inline float __uint_as_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
#endif

#ifndef OMNIFIELD_EMU_ATOMIC_CAS_U32
#define OMNIFIELD_EMU_ATOMIC_CAS_U32
inline uint32_t atomicCAS(uint32_t* p, uint32_t compare, uint32_t value) {
  std::atomic_ref<uint32_t> a(*p);
  a.compare_exchange_strong(compare, value);
  return compare;  // the old value either way
}
#endif

#ifndef OMNIFIELD_EMU_ATOMIC_EXCH_U32
#define OMNIFIELD_EMU_ATOMIC_EXCH_U32
inline uint32_t atomicExch(uint32_t* p, uint32_t value) { return std::atomic_ref<uint32_t>(*p).exchange(value); }
#endif
