#!/usr/bin/env python3
"""Per-instruction stall table from Nsight Compute's source page.

Input: the CSV of `ncu -i REPORT --page source --csv --print-source sass` (one row per SASS
instruction). The column names differ between ncu versions, so they are found by pattern:
the instruction text (a column named like "Source"), and every numeric column whose name
mentions "Sampling" or a stall reason. Prints the columns found, each sampling column's
total, then the N instructions with the most samples in the largest sampling column, with
their share of it and the address, so that the instructions a kernel waits at can be
compared between two builds. Usage: ncu_top.py CSV [N]

With --details: the CSV of `ncu -i REPORT --page details --csv` instead, printed one metric
a line (section, name, unit, value). Usage: ncu_top.py --details CSV
"""
import csv
import sys


def number(x):
    try:
        return float(str(x).replace(",", ""))
    except ValueError:
        return None


def sass_rows(path):
    """The rows of ncu's SASS source page (CSV), ncu's preamble lines skipped; None, with a
    message, when there are none."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"') and "Source" in l), None)
    if start is None:
        print(f"{path}: no header row with a Source column; first lines:")
        print("\n".join(lines[:5]))
        return None
    rows = list(csv.DictReader(lines[start:]))
    if not rows:
        print(f"{path}: header but no rows")
        return None
    return rows


def details(path):
    with open(path, newline="") as f:
        lines = [l for l in f.read().splitlines() if l.startswith('"')]  # no ==PROF== lines
    for r in csv.DictReader(lines):
        if r.get("Metric Name"):
            print(f"{r['Section Name'][:34]:34s} {r['Metric Name'][:44]:44s} {r['Metric Unit']:>12s} {r['Metric Value']}")


def main():
    if sys.argv[1] == "--details":
        return details(sys.argv[2])
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    rows = sass_rows(path)
    if not rows:
        return 1
    cols = list(rows[0].keys())
    src = next(c for c in cols if "source" in c.lower())
    addr = next((c for c in cols if "address" in c.lower()), None)
    keys = ("sampling", "stall", "samples")
    sampled = [c for c in cols if any(k in c.lower() for k in keys) and any(number(r[c]) is not None for r in rows)]
    print(f"{path}: {len(rows)} instructions; columns: {', '.join(cols)}")
    if not sampled:
        print("no sampling columns found")
        return 1
    totals = {c: sum(number(r[c]) or 0.0 for r in rows) for c in sampled}
    for c in sampled:
        print(f"  total {c}: {totals[c]:.0f}")
    main_col = max(sampled, key=lambda c: totals[c])
    ranked = sorted(rows, key=lambda r: number(r[main_col]) or 0.0, reverse=True)[:top]
    print(f"\ntop {top} by {main_col}:")
    for r in ranked:
        v = number(r[main_col]) or 0.0
        share = 100.0 * v / totals[main_col] if totals[main_col] else 0.0
        where = r[addr] if addr else ""
        print(f"{share:6.2f}% {v:8.0f}  {where:>8}  {r[src].strip()[:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
