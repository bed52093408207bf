// Host study (cuda/NOTES.md, backward item 13): the backward's reverse state recurrence
//   dR = Aqkᵀ dO + Ktail dS,   dS ← γ_C ⊙ dS + Qγᵀ dO − Yᵀ dR      (per chunk, last to first)
// in fp64 against the same recurrence with fp16-rounded operands and fp32 accumulation, as
// fp16 warpgroup MMAs would compute it, (a) unscaled, (b) with the range scheme of item 13:
// Qγ, Y, γ_C stored times 2^{−f_c} (f_c = ⌊log2 max_r γ_r⌋ of the chunk), and a per-warp
// (16 value columns) power-of-2 exponent E for dS and dO, renewed every step from the larger
// of max|dS| and max|dO_c|. The chunk quantities come from random q, k, b, g (channel-wise
// decays, SPEC §3) in fp64. Build and run (no GPU): g++ -O2 -std=c++17 -I/usr/include/eigen3
// cuda/experiments/r13_reverse_fp16_study.cpp -o /tmp/r13 && /tmp/r13
#include <Eigen/Dense>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using M = Eigen::MatrixXd;
constexpr int C = 64;

struct Chunk {
  M Qg, Kt, Y, Aqk;  // [C][K], [C][K], [C][K], [C][C]
  Eigen::VectorXd gC;  // [K]
  double gamma0;       // max_r,d γ_r[d]
};

static double h16(double x) { return double(float(Eigen::half(float(x)))); }
static M round16(const M& x) { return x.unaryExpr([](double v) { return h16(v); }); }
static M round32(const M& x) { return x.unaryExpr([](double v) { return double(float(v)); }); }

