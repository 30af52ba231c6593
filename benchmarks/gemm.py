"""GEMM benchmark: qbench's kernels against fp32/bf16 and the best CPU peers, side by side in one run.

    python benchmarks/gemm.py [--shapes 1x4096x4096,minilm] [--repeats 30] [--json out.json] [--quick]

For each (M, K, N) every contender is timed interleaved (round-robin over contenders, repeat after repeat)
so machine noise hits all of them alike. Each contender holds enough copies of its weight to rotate
through more memory than the last-level cache, so memory-bound (decode) shapes are not flattered by
cache-resident repeats. The table prints medians with p10-p90, GOPS, effective GB/s, the ratio to fp32
and to the best peer of the same kind measured in this run, the share of this machine's ceilings (an int8
GEMM rate and a memory bandwidth, both measured here first), the relative error against fp32, and the
overhead of asymmetric over symmetric activations. Peers: torch.ao dynamic int8 Linear (fbgemm and
oneDNN), PyTorch's bf16-activation weight-only primitives, and onnxruntime / torchao when installed.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from qbench.engine.kernels import KERNELS
from qbench.engine.primitives import QuantSpec, quantize

MINILM = "1024x384x384,1024x384x1536,1024x1536x384"          # all-MiniLM-L6-v2 linears at 8 x 128 tokens
DEFAULT_SHAPES = "1x4096x4096,16x4096x4096,128x4096x4096,512x768x3072,2048x4096x4096," + MINILM
QUICK_SHAPES = "1x256x320,24x200x136"

W8 = QuantSpec(8, True, True, "per_channel")
W4G = QuantSpec(4, False, False, "per_group", 128)
A_TENSOR_ASYM, A_TENSOR_SYM = QuantSpec(8, False, False, "per_tensor"), QuantSpec(8, True, True, "per_tensor")
A_TOKEN_ASYM, A_TOKEN_SYM = QuantSpec(8, False, False, "per_token"), QuantSpec(8, True, True, "per_token")


@dataclass
class Contender:
    label: str
    kind: str                 # baseline | w8a8 | wo8 | wo4
    peer: bool                # a peer (not qbench) of its kind
    calls: list               # one callable x -> y per weight copy
    weight_bytes: float       # bytes one call reads for its weight
    note: str = ""
    times: list = field(default_factory=list)


# ----------------------------------------------------------------------------- machine ceilings


def l3_bytes() -> int:
    for idx in range(8):
        p = Path(f"/sys/devices/system/cpu/cpu0/cache/index{idx}")
        try:
            if (p / "level").read_text().strip() == "3":
                size = (p / "size").read_text().strip().upper()
                mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
                return int(size.rstrip("KM")) * mult
        except OSError:
            continue
    return 32 << 20


def effective_cache_bytes(quick: bool) -> int:
    """The working set up to which repeated reads still run faster than memory: on a shared or virtual
    machine the cache a process really gets can be far below the L3 it reports."""
    if quick:
        return 4 << 20
    def gbs(nbytes):
        buf = torch.ones(nbytes // 4)
        return nbytes / best_time(lambda: buf.sum(), 4) / 1e9
    dram = gbs(1 << 30)
    cached = 8 << 20
    for mib in (16, 32, 64, 128, 256):
        if mib << 20 > 2 * l3_bytes():
            break
        if gbs(mib << 20) > 1.3 * dram:
            cached = mib << 20
    return cached


def best_time(fn: Callable, reps: int) -> float:
    fn()
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_ceilings(quick: bool) -> dict:
    """Best rates this machine reaches: int8 GEMM (oneDNN uint8 x int8, VNNI where present), fp32 GEMM
    (torch/MKL) and memory read bandwidth (a float32 sum over a buffer far larger than the L3)."""
    m, k, n = (256, 512, 512) if quick else (1024, 4096, 4096)
    reps = 2 if quick else 4
    out = {}
    a = torch.randn(m, k)
    b = torch.randn(k, n)
    out["fp32_gflops"] = 2 * m * k * n / best_time(lambda: torch.mm(a, b), reps) / 1e9
    try:
        u8 = torch.randint(0, 256, (m, k), dtype=torch.uint8)
        w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(w8, None)
        ws, wz = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int64)
        t = best_time(lambda: torch.ops.onednn.qlinear_pointwise(u8, 0.02, 128, packed, ws, wz, None, 1.0, 0,
                                                                 torch.float32, "none", [], ""), reps)
        out["int8_gops"] = 2 * m * k * n / t / 1e9
        out["int8_source"] = f"oneDNN u8 x s8 GEMM {m}x{k}x{n}"
    except (RuntimeError, AttributeError) as e:
        a8 = torch.randint(-127, 128, (m, k), dtype=torch.int8)
        w8 = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        out["int8_gops"] = 2 * m * k * n / best_time(lambda: torch._int_mm(a8, w8.t()), reps) / 1e9
        out["int8_source"] = f"torch._int_mm {m}x{k}x{n} (oneDNN qlinear unavailable: {str(e)[:60]})"
    nbytes = (64 << 20) if quick else max(4 * l3_bytes(), 256 << 20)
    buf = torch.ones(nbytes // 4)
    out["mem_gbs"] = nbytes / best_time(lambda: buf.sum(), reps) / 1e9
    out["mem_bytes"] = nbytes
    return out


# ----------------------------------------------------------------------------- contenders


def qbench_contender(label, kind, kernel_name, ws, b, w_spec, a_spec, static=False) -> Optional[Contender]:
    kern = KERNELS.get(kernel_name)
    reason = kern.supports(w_spec, a_spec, "cpu")
    if reason:
        print(f"  (skipped qbench {label}: {reason})", file=sys.stderr)
        return None
    qp = (torch.tensor(6.0 / 255), torch.tensor(128, dtype=torch.int32)) if static else None
    states = [kern.prepare(w, b, w_spec, a_spec, qp) for w in ws]
    n, k = ws[0].shape
    wbytes = n * k if w_spec.bits == 8 else n * ((k + 1) // 2) + 8 * n * k / (w_spec.group_size or k)
    return Contender(f"qbench {label}", kind, False, [lambda x, s=s: kern.forward(s, x) for s in states], wbytes,
                     note=kern.name + (" (emulated)" if kern.emulated else ""))


def torch_ao_contenders(ws, b) -> list[Contender]:
    out = []
    n, k = ws[0].shape
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
            out.append(Contender(f"torch.ao dynamic int8 ({engine})", "w8a8", True,
                                 [lambda x, m=m, e=engine: _with_engine(e, m, x) for m in mods], n * k,
                                 note="per-tensor weights" if engine == "onednn" else "7-bit activations"))
    return out


def _with_engine(engine, mod, x):
    torch.backends.quantized.engine = engine
    return mod(x)


def torch_weight_only_peers(ws, b) -> list[Contender]:
    """PyTorch's own weight-only CPU primitives; both are fast only with bf16 activations."""
    out = []
    n, k = ws[0].shape
    bb = b.bfloat16()
    try:
        if k % 64:   # measured: torch 2.13 segfaults here at (24, 200, 136) and works at (1, 200, 136)
            raise RuntimeError(f"not run: K = {k} is not a multiple of 64 (crashes this primitive at M > 1)")
        packs = []
        for w in ws:
            q = quantize(w, W8)
            packs.append((q.data.contiguous(), q.scale.bfloat16()))
        out.append(Contender("torch _weight_int8pack_mm (bf16 act)", "wo8", True,
                             [lambda x, p=p: (torch._weight_int8pack_mm(x.bfloat16(), p[0], p[1]) + bb).float()
                              for p in packs], n * k))
    except RuntimeError as e:
        print(f"  (skipped _weight_int8pack_mm: {e})", file=sys.stderr)
    if k % 128 == 0 and n % 16 == 0:
        try:
            packs = []
            for w in ws:
                q = quantize(w, W4G)                                     # codes 0..15, w = s * (u - z)
                sz = torch.stack((q.scale, q.scale * (8 - q.zero_point.float())), -1)  # (N, G, 2)
                packs.append((torch._convert_weight_to_int4pack_for_cpu(q.data.to(torch.int32), 1),
                              sz.transpose(0, 1).contiguous().bfloat16()))
            out.append(Contender("torch _weight_int4pack_mm g128 (bf16 act)", "wo4", True,
                                 [lambda x, p=p: (torch._weight_int4pack_mm_for_cpu(x.bfloat16(), p[0], 128, p[1])
                                                  + bb).float() for p in packs], n * k / 2 + 4 * n * k / 128))
        except RuntimeError as e:
            print(f"  (skipped _weight_int4pack_mm_for_cpu: {e})", file=sys.stderr)
    return out


