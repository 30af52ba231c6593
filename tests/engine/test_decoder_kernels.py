"""decoder.c: qb_rmsnorm, qb_silu_mul, qb_decode_attention and qb_prefill_rotary against float64 references, over vector remainders,
grouped queries, the first and later positions, rows read with their own strides, one thread against two, the
portable C loops, and the refusals."""
from __future__ import annotations

import pytest
import torch

from qbench.engine.kernels import native

needs_native = pytest.mark.skipif(native.unavailable() is not None, reason="qbench's native library is not built here")


def rms_ref(x, w, eps, res=None):
    x64 = x.double() + (res.double() if res is not None else 0)
    return x64, x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + eps) * w.double()


def rotate_ref(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def attention_ref(q, k, v, kc, vc, cos, sin, p, scale):
    """float64: rotary on q and k, the caches' first p positions plus the new key and value, softmax(q K^T) V."""
    b, kv, _, d = kc.shape
    h = q.shape[1] // d
    qr = rotate_ref(q.double().view(b, h, d), cos.double(), sin.double())
    kr = rotate_ref(k.double().view(b, kv, d), cos.double(), sin.double())
    keys = torch.cat([kc[:, :, :p].double(), kr[:, :, None]], 2).repeat_interleave(h // kv, 1)   # (B, H, p+1, D)
    vals = torch.cat([vc[:, :, :p].double(), v.double().view(b, kv, 1, d)], 2).repeat_interleave(h // kv, 1)
    w = torch.softmax(torch.einsum("bhd,bhtd->bht", qr, keys) * scale, -1)
    return torch.einsum("bht,bhtd->bhd", w, vals).reshape(b, h * d), kr, v.double().view(b, kv, d)


@needs_native
@pytest.mark.parametrize("rows,d", [(1, 576), (5, 40), (3, 17), (128, 64), (2, 1)])
def test_rmsnorm_against_float64(rows, d):
    g = torch.Generator().manual_seed(rows * 100 + d)
    x, res = (torch.randn(rows, d, generator=g) * 3 for _ in range(2))
    w = torch.randn(d, generator=g)
    for r in (None, res):
        xo, h = native.rmsnorm(x, w, 1e-5, r)
        want_x, want_h = rms_ref(x, w, 1e-5, r)
        torch.testing.assert_close(xo.double(), want_x, rtol=0, atol=0 if r is None else 1e-6 * want_x.abs().max())
        torch.testing.assert_close(h.double(), want_h, rtol=1e-5, atol=1e-6 * want_h.abs().max().item())
        assert (xo is x) == (r is None)


def _case(b, h, kv, d, tmax, p, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(b, h * d, generator=g), torch.randn(b, kv * d, generator=g), torch.randn(b, kv * d, generator=g)
    kc, vc = torch.randn(b, kv, tmax, d, generator=g), torch.randn(b, kv, tmax, d, generator=g)
    ang = torch.rand(d // 2, generator=g) * 6
    cos, sin = torch.cat([ang.cos(), ang.cos()]), torch.cat([ang.sin(), ang.sin()])
    return q, k, v, kc, vc, cos, sin


@needs_native
@pytest.mark.parametrize("b,h,kv,d,p", [
    (1, 9, 3, 64, 128),    # SmolLM2-135M's shape at a 128-token context
    (2, 4, 2, 16, 0),      # the first position: attention to the new key only
    (3, 6, 6, 80, 37),     # no grouped queries; D past a 64-wide block
    (1, 8, 1, 6, 20),      # one key/value head; D under a vector
    (2, 4, 4, 34, 17),     # a vector and a remainder
])
def test_decode_attention_against_float64(b, h, kv, d, p):
    q, k, v, kc, vc, cos, sin = _case(b, h, kv, d, p + 5, p, seed=b * 1000 + h * 10 + p)
    want, kr, vr = attention_ref(q, k, v, kc, vc, cos, sin, p, d ** -0.5)
    before_k, before_v = kc.clone(), vc.clone()
    got = native.decode_attention(q, k, v, kc, vc, cos, sin, p, d ** -0.5)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(kc[:, :, p].double(), kr, rtol=1e-6, atol=1e-6)          # the cache got the new row
    assert torch.equal(vc[:, :, p], v.view(b, kv, d))
    keep = torch.ones(kc.shape[2], dtype=torch.bool)
    keep[p] = False
    assert torch.equal(kc[:, :, keep], before_k[:, :, keep]) and torch.equal(vc[:, :, keep], before_v[:, :, keep])


@needs_native
def test_decode_attention_reads_column_views_of_one_output():
    """q, k and v as column views of one joined projection output (row stride H D + 2 KV D): the same numbers
    as from separate contiguous tensors, bit for bit, and the same cache rows."""
    b, h, kv, d, p = 3, 8, 2, 32, 9
    q, k, v, kc, vc, cos, sin = _case(b, h, kv, d, p + 4, p, seed=21)
    joint = torch.cat([q, k, v], 1)
    qj, kj, vj = joint.split([h * d, kv * d, kv * d], 1)
    assert not qj.is_contiguous() and qj.stride(0) == joint.shape[1]
    kc2, vc2 = kc.clone(), vc.clone()
    want = native.decode_attention(q, k, v, kc, vc, cos, sin, p, 0.2)
    assert torch.equal(native.decode_attention(qj, kj, vj, kc2, vc2, cos, sin, p, 0.2), want)
    assert torch.equal(kc2, kc) and torch.equal(vc2, vc)
    with pytest.raises(ValueError, match="inconsistent"):                 # k and v with different row strides
        native.decode_attention(qj, kj, v, kc2, vc2, cos, sin, p, 0.2)


@needs_native
@pytest.mark.parametrize("rows,n", [(1, 1536), (3, 17), (2, 5), (16, 64)])
def test_silu_mul_against_float64(rows, n):
    g = torch.Generator().manual_seed(rows * 10 + n)
    joint = torch.randn(rows, 2 * n, generator=g) * 4
    gate, up = joint.split([n, n], 1)                                     # column views, as the graph gives them
    want = gate.double() * torch.sigmoid(gate.double()) * up.double()
    got = native.silu_mul(gate, up)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=1e-6)
    torch.testing.assert_close(got, torch.nn.functional.silu(gate) * up, rtol=2e-6, atol=1e-6)
    with pytest.raises(ValueError, match="silu_mul"):
        native.silu_mul(gate.double(), up)


@needs_native
@pytest.mark.parametrize("b,t,h,kv,d,t0", [(1, 128, 9, 3, 64, 0), (2, 5, 4, 2, 16, 3), (3, 7, 6, 6, 34, 0)])
def test_prefill_rotary_against_float64(b, t, h, kv, d, t0):
    """Rotated queries in SDPA's (B, H, T, D) layout, rotated keys and the values in the caches at t0 .. t0 + T - 1
    (the rest of the caches untouched), from rows given as column views of one joined output."""
    g = torch.Generator().manual_seed(b * 100 + t)
    tmax = t0 + t + 4
    joint = torch.randn(b * t, (h + 2 * kv) * d, generator=g)
    q, k, v = joint.split([h * d, kv * d, kv * d], 1)
    kc, vc = torch.randn(b, kv, tmax, d, generator=g), torch.randn(b, kv, tmax, d, generator=g)
    before_k, before_v = kc.clone(), vc.clone()
    ang = torch.rand(tmax, d // 2, generator=g, dtype=torch.float64) * 6
    cos, sin = torch.cat([ang.cos()] * 2, 1).float(), torch.cat([ang.sin()] * 2, 1).float()
    qo = native.prefill_rotary(q, k, v, kc, vc, cos, sin, t0, t)
    c64, s64 = cos[t0:t0 + t].double(), sin[t0:t0 + t].double()
    want_q = rotate_ref(q.double().view(b, t, h, d).transpose(1, 2), c64[:, None].transpose(0, 1), s64[:, None]
                        .transpose(0, 1))
    want_k = rotate_ref(k.double().view(b, t, kv, d).transpose(1, 2), c64[:, None].transpose(0, 1),
                        s64[:, None].transpose(0, 1))
    torch.testing.assert_close(qo.double(), want_q, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kc[:, :, t0:t0 + t].double(), want_k, rtol=1e-6, atol=1e-6)
    assert torch.equal(vc[:, :, t0:t0 + t], v.reshape(b, t, kv, d).transpose(1, 2))
    keep = torch.ones(tmax, dtype=torch.bool)
    keep[t0:t0 + t] = False
    assert torch.equal(kc[:, :, keep], before_k[:, :, keep]) and torch.equal(vc[:, :, keep], before_v[:, :, keep])
    with pytest.raises(ValueError, match="prefill_rotary"):
        native.prefill_rotary(q, k, v, kc, vc, cos, sin, tmax - t + 1, t)              # past the cache


@needs_native
def test_one_thread_and_two_agree_bit_for_bit(monkeypatch):
    q, k, v, kc, vc, cos, sin = _case(2, 8, 2, 64, 600, 512, seed=7)
    outs = []
    for n in (1, 2):
        monkeypatch.setattr(native, "threads", lambda work, n=n: n)
        kc1, vc1 = kc.clone(), vc.clone()
        outs.append((native.decode_attention(q, k, v, kc1, vc1, cos, sin, 512, 0.125), kc1,
                     native.rmsnorm(q, cos.repeat(8), 1e-6, k.repeat(1, 4))[1]))
    assert all(torch.equal(a, b) for a, b in zip(*outs))


@needs_native
def test_the_portable_loops_give_the_same_numbers(monkeypatch, tmp_path):
    from tests.engine.test_fast_kernels import _portable_library

    lib = _portable_library(tmp_path)
    if lib is None:
        pytest.skip("this compiler cannot build without AVX-512 (-mno-avx512f)")
    monkeypatch.setattr(native, "_load", lambda: (lib, ""))
    q, k, v, kc, vc, cos, sin = _case(2, 6, 3, 40, 30, 21, seed=11)
    want, _, _ = attention_ref(q, k, v, kc, vc, cos, sin, 21, 40 ** -0.5)
    torch.testing.assert_close(native.decode_attention(q, k, v, kc, vc, cos, sin, 21, 40 ** -0.5).double(), want,
                               rtol=1e-5, atol=2e-6)
    xo, h = native.rmsnorm(q, k[0].repeat(2), 1e-5, q * 2)
    want_x, want_h = rms_ref(q, k[0].repeat(2), 1e-5, q * 2)
    torch.testing.assert_close(h.double(), want_h, rtol=1e-5, atol=1e-6 * want_h.abs().max().item())


@needs_native
def test_what_the_kernels_refuse():
    q, k, v, kc, vc, cos, sin = _case(1, 4, 2, 8, 10, 3, seed=1)
    with pytest.raises(ValueError, match="position 10"):
        native.decode_attention(q, k, v, kc, vc, cos, sin, 10, 1.0)
    with pytest.raises(ValueError, match="inconsistent"):
        native.decode_attention(q[:, :-8], k, v, kc, vc, cos, sin, 3, 1.0)       # 3 query heads over 2 kv heads
    with pytest.raises(ValueError, match="inconsistent"):
        native.decode_attention(q.double(), k, v, kc, vc, cos, sin, 3, 1.0)
    with pytest.raises(ValueError, match="rmsnorm"):
        native.rmsnorm(q, cos, 1e-5)                                                   # weight of another width
    with pytest.raises(ValueError, match="rmsnorm"):
        native.rmsnorm(q.t(), q[0], 1e-5)                                              # not contiguous
