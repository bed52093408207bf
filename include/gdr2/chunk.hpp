// gdr2 — the chunkwise WY engine (SPEC §3, numerics of §5).
//
// A sequence is cut into chunks of C tokens (the last may be shorter). Inside a
// chunk everything is a small dense matrix product; only the state S (K×V) is
// carried from one chunk to the next. All exponents are differences G_r − G_s
// with r ≥ s (so ≤ 0 for log-decays ≤ 0): the decay-weighted Gram matrices are
// built from 16-token sub-blocks, off-diagonal blocks as plain GEMMs with an
// anchor between the two blocks, diagonal blocks by a running product of
// per-token decays (no 1/γ is ever formed).
#pragma once

#include "recurrent.hpp"
#include "small_gemm.hpp"

#include <array>

namespace gdr2 {
namespace detail {

/// Sub-block height of the decay-weighted Gram matrices.
constexpr Index kSubBlock = 16;

/// Columns to allocate for a row-major scratch of `cols` columns that small_gemm reads
/// as B (or A) operand: one 64-byte line more when a row is a multiple of 256 bytes.
/// Rows whose stride is such a multiple map onto a quarter or less of L1's sets (4 KB
/// apart), so a 32-column panel of a 128-row operand no longer fits its ways; measured
/// on R = U − Y S₀ and S = Diag(γ) S₀ + Ktailᵀ R (64×128×128, AVX-512, one core): 7 %
/// faster with the padding. Only the first `cols` columns hold data.
template <class Acc>
Index padded_cols(Index cols) {
  constexpr Index line = 64 / Index(sizeof(Acc));
  return (cols * Index(sizeof(Acc))) % 256 == 0 ? cols + line : cols;
}

/// Per-chunk decay factors shared by every decay-weighted product of one chunk, in
/// terms of the cumulative log-decay G_r = Σ_{i≤r} g_i (never formed itself):
///   Gam  γ_r = exp(G_r)                                                (n×K)
///   E    per-token factor exp(g_r)                                     (n×K)
///   Fin  exp(G_r − G_{a(r)}), a(r) = last row of the previous sub-block (n×K)
///        (G_{−1} = 0, so Fin = γ in the first sub-block)
///   Fout exp(G_{e(s)} − G_s), e(s) = last row of s's own sub-block     (n×K)
template <class Acc>
struct ChunkDecay {
  RowMat<Acc> Gam, E, Fin, Fout;
  ChunkDecay(Index C, Index K) : Gam(C, K), E(C, K), Fin(C, K), Fout(C, K) {}
  /// Elements held.
  Index size() const { return Gam.size() + E.size() + Fin.size() + Fout.size(); }

  /// Fill Gam, E, Fin, Fout from log-decays g (first n rows used). One exponential per
  /// element (E); the rest are running products of E within each sub-block (and across
  /// them for γ), each factor ≤ 1: as accurate as exponentials of differences of
  /// rounded cumulative sums, at a multiply each.
  void build(const RowMat<Acc>& g, Index n) {
    // Sub-block by sub-block, each row's factors while its E row is in L1: forward
    // (E, Fin, γ), then backward (Fout).
    for (Index b0 = 0; b0 < n; b0 += kSubBlock) {
      const Index b1 = std::min(n, b0 + kSubBlock);
      for (Index r = b0; r < b1; ++r) {
        E.row(r) = g.row(r).array().exp();
        if (r == b0)
          Fin.row(r) = E.row(r);
        else
          Fin.row(r) = Fin.row(r - 1).cwiseProduct(E.row(r));
        if (b0 == 0)
          Gam.row(r) = Fin.row(r);
        else
          Gam.row(r) = Fin.row(r).cwiseProduct(Gam.row(b0 - 1));
      }
      Fout.row(b1 - 1).setOnes();
      for (Index r = b1 - 2; r >= b0; --r) Fout.row(r) = Fout.row(r + 1).cwiseProduct(E.row(r + 1));
    }
  }

  /// p = exp(G_a − G_b) (K) between two sub-block ends b ≤ a (a may be the chunk's last
  /// row): the product of the totals Fin(end(j)) of the sub-blocks after b up to a,
  /// each ≤ 1, so no exponential and no cumulative sum is needed.
  template <class P>
  void span(Index a, Index b, P& p) const {
    p.setOnes();
    for (Index s = b + 1; s <= a; s += kSubBlock) p.array() *= Fin.row(std::min(s + kSubBlock - 1, a)).transpose().array();
  }

