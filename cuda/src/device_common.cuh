// gdr2 CUDA backend — warp-level building blocks: cp.async, ldmatrix, mma.sync,
// 16-bit conversions. Internal to the backend.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace gdr2 {
namespace cuda {
namespace detail {

constexpr float kLog2e = 1.4426950408889634f;

/// exp(x) for x <= 0 (the argument is clamped, so a slightly positive rounding of a
/// difference of log-decays can never produce a factor above 1; SPEC §5).
__device__ __forceinline__ float exp_nonpos(float x) { return exp2f(fminf(x, 0.f) * kLog2e); }

/// 2^x for x <= 0 given in log2 units (clamped; one MUFU.EX2, flush-to-zero).
__device__ __forceinline__ float ex2_nonpos(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(fminf(x, 0.f)));
  return y;
}

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// ---- cp.async (16-byte, zero-filled beyond src_bytes) -------------------------
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/// Hint: the line holding p into L2.
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p)); }
/// Hint: `bytes` (a multiple of 16) from p (16-byte aligned) into L2, by the copy engine.
__device__ __forceinline__ void prefetch_l2_bulk(const void* p, std::uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
}

// ---- programmatic dependent launch (sm_90) -------------------------------------------
/// Lets the kernel launched after this one with programmatic stream serialization start once
/// every block of this grid has executed this (or exited); nothing is made visible by it.
__device__ __forceinline__ void grid_launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
/// Waits until the grids this one programmatically depends on have completed and their memory
/// operations are visible to it; returns at once in a grid launched without that dependency.
__device__ __forceinline__ void grid_dependency_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }

