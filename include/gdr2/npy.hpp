// gdr2 — reading and writing NumPy .npy files (format versions 1.0, 2.0, 3.0).
//
// Enough of the format to exchange tensors with Python unchanged (SPEC §6):
// C-order arrays of these dtypes, little-endian on disk:
//
//   descr   dtype                          C++ element type
//   '<f2'   float16                        Eigen::half
//   '<u2'   bfloat16 (see below)           Eigen::bfloat16
//   '<f4'   float32                        float
//   '<f8'   float64                        double
//   '<i4'   int32  (cu_seqlens, slots)     std::int32_t
//   '<i8'   int64  (cu_seqlens)            std::int64_t
//
// bfloat16 convention: NumPy has no bfloat16, so a bf16 tensor travels as its raw
// 16-bit patterns in a uint16 array. In Python: `np.save(f, t.view(torch.int16)
// .numpy().view(np.uint16))` from torch, or `x.view(np.uint16)` from an ml_dtypes
// bfloat16 array; back with `torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)`
// or `(a.astype(np.uint32) << 16).view(np.float32)`. This reader therefore reads
// every '<u2' file as bfloat16, and the writer writes bfloat16 as '<u2'.
//
// Misuse never throws or aborts: every call returns a gdr2::Status. A malformed
// file (wrong magic, unsupported version or dtype, Fortran order, bad header,
// truncated or over-long data) is Code::invalid_argument or Code::unsupported
// with a message that starts with the file name. Writers are atomic: the data go
// to a temporary file in the destination directory, renamed over the target only
// once everything was written, so an error never leaves a partial file behind.
#pragma once

#include "status.hpp"
#include "tensor.hpp"

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace gdr2 {
namespace npy {

/// Element types this reader and writer support.
enum class DType { float16, bfloat16, float32, float64, int32, int64 };

/// Printable dtype name ("bfloat16", "int32", ...).
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::int32: return "int32";
    case DType::int64: return "int64";
  }
  return "?";
}

/// The NumPy descr string written for a dtype ('<f4', ...; bfloat16 is '<u2').
inline const char* descr(DType t) {
  switch (t) {
    case DType::float16: return "<f2";
    case DType::bfloat16: return "<u2";
    case DType::float32: return "<f4";
    case DType::float64: return "<f8";
    case DType::int32: return "<i4";
    case DType::int64: return "<i8";
  }
  return "?";
}

/// Bytes per element.
inline Index dtype_size(DType t) {
  switch (t) {
    case DType::float16:
    case DType::bfloat16: return 2;
    case DType::float32:
    case DType::int32: return 4;
    case DType::float64:
    case DType::int64: return 8;
  }
  return 0;
}

/// True for the four floating-point dtypes.
inline bool is_float(DType t) { return t != DType::int32 && t != DType::int64; }

/// The dtype of a C++ element type (compile error for unsupported types).
template <class T>
constexpr DType dtype_of() {
  using U = std::remove_const_t<T>;
  if constexpr (std::is_same_v<U, Eigen::half>) return DType::float16;
  else if constexpr (std::is_same_v<U, Eigen::bfloat16>) return DType::bfloat16;
  else if constexpr (std::is_same_v<U, float>) return DType::float32;
  else if constexpr (std::is_same_v<U, double>) return DType::float64;
  else if constexpr (std::is_same_v<U, std::int32_t>) return DType::int32;
  else if constexpr (std::is_same_v<U, std::int64_t>) return DType::int64;
  else static_assert(sizeof(U) == 0, "gdr2::npy supports Eigen::half, Eigen::bfloat16, float, double, int32, int64");
}

/// "(2, 3)"-style shape as NumPy prints it; "(5,)" for rank 1, "()" for rank 0.
inline std::string shape_string(const std::vector<Index>& s) {
  std::string r = "(";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + (s.size() == 1 ? ",)" : ")");
}

