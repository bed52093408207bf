// gdr2 CUDA backend, backward — block-level building blocks that compile both as
// device code and as plain host code.
//
// Every backward kernel body is written against `Blk`, a thread block seen through two
// operations only:
//   par(n, f)   f(i) for i in [0, n), spread over the block's threads, then a barrier;
//   mm(...)     a block matrix product C = A·B whose operands are read through functors
//               fa(m, k), fb(k, n) and whose result goes to a functor fo(m, n, value),
//               each (m, n) handed to fo exactly once, followed by a barrier;
//   mmt(...)    the same with operands that are plain shared-memory tiles (View: base,
//               pitch, orientation) — a sum of terms ±A·B — read with ldmatrix and
//               vector loads (the products of the state passes, grad-1 and WY).
// No state lives in a thread across two such steps (everything shared is in shared
// memory), so the same body runs unchanged on the host with one "thread" that executes
// every i in order (`tid = 0, nthr = 1`, barriers are no-ops). That host execution is
// how the kernels' logic is tested on machines without a GPU (see run_backward_host);
// HostBlockThreads (host_threads.hpp) runs the block's threads one by one between barriers
// instead, to find missing barriers.
//
// Device products use mma.sync m16n8k8 with tf32 operands (fp32 accumulation), or
// three such products per step (split tf32: a = a_hi + a_lo, dropping a_lo·b_lo) for
// about fp32 accuracy, or plain fp32 FMAs on the CUDA cores. The host path is fp32, or in
// the tf32 mode (run_backward_host asked to emulate it) the same products of tf32-rounded
// operands, summed in fp32 in the host's order.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#include "device_common.cuh"  // the device side of a few helpers (prefetch_l2)
#define GDR2_HD __host__ __device__ __forceinline__
#else
#define GDR2_HD inline
#endif
#include "host_threads.hpp"  // the host's emulation of a block's threads one by one

#ifndef GDR2_CUDA_BACKWARD_PARAMS_ONLY
#define GDR2_CUDA_BACKWARD_PARAMS_ONLY
#endif
#include <gdr2/cuda/backward.hpp>  // InType: the element types of inputs and gradients

// Loop unrolling in code that is also compiled for the host (where g++ has no such pragma).
#if defined(__CUDA_ARCH__)
#define GDR2_UNROLL _Pragma("unroll")
#define GDR2_UNROLL4 _Pragma("unroll 4")
#else
#define GDR2_UNROLL
#define GDR2_UNROLL4
#endif

namespace gdr2 {
namespace cuda {
namespace detail {
namespace bwd {

constexpr int kC = 64;         ///< chunk length of the backward
constexpr int kSub = 16;       ///< sub-block of the anchored decay products
constexpr int kKS = 32;        ///< key channels of one grad-2 applies block
constexpr int kThreads = 512;  ///< threads of every backward kernel (16 warps)
constexpr float kLog2e = 1.4426950408889634f;

enum Math : int { kTf32 = 0, kTf32x3 = 1, kFp32 = 2 };

/// 2^x for x <= 0 (clamped: a rounding of a difference of log-decays can never make a
/// factor above 1; SPEC §5).
GDR2_HD float ex2n(float x) {
  x = x < 0.f ? x : 0.f;
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}

/// a·b rounded on its own (never contracted into an FMA with a later add): for a product
/// that earlier code stored before summing, so that the sums stay bit for bit.
GDR2_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

GDR2_HD float bits_to_float(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

/// IEEE half bits → float (exact), portable.
GDR2_HD float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t s = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float f = float(m) * 5.9604644775390625e-8f;  // m · 2^-24
    return s ? -f : f;
  }
  if (e == 31) return bits_to_float(s | 0x7f800000u | (m << 13));
  return bits_to_float(s | ((e + 112u) << 23) | (m << 13));
}

/// 2^e, exactly, for e in [−126, 127].
GDR2_HD float pow2i(int e) { return bits_to_float(std::uint32_t(e + 127) << 23); }

/// A 16-bit input pattern (bf16 or IEEE half) as float.
GDR2_HD float cvt16(std::uint16_t u, int dt) {
#if defined(__CUDA_ARCH__)
  if (dt == kF16) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(u));
    return f;
  }
  return __uint_as_float(std::uint32_t(u) << 16);
#else
  return dt == kF16 ? half_bits_to_float(u) : bits_to_float(std::uint32_t(u) << 16);
#endif
}

/// One input element (any InType) as float: the one scalar loader of every input.
GDR2_HD float ld_in(const void* base, long long off, int dt) {
  if (dt == kF32) return static_cast<const float*>(base)[off];
  return cvt16(static_cast<const std::uint16_t*>(base)[off], dt);
}

#if defined(GDR2_BWD_PHASES) && defined(__CUDACC__)
// Profiling build only (cuda/src/backward_phases.cu): block (0, 0) of every kernel (trace
// 0) and block (0, last y) (trace 1: the reverse role of the state passes; the same block
// for one-row grids) record clock64() at their entry (negated) and after every barrier,
// in launch order.
__device__ long long gdr2_bwd_clk[2][8192];
__device__ int gdr2_bwd_nclk[2];
__device__ __forceinline__ void gdr2_bwd_mark(bool entry) {
#if defined(__CUDA_ARCH__)
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    const long long c = clock64();
    for (int tr = 0; tr < 2; ++tr) {
      if (blockIdx.y != (tr ? gridDim.y - 1 : 0)) continue;
      const int i = gdr2_bwd_nclk[tr]++;
      if (i < 8192) gdr2_bwd_clk[tr][i] = entry ? -c : c;
    }
  }
#endif
}
#define GDR2_BWD_MARK(entry) gdr2_bwd_mark(entry)
#else
#define GDR2_BWD_MARK(entry)
#endif

