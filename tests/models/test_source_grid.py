"""Source-grid detection and the reproduction verdict, checked against qbench's own quantizer on weights that
gguf's reference quantizers produced (every legacy block type), and on hand-made edge cases. Fast."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from qbench.engine.primitives import QuantSpec, dequantize, quantize
from qbench.models.gguf_grid import measure_tensor
from qbench.models.source_grid import reproduced_share, reproduces_source_grid, tensor_verdict

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf not installed")
SPECS = [(bits, sym, gran, gs) for bits in range(2, 9) for sym in (True, False)
         for gran, gs in (("per_group", 16), ("per_group", 32), ("per_group", 64), ("per_group", 128),
                          ("per_channel", None), ("per_tensor", None))]


def record(w: torch.Tensor, qtype: str) -> dict:
    rec = measure_tensor(w, qtype)
    rec.update(name="w", type=qtype, shape=list(w.shape))
    return rec


def gguf_roundtrip(qtype: str, shape=(64, 256), seed=0) -> torch.Tensor:
    """Normal weights through gguf's reference quantizer and dequantizer: what a GGUF model loads as."""
    import gguf
    import numpy as np
    from gguf.quants import dequantize as gdq, quantize as gq

    x = (np.random.default_rng(seed).standard_normal(shape) * 0.05).astype(np.float32)
    t = gguf.GGMLQuantizationType[qtype]
    return torch.from_numpy(np.ascontiguousarray(gdq(gq(x, t), t)))


def exact_specs(w: torch.Tensor, rec: dict) -> list:
    """Every spec's verdict checked against the measured error; returns those that reproduce."""
    hits = []
    for bits, sym, gran, gs in SPECS:
        err = (dequantize(quantize(w, QuantSpec(bits, True, sym, gran, gs))) - w).abs()
        verdict = tensor_verdict(rec, bits, sym, gran, gs)
        assert verdict != "unproven", (bits, sym, gran, gs)          # every one of these sizes is measured
        # "exact" means the grid holds every value; a scale like range/255 is not a float32 number, which
        # can leave an ulp: zero up to 1e-6 of the group's largest value
        rows = w.reshape(-1, gs) if gs else w.reshape(1, -1) if gran == "per_tensor" else w
        tol = 1e-6 * rows.abs().amax(dim=1, keepdim=True)
        within = err.reshape(rows.shape) <= tol
        assert (verdict == "exact") == bool(within.all()), (bits, sym, gran, gs, float(err.max()))
        if gran == "per_group":
            zero = within.all(dim=1).double().mean().item()
            assert reproduced_share(rec, bits, sym, gran, gs) == pytest.approx(zero, abs=1e-12)
        if verdict:
            hits.append((bits, "sym" if sym else "asym", gs or gran))
    return hits


@needs_gguf
@pytest.mark.parametrize("qtype, levels, reproduced", [
    ("Q4_0", 16, []),                    # d*(q - 8): the -8 end is always used, +7 not: r is 15 only sometimes
    ("Q4_1", 16, []),                    # d*q + m: zero is off the grid by m mod d
    ("Q5_0", 32, []),
    ("Q5_1", 32, []),
    ("Q8_0", 256, [(8, "sym", 32)]),     # d*q with max|q| = 127 in every block: int8 symmetric groups of 32
])
def test_every_block_type_is_on_its_grid_and_verdicts_match_the_quantizer(qtype, levels, reproduced):
    w = gguf_roundtrip(qtype)
    rec = record(w, qtype)
    g = rec["grid"]
    assert g["on_grid"] == g["blocks"] == w.numel() // 32 and g["max_span"] <= levels - 1
    assert exact_specs(w, rec) == reproduced


def test_q4_1_with_zero_on_its_grid_is_reproduced_by_4_and_8_bit_asymmetric_groups_of_32():
    """The case the verdict must catch: Q4_1 blocks whose minimum is a whole number of steps below zero."""
    torch.manual_seed(0)
    d = (torch.rand(512, 1) * 0.01 + 1e-3).half().float()
    q = torch.randint(0, 16, (512, 32)).float()
    q[:, 0], q[:, 1] = 0, 15                                          # both ends used, as llama.cpp's Q4_1 does
    m = -torch.randint(0, 16, (512, 1)).float() * d
    w = (d * q + m).reshape(64, 256)
    rec = record(w, "Q4_1")
    assert rec["grid"]["zero_on_grid"] == 512
    assert exact_specs(w, rec) == [(4, "asym", 32), (8, "asym", 32)]
    why = reproduces_source_grid(rec, 4, False, "per_group", 32)
    assert why.startswith("4-bit asymmetric per_group(32) reproduces the file's own grid exactly on 1 of 1")


