// gdr2 CUDA backward benchmarks (issue 6 targets on the H100: forward + backward at
// B=8 T=4096 H=16 K=V=128 bf16 ≤ 3.5 ms; B=1 T=32768 H=16 ≤ 4.5 ms).
//
// Every case times each iteration with CUDA events around the timed calls alone and
// reports the median over the iterations as `median_ms` (Google Benchmark's own Time
// column is the mean). Inputs are ≈1.6 GB, far above the 50 MB L2.
//   BM_backward/.../math:m/stages:s   cuda::chunk_backward alone; stages < 5 runs only the
//                                     first s stages (differences = cost of each stage)
//   BM_backward_vs/.../vs:n           the same with a given value slice of the state passes
//   BM_backward_f32/...               the same with fp32 inputs (default math: split tf32)
//   BM_backward_states/...            the same given the forward's chunk states (written once
//                                     by chunk_forward before the timing)
//   BM_backward_recompute/.../mode:r  without them, recomputed as asked (StateRecompute r:
//                                     1 by chunk_forward, 2 by the state kernel; 0 = automatic
//                                     is BM_backward)
//   BM_forward/.../states:s           cuda::chunk_forward alone (automatic path); states:1 also
//                                     writes the chunk states for the backward
//   BM_fwd_bwd/.../states:s           cuda::chunk_forward (automatic path) + chunk_backward;
//                                     states:1 = the forward hands its chunk states over
//   BM_fwd_bwd16/.../states:s         the same with the gradients in bf16 (Gradients<bf16>),
//                                     as the Python ecosystem's kernels return them
//   BM_backward_kda, BM_fwd_bwd_kda   BM_backward, BM_fwd_bwd for KDA (tied β, channel decay)
//   BM_backward_gdn, BM_fwd_bwd_gdn   ... and for GDN (tied β, scalar decay)
// Every case is GDR-2 (channel gates and decay) unless its name says otherwise.
// Counters: GBps = fewest bytes (inputs read once, gradients written once) / median;
// queued_ms = the median of 10 more calls each queued behind a memset (the device's work
// without the host's share of the call, host_us; bench_util.hpp's Timer).
#include <gdr2/cuda/backward.hpp>
#include <gdr2/gdr2.hpp>

#include "bench_util.hpp"

#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <utility>
#include <vector>

using namespace gdr2;
using namespace gdr2::bench;
using bf16 = Eigen::bfloat16;

