// A scratch directory for the tests that write files (tests/test_npy.cpp,
// tools/test_gdr2_ref.cpp). Plain C++17, no Catch2 or gdr2 dependency.
#pragma once

#include <algorithm>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>
#include <vector>

namespace gdr2::test {

/// Names of the entries of directory `dir`, sorted (empty when it does not exist).
inline std::vector<std::string> dir_entries(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  if (!std::filesystem::exists(dir)) return out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

/// A fresh, empty directory under the system temp dir (named `prefix` plus random
/// digits), removed with everything in it when the object goes out of scope.
struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& prefix = "gdr2-test-") {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / (prefix + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  /// Path of `name` inside the directory.
  std::string operator/(const std::string& name) const { return (path / name).string(); }
  /// Names of every entry in the directory (temporaries included), sorted.
  std::vector<std::string> entries() const { return dir_entries(path); }
};

}  // namespace gdr2::test
