#!/usr/bin/env bash
# Install dependencies, build the quickstart and run it on the CPU; when a GPU and
# the CUDA backend are present, run the CUDA demo too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
BUILD=${BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGDR2_BUILD_TESTS=OFF -DGDR2_BUILD_BENCH=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target quickstart
"$BUILD"/examples/quickstart "$@"
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  if cmake --build "$BUILD" -j"$(nproc)" --target cuda_quickstart >/dev/null 2>&1; then
    "$BUILD"/cuda/cuda_quickstart
  else
    echo "gdr2: a GPU is present but the CUDA demo was not built (no nvcc or no CUDA backend)"
  fi
fi
