// gdr2 — the problem description and its validation.
//
// One Problem bundles views of every input; Outputs / Gradients bundle the
// views an engine writes. `validate*` here is the only code that checks shapes,
// strides, head counts, cu_seqlens and state slots; engines call it first and
// touch no output when it fails. Conventions (SPEC §6):
//
//   q, k     [B, T, Hk, K]        token-major, unit stride on the feature axis
//   v, o     [B, T, Hv, V]        Hv = G·Hk: value head h reads key head h / G
//   g        [B, T, Hg, K] or [B, T, Hg, 1]   natural-log decay (policy decides)
//   b        [B, T, Hg, K]        erase gate (channel-wise gates)
//   w        [B, T, Hg, V]        write gate (channel-wise gates)
//   beta     [B, T, Hg, 1]        tied gate (KDA / GDN / DeltaNet)
//   states   [N, Hv, K, V]        (any strides: V-major storage is a stride choice)
//   gate_x   like g               optional fused gate, replaces g (see Problem)
//   A_log    [1, 1, Hg, 1]        with gate_x: one per gate head
//   dt_bias  [1, 1, Hg, K or 1]   with gate_x: per key channel (per head for scalar decay)
//
// Hg, the head count of a gate tensor, may be Hk or Hv. Packed variable-length
// batches use B = 1, T = ΣT_n and cu_seqlens (N+1 offsets): the state resets at
// every boundary and N = number of sequences; otherwise N = B.
#pragma once

#include "gates.hpp"
#include "parallel.hpp"
#include "status.hpp"
#include "tensor.hpp"
#include "workspace.hpp"

#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace gdr2 {

/// Packed-sequence offsets (cu_seqlens): N+1 non-decreasing int32 or int64 offsets.
struct SeqOffsets {
  const void* data = nullptr;
  Index count = 0;  ///< number of offsets, N + 1
  bool wide = false;  ///< int64 (true) or int32 (false)

  SeqOffsets() = default;
  SeqOffsets(const std::int32_t* p, Index n) : data(p), count(n), wide(false) {}
  SeqOffsets(const std::int64_t* p, Index n) : data(p), count(n), wide(true) {}
  bool given() const { return data != nullptr; }
  Index operator[](Index i) const {
    return wide ? Index(static_cast<const std::int64_t*>(data)[i]) : Index(static_cast<const std::int32_t*>(data)[i]);
  }
};

/// Inputs of one call. T is the element type of q, k, v, b, w, beta; the decay and
/// the states use the accumulation type (fp32, or fp64 for double inputs).
template <class T>
struct Problem {
  using Acc = accum_t<T>;
  View<const T> q, k, v;     ///< [B,T,Hk,K], [B,T,Hk,K], [B,T,Hv,V]
  View<const Acc> g;         ///< log-decay, natural log, ≤ 0 for the chunk engines
  View<const T> b, w, beta;  ///< erase gate, write gate (channel-wise) or β (tied)
  View<const Acc> initial_state;  ///< [N or pool, Hv, K, V]; not given → zeros
  SeqOffsets cu_seqlens;          ///< packed varlen offsets (B must be 1)
  /// Optional [N] state slots: sequence n reads/writes state slot state_indices[n]
  /// of the initial/final state views (a state pool); −1 skips the sequence.
  const std::int32_t* state_indices = nullptr;
  std::optional<double> scale;  ///< multiplies q; default 1/sqrt(K)

  // Optional fused inputs (SPEC §6), computed inside the engines, forward and backward.
  /// Raw decay-gate input x, given instead of g (same shape g would have):
  /// g = −exp(A_log[h]) · softplus(x + dt_bias[h]), in the accumulation type.
  View<const T> gate_x;
  View<const Acc> A_log;    ///< [1, 1, Hg, 1], Hg = heads of gate_x; required with gate_x
  View<const Acc> dt_bias;  ///< [1, 1, Hg, K] (channel decay) or [1, 1, Hg, 1] (scalar); optional (0)
  /// Normalise q and k per token and head inside the engines: x / sqrt(Σ x² + l2_norm_eps).
  bool l2_norm_qk = false;
  double l2_norm_eps = 1e-6;
};

