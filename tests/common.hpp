// Shared helpers of the gdr2 tests: engines by name, random shapes, tolerances.
#pragma once

#include <gdr2/gdr2.hpp>

#include <catch2/catch.hpp>

#include <cstdlib>
#include <random>
#include <string>

namespace gdr2::test {

/// The CPU engines under test; every one is compared with the fp64 recurrence.
enum class Engine { recurrent, chunk16, chunk32, chunk64 };
inline const Engine kEngines[] = {Engine::recurrent, Engine::chunk16, Engine::chunk32, Engine::chunk64};

inline const char* name(Engine e) {
  switch (e) {
    case Engine::recurrent: return "recurrent";
    case Engine::chunk16: return "chunk16";
    case Engine::chunk32: return "chunk32";
    case Engine::chunk64: return "chunk64";
  }
  return "?";
}

inline int chunk_size(Engine e) { return e == Engine::chunk16 ? 16 : e == Engine::chunk32 ? 32 : 64; }

template <class Policy, class T, class TO>
Status run_forward(Engine e, const Problem<T>& p, const Outputs<TO, accum_t<T>>& out, Options opt = {}) {
  if (e == Engine::recurrent) return recurrent_forward<Policy>(p, out, opt);
  opt.chunk_size = chunk_size(e);
  return chunk_forward<Policy>(p, out, opt);
}

/// Backward on engine `e`: the BPTT (checkpoint interval opt.chunk_size, left as
/// given) or the chunk backward without a saved context at the engine's chunk size.
template <class Policy, class T>
Status run_backward(Engine e, const Problem<T>& p, const GradOutputs<T>& up, const Gradients<accum_t<T>>& gr,
                    Options opt = {}) {
  if (e == Engine::recurrent) return recurrent_backward<Policy>(p, up, gr, opt);
  opt.chunk_size = chunk_size(e);
  return chunk_backward<Policy>(p, up, gr, opt);
}

/// An executor of `slots` slots that runs its tasks one after another, the last slot
/// first: that task takes every work item, so a per-slot scratch pool shorter than the
/// slots a call uses is indexed out of range (caught by _GLIBCXX_ASSERTIONS) on every
/// run, not only when a thread pool happens to schedule the last task early.
inline FunctionExecutor last_slot_first(int slots) {
  return FunctionExecutor(slots, [](int n, const std::function<void(int)>& body) {
    for (int i = n - 1; i >= 0; --i) body(i);
  });
}

/// Print measured errors when GDR2_PRINT_ERRORS is set (for reports; tests never need it).
inline bool print_errors() { return std::getenv("GDR2_PRINT_ERRORS") != nullptr; }

/// Random configurations covering what must hold: T never a multiple of the chunk
/// size, K ≠ V, non-zero S_0, grouped value heads, gates per key or value head,
/// packed varlen with sequences shorter than a chunk (and one empty).
inline std::vector<ProblemConfig> random_configs(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](Index lo, Index hi) { return lo + Index(rng() % std::uint64_t(hi - lo + 1)); };
  std::vector<ProblemConfig> out;
  for (int i = 0; i < 3; ++i) {
    ProblemConfig c;
    c.seed = rng();
    c.B = pick(1, 2);
    do c.T = pick(2, 150);
    while (c.T % 16 == 0);
    c.Hk = pick(1, 2);
    c.Hv = c.Hk * pick(1, 3);
    c.K = pick(4, 24);
    do c.V = pick(4, 24);
    while (c.V == c.K);
    c.b_max = 2.0;
    c.g_min = -3.0;
    c.gates_per_key_head = (i == 1);
    out.push_back(c);
  }
  ProblemConfig v;  // packed varlen: short, empty, one-token and multi-chunk sequences
  v.seed = rng();
  v.seqlens = {5, 0, 1, Index(pick(65, 140)), 17, 64};
  v.Hk = 2;
  v.Hv = 4;
  v.K = 12;
  v.V = 20;
  v.b_max = 2.0;
  out.push_back(v);
  return out;
}

/// The numerics tests' problems: T tokens, key / value widths K, V, log-decays
/// ~ U[g_min, 0], b up to 2 (B, heads and the rest as ProblemConfig's defaults).
inline ProblemConfig numerics_config(Index T, Index K, Index V, double g_min) {
  ProblemConfig cfg;
  cfg.T = T;
  cfg.K = K;
  cfg.V = V;
  cfg.g_min = g_min;
  cfg.g_max = 0.0;
  cfg.b_max = 2.0;
  return cfg;
}

/// Strong decays (SPEC §5), shared by the forward and backward numerics tests:
/// log-decays down to −20 per token, so cumulative log-decays reach −1280 inside
/// a 64-token chunk (exp(−G) would overflow any float type), and b up to 2.
inline ProblemConfig strong_decay_config() { return numerics_config(203, 32, 24, -20.0); }

/// Heads wider than every register piece of the chunk kernels: K = 147 runs whole
/// 8-packet pieces, single packets and single channels, V = 37 packet pairs and leftover
/// columns (fp32 and fp64 lanes alike); T = 83 ends on a chunk of 19 tokens.
inline ProblemConfig wide_head_config() {
  ProblemConfig cfg = numerics_config(83, 147, 37, -3.0);
  cfg.Hk = 1;
  cfg.Hv = 2;
  return cfg;
}

/// Mixed decay strengths per channel: the shape of the test (its log-decays are
/// then set by set_mixed_decays).
inline ProblemConfig mixed_decay_config() { return numerics_config(130, 16, 16, ProblemConfig().g_min); }

/// Log-decays cycling over −20 (gone in one token), −1e-4 (kept) and −0.7.
template <class Acc>
void set_mixed_decays(Tensor<Acc>& g) {
  for (Index i = 0; i < g.size(); ++i) g[i] = Acc((i % 3 == 0) ? -20.0 : (i % 3 == 1 ? -1e-4 : -0.7));
}

inline std::string describe(const ProblemConfig& c) {
  std::string s = "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " Hk=" + std::to_string(c.Hk) +
                  " Hv=" + std::to_string(c.Hv) + " K=" + std::to_string(c.K) + " V=" + std::to_string(c.V);
  if (!c.seqlens.empty()) s += " varlen(" + std::to_string(c.seqlens.size()) + " seqs)";
  return s;
}

}  // namespace gdr2::test
