// gdr2 — backpropagation through time for the recurrent engine (SPEC §2).
//
// Gradients of L(o, S_T) with respect to every input, given dL/do and optionally
// dL/dS_T. The states S_t are needed in reverse order; instead of keeping all T
// of them, a forward sweep stores a checkpoint every C tokens and each segment is
// recomputed from its checkpoint when the backward sweep reaches it, so one
// (sequence, value head) in flight holds (⌈L/C⌉ + C + 1) states of K×V. C is
// `Options::chunk_size` (any C ≥ 1 here; C ≈ √L minimises the memory).
//
// Work items are (sequence, key head): the value heads of one group, which add
// into the same dq / dk rows (and gate rows when gates are per key head), run in
// one item, so no two items ever write the same gradient element.
#pragma once

#include "recurrent.hpp"

#include <vector>

namespace gdr2 {
namespace detail {

/// dx ← gradient of the raw x from the gradient dx̂ of x̂ = x / n, n = sqrt(Σx² + eps):
/// dx = (dx̂ − x̂ (x̂ · dx̂)) / n.
template <class X, class Acc>
void l2_normalize_backward(const X* x, Index len, Acc eps, Acc* dx) {
  Acc ss = 0;
  for (Index i = 0; i < len; ++i) ss += convert<Acc>(x[i]) * convert<Acc>(x[i]);
  const Acc inv = Acc(1) / std::sqrt(ss + eps);
  Acc dot = 0;
  for (Index i = 0; i < len; ++i) dot += convert<Acc>(x[i]) * inv * dx[i];
  for (Index i = 0; i < len; ++i) dx[i] = (dx[i] - convert<Acc>(x[i]) * inv * dot) * inv;
}

/// What every backward call does around its engine, for the fused inputs:
///  - (no zeroing: engines write every gradient row, add_token_grads' first_writes rule;
///    d_initial_state and the fused-gate gradients are written whole)
///  - with the fused decay gate, routes the engine's dL/dg into a temporary of the
///    shape of gate_x (`core.dg`), turned by `finish` into dL/dgate_x, dL/dA_log,
///    dL/ddt_bias (fused_decay_backward, in parallel over gate heads);
///  - with in-kernel L2 normalisation, the engine writes dL/dq̂, dL/dk̂ and `finish`
///    turns them, in place, into the gradients of the raw q, k.
template <class T>
struct BackwardIO {
  using Acc = accum_t<T>;
  Gradients<Acc> core;   ///< what the engine writes
  Tensor<Acc> dg_fused;  ///< dL/dg in the stored decay shape, when the fused gate needs it

  BackwardIO(const Problem<T>& p, const Gradients<Acc>& gr) : core(gr) {
    if (p.gate_x.given() && (gr.d_gate_x.given() || gr.dA_log.given() || gr.ddt_bias.given())) {
      const auto& s = p.gate_x.shape;
      dg_fused = Tensor<Acc>(s[0], s[1], s[2], s[3]);
      core.dg = dg_fused.view();
    }
  }

