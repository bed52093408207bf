// gdr2-ref: the gdr2 reference on NumPy .npy files, for checking kernels written
// elsewhere (Triton, CUDA, JAX, ...) against the fp64 recurrence of SPEC §1.
//
// Reads q, k, v and the gates of a gate policy (plus an optional initial state and
// cu_seqlens) from .npy files, runs the fp64 recurrence and one gdr2 engine on the
// inputs as read, writes both results as .npy and prints a one-line JSON summary
// of the errors. `--check o=FILE` compares your own kernel's output with the
// reference, and `--tol` turns that into an exit code. Run `gdr2-ref --help`.
//
// Exit codes: 0 success; 1 a --check error exceeds --tol; 2 bad usage or bad
// input (message on stderr, nothing written).
#include <gdr2/gdr2.hpp>
#include <gdr2/npy.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

using namespace gdr2;
namespace fs = std::filesystem;

namespace {

constexpr const char* kUsage = R"(usage: gdr2-ref [options] [INPUT_DIR]

Runs the Gated Delta Rule-2 recurrence (SPEC section 1) on .npy inputs in fp64 and
with one gdr2 engine, writes both results as .npy and prints a JSON summary line.

Inputs (C-order .npy; float16 '<f2', bfloat16 as uint16 '<u2', float32, float64),
read from INPUT_DIR/<name>.npy or from --<name> FILE:
  q, k               [B, T, Hk, K]
  v                  [B, T, Hv, V]          Hv a multiple of Hk
  g                  [B, T, H, K]           log-decay (gdr2, kda); [B, T, H] for gdn
  b                  [B, T, H, K]           erase gate (gdr2)
  w                  [B, T, H, V]           write gate (gdr2)
  beta               [B, T, H]              tied gate (kda, gdn, deltanet)
  initial_state      [N, Hv, K, V]          optional; zeros when absent
  cu_seqlens         [N+1] int32 or int64   optional; packed varlen (B = 1)
  d_o, d_final_state [B, T, Hv, V], [N, Hv, K, V]: upstream gradients; giving
                     d_o asks for every input's gradient
  Gate tensors have H = Hk or Hv heads. q, k and v share one dtype, which is the
  engine's input dtype; other inputs are converted to it (g and initial_state to
  the accumulation type). The fp64 reference uses every value exactly as read.

Options:
  --policy P     gdr2 (default) | kda | gdn | deltanet
  --engine E     chunk (default) | recurrent: the engine compared with fp64
  --chunk C      chunk size of the chunk engine: 16, 32 or 64 (default 64)
  --scale S      multiplies q (default 1/sqrt(K))
  --threads N    worker threads (default 1)
  --out DIR      output directory (default INPUT_DIR, or . without one)
  --check NAME=FILE  compare FILE (your kernel's result) with the fp64 reference
                 NAME: o, final_state (and the gradients when computed);
                 repeatable; the errors go into the summary
  --tol X        with --check: exit 1 when a checked relative error exceeds X
  --no-write     print the summary only
  -h, --help     this text

Outputs in the output directory:
  ref_o.npy, ref_final_state.npy          the fp64 recurrence (float64)
  engine_o.npy, engine_final_state.npy    the engine, in its accumulation type
                                          (float32; float64 for float64 inputs)
  with d_o: ref_<grad>.npy, engine_<grad>.npy for dq dk dv dg db dw dbeta
            d_initial_state (those of the inputs given)
Summary (stdout, one line of JSON): shapes, policy, engine, and for every output
its relative Frobenius error ||x - ref|| / ||ref|| and max |x - ref|.

Exit status: 0 ok, 1 a --check error above --tol, 2 bad usage or input (nothing
is written then).
)";

/// Every input file name the tool knows.
const char* const kInputNames[] = {"q", "k", "v", "g", "b", "w", "beta", "initial_state", "cu_seqlens", "d_o",
                                   "d_final_state"};

/// A fatal, user-facing error: printed to stderr, exit code 2.
struct Fail {
  std::string message;
};

