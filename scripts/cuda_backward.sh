#!/usr/bin/env bash
# Test and benchmark the gdr2 CUDA backward (issue 6) on a GPU machine, then print a
# short table of the measured errors and times against the issue's targets.
#
#   bash scripts/cuda_backward.sh                    configure + build in build-cudabwd, then run
#   GDR2_CUDA_BIN=dir bash scripts/cuda_backward.sh  run prebuilt test_cuda_backward and
#                                                    bench_cuda_backward from dir (no build)
#   GDR2_CUDA_BENCH_FILTER=regex                     only these benchmarks (default: all)
#   GDR2_CUDA_SANITIZE=1                             also compute-sanitizer (GDR2_CUDA_SANITIZE_TOOLS,
#                                                    default memcheck racecheck)
#                                                    on the small graph-capture and chunk-state tests
# Logs, bench.json and the accuracy lines go to $OUT when set (the device tool), else
# build-cudabwd/logs.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${OUT:-build-cudabwd/logs}
mkdir -p "$LOG"
for d in /usr/local/cuda/lib64 /usr/local/cuda/lib; do [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
if [ -n "${GDR2_CUDA_BIN:-}" ]; then
  BIN=$(cd "$GDR2_CUDA_BIN" && pwd)
  export LD_LIBRARY_PATH="$BIN:$LD_LIBRARY_PATH"
  TEST=$BIN/test_cuda_backward BENCH=$BIN/bench_cuda_backward
else
  cmake -S . -B build-cudabwd -DCMAKE_BUILD_TYPE=Release >"$LOG/configure.log" 2>&1 || { tail -30 "$LOG/configure.log"; exit 1; }
  cmake --build build-cudabwd -j"$(nproc)" --target test_cuda_backward bench_cuda_backward >"$LOG/build.log" 2>&1 ||
    { grep -E "error" "$LOG/build.log" | head -30; exit 1; }
  TEST=build-cudabwd/tests/cuda/test_cuda_backward BENCH=build-cudabwd/bench/cuda/bench_cuda_backward
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader 2>&1 | tee "$LOG/gpu.txt"

echo "== tests (device and validation; the host-execution tests run in CI)"
"$TEST" "[device],[validation]" --durations yes >"$LOG/tests.log" 2>&1
TEST_RC=$?
grep -E "FAILED|failed|with expansion|relative error|SEED|cfg" "$LOG/tests.log" | head -40
grep "^\[bwd-accuracy\]" "$LOG/tests.log" >"$LOG/accuracy.txt"
python3 - "$LOG/accuracy.txt" <<'PY'
import sys, collections
worst = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    f = line.split()
    math = f[4] + (" fp32-in" if f[3] == "float32" else " 16b-in") + (" fwd-states" if f[1] == "dev+st" else "")
    # gradient name / value pairs are the last tokens: name value name value ...
    pairs = []
    i = len(f) - 2
    while i > 0:
        try:
            v = float(f[i + 1]); pairs.append((f[i], v)); i -= 2
        except ValueError:
            break
    for n, v in pairs:
        worst[math][n] = max(worst[math].get(n, 0.0), v)
for math, d in worst.items():
    print(f"worst relative error, device {math:14s}: " + "  ".join(f"{n} {v:.2e}" for n, v in sorted(d.items())))
PY
tail -2 "$LOG/tests.log"
echo "== benchmarks"
"$BENCH" --benchmark_filter="${GDR2_CUDA_BENCH_FILTER:-.}" --benchmark_out="$LOG/bench.json" \
  --benchmark_out_format=json >"$LOG/bench.log" 2>&1
BENCH_RC=$?
tail -4 "$LOG/bench.log"
python3 - "$LOG/bench.json" "$LOG/gpu.txt" <<'PY'
import json, sys
try:
    runs = json.load(open(sys.argv[1]))["benchmarks"]
except Exception as e:
    print("no benchmark results:", e); sys.exit(0)
print(open(sys.argv[2]).read().strip())
stage = {"1": "prep", "2": "+state passes", "3": "+grad-1", "4": "+grad-2", "0": "all"}
math = {"0": "tf32", "1": "tf32x3", "2": "fp32", "3": "auto"}
print(f"{'case':52s} {'median':>9s} {'GB/s':>7s}  target")
for r in runs:
    n = r["name"].split("/manual")[0]
    a = dict(kv.split(":") for kv in n.split("/")[1:])
    if n.startswith("BM_backward"):
        dt = " fp32-in" if n.startswith("BM_backward_f32") else " given states" if n.startswith("BM_backward_states") else ""
        vs = f" vs={a['vs']}" if "vs" in a else ""
        label = f"backward B={a['B']} T={a['T']} {math[a['math']]}{dt} {stage[a['stages']]}{vs}"
        print(f"{label:52s} {r['median_ms']:7.3f}ms {r['GBps']:7.0f}")
    elif n.startswith("BM_forward"):
        st = " writing chunk states" if a.get("states") == "1" else ""
        label = f"forward B={a['B']} T={a['T']}{st}"
        print(f"{label:52s} {r['median_ms']:7.3f}ms")
    else:
        tgt = "<= 3.5 ms" if a["B"] == "8" else "<= 4.5 ms"
        st = " (chunk states handed over)" if a.get("states") == "1" else ""
        label = f"forward+backward B={a['B']} T={a['T']} {math[a['math']]}{st}"
        print(f"{label:52s} {r['median_ms']:7.3f}ms {'':7s}  {tgt}")
PY
if [ "${GDR2_CUDA_SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null; then
  for tool in ${GDR2_CUDA_SANITIZE_TOOLS:-memcheck racecheck}; do
    timeout ${GDR2_CUDA_SANITIZE_TIMEOUT:-150} compute-sanitizer --tool $tool --error-exitcode 9 "$TEST" "[graph],[sanitize]" >"$LOG/sanitize_$tool.log" 2>&1
    echo "compute-sanitizer $tool: rc=$? ($(grep -c -E "ERROR|hazard" "$LOG/sanitize_$tool.log") error lines)"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$LOG/sanitize_$tool.log" | tail -2
  done
fi
echo "tests rc=$TEST_RC bench rc=$BENCH_RC"
exit $(( TEST_RC != 0 || BENCH_RC != 0 ))
