// How to unit-test your own KDA or Gated DeltaNet kernel with gdr2.
//
// The recipe, for any kernel (C++, CUDA, or anything you can call from C++):
//   1. gdr2::RandomProblem<Policy, T> draws inputs the way models produce them
//      (q, k unit rows; log-decay g ≤ 0; β in [0, b_max]; non-zero initial state
//      if you want one) and rounds them to T (bf16, fp16, fp32, fp64);
//   2. run your kernel on exactly those inputs;
//   3. gdr2::reference_forward<Policy> evaluates the fp64 recurrence on the same
//      (already rounded) inputs, so the only difference left is your kernel's
//      arithmetic — an fp32 kernel should land near 1e-7, far below a 1e-5 bar;
//   4. gdr2::rel_error gives ‖yours − ref‖ / ‖ref‖ over any strided views.
// Vary the shapes: T not a multiple of your tile, K ≠ V, T = 1, strong decay.
//
// Below, "your kernels" are two deliberately plain loops (my_kda_forward,
// my_gdn_forward), plus a copy with a planted bug to show what a failure looks
// like. In a real test suite put the loop body into a Catch2/GoogleTest case:
//
//   RandomProblem<KDA, Eigen::bfloat16> rp(cfg);
//   auto ref = reference_forward<KDA>(rp.problem());
//   ... run your kernel into `mine` ...
//   CHECK(rel_error(mine.view(), ref.o.view()) < 1e-5);
//
//   ./test_your_kernel        (exit status 0 when every check behaves as expected)
#include <gdr2/gdr2.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

using namespace gdr2;

// ---------------------------------------------------------------------------
// "Your" kernels: fp32, contiguous [B, T, H, D] inputs, H heads for everything,
// zero initial state, o [B, T, H, V] and final state [B, H, K, V] out.
// ---------------------------------------------------------------------------

/// A user's Kimi Delta Attention forward: channel-wise decay g [B,T,H,K], one
/// β [B,T,H] for erase and write. `bug_read_before_decay` plants a classic
/// mistake: reading the memory before applying this token's decay.
void my_kda_forward(const float* q, const float* k, const float* v, const float* g, const float* beta, float* o,
                    float* state, int B, int T, int H, int K, int V, bool bug_read_before_decay = false) {
  const float scale = 1.0f / std::sqrt(float(K));
  std::vector<float> S(static_cast<size_t>(K) * V), r(static_cast<size_t>(V));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::fill(S.begin(), S.end(), 0.0f);
      for (int t = 0; t < T; ++t) {
        const size_t tok = (size_t(b) * T + t) * H + h;
        const float* qt = q + tok * K;
        const float* kt = k + tok * K;
        const float* vt = v + tok * V;
        const float* gt = g + tok * K;
        const float bt = beta[tok];
        auto decay = [&] {
          for (int i = 0; i < K; ++i)
            for (int j = 0; j < V; ++j) S[size_t(i) * V + j] *= std::exp(gt[i]);
        };
        if (!bug_read_before_decay) decay();
        for (int j = 0; j < V; ++j) {  // r = Sᵀ (β k)
          float acc = 0;
          for (int i = 0; i < K; ++i) acc += S[size_t(i) * V + j] * bt * kt[i];
          r[size_t(j)] = acc;
        }
        if (bug_read_before_decay) decay();
        for (int i = 0; i < K; ++i)  // S += k (β v − r)ᵀ
          for (int j = 0; j < V; ++j) S[size_t(i) * V + j] += kt[i] * (bt * vt[j] - r[size_t(j)]);
        for (int j = 0; j < V; ++j) {  // o = Sᵀ (scale q)
          float acc = 0;
          for (int i = 0; i < K; ++i) acc += S[size_t(i) * V + j] * scale * qt[i];
          o[tok * V + j] = acc;
        }
      }
      std::copy(S.begin(), S.end(), state + (size_t(b) * H + h) * K * V);
    }
}

/// A user's Gated DeltaNet forward: one log-decay per head g [B,T,H], β [B,T,H].
/// (Written on top of the KDA kernel by broadcasting g over K, as many codebases do.)
void my_gdn_forward(const float* q, const float* k, const float* v, const float* g, const float* beta, float* o,
                    float* state, int B, int T, int H, int K, int V) {
  std::vector<float> g_full(size_t(B) * T * H * K);
  for (size_t tok = 0; tok < size_t(B) * T * H; ++tok)
    for (int i = 0; i < K; ++i) g_full[tok * K + size_t(i)] = g[tok];
  my_kda_forward(q, k, v, g_full.data(), beta, o, state, B, T, H, K, V);
}

