#!/usr/bin/env bash
# Install dependencies, build everything (library tests, benchmarks, examples and,
# when nvcc is found, the CUDA backend) and run the test suite. GPU tests skip
# cleanly on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$(nproc)" 2>&1 | tee "$BUILD/build.log"
# ptxas infos that mean the CUDA forward's warpgroup MMAs run serialized or are waited for
# early (C7517 injected wait, C7518/C7520 serialized): a performance regression, see
# cuda/NOTES.md, "v9". Only objects compiled by this build are checked.
if grep -E "\((C7517|C7518|C7520)\)" "$BUILD/build.log"; then
  echo "scripts/test.sh: ptxas serialized or waited for warpgroup MMAs (lines above); see cuda/NOTES.md, v9" >&2
  exit 1
fi
cd "$BUILD" && ctest --output-on-failure -j"$(nproc)"