def test_float_weights_are_off_grid_and_never_reproduced():
    w = torch.randn(64, 256)
    rec = record(w, "F32")
    assert rec["grid"]["on_grid"] == 0 and rec["grid"]["max_span"] == 256
    assert exact_specs(w, rec) == []


def test_edge_cases_all_zero_constant_and_half_precision():
    zeros = record(torch.zeros(4, 64), "Q8_0")
    assert tensor_verdict(zeros, 2, True, "per_tensor", None) == "exact"      # nothing to lose
    const = torch.full((4, 256), 0.125)
    assert exact_specs(const, record(const, "Q4_1"))                          # every spec holds one value
    bf = gguf_roundtrip("Q8_0").bfloat16() if importlib.util.find_spec("gguf") else torch.randn(64, 256).bfloat16()
    rec = record(bf, "Q8_0")
    assert rec["grid"]["blocks"] == bf.numel() // 32                          # measured on what is loaded


def test_unmeasured_tensors_and_group_sizes():
    odd = record(torch.randn(4, 48), "Q4_1")                                   # 48 is not a multiple of 32
    assert odd["exact"] is None and "not a multiple" in odd["unmeasured"]
    assert tensor_verdict(odd, 4, False, "per_group", 16) == "unproven"
    assert tensor_verdict(dict(odd, type="F32"), 4, False, "per_group", 16) is None
    q80 = record(gguf_roundtrip("Q8_0", (8, 96)), "Q8_0") if importlib.util.find_spec("gguf") else None
    if q80:
        # 48 is not measured; its 16-wide parts have max α 127 <= 127, so nothing rules int8 symmetric out
        assert tensor_verdict(q80, 8, True, "per_group", 48) == "unproven"
        assert "may reproduce" in reproduces_source_grid(q80, 8, True, "per_group", 48)
        # ... but 4-bit needs α <= 7 in every part: ruled out
        assert tensor_verdict(q80, 4, True, "per_group", 48) is None


def test_the_verdict_names_tensors_and_honours_the_scheme_filter():
    source = {"tensors": [
        {"name": "embed.weight", "aliases": ["lm_head.weight"], "type": "Q8_0", "shape": [8, 64],
         "exact": {"32": {"groups": 16, "sym": [0, 0, 0, 0, 0, 0, 16], "max_r": 254, "max_a": 127},
                   "row": {"groups": 8, "max_r": 256, "max_a": 256}}},
        {"name": "layer.weight", "aliases": [], "type": "Q4_1", "shape": [8, 64],
         "exact": {"32": {"groups": 16, "max_r": 256, "max_a": 256}, "row": {"groups": 8, "max_r": 256, "max_a": 256}}},
    ]}
    why = reproduces_source_grid(source, 8, True, "per_group", 32)
    assert why == ("8-bit symmetric per_group(32) reproduces the file's own grid exactly on 1 of 2 tensors: "
                   "embed.weight (Q8_0): zero quantization error there measures nothing")
    assert reproduces_source_grid(source, 8, True, "per_group", 32, tensors=["lm_head.weight"])
    assert reproduces_source_grid(source, 8, True, "per_group", 32, tensors=["layer.weight"]) is None
    assert reproduces_source_grid(source, 8, True, "per_group", 64) is None   # 64 is the row here: measured
    assert reproduces_source_grid(source, 8, True, "per_channel", None) is None
    wider = {"tensors": [dict(t, shape=[8, 128]) for t in source["tensors"]]}
    assert "may reproduce" in reproduces_source_grid(wider, 8, True, "per_group", 64)   # unmeasured, not ruled out
    assert reproduces_source_grid(wider, 4, True, "per_group", 64) is None   # the 32-wide parts have α > 7
    assert reproduces_source_grid(source, 8, False, "per_group", 32) is None
    with pytest.raises(ValueError):
        tensor_verdict(source["tensors"][0], 9, True, "per_group", 32)
