// gdr2-ref end to end: the test writes .npy inputs with gdr2/npy.hpp, runs the
// built gdr2-ref (GDR2_REF_EXE), and checks its outputs, summary, exit codes, and
// that bad input writes nothing.
#include <gdr2/gdr2.hpp>
#include <gdr2/npy.hpp>

#include <catch2/catch.hpp>

#include "temp_dir.hpp"

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

using namespace gdr2;
namespace fs = std::filesystem;
using gdr2::test::TempDir;

namespace {

std::string slurp(const std::string& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct RunResult {
  int code = -1;
  std::string out, err;
};

/// Run gdr2-ref with `args` (already shell-quoted where needed).
RunResult run_ref(const std::string& args, const TempDir& scratch) {
  const std::string so = scratch / "stdout.txt", se = scratch / "stderr.txt";
  const std::string cmd = std::string("'") + GDR2_REF_EXE + "' " + args + " > '" + so + "' 2> '" + se + "'";
  const int raw = std::system(cmd.c_str());
  RunResult r;
  r.code = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  r.out = slurp(so);
  r.err = slurp(se);
  return r;
}

std::string q(const std::string& s) { return "'" + s + "'"; }

template <class T>
void save(const std::string& path, const Tensor<T>& t, std::vector<Index> shape = {}) {
  if (shape.empty()) shape = {t.shape()[0], t.shape()[1], t.shape()[2], t.shape()[3]};
  npy::Array a;
  REQUIRE(npy::from_view(t.view(), shape, a).ok());
  REQUIRE(npy::save(path, a).ok());
}

/// Write every input of a random problem into `dir` as the CLI expects them.
template <class Policy, class T>
void write_problem(const RandomProblem<Policy, T>& rp, const std::string& dir) {
  save(dir + "/q.npy", rp.q);
  save(dir + "/k.npy", rp.k);
  save(dir + "/v.npy", rp.v);
  auto per_head = [](const auto& t) { return std::vector<Index>{t.shape()[0], t.shape()[1], t.shape()[2]}; };
  if (!rp.g.empty()) save(dir + "/g.npy", rp.g, Policy::decay == Decay::scalar ? per_head(rp.g) : std::vector<Index>{});
  if (!rp.b.empty()) save(dir + "/b.npy", rp.b);
  if (!rp.w.empty()) save(dir + "/w.npy", rp.w);
  if (!rp.beta.empty()) save(dir + "/beta.npy", rp.beta, per_head(rp.beta));
  if (!rp.initial_state.empty()) save(dir + "/initial_state.npy", rp.initial_state);
  if (!rp.cu_seqlens.empty()) {
    const npy::Array cu = npy::from_data(rp.cu_seqlens.data(), {Index(rp.cu_seqlens.size())});
    REQUIRE(npy::save(dir + "/cu_seqlens.npy", cu).ok());
  }
}

npy::Array load(const std::string& p) {
  npy::Array a;
  const Status st = npy::load(p, a);
  INFO(st.to_string());
  REQUIRE(st.ok());
  return a;
}

/// Relative Frobenius error of an .npy file against a tensor.
template <class U>
double rel_err(const npy::Array& a, const Tensor<U>& ref) {
  Tensor<double> t;
  REQUIRE(npy::to_tensor(a, t).ok());
  REQUIRE(t.size() == ref.size());
  double num = 0, den = 0;
  for (Index i = 0; i < t.size(); ++i) {
    const double x = t[i], y = convert<double>(ref[i]);
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num / den);
}

/// The number after `"key":{"rel":` in the summary (NaN when absent).
double summary_rel(const std::string& json, const std::string& section, const std::string& key) {
  const auto s = json.find("\"" + section + "\":{");
  if (s == std::string::npos) return NAN;
  const auto k = json.find("\"" + key + "\":{\"rel\":", s);
  if (k == std::string::npos) return NAN;
  return std::strtod(json.c_str() + k + key.size() + 10, nullptr);
}

template <class Policy, class T>
void check_policy(const char* policy, const ProblemConfig& cfg, const char* engine_flags, double engine_tol) {
  TempDir dir;
  RandomProblem<Policy, T> rp(cfg);
  write_problem(rp, dir.path.string());
  const RunResult r = run_ref(std::string("--policy ") + policy + " " + engine_flags + " " + q(dir.path.string()) +
                                  " --out " + q(dir / "out"),
                              dir);
  INFO(policy << " " << dtype_name<T>() << " " << engine_flags << "\nstdout: " << r.out << "\nstderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.empty());
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  CHECK(r.out.find(std::string("\"dtype\":\"") + dtype_name<T>() + "\"") != std::string::npos);

  const auto ref = reference_forward<Policy>(rp.problem());
  REQUIRE(ref.status.ok());
  const npy::Array ref_o = load(dir / "out/ref_o.npy"), ref_s = load(dir / "out/ref_final_state.npy");
  const npy::Array eng_o = load(dir / "out/engine_o.npy"), eng_s = load(dir / "out/engine_final_state.npy");
  CHECK(ref_o.dtype == npy::DType::float64);
  CHECK(eng_o.dtype == npy::dtype_of<accum_t<T>>());
  CHECK(ref_o.shape == std::vector<Index>{rp.B, rp.T_, cfg.Hv, cfg.V});
  CHECK(ref_s.shape == std::vector<Index>{rp.N, cfg.Hv, cfg.K, cfg.V});
  // The tool's fp64 reference is the library's, on the same values.
  CHECK(rel_err(ref_o, ref.o) <= 1e-14);
  CHECK(rel_err(ref_s, ref.final_state) <= 1e-14);
  // The engine's output matches fp64 to its precision, and the summary says so.
  const double eo = rel_err(eng_o, ref.o), es = rel_err(eng_s, ref.final_state);
  CAPTURE(eo, es);
  CHECK(eo <= engine_tol);
  CHECK(es <= engine_tol);
  CHECK(std::abs(summary_rel(r.out, "engine_vs_ref", "o") - eo) <= 1e-3 * eo + 1e-300);
  CHECK(std::abs(summary_rel(r.out, "engine_vs_ref", "final_state") - es) <= 1e-3 * es + 1e-300);
}

ProblemConfig small_config(bool varlen) {
  ProblemConfig c;
  c.T = 45;
  c.B = 2;
  c.Hk = 1;
  c.Hv = 2;
  c.K = 8;
  c.V = 6;
  c.b_max = 2;
  if (varlen) c.seqlens = {7, 0, 20, 1};
  return c;
}

/// A directory holding a valid fp32 GDR-2 problem, for the error cases.
struct ValidCase {
  TempDir dir;
  RandomProblem<GDR2, float> rp{small_config(false)};
  ValidCase() { write_problem(rp, dir.path.string()); }
  std::string in() const { return q(dir.path.string()); }
  std::string out() const { return dir / "out"; }
  /// Run with extra args; expect exit 2, a message containing `needle`, and no output.
  void expect_error(const std::string& args, const std::string& needle) const {
    const RunResult r = run_ref(in() + " --out " + q(out()) + " " + args, dir);
    INFO("args: " << args << "\nstdout: " << r.out << "\nstderr: " << r.err);
    CHECK(r.code == 2);
    CHECK(r.out.empty());
    CHECK(r.err.find(needle) != std::string::npos);
    CHECK(r.err.find("nothing was written") != std::string::npos);
    CHECK_FALSE(fs::exists(out()));
  }
};

}  // namespace

TEST_CASE("gdr2-ref: every policy and input dtype, both engines, fixed and varlen", "[cli]") {
  for (bool varlen : {false, true}) {
    const ProblemConfig c = small_config(varlen);
    check_policy<GDR2, float>("gdr2", c, "--engine chunk --chunk 16", 1e-5);
    check_policy<GDR2, double>("gdr2", c, "--engine recurrent", 1e-12);
    check_policy<GDR2, Eigen::bfloat16>("gdr2", c, "", 1e-5);
    check_policy<KDA, Eigen::half>("kda", c, "--chunk 32 --threads 2", 1e-5);
    check_policy<GDN, float>("gdn", c, "", 1e-5);
    check_policy<DeltaNet, double>("deltanet", c, "--engine chunk", 1e-12);
  }
  ProblemConfig grouped = small_config(false);
  grouped.gates_per_key_head = true;
  grouped.Hk = 2;
  grouped.Hv = 6;
  check_policy<KDA, float>("kda", grouped, "", 1e-5);
}

TEST_CASE("gdr2-ref: --check compares a kernel's output and --tol sets the exit code", "[cli]") {
  TempDir dir;
  RandomProblem<GDR2, float> rp(small_config(true));
  write_problem(rp, dir.path.string());
  const auto ref = reference_forward<GDR2>(rp.problem());
  // "Your kernel": the fp32 chunk engine, and a copy with one element off by 0.1.
  auto mine = rp.make_output();
  REQUIRE(chunk_forward<GDR2>(rp.problem(), Outputs<float, float>{mine.view(), {}}).ok());
  save(dir / "mine_o.npy", mine);
  auto wrong = mine;
  wrong[5] += 0.1f;
  save(dir / "wrong_o.npy", wrong);
  const double true_err = rel_error(mine.view(), ref.o.view());

  const RunResult ok = run_ref(q(dir.path.string()) + " --no-write --check o=" + q(dir / "mine_o.npy") + " --tol 1e-4", dir);
  INFO(ok.out << ok.err);
  CHECK(ok.code == 0);
  CHECK(ok.out.find("\"pass\":true") != std::string::npos);
  CHECK(std::abs(summary_rel(ok.out, "check", "o") - true_err) <= 1e-3 * true_err);
  CHECK_FALSE(fs::exists(dir / "ref_o.npy"));  // --no-write
  CHECK_FALSE(fs::exists(dir / "engine_o.npy"));

  const RunResult bad = run_ref(q(dir.path.string()) + " --no-write --check o=" + q(dir / "wrong_o.npy") + " --tol 1e-4", dir);
  INFO(bad.out << bad.err);
  CHECK(bad.code == 1);
  CHECK(bad.out.find("\"pass\":false") != std::string::npos);
  CHECK(summary_rel(bad.out, "check", "o") > 1e-3);

  // Without --tol the check is reported, never enforced.
  const RunResult report = run_ref(q(dir.path.string()) + " --no-write --check o=" + q(dir / "wrong_o.npy"), dir);
  CHECK(report.code == 0);
  CHECK(report.out.find("\"pass\"") == std::string::npos);
}

TEST_CASE("gdr2-ref: bad input gets a clear error, exit code 2 and no output", "[cli]") {
  ValidCase c;
  const std::string d = c.dir.path.string();
  auto overwrite = [&](const std::string& name, const std::vector<unsigned char>& bytes) {
    std::ofstream f(d + "/" + name, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  };
  auto file_bytes = [&](const std::string& name) {
    std::ifstream f(d + "/" + name, std::ios::binary);
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
  };
  auto save_float = [&](const std::string& name, std::vector<Index> shape, float value = 0.5f) {
    Index n = 1;
    for (Index x : shape) n *= x;
    std::vector<float> data(static_cast<size_t>(n), value);
    REQUIRE(npy::save(d + "/" + name, npy::from_data(data.data(), shape)).ok());
  };

  SECTION("usage") {
    c.expect_error("--engine fast", "--engine must be chunk or recurrent");
    c.expect_error("--chunk 48", "--chunk must be 16, 32 or 64");
    c.expect_error("--policy mamba", "--policy must be");
    c.expect_error("--frobnicate", "unknown option '--frobnicate'");
    c.expect_error("--tol 1e-3", "--tol needs at least one --check");
    c.expect_error("--beta " + q(d + "/q.npy"), "--beta is not an input of the gdr2 policy");
    c.expect_error("--check o", "--check expects NAME=FILE");
    c.expect_error("--check dq=" + q(d + "/q.npy"), "no result named 'dq'");
    c.expect_error("--scale abc", "--scale expects a number");
  }
  SECTION("missing inputs") {
    fs::remove(d + "/w.npy");
    c.expect_error("", "w is required by the gdr2 policy");
    save_float("beta.npy", {2, 45, 2});
    c.expect_error("", "present but not read by this policy: beta.npy");
    fs::remove(d + "/q.npy");
    c.expect_error("", "q is required");
  }
  SECTION("wrong magic") {
    overwrite("k.npy", {'h', 'e', 'l', 'l', 'o', '!', '!', '!', '!', '!'});
    c.expect_error("", "k.npy: not a .npy file (wrong magic");
  }
  SECTION("unsupported dtype") {
    auto bytes = file_bytes("v.npy");
    const std::string text(bytes.begin(), bytes.end());
    const auto at = text.find("<f4");
    REQUIRE(at != std::string::npos);
    bytes[at + 1] = 'c';  // '<c4': complex
    overwrite("v.npy", bytes);
    c.expect_error("", "v.npy: unsupported dtype '<c4'");
  }
  SECTION("an integer dtype where floats are expected") {
    std::vector<std::int32_t> data(2 * 45 * 1 * 8, 1);
    REQUIRE(npy::save(d + "/q.npy", npy::from_data(data.data(), {2, 45, 1, 8})).ok());
    c.expect_error("", "q has dtype int32");
  }
  SECTION("Fortran order") {
    auto bytes = file_bytes("b.npy");
    const std::string text(bytes.begin(), bytes.end());
    const auto at = text.find("False");
    REQUIRE(at != std::string::npos);
    std::copy_n("True ", 5, bytes.begin() + long(at));
    overwrite("b.npy", bytes);
    c.expect_error("", "b.npy: Fortran-order arrays are not supported");
  }
  SECTION("truncated data") {
    auto bytes = file_bytes("g.npy");
    bytes.resize(bytes.size() - 4);
    overwrite("g.npy", bytes);
    c.expect_error("", "g.npy: truncated data");
  }
  SECTION("mismatched shapes") {
    save_float("k.npy", {2, 45, 1, 9});
    c.expect_error("", "k has shape [2, 45, 1, 9], expected [2, 45, 1, 8]");
  }
  SECTION("mismatched shapes: gate heads and ranks") {
    save_float("w.npy", {2, 45, 3, 6});
    c.expect_error("", "w has 3 heads");
  }
  SECTION("wrong rank") {
    save_float("v.npy", {2, 45, 12});
    c.expect_error("", "v has shape (2, 45, 12), expected [B, T, Hv, V]");
  }
  SECTION("dtypes of q, k, v differ") {
    std::vector<double> data(2 * 45 * 2 * 6, 0.5);
    REQUIRE(npy::save(d + "/v.npy", npy::from_data(data.data(), {2, 45, 2, 6})).ok());
    c.expect_error("", "v is float64 but q is float32");
  }
  SECTION("bad cu_seqlens") {
    const std::int64_t bad_cu[3] = {0, 50, 45};
    REQUIRE(npy::save(d + "/cu_seqlens.npy", npy::from_data(bad_cu, {3})).ok());
    c.expect_error("", "packed varlen input (cu_seqlens given) expects B = 1");
    save_float("cu_seqlens.npy", {3});
    c.expect_error("", "cu_seqlens has dtype float32, expected int32 or int64");
  }
  SECTION("non-finite values and positive log-decays") {
    save_float("v.npy", {2, 45, 2, 6}, NAN);
    c.expect_error("", "non-finite input: v has a non-finite value");
  }
  SECTION("positive log-decay: the chunk engine refuses and says what to do") {
    save_float("g.npy", {2, 45, 2, 8}, 0.25f);
    c.expect_error("", "--engine recurrent");
    // ... and the recurrent engine takes it.
    const RunResult r = run_ref(c.in() + " --engine recurrent --no-write", c.dir);
    CHECK(r.code == 0);
  }
  SECTION("a --check file of the wrong shape") {
    save_float("mine.npy", {2, 45, 2, 5});
    c.expect_error("--check o=" + q(d + "/mine.npy"), "does not match o's (2, 45, 2, 6)");
  }
  SECTION("d_final_state without d_o") {
    save_float("d_final_state.npy", {2, 2, 8, 6});
    c.expect_error("", "d_final_state is given without d_o");
  }
  SECTION("an output directory that cannot be created") {
    save_float("blocker", {1});
    const RunResult r = run_ref(c.in() + " --out " + q(d + "/blocker/sub"), c.dir);
    CHECK(r.code == 2);
    CHECK(r.err.find("cannot create the output directory") != std::string::npos);
  }
}

TEST_CASE("gdr2-ref: --help and named input files", "[cli]") {
  TempDir dir;
  const RunResult h = run_ref("--help", dir);
  CHECK(h.code == 0);
  CHECK(h.out.find("usage: gdr2-ref") != std::string::npos);
  // Inputs given one by one, no INPUT_DIR; outputs to --out.
  ProblemConfig cfg = small_config(false);
  cfg.initial_state = false;  // not passed below: zeros
  RandomProblem<DeltaNet, float> rp(cfg);
  save(dir / "qq.npy", rp.q);
  save(dir / "kk.npy", rp.k);
  save(dir / "vv.npy", rp.v);
  save(dir / "bb.npy", rp.beta, {rp.B, rp.T_, 2});
  const RunResult r = run_ref("--policy deltanet --q " + q(dir / "qq.npy") + " --k " + q(dir / "kk.npy") + " --v " +
                                  q(dir / "vv.npy") + " --beta " + q(dir / "bb.npy") + " --out " + q(dir / "o"),
                              dir);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(gdr2::test::dir_entries(dir.path / "o") ==
        std::vector<std::string>{"engine_final_state.npy", "engine_o.npy", "ref_final_state.npy", "ref_o.npy"});
  const auto ref = reference_forward<DeltaNet>(rp.problem());
  CHECK(rel_err(load(dir / "o/ref_o.npy"), ref.o) <= 1e-14);
}

TEST_CASE("gdr2-ref: gradients from d_o, engine against the fp64 BPTT", "[cli]") {
  // Both engines' gradients (written as engine_<grad>.npy) must match the fp64
  // BPTT (ref_<grad>.npy) to fp32 accuracy: 1e-4 leaves room for the chunk
  // backward's fp32 solve, measured ~1e-6 on these problems.
  for (const char* engine : {"chunk", "recurrent"}) {
    ValidCase c;
    const std::string d = c.dir.path.string();
    RandomUpstream<float> up(c.rp.problem(), 7);
    REQUIRE(npy::save(d + "/d_o.npy", npy::from_view(up.d_o.view())).ok());
    const RunResult r = run_ref(c.in() + " --out " + q(c.out()) + " --engine " + engine, c.dir);
    INFO(engine << "\nstdout: " << r.out << "\nstderr: " << r.err);
    REQUIRE(r.code == 0);
    for (const char* g : {"dq", "dk", "dv", "dg", "db", "dw", "d_initial_state"}) {
      INFO(g);
      npy::Array ra, ea;
      REQUIRE(npy::load(c.out() + "/ref_" + g + ".npy", ra).ok());
      REQUIRE(npy::load(c.out() + "/engine_" + g + ".npy", ea).ok());
      Tensor<double> ref, eng;
      REQUIRE(npy::to_tensor(ra, ref).ok());
      REQUIRE(npy::to_tensor(ea, eng).ok());
      double norm = 0;
      for (Index i = 0; i < ref.size(); ++i) norm += ref[i] * ref[i];
      CHECK(norm > 0);
      CHECK(rel_error(eng.view(), ref.view()) <= 1e-4);
    }
  }
}