// ---------------------------------------------------------------------------
// The test harness: what you would put in your own unit tests.
// ---------------------------------------------------------------------------

/// Run "your" kernel for policy P on a random problem with inputs of type T and
/// compare with the fp64 reference. Returns true when both errors are below `tol`.
template <class P, class T, class Kernel>
bool check_kernel(const char* kernel_name, Kernel&& kernel, ProblemConfig cfg, double tol, bool expect_pass = true) {
  cfg.Hk = cfg.Hv;            // the user's kernel has one head count
  cfg.initial_state = false;  // ... and starts from a zero state
  RandomProblem<P, T> rp(cfg);
  // Your kernel takes fp32: hand it the rounded T values converted back to fp32,
  // so that it and the reference see the same numbers.
  const auto q = rp.q.template cast<float>(), k = rp.k.template cast<float>(), v = rp.v.template cast<float>();
  const auto beta = rp.beta.template cast<float>();
  const auto g = rp.g.template cast<float>();
  auto o = rp.make_output();
  Tensor<float> state(rp.N, cfg.Hv, cfg.K, cfg.V);
  kernel(q.data(), k.data(), v.data(), g.data(), beta.data(), o.data(), state.data(), int(cfg.B), int(cfg.T),
         int(cfg.Hv), int(cfg.K), int(cfg.V));

  const auto ref = reference_forward<P>(rp.problem());
  check(ref.status);
  const double eo = rel_error(o.view(), ref.o.view());
  const double es = rel_error(state.view(), ref.final_state.view());
  const bool pass = eo < tol && es < tol;
  std::printf("  %-16s %-4s %-8s B=%ld T=%-4ld H=%ld K=%-3ld V=%-3ld g>=%-4.0f  %.2e   %.2e    %s\n", kernel_name,
              P::name(), dtype_name<T>(), long(cfg.B), long(cfg.T), long(cfg.Hv), long(cfg.K), long(cfg.V), cfg.g_min,
              eo, es, pass ? "pass" : (expect_pass ? "FAIL" : "fail (expected: planted bug)"));
  return pass == expect_pass;
}

int main() {
  std::printf("test_your_kernel: your kernels against gdr2::reference_forward (fp64 recurrence on the same inputs)\n\n");
  std::printf("  kernel           pol. inputs   shape                      decay    rel.err o  rel.err S_T verdict\n");
  const double tol = 1e-5;  // fp32 kernel vs fp64: ~1e-7 measured; 1e-5 leaves room for long sequences
  auto cfg = [](Index B, Index T, Index H, Index K, Index V, double g_min) {
    ProblemConfig c;
    c.B = B, c.T = T, c.Hv = H, c.K = K, c.V = V, c.g_min = g_min;
    c.b_max = 1.0;
    c.seed = std::uint64_t(T * 131 + K);
    return c;
  };
  bool ok = true;
  auto kda = [](auto&&... a) { my_kda_forward(a...); };
  auto gdn = [](auto&&... a) { my_gdn_forward(a...); };
  // Shapes a kernel gets wrong: T = 1, T not a multiple of a tile, K ≠ V, strong decay.
  ok &= check_kernel<KDA, float>("my_kda_forward", kda, cfg(2, 1, 2, 16, 16, -2), tol);
  ok &= check_kernel<KDA, float>("my_kda_forward", kda, cfg(1, 100, 3, 32, 24, -2), tol);
  ok &= check_kernel<KDA, Eigen::bfloat16>("my_kda_forward", kda, cfg(2, 77, 2, 16, 40, -8), tol);
  ok &= check_kernel<GDN, float>("my_gdn_forward", gdn, cfg(1, 129, 2, 24, 16, -2), tol);
  ok &= check_kernel<GDN, Eigen::half>("my_gdn_forward", gdn, cfg(3, 33, 1, 8, 8, -5), tol);
  // The same kernel with the decay applied after the read: the reference catches it.
  auto buggy = [](auto&&... a) { my_kda_forward(a..., /*bug_read_before_decay=*/true); };
  ok &= check_kernel<KDA, float>("my_kda (bug)", buggy, cfg(1, 100, 3, 32, 24, -2), tol, /*expect_pass=*/false);
  std::printf("\n  %s\n", ok ? "every kernel passed and the planted bug was caught" : "UNEXPECTED RESULT");
  return ok ? 0 : 1;
}
