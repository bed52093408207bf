// gdr2 CUDA backend — the chunkwise WY forward (SPEC §3, numerics of §5) on Hopper.
//
// One chunk = 64 tokens of one (sequence, value head). A 256-thread block prepares a
// chunk entirely on chip ("prep"):
//   G-step   per channel: block-local cumulative log-decays of the four 16-token
//            sub-blocks, and from them (every exponent <= 0)
//              Fin_r  = exp(G_r − G_{a(r)})   a(r) = last row of the previous sub-block
//              Fout_r = exp(G_{e(r)} − G_r)   e(r) = last row of r's own sub-block
//              e_r    = exp(g_r)
//            (Fin, Fout as running products of e within the sub-block: one exponential
//            per element), written as fp16 operands  QFin = scale·q⊙Fin, BkFin = b⊙k⊙Fin,
//            KFo = k⊙Fout (operand tiles in the 128-byte-swizzle layout of wgmma, swz128).
//   Grams    T (strict) and Aqk (with diagonal): off-diagonal 16×16 blocks are tensor-
//            core products with an anchor between the blocks (the right operand gets the
//            bridge exp(G_{a_i} − G_{e_j}) <= 1); diagonal blocks are exact running
//            products of e_r on the CUDA cores.
//   Solve    A = (I + T)^-1 in fp32 (16×16 diagonal inverses A_ii, N_ik = A_ii T_ik, then
//            A_ij = −Σ_k N_ik A_kj as column walks down each column block).
//   Y        Ē = γ⊙b⊙k (γ_r = Fin_r·γ_{a(r)}), Y = A Ē (tensor cores); Qγ = scale·γ⊙q and
//            Ktail = k⊙exp(G_C − G_r) in place.
// The state pass then runs per warp on 16 value columns with the state transposed in
// registers (Sᵀ, fp32, in the mma accumulator layout, which is also the A-operand
// layout of the next product); the products with Y, Qγ and Ktail are warpgroup MMAs
// (wgmma: four warps, 64 value columns, B operands read once per warpgroup) wherever
// the owner warps form whole warpgroups:
//   Uᵀ = Zᵀ Aᵀ (Z = w⊙v),  Rᵀ = Uᵀ − S0ᵀ Yᵀ,  Oᵀ = S0ᵀ Qγᵀ + Rᵀ Aqkᵀ,
//   Sᵀ ← Sᵀ Diag(γ_C) + Rᵀ Ktail.
// Engines built from these pieces:
//   fused  one block per (sequence, value head) walks its chunks: prep + state pass,
//          the next chunk's q, k, b, g prefetched (tensor-map copies, TMA) while the
//          current one computes, its v, w (128-byte-swizzled TMA) during the solve.
//   split  a persistent prep kernel writes one record per (chunk, head) to the
//          workspace; a state-pass kernel per (sequence, head, value slice) streams them.
#pragma once

#include "device_common.cuh"
#include "backward_record.hpp"
#include "params.hpp"

namespace gdr2 {
namespace cuda {
namespace detail {

constexpr int kC = 64;         // chunk length
constexpr int kThreads = 256;  // prep / fused block size

#if defined(GDR2_FWD_PHASES)
// Profiling build only (cuda/src/forward_phases.cu): thread 0 of block 0 adds the cycles
// since its previous mark to phase `id` (a mark with id < 0 — the kernel's first — zeroes
// the sums and restarts the clock). The sums stay in shared memory until the kernel's end
// (GDR2_FWD_FLUSH adds them to gdr2_fwd_cycles): a mark costs thread 0 a shared-memory
// update instead of a global load's round trip, which held warp 0 (and so each phase's
// barrier) — the marked build ran ≈ 7 % slower than the bench (sixteenth session).
constexpr int kMarkIds = 16;  // phase ids 0..15: gdr2_fwd_cycles[0, kMarkIds); the step slots follow
__device__ long long gdr2_fwd_cycles[48];
__device__ __forceinline__ long long* gdr2_fwd_sums() {  // [0, kMarkIds) sums, [kMarkIds] last mark
  __shared__ long long sums[kMarkIds + 1];
  return sums;
}
__device__ __forceinline__ void gdr2_fwd_mark(int id) {
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    long long* a = gdr2_fwd_sums();
    const long long t = clock64();
    if (id >= 0) {
      a[id] += t - a[kMarkIds];
    } else {
      for (int i = 0; i < kMarkIds; ++i) a[i] = 0;
    }
    a[kMarkIds] = t;
  }
}
__device__ __forceinline__ void gdr2_fwd_flush() {
  if (blockIdx.x == 0 && threadIdx.x == 0)
    for (int i = 0; i < kMarkIds; ++i) gdr2_fwd_cycles[i] += gdr2_fwd_sums()[i];
}
#define GDR2_FWD_MARK(id) gdr2_fwd_mark(id)
#define GDR2_FWD_FLUSH() gdr2_fwd_flush()
// Per block (fused kernel, blocks < kSpanBlocks): %globaltimer (ns) and clock64 at the
// kernel's start and end, so that the driver can compare every block's span and clock rate
// with the event-timed kernel (block 0 is the only one with marks).
constexpr int kSpanBlocks = 1024;
__device__ long long gdr2_fwd_span[kSpanBlocks][4];  // start ns, end ns, start clock, end clock
__device__ __forceinline__ void gdr2_fwd_span_mark(int end) {
  if (threadIdx.x != 0 || blockIdx.x >= kSpanBlocks) return;
  long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  gdr2_fwd_span[blockIdx.x][end] = ns;
  gdr2_fwd_span[blockIdx.x][2 + end] = clock64();
}
#define GDR2_FWD_SPAN(end) gdr2_fwd_span_mark(end)
// gdr2_fwd_cycles slots beside the phases: the state step's parts, and the state pass's
// polls that found a record unpublished (block 0).
constexpr int kStepSlots = kMarkIds, kStepParts = 10, kUnpublishedSlot = 27, kHelpSlots = 32, kHelpParts = 6;
// State-pass stamps (thread 0 of block (0, 0)): clock64 into shared memory, no global
// round trip inside the step; StepClocks sums the differences of consecutive stamps.
__device__ __forceinline__ long long* gdr2_step_clk() {
  __shared__ long long clk[16];
  return clk;
}
#define GDR2_STEP_STAMP(i)                                                                       \
  do {                                                                                           \
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) gdr2_step_clk()[i] = clock64(); \
  } while (0)
/// Thread 0 of state block (0, 0): per part of the step, the cycles between its stamps
/// (stamps 0..9, the last part ends at step()); flush() adds them to gdr2_fwd_cycles.
struct StepClocks {
  long long cyc[kStepParts] = {};
  __device__ bool mine() const { return blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0; }
  __device__ void step() {
    if (!mine()) return;
    const long long end = clock64();
    const long long* t = gdr2_step_clk();
    for (int i = 0; i + 1 < kStepParts; ++i) cyc[i] += t[i + 1] - t[i];
    cyc[kStepParts - 1] += end - t[kStepParts - 1];
  }
  __device__ void flush() const {
    if (!mine()) return;
    for (int i = 0; i < kStepParts; ++i)
      atomicAdd(reinterpret_cast<unsigned long long*>(gdr2_fwd_cycles + kStepSlots + i), (unsigned long long)cyc[i]);
  }
};
#else
#define GDR2_FWD_MARK(id)
#define GDR2_FWD_FLUSH()
#define GDR2_FWD_SPAN(end)
#define GDR2_STEP_STAMP(i)
struct StepClocks {
  __device__ void step() {}
  __device__ void flush() const {}
};
#endif

/// Shared-memory map of the prep (and fused) kernels. Byte offsets.
template <int D, bool CH_DECAY, bool CH_GATES, bool WITH_V>
struct PrepLayout {
  static constexpr int PH = D + 8;  // pitch (elements) of [64][D] 16-bit tiles read by ldmatrix
  static constexpr int PR = D;      // pitch of the raw q, k, b, g tiles (dense: tensor-map copies)
  static constexpr int ATILE = kC * 64 * 2;  // A, Aqk: [64][64] fp16 swz128 tiles (wgmma operands)
  static constexpr int PF = 68;     // pitch of [64][64] fp32 tiles (16-byte rows)
  static constexpr int RAW = kC * PR * 2;
  static constexpr int HTILE = kC * D * 2;  // an operand tile he, hq, hk (swz128 layout, 1024-aligned)
  static constexpr int QUAD = 3 * 4 * 8 * PH * 2;  // quadrant operands qBk, qQ, qK: [4][8][PH] fp16 each
  static constexpr int rq = 0;
  static constexpr int rk = rq + RAW;
  static constexpr int rb = rk + RAW;  // b tile, or β as 64 floats
  static constexpr int rg = rb + (CH_GATES ? RAW : 256);  // g (then e = exp g), fp32
  // v, w tiles as swz128 operand tiles (tensor-map copies in the 128-byte swizzle)
  static constexpr int rv = (rg + (CH_DECAY ? kC * D * 4 : 256) + 1023) / 1024 * 1024;
  static constexpr int rw = rv + (WITH_V ? HTILE : 0);
  static constexpr int after_v = rw + ((WITH_V && CH_GATES) ? HTILE : 0);
  // The quadrant operands live only from the G-step to the end of the Grams; when v and w
  // tiles exist they share their space (v, w are then loaded after the Grams).
  static constexpr bool QUAD_ALIAS = WITH_V && CH_GATES;
  static constexpr int quad = QUAD_ALIAS ? rv : after_v;
  static constexpr int hq = ((QUAD_ALIAS ? after_v : after_v + QUAD) + 1023) / 1024 * 1024;  // QFin → Qγ
  static constexpr int hk = hq + HTILE;                                                    // KFo → Ktail
  static constexpr int he = hk + HTILE;                                                    // BkFin → Y
  static constexpr int a16 = he + HTILE;
  static constexpr int aqk16 = a16 + ATILE;
  static constexpr int t32 = aqk16 + ATILE;  // T (fp32); later: output staging
  static constexpr int a32 = t32 + kC * PF * 4;    // A (fp32)
  static constexpr int vec = a32 + kC * PF * 4;    // ga[4][D], tf[4][D], br[3][D], gc[D]
  static constexpr int bar = vec + 12 * D * 4;     // mbarriers of the q, k, b, g and of the v, w tile copies
  static constexpr int bytes = bar + 16;
  static_assert(!QUAD_ALIAS || QUAD <= 2 * HTILE, "quadrant operands must fit in the v, w tiles");
  static_assert(bytes <= kSmemOptIn, "prep shared memory exceeds 227 KB");
};

/// Location of one sequence's tokens.
struct SeqSpan {
  int batch, bos, eos;
};
__device__ __forceinline__ SeqSpan seq_span(const ForwardParams& p, int n) {
  if (p.cu_seqlens) {
    if (p.cu_wide) {
      const long long* cu = static_cast<const long long*>(p.cu_seqlens);
      return {0, int(cu[n]), int(cu[n + 1])};
    }
    const int* cu = static_cast<const int*>(p.cu_seqlens);
    return {0, cu[n], cu[n + 1]};
  }
  return {n, 0, p.T};
}

/// State slot of sequence n, or -1 to skip it.
__device__ __forceinline__ int seq_slot(const ForwardParams& p, int n) {
  if (!p.state_indices) return n;
  const int s = p.state_indices[n];
  return (s >= 0 && s < p.state_pool) ? s : -1;
}

__device__ __forceinline__ int gate_head(int hv, int hg, int Hv) { return int((long long)hv * hg / Hv); }

template <class T>
__device__ __forceinline__ const T* row_ptr(const void* base, const Strides3& s, int b, int t, int h) {
  return static_cast<const T*>(base) + (long long)b * s.b + (long long)t * s.t + (long long)h * s.h;
}

/// Issue cp.async copies of `rows_valid` rows (zero-filled up to 64) of a [T, D] slice:
/// rows `dst_pitch` bytes apart, or with SWZ128 (16-bit rows) into a swz128 tile (the
/// layout a 128-byte-swizzle tensor-map copy makes; `dst_pitch` unused).
template <int ROW_BYTES, bool SWZ128 = false>
__device__ __forceinline__ void load_rows(char* dst, int dst_pitch, const char* src, long long src_pitch,
                                          int rows_valid, int tid, int nthreads) {
  constexpr int CPR = ROW_BYTES / 16;
  for (int i = tid; i < kC * CPR; i += nthreads) {
    const int r = i / CPR, c = i % CPR;
    const bool ok = r < rows_valid;
    char* d = SWZ128 ? dst + 2 * swz128(r, 8 * c) : dst + r * dst_pitch + c * 16;
    cp_async16(d, src + (ok ? r * src_pitch : 0) + c * 16, ok);
  }
}

// =====================================================================================
// Prep: one chunk, whole block. Inputs in rq, rk, rb, rg (loaded), output Y (he),
// Qγ (hq), Ktail (hk), A16, Aqk16, γ_C (vec). Ends synchronised.
// =====================================================================================
template <int DECAY, int GATES, class Tin, int D, bool WITH_V>
struct Prep {
  static constexpr bool CH_DECAY = DECAY == 0;
  static constexpr bool CH_GATES = GATES == 0;
  using L = PrepLayout<D, CH_DECAY, CH_GATES, WITH_V>;
  static constexpr int PH = L::PH, PR = L::PR, PF = L::PF;

  /// Element offset of (row r, channel c) in an operand tile he, hq, hk ([64][D] fp16):
  /// swz128(r, c), the 128-byte-swizzle layout of wgmma operands (device_common.cuh).
  static __device__ __forceinline__ int hx(int r, int c) { return swz128(r, c); }
  /// Element offset of (row r, column c) in the A and Aqk tiles ([64][64] fp16): swz128 too,
  /// so that the state step's warpgroup MMAs read them (rows = output tokens, K-contiguous).
  static __device__ __forceinline__ int ax(int r, int c) { return swz128(r, c); }
  /// Zeros into the upper 16×16 blocks (i < j) of the A and Aqk tiles, which no phase
  /// writes and the state step's warpgroup MMAs read: once per block, before its first
  /// chunk's barrier.
  static __device__ void zero_upper(char* sm) {
    __half* t[2] = {reinterpret_cast<__half*>(sm + L::a16), reinterpret_cast<__half*>(sm + L::aqk16)};
    // 2 tiles × 6 blocks × 16 rows × two 16-byte pieces
    for (int i = threadIdx.x; i < 2 * 6 * 16 * 2; i += blockDim.x) {
      const int tile = i / 192, b = (i / 32) % 6, r = (i / 2) % 16, h = i & 1;
      const int bi = b < 3 ? 0 : (b < 5 ? 1 : 2), bj = b < 3 ? b + 1 : (b < 5 ? b - 1 : 3);  // (0,1..3) (1,2..3) (2,3)
      *reinterpret_cast<uint4*>(t[tile] + ax(16 * bi + r, 16 * bj + 8 * h)) = make_uint4(0u, 0u, 0u, 0u);
    }
  }
  static __device__ float* ga(char* sm) { return reinterpret_cast<float*>(sm + L::vec); }
  static __device__ float* tf(char* sm) { return reinterpret_cast<float*>(sm + L::vec) + 4 * D; }
  static __device__ float* br(char* sm) { return reinterpret_cast<float*>(sm + L::vec) + 8 * D; }
  static __device__ float* gc(char* sm) { return reinterpret_cast<float*>(sm + L::vec) + 11 * D; }
  // quadrant operands of diagonal block b, row i (0..7): left rows 16b+8+i, right rows 16b+i
  static __device__ __half* qbk(char* sm) { return reinterpret_cast<__half*>(sm + L::quad); }
  static __device__ __half* qq(char* sm) { return reinterpret_cast<__half*>(sm + L::quad) + 32 * PH; }
  static __device__ __half* qk(char* sm) { return reinterpret_cast<__half*>(sm + L::quad) + 64 * PH; }

