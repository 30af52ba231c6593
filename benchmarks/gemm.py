"""GEMM benchmark: qbench's kernels against fp32 and PyTorch's own int8 path, side by side in one run.

    python benchmarks/gemm.py [--shapes 1x4096x4096,128x768x3072] [--repeats 30] [--json out.json]

For each (M, K, N) every contender is timed interleaved (round-robin over contenders, repeat after
repeat) so machine noise hits all of them alike; the table prints medians, p10-p90, GOPS and the ratio
to fp32 measured in this run. Weights rotate through several copies larger than the last-level cache
so decode-sized (memory-bound) shapes are not flattered by cache-resident repeats.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from qbench.engine.kernels import KERNELS
from qbench.engine.primitives import QuantSpec

DEFAULT_SHAPES = "1x4096x4096,16x4096x4096,128x4096x4096,512x768x3072,1024x384x1536,1024x1536x384"
CACHE_BYTES = 64 << 20  # rotate weights through more memory than the L3 of this machine class


def contenders(k: int, n: int, copies: int):
    """name -> list of per-copy callables taking x."""
    torch.manual_seed(0)
    ws = [torch.randn(n, k) * 0.05 for _ in range(copies)]
    b = torch.randn(n)
    out = {"fp32 (torch linear)": [lambda x, w=w: torch.nn.functional.linear(x, w, b) for w in ws]}
    w8 = QuantSpec(8, True, True, "per_channel")
    specs = {
        "int8_int_mm a8 static per-tensor": ("int8_int_mm", w8, QuantSpec(8, False, False, "per_tensor"), True),
        "int8_int_mm a8 dynamic per-token": ("int8_int_mm", w8, QuantSpec(8, False, False, "per_token"), False),
        "int8_weight_only": ("int8_weight_only", w8, None, False),
        "int4_packed g128": ("int4_packed", QuantSpec(4, True, False, "per_group", 128), None, False),
    }
    for label, (name, wspec, aspec, static) in specs.items():
        kern = KERNELS.get(name)
        qp = (torch.tensor(4.0 / 255), torch.tensor(128, dtype=torch.int32)) if static else None
        states = [kern.prepare(w, b, wspec, aspec, qp) for w in ws]
        out[f"qbench {label}"] = [lambda x, s=s, kern=kern: kern.forward(s, x) for s in states]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for engine in ("fbgemm", "onednn"):
            if engine not in torch.backends.quantized.supported_engines:
                continue
            torch.backends.quantized.engine = engine
            mods = []
            for w in ws:
                lin = torch.nn.Linear(k, n)
                lin.weight.data, lin.bias.data = w, b
                mods.append(torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                                   dtype=torch.qint8)[0])
            out[f"torch.ao dynamic int8 ({engine})"] = [
                lambda x, m=m, e=engine: _with_engine(e, m, x) for m in mods]
    return out


def _with_engine(engine, mod, x):
    torch.backends.quantized.engine = engine
    return mod(x)


def bench_shape(m: int, k: int, n: int, repeats: int, warmup: int) -> list[dict]:
    copies = max(1, min(8, CACHE_BYTES // (k * n * 4) + 1))
    fns = contenders(k, n, copies)
    x = torch.randn(m, k)
    times = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, calls in fns.items():
            f = calls[i % len(calls)]
            t0 = time.perf_counter()
            f(x)
            dt = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                times[name].append(dt)
    base = statistics.median(times["fp32 (torch linear)"])
    rows = []
    for name, ms in times.items():
        med = statistics.median(ms)
        q = statistics.quantiles(ms, n=10)
        rows.append({"shape": f"{m}x{k}x{n}", "kernel": name, "median_ms": med, "p10_ms": q[0], "p90_ms": q[-1],
                     "gops": 2 * m * k * n / med / 1e6, "vs_fp32": base / med, "repeats": len(ms)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}")
    all_rows = []
    for shape in args.shapes.split(","):
        m, k, n = (int(v) for v in shape.lower().split("x"))
        rows = bench_shape(m, k, n, args.repeats, args.warmup)
        all_rows += rows
        print(f"\n(M, K, N) = ({m}, {k}, {n})")
        print(f"  {'kernel':38s} {'median ms':>10s} {'p10-p90 ms':>17s} {'GOPS':>8s} {'x fp32':>7s}")
        for r in rows:
            print(f"  {r['kernel']:38s} {r['median_ms']:10.3f} {r['p10_ms']:8.3f}-{r['p90_ms']:<8.3f} "
                  f"{r['gops']:8.1f} {r['vs_fp32']:7.2f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(all_rows, f, indent=1)


if __name__ == "__main__":
    main()
