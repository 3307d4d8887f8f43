// Host stand-ins for the two CUB algorithms the kernels use (tests/cuda_emulation): an inclusive
// scan and a stable LSD-equivalent sort of (key, value) pairs on bits [begin_bit, end_bit).
#pragma once
#include <type_traits>
#include <vector>

#include "emu_cuda.h"
namespace cub {
struct DeviceScan {
  template <typename I, typename O, typename N>
  static cudaError_t InclusiveSum(void* temp, size_t& bytes, I in, O out, N n, cudaStream_t = 0) {
    if (!temp) { bytes = 8; return cudaSuccess; }
    std::remove_cv_t<std::remove_reference_t<decltype(*out)>> acc = 0;
    for (N i = 0; i < n; ++i) { acc += in[i]; out[i] = acc; }
    return cudaSuccess;
  }
};
struct DeviceRadixSort {
  template <typename K, typename V, typename N>
  static cudaError_t SortPairs(void* temp, size_t& bytes, const K* kin, K* kout, const V* vin, V* vout, N n,
                               int begin_bit = 0, int end_bit = sizeof(K) * 8, cudaStream_t = 0) {
    if (!temp) { bytes = 8; return cudaSuccess; }
    const K mask = end_bit >= 64 ? ~K(0) : ((K(1) << end_bit) - 1);
    std::vector<N> idx(n);
    for (N i = 0; i < n; ++i) idx[i] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](N a, N b) { return ((kin[a] & mask) >> begin_bit) < ((kin[b] & mask) >> begin_bit); });
    for (N i = 0; i < n; ++i) { kout[i] = kin[idx[i]]; vout[i] = vin[idx[i]]; }
    return cudaSuccess;
  }
};
}  // namespace cub