/// What a forward call writes. TO is the output element type (often T, or Acc).
template <class TO, class Acc>
struct Outputs {
  View<TO> o;             ///< [B, T, Hv, V]
  View<Acc> final_state;  ///< [N or pool, Hv, K, V], optional; may alias initial_state
};

/// Upstream gradients given to a backward call.
template <class T>
struct GradOutputs {
  using Acc = accum_t<T>;
  View<const T> d_o;               ///< dL/do, [B, T, Hv, V]
  View<const Acc> d_final_state;   ///< dL/dS_T, optional, [N, Hv, K, V]
};

/// Gradients a backward call writes (overwrites), in the accumulation type, each
/// with the shape of its input. A view that is not given is not computed.
template <class Acc>
struct Gradients {
  View<Acc> dq, dk, dv;
  View<Acc> dg;      ///< same shape as g (scalar decay: summed over K)
  View<Acc> db, dw;  ///< channel-wise gates
  View<Acc> dbeta;   ///< tied gates: Σ db + Σ dw
  View<Acc> d_initial_state;
  /// Fused gate (Problem::gate_x): dL/dgate_x, dL/dA_log, dL/ddt_bias. With
  /// Problem::l2_norm_qk, dq and dk are the gradients of the raw (unnormalised) q, k.
  View<Acc> d_gate_x, dA_log, ddt_bias;
};

/// Engine options.
struct Options {
  int chunk_size = 64;  ///< chunk engines: 16, 32 or 64 tokens
  /// Scan every input before any work for NaN/Inf, erase gates (b or β) outside
  /// [0, 2] and, for the chunk engines, positive log-decays; one pass over the inputs.
  bool check_finite = false;
  const Executor* executor = nullptr;  ///< null → run on the calling thread
  /// Caller-owned scratch reused across calls (null → allocated once per call).
  Workspace* workspace = nullptr;
};

/// The validated geometry of a call.
struct Dims {
  Index B = 0, T = 0, Hk = 0, Hv = 0, K = 0, V = 0;
  Index N = 0;      ///< number of sequences
  Index group = 1;  ///< Hv / Hk
  double scale = 1;
  SeqOffsets cu_seqlens;
  const std::int32_t* state_indices = nullptr;

  /// Tokens [begin, end) of sequence n in batch row `batch`.
  struct Span {
    Index batch, begin, end;
  };
  Span seq(Index n) const {
    if (cu_seqlens.given()) return {0, cu_seqlens[n], cu_seqlens[n + 1]};
    return {n, 0, T};
  }
  /// State slot of sequence n, or −1 to skip it.
  Index slot(Index n) const { return state_indices ? Index(state_indices[n]) : n; }
  Index key_head(Index hv) const { return hv / group; }
};

