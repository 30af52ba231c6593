"""Every kernel runs the codes it is handed: hand-chosen codes, scales and zero points (random codes over the
whole code range, arbitrary positive scales, zero points anywhere in the range: nothing a min/max quantizer would
choose), optionally an input scale and a column permutation, through every registered kernel that supports the
configuration, against float64 oracles computed here from the codes alone (exact int64 accumulation for the integer
kernels). Kernels hold what they were given (held_weight) and honour or decline an input transform.
"""
from __future__ import annotations

import itertools
from typing import Optional

import pytest
import torch

from qbench.engine.kernels import KERNELS
from qbench.engine.kernels.fused import gemm
from qbench.engine.modules import QuantLinear
from qbench.engine.primitives import QuantSpec, quantize
from qbench.engine.tensors import QuantizedWeight
from qbench.errors import KernelUnavailable

W_SPECS = [QuantSpec(8, True, True, "per_channel"), QuantSpec(8, False, False, "per_tensor"),
           QuantSpec(8, True, False, "per_channel"), QuantSpec(8, False, True, "per_channel"),
           QuantSpec(8, True, False, "per_group", 16), QuantSpec(6, False, False, "per_group", 32),
           QuantSpec(4, True, True, "per_group", 16), QuantSpec(4, False, False, "per_channel"),
           QuantSpec(3, True, False, "per_tensor"), QuantSpec(4, True, False, "per_group", 32)]
STATIC = QuantSpec(8, False, False, "per_tensor")
A_CASES = [(None, None), (QuantSpec(8, False, False, "per_token"), None),
           (QuantSpec(8, True, True, "per_tensor"), None),
           (STATIC, (torch.tensor(0.037), torch.tensor(97, dtype=torch.int32))),      # static, zero point off-centre
           (QuantSpec(7, False, False, "per_tensor"), None)]
CONFIGS = [(w, a, qp) for w, (a, qp) in itertools.product(W_SPECS, A_CASES)]
SHAPES = [(5, 64, 24), (17, 96, 40)]      # M <= 16 and M > 16 (the decode kernels' two paths)
HAS_CUDA = torch.cuda.is_available()


def device_of(kernel) -> str:
    return "cpu" if "cpu" in kernel.devices else "cuda"