[[noreturn]] void fail(const std::string& m) { throw Fail{m}; }

enum class EngineKind { chunk, recurrent };

struct Args {
  std::string input_dir, out_dir;
  std::map<std::string, std::string> files;  // name → explicit path (--q FILE)
  std::string policy = "gdr2";
  EngineKind engine = EngineKind::chunk;
  int chunk = 64;
  std::optional<double> scale;
  int threads = 1;
  std::vector<std::pair<std::string, std::string>> checks;  // NAME=FILE
  std::optional<double> tol;
  bool write = true;
};

double parse_number(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  const double x = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(x)) fail(flag + " expects a number, got '" + s + "'");
  return x;
}

int parse_int(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  const long x = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || x < 1 || x > 4096) fail(flag + " expects a positive integer, got '" + s + "'");
  return int(x);
}

/// Parse the command line; `help` is set for -h / --help.
Args parse_args(int argc, char** argv, bool& help) {
  Args a;
  help = false;
  auto value = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc) fail(flag + " needs a value");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "-h" || s == "--help") {
      help = true;
      return a;
    } else if (s == "--policy") {
      a.policy = value(i, s);
      if (a.policy != "gdr2" && a.policy != "kda" && a.policy != "gdn" && a.policy != "deltanet")
        fail("--policy must be gdr2, kda, gdn or deltanet, got '" + a.policy + "'");
    } else if (s == "--engine") {
      const std::string e = value(i, s);
      if (e == "chunk") a.engine = EngineKind::chunk;
      else if (e == "recurrent") a.engine = EngineKind::recurrent;
      else fail("--engine must be chunk or recurrent, got '" + e + "'");
    } else if (s == "--chunk") {
      a.chunk = parse_int(s, value(i, s));
      if (a.chunk != 16 && a.chunk != 32 && a.chunk != 64) fail("--chunk must be 16, 32 or 64");
    } else if (s == "--scale") {
      a.scale = parse_number(s, value(i, s));
    } else if (s == "--threads") {
      a.threads = parse_int(s, value(i, s));
    } else if (s == "--out") {
      a.out_dir = value(i, s);
    } else if (s == "--check") {
      const std::string v = value(i, s);
      const auto eq = v.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == v.size()) fail("--check expects NAME=FILE, got '" + v + "'");
      a.checks.emplace_back(v.substr(0, eq), v.substr(eq + 1));
    } else if (s == "--tol") {
      a.tol = parse_number(s, value(i, s));
      if (*a.tol < 0) fail("--tol must be >= 0");
    } else if (s == "--no-write") {
      a.write = false;
    } else if (s.size() > 2 && s.compare(0, 2, "--") == 0) {
      const std::string name = s.substr(2);
      bool known = false;
      for (const char* n : kInputNames) known = known || name == n;
      if (!known) fail("unknown option '" + s + "'");
      a.files[name] = value(i, s);
    } else if (!s.empty() && s[0] == '-') {
      fail("unknown option '" + s + "'");
    } else {
      if (!a.input_dir.empty()) fail("more than one INPUT_DIR given ('" + a.input_dir + "', '" + s + "')");
      a.input_dir = s;
    }
  }
  if (!a.input_dir.empty() && !fs::is_directory(a.input_dir)) fail("INPUT_DIR '" + a.input_dir + "' is not a directory");
  if (a.tol && a.checks.empty()) fail("--tol needs at least one --check NAME=FILE");
  if (a.out_dir.empty()) a.out_dir = a.input_dir.empty() ? "." : a.input_dir;
  return a;
}

// ---------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------

/// Which inputs a policy reads (besides q, k, v, initial_state, cu_seqlens, d_o, d_final_state).
std::vector<std::string> policy_gates(const std::string& policy) {
  if (policy == "gdr2") return {"g", "b", "w"};
  if (policy == "kda" || policy == "gdn") return {"g", "beta"};
  return {"beta"};
}

