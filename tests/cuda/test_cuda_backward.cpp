// CUDA chunk backward (cuda/include/gdr2/cuda/backward.hpp) against the fp64 BPTT
// (reference_backward, SPEC §2) on fresh random problems.
//
// Three executions of the same kernel bodies are checked:
//   host    cuda::testing::chunk_backward_on_host: every kernel body run on the CPU, block
//           after block, in fp32 — runs everywhere (CI has no GPU), so the kernels' logic
//           (anchored decays, block inverse, passes, varlen, head sums) is tested by CI;
//   host32  the same with the tf32 mode's operand rounding emulated (HostProducts::as_device):
//           the device's tf32 accuracy, checked by CI against the device's bound;
//   device  the kernels on the GPU (skipped, with a warning, when there is none), for the
//           three product modes tf32 (the default for 16-bit inputs), split tf32 (the
//           default for fp32 inputs) and fp32.
// Inputs: bf16, fp16 and fp32 (every case family has an fp32 twin), and one host case with
// misaligned rows (the scalar-load path of ld_in4).
// Each run poisons every gradient output (NaN) first, and the host runs their workspace too;
// rel_error returns NaN when any element was left unwritten, which fails every bound. Per-gradient bounds (see bound()):
// the 5e-3 for tf32 products with bf16/fp16 inputs and 1e-3 for fp32 inputs with
// the default products; 1e-4 for the fp32-accurate executions (host, device fp32 and split
// tf32), the bound the CPU fp32 chunk backward meets.
//
// Seeds: fresh per run (printed on failure); set GDR2_TEST_SEED to replay one.
#include <gdr2/cuda/backward.hpp>

#include "cuda/cuda_test_util.hpp"

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

using namespace gdr2;
using namespace gdr2::test;
using bf16 = Eigen::bfloat16;
using f16 = Eigen::half;

namespace {

ProblemConfig make_cfg(std::uint64_t salt, Index B, Index T, Index Hk, Index Hv, Index D, double g_min) {
  ProblemConfig c;
  c.seed = base_seed() ^ (salt * 0x9E3779B97F4A7C15ull);
  c.B = B;
  c.T = T;
  c.Hk = Hk;
  c.Hv = Hv;
  c.K = c.V = D;
  c.g_min = g_min;
  c.b_max = 2.0;
  return c;
}

/// Where the backward runs: the kernel bodies on the host with fp32 products (their logic),
/// the same with the tf32 mode's operand rounding emulated (HostProducts::as_device), or the
/// GPU.
enum class Where { host, host_tf32, device };
bool on_host(Where w) { return w != Where::device; }

/// Gradients from the eight views in GradientBuffers::all() order.
template <class G>
Gradients<G> gradients_of(const std::vector<View<G>>& v) {
  Gradients<G> g;
  g.dq = v[0];
  g.dk = v[1];
  g.dv = v[2];
  g.dg = v[3];
  g.db = v[4];
  g.dw = v[5];
  g.dbeta = v[6];
  g.d_initial_state = v[7];
  return g;
}

const char* math_name(cuda::BackwardMath m) {
  return m == cuda::BackwardMath::tf32     ? "tf32"
         : m == cuda::BackwardMath::tf32x3 ? "tf32x3"
         : m == cuda::BackwardMath::fp32   ? "fp32"
                                           : "auto";
}

/// The per-gradient bound of one execution.
double bound(Where where, cuda::BackwardMath m, bool fp32_inputs) {
  using M = cuda::BackwardMath;
  if (where == Where::host) return 1e-4;  // fp32 arithmetic throughout (measured ≤ 2e-5)
  if (where == Where::host_tf32) return 5e-3;  // the device's tf32 bound (issue 6, 16-bit inputs)
  // issue 6: 5e-3 with bf16 / fp16 inputs (tf32 products measured ≤ 1.6e-3)
  if (m == M::tf32 || (m == M::automatic && !fp32_inputs)) return 5e-3;
  // issue 6: 1e-3 with fp32 inputs; the default (split tf32) measured ≈ 1e-5, while plain
  // tf32 products would reach ≈ 1.6e-3 (db) — why fp32 inputs default to split tf32
  if (m == M::automatic) return 1e-3;
  return 1e-4;  // split tf32 or fp32 products asked for explicitly: about fp32 accuracy
}

/// Gradients of one execution in host memory, poisoned before the run.
struct Result {
  GradientBuffers<float> g;
};

/// Run the backward of problem `hp` (host views of rp) where asked; results into `out`
/// (gradients as G: float, or T for 16-bit inputs). Chunk states (BackwardOptions::
/// chunk_states): on the host, `states` are given to the backward; on the device, with
/// `forward_states`, the CUDA forward writes them first (ChunkOptions::chunk_states) and
/// they are returned in `states`.
template <class Policy, class T, class G>
void execute(const RandomProblem<Policy, T>& rp, const Problem<T>& hp, const RandomUpstream<T>& up, Where where,
             cuda::BackwardOptions opt, GradientBuffers<G>& out, std::vector<float>* states = nullptr,
             cuda::ForwardPath path = cuda::ForwardPath::automatic, bool overlap = true, int forward_vs = 0,
             cuda::testing::HostThreads threads = cuda::testing::HostThreads::one, bool records = false) {
  if (on_host(where) && states) {
    opt.chunk_states = states->data();
    opt.chunk_states_bytes = states->size() * 4;
  }
  out = GradientBuffers<G>(hp);
  out.fill(std::numeric_limits<G>::quiet_NaN());
  std::size_t bytes = 0;
  {
    const Status st = cuda::chunk_backward_workspace_size<Policy>(hp, bytes, opt);
    INFO(st.to_string());
    REQUIRE(st.ok());
  }
  if (on_host(where)) {
    // the workspace poisoned too (NaN): a tile read before it is written shows
    std::vector<float> ws(bytes / 4 + 1, std::numeric_limits<float>::quiet_NaN());
    const Status st = cuda::testing::chunk_backward_on_host<Policy>(
        hp, up.grad_outputs(), out.views(), ws.data(), bytes, opt,
        where == Where::host_tf32 ? cuda::testing::HostProducts::as_device : cuda::testing::HostProducts::fp32,
        threads);
    INFO(st.to_string());
    REQUIRE(st.ok());
    return;
  }
  // device: inputs, upstream and poisoned gradient buffers
  auto q = to_device(rp.q), k = to_device(rp.k), v = to_device(rp.v), b = to_device(rp.b), w = to_device(rp.w),
       beta = to_device(rp.beta);
  auto g = to_device(rp.g), s0 = to_device(rp.initial_state);
  auto d_o = to_device(up.d_o);
  auto dsT = to_device(up.d_final_state);
  DBuf<std::int32_t> cu;
  Problem<T> dp = hp;
  dp.q = dview(q, rp.q);
  dp.k = dview(k, rp.k);
  dp.v = dview(v, rp.v);
  dp.b = dview(b, rp.b);
  dp.w = dview(w, rp.w);
  dp.beta = dview(beta, rp.beta);
  dp.g = dview(g, rp.g);
  dp.initial_state = dview(s0, rp.initial_state);
  cuda::DeviceSequences dev;
  if (!rp.cu_seqlens.empty()) {
    cu = DBuf<std::int32_t>(rp.cu_seqlens.size());
    cu.upload(rp.cu_seqlens.data());
    dev.cu_seqlens = cu.p;
  }
  GradOutputs<T> dup{dview(d_o, up.d_o), dview(dsT, up.d_final_state)};
  std::vector<DBuf<G>> bufs;
  std::vector<View<G>> views;
  for (auto& [name, t] : out.all()) {
    bufs.emplace_back(std::size_t(t->size()));
    if (t->size()) CUDA_OK(cudaMemset(bufs.back().p, 0xFF, std::size_t(t->size()) * sizeof(G)));  // NaN
    views.push_back(t->size() ? View<G>(bufs.back().p, t->shape(), contiguous_strides(t->shape())) : View<G>());
  }
  const Gradients<G> dg = gradients_of(views);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  DBuf<float> cs;
  DBuf<char> rb;  // the backward records (ChunkOptions::backward_records), poisoned (NaN)
  if constexpr (!std::is_same_v<T, float>) {
    if (states) {  // the forward writes the chunk states (NaN first: every row must be written)
      std::size_t sbytes = 0, fbytes = 0;
      REQUIRE(cuda::chunk_states_size<Policy>(dp, sbytes).ok());
      cs = DBuf<float>(sbytes / 4);
      CUDA_OK(cudaMemset(cs.p, 0xFF, sbytes));
      cuda::ChunkOptions fo;
      fo.path = path;
      fo.overlap = overlap;
      fo.value_slice = forward_vs;
      fo.chunk_states = cs.p;
      fo.chunk_states_bytes = sbytes;
      std::size_t rbytes = 0;
      if (records) {
        REQUIRE(cuda::backward_records_size<Policy>(dp, rbytes).ok());
        rb = DBuf<char>(rbytes);
        CUDA_OK(cudaMemset(rb.p, 0xFF, rbytes));
        fo.backward_records = rb.p;
        fo.backward_records_bytes = rbytes;
      }
      REQUIRE(cuda::chunk_forward_workspace_size<Policy>(dp, fbytes, fo).ok());
      DBuf<char> fws(fbytes);
      DBuf<T> o(std::size_t(rp.v.size()));
      const Outputs<T, float> fout{View<T>(o.p, rp.v.shape(), contiguous_strides(rp.v.shape())), {}};
      const Status fst = cuda::chunk_forward<Policy>(dp, fout, dev, fws.p, fbytes, s, fo);
      INFO(fst.to_string());
      REQUIRE(fst.ok());
      CUDA_OK(cudaStreamSynchronize(s));
      states->resize(cs.n);
      cs.download(states->data());
      opt.chunk_states = cs.p;
      opt.chunk_states_bytes = sbytes;
      if (records) {
        // the fused path at K = V = 128 writes them (then every NaN of the poison must be
        // gone from what the backward reads: its prep does not run), any other leaves them
        int written = -1;
        CUDA_OK(cudaMemcpy(&written, rb.p + rbytes - 256, sizeof written, cudaMemcpyDeviceToHost));
        if (path != cuda::ForwardPath::automatic)
          CHECK(written == (path == cuda::ForwardPath::fused && hp.k.shape[3] == 128 ? 1 : 0));
        opt.backward_records = rb.p;
        opt.backward_records_bytes = rbytes;
      }
    }
  }
  {
    const Status st = cuda::chunk_backward_workspace_size<Policy>(hp, bytes, opt);
    INFO(st.to_string());
    REQUIRE(st.ok());
  }
  DBuf<char> ws(bytes);
  const Status st = cuda::chunk_backward<Policy>(dp, dup, dg, dev, ws.p, bytes, s, opt);
  INFO(st.to_string());
  REQUIRE(st.ok());
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaStreamSynchronize(s));
  CUDA_OK(cudaStreamDestroy(s));
  std::size_t i = 0;
  for (auto& [name, t] : out.all()) {
    if (t->size()) bufs[i].download(t->data());
    ++i;
  }
}