  void finish(const Problem<T>& p, const Gradients<Acc>& gr, const Dims& d, const Executor& ex) const {
    if (!dg_fused.empty()) {
      parallel_for(ex, p.gate_x.shape[2], [&](Index h, int) { fused_decay_backward(p, dg_fused.view(), gr, h); });
    }
    if (p.l2_norm_qk && (gr.dq.given() || gr.dk.given())) {
      const Acc eps = Acc(p.l2_norm_eps);
      parallel_for(ex, d.B * d.T, [&](Index item, int) {
        const Index b = item / d.T, t = item % d.T;
        for (Index h = 0; h < d.Hk; ++h) {
          if (gr.dq.given()) l2_normalize_backward(p.q.row(b, t, h), d.K, eps, gr.dq.row(b, t, h));
          if (gr.dk.given()) l2_normalize_backward(p.k.row(b, t, h), d.K, eps, gr.dk.row(b, t, h));
        }
      });
    }
  }
};

/// Put one token's full-vector gradients (for value head hv) into `gr`: dq and dk
/// into the key head hv / G, dv into the value head, the gates through the policy
/// (tied β: Σdb + Σdw; scalar decay: Σdg; gate heads per key or value head). The
/// first value head of a row writes it, the others add (Accumulate::first_writes):
/// callers walk the value heads of a key head in increasing order in one work item.
template <class Policy, class Acc>
void add_token_grads(const Gradients<Acc>& gr, const Dims& d, Index b, Index t, Index hv, const Acc* dq,
                     const Acc* dk, const Acc* dv, const Acc* dg, const Acc* db, const Acc* dw) {
  constexpr Accumulate mode = Accumulate::first_writes;
  const Index hk = d.key_head(hv);
  if (gr.dq.given()) put_row(gr.dq.row(b, t, hk), dq, d.K, mode, hv, d.Hk, d.Hv);
  if (gr.dk.given()) put_row(gr.dk.row(b, t, hk), dk, d.K, mode, hv, d.Hk, d.Hv);
  if (gr.dv.given()) put_row(gr.dv.row(b, t, hv), dv, d.V, mode, hv, d.Hv, d.Hv);
  Policy::add_decay_grad(gr, b, t, hv, d.Hv, d.K, dg, mode);
  Policy::add_gate_grads(gr, b, t, hv, d.Hv, d.K, d.V, db, dw, mode);
}

/// dS ← dL/dS_T of (sequence n, value head hv), or zeros.
template <class Acc>
void load_final_grad(const View<const Acc>& d_final, Index n, Index hv, RowMat<Acc>& dS) {
  load_state(d_final, n, hv, dS);
}

/// Per-slot scratch of the BPTT.
template <class Acc>
struct BpttScratch {
  RecurrentScratch<Acc> fw;           // forward step: S and the token vectors
  std::vector<RowMat<Acc>> ckpt;      // S at the start of every segment
  std::vector<RowMat<Acc>> seg;       // S before each token of a segment, then after its last
  RowMat<Acc> dS, Sbar;
  Vec<Acc> eg, e, delta, d_o, ddelta, dq, dk, dv, dg, db, dw;
  BpttScratch(Index K, Index V, Index C)
      : fw(K, V), seg(size_t(C + 1), RowMat<Acc>(K, V)), dS(K, V), Sbar(K, V), eg(K), e(K), delta(V), d_o(V),
        ddelta(V), dq(K), dk(K), dv(V), dg(K), db(K), dw(V) {}
  /// Bytes held (K×V states: checkpoints, segment, dS, S̄; a few vectors).
  std::size_t bytes() const {
    const Index K = dS.rows(), V = dS.cols();
    return sizeof(Acc) * std::size_t((Index(ckpt.size() + seg.size()) + 3) * K * V + 8 * (K + V));
  }
};

/// Load token t of value head hv into ws.fw (q, k, v and the broadcast gates).
template <class Policy, class T, class Acc>
void load_token(const TokenReader<Policy, T>& rd, Index b, Index t, Index hv, RecurrentScratch<Acc>& fw) {
  rd.token(b, t, hv, fw.q.data(), fw.k.data(), fw.v.data(), fw.g.data(), fw.eb.data(), fw.wv.data());
}

/// One token of SPEC §2. On entry ws.fw holds the token, Sprev = S_{t−1},
/// Snext = S_t, ws.dS = dL/dS_t, ws.d_o = dL/do_t; on exit ws.dS = dL/dS_{t−1} and
/// ws.dq … ws.dw hold the token's full-vector gradients.
template <class Acc>
void bptt_step(BpttScratch<Acc>& ws, const RowMat<Acc>& Sprev, const RowMat<Acc>& Snext, Acc scale) {
  auto& f = ws.fw;
  ws.eg = f.g.array().exp();
  ws.Sbar = Sprev;
  ws.Sbar.array().colwise() *= ws.eg.array();                 // S̄ = Diag(exp g) S_{t−1}
  ws.e = f.eb.cwiseProduct(f.k);                                // e = b ⊙ k
  ws.delta.noalias() = f.wv.cwiseProduct(f.v);                  // δ = w ⊙ v − S̄ᵀ e
  ws.delta.noalias() -= ws.Sbar.transpose() * ws.e;
  // o = Sᵀ (scale q): dS += scale q doᵀ, dq = scale S do.
  ws.dS.noalias() += (scale * f.q) * ws.d_o.transpose();
  ws.dq.noalias() = scale * (Snext * ws.d_o);
  // S = S̄ + k δᵀ: dk = dS δ, dδ = dSᵀ k.
  ws.dk.noalias() = ws.dS * ws.delta;
  ws.ddelta.noalias() = ws.dS.transpose() * f.k;
  ws.dw = ws.ddelta.cwiseProduct(f.v);                          // δ = w ⊙ v − r
  ws.dv = ws.ddelta.cwiseProduct(f.wv);
  ws.dS.noalias() -= ws.e * ws.ddelta.transpose();              // dS̄ = dS + e drᵀ, dr = −dδ
  ws.e.noalias() = -(ws.Sbar * ws.ddelta);                      // de = S̄ dr (e is free now)
  ws.db = ws.e.cwiseProduct(f.k);
  ws.dk += ws.e.cwiseProduct(f.eb);
  ws.dg = ws.dS.cwiseProduct(ws.Sbar).rowwise().sum();         // dg = rowsum(dS̄ ⊙ S̄)
  ws.dS.array().colwise() *= ws.eg.array();                     // dS_{t−1} = Diag(exp g) dS̄
}

/// Work items of a backward call: (sequence n, key head hk) for item = n·Hk + hk.
inline Index backward_items(const Dims& d) { return d.N * d.Hk; }

}  // namespace detail

/// Backward of the recurrence (BPTT, SPEC §2) for gate policy `Policy`.
///
/// Given the problem (the same inputs as the forward), dL/do (`up.d_o`, [B,T,Hv,V])
/// and optionally dL/dS_T (`up.d_final_state`, [N,Hv,K,V]), writes — overwrites —
/// every gradient view given in `gr`, in the accumulation type and with the shape
/// of its input: dq, dk [B,T,Hk,K] (summed over the value heads of a group), dv,
/// dg (summed over K for a scalar decay), db, dw or dβ (Σdb + Σdw), and dS_0
/// ([N,Hv,K,V], also when no initial state was given); with the fused gate
/// (Problem::gate_x) d_gate_x, dA_log, ddt_bias; with Problem::l2_norm_qk, dq and dk
/// are those of the raw q, k.
///
/// States are checkpointed every `opt.chunk_size` tokens (any value ≥ 1) and
/// recomputed segment by segment: (⌈L/C⌉ + C + 1)·K·V accumulator elements per
/// executor slot, kept in `opt.workspace` when one is given. State pools
/// (`state_indices`) are not supported. Returns a failed Status, with no gradient
/// touched, on misuse.
template <class Policy, class T>
Status recurrent_backward(const Problem<T>& p, const GradOutputs<T>& up, const Gradients<accum_t<T>>& gr,
                          const Options& opt = {}) {
  using Acc = accum_t<T>;
  Dims d;
  GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, opt, /*chunked=*/false, d));
  GDR2_RETURN_IF_ERROR(validate_gradients<Policy>(up, gr, p, opt, d));
  if (opt.chunk_size < 1) {
    return {Code::invalid_argument,
            "chunk_size (the checkpoint interval of the recurrent backward) must be >= 1, got " +
                std::to_string(opt.chunk_size)};
  }
  const detail::BackwardIO<T> io(p, gr);
  const Executor& ex = opt.executor ? *opt.executor : default_executor();
  const detail::TokenReader<Policy, T> rd{p, d};
  const Index C = opt.chunk_size;
  const Acc scale = Acc(d.scale);

  Workspace local;
  auto& scratch =
      detail::scratch_pool<detail::BpttScratch<Acc>>(opt, local, detail::slot_count(ex, detail::backward_items(d)), d.K, d.V, C);

  parallel_for(ex, detail::backward_items(d), [&](Index item, int slot) {
    const Index n = item / d.Hk, hk = item % d.Hk;
    auto& ws = scratch[size_t(slot)];
    auto& f = ws.fw;
    const auto span = d.seq(n);
    const Index L = span.end - span.begin;
    const Index segments = (L + C - 1) / C;
    while (Index(ws.ckpt.size()) < segments) ws.ckpt.emplace_back(d.K, d.V);
    for (Index hv = hk * d.group; hv < (hk + 1) * d.group; ++hv) {
      // Forward sweep: a checkpoint at the start of every segment.
      detail::load_state(p.initial_state, n, hv, f.S);
      for (Index s = 0; s < segments; ++s) {
        ws.ckpt[size_t(s)] = f.S;
        if (s + 1 == segments) break;  // the last segment is recomputed below anyway
        for (Index t = span.begin + s * C; t < span.begin + (s + 1) * C; ++t) {
          detail::load_token(rd, span.batch, t, hv, f);
          detail::recurrent_step(f, scale);
        }
      }
      // Backward sweep, one segment at a time from the end.
      detail::load_final_grad(up.d_final_state, n, hv, ws.dS);
      for (Index s = segments - 1; s >= 0; --s) {
        const Index t0 = span.begin + s * C, len = std::min(C, span.end - t0);
        f.S = ws.ckpt[size_t(s)];
        ws.seg[0] = f.S;
        for (Index j = 0; j < len; ++j) {
          detail::load_token(rd, span.batch, t0 + j, hv, f);
          detail::recurrent_step(f, scale);
          ws.seg[size_t(j + 1)] = f.S;
        }
        for (Index j = len - 1; j >= 0; --j) {
          const Index t = t0 + j;
          detail::load_token(rd, span.batch, t, hv, f);
          copy_rows(up.d_o, span.batch, t, 1, hv, d.V, ws.d_o.data(), d.V);
          detail::bptt_step(ws, ws.seg[size_t(j)], ws.seg[size_t(j + 1)], scale);
          detail::add_token_grads<Policy>(io.core, d, span.batch, t, hv, ws.dq.data(), ws.dk.data(), ws.dv.data(),
                                          ws.dg.data(), ws.db.data(), ws.dw.data());
        }
      }
      detail::store_state(gr.d_initial_state, n, hv, ws.dS);
    }
  });
  io.finish(p, gr, d, ex);
  return {};
}

}  // namespace gdr2
