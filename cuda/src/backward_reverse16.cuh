// gdr2 CUDA backend, backward — stage 2 (the reverse state pass) on fp16 warpgroup MMAs,
// for 16-bit inputs in the tf32 mode when the forward's chunk states are given (so only the
// reverse role runs). Per (sequence, value head, 64 value columns), chunks last to first:
//   dR = Aqkᵀ dO + Ktail dS,   dS ← γ_C ⊙ dS + Qγᵀ dO − Yᵀ dR,
// written as the forward's state step writes its products (chunk_kernels.cuh: owner warps
// holding dSᵀ, 16 value columns each, as warpgroup-MMA accumulators):
//   dRᵀ = dSᵀ Ktailᵀ + dOᵀ Aqk,   dSᵀ ← dSᵀ Diag(γ_C) + dOᵀ Qγ − dRᵀ Y.
// Operands are fp16, which carries the tf32 mode's 10-bit significand (cuda/NOTES.md,
// backward items 8, 9) but not its range; two power-of-2 scales keep every operand in range
// (backward item 13, checked on the host by cuda/experiments/r13_reverse_fp16_study.cpp):
//   - the prep stores Qγ, Y and γ_C times 2^{−f_c}, f_c = ⌊log2 max_d γ_0⌋ of the chunk
//     (every term of the update carries at most γ_0), so the update yields dS·2^{−f_c};
//   - each owner warp holds dS·2^{−E} and forms dO's operands as dO·2^{−E}, E renewed every
//     step from the larger of max|dS| and max|dO| over its 16 columns (the columns'
//     recurrences are independent), then moved by f_c.
// dS_c goes out in fp16 with a power-of-2 scale of its own per 16 columns (DS16: half the
// bytes of fp32; grad-1 converts it exactly, cuda/NOTES.md backward v55).
#pragma once

#include "backward_prep16.cuh"

