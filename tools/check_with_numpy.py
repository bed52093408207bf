#!/usr/bin/env python3
"""gdr2-ref seen from a Python client.

Writes inputs with numpy (float32, float64, float16 and bfloat16-as-uint16; packed
varlen with int32/int64 cu_seqlens; grouped value heads; gates per key or value
head; every gate policy), runs gdr2-ref, reads its outputs and checks them against
the small numpy implementation of the recurrence (SPEC section 1) below. Also runs
the README's three-line kernel check verbatim and checks that bad input exits 2
and writes nothing.

usage: check_with_numpy.py PATH/TO/gdr2-ref WORK_DIR
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

GDR2_REF = os.path.abspath(sys.argv[1])
WORK = os.path.abspath(sys.argv[2])
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAILED:", what, flush=True)


# ---- bfloat16 <-> uint16 (numpy has no bfloat16) ---------------------------------
def to_bf16_bits(x):
    """Round float32 to bfloat16 (nearest even) and return the bit patterns as uint16."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(u):
    return (u.astype(np.uint32) << 16).view(np.float32)


def as_float64(x):
    return from_bf16_bits(x).astype(np.float64) if x.dtype == np.uint16 else x.astype(np.float64)


# ---- the recurrence, in float64 --------------------------------------------------
def recurrence(policy, q, k, v, g=None, b=None, w=None, beta=None, s0=None, cu=None, scale=None):
    """o [B,T,Hv,V] and final state [N,Hv,K,V] of SPEC section 1."""
    q, k, v = as_float64(q), as_float64(k), as_float64(v)
    B, T, Hk, K = q.shape
    Hv, V = v.shape[2], v.shape[3]
    scale = 1.0 / np.sqrt(K) if scale is None else scale
    if policy == "gdr2":
        g, b, w = as_float64(g), as_float64(b), as_float64(w)
    else:
        beta = as_float64(beta)
        b = np.repeat(beta[..., None], K, axis=-1)
        w = np.repeat(beta[..., None], V, axis=-1)
        if policy == "deltanet":
            g = np.zeros(beta.shape + (K,))
        elif policy == "gdn":
            g = np.repeat(as_float64(g)[..., None], K, axis=-1)
        else:
            g = as_float64(g)
    Hg = b.shape[2]
    seqs = [(0, int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)] if cu is not None else [(n, 0, T) for n in range(B)]
    o = np.zeros((B, T, Hv, V))
    st = np.zeros((len(seqs), Hv, K, V))
    for n, (bb, t0, t1) in enumerate(seqs):
        for h in range(Hv):
            hk, hg = h // (Hv // Hk), h * Hg // Hv
            S = np.zeros((K, V)) if s0 is None else s0[n, h].astype(np.float64)
            for t in range(t0, t1):
                S = np.exp(g[bb, t, hg])[:, None] * S
                r = S.T @ (b[bb, t, hg] * k[bb, t, hk])
                S = S + np.outer(k[bb, t, hk], w[bb, t, hg] * v[bb, t, h] - r)
                o[bb, t, h] = S.T @ (scale * q[bb, t, hk])
            st[n, h] = S
    return o, st