/// One execution of the backward: where, with which products, and whether the chunk
/// states are given (host: the fp64 reference's; device: the CUDA forward's).
struct Exec {
  Where where;
  cuda::BackwardMath math;
  bool forward_states = false;
  cuda::ForwardPath path = cuda::ForwardPath::automatic;  // of the forward that writes them
  bool overlap = true;                                   // ChunkOptions::overlap of that forward
  int forward_vs = 0;                                    // ChunkOptions::value_slice of that forward
  /// without given chunk states: what recomputes them (BackwardOptions::recompute_states)
  cuda::StateRecompute recompute = cuda::StateRecompute::automatic;
  /// BackwardOptions::overlap: the fp16 reverse pass beside the 16-bit prep where it can
  bool backward_overlap = true;
  /// with the chunk states: the forward writes the backward's records too
  /// (ChunkOptions::backward_records, BackwardOptions::backward_records)
  bool forward_records = false;
};

/// A device execution given the chunk states and the backward records of the forward on `path`.
Exec with_records(cuda::ForwardPath path) {
  Exec e{Where::device, cuda::BackwardMath::tf32, true, path};
  e.forward_records = true;
  return e;
}

/// A device execution in the tf32 mode without given chunk states, recomputing them by `r`.
Exec recomputing(cuda::StateRecompute r) {
  Exec e{Where::device, cuda::BackwardMath::tf32};
  e.recompute = r;
  return e;
}

/// The name an execution's accuracy lines carry: host (fp32 products), host32 (tf32
/// emulated), device, dev+st (device, given the CUDA forward's chunk states), dev+fw and
/// dev+sp (device, the states recomputed by the forward / by the state kernel, as asked);
/// dev+sq: given the forward's chunk states, the reverse pass after the prep, not beside it.
const char* exec_name(const Exec& ex) {
  switch (ex.where) {
    case Where::host: return "host";
    case Where::host_tf32: return "host32";
    default:
      if (ex.forward_records) return "dev+rc";
      if (ex.forward_states) return ex.backward_overlap ? "dev+st" : "dev+sq";
      if (ex.recompute == cuda::StateRecompute::forward) return "dev+fw";
      if (ex.recompute == cuda::StateRecompute::state_pass) return "dev+sp";
      return "device";
  }
}

/// One problem: the fp64 reference once, then each execution's per-gradient errors
/// checked and printed.
template <class Policy, class T>
void run_case(const ProblemConfig& cfg, const std::vector<Exec>& execs, bool with_dsT = true, int vslice = 0,
              double upstream_scale = 1.0) {
  RandomProblem<Policy, T> rp(cfg);
  const Problem<T> hp = rp.problem();
  RandomUpstream<T> up(hp, cfg.seed + 99, with_dsT, upstream_scale);
  const auto ref = reference_backward<Policy>(hp, up.grad_outputs());
  REQUIRE(ref.status.ok());
  auto refs = const_cast<GradientBuffers<double>&>(ref.grads).all();
  for (const Exec& ex : execs) {
    INFO(exec_name(ex) << " " << math_name(ex.math) << " vs=" << vslice
                       << (ex.forward_states ? " with chunk states" : "") << " forward vs=" << ex.forward_vs
                       << (ex.overlap ? "" : " (not overlapped)"));
    GradientBuffers<float> got;
    cuda::BackwardOptions opt;
    opt.math = ex.math;
    opt.value_slice = vslice;
    opt.recompute_states = ex.recompute;
    opt.overlap = ex.backward_overlap;
    std::vector<float> states;
    std::string line;
    if (ex.forward_states) {
      const auto rs = reference_chunk_states<Policy>(hp);
      REQUIRE(rs.status.ok());
      if (on_host(ex.where))  // the fp64 states in fp32: the backward's logic, not their rounding
        states.assign(rs.states.data(), rs.states.data() + rs.states.size());
      const std::vector<float> given = states;
      execute<Policy>(rp, hp, up, ex.where, opt, got, &states, ex.path, ex.overlap, ex.forward_vs,
                      cuda::testing::HostThreads::one, ex.forward_records);
      if (on_host(ex.where)) CHECK(states == given);  // read, never written (no forward state pass)
      // the forward's states (fp32): within the forward's final-state bound (issue 5)
      const std::array<Index, 4> sh = rs.states.shape();
      Tensor<float> gs(sh[0], sh[1], sh[2], sh[3]);
      REQUIRE(std::size_t(gs.size()) == states.size());
      std::copy(states.begin(), states.end(), gs.data());
      const double es = rel_error(gs.view(), rs.states.view());
      char buf[64];
      std::snprintf(buf, sizeof buf, " states %.2e", es);
      line += buf;
      INFO("chunk states relative error " << es);
      CHECK(es <= (on_host(ex.where) ? 1e-7 : 3e-3));
    } else {
      execute<Policy>(rp, hp, up, ex.where, opt, got);
    }
    auto outs = got.all();
    const double tol = bound(ex.where, ex.math, std::is_same_v<T, float>);
    double worst = 0;
    for (std::size_t i = 0; i < outs.size(); ++i) {
      REQUIRE(refs[i].second->size() == outs[i].second->size());
      if (outs[i].second->empty()) continue;
      const double e = rel_error(outs[i].second->view(), refs[i].second->view());
      char buf[64];
      std::snprintf(buf, sizeof buf, " %s %.2e", outs[i].first, e);
      line += buf;
      INFO(outs[i].first << " relative error " << e << " (bound " << tol << ")");
      CHECK(e <= tol);  // NaN (an element not written) fails too
      worst = std::max(worst, e);
    }
    // the emulation is on: tf32 operands leave errors ≥ 2.9e-4 in the largest gradient error
    // of every problem (288 host runs of the device test's 16-bit shapes), fp32 ≤ 2e-5
    if (ex.where == Where::host_tf32) CHECK(worst > 1e-4);
    std::printf("[bwd-accuracy] %-6s %-4s %-8s %-6s vs=%-3d %-44s%s\n", exec_name(ex), Policy::name(),
                dtype_name<T>(), math_name(ex.math), vslice, describe(cfg).c_str(), line.c_str());
  }
}

