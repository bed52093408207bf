// gdr2 CUDA backend — the plain-old-data launch parameters shared by the host
// validation code (compiled by the C++ compiler, with Eigen) and the kernels
// (compiled by nvcc, without Eigen). Nothing here is public API.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "gdr2/cuda/inputs.hpp"

namespace gdr2 {
namespace cuda {
namespace detail {

/// A tensor map (CUtensorMap, opaque) over one [B, T, H, D] input for 64-token tile copies,
/// and which of (token, head, batch) each of its outer dimensions is (the host orders
/// them by stride).
struct alignas(64) TileMap {
  unsigned char desc[128];
  int dim[3];
};

/// Everything a forward or decode kernel reads, in device pointers and element strides:
/// the inputs (InputViews: 16-bit q, k, v, b, w, β; fp32 g), then outputs and states.
struct ForwardParams : InputViews {
  Strides3 so;
  void* o = nullptr;
  const float* s0 = nullptr;  // initial state (or null = zeros)
  long long s0_stride[4] = {0, 0, 0, 0};
  float* sT = nullptr;  // final state (or null)
  long long sT_stride[4] = {0, 0, 0, 0};
  const void* cu_seqlens = nullptr;  // device copy, N+1 offsets, or null
  int cu_wide = 0;                   // int64 offsets when 1
  const std::int32_t* state_indices = nullptr;  // device copy, [N], or null
  int state_pool = 0;                           // pool size (slots >= pool are skipped)
  int K = 0, V = 0;
  // chunked engine, split path
  void* records = nullptr;              // workspace: one record per (chunk, value head)
  const std::int32_t* chunk_offsets = nullptr;  // workspace: N+1 chunk offsets (varlen) or null
  long long total_chunks = 0;           // sum over sequences of ceil(len / 64)
  int chunks_per_seq = 0;               // fixed-length batches: ceil(T / 64)
  int vslice = 0;                       // value columns per state-pass block (16, 32, 64 or 128)
  int* flags = nullptr;                 // workspace: one publish flag per record (overlapped split)
  int overlap = 0;                      // 1: prep and state pass in one overlapped launch
  int num_sms = 0;
  // chunked engine, training: the state at the start of every chunk, [C, Hv, K, V] fp32
  // (tf32-rounded), chunk j of sequence n at row chunk_base(n) + j; or null
  float* chunk_states = nullptr;
  // chunked engine, training, fused path (K = V = 128): the backward's chunk records
  // (ChunkOptions::backward_records; layout backward_record.hpp), chunk-head (c, hv) at
  // record c·Hv + hv, c numbered as the chunk states; `bwd_rec_written` set to 1 once
  // launched (the backward then skips its prep), or null
  char* bwd_rec = nullptr;
  int* bwd_rec_written = nullptr;
  // chunked engine: q, k, b (channel gates), g (channel decay), v and w (channel gates)
  // tiles copied by tensor maps (TMA) when tma = 1, else by cp.async; maps are kernel
  // parameters (__grid_constant__). v, w land in the 128-byte swizzle (swz128).
  int tma = 0;
  TileMap maps[6];  // kMapQ, kMapK, kMapB, kMapG, kMapV, kMapW
};
enum : int { kMapQ = 0, kMapK = 1, kMapB = 2, kMapG = 3, kMapV = 4, kMapW = 5 };

enum class DType : int { bf16 = 0, f16 = 1 };
enum class Path : int { automatic = 0, fused = 1, split = 2 };

/// Bytes of one split-path record for key width K (chunk of 64 tokens).
std::size_t record_bytes(int K, bool tied);

/// Launchers, explicitly instantiated for decay ∈ {channel, scalar} (gdr2::Decay values
/// 0, 1) and gates ∈ {channel, tied} (gdr2::Gates values 0, 1).
template <int DECAY, int GATES>
cudaError_t launch_chunk_forward(const ForwardParams& p, DType dt, Path path, cudaStream_t stream);
template <int DECAY, int GATES>
cudaError_t launch_decode(const ForwardParams& p, DType dt, cudaStream_t stream);

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
