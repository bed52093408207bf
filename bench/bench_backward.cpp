// Backward vs forward on the CPU: GDR-2, fp32, B = 1, T = 4096, H = 16, K = V = 128
// (the shape of issue 3's closing note). Each case reports tokens/s (×H heads);
// the backward/forward ratio is the ratio of the times of
//   chunk_forward_save + chunk_backward(ctx)   (a training step)
//   chunk_forward                              (inference)
// run with the same number of threads (the `threads` argument).
#include <gdr2/gdr2.hpp>

#include <benchmark/benchmark.h>

#include <memory>

namespace {

using namespace gdr2;

struct Setup {
  RandomProblem<GDR2, float> rp;
  RandomUpstream<float> up;
  Tensor<float> o, s;
  GradientBuffers<float> grads;
  ChunkContext<float> ctx;
  std::unique_ptr<Eigen::ThreadPool> pool;
  std::unique_ptr<ThreadPoolExecutor> ex;
  Options opt;

  static ProblemConfig config() {
    ProblemConfig c;
    c.B = 1;
    c.T = 4096;
    c.Hk = c.Hv = 16;
    c.K = c.V = 128;
    c.g_min = -1.0;
    c.b_max = 2.0;
    return c;
  }
  explicit Setup(int threads)
      : rp(config()), up(rp.problem(), 1), o(rp.make_output()), s(rp.make_state()), grads(rp.problem()) {
    if (threads > 1) {
      pool = std::make_unique<Eigen::ThreadPool>(threads - 1);  // the calling thread takes one task
      ex = std::make_unique<ThreadPoolExecutor>(*pool);
      opt.executor = ex.get();
    }
  }
  Outputs<float, float> out() { return {o.view(), s.view()}; }
};

void finish(benchmark::State& st, const Setup& s) {
  st.counters["tokens/s"] =
      benchmark::Counter(double(s.rp.T_ * s.rp.cfg.Hv), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_forward(benchmark::State& st) {
  Setup s(int(st.range(0)));
  for (auto _ : st) benchmark::DoNotOptimize(chunk_forward<GDR2>(s.rp.problem(), s.out(), s.opt).ok());
  finish(st, s);
}

void BM_forward_save(benchmark::State& st) {
  Setup s(int(st.range(0)));
  for (auto _ : st) benchmark::DoNotOptimize(chunk_forward_save<GDR2>(s.rp.problem(), s.out(), s.ctx, s.opt).ok());
  st.counters["context_MiB"] = double(s.ctx.bytes()) / (1 << 20);
  finish(st, s);
}

void BM_backward_from_context(benchmark::State& st) {
  Setup s(int(st.range(0)));
  if (!chunk_forward_save<GDR2>(s.rp.problem(), s.out(), s.ctx, s.opt).ok()) st.SkipWithError("forward failed");
  for (auto _ : st)
    benchmark::DoNotOptimize(chunk_backward<GDR2>(s.rp.problem(), s.ctx, s.up.grad_outputs(), s.grads.views(), s.opt).ok());
  finish(st, s);
}

void BM_backward_recompute(benchmark::State& st) {
  Setup s(int(st.range(0)));
  for (auto _ : st)
    benchmark::DoNotOptimize(chunk_backward<GDR2>(s.rp.problem(), s.up.grad_outputs(), s.grads.views(), s.opt).ok());
  finish(st, s);
}

void BM_bptt(benchmark::State& st) {
  Setup s(int(st.range(0)));
  for (auto _ : st)
    benchmark::DoNotOptimize(recurrent_backward<GDR2>(s.rp.problem(), s.up.grad_outputs(), s.grads.views(), s.opt).ok());
  finish(st, s);
}

}  // namespace

BENCHMARK(BM_forward)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_forward_save)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_backward_from_context)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_backward_recompute)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_bptt)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();

BENCHMARK_MAIN();