const std::vector<Exec> kHost = {{Where::host, cuda::BackwardMath::fp32}};
/// the host execution given the fp64 chunk states (chunk states need the tf32 mode; the
/// host execution runs it with fp32 products unless asked to emulate them)
const std::vector<Exec> kHostStates = {{Where::host, cuda::BackwardMath::tf32, true}};
/// the host execution with the tf32 mode's products emulated, without and with chunk states
const std::vector<Exec> kHostTf32 = {{Where::host_tf32, cuda::BackwardMath::tf32},
                                     {Where::host_tf32, cuda::BackwardMath::tf32, true}};
/// 16-bit inputs on the device: the three product modes (tf32 with the chunk states
/// recomputed automatically — by the forward at these few (sequence, head) pairs — and by
/// the state kernel), then the chunk states written by the CUDA forward on its fused and
/// split paths (the split path's state blocks with helper warps when overlapped, without
/// them when not); at these few (sequence, head) pairs the reverse pass runs beside the
/// prep given chunk states, so the fused forward's states once more with it after the prep
const std::vector<Exec> kDevice = {{Where::device, cuda::BackwardMath::tf32},
                                   recomputing(cuda::StateRecompute::state_pass),
                                   {Where::device, cuda::BackwardMath::tf32x3},
                                   {Where::device, cuda::BackwardMath::fp32},
                                   {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::split},
                                   {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::split, false},
                                   {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::fused},
                                   {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::fused, true, 0,
                                    cuda::StateRecompute::automatic, false},
                                   with_records(cuda::ForwardPath::fused),
                                   with_records(cuda::ForwardPath::split)};
/// fp32 inputs on the device: the default (split tf32) against the 1e-3, and fp32
const std::vector<Exec> kDeviceF32 = {{Where::device, cuda::BackwardMath::automatic},
                                      {Where::device, cuda::BackwardMath::fp32}};

/// The configurations every policy is checked on (sizes kept small for the host runs).
template <class Policy>
void policy_cases(const std::vector<Exec>& execs, const std::vector<Exec>& execs_f32, bool large) {
  INFO("GDR2_TEST_SEED=" << base_seed());
  std::mt19937_64 rng(base_seed() ^ std::hash<std::string>{}(Policy::name()) ^ std::uint64_t(large));
  auto pick = [&](Index lo, Index hi) { return lo + Index(rng() % std::uint64_t(hi - lo + 1)); };
  // odd T, grouped value heads (dq, dk summed over 2 value heads), b up to 2
  auto c1 = make_cfg(1, 2, (large ? pick(130, 330) : pick(66, 140)) | 1, 2, 4, 128, -2.0);
  INFO("cfg1 " << describe(c1));
  run_case<Policy, bf16>(c1, execs);
  // strong decays (down to -20 per token), gates per key head (gate sums over heads), fp16
  auto c2 = make_cfg(2, 1, pick(65, 200) | 1, 2, 4, large ? 128 : 64, -20.0);
  c2.gates_per_key_head = true;
  INFO("cfg2 " << describe(c2));
  run_case<Policy, f16>(c2, execs);
  // K = V = 64, no initial state, no dS_T, three value heads per key head
  auto c3 = make_cfg(3, 2, pick(10, 150), 1, 3, 64, -3.0);
  c3.initial_state = false;
  INFO("cfg3 " << describe(c3));
  run_case<Policy, bf16>(c3, execs, /*with_dsT=*/false);
  // packed varlen: one-token, exact-chunk, empty and multi-chunk sequences
  auto c4 = make_cfg(4, 1, 0, 1, 2, large ? 128 : 64, -5.0);
  c4.seqlens = {1, 64, 0, Index(pick(130, 260)), 37, 129};
  INFO("cfg4 " << describe(c4));
  run_case<Policy, bf16>(c4, execs);
  // fp32 inputs: odd T, grouped heads, strong decays, gates per key head, b up to 2
  auto c5 = make_cfg(9, 2, (large ? pick(130, 330) : pick(66, 140)) | 1, 2, 4, large ? 128 : 64, -20.0);
  c5.gates_per_key_head = true;
  INFO("cfg5 " << describe(c5));
  run_case<Policy, float>(c5, execs_f32);
  // fp32 inputs, packed varlen, K = V = 128
  auto c6 = make_cfg(10, 1, 0, 1, 2, 128, -5.0);
  c6.seqlens = {1, 64, 0, Index(pick(70, large ? 260 : 130)), 37};
  INFO("cfg6 " << describe(c6));
  run_case<Policy, float>(c6, execs_f32);
}

}  // namespace

// ---- host execution of the kernel bodies: runs everywhere -----------------------------------
TEMPLATE_TEST_CASE("cuda backward kernel bodies (host execution) match the fp64 BPTT", "[cuda][backward][host]",
                   GDR2, KDA, GDN) {
  policy_cases<TestType>(kHost, kHost, /*large=*/false);
}

TEMPLATE_TEST_CASE("cuda backward (host execution): given chunk states replace the forward state pass",
                   "[cuda][backward][host]", GDR2, KDA, GDN) {
  INFO("GDR2_TEST_SEED=" << base_seed());
  auto c1 = make_cfg(12, 2, 99, 2, 4, 64, -2.0);  // grouped heads, odd T
  run_case<TestType, bf16>(c1, kHostStates);
  auto c2 = make_cfg(13, 1, 0, 1, 2, 128, -5.0);  // packed varlen with empty and exact-chunk sequences
  c2.seqlens = {1, 64, 0, 150, 37};
  run_case<TestType, bf16>(c2, kHostStates, true, 32);
}

TEMPLATE_TEST_CASE("cuda backward (host execution, tf32 products emulated) is within the device's bound",
                   "[cuda][backward][host]", GDR2, KDA, GDN) {
  // the device accuracy of kernel-body changes, checked without a GPU: the cases where db's
  // tail lives (strong decays, b up to 2, gates per key head, fp16, K = V = 128) and a
  // grouped-head bf16 case at K = V = 64 with a 32-column value slice (the reverse role's
  // off-chain form)
  INFO("GDR2_TEST_SEED=" << base_seed());
  auto c1 = make_cfg(14, 1, 131, 2, 4, 128, -20.0);
  c1.gates_per_key_head = true;
  run_case<TestType, f16>(c1, kHostTf32);
  auto c2 = make_cfg(15, 2, 77, 2, 4, 64, -2.0);
  run_case<TestType, bf16>(c2, kHostTf32, true, 32);
}

TEST_CASE("cuda backward (host execution, tf32 products emulated): GDN's dg on its worst known draw",
          "[cuda][backward][host]") {
  // One draw of the device policy case's packed varlen problem (GDR2_TEST_SEED=44, cfg4:
  // GDN, g >= -5, K = V = 128, lengths 1, 64, 0, 250, 37, 129) with the largest gradient
  // error seen so far: dg 4.60e-3 on an H100 and 4.58e-3 in this emulation, against the
  // bound of 5e-3, while the states were stored rounded to tf32; 1.99e-3 since grad-1 sums
  // dS ⊙ S over the fp32 states and rounds them only for its products (1.98e-3 given the
  // exact states). GDN's dg sums, per token, terms over all K × V state entries that
  // largely cancel (cuda/NOTES.md backward item 23). Fixed here so that a change that
  // widens this tail again fails without a GPU, where fresh draws might not hit it.
  auto c = make_cfg(4, 1, 0, 1, 2, 128, -5.0);
  c.seed = 8709371129873690744ull;
  c.seqlens = {1, 64, 0, 250, 37, 129};
  run_case<GDN, bf16>(c, kHostTf32);
}

/// The draw on which dβ summed over value heads was worst (GDR2_TEST_SEED=1796601142389849337,
/// the tf32-emulated case's c1: fp16, g >= -20, gates per key head, K = V = 128, T = 131).
/// Until grad-1 ran its sequences' last chunks exactly, KDA's dβ reached 6.2e-3 and GDN's
/// 7.8e-3 here, over the 5e-3 (one draw in ~70 seeds tried; the worst of the others
/// 1.8e-3). The error sat on the last token: its dβ per key head is the sum of two value heads'
/// parts of ±3–13 (the random dS_T, of norm 128 per head, enters them undecayed) that cancel to
/// −0.99 and −0.35, and each part carried the tf32 operands' ≈ 2^−11 relative error. Since then
/// the last chunk's grad-1 reads dS_T as given and runs the products that carry it split-tf32
/// (cuda/NOTES.md backward items 32–34).
ProblemConfig worst_dbeta_draw() {
  auto c = make_cfg(14, 1, 131, 2, 4, 128, -20.0);
  c.seed = 1796601142389849337ull ^ (14 * 0x9E3779B97F4A7C15ull);
  c.gates_per_key_head = true;
  return c;
}