  /// Rows [0, n) of out = exp(G_{n−1} − G_r), the decay from token r to the chunk's last
  /// token: Fout_r ⊙ span(n − 1, end(r)). p: scratch of K.
  template <class M, class P>
  void to_end(Index n, M& out, P& p) const {
    for (Index b0 = 0; b0 < n; b0 += kSubBlock) {
      const Index nb = std::min(n, b0 + kSubBlock) - b0;
      span(n - 1, b0 + nb - 1, p);
      out.middleRows(b0, nb) = Fout.middleRows(b0, nb).array().rowwise() * p.transpose().array();
    }
  }
};

/// One decay-weighted Gram to build: out(r, s) = Σ_d A(r,d)·B(s,d)·exp(G_r[d] − G_s[d])
/// for s ≤ r (s < r when `strict`), zero above the diagonal.
template <class Acc>
struct GramTerm {
  const RowMat<Acc>* A;
  RowMat<Acc>* out;
  bool strict;
  const RowMat<Acc>* AF;  ///< A ⊙ Fin, rows [0, n) (the caller forms it with its other row products)
};

/// The right factor of row block i's off-diagonal GEMM (i0 = its first row > 0):
/// XB rows [0, i0) = X ⊙ Fout, each earlier sub-block j further scaled by the anchor
/// D_ij = exp(G_{i0−1} − G_{end(j)}) ≤ 1 (1 for the block just before i0, so not
/// applied). The backward's decayed_apply2 multiplies by it (decayed_grams forms the
/// same factor transposed). p: K.
template <class Acc>
void anchored_blocks(const RowMat<Acc>& X, const ChunkDecay<Acc>& dc, Index i0, RowMat<Acc>& XB, Vec<Acc>& p) {
  for (Index j0 = 0; j0 < i0; j0 += kSubBlock) {
    const Index jend = j0 + kSubBlock - 1;
    auto blk = XB.middleRows(j0, kSubBlock);
    blk = X.middleRows(j0, kSubBlock).cwiseProduct(dc.Fout.middleRows(j0, kSubBlock));
    if (jend != i0 - 1) {
      dc.span(i0 - 1, jend, p);
      blk.array().rowwise() *= p.transpose().array();
    }
  }
}

/// The diagonal sub-block [i0, i0+ni) of decayed_grams over key channels
/// [d0, d0 + NP·lanes): out(r, s) += Σ_d A(r,d)·B(s,d)·Π_{s<u≤r} E(u,d) for s ≤ r (s < r
/// for strict terms), the running product held in NP registers (over_register_pieces).
template <int NP, class Packet, class Acc, std::size_t M>
void gram_diagonal(const std::array<GramTerm<Acc>, M>& terms, const RowMat<Acc>& B, const RowMat<Acc>& E, Index i0,
                   Index ni, Index d0) {
  using namespace Eigen::internal;
  constexpr int L = unpacket_traits<Packet>::size;
  auto dot = [&](const RowMat<Acc>& A, Index r, const Packet* p) {
    const Acc* a = &A(r, d0);
    Packet acc = pmul(ploadu<Packet>(a), p[0]);
    for (int q = 1; q < NP; ++q) acc = pmadd(ploadu<Packet>(a + q * L), p[q], acc);
    return predux(acc);
  };
  for (Index s = i0; s < i0 + ni; ++s) {
    Packet p[NP];
    for (int q = 0; q < NP; ++q) p[q] = ploadu<Packet>(&B(s, d0 + q * L));
    for (const auto& t : terms)
      if (!t.strict) (*t.out)(s, s) += dot(*t.A, s, p);
    for (Index r = s + 1; r < i0 + ni; ++r) {
      for (int q = 0; q < NP; ++q) p[q] = pmul(p[q], ploadu<Packet>(&E(r, d0 + q * L)));
      for (const auto& t : terms) (*t.out)(r, s) += dot(*t.A, r, p);
    }
  }
}

/// Build several decay-weighted Grams against the same right factor B (rows/cols
/// [0, n)), sharing every decay factor. Off-diagonal sub-blocks: for row block i,
/// all column blocks j < i at once as one product (A ⊙ Fin)_i · Y_iᵀ with
/// Y_i = B ⊙ Fout ⊙ D_ij and D_ij = exp(G_{i0−1} − G_{end(j)}) ≤ 1 (anchor between the
/// blocks), Y_i held transposed (K × i0) so that small_gemm vectorises along its
/// tokens. Diagonal sub-blocks: running products of exp(g) from each column s down.
/// Scratch: BFt and Yt of ≥ K×n, `p` of K.
template <class Acc, std::size_t M>
void decayed_grams(const std::array<GramTerm<Acc>, M>& terms, const RowMat<Acc>& B, const ChunkDecay<Acc>& dc,
                   Index n, RowMat<Acc>& BFt, RowMat<Acc>& Yt, Vec<Acc>& p) {
  const Index K = B.cols();
  for (const auto& t : terms) t.out->topLeftCorner(n, n).setZero();
  if (n > kSubBlock) transpose_product(B, dc.Fout, n, K, BFt);
  for (Index i0 = 0; i0 < n; i0 += kSubBlock) {
    const Index ni = std::min(kSubBlock, n - i0);
    if (i0 > 0) {
      // Yt columns [0, i0): BFt, each block j before the adjacent one scaled by D_ij.
      for (Index j0 = 0; j0 < i0; j0 += kSubBlock) {
        auto blk = Yt.block(0, j0, K, kSubBlock);
        if (j0 + kSubBlock == i0) {
          blk = BFt.block(0, j0, K, kSubBlock);
        } else {
          dc.span(i0 - 1, j0 + kSubBlock - 1, p);
          blk = BFt.block(0, j0, K, kSubBlock).array().colwise() * p.array();
        }
      }
      for (const auto& t : terms)
        small_gemm<Update::set>(ni, i0, K, strided(*t.AF).offset(i0, 0), Yt.data(), Yt.cols(),
                                t.out->data() + i0 * t.out->cols(), t.out->cols());
    }
    // Diagonal block, over the key channels in pieces whose running products stay in
    // registers.
    over_register_pieces<Acc>(K, [&](auto np, auto packet, Index d0) {
      gram_diagonal<decltype(np)::value, decltype(packet)>(terms, B, dc.E, i0, ni, d0);
    });
  }
}

/// A chunk's inputs and the WY quantities that the forward and the backward both
/// form from them (phase 1 of SPEC §3 up to [Y U]); ChunkScratch and
/// ChunkBackwardScratch extend it. Row counts are C (the chunk size); a chunk of
/// n ≤ C tokens uses the first n rows.
template <class Acc>
struct ChunkWY {
  RowMat<Acc> Q, Kc, g, Bg, Vv, Wg;  // raw chunk inputs (Bg, Wg: erase / write gates)
  // EZ, YU: K + V columns used, BFt, Yt: C (padded_cols: they are small_gemm's B operands)
  RowMat<Acc> Bk, Qs, T, Aqk, EZ, YU, R, Kt, AF, AF2, BFt, Yt;
  RowMat<Acc> A, AX;  // (I + T)⁻¹ (unit lower, zeros above), and the scratch of its recursion
  ChunkDecay<Acc> dc;
  Vec<Acc> p;
  ChunkWY(Index C, Index K, Index V)
      : Q(C, K), Kc(C, K), g(C, K), Bg(C, K), Vv(C, V), Wg(C, V), Bk(C, K), Qs(C, K), T(C, C), Aqk(C, C),
        EZ(C, padded_cols<Acc>(K + V)), YU(C, padded_cols<Acc>(K + V)), R(C, V), Kt(C, K), AF(C, K), AF2(C, K),
        BFt(K, padded_cols<Acc>(C)), Yt(K, padded_cols<Acc>(C)), A(C, C), AX(C, C), dc(C, K), p(K) {}

