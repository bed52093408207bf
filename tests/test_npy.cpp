// The .npy reader and writer (include/gdr2/npy.hpp): exact round trips of every
// dtype and header version, byte-exact agreement with the format NumPy writes, and
// every malformed file rejected with the right code and message and no output.
#include <gdr2/npy.hpp>

#include <catch2/catch.hpp>

#include "temp_dir.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

using namespace gdr2;
namespace fs = std::filesystem;
using gdr2::test::TempDir;

namespace {

std::vector<unsigned char> read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}

void write_file(const std::string& p, const std::vector<unsigned char>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

/// A .npy file with the given version, raw header text (padded as NumPy pads it)
/// and data bytes.
std::vector<unsigned char> make_file(int major, const std::string& dict, const std::vector<unsigned char>& data,
                                     const char* magic = "\x93NUMPY") {
  std::vector<unsigned char> out(magic, magic + 6);
  out.push_back(static_cast<unsigned char>(major));
  out.push_back(0);
  const size_t pre = major == 1 ? 10 : 12;
  std::string h = dict;
  h.append((64 - (pre + h.size() + 1) % 64) % 64, ' ');
  h += '\n';
  for (size_t i = 0; i < (major == 1 ? 2u : 4u); ++i) out.push_back(static_cast<unsigned char>((h.size() >> (8 * i)) & 0xFF));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

template <class T>
std::vector<T> sample_values(Index n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 3.0);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) {
    if constexpr (std::is_integral_v<T>) x = T(std::int64_t(rng() % 2000001) - 1000000);
    else x = convert<T>(normal(rng));
  }
  return v;
}

/// Bit-exact equality (so that -0.0 and NaN payloads survive too).
template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

template <class T>
void round_trip(const std::vector<Index>& shape, int version, const TempDir& dir) {
  Index n = 1;
  for (Index d : shape) n *= d;
  auto values = sample_values<T>(n, std::uint64_t(n) * 31 + std::uint64_t(version));
  if constexpr (!std::is_integral_v<T>) {
    if (n >= 3) {  // special values travel unchanged
    values[0] = convert<T>(-0.0);
    values[1] = convert<T>(INFINITY);
    values[2] = convert<T>(-1e-30);  // denormal or flushed in the 16-bit types: whatever T holds
    }
  }
  const npy::Array a = npy::from_data(values.data(), shape);
  const std::string path = dir / (std::string("x_") + npy::dtype_name(npy::dtype_of<T>()) + ".npy");
  REQUIRE(npy::save(path, a, version).ok());
  const auto bytes = read_file(path);
  REQUIRE(bytes.size() >= 10);
  CHECK(int(bytes[6]) == (version == 2 ? 2 : 1));
  const Index header_end = version == 2 ? 12 + (Index(bytes[8]) | Index(bytes[9]) << 8) : 10 + (Index(bytes[8]) | Index(bytes[9]) << 8);
  CHECK(header_end % 64 == 0);  // NumPy aligns the data to 64 bytes

  npy::Array b;
  const Status st = npy::load(path, b);
  REQUIRE(st.ok());
  CHECK(b.dtype == npy::dtype_of<T>());
  CHECK(b.shape == shape);
  REQUIRE(b.size() == n);
  for (Index i = 0; i < n; ++i) {
    INFO("element " << i);
    REQUIRE(same_bits(b.get<T>(i), values[size_t(i)]));
  }
  // The in-memory parser agrees with the file reader.
  npy::Array c;
  REQUIRE(npy::parse(bytes.data(), bytes.size(), c).ok());
  CHECK(c.bytes == b.bytes);
  CHECK(c.shape == b.shape);
}

