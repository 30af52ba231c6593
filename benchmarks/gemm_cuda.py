"""CUDA GEMM benchmark: fp16 against qbench's int8 and weight-only kernels, side by side in one run.

    python benchmarks/gemm_cuda.py [--device cuda:0] [--shapes 1x4096x4096,2048x4096x4096] [--repeats 50]
                                   [--json out.json]

Contenders for each (M, K, N): fp16 torch linear (the baseline), the bare int8 GEMM torch._int_mm on
pre-quantized operands (M > 16 only), qbench's int8_int_mm_cuda (dynamic per-token activation quantization
+ int8 GEMM + corrections + rescale), qbench's Triton weight-only int8 (per channel) and int4 (groups of
128) kernels, and FP8 e4m3 via torch._scaled_mm where the GPU has compute capability 8.9 or newer.

Every contender's output is compared with fp16 first (max error relative to the output's range; it includes
the quantization error, so it catches a broken kernel rather than measuring accuracy). Timing
uses CUDA events around each call, after warm-up (Triton compilation happens there), round-robin over the
contenders repeat after repeat so clock and thermal drift hit all alike. Weights rotate through copies
larger than the GPU's L2 cache so decode shapes read them from memory. The table prints medians, p10-p90,
TFLOP/s (TOP/s for integer) and the ratio to fp16 measured in this run, then the issue's targets.

Exit status: 0 after measuring; 2 when there is no CUDA device (nothing is measured or guessed).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys

DEFAULT_SHAPES = "1x4096x4096,16x4096x4096,1x4096x14336,2048x4096x4096,4096x4096x4096,4096x8192x8192"
ROTATE_BYTES = 256 << 20  # weight copies per contender: more than the L2 of current GPUs (H100: 50 MiB)
TARGETS = (  # (label, contender, baseline, predicate on (M, K, N), minimum ratio)
    ("int8 GEMM >= 1.6x fp16 at M >= 2048", "torch._int_mm int8 GEMM only", lambda m, k, n: m >= 2048, 1.6),
    ("int4 weight-only decode GEMV >= 2.5x fp16", "qbench triton_int4_wo g128", lambda m, k, n: m == 1, 2.5),
)


def no_cuda_reason() -> str | None:
    import torch

    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no GPU or driver visible)"
    return None


def contenders(m: int, k: int, n: int, device: str):
    """name -> (list of per-copy callables, reference output of copy 0 or None, ops per call)."""
    import torch

    from qbench.engine.kernels import KERNELS
    from qbench.engine.kernels.cuda import capability, int_mm_shape_problem
    from qbench.engine.primitives import QuantSpec

    torch.manual_seed(0)
    copies = max(1, min(8, ROTATE_BYTES // (2 * k * n)))
    ws = [torch.randn(n, k, device=device) * 0.05 for _ in range(copies)]
    b = torch.randn(n, device=device)
    x = torch.randn(m, k, device=device, dtype=torch.float16)
    out = {"fp16 (torch linear)": [lambda w=w.half(), b=b.half(): torch.nn.functional.linear(x, w, b) for w in ws]}
    if int_mm_shape_problem(m, k, n) is None:
        a8 = torch.randint(-128, 128, (m, k), dtype=torch.int8, device=device)
        w8t = [torch.randint(-128, 128, (n, k), dtype=torch.int8, device=device).t() for _ in ws]
        out["torch._int_mm int8 GEMM only"] = [lambda w=w: torch._int_mm(a8, w) for w in w8t]
    specs = {"qbench int8_int_mm_cuda a8 per-token": ("int8_int_mm_cuda", QuantSpec(8, True, True, "per_channel"),
                                                      QuantSpec(8, False, False, "per_token")),
             "qbench triton_int8_wo": ("triton_int8_wo", QuantSpec(8, True, True, "per_channel"), None),
             "qbench triton_int4_wo g128": ("triton_int4_wo", QuantSpec(4, True, False, "per_group", 128), None)}
    if capability(device) >= (8, 9) and k % 16 == 0 and n % 16 == 0:
        specs["fp8_e4m3_scaled_mm a8 per-token"] = ("fp8_e4m3_scaled_mm", None, None)
    for label, (name, wspec, aspec) in specs.items():
        kern = KERNELS.get(name)
        states = [kern.prepare(w, b, wspec, aspec) for w in ws]
        out[label] = [lambda s=s, kern=kern: kern.forward(s, x) for s in states]
    return out


def time_round_robin(fns: dict, warmup: int, repeats: int) -> dict:
    """Milliseconds per call of every contender, by CUDA events, round-robin over contenders."""
    import torch

    for calls in fns.values():
        for _ in range(warmup):
            for f in calls:
                f()
    torch.cuda.synchronize()
    events = {name: [] for name in fns}
    for r in range(repeats):
        for name, calls in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            calls[r % len(calls)]()
            end.record()
            events[name].append((start, end))
    torch.cuda.synchronize()
    return {name: [s.elapsed_time(e) for s, e in ev] for name, ev in events.items()}


def quantile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated MxKxN")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    why = no_cuda_reason()
    if why:
        print(f"no CUDA device: {why}; nothing measured", file=sys.stderr)
        return 2
    import torch

    torch.cuda.set_device(args.device)
    props = torch.cuda.get_device_properties(args.device)
    env = {"gpu": props.name, "compute_capability": f"{props.major}.{props.minor}", "torch": torch.__version__,
           "cuda": torch.version.cuda, "triton": _version("triton"), "driver": _driver()}
    print(" | ".join(f"{k} {v}" for k, v in env.items()))
    results = []
    for shape in args.shapes.split(","):
        m, k, n = (int(v) for v in shape.lower().split("x"))
        fns = contenders(m, k, n, args.device)
        ref = fns["fp16 (torch linear)"][0]().float()
        errors = {name: float((calls[0]().float() - ref).abs().max() / ref.abs().max()) for name, calls in fns.items()
                  if "GEMM only" not in name}
        ms = time_round_robin(fns, args.warmup, args.repeats)
        base = statistics.median(ms["fp16 (torch linear)"])
        print(f"\nM={m} K={k} N={n}  ({len(fns['fp16 (torch linear)'])} weight copies rotated)")
        print(f"  {'contender':40s} {'median ms':>10s} {'p10-p90 ms':>17s} {'T(FL)OP/s':>10s} {'vs fp16':>8s} "
              f"{'max rel err':>11s}")
        for name, xs in ms.items():
            med = statistics.median(xs)
            row = {"shape": [m, k, n], "contender": name, "median_ms": med, "p10_ms": quantile(xs, 0.1),
                   "p90_ms": quantile(xs, 0.9), "tops": 2 * m * k * n / med / 1e9, "vs_fp16": base / med,
                   "max_rel_err": errors.get(name), "repeats": len(xs)}
            results.append(row)
            err = "-" if row["max_rel_err"] is None else f"{row['max_rel_err']:.2e}"
            print(f"  {name:40s} {med:10.4f} {row['p10_ms']:8.4f}-{row['p90_ms']:<8.4f} {row['tops']:10.1f} "
                  f"{row['vs_fp16']:7.2f}x {err:>11s}")
    print("\nTargets (issue 7, H100-class GPU):")
    for label, contender, applies, goal in TARGETS:
        got = [r for r in results if r["contender"] == contender and applies(*r["shape"])]
        if not got:
            print(f"  {label}: no matching shape in this run")
        for r in got:
            verdict = "met" if r["vs_fp16"] >= goal else "NOT met"
            print(f"  {label}: {r['vs_fp16']:.2f}x at {'x'.join(map(str, r['shape']))} ({verdict} on {env['gpu']})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"env": env, "results": results}, fh, indent=1)
    return 0


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - the driver version is provenance, not a requirement
        return None


if __name__ == "__main__":
    sys.exit(main())