  // ---- G-step: a thread per (channel pair, 16-token sub-block) ----------------------------
  // Log-decays are taken in log2 units; every exponent below is a non-positive difference.
  static __device__ void gstep(char* sm, float scale) {
    const int tid = threadIdx.x;
    constexpr int NP = D / 2;
    const bool active = tid < 4 * NP;
    const int dp = tid % NP, j = tid / NP, d = 2 * dp;
    float* g = reinterpret_cast<float*>(sm + L::rg);
    const Tin* q = reinterpret_cast<const Tin*>(sm + L::rq);
    const Tin* k = reinterpret_cast<const Tin*>(sm + L::rk);
    const Tin* bt = reinterpret_cast<const Tin*>(sm + L::rb);
    const float* beta = reinterpret_cast<const float*>(sm + L::rb);
    __half* hq = reinterpret_cast<__half*>(sm + L::hq);
    __half* hk = reinterpret_cast<__half*>(sm + L::hk);
    __half* he = reinterpret_cast<__half*>(sm + L::he);
    auto G2 = [&](int r) -> float2 {
      if (CH_DECAY) {
        const float2 v = *reinterpret_cast<const float2*>(g + r * D + d);
        return make_float2(v.x * kLog2e, v.y * kLog2e);
      }
      const float v = g[r] * kLog2e;
      return make_float2(v, v);
    };
    auto h2 = [](float a, float b) { return __floats2half2_rn(a, b); };
    // The thread's own log-decays, read once (registers, then e = 2^g in place): only this
    // thread reads g[16j .. 16j+15][d, d+1] (scalar decays: every thread of block j reads
    // g[16j + rr] before the first barrier), so e can be written back during the walk.
    float2 ex[16];
    if (active) {
      float2 own = make_float2(0.f, 0.f);  // block sums, shared through the (idle) A32 tile
#pragma unroll
      for (int rr = 0; rr < 16; ++rr) {
        ex[rr] = G2(j * 16 + rr);
        own.x += ex[rr].x;
        own.y += ex[rr].y;
      }
      *reinterpret_cast<float2*>(reinterpret_cast<float*>(sm + L::a32) + j * D + d) = own;
    }
    __syncthreads();  // every read of g done
    GDR2_FWD_MARK(1);
    if (active) {
      float2 s[4];
#pragma unroll
      for (int l = 0; l < 4; ++l) s[l] = *reinterpret_cast<const float2*>(reinterpret_cast<const float*>(sm + L::a32) + l * D + d);
      float2 off = make_float2(0.f, 0.f), after = off;
#pragma unroll
      for (int l = 0; l < 4; ++l) {
        if (l < j) off = make_float2(off.x + s[l].x, off.y + s[l].y);
        if (l > j) after = make_float2(after.x + s[l].x, after.y + s[l].y);
      }
      *reinterpret_cast<float2*>(ga(sm) + j * D + d) = make_float2(ex2_nonpos(off.x), ex2_nonpos(off.y));
      *reinterpret_cast<float2*>(tf(sm) + j * D + d) = make_float2(ex2_nonpos(after.x), ex2_nonpos(after.y));
      if (j == 0) {
        *reinterpret_cast<float2*>(br(sm) + 0 * D + d) = make_float2(ex2_nonpos(s[1].x), ex2_nonpos(s[1].y));
        *reinterpret_cast<float2*>(br(sm) + 1 * D + d) =
            make_float2(ex2_nonpos(s[1].x + s[2].x), ex2_nonpos(s[1].y + s[2].y));
        *reinterpret_cast<float2*>(br(sm) + 2 * D + d) = make_float2(ex2_nonpos(s[2].x), ex2_nonpos(s[2].y));
        *reinterpret_cast<float2*>(gc(sm) + d) = make_float2(ex2_nonpos(s[0].x + s[1].x + s[2].x + s[3].x),
                                                             ex2_nonpos(s[0].y + s[1].y + s[2].y + s[3].y));
      }
      // One exponential per element, e_r = 2^{g_r}; every factor of the block is a running
      // product of them (≤ 16 factors, as the leaves'): Fin_r = e_a+1···e_r forward,
      // Fout_r = e_r+1···e_end backward, and the quadrant's ql (rows 8..15, from row 7) and
      // qr (rows 0..7, to row 7) likewise. k's rows are kept for the backward walk.
      float2 fin = make_float2(1.f, 1.f), ql = fin, kr[16];
#pragma unroll
      for (int rr = 0; rr < 16; ++rr) {
        const int r = j * 16 + rr;
        ex[rr] = make_float2(ex2_nonpos(ex[rr].x), ex2_nonpos(ex[rr].y));
        if (CH_DECAY)
          *reinterpret_cast<float2*>(g + r * D + d) = ex[rr];
        else if (dp == 0)
          g[r] = ex[rr].x;
        fin = make_float2(fin.x * ex[rr].x, fin.y * ex[rr].y);
        const float2 q2 = load2(q + r * PR + d);
        kr[rr] = load2(k + r * PR + d);
        const float2 k2 = kr[rr];
        const float2 b2 = CH_GATES ? load2(bt + r * PR + d) : make_float2(beta[r], beta[r]);
        const float2 bk = make_float2(b2.x * k2.x, b2.y * k2.y), qs = make_float2(scale * q2.x, scale * q2.y);
        *reinterpret_cast<__half2*>(hq + hx(r, d)) = h2(qs.x * fin.x, qs.y * fin.y);
        *reinterpret_cast<__half2*>(he + hx(r, d)) = h2(bk.x * fin.x, bk.y * fin.y);
        if (rr >= 8) {  // left operands of the 8×8 quadrant, anchored at row 7 of the block
          ql = make_float2(ql.x * ex[rr].x, ql.y * ex[rr].y);
          const int qi = (j * 8 + rr - 8) * PH + d;
          *reinterpret_cast<__half2*>(qbk(sm) + qi) = h2(bk.x * ql.x, bk.y * ql.y);
          *reinterpret_cast<__half2*>(qq(sm) + qi) = h2(qs.x * ql.x, qs.y * ql.y);
        }
      }
      float2 fout = make_float2(1.f, 1.f), qr = fout;
#pragma unroll
      for (int rr = 15; rr >= 0; --rr) {
        const int r = j * 16 + rr;
        const float2 k2 = kr[rr];
        *reinterpret_cast<__half2*>(hk + hx(r, d)) = h2(k2.x * fout.x, k2.y * fout.y);
        fout = make_float2(fout.x * ex[rr].x, fout.y * ex[rr].y);
        if (rr < 8) {  // right operands of the quadrant
          *reinterpret_cast<__half2*>(qk(sm) + (j * 8 + rr) * PH + d) = h2(k2.x * qr.x, k2.y * qr.y);
          qr = make_float2(qr.x * ex[rr].x, qr.y * ex[rr].y);
        }
      }
    }
    __syncthreads();
    GDR2_FWD_MARK(2);
  }

  /// One level of a warp's recursive-halving sum of 2H values per lane: lanes with bit H/2
  /// set keep the upper H values, the others the lower H, each adding its partner's copy
  /// (the leaves' reduction; H a template argument so that `v` stays in registers).
  template <int H>
  static __device__ __forceinline__ void halve(float (&v)[64], int lane) {
    const bool up = (lane & (H / 2)) != 0;
#pragma unroll
    for (int i = 0; i < H; ++i) {
      const float send = up ? v[i] : v[i + H], keep = up ? v[i + H] : v[i];
      v[i] = keep + __shfl_xor_sync(0xffffffffu, send, H / 2);
    }
  }

