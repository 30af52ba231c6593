"""The GEMM benchmark's contenders: fp32/bf16 baselines, qbench's kernels and the peers (torch.ao dynamic int8
Linear on fbgemm and oneDNN, PyTorch's weight-only primitives, onnxruntime and torchao when installed). Each
holds enough copies of its weight to rotate through more memory than the cache."""
from __future__ import annotations

import logging
import math
import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

from qbench.engine.kernels import KERNELS
from qbench.engine.primitives import QuantSpec, quantize

W8 = QuantSpec(8, True, True, "per_channel")
W4G = QuantSpec(4, False, False, "per_group", 128)
W4C = QuantSpec(4, True, True, "per_channel")
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
    """PyTorch's quantize_dynamic Linear on each quantized engine, through the same torch_ao_dynamic kernel that
    runs it as a scheme in cards; the user's quantized engine is restored afterwards."""
    kern = KERNELS.get("torch_ao_dynamic")
    w_spec, a_spec = QuantSpec(8, True, True, "per_tensor"), QuantSpec(7, False, False, "per_tensor")
    out = []
    n, k = ws[0].shape
    before = torch.backends.quantized.engine
    try:
        for engine in ("fbgemm", "onednn"):
            if engine not in torch.backends.quantized.supported_engines:
                continue
            torch.backends.quantized.engine = engine             # the weights are packed for this engine
            states = [kern.prepare(w, b, w_spec, a_spec) for w in ws]
            out.append(Contender(f"torch.ao dynamic int8 ({engine})", "w8a8", True,
                                 [lambda x, s=s, e=engine: _with_engine(e, kern, s, x) for s in states], n * k,
                                 note="per-tensor weights, 7-bit activations"))
    finally:
        torch.backends.quantized.engine = before
    return out


def _with_engine(engine, kern, state, x):
    torch.backends.quantized.engine = engine
    return kern.forward(state, x)


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
        # IR version 9 (onnx 1.15): onnx writes its newest by default, which an older onnxruntime refuses
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
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
    _say_ort_bf16()
    return [Contender(f"onnxruntime {ort.__version__} fp32", "baseline", False, fp32_calls, 4 * n * k),
            Contender(f"onnxruntime {ort.__version__} dynamic int8", "w8a8", True, int8_calls, n * k,
                      note="per-channel weights")]


@lru_cache(maxsize=1)
def _say_ort_bf16() -> None:
    """Say once per run why onnxruntime has no bf16 baseline: whether its CPU provider builds a bf16 MatMul at
    all (onnxruntime 1.32.0 does not: NOT_IMPLEMENTED)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [4, 64])
    w = helper.make_tensor_value_info("w", TensorProto.BFLOAT16, [64, 32])
    y = helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [4, 32])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "bf16", [x, w], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        why = "this onnxruntime builds a CPU bf16 MatMul, which this benchmark does not time yet"
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        why = f"not timed, its CPU provider has no bf16 MatMul ({str(e).strip()[:90]})"
    print(f"  (onnxruntime {ort.__version__} bf16 baseline: {why})", file=sys.stderr)


def torchao_contenders(ws, b) -> list[Contender]:
    """torchao's int8 dynamic-activation config (Int8DynamicActivationInt8WeightConfig: symmetric per-token
    activations, per-channel weights), under torch.compile: on a CPU its eager path dequantizes the weight
    (measured with torchao 0.18: 30 ms at 1x4096x4096, 7x fp32), and compiling is how torchao runs there. One
    compile per shape (about 20 s for the first, 1-2 s after), shared by the weight copies; a hit recompile
    limit raises instead of running eager. torchao 0.18 has no CPU int4 weight-only kernel
    (Int4WeightOnlyConfig wants mslk or CUDA; the Intx configs dequantize in the graph, 34 ms at 1x4096x4096
    compiled), so no torchao int4 contender is timed."""
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return []
    import torch._dynamo

    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 1024)       # one graph per shape
    cfg.fail_on_recompile_limit_hit = True                     # never a silent eager fallback
    # torchao's tensor subclass asks torch to hash it for the compile cache; advice to torchao, not to the user
    warnings.filterwarnings("ignore", message=".*_stable_hash_for_caching.*")
    n, k = ws[0].shape
    calls = []
    for w in ws:
        lin = torch.nn.Linear(k, n)
        lin.weight.data, lin.bias.data = w.clone(), b.clone()
        lin.requires_grad_(False)
        quantize_(lin, Int8DynamicActivationInt8WeightConfig())
        calls.append(lambda x, f=torch.compile(lin, dynamic=False): _no_grad(f, x))
    return [Contender(f"torchao {torchao.__version__} int8 dynamic (compiled)", "w8a8", True, calls, n * k,
                      note="per-token symmetric activations, per-channel weights")]


def _no_grad(f, x):
    with torch.no_grad():
        return f(x)


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
        qbench_contender("w8a8 dyn per-tensor asym", "w8a8", "int8_native", w8s, b, W8, A_TENSOR_ASYM),
        qbench_contender("w8a8 dyn per-tensor sym", "w8a8", "int8_native", w8s, b, W8, A_TENSOR_SYM),
        qbench_contender("w8a8 dyn per-token asym", "w8a8", "int8_native", w8s, b, W8, A_TOKEN_ASYM),
        qbench_contender("w8a8 dyn per-token sym", "w8a8", "int8_native", w8s, b, W8, A_TOKEN_SYM),
        qbench_contender("w8a8 static per-tensor asym", "w8a8", "int8_native", w8s, b, W8, A_TENSOR_ASYM, True),
        qbench_contender("w8a8 oneDNN per-token asym", "w8a8", "int8_onednn", w8s, b, W8, A_TOKEN_ASYM),
        qbench_contender("w8a8 _int_mm per-token asym", "w8a8", "int8_int_mm", w8s, b, W8, A_TOKEN_ASYM),
        qbench_contender("w4a8 dyn per-token asym", "w4a8", "w4a8_native", w4s, b, W4C, A_TOKEN_ASYM),
        qbench_contender("w4a8 g128 dyn per-token asym", "w4a8", "w4a8_native", w4s, b, W4G, A_TOKEN_ASYM)
        if k % 128 == 0 else None,
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

