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

/// Where global chunk cg lies: sequence, batch row, first token, valid rows.
struct ChunkLoc {
  int n, c, bb, t0, len;
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
  return {n, c, s.bb, t0, len};
}

GDR2_HD long long act(const Strides3& s, int bb, int t, int h) {
  return (long long)bb * s.b + (long long)t * s.t + (long long)h * s.h;
}
GDR2_HD int ghead(int hv, int hg, int Hv) { return int((long long)hv * hg / Hv); }

// Inputs are read four channels at a time (d a multiple of 4), through ld_in4.
GDR2_HD F4 splat(float x) { return {x, x, x, x}; }
GDR2_HD F4 in_q4(const P& p, int bb, int t, int hv, int d) {
  return ld_in4(p.q, act(p.sq, bb, t, hv / p.group) + d, p.dtype, p.vec);
}
GDR2_HD F4 in_k4(const P& p, int bb, int t, int hv, int d) {
  return ld_in4(p.k, act(p.sk, bb, t, hv / p.group) + d, p.dtype, p.vec);
}
GDR2_HD F4 in_v4(const P& p, int bb, int t, int hv, int d) { return ld_in4(p.v, act(p.sv, bb, t, hv) + d, p.dtype, p.vec); }
GDR2_HD F4 in_do4(const P& p, int bb, int t, int hv, int d) {
  return ld_in4(p.d_o, act(p.sdo, bb, t, hv) + d, p.dtype, p.vec);
}
GDR2_HD float in_beta(const P& p, int bb, int t, int hv) {
  return ld_in(p.beta, act(p.sbeta, bb, t, ghead(hv, p.hg_beta, p.Hv)), p.dtype);
}
GDR2_HD F4 in_b4(const P& p, int bb, int t, int hv, int d) {
  return p.tied ? splat(in_beta(p, bb, t, hv))
                : ld_in4(p.b, act(p.sb, bb, t, ghead(hv, p.hg_b, p.Hv)) + d, p.dtype, p.vec);
}
GDR2_HD F4 in_w4(const P& p, int bb, int t, int hv, int d) {
  return p.tied ? splat(in_beta(p, bb, t, hv))
                : ld_in4(p.w, act(p.sw, bb, t, ghead(hv, p.hg_w, p.Hv)) + d, p.dtype, p.vec);
}
/// log-decays in log2 units
GDR2_HD F4 in_g4(const P& p, int bb, int t, int hv, int d) {
  const long long o = act(p.sg, bb, t, ghead(hv, p.hg_g, p.Hv));
  if (p.scalar_decay) return splat(p.g[o] * kLog2e);
  const F4 x = ld_in4(p.g, o + d, kF32, p.vec);
  return {x.x * kLog2e, x.y * kLog2e, x.z * kLog2e, x.w * kLog2e};
}
GDR2_HD F4 mul4(const F4& a, const F4& b) { return {a.x * b.x, a.y * b.y, a.z * b.z, a.w * b.w}; }
GDR2_HD float at4(const F4& v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

GDR2_HD void put(const BwdSink& s, int bb, int t, int hv, int i, float v) {
  if (s.p) s.p[(long long)bb * s.sb + (long long)t * s.st + (long long)hv * s.sh + i] = v;
}
/// Four consecutive channels i..i+3 of one gradient row: a 16-byte store when every
/// per-channel sink is 16-byte aligned row by row (BackwardParams::vec_out).
GDR2_HD void put4(const P& p, const BwdSink& s, int bb, int t, int hv, int i, const F4& v) {
  if (!s.p) return;
  float* o = s.p + (long long)bb * s.sb + (long long)t * s.st + (long long)hv * s.sh + i;
  if (p.vec_out) {
    st4(o, v);
  } else {
    o[0] = v.x;
    o[1] = v.y;
    o[2] = v.z;
    o[3] = v.w;
  }
}

// ---- record layout (fp32, row-major, per chunk-head) ---------------------------------------
template <int D>
struct Rec {
  static constexpr long long A = 0, Aqk = kC * kC, Y = 2 * kC * kC, U = Y + kC * D, Qg = U + kC * D, Kt = Qg + kC * D,
                             gC = Kt + kC * D, floats = gC + D;
};
template <int D>
struct G1 {
  static constexpr long long dQ = 0, X = kC * D, dY = 2 * kC * D, dU = 3 * kC * D, dAqk = 4 * kC * D,
                             rs = dAqk + kC * kC, floats = rs + D;
};

constexpr int kPC = kC + 4;  // pitch of C×C fp32 tiles

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
  bk.par_ld<4>(
      cl.len * D4,
      [&](int i) {
        const int r = i / D4, d = (i % D4) * 4, t = cl.t0 + r;
        // every input of the chunk in one round trip (Z = w ⊙ v too)
        return Quad4{in_q4(p, cl.bb, t, hv, d), in_k4(p, cl.bb, t, hv, d), in_b4(p, cl.bb, t, hv, d),
                     in_g4(p, cl.bb, t, hv, d), mul4(in_w4(p, cl.bb, t, hv, d), in_v4(p, cl.bb, t, hv, d))};
      },
      [&](int i, const Quad4& x) {
        const int o = (i / D4) * PD + (i % D4) * 4;
        const float sc = p.scale;
        st4(sQ + o, {sc * x.q.x, sc * x.q.y, sc * x.q.z, sc * x.q.w});
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
      st4(rec + Rec<D>::Qg + r * D + d, {q.x * ex2n(G.x), q.y * ex2n(G.y), q.z * ex2n(G.z), q.w * ex2n(G.w)});
      st4(rec + Rec<D>::Kt + r * D + d,
          r <= last ? F4{k.x * ex2n(Gl.x - G.x), k.y * ex2n(Gl.y - G.y), k.z * ex2n(Gl.z - G.z), k.w * ex2n(Gl.w - G.w)}
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
      st4(rec + Rec<D>::Aqk + r * kC + d, ld4(sAqk + r * kPC + d));
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
    st4(rec + Rec<D>::A + r * kC + s, ld4(sA + r * kPC + s));
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
    st4(rec + (h ? Rec<D>::U : Rec<D>::Y) + r * D + d, ld4((h ? sK : sQ) + r * PD + d));
  });
}

// =============================================================================================
// 2. state passes: block (sequence·Hv + head, value slice, role); role 0 forward S, 1 reverse dS
// =============================================================================================
template <int D>
struct StateLayout {
  static constexpr int PD = D + 4;
  static constexpr int kMaxFloats = 227 * 1024 / 4;  // the opt-in shared memory of a block
  int PV, S, A1, A2, Aqk, dO, dR, g, Qg, floats;     // the forward role keeps U's slice in dO
  GDR2_HD explicit StateLayout(int vs) {
    PV = vs + 4;
    S = 0;
    A1 = S + D * PV;
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
  }
};

template <int D, int MATH>
GDR2_HD void state_body(const Blk& bk, const P& p, int pair, int slice, int role, float* sm) {
  // (slices of one sequence-head are neighbours in the grid: they read the same records)
  const StateLayout<D> L(p.vs);
  constexpr int PD = StateLayout<D>::PD;
  const int VS = p.vs, PV = L.PV, j0 = slice * VS;
  const int n = pair / p.Hv, hv = pair % p.Hv;
  const SeqLoc sq = seq_loc(p, n);
  float *sS = sm + L.S, *sA1 = sm + L.A1, *sA2 = sm + L.A2, *sAqk = sm + L.Aqk, *sdO = sm + L.dO, *sdR = sm + L.dR,
        *sg = sm + L.g, *sQg = sm + L.Qg;
  const long long DD = (long long)D * D;

  if (role == 0) {
    bk.par_ld<8>(
        D * VS,
        [&](int i) {
          const int kk = i / VS, j = i % VS;
          return p.s0 ? p.s0[n * p.s0s[0] + hv * p.s0s[1] + kk * p.s0s[2] + (j0 + j) * p.s0s[3]] : 0.f;
        },
        [&](int i, float x) { sS[(i / VS) * PV + i % VS] = x; });
    bk.sync();
    // software pipeline: chunk c+1's Y and U slice (group A) are copied during chunk c's
    // S update, its Ktail and γ_C (group B) during the next R; barriers leave the newest
    // cp.async group in flight (Blk::keep)
    const Blk bq{bk.tid, bk.nthr, 1};
    auto recp = [&](int c) { return p.rec + ((sq.cg0 + c) * p.Hv + hv) * Rec<D>::floats; };
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
        st4(p.states + base * DD + kk * D + j0 + j, ld4(sS + kk * PV + j));
      });
      if (c == sq.nc - 1) break;
      const bool next = c + 1 < sq.nc - 1;  // chunk c+1 has a step (tiles) too
      // R = U − Y S (slice), then S ← γ_C ⊙ S + Ktailᵀ R
      mm_auto<MATH>(
          bq, kC, VS, D, [&](int r, int k) { return sA1[r * PD + k]; }, [&](int k, int j) { return sS[k * PV + j]; },
          [&](int r, int j, float v) { sdR[r * PV + j] = sdO[r * PV + j] - v; });
      if (next) {
        tilesA(c + 1);  // Y, U are dead
        bk.commit();
        bq.sync();  // group B of chunk c in place
      } else {
        bk.sync();
      }
      mm_auto<MATH>(
          bq, D, VS, kC, [&](int m, int r) { return sA2[r * PD + m]; }, [&](int r, int j) { return sdR[r * PV + j]; },
          [&](int m, int j, float v) { sS[m * PV + j] = sg[m] * sS[m * PV + j] + v; });
      if (next) {
        tilesB(c + 1);  // Ktail, γ_C are dead
        bk.commit();
      }
    }
    return;
  }

  bk.par_ld<8>(
      D * VS,
      [&](int i) {
        const int kk = i / VS, j = i % VS;
        return p.dsT ? p.dsT[n * p.dsTs[0] + hv * p.dsTs[1] + kk * p.dsTs[2] + (j0 + j) * p.dsTs[3]] : 0.f;
      },
      [&](int i, float x) { sS[(i / VS) * PV + i % VS] = x; });
  bk.sync();
  // Software pipeline when Qγ has its own tile (value slices ≤ 64 at D = 128): the tiles
  // of chunk c−1 are copied while chunk c is computed — Ktail, Aqk (group A) during the
  // dS update, Y, Qγ, γ_C (group B) during the next dR — and dO one chunk ahead in
  // registers; barriers inside leave the newest group in flight (Blk::keep). Otherwise
  // every tile of a chunk is copied at its start (one round trip per chunk).
  const bool pipe = sQg != sA1;
  const Blk bq{bk.tid, bk.nthr, pipe ? 1 : 0};
  const int V4 = VS / 4;
  auto recp = [&](int c) { return p.rec + ((sq.cg0 + c) * p.Hv + hv) * Rec<D>::floats; };
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
      if (i < kC * V4) st4(sdO + (i / V4) * PV + (i % V4) * 4, ahead[u]);
    }
