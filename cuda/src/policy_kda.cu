// KDA (channel decay, tied beta).
#include "launch.cuh"
GDR2_CUDA_INSTANTIATE(0, 1)
