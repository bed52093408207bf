// gdr2 CUDA backend — inputs of the phase-clock drivers (forward_phases.cu,
// backward_phases.cu; profiling only, not part of the library or of CI): uniform random
// device arrays from a fixed linear congruential sequence, so every run sees the same data.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <vector>

/// Exit with the failing call's CUDA error (a driver has nothing to recover).
#define GDR2_PROFILING_CHECK(x)                                                         \
  do {                                                                                  \
    cudaError_t e_ = (x);                                                               \
    if (e_ != cudaSuccess) {                                                            \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));  \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

/// n values uniform in [lo, hi) of type X (float, or a 16-bit type constructible from
/// float), copied to a new device allocation (never freed: the drivers exit).
template <class X>
X* dev_random(std::size_t n, float lo, float hi, unsigned seed) {
  std::vector<X> h(n);
  unsigned s = seed * 2654435761u + 1;
  for (auto& x : h) {
    s = s * 1664525u + 1013904223u;
    x = X(lo + (hi - lo) * float(s >> 8) / 16777216.f);
  }
  X* d = nullptr;
  GDR2_PROFILING_CHECK(cudaMalloc(&d, n * sizeof(X)));
  GDR2_PROFILING_CHECK(cudaMemcpy(d, h.data(), n * sizeof(X), cudaMemcpyHostToDevice));
  return d;
}
