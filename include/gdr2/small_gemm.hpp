// gdr2 — register-tiled products for the chunk engine's small shapes.
//
// C (m×n) = / += / −= A (m×k) · B (k×n), with B and C row-major (unit column stride:
// one register holds a packet of consecutive columns) and A read one element at a
// time through any strides (so Aᵀ or a column-major A cost nothing to read). A tile
// of C stays in registers for the whole k loop and nothing is packed: at the chunk
// engine's sizes (≤ 64 rows, K, V ≤ 256) the operands already sit in L1/L2, and
// Eigen's packing and blocking cost more than they save on such products.
//
// Vectorised with Eigen's packet primitives (the widest packets Eigen was compiled
// for: AVX-512, AVX2, SSE or NEON; plain scalars without vectorisation).
#pragma once

#include "tensor.hpp"

#include <algorithm>
#include <type_traits>
#include <utility>

namespace gdr2 {
namespace detail {

/// How a product lands in C: C = AB, C += AB, C −= AB, or C = Diag(row_scale)·C + AB
/// (row r of C scaled by row_scale[r] first; small_gemm's `row_scale` argument).
enum class Update { set, add, sub, scale_add };

/// A read-only strided matrix operand: element (r, c) at p[r·rs + c·cs].
template <class Acc>
struct Strided {
  const Acc* p;
  Index rs, cs;
  Acc operator()(Index r, Index c) const { return p[r * rs + c * cs]; }
  /// The operand that starts at element (r, c).
  Strided offset(Index r, Index c) const { return {p + r * rs + c * cs, rs, cs}; }
};

/// Tile geometry of small_gemm for one accumulation type.
template <class Acc>
struct GemmTile {
  using Packet = typename Eigen::internal::packet_traits<Acc>::type;
  static constexpr int lanes = Eigen::internal::unpacket_traits<Packet>::size;
  /// Rows per register tile (× 2 packets of columns): 8 when there are 32 vector
  /// registers (AVX-512), else 4 (16 accumulators would not leave room for B and A).
  static constexpr int rows = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 8 : 4;
};

/// One MR × (NP packets) tile of C over k ∈ [0, k).
template <int MR, int NP, Update U, class Acc>
inline void gemm_tile(const Strided<Acc>& A, const Acc* B, Index ldb, Acc* C, Index ldc, Index k,
                      const Acc* row_scale) {
  using namespace Eigen::internal;
  using Packet = typename GemmTile<Acc>::Packet;
  constexpr int L = GemmTile<Acc>::lanes;
  Packet acc[MR][NP];
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NP; ++q) acc[r][q] = pset1<Packet>(Acc(0));
  for (Index kk = 0; kk < k; ++kk) {
    Packet b[NP];
    for (int q = 0; q < NP; ++q) b[q] = ploadu<Packet>(B + kk * ldb + q * L);
    for (int r = 0; r < MR; ++r) {
      const Packet a = pset1<Packet>(A.p[r * A.rs + kk * A.cs]);
      for (int q = 0; q < NP; ++q) acc[r][q] = pmadd(a, b[q], acc[r][q]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int q = 0; q < NP; ++q) {
      Acc* c = C + r * ldc + q * L;
      if constexpr (U == Update::set)
        pstoreu(c, acc[r][q]);
      else if constexpr (U == Update::add)
        pstoreu(c, padd(ploadu<Packet>(c), acc[r][q]));
      else if constexpr (U == Update::scale_add)
        pstoreu(c, pmadd(pset1<Packet>(row_scale[r]), ploadu<Packet>(c), acc[r][q]));
      else
        pstoreu(c, psub(ploadu<Packet>(c), acc[r][q]));
    }
}

/// Which part of A a product reads (the rest must be stored as zeros).
enum class Tri {
  full,   ///< all of A
  lower,  ///< A(r, k) = 0 for k > r: a row tile stops at its last row's diagonal
  upper,  ///< A(r, k) = 0 for k < r: a row tile starts at its first row's diagonal
};

/// k range [begin, end) that rows [r0, r0 + rows) of A read under `tri`.
inline std::pair<Index, Index> tile_k_range(Tri tri, Index r0, Index rows, Index k) {
  if (tri == Tri::lower) return {0, std::min(k, r0 + rows)};
  if (tri == Tri::upper) return {std::min(k, r0), k};
  return {0, k};
}

/// `rows` ≤ MR rows of one column panel of NP packets over kk terms (pointers already
/// at the tile's first row and first k).
template <int NP, Update U, class Acc>
inline void gemm_rows(Index rows, Index kk, const Strided<Acc>& At, const Acc* Bt, Index ldb, Acc* Ct, Index ldc,
                      const Acc* rs) {
  constexpr int MR = GemmTile<Acc>::rows;
  switch (rows) {
    case MR: gemm_tile<MR, NP, U>(At, Bt, ldb, Ct, ldc, kk, rs); break;
    case 1: gemm_tile<1, NP, U>(At, Bt, ldb, Ct, ldc, kk, rs); break;
    case 2: gemm_tile<2, NP, U>(At, Bt, ldb, Ct, ldc, kk, rs); break;
    case 3: gemm_tile<3, NP, U>(At, Bt, ldb, Ct, ldc, kk, rs); break;
    default:  // 4 ≤ rows < MR (only when MR = 8)
      gemm_tile<(MR > 4 ? 4 : 1), NP, U>(At, Bt, ldb, Ct, ldc, kk, rs);
      if (rows > 4) gemm_rows<NP, U>(rows - 4, kk, At.offset(4, 0), Bt, ldb, Ct + 4 * ldc, ldc, rs ? rs + 4 : rs);
      break;
  }
}

/// C(r, c) (=, +=, −=) Σ_k A(r, k)·B(k, c) for r < m, c < n, k < k_count. B: row-major
/// with leading dimension ldb; C: row-major, ldc. `tri`: the triangle of A that is
/// read (Tri); the zeros stored outside it make skipping it exact. `lower_c`: only C's
/// lower triangle (c ≤ r) is wanted; register tiles wholly above it are skipped (left
/// as they were), those across the diagonal are computed whole. `row_scale` (m, only
/// for Update::scale_add): the factors of C's rows.
template <Update U, class Acc>
void small_gemm(Index m, Index n, Index k, const Strided<Acc>& A, const Acc* B, Index ldb, Acc* C, Index ldc,
                Tri tri = Tri::full, bool lower_c = false, const Acc* row_scale = nullptr) {
  constexpr int L = GemmTile<Acc>::lanes, MR = GemmTile<Acc>::rows;
  auto panel = [&](auto np, Index c0) {
    for (Index r0 = 0; r0 < m; r0 += MR) {
      const Index rows = std::min<Index>(MR, m - r0);
      if (lower_c && c0 > r0 + rows - 1) continue;
      const auto [kb, ke] = tile_k_range(tri, r0, rows, k);
      gemm_rows<decltype(np)::value, U>(rows, ke - kb, A.offset(r0, kb), B + kb * ldb + c0, ldb, C + r0 * ldc + c0,
                                        ldc, row_scale ? row_scale + r0 : row_scale);
    }
  };
  Index c0 = 0;
  for (; c0 + 2 * L <= n; c0 += 2 * L) panel(std::integral_constant<int, 2>{}, c0);
  for (; c0 + L <= n; c0 += L) panel(std::integral_constant<int, 1>{}, c0);
  for (; c0 < n; ++c0)  // columns left over from whole packets
    for (Index r = lower_c ? std::min(c0, m) : 0; r < m; ++r) {
      const auto [kb, ke] = tile_k_range(tri, r, 1, k);
      Acc s(0);
      for (Index j = kb; j < ke; ++j) s += A(r, j) * B[j * ldb + c0];
      Acc& c = C[r * ldc + c0];
      c = U == Update::set ? s : U == Update::add ? c + s : U == Update::sub ? c - s : row_scale[r] * c + s;
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // PacketBlock<__m512, …>, as in Eigen's own headers
#endif
/// Out(d, s) = x(s, d) for s < n, d < K, written transposed into a row-major K×n `Out`
/// a lanes×lanes block at a time; `row_packet(s, d)` gives the packet x(s, d .. d+lanes),
/// `scalar(s, d)` one element (for the edges).
template <class Acc, class RowPacket, class Scalar, class MO>
void transpose_blocks(Index n, Index K, RowPacket row_packet, Scalar scalar, MO& Out) {
  using namespace Eigen::internal;
  using Packet = typename GemmTile<Acc>::Packet;
  constexpr int L = GemmTile<Acc>::lanes;
  Index s0 = 0;
  if constexpr (L > 1) {
    for (; s0 + L <= n; s0 += L) {
      Index d0 = 0;
      for (; d0 + L <= K; d0 += L) {
        PacketBlock<Packet, L> blk;
        for (int i = 0; i < L; ++i) blk.packet[i] = row_packet(s0 + i, d0);
        ptranspose(blk);
        for (int i = 0; i < L; ++i) pstoreu(&Out(d0 + i, s0), blk.packet[i]);
      }
      for (; d0 < K; ++d0)
        for (Index s = s0; s < s0 + L; ++s) Out(d0, s) = scalar(s, d0);
    }
  }
  for (; s0 < n; ++s0)
    for (Index d = 0; d < K; ++d) Out(d, s0) = scalar(s0, d);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

/// Out = Xᵀ for the first n rows and K columns of a row-major X (Out: row-major, ≥ K×n),
/// for products that need X as small_gemm's B.
template <class MX, class MO>
void transpose_into(const MX& X, Index n, Index K, MO& Out) {
  using Acc = typename MX::Scalar;
  using Packet = typename GemmTile<Acc>::Packet;
  transpose_blocks<Acc>(
      n, K, [&](Index s, Index d) { return Eigen::internal::ploadu<Packet>(&X(s, d)); },
      [&](Index s, Index d) { return X(s, d); }, Out);
}

/// Out = (X ⊙ F)ᵀ: Out(d, s) = X(s, d)·F(s, d) for s < n, d < K (see transpose_into).
template <class MX, class MF, class MO>
void transpose_product(const MX& X, const MF& F, Index n, Index K, MO& Out) {
  using Acc = typename MX::Scalar;
  using Packet = typename GemmTile<Acc>::Packet;
  using namespace Eigen::internal;
  transpose_blocks<Acc>(
      n, K, [&](Index s, Index d) { return pmul(ploadu<Packet>(&X(s, d)), ploadu<Packet>(&F(s, d))); },
      [&](Index s, Index d) { return X(s, d) * F(s, d); }, Out);
}

/// Split feature columns [0, K) into pieces that fit in registers, for kernels that keep
/// a running product per column: f(Int<NP>, Packet{}, d0) over pieces of 8 packets, then
/// single packets, then single columns (Packet = Acc: Eigen's packet functions take
/// plain scalars as one-lane packets).
template <class Acc, class F>
void over_register_pieces(Index K, F&& f) {
  using Packet = typename GemmTile<Acc>::Packet;
  constexpr Index L = GemmTile<Acc>::lanes;
  Index d0 = 0;
  if constexpr (L > 1) {
    for (; d0 + 8 * L <= K; d0 += 8 * L) f(std::integral_constant<int, 8>{}, Packet{}, d0);
    for (; d0 + L <= K; d0 += L) f(std::integral_constant<int, 1>{}, Packet{}, d0);
  }
  for (; d0 < K; ++d0) f(std::integral_constant<int, 1>{}, Acc{}, d0);
}

/// Operand views of Eigen matrices (any storage order) for small_gemm.
template <class M>
Strided<typename M::Scalar> strided(const M& m) {
  return {m.data(), m.rowStride(), m.colStride()};
}
/// The transpose of m as an operand.
template <class M>
Strided<typename M::Scalar> strided_t(const M& m) {
  return {m.data(), m.colStride(), m.rowStride()};
}

}  // namespace detail
}  // namespace gdr2