namespace {

/// One training problem of gate policy Policy on the device: inputs (element type X), dO,
/// dS_T and every gradient the policy has.
template <class Policy, class X>
struct Setup {
  Index B, T, H, D = 128;
  std::vector<void*> owned;
  Problem<X> p;
  GradOutputs<X> up;
  Gradients<float> gr;
  Gradients<X> gr16;  // the same gradients as X (16-bit X only)
  X* o = nullptr;
  float* sT = nullptr;
  float* chunk_states = nullptr;  // allocated by the first case that asks for them
  void* records = nullptr;        // the backward records, likewise
  template <class Y>
  Y* rnd(std::size_t n, double lo, double hi, std::uint64_t seed) {
    Y* x = device_random<Y>(n, lo, hi, seed);
    owned.push_back(x);
    return x;
  }
  template <class Y>
  Y* out(std::size_t n) {
    Y* x = nullptr;
    CK(cudaMalloc(&x, n * sizeof(Y)));
    owned.push_back(x);
    return x;
  }
  Setup(Index B_, Index T_, Index H_) : B(B_), T(T_), H(H_) {
    const std::size_t nt = std::size_t(B * T * H * D), ns = std::size_t(B * H * D * D);
    p.q = make_view<const X>(rnd<X>(nt, -0.15, 0.15, 11), B, T, H, D);
    p.k = make_view<const X>(rnd<X>(nt, -0.15, 0.15, 12), B, T, H, D);
    p.v = make_view<const X>(rnd<X>(nt, -1.7, 1.7, 13), B, T, H, D);
    const Index G = Policy::decay_width(D);
    const std::size_t ng = std::size_t(B * T * H * G);
    if constexpr (Policy::gates == Gates::tied) {
      p.beta = make_view<const X>(rnd<X>(std::size_t(B * T * H), 0.0, 1.0, 14), B, T, H, Index(1));
    } else {
      p.b = make_view<const X>(rnd<X>(nt, 0.0, 1.0, 14), B, T, H, D);
      p.w = make_view<const X>(rnd<X>(nt, 0.0, 1.0, 15), B, T, H, D);
    }
    p.g = make_view<const float>(rnd<float>(ng, -1.0, 0.0, 16), B, T, H, G);
    p.initial_state = make_view<const float>(rnd<float>(ns, -0.5, 0.5, 17), B, H, D, D);
    up.d_o = make_view<const X>(rnd<X>(nt, -1.0, 1.0, 18), B, T, H, D);
    up.d_final_state = make_view<const float>(rnd<float>(ns, -1.0, 1.0, 19), B, H, D, D);
    // every gradient the policy has, as element type E
    auto gradients = [&](auto& gr_e) {
      using E = std::remove_reference_t<decltype(*gr_e.dq.data)>;
      for (View<E>* g : {&gr_e.dq, &gr_e.dk, &gr_e.dv}) *g = make_view(out<E>(nt), B, T, H, D);
      gr_e.dg = make_view(out<E>(ng), B, T, H, G);
      if constexpr (Policy::gates == Gates::tied) {
        gr_e.dbeta = make_view(out<E>(std::size_t(B * T * H)), B, T, H, Index(1));
      } else {
        for (View<E>* g : {&gr_e.db, &gr_e.dw}) *g = make_view(out<E>(nt), B, T, H, D);
      }
      gr_e.d_initial_state = make_view(out<E>(ns), B, H, D, D);
    };
    gradients(gr);
    if constexpr (!std::is_same_v<X, float>) gradients(gr16);
    o = out<X>(nt);
    sT = out<float>(ns);
  }
  ~Setup() {
    for (void* x : owned) cudaFree(x);
  }
  /// fewest bytes of the backward: q k v dO and the gates (type X) and g read, their fp32
  /// gradients written, S_0 and dS_T read, dS_0 written
  double backward_bytes() const {
    const double gates = Policy::gates == Gates::tied ? 1.0 / double(D) : 2.0,
                 g = double(Policy::decay_width(D)) / double(D);
    return double(B * T * H * D) * ((4 + gates) * sizeof(X) + 4 * g + (3 + gates + g) * 4) + 3.0 * B * H * D * D * 4;
  }
};

/// One setup per shape and type, kept for the whole run (filling 1.6 GB on the host is
/// slow; all of them fit on the GPU together).
template <class Policy, class X>
Setup<Policy, X>& setup(Index B, Index T, Index H) {
  static std::vector<Setup<Policy, X>*> all;
  for (Setup<Policy, X>* s : all)
    if (s->B == B && s->T == T && s->H == H) return *s;
  all.push_back(new Setup<Policy, X>(B, T, H));
  return *all.back();
}

/// Device buffer for the chunk states of su's problem, and the forward's options that
/// write them (ChunkOptions::chunk_states); with `records`, the backward records too
/// (ChunkOptions::backward_records).
template <class Policy, class X>
cuda::ChunkOptions forward_with_states(Setup<Policy, X>& su, bool records = false) {
  cuda::ChunkOptions fo;
  check(cuda::chunk_states_size<Policy>(su.p, fo.chunk_states_bytes));
  if (!su.chunk_states) su.chunk_states = su.template out<float>(fo.chunk_states_bytes / 4);
  fo.chunk_states = su.chunk_states;
  if (records) {
    check(cuda::backward_records_size<Policy>(su.p, fo.backward_records_bytes));
    if (!su.records) su.records = su.template out<char>(fo.backward_records_bytes);
    fo.backward_records = su.records;
  }
  return fo;
}
/// The backward's options given what the forward `fo` wrote.
void given(cuda::BackwardOptions& opt, const cuda::ChunkOptions& fo) {
  opt.chunk_states = fo.chunk_states;
  opt.chunk_states_bytes = fo.chunk_states_bytes;
  opt.backward_records = fo.backward_records;
  opt.backward_records_bytes = fo.backward_records_bytes;
}

/// The forward of su's problem on `s` (allocating its workspace once per call site).
template <class Policy, class X>
struct Forward {
  Setup<Policy, X>& su;
  cuda::ChunkOptions opt;
  std::size_t bytes = 0;
  void* ws = nullptr;
  Forward(Setup<Policy, X>& su_, const cuda::ChunkOptions& o) : su(su_), opt(o) {
    check(cuda::chunk_forward_workspace_size<Policy>(su.p, bytes, opt));
    if (bytes) CK(cudaMalloc(&ws, bytes));
  }
  ~Forward() {
    if (ws) cudaFree(ws);
  }
  void operator()(cudaStream_t s) const {
    const Outputs<X, float> out{make_view(su.o, su.B, su.T, su.H, su.D), make_view(su.sT, su.B, su.H, su.D, su.D)};
    check(cuda::chunk_forward<Policy>(su.p, out, {}, ws, bytes, s, opt));
  }
};

template <class Policy, class X>
void BM_backward_t(benchmark::State& state, int value_slice = 0, bool with_states = false,
                   cuda::StateRecompute recompute = cuda::StateRecompute::automatic, bool overlap = true,
                   bool records = false) {
  Setup<Policy, X>& su = setup<Policy, X>(state.range(0), state.range(1), state.range(2));
  cuda::BackwardOptions opt;
  opt.recompute_states = recompute;
  opt.math = static_cast<cuda::BackwardMath>(state.range(3));
  opt.stages = int(state.range(4));
  opt.value_slice = value_slice;
  opt.overlap = overlap;
  if constexpr (!std::is_same_v<X, float>) {
    if (with_states) {  // written once, before the timing
      const Forward<Policy, X> fwd(su, forward_with_states(su, records));
      fwd(nullptr);
      CK(cudaDeviceSynchronize());
      given(opt, fwd.opt);
    }
  }
  std::size_t bytes = 0;
  check(cuda::chunk_backward_workspace_size<Policy>(su.p, bytes, opt));
  void* ws = nullptr;
  CK(cudaMalloc(&ws, bytes));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  auto run = [&] { check(cuda::chunk_backward<Policy>(su.p, su.up, su.gr, {}, ws, bytes, s, opt)); };
  for (int i = 0; i < 2; ++i) run();
  CK(cudaStreamSynchronize(s));
  Timer t;
  for (auto _ : state) t.iteration(state, s, run);
  CK(cudaGetLastError());
  const double med = t.median();
  state.counters["median_ms"] = med;
  state.counters["queued_ms"] = t.queued_median(s, run);
  state.counters["host_us"] = t.host_median_us();
  state.counters["GBps"] = su.backward_bytes() / (med * 1e-3) / 1e9;
  state.counters["workspace_GB"] = double(bytes) / 1e9;
  CK(cudaFree(ws));
  CK(cudaStreamDestroy(s));
}

void BM_backward(benchmark::State& state) { BM_backward_t<GDR2, bf16>(state); }
void BM_backward_kda(benchmark::State& state) { BM_backward_t<KDA, bf16>(state); }
void BM_backward_gdn(benchmark::State& state) { BM_backward_t<GDN, bf16>(state); }
/// a value slice of the state passes other than the automatic one
void BM_backward_vs(benchmark::State& state) { BM_backward_t<GDR2, bf16>(state, int(state.range(5))); }
/// fp32 inputs (math 3 = automatic: split tf32)
void BM_backward_f32(benchmark::State& state) { BM_backward_t<GDR2, float>(state); }
/// given the forward's chunk states (vs: value slice of the state pass, 0 = automatic)
void BM_backward_states(benchmark::State& state) { BM_backward_t<GDR2, bf16>(state, int(state.range(5)), true); }
/// given them and the backward records the forward wrote (its fused path at B=8)
void BM_backward_records(benchmark::State& state) {
  BM_backward_t<GDR2, bf16>(state, 0, true, cuda::StateRecompute::automatic, true, true);
}
/// given them, the reverse pass beside the prep (overlap 1, the automatic choice at B=1) or
/// after it (0)
void BM_backward_beside(benchmark::State& state) {
  BM_backward_t<GDR2, bf16>(state, 0, true, cuda::StateRecompute::automatic, state.range(5) != 0);
}
/// without them, recomputed by the forward (mode 1) or the state kernel (mode 2)
void BM_backward_recompute(benchmark::State& state) {
  BM_backward_t<GDR2, bf16>(state, 0, false, static_cast<cuda::StateRecompute>(state.range(5)));
}

/// The forward alone; with states:1 it also writes the chunk states, with states:2 the
/// backward records too.
void BM_forward(benchmark::State& state) {
  Setup<GDR2, bf16>& su = setup<GDR2, bf16>(state.range(0), state.range(1), state.range(2));
  const Forward<GDR2, bf16> fwd(su, state.range(3) ? forward_with_states(su, state.range(3) == 2) : cuda::ChunkOptions{});
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  auto run = [&] { fwd(s); };
  for (int i = 0; i < 2; ++i) run();
  CK(cudaStreamSynchronize(s));
  Timer t;
  for (auto _ : state) t.iteration(state, s, run);
  CK(cudaGetLastError());
  state.counters["median_ms"] = t.median();
  state.counters["queued_ms"] = t.queued_median(s, run);
  state.counters["host_us"] = t.host_median_us();
  CK(cudaStreamDestroy(s));
}

template <class Policy, bool GRAD16 = false>
void BM_fwd_bwd_t(benchmark::State& state) {
  Setup<Policy, bf16>& su = setup<Policy, bf16>(state.range(0), state.range(1), state.range(2));
  // states: 0 none, 1 the chunk states, 2 the chunk states and the backward records
  const bool states = state.range(4) != 0;
  const Forward<Policy, bf16> fwd(su, states ? forward_with_states(su, state.range(4) == 2) : cuda::ChunkOptions{});
  cuda::BackwardOptions bopt;
  bopt.math = static_cast<cuda::BackwardMath>(state.range(3));
  given(bopt, fwd.opt);
  std::size_t bbytes = 0;
  check(cuda::chunk_backward_workspace_size<Policy>(su.p, bbytes, bopt));
  void* bws = nullptr;
  CK(cudaMalloc(&bws, bbytes));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  auto run = [&] {
    fwd(s);
    if constexpr (GRAD16)
      check(cuda::chunk_backward<Policy>(su.p, su.up, su.gr16, {}, bws, bbytes, s, bopt));
    else
      check(cuda::chunk_backward<Policy>(su.p, su.up, su.gr, {}, bws, bbytes, s, bopt));
  };
  for (int i = 0; i < 2; ++i) run();
  CK(cudaStreamSynchronize(s));
  Timer t;
  for (auto _ : state) t.iteration(state, s, run);
  CK(cudaGetLastError());
  const double med = t.median();
  state.counters["median_ms"] = med;
  state.counters["queued_ms"] = t.queued_median(s, run);
  state.counters["host_us"] = t.host_median_us();
  state.counters["workspace_GB"] = double(bbytes) / 1e9;
  CK(cudaFree(bws));
  CK(cudaStreamDestroy(s));
}

void BM_fwd_bwd(benchmark::State& state) { BM_fwd_bwd_t<GDR2>(state); }
void BM_fwd_bwd16(benchmark::State& state) { BM_fwd_bwd_t<GDR2, true>(state); }
void BM_fwd_bwd_kda(benchmark::State& state) { BM_fwd_bwd_t<KDA>(state); }
void BM_fwd_bwd_gdn(benchmark::State& state) { BM_fwd_bwd_t<GDN>(state); }

}  // namespace

