// gdr2 CUDA forward — profiling driver (not part of the library or of CI): the forward
// kernels built with GDR2_FWD_PHASES, where thread 0 of block 0 adds the cycles of every
// barrier-to-barrier phase of the chunk prep and of the fused kernel's chunk loop to a
// per-phase sum; prints cycles per chunk and phase for GDR-2, bf16, K = V = 128, and the
// split state pass's step in parts (StepClocks, state block (0, 0), 64 columns):
//   split  B=1 T=32768 H=16, sequential (prep kernel, then state pass; tensor maps): block
//          0 of the persistent prep kernel walks items 0, grid, 2·grid, ...
//   split  the same overlapped (the automatic path: tensor maps), twice for the run-to-run
//          spread, with the polls that found a record unpublished
//   with GDR2_VS128 set also: the overlapped run at 128-column slices (16 state blocks)
//   state blocks: the issuer thread's parts per step too (poll, record copy, and where it
//          waits: for the barrier, or as the record warp for a free stage)
//   with any argument also: fused B=8 T=4096 H=16 (block 0 walks the 64 chunks of
//          (sequence 0, head 0)) and the sequential split with cp.async
//
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
//        -Icuda/include -Iinclude cuda/src/forward_phases.cu -o fwd_phases
#define GDR2_FWD_PHASES 1
#include "launch.cuh"
#include "profiling_inputs.hpp"
#include "tile_maps.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace gdr2::cuda::detail;

#define CK(x) GDR2_PROFILING_CHECK(x)

static const char* kNames[] = {"fused: wait q k b g; prep: record read-out",
                               "G-step: block sums",
                               "G-step: rows, g -> e",
                               "(mark 3: no longer set)",
                               "Grams + leaves",
                               "diag inverses + transforms",
                               "N = A_ii T_ik",
                               "A column walks",
                               "(mark 8: no longer set)",
                               "(mark 9: no longer set)",
                               "Y = A E",
                               "Y store",
                               "wait v w",
                               "state pass",
                               "record stores",
                               "wait q k b g (prep)"};
constexpr int kPhases = int(sizeof(kNames) / sizeof(kNames[0]));  // the ids of GDR2_FWD_MARK

static const char* kStepNames[kStepParts] = {"block barrier",          "record wait (mbarrier)", "chunk state save",
                                   "Z operands (ldmatrix)",  "U, O, R wgmma + wait",   "pack R, O += R Aqk, S issue",
                                   "O += R Aqk wait",        "output staging",         "S update wait",
                                   "proxy fence, loop"};

/// The fused kernel's blocks (GDR2_FWD_SPAN): how long each ran (ns), at what clock rate
/// (its clock64 cycles over its %globaltimer span), and when it started and ended after the
/// first block's start — against the event-timed kernel (`ms`).
static void print_spans(int blocks, float ms) {
  std::vector<long long> sp(std::size_t(kSpanBlocks) * 4);
  CK(cudaMemcpyFromSymbol(sp.data(), gdr2_fwd_span, sizeof(long long) * sp.size()));
  blocks = std::min(blocks, kSpanBlocks);
  long long t0 = sp[0], t1 = sp[1];
  for (int i = 0; i < blocks; ++i) {
    t0 = std::min(t0, sp[4 * i]);
    t1 = std::max(t1, sp[4 * i + 1]);
  }
  std::vector<double> dur, mhz, start, end;
  for (int i = 0; i < blocks; ++i) {
    const long long* b = &sp[4 * i];
    dur.push_back(double(b[1] - b[0]) * 1e-3);
    mhz.push_back(double(b[3] - b[2]) * 1e3 / double(b[1] - b[0]));
    start.push_back(double(b[0] - t0) * 1e-3);
    end.push_back(double(b[1] - t0) * 1e-3);
  }
  auto q = [](std::vector<double> v, double f) {
    std::sort(v.begin(), v.end());
    return v[std::size_t(f * double(v.size() - 1) + 0.5)];
  };
  std::printf("blocks (%d; block 0 carries the marks): kernel %.3f ms by events, first start to last end %.3f ms\n",
              blocks, ms, double(t1 - t0) * 1e-6);
  std::printf("%-22s %9s %9s %9s %9s %9s\n", "", "min", "10%", "median", "90%", "max");
  const char* names[4] = {"span (us)", "clock (MHz)", "start (us)", "end (us)"};
  const std::vector<double>* vs[4] = {&dur, &mhz, &start, &end};
  for (int k = 0; k < 4; ++k)
    std::printf("%-22s %9.1f %9.1f %9.1f %9.1f %9.1f\n", names[k], q(*vs[k], 0), q(*vs[k], .1), q(*vs[k], .5),
                q(*vs[k], .9), q(*vs[k], 1));
  std::printf("block 0: span %.1f us, clock %.0f MHz\n", dur[0], mhz[0]);
}