TEST_CASE("cuda backward (host execution, tf32 products emulated): dβ summed over value heads on its worst known draw",
          "[cuda][backward][host]") {
  run_case<KDA, f16>(worst_dbeta_draw(), kHostTf32);
  run_case<GDN, f16>(worst_dbeta_draw(), kHostTf32);
}

TEST_CASE("cuda backward (host execution): value slices of the state passes", "[cuda][backward][host]") {
  INFO("GDR2_TEST_SEED=" << base_seed());
  auto c = make_cfg(5, 1, 150, 1, 1, 128, -1.0);
  // (16, 32: the reverse role's off-chain form; 64: pipelined inline; 128: one round trip)
  for (int vs : {16, 32, 64, 128}) {
    INFO("vs=" << vs);
    run_case<GDR2, bf16>(c, kHost, true, vs);
  }
}

TEST_CASE("cuda backward (host execution): misaligned rows take the scalar loads and stores",
          "[cuda][backward][host]") {
  INFO("GDR2_TEST_SEED=" << base_seed());
  auto c = make_cfg(11, 1, 77, 1, 2, 64, -3.0);
  RandomProblem<KDA, bf16> rp(c);
  Problem<bf16> hp = rp.problem();
  RandomUpstream<bf16> up(hp, c.seed + 99, true);
  const auto ref = reference_backward<KDA>(hp, up.grad_outputs());
  REQUIRE(ref.status.ok());
  // q one element past a 4-element boundary: BackwardParams::vec = 0 for this call
  std::vector<bf16> qbuf(std::size_t(rp.q.size()) + 1);
  std::copy(rp.q.data(), rp.q.data() + rp.q.size(), qbuf.begin() + 1);
  hp.q = View<const bf16>(qbuf.data() + 1, rp.q.shape(), contiguous_strides(rp.q.shape()));
  GradientBuffers<float> got(hp);
  got.fill(std::numeric_limits<float>::quiet_NaN());
  // dv (Hv heads: written directly) one float past a 16-byte boundary: vec_out = 0
  std::vector<float> dvbuf(std::size_t(got.dv.size()) + 1, std::numeric_limits<float>::quiet_NaN());
  Gradients<float> views = got.views();
  views.dv = View<float>(dvbuf.data() + 1, got.dv.shape(), contiguous_strides(got.dv.shape()));
  std::size_t bytes = 0;
  REQUIRE(cuda::chunk_backward_workspace_size<KDA>(hp, bytes).ok());
  std::vector<double> ws(bytes / sizeof(double) + 1);
  const Status st = cuda::testing::chunk_backward_on_host<KDA>(hp, up.grad_outputs(), views, ws.data(), bytes);
  INFO(st.to_string());
  REQUIRE(st.ok());
  std::copy(dvbuf.begin() + 1, dvbuf.end(), got.dv.data());
  auto outs = got.all();
  auto refs = const_cast<GradientBuffers<double>&>(ref.grads).all();
  for (std::size_t i = 0; i < outs.size(); ++i) {
    if (outs[i].second->empty()) continue;
    const double e = rel_error(outs[i].second->view(), refs[i].second->view());
    INFO(outs[i].first << " relative error " << e);
    CHECK(e <= 1e-4);  // fp32 host execution, as the aligned cases
  }
}

// ---- 16-bit gradients -------------------------------------------------------------------------
/// Every gradient in g16 is its fp32 twin in g32 rounded to nearest even, bit for bit (an
/// unwritten, NaN-poisoned element differs too).
template <class T>
void check_rounded(GradientBuffers<float>& g32, GradientBuffers<T>& g16) {
  auto a = g32.all();
  auto b = g16.all();
  for (std::size_t i = 0; i < a.size(); ++i) {
    REQUIRE(a[i].second->size() == b[i].second->size());
    Index differ = 0, first = -1;
    for (Index j = 0; j < a[i].second->size(); ++j) {
      const T want = T((*a[i].second)[j]), got = (*b[i].second)[j];
      const bool same = std::memcmp(&want, &got, sizeof(T)) == 0;
      if (!same && first < 0) first = j;
      differ += !same;
    }
    INFO(a[i].first << ": " << differ << " elements are not the fp32 gradient rounded (first at " << first << ")");
    CHECK(differ == 0);
  }
}

/// Gradients<T> (T = the 16-bit input type) against Gradients<float> of the same execution:
/// every kernel computes in fp32 and rounds at its stores (head sums and dS_0 after their fp32
/// sums), so each 16-bit gradient must be its fp32 twin rounded to nearest even, bit for bit
/// (the device kernels are deterministic). Returns the worst relative error of the 16-bit
/// gradients against the fp64 BPTT, which the bound applies to as well.
template <class Policy, class T>
double gradients16_case(const ProblemConfig& cfg, const Exec& ex, int vslice = 0) {
  static_assert(!std::is_same_v<T, float>, "16-bit inputs");
  RandomProblem<Policy, T> rp(cfg);
  const Problem<T> hp = rp.problem();
  RandomUpstream<T> up(hp, cfg.seed + 99, true);
  cuda::BackwardOptions opt;
  opt.math = ex.math;
  opt.value_slice = vslice;
  opt.recompute_states = ex.recompute;
  std::vector<float> s32, s16;
  if (ex.forward_states && on_host(ex.where)) {
    const auto rs = reference_chunk_states<Policy>(hp);
    REQUIRE(rs.status.ok());
    s32.assign(rs.states.data(), rs.states.data() + rs.states.size());
    s16 = s32;
  }
  GradientBuffers<float> g32;
  GradientBuffers<T> g16;
  execute<Policy>(rp, hp, up, ex.where, opt, g32, ex.forward_states ? &s32 : nullptr, ex.path);
  execute<Policy>(rp, hp, up, ex.where, opt, g16, ex.forward_states ? &s16 : nullptr, ex.path);
  const auto ref = reference_backward<Policy>(hp, up.grad_outputs());
  REQUIRE(ref.status.ok());
  check_rounded(g32, g16);
  auto b = g16.all();
  auto refs = const_cast<GradientBuffers<double>&>(ref.grads).all();
  double worst = 0;
  std::string line;
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (b[i].second->empty()) continue;
    Tensor<float> wide(b[i].second->shape()[0], b[i].second->shape()[1], b[i].second->shape()[2],
                       b[i].second->shape()[3]);
    for (Index j = 0; j < wide.size(); ++j) wide[j] = float((*b[i].second)[j]);
    const double e = rel_error(wide.view(), refs[i].second->view());
    char buf[64];
    std::snprintf(buf, sizeof buf, " %s %.2e", b[i].first, e);
    line += buf;
    worst = std::max(worst, e);
  }
  std::printf("[bwd-accuracy16] %-6s %-4s %-8s %-6s %-44s%s\n", exec_name(ex), Policy::name(), dtype_name<T>(),
              math_name(ex.math), describe(cfg).c_str(), line.c_str());
  return worst;
}

TEMPLATE_TEST_CASE("cuda backward (host execution): 16-bit gradients are the fp32 gradients rounded",
                   "[cuda][backward][host]", GDR2, KDA, GDN) {
  INFO("GDR2_TEST_SEED=" << base_seed());
  // grouped value heads and gates per key head (dq, dk, db / dβ, dg through the head sums),
  // odd T, dS_0 converted; fp16 and bf16; packed varlen given chunk states at K = V = 128
  auto c1 = make_cfg(18, 2, 77, 2, 4, 64, -3.0);
  c1.gates_per_key_head = true;
  // (rounding to nearest moves each element by at most the type's unit roundoff, 2^−11 for
  // fp16 and 2^−8 for bf16, relative to its fp32 value, which is within the host's fp32 bound
  // of the fp64 one)
  CHECK(gradients16_case<TestType, f16>(c1, Exec{Where::host, cuda::BackwardMath::fp32}) <= 0x1p-11 + 1e-4);
  auto c2 = make_cfg(19, 1, 0, 1, 1, 128, -5.0);
  c2.seqlens = {1, 64, 0, 99};
  CHECK(gradients16_case<TestType, bf16>(c2, Exec{Where::host, cuda::BackwardMath::tf32, true}) <= 0x1p-8 + 1e-4);
}