// math: 0 tf32, 1 split tf32, 2 fp32; stages: 0 = all
BENCHMARK(BM_backward)
    ->ArgNames({"B", "T", "H", "math", "stages"})
    ->Args({8, 4096, 16, 0, 1})
    ->Args({8, 4096, 16, 0, 2})
    ->Args({8, 4096, 16, 0, 3})
    ->Args({8, 4096, 16, 0, 4})
    ->Args({8, 4096, 16, 0, 0})
    ->Args({8, 4096, 16, 1, 0})
    ->Args({8, 4096, 16, 2, 0})
    ->Args({1, 32768, 16, 0, 1})
    ->Args({1, 32768, 16, 0, 2})
    ->Args({1, 32768, 16, 0, 3})
    ->Args({1, 32768, 16, 0, 4})
    ->Args({1, 32768, 16, 0, 0})
    ->UseManualTime()
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_backward_vs)
    ->ArgNames({"B", "T", "H", "math", "stages", "vs"})
    ->Args({1, 32768, 16, 0, 2, 16})
    ->Args({1, 32768, 16, 0, 2, 64})
    ->Args({8, 4096, 16, 0, 2, 32})
    ->Args({8, 4096, 16, 0, 2, 64})
    ->UseManualTime()
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_backward_f32)
    ->ArgNames({"B", "T", "H", "math", "stages"})
    ->Args({8, 4096, 16, 3, 0})
    ->UseManualTime()
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_backward_states)
    ->ArgNames({"B", "T", "H", "math", "stages", "vs"})
    ->Args({8, 4096, 16, 0, 1, 0})
    ->Args({8, 4096, 16, 0, 2, 0})
    ->Args({8, 4096, 16, 0, 0, 0})
    ->Args({1, 32768, 16, 0, 1, 0})
    ->Args({1, 32768, 16, 0, 2, 0})
    ->Args({1, 32768, 16, 0, 2, 32})
    ->Args({1, 32768, 16, 0, 0, 0})
    ->UseManualTime()
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);
/// given the chunk states and records: stages 1–2 (the prep skipped: the reverse pass alone)
/// and all (stage 1 alone would run the prep: no fp16 reverse pass reads the records then)
BENCHMARK(BM_backward_records)
    ->ArgNames({"B", "T", "H", "math", "stages"})
    ->Args({8, 4096, 16, 0, 2})
    ->Args({8, 4096, 16, 0, 0})
    ->UseManualTime()
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);
/// the reverse pass after (0) and beside (1) the prep at B=1, stages 1–2 and all
void beside_cases(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "T", "H", "math", "stages", "overlap"});
  for (int stages : {2, 0})
    for (int overlap : {0, 1}) b->Args({1, 32768, 16, 0, stages, overlap});
  b->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
}
BENCHMARK(BM_backward_beside)->Apply(beside_cases);
/// both recomputations (mode 1 forward, 2 state kernel) at both shapes, stages 1–2 and all
void recompute_cases(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "T", "H", "math", "stages", "mode"});
  for (const auto& [B, T] : {std::pair{8, 4096}, std::pair{1, 32768}})
    for (int stages : {2, 0})
      for (int mode : {1, 2}) b->Args({B, T, 16, 0, stages, mode});
  b->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
}
BENCHMARK(BM_backward_recompute)->Apply(recompute_cases);
BENCHMARK(BM_forward)
    ->ArgNames({"B", "T", "H", "states"})
    ->Args({8, 4096, 16, 0})
    ->Args({8, 4096, 16, 1})
    ->Args({8, 4096, 16, 2})
    ->Args({1, 32768, 16, 0})
    ->Args({1, 32768, 16, 1})
    ->UseManualTime()
    ->Iterations(10)
    ->Unit(benchmark::kMillisecond);
