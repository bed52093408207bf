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

namespace gdr2 {
namespace detail {

/// Sub-block height of the decay-weighted Gram matrices.
constexpr Index kSubBlock = 16;

/// Per-chunk decay factors shared by every decay-weighted product of one chunk.
///   G    cumulative log-decay within the chunk, G_r = Σ_{i≤r} g_i      (n×K)
///   Gam  γ_r = exp(G_r)                                                (n×K)
///   E    per-token factor exp(g_r)                                     (n×K)
///   Fin  exp(G_r − G_{a(r)}), a(r) = last row of the previous sub-block (n×K)
///        (G_{−1} = 0, so Fin = γ in the first sub-block)
///   Fout exp(G_{e(s)} − G_s), e(s) = last row of s's own sub-block     (n×K)
template <class Acc>
struct ChunkDecay {
  RowMat<Acc> G, Gam, E, Fin, Fout;
  ChunkDecay(Index C, Index K) : G(C, K), Gam(C, K), E(C, K), Fin(C, K), Fout(C, K) {}

  /// Fill G, E, Fin, Fout from log-decays g (first n rows used).
  void build(const RowMat<Acc>& g, Index n) {
    for (Index r = 0; r < n; ++r) {
      if (r == 0)
        G.row(0) = g.row(0);
      else
        G.row(r) = G.row(r - 1) + g.row(r);
    }
    Gam.topRows(n) = G.topRows(n).array().exp();
    E.topRows(n) = g.topRows(n).array().exp();
    for (Index b0 = 0; b0 < n; b0 += kSubBlock) {
      const Index b1 = std::min(n, b0 + kSubBlock);
      for (Index r = b0; r < b1; ++r) {
        if (b0 == 0)
          Fin.row(r) = Gam.row(r);
        else
          Fin.row(r) = (G.row(r) - G.row(b0 - 1)).array().exp();
        Fout.row(r) = (G.row(b1 - 1) - G.row(r)).array().exp();
      }
    }
  }
};

/// out(r, s) = Σ_d A(r,d)·B(s,d)·exp(G_r[d] − G_s[d]) for s ≤ r (s < r when `strict`),
/// zero above the diagonal; rows/cols [0, n). `tmp` is scratch of ≥ kSubBlock×K.
template <class Acc>
void decayed_gram(const RowMat<Acc>& A, const RowMat<Acc>& B, const ChunkDecay<Acc>& dc, Index n, bool strict,
                  RowMat<Acc>& out, RowMat<Acc>& AF, RowMat<Acc>& BF, Vec<Acc>& p) {
  out.topLeftCorner(n, n).setZero();
  AF.topRows(n) = A.topRows(n).cwiseProduct(dc.Fin.topRows(n));
  BF.topRows(n) = B.topRows(n).cwiseProduct(dc.Fout.topRows(n));
  for (Index i0 = 0; i0 < n; i0 += kSubBlock) {
    const Index ni = std::min(kSubBlock, n - i0);
    // Off-diagonal blocks j < i: anchor between them, D = exp(G_{i0−1} − G_{end(j)}) ≤ 1.
    for (Index j0 = 0; j0 < i0; j0 += kSubBlock) {
      const Index jend = j0 + kSubBlock - 1;
      if (jend == i0 - 1) {
        out.block(i0, j0, ni, kSubBlock).noalias() = AF.middleRows(i0, ni) * BF.middleRows(j0, kSubBlock).transpose();
      } else {
        p = (dc.G.row(i0 - 1) - dc.G.row(jend)).transpose().array().exp();
        out.block(i0, j0, ni, kSubBlock).noalias() =
            AF.middleRows(i0, ni) * (BF.middleRows(j0, kSubBlock) * p.asDiagonal()).transpose();
      }
    }
    // Diagonal block: running product of per-token decays from column s down.
    for (Index s = i0; s < i0 + ni; ++s) {
      p = B.row(s).transpose();
      if (!strict) out(s, s) = A.row(s).dot(p);
      for (Index r = s + 1; r < i0 + ni; ++r) {
        p.array() *= dc.E.row(r).transpose().array();
        out(r, s) = A.row(r).dot(p);
      }
    }
  }
}

/// Per-slot scratch of the chunk forward.
template <class Acc>
struct ChunkScratch {
  RowMat<Acc> Q, Kc, g, Bg, Vv, Wg;  // raw chunk inputs (Bg, Wg: erase / write gates)
  RowMat<Acc> Bk, Qs, T, Aqk, YU, R, O, Kt, AF, BF, S;
  ChunkDecay<Acc> dc;
  Vec<Acc> p, gammaC;
  ChunkScratch(Index C, Index K, Index V)
      : Q(C, K), Kc(C, K), g(C, K), Bg(C, K), Vv(C, V), Wg(C, V), Bk(C, K), Qs(C, K), T(C, C), Aqk(C, C),
        YU(C, K + V), R(C, V), O(C, V), Kt(C, K), AF(C, K), BF(C, K), S(K, V), dc(C, K), p(K), gammaC(K) {}

