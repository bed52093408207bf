// GDR-2 (channel decay, channel gates).
#include "launch.cuh"
GDR2_CUDA_INSTANTIATE(0, 0)