namespace gdr2 {
namespace cuda {
namespace detail {
namespace bwd {

/// Shared memory of the reverse16 kernel (bytes): two stages, each a record image (one bulk
/// copy, 1024-aligned: swz128 tiles) then dO's rows [64][kRevCols] (cp.async, rows 16 bytes
/// longer); the mbarriers; the [D][kRevCols] fp16 tile in which the owners stage dS_c for the
/// helpers' stores (rows 16 bytes longer than its columns: the four key rows of a warp's
/// store land 72 banks apart, conflict-free).
constexpr int kRevCols = kBwdRevCols;  ///< value columns per block: one warpgroup of owner warps
constexpr int kRevThreads = 256;  ///< warps 0–3 own the columns, warps 4–7 copy and store
template <int D>
struct Rev16Layout {
  static constexpr int PV = kRevCols + 8;  // dO tile pitch (elements)
  static constexpr int rdo = (Rec16<D>::bytes + 127) / 128 * 128;
  static constexpr int stage_bytes = (rdo + kC * PV * 2 + 1023) / 1024 * 1024;
  static constexpr int bars = 2 * stage_bytes;
  static constexpr int stuck = bars + 32;  // int: a record never published (overlapped launch)
  static constexpr int cstage = bars + 64;
  static constexpr int cpitch = kRevCols * 2 + 16;
  static constexpr int bytes = cstage + D * cpitch;
  static_assert(bytes <= kSmemOptIn, "reverse16 shared memory exceeds 227 KB");
};

/// The exponent e with m ≤ 2^e (m > 0), within [−100, 100] (scales stay normal fp32).
__device__ __forceinline__ int cover_exponent(float m) {
  int e;
  frexpf(m, &e);
  return e < -100 ? -100 : (e > 100 ? 100 : e);
}

/// The reverse pass of one (sequence n, value head hv, columns j0..j0+63) block, `block` =
/// (n·Hv + hv)·D/64 + j0/64, kRevThreads threads, `sm`: Rev16Layout bytes: dS_T (or zeros)
/// in, dS at the end of every chunk c out to p.dstates (DS16 per chunk-head), dS at the
/// sequence's start to p.ds0 when asked; records from the 16-bit prep (Rec16) — given
/// `flags` (the overlapped launch), each copied once its flag says it is published
/// (prep16_body); the block ends the kernel with an error if one never is.
template <int D, class Tin>
__device__ void reverse16_body(const BackwardParams& p, char* sm, int block, const int* flags) {
  using L = Rev16Layout<D>;
  using R = Rec16<D>;
  constexpr int PV = L::PV;
  const int tid = threadIdx.x, w = warp_index_uniform(), lane = tid & 31;
  constexpr int ns = D / kRevCols;
  const int pair = block / ns, j0 = (block % ns) * kRevCols;
  const int n = pair / p.Hv, hv = pair % p.Hv;
  const SeqLoc sq = seq_loc(p, n);
  const bool owner = w < 4;
  const int htid = tid - 128;  // helper thread index (helpers only)
  std::uint64_t* bars = reinterpret_cast<std::uint64_t*>(sm + L::bars);
  int& stuck = *reinterpret_cast<int*>(sm + L::stuck);
  if (tid == 0) {
    mbar_init(bars, 1 + 128);  // a stage: its record's bytes and the helpers' dO rows
    mbar_init(bars + 1, 1 + 128);
    mbar_init(bars + 2, 128);  // dS_c staged by the owners
    stuck = 0;
    fence_proxy_async();
  }
  __syncthreads();
  auto recp = [&](int c) -> const char* { return rec16_at<D>(p, (sq.cg0 + c) * p.Hv + hv); };
  const Tin* dO = static_cast<const Tin*>(p.d_o);
  // helpers: piece hcc (16 bytes) of dO rows hr0, hr0 + hrs, ...
  constexpr int cpr = kRevCols * 2 / 16;
  const int hcc = htid % cpr, hr0 = htid / cpr, hrs = 128 / cpr;
  auto chunk_rows = [&](int c, int& t0, int& len) {
    t0 = sq.bos + kC * c;
    len = min(kC, sq.eos - t0);
  };
  // step i works on chunk nc−1−i in stage i&1
  auto issue = [&](int i) {
    const int c = sq.nc - 1 - i;
    char* st = sm + (i & 1) * L::stage_bytes;
    if (htid == 0) {
      // (the flag's acquire round trip runs beside the owners' step i − 1)
      if (flags && !wait_published(flags + (sq.cg0 + c) * p.Hv + hv)) {
        stuck = 1;  // the stage never fills: the next barrier ends the kernel
      } else {
        mbar_expect_tx(bars + (i & 1), R::bytes);
        bulk_g2s(st, recp(c), R::bytes, bars + (i & 1));
      }
    }
    int t0, len;
    chunk_rows(c, t0, len);
    for (int r = hr0; r < kC; r += hrs) {
      const bool ok = r < len;
      cp_async16(st + L::rdo + r * PV * 2 + hcc * 16, dO + act(p.sdo, sq.bb, ok ? t0 + r : t0, hv) + j0 + hcc * 8, ok);
    }
    cp_async_mbar_arrive(bars + (i & 1));
    if (i + 3 < sq.nc) {  // three steps ahead into L2 (a copy under load outlasts a step)
      const int cn = c - 3;
      if (htid == 0) prefetch_l2_bulk(recp(cn), std::uint32_t(R::bytes));
      chunk_rows(cn, t0, len);
      if (htid < len) prefetch_l2(dO + act(p.sdo, sq.bb, t0 + htid, hv) + j0);
    }
  };
  // helpers: dS at the end of chunk c (staged by the owners at step i, fp16) to dstates, in
  // 16-byte pieces: this thread's piece scc of rows sr0, sr0 + srs, ...
  constexpr int cps = kRevCols * 2 / 16;
  const int scc = htid % cps, sr0 = htid / cps, srs = 128 / cps;
  auto ds_base = [&](int c) {
    return reinterpret_cast<char*>(p.dstates + ((sq.cg0 + c) * p.Hv + hv) * (long long)(D * D));
  };
  auto store_ds = [&](int i) {
    mbar_wait(bars + 2, i & 1);
    store_staged_rows<D>(reinterpret_cast<__half*>(ds_base(sq.nc - 1 - i) + DS16<D>::x) + j0, sm + L::cstage, L::cpitch,
                         scc, sr0, srs);
  };

  float dS[D / 8][4];
  int E = 0;  // this warp holds dS·2^{−E}
  auto scale = [&](float s) {
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) dS[nt][e] *= s;
  };
  // this lane's largest |dS·2^{−E}|
  auto lane_max = [&] {
    float ms = 0.f;
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) ms = fmaxf(ms, fabsf(dS[nt][e]));
    return ms;
  };
  // E renewed to cover the larger of max|dS| and `other` over the warp (kept when both are 0)
  auto renew = [&](float other) {
    const float m = warp_max(fmaxf(other, lane_max() * ldexpf(1.f, E)));
    if (m > 0.f) {
      const int En = cover_exponent(m);
      if (En != E) {
        scale(ldexpf(1.f, E - En));
        E = En;
      }
    }
  };
  if (owner) {
    load_state<D>(dS, p.dsT, p.dsTs, n, hv, j0 + 16 * w, lane);
    renew(0.f);
  } else if (sq.nc > 0) {
    issue(0);
  }
#pragma unroll 1
  for (int i = 0; i < sq.nc; ++i) {
    // stage (i+1)&1 and the dS tile are free; a record that never came fails loudly, not hangs
    if (!flags)
      __syncthreads();
    else if (__syncthreads_or(stuck))
      trap_out_of_line();
    if (!owner) {
      if (i + 1 < sq.nc) issue(i + 1);
      store_ds(i);
      continue;
    }
    mbar_wait(bars + (i & 1), (i >> 1) & 1);
    const char* st = sm + (i & 1) * L::stage_bytes;
    // dOᵀ (this warp's 16 columns × 64 tokens) as loaded, and the exponent renewed
    std::uint32_t o[4][4];
    const Tin* tO = reinterpret_cast<const Tin*>(st + L::rdo);
    float m = 0.f;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      ldsm_x4_t(o[ks], tile_at<TileLayout::padded>(tO, PV, 16 * ks + lrow_bn(lane), 16 * w + lcol_bn(lane)));
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 v = In16<Tin>::to_float2(o[ks][k]);
        m = fmaxf(m, fmaxf(fabsf(v.x), fabsf(v.y)));
      }
    }
    renew(m);
    // dS_c staged in fp16 for grad-1 with an exponent of its own, Es (dS·2^{−E−Es}, the
    // warp's largest |value| in [½, 1]), not E: E also covers dO, and a dS much smaller than
    // dO would be subnormal in fp16 under it (fine for the update below, where the dO terms
    // dominate, but not for grad-1's Σ dS ⊙ S); E + Es ≥ −120 keeps 2^{E+Es} a normal float
    {
      const float ms = warp_max(lane_max());
      const int Es = max(ms > 0.f ? cover_exponent(ms) : 0, -120 - E);
      const float to = ldexpf(1.f, -Es);
      char* tile = sm + L::cstage;
      state_elems<D>(dS, lane, [&](int kk, int vv, float x) {
        *reinterpret_cast<__half*>(tile + kk * L::cpitch + (16 * w + vv) * 2) = __float2half_rn(x * to);
      });
      if (lane == 0) reinterpret_cast<int*>(ds_base(sq.nc - 1 - i) + DS16<D>::e)[(j0 + 16 * w) / 16] = E + Es;
    }
    mbar_arrive(bars + 2);
    const float inv = ldexpf(1.f, -E);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 v = In16<Tin>::to_float2(o[ks][k]);
        o[ks][k] = pack_half2(v.x * inv, v.y * inv);
      }
    const __half* Qg = reinterpret_cast<const __half*>(st + R::qg);
    const __half* Kt = reinterpret_cast<const __half*>(st + R::kt);
    const __half* Y = reinterpret_cast<const __half*>(st + R::y);
    const __half* Aqk = reinterpret_cast<const __half*>(st + R::aqk);
    // dSᵀ as fp16 A operands (k = channels), then dSᵀ ← dSᵀ Diag(γ_C·2^{−f})
    std::uint32_t sa[D / 16][4];
    pack_state_a<D>(sa, dS);
    step_decay<D>(dS, reinterpret_cast<const float*>(st + R::gc), lane);
    // dRᵀ = dSᵀ Ktailᵀ + dOᵀ Aqk;  dSᵀ += dOᵀ Qγ
    float dR[8][4];
    wgmma_fence();
    wgmma_f16_first_64(dR, sa[0], desc_channels(Kt, 0), false);
#pragma unroll
    for (int kc = 1; kc < D / 16; ++kc) wgmma_f16<64, 0>(dR, sa[kc], desc_channels(Kt, kc), false);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_f16<64, 1>(dR, o[ks], desc_tokens(Aqk, ks), false);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_f16<D, 1>(dS, o[ks], desc_tokens(Qg, ks), false);
    wgmma_commit();
    wgmma_wait_all();
    wgmma_fence_operands(dR);
    wgmma_fence_operands(dS);
    // dSᵀ −= dRᵀ Y
    std::uint32_t rf[4][4];
    pack_r(rf, dR);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_f16<D, 1>(dS, rf[ks], desc_tokens(Y, ks), true);
    wgmma_commit();
    wgmma_wait_all();
    wgmma_fence_operands(dS);
    E += *reinterpret_cast<const int*>(st + R::f);
    fence_proxy_async();  // this stage is rewritten by a bulk copy after the next barrier
  }
  if (owner && p.ds0) {
    scale(ldexpf(1.f, E));
    store_state<D>(dS, p.ds0, p.ds0s, n, hv, j0 + 16 * w, lane);
  }
  cp_async_wait<0>();
}