def hand_chosen(spec: QuantSpec, n: int, k: int, seed: int, transform: bool = False) -> QuantizedWeight:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(spec.qmin, spec.qmax + 1, (n, k), generator=g).to(spec.storage_dtype)
    shape = {"per_tensor": (), "per_channel": (n,)}.get(spec.granularity, (n, k // (spec.group_size or 1)))
    scale = torch.exp(torch.rand(shape, generator=g) * 4 - 7)                          # about 1e-3 .. 5e-2
    if spec.symmetric:
        zp = torch.full(shape, 0 if spec.signed else 1 << (spec.bits - 1), dtype=torch.int32)
    else:
        zp = torch.randint(spec.qmin, spec.qmax + 1, shape, generator=g, dtype=torch.int32)
    s_in = torch.exp(torch.randn(k, generator=g) * 0.7) if transform else None
    perm = torch.randperm(k, generator=g) if transform else None
    return QuantizedWeight(codes, scale, zp, spec, s_in, perm)


def expand(p: torch.Tensor, spec: QuantSpec, n: int, k: int) -> torch.Tensor:
    """A qparam as float64 (N, K), written out from the granularity's definition."""
    p = p.double()
    if spec.granularity == "per_tensor":
        return p.expand(n, k)
    if spec.granularity == "per_channel":
        return p[:, None].expand(n, k)
    return p.repeat_interleave(spec.group_size, dim=1)


def codes64(qw: QuantizedWeight) -> torch.Tensor:
    """(codes - z) * s in float64, in the codes' own column order."""
    n, k = qw.shape
    return (qw.codes.double() - expand(qw.zero_point, qw.spec, n, k)) * expand(qw.scale, qw.spec, n, k)


def transformed(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """The definition: x' = (x / input_scale)[:, perm], in x's dtype."""
    if qw.input_scale is not None:
        x = x / qw.input_scale
    return x if qw.perm is None else x[:, qw.perm]


def inputs(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) with a positive offset and row scales, bias (N,)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(m, k, generator=g) + 0.3) * (0.5 + 2 * torch.rand(m, 1, generator=g))
    return x, torch.randn(n, generator=g) * 0.1


def oracle(qw, bias, x, a, qp):
    """float64 y, the exact int64 accumulation and the (M or 1, N or 1) float64 scales (None, None when the
    activations are float or the weight scales are per group)."""
    xt = transformed(x, qw)
    if a is None:
        return xt.double() @ codes64(qw).t() + bias.double(), None, None
    qa = quantize(xt, a, *qp) if qp is not None else quantize(xt, a)
    za = qa.zero_point.reshape(-1, 1).long()
    if qw.spec.granularity == "per_group":
        x64 = (qa.data.long() - za).double() * qa.scale.double().reshape(-1, 1)
        return x64 @ codes64(qw).t() + bias.double(), None, None
    acc = (qa.data.long() - za) @ (qw.codes.long() - qw.zero_point.reshape(-1, 1).long()).t()  # (M, N) int64
    scales = qa.scale.double().reshape(-1, 1) * qw.scale.double().reshape(1, -1)                # (M or 1, N or 1)
    return acc.double() * scales + bias.double(), acc, scales


def tolerance(qw: QuantizedWeight, x: torch.Tensor, y64: torch.Tensor) -> torch.Tensor:
    """Per output: 1e-5 of the largest output, plus the float32 bound K * 2^-23 * sum_k |x'_k| s (|q8| + |z8|) of a
    kernel that multiplies codes moved into int8 (q8 = q - 128 for unsigned specs) and subtracts the zero point's
    share separately: with zero points far from 128 those two terms nearly cancel (int8_weight_only)."""
    n, k = qw.shape
    o = 0 if qw.spec.signed else 128
    z8 = expand(qw.zero_point, qw.spec, n, k) - o
    mag = ((qw.codes.double() - o).abs() + z8.abs()) * expand(qw.scale, qw.spec, n, k)     # (N, K)
    return 1e-5 * float(y64.abs().max()) + k * 2.0 ** -23 * (transformed(x, qw).double().abs() @ mag.t())


def check(kernel, qw, a, qp, x, bias):
    """The layer that `kernel` runs on qw gives the output qw defines."""
    (m, k), n = x.shape, qw.shape[0]
    dev = device_of(kernel)
    y64, acc, scales = oracle(qw, bias, x, a, qp)
    layer = QuantLinear.from_quantized(_to(qw, dev), bias.to(dev), kernel, a, qp)
    y = layer(x.to(dev)).cpu()
    assert y.shape == (m, n) and y.dtype == torch.float32
    assert ((y.double() - y64).abs() <= tolerance(qw, x, y64)).all(), (kernel.name, qw.spec, a)
    if acc is not None and kernel.arithmetic == "integer" and not kernel.emulated:
        assert int(acc.abs().max()) < 2 ** 20            # so float32 results recover the integers exactly
        y_nb = QuantLinear.from_quantized(_to(qw, dev), None, kernel, a, qp)(x.to(dev)).cpu()
        assert torch.equal(torch.round(y_nb.double() / scales).long(), acc)
    if kernel.name == "int8_native":                     # its int32 sums themselves
        state = kernel.pack(qw, None, a, qp)
        assert torch.equal(gemm(state, transformed(x, qw).contiguous(), exact=True).long(), acc)
    return y


def _to(qw: QuantizedWeight, device: str) -> QuantizedWeight:
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return QuantizedWeight(*(move(t) for t in (qw.codes, qw.scale, qw.zero_point)), qw.spec,
                           move(qw.input_scale), move(qw.perm))


def runnable(kernel) -> list:
    """The configurations this kernel runs here; skips the test when there are none (with the reason)."""
    if kernel.rederives_weight:
        pytest.skip(f"{kernel.name} re-derives its weight from a float one: hand-chosen codes do not reach it")
    dev = device_of(kernel)
    if dev == "cuda" and not HAS_CUDA:
        pytest.skip(f"{kernel.name} runs on CUDA and there is no GPU here")
    reasons = {}
    for w, a, qp in CONFIGS:
        reasons[(w, a, qp is not None)] = kernel.supports(w, a, dev)
    cases = [(w, a, qp) for w, a, qp in CONFIGS if reasons[(w, a, qp is not None)] is None]
    if not cases:
        pytest.skip(f"{kernel.name} runs none of these configurations here: {sorted(set(map(str, reasons.values())))}")
    return cases


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_hand_chosen_codes_give_the_output_they_define(name):
    kernel = KERNELS.get(name)
    for i, ((w, a, qp), (m, k, n), transform) in enumerate(itertools.product(runnable(kernel), SHAPES, [False, True])):
        if w.group_size and k % w.group_size:
            continue
        check(kernel, hand_chosen(w, n, k, seed=i, transform=transform), a, qp, *inputs(m, k, n, seed=100 + i))


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernels_hold_exactly_what_they_are_handed(name):
    """held_weight() reads back the given codes, scales, zero points, input scale and permutation, one for one,
    and the layer's bytes are the bytes of the tensors it holds."""
    kernel = KERNELS.get(name)
    on_cpu = device_of(kernel) == "cuda" and not HAS_CUDA and name in CPU_PACKABLE    # pack() runs on CPU tensors
    cases = [(w, a, None) for w, a in CPU_PACKABLE[name]] if on_cpu else runnable(kernel)
    for i, (w, a, qp) in enumerate(cases):
        qw = hand_chosen(w, 40, 96, seed=i, transform=i % 2 == 1)
        layer = QuantLinear.from_quantized(_to(qw, "cpu" if on_cpu else device_of(kernel)), None, kernel, a, qp)
        held = layer.held_weight()
        for f in ("codes", "scale", "zero_point", "input_scale", "perm"):
            mine, theirs = getattr(held, f), getattr(qw, f)
            assert (mine is None) == (theirs is None) and (mine is None or torch.equal(mine.cpu(), theirs)), f
        assert held.spec == qw.spec
        assert layer.weight_nbytes == sum(t.numel() * t.element_size() for t in layer.held_tensors().values())


# CUDA kernels whose pack() (not their forward) also works on CPU tensors, with configurations they serve
CPU_PACKABLE = {
    "int8_int_mm_cuda": [(QuantSpec(8, True, True, "per_channel"), QuantSpec(8, False, False, "per_token")),
                         (QuantSpec(8, False, False, "per_tensor"), QuantSpec(8, True, True, "per_tensor"))],
    "triton_int8_wo": [(QuantSpec(8, True, False, "per_group", 16), None), (QuantSpec(6, False, False), None),
                       (QuantSpec(8, False, True, "per_channel"), None)],
    "triton_int4_wo": [(QuantSpec(4, True, False, "per_group", 32), None), (QuantSpec(3, True, True), None),
                       (QuantSpec(4, False, False, "per_channel"), None)],
}


def _first_config(kernel, dev: str):
    return next(((w, a, qp) for w, a, qp in CONFIGS if kernel.supports(w, a, dev) is None), None)


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_input_scale_and_perm_honoured_or_declined(name):
    """Either the kernel declines the transform with a reason, or the layer computes (x / s)[:, perm] @ deq^T + b,
    which differs clearly from the untransformed product (so ignoring it would fail here)."""
    kernel, dev = KERNELS.get(name), device_of(KERNELS.get(name))
    w, a, qp = _first_config(kernel, dev) or (QuantSpec(8, True, True, "per_channel"), None, None)
    qw = hand_chosen(w, 24, 64, seed=3, transform=True)
    reason = kernel.pack_reason(qw)
    if reason is not None:
        with pytest.raises((ValueError, KernelUnavailable), match=name):
            kernel.pack(qw, None, a, qp)
        return
    if dev == "cuda" and not HAS_CUDA:
        pytest.skip(f"{name} runs on CUDA and there is no GPU here")
    if kernel.supports(w, a, dev) is not None:
        pytest.skip(f"{name} cannot run here: {kernel.supports(w, a, dev)}")
    x, bias = inputs(6, 64, 24, seed=4)
    y = check_rederived(kernel, qw, a, x, bias) if kernel.rederives_weight else check(kernel, qw, a, qp, x, bias)
    plain = QuantizedWeight(qw.codes, qw.scale, qw.zero_point, qw.spec)
    y_plain = QuantLinear.from_quantized(_to(plain, dev), bias.to(dev), kernel, a, qp)(x.to(dev)).cpu()
    assert (y - y_plain).abs().max() > 0.1 * float(y_plain.abs().max())


def check_rederived(kernel, qw: QuantizedWeight, a: Optional[QuantSpec], x, bias):
    """torch_ao_dynamic: torch.ao re-quantizes the weight qw defines; the layer computes its own held codes on the
    transformed input with 7-bit per-tensor activations (float64 emulation)."""
    layer = QuantLinear.from_quantized(qw, bias, kernel, a)
    held = layer.held_weight()
    assert torch.equal(held.perm, qw.perm) and torch.equal(held.input_scale, qw.input_scale)
    xd = transformed(x, qw).double()
    lo, hi = min(float(xd.min()), 0.0), max(float(xd.max()), 0.0)
    sa = (hi - lo) / 127
    z = min(max(round(-lo / sa), 0), 127)
    xq = (torch.clamp(torch.round(xd / sa) + z, 0, 127) - z) * sa
    y64 = xq @ codes64(held).t() + bias.double()
    y = layer(x)
    assert (y.double() - y64).abs().max() < 1e-4 * float(y64.abs().max())
    return y
