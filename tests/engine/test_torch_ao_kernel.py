"""torch_ao_dynamic is PyTorch's quantize_dynamic, output for output, and declines what torch.ao does not do."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from qbench.engine.api import quantize_
from qbench.engine.kernels import KERNELS, select_kernel
from qbench.engine.primitives import QuantSpec
from qbench.errors import KernelUnavailable

AO = KERNELS.get("torch_ao_dynamic")
A7 = {"bits": 7, "signed": False, "symmetric": False, "granularity": "per_tensor", "dynamic": True}


def scheme(granularity="per_tensor", **act):
    return {"name": "ao", "weights": {"bits": 8, "signed": True, "symmetric": True, "granularity": granularity},
            "activations": {**A7, **act}, "ops": ["linear"], "kernel": "torch_ao_dynamic"}


def torch_quantize_dynamic(model, qconfig_spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), qconfig_spec, dtype=torch.qint8)


@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
def test_equals_quantize_dynamic_on_a_bert(bert_float, granularity):
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    ids = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(4))
    qconfig = default_dynamic_qconfig if granularity == "per_tensor" else per_channel_dynamic_qconfig
    theirs = torch_quantize_dynamic(bert_float, {torch.nn.Linear: qconfig})
    ours = copy.deepcopy(bert_float)
    records = quantize_(ours, scheme(granularity))
    linear = [r for r in records if r.applied]
    assert len(linear) == 2 * 6 + 1 and {r.kernel for r in linear} == {"torch_ao_dynamic"}
    with torch.no_grad():
        y_theirs, y_ours = theirs(ids).last_hidden_state, ours(ids).last_hidden_state
        y_float = bert_float(ids).last_hidden_state
    assert torch.equal(y_ours, y_theirs)
    assert (y_ours - y_float).abs().max() > 1e-4          # it did quantize


def test_activations_are_seven_bit_per_tensor():
    """Against a float64 emulation: weights absmax / 127.5 per tensor, activations 0..127 affine per tensor."""
    g = torch.Generator().manual_seed(5)
    w, b, x = torch.randn(24, 40, generator=g), torch.randn(24, generator=g), 3 * torch.randn(6, 40, generator=g)
    spec_w, spec_a = QuantSpec(8, True, True, "per_tensor"), QuantSpec(7, False, False, "per_tensor")
    y = AO.forward(AO.prepare(w, b, spec_w, spec_a), x).double()
    wd, xd = w.double(), x.double()
    sw = wd.abs().max() / 127.5
    wq = torch.clamp(torch.round(wd / sw), -128, 127) * sw
    lo, hi = min(float(xd.min()), 0.0), max(float(xd.max()), 0.0)
    sa = (hi - lo) / 127
    z = min(max(round(-lo / sa), 0), 127)
    xq = (torch.clamp(torch.round(xd / sa) + z, 0, 127) - z) * sa
    ref = xq @ wq.T + b.double()
    assert (y - ref).abs().max() < 1e-4 * ref.abs().max()
    # with 8-bit activations the emulation would differ by far more than that
    xq8 = (torch.clamp(torch.round(xd / (sa * 127 / 255)) + round(-lo / (sa * 127 / 255)), 0, 255)
           - round(-lo / (sa * 127 / 255))) * (sa * 127 / 255)
    assert (y - (xq8 @ wq.T + b.double())).abs().max() > 1e-3 * ref.abs().max()


@pytest.mark.parametrize("w, a, needle", [
    (QuantSpec(8, True, True, "per_tensor"), QuantSpec(8, False, False, "per_tensor"), "bits: 7"),
    (QuantSpec(8, True, True, "per_tensor"), QuantSpec(7, False, False, "per_token"), "per tensor"),
    (QuantSpec(8, True, True, "per_tensor"), None, "activations"),
    (QuantSpec(8, True, False, "per_tensor"), QuantSpec(7, False, False, "per_tensor"), "symmetric"),
    (QuantSpec(4, True, True, "per_channel"), QuantSpec(7, False, False, "per_tensor"), "int8"),
    (QuantSpec(8, True, True, "per_group", 32), QuantSpec(7, False, False, "per_tensor"), "per_channel"),
])
def test_declines_what_torch_ao_does_not_do(w, a, needle):
    reason = AO.supports(w, a, "cpu")
    assert reason and needle in reason
    with pytest.raises(KernelUnavailable, match="torch_ao_dynamic"):
        select_kernel(w, a, "cpu", "torch_ao_dynamic")


def test_never_chosen_by_auto_and_refuses_static_activations():
    w, a = QuantSpec(8, True, True, "per_tensor"), QuantSpec(7, False, False, "per_tensor")
    assert AO.supports(w, a, "cpu") is None
    assert select_kernel(w, a, "cpu").name != "torch_ao_dynamic"
    assert "cuda" in AO.supports(w, a, "cuda")
    with pytest.raises(ValueError, match="dynamic: true"):
        AO.prepare(torch.randn(4, 8), None, w, a, act_qparams=(torch.tensor(0.1), torch.tensor(3)))


@pytest.mark.parametrize("granularity, extra", [("per_tensor", 16), ("per_channel", 24 * 16)])
def test_weight_bytes_count_the_int8_weight_torch_keeps(granularity, extra):
    from qbench.engine.modules import QuantLinear

    spec_w = QuantSpec(8, True, True, granularity)
    layer = QuantLinear(torch.randn(24, 40), torch.randn(24), AO, spec_w, QuantSpec(7, False, False, "per_tensor"))
    assert layer.weight_nbytes == 24 * 40 + extra + 24 * 4          # int8 codes, qparams, fp32 bias
