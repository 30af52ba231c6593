"""The quantized-weight hand-off: QuantizedWeight's definition and checks, the method registry (rtn), the one
activation quantizer and the 128 shift, and quantize_'s map measured from what the kernel holds."""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from qbench.engine.api import quantize_, sqnr_db
from qbench.engine.kernels import KERNELS, native
from qbench.engine.kernels.codes import from_int8, quantize_activations, to_int8
from qbench.engine.methods import METHODS, MethodContext, rtn
from qbench.engine.modules import QuantLinear
from qbench.engine.primitives import QuantSpec, quantize
from qbench.engine.tensors import InputTransform, QuantizedWeight
from qbench.errors import ConfigError

SPECS = [QuantSpec(8, True, True, "per_channel"), QuantSpec(8, False, False, "per_tensor"),
         QuantSpec(4, True, False, "per_group", 8), QuantSpec(3, False, True, "per_channel")]


def weight(n=6, k=16, seed=0):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- QuantizedWeight


def test_dequantize_follows_the_definition_column_by_column():
    """W[:, perm[j]] = (codes[:, j] - z) * s / input_scale[perm[j]], checked one column at a time in float64."""
    spec = QuantSpec(8, True, False, "per_channel")
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(-128, 128, (5, 7), generator=g).to(torch.int8)
    scale, zp = torch.rand(5, generator=g) + 0.1, torch.randint(-128, 128, (5,), generator=g, dtype=torch.int32)
    s_in, perm = torch.rand(7, generator=g) + 0.5, torch.tensor([3, 0, 6, 1, 5, 2, 4])
    w = QuantizedWeight(codes, scale, zp, spec, s_in, perm).dequantize(torch.float64)
    for j in range(7):
        col = (codes[:, j].double() - zp.double()) * scale.double() / s_in[perm[j]].double()
        assert torch.allclose(w[:, perm[j]], col, rtol=1e-6, atol=0)