#else
    for (int i = 0; i < kC * V4; ++i) st4(sdO + (i / V4) * PV + (i % V4) * 4, dO_item(ahead_c, i));
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
      st4(p.dstates + base * DD + kk * D + j0 + j, ld4(sS + kk * PV + j));
    }
    dO_store();
    if (pipe && c > 0) dO_load(c - 1);
    bq.sync();  // group A of chunk c (and dO) in place
    // dR = Aqkᵀ dO + Ktail dS
    mm_auto<MATH>(
        bq, kC, VS, kC + D, [&](int r, int k) { return k < kC ? sAqk[k * kPC + r] : sA1[r * PD + k - kC]; },
        [&](int k, int j) { return k < kC ? sdO[k * PV + j] : sS[(k - kC) * PV + j]; },
        [&](int r, int j, float v) { sdR[r * PV + j] = v; });
    if (pipe) {
      if (c > 0) {
        tilesA(c - 1);  // Ktail, Aqk are dead
        bk.commit();
        bq.sync();  // group B of chunk c in place, group A of chunk c−1 in flight
      } else {
        bk.sync();
      }
      // dS ← γ_C ⊙ dS + Qγᵀ dO − Yᵀ dR
      mm_auto<MATH>(
          bq, D, VS, 2 * kC, [&](int m, int k) { return k < kC ? sQg[k * PD + m] : -sA2[(k - kC) * PD + m]; },
          [&](int k, int j) { return k < kC ? sdO[k * PV + j] : sdR[(k - kC) * PV + j]; },
          [&](int m, int j, float v) { sS[m * PV + j] = sg[m] * sS[m * PV + j] + v; });
    } else {
      // Qγ over Ktail, in flight during the first half of the update (dS ← γ_C ⊙ dS − Yᵀ
      // dR), whose closing barrier waits for it; then dS += Qγᵀ dO
      copy_tile(bk, sQg, PD, recp(c) + Rec<D>::Qg, D, kC, D);
      mm_auto<MATH>(
          bk, D, VS, kC, [&](int m, int k) { return -sA2[k * PD + m]; }, [&](int k, int j) { return sdR[k * PV + j]; },
          [&](int m, int j, float v) { sS[m * PV + j] = sg[m] * sS[m * PV + j] + v; });
      mm_auto<MATH>(
          bk, D, VS, kC, [&](int m, int k) { return sQg[k * PD + m]; }, [&](int k, int j) { return sdO[k * PV + j]; },
          [&](int m, int j, float v) { sS[m * PV + j] += v; });
    }
    if (pipe && c > 0) {
      tilesB(c - 1);  // Y, Qγ, γ_C are dead
      bk.commit();
    }
  }
  if (p.ds0) {
    bk.par(D * VS, [&](int i) {
      const int kk = i / VS, j = i % VS;
      p.ds0[n * p.ds0s[0] + hv * p.ds0s[1] + kk * p.ds0s[2] + (j0 + j) * p.ds0s[3]] = sS[kk * PV + j];
    });
  }
}

