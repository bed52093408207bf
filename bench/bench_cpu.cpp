// gdr2 CPU benchmark suite (Google Benchmark).
//
// Case names say engine/direction/policy/dtype, e.g. `chunk/forward/kda/fp32`.
// Every case reports two rate counters, `flops` and `bytes`, so that
// `--benchmark_format=json` output reads as ratios to the ceilings measured in the
// same binary: `ceiling/sgemm` (Eigen's own fp32 GEMM, one independent product per
// thread) and `ceiling/memcpy` (bytes read + written per second, all threads), plus
// `ceiling/token_rows` (the rate at which the engines' strided input rows can be read),
// `ceiling/fma` (the cores' fp32 FMA peak in Eigen's widest packet — AVX-512 or AVX2 — no
// memory traffic) where FMA is compiled in.
//
// FLOPs are counted as in SPEC §3 (see flops.hpp: the WY chunk form; the recurrent
// engine is charged its own 7·K·V per token and head); bytes are the fewest
// possible: every input read once, every output written once.
//
// Every engine case passes a Workspace kept across iterations (Options::workspace), as
// a training or serving loop would: the figures leave out per-call scratch allocation.
// Threads: GDR2_BENCH_THREADS (default: all cores). Shapes: B=1, T=4096, H=16,
// K=V=128 for prefill (and the fp64 reference, `reference/...`); decode with N = 1, 64,
// 256 sequences × H=16.
#include "flops.hpp"

#include <gdr2/gdr2.hpp>

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

using namespace gdr2;
using namespace gdr2::bench;