static void run(int B, int T, int H, Path path, bool tma, bool overlap = false, int vslice = 64) {
  const int D = 128;
  const std::size_t nt = std::size_t(B) * T * H * D;
  ForwardParams f;
  f.q = dev_random<__nv_bfloat16>(nt, -.15f, .15f, 1);
  f.k = dev_random<__nv_bfloat16>(nt, -.15f, .15f, 2);
  f.v = dev_random<__nv_bfloat16>(nt, -1.7f, 1.7f, 3);
  f.b = dev_random<__nv_bfloat16>(nt, 0.f, 1.f, 4);
  f.w = dev_random<__nv_bfloat16>(nt, 0.f, 1.f, 5);
  f.g = dev_random<float>(nt, -1.f, 0.f, 6);
  const Strides3 s3{(long long)T * H * D, (long long)H * D, D};
  f.sq = f.sk = f.sv = f.sb = f.sw = f.sg = f.so = s3;
  f.hg_g = f.hg_b = f.hg_w = H;
  f.B = B, f.T = T, f.Hk = H, f.Hv = H, f.N = B, f.group = 1, f.scale = 0.0883883f;
  f.K = f.V = D;
  CK(cudaMalloc(&f.o, nt * 2));
  float* st = nullptr;
  CK(cudaMalloc(&st, std::size_t(B) * H * D * D * 4));
  CK(cudaMemset(st, 0, std::size_t(B) * H * D * D * 4));
  f.s0 = st;
  f.sT = st;
  const long long ss[4] = {(long long)H * D * D, (long long)D * D, D, 1};
  for (int i = 0; i < 4; ++i) f.s0_stride[i] = f.sT_stride[i] = ss[i];
  f.chunks_per_seq = (T + 63) / 64;
  f.total_chunks = (long long)B * f.chunks_per_seq;
  CK(cudaDeviceGetAttribute(&f.num_sms, cudaDevAttrMultiProcessorCount, 0));
  if (tma) encode_input_maps(f, true, true);
  if (path == Path::split) {
    f.vslice = vslice;
    CK(cudaMalloc(&f.records, std::size_t(f.total_chunks) * H * Record<D>::bytes(false)));
    if (overlap) {
      f.overlap = 1;
      CK(cudaMalloc(&f.flags, std::size_t(f.total_chunks) * H * sizeof(int)));
    }
  }
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  long long cyc[48] = {};
  float ms = 0.f;
  for (int rep = 0; rep < 3; ++rep) {  // the last run is the one reported (warm)
    const long long zero[48] = {};
    CK(cudaMemcpyToSymbol(gdr2_fwd_cycles, zero, sizeof(long long) * 48));
    CK(cudaEventRecord(e0));
    CK((launch_chunk_forward<0, 0>(f, DType::bf16, path, nullptr)));
    CK(cudaEventRecord(e1));
    CK(cudaDeviceSynchronize());
    CK(cudaEventElapsedTime(&ms, e0, e1));
    CK(cudaMemcpyFromSymbol(cyc, gdr2_fwd_cycles, sizeof cyc));
  }
  const int items = path == Path::fused ? f.chunks_per_seq
                                        : int((f.total_chunks * H + f.num_sms - 1) / f.num_sms);
  std::printf("\n%s B=%d T=%d H=%d vs=%d, q k b g by %s: %.3f ms (with the marks); block 0: %d chunks\n",
              path == Path::fused ? "fused" : overlap ? "split (overlapped)" : "split (sequential)", B, T, H,
              f.vslice, f.tma ? "tensor maps" : "cp.async", ms, items);
  long long tot = 0;
  for (int i = 0; i < kPhases; ++i) tot += cyc[i];
  std::printf("%-28s %10s %6s\n", "phase", "cyc/chunk", "share");
  for (int i = 0; i < kPhases; ++i)
    if (cyc[i]) std::printf("%-28s %10.0f %5.1f%%\n", kNames[i], double(cyc[i]) / items, 100.0 * cyc[i] / tot);
  std::printf("%-28s %10.0f\n", "total", double(tot) / items);
  const long long* step = cyc + kStepSlots;
  long long stot = 0;
  for (int i = 0; i < kStepParts; ++i) stot += step[i];
  if (stot) {  // state-pass block (0, 0), whole-warpgroup steps: thread 0's stamps
    std::printf("%-28s %10s %6s\n", "state step (block 0)", "cyc/step", "share");
    for (int i = 0; i < kStepParts; ++i)
      std::printf("%-28s %10.0f %5.1f%%\n", kStepNames[i], double(step[i]) / f.chunks_per_seq, 100.0 * step[i] / stot);
    std::printf("%-28s %10.0f\n", "total", double(stot) / f.chunks_per_seq);
  }
  const long long* help = cyc + kHelpSlots;
  long long htot = 0;
  for (int i = 0; i < kHelpParts; ++i) htot += help[i];
  if (htot) {  // state-pass block 0, the issuer thread (the record warp's lane 0 when there are helpers)
    static const char* kHelpNames[kHelpParts] = {"poll record flag", "record bulk copy issue", "v w cp.async + arrive",
                                                 "prefetch next v w", "store previous output", "barrier / stage free"};
    std::printf("%-28s %10s %6s\n", "helper issuer (block 0)", "cyc/step", "share");
    for (int i = 0; i < kHelpParts; ++i)
      std::printf("%-28s %10.0f %5.1f%%\n", kHelpNames[i], double(help[i]) / f.chunks_per_seq, 100.0 * help[i] / htot);
    std::printf("%-28s %10.0f\n", "total", double(htot) / f.chunks_per_seq);
  }
  if (path == Path::fused) print_spans(B * H, ms);
  if (overlap)  // block 0's waits for records the prep had not published yet
    std::printf("%-28s %10.2f\n", "unpublished polls per step", double(cyc[kUnpublishedSlot]) / f.chunks_per_seq);
}

int main(int argc, char** argv) {
  const bool all = argc > 1;  // any argument: also the fused and the cp.async runs
  if (all) run(8, 4096, 16, Path::fused, true);
  run(1, 32768, 16, Path::split, true);                // sequential, 64-column slices
  run(1, 32768, 16, Path::split, true, true);          // overlapped (the automatic path)
  run(1, 32768, 16, Path::split, true, true);
  if (std::getenv("GDR2_VS128")) run(1, 32768, 16, Path::split, true, true, 128);  // fewer state blocks
  if (all) run(1, 32768, 16, Path::split, false);
  return 0;
}
