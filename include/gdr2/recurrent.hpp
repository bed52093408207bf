// gdr2 — the recurrent (token-by-token) engine: prefill and in-place decode.
//
// Implements SPEC §1 literally, one token at a time, with the state S (K×V) in
// the accumulation type. With double inputs this is the fp64 reference every
// other engine is tested against. Work is split over (sequence, value head).
#pragma once

#include "problem.hpp"

namespace gdr2 {
namespace detail {

template <class Acc>
using RowMat = Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class Acc>
using Vec = Eigen::Matrix<Acc, Eigen::Dynamic, 1>;

/// x ← x / sqrt(Σ x² + eps), the in-kernel L2 normalisation of q and k.
template <class Acc>
void l2_normalize(Acc* x, Index n, Acc eps) {
  Acc ss = 0;
  for (Index i = 0; i < n; ++i) ss += x[i] * x[i];
  const Acc inv = Acc(1) / std::sqrt(ss + eps);
  for (Index i = 0; i < n; ++i) x[i] *= inv;
}

/// Reads tokens of one (sequence, value head) into full Acc vectors (rows of
/// row-major matrices for a block of tokens), with the gates broadcast by the policy.
template <class Policy, class T>
struct TokenReader {
  using Acc = accum_t<T>;
  const Problem<T>& p;
  const Dims& d;