def rel(a, ref):
    a = as_float64(a)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def make_case(rng, policy, B, T, Hk, Hv, K, V, gate_heads, dtype, varlen=None, cu_dtype=np.int32):
    """Random inputs as a client would save them (q, k unit rows; g <= 0; b in [0, 2])."""
    if varlen is not None:
        B, T = 1, sum(varlen)
    cast = (lambda x: to_bf16_bits(x)) if dtype == "bfloat16" else (lambda x: x.astype(dtype))

    def unit(shape):
        x = rng.standard_normal(shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    x = dict(q=cast(unit((B, T, Hk, K))), k=cast(unit((B, T, Hk, K))), v=cast(rng.standard_normal((B, T, Hv, V))))
    Hg = gate_heads
    if policy in ("gdr2", "kda"):
        x["g"] = (-2.0 * rng.random((B, T, Hg, K))).astype(np.float32)
    if policy == "gdn":
        x["g"] = (-2.0 * rng.random((B, T, Hg))).astype(np.float32)
    if policy == "gdr2":
        x["b"] = cast(2.0 * rng.random((B, T, Hg, K)))
        x["w"] = cast(rng.random((B, T, Hg, V)))
    else:
        x["beta"] = cast(2.0 * rng.random((B, T, Hg)))
    N = len(varlen) if varlen is not None else B
    x["initial_state"] = (0.5 * rng.standard_normal((N, Hv, K, V))).astype(np.float32)
    if varlen is not None:
        x["cu_seqlens"] = np.concatenate([[0], np.cumsum(varlen)]).astype(cu_dtype)
    return x


def save_case(d, x):
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, a in x.items():
        np.save(os.path.join(d, name + ".npy"), a)


def run(args, **kw):
    return subprocess.run([GDR2_REF] + args, capture_output=True, text=True, **kw)


# ---- every policy and dtype against numpy -----------------------------------------
rng = np.random.default_rng(7)
cases = [
    # name, policy, dtype, engine flags, shapes (B, T, Hk, Hv, K, V, gate heads), varlen, cu dtype, engine tol
    ("gdr2-f32", "gdr2", np.float32, ["--engine", "chunk", "--chunk", "16"], (2, 33, 2, 4, 8, 6, 4), None, None, 1e-5),
    ("gdr2-bf16-varlen", "gdr2", "bfloat16", ["--engine", "recurrent"], (1, 0, 1, 2, 6, 10, 1), [5, 0, 17, 1, 40], np.int32, 1e-5),
    ("kda-f16-varlen", "kda", np.float16, ["--threads", "2"], (1, 0, 2, 2, 8, 8, 2), [20, 3], np.int64, 1e-5),
    ("gdn-f64", "gdn", np.float64, [], (2, 70, 1, 3, 5, 7, 3), None, None, 1e-12),
    ("deltanet-f32", "deltanet", np.float32, ["--chunk", "32"], (1, 50, 2, 4, 8, 8, 2), None, None, 1e-5),
]
for name, policy, dtype, flags, (B, T, Hk, Hv, K, V, Hg), varlen, cu_dtype, tol in cases:
    d = os.path.join(WORK, name)
    x = make_case(rng, policy, B, T, Hk, Hv, K, V, Hg, dtype, varlen, cu_dtype)
    save_case(d, x)
    r = run(["--policy", policy, d] + flags)
    check(r.returncode == 0, f"{name}: exit {r.returncode}: {r.stderr}")
    if r.returncode != 0:
        continue
    summary = json.loads(r.stdout)
    o_np, s_np = recurrence(policy, x["q"], x["k"], x["v"], x.get("g"), x.get("b"), x.get("w"), x.get("beta"),
                            x["initial_state"], x.get("cu_seqlens"))
    ref_o, ref_s = np.load(os.path.join(d, "ref_o.npy")), np.load(os.path.join(d, "ref_final_state.npy"))
    eng_o, eng_s = np.load(os.path.join(d, "engine_o.npy")), np.load(os.path.join(d, "engine_final_state.npy"))
    check(ref_o.dtype == np.float64 and ref_o.shape == o_np.shape, f"{name}: ref_o {ref_o.dtype} {ref_o.shape}")
    check(eng_o.dtype == (np.float64 if dtype == np.float64 else np.float32), f"{name}: engine_o dtype {eng_o.dtype}")
    check(ref_s.shape == s_np.shape, f"{name}: ref_final_state shape {ref_s.shape} vs {s_np.shape}")
    e = dict(ref_o=rel(ref_o, o_np), ref_s=rel(ref_s, s_np), eng_o=rel(eng_o, o_np), eng_s=rel(eng_s, s_np))
    check(e["ref_o"] < 1e-12 and e["ref_s"] < 1e-12, f"{name}: fp64 reference vs numpy {e}")
    check(e["eng_o"] < tol and e["eng_s"] < tol, f"{name}: engine vs numpy {e} (tol {tol})")
    check(summary["policy"] == policy and summary["T"] == x["q"].shape[1], f"{name}: summary {summary}")
    check(abs(summary["engine_vs_ref"]["o"]["rel"] - rel(eng_o, ref_o)) <= 1e-3 * rel(eng_o, ref_o) + 1e-300,
          f"{name}: summary error {summary['engine_vs_ref']['o']} vs {rel(eng_o, ref_o)}")
    print(f"{name:18s} fp64 ref vs numpy {max(e['ref_o'], e['ref_s']):.1e}   engine vs numpy {max(e['eng_o'], e['eng_s']):.1e}")

# ---- the README's three-line check, verbatim ----------------------------------------
# A "kernel under test": the numpy recurrence in float32 (good) and one that forgets
# the erase gate (bad). Inputs in bfloat16, as a kernel author would have them.
x = make_case(rng, "gdr2", 2, 40, 2, 4, 16, 16, 4, "bfloat16")
q, k, v, g, b, w = (x[n] for n in ("q", "k", "v", "g", "b", "w"))
good_o = recurrence("gdr2", q, k, v, g, b, w)[0].astype(np.float32)
bad_o = recurrence("gdr2", q, k, v, g, np.ones_like(as_float64(b)), w)[0].astype(np.float32)
env = dict(os.environ, PATH=os.path.dirname(GDR2_REF) + os.pathsep + os.environ.get("PATH", ""))
for o, expect_pass in ((good_o, True), (bad_o, False)):
    os.chdir(WORK)
    shutil.rmtree("case", ignore_errors=True)
    os.makedirs("case")
    # --- the three lines, as in the README ---
    for name, a in dict(q=q, k=k, v=v, g=g, b=b, w=w, my_o=o).items(): np.save(f"case/{name}.npy", a)
    r = subprocess.run(["gdr2-ref", "case", "--check", "o=case/my_o.npy", "--tol", "1e-3"], capture_output=True, text=True, env=env)
    ok = r.returncode == 0   # r.stdout: one line of JSON with the errors; case/ref_o.npy: the fp64 reference
    # ---
    check(ok == expect_pass, f"three-line check: expected pass={expect_pass}, got exit {r.returncode}: {r.stdout} {r.stderr}")
    print(f"three-line check, {'good' if expect_pass else 'bad'} kernel: exit {r.returncode}, check {json.loads(r.stdout)['check']}")

# ---- bad input: exit 2, a clear message, nothing written ----------------------------
d = os.path.join(WORK, "bad")
x = make_case(rng, "gdr2", 1, 9, 1, 1, 4, 4, 1, np.float32)
save_case(d, x)
np.save(os.path.join(d, "q.npy"), np.asfortranarray(x["q"]))
out = os.path.join(d, "out")
r = run([d, "--out", out])
check(r.returncode == 2 and "Fortran-order" in r.stderr and not os.path.exists(out), f"Fortran order: {r.returncode} {r.stderr}")
save_case(d, x)
with open(os.path.join(d, "v.npy"), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(d, "v.npy")) - 8)
r = run([d, "--out", out])
check(r.returncode == 2 and "truncated data" in r.stderr and not os.path.exists(out), f"truncated: {r.returncode} {r.stderr}")
save_case(d, x)
np.save(os.path.join(d, "w.npy"), x["w"][:, :, :, :3])
r = run([d, "--out", out])
check(r.returncode == 2 and "w has shape" in r.stderr and not os.path.exists(out), f"mismatched shape: {r.returncode} {r.stderr}")
np.save(os.path.join(d, "w.npy"), x["w"].astype(np.complex64))
r = run([d, "--out", out])
check(r.returncode == 2 and "unsupported dtype '<c8'" in r.stderr and not os.path.exists(out), f"dtype: {r.returncode} {r.stderr}")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