  // ---- Grams: T (strict lower) into t32, Aqk into aqk16 -------------------------------------
  //  - off-diagonal 16×16 blocks (i > j): tensor cores, anchor at the end of block i−1
  //  - lower-left 8×8 quadrant of each diagonal block: tensor cores, anchor at its row 7
  //  - the eight 8×8 diagonal leaves: exact running products of e = exp(g), CUDA cores
  static __device__ void grams(char* sm, float scale) {
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31;
    const int g8 = lane >> 2, q4 = lane & 3;
    float* t32 = reinterpret_cast<float*>(sm + L::t32);
    __half* aqk = reinterpret_cast<__half*>(sm + L::aqk16);
    const __half* hq = reinterpret_cast<const __half*>(sm + L::hq);
    const __half* hk = reinterpret_cast<const __half*>(sm + L::hk);
    const __half* he = reinterpret_cast<const __half*>(sm + L::he);
    if (w < 6) {
      // w → block (i, j): (1,0) (2,1) (3,2) (2,0) (3,1) (3,0); bridge index into br()
      const int i = w < 3 ? w + 1 : (w == 3 ? 2 : 3);
      const int j = w < 3 ? w : (w == 4 ? 1 : 0);
      const int bridge = w < 3 ? -1 : (w == 3 ? 0 : (w == 4 ? 2 : 1));
      float accT[2][4] = {}, accA[2][4] = {};
      const float* P = bridge >= 0 ? br(sm) + bridge * D : nullptr;
#pragma unroll
      for (int kc = 0; kc < D / 16; ++kc) {
        std::uint32_t aT[4], aQ[4], b[4];
        ldsm_x4(aT, he + hx(16 * i + lrow_a(lane), 16 * kc + lcol_a(lane)));
        ldsm_x4(aQ, hq + hx(16 * i + lrow_a(lane), 16 * kc + lcol_a(lane)));
        ldsm_x4(b, hk + hx(16 * j + lrow_bn(lane), 16 * kc + lcol_bn(lane)));
        if (P) {
          const int k0 = 16 * kc + 2 * q4;
          const std::uint32_t pl = pack_half2(P[k0], P[k0 + 1]), ph = pack_half2(P[k0 + 8], P[k0 + 9]);
          b[0] = hmul2_u32(b[0], pl);
          b[1] = hmul2_u32(b[1], ph);
          b[2] = hmul2_u32(b[2], pl);
          b[3] = hmul2_u32(b[3], ph);
        }
        mma16816(accT[0], aT, b[0], b[1]);
        mma16816(accT[1], aT, b[2], b[3]);
        mma16816(accA[0], aQ, b[0], b[1]);
        mma16816(accA[1], aQ, b[2], b[3]);
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int col = 16 * j + 8 * nt + 2 * q4;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = 16 * i + g8 + 8 * h;
          t32[row * PF + col] = accT[nt][2 * h];
          t32[row * PF + col + 1] = accT[nt][2 * h + 1];
          *reinterpret_cast<__half2*>(aqk + ax(row, col)) = __floats2half2_rn(accA[nt][2 * h], accA[nt][2 * h + 1]);
        }
      }
    } else {
#pragma unroll
      for (int bb = 0; bb < 2; ++bb) {
        const int b = 2 * (w - 6) + bb;
        float accT[4] = {}, accA[4] = {};
        const int ro = (b * 8 + (lane & 7)) * PH + ((lane >> 3) & 1) * 8;
#pragma unroll
        for (int kc = 0; kc < D / 16; ++kc) {
          std::uint32_t aT[4] = {0u, 0u, 0u, 0u}, aQ[4] = {0u, 0u, 0u, 0u}, b0, b1;
          ldsm_x2(aT[0], aT[2], qbk(sm) + ro + 16 * kc);
          ldsm_x2(aQ[0], aQ[2], qq(sm) + ro + 16 * kc);
          ldsm_x2(b0, b1, qk(sm) + ro + 16 * kc);
          mma16816(accT, aT, b0, b1);
          mma16816(accA, aQ, b0, b1);
        }
        const int row = 16 * b + 8 + g8, col = 16 * b + 2 * q4;
        t32[row * PF + col] = accT[0];
        t32[row * PF + col + 1] = accT[1];
        *reinterpret_cast<__half2*>(aqk + ax(row, col)) = __floats2half2_rn(accA[0], accA[1]);
      }
    }
    // -- 8×8 diagonal leaves, exact running products of e = exp(g) on the CUDA cores ---------
    // Warp w holds leaf w (rows 8w..8w+7), lane l channels CPL·l..: each row of q, k, b, e
    // is read once per chunk. Walking the rows r = 0..7 the lane keeps y_s = k_s ⊙ e_{s+1}···e_r
    // for every s ≤ r (multiplied by e_r on reaching row r), so T_rs = Σ bk_r·y_s and
    // Aqk_rs = Σ q_r·y_s. Its 64 partial sums sit in an 8×8 grid (T_rs below the diagonal,
    // Aqk_rs at (s, r) above it, Aqk_rr on it) and are summed over the warp by recursive
    // halving: after the five shuffle levels lane l holds grid cells 2l and 2l + 1.
    {
      constexpr int CPL = D / 32;  // channels per lane (4 or 2)
      const int c0 = CPL * lane, leaf = w;
      const Tin* q = reinterpret_cast<const Tin*>(sm + L::rq);
      const Tin* k = reinterpret_cast<const Tin*>(sm + L::rk);
      const Tin* bt = reinterpret_cast<const Tin*>(sm + L::rb);
      const float* beta = reinterpret_cast<const float*>(sm + L::rb);
      const float* e = reinterpret_cast<const float*>(sm + L::rg);
      auto ld = [&](const Tin* base, int row, float (&x)[CPL]) {
        if constexpr (CPL == 4) {
          const float4 v = load4(base + row * PR + c0);
          x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
        } else {
          const float2 v = load2(base + row * PR + c0);
          x[0] = v.x, x[1] = v.y;
        }
      };
      float y[8][CPL], grid[64];  // every cell is set once below
#pragma unroll
      for (int r = 0; r < 8; ++r) {
        const int row = 8 * leaf + r;
        float bk[CPL], qr[CPL], er[CPL];
        ld(k, row, y[r]);
        ld(q, row, qr);
        if (CH_GATES) {
          ld(bt, row, bk);
#pragma unroll
          for (int c = 0; c < CPL; ++c) bk[c] *= y[r][c];
        } else {
#pragma unroll
          for (int c = 0; c < CPL; ++c) bk[c] = beta[row] * y[r][c];
        }
        if (CH_DECAY) {
          if constexpr (CPL == 4) {
            const float4 v = *reinterpret_cast<const float4*>(e + row * D + c0);
            er[0] = v.x, er[1] = v.y, er[2] = v.z, er[3] = v.w;
          } else {
            const float2 v = *reinterpret_cast<const float2*>(e + row * D + c0);
            er[0] = v.x, er[1] = v.y;
          }
        } else {
#pragma unroll
          for (int c = 0; c < CPL; ++c) er[c] = e[row];
        }
#pragma unroll
        for (int s = 0; s <= r; ++s) {
          if (s < r) {
#pragma unroll
            for (int c = 0; c < CPL; ++c) y[s][c] *= er[c];
          }
          float aT = 0.f, aA = 0.f;
#pragma unroll
          for (int c = 0; c < CPL; ++c) {
            aT = fmaf(bk[c], y[s][c], aT);
            aA = fmaf(qr[c], y[s][c], aA);
          }
          if (s < r) grid[8 * r + s] = aT;
          grid[8 * s + r] = aA;
        }
      }
      halve<32>(grid, lane);
      halve<16>(grid, lane);
      halve<8>(grid, lane);
      halve<4>(grid, lane);
      halve<2>(grid, lane);
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int cell = 2 * lane + u, a8 = cell >> 3, b8 = cell & 7;
        if (a8 > b8)
          t32[(8 * leaf + a8) * PF + 8 * leaf + b8] = grid[u];
        else
          aqk[ax(8 * leaf + b8, 8 * leaf + a8)] = __float2half_rn(scale * grid[u]);
      }
      // zeros of Aqk's diagonal 16×16 blocks: the upper triangle of leaf w and, for even
      // leaves, the upper-right 8×8 quadrant of its block
#pragma unroll
      for (int i = lane; i < 64; i += 32) {
        const int rr = i >> 3, ss = i & 7, row = 8 * w + rr;
        if (ss > rr) aqk[ax(row, 8 * w + ss)] = __float2half_rn(0.f);
        if (!(w & 1)) aqk[ax(row, 8 * w + 8 + ss)] = __float2half_rn(0.f);
      }
    }
    __syncthreads();
    GDR2_FWD_MARK(4);
  }

  // ---- Solve A = (I + T)^-1, transforms, Y = A Ē -----------------------------------------
  /// `idle(w)`: run by warps 6 and 7 while warps 0–5 form N (the solve's second phase).
  struct NoHook {
    __device__ void operator()(int) const {}
  };
  /// y()'s optional second sink: (row, column, two fp32 values of Y) before their fp16 store.
  struct NoYOut {
    __device__ void operator()(int, int, float, float) const {}
  };
  /// FENCE: the transformed Qγ, Ktail are final when `idle` runs and may be read by a bulk
  /// copy it issues (every thread fences its generic writes to them before that barrier).
  template <bool FENCE = false, class Idle = NoHook, class YOut = NoYOut>
  static __device__ void solve_and_y(char* sm, const Idle& idle = Idle{}, const YOut& yout = YOut{}) {
    solve<true, FENCE>(sm, idle);
    y(sm, yout);
  }

  /// A = (I + T)^-1 into a32 (fp32) and a16 (fp16: lower and diagonal blocks); with
  /// TRANSFORM, Qγ, Ktail in place of QFin, KFo (BkFin stays: y() forms Ē in its product). Ends synchronised.
  template <bool TRANSFORM = true, bool FENCE = false, class Idle = NoHook>
  static __device__ void solve(char* sm, const Idle& idle = Idle{}) {
    const int tid = threadIdx.x, w = tid >> 5, lane = tid & 31;
    float* t32 = reinterpret_cast<float*>(sm + L::t32);
    float* a32 = reinterpret_cast<float*>(sm + L::a32);
    __half* a16 = reinterpret_cast<__half*>(sm + L::a16);
    __half* hq = reinterpret_cast<__half*>(sm + L::hq);
    __half* hk = reinterpret_cast<__half*>(sm + L::hk);
    // (1) diagonal inverses (warps 0,1: a half-warp per block, a lane per column)
    if (w < 2) {
      const int blk = 2 * w + (lane >> 4), c = lane & 15;
      float x[16];
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        float acc = (r == c) ? 1.f : 0.f;
#pragma unroll
        for (int s = 0; s < r; ++s) acc -= t32[(16 * blk + r) * PF + 16 * blk + s] * x[s];
        x[r] = acc;
      }
#pragma unroll
      for (int r = 0; r < 16; ++r) {
        a32[(16 * blk + r) * PF + 16 * blk + c] = x[r];
        a16[ax(16 * blk + r, 16 * blk + c)] = __float2half_rn(x[r]);
      }
    }
    // (1') in place, 8 channels of RPT rows of one 16-row block per thread (the block's
    //      factors loaded once): Qγ = QFin·γ_a, Ktail = KFo·tail. (Ē = BkFin·γ_a is not
    //      formed: y() scales each row block's partial product by γ_a instead.)
    if (TRANSFORM) {
      constexpr int RPT = kC * D / 8 / kThreads;  // 4 (D = 128) or 2 (D = 64)
      static_assert(RPT * kThreads * 8 == kC * D && 16 % RPT == 0, "whole rows of one block per thread");
      const int r0 = RPT * (tid / (D / 8)), c = 8 * (tid % (D / 8)), blk = r0 >> 4;
      const float4* gp = reinterpret_cast<const float4*>(ga(sm) + blk * D + c);
      const float4* tp = reinterpret_cast<const float4*>(tf(sm) + blk * D + c);
      const float4 g0 = gp[0], g1 = gp[1], t0 = tp[0], t1 = tp[1];
      const float gv[8] = {g0.x, g0.y, g0.z, g0.w, g1.x, g1.y, g1.z, g1.w};
      const float tv[8] = {t0.x, t0.y, t0.z, t0.w, t1.x, t1.y, t1.z, t1.w};
#pragma unroll
      for (int j = 0; j < RPT; ++j) {
        const int r = r0 + j;
        uint4* pq = reinterpret_cast<uint4*>(hq + hx(r, c));
        uint4* pk = reinterpret_cast<uint4*>(hk + hx(r, c));
        uint4 vq = *pq, vk = *pk;
        std::uint32_t* uq = &vq.x;
        std::uint32_t* uk = &vk.x;
#pragma unroll
        for (int h = 0; h < 4; ++h) {
          float2 x = __half22float2(*reinterpret_cast<__half2*>(uq + h));
          uq[h] = pack_half2(x.x * gv[2 * h], x.y * gv[2 * h + 1]);
          x = __half22float2(*reinterpret_cast<__half2*>(uk + h));
          uk[h] = pack_half2(x.x * tv[2 * h], x.y * tv[2 * h + 1]);
        }
        *pq = vq;
        *pk = vk;
      }
      if (FENCE) fence_proxy_async();
    }
    __syncthreads();
    GDR2_FWD_MARK(5);
    // (2) N_ik = A_ii T_ik for the six blocks i > k, kept in T32's unused upper block (k, i);
    //     an item is 1×8 elements (two float4 chains), a warp per block.
    if (tid < 6 * 32) {
      const int bi = tid >> 5, r = (tid >> 1) & 15, c = 8 * (tid & 1);
      // bi → (i, k): (1,0) (2,1) (3,2) (2,0) (3,1) (3,0)
      const int i = bi < 3 ? bi + 1 : (bi == 3 ? 2 : 3), k = bi < 3 ? bi : (bi == 4 ? 1 : 0);
      const float* arow = a32 + (16 * i + r) * PF + 16 * i;
      const float* tcol = t32 + (16 * i) * PF + 16 * k + c;
      float4 lo = make_float4(0.f, 0.f, 0.f, 0.f), hi = lo;
#pragma unroll
      for (int u = 0; u < 16; ++u) {
        const float t = arow[u];
        const float4 x0 = *reinterpret_cast<const float4*>(tcol + u * PF);
        const float4 x1 = *reinterpret_cast<const float4*>(tcol + u * PF + 4);
        lo = make_float4(fmaf(t, x0.x, lo.x), fmaf(t, x0.y, lo.y), fmaf(t, x0.z, lo.z), fmaf(t, x0.w, lo.w));
        hi = make_float4(fmaf(t, x1.x, hi.x), fmaf(t, x1.y, hi.y), fmaf(t, x1.z, hi.z), fmaf(t, x1.w, hi.w));
      }
      float* dst = t32 + (16 * k + r) * PF + 16 * i + c;
      *reinterpret_cast<float4*>(dst) = lo;
      *reinterpret_cast<float4*>(dst + 4) = hi;
    } else {
      idle(w);
    }
    __syncthreads();
    GDR2_FWD_MARK(6);
    // (3) column walks: A_iJ = −Σ_{k=J}^{i−1} N_ik A_kJ for i = J+1..3, down column block J
    //     (a half-warp per group of NC columns, a lane per row r of each 16-row block; the
    //     A_kJ it reads are the half-warp's own earlier rows, shared through a32 and a warp
    //     sync). The longest walk (J = 0) is three dependent steps of 1, 2, 3 products,
    //     against four barrier phases by distance before (cuda/NOTES.md, forward v17).
    {
      const int hw = tid >> 4, r = lane & 15;
      if (hw < 8)
        walk<0, 2>(t32, a32, a16, r, 2 * hw);
      else if (hw < 12)
        walk<1, 4>(t32, a32, a16, r, 4 * (hw - 8));
      else
        walk<2, 4>(t32, a32, a16, r, 4 * (hw - 12));
    }
    __syncthreads();
    GDR2_FWD_MARK(7);
  }

  /// One lane's share of the column walk of block J (see solve): columns c0..c0+NC−1 of
  /// row r of the blocks i > J, in fp32 (a32) and fp16 (a16).
  template <int J, int NC>
  static __device__ __forceinline__ void walk(const float* t32, float* a32, __half* a16, int r, int c0) {
#pragma unroll
    for (int i = J + 1; i < 4; ++i) {
      float acc[NC] = {};
#pragma unroll
      for (int k = J; k < i; ++k) {
        const float* nrow = t32 + (16 * k + r) * PF + 16 * i;  // N_ik row r (upper block (k, i))
        const float* acol = a32 + (16 * k) * PF + 16 * J + c0;   // A_kJ rows 0..15, our columns
        float nv[16];
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const float4 x = *reinterpret_cast<const float4*>(nrow + 4 * q);
          nv[4 * q] = x.x, nv[4 * q + 1] = x.y, nv[4 * q + 2] = x.z, nv[4 * q + 3] = x.w;
        }
#pragma unroll
        for (int u = 0; u < 16; ++u) {
          if constexpr (NC == 2) {
            const float2 a = *reinterpret_cast<const float2*>(acol + u * PF);
            acc[0] = fmaf(nv[u], a.x, acc[0]);
            acc[1] = fmaf(nv[u], a.y, acc[1]);
          } else {
            const float4 a = *reinterpret_cast<const float4*>(acol + u * PF);
            acc[0] = fmaf(nv[u], a.x, acc[0]);
            acc[1] = fmaf(nv[u], a.y, acc[1]);
            acc[2] = fmaf(nv[u], a.z, acc[2]);
            acc[3] = fmaf(nv[u], a.w, acc[3]);
          }
        }
      }
      float* dst = a32 + (16 * i + r) * PF + 16 * J + c0;
      __half* dh = a16 + ax(16 * i + r, 16 * J + c0);
#pragma unroll
      for (int n = 0; n < NC; n += 2) {
        *reinterpret_cast<float2*>(dst + n) = make_float2(-acc[n], -acc[n + 1]);
        *reinterpret_cast<__half2*>(dh + n) = __floats2half2_rn(-acc[n], -acc[n + 1]);
      }
      __syncwarp();  // these rows of A_iJ before the half-warp's next step reads them
    }
  }

  /// acc += A·X for this warp's tile: rows 16·(w/2).., channel half w%2 (acc[nt] holds
  /// columns (w%2)·D/2 + 8·nt.., the mma accumulator layout). X: [64][D] fp16, rows =
  /// tokens, an operand tile (hx layout) or, with X_PADDED, rows of pitch PH.
  /// SCALED: acc += Σ_b diag(scale[b][:]) applied to A[:, block b]·X[block b] (fp32 per
  /// 16-row block b and column: X then keeps only each block's relative magnitudes).
  template <bool SCALED = false, bool X_PADDED = false>
  static __device__ void apply_a(const char* sm, const __half* x, float (&acc)[D / 16][4],
                                 const float* scale = nullptr) {
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, mt = w >> 1, nh = w & 1, q4 = lane & 3;
    const __half* a16 = reinterpret_cast<const __half*>(sm + L::a16);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      if (ks <= mt) {
        float part[D / 16][4] = {};
        float(&dst)[D / 16][4] = SCALED ? part : acc;
        std::uint32_t a[4];
        ldsm_x4(a, a16 + ax(16 * mt + lrow_a(lane), 16 * ks + lcol_a(lane)));
#pragma unroll
        for (int np = 0; np < D / 32; ++np) {
          std::uint32_t b[4];
          const int xr = 16 * ks + lrow_a(lane), xc = nh * (D / 2) + 16 * np + lcol_a(lane);
          ldsm_x4_t(b, x + (X_PADDED ? xr * PH + xc : hx(xr, xc)));
          mma16816(dst[2 * np], a, b[0], b[1]);
          mma16816(dst[2 * np + 1], a, b[2], b[3]);
        }
        if (SCALED) {
#pragma unroll
          for (int nt = 0; nt < D / 16; ++nt) {
            const float2 sc = *reinterpret_cast<const float2*>(scale + ks * D + nh * (D / 2) + 8 * nt + 2 * q4);
            acc[nt][0] = fmaf(sc.x, part[nt][0], acc[nt][0]);
            acc[nt][1] = fmaf(sc.y, part[nt][1], acc[nt][1]);
            acc[nt][2] = fmaf(sc.x, part[nt][2], acc[nt][2]);
            acc[nt][3] = fmaf(sc.y, part[nt][3], acc[nt][3]);
          }
        }
      }
    }
  }

  /// Y = A Ē in place of BkFin (fp16), Ē = BkFin·γ_a formed in the product: each row
  /// block's partial product scaled by its γ_a; `yout` sees every fp32 pair before its fp16
  /// store. Ends synchronised.
  template <class YOut = NoYOut>
  static __device__ void y(char* sm, const YOut& yout = YOut{}) {
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, mt = w >> 1, nh = w & 1;
    __half* he = reinterpret_cast<__half*>(sm + L::he);
    float acc[D / 16][4] = {};
    apply_a<true>(sm, he, acc, ga(sm));
    __syncthreads();
    GDR2_FWD_MARK(10);
    const int g8 = lane >> 2, q4 = lane & 3;
#pragma unroll
    for (int nt = 0; nt < D / 16; ++nt) {
      const int col = nh * (D / 2) + 8 * nt + 2 * q4;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = 16 * mt + g8 + 8 * h;
        yout(row, col, acc[nt][2 * h], acc[nt][2 * h + 1]);
        *reinterpret_cast<__half2*>(he + hx(row, col)) = __floats2half2_rn(acc[nt][2 * h], acc[nt][2 * h + 1]);
      }
    }
    __syncthreads();
    GDR2_FWD_MARK(11);
  }
};

// =====================================================================================
// State pass of one chunk for one warp: 16 value columns, state Sᵀ in registers.
// =====================================================================================
/// Layouts of the 16-bit tiles the state pass reads.
///   padded  `ld` is the row pitch in elements
///   swz128  the prep's operand tiles (swz128, device_common.cuh; `ld` unused)
enum class TileLayout { padded, swz128 };

/// Address of element (row, col) of a 16-bit tile, col a multiple of 8.
template <TileLayout TL, class T>
__device__ __forceinline__ const T* tile_at(const T* base, int ld, int row, int col) {
  if constexpr (TL == TileLayout::swz128)
    return base + swz128(row, col);
  else
    return base + row * ld + col;
}

struct StepInputs {
  const __half* Y;    // [64][K]
  const __half* Qg;   // [64][K]
  const __half* Kt;   // [64][K]
  int ph;             // see tile_at
  const __half* A;    // [64][64] swz128
  const __half* Aqk;  // [64][64] swz128
  const float* gammaC;  // [K]
  const void* Rv;       // raw v tile [64][V] (see tile_at: pitch pv, or swz128), columns from vcol
  const void* Rw;       // raw w tile (channel gates) or null
  const float* beta;    // [64] (tied gates) or null
  int pv, vcol;
  // split path: the mbarrier (and its phase parity) on which Y, Qγ, Ktail, Aqk and γ_C land,
  // after A, β and the v, w rows the first product needs; null: every tile is there
  std::uint64_t* rest = nullptr;
  std::uint32_t rest_parity = 0;
  /// Wait for the tiles behind `rest` (the products with S0 read them; Uᵀ does not).
  __device__ __forceinline__ void wait_rest() const {
    if (rest) mbar_wait(rest, rest_parity);
  }
};

