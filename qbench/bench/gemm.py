"""GEMM benchmark: qbench's kernels against fp32/bf16 and the best CPU peers, side by side in one run.

    qbench bench gemm [--shapes 1x4096x4096,minilm,reflm] [--repeats 100] [--json out.json] [--quick]
    python benchmarks/gemm.py [same options]

For each (M, K, N) every contender is timed interleaved (every round runs each contender once, in a fresh
seeded random order), so machine noise and the state a predecessor leaves hit all of them alike. Each
contender holds enough copies of its weight to rotate through more memory than the last-level cache, so
memory-bound (decode) shapes are not flattered by cache-resident repeats. The table prints medians with
p10-p90, GOPS, effective GB/s, the ratio to fp32 and to the best peer of the same kind measured in this run,
the share of this machine's ceilings (an int8 GEMM rate and a memory bandwidth, both measured here first),
the relative error against fp32, and the overhead of asymmetric over symmetric activations (the two run
back to back in every round; the median of their per-round ratios). Raw per-round times go into the JSON.
Peers: torch.ao dynamic int8 Linear (fbgemm and oneDNN), PyTorch's bf16-activation weight-only primitives,
and onnxruntime / torchao when installed.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from qbench.atomic import write_atomic
from qbench.bench.machine import effective_cache_bytes, l3_bytes, measure_ceilings
from qbench.bench.peers import Contender, contenders
from qbench.metrics.stats import summarize

MINILM = "1024x384x384,1024x384x1536,1024x1536x384"          # all-MiniLM-L6-v2 linears at 8 x 128 tokens
REFLM = "1024x256x768,1024x256x256,1024x256x1024,1024x1024x256"  # reflm's linears at 8 x 128 tokens (prefill)
DEFAULT_SHAPES = "1x4096x4096,16x4096x4096,128x4096x4096,512x768x3072,2048x4096x4096," + MINILM + "," + REFLM
QUICK_SHAPES = "1x256x320,24x200x136"


# ----------------------------------------------------------------------------- timing


def bench_shape(m: int, k: int, n: int, repeats: int, warmup: int, prepared: tuple, budget_s: float) -> list[dict]:
    cs, w0, b = prepared
    for c in cs:
        c.times = []
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1))
    y_ref = torch.nn.functional.linear(x.double(), w0.double(), b.double())   # the float layer, exactly
    errs, last = {}, {}
    for c in cs:                                                   # warm-up (and any one-time setup)
        for i in range(max(1, warmup)):
            t0 = time.perf_counter()
            c.calls[i % len(c.calls)](x)
            last[c.label] = time.perf_counter() - t0
        errs[c.label] = float((c.calls[0](x).double() - y_ref).norm() / y_ref.norm())
    rounds = max(5, min(repeats, int(budget_s / max(sum(last.values()), 1e-9))))
    order = random.Random(f"{m}x{k}x{n}")            # a fresh order each round (seeded), so what ran just before
    units = twin_units(cs)                            # a call (its cache and thread state) biases no one
    for i in range(rounds):
        for unit in order.sample(units, len(units)):
            for c in order.sample(unit, len(unit)):
                f = c.calls[i % len(c.calls)]
                t0 = time.perf_counter()
                f(x)
                c.times.append((time.perf_counter() - t0) * 1e3)
    return [_row(m, k, n, c, errs[c.label]) for c in cs]


def twin_units(cs: list[Contender]) -> list[list[Contender]]:
    """Contenders that differ only in asymmetric vs symmetric activations run back to back (in a random order
    of the two), so their per-round ratio compares them under the same machine state."""
    units: dict[str, list[Contender]] = {}
    for c in cs:
        units.setdefault(re.sub(r" (asym|sym)$", "", c.label), []).append(c)
    return list(units.values())


def _row(m, k, n, c: Contender, err: float) -> dict:
    s = summarize(c.times)                     # median, p10, p90: linear interpolation between order statistics
    med = s["median"]
    moved = c.weight_bytes + 4 * m * k + 4 * m * n
    return {"shape": f"{m}x{k}x{n}", "m": m, "k": k, "n": n, "contender": c.label, "kind": c.kind, "peer": c.peer,
            "note": c.note, "median_ms": med, "p10_ms": s["p10"], "p90_ms": s["p90"], "repeats": len(c.times),
            "weight_copies": len(c.calls), "gops": 2 * m * k * n / med / 1e6, "gbs": moved / med / 1e6,
            "rel_err_vs_fp64": err, "times_ms": list(c.times)}


def annotate(rows: list[dict], ceilings: dict) -> None:
    """Ratios to the faster fp32 baseline (torch, or onnxruntime when installed) and to the best peer of the
    same kind; shares of the machine's ceilings."""
    torch_fp32 = next(r["median_ms"] for r in rows if r["contender"].startswith("fp32"))
    fp32 = min(r["median_ms"] for r in rows if r["kind"] == "baseline" and "fp32" in r["contender"])
    for r in rows:
        r["vs_fp32"] = fp32 / r["median_ms"]
        r["vs_torch_fp32"] = torch_fp32 / r["median_ms"]
        peers = [p["median_ms"] for p in rows if p["peer"] and p["kind"] == r["kind"]]
        r["vs_best_peer"] = min(peers) / r["median_ms"] if peers and r["kind"] != "baseline" else None
        peak = ceilings["fp32_gflops"] if r["kind"] == "baseline" or r["kind"].startswith("wo") else \
            ceilings["int8_gops"]
        r["pct_peak_ops"] = 100 * r["gops"] / peak
        r["pct_mem_bw"] = 100 * r["gbs"] / ceilings["mem_gbs"]
    wo8 = next((r["median_ms"] for r in rows if r["contender"] == "qbench int8 weight-only"), None)
    for r in rows:                                 # a 4-bit weight reads half the bytes: how much of that it gains
        r["vs_int8_wo"] = wo8 / r["median_ms"] if wo8 and r["kind"] in ("wo4", "w4a8") else None