def onnxruntime_contenders(ws, b, tmpdir: Path) -> list[Contender]:
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        return []
    n, k = ws[0].shape
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    fp32_calls, int8_calls = [], []
    for i, w in enumerate(ws):
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])], "gemm",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
            [numpy_helper.from_array(w.t().contiguous().numpy(), "w"), numpy_helper.from_array(b.numpy(), "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        f32, i8 = tmpdir / f"fp32_{i}.onnx", tmpdir / f"int8_{i}.onnx"
        onnx.save(model, f32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.disable(logging.WARNING)              # its advice to pre-process goes to the root logger
            try:
                quantize_dynamic(str(f32), str(i8), weight_type=QuantType.QInt8, per_channel=True)
            finally:
                logging.disable(logging.NOTSET)
        for path, calls in ((f32, fp32_calls), (i8, int8_calls)):
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            calls.append(lambda x, s=sess: torch.from_numpy(s.run(None, {"x": x.numpy()})[0]))
    return [Contender(f"onnxruntime {ort.__version__} fp32", "baseline", False, fp32_calls, 4 * n * k),
            Contender(f"onnxruntime {ort.__version__} dynamic int8", "w8a8", True, int8_calls, n * k,
                      note="per-channel weights")]


def torchao_contenders(ws, b) -> list[Contender]:
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return []
    n, k = ws[0].shape
    mods = []
    for w in ws:
        lin = torch.nn.Linear(k, n)
        lin.weight.data, lin.bias.data = w.clone(), b.clone()
        quantize_(lin, Int8DynamicActivationInt8WeightConfig())
        mods.append(lin)
    return [Contender("torchao int8 dynamic (eager)", "w8a8", True, [lambda x, m=m: m(x) for m in mods], n * k)]


def contenders(k: int, n: int, rotate_bytes: int, tmpdir: Path, max_copies: int = 64):
    """(contenders, first weight copy, bias): every contender's first copy holds that same weight. Copies
    are distinct buffers prepared from a small pool of float weights (addresses, not values, decide what
    the cache holds)."""
    copies = lambda per_copy: max(1, min(max_copies, math.ceil(rotate_bytes / per_copy)))  # noqa: E731
    g = torch.Generator().manual_seed(0)
    pool = [torch.randn(n, k, generator=g) * 0.05 for _ in range(copies(4 * n * k))]
    b = torch.randn(n, generator=g) * 0.1
    take = lambda bytes_per: [pool[i % len(pool)] for i in range(copies(bytes_per))]  # noqa: E731
    wb = [w.bfloat16() for w in take(2 * n * k)]
    bb = b.bfloat16()
    out = [Contender("fp32 (torch linear)", "baseline", False,
                     [lambda x, w=w: torch.nn.functional.linear(x, w, b) for w in take(4 * n * k)], 4 * n * k),
           Contender("bf16 (torch linear)", "baseline", False,
                     [lambda x, w=w: torch.nn.functional.linear(x.bfloat16(), w, bb).float() for w in wb], 2 * n * k)]
    w8s, w4s = take(n * k), take(n * k / 2)
    for c in (
        qbench_contender("w8a8 dyn per-tensor asym", "w8a8", "int8_onednn", w8s, b, W8, A_TENSOR_ASYM),
        qbench_contender("w8a8 dyn per-tensor sym", "w8a8", "int8_onednn", w8s, b, W8, A_TENSOR_SYM),
        qbench_contender("w8a8 dyn per-token asym", "w8a8", "int8_onednn", w8s, b, W8, A_TOKEN_ASYM),
        qbench_contender("w8a8 dyn per-token sym", "w8a8", "int8_onednn", w8s, b, W8, A_TOKEN_SYM),
        qbench_contender("w8a8 static per-tensor asym", "w8a8", "int8_onednn", w8s, b, W8, A_TENSOR_ASYM, True),
        qbench_contender("w8a8 _int_mm per-token asym", "w8a8", "int8_int_mm", w8s, b, W8, A_TOKEN_ASYM),
        qbench_contender("int8 weight-only", "wo8", "int8_wo_native", w8s, b, W8, None),
        qbench_contender("int8 weight-only (dequant+matmul)", "wo8", "int8_weight_only", w8s, b, W8, None),
        qbench_contender("int4 g128 weight-only", "wo4", "int4_wo_native", w4s, b, W4G, None)
        if k % 128 == 0 else None,
        qbench_contender("int4 g128 (unpack+matmul)", "wo4", "int4_packed", w4s, b, W4G, None)
        if k % 128 == 0 else None,
    ):
        if c is not None:
            out.append(c)
    out += torch_ao_contenders(w8s, b)
    out += torch_weight_only_peers(w8s if len(w8s) >= len(w4s) else w4s, b)
    out += onnxruntime_contenders(take(4 * n * k), b, tmpdir)
    out += torchao_contenders(w8s, b)
    return out, pool[0], b


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
    for i in range(rounds):
        for c in cs:
            f = c.calls[i % len(c.calls)]
            t0 = time.perf_counter()
            f(x)
            c.times.append((time.perf_counter() - t0) * 1e3)
    return [_row(m, k, n, c, errs[c.label]) for c in cs]


def _row(m, k, n, c: Contender, err: float) -> dict:
    med = statistics.median(c.times)
    q = statistics.quantiles(c.times, n=10, method="inclusive") if len(c.times) >= 2 else [med] * 9
    moved = c.weight_bytes + 4 * m * k + 4 * m * n
    return {"shape": f"{m}x{k}x{n}", "m": m, "k": k, "n": n, "contender": c.label, "kind": c.kind, "peer": c.peer,
            "note": c.note, "median_ms": med, "p10_ms": q[0], "p90_ms": q[-1], "repeats": len(c.times),
            "weight_copies": len(c.calls), "gops": 2 * m * k * n / med / 1e6, "gbs": moved / med / 1e6,
            "rel_err_vs_fp64": err}


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


def asym_overheads(rows: list[dict]) -> list[dict]:
    out = []
    by = {r["contender"]: r for r in rows}
    for gran in ("per-tensor", "per-token"):
        a, s = by.get(f"qbench w8a8 dyn {gran} asym"), by.get(f"qbench w8a8 dyn {gran} sym")
        if a and s:
            out.append({"shape": a["shape"], "m": a["m"], "granularity": gran,
                        "overhead_pct": 100 * (a["median_ms"] / s["median_ms"] - 1)})
    return out


TARGETS = (  # (what, contender, shapes it applies to, field, threshold) from the issue
    ("W8A8 >= 3x fp32 at M >= 16", "qbench w8a8 dyn per-token asym", lambda r: r["m"] >= 16, "vs_fp32", 3.0),
    ("W8A8 >= 3x fp32 at M >= 16", "qbench w8a8 dyn per-tensor asym", lambda r: r["m"] >= 16, "vs_fp32", 3.0),
    ("W8A8 within 1.2x of best peer at M >= 16", "qbench w8a8 dyn per-token asym", lambda r: r["m"] >= 16,
     "vs_best_peer", 1 / 1.2),
    ("W8A8 within 1.2x of best peer at M >= 16", "qbench w8a8 dyn per-tensor asym", lambda r: r["m"] >= 16,
     "vs_best_peer", 1 / 1.2),
    ("int8 weight-only >= 2.5x fp32 at M = 1", "qbench int8 weight-only", lambda r: r["m"] == 1, "vs_fp32", 2.5),
    ("int4 g128 weight-only >= 3.5x fp32 at M = 1", "qbench int4 g128 weight-only", lambda r: r["m"] == 1,
     "vs_fp32", 3.5),
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
    spec = spec.replace("minilm", MINILM)
    shapes = []
    for s in spec.split(","):
        parts = s.strip().lower().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"bad shape {s!r}: expected MxKxN, e.g. 16x4096x4096 (or 'minilm')")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def main(argv: Optional[list[str]] = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=None, help=f"comma-separated MxKxN, 'minilm' for {MINILM}; "
                                                   f"default {DEFAULT_SHAPES}")
    ap.add_argument("--repeats", type=int, default=30, help="interleaved rounds at most (fewer where slow)")
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
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "native_kernels": native.isa(), "l3_bytes": l3_bytes(), "effective_cache_bytes": cache,
               "rotate_bytes": rotate}
    ceilings = measure_ceilings(args.quick)
    print(f"torch {machine['torch']}, {machine['threads']} threads, {machine['cpu_capability']}, native kernels: "
          f"{machine['native_kernels']}; weights rotated through {rotate / 2**20:.0f} MiB per contender (at least 4x "
          f"the {cache / 2**20:.0f} MiB that repeated reads find cached here; L3 reported {l3_bytes() / 2**20:.1f} MiB)")
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
        print("\nasymmetric vs symmetric activations (qbench int8_onednn, same run):")
        for o in overheads:
            print(f"  {o['shape']:>14s} {o['granularity']:10s} {o['overhead_pct']:+6.1f}%")
    goals = targets(all_rows, overheads)
    if goals:
        print("\ntargets of the issue (ratios from this run; x fp32 is against the faster fp32 baseline):")
        for t in goals:
            unit = "%" if t["target"].startswith("asym") else "x"
            print(f"  {'met' if t['met'] else 'MISSED':6s} {t['target']:47s} {t['contender'][7:]:25s} "
                  f"{t['shape']:>14s} {t['value']:6.2f}{unit}")
    result = {"machine": machine, "ceilings": ceilings, "rows": all_rows, "asym_overhead": overheads, "targets": goals,
              "argv": sys.argv[1:] if argv is None else argv}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp_path = args.json + ".tmp"
        with open(tmp_path, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp_path, args.json)
    return result


if __name__ == "__main__":
    main()