def test_the_layer_computes_x_times_the_effective_weight():
    """y = (x / s)[:, perm] @ deq(codes)^T equals x @ dequantize()^T: the transform and the weight agree."""
    spec = QuantSpec(4, False, False, "per_group", 4)
    g = torch.Generator().manual_seed(2)
    qw = QuantizedWeight(torch.randint(0, 16, (3, 8), generator=g).to(torch.uint8), torch.rand(3, 2, generator=g) + 0.1,
                         torch.randint(0, 16, (3, 2), generator=g, dtype=torch.int32), spec,
                         torch.rand(8, generator=g) + 0.5, torch.randperm(8, generator=g))
    x = torch.randn(4, 8, generator=g).double()
    deq_codes = QuantizedWeight(qw.codes, qw.scale, qw.zero_point, spec).dequantize(torch.float64)
    via_transform = qw.input_transform().apply(x) @ deq_codes.t()
    assert torch.allclose(via_transform, x @ qw.dequantize(torch.float64).t(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("change, needle", [
    (dict(codes=torch.full((4, 8), 9, dtype=torch.int8)), "outside"),              # 4-bit signed: at most 7
    (dict(codes=torch.zeros(4, 8, dtype=torch.uint8)), "int8"),                    # wrong storage dtype
    (dict(scale=torch.ones(4)), "shape"),
    (dict(scale=-torch.ones(4, 2)), "positive"),
    (dict(zero_point=torch.full((4, 2), 8, dtype=torch.int32)), "zero points outside"),
    (dict(input_scale=torch.ones(7)), "input_scale"),
    (dict(perm=torch.tensor([0, 1, 2, 3, 4, 5, 6, 6])), "permutation"),
])
def test_invalid_quantized_weights_are_refused(change, needle):
    ok = dict(codes=torch.zeros(4, 8, dtype=torch.int8), scale=torch.ones(4, 2),
              zero_point=torch.zeros(4, 2, dtype=torch.int32), spec=QuantSpec(4, True, False, "per_group", 4))
    QuantizedWeight(**ok)
    with pytest.raises(ValueError, match=needle):
        QuantizedWeight(**{**ok, **change})


def test_symmetric_specs_need_the_symmetric_zero_point():
    spec = QuantSpec(8, False, True, "per_tensor")
    codes, scale = torch.zeros(2, 2, dtype=torch.uint8), torch.tensor(1.0)
    QuantizedWeight(codes, scale, torch.tensor(128, dtype=torch.int32), spec)
    with pytest.raises(ValueError, match="symmetric"):
        QuantizedWeight(codes, scale, torch.tensor(3, dtype=torch.int32), spec)


def test_nbytes_counts_every_tensor():
    qw = rtn(weight(), SPECS[0])
    assert qw.nbytes == 6 * 16 + 6 * 4 + 6 * 4
    with_t = QuantizedWeight(qw.codes, qw.scale, qw.zero_point, qw.spec, torch.ones(16), torch.arange(16))
    assert with_t.nbytes == qw.nbytes + 16 * 4 + 16 * 8


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
def test_rtn_is_primitives_quantize(spec):
    w = weight(seed=3)
    q, qw = quantize(w, spec), METHODS.get("rtn").quantize(w, spec, MethodContext("layer"))
    assert torch.equal(qw.codes, q.data) and torch.equal(qw.scale, q.scale) and torch.equal(qw.zero_point, q.zero_point)
    assert qw.input_scale is None and qw.perm is None and not METHODS.get("rtn").needs_calibration


def test_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match="did you mean 'rtn'"):
        METHODS.get("rnt")


def test_prepare_is_pack_of_rtn():
    w, b, x = weight(24, 32, seed=4), torch.randn(24), torch.randn(3, 32)
    for name in ("reference", "int8_int_mm"):
        kern, a = KERNELS.get(name), QuantSpec(8, False, False, "per_token")
        y1 = kern.forward(kern.prepare(w, b, SPECS[0], a), x)
        y2 = kern.forward(kern.pack(rtn(w, SPECS[0]), b, a), x)
        assert torch.equal(y1, y2)


# ----------------------------------------------------------------------------- codes: the shift, the quantizer


@pytest.mark.parametrize("spec", [QuantSpec(8, False), QuantSpec(8, True), QuantSpec(5, False, False)], ids=str)
def test_the_shift_moves_codes_and_zero_point_together(spec):
    g = torch.Generator().manual_seed(5)
    q = torch.randint(spec.qmin, spec.qmax + 1, (4, 9), generator=g).to(spec.storage_dtype)
    z = torch.randint(spec.qmin, spec.qmax + 1, (4,), generator=g, dtype=torch.int32)
    q8, z8 = to_int8(q, z, spec)
    assert q8.dtype == torch.int8
    assert torch.equal(q8.long() - z8.long()[:, None], q.long() - z.long()[:, None])   # x = s (q - z) unchanged
    back = from_int8(q8, z8, spec)
    assert torch.equal(back[0], q) and torch.equal(back[1], z)


@pytest.mark.parametrize("a, qp", [(QuantSpec(8, False, False, "per_token"), None),
                                   (QuantSpec(8, True, True, "per_token"), None),
                                   (QuantSpec(4, True, False, "per_tensor"), None),
                                   (QuantSpec(8, False, False, "per_tensor"), (torch.tensor(0.02), torch.tensor(90)))],
                         ids=["u8-token", "s8-token", "s4-tensor", "static"])
@pytest.mark.parametrize("m", [1, 7])
def test_activation_quantizer_native_and_torch_agree(monkeypatch, a, qp, m):
    """Codes of primitives.quantize shifted into uint8, from the native quantizer and from torch alike (same
    shapes too: one row per token even for a single row)."""
    x = torch.randn(m, 50, generator=torch.Generator().manual_seed(m)) * 2 + 0.3
    q = quantize(x, a, *qp) if qp else quantize(x, a)
    fast = quantize_activations(x, a, qp) if native.unavailable() is None else None
    monkeypatch.setattr(native, "unavailable", lambda: "no compiler (test)")
    slow = quantize_activations(x, a, qp)
    shift = 128 if a.signed else 0
    assert torch.equal(slow.codes.long(), q.data.long() + shift)
    assert torch.equal(slow.zero_point.reshape(-1).long(), q.zero_point.reshape(-1).long() + shift)
    assert slow.per_row == (a.granularity == "per_token" and qp is None)
    for f in ("codes", "scale", "zero_point") if fast is not None else ():
        assert torch.equal(getattr(fast, f), getattr(slow, f)) and getattr(fast, f).shape == getattr(slow, f).shape
    a8, z8 = slow.int8_()
    assert torch.equal(a8.long() - z8.reshape(-1, 1).long(), q.data.long() - q.zero_point.reshape(-1, 1).long())


# ----------------------------------------------------------------------------- quantize_ measures what runs


def test_torch_ao_map_reports_the_weight_torch_holds():
    """The SQNR of torch_ao_dynamic comes from torch.ao's own int8 codes and scale (absmax / 127.5), not from
    qbench's min/max quantization (absmax / 127)."""
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16))
    base = copy.deepcopy(model)
    scheme = {"name": "ao", "weights": {"bits": 8, "symmetric": True, "granularity": "per_tensor"},
              "activations": {"bits": 7, "signed": False, "symmetric": False, "granularity": "per_tensor"},
              "kernel": "torch_ao_dynamic"}
    rec = quantize_(model, scheme)[0]
    w = base[0].weight.detach().double()
    s = w.abs().max() / 127.5
    theirs = torch.clamp(torch.round(w / s), -128, 127) * s.float().double()
    expected = 10 * math.log10(float(w.pow(2).sum() / (theirs - w).pow(2).sum()))
    assert rec.sqnr_db == pytest.approx(expected, rel=1e-6)
    assert rec.sqnr_db != pytest.approx(sqnr_db(w, QuantSpec(8, True, True, "per_tensor")), rel=1e-6)


