// gdr2 CUDA backend — the gate-aware chunkwise backward (SPEC §4, numerics §5) on Hopper.
//
//   std::size_t bytes;
//   cuda::chunk_backward_workspace_size<GDR2>(problem, bytes);          // host only
//   cuda::chunk_backward<GDR2>(problem, upstream, grads, dev, ws, bytes, stream);
//
// Same conventions as gdr2_cuda.hpp: every View holds DEVICE memory, Problem::cu_seqlens
// is the HOST copy (validation, planning) and DeviceSequences::cu_seqlens its device
// copy; the caller owns workspace and stream; nothing is allocated or synchronised
// inside a call (graph-capturable); errors come back as a Status before anything is
// enqueued, Code::device_error if a launch fails.
//
// Contract (as the CPU chunk_backward): dL/do in `up.d_o` (type T), optionally dL/dS_T
// in `up.d_final_state` (fp32). Every gradient view given in `gr` — Gradients<float>, or
// Gradients<T> for 16-bit inputs: each gradient the fp32 one rounded to nearest even, bit
// for bit, with half the bytes stored — is overwritten: dq, dk [B,T,Hk,K] summed over the
// value heads of each group (in fp32, rounded once); dv
// [B,T,Hv,V]; dg (channel [.., K] or scalar [.., 1]), db, dw or dbeta with the shape of
// their gate tensor (per key or per value head; tied gates give dβ = Σdb + Σdw, a scalar
// decay dg = Σ_i dg_i, and gate heads shared by several value heads are summed);
// d_initial_state [N, Hv, K, V] (any strides) even when no initial state was given.
// Cross-head sums are deterministic (per-value-head buffers, then a fixed-order sum).
//
// Supported: policies GDR2, KDA, GDN; T = Eigen::bfloat16, Eigen::half or float (fp32
// inputs default to split-tf32 products, BackwardOptions::math); K = V ∈ {64,
// 128}; fixed-length or packed varlen batches (no state pools); log-decays ≤ 0 (every
// exponent the kernels form is a non-positive difference of cumulative log-decays,
// clamped at 0; no 1/γ is formed).
//
// Recomputation strategy (nothing saved by the forward is needed; the forward's chunk
// states, when it was asked to write them — ChunkOptions::chunk_states — replace the
// forward role of stage 2; without them, at few (sequence, head) pairs, chunk_backward
// runs chunk_forward first to write them into its workspace: BackwardOptions::
// recompute_states):
//   1. prep   (one block per 64-token chunk and value head, all chunks in parallel):
//             cumulative decays; the anchored decay Grams T, Aqk (SPEC §5); A = (I+T)⁻¹
//             in fp32 (16×16 diagonal inverses, block substitution); Y = A Ē, U = A Z,
//             Qγ, Ktail, γ_C → a record per chunk-head in the workspace. 16-bit inputs
//             with tf32 products (16-byte-aligned rows): the same record from the
//             forward's fp16 tensor-core prep, persistent blocks that copy the next
//             chunk's inputs while they finish this one (cuda/src/backward_prep16.cuh).
//   2. states (one block per sequence, value head and slice of value columns; two roles
//             in one launch): the forward state pass S_c (start of every chunk) and the
//             reverse pass dS_c (gradient at every chunk end; dS_0 of the first chunk is
//             d_initial_state) — both only read records, so they run side by side.
//             With chunk states (given, or written by the forward) only the reverse
//             pass runs (16-bit inputs: on fp16 warpgroup MMAs, backward_reverse16.cuh);
//             at few (sequence, head) pairs in the same launch as stage 1, beside it
//             (BackwardOptions::overlap: the prep writes records last chunk first and
//             publishes each through a flag in the workspace).
//   3. grad-1 (chunk-parallel): everything that touches S or dS, and the WY part:
//             R = U − Y S, dR = Aqkᵀ dO + Ktail dS (= dU), dZ = Aᵀ dR, dO Sᵀ,
//             dKtail = R dSᵀ, dĒ = −dZ Sᵀ (= Aᵀ dY), dT = −strict_lower(dZ Rᵀ), dAqk,
//             dv = dZ ⊙ w, dw = dZ ⊙ v, Σ dS⊙S — summed over two value halves.
//             With dL/dS_T given, each sequence's last chunk reads dS_T exactly (the
//             products that carry it in split tf32 on its side) in a launch of its own,
//             whose blocks start on the SMs the main launch's last wave leaves free.
//   4. grad-2 (chunk-parallel, two kernels): per chunk-head, its slices of 32 key channels
//             in turn: the decayed applies (pairs of distinct 8-token blocks as products
//             on operands anchored at block boundaries, the 8×8 diagonal blocks exactly),
//             dq dk db, dG and its reverse cumulative sum; then the per-token sums of the
//             tied/scalar gates over the slices, in order.
//   5. reduce (only when some gradient has fewer heads than Hv, or dS_0 is 16-bit):
//             fixed-order head sums; dS_0's conversion.
// With tf32 products (BackwardOptions::math), what is read only as a product operand —
// the record's Qγ, Ktail, A, Y — is stored rounded to tf32 once by its producer instead of
// at every read (cvt.rna is idempotent: the same products); so is the stored dS_c. The
// stored S_c is not: grad-1 sums dS⊙S per key channel (a row dot product) over the fp32
// states first and rounds its S tile in place for the products after (GDN's scalar dg adds
// these sums over all channels, where they largely cancel: cuda/NOTES.md backward item 23).
// Workspace (fp32, per chunk-head of 64 tokens, K = V = D): record 2·64² + 4·64·D + D,
// states and dstates 2·D², grad-1/grad-2 buffers 3·64·D + 2·64² + D + 64 + 4·D floats —
// 429 KB at D = 128, 364 KB when the chunk states are given (D² fewer) — plus a 4-byte
// record flag per chunk-head, per-value-head gradient buffers when a head reduction is
// needed and, for 16-bit inputs, an fp32 dS_0 (N·Hv·D² floats) that 16-bit gradients are
// converted from. See
// chunk_backward_workspace_size; cuda/NOTES.md "Backward" for the measured figures.
#pragma once

