// Every gradient of every gate policy, on every backward engine, against central
// finite differences of the fp64 recurrence (SPEC §1) — the definition of the
// gradient, independent of SPEC §2 and §4.
#include "common.hpp"

#include <cstdio>

using namespace gdr2;
using namespace gdr2::test;

namespace {

// The loss is L = Σ dO ⊙ o + Σ dS_T ⊙ S_T with random dO, dS_T, so dL/dx is exactly
// what a backward call returns for upstream (dO, dS_T). Each element of each input
// is perturbed in turn and dL/dx taken by the fourth-order central difference
//   (−L(x+2h) + 8L(x+h) − 8L(x−h) + L(x−2h)) / 12h,  h = 1e-3:
// truncation ~ h⁴·L⁽⁵⁾/30 ≈ 1e-12 · O(1…100), rounding ~ 1e-15·|L| / h ≈ 1e-12, so the
// differences are good to ~1e-10 relative; 1e-7 (the bound) leaves three
// orders of margin and still catches any wrong term (a missing term is O(1)).
constexpr double kFdTol = 1e-7;
constexpr double kStep = 1e-3;

template <class Policy>
struct GradCheck {
  RandomProblem<Policy, double> rp;
  RandomUpstream<double> up;
  Tensor<double> o, s;

  explicit GradCheck(const ProblemConfig& cfg) : rp(cfg), up(rp.problem(), cfg.seed + 7), o(rp.make_output()), s(rp.make_state()) {}

  double loss() {
    const Status st = recurrent_forward<Policy>(rp.problem(), Outputs<double, double>{o.view(), s.view()});
    if (!st.ok()) FAIL(st.to_string());
    long double L = 0;
    for (Index i = 0; i < o.size(); ++i) L += (long double)up.d_o[i] * o[i];
    for (Index i = 0; i < s.size(); ++i) L += (long double)up.d_final_state[i] * s[i];
    return double(L);
  }

  /// dL/dx for every element of input x, by finite differences.
  Tensor<double> fd(Tensor<double>& x) {
    auto sh = x.shape();
    Tensor<double> grad(sh[0], sh[1], sh[2], sh[3]);
    for (Index i = 0; i < x.size(); ++i) {
      const double x0 = x[i];
      double f[4];
      const double offs[4] = {2, 1, -1, -2};
      for (int j = 0; j < 4; ++j) {
        x[i] = x0 + offs[j] * kStep;
        f[j] = loss();
      }
      x[i] = x0;
      grad[i] = (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / (12 * kStep);
    }
    return grad;
  }

  /// {gradient name, input tensor} for every input the policy takes.
  std::vector<std::pair<const char*, Tensor<double>*>> inputs() {
    std::vector<std::pair<const char*, Tensor<double>*>> in = {{"dq", &rp.q}, {"dk", &rp.k}, {"dv", &rp.v}};
    if (!rp.g.empty()) in.push_back({"dg", &rp.g});
    if (!rp.b.empty()) in.push_back({"db", &rp.b});
    if (!rp.w.empty()) in.push_back({"dw", &rp.w});
    if (!rp.beta.empty()) in.push_back({"dbeta", &rp.beta});
    in.push_back({"d_initial_state", &rp.initial_state});
    if (!rp.gate_x.empty()) {
      in.push_back({"d_gate_x", &rp.gate_x});
      in.push_back({"dA_log", &rp.A_log});
      in.push_back({"ddt_bias", &rp.dt_bias});
    }
    return in;
  }
};

template <class Policy>
void check_gradients(const ProblemConfig& cfg) {
  GradCheck<Policy> gc(cfg);
  // Finite differences once per input, then every engine against them.
  std::vector<std::pair<const char*, Tensor<double>>> want;
  for (auto& [name, x] : gc.inputs()) want.emplace_back(name, gc.fd(*x));
  for (Engine e : kEngines) {
    GradientBuffers<double> got(gc.rp.problem());
    Options opt;
    opt.chunk_size = 5;  // BPTT checkpoints every 5 tokens: segments end mid-sequence
    REQUIRE(run_backward<Policy>(e, gc.rp.problem(), gc.up.grad_outputs(), got.views(), opt).ok());
    for (auto& [name, fd] : want) {
      Tensor<double>* g = nullptr;
      for (auto& [gname, t] : got.all())
        if (std::string(gname) == name) g = t;
      const double err = rel_error(g->view(), fd.view());
      INFO(Policy::name() << " " << test::name(e) << " " << name << " " << describe(cfg));
      CAPTURE(err);
      CHECK(err <= kFdTol);
      if (print_errors())
        std::printf("fd  %-9s %-10s %-16s %.2e  (%s)\n", Policy::name(), test::name(e), name, err,
                    describe(cfg).c_str());
    }
  }
}

/// Small problems that exercise every path: T = 37 is not a multiple of any chunk
/// size (one chunk of 16+16+5 rows at C = 64, 32 + 5 at C = 32), K ≠ V, non-zero
/// S_0, b up to 2, grouped value heads; and a packed varlen batch with an empty
/// and a one-token sequence, gates per key head.
std::vector<ProblemConfig> fd_configs(std::uint64_t seed, bool fused = false) {
  ProblemConfig a;
  a.B = 2;
  a.T = 37;
  a.Hk = 1;
  a.Hv = 2;
  a.K = 5;
  a.V = 3;
  a.b_max = 2.0;
  a.g_min = -3.0;
  a.seed = seed;
  ProblemConfig b;
  b.seqlens = {9, 0, 20, 1, 35};
  b.Hk = 2;
  b.Hv = 4;
  b.K = 4;
  b.V = 6;
  b.b_max = 2.0;
  b.gates_per_key_head = true;
  b.seed = seed + 1;
  for (auto* c : {&a, &b}) c->fused_gate = c->l2_norm_qk = fused;
  return {a, b};
}

}  // namespace

TEMPLATE_TEST_CASE("gradcheck: every gradient matches finite differences of the fp64 recurrence", "[gradcheck]",
                   GDR2, KDA, GDN, DeltaNet) {
  for (const auto& cfg : fd_configs(std::hash<std::string>{}(TestType::name()) % 1000)) check_gradients<TestType>(cfg);
}

TEMPLATE_TEST_CASE("gradcheck: fused decay gate and in-kernel L2 norm of q, k", "[gradcheck][fused]", GDR2, KDA, GDN,
                   DeltaNet) {
  // dq, dk are gradients of the raw q, k; d_gate_x, dA_log, ddt_bias those of the
  // fused gate g = −exp(A_log)·softplus(x + dt_bias) (no g for DeltaNet: L2 norm only).
  for (const auto& cfg : fd_configs(std::hash<std::string>{}(TestType::name()) % 1000 + 50, true))
    check_gradients<TestType>(cfg);
}