namespace detail {

inline std::string fmt_shape(Index a, Index b, Index c, Index d) { return shape_string({a, b, c, d}); }

/// Shape and feature-stride check of one view.
template <class X>
Status check_view(const char* name, const View<X>& v, std::array<Index, 4> expected, const char* meaning,
                  bool unit_feature_stride = true) {
  if (v.shape != expected) {
    return {Code::invalid_argument, std::string(name) + " has shape " + shape_string(v.shape) + ", expected " +
                                        shape_string(expected) + " " + meaning};
  }
  if (unit_feature_stride && expected[3] > 1 && v.stride[3] != 1) {
    return {Code::invalid_argument, std::string(name) + " must have unit stride on its feature axis (last), got stride " +
                                        std::to_string(v.stride[3])};
  }
  return {};
}

/// Check a gate tensor whose width the policy fixes (0 = must not be given).
template <class X>
Status check_gate(const char* name, const View<X>& v, Index width, const Dims& d, const char* model) {
  if (width == 0) {
    if (v.given())
      return {Code::invalid_argument, std::string(name) + " must not be given for the " + model + " gate policy"};
    return {};
  }
  if (!v.given()) return {Code::invalid_argument, std::string(name) + " is required by the " + model + " gate policy"};
  const Index h = v.shape[2];
  if (h != d.Hk && h != d.Hv) {
    return {Code::invalid_argument, std::string(name) + " has " + std::to_string(h) + " heads, expected Hk = " +
                                        std::to_string(d.Hk) + " or Hv = " + std::to_string(d.Hv)};
  }
  return check_view(name, v, {d.B, d.T, h, width}, width == 1 ? "([B, T, H] per-head scalar)" : "([B, T, H, D])");
}

template <class X>
Status check_state(const char* name, const View<X>& s, const Dims& d) {
  if (!s.given()) return {};
  const Index n = d.state_indices ? s.shape[0] : d.N;
  if (d.state_indices && n < 1) return {Code::invalid_argument, std::string(name) + " state pool is empty"};
  // States may have any strides (K-major or V-major storage).
  return check_view(name, s, {n, d.Hv, d.K, d.V}, "([N, Hv, K, V], N = number of sequences or state-pool size)",
                    /*unit_feature_stride=*/false);
}

/// Scan a view for NaN/Inf; optionally also for values above `upper` (e.g. a
/// log-decay > 0, an erase gate > 2) or below `lower`.
template <class X>
Status check_finite_view(const char* name, const View<X>& v, double lower = -INFINITY, double upper = INFINITY,
                         const char* range_reason = "") {
  if (!v.given()) return {};
  for (Index a = 0; a < v.shape[0]; ++a)
    for (Index b = 0; b < v.shape[1]; ++b)
      for (Index c = 0; c < v.shape[2]; ++c)
        for (Index e = 0; e < v.shape[3]; ++e) {
          const double x = convert<double>(v(a, b, c, e));
          if (!std::isfinite(x)) {
            return {Code::non_finite, std::string(name) + " has a non-finite value (" + std::to_string(x) + ") at " +
                                          fmt_shape(a, b, c, e)};
          }
          if (x < lower || x > upper) {
            return {Code::invalid_argument, std::string(name) + " must be in [" + std::to_string(lower) + ", " +
                                                std::to_string(upper) + "] " + range_reason + "; found " +
                                                std::to_string(x) + " at " + fmt_shape(a, b, c, e)};
          }
        }
  return {};
}

}  // namespace detail

