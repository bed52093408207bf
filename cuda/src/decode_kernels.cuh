// gdr2 CUDA backend — the recurrent decode kernel (SPEC §1, one token at a time).
//
// One 128-thread block per (sequence, value head, slice of 32 value columns): the
// K×32 slice of the fp32 state lives in registers (thread = 4 columns × K/16 rows) for
// all steps; per step the block reduces r = S̄ᵀ(b⊙k) and o = Sᵀ(scale·q) over the key
// axis (warp shuffles, then shared memory). State columns are independent, so the
// slices need no communication. The state is read once and written once per call.
#pragma once

#include "device_common.cuh"
#include "params.hpp"

namespace gdr2 {
namespace cuda {
namespace detail {

template <int DECAY, int GATES, class Tin, int D, bool UNIT_V>
__global__ void __launch_bounds__(128) decode_kernel(const ForwardParams p) {
  constexpr int VS = 32, NSL = D / VS, RPT = D / 16;  // rows per thread
  const int slice = blockIdx.x % NSL, nh = blockIdx.x / NSL;
  const int n = nh / p.Hv, hv = nh % p.Hv;
  int slot = n;
  if (p.state_indices) {
    slot = p.state_indices[n];
    if (slot < 0 || slot >= p.state_pool) return;
  }
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, c4 = tid & 7, rg = tid >> 3;
  const int j0 = slice * VS + 4 * c4;
  __shared__ float sq[D], sk[D], se[D], sge[D], sz[VS], sd[VS];
  __shared__ float red[4][VS];

  float S[RPT][4];
  {
    const float* base = p.s0 + slot * p.s0_stride[0] + hv * p.s0_stride[1];
#pragma unroll
    for (int m = 0; m < RPT; ++m) {
      const int i = rg + 16 * m;
      if (UNIT_V) {
        const float4 x = *reinterpret_cast<const float4*>(base + i * p.s0_stride[2] + j0);
        S[m][0] = x.x;
        S[m][1] = x.y;
        S[m][2] = x.z;
        S[m][3] = x.w;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) S[m][e] = base[i * p.s0_stride[2] + (j0 + e) * p.s0_stride[3]];
      }
    }
  }
  const int hk = hv / p.group;
  const int hgg = int((long long)hv * p.hg_g / p.Hv), hb = int((long long)hv * p.hg_b / p.Hv),
            hw = int((long long)hv * p.hg_w / p.Hv), hbeta = int((long long)hv * p.hg_beta / p.Hv);
  // per-step inputs, prefetched one step ahead in registers
  float nq = 0, nk = 0, nb = 0, ng = 0, nv = 0, nw = 0;
  auto fetch = [&](int t) {
    if (tid < D) {
      nq = In16<Tin>::to_float(static_cast<const Tin*>(p.q)[n * p.sq.b + t * p.sq.t + hk * p.sq.h + tid]);
      nk = In16<Tin>::to_float(static_cast<const Tin*>(p.k)[n * p.sk.b + t * p.sk.t + hk * p.sk.h + tid]);
      nb = GATES == 0 ? In16<Tin>::to_float(static_cast<const Tin*>(p.b)[n * p.sb.b + t * p.sb.t + hb * p.sb.h + tid])
                      : In16<Tin>::to_float(static_cast<const Tin*>(p.beta)[n * p.sbeta.b + t * p.sbeta.t + hbeta * p.sbeta.h]);
      ng = DECAY == 0 ? p.g[n * p.sg.b + t * p.sg.t + hgg * p.sg.h + tid] : p.g[n * p.sg.b + t * p.sg.t + hgg * p.sg.h];
    }
    if (tid < VS) {
      const int j = slice * VS + tid;
      nv = In16<Tin>::to_float(static_cast<const Tin*>(p.v)[n * p.sv.b + t * p.sv.t + hv * p.sv.h + j]);
      nw = GATES == 0 ? In16<Tin>::to_float(static_cast<const Tin*>(p.w)[n * p.sw.b + t * p.sw.t + hw * p.sw.h + j])
                      : In16<Tin>::to_float(static_cast<const Tin*>(p.beta)[n * p.sbeta.b + t * p.sbeta.t + hbeta * p.sbeta.h]);
    }
  };
  fetch(0);
#pragma unroll 1
  for (int t = 0; t < p.T; ++t) {
    if (tid < D) {
      sq[tid] = p.scale * nq;
      sk[tid] = nk;
      se[tid] = nb * nk;
      sge[tid] = expf(ng);
    }
    if (tid < VS) sz[tid] = nw * nv;
    if (t + 1 < p.T) fetch(t + 1);
    __syncthreads();
    // S̄ = Diag(exp g) S ;  r = S̄ᵀ e
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int m = 0; m < RPT; ++m) {
      const int i = rg + 16 * m;
      const float gi = sge[i], ei = se[i];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        S[m][e] *= gi;
        acc[e] += S[m][e] * ei;
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], 8);
      acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], 16);
    }
    if (lane < 8)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[w][4 * c4 + e] = acc[e];
    __syncthreads();
    if (tid < VS) sd[tid] = sz[tid] - (red[0][tid] + red[1][tid] + red[2][tid] + red[3][tid]);
    __syncthreads();
    // S = S̄ + k δᵀ ;  o = Sᵀ (scale q)
    float dl[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      dl[e] = sd[4 * c4 + e];
      acc[e] = 0.f;
    }
#pragma unroll
    for (int m = 0; m < RPT; ++m) {
      const int i = rg + 16 * m;
      const float ki = sk[i], qi = sq[i];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        S[m][e] += ki * dl[e];
        acc[e] += S[m][e] * qi;
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], 8);
      acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], 16);
    }
    if (lane < 8)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[w][4 * c4 + e] = acc[e];
    __syncthreads();
    if (tid < VS) {
      const float o = red[0][tid] + red[1][tid] + red[2][tid] + red[3][tid];
      static_cast<Tin*>(p.o)[n * p.so.b + t * p.so.t + hv * p.so.h + slice * VS + tid] = In16<Tin>::from_float(o);
    }
  }
  {
    float* base = p.sT + slot * p.sT_stride[0] + hv * p.sT_stride[1];
#pragma unroll
    for (int m = 0; m < RPT; ++m) {
      const int i = rg + 16 * m;
      if (UNIT_V) {
        *reinterpret_cast<float4*>(base + i * p.sT_stride[2] + j0) = make_float4(S[m][0], S[m][1], S[m][2], S[m][3]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) base[i * p.sT_stride[2] + (j0 + e) * p.sT_stride[3]] = S[m][e];
      }
    }
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
