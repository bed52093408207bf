#!/usr/bin/env python3
"""Turn `bench_cpu --benchmark_format=json` output into the RESULTS.md table.

Every case's `flops` and `bytes` rate counters are divided by the ceilings measured
in the same run (`ceiling/sgemm` and `ceiling/memcpy` with all threads; the
`threads:1` cases by the single-thread sgemm), so each row reads as a fraction of
what this machine can do. With `--benchmark_repetitions=N` the medians over the
repetitions are used (every ratio is then a ratio of medians).

    ./build/bench/bench_cpu --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
        --benchmark_format=json > run.json && python3 bench/report.py run.json
"""
import json
import re
import sys


def main(path):
    data = json.load(open(path))
    medians = {b["run_name"]: b for b in data["benchmarks"] if b.get("aggregate_name") == "median"}
    rows = medians or {b["name"]: b for b in data["benchmarks"] if b.get("run_type", "iteration") == "iteration"}
    def find(prefix):
        return next((b for n, b in rows.items() if n.startswith(prefix)), None)
    sgemm = find("ceiling/sgemm/")
    sgemm1 = find("ceiling/sgemm/threads:1")
    memcpy = find("ceiling/memcpy")
    fma = find("ceiling/fma")
    rows_ceiling = find("ceiling/token_rows")
    ctx = data["context"]
    reps = f", median of {next(iter(medians.values()))['repetitions']} repetitions" if medians else ""
    print(f"machine: {ctx.get('host_name', '?')}, {ctx['num_cpus']} CPUs @ {ctx['mhz_per_cpu']} MHz, "
          f"run {ctx['date']}{reps}")
    print(f"ceilings: sgemm {sgemm['flops'] / 1e9:.1f} GFLOP/s (all threads), "
          f"{sgemm1['flops'] / 1e9:.1f} GFLOP/s (1 thread); memcpy {memcpy['bytes'] / 1e9:.1f} GB/s"
          + (f"; FMA peak {fma['flops'] / 1e9:.1f} GFLOP/s (all threads, sgemm = {sgemm['flops'] / fma['flops']:.0%} of it)"
             if fma else "")
          + (f"; token rows {rows_ceiling['bytes'] / 1e9:.1f} GB/s (the engines' input reads)" if rows_ceiling else "")
          + "\n")
    print("| case | time | GFLOP/s | / sgemm | GB/s | / memcpy |")
    print("|---|---|---|---|---|---|")
    for name, b in rows.items():
        if name.startswith("ceiling/"):
            continue
        ref = sgemm1 if "threads:1" in name else sgemm
        t = b["real_time"]
        unit = b["time_unit"]
        flops, byts = b.get("flops", 0.0), b.get("bytes", 0.0)
        label = re.sub(r"(/-?\d+)+$", "", name.split("/real_time")[0])  # drop the numeric args
        print(f"| {label} | {t:.3g} {unit} | {flops / 1e9:.1f} | {flops / ref['flops']:.0%} | "
              f"{byts / 1e9:.2f} | {byts / memcpy['bytes']:.0%} |")


if __name__ == "__main__":
    main(sys.argv[1])