def asym_overheads(rows: list[dict]) -> list[dict]:
    out = []
    by = {r["contender"]: r for r in rows}
    for gran in ("per-tensor", "per-token"):
        a, s = by.get(f"qbench w8a8 dyn {gran} asym"), by.get(f"qbench w8a8 dyn {gran} sym")
        if a and s:                                   # median of the per-round ratios of the back-to-back twins
            ratio = statistics.median(ta / ts for ta, ts in zip(a["times_ms"], s["times_ms"]))
            out.append({"shape": a["shape"], "m": a["m"], "granularity": gran, "overhead_pct": 100 * (ratio - 1)})
    return out


TARGETS = (  # (what, contender, shapes it applies to, field, threshold)
    ("W8A8 >= 3x fp32 at M >= 16", "qbench w8a8 dyn per-token asym", lambda r: r["m"] >= 16, "vs_fp32", 3.0),
    ("W8A8 >= 3x fp32 at M >= 16", "qbench w8a8 dyn per-tensor asym", lambda r: r["m"] >= 16, "vs_fp32", 3.0),
    ("W8A8 within 1.2x of best peer at M >= 16", "qbench w8a8 dyn per-token asym", lambda r: r["m"] >= 16,
     "vs_best_peer", 1 / 1.2),
    ("W8A8 within 1.2x of best peer at M >= 16", "qbench w8a8 dyn per-tensor asym", lambda r: r["m"] >= 16,
     "vs_best_peer", 1 / 1.2),
    ("W4A8 >= 3x fp32 at M >= 16", "qbench w4a8 dyn per-token asym", lambda r: r["m"] >= 16, "vs_fp32", 3.0),
    ("W4A8 >= 3x fp32 at M >= 16", "qbench w4a8 g128 dyn per-token asym", lambda r: r["m"] >= 16, "vs_fp32", 3.0),
    ("int8 weight-only >= 2.5x fp32 at M = 1", "qbench int8 weight-only", lambda r: r["m"] == 1, "vs_fp32", 2.5),
    ("int4 g128 weight-only >= 3.5x fp32 at M = 1", "qbench int4 g128 weight-only", lambda r: r["m"] == 1,
     "vs_fp32", 3.5),
    ("int4 g128 weight-only >= 80% of memory bandwidth at M = 1", "qbench int4 g128 weight-only",
     lambda r: r["m"] == 1, "pct_mem_bw", 80.0),
    ("int4 g128 weight-only >= 1.6x int8 weight-only at M = 1", "qbench int4 g128 weight-only",
     lambda r: r["m"] == 1, "vs_int8_wo", 1.6),
)


