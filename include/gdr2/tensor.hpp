// gdr2 — strided tensor views and dtype traits.
//
// A View is a non-owning (pointer, 4 extents, 4 strides) triple, strides in
// elements. Every activation is seen as rank 4 — [B, T, H, D] — and a per-head
// scalar (β, a scalar decay) as [B, T, H, 1]. States are [N, H, K, V] views; a
// V-major state is the same view with the last two strides swapped.
//
// Tensor<T> is a small owning buffer used by the examples, the tests and the
// reference helpers; the engines themselves only take Views.
#pragma once

#include "eigen.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

namespace gdr2 {

/// Signed index type used for every extent, stride and offset.
using Index = std::int64_t;

// ---------------------------------------------------------------------------
// dtype traits: input element type → accumulation type and a printable name.
// ---------------------------------------------------------------------------
template <class T>
struct scalar_traits;  // undefined for unsupported element types

template <>
struct scalar_traits<double> {
  using accum = double;
  static constexpr const char* name = "float64";
};
template <>
struct scalar_traits<float> {
  using accum = float;
  static constexpr const char* name = "float32";
};
template <>
struct scalar_traits<Eigen::bfloat16> {
  using accum = float;
  static constexpr const char* name = "bfloat16";
};
template <>
struct scalar_traits<Eigen::half> {
  using accum = float;
  static constexpr const char* name = "float16";
};

/// Accumulation type for inputs of type T: float for fp32/bf16/fp16, double for fp64.
template <class T>
using accum_t = typename scalar_traits<std::remove_const_t<T>>::accum;

/// Printable dtype name ("bfloat16", ...).
template <class T>
constexpr const char* dtype_name() {
  return scalar_traits<std::remove_const_t<T>>::name;
}

/// Convert between supported element types (through float for the 16-bit types).
template <class To, class From>
inline To convert(From x) {
  using F = std::remove_const_t<From>;
  if constexpr (std::is_same_v<F, To>) {
    return x;
  } else if constexpr (std::is_same_v<F, Eigen::bfloat16> || std::is_same_v<F, Eigen::half>) {
    return static_cast<To>(static_cast<float>(x));
  } else if constexpr (std::is_same_v<To, Eigen::bfloat16> || std::is_same_v<To, Eigen::half>) {
    return To(static_cast<float>(x));
  } else {
    return static_cast<To>(x);
  }
}

// ---------------------------------------------------------------------------
// View
// ---------------------------------------------------------------------------

/// Non-owning rank-4 strided view. `data == nullptr` means "not given".
template <class T>
struct View {
  T* data = nullptr;
  std::array<Index, 4> shape{0, 0, 0, 0};
  std::array<Index, 4> stride{0, 0, 0, 0};

  View() = default;
  View(T* p, std::array<Index, 4> sh, std::array<Index, 4> st) : data(p), shape(sh), stride(st) {}
  /// View<T> converts to View<const T>.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  View(const View<U>& o) : data(o.data), shape(o.shape), stride(o.stride) {}