  /// Elements held by the members above (for the scratch types' bytes()).
  Index size() const {
    Index e = dc.size() + p.size();
    for (const RowMat<Acc>* m : {&A, &AX, &Q, &Kc, &g, &Bg, &Vv, &Wg, &Bk, &Qs, &T, &Aqk, &EZ, &YU, &R, &Kt, &AF, &AF2, &BFt, &Yt})
      e += m->size();
    return e;
  }

  /// Load tokens [t0, t0+n) of (batch row b, value head hv) through the policy.
  template <class Policy, class T>
  void load(const TokenReader<Policy, T>& rd, Index b, Index t0, Index n, Index hv) {
    rd.rows(b, t0, n, hv, Q.data(), Kc.data(), Vv.data(), g.data(), Bg.data(), Wg.data(), Q.cols(), Vv.cols());
  }
};

/// Per-slot scratch of the chunk forward.
template <class Acc>
struct ChunkScratch : ChunkWY<Acc> {
  RowMat<Acc> Qg, O;
  RowMat<Acc> S;  // the state: V columns used (padded_cols)
  Vec<Acc> gammaC;
  ChunkScratch(Index C, Index K, Index V)
      : ChunkWY<Acc>(C, K, V), Qg(C, K), O(C, V), S(K, padded_cols<Acc>(V)), gammaC(K) {}
  /// Bytes held (for Workspace::bytes).
  std::size_t bytes() const {
    return sizeof(Acc) * std::size_t(ChunkWY<Acc>::size() + Qg.size() + O.size() + S.size() + gammaC.size());
  }
};

/// A = (I + L)⁻¹ on the n×n block at (off, off) of a strictly lower L (its diagonal and
/// upper part are not read), A row-major with zeros written above its diagonal: 2×2
/// block recursion A₂₁ = −A₂₂ (L₂₁ A₁₁), two small_gemm products through the scratch X
/// (≥ n×n, row-major), down to blocks of ≤ 16 rows done row by row,
/// A_r = e_r − Σ_{s<r} L(r, s) A_s. The same FLOPs as substituting on the identity, but
/// in register tiles: Eigen's small triangular solve cost several times more.
template <class LMat, class AMat, class XMat>
void unit_lower_inverse(const LMat& L, Index off, Index n, AMat& A, XMat& X) {
  using Acc = typename AMat::Scalar;
  if (n <= kSubBlock) {
    // Rows in a fixed-size block (whole packets, no per-row size checks); rows and
    // columns past n stay those of the identity and are not copied out.
    Eigen::Matrix<Acc, kSubBlock, kSubBlock, Eigen::RowMajor> W;
    W.setIdentity();
    for (Index r = 1; r < n; ++r)
      for (Index s = 0; s < r; ++s) W.row(r) -= L(off + r, off + s) * W.row(s);
    A.block(off, off, n, n) = W.topLeftCorner(n, n);
    return;
  }
  const Index h = std::min(n - 1, (n / 2 + 7) / 8 * 8), m = n - h;
  unit_lower_inverse(L, off, h, A, X);
  unit_lower_inverse(L, off + h, m, A, X);
  const Index ldA = A.outerStride(), ldX = X.outerStride();
  // X = L₂₁ A₁₁ (m×h), then A₂₁ = −A₂₂ X (A₂₂ lower triangular).
  small_gemm<Update::set>(m, h, h, strided(L).offset(off + h, off), &A(off, off), ldA, X.data(), ldX);
  A.block(off + h, off, m, h).setZero();
  small_gemm<Update::sub>(m, h, m, strided(A).offset(off + h, off + h), X.data(), ldX, &A(off + h, off), ldA,
                          Tri::lower);
  A.block(off, off + h, h, m).setZero();
}

/// The WY core of a loaded chunk of n tokens, shared by the forward's phase 1 and
/// the backward's recompute: decays (ws.dc), Bk = b ⊙ k, Qs = scale·q, the
/// decay-weighted Grams T (strict) and Aqk, A = (I + T)⁻¹ and
/// [Y U] = A [Ē Z] with Ē = γ ⊙ b ⊙ k, Z = w ⊙ v (EZ holds [Ē Z]; AF, AF2, BFt, Yt, p
/// are used as scratch). `row_hook(r)` runs in the pass over the rows, after row r's
/// products (ws.dc complete, Bk and Qs row r formed), for a caller's own row-wise
/// products while the row is in L1.
template <class Acc, class RowHook>
void chunk_wy(ChunkWY<Acc>& ws, Index n, Acc scale, RowHook&& row_hook) {
  const Index K = ws.Q.cols(), V = ws.Vv.cols();
  auto& dc = ws.dc;
  dc.build(ws.g, n);
  // Every row-wise product of the inputs, one row at a time while it is in L1:
  // Bk = b ⊙ k, Qs = scale·q, the Grams' left factors Bk ⊙ Fin and Qs ⊙ Fin, and
  // [Ē Z] = [γ ⊙ Bk, w ⊙ v].
  for (Index r = 0; r < n; ++r) {
    auto bk = ws.Bk.row(r);
    auto qs = ws.Qs.row(r);
    bk = ws.Bg.row(r).cwiseProduct(ws.Kc.row(r));
    qs = scale * ws.Q.row(r);
    ws.AF.row(r) = bk.cwiseProduct(dc.Fin.row(r));
    ws.AF2.row(r) = qs.cwiseProduct(dc.Fin.row(r));
    ws.EZ.row(r).head(K) = bk.cwiseProduct(dc.Gam.row(r));
    ws.EZ.row(r).segment(K, V) = ws.Wg.row(r).cwiseProduct(ws.Vv.row(r));
    row_hook(r);
  }
  // T (strict) and Aqk (with diagonal): decay-weighted Grams against the keys.
  decayed_grams<Acc, 2>({GramTerm<Acc>{&ws.Bk, &ws.T, /*strict=*/true, &ws.AF},
                         GramTerm<Acc>{&ws.Qs, &ws.Aqk, /*strict=*/false, &ws.AF2}},
                        ws.Kc, dc, n, ws.BFt, ws.Yt, ws.p);
  // A = (I + T)⁻¹ (fp32 or better, SPEC §5) by block recursion, then [Y U] = A [Ē Z] as
  // one triangular product (cheaper than substituting the n×(K+V) right-hand side).
  unit_lower_inverse(ws.T, 0, n, ws.A, ws.AX);
  small_gemm<Update::set>(n, K + V, n, strided(ws.A), ws.EZ.data(), ws.EZ.cols(), ws.YU.data(), ws.YU.cols(),
                          Tri::lower);
}

/// chunk_wy without a row hook.
template <class Acc>
void chunk_wy(ChunkWY<Acc>& ws, Index n, Acc scale) {
  chunk_wy(ws, n, scale, [](Index) {});
}

/// Phase 1 of a chunk (SPEC §3): everything that does not depend on the incoming
/// state. From the loaded chunk it leaves in ws
///   A = (I + T)⁻¹ (n×n),  YU = [Y U] = A [Ē Z]  (n×(K+V)),  Aqk (n×n, lower),
///   Qg = Qγ = scale·q ⊙ γ (n×K),  Kt = Ktail = exp(G_n − G_r) ⊙ k (n×K),  gammaC = γ_n (K).
/// Qγ and Ktail are formed in chunk_wy's pass over the rows.
template <class Acc>
void chunk_factors(ChunkScratch<Acc>& ws, Index n, Acc scale) {
  const auto& dc = ws.dc;
  chunk_wy(ws, n, scale, [&](Index r) {
    // Ktail_r = k_r ⊙ Fout_r ⊙ exp(G_{n−1} − G_{end(r)}), the last factor (ChunkDecay::span)
    // once per sub-block.
    if (r % kSubBlock == 0) dc.span(n - 1, std::min(n, r + kSubBlock) - 1, ws.p);
    ws.Qg.row(r) = ws.Qs.row(r).cwiseProduct(dc.Gam.row(r));
    ws.Kt.row(r) = ws.Kc.row(r).cwiseProduct(dc.Fout.row(r)).cwiseProduct(ws.p.transpose());
  });
  ws.gammaC = dc.Gam.row(n - 1).transpose();
}

/// Phase 2 of a chunk on state columns [j0, j0+w) — the columns of S evolve
/// independently, so the state pass can be split over value slices:
///   R = U − Y S_0 ;  O = Qγ S_0 + Aqk R ;  S_C = Diag(γ_n) S_0 + Ktailᵀ R.
/// S (K rows, leading dimension S.cols() ≥ j0 + w) is updated in place; O[:, j0:j0+w)
/// gets the chunk outputs; R is formed in place of U's columns [j0, j0+w) of YU (U is
/// not read again).
template <class Acc>
void chunk_state_pass(RowMat<Acc>& YU, const RowMat<Acc>& Aqk, const RowMat<Acc>& Qg, const RowMat<Acc>& Kt,
                      const Vec<Acc>& gammaC, Index n, Index j0, Index w, RowMat<Acc>& S, RowMat<Acc>& O) {
  const Index K = S.rows(), ldS = S.cols(), ldR = YU.cols(), ldO = O.cols();
  Acc* S0 = S.data() + j0;
  Acc* Rb = YU.data() + K + j0;
  Acc* Ob = O.data() + j0;
  small_gemm<Update::sub>(n, w, K, strided(YU), S0, ldS, Rb, ldR);  // R = U − Y S0
  small_gemm<Update::set>(n, w, K, strided(Qg), S0, ldS, Ob, ldO);  // O = Qγ S0
  small_gemm<Update::add>(n, w, n, strided(Aqk), Rb, ldR, Ob, ldO, Tri::lower);  // O += Aqk R
  small_gemm<Update::scale_add>(K, w, n, strided_t(Kt), Rb, ldR, S0, ldS, Tri::full, false,
                                gammaC.data());  // S = Diag(γ_n) S0 + Ktailᵀ R
}

/// One whole chunk of SPEC §3 on ws.S in place (S_0 → S_C); chunk outputs into ws.O.
template <class Acc>
void chunk_forward_step(ChunkScratch<Acc>& ws, Index n, Acc scale) {
  chunk_factors(ws, n, scale);
  chunk_state_pass(ws.YU, ws.Aqk, ws.Qg, ws.Kt, ws.gammaC, n, 0, ws.Vv.cols(), ws.S, ws.O);
}

/// Phase-1 results of one chunk kept for the chunk-parallel schedule.
template <class Acc>
struct ChunkFactors {
  RowMat<Acc> YU, Aqk, Qg, Kt;
  Vec<Acc> gammaC;
  ChunkFactors(Index C, Index K, Index V)
      : YU(C, padded_cols<Acc>(K + V)), Aqk(C, C), Qg(C, K), Kt(C, K), gammaC(K) {}
  std::size_t bytes() const { return sizeof(Acc) * std::size_t(YU.size() + Aqk.size() + Qg.size() + Kt.size() + gammaC.size()); }
  /// Take the phase-1 results out of a scratch (O(1) buffer swaps, no copies).
  void take(ChunkScratch<Acc>& ws) {
    YU.swap(ws.YU);
    Aqk.swap(ws.Aqk);
    Qg.swap(ws.Qg);
    Kt.swap(ws.Kt);
    gammaC.swap(ws.gammaC);
  }
};

/// One chunk of one (sequence, value head): where its tokens are and its factors.
struct ChunkRef {
  Index n, hv, t0, len;
};

/// What the chunk-parallel schedules (the forward's, the backward's from a context)
/// walk: every chunk of every (sequence, value head) pair, pair by pair in sequence
/// order — pair = n·Hv + hv owns chunks[first[pair] .. first[pair + 1]), none when
/// its sequence has no state slot — and the split of the V value columns of their
/// state passes into `slices` slices of `width` columns (≥ 16 columns a slice, about
/// 2 (pair, slice) items per executor slot).
struct ChunkPlan {
  std::vector<ChunkRef> chunks;
  std::vector<Index> first;
  Index slices = 1, width = 0;