namespace detail {

inline bool host_is_little_endian() {
  const std::uint16_t one = 1;
  unsigned char b;
  std::memcpy(&b, &one, 1);
  return b == 1;
}

/// Copy `n` bytes of one element between file order (little-endian) and host order.
inline void copy_element(unsigned char* dst, const unsigned char* src, Index n) {
  if (host_is_little_endian()) {
    std::memcpy(dst, src, size_t(n));
  } else {
    for (Index i = 0; i < n; ++i) dst[i] = src[n - 1 - i];
  }
}

/// Product of extents; false on overflow past `limit`.
inline bool checked_count(const std::vector<Index>& shape, Index limit, Index& count) {
  Index c = 1;
  for (Index d : shape) {
    if (d < 0) return false;
    if (d != 0 && c > limit / d) return false;
    c *= d;
  }
  count = c;
  return true;
}

inline Status bad(const std::string& what, const std::string& msg, Code code = Code::invalid_argument) {
  return {code, (what.empty() ? std::string("npy") : what) + ": " + msg};
}

/// Minimal parser for the header's Python dict literal, e.g.
/// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  explicit HeaderParser(const std::string& s) : s_(s) {}

  Status parse(const std::string& what, std::string& descr_out, bool& fortran, std::vector<Index>& shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    skip_ws();
    if (!eat('{')) return bad(what, "bad header: expected a Python dict literal, got '" + excerpt() + "'");
    for (;;) {
      skip_ws();
      if (eat('}')) break;
      std::string key;
      if (!string_literal(key)) return bad(what, "bad header: expected a quoted key at '" + excerpt() + "'");
      skip_ws();
      if (!eat(':')) return bad(what, "bad header: expected ':' after '" + key + "'");
      skip_ws();
      if (key == "descr") {
        if (have_descr) return bad(what, "bad header: 'descr' given twice");
        if (peek() == '[' || peek() == '(')
          return bad(what, "unsupported dtype: structured/record arrays are not supported", Code::unsupported);
        if (!string_literal(descr_out)) return bad(what, "bad header: 'descr' must be a quoted dtype string");
        have_descr = true;
      } else if (key == "fortran_order") {
        if (have_order) return bad(what, "bad header: 'fortran_order' given twice");
        if (word("True")) fortran = true;
        else if (word("False")) fortran = false;
        else return bad(what, "bad header: 'fortran_order' must be True or False");
        have_order = true;
      } else if (key == "shape") {
        if (have_shape) return bad(what, "bad header: 'shape' given twice");
        GDR2_RETURN_IF_ERROR(tuple(what, shape));
        have_shape = true;
      } else {
        return bad(what, "bad header: unexpected key '" + key + "'");
      }
      skip_ws();
      if (eat(',')) continue;
      skip_ws();
      if (eat('}')) break;
      return bad(what, "bad header: expected ',' or '}' at '" + excerpt() + "'");
    }
    skip_ws();
    if (pos_ != s_.size()) return bad(what, "bad header: unexpected text after the dict: '" + excerpt() + "'");
    if (!have_descr || !have_order || !have_shape)
      return bad(what, std::string("bad header: missing key '") +
                           (!have_descr ? "descr" : !have_order ? "fortran_order" : "shape") + "'");
    return {};
  }

 private:
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  bool eat(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }
  bool word(const char* w) {
    const size_t n = std::strlen(w);
    if (s_.compare(pos_, n, w) != 0) return false;
    pos_ += n;
    return true;
  }
  std::string excerpt() const { return s_.substr(pos_, 24); }
  bool string_literal(std::string& out) {
    const char q = peek();
    if (q != '\'' && q != '"') return false;
    const size_t end = s_.find(q, pos_ + 1);
    if (end == std::string::npos) return false;
    out = s_.substr(pos_ + 1, end - pos_ - 1);
    pos_ = end + 1;
    return true;
  }
  Status tuple(const std::string& what, std::vector<Index>& shape) {
    shape.clear();
    if (!eat('(')) return bad(what, "bad header: 'shape' must be a tuple of non-negative integers");
    for (;;) {
      skip_ws();
      if (eat(')')) return {};
      if (!std::isdigit(static_cast<unsigned char>(peek())))
        return bad(what, "bad header: 'shape' must be a tuple of non-negative integers, got '" + excerpt() + "'");
      Index v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const int digit = s_[pos_++] - '0';
        if (v > (std::numeric_limits<Index>::max() - digit) / 10) return bad(what, "bad header: a shape extent overflows");
        v = v * 10 + digit;
      }
      eat('L');  // Python 2 long literals, as in files written by old NumPy
      shape.push_back(v);
      skip_ws();
      if (eat(',')) continue;
      skip_ws();
      if (eat(')')) {
        return {};
      }
      return bad(what, "bad header: expected ',' or ')' in 'shape' at '" + excerpt() + "'");
    }
  }

  const std::string& s_;
  size_t pos_ = 0;
};