/// Validate a problem for gate policy `Policy` and fill `dims`. `chunked` adds the
/// chunk engines' requirements (supported chunk size; g ≤ 0 when scanning).
template <class Policy, class T>
Status validate_problem(const Problem<T>& p, const Options& opt, bool chunked, Dims& dims) {
  using detail::check_view;
  const char* model = Policy::name();
  Dims d;
  if (!p.q.given() || !p.k.given() || !p.v.given())
    return {Code::invalid_argument, "q, k and v are required"};
  d.B = p.q.shape[0];
  d.T = p.q.shape[1];
  d.Hk = p.q.shape[2];
  d.K = p.q.shape[3];
  d.Hv = p.v.shape[2];
  d.V = p.v.shape[3];
  if (d.B < 1 || d.T < 0 || d.Hk < 1 || d.K < 1)
    return {Code::invalid_argument, "q has shape " + shape_string(p.q.shape) + ", expected [B, T, Hk, K] with B, Hk, K >= 1"};
  if (d.Hv < 1 || d.V < 1) return {Code::invalid_argument, "v has shape " + shape_string(p.v.shape) + ", expected Hv, V >= 1"};
  GDR2_RETURN_IF_ERROR(check_view("q", p.q, {d.B, d.T, d.Hk, d.K}, "([B, T, Hk, K])"));
  GDR2_RETURN_IF_ERROR(check_view("k", p.k, {d.B, d.T, d.Hk, d.K}, "([B, T, Hk, K], from q)"));
  GDR2_RETURN_IF_ERROR(check_view("v", p.v, {d.B, d.T, d.Hv, d.V}, "([B, T, Hv, V], B and T from q)"));
  if (d.Hv % d.Hk != 0) {
    return {Code::invalid_argument, "value heads Hv = " + std::to_string(d.Hv) + " must be a multiple of key heads Hk = " +
                                        std::to_string(d.Hk)};
  }
  d.group = d.Hv / d.Hk;

  if (p.gate_x.given()) {
    // Fused gate: gate_x stands where g would, with A_log (and dt_bias) per gate head.
    if (p.g.given()) return {Code::invalid_argument, "give either g or gate_x (the fused decay gate), not both"};
    GDR2_RETURN_IF_ERROR(detail::check_gate("gate_x", p.gate_x, Policy::decay_width(d.K), d, model));
    const Index hg = p.gate_x.shape[2];
    if (!p.A_log.given()) return {Code::invalid_argument, "A_log is required with gate_x (the fused decay gate)"};
    GDR2_RETURN_IF_ERROR(check_view("A_log", p.A_log, {1, 1, hg, 1}, "([1, 1, H, 1], one per head of gate_x)"));
    if (p.dt_bias.given()) {
      GDR2_RETURN_IF_ERROR(check_view("dt_bias", p.dt_bias, {1, 1, hg, Policy::decay_width(d.K)},
                                      "([1, 1, H, D], D the feature width of gate_x)"));
    }
  } else {
    GDR2_RETURN_IF_ERROR(detail::check_gate("g", p.g, Policy::decay_width(d.K), d, model));
    if (p.A_log.given() || p.dt_bias.given())
      return {Code::invalid_argument, "A_log and dt_bias are only used with gate_x (the fused decay gate)"};
  }
  if (p.l2_norm_qk && !(p.l2_norm_eps >= 0 && std::isfinite(p.l2_norm_eps)))
    return {Code::invalid_argument, "l2_norm_eps must be finite and >= 0"};
  GDR2_RETURN_IF_ERROR(detail::check_gate("b", p.b, Policy::erase_width(d.K), d, model));
  GDR2_RETURN_IF_ERROR(detail::check_gate("w", p.w, Policy::write_width(d.V), d, model));
  GDR2_RETURN_IF_ERROR(detail::check_gate("beta", p.beta, Policy::beta_width(), d, model));

  // Sequences.
  if (p.cu_seqlens.given()) {
    const auto& cu = p.cu_seqlens;
    if (d.B != 1)
      return {Code::invalid_argument, "packed varlen input (cu_seqlens given) expects B = 1, got B = " + std::to_string(d.B)};
    if (cu.count < 2)
      return {Code::invalid_argument, "cu_seqlens needs N+1 >= 2 offsets, got " + std::to_string(cu.count)};
    if (cu[0] != 0) return {Code::invalid_argument, "cu_seqlens[0] must be 0, got " + std::to_string(cu[0])};
    for (Index i = 1; i < cu.count; ++i) {
      if (cu[i] < cu[i - 1]) {
        return {Code::invalid_argument, "cu_seqlens must be non-decreasing: cu_seqlens[" + std::to_string(i) + "] = " +
                                            std::to_string(cu[i]) + " < cu_seqlens[" + std::to_string(i - 1) +
                                            "] = " + std::to_string(cu[i - 1])};
      }
    }
    if (cu[cu.count - 1] != d.T) {
      return {Code::invalid_argument, "cu_seqlens must end at the packed length T = " + std::to_string(d.T) + ", got " +
                                          std::to_string(cu[cu.count - 1])};
    }
    d.N = cu.count - 1;
    d.cu_seqlens = cu;
  } else {
    d.N = d.B;
  }

  // States and state slots.
  if (p.state_indices) {
    d.state_indices = p.state_indices;
    if (!p.initial_state.given())
      return {Code::invalid_argument, "state_indices given but no initial_state (the state pool) to index"};
  }
  GDR2_RETURN_IF_ERROR(detail::check_state("initial_state", p.initial_state, d));
  if (p.state_indices) {
    const Index pool = p.initial_state.shape[0];
    std::vector<char> used(size_t(pool), 0);
    for (Index n = 0; n < d.N; ++n) {
      const Index s = p.state_indices[n];
      if (s < -1 || s >= pool) {
        return {Code::invalid_argument, "state_indices[" + std::to_string(n) + "] = " + std::to_string(s) +
                                            " is outside [-1, " + std::to_string(pool) + ")"};
      }
      if (s >= 0 && used[size_t(s)]++) {
        return {Code::invalid_argument, "state slot " + std::to_string(s) + " is used by two sequences"};
      }
    }
  }

  // Scale and options.
  d.scale = p.scale ? *p.scale : 1.0 / std::sqrt(double(d.K));
  if (!std::isfinite(d.scale)) return {Code::invalid_argument, "scale must be finite"};
  if (chunked && opt.chunk_size != 16 && opt.chunk_size != 32 && opt.chunk_size != 64) {
    return {Code::unsupported, "chunk_size " + std::to_string(opt.chunk_size) + " is not supported (16, 32 or 64)"};
  }
  if (opt.check_finite) {
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("q", p.q));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("k", p.k));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("v", p.v));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("g", p.g, -INFINITY, chunked ? 0.0 : INFINITY,
                                                   "(a log-decay <= 0 for the chunk engine)"));
    // An erase gate outside [0, 2] gives the transition an eigenvalue beyond ±1 and
    // the state grows without bound.
    const char* erase_reason = "(erase gates outside [0, 2] make the state diverge)";
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("b", p.b, 0.0, 2.0, erase_reason));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("w", p.w));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("beta", p.beta, 0.0, 2.0, erase_reason));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("initial_state", p.initial_state));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("gate_x", p.gate_x));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("A_log", p.A_log));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("dt_bias", p.dt_bias));
  }
  dims = d;
  return {};
}