TEST_CASE("cuda backward (host execution): 16-bit gradients with misaligned rows take the scalar stores",
          "[cuda][backward][host]") {
  INFO("GDR2_TEST_SEED=" << base_seed());
  auto c = make_cfg(20, 1, 45, 1, 2, 64, -3.0);
  RandomProblem<GDR2, bf16> rp(c);
  const Problem<bf16> hp = rp.problem();
  RandomUpstream<bf16> up(hp, c.seed + 99, true);
  std::size_t bytes = 0;
  REQUIRE(cuda::chunk_backward_workspace_size<GDR2>(hp, bytes).ok());
  std::vector<double> ws(bytes / sizeof(double) + 1);
  GradientBuffers<float> g32(hp);
  REQUIRE(cuda::testing::chunk_backward_on_host<GDR2>(hp, up.grad_outputs(), g32.views(), ws.data(), bytes).ok());
  // dk one element past an 8-byte boundary: BackwardParams::vec_out = 0 for this call
  GradientBuffers<bf16> g16(hp);
  g16.fill(std::numeric_limits<bf16>::quiet_NaN());
  std::vector<bf16> dkbuf(std::size_t(g16.dk.size()) + 1, std::numeric_limits<bf16>::quiet_NaN());
  Gradients<bf16> views = g16.views();
  views.dk = View<bf16>(dkbuf.data() + 1, g16.dk.shape(), contiguous_strides(g16.dk.shape()));
  const Status st = cuda::testing::chunk_backward_on_host<GDR2>(hp, up.grad_outputs(), views, ws.data(), bytes);
  INFO(st.to_string());
  REQUIRE(st.ok());
  std::copy(dkbuf.begin() + 1, dkbuf.end(), g16.dk.data());
  check_rounded(g32, g16);
}

// ---- missing barriers, found on the host ------------------------------------------------------
/// The backward of one problem on the host with each block's threads run one by one between
/// barriers, in ascending and in descending order (testing::HostThreads), against the run
/// with one thread per block: a missing barrier (a read of another thread's write, or of an
/// asynchronous copy, before the barrier that publishes it) makes one of the two orders read
/// stale data. The results must be the same bits: every element is computed by the same
/// thread's same operations in every order (add_partial adds onto a partial its own thread
/// stored), so only a stale read can change one. (The 42ff9e0 race planted back — grad-1's
/// barrier before the tied row sums removed — fails it with dβ 0.83–1.6 in ascending order,
/// as the H100 showed 0.1–0.8; keeping two copy groups in flight instead of one fails db and
/// dS_0 by 2e-2–0.16.)
template <class Policy, class T>
void thread_orders_case(const ProblemConfig& cfg, Where where, bool given_states, int vslice) {
  using cuda::testing::HostThreads;
  RandomProblem<Policy, T> rp(cfg);
  const Problem<T> hp = rp.problem();
  RandomUpstream<T> up(hp, cfg.seed + 99, true);
  cuda::BackwardOptions opt;
  opt.math = cuda::BackwardMath::tf32;
  opt.value_slice = vslice;
  std::vector<float> states;
  if (given_states) {
    const auto rs = reference_chunk_states<Policy>(hp);
    REQUIRE(rs.status.ok());
    states.assign(rs.states.data(), rs.states.data() + rs.states.size());
  }
  GradientBuffers<float> got[3];
  const HostThreads orders[3] = {HostThreads::one, HostThreads::ascending, HostThreads::descending};
  for (int i = 0; i < 3; ++i)
    execute<Policy>(rp, hp, up, where, opt, got[i], given_states ? &states : nullptr, cuda::ForwardPath::automatic,
                    true, 0, orders[i]);
  auto o = got[0].all(), a = got[1].all(), d = got[2].all();
  for (std::size_t i = 0; i < o.size(); ++i) {
    if (o[i].second->empty()) continue;
    const auto ref = o[i].second->view();
    const double ea = rel_error(a[i].second->view(), ref), ed = rel_error(d[i].second->view(), ref);
    INFO(o[i].first << ": ascending " << ea << ", descending " << ed << " from one thread per block");
    CHECK(ea == 0);  // NaN (a poisoned tile read stale) fails too
    CHECK(ed == 0);
  }
}

TEMPLATE_TEST_CASE("cuda backward (host execution): the threads of a block one by one between barriers agree",
                   "[cuda][backward][host][barriers]", GDR2, KDA, GDN) {
  INFO("GDR2_TEST_SEED=" << base_seed());
  // packed varlen (the offsets kernel, a sequence of two chunks, an empty one), grouped
  // heads; the tf32 mode's operand path without and with given chunk states, fp32 products
  auto c = make_cfg(16, 1, 0, 1, 2, 64, -3.0);
  c.seqlens = {37, 0, 100};
  thread_orders_case<TestType, bf16>(c, Where::host_tf32, false, 32);
  thread_orders_case<TestType, bf16>(c, Where::host_tf32, true, 64);
  thread_orders_case<TestType, bf16>(c, Where::host, false, 0);
  // the state passes' 16-column slices (the reverse role's off-chain form)
  thread_orders_case<TestType, bf16>(c, Where::host_tf32, false, 16);
  // K = V = 128, gates per key head, fp32 inputs (the other loaders)
  auto c2 = make_cfg(17, 1, 70, 2, 2, 128, -3.0);
  c2.gates_per_key_head = true;
  thread_orders_case<TestType, float>(c2, Where::host_tf32, false, 0);
  // 128-column slices (one round trip) given chunk states
  thread_orders_case<TestType, bf16>(c2, Where::host_tf32, true, 128);
}

// ---- device ----------------------------------------------------------------------------------
TEMPLATE_TEST_CASE("cuda chunk backward matches the fp64 BPTT", "[cuda][backward][device]", GDR2, KDA, GDN) {
  SKIP_WITHOUT_GPU();
  policy_cases<TestType>(kDevice, kDeviceF32, /*large=*/true);
}

TEMPLATE_TEST_CASE("cuda chunk backward: 16-bit gradients are the fp32 gradients rounded", "[cuda][backward][device]",
                   GDR2, KDA, GDN) {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  // grouped heads (head sums), gates per key head, odd T; the tf32 mode with the states
  // recomputed, then given the fused forward's chunk states (the fp16 records' path)
  auto c1 = make_cfg(21, 2, 301, 2, 4, 128, -3.0);
  c1.gates_per_key_head = true;
  CHECK(gradients16_case<TestType, bf16>(c1, Exec{Where::device, cuda::BackwardMath::tf32}) <= 5e-3);
  CHECK(gradients16_case<TestType, bf16>(
            c1, Exec{Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::fused}) <= 5e-3);
  // packed varlen, fp16, the split forward's chunk states
  auto c2 = make_cfg(22, 1, 0, 1, 2, 128, -5.0);
  c2.seqlens = {1, 64, 0, 250, 37, 129};
  CHECK(gradients16_case<TestType, f16>(
            c2, Exec{Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::split}) <= 5e-3);
}

TEST_CASE("cuda chunk backward: value slices, long sequence, strong decays", "[cuda][backward][device]") {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  auto c = make_cfg(6, 1, 2048 + 37, 2, 4, 128, -0.2);  // weak decay: dS carries over many chunks
  // (16, 32: the reverse role's off-chain form; 64: pipelined inline; 128: one round trip;
  // both roles of the state kernel: at 4 pairs the automatic choice is the forward)
  for (int vs : {16, 32, 64, 128}) {
    INFO("vs=" << vs);
    run_case<GDR2, bf16>(c, {recomputing(cuda::StateRecompute::state_pass)}, true, vs);
  }
  auto c2 = make_cfg(7, 2, 1024 + 5, 2, 2, 128, -20.0);
  INFO(describe(c2));
  run_case<GDR2, bf16>(c2, kDevice);
}

TEST_CASE("cuda chunk backward: dβ summed over value heads on its worst known draw", "[cuda][backward][device]") {
  SKIP_WITHOUT_GPU();
  // the host test's draw on every device path (the fp16 reverse pass and records included)
  run_case<KDA, f16>(worst_dbeta_draw(), kDevice);
  run_case<GDN, f16>(worst_dbeta_draw(), kDevice);
}

