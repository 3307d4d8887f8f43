// Emulation additions for the encodings kernels (cuda/csrc/hash_grid, cuda/csrc/sh), included by
// emu_cuda.h: the half-precision type as stored by torch (IEEE binary16 bits) and the conversions
// the kernels read tables with. Host-only, exact (every half is a float).
#pragma once
#include <cmath>
#include <cstdint>

struct __half {
  uint16_t x;  // the IEEE binary16 bits (the layout of at::Half and of CUDA's __half)
};
struct __half2 {
  __half x, y;
};

inline float __half2float(__half h) {
  const unsigned e = (h.x >> 10) & 0x1fu, m = h.x & 0x3ffu;
  float mag;
  if (e == 0)
    mag = std::ldexp(static_cast<float>(m), -24);  // zero and subnormals
  else if (e == 31)
    mag = m ? NAN : INFINITY;
  else
    mag = std::ldexp(static_cast<float>(m | 0x400u), static_cast<int>(e) - 25);
  return (h.x & 0x8000u) ? -mag : mag;
}

inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
