// Every engine × gate policy × input dtype against the fp64 recurrence (SPEC §1).
#include "common.hpp"

using namespace gdr2;
using namespace gdr2::test;

namespace {

// Tolerances (relative Frobenius error against fp64 on the same rounded inputs):
//  - fp64 chunk vs recurrence: the WY form is an exact rewrite of the recurrence;
//    what is left is a few hundred roundings of 1.1e-16 through the triangular
//    solve, measured ~1e-15 → 1e-12 leaves three orders of margin for
//    ill-conditioned draws (b up to 2).
//  - fp32 accumulation (fp32, bf16, fp16 inputs, output kept in fp32): fp32
//    rounding 6e-8 amplified by T·K-long sums, measured 1e-7 … 4e-7 → 1e-5.
//  - output cast to bf16 / fp16: the cast alone is ≤ 2^-9 / 2^-12 per element;
//    4e-3 / 1e-3 bound the Frobenius norm of that rounding.
template <class T>
constexpr double fp_tol() {
  return std::is_same_v<T, double> ? 1e-12 : 1e-5;
}

template <class Policy, class T>
void check_against_reference(const ProblemConfig& cfg) {
  using Acc = accum_t<T>;
  RandomProblem<Policy, T> rp(cfg);
  const auto p = rp.problem();
  const auto ref = reference_forward<Policy>(p);
  REQUIRE(ref.status.ok());
  for (Engine e : kEngines) {
    INFO(Policy::name() << " " << dtype_name<T>() << " " << name(e) << " " << describe(cfg));
    auto o = rp.make_output();
    auto s = rp.make_state();
    o.fill(Acc(NAN));  // poison: every element must be written
    s.fill(Acc(NAN));
    const Status st = run_forward<Policy>(e, p, Outputs<Acc, Acc>{o.view(), s.view()});
    REQUIRE(st.ok());
    const double eo = rel_error(o.view(), ref.o.view());
    const double es = rel_error(s.view(), ref.final_state.view());
    CAPTURE(eo, es);
    CHECK(eo <= fp_tol<T>());
    CHECK(es <= fp_tol<T>());
  }
}

}  // namespace

TEMPLATE_TEST_CASE("forward: every engine matches the fp64 recurrence", "[forward]", GDR2, KDA, GDN, DeltaNet) {
  for (const auto& cfg : random_configs(0xC0FFEE ^ std::hash<std::string>{}(TestType::name()))) {
    check_against_reference<TestType, double>(cfg);
    check_against_reference<TestType, float>(cfg);
    check_against_reference<TestType, Eigen::bfloat16>(cfg);
    check_against_reference<TestType, Eigen::half>(cfg);
  }
}

TEMPLATE_TEST_CASE("forward: wide heads match the fp64 recurrence", "[forward]", GDR2, GDN) {
  check_against_reference<TestType, double>(wide_head_config());
  check_against_reference<TestType, float>(wide_head_config());
}

TEMPLATE_TEST_CASE("forward: 16-bit outputs are the rounded fp32 result", "[forward]", Eigen::bfloat16, Eigen::half) {
  ProblemConfig cfg;
  cfg.T = 77;
  cfg.b_max = 2;
  RandomProblem<GDR2, TestType> rp(cfg);
  const auto ref = reference_forward<GDR2>(rp.problem());
  Tensor<TestType> o(rp.B, rp.T_, cfg.Hv, cfg.V);
  REQUIRE(chunk_forward<GDR2>(rp.problem(), Outputs<TestType, float>{o.view(), {}}).ok());
  const double tol = std::is_same_v<TestType, Eigen::bfloat16> ? 4e-3 : 1e-3;
  CHECK(rel_error(o.view(), ref.o.view()) <= tol);
}