/// The .npy arrays of one run, by input name, and where each came from.
struct Inputs {
  std::map<std::string, npy::Array> arrays;
  std::map<std::string, std::string> paths;
  std::vector<std::string> ignored;  ///< files in INPUT_DIR the policy does not read
  bool has(const std::string& n) const { return arrays.count(n) != 0; }
  const npy::Array& at(const std::string& n) const { return arrays.at(n); }
};

Inputs load_inputs(const Args& a) {
  const auto gates = policy_gates(a.policy);
  auto used = [&](const std::string& n) {
    for (const auto& g : gates)
      if (g == n) return true;
    return n != "g" && n != "b" && n != "w" && n != "beta";
  };
  Inputs in;
  for (const char* name : kInputNames) {
    std::string path;
    const auto it = a.files.find(name);
    if (it != a.files.end()) {
      if (!used(name)) {
        std::string takes;
        for (const auto& g : gates) takes += (takes.empty() ? "" : ", ") + g;
        fail("--" + std::string(name) + " is not an input of the " + a.policy + " policy (its gates: " + takes + ")");
      }
      path = it->second;
    } else if (!a.input_dir.empty()) {
      const fs::path p = fs::path(a.input_dir) / (std::string(name) + ".npy");
      std::error_code ec;
      if (!fs::exists(p, ec)) continue;
      if (!used(name)) {
        in.ignored.push_back(p.filename().string());
        continue;
      }
      path = p.string();
    } else {
      continue;
    }
    npy::Array arr;
    const Status st = npy::load(path, arr);
    if (!st.ok()) fail(st.message());
    if (arr.size() == 0) fail(path + ": empty array " + npy::shape_string(arr.shape) + ", nothing to compute");
    in.arrays[name] = std::move(arr);
    in.paths[name] = path;
  }
  for (const char* req : {"q", "k", "v"}) {
    if (!in.has(req)) {
      fail(std::string(req) + " is required: " +
           (a.input_dir.empty() ? std::string("pass --") + req + " FILE or an INPUT_DIR"
                                : "no " + (fs::path(a.input_dir) / (std::string(req) + ".npy")).string() + " and no --" + req));
    }
  }
  for (const auto& g : gates) {
    if (in.has(g)) continue;
    std::string hint;
    for (const auto& ig : in.ignored) hint += (hint.empty() ? "" : ", ") + ig;
    fail(g + " is required by the " + a.policy + " policy" +
         (a.input_dir.empty() ? std::string(" (pass --") + g + " FILE)"
                              : " (no " + (fs::path(a.input_dir) / (g + ".npy")).string() + ")") +
         (hint.empty() ? "" : "; present but not read by this policy: " + hint + " - see --policy"));
  }
  return in;
}

std::string where(const Inputs& in, const std::string& n) { return in.paths.count(n) ? in.paths.at(n) : n; }

/// Check an input's rank (and float dtype) before it becomes a rank-4 tensor.
void expect_float(const Inputs& in, const std::string& n) {
  const auto& a = in.at(n);
  if (!npy::is_float(a.dtype))
    fail(where(in, n) + ": " + n + " has dtype " + npy::dtype_name(a.dtype) +
         "; expected float16, bfloat16 (as uint16), float32 or float64");
}

void expect_rank4(const Inputs& in, const std::string& n, const char* layout) {
  expect_float(in, n);
  const auto& a = in.at(n);
  if (a.rank() != 4) fail(where(in, n) + ": " + n + " has shape " + npy::shape_string(a.shape) + ", expected " + layout);
}

/// A per-head scalar: [B, T, H] or [B, T, H, 1].
void expect_scalar(const Inputs& in, const std::string& n, const std::string& policy) {
  expect_float(in, n);
  const auto& a = in.at(n);
  if (!(a.rank() == 3 || (a.rank() == 4 && a.shape[3] == 1)))
    fail(where(in, n) + ": " + n + " has shape " + npy::shape_string(a.shape) + ", expected [B, T, H] (one value per head) for the " +
         policy + " policy");
}