TEST_CASE("cuda chunk backward without chunk states: the reverse pass after or beside the forward role",
          "[cuda][backward][device]") {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  // without the forward's chunk states, the state kernel's two roles run in one launch when
  // they fit in one wave (2 · pairs · D / vs blocks ≤ SMs); otherwise its forward role runs
  // alone and the fp16 reverse pass after it. 32 (sequence, head) pairs at value slice 16
  // need 512 blocks (more than any GPU's SMs: one after the other), at 128 64 blocks (side
  // by side; where the automatic choice has the forward write the states instead); strong
  // decays (g ≥ −20) so that the fp16 records' scales matter
  auto c = make_cfg(41, 2, 190 + 3, 4, 16, 128, -20.0);
  for (int vs : {16, 128}) {
    INFO("vs=" << vs);
    run_case<GDR2, bf16>(c,
                         {recomputing(cuda::StateRecompute::state_pass), recomputing(cuda::StateRecompute::automatic),
                          recomputing(cuda::StateRecompute::forward)},
                         true, vs);
  }
}

TEST_CASE("cuda chunk backward without chunk states where the forward writes the records",
          "[cuda][backward][device]") {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  // 4 × 32 = 128 (sequence, head) pairs at K = V = 128: the forward's fused path, so the
  // automatic recompute runs it with the backward's records into the workspace (the prep is
  // skipped); against the state kernel's forward role and the prep
  auto c = make_cfg(43, 4, 64 + 3, 8, 32, 128, -5.0);
  for (const auto& run : {&run_case<GDR2, bf16>, &run_case<KDA, bf16>})
    run(c, {recomputing(cuda::StateRecompute::automatic), recomputing(cuda::StateRecompute::forward),
            recomputing(cuda::StateRecompute::state_pass)},
        true, 0, 1.0);
}

TEST_CASE("cuda chunk backward given the forward's chunk states (small, for the sanitizers)",
          "[cuda][backward][device][sanitize]") {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  auto c = make_cfg(14, 1, 0, 1, 2, 128, -1.0);
  c.seqlens = {70, 0, 64, 9};  // varlen: the fused path sums the chunk rows of earlier sequences
  // (the reverse pass beside the prep, the automatic choice at these few pairs, and after it)
  run_case<KDA, bf16>(c, {{Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::fused},
                          with_records(cuda::ForwardPath::fused),
                          {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::split},
                          {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::split, false},
                          {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::fused, true, 0,
                           cuda::StateRecompute::automatic, false}});
  // GDR-2's channel gates take other copy paths in grad-1 and the applies (w's rows, q k b g
  // as stored); without chunk states as well (the tf32 state passes, and the forward
  // writing them into the workspace)
  run_case<GDR2, bf16>(c, {{Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::fused},
                           with_records(cuda::ForwardPath::fused), recomputing(cuda::StateRecompute::state_pass),
                           recomputing(cuda::StateRecompute::forward)});
  // GDN's scalar decay: one value per row, as β (the applies' row vector)
  run_case<GDN, bf16>(c, {{Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::fused}});
}

TEST_CASE("cuda chunk backward given chunk states from the split forward at every value slice",
          "[cuda][backward][device]") {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  // the split forward's state blocks stage the chunk states for the copier helpers'
  // 16-byte stores at value slices 16, 32, 64 (helper warps) and store them directly at 128
  // (none); each slice overlapped and not (the state kernel alone: four (sequence, head)
  // pairs keep the state blocks within a quarter of the SMs at every slice, so both forms
  // run); varlen
  auto c = make_cfg(21, 1, 0, 1, 2, 128, -1.0);
  c.seqlens = {75, 200};
  std::vector<Exec> execs;
  for (int vs : {16, 32, 64, 128})
    for (bool overlap : {true, false})
      execs.push_back({Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::split, overlap, vs});
  run_case<GDR2, bf16>(c, execs);
}

TEST_CASE("cuda chunk backward: the reverse pass beside the prep gives the gradients of the one after it, bit for bit",
          "[cuda][backward][device]") {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  // BackwardOptions::overlap only changes when each record is written and read, never what
  // is computed: the same bits. Varlen with an empty and a one-token sequence (the prep
  // walks the items last first across sequences), K = V = 64 and 128, each policy
  auto check = [](auto policy, Index D, std::vector<Index> lengths) {
    using Policy = decltype(policy);
    auto c = make_cfg(51, 1, 0, 1, 3, D, -3.0);
    c.seqlens = lengths;
    INFO(Policy::name() << " " << describe(c));
    RandomProblem<Policy, bf16> rp(c);
    const Problem<bf16> hp = rp.problem();
    RandomUpstream<bf16> up(hp, c.seed + 7);
    GradientBuffers<float> got[2];
    for (int ov = 0; ov < 2; ++ov) {
      cuda::BackwardOptions opt;
      opt.overlap = ov == 1;
      std::vector<float> states;  // written by the CUDA forward (fused path) each time
      execute<Policy>(rp, hp, up, Where::device, opt, got[ov], &states, cuda::ForwardPath::fused);
    }
    auto a = got[0].all(), b = got[1].all();
    for (std::size_t i = 0; i < a.size(); ++i) {
      INFO(a[i].first);
      REQUIRE(a[i].second->size() == b[i].second->size());
      CHECK(std::memcmp(a[i].second->data(), b[i].second->data(), std::size_t(a[i].second->size()) * 4) == 0);
    }
  };
  check(GDR2{}, 128, {300, 0, 1, 129});
  check(KDA{}, 64, {65, 190, 0});
  check(GDN{}, 128, {1, 257});
}

TEST_CASE("cuda chunk backward with loss-scaled and tiny upstream gradients", "[cuda][backward][device]") {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  // dO and dS_T times 2^16 and 2^−24 (exact in bf16): the relative errors do not depend on
  // the scale, but the reverse pass given chunk states runs on fp16 operands, whose range
  // (6e-8 .. 65504) both scales leave without its per-warp exponents (cuda/NOTES.md,
  // backward item 13); strong scalar decays (GDN, g ≥ −20) flush unscaled Qγ and Y as well
  const std::vector<Exec> execs = {{Where::device, cuda::BackwardMath::tf32},
                                   {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::fused},
                                   {Where::device, cuda::BackwardMath::tf32, true, cuda::ForwardPath::split}};
  for (double scale : {65536.0, 1.0 / 16777216.0}) {
    INFO("upstream scale " << scale);
    run_case<GDN, bf16>(make_cfg(31, 2, 300 + 7, 2, 2, 128, -20.0), execs, true, 0, scale);
    run_case<GDR2, bf16>(make_cfg(32, 1, 600 + 3, 1, 2, 128, -1.0), execs, true, 0, scale);
  }
}

TEST_CASE("cuda chunk backward is deterministic and capturable in a CUDA graph", "[cuda][backward][device][graph]") {
  SKIP_WITHOUT_GPU();
  INFO("GDR2_TEST_SEED=" << base_seed());
  auto c = make_cfg(8, 1, 0, 1, 4, 128, -1.0);
  c.seqlens = {100, 3, 190};
  c.gates_per_key_head = true;  // every gradient but dv goes through the head sums
  RandomProblem<KDA, bf16> rp(c);
  const Problem<bf16> hp = rp.problem();
  RandomUpstream<bf16> up(hp, c.seed + 1);
  const auto ref = reference_backward<KDA>(hp, up.grad_outputs());
  REQUIRE(ref.status.ok());
  // device buffers
  auto q = to_device(rp.q), k = to_device(rp.k), v = to_device(rp.v), beta = to_device(rp.beta);
  auto g = to_device(rp.g), s0 = to_device(rp.initial_state), dsT = to_device(up.d_final_state);
  auto d_o = to_device(up.d_o);
  DBuf<std::int32_t> cu(rp.cu_seqlens.size());
  cu.upload(rp.cu_seqlens.data());
  Problem<bf16> dp = hp;
  dp.q = dview(q, rp.q);
  dp.k = dview(k, rp.k);
  dp.v = dview(v, rp.v);
  dp.beta = dview(beta, rp.beta);
  dp.g = dview(g, rp.g);
  dp.initial_state = dview(s0, rp.initial_state);
  GradOutputs<bf16> dup{dview(d_o, up.d_o), dview(dsT, up.d_final_state)};
  GradientBuffers<float> host(hp);
  std::vector<DBuf<float>> bufs;
  std::vector<View<float>> views;
  for (auto& [name, t] : host.all()) {
    bufs.emplace_back(std::size_t(t->size()));
    views.push_back(t->size() ? View<float>(bufs.back().p, t->shape(), contiguous_strides(t->shape())) : View<float>());
  }
  const Gradients<float> dg = gradients_of(views);
  std::size_t bytes = 0;
  REQUIRE(cuda::chunk_backward_workspace_size<KDA>(hp, bytes).ok());
  DBuf<char> ws(bytes);
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  const Status st = cuda::chunk_backward<KDA>(dp, dup, dg, {cu.p, nullptr}, ws.p, bytes, s);
  CUDA_OK(cudaStreamEndCapture(s, &graph));
  INFO(st.to_string());
  REQUIRE(st.ok());
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  std::vector<std::vector<float>> first(bufs.size());
  auto refs = const_cast<GradientBuffers<double>&>(ref.grads).all();
  for (int rep = 0; rep < 2; ++rep) {
    for (auto& b : bufs)
      if (b.n) CUDA_OK(cudaMemsetAsync(b.p, 0xFF, b.n * 4, s));  // NaN
    CUDA_OK(cudaGraphLaunch(exec, s));
    CUDA_OK(cudaStreamSynchronize(s));
    std::size_t i = 0;
    for (auto& [name, t] : host.all()) {
      if (t->size()) {
        bufs[i].download(t->data());
        const double e = rel_error(t->view(), refs[i].second->view());
        INFO(name << " replay " << rep << " error " << e);
        CHECK(e <= 5e-3);
        std::vector<float> now(t->data(), t->data() + t->size());
        if (rep == 0)
          first[i] = now;
        else
          CHECK(std::memcmp(now.data(), first[i].data(), now.size() * 4) == 0);  // bitwise the same
      }
      ++i;
    }
  }
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(s));
}