TEST_CASE("forward: state in/out round trip equals one long sequence", "[forward]") {
  // Running T1 tokens, then T2 tokens from the saved state, equals running T1+T2.
  ProblemConfig cfg;
  cfg.T = 90;
  cfg.K = 20;
  cfg.V = 14;
  RandomProblem<GDR2, double> rp(cfg);
  const auto ref = reference_forward<GDR2>(rp.problem());
  auto split = [&](Index t0, Index len, View<const double> s_in, View<double> s_out, Tensor<double>& o) {
    Problem<double> p = rp.problem();
    for (auto* v : {&p.q, &p.k, &p.v, &p.b, &p.w}) {
      v->data += t0 * v->stride[1];
      v->shape[1] = len;
    }
    p.g.data += t0 * p.g.stride[1];
    p.g.shape[1] = len;
    p.initial_state = s_in;
    o = Tensor<double>(1, len, cfg.Hv, cfg.V);
    return chunk_forward<GDR2>(p, Outputs<double, double>{o.view(), s_out});
  };
  auto mid = rp.make_state();
  auto fin = rp.make_state();
  Tensor<double> o1, o2;
  REQUIRE(split(0, 41, rp.initial_state.view(), mid.view(), o1).ok());
  REQUIRE(split(41, 49, mid.view(), fin.view(), o2).ok());
  CHECK(rel_error(fin.view(), ref.final_state.view()) <= 1e-12);
  View<const double> ref_tail = ref.o.view();
  ref_tail.data += 41 * ref_tail.stride[1];
  ref_tail.shape[1] = 49;
  CHECK(rel_error(o2.view(), ref_tail) <= 1e-12);
}

TEST_CASE("reference_chunk_states: every row is the fp64 state after that many tokens", "[forward][reference]") {
  // Row j of sequence n must equal the final state of the fp64 recurrence run on the
  // sequence's first j·chunk tokens alone (row 0: the initial state). Packed varlen with
  // an empty, an exact-chunk and partial-chunk sequences; chunk 32 keeps it small.
  ProblemConfig cfg;
  cfg.K = 12;
  cfg.V = 10;
  cfg.seqlens = {70, 0, 32, 101};
  RandomProblem<KDA, float> rp(cfg);
  const Problem<float> p = rp.problem();
  const Index chunk = 32;
  const auto got = reference_chunk_states<KDA>(p, chunk);
  REQUIRE(got.status.ok());
  REQUIRE(got.states.shape() == std::array<Index, 4>{3 + 0 + 1 + 4, cfg.Hv, cfg.K, cfg.V});
  const Index HKV = cfg.Hv * cfg.K * cfg.V;
  Index row = 0;
  for (Index n = 0; n < Index(cfg.seqlens.size()); ++n) {
    const Index bos = rp.cu_seqlens[size_t(n)], len = cfg.seqlens[size_t(n)];
    for (Index j = 0; j * chunk < len; ++j, ++row) {
      INFO("sequence " << n << " chunk " << j);
      const View<const double> at(got.states.data() + row * HKV, {1, cfg.Hv, cfg.K, cfg.V},
                                  contiguous_strides({1, cfg.Hv, cfg.K, cfg.V}));
      if (j == 0) {  // the initial state, exactly
        View<const float> s0 = rp.initial_state.view();
        s0.data += n * s0.stride[0];
        s0.shape[0] = 1;
        CHECK(rel_error(at, s0) == 0.0);
        continue;
      }
      Problem<float> q = p;
      q.cu_seqlens = {};
      for (auto* v : {&q.q, &q.k, &q.v, &q.beta}) {
        v->data += bos * v->stride[1];
        v->shape[1] = j * chunk;
      }
      q.g.data += bos * q.g.stride[1];
      q.g.shape[1] = j * chunk;
      q.initial_state.data += n * q.initial_state.stride[0];
      q.initial_state.shape[0] = 1;
      const auto ref = reference_forward<KDA>(q);
      REQUIRE(ref.status.ok());
      CHECK(rel_error(at, ref.final_state.view()) <= 1e-12);  // the same fp64 recurrence, chunk by chunk
    }
  }
  CHECK(row == got.states.shape()[0]);
}

TEST_CASE("forward: V-major state layout and in-place state update", "[forward]") {
  ProblemConfig cfg;
  cfg.T = 50;
  RandomProblem<KDA, float> rp(cfg);
  const auto ref = reference_forward<KDA>(rp.problem());
  // Copy S_0 into V-major storage and update it in place.
  Tensor<float> pool(rp.N, cfg.Hv, cfg.V, cfg.K);
  auto sv = pool.state_view(StateLayout::VK);
  for (Index n = 0; n < rp.N; ++n)
    for (Index h = 0; h < cfg.Hv; ++h)
      for (Index i = 0; i < cfg.K; ++i)
        for (Index j = 0; j < cfg.V; ++j) sv(n, h, i, j) = rp.initial_state.view()(n, h, i, j);
  auto p = rp.problem();
  p.initial_state = sv;
  auto o = rp.make_output();
  REQUIRE(chunk_forward<KDA>(p, Outputs<float, float>{o.view(), sv}).ok());
  CHECK(rel_error(o.view(), ref.o.view()) <= 1e-5);
  CHECK(rel_error(sv, ref.final_state.view()) <= 1e-5);
}

