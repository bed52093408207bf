// Shared by the CUDA benchmarks: a CUDA-call check that exits, CUDA-event timing of one
// Google Benchmark iteration (median over iterations), and deterministic device fills.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace gdr2::bench {

/// Check a CUDA call; a benchmark cannot continue after a failed one: print and exit.
#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

/// CUDA-event time of each iteration's timed calls (ms), handed to Google Benchmark as
/// manual time; median() over the iterations is what the reports use.
struct Timer {
  cudaEvent_t a, b;
  std::vector<double> ms;
  Timer() {
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  template <class F>
  void iteration(benchmark::State& state, cudaStream_t s, F&& f) {
    CK(cudaEventRecord(a, s));
    f();
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float t = 0;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
    state.SetIterationTime(t * 1e-3);
  }
  double median() {
    std::sort(ms.begin(), ms.end());
    return ms.empty() ? 0 : ms[ms.size() / 2];
  }
};

/// Deterministic fill on the host (xorshift), values in [lo, hi).
template <class X>
void fill(std::vector<X>& v, double lo, double hi, std::uint64_t seed) {
  std::uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    const double u = double(s >> 11) * (1.0 / 9007199254740992.0);
    x = X(float(lo + (hi - lo) * u));
  }
}

/// n elements filled as by fill(), in a new device allocation (the caller frees it).
template <class X>
X* device_random(std::size_t n, double lo, double hi, std::uint64_t seed) {
  std::vector<X> h(n);
  fill(h, lo, hi, seed);
  X* d = nullptr;
  CK(cudaMalloc(&d, n * sizeof(X)));
  CK(cudaMemcpy(d, h.data(), n * sizeof(X), cudaMemcpyHostToDevice));
  return d;
}

}  // namespace gdr2::bench
