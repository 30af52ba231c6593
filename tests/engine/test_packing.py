"""qbench.engine.tensors: two 4-bit codes per byte and the PackedWeight container."""
from __future__ import annotations

import itertools

import pytest
import torch

from qbench.engine.primitives import QuantSpec, quantize
from qbench.engine.tensors import PackedWeight, pack_int4, unpack_int4


def random_codes(spec: QuantSpec, n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(spec.qmin, spec.qmax + 1, (n, k), generator=g).to(spec.storage_dtype)


CASES = list(itertools.product([2, 3, 4], [True, False], [1, 2, 5, 8, 33]))


@pytest.mark.parametrize("bits,signed,k", CASES)
def test_pack_unpack_round_trip(bits, signed, k):
    spec = QuantSpec(bits, signed)
    q = random_codes(spec, 7, k, seed=bits * 100 + k)
    # make sure both ends of the code range occur
    q[0, 0] = spec.qmin
    q[-1, -1] = spec.qmax
    packed = pack_int4(q, spec)
    assert packed.dtype == torch.uint8
    assert packed.shape == (7, (k + 1) // 2)
    out = unpack_int4(packed, k, spec)
    assert out.shape == (7, k)
    assert torch.equal(out.long(), q.long())


def test_nibble_order_unsigned_by_hand():
    spec = QuantSpec(4, signed=False)
    q = torch.tensor([[1, 2, 3], [15, 0, 9]], dtype=torch.uint8)
    # row 0: byte 0 = col0 (low) | col1 << 4 = 0x1 | 0x20 = 0x21; byte 1 = col2 alone (pad 0) = 0x03
    # row 1: 0xF | 0x0 << 4 = 0x0F; 0x09
    assert pack_int4(q, spec).tolist() == [[0x21, 0x03], [0x0F, 0x09]]


def test_nibble_order_signed_by_hand():
    spec = QuantSpec(4, signed=True)
    q = torch.tensor([[-8, 7, -1, 0]], dtype=torch.int8)
    # signed codes are offset by +8: -8 -> 0, 7 -> 15, -1 -> 7, 0 -> 8
    # byte 0 = 0 | 15 << 4 = 0xF0; byte 1 = 7 | 8 << 4 = 0x87
    assert pack_int4(q, spec).tolist() == [[0xF0, 0x87]]
    assert unpack_int4(torch.tensor([[0xF0, 0x87]], dtype=torch.uint8), 4, spec).tolist() == [[-8, 7, -1, 0]]


def test_two_bit_signed_by_hand():
    spec = QuantSpec(2, signed=True)  # codes -2..1, offset +2 -> 0..3
    q = torch.tensor([[-2, 1, 0]], dtype=torch.int8)
    # byte 0 = 0 | 3 << 4 = 0x30; byte 1 = 2
    assert pack_int4(q, spec).tolist() == [[0x30, 0x02]]


def test_pack_rejects_more_than_four_bits():
    with pytest.raises(ValueError):
        pack_int4(torch.zeros(2, 2, dtype=torch.int8), QuantSpec(5))


@pytest.mark.parametrize("pack4", [True, False])
def test_packed_weight_round_trip(pack4):
    spec = QuantSpec(4, signed=False, symmetric=False, granularity="per_group", group_size=8)
    w = torch.randn(12, 40, generator=torch.Generator().manual_seed(3))
    q = quantize(w, spec)
    pw = PackedWeight.from_qtensor(q, pack4=pack4)
    assert pw.shape == (12, 40) and pw.packed4 is pack4
    back = pw.to_qtensor()
    assert back.data.dtype == torch.uint8
    assert torch.equal(back.data, q.data)
    assert torch.equal(back.scale, q.scale) and torch.equal(back.zero_point, q.zero_point)


def test_packed_weight_nbytes_int4_about_half_of_int8_codes():
    n, k, g = 64, 128, 32
    spec = QuantSpec(4, signed=True, symmetric=True, granularity="per_group", group_size=g)
    q = quantize(torch.randn(n, k, generator=torch.Generator().manual_seed(4)), spec)
    packed = PackedWeight.from_qtensor(q, pack4=True)
    plain = PackedWeight.from_qtensor(q, pack4=False)
    qparams = 2 * n * (k // g) * 4                     # float32 scales + int32 zero points
    assert plain.nbytes == n * k + qparams              # one byte per code
    assert packed.nbytes == n * k // 2 + qparams        # two codes per byte
    codes_ratio = (packed.nbytes - qparams) / (plain.nbytes - qparams)
    assert codes_ratio == 0.5


def test_packed_weight_nbytes_odd_k():
    spec = QuantSpec(3, signed=False, granularity="per_channel")
    q = quantize(torch.randn(5, 7), spec)
    # ceil(7 / 2) = 4 bytes per row; per-channel scale (5 float32) + zero point (5 int32)
    assert PackedWeight.from_qtensor(q, pack4=True).nbytes == 5 * 4 + 5 * 4 + 5 * 4
