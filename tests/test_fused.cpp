// The fused inputs of SPEC §6: the decay gate g = −exp(A_log)·softplus(x + dt_bias)
// computed from raw x, and in-kernel L2 normalisation of q and k. Their gradients
// are checked by finite differences in test_gradcheck and against the fp64 BPTT in
// test_backward; here: the forward equals the unfused problem, and misuse.
#include "common.hpp"

using namespace gdr2;
using namespace gdr2::test;

namespace {

/// The unfused problem equivalent to a fused one: g evaluated and q, k normalised
/// in fp64 by hand (independently of the library's loaders).
template <class Policy>
struct Unfused {
  Tensor<double> q, k, g;
  Problem<double> p;
  explicit Unfused(const RandomProblem<Policy, double>& rp) : q(rp.q), k(rp.k), p(rp.problem()) {
    const Index K = rp.cfg.K;
    for (Tensor<double>* x : {&q, &k})
      for (Index r = 0; r < x->size() / K; ++r) {
        double ss = 0;
        for (Index i = 0; i < K; ++i) ss += (*x)[r * K + i] * (*x)[r * K + i];
        for (Index i = 0; i < K; ++i) (*x)[r * K + i] /= std::sqrt(ss + 1e-6);
      }
    p.q = q.view();
    p.k = k.view();
    p.l2_norm_qk = false;
    if (!rp.gate_x.empty()) {
      const auto& s = rp.gate_x.shape();
      g = Tensor<double>(s[0], s[1], s[2], s[3]);
      for (Index b = 0; b < s[0]; ++b)
        for (Index t = 0; t < s[1]; ++t)
          for (Index h = 0; h < s[2]; ++h)
            for (Index i = 0; i < s[3]; ++i) {
              const double u = rp.gate_x.view()(b, t, h, i) + rp.dt_bias.view()(0, 0, h, i);
              g.view()(b, t, h, i) = -std::exp(rp.A_log.view()(0, 0, h, 0)) * std::log1p(std::exp(u));
            }
      p.g = g.view();
      p.gate_x = {};
      p.A_log = p.dt_bias = {};
    }
  }
};

// fp64: the fused and unfused problems differ only in where g and q̂, k̂ are rounded
// (log1p/exp in a different but equivalent form) → 1e-13, the forward's own bound
// is 1e-12. fp32: the fused gate runs in fp32 → 1e-5 as every fp32 forward.
template <class Policy>
void check_forward(const ProblemConfig& cfg) {
  RandomProblem<Policy, double> rp64(cfg);
  RandomProblem<Policy, float> rp32(cfg);
  Unfused<Policy> ref_in(rp64);
  const auto ref = reference_forward<Policy>(ref_in.p);
  REQUIRE(ref.status.ok());
  for (Engine e : kEngines) {
    INFO(Policy::name() << " " << name(e) << " " << describe(cfg));
    auto o64 = rp64.make_output(), s64 = rp64.make_state();
    auto o32 = rp32.make_output(), s32 = rp32.make_state();
    REQUIRE(run_forward<Policy>(e, rp64.problem(), Outputs<double, double>{o64.view(), s64.view()}).ok());
    REQUIRE(run_forward<Policy>(e, rp32.problem(), Outputs<float, float>{o32.view(), s32.view()}).ok());
    CHECK(rel_error(o64.view(), ref.o.view()) <= 1e-13);
    CHECK(rel_error(s64.view(), ref.final_state.view()) <= 1e-13);
    CHECK(rel_error(o32.view(), ref.o.view()) <= 1e-5);
    CHECK(rel_error(s32.view(), ref.final_state.view()) <= 1e-5);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("fused: gate from raw x and L2-normalised q, k equal the unfused problem", "[fused]", GDR2, KDA,
                   GDN, DeltaNet) {
  for (auto cfg : random_configs(0xF00D ^ std::hash<std::string>{}(TestType::name()))) {
    cfg.fused_gate = cfg.l2_norm_qk = true;
    check_forward<TestType>(cfg);
  }
}

TEST_CASE("fused: strong gates (softplus far in both tails) stay finite", "[fused]") {
  // u = x + dt_bias from −60 to +60 with exp(A_log) = e: softplus must neither overflow
  // nor lose its tail, and the chunk engine sees log-decays down to −163 per token.
  ProblemConfig cfg;
  cfg.T = 70;
  cfg.fused_gate = true;
  RandomProblem<GDR2, float> rp(cfg);
  for (Index i = 0; i < rp.gate_x.size(); ++i) rp.gate_x[i] = float(-60.0 + 120.0 * double(i % 97) / 96.0);
  for (Index i = 0; i < rp.A_log.size(); ++i) rp.A_log[i] = 1.0f;
  RandomUpstream<float> up(rp.problem(), 3);
  const auto ref = reference_backward<GDR2>(rp.problem(), up.grad_outputs());
  for (Engine e : {Engine::recurrent, Engine::chunk64}) {
    INFO(name(e));
    GradientBuffers<float> got(rp.problem());
    REQUIRE(run_backward<GDR2>(e, rp.problem(), up.grad_outputs(), got.views()).ok());
    // fp32 against fp64 on the same inputs. The BPTT forms dg = rowsum(dS̄ ⊙ S̄),
    // which is tiny exactly where g is huge: measured ≤ 2e-7 → 1e-5. The chunk
    // engine forms dg as a reverse cumulative sum of ± pair terms, whose rounding
    // (6e-8 of the O(1) terms of weakly decayed pairs) does not cancel; dA_log =
    // Σ dg·g then weights that absolute error by |g| up to 163: measured 1.5e-5
    // (d_gate_x), 3.5e-5 (ddt_bias), 2.4e-4 … 3.7e-4 (dA_log, depending on the
    // rounding order of the build) → 1e-4, 1e-4, 1e-3. The range, g ≥ −20
    // per token, is covered in test_backward (dg ≤ 3e-6 there).
    const bool chunk = e != Engine::recurrent;
    CHECK(rel_error(got.d_gate_x.view(), ref.grads.d_gate_x.view()) <= (chunk ? 1e-4 : 1e-5));
    CHECK(rel_error(got.ddt_bias.view(), ref.grads.ddt_bias.view()) <= (chunk ? 1e-4 : 1e-5));
    CHECK(rel_error(got.dA_log.view(), ref.grads.dA_log.view()) <= (chunk ? 1e-3 : 1e-5));
    CHECK(rel_error(got.dq.view(), ref.grads.dq.view()) <= 1e-5);
  }
}

namespace {

Status run(const Problem<float>& p) {
  RandomProblem<GDR2, float> shape_src(ProblemConfig{});
  auto o = shape_src.make_output();
  return chunk_forward<GDR2>(p, Outputs<float, float>{o.view(), {}});
}

}  // namespace

TEST_CASE("fused: misuse gets a clear Status", "[fused][validation]") {
  ProblemConfig cfg;
  cfg.fused_gate = true;
  RandomProblem<GDR2, float> rp(cfg);
  RandomProblem<GDR2, float> plain(ProblemConfig{});
  {
    Problem<float> p = rp.problem();
    p.g = plain.g.view();
    const Status st = run(p);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("either g or gate_x") != std::string::npos);
  }
  {
    Problem<float> p = rp.problem();
    p.A_log = {};
    CHECK(run(p).message().find("A_log is required") != std::string::npos);
  }
  {
    Problem<float> p = rp.problem();
    p.dt_bias.shape[3] = 1;
    p.dt_bias.stride[2] = 1;
    CHECK(run(p).message().find("dt_bias has shape") != std::string::npos);
  }
  {
    Problem<float> p = plain.problem();
    p.A_log = rp.A_log.view();
    CHECK(run(p).message().find("only used with gate_x") != std::string::npos);
  }
  {
    Problem<float> p = rp.problem();
    p.l2_norm_qk = true;
    p.l2_norm_eps = -1;
    CHECK(run(p).message().find("l2_norm_eps") != std::string::npos);
  }
  {
    // DeltaNet has no decay: no fused gate either.
    RandomProblem<DeltaNet, float> dn(ProblemConfig{});
    Problem<float> p = dn.problem();
    p.gate_x = rp.q.view();
    auto o = dn.make_output();
    const Status st = chunk_forward<DeltaNet>(p, Outputs<float, float>{o.view(), {}});
    CHECK(st.message().find("gate_x must not be given for the deltanet") != std::string::npos);
  }
  {
    // Gradients of the fused gate need the fused gate.
    RandomUpstream<float> up(plain.problem(), 1);
    GradientBuffers<float> g(plain.problem());
    Tensor<float> dA(1, 1, 4, 1);
    auto gv = g.views();
    gv.dA_log = dA.view();
    const Status st = chunk_backward<GDR2>(plain.problem(), up.grad_outputs(), gv);
    CHECK(st.message().find("dA_log is given but its input is not") != std::string::npos);
  }
}
