#!/usr/bin/env bash
# Build, test and benchmark the gdr2 CUDA backend on a GPU machine, then print a short
# table of the measured figures against the targets of issue 5.
#
#   bash scripts/cuda.sh                       configure + build in build-cuda (needs nvcc,
#                                              Eigen, Catch2 v2, Google Benchmark), then run
#   GDR2_CUDA_BIN=dir bash scripts/cuda.sh     run prebuilt test_cuda, bench_cuda and
#                                              cuda_quickstart from dir (no build)
#   GDR2_CUDA_BENCH_FILTER=regex               only these benchmarks (default: all)
#   GDR2_CUDA_PROFILE=1                        also profile one launch of each forward kernel with
#                                              Nsight Compute (ncu), reports in $LOG/ncu_*.txt
#   GDR2_CUDA_SANITIZE=1                       also run compute-sanitizer (memcheck, racecheck)
#                                              on the small graph-capture test
# Logs and bench.json go to $OUT when set (the device tool), else build-cuda/logs.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-build-cuda/logs}
mkdir -p "$LOG"
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
if [ -n "${GDR2_CUDA_BIN:-}" ]; then
  BIN=$(cd "$GDR2_CUDA_BIN" && pwd)
  export LD_LIBRARY_PATH="$BIN:$LD_LIBRARY_PATH"
  TEST=$BIN/test_cuda BENCH=$BIN/bench_cuda QUICK=$BIN/cuda_quickstart
else
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release >"$LOG/configure.log" 2>&1 || { tail -30 "$LOG/configure.log"; exit 1; }
  cmake --build build-cuda -j"$(nproc)" --target test_cuda bench_cuda cuda_quickstart >"$LOG/build.log" 2>&1 ||
    { grep -E "error" "$LOG/build.log" | head -30; exit 1; }
  TEST=build-cuda/tests/cuda/test_cuda BENCH=build-cuda/bench/cuda/bench_cuda QUICK=build-cuda/cuda/cuda_quickstart
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader 2>&1 | tee "$LOG/gpu.txt"

echo "== tests"
"$TEST" --durations yes >"$LOG/tests.log" 2>&1
TEST_RC=$?
grep -E "FAILED|failed|with expansion|eo :=|es :=|SEED" "$LOG/tests.log" | head -40
grep "^\[accuracy\]" "$LOG/tests.log" | awk '{o=$(NF-2); s=$NF; if (o>mo) mo=o; if (s>ms) ms=s; n++}
  END {printf "accuracy over %d GPU forward runs: max output error %.2e, max final-state error %.2e\n", n, mo, ms}'
grep "^\[accuracy\].*T=2081" "$LOG/tests.log"
tail -2 "$LOG/tests.log"
if [ "${GDR2_CUDA_SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 "$TEST" "[graph]" >"$LOG/sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool: rc=$? ($(grep -c -E "ERROR|hazard" "$LOG/sanitize_$tool.log") error lines)"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$LOG/sanitize_$tool.log" | tail -2
  done
fi
echo "== quickstart"
"$QUICK" 2>&1 | tee "$LOG/quickstart.log"

if [ "${GDR2_CUDA_PROFILE:-0}" = 1 ] && command -v ncu >/dev/null; then
  echo "== ncu"
  SECTIONS="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section InstructionStats --section SourceCounters"
  timeout 200 ncu $SECTIONS -k regex:fused_forward -s 2 -c 1 "$BENCH" --benchmark_filter='BM_forward/B:8/T:4096/H:16/path:1' >"$LOG/ncu_fused.txt" 2>&1
  timeout 200 ncu $SECTIONS -k regex:'prep_kernel|state_kernel' -s 4 -c 2 "$BENCH" --benchmark_filter='BM_forward/B:1/T:32768/H:16/path:2/vs:16' >"$LOG/ncu_split.txt" 2>&1
  grep -E "^  [a-z_:]+.*\(|Duration|Warp Cycles Per Issued|Issued Warp|Registers Per|Achieved Occ|Memory Throughput|Compute \(SM\)" "$LOG"/ncu_*.txt | head -40
fi
echo "== benchmarks"
"$BENCH" --benchmark_filter="${GDR2_CUDA_BENCH_FILTER:-.}" --benchmark_out="$LOG/bench.json" \
  --benchmark_out_format=json >"$LOG/bench.log" 2>&1
BENCH_RC=$?
tail -20 "$LOG/bench.log"
python3 - "$LOG/bench.json" "$LOG/gpu.txt" <<'PY'
import json, sys
try:
    runs = json.load(open(sys.argv[1]))["benchmarks"]
except Exception as e:
    print("no benchmark results:", e); sys.exit(0)
gpu = open(sys.argv[2]).read().strip()
by = {r["name"]: r for r in runs}
def get(prefix):
    for n, r in by.items():
        if n.startswith(prefix): return r
copy = get("BM_copy"); gemm = get("BM_gemm_bf16")
bw = copy["GBps"] if copy else float("nan")
print(f"\n{gpu}")
print(f"ceilings: device copy {bw:.0f} GB/s (read+write), cuBLAS bf16 GEMM {gemm['TFLOPs'] if gemm else float('nan'):.0f} TFLOP/s")
print(f"{'case':56s} {'median':>10s} {'rate':>12s} {'of copy':>8s}  target")
for n, r in by.items():
    if n.startswith("BM_forward"):
        p = {"1": "fused", "2": "split", "0": "auto"}[n.split("path:")[1].split("/")[0]]
        tgt = "<= 0.6 ms" if "B:8/" in n else "<= 0.8 ms"
        print(f"{n.split('/manual')[0] + ' ' + p:56s} {r['median_ms']:8.3f}ms {r['GBps']:8.0f}GB/s {r['GBps']/bw:7.0%}  {tgt}")
    if n.startswith("BM_state_roundtrip"):
        print(f"{'decode pattern alone (state read, written back)':46s} {r['median_us']:8.1f}us {r['GBps']:8.0f}GB/s {r['GBps']/bw:7.0%}  (ceiling)")
    if n.startswith("BM_decode"):
        tgt = (">= 90% of copy" if "B:256" in n else "<= 10 us") + ("  (graph, per step)" if "graph:1" in n else "  (one call, launch incl.)")
        print(f"{n.split('/manual')[0]:46s} {r['median_us']:8.1f}us {r['GBps']:8.0f}GB/s {r['GBps']/bw:7.0%}  {tgt}")
PY
echo "tests rc=$TEST_RC bench rc=$BENCH_RC"
exit $(( TEST_RC != 0 || BENCH_RC != 0 ))
