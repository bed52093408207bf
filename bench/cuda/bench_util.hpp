// Shared by the CUDA benchmarks: a CUDA-call check that exits, CUDA-event timing of one
// Google Benchmark iteration (median over iterations), and deterministic device fills.
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
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

/// Median of `v` (0 when empty).
inline double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

/// A 512 MB device scratch buffer for Timer::queued_median, allocated once per process.
inline void* busy_buffer(std::size_t& bytes) {
  static void* busy = nullptr;
  bytes = std::size_t(512) << 20;
  if (!busy) CK(cudaMalloc(&busy, bytes));
  return busy;
}

/// CUDA-event time of each iteration's timed calls (ms), handed to Google Benchmark as
/// manual time; median() over the iterations is what the reports use. The calls are issued
/// on an idle stream, so that time includes the host's share of the call (validation,
/// tensor-map encoding, launches) while the GPU waits for it — what a caller that waits for
/// every call sees. host_median_us() is that host share alone (the calls' own time on the
/// CPU, std::chrono), and queued_median() times the device's work alone (below).
struct Timer {
  cudaEvent_t a, b;
  std::vector<double> ms, host_us;
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
    const auto h0 = std::chrono::steady_clock::now();
    f();
    const auto h1 = std::chrono::steady_clock::now();
    CK(cudaEventRecord(b, s));  // before the bookkeeping below: the events time the call alone
    host_us.push_back(std::chrono::duration<double, std::micro>(h1 - h0).count());
    CK(cudaEventSynchronize(b));
    float t = 0;
    CK(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
    state.SetIterationTime(t * 1e-3);
  }
  double median() const { return median_of(ms); }
  double host_median_us() const { return median_of(host_us); }
  /// The median CUDA-event time (ms) of `n` calls f(), each queued behind a 512 MB memset
  /// of a scratch buffer (≈ 0.18 ms of device work, as the cache flush of
  /// triton.testing.do_bench): the host has issued the call before the GPU reaches the
  /// first event, so the events time the device's work alone — what a caller that keeps
  /// the GPU's queue filled sees. The memset also leaves nothing of the inputs in L2.
  template <class F>
  double queued_median(cudaStream_t s, F&& f, int n = 10) {
    std::size_t bytes = 0;
    void* busy = busy_buffer(bytes);
    std::vector<double> q;
    for (int i = 0; i < n; ++i) {
      CK(cudaMemsetAsync(busy, i & 0xFF, bytes, s));
      CK(cudaEventRecord(a, s));
      f();
      CK(cudaEventRecord(b, s));
      CK(cudaEventSynchronize(b));
      float t = 0;
      CK(cudaEventElapsedTime(&t, a, b));
      q.push_back(t);
    }
    return median_of(q);
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
