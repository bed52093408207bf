// gdr2 — the gate policy.
//
// This header is the only code that knows whether the decay g, the erase gate b
// and the write gate w are channel-wise vectors, per-head scalars, one tied β, or
// absent. Engines see every gate as a full vector per token (g, b ∈ R^K, w ∈ R^V):
// the policy loads ("broadcasts") the stored gates into that form and reduces the
// full-vector gradients back to the stored shape (SPEC §1, "Reductions"):
//
//   model      decay g        erase b        write w
//   GDR-2      vector [K]     vector [K]     vector [V]
//   KDA        vector [K]     β (tied)       β (tied)
//   GDN        scalar         β (tied)       β (tied)
//   DeltaNet   none (g = 0)   β (tied)       β (tied)
//
// and for tied gates dβ = Σ_i db[i] + Σ_j dw[j]; for a scalar decay dg = Σ_i dg[i].
//
// Gate tensors may have either Hk (per key head) or Hv (per value head) heads;
// value head hv reads gate head `gate_head(hv, H_gate, Hv)`.
//
// Fused decay gate (SPEC §6): when a problem gives `gate_x` instead of `g`, the
// policy computes g = −exp(A_log)·softplus(gate_x + dt_bias) on load, in the
// accumulation type, and `fused_decay_backward` turns dL/dg into dL/dgate_x,
// dL/dA_log and dL/ddt_bias.
#pragma once

#include "tensor.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace gdr2 {

/// softplus(u) = log(1 + e^u), without overflow for any u.
template <class Acc>
Acc softplus(Acc u) {
  return std::max(u, Acc(0)) + std::log1p(std::exp(-std::abs(u)));
}

/// σ(u) = 1 / (1 + e^−u), the derivative of softplus, without overflow for any u.
template <class Acc>
Acc sigmoid(Acc u) {
  if (u >= 0) return Acc(1) / (Acc(1) + std::exp(-u));
  const Acc e = std::exp(u);
  return e / (Acc(1) + e);
}

/// How the log-decay g is stored.
enum class Decay {
  channel,  ///< g: [B, T, H, K], one log-decay per key channel
  scalar,   ///< g: [B, T, H] (seen as [B, T, H, 1]), one log-decay per head
  none,     ///< no decay (g ≡ 0); g must not be given
};

/// How the erase gate b and the write gate w are stored.
enum class Gates {
  channel,  ///< b: [B, T, H, K] and w: [B, T, H, V]; `beta` must not be given
  tied,     ///< one β: [B, T, H] (seen as [B, T, H, 1]) with b = β·1, w = β·1; b, w not given
};

/// Head of a gate tensor with `h_gate` heads that value head `hv` (of `hv_count`) reads.
inline Index gate_head(Index hv, Index h_gate, Index hv_count) { return hv * h_gate / hv_count; }

/// How a gradient contribution lands in its destination row.
enum class Accumulate {
  add,          ///< always added (the destination holds a running sum)
  first_writes, ///< the first value head that reads the row (lowest hv) writes it, the rest
                ///< add: engines walk the value heads of a row in increasing order within
                ///< one work item, so no gradient needs zeroing beforehand
};

/// dst[0..n) ← (or +=) src, the first_writes rule for value head hv reading head `h` of a
/// tensor with h_count heads (of hv_count value heads).
template <class Acc>
void put_row(Acc* dst, const Acc* src, Index n, Accumulate mode, Index hv, Index h_count, Index hv_count) {
  const bool write = mode == Accumulate::first_writes && (hv == 0 || gate_head(hv - 1, h_count, hv_count) !=
                                                                         gate_head(hv, h_count, hv_count));
  if (write)
    stream_row(dst, src, n);
  else
    for (Index i = 0; i < n; ++i) dst[i] += src[i];
}

/// The gate policy: compile-time description of the decay and gate shapes, with the
/// loaders and gradient reducers every engine uses. See the table at the top.
template <Decay D, Gates W>
struct GatePolicy {
  static constexpr Decay decay = D;
  static constexpr Gates gates = W;

  /// Short model name for messages and benchmark labels.
  static constexpr const char* name() {
    if constexpr (W == Gates::channel) {
      return D == Decay::channel ? "gdr2" : D == Decay::scalar ? "gdr2-scalar-decay" : "gdr2-no-decay";
    } else {
      return D == Decay::channel ? "kda" : D == Decay::scalar ? "gdn" : "deltanet";
    }
  }

