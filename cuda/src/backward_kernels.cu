// gdr2 CUDA backend, backward — kernels, launchers, and the host execution of the same
// kernel bodies (run_backward_host, for tests on machines without a GPU).
#include "backward_reverse16.cuh"  // (includes backward_prep16.cuh, backward_kernels.cuh)

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

namespace gdr2 {
namespace cuda {
namespace detail {
namespace bwd {

#define GDR2_BWD_BLOCK                                      \
  extern __shared__ float4 gdr2_bwd_smem[];                 \
  float* sm = reinterpret_cast<float*>(gdr2_bwd_smem);      \
  const Blk bk{int(threadIdx.x), int(blockDim.x)};       \
  GDR2_BWD_MARK(true);

__global__ void __launch_bounds__(kThreads) offsets_kernel(BackwardParams p) {
  GDR2_BWD_BLOCK
  offsets_body(bk, p, sm);
}
template <int D, int MATH>
__global__ void __launch_bounds__(kThreads, 1) prep_kernel(BackwardParams p) {
  GDR2_BWD_BLOCK
  prep_body<D, MATH>(bk, p, (long long)blockIdx.x, int(blockIdx.y), sm);
}
template <int D, int MATH>
__global__ void __launch_bounds__(kThreads, 1) state_kernel(BackwardParams p) {
  GDR2_BWD_BLOCK
  const int ns = p.D / p.vs;
  state_body<D, MATH>(bk, p, int(blockIdx.x) / ns, int(blockIdx.x) % ns, int(blockIdx.y) + p.saved_states, sm);
}
/// grad-1, block (chunk, value head), exact tails (grad1_tail_kernel's) skipped. Every block
/// lets the tail launch start at once: the last wave leaves SMs free for it.
template <int D, int MATH>
__global__ void __launch_bounds__(kThreads, 1) grad1_kernel(BackwardParams p) {
  GDR2_BWD_BLOCK
  grid_launch_dependents();
  const long long cg = blockIdx.x;
  if (exact_tail(p, chunk_loc(p, cg))) return;
  // (records that may be the fused forward's: their own instance, FWD_REC)
  if (MATH == kTf32 && p.rec_written)
    grad1_body<D, MATH, false, MATH == kTf32>(bk, p, cg, int(blockIdx.y), sm);
  else
    grad1_body<D, MATH, false>(bk, p, cg, int(blockIdx.y), sm);
}
/// grad-1 of the exact tails, block (sequence, value head), launched after grad1_kernel with
/// programmatic stream serialization: its inputs were complete before grad1_kernel started,
/// and its blocks run beside grad1_kernel's last wave. Each waits for grad1_kernel before it
/// exits, so that the launches after it find both complete (cuda/NOTES.md backward item 35).
template <int D, int MATH>
__global__ void __launch_bounds__(kThreads, 1) grad1_tail_kernel(BackwardParams p) {
  GDR2_BWD_BLOCK
  const long long cg = tail_chunk(p, int(blockIdx.x));
  if (cg >= 0) {
    if (MATH == kTf32 && p.rec_written)
      grad1_body<D, MATH, true, MATH == kTf32>(bk, p, cg, int(blockIdx.y), sm);
    else
      grad1_body<D, MATH, true>(bk, p, cg, int(blockIdx.y), sm);
  }
  grid_dependency_wait();
}
template <int D, int MATH>
__global__ void __launch_bounds__(kApplyThreads, 2) apply_kernel(BackwardParams p) {
  GDR2_BWD_BLOCK
  apply_body<D, MATH>(bk, p, (long long)blockIdx.x, int(blockIdx.y), sm);
}
template <int D>
__global__ void __launch_bounds__(kThreads) token_kernel(BackwardParams p, long long count) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
    token_elem<D>(p, i);
}
__global__ void __launch_bounds__(kThreads) reduce_kernel(BackwardParams p, int which, long long count) {
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
    reduce_elem(p.red[which], i);
}

#undef GDR2_BWD_BLOCK

/// Blocks of kThreads for a grid-stride kernel over `count` elements (token sums, head sums).
unsigned elem_blocks(long long count) {
  return unsigned(std::min<long long>((count + kThreads - 1) / kThreads, 65536));
}

/// Launch kernel(p) on st with `smem` bytes of dynamic shared memory. `early`: with
/// programmatic stream serialization, so that it may start once every block of the kernel
/// before it has started or called grid_launch_dependents (it must then not read that
/// kernel's outputs before grid_dependency_wait).
template <class K>
cudaError_t launch_with_smem(K kernel, dim3 grid, int smem, cudaStream_t st, const BackwardParams& p,
                             int threads = kThreads, bool early = false) {
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  if (!early) {
    kernel<<<grid, threads, smem, st>>>(p);
    return cudaGetLastError();
  }
  cudaLaunchAttribute attr[1] = {};
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(unsigned(threads));
  cfg.dynamicSmemBytes = std::size_t(smem);
  cfg.stream = st;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, p);
}

/// The reverse pass on fp16 warpgroup MMAs (backward_reverse16.cuh): a block per (sequence,
/// value head, 64 columns).
template <int D>
cudaError_t launch_reverse16(const BackwardParams& p, cudaStream_t st) {
  const dim3 grid(unsigned(p.N * p.Hv * (D / kRevCols)));
  constexpr int smem = Rev16Layout<D>::bytes;
  return p.dtype == 0 ? launch_with_smem(reverse16_kernel<D, __nv_bfloat16>, grid, smem, st, p, kRevThreads)
                      : launch_with_smem(reverse16_kernel<D, __half>, grid, smem, st, p, kRevThreads);
}

long long reduce_count(const BwdReduce& r) {
  return r.rows * r.cols * r.heads * r.width;
}

template <int D, int MATH>
cudaError_t launch_d(const BackwardParams& p_in, cudaStream_t st) {
  cudaError_t e;
  // 16-bit inputs in the tf32 mode: the reverse pass on fp16 warpgroup MMAs
  // (backward_reverse16.cuh), its records written by the 16-bit prep. Without the forward's
  // chunk states the state kernel then runs only its forward role before it — unless both
  // roles fit in one wave of the state kernel, whose two chains then run side by side
  // (B=1 T=32768 H=16: one launch 3.1 ms against 2.3 + 1.1 ms one after the other;
  // cuda/NOTES.md backward item 13, v46). There chunk_backward has the forward write the
  // chunk states first (StateRecompute::automatic) whenever it can.
  BackwardParams p = p_in;
  const bool one_wave = bwd_roles_in_one_wave(p.N, p.Hv, D, p.vs, p.num_sms);
  p.rev16 = MATH == kTf32 && p.dtype != 2 && p.rows16 && p.do_rows16 && p.stages >= 2 &&
                    (p.saved_states || !one_wave)
                ? 1
                : 0;
  // few (sequence, head) pairs with the chunk states in hand: the fp16 reverse pass beside
  // the 16-bit prep in one launch (B=1 T=32768 H=16; cuda/NOTES.md backward item 24)
  const bool beside = p.overlap && p.rev16 && p.saved_states && p.total_chunks > 0;
  // records the forward may have written (BackwardOptions::backward_records) are the 16-bit
  // prep's with the fp16 records inside them; any other first stage writes its own over
  // them, so they are marked as not the forward's any more
  if (p.rec_written && !rec16_in_record<D>(p)) {
    if ((e = cudaMemsetAsync(p.rec_written, 0, sizeof(int), st)) != cudaSuccess) return e;
    p.rec_written = nullptr;
  }
  if (p.chunk_offsets) {
    offsets_kernel<<<1, kThreads, kThreads * 4, st>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  const dim3 chunk_grid(unsigned(p.total_chunks), unsigned(p.Hv));
  if (p.total_chunks > 0 && p.stages >= 1) {
    // 16-bit inputs with tf32 products: the forward's fp16 Prep (backward_prep16.cuh)
    if (beside)
      e = launch_prep_reverse16<D>(p, st);
    else if (MATH == kTf32 && p.dtype != 2 && p.rows16)
      e = launch_prep16<D>(p, st);
    else
      e = launch_with_smem(prep_kernel<D, MATH>, chunk_grid, PrepLayout<D>::floats * 4, st, p);
    if (e != cudaSuccess) return e;
  }
  if (p.stages >= 2) {
    // the state kernel's roles (role = blockIdx.y + saved_states): forward S unless the
    // forward's chunk states are given, reverse dS unless the fp16 reverse pass runs after it
    const unsigned roles = (p.saved_states ? 0u : 1u) + (p.rev16 ? 0u : 1u);
    if (roles) {
      const StateLayout<D> L(p.vs);
      e = launch_with_smem(state_kernel<D, MATH>, dim3(unsigned(p.N * p.Hv * (D / p.vs)), roles), L.floats * 4, st, p);
      if (e != cudaSuccess) return e;
    }
    if (p.rev16 && !beside && (e = launch_reverse16<D>(p, st)) != cudaSuccess) return e;
  }
  if (p.total_chunks > 0 && p.stages >= 3) {
    e = launch_with_smem(grad1_kernel<D, MATH>, chunk_grid, Grad1Layout<D>::floats * 4, st, p);
    if (e != cudaSuccess) return e;
    if (p.dsT) {  // the exact tails, beside grad1_kernel's last wave
      e = launch_with_smem(grad1_tail_kernel<D, MATH>, dim3(unsigned(p.N), unsigned(p.Hv)),
                           Grad1Layout<D>::floats * 4, st, p, kThreads, true);
      if (e != cudaSuccess) return e;
    }
  }
  if (p.total_chunks > 0 && p.stages >= 4) {
    e = launch_with_smem(apply_kernel<D, MATH>, chunk_grid, ApplyLayout::floats * 4, st, p, kApplyThreads);
    if (e != cudaSuccess) return e;
    if (p.tied || p.scalar_decay) {
      const long long count = p.total_chunks * p.Hv * kC;
      token_kernel<D><<<elem_blocks(count), kThreads, 0, st>>>(p, count);
      if ((e = cudaGetLastError()) != cudaSuccess) return e;
    }
  }
  for (int r = 0; r < p.nred && p.stages >= 5; ++r) {
    const long long count = reduce_count(p.red[r]);
    if (count == 0) continue;
    reduce_kernel<<<elem_blocks(count), kThreads, 0, st>>>(p, r, count);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <int D>
cudaError_t launch_m(const BackwardParams& p, cudaStream_t st) {
  if (p.math == kTf32x3) return launch_d<D, kTf32x3>(p, st);
  if (p.math == kFp32) return launch_d<D, kFp32>(p, st);
  return launch_d<D, kTf32>(p, st);
}

template <int D, int MATH>
std::string run_host_d(const BackwardParams& p, int threads) {
  const StateLayout<D> L(p.vs);
  const int floats = std::max({PrepLayout<D>::floats, L.floats, Grad1Layout<D>::floats, ApplyLayout::floats,
                               kThreads});
  std::vector<float> smem(std::size_t(floats) + 4);
  float* sm = smem.data();
  // each block as one thread (threads 0), or its threads one by one between barriers in
  // ascending (1) or descending (2) order, as many as its launch has (launch_d)
  std::unique_ptr<HostBlockThreads> emu[2];
  if (threads) {
    emu[0] = std::make_unique<HostBlockThreads>(kThreads, threads == 2);
    emu[1] = std::make_unique<HostBlockThreads>(kApplyThreads, threads == 2);
  }
  std::string err;
  auto run = [&](const char* kernel, int nthr, auto&& body) {
    if (!err.empty()) return;
    if (!threads) return body(Blk{0, 1});
    HostBlockThreads& ht = *emu[nthr == kThreads ? 0 : 1];
    if (!ht.run([&](int tid) { body(Blk{tid, nthr}); })) err = std::string(kernel) + ": " + ht.error();
  };
  if (p.chunk_offsets) run("offsets", kThreads, [&](const Blk& bk) { offsets_body(bk, p, sm); });
  for (long long cg = 0; cg < p.total_chunks; ++cg)
    for (int hv = 0; hv < p.Hv; ++hv)
      run("prep", kThreads, [&](const Blk& bk) { prep_body<D, MATH>(bk, p, cg, hv, sm); });
  for (int role = p.saved_states; role < 2; ++role)
    for (int pair = 0; pair < p.N * p.Hv; ++pair)
      for (int sl = 0; sl < D / p.vs; ++sl)
        run("state", kThreads, [&](const Blk& bk) { state_body<D, MATH>(bk, p, pair, sl, role, sm); });
  for (long long cg = 0; cg < p.total_chunks; ++cg)
    for (int hv = 0; hv < p.Hv; ++hv)
      run("grad1", kThreads, [&](const Blk& bk) {
        if (exact_tail(p, chunk_loc(p, cg)))
          grad1_body<D, MATH, true>(bk, p, cg, hv, sm);
        else
          grad1_body<D, MATH, false>(bk, p, cg, hv, sm);
      });
  for (long long cg = 0; cg < p.total_chunks; ++cg)
    for (int hv = 0; hv < p.Hv; ++hv)
      run("apply", kApplyThreads, [&](const Blk& bk) { apply_body<D, MATH>(bk, p, cg, hv, sm); });
  if (!err.empty()) return err;
  if (p.tied || p.scalar_decay)
    for (long long i = 0; i < p.total_chunks * p.Hv * kC; ++i) token_elem<D>(p, i);
  for (int r = 0; r < p.nred; ++r) {
    const long long count = reduce_count(p.red[r]);
    for (long long i = 0; i < count; ++i) reduce_elem(p.red[r], i);
  }
  return {};
}

}  // namespace bwd

cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream) {
  return p.D == 128 ? bwd::launch_m<128>(p, stream) : bwd::launch_m<64>(p, stream);
}

std::string run_backward_host(const BackwardParams& p, bool emulate_tf32, int threads) {
  // the host forms tf32 products only when asked to emulate them (mm / mmt's host path)
  const bool tf32 = emulate_tf32 && p.math == bwd::kTf32;
  if (p.D == 128)
    return tf32 ? bwd::run_host_d<128, bwd::kTf32>(p, threads) : bwd::run_host_d<128, bwd::kFp32>(p, threads);
  return tf32 ? bwd::run_host_d<64, bwd::kTf32>(p, threads) : bwd::run_host_d<64, bwd::kFp32>(p, threads);
}

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
