// gdr2 CUDA quickstart: one random Gated DeltaNet-2 problem (bf16 inputs) on the GPU,
// compared with the fp64 CPU recurrence, and timed with CUDA events.
//
//   ./cuda_quickstart [T] [H]      (defaults: T=1024, H=8, K=V=128, B=2)
#include <gdr2/cuda/gdr2_cuda.hpp>
#include <gdr2/gdr2.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace gdr2;
using bf16 = Eigen::bfloat16;

#define CK(x)                                                                                   \
  do {                                                                                          \
    cudaError_t e_ = (x);                                                                       \
    if (e_ != cudaSuccess) {                                                                    \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                             \
    }                                                                                           \
  } while (0)

template <class X>
X* upload(const Tensor<X>& t) {
  X* d = nullptr;
  CK(cudaMalloc(&d, sizeof(X) * std::max<Index>(1, t.size())));
  CK(cudaMemcpy(d, t.data(), sizeof(X) * t.size(), cudaMemcpyHostToDevice));
  return d;
}
template <class X>
View<const X> dview(const X* d, const Tensor<X>& t) {
  const auto& s = t.shape();
  return View<const X>(d, s, contiguous_strides(s));
}

int main(int argc, char** argv) {
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("gdr2 cuda_quickstart: no CUDA device, nothing to do\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  ProblemConfig cfg;
  cfg.B = 2;
  cfg.T = argc > 1 ? std::atol(argv[1]) : 1024;
  cfg.Hk = cfg.Hv = argc > 2 ? std::atol(argv[2]) : 8;
  cfg.K = cfg.V = 128;
  cfg.g_min = -1.0;
  cfg.b_max = 2.0;
  std::printf("gdr2 cuda_quickstart on %s: GDR-2, bf16, B=%ld T=%ld H=%ld K=V=128\n", prop.name, long(cfg.B),
              long(cfg.T), long(cfg.Hv));
  RandomProblem<GDR2, bf16> rp(cfg);
  const auto ref = reference_forward<GDR2>(rp.problem());
  check(ref.status);

  Problem<bf16> p;
  const bf16 *q = upload(rp.q), *k = upload(rp.k), *v = upload(rp.v), *b = upload(rp.b), *w = upload(rp.w);
  const float *g = upload(rp.g), *s0 = upload(rp.initial_state);
  p.q = dview(q, rp.q);
  p.k = dview(k, rp.k);
  p.v = dview(v, rp.v);
  p.b = dview(b, rp.b);
  p.w = dview(w, rp.w);
  p.g = dview(g, rp.g);
  p.initial_state = dview(s0, rp.initial_state);
  Tensor<bf16> o_h(rp.B, rp.T_, cfg.Hv, cfg.V);
  Tensor<float> s_h(rp.N, cfg.Hv, cfg.K, cfg.V);
  bf16* o = nullptr;
  float* sT = nullptr;
  CK(cudaMalloc(&o, sizeof(bf16) * o_h.size()));
  CK(cudaMalloc(&sT, sizeof(float) * s_h.size()));
  Outputs<bf16, float> out{View<bf16>(o, o_h.shape(), contiguous_strides(o_h.shape())),
                           View<float>(sT, s_h.shape(), contiguous_strides(s_h.shape()))};
  std::size_t ws_bytes = 0;
  check(cuda::chunk_forward_workspace_size<GDR2>(p, ws_bytes));
  void* ws = nullptr;
  if (ws_bytes) CK(cudaMalloc(&ws, ws_bytes));
  cudaStream_t st;
  CK(cudaStreamCreate(&st));
  check(cuda::chunk_forward<GDR2>(p, out, {}, ws, ws_bytes, st));
  CK(cudaStreamSynchronize(st));
  CK(cudaMemcpy(o_h.data(), o, sizeof(bf16) * o_h.size(), cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(s_h.data(), sT, sizeof(float) * s_h.size(), cudaMemcpyDeviceToHost));
  const double eo = rel_error(o_h.view(), ref.o.view()), es = rel_error(s_h.view(), ref.final_state.view());

  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < 20; ++i) {
    CK(cudaEventRecord(e0, st));
    check(cuda::chunk_forward<GDR2>(p, out, {}, ws, ws_bytes, st));
    CK(cudaEventRecord(e1, st));
    CK(cudaEventSynchronize(e1));
    float t = 0;
    CK(cudaEventElapsedTime(&t, e0, e1));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  std::printf("  relative error vs fp64 recurrence: output %.2e, final state %.2e\n", eo, es);
  std::printf("  forward: %.3f ms (median of 20), %.1f Mtokens/s\n", ms[ms.size() / 2],
              double(cfg.B * cfg.T) / (ms[ms.size() / 2] * 1e3));
  return (eo < 4e-3 && es < 3e-3) ? 0 : 1;
}