void fwd_bwd_cases(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "T", "H", "math", "states"});
  for (const auto& [B, T] : {std::pair{8, 4096}, std::pair{1, 32768}})
    for (int states : {0, 1, 2}) b->Args({B, T, 16, 0, states});
  b->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
}
BENCHMARK(BM_fwd_bwd)->Apply(fwd_bwd_cases);
BENCHMARK(BM_fwd_bwd16)->Apply(fwd_bwd_cases);

// KDA and GDN: the stages of the chunk kernels at B=8 (3 − 2: grad-1, 4 − 3: the applies)
// and forward + backward without and with the chunk states
void tied_stages(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "T", "H", "math", "stages"});
  for (int stages : {2, 3, 4, 0}) b->Args({8, 4096, 16, 0, stages});
  b->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
}
void tied_fwd_bwd(benchmark::internal::Benchmark* b) {
  b->ArgNames({"B", "T", "H", "math", "states"})->Args({8, 4096, 16, 0, 0})->Args({8, 4096, 16, 0, 1});
  b->Args({8, 4096, 16, 0, 2});
  b->Args({1, 32768, 16, 0, 1})->UseManualTime()->Iterations(10)->Unit(benchmark::kMillisecond);
}
BENCHMARK(BM_backward_kda)->Apply(tied_stages);
BENCHMARK(BM_backward_gdn)->Apply(tied_stages);
BENCHMARK(BM_fwd_bwd_kda)->Apply(tied_fwd_bwd);
BENCHMARK(BM_fwd_bwd_gdn)->Apply(tied_fwd_bwd);

int main(int argc, char** argv) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("bench_cuda_backward: no CUDA device, nothing to measure\n");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