/// Check ranks and dtypes of every input present (the library checks the extents).
void check_ranks(const Inputs& in, const std::string& policy) {
  expect_rank4(in, "q", "[B, T, Hk, K]");
  expect_rank4(in, "k", "[B, T, Hk, K]");
  expect_rank4(in, "v", "[B, T, Hv, V]");
  for (const char* n : {"k", "v"}) {
    if (in.at(n).dtype != in.at("q").dtype) {
      fail(where(in, n) + ": " + n + " is " + npy::dtype_name(in.at(n).dtype) + " but q is " +
           npy::dtype_name(in.at("q").dtype) + "; q, k and v must share one dtype (the engine's input dtype)");
    }
  }
  if (in.has("g")) {
    if (policy == "gdn") expect_scalar(in, "g", policy);
    else expect_rank4(in, "g", "[B, T, H, K] (a log-decay per key channel)");
  }
  if (in.has("b")) expect_rank4(in, "b", "[B, T, H, K]");
  if (in.has("w")) expect_rank4(in, "w", "[B, T, H, V]");
  if (in.has("beta")) expect_scalar(in, "beta", policy);
  if (in.has("initial_state")) expect_rank4(in, "initial_state", "[N, Hv, K, V]");
  if (in.has("d_o")) expect_rank4(in, "d_o", "[B, T, Hv, V]");
  if (in.has("d_final_state")) expect_rank4(in, "d_final_state", "[N, Hv, K, V]");
  if (in.has("d_final_state") && !in.has("d_o")) fail("d_final_state is given without d_o");
  if (in.has("cu_seqlens")) {
    const auto& c = in.at("cu_seqlens");
    if (c.dtype != npy::DType::int32 && c.dtype != npy::DType::int64)
      fail(where(in, "cu_seqlens") + ": cu_seqlens has dtype " + npy::dtype_name(c.dtype) + ", expected int32 or int64");
    if (c.rank() != 1)
      fail(where(in, "cu_seqlens") + ": cu_seqlens has shape " + npy::shape_string(c.shape) + ", expected [N+1]");
  }
}

/// Tensors of one problem in element type T (accumulation type for g and states),
/// converted from the arrays; the views form a Problem<T>.
template <class T>
struct TypedInputs {
  using Acc = accum_t<T>;
  Tensor<T> q, k, v, b, w, beta, d_o;
  Tensor<Acc> g, initial_state, d_final_state;
  std::vector<std::int64_t> cu_seqlens;
  Problem<T> p;
  GradOutputs<T> up;

  TypedInputs(const Inputs& in, std::optional<double> scale) {
    auto get = [&](const char* n, auto& t) {
      if (!in.has(n)) return;
      const Status st = npy::to_tensor(in.at(n), t, where(in, n));
      if (!st.ok()) fail(st.message());
    };
    get("q", q), get("k", k), get("v", v), get("b", b), get("w", w), get("beta", beta), get("d_o", d_o);
    get("g", g), get("initial_state", initial_state), get("d_final_state", d_final_state);
    if (in.has("cu_seqlens")) cu_seqlens = in.at("cu_seqlens").to_vector<std::int64_t>();
    p.q = q.view(), p.k = k.view(), p.v = v.view(), p.g = g.view(), p.b = b.view(), p.w = w.view();
    p.beta = beta.view(), p.initial_state = initial_state.view();
    if (!cu_seqlens.empty()) p.cu_seqlens = SeqOffsets(cu_seqlens.data(), Index(cu_seqlens.size()));
    p.scale = scale;
    up.d_o = d_o.view(), up.d_final_state = d_final_state.view();
  }
  TypedInputs(const TypedInputs&) = delete;
  TypedInputs& operator=(const TypedInputs&) = delete;
};

// ---------------------------------------------------------------------------
// Results: named outputs of the reference (fp64) and the engine (Acc)
// ---------------------------------------------------------------------------

