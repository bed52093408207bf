// Shared by the CUDA tests: GPU detection and clean skipping, checked CUDA calls, the
// run's seed, and owning device buffers with views over them.
#pragma once

#include "common.hpp"

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

namespace gdr2::test {

/// True when a CUDA device is usable (clears the error cudaGetDeviceCount leaves otherwise).
inline bool have_gpu() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

/// First statement of every device test: without a GPU it passes with a warning.
#define SKIP_WITHOUT_GPU()                                     \
  if (!gdr2::test::have_gpu()) {                               \
    WARN("no CUDA device (cudaGetDeviceCount): test skipped"); \
    return;                                                    \
  }

/// REQUIRE a CUDA call to succeed, naming the call and the error.
#define CUDA_OK(x)                                \
  do {                                            \
    const cudaError_t e_ = (x);                   \
    INFO(#x << " -> " << cudaGetErrorString(e_)); \
    REQUIRE(e_ == cudaSuccess);                   \
  } while (0)

/// The run's base seed: fresh per run, or GDR2_TEST_SEED to replay one. Printed once, so
/// that a run whose errors pass but stand out (an accuracy line) can be replayed too.
inline std::uint64_t base_seed() {
  static const std::uint64_t s = [] {
    std::uint64_t v = std::uint64_t(std::chrono::high_resolution_clock::now().time_since_epoch().count());
    if (const char* e = std::getenv("GDR2_TEST_SEED")) v = std::uint64_t(std::strtoull(e, nullptr, 10));
    std::printf("[test-seed] GDR2_TEST_SEED=%llu\n", static_cast<unsigned long long>(v));
    return v;
  }();
  return s;
}

/// Owning device buffer of `n` elements.
template <class X>
struct DBuf {
  X* p = nullptr;
  std::size_t n = 0;
  DBuf() = default;
  explicit DBuf(std::size_t count) : n(count) {
    if (n) CUDA_OK(cudaMalloc(&p, n * sizeof(X)));
  }
  DBuf(const DBuf&) = delete;
  DBuf& operator=(const DBuf&) = delete;
  DBuf(DBuf&& o) noexcept : p(o.p), n(o.n) { o.p = nullptr; }
  DBuf& operator=(DBuf&& o) noexcept {
    std::swap(p, o.p);
    std::swap(n, o.n);
    return *this;
  }
  ~DBuf() {
    if (p) cudaFree(p);
  }
  void upload(const X* h) { CUDA_OK(cudaMemcpy(p, h, n * sizeof(X), cudaMemcpyHostToDevice)); }
  void download(X* h) const { CUDA_OK(cudaMemcpy(h, p, n * sizeof(X), cudaMemcpyDeviceToHost)); }
  /// All bits set: NaN for fp16, bf16 and fp32, so an element never written fails a check.
  void poison() { CUDA_OK(cudaMemset(p, 0xFF, n * sizeof(X))); }
};

/// A device copy of a host tensor.
template <class X>
DBuf<X> to_device(const Tensor<X>& t) {
  DBuf<X> d(std::size_t(t.size()));
  if (t.size()) d.upload(t.data());
  return d;
}

/// A view of `d` with the shape of `t` (contiguous), or an empty view for an empty `t`.
template <class X>
View<X> dview(const DBuf<X>& d, const Tensor<X>& t) {
  if (t.empty()) return {};
  return View<X>(d.p, t.shape(), contiguous_strides(t.shape()));
}

/// A device copy of a [B, T, H, D] host tensor stored head-major, [B, H, T, D]: the
/// layout of many attention kernels, whose views have non-monotonic strides.
template <class X>
DBuf<X> to_device_head_major(const Tensor<X>& t) {
  const auto& s = t.shape();
  std::vector<X> h(std::size_t(t.size()));
  for (Index b = 0; b < s[0]; ++b)
    for (Index i = 0; i < s[1]; ++i)
      for (Index j = 0; j < s[2]; ++j)
        for (Index d = 0; d < s[3]; ++d) h[std::size_t(((b * s[2] + j) * s[1] + i) * s[3] + d)] = t.view()(b, i, j, d);
  DBuf<X> d(h.size());
  if (!h.empty()) d.upload(h.data());
  return d;
}

/// The [B, T, H, D] view of a to_device_head_major copy.
template <class X>
View<X> dview_head_major(const DBuf<X>& d, const Tensor<X>& t) {
  if (t.empty()) return {};
  const auto& s = t.shape();
  return View<X>(d.p, s, {s[1] * s[2] * s[3], s[3], s[1] * s[3], 1});
}

}  // namespace gdr2::test