#include <cuda_runtime_api.h>

#include "gdr2/cuda/inputs.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace gdr2 {
namespace cuda {
namespace detail {

/// Element types of the inputs (q, k, v, b, w, β, dO: BackwardParams::dtype) and of the
/// stored gradients (BwdSink::dt, BwdReduce::dt).
enum InType : int { kBf16 = 0, kF16 = 1, kF32 = 2 };

/// Where a kernel writes one gradient: [B, T, H, W] addressed with value head hv (either
/// the caller's tensor when it has Hv heads, or a per-value-head fp32 buffer), elements of
/// type dt (16-bit ones rounded to nearest even from the fp32 values).
struct BwdSink {
  void* p = nullptr;
  long long sb = 0, st = 0, sh = 0;  // element strides
  int dt = kF32;
  int staged = 0;  // p is a workspace offset until bind_workspace
};

/// A fixed-order sum dst[b, t, h, x] = Σ_{i < ratio} src[b, t, h·ratio + i, x] over the
/// fp32 buffer src [rows, cols, heads·ratio, width] (contiguous), stored as dt: the head sums
/// of gradients with fewer heads than Hv (rows B, cols T), and with 16-bit gradients the
/// conversion of dS_0 (rows N, cols Hv, heads K, width V, ratio 1).
struct BwdReduce {
  const float* src = nullptr;
  void* dst = nullptr;
  long long sb = 0, st = 0, sh = 0, sx = 1;  // dst element strides
  long long rows = 0, cols = 0;
  int width = 0, heads = 0, ratio = 1;
  int dt = kF32;
};

/// Plain-old-data launch parameters of the backward kernels.
/// The inputs (InputViews) as the forward's, then dL/do, states and gradients.
struct BackwardParams : InputViews {
  const void* d_o = nullptr;
  Strides3 sdo;
  const float* s0 = nullptr;
  long long s0s[4] = {};
  const float* dsT = nullptr;
  long long dsTs[4] = {};
  const void* cu_seqlens = nullptr;
  int cu_wide = 0;
  int D = 0;
  int dtype = 0;         // inputs q k v b w β dO (InType)
  int vec = 0;           // 1: every input row and g start on a 4-element boundary (vector loads)
  int vec_out = 0;       // 1: every per-channel gradient row starts 16-byte aligned (vector stores)
  int rows16 = 0;        // 1: 16-bit inputs whose per-channel rows (and g's) start 16-byte aligned:
                         //    the tf32 prep runs on the forward's fp16 Prep (tile copies)
  int do_rows16 = 0;     // 1: rows16, and dO's rows start 16-byte aligned too
  int rev16 = 0;         // set by the launcher: the reverse state pass on fp16 warpgroup MMAs, its
                         //    records written by the 16-bit prep (where: rec16_at, backward_kernels.cuh)
  int scalar_decay = 0;  // g is one value per token and head (GDN)
  int tied = 0;          // b = w = β (KDA, GDN)
  int math = 0;          // 0 tf32, 1 split tf32, 2 fp32
  int vs = 0;            // value columns per state-pass block
  int stages = 5;        // stages to run (profiling)
  int saved_states = 0;  // 1: `states` are the forward's chunk states (no forward state pass)
  int overlap = 0;       // 1: the fp16 reverse pass may run beside the 16-bit prep in one launch
                         //    (bwd_reverse_beside_prep; the launcher decides, as for rev16)
  int num_sms = 0;       // the device's SMs (> 0: 132 when they cannot be read): grid sizes
  BwdSink dq, dk, dv, dg, db, dw, dbeta;
  float* ds0 = nullptr;  // fp32 dS_0: the caller's, or (ds0_staged) a workspace buffer that a
  long long ds0s[4] = {};  // BwdReduce converts into the caller's 16-bit tensor
  int ds0_staged = 0;
  BwdReduce red[7];
  int nred = 0;
  long long total_chunks = 0;
  int chunks_per_seq = 0;
  int* chunk_offsets = nullptr;  // [N+1], varlen only
  float* rec = nullptr;
  float* states = nullptr;
  float* dstates = nullptr;
  float* g1 = nullptr;
  int* flags = nullptr;  // [total_chunks · Hv] the overlapped launch's record flags (0 before it)
  // BackwardOptions::backward_records (or the forward a backward runs, StateForward): where
  // the fp16 records lie in the records (rec16_in_record) the 16-bit prep skips its work when
  // *rec_written is 1 (the fused forward wrote them, with R = U − Y S_c in U's slot, which
  // grad-1 then takes as given); elsewhere the launch clears it, as its first stage writes
  // other records over them; null: the records are always the prep's
  int* rec_written = nullptr;
  int rec_given = 0;
};

/// Floats of grad-1's outputs + the per-row sums of grad-2's slices per chunk-head (K = V = D;
/// cuda/src/backward_kernels.cuh G1; one record: bwd_rec_floats in gdr2_cuda.hpp)
constexpr long long bwd_g1_floats(int D) { return 3LL * 64 * D + 2LL * 64 * 64 + D + 64 + 2LL * 64 * (D / 32); }

/// Whether the state kernel's two roles (forward S_c and reverse dS_c), one block per
/// (sequence, value head, slice of vs columns) each, fit side by side in one wave of `sms`
/// SMs: the launcher then runs them in one launch instead of the forward role and the fp16
/// reverse pass one after the other, and the plan has the forward (chunk_forward) write the
/// chunk states instead (BackwardOptions::recompute_states).
constexpr bool bwd_roles_in_one_wave(long long N, long long Hv, int D, int vs, int sms) {
  return 2LL * N * Hv * (D / vs) <= sms;
}

/// Value columns per block of the fp16 reverse state pass (backward_reverse16.cuh).
constexpr int kBwdRevCols = 64;

/// Whether the fp16 reverse pass — one block per (sequence, value head, kBwdRevCols columns),
/// each walking its sequence's chunks one after the other — runs beside the 16-bit prep in
/// one launch: when its blocks take at most a quarter of the `sms` SMs (B=1 T=32768 H=16:
/// 32 of 132), so that the prep on the others loses less than the reverse pass's time
/// (cuda/NOTES.md backward item 24).
constexpr bool bwd_reverse_beside_prep(long long N, long long Hv, int D, int sms) {
  return 4LL * N * Hv * (D / kBwdRevCols) <= sms;
}

/// Enqueue every backward kernel (device pointers in p) on `stream`.
cudaError_t launch_backward(const BackwardParams& p, cudaStream_t stream);
/// Run the same kernel bodies on the host, block after block (host pointers in p): with
/// fp32 products, or, when `emulate_tf32` and p.math is tf32, with the tf32 mode's products
/// (testing::HostProducts); each block as one thread (`threads` 0), or its threads one after
/// another between barriers in ascending (1) or descending (2) order (testing::HostThreads).
/// Returns an empty string, or what went wrong (threads at different barriers).
std::string run_backward_host(const BackwardParams& p, bool emulate_tf32, int threads = 0);

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2

// The kernels (compiled by nvcc) see only the plain-old-data part above.
#ifndef GDR2_CUDA_BACKWARD_PARAMS_ONLY

#include <gdr2/cuda/gdr2_cuda.hpp>

#include <climits>
#include <string>
#include <type_traits>

namespace gdr2 {
namespace cuda {

/// Arithmetic of the block matrix products of the backward.
enum class BackwardMath {
  /// tensor cores, tf32 operands (10-bit mantissa), fp32 accumulation; when dL/dS_T is given,
  /// each sequence's last chunk reads dS_T as given and runs the three products that carry it
  /// in split tf32 on its side (its undecayed terms can cancel below tf32's precision:
  /// cuda/NOTES.md backward items 33, 34)
  tf32,
  tf32x3,     ///< tensor cores, split tf32 operands (three products): about fp32 accuracy
  fp32,       ///< CUDA-core fp32 FMAs (slowest; a reference for the other two)
  automatic,  ///< the default: tf32 for bf16 / fp16 inputs, tf32x3 for fp32 inputs
};

/// Without BackwardOptions::chunk_states: what recomputes the chunk-start states S_c.
enum class StateRecompute {
  /// chunk_forward where the state kernel's two roles would share one wave (few (sequence,
  /// head) pairs, e.g. B=1 T=32768 H=16: its state blocks walk every chunk one after the
  /// other) or where its fused path writes the backward's records too (K = V = 128 and
  /// enough pairs, e.g. B=8 T=4096 H=16: the backward's first stage is then skipped), the
  /// state kernel's forward role elsewhere
  automatic,
  /// chunk_forward (ChunkOptions::chunk_states and backward_records into the workspace, its
  /// o into scratch workspace) whenever it can run: 16-bit inputs whose rows and dO's are
  /// 16-byte aligned (what the fp16 reverse pass after it needs), tf32 products; else the
  /// state kernel
  forward,
  /// the backward's own state kernel (its forward role, on the records of stage 1)
  state_pass,
};

/// Options of the CUDA chunk backward.
struct BackwardOptions {
  /// Products of the backward. automatic (the default) = tf32 for bf16 / fp16 inputs
  /// (measured ≤ 1.5e-3 relative error per gradient vs fp64, within issue 6's 5e-3) and
  /// tf32x3 for fp32 inputs: tf32 products reach 1.5–1.6e-3 on db (the error comes from
  /// the products, not the inputs), over the 1e-3 fp32 inputs must meet; split tf32
  /// measured ≤ 2e-5 (cuda/NOTES.md, Backward, Accuracy).
  BackwardMath math = BackwardMath::automatic;
  /// Value columns per block of the state passes (16, 32, 64 or 128, at most V);
  /// 0 = automatic (the narrowest slice whose blocks still fit in one wave).
  int value_slice = 0;
  /// Profiling only: run just the first `stages` of the five stages (prep, state passes,
  /// grad-1, grad-2, head sums) so that stage costs can be timed by differences; the
  /// gradients are then incomplete. 0 = all (the default).
  int stages = 0;
  /// The chunk-start states the forward wrote for this problem (ChunkOptions::
  /// chunk_states: device, fp32 [C, Hv, K, V], 16-byte aligned): the backward then
  /// reads them instead of running its forward state pass, and needs D²·4 bytes less
  /// workspace per chunk-head. tf32 products only (the forward computes them to the tf32
  /// mode's precision); null (the default): the backward computes the states itself.
  const float* chunk_states = nullptr;
  /// Bytes at chunk_states (checked against gdr2::cuda::chunk_states_size).
  std::size_t chunk_states_bytes = 0;
  /// With chunk_states: the records the forward wrote for this problem (ChunkOptions::
  /// backward_records: device, backward_records_size() bytes, 256-byte aligned). Where the
  /// forward wrote them (its fused path at K = V = 128) and this backward would compute the
  /// same ones (16-bit inputs, tf32 products, 16-byte aligned rows), its first stage is
  /// skipped; elsewhere the backward computes them into this buffer (which its workspace then
  /// does not hold). Null (the default): the backward computes them in its workspace.
  void* backward_records = nullptr;
  /// Bytes at backward_records (checked against gdr2::cuda::backward_records_size).
  std::size_t backward_records_bytes = 0;
  /// Without chunk_states: what recomputes them (StateRecompute; the same gradients within
  /// the tf32 bound either way).
  StateRecompute recompute_states = StateRecompute::automatic;
  /// With few (sequence, head) pairs (bwd_reverse_beside_prep: B=1 T=32768 H=16), 16-bit
  /// inputs and the chunk states in hand (given, or recomputed by the forward): run the
  /// fp16 reverse state pass beside the 16-bit prep in one launch, the prep writing each
  /// sequence's records last chunk first and publishing them through flags in the
  /// workspace. false: the two one after the other (the same gradients, bit for bit).
  bool overlap = true;
};

namespace detail {

template <class Policy>
constexpr bool bwd_policy_supported() {
  return (Policy::decay == Decay::channel && Policy::gates == Gates::channel) ||
         (Policy::decay == Decay::channel && Policy::gates == Gates::tied) ||
         (Policy::decay == Decay::scalar && Policy::gates == Gates::tied);
}

inline constexpr std::size_t bwd_align(std::size_t x) { return (x + 255) / 256 * 256; }

/// The forward that chunk_backward runs before its own kernels to write the chunk-start
/// states into the workspace's state space (BackwardOptions::recompute_states), when the
/// plan chose it. Its o and its own workspace lie at `offset`, in the dS and grad-1 space,
/// which nothing uses until that forward is done.
struct StateForward {
  bool planned = false;  // the shapes and options allow it; it runs if every row (dO's too) is 16-byte aligned
  std::size_t offset = 0, o_bytes = 0, ws_bytes = 0;
};

/// `p` with every given tensor at one aligned placeholder address: the forward's plan sees
/// the shapes and strides alone (the workspace a backward needs must not depend on where
/// the caller's tensors lie). Never dereferenced.
template <class T>
Problem<T> shapes_of(const Problem<T>& p) {
  Problem<T> s = p;
  auto place = [](auto& v) {
    using E = std::remove_reference_t<decltype(*v.data)>;
    if (v.given()) v.data = reinterpret_cast<E*>(std::uintptr_t(256));
  };
  place(s.q), place(s.k), place(s.v), place(s.b), place(s.w), place(s.beta), place(s.g);
  place(s.initial_state);
  return s;
}

/// The InType of inputs or gradients stored as E.
template <class E>
constexpr int bwd_in_type() {
  return std::is_same_v<E, Eigen::bfloat16> ? kBf16 : std::is_same_v<E, Eigen::half> ? kF16 : kF32;
}

/// Validate, then fill `bp` (everything but the workspace and device sequence pointers)
/// and the workspace size. Reads host memory only. Without gradients (`gr` null: the size
/// query) the workspace has room for every gradient either type G could ask for.
template <class Policy, class T, class G>
Status plan_backward(const Problem<T>& p, const GradOutputs<T>* up, const Gradients<G>* gr,
                     const BackwardOptions& opt, int num_sms, BackwardParams& bp, std::size_t& ws_bytes,
                     StateForward& sf) {
  if constexpr (!bwd_policy_supported<Policy>()) {
    return {Code::unsupported, std::string("the CUDA backward implements the gdr2, kda and gdn gate policies, not ") +
                                   Policy::name()};
  } else if constexpr (!std::is_same_v<T, Eigen::bfloat16> && !std::is_same_v<T, Eigen::half> &&
                       !std::is_same_v<T, float>) {
    return {Code::unsupported, "the CUDA backward takes bfloat16, float16 or float32 inputs"};
  } else if constexpr (!std::is_same_v<G, float> && !std::is_same_v<G, T>) {
    return {Code::unsupported, std::string("the CUDA backward writes its gradients as float32 or as the inputs' type (") +
                                   dtype_name<T>() + "), not " + dtype_name<G>()};
  } else {
    Dims d;
    Options o;  // chunk size 64; no host scan of device data
    GDR2_RETURN_IF_ERROR(validate_problem<Policy>(p, o, /*chunked=*/true, d));
    if (d.state_indices) return {Code::unsupported, "backward does not take state_indices (a state pool)"};
    if (p.gate_x.given() || p.l2_norm_qk)
      return {Code::unsupported,
              "the CUDA backward takes g directly: the fused decay gate (gate_x) and l2_norm_qk are not supported"};
    if (up && gr) GDR2_RETURN_IF_ERROR(validate_gradients<Policy>(*up, *gr, p, o, d));
    if (d.K != d.V || (d.K != 64 && d.K != 128)) {
      return {Code::unsupported, "the CUDA backward supports K = V = 64 or 128, got K = " + std::to_string(d.K) +
                                     ", V = " + std::to_string(d.V)};
    }
    if (d.T > INT_MAX / 2 || d.B * d.Hv > INT_MAX / 2 || d.N > INT_MAX / 2 || d.T * d.B > INT_MAX / 2)
      return {Code::unsupported, "sizes beyond 2^30 tokens / heads are not supported by the CUDA backward"};
    const int D = int(d.K);
    int vs = D;
    if (opt.value_slice != 0) {
      if (opt.value_slice != 16 && opt.value_slice != 32 && opt.value_slice != 64 && opt.value_slice != 128)
        return {Code::invalid_argument, "value_slice must be 0, 16, 32, 64 or 128, got " + std::to_string(opt.value_slice)};
      if (opt.value_slice > D)
        return {Code::invalid_argument, "value_slice " + std::to_string(opt.value_slice) + " exceeds V = " + std::to_string(D)};
      vs = opt.value_slice;
    } else {
      const long long pairs = (long long)d.N * d.Hv;
      // the narrowest slice whose blocks (one per SM: 100+ KB of shared memory each) still
      // fit in one wave: every block walks the whole sequence, so a second wave doubles
      // the pass (B=1, T=32768, H=16: 128 blocks of 32 columns, not 256 of 16); one role
      // (reverse) when the forward's chunk states are given, else two
      const int roles = opt.chunk_states ? 1 : 2;
      while (vs > 16 && pairs * roles * (D / (vs / 2)) <= num_sms) vs /= 2;
    }

    BackwardParams& f = bp;
    f = BackwardParams{};
    fill_input_views(p, d, f);
    f.s0 = p.initial_state.data;
    for (int i = 0; i < 4; ++i) f.s0s[i] = p.initial_state.stride[i];
    f.cu_wide = p.cu_seqlens.wide ? 1 : 0;
    f.D = D;
    f.dtype = bwd_in_type<T>();
    f.scalar_decay = Policy::decay == Decay::scalar ? 1 : 0;
    f.tied = Policy::gates == Gates::tied ? 1 : 0;
    const BackwardMath math = opt.math != BackwardMath::automatic  ? opt.math
                              : std::is_same_v<T, float> ? BackwardMath::tf32x3
                                                         : BackwardMath::tf32;
    f.math = math == BackwardMath::tf32 ? 0 : math == BackwardMath::tf32x3 ? 1 : 2;
    f.vs = vs;
    f.num_sms = num_sms;
    if (opt.stages < 0 || opt.stages > 5)
      return {Code::invalid_argument, "stages must be in [0, 5], got " + std::to_string(opt.stages)};
    f.stages = opt.stages == 0 ? 5 : opt.stages;

    long long total = 0;
    if (p.cu_seqlens.given()) {
      for (Index n = 0; n < d.N; ++n) total += (p.cu_seqlens[n + 1] - p.cu_seqlens[n] + 63) / 64;
    } else {
      f.chunks_per_seq = int((d.T + 63) / 64);
      total = (long long)d.N * f.chunks_per_seq;
    }
    f.total_chunks = total;
    GDR2_RETURN_IF_ERROR(
        check_chunk_states(opt.chunk_states, opt.chunk_states_bytes, chunk_states_bytes(total, d.Hv, D, D)));
    if (opt.chunk_states) {
      if (f.math != 0)
        return {Code::invalid_argument,
                "chunk_states carry the forward's tf32-mode precision: they need BackwardOptions::math = tf32 (the "
                "automatic choice for bfloat16 / float16 inputs)"};
      f.saved_states = 1;
    }
    const std::size_t rec_need = backward_records_bytes(total, d.Hv, D);
    GDR2_RETURN_IF_ERROR(check_backward_records(opt.backward_records, opt.backward_records_bytes, rec_need,
                                                opt.chunk_states != nullptr));
    f.rec_given = opt.backward_records ? 1 : 0;

    // workspace: [offsets][flags][records (unless given)][states (unless saved)][dstates][grad-1][head buffers]
    const std::size_t ch = std::size_t(total) * std::size_t(d.Hv);
    std::size_t off = p.cu_seqlens.given() ? bwd_align(std::size_t(d.N + 1) * 4) : 0;
    const std::size_t flags = off;
    off += bwd_align(ch * 4);
    const std::size_t rec = off;
    // (with the flag tail of ChunkOptions::backward_records: a forward run by this backward
    // may write them, StateForward)
    if (!f.rec_given) off += backward_records_bytes(total, d.Hv, D);
    const std::size_t st = off;
    if (!f.saved_states) off += bwd_align(ch * std::size_t(D) * D * 4);
    const std::size_t dst = off;
    off += bwd_align(ch * std::size_t(D) * D * 4);
    const std::size_t g1 = off;
    off += bwd_align(ch * std::size_t(bwd_g1_floats(D)) * 4);
    // Placeholders (offsets into the workspace, turned into pointers by bind_workspace).
    f.chunk_offsets = p.cu_seqlens.given() ? reinterpret_cast<int*>(std::uintptr_t(1)) : nullptr;
    if (f.rec_given) {
      f.rec = static_cast<float*>(opt.backward_records);
      f.rec_written = reinterpret_cast<int*>(static_cast<char*>(opt.backward_records) + rec_need - 256);
    } else {
      f.rec = reinterpret_cast<float*>(rec);
    }
    f.states = f.saved_states ? const_cast<float*>(opt.chunk_states) : reinterpret_cast<float*>(st);
    f.dstates = reinterpret_cast<float*>(dst);
    f.g1 = reinterpret_cast<float*>(g1);
    f.flags = reinterpret_cast<int*>(flags);
    f.overlap = opt.overlap && bwd_reverse_beside_prep(d.N, d.Hv, D, num_sms) ? 1 : 0;

    // gradient sinks: direct when the tensor has Hv heads, else a per-value-head fp32 buffer
    // (workspace: aligned, so only direct sinks can turn the vector stores off: four
    // elements per store, 16 bytes of fp32 or 8 of a 16-bit type)
    const long long tokens = (long long)d.B * d.T;
    f.vec_out = 1;
    // dS_0 as a 16-bit type: the kernels write fp32 into the workspace, a BwdReduce converts
    auto stage_ds0 = [&](void* dst, const std::array<Index, 4>& stride, int dt) {
      BwdReduce& r = f.red[f.nred++];
      r.src = reinterpret_cast<const float*>(off);  // placeholder offset
      r.dst = dst;
      r.sb = stride[0];
      r.st = stride[1];
      r.sh = stride[2];
      r.sx = stride[3];
      r.rows = d.N;
      r.cols = f.Hv;
      r.heads = D;
      r.width = D;
      r.dt = dt;
      f.ds0 = reinterpret_cast<float*>(off);  // placeholder offset
      f.ds0s[0] = (long long)f.Hv * D * D;
      f.ds0s[1] = (long long)D * D;
      f.ds0s[2] = D;
      f.ds0s[3] = 1;
      f.ds0_staged = 1;
      off += bwd_align(std::size_t(d.N) * std::size_t(f.Hv) * std::size_t(D) * std::size_t(D) * 4);
    };
    auto sink = [&](const auto& out, int width, BwdSink& s) {
      using E = std::remove_const_t<std::remove_pointer_t<decltype(out.data)>>;
      if (!out.given()) return;
      const int heads = int(out.shape[2]);
      if (heads == f.Hv) {
        s.p = out.data;
        s.sb = out.stride[0];
        s.st = out.stride[1];
        s.sh = out.stride[2];
        s.dt = bwd_in_type<E>();
        if (width > 1 && (reinterpret_cast<std::uintptr_t>(out.data) % (4 * sizeof(E)) != 0 || s.sb % 4 != 0 ||
                          s.st % 4 != 0 || s.sh % 4 != 0))
          f.vec_out = 0;
        return;
      }
      BwdReduce& r = f.red[f.nred++];
      r.src = reinterpret_cast<const float*>(off);  // placeholder offset
      r.dst = out.data;
      r.sb = out.stride[0];
      r.st = out.stride[1];
      r.sh = out.stride[2];
      r.rows = d.B;
      r.cols = d.T;
      r.width = width;
      r.heads = heads;
      r.ratio = f.Hv / heads;
      r.dt = bwd_in_type<E>();
      s.p = reinterpret_cast<float*>(off);  // placeholder offset
      s.staged = 1;
      s.st = (long long)f.Hv * width;
      s.sb = s.st * d.T;
      s.sh = width;
      off += bwd_align(std::size_t(tokens) * std::size_t(f.Hv) * std::size_t(width) * 4);
    };
    if (gr) {
      sink(gr->dq, D, f.dq);
      sink(gr->dk, D, f.dk);
      sink(gr->dv, D, f.dv);
      sink(gr->dg, f.scalar_decay ? 1 : D, f.dg);
      sink(gr->db, D, f.db);
      sink(gr->dw, D, f.dw);
      sink(gr->dbeta, 1, f.dbeta);
      if constexpr (std::is_same_v<G, float>) {
        f.ds0 = gr->d_initial_state.data;
        for (int i = 0; i < 4; ++i) f.ds0s[i] = gr->d_initial_state.stride[i];
      } else if (gr->d_initial_state.given()) {
        stage_ds0(gr->d_initial_state.data, gr->d_initial_state.stride, bwd_in_type<G>());
      }
    } else {
      // size query: room for every head buffer this problem could need
      Gradients<float> all;
      auto fake = [&](const auto& in, Index width) {
        return in.given() ? View<float>(reinterpret_cast<float*>(std::uintptr_t(16)),
                                        {in.shape[0], in.shape[1], in.shape[2], width},
                                        contiguous_strides({in.shape[0], in.shape[1], in.shape[2], width}))
                          : View<float>();
      };
      all.dq = fake(p.q, D);
      all.dk = fake(p.k, D);
      all.dg = fake(p.g, p.g.given() ? p.g.shape[3] : 1);
      all.db = fake(p.b, D);
      all.dw = fake(p.w, D);
      all.dbeta = fake(p.beta, 1);
      sink(all.dq, D, f.dq);
      sink(all.dk, D, f.dk);
      sink(all.dg, f.scalar_decay ? 1 : D, f.dg);
      sink(all.db, D, f.db);
      sink(all.dw, D, f.dw);
      sink(all.dbeta, 1, f.dbeta);
      if constexpr (!std::is_same_v<T, float>) stage_ds0(nullptr, {0, 0, 0, 0}, kF32);  // 16-bit dS_0's room
    }
    // the forward that recomputes the chunk states (StateRecompute): 16-bit inputs, tf32
    // products, a state pass to replace; automatic where the state kernel's two roles would
    // share one wave (cuda/NOTES.md, backward item 19) or where the forward's fused path
    // writes the records too (item 57)
    sf = StateForward{};
    if constexpr (!std::is_same_v<T, float>) {
      const bool wanted = opt.recompute_states == StateRecompute::forward ||
                          (opt.recompute_states == StateRecompute::automatic &&
                           (bwd_roles_in_one_wave(d.N, d.Hv, D, vs, num_sms) ||
                            (D == 128 && forward_fused_automatic((long long)d.N * d.Hv, num_sms))));
      std::size_t fws = 0;
      if (!f.saved_states && f.math == 0 && f.stages >= 2 && wanted &&
          chunk_forward_workspace_size<Policy>(shapes_of(p), fws).ok()) {
        sf.planned = true;
        sf.offset = dst;
        sf.o_bytes = bwd_align(std::size_t(tokens) * std::size_t(f.Hv) * std::size_t(D) * sizeof(T));
        sf.ws_bytes = fws;
        off = std::max(off, dst + sf.o_bytes + fws);  // within the dS and grad-1 space in practice
      }
    }
    ws_bytes = off;
    return {};
  }
}

/// Turn the workspace offsets of a plan into pointers into `ws`; fill the sequences.
inline void bind_workspace(BackwardParams& f, char* ws, const void* cu_seqlens) {
  auto at = [&](const void* off) { return ws + reinterpret_cast<std::uintptr_t>(off); };
  f.cu_seqlens = cu_seqlens;
  if (f.chunk_offsets) f.chunk_offsets = reinterpret_cast<int*>(ws);
  if (!f.rec_given) f.rec = reinterpret_cast<float*>(at(f.rec));
  if (!f.saved_states) f.states = reinterpret_cast<float*>(at(f.states));
  f.dstates = reinterpret_cast<float*>(at(f.dstates));
  f.g1 = reinterpret_cast<float*>(at(f.g1));
  f.flags = reinterpret_cast<int*>(at(f.flags));
  if (f.ds0_staged) f.ds0 = reinterpret_cast<float*>(at(f.ds0));
  BwdSink* sinks[] = {&f.dq, &f.dk, &f.dv, &f.dg, &f.db, &f.dw, &f.dbeta};
  for (BwdSink* s : sinks)
    if (s->staged) s->p = at(s->p);
  for (int r = 0; r < f.nred; ++r) f.red[r].src = reinterpret_cast<const float*>(at(f.red[r].src));
}

template <class Policy, class T, class G>
Status backward_common(const Problem<T>& p, const GradOutputs<T>& up, const Gradients<G>& gr,
                       const BackwardOptions& opt, int sms, BackwardParams& f, std::size_t& need,
                       StateForward& sf) {
  GDR2_RETURN_IF_ERROR(plan_backward<Policy>(p, &up, &gr, opt, sms, f, need, sf));
  f.d_o = up.d_o.data;
  f.sdo = strides3(up.d_o);
  f.dsT = up.d_final_state.data;
  for (int i = 0; i < 4; ++i) f.dsTs[i] = up.d_final_state.stride[i];
  // Every row of every input read by channel (and dO's) starts on a boundary of `unit`
  // elements, unit = unit_of(sizeof(element)).
  const bool tied = Policy::gates == Gates::tied;
  auto rows_aligned = [&](auto unit_of, bool with_do) {
    auto ok = [&](const auto& v, bool per_channel) {
      if (!v.given() || !per_channel) return true;
      using E = std::remove_const_t<std::remove_pointer_t<decltype(v.data)>>;
      const long long n = unit_of(sizeof(E));
      return reinterpret_cast<std::uintptr_t>(v.data) % (n * sizeof(E)) == 0 && v.stride[0] % n == 0 &&
             v.stride[1] % n == 0 && v.stride[2] % n == 0;
    };
    return ok(p.q, true) && ok(p.k, true) && ok(p.v, true) && ok(p.b, !tied) && ok(p.w, !tied) &&
           ok(p.g, Policy::decay != Decay::scalar) && (!with_do || ok(up.d_o, true));
  };
  // vector loads (four channels per access); else scalar loads (same results)
  f.vec = rows_aligned([](std::size_t) { return 4LL; }, true) ? 1 : 0;
  // the 16-bit prep copies whole rows with 16-byte cp.async: rows of 8 16-bit elements (4 of g)
  f.rows16 = !std::is_same_v<T, float> && rows_aligned([](std::size_t e) { return (long long)(16 / e); }, false)
                 ? 1
                 : 0;
  // the fp16 reverse pass copies dO's rows the same way
  f.do_rows16 = f.rows16 && rows_aligned([](std::size_t e) { return (long long)(16 / e); }, true) ? 1 : 0;
  return {};
}

}  // namespace detail

/// Workspace bytes `chunk_backward` needs for this problem (enough for any set of
/// requested gradients). Reads only host memory (shapes, the host copy of cu_seqlens).
template <class Policy, class T>
Status chunk_backward_workspace_size(const Problem<T>& p, std::size_t& bytes, const BackwardOptions& opt = {}) {
  detail::BackwardParams f;
  detail::StateForward sf;
  const int sms = device_sm_count();
  return detail::plan_backward<Policy>(p, static_cast<const GradOutputs<T>*>(nullptr),
                                       static_cast<const Gradients<float>*>(nullptr), opt, sms > 0 ? sms : 132, f,
                                       bytes, sf);
}

/// Gate-aware chunkwise backward (SPEC §4) on `stream`: overwrites every gradient view
/// given in `gr` (device; G = float, or G = T for bfloat16 / float16 inputs: the same
/// gradients rounded to T), see the contract at the top of this header.
/// `workspace`: device memory of at least chunk_backward_workspace_size bytes, 256-byte
/// aligned. The problem's forward need not have been run: the backward recomputes what
/// it needs from the inputs.
template <class Policy, class T, class G>
Status chunk_backward(const Problem<T>& p, const GradOutputs<T>& up, const Gradients<G>& gr,
                      const DeviceSequences& dev, void* workspace, std::size_t workspace_bytes, cudaStream_t stream,
                      const BackwardOptions& opt = {}) {
  detail::BackwardParams f;
  detail::StateForward sf;
  std::size_t need = 0;
  const int sms = device_sm_count();
  GDR2_RETURN_IF_ERROR(detail::backward_common<Policy>(p, up, gr, opt, sms > 0 ? sms : 132, f, need, sf));
  if (p.cu_seqlens.given() && !dev.cu_seqlens)
    return {Code::invalid_argument, "cu_seqlens given: its device copy (DeviceSequences::cu_seqlens) is required"};
  if (!p.cu_seqlens.given() && dev.cu_seqlens)
    return {Code::invalid_argument, "DeviceSequences::cu_seqlens given but Problem::cu_seqlens (host copy) is not"};
  if (workspace_bytes < need) {
    return {Code::invalid_argument, "workspace of " + std::to_string(workspace_bytes) + " bytes, " +
                                        std::to_string(need) + " needed (chunk_backward_workspace_size)"};
  }
  if (need > 0 && (!workspace || reinterpret_cast<std::uintptr_t>(workspace) % 256 != 0))
    return {Code::invalid_argument, "workspace must be a non-null, 256-byte aligned device pointer"};
  detail::bind_workspace(f, static_cast<char*>(workspace), dev.cu_seqlens);
  if constexpr (!std::is_same_v<T, float>) {
    if (sf.planned && f.do_rows16) {
      // the forward writes the chunk states (its o and workspace in the dS and grad-1
      // space, free until it is done); the kernels then read them as given ones
      char* at = static_cast<char*>(workspace) + sf.offset;
      const Outputs<T, float> scratch{View<T>(reinterpret_cast<T*>(at), p.v.shape, contiguous_strides(p.v.shape)), {}};
      ChunkOptions fo;
      fo.chunk_states = f.states;
      fo.chunk_states_bytes = detail::chunk_states_bytes(f.total_chunks, f.Hv, f.D, f.D);
      // and the records into the workspace's (the flag after them says whether it did)
      fo.backward_records = f.rec;
      fo.backward_records_bytes = detail::backward_records_bytes(f.total_chunks, f.Hv, f.D);
      f.rec_written = reinterpret_cast<int*>(reinterpret_cast<char*>(f.rec) + fo.backward_records_bytes - 256);
      const Status st = chunk_forward<Policy>(p, scratch, {dev.cu_seqlens, nullptr}, at + sf.o_bytes, sf.ws_bytes,
                                              stream, fo);
      if (!st.ok()) return {st.code(), "gdr2::cuda::chunk_backward, recomputing the chunk states: " + st.message()};
      f.saved_states = 1;
    }
  }
  const cudaError_t e = detail::launch_backward(f, stream);
  if (e != cudaSuccess)
    return {Code::device_error, std::string("gdr2::cuda::chunk_backward: ") + cudaGetErrorName(e) + " (" +
                                    cudaGetErrorString(e) + ")"};
  return {};
}

namespace testing {

/// How chunk_backward_on_host forms its products.
enum class HostProducts {
  /// every product in fp32 whatever BackwardOptions::math asks for: the kernels' logic
  /// (errors ≤ 2e-5 against the fp64 BPTT)
  fp32,
  /// as the device does where the host can: in the tf32 mode both operands of every
  /// product rounded as the tensor cores' cvt.rna rounds them (the device's tf32 accuracy
  /// without a GPU, up to the order of the fp32 sums and the 16-bit inputs' prep, which
  /// the host runs in its fp32 form); split tf32 and fp32 products in fp32
  as_device
};

/// How chunk_backward_on_host runs a block's threads.
enum class HostThreads {
  /// one host thread stands for the whole block: every write of a phase precedes every
  /// later read, whatever the barriers say (the fast default)
  one,
  /// each of the block's threads in turn, from one barrier to the next — thread 0, 1, …
  /// (`ascending`) or the last thread first (`descending`) — with asynchronous tile copies
  /// landing at their thread's next barrier, as on the device: a read of another thread's
  /// write (or of a copy) with no barrier between them sees the old value in one of the two
  /// orders, so the two runs differ from `one`'s (a missing barrier found without a GPU).
  /// Slower than `one`: a coroutine switch per thread and barrier.
  ascending,
  descending
};

/// The CUDA backward's kernel bodies executed on the HOST, block after block: same
/// arguments as chunk_backward but every View (and the workspace, sized by
/// chunk_backward_workspace_size) in host memory; Problem::cu_seqlens serves as both
/// copies. For testing the kernels on machines without a GPU; slow.
template <class Policy, class T, class G>
Status chunk_backward_on_host(const Problem<T>& p, const GradOutputs<T>& up, const Gradients<G>& gr,
                              void* workspace, std::size_t workspace_bytes, const BackwardOptions& opt = {},
                              HostProducts products = HostProducts::fp32, HostThreads threads = HostThreads::one) {
  detail::BackwardParams f;
  detail::StateForward sf;  // the host runs its own state pass (no forward here)
  std::size_t need = 0;
  GDR2_RETURN_IF_ERROR(detail::backward_common<Policy>(p, up, gr, opt, 132, f, need, sf));
  if (workspace_bytes < need || (need > 0 && !workspace))
    return {Code::invalid_argument, "workspace of " + std::to_string(workspace_bytes) + " bytes, " +
                                        std::to_string(need) + " needed"};
  detail::bind_workspace(f, static_cast<char*>(workspace), p.cu_seqlens.data);
  const std::string e = detail::run_backward_host(f, products == HostProducts::as_device, int(threads));
  if (!e.empty()) return {Code::internal_error, "gdr2::cuda::testing::chunk_backward_on_host: " + e};
  return {};
}

}  // namespace testing
}  // namespace cuda
}  // namespace gdr2

#endif  // GDR2_CUDA_BACKWARD_PARAMS_ONLY