// =============================================================================================
// 3. grad-1: block (chunk, value head); everything that touches S or dS, value halves of 64
// =============================================================================================
template <int D>
struct Grad1Layout {
  static constexpr int PD = D + 4, PH = 68, H = 64;
  static constexpr int S = 0, dS = S + D * PH, Y = dS + D * PH, Kt = Y + kC * PD, UR = Kt + kC * PD, dR = UR + kC * PH,
                       dO = dR + kC * PH, Aqk = dO + kC * PH, floats = Aqk + kC * kPC;
};

template <int D, int MATH>
GDR2_HD void grad1_body(const Blk& bk, const P& p, long long cg, int hv, float* sm) {
  using L = Grad1Layout<D>;
  constexpr int PD = L::PD, PH = L::PH, H = L::H;
  const ChunkLoc cl = chunk_loc(p, cg);
  const long long base = cg * p.Hv + hv, DD = (long long)D * D;
  const float* rec = p.rec + base * Rec<D>::floats;
  float* out = p.g1 + base * G1<D>::floats;
  float *sS = sm + L::S, *sdS = sm + L::dS, *sY = sm + L::Y, *sKt = sm + L::Kt, *sUR = sm + L::UR, *sdR = sm + L::dR,
        *sdO = sm + L::dO, *sAqk = sm + L::Aqk;

  copy_tile(bk, sY, PD, rec + Rec<D>::Y, D, kC, D);
  copy_tile(bk, sKt, PD, rec + Rec<D>::Kt, D, kC, D);
  copy_tile(bk, sAqk, kPC, rec + Rec<D>::Aqk, kC, kC, kC);
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
    copy_tile(bk, sdS, PH, p.dstates + base * DD + j0, D, D, H);
    copy_tile(bk, sUR, PH, rec + Rec<D>::U + j0, D, kC, H);
    constexpr int H4 = H / 4;
    bk.par_ld<8>(
        kC * H4,
        [&](int i) {
          const int r = i / H4;
          return r < cl.len ? in_do4(p, cl.bb, cl.t0 + r, hv, j0 + (i % H4) * 4) : splat(0.f);
        },
        [&](int i, const F4& x) { st4(sdO + (i / H4) * PH + (i % H4) * 4, x); });
    bk.sync();
    // R = U − Y S  (16×32 tiles: 8 of 16 warps busy, but 3 operand loads per mma instead
    // of 4 — measured faster than 16 of 16×16, see cuda/NOTES.md backward v12)
    mm<4, MATH>(
        bk, kC, H, D, [&](int r, int k) { return sY[r * PD + k]; }, [&](int k, int j) { return sS[k * PH + j]; },
        [&](int r, int j, float v) { sUR[r * PH + j] -= v; });
    // dR = Aqkᵀ dO + Ktail dS  (= dU), 16×32 tiles as R
    mm<4, MATH>(
        bk, kC, H, kC + D, [&](int r, int k) { return k < kC ? sAqk[k * kPC + r] : sKt[r * PD + k - kC]; },
        [&](int k, int j) { return k < kC ? sdO[k * PH + j] : sdS[(k - kC) * PH + j]; },
        [&](int r, int j, float v) { sdR[r * PH + j] = v; });
    for (int i = bk.tid; i < kC * H / 4; i += bk.nthr) {  // dU → out, 16-byte stores (no barrier:
      const int r = i / (H / 4), j = (i % (H / 4)) * 4;     // sdR is only read from here on)
      st4(out + G1<D>::dU + r * D + j0 + j, ld4(sdR + r * PH + j));
    }
    // dO Sᵀ, dKtail = R dSᵀ, dY = −dR Sᵀ (partial sums over the value halves)
    mm<4, MATH>(
        bk, kC, D, H, [&](int r, int j) { return sdO[r * PH + j]; }, [&](int j, int d) { return sS[d * PH + j]; },
        GlobalOut{out + G1<D>::dQ, D, h, 1.f});
    mm<4, MATH>(
        bk, kC, D, H, [&](int r, int j) { return sUR[r * PH + j]; }, [&](int j, int d) { return sdS[d * PH + j]; },
        GlobalOut{out + G1<D>::X, D, h, 1.f});
    mm<4, MATH>(
        bk, kC, D, H, [&](int r, int j) { return sdR[r * PH + j]; }, [&](int j, int d) { return sS[d * PH + j]; },
        GlobalOut{out + G1<D>::dY, D, h, -1.f});
    // dAqk = dO Rᵀ on and below the diagonal
    // (the strictly upper part of the diagonal tiles is written too: grad-2 never reads it)
    mm<2, MATH, true>(
        bk, kC, kC, H, [&](int r, int j) { return sdO[r * PH + j]; }, [&](int j, int s) { return sUR[s * PH + j]; },
        GlobalOut{out + G1<D>::dAqk, kC, h, 1.f});
    // Σ_j dS ⊙ S per key channel
    bk.par(D, [&](int d) {
      float s = 0.f;
      for (int j = 0; j < H; ++j) s += sS[d * PH + j] * sdS[d * PH + j];
      acc(G1<D>::rs + d, s);
    });
  }
}

