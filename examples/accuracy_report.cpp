// Accuracy report: the largest relative Frobenius error of each CPU engine, gate
// policy and input dtype against the fp64 recurrence (on the same rounded inputs),
// over random problems with T not a multiple of the chunk size, K ≠ V, grouped
// heads, non-zero S_0, b ∈ [0, 2] and log-decays in [g_min, 0].
//
//   ./accuracy_report [g_min]       (default -3; try -20 for the hard-numerics range)
#include <gdr2/gdr2.hpp>

#include <cstdio>
#include <cstdlib>

using namespace gdr2;

namespace {

struct Worst {
  double o = 0, s = 0;
};

template <class Policy, class T>
Worst worst_error(bool chunked, double g_min) {
  Worst w;
  auto shape = [&](Index B, Index len, Index Hk, Index Hv, Index K, Index V, std::vector<Index> seqlens, bool per_key) {
    ProblemConfig c;
    c.B = B, c.T = len, c.Hk = Hk, c.Hv = Hv, c.K = K, c.V = V, c.seqlens = std::move(seqlens);
    c.g_min = g_min, c.b_max = 2.0, c.gates_per_key_head = per_key, c.seed = std::uint64_t(len + K);
    return c;
  };
  const ProblemConfig shapes[] = {shape(2, 37, 2, 4, 16, 12, {}, false), shape(1, 150, 1, 3, 20, 28, {}, true),
                                  shape(1, 0, 2, 4, 12, 20, {5, 0, 1, 97, 17, 64}, false)};
  for (const auto& cfg : shapes) {
    RandomProblem<Policy, T> rp(cfg);
    const auto ref = reference_forward<Policy>(rp.problem());
    auto o = rp.make_output();
    auto s = rp.make_state();
    const Outputs<accum_t<T>, accum_t<T>> out{o.view(), s.view()};
    check(chunked ? chunk_forward<Policy>(rp.problem(), out) : recurrent_forward<Policy>(rp.problem(), out));
    w.o = std::max(w.o, rel_error(o.view(), ref.o.view()));
    w.s = std::max(w.s, rel_error(s.view(), ref.final_state.view()));
  }
  return w;
}

template <class Policy>
void report(double g_min) {
  auto row = [&](const char* dtype, Worst rec, Worst chk) {
    std::printf("  %-9s %-9s  %9.2e %9.2e   %9.2e %9.2e\n", Policy::name(), dtype, rec.o, rec.s, chk.o, chk.s);
  };
  row("float64", worst_error<Policy, double>(false, g_min), worst_error<Policy, double>(true, g_min));
  row("float32", worst_error<Policy, float>(false, g_min), worst_error<Policy, float>(true, g_min));
  row("bfloat16", worst_error<Policy, Eigen::bfloat16>(false, g_min), worst_error<Policy, Eigen::bfloat16>(true, g_min));
  row("float16", worst_error<Policy, Eigen::half>(false, g_min), worst_error<Policy, Eigen::half>(true, g_min));
}

}  // namespace

int main(int argc, char** argv) {
  const double g_min = argc > 1 ? std::atof(argv[1]) : -3.0;
  std::printf("worst relative Frobenius error vs the fp64 recurrence (log-decay in [%g, 0], b in [0, 2]);\n", g_min);
  std::printf("16-bit inputs: same rounded inputs, output kept in fp32 (before the output cast)\n\n");
  std::printf("  %-9s %-9s  %-19s   %-19s\n", "policy", "inputs", "recurrent o / S_T", "chunk(64) o / S_T");
  report<GDR2>(g_min);
  report<KDA>(g_min);
  report<GDN>(g_min);
  report<DeltaNet>(g_min);
  return 0;
}
