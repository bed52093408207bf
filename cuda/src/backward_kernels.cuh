// gdr2 CUDA backend, backward — the kernel bodies (SPEC §4 regrouped as in
// include/gdr2/chunk_backward.hpp; every exponent ≤ 0, SPEC §5).
//
// Notation per chunk of n ≤ 64 tokens (rows r, s), all decays in log2 units:
//   G_r = Σ_{i≤r} g_i · log2(e)   γ_r = 2^{G_r}   last = n − 1
//   Qs = scale·q, Bk = b⊙k, T_rs = Σ_d Bk_r k_s 2^{G_r−G_s} (s < r), Aqk likewise with Qs (s ≤ r)
//   A = (I+T)⁻¹, Y = A(γ⊙Bk), U = A(w⊙v), Qγ = Qs⊙γ, Ktail_r = k_r⊙2^{G_last−G_r}, γ_C = γ_last
// Rows past n are loaded as zeros (g = 0 there), so every product over a padded chunk
// equals the one over its n valid rows; padded rows are never written out.
//
// Anchors (sub-blocks of 16 rows, a(i) = 16i − 1, e(j) = 16j + 15): for r in block i
// and s < 16i, 2^{G_r−G_s} = 2^{G_r−G_a(i)} · 2^{G_a(i)−G_s}, both factors ≤ 1; for s in
// block j and r > e(j), 2^{G_r−G_s} = 2^{G_r−G_e(j)} · 2^{G_e(j)−G_s}. Pairs inside one
// diagonal sub-block use 2^{G_r−G_s} directly (r ≥ s).
#pragma once

#define GDR2_CUDA_BACKWARD_PARAMS_ONLY
#include <gdr2/cuda/backward.hpp>

#include "backward_block.cuh"
#include "backward_record.hpp"