namespace {

int bench_threads() {
  if (const char* s = std::getenv("GDR2_BENCH_THREADS")) return std::max(1, std::atoi(s));
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

/// One executor for the whole run, with `threads` tasks at most.
struct Pool {
  explicit Pool(int threads) : pool(threads > 1 ? threads - 1 : 1), ex(pool), n(threads) {}
  const Executor& executor() const {
    static const SerialExecutor serial;
    return n > 1 ? static_cast<const Executor&>(ex) : serial;
  }
  Eigen::ThreadPool pool;
  ThreadPoolExecutor ex;
  int n;
};

Pool& pool_for(int threads) {
  static std::unique_ptr<Pool> pools[64];
  auto& p = pools[std::min(threads, 63)];
  if (!p) p = std::make_unique<Pool>(threads);
  return *p;
}

void set_rates(benchmark::State& st, double flops, double bytes) {
  st.counters["flops"] = benchmark::Counter(flops * double(st.iterations()), benchmark::Counter::kIsRate);
  st.counters["bytes"] = benchmark::Counter(bytes * double(st.iterations()), benchmark::Counter::kIsRate);
}

// ---------------------------------------------------------------- ceilings --
void ceiling_sgemm(benchmark::State& st) {
  const int threads = int(st.range(0));
  const Index n = 512;
  std::vector<Eigen::MatrixXf> A(threads, Eigen::MatrixXf::Random(n, n)), B(threads, Eigen::MatrixXf::Random(n, n)),
      C(threads, Eigen::MatrixXf::Zero(n, n));
  const Executor& ex = pool_for(threads).executor();
  for (auto _ : st) {
    parallel_for(ex, threads, [&](Index i, int) { C[size_t(i)].noalias() = A[size_t(i)] * B[size_t(i)]; });
    benchmark::ClobberMemory();
  }
  set_rates(st, 2.0 * n * n * n * threads, 3.0 * n * n * 4 * threads);
}

void ceiling_memcpy(benchmark::State& st) {
  const int threads = int(st.range(0));
  const size_t bytes = size_t(256) << 20;  // well past the caches
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  const Executor& ex = pool_for(threads).executor();
  for (auto _ : st) {
    parallel_for(ex, threads, [&](Index i, int) {
      const size_t part = bytes / size_t(threads), off = size_t(i) * part;
      std::memcpy(dst.data() + off, src.data() + off, part);
    });
    benchmark::ClobberMemory();
  }
  set_rates(st, 0, 2.0 * double(bytes));
}

/// `ceiling/token_rows`: how fast the engines' input reads can go — six fp32 tensors of the
/// prefill shape ([1, 4096, 16, 128], token-major) read as the chunk engine reads them, a
/// 64-token chunk of one head at a time (64 rows of 512 bytes, 8 KB apart) into a scratch
/// that stays in cache, heads in parallel over all threads (gdr2::copy_rows, as the
/// engines' TokenReader). Bytes: the tensors, read once.
void ceiling_token_rows(benchmark::State& st) {
  const int threads = int(st.range(0));
  const Index T = 4096, H = 16, K = 128, C = 64, tensors = 6;
  std::vector<std::vector<float>> src(size_t(tensors), std::vector<float>(size_t(T * H * K), 1.f));
  std::vector<std::vector<float>> scratch(size_t(threads), std::vector<float>(size_t(tensors * C * K)));
  const Executor& ex = pool_for(threads).executor();
  for (auto _ : st) {
    parallel_for(ex, H, [&](Index h, int slot) {
      float* dst = scratch[size_t(slot)].data();
      for (Index t0 = 0; t0 < T; t0 += C)
        for (Index m = 0; m < tensors; ++m)
          copy_rows(make_view<const float>(src[size_t(m)].data(), 1, T, H, K), 0, t0, C, h, K, dst + m * C * K, K);
    });
    benchmark::ClobberMemory();
  }
  set_rates(st, 0, double(tensors * T * H * K) * 4);
}

#if defined(EIGEN_VECTORIZE_FMA)
// The widest fp32 packet Eigen was compiled for (the one sgemm and small_gemm use): the FMA
// ceiling must use what the engines can use.
using VecF = gdr2::detail::GemmTile<float>::Packet;
constexpr int kLanes = gdr2::detail::GemmTile<float>::lanes;

/// 12 independent kLanes-wide FMA chains (enough to cover the FMA latency on two pipes), no
/// memory traffic: the fp32 FLOP peak of the cores, an upper bound no engine can pass.
__attribute__((noinline)) float fma_chains(long n) {
  using namespace Eigen::internal;
  const VecF m = pset1<VecF>(0.99999f), c = pset1<VecF>(1e-7f);
  VecF a[12];
  for (int i = 0; i < 12; ++i) a[i] = pset1<VecF>(float(i));
  for (long k = 0; k < n; ++k) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = pmadd(a[i], m, c);
  }
  VecF s = a[0];
  for (int i = 1; i < 12; ++i) s = padd(s, a[i]);
  return pfirst(s);
}

/// `ceiling/fma`: the cores' peak fp32 FMA rate (2 FLOPs per lane per FMA), all threads.
void ceiling_fma(benchmark::State& st) {
  const int threads = int(st.range(0));
  const long n = 1 << 22;
  std::vector<float> sink(size_t(threads), 0.f);
  const Executor& ex = pool_for(threads).executor();
  for (auto _ : st) {
    parallel_for(ex, threads, [&](Index i, int) { sink[size_t(i)] += fma_chains(n); });
    benchmark::DoNotOptimize(sink.data());
  }
  set_rates(st, 2.0 * kLanes * 12 * double(n) * threads, 0);
}
#endif

// ----------------------------------------------------------------- forward --
/// The prefill shape of every forward/backward case: B=1, T=4096, H=16, K=V=128,
/// log-decays in [−1, 0], erase gates in [0, 2].
ProblemConfig prefill_config() {
  ProblemConfig cfg;
  cfg.B = 1;
  cfg.T = 4096;
  cfg.Hk = cfg.Hv = 16;
  cfg.K = cfg.V = 128;
  cfg.g_min = -1.0;
  cfg.b_max = 2.0;
  return cfg;
}

enum EngineId { kRecurrent = 0, kChunk = 1 };

template <class Policy, class T>
void forward(benchmark::State& st) {
  const int engine = int(st.range(0)), threads = int(st.range(1));
  const ProblemConfig cfg = prefill_config();
  RandomProblem<Policy, T> rp(cfg);
  const auto p = rp.problem();
  Tensor<T> o(cfg.B, cfg.T, cfg.Hv, cfg.V);
  auto s = rp.make_state();
  Options opt;
  opt.executor = &pool_for(threads).executor();
  Workspace ws;  // reused across iterations, as a training or serving loop would
  opt.workspace = &ws;
  const Outputs<T, accum_t<T>> out{o.view(), s.view()};
  for (auto _ : st) {
    const Status r = engine == kChunk ? chunk_forward<Policy>(p, out, opt) : recurrent_forward<Policy>(p, out, opt);
    if (!r.ok()) st.SkipWithError(r.to_string().c_str());
    benchmark::ClobberMemory();
  }
  const Shape sh{cfg.B * cfg.T, cfg.Hk, cfg.Hv, cfg.K, cfg.V};
  const double flops = engine == kChunk ? chunk_forward_flops(sh, 64) : recurrent_forward_flops(sh);
  set_rates(st, flops, forward_bytes<Policy, T>(sh, cfg.B));
}

// ---------------------------------------------------------------- backward --
enum Direction { kBackward = 0, kTrainingStep = 1 };

/// Backward (chunk: from a saved context; recurrent: BPTT with checkpoints) or a whole
/// training step (chunk_forward_save + chunk_backward), fp32, B=1, T=4096, H=16, K=V=128.
template <class Policy>
void backward(benchmark::State& st) {
  const int engine = int(st.range(0)), direction = int(st.range(1)), threads = int(st.range(2));
  const ProblemConfig cfg = prefill_config();
  RandomProblem<Policy, float> rp(cfg);
  RandomUpstream<float> up(rp.problem(), 1);
  GradientBuffers<float> grads(rp.problem());
  auto o = rp.make_output(), s = rp.make_state();
  const Outputs<float, float> out{o.view(), s.view()};
  ChunkContext<float> ctx;
  Options opt;
  opt.executor = &pool_for(threads).executor();
  Workspace ws;  // reused across iterations, as a training or serving loop would
  opt.workspace = &ws;
  const auto p = rp.problem();
  if (engine == kChunk && direction == kBackward && !chunk_forward_save<Policy>(p, out, ctx, opt).ok())
    st.SkipWithError("forward failed");
  for (auto _ : st) {
    Status r;
    if (engine == kRecurrent) {
      r = recurrent_backward<Policy>(p, up.grad_outputs(), grads.views(), opt);
    } else {
      if (direction == kTrainingStep) r = chunk_forward_save<Policy>(p, out, ctx, opt);
      if (r.ok()) r = chunk_backward<Policy>(p, ctx, up.grad_outputs(), grads.views(), opt);
    }
    if (!r.ok()) st.SkipWithError(r.to_string().c_str());
    benchmark::ClobberMemory();
  }
  const Shape sh{cfg.B * cfg.T, cfg.Hk, cfg.Hv, cfg.K, cfg.V};
  double flops = engine == kChunk ? chunk_backward_flops(sh, 64) : recurrent_backward_flops(sh);
  if (direction == kTrainingStep) flops += chunk_forward_flops(sh, 64);
  // Bytes: the forward's inputs read again, dO read, every input's gradient written
  // (fp32), dS0 written; a training step adds the forward's own bytes.
  double bytes = 2 * forward_bytes<Policy, float>(sh, cfg.B);
  if (direction == kTrainingStep) bytes += forward_bytes<Policy, float>(sh, cfg.B);
  st.counters["context_MiB"] = double(ctx.bytes()) / (1 << 20);
  set_rates(st, flops, bytes);
}

// --------------------------------------------------------------- reference --
enum RefDirection { kRefForward = 0, kRefBackward = 1 };

/// The fp64 reference a kernel author checks against (reference.hpp: the recurrence, or
/// the BPTT, in double on the given inputs), on bf16 inputs at the prefill shape: its cost
/// on the calling thread and on the executor (its `executor` argument). Charged the
/// recurrent engine's FLOPs and the inputs' bytes.
template <class Policy>
void reference(benchmark::State& st) {
  const int direction = int(st.range(0)), threads = int(st.range(1));
  const ProblemConfig cfg = prefill_config();
  RandomProblem<Policy, Eigen::bfloat16> rp(cfg);
  const auto p = rp.problem();
  RandomUpstream<Eigen::bfloat16> up(p, 1);
  const Executor* ex = threads > 1 ? &pool_for(threads).executor() : nullptr;
  for (auto _ : st) {
    const Status r = direction == kRefBackward ? reference_backward<Policy>(p, up.grad_outputs(), ex).status
                                               : reference_forward<Policy>(p, ex).status;
    if (!r.ok()) st.SkipWithError(r.to_string().c_str());
    benchmark::ClobberMemory();
  }
  const Shape sh{cfg.B * cfg.T, cfg.Hk, cfg.Hv, cfg.K, cfg.V};
  const double bytes = forward_bytes<Policy, Eigen::bfloat16>(sh, cfg.B);
  set_rates(st, direction == kRefBackward ? recurrent_backward_flops(sh) : recurrent_forward_flops(sh),
            direction == kRefBackward ? 2 * bytes : bytes);
}

// ------------------------------------------------------------------ decode --
template <class Policy>
void decode(benchmark::State& st) {
  const Index N = st.range(0);
  const int threads = int(st.range(1));
  ProblemConfig cfg;
  cfg.B = N;
  cfg.T = 1;
  cfg.Hk = cfg.Hv = 16;
  cfg.K = cfg.V = 128;
  RandomProblem<Policy, float> rp(cfg);
  // A pool twice as large as the batch, requests scattered over it.
  Tensor<float> pool(2 * N, cfg.Hv, cfg.K, cfg.V);
  for (Index i = 0; i < pool.size(); ++i) pool[i] = 0.01f * float(i % 97);
  std::vector<std::int32_t> slots(static_cast<size_t>(N));
  for (Index n = 0; n < N; ++n) slots[size_t(n)] = std::int32_t((2 * n + 1) % (2 * N));
  Tensor<float> o(N, 1, cfg.Hv, cfg.V);
  Options opt;
  opt.executor = &pool_for(threads).executor();
  Workspace ws;  // reused across iterations, as a training or serving loop would
  opt.workspace = &ws;
  for (auto _ : st) {
    const Status r = decode_step<Policy>(rp.problem(), pool.view(), slots.data(), o.view(), opt);
    if (!r.ok()) st.SkipWithError(r.to_string().c_str());
    benchmark::ClobberMemory();
  }
  const Shape sh{N, cfg.Hk, cfg.Hv, cfg.K, cfg.V};
  // Bytes: the state is read and written once per step (the figure the target uses).
  set_rates(st, recurrent_forward_flops(sh), 2.0 * double(N * cfg.Hv * cfg.K * cfg.V) * 4);
}

void register_all() {
  const int T = bench_threads();
  benchmark::RegisterBenchmark("ceiling/sgemm", ceiling_sgemm)->Arg(T)->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("ceiling/sgemm/threads:1", ceiling_sgemm)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond);
#if defined(EIGEN_VECTORIZE_FMA)
  benchmark::RegisterBenchmark("ceiling/fma", ceiling_fma)->Arg(T)->UseRealTime()->Unit(benchmark::kMillisecond);
#endif
  benchmark::RegisterBenchmark("ceiling/memcpy", ceiling_memcpy)->Arg(T)->UseRealTime()->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("ceiling/token_rows", ceiling_token_rows)->Arg(T)->UseRealTime()->Unit(benchmark::kMillisecond);
#define GDR2_FWD(POL, TY, tag)                                                                                   \
  benchmark::RegisterBenchmark("chunk/forward/" #tag, forward<POL, TY>)->Args({kChunk, T})->UseRealTime()->Unit( \
      benchmark::kMillisecond);                                                                                  \
  benchmark::RegisterBenchmark("recurrent/forward/" #tag, forward<POL, TY>)                                      \
      ->Args({kRecurrent, T})                                                                                    \
      ->UseRealTime()                                                                                            \
      ->Unit(benchmark::kMillisecond);
  GDR2_FWD(GDR2, float, gdr2/fp32)
  GDR2_FWD(KDA, float, kda/fp32)
  GDR2_FWD(GDN, float, gdn/fp32)
  GDR2_FWD(GDR2, Eigen::bfloat16, gdr2/bf16)
  GDR2_FWD(KDA, Eigen::bfloat16, kda/bf16)
  GDR2_FWD(GDN, Eigen::bfloat16, gdn/bf16)
#undef GDR2_FWD
#define GDR2_BWD(POL, tag)                                                                                          \
  benchmark::RegisterBenchmark("chunk/backward/" #tag, backward<POL>)->Args({kChunk, kBackward, T})->UseRealTime()->Unit( \
      benchmark::kMillisecond);                                                                                     \
  benchmark::RegisterBenchmark("chunk/forward+backward/" #tag, backward<POL>)                                       \
      ->Args({kChunk, kTrainingStep, T})                                                                            \
      ->UseRealTime()                                                                                               \
      ->Unit(benchmark::kMillisecond);                                                                              \
  benchmark::RegisterBenchmark("recurrent/backward/" #tag, backward<POL>)                                           \
      ->Args({kRecurrent, kBackward, T})                                                                            \
      ->UseRealTime()                                                                                               \
      ->Unit(benchmark::kMillisecond);
  GDR2_BWD(GDR2, gdr2/fp32)
  GDR2_BWD(KDA, kda/fp32)
  GDR2_BWD(GDN, gdn/fp32)
#undef GDR2_BWD
  // Thread scaling of the chunk forward: 1 thread vs all.
  benchmark::RegisterBenchmark("chunk/forward/kda/fp32/threads:1", forward<KDA, float>)
      ->Args({kChunk, 1})
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  // The fp64 reference (GDR-2, bf16 inputs): serial, then on all threads.
  for (int dir : {kRefForward, kRefBackward})
    for (int th : {1, T}) {
      const std::string name = std::string("reference/") + (dir == kRefForward ? "forward" : "backward") +
                               "/gdr2/bf16" + (th == 1 ? "/threads:1" : "");
      benchmark::RegisterBenchmark(name.c_str(), reference<GDR2>)->Args({dir, th})->UseRealTime()->Unit(benchmark::kMillisecond);
    }
  for (Index N : {1, 64, 256}) {
    benchmark::RegisterBenchmark(("decode/kda/fp32/N:" + std::to_string(N)).c_str(), decode<KDA>)
        ->Args({N, T})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark(("decode/gdr2/fp32/N:" + std::to_string(N)).c_str(), decode<GDR2>)
        ->Args({N, T})
        ->UseRealTime()
        ->Unit(benchmark::kMicrosecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