/// A thread block, or its host emulation: one thread standing for the block (tid = 0,
/// nthr = 1), or each of its threads in turn between barriers (HostBlockThreads).
struct Blk {
  int tid, nthr;
  /// 1: barriers leave this thread's newest committed copy group in flight (software
  /// pipelines that prefetch the next step's tiles; every copy must then be committed).
  int keep = 0;
  /// Barrier; each thread first waits for its own asynchronous tile copies (copy_tile) —
  /// all of them, or all but the newest committed group when `keep` — so that every
  /// barrier also publishes the tiles copied before it.
  GDR2_HD void sync() const {
#if defined(__CUDA_ARCH__)
    if (keep)
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
    else
      asm volatile("cp.async.wait_all;\n" ::: "memory");
    __syncthreads();
    GDR2_BWD_MARK(false);
#else
    if (HostBlockThreads* h = HostBlockThreads::current()) h->barrier(keep);
#endif
  }
  /// Close the group of this thread's copies issued since the last commit.
  GDR2_HD void commit() const {
#if defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#else
    if (HostBlockThreads* h = HostBlockThreads::current()) h->commit();
#endif
  }
  /// f(i) for every i in [0, n) over the block's threads, then a barrier.
  template <class F>
  GDR2_HD void par(int n, F&& f) const {
    for (int i = tid; i < n; i += nthr) f(i);
    sync();
  }
  /// st(i, ld(i)) for every i in [0, n), NB loads in flight per thread (all loads of a
  /// batch are issued before its first store), NO barrier: for loads from global memory.
  template <int NB, class LD, class ST>
  GDR2_HD void par_ld(int n, LD&& ld, ST&& st) const {
    for (int base = tid; base < n; base += NB * nthr) {
      decltype(ld(0)) v[NB] = {};
      GDR2_UNROLL
      for (int u = 0; u < NB; ++u) {
        const int i = base + u * nthr;
        if (i < n) v[u] = ld(i);
      }
      GDR2_UNROLL
      for (int u = 0; u < NB; ++u) {
        const int i = base + u * nthr;
        if (i < n) st(i, v[u]);
      }
    }
  }
};

/// The threads of warps [w0, w1) as a block of their own (`g`), for products that run side
/// by side on disjoint warps (SYNC = false inside: a group never waits at a barrier of its
/// own); false for the other threads. One host thread standing for the block is in every
/// group and runs them one after another.
GDR2_HD bool warp_group(const Blk& bk, int w0, int w1, Blk& g) {
#if !defined(__CUDA_ARCH__)
  if (bk.nthr == 1) {
    g = bk;
    return true;
  }
#endif
  const int w = bk.tid >> 5;
  if (w < w0 || w >= w1) return false;
  g = Blk{bk.tid - 32 * w0, 32 * (w1 - w0), bk.keep};
  return true;
}

/// Host code standing for a whole block's (or warp group's) threads runs on its thread 0
/// (HostBlockThreads; the one thread of Blk{0, 1} is thread 0).
GDR2_HD bool host_lead(const Blk& bk) { return bk.tid == 0; }

/// 16-byte vector of floats (host: plain struct, copied bytewise).
struct F4 {
  float x, y, z, w;
  /// element i (0..3; a constant after unrolling, so no local-memory array)
  GDR2_HD float operator[](int i) const { return i == 0 ? x : i == 1 ? y : i == 2 ? z : w; }
};
GDR2_HD F4 ld4(const float* p) {
#if defined(__CUDA_ARCH__)
  const float4 v = *reinterpret_cast<const float4*>(p);
  return {v.x, v.y, v.z, v.w};
#else
  F4 v;
  std::memcpy(&v, p, 16);
  return v;
#endif
}
GDR2_HD void st4(float* p, const F4& v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<float4*>(p) = make_float4(v.x, v.y, v.z, v.w);
#else
  std::memcpy(p, &v, 16);
#endif
}

/// Row sums over COLS (a multiple of 16) columns, Σ_j x[r·pitch + j]·y[r·pitch + j] (x alone
/// when y is null), for rows r < rows: put(r, sum), then a barrier. Four threads per row,
/// COLS / 4 columns each (columns 4·q + 16·u + 0..3 for quarter q) in 16-byte loads —
/// conflict-free for a pitch ≡ 4 (mod 32) floats: the eight rows of a quarter-warp's loads
/// fall on eight groups of four banks — then the quarters added as (s0 + s1) + (s2 + s3), by
/// two shuffles on the device (deterministic). Needs 4·rows ≤ threads, rows a multiple of 8.
/// (Was one thread per row walking its columns: a chain of scalar loads with 4-way bank
/// conflicts while ¾ of the block waited; cuda/NOTES.md backward v56.)
GDR2_HD float tf32_round(float x);  // (below)