  // ---- shapes: what the problem validation asks of each gate tensor ------------
  /// Feature width of g: K (channel), 1 (scalar) or 0 (must not be given).
  static constexpr Index decay_width(Index K) { return D == Decay::channel ? K : D == Decay::scalar ? 1 : 0; }
  /// Feature width of b: K, or 0 when b must not be given (tied gates).
  static constexpr Index erase_width(Index K) { return W == Gates::channel ? K : 0; }
  /// Feature width of w: V, or 0 when w must not be given (tied gates).
  static constexpr Index write_width(Index V) { return W == Gates::channel ? V : 0; }
  /// Feature width of β: 1 for tied gates, or 0 when β must not be given.
  static constexpr Index beta_width() { return W == Gates::tied ? 1 : 0; }

  // ---- loading: stored gates → full vectors, value head hv ----------------------
  /// Rows [t0, t0+n) of the log-decay into g (n rows, leading dimension ld, K columns;
  /// zeros when there is no decay); with the fused gate,
  /// g = −exp(A_log[h])·softplus(gate_x + dt_bias[h]).
  template <class P, class Acc>
  static void load_decay_rows(const P& p, Index b, Index t0, Index n, Index hv, Index Hv, Index K, Acc* g,
                              Index ld) {
    if constexpr (D == Decay::none) {
      for (Index r = 0; r < n; ++r)
        for (Index i = 0; i < K; ++i) g[r * ld + i] = Acc(0);
    } else if (p.gate_x.given()) {
      const Index h = gate_head(hv, p.gate_x.shape[2], Hv);
      const Acc a = std::exp(convert<Acc>(p.A_log(0, 0, h, 0)));
      const Index width = decay_width(K);
      for (Index r = 0; r < n; ++r) {
        const auto* x = p.gate_x.row(b, t0 + r, h);
        Acc* gr = g + r * ld;
        for (Index i = 0; i < width; ++i) {
          const Acc bias = p.dt_bias.given() ? convert<Acc>(p.dt_bias(0, 0, h, i)) : Acc(0);
          gr[i] = -a * softplus(convert<Acc>(x[i]) + bias);
        }
        for (Index i = width; i < K; ++i) gr[i] = gr[0];  // scalar decay: broadcast
      }
    } else {
      const Index h = gate_head(hv, p.g.shape[2], Hv);
      if constexpr (D == Decay::channel) {
        copy_rows(p.g, b, t0, n, h, K, g, ld);
      } else {
        for (Index r = 0; r < n; ++r) {
          const Acc s = convert<Acc>(p.g.row(b, t0 + r, h)[0]);
          for (Index i = 0; i < K; ++i) g[r * ld + i] = s;
        }
      }
    }
  }

  /// Rows [t0, t0+n) of the erase gate b into eb (leading dimension ldb, K columns) and
  /// of the write gate w into wv (ldw, V columns).
  template <class P, class Acc>
  static void load_gate_rows(const P& p, Index b, Index t0, Index n, Index hv, Index Hv, Index K, Index V, Acc* eb,
                             Index ldb, Acc* wv, Index ldw) {
    if constexpr (W == Gates::channel) {
      copy_rows(p.b, b, t0, n, gate_head(hv, p.b.shape[2], Hv), K, eb, ldb);
      copy_rows(p.w, b, t0, n, gate_head(hv, p.w.shape[2], Hv), V, wv, ldw);
    } else {
      const Index h = gate_head(hv, p.beta.shape[2], Hv);
      for (Index r = 0; r < n; ++r) {
        const Acc beta = convert<Acc>(p.beta.row(b, t0 + r, h)[0]);
        for (Index i = 0; i < K; ++i) eb[r * ldb + i] = beta;
        for (Index j = 0; j < V; ++j) wv[r * ldw + j] = beta;
      }
    }
  }

  /// Fill g[0..K) with the log-decay of token t (load_decay_rows for one row).
  template <class P, class Acc>
  static void load_decay(const P& p, Index b, Index t, Index hv, Index Hv, Index K, Acc* g) {
    load_decay_rows(p, b, t, 1, hv, Hv, K, g, K);
  }

  /// Fill eb[0..K) with the erase gate b and wv[0..V) with the write gate w of token t.
  template <class P, class Acc>
  static void load_gates(const P& p, Index b, Index t, Index hv, Index Hv, Index K, Index V, Acc* eb, Acc* wv) {
    load_gate_rows(p, b, t, 1, hv, Hv, K, V, eb, K, wv, V);
  }

