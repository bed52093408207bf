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

#include <Eigen/Core>

#include <algorithm>

namespace gdr2 {
namespace detail {

/// How a product lands in C.
enum class Update { set, add, sub };

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
inline void gemm_tile(const Strided<Acc>& A, const Acc* B, Index ldb, Acc* C, Index ldc, Index k) {
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
      else
        pstoreu(c, psub(ploadu<Packet>(c), acc[r][q]));
    }
}

/// Rows [0, m) of one column panel of NP packets, tile by tile; `lower`: see small_gemm.
template <int NP, Update U, class Acc>
inline void gemm_panel(Index m, Index k, const Strided<Acc>& A, const Acc* B, Index ldb, Acc* C, Index ldc,
                       bool lower) {
  constexpr int MR = GemmTile<Acc>::rows;
  for (Index r0 = 0; r0 < m; r0 += MR) {
    const Index rows = std::min<Index>(MR, m - r0);
    const Index kk = lower ? std::min(k, r0 + rows) : k;
    const Strided<Acc> At{A.p + r0 * A.rs, A.rs, A.cs};
    Acc* Ct = C + r0 * ldc;
    switch (rows) {
      case MR: gemm_tile<MR, NP, U>(At, B, ldb, Ct, ldc, kk); break;
      case 1: gemm_tile<1, NP, U>(At, B, ldb, Ct, ldc, kk); break;
      case 2: gemm_tile<2, NP, U>(At, B, ldb, Ct, ldc, kk); break;
      case 3: gemm_tile<3, NP, U>(At, B, ldb, Ct, ldc, kk); break;
      default:  // 4 ≤ rows < MR (only when MR = 8)
        gemm_tile<(MR > 4 ? 4 : 1), NP, U>(At, B, ldb, Ct, ldc, kk);
        if (rows > 4) gemm_panel<NP, U>(rows - 4, kk, Strided<Acc>{At.p + 4 * A.rs, A.rs, A.cs}, B, ldb, Ct + 4 * ldc, ldc, false);
        break;
    }
  }
}

/// C(r, c) (=, +=, −=) Σ_k A(r, k)·B(k, c) for r < m, c < n, k < k_count. B: row-major
/// with leading dimension ldb; C: row-major, ldc. `lower`: A is lower triangular with
/// zeros stored above its diagonal, so each row tile stops at its last row's diagonal
/// (k < r0 + rows); the stored zeros make that exact.
template <Update U, class Acc>
void small_gemm(Index m, Index n, Index k, const Strided<Acc>& A, const Acc* B, Index ldb, Acc* C, Index ldc,
                bool lower = false) {
  constexpr int L = GemmTile<Acc>::lanes;
  Index c0 = 0;
  for (; c0 + 2 * L <= n; c0 += 2 * L) gemm_panel<2, U>(m, k, A, B + c0, ldb, C + c0, ldc, lower);
  for (; c0 + L <= n; c0 += L) gemm_panel<1, U>(m, k, A, B + c0, ldb, C + c0, ldc, lower);
  for (; c0 < n; ++c0)  // columns left over from whole packets
    for (Index r = 0; r < m; ++r) {
      const Index kk = lower ? std::min(k, r + 1) : k;
      Acc s(0);
      for (Index j = 0; j < kk; ++j) s += A(r, j) * B[j * ldb + c0];
      Acc& c = C[r * ldc + c0];
      c = U == Update::set ? s : U == Update::add ? c + s : c - s;
    }
}

/// Out(d, s) = X(s, d)·F(s, d) for s < n, d < K: the product of two row-major n×K
/// operands written transposed (K×n, row-major), a lanes×lanes block at a time.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"  // PacketBlock<__m512, …>, as in Eigen's own headers
#endif
template <class Acc, class MX, class MF, class MO>
void transpose_product(const MX& X, const MF& F, Index n, Index K, MO& Out) {
  using namespace Eigen::internal;
  using Packet = typename GemmTile<Acc>::Packet;
  constexpr int L = GemmTile<Acc>::lanes;
  Index s0 = 0;
  if constexpr (L > 1) {
    for (; s0 + L <= n; s0 += L) {
      Index d0 = 0;
      for (; d0 + L <= K; d0 += L) {
        PacketBlock<Packet, L> blk;
        for (int i = 0; i < L; ++i)
          blk.packet[i] = pmul(ploadu<Packet>(&X(s0 + i, d0)), ploadu<Packet>(&F(s0 + i, d0)));
        ptranspose(blk);
        for (int i = 0; i < L; ++i) pstoreu(&Out(d0 + i, s0), blk.packet[i]);
      }
      for (; d0 < K; ++d0)
        for (Index s = s0; s < s0 + L; ++s) Out(d0, s) = X(s, d0) * F(s, d0);
    }
  }
  for (; s0 < n; ++s0)
    for (Index d = 0; d < K; ++d) Out(d, s0) = X(s0, d) * F(s0, d);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

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
