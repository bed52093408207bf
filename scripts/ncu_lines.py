#!/usr/bin/env python3
"""Per-source-line totals of one kernel's Nsight Compute SASS table.

Inputs: the CSV of `ncu -i REPORT --page source --csv --print-source sass` (one row per SASS
instruction, absolute addresses) and the kernel's disassembly with line information
(`nvdisasm -g -c` of the cubins that `cuobjdump -xelf all BINARY` extracts; several
functions may be in it: the one whose instruction sequence matches the CSV's is used).
Prints, per source line (innermost location), the warp instructions executed and the stall
samples, the lines with the most instructions first, and the totals per file. Usage:
ncu_lines.py SASS_CSV DISASM [N] [--phases FILE:NAME:FIRST:LAST,NAME:FIRST:LAST,...]
With --phases, instructions are also summed per phase: an instruction belongs to the phase
of the last line of FILE (in address order) that falls in a phase's line range — inlined
helpers (their own lines elsewhere) go to the phase whose code precedes them. The
disassembly's function is picked by its instruction sequence; --fun SUBSTRING picks it by
name instead (instantiations with equal code match equally well). --col NAME adds one more
column of the CSV summed alike (e.g. "L1 Wavefronts Shared": the shared-memory wavefronts of
each phase, against the SM's one wavefront per cycle).
"""
import re
import sys
from collections import defaultdict

from ncu_top import number, sass_rows

FILE_RE = re.compile(r'//## File "([^"]+)", line (\d+)')
INSN_RE = re.compile(r'/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;')
FUNC_RE = re.compile(r'^\s*\.section\s+\.text\.(\S+?),')


def opcode(text):
    t = text.strip()
    if t.startswith("@"):
        t = t.split(None, 1)[1] if " " in t else t
    return t.split()[0] if t else ""


def disasm(path):
    """function → list of (offset, opcode, (file, line))"""
    funcs, cur, loc = {}, None, ("?", 0)
    opener = open
    if path.endswith(".xz"):
        import lzma
        opener = lzma.open
    with opener(path, "rt", errors="replace") as f:
        for l in f:
            m = FUNC_RE.match(l)
            if m:
                cur = m.group(1)
                funcs.setdefault(cur, [])
                loc = ("?", 0)
                continue
            m = FILE_RE.search(l)
            if m:
                loc = (m.group(1).split("/")[-1], int(m.group(2)))
                continue
            m = INSN_RE.search(l)
            if m and cur:
                funcs[cur].append((int(m.group(1), 16), opcode(m.group(2)), loc))
    return funcs


def main():
    args = sys.argv[1:]
    opts = {}
    for key in ("--phases", "--fun", "--col"):
        if key in args:
            i = args.index(key)
            opts[key] = args[i + 1]
            del args[i:i + 2]
    csv_path, dis_path = args[0], args[1]
    top = int(args[2]) if len(args) > 2 else 60
    rows = sass_rows(csv_path)
    if not rows:
        return 1
    base = int(rows[0]["Address"], 16)
    ops = [opcode(r["Source"]) for r in rows]
    funcs = disasm(dis_path)

    def agree(fn):  # opcodes of the disassembled function equal to the CSV's, in order
        return sum(1 for a, b in zip(funcs[fn], ops) if a[1] == b)

    if "--fun" in opts:
        best = next(fn for fn in funcs if opts["--fun"] in fn)
    else:
        best = max(funcs, key=lambda fn: agree(fn) - abs(len(funcs[fn]) - len(ops)))
    code = {off: loc for off, _, loc in funcs[best]}
    print(f"{best}: {len(funcs[best])} instructions in the disassembly, {len(rows)} in the CSV, {agree(best)} opcodes agree")
    samp = next((c for c in rows[0] if c.startswith("Warp Stall Sampling (All")), None)
    # per instruction: its source location, warp instructions executed, stall samples
    col = opts.get("--col")
    insns = [(code.get(int(r["Address"], 16) - base, ("?", 0)), number(r.get("Instructions Executed")) or 0.0,
              (number(r.get(samp)) or 0.0) if samp else 0.0, (number(r.get(col)) or 0.0) if col else 0.0)
             for r in rows]
    per = defaultdict(lambda: [0.0, 0.0, 0.0])
    perfile = defaultdict(lambda: [0.0, 0.0, 0.0])
    tot = [0.0, 0.0, 0.0]
    for loc, n, s, x in insns:
        for d in (per[loc], perfile[loc[0]], tot):
            d[0] += n
            d[1] += s
            d[2] += x
    extra = (lambda x: f"  {x:10.4g} {col}") if col else (lambda x: "")
    print(f"total: {tot[0]:.4g} warp instructions executed, {tot[1]:.4g} stall samples")
    if col:
        print(f"total {col}: {tot[2]:.4g}")
    for fl, (n, s, x) in sorted(perfile.items(), key=lambda x: -x[1][0]):
        print(f"  {fl:40s} {n / tot[0] * 100:5.1f} % instr  {s / max(tot[1], 1) * 100:5.1f} % samples" + extra(x))
    if "--phases" in opts:
        spec = opts["--phases"].split(",")
        pfile, spec[0] = spec[0].split(":", 1)
        ranges = [(n, int(a), int(b)) for n, a, b in (x.split(":") for x in spec)]
        phase, cur = defaultdict(lambda: [0.0, 0.0, 0.0]), "(before)"
        for (fl, ln), n, s, x in insns:
            if fl == pfile:
                cur = next((name for name, a, b in ranges if a <= ln <= b), cur)
            phase[cur][0] += n
            phase[cur][1] += s
            phase[cur][2] += x
        print("per phase:")
        for name, (n, s, x) in sorted(phase.items(), key=lambda x: -x[1][0]):
            print(f"  {name:16s} {n:10.4g} instr {n / tot[0] * 100:5.1f} %  {s / max(tot[1], 1) * 100:5.1f} % samples"
                  + extra(x))
    print(f"{'file:line':44s} {'instr':>10s} {'%':>6s} {'samples':>9s} {'%':>6s}" + (f"  {col}" if col else ""))
    for (fl, ln), (n, s, x) in sorted(per.items(), key=lambda x: -x[1][0])[:top]:
        print(f"{fl + ':' + str(ln):44s} {n:10.4g} {n / tot[0] * 100:6.2f} {s:9.4g} {s / max(tot[1], 1) * 100:6.2f}"
              + (f"  {x:10.4g}" if col else ""))


if __name__ == "__main__":
    sys.exit(main())