/// ROUND_X: each element of x is also rounded to tf32 in place once read (every element is
/// read by exactly one thread), so the sums see x as stored and later products its tf32 value.
template <int COLS, bool ROUND_X = false, class X, class Put>
GDR2_HD void row_sums(const Blk& bk, X* x, const float* y, int rows, int pitch, Put&& put) {
  static_assert(COLS % 16 == 0, "four 4-column pieces per 16 columns");
  static_assert(!ROUND_X || !std::is_const_v<X>, "rounding x in place needs a writable tile");
  auto quarter = [&](int r, int q) {
    float s = 0.f;
    GDR2_UNROLL
    for (int u = 0; u < COLS / 16; ++u) {
      const int o = r * pitch + 4 * q + 16 * u;
      const F4 a = ld4(x + o), b = y ? ld4(y + o) : F4{1.f, 1.f, 1.f, 1.f};
      s += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
      if constexpr (ROUND_X) st4(x + o, {tf32_round(a.x), tf32_round(a.y), tf32_round(a.z), tf32_round(a.w)});
    }
    return s;
  };
#if defined(__CUDA_ARCH__)
  const int i = bk.tid;
  if (i < 4 * rows) {  // whole warps: rows is a multiple of 8
    const int r = 8 * (i / 32) + i % 8, q = (i % 32) / 8;
    float s = quarter(r, q);
    s += __shfl_xor_sync(0xffffffffu, s, 8);
    s += __shfl_xor_sync(0xffffffffu, s, 16);
    if (q == 0) put(r, s);
  }
#else
  if (host_lead(bk))
    for (int r = 0; r < rows; ++r) put(r, (quarter(r, 0) + quarter(r, 1)) + (quarter(r, 2) + quarter(r, 3)));
#endif
  bk.sync();
}

/// Four raw 16-bit patterns (one 8-byte access when aligned).
struct U4 {
  std::uint16_t x, y, z, w;
};

/// Four raw 16-bit input patterns from element `off` (16-bit inputs only): one 8-byte
/// access when `vec` (base and off aligned to four elements: checked on the host,
/// BackwardParams::vec), else four scalar loads.
GDR2_HD U4 ld_raw4(const void* base, long long off, int vec) {
  const std::uint16_t* b = static_cast<const std::uint16_t*>(base) + off;
  if (!vec) return {b[0], b[1], b[2], b[3]};
  U4 u;
#if defined(__CUDA_ARCH__)
  const uint2 r = *reinterpret_cast<const uint2*>(b);
  std::memcpy(&u, &r, 8);
#else
  std::memcpy(&u, b, 8);
#endif
  return u;
}

/// Four consecutive input elements from element `off` (any InType) as floats, one 16- or
/// 8-byte access when `vec`: the one vector loader of every input.
GDR2_HD F4 ld_in4(const void* base, long long off, int dt, int vec) {
  if (dt == kF32) {
    const float* f = static_cast<const float*>(base) + off;
    return vec ? ld4(f) : F4{f[0], f[1], f[2], f[3]};
  }
  const U4 u = ld_raw4(base, off, vec);
  return {cvt16(u.x, dt), cvt16(u.y, dt), cvt16(u.z, dt), cvt16(u.w, dt)};
}

/// v as the 16-bit pattern of dt (kBf16 or kF16), rounded to nearest even (cvt.rn).
GDR2_HD std::uint16_t to_bits16(float v, int dt) {
  return dt == kF16 ? __half_as_ushort(__float2half_rn(v)) : __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
/// One gradient element v stored as type dt (InType: fp32, or rounded to bf16 / fp16) at
/// element `off` of `base`: the one scalar storer of every gradient.
GDR2_HD void st_out(void* base, long long off, int dt, float v) {
  if (dt == kF32)
    static_cast<float*>(base)[off] = v;
  else
    static_cast<std::uint16_t*>(base)[off] = to_bits16(v, dt);
}
/// Four consecutive gradient elements from element `off` (4-element aligned: `vec`): one
/// 16-byte (fp32) or 8-byte (16-bit types) store when `vec`: the one vector storer.
GDR2_HD void st_out4(void* base, long long off, int dt, int vec, const F4& v) {
  if (!vec) {
    st_out(base, off, dt, v.x), st_out(base, off + 1, dt, v.y);
    st_out(base, off + 2, dt, v.z), st_out(base, off + 3, dt, v.w);
  } else if (dt == kF32) {
    st4(static_cast<float*>(base) + off, v);
  } else {
    const std::uint32_t lo = to_bits16(v.x, dt) | std::uint32_t(to_bits16(v.y, dt)) << 16,
                        hi = to_bits16(v.z, dt) | std::uint32_t(to_bits16(v.w, dt)) << 16;
#if defined(__CUDA_ARCH__)
    *reinterpret_cast<uint2*>(static_cast<std::uint16_t*>(base) + off) = make_uint2(lo, hi);
#else
    const std::uint32_t w[2] = {lo, hi};
    std::memcpy(static_cast<std::uint16_t*>(base) + off, w, 8);
#endif
  }
}

/// Four consecutive input elements as stored (fp32: 16 bytes; 16-bit inputs: the first
/// 8), in shared memory: copy_raw4 fills it asynchronously, cvt_in4 converts it.
struct alignas(16) Raw4 {
  std::uint32_t w[4];
};
/// *dst ← the four elements of `base` from element `off` (4-element aligned: `vec`), by
/// one asynchronous copy (cp.async, complete at the next barrier, as copy_tile's).
GDR2_HD void copy_raw4(Raw4* dst, const void* base, long long off, int dt) {
  const int bytes = dt == kF32 ? 16 : 8;
  const char* src = static_cast<const char*>(base) + off * (dt == kF32 ? 4 : 2);
#if defined(__CUDA_ARCH__)
  const unsigned sa = unsigned(__cvta_generic_to_shared(dst));
  if (bytes == 16)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(src) : "memory");
  else
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(sa), "l"(src) : "memory");
#else
  if (HostBlockThreads* h = HostBlockThreads::current())
    h->copy(dst->w, src, std::size_t(bytes));
  else
    std::memcpy(dst->w, src, std::size_t(bytes));
