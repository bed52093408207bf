// gdr2 CUDA backend (Hopper, sm_90a): the chunkwise forward and the decode step on
// the GPU, for the gate policies GDR2, KDA and GDN (gdr2/gates.hpp).
//
// The same Problem / Outputs description as the CPU engines, with DEVICE pointers in
// every View (q, k, v, g, b, w, beta, states, o). Two fields of a Problem are read on
// the host for validation and scheduling and must therefore be HOST copies:
// `cu_seqlens` (packed varlen offsets) and `state_indices`; the kernels read the
// DEVICE copies passed in `DeviceSequences` (same dtype and count). Keeping both lets
// a call validate its arguments without touching device memory.
//
// Contract of every entry point (in the spirit of CUTLASS device APIs):
//   - the caller owns the memory and the stream; nothing is allocated and nothing is
//     synchronised inside a call (all work is enqueued on `stream`), so calls can be
//     captured into a CUDA graph;
//   - chunk_forward_workspace_size says how many workspace bytes chunk_forward needs;
//   - a call returns a failed Status (invalid_argument / unsupported) without
//     enqueuing anything when the arguments are wrong, and Code::device_error when a
//     CUDA call fails (the message names the CUDA error).
//
// Supported: 16-bit inputs (Eigen::bfloat16 or Eigen::half; o in the same type), fp32
// g and states, K = V ∈ {64, 128}, Hv = G·Hk, gate tensors per key or per value head,
// fixed-length batches or packed varlen, optional initial / final state (any strides,
// final may alias initial), state pools through state_indices (−1 skips a sequence).
// 16-bit activations need 16-byte aligned rows (token and head strides multiples of 8
// elements); channel-wise g needs token and head strides that are multiples of 4.
// Numerics: all decay exponents are ≤ 0 (SPEC §5; g must be ≤ 0); fp32 accumulation,
// fp32 triangular solve and fp32 state; tensor-core operands are fp16 (intermediate
// values must stay inside the fp16 range, |x| < 65504).
#pragma once