  // ---- gradients: full vectors → stored shape (grouped heads sum, see Accumulate) ----
  /// Add the full-vector decay gradient dg[0..K) of token t into grads.dg.
  template <class Grads, class Acc>
  static void add_decay_grad(const Grads& gr, Index b, Index t, Index hv, Index Hv, Index K, const Acc* dg,
                             Accumulate mode = Accumulate::add) {
    if constexpr (D != Decay::none) {
      if (!gr.dg.given()) return;
      const Index hg = gr.dg.shape[2];
      auto* dst = gr.dg.row(b, t, gate_head(hv, hg, Hv));
      if constexpr (D == Decay::channel) {
        put_row(dst, dg, K, mode, hv, hg, Hv);
      } else {
        Acc s = 0;
        for (Index i = 0; i < K; ++i) s += dg[i];
        put_row(dst, &s, 1, mode, hv, hg, Hv);
      }
    }
  }

  /// Add the full-vector gate gradients db[0..K), dw[0..V) of token t into grads.
  template <class Grads, class Acc>
  static void add_gate_grads(const Grads& gr, Index b, Index t, Index hv, Index Hv, Index K, Index V, const Acc* db,
                             const Acc* dw, Accumulate mode = Accumulate::add) {
    if constexpr (W == Gates::channel) {
      if (gr.db.given()) {
        const Index hg = gr.db.shape[2];
        put_row(gr.db.row(b, t, gate_head(hv, hg, Hv)), db, K, mode, hv, hg, Hv);
      }
      if (gr.dw.given()) {
        const Index hg = gr.dw.shape[2];
        put_row(gr.dw.row(b, t, gate_head(hv, hg, Hv)), dw, V, mode, hv, hg, Hv);
      }
    } else {
      if (!gr.dbeta.given()) return;
      Acc s = 0;
      for (Index i = 0; i < K; ++i) s += db[i];
      for (Index j = 0; j < V; ++j) s += dw[j];
      const Index hg = gr.dbeta.shape[2];
      put_row(gr.dbeta.row(b, t, gate_head(hv, hg, Hv)), &s, 1, mode, hv, hg, Hv);
    }
  }
};

/// Backward of the fused decay gate for gate head h: from dL/dg in the stored decay
/// shape (`dg`, [B, T, Hg, Dg], Dg = K or 1) to dL/dgate_x (written), dL/dA_log and
/// dL/ddt_bias (written for head h: the sums over all tokens). Views of gr that are
/// not given are skipped. With u = x + dt_bias and g = −e^A·softplus(u):
///   dL/du = dL/dg · (−e^A σ(u)),  dL/dA_log = Σ dL/dg · g,  dL/ddt_bias = Σ_tokens dL/du.
template <class P, class Grads, class Acc>
void fused_decay_backward(const P& p, const View<const Acc>& dg, const Grads& gr, Index h) {
  const Index B = dg.shape[0], T = dg.shape[1], width = dg.shape[3];
  const Acc a = std::exp(convert<Acc>(p.A_log(0, 0, h, 0)));
  Acc dA = 0;
  std::vector<Acc> dbias(size_t(width), Acc(0));
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) {
      const auto* x = p.gate_x.row(b, t, h);
      const Acc* dgr = dg.row(b, t, h);
      for (Index i = 0; i < width; ++i) {
        const Acc u = convert<Acc>(x[i]) + (p.dt_bias.given() ? convert<Acc>(p.dt_bias(0, 0, h, i)) : Acc(0));
        const Acc du = -a * sigmoid(u) * dgr[i];
        dA += dgr[i] * (-a * softplus(u));
        dbias[size_t(i)] += du;
        if (gr.d_gate_x.given()) gr.d_gate_x(b, t, h, i) = du;
      }
    }
  if (gr.dA_log.given()) gr.dA_log(0, 0, h, 0) = dA;
  if (gr.ddt_bias.given())
    for (Index i = 0; i < width; ++i) gr.ddt_bias(0, 0, h, i) = dbias[size_t(i)];
}

/// Gated DeltaNet-2: channel-wise decay, erase gate and write gate.
using GDR2 = GatePolicy<Decay::channel, Gates::channel>;
/// Kimi Delta Attention: channel-wise decay, one β for erase and write.
using KDA = GatePolicy<Decay::channel, Gates::tied>;
/// Gated DeltaNet: scalar decay per head, one β.
using GDN = GatePolicy<Decay::scalar, Gates::tied>;
/// DeltaNet: no decay, one β.
using DeltaNet = GatePolicy<Decay::none, Gates::tied>;

}  // namespace gdr2