  ChunkPlan(const Dims& d, Index C, int concurrency) {
    const Index pairs = d.N * d.Hv;
    first.assign(size_t(pairs + 1), 0);
    for (Index pair = 0; pair < pairs; ++pair) {
      first[size_t(pair)] = Index(chunks.size());
      const Index n = pair / d.Hv, hv = pair % d.Hv;
      if (d.slot(n) < 0) continue;
      const auto span = d.seq(n);
      for (Index t0 = span.begin; t0 < span.end; t0 += C) chunks.push_back({n, hv, t0, std::min(C, span.end - t0)});
    }
    first[size_t(pairs)] = Index(chunks.size());
    const Index want = (2 * Index(concurrency) + pairs - 1) / std::max<Index>(pairs, 1);
    slices = std::max<Index>(1, std::min<Index>(want, d.V / 16));
    width = (d.V + slices - 1) / slices;
  }
  Index count() const { return Index(chunks.size()); }
};

/// Write rows [0, len) × columns [j0, j0+w) of O to o at tokens t0.. of (b, hv).
template <class TO, class Acc>
void write_rows(const View<TO>& o, Index b, Index t0, Index len, Index hv, const RowMat<Acc>& O, Index j0, Index w) {
  for (Index r = 0; r < len; ++r) {
    TO* dst = o.row(b, t0 + r, hv);
    if constexpr (std::is_same_v<TO, Acc>)
      stream_row(dst + j0, &O(r, j0), w);  // the output is not read again here
    else
      for (Index j = j0; j < j0 + w; ++j) dst[j] = convert<TO>(O(r, j));
  }
}

/// The states of one head group (see head_group): one K×V matrix per head (as
/// ChunkScratch::S, V columns used of padded_cols(V)).
template <class Acc>
struct HeadGroupStates {
  std::vector<RowMat<Acc>> S;
  HeadGroupStates(Index group, Index K, Index V) : S(size_t(group), RowMat<Acc>(K, padded_cols<Acc>(V))) {}
  std::size_t bytes() const { return sizeof(Acc) * std::size_t(Index(S.size()) * (S.empty() ? 0 : S[0].size())); }
};

/// How many adjacent value heads one task of the pair-parallel schedule walks in
/// lockstep, chunk by chunk: the largest of 8, 4, 2 that still leaves every
/// executor slot a task. In token-major layouts one token's heads are adjacent in
/// memory, so loading head h's rows of a chunk pulls the next heads' rows into the
/// cache with them (the hardware prefetcher fetches ahead within each 4 KB page);
/// loaded right after, they come from L2 instead of memory.
inline Index head_group(const Dims& d, int concurrency) {
  for (Index g : {8, 4, 2})
    if (g <= d.Hv && d.N * ((d.Hv + g - 1) / g) >= Index(concurrency)) return g;
  return 1;
}

/// The pair-parallel schedule of the chunk forward, shared by chunk_forward and
/// chunk_forward_save: groups of adjacent value heads of one sequence (head_group)
/// run in parallel, each walking its chunks and, per chunk, its heads on its slot's
/// scratch. `at_chunk(n, c, hv, S)` is called with the state S (its first V columns;
/// see padded_cols) at the start of chunk c of sequence n, before the chunk advances
/// it (a template parameter, so that it inlines; the plain forward passes a no-op).
template <class Policy, class T, class TO, class AtChunk>
void chunk_forward_pairs(const Problem<T>& p, const Outputs<TO, accum_t<T>>& out, const Dims& d, const Options& opt,
                         AtChunk&& at_chunk) {
  using Acc = accum_t<T>;
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  const TokenReader<Policy, T> rd{p, d};
  const Index C = opt.chunk_size;
  const Acc scale = Acc(d.scale);
  const Index group = head_group(d, ex.concurrency());
  const Index groups = (d.Hv + group - 1) / group, items = d.N * groups;
  Workspace local;
  auto& scratch = scratch_pool<ChunkScratch<Acc>>(opt, local, slot_count(ex, items), C, d.K, d.V);
  auto& states = scratch_pool<HeadGroupStates<Acc>>(opt, local, slot_count(ex, items), group, d.K, d.V);
  parallel_for(ex, items, [&](Index item, int slot) {
    const Index n = item / groups, h0 = (item % groups) * group, heads = std::min(group, d.Hv - h0);
    const Index state_slot = d.slot(n);
    if (state_slot < 0) return;
    auto& ws = scratch[size_t(slot)];
    auto& S = states[size_t(slot)].S;
    const auto span = d.seq(n);
    for (Index j = 0; j < heads; ++j) load_state(p.initial_state, state_slot, h0 + j, S[size_t(j)].leftCols(d.V));
    for (Index t0 = span.begin, c = 0; t0 < span.end; t0 += C, ++c) {
      const Index len = std::min(C, span.end - t0);
      for (Index j = 0, hv = h0; j < heads; ++j, ++hv) {
        ws.S.swap(S[size_t(j)]);  // O(1): the chunk step works on ws.S
        at_chunk(n, c, hv, static_cast<const RowMat<Acc>&>(ws.S));
        ws.load(rd, span.batch, t0, len, hv);
        chunk_forward_step(ws, len, scale);
        write_rows(out.o, span.batch, t0, len, hv, ws.O, 0, d.V);
        ws.S.swap(S[size_t(j)]);
      }
    }
    for (Index j = 0; j < heads; ++j) store_state(out.final_state, state_slot, h0 + j, S[size_t(j)].leftCols(d.V));
  });
}

}  // namespace detail

/// Chunkwise WY forward (SPEC §3): same contract and outputs as recurrent_forward,
/// O(T·C·(K+V) + T·K·V) work per head in dense products. Requires log-decays ≤ 0
/// (checked when opt.check_finite is set); chunk size 16, 32 or 64.
///
/// Schedule: with at least 2 (sequence, head) pairs per executor slot, pairs run in
/// parallel, each walking its chunks. With fewer (long sequences, few heads) the
/// work is split finer: phase 1 (chunk_factors) runs in parallel over all chunks,
/// then the state pass runs in parallel over (pair, value-column slice), which
/// keeps every slot busy; this holds the phase-1 results of every chunk
/// (≈ C·(3K+V+C) floats per chunk) in the workspace.
template <class Policy, class T, class TO>
Status chunk_forward(const Problem<T>& p, const Outputs<TO, accum_t<T>>& out, const Options& opt = {}) {
  using Acc = accum_t<T>;
  Dims d;
  GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, opt, /*chunked=*/true, d));
  GDR2_RETURN_IF_ERROR(validate_outputs(out, d));
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  const Index pairs = d.N * d.Hv;
  if (ex.concurrency() == 1 || pairs >= 2 * Index(ex.concurrency())) {
    detail::chunk_forward_pairs<Policy>(p, out, d, opt, [](Index, Index, Index, const detail::RowMat<Acc>&) {});
    return {};
  }

  // Chunk-parallel schedule. Phase 1 over every chunk of every live pair.
  const detail::TokenReader<Policy, T> rd{p, d};
  const Index C = opt.chunk_size;
  const Acc scale = Acc(d.scale);
  Workspace local;
  // Phase 2 (the state pass) runs over value-column slices (see ChunkPlan).
  const detail::ChunkPlan plan(d, C, ex.concurrency());
  const auto& chunks = plan.chunks;
  const auto& first_chunk = plan.first;
  const Index nchunks = plan.count(), slices = plan.slices, width = plan.width;
  // One scratch per slot of the wider phase (short sequences: more slices than chunks).
  auto& scratch = detail::scratch_pool<detail::ChunkScratch<Acc>>(opt, local, detail::slot_count(ex, std::max(nchunks, pairs * slices)), C, d.K, d.V);
  auto& factors = detail::scratch_pool<detail::ChunkFactors<Acc>>(opt, local, nchunks, C, d.K, d.V);
  parallel_for(ex, nchunks, [&](Index c, int slot) {
    const auto& ch = chunks[size_t(c)];
    auto& ws = scratch[size_t(slot)];
    ws.load(rd, d.seq(ch.n).batch, ch.t0, ch.len, ch.hv);
    detail::chunk_factors(ws, ch.len, scale);
    factors[size_t(c)].take(ws);
  });
  // Phase 2: the state pass, over (pair, value-column slice).
  parallel_for(ex, pairs * slices, [&](Index item, int slot) {
    const Index pair = item / slices, j0 = (item % slices) * width, w = std::min(width, d.V - j0);
    const Index n = pair / d.Hv, hv = pair % d.Hv;
    const Index state_slot = d.slot(n);
    if (state_slot < 0 || w <= 0) return;
    auto& ws = scratch[size_t(slot)];
    const Index b = d.seq(n).batch;
    // Only this slice's columns: other slices of the same state may already be
    // writing theirs when the state is updated in place.
    for (Index i = 0; i < d.K; ++i)
      for (Index j = j0; j < j0 + w; ++j)
        ws.S(i, j) = p.initial_state.given() ? p.initial_state(state_slot, hv, i, j) : Acc(0);
    for (Index c = first_chunk[size_t(pair)]; c < first_chunk[size_t(pair + 1)]; ++c) {
      const auto& ch = chunks[size_t(c)];
      auto& f = factors[size_t(c)];  // this slice's columns of U become R
      detail::chunk_state_pass(f.YU, f.Aqk, f.Qg, f.Kt, f.gammaC, ch.len, j0, w, ws.S, ws.O);
      detail::write_rows(out.o, b, ch.t0, ch.len, hv, ws.O, j0, w);
    }
    if (out.final_state.given()) {
      for (Index i = 0; i < d.K; ++i)
        for (Index j = j0; j < j0 + w; ++j) out.final_state(state_slot, hv, i, j) = ws.S(i, j);
    }
  });
  return {};
}

}  // namespace gdr2