#endif
}
/// The four elements of r as floats (dt: the input type).
GDR2_HD F4 cvt_in4(const Raw4& r, int dt) {
  F4 v;
  if (dt == kF32) {
    std::memcpy(&v, r.w, 16);
  } else {
    U4 u;
    std::memcpy(&u, r.w, 8);
    v = {cvt16(u.x, dt), cvt16(u.y, dt), cvt16(u.z, dt), cvt16(u.w, dt)};
  }
  return v;
}

/// dst[r·dp + c] = src[r·sp + c] for r < rows, c < cols (cols, pitches and both bases
/// multiples of 4 floats; dst in shared, src in global memory): 16-byte asynchronous
/// copies (cp.async; every one in flight at once, no registers), complete at the next
/// barrier (Blk::sync waits for them). NO barrier. The host copies at once.
GDR2_HD void copy_tile(const Blk& bk, float* dst, int dp, const float* src, long long sp, int rows, int cols) {
  const int c4 = cols / 4;
  for (int i = bk.tid; i < rows * c4; i += bk.nthr) {
    float* d = dst + (i / c4) * dp + (i % c4) * 4;
    const float* s = src + (long long)(i / c4) * sp + (i % c4) * 4;
#if defined(__CUDA_ARCH__)
    const unsigned sa = unsigned(__cvta_generic_to_shared(d));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(sa), "l"(s) : "memory");
#else
    if (HostBlockThreads* h = HostBlockThreads::current())
      h->copy(d, s, 16);
    else
      std::memcpy(d, s, 16);
#endif
  }
}

/// Rows [0, rows) of a 16-bit input as stored: n16 elements from element `off` of each row,
/// rows `st` elements apart (off, st and n16 multiples of 8: 16-byte pieces), into dst as
/// [rows][n16] — copy_tile's asynchronous copies of the same bytes seen as floats.
GDR2_HD void copy_rows16(const Blk& bk, void* dst, const void* base, long long off, long long st, int rows, int n16) {
  copy_tile(bk, static_cast<float*>(dst), n16 / 2,
            reinterpret_cast<const float*>(static_cast<const char*>(base) + off * 2), st / 2, rows, n16 / 2);
}

/// Asks the L2 for the 128-byte line holding p (device_common's prefetch_l2: no registers,
/// nothing to wait for), so that a later read finds it there. The host: nothing.
GDR2_HD void prefetch_line(const void* p) {
#if defined(__CUDA_ARCH__)
  prefetch_l2(p);
#else
  (void)p;
#endif
}

/// *p += v for a partial sum whose first part this thread stored earlier: a fire-and-
/// forget reduction on the device (two addends onto a stored value: deterministic).
GDR2_HD void add_partial(float* p, float v) {
#if defined(__CUDA_ARCH__)
  atomicAdd(p, v);
#else
  *p += v;
#endif
}

