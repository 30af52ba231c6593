"""Weight-only kernels for decode-sized inputs, on qbench's native C kernels (native/wo8_gemm.c, native/wo4_gemm.c).

int8_wo_native  int8 codes (5- to 8-bit specs, shifted into int8), per-tensor / per-channel / per-group scales
int4_wo_native  <= 4-bit codes two per byte in a layout of its own (pack_nibble_blocks), any granularity

For M <= DECODE_MAX_M the C kernel reads every packed weight byte once, turns it into float32 in registers
(int4: a 16-entry table of s * (code - z) per group) and accumulates fp32 FMAs with float32 activations.
Larger M is compute-bound: the weight is dequantized per call to float32 (one C pass, the same
arithmetic as primitives.dequantize), a cache-sized block of rows at a time, and multiplied by torch's
fp32 matmul.

int4_wo_native's layout (pack_nibble_blocks; engine.tensors.pack_int4's stays for the other kernels): a row
of K codes is blocks of 128 columns in 64 bytes, read as 16 little-endian 32-bit words, bits 4j..4j+3 of
word d of block b holding column 128 b + 16 j + d; the last K % 128 columns, if any, form a short block
of 16 words of 1, 2 or 4 bytes (as few as hold its ceil((K % 128) / 16) nibbles per word), code 0 past K.
Word-wise shifts by 4j put the codes of 16 consecutive columns in the low nibbles of the 16 words, which
is all the kernel's table lookup (vpermps) reads: no masking or widening, and the matching 16 activations
are contiguous (native/wo4_gemm.c). Storage: half a byte per weight, plus under 32 bytes per row in a short block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from qbench.engine.kernels import native
from qbench.engine.kernels.base import KERNELS, Kernel, bindable, joined_spec
from qbench.engine.kernels.codes import from_int8, to_int8
from qbench.engine.kernels.native_status import isa_text, native_reason
from qbench.engine.kernels.state import KernelState
from qbench.engine.primitives import QuantSpec
from qbench.engine.tensors import QuantizedWeight, qparams_from_rows

DECODE_MAX_M = 16
CHUNK_BYTES = 4 << 20    # fp32 block dequantized at a time at larger M (measured best of 1, 4, 16 MiB here)


def _per_group(scale: torch.Tensor, n: int) -> torch.Tensor:
    """Scale or zero point of any weight granularity as an (N, G) float32 tensor."""
    t = scale.float()
    if t.dim() == 0:
        return t.reshape(1, 1).expand(n, 1).contiguous()
    return t.reshape(n, -1).contiguous()


def _x_group_sums(x: torch.Tensor, groups: int) -> torch.Tensor:
    m, k = x.shape
    return x.reshape(m, groups, k // groups).sum(-1) if groups > 1 else x.sum(1, keepdim=True)


def _nibble_words(u: torch.Tensor, per_word: int) -> torch.Tensor:
    """(N, B * 16 * per_word) codes -> (N, B * 8 * per_word) bytes: B blocks of 16 little-endian words of
    per_word nibbles, nibble j of word d = column 16 j + d of its block."""
    n = u.shape[0]
    u = u.reshape(n, -1, per_word, 16)                                    # [n, block, j, d]
    byte = u[:, :, 0::2] | (u[:, :, 1::2] << 4)                           # [n, block, j // 2, d]
    return byte.transpose(2, 3).reshape(n, -1)                            # byte j // 2 of word d


def pack_nibble_blocks(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) unsigned codes 0..15 -> (N, native.nibble_row_bytes(K)) uint8 in int4_wo_native's layout
    (module docstring): full blocks of 128 columns, then a short block for the last K % 128 columns with
    words of native.nibble_tail_unit(K) bytes, code 0 past column K."""
    n, k = codes.shape
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError("nibble codes must lie in 0..15")
    u = codes.to(torch.uint8)
    full, unit = 128 * (k // 128), native.nibble_tail_unit(k)
    parts = [_nibble_words(u[:, :full], 8)]
    if unit:
        parts.append(_nibble_words(torch.nn.functional.pad(u[:, full:], (0, full + 32 * unit - k)), 2 * unit))
    return torch.cat(parts, 1).contiguous()


def unpack_nibble_blocks(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of pack_nibble_blocks: (N, native.nibble_row_bytes(K)) uint8 -> (N, K) uint8 codes 0..15."""
    n, full, unit = packed.shape[0], 64 * (k // 128), native.nibble_tail_unit(k)
    if packed.shape != (n, native.nibble_row_bytes(k)):
        raise ValueError(f"{tuple(packed.shape)} bytes do not hold rows of {k} nibbles in blocks of 128")
    cols = []
    for part, per_word in ((packed[:, :full], 8), (packed[:, full:], 2 * unit)):
        if per_word:
            byte = part.reshape(n, -1, 16, per_word // 2).transpose(2, 3)  # [n, block, j // 2, d]
            cols.append(torch.stack((byte & 15, byte >> 4), dim=3).reshape(n, -1))  # [n, block, j // 2, j % 2, d]
    return torch.cat(cols, 1)[:, :k]


@dataclass
class NativeWeightOnlyState(KernelState):
    spec: QuantSpec
    codes: torch.Tensor              # int8 (N, K) (int8_wo_native), or uint8 (N, row bytes) nibbles (int4_wo_native)
    s: torch.Tensor                  # (N, G) float32 scales
    zc: torch.Tensor                 # (N, G) float32 code offsets: w = s * (code + zc)
    groups: int                      # G
    k: int
    bias: Optional[torch.Tensor]     # (N,) float32 contiguous


class _NativeWeightOnly(Kernel):
    devices = ("cpu",)
    arithmetic = "fp32"    # packed codes are read directly; the products are fp32 (activations are float)
    bits = 8

    def _common_reason(self, w, a, device):
        if a is not None:
            return "weight-only kernel; activations are quantized in this scheme"
        return self._device_reason(device) or native_reason()     # the device first: no build to say "not cuda"

    def forward(self, state, x):
        # float32 contiguous x, the usual case, makes no conversion calls: a decode-sized call takes a fraction
        # of a millisecond, and torch calls cost tens of microseconds when the caches are cold (measured for
        # int4 at 1 x 4096 x 4096, weights rotated past the cache: 0.46 -> 0.42 ms; 0.57 -> 0.52 ms right
        # after a 64 MiB write)
        x = state.prepare_input(x)
        xf = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
        y = self._gemm(state, xf) if xf.shape[0] <= DECODE_MAX_M else self._dequant_matmul(state, xf)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def bind(self, state, x, y):
        """The decode-sized C call (M <= DECODE_MAX_M) with its arguments fixed, for float32 contiguous buffers."""
        if state.pre is not None or x.shape[0] > DECODE_MAX_M or not bindable(x, y, state.k, state.s.shape[0]):
            return None
        return self._bound(state, x, y)

    def _bound(self, state, x, y):
        return None

    def _dequant_matmul(self, state, xf):
        """Compute-bound M: dequantize to fp32 and let torch's matmul run. A weight larger than CHUNK_BYTES is
        dequantized a block of rows at a time into a cache-sized buffer: (rows, K) @ x^T -> rows of y^T."""
        n, k, b = state.s.shape[0], state.k, state.bias
        if n * k * 4 <= CHUNK_BYTES:
            return torch.nn.functional.linear(xf, self._dequant(state, 0, n), b)
        rows = max(8, CHUNK_BYTES // (4 * k))
        yt = torch.empty(n, xf.shape[0])                                    # (N, M)
        for r0 in range(0, n, rows):
            torch.mm(self._dequant(state, r0, min(n, r0 + rows)), xf.t(), out=yt[r0:r0 + rows])
        y = yt.t().contiguous()
        return y if b is None else y.add_(b)

    def join(self, states):
        """The parts' rows one after another (codes, scales, code offsets, biases): None where they differ in
        K, groups, spec or input transform."""
        first = states[0]
        if len(states) < 2 or any((s.k, s.groups, s.spec, s.codes.shape[1]) != (first.k, first.groups, first.spec,
                                                                                first.codes.shape[1])
                                  or not s.same_input(first) for s in states):
            return None
        codes = torch.cat([s.codes for s in states])
        bias = None if all(s.bias is None for s in states) else torch.cat(
            [s.bias if s.bias is not None else torch.zeros(s.s.shape[0]) for s in states])
        joined = NativeWeightOnlyState(spec=joined_spec(first.spec), codes=codes, s=torch.cat([s.s for s in states]),
                                       zc=torch.cat([s.zc for s in states]), groups=first.groups, k=first.k,
                                       bias=bias, pre=first.pre)
        at = 0
        for s in states:                                  # each part's codes: a view of the joined rows
            n = s.codes.shape[0]
            s.codes, at = codes[at:at + n], at + n
        return joined

    @staticmethod
    def _state(qweight: QuantizedWeight, codes, s, zc, bias) -> NativeWeightOnlyState:
        """The state both kernels keep: codes, (N, G) scales and code offsets, K, fp32 bias."""
        return NativeWeightOnlyState(spec=qweight.spec, codes=codes, s=s, zc=zc.contiguous(), groups=s.shape[1],
                                     k=qweight.shape[1], bias=None if bias is None else bias.float().contiguous(),
                                     pre=qweight.input_transform())

    @staticmethod
    def _qparams(state, zp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, zero point) in the spec's own shape, from the (N, G) scales and a zero point per group."""
        n = state.s.shape[0]
        return qparams_from_rows(state.s, state.spec, n), qparams_from_rows(zp, state.spec, n)

    def _dequant(self, state, r0: int, r1: int) -> torch.Tensor:
        """(r1 - r0, K) float32: rows r0..r1 of the weight, dequantized."""
        raise NotImplementedError

    def _gemm(self, state, xf: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Int8WeightOnlyNative(_NativeWeightOnly):
    name = "int8_wo_native"
    bits = 8

    @property
    def backend(self) -> str:
        return (f"qbench C kernel ({isa_text()}): int8 codes -> fp32 in registers, fp32 FMA, weights read once "
                f"for M <= {DECODE_MAX_M}; larger M: C dequantize to fp32 per call + torch fp32 matmul")

    def supports(self, w, a, device):
        if w.bits <= 4:
            return "4-bit and narrower weights are kept two per byte (int4_wo_native, int4_packed)"
        return self._common_reason(w, a, device)

    def pack(self, qweight, bias, a, act_qparams=None):
        self._require(self.supports(qweight.spec, a, "cpu"))
        n = qweight.shape[0]
        codes, z = to_int8(qweight.codes, qweight.zero_point, qweight.spec)   # (N, K) int8
        s = _per_group(qweight.scale, n)                                    # (N, G)
        zc = -_per_group(z, n)                                              # (N, G): w = s * (code + zc)
        return self._state(qweight, codes.contiguous(), s, zc, bias)

    def held_weight(self, state):
        codes, zp = from_int8(state.codes, torch.round(-state.zc).to(torch.int32), state.spec)
        return state.quantized(codes, *self._qparams(state, zp), state.spec)

    def _gemm(self, state, xf):
        g = state.groups
        return native.wo8_gemm(state.codes, xf, _x_group_sums(xf, g).contiguous(), state.s, state.zc, state.bias, g)

    def _bound(self, state, x, y):
        g, (m, k), n, p = state.groups, x.shape, y.shape[1], native.ptr
        xg = torch.empty(m, g)
        gemm = native.bound(native.lib().qb_wo8_gemm, (p(state.codes), p(x), p(xg), p(state.s), p(state.zc),
                                                        p(state.bias), p(y), m, n, k, g, native.threads(m * n * k)),
                            lambda rc: ValueError(f"native wo8_gemm rejected its arguments (code {rc})"),
                            keep=(state, x, y, xg))

        def run():
            xg.copy_(_x_group_sums(x, g))                 # as forward takes them
            gemm()
        return run

    def _dequant(self, state, r0, r1):
        return native.wo8_dequant(state.codes[r0:r1], state.s[r0:r1], state.zc[r0:r1], state.groups)


class Int4WeightOnlyNative(_NativeWeightOnly):
    name = "int4_wo_native"
    bits = 4

    @property
    def backend(self) -> str:
        return (f"qbench C kernel ({isa_text()}): two 4-bit codes per byte in blocks of 128 columns -> fp32 through "
                f"a per-group table of s * (code - z), fp32 FMA, weights read once for M <= {DECODE_MAX_M}; larger M: "
                "C dequantize to fp32 per call + torch fp32 matmul")

    def supports(self, w, a, device):
        if w.bits > 4:
            return f"holds at most 4-bit weights, scheme has {w.bits}"
        return self._common_reason(w, a, device)

    def pack(self, qweight, bias, a, act_qparams=None):
        self._require(self.supports(qweight.spec, a, "cpu"))
        spec, n = qweight.spec, qweight.shape[0]
        codes = pack_nibble_blocks(qweight.codes.to(torch.int16) - spec.qmin)  # (N, row bytes), nibble c = q - qmin
        s = _per_group(qweight.scale, n)                                    # (N, G)
        zc = float(spec.qmin) - _per_group(qweight.zero_point, n)           # (N, G): w = s * (c + zc)
        return self._state(qweight, codes, s, zc, bias)

    def held_weight(self, state):
        spec = state.spec
        codes = (unpack_nibble_blocks(state.codes, state.k).to(torch.int16) + spec.qmin).to(spec.storage_dtype)
        zp = torch.round(spec.qmin - state.zc).to(torch.int32)             # zc = qmin - z
        return state.quantized(codes, *self._qparams(state, zp), spec)

    def _gemm(self, state, xf):
        k = state.k
        if xf.shape[1] == k and k % 16:
            xf = torch.nn.functional.pad(xf, (0, native.padded_columns(k) - k))   # padded columns: code 0, x 0
        return native.wo4_gemm(state.codes, xf, state.s, state.zc, state.bias, k, state.groups)

    def _bound(self, state, x, y):
        (m, k), n, p = x.shape, y.shape[1], native.ptr
        if k % 16:                                         # the kernel reads x padded to 16 columns
            return None
        return native.bound(native.lib().qb_wo4_gemm, (p(state.codes), p(x), p(state.s), p(state.zc), p(state.bias),
                                                        p(y), m, n, k, state.groups, native.threads(m * n * k)),
                            lambda rc: ValueError(f"native wo4_gemm rejected its arguments (code {rc})"),
                            keep=(state, x, y))

    def _dequant(self, state, r0, r1):
        return native.wo4_dequant(state.codes[r0:r1], state.s[r0:r1], state.zc[r0:r1], state.k, state.groups)


for _k in (Int8WeightOnlyNative(), Int4WeightOnlyNative()):
    KERNELS.add(_k.name, _k)