template <int D, class Tin>
__global__ void __launch_bounds__(kRevThreads, 1) reverse16_kernel(const BackwardParams p) {
  extern __shared__ __align__(1024) char sm[];
  reverse16_body<D, Tin>(p, sm, int(blockIdx.x), nullptr);
}

/// The overlapped launch (BackwardParams::overlap, bwd_reverse_beside_prep): blocks below
/// N·Hv·D/64 run the reverse pass, the others the 16-bit prep, persistently, publishing
/// each record through p.flags (zeroed before the launch). At most one block per SM and
/// the prep blocks never wait, so every wait is on work that is running or will run.
template <int DECAY, int GATES, class Tin, int D>
__global__ void __launch_bounds__(kRevThreads, 1) prep_reverse16_kernel(const BackwardParams p,
                                                                          const __grid_constant__ ForwardParams fp) {
  static_assert(kRevThreads == detail::kThreads, "one block size for both roles");
  extern __shared__ __align__(1024) char sm[];
  const int nrev = p.N * p.Hv * (D / kRevCols), b = int(blockIdx.x);
  if (b < nrev)
    reverse16_body<D, Tin>(p, sm, b, p.flags);
  else
    prep16_body<DECAY, GATES, Tin, D>(p, fp, sm, b - nrev, gridDim.x - nrev, p.flags);
}