/// wgmma descriptors of the swz128 operand tiles Y, Qγ, Ktail ([64 tokens][D], atoms of 64
/// channels 8 KB apart, 8-row groups 1024 B apart): as B = Xᵀ (K = channels, K-contiguous)
/// for channels 16·kc.., and as B = X (K = tokens, N = channels contiguous) for tokens 16·ks..
__device__ __forceinline__ std::uint64_t desc_channels(const __half* x, int kc) {
  return wgmma_desc(x + (kc >> 2) * (64 * 64) + (kc & 3) * 16, 16, 1024);
}
__device__ __forceinline__ std::uint64_t desc_tokens(const __half* x, int ks) {
  return wgmma_desc(x + ks * 16 * 64, kWgmmaMnLbo, kWgmmaMnSbo);
}

/// What a state step is compiled for: HL, VL the layouts of Y/Qγ/Ktail and of the v, w
/// tiles (A and Aqk are swz128); WG: every product as warpgroup MMAs (HL =
/// swz128; the owner warps form whole warpgroups, warp w of a group holding its rows
/// 16·(w mod 4).. of the group's 64 value columns); TIED: Z = β⊙v (else w⊙v). Every
/// branch of the step is then resolved at compile time: a warpgroup MMA in flight across a
/// runtime branch makes ptxas wait for it there.
template <TileLayout HL_, TileLayout VL_, bool WG_, bool TIED_>
struct StepKind {
  static constexpr TileLayout HL = HL_, VL = VL_;
  static constexpr bool WG = WG_, TIED = TIED_;
};

/// Zᵀ (Z = w⊙v or β⊙v) as fp16 A operands (this warp's 16 value columns × 64 tokens, k =
/// tokens), one per 16-token block.
template <class Tin, class K>
__device__ __forceinline__ void step_z(std::uint32_t (&z)[4][4], const StepInputs& in, int lane) {
  constexpr TileLayout VL = K::VL;
  const int q4 = lane & 3;
  const Tin* Rv = static_cast<const Tin*>(in.Rv);
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    std::uint32_t zv[4];
    ldsm_x4_t(zv, tile_at<VL>(Rv, in.pv, 16 * ks + lrow_bn(lane), in.vcol + lcol_bn(lane)));
    if constexpr (!K::TIED) {
      std::uint32_t zw[4];
      ldsm_x4_t(zw, tile_at<VL>(static_cast<const Tin*>(in.Rw), in.pv, 16 * ks + lrow_bn(lane), in.vcol + lcol_bn(lane)));
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 a = In16<Tin>::to_float2(zv[i]), b = In16<Tin>::to_float2(zw[i]);
        z[ks][i] = pack_half2(a.x * b.x, a.y * b.y);
      }
    } else {
      const float2 b0 = *reinterpret_cast<const float2*>(in.beta + 16 * ks + 2 * q4);
      const float2 b1 = *reinterpret_cast<const float2*>(in.beta + 16 * ks + 8 + 2 * q4);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 a = In16<Tin>::to_float2(zv[i]);
        const float2 b = i < 2 ? b0 : b1;
        z[ks][i] = pack_half2(a.x * b.x, a.y * b.y);
      }
    }
  }
}

/// acc += X Wᵀ by mma.sync for a lower block-triangular W ([64][64] swz128: A or Aqk) and X
/// given as fp16 A operands per 16-token block (Zᵀ or Rᵀ): block np only takes k-steps
/// ks <= np.
__device__ __forceinline__ void step_tri(float (&acc)[8][4], const std::uint32_t (&x)[4][4], const __half* W,
                                         int lane) {
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      if (np >= ks) {
        std::uint32_t b[4];
        ldsm_x4(b, W + swz128(16 * np + lrow_bn(lane), 16 * ks + lcol_bn(lane)));
        mma16816(acc[2 * np], x[ks], b[0], b[1]);
        mma16816(acc[2 * np + 1], x[ks], b[2], b[3]);
      }
    }
  }
}

/// acc (+)= X Wᵀ as warpgroup MMAs for a [64][64] swz128 tile W (A or Aqk; its zero upper
/// blocks are stored zeros: Prep::zero_upper). FIRST: acc is overwritten, not accumulated.
/// (Skipping the zero blocks — m64n48k16 and narrower on the accumulators' last columns —
/// made ptxas serialize every warpgroup MMA of the kernel: C7511, "insufficient register
/// resources for the wgmma pipeline".)
template <bool FIRST>
__device__ __forceinline__ void wgmma_lower(float (&acc)[8][4], const std::uint32_t (&x)[4][4], const __half* W) {
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    const std::uint64_t b = desc_channels(W, ks);  // tokens 16·ks.. of every row (K-contiguous, as channels)
    if (FIRST && ks == 0)
      wgmma_f16_first_64(acc, x[0], b, false);
    else
      wgmma_f16<64, 0>(acc, x[ks], b, false);
  }
}

/// Rᵀ as fp16 A operands (k = tokens).
__device__ __forceinline__ void pack_r(std::uint32_t (&rf)[4][4], const float (&R)[8][4]) {
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    rf[ks][0] = pack_half2(R[2 * ks][0], R[2 * ks][1]);
    rf[ks][1] = pack_half2(R[2 * ks][2], R[2 * ks][3]);
    rf[ks][2] = pack_half2(R[2 * ks + 1][0], R[2 * ks + 1][1]);
    rf[ks][3] = pack_half2(R[2 * ks + 1][2], R[2 * ks + 1][3]);
  }
}

/// Sᵀ ← Sᵀ Diag(γ_C).
template <int D>
__device__ __forceinline__ void step_decay(float (&S)[D / 8][4], const float* gammaC, int lane) {
  const int q4 = lane & 3;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt) {
    const float2 gcv = *reinterpret_cast<const float2*>(gammaC + 8 * nt + 2 * q4);
    S[nt][0] *= gcv.x;
    S[nt][1] *= gcv.y;
    S[nt][2] *= gcv.x;
    S[nt][3] *= gcv.y;
  }
}

/// Oᵀ (this warp's 16 value columns × 64 tokens, mma accumulators) rounded to 16 bits as
/// [64 tokens][16 columns]: the 16-byte half h (columns 8h..8h+7) of token row t goes to
/// at(t, h). Four transposing stmatrix instructions.
template <class Tin, class At>
__device__ __forceinline__ void stage_o(const float (&O)[8][4], At at, int lane) {
  const int j = lane & 7, h = (lane >> 3) & 1, sub = lane >> 4;
#pragma unroll
  for (int nt = 0; nt < 8; nt += 2) {
    const std::uint32_t r[4] = {In16<Tin>::pack2(O[nt][0], O[nt][1]), In16<Tin>::pack2(O[nt][2], O[nt][3]),
                                In16<Tin>::pack2(O[nt + 1][0], O[nt + 1][1]),
                                In16<Tin>::pack2(O[nt + 1][2], O[nt + 1][3])};
    stsm_x4_t(at(8 * (nt + sub) + j, h), r);
  }
}

/// Output sink of the fused kernel: each warp stages its Oᵀ in its own 2 KB tile (32-byte
/// rows, the halves swapped on rows 4..7 of every 8 so that stmatrix's 8 rows hit distinct
/// banks), then stores the `n` valid token rows with 16-byte stores.
template <class Tin>
struct WarpOut {
  char* stage;
  Tin* out;
  long long tstride;
  int n;
  __device__ __forceinline__ static int at(int t, int h) { return t * 32 + 16 * (h ^ ((t >> 2) & 1)); }
  __device__ __forceinline__ void put(const float (&O)[8][4], int lane) const {
    __syncwarp();
    stage_o<Tin>(O, [&](int t, int h) { return stage + at(t, h); }, lane);
    __syncwarp();
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int id = lane + 32 * i, row = id >> 1, hh = id & 1;
      if (row < n)
        *reinterpret_cast<uint4*>(out + row * tstride + 8 * hh) = *reinterpret_cast<const uint4*>(stage + at(row, hh));
    }
  }
};

/// Output sink of the split state pass: warp w stages its Oᵀ into columns 16w.. of the
/// block's [64 tokens][vs] tile (row pitch `pitch` bytes, 16 bytes more than a row: stmatrix's
/// 8 rows hit distinct banks); helper warps store the tile (state_body).
template <class Tin>
struct TileOut {
  char* tile;
  int pitch, col0;  // bytes; this warp's first column
  __device__ __forceinline__ void put(const float (&O)[8][4], int lane) const {
    stage_o<Tin>(O, [&](int t, int h) { return tile + t * pitch + (col0 + 8 * h) * 2; }, lane);
  }
};

/// Each of this warp's 16 rows of Sᵀ (accumulators: value column vv = 0..15 of the warp,
/// key row kk) as put(kk, vv, value): the one place that knows the accumulator layout.
template <int D, class Put>
__device__ __forceinline__ void state_elems(const float (&S)[D / 8][4], int lane, Put&& put) {
  const int g8 = lane >> 2, q4 = lane & 3;
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) put(8 * nt + 2 * q4 + (e & 1), g8 + 8 * (e >> 1), S[nt][e]);
}

/// Sᵀ (this warp's 16 rows × D channels, accumulators) as fp16 A operands, k = channels.
template <int D>
__device__ __forceinline__ void pack_state_a(std::uint32_t (&sa)[D / 16][4], const float (&S)[D / 8][4]) {
#pragma unroll
  for (int kc = 0; kc < D / 16; ++kc) {
    sa[kc][0] = pack_half2(S[2 * kc][0], S[2 * kc][1]);
    sa[kc][1] = pack_half2(S[2 * kc][2], S[2 * kc][3]);
    sa[kc][2] = pack_half2(S[2 * kc + 1][0], S[2 * kc + 1][1]);
    sa[kc][3] = pack_half2(S[2 * kc + 1][2], S[2 * kc + 1][3]);
  }
}

/// Training (ForwardParams::chunk_states): this warp's 16 rows of Sᵀ — the state at the
/// start of the chunk at row `row`, value columns v0..v0+15 — into the [K][V] state of
/// (row, hv), in fp32 as the state pass holds it (the backward rounds it for its tf32
/// products itself, after summing dS ⊙ S over it: cuda/NOTES.md backward item 23). For a
/// fixed register the warp writes four key rows × 8 consecutive value columns: whole
/// 32-byte sectors. (Staging through shared memory into 512-byte pieces
/// measured no faster: cuda/NOTES.md, backward v26.)
template <int D>
__device__ __forceinline__ void save_chunk_state(const float (&S)[D / 8][4], float* cs, long long row, int Hv, int hv,
                                                 int v0, int lane) {
  float* base = cs + (row * Hv + hv) * (long long)(D * D);
  state_elems<D>(S, lane, [&](int kk, int vv, float x) { base[kk * D + v0 + vv] = x; });
}

/// Training, split path with helper warps: this warp's 16 columns of Sᵀ (col0.. of the
/// block's slice), in fp32 as save_chunk_state stores them, into a [K][vs] fp32 tile
/// of `pitch` bytes per key row (vs·4 + 16: the lanes of one store hit 32 distinct banks),
/// which the copier helpers store to the chunk's [K][V] state.
template <int D>
__device__ __forceinline__ void stage_chunk_state(const float (&S)[D / 8][4], char* tile, int pitch, int col0,
                                                  int lane) {
  state_elems<D>(S, lane,
                 [&](int kk, int vv, float x) { *reinterpret_cast<float*>(tile + kk * pitch + (col0 + vv) * 4) = x; });
}

/// The D key rows of a staged tile (`pitch` bytes per row) to rows of D elements of type X
/// whose row 0 begins at `dst` (the tile's first column), in 16-byte pieces: this thread's
/// piece `piece` of rows r0, r0 + rs, ... (its share of the threads that store the tile). The
/// forward's fp32 chunk states and the fp16 reverse pass's dS_c.
template <int D, class X>
__device__ __forceinline__ void store_staged_rows(X* dst, const char* tile, int pitch, int piece, int r0, int rs) {
  constexpr int per = 16 / sizeof(X);  // elements per piece
  dst += per * piece;
  tile += 16 * piece;
  for (int kk = r0; kk < D; kk += rs)
    *reinterpret_cast<uint4*>(dst + kk * D) = *reinterpret_cast<const uint4*>(tile + kk * pitch);
}

/// state_step's optional sink of Rᵀ = Uᵀ − S0ᵀ Yᵀ (this warp's 16 value columns × 64 tokens,
/// in its accumulator layout), called once it is complete, before Oᵀ and S read it.
struct NoROut {
  __device__ void operator()(const float (&)[8][4], int) const {}
};

/// One chunk step of this warp's 16 value columns (K: a StepKind). With K::WG every product
/// is a warpgroup MMA, its operand tiles read once per warpgroup, in four groups: Uᵀ = Zᵀ Aᵀ;
/// Oᵀ = S0ᵀ Qγᵀ and Rᵀ = Uᵀ − S0ᵀ Yᵀ; Oᵀ += Rᵀ Aqkᵀ; the S update, in flight while Oᵀ is staged
/// (why in this order: cuda/NOTES.md, v9 and forward item 14).
template <class Tin, int D, class K, class Sink, class ROut = NoROut>
__device__ __forceinline__ void state_step(float (&S)[D / 8][4], const StepInputs& in, const Sink& sink, int lane,
                                           const ROut& rout = ROut{}) {
  float R[8][4];
  float O[8][4];
  std::uint32_t z[4][4], rf[4][4];
  constexpr TileLayout HL = K::HL;
  step_z<Tin, K>(z, in, lane);
  GDR2_STEP_STAMP(4);
  if constexpr (K::WG) {
    static_assert(HL == TileLayout::swz128, "warpgroup MMAs read swz128 tiles");
    // Uᵀ = Zᵀ Aᵀ in a group of its own, waited for before S0ᵀ is packed: packing while it
    // was in flight made ptxas insert waits (C7517) or serialize the MMAs (C7518), and one
    // group with the products below held too many registers in flight (spills)
    wgmma_fence();
    wgmma_lower<true>(R, z, in.A);
    wgmma_commit();
    in.wait_rest();
    wgmma_wait_all();
    wgmma_fence_operands(R);
    // S0ᵀ as fp16 A operands (k = channels); registers read by the MMAs until the wait
    std::uint32_t sa[D / 16][4];
    pack_state_a<D>(sa, S);
    // Oᵀ = S0ᵀ Qγᵀ, Rᵀ = Uᵀ − S0ᵀ Yᵀ
    wgmma_fence();
    wgmma_f16_first_64(O, sa[0], desc_channels(in.Qg, 0), false);
#pragma unroll
    for (int kc = 1; kc < D / 16; ++kc) wgmma_f16<64, 0>(O, sa[kc], desc_channels(in.Qg, kc), false);
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) wgmma_f16<64, 0>(R, sa[kc], desc_channels(in.Y, kc), true);
    wgmma_commit();
    wgmma_wait_all();
    wgmma_fence_operands(O);
    wgmma_fence_operands(R);
    rout(R, lane);
    GDR2_STEP_STAMP(5);
    // Oᵀ += Rᵀ Aqkᵀ, then Sᵀ ← Sᵀ Diag(γ_C) + Rᵀ Ktail (in flight while Oᵀ is staged)
    pack_r(rf, R);
    step_decay<D>(S, in.gammaC, lane);
    wgmma_fence();
    wgmma_lower<false>(O, rf, in.Aqk);
    wgmma_commit();
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) wgmma_f16<D, 1>(S, rf[ks], desc_tokens(in.Kt, ks), false);
    wgmma_commit();
    GDR2_STEP_STAMP(6);
    wgmma_wait<1>();
    wgmma_fence_operands(O);
    GDR2_STEP_STAMP(7);
    sink.put(O, lane);
    GDR2_STEP_STAMP(8);
    wgmma_wait_all();
    wgmma_fence_operands(S);
    GDR2_STEP_STAMP(9);
  } else {
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      R[nt][0] = R[nt][1] = R[nt][2] = R[nt][3] = 0.f;
      O[nt][0] = O[nt][1] = O[nt][2] = O[nt][3] = 0.f;
    }
    step_tri(R, z, in.A, lane);  // Uᵀ
    in.wait_rest();
    // Rᵀ −= S0ᵀ Yᵀ ;  Oᵀ = S0ᵀ Qγᵀ