  bool given() const { return data != nullptr; }
  Index size() const { return shape[0] * shape[1] * shape[2] * shape[3]; }
  Index offset(Index i0, Index i1, Index i2, Index i3) const {
    return i0 * stride[0] + i1 * stride[1] + i2 * stride[2] + i3 * stride[3];
  }
  T& operator()(Index i0, Index i1, Index i2, Index i3) const { return data[offset(i0, i1, i2, i3)]; }
  /// Pointer to element (i0, i1, i2, 0): the start of one feature row.
  T* row(Index i0, Index i1, Index i2) const { return data + offset(i0, i1, i2, 0); }
};

/// dst[0..n) ← src[0..n), for output rows that nothing reads soon: non-temporal stores
/// where the destination is 16-byte aligned (x86 SSE2 and up; the destination lines are
/// not read for ownership first: half the memory traffic of plain stores to memory that
/// is not in cache), plain stores elsewhere. Whole 64-byte lines per store where the
/// destination is line-aligned (AVX-512; Tensor's storage is), 16-byte stores where it
/// is only 16-byte aligned (malloc's buffers): write-combining merges those into lines.
/// Callers that hand the results to another thread end with store_fence()
/// (parallel_for does, after every task).
template <class Acc>
inline void stream_row(Acc* dst, const Acc* src, Index n) {
  Index i = 0;
#if defined(__AVX512F__)
  if (reinterpret_cast<std::uintptr_t>(dst) % 64 == 0) {
    if constexpr (std::is_same_v<Acc, float>) {
      for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
    } else if constexpr (std::is_same_v<Acc, double>) {
      for (; i + 8 <= n; i += 8) _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
    }
  }
#endif
#if defined(__SSE2__)
  if (reinterpret_cast<std::uintptr_t>(dst) % 16 == 0) {
    if constexpr (std::is_same_v<Acc, float>) {
      for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    } else if constexpr (std::is_same_v<Acc, double>) {
      for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
    }
  }
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

/// Make this thread's non-temporal stores (stream_row) visible before what follows.
inline void store_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

static_assert(sizeof(Eigen::bfloat16) == 2 && sizeof(Eigen::half) == 2, "16-bit types are their bits");

/// Rows [t0, t0+n) of head h, batch row b of a [B, T, H, D] view (unit feature stride),
/// first `width` features, converted to U into dst (n rows, leading dimension ld): one
/// strided block copy, vectorised by Eigen.
template <class U, class T>
void copy_rows(const View<T>& v, Index b, Index t0, Index n, Index h, Index width, U* dst, Index ld) {
  using S = std::remove_const_t<T>;
  if constexpr (std::is_same_v<S, Eigen::bfloat16> && std::is_same_v<U, float>) {
    // bf16 → fp32 is the 16 bits moved up: a shift the compiler vectorises (Eigen's
    // cast converts one element at a time).
    for (Index r = 0; r < n; ++r) {
      const auto* src = reinterpret_cast<const std::uint16_t*>(v.row(b, t0 + r, h));
      float* d = dst + r * ld;
      for (Index i = 0; i < width; ++i) {
        const std::uint32_t bits = std::uint32_t(src[i]) << 16;
        std::memcpy(d + i, &bits, sizeof bits);
      }
    }
    return;
  }
#if defined(__F16C__)
  if constexpr (std::is_same_v<S, Eigen::half> && std::is_same_v<U, float>) {
    // fp16 → fp32 eight at a time (vcvtph2ps); Eigen's cast converts one at a time.
    for (Index r = 0; r < n; ++r) {
      const auto* src = reinterpret_cast<const std::uint16_t*>(v.row(b, t0 + r, h));
      float* d = dst + r * ld;
      Index i = 0;
      for (; i + 8 <= width; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
      for (; i < width; ++i) d[i] = static_cast<float>(v.row(b, t0 + r, h)[i]);
    }
    return;
  }
#endif
  using Src = Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
  using Dst = Eigen::Map<Eigen::Matrix<U, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
  Dst(dst, n, width, Eigen::OuterStride<>(ld)) =
      Src(v.row(b, t0, h), n, width, Eigen::OuterStride<>(v.stride[1])).template cast<U>();
}

/// Row-major contiguous strides for the given extents.
inline std::array<Index, 4> contiguous_strides(std::array<Index, 4> sh) {
  return {sh[1] * sh[2] * sh[3], sh[2] * sh[3], sh[3], 1};
}

/// Contiguous [d0, d1, d2, d3] view over `p` (token-major activations: [B, T, H, D]).
template <class T>
View<T> make_view(T* p, Index d0, Index d1, Index d2, Index d3) {
  return View<T>(p, {d0, d1, d2, d3}, contiguous_strides({d0, d1, d2, d3}));
}

/// Contiguous [B, T, H] per-head scalar (β or a scalar decay), seen as [B, T, H, 1].
template <class T>
View<T> make_scalar_view(T* p, Index B, Index T_, Index H) {
  return make_view(p, B, T_, H, Index(1));
}

/// Contiguous per-head parameter [H, D] (A_log: D = 1; dt_bias: D = K), seen as [1, 1, H, D].
template <class T>
View<T> make_head_view(T* p, Index H, Index D = 1) {
  return make_view(p, Index(1), Index(1), H, D);
}

/// Memory order of a contiguous state buffer.
enum class StateLayout {
  KV,  ///< [N, H, K, V]: value index fastest (default)
  VK,  ///< [N, H, V, K]: key index fastest ("V-major" storage)
};

/// View of a contiguous state buffer, always indexed as (n, h, k, v).
template <class T>
View<T> make_state_view(T* p, Index N, Index H, Index K, Index V, StateLayout layout = StateLayout::KV) {
  if (layout == StateLayout::KV) return make_view(p, N, H, K, V);
  return View<T>(p, {N, H, K, V}, {H * K * V, K * V, 1, K});
}

inline std::string shape_string(const std::array<Index, 4>& s) {
  return "[" + std::to_string(s[0]) + ", " + std::to_string(s[1]) + ", " + std::to_string(s[2]) + ", " +
         std::to_string(s[3]) + "]";
}

// ---------------------------------------------------------------------------
// Tensor: owning, contiguous, rank 4.
// ---------------------------------------------------------------------------

/// Owning contiguous rank-4 buffer (zero-initialised), aligned to Eigen's largest packet
/// (64 bytes with AVX-512): a 512-byte feature row then spans 8 cache lines, not 9.
/// Rank-3 data uses d3 = 1.
template <class T>
class Tensor {
 public:
  Tensor() = default;
  Tensor(Index d0, Index d1, Index d2, Index d3) : shape_{d0, d1, d2, d3}, data_(size_t(d0 * d1 * d2 * d3)) {}

  View<T> view() { return data_.empty() ? View<T>() : View<T>(data_.data(), shape_, contiguous_strides(shape_)); }
  View<const T> view() const {
    return data_.empty() ? View<const T>() : View<const T>(data_.data(), shape_, contiguous_strides(shape_));
  }
  /// (n, h, k, v)-indexed view of a state buffer stored as [N, H, K, V] (KV) or
  /// [N, H, V, K] (VK): this tensor's own shape is the storage shape.
  View<T> state_view(StateLayout layout) {
    if (layout == StateLayout::KV) return make_state_view(data_.data(), shape_[0], shape_[1], shape_[2], shape_[3], layout);
    return make_state_view(data_.data(), shape_[0], shape_[1], shape_[3], shape_[2], layout);
  }
  T* data() { return data_.data(); }
  const T* data() const { return data_.data(); }
  Index size() const { return Index(data_.size()); }
  bool empty() const { return data_.empty(); }
  const std::array<Index, 4>& shape() const { return shape_; }
  T& operator[](Index i) { return data_[size_t(i)]; }
  const T& operator[](Index i) const { return data_[size_t(i)]; }
  void fill(T x) { std::fill(data_.begin(), data_.end(), x); }

  /// Element-wise converted copy (e.g. fp64 → bf16 rounding, or back to fp64).
  template <class U>
  Tensor<U> cast() const {
    Tensor<U> out(shape_[0], shape_[1], shape_[2], shape_[3]);
    for (Index i = 0; i < size(); ++i) out[i] = convert<U>(data_[size_t(i)]);
    return out;
  }

 private:
  std::array<Index, 4> shape_{0, 0, 0, 0};
  std::vector<T, Eigen::aligned_allocator<T>> data_;  // aligned as Eigen's packets (64 bytes with AVX-512)
};

/// Copy any view (of any element type) into a contiguous Tensor<U>.
template <class U, class T>
Tensor<U> to_tensor(const View<T>& v) {
  if (!v.given()) return Tensor<U>();
  Tensor<U> out(v.shape[0], v.shape[1], v.shape[2], v.shape[3]);
  Index i = 0;
  for (Index a = 0; a < v.shape[0]; ++a)
    for (Index b = 0; b < v.shape[1]; ++b)
      for (Index c = 0; c < v.shape[2]; ++c)
        for (Index d = 0; d < v.shape[3]; ++d) out[i++] = convert<U>(v(a, b, c, d));
  return out;
}

}  // namespace gdr2