// ---- ldmatrix -------------------------------------------------------------------
__device__ __forceinline__ void ldsm_x4(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x2(std::uint32_t& r0, std::uint32_t& r1, const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(r0), "=r"(r1) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x4_t(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

/// stmatrix, transposed: lanes 8m..8m+7 give the row addresses of matrix m (16 bytes each);
/// register m holds the thread's two consecutive elements of row lane/4 of matrix m.
__device__ __forceinline__ void stsm_x4_t(void* p, const std::uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(smem_u32(p)), "r"(r[0]),
               "r"(r[1]), "r"(r[2]), "r"(r[3])
               : "memory");
}

// Lane addressing of the three x4 patterns used here (row/col of the 16×16 tile whose
// address lane `l` supplies):
//   A operand, row-major [m][k]          : row = l%8 + ((l/8)%2)*8, col = (l/16)*8
//   B operand, stored as [n][k] (rows=n) : row = l%8 + (l/16)*8,    col = ((l/8)%2)*8
//       → regs {0,1} = n-tile 0, {2,3} = n-tile 1
//   B operand, stored as [k][n] (.trans) : row = l%8 + ((l/8)%2)*8, col = (l/16)*8
//       → regs {0,1} = n-tile 0, {2,3} = n-tile 1
//   A operand, stored as [k][m] (.trans) : row = l%8 + (l/16)*8,    col = ((l/8)%2)*8
__device__ __forceinline__ int lrow_a(int l) { return (l & 7) + ((l >> 3) & 1) * 8; }
__device__ __forceinline__ int lcol_a(int l) { return (l >> 4) * 8; }
__device__ __forceinline__ int lrow_bn(int l) { return (l & 7) + (l >> 4) * 8; }
__device__ __forceinline__ int lcol_bn(int l) { return ((l >> 3) & 1) * 8; }

// ---- the 128-byte-swizzle tile layout (wgmma operands; conflict-free ldmatrix rows) ------
/// Element offset of (row r, column c) in a [rows][C] 16-bit tile stored as C/64 atoms of
/// [rows][64] (128-byte rows, atoms rows·64 elements apart; here rows = 64), 16-byte pieces
/// at position (c/8 mod 8) XOR (r mod 8) within the row. The tile must be 1024-byte aligned.
__host__ __device__ __forceinline__ int swz128(int r, int c) {
  return (c >> 6) * (64 * 64) + r * 64 + ((((c >> 3) & 7) ^ (r & 7)) << 3) + (c & 7);
}

// ---- mbarrier + bulk copies (TMA: 1-D, tensor map) ---------------------------------
__device__ __forceinline__ void mbar_init(void* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count));
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
/// The same for global memory: generic accesses to it ordered with async-proxy (bulk copy) ones.
__device__ __forceinline__ void fence_proxy_async_global() { asm volatile("fence.proxy.async.global;\n" ::: "memory"); }
__device__ __forceinline__ void mbar_expect_tx(void* bar, std::uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void bulk_g2s(void* dst, const void* src, std::uint32_t bytes, void* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(smem_u32(dst)),
      "l"(src), "r"(bytes), "r"(smem_u32(bar))
      : "memory");
}
/// One arrival on the mbarrier (release: this thread's earlier accesses happen before a
/// waiter's later ones).
__device__ __forceinline__ void mbar_arrive(void* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
/// The mbarrier counts one arrival once every cp.async this thread issued so far has landed
/// (no pending-count increment: the arrival is part of the barrier's expected count).
__device__ __forceinline__ void cp_async_mbar_arrive(void* bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}

/// Bulk copy shared → global (TMA, 16-byte aligned, size a multiple of 16) in this
/// thread's current bulk group.
__device__ __forceinline__ void bulk_s2g(void* dst, const void* src, std::uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(smem_u32(src)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
/// This thread's bulk groups have read their shared-memory sources.
__device__ __forceinline__ void bulk_wait_read() { asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory"); }
/// This thread's bulk groups are complete (their writes performed).
__device__ __forceinline__ void bulk_wait() { asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory"); }

/// Tensor-map tile copy (TMA) of one box at coordinates (c0..c3) into shared memory,
/// completing `bar`'s transaction count. `map`: generic address of a CUtensorMap in the
/// kernel parameters (__grid_constant__), constant or global memory.
__device__ __forceinline__ void tma_load_4d(void* dst, const void* map, int c0, int c1, int c2, int c3, void* bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
      "[%6];\n" ::"r"(smem_u32(dst)),
      "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
      : "memory");
}
__device__ __forceinline__ void mbar_wait(void* bar, std::uint32_t parity) {
  std::uint32_t ok = 0;
  while (!ok) {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(ok)
        : "r"(smem_u32(bar)), "r"(parity)
        : "memory");
  }
}

/// This thread's warp index, known to the compiler as warp-uniform (a shuffle from lane 0):
/// branches on it are not divergent within a warp, so warpgroup MMAs inside them are not
/// serialized by ptxas.
__device__ __forceinline__ int warp_index_uniform() { return __shfl_sync(0xffffffffu, int(threadIdx.x >> 5), 0); }

// ---- wgmma: warpgroup MMA, f32 += f16 (A: registers) × f16 (B: shared memory) ---------
// A fragments and accumulators of one warp are those of mma.sync m16n8k16 for the warp's
// 16 rows of the warpgroup's 64 (accumulator column block j = d[j][0..3]).
/// Shared-memory matrix descriptor of a swz128 operand (128-byte swizzle): start address,
/// leading- and stride-dimension byte offsets.
__device__ __forceinline__ std::uint64_t wgmma_desc(const void* p, std::uint32_t lbo, std::uint32_t sbo) {
  return std::uint64_t((smem_u32(p) & 0x3FFFF) >> 4) | (std::uint64_t((lbo & 0x3FFFF) >> 4) << 16) |
         (std::uint64_t((sbo & 0x3FFFF) >> 4) << 32) | (std::uint64_t(1) << 62);
}
/// Leading / stride byte offsets of an N-contiguous ("MN-major") swz128 B operand: between
/// 64-column atoms (8 KB: [64 rows][64] tiles) and between 8-row groups (1024 B).
constexpr std::uint32_t kWgmmaMnLbo = 8192, kWgmmaMnSbo = 1024;
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
/// Wait until at most N committed groups of warpgroup MMAs are pending (they complete in order).
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void wgmma_wait_all() { wgmma_wait<0>(); }
/// After a wait: the accumulators' values are defined here for the compiler, so that no
/// read of them is scheduled above the wait (the MMAs write them asynchronously).
template <int M, int N>
__device__ __forceinline__ void wgmma_fence_operands(float (&d)[M][N]) {
#pragma unroll
  for (int i = 0; i < M; ++i)
#pragma unroll
    for (int j = 0; j < N; ++j) asm volatile("" : "+f"(d[i][j])::"memory");
}
// Operand lists of the wrappers below: accumulator registers d[j][0..3] under constraint
// CS ("+f": accumulate, "=f": write only), the matching PTX register lists, A and B.
#define GDR2_ACC4(CS, d, j) CS(d[j][0]), CS(d[j][1]), CS(d[j][2]), CS(d[j][3])
#define GDR2_ACC32(CS, d)                                                                                \
  GDR2_ACC4(CS, d, 0), GDR2_ACC4(CS, d, 1), GDR2_ACC4(CS, d, 2), GDR2_ACC4(CS, d, 3), GDR2_ACC4(CS, d, 4), \
      GDR2_ACC4(CS, d, 5), GDR2_ACC4(CS, d, 6), GDR2_ACC4(CS, d, 7)
#define GDR2_ACC64(CS, d)                                                                                   \
  GDR2_ACC32(CS, d), GDR2_ACC4(CS, d, 8), GDR2_ACC4(CS, d, 9), GDR2_ACC4(CS, d, 10), GDR2_ACC4(CS, d, 11), \
      GDR2_ACC4(CS, d, 12), GDR2_ACC4(CS, d, 13), GDR2_ACC4(CS, d, 14), GDR2_ACC4(CS, d, 15)
#define GDR2_REGS32                                                                  \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21," \
  "%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, "
#define GDR2_REGS64                                                                                   \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25," \
  "%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,"    \
  "%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, {%64,%65,%66,%67}, %68, "
#define GDR2_AB "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b)
// One instruction: SHAPE (m64nNk16), the accumulators' registers REGS and constraint list
// ACC, scale-d SD (1 accumulate, 0 overwrite), the sign of A, B transposed (TB 1: N-major).
#define GDR2_WGMMA(SHAPE, REGS, ACC, SD, TB)                                                                  \
  if (neg)                                                                                                    \
    asm volatile("wgmma.mma_async.sync.aligned." SHAPE ".f32.f16.f16 " REGS SD ", -1, 1, " TB ";\n" : ACC : GDR2_AB); \
  else                                                                                                        \
    asm volatile("wgmma.mma_async.sync.aligned." SHAPE ".f32.f16.f16 " REGS SD ", 1, 1, " TB ";\n" : ACC : GDR2_AB)

/// d (m64 × N: this warp's 16 rows) += ±A (m64 × k16) · B (k16 × N), the sign − when `neg`;
/// TRANS: B stored N-contiguous ("MN-major") instead of K-contiguous.
template <int N, int TRANS>
__device__ __forceinline__ void wgmma_f16(float (&d)[N / 8][4], const std::uint32_t (&a)[4], std::uint64_t b,
                                          bool neg);
template <>
__device__ __forceinline__ void wgmma_f16<64, 0>(float (&d)[8][4], const std::uint32_t (&a)[4], std::uint64_t b,
                                                  bool neg) {
  GDR2_WGMMA("m64n64k16", GDR2_REGS32, GDR2_ACC32("+f", d), "1", "0");
}
template <>
__device__ __forceinline__ void wgmma_f16<64, 1>(float (&d)[8][4], const std::uint32_t (&a)[4], std::uint64_t b,
                                                  bool neg) {
  GDR2_WGMMA("m64n64k16", GDR2_REGS32, GDR2_ACC32("+f", d), "1", "1");
}
template <>
__device__ __forceinline__ void wgmma_f16<128, 1>(float (&d)[16][4], const std::uint32_t (&a)[4], std::uint64_t b,
                                                  bool neg) {
  GDR2_WGMMA("m64n128k16", GDR2_REGS64, GDR2_ACC64("+f", d), "1", "1");
}
/// d (m64 × 64, this warp's 16 rows) = ±A (m64 × k16) · B (k16 × 64, K-contiguous): the
/// first k-step of a product, the accumulators only written (scale-d = 0). Used for
/// products issued while the warp runs mma.sync work: accumulators that an MMA only
/// writes, and that no other instruction writes before the next product, let ptxas keep
/// them in flight (a register written by both mma.sync and a later wgmma made it wait for
/// the MMAs in flight before the mma.sync, serialising the two).
__device__ __forceinline__ void wgmma_f16_first_64(float (&d)[8][4], const std::uint32_t (&a)[4], std::uint64_t b,
                                                   bool neg) {
  GDR2_WGMMA("m64n64k16", GDR2_REGS32, GDR2_ACC32("=f", d), "0", "0");
}
#undef GDR2_WGMMA
#undef GDR2_AB
#undef GDR2_REGS64
#undef GDR2_REGS32
#undef GDR2_ACC64
#undef GDR2_ACC32
#undef GDR2_ACC4

// ---- mma.sync m16n8k16, fp16 inputs, fp32 accumulators ----------------------------
__device__ __forceinline__ void mma16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                                         std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// The opt-in shared memory of one block on sm_90 (bytes).
constexpr int kSmemOptIn = 227 * 1024;

/// The largest of the warp's 32 values, in every lane.
__device__ __forceinline__ float warp_max(float m) {
#pragma unroll
  for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  return m;
}

__device__ __forceinline__ std::uint32_t pack_half2(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<std::uint32_t*>(&h);
}
__device__ __forceinline__ std::uint32_t hmul2_u32(std::uint32_t a, std::uint32_t b) {
  __half2 r = __hmul2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
  return *reinterpret_cast<std::uint32_t*>(&r);
}
__device__ __forceinline__ std::uint32_t hneg2_u32(std::uint32_t a) { return a ^ 0x80008000u; }

// ---- 16-bit input types ----------------------------------------------------------
template <class T>
struct In16;
template <>
struct In16<__nv_bfloat16> {
  __device__ static __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __forceinline__ float2 to_float2(std::uint32_t u) {
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
  }
  __device__ static __forceinline__ __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
  /// (a, b) rounded, a in the low half
  __device__ static __forceinline__ std::uint32_t pack2(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const std::uint32_t*>(&h);
  }
};
template <>
struct In16<__half> {
  __device__ static __forceinline__ float to_float(__half x) { return __half2float(x); }
  __device__ static __forceinline__ float2 to_float2(std::uint32_t u) {
    return __half22float2(*reinterpret_cast<__half2*>(&u));
  }
  __device__ static __forceinline__ __half from_float(float x) { return __float2half_rn(x); }
  /// (a, b) rounded, a in the low half
  __device__ static __forceinline__ std::uint32_t pack2(float a, float b) { return pack_half2(a, b); }
};

/// x rounded to tf32 as a tf32 product rounds its operands (cvt.rna: to nearest, ties away
/// from zero), as the bits of an fp32 value.
__device__ __forceinline__ std::uint32_t tf32_bits(float x) {
  std::uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
}

/// Two consecutive 16-bit values (4-byte aligned) as floats.
template <class T>
__device__ __forceinline__ float2 load2(const T* p) {
  return In16<T>::to_float2(*reinterpret_cast<const std::uint32_t*>(p));
}

/// Four consecutive 16-bit values (8-byte aligned) as floats.
template <class T>
__device__ __forceinline__ float4 load4(const T* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = In16<T>::to_float2(u.x), b = In16<T>::to_float2(u.y);
  return make_float4(a.x, a.y, b.x, b.y);
}

}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
