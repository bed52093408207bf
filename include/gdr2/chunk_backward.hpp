// gdr2 — the gate-aware backward of the chunkwise WY engine (SPEC §4, numerics §5).
//
// Chunks are processed from the end of a sequence to its start. For each chunk the
// forward quantities of SPEC §3 (decays, the two decay-weighted Grams T and Aqk,
// the WY solve [Y U] = (I+T)⁻¹[Ē Z], R = U − Y S_0) are recomputed from the inputs
// and the state at the chunk start, and then differentiated. The state at every
// chunk start comes either from a ChunkContext saved by `chunk_forward_save`, or
// from a forward sweep over the sequence at the start of `chunk_backward`.
//
// Numerics. A literal transcription of SPEC §4 forms K̄ = K/γ, dK̄/γ and K/γ², which
// overflow for strong decays. Here every decay-weighted term has the form
//   Σ_d a_r[d] c_s[d] exp(G_r[d] − G_s[d]),  s ≤ r,
// and its gradients are again such sums ("decayed applies"), evaluated with the
// sub-block/anchor structure of `decayed_grams`: off-diagonal 16-token blocks as
// plain GEMMs between factors exp(G_r − G_anchor), exp(G_anchor − G_anchor'),
// exp(G_anchor' − G_s) that are each ≤ 1, diagonal blocks with running products of
// per-token decays. The decay gradient of such a term adds a_r ⊙ (Σ_s …) to dG_r
// and subtracts c_s ⊙ (Σ_r …) from dG_s, so with dQs, dBk the full gradients of
// Qs = scale·q and Bk = b ⊙ k,
//   dG = Qs ⊙ dQs + Bk ⊙ dBk − K ⊙ P − dKtail ⊙ Ktail  (+ the γ_C terms on the last row)
// where P = Σ_{r≥s} (dT_rs Bk_r + dAqk_rs Qs_r) ⊙ exp(G_r − G_s): every exponential
// is exp of a non-positive number, no 1/γ anywhere. dg is the reverse cumulative
// sum of dG inside the chunk. The pairs with no decay between them (the diagonal
// of Aqk, the last row of Ktail) add the same term with + and −; they are left out
// of dG, where they would cancel only up to rounding.
//
// The write gate and erase gate sit inside the products that accumulate dA: with
// A = (I+T)⁻¹, dA = dU Zᵀ + dY Ēᵀ (Z = w ⊙ v, Ē = γ ⊙ b ⊙ k), and the gradient of
// T is formed as dT = −strict_lower(dĒ Yᵀ + dZ Uᵀ) with [dĒ dZ] = Aᵀ[dY dU] — the
// same thing without forming A.
#pragma once

#include "chunk.hpp"
#include "recurrent_backward.hpp"

#include <vector>

namespace gdr2 {

/// What `chunk_forward_save` keeps for `chunk_backward`: the state at the start of
/// every chunk of every sequence and value head, in the accumulation type, plus the
/// geometry it was saved for (checked by the backward).
///
/// Memory: Σ_n ⌈L_n / C⌉ · Hv · K · V · sizeof(Acc) bytes — for B = 1, T = 4096,
/// Hv = 16, K = V = 128, C = 64 in fp32 that is 64 MiB, 1/C of keeping every token's
/// state. Nothing else is kept: decays, Grams, the WY solve and R are recomputed
/// per chunk in the backward (about half a forward's work). The first chunk's
/// state is S_0 itself, so an in-place forward (final_state aliasing
/// initial_state) is still differentiated correctly.
template <class Acc>
struct ChunkContext {
  Index chunk_size = 0;
  const char* policy = nullptr;     ///< Policy::name() of the forward
  Dims dims;                        ///< geometry of the forward (checked by the backward)
  std::vector<Index> seq_offsets;   ///< cu_seqlens of the forward (empty when not varlen)
  std::vector<Index> first_chunk;   ///< [N+1]: sequence n owns chunks first_chunk[n] .. first_chunk[n+1]−1
  std::vector<Acc> states;          ///< [chunks, Hv, K, V], chunk-start states