def targets(rows: list[dict], overheads: list[dict]) -> list[dict]:
    out = []
    for what, contender, applies, key, threshold in TARGETS:
        for r in rows:
            if r["contender"] == contender and applies(r) and r.get(key) is not None:
                out.append({"target": what, "contender": contender, "shape": r["shape"], "value": r[key],
                            "threshold": threshold, "met": r[key] >= threshold})
    for o in overheads:
        if o["m"] >= 128:
            out.append({"target": "asymmetric activations cost <= 10% at M >= 128",
                        "contender": f"qbench w8a8 dyn {o['granularity']}", "shape": o["shape"],
                        "value": o["overhead_pct"], "threshold": 10.0, "met": o["overhead_pct"] <= 10.0})
    return out


# ----------------------------------------------------------------------------- report


def print_table(rows: list[dict]) -> None:
    m, k, n = rows[0]["m"], rows[0]["k"], rows[0]["n"]
    print(f"\n(M, K, N) = ({m}, {k}, {n})   [{rows[0]['repeats']} interleaved repeats; weight copies: fp32 "
          f"{rows[0]['weight_copies']}, int8 {max(r['weight_copies'] for r in rows if r['kind'] == 'w8a8')}]")
    print(f"  {'contender':44s} {'median ms':>9s} {'p10-p90 ms':>17s} {'GOPS':>7s} {'GB/s':>6s} {'x fp32':>6s} "
          f"{'x peer':>6s} {'%ops':>5s} {'%BW':>4s} {'rel.err':>8s}")
    for r in rows:
        vp = f"{r['vs_best_peer']:6.2f}" if r["vs_best_peer"] is not None else f"{'':6s}"
        mark = "*" if r["peer"] else " "
        print(f" {mark}{r['contender'][:44]:44s} {r['median_ms']:9.3f} {r['p10_ms']:8.3f}-{r['p90_ms']:<8.3f} "
              f"{r['gops']:7.1f} {r['gbs']:6.1f} {r['vs_fp32']:6.2f} {vp} {r['pct_peak_ops']:5.1f} "
              f"{r['pct_mem_bw']:4.0f} {r['rel_err_vs_fp64']:8.1e}")


