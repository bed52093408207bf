// gdr2 quickstart: one random Gated DeltaNet-2 problem through both CPU engines,
// their agreement with the fp64 reference, the KDA / GDN reductions, and speed.
//
//   ./quickstart [T] [H] [K] [V]      (defaults: T=2048, H=8, K=V=128)
#include <gdr2/gdr2.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

using namespace gdr2;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Time `fn` (best of 3 runs) and return tokens/s for `tokens` tokens.
template <class F>
double tokens_per_second(Index tokens, F&& fn) {
  double best = 1e30;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    check(fn());
    best = std::min(best, seconds_since(t0));
  }
  return double(tokens) / best;
}

// Runs policy P's own problem and the same problem expanded to GDR-2 gates.
template <class P>
double reduction_error(const ProblemConfig& cfg) {
  RandomProblem<P, double> rp(cfg);
  ExpandedGates<P, double> full(rp.problem());
  auto o_tied = rp.make_output(), o_full = rp.make_output();
  check(chunk_forward<P>(rp.problem(), Outputs<double, double>{o_tied.view(), {}}));
  check(chunk_forward<GDR2>(full.p, Outputs<double, double>{o_full.view(), {}}));
  return rel_error(o_tied.view(), o_full.view());
}

}  // namespace

int main(int argc, char** argv) {
  ProblemConfig cfg;
  cfg.B = 1;
  cfg.T = argc > 1 ? std::atol(argv[1]) : 2048;
  cfg.Hk = cfg.Hv = argc > 2 ? std::atol(argv[2]) : 8;
  cfg.K = argc > 3 ? std::atol(argv[3]) : 128;
  cfg.V = argc > 4 ? std::atol(argv[4]) : 128;
  cfg.g_min = -1.0;
  cfg.b_max = 2.0;  // the negative-eigenvalue range of the erase gate
  const int threads = int(std::max(1u, std::thread::hardware_concurrency()));
  std::printf("gdr2 %d.%d.%d quickstart: GDR-2, B=%ld T=%ld H=%ld K=%ld V=%ld, fp32, %d threads\n", GDR2_VERSION_MAJOR,
              GDR2_VERSION_MINOR, GDR2_VERSION_PATCH, long(cfg.B), long(cfg.T), long(cfg.Hv), long(cfg.K), long(cfg.V),
              threads);

  // 1. A random problem (q, k L2-normalised; g ∈ [-1, 0]; b ∈ [0, 2]; w ∈ [0, 1]; S0 ≠ 0).
  RandomProblem<GDR2, float> rp(cfg);
  const Problem<float> p = rp.problem();

  // 2. Both engines, on a thread pool the caller owns.
  Eigen::ThreadPool pool(threads - 1);
  ThreadPoolExecutor executor(pool);
  Options opt;
  opt.executor = &executor;
  auto o_chunk = rp.make_output(), s_chunk = rp.make_state();
  auto o_rec = rp.make_output(), s_rec = rp.make_state();
  const Outputs<float, float> out_chunk{o_chunk.view(), s_chunk.view()};
  const Outputs<float, float> out_rec{o_rec.view(), s_rec.view()};
  const double tps_chunk = tokens_per_second(cfg.T, [&] { return chunk_forward<GDR2>(p, out_chunk, opt); });
  const double tps_rec = tokens_per_second(cfg.T, [&] { return recurrent_forward<GDR2>(p, out_rec, opt); });

  // 3. Agreement with the fp64 recurrence on the same inputs.
  const auto ref = reference_forward<GDR2>(p);
  check(ref.status);
  std::printf("\n  engine      rel. error o   rel. error S_T   tokens/s (x%ld heads)\n", long(cfg.Hv));
  std::printf("  chunk       %.2e       %.2e         %.3g\n", rel_error(o_chunk.view(), ref.o.view()),
              rel_error(s_chunk.view(), ref.final_state.view()), tps_chunk);
  std::printf("  recurrent   %.2e       %.2e         %.3g\n", rel_error(o_rec.view(), ref.o.view()),
              rel_error(s_rec.view(), ref.final_state.view()), tps_rec);
  std::printf("  chunk vs recurrent: %.2e\n", rel_error(o_chunk.view(), o_rec.view()));

  // 4. The reductions: KDA and GDN are GDR-2 with b = w = β (and a scalar decay).
  ProblemConfig small = cfg;
  small.T = 300;
  small.Hk = small.Hv = 2;
  small.K = 32;
  small.V = 48;
  std::printf("\n  reductions (fp64, tied policy vs GDR-2 with expanded gates):\n");
  std::printf("  KDA       %.2e\n", reduction_error<KDA>(small));
  std::printf("  GDN       %.2e\n", reduction_error<GDN>(small));
  std::printf("  DeltaNet  %.2e\n", reduction_error<DeltaNet>(small));
  return 0;
}
