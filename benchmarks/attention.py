"""Attention kernels side by side: torch's fp32 SDPA against qbench's two integer paths, in one run.

    python benchmarks/attention.py [--shapes 8x12x128x128x32,1x9x1x129x64] [--rounds 30] [--threads 2]

Shapes are batch x heads x query rows x keys x head_dim. Per shape, every round times each contender once, in turn
(the machine's load moves them all): torch.nn.functional.scaled_dot_product_attention in float32, and
qbench's quantized attention (W8A8's activation spec: 8-bit unsigned asymmetric per token) through
`int8_attention_native` (one C call, native/attention.c) and `int8_attention` (torch._int_mm per (batch, head)
slice), all with an additive mask. Printed: the median milliseconds of each and the median of the per-round
ratios to SDPA, with their 10th-90th percentiles.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

DEFAULT_SHAPES = "8x12x128x128x32,1x12x128x128x32,1x9x128x128x64,1x9x1x129x64,8x9x1x129x64"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/attention.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)

    import torch

    from qbench.engine.kernels.attention import native_attention_reason, quantized_attention
    from qbench.engine.primitives import QuantSpec
    from qbench.hardware import detect

    if args.threads:
        torch.set_num_threads(args.threads)
    why = native_attention_reason()
    if why:
        print(f"int8_attention_native cannot run here: {why}", file=sys.stderr)
        return 1
    a = QuantSpec(8, False, False, "per_token")
    hw = detect()
    print(f"{hw.cpu_model}, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.rounds} rounds")
    print("| B x H x S x T x D | SDPA fp32 ms | int8_attention_native ms, x SDPA [p10, p90] | "
          "int8_attention ms, x SDPA [p10, p90] |")
    print("|---|---:|---:|---:|")
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        b, h, s, t, d = (int(v) for v in shape.split("x"))
        q, k, v = torch.randn(b, h, s, d), torch.randn(b, h, t, d), torch.randn(b, h, t, d)
        mask = torch.zeros(b, 1, s, t)
        fns = {
            "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask),
            "native": lambda: quantized_attention(q, k, v, mask, d ** -0.5, a, "int8_attention_native"),
            "int_mm": lambda: quantized_attention(q, k, v, mask, d ** -0.5, a, "int8_attention"),
        }
        ms = {n: [] for n in fns}
        with torch.no_grad():
            for _ in range(3):
                for fn in fns.values():
                    fn()
            for _ in range(args.rounds):
                for n, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    ms[n].append(1e3 * (time.perf_counter() - t0))

        def cell(n):
            r = sorted(x / y for x, y in zip(ms["sdpa"], ms[n]))
            return (f"{statistics.median(ms[n]):.3f}, {statistics.median(r):.2f}x "
                    f"[{r[len(r) // 10]:.2f}, {r[(9 * len(r)) // 10]:.2f}]")
        print(f"| {shape} | {statistics.median(ms['sdpa']):.3f} | {cell('native')} | {cell('int_mm')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