def parse_shapes(spec: str) -> list[tuple[int, int, int]]:
    spec = spec.replace("minilm", MINILM).replace("reflm", REFLM)
    shapes = []
    for s in spec.split(","):
        parts = s.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"bad shape {s!r}: expected MxKxN, e.g. 16x4096x4096 (or 'minilm', 'reflm')")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> dict:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=None, help=f"comma-separated MxKxN, 'minilm' for {MINILM}, 'reflm' for "
                                                   f"{REFLM}; default {DEFAULT_SHAPES}")
    ap.add_argument("--repeats", type=int, default=100,
                    help="interleaved rounds at most (fewer where the --budget runs out first)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timed rounds per shape, roughly")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write machine, ceilings and rows as JSON here")
    ap.add_argument("--rotate-mib", type=int, default=None,
                    help="memory each contender rotates its weight copies through (default: 4x the cache that "
                         "repeated reads are measured to find, at least 128 MiB)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few repeats: a smoke test")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES))
    repeats, warmup = (3, 1) if args.quick else (args.repeats, args.warmup)
    budget = 1.0 if args.quick else args.budget
    cache = effective_cache_bytes(args.quick)
    rotate = 4 * cache if args.quick else max(4 * cache, 128 << 20)   # a busy machine can hide its cache
    if args.rotate_mib:
        rotate = args.rotate_mib << 20
    from qbench.engine.kernels import native
    import qbench
    from qbench.hardware.detect import detect
    from qbench.hardware.provenance import git_commit
    hw = detect(include_torch=False)
    machine = {"qbench": qbench.__version__, "git_commit": git_commit(), "cpu": hw.cpu_model,
               "cpu_arch": hw.cpu_arch, "cpu_flags": list(hw.cpu_flags), "logical_cores": hw.logical_cores,
               "threads": torch.get_num_threads(),
               "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "native_kernels": native.isa(), "l3_bytes": l3_bytes(), "effective_cache_bytes": cache,
               "rotate_bytes": rotate}
    ceilings = measure_ceilings(args.quick)
    commit = machine["git_commit"]             # the full hash is in the JSON; the line names 12 digits
    at = f" at {commit[:12]}{'-dirty' if commit.endswith('-dirty') else ''}" if commit else ""
    print(f"qbench {machine['qbench']}{at}, {machine['cpu']} "
          f"({machine['logical_cores']} logical cores), torch {machine['torch']}, "
          f"{machine['threads']} threads, {machine['cpu_capability']}, native kernels: "
          f"{machine['native_kernels']}; weights rotated through {rotate / 2**20:.0f} MiB per contender "
          f"(at least 4x the {cache / 2**20:.0f} MiB that repeated reads find cached here; L3 reported "
          f"{l3_bytes() / 2**20:.1f} MiB)")
    print(f"ceilings measured: int8 {ceilings['int8_gops']:.0f} GOPS ({ceilings['int8_source']}), fp32 "
          f"{ceilings['fp32_gflops']:.0f} GFLOP/s, memory read {ceilings['mem_gbs']:.1f} GB/s")
    print("x fp32 / x peer: speed-up over the faster fp32 baseline (torch or onnxruntime) and over the best peer (*) "
          "of the same kind; %ops: share of the int8 (W8A8) or fp32 ceiling; %BW: effective bytes moved / memory "
          "bandwidth; rel.err: |y - y_fp64| / |y_fp64| against the unquantized layer")
    all_rows, overheads = [], []
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        prepared = {}
        for m, k, n in shapes:
            if (k, n) not in prepared:
                prepared.clear()                              # one weight shape in memory at a time
                prepared[(k, n)] = contenders(k, n, rotate, Path(tmp), 2 if args.quick else 64)
            rows = bench_shape(m, k, n, repeats, warmup, prepared[(k, n)], budget)
            annotate(rows, ceilings)
            print_table(rows)
            all_rows += rows
            overheads += asym_overheads(rows)
    if overheads:
        print("\nasymmetric vs symmetric activations (qbench int8_native, same run):")
        for o in overheads:
            print(f"  {o['shape']:>14s} {o['granularity']:10s} {o['overhead_pct']:+6.1f}%")
    goals = targets(all_rows, overheads)
    if goals:
        print("\ntargets (ratios from this run; x fp32 is against the faster fp32 baseline):")
        for t in goals:
            unit = "%" if t["target"].startswith("asym") or "bandwidth" in t["target"] else "x"
            print(f"  {'met' if t['met'] else 'MISSED':6s} {t['target']:47s} {t['contender'][7:]:25s} "
                  f"{t['shape']:>14s} {t['value']:6.2f}{unit}")
    result = {"machine": machine, "ceilings": ceilings, "rows": all_rows, "asym_overhead": overheads, "targets": goals,
              "argv": sys.argv[1:] if argv is None else argv}
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=1))
    return result