/// Expect `bytes`, read as a file, to fail with `code` and a message containing `needle`.
void expect_bad(const TempDir& dir, const std::vector<unsigned char>& bytes, Code code, const std::string& needle) {
  const std::string path = dir / "bad.npy";
  write_file(path, bytes);
  npy::Array out;
  out.shape = {7};  // sentinel: a failed load must not touch `out`
  const Status st = npy::load(path, out);
  INFO(st.to_string());
  CHECK_FALSE(st.ok());
  CHECK(st.code() == code);
  CHECK(st.message().find(needle) != std::string::npos);
  CHECK(st.message().find(path) == 0);  // the message starts with the file name
  CHECK(out.shape == std::vector<Index>{7});
  npy::Array mem;
  const Status sm = npy::parse(bytes.data(), bytes.size(), mem, "bad.npy");
  CHECK(sm.code() == code);
  CHECK(sm.message().find(needle) != std::string::npos);
}

const std::vector<unsigned char> kSixFloats(24, 0);  // 6 × float32 zeros

}  // namespace

TEST_CASE("npy: every dtype round-trips exactly, headers 1.0 and 2.0", "[npy]") {
  TempDir dir;
  for (int version : {0, 1, 2}) {
    for (const auto& shape : std::vector<std::vector<Index>>{{}, {5}, {3, 1, 4}, {2, 3, 2, 5}, {0, 4}}) {
      INFO("version " << version << " shape " << npy::shape_string(shape));
      round_trip<Eigen::half>(shape, version, dir);
      round_trip<Eigen::bfloat16>(shape, version, dir);
      round_trip<float>(shape, version, dir);
      round_trip<double>(shape, version, dir);
      round_trip<std::int32_t>(shape, version, dir);
      round_trip<std::int64_t>(shape, version, dir);
    }
  }
  CHECK(dir.entries().size() == 6);  // one file per dtype, no temporaries left
}

