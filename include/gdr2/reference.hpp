// gdr2 — the fp64 reference, random problem generators and error metrics.
//
// For this library's tests and for kernel authors' own: build a RandomProblem,
// run your kernel on its inputs, and compare with reference_forward (the fp64
// recurrence of SPEC §1 evaluated on the same — possibly bf16-rounded — inputs)
// through rel_error. expand_gates turns a KDA / GDN / DeltaNet problem into the
// equivalent GDR-2 problem (b = w = β·1, scalar decay broadcast over K), which
// is how the reductions are unit-tested. reference_backward is the fp64 BPTT
// (SPEC §2) on the same inputs, the gradient every backward engine is tested against;
// GradientBuffers and RandomUpstream allocate gradient outputs and draw dL/do, dL/dS_T.
#pragma once

#include "recurrent_backward.hpp"

#include <cmath>
#include <random>

namespace gdr2 {

/// Shape and value ranges of a random problem.
struct ProblemConfig {
  Index B = 1, T = 37, Hk = 2, Hv = 4, K = 16, V = 12;
  std::vector<Index> seqlens;  ///< non-empty → one packed varlen batch of these lengths
  double g_min = -2.0, g_max = 0.0;  ///< log-decay ~ U[g_min, g_max]
  double b_max = 1.0;                ///< erase gate (or β) ~ U[0, b_max]; 2 = negative eigenvalues
  double w_min = 0.0, w_max = 1.0;   ///< write gate ~ U[w_min, w_max] (channel-wise gates)
  bool initial_state = true;         ///< non-zero S_0 ~ N(0, 0.25)
  bool gates_per_key_head = false;   ///< gate tensors with Hk heads instead of Hv
  /// Fused decay gate instead of g: gate_x ~ N(0, 1), A_log ~ U[−1, 1], dt_bias ~ U[−2, 0.5].
  bool fused_gate = false;
  /// q, k drawn N(0, 1) without normalisation, and normalised in the kernel.
  bool l2_norm_qk = false;
  std::uint64_t seed = 1;
};

namespace detail {

/// Point every input view of `p` (q, k, v, g, b, w, β, the initial state and the
/// fused-gate inputs) at the tensor of the same name in `t` (RandomProblem,
/// ProblemCopy); the other fields of `p` are left to the caller.
template <class T, class Tensors>
void view_inputs(Problem<T>& p, const Tensors& t) {
  p.q = t.q.view();
  p.k = t.k.view();
  p.v = t.v.view();
  p.g = t.g.view();
  p.b = t.b.view();
  p.w = t.w.view();
  p.beta = t.beta.view();
  p.initial_state = t.initial_state.view();
  p.gate_x = t.gate_x.view();
  p.A_log = t.A_log.view();
  p.dt_bias = t.dt_bias.view();
}

/// The engines' default options but for the executor (null: the calling thread): what the
/// reference_* functions run their fp64 engine with.
inline Options on_executor(const Executor* executor) {
  Options opt;
  opt.executor = executor;
  return opt;
}

}  // namespace detail

/// Owning random problem for gate policy `Policy` with inputs of type T. Inputs are
/// drawn in fp64 and rounded to T (and the decay to its accumulation type); q and k
/// are L2-normalised per token, as in the models (or, with cfg.l2_norm_qk, left raw
/// and normalised in the kernel).
template <class Policy, class T>
class RandomProblem {
 public:
  using Acc = accum_t<T>;
  ProblemConfig cfg;
  Index B, T_, N;
  Tensor<T> q, k, v, b, w, beta;
  Tensor<Acc> g, initial_state;
  Tensor<T> gate_x;             ///< fused gate input (cfg.fused_gate), shape of g
  Tensor<Acc> A_log, dt_bias;   ///< [1, 1, Hg, 1], [1, 1, Hg, Dg]
  std::vector<std::int32_t> cu_seqlens;

