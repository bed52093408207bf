// A complete Gated DeltaNet-2 token mixer forward in C++ (random weights).
//
// The layer, per token x ∈ R^d_model (Hk key heads of width K, Hv = G·Hk value
// heads of width V):
//
//   q, k, v  = short causal depthwise conv (width 4) of x·Wq, x·Wk, x·Wv, then SiLU
//   q, k     ← L2-normalised per head
//   b        = sigmoid(x·Wb)               erase gate, per value head and key channel
//   w        = sigmoid(x·Ww)               write gate, per value head and value channel
//   g        = −exp(A_log) · softplus(x·Wa + dt_bias)   log-decay (A_log per head,
//              dt_bias per key channel), in fp32
//   o        = the Gated DeltaNet-2 recurrence (gdr2) on q, k, v, g, b, w
//   y        = (RMSNorm(o) per head · norm_weight ⊙ SiLU(x·Wgate)) · Wo
//
// The same layer is then run two ways on one sequence of 80 tokens:
//   A  the whole sequence in one call (chunk engine);
//   B  a prefill of the first 50 tokens (chunk engine), then 30 decode steps of one
//      token each (decode_step), carrying the conv state (the last 3 inputs of each
//      conv) and the recurrent state [1, Hv, K, V] between calls, as a server does.
// Both must give the same outputs, and the same states at the end.
//
//   ./token_mixer
#include <gdr2/gdr2.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

using namespace gdr2;

namespace {

using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowVec = Eigen::RowVectorXf;

struct Config {
  Index d_model = 64, Hk = 2, Hv = 4, K = 16, V = 16;
  Index conv_width = 4;
  float norm_eps = 1e-6f;
};

/// The layer's weights. Projections are [in, out] so that activations are rows.
struct Params {
  Mat Wq, Wk, Wv;              ///< [d, Hk·K], [d, Hk·K], [d, Hv·V]
  Mat conv_q, conv_k, conv_v;  ///< depthwise causal conv kernels [channels, width]
  Mat Wb, Ww;                  ///< erase / write gate projections [d, Hv·K], [d, Hv·V]
  Mat Wa;                      ///< decay projection [d, Hv·K]
  RowVec A_log;                ///< [Hv]
  RowVec dt_bias;              ///< [Hv·K]
  Mat Wgate;                   ///< output gate projection [d, Hv·V]
  RowVec norm_weight;          ///< RMSNorm weight [V], shared by the heads
  Mat Wo;                      ///< output projection [Hv·V, d]

  Params(const Config& c, std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    auto randn = [&](Index r, Index cols, float std) {
      Mat m(r, cols);
      for (Index i = 0; i < m.size(); ++i) m.data()[i] = std * normal(rng);
      return m;
    };
    const float s = 1.0f / std::sqrt(float(c.d_model));
    Wq = randn(c.d_model, c.Hk * c.K, s);
    Wk = randn(c.d_model, c.Hk * c.K, s);
    Wv = randn(c.d_model, c.Hv * c.V, s);
    conv_q = randn(c.Hk * c.K, c.conv_width, 0.5f);
    conv_k = randn(c.Hk * c.K, c.conv_width, 0.5f);
    conv_v = randn(c.Hv * c.V, c.conv_width, 0.5f);
    Wb = randn(c.d_model, c.Hv * c.K, s);
    Ww = randn(c.d_model, c.Hv * c.V, s);
    Wa = randn(c.d_model, c.Hv * c.K, 0.5f * s);
    // Mamba-style initialisation: A = exp(A_log) ∈ [1, 16]; softplus(dt_bias) = dt
    // log-uniform in [1e-3, 1e-1], i.e. dt_bias = dt + log(−expm1(−dt)).
    A_log.resize(c.Hv);
    for (Index h = 0; h < c.Hv; ++h) A_log[h] = std::log(1.0f + 15.0f * uniform(rng));
    dt_bias.resize(c.Hv * c.K);
    for (Index i = 0; i < dt_bias.size(); ++i) {
      const float dt = std::exp(std::log(1e-3f) + uniform(rng) * (std::log(1e-1f) - std::log(1e-3f)));
      dt_bias[i] = dt + std::log(-std::expm1(-dt));
    }
    Wgate = randn(c.d_model, c.Hv * c.V, s);
    norm_weight = RowVec::Ones(c.V) + 0.1f * randn(1, c.V, 1.0f);
    Wo = randn(c.Hv * c.V, c.d_model, 1.0f / std::sqrt(float(c.Hv * c.V)));
  }