/// One result both sides computed: its .npy shape and the two arrays.
struct Result {
  std::string name;
  npy::Array ref, engine;
};

/// ‖a − b‖_F / ‖b‖_F (‖a‖_F when b = 0) and max |a − b| over equal-length data;
/// NaN when a value is not finite.
struct Errors {
  double rel = NAN, max_abs = NAN;
};

Errors compare(const npy::Array& a, const npy::Array& ref) {
  Errors e;
  double num = 0, den = 0, mx = 0;
  for (Index i = 0; i < ref.size(); ++i) {
    const double x = a.get<double>(i), y = ref.get<double>(i);
    if (!std::isfinite(x) || !std::isfinite(y)) return e;
    num += (x - y) * (x - y);
    den += y * y;
    mx = std::max(mx, std::abs(x - y));
  }
  e.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  e.max_abs = mx;
  return e;
}

/// The backward of the chosen engine (BPTT, or the chunk backward recomputing its
/// chunk-start states), writing every gradient view given in `gr`.
template <class Policy, class T>
Status run_backward(EngineKind e, const Problem<T>& p, const GradOutputs<T>& up, const Gradients<accum_t<T>>& gr,
                    const Options& opt) {
  return e == EngineKind::chunk ? chunk_backward<Policy>(p, up, gr, opt) : recurrent_backward<Policy>(p, up, gr, opt);
}

/// Gradient buffers shaped like the inputs given, and their names and .npy shapes.
template <class Acc>
struct GradientSet {
  std::map<std::string, Tensor<Acc>> t;
  std::map<std::string, std::vector<Index>> shapes;
  Gradients<Acc> views;

  template <class T>
  GradientSet(const Inputs& in, const Problem<T>& p) {
    auto add = [&](const char* input, const char* name, View<Acc>& slot, const auto& like) {
      if (!in.has(input)) return;
      auto& x = t[name];
      x = Tensor<Acc>(like.shape[0], like.shape[1], like.shape[2], like.shape[3]);
      slot = x.view();
      shapes[name] = in.at(input).shape;
    };
    add("q", "dq", views.dq, p.q);
    add("k", "dk", views.dk, p.k);
    add("v", "dv", views.dv, p.v);
    add("g", "dg", views.dg, p.g);
    add("b", "db", views.db, p.b);
    add("w", "dw", views.dw, p.w);
    add("beta", "dbeta", views.dbeta, p.beta);
    add("initial_state", "d_initial_state", views.d_initial_state, p.initial_state);
  }
};