  explicit RandomProblem(const ProblemConfig& c) : cfg(c) {
    std::mt19937_64 rng(c.seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    auto uniform = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
    if (!c.seqlens.empty()) {
      B = 1;
      cu_seqlens.push_back(0);
      for (Index L : c.seqlens) cu_seqlens.push_back(std::int32_t(cu_seqlens.back() + L));
      T_ = cu_seqlens.back();
      N = Index(c.seqlens.size());
    } else {
      B = c.B;
      T_ = c.T;
      N = B;
    }
    const Index Hg = c.gates_per_key_head ? c.Hk : c.Hv;
    auto unit_rows = [&](Tensor<T>& x, Index H, Index D) {
      x = Tensor<T>(B, T_, H, D);
      std::vector<double> row(static_cast<size_t>(D));
      for (Index i = 0; i < B * T_ * H; ++i) {
        double nrm = 0;
        for (auto& e : row) {
          e = normal(rng);
          nrm += e * e;
        }
        nrm = c.l2_norm_qk ? 1.0 : std::sqrt(nrm);
        for (Index d = 0; d < D; ++d) x[i * D + d] = convert<T>(row[size_t(d)] / nrm);
      }
    };
    unit_rows(q, c.Hk, c.K);
    unit_rows(k, c.Hk, c.K);
    v = Tensor<T>(B, T_, c.Hv, c.V);
    for (Index i = 0; i < v.size(); ++i) v[i] = convert<T>(normal(rng));
    const Index Dg = Policy::decay_width(c.K);
    if (Dg > 0 && c.fused_gate) {
      gate_x = Tensor<T>(B, T_, Hg, Dg);
      A_log = Tensor<Acc>(1, 1, Hg, 1);
      dt_bias = Tensor<Acc>(1, 1, Hg, Dg);
      for (Index i = 0; i < gate_x.size(); ++i) gate_x[i] = convert<T>(normal(rng));
      for (Index i = 0; i < A_log.size(); ++i) A_log[i] = Acc(uniform(-1.0, 1.0));
      for (Index i = 0; i < dt_bias.size(); ++i) dt_bias[i] = Acc(uniform(-2.0, 0.5));
    } else if (Dg > 0) {
      g = Tensor<Acc>(B, T_, Hg, Dg);
      for (Index i = 0; i < g.size(); ++i) g[i] = Acc(uniform(c.g_min, c.g_max));
    }
    if (Policy::erase_width(c.K) > 0) {
      b = Tensor<T>(B, T_, Hg, c.K);
      w = Tensor<T>(B, T_, Hg, c.V);
      for (Index i = 0; i < b.size(); ++i) b[i] = convert<T>(uniform(0.0, c.b_max));
      for (Index i = 0; i < w.size(); ++i) w[i] = convert<T>(uniform(c.w_min, c.w_max));
    } else {
      beta = Tensor<T>(B, T_, Hg, 1);
      for (Index i = 0; i < beta.size(); ++i) beta[i] = convert<T>(uniform(0.0, c.b_max));
    }
    if (c.initial_state) {
      initial_state = Tensor<Acc>(N, c.Hv, c.K, c.V);
      for (Index i = 0; i < initial_state.size(); ++i) initial_state[i] = Acc(0.5 * normal(rng));
    }
  }

  /// Views of all inputs.
  Problem<T> problem() const {
    Problem<T> p;
    detail::view_inputs(p, *this);
    if (!cu_seqlens.empty()) p.cu_seqlens = SeqOffsets(cu_seqlens.data(), Index(cu_seqlens.size()));
    p.l2_norm_qk = cfg.l2_norm_qk;
    return p;
  }
  /// Freshly allocated (zeroed) output buffers of matching shapes.
  Tensor<Acc> make_output() const { return Tensor<Acc>(B, T_, cfg.Hv, cfg.V); }
  Tensor<Acc> make_state() const { return Tensor<Acc>(N, cfg.Hv, cfg.K, cfg.V); }
};

/// Owning copy of a problem's inputs converted to U (fp64 for the reference).
template <class U>
struct ProblemCopy {
  Tensor<U> q, k, v, b, w, beta;
  Tensor<accum_t<U>> g, initial_state;
  Tensor<U> gate_x;
  Tensor<accum_t<U>> A_log, dt_bias;
  Problem<U> p;