  /// Tokens [t0, t0+n) into row-major q, k (leading dimension ldk), v (ldv), g, eb
  /// (ldk) and wv (ldv).
  void rows(Index b, Index t0, Index n, Index hv, Acc* q, Acc* k, Acc* v, Acc* g, Acc* eb, Acc* wv, Index ldk,
            Index ldv) const {
    const Index hk = d.key_head(hv);
    copy_rows(p.q, b, t0, n, hk, d.K, q, ldk);
    copy_rows(p.k, b, t0, n, hk, d.K, k, ldk);
    if (p.l2_norm_qk) {  // in-kernel L2 normalisation (Problem::l2_norm_qk)
      for (Index r = 0; r < n; ++r) {
        l2_normalize(q + r * ldk, d.K, Acc(p.l2_norm_eps));
        l2_normalize(k + r * ldk, d.K, Acc(p.l2_norm_eps));
      }
    }
    copy_rows(p.v, b, t0, n, hv, d.V, v, ldv);
    Policy::load_decay_rows(p, b, t0, n, hv, d.Hv, d.K, g, ldk);
    Policy::load_gate_rows(p, b, t0, n, hv, d.Hv, d.K, d.V, eb, ldk, wv, ldv);
  }
  /// One token t (rows() for one row).
  void token(Index b, Index t, Index hv, Acc* q, Acc* k, Acc* v, Acc* g, Acc* eb, Acc* wv) const {
    rows(b, t, 1, hv, q, k, v, g, eb, wv, d.K, d.V);
  }
};

/// S ← state slot (zeros when none is given).
template <class Acc, class M>
void load_state(const View<const Acc>& src, Index slot, Index hv, M&& S) {
  if (!src.given()) {
    S.setZero();
    return;
  }
  for (Index i = 0; i < S.rows(); ++i)
    for (Index j = 0; j < S.cols(); ++j) S(i, j) = src(slot, hv, i, j);
}

template <class Acc, class M>
void store_state(const View<Acc>& dst, Index slot, Index hv, const M& S) {
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
  std::size_t bytes() const { return sizeof(Acc) * std::size_t(S.size() + 5 * q.size() + 4 * v.size()); }
};

/// The per-slot scratch pool of a call: from the caller's Workspace when given,
/// else from `local` (which lives for the call).
template <class S, class... Dims>
std::vector<S>& scratch_pool(const Options& opt, Workspace& local, Index count, Dims... dims) {
  return (opt.workspace ? *opt.workspace : local).template pool<S>(count, dims...);
}

/// Number of slots (concurrent tasks) a call over `items` work items uses.
inline int slot_count(const Executor& ex, Index items) {
  return int(std::min<Index>(ex.concurrency(), std::max<Index>(1, items)));
}

/// One token of SPEC §1 on a row-major K×V state S (row stride ldS) in place, in two
/// streaming passes over S:
///   pass 1  r = Σ_i (b_i k_i exp g_i) S[i,:]            (= S̄ᵀ e, S untouched)
///   pass 2  S[i,:] ← exp(g_i) S[i,:] + k_i δ,  o += scale·q_i S[i,:]   with δ = w ⊙ v − r
/// On return g[0..K) holds exp(g) and r[0..V) holds δ; o[0..V) gets Sᵀ(scale·q).
template <class Acc>
void fused_recurrent_step(Acc* S, Index ldS, Index K, Index V, const Acc* q, const Acc* k, const Acc* v, Acc* g,
                          const Acc* eb, const Acc* wv, Acc scale, Acc* r, Acc* o) {
  using Arr = Eigen::Array<Acc, Eigen::Dynamic, 1>;
  using ArrMap = Eigen::Map<Arr>;
  using CArrMap = Eigen::Map<const Arr>;
  ArrMap rr(r, V), oo(o, V);
  rr.setZero();
  for (Index i = 0; i < K; ++i) {
    g[i] = std::exp(g[i]);
    const Acc c = eb[i] * k[i] * g[i];
    if (c != Acc(0)) rr += c * CArrMap(S + i * ldS, V);
  }
  rr = CArrMap(wv, V) * CArrMap(v, V) - rr;
  oo.setZero();
  for (Index i = 0; i < K; ++i) {
    ArrMap row(S + i * ldS, V);
    row = g[i] * row + k[i] * rr;
    oo += (scale * q[i]) * row;
  }
}

/// One token of SPEC §1 on ws.S in place; writes o = Sᵀ(scale·q) into ws.o.
/// On entry ws.q, k, v, g, eb, wv hold the token; ws.g and ws.r are overwritten
/// (with exp g and δ = w ⊙ v − r).
template <class Acc>
void recurrent_step(RecurrentScratch<Acc>& ws, Acc scale) {
  fused_recurrent_step(ws.S.data(), ws.S.cols(), ws.S.rows(), ws.S.cols(), ws.q.data(), ws.k.data(), ws.v.data(),
                       ws.g.data(), ws.eb.data(), ws.wv.data(), scale, ws.r.data(), ws.o.data());
}

/// True when a state view can be updated in place as row-major K×V rows.
template <class Acc>
bool rows_contiguous(const View<Acc>& s) {
  return s.given() && s.stride[3] == 1;
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

  Workspace local;
  auto& scratch = detail::scratch_pool<detail::RecurrentScratch<Acc>>(opt, local, detail::slot_count(ex, d.N * d.Hv), d.K, d.V);

  const bool in_place = p.initial_state.given() && detail::rows_contiguous(out.final_state) &&
                        p.initial_state.data == out.final_state.data &&
                        p.initial_state.stride == out.final_state.stride;
  parallel_for(ex, d.N * d.Hv, [&](Index item, int slot) {
    const Index n = item / d.Hv, hv = item % d.Hv;
    const Index state_slot = d.slot(n);
    if (state_slot < 0) return;
    auto& ws = scratch[size_t(slot)];
    const auto span = d.seq(n);
    // Work directly on the caller's state when it is updated in place with unit-stride
    // rows (the decode case); otherwise on a private copy.
    Acc* S = ws.S.data();
    Index ldS = d.V;
    if (in_place) {
      S = &out.final_state(state_slot, hv, 0, 0);
      ldS = out.final_state.stride[2];
    } else {
      detail::load_state(p.initial_state, state_slot, hv, ws.S);
    }
    for (Index t = span.begin; t < span.end; ++t) {
      rd.token(span.batch, t, hv, ws.q.data(), ws.k.data(), ws.v.data(), ws.g.data(), ws.eb.data(), ws.wv.data());
      detail::fused_recurrent_step(S, ldS, d.K, d.V, ws.q.data(), ws.k.data(), ws.v.data(), ws.g.data(),
                                   ws.eb.data(), ws.wv.data(), scale, ws.r.data(), ws.o.data());
      TO* o = out.o.row(span.batch, t, hv);
      for (Index j = 0; j < d.V; ++j) o[j] = convert<TO>(ws.o[j]);
    }
    if (!in_place) detail::store_state(out.final_state, state_slot, hv, ws.S);
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
