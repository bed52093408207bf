// gdr2 CUDA backend, backward — stage 1 (prep) for 16-bit inputs with tf32 products, built
// on the forward's fp16 tensor-core Prep (chunk_kernels.cuh: G-step, Grams, solve) plus
// Y = A Ē and U = A Z on the same fragments. It writes the same fp32 record as
// bwd::prep_body (backward_kernels.cuh), so nothing downstream changes.
//
// Persistent blocks (one per SM, 256 threads) walk the items (chunk, value head) first,
// first + grid, ...: the next item's q k b g are copied (cp.async) while this one is
// solved and written out, its v w during the solve.
//
// Precision: the products take fp16 operands (an 11-bit significand, as tf32) with fp32
// accumulation, Aqk comes from an fp16 tile (every later stage rounds it to a tf32
// operand anyway), A is the fp32 solve (or, where the fp16 record lies in the fp32 one and
// grad-1 reads it, the fp16 solve's image: store_record_tiles). What carries the absolute
// decays γ = 2^G (Qγ, Ktail, Y) is kept in fp32 range (fp16 would flush the first rows of a
// strongly decayed chunk, and with them dS_0). Device only: the host execution (CI) runs
// bwd::prep_body.
#pragma once

#include "backward_kernels.cuh"
#include "chunk_kernels.cuh"
#include "tile_maps.hpp"

#include <type_traits>