  template <class T>
  explicit ProblemCopy(const Problem<T>& src)
      : q(to_tensor<U>(src.q)),
        k(to_tensor<U>(src.k)),
        v(to_tensor<U>(src.v)),
        b(to_tensor<U>(src.b)),
        w(to_tensor<U>(src.w)),
        beta(to_tensor<U>(src.beta)),
        g(to_tensor<accum_t<U>>(src.g)),
        initial_state(to_tensor<accum_t<U>>(src.initial_state)),
        gate_x(to_tensor<U>(src.gate_x)),
        A_log(to_tensor<accum_t<U>>(src.A_log)),
        dt_bias(to_tensor<accum_t<U>>(src.dt_bias)) {
    detail::view_inputs(p, *this);
    p.cu_seqlens = src.cu_seqlens;
    p.state_indices = src.state_indices;
    p.scale = src.scale;
    p.l2_norm_qk = src.l2_norm_qk;
    p.l2_norm_eps = src.l2_norm_eps;
  }
  ProblemCopy(const ProblemCopy&) = delete;
  ProblemCopy& operator=(const ProblemCopy&) = delete;
};

/// Result of the fp64 reference forward.
struct ReferenceForward {
  Status status;
  Tensor<double> o, final_state;
};

/// The fp64 recurrence (SPEC §1) on the given inputs, whatever their type. `executor`
/// (optional) runs the (sequence, value head) pairs on its threads; each pair's arithmetic
/// is the same on any thread, so the result is identical bit for bit.
template <class Policy, class T>
ReferenceForward reference_forward(const Problem<T>& p, const Executor* executor = nullptr) {
  ProblemCopy<double> c(p);
  ReferenceForward r;
  r.o = Tensor<double>(p.v.shape[0], p.v.shape[1], p.v.shape[2], p.v.shape[3]);
  const Index n_state = p.state_indices ? p.initial_state.shape[0]
                        : p.cu_seqlens.given() ? p.cu_seqlens.count - 1
                                               : p.q.shape[0];
  r.final_state = Tensor<double>(n_state, p.v.shape[2], p.q.shape[3], p.v.shape[3]);
  if (p.state_indices && c.initial_state.size()) r.final_state = c.initial_state.template cast<double>();
  r.status = recurrent_forward<Policy>(c.p, Outputs<double, double>{r.o.view(), r.final_state.view()},
                                       detail::on_executor(executor));
  return r;
}

/// Result of reference_chunk_states.
struct ReferenceChunkStates {
  Status status;
  Tensor<double> states;  ///< [C, Hv, K, V], C = Σ_n ceil(T_n / chunk)
};

/// The fp64 state at the start of every `chunk`-token chunk of every sequence (what a
/// chunked kernel hands from its forward to its backward): chunk j of sequence n at row
/// Σ_{m<n} ceil(T_m / chunk) + j, row 0 of a sequence being its initial state. Sequences
/// with state slot −1 (state_indices) keep zero rows. One pass of the fp64 recurrence
/// (SPEC §1), chunk by chunk, each chunk starting from the previous one's final state;
/// `executor` (optional) runs each chunk's value heads on its threads (same result).
template <class Policy, class T>
ReferenceChunkStates reference_chunk_states(const Problem<T>& p, Index chunk = 64, const Executor* executor = nullptr) {
  ReferenceChunkStates r;
  Dims d;
  if (chunk < 1) {
    r.status = {Code::invalid_argument, "chunk must be positive"};
    return r;
  }
  if (!(r.status = validate_problem<Policy>(p, Options{}, /*chunked=*/false, d)).ok()) return r;
  ProblemCopy<double> c(p);
  Index rows = 0;
  for (Index n = 0; n < d.N; ++n) rows += (d.seq(n).end - d.seq(n).begin + chunk - 1) / chunk;
  r.states = Tensor<double>(rows, d.Hv, d.K, d.V);
  // tokens [t0, t0 + len) of batch row bb as a one-sequence view (token-indexed inputs)
  auto cut = [](View<const double> v, Index bb, Index t0, Index len) {
    if (!v.given()) return v;
    v.data += bb * v.stride[0] + t0 * v.stride[1];
    v.shape[0] = 1;
    v.shape[1] = len;
    return v;
  };
  const Index HKV = d.Hv * d.K * d.V;
  // one chunk's start state (in), end state (out) and outputs, reused chunk after chunk
  Tensor<double> start(1, d.Hv, d.K, d.V), state(1, d.Hv, d.K, d.V), o(1, chunk, d.Hv, d.V);
  Index row = 0;
  for (Index n = 0; n < d.N; ++n) {
    const Dims::Span sp = d.seq(n);
    const Index nch = (sp.end - sp.begin + chunk - 1) / chunk, slot = d.slot(n);
    if (slot < 0) {
      row += nch;
      continue;
    }
    for (Index i = 0; i < HKV; ++i) state[i] = c.p.initial_state.given() ? c.initial_state[slot * HKV + i] : 0.0;
    for (Index j = 0; j < nch; ++j) {
      for (Index i = 0; i < HKV; ++i) r.states[(row + j) * HKV + i] = state[i];
      if (j + 1 == nch) break;  // the last chunk's end state is the final state, not a row
      const Index t0 = sp.begin + j * chunk;
      Problem<double> q = c.p;
      q.cu_seqlens = {};
      q.state_indices = nullptr;
      for (View<const double>* v : {&q.q, &q.k, &q.v, &q.g, &q.b, &q.w, &q.beta, &q.gate_x})
        *v = cut(*v, sp.batch, t0, chunk);
      for (Index i = 0; i < HKV; ++i) start[i] = state[i];
      q.initial_state = start.view();
      if (!(r.status = recurrent_forward<Policy>(q, Outputs<double, double>{o.view(), state.view()},
                                                 detail::on_executor(executor)))
               .ok())
        return r;
    }
    row += nch;
  }
  return r;
}

/// GDR-2 inputs equivalent to a problem of another policy: the decay broadcast to
/// [.., K] and tied β expanded to b = β·1 [.., K], w = β·1 [.., V].
template <class Policy, class T>
struct ExpandedGates {
  using Acc = accum_t<T>;
  Tensor<Acc> g;
  Tensor<T> b, w;
  Problem<T> p;