// ---- argument validation (runs without a GPU: fails before any device work) ----------------
TEST_CASE("cuda backward rejects bad arguments with clear statuses", "[cuda][backward][validation]") {
  auto c = make_cfg(51, 1, 40, 1, 1, 128, -1.0);
  RandomProblem<GDR2, bf16> rp(c);
  const Problem<bf16> p = rp.problem();  // host pointers: never dereferenced by the checks below
  RandomUpstream<bf16> up(p, 3);
  GradientBuffers<float> gb(p);
  std::size_t bytes = 0;
  REQUIRE(cuda::chunk_backward_workspace_size<GDR2>(p, bytes).ok());
  CHECK(bytes > 0);

  SECTION("K = V = 96 is unsupported") {
    auto c2 = make_cfg(52, 1, 20, 1, 1, 96, -1.0);
    RandomProblem<GDR2, bf16> r2(c2);
    const Status st = cuda::chunk_backward_workspace_size<GDR2>(r2.problem(), bytes);
    CHECK(st.code() == Code::unsupported);
    CHECK(st.message().find("K = V") != std::string::npos);
  }
  SECTION("the fused decay gate and in-kernel L2 norm are unsupported") {
    Problem<bf16> f = p;
    f.l2_norm_qk = true;
    const Status st = cuda::chunk_backward_workspace_size<GDR2>(f, bytes);
    CHECK(st.code() == Code::unsupported);
    CHECK(st.message().find("l2_norm_qk") != std::string::npos);
  }
  SECTION("fp64 inputs and the DeltaNet policy are unsupported; fp32 inputs are taken") {
    RandomProblem<GDR2, float> r2(c);
    CHECK(cuda::chunk_backward_workspace_size<GDR2>(r2.problem(), bytes).ok());
    RandomProblem<GDR2, double> r3(c);
    const Status st = cuda::chunk_backward_workspace_size<GDR2>(r3.problem(), bytes);
    CHECK(st.code() == Code::unsupported);
    CHECK(st.message().find("float32 inputs") != std::string::npos);
    RandomProblem<DeltaNet, bf16> r4(c);
    CHECK(cuda::chunk_backward_workspace_size<DeltaNet>(r4.problem(), bytes).code() == Code::unsupported);
  }
  SECTION("a workspace that is too small") {
    const Status st = cuda::chunk_backward<GDR2>(p, up.grad_outputs(), gb.views(), {}, nullptr, bytes - 1, nullptr);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("workspace") != std::string::npos);
  }
  SECTION("a host cu_seqlens needs its device copy") {
    auto c3 = make_cfg(53, 1, 0, 1, 1, 128, -1.0);
    c3.seqlens = {10, 20};
    RandomProblem<GDR2, bf16> r3(c3);
    const Problem<bf16> p3 = r3.problem();
    RandomUpstream<bf16> u3(p3, 4);
    GradientBuffers<float> g3(p3);
    const Status st = cuda::chunk_backward<GDR2>(p3, u3.grad_outputs(), g3.views(), {}, nullptr, 0, nullptr);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("device copy") != std::string::npos);
  }
  SECTION("gradient shapes come from the shared validation") {
    Tensor<float> bad(1, 41, 1, 128);
    Gradients<float> gr = gb.views();
    gr.dq = bad.view();
    const Status st = cuda::chunk_backward<GDR2>(p, up.grad_outputs(), gr, {}, nullptr, bytes, nullptr);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("dq has shape") != std::string::npos);
  }
  SECTION("gradients as float32 or as the inputs' 16-bit type, not another") {
    GradientBuffers<f16> gh(p);  // fp16 gradients of bf16 inputs
    Status st = cuda::chunk_backward<GDR2>(p, up.grad_outputs(), gh.views(), {}, nullptr, bytes, nullptr);
    CHECK(st.code() == Code::unsupported);
    CHECK(st.message().find("not float16") != std::string::npos);
    RandomProblem<GDR2, float> r2(c);
    const Problem<float> p2 = r2.problem();
    RandomUpstream<float> u2(p2, 5);
    GradientBuffers<bf16> gb2(p2);  // bf16 gradients of fp32 inputs
    st = cuda::chunk_backward<GDR2>(p2, u2.grad_outputs(), gb2.views(), {}, nullptr, bytes, nullptr);
    CHECK(st.code() == Code::unsupported);
    CHECK(st.message().find("inputs' type (float32)") != std::string::npos);
    // bf16 gradients of bf16 inputs: the shared shape validation applies to them too
    GradientBuffers<bf16> g16(p);
    Tensor<bf16> bad(1, 40, 1, 64);
    Gradients<bf16> gr = g16.views();
    gr.dk = bad.view();
    st = cuda::chunk_backward<GDR2>(p, up.grad_outputs(), gr, {}, nullptr, bytes, nullptr);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("dk has shape") != std::string::npos);
  }
  SECTION("backward records: with chunk states, big enough, aligned") {
    std::size_t sb = 0, rbytes = 0;
    REQUIRE(cuda::chunk_states_size<GDR2>(p, sb).ok());
    REQUIRE(cuda::backward_records_size<GDR2>(p, rbytes).ok());
    // one chunk-head's record (2·64² + 4·64·128 + 128 floats), then the 256-byte flag tail
    CHECK(rbytes == (std::size_t(2 * 64 * 64 + 4 * 64 * 128 + 128) * 4 + 255) / 256 * 256 + 256);
    std::vector<float> cs(sb / 4);
    std::vector<double> rec(rbytes / 8 + 64);  // 8-byte aligned; offset to 256 below
    char* r = reinterpret_cast<char*>(rec.data());
    r += (256 - reinterpret_cast<std::uintptr_t>(r) % 256) % 256;
    cuda::BackwardOptions opt;
    opt.backward_records = r;
    opt.backward_records_bytes = rbytes;
    Status st = cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("need chunk_states") != std::string::npos);
    opt.chunk_states = cs.data();
    opt.chunk_states_bytes = sb;
    std::size_t with_records = 0, without = 0;
    CHECK(cuda::chunk_backward_workspace_size<GDR2>(p, with_records, opt).ok());
    opt.backward_records_bytes = rbytes - 256;
    st = cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("backward_records_size") != std::string::npos);
    opt.backward_records = r + 16;
    opt.backward_records_bytes = rbytes;
    st = cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("256-byte aligned") != std::string::npos);
    opt.backward_records = nullptr;
    st = cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("without backward_records") != std::string::npos);
    opt.backward_records_bytes = 0;
    CHECK(cuda::chunk_backward_workspace_size<GDR2>(p, without, opt).ok());
    CHECK(without >= with_records + std::size_t(cuda::detail::bwd_rec_floats(128)) * 4);  // the records are the caller's
    // the forward checks the same
    cuda::ChunkOptions fo;
    fo.path = cuda::ForwardPath::fused;  // no workspace
    fo.backward_records = r;
    fo.backward_records_bytes = rbytes;
    Tensor<bf16> o(1, 40, 1, 128);
    st = cuda::chunk_forward<GDR2>(p, Outputs<bf16, float>{o.view(), {}}, {}, nullptr, 0, nullptr, fo);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("need chunk_states") != std::string::npos);
  }
  SECTION("chunk states: tf32 products only, big enough, aligned") {
    std::size_t sb = 0;
    REQUIRE(cuda::chunk_states_size<GDR2>(p, sb).ok());
    CHECK(sb == std::size_t(1 * 1 * 128 * 128 * 4));  // one chunk of 40 tokens, one head
    std::vector<float> cs(sb / 4 + 1);
    cuda::BackwardOptions opt;
    opt.chunk_states = cs.data();
    opt.chunk_states_bytes = sb;
    CHECK(cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt).ok());
    opt.math = cuda::BackwardMath::tf32x3;
    Status st = cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("tf32") != std::string::npos);
    opt.math = cuda::BackwardMath::automatic;
    opt.chunk_states_bytes = sb - 4;
    st = cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("chunk_states_size") != std::string::npos);
    opt.chunk_states = cs.data() + 1;
    opt.chunk_states_bytes = sb;
    st = cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("aligned") != std::string::npos);
    cuda::ChunkOptions fo;
    fo.path = cuda::ForwardPath::fused;  // no workspace
    fo.chunk_states = cs.data();
    fo.chunk_states_bytes = sb - 4;
    Tensor<bf16> o(1, 40, 1, 128);
    st = cuda::chunk_forward<GDR2>(p, Outputs<bf16, float>{o.view(), {}}, {}, nullptr, 0, nullptr, fo);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("chunk_states_size") != std::string::npos);
  }
  SECTION("d_o is required, and so is a valid value slice") {
    GradOutputs<bf16> none;
    CHECK(cuda::chunk_backward<GDR2>(p, none, gb.views(), {}, nullptr, bytes, nullptr).code() ==
          Code::invalid_argument);
    cuda::BackwardOptions opt;
    opt.value_slice = 48;
    CHECK(cuda::chunk_backward_workspace_size<GDR2>(p, bytes, opt).code() == Code::invalid_argument);
  }
}