  /// Bytes held by the saved states.
  std::size_t bytes() const { return states.size() * sizeof(Acc); }
  bool empty() const { return states.empty() && first_chunk.empty(); }
  /// Pointer to the K×V (row-major) start state of chunk c of sequence n, value head hv.
  Acc* state(Index n, Index c, Index hv) {
    return states.data() + ((first_chunk[size_t(n)] + c) * dims.Hv + hv) * dims.K * dims.V;
  }
  const Acc* state(Index n, Index c, Index hv) const {
    return states.data() + ((first_chunk[size_t(n)] + c) * dims.Hv + hv) * dims.K * dims.V;
  }
};

namespace detail {

/// Diagonal block [i0, i0+ni) of decayed_apply2 over columns [d0, d0 + NP·lanes):
/// outk(r,:) += Mk(r,s) · X(s,:) ⊙ Π_{s<u≤r} E(u,:) for s ≤ r, the running product in
/// NP registers (over_register_pieces).
template <int NP, class Packet, class Acc>
void apply2_diagonal(const RowMat<Acc>& M1, RowMat<Acc>& out1, const RowMat<Acc>& M2, RowMat<Acc>& out2,
                     const RowMat<Acc>& X, const RowMat<Acc>& E, Index i0, Index ni, Index d0) {
  using namespace Eigen::internal;
  constexpr int L = unpacket_traits<Packet>::size;
  auto axpy = [&](RowMat<Acc>& out, Index r, Acc m, const Packet* p) {
    const Packet mv = pset1<Packet>(m);
    Acc* o = &out(r, d0);
    for (int q = 0; q < NP; ++q) pstoreu(o + q * L, pmadd(mv, p[q], ploadu<Packet>(o + q * L)));
  };
  for (Index s = i0; s < i0 + ni; ++s) {
    Packet p[NP];
    for (int q = 0; q < NP; ++q) p[q] = ploadu<Packet>(&X(s, d0 + q * L));
    axpy(out1, s, M1(s, s), p);
    axpy(out2, s, M2(s, s), p);
    for (Index r = s + 1; r < i0 + ni; ++r) {
      for (int q = 0; q < NP; ++q) p[q] = pmul(p[q], ploadu<Packet>(&E(r, d0 + q * L)));
      axpy(out1, r, M1(r, s), p);
      axpy(out2, r, M2(r, s), p);
    }
  }
}

/// Diagonal block [j0, j0+nj) of decayed_apply2_t over columns [d0, d0 + NP·lanes):
/// out(s,:) += Σ_{r≥s} (M1(r,s) X1(r,:) + M2(r,s) X2(r,:)) ⊙ Π_{s<u≤r} E(u,:), the running
/// product and out's row in registers.
template <int NP, class Packet, class Acc>
void apply2_t_diagonal(const RowMat<Acc>& M1, const RowMat<Acc>& X1, const RowMat<Acc>& M2, const RowMat<Acc>& X2,
                       const RowMat<Acc>& E, Index j0, Index nj, Index d0, RowMat<Acc>& out) {
  using namespace Eigen::internal;
  constexpr int L = unpacket_traits<Packet>::size;
  for (Index s = j0; s < j0 + nj; ++s) {
    Packet acc[NP], p[NP];
    const Packet m1 = pset1<Packet>(M1(s, s)), m2 = pset1<Packet>(M2(s, s));
    for (int q = 0; q < NP; ++q) {
      const Index d = d0 + q * L;
      acc[q] = pmadd(m2, ploadu<Packet>(&X2(s, d)), pmadd(m1, ploadu<Packet>(&X1(s, d)), ploadu<Packet>(&out(s, d))));
      p[q] = pset1<Packet>(Acc(1));
    }
    for (Index r = s + 1; r < j0 + nj; ++r) {
      const Packet a1 = pset1<Packet>(M1(r, s)), a2 = pset1<Packet>(M2(r, s));
      for (int q = 0; q < NP; ++q) {
        const Index d = d0 + q * L;
        p[q] = pmul(p[q], ploadu<Packet>(&E(r, d)));
        const Packet t = pmadd(a2, ploadu<Packet>(&X2(r, d)), pmul(a1, ploadu<Packet>(&X1(r, d))));
        acc[q] = pmadd(t, p[q], acc[q]);
      }
    }
    for (int q = 0; q < NP; ++q) pstoreu(&out(s, d0 + q * L), acc[q]);
  }
}

/// The two decayed applies against the keys (SPEC §4, gradients of T and Aqk with
/// respect to their left factors), sharing every decay factor:
///   out1(r,:) += Σ_{s≤r} M1(r,s) · X(s,:) ⊙ exp(G_r − G_s),   out2 likewise with M2,
/// for r, s ∈ [0, n); M1, M2 are read on and below their diagonals. Anchors as in
/// decayed_grams: for row block i all earlier column blocks j at once as one GEMM
/// M_i,<i · (X ⊙ Fout ⊙ D_ij) followed by ⊙ Fin_i, D_ij = exp(G_{i0−1} − G_{end(j)});
/// diagonal blocks by running products of exp(g). XB: scratch ≥ n×K; acc ≥ kSubBlock×K.
template <class Acc>
void decayed_apply2(const RowMat<Acc>& M1, RowMat<Acc>& out1, const RowMat<Acc>& M2, RowMat<Acc>& out2,
                    const RowMat<Acc>& X, const ChunkDecay<Acc>& dc, Index n, RowMat<Acc>& XB, RowMat<Acc>& acc,
                    Vec<Acc>& p) {
  for (Index i0 = 0; i0 < n; i0 += kSubBlock) {
    const Index ni = std::min(kSubBlock, n - i0);
    if (i0 > 0) {
      anchored_blocks(X, dc, i0, XB, p);  // XB rows [0, i0) = X ⊙ Fout ⊙ D_ij
      const Index K = X.cols();
      auto a = acc.topRows(ni);
      small_gemm<Update::set>(ni, K, i0, strided(M1).offset(i0, 0), XB.data(), XB.cols(), acc.data(), acc.cols());
      out1.middleRows(i0, ni) += a.cwiseProduct(dc.Fin.middleRows(i0, ni));
      small_gemm<Update::set>(ni, K, i0, strided(M2).offset(i0, 0), XB.data(), XB.cols(), acc.data(), acc.cols());
      out2.middleRows(i0, ni) += a.cwiseProduct(dc.Fin.middleRows(i0, ni));
    }
    // Diagonal block: p = X_s ⊙ exp(G_r − G_s) by a running product over r, held in
    // registers piece by piece.
    over_register_pieces<Acc>(X.cols(), [&](auto np, auto packet, Index d0) {
      apply2_diagonal<decltype(np)::value, decltype(packet)>(M1, out1, M2, out2, X, dc.E, i0, ni, d0);
    });
  }
}

/// The transposed decayed applies (gradients of T and Aqk with respect to the keys),
/// summed into one output:
///   out(s,:) += Σ_{r≥s} (M1(r,s) · X1(r,:) + M2(r,s) · X2(r,:)) ⊙ exp(G_r − G_s),
/// r, s ∈ [0, n), M1, M2 read on and below their diagonals. For column block j all
/// later row blocks i at once: (M_>j,jᵀ · (X ⊙ Fin ⊙ D_ij)) ⊙ Fout_j. XB1, XB2:
/// scratch ≥ n×K; acc ≥ kSubBlock×K.
template <class Acc>
void decayed_apply2_t(const RowMat<Acc>& M1, const RowMat<Acc>& X1, const RowMat<Acc>& M2, const RowMat<Acc>& X2,
                      const ChunkDecay<Acc>& dc, Index n, RowMat<Acc>& out, RowMat<Acc>& XB1, RowMat<Acc>& XB2,
                      RowMat<Acc>& acc, Vec<Acc>& p) {
  for (Index j0 = 0; j0 < n; j0 += kSubBlock) {
    const Index nj = std::min(kSubBlock, n - j0), jend = j0 + nj - 1, r0 = j0 + kSubBlock;
    if (r0 < n) {
      const Index m = n - r0;
      for (Index i0 = r0; i0 < n; i0 += kSubBlock) {
        const Index ni = std::min(kSubBlock, n - i0);
        auto b1 = XB1.middleRows(i0 - r0, ni);
        auto b2 = XB2.middleRows(i0 - r0, ni);
        b1 = X1.middleRows(i0, ni).cwiseProduct(dc.Fin.middleRows(i0, ni));
        b2 = X2.middleRows(i0, ni).cwiseProduct(dc.Fin.middleRows(i0, ni));
        if (i0 - 1 != jend) {
          dc.span(i0 - 1, jend, p);
          b1.array().rowwise() *= p.transpose().array();
          b2.array().rowwise() *= p.transpose().array();
        }
      }
      const Index K = X1.cols();
      auto a = acc.topRows(nj);  // M_{>j, j}ᵀ · XB, read as the transposes' strides
      small_gemm<Update::set>(nj, K, m, strided_t(M1).offset(j0, r0), XB1.data(), XB1.cols(), acc.data(), acc.cols());
      small_gemm<Update::add>(nj, K, m, strided_t(M2).offset(j0, r0), XB2.data(), XB2.cols(), acc.data(), acc.cols());
      out.middleRows(j0, nj) += a.cwiseProduct(dc.Fout.middleRows(j0, nj));
    }
    // Diagonal block: p = exp(G_r − G_s) by a running product over r, held in registers
    // with out's row piece by piece.
    over_register_pieces<Acc>(X1.cols(), [&](auto np, auto packet, Index d0) {
      apply2_t_diagonal<decltype(np)::value, decltype(packet)>(M1, X1, M2, X2, dc.E, j0, nj, d0, out);
    });
  }
}

/// Per-slot scratch of the chunk backward: the chunk's inputs and recomputed WY
/// quantities (ChunkWY), plus the gradients.
template <class Acc>
struct ChunkBackwardScratch : ChunkWY<Acc> {
  // [dO; dR] (2C×V): dL/do of the chunk in rows [0, n), dL/dR in rows [n, 2n)
  RowMat<Acc> DOR;
  // recomputed forward quantities beyond ChunkWY: Kf_r = exp(G_C − G_r)
  RowMat<Acc> Kf;
  // gradients and scratch ([Qγ; −Y] and [dO; dR]·S_0ᵀ are 2C×K)
  RowMat<Acc> QY, P, dQs, dBk, dK, dG, dV, dW, dT, dAqk, X, acc;
  // [dĒ dZ] (C×(K+V)), and the transposed B operands of small_gemm: Sᵀ then dS_Cᵀ
  // (V×K), Rᵀ (V×C), [Y U]ᵀ ((K+V)×C)
  RowMat<Acc> dEZ, VK, Rt, YUt;
  RowMat<Acc> S, dS, dS0;  // chunk-start state, dL/dS at the chunk end (→ start), accumulator
  Vec<Acc> diag;
  std::vector<RowMat<Acc>> starts;  // chunk-start states of one sequence (no-context path)