/// Enqueue the overlapped launch (flags zeroed first) for one gate policy and dtype.
template <int DECAY, int GATES, class Tin, int D>
cudaError_t launch_prep_reverse16_k(const BackwardParams& p, cudaStream_t st) {
  const long long items = p.total_chunks * p.Hv;
  cudaError_t e = cudaMemsetAsync(p.flags, 0, std::size_t(items) * sizeof(int), st);
  if (e != cudaSuccess) return e;
  auto kern = prep_reverse16_kernel<DECAY, GATES, Tin, D>;
  constexpr int sp = prep16_smem<DECAY, GATES, Tin, D>(), sr = Rev16Layout<D>::bytes;
  constexpr int smem = sp > sr ? sp : sr;
  if ((e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem)) != cudaSuccess) return e;
  const long long nrev = (long long)p.N * p.Hv * (D / kRevCols), nprep = p.num_sms - nrev;
  kern<<<unsigned(nrev + (items < nprep ? items : nprep)), kRevThreads, smem, st>>>(p, prep16_params<DECAY, GATES, D>(p));
  return cudaGetLastError();
}

/// The overlapped launch of one head width.
template <int D>
cudaError_t launch_prep_reverse16(const BackwardParams& p, cudaStream_t st) {
  return by_prep16_kind(p, [&](auto decay, auto gates, auto tin) {
    return launch_prep_reverse16_k<decltype(decay)::value, decltype(gates)::value, decltype(tin), D>(p, st);
  });
}

}  // namespace bwd
}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
