// Host emulation of the CUDA features the Gaussian kernels use (tests/cuda_emulation): one std::thread
// per CUDA thread, blocks one after another; __syncthreads via std::barrier, warp shuffles and votes
// through per-warp slots and barriers, atomics through std::atomic_ref. `__shared__` becomes `static`
// (one block runs at a time); dynamic shared memory and `<<<...>>>` launches are rewritten by
// emulate.py. Shared memory starts filled with garbage so reads of unwritten slots show. Slow (a
// thread per pixel), exact in control flow: for logic tests of the kernels on machines without GPUs.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#include <functional>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define CUB_RUNTIME_FUNCTION

typedef int cudaError_t;
constexpr cudaError_t cudaSuccess = 0;
typedef void* cudaStream_t;
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "emulated"; }

inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline uint32_t __float_as_uint(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
using std::min;
using std::max;

namespace emu {
struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
  std::vector<float> slots_f;
  std::vector<int> slots_i;
  std::atomic<int> count{0};
  std::vector<unsigned char> smem;
};
inline Block* g_block = nullptr;
inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }
template <typename T> T* dyn_smem() { return reinterpret_cast<T*>(g_block->smem.data()); }

template <typename K, typename... A>
void launch(K kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t, A... args) {
  const unsigned nt = block.x * block.y * block.z;
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b;
        b.bar = std::make_unique<std::barrier<>>(nt);
        for (unsigned w = 0; w < (nt + 31) / 32; ++w)
          b.warp_bar.push_back(std::make_unique<std::barrier<>>(std::min(32u, nt - 32 * w)));
        b.slots_f.assign(nt, 0.f);
        b.slots_i.assign(nt, 0);
        b.smem.assign(smem + 64, 0xCD);  // garbage fill: reads of unwritten shared memory show up
        g_block = &b;
        std::vector<std::thread> threads;
        threads.reserve(nt);
        for (unsigned t = 0; t < nt; ++t)
          threads.emplace_back([&, t] {
            blockIdx = dim3(bx, by, bz);
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            kernel(args...);
          });
        for (auto& th : threads) th.join();
        g_block = nullptr;
      }
}
}  // namespace emu

inline void __syncthreads() { emu::g_block->bar->arrive_and_wait(); }
inline int __syncthreads_count(int pred) {
  auto* b = emu::g_block;
  b->bar->arrive_and_wait();
  if (emu::linear_tid() == 0) b->count = 0;
  b->bar->arrive_and_wait();
  b->count += pred ? 1 : 0;
  b->bar->arrive_and_wait();
  const int c = b->count;
  b->bar->arrive_and_wait();
  return c;
}
inline float __shfl_down_sync(unsigned, float v, int off) {
  auto* b = emu::g_block;
  const unsigned t = emu::linear_tid(), lane = t % 32, w = t / 32;
  b->slots_f[t] = v;
  b->warp_bar[w]->arrive_and_wait();
  const float r = lane + off < 32 ? b->slots_f[t + off] : v;
  b->warp_bar[w]->arrive_and_wait();
  return r;
}
inline int __any_sync(unsigned, int pred) {
  auto* b = emu::g_block;
  const unsigned t = emu::linear_tid(), w = t / 32;
  b->slots_i[t] = pred ? 1 : 0;
  b->warp_bar[w]->arrive_and_wait();
  int any = 0;
  for (unsigned k = 32 * w; k < 32 * w + 32; ++k) any |= b->slots_i[k];
  b->warp_bar[w]->arrive_and_wait();
  return any;
}
inline float atomicAdd(float* p, float v) { return std::atomic_ref<float>(*p).fetch_add(v); }
inline int atomicMax(int* p, int v) {
  std::atomic_ref<int> a(*p);
  int old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {}
  return old;
}

// Per-op additions (issue 5): features only some kernels use live in their own headers.
#if __has_include("emu_extra_encodings.h")
#include "emu_extra_encodings.h"
#endif
#if __has_include("emu_extra_marching.h")
#include "emu_extra_marching.h"
#endif
