// gdr2 CUDA backend — launchers (kernel selection by dtype, head width and path).
#pragma once

#include "chunk_kernels.cuh"
#include "decode_kernels.cuh"

namespace gdr2 {
namespace cuda {
namespace detail {

template <class K>
cudaError_t allow_smem(K kernel, int bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <int DECAY, int GATES, class Tin, int D>
cudaError_t launch_forward_d(const ForwardParams& p, Path path, cudaStream_t st) {
  cudaError_t e;
  if (path == Path::fused) {
    auto kern = fused_forward_kernel<DECAY, GATES, Tin, D, false>;
    if constexpr (bwd::Rec16<D>::fits_record)
      if (p.bwd_rec) kern = fused_forward_kernel<DECAY, GATES, Tin, D, true>;
    constexpr int smem = PrepLayout<D, DECAY == 0, GATES == 0, true>::bytes;
    if ((e = allow_smem(kern, smem)) != cudaSuccess) return e;
    kern<<<p.N * p.Hv, kThreads, smem, st>>>(p);
    return cudaGetLastError();
  }
  if (p.chunk_offsets) {
    chunk_offsets_kernel<0><<<1, 1024, 0, st>>>(p, const_cast<int*>(p.chunk_offsets));
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  const long long items = p.total_chunks * p.Hv;
  if (p.overlap) {
    if (items > 0 && (e = cudaMemsetAsync(p.flags, 0, std::size_t(items) * sizeof(int), st)) != cudaSuccess) return e;
    auto kern = overlapped_kernel<DECAY, GATES, Tin, D>;
    const int smem_prep = PrepLayout<D, DECAY == 0, GATES == 0, false>::bytes;
    const int smem_state = StateLayout<D>(p.vslice, Record<D>::bytes(GATES == 1), p.chunk_states != nullptr).bytes;
    const int smem = smem_prep > smem_state ? smem_prep : smem_state;
    if ((e = allow_smem(kern, smem)) != cudaSuccess) return e;
    kern<<<unsigned(p.num_sms), kThreads, smem, st>>>(p);
    return cudaGetLastError();
  }
  if (items > 0) {
    auto kern = prep_kernel<DECAY, GATES, Tin, D>;
    constexpr int smem = PrepLayout<D, DECAY == 0, GATES == 0, false>::bytes;
    if ((e = allow_smem(kern, smem)) != cudaSuccess) return e;
    const long long grid = items < p.num_sms ? items : p.num_sms;
    kern<<<unsigned(grid), kThreads, smem, st>>>(p);
    if ((e = cudaGetLastError()) != cudaSuccess) return e;
  }
  {
    auto kern = state_kernel<DECAY, GATES, Tin, D>;
    const StateLayout<D> Ls(p.vslice, Record<D>::bytes(GATES == 1), p.chunk_states != nullptr);
    if ((e = allow_smem(kern, Ls.bytes)) != cudaSuccess) return e;
    kern<<<dim3(unsigned(p.N * p.Hv), unsigned(D / p.vslice)), kThreads, Ls.bytes, st>>>(p);
    return cudaGetLastError();
  }
}

template <int DECAY, int GATES, class Tin>
cudaError_t launch_forward_t(const ForwardParams& p, Path path, cudaStream_t st) {
  if (p.K == 128) return launch_forward_d<DECAY, GATES, Tin, 128>(p, path, st);
  return launch_forward_d<DECAY, GATES, Tin, 64>(p, path, st);
}

template <int DECAY, int GATES, class Tin, int D>
cudaError_t launch_decode_d(const ForwardParams& p, cudaStream_t st) {
  const bool unit = p.s0_stride[3] == 1 && p.sT_stride[3] == 1 && p.s0_stride[2] % 4 == 0 &&
                    p.sT_stride[2] % 4 == 0 && p.s0_stride[1] % 4 == 0 && p.sT_stride[1] % 4 == 0 &&
                    p.s0_stride[0] % 4 == 0 && p.sT_stride[0] % 4 == 0 &&
                    reinterpret_cast<std::uintptr_t>(p.s0) % 16 == 0 && reinterpret_cast<std::uintptr_t>(p.sT) % 16 == 0;
  if (p.N * p.Hv == 0 || p.T == 0) return cudaSuccess;
  if constexpr (D == 128) {
    if (p.vslice == 128) {
      const unsigned grid = unsigned(p.N * p.Hv);
      if (unit)
        decode_kernel<DECAY, GATES, Tin, D, true, 128, 256><<<grid, 256, 0, st>>>(p);
      else
        decode_kernel<DECAY, GATES, Tin, D, false, 128, 256><<<grid, 256, 0, st>>>(p);
      return cudaGetLastError();
    }
  }
  {
    const unsigned grid = unsigned(p.N * p.Hv * (D / 32));
    if (unit)
      decode_kernel<DECAY, GATES, Tin, D, true, 32, 128><<<grid, 128, 0, st>>>(p);
    else
      decode_kernel<DECAY, GATES, Tin, D, false, 32, 128><<<grid, 128, 0, st>>>(p);
  }
  return cudaGetLastError();
}

template <int DECAY, int GATES, class Tin>
cudaError_t launch_decode_t(const ForwardParams& p, cudaStream_t st) {
  if (p.K == 128) return launch_decode_d<DECAY, GATES, Tin, 128>(p, st);
  return launch_decode_d<DECAY, GATES, Tin, 64>(p, st);
}

template <int DECAY, int GATES>
cudaError_t launch_chunk_forward(const ForwardParams& p, DType dt, Path path, cudaStream_t stream) {
  if (dt == DType::bf16) return launch_forward_t<DECAY, GATES, __nv_bfloat16>(p, path, stream);
  return launch_forward_t<DECAY, GATES, __half>(p, path, stream);
}
template <int DECAY, int GATES>
cudaError_t launch_decode(const ForwardParams& p, DType dt, cudaStream_t stream) {
  if (dt == DType::bf16) return launch_decode_t<DECAY, GATES, __nv_bfloat16>(p, stream);
  return launch_decode_t<DECAY, GATES, __half>(p, stream);
}

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2

/// Explicit instantiation of the launchers of one gate policy (decay, gates).
#define GDR2_CUDA_INSTANTIATE(DECAY, GATES)                                                                   \
  template cudaError_t gdr2::cuda::detail::launch_chunk_forward<DECAY, GATES>(                                \
      const gdr2::cuda::detail::ForwardParams&, gdr2::cuda::detail::DType, gdr2::cuda::detail::Path, cudaStream_t); \
  template cudaError_t gdr2::cuda::detail::launch_decode<DECAY, GATES>(const gdr2::cuda::detail::ForwardParams&, \
                                                                       gdr2::cuda::detail::DType, cudaStream_t);