/// Map a descr string to a dtype, or explain why it is not supported.
inline Status parse_descr(const std::string& what, const std::string& d, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"<f2", DType::float16}, {"<u2", DType::bfloat16}, {"<f4", DType::float32},
      {"<f8", DType::float64}, {"<i4", DType::int32},    {"<i8", DType::int64}};
  for (const auto& [name, t] : table)
    if (d == name) {
      out = t;
      return {};
    }
  std::string why = "unsupported dtype '" + d + "'";
  if (!d.empty() && d[0] == '>') why += " (big-endian; save with x.astype(x.dtype.newbyteorder('<')))";
  why += "; supported: '<f2' float16, '<u2' bfloat16 bits, '<f4' float32, '<f8' float64, '<i4' int32, '<i8' int64";
  return bad(what, why, Code::unsupported);
}

constexpr unsigned char kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr Index kMaxHeader = Index(1) << 20;  // real headers are ~128 bytes; this guards against junk

/// Parse the fixed preamble (magic, version, header length): `pre` holds
/// `avail` bytes (at most 12 needed). Sets the header's byte length and offset.
inline Status parse_preamble(const std::string& what, const unsigned char* pre, Index avail, Index& header_len,
                             Index& header_offset) {
  if (avail < 8 || std::memcmp(pre, kMagic, 6) != 0)
    return bad(what, "not a .npy file (wrong magic: expected \\x93NUMPY)");
  const int major = pre[6], minor = pre[7];
  if (major == 1) {
    if (avail < 10) return bad(what, "truncated header (file ends inside the preamble)");
    header_len = Index(pre[8]) | (Index(pre[9]) << 8);
    header_offset = 10;
  } else if (major == 2 || major == 3) {
    if (avail < 12) return bad(what, "truncated header (file ends inside the preamble)");
    header_len = Index(pre[8]) | (Index(pre[9]) << 8) | (Index(pre[10]) << 16) | (Index(pre[11]) << 24);
    header_offset = 12;
  } else {
    return bad(what, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor) +
                         " (1.0, 2.0 and 3.0 are supported)",
               Code::unsupported);
  }
  if (header_len > kMaxHeader) return bad(what, "bad header: header length " + std::to_string(header_len) + " is implausible");
  return {};
}


/// Validate the header text and the data size that follows it; fills dtype and shape.
inline Status parse_header(const std::string& what, const std::string& header, Index have, DType& t,
                           std::vector<Index>& shape, Index& need) {
  std::string d;
  bool fortran = false;
  GDR2_RETURN_IF_ERROR(HeaderParser(header).parse(what, d, fortran, shape));
  GDR2_RETURN_IF_ERROR(parse_descr(what, d, t));
  if (fortran)
    return bad(what, "Fortran-order arrays are not supported; save np.ascontiguousarray(x) instead", Code::unsupported);
  Index count = 0;
  if (!checked_count(shape, std::numeric_limits<Index>::max() / 8, count))
    return bad(what, "bad header: shape " + shape_string(shape) + " is too large");
  need = count * dtype_size(t);
  if (have < need)
    return bad(what, "truncated data: shape " + shape_string(shape) + " of " + dtype_name(t) + " needs " +
                         std::to_string(need) + " bytes, the file has " + std::to_string(have));
  if (have > need)
    return bad(what, "data size mismatch: shape " + shape_string(shape) + " of " + dtype_name(t) + " needs " +
                         std::to_string(need) + " bytes, the file has " + std::to_string(have) + " (" +
                         std::to_string(have - need) + " extra)");
  return {};
}

}  // namespace detail

/// A C-order array read from or written to a .npy file: dtype, NumPy shape (any
/// rank) and the raw little-endian element bytes.
struct Array {
  DType dtype = DType::float32;
  std::vector<Index> shape;
  std::vector<unsigned char> bytes;

  /// Number of elements (product of the shape; 1 for rank 0).
  Index size() const {
    Index c = 1;
    for (Index d : shape) c *= d;
    return c;
  }
  Index rank() const { return Index(shape.size()); }

