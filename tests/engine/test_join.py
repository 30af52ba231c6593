"""Kernel.join and Kernel.bind, for qbench's decoder forward. A joined state's forward gives, bit for bit, the
parts' own outputs side by side (every kernel that joins; every row count through the tiles); the parts still
give theirs afterwards, their codes now views of the joined state's (one copy in memory); the joined held weight
is the parts' rows; what cannot be joined is refused with None. A bound call writes forward's output into its
buffer, bit for bit, again and again as the input buffer changes."""
from __future__ import annotations

import pytest
import torch

from qbench.engine.kernels import KERNELS
from qbench.engine.methods import rtn
from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import QuantizedWeight

from tests.engine.support import require_kernel

A_TOKEN = QuantSpec(8, False, False, "per_token")
A_TENSOR = QuantSpec(8, True, True, "per_tensor")
W8 = QuantSpec(8, True, True, "per_channel")
CASES = [  # kernel, weight spec, activation spec
    ("int8_native", W8, A_TOKEN),
    ("int8_native", QuantSpec(8, False, False, "per_tensor"), A_TENSOR),
    ("w4a8_native", QuantSpec(4, True, True, "per_channel"), A_TOKEN),
    ("w4a8_native", QuantSpec(4, False, False, "per_group", group_size=32), A_TOKEN),
    ("int8_wo_native", QuantSpec(8, False, False, "per_group", group_size=32), None),
    ("int4_wo_native", QuantSpec(4, False, False, "per_group", group_size=32), None),
    ("int4_wo_native", QuantSpec(4, True, True, "per_tensor"), None),
]
SIZES = [128, 64, 70]          # all but the last fill whole 64-column panels


def _parts(kernel, w_spec, a_spec, k=96, sizes=SIZES, seed=0, biases=(True, False, True)):
    g = torch.Generator().manual_seed(seed)
    states = []
    for i, n in enumerate(sizes):
        w = torch.randn(n, k, generator=g) * (0.05 + 0.05 * i)
        b = torch.randn(n, generator=g) if biases[i % len(biases)] else None
        states.append(kernel.pack(rtn(w, w_spec), b, a_spec))
    return states


@pytest.mark.parametrize("name,w_spec,a_spec", CASES, ids=[f"{c[0]}-{c[1].describe()}" for c in CASES])
def test_joined_state_gives_the_parts_outputs_bit_for_bit(name, w_spec, a_spec):
    require_kernel(name, w_spec, a_spec)
    kernel = KERNELS.get(name)
    states = _parts(kernel, w_spec, a_spec)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(m, 96, generator=g) * 2 for m in (1, 3, 5, 16, 17)]
    before = [[kernel.forward(s, x) for s in states] for x in xs]
    held = [kernel.held_weight(s) for s in states]
    joined = kernel.join(states)
    assert joined is not None
    for x, outs in zip(xs, before):
        y = kernel.forward(joined, x)
        assert y.shape == (x.shape[0], sum(SIZES))
        assert torch.equal(y, torch.cat(outs, 1)), x.shape
        for s, out in zip(states, outs):             # each part alone, now on a view of the joined codes
            assert torch.equal(kernel.forward(s, x), out)
    codes = "wp" if hasattr(joined, "wp") else "codes"
    base = getattr(joined, codes).untyped_storage().data_ptr()
    assert all(getattr(s, codes).untyped_storage().data_ptr() == base for s in states)
    assert kernel.state_nbytes(joined) < sum(kernel.state_nbytes(s) for s in states) + sum(SIZES) * 64
    hj = kernel.held_weight(joined)
    assert torch.equal(hj.codes, torch.cat([h.codes for h in held]))
    assert torch.equal(hj.dequantize(), torch.cat([h.dequantize() for h in held]))


def test_what_cannot_be_joined_is_refused():
    require_kernel("int8_native", W8, A_TOKEN)
    kernel = KERNELS.get("int8_native")
    # a part before the last that does not fill its panels: its padding would shift the columns after it
    assert kernel.join(_parts(kernel, W8, A_TOKEN, sizes=[70, 64])) is None
    # different activation specs, input sizes or input transforms
    mixed = _parts(kernel, W8, A_TOKEN, sizes=[64]) + _parts(kernel, W8, A_TENSOR, sizes=[64])
    assert kernel.join(mixed) is None
    assert kernel.join(_parts(kernel, W8, A_TOKEN, sizes=[64]) + _parts(kernel, W8, A_TOKEN, k=64, sizes=[64])) is None
    w = torch.randn(64, 96)
    smoothed = [kernel.pack(QuantizedWeight(q.codes, q.scale, q.zero_point, W8, torch.rand(96) + 0.5), None, A_TOKEN)
                for q in (rtn(w, W8), rtn(w, W8))]
    assert kernel.join(smoothed) is None                  # two different input scales
    assert kernel.join(smoothed[:1]) is None               # nothing to join
    assert KERNELS.get("reference").join(_parts(KERNELS.get("reference"), W8, A_TOKEN, sizes=[64, 64])) is None


def test_parts_with_one_input_transform_join():
    require_kernel("int8_native", W8, A_TOKEN)
    kernel = KERNELS.get("int8_native")
    g = torch.Generator().manual_seed(4)
    scale = torch.rand(96, generator=g) + 0.5
    states = [kernel.pack(QuantizedWeight(q.codes, q.scale, q.zero_point, W8, scale.clone()), None, A_TOKEN)
              for q in (rtn(torch.randn(64, 96, generator=g), W8), rtn(torch.randn(64, 96, generator=g), W8))]
    x = torch.randn(2, 96, generator=g)
    want = torch.cat([kernel.forward(s, x) for s in states], 1)
    joined = kernel.join(states)
    assert joined is not None and torch.equal(kernel.forward(joined, x), want)


@pytest.mark.parametrize("name,w_spec,a_spec", CASES, ids=[f"{c[0]}-{c[1].describe()}" for c in CASES])
def test_a_bound_call_writes_forward_s_output(name, w_spec, a_spec):
    require_kernel(name, w_spec, a_spec)
    kernel = KERNELS.get(name)
    state = _parts(kernel, w_spec, a_spec, sizes=[70])[0]
    g = torch.Generator().manual_seed(5)
    for m in (1, 3, 16):
        x, y = torch.empty(m, 96), torch.full((m, 70), float("nan"))
        run = kernel.bind(state, x, y)
        assert run is not None
        for _ in range(3):                                 # the same call on new contents of the same buffer
            x.copy_(torch.randn(m, 96, generator=g))
            run()
            assert torch.equal(y, kernel.forward(state, x))
    assert kernel.bind(state, torch.empty(2, 95), torch.empty(2, 70)) is None          # not its shapes
    assert kernel.bind(state, torch.empty(2, 96).t().contiguous().t(), torch.empty(2, 70)) is None
    if name.endswith("wo_native"):                          # past decode sizes forward dequantizes: no bound call
        assert kernel.bind(state, torch.empty(17, 96), torch.empty(17, 70)) is None
    assert KERNELS.get("reference").bind(state, torch.empty(1, 96), torch.empty(1, 70)) is None


def test_a_state_with_an_input_transform_is_not_bound():
    require_kernel("int8_native", W8, A_TOKEN)
    kernel = KERNELS.get("int8_native")
    q = rtn(torch.randn(64, 96), W8)
    state = kernel.pack(QuantizedWeight(q.codes, q.scale, q.zero_point, W8, torch.rand(96) + 0.5), None, A_TOKEN)
    assert kernel.bind(state, torch.empty(1, 96), torch.empty(1, 64)) is None