  /// Load tokens [t0, t0+n) of (batch row b, value head hv) through the policy.
  template <class Policy, class T>
  void load(const TokenReader<Policy, T>& rd, Index b, Index t0, Index n, Index hv) {
    for (Index r = 0; r < n; ++r) {
      const Index t = t0 + r;
      rd.qk(b, t, hv, Q.row(r).data(), Kc.row(r).data());
      rd.v(b, t, hv, Vv.row(r).data());
      rd.gates(b, t, hv, g.row(r).data(), Bg.row(r).data(), Wg.row(r).data());
    }
  }
};

/// One chunk of SPEC §3 on ws.S in place (S_0 → S_C); chunk outputs into ws.O.
template <class Acc>
void chunk_forward_step(ChunkScratch<Acc>& ws, Index n, Acc scale) {
  const Index K = ws.Q.cols(), V = ws.Vv.cols();
  auto& dc = ws.dc;
  dc.build(ws.g, n);
  ws.Bk.topRows(n) = ws.Bg.topRows(n).cwiseProduct(ws.Kc.topRows(n));
  ws.Qs.topRows(n) = scale * ws.Q.topRows(n);
  // T (strict) and Aqk (with diagonal): decay-weighted Grams against the keys.
  decayed_gram(ws.Bk, ws.Kc, dc, n, /*strict=*/true, ws.T, ws.AF, ws.BF, ws.p);
  decayed_gram(ws.Qs, ws.Kc, dc, n, /*strict=*/false, ws.Aqk, ws.AF, ws.BF, ws.p);
  // [Y U] = (I + T)⁻¹ [Ē Z], Ē = γ ⊙ b ⊙ k, Z = w ⊙ v (one unit-lower solve).
  auto YU = ws.YU.topRows(n);
  YU.leftCols(K) = ws.Bk.topRows(n).cwiseProduct(dc.Gam.topRows(n));
  YU.rightCols(V) = ws.Wg.topRows(n).cwiseProduct(ws.Vv.topRows(n));
  ws.T.topLeftCorner(n, n).template triangularView<Eigen::UnitLower>().solveInPlace(YU);
  // R = U − Y S_0 ; O = (Qs ⊙ γ) S_0 + Aqk R ; S_C = Diag(γ_C) S_0 + Ktailᵀ R.
  auto R = ws.R.topRows(n);
  R = YU.rightCols(V);
  R.noalias() -= YU.leftCols(K) * ws.S;
  ws.AF.topRows(n) = ws.Qs.topRows(n).cwiseProduct(dc.Gam.topRows(n));
  ws.O.topRows(n).noalias() = ws.AF.topRows(n) * ws.S;
  ws.O.topRows(n).noalias() += ws.Aqk.topLeftCorner(n, n) * R;
  for (Index r = 0; r < n; ++r)
    ws.Kt.row(r) = ws.Kc.row(r).cwiseProduct((dc.G.row(n - 1) - dc.G.row(r)).array().exp().matrix());
  ws.gammaC = dc.Gam.row(n - 1).transpose();
  ws.S.array().colwise() *= ws.gammaC.array();
  ws.S.noalias() += ws.Kt.topRows(n).transpose() * R;
}

}  // namespace detail

/// Chunkwise WY forward (SPEC §3): same contract and outputs as recurrent_forward,
/// O(T·C·(K+V) + T·K·V) work per head in dense products. Requires log-decays ≤ 0
/// (checked when opt.check_finite is set); chunk size 16, 32 or 64.
template <class Policy, class T, class TO>
Status chunk_forward(const Problem<T>& p, const Outputs<TO, accum_t<T>>& out, const Options& opt = {}) {
  using Acc = accum_t<T>;
  Dims d;
  GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, opt, /*chunked=*/true, d));
  GDR2_RETURN_IF_ERROR(validate_outputs(out, d));
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  const detail::TokenReader<Policy, T> rd{p, d};
  const Index C = opt.chunk_size;
  const Acc scale = Acc(d.scale);

  std::vector<detail::ChunkScratch<Acc>> scratch;
  const int slots = int(std::min<Index>(ex.concurrency(), std::max<Index>(1, d.N * d.Hv)));
  scratch.reserve(size_t(slots));
  for (int s = 0; s < slots; ++s) scratch.emplace_back(C, d.K, d.V);

  parallel_for(ex, d.N * d.Hv, [&](Index item, int slot) {
    const Index n = item / d.Hv, hv = item % d.Hv;
    const Index state_slot = d.slot(n);
    if (state_slot < 0) return;
    auto& ws = scratch[size_t(slot)];
    const auto span = d.seq(n);
    detail::load_state(p.initial_state, state_slot, hv, ws.S);
    for (Index t0 = span.begin; t0 < span.end; t0 += C) {
      const Index len = std::min(C, span.end - t0);
      ws.load(rd, span.batch, t0, len, hv);
      detail::chunk_forward_step(ws, len, scale);
      for (Index r = 0; r < len; ++r) {
        TO* o = out.o.row(span.batch, t0 + r, hv);
        for (Index j = 0; j < d.V; ++j) o[j] = convert<TO>(ws.O(r, j));
      }
    }
    detail::store_state(out.final_state, state_slot, hv, ws.S);
  });
  return {};
}

}  // namespace gdr2