  /// Element i (C order) converted to U (any supported element type).
  template <class U>
  U get(Index i) const {
    unsigned char buf[8];
    const Index n = dtype_size(dtype);
    detail::copy_element(buf, bytes.data() + size_t(i * n), n);
    switch (dtype) {
      case DType::float16: {
        std::uint16_t raw;
        std::memcpy(&raw, buf, 2);
        return convert<U>(Eigen::numext::bit_cast<Eigen::half>(raw));
      }
      case DType::bfloat16: {
        std::uint16_t raw;
        std::memcpy(&raw, buf, 2);
        return convert<U>(Eigen::numext::bit_cast<Eigen::bfloat16>(raw));
      }
      case DType::float32: {
        float x;
        std::memcpy(&x, buf, 4);
        return cast_to<U>(x);
      }
      case DType::float64: {
        double x;
        std::memcpy(&x, buf, 8);
        return cast_to<U>(x);
      }
      case DType::int32: {
        std::int32_t x;
        std::memcpy(&x, buf, 4);
        return cast_to<U>(x);
      }
      case DType::int64: {
        std::int64_t x;
        std::memcpy(&x, buf, 8);
        return cast_to<U>(x);
      }
    }
    return U();
  }

  /// All elements, in C order, converted to U.
  template <class U>
  std::vector<U> to_vector() const {
    std::vector<U> out(static_cast<size_t>(size()));
    for (Index i = 0; i < size(); ++i) out[size_t(i)] = get<U>(i);
    return out;
  }

 private:
  template <class U, class X>
  static U cast_to(X x) {
    if constexpr (std::is_integral_v<U> || std::is_integral_v<X>) {
      if constexpr (std::is_same_v<U, Eigen::half> || std::is_same_v<U, Eigen::bfloat16>) return U(static_cast<float>(x));
      else return static_cast<U>(x);
    } else {
      return convert<U>(x);
    }
  }
};

/// Array of `shape` holding a copy of `data` (C order, product(shape) elements).
template <class T>
Array from_data(const T* data, std::vector<Index> shape) {
  Array a;
  a.dtype = dtype_of<T>();
  a.shape = std::move(shape);
  const Index n = dtype_size(a.dtype), count = a.size();
  a.bytes.resize(size_t(count * n));
  for (Index i = 0; i < count; ++i)
    detail::copy_element(a.bytes.data() + size_t(i * n), reinterpret_cast<const unsigned char*>(data + i), n);
  return a;
}

/// Array holding the elements of a (possibly strided) view, written with the
/// NumPy shape `shape` (e.g. {B, T, H} for a [B, T, H, 1] per-head scalar view).
/// Fails when the shape's element count differs from the view's.
template <class T>
Status from_view(const View<T>& v, const std::vector<Index>& shape, Array& out) {
  Index count = 0;
  if (!detail::checked_count(shape, std::numeric_limits<Index>::max() / 8, count) || count != v.size()) {
    return {Code::invalid_argument, "npy: shape " + shape_string(shape) + " does not hold the " +
                                        std::to_string(v.size()) + " elements of a " + gdr2::shape_string(v.shape) + " view"};
  }
  Tensor<std::remove_const_t<T>> t = to_tensor<std::remove_const_t<T>>(v);
  out = from_data(t.data(), shape);
  return {};
}

/// Array holding a rank-4 view with its own shape.
template <class T>
Array from_view(const View<T>& v) {
  Array a;
  (void)from_view(v, {v.shape[0], v.shape[1], v.shape[2], v.shape[3]}, a);
  return a;
}

/// Copy an array of rank ≤ 4 into a rank-4 Tensor<U>, padding its shape with
/// trailing 1s (so [B, T, H] becomes [B, T, H, 1], the library's per-head scalar
/// view). Fails for rank > 4. Elements are converted to U.
template <class U>
Status to_tensor(const Array& a, Tensor<U>& out, const std::string& what = "npy") {
  if (a.rank() > 4)
    return {Code::invalid_argument, what + ": rank " + std::to_string(a.rank()) + " array " + shape_string(a.shape) +
                                        " cannot be seen as a rank-4 tensor"};
  std::array<Index, 4> sh{1, 1, 1, 1};
  for (Index i = 0; i < a.rank(); ++i) sh[size_t(i)] = a.shape[size_t(i)];
  Tensor<U> t(sh[0], sh[1], sh[2], sh[3]);
  for (Index i = 0; i < t.size(); ++i) t[i] = a.get<U>(i);
  out = std::move(t);
  return {};
}