/// An mm output written straight to global memory: out[m·ld + n] = scale·v, or added
/// with a fire-and-forget reduction (`add`: onto a partial this thread stored earlier).
/// The device epilogue of mm stores each lane's two neighbouring columns with one 8-byte
/// access (out and ld even): a fragment row then fills whole 32-byte sectors.
struct GlobalOut {
  float* out;
  int ld, add;
  float scale;
  GDR2_HD void operator()(int m, int n, float v) const {
    float* p = out + (long long)m * ld + n;
    if (add)
      add_partial(p, scale * v);
    else
      *p = scale * v;
  }
#if defined(__CUDA_ARCH__)
  __device__ __forceinline__ void pair(int m, int n, float v0, float v1) const {
    float* p = out + (long long)m * ld + n;
    v0 *= scale;
    v1 *= scale;
    if (add)
      asm volatile("red.global.add.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(v0), "f"(v1) : "memory");
    else
      asm volatile("st.global.v2.f32 [%0], {%1, %2};\n" ::"l"(p), "f"(v0), "f"(v1) : "memory");
  }
#endif
};

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ void mma_tf32(float (&c)[4], std::uint32_t a0, std::uint32_t a1, std::uint32_t a2,
                                         std::uint32_t a3, std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

/// An operand element as the tf32 products take it: hi = x rounded to tf32 (as stored when
/// ROUNDED: its producer rounded it, tf32 mode only), lo = the rest (split tf32 only, and not
/// for an EXACT operand: a tf32 value, whose rest is zero).
template <int MATH, bool ROUNDED = false, bool EXACT = false>
__device__ __forceinline__ void tf32_split(float x, std::uint32_t& hi, std::uint32_t& lo) {
  hi = (ROUNDED && MATH == kTf32) || EXACT ? __float_as_uint(x) : tf32_bits(x);
  if (MATH == kTf32x3 && !EXACT) lo = tf32_bits(x - __uint_as_float(hi));
}
/// c += A·B for split fragments (tf32_split): one mma, or up to three for split tf32 (a_lo·b_lo
/// dropped, and a_lo·b_hi or a_hi·b_lo where EXACT_A or EXACT_B says that rest is zero: the
/// sum is bit for bit the same without those products, which would add exact zeros).
template <int MATH, bool EXACT_A = false, bool EXACT_B = false>
__device__ __forceinline__ void mma_split(float (&c)[4], const std::uint32_t (&ah)[4], const std::uint32_t (&al)[4],
                                          std::uint32_t bh0, std::uint32_t bh1, std::uint32_t bl0, std::uint32_t bl1) {
  if (MATH == kTf32x3) {
    if (!EXACT_A) mma_tf32(c, al[0], al[1], al[2], al[3], bh0, bh1);
    if (!EXACT_B) mma_tf32(c, ah[0], ah[1], ah[2], ah[3], bl0, bl1);
  }
  mma_tf32(c, ah[0], ah[1], ah[2], ah[3], bh0, bh1);
}
#endif

/// x rounded to BITS explicit mantissa bits (of fp32's 23), to nearest with ties away from
/// zero (relative error ≤ 2^−(BITS+1)); Inf and NaN unchanged.
template <int BITS>
GDR2_HD float round_mantissa(float x) {
  static_assert(BITS > 0 && BITS < 23, "fewer explicit mantissa bits than fp32's 23");
  std::uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(x);
#else
  std::memcpy(&u, &x, 4);
#endif
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + (1u << (22 - BITS))) & ~((1u << (23 - BITS)) - 1u);
  return bits_to_float(u);
}

/// x rounded to tf32 as a tf32 product rounds its operands (cvt.rna: to nearest, ties away
/// from zero), as a float.
GDR2_HD float tf32_round(float x) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(tf32_bits(x));
#else
  return round_mantissa<10>(x);
#endif
}
/// A value that is only ever read as a product operand, as its producer stores it: rounded
/// to tf32 once in the tf32 mode (its readers then skip the cvt: mmt's rounded views),
/// unchanged otherwise. The same products either way: cvt.rna is idempotent.
template <int MATH>
GDR2_HD float op_round(float x) {
  return MATH == kTf32 ? tf32_round(x) : x;
}
template <int MATH>
GDR2_HD F4 op_round4(const F4& v) {
  return {op_round<MATH>(v.x), op_round<MATH>(v.y), op_round<MATH>(v.z), op_round<MATH>(v.w)};
}

#if defined(__CUDA_ARCH__)
/// The epilogue of a 16 × 8·NT accumulator tile at (m0, n0): fo(m, n, value) per element
/// (GlobalOut: one 8-byte store or reduction per lane pair of columns).
template <int NT, class FO>
__device__ __forceinline__ void mm_out(const float (&c)[NT][4], int m0, int n0, int lane, FO& fo) {
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int j = 0; j < NT; ++j) {
    const int n = n0 + 8 * j + 2 * t;
    if constexpr (std::is_same_v<std::decay_t<FO>, GlobalOut>) {
      fo.pair(m0 + g, n, c[j][0], c[j][1]);
      fo.pair(m0 + g + 8, n, c[j][2], c[j][3]);
    } else {
      fo(m0 + g, n, c[j][0]);
      fo(m0 + g, n + 1, c[j][1]);
      fo(m0 + g + 8, n, c[j][2]);
      fo(m0 + g + 8, n + 1, c[j][3]);
    }
  }
}
#endif

#if !defined(__CUDA_ARCH__)
/// One term of a host product: a·b in fp32, of the tf32-rounded operands in the tf32 mode
/// (run_backward_host's emulation; split tf32 and fp32 as fp32, except that split tf32 takes
/// an EXACT operand's tf32 part alone, as the device does: a view wrongly marked exact shows
/// in the host tests as the error it would cause).
template <int MATH, bool EXACT_A = false, bool EXACT_B = false>
inline float host_product(float a, float b) {
  if (MATH == kTf32) return tf32_round(a) * tf32_round(b);
  if (MATH == kTf32x3) return (EXACT_A ? tf32_round(a) : a) * (EXACT_B ? tf32_round(b) : b);
  return a * b;
}

/// The host execution of a block product (mm, mmt): every computed 16 × 8·NT tile of the
/// M×N output in order, element (m, n) = dot(m, n) in fp32; a tile's results are handed to
/// fo only after the whole tile is computed, as on the device. LOWER as in mm.
template <int NT, bool LOWER, class FO, class DOT>
inline void host_tiles(int M, int N, FO& fo, const DOT& dot) {
  const int tn = N / (8 * NT), tiles = (M / 16) * tn;
  for (int tile = 0; tile < tiles; ++tile) {
    const int m0 = (tile / tn) * 16, n0 = (tile % tn) * 8 * NT;
    if (LOWER && n0 > m0 + 15) continue;
    float acc[16][8 * NT];
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8 * NT; ++n) acc[m][n] = dot(m0 + m, n0 + n);
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 8 * NT; ++n) fo(m0 + m, n0 + n, acc[m][n]);
  }
}
#endif

