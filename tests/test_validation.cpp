// Misuse gets a clear error that names what was wrong, before any work, and the
// caller's output buffers stay untouched.
#include "common.hpp"

using namespace gdr2;
using namespace gdr2::test;

namespace {

struct Case {
  RandomProblem<GDR2, float> rp;
  Problem<float> p;
  Tensor<float> o, s;
  Options opt;
  explicit Case(ProblemConfig cfg = {}) : rp(cfg), p(rp.problem()), o(rp.make_output()), s(rp.make_state()) {
    o.fill(123.0f);
    s.fill(456.0f);
  }
  /// Run both engines; both must fail with `code` and a message containing `needle`.
  void expect(Code code, const std::string& needle) {
    for (bool chunked : {false, true}) {
      INFO((chunked ? "chunk" : "recurrent"));
      if (!chunked && opt.chunk_size != 64) continue;  // only the chunk engine has a chunk size
      const Outputs<float, float> out{o.view(), s.view()};
      const Status st = chunked ? chunk_forward<GDR2>(p, out, opt) : recurrent_forward<GDR2>(p, out, opt);
      INFO(st.to_string());
      CHECK(st.code() == code);
      CHECK(st.message().find(needle) != std::string::npos);
      for (Index i = 0; i < o.size(); ++i) REQUIRE(o[i] == 123.0f);
      for (Index i = 0; i < s.size(); ++i) REQUIRE(s[i] == 456.0f);
    }
  }
};

}  // namespace

TEST_CASE("validation: mismatched shapes", "[validation]") {
  Case c;
  c.p.k.shape[3] += 1;
  c.expect(Code::invalid_argument, "k has shape");
  Case d;
  d.p.v.shape[1] -= 1;
  d.expect(Code::invalid_argument, "v has shape");
  Case e;
  e.p.g.shape[3] = 1;  // a scalar decay given to the channel-wise policy
  e.expect(Code::invalid_argument, "g has shape");
}

TEST_CASE("validation: head counts", "[validation]") {
  ProblemConfig cfg;
  cfg.Hk = 2;
  cfg.Hv = 6;
  Case c(cfg);
  c.p.v.shape[2] = 5;  // Hv = 5 is not a multiple of Hk = 2
  c.expect(Code::invalid_argument, "multiple of key heads");
  Case d(cfg);
  d.p.b.shape[2] = 3;  // gate heads must be Hk or Hv
  d.expect(Code::invalid_argument, "b has 3 heads");
}

TEST_CASE("validation: gates the policy does not take, or misses", "[validation]") {
  RandomProblem<KDA, float> kda(ProblemConfig{});
  Problem<float> p = kda.problem();
  auto o = kda.make_output();
  p.b = p.q;  // KDA takes beta, not b
  auto st = chunk_forward<KDA>(p, Outputs<float, float>{o.view(), {}});
  CHECK(st.code() == Code::invalid_argument);
  CHECK(st.message().find("b must not be given for the kda") != std::string::npos);
  Problem<float> p2 = kda.problem();
  p2.beta = View<const float>();
  st = chunk_forward<KDA>(p2, Outputs<float, float>{o.view(), {}});
  CHECK(st.message().find("beta is required") != std::string::npos);
}

TEST_CASE("validation: cu_seqlens", "[validation]") {
  ProblemConfig cfg;
  cfg.seqlens = {10, 20, 7};
  std::vector<std::pair<std::vector<std::int32_t>, std::string>> bad = {
      {{0, 20, 10, 37}, "non-decreasing"},
      {{0, 10, 30, 40}, "must end at the packed length"},
      {{1, 10, 30, 37}, "cu_seqlens[0] must be 0"},
      {{0}, "N+1 >= 2"},
  };
  for (auto& [cu, needle] : bad) {
    Case c(cfg);
    c.p.cu_seqlens = SeqOffsets(cu.data(), Index(cu.size()));
    c.expect(Code::invalid_argument, needle);
  }
  std::vector<std::int64_t> cu64 = {0, 10, 30, 37};
  Case ok(cfg);
  ok.p.cu_seqlens = SeqOffsets(cu64.data(), 4);
  CHECK(chunk_forward<GDR2>(ok.p, Outputs<float, float>{ok.o.view(), ok.s.view()}).ok());
}

TEST_CASE("validation: varlen with B > 1", "[validation]") {
  ProblemConfig cfg;
  cfg.B = 2;
  Case c(cfg);
  std::vector<std::int32_t> cu = {0, 10, std::int32_t(cfg.T)};
  c.p.cu_seqlens = SeqOffsets(cu.data(), 3);
  c.expect(Code::invalid_argument, "expects B = 1");
}

TEST_CASE("validation: non-unit feature stride", "[validation]") {
  Case c;
  c.p.q.stride[3] = 2;
  c.expect(Code::invalid_argument, "unit stride");
}

TEST_CASE("validation: state shapes and slots", "[validation]") {
  Case c;
  c.p.initial_state.shape[2] += 1;
  c.expect(Code::invalid_argument, "initial_state has shape");
  Case d;
  const std::int32_t slots[1] = {3};  // pool has only 1 slot
  d.p.state_indices = slots;
  d.expect(Code::invalid_argument, "state_indices[0] = 3");
}

TEST_CASE("validation: NaN and Inf when a check is asked for", "[validation]") {
  Case c;
  c.opt.check_finite = true;
  c.rp.v[17] = NAN;
  c.expect(Code::non_finite, "v has a non-finite value");
  Case d;
  d.opt.check_finite = true;
  d.rp.initial_state[3] = INFINITY;
  d.expect(Code::non_finite, "initial_state has a non-finite value");
}

TEST_CASE("validation: positive log-decay is refused by the chunk engine when checking", "[validation]") {
  Case c;
  c.opt.check_finite = true;
  c.rp.g[5] = 0.5f;
  const Status st = chunk_forward<GDR2>(c.p, Outputs<float, float>{c.o.view(), c.s.view()}, c.opt);
  CHECK(st.code() == Code::invalid_argument);
  CHECK(st.message().find("log-decay <= 0") != std::string::npos);
  // The recurrence itself is defined for any g.
  CHECK(recurrent_forward<GDR2>(c.p, Outputs<float, float>{c.o.view(), c.s.view()}, c.opt).ok());
}

TEST_CASE("validation: unsupported chunk size", "[validation]") {
  Case c;
  c.opt.chunk_size = 48;
  c.expect(Code::unsupported, "chunk_size 48");
}

TEST_CASE("validation: the throwing wrapper", "[validation]") {
  Case c;
  c.p.k.shape[3] += 1;
  CHECK_THROWS_AS(check(chunk_forward<GDR2>(c.p, Outputs<float, float>{c.o.view(), {}})), Error);
  CHECK_NOTHROW(check(Status()));
}

TEST_CASE("validation: erase gates outside [0, 2] are refused when checking", "[validation]") {
  Case c;
  c.opt.check_finite = true;
  c.rp.b[9] = 2.5f;
  c.expect(Code::invalid_argument, "erase gates outside [0, 2]");
}
