// The reductions of SPEC §1: KDA, GDN and DeltaNet are GDR-2 with tied gates.
#include "common.hpp"

using namespace gdr2;
using namespace gdr2::test;

namespace {

// fp64, same algorithm on numerically identical inputs (β broadcast exactly): the
// only difference is the order of a few additions → 1e-13.
constexpr double kTol = 1e-13;

template <class Policy>
void check_reduces_to_gdr2(const ProblemConfig& cfg) {
  RandomProblem<Policy, double> rp(cfg);
  ExpandedGates<Policy, double> ex(rp.problem());
  for (Engine e : kEngines) {
    INFO(Policy::name() << " vs gdr2, " << name(e) << " " << describe(cfg));
    auto o_tied = rp.make_output(), s_tied = rp.make_state();
    auto o_full = rp.make_output(), s_full = rp.make_state();
    REQUIRE(run_forward<Policy>(e, rp.problem(), Outputs<double, double>{o_tied.view(), s_tied.view()}).ok());
    REQUIRE(run_forward<GDR2>(e, ex.p, Outputs<double, double>{o_full.view(), s_full.view()}).ok());
    CHECK(rel_error(o_tied.view(), o_full.view()) <= kTol);
    CHECK(rel_error(s_tied.view(), s_full.view()) <= kTol);
  }
}

}  // namespace

TEST_CASE("reductions: GDR-2 with b = w = beta equals KDA", "[reductions]") {
  for (const auto& cfg : random_configs(11)) check_reduces_to_gdr2<KDA>(cfg);
}

TEST_CASE("reductions: GDR-2 with b = w = beta and scalar decay equals GDN", "[reductions]") {
  for (const auto& cfg : random_configs(12)) check_reduces_to_gdr2<GDN>(cfg);
}

TEST_CASE("reductions: DeltaNet equals GDN with g = 0", "[reductions]") {
  for (const auto& cfg : random_configs(13)) {
    RandomProblem<GDN, double> gdn(cfg);
    gdn.g.fill(0.0);
    Problem<double> dn = gdn.problem();
    dn.g = View<const double>();  // DeltaNet takes no decay at all
    for (Engine e : kEngines) {
      INFO(name(e) << " " << describe(cfg));
      auto o1 = gdn.make_output(), o2 = gdn.make_output();
      REQUIRE(run_forward<GDN>(e, gdn.problem(), Outputs<double, double>{o1.view(), {}}).ok());
      REQUIRE(run_forward<DeltaNet>(e, dn, Outputs<double, double>{o2.view(), {}}).ok());
      CHECK(rel_error(o2.view(), o1.view()) <= kTol);
    }
  }
}