// =============================================================================================
// 4. grad-2: block (chunk, value head); the WY backward, decayed applies, dG, outputs
// =============================================================================================
template <int D>
struct Grad2Layout {
  static constexpr int PD = D + 4, P1 = 2 * D + 8, P2 = 2 * D + 4, PI = D + 8;  // PI: 16-bit tiles
  static constexpr int R0 = 0;                 // A, then dT                    [C][PC]
  static constexpr int R1 = R0 + kC * kPC;     // [dY dU] → [Y U] → G | X2      [C][P1]
  static constexpr int X2 = R1 + kC * PD;      //                               [C][PD]
  static constexpr int R2 = R1 + kC * P1;      // [dĒ dZ] → [dBk dQs] → [dG db] [C][P2]
  static constexpr int dAqk = R2 + kC * P2;    //                               [C][PC]
  static constexpr int In = dAqk + kC * kPC;   // q, k, b as 16-bit (not fp32)  3 × [C][PI]
  static constexpr int rs = In + 3 * kC * PI / 2;
  static constexpr int diag = rs + D, bw = diag + kC, floats = bw + kC;
};

template <int D, int MATH>
GDR2_HD void grad2_body(const Blk& bk, const P& p, long long cg, int hv, float* sm) {
  using L = Grad2Layout<D>;
  constexpr int PD = L::PD, P1 = L::P1, P2 = L::P2, PI = L::PI;
  const ChunkLoc cl = chunk_loc(p, cg);
  const int last = cl.len - 1, bb = cl.bb, t0 = cl.t0;
  const long long base = cg * p.Hv + hv;
  const float* rec = p.rec + base * Rec<D>::floats;
  const float* g1 = p.g1 + base * G1<D>::floats;
  float *R0 = sm + L::R0, *R1 = sm + L::R1, *sG = sm + L::R1, *sX2 = sm + L::X2, *R2 = sm + L::R2,
        *sdAqk = sm + L::dAqk, *rsv = sm + L::rs, *diag = sm + L::diag, *bw = sm + L::bw;
  // q, k, b of the chunk: 16-bit inputs as raw patterns in shared memory; fp32 inputs
  // straight from global memory (through L1: tiles of twice the bytes do not fit at
  // D = 128 beside the rest, 222 of the 227 KB), rows past the chunk read as zeros.
  std::uint16_t* q16 = reinterpret_cast<std::uint16_t*>(sm + L::In);
  std::uint16_t* k16 = q16 + kC * PI;
  std::uint16_t* b16 = k16 + kC * PI;
  const int dt = p.dtype, hk = hv / p.group;
  const float scale = p.scale;
  const long long oq = act(p.sq, bb, t0, hk), ok = act(p.sk, bb, t0, hk);
  const long long ob = p.tied ? act(p.sbeta, bb, t0, ghead(hv, p.hg_beta, p.Hv)) : act(p.sb, bb, t0, ghead(hv, p.hg_b, p.Hv));
  const long long stb = p.tied ? p.sbeta.t : p.sb.t, sdb = p.tied ? 0 : 1;
  const void* gb = p.tied ? p.beta : p.b;
  const int len = cl.len;
  auto Kc = [&](int r, int d) {
    if (dt != kF32) return cvt16(k16[r * PI + d], dt);
    return r < len ? static_cast<const float*>(p.k)[ok + r * p.sk.t + d] : 0.f;
  };
  auto Qs = [&](int r, int d) {
    if (dt != kF32) return scale * cvt16(q16[r * PI + d], dt);
    return r < len ? scale * static_cast<const float*>(p.q)[oq + r * p.sq.t + d] : 0.f;
  };
  auto Bg = [&](int r, int d) {
    if (dt != kF32) return cvt16(b16[r * PI + d], dt);
    return r < len ? static_cast<const float*>(gb)[ob + r * stb + d * sdb] : 0.f;
  };

  // a. loads (only the lower triangle of dAqk is ever read)
  copy_tile(bk, R0, kPC, rec + Rec<D>::A, kC, kC, kC);
  copy_tile(bk, sdAqk, kPC, g1 + G1<D>::dAqk, kC, kC, kC);
  copy_tile(bk, R1, P1, g1 + G1<D>::dY, D, kC, D);
  copy_tile(bk, R1 + D, P1, g1 + G1<D>::dU, D, kC, D);
  copy_tile(bk, rsv, D, g1 + G1<D>::rs, D, 1, D);
  struct Raw3 {
    U4 q, k, b;
  };
  constexpr int D4 = D / 4;
  if (dt != kF32) {
    bk.par_ld<8>(
        kC * D4,
        [&](int i) {
          const int r = i / D4, d = (i % D4) * 4;
          if (r >= len) return Raw3{};
          const std::uint16_t beta = p.tied ? static_cast<const std::uint16_t*>(p.beta)[ob + r * stb] : 0;
          return Raw3{ld_raw4(p.q, oq + r * p.sq.t + d, p.vec), ld_raw4(p.k, ok + r * p.sk.t + d, p.vec),
                      p.tied ? U4{beta, beta, beta, beta} : ld_raw4(p.b, ob + r * stb + d, p.vec)};
        },
        [&](int i, const Raw3& x) {
          const int o = (i / D4) * PI + (i % D4) * 4;
          std::memcpy(q16 + o, &x.q, 8);
          std::memcpy(k16 + o, &x.k, 8);
          std::memcpy(b16 + o, &x.b, 8);
        });
  }
  bk.sync();
  // b. [dĒ dZ] = Aᵀ [dY dU]
  mm<4, MATH>(
      bk, kC, 2 * D, kC, [&](int r, int s) { return R0[s * kPC + r]; }, [&](int s, int n) { return R1[s * P1 + n]; },
      [&](int r, int n, float v) { R2[r * P2 + n] = v; });
  // c. [Y U] into R1; dT ← 0
  copy_tile(bk, R1, P1, rec + Rec<D>::Y, D, kC, D);
  copy_tile(bk, R1 + D, P1, rec + Rec<D>::U, D, kC, D);
  bk.par(kC * kC, [&](int i) { R0[(i / kC) * kPC + i % kC] = 0.f; });
  // d. dT = −strict_lower([dĒ dZ] [Y U]ᵀ)
  mm<2, MATH, true>(
      bk, kC, kC, 2 * D, [&](int r, int n) { return R2[r * P2 + n]; }, [&](int n, int s) { return R1[s * P1 + n]; },
      [&](int r, int s, float v) { R0[r * kPC + s] = s < r ? -v : 0.f; });
  // e. log-decays (log2 units) over the dead [Y U]; dv = dZ ⊙ w, dw = dZ ⊙ v (kept in
  //    place of dZ for the tied gates' row sums)
  struct GVW {
    F4 g, v, w;
  };
  bk.par_ld<4>(
      cl.len * D4,
      [&](int i) {
        const int r = i / D4, d = (i % D4) * 4, t = t0 + r;
        return GVW{in_g4(p, bb, t, hv, d), in_v4(p, bb, t, hv, d), in_w4(p, bb, t, hv, d)};
      },
      [&](int i, const GVW& x) {
        const int r = i / D4, d0 = (i % D4) * 4, t = t0 + r;
        st4(sG + r * PD + d0, x.g);
        const F4 dz = ld4(R2 + r * P2 + D + d0), dw = mul4(dz, x.v);
        put4(p, p.dv, bb, t, hv, d0, mul4(dz, x.w));
        if (!p.tied) put4(p, p.dw, bb, t, hv, d0, dw);
        st4(R2 + r * P2 + D + d0, dw);
      });
  bk.par((kC - cl.len) * D, [&](int i) {
    const int r = cl.len + i / D, d = i % D;
    sG[r * PD + d] = 0.f;
    R2[r * P2 + D + d] = 0.f;
  });
  // cumulative sums; dAqk's diagonal apart; tied gates: bw_r = Σ_j dw_j
  bk.par(D + kC, [&](int i) {
    if (i < D) {
      float s = 0.f;
      for (int r = 0; r < kC; ++r) {
        s += sG[r * PD + i];
        sG[r * PD + i] = s;
      }
    } else {
      const int r = i - D;
      diag[r] = sdAqk[r * kPC + r];
      sdAqk[r * kPC + r] = 0.f;
      float s = 0.f;
      if (p.tied)
        for (int j = 0; j < D; ++j) s += R2[r * P2 + D + j];
      bw[r] = s;
    }
  });
  // f. dBk = dĒ ⊙ γ; dQs = (dO Sᵀ) ⊙ γ; X2 ← 0
  bk.par_ld<8>(
      kC * D, [&](int i) { return g1[G1<D>::dQ + i]; },
      [&](int i, float dq) {
        const int r = i / D, d = i % D;
        const float gam = ex2n(sG[r * PD + d]);
        R2[r * P2 + d] *= gam;
        R2[r * P2 + D + d] = dq * gam;
        sX2[r * PD + d] = 0.f;
      });
  bk.sync();
  // g. decayed applies, off-diagonal sub-blocks (anchored products)
  for (int ib = 1; ib < kC / kSub; ++ib) {
    const int a = kSub * ib - 1;
    mm<2, MATH>(  // 16×16 tiles: 2·D/16 of them, a tile per warp at D = 128
        bk, 32, D, kSub * ib,
        [&](int m, int s) {
          const int r = kSub * ib + (m & 15);
          return m < 16 ? R0[r * kPC + s] : sdAqk[r * kPC + s];
        },
        [&](int s, int d) { return Kc(s, d) * ex2n(sG[a * PD + d] - sG[s * PD + d]); },
        [&](int m, int d, float v) {
          const int r = kSub * ib + (m & 15);
          R2[r * P2 + (m < 16 ? 0 : D) + d] += v * ex2n(sG[r * PD + d] - sG[a * PD + d]);
        });
  }
  for (int jb = 0; jb + 1 < kC / kSub; ++jb) {
    const int e = kSub * jb + 15, r0 = kSub * (jb + 1), Lr = kC - r0;
    mm<1, MATH>(  // 16×8 tiles: D/8 of them, a tile per warp at D = 128
        bk, 16, D, 2 * Lr,
        [&](int m, int k) {
          const int s = kSub * jb + m;
          return k < Lr ? R0[(r0 + k) * kPC + s] : sdAqk[(r0 + k - Lr) * kPC + s];
        },
        [&](int k, int d) {
          const int r = r0 + (k < Lr ? k : k - Lr);
          const float x = k < Lr ? Bg(r, d) * Kc(r, d) : Qs(r, d);
          return x * ex2n(sG[r * PD + d] - sG[e * PD + d]);
        },
        [&](int m, int d, float v) {
          const int s = kSub * jb + m;
          sX2[s * PD + d] += v * ex2n(sG[e * PD + d] - sG[s * PD + d]);
        });
  }
  // h. decayed applies, diagonal sub-blocks: one thread per (sub-block, channel), both
  //    sides from one exponential per pair: rows dBk_r, dQs_r += Σ_{s<r} …, columns
  //    X2_s += Σ_{r>s} … (accumulated in registers)
  bk.par((kC / kSub) * D, [&](int item) {
    const int o = kSub * (item / D), d = item % D;
    float Gs[16], ks[16], ax[16];
    GDR2_UNROLL
    for (int i = 0; i < 16; ++i) {
      Gs[i] = sG[(o + i) * PD + d];
      ks[i] = Kc(o + i, d);
      ax[i] = 0.f;
    }
    GDR2_UNROLL
    for (int r = 1; r < 16; ++r) {
      const float bkr = Bg(o + r, d) * ks[r], qr = Qs(o + r, d);
      float ab = 0.f, aq = 0.f;
      GDR2_UNROLL
      for (int s = 0; s < r; ++s) {
        const float e = ex2n(Gs[r] - Gs[s]), ke = ks[s] * e;
        const float t = R0[(o + r) * kPC + o + s], a = sdAqk[(o + r) * kPC + o + s];
        ab += t * ke;
        aq += a * ke;
        ax[s] += (t * bkr + a * qr) * e;
      }
      R2[(o + r) * P2 + d] += ab;
      R2[(o + r) * P2 + D + d] += aq;
    }
    GDR2_UNROLL
    for (int s = 0; s < 15; ++s) sX2[(o + s) * PD + d] += ax[s];
  });
  // i. dq, dk, db per element; dG (before its cumulative sum) into R2's left half,
  //    db into its right half, dKtail ⊙ Ktail into X2 (for the last row's column sum)
  bk.par(kC * D - cl.len * D, [&](int i) {
    const int r = cl.len + i / D, d = i % D;
    R2[r * P2 + d] = 0.f;
    R2[r * P2 + D + d] = 0.f;
    sX2[r * PD + d] = 0.f;
  });
  bk.par_ld<4>(
      cl.len * D4, [&](int i) { return ld4(g1 + G1<D>::X + i * 4); },
      [&](int i, const F4& xk4) {  // xk: dKtail, four channels per item
        const int r = i / D4, d0 = (i % D4) * 4;
        const int t = t0 + r;
        float oq[4], ok[4], ob[4];
        GDR2_UNROLL
        for (int u = 0; u < 4; ++u) {
          const int d = d0 + u;
          const float xk = at4(xk4, u);
          const float kk = Kc(r, d), qs = Qs(r, d), bg = Bg(r, d), bkv = bg * kk;
          const float kf = ex2n(sG[last * PD + d] - sG[r * PD + d]);
          const float dqs = R2[r * P2 + D + d], dbk = R2[r * P2 + d], x2 = sX2[r * PD + d];
          const float xt = xk * kk * kf;  // dKtail ⊙ Ktail
          const float dG = qs * dqs + bkv * dbk - kk * x2 - (r < last ? xt : 0.f);
          oq[u] = scale * (dqs + diag[r] * kk);
          ok[u] = xk * kf + x2 + diag[r] * qs + dbk * bg;
          ob[u] = dbk * kk;
          R2[r * P2 + d] = dG;
          R2[r * P2 + D + d] = dbk * kk;
          sX2[r * PD + d] = r < last ? xt : 0.f;
        }
        put4(p, p.dq, bb, t, hv, d0, {oq[0], oq[1], oq[2], oq[3]});
        put4(p, p.dk, bb, t, hv, d0, {ok[0], ok[1], ok[2], ok[3]});
        if (!p.tied) put4(p, p.db, bb, t, hv, d0, {ob[0], ob[1], ob[2], ob[3]});
      });
  bk.sync();
  // j. the last row's terms, then dg = reverse cumulative sum of dG
  bk.par(D, [&](int d) {
    if (cl.len <= 0) return;
    float tot = 0.f;
    for (int r = 0; r < last; ++r) tot += sX2[r * PD + d];
    R2[last * P2 + d] += tot + rsv[d] * ex2n(sG[last * PD + d]);
    float run = 0.f;
    for (int r = last; r >= 0; --r) {
      run += R2[r * P2 + d];
      R2[r * P2 + d] = run;
      if (!p.scalar_decay) put(p.dg, bb, t0 + r, hv, d, run);
    }
  });
  // k. per-token reductions of tied / scalar gates
  if (p.tied || p.scalar_decay) {
    bk.par(kC, [&](int r) {
      if (r >= cl.len) return;
      float sg = 0.f, sb = 0.f;
      for (int d = 0; d < D; ++d) {
        sg += R2[r * P2 + d];
        sb += R2[r * P2 + D + d];
      }
      if (p.scalar_decay) put(p.dg, bb, t0 + r, hv, 0, sg);
      if (p.tied) put(p.dbeta, bb, t0 + r, hv, 0, sb + bw[r]);
    });
  }
}

// =============================================================================================
// 5. head sums: dst[b, t, h, x] = Σ_{i < ratio} src[b, t, h·ratio + i, x], in order
// =============================================================================================
GDR2_HD void reduce_elem(const P& p, const BwdReduce& r, long long idx) {
  const int x = int(idx % r.width);
  const long long rest = idx / r.width;
  const int h = int(rest % r.heads);
  const long long bt = rest / r.heads;  // b·T + t
  const int t = int(bt % p.T), b = int(bt / p.T);
  const float* src = r.src + (bt * p.Hv + (long long)h * r.ratio) * r.width + x;
  float s = 0.f;
  for (int i = 0; i < r.ratio; ++i) s += src[(long long)i * r.width];
  r.dst[(long long)b * r.sb + (long long)t * r.st + (long long)h * r.sh + x] = s;
}

}  // namespace bwd
}  // namespace detail
}  // namespace cuda
}  // namespace gdr2
