// gdr2 CUDA benchmarks (H100 targets of issue 5). Every case times each iteration with
// CUDA events around the call alone, reports the median over all iterations as the
// counter `median_ms` (Google Benchmark's own Time column is the mean), and the rate
// the median implies. The copy and the forward also report `queued_ms`: the same call
// queued behind a memset, so that the events time the device's work without the host's
// share of the call (`host_us`; bench_util.hpp's Timer). Ceilings measured in the same run:
//   copy/1GiB      cudaMemcpyAsync device→device, bytes read + written per second
//   gemm/bf16      cublasGemmEx 8192³ bf16 → fp32 accumulate, FLOP/s
//   state_roundtrip  the decode's access pattern without its arithmetic: 256 × 16 fp32
//                  states of 64 KB, each read whole by one block and written back in place
// Forward inputs (≈1 GB) and the 256-sequence decode pool (268 MB) exceed the 50 MB L2;
// the one-sequence decode rotates over 256 pool slots (64 MB) so no run finds its
// state in L2.
#include <gdr2/cuda/gdr2_cuda.hpp>
#include <gdr2/gdr2.hpp>

#include "bench_util.hpp"
#include "state_roundtrip.hpp"

#include <benchmark/benchmark.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace gdr2;
using namespace gdr2::bench;
using bf16 = Eigen::bfloat16;

namespace {

void BM_copy(benchmark::State& state) {
  const std::size_t bytes = std::size_t(1) << 30;
  void *a, *b;
  CK(cudaMalloc(&a, bytes));
  CK(cudaMalloc(&b, bytes));
  CK(cudaMemset(a, 1, bytes));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  for (int i = 0; i < 3; ++i) CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s));
  Timer t;
  auto copy = [&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s)); };
  for (auto _ : state) t.iteration(state, s, copy);
  const double med = t.median();
  state.counters["median_ms"] = med;
  state.counters["GBps"] = 2.0 * bytes / (med * 1e-3) / 1e9;
  state.counters["queued_ms"] = t.queued_median(s, copy);
  CK(cudaFree(a));
  CK(cudaFree(b));
  CK(cudaStreamDestroy(s));
}

/// Decode's memory pattern alone (state_roundtrip.cu) on the 256 × 16 pool of BM_decode.
void BM_state_roundtrip(benchmark::State& state) {
  const int count = 256 * 16;
  float* S;
  CK(cudaMalloc(&S, std::size_t(count) * 128 * 128 * sizeof(float)));
  CK(cudaMemset(S, 0, std::size_t(count) * 128 * 128 * sizeof(float)));
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  for (int i = 0; i < 3; ++i) CK(state_roundtrip(S, count, s));
  Timer t;
  for (auto _ : state) t.iteration(state, s, [&] { CK(state_roundtrip(S, count, s)); });
  const double med = t.median();
  state.counters["median_us"] = med * 1e3;
  state.counters["GBps"] = 2.0 * count * 128 * 128 * 4 / (med * 1e-3) / 1e9;
  CK(cudaFree(S));
  CK(cudaStreamDestroy(s));
}

void BM_gemm_bf16(benchmark::State& state) {
  const int n = 8192;
  auto* A = device_random<bf16>(std::size_t(n) * n, -1, 1, 1);
  auto* B = device_random<bf16>(std::size_t(n) * n, -1, 1, 2);
  bf16* C;
  CK(cudaMalloc(&C, std::size_t(n) * n * sizeof(bf16)));
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
    state.SkipWithError("cublasCreate failed");
    return;
  }
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cublasSetStream(h, s);
  const float one = 1, zero = 0;
  auto run = [&] {
    if (cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, A, CUDA_R_16BF, n, B, CUDA_R_16BF, n, &zero, C,
                     CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      std::fprintf(stderr, "cublasGemmEx failed\n");
      std::exit(1);
    }
  };
  for (int i = 0; i < 3; ++i) run();
  Timer t;
  for (auto _ : state) t.iteration(state, s, run);
  const double med = t.median();
  state.counters["median_ms"] = med;
  state.counters["TFLOPs"] = 2.0 * n * double(n) * n / (med * 1e-3) / 1e12;
  cublasDestroy(h);
  CK(cudaFree(A));
  CK(cudaFree(B));
  CK(cudaFree(C));
  CK(cudaStreamDestroy(s));
}

