#!/usr/bin/env bash
# Install what gdr2 needs to build, test and benchmark on Debian/Ubuntu, skipping
# what is already there: a C++17 compiler, CMake, Eigen 3.4, Catch2 v2, Google Benchmark.
set -euo pipefail
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
[ -f /usr/include/eigen3/Eigen/Core ] || need+=(libeigen3-dev)
[ -f /usr/include/catch2/catch.hpp ] || need+=(catch2)
[ -f /usr/include/benchmark/benchmark.h ] || need+=(libbenchmark-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "gdr2: installing ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# numpy for the Python-client test of gdr2-ref (tools/check_with_numpy.py); optional.
if command -v python3 >/dev/null && ! python3 -c "import numpy" 2>/dev/null; then
  python3 -m pip install -q numpy || echo "gdr2: numpy not installed; the gdr2_ref_numpy test will be skipped"
fi
