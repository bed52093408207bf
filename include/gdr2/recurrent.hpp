// gdr2 — the recurrent (token-by-token) engine: prefill and in-place decode.
//
// Implements SPEC §1 literally, one token at a time, with the state S (K×V) in
// the accumulation type. With double inputs this is the fp64 reference every
// other engine is tested against. Work is split over (sequence, value head).
#pragma once

#include "problem.hpp"

#include <Eigen/Core>

namespace gdr2 {
namespace detail {

template <class Acc>
using RowMat = Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Acc>
using Vec = Eigen::Matrix<Acc, Eigen::Dynamic, 1>;

/// Reads one token of one (sequence, value head) into full Acc vectors, with the
/// gates broadcast by the policy.
template <class Policy, class T>
struct TokenReader {
  using Acc = accum_t<T>;
  const Problem<T>& p;
  const Dims& d;

  void qk(Index b, Index t, Index hv, Acc* q, Acc* k) const {
    const Index hk = d.key_head(hv);
    const T* qs = p.q.row(b, t, hk);
    const T* ks = p.k.row(b, t, hk);
    for (Index i = 0; i < d.K; ++i) {
      q[i] = convert<Acc>(qs[i]);
      k[i] = convert<Acc>(ks[i]);
    }
  }
  void v(Index b, Index t, Index hv, Acc* v) const {
    const T* vs = p.v.row(b, t, hv);
    for (Index j = 0; j < d.V; ++j) v[j] = convert<Acc>(vs[j]);
  }
  void gates(Index b, Index t, Index hv, Acc* g, Acc* eb, Acc* wv) const {
    Policy::load_decay(p, b, t, hv, d.Hv, d.K, g);
    Policy::load_gates(p, b, t, hv, d.Hv, d.K, d.V, eb, wv);
  }
};

/// S ← state slot (zeros when none is given).
template <class Acc>
void load_state(const View<const Acc>& src, Index slot, Index hv, RowMat<Acc>& S) {
  if (!src.given()) {
    S.setZero();
    return;
  }
  for (Index i = 0; i < S.rows(); ++i)
    for (Index j = 0; j < S.cols(); ++j) S(i, j) = src(slot, hv, i, j);
}

template <class Acc>
void store_state(const View<Acc>& dst, Index slot, Index hv, const RowMat<Acc>& S) {
  if (!dst.given()) return;
  for (Index i = 0; i < S.rows(); ++i)
    for (Index j = 0; j < S.cols(); ++j) dst(slot, hv, i, j) = S(i, j);
}

/// Per-slot scratch of the recurrent engine.
template <class Acc>
struct RecurrentScratch {
  RowMat<Acc> S;
  Vec<Acc> q, k, v, g, eb, wv, r, o;
  RecurrentScratch(Index K, Index V) : S(K, V), q(K), k(K), v(V), g(K), eb(K), wv(V), r(V), o(V) {}
};

/// One token of SPEC §1 on S in place; writes o = Sᵀ(scale·q) into ws.o.
/// On entry ws.q, k, v, g, eb, wv hold the token; ws.r is overwritten.
template <class Acc>
void recurrent_step(RecurrentScratch<Acc>& ws, Acc scale) {
  auto& S = ws.S;
  S.array().colwise() *= ws.g.array().exp();                 // S̄ = Diag(exp g) S
  ws.r.noalias() = S.transpose() * ws.eb.cwiseProduct(ws.k);  // r = S̄ᵀ (b ⊙ k)
  ws.r = ws.wv.cwiseProduct(ws.v) - ws.r;                    // δ = w ⊙ v − r
  S.noalias() += ws.k * ws.r.transpose();                    // S = S̄ + k δᵀ
  ws.o.noalias() = S.transpose() * (scale * ws.q);           // o = Sᵀ (scale q)
}

}  // namespace detail

/// Recurrent forward (prefill): o and optionally the final state, for every
/// sequence and value head. With `state_indices` and the same pool given as
/// initial and final state this is the in-place decode of a batch of requests.
///
/// Shapes per problem.hpp; o is written in TO (e.g. bf16, or fp32 to skip the
/// output cast). Returns a failed Status, with no output touched, on misuse.
template <class Policy, class T, class TO>
Status recurrent_forward(const Problem<T>& p, const Outputs<TO, accum_t<T>>& out, const Options& opt = {}) {
  using Acc = accum_t<T>;
  Dims d;
  GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, opt, /*chunked=*/false, d));
  GDR2_RETURN_IF_ERROR(validate_outputs(out, d));
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  const detail::TokenReader<Policy, T> rd{p, d};
  const Acc scale = Acc(d.scale);

  std::vector<detail::RecurrentScratch<Acc>> scratch;
  const int slots = int(std::min<Index>(ex.concurrency(), std::max<Index>(1, d.N * d.Hv)));
  scratch.reserve(size_t(slots));
  for (int s = 0; s < slots; ++s) scratch.emplace_back(d.K, d.V);

  parallel_for(ex, d.N * d.Hv, [&](Index item, int slot) {
    const Index n = item / d.Hv, hv = item % d.Hv;
    const Index state_slot = d.slot(n);
    if (state_slot < 0) return;
    auto& ws = scratch[size_t(slot)];
    const auto span = d.seq(n);
    detail::load_state(p.initial_state, state_slot, hv, ws.S);
    for (Index t = span.begin; t < span.end; ++t) {
      rd.qk(span.batch, t, hv, ws.q.data(), ws.k.data());
      rd.v(span.batch, t, hv, ws.v.data());
      rd.gates(span.batch, t, hv, ws.g.data(), ws.eb.data(), ws.wv.data());
      detail::recurrent_step(ws, scale);
      TO* o = out.o.row(span.batch, t, hv);
      for (Index j = 0; j < d.V; ++j) o[j] = convert<TO>(ws.o[j]);
    }
    detail::store_state(out.final_state, state_slot, hv, ws.S);
  });
  return {};
}

/// One decode step for a batch of requests with states in a pool, updated in place:
/// q, k, v, gates are [N, 1, H, D]; `pool` is [P, Hv, K, V]; `slots` [N] picks each
/// request's state (−1 skips it). The problem's own state fields are ignored.
template <class Policy, class T, class TO>
Status decode_step(Problem<T> p, const View<accum_t<T>>& pool, const std::int32_t* slots, const View<TO>& o,
                   const Options& opt = {}) {
  if (p.q.given() && p.q.shape[1] != 1)
    return {Code::invalid_argument, "decode_step expects one token per request (T = 1), got T = " + std::to_string(p.q.shape[1])};
  if (p.cu_seqlens.given()) return {Code::invalid_argument, "decode_step takes [N, 1, H, D] inputs, not cu_seqlens"};
  if (!pool.given()) return {Code::invalid_argument, "decode_step needs a state pool"};
  p.initial_state = pool;
  p.state_indices = slots;
  return recurrent_forward<Policy>(p, Outputs<TO, accum_t<T>>{o, pool}, opt);
}

}  // namespace gdr2