  explicit ExpandedGates(const Problem<T>& src) : p(src) {
    const Index B = src.q.shape[0], T_ = src.q.shape[1], K = src.q.shape[3], V = src.v.shape[3];
    const Index Hv = src.v.shape[2];
    g = Tensor<Acc>(B, T_, Hv, K);
    b = Tensor<T>(B, T_, Hv, K);
    w = Tensor<T>(B, T_, Hv, V);
    std::vector<Acc> gk(static_cast<size_t>(K)), bk(static_cast<size_t>(K)), wv(static_cast<size_t>(V));
    for (Index bb = 0; bb < B; ++bb)
      for (Index t = 0; t < T_; ++t)
        for (Index h = 0; h < Hv; ++h) {
          Policy::load_decay(src, bb, t, h, Hv, K, gk.data());
          Policy::load_gates(src, bb, t, h, Hv, K, V, bk.data(), wv.data());
          for (Index i = 0; i < K; ++i) {
            g.view()(bb, t, h, i) = gk[size_t(i)];
            b.view()(bb, t, h, i) = convert<T>(bk[size_t(i)]);
          }
          for (Index j = 0; j < V; ++j) w.view()(bb, t, h, j) = convert<T>(wv[size_t(j)]);
        }
    p.g = g.view();
    p.b = b.view();
    p.w = w.view();
    p.beta = View<const T>();
    p.gate_x = View<const T>();  // a fused gate is evaluated into g above
    p.A_log = p.dt_bias = View<const Acc>();
  }
  ExpandedGates(const ExpandedGates&) = delete;
  ExpandedGates& operator=(const ExpandedGates&) = delete;
};

/// Owning gradient buffers with the shapes of a problem's inputs (only those the
/// problem gives), plus dS_0 [N, Hv, K, V]; `views()` is what a backward call takes.
template <class Acc>
struct GradientBuffers {
  Tensor<Acc> dq, dk, dv, dg, db, dw, dbeta, d_initial_state;
  Tensor<Acc> d_gate_x, dA_log, ddt_bias;  ///< fused gate (when the problem has gate_x)