TEST_CASE("npy: the writer produces NumPy's exact bytes and writes bfloat16 as '<u2'", "[npy]") {
  // What np.save(f, np.arange(6, dtype=np.float32).reshape(2, 3)) writes.
  const float data[6] = {0, 1, 2, 3, 4, 5};
  std::vector<unsigned char> expect = make_file(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", {});
  for (float x : data) {
    unsigned char b[4];
    std::memcpy(b, &x, 4);
    expect.insert(expect.end(), b, b + 4);
  }
  std::vector<unsigned char> got;
  REQUIRE(npy::serialize(npy::from_data(data, {2, 3}), got).ok());
  CHECK(got == expect);
  CHECK(got.size() == 152);  // as NumPy 2.x writes it: a 118-byte header, data at offset 128
  CHECK(int(got[8]) == 118);

  // bfloat16 1.0 = 0x3F80 travels as the uint16 0x3F80 in a '<u2' array.
  const Eigen::bfloat16 one(1.0f);
  REQUIRE(npy::serialize(npy::from_data(&one, {1}), got).ok());
  const std::string text(got.begin(), got.end());
  CHECK(text.find("'descr': '<u2'") != std::string::npos);
  CHECK(text.find("'shape': (1,)") != std::string::npos);
  CHECK(got[got.size() - 2] == 0x80);
  CHECK(got[got.size() - 1] == 0x3F);
}

TEST_CASE("npy: reads the header variants NumPy and others write", "[npy]") {
  TempDir dir;
  const std::vector<unsigned char> two_doubles = [] {
    std::vector<unsigned char> v(16);
    const double x[2] = {1.5, -2.25};
    std::memcpy(v.data(), x, 16);
    return v;
  }();
  const std::vector<std::string> dicts = {
      "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",     // NumPy ≥ 1.x
      "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (2,)}",  // other writers, double quotes
      "{'shape': (2L,), 'fortran_order': False, 'descr': '<f8'}",        // key order, Python 2 longs
      "{'descr':'<f8','fortran_order':False,'shape':( 2 , )}",           // no spaces / extra spaces
      "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 2), }",
  };
  for (int major : {1, 2, 3}) {
    for (const auto& d : dicts) {
      INFO(major << " " << d);
      const std::string path = dir / "v.npy";
      write_file(path, make_file(major, d, two_doubles));
      npy::Array a;
      REQUIRE(npy::load(path, a).ok());
      CHECK(a.dtype == npy::DType::float64);
      CHECK(a.size() == 2);
      CHECK(a.get<double>(0) == 1.5);
      CHECK(a.get<float>(1) == -2.25f);
    }
  }
}

TEST_CASE("npy: malformed files get a clear error and no output", "[npy]") {
  TempDir dir;
  const std::string good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  SECTION("wrong magic") {
    expect_bad(dir, make_file(1, good, kSixFloats, "\x93NUMPZ"), Code::invalid_argument, "wrong magic");
    expect_bad(dir, {'P', 'K', 3, 4}, Code::invalid_argument, "wrong magic");  // e.g. an .npz (zip) file
    expect_bad(dir, {}, Code::invalid_argument, "wrong magic");                 // empty file
  }
  SECTION("unsupported version") {
    expect_bad(dir, make_file(4, good, kSixFloats), Code::unsupported, "version 4.0");
  }
  SECTION("unsupported dtype") {
    for (const char* d : {"<c8", "|b1", "<i2", "|u1", "<U3", "|O"}) {
      expect_bad(dir, make_file(1, std::string("{'descr': '") + d + "', 'fortran_order': False, 'shape': (6,), }", kSixFloats),
                 Code::unsupported, std::string("unsupported dtype '") + d + "'");
    }
    expect_bad(dir, make_file(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", kSixFloats),
               Code::unsupported, "big-endian");
    expect_bad(dir, make_file(1, "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (3,), }", kSixFloats),
               Code::unsupported, "structured");
  }
  SECTION("Fortran order") {
    expect_bad(dir, make_file(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", kSixFloats),
               Code::unsupported, "Fortran-order");
  }
  SECTION("bad header") {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"not a dict", "expected a Python dict"},
        {"{'descr': '<f4', 'shape': (2, 3), }", "missing key 'fortran_order'"},
        {"{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"},
        {"{'fortran_order': False, 'shape': (2, 3)}", "missing key 'descr'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", "non-negative integers"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }", "must be a tuple"},
        {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3), }", "True or False"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}", "unexpected key 'extra'"},
        {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}", "given twice"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3) 'x'}", "expected ',' or '}'"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} trailing", "unexpected text"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", "overflows"},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296)}", "too large"},
    };
    for (const auto& [dict, needle] : cases) {
      INFO(dict);
      expect_bad(dir, make_file(1, dict, kSixFloats), Code::invalid_argument, needle);
    }
    // A header length that runs past the end of the file.
    auto f = make_file(1, good, {});
    f.resize(40);
    expect_bad(dir, f, Code::invalid_argument, "truncated header");
    expect_bad(dir, {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, 10}, Code::invalid_argument, "truncated header");
    // A version-2 header length field of 2^31: implausible, not allocated.
    expect_bad(dir, {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 0, 0, 0, 0x80}, Code::invalid_argument, "implausible");
  }
  SECTION("truncated or over-long data") {
    expect_bad(dir, make_file(1, good, std::vector<unsigned char>(23)), Code::invalid_argument, "truncated data");
    expect_bad(dir, make_file(2, good, {}), Code::invalid_argument, "needs 24 bytes, the file has 0");
    expect_bad(dir, make_file(1, good, std::vector<unsigned char>(25)), Code::invalid_argument, "1 extra");
  }
  CHECK(dir.entries() == std::vector<std::string>{"bad.npy"});
}

TEST_CASE("npy: a missing file is an error, not a crash", "[npy]") {
  npy::Array a;
  const Status st = npy::load("/nonexistent-gdr2-dir/x.npy", a);
  CHECK(st.code() == Code::invalid_argument);
  CHECK(st.message().find("cannot open") != std::string::npos);
}