namespace gdr2 {
namespace cuda {
namespace detail {
namespace bwd {

/// The forward loader's view of the backward's inputs (what ChunkLoader reads).
inline ForwardParams loader_params(const BackwardParams& b) {
  ForwardParams f;
  static_cast<InputViews&>(f) = b;  // the same input description and sizes
  return f;
}

/// Shared memory of the 16-bit prep (bytes): the forward's Prep map, then the item's f.
template <int DECAY, int GATES, class Tin, int D>
constexpr int prep16_smem() {
  return Prep<DECAY, GATES, Tin, D, true>::L::bytes + 16;
}

/// The 16-bit prep of one persistent block (detail::kThreads threads, `sm`: prep16_smem
/// bytes): items k = first, first + stride, ... of the total_chunks · Hv (chunk, value head)
/// items, item k itself — or, given `flags` (the overlapped launch), item items − 1 − k, so
/// that each sequence's records come last chunk first, each published (publish_flag)
/// once written, for the reverse pass's blocks that wait on them (reverse16_body).
template <int DECAY, int GATES, class Tin, int D>
__device__ void prep16_body(const BackwardParams& p, const ForwardParams& fp, char* sm, long long first,
                            long long stride, int* flags) {
  using Pr = Prep<DECAY, GATES, Tin, D, true>;
  using L = typename Pr::L;
  using R = Rec<D>;
  using R16 = Rec16<D>;
  constexpr int PR = L::PR, PF = L::PF, NT = detail::kThreads;
  int& s_f = *reinterpret_cast<int*>(sm + L::bytes);  // the item's f (Rec16), past the Prep's map
  GDR2_BWD_MARK(true);  // (profiling builds: the whole persistent block is one phase)
  const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31, g8 = lane >> 2, q4 = lane & 3;
  const long long items = p.total_chunks * p.Hv;
  auto item_of = [&](long long k) { return flags ? items - 1 - k : k; };
  if (p.rec_written && *p.rec_written == 1) {  // the fused forward wrote every record (BwdRecordOut)
    if (flags && tid == 0)
      for (long long k = first; k < items; k += stride) publish_flag(flags + item_of(k));
    GDR2_BWD_MARK(false);
    return;
  }
  // (thread 0 publishes a record after a barrier that follows every thread's stores of it)
  long long prev = -1;  // the record written last, not yet published
  ChunkLoader<DECAY, GATES, Tin, D, true> ld;
  auto issue_a = [&](long long k) {
    const long long it = item_of(k);
    const ChunkLoc cl = chunk_loc(p, it / p.Hv);
    ld.issue_a(fp, sm, cl.bb, cl.t0, cl.len, int(it % p.Hv));
    cp_async_commit();
  };
  // fp32 staging [64][D], 16-byte pieces XOR-swizzled by row (conflict-free float2 writes
  // of the accumulator layout and float4 row reads)
  auto st_at = [](int r, int c) { return r * D + ((((c >> 2) ^ (r & 7))) << 2) + (c & 3); };
  // record parts read only as tf32 product operands (Qγ, Ktail, A, Y) are stored rounded
  // (op_round; Aqk is fp16, already exact in tf32)
  auto round4 = [](float4 x) { return make_float4(tf32_round(x.x), tf32_round(x.y), tf32_round(x.z), tf32_round(x.w)); };
  // this warp's accumulator tile (Prep::apply_a) → staging
  auto stage = [&](const float (&acc)[D / 16][4], float* dst) {
    const int mt = w >> 1, nh = w & 1;
#pragma unroll
    for (int nt = 0; nt < D / 16; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        *reinterpret_cast<float2*>(dst + st_at(16 * mt + g8 + 8 * h, nh * (D / 2) + 8 * nt + 2 * q4)) =
            make_float2(acc[nt][2 * h], acc[nt][2 * h + 1]);
  };
  ld.init(fp, sm);
  if (first < items) issue_a(first);
#pragma unroll 1
  for (long long k = first; k < items; k += stride) {
    const long long it = item_of(k);
    const ChunkLoc cl = chunk_loc(p, it / p.Hv);
    const int hv = int(it % p.Hv);
    float* rec = p.rec + it * R::floats;
    ld.wait_a(sm, cl.len);
    __syncthreads();
    if (flags && tid == 0 && prev >= 0) publish_flag(flags + prev);
    Pr::gstep(sm, p.scale);
    Pr::grams(sm, p.scale);
    // the fp16 reverse pass's record (p.rev16): f = ⌊log2 max_d γ_0⌋ (γ_0 = e_0, the largest
    // decay of the chunk; ≥ −126 so that 2^{−f} is a normal fp32) and the scale 2^{−f}
    char* r16 = p.rev16 ? rec16_at<D>(p, it) : nullptr;
    // (rec16_in_record: grad-1 reads Ktail and Y from the fp16 record, over the fp32 ones)
    const bool fp32_kty = !rec16_in_record<D>(p);
    if (p.rev16) {
      if (w == 0) {
        const int fw = record_exponent<DECAY, D>(reinterpret_cast<const float*>(sm + L::rg), lane);
        if (lane == 0) s_f = fw;
      }
      __syncthreads();
    }
    const int fi = p.rev16 ? s_f : 0;
    const float sc = ldexpf(1.f, -fi);
    // Decays kept in fp32 range: Qγ, Ktail exact into the record, and Ē = γ_f ⊙ Ē' with
    // Ē'_r = Bk_r·2^{G_r − G_f} ≤ |Bk_r| (fp16, over the dead BkFin) relative to the first
    // row f of r's 16-row block and γ_f (fp32, over γ_a): fp16 alone would flush γ
    // (2^{G_r}, down to 0 in the first rows with strong decays). Running products of
    // e = 2^g: a thread per (channel pair, block), as the G-step.
    if (tid < 4 * (D / 2)) {
      const int j = tid / (D / 2), d = 2 * (tid % (D / 2));
      const Tin* q = reinterpret_cast<const Tin*>(sm + L::rq);
      const Tin* k = reinterpret_cast<const Tin*>(sm + L::rk);
      const Tin* bt = reinterpret_cast<const Tin*>(sm + L::rb);
      const float* beta = reinterpret_cast<const float*>(sm + L::rb);
      const float* e = reinterpret_cast<const float*>(sm + L::rg);
      __half* eb = reinterpret_cast<__half*>(sm + L::he);
      auto E2 = [&](int r) {
        return DECAY == 0 ? *reinterpret_cast<const float2*>(e + r * D + d) : make_float2(e[r], e[r]);
      };
      float2* gf = reinterpret_cast<float2*>(Pr::ga(sm) + j * D + d);
      const float2 e0 = E2(16 * j);
      *gf = make_float2(gf->x * e0.x, gf->y * e0.y);  // γ_f = γ_a·e_f
      const float2 qg = make_float2(p.scale * gf->x, p.scale * gf->y);
      float2 P = make_float2(1.f, 1.f);
#pragma unroll 4
      for (int rr = 0; rr < 16; ++rr) {
        const int r = 16 * j + rr;
        if (rr) {
          const float2 x = E2(r);
          P = make_float2(P.x * x.x, P.y * x.y);
        }
        const float2 q2 = load2(q + r * PR + d), k2 = load2(k + r * PR + d);
        const float2 b2 = GATES == 0 ? load2(bt + r * PR + d) : make_float2(beta[r], beta[r]);
        const float2 qv = make_float2(q2.x * qg.x * P.x, q2.y * qg.y * P.y);
        // (with the fp16 reverse pass only its record reads Qγ and γ_C: grad-1 does not)
        if (r16)
          *reinterpret_cast<__half2*>(r16 + R16::qg + 2 * swz128(r, d)) = __floats2half2_rn(qv.x * sc, qv.y * sc);
        else
          *reinterpret_cast<float2*>(rec + R::Qg + r * D + d) = make_float2(tf32_round(qv.x), tf32_round(qv.y));
        *reinterpret_cast<__half2*>(eb + Pr::hx(r, d)) = __floats2half2_rn(b2.x * k2.x * P.x, b2.y * k2.y * P.y);
      }
      float2 Q = *reinterpret_cast<const float2*>(Pr::tf(sm) + j * D + d);  // 2^{G_C − G_r}, r from the block's end
#pragma unroll 4
      for (int rr = 15; rr >= 0; --rr) {
        const int r = 16 * j + rr;
        const float2 k2 = load2(k + r * PR + d), x = E2(r);
        if (fp32_kty)
          *reinterpret_cast<float2*>(rec + R::Kt + r * D + d) = make_float2(tf32_round(k2.x * Q.x), tf32_round(k2.y * Q.y));
        if (r16)
          *reinterpret_cast<__half2*>(r16 + R16::kt + 2 * swz128(r, d)) = __floats2half2_rn(k2.x * Q.x, k2.y * Q.y);
        Q = make_float2(Q.x * x.x, Q.y * x.y);
      }
    }
    __syncthreads();  // q, k, b, g read: the next item's copies may land
    ld.issue_b(fp, sm, cl.bb, cl.t0, cl.len, hv);  // v, w over the dead quadrant operands
    cp_async_commit();
    if (k + stride < items)
      issue_a(k + stride);  // over the dead q, k, b, g
    else
      cp_async_commit();
    Pr::template solve<false>(sm);
    // A, Aqk, γ_C, f (chunk_kernels.cuh: the fused forward's store loop)
    store_record_tiles<Pr, D>(sm, rec, r16, !fp32_kty, sc, fi);
    float* sY = reinterpret_cast<float*>(sm + L::hq);   // [64][D] over QFin, KFo (2 dead fp16 tiles)
    float* sU = reinterpret_cast<float*>(sm + L::t32);  // [64][D] over T, A (2 [64][PF] fp32 tiles, A
                                                        // read above: ordered by the barrier after Y)
    static_assert(L::hk == L::hq + L::HTILE && 2 * L::HTILE == kC * D * 4, "Y staging");
    static_assert(L::a32 == L::t32 + kC * PF * 4 && kC * D * 4 <= 2 * kC * PF * 4 && L::vec == L::a32 + kC * PF * 4,
                  "U staging");
    {  // Y = A Ē = Σ_blocks γ_f ⊙ (A[:, block] Ē'[block])
      float acc[D / 16][4] = {};
      Pr::template apply_a<true>(sm, reinterpret_cast<const __half*>(sm + L::he), acc, Pr::ga(sm));
      stage(acc, sY);
    }
    ld.wait_b(sm, cl.len);  // v, w of this item
    __syncthreads();
    {  // Z = w ⊙ v (tied gates: β_r v_r) as fp16, in place of v
      const Tin* v = reinterpret_cast<const Tin*>(sm + L::rv);
      const Tin* wt = reinterpret_cast<const Tin*>(sm + L::rw);
      const float* beta = reinterpret_cast<const float*>(sm + L::rb);
      for (int i = tid; i < kC * D / 8; i += NT) {
        const int r = i / (D / 8), c = 8 * (i % (D / 8));
        const uint4 vv = *reinterpret_cast<const uint4*>(v + swz128(r, c));
        uint4 ww = vv;
        if (GATES == 0) ww = *reinterpret_cast<const uint4*>(wt + swz128(r, c));
        const float bt = GATES == 1 ? beta[r] : 0.f;
        const std::uint32_t* pv = &vv.x;
        const std::uint32_t* pw = &ww.x;
        uint4 z;
        std::uint32_t* pz = &z.x;
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          const float2 a = In16<Tin>::to_float2(pv[h]);
          const float2 b = GATES == 0 ? In16<Tin>::to_float2(pw[h]) : make_float2(bt, bt);
          pz[h] = pack_half2(a.x * b.x, a.y * b.y);
        }
        *reinterpret_cast<uint4*>(sm + L::rv + swz128(r, c) * 2) = z;
      }
    }
    __syncthreads();
    {
      float acc[D / 16][4] = {};
      Pr::template apply_a<false, false>(sm, reinterpret_cast<const __half*>(sm + L::rv), acc);
      stage(acc, sU);
    }
    __syncthreads();
    for (int i = tid; i < 2 * kC * D / 4; i += NT) {  // Y, U → record, 16-byte stores
      const int m = i / (kC * D / 4), r = (i / (D / 4)) % kC, c = 4 * (i % (D / 4));
      const float4 x = *reinterpret_cast<const float4*>((m ? sU : sY) + st_at(r, c));
      if (m || fp32_kty) *reinterpret_cast<float4*>(rec + (m ? R::U : R::Y) + r * D + c) = m ? x : round4(x);
      if (!m && r16)
        *reinterpret_cast<uint2*>(r16 + R16::y + 2 * swz128(r, c)) =
            make_uint2(pack_half2(x.x * sc, x.y * sc), pack_half2(x.z * sc, x.w * sc));
    }
    // (the next item's first barrier orders these reads before its writes)
    prev = it;
  }
  if (flags) {
    __syncthreads();
    if (tid == 0 && prev >= 0) publish_flag(flags + prev);
  }
  cp_async_wait<0>();
  GDR2_BWD_MARK(false);
}

template <int DECAY, int GATES, class Tin, int D>
__global__ void __launch_bounds__(detail::kThreads, 1) prep16_kernel(const BackwardParams p, const __grid_constant__ ForwardParams fp) {
  extern __shared__ __align__(1024) char sm[];
  prep16_body<DECAY, GATES, Tin, D>(p, fp, sm, blockIdx.x, gridDim.x, nullptr);
}

/// The forward loader's parameters for the 16-bit prep (tensor maps where it can use them).
template <int DECAY, int GATES, int D>
ForwardParams prep16_params(const BackwardParams& p) {
  ForwardParams fp = loader_params(p);
  fp.K = D;
  fp.V = D;
  encode_input_maps(fp, GATES == 0, DECAY == 0);  // input tiles by tensor maps when possible
  return fp;
}

template <int DECAY, int GATES, class Tin, int D>
cudaError_t launch_prep16_k(const BackwardParams& p, cudaStream_t st) {
  auto kern = prep16_kernel<DECAY, GATES, Tin, D>;
  constexpr int smem = prep16_smem<DECAY, GATES, Tin, D>();
  cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  const long long items = p.total_chunks * p.Hv, sms = p.num_sms;
  kern<<<unsigned(items < sms ? items : sms), detail::kThreads, smem, st>>>(p, prep16_params<DECAY, GATES, D>(p));
  return cudaGetLastError();
}

/// launch(decay, gates, tin) for the kernels of the 16-bit prep this problem needs: the
/// gate policy's DECAY and GATES (as BackwardParams) as std::integral_constant, and a value
/// of the input type (bf16, fp16).
template <class Launch>
cudaError_t by_prep16_kind(const BackwardParams& p, Launch&& launch) {
  using I0 = std::integral_constant<int, 0>;
  using I1 = std::integral_constant<int, 1>;
  auto by_policy = [&](auto tin) {
    if (p.scalar_decay) return launch(I1{}, I1{}, tin);
    if (p.tied) return launch(I0{}, I1{}, tin);
    return launch(I0{}, I0{}, tin);
  };
  return p.dtype == 0 ? by_policy(__nv_bfloat16{}) : by_policy(__half{});
}

/// The 16-bit prep of one head width.
template <int D>
cudaError_t launch_prep16(const BackwardParams& p, cudaStream_t st) {
  return by_prep16_kind(p, [&](auto decay, auto gates, auto tin) {
    return launch_prep16_k<decltype(decay)::value, decltype(gates)::value, decltype(tin), D>(p, st);
  });
}

}  // namespace bwd
}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