def test_map_bytes_and_sqnr_come_from_the_held_weight():
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    base = copy.deepcopy(model)
    recs = quantize_(model, {"name": "w4", "weights": {"bits": 4, "granularity": "per_group", "group_size": 16},
                             "kernel": "int4_packed"})
    for rec, i in zip([r for r in recs if r.applied], (0, 2)):
        layer = model[i]
        assert isinstance(layer, QuantLinear) and rec.bytes_after == layer.weight_nbytes
        assert rec.sqnr_db == sqnr_db(base[i].weight, layer.held_weight())
        assert set(layer.held_tensors()) == {"weight.codes", "weight.scale", "weight.zero_point", "bias"}


def test_calibration_observes_only_modules_that_will_be_quantized():
    """An excluded module is not hooked: calibration that never reaches it is no error."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 4))
    scheme = {"name": "static", "weights": {"bits": 8}, "activations": {"bits": 8, "dynamic": False},
              "calibration": {"size": 1}, "exclude": ["1"]}
    recs = quantize_(model, scheme, calibrate=lambda m: m[0](torch.randn(2, 16)))   # never reaches model[1]
    assert [r.applied for r in recs] == [True, False]


def test_listing_kernels_builds_nothing(tmp_path):
    """Reading every kernel's backend (qbench list kernels) starts no C compiler; asking whether the native
    library is available does (so the check could fail)."""
    marker = tmp_path / "compiler_ran"
    cc = tmp_path / "cc"
    cc.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    cc.chmod(0o755)
    env = {**os.environ, "CC": str(cc), "QBENCH_CACHE_DIR": str(tmp_path / "cache")}
    code = textwrap.dedent("""
        import sys
        from qbench.engine.kernels import KERNELS, native
        texts = [KERNELS.get(n).backend for n in KERNELS]
        if sys.argv[1] == "ask":
            native.unavailable()
    """)
    for mode, built in (("list", False), ("ask", True)):
        subprocess.run([sys.executable, "-c", code, mode], env=env, check=True, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        assert marker.exists() == built, mode


def test_input_transform_keeps_the_input_dtype():
    t = InputTransform(torch.rand(8) + 0.5, torch.randperm(8))
    x = torch.randn(3, 8).bfloat16()
    assert t.apply(x).dtype == torch.bfloat16