TEST_CASE("npy: writers leave no partial output on error", "[npy]") {
  TempDir dir;
  const float data[6] = {1, 2, 3, 4, 5, 6};
  const npy::Array good = npy::from_data(data, {2, 3});

  SECTION("shape does not match the data") {
    npy::Array bad = good;
    bad.shape = {4, 2};
    const Status st = npy::save(dir / "x.npy", bad);
    CHECK(st.code() == Code::invalid_argument);
    CHECK(st.message().find("needs 32 bytes, the array holds 24") != std::string::npos);
    CHECK(dir.entries().empty());
    // And the view helper refuses a shape that does not hold the view.
    npy::Array out;
    const Status sv = npy::from_view(make_view(data, 1, 2, 3, 1), {5}, out);
    CHECK(sv.code() == Code::invalid_argument);
  }
  SECTION("one bad array in a set: none of the set is written, old files unchanged") {
    REQUIRE(npy::save(dir / "a.npy", good).ok());
    const auto before = read_file(dir / "a.npy");
    npy::Array bad = good;
    bad.bytes.pop_back();
    const double other[1] = {42};
    const npy::Array changed = npy::from_data(other, {1});
    const Status st = npy::save_all({{dir / "a.npy", &changed}, {dir / "b.npy", &good}, {dir / "c.npy", &bad}});
    CHECK_FALSE(st.ok());
    CHECK(st.message().find("c.npy") != std::string::npos);
    CHECK(dir.entries() == std::vector<std::string>{"a.npy"});
    CHECK(read_file(dir / "a.npy") == before);
  }
  SECTION("a destination that cannot be written") {
    fs::create_directories(dir.path / "sub");
    const Status s1 = npy::save_all({{dir / "ok.npy", &good}, {dir / "sub", &good}});
    CHECK(s1.code() == Code::invalid_argument);
    CHECK(s1.message().find("is a directory") != std::string::npos);
    const Status s2 = npy::save_all({{dir / "ok.npy", &good}, {dir / "missing/x.npy", &good}});
    CHECK(s2.code() == Code::invalid_argument);
    CHECK(s2.message().find("cannot open for writing") != std::string::npos);
    std::vector<std::string> names = dir.entries();
    CHECK(names == std::vector<std::string>{"sub"});
    CHECK(fs::is_empty(dir.path / "sub"));
  }
  SECTION("an unsupported version request") {
    CHECK(npy::save(dir / "x.npy", good, 3).code() == Code::invalid_argument);
    CHECK(dir.entries().empty());
  }
  SECTION("success replaces an existing file in one step") {
    write_file(dir / "x.npy", {1, 2, 3});
    REQUIRE(npy::save(dir / "x.npy", good).ok());
    npy::Array back;
    REQUIRE(npy::load(dir / "x.npy", back).ok());
    CHECK(back.bytes == good.bytes);
    CHECK(dir.entries() == std::vector<std::string>{"x.npy"});
  }
}

TEST_CASE("npy: conversions to tensors and from strided views", "[npy]") {
  // A [2, 3, 4] bf16 array → Tensor<float> [2, 3, 4, 1] with exactly the bf16 values.
  std::vector<Eigen::bfloat16> x(24);
  for (int i = 0; i < 24; ++i) x[size_t(i)] = Eigen::bfloat16(0.1f * float(i) - 1.0f);
  const npy::Array a = npy::from_data(x.data(), {2, 3, 4});
  Tensor<float> t;
  REQUIRE(npy::to_tensor(a, t).ok());
  CHECK(t.shape() == std::array<Index, 4>{2, 3, 4, 1});
  for (int i = 0; i < 24; ++i) CHECK(t[i] == float(x[size_t(i)]));
  // Integers convert too (cu_seqlens read as int64 from an int32 file).
  const std::int32_t cu[3] = {0, 5, 9};
  CHECK(npy::from_data(cu, {3}).to_vector<std::int64_t>() == std::vector<std::int64_t>{0, 5, 9});
  // Rank 5 does not fit a Tensor.
  npy::Array r5 = npy::from_data(x.data(), {1, 2, 3, 4, 1});
  CHECK(npy::to_tensor(r5, t).code() == Code::invalid_argument);
  // A transposed (strided) view is written in its logical C order.
  const double m[6] = {1, 2, 3, 4, 5, 6};  // 2×3 row-major
  const View<const double> tr(m, {1, 1, 3, 2}, {0, 0, 1, 3});  // its 3×2 transpose
  npy::Array w;
  REQUIRE(npy::from_view(tr, {3, 2}, w).ok());
  CHECK(w.to_vector<double>() == std::vector<double>{1, 4, 2, 5, 3, 6});
}