int main() {
  const int K = 128, V = 128;
  struct Case { const char* name; int T; double gmin, gmax, bmax, dOscale; unsigned seed; bool scalar = false; };
  const Case cases[] = {
      {"strong decay g>=-20", 1024 + 37, -20.0, 0.0, 2.0, 1.0, 1},
      {"scalar strong decay g>=-20 (GDN)", 1024 + 37, -20.0, 0.0, 2.0, 1.0, 7, true},
      {"scalar g>=-20, dO x2^16", 1024 + 37, -20.0, 0.0, 2.0, 65536.0, 8, true},
      {"scalar g in [-3,-1]", 2048 + 37, -3.0, -1.0, 2.0, 1.0, 9, true},
      {"strong decay, dO x2^16", 1024 + 37, -20.0, 0.0, 2.0, 65536.0, 2},
      {"medium decay g>=-1", 2048 + 5, -1.0, 0.0, 2.0, 1.0, 3},
      {"weak decay g>=-0.02, long", 8192 + 9, -0.02, 0.0, 1.0, 1.0, 4},
      {"weak decay, dO x2^-24", 4096 + 9, -0.02, 0.0, 1.0, 1.0 / 16777216.0, 5},
      {"no erase b=0, weak decay, long", 8192, -0.005, 0.0, 0.0, 1.0, 6},
  };
  for (const Case& cs : cases) {
    std::mt19937_64 rng(cs.seed);
    std::normal_distribution<double> nd(0, 1);
    std::uniform_real_distribution<double> ug(cs.gmin, cs.gmax), ub(0, cs.bmax);
    const int nc = (cs.T + C - 1) / C;
    const double scale = 1.0 / std::sqrt(double(K));
    std::vector<Chunk> ch(nc);
    std::vector<M> dO(nc);
    for (int c = 0; c < nc; ++c) {
      const int n = std::min(C, cs.T - c * C);
      M q = M::Zero(C, K), k = M::Zero(C, K), b = M::Zero(C, K), g = M::Zero(C, K);
      for (int r = 0; r < n; ++r) {
        double qn = 0, kn = 0;
        const double gr = ug(rng);
        for (int d = 0; d < K; ++d) { q(r, d) = nd(rng); k(r, d) = nd(rng); b(r, d) = ub(rng); g(r, d) = cs.scalar ? gr : ug(rng); }
        qn = q.row(r).norm(); kn = k.row(r).norm();
        q.row(r) /= qn; k.row(r) /= kn;  // L2-normalised q, k (as models use them)
      }
      M G = g;  // cumulative sums
      for (int r = 1; r < C; ++r) G.row(r) += G.row(r - 1);
      const int last = n - 1;
      Chunk& x = ch[c];
      x.Qg = M::Zero(C, K); x.Kt = M::Zero(C, K); x.Y = M::Zero(C, K); x.Aqk = M::Zero(C, C);
      M T = M::Zero(C, C), E = M::Zero(C, K);
      for (int r = 0; r < n; ++r)
        for (int d = 0; d < K; ++d) {
          x.Qg(r, d) = scale * q(r, d) * std::exp(G(r, d));
          x.Kt(r, d) = k(r, d) * std::exp(G(last, d) - G(r, d));
          E(r, d) = std::exp(G(r, d)) * b(r, d) * k(r, d);
        }
      for (int r = 0; r < n; ++r)
        for (int s = 0; s <= r; ++s) {
          double t = 0, a = 0;
          for (int d = 0; d < K; ++d) {
            const double f = std::exp(G(r, d) - G(s, d));
            t += b(r, d) * k(r, d) * k(s, d) * f;
            a += scale * q(r, d) * k(s, d) * f;
          }
          if (s < r) T(r, s) = t;
          x.Aqk(r, s) = a;
        }
      const M A = (M::Identity(C, C) + T).triangularView<Eigen::Lower>().solve(M::Identity(C, C));
      x.Y = A * E;
      x.gC = G.row(last).transpose().array().exp();
      x.gamma0 = G.row(0).array().exp().maxCoeff();
      dO[c] = M::Zero(C, V);
      for (int r = 0; r < n; ++r)
        for (int j = 0; j < V; ++j) dO[c](r, j) = cs.dOscale * nd(rng);
    }
    // fp64 reference: dS_c for c = nc−1 .. 0 (the state gradient at each chunk's start)
    std::vector<M> ref(nc), un(nc), sc(nc);
    {
      M dS = M::Zero(K, V);
      for (int c = nc - 1; c >= 0; --c) {
        const Chunk& x = ch[c];
        const M dR = x.Aqk.transpose() * dO[c] + x.Kt * dS;
        dS = x.gC.asDiagonal() * dS + x.Qg.transpose() * dO[c] - x.Y.transpose() * dR;
        ref[c] = dS;
      }
    }
    // (a) unscaled fp16 operands, fp32 accumulation
    {
      M dS = M::Zero(K, V);
      for (int c = nc - 1; c >= 0; --c) {
        const Chunk& x = ch[c];
        const M o = round16(dO[c]);
        const M dR = round32(round16(x.Aqk).transpose() * o + round16(x.Kt) * round16(dS));
        dS = round32(round32(x.gC).asDiagonal() * dS + round16(x.Qg).transpose() * o - round16(x.Y).transpose() * round16(dR));
        un[c] = dS;
      }
    }
    // (b) the scheme: per 16-column group w an exponent E[w]; dS_reg = dS·2^{−E}
    {
      const int W = V / 16;
      M dS = M::Zero(K, V);  // registers (scaled)
      std::vector<int> Ew(W, 0);
      for (int c = nc - 1; c >= 0; --c) {
        const Chunk& x = ch[c];
        const int f = int(std::floor(std::log2(std::max(x.gamma0, 1e-300))));
        const M Qs = round16(std::ldexp(1.0, -f) * x.Qg), Ys = round16(std::ldexp(1.0, -f) * x.Y);
        const Eigen::VectorXd gs = (std::ldexp(1.0, -f) * x.gC).unaryExpr([](double v) { return double(float(v)); });
        M o(C, V);
        for (int w = 0; w < W; ++w) {
          // renew E from the larger of max|dS| and max|dO_c| over the group's columns
          const double mS = dS.middleCols(16 * w, 16).cwiseAbs().maxCoeff() * std::ldexp(1.0, Ew[w]);
          const double mO = dO[c].middleCols(16 * w, 16).cwiseAbs().maxCoeff();
          const double m = std::max(mS, mO);
          if (m > 0) {
            const int En = int(std::ceil(std::log2(m)));
            dS.middleCols(16 * w, 16) *= std::ldexp(1.0, Ew[w] - En);
            dS.middleCols(16 * w, 16) = round32(dS.middleCols(16 * w, 16));
            Ew[w] = En;
          }
          o.middleCols(16 * w, 16) = round16(std::ldexp(1.0, -Ew[w]) * dO[c].middleCols(16 * w, 16));
        }
        const M dR = round32(round16(x.Aqk).transpose() * o + round16(x.Kt) * round16(dS));
        dS = round32(gs.asDiagonal() * dS + Qs.transpose() * o - Ys.transpose() * round16(dR));
        for (int w = 0; w < W; ++w) Ew[w] += f;
        sc[c] = dS;
        for (int w = 0; w < W; ++w) sc[c].middleCols(16 * w, 16) *= std::ldexp(1.0, Ew[w]);
      }
    }
    auto err = [&](const std::vector<M>& got, int c) { return (got[c] - ref[c]).norm() / std::max(ref[c].norm(), 1e-300); };
    double wu = 0, ws = 0, su = 0, ss = 0, sr = 0;
    for (int c = 0; c < nc; ++c) {
      wu = std::max(wu, err(un, c));
      ws = std::max(ws, err(sc, c));
      su += (un[c] - ref[c]).squaredNorm();
      ss += (sc[c] - ref[c]).squaredNorm();
      sr += ref[c].squaredNorm();
    }
    double mx = 0;
    for (int c = 0; c < nc; ++c) mx = std::max(mx, ref[c].cwiseAbs().maxCoeff());
    std::printf("%-32s chunks %3d max|dS| %.2e | unscaled: all %.2e worst chunk %.2e dS_0 %.2e | scheme: all %.2e worst chunk %.2e dS_0 %.2e\n",
                cs.name, nc, mx, std::sqrt(su / sr), wu, err(un, 0), std::sqrt(ss / sr), ws, err(sc, 0));
  }
}