TEST_CASE("forward: decode steps with a state pool equal prefill", "[forward][decode]") {
  // 3 requests in a pool of 5 slots (one slot skipped with -1), stepped token by token.
  ProblemConfig cfg;
  cfg.B = 3;
  cfg.T = 9;
  cfg.Hk = 1;
  cfg.Hv = 2;
  RandomProblem<GDN, float> rp(cfg);
  const auto ref = reference_forward<GDN>(rp.problem());
  Tensor<float> pool(5, cfg.Hv, cfg.K, cfg.V);
  pool.fill(7.0f);
  const std::int32_t slots[3] = {4, -1, 1};
  for (Index n : {0, 2})
    for (Index i = 0; i < cfg.Hv * cfg.K * cfg.V; ++i)
      pool[slots[n] * cfg.Hv * cfg.K * cfg.V + i] = rp.initial_state[n * cfg.Hv * cfg.K * cfg.V + i];
  Tensor<float> o_all(3, cfg.T, cfg.Hv, cfg.V);
  for (Index t = 0; t < cfg.T; ++t) {
    Problem<float> p = rp.problem();
    for (auto* v : {&p.q, &p.k, &p.v, &p.beta}) {
      v->data += t * v->stride[1];
      v->shape[1] = 1;
    }
    p.g.data += t * p.g.stride[1];
    p.g.shape[1] = 1;
    View<float> o = o_all.view();
    o.data += t * o.stride[1];
    o.shape[1] = 1;
    REQUIRE(decode_step<GDN>(p, pool.view(), slots, o).ok());
  }
  for (Index n : {0, 2}) {
    INFO("request " << n);
    View<const float> got = pool.view();
    got.data += slots[n] * got.stride[0];
    got.shape[0] = 1;
    View<const double> want = ref.final_state.view();
    want.data += n * want.stride[0];
    want.shape[0] = 1;
    CHECK(rel_error(got, want) <= 1e-5);
    View<const float> og = o_all.view();
    og.data += n * og.stride[0];
    og.shape[0] = 1;
    View<const double> ow = ref.o.view();
    ow.data += n * ow.stride[0];
    ow.shape[0] = 1;
    CHECK(rel_error(og, ow) <= 1e-5);
  }
  // Untouched slots keep their contents.
  for (Index s : {0, 2, 3}) CHECK(pool[s * cfg.Hv * cfg.K * cfg.V] == 7.0f);
}

TEST_CASE("forward: threads give the same result as serial", "[forward][parallel]") {
  ProblemConfig cfg;
  cfg.B = 2;
  cfg.T = 100;
  cfg.Hv = 4;
  RandomProblem<GDR2, float> rp(cfg);
  Eigen::ThreadPool pool(3);
  ThreadPoolExecutor tp(pool);
  FunctionExecutor fe(2, [](int n, const std::function<void(int)>& body) {
    std::vector<std::thread> th;
    for (int i = 0; i < n; ++i) th.emplace_back(body, i);
    for (auto& t : th) t.join();
  });
  auto o0 = rp.make_output(), o1 = rp.make_output(), o2 = rp.make_output();
  REQUIRE(chunk_forward<GDR2>(rp.problem(), Outputs<float, float>{o0.view(), {}}).ok());
  Options opt;
  opt.executor = &tp;
  REQUIRE(chunk_forward<GDR2>(rp.problem(), Outputs<float, float>{o1.view(), {}}, opt).ok());
  opt.executor = &fe;
  REQUIRE(chunk_forward<GDR2>(rp.problem(), Outputs<float, float>{o2.view(), {}}, opt).ok());
  CHECK(rel_error(o1.view(), o0.view()) == 0.0);
  CHECK(rel_error(o2.view(), o0.view()) == 0.0);
}

