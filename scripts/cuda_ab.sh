#!/usr/bin/env bash
# A/B measurement of CUDA kernel changes in one device call (cuda/NOTES.md: every change is
# measured against its base in the same call, alternated, because run-to-run spread on the
# lent GPU is ≈ 1 %). Two steps:
#
#   here (no GPU):  bash scripts/cuda_ab.sh pack NAME [BUILD_DIR]
#       copies the CUDA test / bench binaries (and any fwd_phases* / bwd_phases* next to them
#       in BUILD_DIR/phases) xz-compressed into .devcarry/NAME, with libbenchmark, so that a
#       device call can carry them (the device tool's 64 MiB limit: ≈ 30 MB per full set)
#   here (no GPU):  bash scripts/cuda_ab.sh variant NAME [PATCH ...]
#       HEAD's tracked files with the patches applied in order (e.g. cuda/experiments/*.patch)
#       in .devcarry/src-NAME, their CUDA tests and benches built there, then packed as NAME
#       (no patch: HEAD itself, the base of an A/B)
#   here:           bash scripts/cuda_ab.sh check PATCH ...
#       whether the patches apply to HEAD in this order (what variant does first, no build)
#   on the GPU:     bash scripts/cuda_ab.sh run NAME1 NAME2 ...
#       unpacks the sets, runs the device tests of every set after the first (the changes;
#       the first is the base), then each
#       set's phase drivers and benchmarks alternated ROUNDS times (default 2), and writes
#       everything to ONE report, $OUT/ab_report.txt (the device tool returns only a few
#       files), ending with a table of the median times per case and set.
#   on the GPU:     bash scripts/cuda_ab.sh ncu NAME BIN KERNEL_REGEX BENCH_FILTER [TAG]
#       Nsight Compute on one launch (the 4th) of the kernels matching KERNEL_REGEX in set
#       NAME's BIN (bench_cuda or bench_cuda_backward) run with BENCH_FILTER: warp states and
#       per-instruction stall sampling; writes $OUT/TAG.top.txt (the columns found and the
#       40 instructions with the most samples, scripts/ncu_top.py), TAG.sass.csv (every
#       instruction) and TAG.details.csv (the sections); TAG.log only when ncu failed (the
#       device tool returns at most 8 files). Two builds compared: run it twice.
#       GDR2_AB_NCU_SECTIONS replaces the sections (e.g. "MemoryWorkloadAnalysis
#       MemoryWorkloadAnalysis_Tables SpeedOfLight" for the L1 / shared-memory wavefronts a
#       kernel moves: cuda/NOTES.md forward "Next steps" item 00); TAG.top.txt then lists every
#       metric of those sections instead of the stalls.
#       Per source line or per phase: GDR2_AB_LINES=1 also writes TAG.lines.txt.xz (the
#       matching kernels' SASS with line numbers, `nvdisasm -g`), then here
#       `python3 scripts/ncu_lines.py TAG.sass.csv TAG.lines.txt.xz [--fun NAME] [--phases …]`
#       (phase ranges: the lines of a kernel body's phase comments, e.g. apply_slice's a.–h.;
#       cuda/NOTES.md backward "v32–v34 measured" has such a table).
#   on the GPU:     bash scripts/cuda_ab.sh procs N BIN BENCH_FILTER NAME1 NAME2 ...
#       each set's BIN run N times as separate processes (alternated between the sets), one
#       median per process and case: for figures that differ between processes of one binary
#       more than between its iterations (the B=1 overlapped forward, twelfth session).
#   Sets: GDR2_AB_PACK (pack, variant) names the binaries to pack (default all four, ≈ 31 MB
#   xz-compressed; the device tool carries 64 MiB: e.g. "bench_cuda_backward" for a backward
#   base, "bench_cuda_backward test_cuda_backward" for its change).
#   Filters: GDR2_AB_FWD (bench_cuda), GDR2_AB_BWD (bench_cuda_backward; empty = skip),
#   GDR2_AB_TESTS (test_cuda tags, default "[forward],[graph],[decode]"), GDR2_AB_SANITIZE=1
#   adds racecheck on the forward's long-sequence and graph tests and the backward's
#   sanitizer test.
set -uo pipefail
cd "$(dirname "$0")/.."
# On the GPU: the carried libbenchmark and CUDA's libraries and tools first in the paths.
device_env() {
  export LD_LIBRARY_PATH=$PWD/.devcarry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
  export PATH=/usr/local/cuda/bin:$PATH
}
# unpacked BIN: BIN unpacked from BIN.xz (a set's binary) unless already there.
unpacked() { [ -x "$1" ] || { xz -dkf -T4 "$1.xz" && chmod +x "$1"; }; }
# medians TAG: Google Benchmark's output → one "TAG CASE median_…" line per case.
medians() {
  awk -v tag="$1" '/^BM_/ {m=""; for (i = 1; i <= NF; ++i) if ($i ~ /^median_(ms|us)=/) m=$i
    sub(/\/iterations.*/, "", $1); print tag, $1, m}'
}
cmd=${1:-}
shift || true
case "$cmd" in
pack)
  name=${1:?name}
  build=${2:-build}
  dst=.devcarry/$name
  rm -rf "$dst" && mkdir -p "$dst" .devcarry/lib
  for f in bench/cuda/bench_cuda bench/cuda/bench_cuda_backward tests/cuda/test_cuda tests/cuda/test_cuda_backward; do
    case " ${GDR2_AB_PACK:-bench_cuda bench_cuda_backward test_cuda test_cuda_backward} " in
    *" $(basename "$f") "*) [ -x "$build/$f" ] && cp "$build/$f" "$dst/" ;;
    esac
  done
  for f in "$build"/phases/fwd_phases* "$build"/phases/bwd_phases*; do [ -x "$f" ] && cp "$f" "$dst/"; done
  xz -6 -T2 "$dst"/*
  lib=$(ldd "$build/bench/cuda/bench_cuda" 2>/dev/null | awk '/libbenchmark/ {print $3}')
  [ -n "$lib" ] && cp -L "$lib" .devcarry/lib/
  du -sh "$dst" .devcarry/lib
  ;;
check | variant)
  if [ "$cmd" = check ]; then
    name=check src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
  else
    name=${1:?name}
    shift
    src=.devcarry/src-$name
    rm -rf "$src" && mkdir -p "$src"
  fi
  git archive HEAD | tar -x -C "$src" || exit 1
  # git apply inside this repository's tree (.devcarry/…) would skip every path outside the
  # current folder without a word (thirteenth session: the twelfth's v19 set was HEAD):
  # no repository above $src, and each patched file must differ from HEAD's
  top=$(cd "$src/.." && pwd)
  for pf in "$@"; do
    (cd "$src" && GIT_CEILING_DIRECTORIES="$top" git apply "$OLDPWD/$pf") ||
      { echo "$pf does not apply to HEAD after the ones before it"; exit 1; }
    for f in $(awk '/^\+\+\+ b\// {print substr($2, 3)}' "$pf"); do
      git show "HEAD:$f" 2>/dev/null | cmp -s - "$src/$f" && { echo "$pf left $f as in HEAD"; exit 1; }
    done
  done
  [ "$cmd" = check ] && { echo "all $# apply to HEAD in this order"; exit 0; }
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGDR2_BUILD_TESTS=ON -DGDR2_BUILD_BENCH=ON \
    -DGDR2_NATIVE=OFF >"$src/cmake.log" 2>&1 || { tail -20 "$src/cmake.log"; exit 1; }
  cmake --build "$src/build" -j "$(nproc)" --target test_cuda test_cuda_backward bench_cuda bench_cuda_backward \
    >"$src/build.log" 2>&1 || { grep -E "error" "$src/build.log" | head -20; exit 1; }
  grep -E "spill stores" "$src/build.log" | grep -v " 0 bytes spill" | sort -u | head -5
  "$0" pack "$name" "$src/build"
  ;;
run)
  [ $# -ge 1 ] || { echo "usage: $0 run NAME1 [NAME2 ...]"; exit 2; }
  R=${OUT:-.devcarry}/ab_report.txt
  : >"$R"
  device_env
  for n in "$@"; do for f in .devcarry/$n/*.xz; do [ -e "$f" ] && xz -dkf -T4 "$f" & done; done
  wait
  for n in "$@"; do chmod +x .devcarry/$n/* 2>/dev/null; done
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader >>"$R" 2>&1
  log() { echo "## $*" | tee -a "$R"; }
  # tests BIN TAGS: run them into $R.tmp, report rc and the verdict lines
  tests() {
    log "$(basename "$1") $2 ($(dirname "$1"))"
    timeout 300 "$1" "$2" >"$R.tmp" 2>&1
    echo "rc $?" | tee -a "$R"
    grep -E "FAILED|failed|with expansion|SEED|passed" "$R.tmp" | tail -12 | tee -a "$R"
  }
  # racecheck SET BIN TEST
  racecheck() {
    timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 "$2" "$3" >"$R.tmp" 2>&1
    log "racecheck $1 $3: rc $?"
    grep -E "SUMMARY" "$R.tmp" | tee -a "$R"
  }
  # bench SET BIN FILTER: one "bench SET CASE median_…" line per case
  bench() {
    "$2" --benchmark_filter="$3" 2>&1 |
      medians "bench $1" >>"$R"
  }
  first=1
  for n in "$@"; do  # the device tests (and sanitizers) of every set but the first (the base)
    [ $first = 1 ] && [ $# -gt 1 ] && { first=0; continue; }
    new=.devcarry/$n
    if [ -x "$new/test_cuda" ]; then
      tests "$new/test_cuda" "${GDR2_AB_TESTS:-[forward],[graph],[decode]}"
      grep "^\[accuracy\]" "$R.tmp" | awk '{o=$(NF-2); s=$NF; if (o>mo) mo=o; if (s>ms) ms=s; n++}
        END {if (n) printf "accuracy over %d runs: output %.2e, final state %.2e\n", n, mo, ms}' | tee -a "$R"
    fi
    if [ -x "$new/test_cuda_backward" ]; then
      tests "$new/test_cuda_backward" "[device]"
      grep "^\[bwd-accuracy\] device" "$R.tmp" | awk '{for (i = 3; i < NF; ++i) if ($i ~ /^d[a-z_]+$/ && $(i+1) + 0 > w[$i]) w[$i] = $(i+1) + 0}
        END {printf "worst over the device rows:"; for (k in w) printf " %s %.2e", k, w[k]; print ""}' | tee -a "$R"
    fi
    if [ "${GDR2_AB_SANITIZE:-0}" = 1 ]; then
      if [ -x "$new/test_cuda" ]; then
        racecheck "$n" "$new/test_cuda" "cuda chunk forward: fused and split agree on a long sequence"
        racecheck "$n" "$new/test_cuda" "[graph]"
      fi
      [ -x "$new/test_cuda_backward" ] &&
        racecheck "$n" "$new/test_cuda_backward" "[sanitize]"
    fi
  done
  rm -f "$R.tmp"
  for r in $(seq 1 "${ROUNDS:-2}"); do
    for n in "$@"; do
      d=.devcarry/$n
      for ph in "$d"/fwd_phases* "$d"/bwd_phases*; do
        case "$ph" in *.xz) continue ;; esac  # (the packed copies are executable after chmod)
        [ -x "$ph" ] || continue
        log "phases $n round $r: $(basename "$ph")"
        timeout 120 "$ph" all >>"$R" 2>&1
      done
      [ -x "$d/bench_cuda" ] &&
        bench "$n" "$d/bench_cuda" "${GDR2_AB_FWD:-BM_copy|BM_forward/B:(8/T:4096/H:16/path:0|1/T:32768/H:16/path:0/vs:0/ov:1/copy:0)|BM_forward_states}"
      [ -x "$d/bench_cuda_backward" ] && [ -n "${GDR2_AB_BWD-BM_fwd_bwd}" ] &&
        bench "$n" "$d/bench_cuda_backward" "${GDR2_AB_BWD-BM_fwd_bwd}"
    done
  done
  log "medians per case (one column per set, rounds separated by /)"
  python3 - "$R" "$@" <<'PY' | tee "$R.sum"
import sys, collections
rep, sets = sys.argv[1], sys.argv[2:]
t = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(rep):
    f = line.split()
    if len(f) == 4 and f[0] == "bench" and "=" in f[3]:
        t[f[2].split("/iterations")[0]][f[1]].append(f[3].split("=")[1])
w = max([len(c) for c in t] + [10])
print(f"{'case':{w}s} " + " ".join(f"{s:>18s}" for s in sets))
for c, by in t.items():
    print(f"{c:{w}s} " + " ".join(f"{' / '.join(x[:6] for x in by.get(s, [])):>18s}" for s in sets))
PY
  cat "$R.sum" >>"$R" && rm -f "$R.sum"
  ;;
ncu)
  name=${1:?name} bin=${2:?bin} kern=${3:?kernel regex} filt=${4:?bench filter} tag=${5:-${1}_$2}
  o=${OUT:-.devcarry}
  device_env
  b=.devcarry/$name/$bin
  unpacked "$b" || exit 1
  sections=${GDR2_AB_NCU_SECTIONS:-WarpStateStats SourceCounters SpeedOfLight}
  timeout 300 ncu --clock-control none --kernel-name "regex:$kern" --launch-skip 3 --launch-count 1 \
    $(printf -- '--section %s ' $sections) -f -o "/tmp/$tag" \
    "$b" --benchmark_filter="$filt" >"/tmp/$tag.log" 2>&1 || { cp "/tmp/$tag.log" "$o/"; tail -5 "$o/$tag.log"; exit 1; }
  ncu -i "/tmp/$tag.ncu-rep" --page details --csv >"$o/$tag.details.csv" 2>&1
  if [ -z "${GDR2_AB_NCU_SECTIONS:-}" ]; then
    ncu -i "/tmp/$tag.ncu-rep" --page source --csv --print-source sass >"$o/$tag.sass.csv" 2>&1
    python3 scripts/ncu_top.py "$o/$tag.sass.csv" 40 | tee "$o/$tag.top.txt" | head -60
    if [ "${GDR2_AB_LINES:-0}" = 1 ]; then  # the kernels' SASS with line numbers, for ncu_lines.py
      d=$(mktemp -d)
      (cd "$d" && cuobjdump -xelf all "$OLDPWD/$b" >/dev/null 2>&1)
      for f in "$d"/*.cubin; do nvdisasm -g -c "$f" 2>/dev/null; done |
        awk -v k="$kern" '/^[[:space:]]*\.section/ {p = ($0 ~ ("\\.text\\..*" k))} p' | xz -T4 >"$o/$tag.lines.txt.xz"
      rm -rf "$d"
    fi
  else
    python3 scripts/ncu_top.py --details "$o/$tag.details.csv" | tee "$o/$tag.top.txt" | head -80
  fi
  ;;
procs)
  n=${1:?count} bin=${2:?bin} filt=${3:?bench filter}
  shift 3
  device_env
  for s in "$@"; do
    b=.devcarry/$s/$bin
    unpacked "$b" || exit 1
  done
  for i in $(seq 1 "$n"); do
    for s in "$@"; do
      .devcarry/$s/$bin --benchmark_filter="$filt" 2>&1 | medians "proc $i $s"
    done
  done
  ;;
*)
  sed -n '2,/^set -uo/p' "$0" | sed '$d'  # the header comment
  exit 2
  ;;
esac