/// Block matrix product over an M×N output (M a multiple of 16, N of 8·NT, KD of 8):
/// fo(m, n, Σ_k fa(m, k)·fb(k, n)) for every (m, n) of every computed tile, then a
/// barrier. Tiles of 16 × 8·NT go round-robin to the warps. LOWER skips the tiles that
/// lie entirely above the diagonal (every n > m): fo is not called for them. SYNC = false
/// leaves out the barrier (two products with disjoint outputs in one phase).
///
/// Device fragment layout of mma.m16n8k8 (tf32), g = lane / 4, t = lane % 4:
///   A: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
///   B: b0 (k = t, n = g), b1 (k = t+4, n = g)
///   C: c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
template <int NT, int MATH, bool LOWER = false, bool SYNC = true, class FA, class FB, class FO>
GDR2_HD void mm(const Blk& bk, int M, int N, int KD, FA&& fa, FB&& fb, FO&& fo) {
#if defined(__CUDA_ARCH__)
  const int tn = N / (8 * NT), tiles = (M / 16) * tn;
  const int warp = bk.tid >> 5, lane = bk.tid & 31, g = lane >> 2, t = lane & 3, nw = bk.nthr >> 5;
  for (int tile = warp; tile < tiles; tile += nw) {
    const int m0 = (tile / tn) * 16, n0 = (tile % tn) * 8 * NT;
    if (LOWER && n0 > m0 + 15) continue;
    float c[NT][4];
#pragma unroll
    for (int j = 0; j < NT; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
    if (MATH == kFp32) {
      for (int k = 0; k < KD; ++k) {
        const float alo = fa(m0 + g, k), ahi = fa(m0 + g + 8, k);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const float b0 = fb(k, n0 + 8 * j + 2 * t), b1 = fb(k, n0 + 8 * j + 2 * t + 1);
          c[j][0] = fmaf(alo, b0, c[j][0]);
          c[j][1] = fmaf(alo, b1, c[j][1]);
          c[j][2] = fmaf(ahi, b0, c[j][2]);
          c[j][3] = fmaf(ahi, b1, c[j][3]);
        }
      }
    } else {
      // two k-steps unrolled (four measured slower: grad-2 5.9 → 6.4 ms, cuda/NOTES.md v8)
#pragma unroll 2
      for (int k0 = 0; k0 < KD; k0 += 8) {
        const float a[4] = {fa(m0 + g, k0 + t), fa(m0 + g + 8, k0 + t), fa(m0 + g, k0 + t + 4),
                            fa(m0 + g + 8, k0 + t + 4)};
        std::uint32_t ah[4], al[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) tf32_split<MATH>(a[i], ah[i], al[i]);
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          std::uint32_t bh0, bh1, bl0, bl1;
          tf32_split<MATH>(fb(k0 + t, n0 + 8 * j + g), bh0, bl0);
          tf32_split<MATH>(fb(k0 + t + 4, n0 + 8 * j + g), bh1, bl1);
          mma_split<MATH>(c[j], ah, al, bh0, bh1, bl0, bl1);
        }
      }
    }
    mm_out<NT>(c, m0, n0, lane, fo);
  }
#else
  if (host_lead(bk)) host_tiles<NT, LOWER>(M, N, fo, [&](int m, int n) {
    float s = 0.f;
    for (int k = 0; k < KD; ++k) s += host_product<MATH>(fa(m, k), fb(k, n));
    return s;
  });
#endif
  if (SYNC) bk.sync();
}

/// mm with the widest tiles (16×32, 16×16 or 16×8) that still give each of the SM's four
/// schedulers a warp: the products are issue-bound (operand functors, one cvt per element),
/// and wider tiles read each A fragment for more products, so fewer instructions per mma
/// beat more busy warps (B=1 state passes: 5.25 → 4.15 ms against a tile for every warp;
/// cuda/NOTES.md v11).
template <int MATH, class FA, class FB, class FO>
GDR2_HD void mm_auto(const Blk& bk, int M, int N, int KD, FA&& fa, FB&& fb, FO&& fo) {
  const int nw = bk.nthr / 32 / 4;
  if (N % 32 == 0 && (M / 16) * (N / 32) >= nw)
    mm<4, MATH>(bk, M, N, KD, fa, fb, fo);
  else if (N % 16 == 0 && (M / 16) * (N / 16) >= nw)
    mm<2, MATH>(bk, M, N, KD, fa, fb, fo);
  else
    mm<1, MATH>(bk, M, N, KD, fa, fb, fo);
}

// ---- tile products: operands as plain shared-memory tiles ----------------------------------
//
// mm reads its operands through functors: every fragment element costs its index math and
// a cvt, and no load can be widened (≈ 50 instructions per 16×32 tile and k-step, issue-
// bound: cuda/NOTES.md backward v14). mmt takes the operands as tiles (base, pitch,
// orientation), so that a fragment is one `ldmatrix` where the contraction index runs along
// a tile row, and plain loads from one pointer per k-step otherwise.

