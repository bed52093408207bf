// Host-visible sizes of device data layouts.
#include "chunk_kernels.cuh"

std::size_t gdr2::cuda::detail::record_bytes(int K, bool tied) {
  return std::size_t(K == 128 ? Record<128>::bytes(tied) : Record<64>::bytes(tied));
}