  ChunkBackwardScratch(Index C, Index K, Index V)
      : ChunkWY<Acc>(C, K, V), DOR(2 * C, V), Kf(C, K), QY(2 * C, K), P(2 * C, K), dQs(C, K), dBk(C, K), dK(C, K),
        dG(C, K), dV(C, V), dW(C, V), dT(C, C), dAqk(C, C), X(C, K), acc(kSubBlock, K), dEZ(C, K + V), VK(V, K),
        Rt(V, C), YUt(K + V, C), S(K, V), dS(K, V), dS0(K, V), diag(C) {}

  /// Bytes held (for Workspace::bytes).
  std::size_t bytes() const {
    Index e = ChunkWY<Acc>::size() + diag.size();
    for (const RowMat<Acc>* m : {&DOR, &Kf, &QY, &P, &dQs, &dBk, &dK, &dG, &dV, &dW, &dT, &dAqk, &X, &acc, &dEZ, &VK, &Rt, &YUt, &S, &dS, &dS0})
      e += m->size();
    for (const auto& s : starts) e += s.size();
    return sizeof(Acc) * std::size_t(e);
  }
};

/// Recompute the forward quantities of one chunk of n tokens from its inputs and
/// its start state ws.S (SPEC §3): the WY core (chunk_wy: decays, Bk = b ⊙ k,
/// Qs = scale·q, T and Aqk, A = (I+T)⁻¹, [Y U] = A [γ ⊙ Bk, w ⊙ v]), then
/// R = U − Y S_0 and Kf_r = exp(G_C − G_r), Ktail = k ⊙ Kf.
template <class Acc>
void chunk_recompute(ChunkBackwardScratch<Acc>& ws, Index n, Acc scale) {
  const Index K = ws.Q.cols(), V = ws.Vv.cols();
  chunk_wy(ws, n, scale);
  const auto& dc = ws.dc;
  auto YU = ws.YU.topRows(n);
  auto R = ws.R.topRows(n);
  R = YU.middleCols(K, V);
  small_gemm<Update::sub>(n, V, K, strided(ws.YU), ws.S.data(), V, ws.R.data(), ws.R.cols());
  // Kf_r = exp(G_{n−1} − G_r); Ktail = k ⊙ Kf.
  dc.to_end(n, ws.Kf, ws.p);
  ws.Kt.topRows(n) = ws.Kc.topRows(n).cwiseProduct(ws.Kf.topRows(n));
}

/// ws.S ← S_C = Diag(γ_C) S_0 + Ktailᵀ R, after chunk_recompute.
template <class Acc>
void chunk_advance_state(ChunkBackwardScratch<Acc>& ws, Index n) {
  ws.S.array().colwise() *= ws.dc.Gam.row(n - 1).transpose().array();
  small_gemm<Update::add>(ws.S.rows(), ws.S.cols(), n, strided_t(ws.Kt), ws.R.data(), ws.R.cols(), ws.S.data(),
                          ws.S.cols());
}

/// Backward of one chunk of n tokens (SPEC §4, regrouped as at the top of this
/// file), after chunk_recompute. On entry rows [0, n) of ws.DOR hold dL/do of the
/// chunk and ws.dS = dL/dS_C; on exit ws.dS = dL/dS_0 and the chunk's full-vector
/// gradients (before the policy reduces them) are, one token per row:
///   dq in ws.dQs, dk in ws.dK, dv in ws.dV, dg in ws.dG, db in ws.dBk, dw in ws.dW.
template <class Acc>
void chunk_backward_step(ChunkBackwardScratch<Acc>& ws, Index n, Acc scale) {
  const Index K = ws.Q.cols(), V = ws.Vv.cols();
  const auto& dc = ws.dc;
  const auto Gam = dc.Gam.topRows(n);
  const auto Kc = ws.Kc.topRows(n);
  const auto Qs = ws.Qs.topRows(n);
  const auto Bk = ws.Bk.topRows(n);
  const auto YU = ws.YU.topRows(n);
  auto dR = ws.DOR.middleRows(n, n);
  auto P = ws.P.topRows(2 * n);
  auto QY = ws.QY.topRows(2 * n);
  auto dQs = ws.dQs.topRows(n);
  auto dBk = ws.dBk.topRows(n);
  auto dK = ws.dK.topRows(n);
  auto dG = ws.dG.topRows(n);
  auto dEZin = ws.EZ.topRows(n);  // EZ is free after the recompute
  auto dEZ = ws.dEZ.topRows(n);
  auto X = ws.X.topRows(n);
  auto dT = ws.dT.topLeftCorner(n, n);
  auto dAqk = ws.dAqk.topLeftCorner(n, n);

  // dR = Aqkᵀ dO + Ktail dS_C   (O = Qγ S_0 + Aqk R,  S_C = Diag(γ_C) S_0 + Ktailᵀ R)
  Acc* const dO_p = ws.DOR.data();
  Acc* const dR_p = ws.DOR.data() + n * V;
  small_gemm<Update::set>(n, V, n, strided_t(ws.Aqk), dO_p, V, dR_p, V, Tri::upper);
  small_gemm<Update::add>(n, V, K, strided(ws.Kt), ws.dS.data(), V, dR_p, V);
  // [dQγ; dY] = [dO; −dR] S_0ᵀ in one product (R = U − Y S_0), then
  // dS_0 = Qγᵀ dO − Yᵀ dR + Diag(γ_C) dS_C = [Qγ; −Y]ᵀ [dO; dR] + Diag(γ_C) dS_C.
  transpose_into(ws.S, K, V, ws.VK);
  small_gemm<Update::set>(2 * n, K, V, strided(ws.DOR), ws.VK.data(), K, ws.P.data(), K);
  dQs = P.topRows(n).cwiseProduct(Gam);  // Qγ = Qs ⊙ γ
  QY.topRows(n) = Qs.cwiseProduct(Gam);
  QY.bottomRows(n) = -YU.leftCols(K);
  small_gemm<Update::set>(K, V, 2 * n, strided_t(ws.QY), dO_p, V, ws.dS0.data(), V);
  ws.dS0 += Gam.row(n - 1).transpose().asDiagonal() * ws.dS;
  // dAqk = lower(dO Rᵀ). Its diagonal carries no decay (exp(G_r − G_r) = 1): the +
  // and − decay gradients cancel exactly, so it is kept out of dG (where the two
  // sides would only cancel up to rounding, swamping the tiny dg of strongly
  // decayed channels) and added to dq, dk at the end.
  transpose_into(ws.R, n, V, ws.Rt);
  small_gemm<Update::set>(n, n, V, strided(ws.DOR), ws.Rt.data(), ws.Rt.cols(), ws.dAqk.data(), ws.dAqk.cols(),
                          Tri::full, /*lower_c=*/true);
  dAqk.template triangularView<Eigen::StrictlyUpper>().setZero();
  ws.diag.head(n) = dAqk.diagonal();
  dAqk.diagonal().setZero();
  // dKtail = R dS_Cᵀ: dk = dKtail ⊙ Kf, and dKtail ⊙ Ktail goes + to dG_C, − to dG_r
  // (r = C has no decay and cancels: left out).
  transpose_into(ws.dS, K, V, ws.VK);
  small_gemm<Update::set>(n, K, V, strided(ws.R), ws.VK.data(), K, ws.X.data(), K);
  dK = X.cwiseProduct(ws.Kf.topRows(n));
  X = X.cwiseProduct(ws.Kt.topRows(n));
  dG.topRows(n - 1) = -X.topRows(n - 1);
  dG.row(n - 1) = X.topRows(n - 1).colwise().sum();
  dG.row(n - 1) += (ws.dS.cwiseProduct(ws.S).rowwise().sum().transpose()).cwiseProduct(Gam.row(n - 1));

  // [Y U] = A [Ē Z]: [dĒ dZ] = Aᵀ [dY dU] with dY = −dR S_0ᵀ, dU = dR, and
  // dT = −strict_lower([dĒ dZ] [Y U]ᵀ) (A = (I+T)⁻¹, dA = [dY dU][Ē Z]ᵀ).
  dEZin.leftCols(K) = -P.bottomRows(n);
  dEZin.middleCols(K, V) = dR;
  small_gemm<Update::set>(n, K + V, n, strided_t(ws.A), ws.EZ.data(), ws.EZ.cols(), ws.dEZ.data(), K + V, Tri::upper);
  transpose_into(ws.YU, n, K + V, ws.YUt);
  dT.setZero();
  small_gemm<Update::sub>(n, n, K + V, strided(ws.dEZ), ws.YUt.data(), ws.YUt.cols(), ws.dT.data(), ws.dT.cols(),
                          Tri::full, /*lower_c=*/true);
  dT.template triangularView<Eigen::Upper>().setZero();
  dBk = dEZ.leftCols(K).cwiseProduct(Gam);  // Ē = γ ⊙ Bk
  ws.dW.topRows(n) = dEZ.rightCols(V).cwiseProduct(ws.Vv.topRows(n));  // Z = w ⊙ v
  ws.dV.topRows(n) = dEZ.rightCols(V).cwiseProduct(ws.Wg.topRows(n));

  // T = Σ_d Bk_r k_s e^{G_r−G_s} (s<r) and Aqk = Σ_d Qs_r k_s e^{G_r−G_s} (s<r here).
  decayed_apply2(ws.dT, ws.dBk, ws.dAqk, ws.dQs, ws.Kc, dc, n, ws.AF, ws.acc, ws.p);
  X.setZero();
  decayed_apply2_t(ws.dT, ws.Bk, ws.dAqk, ws.Qs, dc, n, ws.X, ws.AF, ws.AF2, ws.acc, ws.p);
  dK += X;

  // Decay gradient: every term above with its + / − side, then the reverse cumsum.
  dG += Qs.cwiseProduct(dQs) + Bk.cwiseProduct(dBk) - Kc.cwiseProduct(X);
  for (Index r = n - 2; r >= 0; --r) dG.row(r) += dG.row(r + 1);

  // Back to the inputs: the diagonal of Aqk, then Bk = b ⊙ k, Qs = scale·q.
  dQs += ws.diag.head(n).asDiagonal() * Kc;
  dK += ws.diag.head(n).asDiagonal() * Qs;
  dK += dBk.cwiseProduct(ws.Bg.topRows(n));
  dBk = dBk.cwiseProduct(Kc);  // now db
  dQs *= scale;                // now dq
  ws.dS = ws.dS0;
}

/// Check that a saved context belongs to this problem and these options.
template <class Policy, class Acc>
Status check_context(const ChunkContext<Acc>& ctx, const Dims& d, const Options& opt) {
  if (ctx.empty() || !ctx.policy)
    return {Code::invalid_argument, "the chunk context is empty: fill it with chunk_forward_save first"};
  if (std::string(ctx.policy) != Policy::name()) {
    return {Code::invalid_argument, std::string("the chunk context was saved by the ") + ctx.policy +
                                        " policy, not " + Policy::name()};
  }
  if (ctx.chunk_size != opt.chunk_size) {
    return {Code::invalid_argument, "the chunk context was saved with chunk_size " + std::to_string(ctx.chunk_size) +
                                        ", the backward was asked for " + std::to_string(opt.chunk_size)};
  }
  const Dims& c = ctx.dims;
  if (c.B != d.B || c.T != d.T || c.Hk != d.Hk || c.Hv != d.Hv || c.K != d.K || c.V != d.V || c.N != d.N) {
    return {Code::invalid_argument,
            "the chunk context was saved for a different problem (B, T, Hk, Hv, K, V, N = " + std::to_string(c.B) +
                ", " + std::to_string(c.T) + ", " + std::to_string(c.Hk) + ", " + std::to_string(c.Hv) + ", " +
                std::to_string(c.K) + ", " + std::to_string(c.V) + ", " + std::to_string(c.N) + ")"};
  }
  const bool varlen = d.cu_seqlens.given();
  if (varlen != !ctx.seq_offsets.empty())
    return {Code::invalid_argument, "the chunk context was saved for a different problem (cu_seqlens)"};
  if (varlen) {
    for (Index i = 0; i <= d.N; ++i)
      if (ctx.seq_offsets[size_t(i)] != d.cu_seqlens[i])
        return {Code::invalid_argument, "the chunk context was saved for different cu_seqlens"};
  }
  return {};
}

/// Chunk-start state layout of a problem: first_chunk[n] for n ∈ [0, N].
inline std::vector<Index> chunk_offsets(const Dims& d, Index C) {
  std::vector<Index> first(size_t(d.N + 1), 0);
  for (Index n = 0; n < d.N; ++n) {
    const auto s = d.seq(n);
    first[size_t(n + 1)] = first[size_t(n)] + (s.end - s.begin + C - 1) / C;
  }
  return first;
}

/// The shared body of both chunk_backward overloads. `starts` supplies the chunk-start
/// states: starts.prepare(ws, n, hv) once per (sequence, value head), then
/// starts.load(ws, n, c, hv) puts the start state of chunk c into ws.S, c = last … 0.
template <class Policy, class T, class StartStates>
void chunk_backward_run(const Problem<T>& p, const GradOutputs<T>& up, const Gradients<accum_t<T>>& gr,
                        const Dims& d, const Options& opt, StartStates& starts,
                        std::vector<ChunkBackwardScratch<accum_t<T>>>& scratch) {
  using Acc = accum_t<T>;
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  const TokenReader<Policy, T> rd{p, d};
  const Index C = opt.chunk_size;
  const Acc scale = Acc(d.scale);
  parallel_for(ex, backward_items(d), [&](Index item, int slot) {
    const Index n = item / d.Hk, hk = item % d.Hk;
    auto& ws = scratch[size_t(slot)];
    const auto span = d.seq(n);
    const Index chunks = (span.end - span.begin + C - 1) / C;
    for (Index hv = hk * d.group; hv < (hk + 1) * d.group; ++hv) {
      starts.prepare(ws, rd, n, hv);
      load_final_grad(up.d_final_state, n, hv, ws.dS);
      for (Index c = chunks - 1; c >= 0; --c) {
        const Index t0 = span.begin + c * C, len = std::min(C, span.end - t0);
        starts.load(ws, n, c, hv);
        ws.load(rd, span.batch, t0, len, hv);
        copy_rows(up.d_o, span.batch, t0, len, hv, d.V, ws.DOR.data(), ws.DOR.cols());
        chunk_recompute(ws, len, scale);
        chunk_backward_step(ws, len, scale);
        for (Index r = 0; r < len; ++r) {
          add_token_grads<Policy>(gr, d, span.batch, t0 + r, hv, ws.dQs.row(r).data(), ws.dK.row(r).data(),
                                  ws.dV.row(r).data(), ws.dG.row(r).data(), ws.dBk.row(r).data(),
                                  ws.dW.row(r).data());
        }
      }
      store_state(gr.d_initial_state, n, hv, ws.dS);
    }
  });
}

/// Chunk-start states from a saved context.
template <class Acc>
struct ContextStarts {
  const ChunkContext<Acc>& ctx;
  template <class Reader>
  void prepare(ChunkBackwardScratch<Acc>&, const Reader&, Index, Index) {}
  void load(ChunkBackwardScratch<Acc>& ws, Index n, Index c, Index hv) {
    ws.S = Eigen::Map<const RowMat<Acc>>(ctx.state(n, c, hv), ctx.dims.K, ctx.dims.V);
  }
};

/// Chunk-start states from a forward sweep over the sequence (per work item).
template <class Acc>
struct SweepStarts {
  const View<const Acc>& initial_state;
  const Dims& d;
  Index C;
  Acc scale;
  template <class Reader>
  void prepare(ChunkBackwardScratch<Acc>& ws, const Reader& rd, Index n, Index hv) {
    const auto span = d.seq(n);
    const Index chunks = (span.end - span.begin + C - 1) / C;
    while (Index(ws.starts.size()) < chunks) ws.starts.emplace_back(d.K, d.V);
    load_state(initial_state, n, hv, ws.S);
    for (Index c = 0; c < chunks; ++c) {
      ws.starts[size_t(c)] = ws.S;
      if (c + 1 == chunks) break;  // the last chunk's end state is not needed
      ws.load(rd, span.batch, span.begin + c * C, C, hv);
      chunk_recompute(ws, C, scale);
      chunk_advance_state(ws, C);
    }
  }
  void load(ChunkBackwardScratch<Acc>& ws, Index, Index c, Index) { ws.S = ws.starts[size_t(c)]; }
};

/// The chunk-local affine map of the reverse state pass (chunk-parallel backward):
///   dS_start = b + M · dS_end,   M = Diag(γ_C) − Yᵀ Ktail  (K×K),
///                                b = (Qγᵀ − Yᵀ Aqkᵀ) dO    (K×V),
/// the regrouping of chunk_backward_step's dS_0 = [Qγ; −Y]ᵀ [dO; dR] + Diag(γ_C) dS_C
/// with dR = Aqkᵀ dO + Ktail dS_C. The reverse pass overwrites b with dS_end.
template <class Acc>
struct ChunkDStateMap {
  RowMat<Acc> M, b;
  ChunkDStateMap(Index /*C*/, Index K, Index V) : M(K, K), b(K, V) {}
  std::size_t bytes() const { return sizeof(Acc) * std::size_t(M.size() + b.size()); }
};

/// Whether the chunk-parallel schedule beats the per-item one for `items` (sequence, key
/// head) items on `slots` executor slots. It does about kChunkParallelWork times the
/// work (each chunk is recomputed twice, plus the maps and the reverse pass on skinny
/// column slices: measured 1.75–2.04× on one thread, B=1 T=4096 H=1 K=V=128 fp32) but
/// spreads it evenly, while the per-item schedule takes ⌈items / slots⌉ rounds of one
/// item. Demanding a 20 % gain, it is chosen e.g. for 1 item on ≥ 3 slots, 2 on ≥ 6.
inline bool prefer_chunk_parallel_backward(Index items, int slots) {
  constexpr double kChunkParallelWork = 2.0;
  const Index rounds = (items + slots - 1) / slots;
  return slots > 1 && kChunkParallelWork * double(items) / double(slots) < 0.8 * double(rounds);
}

/// Chunk-parallel schedule of chunk_backward from a saved context, for few
/// (sequence, key head) items: (1) over every chunk: recompute it from its saved start
/// state and form its ChunkDStateMap; (2) over (sequence, value head, value-column
/// slice): the reverse pass dS_end(c−1) = b_c + M_c dS_end(c) — the columns of dS are
/// independent, as in the forward's state pass; (3) over (sequence, key head, chunk):
/// the chunk backward with its dS_end, each chunk's gradients on its own token rows.
/// Holds (K² + K·V) accumulators per chunk and value head (ChunkDStateMap) and redoes
/// each chunk's recompute once more than the per-item schedule.
template <class Policy, class T>
void chunk_backward_chunk_parallel(const Problem<T>& p, const ChunkContext<accum_t<T>>& ctx, const GradOutputs<T>& up,
                                   const Gradients<accum_t<T>>& gr, const Dims& d, const Options& opt,
                                   Workspace& local) {
  using Acc = accum_t<T>;
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  const TokenReader<Policy, T> rd{p, d};
  const Index C = opt.chunk_size, K = d.K, V = d.V;
  const Acc scale = Acc(d.scale);
  // Chunks of every (sequence, value head), in sequence order per pair (no state
  // pools here, so every pair has its chunks); the reverse pass runs over
  // value-column slices, as the forward's state pass (ChunkPlan).
  const Index pairs = d.N * d.Hv;
  const ChunkPlan plan(d, C, ex.concurrency());
  const auto& chunks = plan.chunks;
  const auto& first_chunk = plan.first;
  const Index nchunks = plan.count(), slices = plan.slices, width = plan.width;
  // One scratch per slot of the widest of the three phases.
  auto& scratch = scratch_pool<ChunkBackwardScratch<Acc>>(opt, local, slot_count(ex, std::max(nchunks, pairs * slices)), C, K, V);
  auto& maps = scratch_pool<ChunkDStateMap<Acc>>(opt, local, std::max<Index>(nchunks, 1), C, K, V);
  // Load chunk `ch` (its c-th chunk in the sequence) and its dO, recompute its factors.
  auto recompute = [&](ChunkBackwardScratch<Acc>& ws, const ChunkRef& ch, Index c) {
    const auto span = d.seq(ch.n);
    ws.S = Eigen::Map<const RowMat<Acc>>(ctx.state(ch.n, c, ch.hv), K, V);
    ws.load(rd, span.batch, ch.t0, ch.len, ch.hv);
    copy_rows(up.d_o, span.batch, ch.t0, ch.len, ch.hv, V, ws.DOR.data(), ws.DOR.cols());
    chunk_recompute(ws, ch.len, scale);
  };

  // (1) the maps, every chunk in parallel
  parallel_for(ex, nchunks, [&](Index i, int slot) {
    const auto& ch = chunks[size_t(i)];
    auto& ws = scratch[size_t(slot)];
    const Index n = ch.len, c = i - first_chunk[size_t(ch.n * d.Hv + ch.hv)];
    recompute(ws, ch, c);
    auto& m = maps[size_t(i)];
    const auto Y = ws.YU.topLeftCorner(n, K);
    auto dO = ws.DOR.topRows(n);
    auto AdO = ws.DOR.middleRows(n, n);  // Aqkᵀ dO
    auto Qg = ws.QY.topRows(n);
    AdO.noalias() = ws.Aqk.topLeftCorner(n, n).template triangularView<Eigen::Lower>().transpose() * dO;
    Qg = ws.Qs.topRows(n).cwiseProduct(ws.dc.Gam.topRows(n));
    m.b.noalias() = Qg.transpose() * dO;
    m.b.noalias() -= Y.transpose() * AdO;
    m.M.noalias() = -(Y.transpose() * ws.Kt.topRows(n));
    m.M.diagonal() += ws.dc.Gam.row(n - 1).transpose();
  });

  // (2) the reverse pass, over (pair, value-column slice)
  parallel_for(ex, pairs * slices, [&](Index item, int slot) {
    const Index pair = item / slices, j0 = (item % slices) * width, w = std::min(width, V - j0);
    if (w <= 0) return;
    const Index n = pair / d.Hv, hv = pair % d.Hv;
    auto& ws = scratch[size_t(slot)];
    auto X = ws.dS.middleCols(j0, w);    // dS at the end of the current chunk
    auto Xn = ws.dS0.middleCols(j0, w);  // dS at its start
    for (Index i = 0; i < K; ++i)
      for (Index j = 0; j < w; ++j) X(i, j) = up.d_final_state.given() ? up.d_final_state(n, hv, i, j0 + j) : Acc(0);
    for (Index i = first_chunk[size_t(pair + 1)] - 1; i >= first_chunk[size_t(pair)]; --i) {
      auto& m = maps[size_t(i)];
      auto b = m.b.middleCols(j0, w);
      Xn.noalias() = m.M * X;
      Xn += b;
      b = X;  // b now holds dS_end of chunk i
      X = Xn;
    }
    if (gr.d_initial_state.given())
      for (Index i = 0; i < K; ++i)
        for (Index j = 0; j < w; ++j) gr.d_initial_state(n, hv, i, j0 + j) = X(i, j);
  });

  // (3) the chunk backward of every (sequence, key head, chunk); the value heads of a
  //     group add into the same dq, dk rows, so one item walks them all.
  std::vector<ChunkRef> items;  // hv holds the key head here
  for (Index n = 0; n < d.N; ++n)
    for (Index hk = 0; hk < d.Hk; ++hk) {
      const auto span = d.seq(n);
      for (Index t0 = span.begin; t0 < span.end; t0 += C) items.push_back({n, hk, t0, std::min(C, span.end - t0)});
    }
  parallel_for(ex, Index(items.size()), [&](Index i, int slot) {
    const auto& it = items[size_t(i)];
    auto& ws = scratch[size_t(slot)];
    const Index c = (it.t0 - d.seq(it.n).begin) / C, b = d.seq(it.n).batch;
    for (Index hv = it.hv * d.group; hv < (it.hv + 1) * d.group; ++hv) {
      const Index ci = first_chunk[size_t(it.n * d.Hv + hv)] + c;
      const auto& ch = chunks[size_t(ci)];
      recompute(ws, ch, c);
      ws.dS = maps[size_t(ci)].b;
      chunk_backward_step(ws, ch.len, scale);
      for (Index r = 0; r < ch.len; ++r) {
        add_token_grads<Policy>(gr, d, b, ch.t0 + r, hv, ws.dQs.row(r).data(), ws.dK.row(r).data(),
                                ws.dV.row(r).data(), ws.dG.row(r).data(), ws.dBk.row(r).data(), ws.dW.row(r).data());
      }
    }
  });
}


}  // namespace detail

/// Chunkwise forward that also saves what `chunk_backward` needs (the chunk-start
/// states, see ChunkContext for the memory). Same inputs, outputs and checks as
/// chunk_forward; `ctx` is overwritten (and left untouched on error). State pools
/// (`state_indices`) are not supported.
template <class Policy, class T, class TO>
Status chunk_forward_save(const Problem<T>& p, const Outputs<TO, accum_t<T>>& out, ChunkContext<accum_t<T>>& ctx,
                          const Options& opt = {}) {
  using Acc = accum_t<T>;
  Dims d;
  GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, opt, /*chunked=*/true, d));
  GDR2_RETURN_IF_ERROR(validate_outputs(out, d));
  if (d.state_indices)
    return {Code::unsupported, "chunk_forward_save does not take state_indices (a state pool): it is for training"};
  ctx.chunk_size = opt.chunk_size;
  ctx.policy = Policy::name();
  ctx.dims = d;
  ctx.dims.cu_seqlens = SeqOffsets();  // the caller's buffer may not outlive the context
  ctx.seq_offsets.clear();
  if (d.cu_seqlens.given())
    for (Index i = 0; i <= d.N; ++i) ctx.seq_offsets.push_back(d.cu_seqlens[i]);
  ctx.first_chunk = detail::chunk_offsets(d, opt.chunk_size);
  ctx.states.resize(size_t(ctx.first_chunk.back() * d.Hv * d.K * d.V));  // every element written below

  // Without state_indices every pair has a state slot, so every chunk start is saved.
  detail::chunk_forward_pairs<Policy>(p, out, d, opt, [&](Index n, Index c, Index hv, const detail::RowMat<Acc>& S) {
    Eigen::Map<detail::RowMat<Acc>>(ctx.state(n, c, hv), d.K, d.V) = S.leftCols(d.V);
  });
  return {};
}