/// GDR-2 chunk forward, bf16, K = V = 128; args: B, T, H, path (0 auto, 1 fused, 2 split),
/// value slice of the split path's state pass (0 = automatic), overlap (split path), copy
/// (ChunkOptions::input_copy: 0 automatic, 1 tensor maps, 2 cp.async). With `states` the
/// forward also writes the chunk states (ChunkOptions::chunk_states) for the backward.
void forward_case(benchmark::State& state, bool states) {
  const Index B = state.range(0), T = state.range(1), H = state.range(2), D = 128;
  const auto path = static_cast<cuda::ForwardPath>(state.range(3));
  const int vslice = int(state.range(4));
  const bool overlap = state.range(5) != 0;
  const auto copy = static_cast<cuda::InputCopy>(state.range(6));
  const std::size_t nt = std::size_t(B * T * H * D);
  auto* q = device_random<bf16>(nt, -0.15, 0.15, 11);
  auto* k = device_random<bf16>(nt, -0.15, 0.15, 12);
  auto* v = device_random<bf16>(nt, -1.7, 1.7, 13);
  auto* b = device_random<bf16>(nt, 0.0, 1.0, 14);
  auto* w = device_random<bf16>(nt, 0.0, 1.0, 15);
  auto* g = device_random<float>(nt, -1.0, 0.0, 16);
  auto* s0 = device_random<float>(std::size_t(B * H * D * D), -0.5, 0.5, 17);
  bf16* o;
  float* sT;
  CK(cudaMalloc(&o, nt * sizeof(bf16)));
  CK(cudaMalloc(&sT, std::size_t(B * H * D * D) * sizeof(float)));
  Problem<bf16> p;
  p.q = make_view<const bf16>(q, B, T, H, D);
  p.k = make_view<const bf16>(k, B, T, H, D);
  p.v = make_view<const bf16>(v, B, T, H, D);
  p.b = make_view<const bf16>(b, B, T, H, D);
  p.w = make_view<const bf16>(w, B, T, H, D);
  p.g = make_view<const float>(g, B, T, H, D);
  p.initial_state = make_view<const float>(s0, B, H, D, D);
  Outputs<bf16, float> out{make_view(o, B, T, H, D), make_view(sT, B, H, D, D)};
  cuda::ChunkOptions opt{path, vslice, overlap, copy};
  float* cs = nullptr;
  if (states) {
    check(cuda::chunk_states_size<GDR2>(p, opt.chunk_states_bytes));
    CK(cudaMalloc(&cs, opt.chunk_states_bytes));
    opt.chunk_states = cs;
  }
  std::size_t ws_bytes = 0;
  check(cuda::chunk_forward_workspace_size<GDR2>(p, ws_bytes, opt));
  void* ws = nullptr;
  if (ws_bytes) CK(cudaMalloc(&ws, ws_bytes));
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  for (int i = 0; i < 3; ++i) check(cuda::chunk_forward<GDR2>(p, out, {}, ws, ws_bytes, s, opt));
  CK(cudaStreamSynchronize(s));
  Timer t;
  auto call = [&] { check(cuda::chunk_forward<GDR2>(p, out, {}, ws, ws_bytes, s, opt)); };
  for (auto _ : state) t.iteration(state, s, call);
  CK(cudaGetLastError());
  const double med = t.median();
  // fewest bytes: q k v b w o in bf16, g in fp32, states in and out
  const double bytes = double(nt) * (6 * 2 + 4) + 2.0 * B * H * D * D * 4;
  state.counters["median_ms"] = med;
  state.counters["queued_ms"] = t.queued_median(s, call);
  state.counters["host_us"] = t.host_median_us();
  state.counters["GBps"] = bytes / (med * 1e-3) / 1e9;
  state.counters["workspace_MB"] = double(ws_bytes) / 1e6;
  for (void* x : {(void*)q, (void*)k, (void*)v, (void*)b, (void*)w, (void*)g, (void*)s0, (void*)o, (void*)sT, ws,
                  (void*)cs})
    if (x) CK(cudaFree(x));
  CK(cudaStreamDestroy(s));
}
void BM_forward(benchmark::State& state) { forward_case(state, false); }
/// the same, also writing the chunk states for the backward
void BM_forward_states(benchmark::State& state) { forward_case(state, true); }