  GradientBuffers() = default;
  template <class T>
  explicit GradientBuffers(const Problem<T>& p) {
    auto like = [](const auto& in) {
      return in.given() ? Tensor<Acc>(in.shape[0], in.shape[1], in.shape[2], in.shape[3]) : Tensor<Acc>();
    };
    dq = like(p.q);
    dk = like(p.k);
    dv = like(p.v);
    dg = like(p.g);
    db = like(p.b);
    dw = like(p.w);
    dbeta = like(p.beta);
    d_gate_x = like(p.gate_x);
    dA_log = like(p.A_log);
    ddt_bias = like(p.dt_bias);
    const Index N = p.cu_seqlens.given() ? p.cu_seqlens.count - 1 : p.q.shape[0];
    d_initial_state = Tensor<Acc>(N, p.v.shape[2], p.q.shape[3], p.v.shape[3]);
  }
  Gradients<Acc> views() {
    return Gradients<Acc>{dq.view(),    dk.view(),          dv.view(),     dg.view(),
                          db.view(),    dw.view(),          dbeta.view(),  d_initial_state.view(),
                          d_gate_x.view(), dA_log.view(),   ddt_bias.view()};
  }
  /// Every buffer, for loops over all gradients: {name, tensor}.
  std::vector<std::pair<const char*, Tensor<Acc>*>> all() {
    return {{"dq", &dq},       {"dk", &dk},       {"dv", &dv},
            {"dg", &dg},       {"db", &db},       {"dw", &dw},
            {"dbeta", &dbeta}, {"d_initial_state", &d_initial_state},
            {"d_gate_x", &d_gate_x}, {"dA_log", &dA_log}, {"ddt_bias", &ddt_bias}};
  }
  void fill(Acc x) {
    for (auto& [name, t] : all()) t->fill(x);
  }
};

/// Random upstream gradients for a problem: dL/do ~ N(0, 1) in T, and dL/dS_T ~ N(0, 1)
/// in the accumulation type (omitted when `with_final_state` is false).
template <class T>
struct RandomUpstream {
  using Acc = accum_t<T>;
  Tensor<T> d_o;
  Tensor<Acc> d_final_state;

  /// `scale`: every value times it (a power of 2 keeps the draws exact up to the type's
  /// range: loss-scaled or tiny upstream gradients).
  RandomUpstream(const Problem<T>& p, std::uint64_t seed, bool with_final_state = true, double scale = 1.0) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    d_o = Tensor<T>(p.v.shape[0], p.v.shape[1], p.v.shape[2], p.v.shape[3]);
    for (Index i = 0; i < d_o.size(); ++i) d_o[i] = convert<T>(scale * normal(rng));
    if (with_final_state) {
      const Index N = p.cu_seqlens.given() ? p.cu_seqlens.count - 1 : p.q.shape[0];
      d_final_state = Tensor<Acc>(N, p.v.shape[2], p.q.shape[3], p.v.shape[3]);
      for (Index i = 0; i < d_final_state.size(); ++i) d_final_state[i] = Acc(scale * normal(rng));
    }
  }
  GradOutputs<T> grad_outputs() const { return GradOutputs<T>{d_o.view(), d_final_state.view()}; }
};

/// Result of the fp64 reference backward.
struct ReferenceBackward {
  Status status;
  GradientBuffers<double> grads;
};

/// The fp64 BPTT (SPEC §2) on the given inputs and upstream gradients, whatever
/// their type: every gradient of a given input, and dS_0. `executor` (optional) runs the
/// (sequence, key head) items on its threads — each item sums its value heads in order, so
/// the result is identical bit for bit.
template <class Policy, class T>
ReferenceBackward reference_backward(const Problem<T>& p, const GradOutputs<T>& up, const Executor* executor = nullptr) {
  ProblemCopy<double> c(p);
  const Tensor<double> d_o = to_tensor<double>(up.d_o);
  const Tensor<double> d_fin = to_tensor<double>(up.d_final_state);
  ReferenceBackward r;
  r.grads = GradientBuffers<double>(c.p);
  r.status = recurrent_backward<Policy>(c.p, GradOutputs<double>{d_o.view(), d_fin.view()}, r.grads.views(),
                                        detail::on_executor(executor));
  return r;
}

/// ‖a − b‖_F / ‖b‖_F over two views of equal shape (any element types); NaN if a
/// NaN/Inf appears, +inf if shapes differ; ‖a‖_F when b is all zero.
template <class A, class B>
double rel_error(const View<A>& a, const View<B>& b) {
  if (a.shape != b.shape) return INFINITY;
  double num = 0, den = 0;
  for (Index i0 = 0; i0 < a.shape[0]; ++i0)
    for (Index i1 = 0; i1 < a.shape[1]; ++i1)
      for (Index i2 = 0; i2 < a.shape[2]; ++i2)
        for (Index i3 = 0; i3 < a.shape[3]; ++i3) {
          const double x = convert<double>(a(i0, i1, i2, i3)), y = convert<double>(b(i0, i1, i2, i3));
          if (!std::isfinite(x) || !std::isfinite(y)) return NAN;
          num += (x - y) * (x - y);
          den += y * y;
        }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace gdr2
