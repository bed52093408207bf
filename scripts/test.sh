#!/usr/bin/env bash
# Install dependencies, build everything (library tests, benchmarks, examples and,
# when nvcc is found, the CUDA backend) and run the test suite. GPU tests skip
# cleanly on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$(nproc)"
cd "$BUILD" && ctest --output-on-failure -j"$(nproc)"
