// Hard numerics (SPEC §5): strong decays, negative eigenvalues, tiny and long inputs.
#include "common.hpp"

using namespace gdr2;
using namespace gdr2::test;

TEST_CASE("numerics: log-decays down to -20 per token and b up to 2 stay finite and exact", "[numerics]") {
  // The chunk engines must never form exp(-G) (see strong_decay_config).
  const ProblemConfig cfg = strong_decay_config();
  for (Engine e : kEngines) {
    INFO(name(e));
    RandomProblem<GDR2, double> rp64(cfg);
    RandomProblem<GDR2, float> rp32(cfg);
    const auto ref64 = reference_forward<GDR2>(rp64.problem());
    const auto ref32 = reference_forward<GDR2>(rp32.problem());
    auto o64 = rp64.make_output(), s64 = rp64.make_state();
    auto o32 = rp32.make_output(), s32 = rp32.make_state();
    REQUIRE(run_forward<GDR2>(e, rp64.problem(), Outputs<double, double>{o64.view(), s64.view()}).ok());
    REQUIRE(run_forward<GDR2>(e, rp32.problem(), Outputs<float, float>{o32.view(), s32.view()}).ok());
    CHECK(rel_error(o64.view(), ref64.o.view()) <= 1e-12);
    CHECK(rel_error(s64.view(), ref64.final_state.view()) <= 1e-12);
    CHECK(rel_error(o32.view(), ref32.o.view()) <= 1e-5);
    CHECK(rel_error(s32.view(), ref32.final_state.view()) <= 1e-5);
  }
}

TEST_CASE("numerics: mixed decay strengths per channel (some ~0, some -20)", "[numerics]") {
  RandomProblem<KDA, float> rp(mixed_decay_config());
  set_mixed_decays(rp.g);
  const auto ref = reference_forward<KDA>(rp.problem());
  for (Engine e : kEngines) {
    INFO(name(e));
    auto o = rp.make_output(), s = rp.make_state();
    REQUIRE(run_forward<KDA>(e, rp.problem(), Outputs<float, float>{o.view(), s.view()}).ok());
    CHECK(rel_error(o.view(), ref.o.view()) <= 1e-5);
    CHECK(rel_error(s.view(), ref.final_state.view()) <= 1e-5);
  }
}

TEST_CASE("numerics: T = 1", "[numerics]") {
  ProblemConfig cfg;
  cfg.T = 1;
  cfg.b_max = 2;
  RandomProblem<GDR2, float> rp(cfg);
  const auto ref = reference_forward<GDR2>(rp.problem());
  for (Engine e : kEngines) {
    INFO(name(e));
    auto o = rp.make_output(), s = rp.make_state();
    REQUIRE(run_forward<GDR2>(e, rp.problem(), Outputs<float, float>{o.view(), s.view()}).ok());
    CHECK(rel_error(o.view(), ref.o.view()) <= 1e-5);
    CHECK(rel_error(s.view(), ref.final_state.view()) <= 1e-5);
  }
}

TEST_CASE("numerics: K = V = 128 at T = 4096 (one head)", "[numerics][slow]") {
  ProblemConfig cfg;
  cfg.T = 4096;
  cfg.Hk = cfg.Hv = 1;
  cfg.K = cfg.V = 128;
  cfg.g_min = -1.0;
  cfg.b_max = 2.0;
  RandomProblem<GDR2, float> rp(cfg);
  const auto ref = reference_forward<GDR2>(rp.problem());
  auto o = rp.make_output(), s = rp.make_state();
  REQUIRE(chunk_forward<GDR2>(rp.problem(), Outputs<float, float>{o.view(), s.view()}).ok());
  const double eo = rel_error(o.view(), ref.o.view()), es = rel_error(s.view(), ref.final_state.view());
  CAPTURE(eo, es);
  CHECK(eo <= 1e-5);
  CHECK(es <= 1e-5);
}