/// Run the reference (fp64 recurrence) and the engine in type T; return every result.
template <class Policy, class T>
std::vector<Result> run(const Inputs& in, const Args& a) {
  using Acc = accum_t<T>;
  const TypedInputs<double> rin(in, a.scale);
  const TypedInputs<T> ein(in, a.scale);

  std::unique_ptr<Eigen::ThreadPool> pool;
  std::unique_ptr<ThreadPoolExecutor> exec;
  Options opt;
  opt.check_finite = true;
  opt.chunk_size = a.chunk;
  if (a.threads > 1) {
    pool = std::make_unique<Eigen::ThreadPool>(a.threads - 1);
    exec = std::make_unique<ThreadPoolExecutor>(*pool);
    opt.executor = exec.get();
  }

  // Validation happens inside the engines; the reference goes first so that
  // shape errors are reported the same way whatever the engine.
  Dims d;
  Status st = validate_problem<Policy>(rin.p, opt, /*chunked=*/false, d);
  if (!st.ok()) fail(st.to_string());
  Tensor<double> ref_o(d.B, d.T, d.Hv, d.V), ref_s(d.N, d.Hv, d.K, d.V);
  Tensor<Acc> eng_o(d.B, d.T, d.Hv, d.V), eng_s(d.N, d.Hv, d.K, d.V);
  st = recurrent_forward<Policy>(rin.p, Outputs<double, double>{ref_o.view(), ref_s.view()}, opt);
  if (!st.ok()) fail(st.to_string());
  const Outputs<Acc, Acc> eo{eng_o.view(), eng_s.view()};
  st = a.engine == EngineKind::chunk ? chunk_forward<Policy>(ein.p, eo, opt) : recurrent_forward<Policy>(ein.p, eo, opt);
  if (!st.ok()) {
    fail(st.to_string() + (a.engine == EngineKind::chunk && st.message().find("log-decay") != std::string::npos
                               ? " (the recurrent engine takes any g: --engine recurrent)"
                               : ""));
  }

  std::vector<Result> results;
  auto add = [&](const std::string& name, const auto& ref, const auto& eng, const std::vector<Index>& shape) {
    Result r;
    r.name = name;
    Status s1 = npy::from_view(ref.view(), shape, r.ref), s2 = npy::from_view(eng.view(), shape, r.engine);
    if (!s1.ok() || !s2.ok()) fail("internal error writing " + name + ": " + (s1.ok() ? s2 : s1).message());
    results.push_back(std::move(r));
  };
  add("o", ref_o, eng_o, {d.B, d.T, d.Hv, d.V});
  add("final_state", ref_s, eng_s, {d.N, d.Hv, d.K, d.V});

  if (in.has("d_o")) {
    GradientSet<double> rg(in, rin.p);
    GradientSet<Acc> eg(in, ein.p);
    st = validate_gradients<Policy>(rin.up, rg.views, rin.p, opt, d);
    if (!st.ok()) fail(st.to_string());
    st = run_backward<Policy>(EngineKind::recurrent, rin.p, rin.up, rg.views, opt);
    if (!st.ok()) fail(st.to_string());
    st = run_backward<Policy>(a.engine, ein.p, ein.up, eg.views, opt);
    if (!st.ok()) fail(st.to_string());
    for (auto& [name, ref] : rg.t) add(name, ref, eg.t.at(name), rg.shapes.at(name));
  }
  return results;
}

template <class Policy>
std::vector<Result> run_dtype(const Inputs& in, const Args& a) {
  switch (in.at("q").dtype) {
    case npy::DType::float64: return run<Policy, double>(in, a);
    case npy::DType::float32: return run<Policy, float>(in, a);
    case npy::DType::bfloat16: return run<Policy, Eigen::bfloat16>(in, a);
    case npy::DType::float16: return run<Policy, Eigen::half>(in, a);
    default: fail("q must be a float array");
  }
}

// ---------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------

std::string json_number(double x) {
  if (!std::isfinite(x)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3e", x);
  return buf;
}

std::string json_string(const std::string& s) {
  std::string r = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') r += '\\', r += c;
    else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      r += buf;
    } else r += c;
  }
  return r + "\"";
}

std::string json_errors(const Errors& e) {
  return "{\"rel\":" + json_number(e.rel) + ",\"max_abs\":" + json_number(e.max_abs) + "}";
}