namespace gdr2 {
namespace cuda {
namespace detail {
namespace bwd {

using P = BackwardParams;

// ---- addressing -------------------------------------------------------------------------
GDR2_HD int cu_at(const P& p, int i) {
  return p.cu_wide ? int(static_cast<const long long*>(p.cu_seqlens)[i]) : static_cast<const int*>(p.cu_seqlens)[i];
}

/// Tokens of sequence n: batch row, [bos, eos); first global chunk and chunk count.
struct SeqLoc {
  int bb, bos, eos;
  long long cg0;
  int nc;
};
GDR2_HD SeqLoc seq_loc(const P& p, int n) {
  if (p.chunk_offsets) {
    const int bos = cu_at(p, n), eos = cu_at(p, n + 1);
    return {0, bos, eos, (long long)p.chunk_offsets[n], p.chunk_offsets[n + 1] - p.chunk_offsets[n]};
  }
  return {n, 0, p.T, (long long)n * p.chunks_per_seq, p.chunks_per_seq};
}

/// Where global chunk cg lies: sequence, chunk within it, batch row, first token, valid rows,
/// the sequence's chunk count.
struct ChunkLoc {
  int n, c, bb, t0, len, nc;
};
GDR2_HD ChunkLoc chunk_loc(const P& p, long long cg) {
  int n, c;
  if (p.chunk_offsets) {
    int lo = 0, hi = p.N - 1;  // the last sequence whose first chunk is <= cg
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (p.chunk_offsets[mid] <= cg)
        lo = mid;
      else
        hi = mid - 1;
    }
    n = lo;
    c = int(cg - p.chunk_offsets[n]);
  } else {
    n = int(cg / p.chunks_per_seq);
    c = int(cg % p.chunks_per_seq);
  }
  const SeqLoc s = seq_loc(p, n);
  const int t0 = s.bos + kC * c;
  const int len = s.eos - t0 < kC ? s.eos - t0 : kC;
  return {n, c, s.bb, t0, len, s.nc};
}

GDR2_HD long long act(const Strides3& s, int bb, int t, int h) {
  return (long long)bb * s.b + (long long)t * s.t + (long long)h * s.h;
}
GDR2_HD int ghead(int hv, int hg, int Hv) { return int((long long)hv * hg / Hv); }

// Inputs are read four channels at a time (d a multiple of 4), through ld_in4: per block
// through InRows (below); dO, read per chunk of a sequence in the state passes, per access.
GDR2_HD F4 splat(float x) { return {x, x, x, x}; }
/// Element offset of dO[bb, t, hv, d].
GDR2_HD long long do_off(const P& p, int bb, int t, int hv, int d) { return act(p.sdo, bb, t, hv) + d; }
GDR2_HD F4 in_do4(const P& p, int bb, int t, int hv, int d) {
  return ld_in4(p.d_o, do_off(p, bb, t, hv, d), p.dtype, p.vec);
}
GDR2_HD F4 mul4(const F4& a, const F4& b) { return {a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w}; }
GDR2_HD float at4(const F4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

/// One input's rows of a chunk-head: element (r, d) at base[off + r·st + d], read four
/// channels at a time (d a multiple of 4) and multiplied by `mul`; `one`: a single value
/// per row (β of tied gates, the scalar decay). The offsets are formed once per block
/// instead of per access (64-bit head and token arithmetic).
struct InRows {
  const void* base;
  long long off, st;
  int dt, vec, one;
  float mul;
  GDR2_HD F4 at(int r, int d) const {
    const long long o = off + r * st;
    if (one) return splat(ld_in(base, o, dt) * mul);
    const F4 x = ld_in4(base, o + d, dt, vec);
    return {x.x * mul, x.y * mul, x.z * mul, x.w * mul};
  }
};
GDR2_HD InRows rows_q(const P& p, const ChunkLoc& c, int hv) {
  return {p.q, act(p.sq, c.bb, c.t0, hv / p.group), p.sq.t, p.dtype, p.vec, 0, p.scale};
}
GDR2_HD InRows rows_k(const P& p, const ChunkLoc& c, int hv) {
  return {p.k, act(p.sk, c.bb, c.t0, hv / p.group), p.sk.t, p.dtype, p.vec, 0, 1.f};
}
GDR2_HD InRows rows_v(const P& p, const ChunkLoc& c, int hv) {
  return {p.v, act(p.sv, c.bb, c.t0, hv), p.sv.t, p.dtype, p.vec, 0, 1.f};
}
GDR2_HD InRows rows_beta(const P& p, const ChunkLoc& c, int hv) {
  return {p.beta, act(p.sbeta, c.bb, c.t0, ghead(hv, p.hg_beta, p.Hv)), p.sbeta.t, p.dtype, p.vec, 1, 1.f};
}
GDR2_HD InRows rows_b(const P& p, const ChunkLoc& c, int hv) {
  if (p.tied) return rows_beta(p, c, hv);
  return {p.b, act(p.sb, c.bb, c.t0, ghead(hv, p.hg_b, p.Hv)), p.sb.t, p.dtype, p.vec, 0, 1.f};
}
GDR2_HD InRows rows_w(const P& p, const ChunkLoc& c, int hv) {
  if (p.tied) return rows_beta(p, c, hv);
  return {p.w, act(p.sw, c.bb, c.t0, ghead(hv, p.hg_w, p.Hv)), p.sw.t, p.dtype, p.vec, 0, 1.f};
}
/// log-decays in log2 units
GDR2_HD InRows rows_g(const P& p, const ChunkLoc& c, int hv) {
  return {p.g, act(p.sg, c.bb, c.t0, ghead(hv, p.hg_g, p.Hv)), p.sg.t, kF32, p.vec, p.scalar_decay, kLog2e};
}

/// One gradient's rows of a chunk-head (value head hv): element (r, i) at element r·st + i
/// from row0, of type dt (BwdSink::dt: fp32 or a 16-bit type); nothing when the gradient
/// is not asked for.
struct OutRows {
  void* row0;
  long long st;
  int vec, dt;
  GDR2_HD void put(int r, int i, float v) const {
    if (row0) st_out(row0, r * st + i, dt, v);
  }
  /// four consecutive channels (one store when BackwardParams::vec_out)
  GDR2_HD void put4(int r, int i, const F4& v) const {
    if (row0) st_out4(row0, r * st + i, dt, vec, v);
  }
};
GDR2_HD OutRows out_rows(const P& p, const BwdSink& s, const ChunkLoc& c, int hv) {
  const long long off = (long long)c.bb * s.sb + (long long)c.t0 * s.st + (long long)hv * s.sh;
  void* row0 = s.p ? static_cast<char*>(s.p) + off * (s.dt == kF32 ? 4 : 2) : nullptr;
  return {row0, s.st, p.vec_out, s.dt};
}

// ---- record layouts: backward_record.hpp -------------------------------------------------
/// grad-1's outputs per chunk-head (fp32): dO Sᵀ, dKtail, dĒ, dT, dAqk, Σ dS⊙S per key
/// channel, Σ dw per row (tied gates); then the applies' per-row sums per key slice.
template <int D>
struct G1 {
  static constexpr long long dQ = 0, X = kC * D, dE = 2 * kC * D, dT = 3 * kC * D, dAqk = dT + kC * kC,
                             rs = dAqk + kC * kC, bw = rs + D, tok = bw + kC, floats = tok + 2 * kC * (D / kKS);
  static_assert(floats == bwd_g1_floats(D), "G1 layout and bwd_g1_floats disagree");
};

static_assert(Rec16<128>::stride <= bwd_g1_floats(128) * 4 && Rec16<64>::stride <= bwd_g1_floats(64) * 4,
              "an fp16 record fits grad-1's workspace of a chunk-head");
static_assert(Rec<128>::C == kC && Rec16<128>::C == kC, "the records' chunk length");

/// Whether the fp16 record lies in the fp32 record (rec16_at) and grad-1 reads Ktail and Y
/// from it: given the chunk states no state kernel runs, so nothing else reads the fp32
/// record's Qγ, Ktail, Y or γ_C, and the prep writes none of them (v58).
template <int D>
GDR2_HD bool rec16_in_record(const P& p) {
  return p.rev16 && p.saved_states && Rec16<D>::fits_record;
}
/// Where the fp16 record of chunk-head `item` lies: in the fp32 record over its Qγ, Ktail
/// (rec16_in_record), else in grad-1's workspace, free until grad-1 runs after the reverse pass.
template <int D>
GDR2_HD char* rec16_at(const P& p, long long item) {
  return rec16_in_record<D>(p) ? reinterpret_cast<char*>(p.rec + item * Rec<D>::floats + Rec<D>::Qg)
                               : reinterpret_cast<char*>(p.g1) + item * (long long)Rec16<D>::stride;
}

constexpr int kPC = kC + 4;  // pitch of C×C fp32 tiles

/// dS at the end of a chunk as the fp16 reverse pass stores it (p.rev16; backward_reverse16.cuh)
/// in the chunk-head's fp32 [D][D] space of p.dstates (byte offsets): fp16 [D][D] values
/// x = dS·2^{−E} (the largest |x| of 16 value columns in [½, 1]), then int E[D / 16] ≥ −120,
/// one per 16 value columns: dS = x·2^{E}, exact in fp32 and in tf32 (10-bit significands).
template <int D>
struct DS16 {
  static constexpr long long x = 0, e = 2LL * D * D;
  static_assert(e + 4 * (D / 16) <= 4LL * D * D, "fp16 dS and its exponents fit the fp32 space");
};

// =============================================================================================
// chunk offsets (varlen): chunk_offsets[n] = Σ_{m<n} ⌈L_m / 64⌉, one block of virtual threads
// =============================================================================================
GDR2_HD void offsets_body(const Blk& bk, const P& p, float* sm) {
  constexpr int V = kThreads;
  int* part = reinterpret_cast<int*>(sm);
  const int per = (p.N + V - 1) / V;
  bk.par(V, [&](int i) {
    int s = 0;
    for (int n = i * per; n < (i + 1) * per && n < p.N; ++n) s += (cu_at(p, n + 1) - cu_at(p, n) + kC - 1) / kC;
    part[i] = s;
  });
  bk.par(1, [&](int) {
    int run = 0;
    for (int i = 0; i < V; ++i) {
      const int s = part[i];
      part[i] = run;
      run += s;
    }
    p.chunk_offsets[p.N] = run;
  });
  bk.par(V, [&](int i) {
    int run = part[i];
    for (int n = i * per; n < (i + 1) * per && n < p.N; ++n) {
      p.chunk_offsets[n] = run;
      run += (cu_at(p, n + 1) - cu_at(p, n) + kC - 1) / kC;
    }
  });
}

// =============================================================================================
// 1. prep: one block per (chunk, value head) → record
// =============================================================================================
template <int D>
struct PrepLayout {
  static constexpr int PD = D + 4;
  static constexpr int G = 0, Q = G + kC * PD, K = Q + kC * PD, Bk = K + kC * PD, Z = Bk + kC * PD,
                       T = Z + kC * PD, Aqk = T + kC * kPC, A = Aqk + kC * kPC, floats = A + kC * kPC;
};

template <int D, int MATH>
GDR2_HD void prep_body(const Blk& bk, const P& p, long long cg, int hv, float* sm) {
  using L = PrepLayout<D>;
  constexpr int PD = L::PD;
  const ChunkLoc cl = chunk_loc(p, cg);
  const int last = cl.len - 1;
  float* rec = p.rec + (cg * p.Hv + hv) * Rec<D>::floats;
  float *sG = sm + L::G, *sQ = sm + L::Q, *sK = sm + L::K, *sBk = sm + L::Bk, *sZ = sm + L::Z;
  float *sT = sm + L::T, *sAqk = sm + L::Aqk, *sA = sm + L::A;

  struct Quad4 {
    F4 q, k, b, g, z;
  };
  constexpr int D4 = D / 4;
  const InRows iq = rows_q(p, cl, hv), ik = rows_k(p, cl, hv), ib = rows_b(p, cl, hv), ig = rows_g(p, cl, hv),
               iw = rows_w(p, cl, hv), iv = rows_v(p, cl, hv);
  bk.par_ld<4>(
      cl.len * D4,
      [&](int i) {
        const int r = i / D4, d = (i % D4) * 4;
        // every input of the chunk in one round trip (Z = w ⊙ v too)
        return Quad4{iq.at(r, d), ik.at(r, d), ib.at(r, d), ig.at(r, d), mul4(iw.at(r, d), iv.at(r, d))};
      },
      [&](int i, const Quad4& x) {
        const int o = (i / D4) * PD + (i % D4) * 4;
        st4(sQ + o, x.q);
        st4(sK + o, x.k);
        st4(sBk + o, mul4(x.b, x.k));
        st4(sG + o, x.g);
        st4(sZ + o, x.z);
      });
  bk.par((kC - cl.len) * D, [&](int i) {  // padding rows
    const int r = cl.len + i / D, d = i % D;
    sQ[r * PD + d] = sK[r * PD + d] = sBk[r * PD + d] = sG[r * PD + d] = sZ[r * PD + d] = 0.f;
  });
  bk.par(D + kC * kPC, [&](int i) {
    if (i < D) {
      float s = 0.f;
      for (int r = 0; r < kC; ++r) {
        s += sG[r * PD + i];
        sG[r * PD + i] = s;
      }
    } else {
      sT[i - D] = 0.f;
      sAqk[i - D] = 0.f;
    }
  });
  // Qγ, Ktail, γ_C (four channels per item)
  bk.par(kC * D4 + D, [&](int i) {
    if (i < kC * D4) {
      const int r = i / D4, d = (i % D4) * 4, o = r * PD + d;
      const F4 G = ld4(sG + o), Gl = ld4(sG + last * PD + d), q = ld4(sQ + o), k = ld4(sK + o);
      // (Qγ, Ktail, Aqk, A, Y are read only as product operands: op_round)
      st4(rec + Rec<D>::Qg + r * D + d,
          op_round4<MATH>({q.x * ex2n(G.x), q.y * ex2n(G.y), q.z * ex2n(G.z), q.w * ex2n(G.w)}));
      st4(rec + Rec<D>::Kt + r * D + d,
          r <= last ? op_round4<MATH>({k.x * ex2n(Gl.x - G.x), k.y * ex2n(Gl.y - G.y), k.z * ex2n(Gl.z - G.z),
                                       k.w * ex2n(Gl.w - G.w)})
                    : splat(0.f));
    } else {
      rec[Rec<D>::gC + (i - kC * D4)] = ex2n(sG[last * PD + (i - kC * D4)]);
    }
  });
  // Grams: off-diagonal sub-blocks, T (rows m < 16) and Aqk (rows m ≥ 16) stacked
  for (int ib = 1; ib < kC / kSub; ++ib) {
    const int a = kSub * ib - 1;
    mm<1, MATH>(  // 16×8 tiles: 4·ib of them (16×16 would leave 10 to 14 of 16 warps idle)
        bk, 32, kSub * ib, D,
        [&](int m, int d) {
          const int r = kSub * ib + (m & 15);
          const float x = m < 16 ? sBk[r * PD + d] : sQ[r * PD + d];
          return x * ex2n(sG[r * PD + d] - sG[a * PD + d]);
        },
        [&](int d, int s) { return sK[s * PD + d] * ex2n(sG[a * PD + d] - sG[s * PD + d]); },
        [&](int m, int s, float v) {
          const int r = kSub * ib + (m & 15);
          (m < 16 ? sT : sAqk)[r * kPC + s] = v;
        });
  }
  // Grams: diagonal sub-blocks, exact: 4 × 120 strict pairs s < r inside one block (one
  // per thread), then the 64 diagonal entries of Aqk (plain q·k, two per thread): one round
  bk.par(4 * 120 + 32, [&](int item) {
    if (item < 4 * 120) {
      const int blk = item / 120, pr = item % 120;
      int rl = 1;
      while ((rl + 1) * rl / 2 <= pr) ++rl;
      const int sl = pr - rl * (rl - 1) / 2;
      const int r = kSub * blk + rl, s = kSub * blk + sl;
      float tacc = 0.f, aacc = 0.f;
      GDR2_UNROLL4
      for (int d = 0; d < D; d += 4) {
        const F4 k = ld4(sK + s * PD + d), Gr = ld4(sG + r * PD + d), Gs = ld4(sG + s * PD + d);
        const F4 b = ld4(sBk + r * PD + d), q = ld4(sQ + r * PD + d);
        const F4 e = {k.x * ex2n(Gr.x - Gs.x), k.y * ex2n(Gr.y - Gs.y), k.z * ex2n(Gr.z - Gs.z), k.w * ex2n(Gr.w - Gs.w)};
        tacc += b.x * e.x + b.y * e.y + b.z * e.z + b.w * e.w;
        aacc += q.x * e.x + q.y * e.y + q.z * e.z + q.w * e.w;
      }
      sT[r * kPC + s] = tacc;
      sAqk[r * kPC + s] = aacc;
    } else {
      for (int u = 0; u < 2; ++u) {
        const int r = (item - 4 * 120) * 2 + u;
        float aacc = 0.f;
        GDR2_UNROLL4
        for (int d = 0; d < D; d += 4) {
          const F4 k = ld4(sK + r * PD + d), q = ld4(sQ + r * PD + d);
          aacc += q.x * k.x + q.y * k.y + q.z * k.z + q.w * k.w;
        }
        sAqk[r * kPC + r] = aacc;
      }
    }
  });
  // Aqk → record; A ← 0; Bk ← γ ⊙ Bk (its last use, the operand of Y below)
  bk.par(kC * D4, [&](int i) {
    const int r = i / D4, d = (i % D4) * 4, o = r * PD + d;
    if (d < kC) {
      st4(rec + Rec<D>::Aqk + r * kC + d, op_round4<MATH>(ld4(sAqk + r * kPC + d)));
      st4(sA + r * kPC + d, splat(0.f));
    }
    const F4 G = ld4(sG + o), b = ld4(sBk + o);
    st4(sBk + o, {b.x * ex2n(G.x), b.y * ex2n(G.y), b.z * ex2n(G.z), b.w * ex2n(G.w)});
  });
  // A = (I+T)⁻¹ in fp32: 16×16 diagonal inverses by substitution ...
  bk.par(4 * kSub, [&](int item) {
    const int o = kSub * (item / kSub), j = item % kSub;
    sA[(o + j) * kPC + o + j] = 1.f;
    for (int i = j + 1; i < kSub; ++i) {
      float acc = 0.f;
      for (int s = j; s < i; ++s) acc += sT[(o + i) * kPC + o + s] * sA[(o + s) * kPC + o + j];
      sA[(o + i) * kPC + o + j] = -acc;
    }
  });
  // ... then block substitution: A_ij = −A_ii Σ_{j≤k<i} T_ik A_kj, by distance i − j
  float* tmp = sAqk;  // scratch (Aqk is in the record)
  for (int dist = 1; dist < kC / kSub; ++dist) {
    const int np = kC / kSub - dist;
    bk.par(np * 256, [&](int item) {
      const int pi = item / 256, m = (item / 16) % 16, n = item % 16;
      const int bi = kSub * (pi + dist), bj = kSub * pi;
      float acc = 0.f;
      for (int k = 0; k < kSub * dist; ++k) acc += sT[(bi + m) * kPC + bj + k] * sA[(bj + k) * kPC + bj + n];
      tmp[pi * 256 + m * 16 + n] = acc;
    });
    bk.par(np * 256, [&](int item) {
      const int pi = item / 256, m = (item / 16) % 16, n = item % 16;
      const int bi = kSub * (pi + dist), bj = kSub * pi;
      float acc = 0.f;
      for (int k = 0; k < kSub; ++k) acc += sA[(bi + m) * kPC + bi + k] * tmp[pi * 256 + k * 16 + n];
      sA[(bi + m) * kPC + bj + n] = -acc;
    });
  }
  // A → record
  bk.par(kC * kC / 4, [&](int i) {
    const int r = i / (kC / 4), s = (i % (kC / 4)) * 4;
    st4(rec + Rec<D>::A + r * kC + s, op_round4<MATH>(ld4(sA + r * kPC + s)));
  });
  // [Y U] = A [γ⊙Bk, Z]
  mm<4, MATH>(
      bk, kC, 2 * D, kC, [&](int r, int s) { return sA[r * kPC + s]; },
      [&](int s, int n) { return n < D ? sBk[s * PD + n] : sZ[s * PD + n - D]; },
      [&](int r, int n, float v) {  // staged in the dead q, k tiles (fragment stores)
        if (n < D)
          sQ[r * PD + n] = v;
        else
          sK[r * PD + n - D] = v;
      });
  // → record with coalesced 16-byte stores (scattered fragment stores to global memory
  //   cost ≈ 4× the product itself: phase clocks, cuda/NOTES.md)
  bk.par(2 * kC * D4, [&](int i) {
    const int h = i / (kC * D4), j = i % (kC * D4), r = j / D4, d = (j % D4) * 4;
    const F4 x = ld4((h ? sK : sQ) + r * PD + d);  // U exact (it is also read elementwise)
    st4(rec + (h ? Rec<D>::U : Rec<D>::Y) + r * D + d, h ? x : op_round4<MATH>(x));
  });
}

// =============================================================================================
// 2. state passes: block (sequence·Hv + head, value slice, role); role 0 forward S, 1 reverse dS
// =============================================================================================
/// Pitches: every tile ≡ 4 (mod 16) floats — conflict-free for ldmatrix (Y, Ktail as KMinor
/// A operands) and for KMajor reads of paired k (mmt) — except S / dS (PS ≡ 8 mod 32): it is
/// also read as a KMajor B operand after a KMinor A (k = t, t + 4).
template <int D>
struct StateLayout {
  static constexpr int PD = D + 4;
  static constexpr int kMaxFloats = kSmemOptIn / 4;  // the opt-in shared memory of a block
  int PV, PS, S, A1, A2, Aqk, dO, dR, g, Qg, floats;  // the forward role keeps U's slice in dO
  /// The reverse role's off-chain form (value slices ≤ 32, state_reverse_offchain): dS also
  /// as stored for the products (Sr), P = Aqkᵀ dO, Q = Qγᵀ dO, a second dO tile and dO's
  /// rows as loaded (raw).
  bool offchain;
  int Sr, P, Q, dO2, raw;  // raw: dO rows as loaded (Raw4 per four columns)
  GDR2_HD explicit StateLayout(int vs) {
    PV = vs + 4;
    PS = vs + 8;
    S = 0;
    A1 = S + D * PS;
    A2 = A1 + kC * PD;
    Aqk = A2 + kC * PD;
    dO = Aqk + kC * kPC;
    dR = dO + kC * PV;
    g = dR + kC * PV;
    floats = g + D;
    // Qγ in its own tile when it fits (copied with the others, one round trip per chunk),
    // else over Ktail once dR is formed (value slices of 128 at D = 128)
    Qg = floats + kC * PD <= kMaxFloats ? floats : A1;
    if (Qg == floats) floats += kC * PD;
    Sr = floats;
    P = Sr + D * PS;
    Q = P + kC * PV;
    dO2 = Q + D * PV;
    raw = dO2 + kC * PV;
    offchain = vs <= 32 && Qg != A1 && raw + kC * vs <= kMaxFloats;
    if (offchain) floats = raw + kC * vs;
  }
};

/// The record of chunk c of a sequence (sq), value head hv: what the state passes read.
template <int D>
GDR2_HD const float* seq_rec(const P& p, const SeqLoc& sq, int hv, int c) {
  return p.rec + ((sq.cg0 + c) * p.Hv + hv) * Rec<D>::floats;
}

/// The reverse role at value slices ≤ 32 (StateLayout::offchain), entered with dS_T in sS:
/// of the step's products only Ktail·dS (in dR = Aqkᵀ dO + Ktail dS) and Yᵀ dR (in the
/// update dS ← γ_C ⊙ dS + Qγᵀ dO − Yᵀ dR) wait for dS; P = Aqkᵀ dO and Q = Qγᵀ dO are
/// formed beside them by warps the chain leaves idle (its products have 4 and 8 tiles of
/// 16 warps), and dS is kept once more as the products read it (Sr: tf32-rounded), so the
/// chain runs 16 + 8 k-steps without a cvt instead of 24 + 16 with one.
/// Per step c, warps 0–3 / 4–7 / 8–15:
///   X: dR = Ktail_c·Sr + P_c  |  dO_{c−1} converted into its tile  |  Q = Qγ_cᵀ dO_c
///   (barrier; tiles Ktail, Qγ of c−1 copied during Y)
///   Y: dS ← γ_C ⊙ dS + Q − Y_cᵀ dR (warps 0–7)  |  P = Aqk_{c−1}ᵀ dO_{c−1} (warps 8–11)
///      |  dO_{c−2} copied as loaded (warps 12–15)
///   (barrier; tiles Y, γ_C of c−1 and Aqk of c−2 copied during the next X)
template <int D, int MATH>
GDR2_HD void state_reverse_offchain(const Blk& bk, const P& p, const SeqLoc& sq, int hv, int j0, float* sm) {
  static_assert(kThreads == 512, "the warp roles below assume 16 warps");
  const StateLayout<D> L(p.vs);
  constexpr int PD = StateLayout<D>::PD;
  const int VS = p.vs, PV = L.PV, PS = L.PS, V4 = VS / 4;
  float *sS = sm + L.S, *sSr = sm + L.Sr, *sKt = sm + L.A1, *sY = sm + L.A2, *sAqk = sm + L.Aqk, *sQg = sm + L.Qg,
        *sdR = sm + L.dR, *sg = sm + L.g, *sP = sm + L.P, *sQ = sm + L.Q;
  float* const sdO0 = sm + L.dO;  // dO of chunk c in sdO(c)
  float* const sdO1 = sm + L.dO2;
  auto sdO = [&](int c) { return c & 1 ? sdO1 : sdO0; };
  Raw4* const sRaw = reinterpret_cast<Raw4*>(sm + L.raw);
  const long long DD = (long long)D * D;
  auto recp = [&](int c) { return seq_rec<D>(p, sq, hv, c); };
  auto tilesX = [&](int c) {  // read in phase X of step c
    copy_tile(bk, sKt, PD, recp(c) + Rec<D>::Kt, D, kC, D);
    copy_tile(bk, sQg, PD, recp(c) + Rec<D>::Qg, D, kC, D);
  };
  auto tilesY = [&](int c) {  // read in phase Y of step c (Aqk: of chunk c − 1)
    copy_tile(bk, sY, PD, recp(c) + Rec<D>::Y, D, kC, D);
    copy_tile(bk, sg, D, recp(c) + Rec<D>::gC, D, 1, D);
    if (c > 0) copy_tile(bk, sAqk, kPC, recp(c - 1) + Rec<D>::Aqk, kC, kC, kC);
  };
  // dO of chunk c (this slice): its rows as loaded, by asynchronous copies into sRaw
  // (dO_fetch, complete at the next barrier), then converted into sdO(c) (dO_put). Loads
  // into registers, kept from one step to the next, were measured not to stay in flight
  // across the barriers (cuda/NOTES.md backward v27). Unaligned rows (p.vec = 0) are loaded
  // at the put instead.
  auto dO_row = [&](int c, int r) { return sq.bos + kC * c + r < sq.eos; };
  auto dO_fetch = [&](const Blk& g, int c) {
    if (!p.vec) return;
    for (int i = g.tid; i < kC * V4; i += g.nthr)
      if (dO_row(c, i / V4))
        copy_raw4(sRaw + i, p.d_o, do_off(p, sq.bb, sq.bos + kC * c + i / V4, hv, j0 + (i % V4) * 4), p.dtype);
  };
  auto dO_put = [&](const Blk& g, int c) {
    for (int i = g.tid; i < kC * V4; i += g.nthr) {
      const int r = i / V4, d = (i % V4) * 4;
      F4 v = splat(0.f);
      if (dO_row(c, r)) v = p.vec ? cvt_in4(sRaw[i], p.dtype) : in_do4(p, sq.bb, sq.bos + kC * c + r, hv, j0 + d);
      st4(sdO(c) + r * PV + d, op_round4<MATH>(v));
    }
  };
  auto form_P = [&](const Blk& g, int c) {  // P = Aqk_cᵀ dO_c (Aqk_c in sAqk)
    mmt_auto<MATH, false>(
        g, kC, VS, [&](int r, int j, float v) { sP[r * PV + j] = v; },
        term(KMajorR{sAqk, kPC}, KMajorR{sdO(c), PV}, kC));
  };

  Blk g;
  const int last = sq.nc - 1;
  bk.par(D * V4, [&](int i) {
    const int kk = i / V4, j = (i % V4) * 4;
    st4(sSr + kk * PS + j, op_round4<MATH>(ld4(sS + kk * PS + j)));
  });
  if (last >= 0) {
    // prologue: dO and P of the last chunk; the tiles of its step and dO of the one
    // before in flight
    tilesX(last);
    copy_tile(bk, sAqk, kPC, recp(last) + Rec<D>::Aqk, kC, kC, kC);
    dO_fetch(bk, last);
    bk.sync();
    dO_put(bk, last);
    bk.sync();
    if (last > 0) dO_fetch(bk, last - 1);
    form_P(bk, last);
    bk.sync();
    tilesY(last);
  }
  for (int c = last; c >= 0; --c) {
    const long long base = (sq.cg0 + c) * p.Hv + hv;
    for (int i = bk.tid; i < D * V4; i += bk.nthr) {
      const int kk = i / V4, j = (i % V4) * 4;
      st4(p.dstates + base * DD + kk * D + j0 + j, ld4(sSr + kk * PS + j));
    }
    // X
    if (warp_group(bk, 0, 4, g))
      mmt_auto<MATH, false>(
          g, kC, VS, [&](int r, int j, float v) { sdR[r * PV + j] = op_round<MATH>(sP[r * PV + j] + v); },
          term(KMinorR{sKt, PD}, KMajorR{sSr, PS}, D));
    if (c > 0 && warp_group(bk, 4, 8, g)) dO_put(g, c - 1);  // (its tile held dO of c + 1, read in the last X)
    if (warp_group(bk, 8, 16, g))
      mmt_auto<MATH, false>(
          g, D, VS, [&](int m, int j, float v) { sQ[m * PV + j] = v; },
          term(KMajorR{sQg, PD}, KMajorR{sdO(c), PV}, kC));
    bk.sync();  // dR, Q, dO of c − 1 in place; Y, γ_C of c and Aqk of c − 1 copied
    if (c > 0) tilesX(c - 1);  // Ktail, Qγ of c are dead
    // Y
    if (warp_group(bk, 0, 8, g))
      mmt_auto<MATH, false>(
          g, D, VS,
          [&](int m, int j, float v) {
            const float x = sg[m] * sS[m * PS + j] + sQ[m * PV + j] + v;
            sS[m * PS + j] = x;
            sSr[m * PS + j] = op_round<MATH>(x);
          },
          term(KMajorR{sY, PD}, KMajorR{sdR, PV}, kC, true));
    if (c > 0 && warp_group(bk, 8, 12, g)) form_P(g, c - 1);  // (P of c was read in X)
    if (c > 1 && warp_group(bk, 12, 16, g)) dO_fetch(g, c - 2);  // (sRaw was put in X)
    bk.sync();                 // dS, P in place; Ktail, Qγ of c − 1 and dO of c − 2 copied
    if (c > 0) tilesY(c - 1);  // Y, γ_C of c and Aqk of c − 1 are dead
  }
}

/// The reverse role at wider value slices (or without the off-chain layout's room), entered
/// with dS_T in sS: each step's products as two dependent phases, dR = Aqkᵀ dO + Ktail dS
/// then dS ← γ_C ⊙ dS + Qγᵀ dO − Yᵀ dR.
template <int D, int MATH>
GDR2_HD void state_reverse_inline(const Blk& bk, const P& p, const SeqLoc& sq, int hv, int j0, float* sm) {
  const StateLayout<D> L(p.vs);
  constexpr int PD = StateLayout<D>::PD;
  const int VS = p.vs, PV = L.PV, PS = L.PS;
  float *sS = sm + L.S, *sA1 = sm + L.A1, *sA2 = sm + L.A2, *sAqk = sm + L.Aqk, *sdO = sm + L.dO, *sdR = sm + L.dR,
        *sg = sm + L.g, *sQg = sm + L.Qg;
  const long long DD = (long long)D * D;
  // Software pipeline when Qγ has its own tile (value slices ≤ 64 at D = 128): the tiles
  // of chunk c−1 are copied while chunk c is computed — Ktail, Aqk (group A) during the
  // dS update, Y, Qγ, γ_C (group B) during the next dR — and dO one chunk ahead in
  // registers; barriers inside leave the newest group in flight (Blk::keep). Otherwise
  // every tile of a chunk is copied at its start (one round trip per chunk).
  const bool pipe = sQg != sA1;
  const Blk bq{bk.tid, bk.nthr, pipe ? 1 : 0};
  const int V4 = VS / 4;
  auto recp = [&](int c) { return seq_rec<D>(p, sq, hv, c); };
  auto tilesA = [&](int c) {
    copy_tile(bk, sA1, PD, recp(c) + Rec<D>::Kt, D, kC, D);
    copy_tile(bk, sAqk, kPC, recp(c) + Rec<D>::Aqk, kC, kC, kC);
  };
  auto tilesB = [&](int c) {
    copy_tile(bk, sA2, PD, recp(c) + Rec<D>::Y, D, kC, D);
    copy_tile(bk, sg, D, recp(c) + Rec<D>::gC, D, 1, D);
    if (pipe) copy_tile(bk, sQg, PD, recp(c) + Rec<D>::Qg, D, kC, D);
  };
  // dO of chunk c (this slice): on the device into registers (≤ 4 float4 per thread),
  // stored to shared memory later; on the host read at the store
  F4 ahead[4] = {};
  int ahead_c = 0;
  auto dO_item = [&](int c, int i) {
    const int t0 = sq.bos + kC * c, len = sq.eos - t0 < kC ? sq.eos - t0 : kC, r = i / V4;
    return r < len ? in_do4(p, sq.bb, t0 + r, hv, j0 + (i % V4) * 4) : splat(0.f);
  };
  auto dO_load = [&](int c) {
    ahead_c = c;
#if defined(__CUDA_ARCH__)
    GDR2_UNROLL
    for (int u = 0; u < 4; ++u) {
      const int i = bk.tid + u * bk.nthr;
      if (i < kC * V4) ahead[u] = dO_item(c, i);
    }
#endif
  };
  auto dO_store = [&] {
#if defined(__CUDA_ARCH__)
    GDR2_UNROLL
    for (int u = 0; u < 4; ++u) {
      const int i = bk.tid + u * bk.nthr;
      if (i < kC * V4) st4(sdO + (i / V4) * PV + (i % V4) * 4, op_round4<MATH>(ahead[u]));
    }
#else
    for (int i = bk.tid; i < kC * V4; i += bk.nthr)
      st4(sdO + (i / V4) * PV + (i % V4) * 4, op_round4<MATH>(dO_item(ahead_c, i)));
#endif
  };
  if (pipe && sq.nc > 0) {
    tilesA(sq.nc - 1);
    bk.commit();
    tilesB(sq.nc - 1);
    bk.commit();
    dO_load(sq.nc - 1);
  }
  for (int c = sq.nc - 1; c >= 0; --c) {
    const long long base = (sq.cg0 + c) * p.Hv + hv;
    if (!pipe) {  // every tile of the chunk in flight at once (asynchronous)
      tilesA(c);
      tilesB(c);
      dO_load(c);
    }
    for (int i = bk.tid; i < D * VS / 4; i += bk.nthr) {
      const int kk = i / (VS / 4), j = (i % (VS / 4)) * 4;
      st4(p.dstates + base * DD + kk * D + j0 + j, op_round4<MATH>(ld4(sS + kk * PS + j)));
    }
    dO_store();
    if (pipe && c > 0) dO_load(c - 1);
    bq.sync();  // group A of chunk c (and dO) in place
    // dR = Aqkᵀ dO + Ktail dS
    mmt_auto<MATH>(
        bq, kC, VS, [&](int r, int j, float v) { sdR[r * PV + j] = op_round<MATH>(v); },
        term(KMajorR{sAqk, kPC}, KMajorR{sdO, PV}, kC), term(KMinorR{sA1, PD}, KMajor{sS, PS}, D));
    if (pipe) {
      if (c > 0) {
        tilesA(c - 1);  // Ktail, Aqk are dead
        bk.commit();
        bq.sync();  // group B of chunk c in place, group A of chunk c−1 in flight
      } else {
        bk.sync();
      }
      // dS ← γ_C ⊙ dS + Qγᵀ dO − Yᵀ dR
      mmt_auto<MATH>(
          bq, D, VS, [&](int m, int j, float v) { sS[m * PS + j] = sg[m] * sS[m * PS + j] + v; },
          term(KMajorR{sQg, PD}, KMajorR{sdO, PV}, kC), term(KMajorR{sA2, PD}, KMajorR{sdR, PV}, kC, true));
    } else {
      // Qγ over Ktail, in flight during the first half of the update (dS ← γ_C ⊙ dS − Yᵀ
      // dR), whose closing barrier waits for it; then dS += Qγᵀ dO
      copy_tile(bk, sQg, PD, recp(c) + Rec<D>::Qg, D, kC, D);
      mmt_auto<MATH>(
          bk, D, VS, [&](int m, int j, float v) { sS[m * PS + j] = sg[m] * sS[m * PS + j] + v; },
          term(KMajorR{sA2, PD}, KMajorR{sdR, PV}, kC, true));
      mmt_auto<MATH>(
          bk, D, VS, [&](int m, int j, float v) { sS[m * PS + j] += v; }, term(KMajorR{sQg, PD}, KMajorR{sdO, PV}, kC));
    }
    if (pipe && c > 0) {
      tilesB(c - 1);  // Y, Qγ, γ_C are dead
      bk.commit();
    }
  }
}

/// Explicit mantissa bits a chunk state keeps where the state kernel's forward role stores it
/// for grad-1, which rounds it to tf32 (10 bits) for its products and sums Σ dS ⊙ S over it as
/// stored (more than tf32 needed there: cuda/NOTES.md backward item 23). Fewer than fp32's 23
/// make stages 1–2 ≈ 0.07 ms faster at B=8 T=4096 H=16 (H100; 13 bits as fast as 16; why is
/// not known: items 25, 27). The forward's chunk states (ChunkOptions::chunk_states) stay
/// plain fp32: rounding them cost its B=1 state step ≈ 0.09 ms and bought nothing (item 28).
constexpr int kStateBits = 16;

template <int D, int MATH>
GDR2_HD void state_body(const Blk& bk, const P& p, int pair, int slice, int role, float* sm) {
  // (slices of one sequence-head are neighbours in the grid: they read the same records)
  const StateLayout<D> L(p.vs);
  constexpr int PD = StateLayout<D>::PD;
  const int VS = p.vs, PV = L.PV, PS = L.PS, j0 = slice * VS;
  const int n = pair / p.Hv, hv = pair % p.Hv;
  const SeqLoc sq = seq_loc(p, n);
  float *sS = sm + L.S, *sA1 = sm + L.A1, *sA2 = sm + L.A2, *sdO = sm + L.dO, *sdR = sm + L.dR, *sg = sm + L.g;
  const long long DD = (long long)D * D;
  // this slice of a [N, Hv, K, V] state (S_0 for the forward role, dS_T for the reverse)
  // into sS; zeros when not given
  auto load_state = [&](const float* x, const long long* st) {
    bk.par_ld<8>(
        D * VS,
        [&](int i) {
          const int kk = i / VS, j = i % VS;
          return x ? x[n * st[0] + hv * st[1] + kk * st[2] + (j0 + j) * st[3]] : 0.f;
        },
        [&](int i, float v) { sS[(i / VS) * PS + i % VS] = v; });
    bk.sync();
  };

  if (role == 0) {
    load_state(p.s0, p.s0s);
    // software pipeline: chunk c+1's Y and U slice (group A) are copied during chunk c's
    // S update, its Ktail and γ_C (group B) during the next R; barriers leave the newest
    // cp.async group in flight (Blk::keep)
    const Blk bq{bk.tid, bk.nthr, 1};
    auto recp = [&](int c) { return seq_rec<D>(p, sq, hv, c); };
    auto tilesA = [&](int c) {
      copy_tile(bk, sA1, PD, recp(c) + Rec<D>::Y, D, kC, D);
      copy_tile(bk, sdO, PV, recp(c) + Rec<D>::U + j0, D, kC, VS);
    };
    auto tilesB = [&](int c) {
      copy_tile(bk, sA2, PD, recp(c) + Rec<D>::Kt, D, kC, D);
      copy_tile(bk, sg, D, recp(c) + Rec<D>::gC, D, 1, D);
    };
    if (sq.nc > 1) {
      tilesA(0);
      bk.commit();
      tilesB(0);
      bk.commit();
    }
    for (int c = 0; c < sq.nc; ++c) {
      const long long base = (sq.cg0 + c) * p.Hv + hv;
      bq.par(D * VS / 4, [&](int i) {  // ends waiting for group A of chunk c
        const int kk = i / (VS / 4), j = (i % (VS / 4)) * 4;
        // with kStateBits mantissa bits (grad-1 rounds them to tf32 for its products)
        const F4 x = ld4(sS + kk * PS + j);
        st4(p.states + base * DD + kk * D + j0 + j,
            {round_mantissa<kStateBits>(x.x), round_mantissa<kStateBits>(x.y), round_mantissa<kStateBits>(x.z),
             round_mantissa<kStateBits>(x.w)});
      });
      if (c == sq.nc - 1) break;
      const bool next = c + 1 < sq.nc - 1;  // chunk c+1 has a step (tiles) too
      // R = U − Y S (slice), then S ← γ_C ⊙ S + Ktailᵀ R
      mmt_auto<MATH>(
          bq, kC, VS, [&](int r, int j, float v) { sdR[r * PV + j] = op_round<MATH>(sdO[r * PV + j] - v); },
          term(KMinorR{sA1, PD}, KMajor{sS, PS}, D));
      if (next) {
        tilesA(c + 1);  // Y, U are dead
        bk.commit();
        bq.sync();  // group B of chunk c in place
      } else {
        bk.sync();
      }
      mmt_auto<MATH>(
          bq, D, VS, [&](int m, int j, float v) { sS[m * PS + j] = sg[m] * sS[m * PS + j] + v; },
          term(KMajorR{sA2, PD}, KMajorR{sdR, PV}, kC));
      if (next) {
        tilesB(c + 1);  // Ktail, γ_C are dead
        bk.commit();
      }
    }
    return;
  }

  load_state(p.dsT, p.dsTs);
  if (L.offchain) {
    state_reverse_offchain<D, MATH>(bk, p, sq, hv, j0, sm);
  } else {
    state_reverse_inline<D, MATH>(bk, p, sq, hv, j0, sm);
  }
  if (p.ds0) {
    bk.par(D * VS, [&](int i) {
      const int kk = i / VS, j = i % VS;
      p.ds0[n * p.ds0s[0] + hv * p.ds0s[1] + kk * p.ds0s[2] + (j0 + j) * p.ds0s[3]] = sS[kk * PS + j];
    });
  }
}

// =============================================================================================
// 3. grad-1: block (chunk, value head); everything that touches S or dS, and the WY part,
//    value halves of 64. With Z = w⊙v, Y = A Ē, U = A Z and R = U − Y S, the WY gradients
//    come from dR (= dU) alone: dZ = Aᵀ dR, dĒ = Aᵀ dY = −Aᵀ dR Sᵀ = −dZ Sᵀ, and
//    dT = −strict_lower(dĒ Yᵀ + dZ Uᵀ) = −strict_lower(dZ (U − Y S)ᵀ) = −strict_lower(dZ Rᵀ):
//    every term is a sum over value columns, so each value half adds its part and neither
//    dY nor dU leaves the block.
// =============================================================================================
template <int D>
struct Grad1Layout {
  static constexpr int PD = D + 4, PH = 68, H = 64;
  static constexpr int S = 0, dS = S + D * PH, Y = dS + D * PH, Kt = Y + kC * PD, UR = Kt + kC * PD, dR = UR + kC * PH,
                       dO = dR + kC * PH, Aqk = dO + kC * PH, A = Aqk + kC * kPC,
                       dO16 = A + kC * kPC,  // a value half's dO rows as stored (16-bit: [kC][H])
      floats = dO16 + kC * H / 2;
  static_assert(floats * 4 <= kSmemOptIn, "grad-1 shared memory exceeds 227 KB");
};

/// Whether chunk cl is the last of its sequence and an upstream dS_T is given. grad-1 then
/// reads dS_T as given (fp32) instead of the reverse pass's rounded copy and, in the tf32 mode,
/// runs the three products that carry it split-tf32 on dS_T's side: dS_T enters this chunk's
/// tokens undecayed, and per-token sums of its terms can cancel far below their parts (dβ over
/// value heads sharing β), where tf32's 2^−11 would show (cuda/NOTES.md backward items 33, 34).
GDR2_HD bool exact_tail(const P& p, const ChunkLoc& cl) { return p.dsT && cl.c == cl.nc - 1; }

/// The chunk an exact tail block of grad-1 works on: sequence n's last, or −1 where there is
/// none (an empty sequence, or no dS_T). Those chunks run in their own launch after the main
/// one, which skips them, so that the main kernel's code has no tail in it (cuda/NOTES.md
/// backward item 35).
GDR2_HD long long tail_chunk(const P& p, int n) {
  const SeqLoc s = seq_loc(p, n);
  return p.dsT && s.nc > 0 ? s.cg0 + s.nc - 1 : -1;
}

/// grad-1 of chunk-head (cg, hv); TAIL: the chunk is an exact tail (exact_tail), a separate
/// instantiation so that the other chunks' code holds none of the tail's. FWD_REC: the records
/// may be the fused forward's (BackwardParams::rec_written given, tf32 mode), whose flag then
/// says whether R comes with them — an instantiation of its own too, so that the body without
/// records from a forward is the code it was before. (Both bodies in one kernel, as
/// grad1_kernel has them, measured 0.02–0.05 ms slower without such records than before:
/// cuda/NOTES.md backward item 59, and its patch v112b for two kernels.)
template <int D, int MATH, bool TAIL, bool FWD_REC = false>
GDR2_HD void grad1_body(const Blk& bk, const P& p, long long cg, int hv, float* sm) {
  static_assert(kThreads == 512, "the products below run in pairs on two halves of 16 warps");
  using L = Grad1Layout<D>;
  constexpr int PH = L::PH, H = L::H, H4 = H / 4;
  const ChunkLoc cl = chunk_loc(p, cg);
  constexpr bool tail = TAIL;
  // The tf32 mode's exact tail: the products with a dS_T term — dR's Ktail dS_T, dKtail =
  // R dS_Tᵀ, dZ = Aᵀ dR — run split-tf32 with dS_T and dR as they are; their other operands
  // (the record parts, which the tf32-mode preps store rounded, and R) are tf32 values, EXACT,
  // so each takes two products where a full split takes three. Every other product is as in
  // any other chunk: the host study of item 34 found the pinned dβ draw needs only dS_T and
  // dR unrounded (cuda/NOTES.md backward item 34). In the other modes `split` is false and
  // its products (whose EXACT views would not hold there) are dead code.
  constexpr bool split = MATH == kTf32 && tail;
  using ExMinor = View<false, true, true>;
  using ExMajor = View<true, true, true>;
  const long long base = cg * p.Hv + hv, DD = (long long)D * D;
  const float* rec = p.rec + base * Rec<D>::floats;
  float* out = p.g1 + base * G1<D>::floats;
  float *sS = sm + L::S, *sdS = sm + L::dS, *sY = sm + L::Y, *sKt = sm + L::Kt, *sUR = sm + L::UR, *sdR = sm + L::dR,
        *sdO = sm + L::dO, *sAqk = sm + L::Aqk, *sA = sm + L::A;
  const InRows iv = rows_v(p, cl, hv), iw = rows_w(p, cl, hv);
  const OutRows odv = out_rows(p, p.dv, cl, hv), odw = out_rows(p, p.tied ? BwdSink{} : p.dw, cl, hv);
  // 16-bit v and w with 16-byte aligned rows: each half's rows (w's with channel gates;
  // tied gates read β per row from A's padding, v54) are copied as stored into dR's tile
  // once dZ is formed (dR is dead then), in flight during the dKtail and dĒ products, instead
  // of being loaded by the threads after dT (their latency exposed; cuda/NOTES.md backward
  // v47): [2][kC][H] 16-bit elements, 16 KB of dR's 17 KB. With dO's rows 16-byte aligned
  // too, each half's dO rows come the same way into their own 8 KB and are converted from
  // there at the half's start: the second half's copied during the first (v48), the first
  // half's with the record's tiles, converted while the first half's S, dS, U tiles land (v51).
  const bool vw_tile = p.rows16, do_tile = p.do_rows16;
  static_assert(2 * kC * H * 2 <= kC * PH * 4, "v and w rows fit dR's tile");
  const char* vw16 = reinterpret_cast<const char*>(sdR);
  const char* do16 = reinterpret_cast<const char*>(sm + L::dO16);
  // H columns of the chunk's rows as stored (rows past the chunk are not copied: never read)
  auto copy_half = [&](float* dst, const void* base, long long off, long long st) {
    copy_rows16(bk, dst, base, off, st, cl.len, H);
  };

  // Ktail and Y: fp32 as stored, or (rec16_in_record) the fp16 record's Ktail and Y·2^{−f}
  // tiles as stored into dS's tile (free until the first half's dS is converted there),
  // converted beside the first half's dO rows (v58)
  const bool kty16 = rec16_in_record<D>(p);
  const char* r16 = kty16 ? rec16_at<D>(p, base) : nullptr;
  // Y's scale 2^f, loaded before the copies are issued: its latency overlaps theirs (a load
  // at the conversion held every block ≈ 1 µs per chunk-head: v58 → v58b)
  const int f16 = kty16 ? *reinterpret_cast<const int*>(r16 + Rec16<D>::f) : 0;
  // R = U − Y S_c as given: the fused forward wrote the records (their flag is 1) and stored
  // the R its state step formed in U's slot (BwdRecordOut::r), so this block neither copies Y
  // nor forms R (v111: cuda/NOTES.md backward item 59). The flag is read before the copies
  // are issued and first needed after those of the fp16 tiles: its latency overlaps theirs.
  const int rflag_v = FWD_REC && kty16 ? *p.rec_written : 0;
  char* kty_stage = reinterpret_cast<char*>(sdS);
  static_assert(Rec16<D>::y == Rec16<D>::kt + Rec16<D>::tile && 2 * Rec16<D>::tile <= D * PH * 4,
                "the fp16 Ktail and Y are adjacent and fit dS's tile");
  // A and Aqk: fp32 as stored, or (rec16_in_record) the fp32 record's fp16 A and the fp16
  // record's Aqk as stored into dO's tile (free until the first half's dO rows are converted
  // there), converted beside Ktail and Y (v110: cuda/NOTES.md backward item 58)
  char* a_stage = reinterpret_cast<char*>(sdO);
  static_assert(2 * kC * kC * 2 <= kC * PH * 4, "the fp16 A and Aqk fit dO's tile");
  bool r_given = false;
  if (kty16) {
    // Ktail (and Y with it where R is not given)
    copy_tile(bk, reinterpret_cast<float*>(kty_stage), D / 2, reinterpret_cast<const float*>(r16 + Rec16<D>::kt), D / 2,
              FWD_REC ? kC : 2 * kC, D / 2);
    copy_tile(bk, reinterpret_cast<float*>(a_stage), kC / 2, rec + Rec<D>::A16, kC / 2, kC, kC / 2);
    copy_tile(bk, reinterpret_cast<float*>(a_stage + kC * kC * 2), kC / 2,
              reinterpret_cast<const float*>(r16 + Rec16<D>::aqk), kC / 2, kC, kC / 2);
    r_given = FWD_REC && rflag_v == 1;
    if (r_given)  // R's fp16 image (both value halves) into Y's tile, unused then
      copy_tile(bk, sY, kC / 2, rec + Rec<D>::R16, kC / 2, D, kC / 2);
    else if (FWD_REC)
      copy_tile(bk, reinterpret_cast<float*>(kty_stage + Rec16<D>::tile), D / 2,
                reinterpret_cast<const float*>(r16 + Rec16<D>::y), D / 2, kC, D / 2);
  } else {
    copy_tile(bk, sY, L::PD, rec + Rec<D>::Y, D, kC, D);
    copy_tile(bk, sKt, L::PD, rec + Rec<D>::Kt, D, kC, D);
    copy_tile(bk, sAqk, kPC, rec + Rec<D>::Aqk, kC, kC, kC);
    copy_tile(bk, sA, kPC, rec + Rec<D>::A, kC, kC, kC);
  }
  if (do_tile) {
    copy_half(sm + L::dO16, p.d_o, act(p.sdo, cl.bb, cl.t0, hv), p.sdo.t);
    bk.commit();
  }
  for (int h = 0; h < D / H; ++h) {
    const int j0 = H * h;
    // the second value half adds to the first half's stored partial sums
    auto acc = [&](long long i, float v) {
      if (h)
        add_partial(out + i, v);
      else
        out[i] = v;
    };
    copy_tile(bk, sS, PH, p.states + base * DD + j0, D, D, H);
    // dS: fp32 as stored, or (p.rev16) this half's fp16 columns and their four exponents into
    // dR's tile (free until the dR product), converted into dS's tile once they land (v55)
    const char* ds16 = reinterpret_cast<const char*>(p.dstates + base * DD);
    const int* ds16e = reinterpret_cast<const int*>(sdR + D * H / 2);
    static_assert(D * H * 2 + 16 <= kC * PH * 4, "a half's fp16 dS and its exponents fit dR's tile");
    if constexpr (tail) {
      // (dS_T itself, loaded once dO's rows are in: see below)
    } else if (p.rev16) {
      copy_rows16(bk, sdR, ds16, DS16<D>::x / 2 + j0, D, D, H);
      copy_tile(bk, sdR + D * H / 2, 4, reinterpret_cast<const float*>(ds16 + DS16<D>::e) + j0 / 16, 4, 1, 4);
    } else {
      copy_tile(bk, sdS, PH, p.dstates + base * DD + j0, D, D, H);
    }
    if (!r_given) copy_tile(bk, sUR, PH, rec + Rec<D>::U + j0, D, kC, H);
    // tied gates with vw_tile: β per row into the padding columns of A's tile (column kC,
    // never read by the products), loaded once the first half's copies are issued, so that
    // its latency overlaps theirs; the vw phase reads it from there (v54)
    if (h == 0 && vw_tile && p.tied)
      for (int r = bk.tid; r < cl.len; r += bk.nthr) sA[r * kPC + kC] = iw.at(r, 0).x;
    // dO's rows: as copied (do_tile; the first half's once the copies committed before S,
    // dS, U have landed), else from global memory
    if (do_tile && h == 0) {
      bk.commit();
      Blk first = bk;
      first.keep = 1;
      first.sync();
    }
    // fp16 Ktail, Y·2^{−f}, A, Aqk → fp32 (exact: tf32 values). kty16 implies do_tile (rev16
    // needs dO's rows 16-byte aligned), so `first` above has waited for their copies. Its
    // barrier orders the reads of A and Aqk in dO's tile before the dO rows' conversion there
    // (until v110 the two shared a phase: cuda/NOTES.md backward item 44), and leaves S, dS, U
    // in flight as `first` did.
    if (kty16 && h == 0) {
      const float sy = pow2i(f16);
      for (int i = bk.tid; i < (r_given ? 1 : 2) * kC * (D / 4); i += bk.nthr) {
        const int m = i / (kC * (D / 4)), r = (i / (D / 4)) % kC, c = 4 * (i % (D / 4));
        const F4 x = ld_in4(kty_stage + m * Rec16<D>::tile, swz128(r, c), kF16, 1);
        const float f = m ? sy : 1.f;
        st4((m ? sY : sKt) + r * L::PD + c, {x.x * f, x.y * f, x.z * f, x.w * f});
      }
      for (int i = bk.tid; i < 2 * kC * (kC / 4); i += bk.nthr) {
        const int m = i / (kC * (kC / 4)), r = (i / (kC / 4)) % kC, c = 4 * (i % (kC / 4));
        st4((m ? sAqk : sA) + r * kPC + c, ld_in4(a_stage + m * kC * kC * 2, swz128(r, c), kF16, 1));
      }
      Blk converted = bk;
      converted.keep = 1;
      converted.sync();
    }
    bk.par_ld<8>(
        kC * H4,
        [&](int i) {
          const int r = i / H4, d = (i % H4) * 4;
          if (r >= cl.len) return splat(0.f);
          return do_tile ? ld_in4(do16, r * H + d, p.dtype, 1) : in_do4(p, cl.bb, cl.t0 + r, hv, j0 + d);
        },
        [&](int i, const F4& x) { st4(sdO + (i / H4) * PH + (i % H4) * 4, op_round4<MATH>(x)); });
    bk.sync();
    // R given: this half's columns from its fp16 image (value v's row of 64 tokens) into R's
    // tile, [token][column] (fp16: exact tf32 values); read after the next phase's barrier
    if (r_given)
      for (int i = bk.tid; i < H * (kC / 4); i += bk.nthr) {
        const int j = i % H, t = 4 * (i / H);
        const F4 x = ld_in4(sY, swz128(j0 + j, t), kF16, 1);
        sUR[t * PH + j] = x.x, sUR[(t + 1) * PH + j] = x.y, sUR[(t + 2) * PH + j] = x.z, sUR[(t + 3) * PH + j] = x.w;
      }
    if constexpr (tail) {  // this half's columns of dS_T as given (dS's tile is free: Ktail, Y converted),
      // every thread's loads in flight at once (one after another they cost ≈ 16 round trips)
      const float* ds = p.dsT + cl.n * p.dsTs[0] + hv * p.dsTs[1] + j0 * p.dsTs[3];
      const long long s2 = p.dsTs[2], s3 = p.dsTs[3];
      bk.par_ld<D * H4 / kThreads>(
          D * H4,
          [&](int i) {
            const float* x = ds + (i / H4) * s2 + (i % H4) * 4 * s3;
            return F4{x[0], x[s3], x[2 * s3], x[3 * s3]};
          },
          [&](int i, const F4& x) { st4(sdS + (i / H4) * PH + (i % H4) * 4, x); });
      bk.sync();
    } else if (p.rev16)  // fp16 dS times 2^E of its 16 columns (exact)
      bk.par(D * H4, [&](int i) {
        const int kk = i / H4, j = (i % H4) * 4;
        const float m = pow2i(ds16e[j / 16]);
        const F4 x = ld_in4(sdR, kk * H + j, kF16, 1);
        st4(sdS + kk * PH + j, {x.x * m, x.y * m, x.z * m, x.w * m});
      });
    // Σ_j dS ⊙ S per key channel (tf32 mode: of the fp32 states as stored and the tf32 dS the
    // reverse pass stored), then S rounded to tf32 in place for the products below: summed over
    // K × V entries that largely cancel, the states' own tf32 rounding was GDN dg's largest
    // error (cuda/NOTES.md backward item 23). row_sums ends with a barrier.
    static_assert(PH % 32 == 4 && 4 * D <= kThreads, "row_sums' conditions");
    row_sums<H, MATH == kTf32>(bk, sS, sdS, D, PH, [&](int d, float s) { acc(G1<D>::rs + d, s); });
    // side by side, 4 tiles of 32×32 each (2 operand loads per mma instead of 3 with 16×32
    // tiles, 4 with 16×16: cuda/NOTES.md backward v12, item 39; the phase is bound by what the
    // warps move, not by their chains: item 38): R = U − Y S on warps 0–7 | dR = Aqkᵀ dO +
    // Ktail dS (= dU) on warps 8–15
    // (R given: dR alone, its tiles and their bytes as beside R: the phase moves 60 % of them)
    constexpr int RMT = MATH == kFp32 ? 1 : 2;
    auto to_dR = [&](int r, int j, float v) { sdR[r * PH + j] = v; };
    Blk g;
    if (!split && r_given) {
      mmt_tiles<RMT, 4, MATH, false, false>(bk, kC, H, to_dR, term(KMajorR{sAqk, kPC}, KMajorR{sdO, PH}, kC),
                                            term(KMinorR{sKt, L::PD}, KMajorR{sdS, PH}, D));
    } else {
      if (!r_given && warp_group(bk, 0, 8, g))
        mmt_tiles<RMT, 4, MATH, false, false>(
            g, kC, H, [&](int r, int j, float v) { sUR[r * PH + j] = op_round<MATH>(sUR[r * PH + j] - v); },
            term(KMinorR{sY, L::PD}, KMajorR{sS, PH}, D));
      if (warp_group(bk, 8, 16, g)) {
        if constexpr (split)
          mmt<4, kTf32x3, false, false>(g, kC, H, to_dR, term(ExMajor{sAqk, kPC}, ExMajor{sdO, PH}, kC),
                                        term(ExMinor{sKt, L::PD}, KMajor{sdS, PH}, D));
        else
          mmt_tiles<RMT, 4, MATH, false, false>(g, kC, H, to_dR, term(KMajorR{sAqk, kPC}, KMajorR{sdO, PH}, kC),
                                                term(KMinorR{sKt, L::PD}, KMajorR{sdS, PH}, D));
      }
    }
    bk.sync();
    // side by side: dO Sᵀ on warps 0–7 | dAqk = dO Rᵀ on and below the diagonal on warps 8–15
    // (partial sums over the value halves; the strictly upper part of the diagonal tiles is
    // written too: the applies never read it). The full products on 32-row warp tiles as
    // R | dR (cuda/NOTES.md backward item 40); one phase for both (item 41). A group's warps
    // take the same tiles in both halves, so the second half's reductions add onto partial
    // sums their own threads stored.
    if (warp_group(bk, 0, 8, g))
      mmt_tiles<RMT, 4, MATH, false, false>(g, kC, D, GlobalOut{out + G1<D>::dQ, D, h, 1.f},
                                            term(KMinorR{sdO, PH}, KMinorR{sS, PH}, H));
    if (warp_group(bk, 8, 16, g))
      mmt<2, MATH, true, false>(g, kC, kC, GlobalOut{out + G1<D>::dAqk, kC, h, 1.f},
                                term(KMinorR{sdO, PH}, KMinorR{sUR, PH}, H));
    bk.sync();
    // dZ = Aᵀ dR over dO's tile (exact: also read elementwise for dv, dw)
    float* sdZ = sdO;
    auto to_dZ = [&](int r, int j, float v) { sdZ[r * PH + j] = v; };
    if constexpr (split)
      mmt<4, kTf32x3>(bk, kC, H, to_dZ, term(ExMajor{sA, kPC}, KMajor{sdR, PH}, kC));
    else
      mmt_tiles<RMT, 4, MATH>(bk, kC, H, to_dZ, term(KMajorR{sA, kPC}, KMajor{sdR, PH}, kC));
    // this half's v and w rows (vw_tile) and the next half's dO rows (do_tile) as stored, in
    // flight during the next phase's products
    const bool do_next = do_tile && h + 1 < D / H;
    if (vw_tile) {
      copy_half(sdR, iv.base, iv.off + j0, iv.st);
      if (!p.tied) copy_half(sdR + kC * H / 2, iw.base, iw.off + j0, iw.st);
    }
    if (do_next) copy_half(sm + L::dO16, p.d_o, act(p.sdo, cl.bb, cl.t0, hv) + j0 + H, p.sdo.t);
    if (vw_tile || do_next) bk.commit();
    // side by side in one phase (item 41): dKtail = R dSᵀ on warps 0–7 | dĒ = −dZ Sᵀ, then
    // dT = −dZ Rᵀ below the diagonal (as dAqk: the strictly upper part of the diagonal tiles is
    // written, never read) on warps 8–15. Its barrier waits for the copies above too: the vw
    // phase reads v and w.
    if (warp_group(bk, 0, 8, g)) {
      if constexpr (split)
        mmt<4, kTf32x3, false, false>(g, kC, D, GlobalOut{out + G1<D>::X, D, h, 1.f},
                                      term(ExMinor{sUR, PH}, KMinor{sdS, PH}, H));
      else
        mmt_tiles<RMT, 4, MATH, false, false>(g, kC, D, GlobalOut{out + G1<D>::X, D, h, 1.f},
                                              term(KMinorR{sUR, PH}, KMinorR{sdS, PH}, H));
    }
    if (warp_group(bk, 8, 16, g)) {
      mmt_tiles<RMT, 4, MATH, false, false>(g, kC, D, GlobalOut{out + G1<D>::dE, D, h, -1.f},
                                            term(KMinor{sdZ, PH}, KMinorR{sS, PH}, H));
      mmt<2, MATH, true, false>(g, kC, kC, GlobalOut{out + G1<D>::dT, kC, h, -1.f},
                                term(KMinor{sdZ, PH}, KMinorR{sUR, PH}, H));
    }
    bk.sync();
    // dv = dZ ⊙ w, dw = dZ ⊙ v (this half's columns; with tied gates dw over dZ's tile for
    // its row sums)
    struct VW {
      F4 v, w;
    };
    bk.par_ld<4>(
        kC * H4,
        [&](int i) {
          const int r = i / H4, d = (i % H4) * 4;
          if (r >= cl.len) return VW{splat(0.f), splat(0.f)};
          if (!vw_tile) return VW{iv.at(r, j0 + d), iw.at(r, j0 + d)};
          // (the rows past the chunk were not copied)
          return VW{ld_in4(vw16, r * H + d, p.dtype, 1),
                    p.tied ? splat(sA[r * kPC + kC]) : ld_in4(vw16 + kC * H * 2, r * H + d, p.dtype, 1)};
        },
        [&](int i, const VW& x) {
          const int r = i / H4, j = (i % H4) * 4;
          const F4 dz = ld4(sdZ + r * PH + j), dw = mul4(dz, x.v);
          if (r < cl.len) {
            odv.put4(r, j0 + j, mul4(dz, x.w));
            odw.put4(r, j0 + j, dw);
          }
          if (p.tied) st4(sdZ + r * PH + j, dw);  // over this thread's own dZ elements
        });
    // par_ld ends without a barrier: this one orders the vw phase's writes of dw over dZ's
    // tile (tied gates) before the row sums read them in other threads' rows, and its reads of
    // dZ's and dR's tiles before the next half's copies. (Until 42ff9e0 the Σ dS ⊙ S sums
    // between the two held that barrier; moving them left a race no host test can see.)
    bk.sync();
    if (p.tied) {
      static_assert(4 * kC <= kThreads, "row_sums' conditions");
      row_sums<H>(bk, sdZ, nullptr, kC, PH, [&](int r, float s) { acc(G1<D>::bw + r, s); });
    }
  }
}

// =============================================================================================
// 4. grad-2 (the WY part is in grad-1):
//    4a. applies, block (chunk, value head), its slices of kKS key channels one after another
//        (two blocks of ≤ 113 KB per SM): everything that is per key channel — decayed
//        applies, dq dk db, dG and its reverse cumulative sum;
//    4b. token sums (tied or scalar gates only): the 4a slices' per-row sums, in order.
// =============================================================================================
constexpr int kApplyThreads = 256;

/// Shared memory of an applies block: kKS key channels of one chunk-head. The C×C tiles dT
/// and dAqk are read as A operands (pitch ≡ 4 mod 16: conflict-free for ldmatrix and for
/// k-major reads of paired k); q k b G are only read row-wise (dense pitch). The anchored
/// products' operands (Kh, Bh, Qh: 16 channels at a time, `Half`) share their space with
/// dKtail, which is copied in only after the products.
struct ApplyLayout {
  static constexpr int KS = kKS, PS = KS + 4, PB = KS, NSEG = kC / 8;
  /// The anchored products' operands for 16 of the slice's channels (offsets in `ops`):
  /// Kh rows s = 0..55 (pitch ≡ 8 mod 16: read k-major after an ldmatrix A, k = t, t + 4),
  /// Bh, Qh rows r = 8..63 stored from row 0 (pitch ≡ 4 mod 16: read k-major with paired
  /// k), F the chain factors of the eight 8-row blocks.
  struct Half {
    static constexpr int W = 16, PK = 24, PQ = 20;
    static constexpr int Kh = 0, Bh = Kh + 56 * PK, Qh = Bh + 56 * PQ, F = Qh + 56 * PQ, floats = F + 8 * W;
  };
  static constexpr int T = 0;                // dT                                         [C][PC]
  static constexpr int Aqk = T + kC * kPC;   // dAqk (its diagonal also in `diag`)         [C][PC]
  static constexpr int G = Aqk + kC * kPC;   // cumulative log2-decays                     [C][PB]
  static constexpr int q = G + kC * PB;      // scale·q                                    [C][PB]
  static constexpr int k = q + kC * PB;      //                                            [C][PB]
  static constexpr int b = k + kC * PB;      // (β for tied gates)                         [C][PB]
  static constexpr int Bk = b + kC * PB;     // dĒ → dBk → dG → dg                         [C][PS]
  static constexpr int Qs = Bk + kC * PS;    // dO Sᵀ → dQs → db ⊙ k                       [C][PS]
  static constexpr int X2 = Qs + kC * PS;    // column applies → dKtail ⊙ Ktail            [C][PS]
  static constexpr int ops = X2 + kC * PS;   // the products' operands (Half), then:
  static constexpr int Xk = ops;             // dKtail                                     [C][PS]
  static constexpr int rs = ops + (Half::floats > kC * PS ? Half::floats : kC * PS);  // Σ dS⊙S [KS]
  static constexpr int diag = rs + KS;       // dAqk's diagonal                            [C]
  static constexpr int seg = diag + kC;      // column sums of 8-row segments          2 × [NSEG][KS]
  static constexpr int floats = seg + 2 * NSEG * KS;
};

/// The anchored (off-diagonal) decayed applies of one chunk-head for 16 channels
/// c = c0 .. c0 + 15 of an applies block, every pair (r, s) of distinct 8-row blocks (s
/// in an earlier block than r):
///   rows     dBk_r += Σ_s dT_rs k_s e^{G_r − G_s},  dQs_r += Σ_s dAqk_rs k_s e^{G_r − G_s}
///   columns  X2_s  += Σ_r (dT_rs b_r k_r + dAqk_rs q_r) e^{G_r − G_s}
/// Every factor is formed with a non-positive exponent (SPEC §5): the operands carry the
/// decay to the nearest 8-row boundary (Kh_s = k_s e^{G_{e(s)} − G_s}, e(s) the last row of
/// s's block; Bh_r = b_r k_r e^{G_r − G_{f(r)}}, Qh_r likewise, f(r) the row before r's
/// block), and an accumulator moves its anchor one block boundary at a time by the chain
/// factor F_j = e^{G_{8j+7} − G_{8j−1}} ≤ 1 (rows: upwards, block j added after the move;
/// columns: downwards). The two halves of a 16-row output tile stop one block apart (the
/// block between them is their own 8×8 diagonal block, left to phase e: its A fragments
/// are zeroed in registers), so a half leaves the last move out and its epilogue factor
/// uses its own anchor. dT and dAqk below the diagonal blocks are read as stored by phase
/// b (rounded to tf32 in the tf32 mode). Work: warp w takes output rows 16·(w / 2).. and
/// channels 8·(w mod 2).. of both products (16 mma steps each, whatever the rows). Ends
/// with a barrier.
template <int MATH>
GDR2_HD void apply_anchored(const Blk& bk, float* sm, int c0) {
  using L = ApplyLayout;
  using H = L::Half;
  constexpr int PS = L::PS, PB = L::PB;
  const float *sT = sm + L::T, *sAqk = sm + L::Aqk, *sG = sm + L::G, *Kh = sm + L::ops + H::Kh,
              *Bh = sm + L::ops + H::Bh, *Qh = sm + L::ops + H::Qh, *F = sm + L::ops + H::F;
  float *sBk = sm + L::Bk, *sQs = sm + L::Qs, *sX2 = sm + L::X2;
  // epilogue factor e^{G_hi − G_lo} of rows hi ≥ lo (row −1: the chunk start, G = 0)
  auto fac = [&](int hi, int lo, int c) { return ex2n(sG[hi * PB + c] - (lo < 0 ? 0.f : sG[lo * PB + c])); };
#if defined(__CUDA_ARCH__)
  const int lane = bk.tid & 31, g = lane >> 2, t = lane & 3;
  for (int w = bk.tid >> 5; w < 8; w += bk.nthr >> 5) {
    const int m0 = 16 * (w >> 1), n0 = 8 * (w & 1), nb = m0 / 8;
    const int cl = n0 + 2 * t;  // this lane's first accumulator column (within the half)
    // c += A·B of one k-step; every operand here was rounded by its producer (phase b, the
    // operand tiles: op_round)
    auto mma = [&](float (&c)[4], const float (&a)[4], float b0, float b1) {
      std::uint32_t ah[4], al[4], bh0, bh1, bl0, bl1;
#pragma unroll
      for (int i = 0; i < 4; ++i) tf32_split<MATH, true>(a[i], ah[i], al[i]);
      tf32_split<MATH, true>(b0, bh0, bl0);
      tf32_split<MATH, true>(b1, bh1, bl1);
      mma_split<MATH>(c, ah, al, bh0, bh1, bl0, bl1);
    };
    // rows: output rows m0.., contraction over s-blocks 0..nb (block nb: lower half only)
    {
      float cT[4] = {0.f, 0.f, 0.f, 0.f}, cA[4] = {0.f, 0.f, 0.f, 0.f};
      for (int i = 0; i <= nb; ++i) {
        if (i > 0) {
          const float f0 = F[i * H::W + cl], f1 = F[i * H::W + cl + 1];
          if (i < nb) cT[0] *= f0, cT[1] *= f1, cA[0] *= f0, cA[1] *= f1;
          cT[2] *= f0, cT[3] *= f1, cA[2] *= f0, cA[3] *= f1;
        }
        if constexpr (MATH == kFp32) {
          for (int kk = 0; kk < 8; ++kk) {
            const int s = 8 * i + kk;
            const float b0 = Kh[s * H::PK + cl], b1 = Kh[s * H::PK + cl + 1];
            const bool own = i == nb;  // the upper half's own diagonal block
            const float tu = own ? 0.f : sT[(m0 + g) * kPC + s], tl = sT[(m0 + g + 8) * kPC + s];
            const float au = own ? 0.f : sAqk[(m0 + g) * kPC + s], al = sAqk[(m0 + g + 8) * kPC + s];
            cT[0] = fmaf(tu, b0, cT[0]), cT[1] = fmaf(tu, b1, cT[1]), cT[2] = fmaf(tl, b0, cT[2]), cT[3] = fmaf(tl, b1, cT[3]);
            cA[0] = fmaf(au, b0, cA[0]), cA[1] = fmaf(au, b1, cA[1]), cA[2] = fmaf(al, b0, cA[2]), cA[3] = fmaf(al, b1, cA[3]);
          }
        } else {
          // A by ldmatrix (k = t, t + 4), B k-major at the same k
          const int ar = m0 + (lane & 7) + 8 * ((lane >> 3) & 1), ak = 8 * i + 4 * (lane >> 4);
          std::uint32_t rt[4], ra[4];
          ldsm_x4(unsigned(__cvta_generic_to_shared(sT + ar * kPC + ak)), rt);
          ldsm_x4(unsigned(__cvta_generic_to_shared(sAqk + ar * kPC + ak)), ra);
          // block nb is the upper half's own diagonal block: its rows (a0, a2) count as zeros
          const bool own = i == nb;
          const float at[4] = {own ? 0.f : __uint_as_float(rt[0]), __uint_as_float(rt[1]),
                               own ? 0.f : __uint_as_float(rt[2]), __uint_as_float(rt[3])};
          const float aa[4] = {own ? 0.f : __uint_as_float(ra[0]), __uint_as_float(ra[1]),
                               own ? 0.f : __uint_as_float(ra[2]), __uint_as_float(ra[3])};
          const float b0 = Kh[(8 * i + t) * H::PK + n0 + g], b1 = Kh[(8 * i + t + 4) * H::PK + n0 + g];
          mma(cT, at, b0, b1);
          mma(cA, aa, b0, b1);
        }
      }
      const int ru = m0 + g, rl = ru + 8, c = c0 + cl;
      const float fu0 = fac(ru, m0 - 1, c), fu1 = fac(ru, m0 - 1, c + 1), fl0 = fac(rl, m0 + 7, c),
                  fl1 = fac(rl, m0 + 7, c + 1);
      sBk[ru * PS + c] += cT[0] * fu0, sBk[ru * PS + c + 1] += cT[1] * fu1;
      sBk[rl * PS + c] += cT[2] * fl0, sBk[rl * PS + c + 1] += cT[3] * fl1;
      sQs[ru * PS + c] += cA[0] * fu0, sQs[ru * PS + c + 1] += cA[1] * fu1;
      sQs[rl * PS + c] += cA[2] * fl0, sQs[rl * PS + c + 1] += cA[3] * fl1;
    }
    // columns: output rows (s) m0.., contraction over r-blocks 7 down to nb + 1 (block
    // nb + 1: upper half only)
    {
      float cx[4] = {0.f, 0.f, 0.f, 0.f};
      for (int i = 7; i > nb; --i) {
        if (i < 7) {
          const float f0 = F[i * H::W + cl], f1 = F[i * H::W + cl + 1];
          cx[0] *= f0, cx[1] *= f1;
          if (i > nb + 1) cx[2] *= f0, cx[3] *= f1;
        }
        if constexpr (MATH == kFp32) {
          for (int kk = 0; kk < 8; ++kk) {
            const int r = 8 * i + kk;
            const float b0 = Bh[(r - 8) * H::PQ + cl], b1 = Bh[(r - 8) * H::PQ + cl + 1];
            const float q0 = Qh[(r - 8) * H::PQ + cl], q1 = Qh[(r - 8) * H::PQ + cl + 1];
            const bool own = i == nb + 1;  // the lower half's own diagonal block
            const float tu = sT[r * kPC + m0 + g], tl = own ? 0.f : sT[r * kPC + m0 + g + 8];
            const float au = sAqk[r * kPC + m0 + g], al = own ? 0.f : sAqk[r * kPC + m0 + g + 8];
            cx[0] = fmaf(tu, b0, fmaf(au, q0, cx[0])), cx[1] = fmaf(tu, b1, fmaf(au, q1, cx[1]));
            cx[2] = fmaf(tl, b0, fmaf(al, q0, cx[2])), cx[3] = fmaf(tl, b1, fmaf(al, q1, cx[3]));
          }
        } else {
          // A k-major (k = 2t, 2t + 1: conflict-free at pitch ≡ 4 mod 16), B k-major alike
          // block nb + 1 is the lower half's own diagonal block: its rows (a1, a3) as zeros
          const int r1 = 8 * i + 2 * t, r2 = r1 + 1;
          const bool own = i == nb + 1;
          const float at[4] = {sT[r1 * kPC + m0 + g], own ? 0.f : sT[r1 * kPC + m0 + g + 8], sT[r2 * kPC + m0 + g],
                               own ? 0.f : sT[r2 * kPC + m0 + g + 8]};
          const float aa[4] = {sAqk[r1 * kPC + m0 + g], own ? 0.f : sAqk[r1 * kPC + m0 + g + 8],
                               sAqk[r2 * kPC + m0 + g], own ? 0.f : sAqk[r2 * kPC + m0 + g + 8]};
          mma(cx, at, Bh[(r1 - 8) * H::PQ + n0 + g], Bh[(r2 - 8) * H::PQ + n0 + g]);
          mma(cx, aa, Qh[(r1 - 8) * H::PQ + n0 + g], Qh[(r2 - 8) * H::PQ + n0 + g]);
        }
      }
      const int su = m0 + g, sl = su + 8, c = c0 + cl;
      sX2[su * PS + c] += cx[0] * fac(m0 + 7, su, c), sX2[su * PS + c + 1] += cx[1] * fac(m0 + 7, su, c + 1);
      sX2[sl * PS + c] += cx[2] * fac(m0 + 15, sl, c), sX2[sl * PS + c + 1] += cx[3] * fac(m0 + 15, sl, c + 1);
    }
  }
#else
  // the same sums element by element, in the device's order of blocks and moves
  for (int m0 = 0; m0 < kC && host_lead(bk); m0 += 16) {
    const int nb = m0 / 8;
    for (int m = 0; m < 16; ++m)
      for (int cl = 0; cl < H::W; ++cl) {
        const bool upper = m < 8;
        const int r = m0 + m, c = c0 + cl;
        float aT = 0.f, aA = 0.f, ax = 0.f;
        for (int i = 0; i <= nb; ++i) {
          if (i > 0 && (i < nb || !upper)) aT *= F[i * H::W + cl], aA *= F[i * H::W + cl];
          if (i == nb && upper) continue;  // its own diagonal block
          for (int kk = 0; kk < 8; ++kk) {
            const int s = 8 * i + kk;
            aT += host_product<MATH>(sT[r * kPC + s], Kh[s * H::PK + cl]);
            aA += host_product<MATH>(sAqk[r * kPC + s], Kh[s * H::PK + cl]);
          }
        }
        const float fr = fac(r, upper ? m0 - 1 : m0 + 7, c);
        sBk[r * PS + c] += aT * fr;
        sQs[r * PS + c] += aA * fr;
        for (int i = 7; i > nb; --i) {
          if (i < 7 && (upper || i > nb + 1)) ax *= F[i * H::W + cl];
          if (i == nb + 1 && !upper) continue;  // its own diagonal block
          for (int kk = 0; kk < 8; ++kk) {
            const int q = 8 * i + kk;  // (the row r of the sum over r)
            ax += host_product<MATH>(sT[q * kPC + r], Bh[(q - 8) * H::PQ + cl]);
            ax += host_product<MATH>(sAqk[q * kPC + r], Qh[(q - 8) * H::PQ + cl]);
          }
        }
        sX2[r * PS + c] += ax * fac(upper ? m0 + 7 : m0 + 15, r, c);
      }
  }
#endif
  bk.sync();
}

/// What a chunk-head's applies read after their first slice's loads, asked of the L2 while
/// the first slice runs (cuda/NOTES.md backward v38): every row of q, k, b, g (all D
/// channels: a slice reads 64 or 128 bytes of each) and the G1 tiles dQ, X, dE (X of the first
/// slice too: it is read in phase e). No barrier; the host does nothing.
template <int D>
GDR2_HD void prefetch_applies(const Blk& bk, const P& p, const ChunkLoc& cl, int hv, const float* g1) {
  constexpr int NL = D * 4 / 128 + 1;  // lines of a row of ≤ D fp32 values at any alignment
  // one input at a time: an array of the four InRows indexed by the item lived in local
  // memory (the applies' 160-byte stack frame; cuda/NOTES.md backward item 49)
  auto rows = [&](const InRows& ir) {
    const int es = ir.dt == kF32 ? 4 : 2;
    for (int i = bk.tid; i < kC * NL; i += bk.nthr) {
      const int r = i / NL, l = i % NL;
      if (r >= cl.len) continue;
      const char* row = static_cast<const char*>(ir.base) + (ir.off + r * ir.st) * es;
      const std::uintptr_t first = reinterpret_cast<std::uintptr_t>(row) & ~std::uintptr_t(127),
                           end = reinterpret_cast<std::uintptr_t>(row) + (ir.one ? 1 : D) * es;
      const std::uintptr_t line = first + 128 * std::uintptr_t(l);
      if (line < end) prefetch_line(reinterpret_cast<const void*>(line));
    }
  };
  rows(rows_q(p, cl, hv));
  rows(rows_k(p, cl, hv));
  rows(rows_b(p, cl, hv));
  rows(rows_g(p, cl, hv));
  for (int i = bk.tid; i < 3 * kC * D / 32; i += bk.nthr) prefetch_line(g1 + G1<D>::dQ + 32 * i);
}

/// One slice (kKS key channels) of the applies of chunk-head (cl, hv), its grad-1 outputs
/// at g1; `first`: the block's first slice, which also loads and prepares the chunk-head's
/// dT and dAqk (kept for the later slices).
template <int D, int MATH>
GDR2_HD void apply_slice(const Blk& bk, const P& p, const ChunkLoc& cl, int hv, float* g1, int slice, bool first,
                         float* sm) {
  using L = ApplyLayout;
  using H = L::Half;
  constexpr int KS = L::KS, PS = L::PS, PB = L::PB, K4 = KS / 4, NSEG = L::NSEG;
  const int last = cl.len - 1, len = cl.len, c0 = KS * slice;
  float *sT = sm + L::T, *sAqk = sm + L::Aqk, *sG = sm + L::G, *sBk = sm + L::Bk, *sQs = sm + L::Qs, *sX2 = sm + L::X2,
        *sXk = sm + L::Xk, *sq = sm + L::q, *sk = sm + L::k, *sb = sm + L::b, *rsv = sm + L::rs, *diag = sm + L::diag,
        *seg = sm + L::seg, *ops = sm + L::ops;

  // a. loads: the chunk-head's dT and dAqk (first slice); this slice's columns of dĒ, dO Sᵀ,
  //    Σ dS⊙S; its q k b g (rows past the chunk as zeros, g = 0 there). dKtail comes in
  //    phase e.
  if (first) {
    copy_tile(bk, sT, kPC, g1 + G1<D>::dT, kC, kC, kC);
    copy_tile(bk, sAqk, kPC, g1 + G1<D>::dAqk, kC, kC, kC);
  }
  copy_tile(bk, sBk, PS, g1 + G1<D>::dE + c0, D, kC, KS);
  copy_tile(bk, sQs, PS, g1 + G1<D>::dQ + c0, D, kC, KS);
  copy_tile(bk, rsv, KS, g1 + G1<D>::rs + c0, KS, 1, KS);
  struct QKBG {
    F4 q, k, b, g;
  };
  const InRows iq = rows_q(p, cl, hv), ik = rows_k(p, cl, hv), ib_ = rows_b(p, cl, hv), ig = rows_g(p, cl, hv);
  // 16-bit inputs with 16-byte aligned rows: q, k (and b, g where they are per channel)
  // copied as stored (cp.async, rows past the chunk not copied), q k b into the products'
  // operand space (free until phase d) as [3][kC][KS] 16-bit, g into G; β (tied gates) and
  // the scalar decay, one value per row, loaded by one thread per row into `rowv` after the
  // copies are issued (their latency then overlaps the copies'). Phase a' converts them all
  // (v52: register loads here held 44 % of the applies' stall samples, cuda/NOTES.md
  // backward item 14; v54: tied gates and scalar decay the same way). Else loaded into
  // registers, converted, zeros past the chunk.
  const bool qkbg_tile = p.rows16;
  static_assert(3 * kC * KS / 2 + 2 * kC <= L::rs - L::ops, "q k b rows as stored and two row vectors fit");
  const char* raw = reinterpret_cast<const char*>(ops);
  float* rowv = ops + 3 * kC * KS / 2;  // [0, kC): β per row; [kC, 2 kC): scalar g per row
  if (qkbg_tile) {
    copy_rows16(bk, ops, iq.base, iq.off + c0, iq.st, len, KS);
    copy_rows16(bk, ops + kC * KS / 2, ik.base, ik.off + c0, ik.st, len, KS);
    if (!p.tied) copy_rows16(bk, ops + kC * KS, ib_.base, ib_.off + c0, ib_.st, len, KS);
    if (!p.scalar_decay) copy_tile(bk, sG, PB, static_cast<const float*>(ig.base) + ig.off + c0, ig.st, len, KS);
    if (p.tied || p.scalar_decay)
      for (int r = bk.tid; r < len; r += bk.nthr) {
        if (p.tied) rowv[r] = ib_.at(r, 0).x;
        if (p.scalar_decay) rowv[kC + r] = ig.at(r, 0).x;
      }
  } else {
    bk.par_ld<4>(
        kC * K4,
        [&](int i) {
          const int r = i / K4, d = c0 + (i % K4) * 4;
          if (r >= len) return QKBG{splat(0.f), splat(0.f), splat(0.f), splat(0.f)};
          return QKBG{iq.at(r, d), ik.at(r, d), ib_.at(r, d), ig.at(r, d)};
        },
        [&](int i, const QKBG& x) {
          const int o = (i / K4) * PB + (i % K4) * 4;
          st4(sq + o, x.q);
          st4(sk + o, x.k);
          st4(sb + o, x.b);
          st4(sG + o, x.g);
        });
  }
  if (first) prefetch_applies<D>(bk, p, cl, hv, g1);
  bk.sync();
  // a'. With qkbg_tile, the q, k, b rows as copied converted (q times the scale; β from rowv;
  //    zeros past the chunk), eight channels of one row per item: two 8-byte loads, two
  //    16-byte stores. (Was done in b's items, one channel and eight rows each, by scalar
  //    2-byte loads: −0.05 to −0.09 ms at B=8, cuda/NOTES.md backward item 48.) NO barrier:
  //    b touches none of these tiles and converts g itself (item 50), so both share a phase.
  if (qkbg_tile) {
    constexpr int K8 = KS / 8;
    // the pass for one 16-bit type DT (a compile-time constant: no type test per element)
    auto convert = [&](auto dt_tag) {
      constexpr int DT = decltype(dt_tag)::value;
      for (int i = bk.tid; i < 3 * kC * K8; i += bk.nthr) {
        const int m = i / (kC * K8), r = (i / K8) % kC, c = 8 * (i % K8);
        float* dst = (m == 0 ? sq : m == 1 ? sk : sb) + r * PB + c;
        F4 lo = splat(0.f), hi = lo;
        if (r < len) {
          if (m == 2 && p.tied) {
            lo = hi = splat(rowv[r]);
          } else {
            const char* src = raw + m * kC * KS * 2;
            lo = ld_in4(src, r * KS + c, DT, 1);
            hi = ld_in4(src, r * KS + c + 4, DT, 1);
            if (m == 0) lo = mul4(lo, splat(iq.mul)), hi = mul4(hi, splat(iq.mul));
          }
        }
        st4(dst, lo);
        st4(dst + 4, hi);
      }
    };
    if (p.dtype == kF16)
      convert(std::integral_constant<int, kF16>{});
    else
      convert(std::integral_constant<int, kBf16>{});
  }
  // b. cumulative sums of the log-decays as a blocked scan (item: 8-row segment × channel;
  //    chains of 8, not 64): sums within each segment, of g in log2 units (with qkbg_tile
  //    converted here: G as copied times log2 e, or the scalar decay from rowv; zeros past
  //    the chunk). dT and dAqk below their 8×8 diagonal blocks rounded as the products round
  //    them (op_round; the blocks stay exact for phase e, what lies above is never read);
  //    dAqk's diagonal to `diag`
  bk.par(NSEG * KS, [&](int i) {
    const int sg = i / KS, d = i % KS;
    float s = 0.f;
    for (int r = 8 * sg; r < 8 * sg + 8; ++r) {
      s += !qkbg_tile        ? sG[r * PB + d]  // converted by phase a's loads
           : r >= len        ? 0.f
           : p.scalar_decay  ? rowv[kC + r]
                             : mul_rn(sG[r * PB + d], ig.mul);
      sG[r * PB + d] = s;
    }
    seg[sg * KS + d] = s;
    if (first && i < kC) diag[i] = sAqk[i * kPC + i];
    if (first && MATH == kTf32)  // item: eight columns 8j.. of a row, j below the row's block
      for (int e = i; e < 2 * kC * (kC / 8); e += NSEG * KS) {
        const int tl = e / (kC * (kC / 8)), r = (e / (kC / 8)) % kC, j = e % (kC / 8);
        if (j >= r / 8) continue;
        float* x = (tl ? sAqk : sT) + r * kPC + 8 * j;
        st4(x, op_round4<MATH>(ld4(x)));
        st4(x + 4, op_round4<MATH>(ld4(x + 4)));
      }
  });
  // c. the earlier segments' totals added; dBk = dĒ ⊙ γ; dQs = (dO Sᵀ) ⊙ γ; X2 ← 0
  bk.par(NSEG * KS, [&](int i) {
    const int sg = i / KS, d = i % KS;
    float off = 0.f;
    for (int j = 0; j < sg; ++j) off += seg[j * KS + d];
    for (int r = 8 * sg; r < 8 * sg + 8; ++r) {
      const float G = sG[r * PB + d] + off, gam = ex2n(G);
      sG[r * PB + d] = G;
      sBk[r * PS + d] *= gam;
      sQs[r * PS + d] *= gam;
      sX2[r * PS + d] = 0.f;
    }
  });
  // d. decayed applies between distinct 8-row blocks (apply_anchored), 16 channels at a
  //    time: their operands formed first (items of four channels)
  for (int h = 0; h < KS / H::W; ++h) {
    const int ch = H::W * h;
    bk.par(56 * (H::W / 4), [&](int i) {
      const int row = i / (H::W / 4), cq = (i % (H::W / 4)) * 4, d = ch + cq;
      const int s = row, es = s | 7, r = row + 8, fr = (r & ~7) - 1;
      const F4 k4 = ld4(sk + s * PB + d), gs = ld4(sG + s * PB + d), ge = ld4(sG + es * PB + d);
      st4(ops + H::Kh + s * H::PK + cq,
          op_round4<MATH>({k4.x * ex2n(ge.x - gs.x), k4.y * ex2n(ge.y - gs.y), k4.z * ex2n(ge.z - gs.z),
                           k4.w * ex2n(ge.w - gs.w)}));
      const F4 kr = ld4(sk + r * PB + d), br = ld4(sb + r * PB + d), qr = ld4(sq + r * PB + d),
               gr = ld4(sG + r * PB + d), gf = ld4(sG + fr * PB + d);
      const F4 e = {ex2n(gr.x - gf.x), ex2n(gr.y - gf.y), ex2n(gr.z - gf.z), ex2n(gr.w - gf.w)};
      st4(ops + H::Bh + row * H::PQ + cq,
          op_round4<MATH>({br.x * kr.x * e.x, br.y * kr.y * e.y, br.z * kr.z * e.z, br.w * kr.w * e.w}));
      st4(ops + H::Qh + row * H::PQ + cq, op_round4<MATH>({qr.x * e.x, qr.y * e.y, qr.z * e.z, qr.w * e.w}));
      if (row >= 1 && row < 8) {  // F_j = e^{G_{8j+7} − G_{8j−1}}
        const F4 ga = ld4(sG + (8 * row + 7) * PB + d), gb = ld4(sG + (8 * row - 1) * PB + d);
        st4(ops + H::F + row * H::W + cq,
            {ex2n(ga.x - gb.x), ex2n(ga.y - gb.y), ex2n(ga.z - gb.z), ex2n(ga.w - gb.w)});
      }
    });
    apply_anchored<MATH>(bk, sm, ch);
  }
  // e. decayed applies within the 8×8 diagonal blocks: one thread per (block, channel),
  //    both sides from one factor per pair, formed as a running product of the tokens'
  //    factors e^{g_t} ≤ 1 (the pairs of a row walked towards its left): rows dBk_r, dQs_r +=
  //    Σ_{s<r} …, columns X2_s += Σ_{r>s} … (accumulated in registers). dKtail copied in
  //    meanwhile (over the products' operands).
  copy_tile(bk, sXk, PS, g1 + G1<D>::X + c0, D, kC, KS);
  bk.par(8 * KS, [&](int item) {
    const int o = 8 * (item / KS), d = item % KS;
    float Gs[8], ks[8], ax[8], ef[8];
    GDR2_UNROLL
    for (int i = 0; i < 8; ++i) {
      Gs[i] = sG[(o + i) * PB + d];
      ks[i] = sk[(o + i) * PB + d];
      ax[i] = 0.f;
      ef[i] = i ? ex2n(Gs[i] - Gs[i - 1]) : 1.f;
    }
    GDR2_UNROLL
    for (int r = 1; r < 8; ++r) {
      const float* tr = sT + (o + r) * kPC + o;
      const float* ar = sAqk + (o + r) * kPC + o;
      const F4 tv[2] = {ld4(tr), ld4(tr + 4)}, av[2] = {ld4(ar), ld4(ar + 4)};
      const float bkr = sb[(o + r) * PB + d] * ks[r], qr = sq[(o + r) * PB + d];
      float ab = 0.f, aq = 0.f, e = 1.f;
      GDR2_UNROLL
      for (int s = r - 1; s >= 0; --s) {
        e *= ef[s + 1];  // e^{G_r − G_s}
        const float ke = ks[s] * e;
        const float t = tv[s / 4][s % 4], a = av[s / 4][s % 4];
        ab += t * ke;
        aq += a * ke;
        ax[s] += (t * bkr + a * qr) * e;
      }
      sBk[(o + r) * PS + d] += ab;
      sQs[(o + r) * PS + d] += aq;
    }
    GDR2_UNROLL
    for (int s = 0; s < 7; ++s) sX2[(o + s) * PS + d] += ax[s];
  });
  // f. dq, dk, db per element (four channels per item); dG (before its cumulative sum)
  //    over dBk, db ⊙ k over dQs, dKtail ⊙ Ktail over X2 (for the last row's column sum);
  //    rows past the chunk: zeros
  const OutRows odq = out_rows(p, p.dq, cl, hv), odk = out_rows(p, p.dk, cl, hv),
                odb = out_rows(p, p.tied ? BwdSink{} : p.db, cl, hv),
                odg = out_rows(p, p.scalar_decay ? BwdSink{} : p.dg, cl, hv);
  bk.par(kC * K4, [&](int i) {
    const int r = i / K4, d0 = (i % K4) * 4;
    if (r >= len) {
      st4(sBk + r * PS + d0, splat(0.f));
      st4(sQs + r * PS + d0, splat(0.f));
      st4(sX2 + r * PS + d0, splat(0.f));
      return;
    }
    // every operand as one 16-byte shared-memory access (four channels)
    const int x = r * PS + d0, y = r * PB + d0;
    const F4 k4 = ld4(sk + y), q4 = ld4(sq + y), b4 = ld4(sb + y), xk4 = ld4(sXk + x), gl4 = ld4(sG + last * PB + d0),
             gy4 = ld4(sG + y), dq4 = ld4(sQs + x), db4 = ld4(sBk + x), x24 = ld4(sX2 + x);
    const float dr = diag[r];
    float oq[4], ok[4], ob[4], nbk[4], nqs[4], nx2[4];
    GDR2_UNROLL
    for (int u = 0; u < 4; ++u) {
      const float kk = k4[u], qs = q4[u], bg = b4[u], bkv = bg * kk, xk = xk4[u];
      const float kf = ex2n(gl4[u] - gy4[u]);
      const float dqs = dq4[u], dbk = db4[u], x2 = x24[u];
      const float xt = xk * kk * kf;  // dKtail ⊙ Ktail
      oq[u] = p.scale * (dqs + dr * kk);
      ok[u] = xk * kf + x2 + dr * qs + dbk * bg;
      ob[u] = dbk * kk;
      nbk[u] = qs * dqs + bkv * dbk - kk * x2 - (r < last ? xt : 0.f);
      nqs[u] = dbk * kk;
      nx2[u] = r < last ? xt : 0.f;
    }
    st4(sBk + x, {nbk[0], nbk[1], nbk[2], nbk[3]});
    st4(sQs + x, {nqs[0], nqs[1], nqs[2], nqs[3]});
    st4(sX2 + x, {nx2[0], nx2[1], nx2[2], nx2[3]});
    odq.put4(r, c0 + d0, {oq[0], oq[1], oq[2], oq[3]});
    odk.put4(r, c0 + d0, {ok[0], ok[1], ok[2], ok[3]});
    odb.put4(r, c0 + d0, {ob[0], ob[1], ob[2], ob[3]});
  });
  // g. dg = reverse cumulative sum of dG with the last row's terms (Σ_{r<last} dKtail ⊙
  //    Ktail and Σ dS⊙S ⊙ γ_last) added to row `last`, as a blocked scan: segment sums of
  //    dG and of X2 first, then each segment from its end with the later segments' total
  float* segx = seg + NSEG * KS;
  bk.par(NSEG * KS, [&](int i) {
    const int sg = i / KS, d = i % KS;
    float sdg = 0.f, sx = 0.f;
    for (int r = 8 * sg; r < 8 * sg + 8; ++r) {
      sdg += sBk[r * PS + d];
      sx += sX2[r * PS + d];  // zero at and past `last`
    }
    seg[sg * KS + d] = sdg;
    segx[sg * KS + d] = sx;
  });
  bk.par(NSEG * KS, [&](int i) {
    const int sg = i / KS, d = i % KS;
    if (len <= 0 || 8 * sg > last) return;
    float extra = rsv[d] * ex2n(sG[last * PB + d]), run = 0.f;
    for (int j = 0; j < NSEG; ++j) extra += segx[j * KS + d];
    for (int j = sg + 1; j < NSEG; ++j) run += seg[j * KS + d];
    for (int r = 8 * sg + 7; r >= 8 * sg; --r) {
      run += sBk[r * PS + d];
      if (r > last) continue;  // (dG is zero there)
      const float v = run + extra;
      sBk[r * PS + d] = v;
      odg.put(r, c0 + d, v);
    }
  });
  // h. tied / scalar gates: this slice's per-row sums of dg and db ⊙ k (4b adds the slices)
  if (p.tied || p.scalar_decay) {
    static_assert(PS % 32 == 4 && 4 * kC <= kApplyThreads, "row_sums' conditions");
    row_sums<KS>(bk, sBk, nullptr, kC, PS, [&](int r, float s) { g1[G1<D>::tok + (2 * slice) * kC + r] = s; });
    row_sums<KS>(bk, sQs, nullptr, kC, PS, [&](int r, float s) { g1[G1<D>::tok + (2 * slice + 1) * kC + r] = s; });
  }
}

/// 4a. the applies of chunk-head (cg, hv): its key slices one after another in one block, so
/// that dT and dAqk are loaded and prepared once per chunk-head (cuda/NOTES.md v36).
template <int D, int MATH>
GDR2_HD void apply_body(const Blk& bk, const P& p, long long cg, int hv, float* sm) {
  const ChunkLoc cl = chunk_loc(p, cg);
  float* g1 = p.g1 + (cg * p.Hv + hv) * G1<D>::floats;
  for (int slice = 0; slice < D / kKS; ++slice) apply_slice<D, MATH>(bk, p, cl, hv, g1, slice, slice == 0, sm);
}

/// 4b. one token row r of chunk-head `item` = (cg·Hv + hv)·kC + r: scalar dg = Σ over the
/// slices of their dg sums; dβ = Σ of their db ⊙ k sums + Σ dw (from grad-1). Fixed order.
template <int D>
GDR2_HD void token_elem(const P& p, long long item) {
  const int r = int(item % kC), hv = int((item / kC) % p.Hv);
  const long long cg = item / kC / p.Hv;
  const ChunkLoc cl = chunk_loc(p, cg);
  if (r >= cl.len) return;
  const float* g1 = p.g1 + (cg * p.Hv + hv) * G1<D>::floats;
  float sg = 0.f, sbk = 0.f;
  for (int s = 0; s < D / kKS; ++s) {
    sg += g1[G1<D>::tok + (2 * s) * kC + r];
    sbk += g1[G1<D>::tok + (2 * s + 1) * kC + r];
  }
  if (p.scalar_decay) out_rows(p, p.dg, cl, hv).put(r, 0, sg);
  if (p.tied) out_rows(p, p.dbeta, cl, hv).put(r, 0, sbk + g1[G1<D>::bw + r]);
}

// =============================================================================================
// 5. head sums: dst[b, t, h, x] = Σ_{i < ratio} src[b, t, h·ratio + i, x], in order (and,
//    with 16-bit gradients, dS_0 converted the same way with ratio 1)
// =============================================================================================
GDR2_HD void reduce_elem(const BwdReduce& r, long long idx) {
  const int x = int(idx % r.width);
  const long long rest = idx / r.width;
  const int h = int(rest % r.heads);
  const long long bt = rest / r.heads;  // b·cols + t
  const long long t = bt % r.cols, b = bt / r.cols;
  const float* src = r.src + (bt * r.heads * r.ratio + (long long)h * r.ratio) * r.width + x;
  float s = 0.f;
  for (int i = 0; i < r.ratio; ++i) s += src[(long long)i * r.width];
  st_out(r.dst, b * r.sb + t * r.st + (long long)h * r.sh + x * r.sx, r.dt, s);
}

}  // namespace bwd
}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
