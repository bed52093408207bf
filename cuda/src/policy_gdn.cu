// GDN (scalar decay, tied beta).
#include "launch.cuh"
GDR2_CUDA_INSTANTIATE(1, 1)