#pragma unroll
    for (int kc = 0; kc < D / 16; ++kc) {
      std::uint32_t a[4], an[4];
      a[0] = pack_half2(S[2 * kc][0], S[2 * kc][1]);
      a[1] = pack_half2(S[2 * kc][2], S[2 * kc][3]);
      a[2] = pack_half2(S[2 * kc + 1][0], S[2 * kc + 1][1]);
      a[3] = pack_half2(S[2 * kc + 1][2], S[2 * kc + 1][3]);
#pragma unroll
      for (int i = 0; i < 4; ++i) an[i] = hneg2_u32(a[i]);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        std::uint32_t b[4];
        ldsm_x4(b, tile_at<HL>(in.Y, in.ph, 16 * np + lrow_bn(lane), 16 * kc + lcol_bn(lane)));
        mma16816(R[2 * np], an, b[0], b[1]);
        mma16816(R[2 * np + 1], an, b[2], b[3]);
        ldsm_x4(b, tile_at<HL>(in.Qg, in.ph, 16 * np + lrow_bn(lane), 16 * kc + lcol_bn(lane)));
        mma16816(O[2 * np], a, b[0], b[1]);
        mma16816(O[2 * np + 1], a, b[2], b[3]);
      }
    }
    rout(R, lane);
    pack_r(rf, R);
    step_tri(O, rf, in.Aqk, lane);  // Oᵀ += Rᵀ Aqkᵀ
    // Sᵀ ← Sᵀ Diag(γ_C) + Rᵀ Ktail
    step_decay<D>(S, in.gammaC, lane);
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
      for (int cp = 0; cp < D / 16; ++cp) {
        std::uint32_t b[4];
        ldsm_x4_t(b, tile_at<HL>(in.Kt, in.ph, 16 * ks + lrow_a(lane), 16 * cp + lcol_a(lane)));
        mma16816(S[2 * cp], rf[ks], b[0], b[1]);
        mma16816(S[2 * cp + 1], rf[ks], b[2], b[3]);
      }
    }
    sink.put(O, lane);
  }
}

/// Load / store this warp's 16 rows of Sᵀ (value columns v0..v0+15) from a state view.
template <int D>
__device__ __forceinline__ void load_state(float (&S)[D / 8][4], const float* s0, const long long* st, int slot,
                                           int hv, int v0, int lane) {
  const int g8 = lane >> 2, q4 = lane & 3;
  if (!s0) {
#pragma unroll
    for (int nt = 0; nt < D / 8; ++nt) S[nt][0] = S[nt][1] = S[nt][2] = S[nt][3] = 0.f;
    return;
  }
  const float* base = s0 + slot * st[0] + hv * st[1];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int kk = 8 * nt + 2 * q4 + (e & 1), vv = v0 + g8 + 8 * (e >> 1);
      S[nt][e] = base[kk * st[2] + vv * st[3]];
    }
}
template <int D>
__device__ __forceinline__ void store_state(const float (&S)[D / 8][4], float* sT, const long long* st, int slot,
                                            int hv, int v0, int lane) {
  if (!sT) return;
  const int g8 = lane >> 2, q4 = lane & 3;
  float* base = sT + slot * st[0] + hv * st[1];
#pragma unroll
  for (int nt = 0; nt < D / 8; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int kk = 8 * nt + 2 * q4 + (e & 1), vv = v0 + g8 + 8 * (e >> 1);
      base[kk * st[2] + vv * st[3]] = S[nt][e];
    }
}

/// Σ_{m<n} ceil(len_m / 64): the chunk row of sequence n's first chunk, by the whole block
/// (every thread gets it; `scratch`: 32 floats of shared memory free until the next barrier).
__device__ __forceinline__ long long block_chunk_base(const ForwardParams& p, int n, void* scratch) {
  if (!p.cu_seqlens) return (long long)n * p.chunks_per_seq;
  long long part = 0;
  for (int m = threadIdx.x; m < n; m += blockDim.x) {
    const SeqSpan s = seq_span(p, m);
    part += (s.eos - s.bos + kC - 1) / kC;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
  long long* red = static_cast<long long*>(scratch);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = part;
  __syncthreads();
  long long sum = 0;
  for (int i = 0; i < int(blockDim.x >> 5); ++i) sum += red[i];
  return sum;
}

// =====================================================================================
// Input loading for one chunk of (sequence span, value head): group A = q, k, b|β, g;
// group B = v, w (swz128 tiles: the state pass's ldmatrix reads them conflict-free). With
// p.tma every tile is a tensor-map copy (TMA: one instruction per tile or 64-channel atom,
// issued by thread 0, completing the group's mbarrier), else 16-byte cp.async from every
// thread; per-token scalars (β, scalar g) through registers.
// Protocol per chunk: issue_a · cp_async_commit ... wait_a · __syncthreads ... issue_b ·
// cp_async_commit ... (issue_a of the next chunk · cp_async_commit) ... wait_b ·
// __syncthreads. Each group's waits follow its issues one for one.
// =====================================================================================
template <int DECAY, int GATES, class Tin, int D, bool WITH_V>
struct ChunkLoader {
  using L = PrepLayout<D, DECAY == 0, GATES == 0, WITH_V>;
  static constexpr int kBytesA = kC * D * (2 * sizeof(Tin) + (GATES == 0 ? sizeof(Tin) : 0) + (DECAY == 0 ? 4 : 0));
  static constexpr int kBytesB = kC * D * sizeof(Tin) * (GATES == 0 ? 2 : 1);
  float pre_beta = 0.f, pre_g = 0.f;  // per-token scalars in flight (threads < 64)
  bool tma = false;
  std::uint32_t waits = 0, waits_b = 0;  // copies waited for (the mbarriers' phase parities)

  /// One tensor-map copy of the 64-token tile at `t0` of (batch, head) into `off`, in
  /// `atoms` boxes of D / atoms channels (atoms > 1: the swz128 atoms, 8 KB apart),
  /// completing `bar`.
  static __device__ void tma_tile(const ForwardParams& p, char* sm, int off, int map, int t0, int head, int batch,
                                  int atoms, void* bar) {
    const TileMap& m = p.maps[map];
    const int x[3] = {t0, head, batch};
    for (int a = 0; a < atoms; ++a)
      tma_load_4d(sm + off + a * (kC * 64 * 2), m.desc, a * (D / atoms), x[m.dim[0]], x[m.dim[1]], x[m.dim[2]], bar);
  }

  /// With tensor maps: thread 0 sets up the mbarriers. Ends synchronised.
  __device__ void init(const ForwardParams& p, char* sm) {
    tma = p.tma != 0;
    if (tma && threadIdx.x == 0) {
      mbar_init(sm + L::bar, 1);
      mbar_init(sm + L::bar + 8, 1);
    }
    __syncthreads();
  }

  /// Heads that group A (q, k, b or β, g) of value head hv reads.
  struct HeadsA {
    int k, b, g;
  };
  static __device__ HeadsA heads_a(const ForwardParams& p, int hv) {
    return {hv / p.group, gate_head(hv, GATES == 0 ? p.hg_b : p.hg_beta, p.Hv), gate_head(hv, p.hg_g, p.Hv)};
  }

  /// Group A's tiles by tensor maps, issued by the calling thread (one thread). Every
  /// thread's generic accesses to these tiles precede this by a barrier.
  __device__ void tma_a(const ForwardParams& p, char* sm, int batch, int t0, int hv) const {
    const auto [hk, hb, hgg] = heads_a(p, hv);
    fence_proxy_async();  // orders those accesses before the copy engine's writes
    void* bar = sm + L::bar;
    mbar_expect_tx(bar, kBytesA);
    tma_tile(p, sm, L::rq, kMapQ, t0, hk, batch, 1, bar);
    tma_tile(p, sm, L::rk, kMapK, t0, hk, batch, 1, bar);
    if (GATES == 0) tma_tile(p, sm, L::rb, kMapB, t0, hb, batch, 1, bar);
    if (DECAY == 0) tma_tile(p, sm, L::rg, kMapG, t0, hgg, batch, 1, bar);
  }
  /// Group B's tiles (v, w) by tensor maps, issued by the calling thread; as tma_a.
  __device__ void tma_b(const ForwardParams& p, char* sm, int batch, int t0, int hv) const {
    const int hw = gate_head(hv, p.hg_w, p.Hv);
    fence_proxy_async();
    void* bar = sm + L::bar + 8;
    mbar_expect_tx(bar, kBytesB);
    tma_tile(p, sm, L::rv, kMapV, t0, hv, batch, D / 64, bar);
    if (GATES == 0) tma_tile(p, sm, L::rw, kMapW, t0, hw, batch, D / 64, bar);
  }

  /// Issue group A (q, k, b, g) of a chunk; called by every thread. With tensor maps the
  /// tiles come from thread 0, or, with `tiles` false, from a later tma_a; the per-token
  /// scalars (β, scalar g) are loaded here either way.
  __device__ void issue_a(const ForwardParams& p, char* sm, int batch, int t0, int len, int hv, bool tiles = true) {
    const int tid = threadIdx.x;
    const auto [hk, hb, hgg] = heads_a(p, hv);
    if (tma) {
      if (tiles && tid == 0) tma_a(p, sm, batch, t0, hv);
    } else {
      load_rows<D * 2>(sm + L::rq, L::PR * 2, reinterpret_cast<const char*>(row_ptr<Tin>(p.q, p.sq, batch, t0, hk)),
                       p.sq.t * 2, len, tid, kThreads);
      load_rows<D * 2>(sm + L::rk, L::PR * 2, reinterpret_cast<const char*>(row_ptr<Tin>(p.k, p.sk, batch, t0, hk)),
                       p.sk.t * 2, len, tid, kThreads);
      if (GATES == 0)
        load_rows<D * 2>(sm + L::rb, L::PR * 2, reinterpret_cast<const char*>(row_ptr<Tin>(p.b, p.sb, batch, t0, hb)),
                         p.sb.t * 2, len, tid, kThreads);
      if (DECAY == 0)
        load_rows<D * 4>(sm + L::rg, D * 4, reinterpret_cast<const char*>(row_ptr<float>(p.g, p.sg, batch, t0, hgg)),
                         p.sg.t * 4, len, tid, kThreads);
    }
    if (GATES == 1 && tid < kC)
      pre_beta = tid < len ? In16<Tin>::to_float(*row_ptr<Tin>(p.beta, p.sbeta, batch, t0 + tid, hb)) : 0.f;
    if (DECAY == 1 && tid < kC) pre_g = tid < len ? *row_ptr<float>(p.g, p.sg, batch, t0 + tid, hgg) : 0.f;
  }
  /// Wait for group A of the chunk of `len` tokens; rows >= len zeroed (a tile copy reads
  /// whole boxes: past a packed sequence's end come the next one's tokens), the per-token
  /// scalars moved into shared memory. Follow with __syncthreads.
  __device__ void wait_a(char* sm, int len) {
    const int tid = threadIdx.x;
    if (tma) {
      mbar_wait(sm + L::bar, waits & 1);
      ++waits;
      if (len < kC) {
        constexpr int CR = D * 2 / 16;  // 16-byte pieces per 16-bit row (fp32 g: 2·CR)
        const int nz = (kC - len) * CR;
        const uint4 z = make_uint4(0u, 0u, 0u, 0u);
        for (int i = tid; i < nz; i += kThreads) {
          const int off = len * D * 2 + i * 16;
          *reinterpret_cast<uint4*>(sm + L::rq + off) = z;
          *reinterpret_cast<uint4*>(sm + L::rk + off) = z;
          if (GATES == 0) *reinterpret_cast<uint4*>(sm + L::rb + off) = z;
          if (DECAY == 0) {
            *reinterpret_cast<uint4*>(sm + L::rg + 2 * len * D * 2 + 2 * i * 16) = z;
            *reinterpret_cast<uint4*>(sm + L::rg + 2 * len * D * 2 + 2 * i * 16 + 16) = z;
          }
        }
      }
    } else {
      cp_async_wait<0>();
    }
    if (tid < kC) {
      if (GATES == 1) reinterpret_cast<float*>(sm + L::rb)[tid] = pre_beta;
      if (DECAY == 1) reinterpret_cast<float*>(sm + L::rg)[tid] = pre_g;
    }
  }
  /// Issue group B (v, w) of a chunk; called by every thread (with tensor maps and `tiles`
  /// false: nothing, a later tma_b issues them). Every thread's accesses to their tiles
  /// precede this by a barrier.
  __device__ void issue_b(const ForwardParams& p, char* sm, int batch, int t0, int len, int hv, bool tiles = true) {
    const int tid = threadIdx.x;
    const int hw = gate_head(hv, p.hg_w, p.Hv);
    if (tma) {
      if (tiles && tid == 0) tma_b(p, sm, batch, t0, hv);
    } else {
      load_rows<D * 2, true>(sm + L::rv, 0, reinterpret_cast<const char*>(row_ptr<Tin>(p.v, p.sv, batch, t0, hv)),
                             p.sv.t * 2, len, tid, kThreads);
      if (GATES == 0)
        load_rows<D * 2, true>(sm + L::rw, 0, reinterpret_cast<const char*>(row_ptr<Tin>(p.w, p.sw, batch, t0, hw)),
                               p.sw.t * 2, len, tid, kThreads);
    }
  }
  /// Wait for group B of the chunk of `len` tokens (rows >= len zeroed: past a packed
  /// sequence's end come the next one's tokens). With cp.async the newest commit group
  /// (the next chunk's group A) stays in flight. Follow with __syncthreads.
  __device__ void wait_b(char* sm, int len) {
    if (tma) {
      mbar_wait(sm + L::bar + 8, waits_b & 1);
      ++waits_b;
      if (len < kC) {
        constexpr int ATOM = kC * 64 * 2;  // bytes of one 64-channel atom; row r at r·128
        const int nz = (kC - len) * 8;     // 16-byte pieces past row len in one atom
        const uint4 z = make_uint4(0u, 0u, 0u, 0u);
        for (int i = threadIdx.x; i < (D / 64) * nz; i += kThreads) {
          const int off = (i / nz) * ATOM + len * 128 + (i % nz) * 16;
          *reinterpret_cast<uint4*>(sm + L::rv + off) = z;
          if (GATES == 0) *reinterpret_cast<uint4*>(sm + L::rw + off) = z;
        }
      }
    } else {
      cp_async_wait<1>();
    }
  }
};

// =====================================================================================
// The backward's records from the fused forward (ForwardParams::bwd_rec).
// =====================================================================================
/// The fp16 record's exponent f = ⌊log2 max_d γ_0⌋ of a chunk (bwd::Rec16), from the decays
/// e = 2^g of its first token (channel-wise: e[0..D), scalar: e[0]), ≥ −126 so that 2^{−f}
/// is a normal fp32: every lane of the calling warp gets it.
template <int DECAY, int D>
__device__ __forceinline__ int record_exponent(const float* e, int lane) {
  float m = 0.f;
  if (DECAY == 0)
    for (int d = lane; d < D; d += 32) m = fmaxf(m, e[d]);
  else
    m = e[0];
  m = warp_max(m);
  int ex = 0;
  frexpf(m, &ex);
  return m > 0.f && ex - 1 > -126 ? ex - 1 : -126;
}

/// The solved tiles of one chunk-head into the backward's records, after the solve (Prep's
/// a32, a16, aqk16 and γ_C final; no barrier): the one store loop of the fused forward
/// (BwdRecordOut::tiles) and the backward's 16-bit prep. Entries above the diagonal 16-blocks
/// are stored as zeros.
///   in_record (the fp16 record r16 lies in the fp32 record rec, bwd::rec16_in_record: grad-1
///     reads it): A as an fp16 image in the fp32 record's A slot (bwd::Rec::A16) and Aqk into
///     the fp16 record alone — fp16 and tf32 carry the same significand, so both are exact
///     tf32 operands (cuda/NOTES.md backward item 58);
///   else A (fp32, tf32-rounded from a32) and Aqk (fp32) into the fp32 record, Aqk also into
///     r16 when given.
/// With r16: γ_C·sc and f into it (sc = 2^{−f}); without: γ_C (fp32) into the fp32 record.
template <class Pr, int D>
__device__ void store_record_tiles(const char* sm, float* rec, char* r16, bool in_record, float sc, int f) {
  using L = typename Pr::L;
  using R = bwd::Rec<D>;
  using R16 = bwd::Rec16<D>;
  const __half* a16 = reinterpret_cast<const __half*>(sm + L::a16);
  const __half* aqk = reinterpret_cast<const __half*>(sm + L::aqk16);
  if (in_record) {  // 16-byte pieces of 8 columns (a 16-block's half: wholly zero or not)
    for (int i = threadIdx.x; i < 2 * kC * kC / 8; i += blockDim.x) {
      const int m = i / (kC * kC / 8), r = (i / (kC / 8)) % kC, c = 8 * (i % (kC / 8));
      uint4 x = make_uint4(0u, 0u, 0u, 0u);
      if ((c >> 4) <= (r >> 4)) x = *reinterpret_cast<const uint4*>((m ? aqk : a16) + Pr::ax(r, c));
      char* dst = m ? r16 + R16::aqk : reinterpret_cast<char*>(rec + R::A16);
      *reinterpret_cast<uint4*>(dst + 2 * swz128(r, c)) = x;
    }
  } else {
    const float* a32 = reinterpret_cast<const float*>(sm + L::a32);
    auto round = [](float x) { return __uint_as_float(tf32_bits(x)); };
    for (int i = threadIdx.x; i < 2 * kC * kC / 4; i += blockDim.x) {
      const int m = i / (kC * kC / 4), r = (i / (kC / 4)) % kC, c = 4 * (i % (kC / 4));
      float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
      if ((c >> 4) <= (r >> 4)) {
        if (m) {
          x = load4(aqk + Pr::ax(r, c));
        } else {
          x = *reinterpret_cast<const float4*>(a32 + r * L::PF + c);
          x = make_float4(round(x.x), round(x.y), round(x.z), round(x.w));
        }
      }
      *reinterpret_cast<float4*>(rec + (m ? R::Aqk : R::A) + r * kC + c) = x;
      if (m && r16)
        *reinterpret_cast<uint2*>(r16 + R16::aqk + 2 * swz128(r, c)) =
            make_uint2(pack_half2(x.x, x.y), pack_half2(x.z, x.w));
    }
  }
  const float* gc = Pr::gc(const_cast<char*>(sm));
  for (int i = threadIdx.x; i < D / 4; i += blockDim.x) {
    const float4 g = reinterpret_cast<const float4*>(gc)[i];
    if (r16)
      reinterpret_cast<float4*>(r16 + R16::gc)[i] = make_float4(g.x * sc, g.y * sc, g.z * sc, g.w * sc);
    else
      reinterpret_cast<float4*>(rec + R::gC)[i] = g;
  }
  if (r16 && threadIdx.x == 0) *reinterpret_cast<int*>(r16 + R16::f) = f;
}

/// What the backward's 16-bit prep (backward_prep16.cuh) writes for one chunk-head — the fp32
/// record's A (fp16 image) and U = A Z, and inside it the fp16 record (Qγ·2^{−f},
/// Ktail, Y·2^{−f}, Aqk, γ_C·2^{−f}, f: bwd::Rec16) — written by the fused forward from the
/// same Prep tiles, each part where the chunk step holds its inputs: rows() after the Grams
/// (the raw q, k and e = 2^g), y() inside Prep::y (Y's fp32 accumulators), tiles() after the
/// solve (A, Aqk, γ_C), r() inside the state step — which stores R = U − Y S_c in U's slot
/// instead of U: grad-1 then takes R as given (the record's flag, rec_written = 1, says so).
/// The values are the prep's but for the rounding of Y (its Ē anchored at the row before each
/// 16-row block, the prep's at the block's first row) and of R (warpgroup MMAs on fp16 S_c
/// and Y, where grad-1 forms U − Y S_c from tf32 operands): the same products of the same
/// 11-bit operands class. K = V = 128 only (Rec16::fits_record).
template <int DECAY, int GATES, class Tin, int D>
struct BwdRecordOut {
  using P = Prep<DECAY, GATES, Tin, D, true>;
  using L = typename P::L;
  using R = bwd::Rec<D>;
  using R16 = bwd::Rec16<D>;
  float* rec = nullptr;  // this chunk-head's fp32 record
  char* r16 = nullptr;   // its fp16 record (over the fp32 record's Qγ, Ktail)
  int f = 0;             // ⌊log2 max_d γ_0⌋, ≥ −126
  float sc = 1.f;        // 2^{−f}

  __device__ BwdRecordOut(const ForwardParams& p, long long item)
      : rec(reinterpret_cast<float*>(p.bwd_rec) + item * R::floats), r16(reinterpret_cast<char*>(rec + R::Qg)) {}

  /// f from the chunk's first-token decays (every warp alike: no barrier), then Qγ·2^{−f}
  /// and Ktail from the raw q, k and e = 2^g (after the G-step; before the next chunk's
  /// copies land over them): a thread per (channel pair, 16-row block), as the G-step.
  __device__ void rows(const char* sm, float scale) {
    const int tid = threadIdx.x, lane = tid & 31;
    const float* e = reinterpret_cast<const float*>(sm + L::rg);
    f = record_exponent<DECAY, D>(e, lane);
    sc = ldexpf(1.f, -f);
    if (tid >= 4 * (D / 2)) return;
    const int j = tid / (D / 2), d = 2 * (tid % (D / 2));
    const Tin* q = reinterpret_cast<const Tin*>(sm + L::rq);
    const Tin* k = reinterpret_cast<const Tin*>(sm + L::rk);
    auto E2 = [&](int r) {
      return DECAY == 0 ? *reinterpret_cast<const float2*>(e + r * D + d) : make_float2(e[r], e[r]);
    };
    char* sm_ = const_cast<char*>(sm);
    const float2 ga = *reinterpret_cast<const float2*>(P::ga(sm_) + j * D + d), e0 = E2(16 * j);
    const float2 gf = make_float2(ga.x * e0.x, ga.y * e0.y);  // γ of the block's first row
    const float2 qg = make_float2(scale * gf.x, scale * gf.y);
    float2 Pr = make_float2(1.f, 1.f);
#pragma unroll 4
    for (int rr = 0; rr < 16; ++rr) {
      const int r = 16 * j + rr;
      if (rr) {
        const float2 x = E2(r);
        Pr = make_float2(Pr.x * x.x, Pr.y * x.y);
      }
      const float2 q2 = load2(q + r * L::PR + d);
      const float2 qv = make_float2(q2.x * qg.x * Pr.x, q2.y * qg.y * Pr.y);
      *reinterpret_cast<__half2*>(r16 + R16::qg + 2 * swz128(r, d)) = __floats2half2_rn(qv.x * sc, qv.y * sc);
    }
    float2 Q = *reinterpret_cast<const float2*>(P::tf(sm_) + j * D + d);  // 2^{G_C − G_r}, r from the block's end
#pragma unroll 4
    for (int rr = 15; rr >= 0; --rr) {
      const int r = 16 * j + rr;
      const float2 k2 = load2(k + r * L::PR + d), x = E2(r);
      *reinterpret_cast<__half2*>(r16 + R16::kt + 2 * swz128(r, d)) = __floats2half2_rn(k2.x * Q.x, k2.y * Q.y);
      Q = make_float2(Q.x * x.x, Q.y * x.y);
    }
  }
  /// Y·2^{−f} of (row, col..col+1) from Y's fp32 accumulators (Prep::y's second sink).
  __device__ void y(int row, int col, float a, float b) const {
    *reinterpret_cast<__half2*>(r16 + R16::y + 2 * swz128(row, col)) = __floats2half2_rn(a * sc, b * sc);
  }
  /// A and Aqk (fp16: the fp16 record lies in the fp32 one), γ_C·2^{−f} and f (after the
  /// solve: a16, aqk16, γ_C final).
  __device__ void tiles(const char* sm) const { store_record_tiles<P, D>(sm, rec, r16, true, sc, f); }
  /// R = U − Y S_c into U's slot as the fp16 image of Rᵀ (Rec::R16) from this owner warp's
  /// Rᵀ accumulators (value columns 16w.., the state step's layout: row g8 (+8), tokens
  /// 8·nt + 2·q4 (+1)), rounded to fp16 as the state step's pack_r rounds them for o and the
  /// state update — so grad-1 need not form R again (cuda/NOTES.md backward item 59).
  __device__ void r(const float (&Rt)[8][4], int lane) const {
    const int w = threadIdx.x >> 5, g8 = lane >> 2, q4 = lane & 3;
    char* img = reinterpret_cast<char*>(rec + R::R16);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int v = 16 * w + g8 + 8 * h, t = 8 * nt + 2 * q4;
        *reinterpret_cast<std::uint32_t*>(img + 2 * swz128(v, t)) = pack_half2(Rt[nt][2 * h], Rt[nt][2 * h + 1]);
      }
  }
};