/// Validate the outputs of a forward call against validated dims.
template <class TO, class Acc>
Status validate_outputs(const Outputs<TO, Acc>& out, const Dims& d) {
  if (!out.o.given()) return {Code::invalid_argument, "output o is required"};
  GDR2_RETURN_IF_ERROR(detail::check_view("o", out.o, {d.B, d.T, d.Hv, d.V}, "([B, T, Hv, V], like v)"));
  GDR2_RETURN_IF_ERROR(detail::check_state("final_state", out.final_state, d));
  if (d.state_indices && out.final_state.given() && !out.final_state.shape[0]) {
    return {Code::invalid_argument, "final_state pool is empty"};
  }
  return {};
}

/// Validate upstream gradients and gradient outputs of a backward call (gradients of
/// any element type G: the CPU engines write accum_t<T>, the CUDA backward fp32 or T).
template <class Policy, class T, class G>
Status validate_gradients(const GradOutputs<T>& up, const Gradients<G>& gr, const Problem<T>& p,
                          const Options& opt, const Dims& d) {
  if (d.state_indices) return {Code::unsupported, "backward does not take state_indices (a state pool)"};
  if (!up.d_o.given()) return {Code::invalid_argument, "d_o (dL/do) is required"};
  GDR2_RETURN_IF_ERROR(detail::check_view("d_o", up.d_o, {d.B, d.T, d.Hv, d.V}, "([B, T, Hv, V], like o)"));
  GDR2_RETURN_IF_ERROR(detail::check_state("d_final_state", up.d_final_state, d));
  auto like = [](const char* name, const auto& grad, const auto& input) -> Status {
    if (!grad.given()) return {};
    if (!input.given()) return {Code::invalid_argument, std::string(name) + " is given but its input is not"};
    return detail::check_view(name, grad, input.shape, "(the shape of its input)");
  };
  GDR2_RETURN_IF_ERROR(like("dq", gr.dq, p.q));
  GDR2_RETURN_IF_ERROR(like("dk", gr.dk, p.k));
  GDR2_RETURN_IF_ERROR(like("dv", gr.dv, p.v));
  GDR2_RETURN_IF_ERROR(like("dg", gr.dg, p.g));
  GDR2_RETURN_IF_ERROR(like("db", gr.db, p.b));
  GDR2_RETURN_IF_ERROR(like("dw", gr.dw, p.w));
  GDR2_RETURN_IF_ERROR(like("dbeta", gr.dbeta, p.beta));
  GDR2_RETURN_IF_ERROR(like("d_gate_x", gr.d_gate_x, p.gate_x));
  GDR2_RETURN_IF_ERROR(like("dA_log", gr.dA_log, p.A_log));
  GDR2_RETURN_IF_ERROR(like("ddt_bias", gr.ddt_bias, p.dt_bias));
  if (gr.d_initial_state.given()) GDR2_RETURN_IF_ERROR(detail::check_state("d_initial_state", gr.d_initial_state, d));
  if (opt.check_finite) {
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("d_o", up.d_o));
    GDR2_RETURN_IF_ERROR(detail::check_finite_view("d_final_state", up.d_final_state));
  }
  (void)sizeof(Policy);
  return {};
}

}  // namespace gdr2