/// Parse a complete .npy file held in memory (`what` names it in messages).
/// `out` is only assigned on success.
inline Status parse(const void* data, size_t n, Array& out, const std::string& what = "npy") {
  const auto* p = static_cast<const unsigned char*>(data);
  Index header_len = 0, off = 0;
  GDR2_RETURN_IF_ERROR(detail::parse_preamble(what, p, Index(n), header_len, off));
  if (off + header_len > Index(n))
    return detail::bad(what, "truncated header: " + std::to_string(header_len) + " header bytes announced, " +
                                 std::to_string(Index(n) - off) + " present");
  const std::string header(reinterpret_cast<const char*>(p + off), size_t(header_len));
  Array a;
  Index need = 0;
  GDR2_RETURN_IF_ERROR(detail::parse_header(what, header, Index(n) - off - header_len, a.dtype, a.shape, need));
  a.bytes.assign(p + off + header_len, p + off + header_len + need);
  out = std::move(a);
  return {};
}

/// Read a .npy file. `out` is only assigned on success.
inline Status load(const std::string& path, Array& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return detail::bad(path, "cannot open for reading");
  f.seekg(0, std::ios::end);
  const std::streamoff size = f.tellg();
  f.seekg(0, std::ios::beg);
  if (size < 0) return detail::bad(path, "cannot determine the file size");
  unsigned char pre[12] = {};
  const Index pre_n = std::min<Index>(12, Index(size));
  f.read(reinterpret_cast<char*>(pre), pre_n);
  Index header_len = 0, off = 0;
  GDR2_RETURN_IF_ERROR(detail::parse_preamble(path, pre, pre_n, header_len, off));
  if (off + header_len > Index(size))
    return detail::bad(path, "truncated header: " + std::to_string(header_len) + " header bytes announced, " +
                                 std::to_string(Index(size) - off) + " present");
  std::string header(size_t(header_len), '\0');
  f.seekg(off, std::ios::beg);
  f.read(header.data(), header_len);
  if (!f) return detail::bad(path, "read error in the header");
  Array a;
  Index need = 0;
  GDR2_RETURN_IF_ERROR(detail::parse_header(path, header, Index(size) - off - header_len, a.dtype, a.shape, need));
  a.bytes.resize(size_t(need));
  if (need > 0) {
    f.read(reinterpret_cast<char*>(a.bytes.data()), need);
    if (!f) return detail::bad(path, "read error in the data");
  }
  out = std::move(a);
  return {};
}

/// Serialise an array to .npy bytes. `version` 0 picks 1.0 when the header fits
/// its 16-bit length field and 2.0 otherwise; 1 or 2 force that version. The
/// preamble and header are padded to a multiple of 64 bytes, as NumPy does.
inline Status serialize(const Array& a, std::vector<unsigned char>& out, int version = 0) {
  Index count = 0;
  if (!detail::checked_count(a.shape, std::numeric_limits<Index>::max() / 8, count))
    return {Code::invalid_argument, "npy: shape " + shape_string(a.shape) + " is invalid or too large"};
  if (Index(a.bytes.size()) != count * dtype_size(a.dtype)) {
    return {Code::invalid_argument, "npy: shape " + shape_string(a.shape) + " of " + dtype_name(a.dtype) + " needs " +
                                        std::to_string(count * dtype_size(a.dtype)) + " bytes, the array holds " +
                                        std::to_string(a.bytes.size())};
  }
  if (version != 0 && version != 1 && version != 2)
    return {Code::invalid_argument, "npy: can write format version 1 or 2, not " + std::to_string(version)};
  std::string dict = std::string("{'descr': '") + descr(a.dtype) + "', 'fortran_order': False, 'shape': " +
                     shape_string(a.shape) + ", }";
  auto padded = [&](Index pre) {
    std::string h = dict;
    const Index total = pre + Index(h.size()) + 1;  // + the final '\n'
    h.append(size_t((64 - total % 64) % 64), ' ');
    h += '\n';
    return h;
  };
  std::string h1 = padded(10);
  const int v = version ? version : (h1.size() <= 0xFFFF ? 1 : 2);
  if (v == 1 && h1.size() > 0xFFFF) return {Code::invalid_argument, "npy: header too long for format version 1.0"};
  const std::string h = v == 1 ? h1 : padded(12);
  const size_t pre = v == 1 ? 10 : 12;
  std::vector<unsigned char> buf(pre + h.size() + a.bytes.size());
  std::memcpy(buf.data(), detail::kMagic, 6);
  buf[6] = static_cast<unsigned char>(v);
  buf[7] = 0;
  const std::uint32_t len = static_cast<std::uint32_t>(h.size());
  for (size_t i = 0; i < pre - 8; ++i) buf[8 + i] = static_cast<unsigned char>((len >> (8 * i)) & 0xFF);
  std::memcpy(buf.data() + pre, h.data(), h.size());
  if (!a.bytes.empty()) std::memcpy(buf.data() + pre + h.size(), a.bytes.data(), a.bytes.size());
  out.swap(buf);
  return {};
}