TEST_CASE("reference: on threads it is the serial fp64 reference bit for bit", "[forward][reference][parallel]") {
  // What a kernel author gets from the reference_* helpers with an executor must not
  // depend on it: forward, chunk states and BPTT gradients on 3 threads against serial,
  // packed varlen with grouped value heads and gates per key head (the gradients of a key
  // head's value heads are summed in one item).
  ProblemConfig cfg;
  cfg.Hk = 2;
  cfg.Hv = 4;
  cfg.K = 24;
  cfg.V = 20;
  cfg.seqlens = {70, 0, 33, 101};
  cfg.gates_per_key_head = true;
  RandomProblem<GDR2, float> rp(cfg);
  const Problem<float> p = rp.problem();
  RandomUpstream<float> up(p, 5);
  Eigen::ThreadPool pool(3);
  ThreadPoolExecutor tp(pool);
  const auto f0 = reference_forward<GDR2>(p), f1 = reference_forward<GDR2>(p, &tp);
  REQUIRE((f0.status.ok() && f1.status.ok()));
  CHECK(rel_error(f1.o.view(), f0.o.view()) == 0.0);
  CHECK(rel_error(f1.final_state.view(), f0.final_state.view()) == 0.0);
  const auto c0 = reference_chunk_states<GDR2>(p, 32), c1 = reference_chunk_states<GDR2>(p, 32, &tp);
  REQUIRE((c0.status.ok() && c1.status.ok()));
  CHECK(rel_error(c1.states.view(), c0.states.view()) == 0.0);
  const auto b0 = reference_backward<GDR2>(p, up.grad_outputs()), b1 = reference_backward<GDR2>(p, up.grad_outputs(), &tp);
  REQUIRE((b0.status.ok() && b1.status.ok()));
  auto g0 = const_cast<GradientBuffers<double>&>(b0.grads).all();
  auto g1 = const_cast<GradientBuffers<double>&>(b1.grads).all();
  REQUIRE(g0.size() == g1.size());
  int compared = 0;
  for (std::size_t i = 0; i < g0.size(); ++i) {
    if (g0[i].second->empty()) continue;
    INFO(g0[i].first);
    CHECK(rel_error(g1[i].second->view(), g0[i].second->view()) == 0.0);
    ++compared;
  }
  CHECK(compared == 7);  // dq dk dv dg db dw dS_0
}

TEST_CASE("forward: head groups of the pair schedule match the reference", "[forward][parallel]") {
  // The pair schedule walks groups of adjacent value heads in lockstep (head_group).
  // Hv = 6 makes groups of 4 + 2 (serial, 2 slots) and 2 + 2 + 2 (7 slots): a partial last
  // group, groups that straddle key heads (Hk = 3), and varlen sequences of different
  // lengths. Each head's arithmetic is that of a lone pair, so every schedule must agree
  // with the others bit for bit, and with fp64 to the fp32 tolerance.
  ProblemConfig cfg;
  cfg.Hk = 3;
  cfg.Hv = 6;
  cfg.seqlens = {70, 5, 131};
  cfg.b_max = 2.0;
  RandomProblem<GDR2, float> rp(cfg);
  const auto ref = reference_forward<GDR2>(rp.problem());
  Dims d;
  d.Hk = 3;
  d.Hv = 6;
  d.N = 3;
  CHECK(detail::head_group(d, 1) == 4);
  CHECK(detail::head_group(d, 2) == 4);
  CHECK(detail::head_group(d, 6) == 4);
  CHECK(detail::head_group(d, 7) == 2);
  CHECK(detail::head_group(d, 10) == 1);
  Eigen::ThreadPool pool(6);
  ThreadPoolExecutor tp(pool);  // 7 slots
  const FunctionExecutor two = last_slot_first(2);
  Tensor<float> o0 = rp.make_output(), s0 = rp.make_state();
  REQUIRE(chunk_forward<GDR2>(rp.problem(), Outputs<float, float>{o0.view(), s0.view()}).ok());
  CHECK(rel_error(o0.view(), ref.o.view()) <= 1e-5);
  CHECK(rel_error(s0.view(), ref.final_state.view()) <= 1e-5);
  for (const Executor* ex : {static_cast<const Executor*>(&two), static_cast<const Executor*>(&tp)}) {
    INFO("executor slots " << ex->concurrency());
    auto o = rp.make_output();
    auto s = rp.make_state();
    o.fill(NAN);
    s.fill(NAN);
    Options opt;
    opt.executor = ex;
    REQUIRE(chunk_forward<GDR2>(rp.problem(), Outputs<float, float>{o.view(), s.view()}, opt).ok());
    CHECK(rel_error(o.view(), o0.view()) == 0.0);
    CHECK(rel_error(s.view(), s0.view()) == 0.0);
  }
}

