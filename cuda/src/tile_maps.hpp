// gdr2 CUDA backend — host side: the tensor maps (TMA descriptors) through which the
// chunked forward copies its 64-token input tiles. Encoding is host work only (no device
// call), so it is safe under CUDA-graph capture; it runs once per chunk_forward call.
#pragma once

#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled (the driver entry point's type)

#include <algorithm>

#include "params.hpp"

namespace gdr2 {
namespace cuda {
namespace detail {

/// cuTensorMapEncodeTiled, fetched from the driver through the runtime (no -lcuda), or null.
inline PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return PFN_cuTensorMapEncodeTiled_v12000(nullptr);
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

/// Map `m` over a [B, T, H, D] view (element strides s of `esize`-byte elements, unit
/// channel stride) whose box is 64 tokens × D channels of one (batch, head), landing in
/// shared memory as a dense [64][D] tile; tokens past T read as zeros. With `swizzle128`
/// (16-bit elements) the box is 64 tokens × 64 channels in the 128-byte swizzle, one copy
/// per 64-channel atom of a swz128 tile. The outer dimensions are ordered by stride
/// (extent-1 ones last). False when the view cannot be described (the caller then copies
/// with cp.async).
inline bool encode_tile_map(TileMap& m, const void* base, int esize, int D, const Strides3& s, long long B,
                            long long T, long long H, bool swizzle128 = false) {
  const auto encode = tensor_map_encoder();
  if (!encode || !base || B < 1 || T < 1 || H < 1) return false;
  struct Dim {
    long long extent, stride;
    int which;  // 0 token, 1 head, 2 batch (the order of the kernel's coordinates)
  };
  Dim d[3] = {{T, s.t, 0}, {H, s.h, 1}, {B, s.b, 2}};
  std::stable_sort(d, d + 3, [](const Dim& a, const Dim& b) {
    if ((a.extent == 1) != (b.extent == 1)) return b.extent == 1;
    return a.stride < b.stride;
  });
  cuuint64_t dims[4] = {cuuint64_t(D)}, strides[3];
  if (swizzle128 && (esize != 2 || D % 64 != 0)) return false;
  cuuint32_t box[4] = {cuuint32_t(swizzle128 ? 64 : D)}, estr[4] = {1, 1, 1, 1};
  long long span = (long long)D * esize;  // bytes covered by the dimensions so far
  for (int i = 0; i < 3; ++i) {
    // an extent-1 dimension's coordinate is always 0: any stride that keeps the order does
    const long long st = d[i].extent == 1 ? span : d[i].stride * esize;
    if (st <= 0 || st % 16 != 0 || st >= (1ll << 40) || d[i].extent > (1ll << 32)) return false;
    dims[i + 1] = cuuint64_t(d[i].extent);
    strides[i] = cuuint64_t(st);
    box[i + 1] = d[i].which == 0 ? 64u : 1u;
    m.dim[i] = d[i].which;
    span = std::max(span, st * d[i].extent);
  }
  const CUresult r = encode(reinterpret_cast<CUtensorMap*>(m.desc),
                            esize == 2 ? CU_TENSOR_MAP_DATA_TYPE_UINT16 : CU_TENSOR_MAP_DATA_TYPE_UINT32, 4,
                            const_cast<void*>(base), dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            swizzle128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return r == CUDA_SUCCESS;
}

/// The forward's tile maps: q, k, v, then b and w with channel gates and g with channel
/// decay; p.tma = 1 only when every one of them could be encoded.
inline void encode_input_maps(ForwardParams& p, bool channel_gates, bool channel_decay) {
  bool ok = encode_tile_map(p.maps[kMapQ], p.q, 2, p.K, p.sq, p.B, p.T, p.Hk) &&
            encode_tile_map(p.maps[kMapK], p.k, 2, p.K, p.sk, p.B, p.T, p.Hk) &&
            encode_tile_map(p.maps[kMapV], p.v, 2, p.V, p.sv, p.B, p.T, p.Hv, true);
  if (channel_gates)
    ok = ok && encode_tile_map(p.maps[kMapB], p.b, 2, p.K, p.sb, p.B, p.T, p.hg_b) &&
         encode_tile_map(p.maps[kMapW], p.w, 2, p.V, p.sw, p.B, p.T, p.hg_w, true);
  if (channel_decay) ok = ok && encode_tile_map(p.maps[kMapG], p.g, 4, p.K, p.sg, p.B, p.T, p.hg_g);
  p.tma = ok ? 1 : 0;
}

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
