// gdr2 CUDA backward — profiling driver (not part of the library or of CI): the backward
// kernels built with GDR2_BWD_PHASES, where block (0, 0) of each kernel records clock64()
// after every barrier; prints the cycles of each barrier-to-barrier phase of grad-1 (with
// the WY part) and the applies, the per-chunk step of the state passes and the whole
// persistent prep block (one phase), for one GDR-2 problem B=1 T=2048 H=16 K=V=128 bf16
// (GDR2_VS=n: value slice n of the state passes; GDR2_DST=1: with an upstream dS_T, whose
// exact tails grad1_tail_kernel runs: its block (0, 0) is traced after grad-1's). The
// applies blocks share their SM with one other block: their phases include its share.
//
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
//        -DGDR2_BWD_PHASES -Icuda/include -Iinclude -isystem /usr/include/eigen3 \
//        cuda/src/backward_phases.cu build-cudabwd/cuda/libgdr2_cuda.a -o bwd_phases
#define GDR2_BWD_PHASES 1
#include <gdr2/cuda/backward.hpp>  // in full, before the kernels include its plain part
#include <gdr2/gdr2.hpp>

#include "backward_kernels.cu"
#include "profiling_inputs.hpp"

#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <vector>

using namespace gdr2;
using bf16 = Eigen::bfloat16;

int main() {
  const Index B = 1, T = 2048, H = 16, D = 128;
  const std::size_t nt = std::size_t(B * T * H * D);
  Problem<bf16> p;
  p.q = make_view<const bf16>(dev_random<bf16>(nt, -.15f, .15f, 1), B, T, H, D);
  p.k = make_view<const bf16>(dev_random<bf16>(nt, -.15f, .15f, 2), B, T, H, D);
  p.v = make_view<const bf16>(dev_random<bf16>(nt, -1.7f, 1.7f, 3), B, T, H, D);
  p.b = make_view<const bf16>(dev_random<bf16>(nt, 0.f, 1.f, 4), B, T, H, D);
  p.w = make_view<const bf16>(dev_random<bf16>(nt, 0.f, 1.f, 5), B, T, H, D);
  p.g = make_view<const float>(dev_random<float>(nt, -1.f, 0.f, 6), B, T, H, D);
  GradOutputs<bf16> up;
  up.d_o = make_view<const bf16>(dev_random<bf16>(nt, -1.f, 1.f, 7), B, T, H, D);
  Gradients<float> gr;
  for (View<float>* g : {&gr.dq, &gr.dk, &gr.dv, &gr.dg, &gr.db, &gr.dw}) {
    float* x = nullptr;
    cudaMalloc(&x, nt * 4);
    *g = make_view(x, B, T, H, D);
  }
  // GDR2_DST=1: an upstream dS_T too, so that each sequence's last chunk runs exactly in
  // grad1_tail_kernel, whose block (0, 0) is traced after grad-1's (the tf32 mode's exact
  // tail: cuda/NOTES.md backward items 33–35)
  if (const char* e = std::getenv("GDR2_DST"); e && std::atoi(e))
    up.d_final_state = make_view<const float>(dev_random<float>(std::size_t(B * H * D * D), -1.f, 1.f, 8), B, H, D, D);
  cuda::BackwardOptions opt;  // GDR2_VS=n: value slice of the state passes (default automatic)
  if (const char* vs = std::getenv("GDR2_VS")) opt.value_slice = std::atoi(vs);
  std::size_t bytes = 0;
  check(cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt));
  void* ws = nullptr;
  cudaMalloc(&ws, bytes);
  for (int rep = 0; rep < 2; ++rep) {  // the second run is the one reported (warm)
    const int zero[2] = {0, 0};
    cudaMemcpyToSymbol(cuda::detail::bwd::gdr2_bwd_nclk, zero, sizeof zero);
    check(cuda::chunk_backward<GDR2>(p, up, gr, {}, ws, bytes, nullptr, opt));
    if (cudaDeviceSynchronize() != cudaSuccess) return 1;
  }
  int cnt[2] = {0, 0};
  cudaMemcpyFromSymbol(cnt, cuda::detail::bwd::gdr2_bwd_nclk, sizeof cnt);
  std::vector<long long> all(2 * 8192);
  cudaMemcpyFromSymbol(all.data(), cuda::detail::bwd::gdr2_bwd_clk, all.size() * 8);
  // the traced kernels in launch order: this problem's preps and reverse pass are the 16-bit
  // kernels (untraced) and the forward gives the chunk states, so grad-1, its exact tails'
  // launch (an upstream dS_T only), the applies
  const bool dst = up.d_final_state.given();
  const char* names[] = {"grad1", dst ? "tails" : "apply", "apply"};
  for (int tr = 0; tr < 2; ++tr) {
    const int n = cnt[tr] < 8192 ? cnt[tr] : 8192;
    const long long* c = all.data() + tr * 8192;
    std::printf("trace %d: block (0, %s)\n", tr, tr ? "last y: head Hv-1 / the reverse role" : "0");
    int k = -1;
    long long prev = 0;
    std::vector<long long> ph;
    auto flush = [&] {
      if (k < 0) return;
      long long tot = 0;
      for (long long x : ph) tot += x;
      std::printf("%-7s %lld cycles, %zu phases:", k < int(std::size(names)) ? names[k] : "?", tot, ph.size());
      for (std::size_t i = 0; i < ph.size() && i < 40; ++i) std::printf(" %lld", ph[i]);
      std::printf("\n");
    };
    for (int i = 0; i < n; ++i) {
      if (c[i] < 0) {
        flush();
        ++k;
        ph.clear();
        prev = -c[i];
        continue;
      }
      ph.push_back(c[i] - prev);
      prev = c[i];
    }
    flush();
  }
  return 0;
}