// =====================================================================================
// Fused kernel: one block per (sequence, value head).
// =====================================================================================
/// RECORDS: the backward's records too (ForwardParams::bwd_rec; K = V = 128): an instance of
/// its own, so that the forward without them runs the code it ran before them.
template <int DECAY, int GATES, class Tin, int D, bool RECORDS>
__global__ void __launch_bounds__(kThreads, 1) fused_forward_kernel(const __grid_constant__ ForwardParams p) {
  using P = Prep<DECAY, GATES, Tin, D, true>;
  using L = typename P::L;
  extern __shared__ __align__(1024) char sm[];
  const int n = blockIdx.x / p.Hv, hv = blockIdx.x % p.Hv;
  const int slot = seq_slot(p, n);
  static_assert(!RECORDS || bwd::Rec16<D>::fits_record, "the backward's records need K = V = 128");
  if (RECORDS && blockIdx.x == 0 && threadIdx.x == 0) *p.bwd_rec_written = 1;
  if (slot < 0) return;
  GDR2_FWD_SPAN(0);
  const SeqSpan sp = seq_span(p, n);
  const int tid = threadIdx.x, w = warp_index_uniform(), lane = tid & 31;
  const bool owner = w < D / 16;  // warps that hold state columns
  float S[D / 8][4];
  if (owner) load_state<D>(S, p.s0, p.s0_stride, slot, hv, 16 * w, lane);
  const int nch = (sp.eos - sp.bos + kC - 1) / kC;
  // (the prep's fp32 T tile is free until the first chunk's barrier)
  const long long cbase = p.chunk_states ? block_chunk_base(p, n, sm + L::t32) : 0;
  ChunkLoader<DECAY, GATES, Tin, D, true> ld;
  ld.init(p, sm);
  P::zero_upper(sm);
  if (nch > 0) {
    ld.issue_a(p, sm, sp.batch, sp.bos, min(kC, sp.eos - sp.bos), hv);
    cp_async_commit();
  }
  StepInputs in;
  in.Y = reinterpret_cast<const __half*>(sm + L::he);
  in.Qg = reinterpret_cast<const __half*>(sm + L::hq);
  in.Kt = reinterpret_cast<const __half*>(sm + L::hk);
  in.ph = 0;  // swz128
  in.A = reinterpret_cast<const __half*>(sm + L::a16);
  in.Aqk = reinterpret_cast<const __half*>(sm + L::aqk16);
  in.gammaC = P::gc(sm);
  in.Rv = sm + L::rv;
  in.Rw = GATES == 0 ? static_cast<const void*>(sm + L::rw) : nullptr;
  in.beta = GATES == 1 ? reinterpret_cast<const float*>(sm + L::rb) : nullptr;
  in.pv = 0;  // swz128
  in.vcol = 16 * w;
  Tin* stage = reinterpret_cast<Tin*>(sm + L::t32) + w * (kC * 16);
  // Per chunk: wait for q, k, b, g (group A) → G-step, Grams → issue v, w of this chunk
  // (group B, into the space the Grams' quadrant operands used) and q, k, b, g of the next
  // chunk (group A) → solve, Y → wait for group B → state pass.
#pragma unroll 1
  for (int c = 0; c < nch; ++c) {
    const int t0 = sp.bos + c * kC, len = min(kC, sp.eos - t0);
    ld.wait_a(sm, len);
    __syncthreads();
    GDR2_FWD_MARK(c == 0 ? -1 : 0);
    P::gstep(sm, p.scale);
    P::grams(sm, p.scale);
    BwdRecordOut<DECAY, GATES, Tin, D> ro(p, RECORDS ? (cbase + c) * p.Hv + hv : 0);
    if constexpr (RECORDS) {
      ro.rows(sm, p.scale);
      __syncthreads();  // q, k, e read before the next chunk's copies are issued over them
    }
    ld.issue_b(p, sm, sp.batch, t0, len, hv, false);
    cp_async_commit();
    const int t1 = t0 + kC;
    if (c + 1 < nch) ld.issue_a(p, sm, sp.batch, t1, min(kC, sp.eos - t1), hv, false);
    cp_async_commit();
    // with tensor maps, v, w of this chunk and q, k, b, g of the next are issued by the two
    // warps the solve leaves idle (from thread 0 they held the inverse phase ≈ 1 K cycles
    // per chunk: cuda/NOTES.md forward v14)
    P::solve_and_y(
        sm,
        [&](int iw) {
          if (ld.tma && lane == 0) {
            if (iw == 6) ld.tma_b(p, sm, sp.batch, t0, hv);
            if (iw == 7 && c + 1 < nch) ld.tma_a(p, sm, sp.batch, t1, hv);
          }
        },
        [&](int row, int col, float a, float b) {
          if constexpr (RECORDS) ro.y(row, col, a, b);
        });
    if constexpr (RECORDS) ro.tiles(sm);
    ld.wait_b(sm, len);
    fence_proxy_async();  // the operand tiles' generic writes, before the warpgroup MMAs read them
    __syncthreads();
    GDR2_FWD_MARK(12);
    if (owner) {
      Tin* out = const_cast<Tin*>(row_ptr<Tin>(p.o, p.so, sp.batch, t0, hv)) + 16 * w;
      using K = StepKind<TileLayout::swz128, TileLayout::swz128, true, GATES == 1>;
      if (p.chunk_states) save_chunk_state<D>(S, p.chunk_states, cbase + c, p.Hv, hv, 16 * w, lane);
      state_step<Tin, D, K>(S, in, WarpOut<Tin>{reinterpret_cast<char*>(stage), out, p.so.t, len}, lane,
                            [&](const float(&Rt)[8][4], int ln) {
                              if constexpr (RECORDS) ro.r(Rt, ln);
                            });
    }
    __syncthreads();
    GDR2_FWD_MARK(13);
  }
  GDR2_FWD_FLUSH();
  cp_async_wait<0>();
  if (owner) store_state<D>(S, p.sT, p.sT_stride, slot, hv, 16 * w, lane);
  GDR2_FWD_SPAN(1);
}