namespace detail {

/// A fresh temporary sibling of `path` in the same directory (so the final rename
/// stays on one file system); the name is unique per process and call.
inline std::filesystem::path temp_sibling(const std::filesystem::path& path) {
  static std::atomic<unsigned> counter{0};
  static const std::uint64_t tag = [] {
    std::uint64_t t = std::uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
    try {
      std::random_device rd;
      t ^= (std::uint64_t(rd()) << 32) ^ rd();
    } catch (...) {
    }
    return t;
  }();
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx-%u", static_cast<unsigned long long>(tag), counter.fetch_add(1));
  return path.parent_path() / (std::string(".") + path.filename().string() + ".tmp-" + buf);
}

inline Status write_bytes(const std::filesystem::path& p, const std::vector<unsigned char>& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  if (!f) return bad(p.string(), "cannot open for writing");
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  f.close();
  if (!f) return bad(p.string(), "write error (disk full?)");
  return {};
}

}  // namespace detail

/// Write several arrays, each to its path, all or nothing on error: every file is
/// first written in full to a temporary sibling, and the temporaries are renamed
/// into place only once all of them were written. On an error while serialising or
/// writing, the temporaries are removed and no destination is created or changed.
/// (The renames themselves are separate steps: a crash between two of them, or a
/// rename refused by the file system, can leave the earlier files already replaced.)
inline Status save_all(const std::vector<std::pair<std::string, const Array*>>& files, int version = 0) {
  namespace fs = std::filesystem;
  std::vector<std::vector<unsigned char>> blobs(files.size());
  for (size_t i = 0; i < files.size(); ++i) {
    if (!files[i].second) return detail::bad(files[i].first, "no array given");
    const Status s = serialize(*files[i].second, blobs[i], version);
    if (!s.ok()) return detail::bad(files[i].first, s.message());
  }
  std::vector<fs::path> temps;
  auto cleanup = [&] {
    std::error_code ec;
    for (const auto& t : temps) fs::remove(t, ec);
  };
  for (size_t i = 0; i < files.size(); ++i) {
    const fs::path dst(files[i].first);
    std::error_code ec;
    if (fs::is_directory(dst, ec)) {
      cleanup();
      return detail::bad(files[i].first, "is a directory");
    }
    temps.push_back(detail::temp_sibling(dst));
    const Status s = detail::write_bytes(temps.back(), blobs[i]);
    if (!s.ok()) {
      cleanup();
      return detail::bad(files[i].first, s.message());
    }
  }
  for (size_t i = 0; i < files.size(); ++i) {
    std::error_code ec;
    fs::rename(temps[i], fs::path(files[i].first), ec);
    if (ec) {
      std::error_code ec2;
      for (size_t j = i; j < temps.size(); ++j) fs::remove(temps[j], ec2);
      return detail::bad(files[i].first, "cannot rename the written file into place: " + ec.message());
    }
  }
  return {};
}

/// Write one array to `path` atomically (see save_all).
inline Status save(const std::string& path, const Array& a, int version = 0) { return save_all({{path, &a}}, version); }

}  // namespace npy
}  // namespace gdr2