TEST_CASE("forward: chunk-parallel schedule (few heads, long sequences) matches the reference", "[forward][parallel]") {
  // 1-2 (sequence, head) pairs on 4 slots: phase 1 runs over chunks, the state pass
  // over value-column slices; the state is updated in place to catch slice races.
  Eigen::ThreadPool pool(3);
  ThreadPoolExecutor tp(pool);
  for (bool varlen : {false, true}) {
    ProblemConfig cfg;
    cfg.Hk = cfg.Hv = 1;
    cfg.K = 24;
    cfg.V = 40;
    cfg.b_max = 2.0;
    if (varlen)
      cfg.seqlens = {130, 7};
    else
      cfg.T = 301;
    RandomProblem<GDR2, float> rp(cfg);
    const auto ref = reference_forward<GDR2>(rp.problem());
    Tensor<float> state = rp.initial_state;  // updated in place
    Problem<float> p = rp.problem();
    p.initial_state = state.view();
    auto o = rp.make_output();
    o.fill(NAN);
    Workspace ws;
    Options opt;
    opt.executor = &tp;
    opt.workspace = &ws;
    for (int rep = 0; rep < 2; ++rep) {  // the second call reuses the workspace
      state = rp.initial_state;
      REQUIRE(chunk_forward<GDR2>(p, Outputs<float, float>{o.view(), state.view()}, opt).ok());
      INFO("varlen " << varlen << " rep " << rep);
      CHECK(rel_error(o.view(), ref.o.view()) <= 1e-5);
      CHECK(rel_error(state.view(), ref.final_state.view()) <= 1e-5);
    }
    CHECK(ws.bytes() > 0);
  }
}

TEST_CASE("forward: chunk-parallel schedule with more value slices than chunks", "[forward][parallel]") {
  // One short sequence (2 chunks) on 8 slots: the state pass runs V/16 = 8 slices, more
  // work items than phase 1 had chunks — every slot must still have its scratch. The
  // last-slot-first executor makes the highest slot do the work.
  const FunctionExecutor last_first = last_slot_first(8);
  ProblemConfig cfg;
  cfg.Hk = cfg.Hv = 1;
  cfg.K = 32;
  cfg.V = 128;
  cfg.T = 100;
  RandomProblem<KDA, float> rp(cfg);
  const auto ref = reference_forward<KDA>(rp.problem());
  auto o = rp.make_output();
  auto s = rp.make_state();
  o.fill(NAN);
  Workspace ws;
  Options opt;
  opt.executor = &last_first;
  opt.workspace = &ws;
  REQUIRE(chunk_forward<KDA>(rp.problem(), Outputs<float, float>{o.view(), s.view()}, opt).ok());
  CHECK(rel_error(o.view(), ref.o.view()) <= 1e-5);
  CHECK(rel_error(s.view(), ref.final_state.view()) <= 1e-5);
  CHECK(ws.pool<detail::ChunkScratch<float>>(0, Index(64), cfg.K, cfg.V).size() >= 8);  // one per slot used
}

TEST_CASE("forward: the chunk's (I + T)^-1 by block recursion", "[forward][numerics]") {
  // unit_lower_inverse replaces a triangular solve on the identity: every chunk length
  // 1..64 (the recursion's splits at multiples of 8 and its ≤ 16-row base case), a strictly
  // lower T with entries up to 0.6 in size, its diagonal and upper part poisoned (never
  // read), A poisoned (its upper part must come back zero). fp64: the residual measures the
  // algorithm, not the rounding of the inputs; 1e-12 is ~1e4 ulps of these O(10) entries.
  std::mt19937_64 rng(20261202);
  std::uniform_real_distribution<double> u(-0.6, 0.6);
  for (Index n = 1; n <= 64; ++n) {
    detail::RowMat<double> T(64, 64);
    detail::RowMat<double> A(64, 64), X(64, 64);
    for (Index r = 0; r < 64; ++r)
      for (Index c = 0; c < 64; ++c) T(r, c) = c < r ? u(rng) : 1e30;
    A.setConstant(7.0);
    detail::unit_lower_inverse(T, 0, n, A, X);
    detail::RowMat<double> IT = T.topLeftCorner(n, n).triangularView<Eigen::StrictlyLower>();
    IT.diagonal().setOnes();
    const detail::RowMat<double> R = IT * A.topLeftCorner(n, n) - detail::RowMat<double>::Identity(n, n);
    INFO("n = " << n);
    CHECK(R.cwiseAbs().maxCoeff() <= 1e-12);
    CHECK(A.topLeftCorner(n, n).triangularView<Eigen::StrictlyUpper>().toDenseMatrix().cwiseAbs().maxCoeff() == 0.0);
  }
}
