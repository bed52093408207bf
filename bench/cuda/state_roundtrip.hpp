// Decode's memory pattern without its arithmetic (state_roundtrip.cu).
#pragma once

#include <cuda_runtime_api.h>

/// Read and write back in place `count` contiguous 128 × 128 fp32 states (64 KB each),
/// one 256-thread block per state, as the decode kernel's whole-row blocks access them.
cudaError_t state_roundtrip(float* states, int count, cudaStream_t stream);