  Index count() const {
    Index n = 0;
    for (const Mat* m : {&Wq, &Wk, &Wv, &conv_q, &conv_k, &conv_v, &Wb, &Ww, &Wa, &Wgate, &Wo}) n += m->size();
    return n + A_log.size() + dt_bias.size() + norm_weight.size();
  }
};

/// What a decoding layer carries from one call to the next.
struct LayerState {
  Mat conv_q, conv_k, conv_v;  ///< the last width−1 conv inputs, oldest first [width−1, channels]
  Tensor<float> S;             ///< recurrent state [1, Hv, K, V] (a pool of one slot)

  explicit LayerState(const Config& c)
      : conv_q(Mat::Zero(c.conv_width - 1, c.Hk * c.K)),
        conv_k(Mat::Zero(c.conv_width - 1, c.Hk * c.K)),
        conv_v(Mat::Zero(c.conv_width - 1, c.Hv * c.V)),
        S(1, c.Hv, c.K, c.V) {}
};

float silu(float x) { return x / (1.0f + std::exp(-x)); }
float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
float softplus(float x) { return x > 20.0f ? x : std::log1p(std::exp(x)); }

/// SiLU(causal depthwise conv of u [T, C] with kernels [C, W]); `state` holds the
/// W−1 inputs before u and is advanced past it.
Mat causal_conv_silu(const Mat& u, const Mat& kernel, Mat& state) {
  const Index T = u.rows(), C = u.cols(), W = kernel.cols();
  Mat ext(W - 1 + T, C);
  ext << state, u;
  Mat y(T, C);
  for (Index t = 0; t < T; ++t)
    for (Index c = 0; c < C; ++c) {
      float acc = 0;
      for (Index j = 0; j < W; ++j) acc += kernel(c, j) * ext(t + j, c);  // j = W−1 is the current token
      y(t, c) = silu(acc);
    }
  state = ext.bottomRows(W - 1);
  return y;
}

/// Normalise each head's D-wide segment of every row to unit L2 norm.
void l2norm_heads(Mat& x, Index H, Index D) {
  for (Index t = 0; t < x.rows(); ++t)
    for (Index h = 0; h < H; ++h) {
      auto seg = x.row(t).segment(h * D, D);
      seg /= std::sqrt(seg.squaredNorm() + 1e-6f);
    }
}

/// Diagnostics of one forward call.
struct Stats {
  float g_min = 0, g_mean = 0;
  double recurrence_vs_fp64 = -1;  ///< set when asked for
};

/// The layer on a block of T tokens x [T, d_model], continuing from `st` (and
/// advancing it). `decode` = one token through decode_step; otherwise the chunk
/// engine. With `check_fp64`, the recurrence is compared with the fp64 reference.
Mat layer_forward(const Params& P, const Config& c, const Mat& x, LayerState& st, bool decode, Stats* stats = nullptr,
                  bool check_fp64 = false) {
  const Index T = x.rows();
  // Projections, short convolutions, L2 norm.
  Mat q = causal_conv_silu(x * P.Wq, P.conv_q, st.conv_q);
  Mat k = causal_conv_silu(x * P.Wk, P.conv_k, st.conv_k);
  Mat v = causal_conv_silu(x * P.Wv, P.conv_v, st.conv_v);
  l2norm_heads(q, c.Hk, c.K);
  l2norm_heads(k, c.Hk, c.K);
  // Gates: erase b, write w, and the decay g = −exp(A_log)·softplus(x·Wa + dt_bias).
  Mat b = (x * P.Wb).unaryExpr([](float z) { return sigmoid(z); });
  Mat w = (x * P.Ww).unaryExpr([](float z) { return sigmoid(z); });
  Mat g = x * P.Wa;
  for (Index t = 0; t < T; ++t)
    for (Index h = 0; h < c.Hv; ++h)
      for (Index i = 0; i < c.K; ++i) {
        const Index j = h * c.K + i;
        g(t, j) = -std::exp(P.A_log[h]) * softplus(g(t, j) + P.dt_bias[j]);
      }
  if (stats) stats->g_min = g.minCoeff(), stats->g_mean = g.mean();

  // The recurrence: token-major [1, T, H, D] views straight over the row-major matrices.
  Problem<float> p;
  p.q = make_view<const float>(q.data(), 1, T, c.Hk, c.K);
  p.k = make_view<const float>(k.data(), 1, T, c.Hk, c.K);
  p.v = make_view<const float>(v.data(), 1, T, c.Hv, c.V);
  p.g = make_view<const float>(g.data(), 1, T, c.Hv, c.K);
  p.b = make_view<const float>(b.data(), 1, T, c.Hv, c.K);
  p.w = make_view<const float>(w.data(), 1, T, c.Hv, c.V);
  Mat o(T, c.Hv * c.V);
  const View<float> o_view = make_view(o.data(), 1, T, c.Hv, c.V);
  if (check_fp64) {
    p.initial_state = st.S.view();
    const auto ref = reference_forward<GDR2>(p);
    check(ref.status);
    Mat o_chk(T, c.Hv * c.V);
    Tensor<float> s_chk(1, c.Hv, c.K, c.V);
    check(chunk_forward<GDR2>(p, Outputs<float, float>{make_view(o_chk.data(), 1, T, c.Hv, c.V), s_chk.view()}));
    if (stats) stats->recurrence_vs_fp64 = rel_error(make_view<const float>(o_chk.data(), 1, T, c.Hv, c.V), ref.o.view());
  }
  if (decode) {
    const std::int32_t slot = 0;  // this layer's state is slot 0 of a pool of one
    check(decode_step<GDR2>(p, st.S.view(), &slot, o_view));
  } else {
    p.initial_state = st.S.view();
    check(chunk_forward<GDR2>(p, Outputs<float, float>{o_view, st.S.view()}));  // state updated in place
  }

  // RMSNorm per head with a SiLU output gate, then the output projection.
  const Mat gate = x * P.Wgate;
  for (Index t = 0; t < T; ++t)
    for (Index h = 0; h < c.Hv; ++h) {
      auto seg = o.row(t).segment(h * c.V, c.V);
      const float inv_rms = 1.0f / std::sqrt(seg.squaredNorm() / float(c.V) + c.norm_eps);
      for (Index j = 0; j < c.V; ++j) seg[j] = seg[j] * inv_rms * P.norm_weight[j] * silu(gate(t, h * c.V + j));
    }
  return o * P.Wo;
}

double rel(const Mat& a, const Mat& b) { return double((a - b).norm() / b.norm()); }

}  // namespace