/// A shared-memory operand of mmt: element (i, k) — i the free index (a row of A, a column
/// of B), k the contraction index — at p[i·ld + k] (KMinor: k along a tile row; its fragments
/// are read by ldmatrix, so p and ld are multiples of 4 floats) or at p[k·ld + i] (KMajor).
/// ROUNDED: its producer stored it through op_round, so in the tf32 mode it is read without
/// a cvt. EXACT: every element is a tf32 value (a record part the tf32-mode preps stored
/// rounded, or a tile the tf32 body stored through op_round), so split tf32 takes one product
/// fewer with it (grad-1's exact tail).
template <bool KMAJOR, bool ROUNDED = false, bool EXACT = false>
struct View {
  static constexpr bool kmajor = KMAJOR, rounded = ROUNDED, exact = EXACT;
  const float* p;
  int ld;
  GDR2_HD float at(int i, int k) const { return KMAJOR ? p[k * ld + i] : p[i * ld + k]; }
};
using KMinor = View<false>;
using KMajor = View<true>;
using KMinorR = View<false, true>;
using KMajorR = View<true, true>;

/// One term of an mmt sum: ±A·B over K contraction indices (A: M×K, B: K×N, both as (i, k)).
template <class VA, class VB>
struct Term {
  VA a;
  VB b;
  int K;
  bool neg;
};
template <class VA, class VB>
GDR2_HD Term<VA, VB> term(VA a, VB b, int K, bool neg = false) {
  return {a, b, K, neg};
}

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ void ldsm_x4(unsigned addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x2(unsigned addr, std::uint32_t& r0, std::uint32_t& r1) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(addr));
}

/// c += ±A·B of one term for the 16 × 8·NT tile at (m0, n0), on the tensor cores.
///
/// Within one k-step of m16n8k8 the 8 k values may be ordered freely if A and B use the
/// same order. A KMinor A is read by ldmatrix, which gives lane (g, t) the k values t and
/// t + 4 (the order of the fragment layout); a KMajor A is read as k = 2t, 2t + 1, so that
/// the KMajor fragment reads (rows 2t, 2t+1, columns g) are free of bank conflicts at a
/// pitch ≡ 4 (mod 16) — with k = t, t + 4 they need a pitch ≡ 8 (mod 32), as for a KMajor
/// B after a KMinor A. KMinor B fragments: ldmatrix (order t, t+4), or one 8-byte load
/// (order 2t, 2t+1).
template <int MT, int NT, int MATH, class VA, class VB>
__device__ __forceinline__ void mmt_term(float (&c)[MT][NT][4], const Term<VA, VB>& tm, int m0, int n0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  constexpr bool PAIR = VA::kmajor;
  const int k1 = PAIR ? 2 * t : t, k2 = PAIR ? 2 * t + 1 : t + 4;
  const float *pa = tm.a.p, *pb = tm.b.p;
  const int la = tm.a.ld, lb = tm.b.ld;
  // ldmatrix row addresses: A matrices (rows 0–7 | 8–15) × (k 0–3 | 4–7); B matrices
  // (k 0–3 | 4–7) × (columns 8j … | 8(j+1) …)
  const unsigned sa = unsigned(__cvta_generic_to_shared(pa + (m0 + (lane & 7) + 8 * ((lane >> 3) & 1)) * la +
                                                        4 * (lane >> 4)));
  const unsigned sb = unsigned(__cvta_generic_to_shared(pb + (n0 + (lane & 7) + 8 * (lane >> 4)) * lb +
                                                        4 * ((lane >> 3) & 1)));
  const std::uint32_t sign = tm.neg ? 0x80000000u : 0u;
#pragma unroll 2
  for (int k0 = 0; k0 < tm.K; k0 += 8) {
    float a[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      if constexpr (VA::kmajor) {
        const float *r1 = pa + (k0 + k1) * la + m0 + 16 * mt + g, *r2 = pa + (k0 + k2) * la + m0 + 16 * mt + g;
        a[mt][0] = r1[0];
        a[mt][1] = r1[8];
        a[mt][2] = r2[0];
        a[mt][3] = r2[8];
      } else {
        std::uint32_t r[4];
        ldsm_x4(sa + 4u * unsigned(k0 + 16 * mt * la), r);
#pragma unroll
        for (int i = 0; i < 4; ++i) a[mt][i] = __uint_as_float(r[i]);
      }
    }
    float b[NT][2];
    if constexpr (VB::kmajor) {
      const float *r1 = pb + (k0 + k1) * lb + n0 + g, *r2 = pb + (k0 + k2) * lb + n0 + g;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        b[j][0] = r1[8 * j];
        b[j][1] = r2[8 * j];
      }
    } else if constexpr (PAIR) {
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const float2 v = *reinterpret_cast<const float2*>(pb + (n0 + 8 * j + g) * lb + k0 + 2 * t);
        b[j][0] = v.x;
        b[j][1] = v.y;
      }
    } else if constexpr (NT == 1) {
      std::uint32_t r0, r1;
      ldsm_x2(sb + 4u * unsigned(k0), r0, r1);
      b[0][0] = __uint_as_float(r0);
      b[0][1] = __uint_as_float(r1);
    } else {
#pragma unroll
      for (int j = 0; j < NT; j += 2) {
        std::uint32_t r[4];
        ldsm_x4(sb + 4u * unsigned(k0 + 8 * j * lb), r);
        b[j][0] = __uint_as_float(r[0]);
        b[j][1] = __uint_as_float(r[1]);
        b[j + 1][0] = __uint_as_float(r[2]);
        b[j + 1][1] = __uint_as_float(r[3]);
      }
    }
    std::uint32_t ah[MT][4], al[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        tf32_split<MATH, VA::rounded, VA::exact>(a[mt][i], ah[mt][i], al[mt][i]);
        if (MATH == kTf32x3 && !VA::exact) al[mt][i] ^= sign;
        ah[mt][i] ^= sign;
      }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      std::uint32_t bh0, bh1, bl0, bl1;
      tf32_split<MATH, VB::rounded, VB::exact>(b[j][0], bh0, bl0);
      tf32_split<MATH, VB::rounded, VB::exact>(b[j][1], bh1, bl1);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) mma_split<MATH, VA::exact, VB::exact>(c[mt][j], ah[mt], al[mt], bh0, bh1, bl0, bl1);
    }
  }
}