#include <gdr2/gates.hpp>
#include <gdr2/problem.hpp>
#include <gdr2/status.hpp>

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace gdr2 {
namespace cuda {

/// Device copies of the host-side sequence fields of a Problem.
struct DeviceSequences {
  /// Device copy of Problem::cu_seqlens: the same N+1 offsets, same dtype (int32 or int64).
  const void* cu_seqlens = nullptr;
  /// Device copy of Problem::state_indices: [N] int32 state slots (−1 = skip).
  const std::int32_t* state_indices = nullptr;
};

/// Which kernels the chunk forward uses.
enum class ForwardPath {
  automatic,  ///< fused when there are enough (sequence, head) pairs to fill the GPU, else split
  fused,      ///< one block per (sequence, value head) walks its chunks; no workspace
  split,      ///< chunk-parallel preparation into the workspace, then a state pass split over V
};

/// How the chunk forward copies its input tiles (q, k, b, g, v, w) into shared memory.
enum class InputCopy {
  automatic,    ///< tensor maps (measured faster on every path on an H200 since the state
                ///< pass prefetches its v, w rows: B=1 T=32768 H=16 0.99 against 1.06 ms)
  tensor_maps,  ///< Hopper TMA, one copy per 64-token tile, when the views can be described
                ///< by one (16-byte rows always can); else cp.async
  cp_async,     ///< 16-byte cp.async copies from every thread
};

/// Options of the CUDA chunk forward.
struct ChunkOptions {
  ForwardPath path = ForwardPath::automatic;
  /// Split path: value columns per state-pass block (16, 32, 64 or 128 with K = V = 128;
  /// at most V). 0 = automatic (the widest slice that still gives one block per SM).
  int value_slice = 0;
  /// Split path with few (sequence, head) pairs: run the state pass concurrently with the
  /// chunk preparation in one launch (records published through flags in the workspace).
  bool overlap = true;
  /// How the input tiles are copied (InputCopy).
  InputCopy input_copy = InputCopy::automatic;
  /// Training: where to also write the state at the start of every chunk, for
  /// chunk_backward (BackwardOptions::chunk_states), which then skips its own forward
  /// state pass. Device memory of chunk_states_size() bytes, 16-byte aligned: fp32
  /// [C, Hv, K, V] — C = Σ_n ceil(T_n / 64) states, chunk j of sequence n at row
  /// Σ_{m<n} ceil(T_m / 64) + j — in fp32 as the forward's state pass holds them (the
  /// backward rounds them to tf32 for its products after summing dS ⊙ S over them).
  /// States of sequences skipped by state_indices are left untouched. Null (the default): not
  /// written. Measured on an H100 (bench/RESULTS.md, twenty-sixth session): GDR-2 forward +
  /// backward 6.92–6.94 → 6.25 ms at B=8 T=4096 H=16 and 7.53–7.58 → 6.63–6.64 ms at B=1
  /// T=32768 H=16 (where the backward without them runs the forward again to write them:
  /// BackwardOptions::recompute_states).
  float* chunk_states = nullptr;
  /// Bytes at chunk_states (checked against chunk_states_size).
  std::size_t chunk_states_bytes = 0;
  /// Training, with chunk_states: where to also write what chunk_backward's first stage
  /// (its chunk records: the solved WY factors, U = A (w ⊙ v) and the decayed operand tiles
  /// of every chunk-head) would compute from the same inputs, so that the backward given
  /// them (BackwardOptions::backward_records) skips that stage. The fused path writes them
  /// (K = V = 128, no state_indices); any other path or shape only marks the buffer as not
  /// written, and the backward then fills it itself. Device memory of
  /// backward_records_size() bytes, 256-byte aligned; null (the default): not written.
  void* backward_records = nullptr;
  /// Bytes at backward_records (checked against backward_records_size).
  std::size_t backward_records_bytes = 0;
};

namespace detail {
/// Bytes of `chunks` chunk-start states of Hv heads, K×V fp32 each (the chunk-state layout).
inline std::size_t chunk_states_bytes(long long chunks, long long Hv, long long K, long long V) {
  return std::size_t(chunks) * std::size_t(Hv) * std::size_t(K) * std::size_t(V) * 4;
}
/// Whether chunk_forward's automatic path (ForwardPath::automatic) is the fused one for
/// `pairs` (sequence, value head) pairs on `sms` SMs: one block per pair, so when they fill
/// at least three quarters of the SMs.
constexpr bool forward_fused_automatic(long long pairs, int sms) { return pairs * 4 >= 3LL * sms; }
/// Floats of one backward chunk record (K = V = D; the layout: cuda/src/backward_record.hpp).
constexpr long long bwd_rec_floats(int D) { return 2LL * 64 * 64 + 4LL * 64 * D + D; }
/// Bytes of the backward records of `chunks` chunks of Hv heads (ChunkOptions::
/// backward_records): the records, then a 256-byte tail whose first int says whether the
/// forward wrote them (1) or left them to the backward (0).
inline std::size_t backward_records_bytes(long long chunks, long long Hv, int D) {
  return (std::size_t(chunks) * std::size_t(Hv) * std::size_t(bwd_rec_floats(D)) * 4 + 255) / 256 * 256 + 256;
}
/// The one check of a backward_records argument, forward and backward: absent, or given with
/// its size and 256-byte aligned, together with the chunk states it belongs to.
inline Status check_backward_records(const void* data, std::size_t bytes, std::size_t need, bool chunk_states) {
  if (!data) {
    if (bytes != 0) return {Code::invalid_argument, "backward_records_bytes given without backward_records"};
    return {};
  }
  if (!chunk_states)
    return {Code::invalid_argument, "backward_records need chunk_states too (the backward reads both)"};
  if (reinterpret_cast<std::uintptr_t>(data) % 256 != 0)
    return {Code::invalid_argument, "backward_records must be 256-byte aligned"};
  if (bytes < need)
    return {Code::invalid_argument, "backward_records of " + std::to_string(bytes) + " bytes, " +
                                        std::to_string(need) + " needed (backward_records_size)"};
  return {};
}
/// The one check of a chunk_states argument, forward and backward: absent, or given with
/// its size, 16-byte aligned and at least `need` bytes.
inline Status check_chunk_states(const void* data, std::size_t bytes, std::size_t need) {
  if (!data) {
    if (bytes != 0) return {Code::invalid_argument, "chunk_states_bytes given without chunk_states"};
    return {};
  }
  if (reinterpret_cast<std::uintptr_t>(data) % 16 != 0)
    return {Code::invalid_argument, "chunk_states must be 16-byte aligned"};
  if (bytes < need)
    return {Code::invalid_argument, "chunk_states of " + std::to_string(bytes) + " bytes, " + std::to_string(need) +
                                        " needed (chunk_states_size)"};
  return {};
}
}  // namespace detail

/// Bytes of the chunk-start states of a problem (ChunkOptions::chunk_states):
/// Σ_n ceil(T_n / 64) · Hv · K · V · 4. Reads only host memory.
template <class Policy, class T>
Status chunk_states_size(const Problem<T>& p, std::size_t& bytes);

/// Bytes of the backward records of a problem (ChunkOptions::backward_records,
/// BackwardOptions::backward_records): ≈ 160 KB per chunk of 64 tokens and value head at
/// K = V = 128. Reads only host memory.
template <class Policy, class T>
Status backward_records_size(const Problem<T>& p, std::size_t& bytes);

/// Workspace bytes `chunk_forward` needs for this problem and options (0 for the fused
/// path). Reads only host memory (shapes, the host copy of cu_seqlens).
template <class Policy, class T>
Status chunk_forward_workspace_size(const Problem<T>& p, std::size_t& bytes, const ChunkOptions& opt = {});

/// Chunkwise forward (SPEC §3) on `stream`: o [B, T, Hv, V] (type T) and, when given,
/// the final state [N or pool, Hv, K, V] (fp32). `workspace` is device memory of at
/// least chunk_forward_workspace_size bytes, 256-byte aligned (may be null when 0).
template <class Policy, class T>
Status chunk_forward(const Problem<T>& p, const Outputs<T, float>& out, const DeviceSequences& dev, void* workspace,
                     std::size_t workspace_bytes, cudaStream_t stream, const ChunkOptions& opt = {});

/// Decode (SPEC §1, token by token) of B sequences × T ∈ [1, 64] new tokens on `stream`,
/// the states updated in place in a pool. `p.initial_state` is the pool [P, Hv, K, V]
/// and `out.final_state` the pool written (usually the same memory); sequence n uses
/// slot `state_indices_device[n]` (device, [B] int32, −1 or out of range = skip, its
/// outputs left untouched), or slot n when null (then P ≥ B). p.state_indices and
/// p.cu_seqlens must not be set. o: [B, T, Hv, V].
/// `value_slice` picks the block shape: 32 (blocks of 32 state columns, lowest latency),
/// 128 (whole state rows, K = V = 128 only), or 0 = automatic (by the number of
/// sequence-heads).
template <class Policy, class T>
Status decode(const Problem<T>& p, const Outputs<T, float>& out, const std::int32_t* state_indices_device,
              cudaStream_t stream, int value_slice = 0);

/// Number of multiprocessors of the current device (0 when there is none); cached.
int device_sm_count();

}  // namespace cuda
}  // namespace gdr2