int main() {
  const Config c;
  const Params P(c, 42);
  const Index T = 80, prefill = 50;
  Mat x(T, c.d_model);
  std::mt19937_64 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = normal(rng);

  std::printf("token_mixer: Gated DeltaNet-2 layer, d_model=%ld, Hk=%ld key heads, Hv=%ld value heads, K=%ld, V=%ld,\n"
              "             conv width %ld, %ld parameters (random), fp32\n",
              long(c.d_model), long(c.Hk), long(c.Hv), long(c.K), long(c.V), long(c.conv_width), long(P.count()));

  // A: the whole sequence in one call.
  LayerState sa(c);
  Stats stats;
  const Mat ya = layer_forward(P, c, x, sa, /*decode=*/false, &stats, /*check_fp64=*/true);
  std::printf("  decay g per token and key channel: min %.2f, mean %.3f\n", stats.g_min, stats.g_mean);
  std::printf("  A  %ld tokens in one call (chunk engine); its recurrence vs the fp64 reference: %.2e\n", long(T),
              stats.recurrence_vs_fp64);

  // B: prefill, then one token at a time, carrying conv and recurrent state.
  LayerState sb(c);
  Mat yb(T, c.d_model);
  yb.topRows(prefill) = layer_forward(P, c, x.topRows(prefill), sb, /*decode=*/false);
  for (Index t = prefill; t < T; ++t) yb.row(t) = layer_forward(P, c, x.row(t), sb, /*decode=*/true);
  std::printf("  B  prefill %ld tokens (chunk engine), then %ld decode steps (decode_step)\n", long(prefill),
              long(T - prefill));

  const double e_pre = rel(yb.topRows(prefill), ya.topRows(prefill));
  const double e_dec = rel(yb.bottomRows(T - prefill), ya.bottomRows(T - prefill));
  const double e_state = rel_error(sb.S.view(), sa.S.view());
  const double e_conv = std::max({rel(sb.conv_q, sa.conv_q), rel(sb.conv_k, sa.conv_k), rel(sb.conv_v, sa.conv_v)});
  std::printf("\n  B vs A, relative error of\n");
  std::printf("    layer outputs, prefill tokens   %.2e\n", e_pre);
  std::printf("    layer outputs, decoded tokens   %.2e\n", e_dec);
  std::printf("    final recurrent state           %.2e\n", e_state);
  std::printf("    final conv state                %.2e\n", e_conv);
  const bool same = std::max({e_pre, e_dec, e_state, e_conv}) < 1e-5 && stats.recurrence_vs_fp64 < 1e-5;
  std::printf("\n  prefill + decode gives the same outputs as one call (< 1e-5): %s\n", same ? "yes" : "NO");
  return same ? 0 : 1;
}
