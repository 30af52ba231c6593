"""W8A8 on qbench's own fused C kernel (native/w8a8_gemm.c, qb_w8a8_gemm): one call per layer.

int8_native  (M, K) float32 -> (M, N) float32 in one pass over x: each block of rows is quantized by qbench's
             quantizer (the same codes as primitives.quantize, shifted into uint8) into a buffer that stays
             in cache, multiplied against the packed int8 weight codes with uint8 x int8 -> int32 dot products
             (AVX-512 VNNI vpdpbusd), and the zero-point corrections, the rescale and the bias are applied in
             registers before the one store of y.

Why fused: on a layer like all-MiniLM's 1024 x 384 x 384, the separate passes of int8_onednn (quantize, then
the library GEMM, then the per-token rescale) each cost about as much as the handover between them; one call
removes them (measured side by side by `qbench bench gemm`).

Activations: <= 8-bit, signed or unsigned, symmetric or asymmetric, per token (dynamic) or per tensor
(dynamic, or static from calibration). Weights: <= 8-bit, signed or unsigned, symmetric or asymmetric, per
tensor or per channel. With u the activation codes (uint8 domain, zero point za per row) and c the weight
codes (int8 domain, zero point zc per column), the kernel computes sum_k (u - za)(c - zc) exactly in int32 as
acc - za * csum[n] - zc[n] * (sum_k u - K za), from weight column sums precomputed here and activation row
sums taken while quantizing: no operand is widened. Exact while the sum fits int32, hence K <= 32768.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.base import KERNELS, Kernel, bindable, integer_matmul_reason, joined_spec
from qbench.engine.kernels.codes import from_int8, to_int8, uint8_offset
from qbench.engine.kernels.native_status import isa_text, known_isa, native_reason
from qbench.engine.kernels.state import KernelState
from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import qparams_from_rows

PANEL = 64          # weight columns per panel of the packed layout
MAX_K = 32768       # (u - za)(c - zc) <= 255 * 255: the int32 sum is exact up to this K
META16_GROUP = 128  # groups up to this wide keep column sum and zero point as the 16-bit halves of one word


def pack_panels(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 codes -> the kernel's layout, flat int8: 64-column panels, each holding for every 4 k the
    64 columns' 4 bytes side by side, [p][k // 4][j][k % 4] = codes[64 p + j, k]; N padded to a multiple of
    64 and K to a multiple of 4 with zero codes."""
    n, k = codes.shape
    npad, kpad = -(-n // PANEL) * PANEL, -(-k // 4) * 4
    c = torch.nn.functional.pad(codes, (0, kpad - k, 0, npad - n))                    # (Np, Kp)
    return c.reshape(npad // PANEL, PANEL, kpad // 4, 4).permute(0, 2, 1, 3).contiguous().reshape(-1)


def unpack_panels(flat: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of pack_panels: the flat panel layout -> (N, K) int8 codes (the padding dropped)."""
    npad, kpad = -(-n // PANEL) * PANEL, -(-k // 4) * 4
    return flat.reshape(npad // PANEL, kpad // 4, PANEL, 4).permute(0, 2, 1, 3).reshape(npad, kpad)[:n, :k]


def pack_nibble_panels(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) unsigned 4-bit codes (0..15, any integer dtype) -> qb_w4a8_gemm's layout, flat uint8: 64-column
    panels; for every 8 k, the 64 columns' 4 bytes side by side, byte b = code[k = 8 t + b] | code[8 t + 4 + b]
    << 4, i.e. [p][k // 8][j][b]; N padded to a multiple of 64 and K to a multiple of 8 with zero codes."""
    n, k = codes.shape
    npad, kpad = -(-n // PANEL) * PANEL, -(-k // 8) * 8
    c = torch.nn.functional.pad(codes.to(torch.uint8), (0, kpad - k, 0, npad - n))       # (Np, Kp)
    c = c.reshape(npad // PANEL, PANEL, kpad // 8, 2, 4).permute(0, 2, 1, 3, 4)          # [p][t][j][half][b]
    return (c[..., 0, :] | (c[..., 1, :] << 4)).contiguous().reshape(-1)


def unpack_nibble_panels(flat: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Inverse of pack_nibble_panels: -> (N, K) uint8 codes 0..15 (the padding dropped)."""
    npad, kpad = -(-n // PANEL) * PANEL, -(-k // 8) * 8
    b = flat.reshape(npad // PANEL, kpad // 8, PANEL, 4)
    c = torch.stack([b & 15, b >> 4], 3)                                                  # [p][t][j][half][b]
    return c.permute(0, 2, 1, 3, 4).reshape(npad, kpad)[:n, :k]


def _padded(t: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, -(-n // PANEL) * PANEL - n)).contiguous()


@dataclass
class FusedState(KernelState):
    spec: QuantSpec                  # the weight's
    wp: torch.Tensor                 # flat int8 codes in the panel layout (pack_panels), int8 domain (to_int8)
    n: int
    k: int
    a: QuantSpec
    static: Optional[tuple[float, int]]  # static activation (scale, zero point in the uint8 domain), or None
    csum: torch.Tensor               # (N padded,) int32 exact sums of each weight row's codes
    zc: Optional[torch.Tensor]       # (N padded,) int32 weight zero points (int8 domain); None when all are 0
    ws: torch.Tensor                 # (N padded,) float32 weight scales
    bias: Optional[torch.Tensor]     # (N padded,) float32
    w4: bool = False                 # wp: uint8 nibble panels (pack_nibble_panels) of codes q - qmin, zc = z - qmin
    groups: int = 1                  # > 1: csum, zc and ws are (groups, N padded) flat, one per group of K // groups
    meta16: bool = False             # groups of <= META16_GROUP: csum holds csum | zc << 16 per word, zc is None


def _call(state: FusedState, x: torch.Tensor, out: torch.Tensor, exact: bool = False):
    """(the C function, its arguments) computing `out` from x: y (M, N) float32, or with exact the int32 sums."""
    a, static = state.a, state.static
    m, n, p, lib = x.shape[0], state.n, native.ptr, native.lib()
    act = (int(a.granularity == "per_token"), int(a.symmetric), int(a.signed), a.bits, int(static is not None),
           *(static or (1.0, 0)), native.threads(m * n * state.k))
    if state.groups > 1:
        return lib.qb_w4a8_group_gemm, (p(x), p(state.wp), p(state.csum), p(state.zc), p(state.ws), p(state.bias),
                                        p(out), m, n, state.k, state.groups, *act, int(state.meta16))
    return (lib.qb_w4a8_gemm if state.w4 else lib.qb_w8a8_gemm), (
        p(x), p(state.wp), p(state.csum), p(state.zc), p(state.ws), p(state.bias), None if exact else p(out),
        p(out) if exact else None, m, n, state.k, *act)


def _failed(state: FusedState, rc: int) -> ValueError:
    return ValueError(("w4a8_native: " if state.w4 else "int8_native: ") + (
        "out of memory for its row buffers" if rc == 2 else f"the C kernel rejected its arguments (code {rc})"))


def gemm(state: FusedState, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
    """x (M, K) float32 contiguous -> y (M, N) float32; exact=True returns the int32 sums
    sum_k (u - za)(c - zc) instead (no rescale, no bias), for checking against integer arithmetic."""
    if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() != 2 or x.shape[1] != state.k:
        raise ValueError(f"the fused kernel needs a contiguous float32 (M, {state.k}) input, got "
                         f"{tuple(x.shape)} {x.dtype}")
    if state.groups > 1 and exact:
        raise ValueError("w4a8_native with weight groups has no single int32 sum per output (each group's sum is "
                         "rescaled by its own scale)")
    out = torch.empty(x.shape[0], state.n, dtype=torch.int32 if exact else torch.float32)
    fn, args = _call(state, x, out, exact)
    rc = fn(*args)
    if rc:
        raise _failed(state, rc)
    return out


class Int8Native(Kernel):
    name = "int8_native"
    devices = ("cpu",)

    @property
    def backend(self) -> str:
        isa = f"{known_isa()}, {self._isa()}" if known_isa() is not None else isa_text()
        return (f"qbench fused C kernel ({isa}): per-row-block activation quantization, "
                f"uint8 x int8 -> int32 (vpdpbusd), zero-point corrections, rescale and bias in registers, one call; "
                f"any M and N, K <= {MAX_K}; other float dtypes go through float32 and come back in their own")

    @staticmethod
    def _isa() -> str:
        return native.w8a8_isa() if native_reason() is None else "unavailable"

    def supports(self, w, a, device):
        reason = self._config_reason(w, a)
        if reason:
            return reason
        if self._isa() != "avx512-vnni":
            return "this CPU (or compiler) lacks AVX-512 VNNI; the portable C loop is exact but far slower"
        return self._device_reason(device)

    @staticmethod
    def _config_reason(w, a):
        return integer_matmul_reason(w, a) or native_reason()

    def shape_reason(self, n, k):
        return f"K = {k} > {MAX_K}: the int32 sums could overflow" if k > MAX_K else None

    def pack(self, qweight, bias, a, act_qparams=None):
        self._require(self._config_reason(qweight.spec, a))  # the ISA is supports()'s concern: portable C is exact
        n, k = qweight.shape
        self._require(self.shape_reason(n, k))
        if act_qparams is not None and (act_qparams[0].numel() != 1 or act_qparams[1].numel() != 1):
            self._require("static activation qparams must be one scale and one zero point")
        return FusedState(
            spec=qweight.spec, n=n, k=k, a=a,
            # static activation qparams as the C call takes them: scale, zero point in the uint8 domain
            static=None if act_qparams is None else
            (float(act_qparams[0]), int(act_qparams[1]) + uint8_offset(a)),
            bias=None if bias is None else _padded(bias.detach().float(), n),
            pre=qweight.input_transform(), **self._weights(qweight))

    def _weights(self, qweight) -> dict:
        """The packed codes and what the kernel's corrections need (FusedState's wp, csum, zc, ws)."""
        n = qweight.shape[0]
        codes, zc = to_int8(qweight.codes, qweight.zero_point, qweight.spec)    # (N, K) int8, zero point with them
        zc = zc.reshape(-1).expand(n)                                            # (N,)
        return dict(wp=pack_panels(codes),
                    csum=_padded(codes.sum(dim=1, dtype=torch.int32), n),       # exact column sums
                    zc=_padded(zc.contiguous(), n) if bool((zc != 0).any()) else None,
                    ws=_padded(qweight.scale.reshape(-1).expand(n).float(), n))

    def join(self, states):
        """The panels of every part side by side (each part but the last must fill its panels: N a multiple of
        64), with their per-column sums, zero points, scales and biases; one activation quantization then serves
        them all. None where the parts differ in K, specs, static activation qparams or input transform."""
        first = states[0]
        if (len(states) < 2 or any(s.n % PANEL for s in states[:-1])
                or any((s.k, s.spec, s.a, s.static, s.w4, s.groups, s.meta16)
                       != (first.k, first.spec, first.a, first.static, first.w4, first.groups, first.meta16)
                       or not s.same_input(first) for s in states)):
            return None
        g = first.groups

        def side_by_side(field: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
            """(groups, N padded) flat per part -> (groups, sum of N padded) flat; a part without it gives 0s"""
            if all(getattr(s, field) is None for s in states):
                return None
            return torch.cat([(getattr(s, field) if getattr(s, field) is not None else
                               torch.zeros(s.csum.numel(), dtype=dtype)).reshape(g, -1) for s in states],
                             1).reshape(-1).contiguous()
        wp = torch.cat([s.wp for s in states])
        joined = FusedState(spec=joined_spec(first.spec), wp=wp, n=sum(s.n for s in states), k=first.k, a=first.a,
                            static=first.static, csum=side_by_side("csum", torch.int32),
                            zc=side_by_side("zc", torch.int32), ws=side_by_side("ws", torch.float32),
                            bias=None if all(s.bias is None for s in states) else torch.cat(
                                [s.bias if s.bias is not None else torch.zeros(s.csum.numel() // g)
                                 for s in states]),
                            w4=first.w4, groups=g, meta16=first.meta16, pre=first.pre)
        at = 0
        for s in states:                                  # each part's codes: a view of the joined panels
            s.wp, at = wp[at:at + s.wp.numel()], at + s.wp.numel()
        return joined

    def bind(self, state, x, y):
        """One C call with its arguments fixed: x and y float32 contiguous (M, K) and (M, N) buffers."""
        if state.pre is not None or not bindable(x, y, state.k, state.n):
            return None
        return native.bound(*_call(state, x, y), lambda rc: _failed(state, rc), keep=(state, x, y))

    def held_weight(self, state):
        n, spec = state.n, state.spec
        zc = state.zc[:n] if state.zc is not None else torch.zeros(n, dtype=torch.int32)
        codes, zp = from_int8(unpack_panels(state.wp, n, state.k), zc, spec)
        return state.quantized(codes, qparams_from_rows(state.ws[:n], spec, n), qparams_from_rows(zp, spec, n), spec)

    def forward(self, state, x):
        x = state.prepare_input(x)
        xf = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
        y = gemm(state, xf)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


class W4A8Native(Int8Native):
    """4-bit weights (per tensor, per channel, or per group of a multiple of 8 columns) with quantized activations
    on the same fused kernel: the codes stay nibbles in memory (half int8_native's weight bytes) and are unpacked
    in registers (qb_w4a8_gemm; per group, qb_w4a8_group_gemm: exact int32 sums per group, rescaled and summed
    in float32)."""

    name = "w4a8_native"

    @property
    def backend(self) -> str:
        return super().backend.replace("uint8 x int8", "4-bit weight codes unpacked in registers, uint8 x int8") \
            + "; per-group scales applied to each group's exact int32 sums"

    @staticmethod
    def _config_reason(w, a):
        if w.format != "int" or w.bits > 4:
            return f"holds 4-bit integer weights as nibbles; {w.describe()} weights do not fit"
        if w.granularity == "per_group":
            if w.group_size % 8:
                return f"groups of {w.group_size} columns: the nibble layout needs a multiple of 8"
            w = QuantSpec(w.bits, w.signed, w.symmetric, "per_channel")     # groups are this kernel's own concern
        return Int8Native._config_reason(w, a)

    def _weights(self, qweight) -> dict:
        """Nibble panels of the codes q - qmin, and per group (one for per tensor / channel) the exact column sums,
        the zero points z - qmin and the scales, each (groups, N padded) flat; with groups of at most
        META16_GROUP, each column sum and zero point as one word (meta16)."""
        spec = qweight.spec
        n, k = qweight.shape
        groups = k // spec.group_size if spec.granularity == "per_group" else 1
        c = qweight.codes.to(torch.int16) - spec.qmin                                         # (N, K) 0..15

        def per_row(t):                                            # () / (N,) / (N, G) -> (N, G)
            return t.reshape(1, 1).expand(n, groups) if t.numel() == 1 else t.reshape(n, -1).expand(n, groups)

        def by_group(t):                                           # (N, G) -> (G, N padded) flat
            return torch.stack([_padded(t[:, g].contiguous(), n) for g in range(groups)]).reshape(-1)
        zc = per_row(qweight.zero_point.to(torch.int32) - spec.qmin)
        csum = c.reshape(n, groups, k // groups).sum(-1, dtype=torch.int32)                   # (N, G) exact
        ws = by_group(per_row(qweight.scale.float()))
        if groups > 1 and k // groups <= META16_GROUP:      # csum <= 128 * 15, 0 <= zc <= 15: one word each
            return dict(wp=pack_nibble_panels(c), csum=by_group(csum | (zc << 16)), zc=None, ws=ws, w4=True,
                        groups=groups, meta16=True)
        return dict(wp=pack_nibble_panels(c), csum=by_group(csum),
                    zc=by_group(zc) if bool((zc != 0).any()) else None, ws=ws, w4=True, groups=groups)

    def held_weight(self, state):
        n, spec, groups = state.n, state.spec, state.groups
        npad = state.csum.numel() // groups

        def rows(t):                                               # (G, N padded) flat -> (N, G)
            return t.reshape(groups, npad)[:, :n].t()
        zc = (rows(state.csum) >> 16 if state.meta16 else rows(state.zc) if state.zc is not None
              else torch.zeros(n, groups, dtype=torch.int32))
        codes = (unpack_nibble_panels(state.wp, n, state.k).to(torch.int16) + spec.qmin).to(spec.storage_dtype)
        return state.quantized(codes, qparams_from_rows(rows(state.ws).contiguous(), spec, n),
                               qparams_from_rows((zc + spec.qmin).contiguous(), spec, n), spec)


KERNELS.add(Int8Native.name, Int8Native())
KERNELS.add(W4A8Native.name, W4A8Native())