/// The same on the CUDA cores in fp32 (kFp32), element order as mm's fp32 path.
template <int NT, class VA, class VB>
__device__ __forceinline__ void mmt_term_fp32(float (&c)[NT][4], const Term<VA, VB>& tm, int m0, int n0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  const float s = tm.neg ? -1.f : 1.f;
  for (int k = 0; k < tm.K; ++k) {
    const float alo = s * tm.a.at(m0 + g, k), ahi = s * tm.a.at(m0 + g + 8, k);
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const float b0 = tm.b.at(n0 + 8 * j + 2 * t, k), b1 = tm.b.at(n0 + 8 * j + 2 * t + 1, k);
      c[j][0] = fmaf(alo, b0, c[j][0]);
      c[j][1] = fmaf(alo, b1, c[j][1]);
      c[j][2] = fmaf(ahi, b0, c[j][2]);
      c[j][3] = fmaf(ahi, b1, c[j][3]);
    }
  }
}
#endif

/// Block tile product over an M×N output (M a multiple of 16·MT, N of 8·NT, every K of 8):
/// fo(m, n, Σ_terms ±Σ_k A(m, k)·B(k, n)), the terms in their order, for every (m, n) of
/// every computed tile, then a barrier (not with SYNC = false); LOWER as in mm. Tiles of
/// 16 × 8·NT go round-robin to the warps. The host computes it in fp32, term by term.
/// MT: tiles of 16·MT rows per warp (tf32 modes), the A fragments of MT row blocks against each
/// B fragment: 2 operand words per mma at MT = 2, NT = 4 instead of 3 (cuda/NOTES.md backward
/// item 39); every element's sum in the same order as at MT = 1.
template <int MT, int NT, int MATH, bool LOWER = false, bool SYNC = true, class FO, class... Ts>
GDR2_HD void mmt_tiles(const Blk& bk, int M, int N, FO&& fo, const Ts&... terms) {
  static_assert(MT == 1 || (MATH != kFp32 && !LOWER), "row blocks per tile: tf32 modes, full products");
#if defined(__CUDA_ARCH__)
  const int tn = N / (8 * NT), tiles = (M / (16 * MT)) * tn;
  const int warp = bk.tid >> 5, lane = bk.tid & 31, nw = bk.nthr >> 5;
  for (int tile = warp; tile < tiles; tile += nw) {
    const int m0 = (tile / tn) * 16 * MT, n0 = (tile % tn) * 8 * NT;
    if (LOWER && n0 > m0 + 15) continue;
    float c[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int j = 0; j < NT; ++j) c[mt][j][0] = c[mt][j][1] = c[mt][j][2] = c[mt][j][3] = 0.f;
    if constexpr (MATH == kFp32)
      (mmt_term_fp32<NT>(c[0], terms, m0, n0, lane), ...);
    else
      (mmt_term<MT, NT, MATH>(c, terms, m0, n0, lane), ...);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) mm_out<NT>(c[mt], m0 + 16 * mt, n0, lane, fo);
  }
#else
  if (host_lead(bk)) host_tiles<NT, LOWER>(M, N, fo, [&](int m, int n) {
    float s = 0.f;
    auto add = [&](const auto& tm) {
      for (int k = 0; k < tm.K; ++k) {
        using T = std::decay_t<decltype(tm)>;
        const float v = host_product<MATH, decltype(T::a)::exact, decltype(T::b)::exact>(tm.a.at(m, k), tm.b.at(n, k));
        s += tm.neg ? -v : v;
      }
    };
    (add(terms), ...);
    return s;
  });
#endif
  if (SYNC) bk.sync();
}
/// mmt_tiles with one row block per tile.
template <int NT, int MATH, bool LOWER = false, bool SYNC = true, class FO, class... Ts>
GDR2_HD void mmt(const Blk& bk, int M, int N, FO&& fo, const Ts&... terms) {
  mmt_tiles<1, NT, MATH, LOWER, SYNC>(bk, M, N, static_cast<FO&&>(fo), terms...);
}

/// mmt with mm_auto's choice of tile width (SYNC as in mmt).
template <int MATH, bool SYNC = true, class FO, class... Ts>
GDR2_HD void mmt_auto(const Blk& bk, int M, int N, FO&& fo, const Ts&... terms) {
  const int nw = bk.nthr / 32 / 4;
  if (N % 32 == 0 && (M / 16) * (N / 32) >= nw)
    mmt<4, MATH, false, SYNC>(bk, M, N, fo, terms...);
  else if (N % 16 == 0 && (M / 16) * (N / 16) >= nw)
    mmt<2, MATH, false, SYNC>(bk, M, N, fo, terms...);
  else
    mmt<1, MATH, false, SYNC>(bk, M, N, fo, terms...);
}

}  // namespace bwd
}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