int main_impl(int argc, char** argv) {
  bool help = false;
  const Args a = parse_args(argc, argv, help);
  if (help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  const Inputs in = load_inputs(a);
  check_ranks(in, a.policy);

  std::vector<Result> results;
  if (a.policy == "gdr2") results = run_dtype<GDR2>(in, a);
  else if (a.policy == "kda") results = run_dtype<KDA>(in, a);
  else if (a.policy == "gdn") results = run_dtype<GDN>(in, a);
  else results = run_dtype<DeltaNet>(in, a);

  // Candidate files from --check: loaded and compared before anything is written.
  std::vector<std::pair<std::string, Errors>> checked;
  for (const auto& [name, path] : a.checks) {
    const Result* r = nullptr;
    for (const auto& x : results) r = x.name == name ? &x : r;
    if (!r) {
      std::string names;
      for (const auto& x : results) names += (names.empty() ? "" : ", ") + x.name;
      fail("--check " + name + "=...: no result named '" + name + "' (this run computes " + names + ")");
    }
    npy::Array cand;
    const Status st = npy::load(path, cand);
    if (!st.ok()) fail(st.message());
    if (!npy::is_float(cand.dtype)) fail(path + ": dtype " + npy::dtype_name(cand.dtype) + " is not a float type");
    if (cand.shape != r->ref.shape)
      fail(path + ": shape " + npy::shape_string(cand.shape) + " does not match " + name + "'s " +
           npy::shape_string(r->ref.shape));
    checked.emplace_back(name, compare(cand, r->ref));
  }

  std::vector<std::string> written;
  if (a.write) {
    std::vector<std::pair<std::string, const npy::Array*>> files;
    for (const auto& r : results) {
      files.emplace_back((fs::path(a.out_dir) / ("ref_" + r.name + ".npy")).string(), &r.ref);
      files.emplace_back((fs::path(a.out_dir) / ("engine_" + r.name + ".npy")).string(), &r.engine);
    }
    std::error_code ec;
    fs::create_directories(a.out_dir, ec);
    if (ec) fail("cannot create the output directory '" + a.out_dir + "': " + ec.message());
    const Status st = npy::save_all(files);
    if (!st.ok()) fail(st.message());
    for (const auto& f : files) written.push_back(fs::path(f.first).filename().string());
  }

  bool pass = true;
  const auto& q = in.at("q");
  const auto& v = in.at("v");
  const auto& st_shape = results[1].ref.shape;  // final_state: [N, Hv, K, V]
  std::string j = "{\"policy\":" + json_string(a.policy) +
                  ",\"engine\":" + json_string(a.engine == EngineKind::chunk ? "chunk" : "recurrent");
  if (a.engine == EngineKind::chunk) j += ",\"chunk\":" + std::to_string(a.chunk);
  j += ",\"dtype\":" + json_string(npy::dtype_name(q.dtype));
  j += ",\"B\":" + std::to_string(q.shape[0]) + ",\"T\":" + std::to_string(q.shape[1]) +
       ",\"Hk\":" + std::to_string(q.shape[2]) + ",\"Hv\":" + std::to_string(v.shape[2]) +
       ",\"K\":" + std::to_string(q.shape[3]) + ",\"V\":" + std::to_string(v.shape[3]) +
       ",\"N\":" + std::to_string(st_shape[0]);
  j += ",\"scale\":" + json_number(a.scale ? *a.scale : 1.0 / std::sqrt(double(q.shape[3])));
  j += ",\"engine_vs_ref\":{";
  for (size_t i = 0; i < results.size(); ++i)
    j += (i ? "," : "") + json_string(results[i].name) + ":" + json_errors(compare(results[i].engine, results[i].ref));
  j += "}";
  if (!checked.empty()) {
    j += ",\"check\":{";
    for (size_t i = 0; i < checked.size(); ++i) {
      j += (i ? "," : "") + json_string(checked[i].first) + ":" + json_errors(checked[i].second);
      if (a.tol && !(checked[i].second.rel <= *a.tol)) pass = false;
    }
    j += "}";
    if (a.tol) j += ",\"tol\":" + json_number(*a.tol) + ",\"pass\":" + (pass ? "true" : "false");
  }
  if (!in.ignored.empty()) {
    j += ",\"ignored\":[";
    for (size_t i = 0; i < in.ignored.size(); ++i) j += (i ? "," : "") + json_string(in.ignored[i]);
    j += "]";
  }
  j += ",\"written\":[";
  for (size_t i = 0; i < written.size(); ++i) j += (i ? "," : "") + json_string(written[i]);
  j += "]}";
  std::printf("%s\n", j.c_str());
  return pass ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return main_impl(argc, argv);
  } catch (const Fail& f) {
    std::fprintf(stderr, "gdr2-ref: %s\n", f.message.c_str());
    std::fprintf(stderr, "(gdr2-ref --help for usage; nothing was written)\n");
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "gdr2-ref: out of memory (inputs too large?); nothing was written\n");
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gdr2-ref: %s; nothing was written\n", e.what());
    return 2;
  }
}