/// Gate-aware chunkwise backward (SPEC §4, safe for any log-decays ≤ 0) from a
/// context saved by `chunk_forward_save` on the same inputs with the same options.
/// Contract as recurrent_backward: dL/do (and optionally dL/dS_T) in `up`; every
/// gradient view given in `gr` is overwritten in the accumulation type, reduced by
/// the policy (dβ = Σdb + Σdw, scalar dg = Σdg, grouped heads summed), dS_0 too,
/// and the gradients of the fused inputs (gate_x, A_log, dt_bias; raw q, k).
/// A context saved for another geometry, policy or chunk size is refused.
///
/// Schedule: (sequence, key head) items in parallel, each walking its chunks backwards;
/// with too few items to fill the executor (prefer_chunk_parallel_backward) the work
/// is split over chunks instead (see chunk_backward_chunk_parallel: about twice the
/// work, K·(K+V) more accumulators per chunk and value head in the workspace).
template <class Policy, class T>
Status chunk_backward(const Problem<T>& p, const ChunkContext<accum_t<T>>& ctx, const GradOutputs<T>& up,
                      const Gradients<accum_t<T>>& gr, const Options& opt = {}) {
  using Acc = accum_t<T>;
  Dims d;
  GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, opt, /*chunked=*/true, d));
  GDR2_RETURN_IF_ERROR(validate_gradients<Policy>(up, gr, p, opt, d));
  GDR2_RETURN_IF_ERROR(detail::check_context<Policy>(ctx, d, opt));
  const detail::BackwardIO<T> io(p, gr);
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  Workspace local;
  if (detail::prefer_chunk_parallel_backward(detail::backward_items(d), ex.concurrency())) {
    detail::chunk_backward_chunk_parallel<Policy>(p, ctx, up, io.core, d, opt, local);
    io.finish(p, gr, d, ex);
    return {};
  }
  auto& scratch = detail::scratch_pool<detail::ChunkBackwardScratch<Acc>>(opt, local, detail::slot_count(ex, detail::backward_items(d)),
                                                                          opt.chunk_size, d.K, d.V);
  detail::ContextStarts<Acc> starts{ctx};
  detail::chunk_backward_run<Policy>(p, up, io.core, d, opt, starts, scratch);
  io.finish(p, gr, d, ex);
  return {};
}

/// Gate-aware chunkwise backward without a saved context: a forward sweep per
/// (sequence, value head) first recomputes the chunk-start states (holding
/// ⌈L/C⌉ states of K×V per work item in flight), then the backward runs as above.
template <class Policy, class T>
Status chunk_backward(const Problem<T>& p, const GradOutputs<T>& up, const Gradients<accum_t<T>>& gr,
                      const Options& opt = {}) {
  using Acc = accum_t<T>;
  Dims d;
  GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, opt, /*chunked=*/true, d));
  GDR2_RETURN_IF_ERROR(validate_gradients<Policy>(up, gr, p, opt, d));
  const detail::BackwardIO<T> io(p, gr);
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  Workspace local;
  auto& scratch = detail::scratch_pool<detail::ChunkBackwardScratch<Acc>>(opt, local, detail::slot_count(ex, detail::backward_items(d)),
                                                                          opt.chunk_size, d.K, d.V);
  detail::SweepStarts<Acc> starts{p.initial_state, d, opt.chunk_size, Acc(d.scale)};
  detail::chunk_backward_run<Policy>(p, up, io.core, d, opt, starts, scratch);
  io.finish(p, gr, d, ex);
  return {};
}

}  // namespace gdr2
