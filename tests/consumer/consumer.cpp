// Smallest real use: a random KDA problem through the chunk engine vs the fp64 reference.
#include <gdr2/gdr2.hpp>

#include <cstdio>

int main() {
  gdr2::ProblemConfig cfg;
  cfg.T = 45;
  gdr2::RandomProblem<gdr2::KDA, float> rp(cfg);
  auto o = rp.make_output();
  auto st = gdr2::chunk_forward<gdr2::KDA>(rp.problem(), gdr2::Outputs<float, float>{o.view(), {}});
  auto ref = gdr2::reference_forward<gdr2::KDA>(rp.problem());
  const double err = gdr2::rel_error(o.view(), ref.o.view());
  std::printf("consumer: %s, error %.2e\n", st.to_string().c_str(), err);
  return st.ok() && err < 1e-5 ? 0 : 1;
}