/// GDR-2 decode of one token, bf16, K = V = 128, fp32 states; args: sequences, heads,
/// value slice (0 auto, 32, 128), graph (0: one call timed, launch included; 1: 16 calls
/// captured in a CUDA graph, median graph time / 16 = the per-step time of a decode loop).
void BM_decode(benchmark::State& state) {
  const Index B = state.range(0), H = state.range(1), D = 128;
  const int vslice = int(state.range(2));
  const bool graph = state.range(3) != 0;
  const Index pool = std::max<Index>(B, 256);
  const std::size_t nt = std::size_t(B * H * D);
  auto* q = device_random<bf16>(nt, -0.15, 0.15, 21);
  auto* k = device_random<bf16>(nt, -0.15, 0.15, 22);
  auto* v = device_random<bf16>(nt, -1.7, 1.7, 23);
  auto* b = device_random<bf16>(nt, 0.0, 1.0, 24);
  auto* w = device_random<bf16>(nt, 0.0, 1.0, 25);
  auto* g = device_random<float>(nt, -1.0, 0.0, 26);
  auto* S = device_random<float>(std::size_t(pool * H * D * D), -0.5, 0.5, 27);
  bf16* o;
  CK(cudaMalloc(&o, nt * sizeof(bf16)));
  // rotation: call i uses slots (i*B + n) mod pool, so one sequence's state is not in L2
  const int rot = int(pool / B);
  std::vector<std::int32_t> idx_h(std::size_t(rot * B));
  for (int r = 0; r < rot; ++r)
    for (Index n = 0; n < B; ++n) idx_h[std::size_t(r * B + n)] = std::int32_t((r * B + n) % pool);
  std::int32_t* idx;
  CK(cudaMalloc(&idx, idx_h.size() * sizeof(std::int32_t)));
  CK(cudaMemcpy(idx, idx_h.data(), idx_h.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
  Problem<bf16> p;
  p.q = make_view<const bf16>(q, B, 1, H, D);
  p.k = make_view<const bf16>(k, B, 1, H, D);
  p.v = make_view<const bf16>(v, B, 1, H, D);
  p.b = make_view<const bf16>(b, B, 1, H, D);
  p.w = make_view<const bf16>(w, B, 1, H, D);
  p.g = make_view<const float>(g, B, 1, H, D);
  p.initial_state = make_view<const float>(S, pool, H, D, D);
  Outputs<bf16, float> out{make_view(o, B, 1, H, D), make_view(S, pool, H, D, D)};
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  int it = 0;
  auto call = [&] { check(cuda::decode<GDR2>(p, out, idx + std::size_t((it++ % rot) * B), s, vslice)); };
  constexpr int kSteps = 16;
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    cudaGraph_t gr;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int i = 0; i < kSteps; ++i) call();
    CK(cudaStreamEndCapture(s, &gr));
    CK(cudaGraphInstantiate(&exec, gr, 0));
    CK(cudaGraphDestroy(gr));
  }
  auto run = [&] {
    if (graph)
      CK(cudaGraphLaunch(exec, s));
    else
      call();
  };
  for (int i = 0; i < 5; ++i) run();
  CK(cudaStreamSynchronize(s));
  Timer t;
  for (auto _ : state) t.iteration(state, s, run);
  CK(cudaGetLastError());
  const double med = t.median() / (graph ? kSteps : 1);
  const double bytes = 2.0 * B * H * D * D * 4;  // state read + written
  state.counters["median_ms"] = med;
  state.counters["median_us"] = med * 1e3;
  state.counters["GBps"] = bytes / (med * 1e-3) / 1e9;
  if (exec) CK(cudaGraphExecDestroy(exec));
  for (void* x : {(void*)q, (void*)k, (void*)v, (void*)b, (void*)w, (void*)g, (void*)S, (void*)o, (void*)idx})
    CK(cudaFree(x));
  CK(cudaStreamDestroy(s));
}

}  // namespace

BENCHMARK(BM_copy)->UseManualTime()->Iterations(50)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_gemm_bf16)->UseManualTime()->Iterations(30)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_state_roundtrip)->UseManualTime()->Iterations(200)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_forward)
    ->ArgNames({"B", "T", "H", "path", "vs", "ov", "copy"})
    ->Args({8, 4096, 16, 0, 0, 1, 0})  // everything automatic (→ fused, tensor maps)
    ->Args({8, 4096, 16, 1, 0, 1, 1})
    ->Args({8, 4096, 16, 1, 0, 1, 2})  // input tiles by cp.async
    ->Args({8, 4096, 16, 2, 0, 1, 0})
    ->Args({1, 32768, 16, 0, 0, 1, 0})  // automatic (→ overlapped split, tensor maps)
    ->Args({1, 32768, 16, 0, 0, 1, 2})  // the same with cp.async
    ->Args({1, 32768, 16, 2, 16, 0, 0})
    ->Args({1, 32768, 16, 2, 64, 0, 0})  // the overlapped case's slices, prep and state pass one after the other
    ->Args({1, 32768, 16, 2, 64, 0, 2})
    ->Args({1, 32768, 16, 2, 64, 1, 0})
    // the overlapped path's other slices: its state blocks take 16 / 64 SMs instead of 32,
    // leaving the prep (the bound since v17: cuda/NOTES.md) 116 / 68
    ->Args({1, 32768, 16, 2, 128, 1, 0})
    ->Args({1, 32768, 16, 2, 32, 1, 0})
    ->UseManualTime()
    ->Iterations(30)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_forward_states)
    ->ArgNames({"B", "T", "H", "path", "vs", "ov", "copy"})
    ->Args({8, 4096, 16, 1, 0, 1, 1})   // fused
    ->Args({1, 32768, 16, 0, 0, 1, 0})  // automatic (→ overlapped split)
    ->Args({1, 32768, 16, 2, 64, 0, 0})  // split, prep and state pass one after the other
    ->UseManualTime()
    ->Iterations(30)
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_decode)
    ->ArgNames({"B", "H", "vs", "graph"})
    ->Args({256, 16, 32, 0})
    ->Args({256, 16, 128, 0})
    ->Args({256, 16, 0, 1})
    ->Args({256, 16, 32, 1})
    ->Args({256, 16, 128, 1})
    ->Args({1, 16, 0, 0})
    ->Args({1, 16, 0, 1})
    ->Args({1, 16, 128, 1})
    ->UseManualTime()
    ->Iterations(200)
    ->Unit(benchmark::kMicrosecond);

int main(int argc, char** argv) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("bench_cuda: no CUDA device, nothing to measure\n");
    return 0;
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