// =====================================================================================
// Split path.
// =====================================================================================
/// Record layout in the workspace (also the shared-memory image the state pass copies
/// with one bulk copy, 1024-byte aligned): a byte image of the prep's tiles hq, hk, he, a16,
/// aqk16 (PrepLayout, contiguous there too: one bulk copy writes it) — Qγ, Ktail, Y [64][K]
/// fp16 swz128 operand tiles, A, Aqk [64][64] fp16 swz128 tiles —
/// then γ_C [K] fp32 and β [64] fp32 (tied).
template <int D>
struct Record {
  static constexpr int atile = kC * 64 * 2;  // A, Aqk: [64][64] fp16
  static constexpr int qg = 0, kt = kC * D * 2, y = 2 * kC * D * 2, a = 3 * kC * D * 2, aqk = a + atile,
                       tiles = aqk + atile, gc = tiles, beta = gc + D * 4;
  __host__ __device__ static constexpr int bytes(bool tied) { return beta + (tied ? kC * 4 : 0); }
};

/// Chunk → (sequence, chunk within it) for the split path.
__device__ __forceinline__ void chunk_of(const ForwardParams& p, long long cid, int& n, int& j) {
  if (!p.chunk_offsets) {
    n = int(cid / p.chunks_per_seq);
    j = int(cid % p.chunks_per_seq);
    return;
  }
  int lo = 0, hi = p.N;  // find n with off[n] <= cid < off[n+1]
  while (hi - lo > 1) {
    const int mid = (lo + hi) >> 1;
    if (p.chunk_offsets[mid] <= cid)
      lo = mid;
    else
      hi = mid;
  }
  n = lo;
  j = int(cid - p.chunk_offsets[lo]);
}
__device__ __forceinline__ long long chunk_base(const ForwardParams& p, int n) {
  return p.chunk_offsets ? (long long)p.chunk_offsets[n] : (long long)n * p.chunks_per_seq;
}

/// Varlen: chunk_offsets[n] = Σ_{m<n} ceil(len_m / 64), one block.
template <int UNUSED = 0>
__global__ void chunk_offsets_kernel(const ForwardParams p, int* out) {
  __shared__ int part[1024];
  const int tid = threadIdx.x, nt = blockDim.x;
  const int per = (p.N + nt - 1) / nt;
  const int lo = min(p.N, tid * per), hi = min(p.N, lo + per);
  int sum = 0;
  for (int n = lo; n < hi; ++n) {
    const SeqSpan s = seq_span(p, n);
    sum += (s.eos - s.bos + kC - 1) / kC;
  }
  part[tid] = sum;
  __syncthreads();
  for (int off = 1; off < nt; off <<= 1) {  // inclusive Hillis–Steele scan
    const int v = tid >= off ? part[tid - off] : 0;
    __syncthreads();
    part[tid] += v;
    __syncthreads();
  }
  int run = tid > 0 ? part[tid - 1] : 0;
  for (int n = lo; n < hi; ++n) {
    out[n] = run;
    const SeqSpan s = seq_span(p, n);
    run += (s.eos - s.bos + kC - 1) / kC;
  }
  if (tid == nt - 1) out[p.N] = part[nt - 1];
}

/// How many chunks ahead of its copy a state block asks L2 for a record and for v, w rows:
/// under the prep's load a copy takes ≈ 2 µs, more than one ≈ 1.6 µs step (NOTES item 12).
constexpr int kL2Lead = 3;
/// The overlapped split path: how many chunks a head's prep may run ahead of its state
/// blocks. Unbounded, it ends ≈ 90 chunks ahead (≈ 100 MB of records, twice L2), and the
/// state blocks read their records back from HBM.
constexpr int kPrepLead = 16;

/// A record's flag on the overlapped split path (reset to 0 before each launch): the prep
/// sets kPublished (release) once the record is complete, the state blocks set kTaken
/// (relaxed) once they have issued its copy.
enum : int { kPublished = 1, kTaken = 2 };

/// A record's flag set to kPublished (release at GPU scope, after a fence: cumulative over
/// every write this thread has observed, e.g. the block's stores ordered before a barrier).
/// Records read through the async proxy need their readers' fence (wait_published).
__device__ __forceinline__ void publish_flag(int* flag) {
  __threadfence();
  asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(flag), "r"(int(kPublished)) : "memory");
}

/// Overlapped split path: the flag a prep item `r` waits on before it starts — that of the
/// record kPrepLead chunks earlier of the same sequence and head, which the state blocks set
/// to kTaken when they copy it — or null when the item is among its sequence's first kPrepLead.
__device__ __forceinline__ const int* lead_flag(const ForwardParams& p, const int* flags, long long r) {
  int n, j;
  chunk_of(p, r / p.Hv, n, j);
  return j < kPrepLead ? nullptr : flags + r - (long long)kPrepLead * p.Hv;
}
/// Whether a record's flag says its state blocks took it (relaxed: the flag only paces).
__device__ __forceinline__ bool taken(const int* f) {
  int v;
  asm volatile("ld.relaxed.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(f) : "memory");
  return v >= kTaken;
}
/// Spin until `taken(f)`, at most ≈ 1 s: the wait only paces the prep (records read while
/// still in L2), so if it ever ran out the prep would go on, slower, never wrong.
__device__ __forceinline__ void wait_taken(const int* f) {
  for (long long spins = 0; !taken(f) && spins < (1ll << 22); ++spins) __nanosleep(256);
}

/// Prep role of the split path: items (chunk, value head) first, first + stride, ...;
/// each writes its record and, when `flags` is given, then publishes it (release). With
/// `flags`, an item also waits until its lead flag is taken; a block publishes its previous
/// record before such a wait, so a waiting block holds no unpublished record and the wait
/// with the smallest item is always on records that are published or being written by a
/// block that is not waiting: no cycle (with the record held, a block whose stride exceeds
/// kPrepLead · Hv items waited on state blocks that waited on it).
template <int DECAY, int GATES, class Tin, int D>
__device__ void prep_body(const ForwardParams& p, char* sm, long long first, long long stride, int* flags) {
  using P = Prep<DECAY, GATES, Tin, D, false>;
  using L = typename P::L;
  using R = Record<D>;
  static_assert(R::qg == 0 && R::kt == L::hk - L::hq && R::y == L::he - L::hq && R::a == L::a16 - L::hq &&
                    R::aqk == L::aqk16 - L::hq && R::tiles == L::aqk16 + L::ATILE - L::hq,
                "a record's tiles are the byte image of the prep's hq .. aqk16 (one bulk copy)");
  const int tid = threadIdx.x;
  constexpr int kEarly = 7 * 32;  // warp 7's lane 0: copies Qγ, Ktail out (idle during N)
  // its copy of the last Qγ, Ktail written and visible to the record's readers
  auto early_copy_done = [&] {
    if (tid == kEarly) {
      bulk_wait();
      fence_proxy_async_global();
    }
  };
  const long long items = p.total_chunks * p.Hv;
  ChunkLoader<DECAY, GATES, Tin, D, false> ld;
  const int rbytes = R::bytes(GATES == 1);
  auto item_info = [&](long long it, int& batch, int& t0, int& len, int& hv, bool& skip) {
    const long long cid = it / p.Hv;
    hv = int(it % p.Hv);
    int n, j;
    chunk_of(p, cid, n, j);
    const SeqSpan sp = seq_span(p, n);
    batch = sp.batch;
    t0 = sp.bos + j * kC;
    len = min(kC, sp.eos - t0);
    skip = seq_slot(p, n) < 0;
  };
  long long it = first, prev = -1;  // prev: the record written last, not yet published
  int batch, t0, len, hv;
  bool skip;
  // thread 0: record `r`'s bulk copy complete, then its flag set (release; the stores of
  // every thread happen-before it through the barriers and the fence)
  auto publish = [&](long long r) {
    bulk_wait();
    fence_proxy_async_global();
    publish_flag(flags + r);
  };
  // advance to the first item that is not skipped
  while (it < items) {
    item_info(it, batch, t0, len, hv, skip);
    if (!skip) break;
    it += stride;
  }
  if (it >= items) return;
  ld.init(p, sm);
  P::zero_upper(sm);
  ld.issue_a(p, sm, batch, t0, len, hv);
  cp_async_commit();
#pragma unroll 1
  while (it < items) {
    const long long cur = it;
    char* rec = static_cast<char*>(p.records) + cur * (long long)rbytes;
    ld.wait_a(sm, len);
    GDR2_FWD_MARK(cur == first ? -1 : 15);
    if (tid == 0) bulk_wait_read();  // the previous record's tiles read before the G-step rewrites them
    early_copy_done();               // and its Qγ, Ktail written (long done): before it is published
    __syncthreads();
    if (flags && tid == 0) {  // the pace (thread 0 alone: the others go on to the G-step's barriers)
      const int* lf = lead_flag(p, flags, cur);
      if (lf && !taken(lf)) {
        if (prev >= 0) publish(prev);
        prev = -1;
        wait_taken(lf);
      }
    }
    GDR2_FWD_MARK(0);
    P::gstep(sm, p.scale);
    P::grams(sm, p.scale);
    // next item's inputs while this one finishes
    it += stride;
    while (it < items) {
      item_info(it, batch, t0, len, hv, skip);
      if (!skip) break;
      it += stride;
    }
    if (it < items) ld.issue_a(p, sm, batch, t0, len, hv);
    cp_async_commit();
    // Qγ and Ktail are final after the solve's transforms: copied out by an idle warp while
    // the solve goes on, so that the copy the next item waits for (before its G-step rewrites
    // the tiles) is only Y, A, Aqk (cuda/NOTES.md, forward v17)
    P::template solve_and_y<true>(sm, [&](int) {
      if (tid == kEarly) {
        bulk_s2g(rec + R::qg, sm + L::hq, std::uint32_t(R::y - R::qg));
        bulk_commit();
      }
    });
    // the rest of the record: Y, A, Aqk by one bulk copy (thread 0), γ_C and β by plain
    // stores; the previous record is published first, its bulk copies complete by now
    for (int i = tid; i < D / 4; i += kThreads)
      reinterpret_cast<float4*>(rec + R::gc)[i] = reinterpret_cast<const float4*>(P::gc(sm))[i];
    if (GATES == 1 && tid < kC / 4)
      reinterpret_cast<float4*>(rec + R::beta)[tid] = reinterpret_cast<const float4*>(sm + L::rb)[tid];
    fence_proxy_async();  // the tiles' generic writes, before the bulk copy reads them
    __syncthreads();
    if (tid == 0) {
      if (flags && prev >= 0) publish(prev);
      bulk_s2g(rec + R::y, sm + L::he, std::uint32_t(R::tiles - R::y));
      bulk_commit();
    }
    prev = cur;
    GDR2_FWD_MARK(14);
  }
  GDR2_FWD_FLUSH();
  early_copy_done();
  __syncthreads();
  if (tid == 0) {
    if (flags && prev >= 0)
      publish(prev);
    else
      bulk_wait();  // the last copy reads this block's shared memory
  }
  cp_async_wait<0>();
}

template <int DECAY, int GATES, class Tin, int D>
__global__ void __launch_bounds__(kThreads, 1) prep_kernel(const __grid_constant__ ForwardParams p) {
  extern __shared__ __align__(1024) char sm[];
  prep_body<DECAY, GATES, Tin, D>(p, sm, blockIdx.x, gridDim.x, nullptr);
}

/// Shared-memory map of the state-pass kernel (a block of kThreads): two stages, each a
/// record image (one bulk copy) followed by the v, w slices (cp.async, [64][vs] with rows
/// 16 bytes longer than vs columns); the mbarriers; with helper warps (vs ≤ 64) two output
/// tiles of the same shape, else a chunk's output is staged in its stage's v tile once the
/// step has read v (each warp reads and writes only its own 16 columns of it). Training
/// (`save`: ForwardParams::chunk_states) with helper warps: one [K][vs] fp32 tile (rows 16
/// bytes longer than vs columns) in which the owners stage each chunk's start state for the
/// copier helpers' 16-byte stores, when it fits the block's shared memory.
template <int D>
struct StateLayout {
  int vs, pv, rec, rv, rw, stage_bytes, bars, ostage, obytes, cstage, cpitch, bytes;
  bool helpers;  // owner warps (vs/16) leave some of the block's warps free
  bool stage_states;  // the chunk states go out through the cstage tile
  __host__ __device__ StateLayout(int vslice, int rbytes, bool save) {
    vs = vslice;
    pv = vs + 8;
    rec = 0;
    rv = (rbytes + 127) / 128 * 128;
    rw = rv + kC * pv * 2;
    stage_bytes = (rw + kC * pv * 2 + 1023) / 1024 * 1024;  // records 1024-aligned (swz128 tiles)
    bars = 2 * stage_bytes;
    helpers = 2 * vs < kThreads;
    ostage = bars + 128;
    obytes = kC * pv * 2;
    bytes = ostage + (helpers ? 2 * obytes : 0);
    cstage = bytes;
    cpitch = vs * 4 + 16;
    stage_states = save && helpers && cstage + D * cpitch <= kSmemOptIn;
    if (stage_states) bytes += D * cpitch;
  }
};

/// Named barrier `id` of `nthreads` threads, a multiple of 32 (id 0 is __syncthreads): the
/// state pass's helper warps (1) and all warps but the record warp (2).
__device__ __forceinline__ void named_sync(int id, int nthreads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(nthreads) : "memory");
}

/// Ends the kernel with an error (the launch fails with cudaErrorLaunchFailure). Out of
/// line: ptxas treats everything after an inlined trap as divergent.
static __device__ __noinline__ void trap_out_of_line() { __trap(); }

/// Spin until a record is published (acquire); false after ~10 s without it (the caller
/// traps block-wide: a trap on this one thread's path would make ptxas treat all later
/// code as divergent and serialize the warpgroup MMAs).
__device__ __forceinline__ bool wait_published(const int* flag) {
  long long spins = 0;
  int v = 0;
  while (true) {
    asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(v) : "l"(flag) : "memory");
    if (v) break;  // kPublished, or kTaken already
    __nanosleep(64);
    if (++spins > (1ll << 27)) return false;
  }
#if defined(GDR2_FWD_PHASES)
  if (blockIdx.x == 0) gdr2_fwd_cycles[kUnpublishedSlot] += spins;
#endif
  fence_proxy_async_global();  // the bulk copy reads the record through the async proxy
  return true;
}

