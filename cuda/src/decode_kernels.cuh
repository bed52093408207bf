// gdr2 CUDA backend — the recurrent decode kernel (SPEC §1, one token at a time).
//
// One block per (sequence, value head, slice of VS value columns): the K×VS slice of the
// fp32 state lives in registers (thread = 4 columns × some rows) for all steps; per step
// the block reduces r = S̄ᵀ(b⊙k) and o = Sᵀ(scale·q) over the key axis (warp shuffles,
// then shared memory). State columns are independent, so the slices need no
// communication. The state is read once and written once per call. Two shapes:
// VS = 32 with 128 threads (more, smaller blocks: lowest latency for few sequences) and
// VS = 128 with 256 threads (whole 512-byte state rows per warp: long sequential reads).
#pragma once

#include "device_common.cuh"
#include "params.hpp"

namespace gdr2 {
namespace cuda {
namespace detail {

template <int DECAY, int GATES, class Tin, int D, bool UNIT_V, int VS, int NT>
__global__ void __launch_bounds__(NT) decode_kernel(const ForwardParams p) {
  constexpr int NSL = D / VS;   // slices per head
  constexpr int CG = VS / 4;    // column groups (4 columns per thread)
  constexpr int RG = NT / CG;   // row groups
  constexpr int RPT = D / RG;   // rows per thread
  constexpr int NW = NT / 32;
  static_assert(NT >= D && NT >= VS && CG <= 32 && RPT >= 1, "decode tile");
  const int slice = blockIdx.x % NSL, nh = blockIdx.x / NSL;
  const int n = nh / p.Hv, hv = nh % p.Hv;
  int slot = n;
  if (p.state_indices) {
    slot = p.state_indices[n];
    if (slot < 0 || slot >= p.state_pool) return;
  }
  const int tid = threadIdx.x, lane = tid & 31, w = tid >> 5, c4 = tid % CG, rg = tid / CG;
  const int j0 = slice * VS + 4 * c4;
  __shared__ float sq[D], sk[D], se[D], sge[D], sz[VS], sd[VS];
  __shared__ float red[NW][VS];

  float S[RPT][4];
  {
    const float* base = p.s0 + slot * p.s0_stride[0] + hv * p.s0_stride[1];
#pragma unroll
    for (int m = 0; m < RPT; ++m) {
      const int i = rg + RG * m;
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
  // per-step inputs, prefetched one step ahead in registers (row pointers at token 0)
  const Tin* qp = static_cast<const Tin*>(p.q) + n * p.sq.b + hk * p.sq.h + (tid < D ? tid : 0);
  const Tin* kp = static_cast<const Tin*>(p.k) + n * p.sk.b + hk * p.sk.h + (tid < D ? tid : 0);
  const Tin* bp = GATES == 0 ? static_cast<const Tin*>(p.b) + n * p.sb.b + hb * p.sb.h + (tid < D ? tid : 0)
                             : static_cast<const Tin*>(p.beta) + n * p.sbeta.b + hbeta * p.sbeta.h;
  const long long bst = GATES == 0 ? p.sb.t : p.sbeta.t;
  const float* gp = p.g + n * p.sg.b + hgg * p.sg.h + (DECAY == 0 && tid < D ? tid : 0);
  const Tin* vp = static_cast<const Tin*>(p.v) + n * p.sv.b + hv * p.sv.h + slice * VS + (tid < VS ? tid : 0);
  const Tin* wp = GATES == 0 ? static_cast<const Tin*>(p.w) + n * p.sw.b + hw * p.sw.h + slice * VS + (tid < VS ? tid : 0)
                             : bp;
  const long long wst = GATES == 0 ? p.sw.t : p.sbeta.t;
  float nq = 0, nk = 0, nb = 0, ng = 0, nv = 0, nw = 0;
  auto fetch = [&](int t) {
    if (tid < D) {
      nq = In16<Tin>::to_float(qp[t * p.sq.t]);
      nk = In16<Tin>::to_float(kp[t * p.sk.t]);
      nb = In16<Tin>::to_float(bp[t * bst]);
      ng = gp[t * p.sg.t];
    }
    if (tid < VS) {
      nv = In16<Tin>::to_float(vp[t * p.sv.t]);
      nw = In16<Tin>::to_float(wp[t * wst]);
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
      const int i = rg + RG * m;
      const float gi = sge[i], ei = se[i];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        S[m][e] *= gi;
        acc[e] += S[m][e] * ei;
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int x = CG; x < 32; x <<= 1) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], x);
    if (lane < CG)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[w][4 * c4 + e] = acc[e];
    __syncthreads();
    if (tid < VS) {
      float sum = 0.f;
#pragma unroll
      for (int x = 0; x < NW; ++x) sum += red[x][tid];
      sd[tid] = sz[tid] - sum;
    }
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
      const int i = rg + RG * m;
      const float ki = sk[i], qi = sq[i];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        S[m][e] += ki * dl[e];
        acc[e] += S[m][e] * qi;
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e)
#pragma unroll
      for (int x = CG; x < 32; x <<= 1) acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], x);
    if (lane < CG)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[w][4 * c4 + e] = acc[e];
    __syncthreads();
    if (tid < VS) {
      float o = 0.f;
#pragma unroll
      for (int x = 0; x < NW; ++x) o += red[x][tid];
      static_cast<Tin*>(p.o)[n * p.so.b + t * p.so.t + hv * p.so.h + slice * VS + tid] = In16<Tin>::from_float(o);
    }
  }
  {
    float* base = p.sT + slot * p.sT_stride[0] + hv * p.sT_stride[1];
#pragma unroll
    for (int m = 0; m < RPT; ++m) {
      const int i = rg + RG * m;
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