// ---- planning (runs without a GPU) ------------------------------------------------------------
/// The plan of a workspace-size query: no upstream gradients, no gradient views.
template <class T>
const GradOutputs<T>* const no_up = nullptr;
const Gradients<float>* const no_grads = nullptr;

/// A problem of B × T tokens, H heads, K = V = D whose tensors are only shapes (one aligned
/// placeholder address: the plan never dereferences them).
template <class Policy>
Problem<bf16> shapes_only(Index B, Index T, Index H, Index D) {
  const bf16* x = reinterpret_cast<const bf16*>(std::uintptr_t(256));
  const float* y = reinterpret_cast<const float*>(std::uintptr_t(256));
  auto v = [](auto* p, Index a, Index b, Index c, Index d) {
    return View<std::remove_pointer_t<decltype(p)>>(p, {a, b, c, d}, contiguous_strides({a, b, c, d}));
  };
  Problem<bf16> p;
  p.q = v(x, B, T, H, D), p.k = v(x, B, T, H, D), p.v = v(x, B, T, H, D);
  p.g = v(y, B, T, H, Policy::decay_width(D));
  if constexpr (Policy::gates == Gates::tied) {
    p.beta = v(x, B, T, H, 1);
  } else {
    p.b = v(x, B, T, H, D), p.w = v(x, B, T, H, D);
  }
  p.initial_state = v(y, B, H, D, D);
  return p;
}

/// The plan of `p` under `opt` at 132 SMs (a workspace-size query): whether the forward
/// recomputes the chunk states, and the workspace bytes.
template <class Policy, class T>
cuda::detail::StateForward plan_states(const Problem<T>& p, const cuda::BackwardOptions& opt, std::size_t& bytes,
                                       cuda::detail::BackwardParams& f) {
  cuda::detail::StateForward sf;
  const Status st = cuda::detail::plan_backward<Policy>(p, no_up<T>, no_grads, opt, 132, f, bytes, sf);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return sf;
}
template <class Policy, class T>
bool forward_planned(const Problem<T>& p, const cuda::BackwardOptions& opt) {
  std::size_t bytes = 0;
  cuda::detail::BackwardParams f;
  return plan_states<Policy>(p, opt, bytes, f).planned;
}

/// At B × T tokens, H heads, K = V = D: StateRecompute::automatic picks the forward exactly
/// when `auto_forward`; forward always, state_pass never; and the forward's o and workspace
/// need no workspace beyond the state pass's.
template <class Policy>
void check_state_recompute(Index B, Index T, Index H, Index D, bool auto_forward) {
  INFO(Policy::name() << " B=" << B << " T=" << T << " H=" << H << " D=" << D);
  const Problem<bf16> p = shapes_only<Policy>(B, T, H, D);
  auto plan = [&](cuda::StateRecompute r, std::size_t& bytes) {
    cuda::BackwardOptions opt;
    opt.recompute_states = r;
    cuda::detail::BackwardParams f;
    return plan_states<Policy>(p, opt, bytes, f);
  };
  std::size_t auto_bytes = 0, fw_bytes = 0, sp_bytes = 0;
  const cuda::detail::StateForward automatic = plan(cuda::StateRecompute::automatic, auto_bytes);
  const cuda::detail::StateForward fw = plan(cuda::StateRecompute::forward, fw_bytes);
  const cuda::detail::StateForward sp = plan(cuda::StateRecompute::state_pass, sp_bytes);
  CHECK(automatic.planned == auto_forward);
  CHECK(fw.planned);
  CHECK(!sp.planned);
  // the forward's o and workspace lie in the dS and grad-1 space: no extra workspace
  CHECK(fw.offset + fw.o_bytes + fw.ws_bytes <= sp_bytes);
  CHECK(fw_bytes == sp_bytes);
  CHECK(auto_bytes == sp_bytes);
}

TEST_CASE("cuda backward: the forward recomputes the chunk states where the state kernel would be slow",
          "[cuda][backward][validation]") {
  // the state kernel's two roles share one wave (2 · pairs · D / vs ≤ 132 at the automatic
  // slice): the forward; B=1 T=32768 H=16 (16 pairs, issue 6's second shape) is one of them
  check_state_recompute<GDR2>(1, 32768, 16, 128, true);
  check_state_recompute<KDA>(2, 193, 16, 128, true);
  check_state_recompute<GDN>(1, 100, 3, 64, true);
  check_state_recompute<GDR2>(4, 1000, 2, 64, true);
  // B=8 T=4096 H=16: 128 pairs, the forward's fused path, which writes the backward's
  // records too (K = V = 128; cuda/NOTES.md backward item 57); at K = V = 64 (no records)
  // and at 80 pairs (the forward's split path) the state kernel's forward role
  check_state_recompute<GDR2>(8, 4096, 16, 128, true);
  check_state_recompute<KDA>(8, 512, 16, 128, true);
  check_state_recompute<GDR2>(8, 4096, 16, 64, false);
  check_state_recompute<GDR2>(5, 300, 16, 128, false);
  // products other than tf32 read no forward-written states: the state kernel
  cuda::BackwardOptions opt;
  opt.math = cuda::BackwardMath::tf32x3;
  opt.recompute_states = cuda::StateRecompute::forward;
  CHECK(!forward_planned<GDR2>(shapes_only<GDR2>(1, 32768, 16, 128), opt));
  // fp32 inputs: the forward takes 16-bit inputs only
  RandomProblem<GDR2, float> rp(make_cfg(61, 1, 70, 1, 2, 64, -1.0));
  opt.math = cuda::BackwardMath::tf32;
  CHECK(!forward_planned<GDR2>(rp.problem(), opt));
}

TEST_CASE("cuda backward: the reverse pass runs beside the prep at few (sequence, head) pairs",
          "[cuda][backward][validation]") {
  // at most a quarter of the SMs for its blocks (N · Hv · D / 64 ≤ 132 / 4)
  auto overlap = [](Index B, Index T, Index H, Index D, bool asked) {
    const Problem<bf16> p = shapes_only<GDR2>(B, T, H, D);
    cuda::BackwardOptions opt;
    opt.overlap = asked;
    std::size_t bytes = 0;
    cuda::detail::BackwardParams f;
    plan_states<GDR2>(p, opt, bytes, f);
    return f.overlap == 1;
  };
  CHECK(overlap(1, 32768, 16, 128, true));   // issue 6's B=1 shape: 32 blocks
  CHECK(!overlap(1, 32768, 16, 128, false));  // unless asked not to
  CHECK(overlap(2, 1000, 16, 64, true));     // 32 blocks at D = 64
  CHECK(!overlap(2, 16384, 16, 128, true));  // 64 blocks
  CHECK(!overlap(8, 4096, 16, 128, true));   // issue 6's B=8 shape: 256 blocks
}