/// State-pass role of the split path for (sequence n, value head hv, columns v0..v0+vslice),
/// a block of kThreads. Warps 0..vs/16−1 own 16 value columns each (state in registers);
/// the others are helpers, so that the owners' dependent chain never waits for a flag, an
/// address computation or a global store. Per chunk c, after one barrier: the owners run
/// the step on stage c&1 (once its `full` mbarrier says the record and every cp.async of v,
/// w have landed) and stage its output (StateLayout); the helpers refill stage (c+1)&1 with
/// chunk c+1's v, w and store chunk c−1's output, never waiting for their copies. The last
/// helper warp is the record warp: outside that barrier, it copies record c into stage c&1
/// once the owners have left step c−2 (`empty` mbarrier) and the record is published (when
/// `flags` is given), so neither wait holds the other warps (cuda/NOTES.md, forward v17).
/// At 128 columns every warp owns and helps, before its step, and thread 0 waits for each
/// record inside the barrier.
template <int DECAY, int GATES, class Tin, int D>
__device__ void state_body(const ForwardParams& p, char* sm, int n, int hv, int v0, int* flags) {
  using R = Record<D>;
  const int tid = threadIdx.x, w = warp_index_uniform(), lane = tid & 31, nthr = blockDim.x;
  const int rbytes = R::bytes(GATES == 1);
  const StateLayout<D> Ls(p.vslice, rbytes, p.chunk_states != nullptr);
  const int nown = p.vslice / 16;
  const bool owner = w < nown, helpers = Ls.helpers;
  const bool helper = !owner || !helpers;
  const int htid = helpers ? tid - 32 * nown : tid, hthr = helpers ? nthr - 32 * nown : nthr;  // helper role
  // the thread that waits for each record and copies it: the last warp's (a helper's)
  const int issuer = helpers ? hthr - 32 : 0;
  const bool recw = helpers && w == nthr / 32 - 1;  // the record warp (the issuer's)
  const int cthr = helpers ? hthr - 32 : hthr;      // the helper threads that copy v, w and store outputs
  const int slot = seq_slot(p, n);
  if (slot < 0) return;
  const SeqSpan sp = seq_span(p, n);
  const int nch = (sp.eos - sp.bos + kC - 1) / kC;
  const long long cbase = chunk_base(p, n);
  std::uint64_t* bars = reinterpret_cast<std::uint64_t*>(sm + Ls.bars);
  if (tid == 0) {  // a stage is ready when its record's first part and every copier's cp.asyncs have landed
    mbar_init(bars, 1 + cthr);
    mbar_init(bars + 1, 1 + cthr);
    if (helpers) {  // a stage is free when every owner thread has finished its step on it
      mbar_init(bars + 2, 32 * nown);
      mbar_init(bars + 3, 32 * nown);
    }
    mbar_init(bars + 4, 1);  // the rest of a stage's record (StepInputs::rest)
    mbar_init(bars + 5, 1);
    if (Ls.stage_states) mbar_init(bars + 6, 32 * nown);  // a chunk's start state staged
    fence_proxy_async();
  }
  __syncthreads();
  float S[D / 8][4];
  if (owner) load_state<D>(S, p.s0, p.s0_stride, slot, hv, v0 + 16 * w, lane);
  const int hw = gate_head(hv, p.hg_w, p.Hv);
  bool stuck = false;  // the issuer without a record warp: a record was not published in time
  const int cpr = Ls.vs * 2 / 16;  // 16-byte pieces per row of a v, w or output tile
  // this helper thread's share of every copy and store of such a tile: piece hcc of rows
  // hr0, hr0 + hrs, ... (cthr, 96..256 threads, is a multiple of cpr, 2..16, for every value
  // slice): no division per piece (cuda/NOTES.md, forward v17)
  const int hcc = htid % cpr, hr0 = htid / cpr, hrs = cthr / cpr;
  auto chunk_rows = [&](int c, int& t0, int& len) {
    t0 = sp.bos + c * kC;
    len = min(kC, sp.eos - t0);
  };
  // chunk c's first v and w rows of this block's columns (w: channel gates only), its length
  auto vw_rows = [&](int c, const Tin*& vsrc, const Tin*& wsrc, int& len) {
    int t0;
    chunk_rows(c, t0, len);
    vsrc = row_ptr<Tin>(p.v, p.sv, sp.batch, t0, hv) + v0;
    wsrc = GATES == 0 ? row_ptr<Tin>(p.w, p.sw, sp.batch, t0, hw) + v0 : nullptr;
  };
#if defined(GDR2_FWD_PHASES)
  // the issuer thread of state block 0: cycles of its parts of the helper role per step
  long long hclk[kHelpParts] = {}, hlast = clock64();
  const bool hmine = blockIdx.x == 0 && helper && htid == issuer;
#define GDR2_HELP(i)                                       \
  do {                                                     \
    if (hmine) {                                           \
      const long long t_ = clock64();                      \
      hclk[i] += t_ - hlast;                               \
      hlast = t_;                                          \
    }                                                      \
  } while (0)
#else
#define GDR2_HELP(i)
#endif
  // the issuer: whether chunk c's record is published (always, without `flags`); false if it
  // never was
  auto record_published = [&](int c) {
    const bool ok = !flags || wait_published(flags + (cbase + c) * p.Hv + hv);
    GDR2_HELP(0);
    return ok;
  };
  // the issuer: chunk c's record, once published, into stage c&1 by bulk copies in the order
  // the step reads it: A and β (with v, w: the first product) on the stage's `full`
  // barrier, the rest (Qγ, Ktail, Y, Aqk, γ_C: ≈ 57 of 66 KB) on its `rest` barrier, so that
  // the owners start while most of the record is still in flight
  auto issue_record = [&](int c) {
    const long long ri = (cbase + c) * p.Hv + hv;
    const char* rec = static_cast<const char*>(p.records) + ri * (long long)rbytes;
    char* st = sm + (c & 1) * Ls.stage_bytes + Ls.rec;
    constexpr std::uint32_t na = R::aqk - R::a, nrest = R::a + (R::beta - R::aqk);
    const std::uint32_t nbeta = std::uint32_t(rbytes - R::beta);  // tied gates' β, or nothing
    mbar_expect_tx(bars + (c & 1), na + nbeta);
    bulk_g2s(st + R::a, rec + R::a, na, bars + (c & 1));
    if (nbeta) bulk_g2s(st + R::beta, rec + R::beta, nbeta, bars + (c & 1));
    mbar_expect_tx(bars + 4 + (c & 1), nrest);
    bulk_g2s(st, rec, R::a, bars + 4 + (c & 1));
    bulk_g2s(st + R::aqk, rec + R::aqk, R::beta - R::aqk, bars + 4 + (c & 1));
    if (flags)  // taken: the prep may run kPrepLead chunks past it
      asm volatile("st.relaxed.gpu.global.b32 [%0], %1;\n" ::"l"(flags + ri), "r"(int(kTaken)) : "memory");
    GDR2_HELP(1);
  };
  auto copy_record = [&](int c) {
    if (!record_published(c)) return false;
    issue_record(c);
    return true;
  };
  // helpers: chunk c's v, w slices (cp.async) into stage c&1, and its record when there is
  // no record warp
  auto issue = [&](int c) {
    char* st = sm + (c & 1) * Ls.stage_bytes;
    if (htid == issuer && !helpers && !copy_record(c)) stuck = true;
    const Tin *vsrc, *wsrc;
    int len;
    vw_rows(c, vsrc, wsrc, len);
    for (int r = hr0; r < kC; r += hrs) {
      const bool ok = r < len;
      const int so = r * Ls.pv * 2 + hcc * 16;
      cp_async16(st + Ls.rv + so, vsrc + (ok ? r * p.sv.t : 0) + hcc * 8, ok);
      if (GATES == 0) cp_async16(st + Ls.rw + so, wsrc + (ok ? r * p.sw.t : 0) + hcc * 8, ok);
    }
    cp_async_mbar_arrive(bars + (c & 1));
    GDR2_HELP(2);
    if (c + kL2Lead < nch) {  // chunk c+lead's v, w rows into L2: its copies then wait on L2, not HBM
      const Tin *vn, *wn;
      vw_rows(c + kL2Lead, vn, wn, len);
      for (int r = htid; r < len; r += cthr) {
        prefetch_l2(vn + r * p.sv.t);
        if (GATES == 0) prefetch_l2(wn + r * p.sw.t);
      }
    }
    GDR2_HELP(3);
  };
  // where chunk c's output is staged
  auto out_tile = [&](int c) {
    return helpers ? sm + Ls.ostage + (c & 1) * Ls.obytes : sm + (c & 1) * Ls.stage_bytes + Ls.rv;
  };
  // helpers: chunk c's staged output to global memory
  auto store_out = [&](int c) {
    const char* tile = out_tile(c);
    int t0, len;
    chunk_rows(c, t0, len);
    Tin* out = const_cast<Tin*>(row_ptr<Tin>(p.o, p.so, sp.batch, t0, hv)) + v0;
    for (int r = hr0; r < len; r += hrs)
      *reinterpret_cast<uint4*>(out + r * p.so.t + hcc * 8) = *reinterpret_cast<const uint4*>(tile + r * Ls.pv * 2 + hcc * 16);
  };
  // the copier threads (stage_states): chunk c's start state, once the owners have staged
  // it, to global memory with 16-byte stores (piece scc of rows sr0, sr0 + srs, ...: cthr is a
  // multiple of the vs/4 pieces of a row at every slice), read out of the tile before the next
  // step's barrier, after which the owners rewrite it
  const int cps = Ls.vs / 4, scc = htid % cps, sr0 = htid / cps, srs = cthr / cps;
  auto store_states = [&](int c) {
    mbar_wait(bars + 6, c & 1);
    store_staged_rows<D>(p.chunk_states + ((cbase + c) * p.Hv + hv) * (long long)(D * D) + v0, sm + Ls.cstage,
                         Ls.cpitch, scc, sr0, srs);
  };
  // helper role of chunk c: chunk c+1's inputs in, chunk c−1's output out (from stage
  // (c+1)&1's v tile without helper warps: first, then a barrier of the helpers)
  auto help = [&](int c) {
    if (helpers) {
      if (c + 1 < nch) issue(c + 1);
      if (c > 0) store_out(c - 1);
      if (Ls.stage_states && htid < cthr) store_states(c);
      GDR2_HELP(4);
    } else {
      if (c > 0) {
        store_out(c - 1);
        named_sync(1, hthr);  // the staged rows read before the copies overwrite them
      }
      if (c + 1 < nch) issue(c + 1);
    }
  };
  StepClocks clocks;  // profiling builds only
  if (recw) {
    if (lane == 0)
#pragma unroll 1
      for (int c = 0; c < nch; ++c) {
        // the flag first: its acquire round trip (≈ 1–2 K cycles while the prep loads the
        // memory system) overlaps the owners' step c−1 instead of following step c−2's end
        if (!record_published(c)) trap_out_of_line();  // the records never came: fail loudly, not hang
        if (c >= 2) mbar_wait(bars + 2 + (c & 1), ((c - 2) >> 1) & 1);
        GDR2_HELP(5);
        issue_record(c);
        if (c + kL2Lead < nch)  // (a hint: if the prep has not written it yet, its stores land in L2 anyway)
          prefetch_l2_bulk(static_cast<const char*>(p.records) + ((cbase + c + kL2Lead) * p.Hv + hv) * (long long)rbytes,
                           std::uint32_t(rbytes));
      }
    __syncwarp();
  } else {
    if (helper && nch > 0) issue(0);
#pragma unroll 1
    for (int c = 0; c < nch; ++c) {
      GDR2_STEP_STAMP(0);
      if (helpers)
        named_sync(2, nthr - 32);  // (the record warp traps by itself)
      else if (__syncthreads_or(stuck))
        trap_out_of_line();  // the records never came: fail loudly, not hang
      GDR2_STEP_STAMP(1);
      GDR2_HELP(5);
      if (owner) {
        if (!helpers) help(c);
        mbar_wait(bars + (c & 1), (c >> 1) & 1);
        GDR2_STEP_STAMP(2);
        char* st = sm + (c & 1) * Ls.stage_bytes;
        StepInputs in;
        in.Y = reinterpret_cast<const __half*>(st + Ls.rec + R::y);
        in.Qg = reinterpret_cast<const __half*>(st + Ls.rec + R::qg);
        in.Kt = reinterpret_cast<const __half*>(st + Ls.rec + R::kt);
        in.ph = 0;  // swz128
        in.A = reinterpret_cast<const __half*>(st + Ls.rec + R::a);
        in.Aqk = reinterpret_cast<const __half*>(st + Ls.rec + R::aqk);
        in.gammaC = reinterpret_cast<const float*>(st + Ls.rec + R::gc);
        in.Rv = st + Ls.rv;
        in.Rw = GATES == 0 ? static_cast<const void*>(st + Ls.rw) : nullptr;
        in.beta = GATES == 1 ? reinterpret_cast<const float*>(st + Ls.rec + R::beta) : nullptr;
        in.pv = Ls.pv;
        in.vcol = 16 * w;
        in.rest = bars + 4 + (c & 1);
        in.rest_parity = (c >> 1) & 1;
        const TileOut<Tin> sink{out_tile(c), Ls.pv * 2, 16 * w};
        if (Ls.stage_states) {  // the tile was read out before this step's barrier (store_states)
          stage_chunk_state<D>(S, sm + Ls.cstage, Ls.cpitch, 16 * w, lane);
          mbar_arrive(bars + 6);
        } else if (p.chunk_states) {
          save_chunk_state<D>(S, p.chunk_states, cbase + c, p.Hv, hv, v0 + 16 * w, lane);
        }
        GDR2_STEP_STAMP(3);
        if (p.vslice >= 64)  // whole warpgroups of owner warps
          state_step<Tin, D, StepKind<TileLayout::swz128, TileLayout::padded, true, GATES == 1>>(
              S, in, sink, lane);
        else
          state_step<Tin, D, StepKind<TileLayout::swz128, TileLayout::padded, false, GATES == 1>>(
              S, in, sink, lane);
        fence_proxy_async();  // this stage is rewritten by a bulk copy (record warp: after this arrival)
        if (helpers) mbar_arrive(bars + 2 + (c & 1));
      } else {
        help(c);
      }
      if (p.vslice >= 64) clocks.step();  // the whole-warpgroup step carries every stamp
    }
  }
  clocks.flush();
#if defined(GDR2_FWD_PHASES)
  if (hmine)
    for (int i = 0; i < kHelpParts; ++i)
      atomicAdd(reinterpret_cast<unsigned long long*>(gdr2_fwd_cycles + kHelpSlots + i), (unsigned long long)hclk[i]);
#endif
#undef GDR2_HELP
  __syncthreads();  // the last chunk's output staged
  if (helper && !recw && nch > 0) store_out(nch - 1);
  if (owner) store_state<D>(S, p.sT, p.sT_stride, slot, hv, v0 + 16 * w, lane);
}

template <int DECAY, int GATES, class Tin, int D>
__global__ void __launch_bounds__(kThreads) state_kernel(const ForwardParams p) {
  extern __shared__ __align__(1024) char sm[];
  state_body<DECAY, GATES, Tin, D>(p, sm, blockIdx.x / p.Hv, blockIdx.x % p.Hv, blockIdx.y * p.vslice, nullptr);
}

/// Split path with prep and state pass overlapped, for few (sequence, head) pairs: the
/// first N·Hv·(V/vslice) blocks run the state pass and wait for each record's flag; the
/// other blocks run the prep persistently and publish records in chunk order. The grid is
/// at most one block per SM and the prep blocks never wait, so every wait is on work that
/// is running or will run.
template <int DECAY, int GATES, class Tin, int D>
__global__ void __launch_bounds__(kThreads, 1) overlapped_kernel(const __grid_constant__ ForwardParams p) {
  extern __shared__ __align__(1024) char sm[];
  const int nsl = D / p.vslice, nstate = p.N * p.Hv * nsl;
  const int b = blockIdx.x;
  if (b < nstate) {
    const int nh = b / nsl;
    state_body<DECAY, GATES, Tin, D>(p, sm, nh / p.Hv, nh % p.Hv, (b % nsl) * p.vslice, p.flags);
  } else {
    prep_body<DECAY, GATES, Tin, D>(p, sm, b - nstate, gridDim.x - nstate, p.flags);
  }
}

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
